/* libFuzzer target for the HTTP head collector and the WebSocket upgrade checks.
 *
 * The first input byte seeds the split pattern; the rest is fed as a request
 * head (then the server check) and as a response head (then the client check),
 * once whole and once in pieces.  Besides the sanitizers it checks that
 *  - whole and split feeding agree on result, consumed count and fields;
 *  - an accepted upgrade request gets a 101 our own client accepts;
 *  - accepted Basic credentials re-encode to exactly the header they came from;
 *  - error messages are one line. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cworker/buf.h"
#include "cworker/cw.h"
#include "cworker/http.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* xorshift32: split sizes derived from the input. */
static uint32_t next_rand(uint32_t *s)
{
    uint32_t x = *s ? *s : 0x9e3779b9u;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    *s = x;
    return x;
}

/* Feed data in pseudo-random pieces; returns the result, *used the bytes taken. */
static int feed_pieces(cw_http_head_t *h, const uint8_t *data, size_t size, uint32_t seed,
                       size_t *used)
{
    size_t off = 0;
    int rc = CW_HTTP_AGAIN;
    while (off < size) {
        size_t piece = 1 + next_rand(&seed) % 64;
        if (piece > size - off)
            piece = size - off;
        size_t c;
        rc = cw_http_head_feed(h, data + off, piece, &c);
        if (c > piece)
            abort();
        off += c;
        if (rc != CW_HTTP_AGAIN)
            break;
        if (c != piece)
            abort();
    }
    *used = off;
    return rc;
}

/* Abort unless two NUL-terminated strings (or two NULLs) are equal. */
static void same_str(const char *a, const char *b)
{
    if ((a == NULL) != (b == NULL) || (a && strcmp(a, b) != 0))
        abort();
}

/* Abort unless two parsed heads hold the same fields. */
static void same_head(const cw_http_head_t *a, const cw_http_head_t *b)
{
    same_str(a->method, b->method);
    same_str(a->target, b->target);
    same_str(a->version, b->version);
    same_str(a->reason, b->reason);
    if (a->status != b->status || a->nheaders != b->nheaders)
        abort();
    for (size_t i = 0; i < a->nheaders; i++) {
        same_str(a->headers[i].name, b->headers[i].name);
        same_str(a->headers[i].value, b->headers[i].value);
    }
}

/* Server side: check the request, answer it, and read our own answer back. */
static void server_side(const cw_http_head_t *h)
{
    static cw_http_upgrade_req_t req;
    int rc = cw_http_upgrade_check_request(h, &req);
    if (rc != 0 && rc != 400 && rc != 426)
        abort();
    if (rc != 0) {
        if (req.has_auth)
            abort();
        return;
    }
    if (req.user_len > CW_HTTP_MAX_CRED || req.password_len > CW_HTTP_MAX_CRED)
        abort();

    /* Strict base64 is canonical: re-encoding gives back the header. */
    if (req.has_auth && memchr(req.user, '\0', req.user_len) == NULL &&
        memchr(req.password, '\0', req.password_len) == NULL) {
        cw_buf_t b = CW_BUF_INIT;
        if (cw_http_basic_auth(&b, req.user, req.password) != 0)
            abort();
        const char *orig = cw_http_head_get(h, "Authorization", NULL);
        if (orig == NULL || b.len != strlen(orig) || memcmp(b.data, orig, b.len) != 0)
            abort();
        cw_buf_free(&b);
    }

    cw_buf_t resp = CW_BUF_INIT;
    if (cw_http_upgrade_response(&resp, req.key) != 0)
        abort();
    static cw_http_head_t back;
    cw_http_head_init(&back, false);
    size_t used;
    if (cw_http_head_feed(&back, resp.data, resp.len, &used) != 0 || used != resp.len)
        abort();
    char err[128];
    if (cw_http_upgrade_check_response(&back, req.key, err, sizeof(err)) != 0)
        abort();
    cw_buf_free(&resp);
}

/* Client side: check the response against a fixed key; errors are one line. */
static void client_side(const cw_http_head_t *h)
{
    char err[96];
    int rc = cw_http_upgrade_check_response(h, "dGhlIHNhbXBsZSBub25jZQ==", err, sizeof(err));
    if (rc != 0 && rc != CW_EAUTH && rc != CW_EHANDSHAKE)
        abort();
    if (strchr(err, '\n') != NULL || strchr(err, '\r') != NULL)
        abort();
    if ((rc == 0) != (err[0] == '\0'))
        abort();
    if (rc == CW_EAUTH && h->status != 401)
        abort();
    for (size_t i = 0; i < h->nheaders; i++)
        (void)cw_http_has_token(h->headers[i].value, "upgrade");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static cw_http_head_t whole, split;
    if (size < 1)
        return 0;
    uint32_t seed = data[0] * 2654435761u + 1;
    data++;
    size--;

    for (int side = 0; side < 2; side++) {
        bool is_request = side == 0;
        size_t used_whole, used_split;
        cw_http_head_init(&whole, is_request);
        int rc = cw_http_head_feed(&whole, data, size, &used_whole);
        cw_http_head_init(&split, is_request);
        int rc_split = feed_pieces(&split, data, size, seed, &used_split);
        if (rc != rc_split || used_whole != used_split || used_whole > size)
            abort();
        if (rc != 0 && rc != CW_HTTP_AGAIN && rc != CW_EHTTP && rc != CW_ETOOBIG)
            abort();
        if (rc == CW_HTTP_AGAIN && used_whole != size)
            abort();
        if (rc != 0) {
            /* Errors are sticky; an incomplete head is not checkable. */
            if (rc < 0 && cw_http_head_feed(&whole, (const uint8_t *)"\r\n\r\n", 4, NULL) != rc)
                abort();
            continue;
        }
        same_head(&whole, &split);
        if (whole.nheaders > CW_HTTP_MAX_HEADERS || used_whole > CW_HTTP_MAX_HEAD)
            abort();
        if (is_request)
            server_side(&whole);
        else
            client_side(&whole);
    }
    return 0;
}
