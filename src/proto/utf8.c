/* UTF-8 with Python's rules (see utf8.h). */
#include "cworker/utf8.h"

#include <errno.h>
#include <string.h>

const uint8_t cw_utf8_fffd[3] = {0xEF, 0xBF, 0xBD};

/* Length of the leading run of ASCII bytes, 8 at a time. */
static size_t ascii_run(const uint8_t *p, size_t n)
{
    size_t i = 0;
    for (; n - i >= 16; i += 16) {
        uint64_t a, b;
        memcpy(&a, p + i, 8);
        memcpy(&b, p + i + 8, 8);
        if ((a | b) & 0x8080808080808080ULL)
            break;
    }
    while (i < n && p[i] < 0x80)
        i++;
    return i;
}

bool cw_utf8_valid(const uint8_t *p, size_t len)
{
    size_t i = 0;
    while (i < len) {
        if (p[i] < 0x80) {
            i += ascii_run(p + i, len - i);
            continue;
        }
        size_t k;
        if (cw_utf8_seq(p + i, len - i, &k) != CW_UTF8_VALID)
            return false;
        i += k;
    }
    return true;
}

int cw_utf8_repair(const uint8_t *p, size_t len, cw_buf_t *out)
{
    size_t i = 0, run = 0;
    while (i < len) {
        if (p[i] < 0x80) {
            i++;
            continue;
        }
        size_t k;
        if (cw_utf8_seq(p + i, len - i, &k) == CW_UTF8_VALID) {
            i += k;
            continue;
        }
        /* invalid, or unfinished at the end: one U+FFFD for those k bytes */
        if (cw_buf_append(out, p + run, i - run) < 0 ||
            cw_buf_append(out, cw_utf8_fffd, sizeof cw_utf8_fffd) < 0)
            return -ENOMEM;
        i += k;
        run = i;
    }
    return cw_buf_append(out, p + run, len - run);
}
