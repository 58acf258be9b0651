/* A hash map from int64_t keys to uint64_t values, for the broker's tables
 * (luids, request ids, jelly reference numbers) whose keys the peer chooses:
 * lookups stay O(1) whatever the keys are.  Open addressing with linear
 * probing and backward-shift deletion; internal to the protocol library. */
#ifndef CWORKER_I64MAP_H
#define CWORKER_I64MAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct cw_i64map_slot {
    int64_t key;
    uint64_t val;
    bool used;
} cw_i64map_slot_t;

/* Zero-initialised (CW_I64MAP_INIT) is an empty map; free with cw_i64map_free(). */
typedef struct cw_i64map {
    cw_i64map_slot_t *slots;
    size_t cap; /* 0 or a power of two */
    size_t n;
} cw_i64map_t;

#define CW_I64MAP_INIT                                                                             \
    {                                                                                              \
        NULL, 0, 0                                                                                 \
    }

/* Insert or replace; 0 or -ENOMEM (the map is unchanged then). */
int cw_i64map_put(cw_i64map_t *m, int64_t key, uint64_t val);
/* Pointer to the value of key (valid until the next put/del), or NULL. */
uint64_t *cw_i64map_get(const cw_i64map_t *m, int64_t key);
/* Remove key; false if it was absent. */
bool cw_i64map_del(cw_i64map_t *m, int64_t key);
void cw_i64map_free(cw_i64map_t *m);

static inline size_t cw_i64map_count(const cw_i64map_t *m)
{
    return m->n;
}

#endif
