/* Logging to stderr: "2026-11-28T03:14:59.123Z cworker: message" or JSON. */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

static const char *log_program = "cworker";
static cw_log_level_t log_max = CW_LOG_INFO;
static cw_log_format_t log_format = CW_LOG_TEXT;

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

void cw_log(cw_log_level_t level, const char *fmt, ...)
{
    static const char *names[] = {"error", "warning", "info", "debug"};
    if (level > log_max)
        return;
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);

    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    gmtime_r(&tv.tv_sec, &tm);
    char ts[64];
    snprintf(ts, sizeof ts, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
             (int)(tv.tv_usec / 1000));

    if (log_format == CW_LOG_JSON) {
        char esc[sizeof msg * 2];
        json_escape(esc, sizeof esc, msg);
        fprintf(stderr, "{\"time\":\"%s\",\"program\":\"%s\",\"level\":\"%s\",\"msg\":\"%s\"}\n",
                ts, log_program, names[level], esc);
    } else if (level <= CW_LOG_WARN) {
        fprintf(stderr, "%s %s: %s: %s\n", ts, log_program, names[level], msg);
    } else {
        fprintf(stderr, "%s %s: %s\n", ts, log_program, msg);
    }
    fflush(stderr);
}
