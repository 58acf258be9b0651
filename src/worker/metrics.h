/* --metrics-listen: /healthz and Prometheus /metrics over plain HTTP. */
#ifndef CW_METRICS_H
#define CW_METRICS_H

struct cw_worker;

/* Listen on cfg->metrics_listen. 0 or a negative code (logged). */
int cw_metrics_start(struct cw_worker *w);
/* Close the listener and every open client (at exit). */
void cw_metrics_stop(struct cw_worker *w);

#endif
