/* The cworker daemon: configuration, the worker object and its commands.
 *
 * Ownership: main() owns the cw_worker_t and its configuration.  The worker
 * owns at most one cw_conn_t at a time (the current link to the master) and
 * every cw_cmd_t (the running commands).  A command outlives a connection:
 * when the link is lost its process group is killed and its output is
 * dropped, but the object stays until its child is reaped and its handles
 * are closed.
 */
#ifndef CW_WORKER_H
#define CW_WORKER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

#include "options.h"
#include "conn.h"
#include "cworker/args.h"
#include "cworker/output.h"
#include "resolve.h"

/* Per-connection settings the master sends with set_worker_settings. */
typedef struct cw_settings {
    size_t buffer_size;
    double buffer_timeout;
    size_t max_line_length;
} cw_settings_t;

typedef struct cw_cmd cw_cmd_t;
typedef struct cw_worker cw_worker_t;

typedef enum cw_worker_state {
    CW_W_IDLE,       /* not connected, nothing scheduled */
    CW_W_RESOLVING,
    CW_W_CONNECTING,
    CW_W_CONNECTED,  /* WebSocket open */
    CW_W_BACKOFF,    /* waiting to retry */
    CW_W_STOPPING,   /* exiting: no reconnect */
} cw_worker_state_t;

struct cw_worker {
    uv_loop_t *loop;
    const cw_config_t *cfg;
    char **environ; /* the worker's own environment (process environ) */

    cw_worker_state_t state;
    cw_conn_t *conn;       /* current connection, or NULL */
    bool attached;         /* get_worker_info answered on this connection */
    uint64_t conn_gen;     /* bumped for every connection */
    unsigned attempt;      /* failed attempts since the last attach */
    uv_timer_t retry_timer;
    cw_resolve_t resolver;
    char host_header[300];       /* the master as "host:port" */
    struct ssl_ctx_st *tls_ctx;  /* wss: client TLS context */
    cw_proxy_t proxy;            /* HTTP CONNECT proxy (host NULL: none) */
    char proxy_target[300];      /* what the tunnel connects to ("" = no proxy) */
    char *proxy_auth;            /* Proxy-Authorization value, or NULL */
    struct cw_metrics *metrics;  /* --metrics-listen server, or NULL */
    const char *dial_host; /* what we connect to: the master, or a proxy */
    int dial_port;
    cw_addr_t addrs[CW_RESOLVE_MAX];
    size_t naddrs, next_addr;
    uv_connect_t connect_req;

    cw_settings_t settings;
    unsigned inflight_updates; /* update requests not answered yet */

    cw_cmd_t *cmds; /* running commands (doubly linked) */
    size_t ncmds;

    uv_signal_t sig_term;
    uv_signal_t sig_int;
    uv_signal_t sig_hup; /* reopens the log file; only started with --log-file */
    uv_timer_t exit_timer;
    int exit_code;
    bool exiting;
    bool draining; /* SIGTERM: waiting for commands, refusing new ones */
    bool forced;  /* the exit deadline passed once: SIGKILL sent */
    bool abandon; /* leave even though commands did not end */
    bool acks_waiting; /* stopping: waiting for the master to answer our `complete`s */
    bool acks_waited;  /* ... and that wait is over (answered or timed out) */
    bool linger;       /* a drain ended: stay attached briefly so the build can end */
    bool lingered;

    /* statistics (/metrics) */
    uint64_t n_connects;
    uint64_t n_commands;
    uint64_t n_commands_failed;
    uint64_t bytes_output;   /* command output text sent */
    uint64_t bytes_transfer; /* file/directory transfer payload */
    double last_attach;      /* Unix time, 0 = never */
};

/* Set up and start connecting.  Returns 0 or a negative code. */
int cw_worker_init(cw_worker_t *w, uv_loop_t *loop, const cw_config_t *cfg);
/* Stop: interrupt commands, wait for their process groups (bounded), close
 * every handle; uv_run returns afterwards.  exit_code is what main returns. */
/* A request of ours was answered (a stopping worker waits for that). */
void cw_worker_acked(cw_worker_t *w);
void cw_worker_stop(cw_worker_t *w, int exit_code, const char *why);

/* True if the current connection can take another update now. */
bool cw_worker_can_send(const cw_worker_t *w);
/* Output space may be free again: let commands flush and producers resume. */
void cw_worker_kick(cw_worker_t *w);

/* get_worker_info: pack the result map (info.c). */
int cw_worker_pack_info(const cw_worker_t *w, msgpack_packer *pk);

/* Tell systemd (when it watches) what the worker is doing. */
void cw_worker_status(cw_worker_t *w);

/* Wall-clock time in seconds (line times, elapsed headers). */
double cw_now(void);

#endif
