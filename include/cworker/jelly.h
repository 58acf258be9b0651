/* Jelly, Twisted's object serialisation on top of banana: the subset Buildbot uses.
 *
 * Decoding turns a banana tree (cworker/banana.h) into typed values: None,
 * boolean, int (int64, or "big" beyond it), float, bytes, unicode (strict
 * UTF-8), list, tuple, dictionary, remote reference, reference/dereference
 * (resolved: a dereference yields the value its reference defined, sharing
 * its storage), and twisted.spread.pb.CopyableFailure (class name + state).
 * Everything else (class, module, function, method, instance, persistent,
 * unpersistable, set, frozenset, datetime/date/time/timedelta, decimal,
 * local, cached, lcache, any other dotted class name) is refused, and so are
 * forms Twisted itself rejects (dictionary pairs that are not 2 long,
 * ("boolean" "yes"), invalid UTF-8), a dereference to an unknown number or to
 * a reference still being decoded (a cycle), and a value that would have
 * more than max_nodes values once every dereference is expanded (so no walk
 * over a decoded value can blow up).  A refusal is an error value with a
 * Python-style exception type and a text for the error answer.
 *
 * Values are allocated in a cw_jelly_doc_t, an arena that also owns the
 * banana message they point into: everything is freed at once with
 * cw_jelly_doc_free().
 *
 * Encoding writes jelly straight into a cw_buf_t without building a tree:
 * the caller opens containers with their element counts and writes that many
 * values; cw_jelly_enc_t counts them, refuses what banana cannot send, and
 * rolls the buffer back to where it started on any error.
 */
#ifndef CWORKER_JELLY_H
#define CWORKER_JELLY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cworker/banana.h"
#include "cworker/buf.h"
#include "cworker/cw.h"

typedef enum cw_jelly_type {
    CW_JELLY_NONE,
    CW_JELLY_BOOL,
    CW_JELLY_INT,    /* fits int64_t: u.i */
    CW_JELLY_BIGINT, /* does not: u.big (refuse it where a C integer is needed) */
    CW_JELLY_FLOAT,
    CW_JELLY_BYTES,   /* bare STRING (or VOCAB): u.s */
    CW_JELLY_UNICODE, /* ("unicode" ...): u.s, valid UTF-8, not NUL-terminated */
    CW_JELLY_LIST,    /* u.seq */
    CW_JELLY_TUPLE,   /* u.seq */
    CW_JELLY_DICT,    /* u.dict, in wire order, duplicates kept */
    CW_JELLY_REMOTE,  /* ("remote" luid): an object the sender exports */
    CW_JELLY_FAILURE, /* ("twisted.spread.pb.CopyableFailure" state-dict) */
} cw_jelly_type_t;

typedef struct cw_jelly cw_jelly_t;
typedef struct cw_jelly_pair cw_jelly_pair_t;

struct cw_jelly {
    cw_jelly_type_t type;
    /* A dereference: this value (and everything under it) already appeared
     * earlier in the same decode and shares its storage.  Walkers that count
     * occurrences on the wire (remote references) skip it. */
    bool shared;
    union {
        bool b;
        int64_t i;
        double f;
        cw_str_t s;
        int64_t luid;
        struct {
            const cw_jelly_t *items;
            size_t n;
        } seq;
        struct {
            const cw_jelly_pair_t *pairs;
            size_t n;
        } dict;
        struct {
            bool neg;
            const uint8_t *digits; /* base 128, least significant first */
            size_t ndigits;
        } big;
        struct {
            cw_str_t type;           /* state["type"] (bytes or unicode), may be empty */
            cw_str_t value;          /* state["value"] (unicode or bytes), may be empty */
            const cw_jelly_t *state; /* the whole state dictionary */
        } failure;
    } u;
};

struct cw_jelly_pair {
    cw_jelly_t key, value;
};

/* ---- decoding ---- */

/* An arena of decoded values.  Zero-initialised is not valid: use
 * cw_jelly_doc_new(). */
typedef struct cw_jelly_doc cw_jelly_doc_t;

/* A new document that takes ownership of msg (may be NULL), so values may
 * point into it.  NULL on OOM (msg is then freed). */
cw_jelly_doc_t *cw_jelly_doc_new(cw_banana_msg_t *msg);
/* The banana message the document owns (NULL if none). */
cw_banana_msg_t *cw_jelly_doc_msg(const cw_jelly_doc_t *doc);
/* Free every value and the banana message.  NULL-safe. */
void cw_jelly_doc_free(cw_jelly_doc_t *doc);

/* Why a decode failed: a Python-style exception type for the error answer
 * ("twisted.spread.jelly.InsecureJelly", "builtins.UnicodeDecodeError",
 * "builtins.ValueError", ...) and a text. */
typedef struct cw_jelly_err {
    const char *type; /* static */
    char text[160];
} cw_jelly_err_t;

/* Options of a decode (NULL = defaults). */
typedef struct cw_jelly_dec_opts {
    /* cap on the values of the result counted with every dereference
     * expanded; 0 = CW_BANANA_DEFAULT_NODES */
    size_t max_nodes;
    /* called for every ("remote" luid) form decoded (once per form on the
     * wire, however often a dereference repeats it); a negative return stops
     * the decode with that code */
    int (*on_remote)(void *ud, int64_t luid);
    void *ud;
} cw_jelly_dec_opts_t;

/* Decode the banana tree node (which must live as long as doc, normally a
 * node of the doc's own message) into *out.  Reference numbers are local to
 * this call, as in Twisted (one unjelly per argument tuple, keyword dict or
 * answer).  Returns 0; CW_EBADMSG with err filled (the form is refused:
 * answer with an error); -ENOMEM; or what on_remote returned.  On error *out
 * is undefined and the doc stays valid. */
int cw_jelly_decode(cw_jelly_doc_t *doc, const cw_banana_node_t *node,
                    const cw_jelly_dec_opts_t *opts, cw_jelly_t *out, cw_jelly_err_t *err);

/* ---- looking at values ---- */

/* Name of a type ("None", "int", "unicode", ...). */
const char *cw_jelly_type_name(cw_jelly_type_t t);
/* The value of the last dictionary entry whose key is unicode or bytes equal
 * to key (a Python dict built from the wire keeps the last), or NULL. */
const cw_jelly_t *cw_jelly_dict_get(const cw_jelly_t *dict, const char *key);
/* Unicode or bytes as a counted string. */
bool cw_jelly_text(const cw_jelly_t *v, cw_str_t *out);
/* An int (not big) as int64_t. */
bool cw_jelly_int(const cw_jelly_t *v, int64_t *out);
/* An int, a bool or a float as a double. */
bool cw_jelly_number(const cw_jelly_t *v, double *out);
/* Python truthiness of None, bool, int and float (ints arrive where bools
 * are meant, reference §3.1); false for anything else. */
bool cw_jelly_truth(const cw_jelly_t *v);
/* Items of a list or tuple (n = 0 for anything else). */
const cw_jelly_t *cw_jelly_items(const cw_jelly_t *v, size_t *n);

/* ---- encoding ---- */

#define CW_JELLY_ENC_DEPTH 32

/* Counts what is written into out.  Private fields; use the functions. */
typedef struct cw_jelly_enc {
    cw_buf_t *out;
    size_t mark; /* out->len at init: where a failed encoding is rolled back to */
    int err;     /* first error, sticky */
    bool vocab;  /* compress vocabulary words (the pb dialect is on) */
    unsigned depth;
    struct {
        size_t left; /* values still expected */
        bool dict;   /* a dictionary: values come as key, value, key, ... */
        bool pair;   /* inside a dictionary: the next value opens a pair */
    } frame[CW_JELLY_ENC_DEPTH];
    /* Called for every ("remote" luid) written (the broker counts exports);
     * a negative return fails the encoding with that code. */
    int (*on_remote)(void *ud, int64_t luid);
    void *ud;
} cw_jelly_enc_t;

/* Start encoding into out (appending).  top is the number of top-level
 * values to come (usually 1); vocab true in the pb dialect. */
void cw_jelly_enc_init(cw_jelly_enc_t *e, cw_buf_t *out, size_t top, bool vocab);
/* Open a plain banana list of n elements (not a jelly form), for the broker's
 * envelopes; jelly values inside count as its elements. */
int cw_jelly_enc_raw_list(cw_jelly_enc_t *e, size_t n);
/* Finish: 0 when every container got exactly its elements, else the first
 * error (CW_EBADARG for a count mismatch) and out is rolled back. */
int cw_jelly_enc_finish(cw_jelly_enc_t *e);

/* Each writer returns the encoder's error so far (0 while healthy); after an
 * error the writers do nothing.  Errors: CW_ETOOBIG (string or container
 * over banana's 655,360, nesting over CW_JELLY_ENC_DEPTH), CW_EBADARG (more
 * values than announced, invalid UTF-8 for unicode), -ENOMEM. */
int cw_jelly_none(cw_jelly_enc_t *e);
int cw_jelly_bool(cw_jelly_enc_t *e, bool v);
int cw_jelly_int64(cw_jelly_enc_t *e, int64_t v);
int cw_jelly_uint64(cw_jelly_enc_t *e, uint64_t v);
int cw_jelly_float(cw_jelly_enc_t *e, double v);
int cw_jelly_bytes(cw_jelly_enc_t *e, const void *p, size_t len);
/* bytes of length len whose contents the caller sends itself: only the string's head is
 * written, and *at is where in the output the len bytes belong (out[0, *at), the bytes,
 * out[*at, end)).  Spares copying a large block into the message. */
int cw_jelly_bytes_hole(cw_jelly_enc_t *e, size_t len, size_t *at);
/* unicode: p must be valid UTF-8 (CW_EBADARG otherwise) */
int cw_jelly_unicode(cw_jelly_enc_t *e, const void *p, size_t len);
/* unicode from any bytes: invalid sequences become U+FFFD */
int cw_jelly_unicode_lossy(cw_jelly_enc_t *e, const void *p, size_t len);
/* unicode from bytes the caller guarantees are valid UTF-8 (not checked again: command
 * output is validated once, by the line splitter) */
int cw_jelly_unicode_trusted(cw_jelly_enc_t *e, const void *p, size_t len);
/* unicode from a NUL-terminated UTF-8 string */
int cw_jelly_str(cw_jelly_enc_t *e, const char *s);
/* containers: n values follow (a dictionary: n pairs, written as key, value, ...) */
int cw_jelly_list(cw_jelly_enc_t *e, size_t n);
int cw_jelly_tuple(cw_jelly_enc_t *e, size_t n);
int cw_jelly_dict(cw_jelly_enc_t *e, size_t npairs);
/* ("remote" luid): one of the sender's own objects */
int cw_jelly_remote(cw_jelly_enc_t *e, int64_t luid);
/* A decoded value written back as it came (remote references included,
 * through on_remote); a dereferenced value is written again in full. */
int cw_jelly_value(cw_jelly_enc_t *e, const cw_jelly_t *v);

/* What a CopyableFailure carries (reference §3.2).  NULL strings take the
 * defaults given. */
typedef struct cw_jelly_failure_desc {
    const char *type;      /* qualified class name, sent as bytes; default "builtins.Exception" */
    const char *value;     /* str(exception), unicode (repaired if not UTF-8); default "" */
    const char *traceback; /* unicode; default "Traceback unavailable\n" */
    /* class names of the exception's MRO, most derived first; NULL: type,
     * then "builtins.Exception", "builtins.BaseException", "builtins.object" */
    const char *const *parents;
    size_t nparents;
    int64_t count;          /* failure counter of the sender */
    bool unsafe_tracebacks; /* whether traceback is a real one */
} cw_jelly_failure_desc_t;

/* ("twisted.spread.pb.CopyableFailure" ("dictionary" type value traceback
 * parents frames stack tb count captureVars unsafeTracebacks)), one value. */
int cw_jelly_failure(cw_jelly_enc_t *e, const cw_jelly_failure_desc_t *f);

#endif
