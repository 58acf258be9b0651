/* cworker-relay: the relay end of the resumable tunnel (docs/tunnel.md).
 *
 *   worker ──link (TCP [+TLS], replaced on every resume)──> relay_link_t
 *                                                              │ HELLO
 *   relay_t: listener, the links waiting for HELLO, the session table,
 *            recently ended ids, counters, the metrics listener
 *                                                              │
 *   session_t: cw_tun_t (replay buffer, positions) + the TCP connection to
 *              the master + one timer (liveness, delayed ACK, resume window)
 *
 * relay.c accepts links and answers HELLO (new session, resume, refusal);
 * session.c carries a session's bytes between its link and the master;
 * metrics.c serves /metrics and /healthz; main.c is the command line.
 *
 * Ownership: the relay owns every link and session.  A link is freed in its
 * close callback (cw_tunlink_t's on_closed); a session when its last handle
 * (master TCP, timer) is closed, after it left the table.  Sessions are in
 * memory only: a relay restart loses them all.
 */
#ifndef CW_RELAY_H
#define CW_RELAY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

#include "cworker/tunnel.h"
#include "tunlink.h"

#define RELAY_BUCKETS           4096
#define RELAY_TOMBSTONES        4096
#define RELAY_HELLO_TIMEOUT_MS  10000
#define RELAY_MASTER_CONNECT_MS 10000
#define RELAY_MAX_PEER_BUFFER   (64u << 20) /* largest worker buffer accepted */

typedef struct relay relay_t;
typedef struct session session_t;

typedef struct relay_options {
    char *listen;           /* HOST:PORT */
    char *master;           /* HOST:PORT */
    uint32_t resume_window; /* s */
    size_t buffer_size;     /* replay buffer per session and direction */
    char *tls_cert, *tls_key;
    char *metrics;         /* HOST:PORT or NULL */
    uint64_t dead_timeout; /* ms; pings at a third of it */
    unsigned max_sessions;
    bool verbose;
} relay_options_t;

/* A worker link: waiting for HELLO (pending), or attached to a session. */
typedef struct relay_link {
    cw_tunlink_t l; /* first: the tunlink callbacks get &l */
    relay_t *r;
    session_t *s;                   /* attached session, or NULL */
    cw_tun_dec_t *dec;              /* pending: the HELLO decoder (freed at attach) */
    struct relay_link *prev, *next; /* the pending list */
    uint64_t accepted_at;
    char peer[48];
} relay_link_t;

typedef enum session_state {
    SS_CONNECTING, /* the master connection is being opened; WELCOME waits */
    SS_ATTACHED,   /* a link is attached */
    SS_DETACHED,   /* no link: the resume window runs */
    SS_CLOSING,    /* left the table; handles closing */
} session_state_t;

struct session {
    relay_t *r;
    session_t *next; /* bucket chain */
    session_state_t state;
    cw_tun_t core;
    relay_link_t *link; /* attached link, or NULL */
    uv_tcp_t master;
    uv_connect_t *creq; /* while connecting to the master */
    uv_timer_t timer;
    int handles_open;
    size_t master_queued; /* bytes written to the master, not yet taken by the kernel */
    bool master_reading;  /* reading the master's socket */
    bool master_eof;      /* the master closed its end (or failed) */
    bool master_dead;     /* nothing can be written to the master any more */
    bool master_shut;     /* we sent the master our FIN */
    bool link_held;       /* we paused the link: the master's write queue is full */
    uint64_t created_at, detached_at;
    uint64_t tick_due, ack_due, last_ping, ping_seq;
    uint64_t bytes_to_master, bytes_from_master;
    unsigned resumes;
    char peer[48]; /* the worker's address on the last link */
};

struct relay {
    uv_loop_t *loop;
    relay_options_t opt;
    struct ssl_ctx_st *tls_ctx;
    uv_tcp_t listener;
    struct sockaddr_storage master_addr;
    uv_timer_t tick;       /* HELLO timeouts of pending links */
    relay_link_t *pending; /* links waiting for HELLO */
    session_t *buckets[RELAY_BUCKETS];
    unsigned nsessions, ndetached;
    struct {
        uint64_t id;
        uint8_t reason; /* EXPIRED, ENDED (complete) or CLOSED (aborted) */
    } tomb[RELAY_TOMBSTONES];
    unsigned tomb_next;
    struct relay_metrics *metrics;
    bool stopping;
    int handles_open;
    /* counters */
    uint64_t sessions_total, resumes_total, expired_total, links_total;
    uint64_t refusals[CW_TUN_R_ENDED + 1];
    uint64_t bytes_to_master, bytes_from_master; /* of sessions that ended */
};

/* relay.c */
int relay_start(relay_t *r, uv_loop_t *loop, const relay_options_t *opt);
/* Stop accepting, end every session (ABORT to attached workers, master
 * connections closed), close the listeners; the loop then runs out. */
void relay_stop(relay_t *r);
/* The session with this id, or NULL. */
session_t *relay_find(relay_t *r, uint64_t id);
/* Put a session (its id set) into the table. */
void relay_insert(relay_t *r, session_t *s);
void relay_forget(relay_t *r, session_t *s, uint8_t tomb_reason);
/* Close a pending or detached link, sending `reason` first when non-zero. */
void relay_link_refuse(relay_link_t *lk, int reason, const char *why);
/* Replay-buffer bytes held by every session (for /metrics). */
size_t relay_bytes_buffered(const relay_t *r);
/* Sessions whose master socket is not read because their buffer is full. */
unsigned relay_masters_paused(const relay_t *r);
/* Parse HOST:PORT / [V6]:PORT (numeric) into ss.  0 or -EINVAL. */
int relay_parse_addr(const char *s, struct sockaddr_storage *ss);

/* session.c */
/* A new session for a link that sent HELLO new: connect to the master,
 * answer WELCOME when it is up (UNREACHABLE when not).  `rest` are bytes
 * that came after HELLO. */
void session_create(relay_t *r, relay_link_t *lk, const cw_tun_hello_t *h, uint8_t *rest,
                    size_t rest_len);
/* A resume that passed cw_tun_server_resume(): take the link over. */
void session_attach(session_t *s, relay_link_t *lk, uint8_t *rest, size_t rest_len);
/* End the session now (relay stopping): ABORT to its link, close all. */
void session_abort(session_t *s, const char *why);
extern const cw_tunlink_callbacks_t session_link_callbacks;

/* metrics.c */
int relay_metrics_start(relay_t *r);
void relay_metrics_stop(relay_t *r);

#endif
