/* libFuzzer target for the WebSocket session (src/proto/ws.c).
 *
 * Input: 6 control bytes, then the stream.  Control bytes 0-3 seed the split of the stream into
 * cw_ws_feed() calls, byte 4 picks max_message, byte 5 picks the message at which on_message
 * fails (low nibble) or starts the close (high nibble).  The stream goes to a server and to a
 * client session, each once whole and once in pieces: both runs must report the same events,
 * send the same bytes (unmasked) and end the same way.  The stream is also used as a payload to
 * encode and decode in both directions.
 *
 * Build (from the repository root):
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -D_GNU_SOURCE -Iinclude -I build-ws \
 *       fuzz/fuzz_ws.c src/proto/ws.c src/proto/cw.c src/proto/buf.c -lcrypto -o /tmp/fuzz_ws
 *   /tmp/fuzz_ws fuzz/corpus/ws
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cworker/cw.h"
#include "cworker/ws.h"
#include "cworker/utf8.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Check a condition on our own side; abort() is what libFuzzer reports as a crash. */
#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c))                                                                                  \
            abort();                                                                               \
    } while (0)

typedef struct run {
    cw_ws_t ws;
    uint64_t digest; /* FNV-1a over every event, in order */
    size_t nmsg;
    size_t fail_at;  /* on_message returns an error at this message (1-based; 0 = never) */
    size_t close_at; /* on_message calls cw_ws_close at this message */
    size_t max_message;
} run_t;

/* Fold bytes into the digest. */
static void mix(run_t *r, const void *p, size_t n)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++) {
        r->digest ^= b[i];
        r->digest *= 0x100000001B3u;
    }
}

/* Fold one event (type, length, bytes) into the digest. */
static void event(run_t *r, uint8_t type, const void *p, size_t n)
{
    uint64_t len = n;
    mix(r, &type, 1);
    mix(r, &len, sizeof(len));
    mix(r, p, n);
}

/* on_message: the message obeys the limits; record it, then scribble over it as allowed. */
static int on_message(void *ud, unsigned opcode, uint8_t *data, size_t len)
{
    run_t *r = ud;
    CHECK(opcode == CW_WS_OP_TEXT || opcode == CW_WS_OP_BINARY);
    CHECK(len <= r->max_message);
    CHECK(opcode != CW_WS_OP_TEXT || cw_utf8_valid(data, len));
    event(r, (uint8_t)opcode, data, len);
    if (len)
        memset(data, 0xA5, len);
    r->nmsg++;
    if (r->nmsg == r->close_at)
        CHECK(cw_ws_close(&r->ws, 1000, "fuzz") == 0);
    return r->nmsg == r->fail_at ? CW_EBADMSG : 0;
}

/* on_send: the session sends one well-formed control frame at a time, masked iff client. */
static int on_send(void *ud, const uint8_t *data, size_t len)
{
    run_t *r = ud;
    CHECK(len >= 2);
    bool masked = (data[1] & 0x80) != 0;
    size_t plen = data[1] & 0x7F;
    size_t h = 2 + (masked ? 4 : 0);
    CHECK(masked == (r->ws.role == CW_WS_CLIENT));
    CHECK(plen <= 125 && len == h + plen);
    CHECK(data[0] == 0x88 || data[0] == 0x89 || data[0] == 0x8A);
    /* Keys are random, so the digest takes the plain payload. */
    uint8_t payload[125];
    memcpy(payload, data + h, plen);
    if (masked)
        cw_ws_mask(payload, plen, data + 2, 0);
    event(r, data[0], payload, plen);
    return 0;
}

/* on_pong: record it. */
static void on_pong(void *ud, const uint8_t *data, size_t len)
{
    event(ud, 0xFA, data, len);
}

/* on_close: record it; the code is one a peer may send, or 1005. */
static void on_close(void *ud, int code, const char *reason, size_t reason_len)
{
    CHECK(code == CW_WS_CLOSE_NO_STATUS || (code >= 1000 && code <= 4999));
    CHECK(cw_utf8_valid((const uint8_t *)reason, reason_len));
    event(ud, 0xFC, reason, reason_len);
    mix(ud, &code, sizeof(code));
}

static const cw_ws_callbacks_t callbacks = {on_message, on_send, on_pong, on_close};

/* xorshift64: the split sequence. */
static uint64_t next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* Feed a copy of the stream in pieces (seed 0: whole); returns the result, fills the digest. */
static int feed(run_t *r, cw_ws_role_t role, const uint8_t *in, size_t len, uint64_t seed)
{
    uint8_t *copy = malloc(len ? len : 1);
    CHECK(copy != NULL);
    if (len)
        memcpy(copy, in, len);
    cw_ws_init(&r->ws, role, r->max_message, &callbacks, r);
    if (r->max_message == 0)
        r->max_message = r->ws.max_message;
    r->digest = 0xCBF29CE484222325u;
    r->nmsg = 0;

    uint64_t s = seed | 1;
    size_t pos = 0;
    int rc = 0;
    do {
        size_t n = len - pos;
        if (seed != 0) {
            uint64_t x = next(&s);
            /* Mostly tiny pieces, sometimes empty ones, sometimes large. */
            size_t cap = (x & 3) == 0 ? 0 : (x & 3) == 1 ? 3 : (x & 3) == 2 ? 17 : 4096;
            size_t want = cap ? (size_t)((x >> 8) % cap) + 1 : 0;
            if (want < n)
                n = want;
        }
        rc = cw_ws_feed(&r->ws, copy + pos, n);
        pos += n;
    } while (rc == 0 && pos < len);
    cw_ws_state_t st = cw_ws_state(&r->ws);
    CHECK(rc == 0 || st == CW_WS_CLOSED);
    CHECK(rc != 0 || st != CW_WS_CLOSED);
    mix(r, &st, sizeof(st));
    /* Once closed the session ignores input. */
    if (st == CW_WS_CLOSED)
        CHECK(cw_ws_feed(&r->ws, copy, len) == CW_ECLOSED);
    cw_ws_free(&r->ws);
    free(copy);
    return rc;
}

/* Encode the bytes as one message from `from` and decode them on the other side. */
static void roundtrip(cw_ws_role_t from, unsigned op, const uint8_t *in, size_t len, uint64_t seed)
{
    run_t tx = {0};
    cw_ws_init(&tx.ws, from, 0, &callbacks, &tx);
    uint8_t *wire = malloc(CW_WS_MAX_HEADER + len);
    CHECK(wire != NULL);
    size_t h =
        cw_ws_encode(&tx.ws, op, (uint8_t *)memcpy(wire + CW_WS_MAX_HEADER, in, len), len, wire);
    memmove(wire + h, wire + CW_WS_MAX_HEADER, len);

    run_t rx = {0}, expect = {0};
    rx.max_message = len ? len : 1;
    int rc = feed(&rx, from == CW_WS_CLIENT ? CW_WS_SERVER : CW_WS_CLIENT, wire, h + len, seed);
    bool valid = op == CW_WS_OP_BINARY || cw_utf8_valid(in, len);
    CHECK(rc == (valid ? 0 : CW_EPROTO));
    CHECK(rx.nmsg == (valid ? 1 : 0));
    if (valid) {
        expect.digest = 0xCBF29CE484222325u;
        event(&expect, (uint8_t)op, in, len);
        cw_ws_state_t st = CW_WS_OPEN;
        mix(&expect, &st, sizeof(st));
        CHECK(rx.digest == expect.digest);
    }
    cw_ws_free(&tx.ws);
    free(wire);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 6)
        return 0;
    uint64_t seed = (uint64_t)data[0] | (uint64_t)data[1] << 8 | (uint64_t)data[2] << 16 |
                    (uint64_t)data[3] << 24 | (uint64_t)1 << 32;
    size_t max_message = (data[4] & 0x80) ? (size_t)(data[4] & 0x7F) * 16 + 1 : 0;
    size_t fail_at = data[5] & 0x0F, close_at = data[5] >> 4;
    data += 6;
    size -= 6;

    for (int r = 0; r < 2; r++) {
        cw_ws_role_t role = r ? CW_WS_CLIENT : CW_WS_SERVER;
        run_t whole = {.fail_at = fail_at, .close_at = close_at, .max_message = max_message};
        run_t split = whole;
        int rc_whole = feed(&whole, role, data, size, 0);
        int rc_split = feed(&split, role, data, size, seed);
        CHECK(rc_whole == rc_split);
        CHECK(whole.digest == split.digest);
        CHECK(whole.nmsg == split.nmsg);
    }
    roundtrip(CW_WS_CLIENT, CW_WS_OP_BINARY, data, size, seed);
    roundtrip(CW_WS_SERVER, CW_WS_OP_TEXT, data, size, seed);
    return 0;
}
