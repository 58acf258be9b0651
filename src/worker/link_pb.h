/* The Perspective Broker link (link.h): Twisted PB over TCP (TLS when
 * configured), as the stock Buildbot master speaks it on its `pb` port. */
#ifndef CW_WORKER_LINK_PB_H
#define CW_WORKER_LINK_PB_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "link.h"

typedef struct cw_link_pb_options {
    const char *basedir;       /* the worker's base directory (builder dirs are below it) */
    const char *home;          /* expands "~" in transfer paths; NULL: none */
    uint64_t ping_interval;    /* ms of silence before a keepalive() probe; 0 = none */
    uint64_t dead_timeout;     /* ms without a byte from the master: the link is dead; 0 = never */
    uint64_t keepalive;        /* ms between keepalive() calls whatever the traffic; 0 = none */
    uint64_t greeting_timeout; /* ms for the master's first bytes (the dialect offer) */
    bool delete_leftover_dirs; /* remove basedir directories no builder uses */
    unsigned fs_max_depth;     /* for that removal */
} cw_link_pb_options_t;

/* A new link (connect its ops->tcp(), then ops->start()); NULL when out of
 * memory.  opt is copied; its strings must outlive the link. */
cw_link_t *cw_link_pb_new(uv_loop_t *loop, const cw_link_pb_options_t *opt, cw_dispatch_t *d,
                          const cw_link_events_t *ev, void *owner);

#endif
