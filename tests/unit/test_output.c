/* Unit tests of the output splitter (cw_lines_*) and update batching
 * (cw_outbuf_*): what reaches the master, decoded back from the packed bytes. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cworker/msg.h"
#include "cworker/output.h"
#include "cworker/utf8.h"

#define FFFD "\xef\xbf\xbd"

/* ---- helpers ---- */

/* msgpack-c write callback into a cw_buf_t. */
static int buf_write(void *data, const char *p, size_t n)
{
    return cw_buf_append(data, p, n) < 0 ? -1 : 0;
}

/* Deterministic PRNG for random splits and inputs. */
static uint64_t rng_next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* True if the msgpack str o equals lit. */
static bool obj_is_str(const msgpack_object *o, const char *lit)
{
    size_t n = strlen(lit);
    return o->type == MSGPACK_OBJECT_STR && o->via.str.size == n &&
           memcmp(o->via.str.ptr, lit, n) == 0;
}

/* What came out of a command, decoded from its update messages. */
typedef struct collected {
    cw_buf_t text[4]; /* per cw_stream_t; CW_STREAM_LOG text is "name:" + lines */
    double *times;    /* time of every line, any stream, in order */
    size_t ntimes;
    size_t nmsgs;
    size_t npairs;
    size_t nint; /* non-text pairs */
    int64_t last_seq;
} collected_t;

/* Free a collected_t. */
static void coll_free(collected_t *c)
{
    for (int k = 0; k < 4; k++)
        cw_buf_free(&c->text[k]);
    free(c->times);
    memset(c, 0, sizeof *c);
}

/* Check one line record [text, offsets, times] and collect it. */
static void check_record(const msgpack_object *rec, cw_buf_t *text, collected_t *c)
{
    assert_int_equal(rec->type, MSGPACK_OBJECT_ARRAY);
    assert_int_equal(rec->via.array.size, 3);
    const msgpack_object *t = &rec->via.array.ptr[0], *o = &rec->via.array.ptr[1],
                         *tm = &rec->via.array.ptr[2];
    assert_int_equal(t->type, MSGPACK_OBJECT_STR);
    const char *s = t->via.str.ptr;
    size_t n = t->via.str.size;
    assert_true(n > 0);
    assert_int_equal(s[n - 1], '\n');
    assert_true(cw_utf8_valid((const uint8_t *)s, n));
    assert_int_equal(o->type, MSGPACK_OBJECT_ARRAY);
    assert_int_equal(tm->type, MSGPACK_OBJECT_ARRAY);
    assert_int_equal(o->via.array.size, tm->via.array.size);
    /* offsets: exactly the '\n' positions */
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] != '\n')
            continue;
        assert_true(k < o->via.array.size);
        assert_int_equal(o->via.array.ptr[k].type, MSGPACK_OBJECT_POSITIVE_INTEGER);
        assert_int_equal(o->via.array.ptr[k].via.u64, i);
        assert_int_equal(tm->via.array.ptr[k].type, MSGPACK_OBJECT_FLOAT64);
        c->times = realloc(c->times, (c->ntimes + 1) * sizeof *c->times);
        assert_non_null(c->times);
        c->times[c->ntimes++] = tm->via.array.ptr[k].via.f64;
        k++;
    }
    assert_int_equal(k, o->via.array.size);
    assert_int_equal(cw_buf_append(text, s, n), 0);
}

/* Decode one update message (exactly one map, keys in stock order), check
 * it and collect its pairs. */
static void decode_update(const cw_buf_t *b, const char *command_id, collected_t *c)
{
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    size_t off = 0;
    assert_int_equal(msgpack_unpack_next(&u, (const char *)b->data, b->len, &off),
                     MSGPACK_UNPACK_SUCCESS);
    assert_int_equal(off, b->len);
    const msgpack_object *m = &u.data;
    assert_int_equal(m->type, MSGPACK_OBJECT_MAP);
    assert_int_equal(m->via.map.size, 4);
    const msgpack_object_kv *kv = m->via.map.ptr;
    assert_true(obj_is_str(&kv[0].key, "op"));
    assert_true(obj_is_str(&kv[0].val, "update"));
    assert_true(obj_is_str(&kv[1].key, "args"));
    assert_true(obj_is_str(&kv[2].key, "command_id"));
    assert_true(obj_is_str(&kv[2].val, command_id));
    assert_true(obj_is_str(&kv[3].key, "seq_number"));
    assert_int_equal(kv[3].val.type, MSGPACK_OBJECT_POSITIVE_INTEGER);
    c->last_seq = (int64_t)kv[3].val.via.u64;
    const msgpack_object *args = &kv[1].val;
    assert_int_equal(args->type, MSGPACK_OBJECT_ARRAY);
    assert_true(args->via.array.size > 0);
    for (uint32_t i = 0; i < args->via.array.size; i++) {
        const msgpack_object *p = &args->via.array.ptr[i];
        assert_int_equal(p->type, MSGPACK_OBJECT_ARRAY);
        assert_int_equal(p->via.array.size, 2);
        const msgpack_object *key = &p->via.array.ptr[0], *val = &p->via.array.ptr[1];
        assert_int_equal(key->type, MSGPACK_OBJECT_STR);
        c->npairs++;
        if (obj_is_str(key, "stdout")) {
            check_record(val, &c->text[CW_STREAM_STDOUT], c);
        } else if (obj_is_str(key, "stderr")) {
            check_record(val, &c->text[CW_STREAM_STDERR], c);
        } else if (obj_is_str(key, "header")) {
            check_record(val, &c->text[CW_STREAM_HEADER], c);
        } else if (obj_is_str(key, "log")) {
            assert_int_equal(val->type, MSGPACK_OBJECT_ARRAY);
            assert_int_equal(val->via.array.size, 2);
            const msgpack_object *ln = &val->via.array.ptr[0];
            assert_int_equal(ln->type, MSGPACK_OBJECT_STR);
            cw_buf_t *t = &c->text[CW_STREAM_LOG];
            assert_int_equal(cw_buf_append(t, ln->via.str.ptr, ln->via.str.size), 0);
            assert_int_equal(cw_buf_append(t, ":", 1), 0);
            check_record(&val->via.array.ptr[1], t, c);
        } else {
            c->nint++;
        }
    }
    msgpack_unpacked_destroy(&u);
    c->nmsgs++;
}

/* Pack and decode updates until ob is empty; each must fit its budget unless
 * it carries a single pair or line. */
static void drain(cw_outbuf_t *ob, collected_t *c)
{
    cw_buf_t b = CW_BUF_INIT;
    msgpack_packer pk;
    msgpack_packer_init(&pk, &b, buf_write);
    cw_str_t id = {"7", 1};
    int64_t seq = 0;
    for (;;) {
        b.len = 0;
        size_t before = cw_outbuf_size(ob);
        int rc = cw_pack_update(&pk, seq, id, ob);
        assert_true(rc >= 0);
        if (rc == 0)
            break;
        assert_true(cw_outbuf_size(ob) < before);
        decode_update(&b, "7", c);
        assert_int_equal(c->last_seq, seq);
        seq++;
    }
    assert_true(cw_outbuf_empty(ob));
    assert_int_equal(cw_outbuf_size(ob), 0);
    cw_buf_free(&b);
}

/* Feed in[0..n) as chunks ending at cuts[] (chunk k at time k + 1), flush,
 * drain; the stdout text lands in c. */
static void run_chunks(const void *in, size_t n, const size_t *cuts, size_t ncuts, size_t maxl,
                       collected_t *c)
{
    cw_lines_t ls;
    cw_outbuf_t ob;
    const uint8_t *p = in;
    assert_int_equal(cw_lines_init(&ls, CW_STREAM_STDOUT, NULL, maxl), 0);
    cw_outbuf_init(&ob, 65536);
    size_t pos = 0;
    for (size_t k = 0; k <= ncuts; k++) {
        size_t end = k < ncuts ? cuts[k] : n;
        assert_int_equal(cw_lines_feed(&ls, &ob, p + pos, end - pos, (double)(k + 1)), 0);
        pos = end;
    }
    assert_int_equal(cw_lines_flush(&ls, &ob, (double)(ncuts + 2)), 0);
    assert_false(cw_lines_pending(&ls));
    drain(&ob, c);
    cw_outbuf_free(&ob);
    cw_lines_free(&ls);
}

/* stdout text of in[0..n) with the given cuts. */
static void expect_cuts(const void *in, size_t n, const size_t *cuts, size_t ncuts, size_t maxl,
                        const char *exp, size_t explen)
{
    collected_t c = {0};
    run_chunks(in, n, cuts, ncuts, maxl, &c);
    cw_buf_t *t = &c.text[CW_STREAM_STDOUT];
    if (t->len != explen || (explen && memcmp(t->data, exp, explen) != 0)) {
        fprintf(stderr, "cuts:");
        for (size_t k = 0; k < ncuts; k++)
            fprintf(stderr, " %zu", cuts[k]);
        fprintf(stderr, "\ngot %zu bytes: ", t->len);
        for (size_t k = 0; k < t->len; k++)
            fprintf(stderr, "%02x", t->data[k]);
        fprintf(stderr, "\nexp %zu bytes: ", explen);
        for (size_t k = 0; k < explen; k++)
            fprintf(stderr, "%02x", (uint8_t)exp[k]);
        fprintf(stderr, "\n");
        fail_msg("output differs");
    }
    coll_free(&c);
}

/* The same expected output whole, at every 2- and 3-way split, byte at a
 * time and with random splits (fixed seeds). */
static void expect_all_splits(const void *in, size_t n, size_t maxl, const char *exp, size_t explen)
{
    expect_cuts(in, n, NULL, 0, maxl, exp, explen);
    for (size_t a = 0; a <= n; a++) {
        size_t cuts[2] = {a, 0};
        expect_cuts(in, n, cuts, 1, maxl, exp, explen);
        if (n <= 48)
            for (cuts[1] = a; cuts[1] <= n; cuts[1]++)
                expect_cuts(in, n, cuts, 2, maxl, exp, explen);
    }
    size_t *cuts = malloc((n + 1) * sizeof *cuts);
    assert_non_null(cuts);
    for (size_t k = 0; k < n; k++)
        cuts[k] = k;
    expect_cuts(in, n, cuts, n, maxl, exp, explen);
    uint64_t seed = 0x9e3779b97f4a7c15ULL;
    for (int r = 0; r < 20; r++) {
        size_t nc = 0, pos = 0;
        while (pos < n) {
            pos += 1 + rng_next(&seed) % 7;
            if (pos < n)
                cuts[nc++] = pos;
        }
        expect_cuts(in, n, cuts, nc, maxl, exp, explen);
    }
    free(cuts);
}

#define EXPECT(in, exp)           expect_all_splits(in, sizeof(in) - 1, 4096, exp, sizeof(exp) - 1)
#define EXPECT_MAX(in, maxl, exp) expect_all_splits(in, sizeof(in) - 1, maxl, exp, sizeof(exp) - 1)

/* ---- newline rules ---- */

static void test_newline_re(void **state)
{
    (void)state;
    const char *re = "(\\r\\n|\\r(?=.)|\\033\\[u|\\033\\[[0-9]+;[0-9]+[Hf]|\\033\\[2J|\\x08+)";
    assert_string_equal(CW_DEFAULT_NEWLINE_RE, re);
    assert_true(cw_newline_re_supported(re, strlen(re)));
    assert_false(cw_newline_re_supported(re, strlen(re) - 1));
    assert_false(cw_newline_re_supported("(\\r\\n)", 6));
}

/* Text without special chars passes unchanged, control chars included. */
static void test_plain_lines(void **state)
{
    (void)state;
    EXPECT("a\nbc\n\n", "a\nbc\n\n");
    EXPECT("", "");
    EXPECT("tab\there\x01\x7f\n", "tab\there\x01\x7f\n");
    EXPECT("nul\0byte\n", "nul\0byte\n");
}

/* A CR before any char but LF is a newline; the char stays. */
static void test_cr(void **state)
{
    (void)state;
    EXPECT("a\rb\n", "a\nb\n");
    EXPECT("progress 1%\rprogress 2%\rdone\n", "progress 1%\nprogress 2%\ndone\n");
    EXPECT("\r\r\n", "\n\n");
    EXPECT("a\r\xc3\xa9\n", "a\n\xc3\xa9\n");
    EXPECT("a\r\xff\n", "a\n" FFFD "\n");
    EXPECT("a\r\x1b[ux\n", "a\n\nx\n");
    EXPECT("a\r\bx\n", "a\n\nx\n");
}

/* CRLF is one newline. */
static void test_crlf(void **state)
{
    (void)state;
    EXPECT("a\r\nb\r\n", "a\nb\n");
    EXPECT("\r\n\r\n", "\n\n");
    EXPECT("a\r\r\n", "a\n\n");
}

/* A CR at the end of a chunk waits for the next one. */
static void test_cr_chunk_end(void **state)
{
    (void)state;
    cw_lines_t ls;
    cw_outbuf_t ob;
    assert_int_equal(cw_lines_init(&ls, CW_STREAM_STDOUT, NULL, 4096), 0);
    cw_outbuf_init(&ob, 65536);
    assert_int_equal(cw_lines_feed(&ls, &ob, (const uint8_t *)"abc\r", 4, 1.0), 0);
    assert_true(cw_outbuf_empty(&ob));
    assert_true(cw_lines_pending(&ls));
    assert_int_equal(cw_lines_feed(&ls, &ob, (const uint8_t *)"\nx", 2, 2.0), 0);
    assert_int_equal(cw_outbuf_size(&ob), 4 + 16);
    assert_int_equal(cw_lines_feed(&ls, &ob, (const uint8_t *)"\r", 1, 3.0), 0);
    assert_int_equal(cw_lines_feed(&ls, &ob, (const uint8_t *)"y", 1, 4.0), 0);
    assert_int_equal(cw_outbuf_size(&ob), 4 + 16 + 2 + 16);
    assert_int_equal(cw_lines_flush(&ls, &ob, 5.0), 0);
    collected_t c = {0};
    drain(&ob, &c);
    assert_int_equal(c.text[0].len, 8);
    assert_memory_equal(c.text[0].data, "abc\nx\ny\n", 8);
    coll_free(&c);
    cw_outbuf_free(&ob);
    cw_lines_free(&ls);

    size_t cut[1] = {4};
    expect_cuts("abc\r\ndef\n", 9, cut, 1, 4096, "abc\ndef\n", 8);
    expect_cuts("abc\rdef\n", 8, cut, 1, 4096, "abc\ndef\n", 8);
}

/* At the end of the stream a lone CR is the end of its line. */
static void test_cr_flush(void **state)
{
    (void)state;
    EXPECT("abc\r", "abc\n");
    EXPECT("\r", "\n");
    EXPECT("a\n\r", "a\n\n");
    EXPECT("a\r\r", "a\n\n");
}

/* A run of backspaces is one newline, however it is split. */
static void test_backspace(void **state)
{
    (void)state;
    EXPECT("a\bb\n", "a\nb\n");
    EXPECT("a\b\b\b\bb\n", "a\nb\n");
    EXPECT("\b\b", "\n");
    EXPECT("a\b", "a\n");
    EXPECT("a\b\n", "a\n\n");
    EXPECT("a\b\rb", "a\n\nb\n");
    EXPECT("spin |\b/\b-\b\\\bdone\n", "spin |\n/\n-\n\\\ndone\n");
}

/* ESC[u, ESC[r;cH, ESC[r;cf and ESC[2J are newlines, split anywhere. */
static void test_escapes(void **state)
{
    (void)state;
    EXPECT("ab\x1b[ucd\n", "ab\ncd\n");
    EXPECT("ab\x1b[12;34Hcd\n", "ab\ncd\n");
    EXPECT("ab\x1b[1;1fcd\n", "ab\ncd\n");
    EXPECT("ab\x1b[2Jcd\n", "ab\ncd\n");
    EXPECT("\x1b[2J\x1b[1;1H\x1b[u", "\n\n\n");
    EXPECT("x\x1b[2;5Hy\x1b[2;5fz", "x\ny\nz\n");
}

/* Prefixes that turn out not to match are text, byte for byte. */
static void test_escapes_not_matching(void **state)
{
    (void)state;
    EXPECT("a\x1b", "a\x1b\n");
    EXPECT("a\x1b[", "a\x1b[\n");
    EXPECT("a\x1b[1", "a\x1b[1\n");
    EXPECT("a\x1b[1;", "a\x1b[1;\n");
    EXPECT("a\x1b[1;2", "a\x1b[1;2\n");
    EXPECT("\x1bZ\n", "\x1bZ\n");
    EXPECT("\x1b[x\n", "\x1b[x\n");
    EXPECT("\x1b[22J\n", "\x1b[22J\n");
    EXPECT("\x1b[3J\n", "\x1b[3J\n");
    EXPECT("\x1b[2K\n", "\x1b[2K\n");
    EXPECT("\x1b[;1H\n", "\x1b[;1H\n");
    EXPECT("\x1b[1;H\n", "\x1b[1;H\n");
    EXPECT("\x1b[1H\n", "\x1b[1H\n");
    EXPECT("\x1b[1;2J\n", "\x1b[1;2J\n");
    EXPECT("\x1b[1;2;3H\n", "\x1b[1;2;3H\n");
    EXPECT("\x1b[31mred\x1b[0m\n", "\x1b[31mred\x1b[0m\n");
    /* the char that ends a prefix is itself processed by the rules */
    EXPECT("\x1b[1\r\nx", "\x1b[1\nx\n");
    EXPECT("\x1b[1\x1b[ux", "\x1b[1\nx\n");
    EXPECT("\x1b\x1b[2J", "\x1b\n");
    EXPECT("\x1b[\b", "\x1b[\n");
    EXPECT("\x1b[1;\n", "\x1b[1;\n");
    EXPECT("\x1b[\xc3\xa9\n", "\x1b[\xc3\xa9\n");
    EXPECT("\x1b[1;\xff", "\x1b[1;" FFFD "\n");
    /* Over 32 bytes of prefix is not taken for a terminal sequence. */
    EXPECT("\x1b[123456789012345;123456789012345H\n", "\x1b[123456789012345;123456789012345H\n");
    EXPECT("\x1b[12345678901234;123456789012345H\n", "\n\n");
}

/* ---- long lines ---- */

/* A line of n copies of the UTF-8 char ch, then '\n'. */
static char *make_line(const char *ch, size_t n, size_t *len)
{
    size_t k = strlen(ch);
    char *s = malloc(n * k + 1);
    assert_non_null(s);
    for (size_t i = 0; i < n; i++)
        memcpy(s + i * k, ch, k);
    s[n * k] = '\n';
    *len = n * k + 1;
    return s;
}

/* Lines of the expected cut of a line of n chars ch: pieces of maxl-1. */
static char *make_cut(const char *ch, size_t n, size_t maxl, size_t *len)
{
    size_t k = strlen(ch), pieces = n ? (n + maxl - 2) / (maxl - 1) : 1;
    char *s = malloc(n * k + pieces + 1);
    assert_non_null(s);
    size_t o = 0, left = n;
    do {
        size_t take = left < maxl - 1 ? left : maxl - 1;
        for (size_t i = 0; i < take; i++, o += k)
            memcpy(s + o, ch, k);
        s[o++] = '\n';
        left -= take;
    } while (left > 0);
    *len = o;
    return s;
}

/* A line of n chars ch comes out cut into max-1 char pieces, nothing lost,
 * whole and with a few splits. */
static void check_long(const char *ch, size_t n, size_t maxl)
{
    size_t il, el;
    char *in = make_line(ch, n, &il);
    char *exp = make_cut(ch, n, maxl, &el);
    expect_cuts(in, il, NULL, 0, maxl, exp, el);
    if (il >= 4) {
        size_t cuts[3] = {1, il / 2, il - 1};
        expect_cuts(in, il, cuts, 3, maxl, exp, el);
    }
    /* every line within limits, counted in code points */
    collected_t c = {0};
    run_chunks(in, il, NULL, 0, maxl, &c);
    const uint8_t *t = c.text[0].data;
    size_t chars = 0;
    for (size_t i = 0; i < c.text[0].len; i++) {
        if (t[i] == '\n') {
            assert_true(chars <= maxl - 1);
            chars = 0;
        } else if ((t[i] & 0xC0) != 0x80) {
            chars++;
        }
    }
    coll_free(&c);
    free(in);
    free(exp);
}

/* Lines over max_line_length - 1 chars are cut, counted in code points. */
static void test_long_lines(void **state)
{
    (void)state;
    check_long("a", 4095, 4096);
    check_long("a", 4096, 4096);
    check_long("a", 4097, 4096);
    check_long("a", 20000, 4096);
    check_long("a", 8190, 4096);
    check_long("\xc3\xa9", 5000, 4096);
    check_long("\xe2\x82\xac", 4097, 4096);
    check_long("\xf0\x9f\x98\x80", 4096, 4096);
    check_long("x", 10, 2); /* one char per line */
    check_long("x", 0, 2);
    {
        size_t counts[] = {4095, 4096, 4097};
        for (int k = 0; k < 3; k++) {
            size_t il;
            char *in = make_line("a", counts[k], &il);
            collected_t c = {0};
            run_chunks(in, il, NULL, 0, 4096, &c);
            assert_int_equal(c.ntimes, counts[k] == 4095 ? 1 : 2);
            assert_int_equal(c.text[0].len, counts[k] + c.ntimes);
            coll_free(&c);
            free(in);
        }
    }
    /* a multibyte char right at the cut stays whole */
    EXPECT_MAX("abc\xe2\x82\xac"
               "def\n",
               5, "abc\xe2\x82\xac\ndef\n");
    EXPECT_MAX("abcd\xe2\x82\xac"
               "ef\n",
               5,
               "abcd\n\xe2\x82\xac"
               "ef\n");
    EXPECT_MAX("abcd\n", 5, "abcd\n");
    EXPECT_MAX("abcd\r\n", 5, "abcd\n");
    EXPECT_MAX("abcd\rx", 5, "abcd\nx\n");
    EXPECT_MAX("abcde", 5, "abcd\ne\n");
    EXPECT_MAX("abc\x1b[ud\n", 5, "abc\nd\n");
    EXPECT_MAX("abc\x1b[9x\n", 5, "abc\x1b\n[9x\n");
    EXPECT_MAX("abcd\xff", 5, "abcd\n" FFFD "\n");
    EXPECT_MAX("ab\xe2\x82", 3, "ab\n" FFFD "\n");
    /* max_line_length < 2 acts as 2 */
    EXPECT_MAX("abc\n", 0, "a\nb\nc\n");
    EXPECT_MAX("abc\n", 1, "a\nb\nc\n");
}

/* ---- UTF-8 repair ---- */

static void test_invalid_utf8(void **state)
{
    (void)state;
    EXPECT("a\x80"
           "b\n",
           "a" FFFD "b\n");
    EXPECT("a\xe2\x82", "a" FFFD "\n");
    EXPECT("a\xe2\x82\n", "a" FFFD "\n");
    EXPECT("a\xf0\x9f\x98", "a" FFFD "\n");
    EXPECT("\xc0\xaf!\n", FFFD FFFD "!\n");
    EXPECT("\xe0\x80\xaf\n", FFFD FFFD FFFD "\n");
    EXPECT("\xf0\x80\x80\xaf\n", FFFD FFFD FFFD FFFD "\n");
    EXPECT("\xed\xa0\x80x\n", FFFD FFFD FFFD "x\n");
    EXPECT("\xed\xbf\xbf\n", FFFD FFFD FFFD "\n");
    EXPECT("\xf4\x90\x80\x80\n", FFFD FFFD FFFD FFFD "\n");
    EXPECT("\xff\xfe\n", FFFD FFFD "\n");
    EXPECT("\xf0\x90"
           "A\n",
           FFFD "A\n");
    EXPECT("\xe2\x82\xe2\x82\xac\n", FFFD "\xe2\x82\xac\n");
    EXPECT("\xc3\r\n", FFFD "\n");
    EXPECT("\xc3\x1b[u", FFFD "\n");
    EXPECT("ok \xed\x9f\xbf \xee\x80\x80 \xf4\x8f\xbf\xbf \xf0\x90\x80\x80\n",
           "ok \xed\x9f\xbf \xee\x80\x80 \xf4\x8f\xbf\xbf \xf0\x90\x80\x80\n");
}

/* A multibyte char split at every byte position survives. */
static void test_multibyte_split(void **state)
{
    (void)state;
    EXPECT("x\xc3\xa9y\xe2\x82\xacz\xf0\x9f\x98\x80w\n",
           "x\xc3\xa9y\xe2\x82\xacz\xf0\x9f\x98\x80w\n");
    EXPECT("\xf0\x9f\x98\x80", "\xf0\x9f\x98\x80\n");
}

/* The flush closes an unfinished line and nothing else. */
static void test_flush(void **state)
{
    (void)state;
    EXPECT("abc", "abc\n");
    EXPECT("abc\ndef", "abc\ndef\n");
    cw_lines_t ls;
    cw_outbuf_t ob;
    assert_int_equal(cw_lines_init(&ls, CW_STREAM_STDERR, NULL, 4096), 0);
    cw_outbuf_init(&ob, 65536);
    assert_false(cw_lines_pending(&ls));
    assert_int_equal(cw_lines_flush(&ls, &ob, 1.0), 0);
    assert_true(cw_outbuf_empty(&ob));
    assert_int_equal(cw_lines_feed(&ls, &ob, (const uint8_t *)"a\b\b", 3, 1.0), 0);
    assert_false(cw_lines_pending(&ls)); /* a finished backspace run */
    assert_int_equal(cw_lines_flush(&ls, &ob, 2.0), 0);
    assert_int_equal(cw_outbuf_size(&ob), 2 + 16);
    assert_int_equal(cw_lines_feed(&ls, &ob, (const uint8_t *)"\xe2", 1, 3.0), 0);
    assert_true(cw_lines_pending(&ls));
    assert_int_equal(cw_lines_flush(&ls, &ob, 4.0), 0);
    assert_false(cw_lines_pending(&ls));
    collected_t c = {0};
    drain(&ob, &c);
    assert_int_equal(c.text[CW_STREAM_STDERR].len, 6);
    assert_memory_equal(c.text[CW_STREAM_STDERR].data, "a\n" FFFD "\n", 6);
    coll_free(&c);
    cw_outbuf_free(&ob);
    cw_lines_free(&ls);
}

/* Random inputs over the interesting bytes: whole, byte at a time and random
 * splits give the same text; every line within max_line_length. */
static void test_split_invariance(void **state)
{
    (void)state;
    static const char alphabet[] = "ab\n\r\x1b[2;1HfJu\b\xe2\x82\xac\xff\xc3\xa9 ";
    uint64_t seed = 12345;
    for (int round = 0; round < 300; round++) {
        size_t n = 1 + rng_next(&seed) % 300, maxl = round % 3 == 0 ? 4096 : 2 + round % 9;
        uint8_t *in = malloc(n);
        assert_non_null(in);
        for (size_t i = 0; i < n; i++)
            in[i] = (uint8_t)alphabet[rng_next(&seed) % (sizeof alphabet - 1)];
        collected_t whole = {0};
        run_chunks(in, n, NULL, 0, maxl, &whole);
        size_t *cuts = malloc(n * sizeof *cuts);
        assert_non_null(cuts);
        for (size_t k = 0; k < n; k++)
            cuts[k] = k;
        expect_cuts(in, n, cuts, n, maxl, (const char *)whole.text[0].data, whole.text[0].len);
        for (int r = 0; r < 5; r++) {
            size_t nc = 0, pos = 0;
            while (pos < n) {
                pos += 1 + rng_next(&seed) % 40;
                if (pos < n)
                    cuts[nc++] = pos;
            }
            expect_cuts(in, n, cuts, nc, maxl, (const char *)whole.text[0].data, whole.text[0].len);
        }
        size_t chars = 0;
        for (size_t i = 0; i < whole.text[0].len; i++) {
            uint8_t b = whole.text[0].data[i];
            if (b == '\n') {
                assert_true(chars <= maxl - 1);
                chars = 0;
            } else if ((b & 0xC0) != 0x80) {
                chars++;
            }
            assert_true(b != '\r' && b != '\b');
        }
        coll_free(&whole);
        free(cuts);
        free(in);
    }
}

/* ---- times ---- */

static void expect_times(const collected_t *c, const double *exp, size_t n)
{
    assert_int_equal(c->ntimes, n);
    for (size_t k = 0; k < n; k++)
        assert_true(c->times[k] == exp[k]);
}

/* Feed chunks[k] at times[k], flush at tflush; collect. */
static void feed_timed(const char *const *chunks, const double *times, size_t n, size_t maxl,
                       collected_t *c)
{
    cw_lines_t ls;
    cw_outbuf_t ob;
    assert_int_equal(cw_lines_init(&ls, CW_STREAM_STDOUT, NULL, maxl), 0);
    cw_outbuf_init(&ob, 65536);
    for (size_t k = 0; k < n; k++)
        assert_int_equal(
            cw_lines_feed(&ls, &ob, (const uint8_t *)chunks[k], strlen(chunks[k]), times[k]), 0);
    assert_int_equal(cw_lines_flush(&ls, &ob, 99.0), 0);
    drain(&ob, c);
    cw_outbuf_free(&ob);
    cw_lines_free(&ls);
}

/* Each line carries the arrival time of its first byte. */
static void test_times(void **state)
{
    (void)state;
    {
        const char *ch[] = {"ab", "c\nd\n", "e"};
        const double t[] = {1, 2, 3}, exp[] = {1, 2, 3};
        collected_t c = {0};
        feed_timed(ch, t, 3, 4096, &c);
        assert_memory_equal(c.text[0].data, "abc\nd\ne\n", 8);
        expect_times(&c, exp, 3);
        coll_free(&c);
    }
    { /* a held CR and the empty line it makes keep their arrival time */
        const char *ch[] = {"x\n\r", "y\n"};
        const double t[] = {1, 2}, exp[] = {1, 1, 2};
        collected_t c = {0};
        feed_timed(ch, t, 2, 4096, &c);
        assert_memory_equal(c.text[0].data, "x\n\ny\n", 5);
        expect_times(&c, exp, 3);
        coll_free(&c);
    }
    { /* a char split across chunks that starts a line after a cut */
        const char *ch[] = {"ab", "\xe2", "\x82\xac\n"};
        const double t[] = {1, 2, 3}, exp[] = {1, 2};
        collected_t c = {0};
        feed_timed(ch, t, 3, 3, &c);
        assert_memory_equal(c.text[0].data, "ab\n\xe2\x82\xac\n", 7);
        expect_times(&c, exp, 2);
        coll_free(&c);
    }
    { /* a held ESC that turns out to be text, after a cut */
        const char *ch[] = {"abc", "\x1b", "x\n"};
        const double t[] = {1, 2, 3}, exp[] = {1, 2};
        collected_t c = {0};
        feed_timed(ch, t, 3, 4, &c);
        assert_memory_equal(c.text[0].data, "abc\n\x1bx\n", 7);
        expect_times(&c, exp, 2);
        coll_free(&c);
    }
    { /* cut continuation lines get the time of their first char */
        const char *ch[] = {"abcd", "efgh", "ij\n"};
        const double t[] = {1, 2, 3}, exp[] = {1, 1, 2, 3};
        collected_t c = {0};
        feed_timed(ch, t, 3, 4, &c);
        assert_memory_equal(c.text[0].data, "abc\ndef\nghi\nj\n", 14);
        expect_times(&c, exp, 4);
        coll_free(&c);
    }
    { /* the flush line keeps the time of its first byte */
        const char *ch[] = {"a\nb", "c"};
        const double t[] = {5, 6}, exp[] = {5, 5};
        collected_t c = {0};
        feed_timed(ch, t, 2, 4096, &c);
        expect_times(&c, exp, 2);
        coll_free(&c);
    }
}

/* ---- batching ---- */

/* Pack the next update of ob into b and decode it into c. */
static int pack_one(cw_outbuf_t *ob, cw_buf_t *b, collected_t *c)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, b, buf_write);
    b->len = 0;
    cw_str_t id = {"cmd-1", 5};
    int rc = cw_pack_update(&pk, 42, id, ob);
    if (rc == 1)
        decode_update(b, "cmd-1", c);
    return rc;
}

/* Consecutive text of the same key (and log name) is one record. */
static void test_merge_rules(void **state)
{
    (void)state;
    cw_outbuf_t ob;
    cw_buf_t b = CW_BUF_INIT;
    collected_t c = {0};
    cw_outbuf_init(&ob, 65536);
    /* same key: merged */
    assert_int_equal(cw_outbuf_add_lines(&ob, CW_STREAM_STDOUT, NULL, "a\n", 2, 1.0), 0);
    assert_int_equal(cw_outbuf_add_lines(&ob, CW_STREAM_STDOUT, NULL, "b\nc\n", 4, 2.0), 0);
    assert_int_equal(cw_outbuf_size(&ob), 6 + 3 * 16);
    assert_int_equal(pack_one(&ob, &b, &c), 1);
    assert_int_equal(c.npairs, 1);
    const double t1[] = {1, 2, 2};
    expect_times(&c, t1, 3);
    coll_free(&c);
    /* different keys, different log names: not merged; same log name merged */
    assert_int_equal(cw_outbuf_add_lines(&ob, CW_STREAM_STDOUT, NULL, "a\n", 2, 1.0), 0);
    assert_int_equal(cw_outbuf_add_lines(&ob, CW_STREAM_STDERR, NULL, "b\n", 2, 1.0), 0);
    assert_int_equal(cw_outbuf_add_lines(&ob, CW_STREAM_LOG, "l1", "c\n", 2, 1.0), 0);
    assert_int_equal(cw_outbuf_add_lines(&ob, CW_STREAM_LOG, "l1", "d\n", 2, 1.0), 0);
    assert_int_equal(cw_outbuf_add_lines(&ob, CW_STREAM_LOG, "l2", "e\n", 2, 1.0), 0);
    assert_int_equal(cw_outbuf_add_lines(&ob, CW_STREAM_LOG, "l1", "f\n", 2, 1.0), 0);
    assert_int_equal(pack_one(&ob, &b, &c), 1);
    assert_int_equal(c.npairs, 5);
    assert_int_equal(c.text[CW_STREAM_LOG].len, 17);
    assert_memory_equal(c.text[CW_STREAM_LOG].data, "l1:c\nd\nl2:e\nl1:f\n", 17);
    coll_free(&c);
    /* a non-text pair breaks merging */
    assert_int_equal(cw_outbuf_add_lines(&ob, CW_STREAM_STDOUT, NULL, "a\n", 2, 1.0), 0);
    assert_int_equal(cw_outbuf_add_int(&ob, "rc", 0), 0);
    assert_int_equal(cw_outbuf_add_lines(&ob, CW_STREAM_STDOUT, NULL, "b\n", 2, 1.0), 0);
    assert_int_equal(cw_outbuf_size(&ob), 18 + 20 + 18);
    assert_int_equal(pack_one(&ob, &b, &c), 1);
    assert_int_equal(c.npairs, 3);
    assert_int_equal(c.nint, 1);
    coll_free(&c);
    /* nothing pending: nothing packed */
    assert_int_equal(pack_one(&ob, &b, &c), 0);
    assert_int_equal(b.len, 0);
    cw_outbuf_free(&ob);
    cw_buf_free(&b);
}

/* add_lines refuses text a master would choke on; add_header fixes it. */
static void test_add_lines_checks(void **state)
{
    (void)state;
    cw_outbuf_t ob;
    cw_outbuf_init(&ob, 65536);
    assert_int_equal(cw_outbuf_add_lines(&ob, CW_STREAM_STDOUT, NULL, "", 0, 1.0), -EINVAL);
    assert_int_equal(cw_outbuf_add_lines(&ob, CW_STREAM_STDOUT, NULL, "ab", 2, 1.0), -EINVAL);
    assert_true(cw_outbuf_empty(&ob));
    /* header: a '\n' is added only when missing; bad UTF-8 repaired */
    assert_int_equal(cw_outbuf_add_header(&ob, "one", 1.0), 0);
    assert_int_equal(cw_outbuf_add_header(&ob, "two\n", 1.0), 0);
    assert_int_equal(cw_outbuf_add_header(&ob, "", 1.0), 0);
    assert_int_equal(cw_outbuf_add_header(&ob, "bad \xff\xc3", 1.0), 0);
    assert_int_equal(cw_outbuf_add_lines(&ob, CW_STREAM_HEADER, NULL, "\xed\xa0\x80\n", 4, 1.0), 0);
    collected_t c = {0};
    drain(&ob, &c);
    const char exp[] = "one\ntwo\n\nbad " FFFD FFFD "\n" FFFD FFFD FFFD "\n";
    assert_int_equal(c.text[CW_STREAM_HEADER].len, sizeof exp - 1);
    assert_memory_equal(c.text[CW_STREAM_HEADER].data, exp, sizeof exp - 1);
    assert_int_equal(c.npairs, 1);
    coll_free(&c);
    cw_outbuf_free(&ob);
    cw_outbuf_free(NULL);
}

/* The exact bytes msgpack-python produces for the same update. */
static void test_pack_bytes(void **state)
{
    (void)state;
    static const uint8_t exp[] = {
        0x84, 0xa2, 0x6f, 0x70, 0xa6, 0x75, 0x70, 0x64, 0x61, 0x74, 0x65, 0xa4, 0x61, 0x72, 0x67,
        0x73, 0x95, 0x92, 0xa6, 0x73, 0x74, 0x64, 0x6f, 0x75, 0x74, 0x93, 0xa2, 0x61, 0x0a, 0x91,
        0x01, 0x91, 0xcb, 0x3f, 0xf8, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x92, 0xa3, 0x6c, 0x6f,
        0x67, 0x92, 0xa2, 0x4c, 0x31, 0x93, 0xa4, 0x78, 0x0a, 0x79, 0x0a, 0x92, 0x01, 0x03, 0x92,
        0xcb, 0x40, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xcb, 0x40, 0x02, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x92, 0xa2, 0x72, 0x63, 0x00, 0x92, 0xa7, 0x65, 0x6c, 0x61, 0x70, 0x73,
        0x65, 0x64, 0xcb, 0x3f, 0xe0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x92, 0xae, 0x66, 0x61,
        0x69, 0x6c, 0x75, 0x72, 0x65, 0x5f, 0x72, 0x65, 0x61, 0x73, 0x6f, 0x6e, 0xa7, 0x74, 0x69,
        0x6d, 0x65, 0x6f, 0x75, 0x74, 0xaa, 0x63, 0x6f, 0x6d, 0x6d, 0x61, 0x6e, 0x64, 0x5f, 0x69,
        0x64, 0xa1, 0x32, 0xaa, 0x73, 0x65, 0x71, 0x5f, 0x6e, 0x75, 0x6d, 0x62, 0x65, 0x72, 0x04};
    cw_outbuf_t ob;
    cw_outbuf_init(&ob, 65536);
    assert_int_equal(cw_outbuf_add_lines(&ob, CW_STREAM_STDOUT, NULL, "a\n", 2, 1.5), 0);
    assert_int_equal(cw_outbuf_add_lines(&ob, CW_STREAM_LOG, "L1", "x\n", 2, 2.0), 0);
    assert_int_equal(cw_outbuf_add_lines(&ob, CW_STREAM_LOG, "L1", "y\n", 2, 2.25), 0);
    assert_int_equal(cw_outbuf_add_int(&ob, "rc", 0), 0);
    assert_int_equal(cw_outbuf_add_float(&ob, "elapsed", 0.5), 0);
    assert_int_equal(cw_outbuf_add_str(&ob, "failure_reason", "timeout"), 0);
    assert_int_equal(cw_outbuf_size(&ob), 18 + 36 + 60);
    cw_buf_t b = CW_BUF_INIT;
    msgpack_packer pk;
    msgpack_packer_init(&pk, &b, buf_write);
    assert_int_equal(cw_pack_update(&pk, 4, (cw_str_t){"2", 1}, &ob), 1);
    assert_int_equal(b.len, sizeof exp);
    assert_memory_equal(b.data, exp, sizeof exp);
    assert_true(cw_outbuf_empty(&ob));
    cw_buf_free(&b);
    cw_outbuf_free(&ob);
}

/* Non-text values and large offsets decode to what was put in. */
static void test_pack_values(void **state)
{
    (void)state;
    cw_outbuf_t ob;
    cw_outbuf_init(&ob, 1 << 20);
    /* lines ending at 200, 300 and 70000: uint8, uint16, uint32 offsets */
    size_t lens[] = {201, 100, 69700};
    for (int k = 0; k < 3; k++) {
        char *s = malloc(lens[k]);
        assert_non_null(s);
        memset(s, 'a' + k, lens[k] - 1);
        s[lens[k] - 1] = '\n';
        assert_int_equal(cw_outbuf_add_lines(&ob, CW_STREAM_STDOUT, NULL, s, lens[k], 1.0), 0);
        free(s);
    }
    const char *const files[] = {"a", "b\xff"};
    assert_int_equal(cw_outbuf_add_strlist(&ob, "files", files, 2), 0);
    cw_num_t st[3] = {{.i = -5}, {.is_unsigned = true, .u = UINT64_MAX}, {.i = 7}};
    assert_int_equal(cw_outbuf_add_numlist(&ob, "stat", st, 3), 0);
    assert_int_equal(cw_outbuf_add_int(&ob, "rc", -1), 0);
    assert_int_equal(cw_outbuf_add_int(&ob, "big", INT64_MAX), 0);
    assert_int_equal(cw_outbuf_add_float(&ob, "elapsed", 1.25), 0);
    assert_int_equal(cw_outbuf_add_str(&ob, "s", "bad\xff"), 0);

    cw_buf_t b = CW_BUF_INIT;
    collected_t c = {0};
    assert_int_equal(pack_one(&ob, &b, &c), 1); /* also checks offsets */
    assert_int_equal(c.text[0].len, 70001);
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    size_t off = 0;
    assert_int_equal(msgpack_unpack_next(&u, (const char *)b.data, b.len, &off),
                     MSGPACK_UNPACK_SUCCESS);
    const msgpack_object *args = &u.data.via.map.ptr[1].val;
    assert_int_equal(args->via.array.size, 7);
    const msgpack_object *offs = &args->via.array.ptr[0].via.array.ptr[1].via.array.ptr[1];
    assert_int_equal(offs->via.array.ptr[2].via.u64, 70000);
    const msgpack_object *v = &args->via.array.ptr[1].via.array.ptr[1];
    assert_true(obj_is_str(&args->via.array.ptr[1].via.array.ptr[0], "files"));
    assert_int_equal(v->type, MSGPACK_OBJECT_ARRAY);
    assert_int_equal(v->via.array.size, 2);
    assert_true(obj_is_str(&v->via.array.ptr[0], "a"));
    assert_true(obj_is_str(&v->via.array.ptr[1], "b" FFFD));
    v = &args->via.array.ptr[2].via.array.ptr[1];
    assert_true(obj_is_str(&args->via.array.ptr[2].via.array.ptr[0], "stat"));
    assert_int_equal(v->via.array.size, 3);
    assert_int_equal(v->via.array.ptr[0].via.i64, -5);
    assert_int_equal(v->via.array.ptr[1].type, MSGPACK_OBJECT_POSITIVE_INTEGER);
    assert_true(v->via.array.ptr[1].via.u64 == UINT64_MAX);
    assert_int_equal(v->via.array.ptr[2].via.u64, 7);
    v = &args->via.array.ptr[3].via.array.ptr[1];
    assert_int_equal(v->type, MSGPACK_OBJECT_NEGATIVE_INTEGER);
    assert_int_equal(v->via.i64, -1);
    v = &args->via.array.ptr[4].via.array.ptr[1];
    assert_int_equal(v->via.u64, (uint64_t)INT64_MAX);
    v = &args->via.array.ptr[5].via.array.ptr[1];
    assert_int_equal(v->type, MSGPACK_OBJECT_FLOAT64);
    assert_true(v->via.f64 == 1.25);
    v = &args->via.array.ptr[6].via.array.ptr[1];
    assert_true(obj_is_str(v, "bad" FFFD));
    msgpack_unpacked_destroy(&u);
    coll_free(&c);
    cw_buf_free(&b);
    cw_outbuf_free(&ob);
}

/* Pack under budget and return the number of pairs and the size left. */
static size_t pack_pairs(cw_outbuf_t *ob, cw_buf_t *b, collected_t *c)
{
    size_t before = c->npairs;
    assert_int_equal(pack_one(ob, b, c), 1);
    return c->npairs - before;
}

/* Messages take pairs up to buffer_size exactly, splitting at lines. */
static void test_pack_budget(void **state)
{
    (void)state;
    cw_outbuf_t ob;
    cw_buf_t b = CW_BUF_INIT;
    collected_t c = {0};
    const char *l = "aaaa\n"; /* 5 + 16 = 21 */

    /* two lines of 21 in a budget of 42: one message */
    cw_outbuf_init(&ob, 42);
    cw_outbuf_add_lines(&ob, CW_STREAM_STDOUT, NULL, l, 5, 1.0);
    cw_outbuf_add_lines(&ob, CW_STREAM_STDOUT, NULL, l, 5, 2.0);
    assert_int_equal(cw_outbuf_size(&ob), 42);
    assert_int_equal(pack_pairs(&ob, &b, &c), 1);
    assert_int_equal(c.ntimes, 2);
    assert_true(cw_outbuf_empty(&ob));
    coll_free(&c);

    /* budget 41: a line per message, offsets rebased, times follow */
    ob.buffer_size = 41;
    cw_outbuf_add_lines(&ob, CW_STREAM_STDOUT, NULL, l, 5, 1.0);
    cw_outbuf_add_lines(&ob, CW_STREAM_STDOUT, NULL, "bbbb\n", 5, 2.0);
    assert_int_equal(pack_pairs(&ob, &b, &c), 1);
    assert_int_equal(cw_outbuf_size(&ob), 21);
    assert_int_equal(pack_pairs(&ob, &b, &c), 1);
    assert_int_equal(cw_outbuf_size(&ob), 0);
    assert_int_equal(c.nmsgs, 2);
    assert_memory_equal(c.text[0].data, "aaaa\nbbbb\n", 10);
    const double t2[] = {1, 2};
    expect_times(&c, t2, 2);
    coll_free(&c);

    /* 42 + 20 in 62: one message; in 61: two */
    ob.buffer_size = 62;
    cw_outbuf_add_lines(&ob, CW_STREAM_STDOUT, NULL, "aaaa\naaaa\n", 10, 1.0);
    cw_outbuf_add_int(&ob, "rc", 0);
    assert_int_equal(pack_pairs(&ob, &b, &c), 2);
    assert_true(cw_outbuf_empty(&ob));
    ob.buffer_size = 61;
    cw_outbuf_add_lines(&ob, CW_STREAM_STDOUT, NULL, "aaaa\naaaa\n", 10, 1.0);
    cw_outbuf_add_int(&ob, "rc", 0);
    assert_int_equal(pack_pairs(&ob, &b, &c), 1);
    assert_int_equal(cw_outbuf_size(&ob), 20);
    assert_int_equal(pack_pairs(&ob, &b, &c), 1);
    coll_free(&c);

    /* rc (20) + 3 lines (63) in 62: rc and 2 lines, then 1 line */
    ob.buffer_size = 62;
    cw_outbuf_add_int(&ob, "rc", 0);
    cw_outbuf_add_lines(&ob, CW_STREAM_STDOUT, NULL, "aaaa\nbbbb\ncccc\n", 15, 1.0);
    assert_int_equal(cw_outbuf_size(&ob), 83);
    assert_int_equal(pack_pairs(&ob, &b, &c), 2);
    assert_int_equal(cw_outbuf_size(&ob), 21);
    assert_int_equal(c.text[0].len, 10);
    assert_int_equal(pack_pairs(&ob, &b, &c), 1);
    assert_int_equal(c.text[0].len, 15);
    assert_memory_equal(c.text[0].data, "aaaa\nbbbb\ncccc\n", 15);
    coll_free(&c);

    /* a line over budget goes alone; so does a non-text pair */
    ob.buffer_size = 10;
    cw_outbuf_add_lines(&ob, CW_STREAM_STDOUT, NULL, "0123456789abcdef\nx\n", 19, 1.0);
    cw_outbuf_add_int(&ob, "rc", 1);
    assert_int_equal(pack_pairs(&ob, &b, &c), 1);
    assert_int_equal(c.text[0].len, 17);
    assert_int_equal(pack_pairs(&ob, &b, &c), 1);
    assert_int_equal(pack_pairs(&ob, &b, &c), 1);
    assert_int_equal(c.nint, 1);
    assert_true(cw_outbuf_empty(&ob));
    assert_int_equal(c.nmsgs, 3);
    coll_free(&c);

    /* budget 0: still one unit per message */
    ob.buffer_size = 0;
    cw_outbuf_add_lines(&ob, CW_STREAM_STDOUT, NULL, "a\nb\n", 4, 1.0);
    drain(&ob, &c);
    assert_int_equal(c.nmsgs, 2);
    coll_free(&c);
    cw_outbuf_free(&ob);
    cw_buf_free(&b);
}

/* A large record is split at line boundaries into messages within budget. */
static void test_pack_split_big(void **state)
{
    (void)state;
    cw_outbuf_t ob;
    cw_outbuf_init(&ob, 200);
    cw_buf_t all = CW_BUF_INIT;
    uint64_t seed = 7;
    for (int k = 0; k < 500; k++) {
        char line[300];
        size_t n = rng_next(&seed) % 250;
        for (size_t i = 0; i < n; i++)
            line[i] = (char)('a' + (k + i) % 26);
        line[n] = '\n';
        assert_int_equal(cw_outbuf_add_lines(&ob, CW_STREAM_LOG, "big", line, n + 1, (double)k), 0);
        assert_int_equal(cw_buf_append(&all, line, n + 1), 0);
    }
    assert_int_equal(cw_outbuf_size(&ob), all.len + 500 * 16);
    collected_t c = {0};
    cw_buf_t b = CW_BUF_INIT;
    while (!cw_outbuf_empty(&ob)) {
        size_t lines0 = c.ntimes, len0 = c.text[CW_STREAM_LOG].len;
        assert_int_equal(pack_one(&ob, &b, &c), 1);
        size_t nl = c.ntimes - lines0, tl = c.text[CW_STREAM_LOG].len - len0 - 4; /* "big:" */
        assert_true(nl >= 1);
        assert_true(nl == 1 || tl + 16 * nl <= 200);
    }
    assert_int_equal(c.ntimes, 500);
    for (int k = 0; k < 500; k++)
        assert_true(c.times[k] == (double)k);
    /* reassemble: drop the "big:" prefixes */
    cw_buf_t got = CW_BUF_INIT;
    const char *p = (const char *)c.text[CW_STREAM_LOG].data;
    size_t n = c.text[CW_STREAM_LOG].len;
    for (size_t i = 0; i < n;) {
        assert_memory_equal(p + i, "big:", 4);
        i += 4;
        const char *nxt = NULL;
        for (size_t j = i; j + 4 < n; j++)
            if (p[j] == '\n' && memcmp(p + j + 1, "big:", 4) == 0) {
                nxt = p + j + 1;
                break;
            }
        size_t end = nxt ? (size_t)(nxt - p) : n;
        assert_int_equal(cw_buf_append(&got, p + i, end - i), 0);
        i = end;
    }
    assert_int_equal(got.len, all.len);
    assert_memory_equal(got.data, all.data, all.len);
    cw_buf_free(&got);
    cw_buf_free(&all);
    cw_buf_free(&b);
    coll_free(&c);
    cw_outbuf_free(&ob);
}

/* Interleaved adds and partial packs keep order (entry slots are reused and
 * compacted). */
static void test_outbuf_reuse(void **state)
{
    (void)state;
    cw_outbuf_t ob;
    cw_outbuf_init(&ob, 100);
    cw_buf_t b = CW_BUF_INIT, exp_out = CW_BUF_INIT, exp_err = CW_BUF_INIT;
    collected_t c = {0};
    for (int k = 0; k < 2000; k++) {
        char line[32];
        int n = snprintf(line, sizeof line, "line %d\n", k);
        assert_int_equal(cw_outbuf_add_lines(&ob, CW_STREAM_STDOUT, NULL, line, (size_t)n, k), 0);
        cw_buf_append(&exp_out, line, (size_t)n);
        assert_int_equal(cw_outbuf_add_int(&ob, "rc", k), 0);
        if (k % 3 == 0) {
            assert_int_equal(cw_outbuf_add_lines(&ob, CW_STREAM_STDERR, NULL, line, (size_t)n, k),
                             0);
            cw_buf_append(&exp_err, line, (size_t)n);
        }
        if (k % 2 == 0)
            assert_int_equal(pack_one(&ob, &b, &c), 1);
    }
    drain(&ob, &c);
    assert_int_equal(c.nint, 2000);
    assert_int_equal(c.text[CW_STREAM_STDOUT].len, exp_out.len);
    assert_memory_equal(c.text[CW_STREAM_STDOUT].data, exp_out.data, exp_out.len);
    assert_int_equal(c.text[CW_STREAM_STDERR].len, exp_err.len);
    assert_memory_equal(c.text[CW_STREAM_STDERR].data, exp_err.data, exp_err.len);
    coll_free(&c);
    cw_buf_free(&b);
    cw_buf_free(&exp_out);
    cw_buf_free(&exp_err);
    cw_outbuf_free(&ob);
}

/* Splitters of several streams share one outbuf: records of each stream stay
 * whole and in order, and a log splitter uses the "log" layout. */
static void test_streams_interleaved(void **state)
{
    (void)state;
    cw_lines_t out, err, log;
    cw_outbuf_t ob;
    cw_outbuf_init(&ob, 65536);
    assert_int_equal(cw_lines_init(&out, CW_STREAM_STDOUT, NULL, 4096), 0);
    assert_int_equal(cw_lines_init(&err, CW_STREAM_STDERR, NULL, 4096), 0);
    assert_int_equal(cw_lines_init(&log, CW_STREAM_LOG, "test_log", 4096), 0);
    assert_int_equal(cw_lines_feed(&out, &ob, (const uint8_t *)"o1\no2", 5, 1.0), 0);
    assert_int_equal(cw_lines_feed(&err, &ob, (const uint8_t *)"e1\n", 3, 1.0), 0);
    assert_int_equal(cw_lines_feed(&out, &ob, (const uint8_t *)"\no3\n", 4, 2.0), 0);
    assert_int_equal(cw_lines_feed(&log, &ob, (const uint8_t *)"hello", 5, 3.0), 0);
    assert_int_equal(cw_lines_feed(&log, &ob, (const uint8_t *)"hello1\n", 7, 4.0), 0);
    assert_int_equal(cw_outbuf_add_int(&ob, "rc", 0), 0);
    assert_int_equal(cw_lines_flush(&out, &ob, 5.0), 0);
    assert_int_equal(cw_lines_flush(&err, &ob, 5.0), 0);
    assert_int_equal(cw_lines_flush(&log, &ob, 5.0), 0);

    cw_buf_t b = CW_BUF_INIT;
    msgpack_packer pk;
    msgpack_packer_init(&pk, &b, buf_write);
    assert_int_equal(cw_pack_update(&pk, 0, (cw_str_t){"1", 1}, &ob), 1);
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    size_t off = 0;
    assert_int_equal(msgpack_unpack_next(&u, (const char *)b.data, b.len, &off),
                     MSGPACK_UNPACK_SUCCESS);
    const msgpack_object *args = &u.data.via.map.ptr[1].val;
    /* stdout o1, stderr e1, stdout o2 o3, log, rc */
    assert_int_equal(args->via.array.size, 5);
    const msgpack_object *p = args->via.array.ptr;
    assert_true(obj_is_str(&p[0].via.array.ptr[0], "stdout"));
    assert_true(obj_is_str(&p[0].via.array.ptr[1].via.array.ptr[0], "o1\n"));
    assert_true(obj_is_str(&p[1].via.array.ptr[0], "stderr"));
    assert_true(obj_is_str(&p[2].via.array.ptr[1].via.array.ptr[0], "o2\no3\n"));
    assert_true(p[2].via.array.ptr[1].via.array.ptr[2].via.array.ptr[0].via.f64 == 1.0);
    assert_true(p[2].via.array.ptr[1].via.array.ptr[2].via.array.ptr[1].via.f64 == 2.0);
    /* ["log", ["test_log", ["hellohello1\n", [11], [3.0]]]] as in the stock test */
    assert_true(obj_is_str(&p[3].via.array.ptr[0], "log"));
    const msgpack_object *lv = &p[3].via.array.ptr[1];
    assert_int_equal(lv->via.array.size, 2);
    assert_true(obj_is_str(&lv->via.array.ptr[0], "test_log"));
    const msgpack_object *rec = &lv->via.array.ptr[1];
    assert_true(obj_is_str(&rec->via.array.ptr[0], "hellohello1\n"));
    assert_int_equal(rec->via.array.ptr[1].via.array.ptr[0].via.u64, 11);
    assert_true(rec->via.array.ptr[2].via.array.ptr[0].via.f64 == 3.0);
    assert_true(obj_is_str(&p[4].via.array.ptr[0], "rc"));
    msgpack_unpacked_destroy(&u);
    assert_true(cw_outbuf_empty(&ob));
    assert_int_equal(ob.bytes_text, 3 + 3 + 6 + 12);

    cw_buf_free(&b);
    cw_lines_free(&out);
    cw_lines_free(&err);
    cw_lines_free(&log);
    cw_lines_free(NULL);
    cw_outbuf_free(&ob);
}

/* A sink that fails once `limit` bytes were written. */
typedef struct limited {
    cw_buf_t b;
    size_t limit;
} limited_t;

/* msgpack-c write callback that runs out of memory at l->limit. */
static int limited_write(void *data, const char *p, size_t n)
{
    limited_t *l = data;
    if (l->b.len + n > l->limit)
        return -1;
    return cw_buf_append(&l->b, p, n) < 0 ? -1 : 0;
}

/* A failed pack removes nothing: the next pack sends it all. */
static void test_pack_enomem(void **state)
{
    (void)state;
    cw_outbuf_t ob;
    cw_outbuf_init(&ob, 65536);
    char big[3000];
    for (size_t k = 0; k < sizeof big; k++)
        big[k] = k % 50 == 49 ? '\n' : 'x';
    assert_int_equal(cw_outbuf_add_lines(&ob, CW_STREAM_STDOUT, NULL, big, sizeof big, 1.0), 0);
    assert_int_equal(cw_outbuf_add_int(&ob, "rc", 3), 0);
    size_t size = cw_outbuf_size(&ob);
    for (size_t limit = 0; limit < 4000; limit += 37) {
        limited_t l = {CW_BUF_INIT, limit};
        msgpack_packer pk;
        msgpack_packer_init(&pk, &l, limited_write);
        int rc = cw_pack_update(&pk, 1, (cw_str_t){"x", 1}, &ob);
        cw_buf_free(&l.b);
        if (rc == 1)
            break; /* the limit was large enough */
        assert_int_equal(rc, -ENOMEM);
        assert_int_equal(cw_outbuf_size(&ob), size);
    }
    /* everything came out exactly once */
    if (!cw_outbuf_empty(&ob))
        fail_msg("limit never reached");
    cw_outbuf_add_lines(&ob, CW_STREAM_STDOUT, NULL, big, sizeof big, 1.0);
    collected_t c = {0};
    drain(&ob, &c);
    assert_int_equal(c.text[0].len, sizeof big);
    coll_free(&c);
    cw_outbuf_free(&ob);
}

/* Run every test. */
int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_newline_re),
        cmocka_unit_test(test_plain_lines),
        cmocka_unit_test(test_cr),
        cmocka_unit_test(test_crlf),
        cmocka_unit_test(test_cr_chunk_end),
        cmocka_unit_test(test_cr_flush),
        cmocka_unit_test(test_backspace),
        cmocka_unit_test(test_escapes),
        cmocka_unit_test(test_escapes_not_matching),
        cmocka_unit_test(test_long_lines),
        cmocka_unit_test(test_invalid_utf8),
        cmocka_unit_test(test_multibyte_split),
        cmocka_unit_test(test_flush),
        cmocka_unit_test(test_split_invariance),
        cmocka_unit_test(test_times),
        cmocka_unit_test(test_merge_rules),
        cmocka_unit_test(test_add_lines_checks),
        cmocka_unit_test(test_pack_bytes),
        cmocka_unit_test(test_pack_values),
        cmocka_unit_test(test_pack_budget),
        cmocka_unit_test(test_pack_split_big),
        cmocka_unit_test(test_outbuf_reuse),
        cmocka_unit_test(test_streams_interleaved),
        cmocka_unit_test(test_pack_enomem),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
