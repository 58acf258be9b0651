/* TLS over memory buffers with mbedTLS 2.28 (see tls.h; -Dtls=mbedtls): the
 * backend of small static builds.  Same interface and the same named
 * failures as the OpenSSL one (tls.c); TLS 1.2 only (Debian 12's mbedTLS has
 * no TLS 1.3).  mbedTLS 2.28 does not check IP addresses against a
 * certificate's iPAddress names; verify_cb() does. */
#include "tls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/error.h>
#include <mbedtls/pk.h>
#include <mbedtls/ssl.h>
#include <mbedtls/version.h>
#include <mbedtls/x509_crt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cworker/cw.h"

/* The context (tls.h names its tag): configuration, trust anchors, our
 * certificate and key, and the random generator its sessions share. */
struct ssl_ctx_st {
    mbedtls_ssl_config conf;
    mbedtls_x509_crt ca;
    mbedtls_x509_crt own;
    mbedtls_pk_context key;
    mbedtls_entropy_context entropy;
    mbedtls_ctr_drbg_context drbg;
    bool have_cert;
};

struct cw_tls {
    mbedtls_ssl_context ssl;
    cw_tls_ctx_t *ctx; /* borrowed: outlives its sessions */
    uint8_t *in;       /* ciphertext from the peer, not yet read by mbedTLS */
    size_t in_off, in_len, in_cap;
    uint8_t *out; /* ciphertext to the peer, not yet taken */
    size_t out_len, out_cap;
    bool server;
    bool ip_host;   /* client: host is an IP address, checked by verify_cb */
    uint8_t ip[16]; /* ... in network order */
    size_t ip_len;  /* 4 or 16 */
    char err[400];
};

/* mbedTLS's words for an error code, with our sentence in front. */
static void tls_errmsg(char *out, size_t n, const char *what, int rc)
{
    char buf[200] = "";
    if (rc != 0)
        mbedtls_strerror(rc, buf, sizeof buf);
    snprintf(out, n, "%s%s%s", what, buf[0] ? ": " : "", buf);
}

/* Grow-and-append for the two ciphertext buffers. */
static int buf_append(uint8_t **buf, size_t *len, size_t *cap, const uint8_t *data, size_t n)
{
    if (*cap - *len < n) {
        size_t ncap = *cap ? *cap : 16384;
        while (ncap - *len < n)
            ncap *= 2;
        uint8_t *p = realloc(*buf, ncap);
        if (p == NULL)
            return -ENOMEM;
        *buf = p;
        *cap = ncap;
    }
    memcpy(*buf + *len, data, n);
    *len += n;
    return 0;
}

/* mbedTLS's transport: records go to the out buffer ... */
static int bio_send(void *arg, const unsigned char *data, size_t len)
{
    cw_tls_t *t = arg;
    if (buf_append(&t->out, &t->out_len, &t->out_cap, data, len) < 0)
        return MBEDTLS_ERR_SSL_ALLOC_FAILED;
    return len > INT32_MAX ? INT32_MAX : (int)len;
}

/* ... and come from what cw_tls_feed() pushed in; none yet: "want read". */
static int bio_recv(void *arg, unsigned char *out, size_t cap)
{
    cw_tls_t *t = arg;
    size_t avail = t->in_len - t->in_off;
    if (avail == 0)
        return MBEDTLS_ERR_SSL_WANT_READ;
    size_t n = avail < cap ? avail : cap;
    if (n > INT32_MAX)
        n = INT32_MAX;
    memcpy(out, t->in + t->in_off, n);
    t->in_off += n;
    if (t->in_off == t->in_len)
        t->in_off = t->in_len = 0;
    return (int)n;
}

/* The system's trust anchors: SSL_CERT_FILE / SSL_CERT_DIR as OpenSSL reads
 * them, else Debian's bundle, else the directory. */
static int load_default_cas(mbedtls_x509_crt *ca)
{
    const char *file = getenv("SSL_CERT_FILE");
    const char *dir = getenv("SSL_CERT_DIR");
    if (file && *file)
        return mbedtls_x509_crt_parse_file(ca, file) < 0 ? -1 : 0;
    if (dir && *dir)
        return mbedtls_x509_crt_parse_path(ca, dir) < 0 ? -1 : 0;
    if (access("/etc/ssl/certs/ca-certificates.crt", R_OK) == 0)
        return mbedtls_x509_crt_parse_file(ca, "/etc/ssl/certs/ca-certificates.crt") < 0 ? -1 : 0;
    return mbedtls_x509_crt_parse_path(ca, "/etc/ssl/certs") < 0 ? -1 : 0;
}

/* A context for either end; NULL and err on failure. */
static cw_tls_ctx_t *ctx_new(bool server, char *err, size_t errlen)
{
    cw_tls_ctx_t *c = calloc(1, sizeof *c);
    if (c == NULL) {
        snprintf(err, errlen, "cannot create a TLS context: out of memory");
        return NULL;
    }
    mbedtls_ssl_config_init(&c->conf);
    mbedtls_x509_crt_init(&c->ca);
    mbedtls_x509_crt_init(&c->own);
    mbedtls_pk_init(&c->key);
    mbedtls_entropy_init(&c->entropy);
    mbedtls_ctr_drbg_init(&c->drbg);
    static const unsigned char pers[] = "cworker";
    int rc =
        mbedtls_ctr_drbg_seed(&c->drbg, mbedtls_entropy_func, &c->entropy, pers, sizeof pers - 1);
    if (rc == 0)
        rc = mbedtls_ssl_config_defaults(&c->conf,
                                         server ? MBEDTLS_SSL_IS_SERVER : MBEDTLS_SSL_IS_CLIENT,
                                         MBEDTLS_SSL_TRANSPORT_STREAM, MBEDTLS_SSL_PRESET_DEFAULT);
    if (rc != 0) {
        tls_errmsg(err, errlen, "cannot create a TLS context", rc);
        cw_tls_ctx_free(c);
        return NULL;
    }
    mbedtls_ssl_conf_rng(&c->conf, mbedtls_ctr_drbg_random, &c->drbg);
    /* TLS 1.2 (3.3) or later */
    mbedtls_ssl_conf_min_version(&c->conf, MBEDTLS_SSL_MAJOR_VERSION_3,
                                 MBEDTLS_SSL_MINOR_VERSION_3);
    return c;
}

/* Our certificate chain and key (PEM files), checked to belong together. */
static int ctx_use_cert(cw_tls_ctx_t *c, const char *cert, const char *key, const char *what,
                        char *err, size_t errlen)
{
    int rc = mbedtls_x509_crt_parse_file(&c->own, cert);
    if (rc == 0)
        rc = mbedtls_pk_parse_keyfile(&c->key, key, NULL);
    if (rc == 0)
        rc = mbedtls_pk_check_pair(&c->own.pk, &c->key);
    if (rc == 0)
        rc = mbedtls_ssl_conf_own_cert(&c->conf, &c->own, &c->key);
    if (rc != 0) {
        tls_errmsg(err, errlen, what, rc);
        return -1;
    }
    c->have_cert = true;
    return 0;
}

cw_tls_ctx_t *cw_tls_client_ctx(const char *ca_file, const char *cert, const char *key, char *err,
                                size_t errlen)
{
    cw_tls_ctx_t *c = ctx_new(false, err, errlen);
    if (c == NULL)
        return NULL;
    mbedtls_ssl_conf_authmode(&c->conf, MBEDTLS_SSL_VERIFY_REQUIRED);
    int ok = ca_file ? mbedtls_x509_crt_parse_file(&c->ca, ca_file) : load_default_cas(&c->ca);
    /* parse_file/path return how many certificates failed: fine when some loaded */
    if (ok < 0 || c->ca.version == 0) {
        snprintf(err, errlen, "cannot load CA certificates%s%s", ca_file ? " from " : "",
                 ca_file ? ca_file : "");
        cw_tls_ctx_free(c);
        return NULL;
    }
    mbedtls_ssl_conf_ca_chain(&c->conf, &c->ca, NULL);
    if (cert || key) {
        if (!cert || !key) {
            snprintf(err, errlen, "a client certificate needs both a certificate and a key file");
            cw_tls_ctx_free(c);
            return NULL;
        }
        if (ctx_use_cert(c, cert, key, "cannot use the client certificate/key", err, errlen) < 0) {
            cw_tls_ctx_free(c);
            return NULL;
        }
    }
    return c;
}

cw_tls_ctx_t *cw_tls_server_ctx(const char *cert, const char *key, char *err, size_t errlen)
{
    cw_tls_ctx_t *c = ctx_new(true, err, errlen);
    if (c == NULL)
        return NULL;
    mbedtls_ssl_conf_authmode(&c->conf, MBEDTLS_SSL_VERIFY_NONE);
    if (ctx_use_cert(c, cert, key, "cannot use the TLS certificate/key", err, errlen) < 0) {
        cw_tls_ctx_free(c);
        return NULL;
    }
    return c;
}

void cw_tls_ctx_free(cw_tls_ctx_t *c)
{
    if (c == NULL)
        return;
    mbedtls_ssl_config_free(&c->conf);
    mbedtls_x509_crt_free(&c->ca);
    mbedtls_x509_crt_free(&c->own);
    mbedtls_pk_free(&c->key);
    mbedtls_ctr_drbg_free(&c->drbg);
    mbedtls_entropy_free(&c->entropy);
    free(c);
}

/* Client, host given as an IP address: the leaf must name it in an
 * iPAddress subjectAltName (RFC 6125); mbedTLS 2.28 compares DNS names only. */
static int verify_cb(void *arg, mbedtls_x509_crt *crt, int depth, uint32_t *flags)
{
    cw_tls_t *t = arg;
    if (depth != 0 || !t->ip_host)
        return 0;
    for (const mbedtls_x509_sequence *san = &crt->subject_alt_names; san != NULL; san = san->next) {
        if (san->buf.tag == (MBEDTLS_ASN1_CONTEXT_SPECIFIC | 7) && san->buf.len == t->ip_len &&
            memcmp(san->buf.p, t->ip, t->ip_len) == 0)
            return 0;
    }
    *flags |= MBEDTLS_X509_BADCERT_CN_MISMATCH;
    return 0;
}

cw_tls_t *cw_tls_new(cw_tls_ctx_t *ctx, bool server, const char *host)
{
    cw_tls_t *t = calloc(1, sizeof *t);
    if (t == NULL)
        return NULL;
    t->ctx = ctx;
    t->server = server;
    mbedtls_ssl_init(&t->ssl);
    if (mbedtls_ssl_setup(&t->ssl, &ctx->conf) != 0) {
        cw_tls_free(t);
        return NULL;
    }
    mbedtls_ssl_set_bio(&t->ssl, t, bio_send, bio_recv, NULL);
    if (!server && host) {
        struct in6_addr a6;
        struct in_addr a4;
        if (inet_pton(AF_INET, host, &a4) == 1) {
            memcpy(t->ip, &a4, 4);
            t->ip_len = 4;
            t->ip_host = true;
        } else if (inet_pton(AF_INET6, host, &a6) == 1) {
            memcpy(t->ip, &a6, 16);
            t->ip_len = 16;
            t->ip_host = true;
        }
        if (t->ip_host) {
            /* no SNI for an address (RFC 6066 §3); verify_cb checks it */
            mbedtls_ssl_set_verify(&t->ssl, verify_cb, t);
        } else if (mbedtls_ssl_set_hostname(&t->ssl, host) != 0) {
            cw_tls_free(t);
            return NULL;
        }
    }
    return t;
}

void cw_tls_free(cw_tls_t *t)
{
    if (t == NULL)
        return;
    mbedtls_ssl_free(&t->ssl);
    free(t->in);
    free(t->out);
    free(t);
}

int cw_tls_feed(cw_tls_t *t, const uint8_t *data, size_t len)
{
    if (t->in_off > 0 && t->in_off == t->in_len)
        t->in_off = t->in_len = 0;
    return buf_append(&t->in, &t->in_len, &t->in_cap, data, len);
}

/* The name OpenSSL gives a TLS alert, so both backends say the same. */
static const char *alert_name(unsigned char a)
{
    switch (a) {
    case MBEDTLS_SSL_ALERT_MSG_HANDSHAKE_FAILURE:
        return "sslv3 alert handshake failure";
    case MBEDTLS_SSL_ALERT_MSG_BAD_CERT:
        return "sslv3 alert bad certificate";
    case MBEDTLS_SSL_ALERT_MSG_UNSUPPORTED_CERT:
        return "sslv3 alert unsupported certificate";
    case MBEDTLS_SSL_ALERT_MSG_CERT_REVOKED:
        return "sslv3 alert certificate revoked";
    case MBEDTLS_SSL_ALERT_MSG_CERT_EXPIRED:
        return "sslv3 alert certificate expired";
    case MBEDTLS_SSL_ALERT_MSG_CERT_UNKNOWN:
        return "sslv3 alert certificate unknown";
    case MBEDTLS_SSL_ALERT_MSG_UNKNOWN_CA:
        return "tlsv1 alert unknown ca";
    case MBEDTLS_SSL_ALERT_MSG_ACCESS_DENIED:
        return "tlsv1 alert access denied";
    case MBEDTLS_SSL_ALERT_MSG_PROTOCOL_VERSION:
        return "tlsv1 alert protocol version";
    case MBEDTLS_SSL_ALERT_MSG_INTERNAL_ERROR:
        return "tlsv1 alert internal error";
    case MBEDTLS_SSL_ALERT_MSG_UNRECOGNIZED_NAME:
        return "tlsv1 unrecognized name";
    case 116: /* TLS 1.3 certificate_required */
        return "tlsv13 alert certificate required";
    default:
        return NULL;
    }
}

/* The fatal alert the peer sent (valid after MBEDTLS_ERR_SSL_FATAL_ALERT_MESSAGE). */
static unsigned char peer_alert(cw_tls_t *t)
{
    return t->ssl.in_msg ? t->ssl.in_msg[1] : 0;
}

/* Client: an alert from the server about our certificate (only the server
 * verifies ours), or a refusal after it asked for one we do not have.  NULL
 * when the error is something else.  As client_cert_hint() in tls.c. */
static const char *client_cert_hint(cw_tls_t *t, int rc)
{
    if (t->server || rc != MBEDTLS_ERR_SSL_FATAL_ALERT_MESSAGE)
        return NULL;
    bool have_cert = cw_tls_has_client_cert(t);
    bool requested = cw_tls_cert_requested(t);
    switch (peer_alert(t)) {
    case 116:
        return "the server requires a client certificate: use --client-cert and --client-key";
    case MBEDTLS_SSL_ALERT_MSG_HANDSHAKE_FAILURE:
        if (requested && !have_cert)
            return "the server asked for a client certificate and none is configured: use "
                   "--client-cert and --client-key";
        return NULL;
    case MBEDTLS_SSL_ALERT_MSG_UNKNOWN_CA:
    case MBEDTLS_SSL_ALERT_MSG_BAD_CERT:
    case MBEDTLS_SSL_ALERT_MSG_CERT_UNKNOWN:
    case MBEDTLS_SSL_ALERT_MSG_CERT_EXPIRED:
    case MBEDTLS_SSL_ALERT_MSG_CERT_REVOKED:
    case MBEDTLS_SSL_ALERT_MSG_UNSUPPORTED_CERT:
    case MBEDTLS_SSL_ALERT_MSG_ACCESS_DENIED:
        if (!requested)
            return NULL;
        return have_cert ? "the server refused our client certificate: check --client-cert and "
                           "the CA the server trusts"
                         : "the server requires a client certificate: use --client-cert and "
                           "--client-key";
    default:
        return NULL;
    }
}

/* `what`, the hint when one applies, and the cause: the peer's alert by
 * name, or mbedTLS's words for rc. */
static void tls_failure(cw_tls_t *t, const char *what, int rc)
{
    const char *hint = client_cert_hint(t, rc);
    char m[300];
    if (hint)
        snprintf(m, sizeof m, "%s (%s)", what, hint);
    else
        snprintf(m, sizeof m, "%s", what);
    const char *alert =
        rc == MBEDTLS_ERR_SSL_FATAL_ALERT_MESSAGE ? alert_name(peer_alert(t)) : NULL;
    if (alert)
        snprintf(t->err, sizeof t->err, "%s: %s", m, alert);
    else
        tls_errmsg(t->err, sizeof t->err, m, rc);
}

/* Turn a failed handshake into a sentence naming the cause (the same
 * sentences as tls.c's, OpenSSL's words for the certificate errors). */
static void handshake_error(cw_tls_t *t, int rc)
{
    uint32_t v = t->server ? 0 : mbedtls_ssl_get_verify_result(&t->ssl);
    if (rc == MBEDTLS_ERR_X509_CERT_VERIFY_FAILED && v != 0 && v != (uint32_t)-1) {
        const char *why;
        const char *hint = "";
        char info[200];
        if (v & MBEDTLS_X509_BADCERT_NOT_TRUSTED) {
            why = "unable to get local issuer certificate";
            hint = " (unknown CA: use --ca-file)";
        } else if (v & MBEDTLS_X509_BADCERT_EXPIRED) {
            why = "certificate has expired";
            hint = " (expired)";
        } else if (v & MBEDTLS_X509_BADCERT_CN_MISMATCH) {
            why = t->ip_host ? "IP address mismatch" : "hostname mismatch";
            hint = " (wrong host name)";
        } else if (v & MBEDTLS_X509_BADCERT_FUTURE) {
            why = "certificate is not yet valid";
        } else {
            info[0] = '\0';
            mbedtls_x509_crt_verify_info(info, sizeof info, "", v);
            info[strcspn(info, "\n")] = '\0';
            why = info[0] ? info : "certificate rejected";
        }
        snprintf(t->err, sizeof t->err, "TLS certificate verification failed: %s%s", why, hint);
        return;
    }
    if (rc == MBEDTLS_ERR_SSL_INVALID_RECORD || rc == MBEDTLS_ERR_SSL_BAD_INPUT_DATA)
        tls_errmsg(t->err, sizeof t->err,
                   "TLS handshake failed (is the other end speaking TLS on this port?)", rc);
    else if (rc == MBEDTLS_ERR_SSL_BAD_HS_PROTOCOL_VERSION)
        tls_errmsg(t->err, sizeof t->err,
                   "TLS handshake failed (no common TLS version: cworker requires TLS 1.2 or "
                   "later)",
                   rc);
    else if (rc == MBEDTLS_ERR_SSL_FATAL_ALERT_MESSAGE &&
             peer_alert(t) == MBEDTLS_SSL_ALERT_MSG_PROTOCOL_VERSION)
        /* the server wants an older version, or TLS 1.3 */
        snprintf(t->err, sizeof t->err,
                 "TLS handshake failed (no common TLS version: cworker requires TLS 1.2 or "
                 "later): tlsv1 alert protocol version (this build's mbedTLS %s has no TLS 1.3)",
                 MBEDTLS_VERSION_STRING);
    else
        tls_failure(t, "TLS handshake failed", rc);
}

int cw_tls_handshake(cw_tls_t *t)
{
    int rc = mbedtls_ssl_handshake(&t->ssl);
    if (rc == 0)
        return 1;
    if (rc == MBEDTLS_ERR_SSL_WANT_READ || rc == MBEDTLS_ERR_SSL_WANT_WRITE)
        return 0;
    handshake_error(t, rc);
    return CW_ETLS;
}

int cw_tls_read(cw_tls_t *t, uint8_t *out, size_t cap)
{
    int n = mbedtls_ssl_read(&t->ssl, out, cap > INT32_MAX ? INT32_MAX : cap);
    if (n > 0)
        return n;
    if (n == MBEDTLS_ERR_SSL_WANT_READ || n == MBEDTLS_ERR_SSL_WANT_WRITE || n == 0)
        return 0;
    if (n == MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY)
        return CW_ECLOSED;
    tls_failure(t, "TLS error", n);
    return CW_ETLS;
}

int cw_tls_write(cw_tls_t *t, const uint8_t *data, size_t len)
{
    while (len > 0) {
        /* our transport never blocks, so WANT_WRITE cannot happen, and
         * WANT_READ (a handshake not finished) is the caller's error */
        int n = mbedtls_ssl_write(&t->ssl, data, len);
        if (n <= 0) {
            tls_errmsg(t->err, sizeof t->err, "TLS write failed", n);
            return CW_ETLS;
        }
        data += n;
        len -= (size_t)n;
    }
    return 0;
}

size_t cw_tls_take_out(cw_tls_t *t, uint8_t **out)
{
    *out = NULL;
    if (t->out_len == 0)
        return 0;
    /* hand over the buffer itself; the next record starts a new one */
    size_t n = t->out_len;
    *out = t->out;
    t->out = NULL;
    t->out_len = t->out_cap = 0;
    return n;
}

bool cw_tls_cert_requested(cw_tls_t *t)
{
    return !t->server && t->ssl.client_auth != 0;
}

bool cw_tls_has_client_cert(cw_tls_t *t)
{
    return !t->server && t->ctx->have_cert;
}

const char *cw_tls_error(cw_tls_t *t)
{
    return t->err[0] ? t->err : "TLS error";
}
