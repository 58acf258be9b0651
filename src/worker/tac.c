/* buildbot.tac import: the variables `buildbot-worker create-worker` writes,
 * read with a small parser of Python literals (cworker never runs Python),
 * mapped to options of precedence CW_SRC_TAC.  See README "Switching from
 * buildbot-worker". */
#include "tac.h"

#include <ctype.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "options.h"
#include "config_internal.h"

/* The tac variables we read (what `buildbot-worker create-worker` writes). */
enum {
    TV_HOST,
    TV_PORT,
    TV_NAME,
    TV_PASSWD,
    TV_BASEDIR,
    TV_KEEPALIVE,
    TV_UMASK,
    TV_MAXDELAY,
    TV_NUMCPUS,
    TV_ALLOW_SHUTDOWN,
    TV_MAXRETRIES,
    TV_DELETE_LEFTOVER,
    TV_USE_TLS,
    TV_PROTOCOL,
    TV_CONNSTR,
    TV_PROXYSTR,
    TV_ROTATE_LENGTH,
    TV_MAX_ROTATED,
    TV__COUNT
};

static const char *const tac_names[TV__COUNT] = {
    "buildmaster_host",
    "port",
    "workername",
    "passwd",
    "basedir",
    "keepalive",
    "umask",
    "maxdelay",
    "numcpus",
    "allow_shutdown",
    "maxretries",
    "delete_leftover_dirs",
    "use_tls",
    "protocol",
    "connection_string",
    "proxy_connection_string",
    "rotateLength",
    "maxRotatedFiles",
};

typedef enum pv_kind {
    PV_UNSET,
    PV_NONE,
    PV_STR,
    PV_INT,
    PV_BOOL,
    PV_FILEDIR, /* os.path.abspath(os.path.dirname(__file__)) */
    PV_OTHER,   /* an expression we do not evaluate */
} pv_kind_t;

typedef struct pyval {
    pv_kind_t kind;
    char *s;
    long long i;
    bool legacy_octal; /* Python 2 "022" */
    int line;
} pyval_t;

/* Append one code point as UTF-8. */
static size_t put_utf8(char *out, unsigned long cp)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xc0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xe0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        out[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    out[0] = (char)(0xf0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    out[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

/* Read n hex digits at s into *cp; false if they are not all hex. */
static bool hexn(const char *s, const char *end, int n, unsigned long *cp)
{
    if (end - s < n)
        return false;
    unsigned long v = 0;
    for (int k = 0; k < n; k++) {
        int c = (unsigned char)s[k];
        if (!isxdigit(c))
            return false;
        v = v * 16 + (unsigned long)(isdigit(c) ? c - '0' : (tolower(c) - 'a' + 10));
    }
    *cp = v;
    return true;
}

/* One Python string literal at *ps (prefix letters included), appended to
 * out (which has room: a literal never grows when decoded).  Advances *ps.
 * Returns 0, or -1 with *why. */
static int py_string(const char **ps, const char *end, char *out, size_t *n, const char **why)
{
    const char *s = *ps;
    bool raw = false, bytes = false;
    while (s < end && strchr("rRbBuU", *s) && s - *ps < 2) {
        if (*s == 'r' || *s == 'R')
            raw = true;
        if (*s == 'b' || *s == 'B')
            bytes = true;
        s++;
    }
    if (s >= end || (*s != '\'' && *s != '"')) {
        *why = "not a string literal";
        return -1;
    }
    char q = *s;
    int qlen = (end - s >= 3 && s[1] == q && s[2] == q) ? 3 : 1;
    s += qlen;
    for (;;) {
        if (s >= end) {
            *why = "unterminated string (only one-line strings are read)";
            return -1;
        }
        if (*s == q && (qlen == 1 || (end - s >= 3 && s[1] == q && s[2] == q))) {
            s += qlen;
            break;
        }
        if (*s != '\\') {
            out[(*n)++] = *s++;
            continue;
        }
        if (end - s < 2) {
            *why = "unterminated string";
            return -1;
        }
        if (raw) { /* the backslash stays; it only protects the next character */
            out[(*n)++] = *s++;
            out[(*n)++] = *s++;
            continue;
        }
        char c = s[1];
        unsigned long cp = 0;
        const char *simple = strchr("\\'\"abfnrtv", c);
        s += 2;
        if (c && simple) {
            static const char map[] = "\\'\"\a\b\f\n\r\t\v";
            out[(*n)++] = map[simple - "\\'\"abfnrtv"];
            continue;
        }
        if (c >= '0' && c <= '7') {
            cp = (unsigned long)(c - '0');
            for (int k = 0; k < 2 && s < end && *s >= '0' && *s <= '7'; k++)
                cp = cp * 8 + (unsigned long)(*s++ - '0');
        } else if (c == 'x') {
            if (!hexn(s, end, 2, &cp)) {
                *why = "bad \\x escape";
                return -1;
            }
            s += 2;
        } else if ((c == 'u' || c == 'U') && !bytes) {
            int digits = c == 'u' ? 4 : 8;
            if (!hexn(s, end, digits, &cp) || cp > 0x10ffff) {
                *why = "bad \\u or \\U escape";
                return -1;
            }
            s += digits;
        } else if (c == 'N' && !bytes) {
            *why = "\\N{...} escapes are not supported";
            return -1;
        } else { /* unknown escape: Python keeps the backslash */
            out[(*n)++] = '\\';
            s--;
            continue;
        }
        if (cp == 0 || (cp >= 0xd800 && cp <= 0xdfff)) {
            *why = "NUL or surrogate character in a string";
            return -1;
        }
        if (bytes && cp > 0xff) {
            *why = "bad escape in a bytes literal";
            return -1;
        }
        /* a bytes escape is a raw byte; a str escape is a code point */
        if (bytes)
            out[(*n)++] = (char)cp;
        else
            *n += put_utf8(out + *n, cp);
    }
    *ps = s;
    return 0;
}

/* Parse a Python int literal (decimal, 0o, 0x, 0b, underscores, and the
 * Python 2 leading-zero octal).  Advances *ps; 0 or -1. */
int py_int(const char **ps, const char *end, long long *out, bool *legacy)
{
    const char *s = *ps;
    int base = 10;
    *legacy = false;
    if (end - s >= 2 && s[0] == '0' && strchr("oOxXbB", s[1])) {
        base = (s[1] == 'o' || s[1] == 'O') ? 8 : (s[1] == 'x' || s[1] == 'X') ? 16 : 2;
        s += 2;
    } else if (end - s >= 2 && s[0] == '0' && isdigit((unsigned char)s[1])) {
        base = 8;
        *legacy = true;
    }
    unsigned long long v = 0;
    int digits = 0;
    for (; s < end; s++) {
        int c = (unsigned char)*s, d;
        if (c == '_')
            continue;
        if (isdigit(c))
            d = c - '0';
        else if (isxdigit(c))
            d = tolower(c) - 'a' + 10;
        else
            break;
        if (d >= base)
            return -1;
        if (v > (unsigned long long)(LLONG_MAX - d) / (unsigned)base)
            return -1;
        v = v * (unsigned)base + (unsigned)d;
        digits++;
    }
    if (digits == 0 || (s < end && (isalnum((unsigned char)*s) || *s == '.')))
        return -1;
    *out = (long long)v;
    *ps = s;
    return 0;
}

/* Evaluate the right-hand side of a simple assignment (up to end). */
static void py_value(const char *s, const char *end, pyval_t *pv, const char **why)
{
    pv->kind = PV_OTHER;
    while (s < end && (*s == ' ' || *s == '\t'))
        s++;
    const char *t = s;
    while (t < end && (isalnum((unsigned char)*t) || *t == '_'))
        t++;
    size_t wl = (size_t)(t - s);
    bool is_lit = false;
    if (wl <= 2 && t < end && (*t == '\'' || *t == '"')) {
        is_lit = true;
        for (const char *c = s; c < t; c++)
            if (!strchr("rRbBuU", *c))
                is_lit = false;
    }
    if (is_lit) {
        char *buf = malloc((size_t)(end - s) + 1);
        size_t n = 0;
        if (buf == NULL) {
            *why = "out of memory";
            return;
        }
        /* adjacent literals concatenate, as in Python */
        while (s < end && (strchr("rRbBuU'\"", *s))) {
            if (py_string(&s, end, buf, &n, why) < 0) {
                free(buf);
                return;
            }
            while (s < end && (*s == ' ' || *s == '\t'))
                s++;
        }
        buf[n] = '\0';
        if (memchr(buf, '\0', n)) {
            free(buf);
            *why = "NUL character in a string";
            return;
        }
        pv->kind = PV_STR;
        pv->s = buf;
    } else if (wl == 4 && strncmp(s, "None", 4) == 0) {
        pv->kind = PV_NONE;
        s = t;
    } else if ((wl == 4 && strncmp(s, "True", 4) == 0) ||
               (wl == 5 && strncmp(s, "False", 5) == 0)) {
        pv->kind = PV_BOOL;
        pv->i = wl == 4;
        s = t;
    } else if (s < end && isdigit((unsigned char)*s)) {
        if (py_int(&s, end, &pv->i, &pv->legacy_octal) < 0) {
            *why = "not a number Python would accept";
            return;
        }
        pv->kind = PV_INT;
    } else {
        /* the relocatable forms: os.path.abspath(os.path.dirname(__file__)) */
        char compact[128];
        size_t n = 0;
        const char *c = s;
        for (; c < end && *c != '#' && n + 1 < sizeof compact; c++)
            if (*c != ' ' && *c != '\t')
                compact[n++] = *c;
        compact[n] = '\0';
        if (strcmp(compact, "os.path.abspath(os.path.dirname(__file__))") == 0 ||
            strcmp(compact, "os.path.dirname(os.path.abspath(__file__))") == 0 ||
            strcmp(compact, "os.path.dirname(os.path.realpath(__file__))") == 0) {
            pv->kind = PV_FILEDIR;
            return;
        }
        *why = "an expression, and cworker reads only literals (it does not run Python)";
        return;
    }
    while (s < end && (*s == ' ' || *s == '\t'))
        s++;
    if (s < end && *s != '#' && *s != ';') {
        free(pv->s);
        pv->s = NULL;
        pv->kind = PV_OTHER;
        *why = "an expression, and cworker reads only literals (it does not run Python)";
    }
}

/* Parse a Twisted client endpoint string ("tcp:host=H:port=P",
 * "tcp:H:P", "tls:..."); *tls for "tls:".  0 or -1. */
int twisted_endpoint(const char *s, char **host, int *port, bool *tls)
{
    char *words[8];
    int nw = 0;
    char *copy = strdup(s), *w = copy, *out = copy;
    if (copy == NULL)
        return -1;
    /* split on ':' honouring '\:' escapes (IPv6 addresses) */
    words[nw++] = out;
    for (; *w; w++) {
        if (w[0] == '\\' && w[1]) {
            *out++ = *++w;
        } else if (*w == ':') {
            *out++ = '\0';
            if (nw == 8) {
                free(copy);
                return -1;
            }
            words[nw++] = out;
        } else {
            *out++ = *w;
        }
    }
    *out = '\0';
    const char *h = NULL, *p = NULL;
    int pos = 0;
    if (strcmp(words[0], "tcp") == 0 || strcmp(words[0], "tcp6") == 0)
        *tls = false;
    else if (strcmp(words[0], "tls") == 0)
        *tls = true;
    else
        goto bad;
    for (int k = 1; k < nw; k++) {
        char *eq = strchr(words[k], '=');
        if (eq && strncmp(words[k], "host", (size_t)(eq - words[k])) == 0 && eq - words[k] == 4)
            h = eq + 1;
        else if (eq && eq - words[k] == 4 && strncmp(words[k], "port", 4) == 0)
            p = eq + 1;
        else if (!eq && pos == 0 && ++pos)
            h = words[k];
        else if (!eq && pos == 1 && ++pos)
            p = words[k];
    }
    uint64_t pv;
    if (h == NULL || p == NULL || parse_u64(p, &pv) < 0 || pv < 1 || pv > 65535 ||
        !valid_host(h, strchr(h, ':') != NULL))
        goto bad;
    *host = strdup(h);
    *port = (int)pv;
    free(copy);
    return *host ? 0 : -1;
bad:
    free(copy);
    return -1;
}

/* "host:port", bracketing IPv6 addresses. */
char *join_hostport(const char *host, long long port)
{
    return strchr(host, ':') ? xasprintf("[%s]:%lld", host, port)
                             : xasprintf("%s:%lld", host, port);
}

/* Python truthiness of an int/bool literal, for use_tls and friends. */
static bool py_truthy(const pyval_t *v)
{
    return (v->kind == PV_INT || v->kind == PV_BOOL) ? v->i != 0
           : v->kind == PV_STR                       ? v->s[0] != '\0'
                                                     : false;
}

/* Map the tac's variables to options (layer CW_SRC_TAC). */
static int tac_apply(cw_opts_t *o, pyval_t *tv, const char *path, char **whys, char *err,
                     size_t errlen)
{
    char where[PATH_MAX + 64];
    int rc = 0;
#define WHERE(t)                                                                                   \
    (snprintf(where, sizeof where, "%s:%d (%s)", path, tv[t].line, tac_names[t]), where)
#define UNREADABLE(id, t)                                                                          \
    do {                                                                                           \
        char why_[320];                                                                            \
        snprintf(why_, sizeof why_,                                                                \
                 "%s = %s; give %s with a flag, a CWORKER_ variable or a config file instead",     \
                 tac_names[t], whys[t] ? whys[t] : "a value cworker cannot use",                   \
                 id == CW_OPT_PASSWORD ? "the password (password-file)" : opt_name(id));           \
        rc = set_bad(o, id, WHERE(t), CW_SRC_TAC, why_, err, errlen);                              \
    } while (0)

    /* master: buildmaster_host + port, or a connection_string */
    pyval_t *h = &tv[TV_HOST], *p = &tv[TV_PORT], *cs = &tv[TV_CONNSTR];
    if (cs->kind == PV_STR) {
        char *host = NULL;
        int port = 0;
        bool tls = false;
        if (twisted_endpoint(cs->s, &host, &port, &tls) < 0) {
            UNREADABLE(CW_OPT_MASTER, TV_CONNSTR);
        } else {
            char *m = join_hostport(host, port);
            rc = m ? set_val(o, CW_OPT_MASTER, m, WHERE(TV_CONNSTR), CW_SRC_TAC, err, errlen)
                   : oom(err, errlen);
            if (rc == 0 && tls)
                rc = set_val(o, CW_OPT_USE_TLS, "true", where, CW_SRC_TAC, err, errlen);
            free(m);
        }
        free(host);
    } else if (h->kind == PV_STR && (p->kind == PV_INT || p->kind == PV_STR)) {
        uint64_t port = 0;
        char *host = NULL;
        int dummy = 0;
        bool ok = p->kind == PV_INT ? (p->i >= 1 && p->i <= 65535)
                                    : (parse_u64(p->s, &port) == 0 && port >= 1 && port <= 65535);
        if (p->kind == PV_INT)
            port = (uint64_t)p->i;
        ok = ok && split_hostport(h->s, strlen(h->s), &host, &dummy, NULL) == 0;
        if (!ok && strchr(h->s, ':') && valid_host(h->s, true))
            ok = (host = strdup(h->s)) != NULL; /* IPv6 written without brackets */
        if (!ok) {
            free(host);
            UNREADABLE(CW_OPT_MASTER, TV_HOST);
        } else {
            char *m = join_hostport(host, (long long)port);
            free(host);
            rc = m ? set_val(o, CW_OPT_MASTER, m, WHERE(TV_HOST), CW_SRC_TAC, err, errlen)
                   : oom(err, errlen);
            free(m);
        }
    } else if (h->kind != PV_UNSET || p->kind != PV_UNSET) {
        UNREADABLE(CW_OPT_MASTER, h->kind == PV_STR || h->kind == PV_UNSET ? TV_PORT : TV_HOST);
    }
    if (rc < 0)
        return rc;

    if (tv[TV_NAME].kind == PV_STR)
        rc = set_val(o, CW_OPT_NAME, tv[TV_NAME].s, WHERE(TV_NAME), CW_SRC_TAC, err, errlen);
    else if (tv[TV_NAME].kind != PV_UNSET)
        UNREADABLE(CW_OPT_NAME, TV_NAME);
    if (rc < 0)
        return rc;

    if (tv[TV_PASSWD].kind == PV_STR)
        rc =
            set_val(o, CW_OPT_PASSWORD, tv[TV_PASSWD].s, WHERE(TV_PASSWD), CW_SRC_TAC, err, errlen);
    else if (tv[TV_PASSWD].kind != PV_UNSET)
        UNREADABLE(CW_OPT_PASSWORD, TV_PASSWD);
    if (rc < 0)
        return rc;

    pyval_t *b = &tv[TV_BASEDIR];
    if (b->kind == PV_FILEDIR || (b->kind == PV_STR && strcmp(b->s, ".") == 0)) {
        /* relocatable: the directory holding the tac */
        const char *slash = strrchr(path, '/');
        char *dir = slash == NULL   ? strdup(".")
                    : slash == path ? strdup("/")
                                    : strndup(path, (size_t)(slash - path));
        rc = dir ? set_val(o, CW_OPT_BASEDIR, dir, WHERE(TV_BASEDIR), CW_SRC_TAC, err, errlen)
                 : oom(err, errlen);
        free(dir);
    } else if (b->kind == PV_STR && b->s[0]) {
        char *d = path_relative_to(path, b->s);
        rc = d ? set_val(o, CW_OPT_BASEDIR, d, WHERE(TV_BASEDIR), CW_SRC_TAC, err, errlen)
               : oom(err, errlen);
        free(d);
    } else if (b->kind != PV_UNSET) {
        UNREADABLE(CW_OPT_BASEDIR, TV_BASEDIR);
    }
    if (rc < 0)
        return rc;

    pyval_t *u = &tv[TV_UMASK];
    if (u->kind == PV_INT && u->i >= 0 && u->i <= 0777) {
        char m[16];
        snprintf(m, sizeof m, "%03llo", (unsigned long long)u->i);
        rc = set_val(o, CW_OPT_UMASK, m, WHERE(TV_UMASK), CW_SRC_TAC, err, errlen);
        if (rc == 0 && u->legacy_octal)
            add_note(o, xasprintf("%s: umask %s is a Python 2 octal literal (Python 3 refuses "
                                  "it); read as octal %s",
                                  where, m, m));
    } else if (u->kind != PV_NONE && u->kind != PV_UNSET) {
        UNREADABLE(CW_OPT_UMASK, TV_UMASK);
    }
    if (rc < 0)
        return rc;

    pyval_t *mr = &tv[TV_MAXRETRIES];
    if (mr->kind == PV_INT && mr->i <= INT_MAX) {
        char m[24];
        snprintf(m, sizeof m, "%lld", mr->i);
        rc = set_val(o, CW_OPT_MAX_RETRIES, m, WHERE(TV_MAXRETRIES), CW_SRC_TAC, err, errlen);
    } else if (mr->kind != PV_NONE && mr->kind != PV_UNSET) {
        UNREADABLE(CW_OPT_MAX_RETRIES, TV_MAXRETRIES);
    }
    if (rc < 0)
        return rc;

    /* numbers where None means the default: numcpus (None = auto), the
     * twistd.log rotation (maxRotatedFiles None = keep all) */
    static const struct {
        int tv, id;
        const char *none; /* the option's value for None, or NULL: leave unset */
        long long min;
    } nums[] = {
        {TV_NUMCPUS, CW_OPT_NUMCPUS, NULL, 0}, /* 0 = auto, as in the stock worker */
        {TV_ROTATE_LENGTH, CW_OPT_LOG_SIZE, NULL, 0},
        {TV_MAX_ROTATED, CW_OPT_LOG_COUNT, "none", 1},
    };
    for (size_t k = 0; k < sizeof nums / sizeof nums[0] && rc == 0; k++) {
        pyval_t *v = &tv[nums[k].tv];
        if (v->kind == PV_INT && v->i >= nums[k].min && v->i <= INT_MAX) {
            char m[24];
            snprintf(m, sizeof m, "%lld", v->i);
            rc = set_val(o, nums[k].id, m, WHERE(nums[k].tv), CW_SRC_TAC, err, errlen);
        } else if (v->kind == PV_NONE && nums[k].none) {
            rc = set_val(o, nums[k].id, nums[k].none, WHERE(nums[k].tv), CW_SRC_TAC, err, errlen);
        } else if (v->kind != PV_NONE && v->kind != PV_UNSET) {
            UNREADABLE(nums[k].id, nums[k].tv);
        }
    }
    if (rc < 0)
        return rc;

    static const struct {
        int tv, id;
    } bools[] = {{TV_DELETE_LEFTOVER, CW_OPT_DELETE_LEFTOVER_DIRS}, {TV_USE_TLS, CW_OPT_USE_TLS}};
    for (size_t k = 0; k < 2 && rc == 0; k++) {
        pyval_t *v = &tv[bools[k].tv];
        if (bools[k].tv == TV_USE_TLS && cs->kind == PV_STR)
            continue; /* the connection string's tls: or tcp: decides */
        if (v->kind == PV_INT || v->kind == PV_BOOL || v->kind == PV_NONE)
            rc = set_val(o, bools[k].id, py_truthy(v) ? "true" : "false", WHERE(bools[k].tv),
                         CW_SRC_TAC, err, errlen);
        else if (v->kind != PV_UNSET)
            UNREADABLE(bools[k].id, bools[k].tv);
    }
    if (rc < 0)
        return rc;

    pyval_t *px = &tv[TV_PROXYSTR];
    if (px->kind == PV_STR) {
        char *host = NULL;
        int port = 0;
        bool tls = false;
        if (twisted_endpoint(px->s, &host, &port, &tls) < 0 || tls) {
            char why[300];
            snprintf(why, sizeof why,
                     "proxy_connection_string '%.100s' is not a plain tcp: endpoint of an "
                     "HTTP CONNECT proxy; set --proxy http://HOST:PORT another way",
                     px->s);
            rc = set_bad(o, CW_OPT_PROXY, WHERE(TV_PROXYSTR), CW_SRC_TAC, why, err, errlen);
        } else {
            char *hp = join_hostport(host, port);
            char *url = hp ? xasprintf("http://%s", hp) : NULL;
            rc = url ? set_val(o, CW_OPT_PROXY, url, WHERE(TV_PROXYSTR), CW_SRC_TAC, err, errlen)
                     : oom(err, errlen);
            free(hp);
            free(url);
        }
        free(host);
    } else if (px->kind != PV_NONE && px->kind != PV_UNSET) {
        UNREADABLE(CW_OPT_PROXY, TV_PROXYSTR);
    }
    if (rc < 0)
        return rc;

    /* protocol: checked by cw_config_resolve if the master address is the tac's */
    pyval_t *pr = &tv[TV_PROTOCOL];
    free(o->tac_protocol);
    free(o->tac_protocol_where);
    if (pr->kind == PV_STR) {
        o->tac_protocol = strdup(pr->s);
        o->tac_protocol_where = strdup(WHERE(TV_PROTOCOL));
    } else {
        o->tac_protocol = strdup(pr->kind == PV_UNSET ? "pb" : "(not a string)");
        o->tac_protocol_where =
            pr->kind == PV_UNSET ? xasprintf("%s (no protocol line: the stock default 'pb')", path)
                                 : strdup(WHERE(TV_PROTOCOL));
    }
    if (o->tac_protocol == NULL || o->tac_protocol_where == NULL)
        return oom(err, errlen);

    /* settings the msgpack protocol ignores in the stock worker too */
    static const struct {
        int tv;
        long long def;
        const char *why;
    } ignored[] = {
        {TV_KEEPALIVE, 600, "cworker's liveness settings are ping-interval and dead-timeout"},
        {TV_MAXDELAY, 300, "the stock worker ignores it too; cworker's cap is backoff-max"},
        {TV_ALLOW_SHUTDOWN, -1, "worker-initiated shutdown does not exist over msgpack"},
    };
    for (size_t k = 0; k < sizeof ignored / sizeof ignored[0]; k++) {
        pyval_t *v = &tv[ignored[k].tv];
        if (v->kind == PV_UNSET || v->kind == PV_NONE ||
            (v->kind == PV_INT && v->i == ignored[k].def))
            continue;
        add_note(o, xasprintf("%s: ignored (%s)", WHERE(ignored[k].tv), ignored[k].why));
    }
    o->tac_loaded = true;
    return 0;
#undef WHERE
#undef UNREADABLE
}

int cw_opts_parse_tac(cw_opts_t *o, const char *text, size_t len, const char *path, unsigned mode,
                      char *err, size_t errlen)
{
    pyval_t tv[TV__COUNT];
    char *whys[TV__COUNT];
    memset(tv, 0, sizeof tv);
    memset(whys, 0, sizeof whys);
    int rc = 0;
    const char *p = text, *end = text + len;
    for (int line = 1; p < end; line++) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *le = nl ? nl : end;
        const char *next = nl ? nl + 1 : end;
        if (le > p && le[-1] == '\r')
            le--;
        /* only top-level "name = value" lines; indented ones are inside
         * blocks (the relocatable `if basedir == '.':` gives the same
         * answer as basedir = '.') */
        const char *t = p;
        while (t < le && (isalnum((unsigned char)*t) || *t == '_'))
            t++;
        const char *eq = t;
        while (eq < le && (*eq == ' ' || *eq == '\t'))
            eq++;
        if (t == p || isdigit((unsigned char)*p) || eq >= le || *eq != '=' ||
            (eq + 1 < le && eq[1] == '=')) {
            p = next;
            continue;
        }
        int k = -1;
        for (int i = 0; i < TV__COUNT; i++)
            if (strlen(tac_names[i]) == (size_t)(t - p) &&
                strncmp(tac_names[i], p, (size_t)(t - p)) == 0)
                k = i;
        if (k < 0) {
            p = next;
            continue;
        }
        if (memchr(p, '\0', (size_t)(le - p))) {
            rc = fail(err, errlen, "%s:%d: NUL byte in the line", path, line);
            goto out;
        }
        free(tv[k].s);
        memset(&tv[k], 0, sizeof tv[k]);
        const char *why = NULL;
        py_value(eq + 1, le, &tv[k], &why);
        tv[k].line = line;
        free(whys[k]);
        whys[k] = NULL;
        if (tv[k].kind == PV_OTHER) {
            char shown[96];
            const char *rs = eq + 1;
            while (rs < le && (*rs == ' ' || *rs == '\t'))
                rs++;
            char *raw = strndup(rs, (size_t)(le - rs));
            show(shown, sizeof shown, raw ? raw : "");
            free(raw);
            whys[k] = xasprintf("%s: %s", k == TV_PASSWD ? "<hidden>" : shown,
                                why ? why : "not understood");
        }
        if (k == TV_PASSWD && tv[k].kind == PV_STR && (mode & 077)) {
            rc = fail(err, errlen,
                      "%s:%d: passwd in a file that group or others can access (mode %04o); "
                      "refusing it: run chmod 600 '%s' (buildbot-worker create-worker makes "
                      "it 0600), or give the password another way",
                      path, line, mode & 07777, path);
            goto out;
        }
        p = next;
    }
    rc = tac_apply(o, tv, path, whys, err, errlen);
out:
    for (int i = 0; i < TV__COUNT; i++) {
        if (tv[i].s) {
            explicit_bzero(tv[i].s, strlen(tv[i].s));
            free(tv[i].s);
        }
        free(whys[i]);
    }
    return rc;
}
