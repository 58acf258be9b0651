/* File-system helpers for the commands: blocking calls, meant for the
 * thread pool (or for small, bounded work on the loop thread). */
#ifndef CW_FSUTIL_H
#define CW_FSUTIL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <sys/types.h>

#include "cworker/buf.h"

/* mkdir -p: create path and its missing parents.  Returns 0 or -errno
 * (-EEXIST when path or a parent exists but is not a directory). */
int cw_mkdirs(const char *path, mode_t mode);

/* rm -rf, natively: removes path whatever it is.  Never follows a symbolic
 * link (a link is removed, not its target).  Directories without read,
 * write or search permission for us are made accessible (u+rwx) and tried
 * again.  A missing path is not an error.  Stops early when *stop becomes
 * true.  Each failure is described on its own line in errors ("cannot
 * remove 'p': Permission denied\n").  Returns 0, or the -errno of the first
 * failure (-EINTR when stopped). */
int cw_rmtree(const char *path, atomic_bool *stop, cw_buf_t *errors);

#endif
