/* Unit tests for the Perspective Broker session (src/proto/pb.c) and MD5 (src/proto/md5.c).
 *
 * Byte-exact checks against the captured stock traffic (reference §2.4, §5.1, §7), the attach
 * sequence with calls before the login completes (§11.2 item 5), builder luids across a
 * reconfig (§11.2 item 6), the hostile inputs of §11.3 that reach this layer, what §11.4 says
 * must never be sent, and whole worker <-> master sessions in memory, pumped whole and in random
 * splits with identical transcripts. */
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <openssl/evp.h>

#include "cworker/banana.h"
#include "cworker/cw.h"
#include "cworker/jelly.h"
#include "cworker/md5.h"
#include "cworker/pb.h"

/* ---- helpers ---- */

static cw_buf_t hex(const char *s)
{
    cw_buf_t b = CW_BUF_INIT;
    unsigned v = 0;
    int half = 0;
    for (; *s; s++) {
        int d;
        if (*s >= '0' && *s <= '9')
            d = *s - '0';
        else if (*s >= 'a' && *s <= 'f')
            d = *s - 'a' + 10;
        else
            continue;
        v = v << 4 | (unsigned)d;
        if (++half == 2) {
            uint8_t c = (uint8_t)v;
            assert_int_equal(cw_buf_append(&b, &c, 1), 0);
            half = 0;
            v = 0;
        }
    }
    return b;
}

static void assert_bytes(const uint8_t *p, size_t len, const char *want_hex)
{
    cw_buf_t w = hex(want_hex);
    if (len != w.len || (w.len && memcmp(p, w.data, w.len) != 0)) {
        fprintf(stderr, "got:  ");
        for (size_t i = 0; i < len; i++)
            fprintf(stderr, "%02x ", p[i]);
        fprintf(stderr, "\nwant: %s\n", want_hex);
        fail();
    }
    cw_buf_free(&w);
}

static uint64_t xs(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* Text form of a jelly value for transcripts. */
static void jdump(cw_buf_t *o, const cw_jelly_t *v)
{
    if (v == NULL) {
        cw_buf_append_str(o, "NULL");
        return;
    }
    switch (v->type) {
    case CW_JELLY_NONE:
        cw_buf_append_str(o, "None");
        break;
    case CW_JELLY_BOOL:
        cw_buf_append_str(o, v->u.b ? "True" : "False");
        break;
    case CW_JELLY_INT:
        cw_buf_printf(o, "%lld", (long long)v->u.i);
        break;
    case CW_JELLY_BIGINT:
        cw_buf_printf(o, "<big %zu digits>", v->u.big.ndigits);
        break;
    case CW_JELLY_FLOAT:
        cw_buf_printf(o, "%g", v->u.f);
        break;
    case CW_JELLY_BYTES:
    case CW_JELLY_UNICODE:
        cw_buf_append_str(o, v->type == CW_JELLY_BYTES ? "b'" : "'");
        for (size_t i = 0; i < v->u.s.len; i++) {
            unsigned char c = (unsigned char)v->u.s.ptr[i];
            if (c >= 0x20 && c < 0x7f && c != '\'')
                cw_buf_printf(o, "%c", c);
            else
                cw_buf_printf(o, "\\x%02x", c);
        }
        cw_buf_append_str(o, "'");
        break;
    case CW_JELLY_LIST:
    case CW_JELLY_TUPLE:
        cw_buf_append_str(o, v->type == CW_JELLY_LIST ? "[" : "(");
        for (size_t i = 0; i < v->u.seq.n; i++) {
            if (i)
                cw_buf_append_str(o, ", ");
            jdump(o, &v->u.seq.items[i]);
        }
        cw_buf_append_str(o, v->type == CW_JELLY_LIST ? "]" : ")");
        break;
    case CW_JELLY_DICT:
        cw_buf_append_str(o, "{");
        for (size_t i = 0; i < v->u.dict.n; i++) {
            if (i)
                cw_buf_append_str(o, ", ");
            jdump(o, &v->u.dict.pairs[i].key);
            cw_buf_append_str(o, ": ");
            jdump(o, &v->u.dict.pairs[i].value);
        }
        cw_buf_append_str(o, "}");
        break;
    case CW_JELLY_REMOTE:
        cw_buf_printf(o, "<remote %lld>", (long long)v->u.luid);
        break;
    case CW_JELLY_FAILURE:
        cw_buf_append_str(o, "<failure ");
        cw_buf_append(o, v->u.failure.type.ptr, v->u.failure.type.len);
        cw_buf_append_str(o, ": ");
        cw_buf_append(o, v->u.failure.value.ptr, v->u.failure.value.len);
        cw_buf_append_str(o, ">");
        break;
    }
}

/* Decode a whole byte stream into one text line per message, jelly-decoded.  vocab false: VOCAB
 * is allowed from the second message on (a stream that starts with the dialect choice). */
static char *transcript(const uint8_t *p, size_t len, bool vocab)
{
    cw_buf_t o = CW_BUF_INIT;
    cw_banana_dec_t d;
    cw_banana_dec_init(&d, NULL);
    cw_banana_dec_set_vocab(&d, vocab);
    size_t pos = 0;
    while (pos < len) {
        size_t used;
        cw_banana_msg_t *m;
        assert_int_equal(cw_banana_dec_feed(&d, p + pos, len - pos, &used, &m), 0);
        pos += used;
        if (m == NULL)
            break;
        cw_banana_dec_set_vocab(&d, true);
        cw_jelly_doc_t *doc = cw_jelly_doc_new(m);
        cw_jelly_t v;
        cw_jelly_err_t err;
        /* the envelope is a plain list; its jelly parts are decoded one by one */
        const cw_banana_node_t *r = m->root;
        if (r->type != CW_BANANA_LIST) {
            assert_int_equal(cw_jelly_decode(doc, r, NULL, &v, &err), 0);
            jdump(&o, &v);
        } else {
            cw_buf_append_str(&o, "(");
            for (size_t i = 0; i < r->u.list.n; i++) {
                if (i)
                    cw_buf_append_str(&o, " ");
                int rc = cw_jelly_decode(doc, &r->u.list.items[i], NULL, &v, &err);
                if (rc == 0)
                    jdump(&o, &v);
                else
                    cw_buf_append_str(&o, "<plain list>");
            }
            cw_buf_append_str(&o, ")");
        }
        cw_buf_append_str(&o, "\n");
        cw_jelly_doc_free(doc);
    }
    assert_int_equal(pos, len);
    cw_banana_dec_free(&d);
    cw_buf_append(&o, "", 1);
    return (char *)o.data;
}

/* ---- MD5 and the login hash ---- */

static void md5hex(const char *in, size_t len, char out[33])
{
    uint8_t d[16];
    cw_md5(in, len, d);
    for (int i = 0; i < 16; i++)
        sprintf(out + 2 * i, "%02x", d[i]);
}

static void test_md5_rfc1321(void **state)
{
    (void)state;
    static const struct {
        const char *in, *out;
    } v[] = {
        {"", "d41d8cd98f00b204e9800998ecf8427e"},
        {"a", "0cc175b9c0f1b6a831c399e269772661"},
        {"abc", "900150983cd24fb0d6963f7d28e17f72"},
        {"message digest", "f96b697d7cb7938d525a2f31aaf161d0"},
        {"abcdefghijklmnopqrstuvwxyz", "c3fcd3d76192e4007dfb496cca67e13b"},
        {"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
         "d174ab98d277d9f5a5611c2c9f419d9f"},
        {"1234567890123456789012345678901234567890123456789012345678901234567890123456789"
         "0",
         "57edf4a22be3c955ac49da2e2107b67a"},
        {"pass", "1a1dc91c907325c69271ddf0c944bc72"}, /* reference §5.2 */
    };
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        char h[33];
        md5hex(v[i].in, strlen(v[i].in), h);
        assert_string_equal(h, v[i].out);
    }
}

static void test_md5_vs_libcrypto(void **state)
{
    (void)state;
    /* every length around the block and padding boundaries, fed in random pieces */
    uint64_t s = 99;
    uint8_t buf[300];
    for (size_t i = 0; i < sizeof(buf); i++)
        buf[i] = (uint8_t)xs(&s);
    for (size_t len = 0; len <= sizeof(buf); len++) {
        uint8_t want[16], got[16];
        unsigned int wl = 0;
        assert_int_equal(EVP_Digest(buf, len, want, &wl, EVP_md5(), NULL), 1);
        cw_md5_t m;
        cw_md5_init(&m);
        size_t pos = 0;
        while (pos < len) {
            size_t n = (size_t)(xs(&s) % 70);
            if (n > len - pos)
                n = len - pos;
            cw_md5_update(&m, buf + pos, n);
            pos += n;
        }
        cw_md5_final(&m, got);
        assert_memory_equal(got, want, 16);
    }
}

static void test_login_response_known_answer(void **state)
{
    (void)state;
    /* reference §5.2 / §11.2 item 4 */
    cw_buf_t ch = hex("4bd1164be79c2496c22f8c1f7561b6c2");
    uint8_t r[16];
    cw_pb_response("pass", 4, ch.data, ch.len, r);
    assert_bytes(r, 16, "254165b4d782390e7047e648cf6fd7aa");
    assert_true(cw_pb_check_response(ch.data, ch.len, r, 16, "pass", 4));
    assert_false(cw_pb_check_response(ch.data, ch.len, r, 16, "pasS", 4));
    assert_false(cw_pb_check_response(ch.data, ch.len, r, 15, "pass", 4));
    r[15] ^= 1;
    assert_false(cw_pb_check_response(ch.data, ch.len, r, 16, "pass", 4));
    cw_buf_free(&ch);
}

/* ---- a scripted owner for either role ---- */

#define MAX_BUILDERS 32

typedef struct builder {
    char name[64];
    int64_t luid;
} builder_t;

enum ctx_kind {
    CTX_NONE,
    CTX_PRINT,
    CTX_INFO,
    CTX_BLIST,
    CTX_UPDATE,
    CTX_COMPLETE,
    CTX_KEEPALIVE,
    CTX_OTHER,
};

static char ctx_tags[CTX_OTHER + 1];
#define CTX(k)       ((void *)&ctx_tags[k])
#define CTX_IS(p, k) ((p) == (void *)&ctx_tags[k])

typedef struct peer {
    cw_pb_t *pb;
    cw_buf_t out;
    cw_buf_t log; /* transcript of events */
    bool master;
    int owner_rc; /* what on_event returns (0 normally) */
    size_t nevents[CW_PB_EV_PROTOCOL_ERROR + 1];

    /* worker */
    builder_t builders[MAX_BUILDERS];
    size_t nbuilders;
    int64_t cmdref;
    bool keepalive_on_login;
    bool try_answer_unrequired; /* answer calls that want no answer (must fail) */
    int answer_unrequired_rc;

    /* master */
    const char *password;
    bool duplicate;
    int64_t login_reqid, mind, persp;
    builder_t mbuilders[MAX_BUILDERS]; /* names -> worker luids, from setBuilderList */
    size_t nmbuilders;
    const char *builder_list[MAX_BUILDERS];
    size_t nbuilder_list;
    int cmd_obj; /* ud of the master's RemoteCommand exports */
    int64_t cmd_luid;

    /* documents taken from events */
    bool take;
    cw_jelly_doc_t *taken[8];
    size_t ntaken;
} peer_t;

static void logf_(peer_t *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void logf_(peer_t *p, const char *fmt, ...)
{
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    cw_buf_append_str(&p->log, tmp);
}

static void log_value(peer_t *p, const cw_jelly_t *v)
{
    jdump(&p->log, v);
}

/* Worker: answer setBuilderList: keep luids of known names, export new ones, drop the rest. */
static void worker_set_builders(peer_t *p, int64_t reqid, const cw_jelly_t *args)
{
    size_t n, m;
    const cw_jelly_t *a = cw_jelly_items(args, &n);
    assert_int_equal(n, 1);
    const cw_jelly_t *list = cw_jelly_items(&a[0], &m);
    builder_t keep[MAX_BUILDERS];
    size_t nkeep = 0;
    for (size_t i = 0; i < m; i++) {
        size_t k;
        const cw_jelly_t *t = cw_jelly_items(&list[i], &k);
        assert_int_equal(k, 2);
        cw_str_t name;
        assert_true(cw_jelly_text(&t[0], &name));
        builder_t b = {0};
        snprintf(b.name, sizeof(b.name), "%.*s", (int)name.len, name.ptr);
        for (size_t j = 0; j < p->nbuilders; j++)
            if (strcmp(p->builders[j].name, b.name) == 0)
                b.luid = p->builders[j].luid;
        if (b.luid == 0)
            assert_int_equal(cw_pb_export(p->pb, p, true, &b.luid), 0);
        keep[nkeep++] = b;
    }
    for (size_t j = 0; j < p->nbuilders; j++) {
        bool listed = false;
        for (size_t i = 0; i < nkeep; i++)
            listed |= keep[i].luid == p->builders[j].luid;
        if (!listed)
            assert_int_equal(cw_pb_unexport(p->pb, p->builders[j].luid), 0);
    }
    memcpy(p->builders, keep, sizeof(keep));
    p->nbuilders = nkeep;
    cw_jelly_enc_t e;
    assert_int_equal(cw_pb_answer_begin(p->pb, reqid, &e), 0);
    cw_jelly_dict(&e, nkeep);
    for (size_t i = 0; i < nkeep; i++) {
        cw_jelly_str(&e, keep[i].name);
        cw_jelly_remote(&e, keep[i].luid);
    }
    assert_int_equal(cw_pb_answer_end(p->pb, &e), 0);
}

/* Worker: the command runs at once: output, rc, complete. */
static void worker_run_command(peer_t *p, int64_t cmdref)
{
    cw_jelly_enc_t e;
    assert_int_equal(cw_pb_call_begin(p->pb, cmdref, "update", 1, CTX(CTX_UPDATE), &e, NULL), 0);
    cw_jelly_list(&e, 2);
    cw_jelly_list(&e, 2);
    cw_jelly_dict(&e, 1);
    cw_jelly_str(&e, "stdout");
    cw_jelly_str(&e, "hello world\n");
    cw_jelly_int64(&e, 0);
    cw_jelly_list(&e, 2);
    cw_jelly_dict(&e, 1);
    cw_jelly_str(&e, "rc");
    cw_jelly_int64(&e, 0);
    cw_jelly_int64(&e, 0);
    cw_jelly_dict(&e, 0);
    assert_int_equal(cw_pb_call_end(p->pb, &e), 0);
    assert_int_equal(cw_pb_call_begin(p->pb, cmdref, "complete", 1, CTX(CTX_COMPLETE), &e, NULL),
                     0);
    cw_jelly_none(&e);
    cw_jelly_dict(&e, 0);
    assert_int_equal(cw_pb_call_end(p->pb, &e), 0);
}

static void worker_call(peer_t *p, const cw_pb_event_t *ev)
{
    cw_pb_t *pb = p->pb;
    int64_t id = ev->u.call.reqid;
    cw_str_t m = ev->u.call.method;
    if (!ev->u.call.answer_required) {
        if (p->try_answer_unrequired)
            p->answer_unrequired_rc = cw_pb_answer_none(pb, id);
        return;
    }
    if (ev->u.call.target == CW_PB_BOT_LUID) {
        assert_ptr_equal(ev->u.call.target_ud, p);
        if (cw_str_eq(m, "print") || cw_str_eq(m, "shutdown")) {
            assert_int_equal(cw_pb_answer_none(pb, id), 0);
        } else if (cw_str_eq(m, "getWorkerInfo")) {
            cw_jelly_enc_t e;
            assert_int_equal(cw_pb_answer_begin(pb, id, &e), 0);
            cw_jelly_dict(&e, 3);
            cw_jelly_str(&e, "version");
            cw_jelly_str(&e, "cworker-test");
            cw_jelly_str(&e, "system");
            cw_jelly_str(&e, "posix");
            cw_jelly_str(&e, "numcpus");
            cw_jelly_int64(&e, 2);
            assert_int_equal(cw_pb_answer_end(pb, &e), 0);
        } else if (cw_str_eq(m, "setBuilderList")) {
            worker_set_builders(p, id, ev->u.call.args);
        } else {
            assert_int_equal(cw_pb_answer_no_such_method(pb, id, m), 0);
        }
        return;
    }
    /* a builder */
    if (cw_str_eq(m, "startBuild")) {
        assert_int_equal(cw_pb_answer_none(pb, id), 0);
    } else if (cw_str_eq(m, "startCommand")) {
        size_t n;
        const cw_jelly_t *a = cw_jelly_items(ev->u.call.args, &n);
        assert_int_equal(n, 4);
        assert_int_equal(a[0].type, CW_JELLY_REMOTE);
        assert_int_equal(a[3].type, CW_JELLY_DICT);
        p->cmdref = a[0].u.luid;
        assert_int_equal(cw_pb_refs_held(pb, p->cmdref), 1);
        assert_int_equal(cw_pb_answer_none(pb, id), 0);
        worker_run_command(p, p->cmdref);
    } else {
        assert_int_equal(cw_pb_answer_no_such_method(pb, id, m), 0);
    }
}

/* Master: the worker answered the challenge: check, then the attach calls (reference §6.1). */
static void master_login(peer_t *p, const cw_pb_event_t *ev)
{
    cw_pb_t *pb = p->pb;
    bool ok =
        cw_pb_check_response(ev->u.login.challenge, ev->u.login.challenge_len, ev->u.login.response,
                             ev->u.login.response_len, p->password, strlen(p->password));
    if (!ok) {
        assert_int_equal(cw_pb_login_reject(pb, ev->u.login.reqid, CW_PB_LOGIN_UNAUTHORIZED, NULL),
                         0);
        return;
    }
    if (p->duplicate) {
        assert_int_equal(cw_pb_login_reject(pb, ev->u.login.reqid, CW_PB_LOGIN_DUPLICATE, NULL), 0);
        return;
    }
    p->login_reqid = ev->u.login.reqid;
    p->mind = ev->u.login.mind;
    cw_jelly_enc_t e;
    assert_int_equal(cw_pb_call_begin(pb, p->mind, "print", 0, CTX(CTX_PRINT), &e, NULL), 0);
    cw_jelly_dict(&e, 1);
    cw_jelly_str(&e, "message");
    cw_jelly_str(&e, "attached");
    assert_int_equal(cw_pb_call_end(pb, &e), 0);
    assert_int_equal(cw_pb_call0(pb, p->mind, "getWorkerInfo", CTX(CTX_INFO), NULL), 0);
    assert_int_equal(cw_pb_call_begin(pb, p->mind, "setBuilderList", 1, CTX(CTX_BLIST), &e, NULL),
                     0);
    cw_jelly_list(&e, p->nbuilder_list);
    for (size_t i = 0; i < p->nbuilder_list; i++) {
        cw_jelly_tuple(&e, 2);
        cw_jelly_str(&e, p->builder_list[i]);
        cw_jelly_str(&e, p->builder_list[i]);
    }
    cw_jelly_dict(&e, 0);
    assert_int_equal(cw_pb_call_end(pb, &e), 0);
}

/* Master: the builder references arrived; the first time, the login completes. */
static void master_builders(peer_t *p, const cw_jelly_t *v)
{
    assert_int_equal(v->type, CW_JELLY_DICT);
    /* a reconfig hands out every reference again: drop the old ones, as the stock master does */
    for (size_t i = 0; i < p->nmbuilders; i++)
        assert_int_equal(cw_pb_decref(p->pb, p->mbuilders[i].luid), 0);
    p->nmbuilders = 0;
    for (size_t i = 0; i < v->u.dict.n; i++) {
        cw_str_t name;
        assert_true(cw_jelly_text(&v->u.dict.pairs[i].key, &name));
        assert_int_equal(v->u.dict.pairs[i].value.type, CW_JELLY_REMOTE);
        builder_t *b = &p->mbuilders[p->nmbuilders++];
        snprintf(b->name, sizeof(b->name), "%.*s", (int)name.len, name.ptr);
        b->luid = v->u.dict.pairs[i].value.u.luid;
    }
    if (p->login_reqid) {
        assert_int_equal(cw_pb_login_accept(p->pb, p->login_reqid, &p->persp, &p->persp), 0);
        p->login_reqid = 0;
    }
}

static void master_call(peer_t *p, const cw_pb_event_t *ev)
{
    cw_pb_t *pb = p->pb;
    int64_t id = ev->u.call.reqid;
    cw_str_t m = ev->u.call.method;
    if (ev->u.call.target_ud == &p->cmd_obj && cw_str_eq(m, "update")) {
        cw_jelly_enc_t e;
        assert_int_equal(cw_pb_answer_begin(pb, id, &e), 0);
        cw_jelly_int64(&e, 0);
        assert_int_equal(cw_pb_answer_end(pb, &e), 0);
    } else if (ev->u.call.target_ud == &p->cmd_obj && cw_str_eq(m, "complete")) {
        assert_int_equal(cw_pb_answer_none(pb, id), 0);
    } else if (cw_str_eq(m, "keepalive")) {
        assert_int_equal(cw_pb_answer_none(pb, id), 0);
    } else {
        assert_int_equal(cw_pb_answer_no_such_method(pb, id, m), 0);
    }
}

static int on_event(void *ud, cw_pb_t *pb, const cw_pb_event_t *ev)
{
    peer_t *p = ud;
    assert_ptr_equal(pb, p->pb);
    p->nevents[ev->type]++;
    switch (ev->type) {
    case CW_PB_EV_LOGGED_IN:
        logf_(p, "logged in, perspective %lld\n", (long long)ev->u.logged_in.perspective);
        if (p->keepalive_on_login)
            assert_int_equal(
                cw_pb_call0(pb, ev->u.logged_in.perspective, "keepalive", CTX(CTX_KEEPALIVE), NULL),
                0);
        break;
    case CW_PB_EV_LOGIN_FAILED:
        logf_(p, "login failed %d: %s\n", ev->u.login_failed.kind, ev->u.login_failed.text);
        break;
    case CW_PB_EV_LOGIN:
        logf_(p, "login %.*s reqid %lld mind %lld\n", (int)ev->u.login.username.len,
              ev->u.login.username.ptr, (long long)ev->u.login.reqid, (long long)ev->u.login.mind);
        master_login(p, ev);
        break;
    case CW_PB_EV_CALL:
        logf_(p, "call %lld on %lld: %.*s", (long long)ev->u.call.reqid,
              (long long)ev->u.call.target, (int)ev->u.call.method.len, ev->u.call.method.ptr);
        log_value(p, ev->u.call.args);
        log_value(p, ev->u.call.kwargs);
        logf_(p, "%s\n", ev->u.call.answer_required ? "" : " (no answer)");
        if (p->master)
            master_call(p, ev);
        else
            worker_call(p, ev);
        break;
    case CW_PB_EV_ANSWER:
        logf_(p, "answer %lld: ", (long long)ev->u.answer.reqid);
        log_value(p, ev->u.answer.value);
        logf_(p, "\n");
        if (p->master && CTX_IS(ev->u.answer.ctx, CTX_BLIST))
            master_builders(p, ev->u.answer.value);
        if (!p->master && CTX_IS(ev->u.answer.ctx, CTX_COMPLETE))
            assert_int_equal(cw_pb_decref(pb, p->cmdref), 0);
        break;
    case CW_PB_EV_ERROR:
        logf_(p, "error %lld%s: %.*s: %.*s\n", (long long)ev->u.error.reqid,
              ev->u.error.lost ? " (lost)" : "", (int)ev->u.error.fail_type.len,
              ev->u.error.fail_type.ptr, (int)ev->u.error.fail_value.len,
              ev->u.error.fail_value.ptr);
        break;
    case CW_PB_EV_RELEASED:
        logf_(p, "released %lld\n", (long long)ev->u.released.luid);
        break;
    case CW_PB_EV_NOTICE:
        logf_(p, "notice: %s\n", ev->u.notice.text);
        break;
    case CW_PB_EV_PROTOCOL_ERROR:
        logf_(p, "protocol error %d: %s\n", ev->u.notice.code, ev->u.notice.text);
        break;
    }
    if (p->take && p->ntaken < 8) {
        cw_jelly_doc_t *d = cw_pb_take_doc(pb);
        if (d)
            p->taken[p->ntaken++] = d;
    }
    return p->owner_rc;
}

static void peer_init(peer_t *p, cw_pb_role_t role, const char *name, const char *password,
                      const cw_pb_config_t *extra)
{
    memset(p, 0, sizeof(*p));
    p->master = role == CW_PB_MASTER;
    p->password = password;
    cw_pb_config_t cfg = extra ? *extra : (cw_pb_config_t){0};
    cfg.role = role;
    cfg.out = &p->out;
    cfg.on_event = on_event;
    cfg.ud = p;
    if (!p->master) {
        cfg.username = name;
        cfg.username_len = strlen(name);
        cfg.password = password;
        cfg.password_len = strlen(password);
        cfg.bot_ud = p;
    }
    assert_int_equal(cw_pb_new(&p->pb, &cfg), 0);
    assert_int_equal(cw_pb_start(p->pb), 0);
}

static void peer_free(peer_t *p)
{
    cw_pb_free(p->pb);
    cw_buf_free(&p->out);
    cw_buf_free(&p->log);
    for (size_t i = 0; i < p->ntaken; i++)
        cw_jelly_doc_free(p->taken[i]);
}

static const char *peer_log(peer_t *p)
{
    cw_buf_append(&p->log, "", 1);
    p->log.len--;
    return (const char *)p->log.data;
}

static bool log_has(peer_t *p, const char *s)
{
    return p->log.len && strstr(peer_log(p), s) != NULL;
}

/* Move what `from` has to send into `to`, in pieces chosen by *seed (0: all at once). */
static int deliver(peer_t *from, peer_t *to, uint64_t *seed)
{
    int rc = 0;
    while (from->out.len > 0 && rc == 0) {
        size_t n = from->out.len;
        if (*seed) {
            size_t piece = (size_t)(xs(seed) % 23);
            if (piece < n)
                n = piece;
        }
        uint8_t *copy = malloc(n ? n : 1);
        memcpy(copy, from->out.data, n);
        cw_buf_consume(&from->out, n);
        rc = cw_pb_feed(to->pb, copy, n);
        free(copy);
    }
    return rc;
}

/* Pump both ways until quiet. */
static void pump(peer_t *w, peer_t *m, uint64_t seed)
{
    uint64_t s = seed;
    for (int i = 0; i < 1000 && (w->out.len || m->out.len); i++) {
        assert_int_equal(deliver(m, w, &s), 0);
        assert_int_equal(deliver(w, m, &s), 0);
    }
    assert_int_equal(w->out.len + m->out.len, 0);
}

/* Feed hex bytes to a peer; returns cw_pb_feed's result. */
static int feed_hex(peer_t *p, const char *h)
{
    cw_buf_t b = hex(h);
    int rc = cw_pb_feed(p->pb, b.data, b.len);
    cw_buf_free(&b);
    return rc;
}

static int feed_buf(peer_t *p, cw_buf_t *b)
{
    int rc = cw_pb_feed(p->pb, b->data, b->len);
    cw_buf_reset(b);
    return rc;
}

#define OFFER   "02 80 02 82 70 62 04 82 6e 6f 6e 65"
#define VERSION "02 80 13 87 06 81"
#define CHALLENGE_ANSWER                                                                           \
    "03 80 1b 87 01 81 03 80 0b 87 10 82 4b d1 16 4b e7 9c 24 96 c2 2f 8c 1f 75 61 b6 c2 02 80 "   \
    "10 "                                                                                          \
    "87 01 81"

/* A worker that has sent respond (reference §5.1, with the captured challenge). */
static void worker_at_respond(peer_t *w, const cw_pb_config_t *extra)
{
    peer_init(w, CW_PB_WORKER, "w1", "pass", extra);
    assert_int_equal(feed_hex(w, OFFER VERSION CHALLENGE_ANSWER), 0);
    cw_buf_reset(&w->out);
    assert_int_equal(cw_pb_state(w->pb), CW_PB_ST_LOGIN);
}

/* Encode a master->worker call into b: the caller writes nargs values then the kwargs dict. */
static void call_begin(cw_jelly_enc_t *e, cw_buf_t *b, int64_t reqid, int64_t target,
                       const char *method, size_t nargs)
{
    cw_jelly_enc_init(e, b, 1, true);
    cw_jelly_enc_raw_list(e, 7);
    cw_jelly_bytes(e, "message", 7);
    cw_jelly_int64(e, reqid);
    cw_jelly_int64(e, target);
    cw_jelly_bytes(e, method, strlen(method));
    cw_jelly_int64(e, 1);
    cw_jelly_tuple(e, nargs);
}

static void call_end(cw_jelly_enc_t *e)
{
    assert_int_equal(cw_jelly_enc_finish(e), 0);
}

/* print(message=text) on the Bot */
static void put_print(cw_buf_t *b, int64_t reqid, const char *text)
{
    cw_jelly_enc_t e;
    call_begin(&e, b, reqid, CW_PB_BOT_LUID, "print", 0);
    cw_jelly_dict(&e, 1);
    cw_jelly_str(&e, "message");
    cw_jelly_str(&e, text);
    call_end(&e);
}

/* setBuilderList([(name, name), ...]) on the Bot */
static void put_builders(cw_buf_t *b, int64_t reqid, int count)
{
    cw_jelly_enc_t e;
    call_begin(&e, b, reqid, CW_PB_BOT_LUID, "setBuilderList", 1);
    cw_jelly_list(&e, (size_t)count);
    for (int i = 0; i < count; i++) {
        char name[32];
        snprintf(name, sizeof(name), "builder%02d", i);
        cw_jelly_tuple(&e, 2);
        cw_jelly_str(&e, name);
        cw_jelly_str(&e, name);
    }
    cw_jelly_dict(&e, 0);
    call_end(&e);
}

/* ---- the login exchange, byte for byte ---- */

static void test_worker_login_bytes(void **state)
{
    (void)state;
    peer_t w;
    peer_init(&w, CW_PB_WORKER, "w1", "pass", NULL);
    assert_int_equal(w.out.len, 0); /* the worker waits for the offer */
    assert_int_equal(cw_pb_state(w.pb), CW_PB_ST_DIALECT);
    assert_int_equal(feed_hex(&w, OFFER), 0);
    /* reference §2.4 and §5.1: "pb", ("version" 6), login: 38 bytes, like the stock worker */
    assert_bytes(
        w.out.data, w.out.len,
        "02 82 70 62"
        " 02 80 13 87 06 81"
        " 07 80 1a 87 01 81 04 82 72 6f 6f 74 14 87 01 81 02 80 0b 87 02 82 77 31 01 80 05 "
        "87");
    assert_int_equal(w.out.len, 38);
    cw_buf_reset(&w.out);
    assert_int_equal(cw_pb_state(w.pb), CW_PB_ST_LOGIN);
    /* the master's version and the challenge: respond, then decref of the challenger */
    assert_int_equal(feed_hex(&w, VERSION CHALLENGE_ANSWER), 0);
    assert_bytes(w.out.data, w.out.len,
                 "07 80 1a 87 02 81 01 81 07 82 72 65 73 70 6f 6e 64 01 81"
                 " 03 80 0b 87 10 82 25 41 65 b4 d7 82 39 0e 70 47 e6 48 cf 6f d7 aa"
                 " 02 80 10 87 01 81 01 80 05 87"
                 " 02 80 1d 87 01 81");
    assert_int_equal(cw_pb_refs_held(w.pb, 1), 0); /* the challenger was given back */
    uint64_t refs;
    void *ud;
    assert_true(cw_pb_export_info(w.pb, CW_PB_BOT_LUID, &ud, &refs));
    assert_ptr_equal(ud, &w);
    assert_int_equal(refs, 1);
    cw_buf_reset(&w.out);
    /* the perspective */
    assert_int_equal(feed_hex(&w, "03 80 1b 87 02 81 02 80 10 87 02 81"), 0);
    assert_int_equal(cw_pb_state(w.pb), CW_PB_ST_READY);
    assert_int_equal(cw_pb_perspective(w.pb), 2);
    assert_int_equal(cw_pb_refs_held(w.pb, 2), 1);
    assert_string_equal(peer_log(&w), "logged in, perspective 2\n");
    /* keepalive on the perspective: the observed 29 bytes (reference §7.5) with our request id */
    int64_t id;
    assert_int_equal(cw_pb_call0(w.pb, 2, "keepalive", NULL, &id), 0);
    assert_int_equal(id, 3);
    assert_bytes(w.out.data, w.out.len,
                 "07 80 1a 87 03 81 02 81 09 82 6b 65 65 70 61 6c 69 76 65 01 81 01 80 0b 87 01 80 "
                 "05 87");
    peer_free(&w);
}

static void test_calls_before_respond_answer(void **state)
{
    (void)state;
    /* reference §6.1 / §11.2 item 5: the master runs its attach calls before answering respond */
    peer_t w;
    worker_at_respond(&w, NULL);
    cw_buf_t in = CW_BUF_INIT;
    put_print(&in, 1, "attached");
    cw_jelly_enc_t e;
    call_begin(&e, &in, 2, CW_PB_BOT_LUID, "getWorkerInfo", 0);
    cw_jelly_dict(&e, 0);
    call_end(&e);
    put_builders(&in, 3, 2);
    put_print(&in, 4, "attached");
    put_print(&in, 5, "attached");
    assert_int_equal(feed_buf(&w, &in), 0);
    assert_int_equal(cw_pb_state(w.pb), CW_PB_ST_LOGIN);
    char *t = transcript(w.out.data, w.out.len, true);
    assert_string_equal(t, "(b'answer' 1 None)\n"
                           "(b'answer' 2 {'version': 'cworker-test', 'system': 'posix', 'numcpus': "
                           "2})\n"
                           "(b'answer' 3 {'builder00': <remote 2>, 'builder01': <remote 3>})\n"
                           "(b'answer' 4 None)\n"
                           "(b'answer' 5 None)\n");
    free(t);
    /* the answer to print is the stock 10 bytes */
    assert_bytes(w.out.data, 10, "03 80 1b 87 01 81 01 80 01 87");
    cw_buf_reset(&w.out);
    /* now the perspective: login complete */
    assert_int_equal(feed_hex(&w, "03 80 1b 87 02 81 02 80 10 87 02 81"), 0);
    assert_int_equal(cw_pb_state(w.pb), CW_PB_ST_READY);
    assert_true(log_has(&w, "call 1 on 1: print(){'message': 'attached'}\n"));
    assert_true(log_has(&w, "logged in, perspective 2\n"));
    cw_buf_free(&in);
    peer_free(&w);
}

static void test_builder_luids_across_reconfig(void **state)
{
    (void)state;
    /* reference §6.5 / §11.2 item 6 */
    peer_t w;
    worker_at_respond(&w, NULL);
    cw_buf_t in = CW_BUF_INIT;
    put_builders(&in, 1, 13);
    assert_int_equal(feed_hex(&w, "03 80 1b 87 02 81 02 80 10 87 02 81"), 0);
    assert_int_equal(feed_buf(&w, &in), 0);
    for (int i = 0; i < 13; i++)
        assert_int_equal(w.builders[i].luid, 2 + i);
    cw_buf_reset(&w.out);
    /* the reconfig: the whole list again plus one */
    put_builders(&in, 2, 14);
    assert_int_equal(feed_buf(&w, &in), 0);
    char *t = transcript(w.out.data, w.out.len, true);
    assert_non_null(strstr(t, "'builder00': <remote 2>"));
    assert_non_null(strstr(t, "'builder12': <remote 14>"));
    assert_non_null(strstr(t, "'builder13': <remote 15>"));
    free(t);
    cw_buf_reset(&w.out);
    uint64_t refs;
    assert_true(cw_pb_export_info(w.pb, 4, NULL, &refs));
    assert_int_equal(refs, 2);
    /* the master decrefs its 13 old references (02 80 1d 87 02 81 ... 0e 81) */
    for (int luid = 2; luid <= 14; luid++) {
        char h[32];
        sprintf(h, "02 80 1d 87 %02x 81", luid);
        assert_int_equal(feed_hex(&w, h), 0);
    }
    assert_int_equal(w.nevents[CW_PB_EV_RELEASED], 0);
    assert_int_equal(w.nevents[CW_PB_EV_NOTICE], 0);
    for (int luid = 2; luid <= 15; luid++) {
        assert_true(cw_pb_export_info(w.pb, luid, NULL, &refs));
        assert_int_equal(refs, 1);
    }
    /* a build on an old builder still works: startBuild answered None */
    cw_jelly_enc_t e;
    call_begin(&e, &in, 3, 4, "startBuild", 0);
    cw_jelly_dict(&e, 0);
    call_end(&e);
    assert_int_equal(feed_buf(&w, &in), 0);
    assert_bytes(w.out.data, w.out.len, "03 80 1b 87 03 81 01 80 01 87");
    cw_buf_reset(&w.out);
    /* even once decref'd to zero (pinned), and a reconfig that drops a builder removes it */
    assert_int_equal(feed_hex(&w, "02 80 1d 87 04 81"), 0);
    assert_int_equal(w.nevents[CW_PB_EV_RELEASED], 0);
    put_builders(&in, 4, 3);
    assert_int_equal(feed_buf(&w, &in), 0);
    cw_buf_reset(&w.out);
    assert_false(cw_pb_export_info(w.pb, 10, NULL, NULL));
    call_begin(&e, &in, 5, 10, "startBuild", 0);
    cw_jelly_dict(&e, 0);
    call_end(&e);
    assert_int_equal(feed_buf(&w, &in), 0);
    t = transcript(w.out.data, w.out.len, true);
    assert_string_equal(t, "(b'error' 5 <failure twisted.spread.pb.Error: Invalid Object ID>)\n");
    free(t);
    cw_buf_free(&in);
    peer_free(&w);
}

/* ---- whole sessions in memory ---- */

/* Worker and master: login, attach, a build with one command, keepalive. */
static void run_session(uint64_t seed, char **wlog, char **mlog)
{
    peer_t w, m;
    peer_init(&w, CW_PB_WORKER, "w1", "pass", NULL);
    w.keepalive_on_login = true;
    uint8_t challenge[16];
    for (int i = 0; i < 16; i++)
        challenge[i] = (uint8_t)(0x41 + i);
    cw_pb_config_t mc = {.challenge = challenge, .challenge_len = 16};
    peer_init(&m, CW_PB_MASTER, NULL, "pass", &mc);
    static const char *const names[] = {"b1", "b2", "b3"};
    m.builder_list[0] = names[0];
    m.builder_list[1] = names[1];
    m.builder_list[2] = names[2];
    m.nbuilder_list = 3;
    pump(&w, &m, seed);
    assert_int_equal(cw_pb_state(w.pb), CW_PB_ST_READY);
    assert_int_equal(cw_pb_state(m.pb), CW_PB_ST_READY);
    assert_int_equal(m.nmbuilders, 3);

    /* a build on b2: startBuild, then startCommand with a RemoteCommand the master exports */
    int64_t b2 = m.mbuilders[1].luid;
    assert_int_equal(cw_pb_call0(m.pb, b2, "startBuild", NULL, NULL), 0);
    assert_int_equal(cw_pb_export(m.pb, &m.cmd_obj, false, &m.cmd_luid), 0);
    cw_jelly_enc_t e;
    assert_int_equal(cw_pb_call_begin(m.pb, b2, "startCommand", 4, NULL, &e, NULL), 0);
    cw_jelly_remote(&e, m.cmd_luid);
    cw_jelly_str(&e, "0");
    cw_jelly_str(&e, "shell");
    cw_jelly_dict(&e, 2);
    cw_jelly_str(&e, "workdir");
    cw_jelly_str(&e, "build");
    cw_jelly_str(&e, "command");
    cw_jelly_list(&e, 2);
    cw_jelly_str(&e, "echo");
    cw_jelly_str(&e, "hello world");
    cw_jelly_dict(&e, 0);
    assert_int_equal(cw_pb_call_end(m.pb, &e), 0);
    uint64_t refs;
    assert_true(cw_pb_export_info(m.pb, m.cmd_luid, NULL, &refs));
    assert_int_equal(refs, 1);
    pump(&w, &m, seed);
    /* the worker gave the RemoteCommand back after complete: the master forgot it */
    assert_false(cw_pb_export_info(m.pb, m.cmd_luid, NULL, NULL));
    assert_int_equal(cw_pb_refs_held(w.pb, m.cmd_luid), 0);
    assert_int_equal(m.nevents[CW_PB_EV_RELEASED], 1);
    assert_int_equal(cw_pb_calls_waiting(w.pb), 0);
    assert_int_equal(cw_pb_calls_waiting(m.pb), 0);
    /* a method the worker does not have */
    assert_int_equal(cw_pb_call0(m.pb, m.mind, "getSlaveInfo", NULL, NULL), 0);
    pump(&w, &m, seed);
    assert_int_equal(w.nevents[CW_PB_EV_PROTOCOL_ERROR] + m.nevents[CW_PB_EV_PROTOCOL_ERROR], 0);
    *wlog = strdup(peer_log(&w));
    *mlog = strdup(peer_log(&m));
    assert_int_equal(cw_pb_close(w.pb), 0);
    assert_int_equal(cw_pb_close(m.pb), 0);
    peer_free(&w);
    peer_free(&m);
}

static void test_session_in_memory(void **state)
{
    (void)state;
    char *wlog, *mlog;
    run_session(0, &wlog, &mlog);
    assert_string_equal(mlog, "login w1 reqid 2 mind 1\n"
                              "answer 1: None\n"
                              "answer 2: {'version': 'cworker-test', 'system': 'posix', "
                              "'numcpus': 2}\n"
                              "answer 3: {'b1': <remote 2>, 'b2': <remote 3>, 'b3': <remote 4>}\n"
                              "call 3 on 2: keepalive(){}\n"
                              "answer 4: None\n"
                              "answer 5: None\n"
                              "call 4 on 3: update([[{'stdout': 'hello world\\x0a'}, 0], [{'rc': "
                              "0}, 0]]){}\n"
                              "call 5 on 3: complete(None){}\n"
                              "released 3\n"
                              "error 6: twisted.spread.flavors.NoSuchMethod: No such method: "
                              "remote_getSlaveInfo\n");
    assert_string_equal(wlog, "call 1 on 1: print(){'message': 'attached'}\n"
                              "call 2 on 1: getWorkerInfo(){}\n"
                              "call 3 on 1: setBuilderList([('b1', 'b1'), ('b2', 'b2'), ('b3', "
                              "'b3')]){}\n"
                              "logged in, perspective 2\n"
                              "answer 3: None\n"
                              "call 4 on 3: startBuild(){}\n"
                              "call 5 on 3: startCommand(<remote 3>, '0', 'shell', {'workdir': "
                              "'build', 'command': ['echo', 'hello world']}){}\n"
                              "answer 4: 0\n"
                              "answer 5: None\n"
                              "call 6 on 1: getSlaveInfo(){}\n");
    /* the same transcripts whatever the TCP segmentation */
    for (uint64_t seed = 1; seed < 12; seed++) {
        char *w2, *m2;
        run_session(seed * 7919, &w2, &m2);
        assert_string_equal(w2, wlog);
        assert_string_equal(m2, mlog);
        free(w2);
        free(m2);
    }
    free(wlog);
    free(mlog);
}

static void test_wrong_password(void **state)
{
    (void)state;
    peer_t w, m;
    peer_init(&w, CW_PB_WORKER, "w1", "wrong", NULL);
    peer_init(&m, CW_PB_MASTER, NULL, "pass", NULL);
    pump(&w, &m, 0);
    assert_int_equal(cw_pb_state(w.pb), CW_PB_ST_REFUSED);
    assert_int_equal(w.nevents[CW_PB_EV_LOGIN_FAILED], 1);
    assert_true(log_has(&w, "login failed 0: twisted.cred.error.UnauthorizedLogin\n"));
    /* the master dropped the Bot first, as the stock master does; it stays (pinned) */
    uint64_t refs;
    assert_true(cw_pb_export_info(w.pb, CW_PB_BOT_LUID, NULL, &refs));
    assert_int_equal(refs, 0);
    assert_int_equal(cw_pb_refs_held(m.pb, 1), 0);
    assert_int_equal(w.nevents[CW_PB_EV_PROTOCOL_ERROR], 0);
    peer_free(&w);
    peer_free(&m);

    /* a duplicate is told apart */
    peer_init(&w, CW_PB_WORKER, "w1", "pass", NULL);
    peer_init(&m, CW_PB_MASTER, NULL, "pass", NULL);
    m.duplicate = true;
    pump(&w, &m, 0);
    assert_int_equal(cw_pb_state(w.pb), CW_PB_ST_REFUSED);
    assert_true(log_has(&w, "login failed 1: builtins.RuntimeError: rejecting duplicate worker\n"));
    peer_free(&w);
    peer_free(&m);

    /* any other failure of respond, e.g. a failed attach */
    peer_t x;
    worker_at_respond(&x, NULL);
    cw_buf_t in = CW_BUF_INIT;
    cw_jelly_enc_t e;
    cw_jelly_enc_init(&e, &in, 1, true);
    cw_jelly_enc_raw_list(&e, 3);
    cw_jelly_bytes(&e, "error", 5);
    cw_jelly_int64(&e, 2);
    cw_jelly_failure_desc_t f = {.type = "builtins.KeyError", .value = "'x'"};
    cw_jelly_failure(&e, &f);
    call_end(&e);
    assert_int_equal(feed_buf(&x, &in), 0);
    assert_true(log_has(&x, "login failed 2: builtins.KeyError: 'x'\n"));
    cw_buf_free(&in);
    peer_free(&x);
}

static void test_master_login_checks(void **state)
{
    (void)state;
    peer_t m;
    uint8_t challenge[16] = {0x4b, 0xd1, 0x16, 0x4b, 0xe7, 0x9c, 0x24, 0x96,
                             0xc2, 0x2f, 0x8c, 0x1f, 0x75, 0x61, 0xb6, 0xc2};
    cw_pb_config_t mc = {.challenge = challenge, .challenge_len = 16};
    peer_init(&m, CW_PB_MASTER, NULL, "pass", &mc);
    assert_bytes(m.out.data, m.out.len, OFFER);
    cw_buf_reset(&m.out);
    /* the stock worker's first 38 bytes; the master sends version and the challenge (§5.1) */
    assert_int_equal(feed_hex(&m, "02 82 70 62 " VERSION
                                  " 07 80 1a 87 01 81 04 82 72 6f 6f 74 14 87 01 81 02 80 0b 87 02 "
                                  "82 77 31 01 80 05 87"),
                     0);
    assert_bytes(m.out.data, m.out.len, VERSION CHALLENGE_ANSWER);
    cw_buf_reset(&m.out);
    /* the worker's respond */
    m.nbuilder_list = 0;
    assert_int_equal(feed_hex(&m,
                              "07 80 1a 87 02 81 01 81 07 82 72 65 73 70 6f 6e 64 01 81"
                              " 03 80 0b 87 10 82 25 41 65 b4 d7 82 39 0e 70 47 e6 48 cf 6f d7 aa"
                              " 02 80 10 87 01 81 01 80 05 87 02 80 1d 87 01 81"),
                     0);
    assert_true(log_has(&m, "login w1 reqid 2 mind 1\n"));
    assert_int_equal(m.nevents[CW_PB_EV_NOTICE], 0);
    /* the challenger is gone after the decref; a call to it is an Invalid Object ID */
    assert_false(cw_pb_export_info(m.pb, 1, NULL, NULL));
    peer_free(&m);

    /* a worker choosing a dialect that was not offered, or not a string */
    peer_init(&m, CW_PB_MASTER, NULL, "pass", NULL);
    assert_int_equal(feed_hex(&m, "03 82 78 79 7a"), CW_EPROTO);
    peer_free(&m);
    peer_init(&m, CW_PB_MASTER, NULL, "pass", NULL);
    assert_int_equal(feed_hex(&m, "01 81"), CW_EPROTO);
    peer_free(&m);
    /* VOCAB before the choice */
    peer_init(&m, CW_PB_MASTER, NULL, "pass", NULL);
    assert_int_equal(feed_hex(&m, "13 87"), CW_EPROTO);
    peer_free(&m);
    /* the "none" dialect: accepted, but then VOCAB is fatal */
    peer_init(&m, CW_PB_MASTER, NULL, "pass", NULL);
    cw_buf_reset(&m.out);
    assert_int_equal(feed_hex(&m, "04 82 6e 6f 6e 65"), 0);
    assert_bytes(m.out.data, m.out.len, "02 80 07 82 76 65 72 73 69 6f 6e 06 81");
    assert_int_equal(feed_hex(&m, VERSION), CW_EPROTO);
    peer_free(&m);
    /* logins again and again without decrefs: the export limit answers pb.Error */
    cw_pb_config_t few = {.max_exports = 2};
    peer_init(&m, CW_PB_MASTER, NULL, "pass", &few);
    cw_buf_t logins = hex("02 82 70 62 " VERSION);
    for (int i = 1; i <= 3; i++) {
        char h[120];
        sprintf(h,
                "07 80 1a 87 %02x 81 04 82 72 6f 6f 74 14 87 01 81 02 80 0b 87 02 82 77 31 01 80 "
                "05 87",
                i);
        cw_buf_t one = hex(h);
        cw_buf_append(&logins, one.data, one.len);
        cw_buf_free(&one);
    }
    assert_int_equal(feed_buf(&m, &logins), 0);
    char *t2 = transcript(m.out.data + 12, m.out.len - 12, true);
    assert_non_null(strstr(t2, "(b'error' 3 <failure twisted.spread.pb.Error: Maximum PB reference "
                               "count exceeded.>)\n"));
    free(t2);
    cw_buf_free(&logins);
    peer_free(&m);
    /* unknown root method */
    peer_init(&m, CW_PB_MASTER, NULL, "pass", NULL);
    assert_int_equal(feed_hex(&m, "02 82 70 62 " VERSION
                                  " 07 80 1a 87 01 81 04 82 72 6f 6f 74 06 82 6e 6f 73 75 63 68 01 "
                                  "81 01 80 0b 87 01 80 05 87"),
                     0);
    char *t = transcript(m.out.data + 12, m.out.len - 12, true);
    assert_string_equal(t,
                        "(b'version' 6)\n(b'error' 1 <failure twisted.spread.flavors.NoSuchMethod: "
                        "No such method: remote_nosuch>)\n");
    free(t);
    peer_free(&m);
}

/* ---- hostile input (reference §11.3) ---- */

/* A ready worker (logged in, two builders, luids 2 and 3) with its output drained. */
static void ready_worker(peer_t *w, const cw_pb_config_t *extra)
{
    worker_at_respond(w, extra);
    cw_buf_t in = CW_BUF_INIT;
    put_builders(&in, 1, 2);
    assert_int_equal(feed_buf(w, &in), 0);
    cw_buf_free(&in);
    assert_int_equal(feed_hex(w, "03 80 1b 87 02 81 02 80 10 87 02 81"), 0);
    assert_int_equal(cw_pb_state(w->pb), CW_PB_ST_READY);
    cw_buf_reset(&w->out);
    cw_buf_reset(&w->log);
}

/* Feeding the stream closes the session with rc and one protocol error event, whole and byte by
 * byte, and nothing more happens afterwards. */
static void expect_fatal_stream(const uint8_t *p, size_t len, int rc, const char *why_part)
{
    for (int mode = 0; mode < 2; mode++) {
        peer_t w;
        ready_worker(&w, NULL);
        int got = 0;
        if (mode == 0) {
            got = cw_pb_feed(w.pb, p, len);
        } else {
            for (size_t i = 0; i < len && got == 0; i++)
                got = cw_pb_feed(w.pb, p + i, 1);
        }
        assert_int_equal(got, rc);
        assert_int_equal(cw_pb_state(w.pb), CW_PB_ST_CLOSED);
        assert_int_equal(w.nevents[CW_PB_EV_PROTOCOL_ERROR], 1);
        assert_non_null(cw_pb_error(w.pb));
        if (why_part && strstr(cw_pb_error(w.pb), why_part) == NULL) {
            fprintf(stderr, "why: %s\n", cw_pb_error(w.pb));
            fail();
        }
        /* nothing was answered, later input is refused, sends are refused */
        assert_int_equal(w.out.len, 0);
        assert_int_equal(cw_pb_feed(w.pb, (const uint8_t *)"\x00\x81", 2), rc);
        assert_int_equal(cw_pb_call0(w.pb, 2, "keepalive", NULL, NULL), -ENOTCONN);
        assert_int_equal(w.nevents[CW_PB_EV_PROTOCOL_ERROR], 1);
        peer_free(&w);
    }
}

static void expect_fatal(const char *h, int rc, const char *why_part)
{
    cw_buf_t b = hex(h);
    expect_fatal_stream(b.data, b.len, rc, why_part);
    cw_buf_free(&b);
}

static void test_hostile_banana(void **state)
{
    (void)state;
    expect_fatal("01 00 28 82", CW_EPROTO, "STRING"); /* 655,361-byte STRING */
    expect_fatal("01 00 28 80", CW_EPROTO, "LIST");   /* 655,361-element LIST */
    expect_fatal("00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 "
                 "00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 "
                 "00 00 00 00 00 00 00 00 00 00 00",
                 CW_EPROTO, "prefix"); /* 65 digits */
    expect_fatal("01 80 88", CW_EPROTO, "type byte");
    expect_fatal("02 80 1b 87 00 87", CW_EPROTO, "VOCAB");
    expect_fatal("02 80 1b 87 63 87", CW_EPROTO, "VOCAB");
    /* 100,000 nested lists: refused at the depth limit after 130 bytes */
    size_t n = 100000;
    uint8_t *p = malloc(2 * n);
    for (size_t i = 0; i < n; i++) {
        p[2 * i] = 0x01;
        p[2 * i + 1] = 0x80;
    }
    expect_fatal_stream(p, 2 * n, CW_ETOOBIG, "deeper");
    free(p);
}

static void test_hostile_message_size(void **state)
{
    (void)state;
    /* a message of many large strings against a 1 MiB cap */
    cw_banana_limits_t lim = {.max_message = 1 << 20};
    cw_pb_config_t extra = {.limits = lim};
    peer_t w;
    ready_worker(&w, &extra);
    cw_buf_t in = CW_BUF_INIT;
    cw_banana_list(&in, 100);
    cw_banana_string(&in, "answer", 6, true);
    char *s = calloc(1, 600000);
    int rc = 0;
    for (int i = 0; i < 2 && rc == 0; i++) {
        cw_banana_string(&in, s, 600000, false);
        rc = feed_buf(&w, &in);
    }
    assert_int_equal(rc, CW_ETOOBIG);
    assert_int_equal(w.nevents[CW_PB_EV_PROTOCOL_ERROR], 1);
    free(s);
    cw_buf_free(&in);
    peer_free(&w);
}

static void test_hostile_eof(void **state)
{
    (void)state;
    peer_t w;
    ready_worker(&w, NULL);
    /* a message cut by EOF */
    assert_int_equal(feed_hex(&w, "07 80 1a 87 05 81"), 0);
    assert_int_equal(cw_pb_close(w.pb), CW_EPROTO);
    assert_int_equal(cw_pb_state(w.pb), CW_PB_ST_CLOSED);
    assert_int_equal(cw_pb_close(w.pb), 0); /* once */
    peer_free(&w);
    /* EOF inside the negotiation */
    peer_init(&w, CW_PB_WORKER, "w1", "pass", NULL);
    assert_int_equal(feed_hex(&w, "02 80 02 82 70"), 0);
    assert_int_equal(cw_pb_close(w.pb), CW_EPROTO);
    peer_free(&w);
    /* EOF between messages, before any offer: nothing truncated */
    peer_init(&w, CW_PB_WORKER, "w1", "pass", NULL);
    assert_int_equal(cw_pb_close(w.pb), 0);
    assert_int_equal(cw_pb_state(w.pb), CW_PB_ST_CLOSED);
    peer_free(&w);
}

static void test_hostile_negotiation(void **state)
{
    (void)state;
    static const struct {
        const char *h;
        const char *why;
    } v[] = {
        {"01 80 04 82 6e 6f 6e 65", "does not offer"}, /* ("none") */
        {"00 80", "does not offer"},
        {"02 82 70 62", "not a list"}, /* a bare "pb" */
        {"01 81", "not a list"},
        {"01 80 01 80 02 82 70 62", "does not offer"}, /* ("pb") nested */
        {"02 80 13 87 06 81", "VOCAB"},                /* VOCAB before negotiation */
    };
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        peer_t w;
        peer_init(&w, CW_PB_WORKER, "w1", "pass", NULL);
        assert_int_equal(feed_hex(&w, v[i].h), CW_EPROTO);
        assert_non_null(strstr(cw_pb_error(w.pb), v[i].why));
        assert_int_equal(w.out.len, 0);
        peer_free(&w);
    }
    /* pb offered among others, in any position */
    peer_t w;
    peer_init(&w, CW_PB_WORKER, "w1", "pass", NULL);
    assert_int_equal(feed_hex(&w, "03 80 03 82 78 79 7a 01 81 02 82 70 62"), 0);
    assert_int_equal(cw_pb_state(w.pb), CW_PB_ST_LOGIN);
    peer_free(&w);
    /* version 5 */
    peer_init(&w, CW_PB_WORKER, "w1", "pass", NULL);
    assert_int_equal(feed_hex(&w, OFFER "02 80 13 87 05 81"), CW_EPROTO);
    assert_non_null(strstr(cw_pb_error(w.pb), "version"));
    peer_free(&w);
}

static void test_hostile_envelopes(void **state)
{
    (void)state;
    expect_fatal("05 81", CW_EPROTO, "non-list");         /* a top-level INT */
    expect_fatal("00 80", CW_EPROTO, "non-list");         /* an empty list */
    expect_fatal("02 80 05 81 06 81", CW_EPROTO, "word"); /* first element not a string */
    /* message with 6 fields */
    expect_fatal("06 80 1a 87 07 81 01 81 05 82 70 72 69 6e 74 01 81 01 80 0b 87", CW_EPROTO,
                 "7 fields");
    /* request id not an integer, or beyond 64 bits (64-digit LONGINT) */
    expect_fatal("07 80 1a 87 01 82 78 01 81 05 82 70 72 69 6e 74 01 81 01 80 0b 87 01 80 05 87",
                 CW_EPROTO, "request id");
    expect_fatal("07 80 1a 87 7f 7f 7f 7f 7f 7f 7f 7f 7f 7f 7f 7f 7f 7f 7f 7f 7f 7f 7f 7f 7f 7f 7f "
                 "7f 7f 7f 7f 7f 7f 7f 7f 7f 7f 7f 7f 7f 7f 7f 7f 7f 7f 7f 7f 7f 7f 7f 7f 7f 7f 7f "
                 "7f 7f 7f 7f 7f 7f 7f 7f 7f 7f 85 01 81 05 82 70 72 69 6e 74 01 81 01 80 0b 87 01 "
                 "80 05 87",
                 CW_EPROTO, "request id");
    /* method name not a string, answerRequired not an int */
    expect_fatal("07 80 1a 87 01 81 01 81 05 81 01 81 01 80 0b 87 01 80 05 87", CW_EPROTO,
                 "method");
    expect_fatal("07 80 1a 87 01 81 01 81 05 82 70 72 69 6e 74 01 80 01 87 01 80 0b 87 01 80 05 87",
                 CW_EPROTO, "answerRequired");
    /* answer / error / decref / version of the wrong length */
    expect_fatal("02 80 1b 87 01 81", CW_EPROTO, "3 fields");
    expect_fatal("04 80 1c 87 01 81 01 81 01 81", CW_EPROTO, "3 fields");
    expect_fatal("01 80 1d 87", CW_EPROTO, "2 fields");
    expect_fatal("03 80 13 87 06 81 06 81", CW_EPROTO, "version");
}

static void test_hostile_ignored(void **state)
{
    (void)state;
    peer_t w;
    ready_worker(&w, NULL);
    /* unknown word, didNotUnderstand, decache, uncache: logged, nothing sent, still up */
    assert_int_equal(feed_hex(&w, "02 80 0a 82 66 72 6f 62 6e 69 63 61 74 65 01 81"), 0);
    assert_int_equal(feed_hex(&w, "02 80 10 82 64 69 64 4e 6f 74 55 6e 64 65 72 73 74 61 6e 64 "
                                  "01 82 78"),
                     0);
    assert_int_equal(feed_hex(&w, "02 80 1e 87 01 81 02 80 1f 87 01 81"), 0);
    /* answers and errors for requests not waiting (ours are 1 and 2, both answered) */
    assert_int_equal(feed_hex(&w, "03 80 1b 87 01 81 01 80 01 87"), 0);
    assert_int_equal(feed_hex(&w, "03 80 1c 87 63 81 01 80 01 87"), 0);
    assert_int_equal(feed_hex(&w, "03 80 1b 87 01 82 78 02 80 10 87 07 81"), 0);
    assert_int_equal(cw_pb_refs_held(w.pb, 7), 0); /* the reference in an ignored answer */
    /* decref of an object we do not have, of the Bot more often than sent, of "root" */
    assert_int_equal(feed_hex(&w, "02 80 1d 87 63 81"), 0);
    assert_int_equal(feed_hex(&w, "02 80 1d 87 01 81 02 80 1d 87 01 81"), 0);
    assert_int_equal(feed_hex(&w, "02 80 1d 87 04 82 72 6f 6f 74"), 0);
    assert_int_equal(w.out.len, 0);
    assert_int_equal(w.nevents[CW_PB_EV_NOTICE], 10);
    assert_int_equal(w.nevents[CW_PB_EV_PROTOCOL_ERROR], 0);
    /* the Bot still answers */
    cw_buf_t in = CW_BUF_INIT;
    put_print(&in, 9, "ping");
    assert_int_equal(feed_buf(&w, &in), 0);
    assert_bytes(w.out.data, w.out.len, "03 80 1b 87 09 81 01 80 01 87");
    cw_buf_free(&in);
    peer_free(&w);
}

/* Feed one call to a ready worker, return the transcript of what it sent. */
static char *answer_to(const char *h, peer_t *keep)
{
    peer_t w;
    ready_worker(&w, NULL);
    assert_int_equal(feed_hex(&w, h), 0);
    assert_int_equal(w.nevents[CW_PB_EV_PROTOCOL_ERROR], 0);
    char *t = transcript(w.out.data, w.out.len, true);
    if (keep)
        *keep = w;
    else
        peer_free(&w);
    return t;
}

static void expect_answer(const char *h, const char *want)
{
    char *t = answer_to(h, NULL);
    if (strcmp(t, want) != 0) {
        fprintf(stderr, "got:  %swant: %s", t, want);
        fail();
    }
    free(t);
}

/* ("message" 7 <luid> "m" 1 <args> <kwargs>) with args/kwargs given as hex */
#define CALL7(luid, args, kwargs)                                                                  \
    "07 80 1a 87 07 81 " luid " 05 82 70 72 69 6e 74 01 81 " args " " kwargs
#define NOARGS   "01 80 0b 87"
#define NOKWARGS "01 80 05 87"

static void test_hostile_calls_answered(void **state)
{
    (void)state;
    /* an unknown object: "Invalid Object ID", like Twisted (reference §4.6) */
    expect_answer(CALL7("63 81", NOARGS, NOKWARGS),
                  "(b'error' 7 <failure twisted.spread.pb.Error: Invalid Object ID>)\n");
    expect_answer(CALL7("04 82 72 6f 6f 74", NOARGS, NOKWARGS), /* "root" on a worker */
                  "(b'error' 7 <failure twisted.spread.pb.Error: Invalid Object ID>)\n");
    expect_answer(CALL7("00 00 00 00 00 00 00 00 00 01 85", NOARGS, NOKWARGS), /* 2^63 */
                  "(b'error' 7 <failure twisted.spread.pb.Error: Invalid Object ID>)\n");
    expect_answer(CALL7("01 83", NOARGS, NOKWARGS),
                  "(b'error' 7 <failure twisted.spread.pb.Error: Invalid Object ID>)\n");
    /* cachemessage: we cache nothing */
    expect_answer("07 80 19 87 07 81 01 81 05 82 70 72 69 6e 74 01 81 " NOARGS " " NOKWARGS,
                  "(b'error' 7 <failure twisted.spread.pb.Error: Invalid Object ID>)\n");
    /* an unknown method: the owner answers NoSuchMethod */
    expect_answer("07 80 1a 87 07 81 01 81 06 82 6e 6f 73 75 63 68 01 81 " NOARGS " " NOKWARGS,
                  "(b'error' 7 <failure twisted.spread.flavors.NoSuchMethod: No such method: "
                  "remote_nosuch>)\n");
    /* arguments jelly refuses: answered without the owner seeing the call */
    expect_answer(CALL7("01 81", "02 80 0b 87 02 80 09 87 02 82 6f 73", NOKWARGS),
                  "(b'error' 7 <failure twisted.spread.jelly.InsecureJelly: jelly type module not "
                  "allowed>)\n");
    expect_answer(
        CALL7("01 81", "02 80 0b 87 02 80 09 82 6f 73 2e 73 79 73 74 65 6d 01 82 78", NOKWARGS),
        "(b'error' 7 <failure twisted.spread.jelly.InsecureJelly: jelly type os.system "
        "not allowed>)\n");
    expect_answer(CALL7("01 81", NOARGS,
                        "02 80 05 87 02 80 02 80 07 82 75 6e 69 63 6f 64 65 1a 87 02 80 07 82 75 "
                        "6e 69 63 6f 64 65 02 82 c3 28"),
                  "(b'error' 7 <failure builtins.UnicodeDecodeError: 'utf-8' codec can't decode "
                  "the unicode value>)\n");
    expect_answer(CALL7("01 81", NOARGS, "02 80 05 87 03 80 01 81 02 81 03 81"),
                  "(b'error' 7 <failure builtins.ValueError: dictionary entry 0 is not a pair>)\n");
    expect_answer(
        CALL7("01 81", "02 80 0b 87 02 80 07 82 62 6f 6f 6c 65 61 6e 03 82 79 65 73", NOKWARGS),
        "(b'error' 7 <failure builtins.AssertionError: boolean is neither true nor "
        "false>)\n");
    expect_answer(CALL7("01 81", "02 80 0b 87 02 80 03 87 01 81", NOKWARGS),
                  "(b'error' 7 <failure builtins.ValueError: dereference to unknown reference "
                  "1>)\n");
    expect_answer(
        CALL7("01 81", "02 80 0b 87 03 80 04 87 01 81 02 80 08 87 02 80 03 87 01 81", NOKWARGS),
        "(b'error' 7 <failure builtins.ValueError: circular reference 1 refused>)\n");
    expect_answer(CALL7("01 81", "05 81", NOKWARGS),
                  "(b'error' 7 <failure builtins.TypeError: arguments are not a tuple>)\n");
    expect_answer(CALL7("01 81", NOARGS, NOARGS),
                  "(b'error' 7 <failure builtins.TypeError: keyword arguments are not a "
                  "dictionary>)\n");
    /* a reference in refused arguments is given back at once (as Twisted's GC would) */
    expect_answer(CALL7("01 81", "03 80 0b 87 02 80 10 87 05 81 02 80 09 87 02 82 6f 73", NOKWARGS),
                  "(b'decref' 5)\n(b'error' 7 <failure twisted.spread.jelly.InsecureJelly: jelly "
                  "type module not allowed>)\n");
    /* 5000 nested lists in the arguments: the banana depth limit closes the connection */
    cw_buf_t deep = CW_BUF_INIT;
    cw_buf_append(&deep, "\x07\x80\x1a\x87\x07\x81\x01\x81\x05\x82print\x01\x81", 16);
    for (int i = 0; i < 5000; i++)
        cw_buf_append(&deep, "\x01\x80", 2);
    expect_fatal_stream(deep.data, deep.len, CW_ETOOBIG, "deeper");
    cw_buf_free(&deep);
}

static void test_no_answer_required(void **state)
{
    (void)state;
    peer_t w;
    ready_worker(&w, NULL);
    w.try_answer_unrequired = true;
    /* answerRequired 0: delivered, and an answer is refused (the master would drop us) */
    assert_int_equal(
        feed_hex(&w, "07 80 1a 87 07 81 01 81 05 82 70 72 69 6e 74 00 81 " NOARGS " " NOKWARGS), 0);
    assert_true(log_has(&w, "call 7 on 1: print(){} (no answer)\n"));
    assert_int_equal(w.answer_unrequired_rc, CW_EBADARG);
    assert_int_equal(w.out.len, 0);
    /* nor an error for an unknown object */
    assert_int_equal(
        feed_hex(&w, "07 80 1a 87 08 81 63 81 05 82 70 72 69 6e 74 00 81 " NOARGS " " NOKWARGS), 0);
    assert_int_equal(w.out.len, 0);
    peer_free(&w);
}

/* An owner that never answers: checks the table of waiting calls. */
static int silent_owner(void *ud, cw_pb_t *pb, const cw_pb_event_t *ev)
{
    (void)pb;
    size_t *n = ud;
    n[ev->type]++;
    return 0;
}

static cw_pb_t *silent_worker(size_t *counts, cw_buf_t *out, const cw_pb_config_t *extra)
{
    cw_pb_config_t cfg = extra ? *extra : (cw_pb_config_t){0};
    cfg.role = CW_PB_WORKER;
    cfg.out = out;
    cfg.on_event = silent_owner;
    cfg.ud = counts;
    cfg.username = "w1";
    cfg.username_len = 2;
    cfg.password = "pass";
    cfg.password_len = 4;
    cw_pb_t *pb;
    assert_int_equal(cw_pb_new(&pb, &cfg), 0);
    cw_buf_t b = hex(OFFER VERSION CHALLENGE_ANSWER);
    assert_int_equal(cw_pb_feed(pb, b.data, b.len), 0);
    cw_buf_free(&b);
    cw_buf_reset(out);
    return pb;
}

static void test_pending_calls_table(void **state)
{
    (void)state;
    size_t counts[CW_PB_EV_PROTOCOL_ERROR + 1] = {0};
    cw_buf_t out = CW_BUF_INIT;
    cw_pb_config_t lim = {.max_pending = 3};
    cw_pb_t *pb = silent_worker(counts, &out, &lim);
    cw_buf_t in = CW_BUF_INIT;
    put_print(&in, 1, "a");
    put_print(&in, 2, "b");
    assert_int_equal(cw_pb_feed(pb, in.data, in.len), 0);
    cw_buf_reset(&in);
    assert_true(cw_pb_answer_pending(pb, 1));
    assert_true(cw_pb_answer_pending(pb, 2));
    /* the same id again while it waits */
    put_print(&in, 2, "again");
    assert_int_equal(cw_pb_feed(pb, in.data, in.len), CW_EPROTO);
    assert_int_equal(counts[CW_PB_EV_PROTOCOL_ERROR], 1);
    assert_non_null(strstr(cw_pb_error(pb), "still waits"));
    cw_pb_free(pb);
    cw_buf_reset(&in);

    /* once answered, the id may come again; a fourth waiting call is over the limit */
    memset(counts, 0, sizeof(counts));
    pb = silent_worker(counts, &out, &lim);
    put_print(&in, 1, "a");
    assert_int_equal(cw_pb_feed(pb, in.data, in.len), 0);
    assert_int_equal(cw_pb_answer_none(pb, 1), 0);
    assert_int_equal(cw_pb_answer_none(pb, 1), CW_EBADARG); /* never twice */
    assert_int_equal(cw_pb_feed(pb, in.data, in.len), 0);
    cw_buf_reset(&in);
    put_print(&in, 2, "b");
    put_print(&in, 3, "c");
    put_print(&in, 4, "d");
    assert_int_equal(cw_pb_feed(pb, in.data, in.len), CW_ETOOBIG);
    assert_int_equal(counts[CW_PB_EV_CALL], 4);
    cw_pb_free(pb);
    cw_buf_free(&in);
    cw_buf_free(&out);
}

static void test_held_references_limit(void **state)
{
    (void)state;
    size_t counts[CW_PB_EV_PROTOCOL_ERROR + 1] = {0};
    cw_buf_t out = CW_BUF_INIT;
    cw_pb_config_t lim = {.max_remote_refs = 4};
    cw_pb_t *pb = silent_worker(counts, &out, &lim);
    /* the perspective is one; print calls carrying references to 10 distinct objects */
    cw_buf_t in = hex("03 80 1b 87 02 81 02 80 10 87 02 81");
    assert_int_equal(cw_pb_feed(pb, in.data, in.len), 0);
    cw_buf_reset(&in);
    int rc = 0;
    for (int i = 0; i < 10 && rc == 0; i++) {
        cw_jelly_enc_t e;
        call_begin(&e, &in, 10 + i, CW_PB_BOT_LUID, "print", 1);
        cw_jelly_enc_raw_list(&e, 2);
        cw_jelly_bytes(&e, "remote", 6);
        cw_jelly_int64(&e, 100 + i);
        cw_jelly_dict(&e, 0);
        call_end(&e);
        rc = cw_pb_feed(pb, in.data, in.len);
        cw_buf_reset(&in);
    }
    assert_int_equal(rc, CW_ETOOBIG);
    assert_int_equal(counts[CW_PB_EV_CALL], 3);
    /* several copies of one object count once against the limit */
    cw_pb_free(pb);
    memset(counts, 0, sizeof(counts));
    pb = silent_worker(counts, &out, &lim);
    for (int i = 0; i < 10; i++) {
        cw_jelly_enc_t e;
        call_begin(&e, &in, 10 + i, CW_PB_BOT_LUID, "print", 1);
        cw_jelly_remote(&e, 100);
        cw_jelly_dict(&e, 0);
        call_end(&e);
        assert_int_equal(cw_pb_feed(pb, in.data, in.len), 0);
        cw_buf_reset(&in);
    }
    assert_int_equal(cw_pb_refs_held(pb, 100), 10);
    for (int i = 0; i < 10; i++)
        assert_int_equal(cw_pb_decref(pb, 100), 0);
    assert_int_equal(cw_pb_decref(pb, 100), CW_EBADARG);
    char *t = transcript(out.data, out.len, true);
    assert_non_null(strstr(t, "(b'decref' 100)\n(b'decref' 100)\n"));
    free(t);
    cw_pb_free(pb);
    cw_buf_free(&in);
    cw_buf_free(&out);
}

/* ---- never send what a 3.7 master drops the connection for (reference §11.4) ---- */

static void test_never_send(void **state)
{
    (void)state;
    peer_t w;
    ready_worker(&w, NULL);
    cw_jelly_enc_t e;
    /* an answer for a request the master did not send */
    assert_int_equal(cw_pb_answer_none(w.pb, 42), CW_EBADARG);
    assert_int_equal(cw_pb_answer_begin(w.pb, 42, &e), CW_EBADARG);
    /* a decref for a reference we do not hold (the challenger was already given back) */
    assert_int_equal(cw_pb_decref(w.pb, 1), CW_EBADARG);
    assert_int_equal(cw_pb_decref(w.pb, 77), CW_EBADARG);
    /* a call on an object we hold no reference to */
    assert_int_equal(cw_pb_call0(w.pb, 77, "keepalive", NULL, NULL), CW_EBADARG);
    /* a remote of an object we do not export */
    assert_int_equal(cw_pb_call_begin(w.pb, 2, "shutdown", 1, NULL, &e, NULL), 0);
    assert_int_equal(cw_jelly_remote(&e, 55), CW_EBADARG);
    cw_jelly_dict(&e, 0);
    assert_int_equal(cw_pb_call_end(w.pb, &e), CW_EBADARG);
    peer_free(&w);

    /* a string banana refuses: nothing written, the call can still be answered afterwards (an
     * owner that answers nothing by itself keeps the call waiting) */
    cw_buf_t in = CW_BUF_INIT;
    size_t counts[CW_PB_EV_PROTOCOL_ERROR + 1] = {0};
    cw_buf_t out = CW_BUF_INIT;
    cw_pb_t *pb = silent_worker(counts, &out, NULL);
    put_print(&in, 5, "x");
    assert_int_equal(cw_pb_feed(pb, in.data, in.len), 0);
    char *big = calloc(1, CW_BANANA_SIZE_LIMIT + 1);
    assert_int_equal(cw_pb_answer_begin(pb, 5, &e), 0);
    /* only one message at a time */
    cw_jelly_enc_t e2;
    assert_int_equal(cw_pb_answer_begin(pb, 5, &e2), CW_EBADARG);
    cw_jelly_bytes(&e, big, CW_BANANA_SIZE_LIMIT + 1);
    assert_int_equal(cw_pb_answer_end(pb, &e), CW_ETOOBIG);
    assert_int_equal(out.len, 0);
    assert_true(cw_pb_answer_pending(pb, 5));
    /* a list banana refuses */
    assert_int_equal(cw_pb_answer_begin(pb, 5, &e), 0);
    cw_jelly_list(&e, CW_BANANA_SIZE_LIMIT);
    assert_int_equal(cw_pb_answer_end(pb, &e), CW_ETOOBIG);
    assert_int_equal(out.len, 0);
    /* a wrong count */
    assert_int_equal(cw_pb_answer_begin(pb, 5, &e), 0);
    cw_jelly_tuple(&e, 2);
    cw_jelly_none(&e);
    assert_int_equal(cw_pb_answer_end(pb, &e), CW_EBADARG);
    assert_int_equal(out.len, 0);
    /* then a good answer goes out, exactly once */
    assert_int_equal(cw_pb_answer_none(pb, 5), 0);
    assert_bytes(out.data, out.len, "03 80 1b 87 05 81 01 80 01 87");
    assert_false(cw_pb_answer_pending(pb, 5));
    /* a call begun on a session that is not negotiated yet is refused */
    free(big);
    cw_pb_free(pb);
    cw_buf_reset(&out);
    cw_pb_config_t cfg = {
        .role = CW_PB_WORKER, .out = &out, .on_event = silent_owner, .ud = counts};
    assert_int_equal(cw_pb_new(&pb, &cfg), 0);
    assert_int_equal(cw_pb_call0(pb, 1, "x", NULL, NULL), -ENOTCONN);
    assert_int_equal(cw_pb_decref(pb, 1), CW_EBADARG);
    cw_pb_free(pb);
    cw_buf_free(&in);
    cw_buf_free(&out);
}

static void test_lost_calls_on_close(void **state)
{
    (void)state;
    peer_t w;
    ready_worker(&w, NULL);
    int64_t a, b;
    int tag;
    assert_int_equal(cw_pb_call0(w.pb, 2, "keepalive", &tag, &a), 0);
    assert_int_equal(cw_pb_call0(w.pb, 2, "shutdown", &tag, &b), 0);
    assert_int_equal(cw_pb_calls_waiting(w.pb), 2);
    assert_int_equal(cw_pb_close(w.pb), 0);
    assert_int_equal(w.nevents[CW_PB_EV_ERROR], 2);
    assert_true(
        log_has(&w, "error 3 (lost): twisted.spread.pb.PBConnectionLost: connection lost\n"));
    assert_true(log_has(&w, "error 4 (lost)"));
    assert_int_equal(cw_pb_calls_waiting(w.pb), 0);
    assert_int_equal(cw_pb_close(w.pb), 0);
    assert_int_equal(w.nevents[CW_PB_EV_ERROR], 2);
    assert_int_equal(cw_pb_feed(w.pb, (const uint8_t *)"\x00\x81", 2), -ENOTCONN);
    peer_free(&w);
}

static void test_answers_and_errors_routed(void **state)
{
    (void)state;
    peer_t w;
    ready_worker(&w, NULL);
    int64_t a, b, c;
    assert_int_equal(cw_pb_call0(w.pb, 2, "keepalive", NULL, &a), 0);
    assert_int_equal(cw_pb_call0(w.pb, 2, "nosuch", NULL, &b), 0);
    assert_int_equal(cw_pb_call0(w.pb, 2, "other", NULL, &c), 0);
    cw_buf_reset(&w.out);
    /* answers out of order, an error with a failure, an error with plain text, an undecodable
     * answer (reported as an error, the session stays up) */
    char h[200];
    sprintf(h, "03 80 1c 87 %02llx 81 02 80 07 82 75 6e 69 63 6f 64 65 04 82 6f 6f 70 73",
            (unsigned long long)b);
    assert_int_equal(feed_hex(&w, h), 0);
    sprintf(h, "03 80 1b 87 %02llx 81 02 80 09 87 02 82 6f 73", (unsigned long long)c);
    assert_int_equal(feed_hex(&w, h), 0);
    sprintf(h, "03 80 1b 87 %02llx 81 01 80 01 87", (unsigned long long)a);
    assert_int_equal(feed_hex(&w, h), 0);
    assert_string_equal(peer_log(&w),
                        "error 4: : oops\n"
                        "error 5: twisted.spread.jelly.InsecureJelly: jelly type module not "
                        "allowed\n"
                        "answer 3: None\n");
    assert_int_equal(cw_pb_calls_waiting(w.pb), 0);
    assert_int_equal(w.out.len, 0);
    peer_free(&w);
}

static void test_take_doc(void **state)
{
    (void)state;
    peer_t w;
    ready_worker(&w, NULL);
    w.take = true;
    cw_buf_t in = CW_BUF_INIT;
    put_print(&in, 3, "keep me");
    assert_int_equal(feed_buf(&w, &in), 0);
    assert_int_equal(w.ntaken, 1);
    /* the arguments outlive the callback: find them again in the taken document's message */
    cw_banana_msg_t *m = cw_jelly_doc_msg(w.taken[0]);
    cw_jelly_t kw;
    cw_jelly_err_t err;
    assert_int_equal(cw_jelly_decode(w.taken[0], &m->root->u.list.items[6], NULL, &kw, &err), 0);
    cw_str_t s;
    assert_true(cw_jelly_text(cw_jelly_dict_get(&kw, "message"), &s));
    assert_true(cw_str_eq(s, "keep me"));
    /* notices have no document to take */
    assert_int_equal(feed_hex(&w, "02 80 0a 82 66 72 6f 62 6e 69 63 61 74 65 01 81"), 0);
    assert_int_equal(w.ntaken, 1);
    cw_buf_free(&in);
    peer_free(&w);
}

/* An owner that tries to feed and close its session from inside a callback. */
static int reentrant_owner(void *ud, cw_pb_t *pb, const cw_pb_event_t *ev)
{
    int *rcs = ud;
    if (ev->type == CW_PB_EV_CALL) {
        rcs[0] = cw_pb_feed(pb, (const uint8_t *)"\x00\x81", 2);
        rcs[1] = cw_pb_close(pb);
        rcs[2] = cw_pb_answer_none(pb, ev->u.call.reqid);
    }
    return 0;
}

static void test_reentrancy_refused(void **state)
{
    (void)state;
    int rcs[3] = {1, 1, 1};
    cw_buf_t out = CW_BUF_INIT;
    cw_pb_config_t cfg = {.role = CW_PB_WORKER,
                          .out = &out,
                          .on_event = reentrant_owner,
                          .ud = rcs,
                          .username = "w1",
                          .username_len = 2,
                          .password = "pass",
                          .password_len = 4};
    cw_pb_t *pb;
    assert_int_equal(cw_pb_new(&pb, &cfg), 0);
    cw_buf_t in = hex(OFFER VERSION CHALLENGE_ANSWER);
    put_print(&in, 1, "attached");
    assert_int_equal(cw_pb_feed(pb, in.data, in.len), 0);
    assert_int_equal(rcs[0], CW_EBADARG);
    assert_int_equal(rcs[1], CW_EBADARG);
    assert_int_equal(rcs[2], 0); /* answering from the callback is what it is for */
    assert_int_equal(cw_pb_state(pb), CW_PB_ST_LOGIN);
    cw_pb_free(pb);
    cw_buf_free(&in);
    cw_buf_free(&out);
}

static void test_owner_error_stops(void **state)
{
    (void)state;
    peer_t w;
    ready_worker(&w, NULL);
    w.owner_rc = -EIO;
    size_t calls = w.nevents[CW_PB_EV_CALL];
    cw_buf_t in = CW_BUF_INIT;
    put_print(&in, 3, "a");
    put_print(&in, 4, "b");
    assert_int_equal(feed_buf(&w, &in), -EIO);
    assert_int_equal(w.nevents[CW_PB_EV_CALL], calls + 1);
    assert_int_equal(cw_pb_state(w.pb), CW_PB_ST_CLOSED);
    assert_non_null(strstr(cw_pb_error(w.pb), "owner"));
    cw_buf_free(&in);
    peer_free(&w);
}

static void test_exports(void **state)
{
    (void)state;
    peer_t w;
    ready_worker(&w, NULL);
    /* luids are never reused */
    int64_t a, b;
    int obj;
    assert_int_equal(cw_pb_export(w.pb, &obj, false, &a), 0);
    assert_int_equal(a, 4);
    assert_int_equal(cw_pb_unexport(w.pb, a), 0);
    assert_int_equal(cw_pb_unexport(w.pb, a), CW_EBADARG);
    assert_int_equal(cw_pb_export(w.pb, &obj, false, &b), 0);
    assert_int_equal(b, 5);
    /* not callable until sent; once sent twice, released after the second decref */
    cw_buf_t in = CW_BUF_INIT;
    cw_jelly_enc_t e;
    call_begin(&e, &in, 3, b, "x", 0);
    cw_jelly_dict(&e, 0);
    call_end(&e);
    assert_int_equal(feed_buf(&w, &in), 0);
    char *t = transcript(w.out.data, w.out.len, true);
    assert_string_equal(t, "(b'error' 3 <failure twisted.spread.pb.Error: Invalid Object ID>)\n");
    free(t);
    cw_buf_reset(&w.out);
    assert_int_equal(cw_pb_call_begin(w.pb, 2, "give", 2, NULL, &e, NULL), 0);
    cw_jelly_remote(&e, b);
    cw_jelly_remote(&e, b);
    cw_jelly_dict(&e, 0);
    assert_int_equal(cw_pb_call_end(w.pb, &e), 0);
    uint64_t refs;
    assert_true(cw_pb_export_info(w.pb, b, NULL, &refs));
    assert_int_equal(refs, 2);
    char h[40];
    sprintf(h, "02 80 1d 87 %02llx 81", (unsigned long long)b);
    assert_int_equal(feed_hex(&w, h), 0);
    assert_int_equal(w.nevents[CW_PB_EV_RELEASED], 0);
    assert_int_equal(feed_hex(&w, h), 0);
    assert_int_equal(w.nevents[CW_PB_EV_RELEASED], 1);
    assert_true(log_has(&w, "released 5\n"));
    assert_false(cw_pb_export_info(w.pb, b, NULL, NULL));
    /* the export limit (Twisted's 1024 live objects) */
    cw_buf_free(&in);
    peer_free(&w);
    cw_pb_config_t lim = {.max_exports = 3};
    ready_worker(&w, &lim); /* Bot + two builders */
    assert_int_equal(cw_pb_export(w.pb, &obj, false, &a), CW_ETOOBIG);
    peer_free(&w);
}

static void test_split_invariance_worker_stream(void **state)
{
    (void)state;
    /* a whole master->worker byte stream fed whole, byte by byte and in random pieces: the same
     * bytes go out and the same events come out */
    cw_buf_t in = hex(OFFER VERSION CHALLENGE_ANSWER);
    put_print(&in, 1, "attached");
    cw_jelly_enc_t e;
    call_begin(&e, &in, 2, CW_PB_BOT_LUID, "getWorkerInfo", 0);
    cw_jelly_dict(&e, 0);
    call_end(&e);
    put_builders(&in, 3, 5);
    cw_buf_t tail = hex("03 80 1b 87 02 81 02 80 10 87 02 81"              /* the perspective */
                        " 03 80 1b 87 03 81 01 80 01 87"                   /* keepalive answered */
                        " 02 80 0a 82 66 72 6f 62 6e 69 63 61 74 65 01 81" /* ignored */
                        " 02 80 1d 87 03 81");                             /* a builder decref */
    cw_buf_append(&in, tail.data, tail.len);
    cw_buf_free(&tail);
    call_begin(&e, &in, 4, 3, "startCommand", 4);
    cw_jelly_remote(&e, 3);
    cw_jelly_str(&e, "0");
    cw_jelly_str(&e, "shell");
    cw_jelly_dict(&e, 0);
    cw_jelly_dict(&e, 0);
    call_end(&e);
    cw_buf_t t2 = hex("03 80 1b 87 04 81 00 81 03 80 1b 87 05 81 01 80 01 87");
    cw_buf_append(&in, t2.data, t2.len);
    cw_buf_free(&t2);

    char *want_out = NULL, *want_log = NULL;
    for (uint64_t seed = 0; seed < 30; seed++) {
        peer_t w;
        peer_init(&w, CW_PB_WORKER, "w1", "pass", NULL);
        w.keepalive_on_login = true;
        uint64_t s = seed * 0x9E3779B97F4A7C15u;
        size_t pos = 0;
        while (pos < in.len) {
            size_t n = seed == 0 ? in.len : seed == 1 ? 1 : (size_t)(xs(&s) % 40);
            if (n > in.len - pos)
                n = in.len - pos;
            uint8_t *copy = malloc(n ? n : 1);
            memcpy(copy, in.data + pos, n);
            assert_int_equal(cw_pb_feed(w.pb, copy, n), 0);
            free(copy);
            pos += n;
        }
        char *o = transcript(w.out.data, w.out.len, false);
        if (want_out == NULL) {
            want_out = o;
            want_log = strdup(peer_log(&w));
            assert_non_null(strstr(want_log, "logged in, perspective 2\n"));
            assert_non_null(strstr(want_log, "answer 4: 0\nanswer 5: None\n"));
        } else {
            assert_string_equal(o, want_out);
            assert_string_equal(peer_log(&w), want_log);
            free(o);
        }
        assert_int_equal(cw_pb_refs_held(w.pb, 3), 0); /* decref'd after complete */
        peer_free(&w);
    }
    free(want_out);
    free(want_log);
    cw_buf_free(&in);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_md5_rfc1321),
        cmocka_unit_test(test_md5_vs_libcrypto),
        cmocka_unit_test(test_login_response_known_answer),
        cmocka_unit_test(test_worker_login_bytes),
        cmocka_unit_test(test_calls_before_respond_answer),
        cmocka_unit_test(test_builder_luids_across_reconfig),
        cmocka_unit_test(test_session_in_memory),
        cmocka_unit_test(test_wrong_password),
        cmocka_unit_test(test_master_login_checks),
        cmocka_unit_test(test_hostile_banana),
        cmocka_unit_test(test_hostile_message_size),
        cmocka_unit_test(test_hostile_eof),
        cmocka_unit_test(test_hostile_negotiation),
        cmocka_unit_test(test_hostile_envelopes),
        cmocka_unit_test(test_hostile_ignored),
        cmocka_unit_test(test_hostile_calls_answered),
        cmocka_unit_test(test_no_answer_required),
        cmocka_unit_test(test_pending_calls_table),
        cmocka_unit_test(test_held_references_limit),
        cmocka_unit_test(test_never_send),
        cmocka_unit_test(test_lost_calls_on_close),
        cmocka_unit_test(test_answers_and_errors_routed),
        cmocka_unit_test(test_take_doc),
        cmocka_unit_test(test_owner_error_stops),
        cmocka_unit_test(test_reentrancy_refused),
        cmocka_unit_test(test_exports),
        cmocka_unit_test(test_split_invariance_worker_stream),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
