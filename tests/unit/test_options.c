/* Unit tests for the option table (src/worker/options_table.c): every row is
 * complete and documented, names, variables, keys and flags are unique,
 * every default parses through the option's own validator and prints back
 * the same, and the docs are what the table generates: README.md's and
 * man/cworker.1's option lists are `cworker --help-table` output
 * (scripts/update-option-docs writes them), the example config has every
 * key, and the man page names every flag of create-worker and every action.
 *
 * CW_SOURCE_ROOT (set by meson) is the source tree with the docs. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <ctype.h>
#include <errno.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "options.h"
#include "options_table.h"

/* ------------------------------------------------------------------------ */
/* Helpers                                                                  */
/* ------------------------------------------------------------------------ */

/* A file of the source tree, whole (the caller frees it). */
static char *source_file(const char *rel)
{
    const char *root = getenv("CW_SOURCE_ROOT");
    if (root == NULL)
        fail_msg("CW_SOURCE_ROOT is not set (run the test with meson test)");
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", root, rel);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        fail_msg("cannot read %s", path);
    char *buf = NULL;
    size_t cap = 0, n = 0;
    for (;;) {
        if (n + 4096 + 1 > cap) {
            cap = cap ? 2 * cap : 65536;
            buf = realloc(buf, cap);
            assert_non_null(buf);
        }
        size_t r = fread(buf + n, 1, cap - n - 1, f);
        if (r == 0)
            break;
        n += r;
    }
    fclose(f);
    buf[n] = '\0';
    return buf;
}

/* What cw_opts_doc prints for format (the caller frees it). */
static char *generated(const char *format)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    assert_non_null(f);
    assert_int_equal(cw_opts_doc(f, format), 0);
    fclose(f);
    return text;
}

/* The lines between the "BEGIN options" and "END options" marker lines of
 * text (a copy), or NULL. */
static char *region(const char *text)
{
    const char *b = strstr(text, "BEGIN options");
    const char *e = b ? strstr(b, "END options") : NULL;
    if (e == NULL || strstr(e + 1, "BEGIN options"))
        return NULL;
    b = strchr(b, '\n') + 1;
    while (e > b && e[-1] != '\n')
        e--;
    return strndup(b, (size_t)(e - b));
}

/* Fail, naming the first line where the checked-in list differs. */
static void assert_same_docs(const char *file, const char *format)
{
    char *text = source_file(file), *want = generated(format), *got = region(text);
    if (got == NULL)
        fail_msg("%s: no BEGIN/END options markers", file);
    if (strcmp(got, want) != 0) {
        const char *g = got, *w = want;
        int line = 1;
        while (*g && *g == *w) {
            line += *g == '\n';
            g++;
            w++;
        }
        while (g > got && g[-1] != '\n')
            g--;
        while (w > want && w[-1] != '\n')
            w--;
        fail_msg("%s: the option list differs from `cworker --help-table %s` at its line %d "
                 "(run scripts/update-option-docs):\n  file:  %.*s\n  table: %.*s",
                 file, format, line, (int)strcspn(g, "\n"), g, (int)strcspn(w, "\n"), w);
    }
    free(text);
    free(want);
    free(got);
}

/* Does text contain a line matching the extended regular expression re? */
static bool has_line(const char *text, const char *re)
{
    regex_t rx;
    assert_int_equal(regcomp(&rx, re, REG_EXTENDED | REG_NEWLINE | REG_NOSUB), 0);
    bool found = regexec(&rx, text, 0, NULL, 0) == 0;
    regfree(&rx);
    return found;
}

/* "--name" as roff writes it: "\-\-name", every '-' escaped. */
static void roff_flag(char *buf, size_t cap, const char *dashes, const char *name)
{
    size_t n = 0;
    for (const char *s = dashes; *s && n + 3 < cap; s++)
        n += (size_t)snprintf(buf + n, cap - n, "\\-");
    for (const char *s = name; *s && n + 3 < cap; s++)
        n += (size_t)snprintf(buf + n, cap - n, *s == '-' ? "\\-" : "%c", *s);
}

/* Is the `literal` and *ARG* markup of text balanced? */
static bool markup_ok(const char *text)
{
    bool code = false, ital = false;
    for (const char *p = text; *p; p++) {
        if (*p == '`')
            code = !code;
        else if (*p == '*' && !code)
            ital = !ital;
    }
    return !code && !ital;
}

/* ------------------------------------------------------------------------ */
/* The rows                                                                 */
/* ------------------------------------------------------------------------ */

static void test_rows_complete(void **state)
{
    for (int id = 0; id < CW_OPT__COUNT; id++) {
        const cw_optdef_t *d = &cw_optdefs[id];
        if (d->name == NULL)
            fail_msg("option %d has no row", id);
        /* the documented names: --NAME, key NAME, CWORKER_NAME */
        for (const char *c = d->name; *c; c++)
            if (!(islower((unsigned char)*c) || isdigit((unsigned char)*c) || *c == '-'))
                fail_msg("%s: a name of lower-case letters, digits and '-'", d->name);
        char env[80];
        size_t n = (size_t)snprintf(env, sizeof env, "CWORKER_");
        for (const char *c = d->name; *c; c++)
            env[n++] = *c == '-' ? '_' : (char)toupper((unsigned char)*c);
        env[n] = '\0';
        if (d->env == NULL || strcmp(d->env, env) != 0)
            fail_msg("%s: environment variable %s, not %s", d->name, d->env ? d->env : "none", env);
        /* documented: help for --help, doc for the man page and README */
        if (d->help == NULL || d->help[0] == '\0' || d->doc == NULL || strlen(d->doc) < 20)
            fail_msg("%s: no help or doc text", d->name);
        if (!markup_ok(d->help) || !markup_ok(d->doc))
            fail_msg("%s: unbalanced ` or * in its help or doc", d->name);
        if (d->arg == NULL || d->arg[0] == '\0')
            fail_msg("%s: no metavariable", d->name);
        /* a value that can be wrong says what it needs */
        bool can_fail = d->type != CW_T_NAME && !(d->type == CW_T_PATH && d->none) &&
                        !(d->type == CW_T_PATH && d->ctype == CW_C_NONE);
        if (can_fail && (d->need == NULL || d->need[0] == '\0'))
            fail_msg("%s: no message for a bad value", d->name);
        if ((d->flags & CW_OPTF_REQUIRED) && (d->def || d->what == NULL))
            fail_msg("%s: required, so no default but a what", d->name);
        if (d->ctype == CW_C_NONE && d->off != 0)
            fail_msg("%s: a field offset without a field type", d->name);
        if (d->ctype != CW_C_NONE && d->off >= sizeof(cw_config_t))
            fail_msg("%s: its field is outside cw_config_t", d->name);
        if (d->type == CW_T_NUMBER && (d->min > d->max || d->max == 0))
            fail_msg("%s: an empty range", d->name);
        if (d->type == CW_T_WORD && (d->words == NULL || d->def == NULL))
            fail_msg("%s: words and a default", d->name);
        /* the sources it imports from say how */
        if ((d->tac[0] != NULL) != (d->tac_kind != CW_TAC_NONE))
            fail_msg("%s: tac variables and a tac kind go together", d->name);
        if ((d->cw != NULL) != (d->cw_arg != CW_CWARG_NONE))
            fail_msg("%s: a create-worker option and its syntax go together", d->name);
        for (int k = 0; k < 2; k++)
            if (d->image_def[k] && d->image[k] == NULL)
                fail_msg("%s: an image default without its variable", d->name);
    }
    for (size_t k = 0; k < CW_NFOREIGN; k++)
        if (cw_foreign[k].cw == NULL || cw_foreign[k].why == NULL ||
            (cw_foreign[k].cw_arg == CW_CWARG_STR && cw_foreign[k].cw_words == NULL))
            fail_msg("ignored setting %zu is incomplete", k);
    for (int k = 0; k < CW_ACT__COUNT; k++)
        if (cw_actions[k].name == NULL)
            fail_msg("action %d has no row", k);
    for (int k = 0; k < CW_CWOPT__COUNT; k++)
        if (cw_cwopts[k].name == NULL || cw_cwopts[k].help == NULL)
            fail_msg("create-worker option %d has no row", k);
}

/* Fail if s is in seen[0..n); then add it. */
static void unique(const char **seen, size_t *n, const char *s, const char *what)
{
    for (size_t i = 0; i < *n; i++)
        if (strcmp(seen[i], s) == 0)
            fail_msg("%s '%s' twice", what, s);
    seen[(*n)++] = s;
}

/* Fail if the short flag c is in seen; then add it. */
static void unique_short(char *seen, char c)
{
    if (c == 0)
        return;
    if (strchr(seen, c))
        fail_msg("create-worker short option -%c twice", c);
    seen[strlen(seen)] = c;
}

static void test_unique(void **state)
{
    const char *names[128], *vars[128], *tacs[128], *cws[128];
    char shorts[128] = "";
    size_t nn = 0, nv = 0, nt = 0, nc = 0;
    for (int id = 0; id < CW_OPT__COUNT; id++) {
        const cw_optdef_t *d = &cw_optdefs[id];
        unique(names, &nn, d->name, "flag or key");
        unique(vars, &nv, d->env, "environment variable");
        for (int k = 0; k < 2 && d->image[k]; k++)
            unique(vars, &nv, d->image[k], "environment variable");
        for (int k = 0; k < 3 && d->tac[k]; k++)
            unique(tacs, &nt, d->tac[k], "buildbot.tac variable");
        if (d->cw)
            unique(cws, &nc, d->cw, "create-worker option");
        unique_short(shorts, d->cw_short);
    }
    for (int k = 0; k < CW_ACT__COUNT; k++)
        unique(names, &nn, cw_actions[k].name, "flag");
    for (size_t k = 0; k < CW_NFOREIGN; k++) {
        if (cw_foreign[k].tac)
            unique(tacs, &nt, cw_foreign[k].tac, "buildbot.tac variable");
        unique(cws, &nc, cw_foreign[k].cw, "create-worker option");
        unique_short(shorts, cw_foreign[k].cw_short);
    }
    for (int k = 0; k < CW_CWOPT__COUNT; k++) {
        unique(cws, &nc, cw_cwopts[k].name, "create-worker option");
        unique_short(shorts, cw_cwopts[k].shrt);
    }
    /* the config-file keys are the names, also with '_' for '-' */
    for (int id = 0; id < CW_OPT__COUNT; id++) {
        char key[64];
        snprintf(key, sizeof key, "%s", cw_optdefs[id].name);
        for (char *c = key; *c; c++)
            *c = *c == '-' ? '_' : *c;
        assert_int_equal(cw_opt_find(key, strlen(key)), id);
    }
    assert_int_equal(cw_opt_find("bogus", 5), -1);
}

/* ------------------------------------------------------------------------ */
/* Values                                                                   */
/* ------------------------------------------------------------------------ */

static void test_defaults_parse(void **state)
{
    for (int id = 0; id < CW_OPT__COUNT; id++) {
        const cw_optdef_t *d = &cw_optdefs[id];
        const char *why = NULL;
        char buf[256];
        cw_config_t cfg;
        memset(&cfg, 0, sizeof cfg);
        /* the default, the word for none and a tac's None read back as themselves */
        const char *vals[] = {d->def, d->none, d->tac_none};
        for (size_t k = 0; k < 3; k++) {
            if (vals[k] == NULL)
                continue;
            if (cw_opt_parse(id, vals[k], &cfg, &why) != 0)
                fail_msg("%s: '%s' does not parse: %s", d->name, vals[k], why);
            const char *back = cw_opt_format(id, &cfg, buf, sizeof buf);
            if (back == NULL || strcmp(back, vals[k]) != 0)
                fail_msg("%s: '%s' prints as '%s'", d->name, vals[k], back ? back : "(nothing)");
        }
        /* the container image's defaults too, except pb: refused until cworker
         * speaks PB */
        if (d->image_def[0] && id != CW_OPT_MASTER) {
            int rc = cw_opt_parse(id, d->image_def[0], &cfg, &why);
            if (id == CW_OPT_PROTOCOL)
                assert_true(rc == -1 && strstr(why, "PB support is coming"));
            else if (rc != 0)
                fail_msg("%s: the image's '%s' does not parse: %s", d->name, d->image_def[0], why);
        }
        cw_config_free(&cfg);
    }
    /* a resolved configuration with nothing set but the required options
     * has every default (apply_defaults in config.c) */
    cw_opts_t o;
    cw_config_t cfg;
    char err[512];
    cw_opts_init(&o);
    char *argv[] = {"cworker", "--master", "m", "--name", "n", "--basedir", "/b"};
    char *envp[] = {"CWORKER_PASSWORD=x", NULL};
    assert_int_equal(cw_opts_parse_argv(&o, 7, argv, err, sizeof err), 0);
    assert_int_equal(cw_opts_parse_env(&o, envp, err, sizeof err), 0);
    assert_int_equal(cw_config_resolve(&o, envp, &cfg, err, sizeof err), 0);
    for (int id = 0; id < CW_OPT__COUNT; id++) {
        char buf[256];
        const char *def = cw_optdefs[id].def, *got = cw_opt_format(id, &cfg, buf, sizeof buf);
        if (def && cw_optdefs[id].ctype != CW_C_NONE && strcmp(got, def) != 0)
            fail_msg("%s: default '%s', resolved '%s'", cw_optdefs[id].name, def, got);
    }
    cw_config_free(&cfg);
    cw_opts_free(&o);
}

static void test_bad_values_rejected(void **state)
{
    /* every checked type refuses rubbish, with the row's own message */
    for (int id = 0; id < CW_OPT__COUNT; id++) {
        const cw_optdef_t *d = &cw_optdefs[id];
        if (d->type == CW_T_PATH || d->type == CW_T_SECRET)
            continue;
        cw_config_t cfg;
        memset(&cfg, 0, sizeof cfg);
        const char *why = NULL;
        if (cw_opt_parse(id, "x y:z/", &cfg, &why) != -1)
            fail_msg("%s accepts 'x y:z/'", d->name);
        if (d->type != CW_T_NAME && strcmp(why, d->need) != 0)
            fail_msg("%s: '%s', not its row's message", d->name, why);
        cw_config_free(&cfg);
    }
}

/* ------------------------------------------------------------------------ */
/* The docs                                                                 */
/* ------------------------------------------------------------------------ */

static void test_docs_generated(void **state)
{
    assert_same_docs("README.md", "markdown");
    assert_same_docs("man/cworker.1", "man");
    assert_int_equal(cw_opts_doc(stdout, "html"), -EINVAL);
}

static void test_docs_mention_everything(void **state)
{
    char *example = source_file("packaging/cworker.conf.example");
    char *man = source_file("man/cworker.1");
    char *readme = source_file("README.md");
    char re[128], flag[128];
    for (int id = 0; id < CW_OPT__COUNT; id++) {
        const cw_optdef_t *d = &cw_optdefs[id];
        snprintf(re, sizeof re, "^#?%s = ", d->name);
        if (!(d->flags & CW_OPTF_NOFILE) && !has_line(example, re))
            fail_msg("packaging/cworker.conf.example lacks '%s = '", d->name);
    }
    /* the flags that are not options: the man page describes each */
    for (int k = 0; k < CW_ACT__COUNT; k++) {
        roff_flag(flag, sizeof flag, "--", cw_actions[k].name);
        if (strstr(man, flag) == NULL)
            fail_msg("man/cworker.1 lacks %s", flag);
    }
    /* create-worker's own options and the stock settings cworker ignores:
     * the man page's create-worker section and README name them */
    for (int k = 0; k < CW_CWOPT__COUNT + (int)CW_NFOREIGN; k++) {
        const char *name =
            k < CW_CWOPT__COUNT ? cw_cwopts[k].name : cw_foreign[k - CW_CWOPT__COUNT].cw;
        char shrt =
            k < CW_CWOPT__COUNT ? cw_cwopts[k].shrt : cw_foreign[k - CW_CWOPT__COUNT].cw_short;
        char sflag[8];
        roff_flag(flag, sizeof flag, "--", name);
        snprintf(sflag, sizeof sflag, "\\-%c", shrt);
        if (strstr(man, flag) == NULL && (shrt == 0 || strstr(man, sflag) == NULL))
            fail_msg("man/cworker.1 lacks create-worker's --%s", name);
        snprintf(flag, sizeof flag, "--%s", name);
        if (k >= CW_CWOPT__COUNT && strstr(readme, flag) == NULL)
            fail_msg("README.md lacks create-worker's --%s", name);
    }
    for (size_t k = 0; k < CW_NFOREIGN; k++) {
        if (cw_foreign[k].tac == NULL)
            continue;
        snprintf(flag, sizeof flag, "`%s`", cw_foreign[k].tac);
        if (strstr(readme, flag) == NULL)
            fail_msg("README.md lacks the tac's %s", cw_foreign[k].tac);
        snprintf(re, sizeof re, "^\\.BR? %s( |$)", cw_foreign[k].tac);
        if (!has_line(man, re))
            fail_msg("man/cworker.1 lacks the tac's %s", cw_foreign[k].tac);
    }
    free(example);
    free(man);
    free(readme);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rows_complete),  cmocka_unit_test(test_unique),
        cmocka_unit_test(test_defaults_parse), cmocka_unit_test(test_bad_values_rejected),
        cmocka_unit_test(test_docs_generated), cmocka_unit_test(test_docs_mention_everything),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
