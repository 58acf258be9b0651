/* cworker-relay: the command line.  Options live in one table that drives
 * parsing, defaults and --help. */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cworker/cw.h"
#include "log.h"
#include "relay.h"

#define EXIT_USAGE 2

enum opt_id {
    O_LISTEN = 1,
    O_MASTER,
    O_WINDOW,
    O_BUFFER,
    O_CERT,
    O_KEY,
    O_METRICS,
    O_DEAD,
    O_MAX_SESSIONS,
    O_VERBOSE,
    O_HELP,
    O_VERSION,
};

static const struct opt_row {
    enum opt_id id;
    const char *name;
    const char *arg; /* NULL: a flag */
    const char *help;
} opt_table[] = {
    {O_LISTEN, "listen", "HOST:PORT", "where workers connect (IP address; [v6]:PORT for IPv6)"},
    {O_MASTER, "master", "HOST:PORT", "the Buildbot master's worker port (resolved at start)"},
    {O_WINDOW, "resume-window", "S",
     "keep a session whose worker is away for up to S seconds (default 600)"},
    {O_BUFFER, "buffer-size", "BYTES",
     "replay buffer per session (k/M/G suffixes; default 1M, 4k..1G)"},
    {O_CERT, "tls-cert", "FILE", "serve TLS with this certificate chain (PEM)"},
    {O_KEY, "tls-key", "FILE", "and this private key (PEM)"},
    {O_METRICS, "metrics", "HOST:PORT", "serve /metrics and /healthz over HTTP here"},
    {O_DEAD, "dead-timeout", "S",
     "a worker link silent for S seconds is dead (default 30; pings at S/3; decimals allowed)"},
    {O_MAX_SESSIONS, "max-sessions", "N", "refuse new sessions beyond N (default 10000)"},
    {O_VERBOSE, "verbose", NULL, "log protocol detail"},
    {O_HELP, "help", NULL, "this text"},
    {O_VERSION, "version", NULL, "print the version"},
};
#define NOPTS (sizeof opt_table / sizeof opt_table[0])

static void usage(FILE *f)
{
    fprintf(f, "Usage: cworker-relay --listen HOST:PORT --master HOST:PORT [options]\n\n"
               "Carries cworker tunnels (docs/tunnel.md) to a Buildbot master: one TCP\n"
               "connection to the master per tunnel, kept open while the worker's link is down,\n"
               "so a worker on a flaky network resumes without the master noticing.\n\n");
    for (size_t i = 0; i < NOPTS; i++) {
        char left[64];
        snprintf(left, sizeof left, "--%s%s%s", opt_table[i].name, opt_table[i].arg ? " " : "",
                 opt_table[i].arg ? opt_table[i].arg : "");
        fprintf(f, "  %-26s %s\n", left, opt_table[i].help);
    }
    fprintf(f, "\nSessions live in memory only: a restart loses them and their workers\n"
               "reconnect from scratch.  Exit status: 0 after SIGTERM/SIGINT, 1 on a failure\n"
               "to start, 2 on bad usage.\n");
}

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* A command-line error: say what, exit 2. */
static int usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "cworker-relay: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\nTry 'cworker-relay --help'.\n");
    va_end(ap);
    return EXIT_USAGE;
}

/* "1048576", "64k", "1M", "1G" -> bytes; -1 if malformed. */
static long long parse_size(const char *s)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || v < 0)
        return -1;
    long long mul = 1;
    if (*end == 'k' || *end == 'K')
        mul = 1024, end++;
    else if (*end == 'm' || *end == 'M')
        mul = 1024 * 1024, end++;
    else if (*end == 'g' || *end == 'G')
        mul = 1024 * 1024 * 1024, end++;
    if (*end != '\0' || v > (1LL << 40) / mul)
        return -1;
    return v * mul;
}

/* Seconds with decimals -> ms; -1 if malformed or out of range. */
static long long parse_seconds_ms(const char *s, double max)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end != '\0' || !(v > 0) || v > max)
        return -1;
    return (long long)(v * 1000.0 + 0.5);
}

static uv_signal_t sig_term, sig_int;

static void on_signal(uv_signal_t *h, int signum)
{
    relay_t *r = h->data;
    cw_info("%s received", signum == SIGTERM ? "SIGTERM" : "SIGINT");
    relay_stop(r);
    uv_close((uv_handle_t *)&sig_term, NULL);
    uv_close((uv_handle_t *)&sig_int, NULL);
}

int main(int argc, char **argv)
{
    struct option lopts[NOPTS + 1];
    for (size_t i = 0; i < NOPTS; i++)
        lopts[i] =
            (struct option){opt_table[i].name, opt_table[i].arg ? required_argument : no_argument,
                            NULL, (int)opt_table[i].id};
    lopts[NOPTS] = (struct option){0, 0, 0, 0};

    relay_options_t o = {.resume_window = 600,
                         .buffer_size = CW_TUN_DEFAULT_BUFFER,
                         .dead_timeout = 30000,
                         .max_sessions = 10000};
    int c;
    long long v;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "", lopts, NULL)) != -1) {
        switch (c) {
        case O_LISTEN:
            o.listen = optarg;
            break;
        case O_MASTER:
            o.master = optarg;
            break;
        case O_WINDOW:
            if ((v = parse_seconds_ms(optarg, 7 * 86400.0)) < 1000)
                return usage_error("--resume-window '%s': whole seconds, 1 to 604800", optarg);
            o.resume_window = (uint32_t)(v / 1000);
            break;
        case O_BUFFER:
            v = parse_size(optarg);
            if (v < (long long)CW_TUN_MIN_BUFFER || v > (long long)CW_TUN_MAX_BUFFER)
                return usage_error("--buffer-size '%s': 4k to 1G", optarg);
            o.buffer_size = (size_t)v;
            break;
        case O_CERT:
            o.tls_cert = optarg;
            break;
        case O_KEY:
            o.tls_key = optarg;
            break;
        case O_METRICS:
            o.metrics = optarg;
            break;
        case O_DEAD:
            if ((v = parse_seconds_ms(optarg, 86400.0)) < 100)
                return usage_error("--dead-timeout '%s': seconds, 0.1 to 86400", optarg);
            o.dead_timeout = (uint64_t)v;
            break;
        case O_MAX_SESSIONS:
            v = parse_size(optarg);
            if (v < 1 || v > 1000000)
                return usage_error("--max-sessions '%s': 1 to 1000000", optarg);
            o.max_sessions = (unsigned)v;
            break;
        case O_VERBOSE:
            o.verbose = true;
            break;
        case O_HELP:
            usage(stdout);
            return 0;
        case O_VERSION:
            printf("cworker-relay %s (tunnel protocol %d)\n", CW_VERSION, CW_TUN_VERSION);
            return 0;
        default:
            return usage_error("unknown option or missing argument: %s", argv[optind - 1]);
        }
    }
    if (optind < argc)
        return usage_error("unexpected argument '%s'", argv[optind]);
    if (o.listen == NULL || o.master == NULL)
        return usage_error("%s", "--listen and --master are required");
    if ((o.tls_cert == NULL) != (o.tls_key == NULL))
        return usage_error("%s", "--tls-cert and --tls-key go together");

    cw_log_setup("cworker-relay", o.verbose ? CW_LOG_DEBUG : CW_LOG_INFO, CW_LOG_TEXT);
    signal(SIGPIPE, SIG_IGN);
    uv_loop_t *loop = uv_default_loop();
    static relay_t relay;
    if (relay_start(&relay, loop, &o) < 0) {
        uv_run(loop, UV_RUN_DEFAULT); /* finish the closes relay_start began */
        return 1;
    }
    uv_signal_init(loop, &sig_term);
    uv_signal_init(loop, &sig_int);
    sig_term.data = sig_int.data = &relay;
    uv_signal_start(&sig_term, on_signal, SIGTERM);
    uv_signal_start(&sig_int, on_signal, SIGINT);
    uv_run(loop, UV_RUN_DEFAULT);
    int rc = uv_loop_close(loop);
    if (rc != 0)
        cw_warn("handles left open at exit: %s", uv_strerror(rc));
    cw_info("stopped");
    return 0;
}
