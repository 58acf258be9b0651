/* The master's requests, protocol-neutral (dispatch.h). */
#include "dispatch.h"

#include <stdio.h>

#include "log.h"

int cw_dispatch_start(cw_dispatch_t *d, cw_session_t *s, const cw_cmd_settings_t *set, cw_str_t id,
                      cw_cmd_kind_t kind, cw_args_t *args, char *err, size_t errlen, cw_cmd_t **out)
{
    if (d->refusing) {
        snprintf(err, errlen, "worker is shutting down; command refused");
        cw_warn("command %.*s refused: the worker is shutting down", (int)id.len, id.ptr);
        return CW_EBADARG;
    }
    int rc = cw_cmds_create(d->cmds, s, set, id, kind, args, err, errlen, out);
    if (rc < 0)
        cw_warn("command %.*s (%s) refused: %s", (int)id.len, id.ptr, cw_cmd_names(kind)[0], err);
    return rc;
}

void cw_dispatch_interrupt(cw_dispatch_t *d, cw_session_t *s, cw_str_t id)
{
    cw_cmd_t *cmd = cw_cmds_find(d->cmds, s, id);
    if (cmd == NULL) {
        cw_info("interrupt for unknown command %.*s ignored", (int)id.len, id.ptr);
        return;
    }
    cw_cmd_interrupt(cmd, "command interrupted");
}

void cw_dispatch_print(cw_dispatch_t *d, cw_str_t message)
{
    (void)d;
    cw_info("message from master: %.*s", (int)message.len, message.ptr);
}

int cw_dispatch_info(cw_dispatch_t *d, cw_info_t *info)
{
    return cw_info_collect(info, &d->info);
}

void cw_dispatch_attached(cw_dispatch_t *d, const char *peer)
{
    if (d->ops && d->ops->attached)
        d->ops->attached(d, peer);
}

void cw_dispatch_shutdown(cw_dispatch_t *d)
{
    if (d->ops && d->ops->shutdown)
        d->ops->shutdown(d);
}
