/* The environment of a shell command, built like RunProcess.__init__ of the
 * stock worker (runprocess.py), sans-I/O: the worker's own environment comes
 * in as `base`, nothing reads getenv().
 *
 * Every name is decided once: candidates from PWD, from the `env` argument and
 * from `base` are sorted by (name, priority) and the first of each name wins,
 * which gives the stock precedence (PWD > env > base; within base the first
 * occurrence, as CPython's os.environ keeps) in O(n log n).
 */
#include "cworker/env.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cworker/buf.h"
#include "cworker/cw.h"

/* One candidate NAME=value.  Override values live in a scratch buffer that may
 * move while it grows, hence an offset until the pointers are fixed up. */
typedef struct item {
    const char *name;
    size_t nlen;
    int prio;     /* 0 PWD, 1 env argument, 2 base */
    size_t order; /* position within its source */
    bool remove;  /* a nil value: hides the name, produces nothing */
    const char *val;
    size_t voff; /* offset in the scratch buffer while val is NULL */
    size_t vlen;
} item_t;

/* Order names bytewise (Python sorts str by code point, which UTF-8 keeps),
 * a name before its extensions. */
static int name_cmp(const char *a, size_t alen, const char *b, size_t blen)
{
    size_t n = alen < blen ? alen : blen;
    int c = n ? memcmp(a, b, n) : 0;
    if (c != 0)
        return c;
    return (alen > blen) - (alen < blen);
}

/* qsort order: name, then priority, then source position. */
static int item_cmp(const void *pa, const void *pb)
{
    const item_t *a = pa, *b = pb;
    int c = name_cmp(a->name, a->nlen, b->name, b->nlen);
    if (c != 0)
        return c;
    if (a->prio != b->prio)
        return a->prio < b->prio ? -1 : 1;
    return (a->order > b->order) - (a->order < b->order);
}

/* The stock complaint about a value (or key) of the wrong type. */
static int bad_value(char *err, size_t errlen, const cw_env_entry_t *e)
{
    if (e->key_is_str)
        cw_err_fmt(0, err, errlen, "'env' values must be strings or lists; key '%.*s' is incorrect",
                   (int)e->key.len, e->key.ptr);
    else
        cw_err_fmt(0, err, errlen,
                   "'env' values must be strings or lists; key '<non-string key>' is incorrect");
    return CW_EBADARG;
}

/* Value of name[0..nlen) among the sorted, deduplicated base items, or NULL. */
static const item_t *base_lookup(const item_t *base, size_t nbase, const char *name, size_t nlen)
{
    size_t lo = 0, hi = nbase;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = name_cmp(base[mid].name, base[mid].nlen, name, nlen);
        if (c == 0)
            return &base[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

/* True for the chars of a ${NAME} reference ([0-9A-Za-z_]). */
static bool is_name_char(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_';
}

/* Append v with every ${NAME} replaced by the worker's own value ("" if
 * unset), like re.sub(r'\$\{([0-9a-zA-Z_]*)\}', ...); an unclosed or
 * malformed reference stays as it is. */
static int substitute(cw_buf_t *out, const char *v, size_t n, const item_t *base, size_t nbase)
{
    if (n == 0)
        return 0; /* an empty value may carry a NULL pointer */
    size_t i = 0, run = 0;
    while (i + 1 < n) {
        if (v[i] != '$' || v[i + 1] != '{') {
            i++;
            continue;
        }
        size_t j = i + 2;
        while (j < n && is_name_char(v[j]))
            j++;
        if (j >= n || v[j] != '}') {
            i++;
            continue;
        }
        if (cw_buf_append(out, v + run, i - run) < 0)
            return -ENOMEM;
        const item_t *b = base_lookup(base, nbase, v + i + 2, j - i - 2);
        if (b != NULL && cw_buf_append(out, b->val, b->vlen) < 0)
            return -ENOMEM;
        i = run = j + 1;
    }
    return cw_buf_append(out, v + run, n - run);
}

/* Check one env entry's key: a str usable as a variable name. */
static int check_key(const cw_env_entry_t *e, char *err, size_t errlen)
{
    if (!e->key_is_str)
        return bad_value(err, errlen, e);
    const char *s = e->key.ptr;
    size_t n = e->key.len;
    /* execve cannot carry these; the stock worker fails at spawn instead. */
    if (n == 0 || memchr(s, '=', n) != NULL || memchr(s, '\0', n) != NULL) {
        cw_err_fmt(0, err, errlen, "'env' key '%.*s' is not a valid variable name", (int)n, s);
        return CW_EBADARG;
    }
    return 0;
}

/* The value of one env entry before substitution: str, or list joined with
 * ':', plus ":${PYTHONPATH}" for PYTHONPATH. */
static int raw_value(cw_buf_t *out, const cw_env_entry_t *e, char *err, size_t errlen)
{
    if (e->kind != CW_ENV_STR && e->kind != CW_ENV_LIST)
        return bad_value(err, errlen, e);
    for (size_t j = 0; j < e->nvalues; j++)
        if ((j > 0 && cw_buf_append(out, ":", 1) < 0) ||
            cw_buf_append(out, e->values[j].ptr, e->values[j].len) < 0)
            return -ENOMEM;
    if (cw_str_eq(e->key, "PYTHONPATH") && cw_buf_append_str(out, ":${PYTHONPATH}") < 0)
        return -ENOMEM;
    return 0;
}

void cw_env_arg_free(cw_env_arg_t *e)
{
    if (e == NULL)
        return;
    for (size_t i = 0; i < e->n; i++) {
        free((char *)e->v[i].key.ptr);
        for (size_t j = 0; j < e->v[i].nvalues; j++)
            free((char *)e->v[i].values[j].ptr);
        free(e->v[i].values);
    }
    free(e->v);
    memset(e, 0, sizeof *e);
}

/* See env.h: the child environment as the stock worker builds it. */
int cw_env_build(char *const *base, const cw_env_arg_t *env, const char *pwd, cw_envp_t *out,
                 char *err, size_t errlen)
{
    item_t *items = NULL, *bitems = NULL;
    cw_buf_t scratch = CW_BUF_INIT, vals = CW_BUF_INIT;
    size_t nbase = 0, nenv = 0, nitems = 0, nb = 0;
    int rc = -ENOMEM;

    *out = NULL;
    if (err != NULL && errlen > 0)
        err[0] = '\0';
    if (env != NULL && env->given && env->not_a_map) {
        cw_err_fmt(0, err, errlen, "'env' must be a map");
        return CW_EBADARG;
    }
    if (env != NULL && env->given)
        nenv = env->n;
    for (size_t k = 0; base != NULL && base[k] != NULL; k++)
        nbase++;

    /* The worker's own environment, sorted and deduplicated, for ${NAME}. */
    bitems = malloc((nbase ? nbase : 1) * sizeof *bitems);
    if (bitems == NULL)
        goto out;
    for (size_t k = 0; k < nbase; k++) {
        const char *eq = strchr(base[k], '=');
        if (eq == NULL || eq == base[k])
            continue; /* not NAME=value: nothing a child could get */
        bitems[nb++] = (item_t){.name = base[k],
                                .nlen = (size_t)(eq - base[k]),
                                .prio = 2,
                                .order = k,
                                .val = eq + 1,
                                .vlen = strlen(eq + 1)};
    }
    qsort(bitems, nb, sizeof *bitems, item_cmp);
    size_t w = 0;
    for (size_t k = 0; k < nb; k++)
        if (w == 0 ||
            name_cmp(bitems[w - 1].name, bitems[w - 1].nlen, bitems[k].name, bitems[k].nlen) != 0)
            bitems[w++] = bitems[k];
    nb = w;

    items = malloc((nb + nenv + 1) * sizeof *items);
    if (items == NULL)
        goto out;
    memcpy(items, bitems, nb * sizeof *items);
    nitems = nb;

    /* The env argument.  A duplicated key keeps its last value, like a dict;
     * order = nenv - index puts the last occurrence first after sorting. */
    for (size_t k = 0; k < nenv; k++) {
        const cw_env_entry_t *e = &env->v[k];
        rc = check_key(e, err, errlen);
        if (rc < 0)
            goto out;
        item_t *it = &items[nitems++];
        *it = (item_t){.name = e->key.ptr, .nlen = e->key.len, .prio = 1, .order = nenv - k};
        /* nil removes the variable; also for PYTHONPATH, where the stock
         * worker would crash on None + str. */
        if (e->kind == CW_ENV_UNSET) {
            it->remove = true;
            continue;
        }
        scratch.len = 0;
        rc = raw_value(&scratch, e, err, errlen);
        if (rc < 0)
            goto out;
        rc = -ENOMEM;
        it->voff = vals.len;
        if (substitute(&vals, (const char *)scratch.data, scratch.len, bitems, nb) < 0)
            goto out;
        it->vlen = vals.len - it->voff;
        if (memchr(vals.data ? (const char *)vals.data + it->voff : "", '\0', it->vlen) != NULL) {
            cw_err_fmt(0, err, errlen, "'env' value of key '%.*s' contains a NUL character",
                       (int)it->nlen, it->name);
            rc = CW_EBADARG;
            goto out;
        }
    }
    for (size_t k = nb; k < nitems; k++)
        if (!items[k].remove)
            items[k].val = vals.data ? (const char *)vals.data + items[k].voff : "";
    if (pwd != NULL)
        items[nitems++] =
            (item_t){.name = "PWD", .nlen = 3, .prio = 0, .val = pwd, .vlen = strlen(pwd)};

    qsort(items, nitems, sizeof *items, item_cmp);

    /* The first of each name wins; a winning nil leaves the name out. */
    size_t nout = 0, bytes = 0;
    for (size_t k = 0; k < nitems;) {
        size_t g = k + 1;
        while (g < nitems &&
               name_cmp(items[k].name, items[k].nlen, items[g].name, items[g].nlen) == 0)
            g++;
        if (!items[k].remove) {
            items[nout++] = items[k];
            bytes += items[k].nlen + 1 + items[k].vlen + 1;
        }
        k = g;
    }

    /* One allocation: the pointer array, then the strings. */
    rc = -ENOMEM;
    char **envp = malloc((nout + 1) * sizeof(char *) + bytes);
    if (envp == NULL)
        goto out;
    char *p = (char *)(envp + nout + 1);
    for (size_t k = 0; k < nout; k++) {
        envp[k] = p;
        memcpy(p, items[k].name, items[k].nlen);
        p += items[k].nlen;
        *p++ = '=';
        if (items[k].vlen)
            memcpy(p, items[k].val, items[k].vlen);
        p += items[k].vlen;
        *p++ = '\0';
    }
    envp[nout] = NULL;
    *out = envp;
    rc = 0;
out:
    free(bitems);
    free(items);
    cw_buf_free(&scratch);
    cw_buf_free(&vals);
    return rc;
}
