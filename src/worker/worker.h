/* The cworker daemon: the link to the master and its lifecycle, the stop
 * sequence, and the commands.
 *
 * Ownership: main() owns the cw_worker_t and its configuration.  The worker
 * owns at most one link at a time (link.h) and the command set (cmd/cmd.h).
 * A command outlives its link: when the link is lost its process group is
 * killed and its output dropped, but the object stays until its child is
 * reaped and its handles are closed.
 *
 * Two state machines, each moved by one function in worker.c and tabled in
 * docs/design.md (tests/unit/test_worker_states.c checks the tables):
 *
 * the link (link_set_state):
 *   RESOLVING -> CONNECTING -> OPEN -> ATTACHED
 *   any of them -> BACKOFF (a failure or a lost link) -> RESOLVING
 *   any of them -> DOWN (the worker stops; final)
 *
 * the stop sequence (stop_enter), from RUN:
 *   DRAIN      SIGTERM: running commands may finish (--drain-timeout);
 *              new commands are refused
 *   INTERRUPT  every command interrupted; --kill-grace for them to end
 *   KILL       SIGKILL to every process group; 3 s more
 *   ACKS       the master answers our last `complete`s (at most 5 s)
 *   LINGER     after a drain, 1.5 s attached so the master can end the build
 *   CLOSE      the link closes, the resolver stops
 *   STOPPED    every handle closed: uv_run returns
 * Each phase leaves as soon as its condition holds (no commands, no
 * unanswered messages, no link); the one stop timer is the current phase's
 * deadline.
 */
#ifndef CW_WORKER_H
#define CW_WORKER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

#include "cmd/cmd.h"
#include "dispatch.h"
#include "link.h"
#include "options.h"
#include "resolve.h"

typedef enum cw_link_state {
    CW_LINK_RESOLVING,  /* looking up the master (or the proxy) */
    CW_LINK_CONNECTING, /* TCP, then the protocol's handshake */
    CW_LINK_OPEN,       /* the protocol session is up, not attached yet */
    CW_LINK_ATTACHED,   /* the master has the worker info: builds may run */
    CW_LINK_BACKOFF,    /* waiting to try again */
    CW_LINK_DOWN,       /* the worker stops: no link, no retry */
    CW_LINK_STATES
} cw_link_state_t;

typedef enum cw_stop_phase {
    CW_STOP_RUN,
    CW_STOP_DRAIN,
    CW_STOP_INTERRUPT,
    CW_STOP_KILL,
    CW_STOP_ACKS,
    CW_STOP_LINGER,
    CW_STOP_CLOSE,
    CW_STOP_STOPPED,
    CW_STOP_PHASES
} cw_stop_phase_t;

/* The transition tables (for tests and docs). */
bool cw_link_state_allowed(cw_link_state_t a, cw_link_state_t b);
const char *cw_link_state_name(cw_link_state_t s);
bool cw_stop_phase_allowed(cw_stop_phase_t a, cw_stop_phase_t b);
const char *cw_stop_phase_name(cw_stop_phase_t p);

typedef struct cw_worker cw_worker_t;

struct cw_worker {
    uv_loop_t *loop;
    const cw_config_t *cfg;
    char **environ; /* the worker's own environment (process environ) */

    cw_link_state_t link_state;
    cw_stop_phase_t stop_phase;
    cw_link_t *link;        /* the current link, or NULL */
    unsigned attempt;       /* failed attempts since the last attach */
    uv_timer_t retry_timer; /* job: BACKOFF -> RESOLVING */
    uv_timer_t stop_timer;  /* job: the current stop phase's deadline */
    cw_resolve_t resolver;

    char host_header[300];      /* the master as "host:port" */
    struct ssl_ctx_st *tls_ctx; /* wss: client TLS context */
    cw_proxy_t proxy;           /* HTTP CONNECT proxy (host NULL: none) */
    char proxy_target[300];     /* what the tunnel connects to ("" = no proxy) */
    char *proxy_auth;           /* Proxy-Authorization value, or NULL */
    struct cw_metrics *metrics; /* --metrics-listen server, or NULL (metrics.h) */
    const char *dial_host;      /* what we connect to: the master, or a proxy */
    int dial_port;
    cw_addr_t addrs[CW_RESOLVE_MAX];
    size_t naddrs, next_addr;
    uv_connect_t connect_req;

    /* relay: the tunnel's TLS context (relay-tls) and the current link's tunnel */
    struct ssl_ctx_st *relay_tls_ctx;
    struct cw_tunbridge *bridge; /* or NULL */
    bool relay_up;               /* the bridge's tunnel has its link */
    uint64_t relay_resumes;      /* outages resumed from, all tunnels */

    cw_cmds_t cmds;
    cw_dispatch_t dispatch;

    uv_signal_t sig_term;
    uv_signal_t sig_int;
    uv_signal_t sig_hup;    /* reopens the log file (--log-file), or allow-shutdown=signal */
    uv_signal_t sig_usr1;   /* reopens the log file with allow-shutdown=signal */
    uv_timer_t stamp_timer; /* allow-shutdown=file: looks at stamp_path */
    uv_timer_t idle_timer;  /* job: attached with no command for IDLE_TRIM_MS: trim */
    char stamp_path[4200];
    double started_at, stamp_seen; /* Unix times */
    char home[1024];               /* expands "~" in PB transfer paths ("" = none) */
    int exit_code;
    bool linger;  /* the stop began with a drain that ended: LINGER */
    bool abandon; /* commands did not end after SIGKILL: leave anyway */

    /* statistics (/metrics) */
    uint64_t n_connects;
    double last_attach; /* Unix time, 0 = never */
};

/* Set up and start connecting.  Returns 0 or a negative code. */
int cw_worker_init(cw_worker_t *w, uv_loop_t *loop, const cw_config_t *cfg);
/* Stop: interrupt commands, wait for their process groups (bounded), close
 * every handle; uv_run returns afterwards.  exit_code is what main returns. */
void cw_worker_stop(cw_worker_t *w, int exit_code, const char *why);
/* True while attached (for /healthz). */
bool cw_worker_attached(const cw_worker_t *w);

/* Wall-clock time in seconds (line times, elapsed headers). */
double cw_now(void);

#endif
