/* Host name resolution for the master's address, behind one small API so a
 * static build can swap glibc's getaddrinfo (which needs NSS modules loaded
 * at run time) for a resolver linked in.  The default backend is libuv's
 * uv_getaddrinfo (thread pool). */
#ifndef CW_RESOLVE_H
#define CW_RESOLVE_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>
#include <uv.h>

#define CW_RESOLVE_MAX 16

typedef struct cw_addr {
    struct sockaddr_storage ss;
    socklen_t len;
} cw_addr_t;

typedef struct cw_resolve cw_resolve_t;

/* status 0: n >= 1 addresses in order of preference (valid during the call);
 * otherwise a negative libuv-style code (UV_ECANCELED after cancel). */
typedef void (*cw_resolve_cb)(cw_resolve_t *r, int status, const cw_addr_t *addrs, size_t n);

struct cw_resolve {
    uv_loop_t *loop;
    cw_resolve_cb cb;
    void *data;
    bool active;
    uv_getaddrinfo_t gai;
    void *backend; /* a linked-in resolver's state */
};

/* Resolve host (a name or a literal address) for TCP to port.  Returns 0
 * (cb will be called exactly once) or a negative code (it will not). */
int cw_resolve_start(cw_resolve_t *r, uv_loop_t *loop, const char *host, int port,
                     cw_resolve_cb cb);
/* Stop a resolution in progress; cb then reports UV_ECANCELED. */
void cw_resolve_cancel(cw_resolve_t *r);
/* Which backend this build uses (for logs and --version). */
const char *cw_resolve_backend(void);
/* Release what the backend keeps between resolutions (at exit). */
void cw_resolve_shutdown(void);

#endif
