/* int64 -> uint64 hash map (see i64map.h). */
#include "i64map.h"

#include <errno.h>
#include <stdlib.h>

/* splitmix64 finaliser: spreads sequential and adversarial keys alike. */
static size_t hash(int64_t key, size_t cap)
{
    uint64_t x = (uint64_t)key + 0x9E3779B97F4A7C15u;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9u;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBu;
    x ^= x >> 31;
    return (size_t)x & (cap - 1);
}

/* Slot index holding key, or of the free slot where it would go. */
static size_t find(const cw_i64map_t *m, int64_t key)
{
    size_t i = hash(key, m->cap);
    while (m->slots[i].used && m->slots[i].key != key)
        i = (i + 1) & (m->cap - 1);
    return i;
}

/* Double the table (or create it). */
static int grow(cw_i64map_t *m)
{
    size_t cap = m->cap ? m->cap * 2 : 16;
    if (cap > SIZE_MAX / sizeof(cw_i64map_slot_t))
        return -ENOMEM;
    cw_i64map_t bigger = {calloc(cap, sizeof(cw_i64map_slot_t)), cap, 0};
    if (bigger.slots == NULL)
        return -ENOMEM;
    for (size_t i = 0; i < m->cap; i++) {
        if (!m->slots[i].used)
            continue;
        bigger.slots[find(&bigger, m->slots[i].key)] = m->slots[i];
        bigger.n++;
    }
    free(m->slots);
    *m = bigger;
    return 0;
}

int cw_i64map_put(cw_i64map_t *m, int64_t key, uint64_t val)
{
    if (m->cap) {
        size_t i = find(m, key);
        if (m->slots[i].used) {
            m->slots[i].val = val;
            return 0;
        }
    }
    /* keep the load at most 1/2 so probe runs stay short */
    if ((m->n + 1) * 2 > m->cap) {
        int rc = grow(m);
        if (rc < 0)
            return rc;
    }
    size_t i = find(m, key);
    m->slots[i] = (cw_i64map_slot_t){key, val, true};
    m->n++;
    return 0;
}

uint64_t *cw_i64map_get(const cw_i64map_t *m, int64_t key)
{
    if (m->cap == 0)
        return NULL;
    size_t i = find(m, key);
    return m->slots[i].used ? &m->slots[i].val : NULL;
}

bool cw_i64map_del(cw_i64map_t *m, int64_t key)
{
    if (m->cap == 0)
        return false;
    size_t mask = m->cap - 1;
    size_t i = find(m, key);
    if (!m->slots[i].used)
        return false;
    /* Backward shift: move later entries of the run into the hole when their home slot allows,
     * so lookups never need tombstones. */
    size_t j = i;
    for (;;) {
        j = (j + 1) & mask;
        if (!m->slots[j].used)
            break;
        size_t home = hash(m->slots[j].key, m->cap);
        /* j's entry may move to i if its home is not cyclically in (i, j] */
        bool stays = i <= j ? (home > i && home <= j) : (home > i || home <= j);
        if (!stays) {
            m->slots[i] = m->slots[j];
            i = j;
        }
    }
    m->slots[i].used = false;
    m->n--;
    return true;
}

void cw_i64map_free(cw_i64map_t *m)
{
    if (m == NULL)
        return;
    free(m->slots);
    *m = (cw_i64map_t)CW_I64MAP_INIT;
}
