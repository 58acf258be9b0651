/* sd_notify over $NOTIFY_SOCKET: a datagram per state change. */
#include "notify.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static struct {
    bool enabled;
    struct sockaddr_un addr;
    socklen_t addrlen;
    uint64_t watchdog_usec; /* 0 = no watchdog for us */
} notify_state;

/* Parse a decimal unsigned number that fills the whole string. */
static int parse_u64(const char *s, uint64_t *out)
{
    if (s == NULL || *s < '0' || *s > '9')
        return -EINVAL;
    uint64_t v = 0;
    for (; *s; s++) {
        if (*s < '0' || *s > '9')
            return -EINVAL;
        unsigned d = (unsigned)(*s - '0');
        if (v > (UINT64_MAX - d) / 10)
            return -ERANGE;
        v = v * 10 + d;
    }
    *out = v;
    return 0;
}

/* Fill notify_state.addr from a NOTIFY_SOCKET value. */
static int set_address(const char *s)
{
    size_t len = strlen(s);
    struct sockaddr_un *a = &notify_state.addr;
    memset(a, 0, sizeof *a);
    a->sun_family = AF_UNIX;
    if (len < 2 || len > sizeof a->sun_path - 1 || (s[0] != '/' && s[0] != '@'))
        return -EINVAL;
    memcpy(a->sun_path, s, len);
    if (s[0] == '@') {
        /* abstract name: leading NUL, and the length counts exactly the name */
        a->sun_path[0] = '\0';
        notify_state.addrlen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
    } else {
        notify_state.addrlen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + 1);
    }
    return 0;
}

int cw_notify_init(void)
{
    int rc = 0;
    memset(&notify_state, 0, sizeof notify_state);
    const char *sock = getenv("NOTIFY_SOCKET");
    if (sock && *sock) {
        rc = set_address(sock);
        notify_state.enabled = rc == 0;
    }
    uint64_t usec = 0, pid = 0;
    const char *wpid = getenv("WATCHDOG_PID");
    if (parse_u64(getenv("WATCHDOG_USEC"), &usec) == 0 && usec > 0 &&
        (wpid == NULL || (parse_u64(wpid, &pid) == 0 && pid == (uint64_t)getpid())))
        notify_state.watchdog_usec = usec;
    unsetenv("NOTIFY_SOCKET");
    unsetenv("WATCHDOG_USEC");
    unsetenv("WATCHDOG_PID");
    return rc;
}

int cw_notify(const char *state)
{
    if (!notify_state.enabled)
        return 0;
#if defined(SOCK_CLOEXEC) && defined(SOCK_NONBLOCK)
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return -errno;
#else
    /* macOS: no type flags.  Only the loop thread forks, so the descriptor
     * cannot leak into a child between the calls. */
    int fd = socket(AF_UNIX, SOCK_DGRAM, 0);
    if (fd < 0)
        return -errno;
    if (fcntl(fd, F_SETFD, FD_CLOEXEC) < 0 || fcntl(fd, F_SETFL, O_NONBLOCK) < 0) {
        int err = -errno;
        close(fd);
        return err;
    }
#endif
#ifdef MSG_NOSIGNAL
    int flags = MSG_NOSIGNAL;
#else
    int flags = 0; /* the worker ignores SIGPIPE (main.c) */
#endif
    ssize_t n = sendto(fd, state, strlen(state), flags, (const struct sockaddr *)&notify_state.addr,
                       notify_state.addrlen);
    int err = n < 0 ? -errno : 0;
    close(fd);
    return err;
}

int cw_notify_ready(void)
{
    return cw_notify("READY=1");
}

int cw_notify_status(const char *fmt, ...)
{
    if (!notify_state.enabled)
        return 0;
    char buf[512];
    memcpy(buf, "STATUS=", 7);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf + 7, sizeof buf - 7, fmt, ap);
    va_end(ap);
    /* one assignment per line: a line break would start another one */
    for (char *p = buf + 7; *p; p++)
        if (*p == '\n' || *p == '\r')
            *p = ' ';
    return cw_notify(buf);
}

int cw_notify_watchdog(void)
{
    return cw_notify("WATCHDOG=1");
}

int cw_notify_stopping(void)
{
    return cw_notify("STOPPING=1");
}

uint64_t cw_notify_watchdog_interval_ms(void)
{
    uint64_t ms = notify_state.watchdog_usec / 2000;
    return notify_state.watchdog_usec == 0 ? 0 : ms ? ms : 1;
}
