/* libFuzzer target for the banana codec (src/proto/banana.c).
 *
 * Input: 5 control bytes, then the stream.  Bytes 0-3 seed the split of the stream into
 * cw_banana_dec_feed() calls; byte 4 picks VOCAB on/off (bit 0) and small limits (bits 1-3:
 * depth, message size, element count).  The stream is decoded whole and in pieces: both runs
 * must give the same messages, consume the same bytes and end the same way.  Every decoded
 * message must respect the limits, and encode back (cw_banana_node) into bytes that decode to the
 * same tree.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cworker/banana.h"
#include "cworker/cw.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c))                                                                                  \
            abort();                                                                               \
    } while (0)

typedef struct run {
    uint64_t digest; /* FNV-1a over every message's canonical form */
    size_t nmsg, consumed;
    int rc;
} run_t;

static void mix(uint64_t *h, const void *p, size_t n)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++) {
        *h ^= b[i];
        *h *= 0x100000001B3u;
    }
}

/* Fold a tree into h (VOCAB-ness ignored: it is a matter of encoding); counts nodes and depth. */
static void digest_tree(uint64_t *h, const cw_banana_node_t *n, size_t depth, size_t *nodes,
                        size_t *maxdepth)
{
    (*nodes)++;
    mix(h, &n->type, 1);
    switch (n->type) {
    case CW_BANANA_LIST:
        if (depth + 1 > *maxdepth)
            *maxdepth = depth + 1;
        CHECK(n->u.list.n <= CW_BANANA_SIZE_LIMIT);
        mix(h, &n->u.list.n, sizeof(n->u.list.n));
        for (size_t i = 0; i < n->u.list.n; i++)
            digest_tree(h, &n->u.list.items[i], depth + 1, nodes, maxdepth);
        break;
    case CW_BANANA_INT: {
        uint8_t big = (n->flags & CW_BANANA_F_BIG) != 0;
        mix(h, &big, 1);
        if (big) {
            /* canonical: without high zero digits */
            size_t nd = n->u.big.ndigits;
            CHECK(nd <= CW_BANANA_PREFIX_LIMIT);
            while (nd > 0 && n->u.big.digits[nd - 1] == 0)
                nd--;
            CHECK(nd >= 10); /* anything shorter fits int64 */
            uint8_t neg = (n->flags & CW_BANANA_F_NEG) != 0;
            mix(h, &neg, 1);
            mix(h, n->u.big.digits, nd);
        } else {
            mix(h, &n->u.i, sizeof(n->u.i));
        }
        break;
    }
    case CW_BANANA_STRING:
        CHECK(n->u.s.len <= CW_BANANA_SIZE_LIMIT);
        if (n->flags & CW_BANANA_F_VOCAB)
            CHECK(cw_banana_vocab_index(n->u.s.ptr, n->u.s.len) != 0);
        mix(h, &n->u.s.len, sizeof(n->u.s.len));
        mix(h, n->u.s.ptr, n->u.s.len);
        break;
    case CW_BANANA_FLOAT:
        mix(h, &n->u.f, sizeof(n->u.f));
        break;
    default:
        abort();
    }
}

static uint64_t next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* Encode a decoded message and decode it again: the same tree. */
static void roundtrip(const cw_banana_msg_t *m, bool vocab, const cw_banana_limits_t *lim,
                      uint64_t want)
{
    cw_buf_t out = CW_BUF_INIT;
    CHECK(cw_banana_node(&out, m->root, vocab) == 0);
    /* the re-encoding has the same elements and depth; its length may differ (an empty prefix
     * becomes one digit, a FLOAT loses its prefix, a word becomes VOCAB), so only that limit
     * is lifted */
    cw_banana_limits_t again_lim = *lim;
    again_lim.max_message = 0;
    cw_banana_dec_t d;
    cw_banana_dec_init(&d, &again_lim);
    cw_banana_dec_set_vocab(&d, vocab);
    size_t used;
    cw_banana_msg_t *again;
    CHECK(cw_banana_dec_feed(&d, out.data, out.len, &used, &again) == 0);
    CHECK(again != NULL && used == out.len);
    uint64_t h = 0xCBF29CE484222325u;
    size_t nodes = 0, depth = 0;
    digest_tree(&h, again->root, 0, &nodes, &depth);
    CHECK(h == want);
    CHECK(nodes == again->nodes);
    cw_banana_msg_free(again);
    cw_banana_dec_free(&d);
    cw_buf_free(&out);
}

static void decode(run_t *r, const uint8_t *in, size_t len, uint64_t seed, bool vocab,
                   const cw_banana_limits_t *lim, bool check_roundtrip)
{
    cw_banana_dec_t d;
    cw_banana_dec_init(&d, lim);
    cw_banana_dec_set_vocab(&d, vocab);
    r->digest = 0xCBF29CE484222325u;
    uint64_t s = seed | 1;
    size_t pos = 0;
    while (pos < len && r->rc == 0) {
        size_t n = len - pos;
        if (seed) {
            uint64_t x = next(&s);
            size_t cap = (x & 3) == 0 ? 1 : (x & 3) == 1 ? 3 : (x & 3) == 2 ? 17 : 4096;
            size_t want = (size_t)((x >> 8) % cap) + 1;
            if (want < n)
                n = want;
        }
        /* an exact-size copy so ASan catches reads past the piece */
        uint8_t *piece = malloc(n);
        CHECK(piece != NULL);
        memcpy(piece, in + pos, n);
        size_t off = 0;
        while (off < n) {
            size_t used;
            cw_banana_msg_t *m;
            int rc = cw_banana_dec_feed(&d, piece + off, n - off, &used, &m);
            CHECK(used <= n - off);
            off += used;
            r->consumed += used;
            if (rc < 0) {
                CHECK(rc == CW_EPROTO || rc == CW_ETOOBIG);
                CHECK(m == NULL);
                CHECK(cw_banana_dec_error(&d) != NULL);
                r->rc = rc;
                break;
            }
            if (m == NULL) {
                CHECK(off == n);
                continue;
            }
            uint64_t h = 0xCBF29CE484222325u;
            size_t nodes = 0, depth = 0;
            digest_tree(&h, m->root, 0, &nodes, &depth);
            CHECK(nodes == m->nodes);
            CHECK(nodes <= d.lim.max_nodes);
            CHECK(depth <= d.lim.max_depth);
            CHECK(m->wire_len <= d.lim.max_message);
            mix(&r->digest, &h, sizeof(h));
            mix(&r->digest, &m->wire_len, sizeof(m->wire_len));
            r->nmsg++;
            if (check_roundtrip)
                roundtrip(m, vocab, lim, h);
            cw_banana_msg_free(m);
        }
        free(piece);
        pos += n;
    }
    /* errors are sticky */
    if (r->rc) {
        size_t used;
        cw_banana_msg_t *m;
        CHECK(cw_banana_dec_feed(&d, (const uint8_t *)"\x00\x81", 2, &used, &m) == r->rc);
        CHECK(!cw_banana_dec_partial(&d));
    }
    cw_banana_dec_free(&d);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 5)
        return 0;
    uint64_t seed = (uint64_t)data[0] | (uint64_t)data[1] << 8 | (uint64_t)data[2] << 16 |
                    (uint64_t)data[3] << 24 | (uint64_t)1 << 32;
    bool vocab = data[4] & 1;
    cw_banana_limits_t lim = {0};
    if (data[4] & 2)
        lim.max_depth = 1 + (data[4] >> 5);
    if (data[4] & 4)
        lim.max_message = 16 + ((size_t)data[4] << 2);
    if (data[4] & 8)
        lim.max_nodes = 1 + (data[4] >> 4);
    data += 5;
    size -= 5;
    run_t whole = {0}, split = {0};
    decode(&whole, data, size, 0, vocab, &lim, true);
    decode(&split, data, size, seed, vocab, &lim, false);
    CHECK(whole.rc == split.rc);
    CHECK(whole.nmsg == split.nmsg);
    CHECK(whole.consumed == split.consumed);
    CHECK(whole.digest == split.digest);
    return 0;
}
