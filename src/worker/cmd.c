/* Commands: creation, output flushing with backpressure, completion. */
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

/* The implementation of each command kind; NULL = not available in this
 * build (and then not announced in worker_commands). */
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

cw_cmd_t *cw_cmd_find(cw_worker_t *w, cw_str_t id)
{
    for (cw_cmd_t *c = w->cmds; c; c = c->next)
        if (!c->detached && c->idstr.len == id.len && memcmp(c->idstr.ptr, id.ptr, id.len) == 0)
            return c;
    return NULL;
}

static void flush_timer_cb(uv_timer_t *t)
{
    cw_cmd_t *cmd = t->data;
    cmd_flush(cmd, true);
}

int cw_cmd_create(cw_worker_t *w, cw_str_t id, cw_str_t name, const msgpack_object *args,
                  char *err, size_t errlen, cw_cmd_t **out)
{
    int kind = cw_cmd_lookup(name);
    if (kind < 0) {
        snprintf(err, errlen, "unrecognized WorkerCommand '%.*s'", (int)name.len, name.ptr);
        return CW_EBADARG;
    }
    const cw_cmd_impl_t *impl = impl_for((cw_cmd_kind_t)kind);
    if (impl == NULL) {
        snprintf(err, errlen, "WorkerCommand '%.*s' is not built into this cworker",
                 (int)name.len, name.ptr);
        return CW_EBADARG;
    }
    if (cw_cmd_find(w, id) != NULL) {
        snprintf(err, errlen, "command id '%.*s' is already running", (int)id.len, id.ptr);
        return CW_EBADARG;
    }
    if (w->cfg->max_commands && w->ncmds >= w->cfg->max_commands) {
        snprintf(err, errlen, "worker busy: %zu commands running (limit --max-commands %zu)",
                 w->ncmds, w->cfg->max_commands);
        return CW_ETOOBIG;
    }
    cw_cmd_t *cmd = calloc(1, sizeof *cmd);
    if (cmd == NULL) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    int rc = cw_args_parse(&cmd->args, (cw_cmd_kind_t)kind, args, err, errlen);
    if (rc < 0) {
        free(cmd);
        return rc;
    }
    cmd->id = cw_str_dup(id);
    if (cmd->id == NULL) {
        cw_args_free(&cmd->args);
        free(cmd);
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    cmd->idstr = (cw_str_t){cmd->id, id.len};
    cmd->w = w;
    cmd->kind = (cw_cmd_kind_t)kind;
    cmd->impl = impl;
    cmd->conn_gen = w->conn_gen;
    cmd->start_hr = uv_hrtime();
    cw_outbuf_init(&cmd->out, w->settings.buffer_size);
    uv_timer_init(w->loop, &cmd->flush_timer);
    cmd->flush_timer.data = cmd;

    cmd->next = w->cmds;
    if (w->cmds)
        w->cmds->prev = cmd;
    w->cmds = cmd;
    w->ncmds++;
    w->n_commands++;

    *out = cmd;
    return 0;
}

void cw_cmd_start(cw_cmd_t *cmd)
{
    cw_worker_status(cmd->w);
    const char *const *names = cw_cmd_names(cmd->kind);
    if (cmd->kind == CW_CMD_SHELL)
        cw_info("command %s: shell started: %s", cmd->id, cmd->args.display);
    else
        cw_info("command %s: %s %s", cmd->id, names[0],
                cmd->args.path ? cmd->args.path
                : cmd->args.npaths ? cmd->args.paths[0]
                : cmd->args.from_path ? cmd->args.from_path : "");
    int rc = cmd->impl->start(cmd);
    if (rc < 0 && !cmd->finishing)
        cw_cmd_finish(cmd, NULL);
}

cw_conn_t *cw_cmd_conn(cw_cmd_t *cmd)
{
    cw_worker_t *w = cmd->w;
    if (cmd->detached || w->conn == NULL || w->conn_gen != cmd->conn_gen ||
        !cw_conn_is_open(w->conn))
        return NULL;
    return w->conn;
}

double cw_cmd_elapsed(const cw_cmd_t *cmd)
{
    return (double)(uv_hrtime() - cmd->start_hr) / 1e9;
}

/* Response to one of our update requests: only the window is tracked. */
static void update_ack(cw_conn_t *c, void *ctx, const cw_msg_t *resp)
{
    cw_worker_t *w = ctx;
    if (w->inflight_updates > 0)
        w->inflight_updates--;
    if (resp && resp->u.response.is_exception) {
        cw_str_t s = {"?", 1};
        cw_obj_str(&resp->u.response.result, &s);
        cw_warn("master refused an update: %.*s", (int)s.len, s.ptr);
    }
    if (resp)
        cw_worker_kick(w);
}

/* Send pending output: full batches only, or everything when `all`. */
static void cmd_flush(cw_cmd_t *cmd, bool all)
{
    cw_worker_t *w = cmd->w;
    cw_conn_t *conn = cw_cmd_conn(cmd);
    if (conn == NULL) {
        /* nobody to send to: drop it so memory stays bounded */
        cw_outbuf_free(&cmd->out);
        cw_outbuf_init(&cmd->out, w->settings.buffer_size);
    }
    while (conn && !cw_outbuf_empty(&cmd->out)) {
        if (!all && cw_outbuf_size(&cmd->out) < cmd->out.buffer_size)
            break;
        if (!cw_worker_can_send(w)) {
            cmd->flush_wanted = true;
            return;
        }
        cw_buf_t b = CW_BUF_INIT;
        msgpack_packer pk;
        cw_pack_init(&pk, &b);
        int64_t seq = cw_conn_next_seq(conn);
        int rc = cw_outbuf_pack_update(&cmd->out, &pk, seq, cmd->idstr);
        if (rc <= 0) {
            cw_buf_free(&b);
            if (rc < 0)
                cw_error("command %s: out of memory packing output", cmd->id);
            break;
        }
        w->inflight_updates++;
        if (cw_conn_request(conn, seq, &b, update_ack, w) < 0) {
            /* the callback is not registered when sending fails */
            w->inflight_updates--;
            break;
        }
    }
    cmd->flush_wanted = false;
    if (cw_outbuf_empty(&cmd->out))
        uv_timer_stop(&cmd->flush_timer);
    if (cmd->paused && cw_outbuf_size(&cmd->out) < pause_at(cmd) / 2) {
        cmd->paused = false;
        if (cmd->impl->resume && !cmd->finishing)
            cmd->impl->resume(cmd);
    }
    if (cmd->finishing && !cmd->completed)
        cmd_try_complete(cmd);
}

void cw_cmd_output_added(cw_cmd_t *cmd)
{
    if (cmd->completed) {
        /* nothing may follow `complete`: late output is dropped */
        cw_outbuf_free(&cmd->out);
        cw_outbuf_init(&cmd->out, cmd->w->settings.buffer_size);
        return;
    }
    if (cmd->detached) {
        cmd_flush(cmd, true); /* drops it */
        return;
    }
    if (cw_outbuf_size(&cmd->out) >= cmd->out.buffer_size) {
        cmd_flush(cmd, false);
    }
    if (!cw_outbuf_empty(&cmd->out) && !uv_is_active((uv_handle_t *)&cmd->flush_timer)) {
        uint64_t delay = FLUSH_DELAY_MS;
        uint64_t max = (uint64_t)(cmd->w->settings.buffer_timeout * 1000);
        if (delay > max)
            delay = max;
        uv_timer_start(&cmd->flush_timer, flush_timer_cb, delay, 0);
    }
}

/* Unsent output at which a command's producer pauses; it resumes below half of it. */
static size_t pause_at(const cw_cmd_t *cmd)
{
    size_t max = cmd->w->cfg->max_pending_output;
    return max ? max : 2 * cmd->out.buffer_size;
}

bool cw_cmd_should_pause(cw_cmd_t *cmd)
{
    if (cmd->detached)
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
    if (cw_outbuf_add_header(&cmd->out, text, cw_now()) < 0)
        cw_error("command %s: out of memory", cmd->id);
    if (text != stackbuf)
        free(text);
    cw_cmd_output_added(cmd);
}

void cw_cmd_add_int(cw_cmd_t *cmd, const char *key, int64_t v)
{
    if (strcmp(key, "rc") == 0) {
        cmd->has_rc = true;
        cmd->rc = v;
    }
    cw_outbuf_add_int(&cmd->out, key, v);
    cw_cmd_output_added(cmd);
}

void cw_cmd_add_float(cw_cmd_t *cmd, const char *key, double v)
{
    cw_outbuf_add_float(&cmd->out, key, v);
    cw_cmd_output_added(cmd);
}

void cw_cmd_add_str(cw_cmd_t *cmd, const char *key, const char *v)
{
    cw_outbuf_add_str(&cmd->out, key, v);
    cw_cmd_output_added(cmd);
}

void cw_cmd_add_packed(cw_cmd_t *cmd, const char *key, const void *packed, size_t len)
{
    cw_outbuf_add_packed(&cmd->out, key, packed, len);
    cw_cmd_output_added(cmd);
}

static void complete_ack(cw_conn_t *c, void *ctx, const cw_msg_t *resp)
{
    (void)c;
    cw_worker_t *w = ctx;
    if (resp && resp->u.response.is_exception) {
        cw_str_t s = {"?", 1};
        cw_obj_str(&resp->u.response.result, &s);
        cw_warn("master refused a complete: %.*s", (int)s.len, s.ptr);
    }
    cw_worker_acked(w);
}

/* Once every update is on its way, send `complete` and retire. */
static void cmd_try_complete(cw_cmd_t *cmd)
{
    if (cmd->completed)
        return;
    cw_conn_t *conn = cw_cmd_conn(cmd);
    if (conn && !cw_outbuf_empty(&cmd->out)) {
        cmd_flush(cmd, true);
        return; /* cmd_flush calls us again when it is done */
    }
    cmd->completed = true;
    uv_timer_stop(&cmd->flush_timer);
    if (conn) {
        cw_buf_t b = CW_BUF_INIT;
        msgpack_packer pk;
        cw_pack_init(&pk, &b);
        int64_t seq = cw_conn_next_seq(conn);
        if (cw_pack_complete(&pk, seq, cmd->idstr, cmd->failure) == 0)
            cw_conn_request(conn, seq, &b, complete_ack, cmd->w);
        else
            cw_buf_free(&b);
    }
    if (!cmd->destroying) {
        cmd->destroying = true;
        cmd->impl->destroy(cmd);
    }
}

void cw_cmd_finish(cw_cmd_t *cmd, const char *failure)
{
    if (cmd->finishing)
        return;
    cmd->finishing = true;
    if (failure) {
        cmd->failure = strdup(failure);
    }
    double el = cw_cmd_elapsed(cmd);
    if (failure || !cmd->has_rc || cmd->rc != 0)
        cmd->w->n_commands_failed++;
    /* The stock worker sends `elapsed` only for commands that ran to their
     * end; after an interrupt the master gets rc and complete only. */
    if (!cmd->interrupted && !cmd->detached)
        cw_outbuf_add_float(&cmd->out, "elapsed", el);
    cw_info("command %s finished%s%s in %.3f s", cmd->id, failure ? ": " : "",
            failure ? failure : "", el);
    cmd_try_complete(cmd);
}

static void cmd_free_cb(uv_handle_t *h)
{
    cw_cmd_t *cmd = h->data;
    cw_worker_t *w = cmd->w;
    w->bytes_output += cmd->out.bytes_text;
    cw_args_free(&cmd->args);
    cw_outbuf_free(&cmd->out);
    free(cmd->failure);
    free(cmd->id);
    free(cmd);
    /* a stopping worker waits for its last command */
    if (w->exiting && w->ncmds == 0)
        cw_worker_stop(w, w->exit_code, NULL);
    else if (w->draining && w->ncmds == 0) {
        w->linger = true;
        cw_worker_stop(w, 0, "every command finished");
    }
}

void cw_cmd_destroyed(cw_cmd_t *cmd)
{
    cw_worker_t *w = cmd->w;
    if (w->conn)
        cw_conn_forget(w->conn, cmd);
    if (cmd->prev)
        cmd->prev->next = cmd->next;
    else
        w->cmds = cmd->next;
    if (cmd->next)
        cmd->next->prev = cmd->prev;
    w->ncmds--;
    cw_worker_status(w);
    uv_close((uv_handle_t *)&cmd->flush_timer, cmd_free_cb);
}

int cw_cmd_request(cw_cmd_t *cmd, int64_t seq, cw_buf_t *msg, cw_conn_resp_cb cb)
{
    cw_conn_t *conn = cw_cmd_conn(cmd);
    if (conn == NULL) {
        cw_buf_free(msg);
        return CW_ECLOSED;
    }
    return cw_conn_request(conn, seq, msg, cb, cmd);
}

void cw_cmd_interrupt(cw_cmd_t *cmd, const char *why)
{
    cmd_flush(cmd, true);
    if (cmd->finishing || cmd->interrupted)
        return;
    cmd->interrupted = true;
    cw_info("command %s: interrupting (%s)", cmd->id, why);
    cmd->impl->interrupt(cmd, why);
}

void cw_cmd_detach(cw_cmd_t *cmd)
{
    if (cmd->detached)
        return;
    cmd->detached = true;
    cw_outbuf_free(&cmd->out);
    cw_outbuf_init(&cmd->out, cmd->w->settings.buffer_size);
    if (cmd->paused) {
        cmd->paused = false;
        if (cmd->impl->resume && !cmd->finishing)
            cmd->impl->resume(cmd);
    }
    if (!cmd->finishing && !cmd->interrupted) {
        cmd->interrupted = true;
        cw_info("command %s: interrupting (connection lost)", cmd->id);
        cmd->impl->interrupt(cmd, "connection lost");
    } else if (cmd->finishing && !cmd->completed) {
        cmd_try_complete(cmd);
    }
}
