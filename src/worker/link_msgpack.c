/* The msgpack_experimental_v7 link (reference §§4-7): a cw_conn_t (HTTP
 * upgrade, WebSocket, msgpack messages) whose requests go to the
 * dispatcher, and the session its commands report through. */
#include "link_msgpack.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cworker/msg.h"
#include "log.h"

/* Updates in flight (sent, not answered) per link.  Together with the
 * socket's high-water mark this bounds memory when the master reads slowly:
 * producers stop reading their pipes instead of buffering. */
#define MAX_INFLIGHT_UPDATES 8

typedef struct mlink {
    cw_link_t base;
    cw_conn_t conn;
    cw_cmd_settings_t settings; /* set_worker_settings, else the defaults */
    unsigned inflight_updates;
    bool closing;
} mlink_t;

/* A command's data in this link: the callback of its transfer requests (a
 * pipelined transfer has several in flight, all with the same callback;
 * their answers come in order). */
typedef struct mcmd {
    cw_xfer_cb cb;
} mcmd_t;

static mlink_t *from_session(cw_session_t *s)
{
    return (mlink_t *)((char *)s - offsetof(cw_link_t, session));
}

/* ---- the session ---- */

static bool ms_can_send(cw_session_t *s)
{
    mlink_t *l = from_session(s);
    return cw_conn_is_open(&l->conn) && cw_conn_writable(&l->conn) &&
           l->inflight_updates < MAX_INFLIGHT_UPDATES;
}

/* Response to one of our update requests: only the window is tracked. */
static void update_ack(cw_conn_t *c, void *ctx, const cw_msg_t *resp)
{
    mlink_t *l = ctx;
    if (l->inflight_updates > 0)
        l->inflight_updates--;
    if (resp && resp->u.response.is_exception) {
        cw_str_t s = {"?", 1};
        cw_obj_str(&resp->u.response.result, &s);
        cw_warn("master refused an update: %.*s", (int)s.len, s.ptr);
    }
    if (resp)
        cw_cmds_kick(l->base.dispatch->cmds, &l->base.session);
}

/* ---- packing already masked ----
 *
 * A client masks every byte it sends (RFC 6455 §5.3).  The messages with bulk data (updates,
 * upload blocks) are packed through a sink that masks while it appends, with the key the
 * WebSocket layer will announce (cw_ws_premask): each byte is written once, instead of
 * written, then read and written again by the in-place mask of cw_ws_encode(). */

typedef struct masked_sink {
    cw_buf_t *b;
    uint8_t key[4];
} masked_sink_t;

static int masked_write(void *data, const char *p, size_t n)
{
    masked_sink_t *s = data;
    if (cw_buf_reserve(s->b, n) < 0)
        return -1;
    cw_ws_mask_copy(s->b->data + s->b->len, (const uint8_t *)p, n, s->key, s->b->len);
    s->b->len += n;
    return 0;
}

/* A packer into b (empty): masking as it goes when this end masks. */
static void pack_init_masked(mlink_t *l, msgpack_packer *pk, masked_sink_t *sink, cw_buf_t *b)
{
    sink->b = b;
    if (cw_ws_premask(&l->conn.ws, sink->key))
        msgpack_packer_init(pk, sink, masked_write);
    else
        cw_pack_init(pk, b);
}

/* cw_conn_request() for a message packed by pack_init_masked(). */
static int request_masked(mlink_t *l, int64_t seq, cw_buf_t *b, cw_conn_resp_cb cb, void *ctx)
{
    cw_ws_premasked(&l->conn.ws, b->data, b->len);
    int rc = cw_conn_request(&l->conn, seq, b, cb, ctx);
    cw_ws_premask_cancel(&l->conn.ws); /* when it did not get as far as the framing */
    return rc;
}

static int ms_send_update(cw_session_t *s, cw_cmd_t *cmd)
{
    mlink_t *l = from_session(s);
    /* About the size of one update (the stock budget counts 16 bytes a line, msgpack
     * takes at most 14), so the buffer is not grown (copied) while packing.  Exactly that,
     * not cw_buf_reserve's power of two: 128 KiB would be at malloc's mmap threshold, and
     * every update would cost fresh pages (page faults, then an unmap). */
    size_t want = cw_outbuf_size(&cmd->out);
    if (want > cmd->out.buffer_size)
        want = cmd->out.buffer_size;
    cw_buf_t b = CW_BUF_INIT;
    b.data = malloc(want + 512);
    if (b.data == NULL)
        return -ENOMEM;
    b.cap = want + 512;
    msgpack_packer pk;
    masked_sink_t sink;
    pack_init_masked(l, &pk, &sink, &b);
    int64_t seq = cw_conn_next_seq(&l->conn);
    int rc = cw_pack_update(&pk, seq, cmd->idstr, &cmd->out);
    if (rc <= 0) {
        cw_ws_premask_cancel(&l->conn.ws);
        cw_buf_free(&b);
        return rc;
    }
    l->inflight_updates++;
    if (request_masked(l, seq, &b, update_ack, l) < 0) {
        /* the callback is not registered when sending fails */
        l->inflight_updates--;
        return CW_ECLOSED;
    }
    return 1;
}

static void complete_ack(cw_conn_t *c, void *ctx, const cw_msg_t *resp)
{
    mlink_t *l = ctx;
    if (resp && resp->u.response.is_exception) {
        cw_str_t s = {"?", 1};
        cw_obj_str(&resp->u.response.result, &s);
        cw_warn("master refused a complete: %.*s", (int)s.len, s.ptr);
    }
    cw_cmds_acked(l->base.dispatch->cmds);
}

static int ms_send_complete(cw_session_t *s, cw_cmd_t *cmd, const char *failure)
{
    mlink_t *l = from_session(s);
    cw_buf_t b = CW_BUF_INIT;
    msgpack_packer pk;
    cw_pack_init(&pk, &b);
    int64_t seq = cw_conn_next_seq(&l->conn);
    if (cw_pack_complete(&pk, seq, cmd->idstr, failure) < 0) {
        cw_buf_free(&b);
        return -ENOMEM;
    }
    return cw_conn_request(&l->conn, seq, &b, complete_ack, l);
}

/* The master's answer to a transfer request, as the command sees it. */
static void xfer_resp(cw_conn_t *c, void *ctx, const cw_msg_t *resp)
{
    cw_cmd_t *cmd = ctx;
    mcmd_t *mc = cmd->link;
    cw_xfer_answer_t a = {0};
    if (resp == NULL) {
        a.status = CW_ECLOSED;
    } else if (resp->u.response.is_exception) {
        cw_str_t s = {NULL, 0};
        cw_obj_str(&resp->u.response.result, &s);
        a.status = CW_EPROTO;
        a.error = s.ptr;
        a.error_len = s.len;
    } else {
        const msgpack_object *r = &resp->u.response.result;
        if (r->type == MSGPACK_OBJECT_NIL) {
            a.nil = true;
        } else if (r->type == MSGPACK_OBJECT_BIN) {
            a.data = (const uint8_t *)r->via.bin.ptr;
            a.len = r->via.bin.size;
        } else if (r->type == MSGPACK_OBJECT_STR) {
            a.data = (const uint8_t *)r->via.str.ptr;
            a.len = r->via.str.size;
        } else {
            a.not_data = true;
        }
    }
    if (mc && mc->cb)
        mc->cb(cmd, &a);
}

/* Pack one transfer request (reference §7.3). */
static int pack_xfer(msgpack_packer *pk, int64_t seq, const cw_cmd_t *cmd, const cw_xfer_req_t *r)
{
    bool dir = cmd->kind == CW_CMD_UPLOAD_DIRECTORY;
    switch (r->op) {
    case CW_XFER_WRITE:
        return cw_pack_write(pk, seq, dir ? CW_OP_UPLOAD_DIRECTORY_WRITE : CW_OP_UPLOAD_FILE_WRITE,
                             cmd->idstr, r->data, r->len);
    case CW_XFER_CLOSE:
        return cw_pack_cmd_simple(pk, seq, CW_OP_UPLOAD_FILE_CLOSE, cmd->idstr);
    case CW_XFER_UTIME:
        return cw_pack_utime(pk, seq, cmd->idstr, r->atime, r->mtime);
    case CW_XFER_UNPACK:
        return cw_pack_cmd_simple(pk, seq, CW_OP_UPLOAD_DIRECTORY_UNPACK, cmd->idstr);
    case CW_XFER_READ:
        return cw_pack_read_file(pk, seq, cmd->idstr, r->length);
    case CW_XFER_READ_CLOSE:
        return cw_pack_cmd_simple(pk, seq, CW_OP_READ_FILE_CLOSE, cmd->idstr);
    }
    return -EINVAL;
}

static int ms_xfer(cw_session_t *s, cw_cmd_t *cmd, const cw_xfer_req_t *req, cw_xfer_cb cb)
{
    mlink_t *l = from_session(s);
    if (!cw_conn_is_open(&l->conn))
        return CW_ECLOSED;
    mcmd_t *mc = cmd->link;
    if (mc == NULL && (mc = cmd->link = calloc(1, sizeof *mc)) == NULL)
        return -ENOMEM;
    cw_buf_t b = CW_BUF_INIT;
    if (req->op == CW_XFER_WRITE && cw_buf_reserve(&b, req->len + 96) < 0)
        return -ENOMEM;
    msgpack_packer pk;
    masked_sink_t sink;
    pack_init_masked(l, &pk, &sink, &b);
    int64_t seq = cw_conn_next_seq(&l->conn);
    if (pack_xfer(&pk, seq, cmd, req) < 0) {
        cw_ws_premask_cancel(&l->conn.ws);
        cw_buf_free(&b);
        return -ENOMEM;
    }
    mc->cb = cb;
    return request_masked(l, seq, &b, xfer_resp, cmd);
}

static void ms_release(cw_session_t *s, cw_cmd_t *cmd)
{
    mlink_t *l = from_session(s);
    cw_conn_forget(&l->conn, cmd);
    free(cmd->link);
    cmd->link = NULL;
}

static const cw_session_ops_t mlink_session_ops = {
    .can_send = ms_can_send,
    .send_update = ms_send_update,
    .send_complete = ms_send_complete,
    .xfer = ms_xfer,
    .release = ms_release,
};

/* ---- requests from the master ---- */

/* get_worker_info's map: the info, the commands by their msgpack names. */
static int pack_info(msgpack_packer *pk, const cw_info_t *in)
{
    size_t ncmd = 0;
    for (int k = 0; k < CW_CMD__COUNT; k++)
        if (cw_cmd_supported((cw_cmd_kind_t)k))
            for (const char *const *n = cw_cmd_names((cw_cmd_kind_t)k); *n; n++)
                ncmd++;
    /* fixed keys; any of them also present as an info/ file is shadowed by
     * the fixed value (packed later in the map: last one wins for the master) */
    int rc = msgpack_pack_map(pk, in->nfiles + 7);
    for (size_t i = 0; i < in->nfiles; i++) {
        rc |= cw_pack_str(pk, in->files[i].key);
        rc |= cw_pack_strn(pk, (const char *)in->files[i].val.data, in->files[i].val.len);
    }
    rc |= cw_pack_str(pk, "environ");
    rc |= msgpack_pack_map(pk, in->nenv);
    for (size_t i = 0; i < in->nenv; i++) {
        rc |= cw_pack_str(pk, in->env[i].key);
        rc |= cw_pack_strn(pk, (const char *)in->env[i].val.data, in->env[i].val.len);
    }
    rc |= cw_pack_str(pk, "system");
    rc |= cw_pack_str(pk, in->system);
    rc |= cw_pack_str(pk, "basedir");
    rc |= cw_pack_str(pk, in->basedir);
    rc |= cw_pack_str(pk, "numcpus");
    rc |= msgpack_pack_uint32(pk, in->numcpus);
    rc |= cw_pack_str(pk, "version");
    rc |= cw_pack_str(pk, in->version);
    rc |= cw_pack_str(pk, "worker_commands");
    rc |= msgpack_pack_map(pk, ncmd);
    for (int k = 0; k < CW_CMD__COUNT; k++) {
        if (!cw_cmd_supported((cw_cmd_kind_t)k))
            continue;
        for (const char *const *n = cw_cmd_names((cw_cmd_kind_t)k); *n; n++) {
            rc |= cw_pack_str(pk, *n);
            rc |= cw_pack_str(pk, CW_COMMAND_VERSION);
        }
    }
    rc |= cw_pack_str(pk, "delete_leftover_dirs");
    rc |= in->delete_leftover_dirs ? msgpack_pack_true(pk) : msgpack_pack_false(pk);
    return rc ? -ENOMEM : 0;
}

static void on_get_worker_info(mlink_t *l, const cw_msg_t *m)
{
    cw_info_t info;
    cw_buf_t b = CW_BUF_INIT;
    msgpack_packer pk;
    cw_pack_init(&pk, &b);
    if (cw_dispatch_info(l->base.dispatch, &info) < 0) {
        cw_conn_respond_error(&l->conn, m->seq, "cannot collect worker info");
        return;
    }
    int rc = cw_pack_response_begin(&pk, m->seq) < 0 ? -ENOMEM : pack_info(&pk, &info);
    cw_info_free(&info);
    if (rc < 0) {
        cw_buf_free(&b);
        cw_conn_respond_error(&l->conn, m->seq, "cannot collect worker info");
        return;
    }
    cw_conn_send(&l->conn, &b);
    if (!l->base.attached) {
        l->base.attached = true;
        cw_dispatch_attached(l->base.dispatch, l->conn.peer);
    }
}

static void on_set_worker_settings(mlink_t *l, const cw_msg_t *m)
{
    cw_cmd_settings_t *s = &l->settings;
    /* Keep sane bounds whatever the master sends. */
    int64_t bs = m->u.settings.buffer_size;
    s->buffer_size = bs < 1024 ? 1024 : bs > (16 << 20) ? (16 << 20) : (size_t)bs;
    int64_t bt = m->u.settings.buffer_timeout;
    s->buffer_timeout = bt < 0 ? 0 : bt > 3600 ? 3600 : (double)bt;
    int64_t ml = m->u.settings.max_line_length;
    s->max_line_length = ml < 2 ? 2 : ml > (1 << 20) ? (1 << 20) : (size_t)ml;
    if (!cw_newline_re_supported(m->u.settings.newline_re.ptr, m->u.settings.newline_re.len))
        cw_warn("master's newline_re '%.*s' is not supported; using the standard rules",
                (int)m->u.settings.newline_re.len, m->u.settings.newline_re.ptr);
    cw_debug("settings: buffer_size %zu, buffer_timeout %.0f, max_line_length %zu", s->buffer_size,
             s->buffer_timeout, s->max_line_length);
    cw_conn_respond_nil(&l->conn, m->seq);
}

static void on_start_command(mlink_t *l, const cw_msg_t *m)
{
    char err[512];
    cw_str_t id = m->u.start.command_id, name = m->u.start.command_name;
    int kind = cw_cmd_lookup(name);
    if (kind < 0) {
        snprintf(err, sizeof err, "unrecognized WorkerCommand '%.*s'", (int)name.len, name.ptr);
        cw_warn("command %.*s refused: %s", (int)id.len, id.ptr, err);
        cw_conn_respond_error(&l->conn, m->seq, err);
        return;
    }
    cw_args_t args;
    int rc = cw_args_parse(&args, (cw_cmd_kind_t)kind, &m->u.start.args, err, sizeof err);
    if (rc < 0) {
        cw_warn("command %.*s (%.*s) refused: %s", (int)id.len, id.ptr, (int)name.len, name.ptr,
                err);
        cw_conn_respond_error(&l->conn, m->seq, err);
        return;
    }
    cw_cmd_t *cmd = NULL;
    rc = cw_dispatch_start(l->base.dispatch, &l->base.session, &l->settings, id,
                           (cw_cmd_kind_t)kind, &args, err, sizeof err, &cmd);
    if (rc < 0) {
        cw_args_free(&args);
        cw_conn_respond_error(&l->conn, m->seq, err);
        return;
    }
    cw_conn_respond_nil(&l->conn, m->seq);
    cw_cmd_start(cmd);
}

static void conn_on_request(cw_conn_t *c, const cw_msg_t *m)
{
    mlink_t *l = c->data;
    cw_dispatch_t *d = l->base.dispatch;
    switch (m->op) {
    case CW_OP_PRINT:
        cw_dispatch_print(d, m->u.print.message);
        cw_conn_respond_nil(c, m->seq);
        break;
    case CW_OP_KEEPALIVE:
        cw_conn_respond_nil(c, m->seq);
        break;
    case CW_OP_GET_WORKER_INFO:
        on_get_worker_info(l, m);
        break;
    case CW_OP_SET_WORKER_SETTINGS:
        on_set_worker_settings(l, m);
        break;
    case CW_OP_START_COMMAND:
        on_start_command(l, m);
        break;
    case CW_OP_INTERRUPT_COMMAND:
        cw_dispatch_interrupt(d, &l->base.session, m->u.interrupt.command_id);
        cw_conn_respond_nil(c, m->seq);
        break;
    case CW_OP_SHUTDOWN:
        cw_conn_respond_nil(c, m->seq);
        cw_dispatch_shutdown(d);
        break;
    default:
        cw_conn_respond_unknown(c, m);
        break;
    }
}

/* ---- the connection ---- */

static void conn_on_open(cw_conn_t *c)
{
    mlink_t *l = c->data;
    l->base.open = true;
    cw_info("connected to master %s (WebSocket open)", c->peer);
    l->base.ev->opened(&l->base);
}

static void conn_on_drain(cw_conn_t *c)
{
    mlink_t *l = c->data;
    cw_cmds_kick(l->base.dispatch->cmds, &l->base.session);
}

static void conn_on_close(cw_conn_t *c, int err, const char *why)
{
    mlink_t *l = c->data;
    /* the commands let go of this session before it goes */
    cw_cmds_session_gone(l->base.dispatch->cmds, &l->base.session);
    l->base.ev->closed(&l->base, err, why);
    free(l);
}

static const cw_conn_callbacks_t mlink_conn_callbacks = {
    .on_open = conn_on_open,
    .on_request = conn_on_request,
    .on_drain = conn_on_drain,
    .on_close = conn_on_close,
    .on_auth = NULL,
};

/* ---- the link ---- */

static uv_tcp_t *ml_tcp(cw_link_t *base)
{
    return cw_conn_tcp(&((mlink_t *)base)->conn);
}

static int ml_start(cw_link_t *base, const cw_link_target_t *t)
{
    mlink_t *l = (mlink_t *)base;
    cw_conn_client_t o = {
        .host_header = t->host_header,
        .path = t->path,
        .user = t->user,
        .password = t->password,
        .tls_ctx = t->tls_ctx,
        .tls_host = t->tls_host,
        .proxy_target = t->proxy_target,
        .proxy_auth = t->proxy_auth,
    };
    return cw_conn_start_client2(&l->conn, &o);
}

static void ml_close(cw_link_t *base, int err, const char *why)
{
    mlink_t *l = (mlink_t *)base;
    cw_conn_close(&l->conn, err, l->base.open ? CW_WS_CLOSE_GOING_AWAY : 0, why);
}

static size_t ml_unanswered(cw_link_t *base)
{
    return cw_reqtab_count(&((mlink_t *)base)->conn.pending);
}

static const char *ml_peer(cw_link_t *base)
{
    return ((mlink_t *)base)->conn.peer;
}

static void ml_hold_liveness(cw_link_t *base, bool hold)
{
    cw_conn_hold_liveness(&((mlink_t *)base)->conn, hold);
}

static const cw_link_ops_t mlink_ops = {
    .tcp = ml_tcp,
    .start = ml_start,
    .close = ml_close,
    .unanswered = ml_unanswered,
    .peer = ml_peer,
    .hold_liveness = ml_hold_liveness,
};

cw_link_t *cw_link_msgpack_new(uv_loop_t *loop, const cw_conn_options_t *opt, cw_dispatch_t *d,
                               const cw_link_events_t *ev, void *owner)
{
    mlink_t *l = calloc(1, sizeof *l);
    if (l == NULL)
        return NULL;
    l->base.ops = &mlink_ops;
    l->base.session.ops = &mlink_session_ops;
    l->base.session.protocol = "msgpack";
    l->base.session.max_block = 0; /* no limit of its own */
    l->base.dispatch = d;
    l->base.ev = ev;
    l->base.owner = owner;
    cw_cmd_settings_default(&l->settings);
    cw_conn_init(&l->conn, loop, CW_CONN_CLIENT, opt, &mlink_conn_callbacks, l);
    return &l->base;
}
