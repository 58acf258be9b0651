/* Allocation-free pre-validation of one msgpack object (see cworker/msg.h).
 *
 * msgpack-c's msgpack_unpack_next() allocates n * sizeof(msgpack_object) as
 * soon as it reads an array/map header, trusting the declared n.  This walk
 * runs first and bounds that: every declared element (two per map entry) must
 * be backed by at least one byte of input that is not already promised to an
 * element still pending in an enclosing container.  So the elements declared
 * by all containers together never exceed the input length, and msgpack-c's
 * zone stays within a small multiple of the message size.
 *
 * The walk is iterative with a fixed-size stack of open containers, so hostile
 * nesting costs neither heap nor C stack.
 */
#include "cworker/utf8.h"
#include "cworker/msg.h"

#include <stdarg.h>
#include <stdio.h>

/* Hard cap on max_depth: the stack of open containers lives on the C stack. */
#define MPCHECK_DEPTH_CAP 256

/* One open array or map: how many elements (map: keys + values) are still to
 * come. */
typedef struct mp_level {
    uint64_t left;
    bool is_map;
} mp_level_t;

/* Big-endian unsigned integer of n (1, 2, 4 or 8) bytes. */
static uint64_t load_be(const uint8_t *p, size_t n)
{
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++)
        v = (v << 8) | p[i];
    return v;
}

int cw_msgpack_check(const uint8_t *data, size_t len, unsigned max_depth, char *err, size_t errlen)
{
    mp_level_t stack[MPCHECK_DEPTH_CAP];
    unsigned depth = 0;
    /* Elements declared by open containers and not started yet; each needs at
     * least one more byte. */
    uint64_t pending = 0;
    size_t pos = 0;

    if (max_depth > MPCHECK_DEPTH_CAP)
        max_depth = MPCHECK_DEPTH_CAP;
    if (err != NULL && errlen > 0)
        err[0] = '\0';

    for (;;) {
        bool is_key = false;
        if (depth > 0) {
            /* The element starting now is no longer pending. Map elements
             * alternate key, value, starting with a key (left even). */
            mp_level_t *top = &stack[depth - 1];
            is_key = top->is_map && (top->left % 2 == 0);
            top->left--;
            pending--;
        }
        if (pos >= len)
            return cw_err_fmt(CW_EBADMSG, err, errlen, "truncated msgpack at offset %zu", pos);

        const size_t start = pos;
        const uint8_t b = data[pos++];
        const size_t avail = len - pos; /* bytes after the type byte */
        size_t hdr = 0;                 /* length-field bytes after the type byte */
        size_t fixed = 0;               /* payload bytes of a fixed-size scalar */
        bool is_str = false, is_bin = false, is_cont = false, cont_map = false;
        uint64_t n = 0; /* str/bin byte length or container element count */

        if (b <= 0x7f || b >= 0xe0) {
            /* positive / negative fixint: nothing more */
        } else if (b <= 0x8f) {
            is_cont = cont_map = true;
            n = b & 0x0f;
        } else if (b <= 0x9f) {
            is_cont = true;
            n = b & 0x0f;
        } else if (b <= 0xbf) {
            is_str = true;
            n = b & 0x1f;
        } else {
            switch (b) {
            case 0xc0: /* nil */
            case 0xc2: /* false */
            case 0xc3: /* true */
                break;
            case 0xc1:
                return cw_err_fmt(CW_EBADMSG, err, errlen, "never-used byte 0xc1 at offset %zu",
                                  start);
            case 0xc4:
            case 0xc5:
            case 0xc6:
                is_bin = true;
                hdr = (size_t)1 << (b - 0xc4);
                break;
            case 0xc7:
            case 0xc8:
            case 0xc9:
            case 0xd4:
            case 0xd5:
            case 0xd6:
            case 0xd7:
            case 0xd8:
                /* ext and fixext, including the timestamp type -1 */
                return cw_err_fmt(CW_EBADMSG, err, errlen,
                                  "ext type 0x%02x at offset %zu not allowed", b, start);
            case 0xca:
                fixed = 4;
                break;
            case 0xcb:
                fixed = 8;
                break;
            case 0xcc:
            case 0xcd:
            case 0xce:
            case 0xcf:
                fixed = (size_t)1 << (b - 0xcc);
                break;
            case 0xd0:
            case 0xd1:
            case 0xd2:
            case 0xd3:
                fixed = (size_t)1 << (b - 0xd0);
                break;
            case 0xd9:
            case 0xda:
            case 0xdb:
                is_str = true;
                hdr = (size_t)1 << (b - 0xd9);
                break;
            case 0xdc:
            case 0xdd:
                is_cont = true;
                hdr = b == 0xdc ? 2 : 4;
                break;
            default: /* 0xde, 0xdf */
                is_cont = cont_map = true;
                hdr = b == 0xde ? 2 : 4;
                break;
            }
        }

        /* strict_map_key on the stock peers; we also refuse bin keys, which
         * could never match the str keys the protocol uses. */
        if (is_key && !is_str)
            return cw_err_fmt(CW_EBADMSG, err, errlen, "map key at offset %zu is not a str", start);

        /* Bytes this element may use: the rest of the input minus one byte
         * for every element still pending in enclosing containers.  Keeping
         * every size within it keeps pending <= len - pos. */
        if (pending > avail || hdr + fixed > avail - pending)
            return cw_err_fmt(CW_EBADMSG, err, errlen, "truncated msgpack at offset %zu", start);
        const uint64_t room = avail - pending - hdr - fixed;
        if (hdr > 0)
            n = load_be(data + pos, hdr);
        pos += hdr + fixed;

        if (is_str || is_bin) {
            if (n > room)
                return cw_err_fmt(
                    CW_EBADMSG, err, errlen, "%s at offset %zu declares %llu bytes, only %llu left",
                    is_str ? "str" : "bin", start, (unsigned long long)n, (unsigned long long)room);
            if (is_str && !cw_utf8_valid(data + pos, (size_t)n))
                return cw_err_fmt(CW_EBADMSG, err, errlen, "str at offset %zu is not valid UTF-8",
                                  start);
            pos += (size_t)n;
        } else if (is_cont) {
            if (depth >= max_depth)
                return cw_err_fmt(CW_EBADMSG, err, errlen, "nesting deeper than %u at offset %zu",
                                  max_depth, start);
            const uint64_t elems = cont_map ? 2 * n : n;
            if (elems > room)
                return cw_err_fmt(CW_EBADMSG, err, errlen,
                                  "%s at offset %zu declares %llu elements, only %llu bytes left",
                                  cont_map ? "map" : "array", start, (unsigned long long)n,
                                  (unsigned long long)room);
            if (elems > 0) {
                stack[depth].left = elems;
                stack[depth].is_map = cont_map;
                depth++;
                pending += elems;
                continue;
            }
        }

        /* An element is complete: close every container it completed. */
        while (depth > 0 && stack[depth - 1].left == 0)
            depth--;
        if (depth == 0)
            break;
    }

    if (pos != len)
        return cw_err_fmt(CW_EBADMSG, err, errlen, "%zu trailing bytes after the msgpack object",
                          len - pos);
    return 0;
}
