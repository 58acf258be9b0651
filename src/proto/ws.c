/* RFC 6455 WebSocket framing and session: a resumable parser and an encoder, no I/O.
 *
 * The contract is in include/cworker/ws.h.  Choices the header leaves open:
 *
 * - Length encodings must be minimal (RFC 6455 §5.2 says MUST; checking costs one compare), so a
 *   5-byte payload announced with the 16-bit form is a protocol error, like a 64-bit length with
 *   the top bit set.
 * - Once the session is CW_WS_CLOSED, cw_ws_feed() ignores the bytes and returns CW_ECLOSED, so
 *   a caller that keeps feeding learns the session is over.
 * - After we sent Close (CW_WS_CLOSING) data frames are still parsed and checked, because the
 *   peer's Close must be found behind them, but their payload is dropped without being buffered or
 *   delivered, and pings are not answered.
 * - Text is checked for UTF-8 when the message is complete, not fragment by fragment.
 * - Close codes accepted from the peer are those RFC 6455 §7.4 defines for use on the wire:
 *   1000-1003, 1007-1011 and 3000-4999; anything else (1005, 1006, 1015, 1012-1014 ...) is a
 *   protocol error.  The reply to a Close echoes the peer's code without a reason, and is empty
 *   when the peer's Close had no code.
 * - On a protocol error the Close we send carries no reason, and its on_send result is ignored:
 *   the error that caused it is the more useful thing to return.
 * - An error returned by on_message or on_send also ends the session (CW_WS_CLOSED), since the
 *   rest of the input was not consumed; the caller may still send its own Close with
 *   cw_ws_close() when none was sent yet.
 * - cw_ws_close() with code 0 sends a Close without a status code.
 * - on_message must not call cw_ws_feed() or cw_ws_free() on its session; it may call
 *   cw_ws_encode(), cw_ws_ping() and cw_ws_close().
 */
#include "cworker/utf8.h"
#include "cworker/ws.h"

#include <errno.h>
#include <stdatomic.h>
#include <string.h>

#include "cworker/cw.h"

enum parse_state {
    PS_HEADER,  /* collecting header bytes into ws->hdr */
    PS_PAYLOAD, /* consuming f_len payload bytes */
};

#define DEFAULT_MAX_MESSAGE ((size_t)64 << 20)
/* A message buffer grown beyond this is released after delivery instead of being kept for the
 * next message, so one big message does not pin its memory for the life of the connection. */
#define KEEP_MSG_CAP ((size_t)1 << 20)
/* The largest single-frame message whose buffer is sized from its header. */
#define EXACT_MSG_MAX ((size_t)16 << 20)
#define MAX_CONTROL   125

/* True for the opcodes RFC 6455 defines; the others are reserved and refused. */
static bool opcode_known(unsigned op)
{
    switch (op) {
    case CW_WS_OP_CONT:
    case CW_WS_OP_TEXT:
    case CW_WS_OP_BINARY:
    case CW_WS_OP_CLOSE:
    case CW_WS_OP_PING:
    case CW_WS_OP_PONG:
        return true;
    default:
        return false;
    }
}

/* True for status codes a peer may put in a Close frame (RFC 6455 §7.4.1, §7.4.2). */
static bool close_code_valid(unsigned code)
{
    return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1011) ||
           (code >= 3000 && code <= 4999);
}

/* splitmix64 step, used only to make a masking key when the CSPRNG fails. */
static uint64_t splitmix64(uint64_t x)
{
    x += 0x9E3779B97F4A7C15u;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9u;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBu;
    return x ^ (x >> 31);
}

/* Keys come from a per-thread pool refilled 64 at a time: a getrandom call costs about a
 * microsecond whatever its size, more than masking a small message.  Pooling is safe here
 * because a key stops being secret the moment its frame is sent anyway; a forked child would
 * share the pool, but children exec at once and never speak WebSocket. */
static _Thread_local struct {
    uint8_t bytes[256];
    size_t used;
} key_pool = {.used = sizeof(key_pool.bytes)};

/* Fill a fresh masking key (RFC 6455 §5.3 wants it unpredictable, hence the kernel's CSPRNG). */
static void random_key(uint8_t key[4])
{
    if (key_pool.used == sizeof(key_pool.bytes)) {
        if (cw_random_bytes(key_pool.bytes, sizeof(key_pool.bytes)) != 0) {
            /* The generator failing is not the peer's fault and encode cannot report it; a key
             * that is merely hard to guess still keeps the payload off the wire verbatim. */
            static atomic_uint_fast64_t counter;
            uint64_t x = splitmix64(atomic_fetch_add(&counter, 1) ^ (uint64_t)(uintptr_t)key);
            memcpy(key, &x, 4);
            return;
        }
        key_pool.used = 0;
    }
    memcpy(key, key_pool.bytes + key_pool.used, 4);
    key_pool.used += 4;
}

size_t cw_ws_frame_header(uint8_t out[CW_WS_MAX_HEADER], unsigned opcode, bool fin,
                          uint64_t payload_len, const uint8_t *mask_key)
{
    uint8_t masked = mask_key ? 0x80 : 0;
    size_t n;

    out[0] = (uint8_t)((fin ? 0x80 : 0) | (opcode & 0x0F));
    if (payload_len < 126) {
        out[1] = (uint8_t)(masked | payload_len);
        n = 2;
    } else if (payload_len <= 0xFFFF) {
        out[1] = masked | 126;
        out[2] = (uint8_t)(payload_len >> 8);
        out[3] = (uint8_t)payload_len;
        n = 4;
    } else {
        out[1] = masked | 127;
        for (int i = 0; i < 8; i++)
            out[2 + i] = (uint8_t)(payload_len >> (56 - 8 * i));
        n = 10;
    }
    if (mask_key) {
        memcpy(out + n, mask_key, 4);
        n += 4;
    }
    return n;
}

void cw_ws_mask(uint8_t *data, size_t len, const uint8_t key[4], uint64_t offset)
{
    /* k[j] is the key byte for data[j]: the key rotated to the payload offset. */
    uint8_t k[4];
    for (unsigned j = 0; j < 4; j++)
        k[j] = key[(offset + j) & 3];

    /* Bytes up to an 8-byte boundary one at a time, so the word loop loads and stores aligned. */
    size_t i = 0;
    size_t head = (size_t)(-(uintptr_t)data & 7);
    if (head > len)
        head = len;
    for (; i < head; i++)
        data[i] ^= k[i & 3];

    /* The key as seen from byte i, repeated to 64 bits; 8 is a multiple of 4, so it stays in
     * phase from word to word.  memcpy keeps this free of aliasing trouble and compiles to
     * plain loads and stores. */
    uint8_t k8[8];
    for (unsigned j = 0; j < 8; j++)
        k8[j] = k[(i + j) & 3];
    uint64_t kw;
    memcpy(&kw, k8, 8);
    for (; len - i >= 32; i += 32) {
        uint64_t w[4];
        memcpy(w, data + i, 32);
        w[0] ^= kw;
        w[1] ^= kw;
        w[2] ^= kw;
        w[3] ^= kw;
        memcpy(data + i, w, 32);
    }
    for (; len - i >= 8; i += 8) {
        uint64_t w;
        memcpy(&w, data + i, 8);
        w ^= kw;
        memcpy(data + i, &w, 8);
    }
    for (; i < len; i++)
        data[i] ^= k[i & 3];
}

void cw_ws_mask_copy(uint8_t *restrict dst, const uint8_t *restrict src, size_t len,
                     const uint8_t key[4], uint64_t offset)
{
    uint8_t k8[8];
    for (unsigned j = 0; j < 8; j++)
        k8[j] = key[(offset + j) & 3];
    uint64_t kw;
    memcpy(&kw, k8, 8);
    /* 8 is a multiple of 4: the key stays in phase from word to word; the compiler
     * turns the 32-byte block into vector loads and stores. */
    size_t i = 0;
    for (; len - i >= 32; i += 32) {
        uint64_t w[4];
        memcpy(w, src + i, 32);
        w[0] ^= kw;
        w[1] ^= kw;
        w[2] ^= kw;
        w[3] ^= kw;
        memcpy(dst + i, w, 32);
    }
    for (; len - i >= 8; i += 8) {
        uint64_t w;
        memcpy(&w, src + i, 8);
        w ^= kw;
        memcpy(dst + i, &w, 8);
    }
    for (; i < len; i++)
        dst[i] = src[i] ^ k8[i & 7];
}

void cw_ws_init(cw_ws_t *ws, cw_ws_role_t role, size_t max_message, const cw_ws_callbacks_t *cb,
                void *ud)
{
    memset(ws, 0, sizeof(*ws));
    ws->role = role;
    ws->state = CW_WS_OPEN;
    ws->max_message = max_message ? max_message : DEFAULT_MAX_MESSAGE;
    ws->cb = cb;
    ws->ud = ud;
    ws->pstate = PS_HEADER;
    ws->hdr_need = 2;
    ws->msg = (cw_buf_t)CW_BUF_INIT;
}

void cw_ws_free(cw_ws_t *ws)
{
    if (ws == NULL)
        return;
    cw_buf_free(&ws->msg);
}

uint8_t *cw_ws_take_message(cw_ws_t *ws, size_t *len)
{
    if (!ws->msg_delivering)
        return NULL;
    uint8_t *p = ws->msg.data;
    *len = ws->msg.len;
    ws->msg = (cw_buf_t)CW_BUF_INIT;
    ws->msg_delivering = false;
    return p;
}

bool cw_ws_message_holds(const cw_ws_t *ws, const uint8_t *p, size_t n)
{
    const uint8_t *m = ws->msg.data;
    return ws->msg_delivering && p >= m && n <= ws->msg.len && p <= m + (ws->msg.len - n);
}

cw_ws_state_t cw_ws_state(const cw_ws_t *ws)
{
    return ws->state;
}

/* Frame a control message (<= 125 bytes) and hand it to on_send in one piece. */
static int send_control(cw_ws_t *ws, unsigned opcode, const uint8_t *payload, size_t len)
{
    uint8_t frame[CW_WS_MAX_HEADER + MAX_CONTROL];
    uint8_t key[4];
    const uint8_t *mask_key = NULL;

    if (ws->role == CW_WS_CLIENT) {
        random_key(key);
        mask_key = key;
    }
    size_t n = cw_ws_frame_header(frame, opcode, true, len, mask_key);
    if (len > 0) {
        memcpy(frame + n, payload, len);
        if (mask_key)
            cw_ws_mask(frame + n, len, mask_key, 0);
    }
    return ws->cb->on_send(ws->ud, frame, n + len);
}

/* Send our Close; code 0 means a Close without a status code (the echo of such a Close). */
static int send_close(cw_ws_t *ws, unsigned code, const char *reason, size_t reason_len)
{
    uint8_t payload[MAX_CONTROL];
    size_t len = 0;

    if (code != 0) {
        payload[0] = (uint8_t)(code >> 8);
        payload[1] = (uint8_t)code;
        if (reason_len > 0)
            memcpy(payload + 2, reason, reason_len);
        len = 2 + reason_len;
    }
    /* Marked before sending: even if on_send fails, a second Close must never follow. */
    ws->close_sent = true;
    if (ws->state == CW_WS_OPEN)
        ws->state = CW_WS_CLOSING;
    return send_control(ws, CW_WS_OP_CLOSE, payload, len);
}

/* Forget the assembled message, releasing the buffer if one big message grew it. */
static void release_msg(cw_ws_t *ws)
{
    if (ws->msg.cap > KEEP_MSG_CAP)
        cw_buf_free(&ws->msg);
    else
        cw_buf_reset(&ws->msg);
}

/* End the session on an error: tell the peer why (unless our Close already went out). */
static int fail(cw_ws_t *ws, unsigned close_code, int err, const char *why)
{
    ws->error = why;
    if (!ws->close_sent)
        (void)send_close(ws, close_code, why, strlen(why));
    ws->state = CW_WS_CLOSED;
    cw_buf_free(&ws->msg);
    return err;
}

/* Check the first two header bytes and work out how long the whole header is. */
static int header_start(cw_ws_t *ws)
{
    uint8_t b0 = ws->hdr[0], b1 = ws->hdr[1];
    unsigned op = b0 & 0x0F;
    unsigned len7 = b1 & 0x7F;

    ws->f_fin = (b0 & 0x80) != 0;
    ws->f_opcode = op;
    ws->f_masked = (b1 & 0x80) != 0;

    /* No extension is ever negotiated, so no RSV bit may be set (§5.2). */
    if ((b0 & 0x70) != 0)
        return fail(ws, CW_WS_CLOSE_PROTOCOL_ERROR, CW_EPROTO, "frame with reserved bits set");
    if (!opcode_known(op))
        return fail(ws, CW_WS_CLOSE_PROTOCOL_ERROR, CW_EPROTO, "frame with an unknown opcode");
    /* Clients mask, servers do not (§5.1). */
    if (ws->f_masked != (ws->role == CW_WS_SERVER))
        return fail(ws, CW_WS_CLOSE_PROTOCOL_ERROR, CW_EPROTO,
                    ws->f_masked ? "masked frame from the server"
                                 : "unmasked frame from the client");
    if (op & 0x8) {
        if (!ws->f_fin || len7 > MAX_CONTROL)
            return fail(ws, CW_WS_CLOSE_PROTOCOL_ERROR, CW_EPROTO,
                        "fragmented or oversized control frame");
    } else if ((op == CW_WS_OP_CONT) != (ws->msg_opcode != 0)) {
        /* A continuation needs a message in progress; a new message must not interrupt one. */
        return fail(ws, CW_WS_CLOSE_PROTOCOL_ERROR, CW_EPROTO,
                    op == CW_WS_OP_CONT ? "continuation frame without a message"
                                        : "new message inside a fragmented one");
    }
    ws->hdr_need = 2 + (len7 == 126 ? 2 : len7 == 127 ? 8 : 0) + (ws->f_masked ? 4 : 0);
    return 0;
}

/* Decode the length and key of a complete header, and refuse a data frame that would take the
 * message over max_message before a byte of it is buffered. */
static int header_end(cw_ws_t *ws)
{
    const uint8_t *h = ws->hdr;
    uint64_t len = h[1] & 0x7F;
    size_t p = 2;

    if (len == 126) {
        len = (uint64_t)h[2] << 8 | h[3];
        p = 4;
        if (len < 126)
            return fail(ws, CW_WS_CLOSE_PROTOCOL_ERROR, CW_EPROTO, "non-minimal frame length");
    } else if (len == 127) {
        len = 0;
        for (int i = 0; i < 8; i++)
            len = len << 8 | h[2 + i];
        p = 10;
        if ((len >> 63) != 0 || len <= 0xFFFF)
            return fail(ws, CW_WS_CLOSE_PROTOCOL_ERROR, CW_EPROTO, "invalid 64-bit frame length");
    }
    if (ws->f_masked)
        memcpy(ws->f_mask, h + p, 4);
    ws->f_len = len;
    ws->f_done = 0;

    if ((ws->f_opcode & 0x8) == 0) {
        /* msg.len <= max_message always holds, so the subtraction cannot wrap. */
        if (len > (uint64_t)(ws->max_message - ws->msg.len))
            return fail(ws, CW_WS_CLOSE_TOO_BIG, CW_ETOOBIG, "message over the size limit");
        if (ws->f_opcode != CW_WS_OP_CONT)
            ws->msg_opcode = ws->f_opcode;
    }
    return 0;
}

/* Hand a complete data message to on_message, checking text first. */
static int deliver(cw_ws_t *ws, unsigned opcode, uint8_t *data, size_t len)
{
    if (opcode == CW_WS_OP_TEXT && !cw_utf8_valid(data, len))
        return fail(ws, CW_WS_CLOSE_INVALID_DATA, CW_EPROTO, "text message is not UTF-8");
    int rc = ws->cb->on_message(ws->ud, opcode, data, len);
    if (rc < 0) {
        ws->state = CW_WS_CLOSED;
        cw_buf_free(&ws->msg);
        return rc;
    }
    return 0;
}

/* Consume up to avail payload bytes of the current data frame from p; deliver the message when
 * its final frame completes.  *used gets the number of bytes taken. */
static int data_payload(cw_ws_t *ws, uint8_t *p, size_t avail, size_t *used)
{
    uint64_t left = ws->f_len - ws->f_done;
    size_t take = left < avail ? (size_t)left : avail;

    *used = take;
    if (ws->state != CW_WS_OPEN) {
        /* We sent Close: nobody will answer this message, so skip it without buffering. */
        ws->f_done += take;
        if (ws->f_done == ws->f_len && ws->f_fin) {
            ws->msg_opcode = 0;
            release_msg(ws);
        }
        return 0;
    }
    if (ws->f_masked)
        cw_ws_mask(p, take, ws->f_mask, ws->f_done);
    if (ws->f_done == 0 && take == left && ws->f_fin && ws->msg.len == 0) {
        /* The whole message lies in the caller's buffer: deliver it from there, no copy. */
        unsigned op = ws->msg_opcode;
        ws->f_done = ws->f_len;
        ws->msg_opcode = 0;
        return deliver(ws, op, p, take);
    }
    /* A single-frame message that arrives in pieces: room for all of it at
     * once (its length is within max_message, checked in the header), not
     * by doubling, which copies what arrived so far at every step (a 1 MiB
     * transfer block: 1.9 MiB of copies).  Beyond EXACT_MSG_MAX, a length
     * the peer declared but may never send grows with what it does send. */
    if (ws->f_done == 0 && ws->f_fin && ws->msg.len == 0 && ws->f_len <= EXACT_MSG_MAX &&
        cw_buf_reserve_exact(&ws->msg, (size_t)ws->f_len) < 0)
        return fail(ws, CW_WS_CLOSE_INTERNAL, -ENOMEM, "out of memory");
    if (cw_buf_append(&ws->msg, p, take) < 0)
        return fail(ws, CW_WS_CLOSE_INTERNAL, -ENOMEM, "out of memory");
    ws->f_done += take;
    if (ws->f_done < ws->f_len || !ws->f_fin)
        return 0;

    unsigned op = ws->msg_opcode;
    ws->msg_opcode = 0;
    /* An empty message may have no allocation; on_message still gets a valid pointer. */
    uint8_t *data = ws->msg.data ? ws->msg.data : ws->ctl;
    ws->msg_delivering = ws->msg.data != NULL;
    int rc = deliver(ws, op, data, ws->msg.len);
    ws->msg_delivering = false;
    if (rc == 0)
        release_msg(ws);
    return rc;
}

/* Answer the peer's Close: validate it, echo its code, report it; the session is then over. */
static int peer_close(cw_ws_t *ws, const uint8_t *p, size_t len)
{
    int code = CW_WS_CLOSE_NO_STATUS;
    const char *reason = "";
    size_t reason_len = 0;

    if (len == 1)
        return fail(ws, CW_WS_CLOSE_PROTOCOL_ERROR, CW_EPROTO, "close frame of one byte");
    if (len >= 2) {
        code = p[0] << 8 | p[1];
        if (!close_code_valid((unsigned)code))
            return fail(ws, CW_WS_CLOSE_PROTOCOL_ERROR, CW_EPROTO, "invalid close code");
        if (!cw_utf8_valid(p + 2, len - 2))
            return fail(ws, CW_WS_CLOSE_INVALID_DATA, CW_EPROTO, "close reason is not UTF-8");
        reason = (const char *)p + 2;
        reason_len = len - 2;
    }
    ws->close_received = true;
    int rc = 0;
    if (!ws->close_sent)
        rc = send_close(ws, code == CW_WS_CLOSE_NO_STATUS ? 0 : (unsigned)code, NULL, 0);
    ws->state = CW_WS_CLOSED;
    cw_buf_free(&ws->msg);
    if (ws->cb->on_close)
        ws->cb->on_close(ws->ud, code, reason, reason_len);
    return rc < 0 ? rc : CW_ECLOSED;
}

/* Act on a complete control frame, whose payload is in ws->ctl. */
static int control_frame(cw_ws_t *ws)
{
    uint8_t *p = ws->ctl;
    size_t len = (size_t)ws->f_len;

    if (ws->f_masked)
        cw_ws_mask(p, len, ws->f_mask, 0);
    switch (ws->f_opcode) {
    case CW_WS_OP_PING:
        if (ws->state == CW_WS_OPEN) {
            int rc = send_control(ws, CW_WS_OP_PONG, p, len);
            if (rc < 0) {
                ws->state = CW_WS_CLOSED;
                cw_buf_free(&ws->msg);
                return rc;
            }
        }
        return 0;
    case CW_WS_OP_PONG:
        if (ws->cb->on_pong)
            ws->cb->on_pong(ws->ud, p, len);
        return 0;
    default:
        return peer_close(ws, p, len);
    }
}

int cw_ws_feed(cw_ws_t *ws, uint8_t *data, size_t len)
{
    size_t pos = 0;

    if (ws->state == CW_WS_CLOSED)
        return CW_ECLOSED;
    /* Nothing can complete without a byte (a frame ending at a feed's end is finished in that
     * feed), and data may be NULL. */
    if (len == 0)
        return 0;
    for (;;) {
        if (ws->pstate == PS_HEADER) {
            while (ws->hdr_len < ws->hdr_need) {
                if (pos == len)
                    return 0;
                size_t take = ws->hdr_need - ws->hdr_len;
                if (take > len - pos)
                    take = len - pos;
                memcpy(ws->hdr + ws->hdr_len, data + pos, take);
                bool first_two = ws->hdr_len < 2;
                ws->hdr_len += take;
                pos += take;
                /* hdr_need starts at 2, so the first two bytes always arrive on their own. */
                if (first_two && ws->hdr_len == 2) {
                    int rc = header_start(ws);
                    if (rc < 0)
                        return rc;
                }
            }
            int rc = header_end(ws);
            if (rc < 0)
                return rc;
            ws->pstate = PS_PAYLOAD;
        }

        int rc = 0;
        if (ws->f_opcode & 0x8) {
            size_t take = (size_t)(ws->f_len - ws->f_done);
            if (take > len - pos)
                take = len - pos;
            if (take > 0)
                memcpy(ws->ctl + ws->f_done, data + pos, take);
            ws->f_done += take;
            pos += take;
            if (ws->f_done < ws->f_len)
                return 0;
            rc = control_frame(ws);
        } else {
            size_t used;
            rc = data_payload(ws, data + pos, len - pos, &used);
            pos += used;
            if (rc == 0 && ws->f_done < ws->f_len)
                return 0;
        }
        if (rc < 0)
            return rc;
        ws->pstate = PS_HEADER;
        ws->hdr_len = 0;
        ws->hdr_need = 2;
    }
}

bool cw_ws_premask(cw_ws_t *ws, uint8_t key[4])
{
    ws->pre_armed = false;
    if (ws->role == CW_WS_SERVER)
        return false;
    random_key(ws->pre_key);
    memcpy(key, ws->pre_key, 4);
    ws->pre_payload = NULL;
    ws->pre_len = 0;
    ws->pre_armed = true;
    return true;
}

void cw_ws_premasked(cw_ws_t *ws, const uint8_t *payload, size_t len)
{
    ws->pre_payload = payload;
    ws->pre_len = len;
}

void cw_ws_premask_cancel(cw_ws_t *ws)
{
    ws->pre_armed = false;
}

size_t cw_ws_encode(cw_ws_t *ws, unsigned opcode, uint8_t *payload, size_t len,
                    uint8_t header[CW_WS_MAX_HEADER])
{
    bool pre = ws->pre_armed && ws->pre_payload == payload && ws->pre_len == len;
    ws->pre_armed = false;
    if (ws->role == CW_WS_SERVER)
        return cw_ws_frame_header(header, opcode, true, len, NULL);
    if (pre)
        return cw_ws_frame_header(header, opcode, true, len, ws->pre_key);
    uint8_t key[4];
    random_key(key);
    cw_ws_mask(payload, len, key, 0);
    return cw_ws_frame_header(header, opcode, true, len, key);
}

int cw_ws_ping(cw_ws_t *ws, const uint8_t *data, size_t len)
{
    if (len > MAX_CONTROL)
        return -EINVAL;
    /* Nothing may follow our Close on the wire (§5.5.1). */
    if (ws->state != CW_WS_OPEN)
        return CW_ECLOSED;
    return send_control(ws, CW_WS_OP_PING, data, len);
}

int cw_ws_close(cw_ws_t *ws, uint16_t code, const char *reason)
{
    if (ws->close_sent)
        return 0;
    size_t len = reason ? strlen(reason) : 0;
    if (len > MAX_CONTROL - 2) {
        /* Cut before a UTF-8 lead byte, never inside a sequence, or the peer would see invalid
         * text and fail the connection with 1007 instead of reading our code. */
        len = MAX_CONTROL - 2;
        while (len > 0 && ((uint8_t)reason[len] & 0xC0) == 0x80)
            len--;
    }
    return send_close(ws, code, reason, len);
}

const char *cw_ws_error(const cw_ws_t *ws)
{
    return ws->error;
}
