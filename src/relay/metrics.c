/* cworker-relay --metrics: GET /healthz (200 while listening, with the
 * session counts) and GET /metrics (Prometheus text).  One request per
 * connection, bounded head size, 5 s to send it, at most 16 clients at once;
 * the shape of src/worker/metrics.c. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "cworker/buf.h"
#include "cworker/http.h"
#include "log.h"
#include "relay.h"

#define METRICS_MAX_CLIENTS 16
#define METRICS_TIMEOUT_MS  5000

typedef struct metrics_client {
    uv_tcp_t tcp;
    uv_timer_t timer;
    struct relay_metrics *m;
    struct metrics_client *next;
    cw_http_head_t head;
    int closing;
    bool answered;
    bool head_only;
} metrics_client_t;

struct relay_metrics {
    relay_t *r;
    uv_tcp_t server;
    metrics_client_t *clients;
    int nclients, nclosing;
    bool server_gone;
};

static void client_closed(uv_handle_t *h)
{
    metrics_client_t *c = h->data;
    if (--c->closing > 0)
        return;
    struct relay_metrics *m = c->m;
    for (metrics_client_t **pp = &m->clients; *pp; pp = &(*pp)->next)
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    m->nclients--;
    m->nclosing--;
    free(c);
    if (m->server_gone && m->nclients == 0)
        free(m);
}

static void client_close(metrics_client_t *c)
{
    if (c->closing)
        return;
    c->closing = 2;
    c->m->nclosing++;
    uv_close((uv_handle_t *)&c->tcp, client_closed);
    uv_close((uv_handle_t *)&c->timer, client_closed);
}

static void write_done(uv_write_t *req, int status)
{
    metrics_client_t *c = req->data;
    free(req); /* the response bytes live in the same block */
    client_close(c);
}

static void client_respond(metrics_client_t *c, int status, const char *reason, const char *body)
{
    c->answered = true;
    cw_buf_t b = CW_BUF_INIT;
    cw_buf_printf(&b,
                  "HTTP/1.1 %d %s\r\nContent-Type: text/plain; version=0.0.4\r\n"
                  "Content-Length: %zu\r\nConnection: close\r\n\r\n%s",
                  status, reason, strlen(body), c->head_only ? "" : body);
    uv_write_t *req = b.data ? malloc(sizeof *req + b.len) : NULL;
    if (req == NULL) {
        cw_buf_free(&b);
        client_close(c);
        return;
    }
    memcpy(req + 1, b.data, b.len);
    uv_buf_t ub = uv_buf_init((char *)(req + 1), (unsigned)b.len);
    cw_buf_free(&b);
    req->data = c;
    uv_read_stop((uv_stream_t *)&c->tcp);
    if (uv_write(req, (uv_stream_t *)&c->tcp, &ub, 1, write_done) < 0) {
        free(req);
        client_close(c);
    }
}

/* The Prometheus text for the relay's counters. */
static void metrics_text(const relay_t *r, cw_buf_t *b)
{
    cw_buf_printf(b,
                  "# HELP cworker_relay_sessions Sessions held (with or without a worker link).\n"
                  "# TYPE cworker_relay_sessions gauge\ncworker_relay_sessions %u\n"
                  "# HELP cworker_relay_sessions_detached Sessions waiting for their worker to "
                  "resume.\n"
                  "# TYPE cworker_relay_sessions_detached gauge\n"
                  "cworker_relay_sessions_detached %u\n"
                  "# HELP cworker_relay_sessions_total Sessions opened.\n"
                  "# TYPE cworker_relay_sessions_total counter\ncworker_relay_sessions_total "
                  "%llu\n"
                  "# HELP cworker_relay_resumes_total Sessions resumed on a new link.\n"
                  "# TYPE cworker_relay_resumes_total counter\ncworker_relay_resumes_total %llu\n"
                  "# HELP cworker_relay_expired_total Sessions whose resume window ran out.\n"
                  "# TYPE cworker_relay_expired_total counter\ncworker_relay_expired_total %llu\n"
                  "# HELP cworker_relay_links_total Worker links accepted.\n"
                  "# TYPE cworker_relay_links_total counter\ncworker_relay_links_total %llu\n"
                  "# HELP cworker_relay_bytes_buffered Bytes from masters held until their "
                  "worker acknowledges them.\n"
                  "# TYPE cworker_relay_bytes_buffered gauge\ncworker_relay_bytes_buffered %zu\n"
                  "# HELP cworker_relay_master_reads_paused Sessions not reading their master "
                  "because their replay buffer is full.\n"
                  "# TYPE cworker_relay_master_reads_paused gauge\n"
                  "cworker_relay_master_reads_paused %u\n",
                  r->nsessions, r->ndetached, (unsigned long long)r->sessions_total,
                  (unsigned long long)r->resumes_total, (unsigned long long)r->expired_total,
                  (unsigned long long)r->links_total, relay_bytes_buffered(r),
                  relay_masters_paused(r));
    uint64_t to = r->bytes_to_master, from = r->bytes_from_master;
    for (unsigned i = 0; i < RELAY_BUCKETS; i++)
        for (const session_t *s = r->buckets[i]; s; s = s->next) {
            to += s->bytes_to_master;
            from += s->bytes_from_master;
        }
    cw_buf_printf(b,
                  "# HELP cworker_relay_bytes_to_master_total Stream bytes carried to masters.\n"
                  "# TYPE cworker_relay_bytes_to_master_total counter\n"
                  "cworker_relay_bytes_to_master_total %llu\n"
                  "# HELP cworker_relay_bytes_from_master_total Stream bytes read from masters.\n"
                  "# TYPE cworker_relay_bytes_from_master_total counter\n"
                  "cworker_relay_bytes_from_master_total %llu\n"
                  "# HELP cworker_relay_refusals_total HELLOs refused, by reason.\n"
                  "# TYPE cworker_relay_refusals_total counter\n",
                  (unsigned long long)to, (unsigned long long)from);
    for (int i = 1; i <= CW_TUN_R_ENDED; i++) {
        /* reason names as labels: lower case, '_' for spaces */
        char label[48];
        const char *n = cw_tun_reason_str(i);
        size_t k = 0;
        for (; n[k] && k + 1 < sizeof label; k++)
            label[k] = n[k] == ' ' ? '_' : n[k];
        label[k] = '\0';
        cw_buf_printf(b, "cworker_relay_refusals_total{reason=\"%s\"} %llu\n", label,
                      (unsigned long long)r->refusals[i]);
    }
}

static void client_request(metrics_client_t *c)
{
    const relay_t *r = c->m->r;
    cw_http_head_t *h = &c->head;
    if (strcmp(h->method, "GET") != 0 && strcmp(h->method, "HEAD") != 0) {
        client_respond(c, 405, "Method Not Allowed", "GET only\n");
        return;
    }
    c->head_only = strcmp(h->method, "HEAD") == 0;
    size_t plen = strcspn(h->target, "?");
    cw_buf_t b = CW_BUF_INIT;
    if (plen == 8 && strncmp(h->target, "/healthz", 8) == 0) {
        cw_buf_printf(&b, "ok: %u sessions, %u waiting for their worker\n", r->nsessions,
                      r->ndetached);
        cw_buf_append(&b, "", 1);
        client_respond(c, 200, "OK", b.data ? (const char *)b.data : "ok\n");
    } else if (plen == 8 && strncmp(h->target, "/metrics", 8) == 0) {
        metrics_text(r, &b);
        cw_buf_append(&b, "", 1);
        client_respond(c, 200, "OK", b.data ? (const char *)b.data : "");
    } else {
        client_respond(c, 404, "Not Found", "try /healthz or /metrics\n");
    }
    cw_buf_free(&b);
}

static void client_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    static char rbuf[4096];
    buf->base = rbuf;
    buf->len = sizeof rbuf;
}

static void client_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    metrics_client_t *c = s->data;
    if (n == 0 || c->answered)
        return;
    if (n < 0) {
        client_close(c);
        return;
    }
    size_t used;
    int rc = cw_http_head_feed(&c->head, (const uint8_t *)buf->base, (size_t)n, &used);
    if (rc == CW_HTTP_AGAIN)
        return;
    if (rc < 0) {
        client_respond(c, 400, "Bad Request", "bad request\n");
        return;
    }
    client_request(c);
}

static void client_timeout(uv_timer_t *t)
{
    client_close(t->data);
}

static void on_connection(uv_stream_t *server, int status)
{
    struct relay_metrics *m = server->data;
    if (status < 0)
        return;
    metrics_client_t *c = calloc(1, sizeof *c);
    if (c == NULL)
        return;
    c->m = m;
    uv_tcp_init(server->loop, &c->tcp);
    uv_timer_init(server->loop, &c->timer);
    c->tcp.data = c->timer.data = c;
    c->next = m->clients;
    m->clients = c;
    m->nclients++;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) < 0) {
        client_close(c);
        return;
    }
    /* full: drop the client that has waited longest without a request */
    if (m->nclients - m->nclosing > METRICS_MAX_CLIENTS) {
        metrics_client_t *oldest = NULL;
        for (metrics_client_t *o = m->clients->next; o; o = o->next)
            if (!o->closing && !o->answered)
                oldest = o;
        client_close(oldest ? oldest : c);
        if (!oldest)
            return;
    }
    cw_http_head_init(&c->head, true);
    uv_timer_start(&c->timer, client_timeout, METRICS_TIMEOUT_MS, 0);
    uv_read_start((uv_stream_t *)&c->tcp, client_alloc, client_read);
}

static void server_closed(uv_handle_t *h)
{
    struct relay_metrics *m = h->data;
    m->server_gone = true;
    if (m->nclients == 0)
        free(m);
}

int relay_metrics_start(relay_t *r)
{
    struct sockaddr_storage ss;
    if (relay_parse_addr(r->opt.metrics, &ss) < 0) {
        cw_error("--metrics '%s' is not IP:PORT", r->opt.metrics);
        return -EINVAL;
    }
    struct relay_metrics *m = calloc(1, sizeof *m);
    if (m == NULL)
        return -ENOMEM;
    m->r = r;
    uv_tcp_init(r->loop, &m->server);
    m->server.data = m;
    int rc = uv_tcp_bind(&m->server, (struct sockaddr *)&ss, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&m->server, 16, on_connection);
    if (rc < 0) {
        cw_error("cannot listen for metrics on %s: %s", r->opt.metrics, uv_strerror(rc));
        uv_close((uv_handle_t *)&m->server, server_closed);
        return rc;
    }
    /* the port actually bound (0 picks one) */
    struct sockaddr_storage b;
    int blen = sizeof b;
    char ip[64] = "?";
    int port = 0;
    if (uv_tcp_getsockname(&m->server, (struct sockaddr *)&b, &blen) == 0) {
        if (b.ss_family == AF_INET) {
            uv_ip4_name((struct sockaddr_in *)&b, ip, sizeof ip);
            port = ntohs(((struct sockaddr_in *)&b)->sin_port);
        } else {
            uv_ip6_name((struct sockaddr_in6 *)&b, ip, sizeof ip);
            port = ntohs(((struct sockaddr_in6 *)&b)->sin6_port);
        }
    }
    cw_info("metrics on http://%s:%d/metrics and /healthz", ip, port);
    r->metrics = m;
    return 0;
}

void relay_metrics_stop(relay_t *r)
{
    struct relay_metrics *m = r->metrics;
    if (m == NULL)
        return;
    r->metrics = NULL;
    for (metrics_client_t *c = m->clients; c; c = c->next)
        client_close(c);
    uv_close((uv_handle_t *)&m->server, server_closed);
}
