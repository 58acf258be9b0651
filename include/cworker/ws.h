/* RFC 6455 WebSocket codec and session, push-style and sans-I/O.
 *
 * The session never touches a socket: the caller pushes received bytes in
 * with cw_ws_feed() and gets complete messages back through on_message;
 * control frames the session must send itself (pong, close reply) come out
 * through on_send.  Data messages are framed by the caller with
 * cw_ws_encode(), which masks in place so a client can write header + payload
 * without another copy.
 *
 * Limits: a data message larger than max_message is refused before any byte
 * of it is buffered (the declared frame length is checked first): the session
 * sends Close 1009 and cw_ws_feed() returns CW_ETOOBIG.  Control frames are
 * limited to 125 bytes as the RFC says.
 */
#ifndef CWORKER_WS_H
#define CWORKER_WS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cworker/buf.h"

enum cw_ws_opcode {
    CW_WS_OP_CONT = 0x0,
    CW_WS_OP_TEXT = 0x1,
    CW_WS_OP_BINARY = 0x2,
    CW_WS_OP_CLOSE = 0x8,
    CW_WS_OP_PING = 0x9,
    CW_WS_OP_PONG = 0xA,
};

enum cw_ws_close_code {
    CW_WS_CLOSE_NORMAL = 1000,
    CW_WS_CLOSE_GOING_AWAY = 1001,
    CW_WS_CLOSE_PROTOCOL_ERROR = 1002,
    CW_WS_CLOSE_UNSUPPORTED = 1003,
    CW_WS_CLOSE_NO_STATUS = 1005, /* never sent: "close frame had no code" */
    CW_WS_CLOSE_ABNORMAL = 1006,  /* never sent: "no close frame at all" */
    CW_WS_CLOSE_INVALID_DATA = 1007,
    CW_WS_CLOSE_POLICY = 1008,
    CW_WS_CLOSE_TOO_BIG = 1009,
    CW_WS_CLOSE_INTERNAL = 1011,
};

typedef enum cw_ws_role {
    CW_WS_CLIENT, /* masks what it sends, refuses masked frames */
    CW_WS_SERVER, /* refuses unmasked frames, sends unmasked */
} cw_ws_role_t;

/* Largest frame header: 2 + 8 (length) + 4 (mask). */
#define CW_WS_MAX_HEADER 14

/* Write a frame header into out; returns its length (2..14).  mask_key NULL
 * means an unmasked frame. */
size_t cw_ws_frame_header(uint8_t out[CW_WS_MAX_HEADER], unsigned opcode, bool fin,
                          uint64_t payload_len, const uint8_t *mask_key);

/* XOR data with the 4-byte key, as if data started at byte `offset` of the
 * payload (so a payload can be masked in pieces). */
void cw_ws_mask(uint8_t *data, size_t len, const uint8_t key[4], uint64_t offset);

/* dst = src XOR the key, as cw_ws_mask() at `offset`: copying and masking in one pass. */
void cw_ws_mask_copy(uint8_t *restrict dst, const uint8_t *restrict src, size_t len,
                     const uint8_t key[4], uint64_t offset);

typedef struct cw_ws_callbacks {
    /* A complete data message (text or binary; fragments already joined).
     * `data` is valid only during the call and may be modified by it.
     * Return 0, or a negative code to stop: cw_ws_feed() then returns that
     * code at once (the session sends nothing on its own for it). */
    int (*on_message)(void *ud, unsigned opcode, uint8_t *data, size_t len);
    /* Bytes the session wants sent (pong, close).  The callee must copy or
     * queue them before returning.  Return 0 or a negative code. */
    int (*on_send)(void *ud, const uint8_t *data, size_t len);
    /* Optional: a pong arrived. */
    void (*on_pong)(void *ud, const uint8_t *data, size_t len);
    /* Optional: the peer's Close frame arrived.  code is
     * CW_WS_CLOSE_NO_STATUS when the frame carried none; reason is not
     * NUL-terminated. The session has already answered it via on_send. */
    void (*on_close)(void *ud, int code, const char *reason, size_t reason_len);
} cw_ws_callbacks_t;

typedef enum cw_ws_state {
    CW_WS_OPEN,
    CW_WS_CLOSING, /* we sent Close, waiting for the peer's */
    CW_WS_CLOSED,  /* both Close frames seen, or a fatal error: ignore input */
} cw_ws_state_t;

/* Session state.  Fields are private; use the functions below. */
typedef struct cw_ws {
    cw_ws_role_t role;
    cw_ws_state_t state;
    size_t max_message;
    const cw_ws_callbacks_t *cb;
    void *ud;
    bool close_sent;
    bool close_received;
    const char *error; /* why the session failed (static text), or NULL */

    /* frame parser */
    int pstate;
    uint8_t hdr[CW_WS_MAX_HEADER];
    size_t hdr_len;
    size_t hdr_need;
    unsigned f_opcode;
    bool f_fin;
    bool f_masked;
    uint8_t f_mask[4];
    uint64_t f_len;
    uint64_t f_done;

    /* data message being assembled (fragments, or a frame split over feeds) */
    unsigned msg_opcode; /* 0 = none in progress */
    cw_buf_t msg;
    bool msg_delivering; /* on_message has msg's storage (cw_ws_take_message) */
    /* control frame payload being assembled */
    uint8_t ctl[125];
    size_t ctl_len;

    /* the next message, masked by its writer (cw_ws_premask) */
    bool pre_armed;
    uint8_t pre_key[4];
    const uint8_t *pre_payload;
    size_t pre_len;
} cw_ws_t;

/* Initialise a session; `cb` must outlive it.  max_message 0 = 64 MiB. */
void cw_ws_init(cw_ws_t *ws, cw_ws_role_t role, size_t max_message, const cw_ws_callbacks_t *cb,
                void *ud);
/* Release the session's buffers. NULL-safe. */
void cw_ws_free(cw_ws_t *ws);

/* Push received bytes.  `data` may be modified (unmasked in place).
 * Returns 0 when all bytes were consumed, or a negative code:
 *   CW_EPROTO    protocol violation (Close 1002 / 1007 already sent),
 *   CW_ETOOBIG   message over max_message (Close 1009 already sent),
 *   CW_ECLOSED   the close handshake has finished (the caller closes TCP),
 *   or whatever on_message / on_send returned. After an error the session is
 *   CW_WS_CLOSED and ignores further input. */
int cw_ws_feed(cw_ws_t *ws, uint8_t *data, size_t len);

/* Frame one whole data message: writes the header into `header` and returns
 * its length; for a client the payload is masked in place (so it must not be
 * reused as plain text afterwards).  The caller sends header, then payload. */
/* For a writer that masks a message's payload while writing it (cw_ws_mask_copy from
 * offset 0), instead of writing it plain and having cw_ws_encode() mask it in place: one
 * pass over the bytes instead of two.  cw_ws_premask() picks the key and returns false
 * for a server (nothing to mask); once the payload is written, cw_ws_premasked() names
 * it, and the next cw_ws_encode() of exactly that (payload, len) sends it as it is.  Any
 * other cw_ws_encode() is masked as usual and disarms it, as does cw_ws_premask_cancel()
 * (call it when the message is dropped before it reaches cw_ws_encode()). */
bool cw_ws_premask(cw_ws_t *ws, uint8_t key[4]);
void cw_ws_premasked(cw_ws_t *ws, const uint8_t *payload, size_t len);
void cw_ws_premask_cancel(cw_ws_t *ws);

size_t cw_ws_encode(cw_ws_t *ws, unsigned opcode, uint8_t *payload, size_t len,
                    uint8_t header[CW_WS_MAX_HEADER]);

/* Send a ping (payload <= 125 bytes) through on_send. */
int cw_ws_ping(cw_ws_t *ws, const uint8_t *data, size_t len);

/* Start the close handshake: send Close(code, reason) through on_send once.
 * reason is truncated to fit 123 bytes. Returns 0 or on_send's error. */
int cw_ws_close(cw_ws_t *ws, uint16_t code, const char *reason);

/* Inside on_message only: the storage of the message being delivered (*len
 * bytes), when it was assembled in the session's own buffer (a message that
 * arrived in pieces), now the caller's to free(); the session assembles the
 * next one in fresh memory.  NULL when the message lies in the buffer given
 * to cw_ws_feed (the caller copies what it keeps).  For a receiver that
 * keeps a large message's bytes (a transfer block written behind) without
 * copying. */
uint8_t *cw_ws_take_message(cw_ws_t *ws, size_t *len);
/* Inside on_message only: true when cw_ws_take_message would hand over
 * storage that holds p[0..n). */
bool cw_ws_message_holds(const cw_ws_t *ws, const uint8_t *p, size_t n);

cw_ws_state_t cw_ws_state(const cw_ws_t *ws);

/* Why the session failed ("frame with reserved bits set", ...), or NULL. */
const char *cw_ws_error(const cw_ws_t *ws);

#endif
