/* cworker's options: gathered from flags, CWORKER_* environment variables,
 * a config file (`--config FILE`), an existing buildbot-worker's
 * buildbot.tac (`--from-tac FILE`, read without running Python) and the
 * variables of the buildbot/buildbot-worker container image, then validated
 * into the cw_config_t the daemon runs with; plus `cworker create-worker`,
 * `--check-config`, `--write-config`, `--help` and the option docs.
 *
 * Every option is one row of the table in options_table.c, which drives all
 * of these.  Precedence: flags > environment > config file > buildbot.tac >
 * container image variables > defaults.
 *
 * Plain C (no libuv), so the unit tests and the fuzzer link it alone.  The
 * files, bottom up (each calls only those above it in this list):
 *   optutil.c        messages, numbers, host names, paths, the argv scanner
 *   proxy.c          proxy URLs, no_proxy, HOST:PORT (declared here)
 *   options_table.c  the table (options_table.h)
 *   optval.c         the value store and each type's parser and printer
 *   options_read.c   flags, environment, config file
 *   tac.c            buildbot.tac (tac.h: the import shared with create-worker)
 *   config.c         loading the files, validation, file-system checks
 *   options_print.c  --check-config, --write-config, --help, the docs
 *   create_worker.c  `cworker create-worker`
 *
 * Stages (main() runs them in this order; the fuzzer runs the pure ones):
 *   cw_opts_parse_argv, cw_opts_parse_env    raw strings, no I/O
 *   cw_opts_load_files                       reads the config file and the tac
 *     (cw_opts_parse_conf, cw_opts_parse_tac: the parsers, on a buffer)
 *   cw_config_resolve                        validation into cw_config_t, no I/O
 *   cw_config_finish                         password file, basedir, TLS files
 * Every stage returns 0 or a negative code and then has written a message
 * naming the option and where its value came from into err.
 */
#ifndef CW_WORKER_OPTIONS_H
#define CW_WORKER_OPTIONS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* The protocol spoken to the master: Perspective Broker (the stock
 * default) or msgpack_experimental_v7 over WebSocket. */
typedef enum cw_protocol { CW_PROTO_PB, CW_PROTO_MSGPACK } cw_protocol_t;

/* How the worker may ask to be shut down (the stock allow_shutdown). */
typedef enum cw_allow_shutdown {
    CW_SHUTDOWN_NONE,
    CW_SHUTDOWN_SIGNAL, /* SIGHUP */
    CW_SHUTDOWN_FILE,   /* BASEDIR/shutdown.stamp touched */
} cw_allow_shutdown_t;

/* The daemon's configuration.  Owned by main(); every string is a heap copy
 * owned by the struct and released by cw_config_free() (the password is
 * wiped first).  The worker only reads it. */
typedef struct cw_config {
    cw_protocol_t protocol; /* a ws:// or wss:// master is always msgpack */
    char *master_host;      /* host name or address (no brackets) */
    int master_port;
    char *master_path; /* WebSocket path, starts with '/' (msgpack only) */
    bool use_tls;      /* wss://, or --use-tls with HOST:PORT (PB: TLS on the TCP link) */
    char *name;
    char *password;
    char *basedir;             /* absolute after cw_config_finish */
    double backoff_cap;        /* seconds, cap of the reconnect delay */
    uint64_t ping_interval;    /* ms */
    uint64_t dead_timeout;     /* ms */
    size_t max_message;        /* bytes */
    size_t max_commands;       /* concurrent commands refused above this; 0 = no limit */
    size_t max_pending_output; /* a command's unsent output that pauses it; 0 = 2 x buffer_size */
    unsigned fs_max_depth;     /* deepest tree or glob pattern a file command walks */
    uint64_t kill_grace;       /* ms to wait for process groups at exit */
    uint64_t drain_timeout;    /* ms SIGTERM lets running commands finish */
    uint64_t keepalive;        /* ms between the worker's keepalive() calls over PB; 0 = off */
    cw_allow_shutdown_t allow_shutdown; /* CW_SHUTDOWN_NONE, CW_SHUTDOWN_SIGNAL, CW_SHUTDOWN_FILE */
    bool verbose;
    /* As configured: -1 = leave the inherited umask, else the mask to set.
     * main() applies it first thing at start-up and then stores the
     * process's effective umask here, so while the worker runs it is always
     * the real umask (>= 0). */
    long umask;
    char *ca_file;     /* TLS: CA bundle (PEM) instead of the system store; NULL = system */
    char *client_cert; /* TLS: client certificate chain (PEM), or NULL */
    char *client_key;  /* TLS: its private key (PEM), or NULL */
    /* HTTP CONNECT proxy as "http://[USERINFO@]HOST:PORT" (split it with
     * cw_proxy_parse), or NULL for a direct connection.  msgpack only:
     * explicit --proxy, else https_proxy/HTTPS_PROXY (wss) or
     * http_proxy/HTTP_PROXY (ws) unless no_proxy/NO_PROXY matches the
     * master.  Always NULL with PB (a proxy is a configuration error). */
    char *proxy;
    /* cworker-relay as "HOST:PORT" / "[V6]:PORT", or NULL: connect to the
     * master directly.  With a relay the link to the master runs through a
     * resumable tunnel to it (docs/tunnel.md); relay_host has no brackets. */
    char *relay;
    char *relay_host;
    int relay_port;
    bool relay_tls;            /* TLS on the tunnel, the relay's certificate checked */
    char *metrics_listen;      /* "IP:PORT" / "[IPv6]:PORT" (cw_hostport_parse), NULL = off */
    int log_format;            /* 0 text, 1 JSON (cw_log_format_t) */
    bool delete_leftover_dirs; /* reported in get_worker_info */
    int max_retries;           /* exit 1 after this many failed attempts in a row; 0 = never */
    char *password_file;       /* absolute path the password was read from, or NULL */
    unsigned numcpus;          /* reported in get_worker_info; 0 = auto (CPUs we may use) */
    char *log_file;            /* log here instead of stderr (absolute after finish), or NULL */
    uint64_t log_size;         /* rotate log_file before it exceeds this; 0 = never */
    unsigned log_count;        /* rotated files kept (FILE.1 .. FILE.N); 0 = all */
} cw_config_t;

/* The options; options_table.c describes each (the same order: --help,
 * --check-config and the docs list them so). */
typedef enum cw_opt_id {
    CW_OPT_MASTER,
    CW_OPT_PROTOCOL,
    CW_OPT_NAME,
    CW_OPT_BASEDIR,
    CW_OPT_PASSWORD_FILE,
    CW_OPT_PASSWORD, /* never a flag */
    CW_OPT_USE_TLS,
    CW_OPT_CA_FILE,
    CW_OPT_CLIENT_CERT,
    CW_OPT_CLIENT_KEY,
    CW_OPT_PROXY,
    CW_OPT_RELAY,
    CW_OPT_RELAY_TLS,
    CW_OPT_BACKOFF_MAX,
    CW_OPT_MAX_RETRIES,
    CW_OPT_PING_INTERVAL,
    CW_OPT_DEAD_TIMEOUT,
    CW_OPT_KEEPALIVE,
    CW_OPT_MAX_MESSAGE,
    CW_OPT_MAX_COMMANDS,
    CW_OPT_MAX_PENDING_OUTPUT,
    CW_OPT_FS_MAX_DEPTH,
    CW_OPT_DRAIN_TIMEOUT,
    CW_OPT_KILL_GRACE,
    CW_OPT_ALLOW_SHUTDOWN,
    CW_OPT_UMASK,
    CW_OPT_DELETE_LEFTOVER_DIRS,
    CW_OPT_NUMCPUS,
    CW_OPT_METRICS_LISTEN,
    CW_OPT_LOG_FORMAT,
    CW_OPT_LOG_FILE,
    CW_OPT_LOG_SIZE,
    CW_OPT_LOG_COUNT,
    CW_OPT_VERBOSE,
    CW_OPT_CONFIG, /* not a config-file key */
    CW_OPT_FROM_TAC,
    CW_OPT__COUNT
} cw_opt_id_t;

/* Where a value came from, in increasing precedence. */
typedef enum cw_src {
    CW_SRC_DEFAULT,
    CW_SRC_CONTAINER, /* a variable of the buildbot/buildbot-worker image, or its default */
    CW_SRC_TAC,
    CW_SRC_FILE,
    CW_SRC_ENV,
    CW_SRC_FLAG,
} cw_src_t;

typedef struct cw_optval {
    char *value; /* NULL: not set (or unreadable, see bad) */
    char *where; /* "--master", "CWORKER_MASTER", "FILE:LINE", "TAC:LINE (var)", "WORKERNAME" */
    char *bad;   /* set when the source had a value we cannot use: the reason */
    cw_src_t src;
} cw_optval_t;

typedef enum cw_action {
    CW_ACTION_RUN,
    CW_ACTION_CHECK, /* --check-config */
    CW_ACTION_WRITE, /* --write-config FILE */
    CW_ACTION_HELP,
    CW_ACTION_VERSION,
    CW_ACTION_CREATE, /* create-worker subcommand */
    CW_ACTION_DOC,    /* --help-table FORMAT */
} cw_action_t;

/* Raw option values from every source, before validation. */
typedef struct cw_opts {
    cw_optval_t v[CW_OPT__COUNT]; /* the value of highest precedence seen so far */
    cw_action_t action;
    char *write_config;     /* --write-config FILE */
    bool force;             /* --force: --write-config may replace a file */
    const char *doc_format; /* --help-table: "man" or "markdown" (points into argv) */
    int create_argc;        /* create-worker: the words after the subcommand */
    char **create_argv;     /* (points into main's argv) */
    bool container_env;     /* a variable of the container image was set */
    const char *proxy_from; /* how cw_config_resolve chose cfg->proxy (static text) */
    char *proxy_env;        /* the environment variable it came from, if any */
    char **notes;           /* things worth telling the user (ignored tac settings...) */
    size_t nnotes;
} cw_opts_t;

void cw_opts_init(cw_opts_t *o);
void cw_opts_free(cw_opts_t *o);
/* Record a value from src unless a source of higher precedence set it
 * (value and where are copied).  0 or -ENOMEM. */
int cw_opts_set(cw_opts_t *o, cw_opt_id_t id, const char *value, const char *where, cw_src_t src,
                char *err, size_t errlen);
/* Record that src had a value for id we cannot use; reported (why) only if
 * nothing of higher precedence sets the option. */
int cw_opts_set_bad(cw_opts_t *o, cw_opt_id_t id, const char *where, cw_src_t src, const char *why,
                    char *err, size_t errlen);
/* Forget the value of id. */
void cw_opts_unset(cw_opts_t *o, cw_opt_id_t id);
/* Remember a note for the user (best effort; takes note, which may be NULL). */
void cw_opts_note(cw_opts_t *o, char *note);

/* Command line (argv[0] is skipped).  A first word "create-worker" selects
 * CW_ACTION_CREATE and leaves the rest in create_argc/argv. */
int cw_opts_parse_argv(cw_opts_t *o, int argc, char **argv, char *err, size_t errlen);
/* CWORKER_* variables of envp (NULL-terminated "K=V"), and the container
 * image's (BUILDMASTER, WORKERNAME...); empty ones are unset. */
int cw_opts_parse_env(cw_opts_t *o, char *const *envp, char *err, size_t errlen);
/* A config file's text; path names it in messages and anchors relative
 * paths; mode is its permission bits (a password key needs no group/other
 * bits). */
int cw_opts_parse_conf(cw_opts_t *o, const char *text, size_t len, const char *path, unsigned mode,
                       char *err, size_t errlen);
/* A buildbot.tac's text (see README "Switching from buildbot-worker"). */
int cw_opts_parse_tac(cw_opts_t *o, const char *text, size_t len, const char *path, unsigned mode,
                      char *err, size_t errlen);
/* Read the config file (--config / CWORKER_CONFIG) and then the tac
 * (--from-tac / CWORKER_FROM_TAC / from-tac key), if any. */
int cw_opts_load_files(cw_opts_t *o, char *err, size_t errlen);

/* Remove from the process environment what build steps must not see:
 * CWORKER_PASSWORD, WORKERPASS, and every variable whose name matches one of
 * the space-separated glob patterns of WORKER_ENVIRONMENT_BLACKLIST (as the
 * container image's buildbot.tac does).  Call it before anything copies the
 * environment. */
void cw_env_scrub(void);

/* Validate everything into cfg (zeroed first, defaults applied); envp is
 * used for the proxy variables.  On failure cfg is freed again. */
int cw_config_resolve(cw_opts_t *o, char *const *envp, cw_config_t *cfg, char *err, size_t errlen);
/* File-system checks: read the password file, check the TLS files, and
 * make the basedir absolute.  create: mkdir it (one level, like the stock
 * worker); otherwise only check that it exists and is writable or can be
 * created. */
int cw_config_finish(cw_config_t *cfg, const cw_opts_t *o, bool create, char *err, size_t errlen);
void cw_config_free(cw_config_t *cfg);

/* Print the configuration in config-file syntax.  for_check: every option,
 * each with its source as a comment, the password hidden; otherwise only
 * the options some source set, the password (or password-file) included,
 * absolute paths -- a file that gives the same configuration. */
void cw_config_format(FILE *f, const cw_config_t *cfg, const cw_opts_t *o, bool for_check);
/* --write-config: write cw_config_format() output to path with mode 0600,
 * atomically; an existing file is replaced only with force. */
int cw_config_write(const char *path, const cw_config_t *cfg, const cw_opts_t *o, bool force,
                    char *err, size_t errlen);

/* `cworker create-worker [options] BASEDIR MASTER NAME PASSWORD`: parse
 * (no I/O) into o (flag-level values), the target directory and the info
 * texts; then cw_create_worker_run() does the work. */
typedef struct cw_create {
    char *basedir; /* as given */
    char *admin;   /* info/admin text, or NULL for the stock default */
    char *host;    /* info/host text, or NULL */
    bool force, quiet, relocatable;
} cw_create_t;
int cw_create_worker_parse(cw_create_t *cr, cw_opts_t *o, int argc, char **argv, char *err,
                           size_t errlen);
void cw_create_free(cw_create_t *cr);
/* Create BASEDIR, info/admin, info/host and BASEDIR/cworker.conf (0600);
 * progress lines go to out (unless quiet). */
int cw_create_worker_run(const cw_create_t *cr, cw_opts_t *o, FILE *out, char *err, size_t errlen);
/* `cworker create-worker --help`. */
void cw_create_worker_usage(FILE *f);

/* --help text. */
void cw_config_usage(FILE *f);
/* --help-table: the options as the man page's entries ("man") or README's
 * table ("markdown"); -EINVAL for another format. */
int cw_opts_doc(FILE *f, const char *format);

/* Split "http://[USER[:PASS]@]HOST[:PORT][/]" (or "HOST:PORT"); user and
 * password are percent-decoded (NULL when absent); port defaults to 80.
 * Returns 0 or -EINVAL; free with cw_proxy_free. */
typedef struct cw_proxy {
    char *host; /* no brackets */
    int port;
    char *user;
    char *password;
} cw_proxy_t;
int cw_proxy_parse(const char *url, cw_proxy_t *p);
void cw_proxy_free(cw_proxy_t *p);
/* The canonical "http://[userinfo@]host:port" form of a proxy URL that
 * cw_proxy_parse accepts; heap string, or NULL. */
char *cw_proxy_normalise(const char *url);
/* True if the no_proxy list (comma/space separated: "*", host names and
 * domain suffixes with or without a leading '.', IP addresses, CIDR
 * blocks, each optionally with :PORT) says host:port is reached directly. */
bool cw_no_proxy_match(const char *list, const char *host, int port);
/* "HOST:PORT" / "[V6]:PORT" with a numeric IP address and a port 1-65535.
 * *host is a heap copy without brackets.  0 or -EINVAL. */
int cw_hostport_parse(const char *s, char **host, int *port);

#endif
