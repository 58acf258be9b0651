/* --metrics-listen: /healthz and Prometheus /metrics over plain HTTP.  It
 * knows nothing of the worker: the numbers come from a callback. */
#ifndef CW_METRICS_H
#define CW_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

/* What /metrics and /healthz report, read at each request. */
typedef struct cw_metrics_snapshot {
    bool attached;
    uint64_t connects;
    uint64_t commands;
    uint64_t commands_failed;
    size_t commands_running;
    uint64_t output_bytes;
    uint64_t transfer_bytes;
    double last_attach; /* Unix time, 0: never */
    unsigned processes;
    bool relay;             /* through cworker-relay: the two below are reported */
    bool relay_link_up;     /* the tunnel has its link (false during an outage) */
    uint64_t relay_resumes; /* outages the tunnel resumed from */
} cw_metrics_snapshot_t;

typedef void (*cw_metrics_read_cb)(void *ctx, cw_metrics_snapshot_t *out);

typedef struct cw_metrics cw_metrics_t;

/* Listen on listen ("IP:PORT").  0 with *out set, or a negative code
 * (logged). */
int cw_metrics_start(uv_loop_t *loop, const char *listen, cw_metrics_read_cb read, void *ctx,
                     cw_metrics_t **out);
/* Close the listener and every open client (at exit; NULL-safe). */
void cw_metrics_stop(cw_metrics_t *m);

#endif
