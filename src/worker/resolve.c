/* Host name resolution (see resolve.h).  Two backends, chosen at build time
 * (meson option `resolver`):
 *
 * getaddrinfo (default): libuv's uv_getaddrinfo on the thread pool, i.e.
 *   glibc's resolver with everything nsswitch.conf configures (files, dns,
 *   mdns, systemd-resolved, LDAP ...).  A statically linked glibc program
 *   cannot load NSS modules, so this backend is wrong for static binaries.
 *
 * c-ares: Debian's libc-ares, linked in, driven from the loop (uv_poll on its
 *   sockets, a uv_timer for its retransmissions; no thread).  Per resolution
 *   it reads /etc/hosts and /etc/resolv.conf itself (nameserver, search,
 *   domain, options ndots/timeout/attempts/rotate) and needs nothing else
 *   from the system.  Limits: no NSS (no mDNS, LDAP, systemd-resolved's
 *   D-Bus API; a 127.0.0.53 stub in resolv.conf works like any nameserver). */
#include "resolve.h"

#include "cw_config.h"

#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Copy up to CW_RESOLVE_MAX socket addresses, setting the port. */
static size_t add_addr(cw_addr_t *addrs, size_t n, const struct sockaddr *sa, size_t salen,
                       int port)
{
    if (n >= CW_RESOLVE_MAX || salen > sizeof addrs[n].ss)
        return n;
    if (sa->sa_family != AF_INET && sa->sa_family != AF_INET6)
        return n;
    memset(&addrs[n].ss, 0, sizeof addrs[n].ss);
    memcpy(&addrs[n].ss, sa, salen);
    addrs[n].len = (socklen_t)salen;
    if (sa->sa_family == AF_INET)
        ((struct sockaddr_in *)&addrs[n].ss)->sin_port = htons((uint16_t)port);
    else
        ((struct sockaddr_in6 *)&addrs[n].ss)->sin6_port = htons((uint16_t)port);
    return n + 1;
}

#if CW_RESOLVER_CARES
/* ---- c-ares backend ------------------------------------------------------------------------ */
#include <ares.h>

#define CARES_MAX_SOCKS 16

typedef struct cares_req cares_req_t;

typedef struct cares_sock {
    uv_poll_t poll;
    ares_socket_t fd; /* ARES_SOCKET_BAD: slot free */
    cares_req_t *req;
    bool open; /* poll handle initialised and not yet closing */
} cares_sock_t;

/* One resolution's state: a channel (so /etc/resolv.conf and /etc/hosts are
 * read afresh each time), its sockets' poll handles and a timer.  Owned by
 * the cw_resolve_t while active; freed once every handle's close callback
 * has run (`handles` counts them). */
struct cares_req {
    cw_resolve_t *r; /* NULL once the result was delivered */
    ares_channel channel;
    bool channel_ok;
    uv_timer_t timer;
    cares_sock_t socks[CARES_MAX_SOCKS];
    int handles;
    int port;
    bool done;    /* ares callback ran; tear down after ares returns */
    bool in_ares; /* inside an ares_* call that may run the callback */
    bool torn_down;
    int status;
    cw_addr_t addrs[CW_RESOLVE_MAX];
    size_t n;
};

static int cares_lib_refs;

static int cares_status_to_uv(int status)
{
    switch (status) {
    case ARES_SUCCESS:
        return 0;
    case ARES_ENODATA:
        return UV_EAI_NODATA;
    case ARES_ENOTFOUND:
    case ARES_EBADNAME:
        return UV_EAI_NONAME;
    case ARES_ETIMEOUT:
    case ARES_ECONNREFUSED:
    case ARES_ESERVFAIL:
    case ARES_EREFUSED:
        return UV_EAI_AGAIN;
    case ARES_ENOMEM:
        return UV_EAI_MEMORY;
    case ARES_ECANCELLED:
    case ARES_EDESTRUCTION:
        return UV_ECANCELED;
    case ARES_EBADFAMILY:
        return UV_EAI_FAMILY;
    default:
        return UV_EAI_FAIL;
    }
}

static void cares_handle_closed(uv_handle_t *h)
{
    cares_req_t *q = h->data;
    if (--q->handles == 0)
        free(q);
}

static void cares_teardown(cares_req_t *q);

/* Deliver the result (once) and release the request. */
static void cares_finish(cares_req_t *q)
{
    cw_resolve_t *r = q->r;
    if (r != NULL) {
        q->r = NULL;
        r->backend = NULL;
        r->active = false;
        int status = q->status;
        if (status == 0 && q->n == 0)
            status = UV_EAI_NODATA;
        r->cb(r, status, q->addrs, status == 0 ? q->n : 0);
    }
    cares_teardown(q);
}

static void cares_after_call(cares_req_t *q)
{
    q->in_ares = false;
    if (q->done)
        cares_finish(q);
}

static void cares_arm_timer(cares_req_t *q);

/* Let c-ares work on a ready socket (rfd/wfd, ARES_SOCKET_BAD for none: then
 * only its timeouts), deliver the result if that ended the resolution, else
 * re-arm the timer for its next deadline. */
static void cares_process(cares_req_t *q, ares_socket_t rfd, ares_socket_t wfd)
{
    q->in_ares = true;
    ares_process_fd(q->channel, rfd, wfd);
    cares_after_call(q);
    if (!q->torn_down)
        cares_arm_timer(q);
}

static void cares_poll_cb(uv_poll_t *p, int status, int events)
{
    cares_sock_t *s = p->data;
    ares_socket_t rfd = ARES_SOCKET_BAD, wfd = ARES_SOCKET_BAD;
    /* on a poll error let c-ares see the socket as readable: its read fails
     * and it moves on to the next server */
    if (status < 0 || (events & (UV_READABLE | UV_DISCONNECT)))
        rfd = s->fd;
    if (status == 0 && (events & UV_WRITABLE))
        wfd = s->fd;
    cares_process(s->req, rfd, wfd);
}

static void cares_timer_cb(uv_timer_t *t)
{
    cares_process(t->data, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
}

static void cares_arm_timer(cares_req_t *q)
{
    struct timeval tv, *tvp = ares_timeout(q->channel, NULL, &tv);
    if (tvp == NULL) {
        uv_timer_stop(&q->timer);
        return;
    }
    uint64_t ms = (uint64_t)tvp->tv_sec * 1000 + (uint64_t)(tvp->tv_usec + 999) / 1000;
    uv_timer_start(&q->timer, cares_timer_cb, ms, 0);
}

/* c-ares tells us which of its sockets to watch. */
static void cares_sock_state_cb(void *data, ares_socket_t fd, int readable, int writable)
{
    cares_req_t *q = data;
    cares_sock_t *s = NULL, *free_slot = NULL;
    for (int i = 0; i < CARES_MAX_SOCKS; i++) {
        if (q->socks[i].open && q->socks[i].fd == fd)
            s = &q->socks[i];
        else if (!q->socks[i].open && free_slot == NULL)
            free_slot = &q->socks[i];
    }
    if (!readable && !writable) {
        if (s != NULL) {
            /* uv_close stops polling (and drops the fd from epoll) now,
             * before c-ares closes the descriptor */
            s->open = false;
            uv_close((uv_handle_t *)&s->poll, cares_handle_closed);
        }
        return;
    }
    if (s == NULL) {
        if (free_slot == NULL || uv_poll_init_socket(q->timer.loop, &free_slot->poll, fd) < 0)
            return; /* c-ares times the query out and tries the next server */
        s = free_slot;
        s->fd = fd;
        s->req = q;
        s->open = true;
        s->poll.data = s;
        q->handles++;
    }
    uv_poll_start(&s->poll, (readable ? UV_READABLE : 0) | (writable ? UV_WRITABLE : 0),
                  cares_poll_cb);
}

static void cares_gai_cb(void *arg, int status, int timeouts, struct ares_addrinfo *res)
{
    cares_req_t *q = arg;
    q->status = cares_status_to_uv(status);
    q->n = 0;
    if (status == ARES_SUCCESS && res != NULL)
        for (struct ares_addrinfo_node *ai = res->nodes; ai; ai = ai->ai_next)
            q->n = add_addr(q->addrs, q->n, ai->ai_addr, ai->ai_addrlen, q->port);
    if (res != NULL)
        ares_freeaddrinfo(res);
    q->done = true;
    if (!q->in_ares)
        cares_finish(q);
}

/* Close the channel (outside any c-ares callback) and every handle. */
static void cares_teardown(cares_req_t *q)
{
    if (q->torn_down)
        return;
    q->torn_down = true;
    if (q->channel_ok)
        ares_destroy(q->channel); /* closes its sockets: sock_state_cb(0, 0) each */
    q->channel_ok = false;
    for (int i = 0; i < CARES_MAX_SOCKS; i++)
        if (q->socks[i].open) {
            q->socks[i].open = false;
            uv_close((uv_handle_t *)&q->socks[i].poll, cares_handle_closed);
        }
    uv_close((uv_handle_t *)&q->timer, cares_handle_closed);
}

int cw_resolve_start(cw_resolve_t *r, uv_loop_t *loop, const char *host, int port, cw_resolve_cb cb)
{
    if (cares_lib_refs == 0) {
        int st = ares_library_init(ARES_LIB_INIT_ALL);
        if (st != ARES_SUCCESS)
            return cares_status_to_uv(st);
    }
    cares_lib_refs = 1;
    cares_req_t *q = calloc(1, sizeof *q);
    if (q == NULL)
        return UV_ENOMEM;
    q->port = port;
    for (int i = 0; i < CARES_MAX_SOCKS; i++)
        q->socks[i].fd = ARES_SOCKET_BAD;
    struct ares_options opts;
    memset(&opts, 0, sizeof opts);
    opts.sock_state_cb = cares_sock_state_cb;
    opts.sock_state_cb_data = q;
    int st = ares_init_options(&q->channel, &opts, ARES_OPT_SOCK_STATE_CB);
    if (st != ARES_SUCCESS) {
        free(q);
        return cares_status_to_uv(st);
    }
    q->channel_ok = true;
    uv_timer_init(loop, &q->timer);
    q->timer.data = q;
    q->handles = 1;
    q->r = r;
    r->loop = loop;
    r->cb = cb;
    r->backend = q;
    r->active = true;

    struct ares_addrinfo_hints hints;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_protocol = IPPROTO_TCP;
    q->in_ares = true;
    ares_getaddrinfo(q->channel, host, NULL, &hints, cares_gai_cb, q);
    q->in_ares = false;
    if (q->done) {
        /* answered at once (a literal address, /etc/hosts, or an error):
         * deliver from the loop, as the getaddrinfo backend does */
        uv_timer_start(&q->timer, cares_timer_cb, 0, 0);
        return 0;
    }
    cares_arm_timer(q);
    return 0;
}

void cw_resolve_cancel(cw_resolve_t *r)
{
    cares_req_t *q = r->backend;
    if (!r->active || q == NULL)
        return;
    if (q->done) {
        q->status = UV_ECANCELED;
        cares_finish(q);
        return;
    }
    q->in_ares = true;
    ares_cancel(q->channel); /* runs cares_gai_cb with ARES_ECANCELLED */
    cares_after_call(q);
}

const char *cw_resolve_backend(void)
{
    return "c-ares";
}

void cw_resolve_shutdown(void)
{
    if (cares_lib_refs) {
        ares_library_cleanup();
        cares_lib_refs = 0;
    }
}

#else
/* ---- getaddrinfo backend (uv_getaddrinfo) -------------------------------------------------- */

static void resolve_gai_cb(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    cw_resolve_t *r = req->data;
    r->active = false;
    cw_addr_t addrs[CW_RESOLVE_MAX];
    size_t n = 0;
    for (struct addrinfo *ai = res; status == 0 && ai; ai = ai->ai_next)
        n = add_addr(addrs, n, ai->ai_addr, ai->ai_addrlen,
                     ai->ai_family == AF_INET
                         ? ntohs(((struct sockaddr_in *)ai->ai_addr)->sin_port)
                         : ntohs(((struct sockaddr_in6 *)ai->ai_addr)->sin6_port));
    if (res)
        uv_freeaddrinfo(res);
    if (status == 0 && n == 0)
        status = UV_EAI_NODATA;
    r->cb(r, status, addrs, n);
}

int cw_resolve_start(cw_resolve_t *r, uv_loop_t *loop, const char *host, int port, cw_resolve_cb cb)
{
    char service[16];
    snprintf(service, sizeof service, "%d", port);
    struct addrinfo hints;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_ADDRCONFIG;
    r->loop = loop;
    r->cb = cb;
    r->gai.data = r;
    int rc = uv_getaddrinfo(loop, &r->gai, resolve_gai_cb, host, service, &hints);
    if (rc == 0)
        r->active = true;
    return rc;
}

void cw_resolve_cancel(cw_resolve_t *r)
{
    if (r->active)
        uv_cancel((uv_req_t *)&r->gai);
}

const char *cw_resolve_backend(void)
{
    return "getaddrinfo";
}

void cw_resolve_shutdown(void)
{
}
#endif
