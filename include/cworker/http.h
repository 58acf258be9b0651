/* HTTP/1.1 heads and the WebSocket upgrade, both sides, sans-I/O.
 *
 * cw_http_head_t collects one request or response head (up to the empty
 * line) from pushed bytes, whole or in any split, and parses it with strict
 * limits: CW_HTTP_MAX_HEAD bytes in all, CW_HTTP_MAX_LINE per line,
 * CW_HTTP_MAX_HEADERS header fields.  Bytes after the head are not consumed:
 * they belong to the next layer (a master sends its first WebSocket frame in
 * the same segment as the 101).
 *
 * On top of it: building and checking the upgrade request (client) and
 * response (server), with HTTP Basic authentication.
 */
#ifndef CWORKER_HTTP_H
#define CWORKER_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cworker/buf.h"

#define CW_HTTP_MAX_HEAD    8192
#define CW_HTTP_MAX_LINE    4096
#define CW_HTTP_MAX_HEADERS 64
/* Longest user name / password accepted in Basic auth (bytes). */
#define CW_HTTP_MAX_CRED 1024

/* cw_http_head_feed() result when the head is not complete yet. */
#define CW_HTTP_AGAIN 1

typedef struct cw_http_header {
    const char *name;  /* NUL-terminated, points into head->buf */
    const char *value; /* NUL-terminated, surrounding blanks trimmed */
} cw_http_header_t;

typedef struct cw_http_head {
    bool is_request;
    bool complete;
    char buf[CW_HTTP_MAX_HEAD + 1];
    size_t len;
    /* Parsed once complete.  Request: method, target, version.  Response:
     * version, status (int), reason. */
    const char *method;
    const char *target;
    const char *version;
    int status;
    const char *reason;
    size_t nheaders;
    cw_http_header_t headers[CW_HTTP_MAX_HEADERS];
} cw_http_head_t;

void cw_http_head_init(cw_http_head_t *h, bool is_request);

/* Push bytes.  *consumed is set to how many bytes belong to the head.
 * Returns 0 when the head is complete and parsed, CW_HTTP_AGAIN when more is
 * needed (all bytes consumed), CW_ETOOBIG when a limit is exceeded, CW_EHTTP
 * when the head is malformed (bad request/status line, header line without a
 * colon, obsolete line folding, control characters, non-HTTP/1.x version). */
int cw_http_head_feed(cw_http_head_t *h, const uint8_t *data, size_t len, size_t *consumed);

/* First value of header `name` (case-insensitive), or NULL.  *count (if not
 * NULL) receives how many times the header appeared. */
const char *cw_http_head_get(const cw_http_head_t *h, const char *name, int *count);

/* True if the comma-separated header value contains token (case-insensitive). */
bool cw_http_has_token(const char *value, const char *token);

/* ---- WebSocket upgrade ---- */

/* 16 random bytes, base64: 24 characters + NUL. */
void cw_ws_key_generate(char key[25]);
/* base64(SHA1(key + GUID)): 28 characters + NUL. */
void cw_ws_accept_value(const char *key, char out[29]);

/* Client: append the upgrade request to out.  host_header is the Host value
 * ("host:port"), path starts with '/'.  user/password may be NULL for no
 * Authorization header.  extra_headers (may be NULL) is appended verbatim and
 * must consist of complete "Name: value\r\n" lines. */
int cw_http_upgrade_request(cw_buf_t *out, const char *host_header, const char *path,
                            const char *user, const char *password, const char *key,
                            const char *extra_headers);

/* Client: check a complete response head against our key.
 * Returns 0 (upgraded), CW_EAUTH (401), CW_EHANDSHAKE (any other status, or a
 * 101 with missing/wrong Upgrade, Connection, Sec-WebSocket-Accept, or with an
 * extension / subprotocol we did not ask for).  err (may be NULL) receives a
 * one-line explanation such as "HTTP 403 Forbidden" or "wrong
 * Sec-WebSocket-Accept". */
int cw_http_upgrade_check_response(const cw_http_head_t *h, const char *key, char *err,
                                   size_t errlen);

/* Server: what an upgrade request asked for. */
typedef struct cw_http_upgrade_req {
    const char *path; /* points into the head */
    const char *key;  /* Sec-WebSocket-Key, points into the head */
    bool has_auth;    /* a well-formed Basic header was present */
    char user[CW_HTTP_MAX_CRED + 1];
    char password[CW_HTTP_MAX_CRED + 1];
    size_t user_len; /* user / password may contain NUL bytes */
    size_t password_len;
} cw_http_upgrade_req_t;

/* Server: validate a complete request head as the stock master does.
 * Returns 0 when it is a valid upgrade (auth still to be checked by the
 * caller: has_auth false means "answer 401"), or the HTTP status to answer:
 * 400 (malformed: bad method/version, Host missing or repeated, bad
 * Sec-WebSocket-Key, Authorization present but not "Basic <b64 of u:p>"),
 * 426 (no/other Upgrade or Connection token, or version not 13). */
int cw_http_upgrade_check_request(const cw_http_head_t *h, cw_http_upgrade_req_t *out);

/* Server: append "HTTP/1.1 101 Switching Protocols" with the accept value. */
int cw_http_upgrade_response(cw_buf_t *out, const char *key);
/* Server: append a bodyless error answer, e.g. "HTTP/1.1 401 Unauthorized\r\n\r\n"
 * (426 also carries "Sec-WebSocket-Version: 13"). */
int cw_http_error_response(cw_buf_t *out, int status);

/* "Basic " + base64(user ":" password); user must not contain ':'. Returns
 * 0, CW_EBADARG (colon in user) or -ENOMEM. */
int cw_http_basic_auth(cw_buf_t *out, const char *user, const char *password);

#endif
