/* Banana, the token encoding under Twisted Perspective Broker: codec, sans-I/O.
 *
 * Every element is <prefix><type byte>[payload]: the prefix is a base-128
 * number, least significant digit first, one digit per byte 0x00..0x7f; the
 * first byte >= 0x80 is the type byte (docs/pb.md, reference §2).
 *
 * Decoding is push-style and incremental.  cw_banana_dec_feed() consumes
 * bytes up to the end of ONE top-level expression and then hands out that
 * expression as a tree (cw_banana_msg_t), so that the caller can act on a
 * message (for example switch the dialect on, which allows VOCAB) before the
 * next one is scanned.  The result is the same whether the bytes arrive
 * whole, one at a time or in any split.
 *
 * Limits are checked on the declared numbers, before anything is buffered or
 * allocated:
 *   STRING length and LIST count   <= CW_BANANA_SIZE_LIMIT (655,360), as Twisted
 *   prefix                          <= 64 digits, as Twisted
 *   nested lists                    <= max_depth (default 64)
 *   bytes of one message            <= max_message (default 16 MiB)
 *   elements of one message         <= max_nodes (default 1 Mi)
 * A message therefore costs at most max_message bytes of copy plus
 * sizeof(cw_banana_node_t) per element.
 *
 * Errors are values: CW_EPROTO (malformed: unknown type byte, VOCAB index
 * outside 1..31 or VOCAB before the dialect allows it, prefix over 64
 * digits, STRING/LIST over the Twisted size limit) and CW_ETOOBIG (one of
 * our configured limits).  Either one ends the decoder: the stream cannot
 * be resynchronised, the connection must close.
 *
 * The encoder appends to a cw_buf_t and writes what Twisted's encoder
 * writes, byte for byte; it refuses (writes nothing, CW_ETOOBIG) a STRING or
 * LIST over the size limit.
 */
#ifndef CWORKER_BANANA_H
#define CWORKER_BANANA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cworker/buf.h"
#include "cworker/cw.h"

/* Twisted's SIZE_LIMIT: longest STRING, longest LIST. */
#define CW_BANANA_SIZE_LIMIT (640 * 1024)
/* Twisted's prefix limit, in digits. */
#define CW_BANANA_PREFIX_LIMIT 64

#define CW_BANANA_DEFAULT_DEPTH   64
#define CW_BANANA_MAX_DEPTH       256 /* max_depth is clamped to this */
#define CW_BANANA_DEFAULT_MESSAGE ((size_t)16 << 20)
#define CW_BANANA_DEFAULT_NODES   ((size_t)1 << 20)

/* Wire type bytes. */
enum cw_banana_wire {
    CW_BANANA_W_LIST = 0x80,
    CW_BANANA_W_INT = 0x81,
    CW_BANANA_W_STRING = 0x82,
    CW_BANANA_W_NEG = 0x83,
    CW_BANANA_W_FLOAT = 0x84,
    CW_BANANA_W_LONGINT = 0x85,
    CW_BANANA_W_LONGNEG = 0x86,
    CW_BANANA_W_VOCAB = 0x87,
};

/* Number of words in the pb vocabulary; indexes run 1..CW_BANANA_VOCAB_COUNT. */
#define CW_BANANA_VOCAB_COUNT 31

/* The word for a vocabulary index (1..31), or NULL. */
const char *cw_banana_vocab_word(unsigned index);
/* The index of a word (1..31), or 0 when [p, p+len) is not in the table. */
unsigned cw_banana_vocab_index(const void *p, size_t len);

/* ---- decoded tree ---- */

typedef enum cw_banana_type {
    CW_BANANA_LIST,
    CW_BANANA_INT,    /* INT, NEG, LONGINT, LONGNEG: see flags for size */
    CW_BANANA_STRING, /* STRING, or VOCAB turned back into its word */
    CW_BANANA_FLOAT,
} cw_banana_type_t;

/* flags */
#define CW_BANANA_F_VOCAB 0x01 /* STRING that arrived as VOCAB */
#define CW_BANANA_F_BIG   0x02 /* INT outside int64_t: u.big holds its digits */
#define CW_BANANA_F_NEG   0x04 /* INT with a negative type byte (NEG, LONGNEG) */

typedef struct cw_banana_node cw_banana_node_t;
struct cw_banana_node {
    uint8_t type;  /* cw_banana_type_t */
    uint8_t flags; /* CW_BANANA_F_* */
    uint8_t wire;  /* the type byte as received (0x80..0x87) */
    union {
        int64_t i;  /* CW_BANANA_INT without F_BIG */
        double f;   /* CW_BANANA_FLOAT */
        cw_str_t s; /* CW_BANANA_STRING (raw bytes, not NUL-terminated) */
        struct {    /* CW_BANANA_INT with F_BIG: the prefix digits as received,
                       least significant first; the sign is F_NEG */
            const uint8_t *digits;
            size_t ndigits;
        } big;
        struct { /* CW_BANANA_LIST */
            cw_banana_node_t *items;
            size_t n;
        } list;
    } u;
};

/* One decoded top-level expression.  Every pointer in the tree (node arrays,
 * string bytes) points into storage the message owns: it lives until
 * cw_banana_msg_free(). */
typedef struct cw_banana_msg {
    cw_banana_node_t *root;
    size_t nodes;           /* elements in the tree */
    size_t wire_len;        /* bytes the expression took on the wire */
    uint8_t *bytes;         /* (private) the wire bytes; STRING payloads point here */
    cw_banana_node_t *pool; /* (private) all nodes, root first */
} cw_banana_msg_t;

/* Free a message and everything in it.  NULL-safe. */
void cw_banana_msg_free(cw_banana_msg_t *m);

/* ---- decoder ---- */

typedef struct cw_banana_limits {
    size_t max_depth;   /* nested lists; 0 = default 64; clamped to 256 */
    size_t max_message; /* bytes of one expression; 0 = default 16 MiB */
    size_t max_nodes;   /* elements of one expression; 0 = default 1 Mi */
} cw_banana_limits_t;

/* Decoder state.  Fields are private; use the functions below. */
typedef struct cw_banana_dec {
    cw_banana_limits_t lim;
    bool vocab;      /* VOCAB allowed (the pb dialect was chosen) */
    int err;         /* sticky error, 0 while healthy */
    const char *why; /* static text for err */

    /* element scanner */
    int st;                           /* private parser state */
    size_t ndigits;                   /* prefix digits seen for the current element */
    uint64_t value;                   /* prefix value, saturating */
    bool overflow;                    /* prefix value exceeds 64 bits */
    uint64_t skip;                    /* payload bytes still to copy (STRING, FLOAT) */
    size_t depth;                     /* open lists */
    size_t left[CW_BANANA_MAX_DEPTH]; /* elements still expected per open list */
    size_t nodes; /* elements so far, counting those announced by list headers */
    cw_buf_t msg; /* the bytes of the expression being read */
} cw_banana_dec_t;

/* Initialise a decoder; lim NULL = defaults.  VOCAB starts disallowed. */
void cw_banana_dec_init(cw_banana_dec_t *d, const cw_banana_limits_t *lim);
/* Release the decoder's buffers.  NULL-safe. */
void cw_banana_dec_free(cw_banana_dec_t *d);
/* Allow VOCAB from the next byte on (after the pb dialect was chosen). */
void cw_banana_dec_set_vocab(cw_banana_dec_t *d, bool on);

/* Push bytes.  Consumes data until one top-level expression is complete or
 * the data ends, and stores the number of bytes used in *consumed.  When an
 * expression completed, *out receives it (the caller owns it and frees it
 * with cw_banana_msg_free); otherwise *out is NULL and all of data was
 * consumed.  Call again with the rest of the data.
 *
 * Returns 0, or CW_EPROTO / CW_ETOOBIG / -ENOMEM; after an error the decoder
 * refuses all further input with the same code (*consumed then counts the
 * bytes up to and including the offending one). */
int cw_banana_dec_feed(cw_banana_dec_t *d, const uint8_t *data, size_t len, size_t *consumed,
                       cw_banana_msg_t **out);

/* True while part of an expression has been read (EOF now truncates it);
 * false after an error. */
bool cw_banana_dec_partial(const cw_banana_dec_t *d);

/* Why the decoder failed (static text), or NULL. */
const char *cw_banana_dec_error(const cw_banana_dec_t *d);

/* ---- encoder (appends to out; 0, CW_ETOOBIG or -ENOMEM; nothing is written
 * on error) ---- */

/* List header: n elements follow (n <= 655,360). */
int cw_banana_list(cw_buf_t *out, size_t n);
/* Integer: INT for 0..2^31-1, NEG for -2^31..-1, LONGINT above, LONGNEG below. */
int cw_banana_int(cw_buf_t *out, int64_t v);
/* Unsigned integer (INT or LONGINT), for values up to 2^64-1. */
int cw_banana_uint(cw_buf_t *out, uint64_t v);
/* An integer given as base-128 digits (least significant first, each < 128,
 * at most 64), e.g. a CW_BANANA_F_BIG node sent back: LONGINT/LONGNEG. */
int cw_banana_bigint(cw_buf_t *out, bool neg, const uint8_t *digits, size_t ndigits);
/* FLOAT: 84 then the IEEE 754 double, big-endian. */
int cw_banana_float(cw_buf_t *out, double v);
/* STRING of len raw bytes (len <= 655,360); with vocab true a string equal to
 * a vocabulary word is written as VOCAB, like Twisted in the pb dialect. */
int cw_banana_string(cw_buf_t *out, const void *p, size_t len, bool vocab);
/* The head of a string of len bytes (never a vocabulary index), for a caller that sends
 * the bytes themselves from where they are.  0, CW_ETOOBIG, -ENOMEM. */
int cw_banana_string_head(cw_buf_t *out, size_t len);
/* Re-encode a decoded node and everything under it. */
int cw_banana_node(cw_buf_t *out, const cw_banana_node_t *n, bool vocab);

#endif
