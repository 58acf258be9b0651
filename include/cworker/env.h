/* The child environment of a shell command, as the stock worker builds it. */
#ifndef CWORKER_ENV_H
#define CWORKER_ENV_H

#include <stdbool.h>
#include <stddef.h>

#include "cworker/cw.h"

/* A NULL-terminated "NAME=value" array in one allocation, sorted by name.
 * Free with free(). */
typedef char **cw_envp_t;

/* The `env` argument of a shell command as the master sent it, whatever the
 * protocol: entries in the order given, each an owned copy.  Type errors are
 * kept, not refused, so that cw_env_build reports them as the stock worker
 * does (when the command starts). */
typedef enum cw_env_kind {
    CW_ENV_UNSET, /* None / nil: remove the variable */
    CW_ENV_STR,   /* one value */
    CW_ENV_LIST,  /* values joined with ':' */
    CW_ENV_BAD,   /* another type, or a list with an element that is not text */
} cw_env_kind_t;

typedef struct cw_env_entry {
    cw_str_t key;    /* its bytes (may hold NUL; checked later) */
    bool key_is_str; /* false: the key was not text at all */
    cw_env_kind_t kind;
    cw_str_t *values;
    size_t nvalues;
} cw_env_entry_t;

typedef struct cw_env_arg {
    bool given;     /* false: no env argument (or None) */
    bool not_a_map; /* given, but not a map */
    cw_env_entry_t *v;
    size_t n;
} cw_env_arg_t;

/* Free what an env argument holds (NULL-safe); it is empty afterwards. */
void cw_env_arg_free(cw_env_arg_t *e);

/* Build the environment of a command from `base` (the worker's own
 * environment, NULL-terminated "NAME=value" strings) and the `env` argument
 * of start_command (NULL or not given: none):
 *   - a nil value removes the variable;
 *   - an array value is joined with ':';
 *   - if PYTHONPATH is given, ":${PYTHONPATH}" is appended to it;
 *   - then every ${NAME} (NAME of [0-9A-Za-z_]*) in a given value is replaced
 *     by the worker's own value of NAME ("" if unset);
 *   - any other value type (or a non-str key, or a list element that is not
 *     a str) fails with CW_EBADARG and a message in err, worded like the
 *     stock one: 'env' values must be strings or lists; key 'K' is incorrect
 * `pwd` (may be NULL) is then stored as PWD.  Returns 0, CW_EBADARG or
 * -ENOMEM. */
int cw_env_build(char *const *base, const cw_env_arg_t *env, const char *pwd, cw_envp_t *out,
                 char *err, size_t errlen);

#endif
