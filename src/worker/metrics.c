/* A tiny HTTP/1.1 endpoint for health checks and Prometheus: GET /healthz
 * answers 200 when attached to the master (503 otherwise), GET /metrics the
 * counters in the text exposition format.  One request per connection,
 * bounded head size, 5 s to send it, at most 16 clients at once. */
#include "metrics.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "cworker/http.h"
#include "log.h"
#include "options.h"

#define METRICS_MAX_CLIENTS 16
#define METRICS_TIMEOUT_MS  5000

typedef struct metrics_client {
    uv_tcp_t tcp;
    uv_timer_t timer;
    struct cw_metrics *m;
    struct metrics_client *next;
    cw_http_head_t head;
    int closing;
    bool answered;
    bool head_only; /* a HEAD request: the headers of the GET answer, no body */
} metrics_client_t;

struct cw_metrics {
    cw_metrics_read_cb read;
    void *ctx;
    uv_tcp_t server;
    metrics_client_t *clients;
    int nclients;     /* in the list, closing or not */
    int nclosing;     /* of which being closed */
    bool server_gone; /* the listening handle is closed: the last one out frees m */
};

static void client_closed(uv_handle_t *h)
{
    metrics_client_t *c = h->data;
    if (--c->closing > 0)
        return;
    struct cw_metrics *m = c->m;
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

/* Send a whole response and close. */
static void client_respond(metrics_client_t *c, int status, const char *reason, const char *ctype,
                           const char *body)
{
    c->answered = true;
    cw_buf_t b = CW_BUF_INIT;
    cw_buf_printf(&b,
                  "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                  "Connection: close\r\n\r\n%s",
                  status, reason, ctype, strlen(body), c->head_only ? "" : body);
    uv_write_t *req = malloc(sizeof *req + b.len);
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

/* The Prometheus text for the current counters. */
static void metrics_text(const cw_metrics_snapshot_t *v, cw_buf_t *b)
{
    cw_buf_printf(b,
                  "# HELP cworker_connected 1 when attached to the master.\n"
                  "# TYPE cworker_connected gauge\ncworker_connected %d\n"
                  "# HELP cworker_connects_total WebSocket connections opened to the master.\n"
                  "# TYPE cworker_connects_total counter\ncworker_connects_total %llu\n"
                  "# HELP cworker_reconnects_total Connections opened after the first one.\n"
                  "# TYPE cworker_reconnects_total counter\ncworker_reconnects_total %llu\n"
                  "# HELP cworker_commands_total Commands started.\n"
                  "# TYPE cworker_commands_total counter\ncworker_commands_total %llu\n"
                  "# HELP cworker_commands_failed_total Commands that ended with rc != 0 or a "
                  "failure.\n"
                  "# TYPE cworker_commands_failed_total counter\n"
                  "cworker_commands_failed_total %llu\n"
                  "# HELP cworker_commands_running Commands running now.\n"
                  "# TYPE cworker_commands_running gauge\ncworker_commands_running %zu\n"
                  "# HELP cworker_output_bytes_total Bytes of command output sent.\n"
                  "# TYPE cworker_output_bytes_total counter\ncworker_output_bytes_total %llu\n"
                  "# HELP cworker_transfer_bytes_total Bytes of file transfers (both ways).\n"
                  "# TYPE cworker_transfer_bytes_total counter\n"
                  "cworker_transfer_bytes_total %llu\n"
                  "# HELP cworker_last_attach_timestamp_seconds Unix time of the last attach.\n"
                  "# TYPE cworker_last_attach_timestamp_seconds gauge\n"
                  "cworker_last_attach_timestamp_seconds %.3f\n"
                  "# HELP cworker_processes Child processes not yet reaped.\n"
                  "# TYPE cworker_processes gauge\ncworker_processes %u\n",
                  v->attached ? 1 : 0, (unsigned long long)v->connects,
                  (unsigned long long)(v->connects ? v->connects - 1 : 0),
                  (unsigned long long)v->commands, (unsigned long long)v->commands_failed,
                  v->commands_running, (unsigned long long)v->output_bytes,
                  (unsigned long long)v->transfer_bytes, v->last_attach, v->processes);
    if (v->relay)
        cw_buf_printf(b,
                      "# HELP cworker_relay_link_up 1 while the tunnel to cworker-relay has its "
                      "link (0 during an outage, and while not connected).\n"
                      "# TYPE cworker_relay_link_up gauge\ncworker_relay_link_up %d\n"
                      "# HELP cworker_relay_resumes_total Outages of the tunnel's link it resumed "
                      "from.\n"
                      "# TYPE cworker_relay_resumes_total counter\n"
                      "cworker_relay_resumes_total %llu\n",
                      v->relay_link_up ? 1 : 0, (unsigned long long)v->relay_resumes);
}

static void client_request(metrics_client_t *c)
{
    cw_metrics_snapshot_t v = {0};
    c->m->read(c->m->ctx, &v);
    cw_http_head_t *h = &c->head;
    if (strcmp(h->method, "GET") != 0 && strcmp(h->method, "HEAD") != 0) {
        client_respond(c, 405, "Method Not Allowed", "text/plain", "GET only\n");
        return;
    }
    c->head_only = strcmp(h->method, "HEAD") == 0;
    /* the path without a query string */
    size_t plen = strcspn(h->target, "?");
    if (plen == 8 && strncmp(h->target, "/healthz", 8) == 0) {
        if (v.attached)
            client_respond(c, 200, "OK", "text/plain", "ok: attached to the master\n");
        else
            client_respond(c, 503, "Service Unavailable", "text/plain",
                           "not attached to the master\n");
    } else if (plen == 8 && strncmp(h->target, "/metrics", 8) == 0) {
        cw_buf_t b = CW_BUF_INIT;
        metrics_text(&v, &b);
        cw_buf_append(&b, "", 1);
        client_respond(c, 200, "OK", "text/plain; version=0.0.4", (const char *)b.data);
        cw_buf_free(&b);
    } else {
        client_respond(c, 404, "Not Found", "text/plain", "try /healthz or /metrics\n");
    }
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
        client_respond(c, 400, "Bad Request", "text/plain", "bad request\n");
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
    struct cw_metrics *m = server->data;
    if (status < 0)
        return;
    metrics_client_t *c = calloc(1, sizeof *c);
    if (c == NULL)
        return;
    c->m = m;
    uv_tcp_init(server->loop, &c->tcp);
    uv_timer_init(server->loop, &c->timer);
    c->tcp.data = c->timer.data = c;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) < 0) {
        c->next = m->clients;
        m->clients = c;
        m->nclients++;
        client_close(c);
        return;
    }
    /* Full: make room by dropping the client that has been waiting longest
     * without finishing its request (the list is newest first), so clients
     * that connect and send nothing cannot lock out the health checker. */
    if (m->nclients - m->nclosing >= METRICS_MAX_CLIENTS) {
        metrics_client_t *oldest = NULL;
        for (metrics_client_t *o = m->clients; o; o = o->next)
            if (!o->closing && !o->answered)
                oldest = o;
        if (oldest)
            client_close(oldest);
    }
    c->next = m->clients;
    m->clients = c;
    m->nclients++;
    if (m->nclients - m->nclosing > METRICS_MAX_CLIENTS) {
        client_close(c); /* all slots are answers still being written */
        return;
    }
    cw_http_head_init(&c->head, true);
    uv_timer_start(&c->timer, client_timeout, METRICS_TIMEOUT_MS, 0);
    uv_read_start((uv_stream_t *)&c->tcp, client_alloc, client_read);
}

/* libuv finishes closes in no particular order: m goes when both the server
 * and every client are closed. */
static void server_closed(uv_handle_t *h)
{
    struct cw_metrics *m = h->data;
    m->server_gone = true;
    if (m->nclients == 0)
        free(m);
}

int cw_metrics_start(uv_loop_t *loop, const char *listen, cw_metrics_read_cb read, void *ctx,
                     cw_metrics_t **out)
{
    char *host = NULL;
    int port = 0;
    if (cw_hostport_parse(listen, &host, &port) < 0) {
        cw_error("--metrics-listen '%s' is not IP:PORT", listen);
        return -EINVAL;
    }
    struct cw_metrics *m = calloc(1, sizeof *m);
    if (m == NULL) {
        free(host);
        return -ENOMEM;
    }
    m->read = read;
    m->ctx = ctx;
    struct sockaddr_storage ss;
    int rc = strchr(host, ':') ? uv_ip6_addr(host, port, (struct sockaddr_in6 *)&ss)
                               : uv_ip4_addr(host, port, (struct sockaddr_in *)&ss);
    uv_tcp_init(loop, &m->server);
    m->server.data = m;
    if (rc == 0)
        rc = uv_tcp_bind(&m->server, (struct sockaddr *)&ss, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&m->server, 16, on_connection);
    if (rc < 0) {
        cw_error("cannot listen for metrics on %s: %s", listen, uv_strerror(rc));
        uv_close((uv_handle_t *)&m->server, server_closed); /* frees m */
        free(host);
        return rc;
    }
    cw_info("metrics on http://%s/metrics and /healthz", listen);
    *out = m;
    free(host);
    return 0;
}

void cw_metrics_stop(cw_metrics_t *m)
{
    if (m == NULL)
        return;
    for (metrics_client_t *c = m->clients; c; c = c->next)
        client_close(c);
    uv_close((uv_handle_t *)&m->server, server_closed);
}
