/* HTTP/1.1 heads and the WebSocket upgrade, both sides, sans-I/O.
 *
 * The head collector copies bytes into h->buf and checks them as they
 * arrive, so a limit or a bad byte is reported at the byte that breaks it.
 * Each line is parsed when its LF arrives: the CR becomes the NUL that ends
 * it, a header's colon becomes the NUL that ends its name.  Pointers into
 * h->buf stay valid because the buffer never moves.
 *
 * Strictness: lines end in CRLF only (a bare LF or a CR not followed by LF is
 * CW_EHTTP); no empty line before the start line; single spaces between the
 * parts of the start line; header names are tokens followed directly by ':';
 * control characters other than HTAB are refused anywhere in the head.
 */
#include "cworker/utf8.h"
#include "cworker/http.h"

#include "cworker/cw.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "cworker/sha1.h"

#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

/* Longest decoded Basic credentials: user ':' password. */
#define CRED_DECODED_MAX (2 * CW_HTTP_MAX_CRED + 1)
/* Longest base64 text that can decode to CRED_DECODED_MAX bytes. */
#define CRED_ENCODED_MAX (4 * ((CRED_DECODED_MAX + 2) / 3))

/* ---- characters and strings ---- */

/* True for RFC 9110 tchar: the characters of a method or header name. */
static bool is_tchar(unsigned char c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
        return true;
    return c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/* True for a visible ASCII character (no space, no control, no obs-text). */
static bool is_vchar(unsigned char c)
{
    return c > 0x20 && c < 0x7f;
}

/* True for a control character that may not appear in a head line. */
static bool is_forbidden_ctl(unsigned char c)
{
    return (c < 0x20 && c != '\t') || c == 0x7f;
}

/* ASCII lower case, independent of the locale. */
static unsigned char ascii_lower(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') ? (unsigned char)(c - 'A' + 'a') : c;
}

/* Case-insensitive ASCII comparison of n bytes. */
static bool ascii_ieq_n(const char *a, const char *b, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (ascii_lower((unsigned char)a[i]) != ascii_lower((unsigned char)b[i]))
            return false;
    }
    return true;
}

/* Case-insensitive ASCII equality of two NUL-terminated strings. */
static bool ascii_ieq(const char *a, const char *b)
{
    size_t n = strlen(a);
    return n == strlen(b) && ascii_ieq_n(a, b, n);
}

/* True if every byte of s is a visible ASCII character (and s is not empty). */
static bool all_vchar(const char *s)
{
    if (*s == '\0')
        return false;
    for (; *s; s++) {
        if (!is_vchar((unsigned char)*s))
            return false;
    }
    return true;
}

/* ---- base64 ---- */

static const char b64_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* Streaming base64 encoder: input may arrive in pieces. */
typedef struct b64_enc {
    char *out; /* room for 4 * ceil(total / 3) characters */
    size_t n;  /* characters written */
    uint8_t pend[3];
    size_t npend;
} b64_enc_t;

/* Encode one complete group of three bytes. */
static void b64_group(b64_enc_t *e, const uint8_t g[3])
{
    e->out[e->n++] = b64_alphabet[g[0] >> 2];
    e->out[e->n++] = b64_alphabet[((g[0] & 0x03) << 4) | (g[1] >> 4)];
    e->out[e->n++] = b64_alphabet[((g[1] & 0x0f) << 2) | (g[2] >> 6)];
    e->out[e->n++] = b64_alphabet[g[2] & 0x3f];
}

/* Feed bytes to the encoder. */
static void b64_put(b64_enc_t *e, const void *data, size_t len)
{
    const uint8_t *p = data;
    for (size_t i = 0; i < len; i++) {
        e->pend[e->npend++] = p[i];
        if (e->npend == 3) {
            b64_group(e, e->pend);
            e->npend = 0;
        }
    }
}

/* Flush the last partial group with '=' padding; returns characters written. */
static size_t b64_finish(b64_enc_t *e)
{
    if (e->npend > 0) {
        size_t k = e->npend;
        uint8_t g[3] = {e->pend[0], k > 1 ? e->pend[1] : 0, 0};
        b64_group(e, g);
        e->out[e->n - 1] = '=';
        if (k == 1)
            e->out[e->n - 2] = '=';
        e->npend = 0;
    }
    return e->n;
}

/* Length of the base64 text for len input bytes, or SIZE_MAX on overflow. */
static size_t b64_encoded_len(size_t len)
{
    size_t groups = len / 3 + (len % 3 != 0);
    return groups > SIZE_MAX / 4 ? SIZE_MAX : groups * 4;
}

/* Value of a base64 alphabet character, or -1. */
static int b64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

/* Strict base64 decoding: whole groups of four, '=' padding only at the end,
 * unused bits zero, nothing else.  Returns the decoded length or -1. */
static long b64_decode(const char *in, size_t len, uint8_t *out, size_t cap)
{
    if (len % 4 != 0 || len / 4 * 3 > cap + 2)
        return -1;
    size_t n = 0;
    for (size_t i = 0; i < len; i += 4) {
        bool last = i + 4 == len;
        size_t pad = 0;
        if (last && in[i + 3] == '=')
            pad = in[i + 2] == '=' ? 2 : 1;
        int v[4] = {0, 0, 0, 0};
        for (size_t k = 0; k < 4 - pad; k++) {
            v[k] = b64_value((unsigned char)in[i + k]);
            if (v[k] < 0)
                return -1;
        }
        uint32_t bits =
            (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 | (uint32_t)v[3];
        size_t take = 3 - pad;
        /* The bits a padded group does not use must be zero (canonical form). */
        if ((pad == 1 && (bits & 0xff) != 0) || (pad == 2 && (bits & 0xffff) != 0))
            return -1;
        if (n + take > cap)
            return -1;
        out[n++] = (uint8_t)(bits >> 16);
        if (take > 1)
            out[n++] = (uint8_t)(bits >> 8);
        if (take > 2)
            out[n++] = (uint8_t)bits;
    }
    return (long)n;
}

/* ---- the head collector ---- */

/* Reset h to collect a new request (is_request) or response head. */
void cw_http_head_init(cw_http_head_t *h, bool is_request)
{
    memset(h, 0, sizeof(*h));
    h->is_request = is_request;
}

/* True if s is exactly "HTTP/1." followed by one digit. */
static bool is_http1_version(const char *s, size_t len)
{
    return len == 8 && memcmp(s, "HTTP/1.", 7) == 0 && s[7] >= '0' && s[7] <= '9';
}

/* Parse "METHOD SP target SP HTTP/1.x" (line is NUL-terminated, len bytes). */
static int parse_request_line(cw_http_head_t *h, char *line, size_t len)
{
    char *end = line + len;
    char *sp1 = memchr(line, ' ', len);
    if (sp1 == NULL || sp1 == line)
        return CW_EHTTP;
    for (char *p = line; p < sp1; p++) {
        if (!is_tchar((unsigned char)*p))
            return CW_EHTTP;
    }
    char *target = sp1 + 1;
    char *sp2 = target;
    while (sp2 < end && is_vchar((unsigned char)*sp2))
        sp2++;
    if (sp2 == target || sp2 == end || *sp2 != ' ')
        return CW_EHTTP;
    char *version = sp2 + 1;
    if (!is_http1_version(version, (size_t)(end - version)))
        return CW_EHTTP;
    *sp1 = '\0';
    *sp2 = '\0';
    h->method = line;
    h->target = target;
    h->version = version;
    return CW_HTTP_AGAIN;
}

/* Parse "HTTP/1.x SP 3DIGIT SP reason"; the reason (and the space before
 * an empty one) may be missing. */
static int parse_status_line(cw_http_head_t *h, char *line, size_t len)
{
    if (len < 12 || !is_http1_version(line, 8) || line[8] != ' ')
        return CW_EHTTP;
    const char *d = line + 9;
    if (d[0] < '1' || d[0] > '9' || d[1] < '0' || d[1] > '9' || d[2] < '0' || d[2] > '9')
        return CW_EHTTP;
    if (len > 12 && line[12] != ' ')
        return CW_EHTTP;
    /* The byte filter already refused controls other than HTAB, which a
     * reason phrase may contain. */
    h->status = (d[0] - '0') * 100 + (d[1] - '0') * 10 + (d[2] - '0');
    h->reason = len > 12 ? line + 13 : line + 12;
    line[8] = '\0';
    h->version = line;
    return CW_HTTP_AGAIN;
}

/* Parse "Name: value" into the next header slot. */
static int parse_header_line(cw_http_head_t *h, char *line, size_t len)
{
    char *colon = memchr(line, ':', len);
    if (colon == NULL || colon == line)
        return CW_EHTTP;
    for (char *p = line; p < colon; p++) {
        if (!is_tchar((unsigned char)*p))
            return CW_EHTTP;
    }
    char *v = colon + 1;
    char *end = line + len;
    while (v < end && (*v == ' ' || *v == '\t'))
        v++;
    while (end > v && (end[-1] == ' ' || end[-1] == '\t'))
        end--;
    *colon = '\0';
    *end = '\0';
    /* The collector refuses a line beyond the limit before it starts. */
    h->headers[h->nheaders].name = line;
    h->headers[h->nheaders].value = v;
    h->nheaders++;
    return CW_HTTP_AGAIN;
}

/* A line (ls .. ls+len, CR already replaced by NUL) has ended. */
static int end_of_line(cw_http_head_t *h, size_t ls, size_t len)
{
    char *line = h->buf + ls;
    if (h->version == NULL) {
        if (len == 0)
            return CW_EHTTP; /* no leading empty lines */
        return h->is_request ? parse_request_line(h, line, len) : parse_status_line(h, line, len);
    }
    if (len == 0) {
        h->complete = true;
        return 0;
    }
    return parse_header_line(h, line, len);
}

/* Take one byte; *ls is where the current line starts in h->buf.  Returns
 * CW_HTTP_AGAIN to go on, 0 when the head is complete, or an error. */
static int head_byte(cw_http_head_t *h, size_t *ls, unsigned char c)
{
    size_t n = h->len - *ls;
    bool after_cr = n > 0 && h->buf[h->len - 1] == '\r';

    if (after_cr && c != '\n')
        return CW_EHTTP;
    if (c == '\n') {
        if (!after_cr)
            return CW_EHTTP;
        if (h->len == CW_HTTP_MAX_HEAD)
            return CW_ETOOBIG;
        h->buf[h->len - 1] = '\0';
        h->buf[h->len++] = '\n';
        size_t start = *ls;
        *ls = h->len;
        return end_of_line(h, start, n - 1);
    }
    if (c != '\r') {
        if (is_forbidden_ctl(c))
            return CW_EHTTP;
        /* No CR in the line yet, so n counts content bytes. */
        if (n == CW_HTTP_MAX_LINE)
            return CW_ETOOBIG;
        if (n == 0 && h->version != NULL) {
            if (c == ' ' || c == '\t')
                return CW_EHTTP; /* obsolete line folding */
            if (h->nheaders == CW_HTTP_MAX_HEADERS)
                return CW_ETOOBIG;
        }
    }
    if (h->len == CW_HTTP_MAX_HEAD)
        return CW_ETOOBIG;
    h->buf[h->len++] = (char)c;
    return CW_HTTP_AGAIN;
}

/* Collect and parse head bytes; see http.h.  After an error the head stays
 * failed (h->len is set past the limit and h->status holds the error) so a
 * caller that feeds on gets the same error again.  *consumed is the number of
 * bytes accepted before the offending one. */
int cw_http_head_feed(cw_http_head_t *h, const uint8_t *data, size_t len, size_t *consumed)
{
    size_t dummy;
    if (consumed == NULL)
        consumed = &dummy;
    *consumed = 0;
    if (h == NULL)
        return CW_EBADARG;
    if (h->complete)
        return 0;
    if (h->len > CW_HTTP_MAX_HEAD)
        return h->status;
    if (data == NULL && len > 0)
        return CW_EBADARG;

    const char *nl = cw_memrchr(h->buf, '\n', h->len);
    size_t ls = nl ? (size_t)(nl - h->buf) + 1 : 0;
    for (size_t i = 0; i < len; i++) {
        int rc = head_byte(h, &ls, data[i]);
        if (rc == 0) {
            *consumed = i + 1;
            return 0;
        }
        if (rc < 0) {
            *consumed = i;
            h->len = CW_HTTP_MAX_HEAD + 1;
            h->status = rc;
            return rc;
        }
    }
    *consumed = len;
    return CW_HTTP_AGAIN;
}

/* First value of header name (case-insensitive) and how often it appears. */
const char *cw_http_head_get(const cw_http_head_t *h, const char *name, int *count)
{
    const char *first = NULL;
    int n = 0;
    for (size_t i = 0; h != NULL && name != NULL && i < h->nheaders; i++) {
        if (ascii_ieq(h->headers[i].name, name)) {
            if (first == NULL)
                first = h->headers[i].value;
            n++;
        }
    }
    if (count)
        *count = n;
    return first;
}

/* True if the comma-separated list value contains token (case-insensitive). */
bool cw_http_has_token(const char *value, const char *token)
{
    if (value == NULL || token == NULL || token[0] == '\0')
        return false;
    size_t tlen = strlen(token);
    const char *p = value;
    for (;;) {
        while (*p == ' ' || *p == '\t')
            p++;
        const char *e = strchr(p, ',');
        const char *next = e;
        if (e == NULL)
            e = p + strlen(p);
        while (e > p && (e[-1] == ' ' || e[-1] == '\t'))
            e--;
        if ((size_t)(e - p) == tlen && ascii_ieq_n(p, token, tlen))
            return true;
        if (next == NULL)
            return false;
        p = next + 1;
    }
}

/* True if any occurrence of header name lists token (repeated fields form
 * one comma-separated list, RFC 9110 §5.3). */
static bool head_has_token(const cw_http_head_t *h, const char *name, const char *token)
{
    for (size_t i = 0; i < h->nheaders; i++) {
        if (ascii_ieq(h->headers[i].name, name) && cw_http_has_token(h->headers[i].value, token))
            return true;
    }
    return false;
}

/* ---- WebSocket keys ---- */

/* Fill a fresh Sec-WebSocket-Key: 16 random bytes, base64. */
void cw_ws_key_generate(char key[25])
{
    static uint64_t fallback_counter;
    uint8_t raw[16];
    if (cw_random_bytes(raw, sizeof(raw)) != 0) {
        /* The key is a nonce against caching intermediaries, not a secret:
         * if no randomness is to be had, a changing value still does. */
        uint64_t c = ++fallback_counter;
        memset(raw, 0x5a, sizeof(raw));
        memcpy(raw, &c, sizeof(c));
    }
    b64_enc_t e = {.out = key};
    b64_put(&e, raw, sizeof(raw));
    key[b64_finish(&e)] = '\0';
}

/* base64(SHA1(key + GUID)). */
void cw_ws_accept_value(const char *key, char out[29])
{
    out[0] = '\0';
    if (key == NULL)
        return;
    uint8_t md[20];
    cw_sha1_t ctx;
    cw_sha1_init(&ctx);
    cw_sha1_update(&ctx, key, strlen(key));
    cw_sha1_update(&ctx, WS_GUID, strlen(WS_GUID));
    cw_sha1_final(&ctx, md);
    b64_enc_t e = {.out = out};
    b64_put(&e, md, sizeof md);
    out[b64_finish(&e)] = '\0';
}

/* True if key looks like a Sec-WebSocket-Key as autobahn checks it: 24
 * characters, 22 from the base64 alphabet, then "==". */
static bool ws_key_valid(const char *key)
{
    if (strlen(key) != 24 || key[22] != '=' || key[23] != '=')
        return false;
    for (size_t i = 0; i < 22; i++) {
        if (b64_value((unsigned char)key[i]) < 0)
            return false;
    }
    return true;
}

/* ---- client side ---- */

/* "Basic " + base64(user ":" password). */
int cw_http_basic_auth(cw_buf_t *out, const char *user, const char *password)
{
    if (out == NULL || user == NULL || strchr(user, ':') != NULL)
        return CW_EBADARG;
    if (password == NULL)
        password = "";
    size_t ulen = strlen(user);
    size_t plen = strlen(password);
    if (ulen > SIZE_MAX / 2 || plen > SIZE_MAX / 2 - ulen - 1)
        return -ENOMEM;
    size_t enclen = b64_encoded_len(ulen + 1 + plen);
    if (enclen > SIZE_MAX - 6)
        return -ENOMEM;
    int rc = cw_buf_reserve(out, 6 + enclen);
    if (rc < 0)
        return rc;
    memcpy(out->data + out->len, "Basic ", 6);
    b64_enc_t e = {.out = (char *)out->data + out->len + 6};
    b64_put(&e, user, ulen);
    b64_put(&e, ":", 1);
    b64_put(&e, password, plen);
    out->len += 6 + b64_finish(&e);
    return 0;
}

/* True if s is a sequence of complete "Name: value\r\n" lines. */
static bool extra_headers_valid(const char *s)
{
    while (*s) {
        const char *crlf = strstr(s, "\r\n");
        if (crlf == NULL)
            return false;
        const char *p = s;
        while (p < crlf && is_tchar((unsigned char)*p))
            p++;
        if (p == s || p == crlf || *p != ':')
            return false;
        for (; p < crlf; p++) {
            if (*p == '\r' || *p == '\n' || is_forbidden_ctl((unsigned char)*p))
                return false;
        }
        s = crlf + 2;
    }
    return true;
}

/* Append the upgrade request; out is unchanged on error. */
int cw_http_upgrade_request(cw_buf_t *out, const char *host_header, const char *path,
                            const char *user, const char *password, const char *key,
                            const char *extra_headers)
{
    if (out == NULL || host_header == NULL || path == NULL || key == NULL)
        return CW_EBADARG;
    if (!all_vchar(host_header) || path[0] != '/' || !all_vchar(path) ||
        strchr(path, '#') != NULL || !ws_key_valid(key))
        return CW_EBADARG;
    if (user != NULL && strchr(user, ':') != NULL)
        return CW_EBADARG;
    if (extra_headers != NULL && !extra_headers_valid(extra_headers))
        return CW_EBADARG;

    size_t mark = out->len;
    int rc = cw_buf_printf(out,
                           "GET %s HTTP/1.1\r\n"
                           "Host: %s\r\n"
                           "Upgrade: websocket\r\n"
                           "Connection: Upgrade\r\n",
                           path, host_header);
    if (rc == 0 && user != NULL) {
        rc = cw_buf_append_str(out, "Authorization: ");
        if (rc == 0)
            rc = cw_http_basic_auth(out, user, password);
        if (rc == 0)
            rc = cw_buf_append_str(out, "\r\n");
    }
    if (rc == 0)
        rc = cw_buf_printf(out,
                           "Sec-WebSocket-Key: %s\r\n"
                           "Sec-WebSocket-Version: 13\r\n"
                           "User-Agent: cworker/" CW_VERSION "\r\n"
                           "%s\r\n",
                           key, extra_headers ? extra_headers : "");
    if (rc < 0)
        out->len = mark;
    return rc;
}

/* Check the server's answer to our upgrade request; see http.h. */
int cw_http_upgrade_check_response(const cw_http_head_t *h, const char *key, char *err,
                                   size_t errlen)
{
    cw_err_fmt(0, err, errlen, "%s", "");
    if (h == NULL || key == NULL || !h->complete || h->is_request) {
        cw_err_fmt(0, err, errlen, "no complete response head to check");
        return CW_EBADARG;
    }
    if (h->status != 101) {
        cw_err_fmt(0, err, errlen, "HTTP %d%s%s", h->status, h->reason[0] ? " " : "", h->reason);
        return h->status == 401 ? CW_EAUTH : CW_EHANDSHAKE;
    }
    if (strcmp(h->version, "HTTP/1.1") != 0) {
        cw_err_fmt(0, err, errlen, "101 answer with unsupported version %s", h->version);
        return CW_EHANDSHAKE;
    }
    if (cw_http_head_get(h, "Upgrade", NULL) == NULL) {
        cw_err_fmt(0, err, errlen, "missing Upgrade");
        return CW_EHANDSHAKE;
    }
    if (!head_has_token(h, "Upgrade", "websocket")) {
        cw_err_fmt(0, err, errlen, "Upgrade is not websocket");
        return CW_EHANDSHAKE;
    }
    if (cw_http_head_get(h, "Connection", NULL) == NULL) {
        cw_err_fmt(0, err, errlen, "missing Connection");
        return CW_EHANDSHAKE;
    }
    if (!head_has_token(h, "Connection", "upgrade")) {
        cw_err_fmt(0, err, errlen, "Connection does not list upgrade");
        return CW_EHANDSHAKE;
    }
    int count;
    const char *accept = cw_http_head_get(h, "Sec-WebSocket-Accept", &count);
    if (accept == NULL) {
        cw_err_fmt(0, err, errlen, "missing Sec-WebSocket-Accept");
        return CW_EHANDSHAKE;
    }
    if (count > 1) {
        cw_err_fmt(0, err, errlen, "repeated Sec-WebSocket-Accept");
        return CW_EHANDSHAKE;
    }
    char expect[29];
    cw_ws_accept_value(key, expect);
    if (expect[0] == '\0') {
        cw_err_fmt(0, err, errlen, "cannot compute Sec-WebSocket-Accept (libcrypto failed)");
        return CW_EHANDSHAKE;
    }
    if (strcmp(accept, expect) != 0) {
        cw_err_fmt(0, err, errlen, "wrong Sec-WebSocket-Accept");
        return CW_EHANDSHAKE;
    }
    if (cw_http_head_get(h, "Sec-WebSocket-Extensions", NULL) != NULL) {
        cw_err_fmt(0, err, errlen, "unrequested Sec-WebSocket-Extensions");
        return CW_EHANDSHAKE;
    }
    for (size_t i = 0; i < h->nheaders; i++) {
        if (ascii_ieq(h->headers[i].name, "Sec-WebSocket-Protocol") &&
            h->headers[i].value[0] != '\0') {
            cw_err_fmt(0, err, errlen, "unrequested Sec-WebSocket-Protocol");
            return CW_EHANDSHAKE;
        }
    }
    return 0;
}

/* ---- server side ---- */

/* Parse "Basic <base64 of user:password>" strictly into out.  Returns 0 or
 * -1 for a malformed value (the caller answers 400, as the stock master). */
static int parse_basic(const char *value, cw_http_upgrade_req_t *out)
{
    /* The stock master compares the first five characters with "Basic"
     * (case-sensitive) and decodes from offset 6; we insist that the
     * character between is the one space. */
    if (strncmp(value, "Basic ", 6) != 0)
        return -1;
    const char *b64 = value + 6;
    size_t len = strlen(b64);
    if (len > CRED_ENCODED_MAX)
        return -1;
    uint8_t dec[CRED_DECODED_MAX + 2];
    long n = b64_decode(b64, len, dec, sizeof(dec));
    if (n <= 0)
        return -1; /* also "no colon" for empty credentials */
    /* The stock master decodes the credentials as UTF-8 and answers 400
     * when that fails. */
    if (!cw_utf8_valid(dec, (size_t)n))
        return -1;
    uint8_t *colon = memchr(dec, ':', (size_t)n);
    if (colon == NULL)
        return -1;
    size_t ulen = (size_t)(colon - dec);
    size_t plen = (size_t)n - ulen - 1;
    if (ulen > CW_HTTP_MAX_CRED || plen > CW_HTTP_MAX_CRED)
        return -1;
    memcpy(out->user, dec, ulen);
    out->user[ulen] = '\0';
    out->user_len = ulen;
    memcpy(out->password, colon + 1, plen);
    out->password[plen] = '\0';
    out->password_len = plen;
    return 0;
}

/* Validate an upgrade request as the stock master (autobahn) does; see http.h.
 * out->path is the whole request target, query included. */
int cw_http_upgrade_check_request(const cw_http_head_t *h, cw_http_upgrade_req_t *out)
{
    if (out != NULL)
        memset(out, 0, sizeof(*out));
    if (h == NULL || out == NULL || !h->complete || !h->is_request)
        return CW_EBADARG;

    /* autobahn answers these two with 405 and 505; the contract says 400. */
    if (strcmp(h->method, "GET") != 0 || strcmp(h->version, "HTTP/1.1") != 0)
        return 400;
    if (strchr(h->target, '#') != NULL)
        return 400;
    int count;
    cw_http_head_get(h, "Host", &count);
    if (count != 1)
        return 400;
    if (!head_has_token(h, "Upgrade", "websocket"))
        return 426;
    if (!head_has_token(h, "Connection", "upgrade"))
        return 426;
    const char *version = cw_http_head_get(h, "Sec-WebSocket-Version", &count);
    if (count > 1)
        return 400;
    if (version == NULL || (strcmp(version, "13") != 0 && strcmp(version, "8") != 0))
        return 426;
    const char *key = cw_http_head_get(h, "Sec-WebSocket-Key", &count);
    if (count != 1 || !ws_key_valid(key))
        return 400;
    const char *auth = cw_http_head_get(h, "Authorization", &count);
    if (count > 1)
        return 400;
    if (auth != NULL) {
        if (parse_basic(auth, out) < 0) {
            memset(out, 0, sizeof(*out));
            return 400;
        }
        out->has_auth = true;
    }
    out->path = h->target;
    out->key = key;
    return 0;
}

/* Append the 101 answer for key. */
int cw_http_upgrade_response(cw_buf_t *out, const char *key)
{
    if (out == NULL || key == NULL)
        return CW_EBADARG;
    char accept[29];
    cw_ws_accept_value(key, accept);
    if (accept[0] == '\0')
        return -ENOMEM;
    return cw_buf_printf(out,
                         "HTTP/1.1 101 Switching Protocols\r\n"
                         "Upgrade: websocket\r\n"
                         "Connection: Upgrade\r\n"
                         "Sec-WebSocket-Accept: %s\r\n"
                         "\r\n",
                         accept);
}

/* Append a bodyless error answer; CW_EBADARG for a status we do not send. */
int cw_http_error_response(cw_buf_t *out, int status)
{
    const char *reason;
    const char *extra = "";
    switch (status) {
    case 400:
        reason = "Bad request"; /* sic: the stock master's spelling */
        break;
    case 401:
        reason = "Unauthorized";
        break;
    case 403:
        reason = "Forbidden";
        break;
    case 404:
        reason = "Not Found";
        break;
    case 405:
        reason = "Method Not Allowed";
        extra = "Allow: GET\r\n";
        break;
    case 426:
        reason = "Upgrade Required";
        extra = "Sec-WebSocket-Version: 13\r\n";
        break;
    case 500:
        reason = "Internal Server Error";
        break;
    case 503:
        reason = "Service Unavailable";
        break;
    case 505:
        reason = "HTTP Version Not Supported";
        break;
    default:
        return CW_EBADARG;
    }
    if (out == NULL)
        return CW_EBADARG;
    return cw_buf_printf(out, "HTTP/1.1 %d %s\r\n%s\r\n", status, reason, extra);
}
