/* Loop-level tests of the tunnel: the worker's client (src/net/tunnel.c) and the relay
 * (src/relay/relay.c, session.c) on one real libuv loop, with a stand-in master and a fault
 * proxy between client and relay, everything on 127.0.0.1.
 *
 * Every test checks what a user would notice: the bytes on both ends (against a deterministic
 * stream, so a gap, a duplicate or a corruption is found at its position), how many TCP
 * connections the master saw (one: the outages are invisible to it), the callbacks the tunnel's
 * user got, and that the loop closes cleanly (uv_loop_close() == 0, every handle closed). */
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "cworker/cw.h"
#include "log.h"
#include "loop_util.h"
#include "relay.h"
#include "tls.h"
#include "tunbridge.h"
#include "tunlink.h"
#include "tunnel.h"

typedef struct world world_t;

/* The tunnel's user: writes stream 1, checks what comes back. */
typedef struct drv {
    world_t *w;
    cw_tunnel_t t;
    uint64_t to_send, sent;
    int inflight;
    unsigned rx_salt; /* 1: the echo of our stream; 2: the master's source stream */
    uint64_t rx, bad_at;
    uint64_t seed;
    bool shutdown_at_end; /* FIN once everything is written */
    bool shutdown_done;
    int shutdown_status;
    int opens, open_status, eofs, losts, lost_err, link_downs, link_ups, closed;
    char why[300];
    bool finish_on_close;
    size_t max_unacked, max_wq;
    bool produce_paused;
    bool read_stop_on_open;
} drv_t;

struct world {
    uv_loop_t loop;
    relay_t *relay;
    relay_options_t ro;
    int relay_port;
    test_master_t master;
    test_proxy_t proxy;
    drv_t d;
    cw_tunnel_options_t to;
    uv_timer_t watchdog, step;
    void (*on_step)(world_t *w);
    int stage;
    int stage_ups;
    uint64_t stage_at;
    bool finished;
    bool cuts_planned;
    relay_t *old_relay;
    char tmpdir[64];
    cw_tls_ctx_t *client_tls;
};

static uint64_t rnd(uint64_t *s)
{
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 0x2545F4914F6CDD1Du;
}

/* ---- the driver ----------------------------------------------------------- */

typedef struct dw {
    cw_tunnel_write_t req;
    uv_buf_t buf;
    uint8_t data[];
} dw_t;

static void drv_produce(drv_t *d);

static void drv_maybe_close(drv_t *d)
{
    if (d->eofs && (!d->shutdown_at_end || d->shutdown_done))
        cw_tunnel_close(&d->t);
}

static void drv_shutdown_cb(cw_tunnel_t *t, int status)
{
    drv_t *d = t->data;
    d->shutdown_done = true;
    d->shutdown_status = status;
    if (status == 0)
        drv_maybe_close(d);
}

static void drv_write_cb(cw_tunnel_write_t *req, int status)
{
    dw_t *w = (dw_t *)req;
    drv_t *d = req->data;
    free(w);
    d->inflight--;
    if (status == 0)
        drv_produce(d);
}

static void drv_produce(drv_t *d)
{
    cw_tunnel_state_t st = cw_tunnel_state(&d->t);
    if (st == CW_TUNNEL_LOST || st >= CW_TUNNEL_CLOSING || d->produce_paused)
        return;
    while (d->sent < d->to_send && d->inflight < 8 &&
           cw_tunnel_write_queue_size(&d->t) < (256u << 10)) {
        size_t n = (size_t)(rnd(&d->seed) % 65536) + 1;
        if (n > d->to_send - d->sent)
            n = (size_t)(d->to_send - d->sent);
        dw_t *w = malloc(sizeof *w + n);
        for (size_t i = 0; i < n; i++)
            w->data[i] = tl_byte(d->sent + i, 1);
        w->buf = uv_buf_init((char *)w->data, (unsigned)n);
        w->req.data = d;
        assert_int_equal(cw_tunnel_write(&w->req, &d->t, &w->buf, 1, drv_write_cb), 0);
        d->sent += n;
        d->inflight++;
    }
    size_t wq = cw_tunnel_write_queue_size(&d->t), un = cw_tunnel_unacked(&d->t);
    if (wq > d->max_wq)
        d->max_wq = wq;
    if (un > d->max_unacked)
        d->max_unacked = un;
    if (d->sent == d->to_send && d->shutdown_at_end && d->inflight == 0 && !d->shutdown_done &&
        !d->t.shutdown_pending)
        assert_int_equal(cw_tunnel_shutdown(&d->t, drv_shutdown_cb), 0);
}

static void drv_on_open(cw_tunnel_t *t, int status, const char *why)
{
    drv_t *d = t->data;
    world_t *w = d->w;
    d->opens++;
    d->open_status = status;
    if (status < 0) {
        snprintf(d->why, sizeof d->why, "%s", why);
        cw_tunnel_close(t);
        return;
    }
    if (w->cuts_planned) {
        w->cuts_planned = false;
        w->proxy.cut_at = w->proxy.forwarded + 1 + w->proxy.seed % w->proxy.cut_gap_max;
    }
    if (d->read_stop_on_open)
        cw_tunnel_read_stop(t);
    drv_produce(d);
}

static void drv_on_read(cw_tunnel_t *t, uint8_t *data, size_t len)
{
    drv_t *d = t->data;
    assert_true(len > 0);
    uint64_t bad = tl_check(data, len, d->rx, d->rx_salt);
    if (bad != UINT64_MAX && d->bad_at == UINT64_MAX)
        d->bad_at = bad;
    d->rx += len;
}

static void drv_on_eof(cw_tunnel_t *t)
{
    drv_t *d = t->data;
    d->eofs++;
    drv_maybe_close(d);
}

static void drv_on_lost(cw_tunnel_t *t, int err, const char *why)
{
    drv_t *d = t->data;
    d->losts++;
    d->lost_err = err;
    snprintf(d->why, sizeof d->why, "%s", why);
    cw_tunnel_close(t);
}

static void drv_on_link(cw_tunnel_t *t, bool up, const char *why)
{
    drv_t *d = t->data;
    if (up)
        d->link_ups++;
    else
        d->link_downs++;
}

static void world_finish(world_t *w);

static void drv_on_closed(cw_tunnel_t *t)
{
    drv_t *d = t->data;
    d->closed++;
    if (d->finish_on_close)
        world_finish(d->w);
}

static const cw_tunnel_callbacks_t drv_callbacks = {
    .on_open = drv_on_open,
    .on_read = drv_on_read,
    .on_eof = drv_on_eof,
    .on_lost = drv_on_lost,
    .on_link = drv_on_link,
    .on_closed = drv_on_closed,
};

/* ---- the world ------------------------------------------------------------ */

static void watchdog_cb(uv_timer_t *h)
{
    world_t *w = h->data;
    fail_msg("test timed out (stage %d, rx %llu of %llu, sent %llu, tunnel state %d, why '%s')",
             w->stage, (unsigned long long)w->d.rx, (unsigned long long)w->d.to_send,
             (unsigned long long)w->d.sent, cw_tunnel_state(&w->d.t), cw_tunnel_error(&w->d.t));
}

static void step_cb(uv_timer_t *h)
{
    world_t *w = h->data;
    if (w->on_step && !w->finished)
        w->on_step(w);
}

static int listener_port(uv_tcp_t *t)
{
    struct sockaddr_in a;
    int len = sizeof a;
    assert_int_equal(uv_tcp_getsockname(t, (struct sockaddr *)&a, &len), 0);
    return ntohs(a.sin_port);
}

/* Start the relay (its master: the stand-in, or `master_port` when non-zero). */
static void world_relay(world_t *w, int listen_port, int master_port)
{
    char listen[64], master[64];
    snprintf(listen, sizeof listen, "127.0.0.1:%d", listen_port);
    snprintf(master, sizeof master, "127.0.0.1:%d", master_port ? master_port : w->master.port);
    w->ro.listen = strdup(listen);
    w->ro.master = strdup(master);
    w->relay = calloc(1, sizeof *w->relay);
    assert_int_equal(relay_start(w->relay, &w->loop, &w->ro), 0);
    w->relay_port = listener_port(&w->relay->listener);
}

static void world_free_relay(world_t *w)
{
    free(w->ro.listen);
    free(w->ro.master);
    free(w->relay);
    w->relay = NULL;
}

static void world_init(world_t *w, tm_mode_t mode)
{
    memset(w, 0, sizeof *w);
    cw_log_setup("looptest", getenv("TL_VERBOSE") ? CW_LOG_DEBUG : CW_LOG_WARN, CW_LOG_TEXT);
    assert_int_equal(uv_loop_init(&w->loop), 0);
    assert_int_equal(tm_start(&w->master, &w->loop, mode), 0);
    w->ro.resume_window = 600;
    w->ro.buffer_size = 256 << 10;
    w->ro.dead_timeout = 3000;
    w->ro.max_sessions = 100;
    cw_tunnel_options_default(&w->to);
    w->to.buffer_size = 256 << 10;
    w->to.dead_timeout = 3000;
    w->to.ping_interval = 1000;
    w->to.backoff_base = 20;
    w->to.backoff_max = 200;
    w->d.w = w;
    w->d.bad_at = UINT64_MAX;
    w->d.rx_salt = mode == TM_SOURCE ? 2 : 1;
    w->d.seed = 0x1234567;
    w->d.finish_on_close = true;
    uv_timer_init(&w->loop, &w->watchdog);
    uv_timer_init(&w->loop, &w->step);
    w->watchdog.data = w->step.data = w;
    uv_timer_start(&w->watchdog, watchdog_cb, 60000, 0);
    uv_timer_start(&w->step, step_cb, 10, 10);
}

/* Connect the driver's tunnel through the proxy (or straight to the relay). */
static void world_connect(world_t *w, bool via_proxy)
{
    if (via_proxy)
        assert_int_equal(tp_start(&w->proxy, &w->loop, w->relay_port), 0);
    assert_int_equal(cw_tunnel_init(&w->loop, &w->d.t, &w->to, &drv_callbacks), 0);
    w->d.t.data = &w->d;
    assert_int_equal(
        cw_tunnel_connect(&w->d.t, "127.0.0.1", via_proxy ? w->proxy.port : w->relay_port), 0);
}

static void world_finish(world_t *w)
{
    if (w->finished)
        return;
    w->finished = true;
    if (w->relay)
        relay_stop(w->relay);
    tm_stop(&w->master);
    if (w->proxy.loop)
        tp_stop(&w->proxy);
    uv_close((uv_handle_t *)&w->watchdog, NULL);
    uv_close((uv_handle_t *)&w->step, NULL);
}

/* Run to the end; the loop must close cleanly. */
static void world_run(world_t *w)
{
    uv_run(&w->loop, UV_RUN_DEFAULT);
    assert_true(w->finished);
    assert_int_equal(uv_loop_close(&w->loop), 0);
    world_free_relay(w);
    free(w->old_relay);
    if (w->client_tls)
        cw_tls_ctx_free(w->client_tls);
}

static uint64_t now_ms(world_t *w)
{
    return uv_now(&w->loop);
}

/* The common end of a transfer: every byte arrived in order, once. */
static void check_transfer(world_t *w, uint64_t expect_rx)
{
    drv_t *d = &w->d;
    assert_int_equal(d->open_status, 0);
    assert_int_equal(d->losts, 0);
    assert_int_equal(d->bad_at, UINT64_MAX);
    assert_int_equal(d->rx, expect_rx);
    assert_int_equal(d->eofs, 1);
    assert_int_equal(d->closed, 1);
    assert_int_equal(w->master.bad_at, UINT64_MAX);
    /* the master saw one connection, whatever happened to the links */
    assert_int_equal(w->master.accepted, 1);
}

/* ---- tests ---------------------------------------------------------------- */

/* Echo 4 MiB through the tunnel with no fault: exact bytes, one session that ends cleanly. */
static void test_echo(void **state)
{
    world_t w;
    world_init(&w, TM_ECHO);
    world_relay(&w, 0, 0);
    w.d.to_send = 4 << 20;
    w.d.shutdown_at_end = true;
    world_connect(&w, false);
    world_run(&w);
    check_transfer(&w, 4 << 20);
    assert_int_equal(w.d.link_downs, 0);
    assert_int_equal(w.master.closed, 1);
    /* the replay buffer bounded what was outstanding */
    assert_true(w.d.max_unacked <= (256u << 10));
}

/* Cut the link at random byte points (RST or FIN in turn), also inside handshakes, while 8 MiB
 * are echoed: the bytes arrive whole and once, the master never sees a reconnect. */
static void plan_cuts(world_t *w, int n, uint64_t gap_max, uint64_t seed)
{
    /* armed by drv_on_open: a cut inside the first handshake fails the open (by design: the
     * worker's own loop retries a session that never opened) */
    w->proxy.seed = seed;
    w->proxy.cut_gap_max = gap_max;
    w->proxy.cut_rst = true;
    w->proxy.cuts_left = n - 1;
    w->cuts_planned = true;
}

static void test_echo_cuts(void **state)
{
    world_t w;
    world_init(&w, TM_ECHO);
    world_relay(&w, 0, 0);
    w.d.to_send = 8 << 20;
    w.d.shutdown_at_end = true;
    world_connect(&w, true);
    plan_cuts(&w, 40, 1200000, 0x5eed);
    world_run(&w);
    check_transfer(&w, 8 << 20);
    assert_true(w.proxy.cuts >= 10);
    /* every cut of an open link is one outage and one resume; cuts inside a resume's own
     * handshake only make it retry */
    assert_int_equal(w.d.link_downs, w.d.link_ups);
    assert_int_equal(w.d.t.resumes, (uint64_t)w.d.link_ups);
    assert_true(w.d.link_downs >= w.proxy.cuts / 2);
}

/* The master sends 6 MiB and closes; the link is cut on the way: the worker gets every byte
 * and then EOF. */
static void test_source_cuts(void **state)
{
    world_t w;
    world_init(&w, TM_SOURCE);
    w.master.source_len = 6 << 20;
    world_relay(&w, 0, 0);
    w.d.to_send = 100000; /* some bytes the other way too (the master checks them) */
    w.d.shutdown_at_end = true;
    world_connect(&w, true);
    plan_cuts(&w, 20, 800000, 77);
    world_run(&w);
    check_transfer(&w, 6 << 20);
    assert_int_equal(w.master.received, 100000);
    assert_true(w.proxy.cuts >= 5);
}

/* A master that does not read: the relay's queue for it fills up to what the worker may have
 * unacknowledged, the relay stops acknowledging, the client's replay buffer fills and its writes
 * wait; memory stays bounded everywhere.  When the master reads again everything arrives. */
static void slow_master_step(world_t *w)
{
    drv_t *d = &w->d;
    if (w->stage == 0 && d->opens) {
        tm_pause(&w->master, true);
        w->stage = 1;
        w->stage_at = now_ms(w);
    } else if (w->stage == 1 && now_ms(w) - w->stage_at > 1500) {
        /* stalled: the source was stopped, nothing grew without bound */
        assert_int_equal(cw_tunnel_unacked(&d->t), 256u << 10);
        assert_true(cw_tunnel_write_queue_size(&d->t) > 0);
        assert_true(d->sent < d->to_send);
        session_t *s = NULL;
        for (unsigned b = 0; s == NULL && b < RELAY_BUCKETS; b++)
            s = w->relay->buckets[b];
        assert_non_null(s);
        /* the relay acknowledges only what the master took: its queue for the master is
         * bounded by the worker's buffer, and it still reads the link (pings, an ABORT) */
        assert_true(s->master_queued <= (256u << 10));
        assert_false(s->link_held);
        assert_false(s->link->l.paused);
        w->stage = 2;
        tm_pause(&w->master, false);
    }
}

static void test_backpressure_slow_master(void **state)
{
    world_t w;
    world_init(&w, TM_SINK);
    world_relay(&w, 0, 0);
    w.d.to_send = 16 << 20;
    w.d.shutdown_at_end = true;
    w.d.finish_on_close = true;
    w.on_step = slow_master_step;
    world_connect(&w, false);
    /* the sink never closes on its own: end after the relay acknowledged everything */
    world_run(&w);
    assert_int_equal(w.stage, 2);
    assert_int_equal(w.master.received, 16 << 20);
    assert_int_equal(w.master.bad_at, UINT64_MAX);
    assert_int_equal(w.d.shutdown_status, 0);
    assert_true(w.d.max_unacked <= (256u << 10));
}

/* A worker that does not read: the relay's replay buffer fills and it stops reading the master;
 * when the worker reads again every byte arrives. */
static void slow_worker_step(world_t *w)
{
    drv_t *d = &w->d;
    if (w->stage == 0 && d->opens) {
        w->stage = 1;
        w->stage_at = now_ms(w);
    } else if (w->stage == 1 && now_ms(w) - w->stage_at > 1000) {
        assert_int_equal(d->rx, 0); /* reading stopped in on_open */
        assert_int_equal(relay_masters_paused(w->relay), 1);
        assert_int_equal(relay_bytes_buffered(w->relay), 256u << 10);
        w->stage = 2;
        cw_tunnel_read_start(&d->t);
    }
}

static void test_backpressure_slow_worker(void **state)
{
    world_t w;
    world_init(&w, TM_SOURCE);
    w.master.source_len = 12 << 20;
    world_relay(&w, 0, 0);
    w.d.to_send = 0;
    w.d.shutdown_at_end = true;
    w.d.read_stop_on_open = true;
    w.on_step = slow_worker_step;
    world_connect(&w, false);
    world_run(&w);
    assert_int_equal(w.stage, 2);
    check_transfer(&w, 12 << 20);
}

/* A resume with a wrong token, from another connection, is refused and logged, and does not
 * disturb the session it names. */
typedef struct raw {
    uv_tcp_t tcp;
    uv_connect_t creq;
    uv_write_t wreq;
    uint8_t hello[CW_TUN_HELLO_FRAME];
    cw_tun_dec_t dec;
    int refused_reason;
    bool closed_by_relay;
} raw_t;

static void raw_alloc(uv_handle_t *h, size_t s, uv_buf_t *b)
{
    static char rb[4096];
    b->base = rb;
    b->len = sizeof rb;
}

static void raw_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    raw_t *r = s->data;
    if (n < 0) {
        r->closed_by_relay = true;
        uv_close((uv_handle_t *)&r->tcp, NULL);
        return;
    }
    size_t used;
    cw_tun_frame_t f;
    if (cw_tun_dec_feed(&r->dec, (uint8_t *)buf->base, (size_t)n, &used, &f) == 1 &&
        f.type == CW_TUN_REFUSE)
        r->refused_reason = f.reason;
}

static void raw_connected(uv_connect_t *req, int status)
{
    raw_t *r = req->data;
    assert_int_equal(status, 0);
    uv_buf_t b = uv_buf_init((char *)r->hello, sizeof r->hello);
    uv_write(&r->wreq, (uv_stream_t *)&r->tcp, &b, 1, NULL);
    uv_read_start((uv_stream_t *)&r->tcp, raw_alloc, raw_read);
}

static raw_t raw;

static void wrong_token_step(world_t *w)
{
    drv_t *d = &w->d;
    if (w->stage == 0 && d->opens && d->rx > 0) {
        d->produce_paused = true; /* the session is mid-transfer during the attempt */
        memset(&raw, 0, sizeof raw);
        cw_tun_dec_init(&raw.dec);
        cw_tun_hello_t h = {.version = 1,
                            .resume = true,
                            .buffer = 4096,
                            .id = d->t.core.id,
                            .received = 0,
                            .link_seq = d->t.core.link_seq + 1};
        memcpy(h.token, d->t.core.token, CW_TUN_TOKEN_LEN);
        h.token[7] ^= 0x40;
        cw_tun_enc_hello(raw.hello, &h);
        uv_tcp_init(&w->loop, &raw.tcp);
        raw.tcp.data = raw.creq.data = &raw;
        struct sockaddr_in a;
        uv_ip4_addr("127.0.0.1", w->relay_port, &a);
        uv_tcp_connect(&raw.creq, &raw.tcp, (struct sockaddr *)&a, raw_connected);
        w->stage = 1;
    } else if (w->stage == 1 && raw.closed_by_relay) {
        assert_int_equal(raw.refused_reason, CW_TUN_R_BAD_TOKEN);
        assert_int_equal(w->relay->refusals[CW_TUN_R_BAD_TOKEN], 1);
        assert_int_equal(w->relay->nsessions, 1);
        assert_true(d->sent < d->to_send);
        w->stage = 2;
        d->produce_paused = false;
        drv_produce(d); /* the rest of the transfer, on the undisturbed session */
    }
}

static void test_wrong_token(void **state)
{
    world_t w;
    world_init(&w, TM_ECHO);
    world_relay(&w, 0, 0);
    w.d.to_send = 6 << 20;
    w.d.shutdown_at_end = true;
    w.on_step = wrong_token_step;
    world_connect(&w, false);
    world_run(&w);
    assert_int_equal(w.stage, 2);
    check_transfer(&w, 6 << 20);
    assert_int_equal(w.d.link_downs, 0); /* the real link was never disturbed */
}

/* The worker stays away longer than the resume window: the relay closes the master connection
 * and forgets the session; the worker's late resume is refused (expired) and it is told the
 * session is lost. */
static void window_step(world_t *w)
{
    drv_t *d = &w->d;
    if (w->stage == 0 && d->opens && d->rx > 200000) {
        w->proxy.refuse = true;
        tp_cut(&w->proxy, true);
        w->stage = 1;
        w->stage_at = now_ms(w);
        d->produce_paused = true;
    } else if (w->stage == 1 && w->master.closed == 1) {
        /* the window is 1 s: the master's connection went after it, not before */
        uint64_t after = w->master.last_close_ms - w->stage_at;
        assert_true(after >= 900 && after < 5000);
        assert_int_equal(w->relay->nsessions, 0);
        assert_int_equal(w->relay->expired_total, 1);
        assert_int_equal(d->losts, 0);
        w->proxy.refuse = false; /* the worker comes back: too late */
        w->stage = 2;
    } else if (w->stage == 2 && d->losts) {
        w->stage = 3;
        world_finish(w);
    }
}

static void test_window_expiry(void **state)
{
    world_t w;
    world_init(&w, TM_ECHO);
    w.ro.resume_window = 1;
    world_relay(&w, 0, 0);
    w.to.max_outage = 30000; /* the client would wait; the relay decides */
    w.to.backoff_max = 300;
    w.d.to_send = 1 << 20;
    w.d.finish_on_close = false;
    w.on_step = window_step;
    world_connect(&w, true);
    world_run(&w);
    assert_int_equal(w.stage, 3);
    assert_int_equal(w.d.losts, 1);
    assert_int_equal(w.d.lost_err, UV_ECONNRESET);
    assert_non_null(strstr(w.d.why, "resume window expired"));
    assert_int_equal(w.master.accepted, 1);
}

/* The client gives up by itself when the relay stays unreachable beyond max_outage. */
static void unreachable_step(world_t *w)
{
    drv_t *d = &w->d;
    if (w->stage == 0 && d->opens && d->rx > 100000) {
        w->proxy.refuse = true;
        tp_cut(&w->proxy, true);
        w->stage = 1;
        w->stage_at = now_ms(w);
    } else if (w->stage == 1 && d->losts) {
        uint64_t after = now_ms(w) - w->stage_at;
        assert_true(after >= 800 && after < 3000);
        w->stage = 2;
        world_finish(w);
    }
}

static void test_max_outage(void **state)
{
    world_t w;
    world_init(&w, TM_ECHO);
    world_relay(&w, 0, 0);
    w.to.max_outage = 1000;
    w.d.to_send = 1 << 20;
    w.d.finish_on_close = false;
    w.on_step = unreachable_step;
    world_connect(&w, true);
    world_run(&w);
    assert_int_equal(w.stage, 2);
    assert_int_equal(w.d.lost_err, UV_ETIMEDOUT);
    assert_non_null(strstr(w.d.why, "relay unreachable"));
}

/* A black hole: the proxy forwards nothing but keeps the sockets.  The client's dead-link timer
 * notices, its new links are black-holed too, and once the path comes back it resumes. */
static void blackhole_step(world_t *w)
{
    drv_t *d = &w->d;
    if (w->stage == 0 && d->opens && d->rx > (2u << 20)) {
        tp_blackhole(&w->proxy, true);
        w->stage = 1;
        w->stage_at = now_ms(w);
    } else if (w->stage == 1 && now_ms(w) - w->stage_at > 2500) {
        assert_true(d->link_downs >= 1);
        assert_false(cw_tunnel_link_up(&d->t));
        w->stage_ups = d->link_ups;
        tp_blackhole(&w->proxy, false);
        w->stage = 2;
    }
}

static void test_blackhole(void **state)
{
    world_t w;
    world_init(&w, TM_ECHO);
    w.ro.dead_timeout = 600;
    world_relay(&w, 0, 0);
    w.to.dead_timeout = 400;
    w.to.ping_interval = 100;
    w.to.handshake_timeout = 500;
    w.d.to_send = 6 << 20;
    w.d.shutdown_at_end = true;
    w.on_step = blackhole_step;
    world_connect(&w, true);
    world_run(&w);
    assert_int_equal(w.stage, 2);
    check_transfer(&w, 6 << 20);
    assert_true(w.d.link_ups > w.stage_ups); /* resumed after the path came back */
    assert_int_equal(w.d.link_ups, w.d.link_downs);
}

/* A relay restart loses its sessions: the resume is refused as unknown and the session is lost
 * (the worker then starts over, as without a relay).  The link is cut first, so the stopping
 * relay has no link to send its ABORT on: what the worker sees is what a crash shows it. */
static void restart_step(world_t *w)
{
    drv_t *d = &w->d;
    if (w->stage == 0 && d->opens && d->rx > 100000) {
        w->proxy.refuse = true;
        tp_cut(&w->proxy, true);
        w->stage = 1;
        w->stage_at = now_ms(w);
    } else if (w->stage == 1 && now_ms(w) - w->stage_at > 200) {
        int port = w->relay_port;
        relay_stop(w->relay);
        /* a new relay process on the same address; the old one's handles are closing, so it
         * is freed when the loop has ended */
        w->old_relay = w->relay;
        free(w->ro.listen);
        free(w->ro.master);
        w->relay = NULL;
        world_relay(w, port, 0);
        w->proxy.refuse = false;
        w->stage = 2;
    } else if (w->stage == 2 && d->losts) {
        w->stage = 3;
        world_finish(w);
    }
}

static void test_relay_restart(void **state)
{
    world_t w;
    world_init(&w, TM_ECHO);
    world_relay(&w, 0, 0);
    w.d.to_send = 1 << 20;
    w.d.finish_on_close = false;
    w.on_step = restart_step;
    world_connect(&w, true);
    world_run(&w);
    assert_int_equal(w.stage, 3);
    assert_int_equal(w.d.lost_err, UV_ECONNRESET);
    assert_non_null(strstr(w.d.why, "unknown session"));
    assert_int_equal(w.master.closed, 1); /* the stopped relay closed its master connection */
}

/* A relay whose master is down refuses the new session; the worker hears it from on_open. */
static void test_master_unreachable(void **state)
{
    world_t w;
    world_init(&w, TM_ECHO);
    world_relay(&w, 0, tl_dead_port());
    w.d.to_send = 10;
    world_connect(&w, false);
    world_run(&w);
    assert_int_equal(w.d.opens, 1);
    assert_true(w.d.open_status < 0);
    assert_non_null(strstr(w.d.why, "master unreachable"));
    assert_int_equal(w.d.closed, 1);
}

/* Closing the tunnel mid-session aborts it: the relay closes the master connection at once
 * instead of holding it for the resume window. */
static void close_step(world_t *w)
{
    drv_t *d = &w->d;
    if (w->stage == 0 && d->opens && d->rx > 500000) {
        cw_tunnel_close(&d->t);
        w->stage = 1;
        w->stage_at = now_ms(w);
    } else if (w->stage == 1 && w->master.closed == 1) {
        assert_true(now_ms(w) - w->stage_at < 500);
        assert_int_equal(w->relay->nsessions, 0);
        w->stage = 2;
        world_finish(w);
    }
}

static void test_close_aborts(void **state)
{
    world_t w;
    world_init(&w, TM_ECHO);
    world_relay(&w, 0, 0);
    w.d.to_send = 8 << 20;
    w.d.finish_on_close = false;
    w.on_step = close_step;
    world_connect(&w, false);
    world_run(&w);
    assert_int_equal(w.stage, 2);
    assert_int_equal(w.d.closed, 1);
}

/* TLS to the relay: the certificate and host name are checked; data survives cuts. */
static void make_cert(world_t *w)
{
    snprintf(w->tmpdir, sizeof w->tmpdir, "/tmp/cwloop-XXXXXX");
    assert_non_null(mkdtemp(w->tmpdir));
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
             "-keyout %s/key.pem -out %s/cert.pem -days 2 -subj /CN=relay.test "
             "-addext subjectAltName=DNS:relay.test,IP:127.0.0.1 2>/dev/null",
             w->tmpdir, w->tmpdir);
    assert_int_equal(system(cmd), 0);
}

static void remove_cert(world_t *w)
{
    char p[128];
    snprintf(p, sizeof p, "%s/key.pem", w->tmpdir);
    unlink(p);
    snprintf(p, sizeof p, "%s/cert.pem", w->tmpdir);
    unlink(p);
    rmdir(w->tmpdir);
}

static void tls_world(world_t *w, const char *tls_host)
{
    world_init(w, TM_ECHO);
    make_cert(w);
    char cert[128], key[128], err[400];
    snprintf(cert, sizeof cert, "%s/cert.pem", w->tmpdir);
    snprintf(key, sizeof key, "%s/key.pem", w->tmpdir);
    w->ro.tls_cert = cert;
    w->ro.tls_key = key;
    world_relay(w, 0, 0);
    w->client_tls = cw_tls_client_ctx(cert, NULL, NULL, err, sizeof err);
    assert_non_null(w->client_tls);
    w->to.tls_ctx = w->client_tls;
    w->to.tls_host = tls_host;
}

static void test_tls_cuts(void **state)
{
    world_t w;
    tls_world(&w, "relay.test");
    w.d.to_send = 3 << 20;
    w.d.shutdown_at_end = true;
    world_connect(&w, true);
    plan_cuts(&w, 8, 1000000, 99);
    world_run(&w);
    remove_cert(&w);
    check_transfer(&w, 3 << 20);
    assert_true(w.proxy.cuts >= 3);
}

static void test_tls_wrong_name(void **state)
{
    world_t w;
    tls_world(&w, "other.test");
    w.d.to_send = 10;
    world_connect(&w, false);
    world_run(&w);
    remove_cert(&w);
    assert_true(w.d.open_status < 0);
    assert_non_null(strstr(w.d.why, "certificate verification failed"));
    assert_int_equal(w.master.accepted, 0);
}

/* ---- the bridge (tunbridge.c): the tunnel seen as a socket -------------------------------- */

/* The bridge's user, as cworker's link is: a stream on the fd it was given, writing stream 1,
 * reading the echo, then ending its stream and waiting for the master's end. */
typedef struct bru {
    world_t *w;
    cw_tunbridge_t *b;
    uv_pipe_t pipe;
    uv_shutdown_t sreq;
    bool pipe_open, shut, released;
    uint64_t to_send, sent, rx, bad_at, seed;
    int opens, open_status, link_downs, link_ups, losts, eofs, read_errs;
    size_t max_queue;
    uint64_t pause_until; /* stop reading until then (uv_now, ms) */
    bool paused;
} bru_t;

static bru_t bru;

static void bru_produce(bru_t *u);

static void bru_write_cb(uv_write_t *req, int status)
{
    free(req);
    if (status == 0)
        bru_produce(&bru);
}

static void bru_shutdown_cb(uv_shutdown_t *req, int status)
{
    (void)req;
    (void)status;
}

static void bru_produce(bru_t *u)
{
    if (!u->pipe_open || u->shut)
        return;
    while (u->sent < u->to_send &&
           uv_stream_get_write_queue_size((uv_stream_t *)&u->pipe) < (256u << 10)) {
        size_t n = (size_t)(rnd(&u->seed) % 65536) + 1;
        if (n > u->to_send - u->sent)
            n = (size_t)(u->to_send - u->sent);
        uv_write_t *req = malloc(sizeof *req + n);
        uint8_t *data = (uint8_t *)(req + 1);
        for (size_t i = 0; i < n; i++)
            data[i] = tl_byte(u->sent + i, 1);
        uv_buf_t b = uv_buf_init((char *)data, (unsigned)n);
        assert_int_equal(uv_write(req, (uv_stream_t *)&u->pipe, &b, 1, bru_write_cb), 0);
        u->sent += n;
    }
    size_t q = uv_stream_get_write_queue_size((uv_stream_t *)&u->pipe);
    if (q > u->max_queue)
        u->max_queue = q;
    if (u->sent == u->to_send && !u->shut) {
        u->shut = true;
        assert_int_equal(uv_shutdown(&u->sreq, (uv_stream_t *)&u->pipe, bru_shutdown_cb), 0);
    }
}

static void bru_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
    static char buf[65536];
    (void)h;
    (void)hint;
    *b = uv_buf_init(buf, sizeof buf);
}

static void bru_closed(uv_handle_t *h)
{
    world_finish(bru.w);
}

static void bru_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    bru_t *u = &bru;
    if (n > 0) {
        uint64_t bad = tl_check((const uint8_t *)buf->base, (size_t)n, u->rx, 1);
        if (bad != UINT64_MAX && u->bad_at == UINT64_MAX)
            u->bad_at = bad;
        u->rx += (uint64_t)n;
        if (u->pause_until && !u->paused && u->rx > (1u << 20)) {
            /* stop reading for a while: the bridge must stop reading the tunnel */
            u->paused = true;
            uv_read_stop(s);
        }
        return;
    }
    if (n == 0)
        return;
    if (n == UV_EOF)
        u->eofs++;
    else
        u->read_errs++;
    uv_read_stop(s);
    cw_tunbridge_release(u->b);
    u->released = true;
    u->pipe_open = false;
    uv_close((uv_handle_t *)&u->pipe, bru_closed);
}

static void bru_on_open(cw_tunbridge_t *b, int status, const char *why, int fd)
{
    bru_t *u = cw_tunbridge_data(b);
    world_t *w = u->w;
    u->opens++;
    u->open_status = status;
    if (status < 0) {
        cw_tunbridge_release(b);
        world_finish(w);
        return;
    }
    assert_int_equal(uv_pipe_init(&w->loop, &u->pipe, 0), 0);
    assert_int_equal(uv_pipe_open(&u->pipe, fd), 0);
    u->pipe_open = true;
    assert_int_equal(uv_read_start((uv_stream_t *)&u->pipe, bru_alloc, bru_read), 0);
    if (w->cuts_planned) {
        w->cuts_planned = false;
        w->proxy.cut_at = w->proxy.forwarded + 1 + w->proxy.seed % w->proxy.cut_gap_max;
    }
    bru_produce(u);
}

static void bru_on_link(cw_tunbridge_t *b, bool up, const char *why)
{
    bru_t *u = cw_tunbridge_data(b);
    if (up)
        u->link_ups++;
    else
        u->link_downs++;
}

static void bru_on_lost(cw_tunbridge_t *b, int err, const char *why)
{
    bru_t *u = cw_tunbridge_data(b);
    u->losts++;
}

static const cw_tunbridge_callbacks_t bru_callbacks = {
    .on_open = bru_on_open,
    .on_link = bru_on_link,
    .on_lost = bru_on_lost,
};

static void bridge_connect(world_t *w, uint64_t to_send)
{
    memset(&bru, 0, sizeof bru);
    bru.w = w;
    bru.to_send = to_send;
    bru.bad_at = UINT64_MAX;
    bru.seed = 0xb41d6e;
    assert_int_equal(tp_start(&w->proxy, &w->loop, w->relay_port), 0);
    bru.b = cw_tunbridge_new(&w->loop, &w->to, &bru_callbacks, &bru);
    assert_non_null(bru.b);
    assert_int_equal(cw_tunbridge_connect(bru.b, "127.0.0.1", w->proxy.port), 0);
}

/* 8 MiB echoed through the bridge while the link is cut at random points: the user's socket
 * sees every byte once and in order, then the master's end of stream; the master saw one
 * connection; every handle is closed at the end (the bridge freed itself). */
static void test_bridge_cuts(void **state)
{
    world_t w;
    world_init(&w, TM_ECHO);
    world_relay(&w, 0, 0);
    bridge_connect(&w, 8 << 20);
    plan_cuts(&w, 30, 1200000, 0xb41d);
    world_run(&w);
    assert_int_equal(bru.opens, 1);
    assert_int_equal(bru.open_status, 0);
    assert_int_equal(bru.losts, 0);
    assert_int_equal(bru.bad_at, UINT64_MAX);
    assert_int_equal(bru.rx, 8 << 20);
    assert_int_equal(bru.eofs, 1);
    assert_int_equal(w.master.bad_at, UINT64_MAX);
    assert_int_equal(w.master.accepted, 1);
    assert_true(w.proxy.cuts >= 5);
    assert_true(bru.link_downs >= 1);
    assert_int_equal(bru.link_downs, bru.link_ups);
}

/* The user stops reading for a while: the bridge stops reading the tunnel (at most
 * CW_TUNBRIDGE_HIGH waits for the socket, plus what the socketpair holds), the relay's replay
 * buffer fills and the master's writes wait; when the user reads again everything arrives. */
static void bridge_pause_step(world_t *w)
{
    if (bru.paused && w->stage == 0) {
        w->stage = 1;
        w->stage_at = now_ms(w);
    } else if (w->stage == 1 && now_ms(w) - w->stage_at > 1000) {
        w->stage = 2;
        /* the bridge stopped reading the tunnel: what the tunnel took from its link beyond
         * what the user read is the bridge's high-water mark, the socketpair's buffers and a
         * read or two -- not the echo of everything the user wrote meanwhile */
        const cw_tunnel_t *t = cw_tunbridge_tunnel(bru.b);
        uint64_t in = t->bytes_in + (t->link ? t->link->bytes_in : 0); /* wire bytes */
        assert_true(in - bru.rx < (1u << 20));
        /* and the rest of the way was held up too: the user's writes waited */
        assert_true(bru.sent - bru.rx < (4u << 20));
        bru.pause_until = 0;
        assert_int_equal(uv_read_start((uv_stream_t *)&bru.pipe, bru_alloc, bru_read), 0);
    }
}

static void test_bridge_backpressure(void **state)
{
    world_t w;
    world_init(&w, TM_ECHO);
    world_relay(&w, 0, 0);
    w.on_step = bridge_pause_step;
    bridge_connect(&w, 16 << 20);
    bru.pause_until = 1;
    world_run(&w);
    assert_int_equal(w.stage, 2);
    assert_int_equal(bru.rx, 16 << 20);
    assert_int_equal(bru.bad_at, UINT64_MAX);
    assert_int_equal(bru.eofs, 1);
    /* the user's writes waited for the tunnel: the user's own queue stayed near its mark */
    assert_true(bru.max_queue < (256u << 10) + 65536);
}

/* The path stays down longer than the tunnel may wait: on_lost, then the user's socket ends
 * (EOF), and everything closes. */
static void bridge_lost_step(world_t *w)
{
    if (w->stage == 0 && bru.opens && bru.rx > 100000) {
        w->proxy.refuse = true;
        tp_cut(&w->proxy, true);
        w->stage = 1;
    }
}

static void test_bridge_lost(void **state)
{
    world_t w;
    world_init(&w, TM_ECHO);
    w.to.max_outage = 500;
    world_relay(&w, 0, 0);
    w.on_step = bridge_lost_step;
    bridge_connect(&w, 64 << 20);
    world_run(&w);
    assert_int_equal(bru.losts, 1);
    assert_int_equal(bru.link_downs, 1);
    assert_int_equal(bru.link_ups, 0);
    assert_int_equal(bru.eofs + bru.read_errs, 1);
    assert_true(bru.rx < (64u << 20));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_echo),
        cmocka_unit_test(test_echo_cuts),
        cmocka_unit_test(test_source_cuts),
        cmocka_unit_test(test_backpressure_slow_master),
        cmocka_unit_test(test_backpressure_slow_worker),
        cmocka_unit_test(test_wrong_token),
        cmocka_unit_test(test_window_expiry),
        cmocka_unit_test(test_max_outage),
        cmocka_unit_test(test_blackhole),
        cmocka_unit_test(test_relay_restart),
        cmocka_unit_test(test_master_unreachable),
        cmocka_unit_test(test_close_aborts),
        cmocka_unit_test(test_tls_cuts),
        cmocka_unit_test(test_tls_wrong_name),
        cmocka_unit_test(test_bridge_cuts),
        cmocka_unit_test(test_bridge_backpressure),
        cmocka_unit_test(test_bridge_lost),
    };
    signal(SIGPIPE, SIG_IGN); /* as in cworker and cworker-relay: writes to a reset link fail */
    if (getenv("TL_FILTER"))
        cmocka_set_test_filter(getenv("TL_FILTER"));
    return cmocka_run_group_tests(tests, NULL, NULL);
}
