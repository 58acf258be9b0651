/* Jelly decoding into typed values and encoding straight into a buffer (see cworker/jelly.h).
 *
 * Choices the header leaves open:
 * - Forms are checked for their exact length where Twisted would silently ignore extra elements
 *   (("None" x), ("boolean" "true" x), ("remote" 1 x)); nothing Buildbot sends has any.
 * - Dictionary keys may be any value; lookups (cw_jelly_dict_get) only match text keys.
 * - Reference numbers must be integers; Twisted takes any hashable, its jellier only writes ints.
 * - The decoder recurses once per banana list level, so its depth is bounded by the banana
 *   decoder's max_depth (<= CW_BANANA_MAX_DEPTH); a hand-made deeper tree is refused.
 */
#include "cworker/jelly.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "i64map.h"
#include "cworker/utf8.h"

/* ---- arena ---- */

typedef struct block {
    struct block *next;
    size_t cap, used;
    max_align_t data[]; /* cap bytes */
} block_t;

struct cw_jelly_doc {
    cw_banana_msg_t *msg;
    block_t *blocks;
};

#define MIN_BLOCK 4096

cw_jelly_doc_t *cw_jelly_doc_new(cw_banana_msg_t *msg)
{
    cw_jelly_doc_t *doc = calloc(1, sizeof(*doc));
    if (doc == NULL) {
        cw_banana_msg_free(msg);
        return NULL;
    }
    doc->msg = msg;
    return doc;
}

cw_banana_msg_t *cw_jelly_doc_msg(const cw_jelly_doc_t *doc)
{
    return doc->msg;
}

void cw_jelly_doc_free(cw_jelly_doc_t *doc)
{
    if (doc == NULL)
        return;
    block_t *b = doc->blocks;
    while (b) {
        block_t *next = b->next;
        free(b);
        b = next;
    }
    cw_banana_msg_free(doc->msg);
    free(doc);
}

/* Room for n values in the doc's arena, or NULL. */
static cw_jelly_t *doc_alloc(cw_jelly_doc_t *doc, size_t n, size_t size)
{
    if (n == 0)
        return NULL;
    if (n > SIZE_MAX / 2 / size)
        return NULL;
    size_t need = n * size;
    need = (need + sizeof(max_align_t) - 1) / sizeof(max_align_t) * sizeof(max_align_t);
    block_t *b = doc->blocks;
    if (b == NULL || b->cap - b->used < need) {
        /* Size the first block for the whole message: a message never holds more values than
         * banana elements, so one block is the usual case. */
        size_t cap = MIN_BLOCK;
        if (b == NULL && doc->msg)
            cap = doc->msg->nodes * sizeof(cw_jelly_t);
        else if (b != NULL)
            cap = b->cap * 2;
        if (cap < need)
            cap = need;
        if (cap > SIZE_MAX - sizeof(block_t))
            return NULL;
        block_t *nb = malloc(sizeof(block_t) + cap);
        if (nb == NULL)
            return NULL;
        nb->cap = cap;
        nb->used = 0;
        nb->next = doc->blocks;
        doc->blocks = nb;
        b = nb;
    }
    void *p = (char *)b->data + b->used;
    b->used += need;
    return p;
}

/* ---- decoding ---- */

typedef struct ref {
    cw_jelly_t value;
    size_t weight;
    bool done; /* false while the reference's own form is being decoded */
} ref_t;

typedef struct dec {
    cw_jelly_doc_t *doc;
    cw_jelly_err_t *err;
    size_t max_nodes;
    int (*on_remote)(void *ud, int64_t luid);
    void *ud;
    cw_i64map_t refs; /* reference number -> index into reftab */
    ref_t *reftab;
    size_t nrefs, refcap;
} dec_t;

/* Copy up to 40 bytes of s into buf as printable ASCII (others as \xNN). */
static void printable(char *buf, size_t cap, cw_str_t s)
{
    size_t o = 0;
    for (size_t i = 0; i < s.len && i < 40 && o + 5 < cap; i++) {
        unsigned char c = (unsigned char)s.ptr[i];
        if (c >= 0x20 && c < 0x7f && c != '\\')
            buf[o++] = (char)c;
        else
            o += (size_t)snprintf(buf + o, cap - o, "\\x%02x", c);
    }
    if (s.len > 40 && o + 4 < cap) {
        memcpy(buf + o, "...", 3);
        o += 3;
    }
    buf[o] = '\0';
}

/* Refuse the input: fill the error, return CW_EBADMSG. */
__attribute__((format(printf, 3, 4))) static int refuse(dec_t *d, const char *type, const char *fmt,
                                                        ...)
{
    d->err->type = type;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(d->err->text, sizeof(d->err->text), fmt, ap);
    va_end(ap);
    return CW_EBADMSG;
}

static int oom(dec_t *d)
{
    d->err->type = "builtins.MemoryError";
    snprintf(d->err->text, sizeof(d->err->text), "out of memory");
    return -ENOMEM;
}

#define E_INSECURE "twisted.spread.jelly.InsecureJelly"
#define E_VALUE    "builtins.ValueError"
#define E_TYPE     "builtins.TypeError"
#define E_UNICODE  "builtins.UnicodeDecodeError"
#define E_ASSERT   "builtins.AssertionError"

static bool is_str(const cw_banana_node_t *n, const char *lit)
{
    return n->type == CW_BANANA_STRING && cw_str_eq(n->u.s, lit);
}

/* A non-big integer element. */
static bool small_int(const cw_banana_node_t *n, int64_t *out)
{
    if (n->type != CW_BANANA_INT || (n->flags & CW_BANANA_F_BIG))
        return false;
    *out = n->u.i;
    return true;
}

static int dec_value(dec_t *d, const cw_banana_node_t *n, cw_jelly_t *out, size_t *weight,
                     unsigned depth);

/* Add w to *total, refusing totals above max_nodes (shared values expanded). */
static int add_weight(dec_t *d, size_t *total, size_t w)
{
    if (w > d->max_nodes - *total)
        return refuse(d, E_VALUE, "value has more than %zu elements with references expanded",
                      d->max_nodes);
    *total += w;
    return 0;
}

/* The elements items[1..n) of a list/tuple form. */
static int dec_seq(dec_t *d, const cw_banana_node_t *n, cw_jelly_t *out, size_t *weight,
                   unsigned depth)
{
    size_t cnt = n->u.list.n - 1;
    cw_jelly_t *items = NULL;
    if (cnt) {
        items = doc_alloc(d->doc, cnt, sizeof(cw_jelly_t));
        if (items == NULL)
            return oom(d);
    }
    for (size_t i = 0; i < cnt; i++) {
        size_t w = 0;
        int rc = dec_value(d, &n->u.list.items[i + 1], &items[i], &w, depth + 1);
        if (rc == 0)
            rc = add_weight(d, weight, w);
        if (rc < 0)
            return rc;
    }
    out->u.seq.items = items;
    out->u.seq.n = cnt;
    return 0;
}

/* ("dictionary" (k v) ...): every entry a plain banana list of exactly two. */
static int dec_dict(dec_t *d, const cw_banana_node_t *n, cw_jelly_t *out, size_t *weight,
                    unsigned depth)
{
    size_t cnt = n->u.list.n - 1;
    cw_jelly_pair_t *pairs = NULL;
    if (cnt) {
        pairs = (cw_jelly_pair_t *)doc_alloc(d->doc, cnt, sizeof(cw_jelly_pair_t));
        if (pairs == NULL)
            return oom(d);
    }
    for (size_t i = 0; i < cnt; i++) {
        const cw_banana_node_t *p = &n->u.list.items[i + 1];
        if (p->type != CW_BANANA_LIST || p->u.list.n != 2)
            return refuse(d, E_VALUE, "dictionary entry %zu is not a pair", i);
        size_t wk = 0, wv = 0;
        int rc = dec_value(d, &p->u.list.items[0], &pairs[i].key, &wk, depth + 2);
        if (rc == 0)
            rc = add_weight(d, weight, wk);
        if (rc == 0)
            rc = dec_value(d, &p->u.list.items[1], &pairs[i].value, &wv, depth + 2);
        if (rc == 0)
            rc = add_weight(d, weight, wv);
        if (rc < 0)
            return rc;
    }
    out->u.dict.pairs = pairs;
    out->u.dict.n = cnt;
    return 0;
}

/* Slot for a new reference number; refuses numbers already used. */
static int ref_new(dec_t *d, int64_t num, size_t *index)
{
    if (cw_i64map_get(&d->refs, num))
        return refuse(d, E_ASSERT, "Multiple references with same ID! (%lld)", (long long)num);
    if (d->nrefs == d->refcap) {
        size_t cap = d->refcap ? d->refcap * 2 : 8;
        ref_t *t = realloc(d->reftab, cap * sizeof(*t));
        if (t == NULL)
            return oom(d);
        d->reftab = t;
        d->refcap = cap;
    }
    if (cw_i64map_put(&d->refs, num, d->nrefs) < 0)
        return oom(d);
    *index = d->nrefs;
    d->reftab[d->nrefs++] = (ref_t){.done = false};
    return 0;
}

/* A typed form: a list whose first element names it. */
static int dec_form(dec_t *d, const cw_banana_node_t *n, cw_jelly_t *out, size_t *weight,
                    unsigned depth)
{
    size_t cnt = n->u.list.n;
    if (cnt == 0)
        return refuse(d, "builtins.IndexError", "empty list where a jelly form was expected");
    const cw_banana_node_t *head = &n->u.list.items[0];
    const cw_banana_node_t *a1 = cnt > 1 ? &n->u.list.items[1] : NULL;
    if (head->type != CW_BANANA_STRING)
        return refuse(d, E_INSECURE, "jelly form named by a %s",
                      head->type == CW_BANANA_LIST ? "list" : "number");
    cw_str_t tag = head->u.s;
    char name[200];

    if (cw_str_eq(tag, "None")) {
        if (cnt != 1)
            return refuse(d, E_VALUE, "None with arguments");
        out->type = CW_JELLY_NONE;
        return 0;
    }
    if (cw_str_eq(tag, "boolean")) {
        if (cnt != 2 || !(is_str(a1, "true") || is_str(a1, "false")))
            return refuse(d, E_ASSERT, "boolean is neither true nor false");
        out->type = CW_JELLY_BOOL;
        out->u.b = is_str(a1, "true");
        return 0;
    }
    if (cw_str_eq(tag, "unicode")) {
        if (cnt != 2 || a1->type != CW_BANANA_STRING)
            return refuse(d, E_TYPE, "unicode without a byte string");
        if (!cw_utf8_valid((const uint8_t *)a1->u.s.ptr, a1->u.s.len))
            return refuse(d, E_UNICODE, "'utf-8' codec can't decode the unicode value");
        out->type = CW_JELLY_UNICODE;
        out->u.s = a1->u.s;
        return 0;
    }
    if (cw_str_eq(tag, "list") || cw_str_eq(tag, "tuple")) {
        out->type = cw_str_eq(tag, "list") ? CW_JELLY_LIST : CW_JELLY_TUPLE;
        return dec_seq(d, n, out, weight, depth);
    }
    if (cw_str_eq(tag, "dictionary")) {
        out->type = CW_JELLY_DICT;
        return dec_dict(d, n, out, weight, depth);
    }
    if (cw_str_eq(tag, "remote")) {
        int64_t luid;
        if (cnt != 2 || !small_int(a1, &luid))
            return refuse(d, E_VALUE, "remote reference without an integer id");
        if (d->on_remote) {
            int rc = d->on_remote(d->ud, luid);
            if (rc < 0) {
                refuse(d, E_VALUE, "remote reference refused");
                return rc;
            }
        }
        out->type = CW_JELLY_REMOTE;
        out->u.luid = luid;
        return 0;
    }
    if (cw_str_eq(tag, "reference")) {
        int64_t num;
        size_t idx = 0, w = 0;
        if (cnt != 3 || !small_int(a1, &num))
            return refuse(d, E_VALUE, "reference without an integer number and a value");
        int rc = ref_new(d, num, &idx);
        if (rc == 0)
            rc = dec_value(d, &n->u.list.items[2], out, &w, depth + 1);
        if (rc < 0)
            return rc;
        d->reftab[idx].value = *out;
        d->reftab[idx].weight = w;
        d->reftab[idx].done = true;
        *weight = w; /* the reference form itself is not a value */
        return 0;
    }
    if (cw_str_eq(tag, "dereference")) {
        int64_t num;
        if (cnt != 2 || !small_int(a1, &num))
            return refuse(d, E_VALUE, "dereference without an integer number");
        uint64_t *idx = cw_i64map_get(&d->refs, num);
        if (idx == NULL)
            return refuse(d, E_VALUE, "dereference to unknown reference %lld", (long long)num);
        const ref_t *r = &d->reftab[*idx];
        if (!r->done)
            return refuse(d, E_VALUE, "circular reference %lld refused", (long long)num);
        *out = r->value;
        out->shared = true;
        *weight = r->weight;
        return 0;
    }
    if (cw_str_eq(tag, "twisted.spread.pb.CopyableFailure")) {
        if (cnt != 2)
            return refuse(d, E_VALUE, "CopyableFailure without exactly one state");
        cw_jelly_t *state = doc_alloc(d->doc, 1, sizeof(cw_jelly_t));
        if (state == NULL)
            return oom(d);
        size_t w = 0;
        int rc = dec_value(d, a1, state, &w, depth + 1);
        if (rc == 0)
            rc = add_weight(d, weight, w);
        if (rc < 0)
            return rc;
        if (state->type != CW_JELLY_DICT)
            return refuse(d, E_VALUE, "CopyableFailure state is not a dictionary");
        out->type = CW_JELLY_FAILURE;
        out->u.failure.state = state;
        out->u.failure.type = (cw_str_t){"", 0};
        out->u.failure.value = (cw_str_t){"", 0};
        const cw_jelly_t *t = cw_jelly_dict_get(state, "type");
        const cw_jelly_t *v = cw_jelly_dict_get(state, "value");
        if (t)
            cw_jelly_text(t, &out->u.failure.type);
        if (v)
            cw_jelly_text(v, &out->u.failure.value);
        return 0;
    }
    /* class, module, function, method, instance, persistent, unpersistable, set, frozenset,
     * datetime, date, time, timedelta, decimal, local, cached, lcache, copy, other classes */
    printable(name, sizeof(name), tag);
    return refuse(d, E_INSECURE, "jelly type %s not allowed", name);
}

/* Decode one value; *weight gets its size with shared values expanded (1 + its children). */
static int dec_value(dec_t *d, const cw_banana_node_t *n, cw_jelly_t *out, size_t *weight,
                     unsigned depth)
{
    if (depth > 2 * CW_BANANA_MAX_DEPTH)
        return refuse(d, E_VALUE, "value nested too deeply");
    memset(out, 0, sizeof(*out));
    *weight = 1;
    switch (n->type) {
    case CW_BANANA_INT:
        if (n->flags & CW_BANANA_F_BIG) {
            out->type = CW_JELLY_BIGINT;
            out->u.big.neg = (n->flags & CW_BANANA_F_NEG) != 0;
            out->u.big.digits = n->u.big.digits;
            out->u.big.ndigits = n->u.big.ndigits;
        } else {
            out->type = CW_JELLY_INT;
            out->u.i = n->u.i;
        }
        return 0;
    case CW_BANANA_FLOAT:
        out->type = CW_JELLY_FLOAT;
        out->u.f = n->u.f;
        return 0;
    case CW_BANANA_STRING:
        out->type = CW_JELLY_BYTES;
        out->u.s = n->u.s;
        return 0;
    case CW_BANANA_LIST:
        return dec_form(d, n, out, weight, depth);
    default:
        return refuse(d, E_VALUE, "unknown banana node");
    }
}

int cw_jelly_decode(cw_jelly_doc_t *doc, const cw_banana_node_t *node,
                    const cw_jelly_dec_opts_t *opts, cw_jelly_t *out, cw_jelly_err_t *err)
{
    cw_jelly_err_t scratch;
    dec_t d = {
        .doc = doc,
        .err = err ? err : &scratch,
        .max_nodes = opts && opts->max_nodes ? opts->max_nodes : CW_BANANA_DEFAULT_NODES,
        .on_remote = opts ? opts->on_remote : NULL,
        .ud = opts ? opts->ud : NULL,
        .refs = CW_I64MAP_INIT,
    };
    d.err->type = NULL;
    d.err->text[0] = '\0';
    size_t w = 0;
    int rc = dec_value(&d, node, out, &w, 0);
    if (rc == 0 && w > d.max_nodes)
        rc = refuse(&d, E_VALUE, "value has more than %zu elements with references expanded",
                    d.max_nodes);
    cw_i64map_free(&d.refs);
    free(d.reftab);
    return rc;
}

/* ---- looking at values ---- */

const char *cw_jelly_type_name(cw_jelly_type_t t)
{
    switch (t) {
    case CW_JELLY_NONE:
        return "None";
    case CW_JELLY_BOOL:
        return "boolean";
    case CW_JELLY_INT:
        return "int";
    case CW_JELLY_BIGINT:
        return "long int";
    case CW_JELLY_FLOAT:
        return "float";
    case CW_JELLY_BYTES:
        return "bytes";
    case CW_JELLY_UNICODE:
        return "unicode";
    case CW_JELLY_LIST:
        return "list";
    case CW_JELLY_TUPLE:
        return "tuple";
    case CW_JELLY_DICT:
        return "dictionary";
    case CW_JELLY_REMOTE:
        return "remote";
    case CW_JELLY_FAILURE:
        return "CopyableFailure";
    }
    return "unknown";
}

bool cw_jelly_text(const cw_jelly_t *v, cw_str_t *out)
{
    if (v == NULL || (v->type != CW_JELLY_UNICODE && v->type != CW_JELLY_BYTES))
        return false;
    *out = v->u.s;
    return true;
}

const cw_jelly_t *cw_jelly_dict_get(const cw_jelly_t *dict, const char *key)
{
    if (dict == NULL || dict->type != CW_JELLY_DICT)
        return NULL;
    const cw_jelly_t *found = NULL;
    for (size_t i = 0; i < dict->u.dict.n; i++) {
        cw_str_t k;
        if (cw_jelly_text(&dict->u.dict.pairs[i].key, &k) && cw_str_eq(k, key))
            found = &dict->u.dict.pairs[i].value;
    }
    return found;
}

bool cw_jelly_int(const cw_jelly_t *v, int64_t *out)
{
    if (v == NULL || v->type != CW_JELLY_INT)
        return false;
    *out = v->u.i;
    return true;
}

bool cw_jelly_number(const cw_jelly_t *v, double *out)
{
    if (v == NULL)
        return false;
    switch (v->type) {
    case CW_JELLY_INT:
        *out = (double)v->u.i;
        return true;
    case CW_JELLY_BOOL:
        *out = v->u.b ? 1.0 : 0.0;
        return true;
    case CW_JELLY_FLOAT:
        *out = v->u.f;
        return true;
    default:
        return false;
    }
}

bool cw_jelly_truth(const cw_jelly_t *v)
{
    if (v == NULL)
        return false;
    switch (v->type) {
    case CW_JELLY_BOOL:
        return v->u.b;
    case CW_JELLY_INT:
        return v->u.i != 0;
    case CW_JELLY_BIGINT:
        return true; /* never zero: zero fits int64 */
    case CW_JELLY_FLOAT:
        return v->u.f != 0.0;
    default:
        return false;
    }
}

const cw_jelly_t *cw_jelly_items(const cw_jelly_t *v, size_t *n)
{
    if (v == NULL || (v->type != CW_JELLY_LIST && v->type != CW_JELLY_TUPLE)) {
        *n = 0;
        return NULL;
    }
    *n = v->u.seq.n;
    return v->u.seq.items;
}

/* ---- encoding ---- */

void cw_jelly_enc_init(cw_jelly_enc_t *e, cw_buf_t *out, size_t top, bool vocab)
{
    memset(e, 0, sizeof(*e));
    e->out = out;
    e->mark = out->len;
    e->vocab = vocab;
    e->depth = 1;
    e->frame[0].left = top;
}

/* Record the first error. */
static int enc_fail(cw_jelly_enc_t *e, int err)
{
    if (e->err == 0)
        e->err = err;
    return e->err;
}

/* Account for one value about to be written: close finished containers, count the value in its
 * container, write the pair header when it opens a dictionary entry. */
static int enc_value(cw_jelly_enc_t *e)
{
    if (e->err)
        return e->err;
    while (e->depth > 1 && e->frame[e->depth - 1].left == 0)
        e->depth--;
    if (e->frame[e->depth - 1].left == 0)
        return enc_fail(e, CW_EBADARG);
    if (e->frame[e->depth - 1].dict && e->frame[e->depth - 1].left % 2 == 0) {
        int rc = cw_banana_list(e->out, 2);
        if (rc < 0)
            return enc_fail(e, rc);
    }
    e->frame[e->depth - 1].left--;
    return 0;
}

/* Open a container frame expecting `left` values. */
static int enc_push(cw_jelly_enc_t *e, size_t left, bool dict)
{
    if (e->depth >= CW_JELLY_ENC_DEPTH)
        return enc_fail(e, CW_ETOOBIG);
    e->frame[e->depth].left = left;
    e->frame[e->depth].dict = dict;
    e->depth++;
    return 0;
}

static int enc_rc(cw_jelly_enc_t *e, int rc)
{
    return rc < 0 ? enc_fail(e, rc) : 0;
}

int cw_jelly_enc_raw_list(cw_jelly_enc_t *e, size_t n)
{
    int rc = enc_value(e);
    if (rc == 0)
        rc = enc_rc(e, cw_banana_list(e->out, n));
    if (rc == 0 && n > 0)
        rc = enc_push(e, n, false);
    return rc;
}

int cw_jelly_enc_finish(cw_jelly_enc_t *e)
{
    if (e->err == 0) {
        for (unsigned i = 0; i < e->depth; i++)
            if (e->frame[i].left != 0)
                e->err = CW_EBADARG;
    }
    if (e->err)
        e->out->len = e->mark;
    return e->err;
}

/* The head of a form: list header for n elements, then the tag. */
static int enc_form(cw_jelly_enc_t *e, size_t n, const char *tag)
{
    int rc = enc_value(e);
    if (rc == 0)
        rc = enc_rc(e, cw_banana_list(e->out, n));
    if (rc == 0)
        rc = enc_rc(e, cw_banana_string(e->out, tag, strlen(tag), e->vocab));
    return rc;
}

int cw_jelly_none(cw_jelly_enc_t *e)
{
    return enc_form(e, 1, "None");
}

int cw_jelly_bool(cw_jelly_enc_t *e, bool v)
{
    int rc = enc_form(e, 2, "boolean");
    if (rc == 0)
        rc = enc_rc(e, cw_banana_string(e->out, v ? "true" : "false", v ? 4 : 5, e->vocab));
    return rc;
}

int cw_jelly_int64(cw_jelly_enc_t *e, int64_t v)
{
    int rc = enc_value(e);
    return rc ? rc : enc_rc(e, cw_banana_int(e->out, v));
}

int cw_jelly_uint64(cw_jelly_enc_t *e, uint64_t v)
{
    int rc = enc_value(e);
    return rc ? rc : enc_rc(e, cw_banana_uint(e->out, v));
}

int cw_jelly_float(cw_jelly_enc_t *e, double v)
{
    int rc = enc_value(e);
    return rc ? rc : enc_rc(e, cw_banana_float(e->out, v));
}

int cw_jelly_bytes(cw_jelly_enc_t *e, const void *p, size_t len)
{
    int rc = enc_value(e);
    return rc ? rc : enc_rc(e, cw_banana_string(e->out, p, len, e->vocab));
}

int cw_jelly_bytes_hole(cw_jelly_enc_t *e, size_t len, size_t *at)
{
    int rc = enc_value(e);
    if (rc == 0)
        rc = enc_rc(e, cw_banana_string_head(e->out, len));
    if (rc == 0)
        *at = e->out->len;
    return rc;
}

/* ("unicode" text) for text already known to be valid UTF-8. */
static int enc_unicode_valid(cw_jelly_enc_t *e, const void *p, size_t len)
{
    if (len > CW_BANANA_SIZE_LIMIT)
        return enc_fail(e, CW_ETOOBIG);
    int rc = enc_form(e, 2, "unicode");
    if (rc == 0)
        rc = enc_rc(e, cw_banana_string(e->out, p, len, e->vocab));
    return rc;
}

int cw_jelly_unicode(cw_jelly_enc_t *e, const void *p, size_t len)
{
    if (e->err)
        return e->err;
    if (!cw_utf8_valid(p, len))
        return enc_fail(e, CW_EBADARG);
    return enc_unicode_valid(e, p, len);
}

int cw_jelly_unicode_lossy(cw_jelly_enc_t *e, const void *p, size_t len)
{
    if (e->err)
        return e->err;
    if (cw_utf8_valid(p, len))
        return enc_unicode_valid(e, p, len);
    cw_buf_t fixed = CW_BUF_INIT;
    int rc = cw_utf8_repair(p, len, &fixed);
    if (rc < 0) {
        cw_buf_free(&fixed);
        return enc_fail(e, rc);
    }
    rc = enc_unicode_valid(e, fixed.data ? (const void *)fixed.data : "", fixed.len);
    cw_buf_free(&fixed);
    return rc;
}

int cw_jelly_unicode_trusted(cw_jelly_enc_t *e, const void *p, size_t len)
{
    if (e->err)
        return e->err;
    return enc_unicode_valid(e, p, len);
}

int cw_jelly_str(cw_jelly_enc_t *e, const char *s)
{
    return cw_jelly_unicode(e, s, strlen(s));
}

/* A list-like form (list, tuple) of n values. */
static int enc_seq(cw_jelly_enc_t *e, size_t n, const char *tag)
{
    if (e->err)
        return e->err;
    if (n >= CW_BANANA_SIZE_LIMIT)
        return enc_fail(e, CW_ETOOBIG);
    int rc = enc_form(e, n + 1, tag);
    if (rc == 0 && n > 0)
        rc = enc_push(e, n, false);
    return rc;
}

int cw_jelly_list(cw_jelly_enc_t *e, size_t n)
{
    return enc_seq(e, n, "list");
}

int cw_jelly_tuple(cw_jelly_enc_t *e, size_t n)
{
    return enc_seq(e, n, "tuple");
}

int cw_jelly_dict(cw_jelly_enc_t *e, size_t npairs)
{
    if (e->err)
        return e->err;
    if (npairs >= CW_BANANA_SIZE_LIMIT)
        return enc_fail(e, CW_ETOOBIG);
    int rc = enc_form(e, npairs + 1, "dictionary");
    if (rc == 0 && npairs > 0)
        rc = enc_push(e, 2 * npairs, true);
    return rc;
}

int cw_jelly_remote(cw_jelly_enc_t *e, int64_t luid)
{
    if (e->err)
        return e->err;
    if (e->on_remote) {
        int rc = e->on_remote(e->ud, luid);
        if (rc < 0)
            return enc_fail(e, rc);
    }
    int rc = enc_form(e, 2, "remote");
    if (rc == 0)
        rc = enc_rc(e, cw_banana_int(e->out, luid));
    return rc;
}

#define FAILURE_CLASS "twisted.spread.pb.CopyableFailure"

/* cw_jelly_value with a depth guard. */
static int enc_any(cw_jelly_enc_t *e, const cw_jelly_t *v, unsigned depth)
{
    if (depth > CW_JELLY_ENC_DEPTH)
        return enc_fail(e, CW_ETOOBIG);
    switch (v->type) {
    case CW_JELLY_NONE:
        return cw_jelly_none(e);
    case CW_JELLY_BOOL:
        return cw_jelly_bool(e, v->u.b);
    case CW_JELLY_INT:
        return cw_jelly_int64(e, v->u.i);
    case CW_JELLY_BIGINT: {
        int rc = enc_value(e);
        return rc ? rc
                  : enc_rc(e, cw_banana_bigint(e->out, v->u.big.neg, v->u.big.digits,
                                               v->u.big.ndigits));
    }
    case CW_JELLY_FLOAT:
        return cw_jelly_float(e, v->u.f);
    case CW_JELLY_BYTES:
        return cw_jelly_bytes(e, v->u.s.ptr, v->u.s.len);
    case CW_JELLY_UNICODE:
        return cw_jelly_unicode(e, v->u.s.ptr, v->u.s.len);
    case CW_JELLY_LIST:
    case CW_JELLY_TUPLE: {
        int rc = enc_seq(e, v->u.seq.n, v->type == CW_JELLY_LIST ? "list" : "tuple");
        for (size_t i = 0; rc == 0 && i < v->u.seq.n; i++)
            rc = enc_any(e, &v->u.seq.items[i], depth + 1);
        return rc;
    }
    case CW_JELLY_DICT: {
        int rc = cw_jelly_dict(e, v->u.dict.n);
        for (size_t i = 0; rc == 0 && i < v->u.dict.n; i++) {
            rc = enc_any(e, &v->u.dict.pairs[i].key, depth + 1);
            if (rc == 0)
                rc = enc_any(e, &v->u.dict.pairs[i].value, depth + 1);
        }
        return rc;
    }
    case CW_JELLY_REMOTE:
        return cw_jelly_remote(e, v->u.luid);
    case CW_JELLY_FAILURE: {
        int rc = cw_jelly_enc_raw_list(e, 2);
        if (rc == 0)
            rc = enc_value(e);
        if (rc == 0)
            rc = enc_rc(e, cw_banana_string(e->out, FAILURE_CLASS, strlen(FAILURE_CLASS), false));
        if (rc == 0)
            rc = enc_any(e, v->u.failure.state, depth + 1);
        return rc;
    }
    }
    return enc_fail(e, CW_EBADARG);
}

int cw_jelly_value(cw_jelly_enc_t *e, const cw_jelly_t *v)
{
    return enc_any(e, v, 0);
}

int cw_jelly_failure(cw_jelly_enc_t *e, const cw_jelly_failure_desc_t *f)
{
    const char *type = f->type ? f->type : "builtins.Exception";
    const char *value = f->value ? f->value : "";
    const char *tb = f->traceback ? f->traceback : "Traceback unavailable\n";
    const char *const def_parents[] = {type, "builtins.Exception", "builtins.BaseException",
                                       "builtins.object"};
    const char *const *parents = f->parents ? f->parents : def_parents;
    size_t nparents = f->parents ? f->nparents : 4;

    int rc = cw_jelly_enc_raw_list(e, 2);
    if (rc == 0)
        rc = enc_value(e);
    if (rc == 0)
        rc = enc_rc(e, cw_banana_string(e->out, FAILURE_CLASS, strlen(FAILURE_CLASS), false));
    /* Twisted sends type as bytes and value/traceback/parents as unicode (reference §3.2). */
    cw_jelly_dict(e, 10);
    cw_jelly_str(e, "type");
    cw_jelly_bytes(e, type, strlen(type));
    cw_jelly_str(e, "value");
    cw_jelly_unicode_lossy(e, value, strlen(value));
    cw_jelly_str(e, "traceback");
    cw_jelly_unicode_lossy(e, tb, strlen(tb));
    cw_jelly_str(e, "parents");
    cw_jelly_list(e, nparents);
    for (size_t i = 0; i < nparents; i++)
        cw_jelly_unicode_lossy(e, parents[i], strlen(parents[i]));
    cw_jelly_str(e, "frames");
    cw_jelly_list(e, 0);
    cw_jelly_str(e, "stack");
    cw_jelly_list(e, 0);
    cw_jelly_str(e, "tb");
    cw_jelly_none(e);
    cw_jelly_str(e, "count");
    cw_jelly_int64(e, f->count);
    cw_jelly_str(e, "captureVars");
    cw_jelly_bool(e, false);
    cw_jelly_str(e, "unsafeTracebacks");
    return cw_jelly_bool(e, f->unsafe_tracebacks);
}
