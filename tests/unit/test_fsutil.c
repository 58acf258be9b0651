/* Unit tests for the worker's file-system helpers: cw_glob against CPython's
 * glob.glob(recursive=True), cw_copytree against GNU cp -R -P -p -v,
 * cw_mkdirs / cw_rmtree, the tree walker and rm's safety rules; deep trees
 * under a low descriptor limit, small thread stacks, interrupts, trees moved
 * during a walk.  Everything runs in fresh directories under /tmp.  Root
 * bypasses permission checks, so the permission cases also run in a child
 * that has dropped to nobody. */
#undef _FORTIFY_SOURCE /* openat and copy_file_range are interposed below */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "fsutil.h"

#define PYTHON    "/usr/bin/python3"
#define NOBODY    65534
#define FAIL(...) (fprintf(stderr, __VA_ARGS__), 1)

/* ------------------------------------------------------------------------ */
/* Helpers                                                                  */
/* ------------------------------------------------------------------------ */

/* printf into a new heap string; aborts the test on failure. */
static char *xfmt(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *xfmt(const char *fmt, ...)
{
    va_list ap;
    char *s = NULL;
    va_start(ap, fmt);
    int n = vasprintf(&s, fmt, ap);
    va_end(ap);
    if (n < 0)
        abort();
    return s;
}

/* The buffer's bytes as a C string (the buffer keeps ownership). */
static const char *bstr(cw_buf_t *b)
{
    if (cw_buf_reserve(b, 1) < 0)
        abort();
    b->data[b->len] = '\0';
    return (const char *)b->data;
}

/* Run argv (found on PATH) in cwd with LC_ALL=C.UTF-8 so cp quotes names as
 * it would for the stock worker; collects stdout and stderr (either may be
 * NULL).  Returns the exit status, or -1. */
static int run(char *const argv[], const char *cwd, cw_buf_t *out, cw_buf_t *err)
{
    int po[2], pe[2];
    if (pipe2(po, O_CLOEXEC) < 0)
        return -1;
    if (pipe2(pe, O_CLOEXEC) < 0) {
        close(po[0]);
        close(po[1]);
        return -1;
    }
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        dup2(po[1], 1);
        dup2(pe[1], 2);
        if (cwd != NULL && chdir(cwd) < 0)
            _exit(127);
        setenv("LC_ALL", "C.UTF-8", 1);
        execvp(argv[0], argv);
        _exit(127);
    }
    close(po[1]);
    close(pe[1]);
    struct pollfd pf[2] = {{po[0], POLLIN, 0}, {pe[0], POLLIN, 0}};
    cw_buf_t *dest[2] = {out, err};
    int left = 2;
    while (left > 0) {
        if (poll(pf, 2, -1) < 0 && errno != EINTR)
            break;
        for (int i = 0; i < 2; i++) {
            if (pf[i].fd < 0 || pf[i].revents == 0)
                continue;
            char buf[8192];
            ssize_t n = read(pf[i].fd, buf, sizeof buf);
            if (n > 0) {
                if (dest[i] != NULL)
                    cw_buf_append(dest[i], buf, (size_t)n);
            } else if (n == 0 || errno != EINTR) {
                close(pf[i].fd);
                pf[i].fd = -1;
                left--;
            }
        }
    }
    int st;
    if (waitpid(pid, &st, 0) < 0)
        return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* Run a shell-free command for its side effects; 0 on success. */
static int sh(const char *a0, const char *a1, const char *a2, const char *a3)
{
    char *argv[] = {(char *)a0, (char *)a1, (char *)a2, (char *)a3, NULL};
    return run(argv, NULL, NULL, NULL);
}

/* A fresh directory under /tmp that nobody can enter too. */
static char *make_tmpdir(void)
{
    char *t = xfmt("/tmp/cw-fsutil-XXXXXX");
    if (mkdtemp(t) == NULL || chmod(t, 0755) < 0)
        abort();
    return t;
}

/* A fresh directory in memory (/dev/shm) where there is one, else under
 * /tmp: for the deep trees, which a journaling file system takes seconds
 * to make and remove. */
static char *make_fast_tmpdir(void)
{
    struct stat st;
    if (stat("/dev/shm", &st) < 0 || !S_ISDIR(st.st_mode) || access("/dev/shm", W_OK) < 0)
        return make_tmpdir();
    char *t = xfmt("/dev/shm/cw-fsutil-XXXXXX");
    if (mkdtemp(t) == NULL || chmod(t, 0755) < 0)
        abort();
    return t;
}

/* rm -rf, with permissions fixed first for a non-root run. */
static void remove_tmpdir(char *t)
{
    sh("chmod", "-R", "u+rwx", t);
    sh("rm", "-rf", t, NULL);
    free(t);
}

/* A file with the given content and mode; 0 or -1. */
static int write_file(const char *path, const char *data, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return -1;
    size_t n = strlen(data);
    int rc = write(fd, data, n) == (ssize_t)n ? 0 : -1;
    close(fd);
    return rc == 0 ? chmod(path, mode) : -1;
}

/* mkdir -p through the shell-free helper, for test set-up only. */
static int mkdir_p(const char *path)
{
    return sh("mkdir", "-p", path, NULL);
}

/* Names in dir, sorted; 0 or -errno when it cannot be read. */
static int list_sorted(const char *dir, cw_strlist_t *out)
{
    DIR *d = opendir(dir);
    if (d == NULL)
        return -errno;
    struct dirent *de;
    while ((de = readdir(d)) != NULL)
        if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0)
            cw_strlist_add(out, de->d_name);
    closedir(d);
    for (size_t i = 1; i < out->n; i++)
        for (size_t k = i; k > 0 && strcmp(out->v[k - 1], out->v[k]) > 0; k--) {
            char *t = out->v[k];
            out->v[k] = out->v[k - 1];
            out->v[k - 1] = t;
        }
    return 0;
}

/* How many descriptors this process has open. */
static int open_count(void)
{
    cw_strlist_t l = {0};
    list_sorted("/proc/self/fd", &l);
    int n = (int)l.n;
    cw_strlist_free(&l);
    return n;
}

/* Run fn(arg) in a child process, as nobody when we are root and drop is
 * set (so that permissions really apply); returns fn's exit code.  The
 * child ends in _exit, and valgrind checks its leaks there: the caller's
 * strings must still be found, but on that path (which never returns) the
 * compiler may reuse callee-saved registers holding them without saving
 * them.  __builtin_unwind_init makes this frame save them all first. */
__attribute__((noinline)) static int in_child(int (*fn)(void *), void *arg, bool drop)
{
    __builtin_unwind_init();
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        if (drop && geteuid() == 0 &&
            (setgroups(0, NULL) < 0 || setgid(NOBODY) < 0 || setuid(NOBODY) < 0))
            _exit(99);
        fflush(NULL);
        _exit(fn(arg));
    }
    int st;
    if (waitpid(pid, &st, 0) < 0)
        return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* ------------------------------------------------------------------------ */
/* Deep trees, descriptor limits, and a tree moved during a walk            */
/* ------------------------------------------------------------------------ */

/* Make depth nested directories named name under dir (leaving a file
 * "leaf" in the deepest; with files, a file "f" in each level too), one
 * level at a time through descriptors, so that no path grows past
 * PATH_MAX.  0 or -1. */
static int build_chain(const char *dir, int depth, const char *name, bool files)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    for (int i = 0; fd >= 0 && i <= depth; i++) {
        const char *file = i == depth ? "leaf" : files ? "f" : NULL;
        if (file != NULL) {
            int f = openat(fd, file, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
            if (f < 0 || write(f, file, strlen(file)) != (ssize_t)strlen(file)) {
                close(fd);
                fd = -1;
            }
            if (f >= 0)
                close(f);
        }
        if (fd < 0 || i == depth)
            break;
        int sub = mkdirat(fd, name, 0755) == 0
                      ? openat(fd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
                      : -1;
        close(fd);
        fd = sub;
    }
    if (fd < 0)
        return -1;
    close(fd);
    return 0;
}

/* The name repeated to a given length, for long path components. */
static char *long_name(char c, size_t len)
{
    char *s = malloc(len + 1);
    if (s == NULL)
        abort();
    memset(s, c, len);
    s[len] = '\0';
    return s;
}

/* Seconds on the monotonic clock. */
static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Lower this process's descriptor limit (in a child: it stays lowered). */
static int limit_fds(rlim_t n)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
        return -1;
    rl.rlim_cur = n;
    return setrlimit(RLIMIT_NOFILE, &rl);
}

/* A line "key: N kB" of /proc/self/status, in KiB; -1 where unknown. */
static long status_kib(const char *key)
{
    FILE *f = fopen("/proc/self/status", "re");
    char line[256];
    long v = -1;
    size_t n = strlen(key);
    while (f != NULL && fgets(line, sizeof line, f) != NULL)
        if (strncmp(line, key, n) == 0 && line[n] == ':')
            v = strtol(line + n + 1, NULL, 10);
    if (f != NULL)
        fclose(f);
    return v;
}

/* Start a new peak: Linux resets VmHWM to the current RSS on "5" in
 * clear_refs.  Returns the RSS to measure growth from (KiB): the current
 * one, or where that cannot be done, the peak so far (getrusage). */
static long peak_reset(void)
{
    int fd = open("/proc/self/clear_refs", O_WRONLY | O_CLOEXEC);
    bool reset = fd >= 0 && write(fd, "5", 1) == 1;
    if (fd >= 0)
        close(fd);
    if (reset && status_kib("VmRSS") >= 0)
        return status_kib("VmRSS");
    struct rusage ru;
    return getrusage(RUSAGE_SELF, &ru) == 0 ? ru.ru_maxrss : -1;
}

/* The peak RSS since peak_reset (KiB). */
static long peak_now(void)
{
    long hwm = status_kib("VmHWM");
    struct rusage ru;
    return hwm >= 0 ? hwm : getrusage(RUSAGE_SELF, &ru) == 0 ? ru.ru_maxrss : -1;
}

#ifdef __linux__
/* The walks reopen a directory whose descriptor they let go through "..".
 * This test binary's openat() is a hook for that moment: when armed, the
 * reopen number move_at renames move_from to move_to first, as someone
 * moving the tree under the walk would (every other call goes straight to
 * the kernel). */
#define HAVE_MOVE_HOOK 1
static const char *move_from, *move_to;
static int move_at, move_seen;

int openat(int dirfd, const char *path, int flags, ...)
{
    int mode = 0;
    if ((flags & O_CREAT) != 0 || (flags & O_TMPFILE) == O_TMPFILE) {
        va_list ap;
        va_start(ap, flags);
        mode = va_arg(ap, int);
        va_end(ap);
    }
    if (move_from != NULL && strcmp(path, "..") == 0 && ++move_seen == move_at) {
        if (rename(move_from, move_to) < 0)
            fprintf(stderr, "hook: rename %s: %s\n", move_from, strerror(errno));
        move_from = NULL;
    }
    return (int)syscall(SYS_openat, dirfd, path, flags, mode);
}

/* A slow disk, for interrupting copies: while slow_rate (bytes a second)
 * is set, this binary's copy_file_range() and pwrite() take the time that
 * many bytes would take there; with no_cfr, copy_file_range() fails as it
 * does across file systems, so that cp_range falls back to pread/pwrite. */
static atomic_long slow_rate;
static atomic_bool no_cfr, cfr_refused;

/* Sleep as long as n bytes take at slow_rate. */
static void slow_down(ssize_t n)
{
    long rate = atomic_load(&slow_rate);
    if (n <= 0 || rate <= 0)
        return;
    double s = (double)n / (double)rate;
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

#if CW_HAVE_COPY_FILE_RANGE && defined(SYS_copy_file_range)
ssize_t copy_file_range(int in, off64_t *in_off, int out, off64_t *out_off, size_t len,
                        unsigned int flags)
{
    if (atomic_load(&no_cfr)) {
        errno = EXDEV;
        return -1;
    }
    ssize_t n = (ssize_t)syscall(SYS_copy_file_range, in, in_off, out, out_off, len, flags);
    if (n < 0)
        atomic_store(&cfr_refused, true);
    slow_down(n);
    return n;
}
#endif

#if defined(__LP64__) && defined(SYS_pwrite64)
#define HAVE_SLOW_PWRITE 1
ssize_t pwrite(int fd, const void *buf, size_t n, off_t off)
{
    ssize_t r = (ssize_t)syscall(SYS_pwrite64, fd, buf, n, off);
    slow_down(r);
    return r;
}
#endif

/* Arm the hook: the n-th reopen through ".." renames from to to. */
static void move_on_reopen(const char *from, const char *to, int n)
{
    move_from = from;
    move_to = to;
    move_at = n;
    move_seen = 0;
}
#endif

/* ------------------------------------------------------------------------ */
/* Tree snapshots: stamping times and comparing two copies                  */
/* ------------------------------------------------------------------------ */

/* Give every entry under path (itself last) distinct old times with
 * nanoseconds, in a fixed order, so two stampings of equal trees agree. */
static void stamp_tree(const char *path, long *k)
{
    struct stat st;
    if (lstat(path, &st) < 0)
        return;
    if (S_ISDIR(st.st_mode)) {
        cw_strlist_t names = {0};
        list_sorted(path, &names);
        for (size_t i = 0; i < names.n; i++) {
            char *sub = xfmt("%s/%s", path, names.v[i]);
            stamp_tree(sub, k);
            free(sub);
        }
        cw_strlist_free(&names);
    }
    ++*k;
    struct timespec ts[2] = {{1000000000 + *k * 1000, 111111111 + *k},
                             {900000000 + *k * 1000, 222222222 + *k}};
    utimensat(AT_FDCWD, path, ts, AT_SYMLINK_NOFOLLOW);
}

/* stamp_tree from a fresh count. */
static void stamp(const char *path)
{
    long k = 0;
    stamp_tree(path, &k);
}

/* Same bytes in two files; a file neither side can open counts as equal
 * when both fail alike.  (Buffers on the heap: compare_trees recurses.) */
static int same_content(const char *a, const char *b)
{
    int fa = open(a, O_RDONLY | O_CLOEXEC), fb = open(b, O_RDONLY | O_CLOEXEC);
    int bad = 0;
    char *ba = malloc(65536), *bb = malloc(65536);
    if (ba == NULL || bb == NULL) {
        bad = 1;
    } else if (fa < 0 || fb < 0) {
        bad = (fa < 0) != (fb < 0);
    } else {
        for (;;) {
            ssize_t na = read(fa, ba, 65536), nb = read(fb, bb, 65536);
            if (na != nb || na < 0 || memcmp(ba, bb, (size_t)na) != 0) {
                bad = 1;
                break;
            }
            if (na == 0)
                break;
        }
    }
    if (fa >= 0)
        close(fa);
    if (fb >= 0)
        close(fb);
    free(ba);
    free(bb);
    return bad;
}

/* Same link target at a and b (0 when so). */
static int same_target(const char *a, const char *b)
{
    char *ta = malloc(4096), *tb = malloc(4096);
    ssize_t na = readlink(a, ta, 4096), nb = readlink(b, tb, 4096);
    int bad = na != nb || na < 0 || memcmp(ta, tb, (size_t)na) != 0;
    free(ta);
    free(tb);
    return bad;
}

/* Compare the trees at a and b: type, mode, owner, size, content, link
 * target, device, atime and mtime to the nanosecond.  Each entry's stat is
 * taken before it is read, as reading moves atimes.  Returns the number of
 * differences (each printed). */
static int compare_trees(const char *a, const char *b, const char *rel)
{
    struct stat sa, sb;
    int bad = 0;
    if (lstat(a, &sa) < 0 || lstat(b, &sb) < 0)
        return FAIL("%s: missing on one side\n", rel);
    if (sa.st_mode != sb.st_mode)
        bad += FAIL("%s: mode %o vs %o\n", rel, (unsigned)sa.st_mode, (unsigned)sb.st_mode);
    if (sa.st_uid != sb.st_uid || sa.st_gid != sb.st_gid)
        bad += FAIL("%s: owner %u:%u vs %u:%u\n", rel, (unsigned)sa.st_uid, (unsigned)sa.st_gid,
                    (unsigned)sb.st_uid, (unsigned)sb.st_gid);
    if (sa.st_mtim.tv_sec != sb.st_mtim.tv_sec || sa.st_mtim.tv_nsec != sb.st_mtim.tv_nsec)
        bad += FAIL("%s: mtime %ld.%09ld vs %ld.%09ld\n", rel, (long)sa.st_mtim.tv_sec,
                    sa.st_mtim.tv_nsec, (long)sb.st_mtim.tv_sec, sb.st_mtim.tv_nsec);
    if (sa.st_atim.tv_sec != sb.st_atim.tv_sec || sa.st_atim.tv_nsec != sb.st_atim.tv_nsec)
        bad += FAIL("%s: atime %ld.%09ld vs %ld.%09ld\n", rel, (long)sa.st_atim.tv_sec,
                    sa.st_atim.tv_nsec, (long)sb.st_atim.tv_sec, sb.st_atim.tv_nsec);
    if ((sa.st_mode & S_IFMT) != (sb.st_mode & S_IFMT))
        return bad;
    if (S_ISREG(sa.st_mode)) {
        if (sa.st_size != sb.st_size)
            bad += FAIL("%s: size %ld vs %ld\n", rel, (long)sa.st_size, (long)sb.st_size);
        else if (same_content(a, b) != 0)
            bad += FAIL("%s: content differs\n", rel);
    } else if (S_ISLNK(sa.st_mode)) {
        if (same_target(a, b) != 0)
            bad += FAIL("%s: link target differs\n", rel);
    } else if (S_ISCHR(sa.st_mode) || S_ISBLK(sa.st_mode)) {
        if (sa.st_rdev != sb.st_rdev)
            bad += FAIL("%s: device differs\n", rel);
    } else if (S_ISDIR(sa.st_mode)) {
        cw_strlist_t na = {0}, nb = {0};
        int ra = list_sorted(a, &na), rb = list_sorted(b, &nb);
        if (ra != rb)
            bad += FAIL("%s: listing %d vs %d\n", rel, ra, rb);
        if (na.n != nb.n)
            bad += FAIL("%s: %zu vs %zu entries\n", rel, na.n, nb.n);
        for (size_t i = 0; i < na.n && i < nb.n; i++) {
            if (strcmp(na.v[i], nb.v[i]) != 0) {
                bad += FAIL("%s: entry '%s' vs '%s'\n", rel, na.v[i], nb.v[i]);
                break;
            }
            char *ca = xfmt("%s/%s", a, na.v[i]), *cb = xfmt("%s/%s", b, nb.v[i]);
            char *cr = xfmt("%s/%s", rel, na.v[i]);
            bad += compare_trees(ca, cb, cr);
            free(ca);
            free(cb);
            free(cr);
        }
        cw_strlist_free(&na);
        cw_strlist_free(&nb);
    }
    return bad;
}

/* ------------------------------------------------------------------------ */
/* String lists                                                             */
/* ------------------------------------------------------------------------ */

/* Growth, copies and a NULL-safe, repeatable free. */
static void strlist_basics(void **state)
{
    (void)state;
    cw_strlist_t l = {0};
    for (int i = 0; i < 1000; i++) {
        char s[16];
        snprintf(s, sizeof s, "item%d", i);
        assert_int_equal(cw_strlist_add(&l, s), 0);
    }
    assert_int_equal(l.n, 1000);
    assert_string_equal(l.v[0], "item0");
    assert_string_equal(l.v[999], "item999");
    cw_strlist_free(&l);
    assert_null(l.v);
    assert_int_equal(l.n, 0);
    cw_strlist_free(&l); /* again: harmless */
    cw_strlist_free(NULL);
}

/* ------------------------------------------------------------------------ */
/* glob                                                                     */
/* ------------------------------------------------------------------------ */

/* A glob run on a thread of its own, with a small stack. */
typedef struct glob_job {
    const char *pattern;
    size_t max_depth;
    cw_strlist_t out;
    cw_buf_t err;
    int rc;
} glob_job_t;

/* Thread body: the glob. */
static void *glob_thread(void *arg)
{
    glob_job_t *j = arg;
    j->rc = cw_glob(j->pattern, j->max_depth, NULL, &j->out, &j->err);
    return NULL;
}

/* Run the glob on a thread whose stack is stack bytes: 0 when the thread
 * ran (a stack overflow kills the process instead). */
static int glob_on_small_stack(glob_job_t *j, size_t stack)
{
    pthread_attr_t attr;
    pthread_t th;
    if (pthread_attr_init(&attr) != 0 || pthread_attr_setstacksize(&attr, stack) != 0)
        return -1;
    int rc = pthread_create(&th, &attr, glob_thread, j);
    pthread_attr_destroy(&attr);
    if (rc != 0)
        return -1;
    return pthread_join(th, NULL) == 0 ? 0 : -1;
}

/* Build the glob fixture in t: hidden entries, nesting, links to dirs and
 * files, a broken link, a link loop, odd names, an unreadable dir. */
static void build_glob_tree(const char *t)
{
    static const char *dirs[] = {
        "a/.hdir",           "a/b/c/.hid", "a/empty", "sp ace", "br[ack]et", "bracet",
        "\xc3\xbcn\xc3\xaf", "links",      "noperm",  "x.dir",  "cls",
    };
    static const char *files[] = {
        "a/f.txt",
        "a/g.c",
        "a/.hidden",
        "a/.hdir/x.txt",
        "a/b/e.txt",
        "a/b/c/d.txt",
        "a/b/c/.hid/deep.txt",
        "sp ace/fi le.txt",
        "br[ack]et/x",
        "br[ack]et/[",
        "bracet/y",
        "st*r",
        "q?m",
        "\xc3\xbcn\xc3\xaf/\xc3\xa7\xc3\xa9.txt",
        "bad\xffname",
        "noperm/inside.txt",
        "x.dir/y",
        "cls/a",
        "cls/b",
        "cls/c",
        "cls/z",
        "cls/-",
        "cls/!",
        "cls/]",
        "cls/^",
        "cls/\\",
        "cls/\xc3\xa9",
        "cls/ab",
        "cls/[",
        "-dash",
    };
    static const char *links[][2] = {
        {"links/ldir", "../a/b"}, {"links/lfile", "../a/f.txt"}, {"links/broken", "../nowhere"},
        {"links/loop", ".."},     {"links/.hlink", "../a"},
    };
    for (size_t i = 0; i < sizeof dirs / sizeof *dirs; i++) {
        char *p = xfmt("%s/%s", t, dirs[i]);
        assert_int_equal(mkdir_p(p), 0);
        free(p);
    }
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        char *p = xfmt("%s/%s", t, files[i]);
        assert_int_equal(write_file(p, "x\n", 0644), 0);
        free(p);
    }
    for (size_t i = 0; i < sizeof links / sizeof *links; i++) {
        char *p = xfmt("%s/%s", t, links[i][0]);
        assert_int_equal(symlink(links[i][1], p), 0);
        free(p);
    }
    char *p = xfmt("%s/noperm", t);
    assert_int_equal(chmod(p, 0), 0);
    free(p);
}

/* Python's answer, in its order: paths as bytes, sent hex-encoded so any
 * name survives the pipe. */
static int python_glob(const char *pattern, const char *cwd, cw_strlist_t *out)
{
    char *argv[] = {PYTHON, "-c",
                    "import glob,os,sys\n"
                    "for p in glob.glob(sys.argv[1], recursive=True):\n"
                    "    print(os.fsencode(p).hex())\n",
                    (char *)pattern, NULL};
    cw_buf_t o = CW_BUF_INIT, e = CW_BUF_INIT;
    int rc = run(argv, cwd, &o, &e);
    if (rc != 0) {
        fprintf(stderr, "python failed (%d): %s\n", rc, bstr(&e));
        rc = -1;
    }
    char *s = (char *)bstr(&o);
    for (char *line = strtok(s, "\n"); rc == 0 && line != NULL; line = strtok(NULL, "\n")) {
        size_t n = strlen(line) / 2;
        char *v = calloc(1, n + 1);
        for (size_t i = 0; i < n; i++) {
            unsigned x;
            sscanf(line + 2 * i, "%2x", &x);
            v[i] = (char)x;
        }
        cw_strlist_add(out, v);
        free(v);
    }
    cw_buf_free(&o);
    cw_buf_free(&e);
    return rc;
}

/* qsort has no context argument; the tests run on one thread. */
static const cw_strlist_t *sort_list;

/* Order of positions in sort_list: by string, then by position. */
static int by_string_then_index(const void *a, const void *b)
{
    size_t x = *(const size_t *)a, y = *(const size_t *)b;
    int c = strcmp(sort_list->v[x], sort_list->v[y]);
    return c != 0 ? c : (x > y) - (x < y);
}

/* cw_glob(pattern) run in cwd must give Python's list in Python's order,
 * less the repeats Python makes for several '**' (first occurrence kept).
 * *py_repeats tells whether Python had repeats.  0 when equal. */
static int check_glob(const char *pattern, const char *cwd, bool *py_repeats)
{
    cw_strlist_t py = {0}, exp = {0}, got = {0};
    int bad = 0;
    if (python_glob(pattern, cwd, &py) < 0)
        return 1;
    /* first occurrences, by sorting (string, position): "**" patterns over
     * the link loop give Python hundreds of thousands of repeats */
    size_t *ord = malloc((py.n + 1) * sizeof *ord);
    bool *keep = calloc(py.n + 1, sizeof *keep);
    for (size_t i = 0; i < py.n; i++)
        ord[i] = i;
    sort_list = &py;
    qsort(ord, py.n, sizeof *ord, by_string_then_index);
    for (size_t i = 0; i < py.n; i++)
        keep[ord[i]] = i == 0 || strcmp(py.v[ord[i]], py.v[ord[i - 1]]) != 0;
    for (size_t i = 0; i < py.n; i++)
        if (keep[i])
            cw_strlist_add(&exp, py.v[i]);
    free(ord);
    free(keep);
    if (py_repeats != NULL)
        *py_repeats = exp.n != py.n;
    int saved = open(".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (saved < 0 || chdir(cwd) < 0)
        return FAIL("cannot enter %s\n", cwd);
    int rc = cw_glob(pattern, CW_FS_MAX_DEPTH, NULL, &got, NULL);
    if (fchdir(saved) < 0)
        bad++;
    close(saved);
    if (rc != 0)
        bad += FAIL("glob '%s': rc %d\n", pattern, rc);
    for (size_t i = 0; i < exp.n || i < got.n; i++) {
        const char *e = i < exp.n ? exp.v[i] : "(none)", *g = i < got.n ? got.v[i] : "(none)";
        if (strcmp(e, g) != 0) {
            bad += FAIL("glob '%s' [%zu]: python '%s', cw '%s' (%zu vs %zu results)\n", pattern, i,
                        e, g, exp.n, got.n);
            break;
        }
    }
    cw_strlist_free(&py);
    cw_strlist_free(&exp);
    cw_strlist_free(&got);
    return bad;
}

/* tmpl with its "%s" replaced by t (the patterns are not printf formats). */
static char *fill(const char *tmpl, const char *t)
{
    const char *at = strstr(tmpl, "%s");
    return xfmt("%.*s%s%s", (int)(at - tmpl), tmpl, t, at + 2);
}

/* Patterns, "%s" being the fixture's absolute path (as the master sends). */
static const char *const abs_patterns[] = {
    "%s/a/*",
    "%s/a/*.txt",
    "%s/a/.*",
    "%s/a/?.c",
    "%s/a/[fg]*",
    "%s/a/[!f]*",
    "%s/*/",
    "%s/**",
    "%s/**/*.txt",
    "%s/a/**",
    "%s/a/**/",
    "%s/**/d.txt",
    "%s/a/**/**",
    "%s/**/.*",
    "%s/a/**/.*/*",
    "%s/br[ack]et/*",
    "%s/br[[]ack]et/*",
    "%s/sp ace/*",
    "%s/\xc3\xbc*/*",
    "%s/*\xc3\xa9*",
    "%s/\xc3\xbcn\xc3\xaf/??.txt",
    "%s/links/*",
    "%s/links/*/",
    "%s/links/ldir/*",
    "%s/links/broken",
    "%s/links/nonexist",
    "%s/links/loop/a/f.txt",
    "%s/a/f.txt",
    "%s/a/f.txt/",
    "%s/a/",
    "%s/a/b/c/",
    "%s/[",
    "%s/a[",
    "%s/st*r",
    "%s/q?m",
    "%s/st[*]r",
    "%s/*[!a-z]*",
    "%s/bad*",
    "%s/bad?name",
    "%s//a//*",
    "%s/a/f.txt/**",
    "%s/nonexist/**",
    "%s/nonexist/*",
    "%s/noperm/*",
    "%s/**/inside.txt",
    "%s/*/*/*",
    "%s/a/*/e.txt",
    "%s/*/**/x*",
    "%s/links/*/**",
    "%s/**/",
    "%s/cls/[b-a!]",
    "%s/cls/[a--z]",
    "%s/cls/[!b-a]",
    "%s/cls/[]-a]",
    "%s/cls/[^a]",
    "%s/cls/[!-a]",
    "%s/cls/[a-]",
    "%s/cls/[z-a]",
    "%s/cls/[!]]",
    "%s/cls/[\\]",
    "%s/cls/[a-c]",
    "%s/cls/[!a-c]",
    "%s/cls/[\xc3\xa9]",
    "%s/cls/?",
    "%s/cls/*",
    "%s/cls/[-]",
    "%s/cls/[!]",
    "%s/cls/[]",
    "%s/cls/[[]",
    "%s/cls/[a-c-z]",
    "%s/cls/*[!b]",
    "%s/cls/[!a-]*",
    "%s/cls/[b-a!-z]",
    "%s/cls/[z-a-b]",
};

/* Relative patterns, run with the fixture as working directory. */
static const char *const rel_patterns[] = {
    "*", "**",          "**/*.c",   "a/**/*.txt", "**/", "a/../a/*", "./a/*",
    "",  "a/b/c/d.txt", "nonexist", "*/",         ".*",  "a/**/**",
};

/* Every pattern above gives what Python gives, in the same order. */
static void glob_matches_python(void **state)
{
    (void)state;
    char *t = make_tmpdir();
    build_glob_tree(t);
    int bad = 0;
    for (size_t i = 0; i < sizeof abs_patterns / sizeof *abs_patterns; i++) {
        char *p = fill(abs_patterns[i], t);
        bad += check_glob(p, "/", NULL);
        free(p);
    }
    for (size_t i = 0; i < sizeof rel_patterns / sizeof *rel_patterns; i++)
        bad += check_glob(rel_patterns[i], t, NULL);
    remove_tmpdir(t);
    assert_int_equal(bad, 0);
}

/* Hex of s, for handing names to Python over a pipe. */
static void hex_append(cw_buf_t *b, const char *s)
{
    for (; *s; s++)
        cw_buf_printf(b, "%02x", (unsigned char)*s);
}

/* A small deterministic generator (the same patterns on every run). */
static uint32_t rnd(uint32_t *seed)
{
    *seed = *seed * 1103515245 + 12345;
    return *seed >> 16;
}

/* Random patterns over the characters that mean something to fnmatch
 * (brackets, '!', '^', '-', '\', stars, a non-ASCII letter) against every
 * name of one or two such characters: each pattern's matches, in order,
 * must be Python's.  One Python process answers all of them. */
static void glob_fnmatch_fuzz(void **state)
{
    (void)state;
    static const char *const alpha[] = {"a", "b", "z",  "-",        "!", "]",
                                        "^", "[", "\\", "\xc3\xa9", "*", "?"};
    static const char *const inset[] = {"a", "b", "z", "-",  "-",       "!",
                                        "]", "^", "[", "\\", "\xc3\xa9"};
    enum { NNAME = 10, NPAT = 12, NINSET = 11, PATTERNS = 3000 };
    char *t = make_tmpdir();
    for (int i = 0; i < NNAME; i++)
        for (int k = -1; k < NNAME; k++) {
            char *p = xfmt("%s/%s%s", t, alpha[i], k < 0 ? "" : alpha[k]);
            assert_int_equal(write_file(p, "", 0644), 0);
            free(p);
        }
    uint32_t seed = 12345;
    cw_strlist_t pats = {0};
    cw_buf_t in = CW_BUF_INIT;
    for (int n = 0; n < PATTERNS; n++) {
        cw_buf_t pat = CW_BUF_INIT;
        cw_buf_printf(&pat, "%s/", t);
        /* atoms: mostly bracket expressions, whose parsing is the subtle
         * part (ranges, reversed ranges, '!' and ']' first, no ']') */
        int atoms = 1 + (int)(rnd(&seed) % 3);
        for (int a = 0; a < atoms; a++) {
            uint32_t kind = rnd(&seed) % 10;
            if (kind < 6) {
                cw_buf_printf(&pat, "[");
                int len = (int)(rnd(&seed) % 6);
                for (int i = 0; i < len; i++)
                    cw_buf_printf(&pat, "%s", inset[rnd(&seed) % NINSET]);
                if (rnd(&seed) % 10 != 0)
                    cw_buf_printf(&pat, "]");
            } else {
                cw_buf_printf(&pat, "%s", alpha[rnd(&seed) % NPAT]);
            }
        }
        cw_strlist_add(&pats, bstr(&pat));
        hex_append(&in, bstr(&pat));
        cw_buf_printf(&in, "\n");
        cw_buf_free(&pat);
    }
    char *script = xfmt("%s/fuzz.py", t);
    assert_int_equal(write_file(script,
                                "import glob,os,sys\n"
                                "for line in open(sys.argv[1]):\n"
                                "    p = os.fsdecode(bytes.fromhex(line.strip()))\n"
                                "    r = glob.glob(p, recursive=True)\n"
                                "    print(' '.join(os.fsencode(x).hex() for x in r) or '-')\n",
                                0644),
                     0);
    char *list = xfmt("%s/patterns", t);
    assert_int_equal(write_file(list, bstr(&in), 0644), 0);
    char *argv[] = {PYTHON, script, list, NULL};
    cw_buf_t out = CW_BUF_INIT, err = CW_BUF_INIT;
    assert_int_equal(run(argv, "/", &out, &err), 0);
    int bad = 0;
    char *save = NULL, *line = strtok_r((char *)bstr(&out), "\n", &save);
    for (size_t i = 0; i < pats.n && bad < 5; i++, line = strtok_r(NULL, "\n", &save)) {
        assert_non_null(line);
        cw_strlist_t got = {0};
        assert_int_equal(cw_glob(pats.v[i], CW_FS_MAX_DEPTH, NULL, &got, NULL), 0);
        cw_buf_t mine = CW_BUF_INIT;
        for (size_t k = 0; k < got.n; k++) {
            if (k > 0)
                cw_buf_printf(&mine, " ");
            hex_append(&mine, got.v[k]);
        }
        if (strcmp(line, got.n ? bstr(&mine) : "-") != 0)
            bad += FAIL("pattern '%s': python %s, cw %s\n", pats.v[i], line, bstr(&mine));
        cw_buf_free(&mine);
        cw_strlist_free(&got);
    }
    assert_int_equal(bad, 0);
    cw_buf_free(&out);
    cw_buf_free(&err);
    cw_buf_free(&in);
    cw_strlist_free(&pats);
    free(script);
    free(list);
    remove_tmpdir(t);
}

/* The unreadable directory, with permissions that really apply. */
static int glob_unreadable_child(void *arg)
{
    const char *t = arg;
    static const char *const pats[] = {"%s/noperm/*", "%s/**/inside.txt",     "%s/**",
                                       "%s/noperm",   "%s/noperm/inside.txt", "%s/*/*"};
    int bad = 0;
    char *probe = xfmt("%s/noperm", t);
    if (opendir(probe) != NULL)
        bad += FAIL("noperm is readable: the case is not tested\n");
    free(probe);
    for (size_t i = 0; i < sizeof pats / sizeof *pats; i++) {
        char *p = fill(pats[i], t);
        bad += check_glob(p, "/", NULL);
        free(p);
    }
    return bad != 0;
}

/* The unreadable-directory patterns, run as nobody. */
static void glob_unreadable_dir(void **state)
{
    (void)state;
    char *t = make_tmpdir();
    build_glob_tree(t);
    assert_int_equal(in_child(glob_unreadable_child, t, true), 0);
    remove_tmpdir(t);
}

/* A pattern of 30,000 "/ *" components (without the space; today: one recursion per
 * component, and a copy of the directory part per level) on a 256 KiB
 * stack: no match, no crash.  Past the limit: CW_ETOOBIG, named. */
static int glob_long_pattern_child(void *arg)
{
    const char *t = arg;
    cw_buf_t p = CW_BUF_INIT;
    cw_buf_printf(&p, "%s", t);
    for (int i = 0; i < 30000; i++)
        cw_buf_printf(&p, "/*");
    glob_job_t j = {.pattern = bstr(&p), .max_depth = CW_FS_MAX_DEPTH};
    int bad = 0;
    if (glob_on_small_stack(&j, 256 * 1024) < 0)
        return FAIL("no thread\n");
    if (j.rc != 0 || j.out.n != 0 || j.err.len != 0)
        bad += FAIL("rc %d, %zu results, errors '%.200s'\n", j.rc, j.out.n, bstr(&j.err));
    cw_strlist_free(&j.out);
    j.max_depth = 29999;
    if (glob_on_small_stack(&j, 256 * 1024) < 0)
        return FAIL("no thread\n");
    if (j.rc != CW_ETOOBIG || j.out.n != 0 ||
        strstr(bstr(&j.err), "/*/*': pattern deeper than the limit of 29999 levels "
                             "(fs-max-depth)\n") == NULL ||
        strncmp(bstr(&j.err), "glob '/", 7) != 0 || strstr(bstr(&j.err), "...[") == NULL ||
        j.err.len > 1200)
        bad += FAIL("limit: rc %d, errors '%.300s'\n", j.rc, bstr(&j.err));
    cw_strlist_free(&j.out);
    cw_buf_free(&j.err);
    cw_buf_free(&p);
    return bad != 0;
}

/* Long patterns need no stack. */
static void glob_long_pattern(void **state)
{
    (void)state;
    char *t = make_fast_tmpdir();
    char *p = xfmt("%s/a/b", t);
    assert_int_equal(mkdir_p(p), 0);
    free(p);
    assert_int_equal(in_child(glob_long_pattern_child, t, false), 0);
    remove_tmpdir(t);
}

/* '**' over 1,500 nested directories (today: one recursion per level) on
 * a 64 KiB stack: every level, in order.  One level more than the limit
 * allows: CW_ETOOBIG, named. */
static int glob_deep_tree_child(void *arg)
{
    const char *t = arg;
    char *pat = xfmt("%s/**", t);
    glob_job_t j = {.pattern = pat, .max_depth = CW_FS_MAX_DEPTH};
    int bad = 0;
    if (glob_on_small_stack(&j, 128 * 1024) < 0)
        return FAIL("no thread\n");
    if (j.rc != 0 || j.out.n != 1502)
        bad += FAIL("rc %d, %zu results\n", j.rc, j.out.n);
    cw_buf_t want = CW_BUF_INIT;
    cw_buf_printf(&want, "%s/", t);
    for (size_t i = 0; bad == 0 && i < j.out.n; i++) {
        if (i == 1501)
            cw_buf_printf(&want, "/leaf");
        else if (i > 0)
            cw_buf_printf(&want, i == 1 ? "d" : "/d");
        if (strcmp(j.out.v[i], bstr(&want)) != 0)
            bad += FAIL("result %zu: '%.100s'\n", i, j.out.v[i]);
    }
    cw_strlist_free(&j.out);
    cw_buf_free(&want);
    /* the deepest directory holds the leaf, 1,500 levels down */
    j.max_depth = 1499;
    if (glob_on_small_stack(&j, 128 * 1024) < 0)
        return FAIL("no thread\n");
    if (j.rc != CW_ETOOBIG || j.out.n != 0 ||
        strstr(bstr(&j.err), "/**': directory tree deeper than the limit of 1499 levels "
                             "(fs-max-depth)\n") == NULL)
        bad += FAIL("limit: rc %d, errors '%.300s'\n", j.rc, bstr(&j.err));
    cw_strlist_free(&j.out);
    j.max_depth = 1500;
    if (glob_on_small_stack(&j, 128 * 1024) < 0 || j.rc != 0 || j.out.n != 1502)
        bad += FAIL("at the limit: rc %d\n", j.rc);
    cw_strlist_free(&j.out);
    cw_buf_free(&j.err);
    free(pat);
    return bad != 0;
}

/* Deep trees under '**' need no stack (128 KiB: less than the recursion
 * used to take at this depth, more than qemu-user needs to start a thread). */
static void glob_deep_tree(void **state)
{
    (void)state;
    char *t = make_fast_tmpdir();
    assert_true(strlen(t) + 1500 * 2 + 10 < 4096); /* within PATH_MAX */
    assert_int_equal(build_chain(t, 1500, "d", false), 0);
    assert_int_equal(in_child(glob_deep_tree_child, t, false), 0);
    remove_tmpdir(t);
}

/* Python yields paths twice for two '**' components; we don't. */
static void glob_no_duplicates(void **state)
{
    (void)state;
    char *t = make_tmpdir();
    build_glob_tree(t);
    char *p = xfmt("%s/a/**/**", t);
    bool repeats = false;
    assert_int_equal(check_glob(p, "/", &repeats), 0);
    assert_true(repeats); /* so the filter above really was exercised */
    cw_strlist_t got = {0};
    assert_int_equal(cw_glob(p, CW_FS_MAX_DEPTH, NULL, &got, NULL), 0);
    for (size_t i = 0; i < got.n; i++)
        for (size_t k = i + 1; k < got.n; k++)
            assert_string_not_equal(got.v[i], got.v[k]);
    cw_strlist_free(&got);
    free(p);
    remove_tmpdir(t);
}

/* A raised stop flag ends the walk; results go after what the list holds. */
static void glob_stop_and_append(void **state)
{
    (void)state;
    char *t = make_tmpdir();
    build_glob_tree(t);
    char *p = xfmt("%s/**", t);
    atomic_bool stop = true;
    cw_strlist_t out = {0};
    assert_int_equal(cw_glob(p, CW_FS_MAX_DEPTH, &stop, &out, NULL), -EINTR);
    assert_int_equal(out.n, 0);
    /* results are appended after what the list holds */
    atomic_store(&stop, false);
    assert_int_equal(cw_strlist_add(&out, "keep"), 0);
    char *q = xfmt("%s/a/*.txt", t);
    assert_int_equal(cw_glob(q, CW_FS_MAX_DEPTH, &stop, &out, NULL), 0);
    assert_int_equal(out.n, 2);
    assert_string_equal(out.v[0], "keep");
    char *want = xfmt("%s/a/f.txt", t);
    assert_string_equal(out.v[1], want);
    free(want);
    free(q);
    free(p);
    cw_strlist_free(&out);
    remove_tmpdir(t);
}

/* ------------------------------------------------------------------------ */
/* cpdir                                                                    */
/* ------------------------------------------------------------------------ */

/* What one copy printed and returned. */
typedef struct cp_run {
    cw_buf_t out, err;
    int rc;
} cp_run_t;

/* Free the captured output. */
static void cp_run_free(cp_run_t *r)
{
    cw_buf_free(&r->out);
    cw_buf_free(&r->err);
}

/* GNU cp -R -P -p -v from to, in base. */
static void run_cp(const char *base, const char *from, const char *to, cp_run_t *r)
{
    char *argv[] = {"cp", "-R", "-P", "-p", "-v", (char *)from, (char *)to, NULL};
    memset(r, 0, sizeof *r);
    r->rc = run(argv, base, &r->out, &r->err);
}

/* cw_copytree(from, to) in base. */
static void run_cw(const char *base, const char *from, const char *to, atomic_bool *stop,
                   cp_run_t *r)
{
    memset(r, 0, sizeof *r);
    int saved = open(".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (saved < 0 || chdir(base) < 0)
        abort();
    r->rc = cw_copytree(from, to, CW_FS_MAX_DEPTH, stop, &r->out, &r->err);
    if (fchdir(saved) < 0)
        abort();
    close(saved);
}

/* Same output, errors and success from cp and from us (0 when so). */
static int same_runs(cp_run_t *cp, cp_run_t *cw)
{
    int bad = 0;
    if (strcmp(bstr(&cp->out), bstr(&cw->out)) != 0)
        bad += FAIL("log differs:\n--- cp\n%s--- cw\n%s", bstr(&cp->out), bstr(&cw->out));
    if (strcmp(bstr(&cp->err), bstr(&cw->err)) != 0)
        bad += FAIL("errors differ:\n--- cp\n%s--- cw\n%s", bstr(&cp->err), bstr(&cw->err));
    if ((cp->rc == 0) != (cw->rc == 0))
        bad += FAIL("cp exit %d, cw rc %d\n", cp->rc, cw->rc);
    return bad;
}

/* The source tree for the cp comparisons, in base/src. */
static void build_cp_tree(const char *base, bool root)
{
    char *s = xfmt("%s/src", base);
    static const char *dirs[] = {"empty", "nested/a/b/c", "ro/sub", "links", "sgid", "sticky"};
    for (size_t i = 0; i < sizeof dirs / sizeof *dirs; i++) {
        char *p = xfmt("%s/%s", s, dirs[i]);
        assert_int_equal(mkdir_p(p), 0);
        free(p);
    }
    static const struct {
        const char *name;
        mode_t mode;
    } files[] = {
        {"file", 0644},
        {"exec", 0755},
        {"private", 0600},
        {"suid", 06755},
        {"zero", 0644},
        {"nested/a/b/c/leaf.txt", 0644},
        {"ro/x.txt", 0444},
        {"ro/sub/y", 0400},
        {"sgid/in", 0640},
        {"name with spaces", 0644},
        {"it's", 0644},
        {"\xc3\xbcn\xc3\xaf", 0644},
        {"nl\nname", 0644},
        {"dollar$x", 0644},
        {"back`tick", 0644},
        {"dq\"x", 0644},
        {"bs\\x", 0644},
        {"tab\tx", 0644},
        {"~tilde", 0644},
        {"#hash", 0644},
        {"x~#", 0644},
        {"{", 0644},
        {"a{b}", 0644},
        {"at@x", 0644},
        {"q'$x", 0644},
        {"q'\xc3\xa9 x", 0644},
        {"ctl\x01x", 0644},
        {"del\x7fx", 0644},
        {"c1\xc2\x85x", 0644},
        {"ls\xe2\x80\xa8x", 0644},
        {"trunc\xe2\x82", 0644},
        {"mid\xe2\x82x", 0644},
        {"sur\xed\xa0\x80x", 0644},
        {"nl\n'q", 0644},
        {"bad\xff", 0644},
        {"owned", 0640},
    };
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        char *p = xfmt("%s/%s", s, files[i].name);
        assert_int_equal(write_file(p, strcmp(files[i].name, "zero") ? files[i].name : "", 0600),
                         0);
        if (root && (strcmp(files[i].name, "owned") == 0 || strcmp(files[i].name, "suid") == 0))
            assert_int_equal(chown(p, 1234, 5678), 0);
        assert_int_equal(chmod(p, files[i].mode), 0);
        free(p);
    }
    static const char *links[][2] = {{"links/abs", "/etc/hostname"},
                                     {"links/rel", "../file"},
                                     {"links/broken", "../nothing"},
                                     {"links/dirlink", "../nested"},
                                     {"links/ownlink", "../owned"}};
    for (size_t i = 0; i < sizeof links / sizeof *links; i++) {
        char *p = xfmt("%s/%s", s, links[i][0]);
        assert_int_equal(symlink(links[i][1], p), 0);
        if (root && strcmp(links[i][0], "links/ownlink") == 0)
            assert_int_equal(lchown(p, 4321, 8765), 0);
        free(p);
    }
    /* a sparse file: data, a hole, data, a trailing hole, an odd size */
    char *p = xfmt("%s/big", s);
    int fd = open(p, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    assert_true(fd >= 0);
    char *chunk = malloc(1 << 20);
    for (int i = 0; i < (1 << 20); i++)
        chunk[i] = (char)(i * 7 + (i >> 11));
    assert_int_equal(pwrite(fd, chunk, 1 << 20, 0), 1 << 20);
    assert_int_equal(pwrite(fd, chunk, 1 << 20, 3 << 20), 1 << 20);
    assert_int_equal(ftruncate(fd, (5 << 20) + 123), 0);
    close(fd);
    free(chunk);
    free(p);
    p = xfmt("%s/fifo", s);
    assert_int_equal(mkfifo(p, 0640), 0);
    free(p);
    /* a unix socket: cp recreates it with mknod */
    p = xfmt("%s/sock", s);
    int sfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    assert_true(strlen(p) < sizeof sun.sun_path);
    strcpy(sun.sun_path, p);
    assert_int_equal(bind(sfd, (struct sockaddr *)&sun, sizeof sun), 0);
    close(sfd);
    free(p);
    if (root) {
        p = xfmt("%s/null", s);
        if (mknod(p, S_IFCHR | 0640, makedev(1, 3)) < 0)
            fprintf(stderr, "note: no device node in the fixture (%s)\n", strerror(errno));
        free(p);
    }
    static const struct {
        const char *name;
        mode_t mode;
    } dmodes[] = {{"ro/sub", 0500}, {"ro", 0555}, {"sgid", 02755}, {"sticky", 01777}};
    for (size_t i = 0; i < sizeof dmodes / sizeof *dmodes; i++) {
        p = xfmt("%s/%s", s, dmodes[i].name);
        assert_int_equal(chmod(p, dmodes[i].mode), 0);
        free(p);
    }
    free(s);
}

/* Copy base/from to base/to with cp, move cp's result to base/aside, copy
 * again with cw_copytree; same source times for both.  Returns the number
 * of differences between the runs and between the copies (copied: the
 * path of the copy inside `to`/`aside`, "" for themselves). */
static int cp_versus_cw(const char *base, const char *from, const char *to, const char *aside,
                        const char *copied, void (*again)(const char *base), cp_run_t *cp,
                        cp_run_t *cw)
{
    char *src = xfmt("%s/%s", base, from), *dst = xfmt("%s/%s", base, to);
    char *moved = xfmt("%s/%s", base, aside);
    stamp(src);
    run_cp(base, from, to, cp);
    if (rename(dst, moved) < 0)
        return FAIL("rename %s: %s\n", dst, strerror(errno));
    if (again != NULL)
        again(base);
    stamp(src);
    run_cw(base, from, to, NULL, cw);
    int bad = same_runs(cp, cw);
    char *a = copied[0] ? xfmt("%s/%s", moved, copied) : xfmt("%s", moved);
    char *b = copied[0] ? xfmt("%s/%s", dst, copied) : xfmt("%s", dst);
    bad += compare_trees(a, b, copied[0] ? copied : ".");
    free(a);
    free(b);
    free(src);
    free(dst);
    free(moved);
    return bad;
}

/* The whole fixture, fresh destination: same log, same tree as cp. */
static void copytree_like_cp(void **state)
{
    (void)state;
    char *base = make_tmpdir();
    build_cp_tree(base, geteuid() == 0);
    cp_run_t cp, cw;
    assert_int_equal(cp_versus_cw(base, "src", "dst", "dst_cp", "", NULL, &cp, &cw), 0);
    assert_int_equal(cp.rc, 0);
    assert_int_equal(cw.rc, 0);
    assert_int_equal(cw.err.len, 0);
    assert_non_null(strstr(bstr(&cw.out), "'src' -> 'dst'\n"));
    assert_non_null(strstr(bstr(&cw.out), "'src/nl'$'\\n''name' -> 'dst/nl'$'\\n''name'\n"));
    assert_non_null(strstr(bstr(&cw.out), "\"src/it's\" -> \"dst/it's\"\n"));
    /* the copy keeps the holes of the sparse file */
    struct stat sb;
    char *big = xfmt("%s/dst/big", base);
    assert_int_equal(stat(big, &sb), 0);
    assert_true(sb.st_blocks * 512 < 3 << 20);
    free(big);
    if (geteuid() == 0) {
        /* owner and set-id bits survive (cp's run agrees, checked above) */
        char *suid = xfmt("%s/dst/suid", base);
        assert_int_equal(lstat(suid, &sb), 0);
        assert_int_equal(sb.st_uid, 1234);
        assert_int_equal(sb.st_mode & 07777, 06755);
        free(suid);
    }
    char *ro = xfmt("%s/dst/ro", base);
    assert_int_equal(lstat(ro, &sb), 0);
    assert_int_equal(sb.st_mode & 07777, 0555);
    free(ro);
    cp_run_free(&cp);
    cp_run_free(&cw);
    remove_tmpdir(base);
}

/* The existing destination directory "into". */
static void mkdir_into(const char *base)
{
    char *p = xfmt("%s/into", base);
    assert_int_equal(mkdir(p, 0755), 0);
    free(p);
}

/* An existing destination directory: the copy goes inside it. */
static void copytree_into_existing_dir(void **state)
{
    (void)state;
    char *base = make_tmpdir();
    build_cp_tree(base, geteuid() == 0);
    mkdir_into(base);
    cp_run_t cp, cw;
    assert_int_equal(cp_versus_cw(base, "src/", "into", "into_cp", "src", mkdir_into, &cp, &cw), 0);
    assert_int_equal(cw.rc, 0);
    assert_true(strncmp(bstr(&cw.out), "'src/' -> 'into/src'\n", 21) == 0);
    cp_run_free(&cp);
    cp_run_free(&cw);
    /* a single file into a directory (given with a trailing slash) */
    char *into = xfmt("%s/into", base), *aside = xfmt("%s/into_cw", base);
    assert_int_equal(rename(into, aside), 0);
    free(into);
    free(aside);
    mkdir_into(base);
    assert_int_equal(
        cp_versus_cw(base, "src/file", "into/", "into_cp2", "file", mkdir_into, &cp, &cw), 0);
    assert_string_equal(bstr(&cw.out), "'src/file' -> 'into/file'\n");
    cp_run_free(&cp);
    cp_run_free(&cw);
    remove_tmpdir(base);
}

/* Links at the top are copied as links (-P), to a dir or not. */
static void copytree_top_symlink(void **state)
{
    (void)state;
    char *base = make_tmpdir();
    build_cp_tree(base, geteuid() == 0);
    cp_run_t cp, cw;
    assert_int_equal(cp_versus_cw(base, "src/links/dirlink", "l1", "l1_cp", "", NULL, &cp, &cw), 0);
    assert_string_equal(bstr(&cw.out), "'src/links/dirlink' -> 'l1'\n");
    char *l1 = xfmt("%s/l1", base);
    struct stat st;
    assert_int_equal(lstat(l1, &st), 0);
    assert_true(S_ISLNK(st.st_mode));
    free(l1);
    cp_run_free(&cp);
    cp_run_free(&cw);
    assert_int_equal(cp_versus_cw(base, "src/links/broken", "l2", "l2_cp", "", NULL, &cp, &cw), 0);
    cp_run_free(&cp);
    cp_run_free(&cw);
    remove_tmpdir(base);
}

/* Copying again over a finished copy (cp src into, twice): files
 * rewritten, links and special files replaced ("removed ..."), directories
 * merged without a line of their own, as cp does. */
static void copy_once_more(const char *base)
{
    cp_run_t r;
    char *src = xfmt("%s/src", base);
    mkdir_into(base);
    stamp(src);
    run_cw(base, "src", "into", NULL, &r);
    cp_run_free(&r);
    free(src);
}

/* cp vs us, each writing over its own earlier copy. */
static void copytree_over_existing_copy(void **state)
{
    (void)state;
    char *base = make_tmpdir();
    build_cp_tree(base, geteuid() == 0);
    char *src = xfmt("%s/src", base);
    stamp(src);
    mkdir_into(base);
    cp_run_t first;
    run_cp(base, "src", "into", &first); /* the copy cp then writes over */
    cp_run_free(&first);
    cp_run_t cp, cw;
    assert_int_equal(cp_versus_cw(base, "src", "into", "into_cp", "src", copy_once_more, &cp, &cw),
                     0);
    assert_non_null(strstr(bstr(&cw.out), "removed 'into/src/fifo'\n"));
    assert_non_null(strstr(bstr(&cw.out), "'src/file' -> 'into/src/file'\n"));
    assert_null(strstr(bstr(&cw.out), "'src' -> 'into/src'\n"));
    cp_run_free(&cp);
    cp_run_free(&cw);
    free(src);
    remove_tmpdir(base);
}

/* A missing source or destination parent: cp's message and a failure. */
static void copytree_missing_source(void **state)
{
    (void)state;
    char *base = make_tmpdir();
    cp_run_t cp, cw;
    run_cp(base, "nope", "dst", &cp);
    run_cw(base, "nope", "dst", NULL, &cw);
    assert_int_equal(same_runs(&cp, &cw), 0);
    assert_int_equal(cw.rc, -ENOENT);
    assert_string_equal(bstr(&cw.err), "cp: cannot stat 'nope': No such file or directory\n");
    cp_run_free(&cp);
    cp_run_free(&cw);
    /* a missing parent of the destination */
    build_cp_tree(base, false);
    run_cp(base, "src", "no/dst", &cp);
    run_cw(base, "src", "no/dst", NULL, &cw);
    assert_int_equal(same_runs(&cp, &cw), 0);
    assert_int_equal(cw.rc, -ENOENT);
    cp_run_free(&cp);
    cp_run_free(&cw);
    remove_tmpdir(base);
}

/* Move cp's copy-into-itself out of the source before our turn. */
static void move_inner_copy(const char *base)
{
    char *inner = xfmt("%s/src/empty/src", base), *keep = xfmt("%s/inner_cp", base);
    assert_int_equal(rename(inner, keep), 0);
    free(inner);
    free(keep);
}

/* A destination inside the source: refused like cp, after the same part.
 * Into src/empty, whose only entry is then the copy: in a directory with
 * other entries (src/nested) where cp and we meet the copy depends on its
 * inode number, which differs between the two runs (they are read in
 * inode order), and the test failed now and then. */
static void copytree_into_itself(void **state)
{
    (void)state;
    char *base = make_tmpdir();
    build_cp_tree(base, false);
    char *src = xfmt("%s/src", base);
    stamp(src);
    cp_run_t cp, cw;
    run_cp(base, "src", "src/empty", &cp);
    move_inner_copy(base);
    stamp(src);
    run_cw(base, "src", "src/empty", NULL, &cw);
    assert_int_equal(same_runs(&cp, &cw), 0);
    assert_int_equal(cw.rc, -EINVAL);
    assert_non_null(strstr(bstr(&cw.err), "cp: cannot copy a directory, 'src', into itself, "
                                          "'src/empty/src'\n"));
    char *a = xfmt("%s/inner_cp", base), *b = xfmt("%s/src/empty/src", base);
    /* The parts copied before the refusal are the same too, but for the
     * times of src/empty: making the copy inside it touched it, at a
     * different moment in each run.  Align those, check the rest. */
    struct stat st;
    char *na = xfmt("%s/empty", a), *nb = xfmt("%s/empty", b);
    assert_int_equal(lstat(na, &st), 0);
    struct timespec ts[2] = {st.st_atim, st.st_mtim};
    assert_int_equal(utimensat(AT_FDCWD, nb, ts, AT_SYMLINK_NOFOLLOW), 0);
    free(na);
    free(nb);
    assert_int_equal(compare_trees(a, b, "inner"), 0);
    free(a);
    free(b);
    free(src);
    cp_run_free(&cp);
    cp_run_free(&cw);
    remove_tmpdir(base);
}

/* A raised stop flag: nothing copied, -EINTR. */
static void copytree_stop(void **state)
{
    (void)state;
    char *base = make_tmpdir();
    build_cp_tree(base, false);
    atomic_bool stop = true;
    cp_run_t cw;
    run_cw(base, "src", "dst", &stop, &cw);
    assert_int_equal(cw.rc, -EINTR);
    char *dst = xfmt("%s/dst", base);
    assert_int_equal(access(dst, F_OK), -1);
    free(dst);
    cp_run_free(&cw);
    remove_tmpdir(base);
}

/* A deep tree: every level's descriptors are closed again; past the depth
 * bound the copy reports an error instead of running out of stack. */
static void copytree_deep(void **state)
{
    (void)state;
    char *base = make_fast_tmpdir();
    cw_buf_t path = CW_BUF_INIT;
    cw_buf_printf(&path, "%s/deep", base);
    for (int i = 0; i < 250; i++)
        cw_buf_printf(&path, "/d");
    assert_int_equal(mkdir_p(bstr(&path)), 0);
    cw_buf_printf(&path, "/leaf");
    assert_int_equal(write_file(bstr(&path), "leaf\n", 0644), 0);
    int fds = open_count();
    cp_run_t cp, cw;
    assert_int_equal(cp_versus_cw(base, "deep", "deep2", "deep_cp", "", NULL, &cp, &cw), 0);
    assert_int_equal(cw.rc, 0);
    assert_int_equal(open_count(), fds);
    cp_run_free(&cp);
    cp_run_free(&cw);

    /* past the old bound of 256 levels: copied whole, like cp */
    cw_buf_reset(&path);
    cw_buf_printf(&path, "%s/deeper", base);
    for (int i = 0; i < 300; i++)
        cw_buf_printf(&path, "/d");
    assert_int_equal(mkdir_p(bstr(&path)), 0);
    assert_int_equal(cp_versus_cw(base, "deeper", "deeper2", "deeper_cp", "", NULL, &cp, &cw), 0);
    assert_int_equal(cw.rc, 0);
    assert_int_equal(open_count(), fds);
    cp_run_free(&cp);
    cp_run_free(&cw);
    /* past the configured limit: the limit named, no ENAMETOOLONG */
    int saved = open(".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    assert_int_equal(chdir(base), 0);
    memset(&cw, 0, sizeof cw);
    cw.rc = cw_copytree("deeper", "deeper3", 100, NULL, &cw.out, &cw.err);
    assert_int_equal(fchdir(saved), 0);
    close(saved);
    assert_int_equal(cw.rc, CW_ETOOBIG);
    cw_buf_reset(&path);
    cw_buf_printf(&path, "cp: cannot copy 'deeper");
    for (int i = 0; i < 101; i++)
        cw_buf_printf(&path, "/d");
    cw_buf_printf(&path, "': directory tree deeper than the limit of 100 levels (fs-max-depth)\n");
    assert_string_equal(bstr(&cw.err), bstr(&path));
    assert_int_equal(open_count(), fds);
    cp_run_free(&cw);
    cw_buf_free(&path);
    remove_tmpdir(base);
}

/* What copytree_deep_child compares against: cp's run. */
typedef struct deep_copy {
    const char *base;
    cp_run_t cp;
} deep_copy_t;

/* 1,000 levels (a file in each) under a limit of 64 descriptors: the same
 * log as cp's and no descriptor left behind. */
static int copytree_deep_child(void *arg)
{
    deep_copy_t *d = arg;
    if (limit_fds(64) < 0)
        return FAIL("setrlimit: %s\n", strerror(errno));
    int fds = open_count(), bad = 0;
    cp_run_t cw;
    run_cw(d->base, "deep", "deep2", NULL, &cw);
    bad += same_runs(&d->cp, &cw);
    if (cw.rc != 0)
        bad += FAIL("rc %d\n", cw.rc);
    if (open_count() != fds)
        bad += FAIL("descriptors: %d before, %d after\n", fds, open_count());
    cp_run_free(&cw);
    return bad != 0;
}

/* A deep copy with few descriptors: identical to cp's copy. */
static void copytree_deep_few_fds(void **state)
{
    (void)state;
    char *base = make_fast_tmpdir();
    char *src = xfmt("%s/deep", base), *dst = xfmt("%s/deep2", base);
    char *aside = xfmt("%s/deep_cp", base);
    assert_int_equal(mkdir(src, 0755), 0);
    assert_int_equal(build_chain(src, 1000, "d", true), 0);
    deep_copy_t d = {.base = base};
    stamp(src);
    run_cp(base, "deep", "deep2", &d.cp);
    assert_int_equal(d.cp.rc, 0);
    assert_int_equal(rename(dst, aside), 0);
    stamp(src);
    assert_int_equal(in_child(copytree_deep_child, &d, false), 0);
    assert_int_equal(compare_trees(aside, dst, "."), 0);
    cp_run_free(&d.cp);
    free(src);
    free(dst);
    free(aside);
    remove_tmpdir(base);
}

/* Copies interrupted on a slow disk: when and what stopped. */
typedef struct stop_after {
    atomic_bool *stop;
    double delay, at;
} stop_after_t;

/* Thread body: raise the flag after the delay, noting when. */
static void *stop_thread(void *arg)
{
    stop_after_t *s = arg;
    struct timespec ts = {0, (long)(s->delay * 1e9)};
    nanosleep(&ts, NULL);
    s->at = now_s();
    atomic_store(s->stop, true);
    return NULL;
}

/* Copy base/src (a 48 MiB file on a 16 MiB/s disk: 3 s) and interrupt it
 * after 0.1 s: back within a second, -EINTR, and the half-copied file
 * removed and said so.  0 when so. */
static int interrupt_copy(const char *base)
{
    atomic_bool stop = false;
    stop_after_t s = {&stop, 0.1, 0};
    pthread_t th;
    atomic_store(&slow_rate, 16L << 20);
    if (pthread_create(&th, NULL, stop_thread, &s) != 0)
        return FAIL("no thread\n");
    cp_run_t cw;
    run_cw(base, "src", "dst", &stop, &cw);
    double back = now_s();
    pthread_join(th, NULL);
    atomic_store(&slow_rate, 0);
    int bad = 0;
    fprintf(stderr, "note: copy interrupted after %.1f s, back %.3f s later\n", s.delay,
            back - s.at);
    if (back - s.at > 1.0)
        bad += FAIL("back %.3f s after the interrupt\n", back - s.at);
    if (cw.rc != -EINTR)
        bad += FAIL("rc %d\n", cw.rc);
    if (strcmp(bstr(&cw.err), "cp: interrupted: removed the partial copy 'dst/big'\n") != 0)
        bad += FAIL("errors '%s'\n", bstr(&cw.err));
    if (strstr(bstr(&cw.out), "'src/big' -> 'dst/big'\n") == NULL)
        bad += FAIL("log '%s'\n", bstr(&cw.out));
    char *big = xfmt("%s/dst/big", base);
    struct stat st;
    if (lstat(big, &st) == 0)
        bad += FAIL("the partial copy is still there (%lld bytes)\n", (long long)st.st_size);
    free(big);
    cp_run_free(&cw);
    return bad;
}

/* An interrupt during a big file, through copy_file_range and through
 * read/write (as across file systems): answered within a second. */
static void copytree_interrupt(void **state)
{
    (void)state;
    char *base = make_fast_tmpdir();
    char *src = xfmt("%s/src", base), *big = xfmt("%s/src/big", base);
    char *dst = xfmt("%s/dst", base);
    assert_int_equal(mkdir(src, 0755), 0);
    int fd = open(big, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    assert_true(fd >= 0);
    char *chunk = malloc(1 << 20);
    memset(chunk, 'x', 1 << 20);
    for (int i = 0; i < 48; i++)
        assert_int_equal(write(fd, chunk, 1 << 20), 1 << 20);
    close(fd);
    free(chunk);
    int fds = open_count();
#if CW_HAVE_COPY_FILE_RANGE && defined(SYS_copy_file_range)
    atomic_store(&cfr_refused, false);
    assert_int_equal(interrupt_copy(base), 0);
    if (atomic_load(&cfr_refused))
        fprintf(stderr, "note: the kernel refused copy_file_range: read/write was tested\n");
    assert_int_equal(cw_rmtree(dst, CW_FS_MAX_DEPTH, NULL, NULL), 0);
#endif
#ifdef HAVE_SLOW_PWRITE
    atomic_store(&no_cfr, true);
    int bad = interrupt_copy(base);
    atomic_store(&no_cfr, false);
    assert_int_equal(bad, 0);
#endif
    assert_int_equal(open_count(), fds);
    free(src);
    free(big);
    free(dst);
    remove_tmpdir(base);
}

/* The path of level `level` of a chain of "d" under top. */
static char *chain_path(const char *top, int level)
{
    cw_buf_t p = CW_BUF_INIT;
    cw_buf_printf(&p, "%s", top);
    for (int i = 0; i < level; i++)
        cw_buf_printf(&p, "/d");
    return (char *)cw_buf_steal(&p, NULL);
}

/* Directories moved during a copy, on either side: the copy stops where a
 * reopened ".." is not the directory met on the way down, and says so. */
static void copytree_tree_moved(void **state)
{
    (void)state;
#ifndef HAVE_MOVE_HOOK
    skip();
#else
    char *base = make_fast_tmpdir();
    char *src = xfmt("%s/src", base), *out = xfmt("%s/outside", base);
    assert_int_equal(mkdir(src, 0755), 0);
    assert_int_equal(mkdir(out, 0755), 0);
    assert_int_equal(build_chain(src, 40, "d", true), 0);
    /* the source: level 10 moved away at the first reopen (which is of
     * the source side) */
    char *s10 = chain_path(src, 10), *moved = xfmt("%s/moved", out);
    move_on_reopen(s10, moved, 1);
    cp_run_t cw;
    run_cw(base, "src", "dst", NULL, &cw);
    move_from = NULL;
    assert_int_equal(cw.rc, -ESTALE);
    char *s9 = chain_path("src", 9);
    char *want = xfmt("cp: cannot access '%s': directory moved during the walk; stopped\n", s9);
    assert_string_equal(bstr(&cw.err), want);
    free(want);
    cp_run_free(&cw);
    assert_int_equal(rename(moved, s10), 0);
    /* the destination: level 10 of the copy moved away at the second
     * reopen (the first of the destination side) */
    char *d10 = xfmt("%s/dst2/d/d/d/d/d/d/d/d/d/d", base);
    move_on_reopen(d10, moved, 2);
    run_cw(base, "src", "dst2", NULL, &cw);
    move_from = NULL;
    assert_int_equal(cw.rc, -ESTALE);
    char *d9 = chain_path("dst2", 9);
    want = xfmt("cp: cannot access '%s': directory moved during the walk; stopped\n", d9);
    assert_string_equal(bstr(&cw.err), want);
    free(want);
    /* nothing was written where the copy was moved to but inside it */
    cw_strlist_t names = {0};
    assert_int_equal(list_sorted(out, &names), 0);
    assert_int_equal(names.n, 1);
    cw_strlist_free(&names);
    cp_run_free(&cw);
    free(d9);
    free(d10);
    free(s9);
    free(s10);
    free(moved);
    free(src);
    free(out);
    remove_tmpdir(base);
#endif
}

/* Paths longer than an error line may show: elided there, both ends kept;
 * a full file system (here: the file size limit) gives the real errno text;
 * a fifo in the way of a file is reported, not waited on. */
static int copytree_fsize_child(void *arg)
{
    const char *base = arg;
    struct rlimit rl = {1 << 20, 1 << 20};
    signal(SIGXFSZ, SIG_IGN);
    if (setrlimit(RLIMIT_FSIZE, &rl) < 0)
        return FAIL("setrlimit: %s\n", strerror(errno));
    cp_run_t cw;
    run_cw(base, "src", "dst", NULL, &cw);
    int bad = 0;
    if (cw.rc != -EFBIG || strcmp(bstr(&cw.err), "cp: error writing 'dst/big': File too large\n"))
        bad += FAIL("rc %d, errors '%s'\n", cw.rc, bstr(&cw.err));
    cp_run_free(&cw);
    return bad != 0;
}

/* Bounded error lines, real errno texts. */
static void copytree_messages(void **state)
{
    (void)state;
    char *base = make_tmpdir();
    cw_buf_t p = CW_BUF_INIT;
    cw_buf_printf(&p, "missing");
    for (int i = 0; i < 1000; i++)
        cw_buf_printf(&p, "/x");
    cp_run_t cw;
    run_cw(base, bstr(&p), "dst", NULL, &cw);
    assert_int_equal(cw.rc, -ENOENT);
    const char *e = bstr(&cw.err);
    assert_true(cw.err.len < 1200);
    assert_true(strncmp(e, "cp: cannot stat 'missing/x/x/", 29) == 0);
    assert_non_null(strstr(e, "...["));
    assert_non_null(strstr(e, "x/x': No such file or directory\n"));
    cp_run_free(&cw);
    cw_buf_free(&p);
    char *src = xfmt("%s/src", base), *big = xfmt("%s/src/big", base);
    assert_int_equal(mkdir(src, 0755), 0);
    int fd = open(big, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    assert_true(fd >= 0);
    char *chunk = calloc(1, 3 << 20);
    assert_int_equal(write(fd, chunk, 3 << 20), 3 << 20);
    close(fd);
    free(chunk);
    assert_int_equal(in_child(copytree_fsize_child, base, false), 0);
    /* a fifo where the copy of a file goes: cp would wait for a reader
     * forever; we report it (and the test would hang otherwise) */
    char *dst = xfmt("%s/fdst", base), *fifo = xfmt("%s/fdst/big", base);
    assert_int_equal(mkdir(dst, 0755), 0);
    assert_int_equal(mkfifo(fifo, 0644), 0);
    run_cw(base, "src/big", "fdst/big", NULL, &cw);
    assert_int_equal(cw.rc, -ENXIO);
    assert_string_equal(bstr(&cw.err),
                        "cp: cannot create regular file 'fdst/big': No such device or address\n");
    cp_run_free(&cw);
    free(dst);
    free(fifo);
    free(src);
    free(big);
    remove_tmpdir(base);
}

/* As nobody: a read-only tree is filled before its modes are applied, and
 * unreadable files and directories give cp's messages while the rest is
 * copied. */
static int copytree_perm_child(void *arg)
{
    const char *base = arg;
    int bad = 0;
    char *p;
    static const char *dirs[] = {"src/ro/sub", "src/nodir", "src/ok"};
    for (size_t i = 0; i < sizeof dirs / sizeof *dirs; i++) {
        p = xfmt("%s/%s", base, dirs[i]);
        bad += mkdir_p(p) != 0;
        free(p);
    }
    static const struct {
        const char *name;
        mode_t mode;
    } files[] = {{"src/ro/x", 0444},
                 {"src/ro/sub/y", 0400},
                 {"src/nodir/z", 0644},
                 {"src/noread", 0},
                 {"src/ok/f", 0644}};
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        p = xfmt("%s/%s", base, files[i].name);
        bad += write_file(p, "data\n", files[i].mode) != 0;
        free(p);
    }
    static const struct {
        const char *name;
        mode_t mode;
    } dmodes[] = {{"src/ro/sub", 0500}, {"src/ro", 0555}, {"src/nodir", 0}};
    for (size_t i = 0; i < sizeof dmodes / sizeof *dmodes; i++) {
        p = xfmt("%s/%s", base, dmodes[i].name);
        bad += chmod(p, dmodes[i].mode) != 0;
        free(p);
    }
    cp_run_t cp, cw;
    bad += cp_versus_cw(base, "src", "dst", "dst_cp", "", NULL, &cp, &cw);
    if (cw.rc != -EACCES)
        bad += FAIL("rc %d\n", cw.rc);
    if (strstr(bstr(&cw.err), "cp: cannot open 'src/noread' for reading: Permission denied\n") ==
            NULL ||
        strstr(bstr(&cw.err), "cp: cannot access 'src/nodir': Permission denied\n") == NULL)
        bad += FAIL("errors: %s", bstr(&cw.err));
    p = xfmt("%s/dst/ro/sub/y", base);
    struct stat st;
    if (lstat(p, &st) < 0 || (st.st_mode & 07777) != 0400)
        bad += FAIL("ro/sub/y not copied\n");
    free(p);
    cp_run_free(&cp);
    cp_run_free(&cw);
    return bad != 0;
}

/* The permission cases, as nobody in a directory of nobody's. */
static void copytree_permissions(void **state)
{
    (void)state;
    char *base = make_tmpdir();
    if (geteuid() == 0)
        assert_int_equal(chown(base, NOBODY, NOBODY), 0);
    assert_int_equal(in_child(copytree_perm_child, base, true), 0);
    remove_tmpdir(base);
}

/* As nobody, someone else's set-id and sticky entries: the owner cannot be
 * kept, so those bits go, as with cp. */
static int copytree_foreign_child(void *arg)
{
    const char *base = arg;
    cp_run_t cp, cw;
    int bad = cp_versus_cw(base, "foreign", "fdst", "fdst_cp", "", NULL, &cp, &cw);
    char *p = xfmt("%s/fdst/suid", base);
    struct stat st;
    if (lstat(p, &st) < 0 || (st.st_mode & 07777) != 0755 || st.st_uid != NOBODY)
        bad += FAIL("suid copy: mode %o uid %u\n", (unsigned)st.st_mode, (unsigned)st.st_uid);
    free(p);
    cp_run_free(&cp);
    cp_run_free(&cw);
    return bad != 0;
}

/* The foreign-owner case (needs root to set up). */
static void copytree_foreign_owner(void **state)
{
    (void)state;
    if (geteuid() != 0)
        skip();
    char *base = make_tmpdir();
    assert_int_equal(chown(base, NOBODY, NOBODY), 0);
    char *f = xfmt("%s/foreign", base);
    assert_int_equal(mkdir(f, 0755), 0);
    static const struct {
        const char *name;
        mode_t mode;
    } files[] = {{"suid", 04755}, {"sgid", 02755}, {"sticky", 01777}, {"plain", 0644}},
      dirs[] = {{"dsticky", 01777}, {"dsgid", 02755}, {"dall", 07777}};
    /* Times nobody cannot reset: an atime in the future, which reading
     * does not move (relatime), so both runs see the same. */
    struct timespec ts[2] = {{time(NULL) + 365 * 86400, 5}, {978307200, 123456789}};
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        char *p = xfmt("%s/%s", f, files[i].name);
        assert_int_equal(write_file(p, "x", files[i].mode), 0);
        assert_int_equal(utimensat(AT_FDCWD, p, ts, 0), 0);
        free(p);
    }
    for (size_t i = 0; i < sizeof dirs / sizeof *dirs; i++) {
        char *p = xfmt("%s/%s", f, dirs[i].name);
        assert_int_equal(mkdir(p, 0755), 0);
        assert_int_equal(chmod(p, dirs[i].mode), 0);
        assert_int_equal(utimensat(AT_FDCWD, p, ts, 0), 0);
        free(p);
    }
    assert_int_equal(utimensat(AT_FDCWD, f, ts, 0), 0);
    assert_int_equal(in_child(copytree_foreign_child, base, true), 0);
    free(f);
    remove_tmpdir(base);
}

/* ------------------------------------------------------------------------ */
/* mkdir -p                                                                 */
/* ------------------------------------------------------------------------ */

/* Nested creation, existing paths, odd slashes, modes, links on the way. */
static void mkdirs_basics(void **state)
{
    (void)state;
    char *t = make_tmpdir();
    char *p = xfmt("%s/x/y/z", t);
    struct stat st;
    assert_int_equal(cw_mkdirs(p, 0777), 0);
    assert_int_equal(stat(p, &st), 0);
    assert_true(S_ISDIR(st.st_mode));
    assert_int_equal(cw_mkdirs(p, 0777), 0); /* exists: fine */
    free(p);
    /* doubled and trailing slashes */
    p = xfmt("%s/p//q/", t);
    assert_int_equal(cw_mkdirs(p, 0777), 0);
    assert_int_equal(stat(p, &st), 0);
    free(p);
    /* the mode (less the umask) for every new level */
    mode_t old = umask(022);
    p = xfmt("%s/m1/m2", t);
    assert_int_equal(cw_mkdirs(p, 0751), 0);
    assert_int_equal(stat(p, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0751);
    char *m1 = xfmt("%s/m1", t);
    assert_int_equal(stat(m1, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0751);
    umask(old);
    free(m1);
    free(p);
    /* through a symbolic link to a directory */
    char *l = xfmt("%s/link", t), *x = xfmt("%s/x", t);
    assert_int_equal(symlink(x, l), 0);
    p = xfmt("%s/link/new", t);
    assert_int_equal(cw_mkdirs(p, 0777), 0);
    free(p);
    p = xfmt("%s/x/new", t);
    assert_int_equal(stat(p, &st), 0);
    free(p);
    free(l);
    free(x);
    remove_tmpdir(t);
}

/* A file in the way: the errors os.makedirs gives the stock worker. */
static void mkdirs_file_in_the_way(void **state)
{
    (void)state;
    char *t = make_tmpdir();
    char *f = xfmt("%s/f", t), *sub = xfmt("%s/f/sub", t);
    assert_int_equal(write_file(f, "x", 0644), 0);
    assert_int_equal(cw_mkdirs(f, 0777), -EEXIST);
    /* os.makedirs reports ENOTDIR here (the header's "-EEXIST when a parent
     * is not a directory" is not what either does) */
    assert_int_equal(cw_mkdirs(sub, 0777), -ENOTDIR);
    assert_int_equal(cw_mkdirs("", 0777), -ENOENT);
    free(f);
    free(sub);
    remove_tmpdir(t);
}

/* ------------------------------------------------------------------------ */
/* rm -rf                                                                   */
/* ------------------------------------------------------------------------ */

/* A tree of nested dirs, files, links and a fifo under dir. */
static int build_rm_tree(const char *dir)
{
    int bad = 0;
    char *p = xfmt("%s/a/b/c", dir);
    bad += mkdir_p(p) != 0;
    free(p);
    static const char *files[] = {"f", "a/g", "a/b/h", "a/b/c/i"};
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        p = xfmt("%s/%s", dir, files[i]);
        bad += write_file(p, "data", 0644) != 0;
        free(p);
    }
    p = xfmt("%s/a/fifo", dir);
    bad += mkfifo(p, 0600) != 0;
    free(p);
    p = xfmt("%s/a/rel", dir);
    bad += symlink("../f", p) != 0;
    free(p);
    return bad;
}

/* A plain tree goes entirely, with or without a trailing slash. */
static void rmtree_tree(void **state)
{
    (void)state;
    char *t = make_tmpdir();
    char *r = xfmt("%s/r", t);
    assert_int_equal(build_rm_tree(r), 0);
    cw_buf_t err = CW_BUF_INIT;
    assert_int_equal(cw_rmtree(r, CW_FS_MAX_DEPTH, NULL, &err), 0);
    assert_int_equal(err.len, 0);
    assert_int_equal(access(r, F_OK), -1);
    /* trailing slash on the top directory */
    assert_int_equal(build_rm_tree(r), 0);
    char *rs = xfmt("%s/r/", t);
    assert_int_equal(cw_rmtree(rs, CW_FS_MAX_DEPTH, NULL, &err), 0);
    assert_int_equal(access(r, F_OK), -1);
    free(rs);
    cw_buf_free(&err);
    free(r);
    remove_tmpdir(t);
}

/* Read-only and inaccessible directories (modes 0, 0500, 0555, the top
 * one 0, files 0444): removed all the same. */
static int rmtree_readonly_child(void *arg)
{
    const char *t = arg;
    int bad = 0;
    char *r = xfmt("%s/ro", t);
    bad += build_rm_tree(r);
    static const struct {
        const char *name;
        mode_t mode;
    } modes[] = {{"a/b/c/i", 0444}, {"a/b/c", 0}, {"a/b", 0500}, {"a", 0555}, {"", 0}};
    for (size_t i = 0; i < sizeof modes / sizeof *modes; i++) {
        char *p = xfmt("%s/%s", r, modes[i].name);
        bad += chmod(p, modes[i].mode) != 0;
        free(p);
    }
    cw_buf_t err = CW_BUF_INIT;
    int rc = cw_rmtree(r, CW_FS_MAX_DEPTH, NULL, &err);
    if (rc != 0 || err.len != 0 || access(r, F_OK) == 0)
        bad += FAIL("rmtree read-only: rc %d, errors '%s'\n", rc, bstr(&err));
    cw_buf_free(&err);
    free(r);
    return bad != 0;
}

/* Read-only trees, as nobody (where modes bite) and as ourselves. */
static void rmtree_readonly(void **state)
{
    (void)state;
    char *t = make_tmpdir();
    if (geteuid() == 0)
        assert_int_equal(chown(t, NOBODY, NOBODY), 0);
    /* as nobody, where the modes bite, and as ourselves */
    assert_int_equal(in_child(rmtree_readonly_child, t, true), 0);
    assert_int_equal(in_child(rmtree_readonly_child, t, false), 0);
    remove_tmpdir(t);
}

/* Links inside the tree, to a file and a directory outside it, and a link
 * as the path itself: the links go, their targets stay. */
static void rmtree_links(void **state)
{
    (void)state;
    char *t = make_tmpdir();
    char *out = xfmt("%s/outside", t), *keep = xfmt("%s/outside/keep", t);
    char *ofile = xfmt("%s/ofile", t);
    assert_int_equal(mkdir_p(out), 0);
    assert_int_equal(write_file(keep, "keep", 0644), 0);
    assert_int_equal(write_file(ofile, "keep", 0644), 0);
    char *r = xfmt("%s/r", t);
    assert_int_equal(build_rm_tree(r), 0);
    char *l1 = xfmt("%s/r/a/todir", t), *l2 = xfmt("%s/r/a/b/tofile", t);
    assert_int_equal(symlink(out, l1), 0);
    assert_int_equal(symlink("../../../ofile", l2), 0);
    cw_buf_t err = CW_BUF_INIT;
    assert_int_equal(cw_rmtree(r, CW_FS_MAX_DEPTH, NULL, &err), 0);
    assert_int_equal(access(r, F_OK), -1);
    assert_int_equal(access(keep, F_OK), 0);
    assert_int_equal(access(ofile, F_OK), 0);
    /* the path is a link to a directory */
    char *top = xfmt("%s/toplink", t);
    assert_int_equal(symlink(out, top), 0);
    assert_int_equal(cw_rmtree(top, CW_FS_MAX_DEPTH, NULL, &err), 0);
    struct stat st;
    assert_int_equal(lstat(top, &st), -1);
    assert_int_equal(access(keep, F_OK), 0);
    /* the link given with a trailing slash: still the link that goes
     * (rm -rf would empty the target and keep the link) */
    assert_int_equal(symlink(out, top), 0);
    char *slash = xfmt("%s/toplink/", t);
    assert_int_equal(cw_rmtree(slash, CW_FS_MAX_DEPTH, NULL, &err), 0);
    assert_int_equal(lstat(top, &st), -1);
    assert_int_equal(access(keep, F_OK), 0);
    free(slash);
    /* a broken link as the path */
    assert_int_equal(symlink("nowhere", top), 0);
    assert_int_equal(cw_rmtree(top, CW_FS_MAX_DEPTH, NULL, &err), 0);
    assert_int_equal(lstat(top, &st), -1);
    assert_int_equal(err.len, 0);
    cw_buf_free(&err);
    free(top);
    free(l1);
    free(l2);
    free(r);
    free(out);
    free(keep);
    free(ofile);
    remove_tmpdir(t);
}

/* A missing path is no error; a file is removed; a path through a file fails. */
static void rmtree_missing_and_file(void **state)
{
    (void)state;
    char *t = make_tmpdir();
    char *m = xfmt("%s/missing", t), *f = xfmt("%s/file", t);
    cw_buf_t err = CW_BUF_INIT;
    assert_int_equal(cw_rmtree(m, CW_FS_MAX_DEPTH, NULL, &err), 0);
    char *mm = xfmt("%s/missing/deeper", t);
    assert_int_equal(cw_rmtree(mm, CW_FS_MAX_DEPTH, NULL, &err), 0);
    assert_int_equal(write_file(f, "x", 0400), 0);
    assert_int_equal(cw_rmtree(f, CW_FS_MAX_DEPTH, NULL, &err), 0);
    assert_int_equal(access(f, F_OK), -1);
    assert_int_equal(err.len, 0);
    /* a path through a file: ENOTDIR, reported */
    assert_int_equal(write_file(f, "x", 0644), 0);
    char *ff = xfmt("%s/file/x", t);
    assert_int_equal(cw_rmtree(ff, CW_FS_MAX_DEPTH, NULL, &err), -ENOTDIR);
    assert_non_null(strstr(bstr(&err), "cannot remove '"));
    assert_non_null(strstr(bstr(&err), "/file/x': Not a directory\n"));
    cw_buf_free(&err);
    free(ff);
    free(mm);
    free(m);
    free(f);
    remove_tmpdir(t);
}

/* A raised stop flag: -EINTR and the tree still there. */
static void rmtree_stop(void **state)
{
    (void)state;
    char *t = make_tmpdir();
    char *r = xfmt("%s/r", t);
    assert_int_equal(build_rm_tree(r), 0);
    atomic_bool stop = true;
    cw_buf_t err = CW_BUF_INIT;
    assert_int_equal(cw_rmtree(r, CW_FS_MAX_DEPTH, &stop, &err), -EINTR);
    assert_int_equal(access(r, F_OK), 0);
    char *deep = xfmt("%s/a/b/c/i", r);
    assert_int_equal(access(deep, F_OK), 0);
    free(deep);
    cw_buf_free(&err);
    free(r);
    remove_tmpdir(t);
}

/* As nobody in root's directory: the failure is described and returned. */
static int rmtree_denied_child(void *arg)
{
    const char *d = arg;
    cw_buf_t err = CW_BUF_INIT;
    int rc = cw_rmtree(d, CW_FS_MAX_DEPTH, NULL, &err);
    char *want = xfmt("cannot remove '%s/f': Permission denied\n", d);
    int bad = 0;
    if (rc != -EACCES || strncmp(bstr(&err), want, strlen(want)) != 0)
        bad = FAIL("rc %d, errors '%s'\n", rc, bstr(&err));
    free(want);
    cw_buf_free(&err);
    return bad;
}

/* Root's directory as nobody: the error line and -EACCES. */
static void rmtree_denied(void **state)
{
    (void)state;
    if (geteuid() != 0)
        skip();
    char *t = make_tmpdir();
    char *d = xfmt("%s/rootdir", t), *f = xfmt("%s/rootdir/f", t);
    assert_int_equal(mkdir(d, 0755), 0);
    assert_int_equal(write_file(f, "x", 0644), 0);
    assert_int_equal(in_child(rmtree_denied_child, d, true), 0);
    assert_int_equal(access(f, F_OK), 0);
    free(d);
    free(f);
    remove_tmpdir(t);
}

/* 5,000 levels (GNU rm's reach; today's limit was 4,096 and one descriptor
 * per level) under a limit of 64 descriptors: all gone, no descriptor
 * left behind. */
static int rmtree_deep_child(void *arg)
{
    const char *t = arg;
    char *r = xfmt("%s/deep", t);
    int bad = 0;
    if (mkdir(r, 0755) < 0 || build_chain(r, 5000, "d", false) < 0)
        return FAIL("cannot build the tree\n");
    if (limit_fds(64) < 0)
        return FAIL("setrlimit: %s\n", strerror(errno));
    int fds = open_count();
    cw_buf_t err = CW_BUF_INIT;
    int rc = cw_rmtree(r, CW_FS_MAX_DEPTH, NULL, &err);
    if (rc != 0 || err.len != 0)
        bad += FAIL("rmtree: rc %d, errors '%.300s'\n", rc, bstr(&err));
    if (access(r, F_OK) == 0)
        bad += FAIL("the tree is still there\n");
    if (open_count() != fds)
        bad += FAIL("descriptors: %d before, %d after\n", fds, open_count());
    cw_buf_free(&err);
    free(r);
    return bad != 0;
}

/* Deep trees go whole with a bounded number of descriptors. */
static void rmtree_deep_few_fds(void **state)
{
    (void)state;
    char *t = make_fast_tmpdir();
    assert_int_equal(in_child(rmtree_deep_child, t, false), 0);
    remove_tmpdir(t);
}

/* 2,000 levels of 250-byte names (a 500 KB path): memory for about one
 * path, not one per level (today: depth x path, about 1 GB). */
static int rmtree_memory_child(void *arg)
{
    const char *t = arg;
    char *r = xfmt("%s/long", t), *name = long_name('n', 250);
    if (mkdir(r, 0755) < 0 || build_chain(r, 2000, name, true) < 0)
        return FAIL("cannot build the tree\n");
    cw_buf_t err = CW_BUF_INIT;
    cw_buf_reserve(&err, 4096); /* room for an error line, made before measuring */
    long before = peak_reset();
    int rc = cw_rmtree(r, CW_FS_MAX_DEPTH, NULL, &err);
    long grown = peak_now() - before;
    int bad = 0;
    if (rc != 0 || err.len != 0 || access(r, F_OK) == 0)
        bad += FAIL("rmtree: rc %d, errors '%.300s'\n", rc, bstr(&err));
    /* depth^2 x name is 1 GB; one path is 0.5 MB */
    if (grown > 64 * 1024)
        bad += FAIL("peak memory grew by %ld KiB\n", grown);
    fprintf(stderr, "note: rmtree of 2000 x 250-byte levels: peak RSS +%ld KiB\n", grown);
    cw_buf_free(&err);
    free(name);
    free(r);
    return bad != 0;
}

/* Memory stays near one path, whatever the depth. */
static void rmtree_memory(void **state)
{
    (void)state;
    char *t = make_fast_tmpdir();
    assert_int_equal(in_child(rmtree_memory_child, t, false), 0);
    remove_tmpdir(t);
}

/* Past max_depth: the limit named, CW_ETOOBIG, and no ELOOP; at exactly
 * max_depth everything goes. */
static void rmtree_depth_limit(void **state)
{
    (void)state;
    char *t = make_tmpdir();
    char *r = xfmt("%s/r", t);
    assert_int_equal(mkdir(r, 0755), 0);
    assert_int_equal(build_chain(r, 20, "d", true), 0);
    cw_buf_t err = CW_BUF_INIT;
    assert_int_equal(cw_rmtree(r, 19, NULL, &err), CW_ETOOBIG);
    assert_non_null(strstr(bstr(&err), "/d/d': directory tree deeper than the limit of 19 levels "
                                       "(fs-max-depth)\n"));
    assert_null(strstr(bstr(&err), "symbolic links"));
    assert_int_equal(access(r, F_OK), 0);
    cw_buf_reset(&err);
    assert_int_equal(cw_rmtree(r, 20, NULL, &err), 0);
    assert_int_equal(err.len, 0);
    assert_int_equal(access(r, F_OK), -1);
    cw_buf_free(&err);
    free(r);
    remove_tmpdir(t);
}

/* A path longer than an error line may show: the line stays bounded, with
 * both ends of the path and the real errno text. */
static void rmtree_long_path_message(void **state)
{
    (void)state;
    char *t = make_tmpdir();
    char *f = xfmt("%s/file", t);
    assert_int_equal(write_file(f, "x", 0644), 0);
    cw_buf_t p = CW_BUF_INIT, err = CW_BUF_INIT;
    cw_buf_printf(&p, "%s", f);
    for (int i = 0; i < 1000; i++)
        cw_buf_printf(&p, "/x");
    cw_buf_printf(&p, "/END");
    assert_int_equal(cw_rmtree(bstr(&p), CW_FS_MAX_DEPTH, NULL, &err), -ENOTDIR);
    const char *e = bstr(&err);
    assert_true(err.len < 1200);
    assert_true(strncmp(e, "cannot remove '/tmp/", 20) == 0);
    assert_non_null(strstr(e, "...["));
    assert_non_null(strstr(e, "/x/END': Not a directory\n"));
    cw_buf_free(&p);
    cw_buf_free(&err);
    free(f);
    remove_tmpdir(t);
}

/* A directory moved out of the tree while it is being removed: on the way
 * back up, its ".." is another directory; the removal stops there instead
 * of emptying the directory it was moved to. */
static void rmtree_tree_moved(void **state)
{
    (void)state;
#ifndef HAVE_MOVE_HOOK
    skip();
#else
    char *t = make_tmpdir();
    char *r = xfmt("%s/r", t), *out = xfmt("%s/outside", t), *keep = xfmt("%s/outside/keep", t);
    assert_int_equal(mkdir(r, 0755), 0);
    assert_int_equal(mkdir(out, 0755), 0);
    assert_int_equal(write_file(keep, "keep", 0644), 0);
    assert_int_equal(build_chain(r, 40, "d", true), 0);
    /* level 10, moved when the first closed level is reopened */
    cw_buf_t l10 = CW_BUF_INIT, l9 = CW_BUF_INIT;
    cw_buf_printf(&l9, "%s", r);
    for (int i = 0; i < 9; i++)
        cw_buf_printf(&l9, "/d");
    cw_buf_printf(&l10, "%s/d", bstr(&l9));
    char *moved = xfmt("%s/moved", out);
    move_on_reopen(bstr(&l10), moved, 1);
    cw_buf_t err = CW_BUF_INIT;
    int rc = cw_rmtree(r, CW_FS_MAX_DEPTH, NULL, &err);
    move_from = NULL;
    assert_int_equal(rc, -ESTALE);
    char *want = xfmt("cannot remove '%s': directory moved during the walk; stopped\n", bstr(&l9));
    assert_string_equal(bstr(&err), want);
    free(want);
    /* what it was moved to, and what is next to it, are untouched */
    assert_int_equal(access(keep, F_OK), 0);
    assert_int_equal(access(moved, F_OK), 0);
    assert_int_equal(access(bstr(&l9), F_OK), 0);
    cw_buf_free(&err);
    cw_buf_free(&l9);
    cw_buf_free(&l10);
    free(moved);
    free(keep);
    free(out);
    free(r);
    remove_tmpdir(t);
#endif
}

/* ------------------------------------------------------------------------ */
/* The tree walker                                                          */
/* ------------------------------------------------------------------------ */

/* Walk root to the end: "path type depth" lines in order ('d' directory,
 * 'f' file, 'l' link, 'p' fifo, 's' socket), each entry also checked
 * against what its dirfd and name reach.  Returns the walk's last code. */
static int walk_all(const char *root, size_t max_depth, atomic_bool *stop, cw_strlist_t *out,
                    cw_buf_t *err)
{
    cw_walk_t *w;
    int rc = cw_walk_open(&w, root, max_depth, stop, err);
    if (rc < 0)
        return rc;
    cw_walk_entry_t e;
    while ((rc = cw_walk_next(w, &e)) == 1) {
        struct stat st;
        const char *slash = strrchr(e.path, '/');
        if (fstatat(e.dirfd, e.name, &st, AT_SYMLINK_NOFOLLOW) < 0 || st.st_ino != e.st.st_ino ||
            strcmp(slash ? slash + 1 : e.path, e.name) != 0) {
            rc = FAIL("entry '%s': name '%s' or dirfd wrong\n", e.path, e.name);
            break;
        }
        char type = S_ISDIR(e.st.st_mode)    ? 'd'
                    : S_ISLNK(e.st.st_mode)  ? 'l'
                    : S_ISFIFO(e.st.st_mode) ? 'p'
                    : S_ISSOCK(e.st.st_mode) ? 's'
                                             : 'f';
        char *line = xfmt("%s %c %zu", e.path, type, e.depth);
        cw_strlist_add(out, line);
        free(line);
    }
    int again = rc <= 0 ? cw_walk_next(w, &e) : 0;
    if (rc <= 0 && again != rc) /* the end, or a failure, stays */
        rc = FAIL("then %d after %d\n", again, rc);
    cw_walk_close(w);
    return rc;
}

/* Is the walk in pre-order: each entry right below the last directory on
 * the path it came down, a directory's content right after it? */
static int check_preorder(const cw_strlist_t *l)
{
    cw_strlist_t stack = {0}; /* directories still open, outermost first */
    int bad = 0;
    for (size_t i = 0; i < l->n && !bad; i++) {
        char *p = strdup(l->v[i]);
        char *sp = strrchr(p, ' '), *tp;
        *sp = '\0';
        tp = strrchr(p, ' ');
        *tp = '\0';
        const char *slash = strrchr(p, '/');
        size_t plen = slash ? (size_t)(slash - p) : 0;
        /* close directories until the parent is on top */
        while (stack.n > 0 && !(strlen(stack.v[stack.n - 1]) == plen &&
                                strncmp(stack.v[stack.n - 1], p, plen) == 0))
            free(stack.v[--stack.n]);
        if ((plen == 0) != (stack.n == 0))
            bad = FAIL("'%s' comes after its directory's content\n", p);
        if (strtoul(sp + 1, NULL, 10) != stack.n + 1)
            bad = FAIL("'%s': depth %s\n", p, sp + 1);
        if (tp[1] == 'd')
            cw_strlist_add(&stack, p);
        free(p);
    }
    cw_strlist_free(&stack);
    return bad;
}

/* Sort a list in place (insertion sort: the lists are small). */
static void sort_strings(cw_strlist_t *l)
{
    for (size_t i = 1; i < l->n; i++)
        for (size_t k = i; k > 0 && strcmp(l->v[k - 1], l->v[k]) > 0; k--) {
            char *x = l->v[k];
            l->v[k] = l->v[k - 1];
            l->v[k - 1] = x;
        }
}

/* Every entry once, in pre-order, links not followed, with what openat
 * needs; the end and errors stay the end and errors. */
static void walk_tree(void **state)
{
    (void)state;
    char *t = make_tmpdir();
    char *r = xfmt("%s/r", t);
    assert_int_equal(build_rm_tree(r), 0); /* f a/g a/b/h a/b/c/i a/fifo a/rel */
    static const char *more[] = {"empty", "z/y/x", "a/b/c/d"};
    for (size_t i = 0; i < sizeof more / sizeof *more; i++) {
        char *p = xfmt("%s/%s", r, more[i]);
        assert_int_equal(mkdir_p(p), 0);
        free(p);
    }
    char *l = xfmt("%s/dirlink", r), *sock = xfmt("%s/z/sock", r);
    assert_int_equal(symlink("a", l), 0);
    int sfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    strcpy(sun.sun_path, sock);
    assert_int_equal(bind(sfd, (struct sockaddr *)&sun, sizeof sun), 0);
    close(sfd);
    static const char *want[] = {
        "a d 1",      "a/b d 2",    "a/b/c d 3", "a/b/c/d d 4", "a/b/c/i f 4", "a/b/h f 3",
        "a/fifo p 2", "a/g f 2",    "a/rel l 2", "dirlink l 1", "empty d 1",   "f f 1",
        "z d 1",      "z/sock s 2", "z/y d 2",   "z/y/x d 3",
    };
    int fds = open_count();
    cw_strlist_t got = {0};
    cw_buf_t err = CW_BUF_INIT;
    assert_int_equal(walk_all(r, CW_FS_MAX_DEPTH, NULL, &got, &err), 0);
    assert_int_equal(err.len, 0);
    assert_int_equal(check_preorder(&got), 0);
    sort_strings(&got);
    assert_int_equal(got.n, sizeof want / sizeof *want);
    for (size_t i = 0; i < got.n; i++)
        assert_string_equal(got.v[i], want[i]);
    cw_strlist_free(&got);
    /* through a link to the root, and with a trailing slash */
    char *top = xfmt("%s/top", t), *slash = xfmt("%s/r/", t);
    assert_int_equal(symlink("r", top), 0);
    assert_int_equal(walk_all(top, CW_FS_MAX_DEPTH, NULL, &got, &err), 0);
    assert_int_equal(got.n, sizeof want / sizeof *want);
    cw_strlist_free(&got);
    assert_int_equal(walk_all(slash, CW_FS_MAX_DEPTH, NULL, &got, &err), 0);
    assert_int_equal(got.n, sizeof want / sizeof *want);
    cw_strlist_free(&got);
    assert_int_equal(open_count(), fds);
    /* a root that is not there, or not a directory */
    char *missing = xfmt("%s/missing", t), *file = xfmt("%s/r/f", t);
    cw_walk_t *w = (cw_walk_t *)1;
    assert_int_equal(cw_walk_open(&w, missing, 10, NULL, &err), -ENOENT);
    assert_null(w);
    assert_int_equal(cw_walk_open(&w, file, 10, NULL, &err), -ENOTDIR);
    char *msg = xfmt("cannot read directory '%s': No such file or directory\n"
                     "cannot read directory '%s': Not a directory\n",
                     missing, file);
    assert_string_equal(bstr(&err), msg);
    cw_walk_close(NULL);
    /* stopped: -EINTR, from the start or in the middle */
    atomic_bool stop = true;
    assert_int_equal(cw_walk_open(&w, r, 10, &stop, NULL), -EINTR);
    atomic_store(&stop, false);
    assert_int_equal(cw_walk_open(&w, r, 10, &stop, NULL), 0);
    cw_walk_entry_t e;
    assert_int_equal(cw_walk_next(w, &e), 1);
    atomic_store(&stop, true);
    assert_int_equal(cw_walk_next(w, &e), -EINTR);
    assert_int_equal(cw_walk_next(w, &e), -EINTR);
    cw_walk_close(w);
    assert_int_equal(open_count(), fds);
    free(msg);
    free(missing);
    free(file);
    free(top);
    free(slash);
    free(sock);
    free(l);
    free(r);
    cw_buf_free(&err);
    remove_tmpdir(t);
}

/* An unreadable directory ends the walk with its name. */
static int walk_unreadable_child(void *arg)
{
    const char *t = arg;
    char *r = xfmt("%s/r", t), *a = xfmt("%s/r/a", t);
    int bad = 0;
    if (mkdir(r, 0755) < 0 || mkdir(a, 0) < 0)
        return FAIL("mkdir\n");
    cw_strlist_t got = {0};
    cw_buf_t err = CW_BUF_INIT;
    int rc = walk_all(r, 10, NULL, &got, &err);
    if (rc != -EACCES || got.n != 1 ||
        strcmp(bstr(&err), "cannot read directory 'a': Permission denied\n") != 0)
        bad = FAIL("rc %d, %zu entries, errors '%s'\n", rc, got.n, bstr(&err));
    cw_strlist_free(&got);
    cw_buf_free(&err);
    free(a);
    free(r);
    return bad;
}

/* Permissions that really apply: as nobody. */
static void walk_unreadable(void **state)
{
    (void)state;
    char *t = make_tmpdir();
    if (geteuid() == 0)
        assert_int_equal(chown(t, NOBODY, NOBODY), 0);
    assert_int_equal(in_child(walk_unreadable_child, t, true), 0);
    remove_tmpdir(t);
}

/* 3,000 levels (a file in each) under a limit of 64 descriptors: every
 * entry, in pre-order, and no descriptor left behind. */
static int walk_deep_child(void *arg)
{
    const char *r = arg;
    if (limit_fds(64) < 0)
        return FAIL("setrlimit: %s\n", strerror(errno));
    int fds = open_count(), bad = 0;
    cw_walk_t *w;
    if (cw_walk_open(&w, r, CW_FS_MAX_DEPTH, NULL, NULL) < 0)
        return FAIL("open\n");
    cw_walk_entry_t e;
    size_t dirs = 0, files = 0;
    int rc;
    while ((rc = cw_walk_next(w, &e)) == 1 && !bad) {
        size_t slashes = 0;
        for (const char *p = e.path; *p; p++)
            slashes += *p == '/';
        if (e.depth != slashes + 1)
            bad = FAIL("'%.50s...': depth %zu\n", e.path, e.depth);
        if (S_ISDIR(e.st.st_mode)) {
            /* the one directory of each level, outermost first */
            if (e.depth != ++dirs)
                bad = FAIL("directory at depth %zu after %zu\n", e.depth, dirs - 1);
        } else {
            /* before its level's directory, or after all below it */
            files++;
            if (e.depth != dirs + 1 && dirs != 3000)
                bad = FAIL("file '%s' at depth %zu, %zu directories seen\n", e.name, e.depth, dirs);
        }
    }
    if (rc != 0 || dirs != 3000 || files != 3001)
        bad += FAIL("rc %d, %zu directories, %zu files\n", rc, dirs, files);
    cw_walk_close(w);
    if (open_count() != fds)
        bad += FAIL("descriptors: %d before, %d after\n", fds, open_count());
    return bad != 0;
}

/* Deep trees with few descriptors. */
static void walk_deep(void **state)
{
    (void)state;
    char *t = make_fast_tmpdir();
    char *r = xfmt("%s/r", t);
    assert_int_equal(mkdir(r, 0755), 0);
    assert_int_equal(build_chain(r, 3000, "d", true), 0);
    assert_int_equal(in_child(walk_deep_child, r, false), 0);
    free(r);
    remove_tmpdir(t);
}

/* Past max_depth: entries down to the limit, then CW_ETOOBIG naming the
 * directory and the limit. */
static void walk_depth_limit(void **state)
{
    (void)state;
    char *t = make_tmpdir();
    char *r = xfmt("%s/r", t);
    assert_int_equal(mkdir(r, 0755), 0);
    assert_int_equal(build_chain(r, 10, "d", false), 0);
    cw_strlist_t got = {0};
    cw_buf_t err = CW_BUF_INIT;
    assert_int_equal(walk_all(r, 5, NULL, &got, &err), CW_ETOOBIG);
    assert_int_equal(got.n, 6); /* d .. d/d/d/d/d/d, the last not entered */
    assert_string_equal(got.v[5], "d/d/d/d/d/d d 6");
    assert_string_equal(bstr(&err), "cannot read directory 'd/d/d/d/d/d': directory tree deeper "
                                    "than the limit of 5 levels (fs-max-depth)\n");
    cw_strlist_free(&got);
    cw_buf_reset(&err);
    assert_int_equal(walk_all(r, 10, NULL, &got, &err), 0);
    assert_int_equal(got.n, 11);
    cw_strlist_free(&got);
    cw_buf_free(&err);
    free(r);
    remove_tmpdir(t);
}

/* A directory moved out of the tree while the walk is below it: on the
 * way back up its ".." is another directory, and the walk ends there. */
static void walk_tree_moved(void **state)
{
    (void)state;
    char *t = make_tmpdir();
    char *r = xfmt("%s/r", t), *moved = xfmt("%s/moved", t);
    assert_int_equal(mkdir(r, 0755), 0);
    assert_int_equal(build_chain(r, 40, "d", true), 0);
    char *r10 = chain_path(r, 10);
    cw_walk_t *w;
    cw_buf_t err = CW_BUF_INIT;
    assert_int_equal(cw_walk_open(&w, r, CW_FS_MAX_DEPTH, NULL, &err), 0);
    cw_walk_entry_t e;
    int rc;
    while ((rc = cw_walk_next(w, &e)) == 1 && strcmp(e.name, "leaf") != 0)
        ;
    assert_int_equal(rc, 1);
    assert_int_equal(e.depth, 41);
    assert_int_equal(rename(r10, moved), 0);
    while ((rc = cw_walk_next(w, &e)) == 1)
        assert_true(e.depth > 10); /* what is left below the moved one */
    assert_int_equal(rc, -ESTALE);
    char *d9 = chain_path("d", 8);
    char *want = xfmt("cannot read directory '%s': directory moved during the walk\n", d9);
    assert_string_equal(bstr(&err), want);
    cw_walk_close(w);
    free(want);
    free(d9);
    free(r10);
    free(moved);
    free(r);
    cw_buf_free(&err);
    remove_tmpdir(t);
}

/* ------------------------------------------------------------------------ */
/* rm's safety rules                                                        */
/* ------------------------------------------------------------------------ */

/* cw_rm_refusal(path, basedir): rc, and why is exactly want ("" for none). */
static int refusal_is(const char *path, const char *basedir, int rc, const char *want)
{
    cw_buf_t why = CW_BUF_INIT;
    int got = cw_rm_refusal(path, basedir, &why);
    int bad = 0;
    if (got != rc || strcmp(bstr(&why), want) != 0)
        bad = FAIL("'%s': rc %d (want %d), '%s'\n", path, got, rc, bstr(&why));
    if (cw_rm_refusal(path, basedir, NULL) != rc)
        bad = FAIL("'%s': without why\n", path);
    cw_buf_free(&why);
    return bad;
}

/* Every rule, with rm's words where it has them, and what is allowed. */
static void rm_refusal_rules(void **state)
{
    (void)state;
    char *t = make_tmpdir();
    char *b = xfmt("%s/base", t), *build = xfmt("%s/base/build", t);
    assert_int_equal(mkdir_p(build), 0);
    int bad = 0;
    /* "." and "..", existing or not */
    static const char *dots[] = {".",    "..", "./",  "../",      "x/..",      "x/.",
                                 "x/./", "/.", "/..", "a/b/..//", "B/build/.", "B/build/./"};
    for (size_t i = 0; i < sizeof dots / sizeof *dots; i++) {
        char *want = xfmt("refusing to remove '.' or '..' directory: skipping '%s'\n", dots[i]);
        bad += refusal_is(dots[i], b, -EINVAL, want);
        free(want);
    }
    char *dotb = xfmt("%s/build/.", b);
    char *want = xfmt("refusing to remove '.' or '..' directory: skipping '%s'\n", dotb);
    bad += refusal_is(dotb, b, -EINVAL, want);
    free(want);
    free(dotb);
    /* the root, by what it is */
    bad += refusal_is("/", b, -EPERM, "it is dangerous to operate recursively on '/'\n");
    bad += refusal_is("//", NULL, -EPERM,
                      "it is dangerous to operate recursively on '//' (same as '/')\n");
    char *rootlink = xfmt("%s/rootlink", t), *rootslash = xfmt("%s/rootlink/", t);
    assert_int_equal(symlink("/", rootlink), 0);
    bad += refusal_is(rootlink, b, 0, ""); /* the link goes, not / */
    want = xfmt("it is dangerous to operate recursively on '%s' (same as '/')\n", rootslash);
    {
        /* Under qemu-user, whose -L prefix stands in for "/" in the checks
         * but not in the link, the same path is caught as an ancestor of
         * the base directory instead: refused either way. */
        char *alt =
            xfmt("refusing to remove '%s': it contains the worker's base directory\n", rootslash);
        cw_buf_t why = CW_BUF_INIT;
        int got = cw_rm_refusal(rootslash, b, &why);
        if (got != -EPERM || (strcmp(bstr(&why), want) != 0 && strcmp(bstr(&why), alt) != 0))
            bad += FAIL("'%s': rc %d, '%s'\n", rootslash, got, bstr(&why));
        cw_buf_free(&why);
        free(alt);
    }
    free(want);
    /* a link to / must not outlive a failed test in /tmp: a glob there would follow it */
    unlink(rootlink);
    /* the base directory and its ancestors, however they are reached */
    char *bslash = xfmt("%s/", b), *bdot = xfmt("%s/build/../../base", b);
    static const char *base_msg = "': it is the worker's base directory\n";
    static const char *up_msg = "': it contains the worker's base directory\n";
    const char *same[] = {b, bslash, bdot};
    for (size_t i = 0; i < 3; i++) {
        want = xfmt("refusing to remove '%s%s", same[i], base_msg);
        bad += refusal_is(same[i], b, -EPERM, want);
        free(want);
    }
    const char *ups[] = {t, "/tmp", "/tmp/"};
    for (size_t i = 0; i < 3; i++) {
        want = xfmt("refusing to remove '%s%s", ups[i], up_msg);
        bad += refusal_is(ups[i], b, -EPERM, want);
        free(want);
    }
    /* through links: to the base directory itself, or to its parent */
    char *blink = xfmt("%s/blink", t), *blinks = xfmt("%s/blink/", t);
    char *plink = xfmt("%s/plink", t), *viap = xfmt("%s/plink/base", t);
    assert_int_equal(symlink("base", blink), 0);
    assert_int_equal(symlink(".", plink), 0);
    bad += refusal_is(blink, b, 0, "");
    want = xfmt("refusing to remove '%s%s", blinks, base_msg);
    bad += refusal_is(blinks, b, -EPERM, want);
    free(want);
    want = xfmt("refusing to remove '%s%s", viap, base_msg);
    bad += refusal_is(viap, b, -EPERM, want);
    free(want);
    /* a base directory given through a link: what it is counts */
    want = xfmt("refusing to remove '%s%s", b, base_msg);
    bad += refusal_is(b, blink, -EPERM, want);
    free(want);
    want = xfmt("refusing to remove '%s%s", t, up_msg);
    bad += refusal_is(t, blinks, -EPERM, want);
    free(want);
    /* allowed: inside the base directory, beside it, missing, files,
     * names that only start with dots, no base directory */
    char *f = xfmt("%s/file", t), *missing = xfmt("%s/missing", t);
    char *beside = xfmt("%s/beside", t), *dots3 = xfmt("%s/...", t);
    assert_int_equal(write_file(f, "x", 0644), 0);
    assert_int_equal(mkdir(beside, 0755), 0);
    const char *ok[] = {build, f, missing, beside, dots3, "", ".hidden", "a/.b", "..."};
    for (size_t i = 0; i < sizeof ok / sizeof *ok; i++)
        bad += refusal_is(ok[i], b, 0, "");
    bad += refusal_is(t, NULL, 0, "");
    bad += refusal_is(t, missing, 0, "");
    /* a path as long as can be: the line stays bounded */
    cw_buf_t lp = CW_BUF_INIT, why = CW_BUF_INIT;
    for (int i = 0; i < 1500; i++)
        cw_buf_printf(&lp, "x/");
    cw_buf_printf(&lp, "..");
    assert_int_equal(cw_rm_refusal(bstr(&lp), b, &why), -EINVAL);
    assert_true(why.len < 1200);
    assert_non_null(strstr(bstr(&why), "x/x/..'\n"));
    cw_buf_free(&lp);
    cw_buf_free(&why);
    assert_int_equal(bad, 0);
    free(f);
    free(missing);
    free(beside);
    free(dots3);
    free(blink);
    free(blinks);
    free(plink);
    free(viap);
    free(bslash);
    free(bdot);
    free(rootlink);
    free(rootslash);
    free(b);
    free(build);
    remove_tmpdir(t);
}

/* The texts for the codes the walks return. */
static void fs_strerror_texts(void **state)
{
    (void)state;
    char buf[128];
    assert_string_equal(cw_fs_strerror(CW_ETOOBIG, buf, sizeof buf),
                        "directory tree deeper than the configured limit (fs-max-depth)");
    assert_string_equal(cw_fs_strerror(-ENOENT, buf, sizeof buf), "No such file or directory");
    assert_string_equal(cw_fs_strerror(-ESTALE, buf, sizeof buf), "Stale file handle");
}

/* The fsutil test group. */
int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(strlist_basics),
        cmocka_unit_test(glob_matches_python),
        cmocka_unit_test(glob_fnmatch_fuzz),
        cmocka_unit_test(glob_unreadable_dir),
        cmocka_unit_test(glob_no_duplicates),
        cmocka_unit_test(glob_stop_and_append),
        cmocka_unit_test(glob_long_pattern),
        cmocka_unit_test(glob_deep_tree),
        cmocka_unit_test(copytree_like_cp),
        cmocka_unit_test(copytree_into_existing_dir),
        cmocka_unit_test(copytree_top_symlink),
        cmocka_unit_test(copytree_over_existing_copy),
        cmocka_unit_test(copytree_missing_source),
        cmocka_unit_test(copytree_into_itself),
        cmocka_unit_test(copytree_stop),
        cmocka_unit_test(copytree_deep),
        cmocka_unit_test(copytree_deep_few_fds),
        cmocka_unit_test(copytree_interrupt),
        cmocka_unit_test(copytree_tree_moved),
        cmocka_unit_test(copytree_messages),
        cmocka_unit_test(copytree_permissions),
        cmocka_unit_test(copytree_foreign_owner),
        cmocka_unit_test(mkdirs_basics),
        cmocka_unit_test(mkdirs_file_in_the_way),
        cmocka_unit_test(rmtree_tree),
        cmocka_unit_test(rmtree_readonly),
        cmocka_unit_test(rmtree_links),
        cmocka_unit_test(rmtree_missing_and_file),
        cmocka_unit_test(rmtree_stop),
        cmocka_unit_test(rmtree_denied),
        cmocka_unit_test(rmtree_deep_few_fds),
        cmocka_unit_test(rmtree_memory),
        cmocka_unit_test(rmtree_depth_limit),
        cmocka_unit_test(rmtree_long_path_message),
        cmocka_unit_test(rmtree_tree_moved),
        cmocka_unit_test(walk_tree),
        cmocka_unit_test(walk_unreadable),
        cmocka_unit_test(walk_deep),
        cmocka_unit_test(walk_depth_limit),
        cmocka_unit_test(walk_tree_moved),
        cmocka_unit_test(rm_refusal_rules),
        cmocka_unit_test(fs_strerror_texts),
    };
    /* TEST_FILTER=pattern runs only the matching tests (e.g. under valgrind) */
    if (getenv("TEST_FILTER") != NULL)
        cmocka_set_test_filter(getenv("TEST_FILTER"));
    return cmocka_run_group_tests(tests, NULL, NULL);
}
