/* cworker-relay: one session, between its worker link and the master.
 *
 * Worker -> master: the link's bytes go through cw_tun_feed(); new stream
 * bytes come out in session_on_data() and are written to the master.  They
 * are acknowledged to the worker only once the master's socket has taken
 * them (cw_tun_track_consumed), so a slow master fills the *worker's*
 * replay buffer and stops its writers, while the relay keeps reading the
 * link (pings, an ABORT, the link's end are never missed).  Pausing the link
 * is left as a fallback above the worker's buffer plus MASTER_SLACK.
 *
 * Master -> worker: the master's socket is read into the replay buffer,
 * never more than it has room for (the read buffer offered to libuv is cut
 * to the room); when it is full reading stops, and on_room restarts it.
 * session_pump() moves frames onto the link while its queue is short.
 *
 * While no link is attached (an outage) the master connection stays open and
 * quiet; the resume window timer ends the session if nobody comes back.
 */
#include "relay.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cworker/cw.h"
#include "log.h"

/* The relay acknowledges the worker's bytes once the master's socket took
 * them, so its queue for the master stays within the worker's announced
 * buffer.  Only repeated resumes while the master takes nothing can push it
 * further; then, above the worker's buffer plus MASTER_SLACK, the link is
 * paused (and resumed below half that). */
#define MASTER_SLACK (1u << 20)
#define READ_SIZE    (64 * 1024)
#define ACK_DELAY_MS 20

static uint8_t master_rbuf[READ_SIZE]; /* every master read is consumed inside its callback */
static uint8_t out_buf[4 * CW_TUN_OUTPUT_MIN];

static void session_pump(session_t *s);

static size_t master_high(const session_t *s)
{
    return (size_t)s->core.peer_buffer + MASTER_SLACK;
}
static void session_arm(session_t *s);
static void session_end(session_t *s, uint8_t tomb, bool abort_link, const char *why);
static void session_detach(session_t *s, const char *why);

/* The one place the state changes; keeps the detached count. */
static void session_set_state(session_t *s, session_state_t st)
{
    if (s->state == SS_DETACHED)
        s->r->ndetached--;
    if (st == SS_DETACHED)
        s->r->ndetached++;
    s->state = st;
}

static const char *sid(const session_t *s, char buf[17])
{
    snprintf(buf, 17, "%016llx", (unsigned long long)s->core.id);
    return buf;
}

/* ---- handles ------------------------------------------------------------ */

static void session_handle_closed(uv_handle_t *h)
{
    session_t *s = h->data;
    if (--s->handles_open > 0)
        return;
    relay_t *r = s->r;
    cw_tun_free(&s->core);
    free(s->creq);
    free(s);
    r->handles_open--;
}

static void attached_link_closed(cw_tunlink_t *l)
{
    relay_link_t *lk = (relay_link_t *)l;
    relay_t *r = lk->r;
    free(lk->dec);
    free(lk);
    r->handles_open--;
}

/* Let go of the attached link (it closes on its own; graceful: let the
 * queued frames, an ABORT or a last ACK, go first). */
static void session_release_link(session_t *s, bool graceful)
{
    relay_link_t *lk = s->link;
    if (lk == NULL)
        return;
    s->link = NULL;
    lk->s = NULL;
    s->link_held = false;
    cw_tunlink_close(&lk->l, graceful);
}

/* ---- master side -------------------------------------------------------- */

typedef struct master_wreq {
    uv_write_t req;
    session_t *s;
    size_t len;
    uint8_t data[];
} master_wreq_t;

/* Tell the session what the master's socket has taken: the worker's bytes
 * are acknowledged only then (everything received minus what is queued). */
static void session_update_consumed(session_t *s)
{
    uint64_t bytes = s->core.received - (s->core.fin_received ? 1 : 0);
    uint64_t queued = s->master_dead ? 0 : s->master_queued;
    cw_tun_consumed(&s->core, bytes - queued);
}

/* The master's socket cannot take anything any more. */
static void master_dead(session_t *s, const char *why)
{
    if (s->master_dead)
        return;
    char b[17];
    cw_info("session %s: master connection failed: %s", sid(s, b), why);
    s->master_dead = true;
    s->master_eof = true;
    if (s->master_reading) {
        uv_read_stop((uv_stream_t *)&s->master);
        s->master_reading = false;
    }
    cw_tun_write_fin(&s->core); /* the worker sees the master close */
    session_update_consumed(s);
    session_pump(s);
}

static void master_write_cb(uv_write_t *req, int status)
{
    master_wreq_t *w = (master_wreq_t *)req;
    session_t *s = w->s;
    s->master_queued -= w->len;
    free(w);
    if (s->state == SS_CLOSING)
        return;
    if (status < 0) {
        master_dead(s, uv_strerror(status));
        return;
    }
    if (s->link_held && s->master_queued < master_high(s) / 2) {
        s->link_held = false;
        if (s->link)
            cw_tunlink_pause(&s->link->l, false);
    }
    session_update_consumed(s);
    session_pump(s);
}

/* Bytes for the master: what the kernel takes now, the rest queued (copied). */
static int master_write(session_t *s, const uint8_t *data, size_t len)
{
    s->bytes_to_master += len;
    if (s->master_queued == 0 && s->state != SS_CONNECTING) {
        uv_buf_t b = uv_buf_init((char *)data, (unsigned)len);
        int n = uv_try_write((uv_stream_t *)&s->master, &b, 1);
        if (n > 0) {
            data += n;
            len -= (size_t)n;
        } else if (n < 0 && n != UV_EAGAIN) {
            master_dead(s, uv_strerror(n));
            return n;
        }
        if (len == 0)
            return 0;
    }
    master_wreq_t *w = malloc(sizeof *w + len);
    if (w == NULL)
        return -ENOMEM;
    memcpy(w->data, data, len);
    w->s = s;
    w->len = len;
    uv_buf_t b = uv_buf_init((char *)w->data, (unsigned)len);
    int rc = uv_write(&w->req, (uv_stream_t *)&s->master, &b, 1, master_write_cb);
    if (rc < 0) {
        free(w);
        master_dead(s, uv_strerror(rc));
        return rc;
    }
    s->master_queued += len;
    if (s->master_queued >= master_high(s) && s->link && !s->link_held) {
        /* only after resumes while the master is stuck: acknowledging what the master took
         * normally bounds this queue by the worker's buffer */
        s->link_held = true;
        cw_tunlink_pause(&s->link->l, true);
    }
    return 0;
}

static void master_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    session_t *s = h->data;
    (void)suggested;
    size_t room = cw_tun_room(&s->core);
    buf->base = (char *)master_rbuf;
    buf->len = room < READ_SIZE ? room : READ_SIZE; /* never more than the buffer takes */
}

static void master_read_cb(uv_stream_t *st, ssize_t n, const uv_buf_t *buf)
{
    session_t *s = st->data;
    if (s->state == SS_CLOSING)
        return;
    if (n == UV_ENOBUFS || n == 0) {
        if (cw_tun_room(&s->core) == 0 && s->master_reading) {
            uv_read_stop(st);
            s->master_reading = false;
        }
        return;
    }
    if (n < 0) {
        char b[17];
        if (n == UV_EOF)
            cw_info("session %s: the master closed the connection", sid(s, b));
        else
            cw_info("session %s: master connection: %s", sid(s, b), uv_strerror((int)n));
        uv_read_stop(st);
        s->master_reading = false;
        s->master_eof = true;
        if (n != UV_EOF)
            s->master_dead = true;
        cw_tun_write_fin(&s->core);
        session_pump(s);
        return;
    }
    size_t k = cw_tun_write(&s->core, (const uint8_t *)buf->base, (size_t)n);
    s->bytes_from_master += k;
    if (k < (size_t)n) {
        /* cannot happen: reads are cut to the room */
        session_end(s, CW_TUN_R_CLOSED, true, "replay buffer overrun");
        return;
    }
    if (cw_tun_room(&s->core) == 0) {
        /* full: stop reading the master until acknowledgements free room */
        uv_read_stop(st);
        s->master_reading = false;
        char b[17];
        cw_debug("session %s: replay buffer full (%zu bytes); master reads paused", sid(s, b),
                 cw_tun_buffered(&s->core));
    }
    session_pump(s);
}

static void master_read_start(session_t *s)
{
    if (s->master_reading || s->master_eof || s->state == SS_CLOSING || cw_tun_room(&s->core) == 0)
        return;
    if (uv_read_start((uv_stream_t *)&s->master, master_alloc, master_read_cb) == 0)
        s->master_reading = true;
}

static void master_shutdown_cb(uv_shutdown_t *req, int status)
{
    free(req);
}

/* ---- the session's cw_tun_t --------------------------------------------- */

static int session_on_data(void *ud, uint8_t *data, size_t len)
{
    session_t *s = ud;
    if (!s->master_dead && !s->master_shut && master_write(s, data, len) == -ENOMEM) {
        cw_tun_abort(&s->core, CW_TUN_R_INTERNAL, "relay out of memory");
        return -ENOMEM;
    }
    /* a dead master takes nothing: those bytes are dropped (the worker learns from our FIN) */
    session_update_consumed(s);
    return 0;
}

static void session_on_fin(void *ud)
{
    session_t *s = ud;
    char b[17];
    cw_info("session %s: the worker closed its stream", sid(s, b));
    session_update_consumed(s);
    if (s->master_dead || s->master_shut)
        return;
    s->master_shut = true;
    uv_shutdown_t *req = malloc(sizeof *req);
    if (req && uv_shutdown(req, (uv_stream_t *)&s->master, master_shutdown_cb) == 0)
        return;
    free(req);
}

static void session_on_room(void *ud)
{
    master_read_start(ud);
}

static void session_on_closed(void *ud, int reason, const char *text)
{
    session_t *s = ud;
    char why[300];
    if (reason == CW_TUN_R_ENDED)
        snprintf(why, sizeof why, "ended (both streams closed)");
    else
        snprintf(why, sizeof why, "ended by the worker: %s%s%s", cw_tun_reason_str(reason),
                 text[0] ? ": " : "", text);
    char b[17];
    cw_info("session %s: %s", sid(s, b), why);
    /* this runs inside cw_tun_feed(): the timer ends the session at once */
    s->ack_due = 0;
    session_arm(s);
}

static const cw_tun_callbacks_t session_core_callbacks = {
    .on_data = session_on_data,
    .on_fin = session_on_fin,
    .on_room = session_on_room,
    .on_open = NULL,
    .on_closed = session_on_closed,
};

/* ---- the link ----------------------------------------------------------- */

static void session_pump(session_t *s)
{
    relay_link_t *lk = s->link;
    if (lk == NULL || s->state == SS_CONNECTING)
        return;
    cw_tunlink_t *l = &lk->l;
    if (l->closing || l->failed || (l->tls && !l->tls_up))
        return;
    while (cw_tunlink_writable(l) && cw_tun_want_output(&s->core)) {
        size_t n = cw_tun_output(&s->core, out_buf, sizeof out_buf);
        if (n == 0)
            break;
        if (cw_tunlink_send(l, out_buf, n) < 0) {
            session_detach(s, l->why ? l->why : "write failed");
            return;
        }
    }
    if (cw_tun_ack_pending(&s->core) && s->ack_due == 0 && s->state == SS_ATTACHED) {
        s->ack_due = uv_now(s->r->loop) + ACK_DELAY_MS;
        session_arm(s);
    }
}

static void link_on_data(cw_tunlink_t *l, uint8_t *data, size_t len)
{
    relay_link_t *lk = (relay_link_t *)l;
    session_t *s = lk->s;
    if (s == NULL || s->link != lk)
        return;
    int rc = cw_tun_feed(&s->core, data, len);
    if (rc < 0 && rc != CW_ECLOSED && cw_tun_state(&s->core) != CW_TUN_ST_CLOSED) {
        /* our own failure (out of memory writing to the master) */
        cw_tun_abort(&s->core, CW_TUN_R_INTERNAL, cw_strerror(rc));
    }
    session_pump(s);
}

static void link_on_drain(cw_tunlink_t *l)
{
    relay_link_t *lk = (relay_link_t *)l;
    if (lk->s && lk->s->link == lk)
        session_pump(lk->s);
}

static void link_on_error(cw_tunlink_t *l, int err, const char *why)
{
    relay_link_t *lk = (relay_link_t *)l;
    session_t *s = lk->s;
    (void)err;
    if (s == NULL || s->link != lk) {
        cw_tunlink_close(l, false);
        return;
    }
    if (s->state == SS_CONNECTING) {
        /* no WELCOME was sent, so nobody can resume this session */
        char w[300];
        snprintf(w, sizeof w, "the worker's link was lost before the session opened: %s", why);
        session_end(s, 0, false, w);
        return;
    }
    char w[300];
    snprintf(w, sizeof w, "%s", why);
    session_detach(s, w);
}

static void link_on_ready(cw_tunlink_t *l)
{
    (void)l;
}

const cw_tunlink_callbacks_t session_link_callbacks = {
    .on_ready = link_on_ready,
    .on_data = link_on_data,
    .on_drain = link_on_drain,
    .on_error = link_on_error,
    .on_closed = attached_link_closed,
};

/* The worker's link is gone: keep the master connection, start the window. */
static void session_detach(session_t *s, const char *why)
{
    if (s->state != SS_ATTACHED)
        return;
    session_release_link(s, false);
    cw_tun_link_lost(&s->core);
    s->detached_at = uv_now(s->r->loop);
    s->ack_due = 0;
    session_set_state(s, SS_DETACHED);
    char b[17];
    cw_info("session %s: link from %s lost (%s); holding the master connection for up to %u s "
            "(%zu bytes buffered)",
            sid(s, b), s->peer, why, s->r->opt.resume_window, cw_tun_buffered(&s->core));
    session_arm(s);
}

/* Hand a link over to the session and feed it what came after HELLO. */
static void session_take_link(session_t *s, relay_link_t *lk, uint8_t *rest, size_t rest_len)
{
    lk->s = s;
    lk->l.cb = &session_link_callbacks;
    s->link = lk;
    snprintf(s->peer, sizeof s->peer, "%s", lk->peer);
    s->last_ping = uv_now(s->r->loop);
    s->link_held = false;
    if (s->master_queued >= master_high(s)) {
        s->link_held = true;
        cw_tunlink_pause(&lk->l, true);
    }
    if (rest_len)
        link_on_data(&lk->l, rest, rest_len);
}

void session_attach(session_t *s, relay_link_t *lk, uint8_t *rest, size_t rest_len)
{
    relay_t *r = s->r;
    uint64_t now = uv_now(r->loop);
    char b[17];
    if (s->state == SS_ATTACHED) {
        /* the old link died silently and we had not noticed yet */
        cw_info("session %s: resumed from %s; the old link from %s was still up and is "
                "replaced (replaying %llu bytes)",
                sid(s, b), lk->peer, s->peer, (unsigned long long)(s->core.end - s->core.sent));
        session_release_link(s, false);
    } else {
        cw_info("session %s: resumed from %s after %.1f s outage (replaying %llu bytes)", sid(s, b),
                lk->peer, (double)(now - s->detached_at) / 1000.0,
                (unsigned long long)(s->core.end - s->core.sent));
    }
    s->resumes++;
    r->resumes_total++;
    session_set_state(s, SS_ATTACHED);
    session_take_link(s, lk, rest, rest_len);
    s->tick_due = 0;
    session_arm(s);
    session_pump(s);
    master_read_start(s);
}

/* ---- timer: liveness, delayed ACK, resume window, deferred end ---------- */

static void session_timer_cb(uv_timer_t *h)
{
    session_t *s = h->data;
    relay_t *r = s->r;
    uint64_t now = uv_now(r->loop);
    char b[17];
    if (s->state == SS_CONNECTING) {
        cw_warn("new session from %s refused: connecting to the master %s timed out", s->peer,
                r->opt.master);
        relay_link_t *lk = s->link;
        s->link = NULL;
        if (lk) {
            lk->s = NULL;
            relay_link_refuse(lk, CW_TUN_R_UNREACHABLE, "connecting to the master timed out");
        }
        session_end(s, 0, false, NULL);
        return;
    }
    if (cw_tun_state(&s->core) == CW_TUN_ST_CLOSED) {
        session_pump(s); /* a last ACK or ABORT */
        /* a later resume hears ENDED only for a complete session: the worker takes that as
         * proof the relay had all its bytes */
        bool complete = cw_tun_close_reason(&s->core) == CW_TUN_R_ENDED;
        session_end(s, complete ? CW_TUN_R_ENDED : CW_TUN_R_CLOSED, false, NULL);
        return;
    }
    if (s->state == SS_DETACHED) {
        if (now - s->detached_at >= (uint64_t)r->opt.resume_window * 1000) {
            cw_warn("session %s: resume window of %u s expired; master connection closed, "
                    "session forgotten (%zu bytes buffered are lost)",
                    sid(s, b), r->opt.resume_window, cw_tun_buffered(&s->core));
            r->expired_total++;
            session_end(s, CW_TUN_R_EXPIRED, false, NULL);
            return;
        }
    } else if (s->state == SS_ATTACHED && s->link) {
        if (s->ack_due && now >= s->ack_due) {
            s->ack_due = 0;
            cw_tun_flush_ack(&s->core);
            session_pump(s);
            if (s->link == NULL)
                return;
        }
        cw_tunlink_t *l = &s->link->l;
        uint64_t quiet = now - l->last_rx;
        if (!l->paused && quiet >= r->opt.dead_timeout) {
            char why[96];
            snprintf(why, sizeof why, "link dead: nothing received for %.1f s",
                     (double)quiet / 1000.0);
            session_detach(s, why);
            return;
        }
        uint64_t ping = r->opt.dead_timeout / 3;
        if (quiet >= ping && now - s->last_ping >= ping) {
            s->last_ping = now;
            cw_tun_ping(&s->core, ++s->ping_seq);
            session_pump(s);
        }
    }
    s->tick_due = 0;
    session_arm(s);
}

/* Arm the timer for the nearest thing due. */
static void session_arm(session_t *s)
{
    if (s->state == SS_CLOSING)
        return;
    relay_t *r = s->r;
    uint64_t now = uv_now(r->loop);
    uint64_t due;
    if (cw_tun_state(&s->core) == CW_TUN_ST_CLOSED) {
        due = now;
    } else if (s->state == SS_DETACHED) {
        due = s->detached_at + (uint64_t)r->opt.resume_window * 1000;
    } else if (s->state == SS_ATTACHED) {
        uint64_t tick = r->opt.dead_timeout / 6;
        if (tick < 20)
            tick = 20;
        if (s->tick_due == 0 || s->tick_due < now)
            s->tick_due = now + tick;
        due = s->tick_due;
        if (s->ack_due && s->ack_due < due)
            due = s->ack_due;
    } else {
        due = s->created_at + RELAY_MASTER_CONNECT_MS;
    }
    uv_timer_start(&s->timer, session_timer_cb, due > now ? due - now : 0, 0);
}

/* ---- creation and the end ------------------------------------------------ */

/* Take the session out of the relay and close everything.  tomb: what a
 * later resume of this id is told (EXPIRED/ENDED), 0 for nothing. */
static void session_end(session_t *s, uint8_t tomb, bool abort_link, const char *why)
{
    if (s->state == SS_CLOSING)
        return;
    relay_t *r = s->r;
    if (why) {
        char b[17];
        cw_info("session %s: closed (%s)", sid(s, b), why);
    }
    if (abort_link && cw_tun_state(&s->core) != CW_TUN_ST_CLOSED) {
        cw_tun_abort(&s->core, CW_TUN_R_CLOSED, why);
        session_pump(s);
    }
    session_release_link(s, true);
    relay_forget(r, s, tomb);
    session_set_state(s, SS_CLOSING);
    uv_close((uv_handle_t *)&s->timer, session_handle_closed);
    uv_close((uv_handle_t *)&s->master, session_handle_closed);
}

void session_abort(session_t *s, const char *why)
{
    session_end(s, 0, true, why);
}

static void master_connect_cb(uv_connect_t *req, int status)
{
    session_t *s = req->data;
    relay_t *r = s->r;
    free(s->creq);
    s->creq = NULL;
    if (s->state == SS_CLOSING)
        return;
    char b[17];
    if (status < 0) {
        cw_warn("new session from %s refused: cannot connect to the master %s: %s", s->peer,
                r->opt.master, uv_strerror(status));
        relay_link_t *lk = s->link;
        s->link = NULL;
        if (lk) {
            lk->s = NULL;
            char why[200];
            snprintf(why, sizeof why, "cannot connect to the master: %s", uv_strerror(status));
            relay_link_refuse(lk, CW_TUN_R_UNREACHABLE, why);
        }
        session_end(s, 0, false, NULL);
        return;
    }
    uv_tcp_nodelay(&s->master, 1);
    uv_tcp_keepalive(&s->master, 1, 60);
    r->sessions_total++;
    if (s->link == NULL) {
        /* the worker went away while we connected: an outage from the start */
        s->detached_at = uv_now(r->loop);
        session_set_state(s, SS_DETACHED);
    } else {
        session_set_state(s, SS_ATTACHED);
    }
    cw_info("session %s: new from %s; master connection to %s up", sid(s, b), s->peer,
            r->opt.master);
    master_read_start(s);
    s->tick_due = 0;
    session_arm(s);
    session_pump(s); /* WELCOME */
}

void session_create(relay_t *r, relay_link_t *lk, const cw_tun_hello_t *h, uint8_t *rest,
                    size_t rest_len)
{
    session_t *s = calloc(1, sizeof *s);
    uv_connect_t *creq = malloc(sizeof *creq);
    uint64_t id = 0;
    uint8_t token[CW_TUN_TOKEN_LEN];
    int rc = s && creq ? 0 : -ENOMEM;
    if (rc == 0) {
        /* a fresh id that no live session has */
        do
            rc = cw_tun_new_credentials(&id, token);
        while (rc == 0 && relay_find(r, id) != NULL);
    }
    if (rc < 0) {
        free(s);
        free(creq);
        cw_error("new session from %s refused: %s", lk->peer, cw_strerror(rc));
        relay_link_refuse(lk, CW_TUN_R_INTERNAL, "relay out of memory");
        return;
    }
    s->r = r;
    s->creq = creq;
    cw_tun_init(&s->core, CW_TUN_SERVER, r->opt.buffer_size, &session_core_callbacks, s);
    cw_tun_track_consumed(&s->core);
    int reason = cw_tun_server_new(&s->core, id, token, h, r->opt.resume_window);
    if (reason > 0) {
        cw_warn("refused a new session from %s: %s", lk->peer, cw_tun_reason_str(reason));
        cw_tun_free(&s->core);
        free(s);
        free(creq);
        relay_link_refuse(lk, reason, cw_tun_reason_str(reason));
        return;
    }
    s->created_at = uv_now(r->loop);
    uv_tcp_init(r->loop, &s->master);
    uv_timer_init(r->loop, &s->timer);
    s->master.data = s->timer.data = s;
    creq->data = s;
    s->handles_open = 2;
    r->handles_open++;
    s->state = SS_CONNECTING;
    relay_insert(r, s);
    session_take_link(s, lk, NULL, 0);
    rc = uv_tcp_connect(creq, &s->master, (const struct sockaddr *)&r->master_addr,
                        master_connect_cb);
    if (rc < 0) {
        master_connect_cb(creq, rc);
        return;
    }
    session_arm(s);
    if (rest_len)
        link_on_data(&lk->l, rest, rest_len);
}
