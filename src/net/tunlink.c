/* One link of the resumable tunnel: TCP [+ TLS] (see tunlink.h). */
#include "tunlink.h"

#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "cworker/cw.h"
#include "tls.h"

#define READ_SIZE (64 * 1024)

/* Reads are handled to the end inside the read callback, so every link of
 * the process shares one read buffer and one plaintext buffer: an idle link
 * holds no buffer at all. */
static uint8_t read_buf[READ_SIZE];
static uint8_t plain_buf[READ_SIZE];

typedef struct tl_wreq {
    uv_write_t req;
    cw_tunlink_t *l;
    size_t len;
    uint8_t data[]; /* the bytes, owned with the request */
} tl_wreq_t;

/* The link is dead: stop reading; tell the owner unless it is the one
 * calling (a failed cw_tunlink_send() reports through its result). */
static void tl_fail_quiet(cw_tunlink_t *l, int err, const char *why)
{
    if (l->failed || l->closing)
        return;
    l->failed = true;
    l->err = err;
    l->why = why;
    uv_read_stop((uv_stream_t *)&l->tcp);
    l->reading = false;
}

static void tl_fail(cw_tunlink_t *l, int err, const char *why)
{
    if (l->closing || l->notified)
        return;
    tl_fail_quiet(l, err, why);
    l->notified = true;
    l->cb->on_error(l, l->err, l->why);
}

static void tl_write_cb(uv_write_t *req, int status)
{
    tl_wreq_t *w = (tl_wreq_t *)req;
    cw_tunlink_t *l = w->l;
    size_t before = l->queued;
    l->queued -= w->len;
    free(w);
    if (status < 0) {
        if (status != UV_ECANCELED)
            tl_fail(l, status, uv_strerror(status));
        return;
    }
    if (before >= CW_TUNLINK_LOW && l->queued < CW_TUNLINK_LOW && !l->closing && !l->failed &&
        l->cb->on_drain)
        l->cb->on_drain(l);
}

/* Put bytes on TCP as they are: what the kernel takes now is written
 * directly, the rest is copied into a request. */
static int tl_write_raw(cw_tunlink_t *l, const uint8_t *data, size_t len)
{
    if (len == 0)
        return 0;
    l->bytes_out += len;
    if (l->queued == 0) {
        uv_buf_t b = uv_buf_init((char *)data, (unsigned)len);
        int n = uv_try_write((uv_stream_t *)&l->tcp, &b, 1);
        if (n > 0) {
            data += n;
            len -= (size_t)n;
            if (len == 0)
                return 0;
        } else if (n < 0 && n != UV_EAGAIN && n != UV_ENOSYS) {
            tl_fail_quiet(l, n, uv_strerror(n));
            return n;
        }
    }
    tl_wreq_t *w = malloc(sizeof *w + len);
    if (w == NULL) {
        tl_fail_quiet(l, -ENOMEM, "out of memory");
        return -ENOMEM;
    }
    memcpy(w->data, data, len);
    w->l = l;
    w->len = len;
    uv_buf_t b = uv_buf_init((char *)w->data, (unsigned)len);
    int rc = uv_write(&w->req, (uv_stream_t *)&l->tcp, &b, 1, tl_write_cb);
    if (rc < 0) {
        free(w);
        tl_fail_quiet(l, rc, uv_strerror(rc));
        return rc;
    }
    l->queued += len;
    return 0;
}

/* Move whatever TLS produced onto TCP. */
static int tl_flush_tls(cw_tunlink_t *l)
{
    uint8_t *out;
    size_t n;
    while ((n = cw_tls_take_out(l->tls, &out)) > 0) {
        int rc = tl_write_raw(l, out, n);
        free(out);
        if (rc < 0)
            return rc;
    }
    return 0;
}

int cw_tunlink_send(cw_tunlink_t *l, const uint8_t *data, size_t len)
{
    if (l->closing || l->failed)
        return UV_ECANCELED;
    if (l->tls == NULL)
        return tl_write_raw(l, data, len);
    if (!l->tls_up)
        return UV_EAGAIN; /* the owner sends after on_ready */
    int rc = cw_tls_write(l->tls, data, len);
    if (rc < 0) {
        tl_fail_quiet(l, rc, cw_tls_error(l->tls));
        return rc;
    }
    return tl_flush_tls(l);
}

bool cw_tunlink_writable(const cw_tunlink_t *l)
{
    return l->queued < CW_TUNLINK_HIGH;
}

static void tl_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)h;
    (void)suggested;
    buf->base = (char *)read_buf;
    buf->len = sizeof read_buf;
}

/* Ciphertext: drive the handshake, then hand out plaintext. */
static void tl_process_tls(cw_tunlink_t *l, const uint8_t *data, size_t len)
{
    if (cw_tls_feed(l->tls, data, len) < 0) {
        tl_fail(l, -ENOMEM, "out of memory");
        return;
    }
    if (!l->tls_up) {
        int rc = cw_tls_handshake(l->tls);
        if (tl_flush_tls(l) < 0) {
            tl_fail(l, l->err, l->why);
            return;
        }
        if (rc < 0) {
            tl_fail(l, rc, cw_tls_error(l->tls));
            return;
        }
        if (rc == 0)
            return;
        l->tls_up = true;
        l->cb->on_ready(l);
        if (l->closing || l->failed)
            return;
    }
    for (;;) {
        int n = cw_tls_read(l->tls, plain_buf, sizeof plain_buf);
        if (n == 0)
            break;
        if (n == CW_ECLOSED) {
            tl_fail(l, UV_EOF, "connection closed by peer (TLS close)");
            return;
        }
        if (n < 0) {
            tl_fail(l, n, cw_tls_error(l->tls));
            return;
        }
        l->cb->on_data(l, plain_buf, (size_t)n);
        if (l->closing || l->failed || l->paused)
            break; /* a paused owner gets the rest when it resumes reading */
    }
    if (l->closing || l->failed)
        return;
    if (tl_flush_tls(l) < 0) /* key updates, session tickets */
        tl_fail(l, l->err, l->why);
}

static void tl_finish_close(cw_tunlink_t *l);

static void tl_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    cw_tunlink_t *l = s->data;
    if (l->closing) {
        /* lingering: drop what arrives, finish at the peer's EOF (or an error) */
        if (n < 0)
            tl_finish_close(l);
        return;
    }
    if (n == 0 || l->failed)
        return;
    if (n < 0) {
        if (n == UV_EOF)
            tl_fail(l, UV_EOF,
                    l->tls && !l->tls_up
                        ? "connection closed during the TLS handshake (is the other "
                          "end speaking TLS on this port?)"
                        : "connection closed by peer");
        else
            tl_fail(l, (int)n, uv_strerror((int)n));
        return;
    }
    l->bytes_in += (size_t)n;
    l->last_rx = uv_now(s->loop);
    if (l->tls)
        tl_process_tls(l, (const uint8_t *)buf->base, (size_t)n);
    else
        l->cb->on_data(l, (uint8_t *)buf->base, (size_t)n);
}

int cw_tunlink_init(uv_loop_t *loop, cw_tunlink_t *l, const cw_tunlink_callbacks_t *cb, void *data)
{
    memset(l, 0, sizeof *l);
    l->cb = cb;
    l->data = data;
    int rc = uv_tcp_init(loop, &l->tcp);
    l->tcp.data = l;
    l->creq.data = l;
    return rc;
}

uv_tcp_t *cw_tunlink_tcp(cw_tunlink_t *l)
{
    return &l->tcp;
}

int cw_tunlink_start(cw_tunlink_t *l, struct ssl_ctx_st *tls_ctx, bool server, const char *host,
                     uint64_t dead_timeout_ms)
{
    uv_tcp_nodelay(&l->tcp, 1);
    uv_tcp_keepalive(&l->tcp, 1, 30);
#ifdef TCP_USER_TIMEOUT
    uv_os_fd_t fd;
    if (dead_timeout_ms && uv_fileno((uv_handle_t *)&l->tcp, &fd) == 0) {
        /* 1 s behind the owner's dead-link timer, which names the cause */
        uint64_t want = dead_timeout_ms + 1000;
        unsigned int ms = want > UINT_MAX ? UINT_MAX : (unsigned int)want;
        setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &ms, sizeof ms);
    }
#endif
    l->last_rx = uv_now(l->tcp.loop);
    if (tls_ctx) {
        l->tls = cw_tls_new(tls_ctx, server, host);
        if (l->tls == NULL)
            return -ENOMEM;
    }
    int rc = uv_read_start((uv_stream_t *)&l->tcp, tl_alloc, tl_read);
    if (rc < 0)
        return rc;
    l->reading = true;
    if (l->tls == NULL) {
        l->cb->on_ready(l);
        return 0;
    }
    if (!server) {
        rc = cw_tls_handshake(l->tls); /* the ClientHello */
        if (rc < 0)
            return CW_ETLS;
        return tl_flush_tls(l);
    }
    return 0;
}

void cw_tunlink_pause(cw_tunlink_t *l, bool pause)
{
    if (l->closing || l->failed || pause == l->paused)
        return;
    l->paused = pause;
    if (pause) {
        uv_read_stop((uv_stream_t *)&l->tcp);
        l->reading = false;
        return;
    }
    l->last_rx = uv_now(l->tcp.loop);
    if (uv_read_start((uv_stream_t *)&l->tcp, tl_alloc, tl_read) == 0)
        l->reading = true;
    /* plaintext TLS already decrypted but not handed out */
    if (l->tls && l->tls_up)
        tl_process_tls(l, NULL, 0);
}

static void tl_closed(uv_handle_t *h)
{
    cw_tunlink_t *l = h->data;
    if (--l->close_pending > 0)
        return;
    free(l->linger);
    l->linger = NULL;
    cw_tls_free(l->tls);
    l->tls = NULL;
    l->cb->on_closed(l);
}

/* Close the handles (once); on_closed follows when both are closed. */
static void tl_finish_close(cw_tunlink_t *l)
{
    if (uv_is_closing((uv_handle_t *)&l->tcp))
        return;
    l->close_pending = 1;
    if (l->linger) {
        l->close_pending++;
        uv_close((uv_handle_t *)l->linger, tl_closed);
    }
    uv_close((uv_handle_t *)&l->tcp, tl_closed);
}

static void tl_linger_cb(uv_timer_t *h)
{
    tl_finish_close(h->data);
}

static void tl_shutdown_cb(uv_shutdown_t *req, int status)
{
    cw_tunlink_t *l = req->data;
    free(req);
    if (status < 0)
        tl_finish_close(l); /* the FIN did not go: nothing to wait for */
}

void cw_tunlink_close(cw_tunlink_t *l, bool graceful)
{
    if (l->closing)
        return;
    l->closing = true;
    if (graceful && !l->failed && uv_is_writable((uv_stream_t *)&l->tcp)) {
        uv_shutdown_t *req = malloc(sizeof *req);
        uv_timer_t *timer = malloc(sizeof *timer);
        if (req && timer && uv_timer_init(l->tcp.loop, timer) == 0) {
            l->linger = timer;
            timer->data = l;
            req->data = l;
            uv_timer_start(timer, tl_linger_cb, CW_TUNLINK_LINGER_MS, 0);
            if (uv_shutdown(req, (uv_stream_t *)&l->tcp, tl_shutdown_cb) == 0) {
                /* read (and drop) until the peer's EOF, also when we had paused */
                uv_read_start((uv_stream_t *)&l->tcp, tl_alloc, tl_read);
                return;
            }
            free(req);
            tl_finish_close(l);
            return;
        }
        free(req);
        free(timer);
    }
    uv_read_stop((uv_stream_t *)&l->tcp);
    tl_finish_close(l);
}

void cw_tunlink_peer(const cw_tunlink_t *l, char *buf, size_t len)
{
    struct sockaddr_storage ss;
    int sl = sizeof ss;
    snprintf(buf, len, "?");
    if (uv_tcp_getpeername(&l->tcp, (struct sockaddr *)&ss, &sl) != 0)
        return;
    char ip[INET6_ADDRSTRLEN] = "?";
    if (ss.ss_family == AF_INET) {
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;
        uv_ip4_name(a, ip, sizeof ip);
        snprintf(buf, len, "%s:%d", ip, ntohs(a->sin_port));
    } else if (ss.ss_family == AF_INET6) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
        uv_ip6_name(a, ip, sizeof ip);
        snprintf(buf, len, "[%s]:%d", ip, ntohs(a->sin6_port));
    }
}

const char *cw_tunlink_tls_error(const cw_tunlink_t *l)
{
    return l->tls ? cw_tls_error(l->tls) : "no TLS";
}
