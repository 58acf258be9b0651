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

#include "conn.h"
#include "cworker/args.h"
#include "cworker/output.h"

typedef struct cw_config {
    char *master_host; /* host name or address (no brackets) */
    int master_port;
    char *master_path; /* WebSocket path, starts with '/' */
    bool use_tls;      /* wss:// */
    char *name;
    char *password;
    char *basedir; /* absolute */
    double backoff_cap;      /* seconds, cap of the reconnect delay */
    uint64_t ping_interval;  /* ms */
    uint64_t dead_timeout;   /* ms */
    size_t max_message;      /* bytes */
    size_t max_commands;     /* concurrent commands refused above this; 0 = no limit */
    uint64_t kill_grace;     /* ms to wait for process groups at exit */
    uint64_t drain_timeout;  /* ms SIGTERM lets running commands finish */
    bool verbose;
    mode_t umask; /* the process umask, read once at start-up */
} cw_config_t;

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
    uv_getaddrinfo_t gai;
    bool gai_active;
    struct addrinfo *addrs;
    struct addrinfo *next_addr;
    uv_connect_t connect_req;

    cw_settings_t settings;
    unsigned inflight_updates; /* update requests not answered yet */

    cw_cmd_t *cmds; /* running commands (doubly linked) */
    size_t ncmds;

    uv_signal_t sig_term;
    uv_signal_t sig_int;
    uv_timer_t exit_timer;
    int exit_code;
    bool exiting;
    bool draining; /* SIGTERM: waiting for commands, refusing new ones */
    bool forced;  /* the exit deadline passed once: SIGKILL sent */
    bool abandon; /* leave even though commands did not end */

    /* statistics */
    uint64_t n_connects;
    uint64_t n_commands;
};

/* Set up and start connecting.  Returns 0 or a negative code. */
int cw_worker_init(cw_worker_t *w, uv_loop_t *loop, const cw_config_t *cfg);
/* Stop: interrupt commands, wait for their process groups (bounded), close
 * every handle; uv_run returns afterwards.  exit_code is what main returns. */
void cw_worker_stop(cw_worker_t *w, int exit_code, const char *why);

/* True if the current connection can take another update now. */
bool cw_worker_can_send(const cw_worker_t *w);
/* Output space may be free again: let commands flush and producers resume. */
void cw_worker_kick(cw_worker_t *w);

/* get_worker_info: pack the result map (info.c). */
int cw_worker_pack_info(const cw_worker_t *w, msgpack_packer *pk);

/* Wall-clock time in seconds (line times, elapsed headers). */
double cw_now(void);

#endif
