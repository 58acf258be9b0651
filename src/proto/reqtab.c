/* Requests waiting for their response (see cworker/reqtab.h).  A connection
 * rarely has more than a few dozen requests in flight, so a small unordered
 * array with linear search is the whole data structure. */
#include "cworker/reqtab.h"

#include <errno.h>
#include <stdlib.h>

#include "cworker/buf.h"
#include "cworker/cw.h"

int cw_reqtab_reserve(cw_reqtab_t *t)
{
    cw_reqtab_entry_t *v = cw_grow(t->v, &t->cap, t->n + 1, sizeof *v);
    if (v == NULL)
        return -ENOMEM;
    t->v = v;
    return 0;
}

int cw_reqtab_add(cw_reqtab_t *t, int64_t seq, cw_reqtab_fn fn, void *ctx)
{
    for (size_t i = 0; i < t->n; i++)
        if (t->v[i].seq == seq)
            return CW_EPROTO;
    int rc = cw_reqtab_reserve(t);
    if (rc < 0)
        return rc;
    t->v[t->n++] = (cw_reqtab_entry_t){seq, fn, ctx};
    return 0;
}

bool cw_reqtab_take(cw_reqtab_t *t, int64_t seq, cw_reqtab_entry_t *out)
{
    for (size_t i = 0; i < t->n; i++) {
        if (t->v[i].seq != seq)
            continue;
        *out = t->v[i];
        t->v[i] = t->v[--t->n];
        return true;
    }
    return false;
}

bool cw_reqtab_pop(cw_reqtab_t *t, cw_reqtab_entry_t *out)
{
    if (t->n == 0)
        return false;
    *out = t->v[--t->n];
    return true;
}

void cw_reqtab_forget(cw_reqtab_t *t, const void *ctx)
{
    for (size_t i = 0; i < t->n; i++)
        if (t->v[i].ctx == ctx)
            t->v[i].fn = NULL;
}

void cw_reqtab_free(cw_reqtab_t *t)
{
    free(t->v);
    *t = (cw_reqtab_t)CW_REQTAB_INIT;
}
