/* Unit tests for the WebSocket codec and session (src/proto/ws.c), sans-I/O.
 *
 * Every stream is fed whole, one byte at a time and in random splits with fixed seeds, and must
 * give the same messages, the same bytes sent and the same result each way. */
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "cworker/cw.h"
#include "cworker/ws.h"
#include "cworker/utf8.h"

#define MAX_EVENTS 64

/* One end of a connection, recording what its session reported. */
typedef struct peer {
    cw_ws_t ws;
    cw_buf_t sent; /* everything passed to on_send */
    size_t nsend;
    cw_buf_t data; /* payloads of all messages, concatenated */
    size_t nmsg;
    unsigned op[MAX_EVENTS];
    size_t len[MAX_EVENTS];
    bool in_feed[MAX_EVENTS]; /* message pointer lay inside the buffer being fed */
    const uint8_t *feed_lo, *feed_hi;
    int msg_rc;        /* what on_message returns */
    int send_rc;       /* what on_send returns */
    uint16_t close_at; /* on_message calls cw_ws_close(close_at) when nonzero */
    bool take;         /* on_message calls cw_ws_take_message */
    size_t ntaken;     /* messages whose storage it got (checked and freed) */
    size_t npong;
    cw_buf_t pong;
    size_t nclose;
    int close_code;
    char reason[128];
    size_t reason_len;
} peer_t;

/* on_message: record the message and where its bytes lay. */
static int rec_message(void *ud, unsigned opcode, uint8_t *data, size_t len)
{
    peer_t *p = ud;
    assert_true(p->nmsg < MAX_EVENTS);
    assert_non_null(data);
    p->op[p->nmsg] = opcode;
    p->len[p->nmsg] = len;
    p->in_feed[p->nmsg] = data >= p->feed_lo && data + len <= p->feed_hi;
    p->nmsg++;
    assert_int_equal(cw_buf_append(&p->data, data, len), 0);
    if (p->take) {
        size_t tlen = 0;
        uint8_t *mem = cw_ws_take_message(&p->ws, &tlen);
        /* the storage of a message that did not lie in the fed buffer */
        assert_true(mem == NULL || (mem == data && tlen == len));
        assert_true(mem != NULL || p->in_feed[p->nmsg - 1] || len == 0);
        assert_null(cw_ws_take_message(&p->ws, &tlen)); /* only once */
        if (mem) {
            p->ntaken++;
            free(mem); /* the session must not touch it again */
        }
    }
    if (p->close_at)
        assert_int_equal(cw_ws_close(&p->ws, p->close_at, "enough"), 0);
    return p->msg_rc;
}

/* on_send: keep the bytes. */
static int rec_send(void *ud, const uint8_t *data, size_t len)
{
    peer_t *p = ud;
    p->nsend++;
    assert_int_equal(cw_buf_append(&p->sent, data, len), 0);
    return p->send_rc;
}

/* on_pong: keep the payload. */
static void rec_pong(void *ud, const uint8_t *data, size_t len)
{
    peer_t *p = ud;
    p->npong++;
    assert_int_equal(cw_buf_append(&p->pong, data, len), 0);
}

/* on_close: keep code and reason. */
static void rec_close(void *ud, int code, const char *reason, size_t reason_len)
{
    peer_t *p = ud;
    p->nclose++;
    p->close_code = code;
    assert_true(reason_len < sizeof(p->reason));
    memcpy(p->reason, reason, reason_len);
    p->reason_len = reason_len;
}

static const cw_ws_callbacks_t rec_cb = {rec_message, rec_send, rec_pong, rec_close};

/* Start a recording peer. */
static void peer_init(peer_t *p, cw_ws_role_t role, size_t max_message)
{
    memset(p, 0, sizeof(*p));
    cw_ws_init(&p->ws, role, max_message, &rec_cb, p);
}

/* Release a recording peer. */
static void peer_free(peer_t *p)
{
    cw_ws_free(&p->ws);
    cw_buf_free(&p->sent);
    cw_buf_free(&p->data);
    cw_buf_free(&p->pong);
}

/* xorshift64*: small, seeded, reproducible. */
static uint64_t rnd(uint64_t *s)
{
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 0x2545F4914F6CDD1Du;
}

/* How a stream is cut into cw_ws_feed() calls: whole, byte by byte, or random (seed >= 1). */
enum { SPLIT_WHOLE = -1, SPLIT_BYTES = 0 };
static const long split_modes[] = {SPLIT_WHOLE, SPLIT_BYTES, 1, 2, 3, 42, 1234567};
#define NSPLIT (sizeof(split_modes) / sizeof(split_modes[0]))

/* Length of the next piece in random mode: a mix of tiny, header-sized and large pieces. */
static size_t random_piece(uint64_t *s, size_t left)
{
    size_t n;
    switch (rnd(s) % 4) {
    case 0:
        n = 1 + rnd(s) % 3;
        break;
    case 1:
        n = 1 + rnd(s) % 20;
        break;
    case 2:
        n = 1 + rnd(s) % 300;
        break;
    default:
        n = 1 + rnd(s) % 100000;
        break;
    }
    return n < left ? n : left;
}

/* Feed a copy of wire to p's session in pieces; returns the first nonzero result, or 0. */
static int feed_split(peer_t *p, const uint8_t *wire, size_t len, long mode)
{
    uint8_t *copy = malloc(len ? len : 1);
    assert_non_null(copy);
    if (len)
        memcpy(copy, wire, len);
    uint64_t s = (uint64_t)mode * 0x9E3779B97F4A7C15u + 1;
    size_t pos = 0;
    int rc = 0;
    do {
        size_t n = len - pos;
        if (mode == SPLIT_BYTES)
            n = n ? 1 : 0;
        else if (mode != SPLIT_WHOLE)
            n = random_piece(&s, n);
        p->feed_lo = copy + pos;
        p->feed_hi = copy + pos + n;
        rc = cw_ws_feed(&p->ws, copy + pos, n);
        pos += n;
    } while (rc == 0 && pos < len);
    free(copy);
    return rc;
}

/* Append a frame with full control over its first byte (FIN, RSV, opcode). */
static void put_raw(cw_buf_t *w, uint8_t b0, bool masked, const void *payload, uint64_t len)
{
    uint8_t hdr[CW_WS_MAX_HEADER];
    static const uint8_t key[4] = {0x37, 0xfa, 0x21, 0x3d};
    size_t n = cw_ws_frame_header(hdr, b0 & 0x0F, (b0 & 0x80) != 0, len, masked ? key : NULL);
    hdr[0] = b0;
    assert_int_equal(cw_buf_append(w, hdr, n), 0);
    size_t at = w->len;
    assert_int_equal(cw_buf_append(w, payload, (size_t)len), 0);
    if (masked)
        cw_ws_mask(w->data + at, (size_t)len, key, 0);
}

/* Append a frame as the given sender role would send it (clients mask). */
static void put_frame(cw_buf_t *w, cw_ws_role_t sender, unsigned op, bool fin, const void *payload,
                      size_t len)
{
    put_raw(w, (uint8_t)((fin ? 0x80 : 0) | op), sender == CW_WS_CLIENT, payload, len);
}

/* Append a Close frame with a code and reason, as sender would send it. */
static void put_close(cw_buf_t *w, cw_ws_role_t sender, int code, const char *reason)
{
    uint8_t p[125];
    size_t n = 0;
    if (code >= 0) {
        p[0] = (uint8_t)(code >> 8);
        p[1] = (uint8_t)code;
        n = 2 + strlen(reason);
        memcpy(p + 2, reason, n - 2);
    }
    put_frame(w, sender, CW_WS_OP_CLOSE, true, p, n);
}

/* The other role: who sends to a session of this role. */
static cw_ws_role_t other(cw_ws_role_t r)
{
    return r == CW_WS_CLIENT ? CW_WS_SERVER : CW_WS_CLIENT;
}

/* Parsed view of one frame a session sent (always small: control frames). */
typedef struct sent_frame {
    uint8_t b0;
    bool masked;
    size_t len;
    uint8_t payload[125];
} sent_frame_t;

/* Decode the frame at *pos of p->sent, unmasking it; checks the sender's masking rule. */
static sent_frame_t next_sent(peer_t *p, size_t *pos)
{
    sent_frame_t f;
    const uint8_t *b = p->sent.data + *pos;
    assert_true(p->sent.len - *pos >= 2);
    f.b0 = b[0];
    f.masked = (b[1] & 0x80) != 0;
    f.len = b[1] & 0x7F;
    assert_true(f.len <= 125);
    assert_int_equal(f.masked, p->ws.role == CW_WS_CLIENT);
    size_t h = 2 + (f.masked ? 4 : 0);
    assert_true(p->sent.len - *pos >= h + f.len);
    memcpy(f.payload, b + h, f.len);
    if (f.masked)
        cw_ws_mask(f.payload, f.len, b + 2, 0);
    *pos += h + f.len;
    return f;
}

/* The status code of the single Close frame p sent, or -1 for a Close without code. */
static int sent_close_code(peer_t *p)
{
    size_t pos = 0;
    sent_frame_t f = next_sent(p, &pos);
    assert_int_equal(pos, p->sent.len);
    assert_int_equal(f.b0, 0x88);
    if (f.len == 0)
        return -1;
    assert_true(f.len >= 2);
    return f.payload[0] << 8 | f.payload[1];
}

/* Fill a payload: valid UTF-8 text (ASCII and multi-byte) or random bytes. */
static void fill(uint8_t *p, size_t n, bool text, uint64_t seed)
{
    uint64_t s = seed * 7919 + 17;
    if (!text) {
        for (size_t i = 0; i < n; i++)
            p[i] = (uint8_t)rnd(&s);
        return;
    }
    static const char *pieces[] = {"a", "Z", " ", "\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80"};
    size_t i = 0;
    while (i < n) {
        const char *c = pieces[rnd(&s) % 6];
        size_t l = strlen(c);
        if (l > n - i) {
            c = "x";
            l = 1;
        }
        memcpy(p + i, c, l);
        i += l;
    }
}

/* RFC 6455 §5.7: the example frames, byte for byte. */
static void test_rfc_examples(void **state)
{
    (void)state;
    static const uint8_t hello[] = {0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f};
    static const uint8_t hello_masked[] = {0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d,
                                           0x7f, 0x9f, 0x4d, 0x51, 0x58};
    static const uint8_t key[4] = {0x37, 0xfa, 0x21, 0x3d};
    uint8_t hdr[CW_WS_MAX_HEADER];
    uint8_t payload[5];

    assert_int_equal(cw_ws_frame_header(hdr, CW_WS_OP_TEXT, true, 5, NULL), 2);
    assert_memory_equal(hdr, hello, 2);
    assert_int_equal(cw_ws_frame_header(hdr, CW_WS_OP_TEXT, true, 5, key), 6);
    assert_memory_equal(hdr, hello_masked, 6);
    memcpy(payload, "Hello", 5);
    cw_ws_mask(payload, 5, key, 0);
    assert_memory_equal(payload, hello_masked + 6, 5);
    cw_ws_mask(payload, 5, key, 0);
    assert_memory_equal(payload, "Hello", 5);

    /* Unmasked 256-byte and 64 KiB binary headers. */
    static const uint8_t h256[] = {0x82, 0x7E, 0x01, 0x00};
    static const uint8_t h64k[] = {0x82, 0x7F, 0, 0, 0, 0, 0, 0x01, 0x00, 0x00};
    assert_int_equal(cw_ws_frame_header(hdr, CW_WS_OP_BINARY, true, 256, NULL), 4);
    assert_memory_equal(hdr, h256, 4);
    assert_int_equal(cw_ws_frame_header(hdr, CW_WS_OP_BINARY, true, 65536, NULL), 10);
    assert_memory_equal(hdr, h64k, 10);
    /* Fragment boundaries of the header: 125/126 and 65535/65536. */
    assert_int_equal(cw_ws_frame_header(hdr, 2, true, 125, NULL), 2);
    assert_int_equal(cw_ws_frame_header(hdr, 2, true, 126, NULL), 4);
    assert_int_equal(cw_ws_frame_header(hdr, 2, true, 65535, NULL), 4);
    assert_int_equal(cw_ws_frame_header(hdr, 2, false, 65535, key), 8);
    assert_int_equal(hdr[0], 0x02);
    assert_int_equal(cw_ws_frame_header(hdr, 2, true, 1ull << 40, key), 14);
    assert_int_equal(hdr[1], 0xFF);
    assert_int_equal(hdr[4], 0x01);

    for (size_t m = 0; m < NSPLIT; m++) {
        peer_t c, s;
        peer_init(&c, CW_WS_CLIENT, 0);
        peer_init(&s, CW_WS_SERVER, 0);
        /* A client reads the unmasked one, a server the masked one; with the fragmented
         * "Hel" + "lo" example and the unmasked ping after it for the client. */
        static const uint8_t frag[] = {0x01, 0x03, 0x48, 0x65, 0x6c, 0x80, 0x02, 0x6c, 0x6f};
        static const uint8_t ping[] = {0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f};
        cw_buf_t w = CW_BUF_INIT;
        cw_buf_append(&w, hello, sizeof(hello));
        cw_buf_append(&w, frag, sizeof(frag));
        cw_buf_append(&w, ping, sizeof(ping));
        assert_int_equal(feed_split(&c, w.data, w.len, split_modes[m]), 0);
        assert_int_equal(c.nmsg, 2);
        assert_memory_equal(c.data.data, "HelloHello", 10);
        assert_int_equal(c.op[0], CW_WS_OP_TEXT);
        assert_int_equal(c.op[1], CW_WS_OP_TEXT);
        /* Our pong is masked with a random key, so compare it unmasked. */
        size_t pos = 0;
        sent_frame_t f = next_sent(&c, &pos);
        assert_int_equal(f.b0, 0x8A);
        assert_int_equal(f.len, 5);
        assert_memory_equal(f.payload, "Hello", 5);

        assert_int_equal(feed_split(&s, hello_masked, sizeof(hello_masked), split_modes[m]), 0);
        assert_int_equal(s.nmsg, 1);
        assert_memory_equal(s.data.data, "Hello", 5);
        cw_buf_free(&w);
        peer_free(&c);
        peer_free(&s);
    }
}

/* A server's pong to the RFC's masked "Hello" ping is the RFC's unmasked pong, exactly; the
 * client's pong is masked with a fresh key. */
static void test_ping_pong_bytes(void **state)
{
    (void)state;
    static const uint8_t ping_masked[] = {0x89, 0x85, 0x37, 0xfa, 0x21, 0x3d,
                                          0x7f, 0x9f, 0x4d, 0x51, 0x58};
    static const uint8_t pong[] = {0x8A, 0x05, 'H', 'e', 'l', 'l', 'o'};
    for (size_t m = 0; m < NSPLIT; m++) {
        peer_t s;
        peer_init(&s, CW_WS_SERVER, 0);
        assert_int_equal(feed_split(&s, ping_masked, sizeof(ping_masked), split_modes[m]), 0);
        assert_int_equal(s.sent.len, sizeof(pong));
        assert_memory_equal(s.sent.data, pong, sizeof(pong));
        assert_int_equal(s.nmsg, 0);
        peer_free(&s);
    }

    /* Empty ping -> empty pong. */
    peer_t s;
    peer_init(&s, CW_WS_SERVER, 0);
    static const uint8_t empty_ping[] = {0x89, 0x80, 1, 2, 3, 4};
    assert_int_equal(feed_split(&s, empty_ping, sizeof(empty_ping), SPLIT_WHOLE), 0);
    assert_int_equal(s.sent.len, 2);
    assert_memory_equal(s.sent.data, "\x8A\x00", 2);
    peer_free(&s);

    /* Client: masked pong of a 125-byte ping, keys differ between two pongs. */
    peer_t c;
    peer_init(&c, CW_WS_CLIENT, 0);
    uint8_t big[125];
    fill(big, sizeof(big), false, 5);
    cw_buf_t w = CW_BUF_INIT;
    put_frame(&w, CW_WS_SERVER, CW_WS_OP_PING, true, big, sizeof(big));
    put_frame(&w, CW_WS_SERVER, CW_WS_OP_PING, true, big, sizeof(big));
    assert_int_equal(feed_split(&c, w.data, w.len, SPLIT_WHOLE), 0);
    assert_int_equal(c.nsend, 2);
    assert_int_equal(c.sent.len, 2 * (2 + 4 + 125));
    assert_int_equal(c.sent.data[0], 0x8A);
    assert_int_equal(c.sent.data[1], 0x80 | 125);
    size_t pos = 0;
    for (int i = 0; i < 2; i++) {
        sent_frame_t f = next_sent(&c, &pos);
        assert_int_equal(f.len, 125);
        assert_memory_equal(f.payload, big, 125);
    }
    /* Two random 32-bit keys colliding would be a 1 in 2^32 event. */
    assert_memory_not_equal(c.sent.data + 2, c.sent.data + 131 + 2, 4);
    cw_buf_free(&w);
    peer_free(&c);

    /* Pongs from the peer reach on_pong and are not answered. */
    peer_init(&c, CW_WS_CLIENT, 0);
    static const uint8_t pong_in[] = {0x8A, 0x03, 'a', 'b', 'c'};
    assert_int_equal(feed_split(&c, pong_in, sizeof(pong_in), SPLIT_BYTES), 0);
    assert_int_equal(c.npong, 1);
    assert_int_equal(c.pong.len, 3);
    assert_memory_equal(c.pong.data, "abc", 3);
    assert_int_equal(c.sent.len, 0);
    peer_free(&c);
}

/* cw_ws_ping frames exactly, refuses oversized payloads and pings after Close. */
static void test_ping_send(void **state)
{
    (void)state;
    peer_t s, c;
    peer_init(&s, CW_WS_SERVER, 0);
    assert_int_equal(cw_ws_ping(&s.ws, (const uint8_t *)"xy", 2), 0);
    assert_int_equal(s.sent.len, 4);
    assert_memory_equal(s.sent.data, "\x89\x02xy", 4);
    uint8_t big[126] = {0};
    assert_int_equal(cw_ws_ping(&s.ws, big, 126), -EINVAL);
    assert_int_equal(cw_ws_ping(&s.ws, big, 125), 0);
    assert_int_equal(s.sent.len, 4 + 2 + 125);
    assert_int_equal(cw_ws_close(&s.ws, 1000, NULL), 0);
    size_t before = s.sent.len;
    assert_int_equal(cw_ws_ping(&s.ws, big, 1), CW_ECLOSED);
    assert_int_equal(s.sent.len, before);
    peer_free(&s);

    peer_init(&c, CW_WS_CLIENT, 0);
    assert_int_equal(cw_ws_ping(&c.ws, NULL, 0), 0);
    assert_int_equal(c.sent.len, 6);
    assert_int_equal(c.sent.data[0], 0x89);
    assert_int_equal(c.sent.data[1], 0x80);
    peer_free(&c);
}

/* cw_ws_mask in pieces at any offset and alignment equals masking the whole buffer, and both
 * equal the byte-by-byte definition. */
static void test_mask_offsets(void **state)
{
    (void)state;
    enum { N = 1000 };
    uint8_t orig[N + 16], ref[N], buf[N + 16];
    uint64_t s = 99;
    for (int round = 0; round < 200; round++) {
        uint8_t key[4];
        for (int i = 0; i < 4; i++)
            key[i] = (uint8_t)rnd(&s);
        size_t len = (size_t)(rnd(&s) % N);
        size_t shift = (size_t)(rnd(&s) % 16); /* every alignment of the start */
        fill(orig, len, false, (uint64_t)round);
        for (size_t i = 0; i < len; i++)
            ref[i] = orig[i] ^ key[i % 4];

        memcpy(buf + shift, orig, len);
        cw_ws_mask(buf + shift, len, key, 0);
        assert_memory_equal(buf + shift, ref, len);

        /* In random pieces, each at its payload offset. */
        memcpy(buf + shift, orig, len);
        size_t pos = 0;
        while (pos < len) {
            size_t n = 1 + (size_t)(rnd(&s) % 70);
            if (n > len - pos)
                n = len - pos;
            cw_ws_mask(buf + shift + pos, n, key, pos);
            pos += n;
        }
        assert_memory_equal(buf + shift, ref, len);

        /* Offsets beyond 32 bits still only matter modulo 4. */
        memcpy(buf + shift, orig, len);
        uint64_t base = (1ull << 36) + 4 * (rnd(&s) % 1000);
        cw_ws_mask(buf + shift, len, key, base);
        assert_memory_equal(buf + shift, ref, len);
    }
    cw_ws_mask(NULL, 0, (const uint8_t *)"abcd", 3);
}

/* cw_ws_mask_copy in pieces, at any offset and alignment of source and destination, gives
 * what cw_ws_mask gives in place, and leaves the source alone. */
static void test_mask_copy(void **state)
{
    (void)state;
    enum { N = 1000 };
    uint8_t orig[N + 16], ref[N], dst[N + 16];
    uint64_t s = 7;
    for (int round = 0; round < 200; round++) {
        uint8_t key[4];
        for (int i = 0; i < 4; i++)
            key[i] = (uint8_t)rnd(&s);
        size_t len = (size_t)(rnd(&s) % N);
        size_t ss = (size_t)(rnd(&s) % 16), ds = (size_t)(rnd(&s) % 16);
        fill(orig + ss, len, false, (uint64_t)round);
        memcpy(ref, orig + ss, len);
        cw_ws_mask(ref, len, key, 0);
        size_t pos = 0;
        while (pos < len) {
            size_t n = 1 + (size_t)(rnd(&s) % 90);
            if (n > len - pos)
                n = len - pos;
            cw_ws_mask_copy(dst + ds + pos, orig + ss + pos, n, key, pos);
            pos += n;
        }
        assert_memory_equal(dst + ds, ref, len);
        cw_ws_mask(dst + ds, len, key, 0);
        assert_memory_equal(dst + ds, orig + ss, len);
    }
    cw_ws_mask_copy(NULL, NULL, 0, (const uint8_t *)"abcd", 1);
}

/* A premasked message is framed with its key and sent as it is; any other message is masked
 * as usual, and a cancelled premask leaves the next message alone. */
static void test_premask(void **state)
{
    (void)state;
    peer_t s, c;
    peer_init(&s, CW_WS_SERVER, 0);
    peer_init(&c, CW_WS_CLIENT, 0);
    uint8_t hdr[CW_WS_MAX_HEADER], key[4], p[300], q[300];
    memset(p, 'z', sizeof(p));
    assert_false(cw_ws_premask(&s.ws, key)); /* a server does not mask */

    assert_true(cw_ws_premask(&c.ws, key));
    cw_ws_mask_copy(q, p, sizeof q, key, 0);
    cw_ws_premasked(&c.ws, q, sizeof q);
    assert_int_equal(cw_ws_encode(&c.ws, CW_WS_OP_BINARY, q, sizeof q, hdr), 8);
    assert_memory_equal(hdr + 4, key, 4);
    cw_ws_mask(q, sizeof q, hdr + 4, 0);
    assert_memory_equal(q, p, sizeof q);

    /* armed for q, but p is encoded: masked normally, and the arming is gone */
    assert_true(cw_ws_premask(&c.ws, key));
    cw_ws_premasked(&c.ws, q, sizeof q);
    assert_int_equal(cw_ws_encode(&c.ws, CW_WS_OP_BINARY, p, sizeof p, hdr), 8);
    cw_ws_mask(p, sizeof p, hdr + 4, 0);
    for (size_t i = 0; i < sizeof p; i++)
        assert_int_equal(p[i], 'z');
    assert_false(c.ws.pre_armed);

    /* cancelled: the same buffer later is masked like any other */
    assert_true(cw_ws_premask(&c.ws, key));
    cw_ws_premasked(&c.ws, p, sizeof p);
    cw_ws_premask_cancel(&c.ws);
    assert_int_equal(cw_ws_encode(&c.ws, CW_WS_OP_BINARY, p, sizeof p, hdr), 8);
    cw_ws_mask(p, sizeof p, hdr + 4, 0);
    for (size_t i = 0; i < sizeof p; i++)
        assert_int_equal(p[i], 'z');
    peer_free(&s);
    peer_free(&c);
}

/* Sizes every round trip covers: the edges of the three length encodings, and 1 MiB. */
static const size_t rt_sizes[] = {0, 1, 125, 126, 65535, 65536, 1 << 20};
#define NSIZES (sizeof(rt_sizes) / sizeof(rt_sizes[0]))

/* Encode one message with `from`'s session and return header + payload as the wire bytes. */
static void encode_to(cw_buf_t *wire, cw_ws_t *from, unsigned op, const uint8_t *msg, size_t len)
{
    uint8_t hdr[CW_WS_MAX_HEADER];
    uint8_t *payload = malloc(len ? len : 1);
    assert_non_null(payload);
    if (len)
        memcpy(payload, msg, len);
    size_t h = cw_ws_encode(from, op, payload, len, hdr);
    assert_true(h >= 2 && h <= CW_WS_MAX_HEADER);
    assert_int_equal(cw_buf_append(wire, hdr, h), 0);
    assert_int_equal(cw_buf_append(wire, payload, len), 0);
    if (from->role == CW_WS_CLIENT && len >= 4)
        /* Masked in place: the plain payload does not survive (odds of a zero key: 2^-32). */
        assert_memory_not_equal(payload, msg, len);
    free(payload);
}

/* Round trips of every size and type, in both directions, under every way of splitting. */
static void roundtrip(cw_ws_role_t sender_role)
{
    uint8_t *msg = malloc(rt_sizes[NSIZES - 1]);
    assert_non_null(msg);
    peer_t tx;
    peer_init(&tx, sender_role, 0);
    for (size_t si = 0; si < NSIZES; si++) {
        for (int text = 0; text < 2; text++) {
            size_t len = rt_sizes[si];
            unsigned op = text ? CW_WS_OP_TEXT : CW_WS_OP_BINARY;
            fill(msg, len, text, si * 2 + (size_t)text);
            cw_buf_t wire = CW_BUF_INIT;
            encode_to(&wire, &tx.ws, op, msg, len);
            for (size_t m = 0; m < NSPLIT; m++) {
                peer_t rx;
                peer_init(&rx, other(sender_role), 0);
                assert_int_equal(feed_split(&rx, wire.data, wire.len, split_modes[m]), 0);
                assert_int_equal(rx.nmsg, 1);
                assert_int_equal(rx.op[0], op);
                assert_int_equal(rx.len[0], len);
                assert_int_equal(rx.data.len, len);
                if (len)
                    assert_memory_equal(rx.data.data, msg, len);
                /* Fed whole, the message is delivered from the caller's buffer. */
                if (split_modes[m] == SPLIT_WHOLE)
                    assert_true(rx.in_feed[0]);
                /* Byte by byte, only a 1-byte payload lies whole in one feed. */
                if (split_modes[m] == SPLIT_BYTES)
                    assert_int_equal(rx.in_feed[0], len <= 1);
                assert_int_equal(rx.sent.len, 0);
                assert_int_equal(cw_ws_state(&rx.ws), CW_WS_OPEN);
                peer_free(&rx);
            }
            cw_buf_free(&wire);
        }
    }
    peer_free(&tx);
    free(msg);
}

/* Client to server round trips. */
static void test_roundtrip_client_to_server(void **state)
{
    (void)state;
    roundtrip(CW_WS_CLIENT);
}

/* Server to client round trips. */
static void test_roundtrip_server_to_client(void **state)
{
    (void)state;
    roundtrip(CW_WS_SERVER);
}

/* Many messages of all sizes, fragmented ones and pings in one stream: all arrive in order. */
static void test_stream_mixed(void **state)
{
    (void)state;
    for (int dir = 0; dir < 2; dir++) {
        cw_ws_role_t sender = dir ? CW_WS_SERVER : CW_WS_CLIENT;
        peer_t tx;
        peer_init(&tx, sender, 0);
        cw_buf_t wire = CW_BUF_INIT, expect = CW_BUF_INIT;
        uint8_t *msg = malloc(rt_sizes[NSIZES - 1]);
        assert_non_null(msg);
        size_t nexpect = 0;
        for (size_t si = 0; si < NSIZES; si++) {
            fill(msg, rt_sizes[si], false, si);
            encode_to(&wire, &tx.ws, CW_WS_OP_BINARY, msg, rt_sizes[si]);
            cw_buf_append(&expect, msg, rt_sizes[si]);
            nexpect++;
            put_frame(&wire, sender, CW_WS_OP_PING, true, "p", 1);
            /* The same payload again, fragmented in 3 with a ping between fragments. */
            size_t a = rt_sizes[si] / 3, b = rt_sizes[si] / 2;
            put_frame(&wire, sender, CW_WS_OP_BINARY, false, msg, a);
            put_frame(&wire, sender, CW_WS_OP_PING, true, "q", 1);
            put_frame(&wire, sender, CW_WS_OP_CONT, false, msg + a, b - a);
            put_frame(&wire, sender, CW_WS_OP_CONT, true, msg + b, rt_sizes[si] - b);
            cw_buf_append(&expect, msg, rt_sizes[si]);
            nexpect++;
        }
        for (size_t m = 0; m < NSPLIT; m++) {
            peer_t rx;
            peer_init(&rx, other(sender), 0);
            assert_int_equal(feed_split(&rx, wire.data, wire.len, split_modes[m]), 0);
            assert_int_equal(rx.nmsg, nexpect);
            assert_int_equal(rx.data.len, expect.len);
            assert_memory_equal(rx.data.data, expect.data, expect.len);
            /* One pong per ping, in order, with the ping's payload. */
            size_t pos = 0;
            for (size_t i = 0; i < 2 * NSIZES; i++) {
                sent_frame_t f = next_sent(&rx, &pos);
                assert_int_equal(f.b0, 0x8A);
                assert_int_equal(f.len, 1);
                assert_int_equal(f.payload[0], i % 2 ? 'q' : 'p');
            }
            assert_int_equal(pos, rx.sent.len);
            peer_free(&rx);
        }
        free(msg);
        cw_buf_free(&wire);
        cw_buf_free(&expect);
        peer_free(&tx);
    }
}

/* Text fragments joined; a UTF-8 sequence split between fragments is fine; pings, pongs between
 * fragments are answered / reported; empty fragments count. */
static void test_fragments(void **state)
{
    (void)state;
    for (size_t m = 0; m < NSPLIT; m++) {
        peer_t s;
        peer_init(&s, CW_WS_SERVER, 0);
        cw_buf_t w = CW_BUF_INIT;
        put_frame(&w, CW_WS_CLIENT, CW_WS_OP_TEXT, false, "caf\xc3", 4);
        put_frame(&w, CW_WS_CLIENT, CW_WS_OP_PING, true, "1", 1);
        put_frame(&w, CW_WS_CLIENT, CW_WS_OP_CONT, false, "", 0);
        put_frame(&w, CW_WS_CLIENT, CW_WS_OP_PONG, true, "2", 1);
        put_frame(&w, CW_WS_CLIENT, CW_WS_OP_PING, true, "3", 1);
        put_frame(&w, CW_WS_CLIENT, CW_WS_OP_CONT, true, "\xa9!", 2);
        /* Empty message made of empty fragments, then an empty unfragmented one. */
        put_frame(&w, CW_WS_CLIENT, CW_WS_OP_BINARY, false, "", 0);
        put_frame(&w, CW_WS_CLIENT, CW_WS_OP_CONT, true, "", 0);
        put_frame(&w, CW_WS_CLIENT, CW_WS_OP_TEXT, true, "", 0);
        /* Empty first fragment then the whole payload in the final one. */
        put_frame(&w, CW_WS_CLIENT, CW_WS_OP_BINARY, false, "", 0);
        put_frame(&w, CW_WS_CLIENT, CW_WS_OP_CONT, true, "xyz", 3);
        assert_int_equal(feed_split(&s, w.data, w.len, split_modes[m]), 0);
        assert_int_equal(s.nmsg, 4);
        assert_int_equal(s.op[0], CW_WS_OP_TEXT);
        assert_int_equal(s.len[0], 6);
        assert_int_equal(s.op[1], CW_WS_OP_BINARY);
        assert_int_equal(s.len[1], 0);
        assert_int_equal(s.op[2], CW_WS_OP_TEXT);
        assert_int_equal(s.len[2], 0);
        assert_int_equal(s.op[3], CW_WS_OP_BINARY);
        assert_int_equal(s.len[3], 3);
        assert_memory_equal(s.data.data, "caf\xc3\xa9!xyz", 9);
        assert_memory_equal(s.sent.data,
                            "\x8A\x01"
                            "1\x8A\x01"
                            "3",
                            6);
        assert_int_equal(s.sent.len, 6);
        assert_int_equal(s.npong, 1);
        assert_memory_equal(s.pong.data, "2", 1);
        cw_buf_free(&w);
        peer_free(&s);
    }
}

/* Zero-copy: a whole frame in one feed is delivered from (and unmasked in) the caller's
 * buffer; several messages in one buffer each are; a split frame is copied. */
static void test_zero_copy(void **state)
{
    (void)state;
    cw_buf_t w = CW_BUF_INIT;
    put_frame(&w, CW_WS_CLIENT, CW_WS_OP_BINARY, true, "first", 5);
    put_frame(&w, CW_WS_CLIENT, CW_WS_OP_TEXT, true, "second", 6);
    size_t first_len = 2 + 4 + 5;
    peer_t s;
    peer_init(&s, CW_WS_SERVER, 0);
    s.feed_lo = w.data;
    s.feed_hi = w.data + w.len;
    assert_int_equal(cw_ws_feed(&s.ws, w.data, w.len), 0);
    assert_int_equal(s.nmsg, 2);
    assert_true(s.in_feed[0]);
    assert_true(s.in_feed[1]);
    /* Unmasked in place: the caller's buffer now holds the plain payloads. */
    assert_memory_equal(w.data + 6, "first", 5);
    assert_memory_equal(w.data + first_len + 6, "second", 6);
    assert_null(s.ws.msg.data); /* nothing was ever buffered */
    peer_free(&s);

    /* The first message whole, the second split: the first is zero-copy, the second not. */
    cw_buf_reset(&w);
    put_frame(&w, CW_WS_SERVER, CW_WS_OP_BINARY, true, "first", 5);
    put_frame(&w, CW_WS_SERVER, CW_WS_OP_BINARY, true, "second", 6);
    peer_t c;
    peer_init(&c, CW_WS_CLIENT, 0);
    size_t cut = 7 + 4;
    c.feed_lo = w.data;
    c.feed_hi = w.data + cut;
    assert_int_equal(cw_ws_feed(&c.ws, w.data, cut), 0);
    c.feed_lo = w.data + cut;
    c.feed_hi = w.data + w.len;
    assert_int_equal(cw_ws_feed(&c.ws, w.data + cut, w.len - cut), 0);
    assert_int_equal(c.nmsg, 2);
    assert_true(c.in_feed[0]);
    assert_false(c.in_feed[1]);
    assert_memory_equal(c.data.data, "firstsecond", 11);
    peer_free(&c);
    cw_buf_free(&w);
}

/* One protocol violation: the bytes, who receives them, what must come out. */
typedef struct violation {
    const char *name;
    cw_ws_role_t receiver;
    int rc;
    int close_code;
} violation_t;

/* Feed `wire` under every split mode to a fresh `receiver` and check the result and the Close
 * sent; afterwards the session is closed and ignores input. */
static void check_violation(const violation_t *v, const cw_buf_t *wire, size_t max_message)
{
    for (size_t m = 0; m < NSPLIT; m++) {
        peer_t p;
        peer_init(&p, v->receiver, max_message);
        int rc = feed_split(&p, wire->data, wire->len, split_modes[m]);
        if (rc != v->rc)
            fail_msg("%s (split %ld): rc %d, want %d", v->name, split_modes[m], rc, v->rc);
        int code = sent_close_code(&p);
        if (code != v->close_code)
            fail_msg("%s (split %ld): close %d, want %d", v->name, split_modes[m], code,
                     v->close_code);
        assert_int_equal(cw_ws_state(&p.ws), CW_WS_CLOSED);
        assert_int_equal(p.nclose, 0);
        assert_null(p.ws.msg.data);
        uint8_t more[] = {0x81, 0x80, 0, 0, 0, 0, 0x81, 0x00};
        assert_int_equal(cw_ws_feed(&p.ws, more, sizeof(more)), CW_ECLOSED);
        assert_int_equal(p.nsend, 1);
        /* A Close was sent already, so cw_ws_close does nothing more. */
        assert_int_equal(cw_ws_close(&p.ws, 1000, "x"), 0);
        assert_int_equal(p.nsend, 1);
        peer_free(&p);
    }
}

/* Every framing violation in the brief, for the role it applies to. */
static void test_violations(void **state)
{
    (void)state;
    cw_buf_t w = CW_BUF_INIT;
    const int EP = CW_EPROTO;
    for (int r = 0; r < 2; r++) {
        cw_ws_role_t rx = r ? CW_WS_SERVER : CW_WS_CLIENT;
        cw_ws_role_t tx = other(rx);
        bool mk = tx == CW_WS_CLIENT;

        /* Each RSV bit, on data and control frames. */
        for (unsigned rsv = 0x10; rsv <= 0x40; rsv <<= 1) {
            cw_buf_reset(&w);
            put_raw(&w, (uint8_t)(0x81 | rsv), mk, "hi", 2);
            check_violation(&(violation_t){"rsv", rx, EP, 1002}, &w, 0);
            cw_buf_reset(&w);
            put_raw(&w, (uint8_t)(0x89 | rsv), mk, "", 0);
            check_violation(&(violation_t){"rsv ping", rx, EP, 1002}, &w, 0);
        }
        /* Every reserved opcode, after a valid message. */
        static const unsigned bad_ops[] = {3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF};
        for (size_t i = 0; i < sizeof(bad_ops) / sizeof(bad_ops[0]); i++) {
            cw_buf_reset(&w);
            put_frame(&w, tx, CW_WS_OP_TEXT, true, "ok", 2);
            put_raw(&w, (uint8_t)(0x80 | bad_ops[i]), mk, "x", 1);
            check_violation(&(violation_t){"opcode", rx, EP, 1002}, &w, 0);
        }
        /* Wrong masking for the role. */
        cw_buf_reset(&w);
        put_raw(&w, 0x82, !mk, "abc", 3);
        check_violation(&(violation_t){"masking", rx, EP, 1002}, &w, 0);
        /* Control frames: > 125 bytes, fragmented. */
        uint8_t big[126] = {0};
        static const unsigned ctl_ops[] = {CW_WS_OP_PING, CW_WS_OP_PONG, CW_WS_OP_CLOSE};
        for (int i = 0; i < 3; i++) {
            cw_buf_reset(&w);
            put_frame(&w, tx, ctl_ops[i], true, big, 126);
            check_violation(&(violation_t){"control > 125", rx, EP, 1002}, &w, 0);
            cw_buf_reset(&w);
            put_frame(&w, tx, ctl_ops[i], false, big, 2);
            check_violation(&(violation_t){"control fragmented", rx, EP, 1002}, &w, 0);
        }
        /* Continuation without a message; a new message inside a fragmented one. */
        cw_buf_reset(&w);
        put_frame(&w, tx, CW_WS_OP_CONT, true, "x", 1);
        check_violation(&(violation_t){"lone continuation", rx, EP, 1002}, &w, 0);
        cw_buf_reset(&w);
        put_frame(&w, tx, CW_WS_OP_TEXT, true, "done", 4);
        put_frame(&w, tx, CW_WS_OP_CONT, false, "x", 1);
        check_violation(&(violation_t){"continuation after final", rx, EP, 1002}, &w, 0);
        for (unsigned op = 1; op <= 2; op++) {
            cw_buf_reset(&w);
            put_frame(&w, tx, CW_WS_OP_BINARY, false, "a", 1);
            put_frame(&w, tx, CW_WS_OP_PONG, true, "", 0);
            put_frame(&w, tx, op, true, "b", 1);
            check_violation(&(violation_t){"interleaved message", rx, EP, 1002}, &w, 0);
        }
        /* 64-bit length with the top bit set; non-minimal 16- and 64-bit lengths. */
        uint8_t h[14] = {0x82, (uint8_t)((mk ? 0x80 : 0) | 127), 0x80, 0, 0, 0, 0, 0, 0, 5};
        cw_buf_reset(&w);
        cw_buf_append(&w, h, mk ? 14 : 10);
        check_violation(&(violation_t){"length top bit", rx, EP, 1002}, &w, 0);
        uint8_t h16[8] = {0x82, (uint8_t)((mk ? 0x80 : 0) | 126), 0, 125};
        cw_buf_reset(&w);
        cw_buf_append(&w, h16, mk ? 8 : 4);
        cw_buf_append(&w, big, 125);
        check_violation(&(violation_t){"non-minimal 16", rx, EP, 1002}, &w, 0);
        uint8_t h64[14] = {0x82, (uint8_t)((mk ? 0x80 : 0) | 127), 0, 0, 0, 0, 0, 0, 0xFF, 0xFF};
        cw_buf_reset(&w);
        cw_buf_append(&w, h64, mk ? 14 : 10);
        check_violation(&(violation_t){"non-minimal 64", rx, EP, 1002}, &w, 0);

        /* Invalid UTF-8 text: whole, fragmented, truncated at the end, surrogate,
         * overlong, above U+10FFFF. */
        static const char *bad_text[] = {"\xff", "ok\xc3", "\xed\xa0\x80", "\xc0\xaf",
                                         "\xf4\x90\x80\x80"};
        for (int i = 0; i < 5; i++) {
            cw_buf_reset(&w);
            put_frame(&w, tx, CW_WS_OP_TEXT, true, bad_text[i], strlen(bad_text[i]));
            check_violation(&(violation_t){"bad utf-8", rx, EP, 1007}, &w, 0);
            cw_buf_reset(&w);
            put_frame(&w, tx, CW_WS_OP_TEXT, false, "fine", 4);
            put_frame(&w, tx, CW_WS_OP_CONT, true, bad_text[i], strlen(bad_text[i]));
            check_violation(&(violation_t){"bad utf-8 fragmented", rx, EP, 1007}, &w, 0);
        }
        /* Binary is not checked. */
        peer_t p;
        peer_init(&p, rx, 0);
        cw_buf_reset(&w);
        put_frame(&w, tx, CW_WS_OP_BINARY, true, "\xff", 1);
        assert_int_equal(feed_split(&p, w.data, w.len, SPLIT_WHOLE), 0);
        assert_int_equal(p.nmsg, 1);
        peer_free(&p);

        /* Close: 1-byte payload, invalid codes, invalid reason. */
        cw_buf_reset(&w);
        put_frame(&w, tx, CW_WS_OP_CLOSE, true, "\x03", 1);
        check_violation(&(violation_t){"close len 1", rx, EP, 1002}, &w, 0);
        static const int bad_codes[] = {0,    999,  1004, 1005, 1006, 1012, 1013, 1014,
                                        1015, 1016, 1100, 2000, 2999, 5000, 65535};
        for (size_t i = 0; i < sizeof(bad_codes) / sizeof(bad_codes[0]); i++) {
            cw_buf_reset(&w);
            put_close(&w, tx, bad_codes[i], "");
            check_violation(&(violation_t){"close code", rx, EP, 1002}, &w, 0);
        }
        cw_buf_reset(&w);
        put_close(&w, tx, 1000, "bad \xc3");
        check_violation(&(violation_t){"close reason", rx, EP, 1007}, &w, 0);
    }
    cw_buf_free(&w);
}

/* max_message: refused on the declared length, before any byte is buffered. */
static void test_max_message(void **state)
{
    (void)state;
    cw_buf_t w = CW_BUF_INIT;
    for (int r = 0; r < 2; r++) {
        cw_ws_role_t rx = r ? CW_WS_SERVER : CW_WS_CLIENT;
        cw_ws_role_t tx = other(rx);
        bool mk = tx == CW_WS_CLIENT;

        /* A header alone declaring 2^40 bytes, no payload. */
        uint8_t h[CW_WS_MAX_HEADER];
        size_t hn = cw_ws_frame_header(h, CW_WS_OP_BINARY, true, 1ull << 40,
                                       mk ? (const uint8_t *)"kkkk" : NULL);
        cw_buf_reset(&w);
        cw_buf_append(&w, h, hn);
        check_violation(&(violation_t){"2^40 header", rx, CW_ETOOBIG, 1009}, &w, 1024);
        /* ... and with the default limit (64 MiB) too. */
        check_violation(&(violation_t){"2^40 header", rx, CW_ETOOBIG, 1009}, &w, 0);

        /* Exactly max_message passes, one more byte does not. */
        uint8_t buf[1025];
        fill(buf, sizeof(buf), false, 1);
        peer_t p;
        peer_init(&p, rx, 1024);
        cw_buf_reset(&w);
        put_frame(&w, tx, CW_WS_OP_BINARY, true, buf, 1024);
        assert_int_equal(feed_split(&p, w.data, w.len, SPLIT_BYTES), 0);
        assert_int_equal(p.nmsg, 1);
        peer_free(&p);
        cw_buf_reset(&w);
        put_frame(&w, tx, CW_WS_OP_BINARY, true, buf, 1025);
        check_violation(&(violation_t){"1025 > 1024", rx, CW_ETOOBIG, 1009}, &w, 1024);

        /* Fragmented: 600 buffered + 600 declared > 1024, refused at the second header. */
        for (size_t m = 0; m < NSPLIT; m++) {
            cw_buf_reset(&w);
            put_frame(&w, tx, CW_WS_OP_BINARY, false, buf, 600);
            size_t first = w.len;
            put_frame(&w, tx, CW_WS_OP_CONT, true, buf, 600);
            peer_init(&p, rx, 1024);
            assert_int_equal(feed_split(&p, w.data, first, split_modes[m]), 0);
            assert_int_equal(p.ws.msg.len, 600);
            /* Only the next header: refused with no payload seen. */
            size_t hlen = 4 + (mk ? 4 : 0);
            assert_int_equal(feed_split(&p, w.data + first, hlen, split_modes[m]), CW_ETOOBIG);
            assert_int_equal(sent_close_code(&p), 1009);
            assert_int_equal(p.nmsg, 0);
            peer_free(&p);
        }
        /* 424 more after 600 is exactly the limit. */
        cw_buf_reset(&w);
        put_frame(&w, tx, CW_WS_OP_BINARY, false, buf, 600);
        put_frame(&w, tx, CW_WS_OP_PING, true, "", 0);
        put_frame(&w, tx, CW_WS_OP_CONT, true, buf + 600, 424);
        for (size_t m = 0; m < NSPLIT; m++) {
            peer_init(&p, rx, 1024);
            assert_int_equal(feed_split(&p, w.data, w.len, split_modes[m]), 0);
            assert_int_equal(p.nmsg, 1);
            assert_int_equal(p.len[0], 1024);
            assert_memory_equal(p.data.data, buf, 1024);
            peer_free(&p);
        }
        /* Control frames are not counted against max_message. */
        peer_init(&p, rx, 1);
        cw_buf_reset(&w);
        put_frame(&w, tx, CW_WS_OP_PING, true, buf, 100);
        assert_int_equal(feed_split(&p, w.data, w.len, SPLIT_WHOLE), 0);
        assert_int_equal(p.nsend, 1);
        peer_free(&p);
    }
    cw_buf_free(&w);
}

/* The peer closes: code and reason reported, code echoed, CW_ECLOSED, input ignored after. */
static void test_close_by_peer(void **state)
{
    (void)state;
    static const int good[] = {1000, 1001, 1002, 1003, 1007, 1008, 1009,
                               1010, 1011, 3000, 3999, 4000, 4999};
    for (int r = 0; r < 2; r++) {
        cw_ws_role_t rx = r ? CW_WS_SERVER : CW_WS_CLIENT;
        for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
            for (size_t m = 0; m < NSPLIT; m++) {
                peer_t p;
                peer_init(&p, rx, 0);
                cw_buf_t w = CW_BUF_INIT;
                put_frame(&w, other(rx), CW_WS_OP_TEXT, true, "last", 4);
                put_close(&w, other(rx), good[i], "bye \xe2\x82\xac");
                /* Anything after the Close is ignored. */
                put_frame(&w, other(rx), CW_WS_OP_TEXT, true, "ignored", 7);
                assert_int_equal(feed_split(&p, w.data, w.len, split_modes[m]), CW_ECLOSED);
                assert_int_equal(p.nmsg, 1);
                assert_int_equal(p.nclose, 1);
                assert_int_equal(p.close_code, good[i]);
                assert_int_equal(p.reason_len, 7);
                assert_memory_equal(p.reason, "bye \xe2\x82\xac", 7);
                /* The echo: same code, no reason. */
                size_t pos = 0;
                sent_frame_t f = next_sent(&p, &pos);
                assert_int_equal(pos, p.sent.len);
                assert_int_equal(f.b0, 0x88);
                assert_int_equal(f.len, 2);
                assert_int_equal(f.payload[0] << 8 | f.payload[1], good[i]);
                assert_int_equal(cw_ws_state(&p.ws), CW_WS_CLOSED);
                assert_int_equal(cw_ws_feed(&p.ws, w.data, w.len), CW_ECLOSED);
                assert_int_equal(cw_ws_close(&p.ws, 1000, "late"), 0);
                assert_int_equal(cw_ws_ping(&p.ws, NULL, 0), CW_ECLOSED);
                assert_int_equal(p.nsend, 1);
                cw_buf_free(&w);
                peer_free(&p);
            }
        }
    }

    /* A Close without a status: reported as 1005, echoed as an empty Close. */
    peer_t s;
    peer_init(&s, CW_WS_SERVER, 0);
    static const uint8_t empty_close[] = {0x88, 0x80, 9, 9, 9, 9};
    uint8_t buf[sizeof(empty_close)];
    memcpy(buf, empty_close, sizeof(buf));
    assert_int_equal(cw_ws_feed(&s.ws, buf, sizeof(buf)), CW_ECLOSED);
    assert_int_equal(s.close_code, CW_WS_CLOSE_NO_STATUS);
    assert_int_equal(s.reason_len, 0);
    assert_int_equal(s.sent.len, 2);
    assert_memory_equal(s.sent.data, "\x88\x00", 2);
    peer_free(&s);

    /* The peer's Close mid-way through a fragmented message: the fragment is dropped. */
    peer_init(&s, CW_WS_SERVER, 0);
    cw_buf_t w = CW_BUF_INIT;
    put_frame(&w, CW_WS_CLIENT, CW_WS_OP_BINARY, false, "part", 4);
    put_close(&w, CW_WS_CLIENT, 1001, "");
    assert_int_equal(feed_split(&s, w.data, w.len, SPLIT_BYTES), CW_ECLOSED);
    assert_int_equal(s.nmsg, 0);
    assert_int_equal(s.close_code, 1001);
    assert_memory_equal(s.sent.data, "\x88\x02\x03\xe9", 4);
    cw_buf_free(&w);
    peer_free(&s);
}

/* We close first: our Close bytes, then the peer's Close completes the handshake; data in
 * between is dropped and pings are not answered. */
static void test_close_by_us(void **state)
{
    (void)state;
    /* Server role: exact bytes. */
    for (size_t m = 0; m < NSPLIT; m++) {
        peer_t s;
        peer_init(&s, CW_WS_SERVER, 0);
        assert_int_equal(cw_ws_close(&s.ws, 1001, "going away"), 0);
        assert_int_equal(s.sent.len, 14);
        assert_memory_equal(s.sent.data, "\x88\x0c\x03\xe9going away", 14);
        assert_int_equal(cw_ws_state(&s.ws), CW_WS_CLOSING);
        /* Only once. */
        assert_int_equal(cw_ws_close(&s.ws, 1000, NULL), 0);
        assert_int_equal(s.nsend, 1);

        cw_buf_t w = CW_BUF_INIT;
        put_frame(&w, CW_WS_CLIENT, CW_WS_OP_TEXT, true, "dropped", 7);
        put_frame(&w, CW_WS_CLIENT, CW_WS_OP_BINARY, false, "dro", 3);
        put_frame(&w, CW_WS_CLIENT, CW_WS_OP_PING, true, "no answer", 9);
        put_frame(&w, CW_WS_CLIENT, CW_WS_OP_PONG, true, "seen", 4);
        put_frame(&w, CW_WS_CLIENT, CW_WS_OP_CONT, true, "pped", 4);
        /* Text is not even checked once dropped. */
        put_frame(&w, CW_WS_CLIENT, CW_WS_OP_TEXT, true, "\xff", 1);
        put_close(&w, CW_WS_CLIENT, 1001, "ok");
        assert_int_equal(feed_split(&s, w.data, w.len, split_modes[m]), CW_ECLOSED);
        assert_int_equal(s.nmsg, 0);
        assert_int_equal(s.npong, 1);
        assert_int_equal(s.nclose, 1);
        assert_int_equal(s.close_code, 1001);
        assert_int_equal(s.reason_len, 2);
        assert_int_equal(s.nsend, 1); /* no second Close, no pong */
        assert_int_equal(cw_ws_state(&s.ws), CW_WS_CLOSED);
        cw_buf_free(&w);
        peer_free(&s);
    }

    /* Client role: the Close is masked; unmask and check code and reason. */
    peer_t c;
    peer_init(&c, CW_WS_CLIENT, 0);
    assert_int_equal(cw_ws_close(&c.ws, 1000, "done"), 0);
    size_t pos = 0;
    sent_frame_t f = next_sent(&c, &pos);
    assert_int_equal(f.b0, 0x88);
    assert_int_equal(f.len, 6);
    assert_memory_equal(f.payload,
                        "\x03\xe8"
                        "done",
                        6);
    static const uint8_t reply[] = {0x88, 0x02, 0x03, 0xe8};
    uint8_t buf[4];
    memcpy(buf, reply, 4);
    assert_int_equal(cw_ws_feed(&c.ws, buf, 4), CW_ECLOSED);
    assert_int_equal(c.close_code, 1000);
    assert_int_equal(c.nsend, 1);
    peer_free(&c);

    /* Errors while closing end the session without a second Close. */
    peer_t s;
    peer_init(&s, CW_WS_SERVER, 0);
    assert_int_equal(cw_ws_close(&s.ws, 1000, NULL), 0);
    assert_memory_equal(s.sent.data, "\x88\x02\x03\xe8", 4);
    static const uint8_t rsv[] = {0xC1, 0x80, 0, 0, 0, 0};
    memcpy(buf, rsv, 4);
    assert_int_equal(cw_ws_feed(&s.ws, buf, 2), CW_EPROTO);
    assert_int_equal(s.nsend, 1);
    assert_int_equal(cw_ws_state(&s.ws), CW_WS_CLOSED);
    peer_free(&s);

    /* on_message may start the close; the rest of the buffer is then parsed as closing. */
    peer_init(&s, CW_WS_SERVER, 0);
    s.close_at = 1000;
    cw_buf_t w = CW_BUF_INIT;
    put_frame(&w, CW_WS_CLIENT, CW_WS_OP_TEXT, true, "one", 3);
    put_frame(&w, CW_WS_CLIENT, CW_WS_OP_TEXT, true, "two", 3);
    put_close(&w, CW_WS_CLIENT, 1000, "");
    assert_int_equal(feed_split(&s, w.data, w.len, SPLIT_WHOLE), CW_ECLOSED);
    assert_int_equal(s.nmsg, 1);
    assert_int_equal(s.nsend, 1);
    assert_memory_equal(s.sent.data,
                        "\x88\x08\x03\xe8"
                        "enough",
                        10);
    cw_buf_free(&w);
    peer_free(&s);
}

/* A long reason is cut to 123 bytes, never inside a UTF-8 sequence. */
static void test_close_reason_truncated(void **state)
{
    (void)state;
    char reason[200];
    memset(reason, 'a', sizeof(reason));
    reason[sizeof(reason) - 1] = '\0';
    peer_t s;
    peer_init(&s, CW_WS_SERVER, 0);
    assert_int_equal(cw_ws_close(&s.ws, 1000, reason), 0);
    assert_int_equal(s.sent.len, 2 + 125);
    assert_int_equal(s.sent.data[1], 125);
    peer_free(&s);

    /* A 3-byte sequence at 121..123 would be cut after 2 bytes: the whole of it goes. */
    memcpy(reason + 121, "\xe2\x82\xac", 3);
    peer_init(&s, CW_WS_SERVER, 0);
    assert_int_equal(cw_ws_close(&s.ws, 1000, reason), 0);
    assert_int_equal(s.sent.data[1], 2 + 121);
    assert_true(cw_utf8_valid(s.sent.data + 4, 121));
    peer_free(&s);

    /* Ending exactly at 123 it stays. */
    memcpy(reason + 120, "\xe2\x82\xac", 3);
    reason[123] = 'b';
    peer_init(&s, CW_WS_SERVER, 0);
    assert_int_equal(cw_ws_close(&s.ws, 1000, reason), 0);
    assert_int_equal(s.sent.data[1], 125);
    assert_true(cw_utf8_valid(s.sent.data + 4, 123));
    peer_free(&s);
}

/* on_message's error stops the feed at once and ends the session, nothing sent; the caller can
 * then send its own Close. on_send's error for a pong is returned. */
static void test_callback_errors(void **state)
{
    (void)state;
    cw_buf_t w = CW_BUF_INIT;
    put_frame(&w, CW_WS_CLIENT, CW_WS_OP_TEXT, true, "a", 1);
    put_frame(&w, CW_WS_CLIENT, CW_WS_OP_TEXT, true, "b", 1);
    for (size_t m = 0; m < NSPLIT; m++) {
        peer_t s;
        peer_init(&s, CW_WS_SERVER, 0);
        s.msg_rc = CW_EBADMSG;
        assert_int_equal(feed_split(&s, w.data, w.len, split_modes[m]), CW_EBADMSG);
        assert_int_equal(s.nmsg, 1);
        assert_int_equal(s.nsend, 0);
        assert_int_equal(cw_ws_state(&s.ws), CW_WS_CLOSED);
        assert_int_equal(cw_ws_feed(&s.ws, w.data, 1), CW_ECLOSED);
        assert_int_equal(cw_ws_close(&s.ws, 1011, NULL), 0);
        assert_memory_equal(s.sent.data, "\x88\x02\x03\xf3", 4);
        peer_free(&s);
    }
    cw_buf_reset(&w);
    put_frame(&w, CW_WS_CLIENT, CW_WS_OP_PING, true, "p", 1);
    put_frame(&w, CW_WS_CLIENT, CW_WS_OP_TEXT, true, "b", 1);
    peer_t s;
    peer_init(&s, CW_WS_SERVER, 0);
    s.send_rc = -EPIPE;
    assert_int_equal(feed_split(&s, w.data, w.len, SPLIT_WHOLE), -EPIPE);
    assert_int_equal(s.nmsg, 0);
    assert_int_equal(cw_ws_state(&s.ws), CW_WS_CLOSED);
    peer_free(&s);

    /* cw_ws_close passes on_send's error back. */
    peer_init(&s, CW_WS_SERVER, 0);
    s.send_rc = -EPIPE;
    assert_int_equal(cw_ws_close(&s.ws, 1000, NULL), -EPIPE);
    assert_int_equal(cw_ws_ping(&s.ws, NULL, 0), CW_ECLOSED);
    peer_free(&s);
    cw_buf_free(&w);
}

/* cw_ws_encode: a server's header is plain, a client's carries the key that unmasks it. */
static void test_encode(void **state)
{
    (void)state;
    peer_t s, c;
    peer_init(&s, CW_WS_SERVER, 0);
    peer_init(&c, CW_WS_CLIENT, 0);
    uint8_t hdr[CW_WS_MAX_HEADER];
    uint8_t p[300];
    memset(p, 'z', sizeof(p));
    assert_int_equal(cw_ws_encode(&s.ws, CW_WS_OP_BINARY, p, 300, hdr), 4);
    assert_memory_equal(hdr, "\x82\x7e\x01\x2c", 4);
    assert_int_equal(p[0], 'z');
    assert_int_equal(cw_ws_encode(&c.ws, CW_WS_OP_TEXT, p, 300, hdr), 8);
    assert_memory_equal(hdr, "\x81\xfe\x01\x2c", 4);
    cw_ws_mask(p, 300, hdr + 4, 0);
    for (int i = 0; i < 300; i++)
        assert_int_equal(p[i], 'z');
    assert_int_equal(cw_ws_encode(&c.ws, CW_WS_OP_BINARY, NULL, 0, hdr), 6);
    assert_memory_equal(hdr, "\x82\x80", 2);
    /* Empty feeds are harmless anywhere, also in the middle of a payload. */
    assert_int_equal(cw_ws_feed(&c.ws, NULL, 0), 0);
    uint8_t part[] = {0x82, 0x03, 'a'};
    assert_int_equal(cw_ws_feed(&c.ws, part, sizeof(part)), 0);
    assert_int_equal(cw_ws_feed(&c.ws, NULL, 0), 0);
    uint8_t rest[] = {'b', 'c'};
    assert_int_equal(cw_ws_feed(&c.ws, rest, sizeof(rest)), 0);
    assert_int_equal(c.nmsg, 1);
    assert_memory_equal(c.data.data, "abc", 3);
    peer_free(&s);
    peer_free(&c);
    cw_ws_free(NULL);
}

/* A large message arriving in pieces leaves no big buffer behind once delivered. */
/* cw_ws_take_message: a message assembled from pieces hands its storage over
 * (no copy for a receiver that keeps it); the next one is assembled in fresh
 * memory; a message that lay in the fed buffer has none to hand over.  Under
 * ASan/valgrind a use of the taken storage by the session is an error. */
static void test_take_message(void **state)
{
    (void)state;
    size_t n = 300000;
    uint8_t *big = malloc(n);
    assert_non_null(big);
    fill(big, n, false, 5);
    cw_buf_t w = CW_BUF_INIT;
    put_frame(&w, CW_WS_CLIENT, CW_WS_OP_BINARY, true, big, n);
    put_frame(&w, CW_WS_CLIENT, CW_WS_OP_BINARY, true, "small", 5);
    put_frame(&w, CW_WS_CLIENT, CW_WS_OP_BINARY, true, big, n / 2);
    put_frame(&w, CW_WS_CLIENT, CW_WS_OP_BINARY, false, "frag", 4);
    put_frame(&w, CW_WS_CLIENT, CW_WS_OP_CONT, true, "ments", 5);
    peer_t s;
    peer_init(&s, CW_WS_SERVER, 0);
    s.take = true;
    /* in random pieces (of at most a few KiB): the big ones arrive in several */
    assert_int_equal(feed_split(&s, w.data, w.len, 65536), 0);
    assert_int_equal(s.nmsg, 4);
    assert_true(s.ntaken >= 3); /* both big ones and the fragmented one */
    assert_memory_equal(s.data.data, big, n);
    assert_memory_equal(s.data.data + n, "small", 5);
    assert_memory_equal(s.data.data + n + 5, big, n / 2);
    assert_memory_equal(s.data.data + n + 5 + n / 2, "fragments", 9);
    /* outside on_message there is nothing to take */
    size_t tlen;
    assert_null(cw_ws_take_message(&s.ws, &tlen));
    peer_free(&s);
    cw_buf_free(&w);
    free(big);
}

static void test_buffer_released(void **state)
{
    (void)state;
    size_t n = 3 << 20;
    uint8_t *big = malloc(n);
    assert_non_null(big);
    fill(big, n, false, 3);
    cw_buf_t w = CW_BUF_INIT;
    put_frame(&w, CW_WS_SERVER, CW_WS_OP_BINARY, true, big, n);
    put_frame(&w, CW_WS_SERVER, CW_WS_OP_BINARY, false, "s", 1);
    put_frame(&w, CW_WS_SERVER, CW_WS_OP_CONT, true, "m", 1);
    peer_t c;
    peer_init(&c, CW_WS_CLIENT, 0);
    assert_int_equal(feed_split(&c, w.data, w.len, 7), 0);
    assert_int_equal(c.nmsg, 2);
    assert_memory_equal(c.data.data, big, n);
    assert_true(c.ws.msg.cap <= (1 << 20));
    peer_free(&c);
    cw_buf_free(&w);
    free(big);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rfc_examples),
        cmocka_unit_test(test_ping_pong_bytes),
        cmocka_unit_test(test_ping_send),
        cmocka_unit_test(test_mask_offsets),
        cmocka_unit_test(test_mask_copy),
        cmocka_unit_test(test_premask),
        cmocka_unit_test(test_roundtrip_client_to_server),
        cmocka_unit_test(test_roundtrip_server_to_client),
        cmocka_unit_test(test_stream_mixed),
        cmocka_unit_test(test_fragments),
        cmocka_unit_test(test_zero_copy),
        cmocka_unit_test(test_violations),
        cmocka_unit_test(test_max_message),
        cmocka_unit_test(test_close_by_peer),
        cmocka_unit_test(test_close_by_us),
        cmocka_unit_test(test_close_reason_truncated),
        cmocka_unit_test(test_callback_errors),
        cmocka_unit_test(test_encode),
        cmocka_unit_test(test_buffer_released),
        cmocka_unit_test(test_take_message),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
