/* Growable byte buffer used across the library. */
#ifndef CWORKER_BUF_H
#define CWORKER_BUF_H

#include <stddef.h>
#include <stdint.h>

/* A heap byte buffer.  Zero-initialised (CW_BUF_INIT) is a valid empty
 * buffer.  The owner frees it with cw_buf_free(). `data` may move on any
 * call that grows the buffer. */
typedef struct cw_buf {
    uint8_t *data;
    size_t len;
    size_t cap;
} cw_buf_t;

#define CW_BUF_INIT                                                                                \
    {                                                                                              \
        NULL, 0, 0                                                                                 \
    }

/* The array growth every list in the project uses: v (cap elements of
 * size bytes, may be NULL) grown to hold at least need elements, doubling
 * from 16.  Returns the (maybe moved) array with *cap updated, or NULL on
 * overflow or out of memory (then v and *cap are unchanged). */
void *cw_grow(void *v, size_t *cap, size_t need, size_t size);

/* Make room for `extra` more bytes; 0 or -ENOMEM. */
int cw_buf_reserve(cw_buf_t *b, size_t extra);
/* Room for extra more bytes, exactly (no doubling): for a size known in
 * advance that would otherwise be reached by several copies. */
int cw_buf_reserve_exact(cw_buf_t *b, size_t extra);
/* Append bytes; 0 or -ENOMEM. */
int cw_buf_append(cw_buf_t *b, const void *data, size_t len);
/* Append a NUL-terminated string (without the NUL). */
int cw_buf_append_str(cw_buf_t *b, const char *s);
/* Append s, or when it is longer than max bytes (max >= 64) its head and
 * tail with "...[N bytes]..." in between, so messages and log lines stay
 * bounded whatever a path or pattern holds.  0 or -ENOMEM. */
int cw_buf_append_elided(cw_buf_t *b, const char *s, size_t max);
/* printf-style append; 0 or -ENOMEM. */
int cw_buf_printf(cw_buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Drop the first n bytes (n <= len). */
void cw_buf_consume(cw_buf_t *b, size_t n);
/* Forget the content, keep the allocation. */
void cw_buf_reset(cw_buf_t *b);
/* Free the allocation; the buffer is empty and reusable afterwards. NULL-safe. */
void cw_buf_free(cw_buf_t *b);
/* Hand the allocation to the caller (who frees it); the buffer becomes empty. */
uint8_t *cw_buf_steal(cw_buf_t *b, size_t *len);

#endif
