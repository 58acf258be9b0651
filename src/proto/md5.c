/* MD5 (RFC 1321), portable and endian-independent. */
#include "cworker/md5.h"

#include <string.h>

static uint32_t rol(uint32_t x, unsigned n)
{
    return (x << n) | (x >> (32 - n));
}

/* Per-round shift amounts (RFC 1321 §3.4), four per round. */
static const uint8_t shifts[4][4] = {
    {7, 12, 17, 22}, {5, 9, 14, 20}, {4, 11, 16, 23}, {6, 10, 15, 21}};

/* T[i] = floor(2^32 * |sin(i + 1)|), written out so the code needs no libm. */
static const uint32_t T[64] = {
    0xd76aa478, 0xe8c7b756, 0x242070db, 0xc1bdceee, 0xf57c0faf, 0x4787c62a, 0xa8304613, 0xfd469501,
    0x698098d8, 0x8b44f7af, 0xffff5bb1, 0x895cd7be, 0x6b901122, 0xfd987193, 0xa679438e, 0x49b40821,
    0xf61e2562, 0xc040b340, 0x265e5a51, 0xe9b6c7aa, 0xd62f105d, 0x02441453, 0xd8a1e681, 0xe7d3fbc8,
    0x21e1cde6, 0xc33707d6, 0xf4d50d87, 0x455a14ed, 0xa9e3e905, 0xfcefa3f8, 0x676f02d9, 0x8d2a4c8a,
    0xfffa3942, 0x8771f681, 0x6d9d6122, 0xfde5380c, 0xa4beea44, 0x4bdecfa9, 0xf6bb4b60, 0xbebfbc70,
    0x289b7ec6, 0xeaa127fa, 0xd4ef3085, 0x04881d05, 0xd9d4d039, 0xe6db99e5, 0x1fa27cf8, 0xc4ac5665,
    0xf4292244, 0x432aff97, 0xab9423a7, 0xfc93a039, 0x655b59c3, 0x8f0ccc92, 0xffeff47d, 0x85845dd1,
    0x6fa87e4f, 0xfe2ce6e0, 0xa3014314, 0x4e0811a1, 0xf7537e82, 0xbd3af235, 0x2ad7d2bb, 0xeb86d391,
};

/* Process one 64-byte block. */
static void md5_block(cw_md5_t *s, const uint8_t *p)
{
    uint32_t x[16];
    for (int i = 0; i < 16; i++)
        x[i] = (uint32_t)p[4 * i] | (uint32_t)p[4 * i + 1] << 8 | (uint32_t)p[4 * i + 2] << 16 |
               (uint32_t)p[4 * i + 3] << 24;
    uint32_t a = s->h[0], b = s->h[1], c = s->h[2], d = s->h[3];
    for (int i = 0; i < 64; i++) {
        uint32_t f;
        int k;
        switch (i / 16) {
        case 0:
            f = (b & c) | (~b & d);
            k = i;
            break;
        case 1:
            f = (d & b) | (~d & c);
            k = (5 * i + 1) % 16;
            break;
        case 2:
            f = b ^ c ^ d;
            k = (3 * i + 5) % 16;
            break;
        default:
            f = c ^ (b | ~d);
            k = (7 * i) % 16;
            break;
        }
        uint32_t t = d;
        d = c;
        c = b;
        b = b + rol(a + f + T[i] + x[k], shifts[i / 16][i % 4]);
        a = t;
    }
    s->h[0] += a;
    s->h[1] += b;
    s->h[2] += c;
    s->h[3] += d;
}

void cw_md5_init(cw_md5_t *s)
{
    static const uint32_t iv[4] = {0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476};
    memcpy(s->h, iv, sizeof iv);
    s->len = 0;
    s->used = 0;
}

void cw_md5_update(cw_md5_t *s, const void *data, size_t len)
{
    const uint8_t *p = data;
    s->len += len;
    while (len > 0) {
        size_t take = 64 - s->used;
        if (take > len)
            take = len;
        memcpy(s->block + s->used, p, take);
        s->used += take;
        p += take;
        len -= take;
        if (s->used == 64) {
            md5_block(s, s->block);
            s->used = 0;
        }
    }
}

void cw_md5_final(cw_md5_t *s, uint8_t out[CW_MD5_DIGEST_LEN])
{
    uint64_t bits = s->len * 8;
    uint8_t pad = 0x80;
    cw_md5_update(s, &pad, 1);
    pad = 0;
    while (s->used != 56)
        cw_md5_update(s, &pad, 1);
    /* the length is little-endian in MD5, unlike SHA-1 */
    uint8_t lenbuf[8];
    for (int i = 0; i < 8; i++)
        lenbuf[i] = (uint8_t)(bits >> (8 * i));
    cw_md5_update(s, lenbuf, 8);
    for (int i = 0; i < 4; i++) {
        out[4 * i] = (uint8_t)s->h[i];
        out[4 * i + 1] = (uint8_t)(s->h[i] >> 8);
        out[4 * i + 2] = (uint8_t)(s->h[i] >> 16);
        out[4 * i + 3] = (uint8_t)(s->h[i] >> 24);
    }
}

void cw_md5(const void *data, size_t len, uint8_t out[CW_MD5_DIGEST_LEN])
{
    cw_md5_t s;
    cw_md5_init(&s);
    cw_md5_update(&s, data, len);
    cw_md5_final(&s, out);
}
