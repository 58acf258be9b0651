/* cworker-relay: accepting worker links and answering their HELLO (see relay.h). */
#include "relay.h"

#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cworker/cw.h"
#include "log.h"
#include "tls.h"

/* ---- the session table ------------------------------------------------ */

static unsigned bucket_of(uint64_t id)
{
    return (unsigned)((id ^ (id >> 29)) % RELAY_BUCKETS);
}

session_t *relay_find(relay_t *r, uint64_t id)
{
    for (session_t *s = r->buckets[bucket_of(id)]; s; s = s->next)
        if (s->core.id == id)
            return s;
    return NULL;
}

void relay_insert(relay_t *r, session_t *s)
{
    unsigned b = bucket_of(s->core.id);
    s->next = r->buckets[b];
    r->buckets[b] = s;
    r->nsessions++;
}

void relay_forget(relay_t *r, session_t *s, uint8_t tomb_reason)
{
    for (session_t **pp = &r->buckets[bucket_of(s->core.id)]; *pp; pp = &(*pp)->next)
        if (*pp == s) {
            *pp = s->next;
            r->nsessions--;
            break;
        }
    s->next = NULL;
    if (tomb_reason) {
        r->tomb[r->tomb_next].id = s->core.id;
        r->tomb[r->tomb_next].reason = tomb_reason;
        r->tomb_next = (r->tomb_next + 1) % RELAY_TOMBSTONES;
    }
    r->bytes_to_master += s->bytes_to_master;
    r->bytes_from_master += s->bytes_from_master;
}

/* What a recently forgotten id ended with (EXPIRED, ENDED, CLOSED), else UNKNOWN. */
static int tomb_reason(const relay_t *r, uint64_t id)
{
    for (unsigned i = 0; i < RELAY_TOMBSTONES; i++)
        if (r->tomb[i].id == id && r->tomb[i].reason)
            return r->tomb[i].reason;
    return CW_TUN_R_UNKNOWN;
}

size_t relay_bytes_buffered(const relay_t *r)
{
    size_t n = 0;
    for (unsigned b = 0; b < RELAY_BUCKETS; b++)
        for (const session_t *s = r->buckets[b]; s; s = s->next)
            n += cw_tun_buffered(&s->core);
    return n;
}

unsigned relay_masters_paused(const relay_t *r)
{
    unsigned n = 0;
    for (unsigned b = 0; b < RELAY_BUCKETS; b++)
        for (const session_t *s = r->buckets[b]; s; s = s->next)
            n += s->state != SS_CONNECTING && !s->master_reading && !s->master_eof;
    return n;
}

/* ---- pending links ------------------------------------------------------ */

static void pending_remove(relay_t *r, relay_link_t *lk)
{
    if (lk->prev)
        lk->prev->next = lk->next;
    else if (r->pending == lk)
        r->pending = lk->next;
    if (lk->next)
        lk->next->prev = lk->prev;
    lk->prev = lk->next = NULL;
}

static void pending_on_closed(cw_tunlink_t *l)
{
    relay_link_t *lk = (relay_link_t *)l;
    relay_t *r = lk->r;
    pending_remove(r, lk);
    free(lk->dec);
    free(lk);
    r->handles_open--;
}

void relay_link_refuse(relay_link_t *lk, int reason, const char *why)
{
    if (reason > 0 && reason <= CW_TUN_R_ENDED) {
        uint8_t fr[CW_TUN_TEXT_FRAME];
        size_t n = cw_tun_enc_reason(fr, CW_TUN_REFUSE, (uint8_t)reason, why);
        cw_tunlink_send(&lk->l, fr, n);
        lk->r->refusals[reason]++;
    }
    cw_tunlink_close(&lk->l, true);
}

/* A whole HELLO arrived on a pending link. */
static void on_hello(relay_t *r, relay_link_t *lk, const cw_tun_hello_t *h, uint8_t *rest,
                     size_t rest_len)
{
    char why[160];
    if (h->version != CW_TUN_VERSION) {
        snprintf(why, sizeof why, "version %u not supported (this relay speaks %u)", h->version,
                 CW_TUN_VERSION);
        cw_warn("refused %s from %s: %s", h->resume ? "a resume" : "a new session", lk->peer, why);
        relay_link_refuse(lk, CW_TUN_R_VERSION, why);
        return;
    }
    if (h->buffer > RELAY_MAX_PEER_BUFFER) {
        /* it bounds what we queue for the master on the worker's behalf */
        snprintf(why, sizeof why, "announced buffer %u over the relay's limit %u", h->buffer,
                 RELAY_MAX_PEER_BUFFER);
        cw_warn("refused %s from %s: %s", h->resume ? "a resume" : "a new session", lk->peer, why);
        relay_link_refuse(lk, CW_TUN_R_PROTOCOL, why);
        return;
    }
    if (!h->resume) {
        if (r->nsessions >= r->opt.max_sessions) {
            cw_warn("refused a new session from %s: %u sessions already (--max-sessions)", lk->peer,
                    r->nsessions);
            relay_link_refuse(lk, CW_TUN_R_BUSY, "session limit reached");
            return;
        }
        session_create(r, lk, h, rest, rest_len);
        return;
    }
    session_t *s = relay_find(r, h->id);
    int reason;
    if (s == NULL || s->state == SS_CONNECTING || s->state == SS_CLOSING)
        reason = s ? CW_TUN_R_UNKNOWN : tomb_reason(r, h->id);
    else
        reason = cw_tun_server_resume(&s->core, h, r->opt.resume_window);
    if (reason > 0) {
        /* the session itself (if any) is untouched */
        cw_warn("refused resume of session %016llx from %s: %s", (unsigned long long)h->id,
                lk->peer, cw_tun_reason_str(reason));
        relay_link_refuse(lk, reason, cw_tun_reason_str(reason));
        return;
    }
    session_attach(s, lk, rest, rest_len);
}

static void pending_on_data(cw_tunlink_t *l, uint8_t *data, size_t len)
{
    relay_link_t *lk = (relay_link_t *)l;
    relay_t *r = lk->r;
    size_t used;
    cw_tun_frame_t f;
    int rc = cw_tun_dec_feed(lk->dec, data, len, &used, &f);
    if (rc == 0)
        return; /* not whole yet */
    if (rc < 0 || f.type != CW_TUN_HELLO) {
        const char *why = rc < 0 ? cw_tun_dec_error(lk->dec) : "first frame is not HELLO";
        cw_warn("refused a link from %s: %s", lk->peer, why);
        relay_link_refuse(lk, CW_TUN_R_PROTOCOL, why);
        return;
    }
    pending_remove(r, lk);
    free(lk->dec);
    lk->dec = NULL;
    cw_tun_hello_t h = f.hello;
    on_hello(r, lk, &h, data + used, len - used);
}

static void pending_on_ready(cw_tunlink_t *l)
{
    (void)l; /* the worker speaks first */
}

static void pending_on_error(cw_tunlink_t *l, int err, const char *why)
{
    relay_link_t *lk = (relay_link_t *)l;
    cw_debug("link from %s closed before HELLO: %s", lk->peer, why);
    cw_tunlink_close(l, false);
}

static const cw_tunlink_callbacks_t pending_callbacks = {
    .on_ready = pending_on_ready,
    .on_data = pending_on_data,
    .on_error = pending_on_error,
    .on_closed = pending_on_closed,
};

static void on_connection(uv_stream_t *server, int status)
{
    relay_t *r = server->data;
    if (status < 0) {
        cw_warn("accept failed: %s", uv_strerror(status));
        return;
    }
    relay_link_t *lk = calloc(1, sizeof *lk);
    cw_tun_dec_t *dec = malloc(sizeof *dec);
    if (lk == NULL || dec == NULL) {
        free(lk);
        free(dec);
        /* accept and drop, or the listener would spin on the pending connection */
        uv_tcp_t *tmp = malloc(sizeof *tmp);
        if (tmp && uv_tcp_init(r->loop, tmp) == 0 && uv_accept(server, (uv_stream_t *)tmp) == 0)
            uv_close((uv_handle_t *)tmp, (uv_close_cb)free);
        else
            free(tmp);
        return;
    }
    cw_tun_dec_init(dec);
    lk->dec = dec;
    lk->r = r;
    cw_tunlink_init(r->loop, &lk->l, &pending_callbacks, lk);
    r->handles_open++;
    if (uv_accept(server, (uv_stream_t *)cw_tunlink_tcp(&lk->l)) < 0) {
        cw_tunlink_close(&lk->l, false);
        return;
    }
    r->links_total++;
    lk->accepted_at = uv_now(r->loop);
    lk->next = r->pending;
    if (r->pending)
        r->pending->prev = lk;
    r->pending = lk;
    cw_tunlink_peer(&lk->l, lk->peer, sizeof lk->peer);
    int rc = cw_tunlink_start(&lk->l, r->tls_ctx, true, NULL, r->opt.dead_timeout);
    if (rc < 0) {
        cw_warn("link from %s: %s", lk->peer, cw_strerror(rc));
        cw_tunlink_close(&lk->l, false);
    }
}

/* Links that never finish their HELLO are closed after RELAY_HELLO_TIMEOUT_MS. */
static void tick_cb(uv_timer_t *h)
{
    relay_t *r = h->data;
    uint64_t now = uv_now(r->loop);
    for (relay_link_t *lk = r->pending; lk; lk = lk->next) {
        if (!lk->l.closing && now - lk->accepted_at >= RELAY_HELLO_TIMEOUT_MS) {
            cw_warn("link from %s: no HELLO within %d s; closed", lk->peer,
                    RELAY_HELLO_TIMEOUT_MS / 1000);
            cw_tunlink_close(&lk->l, false);
        }
    }
}

/* ---- start / stop ------------------------------------------------------- */

int relay_parse_addr(const char *s, struct sockaddr_storage *ss)
{
    char host[256];
    const char *colon;
    if (s[0] == '[') {
        const char *end = strchr(s, ']');
        if (end == NULL || end[1] != ':' || (size_t)(end - s - 1) >= sizeof host)
            return -EINVAL;
        memcpy(host, s + 1, (size_t)(end - s - 1));
        host[end - s - 1] = '\0';
        colon = end + 1;
    } else {
        colon = strrchr(s, ':');
        if (colon == NULL || (size_t)(colon - s) >= sizeof host)
            return -EINVAL;
        memcpy(host, s, (size_t)(colon - s));
        host[colon - s] = '\0';
    }
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (colon[1] == '\0' || *end != '\0' || port < 0 || port > 65535)
        return -EINVAL;
    memset(ss, 0, sizeof *ss);
    if (uv_ip4_addr(host, (int)port, (struct sockaddr_in *)ss) == 0)
        return 0;
    if (uv_ip6_addr(host, (int)port, (struct sockaddr_in6 *)ss) == 0)
        return 0;
    return -EINVAL;
}

/* HOST:PORT where HOST may be a name: resolved once, at start-up (before the
 * loop runs, so the blocking lookup stalls nothing). */
static int resolve_master(const char *s, struct sockaddr_storage *ss)
{
    if (relay_parse_addr(s, ss) == 0)
        return 0;
    const char *colon = strrchr(s, ':');
    if (colon == NULL || colon == s)
        return -EINVAL;
    char host[256];
    if ((size_t)(colon - s) >= sizeof host)
        return -EINVAL;
    memcpy(host, s, (size_t)(colon - s));
    host[colon - s] = '\0';
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res = NULL;
    if (getaddrinfo(host, colon + 1, &hints, &res) != 0 || res == NULL)
        return -EHOSTUNREACH;
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    freeaddrinfo(res);
    return 0;
}

static void relay_handle_closed(uv_handle_t *h)
{
    relay_t *r = h->data;
    r->handles_open--;
}

int relay_start(relay_t *r, uv_loop_t *loop, const relay_options_t *opt)
{
    memset(r, 0, sizeof *r);
    r->loop = loop;
    r->opt = *opt;
    if (resolve_master(opt->master, &r->master_addr) < 0) {
        cw_error("--master '%s': not HOST:PORT, or the host does not resolve", opt->master);
        return -EINVAL;
    }
    struct sockaddr_storage ls;
    if (relay_parse_addr(opt->listen, &ls) < 0) {
        cw_error("--listen '%s' is not IP:PORT", opt->listen);
        return -EINVAL;
    }
    if (opt->tls_cert) {
        char err[400];
        r->tls_ctx = cw_tls_server_ctx(opt->tls_cert, opt->tls_key, err, sizeof err);
        if (r->tls_ctx == NULL) {
            cw_error("%s", err);
            return CW_ETLS;
        }
    }
    uv_tcp_init(loop, &r->listener);
    r->listener.data = r;
    r->handles_open++;
    int rc = uv_tcp_bind(&r->listener, (struct sockaddr *)&ls, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&r->listener, 511, on_connection);
    if (rc < 0) {
        cw_error("cannot listen on %s: %s", opt->listen, uv_strerror(rc));
        uv_close((uv_handle_t *)&r->listener, relay_handle_closed);
        cw_tls_ctx_free(r->tls_ctx);
        r->tls_ctx = NULL;
        return rc;
    }
    uv_timer_init(loop, &r->tick);
    r->tick.data = r;
    r->handles_open++;
    uv_timer_start(&r->tick, tick_cb, 1000, 1000);
    /* the address actually bound (port 0 picks one) */
    struct sockaddr_storage bound;
    int blen = sizeof bound;
    char ip[64] = "?";
    int port = 0;
    if (uv_tcp_getsockname(&r->listener, (struct sockaddr *)&bound, &blen) == 0) {
        if (bound.ss_family == AF_INET) {
            uv_ip4_name((struct sockaddr_in *)&bound, ip, sizeof ip);
            port = ntohs(((struct sockaddr_in *)&bound)->sin_port);
        } else {
            uv_ip6_name((struct sockaddr_in6 *)&bound, ip, sizeof ip);
            port = ntohs(((struct sockaddr_in6 *)&bound)->sin6_port);
        }
    }
    cw_info("cworker-relay %s listening on %s:%d (%s), master %s, resume window %u s, buffer "
            "%zu bytes, dead timeout %.1f s",
            CW_VERSION, ip, port,
            r->tls_ctx ? "TLS"
                       : "plain TCP: use --tls-cert off a trusted "
                         "network",
            opt->master, opt->resume_window, opt->buffer_size, (double)opt->dead_timeout / 1000);
    if (opt->metrics && (rc = relay_metrics_start(r)) < 0) {
        relay_stop(r);
        return rc;
    }
    return 0;
}

void relay_stop(relay_t *r)
{
    if (r->stopping)
        return;
    r->stopping = true;
    cw_info("stopping: %u sessions end (their workers reconnect from scratch)", r->nsessions);
    uv_close((uv_handle_t *)&r->listener, relay_handle_closed);
    uv_close((uv_handle_t *)&r->tick, relay_handle_closed);
    for (relay_link_t *lk = r->pending; lk; lk = lk->next)
        cw_tunlink_close(&lk->l, false);
    for (unsigned b = 0; b < RELAY_BUCKETS; b++)
        while (r->buckets[b])
            session_abort(r->buckets[b], "relay stopping");
    relay_metrics_stop(r);
    /* links still closing hold their own reference (SSL_new) */
    cw_tls_ctx_free(r->tls_ctx);
    r->tls_ctx = NULL;
}
