/* One link of the resumable tunnel: a TCP connection, TLS over it when
 * configured (tls.c, memory BIOs), plaintext bytes in and out.  Both ends
 * use it: the worker's cw_tunnel_t (tunnel.c) and cworker-relay.  It knows
 * nothing of the tunnel protocol; the owner feeds what arrives to its
 * cw_tun_t and sends what cw_tun_output() produces.
 *
 * Lifecycle: cw_tunlink_init() (the owner allocates the object, usually
 * on the heap because a session outlives its links), connect or accept on
 * cw_tunlink_tcp(), cw_tunlink_start().  on_ready fires once TLS is up (at
 * once for plain TCP); on_data for every plaintext chunk; on_error once
 * when the link fails or the peer closes.  cw_tunlink_close() (idempotent)
 * closes the handle; on_closed fires exactly once after that, and the link
 * code never touches the object again: the owner frees it there.  No other
 * callback fires after cw_tunlink_close().
 */
#ifndef CW_NET_TUNLINK_H
#define CW_NET_TUNLINK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct cw_tls;
struct ssl_ctx_st;

typedef struct cw_tunlink cw_tunlink_t;

typedef struct cw_tunlink_callbacks {
    /* TLS is up (plain links: right after cw_tunlink_start). */
    void (*on_ready)(cw_tunlink_t *l);
    /* Plaintext from the peer; valid and writable during the call only. */
    void (*on_data)(cw_tunlink_t *l, uint8_t *data, size_t len);
    /* The write queue fell below the low-water mark (optional). */
    void (*on_drain)(cw_tunlink_t *l);
    /* The link failed or the peer closed it (err UV_EOF, UV_ECONNRESET,
     * CW_ETLS ...; why: words for the log).  Once; the owner closes it. */
    void (*on_error)(cw_tunlink_t *l, int err, const char *why);
    /* The handle is closed: free the object here. */
    void (*on_closed)(cw_tunlink_t *l);
} cw_tunlink_callbacks_t;

struct cw_tunlink {
    uv_tcp_t tcp;
    uv_connect_t creq; /* client: the connect request */
    const cw_tunlink_callbacks_t *cb;
    void *data;         /* owner's pointer */
    struct cw_tls *tls; /* owned; NULL for plain TCP */
    size_t queued;      /* bytes given to uv_write, not yet written */
    uint64_t last_rx;   /* uv_now() of the last byte received */
    uint64_t bytes_in, bytes_out;
    bool tls_up;
    bool reading;
    bool paused;
    bool failed;   /* the link is dead (err, why) */
    bool notified; /* on_error was called */
    bool closing;
    int err;
    const char *why;    /* static text, or owned by the TLS session */
    uv_timer_t *linger; /* a graceful close's deadline (owned, only then) */
    int close_pending;  /* handles still closing */
};

/* Write-queue marks: writable() is false above HIGH; on_drain below LOW. */
#define CW_TUNLINK_HIGH (256u << 10)
#define CW_TUNLINK_LOW  (64u << 10)

/* Initialise (the TCP handle is initialised too: close it with
 * cw_tunlink_close() whatever happens next). */
int cw_tunlink_init(uv_loop_t *loop, cw_tunlink_t *l, const cw_tunlink_callbacks_t *cb, void *data);
uv_tcp_t *cw_tunlink_tcp(cw_tunlink_t *l);
/* The TCP connection is up (connected or accepted): tune the socket
 * (no Nagle, keepalive, TCP_USER_TIMEOUT = dead_timeout_ms + 1 s when
 * non-zero), start TLS when tls_ctx is given (server: accept side; client:
 * host is checked against the certificate), start reading. */
int cw_tunlink_start(cw_tunlink_t *l, struct ssl_ctx_st *tls_ctx, bool server, const char *host,
                     uint64_t dead_timeout_ms);
/* Send bytes (copied; encrypted first on a TLS link).  0, or a negative
 * code: the link is dead (l->err, l->why), and on_error is NOT called for
 * it, since the owner is the caller. */
int cw_tunlink_send(cw_tunlink_t *l, const uint8_t *data, size_t len);
/* True while the write queue is below CW_TUNLINK_HIGH. */
bool cw_tunlink_writable(const cw_tunlink_t *l);
/* Stop / restart reading (backpressure).  Silence while paused does not
 * count: last_rx is reset on resume. */
void cw_tunlink_pause(cw_tunlink_t *l, bool pause);
/* Close: graceful lets queued bytes (a REFUSE, an ABORT, a last ACK) go
 * first and then lingers: our FIN is sent and what the peer still sends is
 * read and dropped until its EOF or CW_TUNLINK_LINGER_MS, because closing a
 * socket with unread data makes the kernel reset the connection, and the
 * reset can reach the peer before it has read our last frame.  Otherwise at
 * once.  Idempotent. */
#define CW_TUNLINK_LINGER_MS 2000
void cw_tunlink_close(cw_tunlink_t *l, bool graceful);
/* "IP:port" of the peer into buf. */
void cw_tunlink_peer(const cw_tunlink_t *l, char *buf, size_t len);
/* Why TLS failed, for log lines. */
const char *cw_tunlink_tls_error(const cw_tunlink_t *l);

#endif
