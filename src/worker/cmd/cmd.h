/* Commands: the part every worker command shares, and the set of running
 * commands.
 *
 * The command layer knows its session (session.h), the environment it was
 * given (cw_cmd_env_t: loop, limits, clock) and nothing of the worker or of
 * any protocol.  The worker owns one cw_cmds_t and hears from it through
 * cw_cmds_events_t; links (the protocols) create commands from the master's
 * requests and implement the session.
 *
 * A command's phases (cmd->phase, moved only by cmd_set_phase in cmd.c; the
 * table is in docs/design.md and checked by tests/unit/test_cmd_phases.c):
 *
 *   CREATED   validated, the link answers the request, then cw_cmd_start
 *   RUNNING   impl->start returned; the work goes on, output flows
 *   FINISHING the implementation called cw_cmd_finish (rc added): the rest of
 *             the output drains, then `complete` is sent
 *   CLOSING   `complete` sent (or dropped: no link); impl->destroy closes
 *             the implementation's handles, then calls cw_cmd_destroyed
 *   (freed in the flush timer's close callback)
 *
 * Interrupts (the master's, a lost link, the worker stopping) call
 * impl->interrupt once; the implementation stops and still calls
 * cw_cmd_finish.  A command whose link is gone (cmd->session == NULL) drops
 * its output but runs the same phases, so no process or handle is leaked.
 */
#ifndef CW_CMD_CMD_H
#define CW_CMD_CMD_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "cworker/args.h"
#include "cworker/output.h"
#include "session.h"

/* What the worker gives every command; lives as long as the command set. */
typedef struct cw_cmd_env {
    uv_loop_t *loop;
    char **environ;            /* the worker's environment, for children */
    const char *basedir;       /* the worker's base directory (rmdir never removes it) */
    long umask;                /* the process's umask (file modes) */
    size_t max_pending_output; /* output at which producers pause; 0: 2 x buffer_size */
    size_t max_commands;       /* 0: no limit */
    unsigned fs_max_depth;     /* deepest tree a file command walks */
    double (*now)(void);       /* wall clock, seconds (line times) */
} cw_cmd_env_t;

/* The link's settings for output (set_worker_settings; defaults otherwise). */
typedef struct cw_cmd_settings {
    size_t buffer_size;     /* budget of one update */
    double buffer_timeout;  /* longest delay of output, seconds */
    size_t max_line_length; /* characters per line before a cut */
} cw_cmd_settings_t;

/* Defaults of the stock worker: 64 KiB, 5 s, 4096. */
void cw_cmd_settings_default(cw_cmd_settings_t *s);

typedef enum cw_cmd_phase {
    CW_CMD_CREATED,
    CW_CMD_RUNNING,
    CW_CMD_FINISHING,
    CW_CMD_CLOSING,
    CW_CMD_PHASES
} cw_cmd_phase_t;

/* True if a command may move from phase a to b (the table of cmd.c). */
bool cw_cmd_phase_allowed(cw_cmd_phase_t a, cw_cmd_phase_t b);
const char *cw_cmd_phase_name(cw_cmd_phase_t p);

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

typedef struct cw_cmds cw_cmds_t;

/* Statistics of the command set (/metrics). */
typedef struct cw_cmds_stats {
    uint64_t started;
    uint64_t failed;
    uint64_t bytes_output;   /* output text sent or dropped */
    uint64_t bytes_transfer; /* transfer payload */
} cw_cmds_stats_t;

/* What the owner hears (each may be NULL). */
typedef struct cw_cmds_events {
    /* A command was created or is gone: cs->n changed. */
    void (*changed)(cw_cmds_t *cs);
    /* The master answered one of our `complete` messages. */
    void (*acked)(cw_cmds_t *cs);
} cw_cmds_events_t;

struct cw_cmds {
    cw_cmd_env_t env;
    const cw_cmds_events_t *ev;
    void *owner;
    cw_cmd_t *head; /* running commands, newest first */
    size_t n;
    cw_cmds_stats_t stats;
};

struct cw_cmd {
    cw_cmds_t *cs;
    cw_session_t *session; /* the link it reports to; NULL once that is gone */
    void *link;            /* the session's per-command data */
    cw_cmd_t *next, *prev;
    char *id;
    cw_str_t idstr;
    cw_cmd_kind_t kind;
    cw_args_t args;
    const cw_cmd_impl_t *impl;
    void *state; /* the implementation's */
    cw_cmd_settings_t settings;

    cw_cmd_phase_t phase;
    bool interrupted;  /* impl->interrupt was called */
    bool paused;       /* flow control: the producer waits for cw_cmd_resume */
    bool flush_wanted; /* output waits for the link to take more */

    cw_outbuf_t out;
    uv_timer_t flush_timer;
    uint64_t start_hr;
    char *failure; /* complete's failure text (NULL: success) */
    bool has_rc;
    int64_t rc;
};

/* Implementations, one per file. */
extern const cw_cmd_impl_t cw_cmd_shell_impl;
extern const cw_cmd_impl_t cw_cmd_fs_impl;
extern const cw_cmd_impl_t cw_cmd_upload_impl;
extern const cw_cmd_impl_t cw_cmd_download_impl;

/* ---- the set (for the worker and the links) ---- */

void cw_cmds_init(cw_cmds_t *cs, const cw_cmd_env_t *env, const cw_cmds_events_t *ev, void *owner);
/* True if this build implements the kind (what the worker info announces). */
bool cw_cmd_supported(cw_cmd_kind_t kind);
/* Validate and create a command for the session (not started yet, so the
 * link can answer the request first).  args is taken over (left empty) on
 * success.  On refusal returns a negative code with the text in err. */
int cw_cmds_create(cw_cmds_t *cs, cw_session_t *s, const cw_cmd_settings_t *set, cw_str_t id,
                   cw_cmd_kind_t kind, cw_args_t *args, char *err, size_t errlen, cw_cmd_t **out);
/* Run it (CREATED -> RUNNING). */
void cw_cmd_start(cw_cmd_t *cmd);
/* The running command of the session with this id, or NULL. */
cw_cmd_t *cw_cmds_find(cw_cmds_t *cs, const cw_session_t *s, cw_str_t id);
/* Interrupt every command (the worker stops). */
void cw_cmds_interrupt_all(cw_cmds_t *cs, const char *why);
/* The link of session s is gone (s NULL: every link): drop output,
 * interrupt, never touch s again. */
void cw_cmds_session_gone(cw_cmds_t *cs, const cw_session_t *s);
/* The session can take more: flush waiting commands, resume producers. */
void cw_cmds_kick(cw_cmds_t *cs, cw_session_t *s);
/* For sessions: the master answered a `complete`. */
void cw_cmds_acked(cw_cmds_t *cs);

/* The master's interrupt: flush output, then interrupt. */
void cw_cmd_interrupt(cw_cmd_t *cmd, const char *why);

/* ---- for implementations ---- */

uv_loop_t *cw_cmd_loop(const cw_cmd_t *cmd);
/* Wall clock (line times). */
double cw_cmd_now(const cw_cmd_t *cmd);
/* Seconds since start. */
double cw_cmd_elapsed(const cw_cmd_t *cmd);
/* Header line(s); a missing final newline is added. */
void cw_cmd_header(cw_cmd_t *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Lines (stdout/stderr/log) were added to cmd->out by a cw_lines_t. */
void cw_cmd_output_added(cw_cmd_t *cmd);
void cw_cmd_add_int(cw_cmd_t *cmd, const char *key, int64_t v);
void cw_cmd_add_str(cw_cmd_t *cmd, const char *key, const char *v);
void cw_cmd_add_strlist(cw_cmd_t *cmd, const char *key, const char *const *v, size_t n);
void cw_cmd_add_numlist(cw_cmd_t *cmd, const char *key, const cw_num_t *v, size_t n);
/* True when the producer should stop reading until impl->resume.  Sets
 * cmd->paused. */
bool cw_cmd_should_pause(cw_cmd_t *cmd);
/* The work is done (rc already added).  failure NULL = success. */
void cw_cmd_finish(cw_cmd_t *cmd, const char *failure);
/* All implementation handles are closed: free the command. */
void cw_cmd_destroyed(cw_cmd_t *cmd);
/* A transfer request through the command's session (session.h); CW_ECLOSED
 * when the link is gone (cb is then never called). */
int cw_cmd_xfer(cw_cmd_t *cmd, const cw_xfer_req_t *req, cw_xfer_cb cb);
/* The protocol of the command's link ("msgpack", "pb"), "" without one:
 * for messages that name the master's side of a transfer. */
const char *cw_cmd_protocol(const cw_cmd_t *cmd);
/* Largest transfer block the command's link carries (0: no link). */
size_t cw_cmd_max_block(const cw_cmd_t *cmd);
/* Count transfer payload for the statistics. */
void cw_cmd_count_transfer(cw_cmd_t *cmd, uint64_t bytes);

#endif
