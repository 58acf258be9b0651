/* Commands: the common part every worker command shares.
 *
 * A command is created by start_command, reports through `update`
 * messages built in its cw_outbuf_t, and ends with exactly one `complete`.
 *
 * Lifecycle:
 *   cw_cmd_create -> impl->start -> ... output ... -> cw_cmd_finish(failure)
 *     -> (output drained) complete sent -> impl->destroy
 *     -> impl calls cw_cmd_destroyed once its handles are closed -> freed.
 * On interrupt (master request, lost link, worker exit) impl->interrupt is
 * called; the implementation stops its work and still calls cw_cmd_finish.
 * When the link is lost (cmd->detached) output is dropped and nothing is
 * sent, but the same lifecycle runs so no process or handle is leaked.
 */
#ifndef CW_CMD_H
#define CW_CMD_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "cworker/args.h"
#include "cworker/output.h"
#include "worker.h"

typedef struct cw_cmd_impl {
    /* Begin the work.  On failure return a negative code: the command then
     * fails with the header and rc already added by the implementation
     * (cw_cmd_finish is called by the caller). */
    int (*start)(cw_cmd_t *cmd);
    /* Stop promptly (why: "command interrupted", "connection lost", ...). */
    void (*interrupt)(cw_cmd_t *cmd, const char *why);
    /* Output space is free again: resume reading (optional). */
    void (*resume)(cw_cmd_t *cmd);
    /* Release the implementation's state; asynchronous: call
     * cw_cmd_destroyed(cmd) when every handle is closed. */
    void (*destroy)(cw_cmd_t *cmd);
} cw_cmd_impl_t;

struct cw_cmd {
    cw_worker_t *w;
    cw_cmd_t *next, *prev;
    char *id;
    cw_str_t idstr;
    cw_cmd_kind_t kind;
    cw_args_t args;
    const cw_cmd_impl_t *impl;
    void *state; /* the implementation's */

    cw_outbuf_t out;
    uv_timer_t flush_timer;
    uint64_t conn_gen; /* connection this command reports to */
    uint64_t start_hr; /* uv_hrtime at start */

    bool interrupted; /* by the master, or by us */
    bool detached;    /* its connection is gone: drop output */
    bool finishing;   /* cw_cmd_finish called */
    bool completed;   /* `complete` sent (or dropped) */
    bool destroying;
    bool paused;      /* the producer stopped because the outbuf is full */
    bool flush_wanted;
    char *failure;    /* complete args (NULL = success) */
    bool has_rc;      /* an rc was reported (for statistics) */
    int64_t rc;
};

/* True if this build implements the kind (what worker_commands announces). */
bool cw_cmd_supported(cw_cmd_kind_t kind);

/* Implementations, one per file. */
extern const cw_cmd_impl_t cw_cmd_shell_impl;
extern const cw_cmd_impl_t cw_cmd_fs_impl;
extern const cw_cmd_impl_t cw_cmd_upload_impl;
extern const cw_cmd_impl_t cw_cmd_download_impl;

/* Validate and create a command for start_command (not started yet, so the
 * caller can answer start_command first).  On refusal returns a negative
 * code and puts the exception text in err. */
int cw_cmd_create(cw_worker_t *w, cw_str_t id, cw_str_t name, const msgpack_object *args,
                  char *err, size_t errlen, cw_cmd_t **out);
/* Run it. */
void cw_cmd_start(cw_cmd_t *cmd);
cw_cmd_t *cw_cmd_find(cw_worker_t *w, cw_str_t id);

/* Master's interrupt_command: flush output, then interrupt. */
void cw_cmd_interrupt(cw_cmd_t *cmd, const char *why);
/* The link is gone: drop output, interrupt. */
void cw_cmd_detach(cw_cmd_t *cmd);

/* ---- used by implementations ---- */

/* Header line(s); a missing final newline is added. */
void cw_cmd_header(cw_cmd_t *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Lines (stdout/stderr/log) were added to cmd->out by a cw_lines_t. */
void cw_cmd_output_added(cw_cmd_t *cmd);
void cw_cmd_add_int(cw_cmd_t *cmd, const char *key, int64_t v);
void cw_cmd_add_float(cw_cmd_t *cmd, const char *key, double v);
void cw_cmd_add_str(cw_cmd_t *cmd, const char *key, const char *v);
void cw_cmd_add_packed(cw_cmd_t *cmd, const char *key, const void *packed, size_t len);
/* True when the producer should stop reading until impl->resume. Sets
 * cmd->paused. */
bool cw_cmd_should_pause(cw_cmd_t *cmd);
/* The work is done (rc already added).  failure NULL = success. */
void cw_cmd_finish(cw_cmd_t *cmd, const char *failure);
/* All implementation handles are closed: free the command. */
void cw_cmd_destroyed(cw_cmd_t *cmd);
/* Send a transfer request (packed with seq) on the command's connection;
 * cb gets the response or NULL.  Returns 0 or CW_ECLOSED. */
int cw_cmd_request(cw_cmd_t *cmd, int64_t seq, cw_buf_t *msg, cw_conn_resp_cb cb);
/* The command's connection if it is still the current one, else NULL. */
cw_conn_t *cw_cmd_conn(cw_cmd_t *cmd);
/* Seconds since start. */
double cw_cmd_elapsed(const cw_cmd_t *cmd);

#endif
