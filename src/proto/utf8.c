/* UTF-8 with Python's rules (see utf8.h). */
#include "cworker/utf8.h"

#include <errno.h>
#include <string.h>

const uint8_t cw_utf8_fffd[3] = {0xEF, 0xBF, 0xBD};

bool cw_utf8_valid(const uint8_t *p, size_t len)
{
    size_t i = 0;
    while (i < len) {
        /* ASCII, 32 bytes at a time (log text is mostly ASCII: this check is a
         * pass over every byte a master receives) */
        while (len - i >= 32) {
            uint64_t a, b, c, d;
            memcpy(&a, p + i, 8);
            memcpy(&b, p + i + 8, 8);
            memcpy(&c, p + i + 16, 8);
            memcpy(&d, p + i + 24, 8);
            if ((a | b | c | d) & 0x8080808080808080ull)
                break;
            i += 32;
        }
        if (i == len)
            break;
        if (p[i] < 0x80) {
            i++;
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
