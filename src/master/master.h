/* The master end of msgpack_experimental_v7, as a library over libuv.
 *
 * cw_master_t listens, authenticates workers (HTTP Basic, constant-time
 * compare against a table), runs the attach sequence (print "attached",
 * get_worker_info, set_worker_settings), keeps links alive (keepalive op and
 * WebSocket pings with a dead-link timeout), arbitrates duplicate logins like
 * the stock master, and lets its user run commands on attached workers and
 * serve their transfer requests with real data.
 *
 * Ownership and lifetimes:
 *   - cw_master_t is owned by the caller (cw_master_init / cw_master_close).
 *   - cw_mworker_t (an attached worker) is owned by the master; it is valid
 *     from on_attach until on_detach returns.
 *   - cw_remote_t (a command on a worker) is created by cw_remote_start and
 *     owned by the master; it is valid until its on_complete returns.  Every
 *     remote gets exactly one on_complete (also when the link is lost).
 *   - Transfer requests from the worker (on_transfer) must be answered
 *     exactly once with cw_remote_respond* — now or later, but before
 *     on_complete (the master stops waiting for answers when the link goes).
 */
#ifndef CW_MASTER_H
#define CW_MASTER_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "conn.h"
#include "cworker/msg.h"

typedef struct cw_master cw_master_t;
typedef struct cw_mworker cw_mworker_t;
typedef struct cw_remote cw_remote_t;

/* Test-only fault injection (see cw_master_faults_parse). */
typedef struct cw_master_faults {
    long drop_after;  /* close the TCP link abruptly after N messages from a worker */
    long stall_after; /* after N messages from a worker, stop reading for stall_ms */
    uint64_t stall_ms;
    char *exception_op; /* answer this worker request op with an exception */
    uint8_t *send_msg;  /* after attach, send these bytes as one binary message */
    size_t send_msg_len;
    uint8_t *send_raw; /* after attach, write these bytes raw on the socket */
    size_t send_raw_len;
    size_t oversize;  /* after attach, send a binary message of this many bytes */
    bool skip_attach; /* do not run the attach sequence (raw tests) */
} cw_master_faults_t;

typedef struct cw_master_options {
    uint64_t keepalive_ms;   /* keepalive op interval (stock: 3600 s); 0 = none */
    cw_conn_options_t conn;  /* ping / dead-link / message limits */
    uint64_t dup_timeout_ms; /* how long an old connection has to answer (stock 10 s) */
    int backlog;             /* listen(2) backlog (the kernel caps it at somaxconn) */
    cw_master_faults_t faults;
} cw_master_options_t;

void cw_master_options_default(cw_master_options_t *o);

/* Parse a fault spec, e.g. "drop_after=5,stall_after=3,stall_ms=2000,
 * exception_op=update,send_hex=81a26f70...,raw_hex=8800,oversize=1048576".
 * Returns 0 or -EINVAL. */
int cw_master_faults_parse(cw_master_faults_t *f, const char *spec);
void cw_master_faults_free(cw_master_faults_t *f);

typedef struct cw_master_callbacks {
    void (*on_attach)(cw_master_t *m, cw_mworker_t *w);
    void (*on_detach)(cw_master_t *m, cw_mworker_t *w, const char *why);
} cw_master_callbacks_t;

struct cw_master {
    uv_loop_t *loop;
    uv_tcp_t server;
    bool listening;
    cw_master_options_t opt;
    const cw_master_callbacks_t *cb;
    void *data;
    struct cw_master_account *accounts;
    size_t naccounts;
    uint32_t *account_hash; /* open addressing: account index + 1, 0 = empty */
    size_t hash_cap;        /* a power of two, > 2 * naccounts */
    cw_mworker_t *workers;  /* every connection, attached or not */
    size_t nconns;          /* connections in `workers` */
    size_t nattached;       /* of them attached */
    size_t ndup_wait;       /* of them waiting for an older connection of their name */
    uint64_t next_command_id;
    bool closing;
};

/* An account: a worker name and its password. */
typedef struct cw_master_account {
    char *name;
    size_t name_len;
    uint8_t pw_digest[32]; /* SHA-256 of the password */
    cw_mworker_t *active;  /* its attaching or attached connection, if any */
} cw_master_account_t;

typedef enum cw_mworker_state {
    CW_MW_CONNECTING, /* WebSocket opening */
    CW_MW_DUP_WAIT,   /* waiting for the old connection of the same name */
    CW_MW_ATTACHING,  /* print / get_worker_info / set_worker_settings */
    CW_MW_ATTACHED,
    CW_MW_GONE,
} cw_mworker_state_t;

struct cw_mworker {
    cw_master_t *m;
    cw_mworker_t *next, *prev;
    cw_conn_t conn;
    cw_mworker_state_t state;
    char *name;
    size_t account;   /* index in m->accounts (valid once authenticated) */
    uv_timer_t timer; /* keepalive / duplicate wait / stall */
    bool timer_init;
    /* get_worker_info result, kept packed plus its decoded view (in a zone
     * sized to it: an idle session should cost little) */
    uint8_t *info_buf;
    size_t info_len;
    msgpack_zone *info_zone;
    msgpack_object info;
    bool has_info;
    char *basedir;
    cw_remote_t *remotes;
    long msgs_seen;       /* for fault injection */
    cw_mworker_t *dup_of; /* the older connection we are waiting for */
    void *data;           /* user's pointer */
};

/* A transfer/data request from the worker for a running command. */
typedef struct cw_remote_callbacks {
    /* One [key, value] pair of an update (stdout, stderr, header, log, rc,
     * elapsed, files, stat, failure_reason, ...). value lives during the call. */
    void (*on_update)(cw_remote_t *r, cw_str_t key, const msgpack_object *value);
    /* Transfer request (update_upload_file_write, ..._close, ..._utime,
     * update_upload_directory_write, ..._unpack, update_read_file,
     * update_read_file_close).  Answer with cw_remote_respond*(r, m->seq, ...).
     * m and its data live during the call only.  NULL: refused. */
    void (*on_transfer)(cw_remote_t *r, const cw_msg_t *m);
    /* The command is over.  has_rc false when no rc arrived; failure is the
     * complete's failure text, the start_command refusal, or a link-loss
     * reason (lost true).  r is freed when this returns. */
    void (*on_complete)(cw_remote_t *r, bool has_rc, int64_t rc, const char *failure, bool lost);
} cw_remote_callbacks_t;

struct cw_remote {
    cw_mworker_t *w;
    cw_remote_t *next, *prev;
    char id[24];
    const cw_remote_callbacks_t *cb;
    void *data; /* user's pointer */
    bool has_rc;
    int64_t rc;
    bool started; /* start_command answered without exception */
    bool done;
};

int cw_master_init(cw_master_t *m, uv_loop_t *loop, const cw_master_options_t *opt,
                   const cw_master_callbacks_t *cb, void *data);
/* Add an account (copied).  Returns 0 or -ENOMEM. */
int cw_master_add_account(cw_master_t *m, const char *name, const char *password);
/* Listen on host:port (port 0 = any); *bound_port receives the port. */
int cw_master_listen(cw_master_t *m, const char *host, int port, int *bound_port);
/* Stop listening, drop every connection (remotes complete as lost), close
 * handles.  The loop then runs out.  Safe to call more than once. */
void cw_master_close(cw_master_t *m);

/* The attached worker of this name, or NULL (a hash lookup). */
cw_mworker_t *cw_master_find(cw_master_t *m, const char *name);

/* Worker info helpers (valid while attached). */
const msgpack_object *cw_mworker_info(cw_mworker_t *w, const char *key);
bool cw_mworker_has_command(cw_mworker_t *w, const char *command);

/* Start a command.  packed_args is one msgpack map (the command's args),
 * copied into the message.  Returns the remote, or NULL (worker gone/OOM). */
cw_remote_t *cw_remote_start(cw_mworker_t *w, const char *command_name, const uint8_t *packed_args,
                             size_t args_len, const cw_remote_callbacks_t *cb, void *data);
/* Send interrupt_command for it. */
int cw_remote_interrupt(cw_remote_t *r, const char *why);
/* Answer a transfer request: nil, an error text, or bin data (read_file). */
int cw_remote_respond(cw_remote_t *r, int64_t seq);
int cw_remote_respond_error(cw_remote_t *r, int64_t seq, const char *text);
int cw_remote_respond_data(cw_remote_t *r, int64_t seq, const uint8_t *data, size_t len);
/* Inside on_transfer only: the storage data[0..len) lies in, now the
 * caller's to free(), when the message was assembled from several reads (a
 * large one); NULL otherwise (copy what you keep).  Lets a writer keep a
 * block without copying it. */
uint8_t *cw_remote_take_message(cw_remote_t *r, const uint8_t *data, size_t len);
/* Send a response the caller packed whole (the buffer is taken). */
int cw_remote_send_packed(cw_remote_t *r, cw_buf_t *msg);

#endif
