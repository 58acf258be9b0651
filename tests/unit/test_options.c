/* Unit tests for the option table (src/worker/options_table.c): every row is
 * complete and documented, names, variables, keys and flags are unique,
 * every default parses through the option's own validator and prints back
 * the same, and the docs are what the table generates: README.md's and
 * man/cworker.1's option lists are `cworker --help-table` output
 * (scripts/update-option-docs writes them), the example config has every
 * key, and the man page names every flag of create-worker and every action.
 *
 * Then the protocol rules and the options that belong to them (protocol,
 * keepalive, allow-shutdown) through every source: the pb default, a
 * ws:// or wss:// master meaning msgpack, pb with such a URL refused, a
 * protocol of lower precedence than the master dropped (with a note only
 * when that changes it), proxies refused and proxy variables ignored over
 * pb, the stock create-worker's tac, --check-config and --write-config.
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

#define ARGV(...) ((const char *const[]){__VA_ARGS__, NULL})
#define ENVP(...) ((const char *const[]){__VA_ARGS__, NULL})

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
        /* the container image's defaults too (its pb is cworker's default) */
        if (d->image_def[0] && id != CW_OPT_MASTER &&
            cw_opt_parse(id, d->image_def[0], &cfg, &why) != 0)
            fail_msg("%s: the image's '%s' does not parse: %s", d->name, d->image_def[0], why);
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

/* ------------------------------------------------------------------------ */
/* Protocol, keepalive, allow-shutdown                                      */
/* ------------------------------------------------------------------------ */

/* The sources of one run: flags, environment, config file, buildbot.tac. */
typedef struct srcs {
    const char *const *argv; /* words after argv[0], NULL-terminated (or NULL) */
    const char *const *env;  /* "K=V", NULL-terminated (or NULL) */
    const char *conf;        /* config-file text (/etc/cworker/w.conf), or NULL */
    const char *tac;         /* buildbot.tac text (/srv/w/buildbot.tac), or NULL */
} srcs_t;

/* Every pure stage, as main() runs them; 0 or the failing stage's code. */
static int run(const srcs_t *s, cw_opts_t *o, cw_config_t *cfg, char *err, size_t errlen)
{
    char *argv[40] = {"cworker"};
    int argc = 1;
    for (const char *const *a = s->argv; a && *a; a++)
        argv[argc++] = (char *)*a;
    char *const noenv[] = {NULL};
    char *const *envp = s->env ? (char *const *)s->env : noenv;
    cw_opts_init(o);
    memset(cfg, 0, sizeof *cfg);
    err[0] = '\0';
    int rc = cw_opts_parse_argv(o, argc, argv, err, errlen);
    if (rc == 0)
        rc = cw_opts_parse_env(o, envp, err, errlen);
    if (rc == 0 && s->conf)
        rc = cw_opts_parse_conf(o, s->conf, strlen(s->conf), "/etc/cworker/w.conf", 0600, err,
                                errlen);
    if (rc == 0 && s->tac)
        rc = cw_opts_parse_tac(o, s->tac, strlen(s->tac), "/srv/w/buildbot.tac", 0600, err, errlen);
    if (rc == 0)
        rc = cw_config_resolve(o, envp, cfg, err, errlen);
    return rc;
}

static void run_ok(const srcs_t *s, cw_opts_t *o, cw_config_t *cfg)
{
    char err[1024];
    if (run(s, o, cfg, err, sizeof err) != 0)
        fail_msg("unexpected error: %s", err);
}

/* run() must fail with a message holding every fragment (NULL-terminated)
 * and none of the forbidden one (or NULL). */
static void run_fails(const srcs_t *s, const char *forbidden, ...)
{
    cw_opts_t o;
    cw_config_t cfg;
    char err[1024];
    if (run(s, &o, &cfg, err, sizeof err) == 0)
        fail_msg("expected an error, got none");
    va_list ap;
    va_start(ap, forbidden);
    for (const char *frag; (frag = va_arg(ap, const char *)) != NULL;)
        if (strstr(err, frag) == NULL)
            fail_msg("error '%s' lacks '%s'", err, frag);
    va_end(ap);
    if (forbidden && strstr(err, forbidden))
        fail_msg("error '%s' shows '%s'", err, forbidden);
    cw_config_free(&cfg);
    cw_opts_free(&o);
}

static void done(cw_opts_t *o, cw_config_t *cfg)
{
    cw_config_free(cfg);
    cw_opts_free(o);
}

/* cw_config_format's text (check: --check-config, else --write-config).
 * (noinline: GCC 12 then takes the memstream buffer for the local pointer.) */
__attribute__((noinline)) static char *formatted(const cw_opts_t *o, const cw_config_t *cfg,
                                                 bool check)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    assert_non_null(f);
    cw_config_format(f, cfg, o, check);
    fclose(f);
    return text;
}

/* The --check-config line of key, without the padding before '#'. */
static void check_line(const cw_opts_t *o, const cw_config_t *cfg, const char *key, char *out,
                       size_t cap)
{
    char *text = formatted(o, cfg, true), want[64];
    snprintf(want, sizeof want, "\n%s = ", key);
    const char *l = strstr(text, want);
    if (l == NULL)
        fail_msg("--check-config has no %s line:\n%s", key, text);
    l++;
    size_t n = 0;
    for (bool blank = false; *l && *l != '\n' && n + 1 < cap; l++) {
        if (*l == ' ' && blank)
            continue;
        blank = *l == ' ';
        out[n++] = *l;
    }
    out[n] = '\0';
    free(text);
}

/* Does any note contain frag? */
static bool has_note(const cw_opts_t *o, const char *frag)
{
    for (size_t i = 0; i < o->nnotes; i++)
        if (strstr(o->notes[i], frag))
            return true;
    return false;
}

#define REST      "--name", "w", "--basedir", "/b", "--password-file", "/pw"
#define REST_CONF "name = w\nbasedir = /b\npassword-file = /pw\n"

/* What `buildbot-worker create-worker` (Debian's 3.7) writes, from the
 * assignments on (the lines cworker reads): %s are keepalive,
 * allow_shutdown, proxy_connection_string and protocol as the script
 * pastes them. */
static const char stock_tac[] =
    "\nimport os\n\nfrom buildbot_worker.bot import Worker\n"
    "from twisted.application import service\n\n"
    "basedir = '/tmp/w'\nrotateLength = 10000000\nmaxRotatedFiles = 10\n\n"
    "# if this is a relocatable tac file, get the directory containing the TAC\n"
    "if basedir == '.':\n    import os.path\n"
    "    basedir = os.path.abspath(os.path.dirname(__file__))\n\n"
    "# note: this line is matched against to check that this is a worker\n"
    "# directory; do not edit it.\n"
    "application = service.Application('buildbot-worker')\n\n"
    "from twisted.python.logfile import LogFile\n"
    "from twisted.python.log import ILogObserver, FileLogObserver\n"
    "logfile = LogFile.fromFullPath(\n"
    "    os.path.join(basedir, \"twistd.log\"), rotateLength=rotateLength,\n"
    "    maxRotatedFiles=maxRotatedFiles)\n"
    "application.setComponent(ILogObserver, FileLogObserver(logfile).emit)\n\n"
    "buildmaster_host = 'localhost'\nport = 9989\nworkername = 'w1'\npasswd = 'pass'\n"
    "keepalive = %s\numask = None\nmaxdelay = 300\nnumcpus = None\nallow_shutdown = %s\n"
    "maxretries = None\nuse_tls = 0\ndelete_leftover_dirs = 0\n"
    "proxy_connection_string = %s\nprotocol = %s\n\n"
    "s = Worker(buildmaster_host, port, workername, passwd, basedir,\n"
    "           keepalive, umask=umask, maxdelay=maxdelay,\n"
    "           numcpus=numcpus, allow_shutdown=allow_shutdown,\n"
    "           maxRetries=maxretries, protocol=protocol, useTls=use_tls,\n"
    "           delete_leftover_dirs=delete_leftover_dirs,\n"
    "           proxy_connection_string=proxy_connection_string)\n"
    "s.setServiceParent(application)\n";

__attribute__((noinline)) static char *make_stock_tac(const char *keepalive, const char *allow,
                                                      const char *proxy, const char *protocol)
{
    char *t = NULL;
    assert_true(asprintf(&t, stock_tac, keepalive, allow, proxy, protocol) > 0);
    return t;
}

/* Nothing said: pb, keepalive 600 s, no shutdown; the master prints as
 * HOST:PORT (a ws:// form would read back as msgpack). */
static void test_protocol_defaults(void **state)
{
    cw_opts_t o;
    cw_config_t cfg;
    char line[256];
    run_ok(&(srcs_t){.argv = ARGV("--master", "bm.example", REST)}, &o, &cfg);
    assert_int_equal(cfg.protocol, CW_PROTO_PB);
    assert_int_equal(cfg.keepalive, 600000);
    assert_int_equal(cfg.allow_shutdown, CW_SHUTDOWN_NONE);
    assert_string_equal(cfg.master_host, "bm.example");
    assert_int_equal(cfg.master_port, 9989);
    check_line(&o, &cfg, "protocol", line, sizeof line);
    assert_string_equal(line, "protocol = pb # default");
    check_line(&o, &cfg, "master", line, sizeof line);
    assert_string_equal(line, "master = bm.example:9989 # --master");
    check_line(&o, &cfg, "keepalive", line, sizeof line);
    assert_string_equal(line, "keepalive = 600 # default");
    check_line(&o, &cfg, "allow-shutdown", line, sizeof line);
    assert_string_equal(line, "allow-shutdown = none # default");
    assert_int_equal(o.nnotes, 0);
    done(&o, &cfg);
    /* IPv6 keeps its brackets */
    run_ok(&(srcs_t){.argv = ARGV("--master", "[2001:db8::1]:19989", REST)}, &o, &cfg);
    check_line(&o, &cfg, "master", line, sizeof line);
    assert_string_equal(line, "master = [2001:db8::1]:19989 # --master");
    done(&o, &cfg);
}

/* protocol, keepalive and allow-shutdown from each source, with the source
 * named; tac None and 0; the words and aliases each option takes. */
static void test_protocol_sources(void **state)
{
    const struct {
        srcs_t s;
        cw_protocol_t proto;
        uint64_t keepalive;
        cw_allow_shutdown_t allow;
        const char *where; /* of the protocol */
    } cases[] = {
        {{.argv = ARGV("--master", "h:1", REST, "--protocol", "msgpack", "--keepalive", "20",
                       "--allow-shutdown", "file")},
         CW_PROTO_MSGPACK,
         20000,
         CW_SHUTDOWN_FILE,
         "--protocol"},
        {{.argv = ARGV("--master", "h:1", REST, "--protocol=pb", "--keepalive=0.5",
                       "--allow-shutdown=signal")},
         CW_PROTO_PB,
         500,
         CW_SHUTDOWN_SIGNAL,
         "--protocol"},
        {{.argv = ARGV(REST),
          .env = ENVP("CWORKER_MASTER=h:1", "CWORKER_PROTOCOL=msgpack_experimental_v7",
                      "CWORKER_KEEPALIVE=0", "CWORKER_ALLOW_SHUTDOWN=signal")},
         CW_PROTO_MSGPACK,
         0,
         CW_SHUTDOWN_SIGNAL,
         "CWORKER_PROTOCOL"},
        {{.conf = "master = h:1\n" REST_CONF "protocol = msgpack\nkeepalive = 45\n"
                  "allow_shutdown = file\n"},
         CW_PROTO_MSGPACK,
         45000,
         CW_SHUTDOWN_FILE,
         "/etc/cworker/w.conf:5"},
        {{.conf = "master = h:1\n" REST_CONF "protocol = pb\nallow-shutdown = none\n"},
         CW_PROTO_PB,
         600000,
         CW_SHUTDOWN_NONE,
         "/etc/cworker/w.conf:5"},
        {{.tac = "buildmaster_host = 'h'\nport = 1\nworkername = 'w'\npasswd = 'p'\n"
                 "basedir = '/b'\nkeepalive = 30\nallow_shutdown = 'signal'\n"
                 "protocol = \"msgpack_experimental_v7\"\n"},
         CW_PROTO_MSGPACK,
         30000,
         CW_SHUTDOWN_SIGNAL,
         "/srv/w/buildbot.tac:8 (protocol)"},
        {{.tac = "buildmaster_host = 'h'\nport = 1\nworkername = 'w'\npasswd = 'p'\n"
                 "basedir = '/b'\nkeepalive = None\nallow_shutdown = None\n"},
         CW_PROTO_PB,
         0,
         CW_SHUTDOWN_NONE,
         "no protocol line"},
        {{.env = ENVP("BUILDMASTER=bm", "WORKERPASS=p", "BUILDMASTER_PROTOCOL=msgpack")},
         CW_PROTO_MSGPACK,
         600000,
         CW_SHUTDOWN_NONE,
         "BUILDMASTER_PROTOCOL"},
        {{.env = ENVP("BUILDMASTER=bm", "WORKERPASS=p", "BUILDMASTER_PROTOCOL=pb")},
         CW_PROTO_PB,
         600000,
         CW_SHUTDOWN_NONE,
         "BUILDMASTER_PROTOCOL"},
        {{.env = ENVP("BUILDMASTER=bm", "WORKERPASS=p")},
         CW_PROTO_PB,
         600000,
         CW_SHUTDOWN_NONE,
         "default (no BUILDMASTER_PROTOCOL)"},
        /* a flag beats every other source */
        {{.argv = ARGV("--protocol", "pb", "--keepalive", "7", "--allow-shutdown", "none"),
          .env = ENVP("CWORKER_PROTOCOL=msgpack", "CWORKER_KEEPALIVE=8"),
          .conf = "master = h:1\n" REST_CONF "allow-shutdown = file\n",
          .tac = "protocol = 'msgpack'\nkeepalive = 9\nallow_shutdown = 'signal'\n"},
         CW_PROTO_PB,
         7000,
         CW_SHUTDOWN_NONE,
         "--protocol"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        cw_opts_t o;
        cw_config_t cfg;
        char err[1024];
        if (run(&cases[i].s, &o, &cfg, err, sizeof err) != 0)
            fail_msg("case %zu: %s", i, err);
        if (cfg.protocol != cases[i].proto || cfg.keepalive != cases[i].keepalive ||
            cfg.allow_shutdown != cases[i].allow)
            fail_msg("case %zu: protocol %d keepalive %llu allow-shutdown %d", i, cfg.protocol,
                     (unsigned long long)cfg.keepalive, cfg.allow_shutdown);
        const char *where = o.v[CW_OPT_PROTOCOL].where;
        if (where == NULL || strstr(where, cases[i].where) == NULL)
            fail_msg("case %zu: protocol from '%s', not '%s'", i, where ? where : "default",
                     cases[i].where);
        done(&o, &cfg);
    }
    /* bad values name their source and what they need */
    run_fails(&(srcs_t){.argv = ARGV("--master", "h:1", REST, "--protocol", "http")}, NULL,
              "--protocol 'http'", "needs pb or msgpack_experimental_v7", NULL);
    run_fails(&(srcs_t){.argv = ARGV("--master", "h:1", REST), .env = ENVP("CWORKER_KEEPALIVE=-1")},
              NULL, "CWORKER_KEEPALIVE='-1'", "seconds", NULL);
    run_fails(&(srcs_t){.conf = "master = h:1\n" REST_CONF "allow-shutdown = reboot\n"}, NULL,
              "w.conf:5: allow-shutdown 'reboot'", "needs signal, file or none", NULL);
    run_fails(&(srcs_t){.tac = "buildmaster_host = 'h'\nport = 1\nworkername = 'w'\n"
                               "passwd = 'p'\nbasedir = '/b'\nallow_shutdown = 1\n"},
              NULL, "buildbot.tac:6 (allow_shutdown)", "needs a string or None", NULL);
    run_fails(&(srcs_t){.tac = "buildmaster_host = 'h'\nport = 1\nworkername = 'w'\n"
                               "passwd = 'p'\nbasedir = '/b'\nkeepalive = 'often'\n"},
              NULL, "buildbot.tac:6 (keepalive)", NULL);
    run_fails(
        &(srcs_t){.env = ENVP("BUILDMASTER=bm", "WORKERPASS=p", "BUILDMASTER_PROTOCOL=websocket")},
        NULL, "BUILDMASTER_PROTOCOL: protocol 'websocket'", NULL);
}

/* A ws:// or wss:// master is a msgpack port; pb with one is an error that
 * names both sources. */
static void test_ws_master_means_msgpack(void **state)
{
    cw_opts_t o;
    cw_config_t cfg;
    char line[256];
    run_ok(&(srcs_t){.argv = ARGV("--master", "ws://bm/ws", REST)}, &o, &cfg);
    assert_int_equal(cfg.protocol, CW_PROTO_MSGPACK);
    assert_string_equal(cfg.master_path, "/ws");
    check_line(&o, &cfg, "protocol", line, sizeof line);
    assert_string_equal(line,
                        "protocol = msgpack_experimental_v7 # from the ws:// or wss:// master URL");
    check_line(&o, &cfg, "master", line, sizeof line);
    assert_string_equal(line, "master = ws://bm:80/ws # --master");
    done(&o, &cfg);
    run_ok(&(srcs_t){.env = ENVP("CWORKER_MASTER=wss://bm:9443/", "CWORKER_PROTOCOL=msgpack"),
                     .argv = ARGV(REST)},
           &o, &cfg);
    assert_int_equal(cfg.protocol, CW_PROTO_MSGPACK);
    assert_true(cfg.use_tls);
    done(&o, &cfg);
    /* the container's pb (its default, or BUILDMASTER_PROTOCOL) is below any
     * source that can give a URL: dropped */
    run_ok(&(srcs_t){.env = ENVP("BUILDMASTER=bm", "BUILDMASTER_PROTOCOL=pb", "WORKERPASS=p",
                                 "CWORKER_MASTER=ws://h/"),
                     .argv = ARGV(REST)},
           &o, &cfg);
    assert_int_equal(cfg.protocol, CW_PROTO_MSGPACK);
    assert_true(has_note(&o, "BUILDMASTER_PROTOCOL: protocol 'pb' ignored"));
    done(&o, &cfg);

    /* pb and a URL from sources of the same or higher precedence: refused */
    run_fails(&(srcs_t){.argv = ARGV("--master", "ws://bm:9990/", "--protocol", "pb", REST)}, NULL,
              "--protocol 'pb'", "--master 'ws://bm:9990/'", "msgpack port", NULL);
    run_fails(
        &(srcs_t){.argv = ARGV(REST, "--protocol", "pb"), .env = ENVP("CWORKER_MASTER=wss://bm/")},
        NULL, "--protocol 'pb'", "CWORKER_MASTER='wss://bm/' (environment)", NULL);
    run_fails(&(srcs_t){.conf = "master = ws://bm/\nprotocol = pb\n" REST_CONF}, NULL,
              "w.conf:2: protocol 'pb'", "w.conf:1: master 'ws://bm/'", NULL);
    /* a pb of lower precedence than the URL was about another port: dropped, noted */
    run_ok(
        &(srcs_t){.argv = ARGV("--master", "ws://bm/", REST), .env = ENVP("CWORKER_PROTOCOL=pb")},
        &o, &cfg);
    assert_int_equal(cfg.protocol, CW_PROTO_MSGPACK);
    assert_true(has_note(&o, "CWORKER_PROTOCOL: protocol 'pb' ignored"));
    assert_true(has_note(&o, "ws:// or wss:// URL"));
    done(&o, &cfg);
}

/* A protocol below the master's source is dropped; a note only when that
 * changes the protocol. */
static void test_dropped_protocol(void **state)
{
    cw_opts_t o;
    cw_config_t cfg;
    char *pb = make_stock_tac("600", "None", "None", "'pb'");
    char *mp = make_stock_tac("600", "None", "None", "'msgpack_experimental_v7'");
    /* a tac's pb with --master HOST:PORT: the default is pb anyway */
    run_ok(&(srcs_t){.tac = pb, .argv = ARGV("--master", "h:9990")}, &o, &cfg);
    assert_int_equal(cfg.protocol, CW_PROTO_PB);
    assert_int_equal(o.v[CW_OPT_PROTOCOL].src, CW_SRC_DEFAULT);
    assert_int_equal(o.nnotes, 1); /* only the log rotation's */
    assert_false(has_note(&o, "protocol"));
    done(&o, &cfg);
    /* a tac's msgpack with --master HOST:PORT: now pb, say so */
    run_ok(&(srcs_t){.tac = mp, .argv = ARGV("--master", "h:9990")}, &o, &cfg);
    assert_int_equal(cfg.protocol, CW_PROTO_PB);
    assert_true(has_note(&o, "buildbot.tac:40 (protocol): protocol 'msgpack_experimental_v7' "
                             "ignored: the master's address comes from --master"));
    done(&o, &cfg);
    /* a tac's msgpack with a ws:// --master: msgpack anyway */
    run_ok(&(srcs_t){.tac = mp, .argv = ARGV("--master", "ws://h:9990/")}, &o, &cfg);
    assert_int_equal(cfg.protocol, CW_PROTO_MSGPACK);
    assert_false(has_note(&o, "protocol"));
    done(&o, &cfg);
    /* a config file's msgpack dropped for CWORKER_MASTER: noted */
    run_ok(&(srcs_t){.conf = "protocol = msgpack\n" REST_CONF, .env = ENVP("CWORKER_MASTER=h:1")},
           &o, &cfg);
    assert_int_equal(cfg.protocol, CW_PROTO_PB);
    assert_true(has_note(&o, "/etc/cworker/w.conf:1: protocol 'msgpack' ignored"));
    assert_true(has_note(&o, "CWORKER_MASTER"));
    done(&o, &cfg);
    /* ...but kept when it is given next to the master or above it */
    run_ok(&(srcs_t){.conf = "master = h:1\nprotocol = msgpack\n" REST_CONF}, &o, &cfg);
    assert_int_equal(cfg.protocol, CW_PROTO_MSGPACK);
    done(&o, &cfg);
    run_ok(&(srcs_t){.tac = pb, .env = ENVP("CWORKER_PROTOCOL=msgpack")}, &o, &cfg);
    assert_int_equal(cfg.protocol, CW_PROTO_MSGPACK);
    done(&o, &cfg);
    /* a dropped value need not even be valid: it was about another port */
    run_ok(
        &(srcs_t){.conf = "protocol = carrier-pigeon\n" REST_CONF, .argv = ARGV("--master", "h:1")},
        &o, &cfg);
    assert_int_equal(cfg.protocol, CW_PROTO_PB);
    assert_true(has_note(&o, "protocol 'carrier-pigeon' ignored"));
    done(&o, &cfg);
    free(pb);
    free(mp);
}

/* Over pb: no HTTP proxy (an explicit one is refused, the variables are not
 * used); TLS is allowed. */
static void test_pb_proxy_and_tls(void **state)
{
    cw_opts_t o;
    cw_config_t cfg;
    char line[256];
    const char *const *proxies =
        ENVP("http_proxy=http://px:3128", "HTTPS_PROXY=http://px:8443", "ALL_PROXY=http://px:1");
    /* the variables are ignored for pb, used for msgpack */
    run_ok(&(srcs_t){.argv = ARGV("--master", "h:1", REST), .env = proxies}, &o, &cfg);
    assert_null(cfg.proxy);
    check_line(&o, &cfg, "proxy", line, sizeof line);
    assert_string_equal(line, "proxy = none # default: protocol pb, proxy variables not used");
    done(&o, &cfg);
    run_ok(&(srcs_t){.argv = ARGV("--master", "h:1", "--use-tls", REST), .env = proxies}, &o, &cfg);
    assert_null(cfg.proxy);
    assert_true(cfg.use_tls);
    assert_int_equal(cfg.protocol, CW_PROTO_PB);
    done(&o, &cfg);
    run_ok(
        &(srcs_t){.argv = ARGV("--master", "h:1", "--protocol", "msgpack", REST), .env = proxies},
        &o, &cfg);
    assert_string_equal(cfg.proxy, "http://px:3128");
    done(&o, &cfg);
    /* an explicit proxy with pb: refused, naming it, never showing its password */
    run_fails(&(srcs_t){.argv = ARGV("--master", "h:1", REST, "--proxy", "http://u:s3cret@px:1")},
              "s3cret", "--proxy: an HTTP proxy is supported over msgpack only", "(the default)",
              "--proxy none", NULL);
    run_fails(&(srcs_t){.argv = ARGV("--master", "h:1", REST, "--protocol", "pb"),
                        .env = ENVP("CWORKER_PROXY=http://px:1")},
              NULL, "CWORKER_PROXY: an HTTP proxy is supported over msgpack only",
              "pb (--protocol)", NULL);
    char *tac = make_stock_tac("600", "None", "'tcp:host=px:port=3128'", "'pb'");
    run_fails(&(srcs_t){.tac = tac}, NULL, "buildbot.tac:39 (proxy_connection_string)",
              "msgpack only", "buildbot.tac:40 (protocol)", NULL);
    free(tac);
    /* proxy none is no proxy: fine */
    run_ok(&(srcs_t){.argv = ARGV("--master", "h:1", REST, "--proxy", "none"), .env = proxies}, &o,
           &cfg);
    assert_null(cfg.proxy);
    done(&o, &cfg);
    /* use-tls with pb: TLS over the TCP link; the master still prints as HOST:PORT */
    run_ok(&(srcs_t){.tac = "connection_string = 'tls:host=bm:port=9443'\nworkername = 'w'\n"
                            "passwd = 'p'\nbasedir = '/b'\n"},
           &o, &cfg);
    assert_int_equal(cfg.protocol, CW_PROTO_PB);
    assert_true(cfg.use_tls);
    check_line(&o, &cfg, "master", line, sizeof line);
    assert_string_equal(line, "master = bm:9443 # /srv/w/buildbot.tac:1 (connection_string)");
    done(&o, &cfg);
}

/* The tacs of the stock create-worker: default, --protocol=msgpack -k 20
 * -a file, -a signal, -k 0. */
static void test_stock_tac(void **state)
{
    static const struct {
        const char *keepalive, *allow, *protocol;
        cw_protocol_t want_proto;
        uint64_t want_ka;
        cw_allow_shutdown_t want_allow;
        bool ka_note;
    } cases[] = {
        {"600", "None", "'pb'", CW_PROTO_PB, 600000, CW_SHUTDOWN_NONE, false},
        {"20", "'file'", "'msgpack_experimental_v7'", CW_PROTO_MSGPACK, 20000, CW_SHUTDOWN_FILE,
         true},
        {"600", "'signal'", "'pb'", CW_PROTO_PB, 600000, CW_SHUTDOWN_SIGNAL, false},
        {"0", "None", "'pb'", CW_PROTO_PB, 0, CW_SHUTDOWN_NONE, false},
        /* the stock 600 with msgpack: the default, nothing to note */
        {"600", "None", "'msgpack_experimental_v7'", CW_PROTO_MSGPACK, 600000, CW_SHUTDOWN_NONE,
         false},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *tac = make_stock_tac(cases[i].keepalive, cases[i].allow, "None", cases[i].protocol);
        cw_opts_t o;
        cw_config_t cfg;
        run_ok(&(srcs_t){.tac = tac}, &o, &cfg);
        if (cfg.protocol != cases[i].want_proto || cfg.keepalive != cases[i].want_ka ||
            cfg.allow_shutdown != cases[i].want_allow)
            fail_msg("case %zu: protocol %d keepalive %llu allow-shutdown %d", i, cfg.protocol,
                     (unsigned long long)cfg.keepalive, cfg.allow_shutdown);
        if (has_note(&o, "keepalive has no effect over msgpack") != cases[i].ka_note)
            fail_msg("case %zu: keepalive note %s", i, cases[i].ka_note ? "missing" : "unwanted");
        /* neither is an ignored setting any more */
        assert_false(has_note(&o, "ignored"));
        assert_string_equal(cfg.master_host, "localhost");
        assert_int_equal(cfg.master_port, 9989);
        char *text = formatted(&o, &cfg, true);
        assert_non_null(strstr(text, "/srv/w/buildbot.tac:31 (keepalive)"));
        assert_non_null(strstr(text, "/srv/w/buildbot.tac:35 (allow_shutdown)"));
        assert_non_null(strstr(text, "/srv/w/buildbot.tac:40 (protocol)"));
        free(text);
        done(&o, &cfg);
        free(tac);
    }
    /* maxdelay stays an ignored setting: noted when not the stock value */
    char *tac = make_stock_tac("600", "None", "None", "'pb'"), *p = strstr(tac, "maxdelay = 300");
    memcpy(p, "maxdelay = 900", 14);
    cw_opts_t o;
    cw_config_t cfg;
    run_ok(&(srcs_t){.tac = tac}, &o, &cfg);
    assert_true(has_note(&o, "(maxdelay): ignored"));
    done(&o, &cfg);
    free(tac);
}

/* --check-config notes a keepalive given for msgpack (not an error); pb
 * and defaults say nothing. */
static void test_keepalive_msgpack_note(void **state)
{
    cw_opts_t o;
    cw_config_t cfg;
    run_ok(&(srcs_t){.argv = ARGV("--master", "ws://h/", REST, "--keepalive", "30")}, &o, &cfg);
    char *text = formatted(&o, &cfg, true);
    assert_non_null(strstr(text, "# note: --keepalive: keepalive has no effect over msgpack"));
    assert_non_null(strstr(text, "ping-interval"));
    free(text);
    done(&o, &cfg);
    run_ok(&(srcs_t){.argv = ARGV("--master", "h:1", REST, "--protocol", "msgpack"),
                     .env = ENVP("CWORKER_KEEPALIVE=600")},
           &o, &cfg);
    assert_true(has_note(&o, "CWORKER_KEEPALIVE: keepalive has no effect over msgpack"));
    done(&o, &cfg);
    run_ok(&(srcs_t){.argv = ARGV("--master", "h:1", REST, "--keepalive", "30")}, &o, &cfg);
    assert_int_equal(o.nnotes, 0);
    done(&o, &cfg);
    run_ok(&(srcs_t){.argv = ARGV("--master", "ws://h/", REST)}, &o, &cfg);
    assert_int_equal(o.nnotes, 0);
    done(&o, &cfg);
}

/* --write-config writes what reads back to the same protocol, master,
 * keepalive and allow-shutdown. */
static void test_write_config_roundtrip(void **state)
{
    const srcs_t cases[] = {
        {.argv = ARGV("--master", "h", REST)},
        {.argv = ARGV("--master", "[::1]:1", REST, "--protocol", "pb", "--use-tls", "--keepalive",
                      "12.5", "--allow-shutdown", "signal")},
        {.argv =
             ARGV("--master", "h:1", REST, "--protocol", "msgpack", "--allow-shutdown", "file")},
        {.argv = ARGV("--master", "wss://h/p", REST, "--keepalive", "0")},
        {.argv = ARGV("--master", "h:1", REST),
         .tac = "protocol = 'msgpack_experimental_v7'\nkeepalive = 5\n"}, /* dropped protocol */
        {.env = ENVP("BUILDMASTER=bm", "WORKERPASS=p", "BUILDMASTER_PROTOCOL=msgpack")},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        cw_opts_t o, o2;
        cw_config_t cfg, c2;
        char err[1024];
        run_ok(&cases[i], &o, &cfg);
        char *text = formatted(&o, &cfg, false);
        cw_opts_init(&o2);
        if (cw_opts_parse_conf(&o2, text, strlen(text), "/tmp/w.conf", 0600, err, sizeof err) < 0 ||
            cw_config_resolve(&o2, (char *[]){NULL}, &c2, err, sizeof err) < 0)
            fail_msg("case %zu: written config does not read back: %s\n%s", i, err, text);
        if (c2.protocol != cfg.protocol || c2.keepalive != cfg.keepalive ||
            c2.allow_shutdown != cfg.allow_shutdown || c2.use_tls != cfg.use_tls ||
            c2.master_port != cfg.master_port || strcmp(c2.master_host, cfg.master_host) != 0 ||
            (cfg.protocol == CW_PROTO_MSGPACK && strcmp(c2.master_path, cfg.master_path) != 0))
            fail_msg("case %zu: reads back differently:\n%s", i, text);
        /* defaults are not written; what a source set is */
        if ((o.v[CW_OPT_PROTOCOL].src == CW_SRC_DEFAULT) != (strstr(text, "protocol =") == NULL))
            fail_msg("case %zu: protocol written iff given:\n%s", i, text);
        free(text);
        cw_config_free(&c2);
        cw_opts_free(&o2);
        done(&o, &cfg);
    }
}

/* create-worker's -k/--keepalive, -a/--allow-shutdown and --protocol, read as
 * the stock script pastes them into the tac. */
static void test_create_worker_options(void **state)
{
    static const struct {
        int argc;
        char *argv[10];
        cw_protocol_t proto;
        uint64_t keepalive;
        cw_allow_shutdown_t allow;
    } ok[] = {
        {4, {"b", "m", "n", "p"}, CW_PROTO_PB, 600000, CW_SHUTDOWN_NONE},
        {9,
         {"--protocol=msgpack_experimental_v7", "-k", "20", "-a", "file", "b", "m", "n", "p"},
         CW_PROTO_MSGPACK,
         20000,
         CW_SHUTDOWN_FILE},
        {7,
         {"--keepalive=0", "--allow-shutdown", "signal", "b", "m", "n", "p"},
         CW_PROTO_PB,
         0,
         CW_SHUTDOWN_SIGNAL},
        {6, {"-k30", "-asignal", "b", "m:1", "n", "p"}, CW_PROTO_PB, 30000, CW_SHUTDOWN_SIGNAL},
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        cw_opts_t o;
        cw_create_t cr;
        cw_config_t cfg;
        char err[1024];
        cw_opts_init(&o);
        if (cw_create_worker_parse(&cr, &o, ok[i].argc, (char **)ok[i].argv, err, sizeof err) != 0)
            fail_msg("case %zu: %s", i, err);
        assert_int_equal(cw_config_resolve(&o, (char *[]){NULL}, &cfg, err, sizeof err), 0);
        if (cfg.protocol != ok[i].proto || cfg.keepalive != ok[i].keepalive ||
            cfg.allow_shutdown != ok[i].allow)
            fail_msg("case %zu: protocol %d keepalive %llu allow-shutdown %d", i, cfg.protocol,
                     (unsigned long long)cfg.keepalive, cfg.allow_shutdown);
        assert_false(has_note(&o, "ignored"));
        cw_config_free(&cfg);
        cw_create_free(&cr);
        cw_opts_free(&o);
    }
    static const struct {
        int argc;
        char *argv[6];
        const char *frag;
    } bad[] = {
        {6, {"-a", "reboot", "b", "m", "n", "p"}, "-a 'reboot': needs signal, file or none"},
        {6, {"-k", "soon", "b", "m", "n", "p"}, "-k 'soon': needs a number"},
        {6, {"--protocol", "pb", "b", "wss://m/", "n", "p"}, "conflicts with the master URL"},
        {6, {"--protocol", "spdy", "b", "m", "n", "p"}, "needs pb or msgpack_experimental_v7"},
        {6, {"--proxy-connection-string", "'tcp:px:1'", "b", "m", "n", "p"}, "msgpack only"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cw_opts_t o;
        cw_create_t cr;
        char err[1024];
        cw_opts_init(&o);
        if (cw_create_worker_parse(&cr, &o, bad[i].argc, (char **)bad[i].argv, err, sizeof err) ==
            0)
            fail_msg("bad case %zu accepted", i);
        if (strstr(err, bad[i].frag) == NULL)
            fail_msg("bad case %zu: '%s' lacks '%s'", i, err, bad[i].frag);
        cw_opts_free(&o);
    }
    /* the settings cworker still ignores are accepted with a note */
    cw_opts_t o;
    cw_create_t cr;
    char err[1024];
    cw_opts_init(&o);
    char *ign[] = {"--maxdelay", "5", "-n", "b", "m", "n", "p"};
    assert_int_equal(cw_create_worker_parse(&cr, &o, 7, ign, err, sizeof err), 0);
    assert_true(has_note(&o, "--maxdelay: ignored"));
    assert_true(has_note(&o, "-n: ignored"));
    cw_create_free(&cr);
    cw_opts_free(&o);
}

/* --help and create-worker --help: no word of pb being unsupported. */
static void test_help_texts(void **state)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    cw_config_usage(f);
    cw_create_worker_usage(f);
    cw_opts_doc(f, "man");
    cw_opts_doc(f, "markdown");
    fclose(f);
    assert_non_null(strstr(text, "--keepalive SECONDS"));
    assert_non_null(strstr(text, "--allow-shutdown signal|file|none"));
    assert_non_null(strstr(text, "-k, --keepalive N"));
    assert_non_null(strstr(text, "-a, --allow-shutdown VALUE"));
    assert_non_null(strstr(text, "Perspective Broker"));
    static const char *stale[] = {"not supported yet",   "PB support is coming",
                                  "refused with advice", "the master's msgpack port",
                                  "speaks only msgpack", "the only one cworker speaks"};
    for (size_t i = 0; i < sizeof stale / sizeof stale[0]; i++)
        if (strstr(text, stale[i]))
            fail_msg("help or docs still say '%s'", stale[i]);
    free(text);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rows_complete),
        cmocka_unit_test(test_unique),
        cmocka_unit_test(test_defaults_parse),
        cmocka_unit_test(test_bad_values_rejected),
        cmocka_unit_test(test_docs_generated),
        cmocka_unit_test(test_docs_mention_everything),
        cmocka_unit_test(test_protocol_defaults),
        cmocka_unit_test(test_protocol_sources),
        cmocka_unit_test(test_ws_master_means_msgpack),
        cmocka_unit_test(test_dropped_protocol),
        cmocka_unit_test(test_pb_proxy_and_tls),
        cmocka_unit_test(test_stock_tac),
        cmocka_unit_test(test_keepalive_msgpack_note),
        cmocka_unit_test(test_write_config_roundtrip),
        cmocka_unit_test(test_create_worker_options),
        cmocka_unit_test(test_help_texts),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
