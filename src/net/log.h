/* Logging to stderr for both daemons: one line per event. */
#ifndef CW_NET_LOG_H
#define CW_NET_LOG_H

#include <stdbool.h>

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
void cw_log(cw_log_level_t level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define cw_error(...) cw_log(CW_LOG_ERROR, __VA_ARGS__)
#define cw_warn(...) cw_log(CW_LOG_WARN, __VA_ARGS__)
#define cw_info(...) cw_log(CW_LOG_INFO, __VA_ARGS__)
#define cw_debug(...)                                                                              \
    do {                                                                                           \
        if (cw_log_enabled(CW_LOG_DEBUG))                                                          \
            cw_log(CW_LOG_DEBUG, __VA_ARGS__);                                                     \
    } while (0)

#endif
