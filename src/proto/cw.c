/* Error names and small string helpers shared by every layer. */
#include "cworker/cw.h"

#include "cworker/buf.h"

#include "cw_config.h"

#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#if CW_HAVE_GETRANDOM
#include <sys/random.h>
#endif
#include <string.h>

int cw_err_fmt(int code, char *err, size_t errlen, const char *fmt, ...)
{
    if (err != NULL && errlen > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return code;
}

const char *cw_strerror(int err)
{
    switch (err) {
    case 0:
        return "success";
    case CW_EPROTO:
        return "protocol violation by the peer";
    case CW_ETOOBIG:
        return "message exceeds the configured limit";
    case CW_EHANDSHAKE:
        return "WebSocket handshake failed";
    case CW_EAUTH:
        return "authentication refused by the master (HTTP 401): check worker name and password";
    case CW_ECLOSED:
        return "WebSocket closed";
    case CW_EBADMSG:
        return "malformed message";
    case CW_EMSGKEY:
        return "message lacks an obligatory key";
    case CW_EIGNORE:
        return "message ignored";
    case CW_EHTTP:
        return "malformed HTTP message";
    case CW_EBADARG:
        return "invalid command argument";
    case CW_ETIMEOUT:
        return "timed out";
    case CW_ETLS:
        return "TLS failure";
    default:
        break;
    }
    if (err < 0 && err > CW_ERR_BASE)
        return strerror(-err);
    return "unknown error";
}

bool cw_str_eq(cw_str_t s, const char *lit)
{
    size_t n = strlen(lit);
    return s.len == n && (n == 0 || memcmp(s.ptr, lit, n) == 0);
}

char *cw_str_dup(cw_str_t s)
{
    char *p = malloc(s.len + 1);
    if (p == NULL)
        return NULL;
    if (s.len)
        memcpy(p, s.ptr, s.len);
    p[s.len] = '\0';
    return p;
}

int cw_random_bytes(void *buf, size_t len)
{
    uint8_t *p = buf;
#if CW_HAVE_GETRANDOM
    /* Linux, FreeBSD >= 12 */
    while (len > 0) {
        ssize_t n = getrandom(p, len, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            break; /* ENOSYS on an old kernel: fall back */
        p += n;
        len -= (size_t)n;
    }
    if (len == 0)
        return 0;
#elif CW_HAVE_ARC4RANDOM_BUF
    /* macOS, older BSDs: the kernel-seeded CSPRNG of libc; it cannot fail */
    arc4random_buf(p, len);
    return 0;
#endif
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    while (len > 0) {
        ssize_t n = read(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            close(fd);
            return n < 0 ? -errno : -EIO;
        }
        p += n;
        len -= (size_t)n;
    }
    close(fd);
    return 0;
}

const void *cw_memrchr(const void *s, int c, size_t n)
{
#if CW_HAVE_MEMRCHR
    return memrchr(s, c, n);
#else
    const unsigned char *p = s;
    while (n > 0)
        if (p[--n] == (unsigned char)c)
            return p + n;
    return NULL;
#endif
}

int cw_mkstemp_cloexec(char *tmpl)
{
#if CW_HAVE_MKOSTEMP
    return mkostemp(tmpl, O_CLOEXEC);
#else
    /* not atomic, but only a fork in another thread could leak it, and
     * children mark every descriptor above 2 close-on-exec anyway */
    int fd = mkstemp(tmpl);
    if (fd >= 0)
        (void)fcntl(fd, F_SETFD, FD_CLOEXEC);
    return fd;
#endif
}

const char *cw_errstr(int errnum, char *buf, size_t len)
{
#if defined(__GLIBC__) && defined(_GNU_SOURCE)
    return strerror_r(errnum, buf, len); /* GNU: returns the text */
#else
    if (strerror_r(errnum, buf, len) != 0) /* XSI: fills buf */
        snprintf(buf, len, "error %d", errnum);
    return buf;
#endif
}
