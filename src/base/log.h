/* Logging for both daemons: one line per event, to stderr or (cworker
 * --log-file) to a file rotated like the stock worker's twistd.log. */
#ifndef CW_NET_LOG_H
#define CW_NET_LOG_H

#include <stdbool.h>
#include <stdint.h>

typedef enum cw_log_level {
    CW_LOG_ERROR,
    CW_LOG_WARN,
    CW_LOG_INFO,
    CW_LOG_DEBUG, /* protocol detail: only with --verbose */
} cw_log_level_t;

typedef enum cw_log_format {
    CW_LOG_TEXT,
    CW_LOG_JSON,
} cw_log_format_t;

/* Process-wide settings; set once at start-up. */
void cw_log_setup(const char *program, cw_log_level_t max_level, cw_log_format_t format);
bool cw_log_enabled(cw_log_level_t level);
/* Log to path (appending; created 0644 minus the umask) instead of stderr;
 * NULL: back to stderr.  Before a line would take the file past max_size
 * bytes (0 = never) it is rotated: PATH.N-1 -> PATH.N ... PATH -> PATH.1, the
 * oldest beyond keep dropped (keep 0 = keep all).  Lines are never split
 * or lost: when the file cannot be written (disk full, removed, ...) it is
 * reopened once, then lines go to stderr (one warning there) and the file
 * is retried every 10 s.  A file removed or renamed behind our back is
 * noticed within a second and created again.  0 or -errno (the file could
 * not be opened; logging stays on stderr). */
int cw_log_open_file(const char *path, uint64_t max_size, unsigned keep);
/* Reopen the log file (SIGHUP, after logrotate moved it); 0 or -errno.
 * Without a log file: nothing, 0. */
int cw_log_reopen(void);
/* The log file's path, or NULL when logging to stderr. */
const char *cw_log_file(void);
/* The rotation step on the files alone (no logger state): remove PATH.keep
 * (and higher-numbered leftovers up to the first gap), rename PATH.i to PATH.i+1 from the
 * highest down, then PATH to PATH.1.  keep 0: keep every PATH.i.  Missing
 * files are skipped.  0 or -errno (of the first failing rename). */
int cw_log_rotate_files(const char *path, unsigned keep);
void cw_log(cw_log_level_t level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define cw_error(...) cw_log(CW_LOG_ERROR, __VA_ARGS__)
#define cw_warn(...)  cw_log(CW_LOG_WARN, __VA_ARGS__)
#define cw_info(...)  cw_log(CW_LOG_INFO, __VA_ARGS__)
#define cw_debug(...)                                                                              \
    do {                                                                                           \
        if (cw_log_enabled(CW_LOG_DEBUG))                                                          \
            cw_log(CW_LOG_DEBUG, __VA_ARGS__);                                                     \
    } while (0)

#endif
