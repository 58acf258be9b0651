/* TLS over memory BIOs with OpenSSL (see tls.h), or the stub of a build
 * without TLS.  The mbedTLS backend is tls_mbedtls.c. */
#include "tls.h"

#if CW_HAVE_TLS

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cworker/cw.h"
#include "tls_openssl.h"
#if CW_TLS_DLOPEN
#include "tls_openssl_calls.h" /* last: OpenSSL's names become calls through pointers */
#endif

struct cw_tls {
    SSL *ssl;
    BIO *rbio; /* ciphertext from the peer */
    BIO *wbio; /* ciphertext to the peer */
    bool server;
    bool cert_requested; /* client: the server sent a CertificateRequest */
    char err[400];
};

/* Client: called when the server asks for our certificate (TLS 1.2 and 1.3),
 * whether or not we have one; remembered to explain a refusal. */
static int tls_cert_requested(SSL *ssl, void *arg)
{
    (void)ssl;
    ((cw_tls_t *)arg)->cert_requested = true;
    return 1;
}

/* The OpenSSL error queue as one line (and clear it). */
static void ssl_errors(char *out, size_t n, const char *prefix)
{
    unsigned long e = ERR_get_error();
    char buf[200] = "";
    if (e)
        ERR_error_string_n(e, buf, sizeof buf);
    snprintf(out, n, "%s%s%s", prefix, buf[0] ? ": " : "", buf);
    ERR_clear_error();
}

cw_tls_ctx_t *cw_tls_client_ctx(const char *ca_file, const char *cert, const char *key, char *err,
                                size_t errlen)
{
    if (cw_tls_openssl_load(err, errlen) != 0)
        return NULL;
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL) {
        ssl_errors(err, errlen, "cannot create a TLS context");
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    int ok = ca_file ? SSL_CTX_load_verify_locations(ctx, ca_file, NULL)
                     : SSL_CTX_set_default_verify_paths(ctx);
    if (ok != 1) {
        char m[400];
        snprintf(m, sizeof m, "cannot load CA certificates%s%s", ca_file ? " from " : "",
                 ca_file ? ca_file : "");
        ssl_errors(err, errlen, m);
        SSL_CTX_free(ctx);
        return NULL;
    }
    if (cert || key) {
        if (!cert || !key) {
            snprintf(err, errlen, "a client certificate needs both a certificate and a key file");
            SSL_CTX_free(ctx);
            return NULL;
        }
        if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1 ||
            SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1 ||
            SSL_CTX_check_private_key(ctx) != 1) {
            ssl_errors(err, errlen, "cannot use the client certificate/key");
            SSL_CTX_free(ctx);
            return NULL;
        }
    }
    return ctx;
}

cw_tls_ctx_t *cw_tls_server_ctx(const char *cert, const char *key, char *err, size_t errlen)
{
    if (cw_tls_openssl_load(err, errlen) != 0)
        return NULL;
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL) {
        ssl_errors(err, errlen, "cannot create a TLS context");
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(ctx) != 1) {
        ssl_errors(err, errlen, "cannot use the TLS certificate/key");
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

void cw_tls_ctx_free(cw_tls_ctx_t *ctx)
{
    if (ctx != NULL)
        SSL_CTX_free(ctx);
}

cw_tls_t *cw_tls_new(cw_tls_ctx_t *ctx, bool server, const char *host)
{
    cw_tls_t *t = calloc(1, sizeof *t);
    if (t == NULL)
        return NULL;
    t->server = server;
    t->ssl = SSL_new(ctx);
    t->rbio = BIO_new(BIO_s_mem());
    t->wbio = BIO_new(BIO_s_mem());
    if (t->ssl == NULL || t->rbio == NULL || t->wbio == NULL) {
        BIO_free(t->rbio);
        BIO_free(t->wbio);
        SSL_free(t->ssl);
        free(t);
        return NULL;
    }
    BIO_set_mem_eof_return(t->rbio, -1); /* "no data yet", not EOF */
    SSL_set_bio(t->ssl, t->rbio, t->wbio);
    if (server) {
        SSL_set_accept_state(t->ssl);
    } else {
        SSL_set_connect_state(t->ssl);
        SSL_set_cert_cb(t->ssl, tls_cert_requested, t);
        if (host) {
            /* an IP address is checked as one; a name gets SNI too */
            X509_VERIFY_PARAM *vp = SSL_get0_param(t->ssl);
            if (X509_VERIFY_PARAM_set1_ip_asc(vp, host) != 1) {
                ERR_clear_error();
                SSL_set_tlsext_host_name(t->ssl, host);
                SSL_set1_host(t->ssl, host);
            }
        }
    }
    return t;
}

void cw_tls_free(cw_tls_t *t)
{
    if (t == NULL)
        return;
    SSL_free(t->ssl); /* frees both BIOs */
    free(t);
}

int cw_tls_feed(cw_tls_t *t, const uint8_t *data, size_t len)
{
    while (len > 0) {
        int chunk = len > (1u << 30) ? (1 << 30) : (int)len;
        int n = BIO_write(t->rbio, data, chunk);
        if (n <= 0)
            return -ENOMEM;
        data += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Client: an alert from the server about our certificate (only the server
 * verifies ours), or a refusal after it asked for one we do not have.  NULL
 * when the error is something else. */
static const char *client_cert_hint(cw_tls_t *t, unsigned long e)
{
    if (t->server || ERR_GET_LIB(e) != ERR_LIB_SSL)
        return NULL;
    bool have_cert = cw_tls_has_client_cert(t);
    switch (ERR_GET_REASON(e)) {
    case SSL_R_TLSV13_ALERT_CERTIFICATE_REQUIRED:
        return "the server requires a client certificate: use --client-cert and --client-key";
    case SSL_R_SSLV3_ALERT_HANDSHAKE_FAILURE:
        if (t->cert_requested && !have_cert)
            return "the server asked for a client certificate and none is configured: use "
                   "--client-cert and --client-key";
        return NULL;
    case SSL_R_TLSV1_ALERT_UNKNOWN_CA:
    case SSL_R_SSLV3_ALERT_BAD_CERTIFICATE:
    case SSL_R_SSLV3_ALERT_CERTIFICATE_UNKNOWN:
    case SSL_R_SSLV3_ALERT_CERTIFICATE_EXPIRED:
    case SSL_R_SSLV3_ALERT_CERTIFICATE_REVOKED:
    case SSL_R_SSLV3_ALERT_UNSUPPORTED_CERTIFICATE:
    case SSL_R_TLSV1_ALERT_ACCESS_DENIED:
        if (!t->cert_requested)
            return NULL;
        return have_cert ? "the server refused our client certificate: check --client-cert and "
                           "the CA the server trusts"
                         : "the server requires a client certificate: use --client-cert and "
                           "--client-key";
    default:
        return NULL;
    }
}

/* The error queue as one line under `what`, with the client-certificate
 * hint when it applies. */
static void tls_failure(cw_tls_t *t, const char *what)
{
    const char *hint = client_cert_hint(t, ERR_peek_last_error());
    if (hint) {
        char m[200];
        snprintf(m, sizeof m, "%s (%s)", what, hint);
        ssl_errors(t->err, sizeof t->err, m);
    } else {
        ssl_errors(t->err, sizeof t->err, what);
    }
}

/* Turn a failed handshake into a sentence naming the cause. */
static void handshake_error(cw_tls_t *t)
{
    long v = SSL_get_verify_result(t->ssl);
    if (!t->server && v != X509_V_OK) {
        const char *why = X509_verify_cert_error_string(v);
        const char *hint = "";
        if (v == X509_V_ERR_HOSTNAME_MISMATCH || v == X509_V_ERR_IP_ADDRESS_MISMATCH)
            hint = " (wrong host name)";
        else if (v == X509_V_ERR_CERT_HAS_EXPIRED)
            hint = " (expired)";
        else if (v == X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY ||
                 v == X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN ||
                 v == X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT)
            hint = " (unknown CA: use --ca-file)";
        snprintf(t->err, sizeof t->err, "TLS certificate verification failed: %s%s", why, hint);
        ERR_clear_error();
        return;
    }
    unsigned long e = ERR_peek_last_error();
    if (ERR_GET_REASON(e) == SSL_R_WRONG_VERSION_NUMBER ||
        ERR_GET_REASON(e) == SSL_R_HTTP_REQUEST ||
        ERR_GET_REASON(e) == SSL_R_PACKET_LENGTH_TOO_LONG)
        ssl_errors(t->err, sizeof t->err,
                   "TLS handshake failed (is the other end speaking TLS on this port?)");
    else if (ERR_GET_REASON(e) == SSL_R_TLSV1_ALERT_PROTOCOL_VERSION ||
             ERR_GET_REASON(e) == SSL_R_UNSUPPORTED_PROTOCOL ||
             ERR_GET_REASON(e) == SSL_R_NO_PROTOCOLS_AVAILABLE)
        ssl_errors(t->err, sizeof t->err,
                   "TLS handshake failed (no common TLS version: cworker requires TLS 1.2 or "
                   "later)");
    else
        tls_failure(t, "TLS handshake failed");
}

int cw_tls_handshake(cw_tls_t *t)
{
    int r = SSL_do_handshake(t->ssl);
    if (r == 1)
        return 1;
    int e = SSL_get_error(t->ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
        return 0;
    handshake_error(t);
    return CW_ETLS;
}

int cw_tls_read(cw_tls_t *t, uint8_t *out, size_t cap)
{
    int n = SSL_read(t->ssl, out, cap > INT32_MAX ? INT32_MAX : (int)cap);
    if (n > 0)
        return n;
    int e = SSL_get_error(t->ssl, n);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
        return 0;
    if (e == SSL_ERROR_ZERO_RETURN)
        return CW_ECLOSED;
    /* TLS 1.3: a server refusing our certificate says so after our handshake
     * is done, so it shows here */
    tls_failure(t, "TLS error");
    return CW_ETLS;
}

int cw_tls_write(cw_tls_t *t, const uint8_t *data, size_t len)
{
    while (len > 0) {
        int chunk = len > (1u << 30) ? (1 << 30) : (int)len;
        int n = SSL_write(t->ssl, data, chunk);
        if (n <= 0) {
            ssl_errors(t->err, sizeof t->err, "TLS write failed");
            return CW_ETLS;
        }
        data += n;
        len -= (size_t)n;
    }
    return 0;
}

size_t cw_tls_take_out(cw_tls_t *t, uint8_t **out)
{
    size_t n = (size_t)BIO_ctrl_pending(t->wbio);
    *out = NULL;
    if (n == 0)
        return 0;
    uint8_t *p = malloc(n);
    if (p == NULL)
        return 0;
    int got = BIO_read(t->wbio, p, (int)n);
    if (got <= 0) {
        free(p);
        return 0;
    }
    *out = p;
    return (size_t)got;
}

bool cw_tls_cert_requested(cw_tls_t *t)
{
    return t->cert_requested;
}

bool cw_tls_has_client_cert(cw_tls_t *t)
{
    return !t->server && SSL_get_certificate(t->ssl) != NULL;
}

const char *cw_tls_error(cw_tls_t *t)
{
    return t->err[0] ? t->err : "TLS error";
}

#else /* !CW_HAVE_TLS: this build has no TLS; nothing can create a session */

#include <stdio.h>
#include <stdlib.h>

#include "cworker/cw.h"

cw_tls_ctx_t *cw_tls_client_ctx(const char *ca_file, const char *cert, const char *key, char *err,
                                size_t errlen)
{
    snprintf(err, errlen, "this cworker was built without TLS support");
    return NULL;
}

cw_tls_ctx_t *cw_tls_server_ctx(const char *cert, const char *key, char *err, size_t errlen)
{
    snprintf(err, errlen, "this build has no TLS support");
    return NULL;
}

void cw_tls_ctx_free(cw_tls_ctx_t *ctx)
{
}

cw_tls_t *cw_tls_new(cw_tls_ctx_t *ctx, bool server, const char *host)
{
    return NULL;
}

void cw_tls_free(cw_tls_t *t)
{
}

int cw_tls_feed(cw_tls_t *t, const uint8_t *data, size_t len)
{
    return CW_ETLS;
}

int cw_tls_handshake(cw_tls_t *t)
{
    return CW_ETLS;
}

int cw_tls_read(cw_tls_t *t, uint8_t *out, size_t cap)
{
    return CW_ETLS;
}

int cw_tls_write(cw_tls_t *t, const uint8_t *data, size_t len)
{
    return CW_ETLS;
}

size_t cw_tls_take_out(cw_tls_t *t, uint8_t **out)
{
    *out = NULL;
    return 0;
}

bool cw_tls_cert_requested(cw_tls_t *t)
{
    return false;
}

bool cw_tls_has_client_cert(cw_tls_t *t)
{
    return false;
}

const char *cw_tls_error(cw_tls_t *t)
{
    return "no TLS support in this build";
}
#endif
