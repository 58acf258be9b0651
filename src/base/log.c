/* Logging: "2026-11-28T03:14:59.123Z cworker: message" or JSON, one line per
 * event, to stderr or (cworker --log-file) to a file rotated like twistd.log. */
#include "log.h"

#include "cworker/buf.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static const char *log_program = "cworker";
static cw_log_level_t log_max = CW_LOG_INFO;
static cw_log_format_t log_format = CW_LOG_TEXT;

/* The log file.  Every field is guarded by log_lock (cw_log may one day be
 * called from a thread-pool job; today only the loop thread logs). */
#define RETRY_NS 10000000000LL /* a failing file or rotation is retried after 10 s */
#define CHECK_NS 1000000000LL  /* is the path still our file?  at most once a second */
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static struct {
    char *path;   /* NULL: stderr only */
    int fd;       /* -1 while failing (lines go to stderr) */
    bool regular; /* only regular files are rotated */
    dev_t dev;    /* identity of the open file, to notice removal or renaming */
    ino_t ino;
    uint64_t size;            /* bytes in the current file */
    uint64_t max_size;        /* rotate before a line would take size past this; 0 = never */
    unsigned keep;            /* rotated files kept; 0 = all */
    long long checked;        /* monotonic ns of the last identity check */
    long long failed;         /* when the file last failed (fd -1), for the retry */
    long long rotate_failed;  /* when a rotation last failed; 0 = it works */
    unsigned long lost_lines; /* lines that went to stderr while the file failed */
} lf = {.fd = -1};

void cw_log_setup(const char *program, cw_log_level_t max_level, cw_log_format_t format)
{
    log_program = program;
    log_max = max_level;
    log_format = format;
}

bool cw_log_enabled(cw_log_level_t level)
{
    return level <= log_max;
}

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Append s to out as a JSON string body (quotes not included). */
static size_t json_escape(char *out, size_t cap, const char *s)
{
    size_t n = 0;
    for (; *s && n + 7 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            out[n++] = '\\';
            out[n++] = (char)c;
        } else if (c < 0x20) {
            n += (size_t)snprintf(out + n, cap - n, "\\u%04x", c);
        } else {
            out[n++] = (char)c;
        }
    }
    out[n] = '\0';
    return n;
}

/* Format one complete line (with its '\n') into out; returns its length. */
static size_t format_line(char *out, size_t cap, cw_log_level_t level, const char *msg)
{
    static const char *names[] = {"error", "warning", "info", "debug"};
    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    gmtime_r(&tv.tv_sec, &tm);
    char ts[64];
    snprintf(ts, sizeof ts, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(tv.tv_usec / 1000));
    int n;
    if (log_format == CW_LOG_JSON) {
        char esc[2048 * 2];
        json_escape(esc, sizeof esc, msg);
        n = snprintf(out, cap,
                     "{\"time\":\"%s\",\"program\":\"%s\",\"level\":\"%s\",\"msg\":\"%s\"}\n", ts,
                     log_program, names[level], esc);
    } else if (level <= CW_LOG_WARN) {
        n = snprintf(out, cap, "%s %s: %s: %s\n", ts, log_program, names[level], msg);
    } else {
        n = snprintf(out, cap, "%s %s: %s\n", ts, log_program, msg);
    }
    if (n < 0)
        return 0;
    if ((size_t)n >= cap) { /* cut: the line still ends in '\n' */
        n = (int)cap - 1;
        out[n - 1] = '\n';
    }
    return (size_t)n;
}

/* write() all of buf; 0, or -errno with *done bytes written. */
static int write_all(int fd, const char *buf, size_t len, size_t *done)
{
    size_t off = 0;
    while (off < len) {
        ssize_t w = write(fd, buf + off, len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            if (done)
                *done = off;
            return w < 0 ? -errno : -EIO;
        }
        off += (size_t)w;
    }
    if (done)
        *done = off;
    return 0;
}

static void to_stderr(const char *line, size_t len)
{
    (void)write_all(STDERR_FILENO, line, len, NULL);
}

/* A line of the logger's own (a warning about the file itself). */
static size_t own_line(char *out, size_t cap, cw_log_level_t level, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static size_t own_line(char *out, size_t cap, cw_log_level_t level, const char *fmt, ...)
{
    char msg[PATH_MAX + 256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return format_line(out, cap, level, msg);
}

/* Open lf.path for appending; 0 or -errno.  The old descriptor (if any)
 * is closed only once the new one is open. */
static int file_open(void)
{
    /* A FIFO or socket in the file's place is refused ("Invalid argument");
     * O_NONBLOCK for the open only, so one that appears after this check
     * cannot block the daemon either (ENXIO, or refused below) */
    struct stat pre;
    if (stat(lf.path, &pre) == 0 && !S_ISREG(pre.st_mode) && !S_ISCHR(pre.st_mode))
        return -EINVAL;
    int fd = open(lf.path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOCTTY | O_NONBLOCK, 0644);
    if (fd < 0)
        return -errno;
    struct stat st;
    int e = 0;
    if (fstat(fd, &st) < 0)
        e = -errno;
    else if (!S_ISREG(st.st_mode) && !S_ISCHR(st.st_mode))
        e = -EINVAL; /* a FIFO or socket: "Invalid argument" */
    else if (fcntl(fd, F_SETFL, O_APPEND) < 0)
        e = -errno;
    if (e < 0) {
        close(fd);
        return e;
    }
    if (lf.fd >= 0)
        close(lf.fd);
    lf.fd = fd;
    lf.regular = S_ISREG(st.st_mode);
    lf.dev = st.st_dev;
    lf.ino = st.st_ino;
    lf.size = lf.regular ? (uint64_t)st.st_size : 0;
    lf.checked = now_ns();
    return 0;
}

/* The file failed (or cannot be opened): lines go to stderr until it works
 * again; one warning there per failure. */
static void file_failed(int err, const char *what)
{
    if (lf.fd >= 0)
        close(lf.fd);
    lf.fd = -1;
    lf.failed = now_ns();
    lf.lost_lines = 0;
    char line[PATH_MAX + 512];
    size_t n = own_line(line, sizeof line, CW_LOG_WARN,
                        "log file %s: %s: %s; logging to stderr until it can be written again "
                        "(retried every 10 s and on SIGHUP)",
                        lf.path, what, strerror(-err));
    to_stderr(line, n);
}

/* Back to the file after a failure: say so in it. */
static void file_recovered(void)
{
    char line[PATH_MAX + 512];
    size_t n = own_line(line, sizeof line, CW_LOG_WARN,
                        "log file %s: writing again; %lu line(s) went to stderr meanwhile", lf.path,
                        lf.lost_lines);
    if (write_all(lf.fd, line, n, NULL) == 0)
        lf.size += n;
}

/* Make a rotated file's name: "PATH.I". */
static int rotated_name(char *out, size_t cap, const char *path, unsigned i)
{
    int n = snprintf(out, cap, "%s.%u", path, i);
    return n < 0 || (size_t)n >= cap ? -ENAMETOOLONG : 0;
}

int cw_log_rotate_files(const char *path, unsigned keep)
{
    char a[PATH_MAX], b[PATH_MAX];
    struct stat st;
    unsigned top; /* the highest index that will be renamed to top + 1 */
    if (keep > 0) {
        /* drop the oldest, and any left over from a larger count */
        for (unsigned i = keep;; i++) {
            if (rotated_name(a, sizeof a, path, i) < 0)
                return -ENAMETOOLONG;
            if (unlink(a) < 0) {
                if (errno != ENOENT)
                    return -errno;
                if (i > keep)
                    break;
            }
        }
        top = keep - 1;
    } else {
        /* keep all: shift every existing PATH.1 .. PATH.N */
        top = 0;
        for (;;) {
            if (rotated_name(a, sizeof a, path, top + 1) < 0)
                return -ENAMETOOLONG;
            if (lstat(a, &st) < 0)
                break;
            top++;
        }
    }
    for (unsigned i = top; i >= 1; i--) {
        if (rotated_name(a, sizeof a, path, i) < 0 || rotated_name(b, sizeof b, path, i + 1) < 0)
            return -ENAMETOOLONG;
        if (rename(a, b) < 0 && errno != ENOENT)
            return -errno;
    }
    if (rotated_name(b, sizeof b, path, 1) < 0)
        return -ENAMETOOLONG;
    if (rename(path, b) < 0)
        return -errno;
    return 0;
}

/* Rotate the open file: shift the old ones, rename it to PATH.1, continue
 * in a new PATH.  A failure keeps the current file (retried after 10 s). */
static void file_rotate(void)
{
    long long now = now_ns();
    if (lf.rotate_failed && now - lf.rotate_failed < RETRY_NS)
        return;
    int rc = cw_log_rotate_files(lf.path, lf.keep);
    if (rc == 0) {
        rc = file_open();
        if (rc < 0) {
            file_failed(rc, "cannot open it after rotating");
            return;
        }
        lf.rotate_failed = 0;
        return;
    }
    bool first = lf.rotate_failed == 0;
    lf.rotate_failed = now;
    if (!first)
        return;
    char line[PATH_MAX + 512];
    size_t n = own_line(line, sizeof line, CW_LOG_WARN,
                        "log file %s: cannot rotate it: %s; it keeps growing (retried every "
                        "10 s)",
                        lf.path, strerror(-rc));
    if (write_all(lf.fd, line, n, NULL) == 0)
        lf.size += n;
}

/* Has the file at lf.path been removed or replaced (logrotate without
 * SIGHUP)?  Then continue in a new one. */
static void file_check_identity(long long now)
{
    if (now - lf.checked < CHECK_NS)
        return;
    lf.checked = now;
    struct stat st;
    if (stat(lf.path, &st) == 0 && st.st_dev == lf.dev && st.st_ino == lf.ino)
        return;
    int rc = file_open();
    if (rc < 0)
        file_failed(rc, "removed, and cannot be created again");
}

/* Write one line to the log file (or stderr); called with log_lock held. */
static void emit(const char *line, size_t len)
{
    if (lf.path == NULL) {
        to_stderr(line, len);
        return;
    }
    long long now = now_ns();
    if (lf.fd < 0 && now - lf.failed >= RETRY_NS) {
        if (file_open() == 0)
            file_recovered();
        else
            lf.failed = now;
    }
    if (lf.fd >= 0)
        file_check_identity(now);
    if (lf.fd >= 0 && lf.regular && lf.max_size && lf.size > 0 && lf.size + len > lf.max_size)
        file_rotate();
    if (lf.fd >= 0) {
        size_t done = 0;
        int rc = write_all(lf.fd, line, len, &done);
        if (rc == 0) {
            lf.size += len;
            return;
        }
        /* never leave half a line: cut it off again (we are the only writer) */
        if (done > 0 && lf.regular && ftruncate(lf.fd, (off_t)lf.size) < 0)
            done = 0;
        /* the file may be gone or the descriptor broken: one fresh try */
        if (file_open() == 0 && write_all(lf.fd, line, len, &done) == 0) {
            lf.size += len;
            return;
        }
        if (done > 0 && lf.fd >= 0 && lf.regular && ftruncate(lf.fd, (off_t)lf.size) < 0)
            done = 0;
        file_failed(rc, "cannot write it");
    }
    lf.lost_lines++;
    to_stderr(line, len);
}

int cw_log_open_file(const char *path, uint64_t max_size, unsigned keep)
{
    pthread_mutex_lock(&log_lock);
    int rc = 0;
    char *copy = path ? strdup(path) : NULL;
    if (path && copy == NULL) {
        rc = -ENOMEM;
        goto out;
    }
    if (lf.fd >= 0)
        close(lf.fd);
    free(lf.path);
    memset(&lf, 0, sizeof lf);
    lf.fd = -1;
    lf.path = copy;
    lf.max_size = max_size;
    lf.keep = keep;
    if (copy) {
        rc = file_open();
        if (rc < 0) {
            free(lf.path);
            lf.path = NULL;
        }
    }
out:
    pthread_mutex_unlock(&log_lock);
    return rc;
}

int cw_log_reopen(void)
{
    pthread_mutex_lock(&log_lock);
    int rc = 0;
    if (lf.path) {
        bool was_failing = lf.fd < 0;
        rc = file_open();
        if (rc < 0) {
            if (!was_failing)
                file_failed(rc, "cannot reopen it");
            else
                lf.failed = now_ns();
        } else if (was_failing) {
            file_recovered();
        }
    }
    pthread_mutex_unlock(&log_lock);
    return rc;
}

const char *cw_log_file(void)
{
    return lf.path;
}

void cw_log(cw_log_level_t level, const char *fmt, ...)
{
    if (level > log_max)
        return;
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (n >= (int)sizeof msg) {
        /* A long path or pattern: keep both ends of the line (what failed and
         * why usually sit at the ends), elide the middle, stay bounded. */
        char *whole = malloc((size_t)n + 1);
        if (whole != NULL) {
            va_start(ap, fmt);
            vsnprintf(whole, (size_t)n + 1, fmt, ap);
            va_end(ap);
            cw_buf_t b = CW_BUF_INIT;
            if (cw_buf_append_elided(&b, whole, sizeof msg - 1) == 0 && b.len < sizeof msg) {
                memcpy(msg, b.data, b.len);
                msg[b.len] = '\0';
            }
            cw_buf_free(&b);
            free(whole);
        }
    }
    char line[sizeof msg * 2 + 256];
    size_t len = format_line(line, sizeof line, level, msg);
    pthread_mutex_lock(&log_lock);
    emit(line, len);
    pthread_mutex_unlock(&log_lock);
}
