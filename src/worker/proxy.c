/* Addresses in option values: the HTTP CONNECT proxy URL and the no_proxy
 * list (cworker follows curl's reading of http_proxy/https_proxy/no_proxy),
 * and numeric HOST:PORT listen addresses.  Plain C, no I/O. */
#include "options.h"
#include "optutil.h"
#include "cworker/cw.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

int cw_hostport_parse(const char *s, char **host, int *port)
{
    char *h = NULL;
    int p = 0;
    bool had = false;
    if (cw_opt_split_hostport(s, strlen(s), &h, &p, &had) < 0)
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
    if (cw_opt_split_hostport(hp, len - (size_t)(hp - s), &p->host, &p->port, NULL) < 0) {
        cw_proxy_free(p);
        return -EINVAL;
    }
    return 0;
}

/* The canonical "http://[userinfo@]host:port" form of a valid proxy URL. */
char *cw_proxy_normalise(const char *url)
{
    cw_proxy_t p;
    if (cw_proxy_parse(url, &p) < 0)
        return NULL;
    const char *s = strncasecmp(url, "http://", 7) == 0 ? url + 7 : url;
    size_t len = strcspn(s, "/");
    const char *at = cw_memrchr(s, '@', len);
    bool v6 = strchr(p.host, ':') != NULL;
    char *out = cw_opt_asprintf("http://%.*s%s%s%s:%d", at ? (int)(at - s + 1) : 0, s,
                                v6 ? "[" : "", p.host, v6 ? "]" : "", p.port);
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
        if (cw_opt_parse_u64(pb, &pv) < 0 || pv != (uint64_t)port)
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
        if (cw_opt_parse_u64(pb, &bits) < 0 || bits > (ef == AF_INET ? 32u : 128u))
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
