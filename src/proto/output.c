/* Command output: UTF-8 repair, the stock newline rules, long-line cuts and the
 * batching of [key, value] pairs into `update` messages.  No I/O, no clock.
 *
 * The splitter runs in two gears.  At the start of a line with nothing held,
 * fast_lines() scans word-at-a-time for whole lines of valid UTF-8 without
 * CR, ESC or BS and copies a batch of them straight into the output record
 * (one memcpy, offsets recorded during the scan).  Anything else goes through
 * slow_step(), which applies the rules below a unit at a time and keeps the
 * unfinished line in ls->line.  Both gears give the same text.
 *
 * The rules are those of the stock regex applied to the whole decoded stream
 * (not per chunk), so output does not depend on how input was split:
 *   \r\n -> \n; \r then any other char -> \n + char; ESC[u, ESC[<d>;<d>H|f,
 *   ESC[2J -> \n; a run of \b -> one \n.
 * ls->held keeps the undecided tail: "\r", an escape prefix ("\033[12;3"), or
 * "\b" which only marks that the last char was a backspace (its \n is already
 * out, further backspaces are swallowed).  An escape prefix longer than
 * sizeof(ls->held) is taken as not matching, so memory stays bounded; real
 * terminal sequences are far shorter.
 *
 * Times: a line's time is the arrival of its first byte.  Held bytes and an
 * incomplete UTF-8 sequence carry the time they arrived (held_time), so a line
 * they begin gets that time even when they are decided in a later chunk.
 */
#include "cworker/output.h"
#include "cworker/utf8.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

const char CW_DEFAULT_NEWLINE_RE[] =
    "(\\r\\n|\\r(?=.)|\\033\\[u|\\033\\[[0-9]+;[0-9]+[Hf]|\\033\\[2J|\\x08+)";

#define ESC 0x1b

/* True if re is exactly the default newline_re (the only one we implement). */
bool cw_newline_re_supported(const char *re, size_t len)
{
    return re != NULL && len == sizeof(CW_DEFAULT_NEWLINE_RE) - 1 &&
           memcmp(re, CW_DEFAULT_NEWLINE_RE, len) == 0;
}

/* ---- UTF-8 ---- */

/* Length of the leading run of printable ASCII (0x20..0x7f), 8 bytes at a
 * time: bytes below 0x20 or above 0x7f are what the splitter must look at. */
static inline size_t skip_printable(const uint8_t *p, size_t n)
{
    size_t i = 0;
    while (i + 8 <= n) {
        uint64_t v;
        memcpy(&v, p + i, 8);
        /* A byte < 0x20 borrows (high bit set), a byte >= 0x80 has it; a
         * borrow only leaks upwards from a byte that is itself flagged, so the
         * lowest flagged byte is a real hit. */
        uint64_t m = ((v - 0x2020202020202020ULL) | v) & 0x8080808080808080ULL;
        if (m != 0) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
            return i + ((size_t)__builtin_ctzll(m) >> 3);
#else
            break;
#endif
        }
        i += 8;
    }
    while (i < n && p[i] >= 0x20 && p[i] < 0x80)
        i++;
    return i;
}

/* True for an ASCII byte that is literal text under the newline rules. */
static inline bool is_plain(uint8_t c)
{
    return c < 0x80 && c != '\n' && c != '\r' && c != ESC && c != '\b';
}

/* End of the run of literal ASCII bytes starting at p[i]. */
static size_t plain_run_end(const uint8_t *p, size_t i, size_t n)
{
    for (;;) {
        i += skip_printable(p + i, n - i);
        if (i < n && is_plain(p[i])) {
            i++; /* tab or another control char: literal */
            continue;
        }
        return i;
    }
}

/* ---- pending pairs ---- */

enum entry_kind { E_TEXT, E_INT, E_FLOAT, E_STR, E_STRLIST, E_NUMLIST };

struct cw_out_entry {
    enum entry_kind kind;
    cw_stream_t stream; /* E_TEXT */
    cw_buf_t name;      /* E_TEXT of CW_STREAM_LOG: log name; other kinds: the key */
    cw_buf_t data;      /* E_TEXT: the lines; E_STR: the value; E_STRLIST: the strings,
                           each ending in NUL; E_NUMLIST: the cw_num_t array */
    size_t count;       /* E_STRLIST, E_NUMLIST: elements */
    size_t *offs;       /* E_TEXT: index in data of each '\n' */
    double *times;      /* E_TEXT: time of each line */
    size_t nlines;
    size_t lines_cap;
    size_t first; /* E_TEXT: lines already packed (a record split over messages) */
    int64_t ival;
    double fval;
};

/* Wire key of a text stream. */
static const char *stream_key(cw_stream_t s)
{
    switch (s) {
    case CW_STREAM_STDOUT:
        return "stdout";
    case CW_STREAM_STDERR:
        return "stderr";
    case CW_STREAM_LOG:
        return "log";
    case CW_STREAM_HEADER:
    default:
        return "header";
    }
}

/* Index in e->data of the first line not yet packed. */
static size_t text_start(const cw_out_entry_t *e)
{
    return e->first ? e->offs[e->first - 1] + 1 : 0;
}

/* Stock budget of the unsent part of an entry (buffer_manager.py). */
static size_t entry_size(const cw_out_entry_t *e)
{
    if (e->kind != E_TEXT)
        return 20;
    return e->data.len - text_start(e) + 16 * (e->nlines - e->first);
}

/* Budget of the next nl unsent lines of a text entry. */
static size_t lines_cost(const cw_out_entry_t *e, size_t nl)
{
    return e->offs[e->first + nl - 1] + 1 - text_start(e) + 16 * nl;
}

/* An empty outbuf with the given update budget. */
void cw_outbuf_init(cw_outbuf_t *ob, size_t buffer_size)
{
    memset(ob, 0, sizeof *ob);
    ob->buffer_size = buffer_size;
}

/* Free every slot's buffers; the outbuf is empty and reusable afterwards. */
void cw_outbuf_free(cw_outbuf_t *ob)
{
    if (ob == NULL)
        return;
    for (size_t k = 0; k < ob->cap; k++) {
        cw_out_entry_t *e = &ob->entries[k];
        cw_buf_free(&e->name);
        cw_buf_free(&e->data);
        free(e->offs);
        free(e->times);
    }
    free(ob->entries);
    size_t bs = ob->buffer_size;
    cw_outbuf_init(ob, bs);
}

/* A fresh entry at the tail.  Slots keep their buffers when reused, so a
 * steady stream of updates allocates nothing. */
static cw_out_entry_t *new_entry(cw_outbuf_t *ob)
{
    if (ob->head == ob->nentries)
        ob->head = ob->nentries = 0;
    if (ob->nentries == ob->cap) {
        if (ob->head > 0 && ob->head >= ob->cap / 2) {
            /* Move the pending entries to the front; the sent slots (with
             * their buffers) end up behind them. */
            size_t npend = ob->nentries - ob->head;
            for (size_t k = 0; k < npend; k++) {
                cw_out_entry_t t = ob->entries[k];
                ob->entries[k] = ob->entries[ob->head + k];
                ob->entries[ob->head + k] = t;
            }
            ob->nentries = npend;
            ob->head = 0;
        } else {
            size_t ncap = ob->cap ? ob->cap * 2 : 16;
            if (ncap > SIZE_MAX / sizeof(cw_out_entry_t))
                return NULL;
            cw_out_entry_t *p = realloc(ob->entries, ncap * sizeof *p);
            if (p == NULL)
                return NULL;
            memset(p + ob->cap, 0, (ncap - ob->cap) * sizeof *p);
            ob->entries = p;
            ob->cap = ncap;
        }
    }
    cw_out_entry_t *e = &ob->entries[ob->nentries++];
    e->name.len = 0;
    e->data.len = 0;
    e->nlines = 0;
    e->first = 0;
    return e;
}

/* Undo a just-created entry that got no line (after a failed append). */
static void drop_if_empty(cw_outbuf_t *ob, cw_out_entry_t *e)
{
    if (e->kind == E_TEXT && e->nlines == 0 && ob->nentries > ob->head &&
        e == &ob->entries[ob->nentries - 1])
        ob->nentries--;
}

/* Forget the sent part of a partly packed text entry before it grows again,
 * or it would grow forever when the owner always leaves a remainder.  Only
 * when the part kept is no bigger than the part dropped, so every byte is
 * moved at most once per time it was sent. */
static void entry_compact(cw_out_entry_t *e)
{
    size_t start = text_start(e), rest = e->data.len - start;
    if (e->first == 0 || start < rest)
        return;
    memmove(e->data.data, e->data.data + start, rest);
    e->data.len = rest;
    size_t nl = e->nlines - e->first;
    for (size_t k = 0; k < nl; k++)
        e->offs[k] = e->offs[e->first + k] - start;
    memmove(e->times, e->times + e->first, nl * sizeof *e->times);
    e->nlines = nl;
    e->first = 0;
}

/* The entry text of this stream goes to: the last pending one if it has the
 * same key (and log name), else a new one. */
static cw_out_entry_t *text_entry(cw_outbuf_t *ob, cw_stream_t stream, const char *logname)
{
    size_t nlen = 0;
    if (stream == CW_STREAM_LOG) {
        if (logname == NULL)
            logname = "";
        nlen = strlen(logname);
    }
    if (ob->nentries > ob->head) {
        cw_out_entry_t *e = &ob->entries[ob->nentries - 1];
        if (e->kind == E_TEXT && e->stream == stream &&
            (stream != CW_STREAM_LOG ||
             (e->name.len == nlen && (nlen == 0 || memcmp(e->name.data, logname, nlen) == 0)))) {
            entry_compact(e);
            return e;
        }
    }
    cw_out_entry_t *e = new_entry(ob);
    if (e == NULL)
        return NULL;
    e->kind = E_TEXT;
    e->stream = stream;
    if (cw_buf_append(&e->name, logname, nlen) < 0) {
        ob->nentries--;
        return NULL;
    }
    return e;
}

/* Room for `extra` more lines in the offsets and times arrays. */
static int lines_reserve(cw_out_entry_t *e, size_t extra)
{
    if (extra <= e->lines_cap - e->nlines)
        return 0;
    size_t cap = e->lines_cap ? e->lines_cap : 64;
    while (cap - e->nlines < extra) {
        if (cap > SIZE_MAX / 2 / sizeof(double))
            return -ENOMEM;
        cap *= 2;
    }
    size_t *o = realloc(e->offs, cap * sizeof *o);
    if (o == NULL)
        return -ENOMEM;
    e->offs = o;
    double *t = realloc(e->times, cap * sizeof *t);
    if (t == NULL)
        return -ENOMEM;
    e->times = t;
    e->lines_cap = cap;
    return 0;
}

/* Append one line (s has no '\n'; one is added) to a text entry. */
static int entry_push_line(cw_outbuf_t *ob, cw_out_entry_t *e, const uint8_t *s, size_t len,
                           double t)
{
    if (cw_buf_reserve(&e->data, len + 1) < 0 || lines_reserve(e, 1) < 0) {
        drop_if_empty(ob, e);
        return -ENOMEM;
    }
    uint8_t *d = e->data.data + e->data.len;
    if (len)
        memcpy(d, s, len);
    d[len] = '\n';
    e->offs[e->nlines] = e->data.len + len;
    e->times[e->nlines++] = t;
    e->data.len += len + 1;
    ob->size += len + 1 + 16;
    ob->bytes_text += len + 1;
    return 0;
}

/* Append whole lines of valid UTF-8 (plus a final '\n' if add_nl), all with
 * time t. */
static int entry_append_lines(cw_outbuf_t *ob, cw_out_entry_t *e, const uint8_t *s, size_t len,
                              bool add_nl, double t)
{
    size_t total = len + (add_nl ? 1 : 0), base = e->data.len, n0 = e->nlines;
    if (cw_buf_reserve(&e->data, total) < 0)
        goto nomem;
    const uint8_t *p = s, *end = s + len, *q;
    while (p < end && (q = memchr(p, '\n', (size_t)(end - p))) != NULL) {
        if (lines_reserve(e, 1) < 0)
            goto nomem;
        e->offs[e->nlines] = base + (size_t)(q - s);
        e->times[e->nlines++] = t;
        p = q + 1;
    }
    if (add_nl) {
        if (lines_reserve(e, 1) < 0)
            goto nomem;
        e->offs[e->nlines] = base + len;
        e->times[e->nlines++] = t;
        e->data.data[base + len] = '\n';
    }
    if (len)
        memcpy(e->data.data + base, s, len);
    e->data.len += total;
    ob->size += total + 16 * (e->nlines - n0);
    ob->bytes_text += total;
    return 0;
nomem:
    e->nlines = n0;
    drop_if_empty(ob, e);
    return -ENOMEM;
}

/* Common path of add_lines/add_header: repair UTF-8, then append. */
static int add_text(cw_outbuf_t *ob, cw_stream_t stream, const char *logname, const char *text,
                    size_t len, bool add_nl, double time)
{
    cw_buf_t tmp = CW_BUF_INIT;
    const uint8_t *s = (const uint8_t *)text;
    /* A str that is not UTF-8 makes the master drop the connection. */
    if (!cw_utf8_valid(s, len)) {
        if (cw_utf8_repair(s, len, &tmp) < 0) {
            cw_buf_free(&tmp);
            return -ENOMEM;
        }
        s = tmp.data;
        len = tmp.len;
    }
    cw_out_entry_t *e = text_entry(ob, stream, logname);
    int rc = e ? entry_append_lines(ob, e, s, len, add_nl, time) : -ENOMEM;
    cw_buf_free(&tmp);
    return rc;
}

/* Complete lines from outside a splitter (checked, UTF-8 repaired). */
int cw_outbuf_add_lines(cw_outbuf_t *ob, cw_stream_t stream, const char *logname, const char *text,
                        size_t len, double time)
{
    if (text == NULL || len == 0 || text[len - 1] != '\n')
        return -EINVAL;
    return add_text(ob, stream, logname, text, len, false, time);
}

/* One of our own header messages; '\n' added when missing. */
int cw_outbuf_add_header(cw_outbuf_t *ob, const char *text, double time)
{
    size_t len = strlen(text);
    bool add_nl = len == 0 || text[len - 1] != '\n';
    return add_text(ob, CW_STREAM_HEADER, NULL, text, len, add_nl, time);
}

/* A new non-text pair with its key; counted with the stock 20. */
static cw_out_entry_t *pair_entry(cw_outbuf_t *ob, const char *key, enum entry_kind kind)
{
    cw_out_entry_t *e = new_entry(ob);
    if (e == NULL)
        return NULL;
    e->kind = kind;
    if (cw_buf_append_str(&e->name, key) < 0) {
        ob->nentries--;
        return NULL;
    }
    ob->size += 20;
    return e;
}

/* An int pair such as ["rc", 0]. */
int cw_outbuf_add_int(cw_outbuf_t *ob, const char *key, int64_t v)
{
    cw_out_entry_t *e = pair_entry(ob, key, E_INT);
    if (e == NULL)
        return -ENOMEM;
    e->ival = v;
    return 0;
}

/* A float64 pair such as ["elapsed", 1.5]. */
int cw_outbuf_add_float(cw_outbuf_t *ob, const char *key, double v)
{
    cw_out_entry_t *e = pair_entry(ob, key, E_FLOAT);
    if (e == NULL)
        return -ENOMEM;
    e->fval = v;
    return 0;
}

/* A str pair (UTF-8 repaired: a bad str would end the connection). */
int cw_outbuf_add_str(cw_outbuf_t *ob, const char *key, const char *v)
{
    cw_out_entry_t *e = pair_entry(ob, key, E_STR);
    if (e == NULL)
        return -ENOMEM;
    if (cw_utf8_repair((const uint8_t *)v, strlen(v), &e->data) < 0) {
        ob->nentries--;
        ob->size -= 20;
        return -ENOMEM;
    }
    return 0;
}

/* A list of strings such as ["files", [...]] (each UTF-8 repaired). */
int cw_outbuf_add_strlist(cw_outbuf_t *ob, const char *key, const char *const *v, size_t n)
{
    cw_out_entry_t *e = pair_entry(ob, key, E_STRLIST);
    if (e == NULL)
        return -ENOMEM;
    for (size_t i = 0; i < n; i++) {
        if (cw_utf8_repair((const uint8_t *)v[i], strlen(v[i]), &e->data) < 0 ||
            cw_buf_append(&e->data, "", 1) < 0) {
            ob->nentries--;
            ob->size -= 20;
            return -ENOMEM;
        }
    }
    e->count = n;
    return 0;
}

/* A list of numbers such as ["stat", [mode, ino, ...]]. */
int cw_outbuf_add_numlist(cw_outbuf_t *ob, const char *key, const cw_num_t *v, size_t n)
{
    cw_out_entry_t *e = pair_entry(ob, key, E_NUMLIST);
    if (e == NULL)
        return -ENOMEM;
    if (n > 0 && cw_buf_append(&e->data, v, n * sizeof *v) < 0) {
        ob->nentries--;
        ob->size -= 20;
        return -ENOMEM;
    }
    e->count = n;
    return 0;
}

/* Budget used by the pending pairs. */
size_t cw_outbuf_size(const cw_outbuf_t *ob)
{
    return ob->size;
}

/* True if no pair is pending. */
bool cw_outbuf_empty(const cw_outbuf_t *ob)
{
    return ob->head == ob->nentries;
}

/* ---- planning updates ---- */

/* Most unsent lines of a text entry whose budget fits in room. */
static size_t lines_fit(const cw_out_entry_t *e, size_t room)
{
    size_t lo = 0, hi = e->nlines - e->first;
    while (lo < hi) {
        size_t mid = lo + (hi - lo + 1) / 2;
        if (lines_cost(e, mid) <= room)
            lo = mid;
        else
            hi = mid - 1;
    }
    return lo;
}

const char *cw_stream_key(cw_stream_t s)
{
    return stream_key(s);
}

/* Whole pairs within budget, then what fits of a line record (at least
 * one pair or line). */
size_t cw_outbuf_plan(const cw_outbuf_t *ob, cw_out_plan_t *p)
{
    p->head = p->end = ob->head;
    p->part = 0;
    if (ob->head == ob->nentries)
        return 0;
    /* whole pairs [head, end), then `part` lines of pair `end` */
    size_t budget = ob->buffer_size, used = 0, end = ob->head, part = 0;
    while (end < ob->nentries) {
        const cw_out_entry_t *e = &ob->entries[end];
        size_t sz = entry_size(e);
        if (sz <= budget - used) {
            used += sz;
            end++;
            continue;
        }
        if (e->kind == E_TEXT) {
            part = lines_fit(e, budget - used);
            if (part == 0 && end == ob->head)
                part = 1; /* a line over budget still goes, alone */
            if (part == e->nlines - e->first) {
                end++;
                part = 0;
            }
        } else if (end == ob->head) {
            end++; /* so does a pair over budget */
        }
        break;
    }
    p->end = end;
    p->part = part;
    return end - ob->head + (part ? 1 : 0);
}

static const cw_out_kind_t kind_map[] = {
    [E_TEXT] = CW_OUT_TEXT, [E_INT] = CW_OUT_INT,         [E_FLOAT] = CW_OUT_FLOAT,
    [E_STR] = CW_OUT_STR,   [E_STRLIST] = CW_OUT_STRLIST, [E_NUMLIST] = CW_OUT_NUMLIST,
};

void cw_outbuf_plan_pair(const cw_outbuf_t *ob, const cw_out_plan_t *p, size_t k,
                         cw_out_pair_t *pair)
{
    const cw_out_entry_t *e = &ob->entries[p->head + k];
    memset(pair, 0, sizeof *pair);
    pair->kind = kind_map[e->kind];
    if (e->kind != E_TEXT) {
        pair->key = (const char *)e->name.data;
        pair->key_len = e->name.len;
        pair->data = (const char *)e->data.data;
        pair->len = e->data.len;
        pair->ival = e->ival;
        pair->fval = e->fval;
        pair->count = e->count;
        pair->nums = e->kind == E_NUMLIST ? (const cw_num_t *)e->data.data : NULL;
        return;
    }
    size_t nl = p->head + k == p->end ? p->part : e->nlines - e->first;
    size_t start = text_start(e), stop = e->offs[e->first + nl - 1] + 1;
    pair->stream = e->stream;
    pair->key = (const char *)e->name.data; /* the log name */
    pair->key_len = e->name.len;
    pair->data = (const char *)e->data.data + start;
    pair->len = stop - start;
    pair->ends = e->offs + e->first;
    pair->times = e->times + e->first;
    pair->nlines = nl;
    pair->base = start;
}

void cw_outbuf_commit(cw_outbuf_t *ob, const cw_out_plan_t *p)
{
    for (size_t k = p->head; k < p->end; k++)
        ob->size -= entry_size(&ob->entries[k]);
    if (p->part) {
        cw_out_entry_t *e = &ob->entries[p->end];
        ob->size -= lines_cost(e, p->part);
        e->first += p->part;
    }
    ob->head = p->end;
    if (ob->head == ob->nentries)
        ob->head = ob->nentries = 0;
}

/* ---- line splitter ---- */

int cw_lines_init(cw_lines_t *ls, cw_stream_t stream, const char *logname, size_t max_line_length)
{
    memset(ls, 0, sizeof *ls);
    ls->stream = stream;
    ls->max_line_length = max_line_length < 2 ? 2 : max_line_length;
    if (stream == CW_STREAM_LOG) {
        cw_str_t s = {logname ? logname : "", logname ? strlen(logname) : 0};
        ls->logname = cw_str_dup(s);
        if (ls->logname == NULL)
            return -ENOMEM;
    }
    return 0;
}

/* Free the splitter's buffers (NULL-safe). */
void cw_lines_free(cw_lines_t *ls)
{
    if (ls == NULL)
        return;
    free(ls->logname);
    ls->logname = NULL;
    cw_buf_free(&ls->line);
    ls->line_chars = ls->held_len = ls->utf8_len = 0;
}

/* True if bytes wait for more input or the flush. */
bool cw_lines_pending(const cw_lines_t *ls)
{
    /* A held "\b" only remembers a finished run: nothing is unfinished. */
    return ls->utf8_len > 0 || ls->line.len > 0 || (ls->held_len > 0 && ls->held[0] != '\b');
}

/* End the current line with '\n' and hand it over.  An empty line takes the
 * time of what ended it (time_if_empty). */
static int emit_line(cw_lines_t *ls, cw_outbuf_t *ob, double time_if_empty)
{
    double t = ls->line.len ? ls->line_time : time_if_empty;
    cw_out_entry_t *e = text_entry(ob, ls->stream, ls->logname);
    if (e == NULL)
        return -ENOMEM;
    int rc = entry_push_line(ob, e, ls->line.data, ls->line.len, t);
    if (rc < 0)
        return rc;
    ls->line.len = 0;
    ls->line_chars = 0;
    return 0;
}

/* Append n literal ASCII chars that arrived at t, cutting full lines. */
static int add_ascii(cw_lines_t *ls, cw_outbuf_t *ob, const uint8_t *p, size_t n, double t)
{
    size_t maxc = ls->max_line_length - 1;
    while (n > 0) {
        if (ls->line_chars >= maxc) {
            int rc = emit_line(ls, ob, t);
            if (rc < 0)
                return rc;
        }
        if (ls->line.len == 0)
            ls->line_time = t;
        size_t take = maxc - ls->line_chars;
        if (take > n)
            take = n;
        if (cw_buf_append(&ls->line, p, take) < 0)
            return -ENOMEM;
        ls->line_chars += take;
        p += take;
        n -= take;
    }
    return 0;
}

/* Append one literal code point (k bytes of UTF-8) that arrived at t. */
static int add_char(cw_lines_t *ls, cw_outbuf_t *ob, const uint8_t *s, size_t k, double t)
{
    if (ls->line_chars >= ls->max_line_length - 1) {
        int rc = emit_line(ls, ob, t);
        if (rc < 0)
            return rc;
    }
    if (ls->line.len == 0)
        ls->line_time = t;
    if (cw_buf_append(&ls->line, s, k) < 0)
        return -ENOMEM;
    ls->line_chars++;
    return 0;
}

enum { ESC_MORE, ESC_MATCH, ESC_NOMATCH };

/* Does c extend the held escape prefix, complete a match, or end it as text?
 * Mirrors the alternation \033\[u | \033\[[0-9]+;[0-9]+[Hf] | \033\[2J. */
static int esc_next(const cw_lines_t *ls, uint8_t c)
{
    const uint8_t *h = ls->held;
    size_t n = ls->held_len;
    bool digit = c >= '0' && c <= '9';
    int r;
    if (n == 1) {
        r = c == '[' ? ESC_MORE : ESC_NOMATCH;
    } else if (n == 2) {
        r = c == 'u' ? ESC_MATCH : digit ? ESC_MORE : ESC_NOMATCH;
    } else if (memchr(h + 2, ';', n - 2) == NULL) {
        if (digit || c == ';')
            r = ESC_MORE;
        else
            r = (c == 'J' && n == 3 && h[2] == '2') ? ESC_MATCH : ESC_NOMATCH;
    } else {
        if (digit)
            r = ESC_MORE;
        else
            r = ((c == 'H' || c == 'f') && h[n - 1] != ';') ? ESC_MATCH : ESC_NOMATCH;
    }
    if (r == ESC_MORE && n >= sizeof ls->held)
        r = ESC_NOMATCH; /* too long to be a real sequence: text */
    return r;
}

/* Apply the full rules to at least one byte at p[*pi]. */
static int slow_step(cw_lines_t *ls, cw_outbuf_t *ob, const uint8_t *p, size_t n, size_t *pi,
                     double now)
{
    size_t i = *pi;
    uint8_t c = p[i];
    int rc = 0;

    /* First let c decide the held tail; unless c is consumed by that, it is
     * then processed as if nothing had been held. */
    if (ls->held_len > 0) {
        if (ls->held[0] == '\b') {
            if (c == '\b') {
                while (i < n && p[i] == '\b')
                    i++;
                *pi = i;
                return 0;
            }
            ls->held_len = 0;
        } else if (ls->held[0] == '\r') {
            /* \r\n, or \r before any other char: either way one '\n'. */
            rc = emit_line(ls, ob, ls->held_time);
            if (rc < 0)
                return rc;
            ls->held_len = 0;
            if (c == '\n') {
                *pi = i + 1;
                return 0;
            }
        } else {
            int r = esc_next(ls, c);
            if (r == ESC_MORE) {
                ls->held[ls->held_len++] = c;
                *pi = i + 1;
                return 0;
            }
            if (r == ESC_MATCH) {
                rc = emit_line(ls, ob, ls->held_time);
                if (rc < 0)
                    return rc;
                ls->held_len = 0;
                *pi = i + 1;
                return 0;
            }
            rc = add_ascii(ls, ob, ls->held, ls->held_len, ls->held_time);
            if (rc < 0)
                return rc;
            ls->held_len = 0;
        }
    }

    if (is_plain(c)) {
        size_t j = plain_run_end(p, i, n);
        rc = add_ascii(ls, ob, p + i, j - i, now);
        i = j;
    } else if (c == '\n') {
        rc = emit_line(ls, ob, now);
        i++;
    } else if (c == '\r' || c == ESC) {
        ls->held[0] = c;
        ls->held_len = 1;
        ls->held_time = now;
        i++;
    } else if (c == '\b') {
        rc = emit_line(ls, ob, now);
        ls->held[0] = '\b';
        ls->held_len = 1;
        i++;
    } else {
        size_t k;
        int r = cw_utf8_seq(p + i, n - i, &k);
        if (r == CW_UTF8_SHORT) {
            /* Wait for the rest; the char will carry this arrival time. */
            memcpy(ls->utf8, p + i, n - i);
            ls->utf8_len = n - i;
            ls->held_time = now;
            i = n;
        } else {
            rc = add_char(ls, ob, r == CW_UTF8_VALID ? p + i : cw_utf8_fffd,
                          r == CW_UTF8_VALID ? k : 3, now);
            i += k;
        }
    }
    *pi = i;
    return rc;
}

/* At a line start with nothing held: take whole lines of valid UTF-8 without
 * CR/ESC/BS and at most max_line_length - 1 chars, and append them to ob in
 * one go.  *done = bytes taken (always whole lines); the caller goes on with
 * slow_step() from there. */
static int fast_lines(cw_lines_t *ls, cw_outbuf_t *ob, const uint8_t *p, size_t n, double now,
                      size_t *done)
{
    size_t maxc = ls->max_line_length - 1;
    size_t i = 0, start = 0, cont = 0, base = 0, n0 = 0;
    /* Local copies: stores through offs could alias e->nlines otherwise. */
    size_t nl = 0, cap = 0, *offs = NULL;
    cw_out_entry_t *e = NULL;
    int rc = 0;
    for (;;) {
        i += skip_printable(p + i, n - i);
        if (i >= n)
            break;
        uint8_t c = p[i];
        if (c == '\n') {
            if (i - start - cont > maxc)
                break; /* needs cutting */
            if (nl == cap) {
                if (e == NULL) {
                    e = text_entry(ob, ls->stream, ls->logname);
                    if (e == NULL) {
                        rc = -ENOMEM;
                        break;
                    }
                    base = e->data.len;
                    n0 = nl = e->nlines;
                    /* Room for the whole rest of the chunk: the copy below
                     * cannot fail. */
                    if (cw_buf_reserve(&e->data, n) < 0) {
                        rc = -ENOMEM;
                        break;
                    }
                }
                e->nlines = nl;
                if (lines_reserve(e, 1) < 0) {
                    rc = -ENOMEM;
                    break;
                }
                offs = e->offs;
                cap = e->lines_cap;
            }
            offs[nl++] = base + i;
            start = ++i;
            cont = 0;
        } else if (c >= 0x80) {
            /* Stay here through a run of non-ASCII text. */
            size_t k;
            do {
                if (cw_utf8_seq(p + i, n - i, &k) != CW_UTF8_VALID)
                    goto stop;
                i += k;
                cont += k - 1; /* continuation bytes are not chars */
            } while (i < n && p[i] >= 0x80);
        } else if (c == '\r' || c == ESC || c == '\b') {
            break;
        } else {
            i++; /* other control chars are text */
        }
    }
stop:
    if (e != NULL) {
        e->nlines = nl;
        if (nl == n0) {
            drop_if_empty(ob, e);
        } else {
            memcpy(e->data.data + base, p, start);
            e->data.len += start;
            for (size_t k = n0; k < nl; k++)
                e->times[k] = now;
            ob->size += start + 16 * (nl - n0);
            ob->bytes_text += start;
        }
    }
    *done = start;
    return rc;
}

/* Split a chunk: fast gear at line starts, careful gear elsewhere. */
int cw_lines_feed(cw_lines_t *ls, cw_outbuf_t *ob, const uint8_t *data, size_t len, double now)
{
    size_t i = 0;
    int rc;
    if (len == 0)
        return 0;
    if (ls->utf8_len > 0) {
        /* Finish the sequence the last chunk ended in. */
        uint8_t tmp[4];
        size_t have = ls->utf8_len, take = sizeof tmp - have, k;
        if (take > len)
            take = len;
        memcpy(tmp, ls->utf8, have);
        memcpy(tmp + have, data, take);
        int r = cw_utf8_seq(tmp, have + take, &k);
        if (r == CW_UTF8_SHORT) {
            memcpy(ls->utf8 + have, data, take); /* take == len here */
            ls->utf8_len += take;
            return 0;
        }
        rc = add_char(ls, ob, r == CW_UTF8_VALID ? tmp : cw_utf8_fffd, r == CW_UTF8_VALID ? k : 3,
                      ls->held_time);
        if (rc < 0)
            return rc;
        ls->utf8_len = 0;
        i = k - have; /* the stash is a valid prefix, so k >= have */
    }
    while (i < len) {
        if (ls->line.len == 0 && ls->held_len == 0) {
            size_t done;
            rc = fast_lines(ls, ob, data + i, len - i, now, &done);
            i += done;
            if (rc < 0)
                return rc;
            if (i == len)
                break;
        }
        rc = slow_step(ls, ob, data, len, &i, now);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* End of stream: decide what is held and close the last line. */
int cw_lines_flush(cw_lines_t *ls, cw_outbuf_t *ob, double now)
{
    int rc;
    if (ls->utf8_len > 0) {
        rc = add_char(ls, ob, cw_utf8_fffd, 3, ls->held_time);
        if (rc < 0)
            return rc;
        ls->utf8_len = 0;
    }
    if (ls->held_len > 0) {
        if (ls->held[0] == '\r') {
            /* The stock flush appends '\n': "\r\n" is one newline. */
            rc = emit_line(ls, ob, ls->held_time);
            if (rc < 0)
                return rc;
            ls->held_len = 0;
            return 0;
        }
        if (ls->held[0] == ESC) {
            rc = add_ascii(ls, ob, ls->held, ls->held_len, ls->held_time);
            if (rc < 0)
                return rc;
        }
        ls->held_len = 0;
    }
    if (ls->line.len > 0)
        return emit_line(ls, ob, now);
    return 0;
}
