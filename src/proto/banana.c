/* Banana codec (see cworker/banana.h): a resumable scanner, a tree builder and an encoder.
 *
 * Decoding is two passes over one expression.  The scanner runs byte by byte over whatever the
 * caller pushes, keeps only a prefix accumulator and a stack of "elements still expected" per
 * open list, enforces every limit on the declared numbers and copies the expression's bytes into
 * one buffer.  When the top-level element completes, the builder walks those (now complete,
 * already validated) bytes once and lays the tree out in a single node array sized by the
 * element count the scanner counted.  So nothing is allocated on a declared size that has not
 * been checked, the tree costs exactly one allocation, and the result cannot depend on how the
 * input was split.
 *
 * Choices the header leaves open:
 * - An empty prefix is 0 and high zero digits are allowed, as in Twisted.  The integer's type
 *   byte only gives its sign (Twisted does not check INT against 2^31 either).
 * - A prefix in front of FLOAT is ignored, but counts against the 64-digit limit.
 * - The root element counts as one node; a LIST of n counts n more when its header arrives, so
 *   max_nodes refuses a list before its elements have been sent.
 */
#include "cworker/banana.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

enum scan_state {
    SC_PREFIX,  /* reading prefix digits, waiting for the type byte */
    SC_PAYLOAD, /* copying `skip` payload bytes of a STRING or FLOAT */
};

/* Twisted 22.4's vocabulary (banana.py outgoingVocabulary); index 0 is unused. */
static const char *const vocab[CW_BANANA_VOCAB_COUNT + 1] = {
    NULL,           "None",     "class",         "dereference", "reference",
    "dictionary",   "function", "instance",      "list",        "module",
    "persistent",   "tuple",    "unpersistable", "copy",        "cache",
    "cached",       "remote",   "local",         "lcache",      "version",
    "login",        "password", "challenge",     "logged_in",   "not_logged_in",
    "cachemessage", "message",  "answer",        "error",       "decref",
    "decache",      "uncache",
};

const char *cw_banana_vocab_word(unsigned index)
{
    if (index < 1 || index > CW_BANANA_VOCAB_COUNT)
        return NULL;
    return vocab[index];
}

unsigned cw_banana_vocab_index(const void *p, size_t len)
{
    /* The longest word is "unpersistable" (13); most strings are rejected on length alone. */
    if (len < 4 || len > 13)
        return 0;
    for (unsigned i = 1; i <= CW_BANANA_VOCAB_COUNT; i++) {
        if (strlen(vocab[i]) == len && memcmp(vocab[i], p, len) == 0)
            return i;
    }
    return 0;
}

/* ---- prefix arithmetic ---- */

/* Add digit number `pos` (0 = least significant) to a 64-bit accumulator; sets *overflow when
 * the number no longer fits 64 bits (high zero digits never overflow). */
static void add_digit(uint64_t *value, bool *overflow, size_t pos, uint8_t digit)
{
    if (digit == 0 || *overflow)
        return;
    if (pos >= 10 || (pos == 9 && digit > 1)) {
        *overflow = true;
        return;
    }
    *value |= (uint64_t)digit << (7 * pos);
}

/* ---- decoder ---- */

void cw_banana_dec_init(cw_banana_dec_t *d, const cw_banana_limits_t *lim)
{
    memset(d, 0, sizeof(*d));
    if (lim)
        d->lim = *lim;
    if (d->lim.max_depth == 0)
        d->lim.max_depth = CW_BANANA_DEFAULT_DEPTH;
    if (d->lim.max_depth > CW_BANANA_MAX_DEPTH)
        d->lim.max_depth = CW_BANANA_MAX_DEPTH;
    if (d->lim.max_message == 0)
        d->lim.max_message = CW_BANANA_DEFAULT_MESSAGE;
    if (d->lim.max_nodes == 0)
        d->lim.max_nodes = CW_BANANA_DEFAULT_NODES;
    d->st = SC_PREFIX;
    d->msg = (cw_buf_t)CW_BUF_INIT;
}

void cw_banana_dec_free(cw_banana_dec_t *d)
{
    if (d == NULL)
        return;
    cw_buf_free(&d->msg);
}

void cw_banana_dec_set_vocab(cw_banana_dec_t *d, bool on)
{
    d->vocab = on;
}

bool cw_banana_dec_partial(const cw_banana_dec_t *d)
{
    return d->err == 0 && d->msg.len > 0;
}

const char *cw_banana_dec_error(const cw_banana_dec_t *d)
{
    return d->err ? d->why : NULL;
}

/* Record the decoder's first (and last) error. */
static int fail(cw_banana_dec_t *d, int err, const char *why)
{
    d->err = err;
    d->why = why;
    return err;
}

/* An element ended: count it in its list and close every list it completes.
 * True when the top-level expression is complete. */
static bool element_done(cw_banana_dec_t *d)
{
    for (;;) {
        if (d->depth == 0)
            return true;
        if (--d->left[d->depth - 1] > 0)
            return false;
        d->depth--;
    }
}

/* The type byte t ended a prefix: check it against the limits.  Returns 1 when the element is
 * complete, 0 when it continues (list opened, payload follows), or an error.  `have` is the
 * expression's length so far, this byte included. */
static int type_byte(cw_banana_dec_t *d, uint8_t t, size_t have)
{
    uint64_t v = d->value;
    bool big = d->overflow;
    switch (t) {
    case CW_BANANA_W_LIST:
        if (big || v > CW_BANANA_SIZE_LIMIT)
            return fail(d, CW_EPROTO, "LIST longer than 655,360 elements");
        if (v > d->lim.max_nodes - d->nodes)
            return fail(d, CW_ETOOBIG, "message has more elements than allowed");
        /* an empty list is as deep as any other, even if it needs no stack slot */
        if (d->depth >= d->lim.max_depth)
            return fail(d, CW_ETOOBIG, "lists nested deeper than allowed");
        d->nodes += (size_t)v;
        if (v == 0)
            return 1;
        d->left[d->depth++] = (size_t)v;
        return 0;
    case CW_BANANA_W_STRING:
        if (big || v > CW_BANANA_SIZE_LIMIT)
            return fail(d, CW_EPROTO, "STRING longer than 655,360 bytes");
        if (v > d->lim.max_message - have)
            return fail(d, CW_ETOOBIG, "message longer than allowed");
        if (v == 0)
            return 1;
        d->skip = v;
        d->st = SC_PAYLOAD;
        return 0;
    case CW_BANANA_W_FLOAT:
        if (8 > d->lim.max_message - have)
            return fail(d, CW_ETOOBIG, "message longer than allowed");
        d->skip = 8;
        d->st = SC_PAYLOAD;
        return 0;
    case CW_BANANA_W_INT:
    case CW_BANANA_W_NEG:
    case CW_BANANA_W_LONGINT:
    case CW_BANANA_W_LONGNEG:
        return 1;
    case CW_BANANA_W_VOCAB:
        if (!d->vocab)
            return fail(d, CW_EPROTO, "VOCAB before the pb dialect was chosen");
        if (big || v < 1 || v > CW_BANANA_VOCAB_COUNT)
            return fail(d, CW_EPROTO, "VOCAB index outside 1..31");
        return 1;
    default:
        return fail(d, CW_EPROTO, "unknown banana type byte");
    }
}

/* Build the tree of a complete expression from its validated bytes. */
static int build(cw_banana_dec_t *d, cw_banana_msg_t **out)
{
    size_t nodes = d->nodes;
    if (nodes > (SIZE_MAX - sizeof(cw_banana_msg_t)) / sizeof(cw_banana_node_t))
        return -ENOMEM;
    cw_banana_msg_t *m = malloc(sizeof(*m) + nodes * sizeof(cw_banana_node_t));
    if (m == NULL)
        return -ENOMEM;
    size_t len = d->msg.len;
    m->pool = (cw_banana_node_t *)(m + 1);
    m->root = m->pool;
    m->nodes = nodes;
    m->wire_len = len;
    m->bytes = cw_buf_steal(&d->msg, NULL);

    /* The list being filled and the index of its next item, per open list. */
    struct {
        cw_banana_node_t *list;
        size_t next;
    } stack[CW_BANANA_MAX_DEPTH];
    size_t depth = 0, next_free = 1, pos = 0;
    cw_banana_node_t *node = m->root;
    const uint8_t *p = m->bytes;
    for (;;) {
        size_t start = pos;
        while (p[pos] < 0x80)
            pos++;
        size_t nd = pos - start;
        uint64_t v = 0;
        bool big = false;
        for (size_t i = 0; i < nd; i++)
            add_digit(&v, &big, i, p[start + i]);
        uint8_t t = p[pos++];
        memset(node, 0, sizeof(*node));
        node->wire = t;
        switch (t) {
        case CW_BANANA_W_LIST:
            node->type = CW_BANANA_LIST;
            node->u.list.n = (size_t)v;
            node->u.list.items = v ? m->pool + next_free : NULL;
            next_free += (size_t)v;
            break;
        case CW_BANANA_W_STRING:
            node->type = CW_BANANA_STRING;
            node->u.s.ptr = (const char *)p + pos;
            node->u.s.len = (size_t)v;
            pos += (size_t)v;
            break;
        case CW_BANANA_W_VOCAB:
            node->type = CW_BANANA_STRING;
            node->flags = CW_BANANA_F_VOCAB;
            node->u.s.ptr = vocab[v];
            node->u.s.len = strlen(vocab[v]);
            break;
        case CW_BANANA_W_FLOAT: {
            uint64_t bits = 0;
            for (int i = 0; i < 8; i++)
                bits = bits << 8 | p[pos + i];
            pos += 8;
            node->type = CW_BANANA_FLOAT;
            memcpy(&node->u.f, &bits, sizeof(bits));
            break;
        }
        default: { /* the four integer types */
            bool neg = t == CW_BANANA_W_NEG || t == CW_BANANA_W_LONGNEG;
            node->type = CW_BANANA_INT;
            if (neg)
                node->flags |= CW_BANANA_F_NEG;
            if (!big && !neg && v <= (uint64_t)INT64_MAX) {
                node->u.i = (int64_t)v;
            } else if (!big && neg && v <= (uint64_t)INT64_MAX + 1) {
                /* -v without overflowing at v = 2^63 */
                node->u.i = v == 0 ? 0 : -(int64_t)(v - 1) - 1;
            } else {
                node->flags |= CW_BANANA_F_BIG;
                node->u.big.digits = p + start;
                node->u.big.ndigits = nd;
            }
            break;
        }
        }

        /* Where the next element goes. */
        if (node->type == CW_BANANA_LIST && node->u.list.n > 0) {
            stack[depth].list = node;
            stack[depth].next = 1;
            depth++;
            node = node->u.list.items;
            continue;
        }
        while (depth > 0 && stack[depth - 1].next == stack[depth - 1].list->u.list.n)
            depth--;
        if (depth == 0)
            break;
        node = &stack[depth - 1].list->u.list.items[stack[depth - 1].next++];
    }
    *out = m;
    return 0;
}

int cw_banana_dec_feed(cw_banana_dec_t *d, const uint8_t *data, size_t len, size_t *consumed,
                       cw_banana_msg_t **out)
{
    *out = NULL;
    *consumed = 0;
    if (d->err)
        return d->err;
    size_t pos = 0;
    size_t base = d->msg.len; /* bytes of this expression before this call */
    bool done = false;
    int rc = 0;
    while (pos < len && !done) {
        if (d->st == SC_PAYLOAD) {
            size_t take = len - pos;
            if (take > d->skip)
                take = (size_t)d->skip;
            pos += take;
            d->skip -= take;
            if (d->skip == 0) {
                d->st = SC_PREFIX;
                done = element_done(d);
            }
            continue;
        }
        uint8_t b = data[pos++];
        if (base + pos > d->lim.max_message) {
            rc = fail(d, CW_ETOOBIG, "message longer than allowed");
            break;
        }
        if (base + pos == 1)
            d->nodes = 1; /* the root element starts */
        if (b < 0x80) {
            if (d->ndigits >= CW_BANANA_PREFIX_LIMIT) {
                rc = fail(d, CW_EPROTO, "prefix longer than 64 digits");
                break;
            }
            add_digit(&d->value, &d->overflow, d->ndigits++, b);
            continue;
        }
        rc = type_byte(d, b, base + pos);
        d->ndigits = 0;
        d->value = 0;
        d->overflow = false;
        if (rc < 0)
            break;
        if (rc == 1)
            done = element_done(d);
        rc = 0;
    }
    *consumed = pos;
    if (rc < 0)
        return rc;
    if (cw_buf_append(&d->msg, data, pos) < 0)
        return fail(d, -ENOMEM, "out of memory");
    if (!done)
        return 0;
    /* the message takes the buffer with it (STRING nodes point into it), so nothing of a big
     * message stays pinned in the decoder */
    rc = build(d, out);
    if (rc < 0)
        return fail(d, rc, "out of memory");
    d->nodes = 0;
    return 0;
}

void cw_banana_msg_free(cw_banana_msg_t *m)
{
    if (m == NULL)
        return;
    free(m->bytes);
    free(m);
}

/* ---- encoder ---- */

/* Append the base-128 prefix of v (at least one digit) and the type byte. */
static int put_prefix(cw_buf_t *out, uint64_t v, uint8_t type)
{
    uint8_t tmp[11];
    size_t n = 0;
    do {
        tmp[n++] = (uint8_t)(v & 0x7f);
        v >>= 7;
    } while (v);
    tmp[n++] = type;
    return cw_buf_append(out, tmp, n);
}

int cw_banana_list(cw_buf_t *out, size_t n)
{
    if (n > CW_BANANA_SIZE_LIMIT)
        return CW_ETOOBIG;
    return put_prefix(out, n, CW_BANANA_W_LIST);
}

int cw_banana_int(cw_buf_t *out, int64_t v)
{
    if (v >= 0)
        return cw_banana_uint(out, (uint64_t)v);
    /* magnitude without overflowing at INT64_MIN */
    uint64_t mag = (uint64_t)(-(v + 1)) + 1;
    return put_prefix(out, mag, mag <= ((uint64_t)1 << 31) ? CW_BANANA_W_NEG : CW_BANANA_W_LONGNEG);
}

int cw_banana_uint(cw_buf_t *out, uint64_t v)
{
    return put_prefix(out, v, v <= INT32_MAX ? CW_BANANA_W_INT : CW_BANANA_W_LONGINT);
}

int cw_banana_bigint(cw_buf_t *out, bool neg, const uint8_t *digits, size_t ndigits)
{
    if (ndigits > CW_BANANA_PREFIX_LIMIT)
        return CW_ETOOBIG;
    for (size_t i = 0; i < ndigits; i++)
        if (digits[i] >= 0x80)
            return CW_EBADARG;
    int rc = cw_buf_reserve(out, ndigits + 2);
    if (rc < 0)
        return rc;
    if (ndigits == 0)
        out->data[out->len++] = 0;
    else
        memcpy(out->data + out->len, digits, ndigits);
    out->len += ndigits;
    out->data[out->len++] = neg ? CW_BANANA_W_LONGNEG : CW_BANANA_W_LONGINT;
    return 0;
}

int cw_banana_float(cw_buf_t *out, double v)
{
    uint64_t bits;
    memcpy(&bits, &v, sizeof(bits));
    uint8_t tmp[9];
    tmp[0] = CW_BANANA_W_FLOAT;
    for (int i = 0; i < 8; i++)
        tmp[1 + i] = (uint8_t)(bits >> (56 - 8 * i));
    return cw_buf_append(out, tmp, sizeof(tmp));
}

int cw_banana_string(cw_buf_t *out, const void *p, size_t len, bool use_vocab)
{
    if (use_vocab) {
        unsigned idx = cw_banana_vocab_index(p, len);
        if (idx)
            return put_prefix(out, idx, CW_BANANA_W_VOCAB);
    }
    if (len > CW_BANANA_SIZE_LIMIT)
        return CW_ETOOBIG;
    int rc = cw_buf_reserve(out, len + 5);
    if (rc < 0)
        return rc;
    rc = put_prefix(out, len, CW_BANANA_W_STRING);
    if (rc == 0)
        rc = cw_buf_append(out, p, len);
    return rc;
}

int cw_banana_string_head(cw_buf_t *out, size_t len)
{
    if (len > CW_BANANA_SIZE_LIMIT)
        return CW_ETOOBIG;
    return put_prefix(out, len, CW_BANANA_W_STRING);
}

/* cw_banana_node without the rollback; depth guards against hand-made trees. */
static int put_node(cw_buf_t *out, const cw_banana_node_t *n, bool use_vocab, size_t depth)
{
    switch (n->type) {
    case CW_BANANA_LIST: {
        if (depth >= CW_BANANA_MAX_DEPTH)
            return CW_ETOOBIG;
        int rc = cw_banana_list(out, n->u.list.n);
        for (size_t i = 0; rc == 0 && i < n->u.list.n; i++)
            rc = put_node(out, &n->u.list.items[i], use_vocab, depth + 1);
        return rc;
    }
    case CW_BANANA_INT:
        if (n->flags & CW_BANANA_F_BIG)
            return cw_banana_bigint(out, n->flags & CW_BANANA_F_NEG, n->u.big.digits,
                                    n->u.big.ndigits);
        return cw_banana_int(out, n->u.i);
    case CW_BANANA_STRING:
        return cw_banana_string(out, n->u.s.ptr, n->u.s.len, use_vocab);
    case CW_BANANA_FLOAT:
        return cw_banana_float(out, n->u.f);
    default:
        return CW_EBADARG;
    }
}

int cw_banana_node(cw_buf_t *out, const cw_banana_node_t *n, bool use_vocab)
{
    size_t mark = out->len;
    int rc = put_node(out, n, use_vocab, 0);
    if (rc < 0)
        out->len = mark;
    return rc;
}
