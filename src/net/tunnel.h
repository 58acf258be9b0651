/* The worker's end of the resumable tunnel to cworker-relay (docs/tunnel.md):
 * a byte stream that survives outages of the link under it.
 *
 * To its user it is one reliable, ordered byte stream to the master, with
 * the shape of a libuv stream: cw_tunnel_write() with a completion callback,
 * on_read for incoming bytes, read pause/resume, a half-close
 * (cw_tunnel_shutdown), and cw_tunnel_close() as the single way out.
 * Underneath, it connects to the relay (TCP, TLS with the certificate and
 * host name checked like wss://), and when the link breaks (EOF, reset, TLS
 * error, or nothing received for dead_timeout) it reconnects with
 * exponential backoff and full jitter and resumes the session: the user sees
 * a pause, never a gap or a duplicate.  The session is lost only when the
 * relay refuses the resume (unknown session after a relay restart, wrong
 * token, window expired) or the outage outlasts max_outage (by default the
 * resume window the relay announced): then on_lost.
 *
 * Lifecycle (one state enum, moved by tunnel_set_state() only):
 *
 *   INIT -connect-> CONNECTING --WELCOME--> OPEN --link lost--> BACKOFF
 *        BACKOFF --timer--> CONNECTING --WELCOME (resumed)--> OPEN
 *   CONNECTING/BACKOFF --refused, window over--> LOST
 *   any --cw_tunnel_close--> CLOSING --all handles closed--> CLOSED (on_closed)
 *
 * Ownership: the user allocates the cw_tunnel_t and keeps it until
 * on_closed; the tunnel allocates its links and frees them itself.  The
 * bytes of a write belong to the user until its callback (as with
 * uv_write); the callback fires once they are in the replay buffer, from
 * where the tunnel delivers them, also across outages.  Callbacks never
 * free the tunnel; the user may call cw_tunnel_close() from any of them.
 */
#ifndef CW_NET_TUNNEL_H
#define CW_NET_TUNNEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "cworker/buf.h"
#include "cworker/tunnel.h"

struct ssl_ctx_st;
struct cw_tunlink;

typedef struct cw_tunnel cw_tunnel_t;
typedef struct cw_tunnel_write cw_tunnel_write_t;

typedef enum cw_tunnel_state {
    CW_TUNNEL_INIT,
    CW_TUNNEL_CONNECTING, /* resolving, TCP, TLS, HELLO -> WELCOME */
    CW_TUNNEL_OPEN,       /* a link is up and the session is open */
    CW_TUNNEL_BACKOFF,    /* waiting before the next attempt (an outage) */
    CW_TUNNEL_LOST,       /* the session cannot continue: only close is left */
    CW_TUNNEL_CLOSING,
    CW_TUNNEL_CLOSED,
} cw_tunnel_state_t;

typedef struct cw_tunnel_callbacks {
    /* The first session is established (status 0), or could not be
     * (status < 0, why: relay unreachable, TLS failure, refused by the
     * relay...).  No retry happens before the first session: a failed open
     * is reported like a failed TCP connect, and the user's own reconnect
     * loop decides.  After a failure only cw_tunnel_close() is left. */
    void (*on_open)(cw_tunnel_t *t, int status, const char *why);
    /* Bytes from the master, in order; valid and writable during the call. */
    void (*on_read)(cw_tunnel_t *t, uint8_t *data, size_t len);
    /* The master closed its end (the relay's FIN): every byte was read. */
    void (*on_eof)(cw_tunnel_t *t);
    /* The session is lost for good (err: UV_ETIMEDOUT when the outage
     * outlasted max_outage, UV_ECONNRESET for a refusal or an ABORT,
     * CW_EPROTO for a protocol violation; why: words for the log).  Bytes
     * written and not acknowledged are gone with it.  Only close is left. */
    void (*on_lost)(cw_tunnel_t *t, int err, const char *why);
    /* Optional: the link went down (up = false, why) and the tunnel is
     * resuming, or it came back and the session resumed (up = true, why =
     * NULL).  A user with its own liveness timer (WebSocket pings) should
     * not count the time in between as silence of the peer. */
    void (*on_link)(cw_tunnel_t *t, bool up, const char *why);
    /* After cw_tunnel_close(): every handle is closed; free t here. */
    void (*on_closed)(cw_tunnel_t *t);
} cw_tunnel_callbacks_t;

typedef struct cw_tunnel_options {
    size_t buffer_size;         /* replay buffer (bytes written, not yet acknowledged);
                                   0: 1 MiB */
    uint64_t ping_interval;     /* ms of silence before we ping; 0: 10 s */
    uint64_t dead_timeout;      /* ms of silence before the link is dead; 0: 30 s */
    uint64_t handshake_timeout; /* ms for TCP + TLS + HELLO/WELCOME; 0: 10 s */
    uint64_t backoff_base;      /* ms, first retry delay cap; 0: 100 ms */
    uint64_t backoff_max;       /* ms, cap of the retry delay; 0: 5 s */
    uint64_t max_outage;        /* ms before giving up; 0: the relay's window */
    uint64_t ack_delay;         /* ms a received byte may wait for its ACK; 0: 20 ms */
    struct ssl_ctx_st *tls_ctx; /* a client TLS context (cw_tls_client_ctx), or NULL */
    const char *tls_host;       /* name checked against the certificate; NULL: host */
} cw_tunnel_options_t;

typedef void (*cw_tunnel_write_cb)(cw_tunnel_write_t *req, int status);

#define CW_TUNNEL_MAX_BUFS 4

/* A write request: the user owns it until its callback, which never runs
 * inside cw_tunnel_write() (as with uv_write).  status 0: the bytes are in
 * the replay buffer (the user may free them); UV_ECANCELED: the tunnel was
 * closed or lost first. */
struct cw_tunnel_write {
    void *data; /* user's pointer */
    /* private */
    cw_tunnel_t *t;
    cw_tunnel_write_t *next;
    uv_buf_t bufs[CW_TUNNEL_MAX_BUFS];
    unsigned nbufs, idx;
    size_t off, left;
    int status;
    cw_tunnel_write_cb cb;
};

typedef void (*cw_tunnel_shutdown_cb)(cw_tunnel_t *t, int status);

struct cw_tunnel {
    void *data; /* user's pointer */
    /* private below */
    uv_loop_t *loop;
    cw_tunnel_state_t state;
    cw_tunnel_options_t opt;
    const cw_tunnel_callbacks_t *cb;
    char *host;
    char *tls_host;
    int port;
    cw_tun_t core;
    struct cw_tunlink *link; /* the current link, or NULL */
    int links_open;          /* links not yet closed (the current one and dying ones) */
    struct tunnel_gai *gai;  /* the resolution in flight (owned until its callback) */
    int gai_pending;         /* resolutions whose callback has not run */
    uv_timer_t timer;        /* handshake / backoff / liveness */
    uv_timer_t ack_timer;    /* delayed acknowledgements */
    uv_timer_t done_timer;   /* runs completed write callbacks outside the user's calls */
    int handles_open;
    bool ever_open;                       /* the first WELCOME arrived */
    bool reading;                         /* the user wants on_read */
    cw_buf_t held;                        /* bytes read while the user paused reading */
    bool eof_pending;                     /* on_eof waits for the user to read again */
    cw_tunnel_write_t *wq_head, *wq_tail; /* writes waiting for replay buffer room */
    size_t wq_bytes;
    cw_tunnel_write_t *done_head, *done_tail; /* finished, callback not yet run */
    cw_tunnel_shutdown_cb shutdown_cb;
    int shutdown_status;   /* close: the shutdown callback's status, run at the end */
    bool shutdown_pending; /* FIN goes after the queued writes */
    unsigned attempts;     /* failed attempts in this outage */
    uint64_t outage_start; /* uv_now() when the link went down */
    uint64_t last_ping;
    uint64_t ping_seq;
    unsigned addr_rotor;
    char why[256]; /* the last error, for on_lost / on_open / cw_tunnel_error */
    /* statistics */
    uint64_t resumes, links, bytes_in, bytes_out;
    uint64_t last_down_ms; /* the last outage, link loss to resume, ms */
};

void cw_tunnel_options_default(cw_tunnel_options_t *o);

/* Initialise (no I/O yet).  o may be NULL (defaults); its strings are
 * copied.  cb must outlive t. */
int cw_tunnel_init(uv_loop_t *loop, cw_tunnel_t *t, const cw_tunnel_options_t *o,
                   const cw_tunnel_callbacks_t *cb);
/* Connect to the relay at host:port (a name or an address) and open a new
 * session; on_open reports the result.  Reading starts enabled. */
int cw_tunnel_connect(cw_tunnel_t *t, const char *host, int port);

/* Queue bytes for the master (up to CW_TUNNEL_MAX_BUFS buffers).  They are
 * taken into the replay buffer as it has room; cb then fires with 0.
 * Returns 0, or UV_EINVAL / UV_EPIPE (after shutdown) / UV_ECANCELED
 * (closed or lost) without calling cb. */
int cw_tunnel_write(cw_tunnel_write_t *req, cw_tunnel_t *t, const uv_buf_t bufs[], unsigned nbufs,
                    cw_tunnel_write_cb cb);
/* Bytes of queued writes not yet taken into the replay buffer (what a
 * user compares with its high-water mark, like uv_stream_get_write_queue_size). */
size_t cw_tunnel_write_queue_size(const cw_tunnel_t *t);
/* Bytes in the replay buffer, not yet acknowledged by the relay. */
size_t cw_tunnel_unacked(const cw_tunnel_t *t);

/* End our direction after the queued writes (FIN); cb(0) once the relay
 * has acknowledged every byte and the FIN, or cb(error) if the session is
 * lost or closed first.  Reading goes on until on_eof. */
int cw_tunnel_shutdown(cw_tunnel_t *t, cw_tunnel_shutdown_cb cb);

/* Stop / restart on_read (and on_eof).  Bytes already read from the link
 * when reading stops are held and delivered first when it restarts. */
void cw_tunnel_read_stop(cw_tunnel_t *t);
void cw_tunnel_read_start(cw_tunnel_t *t);

/* Close (idempotent): a session that has not completed is aborted (ABORT
 * to the relay, which closes the master connection at once), queued writes
 * get UV_ECANCELED, the shutdown callback an error; then on_closed. */
void cw_tunnel_close(cw_tunnel_t *t);

cw_tunnel_state_t cw_tunnel_state(const cw_tunnel_t *t);
/* True while a link is up and the session open (no outage). */
bool cw_tunnel_link_up(const cw_tunnel_t *t);
/* The last error in words (open failure, loss), or "". */
const char *cw_tunnel_error(const cw_tunnel_t *t);

#endif
