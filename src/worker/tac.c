/* buildbot.tac import: the variables `buildbot-worker create-worker` writes,
 * read with a small parser of Python literals (cworker never runs Python)
 * and given to the options whose table rows name them, at precedence
 * CW_SRC_TAC.  See README "Switching from buildbot-worker". */
#include "tac.h"
#include "optutil.h"
#include "options_table.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------ */
/* Python literals                                                          */
/* ------------------------------------------------------------------------ */

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

int cw_py_int(const char **ps, const char *end, long long *out, bool *legacy)
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
static void py_value(const char *s, const char *end, cw_pyval_t *pv, const char **why)
{
    pv->kind = CW_PV_OTHER;
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
        pv->kind = CW_PV_STR;
        pv->s = buf;
    } else if (wl == 4 && strncmp(s, "None", 4) == 0) {
        pv->kind = CW_PV_NONE;
        s = t;
    } else if ((wl == 4 && strncmp(s, "True", 4) == 0) ||
               (wl == 5 && strncmp(s, "False", 5) == 0)) {
        pv->kind = CW_PV_BOOL;
        pv->i = wl == 4;
        s = t;
    } else if (s < end && isdigit((unsigned char)*s)) {
        if (cw_py_int(&s, end, &pv->i, &pv->legacy_octal) < 0) {
            *why = "not a number Python would accept";
            return;
        }
        pv->kind = CW_PV_INT;
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
            pv->kind = CW_PV_FILEDIR;
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
        pv->kind = CW_PV_OTHER;
        *why = "an expression, and cworker reads only literals (it does not run Python)";
    }
}

/* Parse a Twisted client endpoint string ("tcp:host=H:port=P",
 * "tcp:H:P", "tls:..."); *tls for "tls:".  0 or -1. */
static int twisted_endpoint(const char *s, char **host, int *port, bool *tls)
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
    if (h == NULL || p == NULL || cw_opt_parse_u64(p, &pv) < 0 || pv < 1 || pv > 65535 ||
        !cw_opt_valid_host(h, strchr(h, ':') != NULL))
        goto bad;
    *host = strdup(h);
    *port = (int)pv;
    free(copy);
    return *host ? 0 : -1;
bad:
    free(copy);
    return -1;
}

/* ------------------------------------------------------------------------ */
/* From values to options (shared with create-worker)                       */
/* ------------------------------------------------------------------------ */

/* Python's truth of an int or bool literal (None is false). */
static bool py_truthy(const cw_pyval_t *v)
{
    return (v->kind == CW_PV_INT || v->kind == CW_PV_BOOL) && v->i != 0;
}

/* "http://HOST:PORT" from a Twisted tcp: endpoint, or NULL. */
static char *proxy_url(const char *endpoint)
{
    char *host = NULL, *hp = NULL, *url = NULL;
    int port;
    bool tls;
    if (twisted_endpoint(endpoint, &host, &port, &tls) == 0 && !tls &&
        (hp = cw_opt_join_hostport(host, port)) != NULL)
        url = cw_opt_asprintf("http://%s", hp);
    free(host);
    free(hp);
    return url;
}

/* The directory a basedir value names: '.' and os.path...(__file__) are the
 * tac's own directory, a relative one is relative to it.  NULL: none. */
static char *tac_basedir(const cw_pyval_t *v, const char *tac, int *oom)
{
    char *dir = NULL;
    if (v->kind == CW_PV_FILEDIR || (v->kind == CW_PV_STR && strcmp(v->s, ".") == 0)) {
        const char *slash = tac ? strrchr(tac, '/') : NULL;
        dir = slash == NULL  ? strdup(".")
              : slash == tac ? strdup("/")
                             : strndup(tac, (size_t)(slash - tac));
    } else if (v->kind == CW_PV_STR && v->s[0]) {
        dir = tac ? cw_opt_relative_to(tac, v->s) : strdup(v->s);
    } else {
        return NULL;
    }
    *oom = dir == NULL;
    return dir;
}

int cw_tac_import(cw_opts_t *o, cw_opt_id_t id, const cw_pyval_t *v, const char *where,
                  cw_src_t src, const char *tac, const char **why, char *err, size_t errlen)
{
    const cw_optdef_t *d = &cw_optdefs[id];
    char buf[32];
    const char *val = buf;
    char *heap = NULL;
    int oom = 0;
    switch (d->tac_kind) {
    case CW_TAC_STR:
    case CW_TAC_PROTOCOL:
        *why = d->tac_none ? "needs a string or None" : "needs a string";
        if (v->kind == CW_PV_NONE && d->tac_none)
            val = d->tac_none;
        else if (v->kind != CW_PV_STR)
            return 1;
        else
            val = v->s;
        break;
    case CW_TAC_BASEDIR:
        *why = "needs a directory name";
        if ((val = heap = tac_basedir(v, tac, &oom)) == NULL)
            return oom ? cw_opt_oom(err, errlen) : 1;
        break;
    case CW_TAC_UMASK:
        *why = "needs a number from 0 to 0o777, or None";
        if (v->kind == CW_PV_NONE)
            return 0;
        if (v->kind != CW_PV_INT || v->i < 0 || v->i > 0777)
            return 1;
        snprintf(buf, sizeof buf, "%03llo", (unsigned long long)v->i);
        if (v->legacy_octal)
            cw_opts_note(o, cw_opt_asprintf("%s: umask %s is a Python 2 octal literal (Python 3 "
                                            "refuses it); read as octal %s",
                                            where, buf, buf));
        break;
    case CW_TAC_INT: /* the range is the option's to check, with its own message */
        *why = "needs a number, or None";
        if (v->kind == CW_PV_NONE && d->tac_none == NULL)
            return 0;
        if (v->kind == CW_PV_NONE)
            val = d->tac_none;
        else if (v->kind != CW_PV_INT)
            return 1;
        else
            snprintf(buf, sizeof buf, "%lld", v->i);
        break;
    case CW_TAC_BOOL:
        *why = "needs True, False, None or a number";
        if (v->kind != CW_PV_INT && v->kind != CW_PV_BOOL && v->kind != CW_PV_NONE)
            return 1;
        val = py_truthy(v) ? "true" : "false";
        break;
    case CW_TAC_PROXY:
        *why = "needs the tcp: endpoint of an HTTP CONNECT proxy, like tcp:host=PROXY:port=3128";
        if (v->kind == CW_PV_NONE)
            return 0;
        if (v->kind != CW_PV_STR || (val = heap = proxy_url(v->s)) == NULL)
            return 1;
        break;
    default:
        *why = "not read from a tac";
        return 1;
    }
    int rc = cw_opts_set(o, id, val, where, src, err, errlen);
    free(heap);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Reading a tac                                                            */
/* ------------------------------------------------------------------------ */

#define MAX_VARS (CW_OPT__COUNT * 3 + CW_NFOREIGN)

/* A variable of the tac that an option (or an ignored setting) reads. */
typedef struct tacvar {
    const char *name;
    int opt;     /* the option, or -1 */
    int foreign; /* or the cw_foreign index, or -1 */
    cw_pyval_t v;
    int line;
    char *shown;     /* the right-hand side as written, for messages */
    const char *why; /* why an expression was not read */
} tacvar_t;

typedef struct tac {
    cw_opts_t *o;
    const char *path;
    unsigned mode;
    tacvar_t vars[MAX_VARS];
    size_t nvars;
    char where[PATH_MAX + 64];
} tac_t;

/* The variables the table knows, unset. */
static void tac_init(tac_t *t)
{
    for (int id = 0; id < CW_OPT__COUNT; id++)
        for (int k = 0; k < 3 && cw_optdefs[id].tac[k]; k++)
            t->vars[t->nvars++] =
                (tacvar_t){.name = cw_optdefs[id].tac[k], .opt = id, .foreign = -1};
    for (size_t f = 0; f < CW_NFOREIGN; f++)
        if (cw_foreign[f].tac)
            t->vars[t->nvars++] =
                (tacvar_t){.name = cw_foreign[f].tac, .opt = -1, .foreign = (int)f};
}

static void tac_free(tac_t *t)
{
    for (size_t i = 0; i < t->nvars; i++) {
        if (t->vars[i].v.s) {
            explicit_bzero(t->vars[i].v.s, strlen(t->vars[i].v.s));
            free(t->vars[i].v.s);
        }
        free(t->vars[i].shown);
    }
}

static tacvar_t *tac_var(tac_t *t, const char *name, size_t len)
{
    for (size_t i = 0; i < t->nvars; i++)
        if (strlen(t->vars[i].name) == len && strncmp(t->vars[i].name, name, len) == 0)
            return &t->vars[i];
    return NULL;
}

/* "TAC:LINE (var)" in t->where. */
static const char *tac_where(tac_t *t, const tacvar_t *var)
{
    snprintf(t->where, sizeof t->where, "%s:%d (%s)", t->path, var->line, var->name);
    return t->where;
}

/* var has a value option id cannot take: an error unless a source of higher
 * precedence sets the option. */
static int tac_bad(tac_t *t, int id, const tacvar_t *var, const char *why, char *err, size_t errlen)
{
    char msg[512];
    snprintf(msg, sizeof msg,
             "%s = %s: %s; give %s with a flag, a CWORKER_ variable or a config file instead",
             var->name, var->shown ? var->shown : "?",
             var->v.kind == CW_PV_OTHER && var->why ? var->why : why,
             id == CW_OPT_PASSWORD ? "the password (password-file)" : cw_optdefs[id].name);
    return cw_opts_set_bad(t->o, id, tac_where(t, var), CW_SRC_TAC, msg, err, errlen);
}

/* Import var into option id; a value it cannot take is recorded as bad. */
static int tac_import_var(tac_t *t, int id, const tacvar_t *var, char *err, size_t errlen)
{
    const char *why = NULL;
    int rc =
        cw_tac_import(t->o, id, &var->v, tac_where(t, var), CW_SRC_TAC, t->path, &why, err, errlen);
    return rc == 1 ? tac_bad(t, id, var, why, err, errlen) : rc;
}

/* The master: buildmaster_host + port, or a connection_string (whose tls:
 * or tcp: then decides use-tls). */
static int tac_master(tac_t *t, bool *tls_decided, char *err, size_t errlen)
{
    const cw_optdef_t *d = &cw_optdefs[CW_OPT_MASTER];
    tacvar_t *h = tac_var(t, d->tac[0], strlen(d->tac[0]));
    tacvar_t *p = tac_var(t, d->tac[1], strlen(d->tac[1]));
    tacvar_t *cs = tac_var(t, d->tac[2], strlen(d->tac[2]));
    char *host = NULL, *m = NULL;
    int port = 0, rc = 0;
    bool tls = false;
    *tls_decided = cs->v.kind == CW_PV_STR;
    if (cs->v.kind == CW_PV_STR) {
        if (twisted_endpoint(cs->v.s, &host, &port, &tls) < 0)
            return tac_bad(t, CW_OPT_MASTER, cs, "needs a tcp: or tls: endpoint", err, errlen);
        m = cw_opt_join_hostport(host, port);
        rc = m ? cw_opts_set(t->o, CW_OPT_MASTER, m, tac_where(t, cs), CW_SRC_TAC, err, errlen)
               : cw_opt_oom(err, errlen);
        if (rc == 0 && tls)
            rc = cw_opts_set(t->o, CW_OPT_USE_TLS, "true", t->where, CW_SRC_TAC, err, errlen);
    } else if (h->v.kind == CW_PV_STR && (p->v.kind == CW_PV_INT || p->v.kind == CW_PV_STR)) {
        uint64_t pn = (uint64_t)p->v.i;
        bool ok = p->v.kind == CW_PV_INT
                      ? (p->v.i >= 1 && p->v.i <= 65535)
                      : (cw_opt_parse_u64(p->v.s, &pn) == 0 && pn >= 1 && pn <= 65535);
        if (!ok) /* (before the host: a bare IPv6 address must not hide a bad port) */
            return tac_bad(t, CW_OPT_MASTER, p, "needs a port from 1 to 65535", err, errlen);
        ok = cw_opt_split_hostport(h->v.s, strlen(h->v.s), &host, &port, NULL) == 0;
        if (!ok && strchr(h->v.s, ':') && cw_opt_valid_host(h->v.s, true))
            ok = (host = strdup(h->v.s)) != NULL; /* IPv6 written without brackets */
        if (!ok)
            return tac_bad(t, CW_OPT_MASTER, h, "needs a host name", err, errlen);
        m = cw_opt_join_hostport(host, (long long)pn);
        rc = m ? cw_opts_set(t->o, CW_OPT_MASTER, m, tac_where(t, h), CW_SRC_TAC, err, errlen)
               : cw_opt_oom(err, errlen);
    } else if (h->v.kind != CW_PV_UNSET || p->v.kind != CW_PV_UNSET) {
        tacvar_t *culprit = h->v.kind == CW_PV_STR || h->v.kind == CW_PV_UNSET ? p : h;
        rc = tac_bad(t, CW_OPT_MASTER, culprit, "needs a host name and a port", err, errlen);
    }
    free(host);
    free(m);
    return rc;
}

/* Every option the tac has a value for; notes for ignored settings. */
static int tac_apply(tac_t *t, char *err, size_t errlen)
{
    bool tls_decided = false;
    int rc = tac_master(t, &tls_decided, err, errlen);
    for (size_t i = 0; i < t->nvars && rc == 0; i++) {
        tacvar_t *var = &t->vars[i];
        int id = var->opt;
        if (id < 0 || id == CW_OPT_MASTER || (id == CW_OPT_USE_TLS && tls_decided))
            continue;
        if (var->v.kind != CW_PV_UNSET) {
            rc = tac_import_var(t, id, var, err, errlen);
        } else if (cw_optdefs[id].tac_kind == CW_TAC_PROTOCOL) {
            snprintf(t->where, sizeof t->where, "%s (no protocol line: the stock default 'pb')",
                     t->path);
            rc = cw_opts_set(t->o, id, "pb", t->where, CW_SRC_TAC, err, errlen);
        }
    }
    for (size_t i = 0; i < t->nvars && rc == 0; i++) {
        const tacvar_t *var = &t->vars[i];
        if (var->foreign < 0 || var->v.kind == CW_PV_UNSET || var->v.kind == CW_PV_NONE ||
            (var->v.kind == CW_PV_INT && var->v.i == cw_foreign[var->foreign].tac_def))
            continue;
        cw_opts_note(t->o, cw_opt_asprintf("%s: ignored (%s)", tac_where(t, var),
                                           cw_foreign[var->foreign].why));
    }
    return rc;
}

/* A top-level "name = value" line p..le of a variable we read, or nothing. */
static int tac_line(tac_t *t, int line, const char *p, const char *le, char *err, size_t errlen)
{
    if (le > p && le[-1] == '\r')
        le--;
    /* only top-level lines; indented ones are inside blocks (the relocatable
     * `if basedir == '.':` gives the same answer as basedir = '.') */
    const char *n = p;
    while (n < le && (isalnum((unsigned char)*n) || *n == '_'))
        n++;
    const char *eq = n;
    while (eq < le && (*eq == ' ' || *eq == '\t'))
        eq++;
    if (n == p || isdigit((unsigned char)*p) || eq >= le || *eq != '=' ||
        (eq + 1 < le && eq[1] == '='))
        return 0;
    tacvar_t *var = tac_var(t, p, (size_t)(n - p));
    if (var == NULL)
        return 0;
    if (memchr(p, '\0', (size_t)(le - p)))
        return cw_opt_fail(err, errlen, "%s:%d: NUL byte in the line", t->path, line);
    free(var->v.s);
    free(var->shown);
    memset(&var->v, 0, sizeof var->v);
    var->why = NULL;
    var->line = line;
    py_value(eq + 1, le, &var->v, &var->why);
    const char *rs = eq + 1;
    while (rs < le && (*rs == ' ' || *rs == '\t'))
        rs++;
    bool secret = var->opt >= 0 && cw_optdefs[var->opt].type == CW_T_SECRET;
    char shown[120], *raw = strndup(rs, (size_t)(le - rs));
    cw_opt_show(shown, sizeof shown, raw ? raw : "");
    free(raw);
    var->shown = strdup(secret ? "<hidden>" : shown);
    if (secret && var->v.kind == CW_PV_STR && (t->mode & 077))
        return cw_opt_fail(err, errlen,
                           "%s:%d: %s in a file that group or others can access (mode %04o); "
                           "refusing it: run chmod 600 '%s' (buildbot-worker create-worker "
                           "makes it 0600), or give the password another way",
                           t->path, line, var->name, t->mode & 07777, t->path);
    return 0;
}

int cw_opts_parse_tac(cw_opts_t *o, const char *text, size_t len, const char *path, unsigned mode,
                      char *err, size_t errlen)
{
    tac_t *t = calloc(1, sizeof *t);
    if (t == NULL)
        return cw_opt_oom(err, errlen);
    t->o = o;
    t->path = path;
    t->mode = mode;
    tac_init(t);
    int rc = 0;
    const char *p = text, *end = text + len;
    for (int line = 1; p < end && rc == 0; line++) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        rc = tac_line(t, line, p, nl ? nl : end, err, errlen);
        p = nl ? nl + 1 : end;
    }
    if (rc == 0)
        rc = tac_apply(t, err, errlen);
    tac_free(t);
    free(t);
    return rc;
}
