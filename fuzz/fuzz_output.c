/* libFuzzer target: cw_lines_t + cw_outbuf_t against a whole-input reference.
 *
 * Input: byte 0 picks max_line_length, byte 1 the update budget, bytes 2-3
 * seed the chunk sizes and when non-text pairs and packs are interleaved; the
 * rest is the child's output.  The packed updates are decoded and checked:
 * well-formed update maps, every text non-empty, valid UTF-8 and ending in
 * '\n', offsets at the '\n's, one time per line, times non-decreasing, lines
 * within max_line_length, and the concatenated text equal to the reference:
 * decode everything (U+FFFD for maximal invalid subparts), apply the stock
 * regex to the whole text (plus the '\n' of the stock flush), then cut.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cworker/msg.h"
#include "cworker/output.h"
#include "cworker/utf8.h"

#define CHECK(x)                                                                                   \
    do {                                                                                           \
        if (!(x))                                                                                  \
            __builtin_trap();                                                                      \
    } while (0)

/* msgpack-c write callback into a cw_buf_t. */
static int buf_write(void *data, const char *p, size_t n)
{
    return cw_buf_append(data, p, n) < 0 ? -1 : 0;
}

/* Deterministic PRNG for chunking. */
static uint32_t rng(uint32_t *s)
{
    *s = *s * 1103515245u + 12345u;
    return *s >> 8;
}

/* ---- reference model, whole input at once ---- */

/* Decode p[0..n) into code points, one U+FFFD per maximal invalid subpart. */
static size_t ref_decode(const uint8_t *p, size_t n, uint32_t *cp)
{
    size_t i = 0, k = 0;
    while (i < n) {
        uint8_t c = p[i];
        size_t len = 0;
        uint32_t v = 0;
        uint8_t lo = 0x80, hi = 0xBF;
        if (c < 0x80) {
            cp[k++] = c;
            i++;
            continue;
        }
        if (c >= 0xC2 && c <= 0xDF) {
            len = 2;
            v = c & 0x1F;
        } else if (c >= 0xE0 && c <= 0xEF) {
            len = 3;
            v = c & 0x0F;
            lo = c == 0xE0 ? 0xA0 : 0x80;
            hi = c == 0xED ? 0x9F : 0xBF;
        } else if (c >= 0xF0 && c <= 0xF4) {
            len = 4;
            v = c & 0x07;
            lo = c == 0xF0 ? 0x90 : 0x80;
            hi = c == 0xF4 ? 0x8F : 0xBF;
        }
        size_t j = 1;
        while (len && j < len && i + j < n && p[i + j] >= lo && p[i + j] <= hi) {
            v = (v << 6) | (p[i + j] & 0x3F);
            lo = 0x80;
            hi = 0xBF;
            j++;
        }
        if (len && j == len) {
            cp[k++] = v;
            i += len;
        } else {
            cp[k++] = 0xFFFD;
            i += j; /* j >= 1: the maximal subpart */
        }
    }
    return k;
}

/* Length of a newline_re match at cp[i] (0 if none), with our 32-byte bound
 * on the escape prefix. */
static size_t ref_match(const uint32_t *cp, size_t n, size_t i)
{
    if (cp[i] == '\r')
        return i + 1 < n && cp[i + 1] == '\n' ? 2 : i + 1 < n ? 1 : 0;
    if (cp[i] == '\b') {
        size_t j = i;
        while (j < n && cp[j] == '\b')
            j++;
        return j - i;
    }
    if (cp[i] != 0x1b || i + 1 >= n || cp[i + 1] != '[')
        return 0;
    if (i + 2 < n && cp[i + 2] == 'u')
        return 3;
    size_t j = i + 2, d1 = 0, d2 = 0;
    while (j < n && cp[j] >= '0' && cp[j] <= '9')
        j++, d1++;
    if (d1 && j < n && cp[j] == ';') {
        j++;
        while (j < n && cp[j] >= '0' && cp[j] <= '9')
            j++, d2++;
        if (d2 && j < n && (cp[j] == 'H' || cp[j] == 'f') && 3 + d1 + d2 <= 32)
            return j + 1 - i;
    }
    if (i + 3 < n && cp[i + 2] == '2' && cp[i + 3] == 'J')
        return 4;
    return 0;
}

/* Apply the rules; each match becomes '\n'.  Returns the output length. */
static size_t ref_regex(const uint32_t *cp, size_t n, uint32_t *out)
{
    size_t k = 0;
    for (size_t i = 0; i < n;) {
        size_t m = ref_match(cp, n, i);
        if (m) {
            out[k++] = '\n';
            i += m;
        } else {
            out[k++] = cp[i++];
        }
    }
    return k;
}

/* Encode one code point as UTF-8 into b. */
static void put_cp(cw_buf_t *b, uint32_t v)
{
    uint8_t s[4];
    size_t n;
    if (v < 0x80) {
        s[0] = (uint8_t)v;
        n = 1;
    } else if (v < 0x800) {
        s[0] = (uint8_t)(0xC0 | (v >> 6));
        s[1] = (uint8_t)(0x80 | (v & 0x3F));
        n = 2;
    } else if (v < 0x10000) {
        s[0] = (uint8_t)(0xE0 | (v >> 12));
        s[1] = (uint8_t)(0x80 | ((v >> 6) & 0x3F));
        s[2] = (uint8_t)(0x80 | (v & 0x3F));
        n = 3;
    } else {
        s[0] = (uint8_t)(0xF0 | (v >> 18));
        s[1] = (uint8_t)(0x80 | ((v >> 12) & 0x3F));
        s[2] = (uint8_t)(0x80 | ((v >> 6) & 0x3F));
        s[3] = (uint8_t)(0x80 | (v & 0x3F));
        n = 4;
    }
    CHECK(cw_buf_append(b, s, n) == 0);
}

/* The text the master should get for the whole input. */
static void reference(const uint8_t *p, size_t n, size_t maxl, cw_buf_t *exp)
{
    uint32_t *cp = malloc((n + 1) * sizeof *cp), *t = malloc((n + 1) * sizeof *t);
    CHECK(cp && t);
    size_t ncp = ref_decode(p, n, cp);
    size_t nt = ref_regex(cp, ncp, t);
    if (nt > 0 && t[nt - 1] != '\n') {
        cp[ncp++] = '\n'; /* the stock flush appends "\n" and re-applies */
        nt = ref_regex(cp, ncp, t);
    }
    size_t chars = 0;
    for (size_t i = 0; i < nt; i++) {
        if (t[i] == '\n') {
            chars = 0;
        } else if (chars == maxl - 1) {
            put_cp(exp, '\n');
            chars = 1;
        } else {
            chars++;
        }
        put_cp(exp, t[i]);
    }
    free(cp);
    free(t);
}

/* ---- the system under test ---- */

typedef struct state {
    cw_buf_t text;
    double last_time;
    size_t maxl;
    int64_t seq;
} state_t;

/* True if o is the str lit. */
static bool is_str(const msgpack_object *o, const char *lit)
{
    size_t n = strlen(lit);
    return o->type == MSGPACK_OBJECT_STR && o->via.str.size == n &&
           memcmp(o->via.str.ptr, lit, n) == 0;
}

/* Check a line record and collect its text. */
static void check_record(const msgpack_object *r, state_t *st)
{
    CHECK(r->type == MSGPACK_OBJECT_ARRAY && r->via.array.size == 3);
    const msgpack_object *t = &r->via.array.ptr[0], *o = &r->via.array.ptr[1],
                         *tm = &r->via.array.ptr[2];
    CHECK(t->type == MSGPACK_OBJECT_STR && o->type == MSGPACK_OBJECT_ARRAY &&
          tm->type == MSGPACK_OBJECT_ARRAY);
    const uint8_t *s = (const uint8_t *)t->via.str.ptr;
    size_t n = t->via.str.size, k = 0, chars = 0;
    CHECK(n > 0 && s[n - 1] == '\n');
    CHECK(cw_utf8_valid(s, n));
    CHECK(o->via.array.size == tm->via.array.size);
    for (size_t i = 0; i < n; i++) {
        if (s[i] != '\n') {
            chars += (s[i] & 0xC0) != 0x80;
            continue;
        }
        CHECK(chars <= st->maxl - 1);
        chars = 0;
        CHECK(k < o->via.array.size);
        CHECK(o->via.array.ptr[k].type == MSGPACK_OBJECT_POSITIVE_INTEGER);
        CHECK(o->via.array.ptr[k].via.u64 == i);
        CHECK(tm->via.array.ptr[k].type == MSGPACK_OBJECT_FLOAT64);
        double tv = tm->via.array.ptr[k].via.f64;
        CHECK(tv >= st->last_time);
        st->last_time = tv;
        k++;
    }
    CHECK(k == o->via.array.size);
    CHECK(cw_buf_append(&st->text, s, n) == 0);
}

/* Pack one update, decode it, check it. Returns cw_pack_update's rc. */
static int pack_check(cw_outbuf_t *ob, state_t *st)
{
    cw_buf_t b = CW_BUF_INIT;
    msgpack_packer pk;
    msgpack_packer_init(&pk, &b, buf_write);
    size_t before = cw_outbuf_size(ob);
    int rc = cw_pack_update(&pk, st->seq, (cw_str_t){"c", 1}, ob);
    CHECK(rc == 0 || rc == 1);
    if (rc == 0) {
        CHECK(b.len == 0 && cw_outbuf_empty(ob));
        return 0;
    }
    CHECK(cw_outbuf_size(ob) < before);
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    size_t off = 0;
    CHECK(msgpack_unpack_next(&u, (const char *)b.data, b.len, &off) == MSGPACK_UNPACK_SUCCESS);
    CHECK(off == b.len);
    const msgpack_object *m = &u.data;
    CHECK(m->type == MSGPACK_OBJECT_MAP && m->via.map.size == 4);
    const msgpack_object_kv *kv = m->via.map.ptr;
    CHECK(is_str(&kv[0].key, "op") && is_str(&kv[0].val, "update"));
    CHECK(is_str(&kv[1].key, "args") && kv[1].val.type == MSGPACK_OBJECT_ARRAY);
    CHECK(is_str(&kv[2].key, "command_id") && is_str(&kv[2].val, "c"));
    CHECK(is_str(&kv[3].key, "seq_number") && kv[3].val.via.u64 == (uint64_t)st->seq);
    const msgpack_object *args = &kv[1].val;
    CHECK(args->via.array.size > 0);
    for (uint32_t i = 0; i < args->via.array.size; i++) {
        const msgpack_object *p = &args->via.array.ptr[i];
        CHECK(p->type == MSGPACK_OBJECT_ARRAY && p->via.array.size == 2);
        if (is_str(&p->via.array.ptr[0], "stdout"))
            check_record(&p->via.array.ptr[1], st);
        else
            CHECK(is_str(&p->via.array.ptr[0], "rc"));
    }
    msgpack_unpacked_destroy(&u);
    cw_buf_free(&b);
    st->seq++;
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* One run: split, batch, pack, decode, compare with the reference. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 4)
        return 0;
    size_t maxl = (data[0] & 0x80) ? 4096 : 2 + (data[0] & 0x0F);
    size_t budget = (size_t)data[1] * 4;
    uint32_t seed = (uint32_t)data[2] << 8 | data[3];
    const uint8_t *p = data + 4;
    size_t n = size - 4;

    state_t st = {.maxl = maxl};
    cw_lines_t ls;
    cw_outbuf_t ob;
    CHECK(cw_lines_init(&ls, CW_STREAM_STDOUT, NULL, maxl) == 0);
    cw_outbuf_init(&ob, budget);
    size_t pos = 0;
    double now = 1.0;
    size_t maxchunk = 1 + (seed & 0x3F);
    while (pos < n) {
        size_t k = 1 + rng(&seed) % maxchunk;
        if (k > n - pos)
            k = n - pos;
        CHECK(cw_lines_feed(&ls, &ob, p + pos, k, now) == 0);
        pos += k;
        now += 1.0;
        uint32_t r = rng(&seed);
        if (r % 11 == 0)
            CHECK(cw_outbuf_add_int(&ob, "rc", 0) == 0);
        while (cw_outbuf_size(&ob) >= budget && (r & 1) && !cw_outbuf_empty(&ob))
            pack_check(&ob, &st);
        if (r % 7 == 0)
            pack_check(&ob, &st);
    }
    CHECK(cw_lines_flush(&ls, &ob, now) == 0);
    CHECK(!cw_lines_pending(&ls));
    while (pack_check(&ob, &st) == 1)
        ;
    CHECK(cw_outbuf_size(&ob) == 0);

    cw_buf_t exp = CW_BUF_INIT;
    reference(p, n, maxl, &exp);
    CHECK(exp.len == st.text.len);
    CHECK(exp.len == 0 || memcmp(exp.data, st.text.data, exp.len) == 0);

    cw_buf_free(&exp);
    cw_buf_free(&st.text);
    cw_lines_free(&ls);
    cw_outbuf_free(&ob);
    return 0;
}
