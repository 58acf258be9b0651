/* File-system helpers: mkdir -p, rm -rf, glob, cp -R and a tree walker,
 * natively and without recursion (see fsutil.h). */
#include "fsutil.h"

#include "cworker/cw.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ------------------------------------------------------------------------ */
/* What every walk shares                                                   */
/* ------------------------------------------------------------------------ */

/* Directory descriptors one walk keeps open per tree it walks, whatever
 * its depth (the worker's commands and connections share the fd table). */
#define FS_WINDOW 16

/* Bytes of a path shown in an error line, and in a cp -v line. */
#define FS_SHOWN_MAX  1024
#define FS_LOGGED_MAX 4096

/* How a walk opens a directory: never through a link. */
#define FS_OPEN_DIR (O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)

/* What a walk says when a directory's ".." is no longer the directory it
 * came down from. */
#define FS_MOVED_MSG "directory moved during the walk"

/* Has the caller asked us to stop? */
static bool stopped(atomic_bool *stop)
{
    return stop != NULL && atomic_load(stop);
}

/* A path for an error line, bounded whatever it holds. */
static void put_path(cw_buf_t *b, const char *p)
{
    cw_buf_append_elided(b, p, FS_SHOWN_MAX);
}

/* The depth limit, as every walk names it ("directory tree deeper than
 * the limit of N levels (fs-max-depth)"). */
static void depth_msg(cw_buf_t *b, const char *what, size_t max_depth)
{
    cw_buf_printf(b, "%s deeper than the limit of %zu levels (fs-max-depth)", what, max_depth);
}

/* Make room for need elements of size in *v; 0 or -ENOMEM (cw_grow). */
#define fs_grow(v, cap, need, size) fs_grow_((void *)(v), cap, need, size)
static int fs_grow_(void *pv, size_t *cap, size_t need, size_t size)
{
    /* pv points at a T *: read and write it as bytes, not through void * */
    void *v, *nv;
    memcpy(&v, pv, sizeof v);
    if ((nv = cw_grow(v, cap, need, size)) == NULL)
        return -ENOMEM;
    memcpy(pv, &nv, sizeof nv);
    return 0;
}

/* A path buffer set to s (NUL-terminated); 0 or -ENOMEM. */
static int path_set(cw_buf_t *b, const char *s)
{
    cw_buf_reset(b);
    size_t n = strlen(s);
    if (cw_buf_reserve(b, n + 1) < 0)
        return -ENOMEM;
    memcpy(b->data, s, n + 1);
    b->len = n;
    return 0;
}

/* Append "/" (unless the path is empty or ends with one) and name; the
 * buffer stays NUL-terminated.  0 or -ENOMEM. */
static int path_push(cw_buf_t *b, const char *name)
{
    size_t n = strlen(name);
    bool sep = b->len > 0 && b->data[b->len - 1] != '/';
    if (cw_buf_reserve(b, sep + n + 1) < 0)
        return -ENOMEM;
    if (sep)
        b->data[b->len++] = '/';
    memcpy(b->data + b->len, name, n + 1);
    b->len += n;
    return 0;
}

/* Back to a shorter path. */
static void path_pop(cw_buf_t *b, size_t len)
{
    b->len = len;
    if (b->data != NULL)
        b->data[len] = '\0';
}

/* The name stack: the names left to visit on every level of a walk, each
 * level's above its parent's, arranged so that the next one to visit is on
 * top.  An entry is [d_type + 1][name][NUL] (the type byte is never 0, so
 * an entry starts just after the previous NUL).  A walk's memory is thus one
 * path plus what is left to visit on each level of it, as with fts. */

/* A name being read: where it is on the stack, and its inode number. */
typedef struct ns_ent {
    size_t off;
    ino_t ino;
} ns_ent_t;

/* qsort order: inode number, then the order read. */
static int ns_ent_cmp(const void *a, const void *b)
{
    const ns_ent_t *x = a, *y = b;
    if (x->ino != y->ino)
        return x->ino < y->ino ? -1 : 1;
    return x->off < y->off ? -1 : x->off > y->off;
}

/* Push the entries of the directory fd (less "." and "..") on the name
 * stack ns, to come off in the order read, or in inode order when by_ino.
 * 0, -EINTR, -ENOMEM or the -errno of reading (the names read before a
 * failure stay). */
static int ns_read(cw_buf_t *ns, int fd, bool by_ino, atomic_bool *stop)
{
    size_t start = ns->len;
    /* a descriptor of its own for the DIR, which closes it */
    int dfd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    DIR *d = dfd >= 0 ? fdopendir(dfd) : NULL;
    if (d == NULL) {
        int err = errno;
        if (dfd >= 0)
            close(dfd);
        return -err;
    }
    ns_ent_t *v = NULL;
    size_t n = 0, cap = 0;
    int rc = 0;
    for (;;) {
        errno = 0;
        struct dirent *de = readdir(d);
        if (de == NULL) {
            rc = -errno;
            break;
        }
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        if (stopped(stop)) {
            rc = -EINTR;
            break;
        }
        size_t len = strlen(de->d_name);
        unsigned char kind = (unsigned char)(de->d_type + 1);
        if (fs_grow((void **)&v, &cap, n + 1, sizeof *v) < 0 || cw_buf_reserve(ns, len + 2) < 0) {
            rc = -ENOMEM;
            break;
        }
        v[n].off = ns->len;
        v[n++].ino = de->d_ino;
        ns->data[ns->len++] = kind;
        memcpy(ns->data + ns->len, de->d_name, len + 1);
        ns->len += len + 1;
    }
    closedir(d);
    if (by_ino && n > 1)
        qsort(v, n, sizeof *v, ns_ent_cmp);
    /* the last to visit goes at the bottom */
    char *tmp = n > 1 ? malloc(ns->len - start) : NULL;
    if (tmp != NULL) {
        size_t pos = 0;
        for (size_t i = n; i-- > 0;) {
            size_t len = strlen((const char *)ns->data + v[i].off) + 1;
            memcpy(tmp + pos, ns->data + v[i].off, len);
            pos += len;
        }
        memcpy(ns->data + start, tmp, pos);
        free(tmp);
    } else if (n > 1) {
        rc = -ENOMEM;
        ns->len = start;
    }
    free(v);
    return rc;
}

/* Take the next name of the level whose names start at `start` off the
 * stack: the name (valid until the stack grows again) and its d_type, or
 * NULL when the level has none left. */
static const char *ns_pop(cw_buf_t *ns, size_t start, unsigned char *kind)
{
    if (ns->len <= start)
        return NULL;
    size_t end = ns->len - 1; /* its NUL */
    size_t i = end;
    while (i > start && ns->data[i - 1] != '\0')
        i--;
    *kind = (unsigned char)(ns->data[i] - 1);
    ns->len = i;
    return (const char *)ns->data + i + 1;
}

/* An open directory of a walk: its descriptor (-1 once the window has
 * moved past it) and what it is (st_dev, st_ino). */
typedef struct fs_dir {
    int fd;
    dev_t dev;
    ino_t ino;
} fs_dir_t;

/* A level of a walk that holds one tree. */
typedef struct fs_level {
    fs_dir_t dir;
    size_t names; /* where its names start on the name stack */
    size_t plen;  /* the length of its path */
    size_t name;  /* where its own name starts in that path */
} fs_level_t;

/* Levels lv[0..n) were just made n: close the descriptor that falls out
 * of the window of the last FS_WINDOW. */
static void fs_window(fs_level_t *lv, size_t n)
{
    if (n > FS_WINDOW && lv[n - 1 - FS_WINDOW].dir.fd >= 0) {
        close(lv[n - 1 - FS_WINDOW].dir.fd);
        lv[n - 1 - FS_WINDOW].dir.fd = -1;
    }
}

/* Bring back the descriptor of parent (closed by the window) through
 * child's "..", and check that it is still the directory met on the way
 * down: anything else means the tree was moved under us, and the walk must
 * stop rather than go on somewhere else.  0, -ESTALE for a different
 * directory, or -errno. */
static int fs_reopen_parent(fs_dir_t *parent, const fs_dir_t *child)
{
    int fd = openat(child->fd, "..", FS_OPEN_DIR);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0) {
        int err = errno;
        if (fd >= 0)
            close(fd);
        return -err;
    }
    if (st.st_dev != parent->dev || st.st_ino != parent->ino) {
        close(fd);
        return -ESTALE;
    }
    parent->fd = fd;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* mkdir -p                                                                 */
/* ------------------------------------------------------------------------ */

int cw_mkdirs(const char *path, mode_t mode)
{
    struct stat st;
    if (stat(path, &st) == 0)
        return S_ISDIR(st.st_mode) ? 0 : -EEXIST;
    size_t len = strlen(path);
    char *p = malloc(len + 1);
    if (p == NULL)
        return -ENOMEM;
    memcpy(p, path, len + 1);
    int rc = 0;
    for (size_t i = 1; i <= len; i++) {
        if (p[i] != '/' && p[i] != '\0')
            continue;
        char c = p[i];
        p[i] = '\0';
        if (mkdir(p, mode) < 0 && errno != EEXIST) {
            rc = -errno;
            break;
        }
        p[i] = c;
    }
    if (rc == 0 && (stat(path, &st) < 0 || !S_ISDIR(st.st_mode)))
        rc = stat(path, &st) < 0 ? -errno : -EEXIST;
    free(p);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* rm -rf                                                                   */
/* ------------------------------------------------------------------------ */

/* One line "cannot remove 'p': <strerror>" in errors (p elided); returns
 * the first failure so far, or -err. */
static int rm_fail(cw_buf_t *errors, const char *shown, int err, int first)
{
    if (errors != NULL) {
        char ebuf[128]; /* on the thread pool: a thread-safe strerror */
        cw_buf_append_str(errors, "cannot remove '");
        put_path(errors, shown);
        cw_buf_printf(errors, "': %s\n", cw_errstr(err, ebuf, sizeof ebuf));
    }
    return first ? first : -err;
}

/* One cw_rmtree walk: the shown path of the current entry, the names left
 * on every level, and the levels from the top down. */
typedef struct rm_ctx {
    atomic_bool *stop;
    cw_buf_t *errors;
    size_t max_depth;
    int first;      /* -errno of the first failure */
    cw_buf_t path;  /* shown path (NUL-terminated) */
    cw_buf_t names; /* name stack */
    fs_level_t *lv; /* lv[0] is the top directory */
    size_t n, cap;
} rm_ctx_t;

/* Open the directory name (under at, at path offset name_off of the shown
 * path), made u+rwx first if need be, as a new level with its entries on
 * the name stack.  0; a negative code that ends the walk (CW_ETOOBIG,
 * -EINTR, -ENOMEM), or another -errno when just this directory failed
 * (already reported). */
static int rm_enter(rm_ctx_t *c, int at, const char *name, size_t name_off)
{
    const char *shown = (const char *)c->path.data;
    if (c->n > c->max_depth) {
        if (c->errors != NULL) {
            cw_buf_append_str(c->errors, "cannot remove '");
            put_path(c->errors, shown);
            cw_buf_append_str(c->errors, "': ");
            depth_msg(c->errors, "directory tree", c->max_depth);
            cw_buf_append_str(c->errors, "\n");
        }
        return CW_ETOOBIG;
    }
    int fd = openat(at, name, FS_OPEN_DIR);
    if (fd < 0 && errno == EACCES) {
        /* chmod u+rwx and try again, as the stock worker does */
        struct stat st;
        if (fstatat(at, name, &st, AT_SYMLINK_NOFOLLOW) == 0)
            fchmodat(at, name, (st.st_mode & 07777) | S_IRWXU, 0);
        fd = openat(at, name, FS_OPEN_DIR);
    }
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0) {
        int err = errno;
        if (fd >= 0)
            close(fd);
        c->first = rm_fail(c->errors, shown, err, c->first);
        return -err;
    }
    if ((st.st_mode & S_IRWXU) != S_IRWXU)
        fchmod(fd, (st.st_mode & 07777) | S_IRWXU);
    size_t names = c->names.len;
    int rc = ns_read(&c->names, fd, false, c->stop);
    if (rc == 0 && fs_grow((void **)&c->lv, &c->cap, c->n + 1, sizeof *c->lv) < 0)
        rc = -ENOMEM;
    if (rc < 0) {
        /* unreadable: leave it (its removal could only fail) */
        if (rc != -EINTR && rc != -ENOMEM)
            c->first = rm_fail(c->errors, shown, -rc, c->first);
        c->names.len = names;
        close(fd);
        return rc;
    }
    c->lv[c->n++] = (fs_level_t){
        .dir = {fd, st.st_dev, st.st_ino}, .names = names, .plen = c->path.len, .name = name_off};
    fs_window(c->lv, c->n);
    return 0;
}

/* The directory at the top of the stack is empty: remove it from its
 * parent, whose descriptor is brought back first if the window closed it.
 * 0, or a code that ends the walk. */
static int rm_leave(rm_ctx_t *c, const char *top)
{
    fs_level_t *l = &c->lv[c->n - 1];
    if (c->n == 1) {
        close(l->dir.fd);
        c->n = 0;
        if (unlinkat(AT_FDCWD, top, AT_REMOVEDIR) < 0 && errno != ENOENT)
            c->first = rm_fail(c->errors, top, errno, c->first);
        return 0;
    }
    fs_level_t *p = l - 1;
    if (p->dir.fd < 0) {
        int rc = fs_reopen_parent(&p->dir, &l->dir);
        if (rc < 0) {
            path_pop(&c->path, p->plen);
            if (c->errors != NULL) {
                char ebuf[128];
                cw_buf_append_str(c->errors, "cannot remove '");
                put_path(c->errors, (const char *)c->path.data);
                cw_buf_printf(c->errors, "': %s; stopped\n",
                              rc == -ESTALE ? FS_MOVED_MSG : cw_errstr(-rc, ebuf, sizeof ebuf));
            }
            return rc;
        }
    }
    close(l->dir.fd);
    c->n--;
    if (unlinkat(p->dir.fd, (const char *)c->path.data + l->name, AT_REMOVEDIR) < 0 &&
        errno != ENOENT)
        c->first = rm_fail(c->errors, (const char *)c->path.data, errno, c->first);
    path_pop(&c->path, p->plen);
    return 0;
}

/* Remove the directory top and everything in it, depth first, without
 * recursion: the levels are on the heap, at most FS_WINDOW of them hold a
 * descriptor. */
static int rm_tree(rm_ctx_t *c, const char *top)
{
    if (path_set(&c->path, top) < 0)
        return -ENOMEM;
    int end = rm_enter(c, AT_FDCWD, top, 0);
    if (end != -EINTR && end != -ENOMEM && end != CW_ETOOBIG)
        end = 0;
    while (end == 0 && c->n > 0) {
        fs_level_t *l = &c->lv[c->n - 1];
        if (stopped(c->stop)) {
            end = -EINTR;
            break;
        }
        unsigned char kind;
        const char *name = ns_pop(&c->names, l->names, &kind);
        if (name == NULL) {
            end = rm_leave(c, top);
            continue;
        }
        size_t plen = c->path.len;
        if (path_push(&c->path, name) < 0) {
            end = -ENOMEM;
            break;
        }
        size_t name_off = c->path.len - strlen(name);
        name = (const char *)c->path.data + name_off;
        bool is_dir = kind == DT_DIR;
        struct stat st;
        if (kind == DT_UNKNOWN && fstatat(l->dir.fd, name, &st, AT_SYMLINK_NOFOLLOW) == 0)
            is_dir = S_ISDIR(st.st_mode);
        if (is_dir) {
            int rc = rm_enter(c, l->dir.fd, name, name_off);
            if (rc == -EINTR || rc == -ENOMEM || rc == CW_ETOOBIG)
                end = rc;
            else if (rc < 0)
                path_pop(&c->path, plen);
            continue;
        }
        if (unlinkat(l->dir.fd, name, 0) < 0 && errno != ENOENT)
            c->first = rm_fail(c->errors, (const char *)c->path.data, errno, c->first);
        path_pop(&c->path, plen);
    }
    for (size_t i = 0; i < c->n; i++)
        if (c->lv[i].dir.fd >= 0)
            close(c->lv[i].dir.fd);
    c->n = 0;
    if (end != 0 && c->first == 0)
        c->first = end;
    return c->first;
}

/* rm -rf path (see fsutil.h). */
int cw_rmtree(const char *path, size_t max_depth, atomic_bool *stop, cw_buf_t *errors)
{
    if (stopped(stop))
        return -EINTR;
    struct stat st;
    if (lstat(path, &st) < 0)
        return errno == ENOENT ? 0 : rm_fail(errors, path, errno, 0);
    if (!S_ISDIR(st.st_mode)) {
        if (unlink(path) < 0 && errno != ENOENT)
            return rm_fail(errors, path, errno, 0);
        return 0;
    }
    size_t len = strlen(path);
    if (len > 1 && path[len - 1] == '/') {
        /* "link/" made lstat follow a link to a directory: remove the link,
         * never the target's content. */
        while (len > 1 && path[len - 1] == '/')
            len--;
        char *bare = strndup(path, len);
        if (bare == NULL)
            return -ENOMEM;
        int rc = 1;
        if (lstat(bare, &st) == 0 && S_ISLNK(st.st_mode))
            rc = unlink(bare) < 0 && errno != ENOENT ? rm_fail(errors, path, errno, 0) : 0;
        free(bare);
        if (rc <= 0)
            return rc;
    }
    /* A trailing slash on a directory path is fine for openat, and for
     * unlinkat(AT_REMOVEDIR) of the top, which the kernel also accepts. */
    rm_ctx_t c = {.stop = stop, .errors = errors, .max_depth = max_depth};
    int rc = rm_tree(&c, path);
    cw_buf_free(&c.path);
    cw_buf_free(&c.names);
    free(c.lv);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* rm's safety rules                                                        */
/* ------------------------------------------------------------------------ */

/* How the base directory's ancestors are opened: only to be looked at
 * (O_PATH needs no read permission on them). */
#ifdef O_PATH
#define FS_OPEN_LOOK (O_PATH | O_DIRECTORY | O_CLOEXEC)
#else
#define FS_OPEN_LOOK (O_RDONLY | O_DIRECTORY | O_CLOEXEC)
#endif

/* The same file system object? */
static bool same_file(const struct stat *a, const struct stat *b)
{
    return a->st_dev == b->st_dev && a->st_ino == b->st_ino;
}

/* A refusal: rc, and the line head + path (elided) + tail in why. */
static int refuse(cw_buf_t *why, int rc, const char *head, const char *path, const char *tail)
{
    if (why != NULL) {
        cw_buf_append_str(why, head);
        put_path(why, path);
        cw_buf_append_str(why, tail);
        cw_buf_append_str(why, "\n");
    }
    return rc;
}

/* Would rm -rf refuse path, or would it take the worker's base directory
 * with it (see fsutil.h)? */
int cw_rm_refusal(const char *path, const char *basedir, cw_buf_t *why)
{
    size_t n = strlen(path), end = n;
    while (end > 0 && path[end - 1] == '/')
        end--;
    size_t start = end;
    while (start > 0 && path[start - 1] != '/')
        start--;
    if (end > start && path[start] == '.' &&
        (end - start == 1 || (end - start == 2 && path[start + 1] == '.')))
        return refuse(why, -EINVAL, "refusing to remove '.' or '..' directory: skipping '", path,
                      "'");
    /* lstat: a link given without a trailing slash is what rm removes,
     * never its target; with one, the kernel follows it */
    struct stat st, root;
    if (n == 0 || lstat(path, &st) < 0 || !S_ISDIR(st.st_mode))
        return 0; /* nothing there, or no directory: nothing recursive */
    bool have_root = stat("/", &root) == 0;
    if (have_root && same_file(&st, &root))
        return refuse(why, -EPERM, "it is dangerous to operate recursively on '", path,
                      strcmp(path, "/") == 0 ? "'" : "' (same as '/')");
    if (basedir == NULL)
        return 0;
    /* the base directory, then each parent through "..", up to the root */
    int fd = open(basedir, FS_OPEN_LOOK);
    struct stat b, prev = {0};
    int rc = 0;
    for (size_t up = 0; fd >= 0 && fstat(fd, &b) == 0; up++) {
        if (same_file(&st, &b)) {
            rc = refuse(why, -EPERM, "refusing to remove '", path,
                        up == 0 ? "': it is the worker's base directory"
                                : "': it contains the worker's base directory");
            break;
        }
        if ((have_root && same_file(&b, &root)) || (up > 0 && same_file(&b, &prev)))
            break;
        prev = b;
        int parent = openat(fd, "..", FS_OPEN_LOOK);
        close(fd);
        fd = parent;
    }
    if (fd >= 0)
        close(fd);
    return rc;
}

/* Text for a code from these functions (see fsutil.h). */
const char *cw_fs_strerror(int rc, char *buf, size_t len)
{
    if (rc == CW_ETOOBIG)
        return "directory tree deeper than the configured limit (fs-max-depth)";
    if (rc < 0 && rc > CW_ERR_BASE)
        return cw_errstr(-rc, buf, len);
    return cw_strerror(rc);
}

/* ------------------------------------------------------------------------ */
/* String lists                                                             */
/* ------------------------------------------------------------------------ */

/* Append s itself (already on the heap) to l; on failure s is freed. */
static int strlist_take(cw_strlist_t *l, char *s)
{
    if (s == NULL)
        return -ENOMEM;
    char **v = cw_grow(l->v, &l->cap, l->n + 1, sizeof *v);
    if (v == NULL) {
        free(s);
        return -ENOMEM;
    }
    l->v = v;
    l->v[l->n++] = s;
    return 0;
}

/* Append a copy of s. */
int cw_strlist_add(cw_strlist_t *l, const char *s)
{
    return strlist_take(l, strdup(s));
}

/* Free the strings and the array; the list is empty and reusable. */
void cw_strlist_free(cw_strlist_t *l)
{
    if (l == NULL)
        return;
    for (size_t i = 0; i < l->n; i++)
        free(l->v[i]);
    free(l->v);
    l->v = NULL;
    l->n = l->cap = 0;
}

/* Free the strings but keep the array, for a list reused in a loop. */
static void strlist_clear(cw_strlist_t *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->v[i]);
    l->n = 0;
}

/* ------------------------------------------------------------------------ */
/* fnmatch, as Python's fnmatch.translate() + re see it                     */
/* ------------------------------------------------------------------------ */

/* Python matches str names: the bytes decoded as UTF-8 with surrogateescape.
 * So '?' takes one whole character, and a byte that is not valid UTF-8 is
 * one character of its own (U+DC80..U+DCFF).  Decode one character of s
 * (n > 0 bytes) into *cp, return its length in bytes. */
static size_t utf8_next(const unsigned char *s, size_t n, uint32_t *cp)
{
    unsigned char b = s[0];
    size_t len;
    uint32_t c, min;
    if (b < 0x80) {
        *cp = b;
        return 1;
    } else if (b >= 0xC2 && b <= 0xDF) {
        len = 2, c = b & 0x1F, min = 0x80;
    } else if (b >= 0xE0 && b <= 0xEF) {
        len = 3, c = b & 0x0F, min = 0x800;
    } else if (b >= 0xF0 && b <= 0xF4) {
        len = 4, c = b & 0x07, min = 0x10000;
    } else {
        *cp = 0xDC00 + b;
        return 1;
    }
    if (n < len) {
        *cp = 0xDC00 + b;
        return 1;
    }
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) {
            *cp = 0xDC00 + b;
            return 1;
        }
        c = (c << 6) | (s[i] & 0x3F);
    }
    /* overlong forms, UTF-16 surrogates and values past U+10FFFF are errors */
    if (c < min || (c >= 0xD800 && c <= 0xDFFF) || c > 0x10FFFF) {
        *cp = 0xDC00 + b;
        return 1;
    }
    *cp = c;
    return len;
}

/* Decode s to code points; *out is malloc'd (freed by the caller). */
static int utf8_decode(const char *s, uint32_t **out, size_t *outn)
{
    size_t n = strlen(s);
    uint32_t *v = malloc((n + 1) * sizeof *v);
    if (v == NULL)
        return -ENOMEM;
    size_t k = 0;
    for (size_t i = 0; i < n;)
        i += utf8_next((const unsigned char *)s + i, n - i, &v[k++]);
    *out = v;
    *outn = k;
    return 0;
}

enum { PT_LIT, PT_ANY, PT_STAR, PT_SET, PT_NEVER };

/* One pattern element; a set refers to ranges rng[set .. set + nset). */
typedef struct ptok {
    uint8_t kind;
    bool neg;
    uint32_t c;
    size_t set, nset;
} ptok_t;

/* An inclusive range of code points in a set (a single one: lo == hi). */
typedef struct prange {
    uint32_t lo, hi;
} prange_t;

/* A compiled pattern component. */
typedef struct fnpat {
    ptok_t *tok;
    size_t ntok;
    prange_t *rng;
    size_t nrng;
} fnpat_t;

/* Marks a range hyphen in the bracket text (no code point is this big). */
#define PSEP UINT32_MAX

/* Compile the bracket expression p[i..j) (i just after '[', p[j] == ']')
 * into a token, the way fnmatch.translate() builds its regex class and re
 * reads it back: ranges are cut at '-' from the second character on, a
 * range whose ends are reversed is dropped together with both ends, a
 * leading '!' negates.  scratch has room for j - i + 1 entries. */
static void compile_set(fnpat_t *fp, const uint32_t *p, size_t i, size_t j, uint32_t *arr)
{
    size_t na = 0;
    bool hyphen = false;
    for (size_t k = i; k < j; k++)
        hyphen |= p[k] == '-';
    if (!hyphen) {
        for (size_t k = i; k < j; k++)
            arr[na++] = p[k];
    } else {
        size_t pos = i;
        size_t k = p[i] == '!' ? i + 2 : i + 1;
        for (;;) {
            while (k < j && p[k] != '-')
                k++;
            if (k >= j)
                break;
            for (size_t m = pos; m < k; m++)
                arr[na++] = p[m];
            arr[na++] = PSEP;
            pos = k + 1;
            k += 3;
        }
        if (pos < j) {
            for (size_t m = pos; m < j; m++)
                arr[na++] = p[m];
        } else if (na > 0 && arr[na - 1] == PSEP) {
            arr[na - 1] = '-'; /* a trailing '-' is a literal */
        }
        /* Python drops "reversed" ranges right to left, each time with the
         * characters on both sides of the hyphen. */
        for (size_t s = na; s-- > 1;) {
            if (arr[s] != PSEP || s + 1 >= na || arr[s - 1] == PSEP || arr[s + 1] == PSEP)
                continue;
            if (arr[s - 1] > arr[s + 1]) {
                memmove(arr + s - 1, arr + s + 2, (na - s - 2) * sizeof *arr);
                na -= 3;
                s--;
            }
        }
    }
    ptok_t *t = &fp->tok[fp->ntok++];
    memset(t, 0, sizeof *t);
    if (na == 0) {
        t->kind = PT_NEVER;
        return;
    }
    if (na == 1 && arr[0] == '!') {
        t->kind = PT_ANY;
        return;
    }
    size_t k = 0;
    if (arr[0] == '!') {
        t->neg = true;
        k = 1;
    }
    t->kind = PT_SET;
    t->set = fp->nrng;
    while (k < na) {
        /* a hyphen with nothing before it is a literal '-' for re */
        uint32_t lo = arr[k] == PSEP ? '-' : arr[k];
        k++;
        uint32_t hi = lo;
        if (k + 1 < na && arr[k] == PSEP) {
            hi = arr[k + 1] == PSEP ? '-' : arr[k + 1];
            k += 2;
        }
        fp->rng[fp->nrng].lo = lo;
        fp->rng[fp->nrng].hi = hi; /* lo > hi never matches (re would refuse it) */
        fp->nrng++;
    }
    t->nset = fp->nrng - t->set;
}

/* Compile one pattern component; fp is freed with fnpat_free. */
static int fnpat_compile(fnpat_t *fp, const char *pattern)
{
    uint32_t *p = NULL, *scratch = NULL;
    size_t n;
    memset(fp, 0, sizeof *fp);
    if (utf8_decode(pattern, &p, &n) < 0)
        return -ENOMEM;
    fp->tok = malloc((n + 1) * sizeof *fp->tok);
    fp->rng = malloc((n + 1) * sizeof *fp->rng);
    scratch = malloc((n + 1) * sizeof *scratch);
    if (fp->tok == NULL || fp->rng == NULL || scratch == NULL) {
        free(p);
        free(scratch);
        free(fp->tok);
        free(fp->rng);
        return -ENOMEM;
    }
    for (size_t i = 0; i < n;) {
        uint32_t c = p[i++];
        if (c == '*') {
            if (fp->ntok == 0 || fp->tok[fp->ntok - 1].kind != PT_STAR)
                fp->tok[fp->ntok++] = (ptok_t){.kind = PT_STAR};
        } else if (c == '?') {
            fp->tok[fp->ntok++] = (ptok_t){.kind = PT_ANY};
        } else if (c == '[') {
            size_t j = i;
            if (j < n && p[j] == '!')
                j++;
            if (j < n && p[j] == ']')
                j++;
            while (j < n && p[j] != ']')
                j++;
            if (j >= n) {
                /* no closing bracket: a literal '[' */
                fp->tok[fp->ntok++] = (ptok_t){.kind = PT_LIT, .c = '['};
            } else {
                compile_set(fp, p, i, j, scratch);
                i = j + 1;
            }
        } else {
            fp->tok[fp->ntok++] = (ptok_t){.kind = PT_LIT, .c = c};
        }
    }
    free(p);
    free(scratch);
    return 0;
}

/* Free a compiled pattern. */
static void fnpat_free(fnpat_t *fp)
{
    free(fp->tok);
    free(fp->rng);
}

/* Does one non-star token accept the character c? */
static bool ptok_accepts(const fnpat_t *fp, const ptok_t *t, uint32_t c)
{
    switch (t->kind) {
    case PT_LIT:
        return t->c == c;
    case PT_ANY:
        return true;
    case PT_SET: {
        bool in = false;
        for (size_t k = 0; k < t->nset && !in; k++)
            in = fp->rng[t->set + k].lo <= c && c <= fp->rng[t->set + k].hi;
        return in != t->neg;
    }
    default:
        return false;
    }
}

/* Whole-string match of the code points s[0..n) (classic star backtracking:
 * the last star absorbs as little as it must, which is what the regex's
 * atomic groups amount to). */
static bool fnpat_match(const fnpat_t *fp, const uint32_t *s, size_t n)
{
    size_t p = 0, i = 0, star = SIZE_MAX, star_i = 0;
    while (i < n) {
        if (p < fp->ntok && fp->tok[p].kind == PT_STAR) {
            star = p++;
            star_i = i;
        } else if (p < fp->ntok && ptok_accepts(fp, &fp->tok[p], s[i])) {
            p++;
            i++;
        } else if (star != SIZE_MAX) {
            p = star + 1;
            i = ++star_i;
        } else {
            return false;
        }
    }
    while (p < fp->ntok && fp->tok[p].kind == PT_STAR)
        p++;
    return p == fp->ntok;
}

/* ------------------------------------------------------------------------ */
/* glob: CPython 3.11 glob._iglob (recursive=True), step by step           */
/* ------------------------------------------------------------------------ */

/* One glob: the whole pattern, the depth limit, the stop flag, and where
 * a failure is described. */
typedef struct glob_ctx {
    const char *pattern;
    size_t max_depth;
    atomic_bool *stop;
    cw_buf_t *errors;
} glob_ctx_t;

/* glob.has_magic: any of the three wildcard characters. */
static bool has_magic(const char *s)
{
    return strpbrk(s, "*?[") != NULL;
}

/* os.path.join(a, b) for a relative b. */
static char *py_join(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    bool sep = la > 0 && a[la - 1] != '/';
    char *r = malloc(la + sep + lb + 1);
    if (r == NULL)
        return NULL;
    memcpy(r, a, la);
    if (sep)
        r[la] = '/';
    memcpy(r + la + sep, b, lb + 1);
    return r;
}

/* glob._join: like os.path.join, but an empty side yields the other. */
static char *glob_join(const char *a, const char *b)
{
    if (*a == '\0' || *b == '\0')
        return strdup(*a ? a : b);
    return py_join(a, b);
}

/* os.path.lexists */
static bool path_lexists(const char *p)
{
    struct stat st;
    return lstat(p, &st) == 0;
}

/* os.path.isdir (follows links) */
static bool path_isdir(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

/* glob._listdir: the names in dir ("" is the current directory), only
 * those that are directories (following links) when dironly.  An
 * unreadable directory is simply empty, as for Python. */
static int glob_listdir(const char *dir, bool dironly, atomic_bool *stop, cw_strlist_t *names)
{
    DIR *d = opendir(*dir ? dir : ".");
    if (d == NULL)
        return 0;
    int rc = 0;
    struct dirent *de;
    while (rc == 0 && (de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        if (stopped(stop)) {
            rc = -EINTR;
            break;
        }
        if (dironly && de->d_type != DT_DIR) {
            /* DirEntry.is_dir(): links and unknown types are stat()ed, by
             * the whole path, so the kernel counts every link on the way
             * (40 at most) just as it does for Python. */
            if (de->d_type != DT_LNK && de->d_type != DT_UNKNOWN)
                continue;
            char *path = glob_join(dir, de->d_name);
            if (path == NULL) {
                rc = -ENOMEM;
                break;
            }
            bool isdir = path_isdir(path);
            free(path);
            if (!isdir)
                continue;
        }
        rc = cw_strlist_add(names, de->d_name);
    }
    closedir(d);
    return rc;
}

/* glob._glob1: names in dir matching the (magic) component pattern. */
static int glob_one(const char *dir, const char *pattern, bool dironly, atomic_bool *stop,
                    cw_strlist_t *names)
{
    fnpat_t fp;
    int rc = fnpat_compile(&fp, pattern);
    if (rc < 0)
        return rc;
    cw_strlist_t all = {0};
    rc = glob_listdir(dir, dironly, stop, &all);
    for (size_t i = 0; rc == 0 && i < all.n; i++) {
        char *name = all.v[i];
        /* hidden names only for a pattern that starts with '.' */
        if (name[0] == '.' && pattern[0] != '.')
            continue;
        uint32_t *cp;
        size_t ncp;
        rc = utf8_decode(name, &cp, &ncp);
        if (rc < 0)
            break;
        bool ok = fnpat_match(&fp, cp, ncp);
        free(cp);
        if (ok) {
            all.v[i] = NULL;
            rc = strlist_take(names, name);
        }
    }
    cw_strlist_free(&all);
    fnpat_free(&fp);
    return rc;
}

/* glob._glob0: a literal component (empty: the directory itself). */
static int glob_zero(const char *dir, const char *base, cw_strlist_t *names)
{
    if (*base) {
        char *p = glob_join(dir, base);
        if (p == NULL)
            return -ENOMEM;
        bool ok = path_lexists(p);
        free(p);
        return ok ? cw_strlist_add(names, base) : 0;
    }
    return path_isdir(dir) ? cw_strlist_add(names, "") : 0;
}

/* One directory of a '**' walk: its names, the next one to look at, and
 * the lengths of its path and of its path relative to the top. */
typedef struct rl_frame {
    cw_strlist_t names;
    size_t i, plen, rlen;
} rl_frame_t;

/* The limit, for a glob: "glob 'pattern': <what> deeper than ...". */
static void glob_depth_fail(cw_buf_t *errors, const char *pattern, const char *what,
                            size_t max_depth)
{
    if (errors == NULL)
        return;
    cw_buf_append_str(errors, "glob '");
    put_path(errors, pattern);
    cw_buf_append_str(errors, "': ");
    depth_msg(errors, what, max_depth);
    cw_buf_append_str(errors, "\n");
}

/* glob._rlistdir: every non-hidden name below dir, depth first, as paths
 * relative to dir, appended to names.  Links to directories are followed,
 * as os.scandir(path) does; the kernel's limits on symlink hops (ELOOP) and
 * path length end loops, as they do for Python.  The directories being
 * walked are on the heap, not the stack; one deeper than max_depth that has
 * entries fails the glob (CW_ETOOBIG). */
static int glob_rlist(const char *dir, bool dironly, const glob_ctx_t *g, cw_strlist_t *names)
{
    cw_buf_t path = CW_BUF_INIT, rel = CW_BUF_INIT;
    rl_frame_t *f = NULL;
    size_t n = 0, cap = 0;
    int rc = path_set(&path, dir);
    if (rc == 0)
        rc = path_set(&rel, "");
    if (rc == 0)
        rc = fs_grow((void **)&f, &cap, 1, sizeof *f);
    if (rc == 0) {
        f[n++] = (rl_frame_t){.plen = path.len};
        rc = glob_listdir(dir, dironly, g->stop, &f[0].names);
    }
    while (rc == 0 && n > 0) {
        if (stopped(g->stop)) {
            rc = -EINTR;
            break;
        }
        rl_frame_t *fr = &f[n - 1];
        if (fr->i == fr->names.n) {
            cw_strlist_free(&fr->names);
            n--;
            continue;
        }
        const char *x = fr->names.v[fr->i++];
        if (x[0] == '.')
            continue;
        path_pop(&path, fr->plen);
        path_pop(&rel, fr->rlen);
        if (path_push(&path, x) < 0 || path_push(&rel, x) < 0 ||
            fs_grow((void **)&f, &cap, n + 1, sizeof *f) < 0) {
            rc = -ENOMEM;
            break;
        }
        rc = cw_strlist_add(names, (const char *)rel.data);
        if (rc < 0)
            break;
        /* then what is below it, before its next sibling */
        f[n] = (rl_frame_t){.plen = path.len, .rlen = rel.len};
        rc = glob_listdir((const char *)path.data, dironly, g->stop, &f[n].names);
        n++;
        if (rc == 0 && n - 1 > g->max_depth && f[n - 1].names.n > 0) {
            glob_depth_fail(g->errors, g->pattern, "directory tree", g->max_depth);
            rc = CW_ETOOBIG;
        }
    }
    for (size_t i = 0; i < n; i++)
        cw_strlist_free(&f[i].names);
    free(f);
    cw_buf_free(&path);
    cw_buf_free(&rel);
    return rc;
}

/* glob._glob2: '**' is the directory itself ("") and all below it. */
static int glob_two(const char *dir, bool dironly, const glob_ctx_t *g, cw_strlist_t *names)
{
    int rc = cw_strlist_add(names, "");
    return rc < 0 ? rc : glob_rlist(dir, dironly, g, names);
}

/* Matches of one component pattern base inside dir. */
static int glob_in_dir(const char *dir, const char *base, bool dironly, const glob_ctx_t *g,
                       cw_strlist_t *names)
{
    if (!has_magic(base))
        return glob_zero(dir, base, names);
    if (strcmp(base, "**") == 0)
        return glob_two(dir, dironly, g, names);
    return glob_one(dir, base, dironly, g->stop, names);
}

/* One step of glob._iglob's recursion: the pattern's first len bytes,
 * split (os.path.split) into a directory part [0, dlen) and a last
 * component [cut, len). */
typedef struct gl_step {
    size_t len, cut, dlen;
} gl_step_t;

/* os.path.split of pattern[0, len): the step (lead: how many slashes
 * the whole pattern starts with). */
static gl_step_t glob_split(const char *pattern, size_t len, size_t lead)
{
    const char *slash = cw_memrchr(pattern, '/', len);
    gl_step_t s = {len, slash ? (size_t)(slash - pattern) + 1 : 0, 0};
    /* the head loses its trailing slashes unless it is nothing but slashes */
    s.dlen = s.cut;
    if (lead < s.cut)
        while (s.dlen > 0 && pattern[s.dlen - 1] == '/')
            s.dlen--;
    return s;
}

/* Matches of base (dironly: directories only) in each of dirs, joined to
 * them, appended to out in order. */
static int glob_step(const cw_strlist_t *dirs, const char *base, bool dironly, const glob_ctx_t *g,
                     cw_strlist_t *out)
{
    cw_strlist_t names = {0};
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < dirs->n; i++) {
        if (stopped(g->stop)) {
            rc = -EINTR;
            break;
        }
        strlist_clear(&names);
        rc = glob_in_dir(dirs->v[i], base, dironly, g, &names);
        for (size_t k = 0; rc == 0 && k < names.n; k++)
            rc = strlist_take(out, py_join(dirs->v[i], names.v[k]));
    }
    cw_strlist_free(&names);
    return rc;
}

/* glob._iglob(pathname, dironly=False): all matches, in Python's order,
 * appended to out.  Python recurses on the directory part while it has
 * wildcards, then matches one component per level on the way back; here
 * the splits are made first (as offsets into the pattern: no copies) and
 * the levels then matched from the innermost out, so a pattern's length
 * costs neither stack nor quadratic memory. */
static int glob_iglob(const glob_ctx_t *g, cw_strlist_t *out)
{
    const char *pathname = g->pattern;
    size_t len = strlen(pathname);
    size_t magic = strcspn(pathname, "*?["), lead = strspn(pathname, "/");
    gl_step_t s = glob_split(pathname, len, lead);
    if (magic == len) {
        bool ok;
        if (pathname[s.cut] != '\0') {
            ok = path_lexists(pathname);
        } else {
            char *dirname = strndup(pathname, s.dlen);
            if (dirname == NULL)
                return -ENOMEM;
            ok = path_isdir(dirname);
            free(dirname);
        }
        return ok ? cw_strlist_add(out, pathname) : 0;
    }
    gl_step_t *steps = NULL;
    size_t n = 0, cap = 0;
    int rc = 0;
    for (;;) {
        if (fs_grow((void **)&steps, &cap, n + 1, sizeof *steps) < 0) {
            rc = -ENOMEM;
            break;
        }
        steps[n++] = s;
        if (n > g->max_depth) {
            glob_depth_fail(g->errors, pathname, "pattern", g->max_depth);
            rc = CW_ETOOBIG;
            break;
        }
        /* the directory part has wildcards: Python recurses on it */
        if (s.dlen == 0 || magic >= s.dlen)
            break;
        s = glob_split(pathname, s.dlen, lead);
    }
    cw_strlist_t cur = {0}, next = {0};
    if (rc == 0) {
        /* the innermost level: in "" (names as they are), or in a
         * directory without wildcards */
        gl_step_t *in = &steps[n - 1];
        char *base = strndup(pathname + in->cut, in->len - in->cut);
        char *dir = strndup(pathname, in->dlen);
        if (base == NULL || dir == NULL)
            rc = -ENOMEM;
        else if (in->dlen == 0)
            rc = glob_in_dir("", base, n > 1, g, &cur);
        else if ((rc = cw_strlist_add(&next, dir)) == 0)
            rc = glob_step(&next, base, n > 1, g, &cur);
        free(base);
        free(dir);
    }
    /* then outwards: the matches of each level are the directories of the
     * next (none left: no match, whatever the rest says) */
    for (size_t k = n - 1; rc == 0 && k-- > 0 && cur.n > 0;) {
        char *base = strndup(pathname + steps[k].cut, steps[k].len - steps[k].cut);
        if (base == NULL) {
            rc = -ENOMEM;
            break;
        }
        strlist_clear(&next);
        rc = glob_step(&cur, base, k > 0, g, &next);
        free(base);
        cw_strlist_t t = cur;
        cur = next;
        next = t;
    }
    for (size_t i = 0; rc == 0 && i < cur.n; i++) {
        rc = strlist_take(out, cur.v[i]);
        cur.v[i] = NULL;
    }
    cw_strlist_free(&cur);
    cw_strlist_free(&next);
    free(steps);
    return rc;
}

/* FNV-1a, for the duplicate filter. */
static size_t str_hash(const char *s)
{
    size_t h = (size_t)14695981039346656037ULL;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * (size_t)1099511628211ULL;
    return h;
}

/* Python's glob.glob(pattern, recursive=True), without repeats (see fsutil.h). */
int cw_glob(const char *pattern, size_t max_depth, atomic_bool *stop, cw_strlist_t *out,
            cw_buf_t *errors)
{
    if (stopped(stop))
        return -EINTR;
    cw_strlist_t all = {0};
    glob_ctx_t g = {pattern, max_depth, stop, errors};
    int rc = glob_iglob(&g, &all);
    /* glob.iglob drops the "" that '**' at the very start yields first */
    size_t start = 0;
    if (rc == 0 && strncmp(pattern, "**", 2) == 0 && all.n > 0 && all.v[0][0] == '\0')
        start = 1;
    /* Python repeats paths reached through more than one '**' component; the
     * master would then fetch them twice, so keep first occurrences only. */
    size_t cap = 16, *slot = NULL, old = out->n;
    while (rc == 0 && cap < 2 * all.n)
        cap *= 2;
    if (rc == 0 && (slot = malloc(cap * sizeof *slot)) == NULL)
        rc = -ENOMEM;
    if (rc == 0)
        memset(slot, 0xff, cap * sizeof *slot);
    for (size_t i = start; rc == 0 && i < all.n; i++) {
        size_t h = str_hash(all.v[i]) & (cap - 1);
        bool dup = false;
        while (slot[h] != SIZE_MAX && !dup) {
            dup = strcmp(out->v[slot[h]], all.v[i]) == 0;
            if (!dup)
                h = (h + 1) & (cap - 1);
        }
        if (dup)
            continue;
        slot[h] = out->n;
        char *s = all.v[i];
        all.v[i] = NULL;
        rc = strlist_take(out, s);
    }
    free(slot);
    cw_strlist_free(&all);
    if (rc < 0) {
        /* leave out as it was */
        while (out->n > old)
            free(out->v[--out->n]);
    }
    return rc;
}

/* ------------------------------------------------------------------------ */
/* cp -R -P -p -v                                                           */
/* ------------------------------------------------------------------------ */

/* Bytes copied between two looks at the stop flag: a few milliseconds of
 * any disk, so an interrupt is never kept waiting for a big file. */
#define CP_CHUNK (4 << 20)

/* The shown paths of the current item; they move as the buffers grow, so
 * they are looked up at each use. */
#define CP_SRC(c) ((const char *)(c)->src.data)
#define CP_DST(c) ((const char *)(c)->dst.data)

/* What cp -p gives a copy: the original's owner, mode and times. */
typedef struct cp_meta {
    mode_t mode;
    uid_t uid;
    gid_t gid;
    struct timespec atim, mtim;
} cp_meta_t;

/* A directory being copied: the original and the copy (descriptors let go
 * by the window are -1), where its names start on the name stack, the
 * lengths of its shown paths, and what its copy gets once filled. */
typedef struct cp_level {
    fs_dir_t src, dst;
    size_t names;
    size_t slen, dlen;
    cp_meta_t meta;
} cp_level_t;

/* One cw_copytree call: its options, results so far and where it is. */
typedef struct cp_ctx {
    atomic_bool *stop;
    cw_buf_t *log, *errors;
    size_t max_depth;
    int first;      /* -errno of the first failure */
    bool root;      /* ownership is ours to keep */
    bool unwind;    /* copy no more: stopped, "into itself", too deep */
    bool fatal;     /* and touch nothing more: the tree moved under us */
    bool into_self; /* unwinding after "into itself" */
    bool have_self; /* the top destination directory is known */
    dev_t self_dev;
    ino_t self_ino;
    const char *top_src; /* the paths as given, for "into itself" */
    const char *top_dst;
    cw_buf_t src, dst; /* shown paths of the current item (NUL-terminated) */
    cw_buf_t names;    /* name stack */
    cp_level_t *lv;    /* the directories being copied, lv[0] the top */
    size_t n, cap;
} cp_ctx_t;

/* The attributes of st that cp -p keeps. */
static cp_meta_t cp_meta(const struct stat *st)
{
    return (cp_meta_t){st->st_mode, st->st_uid, st->st_gid, CW_ST_ATIM(st), CW_ST_MTIM(st)};
}

/* The C.UTF-8 printability of a decoded character, near enough for names. */
static bool cp_printable(uint32_t c)
{
    return c >= 0x20 && c != 0x7f && !(c >= 0x80 && c < 0xa0) && c != 0x2028 && c != 0x2029 &&
           !(c >= 0xDC00 && c <= 0xDCFF);
}

/* Can c sit unescaped both inside "..." and '...' (gnulib's
 * c_and_shell_quote_compat)?  at is c's index, len the name's length. */
static bool cp_compat_ascii(unsigned char c, size_t at, size_t len)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
        return true;
    switch (c) {
    case ' ':
    case '\'':
    case '%':
    case '+':
    case ',':
    case '-':
    case '.':
    case '/':
    case ':':
    case ']':
    case '_':
    case '@':
        return true;
    case '#':
    case '~':
        return at == 0;
    case '{':
    case '}':
        return len == 1;
    default:
        return false;
    }
}

/* Append s quoted as GNU cp quotes names in its -v and error lines
 * (gnulib shell-escape-always style in a UTF-8 locale): '...' with '\''
 * for quotes and $'\n' / $'\377' for control and invalid bytes, or "..."
 * when a quote is the only thing needing care. */
static void cp_quote(cw_buf_t *b, const char *s)
{
    size_t n = strlen(s);
    bool quote = false, compat = true;
    for (size_t i = 0; i < n;) {
        uint32_t c;
        size_t m = utf8_next((const unsigned char *)s + i, n - i, &c);
        if (m == 1 && c < 0x80)
            compat &= cp_compat_ascii((unsigned char)c, i, n);
        else
            compat &= cp_printable(c);
        quote |= c == '\'';
        i += m;
    }
    if (quote && compat) {
        cw_buf_printf(b, "\"%s\"", s);
        return;
    }
    bool esc = false; /* inside a $'...' part */
    cw_buf_append_str(b, "'");
    for (size_t i = 0; i < n;) {
        uint32_t c;
        size_t m = utf8_next((const unsigned char *)s + i, n - i, &c);
        const char *letter = NULL;
        switch (c) {
        case '\a':
            letter = "a";
            break;
        case '\b':
            letter = "b";
            break;
        case '\f':
            letter = "f";
            break;
        case '\n':
            letter = "n";
            break;
        case '\r':
            letter = "r";
            break;
        case '\t':
            letter = "t";
            break;
        case '\v':
            letter = "v";
            break;
        default:
            break;
        }
        if (c == '\'') {
            cw_buf_append_str(b, "'\\''");
            esc = false;
        } else if (letter != NULL || !cp_printable(c)) {
            if (!esc)
                cw_buf_append_str(b, "'$'");
            esc = true;
            for (size_t k = 0; k < m; k++) {
                if (letter != NULL)
                    cw_buf_printf(b, "\\%s", letter);
                else
                    cw_buf_printf(b, "\\%03o", (unsigned char)s[i + k]);
            }
        } else {
            if (esc)
                cw_buf_append_str(b, "''");
            esc = false;
            cw_buf_append(b, s + i, m);
        }
        i += m;
    }
    cw_buf_append_str(b, "'");
}

/* cp_quote of s elided to max bytes first (a path of any length). */
static void cp_quote_elided(cw_buf_t *b, const char *s, size_t max)
{
    if (strlen(s) <= max) {
        cp_quote(b, s);
        return;
    }
    cw_buf_t e = CW_BUF_INIT;
    if (cw_buf_append_elided(&e, s, max) == 0 && cw_buf_append(&e, "", 1) == 0)
        cp_quote(b, (const char *)e.data);
    cw_buf_free(&e);
}

/* Record a failure: "cp: " + fmt with each %s a quoted path (elided past
 * FS_SHOWN_MAX), then ": strerror" when err is an errno worth showing.
 * Returns -err. */
static int cp_fail(cp_ctx_t *c, int err, bool show_err, const char *fmt, const char *p1,
                   const char *p2)
{
    if (c->errors != NULL) {
        const char *paths[2] = {p1, p2};
        int np = 0;
        cw_buf_append_str(c->errors, "cp: ");
        for (const char *f = fmt; *f; f++) {
            if (f[0] == '%' && f[1] == 's' && np < 2) {
                cp_quote_elided(c->errors, paths[np++], FS_SHOWN_MAX);
                f++;
            } else {
                cw_buf_append(c->errors, f, 1);
            }
        }
        if (show_err) {
            char ebuf[128];
            cw_buf_printf(c->errors, ": %s", cw_errstr(err, ebuf, sizeof ebuf));
        }
        cw_buf_append_str(c->errors, "\n");
    }
    if (c->first == 0)
        c->first = -err;
    return -err;
}

/* cp -v's line for an item: 'src' -> 'dst' (paths elided past
 * FS_LOGGED_MAX, so the log grows with the number of entries, not with
 * their depth squared). */
static void cp_verbose(cp_ctx_t *c)
{
    if (c->log == NULL)
        return;
    cp_quote_elided(c->log, CP_SRC(c), FS_LOGGED_MAX);
    cw_buf_append_str(c->log, " -> ");
    cp_quote_elided(c->log, CP_DST(c), FS_LOGGED_MAX);
    cw_buf_append_str(c->log, "\n");
}

/* Give the copy (open as fd, or dfd/dname without following a link) the
 * owner, mode and times of the original, as cp -p does: owner first, since
 * chown clears the set-id bits the mode then restores. */
static void cp_attrs(cp_ctx_t *c, int fd, int dfd, const char *dname, const cp_meta_t *st)
{
    bool link = S_ISLNK(st->mode);
    mode_t mode = st->mode & 07777;
    int r = fd >= 0 ? fchown(fd, st->uid, st->gid)
                    : fchownat(dfd, dname, st->uid, st->gid, AT_SYMLINK_NOFOLLOW);
    if (r < 0 && c->root) {
        cp_fail(c, errno, true, "failed to preserve ownership for %s", CP_DST(c), NULL);
    } else if (r < 0) {
        /* Like cp -p as a user: keep the group if we may, quietly give up
         * the owner, and then no set-id bits; cp also drops the sticky bit,
         * but a directory keeps it (observed with cp 9.1). */
        r = fd >= 0 ? fchown(fd, (uid_t)-1, st->gid)
                    : fchownat(dfd, dname, (uid_t)-1, st->gid, AT_SYMLINK_NOFOLLOW);
        mode &= ~(mode_t)(S_ISUID | S_ISGID | (S_ISDIR(st->mode) ? 0 : S_ISVTX));
    }
    if (!link) {
        r = fd >= 0 ? fchmod(fd, mode) : fchmodat(dfd, dname, mode, 0);
        if (r < 0)
            cp_fail(c, errno, true, "preserving permissions for %s", CP_DST(c), NULL);
    }
    struct timespec ts[2] = {st->atim, st->mtim};
    r = fd >= 0 ? futimens(fd, ts) : utimensat(dfd, dname, ts, AT_SYMLINK_NOFOLLOW);
    if (r < 0)
        cp_fail(c, errno, true, "preserving times for %s", CP_DST(c), NULL);
}

/* Copy len bytes at off from in to out (same offset), copy_file_range while
 * the kernel takes it, read/write after, CP_CHUNK bytes at most between two
 * looks at the stop flag.  A short write is written on until it completes or
 * fails.  Returns bytes copied (short at EOF), -EINTR when stopped, or
 * -errno, *wside telling whether writing failed. */
static off_t cp_range(int in, int out, off_t off, off_t len, bool *cfr, char **buf, bool *wside,
                      atomic_bool *stop)
{
    off_t done = 0;
    while (done < len) {
        if (stopped(stop))
            return -EINTR;
        size_t want = (size_t)(len - done < CP_CHUNK ? len - done : CP_CHUNK);
#if CW_HAVE_COPY_FILE_RANGE
        if (*cfr) {
            off_t i = off + done, o = off + done;
            ssize_t n = copy_file_range(in, &i, out, &o, want, 0);
            if (n > 0) {
                done += n;
                continue;
            }
            if (n == 0)
                return done;
            if (errno == EINTR)
                continue;
            /* Cross-device, unsupported or odd: read/write says exactly
             * which side is wrong, if either is. */
            *cfr = false;
        }
#else
        *cfr = false;                  /* no copy_file_range here (macOS, FreeBSD < 13) */
#endif
        enum { CHUNK = 128 * 1024 };
        if (*buf == NULL && (*buf = malloc(CHUNK)) == NULL)
            return -ENOMEM;
        ssize_t n = pread(in, *buf, want < CHUNK ? want : CHUNK, off + done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            *wside = false;
            return -errno;
        }
        if (n == 0)
            return done;
        for (ssize_t w = 0; w < n;) {
            ssize_t k = pwrite(out, *buf + w, (size_t)(n - w), off + done + w);
            if (k < 0 && errno == EINTR)
                continue;
            if (k < 0) {
                *wside = true;
                return -errno;
            }
            w += k;
        }
        done += n;
    }
    return done;
}

/* The data of a regular file, holes kept as holes (SEEK_DATA/SEEK_HOLE),
 * up to the size seen at the start or EOF if the file shrank.  Failures are
 * reported; returns -EINTR when stopped (not reported), else 0. */
static int cp_data(cp_ctx_t *c, int in, int out)
{
    struct stat st;
    if (fstat(in, &st) < 0) {
        cp_fail(c, errno, true, "cannot fstat %s", CP_SRC(c), NULL);
        return 0;
    }
    off_t size = st.st_size, pos = 0;
    bool cfr = true, wside = false;
    char *buf = NULL;
    int err = 0;
    while (pos < size) {
#if defined(SEEK_DATA) && defined(SEEK_HOLE)
        off_t data = lseek(in, pos, SEEK_DATA);
        if (data < 0 && errno == ENXIO)
            break; /* only a hole is left */
        if (data < 0)
            data = pos; /* no SEEK_DATA here: all of it is data */
        off_t hole = lseek(in, data, SEEK_HOLE);
        if (hole < 0 || hole > size)
            hole = size;
#else
        off_t data = pos, hole = size; /* no hole detection: all of it is data */
#endif
        if (data >= hole) {
            pos = hole > pos ? hole : size;
            continue;
        }
        off_t n = cp_range(in, out, data, hole - data, &cfr, &buf, &wside, c->stop);
        if (n == -EINTR) {
            free(buf);
            return -EINTR;
        }
        if (n < 0) {
            err = (int)-n;
            break;
        }
        if (n < hole - data) {
            size = data + n; /* the file shrank under us */
            break;
        }
        pos = hole;
    }
    free(buf);
    if (err == 0 && ftruncate(out, size) < 0) {
        err = errno;
        wside = true;
    }
    if (err != 0)
        cp_fail(c, err, true, wside ? "error writing %s" : "error reading %s",
                wside ? CP_DST(c) : CP_SRC(c), NULL);
    return 0;
}

/* A copy interrupted half way is not left to pass for a copy: it goes, and
 * errors says so (its -v line is already out). */
static void cp_drop_partial(cp_ctx_t *c, int dfd, const char *dname)
{
    if (unlinkat(dfd, dname, 0) < 0 && errno != ENOENT)
        cp_fail(c, errno, true, "interrupted: cannot remove the partial copy %s", CP_DST(c), NULL);
    else
        cp_fail(c, EINTR, false, "interrupted: removed the partial copy %s", CP_DST(c), NULL);
    c->unwind = true;
}

/* A regular file: into a new file, or over the existing one (through a
 * link to a file, as cp does, but never through a dangling one). */
static void cp_reg(cp_ctx_t *c, int sfd, const char *sname, const struct stat *st, int dfd,
                   const char *dname, const struct stat *dst)
{
    struct stat tst;
    if (dst != NULL && S_ISLNK(dst->st_mode) && fstatat(dfd, dname, &tst, 0) < 0 &&
        errno == ENOENT) {
        cp_verbose(c);
        cp_fail(c, ENOENT, false, "not writing through dangling symlink %s", CP_DST(c), NULL);
        return;
    }
    cp_verbose(c);
    /* O_NONBLOCK: should it have become a fifo since lstat, don't hang */
    int in = openat(sfd, sname, O_RDONLY | O_NOFOLLOW | O_NOCTTY | O_NONBLOCK | O_CLOEXEC);
    if (in < 0) {
        cp_fail(c, errno, true, "cannot open %s for reading", CP_SRC(c), NULL);
        return;
    }
    /* cp says "cannot create" whether or not the file was there.  What is
     * there may be a fifo (cp then waits for a reader forever): O_NONBLOCK
     * makes that fail (ENXIO), and makes no difference to a file. */
    int out = dst != NULL
                  ? openat(dfd, dname, O_WRONLY | O_TRUNC | O_NOCTTY | O_NONBLOCK | O_CLOEXEC)
                  : openat(dfd, dname, O_WRONLY | O_CREAT | O_EXCL | O_NOCTTY | O_CLOEXEC,
                           S_IRUSR | S_IWUSR);
    if (out < 0) {
        cp_fail(c, errno, true, "cannot create regular file %s", CP_DST(c), NULL);
    } else if (cp_data(c, in, out) == -EINTR) {
        close(out);
        cp_drop_partial(c, dfd, dname);
    } else {
        cp_meta_t m = cp_meta(st);
        cp_attrs(c, out, -1, NULL, &m);
        if (close(out) < 0)
            cp_fail(c, errno, true, "failed to close %s", CP_DST(c), NULL);
    }
    close(in);
}

/* Make room for a non-directory: cp removes what is there (and says so). */
static bool cp_unlink_old(cp_ctx_t *c, int dfd, const char *dname, const struct stat *dst)
{
    if (dst == NULL)
        return true;
    if (unlinkat(dfd, dname, 0) < 0 && errno != ENOENT) {
        cp_fail(c, errno, true, "cannot remove %s", CP_DST(c), NULL);
        return false;
    }
    if (c->log != NULL) {
        cw_buf_append_str(c->log, "removed ");
        cp_quote_elided(c->log, CP_DST(c), FS_LOGGED_MAX);
        cw_buf_append_str(c->log, "\n");
    }
    return true;
}

/* A symbolic link, copied as a link (-P). */
static void cp_link(cp_ctx_t *c, int sfd, const char *sname, const struct stat *st, int dfd,
                    const char *dname, const struct stat *dst)
{
    size_t cap = st->st_size > 0 ? (size_t)st->st_size + 1 : 256;
    char *target = NULL;
    ssize_t n;
    for (;;) {
        char *t = realloc(target, cap);
        if (t == NULL) {
            free(target);
            cp_fail(c, ENOMEM, true, "cannot read symbolic link %s", CP_SRC(c), NULL);
            return;
        }
        target = t;
        n = readlinkat(sfd, sname, target, cap);
        if (n < 0 || (size_t)n < cap)
            break;
        cap *= 2; /* the link grew since lstat */
    }
    if (n < 0) {
        cp_fail(c, errno, true, "cannot read symbolic link %s", CP_SRC(c), NULL);
        free(target);
        return;
    }
    target[n] = '\0';
    if (cp_unlink_old(c, dfd, dname, dst)) {
        cp_verbose(c);
        cp_meta_t m = cp_meta(st);
        if (symlinkat(target, dfd, dname) < 0)
            cp_fail(c, errno, true, "cannot create symbolic link %s", CP_DST(c), NULL);
        else
            cp_attrs(c, -1, dfd, dname, &m);
    }
    free(target);
}

/* A fifo, socket or device node: recreated with mknod where permitted. */
static void cp_special(cp_ctx_t *c, const struct stat *st, int dfd, const char *dname,
                       const struct stat *dst)
{
    if (!cp_unlink_old(c, dfd, dname, dst))
        return;
    cp_verbose(c);
    if (S_ISFIFO(st->st_mode)) {
        if (mkfifoat(dfd, dname, 0600) < 0) {
            cp_fail(c, errno, true, "cannot create fifo %s", CP_DST(c), NULL);
            return;
        }
    } else if (mknodat(dfd, dname, (st->st_mode & S_IFMT) | 0600, st->st_rdev) < 0) {
        cp_fail(c, errno, true, "cannot create special file %s", CP_DST(c), NULL);
        return;
    }
    cp_meta_t m = cp_meta(st);
    cp_attrs(c, -1, dfd, dname, &m);
}

/* Levels lv[0..n) were just made n: let go of the pair of descriptors that
 * falls out of the window of the last FS_WINDOW. */
static void cp_window(cp_level_t *lv, size_t n)
{
    if (n > FS_WINDOW) {
        cp_level_t *l = &lv[n - 1 - FS_WINDOW];
        if (l->src.fd >= 0)
            close(l->src.fd);
        if (l->dst.fd >= 0)
            close(l->dst.fd);
        l->src.fd = l->dst.fd = -1;
    }
}

/* A directory: made (or merged into), then pushed as a level whose
 * entries cp_walk copies; its mode and times come after them (cp_leave),
 * so a read-only directory can still be filled and its mtime is not
 * disturbed by the entries made in it. */
static void cp_dir(cp_ctx_t *c, int sfd, const char *sname, const struct stat *st, int dfd,
                   const char *dname, const struct stat *dst)
{
    if (c->have_self && st->st_dev == c->self_dev && st->st_ino == c->self_ino) {
        /* our own copy is inside what we copy: cp stops there */
        cp_fail(c, EINVAL, false, "cannot copy a directory, %s, into itself, %s", c->top_src,
                c->top_dst);
        c->into_self = c->unwind = true;
        return;
    }
    if (c->n > c->max_depth) {
        char fmt[128];
        snprintf(fmt, sizeof fmt,
                 "cannot copy %%s: directory tree deeper than the limit of %zu levels "
                 "(fs-max-depth)",
                 c->max_depth);
        cp_fail(c, -CW_ETOOBIG, false, fmt, CP_SRC(c), NULL);
        c->unwind = true;
        return;
    }
    if (dst != NULL && !S_ISDIR(dst->st_mode)) {
        cp_fail(c, ENOTDIR, false, "cannot overwrite non-directory %s with directory %s", CP_DST(c),
                CP_SRC(c));
        return;
    }
    if (dst == NULL) {
        /* private until its own mode is applied at the end */
        if (mkdirat(dfd, dname, S_IRWXU) < 0) {
            cp_fail(c, errno, true, "cannot create directory %s", CP_DST(c), NULL);
            return;
        }
        cp_verbose(c);
    }
    int out = openat(dfd, dname, FS_OPEN_DIR);
    struct stat ost, ist;
    if (out < 0 || fstat(out, &ost) < 0) {
        cp_fail(c, errno, true, "cannot access %s", CP_DST(c), NULL);
        if (out >= 0)
            close(out);
        return;
    }
    if (!c->have_self) {
        c->have_self = true;
        c->self_dev = ost.st_dev;
        c->self_ino = ost.st_ino;
    }
    cp_meta_t meta = cp_meta(st);
    int in = openat(sfd, sname, FS_OPEN_DIR);
    if (in < 0 || fstat(in, &ist) < 0 ||
        fs_grow((void **)&c->lv, &c->cap, c->n + 1, sizeof *c->lv) < 0) {
        cp_fail(c, in < 0 ? errno : ENOMEM, true, "cannot access %s", CP_SRC(c), NULL);
        if (in >= 0)
            close(in);
        cp_attrs(c, out, -1, NULL, &meta);
        close(out);
        return;
    }
    c->lv[c->n++] = (cp_level_t){.src = {in, ist.st_dev, ist.st_ino},
                                 .dst = {out, ost.st_dev, ost.st_ino},
                                 .names = c->names.len,
                                 .slen = c->src.len,
                                 .dlen = c->dst.len,
                                 .meta = meta};
    cp_window(c->lv, c->n);
    /* in inode order, as cp reads them: faster, and the -v lines come out
     * in cp's order */
    int rc = ns_read(&c->names, in, true, c->stop);
    if (rc == -EINTR) {
        if (c->first == 0)
            c->first = -EINTR;
        c->unwind = true;
    } else if (rc < 0) {
        cp_fail(c, -rc, true, "cannot access %s", CP_SRC(c), NULL);
    }
}

/* Copy whatever sname (under sfd) is to dname (under dfd); c->src/c->dst
 * show their paths.  A directory becomes a new level. */
static void cp_item(cp_ctx_t *c, int sfd, const char *sname, int dfd, const char *dname)
{
    struct stat st, dst;
    if (fstatat(sfd, sname, &st, AT_SYMLINK_NOFOLLOW) < 0) {
        cp_fail(c, errno, true, "cannot stat %s", CP_SRC(c), NULL);
        return;
    }
    bool exists = fstatat(dfd, dname, &dst, AT_SYMLINK_NOFOLLOW) == 0;
    if (exists && st.st_dev == dst.st_dev && st.st_ino == dst.st_ino) {
        cp_fail(c, EINVAL, false, "%s and %s are the same file", CP_SRC(c), CP_DST(c));
        return;
    }
    const struct stat *dp = exists ? &dst : NULL;
    if (S_ISDIR(st.st_mode))
        cp_dir(c, sfd, sname, &st, dfd, dname, dp);
    else if (exists && S_ISDIR(dst.st_mode))
        cp_fail(c, EISDIR, false, "cannot overwrite directory %s with non-directory", CP_DST(c),
                NULL);
    else if (S_ISREG(st.st_mode))
        cp_reg(c, sfd, sname, &st, dfd, dname, dp);
    else if (S_ISLNK(st.st_mode))
        cp_link(c, sfd, sname, &st, dfd, dname, dp);
    else
        cp_special(c, &st, dfd, dname, dp);
}

/* The directory on top is done: its parent's descriptors come back first
 * if the window let them go (through "..", checked: a moved tree ends the
 * copy), then the copy gets its mode and times and the level goes. */
static void cp_leave(cp_ctx_t *c)
{
    cp_level_t *l = &c->lv[c->n - 1];
    if (c->n > 1) {
        cp_level_t *p = l - 1;
        bool src_side = true;
        int rc = p->src.fd < 0 ? fs_reopen_parent(&p->src, &l->src) : 0;
        if (rc == 0 && p->dst.fd < 0) {
            src_side = false;
            rc = fs_reopen_parent(&p->dst, &l->dst);
        }
        if (rc < 0) {
            path_pop(&c->src, p->slen);
            path_pop(&c->dst, p->dlen);
            const char *shown = src_side ? CP_SRC(c) : CP_DST(c);
            if (rc == -ESTALE)
                cp_fail(c, ESTALE, false, "cannot access %s: " FS_MOVED_MSG "; stopped", shown,
                        NULL);
            else
                cp_fail(c, -rc, true, "cannot access %s", shown, NULL);
            c->fatal = true;
            return;
        }
    }
    path_pop(&c->src, l->slen);
    path_pop(&c->dst, l->dlen);
    cp_attrs(c, l->dst.fd, -1, NULL, &l->meta);
    close(l->dst.fd);
    close(l->src.fd);
    c->names.len = l->names;
    c->n--;
    if (c->n > 0) {
        path_pop(&c->src, l[-1].slen);
        path_pop(&c->dst, l[-1].dlen);
    }
}

/* Copy what the levels on the stack hold, depth first, without recursion:
 * the levels are on the heap, at most FS_WINDOW of them hold descriptors. */
static void cp_walk(cp_ctx_t *c)
{
    while (c->n > 0 && !c->fatal) {
        cp_level_t *l = &c->lv[c->n - 1];
        if (!c->unwind && stopped(c->stop)) {
            if (c->first == 0)
                c->first = -EINTR;
            c->unwind = true;
        }
        unsigned char kind;
        const char *name = c->unwind ? NULL : ns_pop(&c->names, l->names, &kind);
        if (name == NULL) {
            cp_leave(c);
            continue;
        }
        size_t len = strlen(name), slen = l->slen, dlen = l->dlen;
        if (path_push(&c->src, name) < 0 || path_push(&c->dst, name) < 0) {
            path_pop(&c->src, slen);
            path_pop(&c->dst, dlen);
            cp_fail(c, ENOMEM, true, "cannot access %s", CP_SRC(c), NULL);
            c->unwind = true;
            continue;
        }
        size_t n = c->n;
        cp_item(c, l->src.fd, CP_SRC(c) + c->src.len - len, l->dst.fd,
                CP_DST(c) + c->dst.len - len);
        if (c->n == n) {
            path_pop(&c->src, slen);
            path_pop(&c->dst, dlen);
        }
    }
    for (size_t i = 0; i < c->n; i++) {
        if (c->lv[i].src.fd >= 0)
            close(c->lv[i].src.fd);
        if (c->lv[i].dst.fd >= 0)
            close(c->lv[i].dst.fd);
    }
    c->n = 0;
}

/* cp -R -P -p -v from to (see fsutil.h). */
int cw_copytree(const char *from, const char *to, size_t max_depth, atomic_bool *stop,
                cw_buf_t *log, cw_buf_t *errors)
{
    cp_ctx_t c = {
        .stop = stop, .log = log, .errors = errors, .max_depth = max_depth, .root = geteuid() == 0};
    if (stopped(stop))
        return -EINTR;
    struct stat st;
    int rc;
    if (stat(to, &st) == 0 && S_ISDIR(st.st_mode)) {
        /* into the directory, under the last component of from */
        size_t len = strlen(from);
        while (len > 1 && from[len - 1] == '/')
            len--;
        size_t start = len;
        while (start > 0 && from[start - 1] != '/')
            start--;
        size_t tlen = strlen(to);
        const char *sep = tlen > 0 && to[tlen - 1] != '/' ? "/" : "";
        rc = cw_buf_printf(&c.dst, "%s%s%.*s", to, sep, (int)(len - start), from + start);
    } else {
        rc = cw_buf_printf(&c.dst, "%s", to);
    }
    char *top_dst = NULL;
    if (rc == 0)
        rc = path_set(&c.src, from);
    if (rc == 0 && (top_dst = strdup((const char *)c.dst.data)) == NULL)
        rc = -ENOMEM;
    if (rc == 0) {
        c.top_src = from;
        c.top_dst = top_dst;
        cp_item(&c, AT_FDCWD, from, AT_FDCWD, top_dst);
        cp_walk(&c);
        rc = c.first;
    }
    free(top_dst);
    free(c.lv);
    cw_buf_free(&c.names);
    cw_buf_free(&c.src);
    cw_buf_free(&c.dst);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* The tree walker                                                          */
/* ------------------------------------------------------------------------ */

/* A walk below a root directory (see fsutil.h). */
struct cw_walk {
    atomic_bool *stop;
    cw_buf_t *errors;
    size_t max_depth;
    int fail;       /* what ended the walk (sticky), or 0 */
    bool done;      /* every entry was returned */
    bool descend;   /* the last entry returned is a directory to enter */
    size_t pending; /* where its name starts in path */
    char *root;     /* as given, for messages about the root itself */
    cw_buf_t path;  /* the current entry's path below the root */
    cw_buf_t names; /* name stack */
    fs_level_t *lv; /* lv[0] is the root */
    size_t n, cap;
};

/* End the walk with rc and, when what is not NULL, the line
 * "<what> 'path': <why>" (path: the walk's path cut to len bytes, the root
 * when that is empty; why: the errno text, or the text given). */
static int walk_fail(cw_walk_t *w, int rc, const char *what, size_t len, const char *why)
{
    w->fail = rc;
    if (what == NULL || w->errors == NULL)
        return rc;
    path_pop(&w->path, len);
    char ebuf[128];
    cw_buf_printf(w->errors, "%s '", what);
    put_path(w->errors, len > 0 ? (const char *)w->path.data : w->root);
    cw_buf_printf(w->errors, "': %s\n", why != NULL ? why : cw_errstr(-rc, ebuf, sizeof ebuf));
    return rc;
}

/* Enter the directory name under at (the root: at is AT_FDCWD and links
 * are followed, as for any path given) as a new level.  0 or the error that
 * ends the walk. */
static int walk_enter(cw_walk_t *w, int at, const char *name, size_t name_off)
{
    size_t len = w->path.len;
    if (w->n > w->max_depth) {
        cw_buf_t why = CW_BUF_INIT;
        depth_msg(&why, "directory tree", w->max_depth);
        cw_buf_append(&why, "", 1);
        int rc = walk_fail(w, CW_ETOOBIG, "cannot read directory", len,
                           why.data ? (const char *)why.data : "too deep");
        cw_buf_free(&why);
        return rc;
    }
    int fd = openat(at, name, w->n == 0 ? O_RDONLY | O_DIRECTORY | O_CLOEXEC : FS_OPEN_DIR);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0) {
        int err = errno;
        if (fd >= 0)
            close(fd);
        return walk_fail(w, -err, "cannot read directory", len, NULL);
    }
    size_t names = w->names.len;
    int rc = ns_read(&w->names, fd, false, w->stop);
    if (rc == 0 && fs_grow((void **)&w->lv, &w->cap, w->n + 1, sizeof *w->lv) < 0)
        rc = -ENOMEM;
    if (rc < 0) {
        w->names.len = names;
        close(fd);
        return walk_fail(w, rc, rc == -EINTR ? NULL : "cannot read directory", len, NULL);
    }
    w->lv[w->n++] = (fs_level_t){
        .dir = {fd, st.st_dev, st.st_ino}, .names = names, .plen = len, .name = name_off};
    fs_window(w->lv, w->n);
    return 0;
}

/* Start a walk below root (see fsutil.h). */
int cw_walk_open(cw_walk_t **wp, const char *root, size_t max_depth, atomic_bool *stop,
                 cw_buf_t *errors)
{
    *wp = NULL;
    cw_walk_t *w = calloc(1, sizeof *w);
    if (w == NULL || (w->root = strdup(root)) == NULL || path_set(&w->path, "") < 0) {
        cw_walk_close(w);
        return -ENOMEM;
    }
    w->stop = stop;
    w->errors = errors;
    w->max_depth = max_depth;
    int rc = stopped(stop) ? -EINTR : walk_enter(w, AT_FDCWD, root, 0);
    if (rc < 0) {
        cw_walk_close(w);
        return rc;
    }
    *wp = w;
    return 0;
}

/* The next entry, depth first, a directory before what it holds (see
 * fsutil.h). */
int cw_walk_next(cw_walk_t *w, cw_walk_entry_t *e)
{
    if (w->fail != 0)
        return w->fail;
    if (w->done)
        return 0;
    if (w->descend) {
        w->descend = false;
        int rc = walk_enter(w, w->lv[w->n - 1].dir.fd, (const char *)w->path.data + w->pending,
                            w->pending);
        if (rc < 0)
            return rc;
    }
    for (;;) {
        if (stopped(w->stop))
            return walk_fail(w, -EINTR, NULL, 0, NULL);
        fs_level_t *l = &w->lv[w->n - 1];
        unsigned char kind;
        const char *name = ns_pop(&w->names, l->names, &kind);
        if (name == NULL) {
            /* this directory is done: back to its parent */
            if (w->n == 1) {
                close(l->dir.fd);
                w->n = 0;
                w->done = true;
                return 0;
            }
            fs_level_t *p = l - 1;
            if (p->dir.fd < 0) {
                int rc = fs_reopen_parent(&p->dir, &l->dir);
                if (rc < 0)
                    return walk_fail(w, rc, "cannot read directory", p->plen,
                                     rc == -ESTALE ? FS_MOVED_MSG : NULL);
            }
            close(l->dir.fd);
            w->n--;
            path_pop(&w->path, p->plen);
            continue;
        }
        size_t len = strlen(name);
        path_pop(&w->path, l->plen);
        if (path_push(&w->path, name) < 0)
            return walk_fail(w, -ENOMEM, NULL, 0, NULL);
        size_t off = w->path.len - len;
        const char *nm = (const char *)w->path.data + off;
        if (fstatat(l->dir.fd, nm, &e->st, AT_SYMLINK_NOFOLLOW) < 0) {
            if (errno == ENOENT)
                continue; /* gone since the directory was read */
            return walk_fail(w, -errno, "cannot stat", w->path.len, NULL);
        }
        e->path = (const char *)w->path.data;
        e->name = nm;
        e->dirfd = l->dir.fd;
        e->depth = w->n;
        if (S_ISDIR(e->st.st_mode)) {
            w->descend = true;
            w->pending = off;
        }
        return 1;
    }
}

/* End a walk, closing its descriptors; NULL-safe. */
void cw_walk_close(cw_walk_t *w)
{
    if (w == NULL)
        return;
    for (size_t i = 0; i < w->n; i++)
        if (w->lv[i].dir.fd >= 0)
            close(w->lv[i].dir.fd);
    free(w->lv);
    free(w->root);
    cw_buf_free(&w->path);
    cw_buf_free(&w->names);
    free(w);
}
