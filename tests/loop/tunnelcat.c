/* tunnelcat: stdin -> tunnel -> stdout, for tests that drive the tunnel client from outside.
 *
 *   tunnelcat [options] HOST:PORT        copy stdin to the master through the relay, and what
 *                                        the master sends to stdout; FIN after stdin's EOF, exit
 *                                        after the master's EOF
 *   tunnelcat --direct HOST:PORT         the same over plain TCP, no tunnel (the baseline for
 *                                        throughput measurements)
 *   tunnelcat --idle N [options] HOST:PORT
 *                                        open N tunnels that send nothing; "all N open" on stderr
 *                                        when they are; close them all at stdin's EOF
 *
 * Options (times in ms): --buffer BYTES --dead-timeout MS --ping MS --handshake-timeout MS
 * --backoff-max MS --max-outage MS --ca FILE (TLS, verifying the relay against FILE)
 * --tls-host NAME.  stdin and stdout must be pipes, sockets or terminals.
 *
 * Events go to stderr as "tunnelcat: <CLOCK_MONOTONIC ms> <event> ...": open, down, up (with
 * the outage in ms), lost, eof, stats.  Exit: 0 after a complete session, 3 session lost, 4 the
 * session could not be opened, 2 bad usage. */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cworker/cw.h"
#include "log.h"
#include "tls.h"
#include "tunnel.h"

static uv_loop_t *loop;
static uv_pipe_t in_pipe, out_pipe;
static bool in_open, out_open, in_reading, in_eof;
static cw_tunnel_options_t topt;
static const char *host;
static int port;
static int exit_code = 0;
static uint64_t stream_in, stream_out; /* bytes from stdin, to stdout */
static size_t out_queued;

/* idle mode */
static unsigned n_idle;
static cw_tunnel_t *idle;
static unsigned idle_open, idle_closed, idle_failed;

static cw_tunnel_t tun;
static bool tun_eof, shutdown_done, tun_closed_flag;
static int inflight;

static unsigned long long mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (unsigned long long)ts.tv_sec * 1000 + (unsigned long long)ts.tv_nsec / 1000000;
}

#define EVENT(...)                                                                                 \
    do {                                                                                           \
        fprintf(stderr, "tunnelcat: %llu ", mono_ms());                                            \
        fprintf(stderr, __VA_ARGS__);                                                              \
        fputc('\n', stderr);                                                                       \
        fflush(stderr);                                                                            \
    } while (0)

static bool out_closing; /* close stdout once every write to it is done */

static void close_out_if_drained(void)
{
    if (out_open && out_closing && out_queued == 0) {
        out_open = false;
        uv_close((uv_handle_t *)&out_pipe, NULL);
    }
}

/* The end: stdin now, stdout after its queued writes (closing it would cancel them). */
static void close_pipes(void)
{
    if (in_open) {
        in_open = false;
        uv_close((uv_handle_t *)&in_pipe, NULL);
    }
    out_closing = true;
    close_out_if_drained();
}

/* ---- one stream ------------------------------------------------------------- */

typedef struct inreq {
    cw_tunnel_write_t req;
    uv_buf_t buf;
    char data[65536];
} inreq_t;

static void in_alloc(uv_handle_t *h, size_t s, uv_buf_t *b);
static void in_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf);

static void in_set_reading(void)
{
    bool want = in_open && !in_eof && inflight < 16 &&
                cw_tunnel_write_queue_size(&tun) < (1u << 20) &&
                cw_tunnel_state(&tun) < CW_TUNNEL_LOST;
    if (want == in_reading)
        return;
    in_reading = want;
    if (want)
        uv_read_start((uv_stream_t *)&in_pipe, in_alloc, in_read);
    else
        uv_read_stop((uv_stream_t *)&in_pipe);
}

static void maybe_finish(void)
{
    if (tun_eof && shutdown_done)
        cw_tunnel_close(&tun);
}

static void shutdown_cb(cw_tunnel_t *t, int status)
{
    if (status == 0) {
        shutdown_done = true;
        maybe_finish();
    }
}

static void write_cb(cw_tunnel_write_t *req, int status)
{
    free(req->data);
    inflight--;
    if (in_eof && inflight == 0 && status == 0 && !tun.shutdown_pending)
        cw_tunnel_shutdown(&tun, shutdown_cb);
    in_set_reading();
}

/* stdin's buffers are whole write requests: no copy between stdin and the tunnel */
static void in_alloc(uv_handle_t *h, size_t s, uv_buf_t *b)
{
    inreq_t *r = malloc(sizeof *r);
    b->base = r ? r->data : NULL;
    b->len = r ? sizeof r->data : 0;
}

static void in_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    inreq_t *r = buf->base ? (inreq_t *)(buf->base - offsetof(inreq_t, data)) : NULL;
    if (n <= 0) {
        free(r);
        if (n == 0)
            return;
        in_eof = true;
        in_set_reading();
        if (inflight == 0 && cw_tunnel_state(&tun) < CW_TUNNEL_LOST)
            cw_tunnel_shutdown(&tun, shutdown_cb);
        return;
    }
    stream_in += (uint64_t)n;
    r->buf = uv_buf_init(r->data, (unsigned)n);
    r->req.data = r;
    if (cw_tunnel_write(&r->req, &tun, &r->buf, 1, write_cb) != 0) {
        free(r);
        return;
    }
    inflight++;
    in_set_reading();
}

typedef struct outreq {
    uv_write_t req;
    size_t len;
    char data[];
} outreq_t;

static void out_write_cb(uv_write_t *req, int status)
{
    outreq_t *o = (outreq_t *)req;
    out_queued -= o->len;
    free(o);
    close_out_if_drained();
    if (out_queued < (256u << 10) && !tun_closed_flag && cw_tunnel_state(&tun) < CW_TUNNEL_CLOSING)
        cw_tunnel_read_start(&tun);
}

static void on_read(cw_tunnel_t *t, uint8_t *data, size_t len)
{
    stream_out += len;
    outreq_t *o = malloc(sizeof *o + len);
    if (o == NULL)
        abort();
    memcpy(o->data, data, len);
    o->len = len;
    uv_buf_t b = uv_buf_init(o->data, (unsigned)len);
    if (uv_write(&o->req, (uv_stream_t *)&out_pipe, &b, 1, out_write_cb) != 0) {
        free(o);
        return;
    }
    out_queued += len;
    if (out_queued >= (1u << 20))
        cw_tunnel_read_stop(t); /* stdout is slow: the relay's buffer takes the rest */
}

static void on_open(cw_tunnel_t *t, int status, const char *why)
{
    if (status < 0) {
        EVENT("open-failed %s", why);
        exit_code = 4;
        cw_tunnel_close(t);
        return;
    }
    EVENT("open session=%016llx", (unsigned long long)t->core.id);
    in_set_reading();
}

static void on_eof(cw_tunnel_t *t)
{
    EVENT("eof bytes=%llu", (unsigned long long)stream_out);
    tun_eof = true;
    maybe_finish();
}

static void on_lost(cw_tunnel_t *t, int err, const char *why)
{
    EVENT("lost %s", why);
    exit_code = 3;
    cw_tunnel_close(t);
}

static void on_link(cw_tunnel_t *t, bool up, const char *why)
{
    if (up)
        EVENT("up outage_ms=%llu", (unsigned long long)t->last_down_ms);
    else
        EVENT("down %s", why);
}

static void on_closed(cw_tunnel_t *t)
{
    tun_closed_flag = true;
    EVENT("stats stream_in=%llu stream_out=%llu wire_out=%llu wire_in=%llu resumes=%llu "
          "links=%llu",
          (unsigned long long)stream_in, (unsigned long long)stream_out,
          (unsigned long long)t->bytes_out, (unsigned long long)t->bytes_in,
          (unsigned long long)t->resumes, (unsigned long long)t->links);
    if (exit_code == 0 && !(tun_eof && shutdown_done))
        exit_code = 3;
    close_pipes();
}

static const cw_tunnel_callbacks_t callbacks = {on_open, on_read, on_eof,
                                                on_lost, on_link, on_closed};

/* ---- idle tunnels ------------------------------------------------------------ */

static void idle_on_open(cw_tunnel_t *t, int status, const char *why)
{
    if (status < 0) {
        idle_failed++;
        EVENT("open-failed %s", why);
        exit_code = 4;
        cw_tunnel_close(t);
        return;
    }
    if (++idle_open == n_idle)
        EVENT("all %u open", n_idle);
}

static void idle_on_read(cw_tunnel_t *t, uint8_t *data, size_t len)
{
}

static void idle_on_eof(cw_tunnel_t *t)
{
}

static void idle_on_lost(cw_tunnel_t *t, int err, const char *why)
{
    EVENT("lost %s", why);
    exit_code = 3;
    cw_tunnel_close(t);
}

static void idle_on_closed(cw_tunnel_t *t)
{
    if (++idle_closed == n_idle) {
        EVENT("all closed");
        close_pipes();
    }
}

static const cw_tunnel_callbacks_t idle_callbacks = {idle_on_open, idle_on_read, idle_on_eof,
                                                     idle_on_lost, NULL,         idle_on_closed};

static void idle_in_alloc(uv_handle_t *h, size_t s, uv_buf_t *b)
{
    static char rb[256];
    b->base = rb;
    b->len = sizeof rb;
}

static void idle_in_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    if (n >= 0)
        return;
    uv_read_stop(s);
    for (unsigned i = 0; i < n_idle; i++)
        cw_tunnel_close(&idle[i]);
}

/* ---- direct TCP (baseline) --------------------------------------------------------- */

static uv_tcp_t dtcp;
static uv_connect_t dconn;
static bool d_in_reading, d_eof_sent, d_reading;

static void d_in_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf);
static void d_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf);

/* stdin is read while the socket's send queue is short */
static void d_in_set_reading(void)
{
    bool want =
        in_open && !in_eof && uv_stream_get_write_queue_size((uv_stream_t *)&dtcp) < (1u << 20);
    if (want == d_in_reading)
        return;
    d_in_reading = want;
    if (want)
        uv_read_start((uv_stream_t *)&in_pipe, in_alloc, d_in_read);
    else
        uv_read_stop((uv_stream_t *)&in_pipe);
}

static void d_shutdown_cb(uv_shutdown_t *req, int status)
{
    free(req);
}

static void d_write_cb(uv_write_t *req, int status)
{
    free(req->data); /* the inreq_t holding the bytes */
    free(req);
    d_in_set_reading();
}

static void d_in_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    inreq_t *r = buf->base ? (inreq_t *)(buf->base - offsetof(inreq_t, data)) : NULL;
    if (n <= 0) {
        free(r);
        if (n == 0)
            return;
        in_eof = true;
        d_in_set_reading();
        if (!d_eof_sent) {
            d_eof_sent = true;
            uv_shutdown_t *sr = malloc(sizeof *sr);
            if (uv_shutdown(sr, (uv_stream_t *)&dtcp, d_shutdown_cb) != 0)
                free(sr);
        }
        return;
    }
    stream_in += (uint64_t)n;
    uv_write_t *w = malloc(sizeof *w);
    w->data = r;
    uv_buf_t b = uv_buf_init(r->data, (unsigned)n);
    if (uv_write(w, (uv_stream_t *)&dtcp, &b, 1, d_write_cb) != 0) {
        free(w);
        free(r);
    }
    d_in_set_reading();
}

static void d_alloc(uv_handle_t *h, size_t s, uv_buf_t *b)
{
    static char rb[65536];
    b->base = rb;
    b->len = sizeof rb;
}

static void d_set_reading(bool want)
{
    if (want == d_reading || uv_is_closing((uv_handle_t *)&dtcp))
        return;
    d_reading = want;
    if (want)
        uv_read_start((uv_stream_t *)&dtcp, d_alloc, d_read);
    else
        uv_read_stop((uv_stream_t *)&dtcp);
}

static void d_out_done(uv_write_t *req, int status)
{
    outreq_t *o = (outreq_t *)req;
    out_queued -= o->len;
    free(o);
    close_out_if_drained();
    if (out_queued < (256u << 10) && !out_closing)
        d_set_reading(true);
}

static void d_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    if (n == 0)
        return;
    if (n < 0) {
        EVENT("eof bytes=%llu", (unsigned long long)stream_out);
        EVENT("stats stream_in=%llu stream_out=%llu", (unsigned long long)stream_in,
              (unsigned long long)stream_out);
        d_reading = false;
        uv_close((uv_handle_t *)&dtcp, NULL);
        close_pipes();
        return;
    }
    stream_out += (uint64_t)n;
    outreq_t *o = malloc(sizeof *o + (size_t)n);
    memcpy(o->data, buf->base, (size_t)n);
    o->len = (size_t)n;
    uv_buf_t b = uv_buf_init(o->data, (unsigned)n);
    if (uv_write(&o->req, (uv_stream_t *)&out_pipe, &b, 1, d_out_done) != 0) {
        free(o);
        return;
    }
    out_queued += (size_t)n;
    if (out_queued >= (1u << 20))
        d_set_reading(false);
}

static void d_connected(uv_connect_t *req, int status)
{
    if (status < 0) {
        EVENT("open-failed %s", uv_strerror(status));
        exit_code = 4;
        uv_close((uv_handle_t *)&dtcp, NULL);
        close_pipes();
        return;
    }
    uv_tcp_nodelay(&dtcp, 1);
    EVENT("open direct");
    d_set_reading(true);
    d_in_set_reading();
}

/* ---- main ---------------------------------------------------------------------- */

static int usage(void)
{
    fprintf(
        stderr,
        "usage: tunnelcat [--direct | --idle N] [--buffer BYTES] [--dead-timeout MS] [--ping MS]\n"
        "                 [--handshake-timeout MS] [--backoff-max MS] [--max-outage "
        "MS]\n"
        "                 [--ca FILE] [--tls-host NAME] HOST:PORT\n");
    return 2;
}

int main(int argc, char **argv)
{
    static const struct option lo[] = {
        {"idle", required_argument, NULL, 'i'},
        {"buffer", required_argument, NULL, 'b'},
        {"dead-timeout", required_argument, NULL, 'd'},
        {"ping", required_argument, NULL, 'p'},
        {"handshake-timeout", required_argument, NULL, 'h'},
        {"backoff-max", required_argument, NULL, 'm'},
        {"max-outage", required_argument, NULL, 'o'},
        {"ca", required_argument, NULL, 'c'},
        {"tls-host", required_argument, NULL, 't'},
        {"verbose", no_argument, NULL, 'v'},
        {"direct", no_argument, NULL, 'D'},
        {NULL, 0, NULL, 0},
    };
    cw_tunnel_options_default(&topt);
    const char *ca = NULL;
    bool verbose = false, direct = false;
    int c;
    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        unsigned long long v = optarg ? strtoull(optarg, NULL, 10) : 0;
        switch (c) {
        case 'i':
            n_idle = (unsigned)v;
            break;
        case 'b':
            topt.buffer_size = (size_t)v;
            break;
        case 'd':
            topt.dead_timeout = v;
            break;
        case 'p':
            topt.ping_interval = v;
            break;
        case 'h':
            topt.handshake_timeout = v;
            break;
        case 'm':
            topt.backoff_max = v;
            break;
        case 'o':
            topt.max_outage = v;
            break;
        case 'c':
            ca = optarg;
            break;
        case 't':
            topt.tls_host = optarg;
            break;
        case 'v':
            verbose = true;
            break;
        case 'D':
            direct = true;
            break;
        default:
            return usage();
        }
    }
    if (optind + 1 != argc)
        return usage();
    char *colon = strrchr(argv[optind], ':');
    if (colon == NULL)
        return usage();
    *colon = '\0';
    host = argv[optind];
    port = atoi(colon + 1);
    cw_log_setup("tunnelcat", verbose ? CW_LOG_DEBUG : CW_LOG_WARN, CW_LOG_TEXT);
    signal(SIGPIPE, SIG_IGN);
    loop = uv_default_loop();
    cw_tls_ctx_t *tls = NULL;
    if (ca) {
        char err[400];
        tls = cw_tls_client_ctx(ca, NULL, NULL, err, sizeof err);
        if (tls == NULL) {
            fprintf(stderr, "tunnelcat: %s\n", err);
            return 2;
        }
        topt.tls_ctx = tls;
    }
    if (uv_pipe_init(loop, &in_pipe, 0) != 0 || uv_pipe_open(&in_pipe, 0) != 0) {
        fprintf(stderr, "tunnelcat: stdin must be a pipe, socket or terminal\n");
        return 2;
    }
    in_open = true;
    if (n_idle) {
        idle = calloc(n_idle, sizeof *idle);
        for (unsigned i = 0; i < n_idle; i++) {
            cw_tunnel_init(loop, &idle[i], &topt, &idle_callbacks);
            if (cw_tunnel_connect(&idle[i], host, port) != 0)
                return 4;
        }
        uv_read_start((uv_stream_t *)&in_pipe, idle_in_alloc, idle_in_read);
        uv_run(loop, UV_RUN_DEFAULT);
        free(idle);
    } else {
        if (uv_pipe_init(loop, &out_pipe, 0) != 0 || uv_pipe_open(&out_pipe, 1) != 0) {
            fprintf(stderr, "tunnelcat: stdout must be a pipe, socket or terminal\n");
            return 2;
        }
        out_open = true;
        if (direct) {
            struct sockaddr_in a;
            if (uv_ip4_addr(host, port, &a) != 0)
                return usage();
            uv_tcp_init(loop, &dtcp);
            uv_tcp_connect(&dconn, &dtcp, (struct sockaddr *)&a, d_connected);
            uv_run(loop, UV_RUN_DEFAULT);
            if (uv_loop_close(loop) != 0)
                fprintf(stderr, "tunnelcat: handles left open\n");
            return exit_code;
        }
        cw_tunnel_init(loop, &tun, &topt, &callbacks);
        if (cw_tunnel_connect(&tun, host, port) != 0)
            return 4;
        uv_run(loop, UV_RUN_DEFAULT);
    }
    if (uv_loop_close(loop) != 0)
        fprintf(stderr, "tunnelcat: handles left open\n");
    cw_tls_ctx_free(tls);
    return exit_code;
}
