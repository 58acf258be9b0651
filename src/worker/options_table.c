/* The option table (see options_table.h): one row per option, the settings
 * of buildbot-worker that cworker ignores, and the command line's actions.
 *
 * help is the --help line; doc is the text of the README table and of the
 * man page's OPTIONS entries, which `cworker --help-table` generates.  Both
 * may use `literal` and *ARG*. */
#include "options_table.h"

#include <limits.h>
#include <stdint.h>
#include <string.h>

#define OFF(field) offsetof(cw_config_t, field)

const cw_optdef_t cw_optdefs[CW_OPT__COUNT] = {
    [CW_OPT_MASTER] =
        {
            .name = "master",
            .env = "CWORKER_MASTER",
            .type = CW_T_MASTER,
            .flags = CW_OPTF_REQUIRED,
            .what = "master",
            .need = "not HOST:PORT, [V6ADDR]:PORT, ws://HOST:PORT/PATH or wss://HOST:PORT/PATH",
            .arg = "URL",
            .def_doc = "required",
            .tac = {"buildmaster_host", "port", "connection_string"},
            .tac_kind = CW_TAC_MASTER,
            .image = {"BUILDMASTER", "BUILDMASTER_PORT"},
            .image_def = {"localhost", "9989"},
            .help = "the master's port: `HOST:PORT` or `[V6ADDR]:PORT` (its pb port; its msgpack "
                    "port with `--protocol msgpack`), or `ws://HOST:PORT/PATH` or "
                    "`wss://HOST:PORT/PATH` (msgpack)",
            .doc = "The master's port: `HOST:PORT` (port 9989 if omitted) or `[IPv6]:PORT`, its "
                   "PB port by default (`c['protocols']['pb']`, as for the stock worker) or its "
                   "msgpack port with `--protocol msgpack`; or a `ws://HOST:PORT/PATH` or "
                   "`wss://HOST:PORT/PATH` URL (TLS), always a msgpack port (the URL forms "
                   "default to ports 80 and 443).",
        },
    [CW_OPT_PROTOCOL] =
        {
            .name = "protocol",
            .env = "CWORKER_PROTOCOL",
            .type = CW_T_PROTOCOL,
            .ctype = CW_C_INT,
            .off = OFF(protocol),
            .need = "needs pb or msgpack_experimental_v7 (or msgpack)",
            .arg = "NAME",
            .def = "pb",
            .tac = {"protocol"},
            .tac_kind = CW_TAC_PROTOCOL,
            .cw = "protocol",
            .cw_arg = CW_CWARG_STR,
            .image = {"BUILDMASTER_PROTOCOL"},
            .image_def = {"pb"},
            .help = "the protocol of the master's port: `pb` (Perspective Broker) or "
                    "`msgpack_experimental_v7` (or `msgpack`); a `ws://` or `wss://` master "
                    "means msgpack",
            .doc = "The protocol of the master's port: `pb` (Perspective Broker, the stock "
                   "worker's default; the master's `c['protocols']['pb']`) or "
                   "`msgpack_experimental_v7`, also written `msgpack` (the master's "
                   "`c['protocols']['msgpack_experimental_v7']`).  A `ws://` or `wss://` master "
                   "URL means msgpack, and `pb` given with one is an error.  A protocol from a "
                   "source of lower precedence than the master's address (a tac's or a config "
                   "file's, when `--master` is a flag) was about another port and is dropped: "
                   "then the master's address decides (msgpack for a URL, else `pb`), and a "
                   "note says so when that changes the protocol.",
        },
    [CW_OPT_NAME] =
        {
            .name = "name",
            .env = "CWORKER_NAME",
            .type = CW_T_NAME,
            .ctype = CW_C_STR,
            .off = OFF(name),
            .flags = CW_OPTF_REQUIRED,
            .what = "worker name",
            .arg = "NAME",
            .def_doc = "required",
            .tac = {"workername"},
            .tac_kind = CW_TAC_STR,
            .image = {"WORKERNAME"},
            .image_def = {"docker"},
            .help = "worker name, as in the master's `worker.Worker(NAME, ...)`",
            .doc = "The worker name, as in the master's `worker.Worker(NAME, ...)`; no `:` or "
                   "control characters.",
        },
    [CW_OPT_BASEDIR] =
        {
            .name = "basedir",
            .env = "CWORKER_BASEDIR",
            .type = CW_T_PATH,
            .ctype = CW_C_STR,
            .off = OFF(basedir),
            .flags = CW_OPTF_REQUIRED,
            .what = "base directory",
            .need = "empty directory name",
            .arg = "DIR",
            .def_doc = "required",
            .tac = {"basedir"},
            .tac_kind = CW_TAC_BASEDIR,
            .image = {"BUILDBOT_BASEDIR"},
            .image_def = {"/buildbot"},
            .help = "worker base directory (created if missing)",
            .doc = "The worker's base directory, where builds run; created (one level) if "
                   "missing.  cworker runs in it, as the stock worker does.",
        },
    [CW_OPT_PASSWORD_FILE] =
        {
            .name = "password-file",
            .env = "CWORKER_PASSWORD_FILE",
            .type = CW_T_PATH,
            .ctype = CW_C_STR,
            .off = OFF(password_file),
            .need = "empty file name",
            .arg = "FILE",
            .help = "the first line of *FILE* is the password",
            .doc = "The password is the first line of *FILE*; then this file, not the config "
                   "file, is the one to keep private.",
        },
    [CW_OPT_PASSWORD] =
        {
            .name = "password",
            .env = "CWORKER_PASSWORD",
            .type = CW_T_SECRET,
            .ctype = CW_C_STR,
            .off = OFF(password),
            .flags = CW_OPTF_NOFLAG,
            .need = "empty password",
            .arg = "SECRET",
            .tac = {"passwd"},
            .tac_kind = CW_TAC_STR,
            .image = {"WORKERPASS"},
            .help = "the password itself (environment, or a config file only its owner can "
                    "read; never a flag)",
            .doc = "The password itself.  Never a flag: every user can read command lines.  In "
                   "a config file only if neither group nor others can access the file.  "
                   "`CWORKER_PASSWORD` and `WORKERPASS` are removed from the environment before "
                   "any build step runs.",
        },
    [CW_OPT_USE_TLS] =
        {
            .name = "use-tls",
            .env = "CWORKER_USE_TLS",
            .type = CW_T_BOOL,
            .ctype = CW_C_BOOL,
            .off = OFF(use_tls),
            .need = "needs true or false",
            .arg = "BOOL",
            .def = "false",
            .tac = {"use_tls"},
            .tac_kind = CW_TAC_BOOL,
            .cw = "use-tls",
            .cw_arg = CW_CWARG_FLAG,
            .help = "TLS to a `HOST:PORT` master (msgpack: the same as a `wss://` URL)",
            .doc = "TLS to a `HOST:PORT` master.  Over PB the TCP connection is TLS (the master "
                   "listens with an `ssl:` strport, as for the stock worker's `use_tls`); over "
                   "msgpack it is the same as a `wss://` URL.",
        },
    [CW_OPT_CA_FILE] =
        {
            .name = "ca-file",
            .env = "CWORKER_CA_FILE",
            .type = CW_T_PATH,
            .ctype = CW_C_STR,
            .off = OFF(ca_file),
            .flags = CW_OPTF_TLS,
            .none = "none",
            .arg = "FILE",
            .def_doc = "system store",
            .help = "TLS: trust the CA certificates in *FILE* (PEM)",
            .doc = "With TLS: trust the CA certificates in *FILE* (PEM) instead of the system "
                   "store.",
        },
    [CW_OPT_CLIENT_CERT] =
        {
            .name = "client-cert",
            .env = "CWORKER_CLIENT_CERT",
            .type = CW_T_PATH,
            .ctype = CW_C_STR,
            .off = OFF(client_cert),
            .flags = CW_OPTF_TLS,
            .none = "none",
            .arg = "FILE",
            .def_doc = "none",
            .help = "TLS: client certificate chain (PEM)",
            .doc = "With TLS: present this client certificate chain (PEM); goes with "
                   "`client-key`.",
        },
    [CW_OPT_CLIENT_KEY] =
        {
            .name = "client-key",
            .env = "CWORKER_CLIENT_KEY",
            .type = CW_T_PATH,
            .ctype = CW_C_STR,
            .off = OFF(client_key),
            .flags = CW_OPTF_TLS,
            .none = "none",
            .arg = "FILE",
            .def_doc = "none",
            .help = "TLS: the client certificate's private key (PEM)",
            .doc = "With TLS: the client certificate's private key (PEM).",
        },
    [CW_OPT_PROXY] =
        {
            .name = "proxy",
            .env = "CWORKER_PROXY",
            .type = CW_T_PROXY,
            .ctype = CW_C_STR,
            .off = OFF(proxy),
            .none = "none",
            .need = "not an HTTP proxy URL http://[USER:PASS@]HOST[:PORT]",
            .arg = "URL",
            .def_doc = "from environment",
            .tac = {"proxy_connection_string"},
            .tac_kind = CW_TAC_PROXY,
            .cw = "proxy-connection-string",
            .cw_arg = CW_CWARG_PYLIT,
            .help = "msgpack: HTTP CONNECT proxy `http://HOST:PORT` (`none`: direct); default: "
                    "`https_proxy` (wss) or `http_proxy` (ws), minus `no_proxy`",
            .doc = "msgpack only: tunnel through an HTTP CONNECT proxy, "
                   "`http://[USER:PASS@]HOST:PORT`, or `none` to connect directly.  By default "
                   "`https_proxy`/`HTTPS_PROXY` (wss) or `http_proxy`/`HTTP_PROXY` (ws), unless "
                   "`no_proxy`/`NO_PROXY` covers the master: host names and domain suffixes "
                   "(with or without a leading dot), `*`, IP addresses and CIDR blocks, each "
                   "optionally with `:PORT`, separated by commas.  With `pb` a proxy is an "
                   "error and these variables are not used (the stock PB worker ignores them "
                   "too).",
        },
    [CW_OPT_RELAY] =
        {
            .name = "relay",
            .env = "CWORKER_RELAY",
            .type = CW_T_RELAY,
            .ctype = CW_C_STR,
            .off = OFF(relay),
            .none = "none",
            .need = "needs HOST:PORT or [IPv6]:PORT of a cworker-relay (or none)",
            .arg = "HOST:PORT",
            .def_doc = "none",
            .help = "reach the master through cworker-relay at *HOST:PORT*: a resumable tunnel "
                    "that keeps builds running through network outages",
            .doc = "Reach the master through the `cworker-relay` at *HOST:PORT* (`none`: "
                   "directly).  The worker's session, PB or msgpack, runs end to end through a "
                   "resumable tunnel to the relay, which holds the TCP connection to the master "
                   "given by its own `--master`; `master` still names the master the worker "
                   "speaks to (for msgpack the WebSocket's host and path).  When the link to "
                   "the relay breaks the worker reconnects and resumes the session: running "
                   "commands go on, their output waits in a bounded buffer (then their pipes "
                   "are not read), and the master sees a quiet worker.  Only an outage longer "
                   "than the relay's `--resume-window`, or a relay that lost the session (it "
                   "restarted), ends the session as a lost link does.  `ping-interval` and "
                   "`dead-timeout` then apply to the tunnel's link; the session inside it "
                   "waits twice the dead timeout plus a ping interval.  Not with `proxy`.",
        },
    [CW_OPT_RELAY_TLS] =
        {
            .name = "relay-tls",
            .env = "CWORKER_RELAY_TLS",
            .type = CW_T_BOOL,
            .ctype = CW_C_BOOL,
            .off = OFF(relay_tls),
            .need = "needs true or false",
            .arg = "BOOL",
            .def = "false",
            .help = "TLS on the tunnel to the relay (its certificate checked as for `wss://`)",
            .doc = "With `relay`: TLS on the tunnel (the relay runs with `--tls-cert` and "
                   "`--tls-key`).  The relay's certificate and host name are checked as for a "
                   "`wss://` master, against `ca-file` or the system store; `client-cert` and "
                   "`client-key` are presented when set.  Without it anyone on the path can "
                   "read the stream and the tunnel's resume token.",
        },
    [CW_OPT_BACKOFF_MAX] =
        {
            .name = "backoff-max",
            .env = "CWORKER_BACKOFF_MAX",
            .type = CW_T_SECONDS,
            .ctype = CW_C_DOUBLE,
            .off = OFF(backoff_cap),
            .min = 1,
            .need = "needs a number of seconds >= 1",
            .arg = "SECONDS",
            .def = "30",
            .help = "longest delay between reconnect attempts",
            .doc = "The longest delay between reconnect attempts (exponential backoff with full "
                   "jitter; the first retry comes within 1 s).",
        },
    [CW_OPT_MAX_RETRIES] =
        {
            .name = "max-retries",
            .env = "CWORKER_MAX_RETRIES",
            .type = CW_T_NUMBER,
            .ctype = CW_C_INT,
            .off = OFF(max_retries),
            .max = INT_MAX,
            .need = "needs a number (0 = never stop)",
            .arg = "N",
            .def = "0",
            .tac = {"maxretries"},
            .tac_kind = CW_TAC_INT,
            .cw = "maxretries",
            .cw_arg = CW_CWARG_PYNUM,
            .help = "exit 1 after *N* failed connection attempts in a row (0 = never)",
            .doc = "Exit with status 1 after *N* failed connection attempts in a row; 0 never "
                   "gives up.",
        },
    [CW_OPT_PING_INTERVAL] =
        {
            .name = "ping-interval",
            .env = "CWORKER_PING_INTERVAL",
            .type = CW_T_SECONDS,
            .ctype = CW_C_MS,
            .off = OFF(ping_interval),
            .need = "needs a number of seconds",
            .arg = "SECONDS",
            .def = "10",
            .help = "WebSocket ping when the link is idle (0 = off)",
            .doc = "Send a WebSocket ping after this much silence; 0 turns pings off.",
        },
    [CW_OPT_DEAD_TIMEOUT] =
        {
            .name = "dead-timeout",
            .env = "CWORKER_DEAD_TIMEOUT",
            .type = CW_T_SECONDS,
            .ctype = CW_C_MS,
            .off = OFF(dead_timeout),
            .need = "needs a number of seconds",
            .arg = "SECONDS",
            .def = "30",
            .help = "drop the link after this long without data (0 = off)",
            .doc = "Drop and re-establish the link after this long without any data; 0 turns "
                   "it off.",
        },
    [CW_OPT_KEEPALIVE] =
        {
            .name = "keepalive",
            .env = "CWORKER_KEEPALIVE",
            .type = CW_T_SECONDS,
            .ctype = CW_C_MS,
            .off = OFF(keepalive),
            .need = "needs a number of seconds (0 = off)",
            .arg = "SECONDS",
            .def = "600",
            .tac = {"keepalive"},
            .tac_kind = CW_TAC_INT,
            .tac_none = "0",
            .cw = "keepalive",
            .cw_short = 'k',
            .cw_arg = CW_CWARG_INT,
            .help = "PB: call the master's keepalive() this often (0 = off); no effect over "
                    "msgpack",
            .doc = "Over PB, call the master's `keepalive()` every *SECONDS*, as the stock "
                   "worker does (the master notes that the worker is alive); 0 turns it off.  "
                   "No effect over msgpack, where WebSocket pings (`ping-interval`) do that "
                   "job; `--check-config` notes a keepalive set for msgpack.",
        },
    [CW_OPT_MAX_MESSAGE] =
        {
            .name = "max-message",
            .env = "CWORKER_MAX_MESSAGE",
            .type = CW_T_NUMBER,
            .ctype = CW_C_SIZE,
            .off = OFF(max_message),
            .min = 4096,
            .max = SIZE_MAX,
            .need = "needs a byte count >= 4096",
            .arg = "BYTES",
            .def = "67108864",
            .help = "largest message accepted from the master",
            .doc = "The largest message accepted from the master (64 MiB by default).",
        },
    [CW_OPT_MAX_COMMANDS] =
        {
            .name = "max-commands",
            .env = "CWORKER_MAX_COMMANDS",
            .type = CW_T_NUMBER,
            .ctype = CW_C_SIZE,
            .off = OFF(max_commands),
            .max = SIZE_MAX,
            .need = "needs a number",
            .arg = "N",
            .def = "0",
            .help = "refuse commands beyond *N* running at once (0 = no limit)",
            .doc = "Refuse commands beyond *N* running at once; 0: no limit.",
        },
    [CW_OPT_MAX_PENDING_OUTPUT] =
        {
            .name = "max-pending-output",
            .env = "CWORKER_MAX_PENDING_OUTPUT",
            .type = CW_T_NUMBER,
            .ctype = CW_C_SIZE,
            .off = OFF(max_pending_output),
            .min = 4096,
            .max = SIZE_MAX / 2,
            .none = "0",
            .need = "needs a byte count >= 4096 (0 = twice the master's buffer_size)",
            .arg = "BYTES",
            .def = "0",
            .help = "unsent output at which a command stops being read until the master "
                    "catches up (0 = twice the master's buffer_size)",
            .doc = "A command's unsent output at which its pipes stop being read until the "
                   "master has taken some of it; 0 is twice the master's `buffer_size` (128 KiB "
                   "by default).  Bounds the memory each command takes.",
        },
    [CW_OPT_FS_MAX_DEPTH] =
        {
            .name = "fs-max-depth",
            .env = "CWORKER_FS_MAX_DEPTH",
            .type = CW_T_NUMBER,
            .ctype = CW_C_UINT,
            .off = OFF(fs_max_depth),
            .min = 1,
            .max = 100000000,
            .need = "needs a number of levels from 1 to 100000000",
            .arg = "N",
            .def = "100000",
            .help = "deepest directory tree (or glob pattern, in components) a file command "
                    "walks; deeper ones fail that command",
            .doc = "The deepest directory tree that `rmdir`, `cpdir`, `glob` and DirectoryUpload "
                   "walk, and the most components a glob pattern may have; a deeper one fails "
                   "that command with a message naming this limit.  Walks hold a bounded number "
                   "of open directories and memory in proportion to one path, whatever the "
                   "depth.",
        },
    [CW_OPT_DRAIN_TIMEOUT] =
        {
            .name = "drain-timeout",
            .env = "CWORKER_DRAIN_TIMEOUT",
            .type = CW_T_SECONDS,
            .ctype = CW_C_MS,
            .off = OFF(drain_timeout),
            .need = "needs a number of seconds",
            .arg = "SECONDS",
            .def = "60",
            .help = "on SIGTERM, how long running commands may go on before they are "
                    "interrupted (0 = at once)",
            .doc = "On SIGTERM, how long running commands may go on before they are "
                   "interrupted; 0 interrupts at once.",
        },
    [CW_OPT_KILL_GRACE] =
        {
            .name = "kill-grace",
            .env = "CWORKER_KILL_GRACE",
            .type = CW_T_SECONDS,
            .ctype = CW_C_MS,
            .off = OFF(kill_grace),
            .need = "needs a number of seconds",
            .arg = "SECONDS",
            .def = "10",
            .help = "after an interrupt at exit, how long commands get before SIGKILL",
            .doc = "After an interrupt at exit, how long commands get before their process "
                   "groups are killed with SIGKILL.",
        },
    [CW_OPT_ALLOW_SHUTDOWN] =
        {
            .name = "allow-shutdown",
            .env = "CWORKER_ALLOW_SHUTDOWN",
            .type = CW_T_WORD,
            .ctype = CW_C_INT,
            .off = OFF(allow_shutdown),
            .none = "none",
            .words = "none signal file", /* the order of cw_allow_shutdown_t */
            .need = "needs signal, file or none",
            .arg = "signal|file|none",
            .def = "none",
            .tac = {"allow_shutdown"},
            .tac_kind = CW_TAC_STR,
            .tac_none = "none",
            .cw = "allow-shutdown",
            .cw_short = 'a',
            .cw_arg = CW_CWARG_STR,
            .help = "let the worker ask for a graceful shutdown: `signal` (SIGHUP) or `file` "
                    "(touching BASEDIR/shutdown.stamp)",
            .doc = "Let the worker ask for a graceful shutdown, as the stock `allow_shutdown`.  "
                   "`signal`: SIGHUP asks (with `log-file`, the log is then reopened on SIGUSR1 "
                   "instead of SIGHUP).  `file`: creating or touching `BASEDIR/shutdown.stamp` "
                   "asks (checked every few seconds; its modification time must be newer than "
                   "the worker's start).  Over PB the worker calls the master's `shutdown()`: "
                   "the master lets the running build finish, then tells the worker to stop.  "
                   "msgpack has no such call: the worker drains as on SIGTERM (running commands "
                   "finish, new ones are refused, then it exits).",
        },
    [CW_OPT_UMASK] =
        {
            .name = "umask",
            .env = "CWORKER_UMASK",
            .type = CW_T_UMASK,
            .ctype = CW_C_LONG,
            .off = OFF(umask),
            .none = "none",
            .need = "needs an octal mask such as 022 or 0o22 (at most 777), or none",
            .arg = "OCTAL",
            .def = "none",
            .def_doc = "inherited",
            .tac = {"umask"},
            .tac_kind = CW_TAC_UMASK,
            .cw = "umask",
            .cw_arg = CW_CWARG_PYNUM,
            .help = "set the umask at start-up, e.g. `022` (`none`: keep the inherited one)",
            .doc = "Set the process umask first thing at start-up, for example `022` or `0o22`; "
                   "`none` keeps the inherited one.",
        },
    [CW_OPT_DELETE_LEFTOVER_DIRS] =
        {
            .name = "delete-leftover-dirs",
            .env = "CWORKER_DELETE_LEFTOVER_DIRS",
            .type = CW_T_BOOL,
            .ctype = CW_C_BOOL,
            .off = OFF(delete_leftover_dirs),
            .need = "needs true or false",
            .arg = "BOOL",
            .def = "false",
            .tac = {"delete_leftover_dirs"},
            .tac_kind = CW_TAC_BOOL,
            .cw = "delete-leftover-dirs",
            .cw_arg = CW_CWARG_FLAG,
            .help = "let the master delete builder directories it no longer uses",
            .doc = "Tell the master it may delete builder directories it no longer uses.",
        },
    [CW_OPT_NUMCPUS] =
        {
            .name = "numcpus",
            .env = "CWORKER_NUMCPUS",
            .type = CW_T_NUMBER,
            .ctype = CW_C_UINT,
            .off = OFF(numcpus),
            .max = 1000000,
            .none = "auto",
            .need = "needs a number, or auto (or 0)",
            .arg = "N",
            .def = "auto",
            .tac = {"numcpus"},
            .tac_kind = CW_TAC_INT,
            .cw = "numcpus",
            .cw_arg = CW_CWARG_PYNUM,
            .help = "number of CPUs reported to the master in the worker info (`auto` or 0: the "
                    "CPUs this process may run on)",
            .doc = "The number of CPUs reported to the master in the worker info (`numcpus`; "
                   "builds read it as `%(worker:numcpus)s`); `auto` or 0: the CPUs cworker may "
                   "run on.",
        },
    [CW_OPT_METRICS_LISTEN] =
        {
            .name = "metrics-listen",
            .env = "CWORKER_METRICS_LISTEN",
            .type = CW_T_LISTEN,
            .ctype = CW_C_STR,
            .off = OFF(metrics_listen),
            .none = "none",
            .need = "needs IP:PORT or [IPv6]:PORT with a numeric address, e.g. 127.0.0.1:9101 "
                    "(or none)",
            .arg = "IP:PORT",
            .def_doc = "off",
            .help = "serve metrics on this address",
            .doc = "Serve metrics on this numeric address, `IP:PORT` or `[IPv6]:PORT`.",
        },
    [CW_OPT_LOG_FORMAT] =
        {
            .name = "log-format",
            .env = "CWORKER_LOG_FORMAT",
            .type = CW_T_WORD,
            .ctype = CW_C_INT,
            .off = OFF(log_format),
            .words = "text json",
            .need = "needs text or json",
            .arg = "text|json",
            .def = "text",
            .help = "`json`: every log line is a JSON object",
            .doc = "`json` makes every log line a JSON object with the keys `time`, `program`, "
                   "`level` and `msg`.",
        },
    [CW_OPT_LOG_FILE] =
        {
            .name = "log-file",
            .env = "CWORKER_LOG_FILE",
            .type = CW_T_PATH,
            .ctype = CW_C_STR,
            .off = OFF(log_file),
            .none = "none",
            .arg = "FILE",
            .def_doc = "stderr",
            .help = "log to *FILE* instead of stderr; SIGHUP reopens it (SIGUSR1 with "
                    "`allow-shutdown signal`)",
            .doc = "Append the log to *FILE* instead of standard error, rotated like the stock "
                   "`twistd.log` by `log-size` and `log-count`; SIGHUP reopens it, or SIGUSR1 "
                   "with `allow-shutdown signal`.  The stock worker's layout: `--log-file "
                   "BASEDIR/twistd.log`.",
        },
    [CW_OPT_LOG_SIZE] =
        {
            .name = "log-size",
            .env = "CWORKER_LOG_SIZE",
            .type = CW_T_NUMBER,
            .ctype = CW_C_U64,
            .off = OFF(log_size),
            .flags = CW_OPTF_LOGFILE,
            .max = UINT64_MAX,
            .need = "needs a byte count (0 = never rotate)",
            .arg = "BYTES",
            .def = "10000000",
            .tac = {"rotateLength"},
            .tac_kind = CW_TAC_INT,
            .cw = "log-size",
            .cw_short = 's',
            .cw_arg = CW_CWARG_INT,
            .help = "log-file: rotate *FILE* to *FILE*.1 before it exceeds *BYTES* (0 = never)",
            .doc = "With `log-file`: rotate before the file would exceed *BYTES* (a single "
                   "longer line gets a file of its own); 0 never rotates.  The default is the "
                   "stock `rotateLength`.",
        },
    [CW_OPT_LOG_COUNT] =
        {
            .name = "log-count",
            .env = "CWORKER_LOG_COUNT",
            .type = CW_T_NUMBER,
            .ctype = CW_C_UINT,
            .off = OFF(log_count),
            .flags = CW_OPTF_LOGFILE,
            .min = 1,
            .max = 100000,
            .none = "none",
            .need = "needs a number >= 1, or none (keep every rotated file)",
            .arg = "N",
            .def = "10",
            .tac = {"maxRotatedFiles"},
            .tac_kind = CW_TAC_INT,
            .tac_none = "none",
            .cw = "log-count",
            .cw_short = 'l',
            .cw_arg = CW_CWARG_PYNUM,
            .help = "log-file: rotated files kept, *FILE*.1 (newest) to *FILE*.*N* (`none`: "
                    "keep all)",
            .doc = "With `log-file`: keep *N* rotated files, *FILE*.1 (the newest) to "
                   "*FILE*.*N*; `none` keeps all.  The default is the stock `maxRotatedFiles`.",
        },
    [CW_OPT_VERBOSE] =
        {
            .name = "verbose",
            .env = "CWORKER_VERBOSE",
            .type = CW_T_BOOL,
            .ctype = CW_C_BOOL,
            .off = OFF(verbose),
            .need = "needs true or false",
            .arg = "BOOL",
            .def = "false",
            .help = "log protocol detail",
            .doc = "Log protocol detail (operation names and sequence numbers, never file "
                   "contents or build output).",
        },
    [CW_OPT_CONFIG] =
        {
            .name = "config",
            .env = "CWORKER_CONFIG",
            .type = CW_T_PATH,
            .flags = CW_OPTF_NOFILE,
            .arg = "FILE",
            .def_doc = "none",
            .help = "read options from *FILE* (`key = value` lines)",
            .doc = "Read options from *FILE*, a config file of `key = value` lines; not a key in "
                   "the file itself.",
        },
    [CW_OPT_FROM_TAC] =
        {
            .name = "from-tac",
            .env = "CWORKER_FROM_TAC",
            .type = CW_T_PATH,
            .arg = "FILE",
            .def_doc = "none",
            .help = "read the settings of a buildbot-worker's buildbot.tac",
            .doc = "Read the settings of an existing buildbot-worker from its `buildbot.tac`, "
                   "without running Python.",
        },
};

const cw_foreign_t cw_foreign[CW_NFOREIGN] = {
    {"maxdelay", 300, "maxdelay", 0, CW_CWARG_INT, NULL,
     "cworker's cap on the delay between reconnect attempts is backoff-max"},
    {NULL, 0, "no-logrotate", 'n', CW_CWARG_FLAG, NULL,
     "cworker logs to stderr unless log-file is set, and rotates only that"},
};

const cw_actiondef_t cw_actions[CW_ACT__COUNT] = {
    [CW_ACT_CHECK_CONFIG] = {"check-config", 0, NULL,
                             "validate everything without connecting, print the effective "
                             "configuration (password hidden), exit 0 or 2"},
    [CW_ACT_WRITE_CONFIG] = {"write-config", 0, "FILE",
                             "write the effective configuration as a config file (mode 0600; "
                             "--force replaces an existing FILE)"},
    [CW_ACT_FORCE] = {"force", 0, NULL, NULL},
    [CW_ACT_HELP_TABLE] = {"help-table", 0, "FORMAT", NULL},
    [CW_ACT_HELP] = {"help", 'h', NULL,
                     "this text; --version: the version; --help-table man|markdown: the options "
                     "as the man page's entries or README's table"},
    [CW_ACT_VERSION] = {"version", 0, NULL, NULL},
};

const cw_cwoptdef_t cw_cwopts[CW_CWOPT__COUNT] = {
    [CW_CWOPT_FORCE] = {"force", 'f', NULL, "replace an existing BASEDIR/cworker.conf"},
    [CW_CWOPT_RELOCATABLE] = {"relocatable", 'r', NULL,
                              "basedir = . (the directory of cworker.conf)"},
    [CW_CWOPT_QUIET] = {"quiet", 'q', NULL, "no progress messages"},
    [CW_CWOPT_ADMIN] = {"admin", 0, "TEXT", "contents of info/admin"},
    [CW_CWOPT_HOST] = {"host", 0, "TEXT", "contents of info/host"},
    [CW_CWOPT_HELP] = {"help", 'h', NULL, "this text"},
};

int cw_opt_find(const char *name, size_t len)
{
    for (int i = 0; i < CW_OPT__COUNT; i++) {
        const char *n = cw_optdefs[i].name;
        if (strlen(n) != len)
            continue;
        size_t k = 0;
        while (k < len && (name[k] == n[k] || (name[k] == '_' && n[k] == '-')))
            k++;
        if (k == len)
            return i;
    }
    return -1;
}
