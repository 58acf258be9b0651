/* Perspective Broker session, worker and master roles, sans-I/O (see cworker/pb.h, docs/pb.md).
 *
 * Choices the header leaves open, each matching what the stock 3.7 master can send and what a
 * worker must survive (reference §4.6, §11.3, §11.4):
 * - Fatal (CW_EPROTO, the session closes, as Twisted drops the connection): anything banana
 *   refuses; a first message that is not the expected dialect offer/choice; a top-level
 *   expression that is not a list or whose first element is not a string; `version` other than
 *   6; `message` not of 7 fields, or whose request id is not an integer fitting 64 bits, whose
 *   method name is not a string or whose answerRequired is not an integer; a second call with a
 *   request id that still waits for our answer (the answers could not be told apart); `answer`,
 *   `error` not of 3 fields, `decref` not of 2; more waiting calls or held references than the
 *   configured limits.
 * - Ignored with a CW_PB_EV_NOTICE: `answer`/`error` for a request id we are not waiting for
 *   (§11.3), `decref` for an object we do not export or hold no sent copy of, unknown words,
 *   `didNotUnderstand`, `decache`, `uncache`.  Nothing is ever answered with didNotUnderstand.
 * - Answered automatically with an error (when an answer is required): calls to an object we do
 *   not export ("Invalid Object ID", also every `cachemessage`), arguments jelly refuses (its
 *   exception type and text), arguments that are not a tuple/list or keywords that are not a
 *   dictionary (TypeError); on the master role, unknown methods of root and the challenger.
 * - Every ("remote" N) in a message we accept counts one reference held; those in arguments we
 *   refused are decref'd at once (Twisted would create and garbage-collect their proxies), those
 *   in ignored answers are not counted (Twisted never unjellies them).
 */
#include "cworker/pb.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cworker/md5.h"
#include "cworker/reqtab.h"

#include "i64map.h"

#define DEFAULT_MAX_PENDING     4096
#define DEFAULT_MAX_EXPORTS     1024
#define DEFAULT_MAX_REMOTE_REFS 16384
#define MAX_CHALLENGE           64

typedef enum export_kind {
    EXP_OWNER,      /* the owner's object (Bot, builder, perspective, ...) */
    EXP_CHALLENGER, /* master role: the one-shot object a login answers with */
} export_kind_t;

typedef struct export
{
    int64_t luid;
    void *ud;
    uint64_t refs; /* copies sent and not decref'd by the peer */
    bool pinned;
    bool sent; /* sent at least once: only then can the peer call it */
    export_kind_t kind;
    /* EXP_CHALLENGER */
    uint8_t *username;
    size_t username_len;
    uint8_t challenge[MAX_CHALLENGE];
    size_t challenge_len;
}
export_t;

/* What the message under construction is, for *_end. */
typedef enum enc_kind {
    ENC_OTHER,
    ENC_CALL,
    ENC_ANSWER,
} enc_kind_t;

struct cw_pb {
    cw_pb_role_t role;
    cw_pb_state_t state;
    cw_buf_t *out;
    int (*on_event)(void *ud, cw_pb_t *pb, const cw_pb_event_t *ev);
    void *ud;
    size_t max_pending, max_exports, max_remote_refs;
    size_t max_nodes;
    cw_banana_dec_t dec;
    bool vocab; /* the pb dialect: VOCAB in what we send */
    int err;    /* why the session closed, 0 if it did not fail */
    char why[200];
    bool calls_failed; /* cw_pb_close() reported the waiting calls */
    bool in_feed;      /* inside cw_pb_feed(): feed and close are refused from callbacks */

    /* worker role */
    uint8_t *username;
    size_t username_len;
    uint8_t pw_md5[CW_MD5_DIGEST_LEN];
    void *bot_ud;
    int64_t perspective;

    /* master role */
    uint8_t fixed_challenge[MAX_CHALLENGE];
    size_t fixed_challenge_len;
    bool have_fixed_challenge;
    int64_t login_mind; /* the mind of the last CW_PB_EV_LOGIN */

    cw_i64map_t exports; /* luid -> export_t * */
    int64_t next_luid;
    cw_i64map_t held;    /* peer luid -> references held */
    cw_i64map_t pending; /* request ids of the peer's calls waiting for our answer */
    cw_reqtab_t calls;   /* our calls waiting for an answer: ctx */
    int64_t next_reqid;
    int64_t failure_count;

    /* message under construction */
    bool encoding;
    enc_kind_t enc_kind;
    int64_t enc_id;
    void *enc_ctx;
    int64_t *pend_exp; /* luids written as ("remote" N), counted at *_end */
    size_t npend_exp, pend_cap;

    /* message being handled */
    cw_jelly_doc_t *doc;
    bool doc_takeable;
    int64_t *got; /* ("remote" N) decoded from it */
    size_t ngot, got_cap;
};

/* Context of our own internal calls (worker login). */
static char login_ctx, respond_ctx;

#define T_PB_ERROR     "twisted.spread.pb.Error"
#define T_NO_SUCH      "twisted.spread.flavors.NoSuchMethod"
#define T_UNAUTHORIZED "twisted.cred.error.UnauthorizedLogin"

static const char *const parents_pb_error[] = {T_PB_ERROR, "builtins.Exception",
                                               "builtins.BaseException", "builtins.object"};
static const char *const parents_no_such[] = {T_NO_SUCH, "builtins.AttributeError",
                                              "builtins.Exception", "builtins.BaseException",
                                              "builtins.object"};
static const char *const parents_unauthorized[] = {T_UNAUTHORIZED, "twisted.cred.error.LoginFailed",
                                                   "builtins.Exception", "builtins.BaseException",
                                                   "builtins.object"};

/* ---- small helpers ---- */

/* Append up to max bytes of s to buf (capacity cap, NUL-terminated) as printable ASCII. */
static void put_printable(char *buf, size_t cap, const char *s, size_t len, size_t max)
{
    size_t o = strlen(buf);
    for (size_t i = 0; i < len && i < max && o + 5 < cap; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c < 0x7f && c != '\\')
            buf[o++] = (char)c;
        else
            o += (size_t)snprintf(buf + o, cap - o, "\\x%02x", c);
    }
    if (len > max && o + 4 < cap) {
        memcpy(buf + o, "...", 3);
        o += 3;
    }
    buf[o] = '\0';
}

static bool small_int(const cw_banana_node_t *n, int64_t *out)
{
    if (n->type != CW_BANANA_INT || (n->flags & CW_BANANA_F_BIG))
        return false;
    *out = n->u.i;
    return true;
}

static export_t *find_export(const cw_pb_t *pb, int64_t luid)
{
    uint64_t *v = cw_i64map_get(&pb->exports, luid);
    return v ? (export_t *)(uintptr_t)*v : NULL;
}

static void free_export(export_t *x)
{
    if (x == NULL)
        return;
    free(x->username);
    free(x);
}

/* ---- events and failure ---- */

/* Deliver an event.  An owner's error closes the session. */
static int emit(cw_pb_t *pb, const cw_pb_event_t *ev)
{
    int rc = pb->on_event(pb->ud, pb, ev);
    if (rc < 0 && pb->state != CW_PB_ST_CLOSED) {
        pb->state = CW_PB_ST_CLOSED;
        pb->err = rc;
        snprintf(pb->why, sizeof(pb->why), "stopped by the owner: %s", cw_strerror(rc));
    }
    return rc < 0 ? rc : 0;
}

/* Something was ignored or answered automatically: tell the owner's log. */
__attribute__((format(printf, 2, 3))) static int notice(cw_pb_t *pb, const char *fmt, ...)
{
    char text[300];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    cw_pb_event_t ev = {.type = CW_PB_EV_NOTICE};
    ev.u.notice.text = text;
    return emit(pb, &ev);
}

/* The peer broke the protocol (or a limit): close and report once.  Returns err. */
static int proto_fail(cw_pb_t *pb, int err, const char *why)
{
    if (pb->state == CW_PB_ST_CLOSED)
        return pb->err ? pb->err : err;
    pb->state = CW_PB_ST_CLOSED;
    pb->err = err;
    snprintf(pb->why, sizeof(pb->why), "%s", why);
    cw_pb_event_t ev = {.type = CW_PB_EV_PROTOCOL_ERROR};
    ev.u.notice.code = err;
    ev.u.notice.text = pb->why;
    pb->on_event(pb->ud, pb, &ev); /* its result cannot change anything now */
    return err;
}

/* ---- writing messages ---- */

/* The encoder's hook: ("remote" luid) written; only our exports may be sent. */
static int export_hook(void *ud, int64_t luid)
{
    cw_pb_t *pb = ud;
    if (find_export(pb, luid) == NULL)
        return CW_EBADARG;
    if (pb->npend_exp == pb->pend_cap) {
        size_t cap = pb->pend_cap ? pb->pend_cap * 2 : 8;
        int64_t *p = realloc(pb->pend_exp, cap * sizeof(*p));
        if (p == NULL)
            return -ENOMEM;
        pb->pend_exp = p;
        pb->pend_cap = cap;
    }
    pb->pend_exp[pb->npend_exp++] = luid;
    return 0;
}

/* Start a message: a plain list of nfields, the first of which the caller writes next. */
static int msg_begin(cw_pb_t *pb, cw_jelly_enc_t *e, size_t nfields, enc_kind_t kind)
{
    if (pb->state == CW_PB_ST_CLOSED || pb->state == CW_PB_ST_DIALECT)
        return -ENOTCONN;
    if (pb->encoding)
        return CW_EBADARG;
    cw_jelly_enc_init(e, pb->out, 1, pb->vocab);
    e->on_remote = export_hook;
    e->ud = pb;
    pb->npend_exp = 0;
    pb->encoding = true;
    pb->enc_kind = kind;
    int rc = cw_jelly_enc_raw_list(e, nfields);
    if (rc < 0) {
        cw_jelly_enc_finish(e);
        pb->encoding = false;
    }
    return rc;
}

/* Finish a message: roll back on error, else count the exports it carried. */
static int msg_end(cw_pb_t *pb, cw_jelly_enc_t *e)
{
    if (!pb->encoding || e->ud != pb)
        return CW_EBADARG;
    pb->encoding = false;
    int rc = cw_jelly_enc_finish(e);
    if (rc < 0)
        return rc;
    for (size_t i = 0; i < pb->npend_exp; i++) {
        export_t *x = find_export(pb, pb->pend_exp[i]);
        if (x) {
            x->refs++;
            x->sent = true;
        }
    }
    pb->npend_exp = 0;
    return 0;
}

/* Abandon a message after a failed write. */
static int msg_abort(cw_pb_t *pb, cw_jelly_enc_t *e, int rc)
{
    if (e->err == 0)
        e->err = rc;
    msg_end(pb, e);
    return rc;
}

/* ("version" 6) */
static int send_version(cw_pb_t *pb)
{
    cw_jelly_enc_t e;
    int rc = msg_begin(pb, &e, 2, ENC_OTHER);
    if (rc < 0)
        return rc;
    cw_jelly_bytes(&e, "version", 7);
    cw_jelly_int64(&e, CW_PB_VERSION);
    return msg_end(pb, &e);
}

/* Envelope of a call up to the argument tuple; root selects the target "root". */
static int call_begin_any(cw_pb_t *pb, bool root, int64_t target, const char *method, size_t nargs,
                          void *ctx, cw_jelly_enc_t *e, int64_t *reqid)
{
    int rc = cw_reqtab_reserve(&pb->calls);
    if (rc < 0)
        return rc;
    rc = msg_begin(pb, e, 7, ENC_CALL);
    if (rc < 0)
        return rc;
    int64_t id = pb->next_reqid++;
    cw_jelly_bytes(e, "message", 7);
    cw_jelly_int64(e, id);
    if (root)
        cw_jelly_bytes(e, "root", 4);
    else
        cw_jelly_int64(e, target);
    cw_jelly_bytes(e, method, strlen(method));
    cw_jelly_int64(e, 1);
    rc = cw_jelly_tuple(e, nargs);
    if (rc < 0)
        return msg_abort(pb, e, rc);
    pb->enc_id = id;
    pb->enc_ctx = ctx;
    if (reqid)
        *reqid = id;
    return 0;
}

int cw_pb_call_begin(cw_pb_t *pb, int64_t target, const char *method, size_t nargs, void *ctx,
                     cw_jelly_enc_t *enc, int64_t *reqid)
{
    if (pb->state == CW_PB_ST_CLOSED || pb->state == CW_PB_ST_DIALECT)
        return -ENOTCONN;
    if (cw_pb_refs_held(pb, target) == 0)
        return CW_EBADARG;
    return call_begin_any(pb, false, target, method, nargs, ctx, enc, reqid);
}

int cw_pb_call_end(cw_pb_t *pb, cw_jelly_enc_t *enc)
{
    if (!pb->encoding || pb->enc_kind != ENC_CALL)
        return CW_EBADARG;
    int64_t id = pb->enc_id;
    void *ctx = pb->enc_ctx;
    int rc = msg_end(pb, enc);
    if (rc < 0)
        return rc;
    /* room was reserved in call_begin_any, so this cannot fail for memory */
    return cw_reqtab_add(&pb->calls, id, NULL, ctx);
}

int cw_pb_call0(cw_pb_t *pb, int64_t target, const char *method, void *ctx, int64_t *reqid)
{
    cw_jelly_enc_t e;
    int rc = cw_pb_call_begin(pb, target, method, 0, ctx, &e, reqid);
    if (rc < 0)
        return rc;
    cw_jelly_dict(&e, 0);
    return cw_pb_call_end(pb, &e);
}

size_t cw_pb_calls_waiting(const cw_pb_t *pb)
{
    return cw_reqtab_count(&pb->calls);
}

bool cw_pb_answer_pending(const cw_pb_t *pb, int64_t reqid)
{
    return cw_i64map_get(&pb->pending, reqid) != NULL;
}

int cw_pb_answer_begin(cw_pb_t *pb, int64_t reqid, cw_jelly_enc_t *enc)
{
    if (pb->state == CW_PB_ST_CLOSED)
        return -ENOTCONN;
    if (!cw_pb_answer_pending(pb, reqid))
        return CW_EBADARG;
    int rc = msg_begin(pb, enc, 3, ENC_ANSWER);
    if (rc < 0)
        return rc;
    cw_jelly_bytes(enc, "answer", 6);
    rc = cw_jelly_int64(enc, reqid);
    if (rc < 0)
        return msg_abort(pb, enc, rc);
    pb->enc_id = reqid;
    return 0;
}

int cw_pb_answer_end(cw_pb_t *pb, cw_jelly_enc_t *enc)
{
    if (!pb->encoding || pb->enc_kind != ENC_ANSWER)
        return CW_EBADARG;
    int64_t id = pb->enc_id;
    int rc = msg_end(pb, enc);
    if (rc == 0)
        cw_i64map_del(&pb->pending, id);
    return rc;
}

int cw_pb_answer_none(cw_pb_t *pb, int64_t reqid)
{
    cw_jelly_enc_t e;
    int rc = cw_pb_answer_begin(pb, reqid, &e);
    if (rc < 0)
        return rc;
    cw_jelly_none(&e);
    return cw_pb_answer_end(pb, &e);
}

int cw_pb_answer_error(cw_pb_t *pb, int64_t reqid, const cw_jelly_failure_desc_t *f)
{
    if (pb->state == CW_PB_ST_CLOSED)
        return -ENOTCONN;
    if (!cw_pb_answer_pending(pb, reqid))
        return CW_EBADARG;
    cw_jelly_enc_t e;
    int rc = msg_begin(pb, &e, 3, ENC_ANSWER);
    if (rc < 0)
        return rc;
    cw_jelly_failure_desc_t d = *f;
    d.count = ++pb->failure_count;
    cw_jelly_bytes(&e, "error", 5);
    cw_jelly_int64(&e, reqid);
    cw_jelly_failure(&e, &d);
    pb->enc_id = reqid;
    return cw_pb_answer_end(pb, &e);
}

/* An error answer with a fixed type, value and parents. */
static int answer_failure(cw_pb_t *pb, int64_t reqid, const char *type, const char *value,
                          const char *const *parents, size_t nparents)
{
    cw_jelly_failure_desc_t f = {
        .type = type, .value = value, .parents = parents, .nparents = nparents};
    return cw_pb_answer_error(pb, reqid, &f);
}

int cw_pb_answer_no_such_method(cw_pb_t *pb, int64_t reqid, cw_str_t method)
{
    char value[200] = "No such method: remote_";
    put_printable(value, sizeof(value), method.ptr, method.len, 100);
    return answer_failure(pb, reqid, T_NO_SUCH, value, parents_no_such, 5);
}

/* ---- references ---- */

int cw_pb_export(cw_pb_t *pb, void *obj_ud, bool pinned, int64_t *luid)
{
    if (cw_i64map_count(&pb->exports) >= pb->max_exports)
        return CW_ETOOBIG;
    export_t *x = calloc(1, sizeof(*x));
    if (x == NULL)
        return -ENOMEM;
    x->luid = pb->next_luid;
    x->ud = obj_ud;
    x->pinned = pinned;
    x->kind = EXP_OWNER;
    if (cw_i64map_put(&pb->exports, x->luid, (uint64_t)(uintptr_t)x) < 0) {
        free(x);
        return -ENOMEM;
    }
    pb->next_luid++;
    if (luid)
        *luid = x->luid;
    return 0;
}

int cw_pb_unexport(cw_pb_t *pb, int64_t luid)
{
    export_t *x = find_export(pb, luid);
    if (x == NULL)
        return CW_EBADARG;
    cw_i64map_del(&pb->exports, luid);
    free_export(x);
    return 0;
}

bool cw_pb_export_info(const cw_pb_t *pb, int64_t luid, void **ud, uint64_t *refs)
{
    export_t *x = find_export(pb, luid);
    if (x == NULL)
        return false;
    if (ud)
        *ud = x->ud;
    if (refs)
        *refs = x->refs;
    return true;
}

uint64_t cw_pb_refs_held(const cw_pb_t *pb, int64_t luid)
{
    uint64_t *n = cw_i64map_get(&pb->held, luid);
    return n ? *n : 0;
}

int cw_pb_decref(cw_pb_t *pb, int64_t luid)
{
    uint64_t *n = cw_i64map_get(&pb->held, luid);
    if (n == NULL || *n == 0)
        return CW_EBADARG;
    cw_jelly_enc_t e;
    int rc = msg_begin(pb, &e, 2, ENC_OTHER);
    if (rc < 0)
        return rc;
    cw_jelly_bytes(&e, "decref", 6);
    cw_jelly_int64(&e, luid);
    rc = msg_end(pb, &e);
    if (rc < 0)
        return rc;
    n = cw_i64map_get(&pb->held, luid); /* the map did not change, but stay honest */
    if (--*n == 0)
        cw_i64map_del(&pb->held, luid);
    return 0;
}

/* cw_pb_decref_value with a depth guard. */
static int decref_walk(cw_pb_t *pb, const cw_jelly_t *v, unsigned depth)
{
    if (v == NULL || v->shared || depth > 2 * CW_BANANA_MAX_DEPTH)
        return 0;
    int rc = 0;
    switch (v->type) {
    case CW_JELLY_REMOTE:
        return cw_pb_decref(pb, v->u.luid);
    case CW_JELLY_LIST:
    case CW_JELLY_TUPLE:
        for (size_t i = 0; rc == 0 && i < v->u.seq.n; i++)
            rc = decref_walk(pb, &v->u.seq.items[i], depth + 1);
        return rc;
    case CW_JELLY_DICT:
        for (size_t i = 0; rc == 0 && i < v->u.dict.n; i++) {
            rc = decref_walk(pb, &v->u.dict.pairs[i].key, depth + 1);
            if (rc == 0)
                rc = decref_walk(pb, &v->u.dict.pairs[i].value, depth + 1);
        }
        return rc;
    case CW_JELLY_FAILURE:
        return decref_walk(pb, v->u.failure.state, depth + 1);
    default:
        return 0;
    }
}

int cw_pb_decref_value(cw_pb_t *pb, const cw_jelly_t *v)
{
    return decref_walk(pb, v, 0);
}

/* Decoder hook: remember each ("remote" N) of the message being handled. */
static int got_remote(void *ud, int64_t luid)
{
    cw_pb_t *pb = ud;
    if (pb->ngot == pb->got_cap) {
        size_t cap = pb->got_cap ? pb->got_cap * 2 : 8;
        int64_t *p = realloc(pb->got, cap * sizeof(*p));
        if (p == NULL)
            return -ENOMEM;
        pb->got = p;
        pb->got_cap = cap;
    }
    pb->got[pb->ngot++] = luid;
    return 0;
}

/* The decoded message is accepted: count its references as held. */
static int hold_got(cw_pb_t *pb)
{
    for (size_t i = 0; i < pb->ngot; i++) {
        uint64_t *n = cw_i64map_get(&pb->held, pb->got[i]);
        if (n) {
            ++*n;
            continue;
        }
        if (cw_i64map_count(&pb->held) >= pb->max_remote_refs)
            return proto_fail(pb, CW_ETOOBIG, "the peer handed out more references than allowed");
        if (cw_i64map_put(&pb->held, pb->got[i], 1) < 0)
            return proto_fail(pb, -ENOMEM, "out of memory");
    }
    return 0;
}

/* The decoded arguments were refused: give their references back at once. */
static int drop_got(cw_pb_t *pb)
{
    int rc = hold_got(pb);
    for (size_t i = 0; rc == 0 && i < pb->ngot; i++)
        rc = cw_pb_decref(pb, pb->got[i]);
    pb->ngot = 0;
    return rc;
}

/* ---- login ---- */

void cw_pb_response(const void *password, size_t password_len, const uint8_t *challenge,
                    size_t challenge_len, uint8_t response[16])
{
    uint8_t h[CW_MD5_DIGEST_LEN];
    cw_md5(password, password_len, h);
    cw_md5_t s;
    cw_md5_init(&s);
    cw_md5_update(&s, h, sizeof(h));
    cw_md5_update(&s, challenge, challenge_len);
    cw_md5_final(&s, response);
}

bool cw_pb_check_response(const uint8_t *challenge, size_t challenge_len, const uint8_t *response,
                          size_t response_len, const void *password, size_t password_len)
{
    uint8_t want[CW_MD5_DIGEST_LEN];
    cw_pb_response(password, password_len, challenge, challenge_len, want);
    if (response_len != sizeof(want))
        return false;
    uint8_t diff = 0;
    for (size_t i = 0; i < sizeof(want); i++)
        diff |= (uint8_t)(want[i] ^ response[i]);
    return diff == 0;
}

/* Worker: the login is refused or failed; report it. */
static int login_failed(cw_pb_t *pb, const cw_jelly_t *v, const char *why)
{
    char text[400] = "";
    cw_pb_login_failure_t kind = CW_PB_LOGIN_OTHER;
    cw_str_t type = {"", 0}, value = {"", 0};
    if (v && v->type == CW_JELLY_FAILURE) {
        type = v->u.failure.type;
        value = v->u.failure.value;
    } else if (v) {
        cw_jelly_text(v, &value);
    }
    if (cw_str_eq(type, T_UNAUTHORIZED))
        kind = CW_PB_LOGIN_UNAUTHORIZED;
    else if (cw_str_eq(value, "rejecting duplicate worker"))
        kind = CW_PB_LOGIN_DUPLICATE;
    if (why) {
        snprintf(text, sizeof(text), "%s", why);
    } else {
        put_printable(text, sizeof(text), type.ptr, type.len, 120);
        if (type.len && value.len)
            put_printable(text, sizeof(text), ": ", 2, 2);
        put_printable(text, sizeof(text), value.ptr, value.len, 200);
    }
    pb->state = CW_PB_ST_REFUSED;
    cw_pb_event_t ev = {.type = CW_PB_EV_LOGIN_FAILED};
    ev.u.login_failed.kind = kind;
    ev.u.login_failed.text = text;
    return emit(pb, &ev);
}

/* Worker: the answer to login(name): (challenge, challenger).  Respond and drop the challenger. */
static int login_answer(cw_pb_t *pb, const cw_jelly_t *v)
{
    size_t n;
    const cw_jelly_t *it = cw_jelly_items(v, &n);
    if (n != 2 || it[0].type != CW_JELLY_BYTES || it[1].type != CW_JELLY_REMOTE)
        return login_failed(pb, NULL,
                            "the master answered login with something else than a "
                            "challenge and a challenger");
    uint8_t response[CW_MD5_DIGEST_LEN];
    cw_md5_t s;
    cw_md5_init(&s);
    cw_md5_update(&s, pb->pw_md5, sizeof(pb->pw_md5));
    cw_md5_update(&s, it[0].u.s.ptr, it[0].u.s.len);
    cw_md5_final(&s, response);
    int64_t challenger = it[1].u.luid;

    cw_jelly_enc_t e;
    int rc = call_begin_any(pb, false, challenger, "respond", 2, &respond_ctx, &e, NULL);
    if (rc < 0)
        return proto_fail(pb, rc, "cannot send respond");
    cw_jelly_bytes(&e, response, sizeof(response));
    cw_jelly_remote(&e, CW_PB_BOT_LUID);
    cw_jelly_dict(&e, 0);
    rc = cw_pb_call_end(pb, &e);
    if (rc == 0)
        rc = cw_pb_decref(pb, challenger);
    if (rc < 0)
        return proto_fail(pb, rc, "cannot send respond");
    return 0;
}

/* Worker: the answer to respond: the perspective. */
static int respond_answer(cw_pb_t *pb, const cw_jelly_t *v)
{
    if (v->type != CW_JELLY_REMOTE)
        return login_failed(pb, NULL, "the master answered respond without a perspective");
    pb->perspective = v->u.luid;
    pb->state = CW_PB_ST_READY;
    cw_pb_event_t ev = {.type = CW_PB_EV_LOGGED_IN};
    ev.u.logged_in.perspective = v->u.luid;
    return emit(pb, &ev);
}

int cw_pb_login_accept(cw_pb_t *pb, int64_t reqid, void *perspective_ud, int64_t *luid)
{
    if (pb->role != CW_PB_MASTER || !cw_pb_answer_pending(pb, reqid))
        return CW_EBADARG;
    int64_t p;
    int rc = cw_pb_export(pb, perspective_ud, true, &p);
    if (rc < 0)
        return rc;
    cw_jelly_enc_t e;
    rc = cw_pb_answer_begin(pb, reqid, &e);
    if (rc == 0) {
        cw_jelly_remote(&e, p);
        rc = cw_pb_answer_end(pb, &e);
    }
    if (rc < 0) {
        cw_pb_unexport(pb, p);
        return rc;
    }
    pb->state = CW_PB_ST_READY;
    if (luid)
        *luid = p;
    return 0;
}

int cw_pb_login_reject(cw_pb_t *pb, int64_t reqid, cw_pb_login_failure_t why, const char *text)
{
    if (pb->role != CW_PB_MASTER || !cw_pb_answer_pending(pb, reqid))
        return CW_EBADARG;
    switch (why) {
    case CW_PB_LOGIN_UNAUTHORIZED:
        /* the stock master drops the mind first: ("decref" 1), then the error */
        if (cw_pb_refs_held(pb, pb->login_mind) > 0) {
            int rc = cw_pb_decref(pb, pb->login_mind);
            if (rc < 0)
                return rc;
        }
        return answer_failure(pb, reqid, T_UNAUTHORIZED, text ? text : "", parents_unauthorized, 5);
    case CW_PB_LOGIN_DUPLICATE:
        return answer_failure(pb, reqid, "builtins.RuntimeError", "rejecting duplicate worker",
                              NULL, 0);
    default:
        return answer_failure(pb, reqid, "builtins.RuntimeError", text ? text : "login refused",
                              NULL, 0);
    }
}

/* ---- handling received messages ---- */

/* Decode one jelly value of the message being handled, collecting its references. */
static int decode(cw_pb_t *pb, const cw_banana_node_t *n, cw_jelly_t *out, cw_jelly_err_t *err)
{
    cw_jelly_dec_opts_t o = {.max_nodes = pb->max_nodes, .on_remote = got_remote, .ud = pb};
    return cw_jelly_decode(pb->doc, n, &o, out, err);
}

/* Answer a call we cannot serve with an error built from a jelly refusal. */
static int refuse_call(cw_pb_t *pb, int64_t reqid, bool answer, const cw_jelly_err_t *err)
{
    int rc = notice(pb, "call %lld refused: %s: %s", (long long)reqid, err->type, err->text);
    if (rc == 0 && answer)
        rc = answer_failure(pb, reqid, err->type, err->text, NULL, 0);
    return rc;
}

/* Master: login(username) on root: answer (challenge, challenger). */
static int root_login(cw_pb_t *pb, int64_t reqid, const cw_jelly_t *args)
{
    size_t n;
    const cw_jelly_t *it = cw_jelly_items(args, &n);
    cw_str_t name;
    if (n != 1 || !cw_jelly_text(&it[0], &name)) {
        cw_jelly_err_t err = {"builtins.TypeError", "login() takes exactly one name"};
        return refuse_call(pb, reqid, true, &err);
    }
    int64_t luid;
    int rc = cw_pb_export(pb, NULL, false, &luid);
    if (rc == CW_ETOOBIG) /* a peer that logs in again and again without decrefs */
        return answer_failure(pb, reqid, T_PB_ERROR, "Maximum PB reference count exceeded.",
                              parents_pb_error, 4);
    if (rc < 0)
        return proto_fail(pb, rc, "cannot export a challenger");
    export_t *x = find_export(pb, luid);
    x->kind = EXP_CHALLENGER;
    x->username = malloc(name.len ? name.len : 1);
    if (x->username == NULL)
        return proto_fail(pb, -ENOMEM, "out of memory");
    memcpy(x->username, name.ptr, name.len);
    x->username_len = name.len;
    if (pb->have_fixed_challenge) {
        memcpy(x->challenge, pb->fixed_challenge, pb->fixed_challenge_len);
        x->challenge_len = pb->fixed_challenge_len;
    } else {
        x->challenge_len = CW_MD5_DIGEST_LEN;
        rc = cw_random_bytes(x->challenge, x->challenge_len);
        if (rc < 0) {
            cw_pb_unexport(pb, luid);
            return answer_failure(pb, reqid, "builtins.OSError", "no random challenge", NULL, 0);
        }
    }
    cw_jelly_enc_t e;
    rc = cw_pb_answer_begin(pb, reqid, &e);
    if (rc < 0)
        return proto_fail(pb, rc, "cannot answer login");
    cw_jelly_tuple(&e, 2);
    cw_jelly_bytes(&e, x->challenge, x->challenge_len);
    cw_jelly_remote(&e, luid);
    rc = cw_pb_answer_end(pb, &e);
    if (rc < 0)
        return proto_fail(pb, rc, "cannot answer login");
    return 0;
}

/* Master: respond(response, mind) on a challenger: the owner decides. */
static int challenger_respond(cw_pb_t *pb, export_t *x, int64_t reqid, const cw_jelly_t *args)
{
    size_t n;
    const cw_jelly_t *it = cw_jelly_items(args, &n);
    if (n != 2 || it[0].type != CW_JELLY_BYTES || it[1].type != CW_JELLY_REMOTE) {
        cw_jelly_err_t err = {"builtins.TypeError", "respond() takes a response and a mind"};
        int rc = drop_got(pb);
        return rc < 0 ? rc : refuse_call(pb, reqid, true, &err);
    }
    int rc = hold_got(pb);
    if (rc < 0)
        return rc;
    pb->login_mind = it[1].u.luid;
    cw_pb_event_t ev = {.type = CW_PB_EV_LOGIN};
    ev.u.login.reqid = reqid;
    ev.u.login.username = (cw_str_t){(const char *)x->username, x->username_len};
    ev.u.login.challenge = x->challenge;
    ev.u.login.challenge_len = x->challenge_len;
    ev.u.login.response = (const uint8_t *)it[0].u.s.ptr;
    ev.u.login.response_len = it[0].u.s.len;
    ev.u.login.mind = it[1].u.luid;
    pb->doc_takeable = true;
    rc = emit(pb, &ev);
    pb->doc_takeable = false;
    return rc;
}

/* ("message" reqID objectID method answerRequired args kwargs) */
static int handle_call(cw_pb_t *pb, const cw_banana_node_t *f, bool cached)
{
    int64_t reqid, answer_flag;
    if (!small_int(&f[1], &reqid))
        return proto_fail(pb, CW_EPROTO, "call with a request id that is not a 64-bit integer");
    if (f[3].type != CW_BANANA_STRING)
        return proto_fail(pb, CW_EPROTO, "call with a method name that is not a string");
    if (!small_int(&f[4], &answer_flag))
        return proto_fail(pb, CW_EPROTO, "call with an answerRequired that is not an integer");
    bool answer = answer_flag != 0;
    cw_str_t method = f[3].u.s;
    if (answer) {
        if (cw_pb_answer_pending(pb, reqid))
            return proto_fail(pb, CW_EPROTO,
                              "call with a request id that still waits for its "
                              "answer");
        if (cw_i64map_count(&pb->pending) >= pb->max_pending)
            return proto_fail(pb, CW_ETOOBIG, "more unanswered calls than allowed");
        if (cw_i64map_put(&pb->pending, reqid, 1) < 0)
            return proto_fail(pb, -ENOMEM, "out of memory");
    }

    /* the object first, as Twisted: no argument is looked at for an unknown one */
    export_t *x = NULL;
    bool root = false;
    int64_t luid = 0;
    if (!cached && small_int(&f[2], &luid)) {
        x = find_export(pb, luid);
        if (x && !x->sent)
            x = NULL;
    } else if (!cached && pb->role == CW_PB_MASTER && f[2].type == CW_BANANA_STRING &&
               cw_str_eq(f[2].u.s, "root")) {
        root = true;
    }
    if (x == NULL && !root) {
        char text[200] = "";
        put_printable(text, sizeof(text), method.ptr, method.len, 60);
        int rc = notice(pb, "call %lld of %s on an unknown object: Invalid Object ID",
                        (long long)reqid, text);
        if (rc == 0 && answer)
            rc = answer_failure(pb, reqid, T_PB_ERROR, "Invalid Object ID", parents_pb_error, 4);
        return rc;
    }

    cw_jelly_t args, kwargs;
    cw_jelly_err_t err;
    pb->ngot = 0;
    int rc = decode(pb, &f[5], &args, &err);
    if (rc == 0 && args.type != CW_JELLY_TUPLE && args.type != CW_JELLY_LIST) {
        err = (cw_jelly_err_t){"builtins.TypeError", "arguments are not a tuple"};
        rc = CW_EBADMSG;
    }
    if (rc == 0)
        rc = decode(pb, &f[6], &kwargs, &err);
    if (rc == 0 && kwargs.type != CW_JELLY_DICT) {
        err = (cw_jelly_err_t){"builtins.TypeError", "keyword arguments are not a dictionary"};
        rc = CW_EBADMSG;
    }
    if (rc == CW_EBADMSG) {
        rc = drop_got(pb);
        return rc < 0 ? rc : refuse_call(pb, reqid, answer, &err);
    }
    if (rc < 0)
        return proto_fail(pb, rc, "cannot decode a call");

    if (root || x->kind == EXP_CHALLENGER) {
        bool known = root ? cw_str_eq(method, "login") : cw_str_eq(method, "respond");
        if (!known || !answer) {
            rc = drop_got(pb);
            if (rc == 0 && answer)
                rc = cw_pb_answer_no_such_method(pb, reqid, method);
            return rc;
        }
        if (root) {
            rc = drop_got(pb);
            return rc < 0 ? rc : root_login(pb, reqid, &args);
        }
        return challenger_respond(pb, x, reqid, &args);
    }

    rc = hold_got(pb);
    if (rc < 0)
        return rc;
    cw_pb_event_t ev = {.type = CW_PB_EV_CALL};
    ev.u.call.reqid = reqid;
    ev.u.call.target = luid;
    ev.u.call.target_ud = x->ud;
    ev.u.call.method = method;
    ev.u.call.answer_required = answer;
    ev.u.call.args = &args;
    ev.u.call.kwargs = &kwargs;
    pb->doc_takeable = true;
    rc = emit(pb, &ev);
    pb->doc_takeable = false;
    return rc;
}

/* ("answer" reqID value) or ("error" reqID failure) */
static int handle_answer(cw_pb_t *pb, const cw_banana_node_t *f, bool is_error)
{
    int64_t reqid;
    cw_reqtab_entry_t call;
    if (!small_int(&f[1], &reqid) || !cw_reqtab_take(&pb->calls, reqid, &call)) {
        long long shown =
            f[1].type == CW_BANANA_INT && !(f[1].flags & CW_BANANA_F_BIG) ? f[1].u.i : -1;
        return notice(pb, "%s for request %lld, which is not waiting: ignored",
                      is_error ? "error" : "answer", shown);
    }
    cw_jelly_t v;
    cw_jelly_err_t err;
    pb->ngot = 0;
    int rc = decode(pb, &f[2], &v, &err);
    if (rc < 0 && rc != CW_EBADMSG)
        return proto_fail(pb, rc, "cannot decode an answer");
    bool ok = rc == 0;
    rc = ok ? hold_got(pb) : drop_got(pb);
    if (rc < 0)
        return rc;

    if (call.ctx == &login_ctx || call.ctx == &respond_ctx) {
        if (!ok) {
            char why[220];
            snprintf(why, sizeof(why), "undecodable answer to %s: %s",
                     call.ctx == &login_ctx ? "login" : "respond", err.text);
            return login_failed(pb, NULL, why);
        }
        if (is_error)
            return login_failed(pb, &v, NULL);
        return call.ctx == &login_ctx ? login_answer(pb, &v) : respond_answer(pb, &v);
    }

    cw_pb_event_t ev = {.type = is_error || !ok ? CW_PB_EV_ERROR : CW_PB_EV_ANSWER};
    if (ev.type == CW_PB_EV_ANSWER) {
        ev.u.answer.reqid = reqid;
        ev.u.answer.ctx = call.ctx;
        ev.u.answer.value = &v;
    } else {
        ev.u.error.reqid = reqid;
        ev.u.error.ctx = call.ctx;
        ev.u.error.fail_type = (cw_str_t){"", 0};
        ev.u.error.fail_value = (cw_str_t){"", 0};
        if (!ok) {
            ev.u.error.fail_type = (cw_str_t){err.type, strlen(err.type)};
            ev.u.error.fail_value = (cw_str_t){err.text, strlen(err.text)};
        } else {
            ev.u.error.value = &v;
            if (v.type == CW_JELLY_FAILURE) {
                ev.u.error.fail_type = v.u.failure.type;
                ev.u.error.fail_value = v.u.failure.value;
            } else {
                cw_jelly_text(&v, &ev.u.error.fail_value);
            }
        }
    }
    pb->doc_takeable = ok;
    rc = emit(pb, &ev);
    pb->doc_takeable = false;
    return rc;
}

/* ("decref" luid): the peer dropped one copy of one of our objects. */
static int handle_decref(cw_pb_t *pb, const cw_banana_node_t *f)
{
    int64_t luid;
    export_t *x = small_int(&f[1], &luid) ? find_export(pb, luid) : NULL;
    if (x == NULL || x->refs == 0)
        return notice(pb, "decref of an object we do not export or sent no copy of: ignored");
    if (--x->refs > 0 || x->pinned)
        return 0;
    cw_i64map_del(&pb->exports, luid);
    bool owners = x->kind == EXP_OWNER;
    void *ud = x->ud;
    free_export(x);
    if (!owners)
        return 0;
    cw_pb_event_t ev = {.type = CW_PB_EV_RELEASED};
    ev.u.released.luid = luid;
    ev.u.released.ud = ud;
    return emit(pb, &ev);
}

/* The first message: the master's offer (worker) or the worker's choice (master). */
static int handle_dialect(cw_pb_t *pb, const cw_banana_node_t *root)
{
    if (pb->role == CW_PB_WORKER) {
        bool offered = false;
        if (root->type != CW_BANANA_LIST)
            return proto_fail(pb, CW_EPROTO, "the dialect offer is not a list");
        for (size_t i = 0; i < root->u.list.n; i++)
            if (root->u.list.items[i].type == CW_BANANA_STRING &&
                cw_str_eq(root->u.list.items[i].u.s, "pb"))
                offered = true;
        if (!offered)
            return proto_fail(pb, CW_EPROTO, "the master does not offer the pb dialect");
        /* the choice goes out before VOCAB is allowed, as a bare STRING */
        int rc = cw_banana_string(pb->out, "pb", 2, false);
        if (rc < 0)
            return proto_fail(pb, rc, "out of memory");
        pb->vocab = true;
        cw_banana_dec_set_vocab(&pb->dec, true);
        pb->state = CW_PB_ST_LOGIN;
        rc = send_version(pb);
        if (rc < 0)
            return proto_fail(pb, rc, "out of memory");
        /* the Bot is luid 1 (exported first, in cw_pb_new); login(name) on "root" */
        cw_jelly_enc_t e;
        rc = call_begin_any(pb, true, 0, "login", 1, &login_ctx, &e, NULL);
        if (rc == 0) {
            cw_jelly_bytes(&e, pb->username, pb->username_len);
            cw_jelly_dict(&e, 0);
            rc = cw_pb_call_end(pb, &e);
        }
        if (rc < 0)
            return proto_fail(pb, rc, "cannot send login (name longer than banana allows?)");
        return 0;
    }
    if (root->type != CW_BANANA_STRING ||
        !(cw_str_eq(root->u.s, "pb") || cw_str_eq(root->u.s, "none")))
        return proto_fail(pb, CW_EPROTO, "the worker chose a dialect that was not offered");
    bool pbd = cw_str_eq(root->u.s, "pb");
    pb->vocab = pbd;
    cw_banana_dec_set_vocab(&pb->dec, pbd);
    pb->state = CW_PB_ST_LOGIN;
    int rc = send_version(pb);
    return rc < 0 ? proto_fail(pb, rc, "out of memory") : 0;
}

/* Act on one received top-level expression (takes it). */
static int handle(cw_pb_t *pb, cw_banana_msg_t *m)
{
    pb->doc = cw_jelly_doc_new(m);
    if (pb->doc == NULL)
        return proto_fail(pb, -ENOMEM, "out of memory");
    const cw_banana_node_t *root = m->root;
    int rc = 0;
    if (pb->state == CW_PB_ST_DIALECT) {
        rc = handle_dialect(pb, root);
        goto done;
    }
    if (root->type != CW_BANANA_LIST || root->u.list.n == 0) {
        rc = proto_fail(pb, CW_EPROTO, "non-list expression received");
        goto done;
    }
    const cw_banana_node_t *f = root->u.list.items;
    size_t n = root->u.list.n;
    if (f[0].type != CW_BANANA_STRING) {
        rc = proto_fail(pb, CW_EPROTO, "message word is not a string");
        goto done;
    }
    cw_str_t word = f[0].u.s;
    if (cw_str_eq(word, "version")) {
        int64_t v;
        if (n != 2 || !small_int(&f[1], &v) || v != CW_PB_VERSION)
            rc = proto_fail(pb, CW_EPROTO, "version incompatibility (not 6)");
    } else if (cw_str_eq(word, "message") || cw_str_eq(word, "cachemessage")) {
        if (n != 7)
            rc = proto_fail(pb, CW_EPROTO, "call without exactly 7 fields");
        else
            rc = handle_call(pb, f, word.len != 7);
    } else if (cw_str_eq(word, "answer") || cw_str_eq(word, "error")) {
        if (n != 3)
            rc = proto_fail(pb, CW_EPROTO, "answer without exactly 3 fields");
        else
            rc = handle_answer(pb, f, word.len == 5);
    } else if (cw_str_eq(word, "decref")) {
        if (n != 2)
            rc = proto_fail(pb, CW_EPROTO, "decref without exactly 2 fields");
        else
            rc = handle_decref(pb, f);
    } else {
        char text[120] = "";
        put_printable(text, sizeof(text), word.ptr, word.len, 40);
        rc = notice(pb, "message '%s' ignored", text);
    }
done:
    cw_jelly_doc_free(pb->doc);
    pb->doc = NULL;
    if (rc < 0 && pb->state != CW_PB_ST_CLOSED)
        rc = proto_fail(pb, rc, cw_strerror(rc));
    return rc;
}

/* ---- session ---- */

int cw_pb_new(cw_pb_t **out, const cw_pb_config_t *cfg)
{
    *out = NULL;
    if (cfg->out == NULL || cfg->on_event == NULL || cfg->challenge_len > MAX_CHALLENGE)
        return CW_EBADARG;
    cw_pb_t *pb = calloc(1, sizeof(*pb));
    if (pb == NULL)
        return -ENOMEM;
    pb->role = cfg->role;
    pb->state = CW_PB_ST_DIALECT;
    pb->out = cfg->out;
    pb->on_event = cfg->on_event;
    pb->ud = cfg->ud;
    pb->max_pending = cfg->max_pending ? cfg->max_pending : DEFAULT_MAX_PENDING;
    pb->max_exports = cfg->max_exports ? cfg->max_exports : DEFAULT_MAX_EXPORTS;
    pb->max_remote_refs = cfg->max_remote_refs ? cfg->max_remote_refs : DEFAULT_MAX_REMOTE_REFS;
    cw_banana_dec_init(&pb->dec, &cfg->limits);
    pb->max_nodes = pb->dec.lim.max_nodes;
    pb->next_luid = 1;
    pb->next_reqid = 1;
    pb->exports = (cw_i64map_t)CW_I64MAP_INIT;
    pb->held = (cw_i64map_t)CW_I64MAP_INIT;
    pb->pending = (cw_i64map_t)CW_I64MAP_INIT;
    pb->calls = (cw_reqtab_t)CW_REQTAB_INIT;
    int rc = 0;
    if (cfg->role == CW_PB_WORKER) {
        pb->username = malloc(cfg->username_len ? cfg->username_len : 1);
        if (pb->username == NULL) {
            rc = -ENOMEM;
            goto fail;
        }
        if (cfg->username_len)
            memcpy(pb->username, cfg->username, cfg->username_len);
        pb->username_len = cfg->username_len;
        cw_md5(cfg->password ? cfg->password : "", cfg->password_len, pb->pw_md5);
        pb->bot_ud = cfg->bot_ud;
        rc = cw_pb_export(pb, cfg->bot_ud, true, NULL); /* the Bot: luid 1 */
        if (rc < 0)
            goto fail;
    } else if (cfg->challenge) {
        memcpy(pb->fixed_challenge, cfg->challenge, cfg->challenge_len);
        pb->fixed_challenge_len = cfg->challenge_len;
        pb->have_fixed_challenge = true;
    }
    *out = pb;
    return 0;
fail:
    cw_pb_free(pb);
    return rc;
}

void cw_pb_free(cw_pb_t *pb)
{
    if (pb == NULL)
        return;
    for (size_t i = 0; i < pb->exports.cap; i++)
        if (pb->exports.slots[i].used)
            free_export((export_t *)(uintptr_t)pb->exports.slots[i].val);
    cw_i64map_free(&pb->exports);
    cw_i64map_free(&pb->held);
    cw_i64map_free(&pb->pending);
    cw_reqtab_free(&pb->calls);
    cw_banana_dec_free(&pb->dec);
    cw_jelly_doc_free(pb->doc);
    free(pb->pend_exp);
    free(pb->got);
    if (pb->username)
        memset(pb->username, 0, pb->username_len);
    free(pb->username);
    memset(pb->pw_md5, 0, sizeof(pb->pw_md5));
    free(pb);
}

int cw_pb_start(cw_pb_t *pb)
{
    if (pb->role != CW_PB_MASTER)
        return 0;
    /* ("pb" "none"), before VOCAB exists */
    size_t mark = pb->out->len;
    int rc = cw_banana_list(pb->out, 2);
    if (rc == 0)
        rc = cw_banana_string(pb->out, "pb", 2, false);
    if (rc == 0)
        rc = cw_banana_string(pb->out, "none", 4, false);
    if (rc < 0)
        pb->out->len = mark;
    return rc;
}

/* The body of cw_pb_feed(). */
static int feed(cw_pb_t *pb, const uint8_t *data, size_t len)
{
    while (len > 0) {
        size_t used;
        cw_banana_msg_t *m;
        int rc = cw_banana_dec_feed(&pb->dec, data, len, &used, &m);
        data += used;
        len -= used;
        if (rc < 0)
            return proto_fail(pb, rc, cw_banana_dec_error(&pb->dec));
        if (m == NULL)
            break;
        rc = handle(pb, m);
        if (rc < 0)
            return rc;
        if (pb->state == CW_PB_ST_CLOSED)
            return pb->err ? pb->err : -ENOTCONN;
    }
    return 0;
}

int cw_pb_feed(cw_pb_t *pb, const uint8_t *data, size_t len)
{
    if (pb->in_feed)
        return CW_EBADARG;
    if (pb->state == CW_PB_ST_CLOSED)
        return pb->err ? pb->err : -ENOTCONN;
    pb->in_feed = true;
    int rc = feed(pb, data, len);
    pb->in_feed = false;
    return rc;
}

int cw_pb_close(cw_pb_t *pb)
{
    if (pb->in_feed)
        return CW_EBADARG;
    bool truncated = cw_banana_dec_partial(&pb->dec) && pb->state != CW_PB_ST_CLOSED;
    if (pb->state != CW_PB_ST_CLOSED) {
        pb->state = CW_PB_ST_CLOSED;
        if (truncated) {
            pb->err = CW_EPROTO;
            snprintf(pb->why, sizeof(pb->why), "the connection closed inside a message");
        }
    }
    if (!pb->calls_failed) {
        pb->calls_failed = true;
        cw_reqtab_entry_t call;
        while (cw_reqtab_pop(&pb->calls, &call)) {
            if (call.ctx == &login_ctx || call.ctx == &respond_ctx)
                continue;
            cw_pb_event_t ev = {.type = CW_PB_EV_ERROR};
            ev.u.error.reqid = call.seq;
            ev.u.error.ctx = call.ctx;
            ev.u.error.fail_type = (cw_str_t){"twisted.spread.pb.PBConnectionLost", 34};
            ev.u.error.fail_value = (cw_str_t){"connection lost", 15};
            ev.u.error.lost = true;
            pb->on_event(pb->ud, pb, &ev);
        }
    }
    return truncated ? CW_EPROTO : 0;
}

cw_pb_state_t cw_pb_state(const cw_pb_t *pb)
{
    return pb->state;
}

const char *cw_pb_error(const cw_pb_t *pb)
{
    return pb->err ? pb->why : NULL;
}

int64_t cw_pb_perspective(const cw_pb_t *pb)
{
    return pb->perspective;
}

cw_jelly_doc_t *cw_pb_take_doc(cw_pb_t *pb)
{
    if (!pb->doc_takeable || pb->doc == NULL)
        return NULL;
    cw_jelly_doc_t *d = pb->doc;
    pb->doc = NULL;
    pb->doc_takeable = false;
    return d;
}
