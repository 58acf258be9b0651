/* Commands: creation, phases, output flushing with backpressure, completion,
 * and the set of running commands (see cmd.h). */
#include "cmd.h"

#include "cw_config.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

/* Output is sent this soon after it appears when the link is idle, so the
 * first line of a command shows up in the master quickly; under load the
 * size threshold (buffer_size) sends full batches earlier. */
#define FLUSH_DELAY_MS 10

static void cmd_flush(cw_cmd_t *cmd, bool all);
static void cmd_try_complete(cw_cmd_t *cmd);
static size_t pause_at(const cw_cmd_t *cmd);

void cw_cmd_settings_default(cw_cmd_settings_t *s)
{
    s->buffer_size = 65536;
    s->buffer_timeout = 5;
    s->max_line_length = 4096;
}

/* ---- phases ---- */

/* allowed[a][b]: a command in phase a may move to phase b. */
static const bool phase_allowed[CW_CMD_PHASES][CW_CMD_PHASES] = {
    [CW_CMD_CREATED] = {[CW_CMD_RUNNING] = true, [CW_CMD_FINISHING] = true},
    [CW_CMD_RUNNING] = {[CW_CMD_FINISHING] = true},
    [CW_CMD_FINISHING] = {[CW_CMD_CLOSING] = true},
    [CW_CMD_CLOSING] = {0},
};

static const char *const phase_names[CW_CMD_PHASES] = {
    [CW_CMD_CREATED] = "created",
    [CW_CMD_RUNNING] = "running",
    [CW_CMD_FINISHING] = "finishing",
    [CW_CMD_CLOSING] = "closing",
};

bool cw_cmd_phase_allowed(cw_cmd_phase_t a, cw_cmd_phase_t b)
{
    return a < CW_CMD_PHASES && b < CW_CMD_PHASES && phase_allowed[a][b];
}

const char *cw_cmd_phase_name(cw_cmd_phase_t p)
{
    return p < CW_CMD_PHASES ? phase_names[p] : "?";
}

/* The one place a command's phase changes. */
static void cmd_set_phase(cw_cmd_t *cmd, cw_cmd_phase_t to)
{
    if (!cw_cmd_phase_allowed(cmd->phase, to)) {
        /* a programmer error; never from input */
        cw_error("command %s: phase %s -> %s is not allowed", cmd->id,
                 cw_cmd_phase_name(cmd->phase), cw_cmd_phase_name(to));
        abort();
    }
    cmd->phase = to;
}

/* ---- the set ---- */

/* The implementation of each command kind; NULL = not available in this
 * build (and then not announced in the worker info). */
static const cw_cmd_impl_t *impl_for(cw_cmd_kind_t kind)
{
    switch (kind) {
    case CW_CMD_SHELL:
        return &cw_cmd_shell_impl;
    case CW_CMD_MKDIR:
    case CW_CMD_RMDIR:
    case CW_CMD_STAT:
    case CW_CMD_LISTDIR:
    case CW_CMD_RMFILE:
    case CW_CMD_GLOB:
    case CW_CMD_CPDIR:
        return &cw_cmd_fs_impl;
    case CW_CMD_UPLOAD_FILE:
        return &cw_cmd_upload_impl;
#if CW_HAVE_ARCHIVE
    case CW_CMD_UPLOAD_DIRECTORY:
        return &cw_cmd_upload_impl;
#endif
    case CW_CMD_DOWNLOAD_FILE:
        return &cw_cmd_download_impl;
    default:
        return NULL;
    }
}

bool cw_cmd_supported(cw_cmd_kind_t kind)
{
    return impl_for(kind) != NULL;
}

void cw_cmds_init(cw_cmds_t *cs, const cw_cmd_env_t *env, const cw_cmds_events_t *ev, void *owner)
{
    memset(cs, 0, sizeof *cs);
    cs->env = *env;
    cs->ev = ev;
    cs->owner = owner;
}

cw_cmd_t *cw_cmds_find(cw_cmds_t *cs, const cw_session_t *s, cw_str_t id)
{
    for (cw_cmd_t *c = cs->head; c; c = c->next)
        if (c->session == s && c->session != NULL && c->idstr.len == id.len &&
            memcmp(c->idstr.ptr, id.ptr, id.len) == 0)
            return c;
    return NULL;
}

static void flush_timer_cb(uv_timer_t *t)
{
    cmd_flush(t->data, true);
}

int cw_cmds_create(cw_cmds_t *cs, cw_session_t *s, const cw_cmd_settings_t *set, cw_str_t id,
                   cw_cmd_kind_t kind, cw_args_t *args, char *err, size_t errlen, cw_cmd_t **out)
{
    const cw_cmd_impl_t *impl = impl_for(kind);
    if (impl == NULL) {
        snprintf(err, errlen, "WorkerCommand '%s' is not built into this cworker",
                 cw_cmd_names(kind)[0]);
        return CW_EBADARG;
    }
    if (cw_cmds_find(cs, s, id) != NULL) {
        snprintf(err, errlen, "command id '%.*s' is already running", (int)id.len, id.ptr);
        return CW_EBADARG;
    }
    if (cs->env.max_commands && cs->n >= cs->env.max_commands) {
        snprintf(err, errlen, "worker busy: %zu commands running (limit --max-commands %zu)", cs->n,
                 cs->env.max_commands);
        return CW_ETOOBIG;
    }
    cw_cmd_t *cmd = calloc(1, sizeof *cmd);
    char *idcopy = cw_str_dup(id);
    if (cmd == NULL || idcopy == NULL) {
        free(cmd);
        free(idcopy);
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    cmd->cs = cs;
    cmd->session = s;
    cmd->id = idcopy;
    cmd->idstr = (cw_str_t){cmd->id, id.len};
    cmd->kind = kind;
    cmd->args = *args;
    memset(args, 0, sizeof *args);
    cmd->impl = impl;
    cmd->settings = *set;
    cmd->phase = CW_CMD_CREATED;
    cmd->start_hr = uv_hrtime();
    cw_outbuf_init(&cmd->out, set->buffer_size);
    uv_timer_init(cs->env.loop, &cmd->flush_timer);
    cmd->flush_timer.data = cmd;

    cmd->next = cs->head;
    if (cs->head)
        cs->head->prev = cmd;
    cs->head = cmd;
    cs->n++;
    cs->stats.started++;
    if (cs->ev && cs->ev->changed)
        cs->ev->changed(cs);
    *out = cmd;
    return 0;
}

void cw_cmd_start(cw_cmd_t *cmd)
{
    const char *const *names = cw_cmd_names(cmd->kind);
    if (cmd->kind == CW_CMD_SHELL)
        cw_info("command %s: shell started: %s", cmd->id, cmd->args.display);
    else
        cw_info("command %s: %s %s", cmd->id, names[0],
                cmd->args.path        ? cmd->args.path
                : cmd->args.npaths    ? cmd->args.paths[0]
                : cmd->args.from_path ? cmd->args.from_path
                                      : "");
    cmd_set_phase(cmd, CW_CMD_RUNNING);
    int rc = cmd->impl->start(cmd);
    if (rc < 0 && cmd->phase == CW_CMD_RUNNING)
        cw_cmd_finish(cmd, NULL);
}

void cw_cmds_interrupt_all(cw_cmds_t *cs, const char *why)
{
    for (cw_cmd_t *cmd = cs->head, *next; cmd; cmd = next) {
        next = cmd->next;
        cw_cmd_interrupt(cmd, why);
    }
}

/* The link is gone: nothing is sent any more, output is dropped, and the
 * command is interrupted (the master has failed the build already). */
static void cmd_detach(cw_cmd_t *cmd)
{
    if (cmd->session == NULL)
        return;
    if (cmd->session->ops->release)
        cmd->session->ops->release(cmd->session, cmd);
    cmd->session = NULL;
    cmd->link = NULL;
    cmd->cs->stats.bytes_output += cmd->out.bytes_text;
    cw_outbuf_free(&cmd->out);
    cw_outbuf_init(&cmd->out, cmd->settings.buffer_size);
    if (cmd->paused) {
        cmd->paused = false;
        if (cmd->impl->resume && cmd->phase == CW_CMD_RUNNING)
            cmd->impl->resume(cmd);
    }
    if (cmd->phase < CW_CMD_FINISHING && !cmd->interrupted) {
        cmd->interrupted = true;
        cw_info("command %s: interrupting (connection lost)", cmd->id);
        cmd->impl->interrupt(cmd, "connection lost");
    } else if (cmd->phase == CW_CMD_FINISHING) {
        cmd_try_complete(cmd);
    }
}

void cw_cmds_session_gone(cw_cmds_t *cs, const cw_session_t *s)
{
    for (cw_cmd_t *cmd = cs->head, *next; cmd; cmd = next) {
        next = cmd->next;
        if (s == NULL || cmd->session == s)
            cmd_detach(cmd);
    }
}

void cw_cmds_kick(cw_cmds_t *cs, cw_session_t *s)
{
    for (cw_cmd_t *c = cs->head, *next; c; c = next) {
        next = c->next;
        if (!s->ops->can_send(s))
            return;
        if (c->session == s && c->flush_wanted)
            cw_cmd_output_added(c);
    }
}

void cw_cmds_acked(cw_cmds_t *cs)
{
    if (cs->ev && cs->ev->acked)
        cs->ev->acked(cs);
}

/* ---- for implementations ---- */

uv_loop_t *cw_cmd_loop(const cw_cmd_t *cmd)
{
    return cmd->cs->env.loop;
}

double cw_cmd_now(const cw_cmd_t *cmd)
{
    return cmd->cs->env.now();
}

double cw_cmd_elapsed(const cw_cmd_t *cmd)
{
    return (double)(uv_hrtime() - cmd->start_hr) / 1e9;
}

const char *cw_cmd_protocol(const cw_cmd_t *cmd)
{
    return cmd->session && cmd->session->protocol ? cmd->session->protocol : "";
}

size_t cw_cmd_max_block(const cw_cmd_t *cmd)
{
    return cmd->session ? cmd->session->max_block : 0;
}

void cw_cmd_count_transfer(cw_cmd_t *cmd, uint64_t bytes)
{
    cmd->cs->stats.bytes_transfer += bytes;
}

int cw_cmd_xfer(cw_cmd_t *cmd, const cw_xfer_req_t *req, cw_xfer_cb cb)
{
    if (cmd->session == NULL)
        return CW_ECLOSED;
    return cmd->session->ops->xfer(cmd->session, cmd, req, cb);
}

/* Send pending output: full batches only, or everything when `all`. */
static void cmd_flush(cw_cmd_t *cmd, bool all)
{
    cw_session_t *s = cmd->session;
    if (s == NULL) {
        /* nobody to send to: drop it so memory stays bounded */
        cmd->cs->stats.bytes_output += cmd->out.bytes_text;
        cw_outbuf_free(&cmd->out);
        cw_outbuf_init(&cmd->out, cmd->settings.buffer_size);
    }
    while (s && !cw_outbuf_empty(&cmd->out)) {
        if (!all && cw_outbuf_size(&cmd->out) < cmd->out.buffer_size)
            break;
        if (!s->ops->can_send(s)) {
            cmd->flush_wanted = true;
            return;
        }
        int rc = s->ops->send_update(s, cmd);
        if (rc <= 0) {
            if (rc < 0)
                cw_error("command %s: cannot send output: %s", cmd->id, cw_strerror(rc));
            break;
        }
    }
    cmd->flush_wanted = false;
    if (cw_outbuf_empty(&cmd->out))
        uv_timer_stop(&cmd->flush_timer);
    if (cmd->paused && cw_outbuf_size(&cmd->out) < pause_at(cmd) / 2) {
        cmd->paused = false;
        if (cmd->impl->resume && cmd->phase == CW_CMD_RUNNING)
            cmd->impl->resume(cmd);
    }
    if (cmd->phase == CW_CMD_FINISHING)
        cmd_try_complete(cmd);
}

void cw_cmd_output_added(cw_cmd_t *cmd)
{
    if (cmd->phase == CW_CMD_CLOSING) {
        /* nothing may follow `complete`: late output is dropped */
        cw_outbuf_free(&cmd->out);
        cw_outbuf_init(&cmd->out, cmd->settings.buffer_size);
        return;
    }
    if (cmd->session == NULL) {
        cmd_flush(cmd, true); /* drops it */
        return;
    }
    if (cw_outbuf_size(&cmd->out) >= cmd->out.buffer_size)
        cmd_flush(cmd, false);
    if (!cw_outbuf_empty(&cmd->out) && !uv_is_active((uv_handle_t *)&cmd->flush_timer)) {
        uint64_t delay = FLUSH_DELAY_MS;
        uint64_t max = (uint64_t)(cmd->settings.buffer_timeout * 1000);
        if (delay > max)
            delay = max;
        uv_timer_start(&cmd->flush_timer, flush_timer_cb, delay, 0);
    }
}

/* Unsent output at which a command's producer pauses; it resumes below half of it. */
static size_t pause_at(const cw_cmd_t *cmd)
{
    size_t max = cmd->cs->env.max_pending_output;
    return max ? max : 2 * cmd->out.buffer_size;
}

bool cw_cmd_should_pause(cw_cmd_t *cmd)
{
    if (cmd->session == NULL)
        return false;
    if (cw_outbuf_size(&cmd->out) >= pause_at(cmd)) {
        cmd->paused = true;
        return true;
    }
    return false;
}

void cw_cmd_header(cw_cmd_t *cmd, const char *fmt, ...)
{
    char stackbuf[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(stackbuf, sizeof stackbuf, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    char *text = stackbuf;
    if ((size_t)n >= sizeof stackbuf) {
        text = malloc((size_t)n + 1);
        if (text == NULL)
            return;
        va_start(ap, fmt);
        vsnprintf(text, (size_t)n + 1, fmt, ap);
        va_end(ap);
    }
    if (cw_outbuf_add_header(&cmd->out, text, cw_cmd_now(cmd)) < 0)
        cw_error("command %s: out of memory", cmd->id);
    if (text != stackbuf)
        free(text);
    cw_cmd_output_added(cmd);
}

/* An added value: out of memory is logged, the command goes on. */
static void cmd_added(cw_cmd_t *cmd, int rc)
{
    if (rc < 0)
        cw_error("command %s: out of memory", cmd->id);
    cw_cmd_output_added(cmd);
}

void cw_cmd_add_int(cw_cmd_t *cmd, const char *key, int64_t v)
{
    if (strcmp(key, "rc") == 0) {
        cmd->has_rc = true;
        cmd->rc = v;
    }
    cmd_added(cmd, cw_outbuf_add_int(&cmd->out, key, v));
}

void cw_cmd_add_str(cw_cmd_t *cmd, const char *key, const char *v)
{
    cmd_added(cmd, cw_outbuf_add_str(&cmd->out, key, v));
}

void cw_cmd_add_strlist(cw_cmd_t *cmd, const char *key, const char *const *v, size_t n)
{
    cmd_added(cmd, cw_outbuf_add_strlist(&cmd->out, key, v, n));
}

void cw_cmd_add_numlist(cw_cmd_t *cmd, const char *key, const cw_num_t *v, size_t n)
{
    cmd_added(cmd, cw_outbuf_add_numlist(&cmd->out, key, v, n));
}

/* Once every update is on its way, send `complete` and close. */
static void cmd_try_complete(cw_cmd_t *cmd)
{
    if (cmd->phase != CW_CMD_FINISHING)
        return;
    cw_session_t *s = cmd->session;
    if (s && !cw_outbuf_empty(&cmd->out)) {
        cmd_flush(cmd, true);
        return; /* cmd_flush calls us again when it is done */
    }
    cmd_set_phase(cmd, CW_CMD_CLOSING);
    uv_timer_stop(&cmd->flush_timer);
    if (s) {
        int rc = s->ops->send_complete(s, cmd, cmd->failure);
        if (rc < 0)
            cw_warn("command %s: cannot send complete: %s", cmd->id, cw_strerror(rc));
    }
    cmd->impl->destroy(cmd);
}

void cw_cmd_finish(cw_cmd_t *cmd, const char *failure)
{
    if (cmd->phase >= CW_CMD_FINISHING)
        return;
    cmd_set_phase(cmd, CW_CMD_FINISHING);
    if (failure)
        cmd->failure = strdup(failure);
    double el = cw_cmd_elapsed(cmd);
    if (failure || !cmd->has_rc || cmd->rc != 0)
        cmd->cs->stats.failed++;
    /* The stock worker sends `elapsed` only for commands that ran to their
     * end; after an interrupt the master gets rc and complete only. */
    if (!cmd->interrupted && cmd->session != NULL)
        cw_outbuf_add_float(&cmd->out, "elapsed", el);
    cw_info("command %s finished%s%s in %.3f s", cmd->id, failure ? ": " : "",
            failure ? failure : "", el);
    cmd_try_complete(cmd);
}

static void cmd_free_cb(uv_handle_t *h)
{
    cw_cmd_t *cmd = h->data;
    cw_cmds_t *cs = cmd->cs;
    cs->stats.bytes_output += cmd->out.bytes_text;
    cw_args_free(&cmd->args);
    cw_outbuf_free(&cmd->out);
    free(cmd->failure);
    free(cmd->id);
    free(cmd);
    if (cs->ev && cs->ev->changed)
        cs->ev->changed(cs);
}

void cw_cmd_destroyed(cw_cmd_t *cmd)
{
    cw_cmds_t *cs = cmd->cs;
    if (cmd->session && cmd->session->ops->release)
        cmd->session->ops->release(cmd->session, cmd);
    cmd->session = NULL;
    if (cmd->prev)
        cmd->prev->next = cmd->next;
    else
        cs->head = cmd->next;
    if (cmd->next)
        cmd->next->prev = cmd->prev;
    cs->n--;
    uv_close((uv_handle_t *)&cmd->flush_timer, cmd_free_cb);
}

void cw_cmd_interrupt(cw_cmd_t *cmd, const char *why)
{
    cmd_flush(cmd, true);
    if (cmd->phase >= CW_CMD_FINISHING || cmd->interrupted)
        return;
    cmd->interrupted = true;
    cw_info("command %s: interrupting (%s)", cmd->id, why);
    cmd->impl->interrupt(cmd, why);
}
