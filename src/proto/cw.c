/* Error names and small string helpers shared by every layer. */
#include "cworker/cw.h"

#include "cworker/buf.h"

#include "cw_config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#if CW_HAVE_GETRANDOM
#include <sys/random.h>
#endif
#include <string.h>

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

bool cw_utf8_valid(const uint8_t *p, size_t len)
{
    size_t i = 0;
    while (i < len) {
        uint8_t c = p[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t n;
        uint32_t cp;
        if (c >= 0xC2 && c <= 0xDF) {
            n = 1;
            cp = c & 0x1F;
        } else if (c >= 0xE0 && c <= 0xEF) {
            n = 2;
            cp = c & 0x0F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            n = 3;
            cp = c & 0x07;
        } else {
            return false;
        }
        if (len - i <= n)
            return false;
        for (size_t k = 1; k <= n; k++) {
            if ((p[i + k] & 0xC0) != 0x80)
                return false;
            cp = (cp << 6) | (p[i + k] & 0x3F);
        }
        if ((n == 2 && cp < 0x800) || (n == 3 && (cp < 0x10000 || cp > 0x10FFFF)) ||
            (cp >= 0xD800 && cp <= 0xDFFF))
            return false;
        i += n + 1;
    }
    return true;
}

/* Length of the valid UTF-8 sequence starting at p[0], or 0 if invalid. */
static size_t utf8_seq_len(const uint8_t *p, size_t len)
{
    if (p[0] < 0x80)
        return 1;
    for (size_t n = 2; n <= 4 && n <= len; n++)
        if (cw_utf8_valid(p, n))
            return n;
    return 0;
}

int cw_utf8_repair(const uint8_t *p, size_t len, cw_buf_t *out)
{
    static const uint8_t repl[3] = {0xEF, 0xBF, 0xBD};
    size_t i = 0;
    while (i < len) {
        size_t start = i;
        while (i < len && p[i] < 0x80)
            i++;
        if (cw_buf_append(out, p + start, i - start) < 0)
            return -ENOMEM;
        if (i >= len)
            break;
        size_t n = utf8_seq_len(p + i, len - i);
        int rc = n ? cw_buf_append(out, p + i, n) : cw_buf_append(out, repl, 3);
        if (rc < 0)
            return rc;
        i += n ? n : 1;
    }
    return 0;
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
