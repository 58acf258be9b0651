/* A link: one connection to the master in one protocol, as the worker
 * drives it.  The worker resolves the master, connects the link's TCP
 * socket and then starts the link, which speaks its protocol: it answers
 * the master's requests through the dispatcher (dispatch.h) and carries the
 * commands' output and transfers as their session (cmd/session.h).
 *
 * Implementations: link_msgpack.c (msgpack over WebSocket), link_pb.c
 * (Perspective Broker over TCP).
 *
 * Lifecycle: created by its constructor (link_msgpack.h), the worker
 * connects ops->tcp(), then ops->start(); ev->opened when the protocol
 * session is up; ops->close() (idempotent, asynchronous) or any failure
 * ends in ev->closed exactly once, after which the link frees itself: the
 * worker must not touch it once ev->closed has returned.
 */
#ifndef CW_WORKER_LINK_H
#define CW_WORKER_LINK_H

#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

#include "cmd/session.h"
#include "dispatch.h"

typedef struct cw_link cw_link_t;

/* How to reach the master past the TCP connection (the strings must live
 * until ev->opened or ev->closed). */
typedef struct cw_link_target {
    const char *host_header; /* "host:port" */
    const char *path;        /* WebSocket path */
    const char *user;        /* the worker's name */
    const char *password;
    struct ssl_ctx_st *tls_ctx; /* TLS to the master, or NULL */
    const char *tls_host;       /* name checked against its certificate */
    const char *proxy_target;   /* through an HTTP proxy: "host:port" to CONNECT to */
    const char *proxy_auth;     /* Proxy-Authorization value, or NULL */
} cw_link_target_t;

/* What the worker hears from a link. */
typedef struct cw_link_events {
    /* The protocol session is up (e.g. the WebSocket is open). */
    void (*opened)(cw_link_t *l);
    /* The link is gone (err 0: an orderly close); it frees itself after. */
    void (*closed)(cw_link_t *l, int err, const char *why);
} cw_link_events_t;

typedef struct cw_link_ops {
    /* The socket the worker connects. */
    uv_tcp_t *(*tcp)(cw_link_t *l);
    /* The TCP connection is up: speak the protocol.  0 or a negative code. */
    int (*start)(cw_link_t *l, const cw_link_target_t *t);
    /* Close (idempotent); ev->closed follows. */
    void (*close)(cw_link_t *l, int err, const char *why);
    /* Our messages the master has not answered yet. */
    size_t (*unanswered)(cw_link_t *l);
    /* The master's address, for logs. */
    const char *(*peer)(cw_link_t *l);
    /* Hold (true) or release the link's liveness checks (pings, keepalives,
     * the dead-link timeout): the path under it is down and being repaired
     * (a relay's tunnel resuming), so the silence is not the master's; the
     * session and its commands go on.  Released, silence counts from then. */
    void (*hold_liveness)(cw_link_t *l, bool hold);
    /* Ask the master for a graceful shutdown (it lets the running build
     * finish, then tells the worker to stop).  NULL when the protocol has
     * no such request (msgpack).  0 or a negative code. */
    int (*request_shutdown)(cw_link_t *l);
} cw_link_ops_t;

struct cw_link {
    const cw_link_ops_t *ops;
    cw_session_t session; /* what the link's commands report to */
    cw_dispatch_t *dispatch;
    const cw_link_events_t *ev;
    void *owner;
    bool open;     /* ev->opened was called */
    bool attached; /* the master has the worker info (attach done) */
};

#endif
