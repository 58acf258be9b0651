/* Unit tests for the banana codec (src/proto/banana.c), sans-I/O.
 *
 * Every stream is decoded whole, one byte at a time and in random splits with fixed seeds; the
 * three must give the same messages, the same bytes consumed and the same error.  The encoder is
 * checked byte for byte against the values Twisted's own encoder writes (reference §2.1). */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "cworker/banana.h"
#include "cworker/cw.h"

/* ---- helpers ---- */

/* Parse "02 80 70 62"-style hex (spaces ignored) into a buffer. */
static cw_buf_t hex(const char *s)
{
    cw_buf_t b = CW_BUF_INIT;
    unsigned v = 0;
    int half = 0;
    for (; *s; s++) {
        int d;
        if (*s >= '0' && *s <= '9')
            d = *s - '0';
        else if (*s >= 'a' && *s <= 'f')
            d = *s - 'a' + 10;
        else if (*s >= 'A' && *s <= 'F')
            d = *s - 'A' + 10;
        else
            continue;
        v = v << 4 | (unsigned)d;
        if (++half == 2) {
            uint8_t c = (uint8_t)v;
            assert_int_equal(cw_buf_append(&b, &c, 1), 0);
            half = 0;
            v = 0;
        }
    }
    assert_int_equal(half, 0);
    return b;
}

static void assert_bytes(const cw_buf_t *b, const char *want_hex)
{
    cw_buf_t w = hex(want_hex);
    if (b->len != w.len || (w.len && memcmp(b->data, w.data, w.len) != 0)) {
        fprintf(stderr, "got: ");
        for (size_t i = 0; i < b->len; i++)
            fprintf(stderr, "%02x ", b->data[i]);
        fprintf(stderr, "\nwant: %s\n", want_hex);
        fail();
    }
    cw_buf_free(&w);
}

/* Text form of a tree, for comparing decodes: (..) lists, i<n>, I<sign><digits>, s"..", f<bits>. */
static void dump(cw_buf_t *o, const cw_banana_node_t *n)
{
    switch (n->type) {
    case CW_BANANA_LIST:
        cw_buf_append_str(o, "(");
        for (size_t i = 0; i < n->u.list.n; i++) {
            if (i)
                cw_buf_append_str(o, " ");
            dump(o, &n->u.list.items[i]);
        }
        cw_buf_append_str(o, ")");
        break;
    case CW_BANANA_INT:
        if (n->flags & CW_BANANA_F_BIG) {
            cw_buf_printf(o, "I%c", n->flags & CW_BANANA_F_NEG ? '-' : '+');
            for (size_t i = 0; i < n->u.big.ndigits; i++)
                cw_buf_printf(o, "%02x", n->u.big.digits[i]);
        } else {
            cw_buf_printf(o, "i%lld", (long long)n->u.i);
        }
        break;
    case CW_BANANA_STRING:
        cw_buf_append_str(o, (n->flags & CW_BANANA_F_VOCAB) ? "v\"" : "s\"");
        for (size_t i = 0; i < n->u.s.len; i++) {
            unsigned char c = (unsigned char)n->u.s.ptr[i];
            if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\')
                cw_buf_printf(o, "%c", c);
            else
                cw_buf_printf(o, "\\x%02x", c);
        }
        cw_buf_append_str(o, "\"");
        break;
    case CW_BANANA_FLOAT: {
        uint64_t bits;
        memcpy(&bits, &n->u.f, 8);
        cw_buf_printf(o, "f%016llx", (unsigned long long)bits);
        break;
    }
    default:
        fail();
    }
}

typedef struct result {
    int rc;
    size_t consumed; /* bytes consumed in all */
    size_t nmsg;
    cw_buf_t text; /* dumps of every message, one per line */
    bool partial;
} result_t;

static uint64_t xs(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* Decode a stream fed in pieces: seed 0 whole, 1 byte by byte, else random pieces. */
static result_t decode(const uint8_t *p, size_t len, uint64_t seed, bool vocab,
                       const cw_banana_limits_t *lim)
{
    result_t r = {0};
    r.text = (cw_buf_t)CW_BUF_INIT;
    cw_banana_dec_t d;
    cw_banana_dec_init(&d, lim);
    cw_banana_dec_set_vocab(&d, vocab);
    uint64_t s = seed | 1;
    size_t pos = 0;
    while (pos < len) {
        size_t piece = len - pos;
        if (seed == 1)
            piece = 1;
        else if (seed > 1)
            piece = (size_t)(xs(&s) % 17);
        if (piece > len - pos)
            piece = len - pos;
        /* hand the piece over as an exact-size copy so ASan sees overreads */
        uint8_t *copy = malloc(piece ? piece : 1);
        memcpy(copy, p + pos, piece);
        size_t off = 0;
        while (off < piece || piece == 0) {
            size_t used;
            cw_banana_msg_t *m;
            int rc = cw_banana_dec_feed(&d, copy + off, piece - off, &used, &m);
            off += used;
            r.consumed += used;
            if (rc < 0) {
                r.rc = rc;
                break;
            }
            if (m) {
                assert_int_equal(m->wire_len > 0, 1);
                dump(&r.text, m->root);
                cw_buf_append_str(&r.text, "\n");
                r.nmsg++;
                cw_banana_msg_free(m);
            } else {
                assert_int_equal(off, piece);
            }
            if (piece == 0)
                break;
        }
        free(copy);
        if (r.rc)
            break;
        pos += piece;
    }
    r.partial = cw_banana_dec_partial(&d);
    if (r.rc)
        assert_non_null(cw_banana_dec_error(&d));
    cw_banana_dec_free(&d);
    cw_buf_append(&r.text, "", 1);
    return r;
}

/* Decode whole, byte by byte and with 20 random splits: all identical.  Returns the whole run. */
static result_t decode_all_ways(const uint8_t *p, size_t len, bool vocab,
                                const cw_banana_limits_t *lim)
{
    result_t whole = decode(p, len, 0, vocab, lim);
    for (uint64_t i = 0; i < 21; i++) {
        /* seed 1: one byte at a time; the others random pieces (never 0 or 1) */
        uint64_t seed = i == 0 ? 1 : i * 0x9E3779B97F4A7C15u + 2;
        result_t r = decode(p, len, seed, vocab, lim);
        assert_int_equal(r.rc, whole.rc);
        assert_int_equal(r.nmsg, whole.nmsg);
        assert_int_equal(r.consumed, whole.consumed);
        assert_int_equal(r.partial, whole.partial);
        assert_string_equal((char *)r.text.data, (char *)whole.text.data);
        cw_buf_free(&r.text);
    }
    return whole;
}

static void expect_text(const char *stream_hex, bool vocab, int rc, const char *text)
{
    cw_buf_t in = hex(stream_hex);
    result_t r = decode_all_ways(in.data, in.len, vocab, NULL);
    assert_int_equal(r.rc, rc);
    if (text)
        assert_string_equal((char *)r.text.data, text);
    cw_buf_free(&r.text);
    cw_buf_free(&in);
}

/* ---- encoder vectors (reference §2.1, Twisted's encoder) ---- */

static void test_encode_ints(void **state)
{
    (void)state;
    static const struct {
        int64_t v;
        const char *hex;
    } vec[] = {
        {0, "00 81"},
        {127, "7f 81"},
        {128, "00 01 81"},
        {162, "22 01 81"},
        {16384, "00 00 01 81"},
        {262144, "00 00 10 81"},
        {-1, "01 83"},
        {-2147483648LL, "00 00 00 00 08 83"},
        {-2147483649LL, "01 00 00 00 08 86"},
        {2147483647LL, "7f 7f 7f 7f 07 81"},
        {2147483648LL, "00 00 00 00 08 85"},
        {INT64_MAX, "7f 7f 7f 7f 7f 7f 7f 7f 7f 85"},
        {INT64_MIN, "00 00 00 00 00 00 00 00 00 01 86"},
    };
    for (size_t i = 0; i < sizeof(vec) / sizeof(vec[0]); i++) {
        cw_buf_t b = CW_BUF_INIT;
        assert_int_equal(cw_banana_int(&b, vec[i].v), 0);
        assert_bytes(&b, vec[i].hex);
        cw_buf_free(&b);
    }
    cw_buf_t b = CW_BUF_INIT;
    assert_int_equal(cw_banana_uint(&b, (uint64_t)1 << 63), 0);
    assert_bytes(&b, "00 00 00 00 00 00 00 00 00 01 85");
    cw_buf_reset(&b);
    assert_int_equal(cw_banana_uint(&b, UINT64_MAX), 0);
    assert_bytes(&b, "7f 7f 7f 7f 7f 7f 7f 7f 7f 01 85");
    cw_buf_free(&b);
}

static void test_encode_other(void **state)
{
    (void)state;
    cw_buf_t b = CW_BUF_INIT;
    assert_int_equal(cw_banana_float(&b, 1.0), 0);
    assert_bytes(&b, "84 3f f0 00 00 00 00 00 00");
    cw_buf_reset(&b);
    assert_int_equal(cw_banana_float(&b, -0.0), 0);
    assert_bytes(&b, "84 80 00 00 00 00 00 00 00");
    cw_buf_reset(&b);
    assert_int_equal(cw_banana_string(&b, "", 0, true), 0);
    assert_bytes(&b, "00 82");
    cw_buf_reset(&b);
    assert_int_equal(cw_banana_string(&b, "pb", 2, true), 0);
    assert_bytes(&b, "02 82 70 62");
    cw_buf_reset(&b);
    assert_int_equal(cw_banana_list(&b, 0), 0);
    assert_bytes(&b, "00 80");
    cw_buf_reset(&b);
    assert_int_equal(cw_banana_list(&b, 1), 0);
    assert_int_equal(cw_banana_string(&b, "x", 1, true), 0);
    assert_bytes(&b, "01 80 01 82 78");
    cw_buf_reset(&b);
    /* vocabulary: only in the pb dialect, only whole words */
    assert_int_equal(cw_banana_string(&b, "copy", 4, true), 0);
    assert_bytes(&b, "0d 87");
    cw_buf_reset(&b);
    assert_int_equal(cw_banana_string(&b, "copy", 4, false), 0);
    assert_bytes(&b, "04 82 63 6f 70 79");
    cw_buf_reset(&b);
    assert_int_equal(cw_banana_string(&b, "copyx", 5, true), 0);
    assert_bytes(&b, "05 82 63 6f 70 79 78");
    cw_buf_reset(&b);
    assert_int_equal(cw_banana_string(&b, "uncache", 7, true), 0);
    assert_bytes(&b, "1f 87");
    cw_buf_free(&b);
}

static void test_vocab_table(void **state)
{
    (void)state;
    static const char *const words[] = {
        NULL,           "None",     "class",         "dereference", "reference",
        "dictionary",   "function", "instance",      "list",        "module",
        "persistent",   "tuple",    "unpersistable", "copy",        "cache",
        "cached",       "remote",   "local",         "lcache",      "version",
        "login",        "password", "challenge",     "logged_in",   "not_logged_in",
        "cachemessage", "message",  "answer",        "error",       "decref",
        "decache",      "uncache"};
    for (unsigned i = 1; i <= 31; i++) {
        assert_string_equal(cw_banana_vocab_word(i), words[i]);
        assert_int_equal(cw_banana_vocab_index(words[i], strlen(words[i])), i);
    }
    assert_null(cw_banana_vocab_word(0));
    assert_null(cw_banana_vocab_word(32));
    assert_int_equal(cw_banana_vocab_index("root", 4), 0);
    assert_int_equal(cw_banana_vocab_index("unicode", 7), 0);
    assert_int_equal(cw_banana_vocab_index("print", 5), 0);
}

static void test_encode_limits(void **state)
{
    (void)state;
    cw_buf_t b = CW_BUF_INIT;
    size_t big = CW_BANANA_SIZE_LIMIT;
    char *s = calloc(1, big + 1);
    assert_int_equal(cw_banana_string(&b, "x", 1, false), 0);
    size_t before = b.len;
    assert_int_equal(cw_banana_string(&b, s, big + 1, false), CW_ETOOBIG);
    assert_int_equal(b.len, before); /* nothing written */
    assert_int_equal(cw_banana_list(&b, big + 1), CW_ETOOBIG);
    assert_int_equal(b.len, before);
    assert_int_equal(cw_banana_string(&b, s, big, false), 0);
    assert_int_equal(b.len, before + 3 + 1 + big); /* 655360 = 00 00 28: 3 digits + type */
    assert_int_equal(cw_banana_list(&b, big), 0);
    free(s);
    cw_buf_free(&b);
}

/* ---- decoding ---- */

static void test_decode_vectors(void **state)
{
    (void)state;
    /* every encoder vector decodes back */
    expect_text("00 81  7f 81  00 01 81  22 01 81  00 00 01 81  00 00 10 81", false, 0,
                "i0\ni127\ni128\ni162\ni16384\ni262144\n");
    expect_text("01 83  00 00 00 00 08 83  01 00 00 00 08 86  7f 7f 7f 7f 07 81  00 00 00 00 08 85",
                false, 0, "i-1\ni-2147483648\ni-2147483649\ni2147483647\ni2147483648\n");
    expect_text("84 3f f0 00 00 00 00 00 00  84 80 00 00 00 00 00 00 00  00 82  02 82 70 62  00 80 "
                " 01 80 01 82 78",
                false, 0, "f3ff0000000000000\nf8000000000000000\ns\"\"\ns\"pb\"\n()\n(s\"x\")\n");
}

static void test_decode_lenient(void **state)
{
    (void)state;
    /* what Twisted's decoder accepts beyond its encoder (reference §2.2) */
    expect_text("81", false, 0, "i0\n");                                     /* empty prefix */
    expect_text("05 00 00 00 00 00 00 00 00 00 00 00 81", false, 0, "i5\n"); /* high zeros */
    expect_text("05 83", false, 0, "i-5\n");
    expect_text("05 85", false, 0, "i5\n"); /* LONGINT for a small value */
    expect_text("05 86", false, 0, "i-5\n");
    expect_text("00 83", false, 0, "i0\n"); /* NEG of zero */
    expect_text("01 02 84 3f f0 00 00 00 00 00 00", false, 0, "f3ff0000000000000\n"); /* prefix */
    /* int64 boundaries: 2^63-1 and -2^63 fit, one beyond does not */
    expect_text("7f 7f 7f 7f 7f 7f 7f 7f 7f 00 85", false, 0, "i9223372036854775807\n");
    expect_text("00 00 00 00 00 00 00 00 00 01 86", false, 0, "i-9223372036854775808\n");
    expect_text("00 00 00 00 00 00 00 00 00 01 85", false, 0, "I+00000000000000000001\n");
    expect_text("01 00 00 00 00 00 00 00 00 01 86", false, 0, "I-01000000000000000001\n");
    expect_text("00 00 00 00 00 00 00 00 00 00 01 81", false, 0, "I+0000000000000000000001\n");
}

static void test_decode_64_digit_prefix(void **state)
{
    (void)state;
    /* 64 digits are allowed (a LONGINT request id the master accepted), 65 are not, even before
     * the type byte arrives */
    char s[64 * 3 + 8];
    size_t o = 0;
    for (int i = 0; i < 64; i++)
        o += (size_t)sprintf(s + o, "7f ");
    sprintf(s + o, "85");
    cw_buf_t in = hex(s);
    result_t r = decode_all_ways(in.data, in.len, false, NULL);
    assert_int_equal(r.rc, 0);
    assert_int_equal(r.nmsg, 1);
    assert_true(strncmp((char *)r.text.data, "I+7f7f", 6) == 0);
    cw_buf_free(&r.text);
    cw_buf_free(&in);

    o = 0;
    for (int i = 0; i < 65; i++)
        o += (size_t)sprintf(s + o, "00 ");
    in = hex(s);
    r = decode_all_ways(in.data, in.len, false, NULL);
    assert_int_equal(r.rc, CW_EPROTO);
    assert_int_equal(r.consumed, 65);
    cw_buf_free(&r.text);
    cw_buf_free(&in);
}

static void test_decode_float_high_bytes(void **state)
{
    (void)state;
    /* FLOAT payloads with bytes >= 0x80 (-0.0, NaN, -inf) must be skipped by length, never taken
     * for type bytes; a string and an int follow in the same list */
    expect_text("05 80 84 80 00 00 00 00 00 00 00 84 ff f8 00 00 00 00 00 00 84 ff f0 00 00 00 00 "
                "00 00 02 82 80 ff 07 81",
                false, 0,
                "(f8000000000000000 ffff8000000000000 ffff0000000000000 s\"\\x80\\xff\" i7)\n");
    /* and -0.0 as the answer of a call, twice in a row */
    expect_text("03 80 1b 87 01 81 84 80 00 00 00 00 00 00 00 03 80 1b 87 02 81 84 ff ff ff ff ff "
                "ff ff ff",
                true, 0,
                "(v\"answer\" i1 f8000000000000000)\n(v\"answer\" i2 fffffffffffffffff)\n");
}

static void test_decode_vocab(void **state)
{
    (void)state;
    /* reference §2.3: the download chunk "copy" arrives as VOCAB 13 */
    expect_text("03 80 1b 87 56 02 81 0d 87", true, 0, "(v\"answer\" i342 v\"copy\")\n");
    /* ("unicode" <VOCAB 26>) is the text "message" */
    expect_text("02 80 07 82 75 6e 69 63 6f 64 65 1a 87", true, 0, "(s\"unicode\" v\"message\")\n");
    /* an upload chunk None: ("tuple" <VOCAB 1>) */
    expect_text("02 80 0b 87 01 87", true, 0, "(v\"tuple\" v\"None\")\n");
    /* VOCAB before the dialect is chosen, index 0, index 32 and 99 */
    expect_text("03 80 1b 87 56 02 81 0d 87", false, CW_EPROTO, NULL);
    expect_text("00 87", true, CW_EPROTO, NULL);
    expect_text("87", true, CW_EPROTO, NULL);
    expect_text("20 87", true, CW_EPROTO, NULL);
    expect_text("63 87", true, CW_EPROTO, NULL);
    expect_text("1f 87", true, 0, "v\"uncache\"\n");
}

static void test_decode_bad_type_byte(void **state)
{
    (void)state;
    for (unsigned t = 0x88; t <= 0xff; t++) {
        char s[32];
        sprintf(s, "01 80 05 %02x", t);
        expect_text(s, true, CW_EPROTO, NULL);
    }
}

static void test_decode_size_limits(void **state)
{
    (void)state;
    /* STRING and LIST above 655,360 are refused at the type byte, before any payload */
    expect_text("01 00 28 82", false, CW_EPROTO, NULL); /* 655,361 */
    expect_text("01 00 28 80", false, CW_EPROTO, NULL);
    expect_text("7f 7f 7f 7f 7f 7f 7f 7f 7f 7f 7f 82", false, CW_EPROTO, NULL);
    /* exactly 655,360 is accepted: header then the bytes */
    size_t n = CW_BANANA_SIZE_LIMIT;
    uint8_t *big = calloc(1, n + 4);
    big[0] = 0x00;
    big[1] = 0x00;
    big[2] = 0x28;
    big[3] = 0x82;
    memset(big + 4, 0x87, n); /* payload bytes that look like VOCAB must not be parsed */
    result_t r = decode(big, n + 4, 0, false, NULL);
    assert_int_equal(r.rc, 0);
    assert_int_equal(r.nmsg, 1);
    cw_buf_free(&r.text);
    r = decode(big, n + 4, 77, false, NULL);
    assert_int_equal(r.rc, 0);
    assert_int_equal(r.nmsg, 1);
    cw_buf_free(&r.text);
    free(big);
    /* a LIST header of 655,360 with nothing after it is merely incomplete... */
    result_t l = decode((const uint8_t *)"\x00\x00\x28\x80", 4, 0, false, NULL);
    assert_int_equal(l.rc, 0);
    assert_true(l.partial);
    cw_buf_free(&l.text);
    /* ...unless the element cap says otherwise, at once */
    cw_banana_limits_t lim = {.max_nodes = 1000};
    l = decode((const uint8_t *)"\x00\x00\x28\x80", 4, 0, false, &lim);
    assert_int_equal(l.rc, CW_ETOOBIG);
    assert_int_equal(l.consumed, 4);
    cw_buf_free(&l.text);
}

static void test_decode_depth(void **state)
{
    (void)state;
    /* 100,000 x "01 80": refused at the 65th level, having read 130 bytes */
    size_t n = 100000;
    uint8_t *p = malloc(2 * n + 2);
    for (size_t i = 0; i < n; i++) {
        p[2 * i] = 0x01;
        p[2 * i + 1] = 0x80;
    }
    p[2 * n] = 0x00;
    p[2 * n + 1] = 0x81;
    result_t r = decode_all_ways(p, 2 * n + 2, false, NULL);
    assert_int_equal(r.rc, CW_ETOOBIG);
    assert_int_equal(r.consumed, 2 * (CW_BANANA_DEFAULT_DEPTH + 1));
    cw_buf_free(&r.text);
    /* exactly 64 levels are fine */
    size_t k = CW_BANANA_DEFAULT_DEPTH;
    memmove(p + 2 * k, p + 2 * n, 2);
    r = decode_all_ways(p, 2 * k + 2, false, NULL);
    assert_int_equal(r.rc, 0);
    assert_int_equal(r.nmsg, 1);
    cw_buf_free(&r.text);
    /* a configured depth of 3 */
    cw_banana_limits_t lim = {.max_depth = 3};
    r = decode(p, 2 * k + 2, 0, false, &lim);
    assert_int_equal(r.rc, CW_ETOOBIG);
    assert_int_equal(r.consumed, 8);
    cw_buf_free(&r.text);
    free(p);
}

static void test_decode_message_size(void **state)
{
    (void)state;
    /* a message of many large strings: capped by max_message, refused at the header of the
     * string that would cross the cap (before its payload is buffered) */
    cw_banana_limits_t lim = {.max_message = 100000};
    size_t chunk = 30000, count = 10;
    cw_buf_t in = CW_BUF_INIT;
    cw_banana_list(&in, count);
    char *s = malloc(chunk);
    memset(s, 'a', chunk);
    for (size_t i = 0; i < count; i++)
        cw_banana_string(&in, s, chunk, false);
    free(s);
    result_t r = decode(in.data, in.len, 0, false, &lim);
    assert_int_equal(r.rc, CW_ETOOBIG);
    /* list header (2) + 3 strings of (4 + 30000) + the 4th header (4) */
    assert_int_equal(r.consumed, 2 + 3 * 30004 + 4);
    cw_buf_free(&r.text);
    r = decode(in.data, in.len, 5, false, &lim);
    assert_int_equal(r.rc, CW_ETOOBIG);
    assert_int_equal(r.consumed, 2 + 3 * 30004 + 4);
    cw_buf_free(&r.text);
    /* with the default cap (16 MiB) it passes */
    r = decode(in.data, in.len, 0, false, NULL);
    assert_int_equal(r.rc, 0);
    cw_buf_free(&r.text);
    cw_buf_free(&in);
    /* a cap reached by prefix bytes alone */
    cw_banana_limits_t tiny = {.max_message = 4};
    cw_buf_t p = hex("01 80 02 80 00 81 00 81");
    r = decode(p.data, p.len, 0, false, &tiny);
    assert_int_equal(r.rc, CW_ETOOBIG);
    assert_int_equal(r.consumed, 5);
    cw_buf_free(&r.text);
    cw_buf_free(&p);
}

static void test_decode_one_message_at_a_time(void **state)
{
    (void)state;
    /* The decoder stops at the end of each expression: the offer, then VOCAB allowed */
    cw_buf_t in = hex("02 80 02 82 70 62 04 82 6e 6f 6e 65   02 80 13 87 06 81");
    cw_banana_dec_t d;
    cw_banana_dec_init(&d, NULL);
    size_t used;
    cw_banana_msg_t *m;
    assert_int_equal(cw_banana_dec_feed(&d, in.data, in.len, &used, &m), 0);
    assert_int_equal(used, 12);
    assert_non_null(m);
    assert_int_equal(m->nodes, 3);
    assert_int_equal(m->wire_len, 12);
    cw_banana_msg_free(m);
    assert_false(cw_banana_dec_partial(&d));
    /* without the dialect the version message fails on its VOCAB */
    size_t used2;
    assert_int_equal(cw_banana_dec_feed(&d, in.data + 12, in.len - 12, &used2, &m), CW_EPROTO);
    assert_null(m);
    /* errors are sticky */
    assert_int_equal(cw_banana_dec_feed(&d, (const uint8_t *)"\x00\x81", 2, &used2, &m), CW_EPROTO);
    cw_banana_dec_free(&d);

    cw_banana_dec_init(&d, NULL);
    assert_int_equal(cw_banana_dec_feed(&d, in.data, in.len, &used, &m), 0);
    cw_banana_msg_free(m);
    cw_banana_dec_set_vocab(&d, true);
    assert_int_equal(cw_banana_dec_feed(&d, in.data + 12, in.len - 12, &used2, &m), 0);
    assert_int_equal(used2, 6);
    assert_non_null(m);
    assert_int_equal(m->root->u.list.n, 2);
    assert_true(m->root->u.list.items[0].flags & CW_BANANA_F_VOCAB);
    cw_banana_msg_free(m);
    cw_banana_dec_free(&d);
    cw_buf_free(&in);
}

static void test_decode_captured_login(void **state)
{
    (void)state;
    /* reference §5.1, both directions, VOCAB on */
    expect_text(
        "07 80 1a 87 01 81 04 82 72 6f 6f 74 14 87 01 81 02 80 0b 87 02 82 77 31 01 80 05 87", true,
        0, "(v\"message\" i1 s\"root\" v\"login\" i1 (v\"tuple\" s\"w1\") (v\"dictionary\"))\n");
    expect_text(
        "03 80 1b 87 01 81 03 80 0b 87 10 82 4b d1 16 4b e7 9c 24 96 c2 2f 8c 1f 75 61 b6 "
        "c2 02 80 10 87 01 81",
        true, 0,
        "(v\"answer\" i1 (v\"tuple\" "
        "s\"K\\xd1\\x16K\\xe7\\x9c$\\x96\\xc2/\\x8c\\x1fua\\xb6\\xc2\" (v\"remote\" i1)))\n");
    expect_text(
        "07 80 1a 87 02 81 01 81 07 82 72 65 73 70 6f 6e 64 01 81 03 80 0b 87 10 82 25 41 "
        "65 b4 d7 82 39 0e 70 47 e6 48 cf 6f d7 aa 02 80 10 87 01 81 01 80 05 87 02 80 1d 87 "
        "01 81",
        true, 0,
        "(v\"message\" i2 i1 s\"respond\" i1 (v\"tuple\" "
        "s\"%Ae\\xb4\\xd7\\x829\\x0epG\\xe6H\\xcfo\\xd7\\xaa\" (v\"remote\" i1)) "
        "(v\"dictionary\"))\n(v\"decref\" i1)\n");
}

static void test_reencode(void **state)
{
    (void)state;
    /* decoded trees encode back to the same bytes (canonical input, vocab on) */
    const char *streams[] = {
        "07 80 1a 87 13 81 04 81 0c 82 73 74 61 72 74 43 6f 6d 6d 61 6e 64 01 81 05 80 0b 87 02 80 "
        "10 87 03 81 02 80 07 82 75 6e 69 63 6f 64 65 01 82 30 02 80 07 82 75 6e 69 63 6f 64 65 05 "
        "82 73 68 65 6c 6c 01 80 05 87 01 80 05 87",
        "05 80 84 80 00 00 00 00 00 00 00 01 00 00 00 08 86 7f 7f 7f 7f 7f 7f 7f 7f 7f 7f 01 85 00 "
        "82 "
        "01 83",
    };
    for (size_t i = 0; i < 2; i++) {
        cw_buf_t in = hex(streams[i]);
        cw_banana_dec_t d;
        cw_banana_dec_init(&d, NULL);
        cw_banana_dec_set_vocab(&d, true);
        size_t used;
        cw_banana_msg_t *m;
        assert_int_equal(cw_banana_dec_feed(&d, in.data, in.len, &used, &m), 0);
        assert_non_null(m);
        cw_buf_t out = CW_BUF_INIT;
        assert_int_equal(cw_banana_node(&out, m->root, true), 0);
        assert_int_equal(out.len, in.len);
        assert_memory_equal(out.data, in.data, in.len);
        cw_buf_free(&out);
        cw_banana_msg_free(m);
        cw_banana_dec_free(&d);
        cw_buf_free(&in);
    }
}

static void test_random_streams_split_invariant(void **state)
{
    (void)state;
    /* random token soup (mostly valid prefixes and type bytes): whatever it decodes to, every
     * split agrees */
    uint64_t s = 12345;
    for (int round = 0; round < 300; round++) {
        size_t len = (size_t)(xs(&s) % 200);
        uint8_t *p = malloc(len ? len : 1);
        for (size_t i = 0; i < len; i++) {
            uint64_t x = xs(&s);
            p[i] = (x & 3) == 0 ? (uint8_t)(0x80 + (x >> 8) % 8) : (uint8_t)((x >> 8) % 6);
        }
        result_t r = decode_all_ways(p, len, round & 1, NULL);
        cw_buf_free(&r.text);
        free(p);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_encode_ints),
        cmocka_unit_test(test_encode_other),
        cmocka_unit_test(test_vocab_table),
        cmocka_unit_test(test_encode_limits),
        cmocka_unit_test(test_decode_vectors),
        cmocka_unit_test(test_decode_lenient),
        cmocka_unit_test(test_decode_64_digit_prefix),
        cmocka_unit_test(test_decode_float_high_bytes),
        cmocka_unit_test(test_decode_vocab),
        cmocka_unit_test(test_decode_bad_type_byte),
        cmocka_unit_test(test_decode_size_limits),
        cmocka_unit_test(test_decode_depth),
        cmocka_unit_test(test_decode_message_size),
        cmocka_unit_test(test_decode_one_message_at_a_time),
        cmocka_unit_test(test_decode_captured_login),
        cmocka_unit_test(test_reencode),
        cmocka_unit_test(test_random_streams_split_invariant),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
