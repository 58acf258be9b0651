/* One protocol connection over libuv (see conn.h for the lifecycle). */
#include "conn.h"

#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "log.h"
#include "tls.h"

#define READ_BUF_SIZE     (128 * 1024)
#define SHUTDOWN_GRACE_MS 2000

/* One queued write: the frame header plus the payload it owns. */
typedef struct conn_wreq {
    uv_write_t req;
    cw_conn_t *c;
    uint8_t *payload; /* owned, freed after the write */
    size_t total;
    uint8_t hdr[CW_WS_MAX_HEADER];
} conn_wreq_t;

static void conn_close_now(cw_conn_t *c);
static void conn_arm_timer(cw_conn_t *c);

void cw_conn_options_default(cw_conn_options_t *o)
{
    o->max_message = 64u << 20;
    o->handshake_timeout = 10000;
    o->ping_interval = 10000;
    o->dead_timeout = 30000;
    o->high_water = 1u << 20;
    o->low_water = 256u << 10;
}

/* Record the peer address as text for log lines. */
static void conn_note_peer(cw_conn_t *c)
{
    struct sockaddr_storage ss;
    int len = sizeof ss;
    snprintf(c->peer, sizeof c->peer, "?");
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) != 0)
        return;
    char ip[INET6_ADDRSTRLEN] = "?";
    int port = 0;
    if (ss.ss_family == AF_INET) {
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;
        uv_ip4_name(a, ip, sizeof ip);
        port = ntohs(a->sin_port);
        snprintf(c->peer, sizeof c->peer, "%s:%d", ip, port);
    } else if (ss.ss_family == AF_INET6) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
        uv_ip6_name(a, ip, sizeof ip);
        port = ntohs(a->sin6_port);
        snprintf(c->peer, sizeof c->peer, "[%s]:%d", ip, port);
    }
}

/* Socket options for a long-lived, latency-sensitive link: no Nagle delay,
 * TCP keepalive, and (Linux) a bound on unacknowledged data so a dead peer
 * is noticed even while we are sending. */
static void conn_tune_socket(cw_conn_t *c)
{
    uv_tcp_nodelay(&c->tcp, 1);
    uv_tcp_keepalive(&c->tcp, 1, 30);
#ifdef TCP_USER_TIMEOUT
    uv_os_fd_t fd;
    if (c->opt.dead_timeout && uv_fileno((uv_handle_t *)&c->tcp, &fd) == 0) {
        /* A backstop 1 s behind the dead-link timer (conn_timer_cb), which says
         * what happened ("link dead: nothing received for 3.0 s"); with the same
         * value the kernel's bare "connection timed out" sometimes won the race
         * (a failed test under load, 2026-11-28).  unsigned int is 32 bits: saturate rather than
         * wrap (~49 days). */
        uint64_t want = c->opt.dead_timeout + 1000;
        unsigned int ms = want > UINT_MAX ? UINT_MAX : (unsigned int)want;
        setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &ms, sizeof ms);
    }
#endif
}

static void conn_write_cb(uv_write_t *req, int status)
{
    conn_wreq_t *w = (conn_wreq_t *)req;
    cw_conn_t *c = w->c;
    c->queued -= w->total;
    free(w->payload);
    free(w);
    if (status < 0 && status != UV_ECANCELED) {
        cw_conn_close(c, status, 0, "write failed");
        return;
    }
    if (c->above_high && c->queued < c->opt.low_water) {
        c->above_high = false;
        if (c->state == CW_CONN_OPEN && c->cb->on_drain)
            c->cb->on_drain(c);
    }
}

/* Queue header (may be empty) + payload (owned) on the TCP socket as they are. */
static int conn_write_tcp(cw_conn_t *c, conn_wreq_t *w, size_t hlen, uint8_t *payload, size_t len)
{
    uv_buf_t bufs[2];
    unsigned n = 0;
    if (hlen)
        bufs[n++] = uv_buf_init((char *)w->hdr, (unsigned)hlen);
    if (len)
        bufs[n++] = uv_buf_init((char *)payload, (unsigned)len);
    w->c = c;
    w->payload = payload;
    w->total = hlen + len;
    int rc = uv_write(&w->req, (uv_stream_t *)&c->tcp, bufs, n, conn_write_cb);
    if (rc < 0) {
        free(payload);
        free(w);
        cw_conn_close(c, rc, 0, "write failed");
        return rc;
    }
    c->queued += hlen + len;
    c->bytes_out += hlen + len;
    if (c->queued >= c->opt.high_water)
        c->above_high = true;
    return 0;
}

/* Move whatever TLS produced (records, handshake messages) onto TCP. */
static int conn_flush_tls(cw_conn_t *c)
{
    uint8_t *out;
    size_t n;
    while ((n = cw_tls_take_out(c->tls, &out)) > 0) {
        conn_wreq_t *w = calloc(1, sizeof *w);
        if (w == NULL) {
            free(out);
            return -ENOMEM;
        }
        int rc = conn_write_tcp(c, w, 0, out, n);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* Queue header + payload (owned) for the peer: through TLS when the link
 * has it (the plaintext is encrypted now and freed), else as they are. */
static int conn_write(cw_conn_t *c, conn_wreq_t *w, size_t hlen, uint8_t *payload, size_t len)
{
    if (c->tls == NULL || !c->tls_up)
        return conn_write_tcp(c, w, hlen, payload, len);
    int rc = 0;
    if (hlen)
        rc = cw_tls_write(c->tls, w->hdr, hlen);
    if (rc == 0 && len)
        rc = cw_tls_write(c->tls, payload, len);
    free(payload);
    free(w);
    if (rc < 0) {
        cw_conn_close(c, rc, 0, cw_tls_error(c->tls));
        return rc;
    }
    return conn_flush_tls(c);
}

/* Send raw bytes (copied): HTTP heads, control frames. */
static int conn_write_copy(cw_conn_t *c, const uint8_t *data, size_t len)
{
    conn_wreq_t *w = calloc(1, sizeof *w);
    uint8_t *p = malloc(len ? len : 1);
    if (w == NULL || p == NULL) {
        free(w);
        free(p);
        return -ENOMEM;
    }
    memcpy(p, data, len);
    return conn_write(c, w, 0, p, len);
}

static int ws_on_send(void *ud, const uint8_t *data, size_t len)
{
    cw_conn_t *c = ud;
    if (c->state == CW_CONN_CLOSED || uv_is_closing((uv_handle_t *)&c->tcp))
        return 0;
    return conn_write_copy(c, data, len);
}

static void ws_on_close(void *ud, int code, const char *reason, size_t len)
{
    cw_conn_t *c = ud;
    cw_debug("%s sent WebSocket Close %d %.*s", c->peer, code, (int)len, reason);
}

/* Route a response to the callback of its request. */
static void conn_dispatch_response(cw_conn_t *c, const cw_msg_t *m)
{
    cw_reqtab_entry_t e;
    if (cw_reqtab_take(&c->pending, m->seq, &e)) {
        if (e.fn)
            ((cw_conn_resp_cb)e.fn)(c, e.ctx, m);
        return;
    }
    /* The stock peers drop the link here (KeyError); a stray answer is
     * harmless to us, so it is logged and dropped instead. */
    cw_warn("%s: response to unknown seq_number %lld ignored", c->peer, (long long)m->seq);
}

static int ws_on_message(void *ud, unsigned opcode, uint8_t *data, size_t len)
{
    cw_conn_t *c = ud;
    if (c->state != CW_CONN_OPEN)
        return CW_ECLOSED;
    c->msgs_in++;
    if (opcode != CW_WS_OP_BINARY) {
        cw_warn("%s: text WebSocket message ignored (%zu bytes)", c->peer, len);
        return 0;
    }
    cw_msg_t m;
    char err[256];
    cw_side_t side = c->role == CW_CONN_CLIENT ? CW_SIDE_WORKER : CW_SIDE_MASTER;
    int rc = cw_msg_decode(&m, &c->up, side, data, len, err, sizeof err);
    if (rc == CW_EMSGKEY) {
        cw_warn("%s: bad %.*s request: %s", c->peer, (int)m.op_name.len, m.op_name.ptr, err);
        cw_conn_respond_error(c, m.seq, err);
        return 0;
    }
    if (rc == CW_EIGNORE) {
        cw_warn("%s: message ignored: %s", c->peer, err);
        return 0;
    }
    if (rc < 0) {
        char why[320];
        snprintf(why, sizeof why, "malformed message from peer: %s", err);
        cw_conn_close(c, rc == -ENOMEM ? rc : CW_EBADMSG, CW_WS_CLOSE_INVALID_DATA, why);
        return CW_ECLOSED;
    }
    if (c->cb->on_message_seen && !c->cb->on_message_seen(c, &m))
        return c->state == CW_CONN_OPEN ? 0 : CW_ECLOSED;
    if (m.op == CW_OP_RESPONSE) {
        conn_dispatch_response(c, &m);
    } else {
        cw_debug("%s: <- %s seq %lld", c->peer, cw_op_name(m.op), (long long)m.seq);
        c->cb->on_request(c, &m);
    }
    return c->state == CW_CONN_OPEN ? 0 : CW_ECLOSED;
}

static const cw_ws_callbacks_t conn_ws_callbacks = {
    .on_message = ws_on_message,
    .on_send = ws_on_send,
    .on_pong = NULL,
    .on_close = ws_on_close,
};

uint8_t *cw_conn_take_message(cw_conn_t *c, const uint8_t *data, size_t len)
{
    /* the decoder's views point into the message: check rather than assume */
    if (!cw_ws_message_holds(&c->ws, data, len))
        return NULL;
    size_t mlen;
    return cw_ws_take_message(&c->ws, &mlen);
}

void cw_conn_init(cw_conn_t *c, uv_loop_t *loop, cw_conn_role_t role, const cw_conn_options_t *opt,
                  const cw_conn_callbacks_t *cb, void *data)
{
    memset(c, 0, sizeof *c);
    c->loop = loop;
    c->role = role;
    if (opt)
        c->opt = *opt;
    else
        cw_conn_options_default(&c->opt);
    c->cb = cb;
    c->data = data;
    snprintf(c->peer, sizeof c->peer, "?");
    uv_tcp_init(loop, &c->tcp);
    uv_timer_init(loop, &c->timer);
    c->tcp.data = c;
    c->timer.data = c;
    c->handles_open = 2;
    msgpack_unpacked_init(&c->up);
    cw_ws_init(&c->ws, role == CW_CONN_CLIENT ? CW_WS_CLIENT : CW_WS_SERVER, c->opt.max_message,
               &conn_ws_callbacks, c);
}

uv_tcp_t *cw_conn_tcp(cw_conn_t *c)
{
    return &c->tcp;
}

static void conn_open(cw_conn_t *c)
{
    free(c->head);
    c->head = NULL;
    c->state = CW_CONN_OPEN;
    c->opened_at = uv_now(c->loop);
    c->last_rx = c->opened_at;
    c->last_ping = c->opened_at;
    conn_arm_timer(c);
    c->cb->on_open(c);
}

/* Feed WebSocket bytes; a session error closes the connection. */
static void conn_feed_ws(cw_conn_t *c, uint8_t *data, size_t len)
{
    if (len == 0 || c->state != CW_CONN_OPEN)
        return;
    int rc = cw_ws_feed(&c->ws, data, len);
    if (rc == 0 || c->state != CW_CONN_OPEN)
        return;
    char why[200];
    const char *detail = cw_ws_error(&c->ws);
    if (rc == CW_ECLOSED)
        snprintf(why, sizeof why, "peer closed the WebSocket");
    else if (rc == CW_ETOOBIG)
        snprintf(why, sizeof why, "peer sent a message over the size limit (%zu bytes)",
                 c->opt.max_message);
    else if (detail)
        snprintf(why, sizeof why, "%s: %s", cw_strerror(rc), detail);
    else
        snprintf(why, sizeof why, "%s", cw_strerror(rc));
    cw_conn_close(c, rc == CW_ECLOSED ? 0 : rc, 0, why);
}

/* Client: the response head is complete. */
static void conn_client_head_done(cw_conn_t *c, uint8_t *rest, size_t rest_len)
{
    char err[300];
    int rc = cw_http_upgrade_check_response(c->head, c->key, err, sizeof err);
    if (rc < 0) {
        /* what nginx and most TLS front ends answer to plain HTTP on a TLS port */
        if (c->head->status == 400 && c->tls == NULL)
            snprintf(err + strlen(err), sizeof err - strlen(err),
                     " (if the master's port is behind TLS, use wss://)");
        /* nginx's ssl_verify_client: the handshake succeeds, the request gets a 400 */
        else if (c->head->status == 400 && cw_tls_cert_requested(c->tls))
            snprintf(err + strlen(err), sizeof err - strlen(err), "%s",
                     cw_tls_has_client_cert(c->tls)
                         ? " (the server asked for a client certificate and, like nginx, "
                           "answers 400 when it does not accept the one sent: check "
                           "--client-cert and the CA the server trusts)"
                         : " (the server asked for a client certificate and none is "
                           "configured; TLS front ends like nginx then answer 400: use "
                           "--client-cert and --client-key)");
        /* only a reverse proxy answers these: the master behind it is not there */
        else if (c->head->status == 502 || c->head->status == 504)
            snprintf(err + strlen(err), sizeof err - strlen(err),
                     " (from a reverse proxy in front of the master: the master behind it is "
                     "down or unreachable)");
        /* e.g. a plain GET answered by the master's web page: the upgrade was lost */
        else if (c->head->status >= 200 && c->head->status < 300)
            snprintf(err + strlen(err), sizeof err - strlen(err),
                     " (not a WebSocket answer: a reverse proxy in front of the master must pass "
                     "on the Upgrade and Connection headers)");
        cw_conn_close(c, rc, 0, err);
        return;
    }
    conn_open(c);
    conn_feed_ws(c, rest, rest_len);
}

/* Server: refuse the upgrade with an HTTP status, then close. */
static void conn_server_refuse(cw_conn_t *c, int status, const char *why)
{
    cw_buf_t out = CW_BUF_INIT;
    if (cw_http_error_response(&out, status) == 0)
        conn_write_copy(c, out.data, out.len);
    cw_buf_free(&out);
    cw_conn_close(c, status == 401 ? CW_EAUTH : CW_EHANDSHAKE, 0, why);
}

/* Server: the request head is complete. */
static void conn_server_head_done(cw_conn_t *c, uint8_t *rest, size_t rest_len)
{
    cw_http_upgrade_req_t *req = calloc(1, sizeof *req);
    if (req == NULL) {
        cw_conn_close(c, -ENOMEM, 0, "out of memory");
        return;
    }
    int status = cw_http_upgrade_check_request(c->head, req);
    if (status != 0) {
        char why[64];
        snprintf(why, sizeof why, "bad upgrade request (HTTP %d)", status);
        conn_server_refuse(c, status, why);
    } else if (!req->has_auth) {
        conn_server_refuse(c, 401, "no credentials");
    } else if ((status = c->cb->on_auth(c, req)) != 0) {
        char why[64];
        snprintf(why, sizeof why, "credentials refused (HTTP %d)", status);
        conn_server_refuse(c, status, why);
    } else {
        cw_buf_t out = CW_BUF_INIT;
        if (cw_http_upgrade_response(&out, req->key) < 0 ||
            conn_write_copy(c, out.data, out.len) < 0) {
            cw_buf_free(&out);
            free(req);
            cw_conn_close(c, -ENOMEM, 0, "out of memory");
            return;
        }
        cw_buf_free(&out);
        free(req);
        conn_open(c);
        conn_feed_ws(c, rest, rest_len);
        return;
    }
    free(req);
}

static void conn_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    cw_conn_t *c = h->data;
    if (c->rbuf == NULL)
        c->rbuf = malloc(READ_BUF_SIZE);
    buf->base = (char *)c->rbuf;
    buf->len = c->rbuf ? READ_BUF_SIZE : 0;
}

/* Plaintext bytes of the protocol: HTTP upgrade head, then WebSocket. */
static void conn_process_plain(cw_conn_t *c, uint8_t *data, size_t len)
{
    if (c->state == CW_CONN_HANDSHAKE) {
        /* A Perspective Broker port speaks first: its dialect offer, the
         * banana list ("pb" "none"), arrives before any HTTP answer. */
        if (c->role == CW_CONN_CLIENT && c->head_seen == 0 && len >= 6 && data[0] == 0x02 &&
            data[1] == 0x80 && data[2] == 0x02 && data[3] == 0x82 && data[4] == 'p' &&
            data[5] == 'b') {
            cw_conn_close(c, CW_EPROTO, 0,
                          "this port speaks Perspective Broker, not msgpack_experimental_v7 "
                          "(it is the master's PB port: use --protocol pb, or the msgpack port)");
            return;
        }
        c->head_seen += len;
        size_t used = 0;
        int rc = cw_http_head_feed(c->head, data, len, &used);
        if (rc == CW_HTTP_AGAIN)
            return;
        if (rc < 0) {
            if (c->role == CW_CONN_SERVER)
                conn_server_refuse(c, 400, "malformed HTTP upgrade request");
            else
                cw_conn_close(c, rc, 0, "malformed HTTP answer to the upgrade request");
            return;
        }
        if (c->role == CW_CONN_CLIENT)
            conn_client_head_done(c, data + used, len - used);
        else
            conn_server_head_done(c, data + used, len - used);
        return;
    }
    conn_feed_ws(c, data, len);
}

static void conn_after_tls(cw_conn_t *c);

/* Ciphertext from TCP: drive the handshake, then decrypt and process. */
static void conn_process_tls(cw_conn_t *c, const uint8_t *data, size_t len)
{
    if (cw_tls_feed(c->tls, data, len) < 0) {
        cw_conn_close(c, -ENOMEM, 0, "out of memory");
        return;
    }
    if (!c->tls_up) {
        int rc = cw_tls_handshake(c->tls);
        conn_flush_tls(c);
        if (rc < 0) {
            cw_conn_close(c, rc, 0, cw_tls_error(c->tls));
            return;
        }
        if (rc == 0)
            return;
        c->tls_up = true;
        conn_after_tls(c);
        if (c->state >= CW_CONN_CLOSING)
            return;
    }
    if (c->tbuf == NULL && (c->tbuf = malloc(READ_BUF_SIZE)) == NULL) {
        cw_conn_close(c, -ENOMEM, 0, "out of memory");
        return;
    }
    for (;;) {
        int n = cw_tls_read(c->tls, c->tbuf, READ_BUF_SIZE);
        if (n == 0)
            break;
        if (n == CW_ECLOSED) {
            cw_conn_close(c, UV_EOF, 0, "connection closed by peer (TLS close)");
            return;
        }
        if (n < 0) {
            cw_conn_close(c, n, 0, cw_tls_error(c->tls));
            return;
        }
        conn_process_plain(c, c->tbuf, (size_t)n);
        if (c->state >= CW_CONN_CLOSING)
            return;
    }
    conn_flush_tls(c); /* e.g. key updates */
}

static void conn_begin_transport(cw_conn_t *c);

/* Client through an HTTP proxy: the answer to our CONNECT. */
static void conn_process_proxy(cw_conn_t *c, uint8_t *data, size_t len)
{
    size_t used = 0;
    int rc = cw_http_head_feed(c->head, data, len, &used);
    if (rc == CW_HTTP_AGAIN)
        return;
    if (rc < 0) {
        cw_conn_close(c, CW_EHANDSHAKE, 0, "the proxy sent a malformed answer to CONNECT");
        return;
    }
    if (c->head->status != 200) {
        char why[200];
        snprintf(why, sizeof why, "the proxy refused CONNECT: HTTP %d %s%s", c->head->status,
                 c->head->reason ? c->head->reason : "",
                 c->head->status == 407 ? " (proxy credentials needed: http://user:pass@host)"
                                        : "");
        cw_conn_close(c, CW_EHANDSHAKE, 0, why);
        return;
    }
    c->proxy_pending = false;
    conn_begin_transport(c);
    if (c->state >= CW_CONN_CLOSING || used == len)
        return;
    if (c->tls)
        conn_process_tls(c, data + used, len - used);
    else
        conn_process_plain(c, data + used, len - used);
}

static void conn_read_cb(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    cw_conn_t *c = s->data;
    if (n == 0)
        return;
    if (n < 0) {
        if ((n == UV_EOF || n == UV_ECONNRESET) && c->proxy_pending)
            cw_conn_close(c, (int)n, 0,
                          "the HTTP proxy closed the connection without answering CONNECT");
        /* A peer that does not speak TLS (the stock master's own port) reads the
         * ClientHello as a bad HTTP request, waits, then closes or resets. */
        else if ((n == UV_EOF || n == UV_ECONNRESET) && c->state == CW_CONN_HANDSHAKE &&
                 c->role == CW_CONN_CLIENT && c->tls && !c->tls_up)
            cw_conn_close(c, (int)n, 0,
                          n == UV_EOF ? "connection closed by peer during the TLS handshake "
                                        "(is the other end speaking TLS on this port?)"
                                      : "connection reset by peer during the TLS handshake "
                                        "(is the other end speaking TLS on this port?)");
        else if (n == UV_EOF && c->state == CW_CONN_HANDSHAKE && c->role == CW_CONN_CLIENT)
            cw_conn_close(c, UV_EOF, 0,
                          c->tls ? "connection closed by peer during the TLS/WebSocket handshake"
                                 : "connection closed by peer before it answered the WebSocket "
                                   "upgrade (a TLS port? then use wss://)");
        else if (n == UV_EOF)
            cw_conn_close(c, UV_EOF, 0, "connection closed by peer");
        else if (n == UV_ENOBUFS)
            cw_conn_close(c, -ENOMEM, 0, "out of memory");
        else
            cw_conn_close(c, (int)n, 0, uv_strerror((int)n));
        return;
    }
    if (c->state >= CW_CONN_CLOSING)
        return;
    c->bytes_in += (size_t)n;
    c->last_rx = uv_now(c->loop);
    uint8_t *data = (uint8_t *)buf->base;
    if (c->proxy_pending)
        conn_process_proxy(c, data, (size_t)n);
    else if (c->tls)
        conn_process_tls(c, data, (size_t)n);
    else
        conn_process_plain(c, data, (size_t)n);
}

static void conn_timer_cb(uv_timer_t *t)
{
    cw_conn_t *c = t->data;
    uint64_t now = uv_now(c->loop);
    if (c->state == CW_CONN_HANDSHAKE) {
        if (c->liveness_held) {
            /* the path is being repaired: the handshake gets its time after */
            uv_timer_start(&c->timer, conn_timer_cb, c->opt.handshake_timeout, 0);
            return;
        }
        cw_conn_close(c, CW_ETIMEOUT, 0, "WebSocket handshake timed out");
        return;
    }
    if (c->state == CW_CONN_CLOSING) {
        /* the graceful shutdown did not finish in time */
        conn_close_now(c);
        return;
    }
    if (c->state != CW_CONN_OPEN)
        return;
    if (c->liveness_held) {
        c->last_tick = now;
        return;
    }
    uint64_t gap = now - c->last_tick;
    c->last_tick = now;
    if (gap > c->tick_ms + 1000 && gap > 2 * c->tick_ms) {
        /* The loop did not run for a while (SIGSTOP, a paused VM or
         * container, a suspended laptop): whatever the peer sent meanwhile
         * is still unread in the socket.  Count the silence from now, and
         * ask with a ping; a live peer answers within the dead timeout. */
        cw_info("%s: the process did not run for %.1f s; checking the link with a ping", c->peer,
                (double)gap / 1000.0);
        c->last_rx = now;
        c->last_ping = now;
        cw_ws_ping(&c->ws, (const uint8_t *)"cw", 2);
        return;
    }
    if (c->opt.dead_timeout && !c->reading_paused && now - c->last_rx >= c->opt.dead_timeout) {
        char why[96];
        snprintf(why, sizeof why, "link dead: nothing received for %.1f s",
                 (double)(now - c->last_rx) / 1000.0);
        cw_conn_close(c, CW_ETIMEOUT, 0, why); /* closes at once */
        return;
    }
    if (c->opt.ping_interval && now - c->last_rx >= c->opt.ping_interval &&
        now - c->last_ping >= c->opt.ping_interval) {
        c->last_ping = now;
        cw_ws_ping(&c->ws, (const uint8_t *)"cw", 2);
    }
}

/* (Re)arm the timer for the current state. */
static void conn_arm_timer(cw_conn_t *c)
{
    uv_timer_stop(&c->timer);
    if (c->state == CW_CONN_HANDSHAKE) {
        uv_timer_start(&c->timer, conn_timer_cb, c->opt.handshake_timeout, 0);
    } else if (c->state == CW_CONN_OPEN) {
        uint64_t p = 0;
        if (c->opt.ping_interval)
            p = c->opt.ping_interval;
        if (c->opt.dead_timeout && (p == 0 || c->opt.dead_timeout < p))
            p = c->opt.dead_timeout;
        if (p) {
            p /= 4;
            if (p < 50)
                p = 50;
            c->tick_ms = p;
            c->last_tick = uv_now(c->loop);
            uv_timer_start(&c->timer, conn_timer_cb, p, p);
        }
    } else if (c->state == CW_CONN_CLOSING) {
        uv_timer_start(&c->timer, conn_timer_cb, SHUTDOWN_GRACE_MS, 0);
    }
}

/* Client: TLS (if any) is up, or there is none: send the upgrade request. */
static void conn_send_upgrade(cw_conn_t *c)
{
    cw_http_head_init(c->head, false);
    cw_ws_key_generate(c->key);
    cw_buf_t req = CW_BUF_INIT;
    int rc = cw_http_upgrade_request(&req, c->client.host_header, c->client.path, c->client.user,
                                     c->client.password, c->key, NULL);
    if (rc < 0) {
        cw_buf_free(&req);
        cw_conn_close(c, rc, 0, "cannot build the upgrade request");
        return;
    }
    conn_wreq_t *w = calloc(1, sizeof *w);
    if (w == NULL) {
        cw_buf_free(&req);
        cw_conn_close(c, -ENOMEM, 0, "out of memory");
        return;
    }
    size_t len;
    uint8_t *p = cw_buf_steal(&req, &len);
    conn_write(c, w, 0, p, len);
}

/* The TLS handshake finished. */
static void conn_after_tls(cw_conn_t *c)
{
    if (c->role == CW_CONN_CLIENT)
        conn_send_upgrade(c);
}

/* After TCP (and a proxy tunnel): start TLS, or go straight to HTTP. */
static void conn_begin_transport(cw_conn_t *c)
{
    c->state = CW_CONN_HANDSHAKE;
    cw_http_head_init(c->head, c->role == CW_CONN_SERVER);
    if (c->tls) {
        if (c->role == CW_CONN_CLIENT) {
            int rc = cw_tls_handshake(c->tls); /* produces the ClientHello */
            conn_flush_tls(c);
            if (rc < 0)
                cw_conn_close(c, rc, 0, cw_tls_error(c->tls));
        }
        return;
    }
    if (c->role == CW_CONN_CLIENT)
        conn_send_upgrade(c);
}

int cw_conn_start_client2(cw_conn_t *c, const cw_conn_client_t *o)
{
    conn_note_peer(c);
    conn_tune_socket(c);
    c->head = malloc(sizeof *c->head);
    if (c->head == NULL)
        return -ENOMEM;
    c->client = *o;
    if (o->tls_ctx) {
        c->tls = cw_tls_new(o->tls_ctx, false, o->tls_host);
        if (c->tls == NULL)
            return -ENOMEM;
    }
    c->state = CW_CONN_HANDSHAKE;
    conn_arm_timer(c);
    int rc = uv_read_start((uv_stream_t *)&c->tcp, conn_alloc_cb, conn_read_cb);
    if (rc < 0)
        return rc;
    if (o->proxy_target) {
        /* tunnel first: CONNECT host:port, then TLS/HTTP inside it */
        c->proxy_pending = true;
        cw_http_head_init(c->head, false);
        cw_buf_t req = CW_BUF_INIT;
        cw_buf_printf(&req, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n", o->proxy_target,
                      o->proxy_target);
        if (o->proxy_auth)
            cw_buf_printf(&req, "Proxy-Authorization: %s\r\n", o->proxy_auth);
        cw_buf_append_str(&req, "\r\n");
        rc = conn_write_copy(c, req.data, req.len);
        cw_buf_free(&req);
        return rc;
    }
    conn_begin_transport(c);
    return 0;
}

int cw_conn_start_client(cw_conn_t *c, const char *host_header, const char *path, const char *user,
                         const char *password)
{
    cw_conn_client_t o = {
        .host_header = host_header, .path = path, .user = user, .password = password};
    return cw_conn_start_client2(c, &o);
}

int cw_conn_start_server(cw_conn_t *c)
{
    conn_note_peer(c);
    conn_tune_socket(c);
    c->head = malloc(sizeof *c->head);
    if (c->head == NULL)
        return -ENOMEM;
    if (c->opt.tls_ctx) {
        c->tls = cw_tls_new(c->opt.tls_ctx, true, NULL);
        if (c->tls == NULL)
            return -ENOMEM;
    }
    conn_begin_transport(c);
    conn_arm_timer(c);
    return uv_read_start((uv_stream_t *)&c->tcp, conn_alloc_cb, conn_read_cb);
}

int64_t cw_conn_next_seq(cw_conn_t *c)
{
    return c->next_seq++;
}

int cw_conn_send(cw_conn_t *c, cw_buf_t *msg)
{
    if (c->state != CW_CONN_OPEN) {
        cw_buf_free(msg);
        return CW_ECLOSED;
    }
    conn_wreq_t *w = malloc(sizeof *w);
    if (w == NULL) {
        cw_buf_free(msg);
        return -ENOMEM;
    }
    size_t len;
    uint8_t *p = cw_buf_steal(msg, &len);
    size_t hlen = cw_ws_encode(&c->ws, CW_WS_OP_BINARY, p, len, w->hdr);
    c->msgs_out++;
    return conn_write(c, w, hlen, p, len);
}

int cw_conn_request(cw_conn_t *c, int64_t seq, cw_buf_t *msg, cw_conn_resp_cb cb, void *ctx)
{
    if (c->state != CW_CONN_OPEN) {
        cw_buf_free(msg);
        return CW_ECLOSED;
    }
    /* room first: a request that is sent must also be remembered */
    if (cw_reqtab_reserve(&c->pending) < 0) {
        cw_buf_free(msg);
        return -ENOMEM;
    }
    int rc = cw_conn_send(c, msg);
    if (rc < 0)
        return rc;
    rc = cw_reqtab_add(&c->pending, seq, (cw_reqtab_fn)cb, ctx);
    if (rc < 0)
        cw_error("%s: request %lld sent while an earlier one with that number waits: %s", c->peer,
                 (long long)seq, cw_strerror(rc));
    return 0;
}

void cw_conn_forget(cw_conn_t *c, void *ctx)
{
    cw_reqtab_forget(&c->pending, ctx);
}

int cw_conn_respond_nil(cw_conn_t *c, int64_t seq)
{
    cw_buf_t b = CW_BUF_INIT;
    msgpack_packer pk;
    cw_pack_init(&pk, &b);
    if (cw_pack_response_nil(&pk, seq) < 0) {
        cw_buf_free(&b);
        return -ENOMEM;
    }
    return cw_conn_send(c, &b);
}

int cw_conn_respond_unknown(cw_conn_t *c, const cw_msg_t *m)
{
    cw_str_t name = m->op == CW_OP_UNKNOWN
                        ? m->op_name
                        : (cw_str_t){cw_op_name(m->op), strlen(cw_op_name(m->op))};
    cw_warn("%s: unknown op '%.*s'", c->peer, name.len > 100 ? 100 : (int)name.len, name.ptr);
    /* the op name is valid UTF-8 (checked); keep it whole in the answer */
    cw_buf_t text = CW_BUF_INIT;
    cw_op_unknown_text(&text, name);
    int rc = cw_conn_respond_error(c, m->seq, text.data ? (const char *)text.data : "unknown op");
    cw_buf_free(&text);
    return rc;
}

int cw_conn_respond_error(cw_conn_t *c, int64_t seq, const char *text)
{
    cw_buf_t b = CW_BUF_INIT;
    msgpack_packer pk;
    cw_pack_init(&pk, &b);
    if (cw_pack_response_error(&pk, seq, text, strlen(text)) < 0) {
        cw_buf_free(&b);
        return -ENOMEM;
    }
    return cw_conn_send(c, &b);
}

/* Both handles are closed: report, then never touch c again. */
static void conn_handle_closed(uv_handle_t *h)
{
    cw_conn_t *c = h->data;
    if (--c->handles_open > 0)
        return;
    c->state = CW_CONN_CLOSED;
    /* Outstanding requests will never be answered. */
    cw_reqtab_entry_t e;
    while (cw_reqtab_pop(&c->pending, &e))
        if (e.fn)
            ((cw_conn_resp_cb)e.fn)(c, e.ctx, NULL);
    cw_reqtab_free(&c->pending);
    free(c->head);
    c->head = NULL;
    free(c->rbuf);
    c->rbuf = NULL;
    free(c->tbuf);
    c->tbuf = NULL;
    cw_tls_free(c->tls);
    c->tls = NULL;
    cw_ws_free(&c->ws);
    msgpack_unpacked_destroy(&c->up);
    c->cb->on_close(c, c->close_err, c->close_why);
}

/* Close both handles right away (pending writes are cancelled). */
static void conn_close_now(cw_conn_t *c)
{
    if (!uv_is_closing((uv_handle_t *)&c->tcp))
        uv_close((uv_handle_t *)&c->tcp, conn_handle_closed);
    if (!uv_is_closing((uv_handle_t *)&c->timer))
        uv_close((uv_handle_t *)&c->timer, conn_handle_closed);
}

static void conn_shutdown_cb(uv_shutdown_t *req, int status)
{
    cw_conn_t *c = req->data;
    free(req);
    conn_close_now(c);
}

void cw_conn_close(cw_conn_t *c, int err, uint16_t ws_code, const char *why)
{
    if (c->state >= CW_CONN_CLOSING) {
        return;
    }
    bool was_open = c->state == CW_CONN_OPEN;
    bool started = c->state != CW_CONN_INIT;
    c->state = CW_CONN_CLOSING;
    c->close_err = err;
    snprintf(c->close_why, sizeof c->close_why, "%s", why ? why : "closed");
    if (!started) {
        conn_close_now(c);
        return;
    }
    uv_read_stop((uv_stream_t *)&c->tcp);
    if (was_open && ws_code)
        cw_ws_close(&c->ws, ws_code, why);
    /* Let queued bytes (an HTTP error answer, a Close frame, the last
     * updates) reach the peer, but not forever. */
    uv_shutdown_t *req = malloc(sizeof *req);
    if (req == NULL || err == CW_ETIMEOUT) {
        free(req);
        conn_close_now(c);
        return;
    }
    req->data = c;
    if (uv_shutdown(req, (uv_stream_t *)&c->tcp, conn_shutdown_cb) < 0) {
        free(req);
        conn_close_now(c);
        return;
    }
    conn_arm_timer(c);
}

void cw_conn_pause_reading(cw_conn_t *c, bool pause)
{
    if (c->state >= CW_CONN_CLOSING || pause == c->reading_paused)
        return;
    c->reading_paused = pause;
    if (pause) {
        uv_read_stop((uv_stream_t *)&c->tcp);
    } else {
        /* silence while paused was our doing, not the peer's */
        c->last_rx = uv_now(c->loop);
        uv_read_start((uv_stream_t *)&c->tcp, conn_alloc_cb, conn_read_cb);
    }
}

void cw_conn_hold_liveness(cw_conn_t *c, bool hold)
{
    if (hold == c->liveness_held)
        return;
    c->liveness_held = hold;
    if (hold)
        return;
    c->last_rx = c->last_ping = c->last_tick = uv_now(c->loop);
    if (c->state == CW_CONN_HANDSHAKE)
        conn_arm_timer(c); /* a whole handshake timeout from now */
}

int cw_conn_send_raw(cw_conn_t *c, const uint8_t *data, size_t len)
{
    if (c->state >= CW_CONN_CLOSING)
        return CW_ECLOSED;
    return conn_write_copy(c, data, len); /* through TLS when the link has it */
}

bool cw_conn_writable(const cw_conn_t *c)
{
    return c->state == CW_CONN_OPEN && !c->above_high;
}

bool cw_conn_is_open(const cw_conn_t *c)
{
    return c->state == CW_CONN_OPEN;
}
