/* The resumable tunnel between cworker and cworker-relay, sans-I/O.
 *
 * docs/tunnel.md is the specification.  Two layers:
 *
 *  - the frame codec: cw_tun_dec_feed() is a resumable decoder that reports
 *    one frame (or one piece of a DATA frame) at a time and never allocates;
 *    cw_tun_enc_*() write frames into caller memory;
 *  - cw_tun_t, one side's session state that outlives its links: the
 *    bounded replay buffer of unacknowledged bytes, the positions sent /
 *    acknowledged / received, the handshake of each new link, the ack
 *    policy, and the "buffer full" / "room again" signals.
 *
 * Neither touches a socket, a timer or a clock: the libuv adapters
 * (src/net/tunnel.c for the worker, src/relay/ for the relay) push the
 * link's bytes in with cw_tun_feed(), pull the bytes to send with
 * cw_tun_output(), and drive time (pings, the ack delay, dead links, the
 * resume window) themselves.
 */
#ifndef CWORKER_TUNNEL_H
#define CWORKER_TUNNEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CW_TUN_VERSION     1
#define CW_TUN_HEADER      5     /* type u8 + payload length u32 */
#define CW_TUN_TOKEN_LEN   16    /* 128 bits from getrandom */
#define CW_TUN_HELLO_LEN   46    /* HELLO payload */
#define CW_TUN_WELCOME_LEN 42    /* WELCOME payload */
#define CW_TUN_MAX_DATA    65536 /* largest DATA payload accepted (after the offset) */
#define CW_TUN_MAX_TEXT    200   /* REFUSE/ABORT text */
#define CW_TUN_SEND_DATA   16384 /* DATA payload we send per frame */
#define CW_TUN_CHUNK       16384 /* replay buffer allocation unit */
/* Room cw_tun_output() needs at least (one whole frame of any kind). */
#define CW_TUN_OUTPUT_MIN     (CW_TUN_HEADER + 8 + CW_TUN_SEND_DATA)
#define CW_TUN_DEFAULT_BUFFER ((size_t)1 << 20)
#define CW_TUN_MIN_BUFFER     ((size_t)4096)
#define CW_TUN_MAX_BUFFER     ((size_t)1 << 30)

enum cw_tun_type {
    CW_TUN_HELLO = 0x01,
    CW_TUN_WELCOME = 0x02,
    CW_TUN_REFUSE = 0x03,
    CW_TUN_DATA = 0x10,
    CW_TUN_ACK = 0x11,
    CW_TUN_PING = 0x12,
    CW_TUN_PONG = 0x13,
    CW_TUN_FIN = 0x14,
    CW_TUN_ABORT = 0x15,
};

/* REFUSE and ABORT reasons (docs/tunnel.md has the table). */
enum cw_tun_reason {
    CW_TUN_R_VERSION = 1,
    CW_TUN_R_UNKNOWN = 2,
    CW_TUN_R_BAD_TOKEN = 3,
    CW_TUN_R_EXPIRED = 4,
    CW_TUN_R_BAD_OFFSET = 5,
    CW_TUN_R_UNREACHABLE = 6,
    CW_TUN_R_BUSY = 7,
    CW_TUN_R_PROTOCOL = 8,
    CW_TUN_R_CLOSED = 9,
    CW_TUN_R_INTERNAL = 10,
    CW_TUN_R_ENDED = 11,
    CW_TUN_R_STALE = 12,
};

/* Name of a reason ("bad token", ...); never NULL. */
const char *cw_tun_reason_str(int reason);
/* True for refusals after which a client may try a new session later
 * (UNREACHABLE, BUSY); the others mean the session is lost. */
bool cw_tun_reason_retryable(int reason);

typedef struct cw_tun_hello {
    uint8_t version;
    bool resume;
    uint32_t buffer; /* the client's replay buffer size */
    uint64_t id;     /* resume: the session; new: 0 */
    uint8_t token[CW_TUN_TOKEN_LEN];
    uint64_t received; /* positions of the server->client stream the client has */
    uint32_t link_seq; /* the client's link number in this session: 1, 2, ... */
} cw_tun_hello_t;

typedef struct cw_tun_welcome {
    uint8_t version;
    bool resumed;
    uint32_t buffer; /* the server's replay buffer size */
    uint32_t window; /* resume window, seconds */
    uint64_t id;
    uint8_t token[CW_TUN_TOKEN_LEN];
    uint64_t received; /* positions of the client->server stream the server has */
} cw_tun_welcome_t;

/* One decoded event.  For DATA, each event is a piece of one frame: `value`
 * is the stream offset of data[0], and a frame may come as several pieces
 * (however the input was split; the bytes and offsets are the same).
 * `data` points into the input or the decoder and is valid until the next
 * call on the decoder. */
typedef struct cw_tun_frame {
    uint8_t type;
    uint8_t reason;      /* REFUSE, ABORT */
    uint64_t value;      /* DATA: offset; ACK/PING/PONG/FIN: the u64 */
    const uint8_t *data; /* DATA piece; REFUSE/ABORT text */
    size_t len;
    bool last;          /* DATA: this piece ends its frame */
    uint64_t frame_end; /* DATA: stream offset after the frame's last byte */
    cw_tun_hello_t hello;
    cw_tun_welcome_t welcome;
} cw_tun_frame_t;

/* Frame decoder state (private fields; zero-size allocations: none). */
typedef struct cw_tun_dec {
    int state;
    uint8_t hdr[CW_TUN_HEADER + 8]; /* header, plus a DATA frame's offset */
    size_t have;
    uint8_t type;
    uint32_t len;    /* payload length */
    uint32_t done;   /* payload bytes consumed */
    uint64_t offset; /* DATA: stream offset of the next byte */
    uint8_t ctl[1 + CW_TUN_MAX_TEXT];
    const char *error; /* static text, after an error */
} cw_tun_dec_t;

void cw_tun_dec_init(cw_tun_dec_t *d);
/* Consume input up to the end of the next event.  Returns 1 with *f filled
 * (one frame, or one DATA piece), 0 when all `len` bytes were consumed
 * without completing one, or CW_EPROTO on malformed input (the reason is
 * cw_tun_dec_error(); the decoder then stays failed).  *used is the number
 * of bytes consumed in every case.  Gives the same events (up to how DATA
 * frames are cut into pieces) for any split of the input. */
int cw_tun_dec_feed(cw_tun_dec_t *d, const uint8_t *in, size_t len, size_t *used,
                    cw_tun_frame_t *f);
/* Why the decoder failed, or NULL. */
const char *cw_tun_dec_error(const cw_tun_dec_t *d);

/* Encoders: write one whole frame into out and return its length. */
#define CW_TUN_HELLO_FRAME   (CW_TUN_HEADER + CW_TUN_HELLO_LEN)
#define CW_TUN_WELCOME_FRAME (CW_TUN_HEADER + CW_TUN_WELCOME_LEN)
size_t cw_tun_enc_hello(uint8_t out[CW_TUN_HELLO_FRAME], const cw_tun_hello_t *h);
size_t cw_tun_enc_welcome(uint8_t out[CW_TUN_WELCOME_FRAME], const cw_tun_welcome_t *w);
/* REFUSE or ABORT; text is cut at CW_TUN_MAX_TEXT bytes. */
#define CW_TUN_TEXT_FRAME (CW_TUN_HEADER + 1 + CW_TUN_MAX_TEXT)
size_t cw_tun_enc_reason(uint8_t out[CW_TUN_TEXT_FRAME], uint8_t type, uint8_t reason,
                         const char *text);
/* ACK, PING, PONG, FIN. */
size_t cw_tun_enc_u64(uint8_t out[CW_TUN_HEADER + 8], uint8_t type, uint64_t value);
/* The header and offset of a DATA frame of `len` bytes (1..CW_TUN_MAX_DATA);
 * the payload follows. */
size_t cw_tun_enc_data_header(uint8_t out[CW_TUN_HEADER + 8], uint64_t offset, size_t len);

/* Constant-time token comparison. */
bool cw_tun_token_equal(const uint8_t a[CW_TUN_TOKEN_LEN], const uint8_t b[CW_TUN_TOKEN_LEN]);
/* A fresh session id (non-zero) and resume token from the kernel's CSPRNG.
 * 0 or a negative errno. */
int cw_tun_new_credentials(uint64_t *id, uint8_t token[CW_TUN_TOKEN_LEN]);

/* ---- one side's session ---------------------------------------------- */

typedef enum cw_tun_role {
    CW_TUN_CLIENT, /* the worker: sends HELLO, resumes */
    CW_TUN_SERVER, /* the relay: answers HELLO */
} cw_tun_role_t;

/* Session states; cw_tun_t moves between them in one place (tun_set_state).
 *
 *   IDLE ──client_link──> HELLO ──WELCOME──> OPEN ──link_lost──> DETACHED
 *   IDLE/DETACHED ──server_attach──> OPEN      DETACHED ──client_link──> HELLO
 *   any ──REFUSE / ABORT / protocol error / complete / cw_tun_abort──> CLOSED
 */
typedef enum cw_tun_state {
    CW_TUN_ST_IDLE,     /* no link yet */
    CW_TUN_ST_HELLO,    /* client: HELLO queued, waiting for WELCOME */
    CW_TUN_ST_OPEN,     /* a link is attached and handshaken */
    CW_TUN_ST_DETACHED, /* the link was lost; the session can resume */
    CW_TUN_ST_CLOSED,   /* over: see cw_tun_close_reason() */
} cw_tun_state_t;

typedef struct cw_tun_callbacks {
    /* New stream bytes from the peer, in order, never twice.  `data` is
     * valid (and writable) only during the call.  Return 0, or a negative
     * code to stop cw_tun_feed() (which then returns it). */
    int (*on_data)(void *ud, uint8_t *data, size_t len);
    /* The peer's stream ended: every byte before it was delivered. */
    void (*on_fin)(void *ud);
    /* The replay buffer has room again after cw_tun_write() accepted less
     * than it was offered (resume reading the source). */
    void (*on_room)(void *ud);
    /* Client: WELCOME accepted; resumed is false for a new session. */
    void (*on_open)(void *ud, bool resumed);
    /* The session is over (state CLOSED): the peer refused (REFUSE) or
     * aborted (ABORT), a protocol error, out of memory, or complete (reason
     * ENDED).  `text` is NUL-terminated, printable ASCII (the peer's text
     * with other bytes replaced by '?', or ours).  Every move to CLOSED
     * calls it, except cw_tun_abort().
     *
     * Callbacks may call cw_tun_write(), cw_tun_write_fin(), cw_tun_output(),
     * cw_tun_abort() and the getters; never cw_tun_feed(), cw_tun_link_lost()
     * or cw_tun_free() on the same session. */
    void (*on_closed)(void *ud, int reason, const char *text);
} cw_tun_callbacks_t;

/* Replay buffer: a list of chunks, allocated as bytes arrive and freed as
 * they are acknowledged. */
typedef struct cw_tun_chunk cw_tun_chunk_t;

typedef struct cw_tun {
    cw_tun_role_t role;
    cw_tun_state_t state;
    const cw_tun_callbacks_t *cb;
    void *ud;
    uint64_t id;
    uint8_t token[CW_TUN_TOKEN_LEN];
    bool have_session; /* id and token are set */
    uint32_t peer_buffer;
    uint32_t window;   /* client: the server's resume window (s) */
    uint32_t link_seq; /* client: the last link's number; server: the attached one's */

    /* outgoing stream: bytes [base, end) are in the replay buffer */
    cw_tun_chunk_t *head, *tail;
    size_t head_off;    /* first unacknowledged byte inside head */
    size_t tail_len;    /* bytes used in tail */
    uint64_t base;      /* position of the first buffered byte */
    uint64_t end;       /* position after the last byte written */
    size_t cap;         /* replay buffer limit */
    bool fin_written;   /* our FIN sits at position `end` */
    uint64_t acked;     /* positions the peer has (<= end + fin) */
    uint64_t sent;      /* next position to put on the link */
    uint64_t sent_high; /* highest position ever put on a link */
    bool blocked;       /* a write was cut short: on_room when room returns */

    /* incoming stream */
    uint64_t received;   /* positions we have (bytes + FIN) */
    uint64_t ack_sent;   /* the last position we told the peer (ACK, HELLO, WELCOME) */
    bool track_consumed; /* ACKs say `consumed`, not `received` */
    uint64_t consumed;   /* bytes our consumer has taken (<= received) */
    bool fin_received;
    bool ack_now;

    /* frames due on the link, built by cw_tun_output() from these */
    bool hs_due;     /* HELLO (client) or WELCOME (server) */
    bool hs_resumed; /* server: the WELCOME says "resumed" */
    bool abort_due;  /* ABORT(close_reason, close_text) */
    bool pong_due;
    uint64_t pong_value;
    bool ping_due;
    uint64_t ping_value;

    cw_tun_dec_t dec;
    int close_reason;
    char close_text[CW_TUN_MAX_TEXT + 1];
    bool in_feed; /* cw_tun_feed() is running (callbacks must not re-enter it) */
} cw_tun_t;

/* Initialise a session side.  buffer: replay buffer bytes (0: default,
 * clamped to CW_TUN_MIN_BUFFER..CW_TUN_MAX_BUFFER).  cb must outlive t. */
void cw_tun_init(cw_tun_t *t, cw_tun_role_t role, size_t buffer, const cw_tun_callbacks_t *cb,
                 void *ud);
/* Free the replay buffer.  NULL-safe; the state is undefined afterwards. */
void cw_tun_free(cw_tun_t *t);

/* Client: a new link is up (TCP/TLS connected): queue HELLO (new session,
 * or resume when one was established), expect WELCOME.  From IDLE or
 * DETACHED; otherwise CW_EPROTO. */
int cw_tun_client_link(cw_tun_t *t);

/* Server: decide on a HELLO read by a link's own decoder.  For a new
 * session pass a fresh id and token (cw_tun_new_credentials); for a resume,
 * the cw_tun_t of the session the hello names (looked up by id): its
 * version, token (constant time) and offset are checked against what can be
 * replayed.  On success WELCOME is queued and the session is OPEN on the new
 * link (a link that was attached is replaced: the caller closes it), and 0
 * is returned; otherwise the refusal reason (> 0) is returned and nothing
 * changed, for the caller to send with cw_tun_enc_reason(). */
int cw_tun_server_new(cw_tun_t *t, uint64_t id, const uint8_t token[CW_TUN_TOKEN_LEN],
                      const cw_tun_hello_t *h, uint32_t window);
int cw_tun_server_resume(cw_tun_t *t, const cw_tun_hello_t *h, uint32_t window);

/* The current link is gone (any reason): drop its decoder state and the
 * control frames queued for it; OPEN/HELLO -> DETACHED (CLOSED stays). */
void cw_tun_link_lost(cw_tun_t *t);

/* Bytes received on the current link.  Returns 0, CW_EPROTO (the session
 * is CLOSED; an ABORT is queued for the link), CW_ECLOSED (the session was
 * or became CLOSED by the peer: REFUSE or ABORT), or on_data's error. */
int cw_tun_feed(cw_tun_t *t, uint8_t *data, size_t len);

/* Fill out (cap >= CW_TUN_OUTPUT_MIN) with whole frames for the current
 * link: handshake and control frames first, then DATA from the send point,
 * then FIN.  Returns the length (0: nothing to send now). */
size_t cw_tun_output(cw_tun_t *t, uint8_t *out, size_t cap);
/* True when cw_tun_output() would produce something. */
bool cw_tun_want_output(const cw_tun_t *t);

/* Take stream bytes from the source into the replay buffer: returns how
 * many were accepted (<= len, 0 when full or after FIN/CLOSED).  A short
 * count, or no room left after it, means "stop reading the source";
 * on_room says when to resume. */
size_t cw_tun_write(cw_tun_t *t, const uint8_t *data, size_t len);
/* End our stream (FIN after the buffered bytes).  0, or CW_ECLOSED. */
int cw_tun_write_fin(cw_tun_t *t);
/* Free space in the replay buffer, and bytes held in it (unacknowledged). */
size_t cw_tun_room(const cw_tun_t *t);
size_t cw_tun_buffered(const cw_tun_t *t);
/* Bytes of replay buffer allocated now (chunks), for memory accounting. */
size_t cw_tun_allocated(const cw_tun_t *t);

/* Acknowledge only what the consumer has taken, not what arrived: the
 * relay acknowledges bytes once the master's socket took them, so the
 * peer's replay buffer is the window and a slow master slows the worker
 * without the relay having to stop reading the link.  (Resumes still use
 * `received`: bytes the consumer holds are never replayed.)  Call before
 * the first link. */
void cw_tun_track_consumed(cw_tun_t *t);
/* The consumer has taken the stream up to position pos (<= received). */
void cw_tun_consumed(cw_tun_t *t, uint64_t pos);

/* Queue a PING with this value (the adapter's liveness timer). */
void cw_tun_ping(cw_tun_t *t, uint64_t value);
/* Received data is waiting to be acknowledged (start the ack delay). */
bool cw_tun_ack_pending(const cw_tun_t *t);
/* The ack delay ran out: acknowledge now (on the next output). */
void cw_tun_flush_ack(cw_tun_t *t);

/* End the session now: queue ABORT(reason, text) for the link when one is
 * open, drop the buffer, move to CLOSED (no callback).  Idempotent. */
void cw_tun_abort(cw_tun_t *t, int reason, const char *text);

cw_tun_state_t cw_tun_state(const cw_tun_t *t);
/* Why the session is CLOSED (a cw_tun_reason; ENDED when complete), and
 * the text that came with it (NUL-terminated). */
int cw_tun_close_reason(const cw_tun_t *t);
const char *cw_tun_close_text(const cw_tun_t *t);

#endif
