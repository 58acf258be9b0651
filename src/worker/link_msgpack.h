/* The msgpack_experimental_v7 link (link.h). */
#ifndef CW_WORKER_LINK_MSGPACK_H
#define CW_WORKER_LINK_MSGPACK_H

#include "conn.h"
#include "link.h"

/* A new link (connect its ops->tcp(), then ops->start()); NULL when out of
 * memory. */
cw_link_t *cw_link_msgpack_new(uv_loop_t *loop, const cw_conn_options_t *opt, cw_dispatch_t *d,
                               const cw_link_events_t *ev, void *owner);

#endif
