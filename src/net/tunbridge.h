/* A resumable tunnel (tunnel.h) presented as a socket: the worker's links
 * (conn.c for msgpack, tunlink.c for PB) read and write a uv_stream_t and
 * know nothing of the relay.  The bridge opens a cw_tunnel_t to the relay;
 * once the first session is up it makes a socketpair, hands one end to the
 * user (who opens it as its link's stream) and copies bytes between the other
 * end and the tunnel, both ways, with backpressure on each side:
 *
 *   link --- socket | socketpair | bridge's end --- cw_tunnel_t --- relay --- master
 *
 *   user -> relay: the bridge reads its end only while the tunnel has taken
 *     every byte of the last read into its replay buffer; when that buffer is
 *     full (an outage, a slow master) the socketpair fills, then the link's own
 *     send queue, and the link's high-water mark stops the commands' producers.
 *   relay -> user: the bridge stops reading the tunnel while more than
 *     CW_TUNBRIDGE_HIGH bytes wait to be written to its end.
 *
 * Outages of the tunnel's link are reported (on_link) so the user can hold
 * its own liveness timers; only the loss of the session (on_lost) or its end
 * is seen on the socket: the bridge closes its end, the user reads EOF.
 *
 * Lifecycle: cw_tunbridge_new(), cw_tunbridge_connect(); on_open once (the
 * fd on success: the user owns it from then on); on_link any number of
 * times; on_lost at most once.  cw_tunbridge_release() is the single way out
 * (also after a failed open or a loss): no callback fires after it; the
 * bridge then lets the user's last bytes and end of stream (FIN) reach the
 * relay, waits for the relay's end of stream for at most
 * CW_TUNBRIDGE_LINGER_MS, closes the tunnel (an ABORT if the session has not
 * completed: the relay then closes the master connection at once) and frees
 * itself once every handle is closed.
 */
#ifndef CW_NET_TUNBRIDGE_H
#define CW_NET_TUNBRIDGE_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "tunnel.h"

typedef struct cw_tunbridge cw_tunbridge_t;

typedef struct cw_tunbridge_callbacks {
    /* The first session is up (status 0: fd is the user's end of the
     * socketpair, close-on-exec, owned by the user), or could not
     * be opened (status < 0, why; fd -1). */
    void (*on_open)(cw_tunbridge_t *b, int status, const char *why, int fd);
    /* The tunnel's link went down and the session is resuming (up = false),
     * or it resumed (up = true, why = NULL). */
    void (*on_link)(cw_tunbridge_t *b, bool up, const char *why);
    /* The session is lost for good (refused, expired, aborted): the bridge
     * closes its end of the socketpair after this returns. */
    void (*on_lost)(cw_tunbridge_t *b, int err, const char *why);
} cw_tunbridge_callbacks_t;

/* relay -> user bytes waiting for the socketpair above which the tunnel is
 * not read; reading starts again below LOW */
#define CW_TUNBRIDGE_HIGH (256u << 10)
#define CW_TUNBRIDGE_LOW  (64u << 10)
/* after release: how long the relay's end of stream is waited for */
#define CW_TUNBRIDGE_LINGER_MS 2000

/* A new bridge (heap; it frees itself after cw_tunbridge_release).  o may
 * be NULL (the tunnel's defaults); cb must outlive the bridge.  NULL when out
 * of memory. */
cw_tunbridge_t *cw_tunbridge_new(uv_loop_t *loop, const cw_tunnel_options_t *o,
                                 const cw_tunbridge_callbacks_t *cb, void *data);
/* Connect to the relay at host:port; on_open reports.  0 or a negative code
 * (then no on_open). */
int cw_tunbridge_connect(cw_tunbridge_t *b, const char *host, int port);
/* The user is done (idempotent); see the lifecycle above. */
void cw_tunbridge_release(cw_tunbridge_t *b);
/* The user's pointer given to cw_tunbridge_new. */
void *cw_tunbridge_data(const cw_tunbridge_t *b);
/* The tunnel, for its statistics (resumes, last_down_ms, bytes). */
const cw_tunnel_t *cw_tunbridge_tunnel(const cw_tunbridge_t *b);

#endif
