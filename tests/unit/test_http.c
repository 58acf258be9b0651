/* Unit tests for the HTTP head collector and the WebSocket upgrade (http.c). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
#include <openssl/sha.h>

#include "cworker/sha1.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "cworker/buf.h"
#include "cworker/cw.h"
#include "cworker/http.h"

/* ---- fixtures ---- */

/* The request the stock 3.7 worker sends (reference §1.2). */
static const char stock_request[] = "GET / HTTP/1.1\r\n"
                                    "User-Agent: AutobahnPython/22.7.1\r\n"
                                    "Host: 127.0.0.1:9991\r\n"
                                    "Upgrade: WebSocket\r\n"
                                    "Connection: Upgrade\r\n"
                                    "Pragma: no-cache\r\n"
                                    "Cache-Control: no-cache\r\n"
                                    "Authorization: Basic dzE6cGFzczE=\r\n"
                                    "Sec-WebSocket-Key: zHLIf5tUaAx1nox4nMux+g==\r\n"
                                    "Sec-WebSocket-Version: 13\r\n"
                                    "\r\n";
#define STOCK_KEY "zHLIf5tUaAx1nox4nMux+g=="
/* base64(SHA1(STOCK_KEY + GUID)), computed independently with Python. */
#define STOCK_ACCEPT "YYiEtOOEgw/+uGDWLvcxIcmzk1o="

/* The stock master's 101 (reference §1.3) for STOCK_KEY, followed in the same
 * segment by the start of its first frame, which must stay unconsumed. */
static const char stock_101[] = "HTTP/1.1 101 Switching Protocols\r\n"
                                "Server: AutobahnPython/22.7.1\r\n"
                                "Upgrade: WebSocket\r\n"
                                "Connection: Upgrade\r\n"
                                "Sec-WebSocket-Accept: " STOCK_ACCEPT "\r\n"
                                "\r\n";
static const uint8_t first_frame[] = {0x82, 0x7e, 0x00, 0x20, 0x83, 0xa2};

#define RFC_KEY    "dGhlIHNhbXBsZSBub25jZQ=="
#define RFC_ACCEPT "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

/* Pieces of a valid upgrade request, to be combined by the tests. */
#define RL     "GET / HTTP/1.1\r\n"
#define H_HOST "Host: master:9989\r\n"
#define H_UP   "Upgrade: websocket\r\n"
#define H_CONN "Connection: Upgrade\r\n"
#define H_VER  "Sec-WebSocket-Version: 13\r\n"
#define H_KEY  "Sec-WebSocket-Key: " RFC_KEY "\r\n"
#define H_AUTH "Authorization: Basic bmFtZTpwYXNz\r\n"

/* Pieces of a valid 101 answer to RFC_KEY. */
#define SL101  "HTTP/1.1 101 Switching Protocols\r\n"
#define R_UP   "Upgrade: websocket\r\n"
#define R_CONN "Connection: Upgrade\r\n"
#define R_ACC  "Sec-WebSocket-Accept: " RFC_ACCEPT "\r\n"

/* ---- helpers ---- */

/* Small deterministic PRNG (xorshift32) so random splits are reproducible. */
static uint32_t rng_next(uint32_t *s)
{
    uint32_t x = *s ? *s : 0x9e3779b9u;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    *s = x;
    return x;
}

enum split_mode { SPLIT_WHOLE, SPLIT_BYTES, SPLIT_RANDOM };

/* Feed data in pieces chosen by mode (seed for SPLIT_RANDOM).  Returns the
 * final feed result; *used gets the total bytes consumed.  Checks that every
 * CW_HTTP_AGAIN consumed its whole piece. */
static int feed_split(cw_http_head_t *h, const void *data, size_t len, enum split_mode mode,
                      uint32_t seed, size_t *used)
{
    const uint8_t *p = data;
    size_t off = 0;
    int rc = CW_HTTP_AGAIN;
    while (off < len) {
        size_t piece = len - off;
        if (mode == SPLIT_BYTES)
            piece = 1;
        else if (mode == SPLIT_RANDOM)
            piece = 1 + rng_next(&seed) % (rng_next(&seed) % 4 == 0 ? 200 : 17);
        if (piece > len - off)
            piece = len - off;
        size_t c = 12345;
        rc = cw_http_head_feed(h, p + off, piece, &c);
        assert_true(c <= piece);
        off += c;
        if (rc != CW_HTTP_AGAIN)
            break;
        assert_int_equal(c, piece);
    }
    *used = off;
    return rc;
}

/* Parse a whole head from a string; asserts it completes. */
static void parse_ok(cw_http_head_t *h, bool is_request, const char *text)
{
    cw_http_head_init(h, is_request);
    size_t used = 0;
    int rc = cw_http_head_feed(h, (const uint8_t *)text, strlen(text), &used);
    if (rc != 0)
        fail_msg("head did not parse (rc %d): %s", rc, text);
    assert_int_equal(used, strlen(text));
    assert_true(h->complete);
}

/* A printable summary of a parsed head, to compare two parses. */
static void head_summary(const cw_http_head_t *h, cw_buf_t *out)
{
    cw_buf_reset(out);
    if (h->is_request)
        assert_int_equal(cw_buf_printf(out, "[%s][%s][%s]", h->method, h->target, h->version), 0);
    else
        assert_int_equal(cw_buf_printf(out, "[%s][%d][%s]", h->version, h->status, h->reason), 0);
    for (size_t i = 0; i < h->nheaders; i++)
        assert_int_equal(cw_buf_printf(out, "{%s}{%s}", h->headers[i].name, h->headers[i].value),
                         0);
    assert_int_equal(cw_buf_append(out, "", 1), 0);
}

/* Parse data whole, byte-at-a-time and with many random splits; all must give
 * the same result, consumed count and parsed fields.  Returns the result. */
static int check_split_invariance(bool is_request, const void *data, size_t len, size_t *used_out)
{
    cw_http_head_t *ref = malloc(sizeof(*ref));
    cw_http_head_t *h = malloc(sizeof(*h));
    assert_non_null(ref);
    assert_non_null(h);
    cw_buf_t want = CW_BUF_INIT, got = CW_BUF_INIT;

    size_t ref_used;
    cw_http_head_init(ref, is_request);
    int ref_rc = feed_split(ref, data, len, SPLIT_WHOLE, 0, &ref_used);
    if (ref_rc == 0)
        head_summary(ref, &want);

    for (uint32_t seed = 0; seed < 60; seed++) {
        size_t used;
        cw_http_head_init(h, is_request);
        int rc = feed_split(h, data, len, seed == 0 ? SPLIT_BYTES : SPLIT_RANDOM, seed, &used);
        assert_int_equal(rc, ref_rc);
        assert_int_equal(used, ref_used);
        if (rc == 0) {
            head_summary(h, &got);
            assert_string_equal((char *)got.data, (char *)want.data);
        }
    }
    cw_buf_free(&want);
    cw_buf_free(&got);
    free(ref);
    free(h);
    if (used_out)
        *used_out = ref_used;
    return ref_rc;
}

/* The head the check helpers parse into: req->path and req->key point into
 * it, so it must outlive the helper call. */
static cw_http_head_t checked_head;

/* Parse a request and run the server check on it. */
static int server_check(const char *text, cw_http_upgrade_req_t *req)
{
    parse_ok(&checked_head, true, text);
    return cw_http_upgrade_check_request(&checked_head, req);
}

/* Server check of a valid request carrying the given Authorization value. */
static int auth_check(const char *value, cw_http_upgrade_req_t *req)
{
    cw_buf_t b = CW_BUF_INIT;
    assert_int_equal(
        cw_buf_printf(&b, RL H_HOST H_UP H_CONN "Authorization: %s\r\n" H_KEY H_VER "\r\n", value),
        0);
    assert_int_equal(cw_buf_append(&b, "", 1), 0);
    int rc = server_check((char *)b.data, req);
    cw_buf_free(&b);
    return rc;
}

/* Parse a response and run the client check against key. */
static int client_check(const char *text, const char *key, char *err, size_t errlen)
{
    parse_ok(&checked_head, false, text);
    return cw_http_upgrade_check_response(&checked_head, key, err, errlen);
}

/* Independent base64 (OpenSSL) of len bytes, as a NUL-terminated string in out. */
static void ossl_b64(const void *data, size_t len, char *out)
{
    EVP_EncodeBlock((unsigned char *)out, data, (int)len);
}

/* ---- head collector: the stock exchange ---- */

/* The stock worker's request parses field by field and passes the server check. */
static void test_stock_worker_request(void **state)
{
    (void)state;
    cw_http_head_t h;
    parse_ok(&h, true, stock_request);
    assert_string_equal(h.method, "GET");
    assert_string_equal(h.target, "/");
    assert_string_equal(h.version, "HTTP/1.1");
    assert_int_equal(h.nheaders, 9);
    assert_string_equal(h.headers[0].name, "User-Agent");
    assert_string_equal(h.headers[0].value, "AutobahnPython/22.7.1");
    assert_string_equal(cw_http_head_get(&h, "host", NULL), "127.0.0.1:9991");
    assert_string_equal(cw_http_head_get(&h, "UPGRADE", NULL), "WebSocket");

    cw_http_upgrade_req_t req;
    assert_int_equal(cw_http_upgrade_check_request(&h, &req), 0);
    assert_true(req.has_auth);
    assert_string_equal(req.user, "w1");
    assert_int_equal(req.user_len, 2);
    assert_string_equal(req.password, "pass1");
    assert_int_equal(req.password_len, 5);
    assert_string_equal(req.key, STOCK_KEY);
    assert_string_equal(req.path, "/");
}

/* The stock master's 101 passes the client check; the frame after it stays. */
static void test_stock_master_101(void **state)
{
    (void)state;
    uint8_t seg[sizeof(stock_101) - 1 + sizeof(first_frame)];
    memcpy(seg, stock_101, sizeof(stock_101) - 1);
    memcpy(seg + sizeof(stock_101) - 1, first_frame, sizeof(first_frame));

    cw_http_head_t h;
    cw_http_head_init(&h, false);
    size_t used = 0;
    assert_int_equal(cw_http_head_feed(&h, seg, sizeof(seg), &used), 0);
    assert_int_equal(used, sizeof(stock_101) - 1);
    assert_string_equal(h.version, "HTTP/1.1");
    assert_int_equal(h.status, 101);
    assert_string_equal(h.reason, "Switching Protocols");
    assert_int_equal(h.nheaders, 4);

    char err[128] = "untouched";
    assert_int_equal(cw_http_upgrade_check_response(&h, STOCK_KEY, err, sizeof(err)), 0);
    assert_string_equal(err, "");
    /* The same answer does not fit another key. */
    assert_int_equal(cw_http_upgrade_check_response(&h, RFC_KEY, err, sizeof(err)), CW_EHANDSHAKE);
    assert_string_equal(err, "wrong Sec-WebSocket-Accept");
}

/* ---- head collector: resumability ---- */

/* Whole, byte-at-a-time and random splits agree, with trailing bytes left. */
static void test_split_invariance(void **state)
{
    (void)state;
    cw_buf_t b = CW_BUF_INIT;
    size_t used;

    /* Request followed by the worker's first (masked) frame bytes. */
    assert_int_equal(cw_buf_append_str(&b, stock_request), 0);
    assert_int_equal(cw_buf_append(&b, first_frame, sizeof(first_frame)), 0);
    assert_int_equal(check_split_invariance(true, b.data, b.len, &used), 0);
    assert_int_equal(used, strlen(stock_request));

    /* The request with no trailing bytes, and exactly its head. */
    assert_int_equal(check_split_invariance(true, stock_request, strlen(stock_request), &used), 0);
    assert_int_equal(used, strlen(stock_request));

    /* Response followed by a frame and then a second "head" that must not be
     * looked at. */
    cw_buf_reset(&b);
    assert_int_equal(cw_buf_append_str(&b, stock_101), 0);
    assert_int_equal(cw_buf_append(&b, first_frame, sizeof(first_frame)), 0);
    assert_int_equal(cw_buf_append_str(&b, "\r\n\r\nHTTP/1.1 200 OK\r\n\r\n"), 0);
    assert_int_equal(check_split_invariance(false, b.data, b.len, &used), 0);
    assert_int_equal(used, strlen(stock_101));

    /* An error answer with an empty reason and odd spacing in values. */
    const char *odd = "HTTP/1.0 404\r\nX-A:\t spaced \t\r\nX-B:\r\nX-C:v\r\n\r\nbody";
    assert_int_equal(check_split_invariance(false, odd, strlen(odd), &used), 0);
    assert_int_equal(used, strlen(odd) - 4);

    /* Errors are found at the same byte whatever the split. */
    const char *bad = "GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n";
    assert_int_equal(check_split_invariance(true, bad, strlen(bad), &used), CW_EHTTP);
    assert_int_equal(used, strlen("GET / HTTP/1.1\r\nHost: x\r\n"));
    const char *badresp = "HTTP/1.1 101 OK\r\nUpgrade websocket\r\n\r\n";
    assert_int_equal(check_split_invariance(false, badresp, strlen(badresp), &used), CW_EHTTP);

    /* Incomplete input consumes everything and asks for more. */
    const char *part = "GET / HTTP/1.1\r\nHost: x\r\n\r";
    assert_int_equal(check_split_invariance(true, part, strlen(part), &used), CW_HTTP_AGAIN);
    assert_int_equal(used, strlen(part));
    cw_buf_free(&b);
}

/* Many random well-formed heads: every split parses like the whole. */
static void test_split_invariance_random_heads(void **state)
{
    (void)state;
    uint32_t seed = 42;
    cw_buf_t b = CW_BUF_INIT;
    for (int round = 0; round < 40; round++) {
        cw_buf_reset(&b);
        bool req = round % 2 == 0;
        if (req)
            assert_int_equal(cw_buf_printf(&b, "M%u /p%u?q=%u HTTP/1.%u\r\n", rng_next(&seed),
                                           round, rng_next(&seed) % 1000, round % 10),
                             0);
        else
            assert_int_equal(
                cw_buf_printf(&b, "HTTP/1.1 %u Reason\t%u\r\n", 100 + rng_next(&seed) % 900, round),
                0);
        unsigned n = rng_next(&seed) % 65;
        for (unsigned i = 0; i < n; i++) {
            unsigned vlen = rng_next(&seed) % 40;
            assert_int_equal(cw_buf_printf(&b, "X-H%u:%s", i, i % 3 ? " " : ""), 0);
            for (unsigned k = 0; k < vlen; k++) {
                char c = (char)(0x21 + rng_next(&seed) % 94);
                assert_int_equal(cw_buf_append(&b, &c, 1), 0);
            }
            assert_int_equal(cw_buf_append_str(&b, "\r\n"), 0);
        }
        size_t head_len = b.len + 2;
        assert_int_equal(cw_buf_append_str(&b, "\r\ntrailing"), 0);
        size_t used;
        assert_int_equal(check_split_invariance(req, b.data, b.len, &used), 0);
        assert_int_equal(used, head_len);
    }
    cw_buf_free(&b);
}

/* Feeding after completion or after an error is harmless and sticky. */
static void test_feed_after_end(void **state)
{
    (void)state;
    cw_http_head_t h;
    size_t used = 99;
    parse_ok(&h, true, stock_request);
    assert_int_equal(cw_http_head_feed(&h, (const uint8_t *)"GET", 3, &used), 0);
    assert_int_equal(used, 0);
    assert_string_equal(h.method, "GET");

    cw_http_head_init(&h, true);
    assert_int_equal(cw_http_head_feed(&h, (const uint8_t *)"GET / HTTP/1.1\n", 15, &used),
                     CW_EHTTP);
    assert_int_equal(used, 14);
    assert_int_equal(cw_http_head_feed(&h, (const uint8_t *)"\r\n\r\n", 4, &used), CW_EHTTP);
    assert_int_equal(used, 0);
    assert_false(h.complete);

    /* Zero bytes and a NULL consumed pointer are accepted. */
    cw_http_head_init(&h, false);
    assert_int_equal(cw_http_head_feed(&h, NULL, 0, &used), CW_HTTP_AGAIN);
    assert_int_equal(used, 0);
    assert_int_equal(cw_http_head_feed(&h, (const uint8_t *)"HTTP/1.1 200 OK\r\n\r\n", 19, NULL),
                     0);
    assert_int_equal(h.status, 200);
    assert_int_equal(cw_http_head_feed(NULL, (const uint8_t *)"x", 1, &used), CW_EBADARG);
    int count = 5;
    assert_null(cw_http_head_get(&h, NULL, &count));
    assert_int_equal(count, 0);
}

/* ---- head collector: syntax ---- */

struct bad_head {
    const char *text;
    size_t len; /* 0: strlen(text) */
    int want;
};

/* Malformed request heads are refused with CW_EHTTP. */
static void test_request_syntax_errors(void **state)
{
    (void)state;
    static const struct bad_head cases[] = {
        {"GET / HTTP/1.1\r\nHost: a\r\n  continued\r\n\r\n", 0, CW_EHTTP}, /* obs-fold */
        {"GET / HTTP/1.1\r\nHost: a\r\n\tcontinued\r\n\r\n", 0, CW_EHTTP}, /* obs-fold */
        {"GET / HTTP/1.1\r\nHost: a\0b\r\n\r\n", 29, CW_EHTTP},            /* NUL */
        {"GET / HTTP/1.1\r\nHost: a\x01\r\n\r\n", 0, CW_EHTTP},
        {"GET / HTTP/1.1\r\nHost: a\x7f\r\n\r\n", 0, CW_EHTTP},
        {"GET / HTTP/1.1\r\nHost: a\x1b[0m\r\n\r\n", 0, CW_EHTTP},
        {"GET / HTTP/1.1\r\nHost a\r\n\r\n", 0, CW_EHTTP},      /* no colon */
        {"GET / HTTP/1.1\r\nHost : a\r\n\r\n", 0, CW_EHTTP},    /* space before colon */
        {"GET / HTTP/1.1\r\n: a\r\n\r\n", 0, CW_EHTTP},         /* empty name */
        {"GET / HTTP/1.1\r\nBad Name: a\r\n\r\n", 0, CW_EHTTP}, /* non-token */
        {"GET / HTTP/1.1\r\nBad(: a\r\n\r\n", 0, CW_EHTTP},
        {"GET / HTTP/1.1\r\nX/Y: a\r\n\r\n", 0, CW_EHTTP},
        {"GET / HTTP/1.1\r\nX-\xc3\xa9: a\r\n\r\n", 0, CW_EHTTP},
        {"GET / HTTP/1.1\r\nHost: a\n\r\n", 0, CW_EHTTP},      /* bare LF */
        {"GET / HTTP/1.1\nHost: a\r\n\r\n", 0, CW_EHTTP},      /* bare LF */
        {"GET / HTTP/1.1\r\nHost: a\r\n\n", 0, CW_EHTTP},      /* bare LF end */
        {"GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n", 0, CW_EHTTP}, /* lone CR */
        {"GET / HTTP/1.1\r\nHost: a\r\n\r\r\n", 0, CW_EHTTP},
        {"\r\nGET / HTTP/1.1\r\n\r\n", 0, CW_EHTTP}, /* leading empty line */
        {"GET  / HTTP/1.1\r\n\r\n", 0, CW_EHTTP},    /* double space */
        {"GET / HTTP/1.1 \r\n\r\n", 0, CW_EHTTP},    /* trailing space */
        {" GET / HTTP/1.1\r\n\r\n", 0, CW_EHTTP},
        {"GET\t/ HTTP/1.1\r\n\r\n", 0, CW_EHTTP},
        {"GET / \r\n\r\n", 0, CW_EHTTP},
        {"GET /\r\n\r\n", 0, CW_EHTTP},
        {"GET\r\n\r\n", 0, CW_EHTTP},
        {"GET / HTTP/2.0\r\n\r\n", 0, CW_EHTTP},
        {"GET / HTTP/1.1x\r\n\r\n", 0, CW_EHTTP},
        {"GET / HTTP/1.\r\n\r\n", 0, CW_EHTTP},
        {"GET / http/1.1\r\n\r\n", 0, CW_EHTTP},
        {"GET / HTTP/1.1 extra\r\n\r\n", 0, CW_EHTTP},
        {"G@T / HTTP/1.1\r\n\r\n", 0, CW_EHTTP},
        {"GET /\xc3\xa9 HTTP/1.1\r\n\r\n", 0, CW_EHTTP}, /* non-ASCII target */
        {"HTTP/1.1 200 OK\r\n\r\n", 0, CW_EHTTP},        /* a response */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        size_t len = cases[i].len ? cases[i].len : strlen(cases[i].text);
        size_t used;
        int rc = check_split_invariance(true, cases[i].text, len, &used);
        if (rc != cases[i].want)
            fail_msg("case %zu: rc %d, want %d", i, rc, cases[i].want);
        assert_true(used < len);
    }
}

/* Malformed response heads are refused; the reason may be empty. */
static void test_response_syntax(void **state)
{
    (void)state;
    static const struct bad_head cases[] = {
        {"HTTP/1.1 20 OK\r\n\r\n", 0, CW_EHTTP},
        {"HTTP/1.1 2000 OK\r\n\r\n", 0, CW_EHTTP},
        {"HTTP/1.1 abc OK\r\n\r\n", 0, CW_EHTTP},
        {"HTTP/1.1 099 OK\r\n\r\n", 0, CW_EHTTP},
        {"HTTP/1.1  200 OK\r\n\r\n", 0, CW_EHTTP},
        {"HTTP/1.1 200OK\r\n\r\n", 0, CW_EHTTP},
        {"HTTP/1.1\t200 OK\r\n\r\n", 0, CW_EHTTP},
        {"HTTP/2 200 OK\r\n\r\n", 0, CW_EHTTP},
        {"HTTP/2.0 200 OK\r\n\r\n", 0, CW_EHTTP},
        {"HTTP/1.1\r\n\r\n", 0, CW_EHTTP},
        {"ICY 200 OK\r\n\r\n", 0, CW_EHTTP},
        {"GET / HTTP/1.1\r\n\r\n", 0, CW_EHTTP},
        {"HTTP/1.1 200 O\x01K\r\n\r\n", 0, CW_EHTTP},
        {"HTTP/1.1 101 OK\r\nUpgrade\r\n\r\n", 0, CW_EHTTP},
        {"HTTP/1.1 101 OK\r\n Upgrade: x\r\n\r\n", 0, CW_EHTTP},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        size_t len = cases[i].len ? cases[i].len : strlen(cases[i].text);
        int rc = check_split_invariance(false, cases[i].text, len, NULL);
        if (rc != cases[i].want)
            fail_msg("case %zu: rc %d, want %d", i, rc, cases[i].want);
    }

    cw_http_head_t h;
    parse_ok(&h, false, "HTTP/1.1 200\r\n\r\n");
    assert_int_equal(h.status, 200);
    assert_string_equal(h.reason, "");
    parse_ok(&h, false, "HTTP/1.1 401 \r\n\r\n");
    assert_int_equal(h.status, 401);
    assert_string_equal(h.reason, "");
    parse_ok(&h, false, "HTTP/1.0 599 Odd \t reason \xe2\x9c\x93\r\n\r\n");
    assert_string_equal(h.version, "HTTP/1.0");
    assert_int_equal(h.status, 599);
    assert_string_equal(h.reason, "Odd \t reason \xe2\x9c\x93");
}

/* Values are trimmed, lookup is case-insensitive and counts repeats. */
static void test_header_lookup(void **state)
{
    (void)state;
    cw_http_head_t h;
    parse_ok(&h, true,
             "GET /x?y=1 HTTP/1.0\r\n"
             "X-Spaces:   a b  \r\n"
             "x-tabs:\t\tc\t\r\n"
             "X-Empty:\r\n"
             "X-Blank:   \t \r\n"
             "X-Colon: a:b: c\r\n"
             "X-Utf8: gr\xc3\xbc\xc3\x9f\r\n"
             "X-Rep: one\r\n"
             "x-rep: two\r\n"
             "X-REP: three\r\n"
             "!#$%&'*+-.^_`|~09azAZ: tokens\r\n"
             "\r\n");
    assert_string_equal(h.method, "GET");
    assert_string_equal(h.target, "/x?y=1");
    assert_string_equal(h.version, "HTTP/1.0");
    int count = -1;
    assert_string_equal(cw_http_head_get(&h, "x-spaces", &count), "a b");
    assert_int_equal(count, 1);
    assert_string_equal(cw_http_head_get(&h, "X-TABS", NULL), "c");
    assert_string_equal(cw_http_head_get(&h, "X-Empty", NULL), "");
    assert_string_equal(cw_http_head_get(&h, "X-Blank", NULL), "");
    assert_string_equal(cw_http_head_get(&h, "X-Colon", NULL), "a:b: c");
    assert_string_equal(cw_http_head_get(&h, "X-Utf8", NULL), "gr\xc3\xbc\xc3\x9f");
    assert_string_equal(cw_http_head_get(&h, "X-Rep", &count), "one");
    assert_int_equal(count, 3);
    assert_string_equal(cw_http_head_get(&h, "!#$%&'*+-.^_`|~09AZaz", NULL), "tokens");
    assert_null(cw_http_head_get(&h, "X-Missing", &count));
    assert_int_equal(count, 0);
    assert_null(cw_http_head_get(&h, "X-Rep ", NULL));
    assert_null(cw_http_head_get(&h, "X-Re", NULL));
}

/* Comma-separated token matching, case-insensitive, with optional blanks. */
static void test_has_token(void **state)
{
    (void)state;
    assert_true(cw_http_has_token("Upgrade", "upgrade"));
    assert_true(cw_http_has_token("keep-alive, Upgrade", "upgrade"));
    assert_true(cw_http_has_token("keep-alive,Upgrade", "UPGRADE"));
    assert_true(cw_http_has_token(" \tupgrade\t ,close", "upgrade"));
    assert_true(cw_http_has_token("a,,upgrade,", "upgrade"));
    assert_true(cw_http_has_token("WebSocket", "websocket"));
    assert_false(cw_http_has_token("upgrades", "upgrade"));
    assert_false(cw_http_has_token("xupgrade", "upgrade"));
    assert_false(cw_http_has_token("up grade", "upgrade"));
    assert_false(cw_http_has_token("keep-alive", "upgrade"));
    assert_false(cw_http_has_token("", "upgrade"));
    assert_false(cw_http_has_token(",", "upgrade"));
    assert_false(cw_http_has_token("websocket/13", "websocket"));
    assert_false(cw_http_has_token(NULL, "upgrade"));
    assert_false(cw_http_has_token("a,,b", ""));
}

/* ---- head collector: limits ---- */

/* Append "X-Pad-<i>: aaa...\r\n" lines until the head holds exactly total
 * bytes (lines stay under the line limit). */
static void pad_to(cw_buf_t *b, size_t total)
{
    for (int i = 0; b->len < total; i++) {
        size_t room = total - b->len;
        char name[32];
        int nlen = snprintf(name, sizeof(name), "X-Pad-%d: ", i);
        size_t vlen = room - (size_t)nlen - 2;
        if (room > 4000)
            vlen = 3000;
        else if (room < (size_t)nlen + 2 + 1)
            fail_msg("cannot pad %zu bytes", room);
        assert_int_equal(cw_buf_append_str(b, name), 0);
        for (size_t k = 0; k < vlen; k++)
            assert_int_equal(cw_buf_append(b, "a", 1), 0);
        assert_int_equal(cw_buf_append_str(b, "\r\n"), 0);
    }
    assert_int_equal(b->len, total);
}

/* Total head size: exactly 8192 parses, one more byte is refused at once. */
static void test_limit_head_size(void **state)
{
    (void)state;
    cw_buf_t b = CW_BUF_INIT;
    size_t used;

    assert_int_equal(cw_buf_append_str(&b, "GET / HTTP/1.1\r\n"), 0);
    pad_to(&b, CW_HTTP_MAX_HEAD - 2);
    assert_int_equal(cw_buf_append_str(&b, "\r\n"), 0);
    assert_int_equal(check_split_invariance(true, b.data, b.len, &used), 0);
    assert_int_equal(used, CW_HTTP_MAX_HEAD);

    /* 8193 bytes of a head that would be valid; it never ends. */
    cw_buf_reset(&b);
    assert_int_equal(cw_buf_append_str(&b, "GET / HTTP/1.1\r\n"), 0);
    pad_to(&b, CW_HTTP_MAX_HEAD + 1 - 10);
    assert_int_equal(cw_buf_append_str(&b, "X-Last: 1\r"), 0);
    assert_int_equal(b.len, CW_HTTP_MAX_HEAD + 1);
    assert_int_equal(check_split_invariance(true, b.data, b.len, &used), CW_ETOOBIG);
    assert_int_equal(used, CW_HTTP_MAX_HEAD);

    /* The same through the final CRLF: the limit counts it. */
    cw_buf_reset(&b);
    assert_int_equal(cw_buf_append_str(&b, "HTTP/1.1 101 Switching Protocols\r\n"), 0);
    pad_to(&b, CW_HTTP_MAX_HEAD - 1);
    assert_int_equal(cw_buf_append_str(&b, "\r\n"), 0);
    assert_int_equal(check_split_invariance(false, b.data, b.len, &used), CW_ETOOBIG);
    assert_int_equal(used, CW_HTTP_MAX_HEAD);
    cw_buf_free(&b);
}

/* Line length: 4096 bytes parse, the 4097th byte of a line is refused at once. */
static void test_limit_line(void **state)
{
    (void)state;
    cw_buf_t b = CW_BUF_INIT;
    size_t used;
    const char *rl = "GET / HTTP/1.1\r\n";

    assert_int_equal(cw_buf_append_str(&b, rl), 0);
    assert_int_equal(cw_buf_append_str(&b, "X-Long: "), 0);
    while (b.len < strlen(rl) + CW_HTTP_MAX_LINE)
        assert_int_equal(cw_buf_append(&b, "v", 1), 0);
    assert_int_equal(cw_buf_append_str(&b, "\r\n\r\n"), 0);
    assert_int_equal(check_split_invariance(true, b.data, b.len, &used), 0);

    /* One more value byte, no end in sight. */
    cw_buf_reset(&b);
    assert_int_equal(cw_buf_append_str(&b, rl), 0);
    assert_int_equal(cw_buf_append_str(&b, "X-Long: "), 0);
    while (b.len < strlen(rl) + CW_HTTP_MAX_LINE + 1)
        assert_int_equal(cw_buf_append(&b, "v", 1), 0);
    assert_int_equal(check_split_invariance(true, b.data, b.len, &used), CW_ETOOBIG);
    assert_int_equal(used, strlen(rl) + CW_HTTP_MAX_LINE);

    /* A 4097-byte request line (long target). */
    cw_buf_reset(&b);
    assert_int_equal(cw_buf_append_str(&b, "GET /"), 0);
    while (b.len < CW_HTTP_MAX_LINE - strlen(" HTTP/1.1") + 1)
        assert_int_equal(cw_buf_append(&b, "p", 1), 0);
    assert_int_equal(cw_buf_append_str(&b, " HTTP/1.1"), 0);
    assert_int_equal(b.len, CW_HTTP_MAX_LINE + 1);
    assert_int_equal(check_split_invariance(true, b.data, b.len, &used), CW_ETOOBIG);
    assert_int_equal(used, CW_HTTP_MAX_LINE);
    /* One byte shorter is fine. */
    cw_http_head_t h;
    cw_http_head_init(&h, true);
    assert_int_equal(cw_http_head_feed(&h, b.data + 1, b.len - 1, &used), CW_HTTP_AGAIN);
    assert_int_equal(cw_http_head_feed(&h, (const uint8_t *)"\r\n\r\n", 4, &used), 0);
    assert_int_equal(strlen(h.target), CW_HTTP_MAX_LINE - strlen("ET  HTTP/1.1"));

    /* A 4097-byte status line. */
    cw_buf_reset(&b);
    assert_int_equal(cw_buf_append_str(&b, "HTTP/1.1 200 "), 0);
    while (b.len < CW_HTTP_MAX_LINE + 1)
        assert_int_equal(cw_buf_append(&b, "r", 1), 0);
    assert_int_equal(check_split_invariance(false, b.data, b.len, &used), CW_ETOOBIG);
    assert_int_equal(used, CW_HTTP_MAX_LINE);
    cw_buf_free(&b);
}

/* Header count: 64 fields parse, the first byte of a 65th is refused. */
static void test_limit_headers(void **state)
{
    (void)state;
    cw_buf_t b = CW_BUF_INIT;
    size_t used;

    assert_int_equal(cw_buf_append_str(&b, "HTTP/1.1 101 Switching Protocols\r\n"), 0);
    for (int i = 0; i < CW_HTTP_MAX_HEADERS; i++)
        assert_int_equal(cw_buf_printf(&b, "X-H%d: %d\r\n", i, i), 0);
    size_t before = b.len;
    assert_int_equal(cw_buf_append_str(&b, "\r\n"), 0);
    assert_int_equal(check_split_invariance(false, b.data, b.len, &used), 0);

    b.len = before;
    assert_int_equal(cw_buf_append(&b, "\r\n", 3), 0); /* with the NUL, for parse_ok */
    cw_http_head_t h;
    parse_ok(&h, false, (char *)b.data);
    assert_int_equal(h.nheaders, CW_HTTP_MAX_HEADERS);
    assert_string_equal(cw_http_head_get(&h, "X-H63", NULL), "63");

    /* Only the first byte of the 65th field is needed to refuse it. */
    b.len = before;
    assert_int_equal(cw_buf_append_str(&b, "X"), 0);
    assert_int_equal(check_split_invariance(false, b.data, b.len, &used), CW_ETOOBIG);
    assert_int_equal(used, before);
    cw_buf_free(&b);
}

/* ---- WebSocket keys ---- */

/* RFC 6455's example and generated keys. */
static void test_ws_keys(void **state)
{
    (void)state;
    char accept[29];
    cw_ws_accept_value(RFC_KEY, accept);
    assert_string_equal(accept, RFC_ACCEPT);
    cw_ws_accept_value(STOCK_KEY, accept);
    assert_string_equal(accept, STOCK_ACCEPT);

    char k1[25], k2[25];
    cw_ws_key_generate(k1);
    cw_ws_key_generate(k2);
    assert_int_equal(strlen(k1), 24);
    assert_string_not_equal(k1, k2);
    for (int round = 0; round < 50; round++) {
        cw_ws_key_generate(k1);
        assert_int_equal(strlen(k1), 24);
        assert_memory_equal(k1 + 22, "==", 2);
        uint8_t raw[20];
        assert_int_equal(EVP_DecodeBlock(raw, (unsigned char *)k1, 24), 18);
        cw_ws_accept_value(k1, accept);
        assert_int_equal(strlen(accept), 28);
    }
}

/* ---- client side ---- */

/* The upgrade request, byte for byte, and its round trip through the server. */
static void test_client_request(void **state)
{
    (void)state;
    cw_buf_t b = CW_BUF_INIT;
    assert_int_equal(cw_buf_append_str(&b, "prefix"), 0);
    assert_int_equal(cw_http_upgrade_request(&b, "127.0.0.1:9989", "/", "name", "pass", RFC_KEY,
                                             "X-Extra: 1\r\nX-More: two\r\n"),
                     0);
    const char *want = "prefix"
                       "GET / HTTP/1.1\r\n"
                       "Host: 127.0.0.1:9989\r\n"
                       "Upgrade: websocket\r\n"
                       "Connection: Upgrade\r\n"
                       "Authorization: Basic bmFtZTpwYXNz\r\n"
                       "Sec-WebSocket-Key: " RFC_KEY "\r\n"
                       "Sec-WebSocket-Version: 13\r\n"
                       "User-Agent: cworker/" CW_VERSION "\r\n"
                       "X-Extra: 1\r\n"
                       "X-More: two\r\n"
                       "\r\n";
    assert_int_equal(b.len, strlen(want));
    assert_memory_equal(b.data, want, b.len);

    cw_http_head_t h;
    cw_http_head_init(&h, true);
    size_t used;
    assert_int_equal(cw_http_head_feed(&h, b.data + 6, b.len - 6, &used), 0);
    assert_int_equal(used, b.len - 6);
    cw_http_upgrade_req_t req;
    assert_int_equal(cw_http_upgrade_check_request(&h, &req), 0);
    assert_true(req.has_auth);
    assert_string_equal(req.user, "name");
    assert_string_equal(req.password, "pass");
    assert_string_equal(req.key, RFC_KEY);
    assert_string_equal(cw_http_head_get(&h, "X-More", NULL), "two");

    /* No credentials, no extras, another path. */
    cw_buf_reset(&b);
    assert_int_equal(
        cw_http_upgrade_request(&b, "[::1]:9989", "/ws?x=1", NULL, NULL, RFC_KEY, NULL), 0);
    const char *want2 = "GET /ws?x=1 HTTP/1.1\r\n"
                        "Host: [::1]:9989\r\n"
                        "Upgrade: websocket\r\n"
                        "Connection: Upgrade\r\n"
                        "Sec-WebSocket-Key: " RFC_KEY "\r\n"
                        "Sec-WebSocket-Version: 13\r\n"
                        "User-Agent: cworker/" CW_VERSION "\r\n"
                        "\r\n";
    assert_int_equal(b.len, strlen(want2));
    assert_memory_equal(b.data, want2, b.len);
    cw_http_head_init(&h, true);
    assert_int_equal(cw_http_head_feed(&h, b.data, b.len, &used), 0);
    assert_int_equal(cw_http_upgrade_check_request(&h, &req), 0);
    assert_false(req.has_auth);
    assert_string_equal(req.path, "/ws?x=1");

    /* A user without a password sends an empty one. */
    cw_buf_reset(&b);
    assert_int_equal(cw_http_upgrade_request(&b, "h", "/", "w", NULL, RFC_KEY, ""), 0);
    cw_http_head_init(&h, true);
    assert_int_equal(cw_http_head_feed(&h, b.data, b.len, &used), 0);
    assert_int_equal(cw_http_upgrade_check_request(&h, &req), 0);
    assert_string_equal(req.user, "w");
    assert_int_equal(req.password_len, 0);
    cw_buf_free(&b);
}

/* Bad arguments to the request builder leave the buffer untouched. */
static void test_client_request_bad_args(void **state)
{
    (void)state;
    cw_buf_t b = CW_BUF_INIT;
    assert_int_equal(cw_buf_append_str(&b, "keep"), 0);
    struct {
        const char *host, *path, *user, *key, *extra;
    } cases[] = {
        {"h", "/", "na:me", RFC_KEY, NULL},
        {"h", "ws", NULL, RFC_KEY, NULL},
        {"h", "", NULL, RFC_KEY, NULL},
        {"h", "/a b", NULL, RFC_KEY, NULL},
        {"h", "/a\r\nX: y", NULL, RFC_KEY, NULL},
        {"h", "/#frag", NULL, RFC_KEY, NULL},
        {"", "/", NULL, RFC_KEY, NULL},
        {"h\r\nX-Evil: 1", "/", NULL, RFC_KEY, NULL},
        {"h", "/", NULL, "short", NULL},
        {"h", "/", NULL, "dGhlIHNhbXBsZSBub25jZQ=\n", NULL},
        {"h", "/", NULL, RFC_KEY, "X-No-End: 1"},
        {"h", "/", NULL, RFC_KEY, "X-A: 1\r\n\r\n"},
        {"h", "/", NULL, RFC_KEY, "No colon\r\n"},
        {"h", "/", NULL, RFC_KEY, " X-Fold: 1\r\n"},
        {"h", "/", NULL, RFC_KEY, "X-A: 1\nX-B: 2\r\n"},
        {"h", "/", NULL, RFC_KEY, "X-A: 1\r2\r\n"},
        {"h", "/", NULL, RFC_KEY, "X-A: \x01\r\n"},
        {"h", "/", NULL, RFC_KEY, "\r\n"},
        {NULL, "/", NULL, RFC_KEY, NULL},
        {"h", NULL, NULL, RFC_KEY, NULL},
        {"h", "/", NULL, NULL, NULL},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int rc = cw_http_upgrade_request(&b, cases[i].host, cases[i].path, cases[i].user, "pw",
                                         cases[i].key, cases[i].extra);
        if (rc != CW_EBADARG)
            fail_msg("case %zu: rc %d", i, rc);
        assert_int_equal(b.len, 4);
    }
    assert_int_equal(cw_http_upgrade_request(NULL, "h", "/", NULL, NULL, RFC_KEY, NULL),
                     CW_EBADARG);
    cw_buf_free(&b);
}

/* Basic credentials: the reference value and strict arguments. */
static void test_basic_auth(void **state)
{
    (void)state;
    cw_buf_t b = CW_BUF_INIT;
    assert_int_equal(cw_http_basic_auth(&b, "name", "pass"), 0);
    assert_int_equal(b.len, strlen("Basic bmFtZTpwYXNz"));
    assert_memory_equal(b.data, "Basic bmFtZTpwYXNz", b.len);

    /* Every length mod 3, checked against OpenSSL's encoder. */
    for (size_t n = 0; n < 12; n++) {
        char user[16] = "", pw[16] = "", plain[40], want[80] = "Basic ";
        memset(pw, 'p', n);
        pw[n] = '\0';
        snprintf(user, sizeof(user), "u%zu", n);
        int plen = snprintf(plain, sizeof(plain), "%s:%s", user, pw);
        ossl_b64(plain, (size_t)plen, want + 6);
        cw_buf_reset(&b);
        assert_int_equal(cw_http_basic_auth(&b, user, pw), 0);
        assert_int_equal(b.len, strlen(want));
        assert_memory_equal(b.data, want, b.len);
    }

    cw_buf_reset(&b);
    assert_int_equal(cw_http_basic_auth(&b, "w\xc3\xb6rker", "pa:ss:w\xc3\xb6rd"), 0);
    assert_memory_equal(b.data, "Basic d8O2cmtlcjpwYTpzczp3w7ZyZA==", b.len);

    cw_buf_reset(&b);
    assert_int_equal(cw_http_basic_auth(&b, "a:b", "pass"), CW_EBADARG);
    assert_int_equal(cw_http_basic_auth(&b, ":", "pass"), CW_EBADARG);
    assert_int_equal(cw_http_basic_auth(&b, NULL, "pass"), CW_EBADARG);
    assert_int_equal(b.len, 0);
    assert_int_equal(cw_http_basic_auth(&b, "u", NULL), 0);
    assert_memory_equal(b.data, "Basic dTo=", b.len);
    cw_buf_free(&b);
}

/* Credentials survive the trip client header -> server check. */
static void test_basic_auth_round_trip(void **state)
{
    (void)state;
    struct {
        const char *user, *pw;
    } cases[] = {
        {"name", "pass"},
        {"w1", "pa:ss:"},
        {"w\xc3\xb6rker", "\xd0\xbf\xd0\xb0\xd1\x80\xd0\xbe\xd0\xbb\xd1\x8c"},
        {"", "only-password"},
        {"only-user", ""},
        {"\xf0\x9f\x94\xa7 worker", ": : :"},
    };
    cw_buf_t b = CW_BUF_INIT;
    cw_http_upgrade_req_t req;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        cw_buf_reset(&b);
        assert_int_equal(cw_http_basic_auth(&b, cases[i].user, cases[i].pw), 0);
        assert_int_equal(cw_buf_append(&b, "", 1), 0);
        assert_int_equal(auth_check((char *)b.data, &req), 0);
        assert_true(req.has_auth);
        assert_string_equal(req.user, cases[i].user);
        assert_int_equal(req.user_len, strlen(cases[i].user));
        assert_string_equal(req.password, cases[i].pw);
        assert_int_equal(req.password_len, strlen(cases[i].pw));
    }

    /* Random printable users and passwords. */
    uint32_t seed = 7;
    for (int round = 0; round < 200; round++) {
        char user[64], pw[64];
        size_t ul = rng_next(&seed) % 63, pl = rng_next(&seed) % 63;
        for (size_t k = 0; k < ul; k++) {
            do
                user[k] = (char)(0x20 + rng_next(&seed) % 95);
            while (user[k] == ':');
        }
        for (size_t k = 0; k < pl; k++)
            pw[k] = (char)(0x20 + rng_next(&seed) % 95);
        user[ul] = pw[pl] = '\0';
        cw_buf_reset(&b);
        assert_int_equal(cw_http_basic_auth(&b, user, pw), 0);
        assert_int_equal(cw_buf_append(&b, "", 1), 0);
        assert_int_equal(auth_check((char *)b.data, &req), 0);
        assert_string_equal(req.user, user);
        assert_string_equal(req.password, pw);
    }

    /* A NUL inside the credentials is kept, with the lengths telling. */
    assert_int_equal(auth_check("Basic YQBiOmM=", &req), 0); /* "a\0b:c" */
    assert_int_equal(req.user_len, 3);
    assert_memory_equal(req.user, "a\0b", 4);
    assert_string_equal(req.password, "c");
    cw_buf_free(&b);
}

/* Credential size limits: CW_HTTP_MAX_CRED bytes each. */
static void test_basic_auth_limits(void **state)
{
    (void)state;
    static char user[CW_HTTP_MAX_CRED + 2], pw[CW_HTTP_MAX_CRED + 2];
    cw_buf_t b = CW_BUF_INIT;
    cw_http_upgrade_req_t req;
    struct {
        size_t ul, pl;
        int want;
    } cases[] = {
        {CW_HTTP_MAX_CRED, CW_HTTP_MAX_CRED, 0},
        {CW_HTTP_MAX_CRED + 1, 0, 400},
        {0, CW_HTTP_MAX_CRED + 1, 400},
        {CW_HTTP_MAX_CRED + 1, CW_HTTP_MAX_CRED - 1, 400},
        {CW_HTTP_MAX_CRED - 1, CW_HTTP_MAX_CRED + 1, 400},
        {CW_HTTP_MAX_CRED + 1, CW_HTTP_MAX_CRED + 1, 400},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        memset(user, 'u', cases[i].ul);
        user[cases[i].ul] = '\0';
        memset(pw, 'p', cases[i].pl);
        pw[cases[i].pl] = '\0';
        cw_buf_reset(&b);
        assert_int_equal(cw_http_basic_auth(&b, user, pw), 0);
        assert_int_equal(cw_buf_append(&b, "", 1), 0);
        int rc = auth_check((char *)b.data, &req);
        if (rc != cases[i].want)
            fail_msg("case %zu: rc %d", i, rc);
        if (rc == 0) {
            assert_int_equal(req.user_len, cases[i].ul);
            assert_int_equal(req.password_len, cases[i].pl);
            assert_string_equal(req.password, pw);
        } else {
            assert_false(req.has_auth);
        }
    }
    cw_buf_free(&b);
}

/* Malformed Authorization values get 400; a missing one gets has_auth false. */
static void test_basic_auth_rejections(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "basic bmFtZTpwYXNz", /* the stock master compares "Basic" exactly */
        "BASIC bmFtZTpwYXNz",
        "Basic  bmFtZTpwYXNz", /* two spaces */
        "Basic\tbmFtZTpwYXNz",
        "Basicx bmFtZTpwYXNz",
        "BasicbmFtZTpwYXNz",
        "Basic",
        "Basic ", /* trimmed to "Basic" */
        "Bearer bmFtZTpwYXNz",
        "Digest username=\"name\"",
        "Basic bmFtZTpwYXN", /* not whole groups */
        "Basic bmFtZTpwYXNz=",
        "Basic bmFtZTpwYXNz====",
        "Basic bmFtZTpwYX=z", /* padding inside */
        "Basic bmFt=TpwYXNz",
        "Basic bmFt ZTpwYXNz", /* garbage */
        "Basic bmFtZTpwYXNz,",
        "Basic bmFt-TpwYXNz", /* URL-safe alphabet */
        "Basic bmFt_TpwYXNz",
        "Basic OnB=", /* ":p" with non-zero unused bits */
        "Basic YR==",
        "Basic bmFtZQ==", /* "name": no colon */
        "Basic ====",
        "Basic /zp4",     /* "\xff:x": not UTF-8 */
        "Basic wIA6eA==", /* overlong NUL */
        "Basic bmFtZTpwYXNz bmFtZTpwYXNz",
    };
    cw_http_upgrade_req_t req;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int rc = auth_check(bad[i], &req);
        if (rc != 400)
            fail_msg("\"%s\": rc %d, want 400", bad[i], rc);
        assert_false(req.has_auth);
        assert_int_equal(req.user_len, 0);
    }

    /* Empty user: well-formed (the master answers 401 later). */
    assert_int_equal(auth_check("Basic OnA=", &req), 0);
    assert_true(req.has_auth);
    assert_int_equal(req.user_len, 0);
    assert_string_equal(req.password, "p");

    /* Missing: valid upgrade, no credentials. */
    assert_int_equal(server_check(RL H_HOST H_UP H_CONN H_KEY H_VER "\r\n", &req), 0);
    assert_false(req.has_auth);
    assert_string_equal(req.key, RFC_KEY);

    /* Twice: refused even when both are well-formed. */
    assert_int_equal(server_check(RL H_HOST H_UP H_CONN H_AUTH H_AUTH H_KEY H_VER "\r\n", &req),
                     400);
}

/* The client check of the server's answer: every way it can fail. */
static void test_client_check(void **state)
{
    (void)state;
    static const struct {
        const char *text;
        int want;
        const char *err;
    } cases[] = {
        {SL101 R_UP R_CONN R_ACC "\r\n", 0, ""},
        {SL101 "upgrade: WEBSOCKET\r\nconnection: keep-alive, upgrade\r\n"
               "sec-websocket-accept: " RFC_ACCEPT "\r\nSec-WebSocket-Protocol:\r\n\r\n",
         0, ""},
        {"HTTP/1.1 101 \r\n" R_UP R_CONN R_ACC "\r\n", 0, ""},
        {"HTTP/1.1 401 Unauthorized\r\n\r\n", CW_EAUTH, "HTTP 401 Unauthorized"},
        {"HTTP/1.1 401\r\n\r\n", CW_EAUTH, "HTTP 401"},
        {"HTTP/1.1 400 Bad request\r\n\r\n", CW_EHANDSHAKE, "HTTP 400 Bad request"},
        {"HTTP/1.1 403 Forbidden\r\n\r\n", CW_EHANDSHAKE, "HTTP 403 Forbidden"},
        {"HTTP/1.1 200 OK\r\nServer: AutobahnPython/22.7.1\r\n\r\n", CW_EHANDSHAKE, "HTTP 200 OK"},
        {"HTTP/1.1 426 Upgrade Required\r\nSec-WebSocket-Version: 13\r\n\r\n", CW_EHANDSHAKE,
         "HTTP 426 Upgrade Required"},
        {"HTTP/1.0 101 Switching Protocols\r\n" R_UP R_CONN R_ACC "\r\n", CW_EHANDSHAKE,
         "101 answer with unsupported version HTTP/1.0"},
        {SL101 R_CONN R_ACC "\r\n", CW_EHANDSHAKE, "missing Upgrade"},
        {SL101 "Upgrade: h2c\r\n" R_CONN R_ACC "\r\n", CW_EHANDSHAKE, "Upgrade is not websocket"},
        {SL101 "Upgrade: websockets\r\n" R_CONN R_ACC "\r\n", CW_EHANDSHAKE,
         "Upgrade is not websocket"},
        {SL101 R_UP R_ACC "\r\n", CW_EHANDSHAKE, "missing Connection"},
        {SL101 R_UP "Connection: close\r\n" R_ACC "\r\n", CW_EHANDSHAKE,
         "Connection does not list upgrade"},
        {SL101 R_UP R_CONN "\r\n", CW_EHANDSHAKE, "missing Sec-WebSocket-Accept"},
        {SL101 R_UP R_CONN R_ACC R_ACC "\r\n", CW_EHANDSHAKE, "repeated Sec-WebSocket-Accept"},
        {SL101 R_UP R_CONN "Sec-WebSocket-Accept: " STOCK_ACCEPT "\r\n\r\n", CW_EHANDSHAKE,
         "wrong Sec-WebSocket-Accept"},
        {SL101 R_UP R_CONN "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo\r\n\r\n",
         CW_EHANDSHAKE, "wrong Sec-WebSocket-Accept"},
        {SL101 R_UP R_CONN "Sec-WebSocket-Accept: S3PPLMBITXAQ9KYGZZHZRBK+XOO=\r\n\r\n",
         CW_EHANDSHAKE, "wrong Sec-WebSocket-Accept"},
        {SL101 R_UP R_CONN "Sec-WebSocket-Accept:\r\n\r\n", CW_EHANDSHAKE,
         "wrong Sec-WebSocket-Accept"},
        {SL101 R_UP R_CONN R_ACC "Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n",
         CW_EHANDSHAKE, "unrequested Sec-WebSocket-Extensions"},
        {SL101 R_UP R_CONN R_ACC "Sec-WebSocket-Extensions:\r\n\r\n", CW_EHANDSHAKE,
         "unrequested Sec-WebSocket-Extensions"},
        {SL101 R_UP R_CONN R_ACC "Sec-WebSocket-Protocol: chat\r\n\r\n", CW_EHANDSHAKE,
         "unrequested Sec-WebSocket-Protocol"},
        {SL101 R_UP R_CONN R_ACC "Sec-WebSocket-Protocol:\r\n"
                                 "Sec-WebSocket-Protocol: chat\r\n\r\n",
         CW_EHANDSHAKE, "unrequested Sec-WebSocket-Protocol"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char err[128] = "untouched";
        int rc = client_check(cases[i].text, RFC_KEY, err, sizeof(err));
        if (rc != cases[i].want || strcmp(err, cases[i].err) != 0)
            fail_msg("case %zu: rc %d err \"%s\", want %d \"%s\"", i, rc, err, cases[i].want,
                     cases[i].err);
    }

    /* err is optional and truncated to errlen. */
    assert_int_equal(client_check("HTTP/1.1 400 Bad request\r\n\r\n", RFC_KEY, NULL, 0),
                     CW_EHANDSHAKE);
    char small[6];
    assert_int_equal(
        client_check("HTTP/1.1 400 Bad request\r\n\r\n", RFC_KEY, small, sizeof(small)),
        CW_EHANDSHAKE);
    assert_string_equal(small, "HTTP ");

    /* A head that is not a complete response is a caller error. */
    cw_http_head_t h;
    cw_http_head_init(&h, false);
    assert_int_equal(cw_http_head_feed(&h, (const uint8_t *)"HTTP/1.1 101 OK\r\n", 17, NULL),
                     CW_HTTP_AGAIN);
    char err[64];
    assert_int_equal(cw_http_upgrade_check_response(&h, RFC_KEY, err, sizeof(err)), CW_EBADARG);
    parse_ok(&h, true, stock_request);
    assert_int_equal(cw_http_upgrade_check_response(&h, RFC_KEY, err, sizeof(err)), CW_EBADARG);
    parse_ok(&h, false, SL101 R_UP R_CONN R_ACC "\r\n");
    assert_int_equal(cw_http_upgrade_check_response(&h, NULL, err, sizeof(err)), CW_EBADARG);
    assert_int_equal(cw_http_upgrade_check_response(NULL, RFC_KEY, err, sizeof(err)), CW_EBADARG);
}

/* ---- server side ---- */

/* The server check, mirroring autobahn's table (reference §1.2). */
static void test_server_check(void **state)
{
    (void)state;
    static const struct {
        const char *text;
        int want;
    } cases[] = {
        {RL H_HOST H_UP H_CONN H_AUTH H_KEY H_VER "\r\n", 0},
        /* any order, odd case, lists, version 8, any path and query */
        {"GET /some/path?x=1 HTTP/1.1\r\n" H_VER H_KEY "CONNECTION: keep-alive, UPGRADE\r\n"
         "upgrade: foo, WebSocket\r\nhost:\r\n\r\n",
         0},
        {RL H_HOST H_UP H_CONN H_KEY "Sec-WebSocket-Version: 8\r\n\r\n", 0},
        {RL H_HOST "Upgrade: h2c\r\n" H_UP H_CONN H_KEY H_VER "\r\n", 0},
        {RL H_HOST H_UP "Connection: keep-alive\r\nConnection: Upgrade\r\n" H_KEY H_VER "\r\n", 0},
        {RL H_HOST H_UP H_CONN H_KEY H_VER "Origin: http://elsewhere\r\n\r\n", 0},
        {"GET http://master:9989/ HTTP/1.1\r\n" H_HOST H_UP H_CONN H_KEY H_VER "\r\n", 0},
        /* request line */
        {"POST / HTTP/1.1\r\n" H_HOST H_UP H_CONN H_KEY H_VER "\r\n", 400},
        {"get / HTTP/1.1\r\n" H_HOST H_UP H_CONN H_KEY H_VER "\r\n", 400},
        {"GET / HTTP/1.0\r\n" H_HOST H_UP H_CONN H_KEY H_VER "\r\n", 400},
        {"GET / HTTP/1.2\r\n" H_HOST H_UP H_CONN H_KEY H_VER "\r\n", 400},
        {"GET /#frag HTTP/1.1\r\n" H_HOST H_UP H_CONN H_KEY H_VER "\r\n", 400},
        {"GET /a?b#c HTTP/1.1\r\n" H_HOST H_UP H_CONN H_KEY H_VER "\r\n", 400},
        /* Host */
        {RL H_UP H_CONN H_KEY H_VER "\r\n", 400},
        {RL H_HOST H_HOST H_UP H_CONN H_KEY H_VER "\r\n", 400},
        {RL H_HOST "HOST: other\r\n" H_UP H_CONN H_KEY H_VER "\r\n", 400},
        /* Upgrade, Connection */
        {RL H_HOST H_CONN H_KEY H_VER "\r\n", 426},
        {RL H_HOST "Upgrade: h2c\r\n" H_CONN H_KEY H_VER "\r\n", 426},
        {RL H_HOST "Upgrade: websocket2\r\n" H_CONN H_KEY H_VER "\r\n", 426},
        {RL H_HOST "Upgrade:\r\n" H_CONN H_KEY H_VER "\r\n", 426},
        {RL H_HOST H_UP H_KEY H_VER "\r\n", 426},
        {RL H_HOST H_UP "Connection: keep-alive\r\n" H_KEY H_VER "\r\n", 426},
        {RL H_HOST H_UP "Connection: upgraded\r\n" H_KEY H_VER "\r\n", 426},
        /* Sec-WebSocket-Version */
        {RL H_HOST H_UP H_CONN H_KEY "\r\n", 426},
        {RL H_HOST H_UP H_CONN H_KEY "Sec-WebSocket-Version: 12\r\n\r\n", 426},
        {RL H_HOST H_UP H_CONN H_KEY "Sec-WebSocket-Version: 13, 8\r\n\r\n", 426},
        {RL H_HOST H_UP H_CONN H_KEY "Sec-WebSocket-Version: 013\r\n\r\n", 426},
        {RL H_HOST H_UP H_CONN H_KEY "Sec-WebSocket-Version:\r\n\r\n", 426},
        {RL H_HOST H_UP H_CONN H_KEY H_VER H_VER "\r\n", 400},
        /* Sec-WebSocket-Key */
        {RL H_HOST H_UP H_CONN H_VER "\r\n", 400},
        {RL H_HOST H_UP H_CONN H_KEY H_KEY H_VER "\r\n", 400},
        {RL H_HOST H_UP H_CONN "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=\r\n" H_VER "\r\n", 400},
        {RL H_HOST H_UP H_CONN "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ===\r\n" H_VER "\r\n",
         400},
        {RL H_HOST H_UP H_CONN "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQAA\r\n" H_VER "\r\n", 400},
        {RL H_HOST H_UP H_CONN "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25j-Q==\r\n" H_VER "\r\n", 400},
        {RL H_HOST H_UP H_CONN "Sec-WebSocket-Key: dGhlIHNhbX BsZSBub25jZQ==\r\n" H_VER "\r\n",
         400},
        {RL H_HOST H_UP H_CONN "Sec-WebSocket-Key:\r\n" H_VER "\r\n", 400},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        cw_http_upgrade_req_t req;
        int rc = server_check(cases[i].text, &req);
        if (rc != cases[i].want)
            fail_msg("case %zu: rc %d, want %d", i, rc, cases[i].want);
        if (rc == 0) {
            assert_non_null(req.path);
            assert_string_equal(req.key, RFC_KEY);
        }
    }

    /* Caller errors. */
    cw_http_head_t h;
    cw_http_upgrade_req_t req;
    cw_http_head_init(&h, true);
    assert_int_equal(cw_http_upgrade_check_request(&h, &req), CW_EBADARG);
    parse_ok(&h, false, "HTTP/1.1 200 OK\r\n\r\n");
    assert_int_equal(cw_http_upgrade_check_request(&h, &req), CW_EBADARG);
    assert_int_equal(cw_http_upgrade_check_request(NULL, &req), CW_EBADARG);
    assert_int_equal(cw_http_upgrade_check_request(&h, NULL), CW_EBADARG);
}

/* The server's answers, byte for byte. */
static void test_server_responses(void **state)
{
    (void)state;
    cw_buf_t b = CW_BUF_INIT;
    assert_int_equal(cw_http_upgrade_response(&b, RFC_KEY), 0);
    const char *want = "HTTP/1.1 101 Switching Protocols\r\n"
                       "Upgrade: websocket\r\n"
                       "Connection: Upgrade\r\n"
                       "Sec-WebSocket-Accept: " RFC_ACCEPT "\r\n"
                       "\r\n";
    assert_int_equal(b.len, strlen(want));
    assert_memory_equal(b.data, want, b.len);
    assert_int_equal(cw_http_upgrade_response(&b, NULL), CW_EBADARG);

    static const struct {
        int status;
        const char *text;
    } errs[] = {
        {400, "HTTP/1.1 400 Bad request\r\n\r\n"},
        {401, "HTTP/1.1 401 Unauthorized\r\n\r\n"},
        {403, "HTTP/1.1 403 Forbidden\r\n\r\n"},
        {404, "HTTP/1.1 404 Not Found\r\n\r\n"},
        {405, "HTTP/1.1 405 Method Not Allowed\r\nAllow: GET\r\n\r\n"},
        {426, "HTTP/1.1 426 Upgrade Required\r\nSec-WebSocket-Version: 13\r\n\r\n"},
        {500, "HTTP/1.1 500 Internal Server Error\r\n\r\n"},
        {503, "HTTP/1.1 503 Service Unavailable\r\n\r\n"},
        {505, "HTTP/1.1 505 HTTP Version Not Supported\r\n\r\n"},
    };
    for (size_t i = 0; i < sizeof(errs) / sizeof(errs[0]); i++) {
        cw_buf_reset(&b);
        assert_int_equal(cw_http_error_response(&b, errs[i].status), 0);
        assert_int_equal(b.len, strlen(errs[i].text));
        assert_memory_equal(b.data, errs[i].text, b.len);
        /* Our client reads it back as the failure it is. */
        char err[64];
        assert_int_equal(client_check(errs[i].text, RFC_KEY, err, sizeof(err)),
                         errs[i].status == 401 ? CW_EAUTH : CW_EHANDSHAKE);
    }
    cw_buf_reset(&b);
    assert_int_equal(cw_http_error_response(&b, 200), CW_EBADARG);
    assert_int_equal(cw_http_error_response(&b, 101), CW_EBADARG);
    assert_int_equal(cw_http_error_response(&b, -1), CW_EBADARG);
    assert_int_equal(cw_http_error_response(&b, 999), CW_EBADARG);
    assert_int_equal(cw_http_error_response(NULL, 400), CW_EBADARG);
    assert_int_equal(b.len, 0);
    cw_buf_free(&b);
}

/* Both ends of our own implementation agree, with generated keys. */
static void test_full_handshake(void **state)
{
    (void)state;
    for (int round = 0; round < 20; round++) {
        char key[25];
        cw_ws_key_generate(key);
        cw_buf_t wire = CW_BUF_INIT;
        assert_int_equal(
            cw_http_upgrade_request(&wire, "localhost:9989", "/", "w\xc3\xb6", "p:w", key, NULL),
            0);

        cw_http_head_t h;
        cw_http_head_init(&h, true);
        size_t used;
        assert_int_equal(feed_split(&h, wire.data, wire.len, SPLIT_RANDOM, (uint32_t)round, &used),
                         0);
        cw_http_upgrade_req_t req;
        assert_int_equal(cw_http_upgrade_check_request(&h, &req), 0);
        assert_string_equal(req.user, "w\xc3\xb6");
        assert_string_equal(req.password, "p:w");
        assert_string_equal(req.key, key);

        cw_buf_reset(&wire);
        assert_int_equal(cw_http_upgrade_response(&wire, req.key), 0);
        assert_int_equal(cw_buf_append(&wire, first_frame, sizeof(first_frame)), 0);
        cw_http_head_init(&h, false);
        assert_int_equal(feed_split(&h, wire.data, wire.len, SPLIT_RANDOM, (uint32_t)round, &used),
                         0);
        assert_int_equal(used, wire.len - sizeof(first_frame));
        char err[64];
        assert_int_equal(cw_http_upgrade_check_response(&h, key, err, sizeof(err)), 0);
        cw_buf_free(&wire);
    }
}

/* Our SHA-1 against FIPS 180 vectors and libcrypto on many lengths/splits. */
static void test_sha1(void **state)
{
    (void)state;
    static const struct {
        const char *in;
        const char *hex;
    } v[] = {
        {"", "da39a3ee5e6b4b0d3255bfef95601890afd80709"},
        {"abc", "a9993e364706816aba3e25717850c26c9cd0d89d"},
        {"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
         "84983e441c3bd26ebaae4aa1f95129e5e54670f1"},
    };
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        uint8_t md[20];
        char hex[41];
        cw_sha1_t s;
        cw_sha1_init(&s);
        cw_sha1_update(&s, v[i].in, strlen(v[i].in));
        cw_sha1_final(&s, md);
        for (int k = 0; k < 20; k++)
            snprintf(hex + 2 * k, 3, "%02x", md[k]);
        assert_string_equal(hex, v[i].hex);
    }
    uint8_t buf[1000];
    for (size_t i = 0; i < sizeof buf; i++)
        buf[i] = (uint8_t)(i * 31 + 7);
    for (size_t n = 0; n <= sizeof buf; n += 13) {
        uint8_t a[20], b[20];
        cw_sha1_t s;
        cw_sha1_init(&s);
        /* uneven pieces cross the 64-byte block boundary in every way */
        for (size_t off = 0; off < n;) {
            size_t take = (off * 7 + 5) % 67 + 1;
            if (take > n - off)
                take = n - off;
            cw_sha1_update(&s, buf + off, take);
            off += take;
        }
        cw_sha1_final(&s, a);
        SHA1(buf, n, b);
        assert_memory_equal(a, b, 20);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sha1),
        cmocka_unit_test(test_stock_worker_request),
        cmocka_unit_test(test_stock_master_101),
        cmocka_unit_test(test_split_invariance),
        cmocka_unit_test(test_split_invariance_random_heads),
        cmocka_unit_test(test_feed_after_end),
        cmocka_unit_test(test_request_syntax_errors),
        cmocka_unit_test(test_response_syntax),
        cmocka_unit_test(test_header_lookup),
        cmocka_unit_test(test_has_token),
        cmocka_unit_test(test_limit_head_size),
        cmocka_unit_test(test_limit_line),
        cmocka_unit_test(test_limit_headers),
        cmocka_unit_test(test_ws_keys),
        cmocka_unit_test(test_client_request),
        cmocka_unit_test(test_client_request_bad_args),
        cmocka_unit_test(test_basic_auth),
        cmocka_unit_test(test_basic_auth_round_trip),
        cmocka_unit_test(test_basic_auth_limits),
        cmocka_unit_test(test_basic_auth_rejections),
        cmocka_unit_test(test_client_check),
        cmocka_unit_test(test_server_check),
        cmocka_unit_test(test_server_responses),
        cmocka_unit_test(test_full_handshake),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
