/* tls.c's OpenSSL calls through the pointers of tls_openssl.h (CW_TLS_DLOPEN
 * only).  Included by tls.c alone, after every other header: from here on
 * SSL_new(...) means cw_ossl.SSL_new(...), including inside OpenSSL's own
 * function-like macros.  Keep in step with CW_OSSL_FUNCS. */
#ifndef CW_NET_TLS_OPENSSL_CALLS_H
#define CW_NET_TLS_OPENSSL_CALLS_H

#include "tls_openssl.h"

#define BIO_ctrl                           (cw_ossl.BIO_ctrl)
#define BIO_ctrl_pending                   (cw_ossl.BIO_ctrl_pending)
#define BIO_free                           (cw_ossl.BIO_free)
#define BIO_new                            (cw_ossl.BIO_new)
#define BIO_read                           (cw_ossl.BIO_read)
#define BIO_s_mem                          (cw_ossl.BIO_s_mem)
#define BIO_write                          (cw_ossl.BIO_write)
#define ERR_clear_error                    (cw_ossl.ERR_clear_error)
#define ERR_error_string_n                 (cw_ossl.ERR_error_string_n)
#define ERR_get_error                      (cw_ossl.ERR_get_error)
#define ERR_peek_last_error                (cw_ossl.ERR_peek_last_error)
#define SSL_CTX_check_private_key          (cw_ossl.SSL_CTX_check_private_key)
#define SSL_CTX_ctrl                       (cw_ossl.SSL_CTX_ctrl)
#define SSL_CTX_free                       (cw_ossl.SSL_CTX_free)
#define SSL_CTX_load_verify_locations      (cw_ossl.SSL_CTX_load_verify_locations)
#define SSL_CTX_new                        (cw_ossl.SSL_CTX_new)
#define SSL_CTX_set_default_verify_paths   (cw_ossl.SSL_CTX_set_default_verify_paths)
#define SSL_CTX_set_verify                 (cw_ossl.SSL_CTX_set_verify)
#define SSL_CTX_use_PrivateKey_file        (cw_ossl.SSL_CTX_use_PrivateKey_file)
#define SSL_CTX_use_certificate_chain_file (cw_ossl.SSL_CTX_use_certificate_chain_file)
#define SSL_ctrl                           (cw_ossl.SSL_ctrl)
#define SSL_do_handshake                   (cw_ossl.SSL_do_handshake)
#define SSL_free                           (cw_ossl.SSL_free)
#define SSL_get0_param                     (cw_ossl.SSL_get0_param)
#define SSL_get_certificate                (cw_ossl.SSL_get_certificate)
#define SSL_get_error                      (cw_ossl.SSL_get_error)
#define SSL_get_verify_result              (cw_ossl.SSL_get_verify_result)
#define SSL_new                            (cw_ossl.SSL_new)
#define SSL_read                           (cw_ossl.SSL_read)
#define SSL_set1_host                      (cw_ossl.SSL_set1_host)
#define SSL_set_accept_state               (cw_ossl.SSL_set_accept_state)
#define SSL_set_bio                        (cw_ossl.SSL_set_bio)
#define SSL_set_cert_cb                    (cw_ossl.SSL_set_cert_cb)
#define SSL_set_connect_state              (cw_ossl.SSL_set_connect_state)
#define SSL_write                          (cw_ossl.SSL_write)
#define TLS_client_method                  (cw_ossl.TLS_client_method)
#define TLS_server_method                  (cw_ossl.TLS_server_method)
#define X509_VERIFY_PARAM_set1_ip_asc      (cw_ossl.X509_VERIFY_PARAM_set1_ip_asc)
#define X509_verify_cert_error_string      (cw_ossl.X509_verify_cert_error_string)

#endif
