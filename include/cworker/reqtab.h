/* Requests waiting for their response, keyed by seq_number: one table per
 * connection, on either side of the protocol.  Sans-I/O and unit-tested; the
 * connection layer owns the table and calls the callbacks.
 *
 * A response is routed by its seq_number exactly once: an answer to a seq we
 * never sent, or a second answer to one already answered, finds nothing
 * (cw_reqtab_take returns false) and the caller logs and drops it. */
#ifndef CWORKER_REQTAB_H
#define CWORKER_REQTAB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The owner's callback, stored type-erased; the owner casts it back to its
 * own function type before calling it (well defined in C). */
typedef void (*cw_reqtab_fn)(void);

typedef struct cw_reqtab_entry {
    int64_t seq;
    cw_reqtab_fn fn; /* NULL: forgotten (the answer is still consumed) */
    void *ctx;
} cw_reqtab_entry_t;

typedef struct cw_reqtab {
    cw_reqtab_entry_t *v;
    size_t n, cap;
} cw_reqtab_t;

#define CW_REQTAB_INIT                                                                             \
    {                                                                                              \
        NULL, 0, 0                                                                                 \
    }

/* Make room for one more entry (so that a request can be sent only when it
 * can also be remembered): 0 or -ENOMEM. */
int cw_reqtab_reserve(cw_reqtab_t *t);
/* Remember a request: 0, -ENOMEM, or CW_EPROTO if seq is already waiting
 * (a numbering bug of ours: two answers could not be told apart). */
int cw_reqtab_add(cw_reqtab_t *t, int64_t seq, cw_reqtab_fn fn, void *ctx);
/* The entry for seq, removed from the table; false if none waits. */
bool cw_reqtab_take(cw_reqtab_t *t, int64_t seq, cw_reqtab_entry_t *out);
/* Any one entry, removed (to fail every waiting request when a link closes). */
bool cw_reqtab_pop(cw_reqtab_t *t, cw_reqtab_entry_t *out);
/* Detach the callbacks of an object that goes away while its requests wait. */
void cw_reqtab_forget(cw_reqtab_t *t, const void *ctx);
void cw_reqtab_free(cw_reqtab_t *t);

static inline size_t cw_reqtab_count(const cw_reqtab_t *t)
{
    return t->n;
}

#endif
