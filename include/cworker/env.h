/* The child environment of a shell command, as the stock worker builds it. */
#ifndef CWORKER_ENV_H
#define CWORKER_ENV_H

#include <msgpack.h>
#include <stddef.h>

/* A NULL-terminated "NAME=value" array in one allocation, sorted by name.
 * Free with free(). */
typedef char **cw_envp_t;

/* Build the environment of a command from `base` (the worker's own
 * environment, NULL-terminated "NAME=value" strings) and the `env` argument
 * of start_command (a map, or nil / NULL for none):
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
int cw_env_build(char *const *base, const msgpack_object *env, const char *pwd, cw_envp_t *out,
                 char *err, size_t errlen);

/* Value of name in a NULL-terminated envp, or NULL. */
const char *cw_env_get(char *const *envp, const char *name);

#endif
