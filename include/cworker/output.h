/* Command output: line splitting and update batching, sans-I/O.
 *
 * Bytes from a child's stdout/stderr (or a watched logfile) go through one
 * cw_lines_t per stream.  It repairs UTF-8 (each invalid byte sequence becomes
 * U+FFFD, an incomplete sequence at the end of a chunk waits for the next
 * chunk), applies the newline rules of the stock `newline_re`, cuts lines
 * longer than max_line_length - 1 characters, and hands complete lines (each
 * ending in '\n') to a cw_outbuf_t.
 *
 * Default newline rules (the stock regex
 *   (\r\n|\r(?=.)|\033\[u|\033\[[0-9]+;[0-9]+[Hf]|\033\[2J|\x08+)
 * each match replaced by '\n'): CRLF; CR followed by any character other than
 * '\n' (the CR becomes '\n', the character stays); ESC[u; ESC[<n>;<m>H or f;
 * ESC[2J; a run of backspaces.  A CR or an unfinished escape sequence at the
 * end of a chunk is held until the next chunk (or the final flush) decides.
 * Characters are Unicode code points, as in the stock worker; the cut is at
 * max_line_length - 1 characters plus '\n' and loses nothing (the stock
 * worker drops a character at every cut).
 *
 * cw_outbuf_t keeps the pending [key, value] pairs of one command's next
 * `update` messages.  Consecutive text of the same key (and, for "log", the
 * same log name) is merged into one line record [text, offsets, times].
 * Its size is counted like the stock worker's: text bytes + 8 per offset +
 * 8 per time for line records, 20 for other values.  The owner decides when
 * to send (cw_outbuf_size() against buffer_size, a timer, completion) and
 * plans an update (cw_outbuf_plan), which takes at most buffer_size worth of
 * pairs from the front, splitting a large line record at line boundaries.
 */
#ifndef CWORKER_OUTPUT_H
#define CWORKER_OUTPUT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cworker/buf.h"
#include "cworker/cw.h"

typedef enum cw_stream {
    CW_STREAM_STDOUT,
    CW_STREAM_STDERR,
    CW_STREAM_HEADER,
    CW_STREAM_LOG,
} cw_stream_t;

/* Default newline_re sent by the 3.7 master (and assumed when none is). */
extern const char CW_DEFAULT_NEWLINE_RE[];

/* True if re is a newline_re this implementation applies exactly (today:
 * only the default).  Otherwise the caller logs a warning and keeps the
 * default rules. */
bool cw_newline_re_supported(const char *re, size_t len);

typedef struct cw_outbuf cw_outbuf_t;

/* Line splitter state for one stream. Private fields. */
typedef struct cw_lines {
    cw_stream_t stream;
    char *logname; /* owned copy, for CW_STREAM_LOG */
    size_t max_line_length;
    uint8_t utf8[4]; /* incomplete UTF-8 sequence from the last chunk */
    size_t utf8_len;
    uint8_t held[32]; /* undecided tail: CR or escape-sequence prefix */
    size_t held_len;
    cw_buf_t line;     /* unfinished line (translated, valid UTF-8) */
    size_t line_chars; /* code points in `line` */
    double line_time;  /* when the unfinished line's first byte came */
    double held_time;  /* when held[0] (or utf8[0]) came */
} cw_lines_t;

/* logname is copied (NULL unless stream is CW_STREAM_LOG). max_line_length
 * as in set_worker_settings (4096 default; values < 2 are treated as 2).
 * Returns 0 or -ENOMEM. */
int cw_lines_init(cw_lines_t *ls, cw_stream_t stream, const char *logname, size_t max_line_length);
void cw_lines_free(cw_lines_t *ls);

/* Push raw bytes that arrived at `now` (Unix time, seconds).  Complete lines
 * are appended to ob.  Returns 0 or -ENOMEM. */
int cw_lines_feed(cw_lines_t *ls, cw_outbuf_t *ob, const uint8_t *data, size_t len, double now);

/* End of stream: decide held bytes, and emit an unfinished line with an added
 * '\n'.  Nothing is emitted if nothing is pending. */
int cw_lines_flush(cw_lines_t *ls, cw_outbuf_t *ob, double now);

/* True if the splitter holds unfinished bytes. */
bool cw_lines_pending(const cw_lines_t *ls);

/* ---- update batching ---- */

typedef struct cw_out_entry cw_out_entry_t; /* private */

struct cw_outbuf {
    size_t buffer_size; /* budget per update message (stock: 65536) */
    size_t size;        /* budget used by pending entries */
    cw_out_entry_t *entries;
    size_t nentries;
    size_t cap;
    size_t head;         /* first pending entry */
    uint64_t bytes_text; /* total text bytes ever added (statistics) */
};

void cw_outbuf_init(cw_outbuf_t *ob, size_t buffer_size);
void cw_outbuf_free(cw_outbuf_t *ob);

/* Append complete lines: text must be non-empty and end with '\n'; every
 * line in it gets the same time.  Merged with the last entry when it is the
 * same stream (and log name).  Returns 0 or -ENOMEM. */
int cw_outbuf_add_lines(cw_outbuf_t *ob, cw_stream_t stream, const char *logname, const char *text,
                        size_t len, double time);

/* Header text that may lack the final newline: each call ends its text with
 * '\n' if it does not already (convenience for our own messages). */
int cw_outbuf_add_header(cw_outbuf_t *ob, const char *text, double time);

/* Non-text pairs. */
int cw_outbuf_add_int(cw_outbuf_t *ob, const char *key, int64_t v);
int cw_outbuf_add_float(cw_outbuf_t *ob, const char *key, double v);
int cw_outbuf_add_str(cw_outbuf_t *ob, const char *key, const char *v);
/* A number of a list: signed, or unsigned where the value may pass INT64_MAX
 * (inode and device numbers). */
typedef struct cw_num {
    bool is_unsigned;
    int64_t i;
    uint64_t u;
} cw_num_t;

/* A list of strings (e.g. "files"), each repaired to valid UTF-8. */
int cw_outbuf_add_strlist(cw_outbuf_t *ob, const char *key, const char *const *v, size_t n);
/* A list of numbers (e.g. "stat"). */
int cw_outbuf_add_numlist(cw_outbuf_t *ob, const char *key, const cw_num_t *v, size_t n);

/* Budget used by pending pairs (stock accounting). */
size_t cw_outbuf_size(const cw_outbuf_t *ob);
bool cw_outbuf_empty(const cw_outbuf_t *ob);

/* ---- planning updates (the protocols encode them) ---- */

typedef enum cw_out_kind {
    CW_OUT_TEXT, /* lines of a stream */
    CW_OUT_INT,
    CW_OUT_FLOAT,
    CW_OUT_STR,
    CW_OUT_STRLIST, /* `count` NUL-terminated strings one after the other */
    CW_OUT_NUMLIST, /* `count` numbers */
} cw_out_kind_t;

/* One pair of a planned update: views into the outbuf, valid until it is
 * changed. */
typedef struct cw_out_pair {
    cw_out_kind_t kind;
    cw_stream_t stream; /* TEXT */
    const char *key;    /* non-text: the key; TEXT of CW_STREAM_LOG: the log name */
    size_t key_len;
    const char *data; /* TEXT: whole lines; STR: the value; STRLIST: the strings
                         (all valid UTF-8: the outbuf repaired them on the way in) */
    size_t len;
    const size_t *ends;  /* TEXT: each line's '\n', at ends[i] - base in data */
    const double *times; /* TEXT: each line's time */
    size_t nlines;
    size_t base;
    int64_t ival;
    double fval;
    const cw_num_t *nums; /* NUMLIST */
    size_t count;         /* STRLIST, NUMLIST */
} cw_out_pair_t;

/* What the next update takes (private fields). */
typedef struct cw_out_plan {
    size_t head, end, part;
} cw_out_plan_t;

/* Wire key of a text stream: "stdout", "stderr", "header", "log". */
const char *cw_stream_key(cw_stream_t s);
/* Plan the next update: pairs are taken from the front until the next one
 * would exceed buffer_size (at least one pair, or one line of a line record,
 * is always taken; a large line record is split at line boundaries).
 * Returns the number of pairs (0: nothing pending). */
size_t cw_outbuf_plan(const cw_outbuf_t *ob, cw_out_plan_t *plan);
/* The k-th pair of a plan (k < the count cw_outbuf_plan returned). */
void cw_outbuf_plan_pair(const cw_outbuf_t *ob, const cw_out_plan_t *plan, size_t k,
                         cw_out_pair_t *pair);
/* Remove the planned pairs (once they are encoded). */
void cw_outbuf_commit(cw_outbuf_t *ob, const cw_out_plan_t *plan);

#endif
