/* The resumable tunnel: frame codec and one side's session, no I/O.
 *
 * The contract is in include/cworker/tunnel.h, the wire format in
 * docs/tunnel.md.  Choices the header leaves open:
 *
 * - The decoder never allocates: control payloads (at most 201 bytes) are
 *   collected in a fixed array, DATA payloads are handed out in place, piece
 *   by piece, as the input brings them.  A frame's length is judged against
 *   its type as soon as the 5 header bytes are there.
 * - Control frames are not queued as bytes: flags say what is due and
 *   cw_tun_output() builds the frames with the values current at that moment
 *   (so an ACK or WELCOME always carries the latest `received`).
 * - Positions are 64-bit and never wrap in practice (16 EiB); offsets from
 *   the wire are checked against overflow anyway.
 * - A protocol error by the peer ends the session (ABORT PROTOCOL is queued
 *   for the link) instead of resuming: a peer that sends garbage once would
 *   send it again.
 */
#include "cworker/tunnel.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "cworker/cw.h"

struct cw_tun_chunk {
    cw_tun_chunk_t *next;
    uint8_t data[CW_TUN_CHUNK];
};

enum dec_state {
    DS_HEADER,  /* collecting the 5 header bytes */
    DS_OFFSET,  /* DATA: collecting the 8 offset bytes */
    DS_PAYLOAD, /* DATA: handing out payload pieces */
    DS_CONTROL, /* collecting a control payload into ctl */
    DS_FAILED,
};

static const uint8_t hello_magic[4] = {'C', 'W', 'T', 'N'};

const char *cw_tun_reason_str(int reason)
{
    switch (reason) {
    case CW_TUN_R_VERSION:
        return "unsupported version";
    case CW_TUN_R_UNKNOWN:
        return "unknown session";
    case CW_TUN_R_BAD_TOKEN:
        return "wrong resume token";
    case CW_TUN_R_EXPIRED:
        return "resume window expired";
    case CW_TUN_R_BAD_OFFSET:
        return "offset outside the replay buffer";
    case CW_TUN_R_UNREACHABLE:
        return "master unreachable";
    case CW_TUN_R_BUSY:
        return "relay busy";
    case CW_TUN_R_PROTOCOL:
        return "protocol violation";
    case CW_TUN_R_CLOSED:
        return "closed";
    case CW_TUN_R_INTERNAL:
        return "internal error";
    case CW_TUN_R_ENDED:
        return "session ended";
    case CW_TUN_R_STALE:
        return "stale link (a newer one exists)";
    default:
        return "unknown reason";
    }
}

bool cw_tun_reason_retryable(int reason)
{
    return reason == CW_TUN_R_UNREACHABLE || reason == CW_TUN_R_BUSY;
}

/* ---- codec ------------------------------------------------------------- */

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static void put64(uint8_t *p, uint64_t v)
{
    put32(p, (uint32_t)(v >> 32));
    put32(p + 4, (uint32_t)v);
}

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static uint64_t get64(const uint8_t *p)
{
    return (uint64_t)get32(p) << 32 | get32(p + 4);
}

/* Write a frame header; returns CW_TUN_HEADER. */
static size_t put_header(uint8_t *out, uint8_t type, uint32_t len)
{
    out[0] = type;
    put32(out + 1, len);
    return CW_TUN_HEADER;
}

size_t cw_tun_enc_hello(uint8_t out[CW_TUN_HELLO_FRAME], const cw_tun_hello_t *h)
{
    uint8_t *p = out + put_header(out, CW_TUN_HELLO, CW_TUN_HELLO_LEN);
    memcpy(p, hello_magic, 4);
    p[4] = h->version;
    p[5] = h->resume ? 1 : 0;
    put32(p + 6, h->buffer);
    put64(p + 10, h->id);
    memcpy(p + 18, h->token, CW_TUN_TOKEN_LEN);
    put64(p + 34, h->received);
    put32(p + 42, h->link_seq);
    return CW_TUN_HELLO_FRAME;
}

size_t cw_tun_enc_welcome(uint8_t out[CW_TUN_WELCOME_FRAME], const cw_tun_welcome_t *w)
{
    uint8_t *p = out + put_header(out, CW_TUN_WELCOME, CW_TUN_WELCOME_LEN);
    p[0] = w->version;
    p[1] = w->resumed ? 1 : 0;
    put32(p + 2, w->buffer);
    put32(p + 6, w->window);
    put64(p + 10, w->id);
    memcpy(p + 18, w->token, CW_TUN_TOKEN_LEN);
    put64(p + 34, w->received);
    return CW_TUN_WELCOME_FRAME;
}

size_t cw_tun_enc_reason(uint8_t out[CW_TUN_TEXT_FRAME], uint8_t type, uint8_t reason,
                         const char *text)
{
    size_t n = text ? strlen(text) : 0;
    if (n > CW_TUN_MAX_TEXT)
        n = CW_TUN_MAX_TEXT;
    put_header(out, type, (uint32_t)(1 + n));
    out[CW_TUN_HEADER] = reason;
    if (n)
        memcpy(out + CW_TUN_HEADER + 1, text, n);
    return CW_TUN_HEADER + 1 + n;
}

size_t cw_tun_enc_u64(uint8_t out[CW_TUN_HEADER + 8], uint8_t type, uint64_t value)
{
    put_header(out, type, 8);
    put64(out + CW_TUN_HEADER, value);
    return CW_TUN_HEADER + 8;
}

size_t cw_tun_enc_data_header(uint8_t out[CW_TUN_HEADER + 8], uint64_t offset, size_t len)
{
    put_header(out, CW_TUN_DATA, (uint32_t)(8 + len));
    put64(out + CW_TUN_HEADER, offset);
    return CW_TUN_HEADER + 8;
}

void cw_tun_dec_init(cw_tun_dec_t *d)
{
    memset(d, 0, sizeof *d);
    d->state = DS_HEADER;
}

const char *cw_tun_dec_error(const cw_tun_dec_t *d)
{
    return d->state == DS_FAILED ? d->error : NULL;
}

static int dec_fail(cw_tun_dec_t *d, const char *why)
{
    d->state = DS_FAILED;
    d->error = why;
    return CW_EPROTO;
}

/* The header is complete: judge the length for the type, pick the next state. */
static int dec_header_done(cw_tun_dec_t *d)
{
    d->type = d->hdr[0];
    d->len = get32(d->hdr + 1);
    d->done = 0;
    uint32_t fixed = 0;
    switch (d->type) {
    case CW_TUN_HELLO:
        fixed = CW_TUN_HELLO_LEN;
        break;
    case CW_TUN_WELCOME:
        fixed = CW_TUN_WELCOME_LEN;
        break;
    case CW_TUN_ACK:
    case CW_TUN_PING:
    case CW_TUN_PONG:
    case CW_TUN_FIN:
        fixed = 8;
        break;
    case CW_TUN_REFUSE:
    case CW_TUN_ABORT:
        if (d->len < 1 || d->len > 1 + CW_TUN_MAX_TEXT)
            return dec_fail(d, "REFUSE/ABORT frame of a bad length");
        d->state = DS_CONTROL;
        return 0;
    case CW_TUN_DATA:
        if (d->len <= 8)
            return dec_fail(d, "DATA frame without data");
        if (d->len > 8 + CW_TUN_MAX_DATA)
            return dec_fail(d, "DATA frame over the size limit");
        d->state = DS_OFFSET;
        return 0;
    default:
        return dec_fail(d, "unknown frame type");
    }
    if (d->len != fixed)
        return dec_fail(d, "control frame of a bad length");
    d->state = DS_CONTROL;
    return 0;
}

/* A control payload is complete in d->ctl: fill *f. */
static int dec_control_done(cw_tun_dec_t *d, cw_tun_frame_t *f)
{
    const uint8_t *p = d->ctl;
    memset(f, 0, sizeof *f);
    f->type = d->type;
    switch (d->type) {
    case CW_TUN_HELLO:
        if (memcmp(p, hello_magic, 4) != 0)
            return dec_fail(d, "HELLO without the CWTN magic");
        if (p[5] > 1)
            return dec_fail(d, "HELLO of an unknown kind");
        f->hello.version = p[4];
        f->hello.resume = p[5] == 1;
        f->hello.buffer = get32(p + 6);
        f->hello.id = get64(p + 10);
        memcpy(f->hello.token, p + 18, CW_TUN_TOKEN_LEN);
        f->hello.received = get64(p + 34);
        f->hello.link_seq = get32(p + 42);
        break;
    case CW_TUN_WELCOME:
        if (p[1] > 1)
            return dec_fail(d, "WELCOME with unknown flags");
        f->welcome.version = p[0];
        f->welcome.resumed = p[1] == 1;
        f->welcome.buffer = get32(p + 2);
        f->welcome.window = get32(p + 6);
        f->welcome.id = get64(p + 10);
        memcpy(f->welcome.token, p + 18, CW_TUN_TOKEN_LEN);
        f->welcome.received = get64(p + 34);
        break;
    case CW_TUN_REFUSE:
    case CW_TUN_ABORT:
        f->reason = p[0];
        f->data = p + 1;
        f->len = d->len - 1;
        break;
    default: /* the u64 frames */
        f->value = get64(p);
        break;
    }
    d->state = DS_HEADER;
    d->have = 0;
    return 1;
}

int cw_tun_dec_feed(cw_tun_dec_t *d, const uint8_t *in, size_t len, size_t *used, cw_tun_frame_t *f)
{
    size_t i = 0;
    *used = 0;
    while (i < len || d->state == DS_PAYLOAD) {
        switch (d->state) {
        case DS_FAILED:
            return CW_EPROTO;
        case DS_HEADER: {
            size_t n = CW_TUN_HEADER - d->have;
            if (n > len - i)
                n = len - i;
            memcpy(d->hdr + d->have, in + i, n);
            d->have += n;
            i += n;
            *used = i;
            if (d->have < CW_TUN_HEADER)
                return 0;
            if (dec_header_done(d) < 0)
                return CW_EPROTO;
            break;
        }
        case DS_OFFSET: {
            size_t n = CW_TUN_HEADER + 8 - d->have;
            if (n > len - i)
                n = len - i;
            memcpy(d->hdr + d->have, in + i, n);
            d->have += n;
            i += n;
            *used = i;
            if (d->have < CW_TUN_HEADER + 8)
                return 0;
            d->offset = get64(d->hdr + CW_TUN_HEADER);
            d->done = 8;
            if (d->offset > UINT64_MAX - (d->len - 8))
                return dec_fail(d, "DATA offset overflows");
            d->state = DS_PAYLOAD;
            break;
        }
        case DS_PAYLOAD: {
            size_t n = d->len - d->done;
            if (n > len - i)
                n = len - i;
            if (n == 0)
                return 0; /* no input left for the payload */
            memset(f, 0, sizeof *f);
            f->type = CW_TUN_DATA;
            f->value = d->offset;
            f->frame_end = d->offset + (d->len - d->done);
            f->data = in + i;
            f->len = n;
            d->offset += n;
            d->done += (uint32_t)n;
            i += n;
            *used = i;
            f->last = d->done == d->len;
            if (f->last) {
                d->state = DS_HEADER;
                d->have = 0;
            }
            return 1;
        }
        case DS_CONTROL: {
            size_t n = d->len - d->done;
            if (n > len - i)
                n = len - i;
            memcpy(d->ctl + d->done, in + i, n);
            d->done += (uint32_t)n;
            i += n;
            *used = i;
            if (d->done < d->len)
                return 0;
            return dec_control_done(d, f);
        }
        default:
            return dec_fail(d, "decoder state corrupt");
        }
    }
    *used = i;
    return d->state == DS_FAILED ? CW_EPROTO : 0;
}

bool cw_tun_token_equal(const uint8_t a[CW_TUN_TOKEN_LEN], const uint8_t b[CW_TUN_TOKEN_LEN])
{
    /* constant time: the comparison must not tell how many bytes matched */
    volatile uint8_t diff = 0;
    for (size_t i = 0; i < CW_TUN_TOKEN_LEN; i++)
        diff |= a[i] ^ b[i];
    return diff == 0;
}

int cw_tun_new_credentials(uint64_t *id, uint8_t token[CW_TUN_TOKEN_LEN])
{
    int rc;
    do {
        rc = cw_random_bytes(id, sizeof *id);
    } while (rc == 0 && *id == 0);
    if (rc == 0)
        rc = cw_random_bytes(token, CW_TUN_TOKEN_LEN);
    return rc;
}

/* ---- session: replay buffer ------------------------------------------- */

/* Free every chunk. */
static void replay_clear(cw_tun_t *t)
{
    while (t->head) {
        cw_tun_chunk_t *n = t->head->next;
        free(t->head);
        t->head = n;
    }
    t->tail = NULL;
    t->head_off = t->tail_len = 0;
    t->base = t->end;
}

/* Drop buffered bytes below position `upto` (clamped to end). */
static void replay_release(cw_tun_t *t, uint64_t upto)
{
    if (upto > t->end)
        upto = t->end;
    if (upto <= t->base)
        return;
    if (upto == t->end) {
        replay_clear(t); /* an idle session holds no chunk */
        return;
    }
    uint64_t n = upto - t->base;
    while (n > 0) {
        size_t in_head = CW_TUN_CHUNK - t->head_off;
        if (n < in_head) {
            t->head_off += (size_t)n;
            break;
        }
        n -= in_head;
        cw_tun_chunk_t *next = t->head->next;
        free(t->head);
        t->head = next;
        t->head_off = 0;
    }
    t->base = upto;
}

/* Copy n buffered bytes starting at position pos (base <= pos, pos + n <= end). */
static void replay_copy(const cw_tun_t *t, uint64_t pos, uint8_t *out, size_t n)
{
    const cw_tun_chunk_t *c = t->head;
    uint64_t skip = pos - t->base + t->head_off;
    while (skip >= CW_TUN_CHUNK) {
        skip -= CW_TUN_CHUNK;
        c = c->next;
    }
    size_t off = (size_t)skip;
    while (n > 0) {
        size_t k = CW_TUN_CHUNK - off;
        if (k > n)
            k = n;
        memcpy(out, c->data + off, k);
        out += k;
        n -= k;
        off = 0;
        c = c->next;
    }
}

/* ---- session ----------------------------------------------------------- */

void cw_tun_init(cw_tun_t *t, cw_tun_role_t role, size_t buffer, const cw_tun_callbacks_t *cb,
                 void *ud)
{
    memset(t, 0, sizeof *t);
    t->role = role;
    t->state = CW_TUN_ST_IDLE;
    t->cb = cb;
    t->ud = ud;
    if (buffer == 0)
        buffer = CW_TUN_DEFAULT_BUFFER;
    if (buffer < CW_TUN_MIN_BUFFER)
        buffer = CW_TUN_MIN_BUFFER;
    if (buffer > CW_TUN_MAX_BUFFER)
        buffer = CW_TUN_MAX_BUFFER;
    t->cap = buffer;
    cw_tun_dec_init(&t->dec);
}

void cw_tun_free(cw_tun_t *t)
{
    if (t == NULL)
        return;
    replay_clear(t);
}

/* The one place the state changes. */
static void tun_set_state(cw_tun_t *t, cw_tun_state_t s)
{
    t->state = s;
}

/* Keep text for logs: printable ASCII, others as '?'. */
static void set_close(cw_tun_t *t, int reason, const uint8_t *text, size_t len)
{
    t->close_reason = reason;
    if (len > CW_TUN_MAX_TEXT)
        len = CW_TUN_MAX_TEXT;
    for (size_t i = 0; i < len; i++)
        t->close_text[i] = text[i] >= 0x20 && text[i] < 0x7F ? (char)text[i] : '?';
    t->close_text[len] = '\0';
}

/* Move to CLOSED: drop what is buffered; an ABORT goes out if asked. */
static void tun_close(cw_tun_t *t, int reason, const uint8_t *text, size_t len, bool send_abort)
{
    bool linked = t->state == CW_TUN_ST_OPEN || t->state == CW_TUN_ST_HELLO;
    set_close(t, reason, text, len);
    t->hs_due = t->pong_due = t->ping_due = false;
    t->abort_due = send_abort && linked;
    if (reason != CW_TUN_R_ENDED)
        t->ack_now = false;
    replay_clear(t);
    tun_set_state(t, CW_TUN_ST_CLOSED);
}

/* Close and tell the owner. */
static void tun_close_cb(cw_tun_t *t, int reason, const char *text, bool send_abort)
{
    tun_close(t, reason, (const uint8_t *)text, text ? strlen(text) : 0, send_abort);
    if (t->cb->on_closed)
        t->cb->on_closed(t->ud, t->close_reason, t->close_text);
}

/* The peer broke the protocol: ABORT it and report. */
static int protocol_error(cw_tun_t *t, const char *why)
{
    tun_close_cb(t, CW_TUN_R_PROTOCOL, why, true);
    return CW_EPROTO;
}

void cw_tun_abort(cw_tun_t *t, int reason, const char *text)
{
    if (t->state == CW_TUN_ST_CLOSED)
        return;
    tun_close(t, reason, (const uint8_t *)text, text ? strlen(text) : 0, true);
}

/* Both streams ended and our FIN is acknowledged: the session is complete. */
static uint64_t ack_value(const cw_tun_t *t);

static void check_complete(cw_tun_t *t)
{
    if (t->state == CW_TUN_ST_OPEN && t->fin_written && t->acked == t->end + 1 && t->fin_received &&
        ack_value(t) == t->received) {
        t->ack_now = true; /* their FIN still needs our ACK */
        tun_close_cb(t, CW_TUN_R_ENDED, "both streams ended", false);
    }
}

/* Start a link's handshake state: fresh decoder, nothing due. */
static void link_reset(cw_tun_t *t)
{
    cw_tun_dec_init(&t->dec);
    t->hs_due = t->abort_due = t->pong_due = t->ping_due = t->ack_now = false;
}

int cw_tun_client_link(cw_tun_t *t)
{
    if (t->role != CW_TUN_CLIENT || (t->state != CW_TUN_ST_IDLE && t->state != CW_TUN_ST_DETACHED))
        return CW_EPROTO;
    link_reset(t);
    t->hs_due = true;
    t->link_seq++;
    tun_set_state(t, CW_TUN_ST_HELLO);
    return 0;
}

/* Room came back (an ACK, or a resume's offset): restart a stopped source. */
static void room_check(cw_tun_t *t)
{
    if (t->blocked && cw_tun_room(t) > 0 && !t->fin_written && t->state != CW_TUN_ST_CLOSED) {
        t->blocked = false;
        if (t->cb->on_room)
            t->cb->on_room(t->ud);
    }
}

/* Accept the peer's `received` for our stream: release, rewind the send point. */
static void resume_from(cw_tun_t *t, uint64_t r)
{
    if (r > t->acked)
        t->acked = r;
    replay_release(t, r);
    t->sent = r;
}

/* Whether a peer's `received` for our stream is one we can serve. */
static bool offset_ok(const cw_tun_t *t, uint64_t r)
{
    return r >= t->acked && r <= t->sent_high;
}

int cw_tun_server_new(cw_tun_t *t, uint64_t id, const uint8_t token[CW_TUN_TOKEN_LEN],
                      const cw_tun_hello_t *h, uint32_t window)
{
    if (t->role != CW_TUN_SERVER || t->state != CW_TUN_ST_IDLE)
        return CW_TUN_R_INTERNAL;
    if (h->version != CW_TUN_VERSION)
        return CW_TUN_R_VERSION;
    static const uint8_t zero[CW_TUN_TOKEN_LEN];
    if (h->resume || h->id != 0 || h->received != 0 || memcmp(h->token, zero, sizeof zero) != 0)
        return CW_TUN_R_PROTOCOL;
    if (id == 0)
        return CW_TUN_R_INTERNAL;
    link_reset(t);
    t->id = id;
    memcpy(t->token, token, CW_TUN_TOKEN_LEN);
    t->have_session = true;
    t->peer_buffer = h->buffer;
    t->window = window;
    t->link_seq = h->link_seq;
    t->hs_due = true;
    t->hs_resumed = false;
    tun_set_state(t, CW_TUN_ST_OPEN);
    return 0;
}

int cw_tun_server_resume(cw_tun_t *t, const cw_tun_hello_t *h, uint32_t window)
{
    if (t->role != CW_TUN_SERVER)
        return CW_TUN_R_INTERNAL;
    if (h->version != CW_TUN_VERSION)
        return CW_TUN_R_VERSION;
    if (t->state == CW_TUN_ST_CLOSED)
        return t->close_reason == CW_TUN_R_ENDED ? CW_TUN_R_ENDED : CW_TUN_R_EXPIRED;
    if (t->state != CW_TUN_ST_OPEN && t->state != CW_TUN_ST_DETACHED)
        return CW_TUN_R_UNKNOWN;
    if (!h->resume || h->id != t->id)
        return CW_TUN_R_PROTOCOL;
    if (!cw_tun_token_equal(h->token, t->token))
        return CW_TUN_R_BAD_TOKEN;
    if (h->link_seq <= t->link_seq)
        return CW_TUN_R_STALE; /* a delayed HELLO of an attempt the client gave up */
    if (!offset_ok(t, h->received))
        return CW_TUN_R_BAD_OFFSET;
    link_reset(t);
    resume_from(t, h->received);
    t->peer_buffer = h->buffer;
    t->window = window;
    t->link_seq = h->link_seq;
    t->hs_due = true;
    t->hs_resumed = true;
    tun_set_state(t, CW_TUN_ST_OPEN);
    room_check(t);
    if (t->state == CW_TUN_ST_OPEN)
        check_complete(t);
    return 0;
}

void cw_tun_link_lost(cw_tun_t *t)
{
    link_reset(t);
    if (t->state == CW_TUN_ST_OPEN || t->state == CW_TUN_ST_HELLO)
        tun_set_state(t, t->have_session ? CW_TUN_ST_DETACHED : CW_TUN_ST_IDLE);
}

/* Acknowledgement threshold: a quarter of the peer's replay buffer. */
static uint64_t ack_threshold(const cw_tun_t *t)
{
    uint64_t b = t->peer_buffer ? t->peer_buffer : CW_TUN_DEFAULT_BUFFER;
    return b / 4 ? b / 4 : 1;
}

/* What an ACK says now: everything received, or (tracking the consumer)
 * what it took, the FIN counting once every byte before it was taken. */
static uint64_t ack_value(const cw_tun_t *t)
{
    if (!t->track_consumed)
        return t->received;
    uint64_t bytes = t->received - (t->fin_received ? 1 : 0);
    if (t->consumed >= bytes)
        return t->received;
    return t->consumed;
}

/* Ask for an ACK when enough has accumulated since the last one. */
static void ack_check(cw_tun_t *t)
{
    uint64_t v = ack_value(t);
    if (v > t->ack_sent && v - t->ack_sent >= ack_threshold(t))
        t->ack_now = true;
}

/* A WELCOME on a link in HELLO state. */
static int on_welcome(cw_tun_t *t, const cw_tun_welcome_t *w)
{
    if (w->version != CW_TUN_VERSION)
        return protocol_error(t, "WELCOME of an unsupported version");
    if (w->id == 0)
        return protocol_error(t, "WELCOME without a session id");
    if (t->have_session) {
        if (!w->resumed || w->id != t->id || memcmp(w->token, t->token, CW_TUN_TOKEN_LEN) != 0)
            return protocol_error(t, "WELCOME for another session");
    } else if (w->resumed) {
        return protocol_error(t, "WELCOME resumes a session we never had");
    }
    if (!offset_ok(t, w->received))
        return protocol_error(t, "WELCOME offset outside what was sent");
    resume_from(t, w->received);
    if (!t->have_session) {
        t->id = w->id;
        memcpy(t->token, w->token, CW_TUN_TOKEN_LEN);
        t->have_session = true;
    }
    t->peer_buffer = w->buffer;
    t->window = w->window;
    tun_set_state(t, CW_TUN_ST_OPEN);
    if (t->cb->on_open)
        t->cb->on_open(t->ud, w->resumed);
    if (t->state == CW_TUN_ST_OPEN)
        room_check(t);
    if (t->state == CW_TUN_ST_OPEN)
        check_complete(t);
    return 0;
}

/* A DATA piece: deliver what is new. */
static int on_data_piece(cw_tun_t *t, const cw_tun_frame_t *f)
{
    uint64_t o = f->value, n = f->len;
    /* frames are judged whole (frame_end), so the result does not depend on how the input
     * was cut into pieces */
    if (o > t->received)
        return protocol_error(t, "DATA leaves a gap in the stream");
    if (t->fin_received && f->frame_end > t->received - 1)
        return protocol_error(t, "DATA after the stream's FIN");
    /* the peer may hold at most its announced buffer unacknowledged */
    if (t->peer_buffer && f->frame_end > t->ack_sent + t->peer_buffer)
        return protocol_error(t, "DATA beyond the peer's announced buffer");
    uint64_t skip = t->received - o;
    if (skip >= n)
        return 0; /* already had all of it */
    size_t fresh = (size_t)(n - skip);
    t->received += fresh;
    ack_check(t);
    if (t->cb->on_data)
        return t->cb->on_data(t->ud, (uint8_t *)f->data + skip, fresh);
    return 0;
}

/* An ACK: release what the peer has. */
static int on_ack(cw_tun_t *t, uint64_t a)
{
    if (a > t->sent_high)
        return protocol_error(t, "ACK of data never sent");
    if (a <= t->acked)
        return 0;
    t->acked = a;
    replay_release(t, a);
    room_check(t);
    if (t->state == CW_TUN_ST_OPEN)
        check_complete(t);
    return 0;
}

/* The peer's FIN at offset o. */
static int on_fin(cw_tun_t *t, uint64_t o)
{
    if (t->fin_received) {
        if (o + 1 == t->received)
            return 0; /* the same FIN again */
        return protocol_error(t, "a second FIN at another offset");
    }
    if (o != t->received)
        return protocol_error(t, "FIN at an offset other than the stream's end");
    t->fin_received = true;
    t->received++;
    t->ack_now = true;
    if (t->cb->on_fin)
        t->cb->on_fin(t->ud);
    if (t->state == CW_TUN_ST_OPEN)
        check_complete(t);
    return 0;
}

/* One decoded event on an OPEN link. */
static int on_frame_open(cw_tun_t *t, const cw_tun_frame_t *f)
{
    switch (f->type) {
    case CW_TUN_DATA:
        return on_data_piece(t, f);
    case CW_TUN_ACK:
        return on_ack(t, f->value);
    case CW_TUN_PING:
        t->pong_due = true;
        t->pong_value = f->value;
        return 0;
    case CW_TUN_PONG:
        return 0; /* liveness is the adapter's: any byte counts */
    case CW_TUN_FIN:
        return on_fin(t, f->value);
    case CW_TUN_ABORT:
        tun_close(t, f->reason, f->data, f->len, false);
        if (t->cb->on_closed)
            t->cb->on_closed(t->ud, t->close_reason, t->close_text);
        return CW_ECLOSED;
    default:
        return protocol_error(t, t->role == CW_TUN_SERVER ? "handshake frame on an open link"
                                                          : "handshake frame after WELCOME");
    }
}

int cw_tun_feed(cw_tun_t *t, uint8_t *data, size_t len)
{
    if (t->in_feed)
        return -EBUSY; /* called from one of its own callbacks */
    if (t->state == CW_TUN_ST_CLOSED)
        return CW_ECLOSED;
    if (t->state != CW_TUN_ST_OPEN && t->state != CW_TUN_ST_HELLO)
        return -EINVAL; /* no link: a caller's mistake */
    t->in_feed = true;
    int rc = 0;
    size_t pos = 0;
    while (pos < len && rc == 0) {
        size_t used;
        cw_tun_frame_t f;
        int r = cw_tun_dec_feed(&t->dec, data + pos, len - pos, &used, &f);
        pos += used;
        if (r < 0) {
            rc = protocol_error(t, cw_tun_dec_error(&t->dec));
            break;
        }
        if (r == 0)
            break;
        if (t->state == CW_TUN_ST_HELLO) {
            if (f.type == CW_TUN_WELCOME) {
                rc = on_welcome(t, &f.welcome);
            } else if (f.type == CW_TUN_REFUSE) {
                tun_close(t, f.reason, f.data, f.len, false);
                if (t->cb->on_closed)
                    t->cb->on_closed(t->ud, t->close_reason, t->close_text);
                rc = CW_ECLOSED;
            } else {
                rc = protocol_error(t, "frame before WELCOME");
            }
        } else if (t->state == CW_TUN_ST_OPEN) {
            rc = on_frame_open(t, &f);
        }
        if (rc == 0 && t->state == CW_TUN_ST_CLOSED)
            rc = CW_ECLOSED; /* a callback ended the session */
        if (rc == 0 && t->state != CW_TUN_ST_OPEN && t->state != CW_TUN_ST_HELLO)
            break;
    }
    t->in_feed = false;
    return rc;
}

/* ---- output ---------------------------------------------------------- */

bool cw_tun_want_output(const cw_tun_t *t)
{
    bool ack = t->ack_now && ack_value(t) > t->ack_sent;
    switch (t->state) {
    case CW_TUN_ST_HELLO:
        return t->hs_due;
    case CW_TUN_ST_OPEN:
        return t->hs_due || t->pong_due || t->ping_due || ack || t->sent < t->end ||
               (t->fin_written && t->sent == t->end);
    case CW_TUN_ST_CLOSED:
        return t->abort_due || ack;
    default:
        return false;
    }
}

size_t cw_tun_output(cw_tun_t *t, uint8_t *out, size_t cap)
{
    size_t n = 0;
    if (cap < CW_TUN_OUTPUT_MIN)
        return 0;
    if (t->state == CW_TUN_ST_CLOSED) {
        if (t->ack_now && ack_value(t) > t->ack_sent) {
            t->ack_sent = ack_value(t);
            n += cw_tun_enc_u64(out + n, CW_TUN_ACK, t->ack_sent);
        }
        t->ack_now = false;
        if (t->abort_due && cap - n >= CW_TUN_TEXT_FRAME) {
            n += cw_tun_enc_reason(out + n, CW_TUN_ABORT, (uint8_t)t->close_reason, t->close_text);
            t->abort_due = false;
        }
        return n;
    }
    if (t->state != CW_TUN_ST_OPEN && t->state != CW_TUN_ST_HELLO)
        return 0;
    if (t->hs_due) {
        if (t->role == CW_TUN_CLIENT) {
            cw_tun_hello_t h = {.version = CW_TUN_VERSION,
                                .resume = t->have_session,
                                .buffer = (uint32_t)t->cap,
                                .id = t->have_session ? t->id : 0,
                                .received = t->received,
                                .link_seq = t->link_seq};
            if (t->have_session)
                memcpy(h.token, t->token, CW_TUN_TOKEN_LEN);
            n += cw_tun_enc_hello(out + n, &h);
        } else {
            cw_tun_welcome_t w = {.version = CW_TUN_VERSION,
                                  .resumed = t->hs_resumed,
                                  .buffer = (uint32_t)t->cap,
                                  .window = t->window,
                                  .id = t->id,
                                  .received = t->received};
            memcpy(w.token, t->token, CW_TUN_TOKEN_LEN);
            n += cw_tun_enc_welcome(out + n, &w);
        }
        t->ack_sent = t->received;
        t->hs_due = false;
    }
    if (t->state == CW_TUN_ST_HELLO)
        return n; /* nothing else before WELCOME */
    /* control frames: at most 3 x 13 bytes */
    if (t->pong_due) {
        n += cw_tun_enc_u64(out + n, CW_TUN_PONG, t->pong_value);
        t->pong_due = false;
    }
    if (t->ping_due) {
        n += cw_tun_enc_u64(out + n, CW_TUN_PING, t->ping_value);
        t->ping_due = false;
    }
    if (t->ack_now && ack_value(t) > t->ack_sent) {
        t->ack_sent = ack_value(t);
        n += cw_tun_enc_u64(out + n, CW_TUN_ACK, t->ack_sent);
    }
    t->ack_now = false;
    /* data from the send point, whole frames only */
    while (t->sent < t->end && cap - n > CW_TUN_HEADER + 8) {
        uint64_t avail = t->end - t->sent;
        size_t k = avail > CW_TUN_SEND_DATA ? CW_TUN_SEND_DATA : (size_t)avail;
        size_t room = cap - n - (CW_TUN_HEADER + 8);
        if (k > room) {
            /* a short frame only when nothing else fits in this buffer */
            if (n > 0 && room < k / 2)
                break;
            k = room;
        }
        n += cw_tun_enc_data_header(out + n, t->sent, k);
        replay_copy(t, t->sent, out + n, k);
        n += k;
        t->sent += k;
    }
    if (t->fin_written && t->sent == t->end && cap - n >= CW_TUN_HEADER + 8) {
        n += cw_tun_enc_u64(out + n, CW_TUN_FIN, t->end);
        t->sent = t->end + 1;
    }
    if (t->sent > t->sent_high)
        t->sent_high = t->sent;
    return n;
}

/* ---- source side ----------------------------------------------------- */

size_t cw_tun_room(const cw_tun_t *t)
{
    uint64_t used = t->end - t->base;
    return used >= t->cap ? 0 : t->cap - (size_t)used;
}

size_t cw_tun_buffered(const cw_tun_t *t)
{
    return (size_t)(t->end - t->base);
}

size_t cw_tun_allocated(const cw_tun_t *t)
{
    size_t n = 0;
    for (const cw_tun_chunk_t *c = t->head; c; c = c->next)
        n += sizeof *c;
    return n;
}

size_t cw_tun_write(cw_tun_t *t, const uint8_t *data, size_t len)
{
    if (t->state == CW_TUN_ST_CLOSED || t->fin_written)
        return 0;
    size_t room = cw_tun_room(t);
    size_t n = len < room ? len : room;
    size_t done = 0;
    while (done < n) {
        if (t->tail == NULL || t->tail_len == CW_TUN_CHUNK) {
            cw_tun_chunk_t *c = malloc(sizeof *c);
            if (c == NULL) {
                tun_close_cb(t, CW_TUN_R_INTERNAL, "out of memory for the replay buffer", true);
                return 0;
            }
            c->next = NULL;
            if (t->tail)
                t->tail->next = c;
            else
                t->head = c, t->head_off = 0;
            t->tail = c;
            t->tail_len = 0;
        }
        size_t k = CW_TUN_CHUNK - t->tail_len;
        if (k > n - done)
            k = n - done;
        memcpy(t->tail->data + t->tail_len, data + done, k);
        t->tail_len += k;
        done += k;
        t->end += k;
    }
    /* full (or refused some): the source stops, on_room restarts it */
    if (n < len || cw_tun_room(t) == 0)
        t->blocked = true;
    return n;
}

int cw_tun_write_fin(cw_tun_t *t)
{
    if (t->state == CW_TUN_ST_CLOSED)
        return CW_ECLOSED;
    t->fin_written = true;
    t->blocked = false;
    return 0;
}

void cw_tun_ping(cw_tun_t *t, uint64_t value)
{
    t->ping_due = true;
    t->ping_value = value;
}

bool cw_tun_ack_pending(const cw_tun_t *t)
{
    return ack_value(t) > t->ack_sent;
}

void cw_tun_flush_ack(cw_tun_t *t)
{
    if (ack_value(t) > t->ack_sent)
        t->ack_now = true;
}

void cw_tun_track_consumed(cw_tun_t *t)
{
    t->track_consumed = true;
    t->consumed = t->received;
}

void cw_tun_consumed(cw_tun_t *t, uint64_t pos)
{
    uint64_t bytes = t->received - (t->fin_received ? 1 : 0);
    if (pos > bytes)
        pos = bytes;
    if (pos <= t->consumed)
        return;
    t->consumed = pos;
    ack_check(t);
    if (t->fin_received && ack_value(t) == t->received) {
        t->ack_now = true; /* the FIN's ACK goes out at once, as without tracking */
        check_complete(t);
    }
}

cw_tun_state_t cw_tun_state(const cw_tun_t *t)
{
    return t->state;
}

int cw_tun_close_reason(const cw_tun_t *t)
{
    return t->close_reason;
}

const char *cw_tun_close_text(const cw_tun_t *t)
{
    return t->close_text;
}
