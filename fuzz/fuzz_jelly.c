/* libFuzzer target for jelly (src/proto/jelly.c).
 *
 * Input: 1 control byte, then data.
 * - Control bit 0 clear: data is a banana stream (VOCAB on); its first expression is decoded as
 *   jelly with an expansion cap picked by bits 1-3.  A value that decodes must keep the
 *   invariants (valid UTF-8 in unicode, pairs in dictionaries, a dictionary as failure state,
 *   no more values than the cap with references expanded), and written back with
 *   cw_jelly_value() it must decode to the same value; a refusal must say why.
 * - Control bit 0 set: data is a little program for the encoder (open containers with counts,
 *   write scalars, strings up to beyond banana's limit, remotes, failures).  Whatever the
 *   program, cw_jelly_enc_finish() either succeeds with exactly as many banana expressions as
 *   top-level values were announced, each a jelly value that decodes (unless the program wrote
 *   a plain banana list), or fails and leaves the buffer as it was.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cworker/banana.h"
#include "cworker/cw.h"
#include "cworker/jelly.h"
#include "cworker/utf8.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c))                                                                                  \
            abort();                                                                               \
    } while (0)

static void mix(uint64_t *h, const void *p, size_t n)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++) {
        *h ^= b[i];
        *h *= 0x100000001B3u;
    }
}

/* Walk a value (references expanded), check invariants, fold it into h.  Counts values and the
 * bytes an encoding would take at least. */
static void walk(const cw_jelly_t *v, uint64_t *h, size_t *count, size_t *bytes, unsigned depth)
{
    CHECK(depth < 1024);
    (*count)++;
    uint8_t t = (uint8_t)v->type;
    mix(h, &t, 1);
    switch (v->type) {
    case CW_JELLY_NONE:
        break;
    case CW_JELLY_BOOL:
        mix(h, &v->u.b, 1);
        break;
    case CW_JELLY_INT:
        mix(h, &v->u.i, sizeof(v->u.i));
        break;
    case CW_JELLY_BIGINT:
        CHECK(v->u.big.ndigits >= 10 && v->u.big.ndigits <= CW_BANANA_PREFIX_LIMIT);
        mix(h, &v->u.big.neg, 1);
        mix(h, v->u.big.digits, v->u.big.ndigits);
        break;
    case CW_JELLY_FLOAT:
        mix(h, &v->u.f, sizeof(v->u.f));
        break;
    case CW_JELLY_UNICODE:
    case CW_JELLY_BYTES:
        if (v->type == CW_JELLY_UNICODE)
            CHECK(cw_utf8_valid((const uint8_t *)v->u.s.ptr, v->u.s.len));
        CHECK(v->u.s.len <= CW_BANANA_SIZE_LIMIT);
        mix(h, &v->u.s.len, sizeof(v->u.s.len));
        mix(h, v->u.s.ptr, v->u.s.len);
        *bytes += v->u.s.len;
        break;
    case CW_JELLY_LIST:
    case CW_JELLY_TUPLE:
        mix(h, &v->u.seq.n, sizeof(v->u.seq.n));
        for (size_t i = 0; i < v->u.seq.n; i++)
            walk(&v->u.seq.items[i], h, count, bytes, depth + 1);
        break;
    case CW_JELLY_DICT:
        mix(h, &v->u.dict.n, sizeof(v->u.dict.n));
        for (size_t i = 0; i < v->u.dict.n; i++) {
            walk(&v->u.dict.pairs[i].key, h, count, bytes, depth + 1);
            walk(&v->u.dict.pairs[i].value, h, count, bytes, depth + 1);
        }
        break;
    case CW_JELLY_REMOTE:
        mix(h, &v->u.luid, sizeof(v->u.luid));
        break;
    case CW_JELLY_FAILURE:
        CHECK(v->u.failure.state != NULL && v->u.failure.state->type == CW_JELLY_DICT);
        walk(v->u.failure.state, h, count, bytes, depth + 1);
        break;
    default:
        abort();
    }
    *bytes += 2;
}

/* Mode 0: decode the first expression, check, write back, decode again. */
static void decode_mode(const uint8_t *data, size_t size, uint8_t ctl)
{
    cw_banana_dec_t d;
    cw_banana_dec_init(&d, NULL);
    cw_banana_dec_set_vocab(&d, true);
    size_t used;
    cw_banana_msg_t *m = NULL;
    int rc = cw_banana_dec_feed(&d, data, size, &used, &m);
    cw_banana_dec_free(&d);
    if (rc < 0 || m == NULL)
        return;
    cw_jelly_doc_t *doc = cw_jelly_doc_new(m);
    CHECK(doc != NULL);
    static const size_t caps[8] = {0, 1, 2, 10, 100, 1000, 5000, 100000};
    cw_jelly_dec_opts_t o = {.max_nodes = caps[(ctl >> 1) & 7]};
    cw_jelly_t v;
    cw_jelly_err_t err;
    rc = cw_jelly_decode(doc, m->root, &o, &v, &err);
    if (rc != 0) {
        CHECK(rc == CW_EBADMSG);
        CHECK(err.type != NULL && err.text[0] != '\0');
        cw_jelly_doc_free(doc);
        return;
    }
    uint64_t h = 0xCBF29CE484222325u;
    size_t count = 0, bytes = 0;
    walk(&v, &h, &count, &bytes, 0);
    CHECK(count <= (o.max_nodes ? o.max_nodes : CW_BANANA_DEFAULT_NODES));
    /* write it back, unless expanding shared values would make it huge */
    if (bytes < (1u << 20)) {
        cw_buf_t out = CW_BUF_INIT;
        cw_jelly_enc_t e;
        cw_jelly_enc_init(&e, &out, 1, true);
        cw_jelly_value(&e, &v);
        rc = cw_jelly_enc_finish(&e);
        /* only nesting beyond the encoder's depth may fail (or lists of many elements, which
         * a decodable value cannot have) */
        CHECK(rc == 0 || rc == CW_ETOOBIG);
        if (rc == 0) {
            cw_banana_limits_t lim = {.max_depth = CW_BANANA_MAX_DEPTH,
                                      .max_message = (size_t)1 << 30,
                                      .max_nodes = (size_t)1 << 30};
            cw_banana_dec_init(&d, &lim);
            cw_banana_dec_set_vocab(&d, true);
            cw_banana_msg_t *m2;
            CHECK(cw_banana_dec_feed(&d, out.data, out.len, &used, &m2) == 0);
            CHECK(m2 != NULL && used == out.len);
            cw_banana_dec_free(&d);
            cw_jelly_doc_t *doc2 = cw_jelly_doc_new(m2);
            cw_jelly_t v2;
            cw_jelly_dec_opts_t o2 = {.max_nodes = (size_t)1 << 30};
            CHECK(cw_jelly_decode(doc2, m2->root, &o2, &v2, &err) == 0);
            uint64_t h2 = 0xCBF29CE484222325u;
            size_t count2 = 0, bytes2 = 0;
            walk(&v2, &h2, &count2, &bytes2, 0);
            CHECK(h2 == h && count2 == count);
            cw_jelly_doc_free(doc2);
        }
        cw_buf_free(&out);
    }
    cw_jelly_doc_free(doc);
}

/* Mode 1: an encoder program. */
static void encode_mode(const uint8_t *p, size_t n, uint8_t ctl)
{
    static char big[CW_BANANA_SIZE_LIMIT + 2];
    cw_buf_t out = CW_BUF_INIT;
    cw_buf_append(&out, "pre", 3);
    cw_jelly_enc_t e;
    size_t top = 1 + ((ctl >> 1) & 3);
    cw_jelly_enc_init(&e, &out, top, (ctl >> 3) & 1);
    size_t i = 0;
    bool raw = false; /* a plain banana list was written: not a jelly value by itself */
    size_t bigs = 0;  /* strings near the size limit written */
    while (i < n) {
        uint8_t op = p[i++];
        uint8_t arg = i < n ? p[i++] : 0;
        switch (op % 16) {
        case 0:
            cw_jelly_none(&e);
            break;
        case 1:
            cw_jelly_bool(&e, arg & 1);
            break;
        case 2:
            cw_jelly_int64(&e, (int64_t)((uint64_t)arg * 0x0102030405060708u));
            break;
        case 3:
            cw_jelly_float(&e, (double)arg / 3.0);
            break;
        case 4: {
            size_t len = arg < n - i ? arg : n - i;
            cw_jelly_bytes(&e, p + i, len);
            i += len;
            break;
        }
        case 5: {
            size_t len = arg < n - i ? arg : n - i;
            cw_jelly_unicode(&e, p + i, len);
            i += len;
            break;
        }
        case 6: {
            size_t len = arg < n - i ? arg : n - i;
            cw_jelly_unicode_lossy(&e, p + i, len);
            i += len;
            break;
        }
        case 7:
            cw_jelly_list(&e, arg % 8);
            break;
        case 8:
            cw_jelly_tuple(&e, arg % 8);
            break;
        case 9:
            cw_jelly_dict(&e, arg % 8);
            break;
        case 10:
            cw_jelly_remote(&e, arg);
            break;
        case 11:
            cw_jelly_enc_raw_list(&e, arg % 8);
            raw = true;
            break;
        case 12:
            /* around banana's size limit; twice per program at most, or the fuzzer spends its
             * time copying tens of MiB */
            if (bigs++ < 2)
                cw_jelly_bytes(&e, big, CW_BANANA_SIZE_LIMIT - 1 + (arg % 3));
            else
                cw_jelly_bytes(&e, big, arg);
            break;
        case 13: {
            cw_jelly_failure_desc_t f = {.type = (arg & 1) ? "builtins.ValueError" : NULL,
                                         .value = (arg & 2) ? "bad \xff value" : NULL,
                                         .count = arg};
            cw_jelly_failure(&e, &f);
            break;
        }
        case 14:
            cw_jelly_list(&e, CW_BANANA_SIZE_LIMIT - 1 + (arg % 3));
            break;
        default:
            cw_jelly_uint64(&e, (uint64_t)arg << 56);
            break;
        }
    }
    int rc = cw_jelly_enc_finish(&e);
    if (rc != 0) {
        CHECK(rc == CW_EBADARG || rc == CW_ETOOBIG);
        CHECK(out.len == 3 && memcmp(out.data, "pre", 3) == 0);
        cw_buf_free(&out);
        return;
    }
    /* exactly `top` expressions follow "pre", each a decodable jelly value */
    cw_banana_limits_t lim = {.max_depth = CW_BANANA_MAX_DEPTH,
                              .max_message = (size_t)1 << 30,
                              .max_nodes = (size_t)1 << 30};
    cw_banana_dec_t d;
    cw_banana_dec_init(&d, &lim);
    cw_banana_dec_set_vocab(&d, true);
    size_t pos = 3, got = 0;
    while (pos < out.len) {
        size_t used;
        cw_banana_msg_t *m;
        CHECK(cw_banana_dec_feed(&d, out.data + pos, out.len - pos, &used, &m) == 0);
        CHECK(m != NULL);
        pos += used;
        got++;
        cw_jelly_doc_t *doc = cw_jelly_doc_new(m);
        cw_jelly_t v;
        cw_jelly_err_t err;
        cw_jelly_dec_opts_t o = {.max_nodes = (size_t)1 << 30};
        CHECK(raw || cw_jelly_decode(doc, m->root, &o, &v, &err) == 0);
        cw_jelly_doc_free(doc);
    }
    CHECK(got == top);
    cw_banana_dec_free(&d);
    cw_buf_free(&out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint8_t ctl = data[0];
    if (ctl & 1)
        encode_mode(data + 1, size - 1, ctl);
    else
        decode_mode(data + 1, size - 1, ctl);
    return 0;
}
