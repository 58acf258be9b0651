/* Loop-test helpers: stand-in master and fault proxy (see loop_util.h). */
#include "loop_util.h"

#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

uint8_t tl_byte(uint64_t pos, unsigned salt)
{
    uint64_t x = pos * 0x9E3779B97F4A7C15u + salt;
    x ^= x >> 29;
    return (uint8_t)(x * 0xBF58476D1CE4E5B9u >> 56);
}

uint64_t tl_check(const uint8_t *data, size_t len, uint64_t pos, unsigned salt)
{
    for (size_t i = 0; i < len; i++)
        if (data[i] != tl_byte(pos + i, salt))
            return pos + i;
    return UINT64_MAX;
}

static int bound_port(uv_tcp_t *t)
{
    struct sockaddr_in a;
    int len = sizeof a;
    if (uv_tcp_getsockname(t, (struct sockaddr *)&a, &len) != 0)
        return -1;
    return ntohs(a.sin_port);
}

int tl_dead_port(void)
{
    /* bind without listening: connecting gets ECONNREFUSED */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, len) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) != 0)
        abort();
    int port = ntohs(a.sin_port);
    close(fd);
    return port;
}

/* ---- master ------------------------------------------------------------- */

struct tm_conn {
    uv_tcp_t tcp;
    test_master_t *m;
    tm_conn_t *next;
    uint64_t rx, tx; /* stream positions */
    size_t queued;
    bool eof, shut, shut_done, closing, reading, held;
};

typedef struct tm_wreq {
    uv_write_t req;
    tm_conn_t *c;
    size_t len;
    uint8_t data[];
} tm_wreq_t;

static void tm_conn_closed(uv_handle_t *h)
{
    tm_conn_t *c = h->data;
    test_master_t *m = c->m;
    for (tm_conn_t **pp = &m->conns; *pp; pp = &(*pp)->next)
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    m->closed++;
    m->last_close_ms = uv_now(m->loop);
    free(c);
}

static void tm_conn_close(tm_conn_t *c)
{
    if (c->closing)
        return;
    c->closing = true;
    uv_close((uv_handle_t *)&c->tcp, tm_conn_closed);
}

static void tm_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf);

static void tm_alloc(uv_handle_t *h, size_t sug, uv_buf_t *b)
{
    static char rb[65536];
    b->base = rb;
    b->len = sizeof rb;
}

static void tm_set_reading(tm_conn_t *c)
{
    bool want = !c->m->paused && !c->held && !c->eof && !c->closing;
    if (want == c->reading)
        return;
    c->reading = want;
    if (want)
        uv_read_start((uv_stream_t *)&c->tcp, tm_alloc, tm_read);
    else
        uv_read_stop((uv_stream_t *)&c->tcp);
}

static void tm_shutdown_cb(uv_shutdown_t *req, int status)
{
    tm_conn_t *c = req->data;
    free(req);
    c->shut_done = true; /* every byte we wrote is with the kernel */
    if (c->eof)
        tm_conn_close(c);
}

static void tm_shutdown(tm_conn_t *c)
{
    if (c->shut || c->closing)
        return;
    c->shut = true;
    uv_shutdown_t *req = malloc(sizeof *req);
    req->data = c;
    if (uv_shutdown(req, (uv_stream_t *)&c->tcp, tm_shutdown_cb) != 0) {
        free(req);
        tm_conn_close(c);
    }
}

static void tm_pump_source(tm_conn_t *c);

static void tm_write_cb(uv_write_t *req, int status)
{
    tm_wreq_t *w = (tm_wreq_t *)req;
    tm_conn_t *c = w->c;
    c->queued -= w->len;
    free(w);
    if (status < 0 || c->closing)
        return;
    if (c->held && c->queued < (256u << 10)) {
        c->held = false;
        tm_set_reading(c);
    }
    if (c->m->mode == TM_SOURCE)
        tm_pump_source(c);
}

static void tm_write(tm_conn_t *c, const uint8_t *data, size_t len)
{
    tm_wreq_t *w = malloc(sizeof *w + len);
    memcpy(w->data, data, len);
    w->c = c;
    w->len = len;
    uv_buf_t b = uv_buf_init((char *)w->data, (unsigned)len);
    if (uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, tm_write_cb) != 0) {
        free(w);
        return;
    }
    c->queued += len;
    if (c->queued > c->m->max_queue)
        c->m->max_queue = c->queued;
}

/* Source: keep ~1 MiB queued until the whole stream is written, then FIN. */
static void tm_pump_source(tm_conn_t *c)
{
    static uint8_t chunk[65536];
    test_master_t *m = c->m;
    while (!c->closing && c->tx < m->source_len && c->queued < (1u << 20)) {
        size_t n = sizeof chunk;
        if (n > m->source_len - c->tx)
            n = (size_t)(m->source_len - c->tx);
        for (size_t i = 0; i < n; i++)
            chunk[i] = tl_byte(c->tx + i, 2);
        tm_write(c, chunk, n);
        c->tx += n;
    }
    if (c->tx == m->source_len)
        tm_shutdown(c);
}

static void tm_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    tm_conn_t *c = s->data;
    test_master_t *m = c->m;
    if (n == 0)
        return;
    if (n < 0) {
        m->eofs++;
        c->eof = true;
        tm_set_reading(c);
        /* close only when our own writes are done (a close cancels queued writes) */
        if (n != UV_EOF || m->mode == TM_SINK || c->shut_done)
            tm_conn_close(c);
        else if (m->mode == TM_ECHO)
            tm_shutdown(c); /* after the echoed bytes */
        return;
    }
    const uint8_t *p = (const uint8_t *)buf->base;
    m->received += (uint64_t)n;
    if (m->mode == TM_ECHO) {
        tm_write(c, p, (size_t)n);
        if (c->queued >= (1u << 20)) {
            c->held = true; /* the relay reads slowly: stop echoing */
            tm_set_reading(c);
        }
    } else {
        uint64_t bad = tl_check(p, (size_t)n, c->rx, 1);
        if (bad != UINT64_MAX && m->bad_at == UINT64_MAX)
            m->bad_at = bad;
    }
    c->rx += (uint64_t)n;
}

static void tm_on_conn(uv_stream_t *server, int status)
{
    test_master_t *m = server->data;
    if (status < 0)
        return;
    tm_conn_t *c = calloc(1, sizeof *c);
    c->m = m;
    uv_tcp_init(m->loop, &c->tcp);
    c->tcp.data = c;
    c->next = m->conns;
    m->conns = c;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0) {
        tm_conn_close(c);
        return;
    }
    m->accepted++;
    tm_set_reading(c);
    if (m->mode == TM_SOURCE)
        tm_pump_source(c);
}

int tm_start(test_master_t *m, uv_loop_t *loop, tm_mode_t mode)
{
    memset(m, 0, sizeof *m);
    m->loop = loop;
    m->mode = mode;
    m->bad_at = UINT64_MAX;
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", 0, &a);
    uv_tcp_init(loop, &m->server);
    m->server.data = m;
    int rc = uv_tcp_bind(&m->server, (struct sockaddr *)&a, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&m->server, 128, tm_on_conn);
    m->port = bound_port(&m->server);
    return rc;
}

void tm_pause(test_master_t *m, bool pause)
{
    m->paused = pause;
    for (tm_conn_t *c = m->conns; c; c = c->next)
        tm_set_reading(c);
}

void tm_stop(test_master_t *m)
{
    for (tm_conn_t *c = m->conns; c; c = c->next)
        tm_conn_close(c);
    if (!uv_is_closing((uv_handle_t *)&m->server))
        uv_close((uv_handle_t *)&m->server, NULL);
}

/* ---- proxy ---------------------------------------------------------------- */

struct tp_pair {
    test_proxy_t *p;
    tp_pair_t *next;
    uv_tcp_t down, up; /* down: the client side; up: towards the relay */
    uv_connect_t creq;
    int open;
    bool up_connected, dead;
};

typedef struct tp_wreq {
    uv_write_t req;
    uint8_t data[];
} tp_wreq_t;

static void tp_pair_closed(uv_handle_t *h)
{
    tp_pair_t *pr = h->data;
    if (--pr->open > 0)
        return;
    test_proxy_t *p = pr->p;
    for (tp_pair_t **pp = &p->pairs; *pp; pp = &(*pp)->next)
        if (*pp == pr) {
            *pp = pr->next;
            break;
        }
    p->open_pairs--;
    free(pr);
}

static void tp_kill(tp_pair_t *pr, bool rst)
{
    if (pr->dead)
        return;
    pr->dead = true;
    if (rst) {
        if (uv_tcp_close_reset(&pr->down, tp_pair_closed) != 0)
            uv_close((uv_handle_t *)&pr->down, tp_pair_closed);
        if (!pr->up_connected || uv_tcp_close_reset(&pr->up, tp_pair_closed) != 0)
            uv_close((uv_handle_t *)&pr->up, tp_pair_closed);
    } else {
        uv_close((uv_handle_t *)&pr->down, tp_pair_closed);
        uv_close((uv_handle_t *)&pr->up, tp_pair_closed);
    }
}

static void tp_write_cb(uv_write_t *req, int status)
{
    free(req);
}

static void tp_alloc(uv_handle_t *h, size_t sug, uv_buf_t *b)
{
    static char rb[65536];
    b->base = rb;
    b->len = sizeof rb;
}

static void tp_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    tp_pair_t *pr = s->data;
    test_proxy_t *p = pr->p;
    if (n == 0 || pr->dead)
        return;
    if (n < 0) {
        tp_kill(pr, n != UV_EOF);
        return;
    }
    uv_tcp_t *to = s == (uv_stream_t *)&pr->down ? &pr->up : &pr->down;
    size_t len = (size_t)n;
    bool cut = false;
    if (p->cut_at && p->forwarded + len >= p->cut_at) {
        len = (size_t)(p->cut_at - p->forwarded); /* a cut in the middle of a frame */
        cut = true;
    }
    if (len) {
        tp_wreq_t *w = malloc(sizeof *w + len);
        memcpy(w->data, buf->base, len);
        uv_buf_t b = uv_buf_init((char *)w->data, (unsigned)len);
        if (uv_write(&w->req, (uv_stream_t *)to, &b, 1, tp_write_cb) != 0)
            free(w);
        p->forwarded += len;
    }
    if (cut) {
        p->cut_at = 0;
        tp_cut(p, p->cut_rst);
        if (p->cuts_left > 0) {
            p->cuts_left--;
            p->seed = p->seed * 6364136223846793005u + 1442695040888963407u;
            p->cut_at = p->forwarded + 1 + (p->seed >> 11) % p->cut_gap_max;
            p->cut_rst = !p->cut_rst;
        }
    }
}

static void tp_set_reading(tp_pair_t *pr)
{
    if (pr->dead || !pr->up_connected)
        return;
    if (pr->p->blackhole) {
        uv_read_stop((uv_stream_t *)&pr->down);
        uv_read_stop((uv_stream_t *)&pr->up);
    } else {
        uv_read_start((uv_stream_t *)&pr->down, tp_alloc, tp_read);
        uv_read_start((uv_stream_t *)&pr->up, tp_alloc, tp_read);
    }
}

static void tp_connected(uv_connect_t *req, int status)
{
    tp_pair_t *pr = req->data;
    if (pr->dead)
        return;
    if (status < 0) {
        tp_kill(pr, true);
        return;
    }
    pr->up_connected = true;
    tp_set_reading(pr);
}

static void tp_on_conn(uv_stream_t *server, int status)
{
    test_proxy_t *p = server->data;
    if (status < 0)
        return;
    tp_pair_t *pr = calloc(1, sizeof *pr);
    pr->p = p;
    uv_tcp_init(p->loop, &pr->down);
    uv_tcp_init(p->loop, &pr->up);
    pr->down.data = pr->up.data = pr->creq.data = pr;
    pr->open = 2;
    pr->next = p->pairs;
    p->pairs = pr;
    p->open_pairs++;
    if (uv_accept(server, (uv_stream_t *)&pr->down) != 0 || p->refuse) {
        tp_kill(pr, true);
        return;
    }
    p->accepted++;
    if (uv_tcp_connect(&pr->creq, &pr->up, (struct sockaddr *)&p->upstream, tp_connected) != 0)
        tp_kill(pr, true);
}

int tp_start(test_proxy_t *p, uv_loop_t *loop, int upstream_port)
{
    memset(p, 0, sizeof *p);
    p->loop = loop;
    uv_ip4_addr("127.0.0.1", upstream_port, &p->upstream);
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", 0, &a);
    uv_tcp_init(loop, &p->server);
    p->server.data = p;
    int rc = uv_tcp_bind(&p->server, (struct sockaddr *)&a, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&p->server, 128, tp_on_conn);
    p->port = bound_port(&p->server);
    return rc;
}

void tp_cut(test_proxy_t *p, bool rst)
{
    p->cuts++;
    for (tp_pair_t *pr = p->pairs; pr; pr = pr->next)
        tp_kill(pr, rst);
}

void tp_blackhole(test_proxy_t *p, bool on)
{
    p->blackhole = on;
    for (tp_pair_t *pr = p->pairs; pr; pr = pr->next)
        tp_set_reading(pr);
}

void tp_stop(test_proxy_t *p)
{
    for (tp_pair_t *pr = p->pairs; pr; pr = pr->next)
        tp_kill(pr, false);
    if (!uv_is_closing((uv_handle_t *)&p->server))
        uv_close((uv_handle_t *)&p->server, NULL);
}
