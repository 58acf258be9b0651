/* Give back what an idle process holds but does not use: see memtrim.h. */
#include "memtrim.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifdef __linux__
#include <sys/mman.h>
#endif
#ifdef __GLIBC__
#include <malloc.h>
#endif

#include "procstat.h"

#if defined(__linux__) && defined(MADV_DONTNEED)

/* /proc/self/smaps of a small process is a few tens of KiB */
#define SMAPS_MAX  (4u << 20)
#define MAX_RANGES 256

typedef struct range {
    uintptr_t start, end;
} range_t;

/* Read a /proc file whole (its size is unknown until read). */
static char *read_proc(const char *path, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    size_t cap = 64 * 1024, n = 0;
    char *buf = malloc(cap + 1);
    while (buf != NULL) {
        if (n == cap) {
            char *nb = cap < SMAPS_MAX ? realloc(buf, cap * 2 + 1) : NULL;
            if (nb == NULL) {
                free(buf);
                buf = NULL;
                errno = ENOMEM;
                break;
            }
            buf = nb;
            cap *= 2;
        }
        ssize_t r = read(fd, buf + n, cap - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            int e = errno;
            free(buf);
            buf = NULL;
            errno = e;
            break;
        }
        if (r == 0) {
            buf[n] = '\0';
            *len = n;
            break;
        }
        n += (size_t)r;
    }
    int e = errno;
    close(fd);
    errno = e;
    return buf;
}

/* One mapping's header: "START-END PERMS OFFSET DEV INODE [PATH]".  True
 * when it is private, not writable and backed by a file. */
static bool header_eligible(const char *line, const char *eol, range_t *r)
{
    char *p;
    unsigned long long a = strtoull(line, &p, 16);
    if (*p != '-')
        return false;
    unsigned long long b = strtoull(p + 1, &p, 16);
    if (*p != ' ' || eol - p < 6)
        return false;
    const char *perms = p + 1; /* "r-xp" */
    if (perms[1] == 'w' || perms[3] != 'p')
        return false;
    /* the path is the first '/' after the inode (before it: numbers) */
    const char *path = memchr(perms, '/', (size_t)(eol - perms));
    if (path == NULL)
        return false;
    r->start = (uintptr_t)a;
    r->end = (uintptr_t)b;
    return b > a;
}

static bool is_header(const char *line)
{
    /* header lines start with a hex address; field lines with "Name:" */
    const char *p = line;
    while ((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f'))
        p++;
    return p > line && *p == '-';
}

/* A page of our own executable, mapped private and written to (so it is a
 * private copy), then made read-only: a mapping smaps must show as holding
 * a private page.  NULL when it cannot be made. */
static void *probe_map(size_t page)
{
    int fd = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    void *p = mmap(NULL, page, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    close(fd);
    if (p == MAP_FAILED)
        return NULL;
    volatile unsigned char *b = p;
    b[0] = b[0]; /* copy-on-write: the page is now private */
    if (mprotect(p, page, PROT_READ) != 0) {
        munmap(p, page);
        return NULL;
    }
    return p;
}

/* Set once smaps proved not to describe this process's pages. */
static bool smaps_untrusted;

int cw_trim_idle(cw_trim_stats_t *st)
{
    cw_trim_stats_t s = {.rss_before_kib = cw_rss_kib()};
    if (st)
        *st = s;
    if (smaps_untrusted)
        return -ENOTSUP;
    /* Everything below trusts smaps' "Anonymous:" line: a mapping it calls
     * clean loses its pages.  An emulator (qemu-user) may show the host's
     * mappings, or its own rendering of ours with no page counts; so the
     * same read must show the probe, a mapping we know holds a private
     * page, as holding one, or nothing is dropped. */
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    void *probe = probe_map(page);
    if (probe == NULL)
        return -(errno ? errno : EIO);
    size_t len = 0;
    char *smaps = read_proc("/proc/self/smaps", &len);
    if (smaps == NULL) {
        int e = errno ? errno : EIO;
        munmap(probe, page);
        return -e;
    }
    range_t ranges[MAX_RANGES];
    size_t n = 0;
    range_t cur = {0, 0};
    bool eligible = false, clean = false, is_probe = false, probe_private = false;
    for (char *line = smaps; line < smaps + len;) {
        char *eol = memchr(line, '\n', (size_t)(smaps + len - line));
        if (eol == NULL)
            eol = smaps + len;
        if (is_header(line)) {
            eligible = header_eligible(line, eol, &cur);
            is_probe = eligible && cur.start == (uintptr_t)probe;
            clean = false;
        } else if (eligible && strncmp(line, "Anonymous:", 10) == 0) {
            /* private (copy-on-write) pages in this mapping, in kB */
            clean = strtoul(line + 10, NULL, 10) == 0;
            if (is_probe)
                probe_private = !clean;
            else if (!clean)
                s.skipped++;
        } else if (eligible && strncmp(line, "VmFlags:", 8) == 0) {
            /* the last line of a mapping; " lo" = locked: keep */
            bool locked = memmem(line, (size_t)(eol - line), " lo", 3) != NULL;
            if (clean && !locked && !is_probe && n < MAX_RANGES)
                ranges[n++] = cur;
            eligible = false;
        }
        line = eol + 1;
    }
    free(smaps);
    munmap(probe, page);
    if (!probe_private) {
        smaps_untrusted = true;
        return -ENOTSUP;
    }
    /* only now: madvise changes what smaps would say */
    for (size_t i = 0; i < n; i++)
        if (madvise((void *)ranges[i].start, ranges[i].end - ranges[i].start, MADV_DONTNEED) == 0)
            s.mappings++;
#ifdef __GLIBC__
    malloc_trim(0);
#endif
    s.rss_after_kib = cw_rss_kib();
    if (st)
        *st = s;
    return 0;
}

#else

int cw_trim_idle(cw_trim_stats_t *st)
{
    if (st)
        *st = (cw_trim_stats_t){.rss_before_kib = cw_rss_kib(), .rss_after_kib = cw_rss_kib()};
    return 0;
}

#endif
