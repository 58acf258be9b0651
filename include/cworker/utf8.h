/* UTF-8 checks and repair with Python's rules (bytes.decode('utf-8',
 * errors='replace')), the one implementation the library and the daemon
 * share: the line splitter (output.c), names and messages (cw_utf8_repair),
 * and every validity check of the wire codecs. */
#ifndef CWORKER_UTF8_H
#define CWORKER_UTF8_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cworker/buf.h"

enum cw_utf8_class {
    CW_UTF8_VALID,   /* a whole, valid sequence of *len bytes */
    CW_UTF8_INVALID, /* *len bytes (the "maximal subpart") stand for one U+FFFD;
                        the byte after them starts something new */
    CW_UTF8_SHORT,   /* all n bytes are a valid but unfinished prefix */
};

/* U+FFFD, encoded. */
extern const uint8_t cw_utf8_fffd[3];

/* Classify the sequence starting at p[0] >= 0x80 (n >= 1 bytes available)
 * as Python's decoder does: no overlongs, no surrogates, nothing above
 * U+10FFFF; an invalid sequence is replaced by one U+FFFD for its longest
 * valid-looking prefix (Unicode's "maximal subpart" practice). */
static inline int cw_utf8_seq(const uint8_t *p, size_t n, size_t *len)
{
    uint8_t c = p[0], lo = 0x80, hi = 0xBF;
    size_t need;
    if (c >= 0xC2 && c <= 0xDF) {
        need = 1;
    } else if (c >= 0xE0 && c <= 0xEF) {
        need = 2;
        if (c == 0xE0)
            lo = 0xA0; /* overlong */
        else if (c == 0xED)
            hi = 0x9F; /* surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 3;
        if (c == 0xF0)
            lo = 0x90; /* overlong */
        else if (c == 0xF4)
            hi = 0x8F; /* > U+10FFFF */
    } else {
        *len = 1;
        return CW_UTF8_INVALID;
    }
    for (size_t j = 1; j <= need; j++) {
        if (j >= n) {
            *len = j;
            return CW_UTF8_SHORT;
        }
        if (p[j] < lo || p[j] > hi) {
            *len = j;
            return CW_UTF8_INVALID;
        }
        lo = 0x80;
        hi = 0xBF;
    }
    *len = need + 1;
    return CW_UTF8_VALID;
}

/* True if [p, p+len) is valid UTF-8. */
bool cw_utf8_valid(const uint8_t *p, size_t len);

/* Append [p, p+len) to out with every invalid sequence replaced by one
 * U+FFFD, exactly as bytes.decode('utf-8', 'replace').encode() (an
 * unfinished sequence at the end is invalid too).  0 or -ENOMEM. */
int cw_utf8_repair(const uint8_t *p, size_t len, cw_buf_t *out);

#endif
