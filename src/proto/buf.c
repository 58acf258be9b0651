/* Growable byte buffer. */
#include "cworker/buf.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void *cw_grow(void *v, size_t *cap, size_t need, size_t size)
{
    if (need <= *cap)
        return v;
    size_t ncap = *cap ? *cap : 16;
    while (ncap < need) {
        if (ncap > SIZE_MAX / 2)
            return NULL;
        ncap *= 2;
    }
    if (size == 0 || ncap > SIZE_MAX / size)
        return NULL;
    void *nv = realloc(v, ncap * size);
    if (nv == NULL)
        return NULL;
    *cap = ncap;
    return nv;
}

/* Room for extra more bytes: a capacity of exactly len + extra, or (doubling)
 * the first power-of-two multiple of 256 above it. */
static int buf_reserve(cw_buf_t *b, size_t extra, bool exact)
{
    if (extra <= b->cap - b->len)
        return 0;
    if (extra > SIZE_MAX / 2 - b->len)
        return -ENOMEM;
    size_t need = b->len + extra;
    size_t cap = exact ? need : b->cap ? b->cap : 256;
    while (cap < need)
        cap *= 2;
    uint8_t *p = realloc(b->data, cap);
    if (p == NULL)
        return -ENOMEM;
    b->data = p;
    b->cap = cap;
    return 0;
}

int cw_buf_reserve(cw_buf_t *b, size_t extra)
{
    return buf_reserve(b, extra, false);
}

int cw_buf_reserve_exact(cw_buf_t *b, size_t extra)
{
    return buf_reserve(b, extra, true);
}

int cw_buf_append(cw_buf_t *b, const void *data, size_t len)
{
    if (len == 0)
        return 0;
    int rc = cw_buf_reserve(b, len);
    if (rc < 0)
        return rc;
    memcpy(b->data + b->len, data, len);
    b->len += len;
    return 0;
}

int cw_buf_append_str(cw_buf_t *b, const char *s)
{
    return cw_buf_append(b, s, strlen(s));
}

/* s whole, or its ends around a note of what was left out (see buf.h). */
int cw_buf_append_elided(cw_buf_t *b, const char *s, size_t max)
{
    size_t n = strlen(s);
    if (max < 64)
        max = 64;
    if (n <= max)
        return cw_buf_append(b, s, n);
    /* keep about 40 % at each end; the note takes the rest */
    size_t keep = max * 2 / 5;
    size_t head = keep, tail = keep;
    /* do not cut a UTF-8 sequence in two */
    while (head > 0 && ((unsigned char)s[head] & 0xC0) == 0x80)
        head--;
    while (tail > 0 && ((unsigned char)s[n - tail] & 0xC0) == 0x80)
        tail--;
    int rc = cw_buf_append(b, s, head);
    if (rc == 0)
        rc = cw_buf_printf(b, "...[%zu bytes]...", n - head - tail);
    if (rc == 0)
        rc = cw_buf_append(b, s + n - tail, tail);
    return rc;
}

int cw_buf_printf(cw_buf_t *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return -EINVAL;
    /* +1 for the terminator vsnprintf writes; it is not counted in len. */
    int rc = cw_buf_reserve(b, (size_t)n + 1);
    if (rc < 0)
        return rc;
    va_start(ap, fmt);
    vsnprintf((char *)b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
}

void cw_buf_consume(cw_buf_t *b, size_t n)
{
    if (n >= b->len) {
        b->len = 0;
        return;
    }
    memmove(b->data, b->data + n, b->len - n);
    b->len -= n;
}

void cw_buf_reset(cw_buf_t *b)
{
    b->len = 0;
}

void cw_buf_free(cw_buf_t *b)
{
    if (b == NULL)
        return;
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

uint8_t *cw_buf_steal(cw_buf_t *b, size_t *len)
{
    uint8_t *p = b->data;
    if (len)
        *len = b->len;
    b->data = NULL;
    b->len = b->cap = 0;
    return p;
}
