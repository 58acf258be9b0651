/* Unit tests for the tunnel codec and session (src/proto/tunnel.c), sans-I/O.
 *
 * Frame streams are decoded whole, one byte at a time and in random splits with fixed seeds and
 * must give the same events.  Sessions are run in pairs over an in-memory link that can be cut at
 * any byte; after every cut the client resumes and both ends must have received exactly the
 * bytes the other wrote: no gap, no duplicate. */
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "cworker/buf.h"
#include "cworker/cw.h"
#include "cworker/tunnel.h"

/* xorshift64*: small, seeded, reproducible. */
static uint64_t rnd(uint64_t *s)
{
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 0x2545F4914F6CDD1Du;
}

enum { SPLIT_WHOLE = -1, SPLIT_BYTES = 0 };
static const long split_modes[] = {SPLIT_WHOLE, SPLIT_BYTES, 1, 2, 3, 42, 1234567};
#define NSPLIT (sizeof(split_modes) / sizeof(split_modes[0]))

/* Next piece length for a split mode. */
static size_t piece(long mode, uint64_t *s, size_t left)
{
    if (mode == SPLIT_WHOLE)
        return left;
    if (mode == SPLIT_BYTES)
        return left ? 1 : 0;
    uint64_t x = rnd(s);
    size_t caps[] = {1, 4, 13, 100, 5000, 70000};
    size_t n = (size_t)((x >> 8) % caps[x % 6]) + 1;
    return n < left ? n : left;
}

/* A deterministic test stream byte. */
static uint8_t stream_byte(uint64_t pos, unsigned salt)
{
    uint64_t x = pos * 0x9E3779B97F4A7C15u + salt;
    x ^= x >> 29;
    return (uint8_t)(x * 0xBF58476D1CE4E5B9u >> 56);
}

/* ---- codec ------------------------------------------------------------- */

/* Decoded events, normalised: DATA pieces of one frame are joined. */
typedef struct evlog {
    cw_buf_t text; /* one line per event */
    int rc;
    size_t consumed;
} evlog_t;

static void log_frame(evlog_t *l, const cw_tun_frame_t *f, cw_buf_t *data_acc, uint64_t *data_off)
{
    switch (f->type) {
    case CW_TUN_DATA:
        if (data_acc->len == 0)
            *data_off = f->value;
        else
            assert_int_equal(f->value, *data_off + data_acc->len);
        assert_true(f->len > 0);
        assert_int_equal(cw_buf_append(data_acc, f->data, f->len), 0);
        if (f->last) {
            cw_buf_printf(&l->text, "DATA %llu %zu:", (unsigned long long)*data_off, data_acc->len);
            for (size_t i = 0; i < data_acc->len; i++)
                cw_buf_printf(&l->text, "%02x", data_acc->data[i]);
            cw_buf_append_str(&l->text, "\n");
            cw_buf_reset(data_acc);
        }
        break;
    case CW_TUN_HELLO:
        cw_buf_printf(&l->text, "HELLO v%u r%d b%u id%llx rcv%llu tok%02x%02x seq%u\n",
                      f->hello.version, f->hello.resume, f->hello.buffer,
                      (unsigned long long)f->hello.id, (unsigned long long)f->hello.received,
                      f->hello.token[0], f->hello.token[15], f->hello.link_seq);
        break;
    case CW_TUN_WELCOME:
        cw_buf_printf(&l->text, "WELCOME v%u r%d b%u w%u id%llx rcv%llu tok%02x%02x\n",
                      f->welcome.version, f->welcome.resumed, f->welcome.buffer, f->welcome.window,
                      (unsigned long long)f->welcome.id, (unsigned long long)f->welcome.received,
                      f->welcome.token[0], f->welcome.token[15]);
        break;
    case CW_TUN_REFUSE:
    case CW_TUN_ABORT:
        cw_buf_printf(&l->text, "%s %u '%.*s'\n", f->type == CW_TUN_REFUSE ? "REFUSE" : "ABORT",
                      f->reason, (int)f->len, (const char *)f->data);
        break;
    default:
        cw_buf_printf(&l->text, "T%02x %llu\n", f->type, (unsigned long long)f->value);
        break;
    }
}

/* Decode `in` split by `mode`; the log gets every event and the final result. */
static void decode_split(const uint8_t *in, size_t len, long mode, evlog_t *l)
{
    cw_tun_dec_t d;
    cw_tun_dec_init(&d);
    memset(l, 0, sizeof *l);
    cw_buf_t acc = CW_BUF_INIT;
    uint64_t acc_off = 0, seed = (uint64_t)mode * 7919 + 1;
    size_t pos = 0;
    int rc = 0;
    while (pos < len && rc >= 0) {
        size_t n = piece(mode, &seed, len - pos);
        /* an exact-size copy so a read past the piece is an error under ASan/valgrind */
        uint8_t *p = malloc(n);
        memcpy(p, in + pos, n);
        size_t off = 0;
        for (;;) {
            size_t used;
            cw_tun_frame_t f;
            rc = cw_tun_dec_feed(&d, p + off, n - off, &used, &f);
            assert_true(used <= n - off);
            off += used;
            if (rc <= 0)
                break;
            log_frame(l, &f, &acc, &acc_off);
        }
        if (rc == 0)
            assert_int_equal(off, n); /* "needs more" only when all was consumed */
        free(p);
        pos += off;
    }
    l->rc = rc;
    l->consumed = pos;
    cw_buf_printf(&l->text, "END %d\n", rc);
    cw_buf_free(&acc);
}

/* Decode in every split mode; all must agree.  Returns the whole-mode log (caller frees). */
static evlog_t decode_all(const uint8_t *in, size_t len)
{
    evlog_t ref;
    decode_split(in, len, SPLIT_WHOLE, &ref);
    for (size_t m = 1; m < NSPLIT; m++) {
        evlog_t l;
        decode_split(in, len, split_modes[m], &l);
        assert_int_equal(l.rc, ref.rc);
        assert_int_equal(l.consumed, ref.consumed);
        assert_int_equal(l.text.len, ref.text.len);
        assert_memory_equal(l.text.data, ref.text.data, ref.text.len);
        cw_buf_free(&l.text);
    }
    return ref;
}

/* A stream of every frame type, decoded the same under every split. */
static void test_codec_roundtrip(void **state)
{
    (void)state;
    cw_buf_t w = CW_BUF_INIT;
    uint8_t fr[CW_TUN_TEXT_FRAME];
    cw_tun_hello_t h = {.version = 1,
                        .resume = true,
                        .buffer = 65536,
                        .id = 0x1122334455667788u,
                        .received = 123456789012u,
                        .link_seq = 0xFEDCBA98u};
    for (int i = 0; i < CW_TUN_TOKEN_LEN; i++)
        h.token[i] = (uint8_t)(0xA0 + i);
    cw_buf_append(&w, fr, cw_tun_enc_hello(fr, &h));
    cw_tun_welcome_t we = {.version = 1,
                           .resumed = true,
                           .buffer = 1 << 20,
                           .window = 600,
                           .id = h.id,
                           .received = 77};
    memcpy(we.token, h.token, sizeof we.token);
    cw_buf_append(&w, fr, cw_tun_enc_welcome(fr, &we));
    /* DATA frames of several sizes, the largest allowed among them */
    uint64_t off = 77;
    size_t sizes[] = {1, 2, 13, 1000, CW_TUN_SEND_DATA, CW_TUN_MAX_DATA, 3};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        cw_buf_append(&w, fr, cw_tun_enc_data_header(fr, off, sizes[k]));
        for (size_t i = 0; i < sizes[k]; i++) {
            uint8_t b = stream_byte(off + i, 1);
            cw_buf_append(&w, &b, 1);
        }
        off += sizes[k];
    }
    cw_buf_append(&w, fr, cw_tun_enc_u64(fr, CW_TUN_ACK, 5));
    cw_buf_append(&w, fr, cw_tun_enc_u64(fr, CW_TUN_PING, UINT64_MAX));
    cw_buf_append(&w, fr, cw_tun_enc_u64(fr, CW_TUN_PONG, 0));
    cw_buf_append(&w, fr, cw_tun_enc_u64(fr, CW_TUN_FIN, off));
    cw_buf_append(&w, fr, cw_tun_enc_reason(fr, CW_TUN_REFUSE, CW_TUN_R_BAD_TOKEN, "nope"));
    cw_buf_append(&w, fr, cw_tun_enc_reason(fr, CW_TUN_ABORT, CW_TUN_R_CLOSED, ""));
    char longtext[300];
    memset(longtext, 'x', sizeof longtext - 1);
    longtext[sizeof longtext - 1] = '\0';
    size_t n = cw_tun_enc_reason(fr, CW_TUN_ABORT, CW_TUN_R_INTERNAL, longtext);
    assert_int_equal(n, CW_TUN_HEADER + 1 + CW_TUN_MAX_TEXT); /* cut, not overflowed */
    cw_buf_append(&w, fr, n);

    evlog_t l = decode_all(w.data, w.len);
    assert_int_equal(l.rc, 0);
    assert_int_equal(l.consumed, w.len);
    const char *s = (const char *)l.text.data;
    assert_non_null(
        strstr(s, "HELLO v1 r1 b65536 id1122334455667788 rcv123456789012 toka0af seq4275878552\n"));
    assert_non_null(strstr(s, "WELCOME v1 r1 b1048576 w600 id1122334455667788 rcv77 toka0af\n"));
    assert_non_null(strstr(s, "DATA 77 1:"));
    assert_non_null(strstr(s, "DATA 93 1000:"));
    assert_non_null(strstr(s, "T11 5\nT12 18446744073709551615\nT13 0\n"));
    assert_non_null(strstr(s, "REFUSE 3 'nope'\nABORT 9 ''\nABORT 10 'xxx"));
    size_t lines = 0;
    for (size_t i = 0; i < l.text.len; i++)
        lines += l.text.data[i] == '\n';
    assert_int_equal(lines, 2 + 7 + 4 + 3 + 1);
    cw_buf_free(&l.text);
    cw_buf_free(&w);
}

/* Expect the decoder to fail, having consumed exactly `at` bytes. */
static void expect_fail(const uint8_t *in, size_t len, size_t at, const char *why)
{
    evlog_t l = decode_all(in, len);
    assert_int_equal(l.rc, CW_EPROTO);
    assert_int_equal(l.consumed, at);
    cw_buf_free(&l.text);
    cw_tun_dec_t d;
    cw_tun_dec_init(&d);
    size_t used;
    cw_tun_frame_t f;
    int rc;
    size_t pos = 0;
    while ((rc = cw_tun_dec_feed(&d, in + pos, len - pos, &used, &f)) == 1)
        pos += used;
    assert_int_equal(rc, CW_EPROTO);
    assert_non_null(cw_tun_dec_error(&d));
    assert_non_null(strstr(cw_tun_dec_error(&d), why));
    /* stays failed */
    assert_int_equal(cw_tun_dec_feed(&d, in, 1, &used, &f), CW_EPROTO);
}

/* Lengths are judged at the header, before any payload byte is taken. */
static void test_codec_limits(void **state)
{
    (void)state;
    uint8_t b[CW_TUN_HEADER + 8 + 16] = {0};
    /* DATA one byte over the limit: refused after its 5 header bytes */
    b[0] = CW_TUN_DATA;
    uint32_t big = 8 + CW_TUN_MAX_DATA + 1;
    b[1] = (uint8_t)(big >> 24), b[2] = (uint8_t)(big >> 16), b[3] = (uint8_t)(big >> 8),
    b[4] = (uint8_t)big;
    expect_fail(b, sizeof b, 5, "size limit");
    /* a 4 GiB length likewise */
    memset(b + 1, 0xFF, 4);
    expect_fail(b, sizeof b, 5, "size limit");
    /* DATA without data */
    memset(b, 0, sizeof b);
    b[0] = CW_TUN_DATA, b[4] = 8;
    expect_fail(b, sizeof b, 5, "without data");
    /* ACK of 7 or 9 bytes */
    b[0] = CW_TUN_ACK, b[4] = 7;
    expect_fail(b, sizeof b, 5, "bad length");
    b[4] = 9;
    expect_fail(b, sizeof b, 5, "bad length");
    /* REFUSE empty or too long */
    b[0] = CW_TUN_REFUSE, b[4] = 0;
    expect_fail(b, sizeof b, 5, "bad length");
    b[3] = 0, b[4] = 202;
    expect_fail(b, sizeof b, 5, "bad length");
    /* unknown type */
    memset(b, 0, sizeof b);
    b[0] = 0x7F;
    expect_fail(b, sizeof b, 5, "unknown frame type");
    /* a TLS ClientHello and an HTTP request on the wrong port */
    const uint8_t tls[] = {0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc};
    expect_fail(tls, sizeof tls, 5, "unknown frame type");
    const char *http = "GET / HTTP/1.1\r\n\r\n";
    expect_fail((const uint8_t *)http, strlen(http), 5, "unknown frame type");
    /* HELLO with a bad magic, and of an unknown kind: the whole frame is read first */
    uint8_t hf[CW_TUN_HELLO_FRAME];
    cw_tun_hello_t h = {.version = 1};
    cw_tun_enc_hello(hf, &h);
    hf[CW_TUN_HEADER] = 'X';
    expect_fail(hf, sizeof hf, sizeof hf, "magic");
    cw_tun_enc_hello(hf, &h);
    hf[CW_TUN_HEADER + 5] = 2;
    expect_fail(hf, sizeof hf, sizeof hf, "kind");
    /* DATA whose offset + length overflows */
    uint8_t df[CW_TUN_HEADER + 8 + 2];
    cw_tun_enc_data_header(df, UINT64_MAX - 1, 2);
    df[13] = df[14] = 0;
    expect_fail(df, sizeof df, 13, "overflows");
}

/* ---- sessions over an in-memory link --------------------------------- */

typedef struct side {
    cw_tun_t t;
    cw_buf_t got; /* stream bytes delivered */
    size_t ndata;
    int fins;
    int rooms;
    int opens, resumed_opens;
    int closed;
    int close_reason;
    char close_text[256];
    cw_buf_t wire_in;    /* bytes in flight towards this side */
    uint64_t next_write; /* next stream position of our own source */
    uint64_t total;      /* source length */
    unsigned salt;
    bool fin_at_end; /* write FIN once the source is exhausted */
    int data_rc;     /* what on_data returns */
} side_t;

static int s_on_data(void *ud, uint8_t *data, size_t len)
{
    side_t *s = ud;
    assert_true(len > 0);
    s->ndata++;
    assert_int_equal(cw_buf_append(&s->got, data, len), 0);
    return s->data_rc;
}

static void s_on_fin(void *ud)
{
    ((side_t *)ud)->fins++;
}

static void s_on_room(void *ud)
{
    side_t *s = ud;
    s->rooms++;
    assert_true(cw_tun_room(&s->t) > 0);
}

static void s_on_open(void *ud, bool resumed)
{
    side_t *s = ud;
    s->opens++;
    s->resumed_opens += resumed;
}

static void s_on_closed(void *ud, int reason, const char *text)
{
    side_t *s = ud;
    s->closed++;
    s->close_reason = reason;
    snprintf(s->close_text, sizeof s->close_text, "%s", text);
}

static const cw_tun_callbacks_t side_cb = {s_on_data, s_on_fin, s_on_room, s_on_open, s_on_closed};

static void side_init(side_t *s, cw_tun_role_t role, size_t buffer, uint64_t total, unsigned salt)
{
    memset(s, 0, sizeof *s);
    cw_tun_init(&s->t, role, buffer, &side_cb, s);
    s->total = total;
    s->salt = salt;
    s->fin_at_end = true;
}

static void side_free(side_t *s)
{
    cw_tun_free(&s->t);
    cw_buf_free(&s->got);
    cw_buf_free(&s->wire_in);
}

/* Offer the source's next bytes (as much as the buffer takes). */
static void side_fill(side_t *s)
{
    uint8_t tmp[7000];
    while (s->next_write < s->total) {
        size_t n = sizeof tmp;
        if (n > s->total - s->next_write)
            n = (size_t)(s->total - s->next_write);
        for (size_t i = 0; i < n; i++)
            tmp[i] = stream_byte(s->next_write + i, s->salt);
        size_t k = cw_tun_write(&s->t, tmp, n);
        s->next_write += k;
        if (k < n)
            return; /* full: stop reading the source */
    }
    if (s->fin_at_end && s->next_write == s->total && !s->t.fin_written &&
        cw_tun_state(&s->t) != CW_TUN_ST_CLOSED)
        assert_int_equal(cw_tun_write_fin(&s->t), 0);
}

/* Move side's output into the peer's in-flight wire buffer. */
static size_t side_emit(side_t *s, side_t *peer)
{
    static uint8_t out[CW_TUN_OUTPUT_MIN * 3];
    size_t total = 0, n;
    while ((n = cw_tun_output(&s->t, out, sizeof out)) > 0) {
        assert_int_equal(cw_buf_append(&peer->wire_in, out, n), 0);
        total += n;
    }
    assert_false(cw_tun_want_output(&s->t));
    return total;
}

/* The stream a side must have got from a peer whose source is total bytes with salt. */
static void check_stream(const side_t *s, uint64_t total, unsigned salt, uint64_t upto)
{
    assert_true(s->got.len <= total);
    assert_int_equal(s->got.len, upto);
    for (size_t i = 0; i < s->got.len; i++)
        if (s->got.data[i] != stream_byte(i, salt))
            fail_msg("byte %zu differs", i);
}

/* Restart a server side as a brand-new session: what the relay does when a client that never
 * saw WELCOME says HELLO again (the abandoned session expires on its own). */
static void side_restart(side_t *s)
{
    side_t old = *s;
    cw_tun_free(&s->t);
    cw_buf_free(&s->got);
    side_init(s, CW_TUN_SERVER, old.t.cap, old.total, old.salt);
    s->fin_at_end = old.fin_at_end;
    s->wire_in = old.wire_in;
}

/* The server side of a link: read HELLO from the first `avail` bytes of wire_in with a link
 * decoder, then attach.  *consumed gets the bytes taken; returns the refusal reason, 0, or -1
 * when no whole HELLO was there. */
static int server_accept(side_t *srv, side_t *cli, size_t avail, size_t *consumed)
{
    cw_tun_dec_t d;
    cw_tun_dec_init(&d);
    size_t used = 0;
    cw_tun_frame_t f;
    uint8_t *copy = malloc(avail ? avail : 1);
    memcpy(copy, srv->wire_in.data, avail);
    int rc = cw_tun_dec_feed(&d, copy, avail, &used, &f);
    free(copy);
    *consumed = used;
    cw_buf_consume(&srv->wire_in, used);
    if (rc != 1)
        return -1;
    assert_int_equal(f.type, CW_TUN_HELLO);
    int r;
    if (!f.hello.resume) {
        if (cw_tun_state(&srv->t) != CW_TUN_ST_IDLE)
            side_restart(srv);
        uint64_t id;
        uint8_t token[CW_TUN_TOKEN_LEN];
        assert_int_equal(cw_tun_new_credentials(&id, token), 0);
        r = cw_tun_server_new(&srv->t, id, token, &f.hello, 600);
    } else {
        r = cw_tun_server_resume(&srv->t, &f.hello, 600);
    }
    if (r > 0) {
        uint8_t fr[CW_TUN_TEXT_FRAME];
        size_t n = cw_tun_enc_reason(fr, CW_TUN_REFUSE, (uint8_t)r, cw_tun_reason_str(r));
        cw_buf_append(&cli->wire_in, fr, n);
    }
    return r;
}

/* Deliver up to `budget` bytes of a wire buffer into a side (split by mode); returns bytes
 * delivered.  The remainder is lost when the link is cut. */
static size_t deliver(side_t *s, size_t budget, long mode, uint64_t *seed)
{
    size_t n = s->wire_in.len < budget ? s->wire_in.len : budget;
    size_t pos = 0;
    while (pos < n && cw_tun_state(&s->t) != CW_TUN_ST_CLOSED) {
        size_t k = piece(mode, seed, n - pos);
        uint8_t *p = malloc(k);
        memcpy(p, s->wire_in.data + pos, k);
        int rc = cw_tun_feed(&s->t, p, k);
        free(p);
        assert_true(rc == 0 || rc == CW_ECLOSED);
        pos += k;
    }
    cw_buf_consume(&s->wire_in, n);
    return n;
}

/* Run the pair until nothing moves.  `cut_after`: total wire bytes (both directions) after
 * which the link is cut once (SIZE_MAX: never); then both sides lose the link and the client
 * resumes.  `ack_delay_flush`: flush delayed acks when the link is otherwise idle (the
 * adapter's timer). */
typedef struct run_stats {
    size_t wire_bytes;
    int cuts;
    int refused;
    int ended_refusals;
} run_stats_t;

static void run_pair(side_t *cli, side_t *srv, size_t cut_after, long mode, uint64_t seed,
                     run_stats_t *st)
{
    bool linked = false, srv_attached = false;
    size_t moved = 0;
    int guard = 0;
    memset(st, 0, sizeof *st);
    for (;;) {
        assert_true(++guard < 100000);
        if (cw_tun_state(&cli->t) == CW_TUN_ST_CLOSED && cw_tun_state(&srv->t) == CW_TUN_ST_CLOSED)
            break;
        if (!linked) {
            if (cw_tun_state(&cli->t) == CW_TUN_ST_CLOSED)
                break;
            cw_buf_reset(&cli->wire_in);
            cw_buf_reset(&srv->wire_in);
            assert_int_equal(cw_tun_client_link(&cli->t), 0);
            linked = true;
            srv_attached = false;
        }
        side_fill(cli);
        side_fill(srv);
        size_t progress = side_emit(cli, srv);
        if (srv_attached)
            progress += side_emit(srv, cli);
        /* the link may be cut in the middle of the bytes in flight */
        size_t budget = SIZE_MAX;
        bool cut = false;
        if (cut_after != SIZE_MAX && st->cuts == 0) {
            size_t inflight = cli->wire_in.len + srv->wire_in.len;
            if (moved + inflight >= cut_after) {
                budget = cut_after - moved;
                cut = true;
            }
        }
        /* server side first (it must read HELLO before anything) */
        size_t to_srv = srv->wire_in.len < budget ? srv->wire_in.len : budget;
        if (!srv_attached && to_srv > 0) {
            /* only a whole HELLO attaches; a cut inside it loses the link */
            size_t consumed;
            int r = server_accept(srv, cli, to_srv, &consumed);
            moved += consumed;
            budget -= budget == SIZE_MAX ? 0 : consumed;
            if (r > 0) {
                /* ENDED: the server completed and our last ACK was lost; for a client that
                 * exchanged both FINs that is the end too (checked by the callers) */
                if (r == CW_TUN_R_ENDED)
                    st->ended_refusals++;
                else
                    st->refused++;
                deliver(cli, SIZE_MAX, mode, &seed); /* the client reads the refusal */
                break;
            }
            if (r == 0) {
                srv_attached = true;
                progress += side_emit(srv, cli);
            }
        }
        if (srv_attached) {
            size_t n = deliver(srv, budget, mode, &seed);
            moved += n;
            budget -= n;
        }
        size_t n = deliver(cli, budget, mode, &seed);
        moved += n;
        progress += n;
        if (cut) {
            st->cuts++;
            cw_tun_link_lost(&cli->t);
            cw_tun_link_lost(&srv->t);
            linked = false;
            continue;
        }
        if (progress == 0) {
            /* idle: the delayed-ack timers fire */
            bool any = cw_tun_ack_pending(&cli->t) || cw_tun_ack_pending(&srv->t);
            cw_tun_flush_ack(&cli->t);
            cw_tun_flush_ack(&srv->t);
            if (!any && !cw_tun_want_output(&cli->t) && !cw_tun_want_output(&srv->t))
                break;
        }
    }
    st->wire_bytes = moved;
}

/* A new session carries both streams, ends with both FINs, and both sides see it complete. */
static void test_session_transfer(void **state)
{
    (void)state;
    for (size_t m = 0; m < NSPLIT; m++) {
        side_t cli, srv;
        side_init(&cli, CW_TUN_CLIENT, 8192, 100000, 1);
        side_init(&srv, CW_TUN_SERVER, 4096, 54321, 2);
        run_stats_t st;
        run_pair(&cli, &srv, SIZE_MAX, split_modes[m], 99, &st);
        check_stream(&srv, 100000, 1, 100000);
        check_stream(&cli, 54321, 2, 54321);
        assert_int_equal(cli.opens, 1);
        assert_int_equal(cli.resumed_opens, 0);
        assert_int_equal(cli.fins, 1);
        assert_int_equal(srv.fins, 1);
        assert_int_equal(cw_tun_state(&cli.t), CW_TUN_ST_CLOSED);
        assert_int_equal(cw_tun_state(&srv.t), CW_TUN_ST_CLOSED);
        assert_int_equal(cw_tun_close_reason(&cli.t), CW_TUN_R_ENDED);
        assert_int_equal(cw_tun_close_reason(&srv.t), CW_TUN_R_ENDED);
        assert_int_equal(cli.closed, 1);
        assert_int_equal(srv.closed, 1);
        /* buffers far smaller than the streams: the sources stopped and resumed */
        assert_true(cli.rooms > 0);
        assert_true(srv.rooms > 0);
        /* nothing is held after the end */
        assert_int_equal(cw_tun_allocated(&cli.t), 0);
        assert_int_equal(cw_tun_allocated(&srv.t), 0);
        side_free(&cli);
        side_free(&srv);
    }
}

/* Cut the link after every possible number of wire bytes; the client resumes each time and the
 * streams arrive whole, once.  Small streams so that every offset of the handshake, of data
 * frames and of acknowledgements is a cut point. */
static void test_resume_every_offset(void **state)
{
    (void)state;
    /* measure the uncut run first */
    side_t cli, srv;
    side_init(&cli, CW_TUN_CLIENT, 4096, 9000, 3);
    side_init(&srv, CW_TUN_SERVER, 4096, 7000, 4);
    run_stats_t st;
    run_pair(&cli, &srv, SIZE_MAX, SPLIT_WHOLE, 1, &st);
    size_t total = st.wire_bytes;
    side_free(&cli);
    side_free(&srv);
    assert_true(total > 16000);

    int resumed = 0, ended = 0;
    for (size_t cut = 0; cut <= total; cut++) {
        long mode = split_modes[cut % NSPLIT];
        side_init(&cli, CW_TUN_CLIENT, 4096, 9000, 3);
        side_init(&srv, CW_TUN_SERVER, 4096, 7000, 4);
        run_pair(&cli, &srv, cut, mode, cut + 1, &st);
        if (st.refused)
            fail_msg("cut %zu: refused: %s", cut, cli.close_text);
        check_stream(&srv, 9000, 3, 9000);
        check_stream(&cli, 7000, 4, 7000);
        assert_int_equal(cli.fins, 1);
        assert_int_equal(srv.fins, 1);
        if (st.ended_refusals) {
            assert_int_equal(cw_tun_close_reason(&cli.t), CW_TUN_R_ENDED);
            assert_true(cli.t.fin_written && cli.t.fin_received);
            ended++;
        }
        /* a cut before WELCOME arrived starts a new session; after it, a resume */
        assert_true(cli.opens >= 1 && cli.opens <= 2);
        resumed += cli.resumed_opens;
        side_free(&cli);
        side_free(&srv);
    }
    assert_true(resumed > (int)total / 2);
    assert_true(ended > 0 && ended < 40); /* only cuts in the last ACK */
}

/* Feed a raw frame sequence into an OPEN server session (a client's view is symmetric). */
static void open_server(side_t *srv, side_t *cli)
{
    side_init(srv, CW_TUN_SERVER, 4096, 0, 5);
    side_init(cli, CW_TUN_CLIENT, 4096, 0, 6);
    srv->fin_at_end = cli->fin_at_end = false;
    assert_int_equal(cw_tun_client_link(&cli->t), 0);
    side_emit(cli, srv);
    size_t used;
    assert_int_equal(server_accept(srv, cli, srv->wire_in.len, &used), 0);
    side_emit(srv, cli);
    uint64_t seed = 1;
    deliver(cli, SIZE_MAX, SPLIT_WHOLE, &seed);
    assert_int_equal(cw_tun_state(&cli->t), CW_TUN_ST_OPEN);
}

static int feed_frames(side_t *s, const uint8_t *p, size_t n)
{
    uint8_t *c = malloc(n);
    memcpy(c, p, n);
    int rc = cw_tun_feed(&s->t, c, n);
    free(c);
    return rc;
}

/* Duplicate and overlapping DATA is dropped, a gap is a protocol error. */
static void test_duplicates_and_gaps(void **state)
{
    (void)state;
    side_t srv, cli;
    open_server(&srv, &cli);
    cw_buf_t w = CW_BUF_INIT;
    uint8_t h[CW_TUN_HEADER + 8];
    const char *abc = "abcdefghij";
    /* 0..5, then 0..5 again (duplicate), then 3..10 (overlap), then 8..10 (old) */
    cw_buf_append(&w, h, cw_tun_enc_data_header(h, 0, 5));
    cw_buf_append(&w, abc, 5);
    cw_buf_append(&w, h, cw_tun_enc_data_header(h, 0, 5));
    cw_buf_append(&w, abc, 5);
    cw_buf_append(&w, h, cw_tun_enc_data_header(h, 3, 7));
    cw_buf_append(&w, abc + 3, 7);
    cw_buf_append(&w, h, cw_tun_enc_data_header(h, 8, 2));
    cw_buf_append(&w, abc + 8, 2);
    assert_int_equal(feed_frames(&srv, w.data, w.len), 0);
    assert_int_equal(srv.got.len, 10);
    assert_memory_equal(srv.got.data, abc, 10);
    assert_int_equal(srv.ndata, 2);
    /* FIN at 10, again (harmless), then data beyond the FIN: error */
    cw_buf_reset(&w);
    cw_buf_append(&w, h, cw_tun_enc_u64(h, CW_TUN_FIN, 10));
    cw_buf_append(&w, h, cw_tun_enc_u64(h, CW_TUN_FIN, 10));
    cw_buf_append(&w, h, cw_tun_enc_data_header(h, 9, 1)); /* old: dropped */
    cw_buf_append(&w, "j", 1);
    assert_int_equal(feed_frames(&srv, w.data, w.len), 0);
    assert_int_equal(srv.fins, 1);
    cw_buf_reset(&w);
    cw_buf_append(&w, h, cw_tun_enc_data_header(h, 10, 1));
    cw_buf_append(&w, "k", 1);
    assert_int_equal(feed_frames(&srv, w.data, w.len), CW_EPROTO);
    assert_int_equal(srv.close_reason, CW_TUN_R_PROTOCOL);
    assert_non_null(strstr(srv.close_text, "after the stream's FIN"));
    /* the ABORT goes out to the peer */
    side_emit(&srv, &cli);
    uint64_t seed = 1;
    deliver(&cli, SIZE_MAX, SPLIT_WHOLE, &seed);
    assert_int_equal(cli.close_reason, CW_TUN_R_PROTOCOL);
    assert_int_equal(cw_tun_state(&cli.t), CW_TUN_ST_CLOSED);
    side_free(&srv);
    side_free(&cli);

    /* a second FIN at another offset */
    open_server(&srv, &cli);
    cw_buf_reset(&w);
    cw_buf_append(&w, h, cw_tun_enc_u64(h, CW_TUN_FIN, 0));
    cw_buf_append(&w, h, cw_tun_enc_u64(h, CW_TUN_FIN, 2));
    assert_int_equal(feed_frames(&srv, w.data, w.len), CW_EPROTO);
    assert_int_equal(srv.fins, 1);
    assert_non_null(strstr(srv.close_text, "second FIN"));
    side_free(&srv);
    side_free(&cli);

    /* a gap */
    open_server(&srv, &cli);
    cw_buf_reset(&w);
    cw_buf_append(&w, h, cw_tun_enc_data_header(h, 1, 1));
    cw_buf_append(&w, "x", 1);
    assert_int_equal(feed_frames(&srv, w.data, w.len), CW_EPROTO);
    assert_non_null(strstr(srv.close_text, "gap"));
    assert_int_equal(srv.got.len, 0);
    side_free(&srv);
    side_free(&cli);

    /* FIN before the data it ends; an ACK of bytes never sent; a second HELLO */
    const struct {
        uint8_t type;
        uint64_t v;
        const char *why;
    } bad[] = {{CW_TUN_FIN, 3, "FIN at an offset"},
               {CW_TUN_ACK, 1, "ACK of data never sent"},
               {CW_TUN_HELLO, 0, "handshake frame"}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        open_server(&srv, &cli);
        uint8_t fr[CW_TUN_HELLO_FRAME];
        size_t n;
        if (bad[i].type == CW_TUN_HELLO) {
            cw_tun_hello_t hh = {.version = 1};
            n = cw_tun_enc_hello(fr, &hh);
        } else {
            n = cw_tun_enc_u64(fr, bad[i].type, bad[i].v);
        }
        assert_int_equal(feed_frames(&srv, fr, n), CW_EPROTO);
        assert_non_null(strstr(srv.close_text, bad[i].why));
        side_free(&srv);
        side_free(&cli);
    }
    cw_buf_free(&w);
}

/* A resume with a wrong token, an unknown id or an offset the server cannot serve is refused
 * and leaves the real session as it was. */
static void test_resume_refused(void **state)
{
    (void)state;
    side_t srv, cli;
    side_init(&cli, CW_TUN_CLIENT, 4096, 20000, 7);
    side_init(&srv, CW_TUN_SERVER, 4096, 20000, 8);
    cli.fin_at_end = srv.fin_at_end = false;
    run_stats_t st;
    run_pair(&cli, &srv, SIZE_MAX, SPLIT_WHOLE, 1, &st);
    check_stream(&srv, 20000, 7, 20000);
    assert_int_equal(cw_tun_state(&srv.t), CW_TUN_ST_OPEN);
    uint64_t srv_received = srv.t.received, srv_sent = srv.t.sent;

    cw_tun_hello_t h = {.version = 1,
                        .resume = true,
                        .buffer = 4096,
                        .id = cli.t.id,
                        .received = cli.t.received,
                        .link_seq = cli.t.link_seq + 1};
    memcpy(h.token, cli.t.token, CW_TUN_TOKEN_LEN);
    cw_tun_hello_t bad = h;
    /* the HELLO of an older attempt, delayed in the network, cannot take the session over */
    bad.link_seq = cli.t.link_seq;
    assert_int_equal(cw_tun_server_resume(&srv.t, &bad, 600), CW_TUN_R_STALE);
    bad.link_seq = 0;
    assert_int_equal(cw_tun_server_resume(&srv.t, &bad, 600), CW_TUN_R_STALE);
    bad = h;
    for (int i = 0; i < CW_TUN_TOKEN_LEN; i++) {
        bad.token[i] ^= 0x01; /* one bit off in any byte */
        assert_int_equal(cw_tun_server_resume(&srv.t, &bad, 600), CW_TUN_R_BAD_TOKEN);
        bad.token[i] ^= 0x01;
    }
    bad.version = 2;
    assert_int_equal(cw_tun_server_resume(&srv.t, &bad, 600), CW_TUN_R_VERSION);
    bad = h;
    bad.received = h.received + 1; /* claims data never sent */
    assert_int_equal(cw_tun_server_resume(&srv.t, &bad, 600), CW_TUN_R_BAD_OFFSET);
    bad.received = 0; /* asks for data already released */
    assert_int_equal(cw_tun_server_resume(&srv.t, &bad, 600), CW_TUN_R_BAD_OFFSET);
    bad = h;
    bad.resume = false;
    assert_int_equal(cw_tun_server_resume(&srv.t, &bad, 600), CW_TUN_R_PROTOCOL);
    /* nothing changed: same state and positions, no callback */
    assert_int_equal(cw_tun_state(&srv.t), CW_TUN_ST_OPEN);
    assert_int_equal(srv.t.received, srv_received);
    assert_int_equal(srv.t.sent, srv_sent);
    assert_int_equal(srv.closed, 0);
    /* and the real session still works: more data both ways, then the end */
    cli.total = srv.total = 30000;
    cli.fin_at_end = srv.fin_at_end = true;
    cw_tun_link_lost(&cli.t);
    cw_tun_link_lost(&srv.t);
    run_pair(&cli, &srv, SIZE_MAX, 3, 5, &st);
    check_stream(&srv, 30000, 7, 30000);
    check_stream(&cli, 30000, 8, 30000);
    assert_int_equal(cw_tun_close_reason(&srv.t), CW_TUN_R_ENDED);

    /* a new-session HELLO that carries resume fields is malformed */
    side_t s2;
    side_init(&s2, CW_TUN_SERVER, 0, 0, 0);
    uint8_t tok[CW_TUN_TOKEN_LEN] = {1};
    cw_tun_hello_t nh = {.version = 1, .received = 5};
    assert_int_equal(cw_tun_server_new(&s2.t, 42, tok, &nh, 600), CW_TUN_R_PROTOCOL);
    nh.received = 0;
    nh.version = 9;
    assert_int_equal(cw_tun_server_new(&s2.t, 42, tok, &nh, 600), CW_TUN_R_VERSION);
    nh.version = 1;
    assert_int_equal(cw_tun_server_new(&s2.t, 42, tok, &nh, 600), 0);
    side_free(&s2);
    side_free(&srv);
    side_free(&cli);
}

/* The client reports a refusal and is over; a WELCOME for another session is a violation. */
static void test_client_refused(void **state)
{
    (void)state;
    side_t cli, srv;
    side_init(&cli, CW_TUN_CLIENT, 4096, 100, 1);
    side_init(&srv, CW_TUN_SERVER, 4096, 100, 2);
    assert_int_equal(cw_tun_client_link(&cli.t), 0);
    uint8_t fr[CW_TUN_TEXT_FRAME];
    size_t n = cw_tun_enc_reason(fr, CW_TUN_REFUSE, CW_TUN_R_UNREACHABLE, "master down\x01");
    assert_int_equal(feed_frames(&cli, fr, n), CW_ECLOSED);
    assert_int_equal(cli.close_reason, CW_TUN_R_UNREACHABLE);
    assert_string_equal(cli.close_text, "master down?");
    assert_true(cw_tun_reason_retryable(cli.close_reason));
    assert_false(cw_tun_reason_retryable(CW_TUN_R_BAD_TOKEN));
    assert_int_equal(cw_tun_write(&cli.t, (const uint8_t *)"x", 1), 0);
    side_free(&cli);
    side_free(&srv);

    /* establish, lose the link, and get a WELCOME naming another session */
    open_server(&srv, &cli);
    cw_tun_link_lost(&cli.t);
    assert_int_equal(cw_tun_state(&cli.t), CW_TUN_ST_DETACHED);
    assert_int_equal(cw_tun_client_link(&cli.t), 0);
    cw_tun_welcome_t w = {.version = 1, .resumed = true, .id = cli.t.id + 1};
    memcpy(w.token, cli.t.token, CW_TUN_TOKEN_LEN);
    uint8_t wf[CW_TUN_WELCOME_FRAME];
    n = cw_tun_enc_welcome(wf, &w);
    assert_int_equal(feed_frames(&cli, wf, n), CW_EPROTO);
    assert_non_null(strstr(cli.close_text, "another session"));
    side_free(&cli);
    side_free(&srv);

    /* data before WELCOME */
    side_init(&cli, CW_TUN_CLIENT, 4096, 100, 1);
    assert_int_equal(cw_tun_client_link(&cli.t), 0);
    uint8_t a[CW_TUN_HEADER + 8];
    n = cw_tun_enc_u64(a, CW_TUN_ACK, 0);
    assert_int_equal(feed_frames(&cli, a, n), CW_EPROTO);
    side_free(&cli);
}

/* Backpressure: the buffer refuses bytes beyond its size, on_room fires once acks free room,
 * and acks are sent at a quarter of the peer's buffer or when the delay runs out. */
static void test_backpressure_and_acks(void **state)
{
    (void)state;
    side_t srv, cli;
    open_server(&srv, &cli);
    static uint8_t big[10000];
    memset(big, 'q', sizeof big);
    size_t k = cw_tun_write(&cli.t, big, sizeof big);
    assert_int_equal(k, 4096); /* the buffer's size */
    assert_int_equal(cw_tun_room(&cli.t), 0);
    assert_int_equal(cw_tun_buffered(&cli.t), 4096);
    assert_int_equal(cw_tun_write(&cli.t, big, 1), 0);
    assert_int_equal(cli.rooms, 0);
    side_emit(&cli, &srv);
    uint64_t seed = 1;
    deliver(&srv, SIZE_MAX, SPLIT_WHOLE, &seed);
    assert_int_equal(srv.got.len, 4096);
    /* the client announced 4096: the server acks at 1024, so this one is due now */
    assert_true(cw_tun_want_output(&srv.t));
    side_emit(&srv, &cli);
    deliver(&cli, SIZE_MAX, SPLIT_WHOLE, &seed);
    assert_int_equal(cli.rooms, 1);
    assert_int_equal(cw_tun_room(&cli.t), 4096);
    assert_int_equal(cw_tun_allocated(&cli.t), 0);

    /* below the threshold the ack waits for the delay */
    assert_int_equal(cw_tun_write(&cli.t, big, 100), 100);
    side_emit(&cli, &srv);
    deliver(&srv, SIZE_MAX, SPLIT_WHOLE, &seed);
    assert_true(cw_tun_ack_pending(&srv.t));
    assert_false(cw_tun_want_output(&srv.t));
    cw_tun_flush_ack(&srv.t);
    assert_true(cw_tun_want_output(&srv.t));
    side_emit(&srv, &cli);
    deliver(&cli, SIZE_MAX, SPLIT_WHOLE, &seed);
    assert_int_equal(cw_tun_buffered(&cli.t), 0);
    assert_false(cw_tun_ack_pending(&srv.t));

    /* ping/pong */
    cw_tun_ping(&cli.t, 0xABCDEF);
    cw_buf_t saved = CW_BUF_INIT;
    side_emit(&cli, &srv);
    deliver(&srv, SIZE_MAX, SPLIT_WHOLE, &seed);
    side_emit(&srv, &cli);
    evlog_t l = decode_all(cli.wire_in.data, cli.wire_in.len);
    assert_non_null(strstr((const char *)l.text.data, "T13 11259375\n"));
    cw_buf_free(&l.text);
    cw_buf_free(&saved);

    /* abort: the peer learns it, nothing is delivered after */
    cw_tun_abort(&cli.t, CW_TUN_R_CLOSED, "bye");
    assert_int_equal(cw_tun_state(&cli.t), CW_TUN_ST_CLOSED);
    assert_int_equal(cli.closed, 0); /* no callback for our own abort */
    cw_buf_reset(&srv.wire_in);
    side_emit(&cli, &srv);
    deliver(&srv, SIZE_MAX, SPLIT_WHOLE, &seed);
    assert_int_equal(srv.closed, 1);
    assert_int_equal(srv.close_reason, CW_TUN_R_CLOSED);
    assert_string_equal(srv.close_text, "bye");
    cw_tun_abort(&cli.t, CW_TUN_R_CLOSED, "again"); /* idempotent */
    assert_false(cw_tun_want_output(&cli.t));
    side_free(&srv);
    side_free(&cli);
}

/* A detached session keeps accepting writes up to its buffer and replays them all on resume;
 * the replay buffer chunks are freed as acks arrive. */
static void test_detached_writes_replay(void **state)
{
    (void)state;
    side_t srv, cli;
    open_server(&srv, &cli);
    cw_tun_link_lost(&srv.t);
    cw_tun_link_lost(&cli.t);
    assert_int_equal(cw_tun_state(&srv.t), CW_TUN_ST_DETACHED);
    static uint8_t buf[5000];
    for (size_t i = 0; i < sizeof buf; i++)
        buf[i] = stream_byte(i, 5);
    assert_int_equal(cw_tun_write(&srv.t, buf, sizeof buf), 4096);
    assert_false(cw_tun_want_output(&srv.t)); /* no link: nothing to send */
    assert_int_equal(cw_tun_allocated(&srv.t), 16384 + sizeof(void *));
    srv.next_write = 4096;
    srv.total = 5000;
    srv.fin_at_end = cli.fin_at_end = false;
    cli.total = 0;
    run_stats_t st;
    run_pair(&cli, &srv, SIZE_MAX, 2, 3, &st);
    check_stream(&cli, 5000, 5, 5000);
    assert_int_equal(cli.resumed_opens, 1);
    assert_int_equal(cw_tun_allocated(&srv.t), 0);
    side_free(&srv);
    side_free(&cli);
}

/* A receiver that tracks its consumer acknowledges what was consumed, refuses data beyond the
 * window it gave, acknowledges the FIN only once everything before it was consumed, and is
 * complete only then; a resume still uses everything received. */
static void test_consumer_acks(void **state)
{
    (void)state;
    side_t srv, cli;
    side_init(&srv, CW_TUN_SERVER, 4096, 0, 5);
    side_init(&cli, CW_TUN_CLIENT, 4096, 0, 6);
    srv.fin_at_end = cli.fin_at_end = false;
    cw_tun_track_consumed(&srv.t);
    assert_int_equal(cw_tun_client_link(&cli.t), 0);
    side_emit(&cli, &srv);
    size_t used;
    assert_int_equal(server_accept(&srv, &cli, srv.wire_in.len, &used), 0);
    side_emit(&srv, &cli);
    uint64_t seed = 1;
    deliver(&cli, SIZE_MAX, SPLIT_WHOLE, &seed);
    static uint8_t buf[4096];
    memset(buf, 'c', sizeof buf);
    assert_int_equal(cw_tun_write(&cli.t, buf, sizeof buf), 4096);
    side_emit(&cli, &srv);
    deliver(&srv, SIZE_MAX, SPLIT_WHOLE, &seed);
    assert_int_equal(srv.got.len, 4096);
    /* nothing consumed: no ACK, however long we wait */
    cw_tun_flush_ack(&srv.t);
    assert_false(cw_tun_want_output(&srv.t));
    assert_false(cw_tun_ack_pending(&srv.t));
    /* consumed a quarter (the client's threshold): an ACK of exactly that */
    cw_tun_consumed(&srv.t, 1024);
    assert_true(cw_tun_want_output(&srv.t));
    side_emit(&srv, &cli);
    deliver(&cli, SIZE_MAX, SPLIT_WHOLE, &seed);
    assert_int_equal(cw_tun_buffered(&cli.t), 4096 - 1024);
    assert_int_equal(cw_tun_room(&cli.t), 1024);
    /* a peer that ignores its buffer: data beyond ack + 4096 is a violation */
    uint8_t fr[CW_TUN_HEADER + 8 + 2];
    cw_tun_enc_data_header(fr, 1024 + 4096 - 1, 2);
    fr[13] = fr[14] = 'x';
    cw_buf_t w = CW_BUF_INIT;
    /* first the bytes up to the edge (4096..5118), which are allowed */
    uint8_t h[CW_TUN_HEADER + 8];
    static uint8_t fill[1023];
    cw_buf_append(&w, h, cw_tun_enc_data_header(h, 4096, sizeof fill));
    cw_buf_append(&w, fill, sizeof fill);
    assert_int_equal(feed_frames(&srv, w.data, w.len), 0);
    assert_int_equal(feed_frames(&srv, fr, sizeof fr), CW_EPROTO);
    assert_non_null(strstr(srv.close_text, "beyond the peer's announced buffer"));
    cw_buf_free(&w);
    side_free(&srv);
    side_free(&cli);

    /* FIN: acknowledged, and the session complete, only once consumed */
    side_init(&srv, CW_TUN_SERVER, 4096, 0, 5);
    side_init(&cli, CW_TUN_CLIENT, 4096, 0, 6);
    cw_tun_track_consumed(&srv.t);
    assert_int_equal(cw_tun_client_link(&cli.t), 0);
    side_emit(&cli, &srv);
    assert_int_equal(server_accept(&srv, &cli, srv.wire_in.len, &used), 0);
    side_emit(&srv, &cli);
    deliver(&cli, SIZE_MAX, SPLIT_WHOLE, &seed);
    assert_int_equal(cw_tun_write(&cli.t, buf, 100), 100);
    assert_int_equal(cw_tun_write_fin(&cli.t), 0);
    assert_int_equal(cw_tun_write_fin(&srv.t), 0);
    for (int i = 0; i < 3; i++) {
        side_emit(&cli, &srv);
        deliver(&srv, SIZE_MAX, SPLIT_WHOLE, &seed);
        side_emit(&srv, &cli);
        deliver(&cli, SIZE_MAX, SPLIT_WHOLE, &seed);
    }
    assert_int_equal(srv.fins, 1);
    assert_int_equal(cli.fins, 1);
    assert_int_equal(cw_tun_state(&srv.t), CW_TUN_ST_OPEN); /* 100 bytes not consumed */
    assert_int_equal(cw_tun_buffered(&cli.t), 100);
    /* a resume now: the client is told everything arrived, nothing is replayed */
    cw_tun_link_lost(&srv.t);
    cw_tun_link_lost(&cli.t);
    cw_buf_reset(&srv.wire_in);
    cw_buf_reset(&cli.wire_in);
    assert_int_equal(cw_tun_client_link(&cli.t), 0);
    side_emit(&cli, &srv);
    assert_int_equal(server_accept(&srv, &cli, srv.wire_in.len, &used), 0);
    side_emit(&srv, &cli);
    deliver(&cli, SIZE_MAX, SPLIT_WHOLE, &seed);
    assert_int_equal(cw_tun_buffered(&cli.t), 0);
    assert_int_equal(srv.got.len, 100);
    cw_tun_consumed(&srv.t, 100);
    assert_int_equal(cw_tun_state(&srv.t), CW_TUN_ST_CLOSED);
    assert_int_equal(cw_tun_close_reason(&srv.t), CW_TUN_R_ENDED);
    side_emit(&srv, &cli);
    deliver(&cli, SIZE_MAX, SPLIT_WHOLE, &seed);
    assert_int_equal(cw_tun_close_reason(&cli.t), CW_TUN_R_ENDED);
    side_free(&srv);
    side_free(&cli);
}

/* Feeding from inside a callback is refused rather than corrupting the decoder. */
static side_t *reenter_side;
static int reenter_data(void *ud, uint8_t *data, size_t len)
{
    (void)ud;
    assert_int_equal(cw_tun_feed(&reenter_side->t, data, len), -EBUSY);
    return -42;
}

static void test_callback_error_and_reentry(void **state)
{
    (void)state;
    side_t srv, cli;
    open_server(&srv, &cli);
    static const cw_tun_callbacks_t cb = {reenter_data, NULL, NULL, NULL, NULL};
    srv.t.cb = &cb;
    reenter_side = &srv;
    uint8_t fr[CW_TUN_HEADER + 8 + 1];
    cw_tun_enc_data_header(fr, 0, 1);
    fr[13] = 'z';
    assert_int_equal(feed_frames(&srv, fr, sizeof fr), -42);
    side_free(&srv);
    side_free(&cli);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_codec_roundtrip),
        cmocka_unit_test(test_codec_limits),
        cmocka_unit_test(test_session_transfer),
        cmocka_unit_test(test_resume_every_offset),
        cmocka_unit_test(test_duplicates_and_gaps),
        cmocka_unit_test(test_resume_refused),
        cmocka_unit_test(test_client_refused),
        cmocka_unit_test(test_backpressure_and_acks),
        cmocka_unit_test(test_detached_writes_replay),
        cmocka_unit_test(test_callback_error_and_reentry),
        cmocka_unit_test(test_consumer_acks),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
