/* cworker-master: sub-commands run / put / get / serve over one listening
 * endpoint of the msgpack protocol. */
#include "cli.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <malloc.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "cw_config.h"
#include "log.h"
#include "tls.h"

static void usage(FILE *f)
{
    fprintf(
        f, "Usage:\n"
           "  cworker-master run   --listen HOST:PORT --worker NAME [--workdir DIR] [--timeout S]\n"
           "                       [--env K=V ...] [common options] -- CMD [ARGS...]\n"
           "  cworker-master put   --listen HOST:PORT --worker NAME [-r] [--no-preserve-mode]\n"
           "                       [common options] LOCAL REMOTE\n"
           "  cworker-master get   --listen HOST:PORT --worker NAME [-r] [--compress gz|bz2]\n"
           "                       [common options] REMOTE LOCAL\n"
           "  cworker-master serve --listen HOST:PORT --workers FILE [--control PATH]\n"
           "                       [--keepalive S] [--verbose]\n"
           "\n"
           "The master end of Buildbot's msgpack_experimental_v7 protocol: waits for a worker\n"
           "(cworker or buildbot-worker) to attach, then runs a command on it or copies files.\n"
           "\n"
           "Common options:\n"
           "  --listen HOST:PORT     address to listen on ([v6addr]:PORT for IPv6)\n"
           "  --worker NAME          the worker to wait for\n"
           "  --password-file FILE   its password (first line); or CWORKER_PASSWORD\n"
           "  --wait S               how long to wait for it to attach (default 60)\n"
           "  --verbose              log protocol detail (and, for run, the header lines)\n"
           "  --tls-cert FILE --tls-key FILE\n"
           "                         serve wss:// (TLS 1.2+) with this certificate chain and key\n"
           "run:\n"
           "  --workdir DIR          working directory on the worker (relative: to its basedir)\n"
           "  --timeout S            kill the command after S seconds in all\n"
           "  --env K=V              set a variable (repeatable); K= with nothing removes it\n"
           "  --parallel N           run N copies at once (each sees CW_RUN_INDEX=0..N-1); the\n"
           "                         output of each copy is printed as one block when it ends,\n"
           "                         after a line '=== [i] exit CODE'; the exit status is the\n"
           "                         first non-zero one\n"
           "  stdout and stderr of the command are streamed to ours (after the protocol's\n"
           "  line rules: CR/CRLF become LF, invalid UTF-8 becomes U+FFFD, a last line\n"
           "  without newline gets one).\n"
           "put/get:\n"
           "  -r                     copy a directory tree\n"
           "  --compress gz|bz2      get -r: compress the tar stream on the way\n"
           "  --no-preserve-mode     put: send no file mode; the worker keeps an existing\n"
           "                         file's mode (as FileDownload does), else its umask's\n"
           "serve:\n"
           "  --workers FILE         lines of 'NAME PASSWORD'; stays up and logs attach/detach\n"
           "  --control PATH         a Unix socket (mode 0600) taking one request line per\n"
           "                         connection: 'stats', or 'run NAME WORD...' (an argv run\n"
           "                         on the attached worker NAME; answer 'exit CODE ms MS'\n"
           "                         and its output)\n"
           "  --keepalive S          send the keepalive request every S seconds (default 3600)\n"
           "\n"
           "Exit status: run: the command's exit code, 128+N if it was killed by signal N,\n"
           "124 if --timeout killed it; all: 0 on success, 2 bad usage, 125 the worker did\n"
           "not attach within --wait, 254 the link to the worker was lost, 255 other failures.\n");
}

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* A command-line error: say what, exit 2. */
static int usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "cworker-master: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\nTry 'cworker-master --help'.\n");
    va_end(ap);
    return CLI_EXIT_USAGE;
}

int cli_write_all(int fd, const void *data, size_t len)
{
    const uint8_t *p = data;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            struct pollfd pf = {.fd = fd, .events = POLLOUT};
            poll(&pf, 1, -1);
            continue;
        }
        if (n < 0)
            return -errno;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

char *cli_remote_path(cli_t *cli, const char *path)
{
    if (path[0] == '/' || cli->w->basedir == NULL)
        return strdup(path);
    size_t n = strlen(cli->w->basedir) + strlen(path) + 2;
    char *p = malloc(n);
    if (p)
        snprintf(p, n, "%s/%s", cli->w->basedir, path);
    return p;
}

static void close_handle(uv_handle_t *h)
{
    if (h->loop && !uv_is_closing(h))
        uv_close(h, NULL);
}

void cli_finish(cli_t *cli, int code)
{
    if (cli->finishing)
        return;
    cli->finishing = true;
    cli->exit_code = code;
    cw_master_close(&cli->master);
    cli_serve_control_close(cli);
    close_handle((uv_handle_t *)&cli->wait_timer);
    close_handle((uv_handle_t *)&cli->progress_timer);
    close_handle((uv_handle_t *)&cli->sig_int);
    close_handle((uv_handle_t *)&cli->sig_term);
}

/* ---- progress ---- */

static void progress_tick(uv_timer_t *t)
{
    cli_t *cli = t->data;
    double secs = (double)(uv_hrtime() - cli->xfer_start_ns) / 1e9;
    double mb = (double)cli->xfer_bytes / 1e6;
    if (cli->xfer_total)
        fprintf(
            stderr, "\r%.1f / %.1f MB (%3.0f%%) %.1f MB/s   ", mb, (double)cli->xfer_total / 1e6,
            100.0 * (double)cli->xfer_bytes / (double)cli->xfer_total, secs > 0 ? mb / secs : 0);
    else
        fprintf(stderr, "\r%.1f MB %.1f MB/s   ", mb, secs > 0 ? mb / secs : 0);
}

void cli_progress_start(cli_t *cli, uint64_t total)
{
    cli->xfer_total = total;
    cli->xfer_bytes = 0;
    cli->xfer_start_ns = uv_hrtime();
    if (!isatty(2))
        return;
    cli->progress = true;
    uv_timer_start(&cli->progress_timer, progress_tick, 200, 200);
}

void cli_progress_done(cli_t *cli)
{
    double secs = (double)(uv_hrtime() - cli->xfer_start_ns) / 1e9;
    if (cli->progress) {
        uv_timer_stop(&cli->progress_timer);
        progress_tick(&cli->progress_timer);
        fprintf(stderr, "\n");
    }
    cw_info("%llu bytes in %.3f s (%.1f MB/s)", (unsigned long long)cli->xfer_bytes, secs,
            secs > 0 ? (double)cli->xfer_bytes / 1e6 / secs : 0);
}

/* ---- attach ---- */

static void on_attach(cw_master_t *m, cw_mworker_t *w)
{
    cli_t *cli = m->data;
    if (cli->job == NULL || cli->started || cli->finishing)
        return;
    if (strcmp(w->name, cli->worker_name) != 0)
        return;
    cli->started = true;
    cli->w = w;
    uv_timer_stop(&cli->wait_timer);
    cli->job->start(cli, w);
}

static void on_detach(cw_master_t *m, cw_mworker_t *w, const char *why)
{
    cli_t *cli = m->data;
    if (cli->w == w)
        cli->w = NULL;
}

static const cw_master_callbacks_t cli_master_callbacks = {
    .on_attach = on_attach,
    .on_detach = on_detach,
};

static void wait_expired(uv_timer_t *t)
{
    cli_t *cli = t->data;
    cw_error("worker '%s' did not attach within %g s", cli->worker_name, cli->wait_secs);
    cli_finish(cli, CLI_EXIT_NO_WORKER);
}

static void on_signal(uv_signal_t *h, int signum)
{
    cli_t *cli = h->data;
    cli->signals++;
    if (cli->job == NULL) {
        cw_info("stopping (%s)", signum == SIGINT ? "SIGINT" : "SIGTERM");
        cli_finish(cli, 0);
        return;
    }
    if (!cli->started || cli->signals > 1) {
        cw_info("%s: exiting", signum == SIGINT ? "interrupted" : "terminated");
        cli_finish(cli, 128 + signum);
        return;
    }
    cw_info("%s: interrupting the command on the worker (again to quit at once)",
            signum == SIGINT ? "interrupted" : "terminated");
    cli->job->interrupt(cli);
}

/* ---- option parsing ---- */

static int parse_listen(const char *s, char *host, size_t hostlen, int *port)
{
    const char *colon = strrchr(s, ':');
    if (colon == NULL)
        return -1;
    size_t hl = (size_t)(colon - s);
    if (s[0] == '[') {
        if (hl < 2 || s[hl - 1] != ']')
            return -1;
        s++;
        hl -= 2;
    }
    if (hl == 0 || hl >= hostlen)
        return -1;
    memcpy(host, s, hl);
    host[hl] = '\0';
    char *end;
    long p = strtol(colon + 1, &end, 10);
    if (colon[1] == '\0' || *end || p < 0 || p > 65535)
        return -1;
    *port = (int)p;
    return 0;
}

static char *read_first_line(const char *file)
{
    FILE *f = fopen(file, "re");
    if (f == NULL)
        return NULL;
    char *line = NULL;
    size_t cap = 0;
    ssize_t n = getline(&line, &cap, f);
    fclose(f);
    if (n < 0) {
        free(line);
        return strdup("");
    }
    line[strcspn(line, "\r\n")] = '\0';
    return line;
}

/* serve holds a connection per worker: the soft descriptor limit (often
 * 1024) goes up to the hard one. */
static void raise_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
            cw_warn("cannot raise the descriptor limit: %s", strerror(errno));
    }
}

/* serve: "NAME PASSWORD" per line; '#' comments and blank lines ignored. */
static int load_workers_file(cw_master_t *m, const char *file)
{
    FILE *f = fopen(file, "re");
    if (f == NULL) {
        fprintf(stderr, "cworker-master: cannot read '%s': %s\n", file, strerror(errno));
        return -1;
    }
    char line[2048];
    int n = 0, lineno = 0;
    while (fgets(line, sizeof line, f)) {
        lineno++;
        line[strcspn(line, "\r\n")] = '\0';
        char *p = line + strspn(line, " \t");
        if (*p == '\0' || *p == '#')
            continue;
        char *sp = p + strcspn(p, " \t");
        if (*sp == '\0') {
            fprintf(stderr, "cworker-master: %s:%d: expected 'NAME PASSWORD'\n", file, lineno);
            fclose(f);
            return -1;
        }
        *sp++ = '\0';
        sp += strspn(sp, " \t");
        if (cw_master_add_account(m, p, sp) < 0) {
            fclose(f);
            return -1;
        }
        n++;
    }
    fclose(f);
    if (n == 0) {
        fprintf(stderr, "cworker-master: '%s' lists no workers\n", file);
        return -1;
    }
    return n;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return CLI_EXIT_USAGE;
    }
    const char *sub = argv[1];
    if (strcmp(sub, "--help") == 0 || strcmp(sub, "-h") == 0 || strcmp(sub, "help") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(sub, "--version") == 0) {
        printf("cworker-master %s (protocol msgpack_experimental_v7)\n", CW_VERSION_STRING);
        return 0;
    }
    cli_t cli;
    memset(&cli, 0, sizeof cli);
    cli.wait_secs = 60;
    cli.timeout = -1;
    if (strcmp(sub, "run") == 0)
        cli.job = &cli_run_job;
    else if (strcmp(sub, "put") == 0)
        cli.job = &cli_put_job;
    else if (strcmp(sub, "get") == 0)
        cli.job = &cli_get_job;
    else if (strcmp(sub, "serve") != 0)
        return usage_error("unknown sub-command '%s'", sub);

    enum {
        O_LISTEN = 256,
        O_WORKER,
        O_PASSWORD_FILE,
        O_WAIT,
        O_VERBOSE,
        O_WORKDIR,
        O_TIMEOUT,
        O_ENV,
        O_COMPRESS,
        O_WORKERS,
        O_HELP,
        O_TLS_CERT,
        O_TLS_KEY,
        O_PARALLEL,
        O_NO_MODE,
        O_CONTROL,
        O_KEEPALIVE,
    };
    static const struct option opts[] = {
        {"listen", required_argument, NULL, O_LISTEN},
        {"worker", required_argument, NULL, O_WORKER},
        {"password-file", required_argument, NULL, O_PASSWORD_FILE},
        {"wait", required_argument, NULL, O_WAIT},
        {"verbose", no_argument, NULL, O_VERBOSE},
        {"workdir", required_argument, NULL, O_WORKDIR},
        {"timeout", required_argument, NULL, O_TIMEOUT},
        {"env", required_argument, NULL, O_ENV},
        {"compress", required_argument, NULL, O_COMPRESS},
        {"workers", required_argument, NULL, O_WORKERS},
        {"help", no_argument, NULL, O_HELP},
        {"tls-cert", required_argument, NULL, O_TLS_CERT},
        {"tls-key", required_argument, NULL, O_TLS_KEY},
        {"parallel", required_argument, NULL, O_PARALLEL},
        {"no-preserve-mode", no_argument, NULL, O_NO_MODE},
        {"control", required_argument, NULL, O_CONTROL},
        {"keepalive", required_argument, NULL, O_KEEPALIVE},
        {NULL, 0, NULL, 0},
    };
    const char *listen = NULL, *password_file = NULL, *workers_file = NULL;
    const char *tls_cert = NULL, *tls_key = NULL, *control = NULL;
    double keepalive = -1;
    char *end;
    optind = 2;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, "+r", opts, NULL)) != -1) {
        switch (c) {
        case O_LISTEN:
            listen = optarg;
            break;
        case O_WORKER:
            cli.worker_name = optarg;
            break;
        case O_PASSWORD_FILE:
            password_file = optarg;
            break;
        case O_WAIT:
            cli.wait_secs = strtod(optarg, &end);
            if (*optarg == '\0' || *end || !(cli.wait_secs > 0))
                return usage_error("--wait needs a positive number of seconds, not '%s'", optarg);
            break;
        case O_VERBOSE:
            cli.verbose = true;
            break;
        case O_WORKDIR:
            cli.workdir = optarg;
            break;
        case O_TIMEOUT:
            cli.timeout = strtod(optarg, &end);
            if (*optarg == '\0' || *end || !(cli.timeout > 0))
                return usage_error("--timeout needs a positive number of seconds, not '%s'",
                                   optarg);
            break;
        case O_ENV:
            if (strchr(optarg, '=') == NULL || optarg[0] == '=')
                return usage_error("--env needs NAME=VALUE, not '%s'", optarg);
            cli.env = realloc(cli.env, (cli.nenv + 1) * sizeof *cli.env);
            if (cli.env == NULL)
                return CLI_EXIT_FAILURE;
            cli.env[cli.nenv++] = optarg;
            break;
        case O_COMPRESS:
            if (strcmp(optarg, "gz") != 0 && strcmp(optarg, "bz2") != 0)
                return usage_error("--compress takes gz or bz2, not '%s'", optarg);
            cli.compress = optarg;
            break;
        case O_WORKERS:
            workers_file = optarg;
            break;
        case 'r':
            cli.recursive = true;
            break;
        case O_NO_MODE:
            cli.no_mode = true;
            break;
        case O_TLS_CERT:
            tls_cert = optarg;
            break;
        case O_TLS_KEY:
            tls_key = optarg;
            break;
        case O_PARALLEL:
            cli.parallel = strtol(optarg, &end, 10);
            if (*optarg == '\0' || *end || cli.parallel < 1 || cli.parallel > 100000)
                return usage_error("--parallel needs a count from 1 to 100000, not '%s'", optarg);
            break;
        case O_CONTROL:
            control = optarg;
            break;
        case O_KEEPALIVE:
            keepalive = strtod(optarg, &end);
            if (*optarg == '\0' || *end || !(keepalive > 0) || keepalive > 1e7)
                return usage_error("--keepalive needs a positive number of seconds, not '%s'",
                                   optarg);
            break;
        case O_HELP:
            usage(stdout);
            return 0;
        case ':':
            return usage_error("option '%s' needs a value", argv[optind - 1]);
        default:
            return usage_error("unknown option '%s'", argv[optind - 1]);
        }
    }
    if (listen == NULL)
        return usage_error("--listen HOST:PORT is required");
    char host[256];
    int port;
    if (parse_listen(listen, host, sizeof host, &port) < 0)
        return usage_error("--listen '%s' is not HOST:PORT", listen);
    if (cli.job == &cli_run_job) {
        if (optind >= argc)
            return usage_error("run needs a command after --");
        cli.cmd_argv = argv + optind;
    } else if (cli.job) {
        if (argc - optind != 2)
            return usage_error("%s needs exactly two paths (%s)", sub,
                               cli.job == &cli_put_job ? "LOCAL REMOTE" : "REMOTE LOCAL");
        if (cli.job == &cli_put_job) {
            cli.local = argv[optind];
            cli.remote = argv[optind + 1];
        } else {
            cli.remote = argv[optind];
            cli.local = argv[optind + 1];
        }
        if (cli.compress && !(cli.job == &cli_get_job && cli.recursive))
            return usage_error("--compress only applies to get -r");
        if (cli.no_mode && cli.job != &cli_put_job)
            return usage_error("--no-preserve-mode only applies to put");
    } else if (optind < argc) {
        return usage_error("unexpected argument '%s'", argv[optind]);
    }
    if (cli.job && (control || keepalive > 0))
        return usage_error("--control and --keepalive only apply to serve");

    signal(SIGPIPE, SIG_IGN);
    cw_log_setup("cworker-master", cli.verbose ? CW_LOG_DEBUG : CW_LOG_INFO, CW_LOG_TEXT);
    cli.loop = uv_default_loop();

    cw_master_options_t mo;
    cw_master_options_default(&mo);
    if (keepalive > 0)
        mo.keepalive_ms = (uint64_t)(keepalive * 1000);
    if (cli.job == NULL) {
        raise_fd_limit();
    } else {
        /* put/get/run move MiB-sized blocks: keep freed ones in the heap
         * for the next block instead of a fresh mmap (and its page faults)
         * every time */
        mallopt(M_MMAP_THRESHOLD, 64 << 20);
        mallopt(M_TRIM_THRESHOLD, 128 << 20);
    }
    const char *faults = getenv("CWORKER_MASTER_FAULTS"); /* tests only */
    if (faults && cw_master_faults_parse(&mo.faults, faults) < 0)
        return usage_error("bad CWORKER_MASTER_FAULTS '%s'", faults);
    if ((tls_cert == NULL) != (tls_key == NULL))
        return usage_error("--tls-cert and --tls-key go together");
    cw_tls_ctx_t *tls_ctx = NULL;
    if (tls_cert) {
        char err[400];
        tls_ctx = cw_tls_server_ctx(tls_cert, tls_key, err, sizeof err);
        if (tls_ctx == NULL) {
            fprintf(stderr, "cworker-master: %s\n", err);
            return CLI_EXIT_USAGE;
        }
        mo.conn.tls_ctx = tls_ctx;
    }
    cw_master_init(&cli.master, cli.loop, &mo, &cli_master_callbacks, &cli);

    if (cli.job) {
        if (cli.worker_name == NULL)
            return usage_error("--worker NAME is required");
        char *pw = NULL;
        if (password_file) {
            pw = read_first_line(password_file);
            if (pw == NULL) {
                fprintf(stderr, "cworker-master: cannot read password file '%s': %s\n",
                        password_file, strerror(errno));
                return CLI_EXIT_USAGE;
            }
        } else if (getenv("CWORKER_PASSWORD")) {
            pw = strdup(getenv("CWORKER_PASSWORD"));
        } else {
            return usage_error("no password: use --password-file FILE or CWORKER_PASSWORD");
        }
        cw_master_add_account(&cli.master, cli.worker_name, pw);
        free(pw);
    } else {
        if (workers_file == NULL)
            return usage_error("serve needs --workers FILE");
        if (load_workers_file(&cli.master, workers_file) < 0)
            return CLI_EXIT_USAGE;
    }

    int bound = 0;
    int rc = cw_master_listen(&cli.master, host, port, &bound);
    if (rc == 0 && control && (rc = cli_serve_control_start(&cli, control)) < 0)
        fprintf(stderr, "cworker-master: cannot listen on the control socket '%s': %s\n", control,
                uv_strerror(rc));
    else if (rc < 0)
        fprintf(stderr, "cworker-master: cannot listen on %s: %s\n", listen, uv_strerror(rc));
    if (rc < 0) {
        cli_serve_control_close(&cli);
        cw_master_close(&cli.master); /* its handles and accounts */
        uv_run(cli.loop, UV_RUN_DEFAULT);
        uv_loop_close(cli.loop);
        cw_master_faults_free(&mo.faults);
        cw_tls_ctx_free(tls_ctx);
        free(cli.env);
        return CLI_EXIT_FAILURE;
    }
    cw_info("listening on %s:%d%s", host, bound, tls_ctx ? " (TLS)" : "");

    uv_timer_init(cli.loop, &cli.wait_timer);
    uv_timer_init(cli.loop, &cli.progress_timer);
    cli.wait_timer.data = cli.progress_timer.data = &cli;
    uv_signal_init(cli.loop, &cli.sig_int);
    uv_signal_init(cli.loop, &cli.sig_term);
    cli.sig_int.data = cli.sig_term.data = &cli;
    uv_signal_start(&cli.sig_int, on_signal, SIGINT);
    uv_signal_start(&cli.sig_term, on_signal, SIGTERM);
    if (cli.job)
        uv_timer_start(&cli.wait_timer, wait_expired, (uint64_t)(cli.wait_secs * 1000), 0);

    uv_run(cli.loop, UV_RUN_DEFAULT);
    if (cli.job && cli.job->free && cli.xfer)
        cli.job->free(&cli);
    uv_loop_close(cli.loop);
    cw_master_faults_free(&mo.faults);
    cw_tls_ctx_free(tls_ctx);
    free(cli.env);
    return cli.exit_code;
}
