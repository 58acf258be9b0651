/* SHA-1, only for the WebSocket handshake (Sec-WebSocket-Accept), where the
 * RFC mandates it.  Our own ~80 lines instead of libcrypto: initialising
 * OpenSSL 3 for one digest per connection costs the worker ~1.8 MiB of RSS
 * (measured; see docs/design.md). Not for anything security-relevant. */
#ifndef CWORKER_SHA1_H
#define CWORKER_SHA1_H

#include <stddef.h>
#include <stdint.h>

typedef struct cw_sha1 {
    uint32_t h[5];
    uint64_t len; /* bytes hashed so far */
    uint8_t block[64];
    size_t used;
} cw_sha1_t;

void cw_sha1_init(cw_sha1_t *s);
void cw_sha1_update(cw_sha1_t *s, const void *data, size_t len);
void cw_sha1_final(cw_sha1_t *s, uint8_t out[20]);

#endif
