/* Twisted Perspective Broker session ("pb"), sans-I/O: the broker on top of
 * banana (cworker/banana.h) and jelly (cworker/jelly.h), as the stock
 * Buildbot 3.7 master and Twisted 22.4 speak it.  Design note: docs/pb.md.
 *
 * The session never touches a socket or a clock.  The owner pushes received
 * bytes in with cw_pb_feed(); what the session has to tell comes out through
 * one callback, on_event, called from inside cw_pb_feed() (and
 * cw_pb_close()); every byte the session wants sent is appended to the
 * owner's output buffer (config.out), which the owner drains at its pace.
 *
 * Worker role (the client, complete): on the master's dialect offer the
 * session answers "pb", sends ("version" 6) and login(name) on "root"; on
 * the challenge it sends respond(MD5(MD5(password) || challenge), Bot) and
 * decrefs the challenger.  Calls from the master are delivered while respond
 * is outstanding (the 3.7 master answers it only after its attach calls).
 * The Bot is luid 1; builders and any other object the owner hands out are
 * exported with cw_pb_export().
 *
 * Master role (minimal): offers ("pb" "none"), checks the choice and the
 * version, answers login(name) on "root" with a challenge and a challenger,
 * and reports the worker's respond as a CW_PB_EV_LOGIN event; the owner
 * checks the response and accepts (exporting a perspective) or rejects.
 *
 * Both roles: calls, answers and errors routed by request id, decref
 * counting for exported objects, a count of received remote references so
 * the owner can decref each exactly once, automatic error answers for calls
 * to unknown objects ("Invalid Object ID") and for arguments jelly refuses.
 *
 * Reentrancy: on_event may call every function below except cw_pb_feed(),
 * cw_pb_close() (both refuse with CW_EBADARG) and cw_pb_free() on its own
 * session; to stop, it returns a negative code.  Only one outgoing
 * message can be under construction at a time (a *_begin must be followed by
 * its *_end before the next *_begin).
 */
#ifndef CWORKER_PB_H
#define CWORKER_PB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cworker/banana.h"
#include "cworker/buf.h"
#include "cworker/cw.h"
#include "cworker/jelly.h"

/* The protocol version both sides send and require. */
#define CW_PB_VERSION 6
/* The worker's Bot, the first object it exports (in respond). */
#define CW_PB_BOT_LUID 1

typedef struct cw_pb cw_pb_t;

typedef enum cw_pb_role {
    CW_PB_WORKER, /* client: picks the dialect, logs in */
    CW_PB_MASTER, /* server: offers the dialect, checks logins */
} cw_pb_role_t;

/* One state per session, moved only by the session (docs/pb.md has the table). */
typedef enum cw_pb_state {
    CW_PB_ST_DIALECT, /* worker: waiting for the offer; master: offer sent, waiting for the choice
                       */
    CW_PB_ST_LOGIN,   /* worker: login/respond outstanding; master: waiting for a login */
    CW_PB_ST_READY,   /* logged in (worker: perspective received; master: login accepted) */
    CW_PB_ST_REFUSED, /* worker: the master refused the login; nothing more will come */
    CW_PB_ST_CLOSED, /* protocol error, owner's error, or cw_pb_close(): input and output refused */
} cw_pb_state_t;

typedef enum cw_pb_login_failure {
    CW_PB_LOGIN_UNAUTHORIZED, /* twisted.cred.error.UnauthorizedLogin: wrong name or password */
    CW_PB_LOGIN_DUPLICATE,    /* "rejecting duplicate worker": another one is attached (retry) */
    CW_PB_LOGIN_OTHER,        /* anything else (a failed attach, an odd answer) */
} cw_pb_login_failure_t;

typedef enum cw_pb_event_type {
    CW_PB_EV_LOGGED_IN,      /* worker: the perspective arrived */
    CW_PB_EV_LOGIN_FAILED,   /* worker: login or respond failed */
    CW_PB_EV_LOGIN,          /* master: a worker responded to its challenge */
    CW_PB_EV_CALL,           /* the peer calls one of our exported objects */
    CW_PB_EV_ANSWER,         /* the answer to one of our calls */
    CW_PB_EV_ERROR,          /* the error answer to one of our calls, or the call is lost */
    CW_PB_EV_RELEASED,       /* the peer dropped its last reference to an unpinned export */
    CW_PB_EV_NOTICE,         /* something was ignored or answered automatically: log it */
    CW_PB_EV_PROTOCOL_ERROR, /* the peer broke the protocol; the session is closed */
} cw_pb_event_type_t;

/* What on_event gets.  Every pointer in it (strings, jelly values) is valid
 * only during the callback, unless the owner takes the values' document with
 * cw_pb_take_doc().  Strings from the wire are counted, not NUL-terminated;
 * `text` fields are NUL-terminated. */
typedef struct cw_pb_event {
    cw_pb_event_type_t type;
    union {
        struct {                 /* CW_PB_EV_LOGGED_IN */
            int64_t perspective; /* the master's perspective: a received reference */
        } logged_in;
        struct { /* CW_PB_EV_LOGIN_FAILED */
            cw_pb_login_failure_t kind;
            const char *text; /* "type: value" of the failure */
        } login_failed;
        struct {               /* CW_PB_EV_LOGIN (master) */
            int64_t reqid;     /* answer with cw_pb_login_accept() / cw_pb_login_reject() */
            cw_str_t username; /* bytes or unicode as the worker sent it */
            const uint8_t *challenge;
            size_t challenge_len;
            const uint8_t *response; /* what the worker sent; check with cw_pb_check_response() */
            size_t response_len;
            int64_t mind; /* the worker's Bot: a received reference */
        } login;
        struct { /* CW_PB_EV_CALL */
            int64_t reqid;
            int64_t target;           /* luid of our object */
            void *target_ud;          /* what was given to cw_pb_export() (bot_ud for the Bot) */
            cw_str_t method;          /* e.g. "startCommand" (bytes) */
            bool answer_required;     /* false: the peer wants no answer (and must get none) */
            const cw_jelly_t *args;   /* a tuple (or list) */
            const cw_jelly_t *kwargs; /* a dictionary */
        } call;
        struct { /* CW_PB_EV_ANSWER */
            int64_t reqid;
            void *ctx; /* given to cw_pb_call_begin() */
            const cw_jelly_t *value;
        } answer;
        struct { /* CW_PB_EV_ERROR */
            int64_t reqid;
            void *ctx;
            const cw_jelly_t *value; /* the failure as sent (NULL when lost or undecodable) */
            cw_str_t fail_type;      /* a failure's "type", else empty */
            cw_str_t fail_value;     /* a failure's "value", a plain text's text, else empty */
            bool lost; /* the connection closed before an answer came (PBConnectionLost) */
        } error;
        struct { /* CW_PB_EV_RELEASED */
            int64_t luid;
            void *ud;
        } released;
        struct {      /* CW_PB_EV_NOTICE, CW_PB_EV_PROTOCOL_ERROR */
            int code; /* CW_PB_EV_PROTOCOL_ERROR: what cw_pb_feed() returns */
            const char *text;
        } notice;
    } u;
} cw_pb_event_t;

typedef struct cw_pb_config {
    cw_pb_role_t role;
    /* The owner's output buffer: the session appends every byte to send.  It
     * must outlive the session; the owner drains it (cw_buf_consume). */
    cw_buf_t *out;
    /* Return 0, or a negative code to stop: cw_pb_feed() returns it at once
     * and the session is CW_PB_ST_CLOSED. */
    int (*on_event)(void *ud, cw_pb_t *pb, const cw_pb_event_t *ev);
    void *ud;
    cw_banana_limits_t limits; /* per received message; zeros = defaults (banana.h) */
    size_t max_pending;        /* peer calls not answered yet; 0 = 4096 */
    size_t max_exports;        /* our live exported objects; 0 = 1024 (Twisted's MAX_BROKER_REFS) */
    size_t max_remote_refs;    /* distinct peer objects we hold references to; 0 = 16384 */

    /* worker role: copied; only MD5(password) is kept */
    const void *username;
    size_t username_len;
    const void *password;
    size_t password_len;
    void *bot_ud; /* target_ud of calls to the Bot */

    /* master role: a fixed challenge for tests (copied, <= 64 bytes); NULL = 16
     * bytes from the kernel's CSPRNG per login (Twisted: MD5 of random capitals) */
    const uint8_t *challenge;
    size_t challenge_len;
} cw_pb_config_t;

/* Create a session.  0, CW_EBADARG (no out, no on_event, challenge too
 * long) or -ENOMEM. */
int cw_pb_new(cw_pb_t **out, const cw_pb_config_t *cfg);
/* Free the session (no events).  NULL-safe. */
void cw_pb_free(cw_pb_t *pb);

/* The connection is up.  Master: sends the dialect offer.  Worker: nothing
 * (it waits for the offer).  0 or -ENOMEM. */
int cw_pb_start(cw_pb_t *pb);

/* Push received bytes (any split).  Returns 0, or
 *   CW_EPROTO   the peer broke the protocol (CW_PB_EV_PROTOCOL_ERROR was
 *               delivered with the reason); close the connection,
 *   CW_ETOOBIG  a received message exceeds a limit (likewise),
 *   -ENOMEM, or what on_event returned.
 * After an error the session is CW_PB_ST_CLOSED and every later call
 * returns the same code. */
int cw_pb_feed(cw_pb_t *pb, const uint8_t *data, size_t len);

/* The connection closed (EOF, error, or the owner is done): every call of
 * ours still waiting gets CW_PB_EV_ERROR with lost set, and the session is
 * CW_PB_ST_CLOSED.  Returns 0, or CW_EPROTO when the peer's bytes ended
 * inside a message. */
int cw_pb_close(cw_pb_t *pb);

cw_pb_state_t cw_pb_state(const cw_pb_t *pb);
/* Why the session closed with an error (static or session-owned text), or NULL. */
const char *cw_pb_error(const cw_pb_t *pb);
/* The perspective's luid once logged in (worker), else 0. */
int64_t cw_pb_perspective(const cw_pb_t *pb);

/* Inside on_event for CW_PB_EV_CALL, _ANSWER, _ERROR or _LOGIN: take
 * ownership of the document holding the event's values, so they outlive the
 * callback; free it with cw_jelly_doc_free().  NULL elsewhere. */
cw_jelly_doc_t *cw_pb_take_doc(cw_pb_t *pb);

/* ---- our objects ---- */

/* Make obj_ud callable by the peer under a new luid (counter from 1, never
 * reused).  It becomes reachable once sent as ("remote" luid) (write it with
 * cw_jelly_remote() inside a message of this session, which counts it).
 * pinned: the peer's decrefs never remove it (the Bot, builders); unpinned
 * objects are removed when the peer has decref'd every copy sent, with a
 * CW_PB_EV_RELEASED event.  0, CW_ETOOBIG (max_exports live objects) or
 * -ENOMEM. */
int cw_pb_export(cw_pb_t *pb, void *obj_ud, bool pinned, int64_t *luid);
/* Remove an export now (a builder no longer listed); later calls to it get
 * "Invalid Object ID".  0 or CW_EBADARG when unknown. */
int cw_pb_unexport(cw_pb_t *pb, int64_t luid);
/* Whether luid is exported; its ud and how many sent copies the peer holds. */
bool cw_pb_export_info(const cw_pb_t *pb, int64_t luid, void **ud, uint64_t *refs);

/* ---- the peer's objects ---- */

/* References to luid received and not decref'd yet (0: none). */
uint64_t cw_pb_refs_held(const cw_pb_t *pb, int64_t luid);
/* Send ("decref" luid) for one received reference.  CW_EBADARG when none is
 * held (a decref the peer does not expect would make it drop the link). */
int cw_pb_decref(cw_pb_t *pb, int64_t luid);
/* Decref every ("remote" N) inside v (e.g. the arguments of a call the owner
 * refuses).  0 or the first error. */
int cw_pb_decref_value(cw_pb_t *pb, const cw_jelly_t *v);

/* ---- calling the peer ---- */

/* Start a call of `method` on the peer's object `target` (a held reference)
 * with nargs positional arguments: writes the envelope up to the argument
 * tuple into enc.  The caller then writes nargs values, then
 * cw_jelly_dict(enc, nkw) and nkw key/value pairs, then calls
 * cw_pb_call_end().  The answer comes as CW_PB_EV_ANSWER or _ERROR with
 * ctx.  *reqid gets the request id.  Errors: CW_EBADARG (no reference held,
 * another message under construction), -ENOTCONN (not negotiated or
 * closed), -ENOMEM. */
int cw_pb_call_begin(cw_pb_t *pb, int64_t target, const char *method, size_t nargs, void *ctx,
                     cw_jelly_enc_t *enc, int64_t *reqid);
/* Finish the call: 0 and the message is in out, or the encoder's error and
 * nothing was written (the call is forgotten). */
int cw_pb_call_end(cw_pb_t *pb, cw_jelly_enc_t *enc);
/* A call without arguments: method() with no kwargs. */
int cw_pb_call0(cw_pb_t *pb, int64_t target, const char *method, void *ctx, int64_t *reqid);
/* Number of our calls waiting for an answer. */
size_t cw_pb_calls_waiting(const cw_pb_t *pb);

/* ---- answering the peer ---- */

/* Start the answer to the peer's call reqid: the caller writes exactly one
 * value, then cw_pb_answer_end().  CW_EBADARG when reqid is not a call
 * waiting for an answer (never answered twice, never one with
 * answer_required false). */
int cw_pb_answer_begin(cw_pb_t *pb, int64_t reqid, cw_jelly_enc_t *enc);
int cw_pb_answer_end(cw_pb_t *pb, cw_jelly_enc_t *enc);
/* Answer None. */
int cw_pb_answer_none(cw_pb_t *pb, int64_t reqid);
/* Answer with an error carrying a CopyableFailure; the session fills its
 * count. */
int cw_pb_answer_error(cw_pb_t *pb, int64_t reqid, const cw_jelly_failure_desc_t *f);
/* Answer twisted.spread.flavors.NoSuchMethod "No such method: remote_<method>". */
int cw_pb_answer_no_such_method(cw_pb_t *pb, int64_t reqid, cw_str_t method);
/* Whether the peer's call reqid still waits for our answer. */
bool cw_pb_answer_pending(const cw_pb_t *pb, int64_t reqid);

/* ---- login ---- */

/* response = MD5(MD5(password) || challenge), the worker's answer. */
void cw_pb_response(const void *password, size_t password_len, const uint8_t *challenge,
                    size_t challenge_len, uint8_t response[16]);
/* Master: true if response is right for this challenge and password
 * (constant time). */
bool cw_pb_check_response(const uint8_t *challenge, size_t challenge_len, const uint8_t *response,
                          size_t response_len, const void *password, size_t password_len);
/* Master: accept the login of CW_PB_EV_LOGIN reqid, exporting a perspective
 * (pinned, ud perspective_ud) and answering ("remote" P).  The 3.7 master
 * first runs its attach calls on the mind, then accepts.  *luid gets P. */
int cw_pb_login_accept(cw_pb_t *pb, int64_t reqid, void *perspective_ud, int64_t *luid);
/* Master: refuse it.  UNAUTHORIZED decrefs the mind and answers
 * UnauthorizedLogin as the stock master does; DUPLICATE answers
 * builtins.RuntimeError "rejecting duplicate worker"; OTHER a generic error
 * with text (may be NULL). */
int cw_pb_login_reject(cw_pb_t *pb, int64_t reqid, cw_pb_login_failure_t why, const char *text);

#endif
