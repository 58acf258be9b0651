/* File-system helpers: mkdir -p and a native rm -rf (see fsutil.h). */
#include "fsutil.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

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

/* Note a failure to remove path (dirfd-relative name shown with its parent). */
static int rm_fail(cw_buf_t *errors, const char *shown, int err, int first)
{
    if (errors)
        cw_buf_printf(errors, "cannot remove '%s': %s\n", shown, strerror(err));
    return first ? first : -err;
}

/* Remove the directory `name` under dirfd (already known to be a directory,
 * not a link) and everything in it.  shown is its path for messages. */
static int rm_dir_at(int dirfd, const char *name, const char *shown, atomic_bool *stop,
                     cw_buf_t *errors, int depth)
{
    if (stop && atomic_load(stop))
        return -EINTR;
    if (depth > 4096)
        return rm_fail(errors, shown, ELOOP, 0);
    int fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0 && errno == EACCES) {
        /* chmod u+rwx and try again, as the stock worker does */
        struct stat st;
        if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0)
            fchmodat(dirfd, name, (st.st_mode & 07777) | S_IRWXU, 0);
        fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    }
    if (fd < 0)
        return rm_fail(errors, shown, errno, 0);
    int first = 0;
    struct stat dst;
    if (fstat(fd, &dst) == 0 && (dst.st_mode & S_IRWXU) != S_IRWXU)
        fchmod(fd, (dst.st_mode & 07777) | S_IRWXU);
    int dfd = dup(fd);
    DIR *d = dfd >= 0 ? fdopendir(dfd) : NULL;
    if (d == NULL) {
        if (dfd >= 0)
            close(dfd);
        close(fd);
        return rm_fail(errors, shown, errno, 0);
    }
    struct dirent *de;
    cw_buf_t sub = CW_BUF_INIT;
    while ((de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        if (stop && atomic_load(stop)) {
            first = first ? first : -EINTR;
            break;
        }
        cw_buf_reset(&sub);
        cw_buf_printf(&sub, "%s/%s", shown, de->d_name);
        const char *subshown = sub.data ? (const char *)sub.data : de->d_name;
        struct stat st;
        bool is_dir = de->d_type == DT_DIR;
        if (de->d_type == DT_UNKNOWN && fstatat(fd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0)
            is_dir = S_ISDIR(st.st_mode);
        if (is_dir) {
            char *copy = strdup(subshown);
            int rc = copy ? rm_dir_at(fd, de->d_name, copy, stop, errors, depth + 1) : -ENOMEM;
            free(copy);
            if (rc < 0 && !first)
                first = rc;
            /* rm_dir_at reused `sub` through its own buffer; restore nothing */
        } else if (unlinkat(fd, de->d_name, 0) < 0 && errno != ENOENT) {
            first = rm_fail(errors, subshown, errno, first);
        }
    }
    cw_buf_free(&sub);
    closedir(d);
    close(fd);
    if (unlinkat(dirfd, name, AT_REMOVEDIR) < 0 && errno != ENOENT)
        first = rm_fail(errors, shown, errno, first);
    return first;
}

int cw_rmtree(const char *path, atomic_bool *stop, cw_buf_t *errors)
{
    struct stat st;
    if (lstat(path, &st) < 0)
        return errno == ENOENT ? 0 : rm_fail(errors, path, errno, 0);
    if (!S_ISDIR(st.st_mode)) {
        if (unlink(path) < 0 && errno != ENOENT)
            return rm_fail(errors, path, errno, 0);
        return 0;
    }
    /* A trailing slash on a directory path is fine for openat; strip it for
     * unlinkat(AT_REMOVEDIR) of the top, which the kernel also accepts. */
    return rm_dir_at(AT_FDCWD, path, path, stop, errors, 0);
}
