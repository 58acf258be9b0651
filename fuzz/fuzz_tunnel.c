/* libFuzzer target for the tunnel codec and session (src/proto/tunnel.c).
 *
 * Input: 4 control bytes, then a stream of link bytes.  Control bytes 0-1 seed the split of the
 * stream into pieces, byte 2 picks the replay buffer size and how much the session's own source
 * writes, byte 3 picks the role (bit 0) and whether the client starts with a resumable session
 * (bit 1).  The stream goes:
 *   - to the frame decoder, whole and in pieces: the same events (DATA frames compared by offset
 *     and bytes, however they were cut), the same error at the same byte;
 *   - to a session side (a server attached by a HELLO, or a client waiting for WELCOME), whole
 *     and in pieces: the same bytes delivered, the same FIN, the same end; invariants hold
 *     (positions, buffer bounds) and everything the session outputs decodes cleanly.
 *
 * Build (from the repository root):
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -D_GNU_SOURCE -Iinclude -I build \
 *       fuzz/fuzz_tunnel.c src/proto/tunnel.c src/proto/cw.c src/proto/buf.c -o /tmp/fuzz_tunnel
 *   /tmp/fuzz_tunnel fuzz/corpus/tunnel
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cworker/cw.h"
#include "cworker/tunnel.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Check a condition on our own side; abort() is what libFuzzer reports as a crash. */
#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c))                                                                                  \
            abort();                                                                               \
    } while (0)

/* FNV-1a fold. */
static void mix(uint64_t *h, const void *p, size_t n)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++) {
        *h ^= b[i];
        *h *= 0x100000001B3u;
    }
}

/* xorshift64: the split sequence. */
static uint64_t next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* Length of the next piece (seed 0: everything). */
static size_t piece(uint64_t seed, uint64_t *s, size_t left)
{
    if (seed == 0)
        return left;
    uint64_t x = next(s);
    size_t cap = (x & 3) == 0 ? 1 : (x & 3) == 1 ? 5 : (x & 3) == 2 ? 17 : 4096;
    size_t n = (size_t)((x >> 8) % cap) + 1;
    return n < left ? n : left;
}

/* Fold one decoder event into the digest, split-independently. */
static void fold_event(uint64_t *h, const cw_tun_frame_t *f, uint64_t *expect_off)
{
    if (f->type == CW_TUN_DATA) {
        CHECK(f->len > 0 && f->len <= CW_TUN_MAX_DATA);
        if (*expect_off == UINT64_MAX) {
            mix(h, &f->type, 1);
            mix(h, &f->value, sizeof f->value);
        } else {
            CHECK(f->value == *expect_off); /* pieces of one frame are contiguous */
        }
        CHECK(f->frame_end >= f->value + f->len && (f->frame_end == f->value + f->len) == f->last);
        mix(h, f->data, f->len);
        *expect_off = f->last ? UINT64_MAX : f->value + f->len;
        if (f->last)
            mix(h, "|", 1);
        return;
    }
    CHECK(*expect_off == UINT64_MAX);
    mix(h, &f->type, 1);
    mix(h, &f->reason, 1);
    mix(h, &f->value, sizeof f->value);
    if (f->type == CW_TUN_REFUSE || f->type == CW_TUN_ABORT) {
        CHECK(f->len <= CW_TUN_MAX_TEXT);
        mix(h, f->data, f->len);
    }
    if (f->type == CW_TUN_HELLO)
        mix(h, &f->hello, sizeof f->hello);
    if (f->type == CW_TUN_WELCOME)
        mix(h, &f->welcome, sizeof f->welcome);
}

/* Decode the stream in pieces; returns the digest, sets *rc and *consumed. */
static uint64_t decode(const uint8_t *in, size_t len, uint64_t seed, int *rc, size_t *consumed)
{
    cw_tun_dec_t d;
    cw_tun_dec_init(&d);
    uint64_t h = 0xCBF29CE484222325u, s = seed | 1, expect = UINT64_MAX;
    size_t pos = 0;
    *rc = 0;
    while (pos < len && *rc >= 0) {
        size_t n = piece(seed, &s, len - pos), off = 0;
        for (;;) {
            size_t used;
            cw_tun_frame_t f;
            *rc = cw_tun_dec_feed(&d, in + pos + off, n - off, &used, &f);
            CHECK(used <= n - off);
            off += used;
            if (*rc <= 0)
                break;
            fold_event(&h, &f, &expect);
        }
        CHECK(*rc != 0 || off == n);
        pos += off;
    }
    CHECK((*rc < 0) == (cw_tun_dec_error(&d) != NULL));
    *consumed = pos;
    mix(&h, rc, sizeof *rc);
    return h;
}

/* Every byte a session outputs must decode without error. */
static void check_output(cw_tun_t *t, cw_tun_dec_t *out_dec)
{
    static uint8_t out[CW_TUN_OUTPUT_MIN + 100];
    size_t n;
    int guard = 0;
    while ((n = cw_tun_output(t, out, sizeof out)) > 0) {
        CHECK(++guard < 1000);
        size_t pos = 0;
        while (pos < n) {
            size_t used;
            cw_tun_frame_t f;
            int rc = cw_tun_dec_feed(out_dec, out + pos, n - pos, &used, &f);
            CHECK(rc >= 0);
            pos += used;
        }
    }
    CHECK(!cw_tun_want_output(t));
}

typedef struct run {
    cw_tun_t t;
    cw_tun_dec_t *out_dec; /* checks everything the session outputs */
    uint64_t digest;
    uint64_t delivered;
    int fins, closed, opens;
} run_t;

static int r_data(void *ud, uint8_t *data, size_t len)
{
    run_t *r = ud;
    CHECK(len > 0);
    mix(&r->digest, data, len);
    r->delivered += len;
    memset(data, 0x5A, len); /* allowed: the bytes are ours during the call */
    return 0;
}

static void r_fin(void *ud)
{
    run_t *r = ud;
    CHECK(r->fins == 0);
    r->fins++;
    mix(&r->digest, "FIN", 3);
}

static void r_room(void *ud)
{
    run_t *r = ud;
    CHECK(cw_tun_room(&r->t) > 0);
}

static void r_open(void *ud, bool resumed)
{
    run_t *r = ud;
    r->opens++;
    mix(&r->digest, &resumed, 1);
    /* send at once what WELCOME released, so the run does not depend on the split */
    check_output(&r->t, r->out_dec);
}

static void r_closed(void *ud, int reason, const char *text)
{
    run_t *r = ud;
    CHECK(r->closed == 0);
    r->closed++;
    for (const char *p = text; *p; p++)
        CHECK(*p >= 0x20 && *p < 0x7F);
    mix(&r->digest, &reason, sizeof reason);
}

static const cw_tun_callbacks_t callbacks = {r_data, r_fin, r_room, r_open, r_closed};

/* Run a session side over the stream in pieces; fills r. */
static void session(run_t *r, const uint8_t *in, size_t len, uint64_t seed, uint8_t c2, uint8_t c3)
{
    memset(r, 0, sizeof *r);
    r->digest = 0xCBF29CE484222325u;
    size_t buffer = (size_t)4096 << (c2 & 7);
    cw_tun_role_t role = (c3 & 1) ? CW_TUN_SERVER : CW_TUN_CLIENT;
    cw_tun_init(&r->t, role, buffer, &callbacks, r);
    /* the source: some bytes (maybe more than fit) and maybe a FIN */
    static uint8_t src[1 << 16];
    size_t want = (size_t)(c2 >> 3) * 2048;
    size_t took = cw_tun_write(&r->t, src, want);
    CHECK(took == (want < buffer ? want : buffer));
    if (c2 & 0x80)
        CHECK(cw_tun_write_fin(&r->t) == 0);
    if (role == CW_TUN_SERVER) {
        cw_tun_hello_t h = {.version = CW_TUN_VERSION, .buffer = 4096};
        uint8_t tok[CW_TUN_TOKEN_LEN] = {1, 2, 3};
        CHECK(cw_tun_server_new(&r->t, 7, tok, &h, 60) == 0);
    } else {
        if (c3 & 2) {
            /* pretend a session was established and lost: resume it */
            r->t.have_session = true;
            r->t.id = 7;
            memset(r->t.token, 0xEE, CW_TUN_TOKEN_LEN);
            r->t.state = CW_TUN_ST_DETACHED;
        }
        CHECK(cw_tun_client_link(&r->t) == 0);
    }
    cw_tun_dec_t out_dec;
    cw_tun_dec_init(&out_dec);
    r->out_dec = &out_dec;
    check_output(&r->t, &out_dec);
    uint8_t *copy = malloc(len ? len : 1);
    CHECK(copy != NULL);
    memcpy(copy, in, len);
    uint64_t s = seed | 1;
    size_t pos = 0;
    int rc = 0;
    while (pos < len) {
        size_t n = piece(seed, &s, len - pos);
        rc = cw_tun_feed(&r->t, copy + pos, n);
        pos += n;
        /* invariants after every piece */
        CHECK(cw_tun_buffered(&r->t) <= buffer);
        CHECK(r->t.acked <= r->t.sent_high);
        CHECK(r->t.base <= r->t.end);
        CHECK(r->delivered + (uint64_t)r->fins == r->t.received);
        /* no output here: what we acknowledge moves the window the peer must respect, so
         * output happens at the same points in both runs (on WELCOME, and at the end) */
        if (rc != 0)
            break;
    }
    if (rc == 0 && (c3 & 4))
        cw_tun_flush_ack(&r->t);
    check_output(&r->t, &out_dec);
    CHECK(rc == 0 || cw_tun_state(&r->t) == CW_TUN_ST_CLOSED);
    CHECK((cw_tun_state(&r->t) == CW_TUN_ST_CLOSED) == (r->closed == 1));
    cw_tun_state_t st = cw_tun_state(&r->t);
    mix(&r->digest, &st, sizeof st);
    mix(&r->digest, &rc, sizeof rc);
    if (st == CW_TUN_ST_CLOSED) {
        CHECK(cw_tun_feed(&r->t, copy, len) == CW_ECLOSED);
        CHECK(cw_tun_write(&r->t, src, 1) == 0);
        CHECK(cw_tun_allocated(&r->t) == 0);
    } else {
        /* lose the link: the session survives, nothing is due for the dead link */
        cw_tun_link_lost(&r->t);
        CHECK(!cw_tun_want_output(&r->t));
    }
    cw_tun_free(&r->t);
    free(copy);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 4)
        return 0;
    uint64_t seed = (uint64_t)data[0] | (uint64_t)data[1] << 8 | (uint64_t)1 << 20;
    uint8_t c2 = data[2], c3 = data[3];
    data += 4;
    size -= 4;

    int rc_whole, rc_split;
    size_t used_whole, used_split;
    uint64_t dw = decode(data, size, 0, &rc_whole, &used_whole);
    uint64_t ds = decode(data, size, seed, &rc_split, &used_split);
    CHECK(dw == ds && rc_whole == rc_split && used_whole == used_split);

    run_t whole, split;
    session(&whole, data, size, 0, c2, c3);
    session(&split, data, size, seed, c2, c3);
    CHECK(whole.digest == split.digest);
    CHECK(whole.delivered == split.delivered && whole.fins == split.fins);
    return 0;
}
