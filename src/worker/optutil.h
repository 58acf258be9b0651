/* Helpers of the option code (options*.c, tac.c, config.c, create_worker.c,
 * proxy.c) that know nothing of the option table: messages into a caller's
 * buffer, values shown in messages, numbers, host names, paths, small files,
 * and the command-line scanner that both `cworker` and `cworker
 * create-worker` use.
 *
 * Functions that take err/errlen write a message there and return 0 or a
 * negative code (-EINVAL, -ENOMEM), like the cw_opts_* stages. */
#ifndef CW_WORKER_OPTUTIL_H
#define CW_WORKER_OPTUTIL_H

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cworker/cw.h"

/* Write a message into err; returns -EINVAL, for `return cw_opt_fail(...)`. */
#define cw_opt_fail(err, errlen, ...) cw_err_fmt(-EINVAL, err, errlen, __VA_ARGS__)
/* The out-of-memory message; returns -ENOMEM. */
int cw_opt_oom(char *err, size_t errlen);
/* printf into a new heap string (NULL when out of memory). */
char *cw_opt_asprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* A value for a message: control bytes shown as '?', cut at 100 bytes. */
void cw_opt_show(char *out, size_t cap, const char *v);
/* "none", "off" (any case) or the empty string. */
bool cw_opt_is_none(const char *s);

/* The value of the variable name in envp (NULL-terminated "K=V"), or NULL
 * when it is absent or empty. */
const char *cw_opt_getenv(char *const *envp, const char *name);

/* Decimal digits only, into an unsigned 64-bit value; 0 or -1. */
int cw_opt_parse_u64(const char *s, uint64_t *out);
/* A host name, IPv4 address or (bracket-less) IPv6 address (v6: ':' and '%'
 * allowed) -- by its characters only. */
bool cw_opt_valid_host(const char *h, bool v6);
/* Split "HOST[:PORT]" / "[V6][:PORT]" (len bytes of s); *host is a heap copy,
 * *port stays untouched when absent.  0 or -1. */
int cw_opt_split_hostport(const char *s, size_t len, char **host, int *port, bool *had_port);
/* "host:port", bracketing IPv6 addresses; heap string or NULL. */
char *cw_opt_join_hostport(const char *host, long long port);

/* dirname(file) + "/" + rel, for relative paths inside a file; heap string. */
char *cw_opt_relative_to(const char *file, const char *rel);
/* An absolute version of path (relative to the current directory); heap
 * string, NULL on failure. */
char *cw_opt_absolute(const char *path);
/* Could path (absolute, missing) be created?  Its parent must be a
 * directory we may write to.  *parent gets the parent (heap, the caller
 * frees it).  Returns 0 yes, CW_OPT_NO_PARENT (parent not a directory) or
 * CW_OPT_PARENT_DENIED (not writable), with the errno value in *errnum, or
 * -ENOMEM. */
enum { CW_OPT_NO_PARENT = 1, CW_OPT_PARENT_DENIED = 2 };
int cw_opt_parent_dir(const char *path, char **parent, int *errnum);
/* Read a small regular file (at most 1 MiB, no FIFO or device); *mode gets
 * its permission bits.  what and where name it in messages ("config file",
 * "--config"). */
int cw_opt_read_file(const char *path, const char *what, const char *where, char **text,
                     size_t *len, unsigned *mode, char *err, size_t errlen);

/* The command-line scanner: --long[=value], --long value, -x, -xVALUE,
 * -x VALUE, clusters -fq, and (with dashdash) "--" before positional words. */
typedef enum cw_argspec {
    CW_ARG_NONE,     /* takes no value */
    CW_ARG_REQUIRED, /* takes a value: "=value", the rest of a cluster, or the next word */
    CW_ARG_OPTIONAL, /* only "--long=value" (booleans: bare means true) */
} cw_argspec_t;

typedef struct cw_flagspec {
    const char *lng; /* without the dashes, or NULL */
    char shrt;       /* or 0 */
    cw_argspec_t arg;
    int id; /* the caller's */
} cw_flagspec_t;

/* Called for every flag (f set, name "--long" or "-x", value or NULL) and
 * every positional word (f and name NULL).  Returns 0 to go on, 1 to stop
 * scanning (--help), or a negative code with a message in err. */
typedef int (*cw_flag_fn)(void *ctx, const cw_flagspec_t *f, const char *name, const char *value,
                          char *err, size_t errlen);
/* Scan argv[0..argc) (no program name); prefix starts every message the
 * scanner writes ("create-worker: ").  0, or the first negative code. */
int cw_opt_scan(const cw_flagspec_t *specs, size_t nspecs, bool dashdash, int argc, char **argv,
                cw_flag_fn fn, void *ctx, const char *prefix, char *err, size_t errlen);

#endif
