/* TLS for a cw_conn_t: OpenSSL over memory BIOs (tls.c), or mbedTLS over
 * memory buffers (tls_mbedtls.c, -Dtls=mbedtls), so libuv keeps owning the
 * socket.  Ciphertext read from TCP is pushed in with cw_tls_feed();
 * plaintext comes out of cw_tls_read(); plaintext to send goes in with
 * cw_tls_write() and the ciphertext to put on TCP is taken with
 * cw_tls_take_out().  The TLS library is initialised (and, with
 * -Dtls_dlopen, loaded) only when a TLS context is created, so plain ws://
 * workers never pay for it. */
#ifndef CW_NET_TLS_H
#define CW_NET_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cw_config.h"

typedef struct cw_tls cw_tls_t;
/* A configuration shared by sessions: OpenSSL's SSL_CTX, or with mbedTLS a
 * struct of the same tag holding its configuration, certificates and key
 * (tls_mbedtls.c; conn.h names the tag). */
typedef struct ssl_ctx_st cw_tls_ctx_t;

/* Client context: TLS 1.2+, server certificate verified against the system
 * store (or ca_file), optional client certificate.  NULL and err on failure. */
cw_tls_ctx_t *cw_tls_client_ctx(const char *ca_file, const char *cert, const char *key, char *err,
                                size_t errlen);
/* Server context from a certificate chain and key (PEM files). */
cw_tls_ctx_t *cw_tls_server_ctx(const char *cert, const char *key, char *err, size_t errlen);
void cw_tls_ctx_free(cw_tls_ctx_t *ctx);

/* A session; host (client) is used for SNI and checked against the
 * certificate (DNS name or IP address). */
cw_tls_t *cw_tls_new(cw_tls_ctx_t *ctx, bool server, const char *host);
void cw_tls_free(cw_tls_t *t);

/* Push ciphertext received from the peer. 0 or -ENOMEM. */
int cw_tls_feed(cw_tls_t *t, const uint8_t *data, size_t len);
/* Drive the handshake: 1 done, 0 needs more input, <0 failed (see
 * cw_tls_error). */
int cw_tls_handshake(cw_tls_t *t);
/* Plaintext available: returns bytes (>0), 0 when none is ready, CW_ECLOSED
 * on the peer's close_notify, <0 on error. */
int cw_tls_read(cw_tls_t *t, uint8_t *out, size_t cap);
/* Encrypt plaintext into the outgoing buffer. 0 or <0. */
int cw_tls_write(cw_tls_t *t, const uint8_t *data, size_t len);
/* Take pending ciphertext as a heap buffer the caller frees; returns its
 * length, 0 if none. */
size_t cw_tls_take_out(cw_tls_t *t, uint8_t **out);
/* Client: whether the server asked for a client certificate, and whether we
 * have one to send (to explain an HTTP refusal by a TLS front end). */
bool cw_tls_cert_requested(cw_tls_t *t);
bool cw_tls_has_client_cert(cw_tls_t *t);
/* Why the last operation failed, in words a user can act on (certificate
 * expired, host name mismatch, unknown CA, not TLS at all...). */
const char *cw_tls_error(cw_tls_t *t);

#endif
