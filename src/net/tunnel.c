/* The worker's end of the resumable tunnel (see tunnel.h and docs/tunnel.md).
 *
 * Three pieces meet here: the sans-I/O session side (cw_tun_t, which owns
 * the replay buffer and the positions), the current link (cw_tunlink_t:
 * TCP [+ TLS], replaced on every reconnect), and the user's stream
 * operations.  Everything that moves bytes towards the relay ends in
 * tunnel_pump(), which pulls frames from the session while the link's write
 * queue is below its high-water mark, so memory is bounded by the replay
 * buffer plus one link queue.
 */
#include "tunnel.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cworker/buf.h"
#include "cworker/cw.h"
#include "log.h"
#include "tunlink.h"

#define DEFAULT_PING         10000
#define DEFAULT_DEAD         30000
#define DEFAULT_HANDSHAKE    10000
#define DEFAULT_BACKOFF_BASE 100
#define DEFAULT_BACKOFF_MAX  5000
#define DEFAULT_ACK_DELAY    20

/* Frames are built here and copied by the link, so one buffer serves every
 * tunnel of the process. */
static uint8_t out_buf[4 * CW_TUN_OUTPUT_MIN];

/* One name resolution; freed by its callback, which may come after the
 * attempt that started it was abandoned. */
struct tunnel_gai {
    uv_getaddrinfo_t req;
    cw_tunnel_t *t;
};

static void tunnel_pump(cw_tunnel_t *t);
static void tunnel_start_attempt(cw_tunnel_t *t);
static void tunnel_link_down(cw_tunnel_t *t, const char *why);
static void tunnel_maybe_closed(cw_tunnel_t *t);
static void tunnel_arm_timer(cw_tunnel_t *t);
static void tunnel_cancel_gai(cw_tunnel_t *t);

void cw_tunnel_options_default(cw_tunnel_options_t *o)
{
    memset(o, 0, sizeof *o);
    o->buffer_size = CW_TUN_DEFAULT_BUFFER;
    o->ping_interval = DEFAULT_PING;
    o->dead_timeout = DEFAULT_DEAD;
    o->handshake_timeout = DEFAULT_HANDSHAKE;
    o->backoff_base = DEFAULT_BACKOFF_BASE;
    o->backoff_max = DEFAULT_BACKOFF_MAX;
    o->ack_delay = DEFAULT_ACK_DELAY;
}

/* The one place the state changes. */
static void tunnel_set_state(cw_tunnel_t *t, cw_tunnel_state_t s)
{
    t->state = s;
}

static bool tunnel_closing(const cw_tunnel_t *t)
{
    return t->state == CW_TUNNEL_CLOSING || t->state == CW_TUNNEL_CLOSED;
}

/* ---- links ------------------------------------------------------------- */

static void link_on_closed(cw_tunlink_t *l)
{
    cw_tunnel_t *t = l->data;
    free(l);
    t->links_open--;
    tunnel_maybe_closed(t);
}

/* Detach the current link and close it (graceful: let queued frames go). */
static void tunnel_drop_link(cw_tunnel_t *t, bool graceful)
{
    cw_tunlink_t *l = t->link;
    if (l == NULL)
        return;
    t->link = NULL;
    t->bytes_in += l->bytes_in;
    t->bytes_out += l->bytes_out;
    cw_tunlink_close(l, graceful);
    uv_timer_stop(&t->ack_timer);
}

static void link_on_ready(cw_tunlink_t *l)
{
    cw_tunnel_t *t = l->data;
    if (l != t->link)
        return;
    int rc = cw_tun_client_link(&t->core);
    if (rc < 0) {
        tunnel_link_down(t, "session cannot start a link");
        return;
    }
    tunnel_pump(t);
}

/* Run finished write callbacks (from the done timer, or at the end of close). */
static void tunnel_run_done(cw_tunnel_t *t)
{
    while (t->done_head) {
        cw_tunnel_write_t *w = t->done_head;
        t->done_head = w->next;
        if (t->done_head == NULL)
            t->done_tail = NULL;
        w->cb(w, w->status);
    }
}

static void done_timer_cb(uv_timer_t *h)
{
    tunnel_run_done(h->data);
}

/* A write is finished: its callback runs on the next loop iteration. */
static void tunnel_write_done(cw_tunnel_t *t, cw_tunnel_write_t *w, int status)
{
    w->status = status;
    w->next = NULL;
    if (t->done_tail)
        t->done_tail->next = w;
    else
        t->done_head = w;
    t->done_tail = w;
    if (!tunnel_closing(t) && !uv_is_active((uv_handle_t *)&t->done_timer))
        uv_timer_start(&t->done_timer, done_timer_cb, 0, 0);
}

/* Every queued write is cancelled. */
static void tunnel_cancel_writes(cw_tunnel_t *t)
{
    while (t->wq_head) {
        cw_tunnel_write_t *w = t->wq_head;
        t->wq_head = w->next;
        tunnel_write_done(t, w, UV_ECANCELED);
    }
    t->wq_tail = NULL;
    t->wq_bytes = 0;
}

/* Report the first session's failure; only close is left afterwards. */
static void tunnel_open_failed(cw_tunnel_t *t, int err, const char *why)
{
    snprintf(t->why, sizeof t->why, "%s", why);
    tunnel_drop_link(t, true);
    tunnel_cancel_gai(t);
    uv_timer_stop(&t->timer);
    tunnel_set_state(t, CW_TUNNEL_LOST);
    t->cb->on_open(t, err, t->why);
}

/* The session is gone; only close is left. */
static void tunnel_lost(cw_tunnel_t *t, int err, const char *why)
{
    if (t->state == CW_TUNNEL_LOST || tunnel_closing(t))
        return;
    if (!t->ever_open) {
        tunnel_open_failed(t, err, why);
        return;
    }
    snprintf(t->why, sizeof t->why, "%s", why);
    tunnel_drop_link(t, true);
    uv_timer_stop(&t->timer);
    tunnel_set_state(t, CW_TUNNEL_LOST);
    cw_tun_abort(&t->core, CW_TUN_R_CLOSED, NULL); /* no link: just drops the buffer */
    /* writes still queued will never be delivered */
    tunnel_cancel_writes(t);
    if (t->shutdown_cb) {
        cw_tunnel_shutdown_cb cb = t->shutdown_cb;
        t->shutdown_cb = NULL;
        cb(t, err);
        if (tunnel_closing(t))
            return;
    }
    t->cb->on_lost(t, err, t->why);
}

static void backoff_cb(uv_timer_t *h)
{
    tunnel_start_attempt(h->data);
}

/* An attempt failed (connect, TLS, handshake timeout, link lost before WELCOME). */
static void tunnel_attempt_failed(cw_tunnel_t *t, int err, const char *why)
{
    if (!t->ever_open) {
        tunnel_open_failed(t, err, why);
        return;
    }
    tunnel_drop_link(t, false);
    tunnel_cancel_gai(t);
    cw_tun_link_lost(&t->core);
    snprintf(t->why, sizeof t->why, "%s", why);
    uint64_t now = uv_now(t->loop);
    uint64_t limit = t->opt.max_outage ? t->opt.max_outage : (uint64_t)t->core.window * 1000;
    if (now - t->outage_start >= limit) {
        char w[300];
        snprintf(w, sizeof w, "relay unreachable for %.1f s (resume window %.0f s; last error: %s)",
                 (double)(now - t->outage_start) / 1000.0, (double)limit / 1000.0, why);
        tunnel_lost(t, UV_ETIMEDOUT, w);
        return;
    }
    /* exponential backoff with full jitter: uniform in (0, min(max, base * 2^n)] */
    uint64_t cap = t->opt.backoff_base;
    for (unsigned i = 0; i < t->attempts && cap < t->opt.backoff_max; i++)
        cap *= 2;
    if (cap > t->opt.backoff_max)
        cap = t->opt.backoff_max;
    uint32_t r = 0;
    cw_random_bytes(&r, sizeof r);
    uint64_t delay = 1 + (uint64_t)r % cap;
    if (now + delay > t->outage_start + limit)
        delay = t->outage_start + limit - now;
    t->attempts++;
    cw_debug("tunnel: attempt %u to resume failed (%s); next in %llu ms", t->attempts, why,
             (unsigned long long)delay);
    tunnel_set_state(t, CW_TUNNEL_BACKOFF);
    uv_timer_start(&t->timer, backoff_cb, delay, 0);
}

/* The link of an open session broke: resume. */
static void tunnel_link_down(cw_tunnel_t *t, const char *why)
{
    if (t->state != CW_TUNNEL_OPEN) {
        tunnel_attempt_failed(t, UV_ECONNRESET, why);
        return;
    }
    tunnel_drop_link(t, false);
    cw_tun_link_lost(&t->core);
    t->outage_start = uv_now(t->loop);
    t->attempts = 0;
    snprintf(t->why, sizeof t->why, "%s", why);
    cw_info("tunnel: link to the relay lost (%s); resuming", why);
    tunnel_set_state(t, CW_TUNNEL_BACKOFF);
    if (t->cb->on_link)
        t->cb->on_link(t, false, t->why);
    if (t->state != CW_TUNNEL_BACKOFF)
        return;
    tunnel_attempt_failed(t, UV_ECONNRESET, why); /* schedules the first retry */
}

static void link_on_error(cw_tunlink_t *l, int err, const char *why)
{
    cw_tunnel_t *t = l->data;
    if (l != t->link)
        return;
    char w[300];
    snprintf(w, sizeof w, "%s", why);
    if (t->state == CW_TUNNEL_OPEN)
        tunnel_link_down(t, w);
    else
        tunnel_attempt_failed(t, err, w);
}

static void link_on_drain(cw_tunlink_t *l)
{
    cw_tunnel_t *t = l->data;
    if (l == t->link)
        tunnel_pump(t);
}

/* The relay has every byte and our FIN: tell the shutdown's caller. */
static void tunnel_check_shutdown(cw_tunnel_t *t)
{
    if (t->shutdown_cb && t->core.fin_written && t->core.acked == t->core.end + 1) {
        cw_tunnel_shutdown_cb cb = t->shutdown_cb;
        t->shutdown_cb = NULL;
        cb(t, 0);
    }
}

static void link_on_data(cw_tunlink_t *l, uint8_t *data, size_t len)
{
    cw_tunnel_t *t = l->data;
    if (l != t->link || tunnel_closing(t))
        return;
    int rc = cw_tun_feed(&t->core, data, len);
    if (tunnel_closing(t) || t->state == CW_TUNNEL_LOST)
        return;
    if (rc < 0 && rc != CW_ECLOSED) {
        tunnel_pump(t); /* the ABORT */
        tunnel_lost(t, rc, cw_tun_close_text(&t->core));
        return;
    }
    tunnel_check_shutdown(t);
    if (tunnel_closing(t))
        return;
    tunnel_pump(t);
}

static const cw_tunlink_callbacks_t link_callbacks = {
    .on_ready = link_on_ready,
    .on_data = link_on_data,
    .on_drain = link_on_drain,
    .on_error = link_on_error,
    .on_closed = link_on_closed,
};

/* ---- session callbacks ------------------------------------------------ */

/* Deliver held bytes, then EOF, while the user reads. */
static void tunnel_deliver_held(cw_tunnel_t *t)
{
    while (t->reading && t->held.len > 0 && !tunnel_closing(t)) {
        /* hand out a private copy: the user may stop reading in the middle */
        size_t n;
        uint8_t *p = cw_buf_steal(&t->held, &n);
        t->cb->on_read(t, p, n);
        free(p);
    }
    if (t->reading && t->held.len == 0 && t->eof_pending && !tunnel_closing(t)) {
        t->eof_pending = false;
        t->cb->on_eof(t);
    }
}

static int core_on_data(void *ud, uint8_t *data, size_t len)
{
    cw_tunnel_t *t = ud;
    if (tunnel_closing(t))
        return 0;
    if (t->reading && t->held.len == 0) {
        t->cb->on_read(t, data, len);
        return 0;
    }
    /* the user paused (maybe inside on_read just now): keep the bytes; the
     * link is paused, so this is at most the rest of one read */
    if (cw_buf_append(&t->held, data, len) < 0) {
        cw_tun_abort(&t->core, CW_TUN_R_INTERNAL, "out of memory");
        return -ENOMEM;
    }
    if (t->link)
        cw_tunlink_pause(t->link, true);
    return 0;
}

static void core_on_fin(void *ud)
{
    cw_tunnel_t *t = ud;
    t->eof_pending = true;
    tunnel_deliver_held(t);
}

/* Take queued writes into the replay buffer as far as it has room. */
static void tunnel_drain_writes(cw_tunnel_t *t)
{
    while (t->wq_head && !tunnel_closing(t)) {
        cw_tunnel_write_t *w = t->wq_head;
        while (w->left > 0) {
            uv_buf_t *b = &w->bufs[w->idx];
            size_t k = cw_tun_write(&t->core, (const uint8_t *)b->base + w->off, b->len - w->off);
            w->off += k;
            w->left -= k;
            t->wq_bytes -= k;
            if (w->off == b->len && w->idx + 1 < w->nbufs) {
                w->idx++;
                w->off = 0;
            } else if (w->off < b->len) {
                break; /* full: on_room continues */
            }
        }
        if (w->left > 0)
            return;
        t->wq_head = w->next;
        if (t->wq_head == NULL)
            t->wq_tail = NULL;
        tunnel_write_done(t, w, 0);
    }
    if (t->wq_head == NULL && t->shutdown_pending && !t->core.fin_written && !tunnel_closing(t))
        cw_tun_write_fin(&t->core);
}

static void core_on_room(void *ud)
{
    cw_tunnel_t *t = ud;
    tunnel_drain_writes(t);
}

static void core_on_open(void *ud, bool resumed)
{
    cw_tunnel_t *t = ud;
    uint64_t now = uv_now(t->loop);
    tunnel_set_state(t, CW_TUNNEL_OPEN);
    t->attempts = 0;
    t->last_ping = now;
    tunnel_arm_timer(t);
    if (!resumed) {
        t->ever_open = true;
        t->cb->on_open(t, 0, NULL);
        return;
    }
    t->resumes++;
    t->last_down_ms = now - t->outage_start;
    cw_info("tunnel: session resumed after %.1f s (%zu bytes unacknowledged)",
            (double)t->last_down_ms / 1000.0, cw_tun_buffered(&t->core));
    if (t->cb->on_link)
        t->cb->on_link(t, true, NULL);
}

static void core_on_closed(void *ud, int reason, const char *text)
{
    cw_tunnel_t *t = ud;
    if (tunnel_closing(t))
        return;
    if (reason == CW_TUN_R_ENDED) {
        /* complete: both streams ended and were acknowledged; or our resume was refused as
         * ENDED because the relay's last ACK was lost, which it only says once it has our
         * FIN: either way every byte of ours arrived */
        if (t->core.fin_written)
            t->core.acked = t->core.end + 1;
        tunnel_check_shutdown(t);
        if (tunnel_closing(t))
            return;
        tunnel_pump(t); /* our ACK of the relay's FIN */
        tunnel_drop_link(t, true);
        uv_timer_stop(&t->timer);
        tunnel_set_state(t, CW_TUNNEL_LOST);
        snprintf(t->why, sizeof t->why, "session complete");
        return;
    }
    char why[300];
    snprintf(why, sizeof why, "relay %s: %s%s%s",
             t->core.abort_due ? "protocol violation" : "refused or ended the session",
             cw_tun_reason_str(reason), text[0] ? ": " : "", text);
    if (t->core.abort_due)
        tunnel_pump(t); /* the ABORT for the relay */
    /* a new session refused because the master is down: like a failed connect */
    tunnel_lost(t, reason == CW_TUN_R_PROTOCOL ? CW_EPROTO : UV_ECONNRESET, why);
}

static const cw_tun_callbacks_t core_callbacks = {
    .on_data = core_on_data,
    .on_fin = core_on_fin,
    .on_room = core_on_room,
    .on_open = core_on_open,
    .on_closed = core_on_closed,
};

/* ---- output and timers ------------------------------------------------ */

static void ack_timer_cb(uv_timer_t *h)
{
    cw_tunnel_t *t = h->data;
    cw_tun_flush_ack(&t->core);
    tunnel_pump(t);
}

static void tunnel_pump(cw_tunnel_t *t)
{
    cw_tunlink_t *l = t->link;
    if (l == NULL || l->closing || l->failed || (l->tls && !l->tls_up))
        return;
    while (cw_tunlink_writable(l) && cw_tun_want_output(&t->core)) {
        size_t n = cw_tun_output(&t->core, out_buf, sizeof out_buf);
        if (n == 0)
            break;
        if (cw_tunlink_send(l, out_buf, n) < 0) {
            char w[300];
            snprintf(w, sizeof w, "%s", l->why ? l->why : "write failed");
            if (t->state == CW_TUNNEL_OPEN)
                tunnel_link_down(t, w);
            else if (!tunnel_closing(t) && t->state != CW_TUNNEL_LOST)
                tunnel_attempt_failed(t, l->err, w);
            return;
        }
    }
    if (cw_tun_ack_pending(&t->core) && !uv_is_active((uv_handle_t *)&t->ack_timer))
        uv_timer_start(&t->ack_timer, ack_timer_cb, t->opt.ack_delay, 0);
}

/* OPEN: the liveness tick.  CONNECTING: the handshake deadline. */
static void timer_cb(uv_timer_t *h)
{
    cw_tunnel_t *t = h->data;
    uint64_t now = uv_now(t->loop);
    if (t->state == CW_TUNNEL_CONNECTING) {
        tunnel_attempt_failed(t, UV_ETIMEDOUT, "handshake with the relay timed out");
        return;
    }
    if (t->state != CW_TUNNEL_OPEN || t->link == NULL)
        return;
    cw_tunlink_t *l = t->link;
    if (l->paused)
        return; /* our own silence */
    uint64_t quiet = now - l->last_rx;
    if (t->opt.dead_timeout && quiet >= t->opt.dead_timeout) {
        char why[96];
        snprintf(why, sizeof why, "link dead: nothing received for %.1f s", (double)quiet / 1000.0);
        tunnel_link_down(t, why);
        return;
    }
    if (t->opt.ping_interval && quiet >= t->opt.ping_interval &&
        now - t->last_ping >= t->opt.ping_interval) {
        t->last_ping = now;
        cw_tun_ping(&t->core, ++t->ping_seq);
        tunnel_pump(t);
    }
}

static void tunnel_arm_timer(cw_tunnel_t *t)
{
    uv_timer_stop(&t->timer);
    if (t->state == CW_TUNNEL_CONNECTING) {
        uv_timer_start(&t->timer, timer_cb, t->opt.handshake_timeout, 0);
    } else if (t->state == CW_TUNNEL_OPEN) {
        uint64_t p = t->opt.ping_interval;
        if (t->opt.dead_timeout && (p == 0 || t->opt.dead_timeout < p))
            p = t->opt.dead_timeout;
        if (p) {
            p /= 4;
            if (p < 20)
                p = 20;
            uv_timer_start(&t->timer, timer_cb, p, p);
        }
    }
}

/* ---- attempts ----------------------------------------------------------- */

static void on_connect(uv_connect_t *req, int status)
{
    cw_tunlink_t *l = req->data;
    cw_tunnel_t *t = l->data;
    if (l != t->link || l->closing)
        return;
    if (status < 0) {
        char why[200];
        snprintf(why, sizeof why, "cannot connect to the relay %s:%d: %s", t->host, t->port,
                 uv_strerror(status));
        tunnel_attempt_failed(t, status, why);
        return;
    }
    int rc = cw_tunlink_start(l, t->opt.tls_ctx, false, t->tls_host, t->opt.dead_timeout);
    if (rc < 0 && l == t->link && !l->closing) {
        tunnel_attempt_failed(t, rc, rc == CW_ETLS ? cw_tunlink_tls_error(l) : cw_strerror(rc));
    }
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    struct tunnel_gai *g = (struct tunnel_gai *)req;
    cw_tunnel_t *t = g->t;
    bool current = t->gai == g;
    free(g);
    t->gai_pending--;
    if (current)
        t->gai = NULL;
    if (!current || tunnel_closing(t) || t->state != CW_TUNNEL_CONNECTING) {
        uv_freeaddrinfo(res);
        tunnel_maybe_closed(t);
        return;
    }
    if (status < 0 || res == NULL) {
        char why[200];
        snprintf(why, sizeof why, "cannot resolve the relay's host '%s': %s", t->host,
                 uv_strerror(status));
        uv_freeaddrinfo(res);
        tunnel_attempt_failed(t, status < 0 ? status : UV_EAI_NONAME, why);
        return;
    }
    unsigned n = 0;
    for (struct addrinfo *a = res; a; a = a->ai_next)
        n++;
    struct addrinfo *a = res;
    for (unsigned i = t->addr_rotor++ % n; i > 0; i--)
        a = a->ai_next;
    cw_tunlink_t *l = malloc(sizeof *l);
    if (l == NULL) {
        uv_freeaddrinfo(res);
        tunnel_attempt_failed(t, -ENOMEM, "out of memory");
        return;
    }
    cw_tunlink_init(t->loop, l, &link_callbacks, t);
    t->links_open++;
    t->links++;
    t->link = l;
    int rc = uv_tcp_connect(&l->creq, cw_tunlink_tcp(l), a->ai_addr, on_connect);
    uv_freeaddrinfo(res);
    if (rc < 0) {
        char why[200];
        snprintf(why, sizeof why, "cannot connect to the relay: %s", uv_strerror(rc));
        tunnel_attempt_failed(t, rc, why);
    }
}

/* Forget the resolution in flight (its callback frees it later). */
static void tunnel_cancel_gai(cw_tunnel_t *t)
{
    if (t->gai) {
        uv_cancel((uv_req_t *)&t->gai->req);
        t->gai = NULL;
    }
}

static void tunnel_start_attempt(cw_tunnel_t *t)
{
    if (tunnel_closing(t) || t->state == CW_TUNNEL_LOST)
        return;
    tunnel_cancel_gai(t);
    tunnel_set_state(t, CW_TUNNEL_CONNECTING);
    tunnel_arm_timer(t);
    struct addrinfo hints;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    char port[16];
    snprintf(port, sizeof port, "%d", t->port);
    struct tunnel_gai *g = malloc(sizeof *g);
    int rc = g ? 0 : -ENOMEM;
    if (g) {
        g->t = t;
        rc = uv_getaddrinfo(t->loop, &g->req, on_resolved, t->host, port, &hints);
        if (rc < 0)
            free(g);
    }
    if (rc < 0) {
        char why[200];
        snprintf(why, sizeof why, "cannot resolve the relay's host '%s': %s", t->host,
                 uv_strerror(rc));
        tunnel_attempt_failed(t, rc, why);
        return;
    }
    t->gai = g;
    t->gai_pending++;
}

/* ---- public API ---------------------------------------------------------- */

int cw_tunnel_init(uv_loop_t *loop, cw_tunnel_t *t, const cw_tunnel_options_t *o,
                   const cw_tunnel_callbacks_t *cb)
{
    memset(t, 0, sizeof *t);
    t->loop = loop;
    cw_tunnel_options_default(&t->opt);
    if (o) {
        t->opt = *o;
        cw_tunnel_options_t d;
        cw_tunnel_options_default(&d);
        if (!t->opt.buffer_size)
            t->opt.buffer_size = d.buffer_size;
        if (!t->opt.ping_interval)
            t->opt.ping_interval = d.ping_interval;
        if (!t->opt.dead_timeout)
            t->opt.dead_timeout = d.dead_timeout;
        if (!t->opt.handshake_timeout)
            t->opt.handshake_timeout = d.handshake_timeout;
        if (!t->opt.backoff_base)
            t->opt.backoff_base = d.backoff_base;
        if (!t->opt.backoff_max)
            t->opt.backoff_max = d.backoff_max;
        if (!t->opt.ack_delay)
            t->opt.ack_delay = d.ack_delay;
    }
    t->opt.tls_host = NULL; /* copied in connect */
    t->cb = cb;
    t->reading = true;
    cw_tun_init(&t->core, CW_TUN_CLIENT, t->opt.buffer_size, &core_callbacks, t);
    uv_timer_init(loop, &t->timer);
    uv_timer_init(loop, &t->ack_timer);
    uv_timer_init(loop, &t->done_timer);
    t->timer.data = t->ack_timer.data = t->done_timer.data = t;
    t->handles_open = 3;
    tunnel_set_state(t, CW_TUNNEL_INIT);
    if (o && o->tls_host && (t->tls_host = strdup(o->tls_host)) == NULL)
        return -ENOMEM;
    return 0;
}

int cw_tunnel_connect(cw_tunnel_t *t, const char *host, int port)
{
    if (t->state != CW_TUNNEL_INIT)
        return UV_EALREADY;
    t->host = strdup(host);
    if (t->host == NULL)
        return -ENOMEM;
    if (t->tls_host == NULL && (t->tls_host = strdup(host)) == NULL)
        return -ENOMEM;
    t->port = port;
    t->outage_start = uv_now(t->loop);
    tunnel_start_attempt(t);
    return 0;
}

int cw_tunnel_write(cw_tunnel_write_t *req, cw_tunnel_t *t, const uv_buf_t bufs[], unsigned nbufs,
                    cw_tunnel_write_cb cb)
{
    if (nbufs == 0 || nbufs > CW_TUNNEL_MAX_BUFS || cb == NULL)
        return UV_EINVAL;
    if (tunnel_closing(t) || t->state == CW_TUNNEL_LOST)
        return UV_ECANCELED;
    if (t->shutdown_pending)
        return UV_EPIPE;
    req->t = t;
    req->next = NULL;
    req->nbufs = nbufs;
    req->idx = 0;
    req->off = 0;
    req->left = 0;
    req->cb = cb;
    for (unsigned i = 0; i < nbufs; i++) {
        req->bufs[i] = bufs[i];
        req->left += bufs[i].len;
    }
    /* skip leading empty buffers so the drain loop always makes progress */
    while (req->idx + 1 < req->nbufs && req->bufs[req->idx].len == 0)
        req->idx++;
    if (t->wq_tail)
        t->wq_tail->next = req;
    else
        t->wq_head = req;
    t->wq_tail = req;
    t->wq_bytes += req->left;
    tunnel_drain_writes(t);
    tunnel_pump(t);
    return 0;
}

size_t cw_tunnel_write_queue_size(const cw_tunnel_t *t)
{
    return t->wq_bytes;
}

size_t cw_tunnel_unacked(const cw_tunnel_t *t)
{
    return cw_tun_buffered(&t->core);
}

int cw_tunnel_shutdown(cw_tunnel_t *t, cw_tunnel_shutdown_cb cb)
{
    if (tunnel_closing(t) || t->state == CW_TUNNEL_LOST)
        return UV_ECANCELED;
    if (t->shutdown_pending)
        return UV_EALREADY;
    t->shutdown_pending = true;
    t->shutdown_cb = cb;
    tunnel_drain_writes(t);
    tunnel_pump(t);
    return 0;
}

void cw_tunnel_read_stop(cw_tunnel_t *t)
{
    t->reading = false;
    if (t->link)
        cw_tunlink_pause(t->link, true);
}

void cw_tunnel_read_start(cw_tunnel_t *t)
{
    if (t->reading || tunnel_closing(t))
        return;
    t->reading = true;
    tunnel_deliver_held(t);
    if (t->reading && t->link && !tunnel_closing(t))
        cw_tunlink_pause(t->link, false);
}

/* Every handle and link is closed: the end. */
static void tunnel_maybe_closed(cw_tunnel_t *t)
{
    if (t->state != CW_TUNNEL_CLOSING || t->handles_open > 0 || t->links_open > 0 ||
        t->gai_pending > 0)
        return;
    tunnel_set_state(t, CW_TUNNEL_CLOSED);
    /* like libuv: cancelled requests' callbacks run before the close callback */
    tunnel_run_done(t);
    if (t->shutdown_cb) {
        cw_tunnel_shutdown_cb cb = t->shutdown_cb;
        t->shutdown_cb = NULL;
        cb(t, UV_ECANCELED);
    }
    cw_tun_free(&t->core);
    cw_buf_free(&t->held);
    free(t->host);
    free(t->tls_host);
    t->host = t->tls_host = NULL;
    t->cb->on_closed(t);
}

static void timer_closed(uv_handle_t *h)
{
    cw_tunnel_t *t = h->data;
    t->handles_open--;
    tunnel_maybe_closed(t);
}

void cw_tunnel_close(cw_tunnel_t *t)
{
    if (tunnel_closing(t))
        return;
    bool linked = t->link && cw_tun_state(&t->core) != CW_TUN_ST_CLOSED &&
                  cw_tun_state(&t->core) != CW_TUN_ST_DETACHED;
    cw_tun_abort(&t->core, CW_TUN_R_CLOSED, "closed by the worker");
    if (linked && !t->link->closing && !t->link->failed) {
        /* the ABORT goes out whatever the queue holds: the relay then closes the master
         * connection now instead of keeping it for the resume window */
        size_t n = cw_tun_output(&t->core, out_buf, sizeof out_buf);
        if (n)
            cw_tunlink_send(t->link, out_buf, n);
    }
    tunnel_set_state(t, CW_TUNNEL_CLOSING);
    tunnel_drop_link(t, linked);
    tunnel_cancel_gai(t);
    tunnel_cancel_writes(t);
    uv_close((uv_handle_t *)&t->timer, timer_closed);
    uv_close((uv_handle_t *)&t->ack_timer, timer_closed);
    uv_close((uv_handle_t *)&t->done_timer, timer_closed);
}

cw_tunnel_state_t cw_tunnel_state(const cw_tunnel_t *t)
{
    return t->state;
}

bool cw_tunnel_link_up(const cw_tunnel_t *t)
{
    return t->state == CW_TUNNEL_OPEN;
}

const char *cw_tunnel_error(const cw_tunnel_t *t)
{
    return t->why;
}
