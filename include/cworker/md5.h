/* MD5 (RFC 1321), only for Perspective Broker's login, where Twisted's
 * challenge/response mandates it: response = MD5(MD5(password) || challenge).
 * Our own ~100 lines instead of libcrypto, for the same reason as sha1.h (the
 * protocol library does not link OpenSSL).  Not for anything else: MD5 is
 * broken as a collision-resistant hash. */
#ifndef CWORKER_MD5_H
#define CWORKER_MD5_H

#include <stddef.h>
#include <stdint.h>

#define CW_MD5_DIGEST_LEN 16

typedef struct cw_md5 {
    uint32_t h[4];
    uint64_t len; /* bytes hashed so far */
    uint8_t block[64];
    size_t used;
} cw_md5_t;

void cw_md5_init(cw_md5_t *s);
void cw_md5_update(cw_md5_t *s, const void *data, size_t len);
void cw_md5_final(cw_md5_t *s, uint8_t out[CW_MD5_DIGEST_LEN]);

/* One-shot digest of [data, data+len). */
void cw_md5(const void *data, size_t len, uint8_t out[CW_MD5_DIGEST_LEN]);

#endif
