/* Helpers of config.c shared with the other parts of the configuration
 * code: tac.c (buildbot.tac import) and create_worker.c (`cworker
 * create-worker`).  Not for other callers: they use config.h.
 *
 * Messages go into err (errlen bytes); functions that take err return 0 or
 * a negative code, like the cw_opts_* stages. */
#ifndef CW_WORKER_CONFIG_INTERNAL_H
#define CW_WORKER_CONFIG_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "options.h"

/* An option's long name ("master"). */
const char *opt_name(cw_opt_id_t id);

/* Write a message into err; returns -EINVAL for `return fail(...)`. */
int fail(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Out-of-memory message; returns -ENOMEM. */
int oom(char *err, size_t errlen);
/* printf into a new heap string (NULL when out of memory). */
char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* A value for a message: control bytes shown as '?', cut at 100 bytes. */
void show(char *out, size_t cap, const char *v);

/* Remember a note for the user (best effort; takes note, which may be NULL). */
void add_note(cw_opts_t *o, char *note);
/* Record a value from src unless a source of higher precedence set it. */
int set_val(cw_opts_t *o, int id, const char *value, const char *where, cw_src_t src, char *err,
            size_t errlen);
/* Record that src had a value for id we cannot use (reported only if
 * nothing of higher precedence sets the option). */
int set_bad(cw_opts_t *o, int id, const char *where, cw_src_t src, const char *why, char *err,
            size_t errlen);

/* dirname(file) + "/" + rel, for relative paths inside a file; heap string. */
char *path_relative_to(const char *file, const char *rel);
/* An absolute version of path (relative to the current directory); heap
 * string, NULL on failure. */
char *absolute(const char *path);

/* Decimal digits only, into an unsigned 64-bit value; 0 or -1. */
int parse_u64(const char *s, uint64_t *out);
/* A host name, IPv4 address or (bracket-less) IPv6 address (v6: ':' and
 * '%' allowed) -- by its characters only. */
bool valid_host(const char *h, bool v6);
/* Split "HOST[:PORT]" / "[V6][:PORT]" (len bytes of s); *host is a heap
 * copy, *port stays untouched when absent.  0 or -1. */
int split_hostport(const char *s, size_t len, char **host, int *port, bool *had_port);

#endif
