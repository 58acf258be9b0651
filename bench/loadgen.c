/* loadgen: N worker sessions of msgpack_experimental_v7 from one process,
 * for measuring how many idle workers a master endpoint holds.
 *
 * Each session is a cw_conn_t in the client role (the worker's own
 * connection code: TCP, HTTP upgrade with Basic credentials, WebSocket,
 * message decoding, pings) that answers the master like a worker would:
 * print, keepalive, set_worker_settings and interrupt_command with nil,
 * get_worker_info with a small info map, and start_command of `shell` with
 * a trivial command run in-process: one stdout line ("NAME: ARGV...") and
 * rc 0, then complete.  Sessions connect at most --concurrency at a time
 * (so the listen backlog is not flooded); a lost session reconnects after a
 * random delay of up to --reconnect-max seconds.
 *
 * stdout (line-buffered) carries what a script reads:
 *   loadgen: attached N/N in MS ms           once every session is attached
 *   loadgen: stats t=S attached=A connecting=C lost=L keepalives=K commands=M rss_kib=R
 *                                             every --stats seconds and at exit
 * SIGINT/SIGTERM close every session (Close frame) and exit 0.
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>
#include <uv.h>

#include "procstat.h"
#include "conn.h"
#include "cworker/msg.h"

typedef enum { S_IDLE, S_CONNECTING, S_OPEN, S_ATTACHED, S_CLOSING } sess_state_t;

typedef struct sess {
    cw_conn_t conn;
    uv_connect_t creq;
    unsigned index;
    char name[48];
    sess_state_t state;
    uint64_t retry_at; /* uv_now when an idle session may connect again */
    struct sess *next; /* in the connect queue */
} sess_t;

static struct {
    uv_loop_t *loop;
    struct sockaddr_in addr;
    char host_header[64];
    const char *password;
    sess_t *s;
    unsigned n;
    unsigned concurrency;
    double reconnect_max;
    double stats_every;
    double duration;
    cw_conn_options_t copt;
    sess_t *queue_head, *queue_tail; /* sessions waiting to connect */
    unsigned connecting;             /* in TCP connect or handshake */
    unsigned attached;
    unsigned long lost, keepalives, commands;
    uint64_t t0;
    bool all_reported;
    bool stopping;
    uv_timer_t pacer, stats, stop_timer;
    uv_signal_t sigint, sigterm;
} g;

static void sess_connect(sess_t *s);

static void print_stats(void)
{
    printf("loadgen: stats t=%.3f attached=%u connecting=%u lost=%lu keepalives=%lu "
           "commands=%lu rss_kib=%ld\n",
           (double)(uv_hrtime() - g.t0) / 1e9, g.attached, g.connecting, g.lost, g.keepalives,
           g.commands, cw_rss_kib());
}

/* ---- the connect queue ---- */

static void queue_push(sess_t *s)
{
    s->state = S_IDLE;
    s->next = NULL;
    if (g.queue_tail)
        g.queue_tail->next = s;
    else
        g.queue_head = s;
    g.queue_tail = s;
}

/* Start queued sessions while fewer than --concurrency are connecting. */
static void pacer_run(uv_timer_t *t)
{
    uint64_t now = uv_now(g.loop);
    while (!g.stopping && g.queue_head && g.connecting < g.concurrency &&
           g.queue_head->retry_at <= now) {
        sess_t *s = g.queue_head;
        g.queue_head = s->next;
        if (g.queue_head == NULL)
            g.queue_tail = NULL;
        sess_connect(s);
    }
}

/* ---- answering the master ---- */

static void ignore_answer(cw_conn_t *c, void *ctx, const cw_msg_t *resp)
{
}

static void respond_info(sess_t *s, int64_t seq)
{
    cw_buf_t b = CW_BUF_INIT;
    msgpack_packer pk;
    cw_pack_init(&pk, &b);
    cw_pack_response_begin(&pk, seq);
    msgpack_pack_map(&pk, 7);
    cw_pack_str(&pk, "version");
    cw_pack_str(&pk, "loadgen");
    cw_pack_str(&pk, "basedir");
    cw_pack_str(&pk, "/nonexistent");
    cw_pack_str(&pk, "system");
    cw_pack_str(&pk, "posix");
    cw_pack_str(&pk, "numcpus");
    msgpack_pack_int(&pk, 1);
    cw_pack_str(&pk, "environ");
    msgpack_pack_map(&pk, 0);
    cw_pack_str(&pk, "delete_leftover_dirs");
    msgpack_pack_false(&pk);
    cw_pack_str(&pk, "worker_commands");
    msgpack_pack_map(&pk, 1);
    cw_pack_str(&pk, "shell");
    cw_pack_str(&pk, "3.3");
    cw_conn_send(&s->conn, &b);
}

/* start_command of shell: answer, one stdout line, rc 0, complete. */
static void run_command(sess_t *s, const cw_msg_t *m)
{
    if (!cw_str_eq(m->u.start.command_name, "shell")) {
        cw_conn_respond_error(&s->conn, m->seq, "loadgen runs only shell");
        return;
    }
    cw_conn_respond_nil(&s->conn, m->seq);
    g.commands++;
    cw_buf_t line = CW_BUF_INIT;
    cw_buf_printf(&line, "%s:", s->name);
    const msgpack_object *cmd = cw_map_get(&m->u.start.args, "command");
    if (cmd && cmd->type == MSGPACK_OBJECT_ARRAY) {
        for (uint32_t i = 0; i < cmd->via.array.size; i++) {
            cw_str_t w;
            if (cw_obj_str(&cmd->via.array.ptr[i], &w)) {
                cw_buf_append(&line, " ", 1);
                cw_buf_append(&line, w.ptr, w.len);
            }
        }
    } else {
        cw_str_t w;
        if (cmd && cw_obj_str(cmd, &w)) {
            cw_buf_append(&line, " ", 1);
            cw_buf_append(&line, w.ptr, w.len);
        }
    }
    cw_buf_append(&line, "\n", 1);
    double now = (double)uv_hrtime() / 1e9;

    cw_buf_t b = CW_BUF_INIT;
    msgpack_packer pk;
    cw_pack_init(&pk, &b);
    int64_t seq = cw_conn_next_seq(&s->conn);
    cw_pack_update_begin(&pk, 2);
    msgpack_pack_array(&pk, 2);
    cw_pack_str(&pk, "stdout");
    msgpack_pack_array(&pk, 3);
    cw_pack_strn(&pk, (const char *)line.data, line.len);
    msgpack_pack_array(&pk, 1);
    msgpack_pack_uint64(&pk, line.len - 1);
    msgpack_pack_array(&pk, 1);
    msgpack_pack_double(&pk, now);
    msgpack_pack_array(&pk, 2);
    cw_pack_str(&pk, "rc");
    msgpack_pack_int(&pk, 0);
    cw_pack_update_end(&pk, seq, m->u.start.command_id);
    cw_buf_free(&line);
    cw_conn_request(&s->conn, seq, &b, ignore_answer, NULL);

    cw_buf_t c = CW_BUF_INIT;
    cw_pack_init(&pk, &c);
    seq = cw_conn_next_seq(&s->conn);
    cw_pack_complete(&pk, seq, m->u.start.command_id, NULL);
    cw_conn_request(&s->conn, seq, &c, ignore_answer, NULL);
}

static void sess_on_request(cw_conn_t *c, const cw_msg_t *m)
{
    sess_t *s = c->data;
    switch (m->op) {
    case CW_OP_PRINT:
    case CW_OP_INTERRUPT_COMMAND:
        cw_conn_respond_nil(c, m->seq);
        break;
    case CW_OP_KEEPALIVE:
        g.keepalives++;
        cw_conn_respond_nil(c, m->seq);
        break;
    case CW_OP_GET_WORKER_INFO:
        respond_info(s, m->seq);
        break;
    case CW_OP_SET_WORKER_SETTINGS:
        cw_conn_respond_nil(c, m->seq);
        if (s->state == S_OPEN) {
            s->state = S_ATTACHED;
            g.attached++;
            if (g.connecting > 0)
                g.connecting--;
            if (g.attached == g.n && !g.all_reported) {
                g.all_reported = true;
                printf("loadgen: attached %u/%u in %.1f ms\n", g.attached, g.n,
                       (double)(uv_hrtime() - g.t0) / 1e6);
            }
            pacer_run(&g.pacer);
        }
        break;
    case CW_OP_START_COMMAND:
        run_command(s, m);
        break;
    case CW_OP_SHUTDOWN:
        cw_conn_respond_nil(c, m->seq);
        cw_conn_close(c, 0, CW_WS_CLOSE_GOING_AWAY, "shutdown");
        break;
    default:
        cw_conn_respond_unknown(c, m);
        break;
    }
}

static void sess_on_open(cw_conn_t *c)
{
    sess_t *s = c->data;
    s->state = S_OPEN; /* the master speaks first (print) */
}

static void sess_on_drain(cw_conn_t *c)
{
}

static void sess_on_close(cw_conn_t *c, int err, const char *why)
{
    sess_t *s = c->data;
    if (s->state == S_ATTACHED) {
        g.attached--;
        g.lost++;
    } else if (s->state == S_CONNECTING || s->state == S_OPEN) {
        g.connecting--;
    }
    if (g.stopping)
        return;
    /* again after a random delay (many sessions lose a master at once) */
    s->retry_at = uv_now(g.loop) + (uint64_t)(g.reconnect_max * 1000 * drand48());
    queue_push(s);
}

static const cw_conn_callbacks_t sess_callbacks = {
    .on_open = sess_on_open,
    .on_request = sess_on_request,
    .on_drain = sess_on_drain,
    .on_close = sess_on_close,
};

static void sess_tcp_connected(uv_connect_t *req, int status)
{
    sess_t *s = req->data;
    if (status < 0) {
        cw_conn_close(&s->conn, status, 0, uv_strerror(status));
        return;
    }
    if (cw_conn_start_client(&s->conn, g.host_header, "/ws", s->name, g.password) < 0)
        cw_conn_close(&s->conn, CW_ECLOSED, 0, "cannot start the handshake");
}

static void sess_connect(sess_t *s)
{
    cw_conn_init(&s->conn, g.loop, CW_CONN_CLIENT, &g.copt, &sess_callbacks, s);
    s->state = S_CONNECTING;
    g.connecting++;
    s->creq.data = s;
    int rc = uv_tcp_connect(&s->creq, cw_conn_tcp(&s->conn), (const struct sockaddr *)&g.addr,
                            sess_tcp_connected);
    if (rc < 0)
        cw_conn_close(&s->conn, rc, 0, uv_strerror(rc));
}

/* ---- process ---- */

static void stats_tick(uv_timer_t *t)
{
    print_stats();
}

static void stop_all(void)
{
    if (g.stopping)
        return;
    g.stopping = true;
    print_stats();
    uv_close((uv_handle_t *)&g.pacer, NULL);
    uv_close((uv_handle_t *)&g.stats, NULL);
    uv_close((uv_handle_t *)&g.stop_timer, NULL);
    uv_close((uv_handle_t *)&g.sigint, NULL);
    uv_close((uv_handle_t *)&g.sigterm, NULL);
    for (unsigned i = 0; i < g.n; i++) {
        sess_t *s = &g.s[i];
        if (s->state != S_IDLE)
            cw_conn_close(&s->conn, 0, CW_WS_CLOSE_GOING_AWAY, "loadgen stopping");
    }
}

static void on_signal(uv_signal_t *h, int signum)
{
    stop_all();
}

static void stop_timer_cb(uv_timer_t *t)
{
    stop_all();
}

static void usage(FILE *f)
{
    fprintf(f, "usage: loadgen --connect HOST:PORT --count N [--prefix P] [--password PW]\n"
               "               [--concurrency K] [--reconnect-max S] [--stats S] [--duration S]\n"
               "               [--ping S]\n"
               "N worker sessions named P0..P<N-1> (default prefix 'lg'), all with the password\n"
               "PW (or $LOADGEN_PASSWORD; default 'pass').  K sessions connect at a time\n"
               "(default 256); a lost one reconnects within S seconds (default 1).  Stats every S\n"
               "seconds (default 1, 0 = only at exit); stop after --duration S (default never).\n"
               "--ping S: the sessions' WebSocket ping interval (default 10; dead after 3x).\n");
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"connect", required_argument, NULL, 'c'},
        {"count", required_argument, NULL, 'n'},
        {"prefix", required_argument, NULL, 'p'},
        {"password", required_argument, NULL, 'w'},
        {"concurrency", required_argument, NULL, 'k'},
        {"reconnect-max", required_argument, NULL, 'r'},
        {"stats", required_argument, NULL, 's'},
        {"duration", required_argument, NULL, 'd'},
        {"ping", required_argument, NULL, 'i'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *connect = NULL, *prefix = "lg";
    double ping = 10;
    long count = 0;
    g.password = getenv("LOADGEN_PASSWORD") ? getenv("LOADGEN_PASSWORD") : "pass";
    g.concurrency = 256;
    g.reconnect_max = 1;
    g.stats_every = 1;
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'c':
            connect = optarg;
            break;
        case 'n':
            count = strtol(optarg, NULL, 10);
            break;
        case 'p':
            prefix = optarg;
            break;
        case 'w':
            g.password = optarg;
            break;
        case 'k':
            g.concurrency = (unsigned)strtoul(optarg, NULL, 10);
            break;
        case 'r':
            g.reconnect_max = strtod(optarg, NULL);
            break;
        case 's':
            g.stats_every = strtod(optarg, NULL);
            break;
        case 'd':
            g.duration = strtod(optarg, NULL);
            break;
        case 'i':
            ping = strtod(optarg, NULL);
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    char host[64];
    int port;
    const char *colon = connect ? strrchr(connect, ':') : NULL;
    if (colon == NULL || count < 1 || count > 1000000 || g.concurrency < 1 ||
        (size_t)(colon - connect) >= sizeof host) {
        usage(stderr);
        return 2;
    }
    memcpy(host, connect, (size_t)(colon - connect));
    host[colon - connect] = '\0';
    port = atoi(colon + 1);
    if (uv_ip4_addr(host, port, &g.addr) < 0) {
        fprintf(stderr, "loadgen: '%s' is not IPv4ADDR:PORT\n", connect);
        return 2;
    }
    snprintf(g.host_header, sizeof g.host_header, "%s", connect);
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGPIPE, SIG_IGN);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)count + 64)
        fprintf(stderr, "loadgen: warning: the descriptor limit (%llu) is below %ld sessions\n",
                (unsigned long long)rl.rlim_cur, count);
    srand48((long)getpid());

    g.loop = uv_default_loop();
    g.n = (unsigned)count;
    g.s = calloc(g.n, sizeof *g.s);
    if (g.s == NULL)
        return 1;
    cw_conn_options_default(&g.copt);
    g.copt.ping_interval = (uint64_t)(ping * 1000);
    g.copt.dead_timeout = 3 * g.copt.ping_interval;
    g.copt.max_message = 1u << 20;
    for (unsigned i = 0; i < g.n; i++) {
        g.s[i].index = i;
        snprintf(g.s[i].name, sizeof g.s[i].name, "%s%u", prefix, i);
        queue_push(&g.s[i]);
    }
    uv_timer_init(g.loop, &g.pacer);
    uv_timer_init(g.loop, &g.stats);
    uv_timer_init(g.loop, &g.stop_timer);
    uv_signal_init(g.loop, &g.sigint);
    uv_signal_init(g.loop, &g.sigterm);
    uv_signal_start(&g.sigint, on_signal, SIGINT);
    uv_signal_start(&g.sigterm, on_signal, SIGTERM);
    g.t0 = uv_hrtime();
    uv_timer_start(&g.pacer, pacer_run, 0, 5);
    if (g.stats_every > 0)
        uv_timer_start(&g.stats, stats_tick, (uint64_t)(g.stats_every * 1000),
                       (uint64_t)(g.stats_every * 1000));
    if (g.duration > 0)
        uv_timer_start(&g.stop_timer, stop_timer_cb, (uint64_t)(g.duration * 1000), 0);
    uv_run(g.loop, UV_RUN_DEFAULT);
    uv_loop_close(g.loop);
    free(g.s);
    return 0;
}
