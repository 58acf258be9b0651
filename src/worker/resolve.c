/* Host name resolution: uv_getaddrinfo backend (see resolve.h). */
#include "resolve.h"

#include <netdb.h>
#include <stdio.h>
#include <string.h>

static void resolve_gai_cb(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    cw_resolve_t *r = req->data;
    r->active = false;
    cw_addr_t addrs[CW_RESOLVE_MAX];
    size_t n = 0;
    for (struct addrinfo *ai = res; status == 0 && ai && n < CW_RESOLVE_MAX; ai = ai->ai_next) {
        if (ai->ai_addrlen > sizeof addrs[n].ss)
            continue;
        memcpy(&addrs[n].ss, ai->ai_addr, ai->ai_addrlen);
        addrs[n].len = ai->ai_addrlen;
        n++;
    }
    if (res)
        uv_freeaddrinfo(res);
    if (status == 0 && n == 0)
        status = UV_EAI_NODATA;
    r->cb(r, status, addrs, n);
}

int cw_resolve_start(cw_resolve_t *r, uv_loop_t *loop, const char *host, int port,
                     cw_resolve_cb cb)
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
