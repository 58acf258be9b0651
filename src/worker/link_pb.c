/* The Perspective Broker link (reference PB): a TCP connection (TLS when
 * configured, net/tunlink.c) carrying a cw_pb_t worker session
 * (cworker/pb.h).  The master's calls on the Bot and on the builders go to
 * the dispatcher; the commands report through this link's session, as
 * calls on the master's RemoteCommand, FileWriter and FileReader objects.
 *
 * Objects: the Bot is luid 1 (the session exports it); every builder of
 * setBuilderList is a pinned export with a luid that stays the same across
 * reconfigs; a builder holds at most one command (PB's command slot).  The
 * references the master hands us in startCommand (the RemoteCommand, the
 * writer or reader) are given back with decref once the master has
 * answered `complete`, or at once when the command is refused.
 *
 * Liveness: the master never pings a PB worker in a useful way (a print
 * every hour), so the worker asks: perspective.keepalive() after
 * ping_interval of silence, and every `keepalive` ms anyway (the stock
 * worker's setting); nothing received for dead_timeout closes the link. */
#include "link_pb.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cmd/fsutil.h"
#include "cworker/args_pb.h"
#include "cworker/pb.h"
#include "cworker/pb_update.h"
#include "log.h"
#include "tunlink.h"

/* Updates in flight (sent, not answered) per link, as over msgpack. */
#define MAX_INFLIGHT_UPDATES 8
/* Upload blocks from this size are sent from the command's buffer, not copied (pl_flush). */
#define HOLE_MIN 4096
/* Largest transfer block: banana's limit on one string (reference PB §7.6). */
#define PB_MAX_BLOCK CW_BANANA_SIZE_LIMIT

/* What the answer to one of our calls is for (the ctx of the call). */
typedef enum pcall_kind {
    PCALL_UPDATE,
    PCALL_KEEPALIVE,
    PCALL_SHUTDOWN,
    PCALL_COMPLETE,
    PCALL_XFER,
} pcall_kind_t;

typedef struct pcall {
    pcall_kind_t kind;
    cw_cmd_t *cmd;   /* XFER: NULL once the command is released */
    int64_t refs[3]; /* COMPLETE: the references to give back once answered */
} pcall_t;

/* Calls whose answers need no memory of their own. */
static pcall_t k_update = {.kind = PCALL_UPDATE};
static pcall_t k_keepalive = {.kind = PCALL_KEEPALIVE};
static pcall_t k_shutdown = {.kind = PCALL_SHUTDOWN};

/* A builder of setBuilderList. */
typedef struct pbuilder {
    char *name;
    char *dir;  /* builddir, as the master gave it */
    char *path; /* join(basedir, builddir) */
    int64_t luid;
    cw_cmd_t *cmd; /* its command, or NULL */
} pbuilder_t;

/* A command's data in this link. */
typedef struct pcmd {
    int64_t cmdref, writer, reader; /* the master's objects (0: none) */
    int64_t builder;                /* luid of its builder */
    pcall_t *xfer;                  /* the transfer request waiting for its answer */
    cw_xfer_cb cb;
    bool completed; /* complete sent: the references went with it */
} pcmd_t;

typedef struct plink {
    cw_link_t base;
    uv_loop_t *loop;
    cw_link_pb_options_t opt;
    cw_tunlink_t tl;
    uv_timer_t timer;
    cw_pb_t *pb;
    cw_buf_t out; /* what the session wrote, not yet handed to the socket */
    /* an upload block sent from where it is: its bytes go at out[hole_at] */
    const uint8_t *hole;
    size_t hole_len, hole_at;
    cw_cmd_settings_t settings;
    pbuilder_t *builders;
    size_t nbuilders;
    int64_t perspective;
    unsigned inflight_updates;
    unsigned waiting; /* updates, completes and transfer requests not answered */
    bool keepalive_waiting;
    uint64_t started, last_rx, last_keepalive, last_tick, tick_ms;
    char peer[64];
    bool in_feed;      /* inside cw_pb_feed: the session cannot be closed now */
    bool close_wanted; /* ... so the close waits for the feed to return */
    bool closing;
    bool got_bytes;
    bool held;   /* liveness checks held (pl_hold_liveness) */
    int handles; /* handles still to close before the link is freed */
    int err;
    char why[320];
} plink_t;

static void pl_fail(plink_t *l, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static plink_t *from_session(cw_session_t *s)
{
    return (plink_t *)((char *)s - offsetof(cw_link_t, session));
}

static char *dupn(const char *p, size_t n)
{
    char *s = malloc(n + 1);
    if (s) {
        memcpy(s, p, n);
        s[n] = '\0';
    }
    return s;
}

/* Hand what the session wrote to the socket (with the block of a hole in its place). */
static void pl_flush(plink_t *l)
{
    const uint8_t *hole = l->hole;
    size_t hole_at = l->hole_at;
    l->hole = NULL;
    if (l->out.len == 0 || l->tl.failed || l->tl.closing)
        return;
    int rc = 0;
    if (hole) {
        rc = cw_tunlink_send(&l->tl, l->out.data, hole_at);
        if (rc == 0)
            rc = cw_tunlink_send(&l->tl, hole, l->hole_len);
        if (rc == 0 && l->out.len > hole_at)
            rc = cw_tunlink_send(&l->tl, l->out.data + hole_at, l->out.len - hole_at);
    } else {
        rc = cw_tunlink_send(&l->tl, l->out.data, l->out.len);
    }
    l->out.len = 0;
    if (rc < 0)
        pl_fail(l, rc, "%s", l->tl.why ? l->tl.why : cw_strerror(rc));
}

static pbuilder_t *find_builder(plink_t *l, int64_t luid)
{
    for (size_t i = 0; i < l->nbuilders; i++)
        if (l->builders[i].luid == luid)
            return &l->builders[i];
    return NULL;
}

/* ---- the session ---- */

static bool ps_can_send(cw_session_t *s)
{
    plink_t *l = from_session(s);
    return !l->closing && l->pb && cw_tunlink_writable(&l->tl) &&
           l->inflight_updates < MAX_INFLIGHT_UPDATES;
}

static int ps_send_update(cw_session_t *s, cw_cmd_t *cmd)
{
    plink_t *l = from_session(s);
    pcmd_t *pc = cmd->link;
    if (l->closing || pc == NULL || pc->completed)
        return CW_ECLOSED;
    bool dropped;
    int rc = cw_pb_send_update(l->pb, pc->cmdref, &cmd->out, &k_update, &dropped);
    if (dropped)
        cw_error("command %s: output too large for one Perspective Broker message dropped "
                 "(a list of more than %d entries)",
                 cmd->id, CW_BANANA_SIZE_LIMIT);
    if (rc == 1) {
        l->inflight_updates++;
        l->waiting++;
    }
    pl_flush(l);
    return rc < 0 ? rc : (rc == 1 || dropped) ? 1 : 0;
}

static int ps_send_complete(cw_session_t *s, cw_cmd_t *cmd, const char *failure)
{
    plink_t *l = from_session(s);
    pcmd_t *pc = cmd->link;
    if (l->closing || pc == NULL || pc->completed)
        return CW_ECLOSED;
    pcall_t *call = calloc(1, sizeof *call);
    if (call == NULL)
        return -ENOMEM;
    call->kind = PCALL_COMPLETE;
    call->refs[0] = pc->cmdref;
    call->refs[1] = pc->writer;
    call->refs[2] = pc->reader;
    cw_jelly_enc_t e;
    int rc = cw_pb_call_begin(l->pb, pc->cmdref, "complete", 1, call, &e, NULL);
    if (rc == 0) {
        if (failure) {
            /* what the stock worker's failures look like to the master */
            cw_jelly_failure_desc_t f = {.type = "buildbot_worker.exceptions.AbandonChain",
                                         .value = failure};
            cw_jelly_failure(&e, &f);
        } else {
            cw_jelly_none(&e);
        }
        cw_jelly_dict(&e, 0);
        rc = cw_pb_call_end(l->pb, &e);
    }
    if (rc < 0) {
        free(call);
        return rc;
    }
    pc->completed = true;
    l->waiting++;
    pl_flush(l);
    return 0;
}

/* The method and arguments of a transfer request on the writer or reader. */
static int xfer_call(plink_t *l, const pcmd_t *pc, const cw_xfer_req_t *r, pcall_t *call)
{
    int64_t target =
        (r->op == CW_XFER_READ || r->op == CW_XFER_READ_CLOSE) ? pc->reader : pc->writer;
    static const char *const methods[] = {
        [CW_XFER_WRITE] = "write",   [CW_XFER_CLOSE] = "close", [CW_XFER_UTIME] = "utime",
        [CW_XFER_UNPACK] = "unpack", [CW_XFER_READ] = "read",   [CW_XFER_READ_CLOSE] = "close",
    };
    size_t nargs = (r->op == CW_XFER_WRITE || r->op == CW_XFER_UTIME || r->op == CW_XFER_READ);
    if (target == 0)
        return CW_EBADARG;
    cw_jelly_enc_t e;
    int rc = cw_pb_call_begin(l->pb, target, methods[r->op], nargs, call, &e, NULL);
    if (rc < 0)
        return rc;
    size_t at = 0;
    bool hole = false;
    switch (r->op) {
    case CW_XFER_WRITE:
        /* A large block is not copied into the message: pl_flush() sends it from where it
         * is, between the message's head and tail (the same bytes on the wire; small ones
         * are copied, so a block that equals a vocabulary word is still encoded as one). */
        if (r->len >= HOLE_MIN) {
            cw_jelly_bytes_hole(&e, r->len, &at);
            hole = true;
        } else {
            cw_jelly_bytes(&e, r->data, r->len);
        }
        break;
    case CW_XFER_UTIME: /* one argument: the tuple (atime, mtime) */
        cw_jelly_tuple(&e, 2);
        cw_jelly_float(&e, r->atime);
        cw_jelly_float(&e, r->mtime);
        break;
    case CW_XFER_READ:
        cw_jelly_int64(&e, r->length > PB_MAX_BLOCK ? PB_MAX_BLOCK : r->length);
        break;
    default:
        break;
    }
    cw_jelly_dict(&e, 0);
    int rc2 = cw_pb_call_end(l->pb, &e);
    if (rc2 == 0 && hole) {
        l->hole = r->data;
        l->hole_len = r->len;
        l->hole_at = at;
    }
    return rc2;
}

static int ps_xfer(cw_session_t *s, cw_cmd_t *cmd, const cw_xfer_req_t *req, cw_xfer_cb cb)
{
    plink_t *l = from_session(s);
    pcmd_t *pc = cmd->link;
    if (l->closing || pc == NULL || pc->completed)
        return CW_ECLOSED;
    if (pc->xfer)
        return CW_EBADARG; /* stop-and-wait: one at a time */
    pcall_t *call = calloc(1, sizeof *call);
    if (call == NULL)
        return -ENOMEM;
    call->kind = PCALL_XFER;
    call->cmd = cmd;
    int rc = xfer_call(l, pc, req, call);
    if (rc < 0) {
        free(call);
        return rc;
    }
    pc->xfer = call;
    pc->cb = cb;
    l->waiting++;
    pl_flush(l);
    return 0;
}

static void ps_release(cw_session_t *s, cw_cmd_t *cmd)
{
    plink_t *l = from_session(s);
    pcmd_t *pc = cmd->link;
    if (pc == NULL)
        return;
    if (pc->xfer)
        pc->xfer->cmd = NULL; /* its answer, when it comes, is dropped */
    pbuilder_t *b = find_builder(l, pc->builder);
    if (b && b->cmd == cmd)
        b->cmd = NULL;
    free(pc);
    cmd->link = NULL;
}

static const cw_session_ops_t plink_session_ops = {
    .can_send = ps_can_send,
    .send_update = ps_send_update,
    .send_complete = ps_send_complete,
    .xfer = ps_xfer,
    .release = ps_release,
};

/* ---- answers to our calls ---- */

/* The answer to a transfer request, as the command sees it. */
static void xfer_answered(plink_t *l, pcall_t *call, const cw_pb_event_t *ev)
{
    cw_cmd_t *cmd = call->cmd;
    if (cmd == NULL)
        return;
    pcmd_t *pc = cmd->link;
    if (pc && pc->xfer == call)
        pc->xfer = NULL;
    cw_xfer_answer_t a = {0};
    if (ev->type == CW_PB_EV_ERROR) {
        a.status = ev->u.error.lost ? CW_ECLOSED : CW_EPROTO;
        a.error = ev->u.error.fail_value.ptr;
        a.error_len = ev->u.error.fail_value.len;
    } else {
        const cw_jelly_t *v = ev->u.answer.value;
        if (v->type == CW_JELLY_NONE) {
            a.nil = true;
        } else if (v->type == CW_JELLY_BYTES || v->type == CW_JELLY_UNICODE) {
            /* bytes; unicode "" is what a closed FileReader answers */
            a.data = (const uint8_t *)v->u.s.ptr;
            a.len = v->u.s.len;
        } else {
            a.not_data = true;
        }
    }
    if (pc && pc->cb)
        pc->cb(cmd, &a);
    (void)l;
}

static void on_answer(plink_t *l, const cw_pb_event_t *ev)
{
    bool error = ev->type == CW_PB_EV_ERROR;
    pcall_t *call = error ? ev->u.error.ctx : ev->u.answer.ctx;
    if (call == NULL)
        return;
    if (error && !ev->u.error.lost && call->kind != PCALL_XFER)
        cw_warn("master %s: error answer to our %s: %.*s: %.*s", l->peer,
                call->kind == PCALL_UPDATE     ? "update"
                : call->kind == PCALL_COMPLETE ? "complete"
                : call->kind == PCALL_SHUTDOWN ? "shutdown request"
                                               : "keepalive",
                (int)ev->u.error.fail_type.len, ev->u.error.fail_type.ptr,
                (int)ev->u.error.fail_value.len, ev->u.error.fail_value.ptr);
    switch (call->kind) {
    case PCALL_UPDATE:
        if (l->inflight_updates > 0)
            l->inflight_updates--;
        if (l->waiting > 0)
            l->waiting--;
        if (!l->closing)
            cw_cmds_kick(l->base.dispatch->cmds, &l->base.session);
        break;
    case PCALL_KEEPALIVE:
        l->keepalive_waiting = false;
        if (!error)
            cw_debug("master %s answered keepalive", l->peer);
        break;
    case PCALL_SHUTDOWN:
        if (!error)
            cw_info("the master accepted the graceful shutdown: it stops the worker once the "
                    "running build is done");
        break;
    case PCALL_COMPLETE:
        if (l->waiting > 0)
            l->waiting--;
        /* the master is done with these objects on our side: give them back
         * (it refuses new commands past 1024 live references) */
        for (int i = 0; i < 3; i++)
            if (!l->closing && call->refs[i] && cw_pb_refs_held(l->pb, call->refs[i]) > 0)
                cw_pb_decref(l->pb, call->refs[i]);
        free(call);
        cw_cmds_acked(l->base.dispatch->cmds);
        break;
    case PCALL_XFER:
        if (l->waiting > 0)
            l->waiting--;
        xfer_answered(l, call, ev);
        free(call);
        break;
    }
}

/* ---- the master's calls ---- */

/* A text argument: positional i, else keyword key. */
static bool arg_text(const cw_pb_event_t *ev, size_t i, const char *key, cw_str_t *out)
{
    size_t n;
    const cw_jelly_t *a = cw_jelly_items(ev->u.call.args, &n);
    const cw_jelly_t *v = i < n ? &a[i] : cw_jelly_dict_get(ev->u.call.kwargs, key);
    return v && cw_jelly_text(v, out);
}

static void answer_none(plink_t *l, const cw_pb_event_t *ev)
{
    if (ev->u.call.answer_required)
        cw_pb_answer_none(l->pb, ev->u.call.reqid);
}

static void answer_error(plink_t *l, const cw_pb_event_t *ev, const char *type, const char *text)
{
    if (!ev->u.call.answer_required)
        return;
    cw_jelly_failure_desc_t f = {.type = type, .value = text};
    cw_pb_answer_error(l->pb, ev->u.call.reqid, &f);
}

/* worker_commands: every name of every command, at the command version. */
static void put_commands(cw_jelly_enc_t *e)
{
    size_t n = 0;
    for (int k = 0; k < CW_CMD__COUNT; k++)
        if (cw_cmd_supported((cw_cmd_kind_t)k))
            for (const char *const *nm = cw_cmd_names((cw_cmd_kind_t)k); *nm; nm++)
                n++;
    cw_jelly_dict(e, n);
    for (int k = 0; k < CW_CMD__COUNT; k++) {
        if (!cw_cmd_supported((cw_cmd_kind_t)k))
            continue;
        for (const char *const *nm = cw_cmd_names((cw_cmd_kind_t)k); *nm; nm++) {
            cw_jelly_str(e, *nm);
            cw_jelly_str(e, CW_COMMAND_VERSION);
        }
    }
}

static void put_kv(cw_jelly_enc_t *e, const cw_info_kv_t *kv)
{
    cw_jelly_unicode_lossy(e, kv->key, strlen(kv->key));
    cw_jelly_unicode_lossy(e, kv->val.data ? (const char *)kv->val.data : "", kv->val.len);
}

/* getWorkerInfo: the same keys as msgpack's get_worker_info (reference PB §7.1). */
static void on_get_worker_info(plink_t *l, const cw_pb_event_t *ev)
{
    cw_info_t in;
    if (cw_dispatch_info(l->base.dispatch, &in) < 0) {
        answer_error(l, ev, "builtins.MemoryError", "cannot collect worker info");
        return;
    }
    cw_jelly_enc_t e;
    if (ev->u.call.answer_required && cw_pb_answer_begin(l->pb, ev->u.call.reqid, &e) == 0) {
        cw_jelly_dict(&e, in.nfiles + 7);
        for (size_t i = 0; i < in.nfiles; i++)
            put_kv(&e, &in.files[i]);
        cw_jelly_str(&e, "environ");
        cw_jelly_dict(&e, in.nenv);
        for (size_t i = 0; i < in.nenv; i++)
            put_kv(&e, &in.env[i]);
        cw_jelly_str(&e, "system");
        cw_jelly_str(&e, in.system);
        cw_jelly_str(&e, "basedir");
        cw_jelly_unicode_lossy(&e, in.basedir, strlen(in.basedir));
        cw_jelly_str(&e, "numcpus");
        cw_jelly_int64(&e, in.numcpus);
        cw_jelly_str(&e, "version");
        cw_jelly_str(&e, in.version);
        cw_jelly_str(&e, "worker_commands");
        put_commands(&e);
        cw_jelly_str(&e, "delete_leftover_dirs");
        cw_jelly_bool(&e, in.delete_leftover_dirs);
        int rc = cw_pb_answer_end(l->pb, &e);
        if (rc < 0) {
            cw_error("cannot send the worker info: %s", cw_strerror(rc));
            answer_error(l, ev, "builtins.ValueError", "cannot encode the worker info");
        }
    }
    cw_info_free(&in);
}

static void on_get_commands(plink_t *l, const cw_pb_event_t *ev)
{
    cw_jelly_enc_t e;
    if (ev->u.call.answer_required && cw_pb_answer_begin(l->pb, ev->u.call.reqid, &e) == 0) {
        put_commands(&e);
        cw_pb_answer_end(l->pb, &e);
    }
}

static void on_get_version(plink_t *l, const cw_pb_event_t *ev)
{
    cw_info_t in;
    if (cw_dispatch_info(l->base.dispatch, &in) < 0) {
        answer_error(l, ev, "builtins.MemoryError", "out of memory");
        return;
    }
    cw_jelly_enc_t e;
    if (ev->u.call.answer_required && cw_pb_answer_begin(l->pb, ev->u.call.reqid, &e) == 0) {
        cw_jelly_str(&e, in.version);
        cw_pb_answer_end(l->pb, &e);
    }
    cw_info_free(&in);
}

/* The top-level directory names the builders use ("a" for "a/b"), and
 * "info": what the leftover check keeps. */
static bool dir_wanted(const plink_t *l, const char *name)
{
    if (strcmp(name, "info") == 0)
        return true;
    size_t n = strlen(name);
    for (size_t i = 0; i < l->nbuilders; i++) {
        const char *d = l->builders[i].dir;
        while (d[0] == '.' && d[1] == '/')
            d += 2;
        if (strncmp(d, name, n) == 0 && (d[n] == '\0' || d[n] == '/'))
            return true;
    }
    return false;
}

/* A leftover directory's removal, in the thread pool. */
typedef struct leftover {
    uv_work_t req;
    char *path;
    size_t max_depth;
    cw_buf_t errors;
    int rc;
} leftover_t;

static void leftover_work(uv_work_t *req)
{
    leftover_t *w = req->data;
    w->rc = cw_rmtree(w->path, w->max_depth, NULL, &w->errors);
}

static void leftover_done(uv_work_t *req, int status)
{
    leftover_t *w = req->data;
    char buf[128];
    if (status < 0 || w->rc < 0)
        cw_warn("cannot remove the leftover directory '%s': %s", w->path,
                status < 0 ? uv_strerror(status) : cw_fs_strerror(w->rc, buf, sizeof buf));
    if (w->errors.len)
        cw_warn("%.*s", (int)w->errors.len, (const char *)w->errors.data);
    free(w->path);
    cw_buf_free(&w->errors);
    free(w);
}

/* What the stock worker does after setBuilderList: name the directories of
 * basedir that no builder uses, and remove them when asked to. */
static void check_leftover_dirs(plink_t *l)
{
    uv_fs_t req;
    int n = uv_fs_scandir(l->loop, &req, l->opt.basedir, 0, NULL);
    if (n < 0) {
        cw_warn("cannot list %s: %s", l->opt.basedir, uv_strerror(n));
        uv_fs_req_cleanup(&req);
        return;
    }
    uv_dirent_t ent;
    while (uv_fs_scandir_next(&req, &ent) != UV_EOF) {
        if (ent.type != UV_DIRENT_DIR || dir_wanted(l, ent.name))
            continue;
        char path[4200];
        snprintf(path, sizeof path, "%s/%s", l->opt.basedir, ent.name);
        if (!l->opt.delete_leftover_dirs) {
            cw_info("I have a leftover directory '%s' that is not being used by the buildmaster: "
                    "you can delete it now",
                    ent.name);
            continue;
        }
        cw_info("deleting directory '%s' that is not being used by the buildmaster", ent.name);
        leftover_t *w = calloc(1, sizeof *w);
        if (w == NULL || (w->path = strdup(path)) == NULL) {
            free(w);
            continue;
        }
        w->max_depth = l->opt.fs_max_depth;
        w->req.data = w;
        if (uv_queue_work(l->loop, &w->req, leftover_work, leftover_done) < 0) {
            free(w->path);
            free(w);
        }
    }
    uv_fs_req_cleanup(&req);
}

/* os.path.join(basedir, dir) */
static char *join_basedir(const char *basedir, const char *dir)
{
    if (dir[0] == '/')
        return strdup(dir);
    size_t a = strlen(basedir), b = strlen(dir);
    char *p = malloc(a + b + 2);
    if (p) {
        memcpy(p, basedir, a);
        size_t k = a;
        if (a == 0 || basedir[a - 1] != '/')
            p[k++] = '/';
        memcpy(p + k, dir, b + 1);
    }
    return p;
}

static void builder_free(pbuilder_t *b)
{
    free(b->name);
    free(b->dir);
    free(b->path);
}

/* One (name, builddir) entry: a builder, new or known (keeping its luid). */
static int add_builder(plink_t *l, pbuilder_t *keep, size_t *nkeep, const cw_jelly_t *item)
{
    size_t k;
    const cw_jelly_t *t = cw_jelly_items(item, &k);
    cw_str_t name, dir;
    if (k != 2 || !cw_jelly_text(&t[0], &name) || !cw_jelly_text(&t[1], &dir) || name.len == 0 ||
        memchr(name.ptr, 0, name.len) || memchr(dir.ptr, 0, dir.len)) {
        cw_warn("setBuilderList: an entry that is not (name, builddir) ignored");
        return 0;
    }
    for (size_t i = 0; i < *nkeep; i++)
        if (strlen(keep[i].name) == name.len && memcmp(keep[i].name, name.ptr, name.len) == 0) {
            cw_warn("setBuilderList: builder '%.*s' listed twice; the first entry counts",
                    (int)name.len, name.ptr);
            return 0;
        }
    pbuilder_t b = {.name = dupn(name.ptr, name.len),
                    .dir = dupn(dir.len ? dir.ptr : ".", dir.len ? dir.len : 1)};
    if (b.name == NULL || b.dir == NULL || (b.path = join_basedir(l->opt.basedir, b.dir)) == NULL) {
        builder_free(&b);
        return -ENOMEM;
    }
    pbuilder_t *old = NULL;
    for (size_t i = 0; i < l->nbuilders; i++)
        if (strcmp(l->builders[i].name, b.name) == 0)
            old = &l->builders[i];
    if (old) {
        b.luid = old->luid;
        b.cmd = old->cmd;
        if (strcmp(old->dir, b.dir) != 0)
            cw_info("changing builddir for builder %s from %s to %s", b.name, old->dir, b.dir);
    } else {
        int rc = cw_pb_export(l->pb, NULL, true, &b.luid);
        if (rc < 0) {
            cw_error("setBuilderList: cannot add builder '%s': %s", b.name, cw_strerror(rc));
            builder_free(&b);
            return rc;
        }
    }
    int rc = cw_mkdirs(b.path, 0777);
    char buf[128];
    if (rc < 0)
        cw_warn("builder %s: cannot create its directory %s: %s", b.name, b.path,
                cw_fs_strerror(rc, buf, sizeof buf));
    keep[(*nkeep)++] = b;
    return 0;
}

/* setBuilderList([(name, builddir), ...]) -> {name: builder}. */
static void on_set_builder_list(plink_t *l, const cw_pb_event_t *ev)
{
    size_t n, m = 0;
    const cw_jelly_t *a = cw_jelly_items(ev->u.call.args, &n);
    const cw_jelly_t *list = n == 1 ? cw_jelly_items(&a[0], &m) : NULL;
    if (list == NULL && !(n == 1 && (a[0].type == CW_JELLY_LIST || a[0].type == CW_JELLY_TUPLE))) {
        answer_error(l, ev, "builtins.TypeError",
                     "setBuilderList takes one list of (name, builddir)");
        return;
    }
    pbuilder_t *keep = calloc(m ? m : 1, sizeof *keep);
    size_t nkeep = 0;
    int rc = keep ? 0 : -ENOMEM;
    for (size_t i = 0; rc == 0 && i < m; i++)
        rc = add_builder(l, keep, &nkeep, &list[i]);
    if (rc < 0) {
        for (size_t i = 0; i < nkeep; i++) {
            if (find_builder(l, keep[i].luid) == NULL)
                cw_pb_unexport(l->pb, keep[i].luid);
            builder_free(&keep[i]);
        }
        free(keep);
        answer_error(l, ev, "builtins.MemoryError", "cannot set up the builders");
        return;
    }
    /* builders no longer listed go, and so does their command */
    for (size_t j = 0; j < l->nbuilders; j++) {
        pbuilder_t *b = &l->builders[j];
        bool listed = false;
        for (size_t i = 0; i < nkeep; i++)
            listed |= keep[i].luid == b->luid;
        if (listed)
            continue;
        cw_info("builder %s removed by the master", b->name);
        if (b->cmd) {
            pcmd_t *pc = b->cmd->link;
            if (pc)
                pc->builder = 0;
            cw_dispatch_interrupt(l->base.dispatch, &l->base.session, b->cmd->idstr);
        }
        cw_pb_unexport(l->pb, b->luid);
    }
    for (size_t j = 0; j < l->nbuilders; j++)
        builder_free(&l->builders[j]);
    free(l->builders);
    l->builders = keep;
    l->nbuilders = nkeep;

    cw_jelly_enc_t e;
    if (ev->u.call.answer_required && cw_pb_answer_begin(l->pb, ev->u.call.reqid, &e) == 0) {
        cw_jelly_dict(&e, nkeep);
        for (size_t i = 0; i < nkeep; i++) {
            cw_jelly_unicode_lossy(&e, keep[i].name, strlen(keep[i].name));
            cw_jelly_remote(&e, keep[i].luid);
        }
        rc = cw_pb_answer_end(l->pb, &e);
        if (rc < 0)
            answer_error(l, ev, "builtins.ValueError", "cannot encode the builder list");
    }
    cw_info("%zu builder(s): ready for builds", nkeep);
    check_leftover_dirs(l);
}

/* startCommand(cmdref, commandId, commandName, args) on builder b. */
static void on_start_command(plink_t *l, pbuilder_t *b, const cw_pb_event_t *ev)
{
    size_t n;
    const cw_jelly_t *a = cw_jelly_items(ev->u.call.args, &n);
    cw_str_t id, name;
    if (n != 4 || a[0].type != CW_JELLY_REMOTE || !cw_jelly_text(&a[1], &id) ||
        !cw_jelly_text(&a[2], &name) || id.len == 0 || memchr(id.ptr, 0, id.len)) {
        cw_warn("builder %s: startCommand with unexpected arguments refused", b->name);
        answer_error(l, ev, "builtins.TypeError",
                     "startCommand takes (command reference, command id, command name, args)");
        cw_pb_decref_value(l->pb, ev->u.call.args);
        return;
    }
    char err[512];
    int kind = cw_cmd_lookup(name);
    if (kind < 0) {
        snprintf(err, sizeof err, "unrecognized WorkerCommand '%.*s'", (int)name.len, name.ptr);
        cw_warn("command %.*s refused: %s", (int)id.len, id.ptr, err);
        cw_jelly_failure_desc_t f = {
            .type = "buildbot_worker.pb.UnknownCommand",
            .value = err,
            .parents = (const char *const[]){"buildbot_worker.pb.UnknownCommand",
                                             "twisted.spread.pb.Error", "builtins.Exception",
                                             "builtins.BaseException", "builtins.object"},
            .nparents = 5,
        };
        if (ev->u.call.answer_required)
            cw_pb_answer_error(l->pb, ev->u.call.reqid, &f);
        cw_pb_decref_value(l->pb, ev->u.call.args);
        return;
    }
    cw_args_t args;
    cw_pb_refs_t refs;
    int rc = cw_args_from_pb(&args, (cw_cmd_kind_t)kind, &a[3], b->path, l->opt.home, &refs, err,
                             sizeof err);
    if (rc == 0 && (kind == CW_CMD_UPLOAD_FILE || kind == CW_CMD_UPLOAD_DIRECTORY) &&
        refs.writer == 0) {
        cw_args_free(&args);
        rc = cw_err_fmt(CW_EBADARG, err, sizeof err, "missing argument 'writer'");
    } else if (rc == 0 && kind == CW_CMD_DOWNLOAD_FILE && refs.reader == 0) {
        cw_args_free(&args);
        rc = cw_err_fmt(CW_EBADARG, err, sizeof err, "missing argument 'reader'");
    }
    if (rc < 0) {
        cw_warn("command %.*s (%.*s) refused: %s", (int)id.len, id.ptr, (int)name.len, name.ptr,
                err);
        answer_error(l, ev, "builtins.ValueError", err);
        cw_pb_decref_value(l->pb, ev->u.call.args);
        return;
    }
    if (b->cmd) {
        /* the stock worker's rule: one command per builder */
        cw_warn("builder %s: leftover command %s, dropping it", b->name, b->cmd->id);
        pcmd_t *old = b->cmd->link;
        if (old)
            old->builder = 0;
        cw_dispatch_interrupt(l->base.dispatch, &l->base.session, b->cmd->idstr);
        b->cmd = NULL;
    }
    pcmd_t *pc = calloc(1, sizeof *pc);
    cw_cmd_t *cmd = NULL;
    if (pc == NULL) {
        snprintf(err, sizeof err, "out of memory");
        rc = -ENOMEM;
    } else {
        rc = cw_dispatch_start(l->base.dispatch, &l->base.session, &l->settings, id,
                               (cw_cmd_kind_t)kind, &args, err, sizeof err, &cmd);
    }
    if (rc < 0) {
        free(pc);
        cw_args_free(&args);
        answer_error(l, ev, "builtins.RuntimeError", err);
        cw_pb_decref_value(l->pb, ev->u.call.args);
        return;
    }
    pc->cmdref = a[0].u.luid;
    pc->writer = refs.writer;
    pc->reader = refs.reader;
    pc->builder = b->luid;
    cmd->link = pc;
    b->cmd = cmd;
    /* references in the arguments other than those three are not kept */
    for (size_t i = 0; i < a[3].u.dict.n; i++) {
        const cw_jelly_t *v = &a[3].u.dict.pairs[i].value;
        if (v->type == CW_JELLY_REMOTE && !v->shared &&
            (v->u.luid == refs.writer || v->u.luid == refs.reader))
            continue;
        cw_pb_decref_value(l->pb, v);
        cw_pb_decref_value(l->pb, &a[3].u.dict.pairs[i].key);
    }
    answer_none(l, ev);
    cw_debug("builder %s: command %s (%s) started", b->name, cmd->id,
             cw_cmd_names((cw_cmd_kind_t)kind)[0]);
    cw_cmd_start(cmd);
}

static void on_interrupt_command(plink_t *l, pbuilder_t *b, const cw_pb_event_t *ev)
{
    cw_str_t id = {"", 0}, why = {"", 0};
    arg_text(ev, 0, "stepId", &id);
    arg_text(ev, 1, "why", &why);
    cw_info("builder %s: asked to interrupt current command: %.*s", b->name, (int)why.len, why.ptr);
    if (b->cmd == NULL)
        cw_info(" .. but none was running");
    else
        cw_dispatch_interrupt(l->base.dispatch, &l->base.session, b->cmd->idstr);
    answer_none(l, ev);
}

static void on_print(plink_t *l, const cw_pb_event_t *ev, const char *prefix)
{
    cw_str_t text = {"", 0};
    arg_text(ev, 0, "message", &text);
    if (prefix) {
        cw_info("%s: message from master: %.*s", prefix, (int)text.len, text.ptr);
    } else {
        cw_dispatch_print(l->base.dispatch, text);
    }
    answer_none(l, ev);
}

static void on_shutdown(plink_t *l, const cw_pb_event_t *ev)
{
    answer_none(l, ev);
    pl_flush(l);
    cw_info("worker shutting down on command from master");
    cw_dispatch_shutdown(l->base.dispatch);
}

static void on_call(plink_t *l, const cw_pb_event_t *ev)
{
    cw_str_t m = ev->u.call.method;
    if (ev->u.call.target == CW_PB_BOT_LUID) {
        if (cw_str_eq(m, "print"))
            on_print(l, ev, NULL);
        else if (cw_str_eq(m, "getWorkerInfo"))
            on_get_worker_info(l, ev);
        else if (cw_str_eq(m, "setBuilderList"))
            on_set_builder_list(l, ev);
        else if (cw_str_eq(m, "getCommands"))
            on_get_commands(l, ev);
        else if (cw_str_eq(m, "getVersion"))
            on_get_version(l, ev);
        else if (cw_str_eq(m, "shutdown"))
            on_shutdown(l, ev);
        else if (ev->u.call.answer_required)
            cw_pb_answer_no_such_method(l->pb, ev->u.call.reqid, m);
        cw_pb_decref_value(l->pb, ev->u.call.args);
        cw_pb_decref_value(l->pb, ev->u.call.kwargs);
        return;
    }
    pbuilder_t *b = find_builder(l, ev->u.call.target);
    if (b == NULL) { /* an export that is not a builder: none exist */
        if (ev->u.call.answer_required)
            cw_pb_answer_no_such_method(l->pb, ev->u.call.reqid, m);
        cw_pb_decref_value(l->pb, ev->u.call.args);
        return;
    }
    if (cw_str_eq(m, "startCommand")) {
        on_start_command(l, b, ev); /* keeps or gives back the references itself */
        cw_pb_decref_value(l->pb, ev->u.call.kwargs);
        return;
    }
    if (cw_str_eq(m, "startBuild") || cw_str_eq(m, "setMaster"))
        answer_none(l, ev);
    else if (cw_str_eq(m, "interruptCommand"))
        on_interrupt_command(l, b, ev);
    else if (cw_str_eq(m, "print"))
        on_print(l, ev, b->name);
    else if (cw_str_eq(m, "shutdown"))
        on_shutdown(l, ev);
    else if (ev->u.call.answer_required)
        cw_pb_answer_no_such_method(l->pb, ev->u.call.reqid, m);
    cw_pb_decref_value(l->pb, ev->u.call.args);
    cw_pb_decref_value(l->pb, ev->u.call.kwargs);
}

/* ---- the session's events ---- */

static void on_logged_in(plink_t *l, int64_t perspective)
{
    l->perspective = perspective;
    l->last_keepalive = uv_now(l->loop);
    l->base.open = true;
    cw_info("connected to master %s (Perspective Broker, logged in)", l->peer);
    l->base.ev->opened(&l->base);
    if (!l->base.attached && !l->closing && !l->close_wanted) {
        l->base.attached = true;
        cw_dispatch_attached(l->base.dispatch, l->peer);
    }
}

static int on_event(void *ud, cw_pb_t *pb, const cw_pb_event_t *ev)
{
    plink_t *l = ud;
    (void)pb;
    switch (ev->type) {
    case CW_PB_EV_LOGGED_IN:
        on_logged_in(l, ev->u.logged_in.perspective);
        break;
    case CW_PB_EV_LOGIN_FAILED:
        switch (ev->u.login_failed.kind) {
        case CW_PB_LOGIN_UNAUTHORIZED:
            pl_fail(l, CW_EAUTH, "wrong worker name or password (the master answered %s)",
                    ev->u.login_failed.text);
            break;
        case CW_PB_LOGIN_DUPLICATE:
            pl_fail(l, CW_EAUTH,
                    "another worker with this name is attached to the master (%s); it is "
                    "retried until that one is gone",
                    ev->u.login_failed.text);
            break;
        default:
            pl_fail(l, CW_EAUTH, "login failed: %s", ev->u.login_failed.text);
            break;
        }
        break;
    case CW_PB_EV_CALL:
        if (!l->closing && !l->close_wanted)
            on_call(l, ev);
        break;
    case CW_PB_EV_ANSWER:
    case CW_PB_EV_ERROR:
        on_answer(l, ev);
        break;
    case CW_PB_EV_NOTICE:
        cw_info("master %s: %s", l->peer, ev->u.notice.text);
        break;
    case CW_PB_EV_PROTOCOL_ERROR:
        if (cw_pb_state(l->pb) == CW_PB_ST_CLOSED && !l->base.open)
            pl_fail(l, CW_EPROTO,
                    "%s (is %s the master's Perspective Broker port? a "
                    "msgpack_experimental_v7 port needs --protocol msgpack)",
                    ev->u.notice.text, l->peer);
        else
            pl_fail(l, CW_EPROTO, "protocol error from the master: %s", ev->u.notice.text);
        break;
    case CW_PB_EV_LOGIN:
    case CW_PB_EV_RELEASED:
        break;
    }
    pl_flush(l);
    return l->close_wanted ? CW_ECLOSED : 0;
}

/* ---- the connection ---- */

static void pl_handle_closed(plink_t *l)
{
    if (--l->handles > 0)
        return;
    /* the commands let go of this session before it goes */
    cw_cmds_session_gone(l->base.dispatch->cmds, &l->base.session);
    l->base.ev->closed(&l->base, l->err, l->why);
    cw_pb_free(l->pb);
    cw_buf_free(&l->out);
    for (size_t i = 0; i < l->nbuilders; i++)
        builder_free(&l->builders[i]);
    free(l->builders);
    free(l);
}

static void timer_closed(uv_handle_t *h)
{
    pl_handle_closed(h->data);
}

static void tl_closed(cw_tunlink_t *t)
{
    pl_handle_closed(t->data);
}

/* Close now (not inside a feed). */
static void pl_close_now(plink_t *l)
{
    if (l->closing)
        return;
    l->closing = true;
    l->close_wanted = false;
    if (l->pb) {
        /* our waiting calls end: transfers hear CW_ECLOSED */
        int rc = cw_pb_close(l->pb);
        if (rc == CW_EPROTO && (l->err == 0 || l->err == UV_EOF)) {
            /* the master's bytes ended inside a message: say so */
            l->err = CW_EPROTO;
            snprintf(l->why, sizeof l->why, "the master closed the connection inside a message");
        }
    }
    if (l->err == 0)
        pl_flush(l);
    uv_timer_stop(&l->timer);
    uv_close((uv_handle_t *)&l->timer, timer_closed);
    cw_tunlink_close(&l->tl, l->err == 0);
}

/* The link failed or is done: record why (the first reason counts) and
 * close, now or when the feed in progress returns. */
static void pl_fail(plink_t *l, int err, const char *fmt, ...)
{
    if (l->closing || l->close_wanted)
        return;
    l->err = err;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(l->why, sizeof l->why, fmt, ap);
    va_end(ap);
    if (l->in_feed)
        l->close_wanted = true;
    else
        pl_close_now(l);
}

static void tl_ready(cw_tunlink_t *t)
{
    plink_t *l = t->data;
    int rc = cw_pb_start(l->pb);
    if (rc < 0)
        pl_fail(l, rc, "%s", cw_strerror(rc));
}

static void tl_data(cw_tunlink_t *t, uint8_t *data, size_t len)
{
    plink_t *l = t->data;
    if (l->closing)
        return;
    l->last_rx = uv_now(l->loop);
    l->got_bytes = true;
    l->in_feed = true;
    int rc = cw_pb_feed(l->pb, data, len);
    l->in_feed = false;
    pl_flush(l);
    if (rc < 0 && !l->close_wanted) {
        const char *why = cw_pb_error(l->pb);
        pl_fail(l, rc, "%s", why ? why : cw_strerror(rc));
    }
    if (l->close_wanted)
        pl_close_now(l);
}

static void tl_drain(cw_tunlink_t *t)
{
    plink_t *l = t->data;
    if (!l->closing)
        cw_cmds_kick(l->base.dispatch->cmds, &l->base.session);
}

static void tl_error(cw_tunlink_t *t, int err, const char *why)
{
    plink_t *l = t->data;
    if (!l->got_bytes)
        pl_fail(l, err,
                "the master closed the connection before its Perspective Broker greeting (%s; "
                "is %s its PB port%s? a msgpack_experimental_v7 port needs --protocol msgpack)",
                err == UV_EOF ? "end of file"
                : why         ? why
                              : uv_strerror(err),
                l->peer, l->tl.tls ? ", and does it speak TLS" : "");
    else if (err == UV_EOF)
        pl_fail(l, err, "the master closed the connection");
    else
        pl_fail(l, err, "%s", why ? why : uv_strerror(err));
}

static const cw_tunlink_callbacks_t plink_tl_callbacks = {
    .on_ready = tl_ready,
    .on_data = tl_data,
    .on_drain = tl_drain,
    .on_error = tl_error,
    .on_closed = tl_closed,
};

/* Ask the master whether it is there (and tell it we are). */
static void send_keepalive(plink_t *l)
{
    if (l->keepalive_waiting || l->perspective == 0)
        return;
    if (cw_pb_call0(l->pb, l->perspective, "keepalive", &k_keepalive, NULL) == 0) {
        l->keepalive_waiting = true;
        l->last_keepalive = uv_now(l->loop);
        pl_flush(l);
    }
}

static void timer_cb(uv_timer_t *t)
{
    plink_t *l = t->data;
    if (l->closing)
        return;
    uint64_t now = uv_now(l->loop);
    uint64_t gap = now - l->last_tick;
    l->last_tick = now;
    if (l->held)
        return;
    if (gap > l->tick_ms + 1000 && gap > 2 * l->tick_ms) {
        /* the loop did not run (SIGSTOP, a paused VM): what the master sent
         * meanwhile is unread; count the silence from now and ask */
        cw_info("%s: the process did not run for %.1f s; checking the link with a keepalive",
                l->peer, (double)gap / 1000.0);
        l->last_rx = now;
        l->keepalive_waiting = false;
        send_keepalive(l);
        return;
    }
    if (!l->got_bytes &&
        ((l->opt.greeting_timeout && now - l->started >= l->opt.greeting_timeout) ||
         (l->opt.dead_timeout && now - l->started >= l->opt.dead_timeout))) {
        pl_fail(l, CW_ETIMEOUT,
                "no Perspective Broker greeting from the master within %.1f s (is %s its PB "
                "port? a msgpack_experimental_v7 port needs --protocol msgpack)",
                (double)(now - l->started) / 1000.0, l->peer);
        return;
    }
    if (l->opt.dead_timeout && now - l->last_rx >= l->opt.dead_timeout) {
        pl_fail(l, CW_ETIMEOUT, "link dead: nothing received for %.1f s",
                (double)(now - l->last_rx) / 1000.0);
        return;
    }
    if (l->perspective == 0)
        return;
    if ((l->opt.keepalive && now - l->last_keepalive >= l->opt.keepalive) ||
        (l->opt.ping_interval && now - l->last_rx >= l->opt.ping_interval &&
         now - l->last_keepalive >= l->opt.ping_interval))
        send_keepalive(l);
}

/* ---- the link ---- */

static uv_tcp_t *pl_tcp(cw_link_t *base)
{
    return cw_tunlink_tcp(&((plink_t *)base)->tl);
}

static int pl_start(cw_link_t *base, const cw_link_target_t *t)
{
    plink_t *l = (plink_t *)base;
    cw_pb_config_t pc = {
        .role = CW_PB_WORKER,
        .out = &l->out,
        .on_event = on_event,
        .ud = l,
        .username = t->user,
        .username_len = strlen(t->user),
        .password = t->password,
        .password_len = strlen(t->password),
        .bot_ud = l,
    };
    int rc = cw_pb_new(&l->pb, &pc);
    if (rc < 0)
        return rc;
    cw_tunlink_peer(&l->tl, l->peer, sizeof l->peer);
    l->started = l->last_rx = l->last_tick = uv_now(l->loop);
    uint64_t p = 0;
    const uint64_t marks[] = {l->opt.ping_interval, l->opt.dead_timeout, l->opt.keepalive,
                              l->opt.greeting_timeout};
    for (size_t i = 0; i < sizeof marks / sizeof marks[0]; i++)
        if (marks[i] && (p == 0 || marks[i] < p))
            p = marks[i];
    if (p) {
        l->tick_ms = p / 4 < 50 ? 50 : p / 4;
        uv_timer_start(&l->timer, timer_cb, l->tick_ms, l->tick_ms);
    }
    return cw_tunlink_start(&l->tl, t->tls_ctx, false, t->tls_host, l->opt.dead_timeout);
}

static void pl_close(cw_link_t *base, int err, const char *why)
{
    pl_fail((plink_t *)base, err, "%s", why ? why : "closed");
}

static size_t pl_unanswered(cw_link_t *base)
{
    return ((plink_t *)base)->waiting;
}

static const char *pl_peer(cw_link_t *base)
{
    return ((plink_t *)base)->peer;
}

static void pl_hold_liveness(cw_link_t *base, bool hold)
{
    plink_t *l = (plink_t *)base;
    if (hold == l->held)
        return;
    l->held = hold;
    if (!hold) {
        /* the silence was the path's: count from now (the greeting too) */
        uint64_t now = uv_now(l->loop);
        l->last_rx = l->last_tick = now;
        if (!l->got_bytes)
            l->started = now;
    }
}

static int pl_request_shutdown(cw_link_t *base)
{
    plink_t *l = (plink_t *)base;
    if (l->closing || l->perspective == 0)
        return CW_ECLOSED;
    int rc = cw_pb_call0(l->pb, l->perspective, "shutdown", &k_shutdown, NULL);
    if (rc == 0) {
        cw_info("asked the master for a graceful shutdown");
        pl_flush(l);
    }
    return rc;
}

static const cw_link_ops_t plink_ops = {
    .tcp = pl_tcp,
    .start = pl_start,
    .close = pl_close,
    .unanswered = pl_unanswered,
    .peer = pl_peer,
    .hold_liveness = pl_hold_liveness,
    .request_shutdown = pl_request_shutdown,
};

cw_link_t *cw_link_pb_new(uv_loop_t *loop, const cw_link_pb_options_t *opt, cw_dispatch_t *d,
                          const cw_link_events_t *ev, void *owner)
{
    plink_t *l = calloc(1, sizeof *l);
    if (l == NULL)
        return NULL;
    l->base.ops = &plink_ops;
    l->base.session.ops = &plink_session_ops;
    l->base.session.protocol = "pb";
    l->base.session.max_block = PB_MAX_BLOCK;
    l->base.dispatch = d;
    l->base.ev = ev;
    l->base.owner = owner;
    l->loop = loop;
    l->opt = *opt;
    cw_cmd_settings_default(&l->settings);
    if (cw_tunlink_init(loop, &l->tl, &plink_tl_callbacks, l) < 0) {
        free(l);
        return NULL;
    }
    uv_timer_init(loop, &l->timer);
    l->timer.data = l;
    l->handles = 2;
    snprintf(l->peer, sizeof l->peer, "?");
    return &l->base;
}
