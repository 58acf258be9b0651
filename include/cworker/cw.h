/* cworker protocol library: common definitions.
 *
 * Error convention (whole project): functions return int, 0 (or a
 * non-negative count) on success and a negative code on failure.  Codes in
 * the errno range are negated errno values (libuv's UV_E* codes are the same
 * on Unix and pass through unchanged).  Our own codes live in their own range
 * below CW_ERR_BASE; cw_strerror() names every code.
 */
#ifndef CWORKER_CW_H
#define CWORKER_CW_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

#define CW_VERSION "0.1.0"

/* The command version we announce in get_worker_info's worker_commands.
 * 3.3 = failure_reason (3.2) + max_lines (3.3), as buildbot-worker >= 4.1. */
#define CW_COMMAND_VERSION "3.3"

#define CW_ERR_BASE (-30000)

enum cw_err {
    CW_EPROTO = CW_ERR_BASE - 1,     /* the peer violated the protocol */
    CW_ETOOBIG = CW_ERR_BASE - 2,    /* input exceeds a configured limit */
    CW_EHANDSHAKE = CW_ERR_BASE - 3, /* HTTP upgrade answered wrongly */
    CW_EAUTH = CW_ERR_BASE - 4,      /* credentials refused (HTTP 401) */
    CW_ECLOSED = CW_ERR_BASE - 5,    /* WebSocket closed (close frame seen/sent) */
    CW_EBADMSG = CW_ERR_BASE - 6,    /* malformed message (msgpack/envelope) */
    CW_EMSGKEY = CW_ERR_BASE - 7,    /* request lacks or mistypes a key: answer
                                        with an exception response */
    CW_EIGNORE = CW_ERR_BASE - 8,    /* message to be logged and ignored */
    CW_EHTTP = CW_ERR_BASE - 9,      /* malformed HTTP head */
    CW_EBADARG = CW_ERR_BASE - 10,   /* invalid command argument */
    CW_ETIMEOUT = CW_ERR_BASE - 11,  /* an operation took too long */
    CW_ETLS = CW_ERR_BASE - 12,      /* TLS failure */
    CW_ERR_LAST = CW_ERR_BASE - 13,
};

/* Format a message into err (NULL or errlen 0: nothing is written) and
 * return code: the one way every parser reports why it refuses, e.g.
 * `return cw_err_fmt(CW_EBADARG, err, errlen, "bad %s", what);`. */
int cw_err_fmt(int code, char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Thread-safe strerror for a positive errno: the text (in buf or static). */
const char *cw_errstr(int errnum, char *buf, size_t len);

/* Human-readable name of an error code (ours, or a negated errno). Never NULL. */
const char *cw_strerror(int err);

/* Fill buf with len bytes from the kernel's CSPRNG (getrandom, else
 * arc4random_buf where libc has it, else /dev/urandom).  Returns 0 or a
 * negative errno. */
int cw_random_bytes(void *buf, size_t len);

/* memrchr(3), which macOS lacks: the last byte c in s[0..n), or NULL. */
const void *cw_memrchr(const void *s, int c, size_t n);

/* mkostemp(tmpl, O_CLOEXEC), or mkstemp + FD_CLOEXEC where libc has no
 * mkostemp.  Returns the descriptor or -1 (errno set). */
int cw_mkstemp_cloexec(char *tmpl);

/* A length or size from the wire (int64_t) as a size_t no larger than max.
 * Clamp before narrowing: on a 32-bit target a plain (size_t) cast turns
 * 4 GiB + 1 into 1.  Negative gives 0. */
static inline size_t cw_clamp_size(int64_t v, size_t max)
{
    if (v <= 0)
        return 0;
    return (uint64_t)v > (uint64_t)max ? max : (size_t)v;
}

/* A counted string that is not NUL-terminated; it points into storage owned
 * by someone else (usually a msgpack zone) and lives as long as that. */
typedef struct cw_str {
    const char *ptr;
    size_t len;
} cw_str_t;

/* True if s equals the NUL-terminated string lit. */
bool cw_str_eq(cw_str_t s, const char *lit);

/* Copy into a fresh NUL-terminated heap string (caller frees); NULL on OOM. */
char *cw_str_dup(cw_str_t s);

#endif
