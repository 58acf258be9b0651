/* The OpenSSL functions tls.c calls, and how they are reached: direct calls
 * when libssl is linked, or (CW_TLS_DLOPEN) pointers that
 * cw_tls_openssl_load() fills from libssl.so when the first TLS context is
 * made, so that a worker without wss:// never maps libssl or libcrypto
 * (docs/performance.md, "Footprint").  Include after the OpenSSL headers;
 * only tls.c and tls_openssl_load.c include it. */
#ifndef CW_NET_TLS_OPENSSL_H
#define CW_NET_TLS_OPENSSL_H

#include <stddef.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "cw_config.h"

/* Every OpenSSL function tls.c uses, directly or through OpenSSL's macros
 * (SSL_CTX_set_min_proto_version -> SSL_CTX_ctrl, ...). */
#define CW_OSSL_FUNCS(X)                                                                           \
    X(BIO_ctrl)                                                                                    \
    X(BIO_ctrl_pending)                                                                            \
    X(BIO_free)                                                                                    \
    X(BIO_new)                                                                                     \
    X(BIO_read)                                                                                    \
    X(BIO_s_mem)                                                                                   \
    X(BIO_write)                                                                                   \
    X(ERR_clear_error)                                                                             \
    X(ERR_error_string_n)                                                                          \
    X(ERR_get_error)                                                                               \
    X(ERR_peek_last_error)                                                                         \
    X(SSL_CTX_check_private_key)                                                                   \
    X(SSL_CTX_ctrl)                                                                                \
    X(SSL_CTX_free)                                                                                \
    X(SSL_CTX_load_verify_locations)                                                               \
    X(SSL_CTX_new)                                                                                 \
    X(SSL_CTX_set_default_verify_paths)                                                            \
    X(SSL_CTX_set_verify)                                                                          \
    X(SSL_CTX_use_PrivateKey_file)                                                                 \
    X(SSL_CTX_use_certificate_chain_file)                                                          \
    X(SSL_ctrl)                                                                                    \
    X(SSL_do_handshake)                                                                            \
    X(SSL_free)                                                                                    \
    X(SSL_get0_param)                                                                              \
    X(SSL_get_certificate)                                                                         \
    X(SSL_get_error)                                                                               \
    X(SSL_get_verify_result)                                                                       \
    X(SSL_new)                                                                                     \
    X(SSL_read)                                                                                    \
    X(SSL_set1_host)                                                                               \
    X(SSL_set_accept_state)                                                                        \
    X(SSL_set_bio)                                                                                 \
    X(SSL_set_cert_cb)                                                                             \
    X(SSL_set_connect_state)                                                                       \
    X(SSL_write)                                                                                   \
    X(TLS_client_method)                                                                           \
    X(TLS_server_method)                                                                           \
    X(X509_VERIFY_PARAM_set1_ip_asc)                                                               \
    X(X509_verify_cert_error_string)

/* Make sure OpenSSL can be called: 0, or -1 with a sentence in err (libssl
 * missing or too old).  Linked builds: always 0. */
int cw_tls_openssl_load(char *err, size_t errlen);

#if CW_TLS_DLOPEN

/* The library loaded: libssl of the OpenSSL major version built against
 * (its libcrypto comes with it as a dependency). */
#define CW_OSSL_STR2(x) #x
#define CW_OSSL_STR(x)  CW_OSSL_STR2(x)
#ifdef OPENSSL_VERSION_MAJOR
#define CW_OSSL_LIBSSL "libssl.so." CW_OSSL_STR(OPENSSL_VERSION_MAJOR)
#else
#define CW_OSSL_LIBSSL "libssl.so.1.1"
#endif

struct cw_ossl_funcs {
#define CW_OSSL_PTR(f) __typeof__(&f) f;
    CW_OSSL_FUNCS(CW_OSSL_PTR)
#undef CW_OSSL_PTR
};
/* Filled by cw_tls_openssl_load(); all NULL before. */
extern struct cw_ossl_funcs cw_ossl;

#endif /* CW_TLS_DLOPEN */
#endif
