/* Option values: the store of raw values from every source (cw_opts_t), and
 * what each type of option in the table accepts and how it is printed. */
#include "options.h"
#include "optutil.h"
#include "options_table.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ------------------------------------------------------------------------ */
/* The store                                                                */
/* ------------------------------------------------------------------------ */

void cw_opts_init(cw_opts_t *o)
{
    memset(o, 0, sizeof *o);
}

/* Free an optval's strings (the value wiped: it may be the password). */
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

void cw_opts_free(cw_opts_t *o)
{
    for (int i = 0; i < CW_OPT__COUNT; i++)
        optval_clear(&o->v[i]);
    free(o->write_config);
    free(o->proxy_env);
    for (size_t i = 0; i < o->nnotes; i++)
        free(o->notes[i]);
    free(o->notes);
    memset(o, 0, sizeof *o);
}

void cw_opts_note(cw_opts_t *o, char *note)
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

/* Replace v by (value or bad reason, where, src): a source of higher or
 * equal precedence wins. */
static int store(cw_optval_t *v, const char *value, const char *bad, const char *where,
                 cw_src_t src, char *err, size_t errlen)
{
    if (v->src > src)
        return 0;
    char *nv = value ? strdup(value) : NULL, *nb = bad ? strdup(bad) : NULL, *nw = strdup(where);
    if ((value && nv == NULL) || (bad && nb == NULL) || nw == NULL) {
        free(nv);
        free(nb);
        free(nw);
        return cw_opt_oom(err, errlen);
    }
    optval_clear(v);
    v->value = nv;
    v->bad = nb;
    v->where = nw;
    v->src = src;
    return 0;
}

int cw_opts_set(cw_opts_t *o, cw_opt_id_t id, const char *value, const char *where, cw_src_t src,
                char *err, size_t errlen)
{
    return store(&o->v[id], value, NULL, where, src, err, errlen);
}

int cw_opts_set_bad(cw_opts_t *o, cw_opt_id_t id, const char *where, cw_src_t src, const char *why,
                    char *err, size_t errlen)
{
    return store(&o->v[id], NULL, why, where, src, err, errlen);
}

void cw_opts_unset(cw_opts_t *o, cw_opt_id_t id)
{
    optval_clear(&o->v[id]);
}

/* ------------------------------------------------------------------------ */
/* Parsers of the value types                                               */
/* ------------------------------------------------------------------------ */

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

/* "022", "0022", "0o22" (octal, at most 0777) or none (-1). */
static int parse_umask(const char *s, long *out)
{
    if (cw_opt_is_none(s)) {
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

/* Parse "HOST[:PORT]", "[V6][:PORT]" or "ws[s]://HOST[:PORT]/PATH" into
 * cfg (port defaults: 9989, or 80/443 in the URL forms). */
static int parse_master(const char *s, cw_config_t *cfg)
{
    const char *hp = s;
    bool url = false, tls = false;
    if (strncmp(s, "ws://", 5) == 0) {
        hp = s + 5;
        url = true;
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
    if (cw_opt_split_hostport(hp, hplen, &host, &port, NULL) < 0)
        return -1;
    char *path = strdup(slash ? slash : "/");
    if (path == NULL) {
        free(host);
        return -ENOMEM;
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

/* Whatever a worker name may not be: the reason, or NULL. */
static const char *bad_name(const char *name)
{
    if (name[0] == '\0')
        return "empty worker name";
    if (strchr(name, ':'))
        return "a worker name must not contain ':'";
    for (const char *c = name; *c; c++)
        if ((unsigned char)*c < 0x20 || *c == 0x7f)
            return "control character in the worker name";
    return NULL;
}

/* The protocol: pb, or msgpack_experimental_v7 and its short name msgpack
 * (the names Buildbot's c['protocols'] and the stock worker use). */
static int parse_protocol(const char *s, cw_protocol_t *out)
{
    if (strcmp(s, "pb") == 0)
        *out = CW_PROTO_PB;
    else if (strcmp(s, "msgpack_experimental_v7") == 0 || strcmp(s, "msgpack") == 0)
        *out = CW_PROTO_MSGPACK;
    else
        return -1;
    return 0;
}

/* Does s match the option's word for "none" (its zero or unset value)? */
static bool is_none_word(const cw_optdef_t *d, const char *s)
{
    if (d->none == NULL)
        return false;
    if (strcmp(d->none, "none") == 0)
        return cw_opt_is_none(s);
    return strcasecmp(s, d->none) == 0;
}

/* The relay: HOST:PORT or [V6]:PORT, a name or an address, the port
 * required (a relay has no well-known port); none: no relay. */
static int parse_relay(const cw_optdef_t *d, const char *s, cw_config_t *cfg)
{
    char *host = NULL, *canon = NULL;
    int port = 0;
    bool had_port = false;
    if (!is_none_word(d, s)) {
        if (strchr(s, '/') || cw_opt_split_hostport(s, strlen(s), &host, &port, &had_port) < 0)
            return -1;
        if (!had_port || (canon = cw_opt_join_hostport(host, port)) == NULL) {
            free(host);
            return had_port ? -ENOMEM : -1;
        }
    }
    free(cfg->relay);
    free(cfg->relay_host);
    cfg->relay = canon;
    cfg->relay_host = host;
    cfg->relay_port = port;
    return 0;
}

/* The index of s among the space-separated words, or -1. */
static int word_index(const char *words, const char *s)
{
    size_t n = strlen(s);
    int i = 0;
    for (const char *w = words; *w; i++) {
        size_t l = strcspn(w, " ");
        if (l == n && strncmp(w, s, n) == 0)
            return i;
        w += l;
        w += strspn(w, " ");
    }
    return -1;
}

/* Store a number into the field of ctype at p. */
static void put_number(cw_ctype_t ctype, void *p, uint64_t n)
{
    switch (ctype) {
    case CW_C_INT:
        *(int *)p = (int)n;
        break;
    case CW_C_UINT:
        *(unsigned *)p = (unsigned)n;
        break;
    case CW_C_SIZE:
        *(size_t *)p = (size_t)n;
        break;
    default:
        *(uint64_t *)p = n;
        break;
    }
}

/* Replace the string field at p by a copy of s (NULL clears it). */
static int put_str(void *p, const char *s)
{
    char **f = p, *c = s ? strdup(s) : NULL;
    if (s && c == NULL)
        return -ENOMEM;
    if (*f) {
        explicit_bzero(*f, strlen(*f));
        free(*f);
    }
    *f = c;
    return 0;
}

/* The numeric types: seconds, numbers, the umask, booleans, words. */
static int parse_scalar(const cw_optdef_t *d, const char *s, void *p)
{
    double sec;
    uint64_t n;
    bool b;
    int w;
    switch (d->type) {
    case CW_T_SECONDS:
        if (parse_seconds(s, &sec) < 0 || sec < (double)d->min)
            return -1;
        if (d->ctype == CW_C_MS)
            /* rounded (sec >= 0), so printed values read back; no llround():
             * libm would be mapped for this one call */
            *(uint64_t *)p = (uint64_t)(sec * 1000.0 + 0.5);
        else
            *(double *)p = sec;
        return 0;
    case CW_T_NUMBER:
        if (is_none_word(d, s))
            n = 0;
        else if (cw_opt_parse_u64(s, &n) < 0 || n < d->min || n > d->max)
            return -1;
        put_number(d->ctype, p, n);
        return 0;
    case CW_T_UMASK:
        return parse_umask(s, p);
    case CW_T_BOOL:
        if (parse_bool(s, &b) < 0)
            return -1;
        *(bool *)p = b;
        return 0;
    default: /* CW_T_WORD; the word for none (any spelling) is the first */
        if (is_none_word(d, s))
            w = 0;
        else if ((w = word_index(d->words, s)) < 0)
            return -1;
        *(int *)p = w;
        return 0;
    }
}

/* CW_T_WORD fields are enums written as int (cw_config_t.allow_shutdown). */
_Static_assert(sizeof(cw_allow_shutdown_t) == sizeof(int), "an enum field the size of an int");

int cw_opt_parse(cw_opt_id_t id, const char *s, cw_config_t *cfg, const char **why)
{
    const cw_optdef_t *d = &cw_optdefs[id];
    void *p = (char *)cfg + d->off;
    *why = d->need;
    switch (d->type) {
    case CW_T_MASTER:
        return parse_master(s, cfg);
    case CW_T_PROTOCOL:
        return parse_protocol(s, &cfg->protocol);
    case CW_T_NAME:
        if ((*why = bad_name(s)) != NULL)
            return -1;
        return put_str(p, s);
    case CW_T_PATH:
    case CW_T_SECRET:
        if (is_none_word(d, s))
            s = NULL;
        else if (s[0] == '\0')
            return -1;
        return d->ctype == CW_C_STR ? put_str(p, s) : 0;
    case CW_T_PROXY: {
        if (is_none_word(d, s))
            return put_str(p, NULL);
        if (strncasecmp(s, "https://", 8) == 0) {
            *why = "TLS to the proxy itself is not supported; use http://HOST:PORT (the tunnel "
                   "to a wss:// master is still TLS end to end)";
            return -1;
        }
        char *url = cw_proxy_normalise(s);
        if (url == NULL)
            return -1;
        int rc = put_str(p, url);
        free(url);
        return rc;
    }
    case CW_T_RELAY:
        return parse_relay(d, s, cfg);
    case CW_T_LISTEN: {
        if (is_none_word(d, s))
            return put_str(p, NULL);
        char *h;
        int port;
        if (cw_hostport_parse(s, &h, &port) < 0)
            return -1;
        free(h);
        return put_str(p, s);
    }
    default:
        return parse_scalar(d, s, p);
    }
}

/* ------------------------------------------------------------------------ */
/* Printers                                                                 */
/* ------------------------------------------------------------------------ */

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

/* A number field of ctype at p. */
static uint64_t get_number(cw_ctype_t ctype, const void *p)
{
    switch (ctype) {
    case CW_C_INT:
        return (uint64_t) * (const int *)p;
    case CW_C_UINT:
        return *(const unsigned *)p;
    case CW_C_SIZE:
        return *(const size_t *)p;
    default:
        return *(const uint64_t *)p;
    }
}

/* The numeric types' text. */
static const char *format_scalar(const cw_optdef_t *d, const void *p, char *buf, size_t cap)
{
    uint64_t n;
    switch (d->type) {
    case CW_T_SECONDS:
        if (d->ctype == CW_C_MS) {
            fmt_ms(buf, cap, *(const uint64_t *)p);
        } else {
            double v = *(const double *)p;
            snprintf(buf, cap, "%.15g", v);
            if (strtod(buf, NULL) != v)
                snprintf(buf, cap, "%.17g", v);
        }
        return buf;
    case CW_T_NUMBER:
        n = get_number(d->ctype, p);
        if (n == 0 && d->none)
            return d->none;
        snprintf(buf, cap, "%llu", (unsigned long long)n);
        return buf;
    case CW_T_UMASK:
        if (*(const long *)p < 0)
            return "none";
        snprintf(buf, cap, "%03lo", (unsigned long)*(const long *)p);
        return buf;
    case CW_T_BOOL:
        return *(const bool *)p ? "true" : "false";
    default: { /* CW_T_WORD */
        const char *w = d->words;
        for (int i = *(const int *)p; i > 0 && *w; i--) {
            w += strcspn(w, " ");
            w += strspn(w, " ");
        }
        snprintf(buf, cap, "%.*s", (int)strcspn(w, " "), w);
        return buf;
    }
    }
}

const char *cw_opt_format(cw_opt_id_t id, const cw_config_t *cfg, char *buf, size_t cap)
{
    const cw_optdef_t *d = &cw_optdefs[id];
    const void *p = (const char *)cfg + d->off;
    switch (d->type) {
    case CW_T_MASTER: { /* PB: HOST:PORT (TLS is use-tls); msgpack: the URL */
        bool v6 = strchr(cfg->master_host, ':') != NULL;
        if (cfg->protocol == CW_PROTO_PB)
            snprintf(buf, cap, "%s%s%s:%d", v6 ? "[" : "", cfg->master_host, v6 ? "]" : "",
                     cfg->master_port);
        else
            snprintf(buf, cap, "%s://%s%s%s:%d%s", cfg->use_tls ? "wss" : "ws", v6 ? "[" : "",
                     cfg->master_host, v6 ? "]" : "", cfg->master_port, cfg->master_path);
        return buf;
    }
    case CW_T_PROTOCOL:
        return cfg->protocol == CW_PROTO_PB ? "pb" : "msgpack_experimental_v7";
    case CW_T_NAME:
    case CW_T_PATH:
    case CW_T_SECRET:
    case CW_T_PROXY:
    case CW_T_LISTEN:
    case CW_T_RELAY:
        if (d->ctype != CW_C_STR)
            return NULL;
        return *(char *const *)p ? *(char *const *)p : d->none;
    default:
        return format_scalar(d, p, buf, cap);
    }
}
