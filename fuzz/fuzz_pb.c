/* libFuzzer target for the Perspective Broker session (src/proto/pb.c).
 *
 * Input: 6 control bytes, then the peer's byte stream.
 *   bytes 0-3  seed for splitting the stream into cw_pb_feed() calls
 *   byte 4     bit 0: role (0 = worker fed hostile master bytes, 1 = master fed worker bytes)
 *              bit 1: put the real opening in front (worker: offer, version, challenge;
 *                     master: choice, version, login), so the fuzzer starts past the login
 *              bit 2: small limits (depth, message size, waiting calls, references, exports)
 *              bit 3: the master role refuses the login
 *   byte 5     the event number (1-based) at which the owner returns an error (0 = never)
 * The stream is fed whole and in pieces: the two runs must send the same bytes, report the same
 * events and end the same way.  Whatever the peer sends, what the session sends must be valid
 * PB a stock peer accepts (reference §11.4): well-formed banana with VOCAB only after the
 * dialect, the choice/offer and ("version" 6) first, calls of 7 fields, answers and errors only
 * for calls the peer made with answerRequired (at most once per call), decrefs never more often
 * than the peer sent that reference.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cworker/banana.h"
#include "cworker/cw.h"
#include "cworker/jelly.h"
#include "cworker/pb.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c))                                                                                  \
            abort();                                                                               \
    } while (0)

static void mix(uint64_t *h, const void *p, size_t n)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++) {
        *h ^= b[i];
        *h *= 0x100000001B3u;
    }
}

/* ---- a small multiset of int64 (bounded by the input size) ---- */

typedef struct counts {
    int64_t *key;
    long *n;
    size_t len, cap;
} counts_t;

static long *counts_at(counts_t *c, int64_t k)
{
    for (size_t i = 0; i < c->len; i++)
        if (c->key[i] == k)
            return &c->n[i];
    if (c->len == c->cap) {
        c->cap = c->cap ? c->cap * 2 : 16;
        c->key = realloc(c->key, c->cap * sizeof(*c->key));
        c->n = realloc(c->n, c->cap * sizeof(*c->n));
        CHECK(c->key && c->n);
    }
    c->key[c->len] = k;
    c->n[c->len] = 0;
    return &c->n[c->len++];
}

static void counts_free(counts_t *c)
{
    free(c->key);
    free(c->n);
}

/* ---- the owner ---- */

#define MAX_BUILDERS 16

typedef struct owner {
    cw_pb_t *pb;
    cw_buf_t out;
    bool master;
    bool refuse_login;
    size_t fail_at, nevents;
    uint64_t digest;
    struct {
        char name[32];
        int64_t luid;
    } builders[MAX_BUILDERS];
    size_t nbuilders;
    int persp_obj, cmd_obj;
    int64_t cmds[64]; /* command references waiting for complete's answer; ctx points here */
    size_t ncmds;
} owner_t;

static void ev_mix(owner_t *o, uint8_t t, int64_t a, const void *p, size_t n)
{
    mix(&o->digest, &t, 1);
    mix(&o->digest, &a, sizeof(a));
    mix(&o->digest, p, n);
}

/* setBuilderList: [(name, dir), ...] -> {name: remote}; luids kept by name. */
static void set_builders(owner_t *o, int64_t reqid, const cw_jelly_t *args)
{
    size_t n, m = 0;
    const cw_jelly_t *a = cw_jelly_items(args, &n);
    if (n != 1 || (a[0].type != CW_JELLY_LIST && a[0].type != CW_JELLY_TUPLE)) {
        cw_jelly_failure_desc_t f = {.type = "builtins.TypeError", .value = "bad builder list"};
        CHECK(cw_pb_answer_error(o->pb, reqid, &f) == 0);
        return;
    }
    const cw_jelly_t *list = cw_jelly_items(&a[0], &m);
    if (m > MAX_BUILDERS)
        m = MAX_BUILDERS;
    int64_t keep[MAX_BUILDERS];
    char names[MAX_BUILDERS][32];
    size_t nkeep = 0;
    for (size_t i = 0; i < m; i++) {
        size_t k;
        const cw_jelly_t *t = cw_jelly_items(&list[i], &k);
        cw_str_t name;
        if (k != 2 || !cw_jelly_text(&t[0], &name))
            continue;
        char nm[32];
        snprintf(nm, sizeof(nm), "%.*s", (int)(name.len < 31 ? name.len : 31), name.ptr);
        bool dup = false;
        for (size_t j = 0; j < nkeep; j++)
            dup |= strcmp(names[j], nm) == 0;
        if (dup)
            continue;
        int64_t luid = 0;
        for (size_t j = 0; j < o->nbuilders; j++)
            if (strcmp(o->builders[j].name, nm) == 0)
                luid = o->builders[j].luid;
        if (luid == 0 && cw_pb_export(o->pb, o, true, &luid) != 0)
            continue;
        keep[nkeep] = luid;
        memcpy(names[nkeep], nm, sizeof(nm));
        nkeep++;
    }
    for (size_t j = 0; j < o->nbuilders; j++) {
        bool listed = false;
        for (size_t i = 0; i < nkeep; i++)
            listed |= keep[i] == o->builders[j].luid;
        if (!listed)
            CHECK(cw_pb_unexport(o->pb, o->builders[j].luid) == 0);
    }
    for (size_t i = 0; i < nkeep; i++) {
        memcpy(o->builders[i].name, names[i], 32);
        o->builders[i].luid = keep[i];
    }
    o->nbuilders = nkeep;
    cw_jelly_enc_t e;
    CHECK(cw_pb_answer_begin(o->pb, reqid, &e) == 0);
    cw_jelly_dict(&e, nkeep);
    for (size_t i = 0; i < nkeep; i++) {
        cw_jelly_unicode_lossy(&e, names[i], strlen(names[i]));
        cw_jelly_remote(&e, keep[i]);
    }
    CHECK(cw_pb_answer_end(o->pb, &e) == 0);
}

/* startCommand(cmdref, id, name, args): answer, then update and complete on cmdref. */
static void start_command(owner_t *o, int64_t reqid, const cw_jelly_t *args)
{
    size_t n;
    const cw_jelly_t *a = cw_jelly_items(args, &n);
    if (n != 4 || a[0].type != CW_JELLY_REMOTE || a[3].type != CW_JELLY_DICT) {
        cw_jelly_failure_desc_t f = {.type = "builtins.TypeError", .value = "bad startCommand"};
        CHECK(cw_pb_answer_error(o->pb, reqid, &f) == 0);
        CHECK(cw_pb_decref_value(o->pb, args) == 0);
        return;
    }
    int64_t cmd = a[0].u.luid;
    CHECK(cw_pb_refs_held(o->pb, cmd) > 0);
    CHECK(cw_pb_answer_none(o->pb, reqid) == 0);
    cw_jelly_enc_t e;
    CHECK(cw_pb_call_begin(o->pb, cmd, "update", 1, NULL, &e, NULL) == 0);
    cw_jelly_list(&e, 1);
    cw_jelly_list(&e, 2);
    cw_jelly_dict(&e, 1);
    cw_jelly_str(&e, "rc");
    cw_jelly_int64(&e, 0);
    cw_jelly_int64(&e, 0);
    cw_jelly_dict(&e, 0);
    CHECK(cw_pb_call_end(o->pb, &e) == 0);
    int64_t *slot = &o->cmds[o->ncmds++ % 64];
    *slot = cmd;
    CHECK(cw_pb_call_begin(o->pb, cmd, "complete", 1, slot, &e, NULL) == 0);
    cw_jelly_none(&e);
    cw_jelly_dict(&e, 0);
    CHECK(cw_pb_call_end(o->pb, &e) == 0);
    /* every other reference in the arguments (writer, reader) is given back now, the command
     * reference after complete is answered */
    for (size_t i = 1; i < n; i++)
        CHECK(cw_pb_decref_value(o->pb, &a[i]) == 0);
}

static void worker_call(owner_t *o, const cw_pb_event_t *ev)
{
    cw_pb_t *pb = o->pb;
    int64_t id = ev->u.call.reqid;
    cw_str_t m = ev->u.call.method;
    if (!ev->u.call.answer_required) {
        if (!cw_pb_answer_pending(pb, id))
            CHECK(cw_pb_answer_none(pb, id) == CW_EBADARG);
        CHECK(cw_pb_decref_value(pb, ev->u.call.args) == 0);
        return;
    }
    if (cw_str_eq(m, "setBuilderList") && ev->u.call.target == CW_PB_BOT_LUID) {
        set_builders(o, id, ev->u.call.args);
    } else if (cw_str_eq(m, "startCommand") && ev->u.call.target != CW_PB_BOT_LUID) {
        start_command(o, id, ev->u.call.args);
        return;
    } else if (cw_str_eq(m, "getWorkerInfo")) {
        cw_jelly_enc_t e;
        CHECK(cw_pb_answer_begin(pb, id, &e) == 0);
        cw_jelly_dict(&e, 2);
        cw_jelly_str(&e, "version");
        cw_jelly_str(&e, "fuzz");
        cw_jelly_str(&e, "numcpus");
        cw_jelly_int64(&e, 1);
        CHECK(cw_pb_answer_end(pb, &e) == 0);
    } else if (cw_str_eq(m, "print") || cw_str_eq(m, "startBuild") || cw_str_eq(m, "shutdown") ||
               cw_str_eq(m, "interruptCommand")) {
        CHECK(cw_pb_answer_none(pb, id) == 0);
    } else {
        CHECK(cw_pb_answer_no_such_method(pb, id, m) == 0);
    }
    /* nothing kept: give back every reference the call carried */
    CHECK(cw_pb_decref_value(pb, ev->u.call.args) == 0);
    CHECK(cw_pb_decref_value(pb, ev->u.call.kwargs) == 0);
}

static int on_event(void *ud, cw_pb_t *pb, const cw_pb_event_t *ev)
{
    owner_t *o = ud;
    CHECK(pb == o->pb);
    o->nevents++;
    switch (ev->type) {
    case CW_PB_EV_LOGGED_IN:
        CHECK(!o->master);
        ev_mix(o, 1, ev->u.logged_in.perspective, NULL, 0);
        if (cw_pb_refs_held(pb, ev->u.logged_in.perspective) > 0)
            CHECK(cw_pb_call0(pb, ev->u.logged_in.perspective, "keepalive", NULL, NULL) == 0);
        break;
    case CW_PB_EV_LOGIN_FAILED:
        ev_mix(o, 2, ev->u.login_failed.kind, ev->u.login_failed.text,
               strlen(ev->u.login_failed.text));
        break;
    case CW_PB_EV_LOGIN: {
        CHECK(o->master);
        ev_mix(o, 3, ev->u.login.reqid, ev->u.login.username.ptr, ev->u.login.username.len);
        bool ok = cw_pb_check_response(ev->u.login.challenge, ev->u.login.challenge_len,
                                       ev->u.login.response, ev->u.login.response_len, "pass", 4);
        if (!ok || o->refuse_login) {
            CHECK(cw_pb_login_reject(pb, ev->u.login.reqid,
                                     ok ? CW_PB_LOGIN_DUPLICATE : CW_PB_LOGIN_UNAUTHORIZED,
                                     NULL) == 0);
        } else {
            int64_t p;
            int rc = cw_pb_login_accept(pb, ev->u.login.reqid, &o->persp_obj, &p);
            CHECK(rc == 0 || rc == CW_ETOOBIG);
            if (rc == 0 && cw_pb_refs_held(pb, ev->u.login.mind) > 0)
                CHECK(cw_pb_call0(pb, ev->u.login.mind, "getWorkerInfo", NULL, NULL) == 0);
        }
        break;
    }
    case CW_PB_EV_CALL:
        CHECK(ev->u.call.args->type == CW_JELLY_TUPLE || ev->u.call.args->type == CW_JELLY_LIST);
        CHECK(ev->u.call.kwargs->type == CW_JELLY_DICT);
        ev_mix(o, 4, ev->u.call.reqid, ev->u.call.method.ptr, ev->u.call.method.len);
        if (o->master) {
            if (ev->u.call.answer_required)
                CHECK(cw_pb_answer_no_such_method(pb, ev->u.call.reqid, ev->u.call.method) == 0);
            CHECK(cw_pb_decref_value(pb, ev->u.call.args) == 0);
        } else {
            worker_call(o, ev);
        }
        break;
    case CW_PB_EV_ANSWER:
    case CW_PB_EV_ERROR: {
        bool answer = ev->type == CW_PB_EV_ANSWER;
        void *ctx = answer ? ev->u.answer.ctx : ev->u.error.ctx;
        const cw_jelly_t *v = answer ? ev->u.answer.value : ev->u.error.value;
        ev_mix(o, answer ? 5 : 6, answer ? ev->u.answer.reqid : ev->u.error.reqid,
               answer ? NULL : ev->u.error.fail_value.ptr, answer ? 0 : ev->u.error.fail_value.len);
        if (v)
            CHECK(cw_pb_decref_value(pb, v) == 0);
        /* complete answered: the command reference goes back (once; the slot may have been
         * reused by a later command, so only while a reference is held) */
        int64_t *slot = ctx;
        if (slot >= o->cmds && slot < o->cmds + 64 && !(answer ? false : ev->u.error.lost) &&
            cw_pb_refs_held(pb, *slot) > 0)
            CHECK(cw_pb_decref(pb, *slot) == 0);
        break;
    }
    case CW_PB_EV_RELEASED:
        ev_mix(o, 7, ev->u.released.luid, NULL, 0);
        break;
    case CW_PB_EV_NOTICE:
        ev_mix(o, 8, 0, ev->u.notice.text, strlen(ev->u.notice.text));
        break;
    case CW_PB_EV_PROTOCOL_ERROR:
        ev_mix(o, 9, ev->u.notice.code, ev->u.notice.text, strlen(ev->u.notice.text));
        break;
    }
    return o->nevents == o->fail_at ? -EIO : 0;
}

static uint64_t next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

typedef struct result {
    int rc, close_rc;
    cw_pb_state_t state;
    uint64_t digest;
    cw_buf_t out;
} result_t;

static void run(result_t *r, bool master, bool refuse, bool small, size_t fail_at,
                const uint8_t *in, size_t len, uint64_t seed)
{
    owner_t o = {.master = master, .refuse_login = refuse, .fail_at = fail_at};
    o.digest = 0xCBF29CE484222325u;
    uint8_t challenge[16] = "0123456789abcdef";
    cw_pb_config_t cfg = {
        .role = master ? CW_PB_MASTER : CW_PB_WORKER,
        .out = &o.out,
        .on_event = on_event,
        .ud = &o,
        .username = "w1",
        .username_len = 2,
        .password = "pass",
        .password_len = 4,
        .bot_ud = &o,
        .challenge = challenge,
        .challenge_len = 16,
    };
    if (small) {
        cfg.limits = (cw_banana_limits_t){.max_depth = 16, .max_message = 4096, .max_nodes = 300};
        cfg.max_pending = 4;
        cfg.max_remote_refs = 8;
        cfg.max_exports = 8;
    }
    CHECK(cw_pb_new(&o.pb, &cfg) == 0);
    CHECK(cw_pb_start(o.pb) == 0);
    uint64_t s = seed | 1;
    size_t pos = 0;
    int rc = 0;
    while (pos < len && rc == 0) {
        size_t n = len - pos;
        if (seed) {
            uint64_t x = next(&s);
            size_t cap = (x & 3) == 0 ? 1 : (x & 3) == 1 ? 3 : (x & 3) == 2 ? 17 : 4096;
            size_t want = (size_t)((x >> 8) % cap) + 1;
            if (want < n)
                n = want;
        }
        uint8_t *piece = malloc(n);
        CHECK(piece != NULL);
        memcpy(piece, in + pos, n);
        rc = cw_pb_feed(o.pb, piece, n);
        free(piece);
        pos += n;
    }
    r->rc = rc;
    if (rc != 0)
        CHECK(cw_pb_state(o.pb) == CW_PB_ST_CLOSED);
    r->state = cw_pb_state(o.pb);
    r->close_rc = cw_pb_close(o.pb);
    CHECK(cw_pb_state(o.pb) == CW_PB_ST_CLOSED);
    CHECK(cw_pb_calls_waiting(o.pb) == 0);
    r->digest = o.digest;
    r->out = o.out;
    cw_pb_free(o.pb);
}

/* ---- checking what the session sent ---- */

/* Count ("remote" N) lists anywhere in a tree (an upper bound of references sent). */
static void count_remotes(const cw_banana_node_t *n, counts_t *c)
{
    if (n->type != CW_BANANA_LIST)
        return;
    if (n->u.list.n == 2 && n->u.list.items[0].type == CW_BANANA_STRING &&
        cw_str_eq(n->u.list.items[0].u.s, "remote") && n->u.list.items[1].type == CW_BANANA_INT &&
        !(n->u.list.items[1].flags & CW_BANANA_F_BIG))
        ++*counts_at(c, n->u.list.items[1].u.i);
    for (size_t i = 0; i < n->u.list.n; i++)
        count_remotes(&n->u.list.items[i], c);
}

/* What the peer sent: calls wanting an answer (by id) and references (by luid). */
static void scan_input(const uint8_t *in, size_t len, counts_t *calls, counts_t *remotes)
{
    cw_banana_dec_t d;
    cw_banana_dec_init(&d, NULL);
    size_t pos = 0;
    while (pos < len) {
        size_t used;
        cw_banana_msg_t *m;
        if (cw_banana_dec_feed(&d, in + pos, len - pos, &used, &m) < 0 || m == NULL)
            break;
        pos += used;
        cw_banana_dec_set_vocab(&d, true);
        const cw_banana_node_t *r = m->root;
        count_remotes(r, remotes);
        const cw_banana_node_t *f = r->u.list.items;
        if (r->type == CW_BANANA_LIST && r->u.list.n == 7 && f[0].type == CW_BANANA_STRING &&
            (cw_str_eq(f[0].u.s, "message") || cw_str_eq(f[0].u.s, "cachemessage")) &&
            f[1].type == CW_BANANA_INT && !(f[1].flags & CW_BANANA_F_BIG) &&
            f[4].type == CW_BANANA_INT && !(f[4].flags & CW_BANANA_F_BIG) && f[4].u.i != 0)
            ++*counts_at(calls, f[1].u.i);
        cw_banana_msg_free(m);
    }
    cw_banana_dec_free(&d);
}

static void check_output(const cw_buf_t *out, bool master, const uint8_t *in, size_t len)
{
    counts_t calls = {0}, remotes = {0}, answered = {0}, decrefs = {0};
    scan_input(in, len, &calls, &remotes);
    cw_banana_dec_t d;
    cw_banana_dec_init(&d, NULL);
    size_t pos = 0, index = 0;
    bool vocab = false;
    while (pos < out->len) {
        size_t used;
        cw_banana_msg_t *m;
        CHECK(cw_banana_dec_feed(&d, out->data + pos, out->len - pos, &used, &m) == 0);
        CHECK(m != NULL); /* never a partial message */
        pos += used;
        const cw_banana_node_t *r = m->root;
        const cw_banana_node_t *f = r->u.list.items;
        if (index == 0) {
            if (master) {
                CHECK(r->type == CW_BANANA_LIST && r->u.list.n == 2); /* the offer */
                vocab = true; /* until the version shows which dialect was chosen */
            } else {
                CHECK(r->type == CW_BANANA_STRING && cw_str_eq(r->u.s, "pb"));
                vocab = true;
            }
        } else if (index == 1 && !master) {
            CHECK(r->type == CW_BANANA_LIST && r->u.list.n == 2 && cw_str_eq(f[0].u.s, "version"));
            CHECK(f[1].type == CW_BANANA_INT && f[1].u.i == 6);
        } else {
            CHECK(r->type == CW_BANANA_LIST && r->u.list.n >= 2);
            CHECK(f[0].type == CW_BANANA_STRING);
            cw_str_t w = f[0].u.s;
            if (cw_str_eq(w, "version")) {
                CHECK(master && index == 1 && f[1].u.i == 6);
                /* the master speaks VOCAB once the worker chose pb; a "none" choice never */
                vocab = f[0].flags & CW_BANANA_F_VOCAB;
            } else if (cw_str_eq(w, "message")) {
                CHECK(r->u.list.n == 7);
                CHECK(f[1].type == CW_BANANA_INT && f[3].type == CW_BANANA_STRING);
                CHECK(f[4].type == CW_BANANA_INT && f[4].u.i == 1);
                CHECK(f[2].type == CW_BANANA_INT ||
                      (f[2].type == CW_BANANA_STRING && cw_str_eq(f[2].u.s, "root")));
                cw_jelly_doc_t *doc = cw_jelly_doc_new(NULL);
                cw_jelly_t v;
                cw_jelly_err_t err;
                CHECK(cw_jelly_decode(doc, &f[5], NULL, &v, &err) == 0);
                CHECK(v.type == CW_JELLY_TUPLE);
                CHECK(cw_jelly_decode(doc, &f[6], NULL, &v, &err) == 0);
                CHECK(v.type == CW_JELLY_DICT);
                cw_jelly_doc_free(doc);
            } else if (cw_str_eq(w, "answer") || cw_str_eq(w, "error")) {
                CHECK(r->u.list.n == 3 && f[1].type == CW_BANANA_INT);
                long *a = counts_at(&answered, f[1].u.i);
                CHECK(++*a <= *counts_at(&calls, f[1].u.i));
                cw_jelly_doc_t *doc = cw_jelly_doc_new(NULL);
                cw_jelly_t v;
                cw_jelly_err_t err;
                CHECK(cw_jelly_decode(doc, &f[2], NULL, &v, &err) == 0);
                if (cw_str_eq(w, "error"))
                    CHECK(v.type == CW_JELLY_FAILURE);
                cw_jelly_doc_free(doc);
            } else if (cw_str_eq(w, "decref")) {
                CHECK(r->u.list.n == 2 && f[1].type == CW_BANANA_INT);
                long *n = counts_at(&decrefs, f[1].u.i);
                CHECK(++*n <= *counts_at(&remotes, f[1].u.i));
            } else {
                abort(); /* never an unknown word, never didNotUnderstand */
            }
        }
        /* VOCAB only after the choice */
        cw_banana_dec_set_vocab(&d, vocab);
        cw_banana_msg_free(m);
        index++;
    }
    CHECK(!cw_banana_dec_partial(&d));
    cw_banana_dec_free(&d);
    counts_free(&calls);
    counts_free(&remotes);
    counts_free(&answered);
    counts_free(&decrefs);
}

/* The opening a stock peer sends (reference §2.4, §5.1). */
static const uint8_t master_opening[] = {
    0x02, 0x80, 0x02, 0x82, 0x70, 0x62, 0x04, 0x82, 0x6e, 0x6f, 0x6e, 0x65, /* ("pb" "none") */
    0x02, 0x80, 0x13, 0x87, 0x06, 0x81,                                     /* ("version" 6) */
    0x03, 0x80, 0x1b, 0x87, 0x01, 0x81, 0x03, 0x80, 0x0b, 0x87, 0x10, 0x82,
    0x4b, 0xd1, 0x16, 0x4b, 0xe7, 0x9c, 0x24, 0x96, 0xc2, 0x2f, 0x8c, 0x1f,
    0x75, 0x61, 0xb6, 0xc2, 0x02, 0x80, 0x10, 0x87, 0x01, 0x81, /* ("answer" 1 ("tuple" challenge
                                                                   ("remote" 1))) */
};
static const uint8_t worker_opening[] = {
    0x02, 0x82, 0x70, 0x62,                         /* "pb" */
    0x02, 0x80, 0x13, 0x87, 0x06, 0x81,             /* ("version" 6) */
    0x07, 0x80, 0x1a, 0x87, 0x01, 0x81, 0x04, 0x82, /* ("message" 1 "root" "login" 1 */
    0x72, 0x6f, 0x6f, 0x74, 0x14, 0x87, 0x01, 0x81, 0x02, 0x80,
    0x0b, 0x87, 0x02, 0x82, 0x77, 0x31, 0x01, 0x80, 0x05, 0x87, /* ("tuple" "w1") ("dictionary")) */
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 6)
        return 0;
    uint64_t seed = (uint64_t)data[0] | (uint64_t)data[1] << 8 | (uint64_t)data[2] << 16 |
                    (uint64_t)data[3] << 24 | (uint64_t)1 << 32;
    bool master = data[4] & 1, opening = data[4] & 2, small = data[4] & 4, refuse = data[4] & 8;
    size_t fail_at = data[5];
    data += 6;
    size -= 6;

    const uint8_t *open = master ? worker_opening : master_opening;
    size_t open_len = opening ? (master ? sizeof(worker_opening) : sizeof(master_opening)) : 0;
    uint8_t *in = malloc(open_len + size + 1);
    CHECK(in != NULL);
    memcpy(in, open, open_len);
    memcpy(in + open_len, data, size);
    size_t len = open_len + size;

    result_t whole = {0}, split = {0};
    run(&whole, master, refuse, small, fail_at, in, len, 0);
    run(&split, master, refuse, small, fail_at, in, len, seed);
    CHECK(whole.rc == split.rc);
    CHECK(whole.close_rc == split.close_rc);
    CHECK(whole.state == split.state);
    CHECK(whole.digest == split.digest);
    CHECK(whole.out.len == split.out.len);
    CHECK(whole.out.len == 0 || memcmp(whole.out.data, split.out.data, whole.out.len) == 0);
    check_output(&whole.out, master, in, len);
    cw_buf_free(&whole.out);
    cw_buf_free(&split.out);
    free(in);
    return 0;
}
