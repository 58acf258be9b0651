/* One protocol connection over libuv: TCP, HTTP upgrade, WebSocket session,
 * msgpack messages, request/response bookkeeping, send-queue accounting and
 * liveness (WebSocket pings with a dead-link timeout).
 *
 * This is the thin adapter between libuv and the sans-I/O library; both
 * cworker (client role) and cworker-master (server role) use it.
 *
 * Lifecycle: the owner allocates a cw_conn_t, calls cw_conn_init(), then
 * either connects cw_conn_tcp() itself and calls cw_conn_start_client(), or
 * accepts into cw_conn_tcp() and calls cw_conn_start_server().  Once the
 * upgrade is done on_open fires; requests arrive through on_request;
 * responses go to the callback given with the request.  cw_conn_close()
 * (or any error) starts an asynchronous close: every outstanding request's
 * callback gets NULL, the handles are closed, then on_close fires exactly
 * once.  After on_close the connection code never touches the object again,
 * so the owner may free it inside on_close.
 */
#ifndef CW_NET_CONN_H
#define CW_NET_CONN_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "cworker/reqtab.h"
#include "cworker/buf.h"
#include "cworker/http.h"
#include "cworker/msg.h"
#include "cworker/ws.h"

typedef struct cw_conn cw_conn_t;

typedef enum cw_conn_role {
    CW_CONN_CLIENT, /* the worker side */
    CW_CONN_SERVER, /* the master side */
} cw_conn_role_t;

typedef enum cw_conn_state {
    CW_CONN_INIT,
    CW_CONN_HANDSHAKE,
    CW_CONN_OPEN,
    CW_CONN_CLOSING,
    CW_CONN_CLOSED,
} cw_conn_state_t;

/* Called with the response to a request, or resp == NULL when the
 * connection went away first.  resp lives only during the call. */
typedef void (*cw_conn_resp_cb)(cw_conn_t *c, void *ctx, const cw_msg_t *resp);

typedef struct cw_conn_callbacks {
    /* The WebSocket is open (client: 101 checked; server: 101 sent). */
    void (*on_open)(cw_conn_t *c);
    /* A request from the peer (CW_OP_UNKNOWN for an op the decoder does not
     * know: answer it with cw_conn_respond_unknown).  The owner must answer
     * it exactly once (cw_conn_respond_*), now or later. */
    void (*on_request)(cw_conn_t *c, const cw_msg_t *msg);
    /* The send queue dropped below the low-water mark after having been above. */
    void (*on_drain)(cw_conn_t *c);
    /* The connection is gone.  err: 0 for an orderly close, else a code;
     * why: a short human-readable reason. */
    void (*on_close)(cw_conn_t *c, int err, const char *why);
    /* Server only: decide on credentials. Return 0 to accept, or an HTTP
     * status (401, 403, 503...) to refuse. */
    int (*on_auth)(cw_conn_t *c, const cw_http_upgrade_req_t *req);
    /* Optional: every well-formed message, before it is dispatched (used
     * for counting by fault injection). Return false to drop it. */
    bool (*on_message_seen)(cw_conn_t *c, const cw_msg_t *msg);
} cw_conn_callbacks_t;

typedef struct cw_conn_options {
    size_t max_message;         /* largest WebSocket message accepted (bytes) */
    uint64_t handshake_timeout; /* ms for the HTTP upgrade to finish */
    uint64_t ping_interval;     /* ms between our pings when idle; 0 = none */
    uint64_t dead_timeout;      /* ms without any byte from the peer before the
                                   link is declared dead; 0 = never */
    size_t high_water;          /* queued bytes above which writable() is false */
    size_t low_water;           /* on_drain fires when the queue falls below */
    struct ssl_ctx_st *tls_ctx; /* server: TLS on accepted links (NULL = plain) */
} cw_conn_options_t;

/* How a client reaches the master. */
typedef struct cw_conn_client {
    const char *host_header; /* "host:port" for the Host header */
    const char *path;        /* WebSocket path */
    const char *user;        /* Basic auth (NULL = none) */
    const char *password;
    struct ssl_ctx_st *tls_ctx; /* wss: a client TLS context, else NULL */
    const char *tls_host;       /* name (or IP) checked against the certificate */
    const char *proxy_target;   /* through an HTTP proxy: "host:port" to CONNECT to */
    const char *proxy_auth;     /* Proxy-Authorization value, or NULL */
} cw_conn_client_t;

/* Default options: 64 MiB messages, 10 s handshake, ping every 10 s, dead
 * after 30 s of silence, 1 MiB / 256 KiB water marks. */
void cw_conn_options_default(cw_conn_options_t *o);

struct cw_conn {
    uv_loop_t *loop;
    uv_tcp_t tcp;
    uv_timer_t timer;
    cw_conn_role_t role;
    cw_conn_state_t state;
    cw_conn_options_t opt;
    const cw_conn_callbacks_t *cb;
    void *data; /* owner's pointer */
    char peer[64];

    cw_ws_t ws;
    cw_http_head_t *head; /* only during the handshake */
    size_t head_seen;     /* plaintext bytes received during the handshake */
    char key[25];
    msgpack_unpacked up;
    uint8_t *rbuf;
    uint8_t *tbuf; /* decrypted bytes (TLS) */
    struct cw_tls *tls;
    bool tls_up;
    bool proxy_pending;      /* waiting for the proxy's answer to CONNECT */
    cw_conn_client_t client; /* strings owned by the caller, must outlive the handshake */

    int64_t next_seq;
    cw_reqtab_t pending; /* our requests waiting for their response */

    size_t queued; /* bytes given to uv_write and not yet written */
    bool above_high;
    uint64_t last_rx; /* uv_now of the last byte received */
    uint64_t last_ping;
    uint64_t last_tick; /* uv_now of the liveness timer's last run */
    uint64_t tick_ms;   /* its period */
    uint64_t opened_at;

    int close_err;
    char close_why[400];
    int handles_open;
    bool reading_paused;
    bool liveness_held; /* cw_conn_hold_liveness */

    /* statistics */
    uint64_t bytes_in, bytes_out, msgs_in, msgs_out;
};

void cw_conn_init(cw_conn_t *c, uv_loop_t *loop, cw_conn_role_t role, const cw_conn_options_t *opt,
                  const cw_conn_callbacks_t *cb, void *data);
/* The TCP handle to connect or accept on (initialised by cw_conn_init). */
uv_tcp_t *cw_conn_tcp(cw_conn_t *c);

/* Client: the TCP connection is up; send the upgrade request and read. */
int cw_conn_start_client(cw_conn_t *c, const char *host_header, const char *path, const char *user,
                         const char *password);
/* Client, full form: optional HTTP CONNECT proxy and TLS below the upgrade.
 * The strings in o must stay valid until on_open or on_close. */
int cw_conn_start_client2(cw_conn_t *c, const cw_conn_client_t *o);
/* Server: a TCP connection was accepted; wait for the upgrade request. */
int cw_conn_start_server(cw_conn_t *c);

/* Next request seq_number of this connection (0, 1, 2, ...). */
int64_t cw_conn_next_seq(cw_conn_t *c);

/* Send one packed message.  Takes the buffer's allocation (msg is left
 * empty).  Returns 0, or CW_ECLOSED if the connection is not open (the
 * buffer is freed anyway). */
int cw_conn_send(cw_conn_t *c, cw_buf_t *msg);
/* Send a request packed with seq and remember cb for its response. */
int cw_conn_request(cw_conn_t *c, int64_t seq, cw_buf_t *msg, cw_conn_resp_cb cb, void *ctx);
/* Forget the callbacks of outstanding requests made with ctx (their
 * responses are then dropped quietly). */
void cw_conn_forget(cw_conn_t *c, void *ctx);

int cw_conn_respond_nil(cw_conn_t *c, int64_t seq);
int cw_conn_respond_error(cw_conn_t *c, int64_t seq, const char *text);
/* Answer a request this side does not handle (an op unknown to the decoder,
 * CW_OP_UNKNOWN, or one not meant for our role) with the stock text, and log
 * it. */
int cw_conn_respond_unknown(cw_conn_t *c, const cw_msg_t *m);

/* Start closing (idempotent).  err/why are reported to on_close.  A Close
 * frame with ws_code is sent first when the WebSocket is open and ws_code
 * is non-zero. */
void cw_conn_close(cw_conn_t *c, int err, uint16_t ws_code, const char *why);

/* Stop / resume reading from the socket (the peer then sees a stalled
 * link; used by fault injection and by flow control). */
void cw_conn_pause_reading(cw_conn_t *c, bool pause);
/* Hold the liveness checks (no ping, no dead-link timeout, no handshake
 * timeout) while the path under the connection is down and being repaired
 * (a relay's tunnel resuming): that silence is not the peer's.  Released,
 * the silence (or the handshake's time) counts from then. */
void cw_conn_hold_liveness(cw_conn_t *c, bool hold);
/* Write bytes on the socket as they are, outside any framing (fault
 * injection only). */
int cw_conn_send_raw(cw_conn_t *c, const uint8_t *data, size_t len);

/* True while the send queue is below the high-water mark. */
bool cw_conn_writable(const cw_conn_t *c);
/* Inside on_request only: the storage of the request being handled, now the
 * caller's to free(), when it holds data[0..len) (cw_ws_take_message);
 * otherwise NULL and nothing changes (copy what you keep). */
uint8_t *cw_conn_take_message(cw_conn_t *c, const uint8_t *data, size_t len);
bool cw_conn_is_open(const cw_conn_t *c);

#endif
