/* cworker configuration: flags, CWORKER_* variables, config file, validation,
 * printing and --help (buildbot.tac import: tac.c; create-worker:
 * create_worker.c). */
#include "options.h"
#include "config_internal.h"
#include "cworker/cw.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cw_config.h"

#define MAX_FILE_SIZE (1u << 20) /* config files and tacs are small */

/* ------------------------------------------------------------------------ */
/* The option table                                                         */
/* ------------------------------------------------------------------------ */

typedef enum opt_type {
    T_MASTER,
    T_STR,
    T_PATH,
    T_SECRET,
    T_BOOL,
    T_SECONDS,
    T_SIZE,
    T_INT,
    T_UMASK,
    T_PROXY,
    T_LISTEN,
    T_LOGFMT,
} opt_type_t;

enum {
    F_NOFLAG = 1, /* never on the command line (the password) */
    F_NOFILE = 2, /* not a config-file key */
};

typedef struct optdef {
    const char *name;
    opt_type_t type;
    unsigned flags;
    const char *arg;  /* metavariable in --help */
    const char *def;  /* default, as shown in --help */
    const char *help; /* one line */
} optdef_t;

static const optdef_t optdefs[CW_OPT__COUNT] = {
    [CW_OPT_MASTER] = {"master", T_MASTER, 0, "URL", "required",
                       "the master's msgpack port: HOST:PORT, [V6ADDR]:PORT, ws://HOST:PORT/PATH "
                       "or wss://HOST:PORT/PATH"},
    [CW_OPT_NAME] = {"name", T_STR, 0, "NAME", "required",
                     "worker name, as in the master's worker.Worker(NAME, ...)"},
    [CW_OPT_BASEDIR] = {"basedir", T_PATH, 0, "DIR", "required",
                        "worker base directory (created if missing)"},
    [CW_OPT_PASSWORD_FILE] = {"password-file", T_PATH, 0, "FILE", "",
                              "the first line of FILE is the password"},
    [CW_OPT_PASSWORD] = {"password", T_SECRET, F_NOFLAG, "SECRET", "",
                         "the password itself (environment, or a config file only its owner "
                         "can read; never a flag)"},
    [CW_OPT_USE_TLS] = {"use-tls", T_BOOL, 0, "BOOL", "false",
                        "TLS to a HOST:PORT master (the same as a wss:// URL)"},
    [CW_OPT_CA_FILE] = {"ca-file", T_PATH, 0, "FILE", "system store",
                        "wss: trust the CA certificates in FILE (PEM)"},
    [CW_OPT_CLIENT_CERT] = {"client-cert", T_PATH, 0, "FILE", "none",
                            "wss: client certificate chain (PEM)"},
    [CW_OPT_CLIENT_KEY] = {"client-key", T_PATH, 0, "FILE", "none",
                           "wss: the client certificate's private key (PEM)"},
    [CW_OPT_PROXY] = {"proxy", T_PROXY, 0, "URL", "from environment",
                      "HTTP CONNECT proxy http://HOST:PORT ('none': direct); default: "
                      "https_proxy (wss) or http_proxy (ws), minus no_proxy"},
    [CW_OPT_BACKOFF_MAX] = {"backoff-max", T_SECONDS, 0, "SECONDS", "30",
                            "longest delay between reconnect attempts"},
    [CW_OPT_MAX_RETRIES] = {"max-retries", T_INT, 0, "N", "0",
                            "exit 1 after N failed connection attempts in a row (0 = never)"},
    [CW_OPT_PING_INTERVAL] = {"ping-interval", T_SECONDS, 0, "SECONDS", "10",
                              "WebSocket ping when the link is idle (0 = off)"},
    [CW_OPT_DEAD_TIMEOUT] = {"dead-timeout", T_SECONDS, 0, "SECONDS", "30",
                             "drop the link after this long without data (0 = off)"},
    [CW_OPT_MAX_MESSAGE] = {"max-message", T_SIZE, 0, "BYTES", "67108864",
                            "largest message accepted from the master"},
    [CW_OPT_MAX_COMMANDS] = {"max-commands", T_SIZE, 0, "N", "0",
                             "refuse commands beyond N running at once (0 = no limit)"},
    [CW_OPT_MAX_PENDING_OUTPUT] = {"max-pending-output", T_SIZE, 0, "BYTES", "0",
                                   "unsent output at which a command stops being read until "
                                   "the master catches up (0 = twice the master's buffer_size)"},
    [CW_OPT_FS_MAX_DEPTH] = {"fs-max-depth", T_INT, 0, "N", "100000",
                             "deepest directory tree (or glob pattern, in components) a file "
                             "command walks; deeper ones fail that command"},
    [CW_OPT_DRAIN_TIMEOUT] = {"drain-timeout", T_SECONDS, 0, "SECONDS", "60",
                              "on SIGTERM, how long running commands may go on before they "
                              "are interrupted (0 = at once)"},
    [CW_OPT_KILL_GRACE] = {"kill-grace", T_SECONDS, 0, "SECONDS", "10",
                           "after an interrupt at exit, how long commands get before SIGKILL"},
    [CW_OPT_UMASK] = {"umask", T_UMASK, 0, "OCTAL", "inherited",
                      "set the umask at start-up, e.g. 022 ('none': keep the inherited one)"},
    [CW_OPT_DELETE_LEFTOVER_DIRS] = {"delete-leftover-dirs", T_BOOL, 0, "BOOL", "false",
                                     "let the master delete builder directories it no longer "
                                     "uses"},
    [CW_OPT_NUMCPUS] = {"numcpus", T_INT, 0, "N", "auto",
                        "number of CPUs reported to the master in the worker info "
                        "(auto or 0: the CPUs this process may run on)"},
    [CW_OPT_METRICS_LISTEN] = {"metrics-listen", T_LISTEN, 0, "IP:PORT", "off",
                               "serve metrics on this address"},
    [CW_OPT_LOG_FORMAT] = {"log-format", T_LOGFMT, 0, "text|json", "text",
                           "json: every log line is a JSON object"},
    [CW_OPT_LOG_FILE] = {"log-file", T_PATH, 0, "FILE", "stderr",
                         "log to FILE instead of stderr; SIGHUP reopens it"},
    [CW_OPT_LOG_SIZE] = {"log-size", T_SIZE, 0, "BYTES", "10000000",
                         "log-file: rotate FILE to FILE.1 before it exceeds BYTES (0 = never)"},
    [CW_OPT_LOG_COUNT] = {"log-count", T_INT, 0, "N", "10",
                          "log-file: rotated files kept, FILE.1 (newest) to FILE.N "
                          "(none: keep all)"},
    [CW_OPT_VERBOSE] = {"verbose", T_BOOL, 0, "BOOL", "false", "log protocol detail"},
    [CW_OPT_CONFIG] = {"config", T_PATH, F_NOFILE, "FILE", "none",
                       "read options from FILE (key = value lines)"},
    [CW_OPT_FROM_TAC] = {"from-tac", T_PATH, 0, "FILE", "none",
                         "read the settings of a buildbot-worker's buildbot.tac"},
};

/* Find an option by its long name (also accepting '_' for '-'). */
static int opt_lookup(const char *name, size_t len)
{
    for (int i = 0; i < CW_OPT__COUNT; i++) {
        const char *n = optdefs[i].name;
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

/* An option's long name ("master"). */
const char *opt_name(cw_opt_id_t id)
{
    return optdefs[id].name;
}

/* ------------------------------------------------------------------------ */
/* Small helpers                                                            */
/* ------------------------------------------------------------------------ */

/* Write a message into err; returns -EINVAL for `return fail(...)`. */
int fail(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    if (errlen)
        vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return -EINVAL;
}

/* Out-of-memory message; returns -ENOMEM. */
int oom(char *err, size_t errlen)
{
    fail(err, errlen, "out of memory");
    return -ENOMEM;
}

/* printf into a new heap string (NULL when out of memory). */
char *xasprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *s = NULL;
    if (vasprintf(&s, fmt, ap) < 0)
        s = NULL;
    va_end(ap);
    return s;
}

/* A value for a message: control bytes shown as '?', cut at 100 bytes. */
void show(char *out, size_t cap, const char *v)
{
    size_t n = 0;
    for (; v && *v && n + 4 < cap && n < 100; v++)
        out[n++] = ((unsigned char)*v < 0x20 || *v == 0x7f) ? '?' : *v;
    if (v && *v && n + 4 < cap) {
        memcpy(out + n, "...", 3);
        n += 3;
    }
    out[n] = '\0';
}

/* "--master 'x'", "CWORKER_MASTER='x' (environment)", "FILE:3: master 'x'":
 * the option and its source, for error messages; secrets never shown. */
static void label(char *buf, size_t cap, cw_opt_id_t id, const cw_optval_t *v)
{
    char val[128];
    bool secret = optdefs[id].type == T_SECRET;
    show(val, sizeof val, v->value);
    switch (v->src) {
    case CW_SRC_FLAG: /* where is "--NAME", or "NAME argument" for create-worker */
        if (secret)
            snprintf(buf, cap, "%s", v->where);
        else
            snprintf(buf, cap, "%s '%s'", v->where, val);
        break;
    case CW_SRC_ENV:
        if (secret)
            snprintf(buf, cap, "%s (environment)", v->where);
        else
            snprintf(buf, cap, "%s='%s' (environment)", v->where, val);
        break;
    default:
        if (secret)
            snprintf(buf, cap, "%s: %s", v->where ? v->where : "?", optdefs[id].name);
        else
            snprintf(buf, cap, "%s: %s '%s'", v->where ? v->where : "?", optdefs[id].name, val);
        break;
    }
}

/* Error about one option's value: "<label>: <reason>". */
static int bad_value(char *err, size_t errlen, const cw_opts_t *o, cw_opt_id_t id, const char *fmt,
                     ...) __attribute__((format(printf, 5, 6)));
static int bad_value(char *err, size_t errlen, const cw_opts_t *o, cw_opt_id_t id, const char *fmt,
                     ...)
{
    char lab[320], why[512];
    label(lab, sizeof lab, id, &o->v[id]);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    return fail(err, errlen, "%s: %s", lab, why);
}

/* Remember a note for the user (best effort). */
void add_note(cw_opts_t *o, char *note)
{
    if (note == NULL)
        return;
    char **n = realloc(o->notes, (o->nnotes + 1) * sizeof *n);
    if (n == NULL) {
        free(note);
        return;
    }
    o->notes = n;
    o->notes[o->nnotes++] = note;
}

/* Free an optval's strings. */
static void optval_clear(cw_optval_t *v)
{
    if (v->value) {
        explicit_bzero(v->value, strlen(v->value));
        free(v->value);
    }
    free(v->where);
    free(v->bad);
    memset(v, 0, sizeof *v);
}

/* Record a value from src unless a source of higher precedence set it. */
int set_val(cw_opts_t *o, int id, const char *value, const char *where, cw_src_t src, char *err,
            size_t errlen)
{
    cw_optval_t *v = &o->v[id];
    if (v->src > src)
        return 0;
    char *nv = strdup(value), *nw = strdup(where);
    if (nv == NULL || nw == NULL) {
        free(nv);
        free(nw);
        return oom(err, errlen);
    }
    optval_clear(v);
    v->value = nv;
    v->where = nw;
    v->src = src;
    return 0;
}

/* Record that src had a value for id we cannot use (reported only if
 * nothing of higher precedence sets the option). */
int set_bad(cw_opts_t *o, int id, const char *where, cw_src_t src, const char *why, char *err,
            size_t errlen)
{
    cw_optval_t *v = &o->v[id];
    if (v->src > src)
        return 0;
    char *nw = strdup(where), *nb = strdup(why);
    if (nw == NULL || nb == NULL) {
        free(nw);
        free(nb);
        return oom(err, errlen);
    }
    optval_clear(v);
    v->where = nw;
    v->bad = nb;
    v->src = src;
    return 0;
}

/* dirname(file) + "/" + rel, for relative paths inside a file; an absolute
 * rel or a file in the current directory leaves rel as it is. */
char *path_relative_to(const char *file, const char *rel)
{
    const char *slash = strrchr(file, '/');
    if (rel[0] == '/' || rel[0] == '\0' || slash == NULL)
        return strdup(rel);
    if (slash == file)
        return xasprintf("/%s", rel);
    return xasprintf("%.*s/%s", (int)(slash - file), file, rel);
}

/* Case-insensitive "none"/"off" (and the empty string when allow_empty). */
static bool is_none(const char *s)
{
    return s[0] == '\0' || strcasecmp(s, "none") == 0 || strcasecmp(s, "off") == 0;
}

void cw_opts_init(cw_opts_t *o)
{
    memset(o, 0, sizeof *o);
}

void cw_opts_free(cw_opts_t *o)
{
    for (int i = 0; i < CW_OPT__COUNT; i++)
        optval_clear(&o->v[i]);
    free(o->write_config);
    free(o->tac_protocol);
    free(o->tac_protocol_where);
    free(o->proxy_env);
    for (size_t i = 0; i < o->nnotes; i++)
        free(o->notes[i]);
    free(o->notes);
    memset(o, 0, sizeof *o);
}

/* ------------------------------------------------------------------------ */
/* Value parsers                                                            */
/* ------------------------------------------------------------------------ */

/* Decimal digits only, into an unsigned 64-bit value. */
int parse_u64(const char *s, uint64_t *out)
{
    if (*s == '\0')
        return -1;
    uint64_t v = 0;
    for (; *s; s++) {
        if (*s < '0' || *s > '9')
            return -1;
        unsigned d = (unsigned)(*s - '0');
        if (v > (UINT64_MAX - d) / 10)
            return -1;
        v = v * 10 + d;
    }
    *out = v;
    return 0;
}

/* A non-negative number of seconds, at most 10^7. */
static int parse_seconds(const char *s, double *out)
{
    char *end;
    if (*s == '\0' || isspace((unsigned char)*s))
        return -1;
    errno = 0;
    double v = strtod(s, &end);
    if (*end != '\0' || errno || !(v >= 0) || v > 1e7)
        return -1;
    *out = v;
    return 0;
}

/* true/false/yes/no/on/off/1/0. */
static int parse_bool(const char *s, bool *out)
{
    static const char *yes[] = {"true", "yes", "on", "1"};
    static const char *no[] = {"false", "no", "off", "0"};
    for (size_t i = 0; i < 4; i++) {
        if (strcasecmp(s, yes[i]) == 0) {
            *out = true;
            return 0;
        }
        if (strcasecmp(s, no[i]) == 0) {
            *out = false;
            return 0;
        }
    }
    return -1;
}

/* "022", "0022", "0o22" (octal, at most 0777) or none. */
static int parse_umask(const char *s, long *out)
{
    if (is_none(s)) {
        *out = -1;
        return 0;
    }
    if (s[0] == '0' && (s[1] == 'o' || s[1] == 'O'))
        s += 2;
    if (*s == '\0')
        return -1;
    long v = 0;
    for (; *s; s++) {
        if (*s < '0' || *s > '7')
            return -1;
        v = v * 8 + (*s - '0');
        if (v > 0777)
            return -1;
    }
    *out = v;
    return 0;
}

/* A host name, IPv4 address or (bracket-less) IPv6 address with an
 * optional %zone: the characters that can appear in one. */
bool valid_host(const char *h, bool v6)
{
    if (*h == '\0' || strlen(h) > 253)
        return false;
    for (const char *p = h; *p; p++) {
        unsigned char c = (unsigned char)*p;
        if (isalnum(c) || c == '.' || c == '-' || c == '_')
            continue;
        if (v6 && (c == ':' || c == '%'))
            continue;
        return false;
    }
    return true;
}

/* Split "HOST[:PORT]" / "[V6][:PORT]" (len bytes of s).  *port stays
 * untouched when absent.  0 or -1. */
int split_hostport(const char *s, size_t len, char **host, int *port, bool *had_port)
{
    char *tmp = strndup(s, len);
    if (tmp == NULL)
        return -1;
    char *h = tmp, *p = NULL;
    bool v6 = false;
    if (tmp[0] == '[') {
        char *end = strchr(tmp, ']');
        if (end == NULL)
            goto bad;
        *end = '\0';
        h = tmp + 1;
        v6 = true;
        if (end[1] == ':')
            p = end + 2;
        else if (end[1] != '\0')
            goto bad;
    } else {
        char *colon = strrchr(tmp, ':');
        if (colon) {
            if (strchr(tmp, ':') != colon)
                goto bad; /* a bare IPv6 address needs brackets */
            *colon = '\0';
            p = colon + 1;
        }
    }
    if (!valid_host(h, v6) || (v6 && strchr(h, ':') == NULL))
        goto bad;
    if (had_port)
        *had_port = p != NULL;
    if (p) {
        uint64_t v;
        if (parse_u64(p, &v) < 0 || v < 1 || v > 65535)
            goto bad;
        *port = (int)v;
    }
    *host = strdup(h);
    free(tmp);
    return *host ? 0 : -1;
bad:
    free(tmp);
    return -1;
}

/* Parse "HOST[:PORT]", "[V6][:PORT]" or "ws[s]://HOST[:PORT]/PATH" into
 * cfg (port defaults: 9989, or 80/443 in the URL forms). */
static int parse_master(const char *s, cw_config_t *cfg, bool *explicit_ws)
{
    const char *hp = s;
    bool url = false, tls = false;
    *explicit_ws = false;
    if (strncmp(s, "ws://", 5) == 0) {
        hp = s + 5;
        url = true;
        *explicit_ws = true;
    } else if (strncmp(s, "wss://", 6) == 0) {
        hp = s + 6;
        url = true;
        tls = true;
    } else if (strstr(s, "://") || strchr(s, '/')) {
        return -1;
    }
    const char *slash = url ? strchr(hp, '/') : NULL;
    size_t hplen = slash ? (size_t)(slash - hp) : strlen(hp);
    int port = url ? (tls ? 443 : 80) : 9989;
    char *host = NULL;
    if (split_hostport(hp, hplen, &host, &port, NULL) < 0)
        return -1;
    char *path = strdup(slash ? slash : "/");
    if (path == NULL) {
        free(host);
        return -1;
    }
    for (const char *c = path; *c; c++) {
        if ((unsigned char)*c <= 0x20 || *c == 0x7f) {
            free(host);
            free(path);
            return -1;
        }
    }
    free(cfg->master_host);
    free(cfg->master_path);
    cfg->master_host = host;
    cfg->master_port = port;
    cfg->master_path = path;
    cfg->use_tls = tls;
    return 0;
}

int cw_hostport_parse(const char *s, char **host, int *port)
{
    char *h = NULL;
    int p = 0;
    bool had = false;
    if (split_hostport(s, strlen(s), &h, &p, &had) < 0)
        return -EINVAL;
    unsigned char buf[16];
    if (!had || (inet_pton(AF_INET, h, buf) != 1 && inet_pton(AF_INET6, h, buf) != 1)) {
        free(h);
        return -EINVAL;
    }
    *host = h;
    *port = p;
    return 0;
}

/* Decode %XX escapes into a new string; NULL on a bad or NUL escape. */
static char *percent_decode(const char *s, size_t len)
{
    char *out = malloc(len + 1);
    if (out == NULL)
        return NULL;
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '%') {
            if (i + 2 >= len || !isxdigit((unsigned char)s[i + 1]) ||
                !isxdigit((unsigned char)s[i + 2])) {
                free(out);
                return NULL;
            }
            char hex[3] = {s[i + 1], s[i + 2], 0};
            long c = strtol(hex, NULL, 16);
            if (c == 0) {
                free(out);
                return NULL;
            }
            out[n++] = (char)c;
            i += 2;
        } else {
            out[n++] = s[i];
        }
    }
    out[n] = '\0';
    return out;
}

void cw_proxy_free(cw_proxy_t *p)
{
    free(p->host);
    if (p->password) {
        explicit_bzero(p->password, strlen(p->password));
        free(p->password);
    }
    free(p->user);
    memset(p, 0, sizeof *p);
}

int cw_proxy_parse(const char *url, cw_proxy_t *p)
{
    memset(p, 0, sizeof *p);
    const char *s = url;
    if (strncasecmp(s, "http://", 7) == 0)
        s += 7;
    else if (strstr(s, "://"))
        return -EINVAL;
    size_t len = strcspn(s, "/");
    if (s[len] == '/' && s[len + 1] != '\0')
        return -EINVAL; /* a path makes no sense for a CONNECT proxy */
    const char *at = cw_memrchr(s, '@', len);
    const char *hp = s;
    if (at) {
        const char *colon = memchr(s, ':', (size_t)(at - s));
        size_t ulen = colon ? (size_t)(colon - s) : (size_t)(at - s);
        p->user = percent_decode(s, ulen);
        if (colon)
            p->password = percent_decode(colon + 1, (size_t)(at - colon - 1));
        if (p->user == NULL || (colon && p->password == NULL) || strchr(p->user, ':')) {
            cw_proxy_free(p);
            return -EINVAL;
        }
        hp = at + 1;
    }
    p->port = 80;
    if (split_hostport(hp, len - (size_t)(hp - s), &p->host, &p->port, NULL) < 0) {
        cw_proxy_free(p);
        return -EINVAL;
    }
    return 0;
}

/* The canonical "http://[userinfo@]host:port" form of a valid proxy URL. */
static char *proxy_normalise(const char *url)
{
    cw_proxy_t p;
    if (cw_proxy_parse(url, &p) < 0)
        return NULL;
    const char *s = strncasecmp(url, "http://", 7) == 0 ? url + 7 : url;
    size_t len = strcspn(s, "/");
    const char *at = cw_memrchr(s, '@', len);
    bool v6 = strchr(p.host, ':') != NULL;
    char *out = xasprintf("http://%.*s%s%s%s:%d", at ? (int)(at - s + 1) : 0, s, v6 ? "[" : "",
                          p.host, v6 ? "]" : "", p.port);
    cw_proxy_free(&p);
    return out;
}

/* Parse an IPv4/IPv6 literal (optionally bracketed); family or 0. */
static int ip_literal(const char *s, size_t len, unsigned char out[16])
{
    char buf[64];
    if (len >= 2 && s[0] == '[' && s[len - 1] == ']') {
        s++;
        len -= 2;
    }
    if (len == 0 || len >= sizeof buf)
        return 0;
    memcpy(buf, s, len);
    buf[len] = '\0';
    if (inet_pton(AF_INET, buf, out) == 1)
        return AF_INET;
    if (inet_pton(AF_INET6, buf, out) == 1)
        return AF_INET6;
    return 0;
}

/* Does one no_proxy entry (len bytes at e) cover host:port? */
static bool no_proxy_entry(const char *e, size_t len, const char *host, int port)
{
    if (len == 1 && e[0] == '*')
        return true;
    /* an optional :PORT (after "]" for bracketed IPv6, or the only colon) */
    const char *colon = NULL;
    if (e[0] == '[') {
        const char *rb = memchr(e, ']', len);
        if (rb && rb + 1 < e + len && rb[1] == ':')
            colon = rb + 1;
    } else {
        const char *c1 = memchr(e, ':', len);
        if (c1 && memchr(c1 + 1, ':', len - (size_t)(c1 - e) - 1) == NULL)
            colon = c1;
    }
    if (colon) {
        char pb[8];
        size_t pl = len - (size_t)(colon + 1 - e);
        uint64_t pv;
        if (pl == 0 || pl >= sizeof pb)
            return false;
        memcpy(pb, colon + 1, pl);
        pb[pl] = '\0';
        if (parse_u64(pb, &pv) < 0 || pv != (uint64_t)port)
            return false;
        len = (size_t)(colon - e);
    }
    unsigned char ha[16], ea[16];
    int hf = ip_literal(host, strlen(host), ha);
    const char *slash = memchr(e, '/', len);
    if (slash) { /* CIDR block */
        char pb[8];
        size_t pl = len - (size_t)(slash + 1 - e);
        uint64_t bits;
        int ef = ip_literal(e, (size_t)(slash - e), ea);
        if (ef == 0 || ef != hf || pl == 0 || pl >= sizeof pb)
            return false;
        memcpy(pb, slash + 1, pl);
        pb[pl] = '\0';
        if (parse_u64(pb, &bits) < 0 || bits > (ef == AF_INET ? 32u : 128u))
            return false;
        for (unsigned i = 0; i < bits; i++) {
            unsigned char m = (unsigned char)(0x80u >> (i % 8));
            if ((ha[i / 8] & m) != (ea[i / 8] & m))
                return false;
        }
        return true;
    }
    int ef = ip_literal(e, len, ea);
    if (ef || hf)
        return ef == hf && memcmp(ha, ea, ef == AF_INET ? 4 : 16) == 0;
    /* domain suffix: "example.com", ".example.com" and "*.example.com" all
     * cover example.com and every name below it */
    if (len >= 2 && e[0] == '*' && e[1] == '.') {
        e += 2;
        len -= 2;
    } else if (len >= 1 && e[0] == '.') {
        e++;
        len--;
    }
    size_t hl = strlen(host);
    if (hl && host[hl - 1] == '.')
        hl--;
    if (len && e[len - 1] == '.')
        len--;
    if (len == 0 || hl < len || strncasecmp(host + hl - len, e, len) != 0)
        return false;
    return hl == len || host[hl - len - 1] == '.';
}

bool cw_no_proxy_match(const char *list, const char *host, int port)
{
    if (list == NULL || host == NULL)
        return false;
    const char *p = list;
    while (*p) {
        p += strspn(p, ", \t");
        size_t len = strcspn(p, ", \t");
        if (len && no_proxy_entry(p, len, host, port))
            return true;
        p += len;
    }
    return false;
}

/* ------------------------------------------------------------------------ */
/* Command line and environment                                             */
/* ------------------------------------------------------------------------ */

int cw_opts_parse_argv(cw_opts_t *o, int argc, char **argv, char *err, size_t errlen)
{
    if (argc > 1 && strcmp(argv[1], "create-worker") == 0) {
        o->action = CW_ACTION_CREATE;
        o->create_argc = argc - 2;
        o->create_argv = argv + 2;
        return 0;
    }
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-h") == 0) {
            o->action = CW_ACTION_HELP;
            return 0;
        }
        if (strncmp(a, "--", 2) != 0 || a[2] == '\0')
            return fail(err, errlen, "unexpected argument '%s'", a);
        const char *name = a + 2, *eq = strchr(name, '=');
        size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
        const char *inline_val = eq ? eq + 1 : NULL;
#define IS(s) (nlen == strlen(s) && strncmp(name, s, nlen) == 0)
        if (IS("help") || IS("version") || IS("check-config") || IS("force")) {
            if (inline_val)
                return fail(err, errlen, "option '--%.*s' takes no value", (int)nlen, name);
            if (IS("help") || IS("version")) {
                o->action = IS("help") ? CW_ACTION_HELP : CW_ACTION_VERSION;
                return 0;
            }
            if (IS("force"))
                o->force = true;
            else if (o->action != CW_ACTION_WRITE)
                o->action = CW_ACTION_CHECK;
            continue;
        }
        if (IS("write-config")) {
            const char *val = inline_val;
            if (val == NULL && i + 1 < argc)
                val = argv[++i];
            if (val == NULL || *val == '\0')
                return fail(err, errlen, "option '--write-config' needs a file name");
            free(o->write_config);
            o->write_config = strdup(val);
            if (o->write_config == NULL)
                return oom(err, errlen);
            o->action = CW_ACTION_WRITE;
            continue;
        }
#undef IS
        int id = -1;
        for (int k = 0; k < CW_OPT__COUNT; k++)
            if (strlen(optdefs[k].name) == nlen && strncmp(optdefs[k].name, name, nlen) == 0)
                id = k;
        if (id < 0)
            return fail(err, errlen, "unknown option '--%.*s'", (int)nlen, name);
        if (optdefs[id].flags & F_NOFLAG)
            return fail(err, errlen,
                        "--%s: the password is never taken from the command line (every "
                        "user can read it there); use --password-file FILE, CWORKER_PASSWORD, "
                        "or password = ... in a config file only its owner can read",
                        optdefs[id].name);
        const char *val = inline_val;
        if (optdefs[id].type == T_BOOL && val == NULL)
            val = "true";
        if (val == NULL && i + 1 < argc)
            val = argv[++i];
        if (val == NULL)
            return fail(err, errlen, "option '--%s' needs a value", optdefs[id].name);
        char where[64];
        snprintf(where, sizeof where, "--%s", optdefs[id].name);
        int rc = set_val(o, id, val, where, CW_SRC_FLAG, err, errlen);
        if (rc < 0)
            return rc;
    }
    if (o->force && o->action != CW_ACTION_WRITE)
        return fail(err, errlen, "--force only goes with --write-config FILE");
    return 0;
}

int cw_opts_parse_env(cw_opts_t *o, char *const *envp, char *err, size_t errlen)
{
    for (char *const *e = envp; e && *e; e++) {
        if (strncmp(*e, "CWORKER_", 8) != 0)
            continue;
        const char *name = *e + 8, *eq = strchr(name, '=');
        if (eq == NULL || eq[1] == '\0' || eq == name)
            continue;
        size_t nlen = (size_t)(eq - name);
        char lower[64];
        if (nlen >= sizeof lower)
            continue;
        bool ok = true;
        for (size_t k = 0; k < nlen; k++) {
            char c = name[k];
            if (c == '_')
                lower[k] = '-';
            else if (c >= 'A' && c <= 'Z')
                lower[k] = (char)(c - 'A' + 'a');
            else if (c >= '0' && c <= '9')
                lower[k] = c;
            else
                ok = false;
        }
        int id = ok ? opt_lookup(lower, nlen) : -1;
        if (id < 0)
            continue; /* CWORKER_BIN and friends belong to others */
        char where[80];
        snprintf(where, sizeof where, "%.*s", (int)(eq - *e), *e);
        int rc = set_val(o, id, eq + 1, where, CW_SRC_ENV, err, errlen);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Config file                                                              */
/* ------------------------------------------------------------------------ */

/* Decode a double-quoted value starting at s (after the opening quote);
 * only blanks may follow the closing quote.  NULL with *why on error. */
static char *unquote(const char *s, const char *end, const char **why)
{
    char *out = malloc((size_t)(end - s) + 1);
    size_t n = 0;
    if (out == NULL) {
        *why = "out of memory";
        return NULL;
    }
    while (s < end && *s != '"') {
        char c = *s++;
        if (c == '\\') {
            if (s >= end)
                break;
            c = *s++;
            switch (c) {
            case '\\':
            case '"':
                break;
            case 'n':
                c = '\n';
                break;
            case 't':
                c = '\t';
                break;
            case 'r':
                c = '\r';
                break;
            case 'x': {
                char hex[3] = {0, 0, 0};
                if (end - s >= 2 && isxdigit((unsigned char)s[0]) &&
                    isxdigit((unsigned char)s[1])) {
                    hex[0] = s[0];
                    hex[1] = s[1];
                    s += 2;
                }
                c = (char)strtol(hex, NULL, 16);
                if (c != 0)
                    break;
                *why = "bad \\x escape (two hex digits, not 00)";
                free(out);
                return NULL;
            }
            default:
                *why = "unknown escape in a quoted value (use \\\\ \\\" \\n \\t \\r \\xHH)";
                free(out);
                return NULL;
            }
        }
        out[n++] = c;
    }
    if (s >= end) {
        *why = "missing closing '\"'";
        free(out);
        return NULL;
    }
    for (s++; s < end; s++) {
        if (*s != ' ' && *s != '\t') {
            *why = "text after the closing '\"'";
            free(out);
            return NULL;
        }
    }
    out[n] = '\0';
    return out;
}

int cw_opts_parse_conf(cw_opts_t *o, const char *text, size_t len, const char *path, unsigned mode,
                       char *err, size_t errlen)
{
    int seen[CW_OPT__COUNT] = {0};
    const char *p = text, *end = text + len;
    if (len >= 3 && memcmp(p, "\xef\xbb\xbf", 3) == 0)
        p += 3;
    for (int line = 1; p < end; line++) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *le = nl ? nl : end;
        const char *next = nl ? nl + 1 : end;
        if (memchr(p, '\0', (size_t)(le - p)))
            return fail(err, errlen, "%s:%d: NUL byte in the line", path, line);
        if (le > p && le[-1] == '\r')
            le--;
        while (p < le && (*p == ' ' || *p == '\t'))
            p++;
        while (le > p && (le[-1] == ' ' || le[-1] == '\t'))
            le--;
        if (p == le || *p == '#') {
            p = next;
            continue;
        }
        const char *eq = memchr(p, '=', (size_t)(le - p));
        if (eq == NULL)
            return fail(err, errlen, "%s:%d: expected 'key = value'", path, line);
        const char *ke = eq;
        while (ke > p && (ke[-1] == ' ' || ke[-1] == '\t'))
            ke--;
        int id = opt_lookup(p, (size_t)(ke - p));
        if (id < 0) {
            char k[80];
            snprintf(k, sizeof k, "%.*s", (int)(ke - p > 60 ? 60 : ke - p), p);
            show(k, sizeof k, k);
            return fail(err, errlen, "%s:%d: unknown key '%s' (see cworker --help)", path, line, k);
        }
        if (optdefs[id].flags & F_NOFILE)
            return fail(err, errlen, "%s:%d: '%s' cannot be set inside a config file", path, line,
                        optdefs[id].name);
        if (seen[id])
            return fail(err, errlen, "%s:%d: '%s' was already set on line %d", path, line,
                        optdefs[id].name, seen[id]);
        seen[id] = line;
        const char *v = eq + 1;
        while (v < le && (*v == ' ' || *v == '\t'))
            v++;
        char *value;
        if (v < le && *v == '"') {
            const char *why = NULL;
            value = unquote(v + 1, le, &why);
            if (value == NULL)
                return fail(err, errlen, "%s:%d: %s: %s", path, line, optdefs[id].name, why);
        } else {
            value = strndup(v, (size_t)(le - v));
        }
        if (value == NULL)
            return oom(err, errlen);
        if (id == CW_OPT_PASSWORD && (mode & 077)) {
            explicit_bzero(value, strlen(value));
            free(value);
            return fail(err, errlen,
                        "%s:%d: password in a file that group or others can access (mode "
                        "%04o); refusing it: run chmod 600 '%s', or use password-file",
                        path, line, mode & 07777, path);
        }
        if (optdefs[id].type == T_PATH && value[0] != '\0') {
            char *abs = path_relative_to(path, value);
            free(value);
            if (abs == NULL)
                return oom(err, errlen);
            value = abs;
        }
        char where[PATH_MAX + 32];
        snprintf(where, sizeof where, "%s:%d", path, line);
        int rc = set_val(o, id, value, where, CW_SRC_FILE, err, errlen);
        explicit_bzero(value, strlen(value));
        free(value);
        if (rc < 0)
            return rc;
        p = next;
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Reading the files                                                        */
/* ------------------------------------------------------------------------ */

/* Read a small regular file; *mode gets its permission bits.  O_NONBLOCK:
 * a FIFO (or a device) given by mistake is refused by the fstat below
 * instead of blocking start-up until a writer appears. */
static int read_file(const char *path, char **text, size_t *len, unsigned *mode, char *err,
                     size_t errlen, const char *what, const char *where)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd < 0)
        return fail(err, errlen, "cannot read %s '%s' (%s): %s", what, path, where,
                    strerror(errno));
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size > MAX_FILE_SIZE) {
        int e = errno;
        close(fd);
        return fail(err, errlen, "cannot read %s '%s' (%s): %s", what, path, where,
                    !S_ISREG(st.st_mode)         ? "not a regular file"
                    : st.st_size > MAX_FILE_SIZE ? "larger than 1 MiB"
                                                 : strerror(e));
    }
    char *buf = malloc((size_t)st.st_size + 1);
    if (buf == NULL) {
        close(fd);
        return oom(err, errlen);
    }
    size_t n = 0;
    while (n < (size_t)st.st_size) {
        ssize_t r = read(fd, buf + n, (size_t)st.st_size - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        n += (size_t)r;
    }
    close(fd);
    buf[n] = '\0';
    *text = buf;
    *len = n;
    *mode = st.st_mode & 07777;
    return 0;
}

int cw_opts_load_files(cw_opts_t *o, char *err, size_t errlen)
{
    char *text = NULL;
    size_t len = 0;
    unsigned mode = 0;
    int rc;
    cw_optval_t *c = &o->v[CW_OPT_CONFIG];
    if (c->value && c->value[0]) {
        char *path = strdup(c->value);
        if (path == NULL)
            return oom(err, errlen);
        rc = read_file(path, &text, &len, &mode, err, errlen, "config file", c->where);
        if (rc == 0)
            rc = cw_opts_parse_conf(o, text, len, path, mode, err, errlen);
        if (text)
            explicit_bzero(text, len);
        free(text);
        free(path);
        text = NULL;
        if (rc < 0)
            return rc;
    }
    cw_optval_t *t = &o->v[CW_OPT_FROM_TAC];
    if (t->value && t->value[0]) {
        char *path = strdup(t->value);
        if (path == NULL)
            return oom(err, errlen);
        rc = read_file(path, &text, &len, &mode, err, errlen, "buildbot.tac", t->where);
        if (rc == 0)
            rc = cw_opts_parse_tac(o, text, len, path, mode, err, errlen);
        if (text)
            explicit_bzero(text, len);
        free(text);
        free(path);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Validation                                                               */
/* ------------------------------------------------------------------------ */

void cw_config_free(cw_config_t *cfg)
{
    if (cfg->password) {
        explicit_bzero(cfg->password, strlen(cfg->password));
        free(cfg->password);
    }
    free(cfg->master_host);
    free(cfg->master_path);
    free(cfg->name);
    free(cfg->basedir);
    free(cfg->ca_file);
    free(cfg->client_cert);
    free(cfg->client_key);
    free(cfg->proxy);
    free(cfg->metrics_listen);
    free(cfg->password_file);
    free(cfg->log_file);
    memset(cfg, 0, sizeof *cfg);
}

/* The defaults (the values --help shows). */
static void config_defaults(cw_config_t *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->backoff_cap = 30;
    cfg->ping_interval = 10000;
    cfg->dead_timeout = 30000;
    cfg->max_message = 64u << 20;
    cfg->kill_grace = 10000;
    cfg->drain_timeout = 60000;
    cfg->fs_max_depth = 100000;
    cfg->umask = -1;
    cfg->log_size = 10000000; /* the stock buildbot.tac's rotateLength */
    cfg->log_count = 10;      /* and maxRotatedFiles */
}

/* First non-empty variable among names in envp; *which gets its name. */
static const char *env_get(char *const *envp, const char *const *names, const char **which)
{
    for (; *names; names++) {
        size_t n = strlen(*names);
        for (char *const *e = envp; e && *e; e++) {
            if (strncmp(*e, *names, n) == 0 && (*e)[n] == '=' && (*e)[n + 1] != '\0') {
                *which = *names;
                return *e + n + 1;
            }
        }
    }
    return NULL;
}

/* Choose cfg->proxy: explicit option, else the environment's. */
static int resolve_proxy(cw_opts_t *o, char *const *envp, cw_config_t *cfg, char *err,
                         size_t errlen)
{
    cw_optval_t *v = &o->v[CW_OPT_PROXY];
    free(o->proxy_env);
    o->proxy_env = NULL;
    if (v->value) {
        o->proxy_from = NULL; /* the option's own source */
        if (is_none(v->value))
            return 0;
        if (strncasecmp(v->value, "https://", 8) == 0)
            return bad_value(err, errlen, o, CW_OPT_PROXY,
                             "TLS to the proxy itself is not supported; use http://HOST:PORT "
                             "(the tunnel to a wss:// master is still TLS end to end)");
        cfg->proxy = proxy_normalise(v->value);
        if (cfg->proxy == NULL)
            return bad_value(err, errlen, o, CW_OPT_PROXY,
                             "not an HTTP proxy URL http://[USER:PASS@]HOST[:PORT]");
        return 0;
    }
    static const char *const https_names[] = {"https_proxy", "HTTPS_PROXY", NULL};
    static const char *const http_names[] = {"http_proxy", "HTTP_PROXY", NULL};
    static const char *const no_names[] = {"no_proxy", "NO_PROXY", NULL};
    const char *which = NULL, *nwhich = NULL;
    const char *val = env_get(envp, cfg->use_tls ? https_names : http_names, &which);
    if (val == NULL) {
        o->proxy_from = "default: no proxy variable in the environment";
        return 0;
    }
    const char *np = env_get(envp, no_names, &nwhich);
    if (np && cw_no_proxy_match(np, cfg->master_host, cfg->master_port)) {
        o->proxy_from = "no_proxy/NO_PROXY covers the master";
        return 0;
    }
    o->proxy_env = strdup(which);
    o->proxy_from = "environment";
    cfg->proxy = strncasecmp(val, "https://", 8) == 0 ? NULL : proxy_normalise(val);
    if (cfg->proxy == NULL) {
        char shown[128];
        show(shown, sizeof shown, val);
        return fail(err, errlen,
                    "%s='%s' (environment): cworker can only use an HTTP proxy "
                    "http://HOST:PORT; set proxy = none (or --proxy none, CWORKER_PROXY=none) "
                    "to connect directly",
                    which, shown);
    }
    return 0;
}

/* Convert seconds to ms, rounding (so printed values read back exactly). */
static uint64_t secs_to_ms(double s)
{
    return (uint64_t)llround(s * 1000.0);
}

int cw_config_resolve(cw_opts_t *o, char *const *envp, cw_config_t *cfg, char *err, size_t errlen)
{
    int rc;
    config_defaults(cfg);
    /* a source had a value cworker cannot use, and nothing overrides it */
    for (int id = 0; id < CW_OPT__COUNT; id++) {
        if (o->v[id].bad) {
            rc = fail(err, errlen, "%s: %s", o->v[id].where, o->v[id].bad);
            goto bad;
        }
    }
    cw_optval_t *v = o->v;
#define SRC(id) (v[id].value != NULL)

    if (!SRC(CW_OPT_MASTER)) {
        rc = fail(err, errlen,
                  "no master: --master HOST:PORT is required (or CWORKER_MASTER, or master = "
                  "... in the config file)");
        goto bad;
    }
    bool explicit_ws = false;
    if (parse_master(v[CW_OPT_MASTER].value, cfg, &explicit_ws) < 0) {
        rc = bad_value(err, errlen, o, CW_OPT_MASTER,
                       "not HOST:PORT, [V6ADDR]:PORT, ws://HOST:PORT/PATH or "
                       "wss://HOST:PORT/PATH");
        goto bad;
    }
    if (SRC(CW_OPT_USE_TLS)) {
        bool tls;
        if (parse_bool(v[CW_OPT_USE_TLS].value, &tls) < 0) {
            rc = bad_value(err, errlen, o, CW_OPT_USE_TLS, "needs true or false");
            goto bad;
        }
        if (tls && explicit_ws) {
            rc = bad_value(err, errlen, o, CW_OPT_USE_TLS,
                           "conflicts with the ws:// master URL (use wss://)");
            goto bad;
        }
        cfg->use_tls = cfg->use_tls || tls;
    }
    if (cfg->use_tls && !CW_HAVE_TLS) {
        rc = bad_value(err, errlen, o, SRC(CW_OPT_USE_TLS) ? CW_OPT_USE_TLS : CW_OPT_MASTER,
                       "TLS (wss://) is not supported by this build (built without OpenSSL)");
        goto bad;
    }
    /* a tac of a pb worker: its master port speaks pb, not msgpack */
    if (o->tac_loaded && v[CW_OPT_MASTER].src == CW_SRC_TAC && o->tac_protocol &&
        strcmp(o->tac_protocol, "msgpack_experimental_v7") != 0) {
        char shown[96];
        show(shown, sizeof shown, o->tac_protocol);
        rc = fail(err, errlen,
                  "%s: protocol '%s': cworker speaks only 'msgpack_experimental_v7', so the "
                  "master must listen for it too: add c['protocols'] = "
                  "{'msgpack_experimental_v7': {'port': PORT}} to master.cfg (next to 'pb', on "
                  "a port of its own), then give that port with --master HOST:PORT (flags "
                  "override the tac)",
                  o->tac_protocol_where, shown);
        goto bad;
    }

    if (o->tac_loaded && v[CW_OPT_MASTER].src != CW_SRC_TAC && o->tac_protocol &&
        strcmp(o->tac_protocol, "msgpack_experimental_v7") != 0)
        add_note(o, xasprintf("%s: protocol '%.40s' does not matter: the master address comes "
                              "from %s",
                              o->tac_protocol_where, o->tac_protocol, v[CW_OPT_MASTER].where));

    if (!SRC(CW_OPT_NAME)) {
        rc = fail(err, errlen,
                  "no worker name: --name NAME is required (or CWORKER_NAME, or name = ... in "
                  "the config file)");
        goto bad;
    }
    const char *name = v[CW_OPT_NAME].value;
    if (name[0] == '\0' || strchr(name, ':')) {
        rc = bad_value(err, errlen, o, CW_OPT_NAME,
                       name[0] ? "a worker name must not contain ':'" : "empty worker name");
        goto bad;
    }
    for (const char *c = name; *c; c++) {
        if ((unsigned char)*c < 0x20 || *c == 0x7f) {
            rc = bad_value(err, errlen, o, CW_OPT_NAME, "control character in the worker name");
            goto bad;
        }
    }
    if (!SRC(CW_OPT_BASEDIR) || v[CW_OPT_BASEDIR].value[0] == '\0') {
        rc = SRC(CW_OPT_BASEDIR)
                 ? bad_value(err, errlen, o, CW_OPT_BASEDIR, "empty directory name")
                 : fail(err, errlen,
                        "no base directory: --basedir DIR is required (or CWORKER_BASEDIR, or "
                        "basedir = ... in the config file)");
        goto bad;
    }
    cfg->name = strdup(name);
    cfg->basedir = strdup(v[CW_OPT_BASEDIR].value);
    if (cfg->name == NULL || cfg->basedir == NULL) {
        rc = oom(err, errlen);
        goto bad;
    }

    /* password: the source of highest precedence, value or file */
    cw_optval_t *pw = &v[CW_OPT_PASSWORD], *pf = &v[CW_OPT_PASSWORD_FILE];
    if (pw->value && pf->value && pw->src == pf->src) {
        rc = fail(err, errlen, "both password (%s) and password-file (%s) are set; keep one",
                  pw->where, pf->where);
        goto bad;
    }
    if (pf->value && (!pw->value || pf->src > pw->src)) {
        if (pf->value[0] == '\0') {
            rc = bad_value(err, errlen, o, CW_OPT_PASSWORD_FILE, "empty file name");
            goto bad;
        }
        cfg->password_file = strdup(pf->value);
        if (cfg->password_file == NULL) {
            rc = oom(err, errlen);
            goto bad;
        }
    } else if (pw->value) {
        if (pw->value[0] == '\0') {
            rc = bad_value(err, errlen, o, CW_OPT_PASSWORD, "empty password");
            goto bad;
        }
        cfg->password = strdup(pw->value);
        if (cfg->password == NULL) {
            rc = oom(err, errlen);
            goto bad;
        }
    } else {
        rc = fail(err, errlen,
                  "no password: use --password-file FILE, CWORKER_PASSWORD, or password-file / "
                  "password = ... in a config file only its owner can read");
        goto bad;
    }

    /* numbers */
    static const struct {
        int id;
        double min;
        size_t off;
        bool ms;
    } secs[] = {
        {CW_OPT_BACKOFF_MAX, 1, offsetof(cw_config_t, backoff_cap), false},
        {CW_OPT_PING_INTERVAL, 0, offsetof(cw_config_t, ping_interval), true},
        {CW_OPT_DEAD_TIMEOUT, 0, offsetof(cw_config_t, dead_timeout), true},
        {CW_OPT_DRAIN_TIMEOUT, 0, offsetof(cw_config_t, drain_timeout), true},
        {CW_OPT_KILL_GRACE, 0, offsetof(cw_config_t, kill_grace), true},
    };
    for (size_t k = 0; k < sizeof secs / sizeof secs[0]; k++) {
        double d;
        if (!SRC(secs[k].id))
            continue;
        if (parse_seconds(v[secs[k].id].value, &d) < 0 || d < secs[k].min) {
            rc = bad_value(err, errlen, o, secs[k].id,
                           secs[k].min > 0 ? "needs a number of seconds >= 1"
                                           : "needs a number of seconds");
            goto bad;
        }
        if (secs[k].ms)
            *(uint64_t *)((char *)cfg + secs[k].off) = secs_to_ms(d);
        else
            *(double *)((char *)cfg + secs[k].off) = d;
    }
    uint64_t n;
    if (SRC(CW_OPT_MAX_MESSAGE)) {
        if (parse_u64(v[CW_OPT_MAX_MESSAGE].value, &n) < 0 || n < 4096 || n > SIZE_MAX) {
            rc = bad_value(err, errlen, o, CW_OPT_MAX_MESSAGE, "needs a byte count >= 4096");
            goto bad;
        }
        cfg->max_message = (size_t)n;
    }
    if (SRC(CW_OPT_MAX_COMMANDS)) {
        if (parse_u64(v[CW_OPT_MAX_COMMANDS].value, &n) < 0 || n > SIZE_MAX) {
            rc = bad_value(err, errlen, o, CW_OPT_MAX_COMMANDS, "needs a number");
            goto bad;
        }
        cfg->max_commands = (size_t)n;
    }
    if (SRC(CW_OPT_MAX_PENDING_OUTPUT)) {
        if (parse_u64(v[CW_OPT_MAX_PENDING_OUTPUT].value, &n) < 0 || (n != 0 && n < 4096) ||
            n > SIZE_MAX / 2) {
            rc = bad_value(err, errlen, o, CW_OPT_MAX_PENDING_OUTPUT,
                           "needs a byte count >= 4096 (0 = twice the master's buffer_size)");
            goto bad;
        }
        cfg->max_pending_output = (size_t)n;
    }
    if (SRC(CW_OPT_FS_MAX_DEPTH)) {
        if (parse_u64(v[CW_OPT_FS_MAX_DEPTH].value, &n) < 0 || n < 1 || n > 100000000) {
            rc = bad_value(err, errlen, o, CW_OPT_FS_MAX_DEPTH,
                           "needs a number of levels from 1 to 100000000");
            goto bad;
        }
        cfg->fs_max_depth = (unsigned)n;
    }
    if (SRC(CW_OPT_MAX_RETRIES)) {
        if (parse_u64(v[CW_OPT_MAX_RETRIES].value, &n) < 0 || n > INT_MAX) {
            rc = bad_value(err, errlen, o, CW_OPT_MAX_RETRIES, "needs a number (0 = never stop)");
            goto bad;
        }
        cfg->max_retries = (int)n;
    }
    if (SRC(CW_OPT_NUMCPUS) && strcasecmp(v[CW_OPT_NUMCPUS].value, "auto") != 0) {
        if (parse_u64(v[CW_OPT_NUMCPUS].value, &n) < 0 || n > 1000000) {
            rc = bad_value(err, errlen, o, CW_OPT_NUMCPUS, "needs a number, or auto (or 0)");
            goto bad;
        }
        cfg->numcpus = (unsigned)n;
    }
    if (SRC(CW_OPT_LOG_FILE) && !is_none(v[CW_OPT_LOG_FILE].value)) {
        cfg->log_file = strdup(v[CW_OPT_LOG_FILE].value);
        if (cfg->log_file == NULL) {
            rc = oom(err, errlen);
            goto bad;
        }
    }
    if (SRC(CW_OPT_LOG_SIZE)) {
        if (parse_u64(v[CW_OPT_LOG_SIZE].value, &n) < 0) {
            rc = bad_value(err, errlen, o, CW_OPT_LOG_SIZE, "needs a byte count (0 = never rotate)");
            goto bad;
        }
        cfg->log_size = n;
    }
    if (SRC(CW_OPT_LOG_COUNT)) {
        if (is_none(v[CW_OPT_LOG_COUNT].value)) {
            cfg->log_count = 0;
        } else if (parse_u64(v[CW_OPT_LOG_COUNT].value, &n) < 0 || n < 1 || n > 100000) {
            rc = bad_value(err, errlen, o, CW_OPT_LOG_COUNT,
                           "needs a number >= 1, or none (keep every rotated file)");
            goto bad;
        } else {
            cfg->log_count = (unsigned)n;
        }
    }
    if (cfg->log_file == NULL) {
        bool tac_noted = false;
        for (int id = CW_OPT_LOG_SIZE; id <= CW_OPT_LOG_COUNT; id++) {
            if (!SRC(id))
                continue;
            if (v[id].src != CW_SRC_TAC)
                add_note(o, xasprintf("%s: %s only applies with log-file (logging to stderr)",
                                      v[id].where, optdefs[id].name));
            else if (!tac_noted && (tac_noted = true))
                add_note(o, xasprintf("%s: log rotation settings kept, but cworker logs to "
                                      "stderr unless log-file is set (the stock worker wrote "
                                      "BASEDIR/twistd.log: --log-file BASEDIR/twistd.log)",
                                      v[id].where));
        }
    }
    if (SRC(CW_OPT_UMASK) && parse_umask(v[CW_OPT_UMASK].value, &cfg->umask) < 0) {
        rc = bad_value(err, errlen, o, CW_OPT_UMASK,
                       "needs an octal mask such as 022 or 0o22 (at most 777), or none");
        goto bad;
    }
    static const struct {
        int id;
        size_t off;
    } bools[] = {
        {CW_OPT_DELETE_LEFTOVER_DIRS, offsetof(cw_config_t, delete_leftover_dirs)},
        {CW_OPT_VERBOSE, offsetof(cw_config_t, verbose)},
    };
    for (size_t k = 0; k < 2; k++) {
        if (SRC(bools[k].id) &&
            parse_bool(v[bools[k].id].value, (bool *)((char *)cfg + bools[k].off)) < 0) {
            rc = bad_value(err, errlen, o, bools[k].id, "needs true or false");
            goto bad;
        }
    }
    if (SRC(CW_OPT_LOG_FORMAT)) {
        const char *lf = v[CW_OPT_LOG_FORMAT].value;
        if (strcmp(lf, "text") == 0) {
            cfg->log_format = 0;
        } else if (strcmp(lf, "json") == 0) {
            cfg->log_format = 1;
        } else {
            rc = bad_value(err, errlen, o, CW_OPT_LOG_FORMAT, "needs text or json");
            goto bad;
        }
    }
    if (SRC(CW_OPT_METRICS_LISTEN) && !is_none(v[CW_OPT_METRICS_LISTEN].value)) {
        char *h = NULL;
        int port;
        if (cw_hostport_parse(v[CW_OPT_METRICS_LISTEN].value, &h, &port) < 0) {
            rc = bad_value(err, errlen, o, CW_OPT_METRICS_LISTEN,
                           "needs IP:PORT or [IPv6]:PORT with a numeric address, e.g. "
                           "127.0.0.1:9101 (or none)");
            goto bad;
        }
        free(h);
        cfg->metrics_listen = strdup(v[CW_OPT_METRICS_LISTEN].value);
        if (cfg->metrics_listen == NULL) {
            rc = oom(err, errlen);
            goto bad;
        }
    }

    /* TLS files */
    static const struct {
        int id;
        size_t off;
    } files[] = {
        {CW_OPT_CA_FILE, offsetof(cw_config_t, ca_file)},
        {CW_OPT_CLIENT_CERT, offsetof(cw_config_t, client_cert)},
        {CW_OPT_CLIENT_KEY, offsetof(cw_config_t, client_key)},
    };
    for (size_t k = 0; k < 3; k++) {
        if (!SRC(files[k].id) || is_none(v[files[k].id].value))
            continue;
        char **dst = (char **)((char *)cfg + files[k].off);
        *dst = strdup(v[files[k].id].value);
        if (*dst == NULL) {
            rc = oom(err, errlen);
            goto bad;
        }
        if (!cfg->use_tls)
            add_note(o, xasprintf("%s: %s is only used with a wss:// master (or use-tls)",
                                  v[files[k].id].where, optdefs[files[k].id].name));
    }
    if ((cfg->client_cert == NULL) != (cfg->client_key == NULL)) {
        int id = cfg->client_cert ? CW_OPT_CLIENT_CERT : CW_OPT_CLIENT_KEY;
        rc = bad_value(err, errlen, o, id, "client-cert and client-key go together");
        goto bad;
    }
    rc = resolve_proxy(o, envp, cfg, err, errlen);
    if (rc < 0)
        goto bad;
    return 0;
#undef SRC
bad:
    cw_config_free(cfg);
    return rc;
}

/* An absolute version of path (relative to the current directory). */
char *absolute(const char *path)
{
    if (path[0] == '/')
        return strdup(path);
    char cwd[PATH_MAX];
    if (getcwd(cwd, sizeof cwd) == NULL)
        return NULL;
    if (strcmp(path, ".") == 0)
        return strdup(cwd);
    return xasprintf("%s/%s", strcmp(cwd, "/") == 0 ? "" : cwd, path);
}

/* Read the password: the first line of the file, without its line end. */
static int read_password(const char *file, char **out, const char *where, char *err, size_t errlen)
{
    char *text = NULL;
    size_t len = 0;
    unsigned mode;
    int rc = read_file(file, &text, &len, &mode, err, errlen, "password file", where);
    if (rc < 0)
        return rc;
    text[strcspn(text, "\r\n")] = '\0';
    if (text[0] == '\0') {
        explicit_bzero(text, len);
        free(text);
        return fail(err, errlen, "password file '%s' (%s): the first line is empty", file, where);
    }
    *out = text;
    return 0;
}

/* Make the log file absolute (the worker later enters its basedir) and check
 * that it can be appended to, or created, without creating it. */
static int check_log_file(cw_config_t *cfg, const cw_opts_t *o, char *err, size_t errlen)
{
    const char *where = o->v[CW_OPT_LOG_FILE].where ? o->v[CW_OPT_LOG_FILE].where : "";
    char *abs = absolute(cfg->log_file);
    if (abs == NULL)
        return oom(err, errlen);
    free(cfg->log_file);
    cfg->log_file = abs;
    struct stat st;
    if (stat(abs, &st) == 0) {
        if (S_ISDIR(st.st_mode))
            return fail(err, errlen, "log-file '%s' (%s): is a directory", abs, where);
        if (!S_ISREG(st.st_mode) && !S_ISCHR(st.st_mode))
            return fail(err, errlen, "log-file '%s' (%s): not a regular file", abs, where);
        if (access(abs, W_OK) < 0)
            return fail(err, errlen, "log-file '%s' (%s): not writable: %s", abs, where,
                        strerror(errno));
        return 0;
    }
    if (errno != ENOENT)
        return fail(err, errlen, "log-file '%s' (%s): %s", abs, where, strerror(errno));
    char *parent = strdup(abs);
    if (parent == NULL)
        return oom(err, errlen);
    char *slash = strrchr(parent, '/');
    if (slash == parent)
        slash[1] = '\0';
    else if (slash)
        *slash = '\0';
    int rc = 0;
    if (stat(parent, &st) < 0 || !S_ISDIR(st.st_mode))
        rc = fail(err, errlen, "log-file '%s' (%s): its directory '%s' does not exist", abs,
                  where, parent);
    else if (access(parent, W_OK | X_OK) < 0)
        rc = fail(err, errlen, "log-file '%s' (%s) cannot be created in '%s': %s", abs, where,
                  parent, strerror(errno));
    free(parent);
    return rc;
}

int cw_config_finish(cw_config_t *cfg, const cw_opts_t *o, bool create, char *err, size_t errlen)
{
    int rc;
    const char *pfw = o->v[CW_OPT_PASSWORD_FILE].where ? o->v[CW_OPT_PASSWORD_FILE].where : "";
    if (cfg->password_file) {
        char *abs = absolute(cfg->password_file);
        if (abs == NULL)
            return oom(err, errlen);
        free(cfg->password_file);
        cfg->password_file = abs;
        if (cfg->password) {
            explicit_bzero(cfg->password, strlen(cfg->password));
            free(cfg->password);
            cfg->password = NULL;
        }
        rc = read_password(abs, &cfg->password, pfw, err, errlen);
        if (rc < 0)
            return rc;
    }
    char **files[] = {&cfg->ca_file, &cfg->client_cert, &cfg->client_key};
    static const int ids[] = {CW_OPT_CA_FILE, CW_OPT_CLIENT_CERT, CW_OPT_CLIENT_KEY};
    for (size_t k = 0; k < 3; k++) {
        if (*files[k] == NULL)
            continue;
        char *abs = absolute(*files[k]);
        if (abs == NULL)
            return oom(err, errlen);
        free(*files[k]);
        *files[k] = abs;
        int fd = open(abs, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
        struct stat st;
        int e = fd < 0 ? errno : fstat(fd, &st) < 0 ? errno : S_ISREG(st.st_mode) ? 0 : -1;
        if (fd >= 0)
            close(fd);
        if (e != 0)
            return fail(err, errlen, "%s '%s' (%s): %s", optdefs[ids[k]].name, abs,
                        o->v[ids[k]].where ? o->v[ids[k]].where : "",
                        e < 0 ? "not a regular file" : strerror(e));
    }

    if (cfg->log_file) {
        rc = check_log_file(cfg, o, err, errlen);
        if (rc < 0)
            return rc;
    }

    const char *bw = o->v[CW_OPT_BASEDIR].where ? o->v[CW_OPT_BASEDIR].where : "";
    char *abs = absolute(cfg->basedir);
    if (abs == NULL)
        return oom(err, errlen);
    free(cfg->basedir);
    cfg->basedir = abs;
    struct stat st;
    if (create) {
        if (mkdir(abs, 0777) < 0 && errno != EEXIST)
            return fail(err, errlen, "cannot create basedir '%s' (%s): %s", abs, bw,
                        strerror(errno));
        char real[PATH_MAX];
        if (realpath(abs, real) == NULL)
            return fail(err, errlen, "basedir '%s' (%s): %s", abs, bw, strerror(errno));
        if (stat(real, &st) < 0 || !S_ISDIR(st.st_mode))
            return fail(err, errlen, "basedir '%s' (%s): not a directory", abs, bw);
        char *r = strdup(real);
        if (r == NULL)
            return oom(err, errlen);
        free(cfg->basedir);
        cfg->basedir = r;
        return 0;
    }
    if (stat(abs, &st) == 0) {
        if (!S_ISDIR(st.st_mode))
            return fail(err, errlen, "basedir '%s' (%s): not a directory", abs, bw);
        if (access(abs, W_OK | X_OK) < 0)
            return fail(err, errlen, "basedir '%s' (%s): not writable: %s", abs, bw,
                        strerror(errno));
        char real[PATH_MAX];
        if (realpath(abs, real)) {
            char *r = strdup(real);
            if (r == NULL)
                return oom(err, errlen);
            free(cfg->basedir);
            cfg->basedir = r;
        }
        return 0;
    }
    if (errno != ENOENT)
        return fail(err, errlen, "basedir '%s' (%s): %s", abs, bw, strerror(errno));
    /* it would be created (one level): the parent must be a writable directory */
    char *parent = strdup(abs);
    if (parent == NULL)
        return oom(err, errlen);
    char *slash = strrchr(parent, '/');
    if (slash == parent)
        slash[1] = '\0';
    else if (slash)
        *slash = '\0';
    rc = 0;
    if (stat(parent, &st) < 0 || !S_ISDIR(st.st_mode))
        rc = fail(err, errlen,
                  "basedir '%s' (%s) cannot be created: its parent '%s' is not a directory%s", abs,
                  bw, parent, errno == ENOENT ? " (it does not exist)" : "");
    else if (access(parent, W_OK | X_OK) < 0)
        rc = fail(err, errlen, "basedir '%s' (%s) cannot be created in '%s': %s", abs, bw, parent,
                  strerror(errno));
    free(parent);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Printing and writing                                                     */
/* ------------------------------------------------------------------------ */

/* Does a value need quotes to read back the same? */
static bool needs_quotes(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || s[0] == '"' || s[0] == ' ' || s[0] == '\t' || s[n - 1] == ' ' || s[n - 1] == '\t')
        return true;
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            return true;
    return false;
}

/* Write "key = value" in the config-file syntax; returns the columns used. */
static int put_kv(FILE *f, const char *key, const char *val)
{
    int col = fprintf(f, "%s = ", key);
    if (!needs_quotes(val))
        return col + fprintf(f, "%s", val);
    col += fprintf(f, "\"");
    for (const char *s = val; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            col += fprintf(f, "\\%c", c);
        else if (c == '\n')
            col += fprintf(f, "\\n");
        else if (c == '\t')
            col += fprintf(f, "\\t");
        else if (c == '\r')
            col += fprintf(f, "\\r");
        else if (c < 0x20 || c == 0x7f)
            col += fprintf(f, "\\x%02x", c);
        else
            col += fprintf(f, "%c", c);
    }
    return col + fprintf(f, "\"");
}

/* Seconds without needless digits: "10", "0.5", "1.25". */
static void fmt_ms(char *buf, size_t cap, uint64_t ms)
{
    snprintf(buf, cap, "%llu.%03llu", (unsigned long long)(ms / 1000),
             (unsigned long long)(ms % 1000));
    char *e = buf + strlen(buf) - 1;
    while (*e == '0')
        *e-- = '\0';
    if (*e == '.')
        *e = '\0';
}

/* The canonical text of option id in cfg; NULL when unset. */
static const char *fmt_opt(int id, const cw_config_t *cfg, char *buf, size_t cap)
{
    switch (id) {
    case CW_OPT_MASTER: {
        bool v6 = strchr(cfg->master_host, ':') != NULL;
        snprintf(buf, cap, "%s://%s%s%s:%d%s", cfg->use_tls ? "wss" : "ws", v6 ? "[" : "",
                 cfg->master_host, v6 ? "]" : "", cfg->master_port, cfg->master_path);
        return buf;
    }
    case CW_OPT_NAME:
        return cfg->name;
    case CW_OPT_BASEDIR:
        return cfg->basedir;
    case CW_OPT_PASSWORD_FILE:
        return cfg->password_file;
    case CW_OPT_PASSWORD:
        return cfg->password_file ? NULL : cfg->password;
    case CW_OPT_USE_TLS:
        return cfg->use_tls ? "true" : "false";
    case CW_OPT_CA_FILE:
        return cfg->ca_file;
    case CW_OPT_CLIENT_CERT:
        return cfg->client_cert;
    case CW_OPT_CLIENT_KEY:
        return cfg->client_key;
    case CW_OPT_PROXY:
        return cfg->proxy ? cfg->proxy : "none";
    case CW_OPT_BACKOFF_MAX:
        snprintf(buf, cap, "%.15g", cfg->backoff_cap);
        if (strtod(buf, NULL) != cfg->backoff_cap)
            snprintf(buf, cap, "%.17g", cfg->backoff_cap);
        return buf;
    case CW_OPT_MAX_RETRIES:
        snprintf(buf, cap, "%d", cfg->max_retries);
        return buf;
    case CW_OPT_PING_INTERVAL:
        fmt_ms(buf, cap, cfg->ping_interval);
        return buf;
    case CW_OPT_DEAD_TIMEOUT:
        fmt_ms(buf, cap, cfg->dead_timeout);
        return buf;
    case CW_OPT_MAX_MESSAGE:
        snprintf(buf, cap, "%zu", cfg->max_message);
        return buf;
    case CW_OPT_MAX_COMMANDS:
        snprintf(buf, cap, "%zu", cfg->max_commands);
        return buf;
    case CW_OPT_MAX_PENDING_OUTPUT:
        snprintf(buf, cap, "%zu", cfg->max_pending_output);
        return buf;
    case CW_OPT_FS_MAX_DEPTH:
        snprintf(buf, cap, "%u", cfg->fs_max_depth);
        return buf;
    case CW_OPT_DRAIN_TIMEOUT:
        fmt_ms(buf, cap, cfg->drain_timeout);
        return buf;
    case CW_OPT_KILL_GRACE:
        fmt_ms(buf, cap, cfg->kill_grace);
        return buf;
    case CW_OPT_UMASK:
        if (cfg->umask < 0)
            return "none";
        snprintf(buf, cap, "%03lo", (unsigned long)cfg->umask);
        return buf;
    case CW_OPT_DELETE_LEFTOVER_DIRS:
        return cfg->delete_leftover_dirs ? "true" : "false";
    case CW_OPT_NUMCPUS:
        if (cfg->numcpus == 0)
            return "auto";
        snprintf(buf, cap, "%u", cfg->numcpus);
        return buf;
    case CW_OPT_METRICS_LISTEN:
        return cfg->metrics_listen ? cfg->metrics_listen : "none";
    case CW_OPT_LOG_FORMAT:
        return cfg->log_format ? "json" : "text";
    case CW_OPT_LOG_FILE:
        return cfg->log_file ? cfg->log_file : "none";
    case CW_OPT_LOG_SIZE:
        snprintf(buf, cap, "%llu", (unsigned long long)cfg->log_size);
        return buf;
    case CW_OPT_LOG_COUNT:
        if (cfg->log_count == 0)
            return "none";
        snprintf(buf, cap, "%u", cfg->log_count);
        return buf;
    case CW_OPT_VERBOSE:
        return cfg->verbose ? "true" : "false";
    default:
        return NULL;
    }
}

/* The proxy URL with its password replaced by "***". */
static void mask_proxy(char *buf, size_t cap, const char *url)
{
    const char *s = url + 7; /* normalised: "http://" */
    const char *at = strrchr(s, '@');
    const char *colon = at ? memchr(s, ':', (size_t)(at - s)) : NULL;
    if (colon)
        snprintf(buf, cap, "http://%.*s:***%s", (int)(colon - s), s, at);
    else
        snprintf(buf, cap, "%s", url);
}

void cw_config_format(FILE *f, const cw_config_t *cfg, const cw_opts_t *o, bool for_check)
{
    char buf[PATH_MAX + 64];
    if (for_check) {
        fprintf(f,
                "# cworker %s: effective configuration (flags > environment > config file "
                "> buildbot.tac > defaults)\n",
                CW_VERSION_STRING);
        if (o->v[CW_OPT_CONFIG].value)
            fprintf(f, "# config file: %s (%s)\n", o->v[CW_OPT_CONFIG].value,
                    o->v[CW_OPT_CONFIG].where);
        if (o->v[CW_OPT_FROM_TAC].value)
            fprintf(f, "# buildbot.tac: %s (%s)\n", o->v[CW_OPT_FROM_TAC].value,
                    o->v[CW_OPT_FROM_TAC].where);
    } else {
        fprintf(f, "# cworker configuration: key = value, see cworker(1).\n"
                   "# Check it with: cworker --config FILE --check-config\n");
    }
    for (int id = 0; id < CW_OPT__COUNT; id++) {
        const cw_optval_t *v = &o->v[id];
        if (id == CW_OPT_CONFIG || id == CW_OPT_FROM_TAC)
            continue;
        const char *val = fmt_opt(id, cfg, buf, sizeof buf);
        if (for_check) {
            const char *src = v->src == CW_SRC_DEFAULT ? "default" : v->where;
            if (id == CW_OPT_PASSWORD || id == CW_OPT_PASSWORD_FILE) {
                if (id == CW_OPT_PASSWORD && cfg->password && !cfg->password_file) {
                    fprintf(f, "# password: set, hidden (%s)\n", src);
                } else if (id == CW_OPT_PASSWORD_FILE && cfg->password_file) {
                    int col = put_kv(f, optdefs[id].name, cfg->password_file);
                    fprintf(f, "%*s # %s; the password is hidden\n", col < 44 ? 44 - col : 0, "",
                            src);
                }
                continue;
            }
            if (val == NULL) {
                fprintf(f, "# %s: not set\n", optdefs[id].name);
                continue;
            }
            if (id == CW_OPT_USE_TLS && v->src == CW_SRC_DEFAULT && cfg->use_tls)
                src = "from the wss:// master URL";
            char masked[PATH_MAX + 64];
            if (id == CW_OPT_PROXY && cfg->proxy) {
                mask_proxy(masked, sizeof masked, cfg->proxy);
                val = masked;
            }
            char srcbuf[PATH_MAX + 64];
            if (id == CW_OPT_PROXY && v->src == CW_SRC_DEFAULT && o->proxy_from) {
                if (o->proxy_env)
                    snprintf(srcbuf, sizeof srcbuf, "%s (%s)", o->proxy_env, o->proxy_from);
                else
                    snprintf(srcbuf, sizeof srcbuf, "%s", o->proxy_from);
                src = srcbuf;
            }
            int col = put_kv(f, optdefs[id].name, val);
            fprintf(f, "%*s # %s\n", col < 44 ? 44 - col : 0, "", src);
            continue;
        }
        /* a file that reproduces this configuration: what some source set */
        if (id == CW_OPT_PASSWORD || id == CW_OPT_PASSWORD_FILE) {
            if (val) {
                put_kv(f, optdefs[id].name, val);
                fputc('\n', f);
            }
            continue;
        }
        if (v->src == CW_SRC_DEFAULT || val == NULL)
            continue;
        put_kv(f, optdefs[id].name, val);
        fputc('\n', f);
    }
    if (for_check)
        for (size_t i = 0; i < o->nnotes; i++)
            fprintf(f, "# note: %s\n", o->notes[i]);
}

int cw_config_write(const char *path, const cw_config_t *cfg, const cw_opts_t *o, bool force,
                    char *err, size_t errlen)
{
    struct stat st;
    if (!force && lstat(path, &st) == 0)
        return fail(err, errlen, "'%s' exists; add --force to replace it", path);
    char *tmp = xasprintf("%s.tmpXXXXXX", path);
    if (tmp == NULL)
        return oom(err, errlen);
    int fd = cw_mkstemp_cloexec(tmp);
    if (fd < 0) {
        int rc = fail(err, errlen, "cannot write '%s': %s", path, strerror(errno));
        free(tmp);
        return rc;
    }
    fchmod(fd, 0600);
    FILE *f = fdopen(fd, "w");
    if (f == NULL) {
        close(fd);
        unlink(tmp);
        free(tmp);
        return oom(err, errlen);
    }
    cw_config_format(f, cfg, o, false);
    int bad = ferror(f) | fflush(f) | fsync(fd);
    bad |= fclose(f);
    int rc = 0;
    if (bad) {
        rc = fail(err, errlen, "cannot write '%s': %s", path, strerror(errno));
    } else if (force) {
        if (rename(tmp, path) < 0)
            rc = fail(err, errlen, "cannot write '%s': %s", path, strerror(errno));
    } else if (link(tmp, path) < 0) { /* link() never replaces an existing file */
        rc = fail(err, errlen, "cannot write '%s': %s", path,
                  errno == EEXIST ? "it exists (add --force to replace it)" : strerror(errno));
    }
    unlink(tmp);
    free(tmp);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* --help                                                                   */
/* ------------------------------------------------------------------------ */

/* Print text word-wrapped to width, continuation lines indented by indent;
 * col is the column the first word starts at (>= width: on a new line). */
static void wrap(FILE *f, const char *text, int col, int indent, int width)
{
    if (col >= width) {
        fprintf(f, "\n%*s", indent, "");
        col = indent;
    }
    bool first = true;
    for (const char *p = text; *p;) {
        size_t wl = strcspn(p, " ");
        if (!first && col + 1 + (int)wl > width) {
            fprintf(f, "\n%*s", indent, "");
            col = indent;
        } else if (!first) {
            fputc(' ', f);
            col++;
        }
        fprintf(f, "%.*s", (int)wl, p);
        col += (int)wl;
        first = false;
        p += wl;
        p += strspn(p, " ");
    }
    fputc('\n', f);
}

void cw_config_usage(FILE *f)
{
    fprintf(f, "Usage: cworker --master HOST:PORT --name NAME --basedir DIR [options]\n"
               "       cworker --config FILE [options]\n"
               "       cworker --from-tac BASEDIR/buildbot.tac [options]\n"
               "       cworker create-worker [--force] [stock options] BASEDIR MASTER NAME "
               "PASSWORD\n"
               "\n"
               "A Buildbot worker speaking the msgpack_experimental_v7 protocol.\n"
               "\n"
               "Every option is also an environment variable CWORKER_<NAME> (upper case,\n"
               "'-' -> '_') and a config-file key NAME (\"name = value\" lines, '#' comments).\n"
               "Precedence: flags > environment > config file > buildbot.tac > defaults.\n"
               "The password is never a flag: --password-file FILE, CWORKER_PASSWORD, or\n"
               "password = ... in a config file only its owner can read.\n"
               "\n"
               "Options (default in brackets):\n");
    for (int id = 0; id < CW_OPT__COUNT; id++) {
        const optdef_t *d = &optdefs[id];
        char head[160], env[64];
        size_t k = 0;
        for (const char *c = d->name; *c && k + 1 < sizeof env; c++)
            env[k++] = *c == '-' ? '_' : (char)toupper((unsigned char)*c);
        env[k] = '\0';
        if (d->flags & F_NOFLAG)
            snprintf(head, sizeof head, "  (no flag) CWORKER_%s", env);
        else if (d->type == T_BOOL)
            snprintf(head, sizeof head, "  --%s[=BOOL]", d->name);
        else
            snprintf(head, sizeof head, "  --%s %s", d->name, d->arg);
        char text[400];
        snprintf(text, sizeof text, "%s%s%s%s", d->help, d->def[0] ? " [" : "", d->def,
                 d->def[0] ? "]" : "");
        fprintf(f, "%-28s", head);
        wrap(f, text, strlen(head) >= 28 ? 80 : 28, 28, 79);
    }
    fprintf(f, "Actions:\n"
               "  --check-config          validate everything without connecting, print the\n"
               "                          effective configuration (password hidden), exit 0 or 2\n"
               "  --write-config FILE     write the effective configuration as a config file\n"
               "                          (mode 0600; --force replaces an existing FILE)\n"
               "  --help, --version\n"
               "\n"
               "Exit status: 0 stopped normally, 1 failure (max-retries reached...), 2 bad\n"
               "configuration or usage (the message names the option and its source).\n");
}
