/* File-system helpers for the commands: blocking calls, meant for the
 * thread pool (or for small, bounded work on the loop thread). */
#ifndef CW_FSUTIL_H
#define CW_FSUTIL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <sys/stat.h>
#include <sys/types.h>

#include "cw_config.h"
#include "cworker/buf.h"
#include "cworker/cw.h"

/* struct stat's nanosecond times (struct timespec): st_atim/st_mtim
 * (POSIX 2008: Linux, the BSDs), st_atimespec/st_mtimespec (macOS). */
#if CW_HAVE_STAT_ST_ATIM
#define CW_ST_ATIM(st) ((st)->st_atim)
#define CW_ST_MTIM(st) ((st)->st_mtim)
#else
#define CW_ST_ATIM(st) ((st)->st_atimespec)
#define CW_ST_MTIM(st) ((st)->st_mtimespec)
#endif

/* mkdir -p: create path and its missing parents.  Returns 0 or -errno
 * (-EEXIST when path exists but is not a directory, -ENOTDIR when a parent
 * is not one — as os.makedirs reports them to the stock worker). */
int cw_mkdirs(const char *path, mode_t mode);

/* The deepest a walk goes below its top directory (rmtree, copytree, the
 * walker, '**' in a glob), and the most components a glob pattern may have,
 * unless the worker's configuration (fs-max-depth) says otherwise.  The
 * walks need no limit of their own: they do not recurse, keep a fixed
 * number of descriptors and, per level, a few dozen bytes and the names
 * still to visit.  The limit bounds what a hostile tree or pattern can cost
 * (at 100000 levels: about 10 MB of bookkeeping plus one path) while being
 * far beyond any real tree; GNU rm and cp, which have no limit, handle trees
 * this deep too, so a build that made one can still clean it up. */
#define CW_FS_MAX_DEPTH 100000

/* rm -rf, natively: removes path whatever it is.  Never follows a symbolic
 * link (a link is removed, not its target).  Directories without read,
 * write or search permission for us are made accessible (u+rwx) and tried
 * again.  A missing path is not an error.  Any depth up to max_depth levels
 * below path, keeping 16 directory descriptors open (18 at most, for a
 * moment) and memory for one path plus the names left to visit on its
 * levels; past max_depth it stops
 * (CW_ETOOBIG, with a line naming the limit).  On the way back up, a
 * directory whose descriptor was let go is reopened through "..", and if
 * that is no longer the same directory (the tree was moved under us) the
 * removal stops there (-ESTALE) rather than go on somewhere else.  Stops
 * early when *stop becomes true.  Each failure is described on its own line
 * in errors ("cannot remove 'p': Permission denied\n", p elided past 1024
 * bytes).  Returns 0, or the first failure: -errno, -EINTR when stopped,
 * CW_ETOOBIG, -ESTALE.  Call cw_rm_refusal() first for rm's safety rules. */
int cw_rmtree(const char *path, size_t max_depth, atomic_bool *stop, cw_buf_t *errors);

/* rm -rf's safety rules, checked before anything is touched: returns 0
 * when path may be removed, else a negative code and a line in why (may be
 * NULL) naming the rule:
 *  -EINVAL  the last component (after trailing slashes) is "." or ".."
 *           ("refusing to remove '.' or '..' directory: skipping 'x/.'"),
 *           whether or not it exists, as rm does;
 *  -EPERM   path is the root directory, by (st_dev, st_ino) as
 *           rm --preserve-root compares ("it is dangerous to operate
 *           recursively on '/'", or "on 'p' (same as '/')");
 *  -EPERM   path is basedir ("refusing to remove 'p': it is the worker's
 *           base directory") or one of its ancestors, found through ".."
 *           up to the root ("...: it contains the worker's base
 *           directory"); basedir may be NULL (no such rule).
 * path is looked at with lstat: a symbolic link given without a trailing
 * slash is allowed (what goes is the link, not its target); with one, the
 * link is followed and its target judged.  A path that does not exist, or
 * is not a directory, is allowed (nothing recursive to refuse).  Paths in
 * why are elided past 1024 bytes.  Blocking (a few stat calls). */
int cw_rm_refusal(const char *path, const char *basedir, cw_buf_t *why);

/* The text for a code these functions return: CW_ETOOBIG as the depth
 * limit (fs-max-depth), -errno as strerror (thread-safe: may use buf). */
const char *cw_fs_strerror(int rc, char *buf, size_t len);

/* A growable list of heap strings. */
typedef struct cw_strlist {
    char **v;
    size_t n;
    size_t cap;
} cw_strlist_t;

/* Append a copy of s; 0 or -ENOMEM. */
int cw_strlist_add(cw_strlist_t *l, const char *s);
void cw_strlist_free(cw_strlist_t *l);

/* Python's glob.glob(pattern, recursive=True) as the stock worker uses it:
 * '*', '?', '[...]' per path component, '**' alone in a component matches
 * zero or more directories, names starting with '.' are matched only by a
 * pattern component that starts with '.', a pattern without magic yields
 * itself if it exists (lstat), results are in directory order (unsorted)
 * and absolute when the pattern is.  Unlike Python, a path is never
 * returned twice (Python repeats some for patterns like "a/ ** / **").
 * Unreadable directories are skipped, like Python.  No recursion: neither
 * a pattern of many components nor a deep tree under '**' uses more stack.
 * A pattern with more than max_depth components from its first wildcard
 * on, or a '**' reaching a directory with entries more than max_depth
 * levels down, fails with CW_ETOOBIG and a line in errors (may be NULL)
 * naming the limit.  Stops early when *stop becomes true (-EINTR).
 * Returns 0, -EINTR, CW_ETOOBIG or -ENOMEM; on failure out is as it was. */
int cw_glob(const char *pattern, size_t max_depth, atomic_bool *stop, cw_strlist_t *out,
            cw_buf_t *errors);

/* cp -R -P -p from to, natively.  If `to` is an existing directory the copy
 * goes to to/basename(from), as cp does.  Symbolic links are copied as
 * links (never followed), modes (including setuid/sticky bits where
 * permitted), owner (when running as root) and access/modification times
 * (nanoseconds) are kept; directories get their times after their content.
 * Regular files are copied with copy_file_range where the system has it
 * (Linux, FreeBSD >= 13) and the kernel takes it, else with pread/pwrite;
 * holes are kept where lseek knows SEEK_DATA/SEEK_HOLE.
 * For each item copied a line "'src' -> 'dst'\n" goes to log (like
 * cp -v, paths elided past 4096 bytes); each failure a line
 * "cp: cannot ...: <strerror>\n" to errors (paths elided past 1024 bytes),
 * and copying goes on with the next item.
 * Any depth up to max_depth levels below from, without recursion, keeping
 * 16 directory descriptors open on each side (34 descriptors at most, with
 * the two of a file being copied); past max_depth the copy
 * stops (CW_ETOOBIG, a line naming the limit).  Directories whose
 * descriptors were let go are reopened through ".." and must still be the
 * ones met on the way down, on both sides, or the copy stops there
 * (-ESTALE).  *stop is looked at between entries and every 4 MiB of a
 * file: an interrupted copy returns -EINTR within milliseconds, and the
 * file it was copying is removed ("cp: interrupted: removed the partial
 * copy 'dst'\n" in errors) rather than left looking complete; directories
 * already made get their modes and times.  Returns 0 when everything was
 * copied, else the first failure: -errno, -EINTR, CW_ETOOBIG, -ESTALE. */
int cw_copytree(const char *from, const char *to, size_t max_depth, atomic_bool *stop,
                cw_buf_t *log, cw_buf_t *errors);

/* A walk over everything below a directory, for DirectoryUpload's tar
 * stream: pre-order (a directory, then what it holds), each directory's
 * entries in the order the file system lists them, links never followed.
 * Any depth up to max_depth levels below the root, without recursion,
 * keeping 16 directory descriptors open (18 at most, for a moment) and
 * memory for one path plus the names left to visit on its levels.
 * Like rmtree and copytree, a directory whose descriptor was let go is
 * reopened through ".." and must be the one met on the way down. */
typedef struct cw_walk cw_walk_t;

/* One entry.  Everything in it is valid until the next cw_walk_next or
 * cw_walk_close call. */
typedef struct cw_walk_entry {
    const char *path; /* below the root: "a", "a/b" (any length: use
                         dirfd and name to reach it) */
    const char *name; /* its last component */
    int dirfd;        /* the directory holding it, for openat/readlinkat/
                         fstatat(dirfd, name, ...); the walk's: not closed */
    size_t depth;     /* 1 for the root's own entries */
    struct stat st;   /* its lstat: a link is a link, sockets included */
} cw_walk_entry_t;

/* Start a walk below root (a path; a link to a directory is followed).
 * On failure *w is NULL and errors (may be NULL) has a line "cannot read
 * directory 'root': <strerror>\n".  Returns 0, -errno, -EINTR. */
int cw_walk_open(cw_walk_t **w, const char *root, size_t max_depth, atomic_bool *stop,
                 cw_buf_t *errors);

/* The next entry into *e: 1, or 0 when the walk is complete, or a
 * negative code that ends it (returned again by later calls), with a line
 * in errors naming the path (elided past 1024 bytes) for all but -EINTR
 * and -ENOMEM: -errno ("cannot read directory 'a/b': Permission
 * denied\n", "cannot stat 'a/c': ...\n"), CW_ETOOBIG (a directory more
 * than max_depth levels down: "cannot read directory 'p': directory tree
 * deeper than the limit of N levels (fs-max-depth)\n"), -ESTALE (the tree
 * was moved during the walk), -EINTR (*stop became true).  Entries that
 * vanish between reading a directory and looking at them are skipped. */
int cw_walk_next(cw_walk_t *w, cw_walk_entry_t *e);

/* End a walk (complete or not) and free it; NULL-safe. */
void cw_walk_close(cw_walk_t *w);

#endif
