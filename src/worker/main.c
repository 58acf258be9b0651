/* cworker: command line, configuration, start-up. */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <locale.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cw_config.h"
#include "log.h"
#include "worker.h"

static void usage(FILE *f)
{
    fprintf(f,
            "Usage: cworker --master HOST:PORT --name NAME --basedir DIR [options]\n"
            "\n"
            "A Buildbot worker speaking the msgpack_experimental_v7 protocol.\n"
            "\n"
            "Required:\n"
            "  --master HOST:PORT | ws://HOST:PORT/PATH\n"
            "                         the master's msgpack port ([v6addr]:PORT for IPv6)\n"
            "  --name NAME            worker name, as in the master's worker.Worker(NAME, ...)\n"
            "  --basedir DIR          worker base directory (created if missing)\n"
            "Password (never on the command line):\n"
            "  --password-file FILE   first line of FILE is the password\n"
            "  CWORKER_PASSWORD       environment variable, used when no file is given\n"
            "Options:\n"
            "  --backoff-max SECONDS  longest delay between reconnect attempts (default 30)\n"
            "  --ping-interval SECONDS  WebSocket ping when the link is idle (default 10; 0 off)\n"
            "  --dead-timeout SECONDS   drop the link after this long without data (default 30;\n"
            "                         0 off)\n"
            "  --max-message BYTES    largest message accepted from the master (default 64 MiB)\n"
            "  --max-commands N       refuse commands beyond N running at once (default 0 = no\n"
            "                         limit)\n"
            "  --drain-timeout SECONDS  on SIGTERM, how long running commands may go on before\n"
            "                         they are interrupted (default 60; 0 = interrupt at once)\n"
            "  --kill-grace SECONDS   after an interrupt at exit, how long commands get to die\n"
            "                         before SIGKILL (default 10)\n"
            "  --verbose              log protocol detail\n"
            "  --help, --version\n");
}

static int bad_arg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Report a command-line error the way the usage asks for; exit code 2. */
static int bad_arg(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "cworker: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\nTry 'cworker --help'.\n");
    va_end(ap);
    return 2;
}

/* Parse "HOST:PORT", "[V6]:PORT" or "ws://HOST:PORT/PATH" (port optional in
 * the URL form: 80). */
static int parse_master(const char *s, cw_config_t *cfg)
{
    char *path = NULL;
    const char *hp = s;
    bool url = false;
    if (strncmp(s, "ws://", 5) == 0) {
        hp = s + 5;
        url = true;
    } else if (strncmp(s, "wss://", 6) == 0) {
        hp = s + 6;
        url = true;
        cfg->use_tls = true;
    } else if (strstr(s, "://")) {
        return -1;
    }
    const char *slash = url ? strchr(hp, '/') : NULL;
    size_t hplen = slash ? (size_t)(slash - hp) : strlen(hp);
    path = strdup(slash ? slash : "/");
    char *tmp = strndup(hp, hplen);
    if (tmp == NULL || path == NULL) {
        free(tmp);
        free(path);
        return -1;
    }
    char *host = tmp, *port = NULL;
    if (tmp[0] == '[') {
        char *end = strchr(tmp, ']');
        if (end == NULL)
            goto bad;
        *end = '\0';
        host = tmp + 1;
        if (end[1] == ':')
            port = end + 2;
        else if (end[1] != '\0')
            goto bad;
    } else {
        char *colon = strrchr(tmp, ':');
        if (colon) {
            if (strchr(tmp, ':') != colon)
                goto bad; /* bare IPv6 needs brackets */
            *colon = '\0';
            port = colon + 1;
        }
    }
    if (*host == '\0')
        goto bad;
    long p = url ? (cfg->use_tls ? 443 : 80) : 9989;
    if (port) {
        char *end;
        errno = 0;
        p = strtol(port, &end, 10);
        if (*port == '\0' || *end != '\0' || errno || p < 1 || p > 65535)
            goto bad;
    }
    cfg->master_host = strdup(host);
    cfg->master_port = (int)p;
    cfg->master_path = path;
    free(tmp);
    return cfg->master_host ? 0 : -1;
bad:
    free(tmp);
    free(path);
    return -1;
}

/* Read the password: first line of the file, without the line end. */
static char *read_password_file(const char *file)
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

static int parse_seconds(const char *s, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (*s == '\0' || *end != '\0' || errno || !(v >= 0) || v > 1e7)
        return -1;
    *out = v;
    return 0;
}

static int parse_size(const char *s, size_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (*s == '\0' || *s == '-' || *end != '\0' || errno)
        return -1;
    *out = (size_t)v;
    return 0;
}

int main(int argc, char **argv)
{
    enum {
        OPT_MASTER = 256,
        OPT_NAME,
        OPT_BASEDIR,
        OPT_PASSWORD_FILE,
        OPT_BACKOFF_MAX,
        OPT_PING,
        OPT_DEAD,
        OPT_MAX_MESSAGE,
        OPT_MAX_COMMANDS,
        OPT_KILL_GRACE,
        OPT_DRAIN,
        OPT_VERBOSE,
        OPT_HELP,
        OPT_VERSION,
    };
    static const struct option opts[] = {
        {"master", required_argument, NULL, OPT_MASTER},
        {"name", required_argument, NULL, OPT_NAME},
        {"basedir", required_argument, NULL, OPT_BASEDIR},
        {"password-file", required_argument, NULL, OPT_PASSWORD_FILE},
        {"backoff-max", required_argument, NULL, OPT_BACKOFF_MAX},
        {"ping-interval", required_argument, NULL, OPT_PING},
        {"dead-timeout", required_argument, NULL, OPT_DEAD},
        {"max-message", required_argument, NULL, OPT_MAX_MESSAGE},
        {"max-commands", required_argument, NULL, OPT_MAX_COMMANDS},
        {"kill-grace", required_argument, NULL, OPT_KILL_GRACE},
        {"drain-timeout", required_argument, NULL, OPT_DRAIN},
        {"verbose", no_argument, NULL, OPT_VERBOSE},
        {"help", no_argument, NULL, OPT_HELP},
        {"version", no_argument, NULL, OPT_VERSION},
        {NULL, 0, NULL, 0},
    };
    cw_config_t cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.backoff_cap = 30;
    cfg.ping_interval = 10000;
    cfg.dead_timeout = 30000;
    cfg.max_message = 64u << 20;
    cfg.kill_grace = 10000;
    cfg.drain_timeout = 60000;
    const char *master = NULL, *password_file = NULL, *basedir = NULL;
    double secs;

    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case OPT_MASTER:
            master = optarg;
            break;
        case OPT_NAME:
            cfg.name = optarg;
            break;
        case OPT_BASEDIR:
            basedir = optarg;
            break;
        case OPT_PASSWORD_FILE:
            password_file = optarg;
            break;
        case OPT_BACKOFF_MAX:
            if (parse_seconds(optarg, &secs) < 0 || secs < 1)
                return bad_arg("--backoff-max needs a number of seconds >= 1, not '%s'",
                               optarg);
            cfg.backoff_cap = secs;
            break;
        case OPT_PING:
            if (parse_seconds(optarg, &secs) < 0)
                return bad_arg("--ping-interval needs a number of seconds, not '%s'", optarg);
            cfg.ping_interval = (uint64_t)(secs * 1000);
            break;
        case OPT_DEAD:
            if (parse_seconds(optarg, &secs) < 0)
                return bad_arg("--dead-timeout needs a number of seconds, not '%s'", optarg);
            cfg.dead_timeout = (uint64_t)(secs * 1000);
            break;
        case OPT_MAX_MESSAGE:
            if (parse_size(optarg, &cfg.max_message) < 0 || cfg.max_message < 4096)
                return bad_arg("--max-message needs a byte count >= 4096, not '%s'", optarg);
            break;
        case OPT_MAX_COMMANDS:
            if (parse_size(optarg, &cfg.max_commands) < 0)
                return bad_arg("--max-commands needs a number, not '%s'", optarg);
            break;
        case OPT_KILL_GRACE:
            if (parse_seconds(optarg, &secs) < 0)
                return bad_arg("--kill-grace needs a number of seconds, not '%s'", optarg);
            cfg.kill_grace = (uint64_t)(secs * 1000);
            break;
        case OPT_DRAIN:
            if (parse_seconds(optarg, &secs) < 0)
                return bad_arg("--drain-timeout needs a number of seconds, not '%s'", optarg);
            cfg.drain_timeout = (uint64_t)(secs * 1000);
            break;
        case OPT_VERBOSE:
            cfg.verbose = true;
            break;
        case OPT_HELP:
            usage(stdout);
            return 0;
        case OPT_VERSION:
            printf("cworker %s (protocol msgpack_experimental_v7, command version %s)\n",
                   CW_VERSION_STRING, CW_COMMAND_VERSION);
            return 0;
        case ':':
            return bad_arg("option '%s' needs a value", argv[optind - 1]);
        default:
            return bad_arg("unknown option '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc)
        return bad_arg("unexpected argument '%s'", argv[optind]);
    if (master == NULL)
        return bad_arg("%s", "--master is required");
    if (cfg.name == NULL || cfg.name[0] == '\0')
        return bad_arg("%s", "--name is required");
    if (strchr(cfg.name, ':'))
        return bad_arg("worker name '%s' must not contain ':'", cfg.name);
    if (basedir == NULL || basedir[0] == '\0')
        return bad_arg("%s", "--basedir is required");
    if (parse_master(master, &cfg) < 0)
        return bad_arg("--master '%s' is not HOST:PORT or ws://HOST:PORT/PATH", master);
    if (cfg.use_tls)
        return bad_arg("--master '%s': wss:// is not supported by this build", master);

    if (password_file) {
        cfg.password = read_password_file(password_file);
        if (cfg.password == NULL) {
            fprintf(stderr, "cworker: cannot read password file '%s': %s\n", password_file,
                    strerror(errno));
            return 2;
        }
    } else if (getenv("CWORKER_PASSWORD")) {
        cfg.password = strdup(getenv("CWORKER_PASSWORD"));
    } else {
        return bad_arg("%s", "no password: use --password-file FILE or CWORKER_PASSWORD");
    }

    if (mkdir(basedir, 0777) < 0 && errno != EEXIST) {
        fprintf(stderr, "cworker: cannot create basedir '%s': %s\n", basedir, strerror(errno));
        return 1;
    }
    char real[PATH_MAX];
    if (realpath(basedir, real) == NULL) {
        fprintf(stderr, "cworker: basedir '%s': %s\n", basedir, strerror(errno));
        return 1;
    }
    cfg.basedir = real;
    /* The stock worker runs in its basedir; relative paths in builds expect it. */
    if (chdir(real) < 0) {
        fprintf(stderr, "cworker: cannot enter basedir '%s': %s\n", real, strerror(errno));
        return 1;
    }

    /* read the umask before any thread exists (umask() can only be read by
     * setting it) */
    cfg.umask = umask(022);
    umask(cfg.umask);
    signal(SIGPIPE, SIG_IGN);
    /* libarchive converts names through the locale's charset: use the
     * environment's, and UTF-8 rather than plain ASCII when it has none */
    const char *loc = setlocale(LC_CTYPE, "");
    if (loc == NULL || strcmp(loc, "C") == 0 || strcmp(loc, "POSIX") == 0)
        setlocale(LC_CTYPE, "C.UTF-8");
    cw_log_setup("cworker", cfg.verbose ? CW_LOG_DEBUG : CW_LOG_INFO, CW_LOG_TEXT);

    uv_loop_t *loop = uv_default_loop();
    cw_worker_t w;
    int rc = cw_worker_init(&w, loop, &cfg);
    if (rc < 0) {
        cw_error("cannot start: %s", uv_strerror(rc));
        return 1;
    }
    uv_run(loop, UV_RUN_DEFAULT);
    int exit_code = w.exit_code;
    rc = uv_loop_close(loop);
    if (rc != 0)
        cw_debug("loop closed with handles still open: %s", uv_strerror(rc));
    cw_info("exited");
    free(cfg.master_host);
    free(cfg.master_path);
    if (cfg.password) {
        memset(cfg.password, 0, strlen(cfg.password));
        free(cfg.password);
    }
    return exit_code;
}
