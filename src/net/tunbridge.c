/* A resumable tunnel presented as a socket (see tunbridge.h). */
#include "tunbridge.h"

#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "cworker/cw.h"
#include "log.h"

/* what one read of the user's bytes takes at most */
#define READ_SIZE (64u << 10)

struct cw_tunbridge {
    uv_loop_t *loop;
    cw_tunnel_t tun;
    uv_pipe_t end; /* our end of the socketpair (opened once the session is up) */
    uv_timer_t linger;
    uv_shutdown_t sreq;
    const cw_tunbridge_callbacks_t *cb;
    void *data;
    int init_err;     /* cw_tunnel_init failed: connect reports it */
    int handles;      /* end, linger, tunnel: each closes once */
    size_t to_user;   /* relay -> user bytes given to uv_write, not yet written */
    bool released;    /* the user is done: no more callbacks */
    bool closing;     /* teardown started */
    bool opened;      /* the socketpair exists; end is open */
    bool end_reading; /* reading the user's bytes */
    bool tun_paused;  /* the tunnel is not read: the user's socket is full */
    bool user_eof;    /* the user's stream ended (EOF or error on our end) */
    bool fin_acked;   /* the relay has every byte of it and its end */
    bool relay_eof;   /* the relay's stream ended (the master closed) */
    bool end_shut;    /* ... and that end was passed on to the user */
};

/* A chunk of the user's bytes on its way into the tunnel. */
typedef struct bwrite {
    cw_tunnel_write_t req;
    cw_tunbridge_t *b;
    uint8_t data[READ_SIZE];
} bwrite_t;

/* A chunk of the relay's bytes on its way to the user. */
typedef struct uwrite {
    uv_write_t req;
    cw_tunbridge_t *b;
    size_t len;
    uint8_t data[];
} uwrite_t;

static void bridge_teardown(cw_tunbridge_t *b);

/* Free the bridge once the user let go and every handle is closed. */
static void bridge_maybe_free(cw_tunbridge_t *b)
{
    if (b->released && b->closing && b->handles == 0)
        free(b);
}

static void handle_closed(uv_handle_t *h)
{
    cw_tunbridge_t *b = h->data;
    b->handles--;
    bridge_maybe_free(b);
}

static void tun_closed(cw_tunnel_t *t)
{
    cw_tunbridge_t *b = t->data;
    b->handles--;
    bridge_maybe_free(b);
}

/* Close everything: the tunnel (an ABORT unless the session completed), our
 * end of the socketpair (the user reads EOF), the timer. */
static void bridge_teardown(cw_tunbridge_t *b)
{
    if (b->closing)
        return;
    b->closing = true;
    cw_tunnel_close(&b->tun);
    uv_close((uv_handle_t *)&b->end, handle_closed);
    uv_close((uv_handle_t *)&b->linger, handle_closed);
}

/* Both streams ended and were passed on: nothing is left to carry. */
static void bridge_check_done(cw_tunbridge_t *b)
{
    if (!b->closing && b->fin_acked && b->end_shut)
        bridge_teardown(b);
}

/* ---- user -> relay -------------------------------------------------------- */

static void end_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    (void)h;
    (void)hint;
    bwrite_t *w = malloc(sizeof *w);
    *buf = uv_buf_init(w ? (char *)w->data : NULL, w ? READ_SIZE : 0);
}

static void end_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf);

static void end_read_start(cw_tunbridge_t *b)
{
    if (b->end_reading || b->user_eof || b->closing || !b->opened)
        return;
    if (uv_read_start((uv_stream_t *)&b->end, end_alloc, end_read) == 0)
        b->end_reading = true;
}

static void end_read_stop(cw_tunbridge_t *b)
{
    if (!b->end_reading)
        return;
    uv_read_stop((uv_stream_t *)&b->end);
    b->end_reading = false;
}

static void tun_write_cb(cw_tunnel_write_t *req, int status)
{
    bwrite_t *w = (bwrite_t *)req;
    cw_tunbridge_t *b = w->b;
    free(w);
    /* room again: every byte read so far is in the replay buffer */
    if (status == 0 && cw_tunnel_write_queue_size(&b->tun) == 0)
        end_read_start(b);
}

static void tun_shutdown_cb(cw_tunnel_t *t, int status)
{
    cw_tunbridge_t *b = t->data;
    if (status < 0)
        return; /* lost or closed: on_lost or the teardown says the rest */
    b->fin_acked = true;
    bridge_check_done(b);
}

static void end_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    cw_tunbridge_t *b = s->data;
    bwrite_t *w = buf->base ? (bwrite_t *)(void *)(buf->base - offsetof(bwrite_t, data)) : NULL;
    if (n > 0) {
        w->b = b;
        uv_buf_t ub = uv_buf_init((char *)w->data, (unsigned)n);
        int rc = cw_tunnel_write(&w->req, &b->tun, &ub, 1, tun_write_cb);
        if (rc < 0) {
            /* the session is lost or over: on_lost (or the teardown) follows */
            free(w);
            end_read_stop(b);
            return;
        }
        /* the replay buffer is full: stop reading until it has taken this */
        if (cw_tunnel_write_queue_size(&b->tun) > 0)
            end_read_stop(b);
        return;
    }
    free(w);
    if (n == 0)
        return;
    if (n == UV_ENOBUFS) {
        cw_error("relay tunnel: out of memory; closing the session");
        bridge_teardown(b);
        return;
    }
    /* EOF, or the user closed with bytes unread (ECONNRESET): its stream is
     * over; what it wrote before is in the tunnel, and the FIN follows it */
    end_read_stop(b);
    b->user_eof = true;
    if (cw_tunnel_shutdown(&b->tun, tun_shutdown_cb) < 0)
        bridge_teardown(b);
}

/* ---- relay -> user -------------------------------------------------------- */

static void end_write_cb(uv_write_t *req, int status)
{
    uwrite_t *w = (uwrite_t *)req;
    cw_tunbridge_t *b = w->b;
    b->to_user -= w->len;
    free(w);
    (void)status; /* a user that went away is seen by the reader */
    if (b->tun_paused && b->to_user < CW_TUNBRIDGE_LOW && !b->closing) {
        b->tun_paused = false;
        cw_tunnel_read_start(&b->tun);
    }
}

static void tun_read(cw_tunnel_t *t, uint8_t *data, size_t len)
{
    cw_tunbridge_t *b = t->data;
    if (b->closing || !b->opened)
        return;
    uwrite_t *w = malloc(sizeof *w + len);
    if (w == NULL) {
        cw_error("relay tunnel: out of memory; closing the session");
        bridge_teardown(b);
        return;
    }
    w->b = b;
    w->len = len;
    memcpy(w->data, data, len);
    uv_buf_t ub = uv_buf_init((char *)w->data, (unsigned)len);
    if (uv_write(&w->req, (uv_stream_t *)&b->end, &ub, 1, end_write_cb) < 0) {
        free(w); /* the user closed its end: its EOF reaches end_read */
        return;
    }
    b->to_user += len;
    if (b->to_user > CW_TUNBRIDGE_HIGH && !b->tun_paused) {
        b->tun_paused = true;
        cw_tunnel_read_stop(&b->tun);
    }
}

static void end_shutdown_cb(uv_shutdown_t *req, int status)
{
    cw_tunbridge_t *b = req->data;
    (void)status;
    b->end_shut = true;
    bridge_check_done(b);
}

static void tun_eof(cw_tunnel_t *t)
{
    cw_tunbridge_t *b = t->data;
    b->relay_eof = true;
    if (b->closing)
        return;
    /* after the writes already queued, as a TCP FIN would be */
    b->sreq.data = b;
    if (uv_shutdown(&b->sreq, (uv_stream_t *)&b->end, end_shutdown_cb) < 0) {
        b->end_shut = true;
        bridge_check_done(b);
    }
}

/* ---- the tunnel's events ---------------------------------------------------- */

/* A close-on-exec stream socketpair (libuv makes both ends non-blocking when
 * it opens them). */
static int bridge_socketpair(int sv[2])
{
#ifdef SOCK_CLOEXEC
    return socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv);
#else
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0)
        return -1;
    fcntl(sv[0], F_SETFD, FD_CLOEXEC);
    fcntl(sv[1], F_SETFD, FD_CLOEXEC);
    return 0;
#endif
}

static void tun_open(cw_tunnel_t *t, int status, const char *why)
{
    cw_tunbridge_t *b = t->data;
    int sv[2] = {-1, -1};
    char msg[300];
    if (status == 0 && bridge_socketpair(sv) < 0) {
        status = -errno;
        snprintf(msg, sizeof msg, "socketpair: %s", strerror(errno));
        why = msg;
    }
    if (status == 0 && (status = uv_pipe_open(&b->end, sv[1])) < 0) {
        close(sv[0]);
        close(sv[1]);
        snprintf(msg, sizeof msg, "cannot open the socketpair: %s", uv_strerror(status));
        why = msg;
    }
    if (status < 0) {
        if (!b->released)
            b->cb->on_open(b, status, why, -1);
        bridge_teardown(b);
        return;
    }
    b->opened = true;
    end_read_start(b);
    if (b->released) {
        close(sv[0]);
        return;
    }
    b->cb->on_open(b, 0, NULL, sv[0]);
}

static void tun_link(cw_tunnel_t *t, bool up, const char *why)
{
    cw_tunbridge_t *b = t->data;
    if (!b->released && !b->closing && b->cb->on_link)
        b->cb->on_link(b, up, why);
}

static void tun_lost(cw_tunnel_t *t, int err, const char *why)
{
    cw_tunbridge_t *b = t->data;
    if (!b->released && !b->closing)
        b->cb->on_lost(b, err, why);
    bridge_teardown(b);
}

static const cw_tunnel_callbacks_t tun_callbacks = {
    .on_open = tun_open,
    .on_read = tun_read,
    .on_eof = tun_eof,
    .on_lost = tun_lost,
    .on_link = tun_link,
    .on_closed = tun_closed,
};

/* ---- API ------------------------------------------------------------------ */

cw_tunbridge_t *cw_tunbridge_new(uv_loop_t *loop, const cw_tunnel_options_t *o,
                                 const cw_tunbridge_callbacks_t *cb, void *data)
{
    cw_tunbridge_t *b = calloc(1, sizeof *b);
    if (b == NULL)
        return NULL;
    b->loop = loop;
    b->cb = cb;
    b->data = data;
    b->init_err = cw_tunnel_init(loop, &b->tun, o, &tun_callbacks);
    b->tun.data = b;
    uv_pipe_init(loop, &b->end, 0);
    b->end.data = b;
    uv_timer_init(loop, &b->linger);
    b->linger.data = b;
    b->handles = 3;
    return b;
}

int cw_tunbridge_connect(cw_tunbridge_t *b, const char *host, int port)
{
    if (b->init_err < 0)
        return b->init_err;
    return cw_tunnel_connect(&b->tun, host, port);
}

static void linger_cb(uv_timer_t *t)
{
    cw_tunbridge_t *b = t->data;
    cw_debug("relay tunnel: the session did not end within %d ms; closing it",
             CW_TUNBRIDGE_LINGER_MS);
    bridge_teardown(b);
}

void cw_tunbridge_release(cw_tunbridge_t *b)
{
    if (b == NULL || b->released)
        return;
    b->released = true;
    if (b->closing) {
        bridge_maybe_free(b);
        return;
    }
    if (!b->opened) {
        bridge_teardown(b);
        return;
    }
    uv_timer_start(&b->linger, linger_cb, CW_TUNBRIDGE_LINGER_MS, 0);
}

void *cw_tunbridge_data(const cw_tunbridge_t *b)
{
    return b->data;
}

const cw_tunnel_t *cw_tunbridge_tunnel(const cw_tunbridge_t *b)
{
    return &b->tun;
}
