/* Unit tests for jelly (src/proto/jelly.c): decoding banana trees into values, the forms that
 * are refused, references, and the encoder byte for byte against stock traffic (reference §3,
 * §7). */
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <cmocka.h>

#include "cworker/banana.h"
#include "cworker/cw.h"
#include "cworker/jelly.h"

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
    return b;
}

static void assert_bytes(const cw_buf_t *b, const char *want_hex)
{
    cw_buf_t w = hex(want_hex);
    if (b->len != w.len || (w.len && memcmp(b->data, w.data, w.len) != 0)) {
        fprintf(stderr, "got:  ");
        for (size_t i = 0; i < b->len; i++)
            fprintf(stderr, "%02x ", b->data[i]);
        fprintf(stderr, "\nwant: %s\n", want_hex);
        fail();
    }
    cw_buf_free(&w);
}

/* Banana-decode one expression from bytes (VOCAB on) into a new doc. */
static cw_jelly_doc_t *parse(const uint8_t *p, size_t len)
{
    cw_banana_dec_t d;
    cw_banana_dec_init(&d, NULL);
    cw_banana_dec_set_vocab(&d, true);
    size_t used;
    cw_banana_msg_t *m = NULL;
    assert_int_equal(cw_banana_dec_feed(&d, p, len, &used, &m), 0);
    assert_non_null(m);
    assert_int_equal(used, len);
    cw_banana_dec_free(&d);
    cw_jelly_doc_t *doc = cw_jelly_doc_new(m);
    assert_non_null(doc);
    return doc;
}

typedef struct decoded {
    cw_jelly_doc_t *doc;
    cw_jelly_t v;
    int rc;
    cw_jelly_err_t err;
} decoded_t;

static decoded_t jdecode_opts(const char *h, const cw_jelly_dec_opts_t *o)
{
    cw_buf_t in = hex(h);
    decoded_t r;
    r.doc = parse(in.data, in.len);
    cw_buf_free(&in);
    r.rc = cw_jelly_decode(r.doc, cw_jelly_doc_msg(r.doc)->root, o, &r.v, &r.err);
    return r;
}

static decoded_t jdecode(const char *h)
{
    return jdecode_opts(h, NULL);
}

/* Expect a refusal of the given exception type whose text contains `part`. */
static void expect_refused(const char *h, const char *type, const char *part)
{
    decoded_t r = jdecode(h);
    assert_int_equal(r.rc, CW_EBADMSG);
    assert_string_equal(r.err.type, type);
    if (part && strstr(r.err.text, part) == NULL) {
        fprintf(stderr, "text: %s\n", r.err.text);
        fail();
    }
    cw_jelly_doc_free(r.doc);
}

/* ---- decoding the forms of reference §3.1 ---- */

static void test_decode_scalars(void **state)
{
    (void)state;
    decoded_t r = jdecode("01 80 01 87"); /* ("None") */
    assert_int_equal(r.rc, 0);
    assert_int_equal(r.v.type, CW_JELLY_NONE);
    assert_false(cw_jelly_truth(&r.v));
    cw_jelly_doc_free(r.doc);

    r = jdecode("02 80 07 82 62 6f 6f 6c 65 61 6e 04 82 74 72 75 65");
    assert_int_equal(r.rc, 0);
    assert_int_equal(r.v.type, CW_JELLY_BOOL);
    assert_true(r.v.u.b);
    assert_true(cw_jelly_truth(&r.v));
    cw_jelly_doc_free(r.doc);

    r = jdecode("02 80 07 82 62 6f 6f 6c 65 61 6e 05 82 66 61 6c 73 65");
    assert_int_equal(r.rc, 0);
    assert_false(r.v.u.b);
    cw_jelly_doc_free(r.doc);

    r = jdecode("06 81");
    assert_int_equal(r.rc, 0);
    int64_t i;
    assert_true(cw_jelly_int(&r.v, &i));
    assert_int_equal(i, 6);
    assert_true(cw_jelly_truth(&r.v)); /* ints stand in for bools (§3.1) */
    cw_jelly_doc_free(r.doc);

    r = jdecode("84 3f a7 69 28 00 00 00 00");
    assert_int_equal(r.rc, 0);
    assert_int_equal(r.v.type, CW_JELLY_FLOAT);
    double d;
    assert_true(cw_jelly_number(&r.v, &d));
    assert_true(d > 0.0457 && d < 0.0458); /* 0.04572415351867676 */
    cw_jelly_doc_free(r.doc);

    r = jdecode("02 82 77 31");
    assert_int_equal(r.rc, 0);
    assert_int_equal(r.v.type, CW_JELLY_BYTES);
    assert_true(cw_str_eq(r.v.u.s, "w1"));
    cw_jelly_doc_free(r.doc);

    r = jdecode("02 80 07 82 75 6e 69 63 6f 64 65 02 82 c3 a9"); /* "é" */
    assert_int_equal(r.rc, 0);
    assert_int_equal(r.v.type, CW_JELLY_UNICODE);
    assert_int_equal(r.v.u.s.len, 2);
    assert_memory_equal(r.v.u.s.ptr, "\xc3\xa9", 2);
    cw_jelly_doc_free(r.doc);

    r = jdecode("02 80 10 87 01 81"); /* ("remote" 1) */
    assert_int_equal(r.rc, 0);
    assert_int_equal(r.v.type, CW_JELLY_REMOTE);
    assert_int_equal(r.v.u.luid, 1);
    cw_jelly_doc_free(r.doc);

    /* an integer beyond int64: flagged, with its digits */
    r = jdecode("00 00 00 00 00 00 00 00 00 01 85");
    assert_int_equal(r.rc, 0);
    assert_int_equal(r.v.type, CW_JELLY_BIGINT);
    assert_false(r.v.u.big.neg);
    assert_int_equal(r.v.u.big.ndigits, 10);
    assert_false(cw_jelly_int(&r.v, &i));
    cw_jelly_doc_free(r.doc);
}

static void test_decode_containers(void **state)
{
    (void)state;
    decoded_t r = jdecode("01 80 08 87"); /* empty list */
    assert_int_equal(r.rc, 0);
    assert_int_equal(r.v.type, CW_JELLY_LIST);
    assert_int_equal(r.v.u.seq.n, 0);
    cw_jelly_doc_free(r.doc);
    r = jdecode("01 80 0b 87");
    assert_int_equal(r.v.type, CW_JELLY_TUPLE);
    cw_jelly_doc_free(r.doc);
    r = jdecode("01 80 05 87");
    assert_int_equal(r.v.type, CW_JELLY_DICT);
    assert_int_equal(r.v.u.dict.n, 0);
    cw_jelly_doc_free(r.doc);

    /* the setBuilderList argument tuple (reference §7.1), two builders */
    r = jdecode("02 80 0b 87 03 80 08 87"
                " 03 80 0b 87 02 80 07 82 75 6e 69 63 6f 64 65 01 82 61"
                "             02 80 07 82 75 6e 69 63 6f 64 65 01 82 62"
                " 03 80 0b 87 02 80 07 82 75 6e 69 63 6f 64 65 01 82 63"
                "             02 80 07 82 75 6e 69 63 6f 64 65 01 82 64");
    assert_int_equal(r.rc, 0);
    size_t n, m;
    const cw_jelly_t *args = cw_jelly_items(&r.v, &n);
    assert_int_equal(n, 1);
    const cw_jelly_t *list = cw_jelly_items(&args[0], &n);
    assert_int_equal(args[0].type, CW_JELLY_LIST);
    assert_int_equal(n, 2);
    const cw_jelly_t *t = cw_jelly_items(&list[1], &m);
    assert_int_equal(m, 2);
    cw_str_t s;
    assert_true(cw_jelly_text(&t[0], &s) && cw_str_eq(s, "c"));
    assert_true(cw_jelly_text(&t[1], &s) && cw_str_eq(s, "d"));
    cw_jelly_doc_free(r.doc);

    /* a dictionary with a duplicate key: the last one wins, as in Python; keys of any text */
    r = jdecode("04 80 05 87"
                " 02 80 02 80 07 82 75 6e 69 63 6f 64 65 01 82 6b 01 81"
                " 02 80 01 82 6b 02 81"
                " 02 80 02 80 07 82 75 6e 69 63 6f 64 65 01 82 78 01 80 01 87");
    assert_int_equal(r.rc, 0);
    assert_int_equal(r.v.u.dict.n, 3);
    int64_t i;
    assert_true(cw_jelly_int(cw_jelly_dict_get(&r.v, "k"), &i));
    assert_int_equal(i, 2);
    assert_int_equal(cw_jelly_dict_get(&r.v, "x")->type, CW_JELLY_NONE);
    assert_null(cw_jelly_dict_get(&r.v, "y"));
    cw_jelly_doc_free(r.doc);
}

static void test_decode_vocab_data(void **state)
{
    (void)state;
    /* reference §11.2 item 3: ("unicode" <VOCAB 26>) is the text "message"; a VOCAB as bytes */
    decoded_t r = jdecode("02 80 07 82 75 6e 69 63 6f 64 65 1a 87");
    assert_int_equal(r.rc, 0);
    assert_int_equal(r.v.type, CW_JELLY_UNICODE);
    assert_true(cw_str_eq(r.v.u.s, "message"));
    cw_jelly_doc_free(r.doc);
    r = jdecode("0d 87");
    assert_int_equal(r.v.type, CW_JELLY_BYTES);
    assert_true(cw_str_eq(r.v.u.s, "copy"));
    cw_jelly_doc_free(r.doc);
    /* the print kwargs: ("dictionary" (("unicode" <VOCAB message>) ("unicode" "attached"))) */
    r = jdecode("02 80 05 87 02 80 02 80 07 82 75 6e 69 63 6f 64 65 1a 87"
                " 02 80 07 82 75 6e 69 63 6f 64 65 08 82 61 74 74 61 63 68 65 64");
    assert_int_equal(r.rc, 0);
    cw_str_t s;
    assert_true(cw_jelly_text(cw_jelly_dict_get(&r.v, "message"), &s));
    assert_true(cw_str_eq(s, "attached"));
    cw_jelly_doc_free(r.doc);
}

static void test_decode_failure(void **state)
{
    (void)state;
    /* the head of the master's UnauthorizedLogin failure (reference §3.2), completed */
    decoded_t r = jdecode(
        "02 80 21 82 74 77 69 73 74 65 64 2e 73 70 72 65 61 64 2e 70 62 2e 43 6f 70 79 61 62 6c 65 "
        "46 61 69 6c 75 72 65"
        " 04 80 05 87"
        " 02 80 02 80 07 82 75 6e 69 63 6f 64 65 05 82 63 6f 75 6e 74 0b 81"
        " 02 80 02 80 07 82 75 6e 69 63 6f 64 65 04 82 74 79 70 65"
        "   24 82 74 77 69 73 74 65 64 2e 63 72 65 64 2e 65 72 72 6f 72 2e 55 6e 61 75 74 68 6f 72 "
        "69 "
        "7a 65 64 4c 6f 67 69 6e"
        " 02 80 02 80 07 82 75 6e 69 63 6f 64 65 05 82 76 61 6c 75 65"
        "   02 80 07 82 75 6e 69 63 6f 64 65 00 82");
    assert_int_equal(r.rc, 0);
    assert_int_equal(r.v.type, CW_JELLY_FAILURE);
    assert_true(cw_str_eq(r.v.u.failure.type, "twisted.cred.error.UnauthorizedLogin"));
    assert_int_equal(r.v.u.failure.value.len, 0);
    int64_t count;
    assert_true(cw_jelly_int(cw_jelly_dict_get(r.v.u.failure.state, "count"), &count));
    assert_int_equal(count, 11);
    cw_jelly_doc_free(r.doc);
    /* state that is not a dictionary */
    expect_refused("02 80 21 82 74 77 69 73 74 65 64 2e 73 70 72 65 61 64 2e 70 62 2e 43 6f 70 79 "
                   "61 62 6c 65 46 61 69 6c 75 72 65 01 81",
                   "builtins.ValueError", "not a dictionary");
}

static void test_decode_refused_forms(void **state)
{
    (void)state;
    /* reference §3.3 and §4.6: the forms a worker refuses */
    static const char *const insecure[] = {
        "02 80 02 87 01 82 78",                            /* ("class" "x") */
        "02 80 09 87 02 82 6f 73",                         /* ("module" "os") */
        "02 80 06 87 01 82 78",                            /* ("function" "x") */
        "03 80 06 82 6d 65 74 68 6f 64 01 82 78 01 81",    /* ("method" ...) */
        "03 80 07 87 01 82 78 01 80 05 87",                /* ("instance" ...) */
        "02 80 0a 87 01 82 78",                            /* ("persistent" ...) */
        "02 80 0c 87 01 82 78",                            /* ("unpersistable" ...) */
        "02 80 03 82 73 65 74 01 80 08 87",                /* ("set" ("list")) */
        "02 80 09 82 66 72 6f 7a 65 6e 73 65 74 00 81",    /* ("frozenset" ...) */
        "02 80 08 82 64 61 74 65 74 69 6d 65 01 82 31",    /* ("datetime" ...) */
        "02 80 04 82 64 61 74 65 01 82 31",                /* ("date" ...) */
        "02 80 04 82 74 69 6d 65 01 82 31",                /* ("time" ...) */
        "02 80 09 82 74 69 6d 65 64 65 6c 74 61 01 82 31", /* ("timedelta" ...) */
        "03 80 07 82 64 65 63 69 6d 61 6c 01 81 00 81",    /* ("decimal" 1 0) */
        "02 80 11 87 01 81",                               /* ("local" 1) */
        "02 80 0f 87 01 81",                               /* ("cached" 1) */
        "02 80 12 87 01 81",                               /* ("lcache" 1) */
        "02 80 0d 87 01 81",                               /* ("copy" 1) */
        "02 80 09 82 6f 73 2e 73 79 73 74 65 6d 01 82 78", /* ("os.system" "x") */
    };
    for (size_t i = 0; i < sizeof(insecure) / sizeof(insecure[0]); i++)
        expect_refused(insecure[i], "twisted.spread.jelly.InsecureJelly", "not allowed");
    /* a form named by a number or a list */
    expect_refused("02 80 05 81 00 81", "twisted.spread.jelly.InsecureJelly", NULL);
    /* the text of a binary class name is escaped */
    expect_refused("02 80 02 82 ff 0a 00 81", "twisted.spread.jelly.InsecureJelly", "\\xff\\x0a");
    /* malformed forms Twisted itself rejects */
    expect_refused("02 80 07 82 75 6e 69 63 6f 64 65 02 82 c3 28", "builtins.UnicodeDecodeError",
                   NULL);
    expect_refused("02 80 07 82 75 6e 69 63 6f 64 65 03 82 ed a0 80", /* a surrogate */
                   "builtins.UnicodeDecodeError", NULL);
    expect_refused("02 80 07 82 75 6e 69 63 6f 64 65 01 81", "builtins.TypeError", NULL);
    expect_refused("02 80 07 82 62 6f 6f 6c 65 61 6e 03 82 79 65 73", "builtins.AssertionError",
                   NULL); /* ("boolean" "yes") */
    expect_refused("02 80 05 87 03 80 01 81 02 81 03 81", "builtins.ValueError", "not a pair");
    expect_refused("02 80 05 87 01 81", "builtins.ValueError", "not a pair");
    expect_refused("00 80", "builtins.IndexError", NULL);
    expect_refused("02 80 10 87 02 82 31 32", "builtins.ValueError", NULL); /* remote "12" */
    expect_refused("02 80 10 87 00 00 00 00 00 00 00 00 00 01 85", "builtins.ValueError", NULL);
    expect_refused("02 80 01 87 01 81", "builtins.ValueError", NULL); /* ("None" 1) */
    /* refused deep inside a container, the error still comes out */
    expect_refused("03 80 0b 87 01 81 02 80 08 87 02 80 09 87 02 82 6f 73",
                   "twisted.spread.jelly.InsecureJelly", "module");
}

static void test_decode_references(void **state)
{
    (void)state;
    /* ("tuple" ("reference" 1 ("list" 1 2)) ("dereference" 1)): one list, seen twice */
    decoded_t r = jdecode("03 80 0b 87 03 80 04 87 01 81 03 80 08 87 01 81 02 81"
                          " 02 80 03 87 01 81");
    assert_int_equal(r.rc, 0);
    size_t n;
    const cw_jelly_t *it = cw_jelly_items(&r.v, &n);
    assert_int_equal(n, 2);
    assert_int_equal(it[0].type, CW_JELLY_LIST);
    assert_int_equal(it[1].type, CW_JELLY_LIST);
    assert_false(it[0].shared);
    assert_true(it[1].shared);
    assert_ptr_equal(it[0].u.seq.items, it[1].u.seq.items);
    assert_int_equal(it[1].u.seq.n, 2);
    cw_jelly_doc_free(r.doc);

    /* a dictionary shared under two keys, as a shared env would be */
    r = jdecode("03 80 05 87"
                " 02 80 01 82 61 03 80 04 87 07 81 01 80 05 87"
                " 02 80 01 82 62 02 80 03 87 07 81");
    assert_int_equal(r.rc, 0);
    assert_int_equal(cw_jelly_dict_get(&r.v, "b")->type, CW_JELLY_DICT);
    cw_jelly_doc_free(r.doc);

    /* unknown number, a cycle, a number used twice, a non-integer number */
    expect_refused("02 80 03 87 05 81", "builtins.ValueError", "unknown");
    expect_refused("03 80 04 87 01 81 02 80 08 87 02 80 03 87 01 81", "builtins.ValueError",
                   "circular");
    expect_refused("03 80 0b 87 03 80 04 87 01 81 01 80 08 87 03 80 04 87 01 81 01 80 08 87",
                   "builtins.AssertionError", "Multiple");
    expect_refused("03 80 04 87 01 82 31 01 80 08 87", "builtins.ValueError", NULL);
    /* numbering is per decode: the same number may be defined again in a second decode */
    r = jdecode("03 80 04 87 01 81 01 80 08 87");
    assert_int_equal(r.rc, 0);
    cw_jelly_t again;
    assert_int_equal(cw_jelly_decode(r.doc, cw_jelly_doc_msg(r.doc)->root, NULL, &again, &r.err),
                     0);
    cw_jelly_doc_free(r.doc);
}

static void test_decode_expansion_bomb(void **state)
{
    (void)state;
    /* ref 1 = (list 0 0); ref k = (list deref(k-1) deref(k-1)): 2^40 values if expanded, a few
     * hundred bytes on the wire.  Refused by the expansion cap, quickly. */
    cw_buf_t in = CW_BUF_INIT;
    int levels = 40;
    cw_banana_list(&in, (size_t)levels + 1);
    cw_banana_string(&in, "tuple", 5, true);
    for (int k = 1; k <= levels; k++) {
        cw_banana_list(&in, 3);
        cw_banana_string(&in, "reference", 9, true);
        cw_banana_int(&in, k);
        cw_banana_list(&in, 3);
        cw_banana_string(&in, "list", 4, true);
        for (int j = 0; j < 2; j++) {
            if (k == 1) {
                cw_banana_int(&in, 0);
            } else {
                cw_banana_list(&in, 2);
                cw_banana_string(&in, "dereference", 11, true);
                cw_banana_int(&in, k - 1);
            }
        }
    }
    cw_jelly_doc_t *doc = parse(in.data, in.len);
    cw_jelly_t v;
    cw_jelly_err_t err;
    clock_t t0 = clock();
    assert_int_equal(cw_jelly_decode(doc, cw_jelly_doc_msg(doc)->root, NULL, &v, &err), CW_EBADMSG);
    assert_non_null(strstr(err.text, "references expanded"));
    assert_true((double)(clock() - t0) / CLOCKS_PER_SEC < 1.0);
    /* with 10 levels (2^11 values) it is fine */
    cw_jelly_dec_opts_t o = {.max_nodes = 1 << 20};
    cw_jelly_doc_free(doc);
    cw_buf_free(&in);
    cw_buf_t small = CW_BUF_INIT;
    cw_banana_list(&small, 11);
    cw_banana_string(&small, "tuple", 5, true);
    for (int k = 1; k <= 10; k++) {
        cw_banana_list(&small, 3);
        cw_banana_string(&small, "reference", 9, true);
        cw_banana_int(&small, k);
        cw_banana_list(&small, 3);
        cw_banana_string(&small, "list", 4, true);
        for (int j = 0; j < 2; j++) {
            if (k == 1) {
                cw_banana_int(&small, 0);
            } else {
                cw_banana_list(&small, 2);
                cw_banana_string(&small, "dereference", 11, true);
                cw_banana_int(&small, k - 1);
            }
        }
    }
    doc = parse(small.data, small.len);
    assert_int_equal(cw_jelly_decode(doc, cw_jelly_doc_msg(doc)->root, &o, &v, &err), 0);
    /* and a tighter cap refuses it */
    o.max_nodes = 1000;
    assert_int_equal(cw_jelly_decode(doc, cw_jelly_doc_msg(doc)->root, &o, &v, &err), CW_EBADMSG);
    cw_jelly_doc_free(doc);
    cw_buf_free(&small);
}

/* on_remote hook for decoding: count and record. */
static int count_remote(void *ud, int64_t luid)
{
    int64_t *seen = ud;
    seen[++seen[0]] = luid;
    return luid == 99 ? -EPERM : 0;
}

static void test_decode_remote_hook(void **state)
{
    (void)state;
    int64_t seen[8] = {0};
    cw_jelly_dec_opts_t o = {.on_remote = count_remote, .ud = seen};
    /* ("tuple" ("reference" 1 ("list" ("remote" 3))) ("dereference" 1) ("remote" 4)):
     * two remote forms on the wire, three in the expanded value */
    decoded_t r = jdecode_opts("04 80 0b 87 03 80 04 87 01 81 02 80 08 87 02 80 10 87 03 81"
                               " 02 80 03 87 01 81 02 80 10 87 04 81",
                               &o);
    assert_int_equal(r.rc, 0);
    assert_int_equal(seen[0], 2);
    assert_int_equal(seen[1], 3);
    assert_int_equal(seen[2], 4);
    cw_jelly_doc_free(r.doc);
    /* the hook can refuse */
    memset(seen, 0, sizeof(seen));
    r = jdecode_opts("02 80 10 87 63 81", &o);
    assert_int_equal(r.rc, -EPERM);
    cw_jelly_doc_free(r.doc);
}

/* ---- encoding ---- */

static void test_encode_forms(void **state)
{
    (void)state;
    cw_buf_t b = CW_BUF_INIT;
    cw_jelly_enc_t e;
    cw_jelly_enc_init(&e, &b, 9, true);
    cw_jelly_none(&e);
    cw_jelly_bool(&e, true);
    cw_jelly_int64(&e, 6);
    cw_jelly_bytes(&e, "w1", 2);
    cw_jelly_unicode(&e, "\xc3\xa9", 2);
    cw_jelly_list(&e, 0);
    cw_jelly_tuple(&e, 0);
    cw_jelly_dict(&e, 0);
    cw_jelly_remote(&e, 1);
    assert_int_equal(cw_jelly_enc_finish(&e), 0);
    assert_bytes(&b, "01 80 01 87"
                     " 02 80 07 82 62 6f 6f 6c 65 61 6e 04 82 74 72 75 65"
                     " 06 81 02 82 77 31"
                     " 02 80 07 82 75 6e 69 63 6f 64 65 02 82 c3 a9"
                     " 01 80 08 87 01 80 0b 87 01 80 05 87 02 80 10 87 01 81");
    /* without the pb dialect nothing is a VOCAB */
    cw_buf_reset(&b);
    cw_jelly_enc_init(&e, &b, 1, false);
    cw_jelly_none(&e);
    assert_int_equal(cw_jelly_enc_finish(&e), 0);
    assert_bytes(&b, "01 80 04 82 4e 6f 6e 65");
    cw_buf_free(&b);
}

/* bytes with a hole, the block spliced in at *at, are the bytes cw_jelly_bytes writes. */
static void test_encode_bytes_hole(void **state)
{
    (void)state;
    static const size_t sizes[] = {0, 1, 127, 128, 5000, 655360};
    uint8_t *block = malloc(655360);
    assert_non_null(block);
    for (size_t i = 0; i < 655360; i++)
        block[i] = (uint8_t)(i * 131 + 7);
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        size_t n = sizes[k], at = 0;
        cw_buf_t whole = CW_BUF_INIT, holed = CW_BUF_INIT;
        cw_jelly_enc_t e;
        cw_jelly_enc_init(&e, &whole, 1, true);
        cw_jelly_tuple(&e, 2);
        cw_jelly_bytes(&e, block, n);
        cw_jelly_dict(&e, 0);
        assert_int_equal(cw_jelly_enc_finish(&e), 0);
        cw_jelly_enc_init(&e, &holed, 1, true);
        cw_jelly_tuple(&e, 2);
        assert_int_equal(cw_jelly_bytes_hole(&e, n, &at), 0);
        cw_jelly_dict(&e, 0);
        assert_int_equal(cw_jelly_enc_finish(&e), 0);
        assert_int_equal(holed.len + n, whole.len);
        assert_memory_equal(whole.data, holed.data, at);
        if (n)
            assert_memory_equal(whole.data + at, block, n);
        assert_memory_equal(whole.data + at + n, holed.data + at, holed.len - at);
        cw_buf_free(&whole);
        cw_buf_free(&holed);
    }
    /* over banana's string limit: refused like cw_jelly_bytes */
    cw_buf_t b = CW_BUF_INIT;
    cw_jelly_enc_t e;
    size_t at;
    cw_jelly_enc_init(&e, &b, 1, true);
    assert_int_equal(cw_jelly_bytes_hole(&e, CW_BANANA_SIZE_LIMIT + 1, &at), CW_ETOOBIG);
    assert_int_equal(cw_jelly_enc_finish(&e), CW_ETOOBIG);
    cw_buf_free(&b);
    free(block);
}

static void test_encode_update_args(void **state)
{
    (void)state;
    /* the argument tuple of the observed update (reference §7.3):
     * ("tuple" ("list" ("list" ("dictionary" (("unicode" "stdout") ("unicode" "hello world\n")))
     * 0))) */
    cw_buf_t b = CW_BUF_INIT;
    cw_jelly_enc_t e;
    cw_jelly_enc_init(&e, &b, 1, true);
    cw_jelly_tuple(&e, 1);
    cw_jelly_list(&e, 1);
    cw_jelly_list(&e, 2);
    cw_jelly_dict(&e, 1);
    cw_jelly_str(&e, "stdout");
    cw_jelly_str(&e, "hello world\n");
    cw_jelly_int64(&e, 0);
    assert_int_equal(cw_jelly_enc_finish(&e), 0);
    assert_bytes(&b, "02 80 0b 87 02 80 08 87 03 80 08 87 02 80 05 87 02 80"
                     " 02 80 07 82 75 6e 69 63 6f 64 65 06 82 73 74 64 6f 75 74"
                     " 02 80 07 82 75 6e 69 63 6f 64 65 0c 82 68 65 6c 6c 6f 20 77 6f 72 6c 64 0a"
                     " 00 81");
    /* the utime argument: a tuple of one 2-tuple of floats (reference §7.4) */
    cw_buf_reset(&b);
    cw_jelly_enc_init(&e, &b, 1, true);
    cw_jelly_tuple(&e, 1);
    cw_jelly_tuple(&e, 2);
    uint64_t bits = 0x41dac52884bb58bbu; /* 1796514322.9272907, as observed */
    double atime;
    memcpy(&atime, &bits, sizeof(atime));
    cw_jelly_float(&e, atime);
    cw_jelly_float(&e, 1000000000.0);
    assert_int_equal(cw_jelly_enc_finish(&e), 0);
    assert_bytes(&b,
                 "02 80 0b 87 03 80 0b 87 84 41 da c5 28 84 bb 58 bb 84 41 cd cd 65 00 00 00 00");
    cw_buf_free(&b);
}

static void test_encode_counts_and_rollback(void **state)
{
    (void)state;
    cw_buf_t b = CW_BUF_INIT;
    cw_buf_append(&b, "keep", 4);
    cw_jelly_enc_t e;
    /* too few values */
    cw_jelly_enc_init(&e, &b, 1, true);
    cw_jelly_list(&e, 3);
    cw_jelly_int64(&e, 1);
    assert_int_equal(cw_jelly_enc_finish(&e), CW_EBADARG);
    assert_int_equal(b.len, 4);
    /* too many */
    cw_jelly_enc_init(&e, &b, 1, true);
    cw_jelly_int64(&e, 1);
    assert_int_equal(cw_jelly_int64(&e, 2), CW_EBADARG);
    assert_int_equal(cw_jelly_enc_finish(&e), CW_EBADARG);
    assert_int_equal(b.len, 4);
    /* a dictionary needs key and value per pair */
    cw_jelly_enc_init(&e, &b, 1, true);
    cw_jelly_dict(&e, 2);
    cw_jelly_str(&e, "a");
    cw_jelly_int64(&e, 1);
    cw_jelly_str(&e, "b");
    assert_int_equal(cw_jelly_enc_finish(&e), CW_EBADARG);
    assert_int_equal(b.len, 4);
    /* a string banana cannot send: refused, rolled back, later writes do nothing */
    char *big = calloc(1, CW_BANANA_SIZE_LIMIT + 1);
    cw_jelly_enc_init(&e, &b, 1, true);
    cw_jelly_tuple(&e, 2);
    cw_jelly_int64(&e, 1);
    assert_int_equal(cw_jelly_bytes(&e, big, CW_BANANA_SIZE_LIMIT + 1), CW_ETOOBIG);
    assert_int_equal(cw_jelly_none(&e), CW_ETOOBIG);
    assert_int_equal(cw_jelly_enc_finish(&e), CW_ETOOBIG);
    assert_int_equal(b.len, 4);
    /* the unicode form too, and a container over the element limit */
    cw_jelly_enc_init(&e, &b, 1, true);
    assert_int_equal(cw_jelly_unicode(&e, big, CW_BANANA_SIZE_LIMIT + 1), CW_ETOOBIG);
    assert_int_equal(cw_jelly_enc_finish(&e), CW_ETOOBIG);
    cw_jelly_enc_init(&e, &b, 1, true);
    assert_int_equal(cw_jelly_list(&e, CW_BANANA_SIZE_LIMIT), CW_ETOOBIG);
    assert_int_equal(cw_jelly_enc_finish(&e), CW_ETOOBIG);
    /* exactly at the limit it works */
    cw_jelly_enc_init(&e, &b, 1, true);
    assert_int_equal(cw_jelly_bytes(&e, big, CW_BANANA_SIZE_LIMIT), 0);
    assert_int_equal(cw_jelly_enc_finish(&e), 0);
    assert_int_equal(b.len, 4 + 4 + CW_BANANA_SIZE_LIMIT);
    b.len = 4;
    free(big);
    /* invalid UTF-8 is refused as unicode, repaired by the lossy writer */
    cw_jelly_enc_init(&e, &b, 1, true);
    assert_int_equal(cw_jelly_unicode(&e, "a\xff", 2), CW_EBADARG);
    assert_int_equal(cw_jelly_enc_finish(&e), CW_EBADARG);
    cw_jelly_enc_init(&e, &b, 1, true);
    assert_int_equal(cw_jelly_unicode_lossy(&e, "a\xff", 2), 0);
    assert_int_equal(cw_jelly_enc_finish(&e), 0);
    b.len = 4;
    assert_int_equal(b.len, 4);
    /* nesting beyond the encoder's depth */
    cw_jelly_enc_init(&e, &b, 1, true);
    int rc = 0;
    for (int i = 0; i < CW_JELLY_ENC_DEPTH + 1 && rc == 0; i++)
        rc = cw_jelly_list(&e, 1);
    assert_int_equal(rc, CW_ETOOBIG);
    assert_int_equal(cw_jelly_enc_finish(&e), CW_ETOOBIG);
    assert_int_equal(b.len, 4);
    cw_buf_free(&b);
}

static int refuse_99(void *ud, int64_t luid)
{
    (*(int *)ud)++;
    return luid == 99 ? CW_EBADARG : 0;
}

static void test_encode_remote_hook(void **state)
{
    (void)state;
    int calls = 0;
    cw_buf_t b = CW_BUF_INIT;
    cw_jelly_enc_t e;
    cw_jelly_enc_init(&e, &b, 2, true);
    e.on_remote = refuse_99;
    e.ud = &calls;
    assert_int_equal(cw_jelly_remote(&e, 5), 0);
    assert_int_equal(cw_jelly_remote(&e, 99), CW_EBADARG);
    assert_int_equal(cw_jelly_enc_finish(&e), CW_EBADARG);
    assert_int_equal(calls, 2);
    assert_int_equal(b.len, 0);
    cw_buf_free(&b);
}

static void test_encode_failure(void **state)
{
    (void)state;
    cw_buf_t b = CW_BUF_INIT;
    cw_jelly_enc_t e;
    cw_jelly_enc_init(&e, &b, 1, true);
    const char *const parents[] = {"twisted.spread.flavors.NoSuchMethod", "builtins.AttributeError",
                                   "builtins.Exception", "builtins.BaseException",
                                   "builtins.object"};
    cw_jelly_failure_desc_t f = {.type = "twisted.spread.flavors.NoSuchMethod",
                                 .value = "No such method: remote_x\xff",
                                 .parents = parents,
                                 .nparents = 5,
                                 .count = 3};
    assert_int_equal(cw_jelly_failure(&e, &f), 0);
    assert_int_equal(cw_jelly_enc_finish(&e), 0);
    /* it starts like the stock one: the class name as a bare STRING, then a dictionary */
    cw_buf_t head = hex("02 80 21 82 74 77 69 73 74 65 64 2e 73 70 72 65 61 64 2e 70 62 2e 43 6f "
                        "70 79 61 62 6c 65 46 61 69 6c 75 72 65 0b 80 05 87");
    assert_memory_equal(b.data, head.data, head.len);
    cw_buf_free(&head);

    cw_jelly_doc_t *doc = parse(b.data, b.len);
    cw_jelly_t v;
    cw_jelly_err_t err;
    assert_int_equal(cw_jelly_decode(doc, cw_jelly_doc_msg(doc)->root, NULL, &v, &err), 0);
    assert_int_equal(v.type, CW_JELLY_FAILURE);
    assert_true(cw_str_eq(v.u.failure.type, "twisted.spread.flavors.NoSuchMethod"));
    assert_int_equal(cw_jelly_dict_get(v.u.failure.state, "type")->type, CW_JELLY_BYTES);
    assert_true(cw_str_eq(v.u.failure.value, "No such method: remote_x\xef\xbf\xbd"));
    const cw_jelly_t *ps = cw_jelly_dict_get(v.u.failure.state, "parents");
    size_t n;
    const cw_jelly_t *p = cw_jelly_items(ps, &n);
    assert_int_equal(n, 5);
    assert_int_equal(p[1].type, CW_JELLY_UNICODE);
    assert_true(cw_str_eq(p[1].u.s, "builtins.AttributeError"));
    cw_str_t tb;
    assert_true(cw_jelly_text(cw_jelly_dict_get(v.u.failure.state, "traceback"), &tb));
    assert_true(cw_str_eq(tb, "Traceback unavailable\n"));
    assert_int_equal(cw_jelly_dict_get(v.u.failure.state, "tb")->type, CW_JELLY_NONE);
    assert_int_equal(cw_jelly_dict_get(v.u.failure.state, "frames")->type, CW_JELLY_LIST);
    assert_int_equal(cw_jelly_dict_get(v.u.failure.state, "captureVars")->type, CW_JELLY_BOOL);
    int64_t c;
    assert_true(cw_jelly_int(cw_jelly_dict_get(v.u.failure.state, "count"), &c));
    assert_int_equal(c, 3);
    /* defaults: parents from the type */
    cw_jelly_doc_free(doc);
    cw_buf_reset(&b);
    cw_jelly_failure_desc_t g = {.type = "builtins.RuntimeError"};
    cw_jelly_enc_init(&e, &b, 1, true);
    cw_jelly_failure(&e, &g);
    assert_int_equal(cw_jelly_enc_finish(&e), 0);
    doc = parse(b.data, b.len);
    assert_int_equal(cw_jelly_decode(doc, cw_jelly_doc_msg(doc)->root, NULL, &v, &err), 0);
    p = cw_jelly_items(cw_jelly_dict_get(v.u.failure.state, "parents"), &n);
    assert_int_equal(n, 4);
    assert_true(cw_str_eq(p[0].u.s, "builtins.RuntimeError"));
    assert_true(cw_str_eq(p[3].u.s, "builtins.object"));
    cw_jelly_doc_free(doc);
    cw_buf_free(&b);
}

static void test_value_roundtrip(void **state)
{
    (void)state;
    /* decode, write back with cw_jelly_value, get the same bytes */
    const char *streams[] = {
        "05 80 0b 87 02 80 10 87 03 81 02 80 07 82 75 6e 69 63 6f 64 65 01 82 30"
        " 02 80 05 87 02 80 02 80 07 82 75 6e 69 63 6f 64 65 07 82 77 6f 72 6b 64 69 72"
        "   02 80 07 82 62 6f 6f 6c 65 61 6e 05 82 66 61 6c 73 65"
        " 04 80 08 87 84 80 00 00 00 00 00 00 00 01 87 00 00 00 00 00 00 00 00 00 01 86",
        "03 80 0b 87 00 00 00 00 00 00 00 00 00 01 85 0d 87",
    };
    for (size_t i = 0; i < 2; i++) {
        cw_buf_t in = hex(streams[i]);
        cw_jelly_doc_t *doc = parse(in.data, in.len);
        cw_jelly_t v;
        cw_jelly_err_t err;
        assert_int_equal(cw_jelly_decode(doc, cw_jelly_doc_msg(doc)->root, NULL, &v, &err), 0);
        cw_buf_t out = CW_BUF_INIT;
        cw_jelly_enc_t e;
        cw_jelly_enc_init(&e, &out, 1, true);
        assert_int_equal(cw_jelly_value(&e, &v), 0);
        assert_int_equal(cw_jelly_enc_finish(&e), 0);
        assert_int_equal(out.len, in.len);
        assert_memory_equal(out.data, in.data, in.len);
        cw_buf_free(&out);
        cw_jelly_doc_free(doc);
        cw_buf_free(&in);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_decode_scalars),
        cmocka_unit_test(test_decode_containers),
        cmocka_unit_test(test_decode_vocab_data),
        cmocka_unit_test(test_decode_failure),
        cmocka_unit_test(test_decode_refused_forms),
        cmocka_unit_test(test_decode_references),
        cmocka_unit_test(test_decode_expansion_bomb),
        cmocka_unit_test(test_decode_remote_hook),
        cmocka_unit_test(test_encode_forms),
        cmocka_unit_test(test_encode_update_args),
        cmocka_unit_test(test_encode_counts_and_rollback),
        cmocka_unit_test(test_encode_remote_hook),
        cmocka_unit_test(test_encode_failure),
        cmocka_unit_test(test_encode_bytes_hole),
        cmocka_unit_test(test_value_roundtrip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
