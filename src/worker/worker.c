/* The worker: the link to the master (resolve, connect, attach, reconnect
 * with backoff) and the stop sequence; see worker.h for both state
 * machines.  The master's requests go through the dispatcher (dispatch.c);
 * the commands live in cmd/. */
#include "cw_config.h"
#include "worker.h"

#include <errno.h>
#include <math.h>
#include <netdb.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include "cmd/fsutil.h"
#include "cmd/proc.h"
#include "link_msgpack.h"
#include "link_pb.h"
#include "log.h"
#include "memtrim.h"
#include "metrics.h"
#include "notify.h"
#include "tls.h"
#include "tunbridge.h"

/* how long the KILL phase waits after SIGKILL */
#define KILL_WAIT_MS 3000
/* how long a stopping worker waits for the answers to its last messages */
#define ACKS_WAIT_MS 5000
/* how long a drained worker stays attached after its last command */
#define LINGER_MS 1500
/* how long a PB master may take to greet a new connection */
#define PB_GREETING_MS 10000
/* how often allow-shutdown=file looks at BASEDIR/shutdown.stamp */
#define STAMP_CHECK_MS 5000
/* how long an attached worker runs no command before it gives back the
 * code pages and heap it does not use while idle (memtrim.h) */
#define IDLE_TRIM_MS 2000

static void worker_connect(cw_worker_t *w);
static void worker_try_next_addr(cw_worker_t *w);
static void worker_link_start(cw_worker_t *w);
static void stop_enter(cw_worker_t *w, cw_stop_phase_t to);
static void stop_check(cw_worker_t *w);

double cw_now(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
}

bool cw_worker_attached(const cw_worker_t *w)
{
    return w->link_state == CW_LINK_ATTACHED;
}

/* Tell systemd (when it watches) what the worker is doing. */
static void worker_status(cw_worker_t *w)
{
    if (w->link_state == CW_LINK_ATTACHED)
        cw_notify_status("attached to master %s, running %zu command(s)", w->host_header,
                         w->cmds.n);
}

/* ---- the link's states ---- */

#define L(s) CW_LINK_##s
static const bool link_allowed[CW_LINK_STATES][CW_LINK_STATES] = {
    [L(RESOLVING)] = {[L(CONNECTING)] = true, [L(BACKOFF)] = true, [L(DOWN)] = true},
    [L(CONNECTING)] = {[L(CONNECTING)] = true,
                       [L(OPEN)] = true,
                       [L(BACKOFF)] = true,
                       [L(DOWN)] = true},
    [L(OPEN)] = {[L(ATTACHED)] = true, [L(BACKOFF)] = true, [L(DOWN)] = true},
    [L(ATTACHED)] = {[L(BACKOFF)] = true, [L(DOWN)] = true},
    [L(BACKOFF)] = {[L(RESOLVING)] = true, [L(DOWN)] = true},
    [L(DOWN)] = {0},
};
#undef L

static const char *const link_names[CW_LINK_STATES] = {
    "resolving", "connecting", "open", "attached", "backoff", "down",
};

bool cw_link_state_allowed(cw_link_state_t a, cw_link_state_t b)
{
    return a < CW_LINK_STATES && b < CW_LINK_STATES && link_allowed[a][b];
}

const char *cw_link_state_name(cw_link_state_t s)
{
    return s < CW_LINK_STATES ? link_names[s] : "?";
}

/* The one place the link's state changes. */
static void link_set_state(cw_worker_t *w, cw_link_state_t to)
{
    if (!cw_link_state_allowed(w->link_state, to)) {
        cw_error("link state %s -> %s is not allowed", cw_link_state_name(w->link_state),
                 cw_link_state_name(to));
        abort(); /* a programmer error */
    }
    w->link_state = to;
}

/* xorshift64*: jitter for reconnect delays; not for anything secret. */
static double worker_random(void)
{
    static uint64_t s;
    if (s == 0)
        s = uv_hrtime() ^ ((uint64_t)getpid() << 32) ^ 0x9E3779B97F4A7C15ull;
    s ^= s >> 12;
    s ^= s << 25;
    s ^= s >> 27;
    return (double)((s * 0x2545F4914F6CDD1Dull) >> 11) / (double)(1ull << 53);
}

static void retry_timer_cb(uv_timer_t *t)
{
    cw_worker_t *w = t->data;
    link_set_state(w, CW_LINK_RESOLVING);
    worker_connect(w);
}

/* Exponential backoff with full jitter: uniform in (0, min(cap, 1.5^n)]. */
static void worker_schedule_retry(cw_worker_t *w, const char *why)
{
    if (w->stop_phase != CW_STOP_RUN) {
        stop_check(w);
        return;
    }
    if (w->cfg->max_retries > 0 && w->attempt + 1 >= (unsigned)w->cfg->max_retries) {
        cw_error("%s; giving up after %u failed attempts (--max-retries)", why, w->attempt + 1);
        link_set_state(w, CW_LINK_BACKOFF);
        cw_worker_stop(w, 1, "too many failed connection attempts");
        return;
    }
    cw_notify_status("connecting to master %s (attempt %u)", w->host_header, w->attempt + 2);
    /* 1.5^attempt, capped (multiplied out: libm's pow() is not worth
     * mapping libm for) */
    double ceiling = 1.0;
    for (unsigned i = 0; i < w->attempt && ceiling < w->cfg->backoff_cap; i++)
        ceiling *= 1.5;
    if (ceiling > w->cfg->backoff_cap)
        ceiling = w->cfg->backoff_cap;
    double delay = ceiling * worker_random();
    if (delay < 0.05)
        delay = 0.05;
    w->attempt++;
    link_set_state(w, CW_LINK_BACKOFF);
    cw_info("%s; retrying in %.2f s", why, delay);
    uv_timer_start(&w->retry_timer, retry_timer_cb, (uint64_t)(delay * 1000), 0);
}

/* ---- the link's events ---- */

static void link_opened(cw_link_t *l)
{
    cw_worker_t *w = l->owner;
    link_set_state(w, CW_LINK_OPEN);
    w->n_connects++;
    w->naddrs = w->next_addr = 0;
}

static void link_closed(cw_link_t *l, int err, const char *why)
{
    cw_worker_t *w = l->owner;
    bool was_open = l->open;
    char reason[256];
    snprintf(reason, sizeof reason, "%s", why);
    w->link = NULL; /* the link frees itself when we return */
    /* the tunnel carries the link's last bytes and its end to the relay,
     * then goes (bounded: CW_TUNBRIDGE_LINGER_MS) */
    cw_tunbridge_release(w->bridge);
    w->bridge = NULL;
    w->relay_up = false;

    if (w->stop_phase != CW_STOP_RUN) {
        if (w->link_state != CW_LINK_DOWN)
            link_set_state(w, CW_LINK_DOWN);
        stop_check(w);
        return;
    }
    if (was_open) {
        char msg[600];
        snprintf(msg, sizeof msg, "connection to master lost: %s", reason);
        worker_schedule_retry(w, msg);
        return;
    }
    if (err == CW_EAUTH) {
        char msg[600];
        snprintf(msg, sizeof msg, "master refused worker '%s': %s", w->cfg->name, reason);
        w->naddrs = w->next_addr = 0;
        worker_schedule_retry(w, msg);
        return;
    }
    if (w->next_addr < w->naddrs) {
        cw_debug("connecting failed (%s); trying the next address", reason);
        worker_try_next_addr(w);
        return;
    }
    w->naddrs = w->next_addr = 0;
    char msg[1000];
    if (w->cfg->relay)
        snprintf(msg, sizeof msg, "cannot connect to master %s through the relay %s: %s",
                 w->host_header, w->cfg->relay, reason);
    else
        snprintf(msg, sizeof msg, "cannot connect to master %s:%d: %s", w->cfg->master_host,
                 w->cfg->master_port, reason);
    worker_schedule_retry(w, msg);
}

static const cw_link_events_t worker_link_events = {
    .opened = link_opened,
    .closed = link_closed,
};

/* ---- the dispatcher's and the commands' events ---- */

/* Attached and idle for IDLE_TRIM_MS: an idle worker needs little of the
 * code it has run (start-up, configuration, the commands), nor the heap its
 * commands freed. */
static void idle_timer_cb(uv_timer_t *t)
{
    cw_worker_t *w = t->data;
    if (w->link_state != CW_LINK_ATTACHED || w->cmds.n > 0 || w->stop_phase != CW_STOP_RUN)
        return;
    cw_trim_stats_t st;
    int rc = cw_trim_idle(&st);
    if (rc == -ENOTSUP)
        cw_debug("idle: /proc/self/smaps does not show this process's pages (an emulator?): "
                 "idle pages are kept");
    else if (rc < 0)
        cw_debug("idle: cannot trim (%s)", strerror(-rc));
    else
        cw_debug("idle: RSS %ld -> %ld KiB (%u mappings dropped, %u kept)", st.rss_before_kib,
                 st.rss_after_kib, st.mappings, st.skipped);
}

static void idle_arm(cw_worker_t *w)
{
    if (w->link_state == CW_LINK_ATTACHED && w->cmds.n == 0 && w->stop_phase == CW_STOP_RUN)
        uv_timer_start(&w->idle_timer, idle_timer_cb, IDLE_TRIM_MS, 0);
    else
        uv_timer_stop(&w->idle_timer);
}

static void dispatch_attached(cw_dispatch_t *d, const char *peer)
{
    cw_worker_t *w = d->owner;
    if (w->link_state != CW_LINK_OPEN)
        return;
    link_set_state(w, CW_LINK_ATTACHED);
    w->attempt = 0;
    w->last_attach = cw_now();
    cw_info("attached to master %s:%d as '%s'", w->cfg->master_host, w->cfg->master_port,
            w->cfg->name);
    worker_status(w);
    idle_arm(w);
}

static void dispatch_shutdown(cw_dispatch_t *d)
{
    cw_worker_stop(d->owner, 0, "master requested shutdown");
}

static const cw_dispatch_ops_t worker_dispatch_ops = {
    .attached = dispatch_attached,
    .shutdown = dispatch_shutdown,
};

static void cmds_changed(cw_cmds_t *cs)
{
    cw_worker_t *w = cs->owner;
    worker_status(w);
    idle_arm(w);
    if (cs->n == 0 && w->stop_phase != CW_STOP_RUN)
        stop_check(w);
}

static void cmds_acked(cw_cmds_t *cs)
{
    cw_worker_t *w = cs->owner;
    if (w->stop_phase == CW_STOP_ACKS)
        stop_check(w);
}

static const cw_cmds_events_t worker_cmds_events = {
    .changed = cmds_changed,
    .acked = cmds_acked,
};

/* ---- connecting ---- */

static void on_tcp_connected(uv_connect_t *req, int status)
{
    cw_worker_t *w = req->data;
    cw_link_t *l = w->link;
    if (status < 0) {
        if (w->proxy.host) {
            /* the TCP connection goes to the proxy: say so, not just "refused" */
            char why[300];
            snprintf(why, sizeof why, "cannot reach the HTTP proxy %s:%d: %s", w->proxy.host,
                     w->proxy.port, uv_strerror(status));
            l->ops->close(l, status, why);
        } else {
            l->ops->close(l, status, uv_strerror(status));
        }
        return;
    }
    worker_link_start(w);
}

/* The link's stream is connected (to the master, a proxy, or the relay's
 * tunnel): speak the protocol. */
static void worker_link_start(cw_worker_t *w)
{
    cw_link_t *l = w->link;
    if (w->stop_phase != CW_STOP_RUN) {
        l->ops->close(l, 0, "worker stopping");
        return;
    }
    cw_link_target_t t = {
        .host_header = w->host_header,
        .path = w->cfg->master_path,
        .user = w->cfg->name,
        .password = w->cfg->password,
        .tls_ctx = w->tls_ctx,
        .tls_host = w->cfg->master_host,
        .proxy_target = w->proxy_target[0] ? w->proxy_target : NULL,
        .proxy_auth = w->proxy_auth,
    };
    int rc = l->ops->start(l, &t);
    if (rc < 0)
        l->ops->close(l, rc, cw_strerror(rc));
}

/* A new link of the configured protocol (not connected yet), or NULL. */
static cw_link_t *worker_new_link(cw_worker_t *w)
{
    cw_link_t *l;
    /* Through a relay the tunnel's link has the dead-link timer (the tunnel
     * resumes when it fires); the session inside waits longer, so it never
     * gives up on a path the tunnel is still repairing, and only catches a
     * master that stopped answering. */
    uint64_t dead = w->cfg->dead_timeout;
    if (w->cfg->relay && dead)
        dead = 2 * dead + w->cfg->ping_interval;
    if (w->cfg->protocol == CW_PROTO_PB) {
        cw_link_pb_options_t opt = {
            .basedir = w->cfg->basedir,
            .home = w->home[0] ? w->home : NULL,
            .ping_interval = w->cfg->ping_interval,
            .dead_timeout = dead,
            .keepalive = w->cfg->keepalive,
            .greeting_timeout = PB_GREETING_MS,
            .delete_leftover_dirs = w->cfg->delete_leftover_dirs,
            .fs_max_depth = w->cfg->fs_max_depth,
        };
        l = cw_link_pb_new(w->loop, &opt, &w->dispatch, &worker_link_events, w);
    } else {
        cw_conn_options_t opt;
        cw_conn_options_default(&opt);
        opt.max_message = w->cfg->max_message;
        opt.ping_interval = w->cfg->ping_interval;
        opt.dead_timeout = dead;
        l = cw_link_msgpack_new(w->loop, &opt, &w->dispatch, &worker_link_events, w);
    }
    return l;
}

static void worker_try_next_addr(cw_worker_t *w)
{
    const cw_addr_t *ai = &w->addrs[w->next_addr++];
    cw_link_t *l = worker_new_link(w);
    if (l == NULL) {
        worker_schedule_retry(w, "out of memory");
        return;
    }
    w->link = l;
    link_set_state(w, CW_LINK_CONNECTING);
    w->connect_req.data = w;
    int rc = uv_tcp_connect(&w->connect_req, l->ops->tcp(l), (const struct sockaddr *)&ai->ss,
                            on_tcp_connected);
    if (rc < 0)
        l->ops->close(l, rc, uv_strerror(rc));
}

static void on_resolved(cw_resolve_t *r, int status, const cw_addr_t *addrs, size_t n)
{
    cw_worker_t *w = r->data;
    if (w->stop_phase != CW_STOP_RUN) {
        stop_check(w);
        return;
    }
    if (status < 0) {
        char msg[600];
        snprintf(msg, sizeof msg, "cannot resolve %shost '%s': %s",
                 w->proxy.host ? "the HTTP proxy's " : "", w->dial_host, uv_strerror(status));
        worker_schedule_retry(w, msg);
        return;
    }
    memcpy(w->addrs, addrs, n * sizeof *addrs);
    w->naddrs = n;
    w->next_addr = 0;
    worker_try_next_addr(w);
}

/* ---- through cworker-relay ---- */

static void relay_open(cw_tunbridge_t *b, int status, const char *why, int fd)
{
    cw_worker_t *w = cw_tunbridge_data(b);
    cw_link_t *l = w->link;
    if (status < 0) {
        l->ops->close(l, status, why); /* link_closed names the relay */
        return;
    }
    int rc = uv_tcp_open(l->ops->tcp(l), fd);
    if (rc < 0) {
        close(fd);
        l->ops->close(l, rc, uv_strerror(rc));
        return;
    }
    cw_debug("tunnel to the relay %s open", w->cfg->relay);
    w->relay_up = true;
    worker_link_start(w);
}

static void relay_link(cw_tunbridge_t *b, bool up, const char *why)
{
    cw_worker_t *w = cw_tunbridge_data(b);
    cw_link_t *l = w->link;
    w->relay_up = up;
    if (up) {
        w->relay_resumes++;
        const cw_tunnel_t *t = cw_tunbridge_tunnel(b);
        cw_info("relay link back after %llu ms: the session to the master goes on",
                (unsigned long long)t->last_down_ms);
    } else {
        cw_warn("relay link down (%s): resuming; running commands go on, their output waits", why);
    }
    if (l->ops->hold_liveness)
        l->ops->hold_liveness(l, !up);
}

static void relay_lost(cw_tunbridge_t *b, int err, const char *why)
{
    cw_worker_t *w = cw_tunbridge_data(b);
    char msg[400];
    snprintf(msg, sizeof msg, "the relay session is lost: %s", why);
    w->link->ops->close(w->link, err, msg);
}

static const cw_tunbridge_callbacks_t relay_callbacks = {
    .on_open = relay_open,
    .on_link = relay_link,
    .on_lost = relay_lost,
};

/* CONNECTING through the relay: the tunnel resolves and connects by itself,
 * and its link outages stay below the link (docs/tunnel.md). */
static void worker_connect_relay(cw_worker_t *w)
{
    cw_tunnel_options_t o;
    cw_tunnel_options_default(&o);
    o.ping_interval = w->cfg->ping_interval;
    o.dead_timeout = w->cfg->dead_timeout; /* 0 (off) is the tunnel's default: 30 s */
    o.tls_ctx = w->relay_tls_ctx;
    /* resume attempts are capped at 5 s, or less with a smaller backoff-max */
    if (w->cfg->backoff_cap * 1000 < 5000)
        o.backoff_max =
            w->cfg->backoff_cap * 1000 < 100 ? 100 : (uint64_t)(w->cfg->backoff_cap * 1000);
    cw_link_t *l = worker_new_link(w);
    cw_tunbridge_t *b = l ? cw_tunbridge_new(w->loop, &o, &relay_callbacks, w) : NULL;
    if (b == NULL) {
        if (l)
            l->ops->close(l, -ENOMEM, "out of memory");
        else
            worker_schedule_retry(w, "out of memory");
        return;
    }
    w->link = l;
    w->bridge = b;
    link_set_state(w, CW_LINK_CONNECTING);
    cw_debug("connecting to the relay %s", w->cfg->relay);
    int rc = cw_tunbridge_connect(b, w->cfg->relay_host, w->cfg->relay_port);
    if (rc < 0)
        l->ops->close(l, rc, uv_strerror(rc)); /* releases the bridge */
}

/* RESOLVING: look the master (or the proxy) up. */
static void worker_connect(cw_worker_t *w)
{
    if (w->cfg->relay) {
        worker_connect_relay(w);
        return;
    }
    w->resolver.data = w;
    cw_debug("resolving %s:%d", w->dial_host, w->dial_port);
    int rc = cw_resolve_start(&w->resolver, w->loop, w->dial_host, w->dial_port, on_resolved);
    if (rc < 0) {
        char msg[400];
        snprintf(msg, sizeof msg, "cannot resolve %shost '%s': %s",
                 w->proxy.host ? "the HTTP proxy's " : "", w->dial_host, uv_strerror(rc));
        worker_schedule_retry(w, msg);
    }
}

/* ---- the stop sequence ---- */

#define S(p) CW_STOP_##p
static const bool stop_allowed[CW_STOP_PHASES][CW_STOP_PHASES] = {
    [S(RUN)] = {[S(DRAIN)] = true, [S(INTERRUPT)] = true},
    [S(DRAIN)] = {[S(INTERRUPT)] = true, [S(ACKS)] = true},
    [S(INTERRUPT)] = {[S(KILL)] = true, [S(ACKS)] = true},
    [S(KILL)] = {[S(ACKS)] = true},
    [S(ACKS)] = {[S(LINGER)] = true},
    [S(LINGER)] = {[S(CLOSE)] = true},
    [S(CLOSE)] = {[S(STOPPED)] = true},
    [S(STOPPED)] = {0},
};
#undef S

static const char *const stop_names[CW_STOP_PHASES] = {
    "run", "drain", "interrupt", "kill", "acks", "linger", "close", "stopped",
};

bool cw_stop_phase_allowed(cw_stop_phase_t a, cw_stop_phase_t b)
{
    return a < CW_STOP_PHASES && b < CW_STOP_PHASES && stop_allowed[a][b];
}

const char *cw_stop_phase_name(cw_stop_phase_t p)
{
    return p < CW_STOP_PHASES ? stop_names[p] : "?";
}

static void stop_timer_cb(uv_timer_t *t)
{
    cw_worker_t *w = t->data;
    switch (w->stop_phase) {
    case CW_STOP_DRAIN:
        cw_info("stopping: drain deadline passed: interrupting the remaining commands");
        stop_enter(w, CW_STOP_INTERRUPT);
        break;
    case CW_STOP_INTERRUPT:
        cw_error("%zu command(s) still running after %.1f s; killing their process groups",
                 w->cmds.n, (double)w->cfg->kill_grace / 1000.0);
        stop_enter(w, CW_STOP_KILL);
        break;
    case CW_STOP_KILL:
        /* A process that survives SIGKILL (uninterruptible sleep) cannot be
         * helped; do not hang the exit on it. */
        cw_error("%zu command(s) did not end after SIGKILL; exiting anyway", w->cmds.n);
        w->abandon = true;
        stop_enter(w, CW_STOP_ACKS);
        break;
    case CW_STOP_ACKS:
        if (w->link)
            cw_warn("the master did not acknowledge %zu message(s) within %d s; closing anyway",
                    w->link->ops->unanswered(w->link), ACKS_WAIT_MS / 1000);
        stop_enter(w, CW_STOP_LINGER);
        break;
    case CW_STOP_LINGER:
        stop_enter(w, CW_STOP_CLOSE);
        break;
    default:
        break;
    }
}

static void close_if_open(uv_handle_t *h)
{
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

/* STOPPED: release everything; uv_run returns once the handles are closed. */
static void stop_release(cw_worker_t *w)
{
    if (w->abandon)
        uv_stop(w->loop); /* commands we gave up on keep handles open */
    cw_resolve_shutdown();
    cw_tls_ctx_free(w->tls_ctx);
    w->tls_ctx = NULL;
    cw_tls_ctx_free(w->relay_tls_ctx);
    w->relay_tls_ctx = NULL;
    if (w->proxy.host)
        cw_proxy_free(&w->proxy);
    free(w->proxy_auth);
    w->proxy_auth = NULL;
    cw_metrics_stop(w->metrics);
    w->metrics = NULL;
    close_if_open((uv_handle_t *)&w->retry_timer);
    close_if_open((uv_handle_t *)&w->stop_timer);
    close_if_open((uv_handle_t *)&w->sig_term);
    close_if_open((uv_handle_t *)&w->sig_int);
    close_if_open((uv_handle_t *)&w->sig_hup);
    close_if_open((uv_handle_t *)&w->sig_usr1);
    close_if_open((uv_handle_t *)&w->stamp_timer);
    close_if_open((uv_handle_t *)&w->idle_timer);
    cw_proc_shutdown();
}

/* The one place the stop phase changes: enter `to` and do what it begins
 * with, then let stop_check move on when its condition already holds. */
static void stop_enter(cw_worker_t *w, cw_stop_phase_t to)
{
    if (!cw_stop_phase_allowed(w->stop_phase, to)) {
        cw_error("stop phase %s -> %s is not allowed", cw_stop_phase_name(w->stop_phase),
                 cw_stop_phase_name(to));
        abort(); /* a programmer error */
    }
    w->stop_phase = to;
    w->dispatch.refusing = true;
    uv_timer_stop(&w->stop_timer);
    switch (to) {
    case CW_STOP_DRAIN:
        uv_timer_start(&w->stop_timer, stop_timer_cb, w->cfg->drain_timeout, 0);
        break;
    case CW_STOP_INTERRUPT:
        cw_cmds_interrupt_all(&w->cmds, "worker shutting down");
        if (w->cmds.n > 0) {
            cw_info("waiting for %zu command(s) to end", w->cmds.n);
            uv_timer_start(&w->stop_timer, stop_timer_cb, w->cfg->kill_grace, 0);
        }
        break;
    case CW_STOP_KILL:
        cw_cmds_session_gone(&w->cmds, NULL);
        cw_proc_kill_all(SIGKILL);
        uv_timer_start(&w->stop_timer, stop_timer_cb, KILL_WAIT_MS, 0);
        break;
    case CW_STOP_ACKS:
        /* A `complete` the master has not answered may not be processed:
         * closing now would make it see a lost link and retry a build that
         * ended well.  Wait for the answers, briefly. */
        if (w->link && !w->abandon && w->link->ops->unanswered(w->link) > 0) {
            cw_info("waiting for the master to acknowledge %zu message(s)",
                    w->link->ops->unanswered(w->link));
            uv_timer_start(&w->stop_timer, stop_timer_cb, ACKS_WAIT_MS, 0);
        }
        break;
    case CW_STOP_LINGER:
        /* The master ends a build some time after its last step's
         * `complete` (database writes); a link lost before that turns the
         * build into a RETRY.  Msgpack has no worker-initiated graceful
         * shutdown (the master would tell us when it is done), so a drained
         * worker stays a moment. */
        if (w->link && w->linger && !w->abandon)
            uv_timer_start(&w->stop_timer, stop_timer_cb, LINGER_MS, 0);
        break;
    case CW_STOP_CLOSE:
        uv_timer_stop(&w->retry_timer);
        if (w->link)
            w->link->ops->close(w->link, 0, "worker stopping");
        else if (w->resolver.active)
            cw_resolve_cancel(&w->resolver);
        break;
    case CW_STOP_STOPPED:
        if (w->link_state != CW_LINK_DOWN)
            link_set_state(w, CW_LINK_DOWN);
        stop_release(w);
        return;
    default:
        break;
    }
    stop_check(w);
}

/* Leave the current phase if what it waits for is done. */
static void stop_check(cw_worker_t *w)
{
    bool idle = w->cmds.n == 0;
    switch (w->stop_phase) {
    case CW_STOP_DRAIN:
        if (idle) {
            w->linger = true;
            cw_info("stopping: every command finished");
            stop_enter(w, CW_STOP_ACKS);
        }
        break;
    case CW_STOP_INTERRUPT:
    case CW_STOP_KILL:
        if (idle)
            stop_enter(w, CW_STOP_ACKS);
        break;
    case CW_STOP_ACKS:
        if (!uv_is_active((uv_handle_t *)&w->stop_timer) ||
            (w->link == NULL || w->link->ops->unanswered(w->link) == 0))
            stop_enter(w, CW_STOP_LINGER);
        break;
    case CW_STOP_LINGER:
        if (!uv_is_active((uv_handle_t *)&w->stop_timer) || w->link == NULL)
            stop_enter(w, CW_STOP_CLOSE);
        break;
    case CW_STOP_CLOSE:
        if (w->link == NULL && !w->resolver.active && (idle || w->abandon))
            stop_enter(w, CW_STOP_STOPPED);
        break;
    default:
        break;
    }
}

void cw_worker_stop(cw_worker_t *w, int exit_code, const char *why)
{
    if (w->stop_phase != CW_STOP_RUN && w->stop_phase != CW_STOP_DRAIN)
        return;
    w->exit_code = exit_code;
    cw_info("stopping: %s", why ? why : "requested");
    cw_notify_stopping();
    uv_timer_stop(&w->retry_timer);
    if (w->link_state == CW_LINK_BACKOFF)
        link_set_state(w, CW_LINK_DOWN);
    stop_enter(w, CW_STOP_INTERRUPT);
}

/* SIGTERM: let running commands finish (up to --drain-timeout), refusing
 * new ones, then stop. */
static void worker_drain(cw_worker_t *w, const char *why)
{
    if (w->cmds.n == 0 || w->cfg->drain_timeout == 0) {
        cw_worker_stop(w, 0, why);
        return;
    }
    cw_info("%s: draining, waiting up to %.0f s for %zu running command(s); new commands are "
            "refused (SIGTERM again to interrupt them now)",
            why, (double)w->cfg->drain_timeout / 1000.0, w->cmds.n);
    cw_notify_stopping();
    stop_enter(w, CW_STOP_DRAIN);
}

/* SIGTERM drains, a second SIGTERM (or SIGINT) interrupts, a further one kills. */
static void on_signal(uv_signal_t *h, int signum)
{
    cw_worker_t *w = h->data;
    const char *name = signum == SIGINT ? "SIGINT" : "SIGTERM";
    if (w->stop_phase > CW_STOP_DRAIN) {
        cw_info("%s again: killing every command now", name);
        cw_cmds_session_gone(&w->cmds, NULL);
        cw_proc_kill_all(SIGKILL);
        return;
    }
    char why[64];
    snprintf(why, sizeof why, "%s received", name);
    if (signum == SIGTERM && w->stop_phase == CW_STOP_RUN)
        worker_drain(w, why);
    else
        cw_worker_stop(w, 0, why);
}

/* SIGHUP with --log-file (SIGUSR1 with allow-shutdown=signal): reopen it
 * (logrotate moved it away). */
static void on_log_signal(uv_signal_t *h, int signum)
{
    (void)h;
    if (cw_log_reopen() == 0)
        cw_info("%s: reopened the log file %s", signum == SIGHUP ? "SIGHUP" : "SIGUSR1",
                cw_log_file());
}

/* allow-shutdown: ask the master to stop us once the running build is
 * done; msgpack has no such request, so the worker drains by itself. */
static void worker_graceful_shutdown(cw_worker_t *w, const char *why)
{
    if (w->stop_phase != CW_STOP_RUN)
        return;
    if (w->link && w->link_state == CW_LINK_ATTACHED && w->link->ops->request_shutdown) {
        cw_info("%s: asking the master for a graceful shutdown", why);
        if (w->link->ops->request_shutdown(w->link) == 0)
            return;
    }
    if (w->link_state == CW_LINK_ATTACHED && w->cfg->protocol == CW_PROTO_MSGPACK)
        cw_info("%s: msgpack_experimental_v7 has no graceful shutdown request; draining here", why);
    worker_drain(w, why);
}

/* allow-shutdown=signal: SIGHUP */
static void on_shutdown_signal(uv_signal_t *h, int signum)
{
    (void)signum;
    worker_graceful_shutdown(h->data, "SIGHUP received");
}

/* allow-shutdown=file: BASEDIR/shutdown.stamp touched since the start */
static void stamp_timer_cb(uv_timer_t *t)
{
    cw_worker_t *w = t->data;
    struct stat st;
    if (stat(w->stamp_path, &st) < 0)
        return;
    double mtime = (double)CW_ST_MTIM(&st).tv_sec + (double)CW_ST_MTIM(&st).tv_nsec / 1e9;
    if (mtime < w->started_at || mtime <= w->stamp_seen)
        return;
    w->stamp_seen = mtime;
    worker_graceful_shutdown(w, "shutdown.stamp touched");
}

/* What /metrics reports, now. */
static void metrics_read(void *ctx, cw_metrics_snapshot_t *v)
{
    const cw_worker_t *w = ctx;
    v->attached = cw_worker_attached(w);
    v->connects = w->n_connects;
    v->commands = w->cmds.stats.started;
    v->commands_failed = w->cmds.stats.failed;
    v->commands_running = w->cmds.n;
    v->output_bytes = w->cmds.stats.bytes_output;
    v->transfer_bytes = w->cmds.stats.bytes_transfer;
    v->last_attach = w->last_attach;
    v->processes = cw_proc_live_count();
    v->relay = w->cfg->relay != NULL;
    v->relay_link_up = w->relay_up;
    v->relay_resumes = w->relay_resumes;
}

/* ---- start ---- */

int cw_worker_init(cw_worker_t *w, uv_loop_t *loop, const cw_config_t *cfg)
{
    extern char **environ;
    memset(w, 0, sizeof *w);
    w->loop = loop;
    w->cfg = cfg;
    w->environ = environ;
    w->link_state = CW_LINK_RESOLVING;
    w->stop_phase = CW_STOP_RUN;
    cw_cmd_env_t env = {
        .loop = loop,
        .environ = environ,
        .basedir = cfg->basedir,
        .umask = cfg->umask,
        .max_pending_output = cfg->max_pending_output,
        .max_commands = cfg->max_commands,
        .fs_max_depth = cfg->fs_max_depth,
        .now = cw_now,
    };
    cw_cmds_init(&w->cmds, &env, &worker_cmds_events, w);
    w->dispatch = (cw_dispatch_t){
        .cmds = &w->cmds,
        .info = {.basedir = cfg->basedir,
                 .environ = environ,
                 .numcpus = cfg->numcpus,
                 .delete_leftover_dirs = cfg->delete_leftover_dirs},
        .ops = &worker_dispatch_ops,
        .owner = w,
    };
    uv_timer_init(loop, &w->retry_timer);
    w->retry_timer.data = w;
    uv_timer_init(loop, &w->stop_timer);
    w->stop_timer.data = w;
    uv_signal_init(loop, &w->sig_term);
    uv_signal_init(loop, &w->sig_int);
    w->sig_term.data = w;
    w->sig_int.data = w;
    uv_signal_start(&w->sig_term, on_signal, SIGTERM);
    uv_signal_start(&w->sig_int, on_signal, SIGINT);
    /* SIGHUP keeps its default effect (exit) unless there is a log file to
     * reopen, or allow-shutdown=signal makes it ask for a graceful shutdown
     * (then SIGUSR1 reopens the log file) */
    uv_signal_init(loop, &w->sig_hup);
    uv_signal_init(loop, &w->sig_usr1);
    w->sig_hup.data = w;
    w->sig_usr1.data = w;
    if (cfg->allow_shutdown == CW_SHUTDOWN_SIGNAL) {
        uv_signal_start(&w->sig_hup, on_shutdown_signal, SIGHUP);
        if (cw_log_file())
            uv_signal_start(&w->sig_usr1, on_log_signal, SIGUSR1);
    } else if (cw_log_file()) {
        uv_signal_start(&w->sig_hup, on_log_signal, SIGHUP);
    }
    w->started_at = cw_now();
    uv_timer_init(loop, &w->stamp_timer);
    w->stamp_timer.data = w;
    uv_timer_init(loop, &w->idle_timer);
    w->idle_timer.data = w;
    if (cfg->allow_shutdown == CW_SHUTDOWN_FILE) {
        snprintf(w->stamp_path, sizeof w->stamp_path, "%s/shutdown.stamp", cfg->basedir);
        uv_timer_start(&w->stamp_timer, stamp_timer_cb, STAMP_CHECK_MS, STAMP_CHECK_MS);
    }
    const char *home = getenv("HOME");
    if (home == NULL || home[0] == '\0') {
        struct passwd *pw = getpwuid(getuid());
        home = pw ? pw->pw_dir : NULL;
    }
    if (home)
        snprintf(w->home, sizeof w->home, "%s", home);
    int rc = cw_proc_init(loop);
    if (rc < 0)
        return rc;
    w->dial_host = cfg->master_host;
    w->dial_port = cfg->master_port;
    if (strchr(cfg->master_host, ':'))
        snprintf(w->host_header, sizeof w->host_header, "[%s]:%d", cfg->master_host,
                 cfg->master_port);
    else
        snprintf(w->host_header, sizeof w->host_header, "%s:%d", cfg->master_host,
                 cfg->master_port);
    if (cfg->use_tls) {
        char err[400];
        w->tls_ctx =
            cw_tls_client_ctx(cfg->ca_file, cfg->client_cert, cfg->client_key, err, sizeof err);
        if (w->tls_ctx == NULL) {
            cw_error("TLS: %s", err);
            return CW_ETLS;
        }
    }
    if (cfg->relay && cfg->relay_tls) {
        char err[400];
        w->relay_tls_ctx =
            cw_tls_client_ctx(cfg->ca_file, cfg->client_cert, cfg->client_key, err, sizeof err);
        if (w->relay_tls_ctx == NULL) {
            cw_error("relay TLS: %s", err);
            return CW_ETLS;
        }
    }
    if (cfg->proxy) {
        if (cw_proxy_parse(cfg->proxy, &w->proxy) < 0) {
            cw_error("cannot use proxy '%s'", cfg->proxy);
            return -EINVAL;
        }
        w->dial_host = w->proxy.host;
        w->dial_port = w->proxy.port;
        /* the tunnel goes to the master; the Host header stays the master's */
        snprintf(w->proxy_target, sizeof w->proxy_target, "%s", w->host_header);
        if (w->proxy.user) {
            cw_buf_t b = CW_BUF_INIT;
            cw_http_basic_auth(&b, w->proxy.user, w->proxy.password ? w->proxy.password : "");
            cw_buf_append(&b, "", 1);
            w->proxy_auth = (char *)cw_buf_steal(&b, NULL);
        }
    }
    if (cfg->protocol == CW_PROTO_PB)
        cw_info("cworker %s starting: worker '%s', basedir %s, master %s (Perspective Broker%s)",
                CW_VERSION_STRING, cfg->name, cfg->basedir, w->host_header,
                cfg->use_tls ? " over TLS" : "");
    else
        cw_info("cworker %s starting: worker '%s', basedir %s, master %s://%s%s "
                "(msgpack_experimental_v7)",
                CW_VERSION_STRING, cfg->name, cfg->basedir, cfg->use_tls ? "wss" : "ws",
                w->host_header, cfg->master_path);
    if (cfg->proxy)
        cw_info("connecting through the HTTP proxy %s:%d", w->proxy.host, w->proxy.port);
    if (cfg->relay)
        cw_info("connecting through cworker-relay %s%s (a resumable tunnel)", cfg->relay,
                cfg->relay_tls ? " over TLS" : "");
    if (cfg->metrics_listen &&
        (rc = cw_metrics_start(loop, cfg->metrics_listen, metrics_read, w, &w->metrics)) < 0)
        return rc;
    worker_connect(w);
    return 0;
}
