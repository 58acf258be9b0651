/* The master's requests, whatever the protocol, turned into command and
 * worker calls: the one place that decides what start_command,
 * interrupt_command, print, get_worker_info and shutdown do.  Links decode
 * their protocol's messages and call these; the worker fills in the struct
 * (it owns it and the command set). */
#ifndef CW_WORKER_DISPATCH_H
#define CW_WORKER_DISPATCH_H

#include <stdbool.h>

#include "cmd/cmd.h"
#include "info.h"

typedef struct cw_dispatch cw_dispatch_t;

/* What the worker hears from the dispatcher. */
typedef struct cw_dispatch_ops {
    /* A link answered its first worker info: the worker is attached. */
    void (*attached)(cw_dispatch_t *d, const char *peer);
    /* The master asked the worker to stop. */
    void (*shutdown)(cw_dispatch_t *d);
} cw_dispatch_ops_t;

struct cw_dispatch {
    cw_cmds_t *cmds;
    cw_info_src_t info;
    bool refusing; /* stopping or draining: new commands are refused */
    const cw_dispatch_ops_t *ops;
    void *owner;
};

/* start_command: 0 with *out created (the link answers the request, then
 * calls cw_cmd_start), or a negative code with the refusal in err (the link
 * answers with it).  args is taken over on success. */
int cw_dispatch_start(cw_dispatch_t *d, cw_session_t *s, const cw_cmd_settings_t *set, cw_str_t id,
                      cw_cmd_kind_t kind, cw_args_t *args, char *err, size_t errlen,
                      cw_cmd_t **out);
/* interrupt_command: an unknown id is logged and ignored (the stock worker's
 * answer is the same: none). */
void cw_dispatch_interrupt(cw_dispatch_t *d, cw_session_t *s, cw_str_t id);
/* print: a message for the worker's log. */
void cw_dispatch_print(cw_dispatch_t *d, cw_str_t message);
/* get_worker_info: the info to answer with (the link frees it).  The first
 * answer on a link makes the worker attached (cw_dispatch_attached). */
int cw_dispatch_info(cw_dispatch_t *d, cw_info_t *info);
void cw_dispatch_attached(cw_dispatch_t *d, const char *peer);
/* shutdown. */
void cw_dispatch_shutdown(cw_dispatch_t *d);

#endif
