/* Unit tests of cw_env_build: the child environment of a shell
 * command, as the stock worker builds it. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cworker/cw.h"
#include "cworker/env.h"
#include "cworker/msg.h"

/* The `env` argument under construction, packed then unpacked. */
typedef struct envarg {
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_unpacked u;
} envarg_t;

/* Start a map of n entries. */
static void ea_begin(envarg_t *e, size_t n)
{
    msgpack_sbuffer_init(&e->sb);
    msgpack_packer_init(&e->pk, &e->sb, msgpack_sbuffer_write);
    msgpack_unpacked_init(&e->u);
    msgpack_pack_map(&e->pk, n);
}

/* Pack a str. */
static void ea_str(envarg_t *e, const char *s)
{
    msgpack_pack_str(&e->pk, strlen(s));
    msgpack_pack_str_body(&e->pk, s, strlen(s));
}

/* cw_env_build with the env argument as a msgpack object (converted like
 * start_command's arguments are). */
static int build_mp(char *const *base, const msgpack_object *env, const char *pwd, cw_envp_t *out,
                    char *err, size_t errlen)
{
    cw_env_arg_t e;
    int rc = cw_env_arg_from_msgpack(&e, env);
    if (rc == 0)
        rc = cw_env_build(base, &e, pwd, out, err, errlen);
    cw_env_arg_free(&e);
    return rc;
}

/* Value of name in a NULL-terminated envp, or NULL. */
static const char *env_value(char *const *envp, const char *name)
{
    size_t n = strlen(name);
    for (size_t k = 0; envp[k] != NULL; k++)
        if (strncmp(envp[k], name, n) == 0 && envp[k][n] == '=')
            return envp[k] + n + 1;
    return NULL;
}

/* Finish and decode; the object lives until ea_free. */
static const msgpack_object *ea_end(envarg_t *e)
{
    size_t off = 0;
    assert_int_equal(msgpack_unpack_next(&e->u, e->sb.data, e->sb.size, &off),
                     MSGPACK_UNPACK_SUCCESS);
    return &e->u.data;
}

/* Free the packed and unpacked argument. */
static void ea_free(envarg_t *e)
{
    msgpack_unpacked_destroy(&e->u);
    msgpack_sbuffer_destroy(&e->sb);
}

/* Build and check the result is exactly exp (NULL-terminated). */
static void expect_env(char *const *base, const msgpack_object *env, const char *pwd,
                       const char *const *exp)
{
    cw_envp_t out = NULL;
    char err[256];
    int rc = build_mp(base, env, pwd, &out, err, sizeof err);
    if (rc != 0)
        fail_msg("cw_env_build: %d %s", rc, err);
    assert_non_null(out);
    size_t k = 0;
    for (; exp[k] != NULL; k++) {
        assert_non_null(out[k]);
        assert_string_equal(out[k], exp[k]);
    }
    assert_null(out[k]);
    free(out); /* one allocation */
}

/* Build and expect CW_EBADARG with message msg. */
static void expect_bad(char *const *base, const msgpack_object *env, const char *msg)
{
    cw_envp_t out = (cw_envp_t)1;
    char err[256];
    assert_int_equal(build_mp(base, env, "/w", &out, err, sizeof err), CW_EBADARG);
    assert_null(out);
    assert_string_equal(err, msg);
}

static char *const base_env[] = {"PATH=/usr/bin:/bin", "HOME=/home/w", "PYTHONPATH=/opt/py",
                                 "LANG=C.UTF-8",       "PWD=/old",     NULL};

/* No env argument: the worker's environment, sorted, with PWD. */
static void test_no_env(void **state)
{
    (void)state;
    static const char *const exp[] = {"HOME=/home/w", "LANG=C.UTF-8",       "PATH=/usr/bin:/bin",
                                      "PWD=/w/build", "PYTHONPATH=/opt/py", NULL};
    expect_env(base_env, NULL, "/w/build", exp);
    msgpack_object nil = {.type = MSGPACK_OBJECT_NIL};
    expect_env(base_env, &nil, "/w/build", exp);
    envarg_t e;
    ea_begin(&e, 0);
    expect_env(base_env, ea_end(&e), "/w/build", exp);
    ea_free(&e);
    /* no pwd: the worker's PWD stays */
    static const char *const exp2[] = {"HOME=/home/w", "LANG=C.UTF-8",       "PATH=/usr/bin:/bin",
                                       "PWD=/old",     "PYTHONPATH=/opt/py", NULL};
    expect_env(base_env, NULL, NULL, exp2);
    static const char *const exp3[] = {"PWD=/x", NULL};
    expect_env(NULL, NULL, "/x", exp3);
}

/* Values replace, nil removes (also names the worker lacks). */
static void test_set_and_remove(void **state)
{
    (void)state;
    envarg_t e;
    ea_begin(&e, 4);
    ea_str(&e, "LANG");
    msgpack_pack_nil(&e.pk);
    ea_str(&e, "CC");
    ea_str(&e, "gcc -O2");
    ea_str(&e, "HOME");
    ea_str(&e, "/tmp/h");
    ea_str(&e, "NOT_THERE");
    msgpack_pack_nil(&e.pk);
    static const char *const exp[] = {"CC=gcc -O2", "HOME=/tmp/h",        "PATH=/usr/bin:/bin",
                                      "PWD=/w",     "PYTHONPATH=/opt/py", NULL};
    expect_env(base_env, ea_end(&e), "/w", exp);
    ea_free(&e);
}

/* A list is joined with ':' before substitution. */
static void test_lists(void **state)
{
    (void)state;
    envarg_t e;
    ea_begin(&e, 3);
    ea_str(&e, "PATH");
    msgpack_pack_array(&e.pk, 3);
    ea_str(&e, "/opt/bin");
    ea_str(&e, "${PATH}");
    ea_str(&e, "/x");
    ea_str(&e, "EMPTY");
    msgpack_pack_array(&e.pk, 0);
    ea_str(&e, "ONE");
    msgpack_pack_array(&e.pk, 1);
    ea_str(&e, "a");
    static const char *const exp[] = {"EMPTY=",
                                      "HOME=/home/w",
                                      "LANG=C.UTF-8",
                                      "ONE=a",
                                      "PATH=/opt/bin:/usr/bin:/bin:/x",
                                      "PWD=/w",
                                      "PYTHONPATH=/opt/py",
                                      NULL};
    expect_env(base_env, ea_end(&e), "/w", exp);
    ea_free(&e);
}

/* PYTHONPATH gets ":${PYTHONPATH}" appended, then substituted. */
static void test_pythonpath(void **state)
{
    (void)state;
    envarg_t e;
    ea_begin(&e, 1);
    ea_str(&e, "PYTHONPATH");
    ea_str(&e, "/src");
    static const char *const exp[] = {"PYTHONPATH=/src:/opt/py", NULL};
    char *const base1[] = {"PYTHONPATH=/opt/py", NULL};
    expect_env(base1, ea_end(&e), NULL, exp);
    /* unset in the worker: the ":" stays, like the stock worker */
    static const char *const exp2[] = {"PYTHONPATH=/src:", NULL};
    expect_env(NULL, &e.u.data, NULL, exp2);
    ea_free(&e);

    ea_begin(&e, 1);
    ea_str(&e, "PYTHONPATH");
    msgpack_pack_array(&e.pk, 2);
    ea_str(&e, "/a");
    ea_str(&e, "/b");
    static const char *const exp3[] = {"PYTHONPATH=/a:/b:/opt/py", NULL};
    expect_env(base1, ea_end(&e), NULL, exp3);
    ea_free(&e);

    /* nil removes it (the stock worker would fail on None + str) */
    ea_begin(&e, 1);
    ea_str(&e, "PYTHONPATH");
    msgpack_pack_nil(&e.pk);
    static const char *const exp4[] = {NULL};
    expect_env(base1, ea_end(&e), NULL, exp4);
    ea_free(&e);
}

/* ${NAME} from the worker's own environment, only in given values. */
static void test_substitution(void **state)
{
    (void)state;
    envarg_t e;
    ea_begin(&e, 10);
    ea_str(&e, "A");
    ea_str(&e, "${HOME}/x");
    ea_str(&e, "B");
    ea_str(&e, "${UNSET}|${}|${HOME}${LANG}");
    ea_str(&e, "C");
    ea_str(&e, "$HOME ${HOME ${A-B} ${ HOME} $${HOME}}");
    ea_str(&e, "D");
    ea_str(&e, "${A}"); /* the worker's A, not the one given here */
    ea_str(&e, "E");
    ea_str(&e, "${");
    ea_str(&e, "F");
    ea_str(&e, "x${HOME}");
    ea_str(&e, "G");
    ea_str(&e, "${H_1}");
    ea_str(&e, "H");
    ea_str(&e, "${HOME}}");
    ea_str(&e, "I");
    ea_str(&e, "");
    ea_str(&e, "J");
    ea_str(&e, "${${HOME}}");
    char *const base1[] = {"HOME=/h", "LANG=C", "A=worker-a", "H_1=${HOME}", NULL};
    static const char *const exp[] = {
        "A=/h/x",      "B=||/hC", "C=$HOME ${HOME ${A-B} ${ HOME} $/h}",
        "D=worker-a",  "E=${",    "F=x/h",
        "G=${HOME}",   "H=/h}",   "HOME=/h",
        "H_1=${HOME}", "I=",      "J=${/h}",
        "LANG=C",      NULL};
    expect_env(base1, ea_end(&e), NULL, exp);
    ea_free(&e);
}

/* Wrong types fail with the stock-like message. */
static void test_bad_values(void **state)
{
    (void)state;
    envarg_t e;
    ea_begin(&e, 2);
    ea_str(&e, "OK");
    ea_str(&e, "v");
    ea_str(&e, "NUM");
    msgpack_pack_int(&e.pk, 3);
    expect_bad(base_env, ea_end(&e),
               "'env' values must be strings or lists; key 'NUM' is incorrect");
    ea_free(&e);

    ea_begin(&e, 1);
    ea_str(&e, "M");
    msgpack_pack_map(&e.pk, 0);
    expect_bad(base_env, ea_end(&e), "'env' values must be strings or lists; key 'M' is incorrect");
    ea_free(&e);

    ea_begin(&e, 1);
    ea_str(&e, "T");
    msgpack_pack_true(&e.pk);
    expect_bad(base_env, ea_end(&e), "'env' values must be strings or lists; key 'T' is incorrect");
    ea_free(&e);

    ea_begin(&e, 1);
    ea_str(&e, "L");
    msgpack_pack_array(&e.pk, 2);
    ea_str(&e, "a");
    msgpack_pack_int(&e.pk, 1);
    expect_bad(base_env, ea_end(&e), "'env' values must be strings or lists; key 'L' is incorrect");
    ea_free(&e);

    ea_begin(&e, 1);
    msgpack_pack_int(&e.pk, 5);
    ea_str(&e, "v");
    expect_bad(base_env, ea_end(&e),
               "'env' values must be strings or lists; key '<non-string key>' is incorrect");
    ea_free(&e);

    ea_begin(&e, 1);
    ea_str(&e, "A=B");
    ea_str(&e, "v");
    expect_bad(base_env, ea_end(&e), "'env' key 'A=B' is not a valid variable name");
    ea_free(&e);

    ea_begin(&e, 1);
    ea_str(&e, "");
    ea_str(&e, "v");
    expect_bad(base_env, ea_end(&e), "'env' key '' is not a valid variable name");
    ea_free(&e);

    ea_begin(&e, 1);
    ea_str(&e, "Z");
    msgpack_pack_str(&e.pk, 3);
    msgpack_pack_str_body(&e.pk, "a\0b", 3);
    expect_bad(base_env, ea_end(&e), "'env' value of key 'Z' contains a NUL character");
    ea_free(&e);

    /* not a map at all */
    ea_begin(&e, 0);
    msgpack_object arr = {.type = MSGPACK_OBJECT_ARRAY};
    expect_bad(base_env, &arr, "'env' must be a map");
    ea_free(&e);

    /* err may be absent */
    cw_envp_t out;
    assert_int_equal(build_mp(base_env, &arr, NULL, &out, NULL, 0), CW_EBADARG);
}

/* PWD: the argument wins over the worker's and over env's own PWD. */
static void test_pwd(void **state)
{
    (void)state;
    envarg_t e;
    ea_begin(&e, 1);
    ea_str(&e, "PWD");
    ea_str(&e, "/from-env");
    static const char *const exp[] = {"PWD=/w/b", NULL};
    char *const base1[] = {"PWD=/old", NULL};
    expect_env(base1, ea_end(&e), "/w/b", exp);
    static const char *const exp2[] = {"PWD=/from-env", NULL};
    expect_env(base1, &e.u.data, NULL, exp2);
    ea_free(&e);
}

/* Sorted by name (bytewise, a name before its extensions); duplicates in the
 * worker's environment keep the first, in env the last. */
static void test_sorting_and_duplicates(void **state)
{
    (void)state;
    char *const base1[] = {"b=1",   "B=2",      "A_B=3", "AB=4", "A=5",
                           "B=dup", "noequals", "=x",    "a=6",  NULL};
    envarg_t e;
    ea_begin(&e, 3);
    ea_str(&e, "Z");
    ea_str(&e, "first");
    ea_str(&e, "AA");
    ea_str(&e, "x");
    ea_str(&e, "Z");
    ea_str(&e, "last");
    static const char *const exp[] = {"A=5",    "AA=x", "AB=4", "A_B=3", "B=2",
                                      "Z=last", "a=6",  "b=1",  NULL};
    expect_env(base1, ea_end(&e), NULL, exp);
    ea_free(&e);
}

/* True if the name of a (up to '=') sorts before the name of b. */
static bool name_lt(const char *a, const char *b)
{
    size_t na = strcspn(a, "="), nb = strcspn(b, "="), n = na < nb ? na : nb;
    int c = memcmp(a, b, n);
    return c < 0 || (c == 0 && na < nb);
}

/* A large environment: every entry kept, sorted. */
static void test_large(void **state)
{
    (void)state;
    enum { N = 3000 };
    char **base = calloc(N + 1, sizeof *base);
    assert_non_null(base);
    for (int k = 0; k < N; k++) {
        base[k] = malloc(32);
        snprintf(base[k], 32, "V%d=%d", (k * 7919) % N, k);
    }
    envarg_t e;
    ea_begin(&e, N);
    for (int k = 0; k < N; k++) {
        char name[16], val[32];
        snprintf(name, sizeof name, "W%d", k);
        snprintf(val, sizeof val, "${V%d}", k);
        ea_str(&e, name);
        ea_str(&e, val);
    }
    cw_envp_t out;
    char err[64];
    assert_int_equal(build_mp(base, ea_end(&e), NULL, &out, err, sizeof err), 0);
    size_t n = 0;
    for (; out[n] != NULL; n++)
        if (n > 0)
            assert_true(name_lt(out[n - 1], out[n]));
    assert_int_equal(n, 2 * N);
    /* W<k> = value of V<k> */
    char want[32];
    snprintf(want, sizeof want, "%d", 0);
    assert_string_equal(env_value(out, "W0"), want);
    free(out);
    ea_free(&e);
    for (int k = 0; k < N; k++)
        free(base[k]);
    free(base);
}

/* Run every test. */
int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_no_env),       cmocka_unit_test(test_set_and_remove),
        cmocka_unit_test(test_lists),        cmocka_unit_test(test_pythonpath),
        cmocka_unit_test(test_substitution), cmocka_unit_test(test_bad_values),
        cmocka_unit_test(test_pwd),          cmocka_unit_test(test_sorting_and_duplicates),
        cmocka_unit_test(test_large),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
