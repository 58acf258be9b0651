/* Loading libssl on first use (see tls_openssl.h). */
#include "tls_openssl.h"

#if CW_TLS_DLOPEN

#include <dlfcn.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

struct cw_ossl_funcs cw_ossl;

/* Names and slots of the pointers, from the same list as the struct. */
static const struct {
    const char *name;
    size_t offset;
} ossl_syms[] = {
#define CW_OSSL_SYM(f) {#f, offsetof(struct cw_ossl_funcs, f)},
    CW_OSSL_FUNCS(CW_OSSL_SYM)
#undef CW_OSSL_SYM
};

int cw_tls_openssl_load(char *err, size_t errlen)
{
    static bool loaded;
    if (loaded)
        return 0;
    /* RTLD_LOCAL: nothing else in the process sees OpenSSL's symbols; the
     * handle stays open for the life of the process. */
    void *h = dlopen(CW_OSSL_LIBSSL, RTLD_NOW | RTLD_LOCAL);
    if (h == NULL) {
        const char *why = dlerror();
        snprintf(err, errlen, "cannot load OpenSSL for wss:// (%s): %s", CW_OSSL_LIBSSL,
                 why ? why : "not found");
        return -1;
    }
    struct cw_ossl_funcs f;
    for (size_t i = 0; i < sizeof ossl_syms / sizeof ossl_syms[0]; i++) {
        void *p = dlsym(h, ossl_syms[i].name);
        if (p == NULL) {
            snprintf(err, errlen, "cannot load OpenSSL for wss://: %s has no %s", CW_OSSL_LIBSSL,
                     ossl_syms[i].name);
            dlclose(h);
            return -1;
        }
        /* POSIX guarantees a data pointer from dlsym converts to a function
         * pointer; memcpy says so without a cast C11 does not define */
        memcpy((char *)&f + ossl_syms[i].offset, &p, sizeof p);
    }
    cw_ossl = f;
    loaded = true;
    return 0;
}

#else

int cw_tls_openssl_load(char *err, size_t errlen)
{
    (void)err;
    (void)errlen;
    return 0;
}

#endif
