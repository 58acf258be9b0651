/* Figures about this process: see procstat.h. */
#include "procstat.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

long cw_rss_kib(void)
{
    /* read(2) and strtol, not stdio: cw_trim_idle calls this right after
     * dropping the code pages it does not need */
    char buf[128];
    int fd = open("/proc/self/statm", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n;
    do
        n = read(fd, buf, sizeof buf - 1);
    while (n < 0 && errno == EINTR);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    char *p;
    strtol(buf, &p, 10); /* size */
    long rss = strtol(p, NULL, 10);
    return rss * (sysconf(_SC_PAGESIZE) / 1024);
}
