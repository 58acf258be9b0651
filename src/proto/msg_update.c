/* The msgpack encoding of `update` messages (reference §7): the pairs a
 * cw_outbuf_t plans (output.h), as [key, value] arrays; text as line records
 * [text, offsets, times]. */
#include "cworker/msg.h"
#include "cworker/output.h"

#include <errno.h>
#include <string.h>

/* Write raw bytes through the packer's sink. */
static int pk_raw(msgpack_packer *pk, const void *p, size_t n)
{
    return n ? pk->callback(pk->data, (const char *)p, n) : 0;
}

/* Pack a str from counted bytes. */
static int pk_str(msgpack_packer *pk, const void *p, size_t n)
{
    if (msgpack_pack_str(pk, n) != 0)
        return -1;
    return pk_raw(pk, p, n);
}

/* msgpack uint in its smallest form (as msgpack-c and msgpack-python do). */
static inline size_t put_uint(uint8_t *b, uint64_t v)
{
    if (v < 0x80) {
        b[0] = (uint8_t)v;
        return 1;
    }
    size_t n;
    if (v < 0x100) {
        b[0] = 0xcc;
        n = 1;
    } else if (v < 0x10000) {
        b[0] = 0xcd;
        n = 2;
    } else if (v <= 0xffffffffULL) {
        b[0] = 0xce;
        n = 4;
    } else {
        b[0] = 0xcf;
        n = 8;
    }
    for (size_t k = 0; k < n; k++)
        b[1 + k] = (uint8_t)(v >> (8 * (n - 1 - k)));
    return n + 1;
}

/* msgpack float64, the only float form the stock peers send. */
static inline size_t put_f64(uint8_t *b, double d)
{
    uint64_t u;
    memcpy(&u, &d, 8);
    b[0] = 0xcb;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    u = __builtin_bswap64(u);
    memcpy(b + 1, &u, 8);
#else
    for (size_t k = 0; k < 8; k++)
        b[1 + k] = (uint8_t)(u >> (56 - 8 * k));
#endif
    return 9;
}

/* The offsets and times arrays of nl lines, encoded in blocks rather than
 * one packer call per number ("y\n" output has a line every 2 bytes). */
static int pack_line_arrays(msgpack_packer *pk, const size_t *offs, const double *times, size_t nl,
                            size_t base)
{
    enum { BLOCK = 448 }; /* 9 bytes each at most */
    uint8_t buf[BLOCK * 9];
    if (msgpack_pack_array(pk, nl) != 0)
        return -1;
    for (size_t k = 0; k < nl;) {
        size_t m = nl - k < BLOCK ? nl - k : BLOCK, n = 0;
        for (size_t j = 0; j < m; j++)
            n += put_uint(buf + n, offs[k + j] - base);
        if (pk_raw(pk, buf, n) != 0)
            return -1;
        k += m;
    }
    if (msgpack_pack_array(pk, nl) != 0)
        return -1;
    /* Lines of one chunk share their time: encode it once per run. */
    uint8_t enc[9];
    double prev = 0.0;
    put_f64(enc, prev);
    for (size_t k = 0; k < nl;) {
        size_t m = nl - k < BLOCK ? nl - k : BLOCK, n = 0;
        for (size_t j = 0; j < m; j++, n += 9) {
            if (memcmp(&times[k + j], &prev, sizeof prev) != 0) {
                prev = times[k + j];
                put_f64(enc, prev);
            }
            memcpy(buf + n, enc, 9);
        }
        if (pk_raw(pk, buf, n) != 0)
            return -1;
        k += m;
    }
    return 0;
}

/* One [key, value] pair. */
static int pack_pair(msgpack_packer *pk, const cw_out_pair_t *e)
{
    if (msgpack_pack_array(pk, 2) != 0)
        return -1;
    if (e->kind != CW_OUT_TEXT) {
        if (pk_str(pk, e->key, e->key_len) != 0)
            return -1;
        switch (e->kind) {
        case CW_OUT_INT:
            return msgpack_pack_int64(pk, e->ival);
        case CW_OUT_FLOAT:
            return msgpack_pack_double(pk, e->fval);
        case CW_OUT_STR:
            return pk_str(pk, e->data, e->len);
        case CW_OUT_STRLIST: {
            if (msgpack_pack_array(pk, e->count) != 0)
                return -1;
            const char *s = e->data;
            for (size_t i = 0; i < e->count; i++) {
                size_t len = strlen(s);
                if (pk_str(pk, s, len) != 0)
                    return -1;
                s += len + 1;
            }
            return 0;
        }
        case CW_OUT_NUMLIST:
            if (msgpack_pack_array(pk, e->count) != 0)
                return -1;
            for (size_t i = 0; i < e->count; i++)
                if ((e->nums[i].is_unsigned ? msgpack_pack_uint64(pk, e->nums[i].u)
                                            : msgpack_pack_int64(pk, e->nums[i].i)) != 0)
                    return -1;
            return 0;
        default:
            return -1;
        }
    }
    const char *key = cw_stream_key(e->stream);
    if (pk_str(pk, key, strlen(key)) != 0)
        return -1;
    if (e->stream == CW_STREAM_LOG &&
        (msgpack_pack_array(pk, 2) != 0 || pk_str(pk, e->key, e->key_len) != 0))
        return -1;
    if (msgpack_pack_array(pk, 3) != 0 || pk_str(pk, e->data, e->len) != 0)
        return -1;
    return pack_line_arrays(pk, e->ends, e->times, e->nlines, e->base);
}

int cw_pack_update(msgpack_packer *pk, int64_t seq, cw_str_t command_id, cw_outbuf_t *ob)
{
    cw_out_plan_t plan;
    size_t npairs = cw_outbuf_plan(ob, &plan);
    if (npairs == 0)
        return 0;
    if (msgpack_pack_map(pk, 4) != 0 || pk_str(pk, "op", 2) != 0 || pk_str(pk, "update", 6) != 0 ||
        pk_str(pk, "args", 4) != 0 || msgpack_pack_array(pk, npairs) != 0)
        return -ENOMEM;
    for (size_t k = 0; k < npairs; k++) {
        cw_out_pair_t pair;
        cw_outbuf_plan_pair(ob, &plan, k, &pair);
        if (pack_pair(pk, &pair) != 0)
            return -ENOMEM;
    }
    if (pk_str(pk, "command_id", 10) != 0 || pk_str(pk, command_id.ptr, command_id.len) != 0 ||
        pk_str(pk, "seq_number", 10) != 0 || msgpack_pack_int64(pk, seq) != 0)
        return -ENOMEM;
    /* packed: now remove what went out */
    cw_outbuf_commit(ob, &plan);
    return 1;
}
