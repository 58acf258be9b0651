/* The sources that are plain text: the command line, the environment
 * (CWORKER_* and the variables of the buildbot/buildbot-worker container
 * image) and the config file, each read through the option table. */
#include "options.h"
#include "optutil.h"
#include "options_table.h"

#include <ctype.h>
#include <errno.h>
#include <fnmatch.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

extern char **environ;

/* ------------------------------------------------------------------------ */
/* Command line                                                             */
/* ------------------------------------------------------------------------ */

/* One flag or positional word of cworker's command line. */
static int argv_flag(void *ctx, const cw_flagspec_t *f, const char *name, const char *value,
                     char *err, size_t errlen)
{
    cw_opts_t *o = ctx;
    if (f == NULL)
        return cw_opt_fail(err, errlen, "unexpected argument '%s'", value);
    if (f->id < CW_OPT__COUNT) {
        const cw_optdef_t *d = &cw_optdefs[f->id];
        if (d->flags & CW_OPTF_NOFLAG)
            return cw_opt_fail(err, errlen,
                               "--%s: the password is never taken from the command line (every "
                               "user can read it there); use --password-file FILE, "
                               "CWORKER_PASSWORD, or password = ... in a config file only its "
                               "owner can read",
                               d->name);
        return cw_opts_set(o, f->id, value ? value : "true", name, CW_SRC_FLAG, err, errlen);
    }
    switch (f->id - CW_OPT__COUNT) {
    case CW_ACT_HELP:
        o->action = CW_ACTION_HELP;
        return 1;
    case CW_ACT_VERSION:
        o->action = CW_ACTION_VERSION;
        return 1;
    case CW_ACT_HELP_TABLE:
        o->action = CW_ACTION_DOC;
        o->doc_format = value;
        return 1;
    case CW_ACT_FORCE:
        o->force = true;
        return 0;
    case CW_ACT_CHECK_CONFIG:
        if (o->action != CW_ACTION_WRITE)
            o->action = CW_ACTION_CHECK;
        return 0;
    default: /* CW_ACT_WRITE_CONFIG */
        if (*value == '\0')
            return cw_opt_fail(err, errlen, "option '--write-config' needs a file name");
        free(o->write_config);
        if ((o->write_config = strdup(value)) == NULL)
            return cw_opt_oom(err, errlen);
        o->action = CW_ACTION_WRITE;
        return 0;
    }
}

int cw_opts_parse_argv(cw_opts_t *o, int argc, char **argv, char *err, size_t errlen)
{
    if (argc > 1 && strcmp(argv[1], "create-worker") == 0) {
        o->action = CW_ACTION_CREATE;
        o->create_argc = argc - 2;
        o->create_argv = argv + 2;
        return 0;
    }
    cw_flagspec_t specs[CW_OPT__COUNT + CW_ACT__COUNT];
    for (int i = 0; i < CW_OPT__COUNT; i++) {
        /* booleans: bare --NAME is true; the password: refused before its value */
        bool opt = cw_optdefs[i].type == CW_T_BOOL || (cw_optdefs[i].flags & CW_OPTF_NOFLAG);
        specs[i] =
            (cw_flagspec_t){cw_optdefs[i].name, 0, opt ? CW_ARG_OPTIONAL : CW_ARG_REQUIRED, i};
    }
    for (int k = 0; k < CW_ACT__COUNT; k++)
        specs[CW_OPT__COUNT + k] =
            (cw_flagspec_t){cw_actions[k].name, cw_actions[k].shrt,
                            cw_actions[k].arg ? CW_ARG_REQUIRED : CW_ARG_NONE, CW_OPT__COUNT + k};
    int rc = cw_opt_scan(specs, sizeof specs / sizeof specs[0], false, argc - 1, argv + 1,
                         argv_flag, o, "", err, errlen);
    if (rc < 0)
        return rc;
    if (o->force && o->action != CW_ACTION_WRITE && o->action != CW_ACTION_HELP &&
        o->action != CW_ACTION_VERSION && o->action != CW_ACTION_DOC)
        return cw_opt_fail(err, errlen, "--force only goes with --write-config FILE");
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Environment                                                              */
/* ------------------------------------------------------------------------ */

/* The master from BUILDMASTER and BUILDMASTER_PORT, either of them set, the
 * other one's image default filling in. */
static int image_master(cw_opts_t *o, char *const *envp, char *err, size_t errlen)
{
    const cw_optdef_t *d = &cw_optdefs[CW_OPT_MASTER];
    const char *host = cw_opt_getenv(envp, d->image[0]), *port = cw_opt_getenv(envp, d->image[1]);
    if (host == NULL && port == NULL)
        return 0;
    char where[64];
    snprintf(where, sizeof where, "%s%s%s", host ? d->image[0] : "", host && port ? ", " : "",
             port ? d->image[1] : "");
    host = host ? host : d->image_def[0];
    port = port ? port : d->image_def[1];
    char *m = strchr(host, ':') && host[0] != '[' ? cw_opt_asprintf("[%s]:%s", host, port)
                                                  : cw_opt_asprintf("%s:%s", host, port);
    if (m == NULL)
        return cw_opt_oom(err, errlen);
    int rc = cw_opts_set(o, CW_OPT_MASTER, m, where, CW_SRC_CONTAINER, err, errlen);
    free(m);
    return rc;
}

/* The container image's variables, at their precedence (below the tac);
 * config.c adds the image's defaults when they configure the master. */
static int parse_image_env(cw_opts_t *o, char *const *envp, char *err, size_t errlen)
{
    for (int id = 0; id < CW_OPT__COUNT; id++) {
        const cw_optdef_t *d = &cw_optdefs[id];
        for (int k = 0; k < 2 && d->image[k]; k++)
            if (cw_opt_getenv(envp, d->image[k]))
                o->container_env = true;
        if (d->image[0] == NULL || id == CW_OPT_MASTER)
            continue;
        const char *v = cw_opt_getenv(envp, d->image[0]);
        int rc = v ? cw_opts_set(o, id, v, d->image[0], CW_SRC_CONTAINER, err, errlen) : 0;
        if (rc < 0)
            return rc;
    }
    return image_master(o, envp, err, errlen);
}

int cw_opts_parse_env(cw_opts_t *o, char *const *envp, char *err, size_t errlen)
{
    for (int id = 0; id < CW_OPT__COUNT; id++) {
        const char *v = cw_opt_getenv(envp, cw_optdefs[id].env);
        int rc = v ? cw_opts_set(o, id, v, cw_optdefs[id].env, CW_SRC_ENV, err, errlen) : 0;
        if (rc < 0)
            return rc;
    }
    return parse_image_env(o, envp, err, errlen);
}

/* Does name match one of the space-separated glob patterns?  Like Python's
 * fnmatch on POSIX: case-sensitive, '*' crosses '/', no backslash escapes. */
static bool blacklisted(const char *name, const char *patterns)
{
    for (const char *p = patterns; *p;) {
        p += strspn(p, " \t\n\r\f\v");
        size_t l = strcspn(p, " \t\n\r\f\v");
        char *pat = l ? strndup(p, l) : NULL;
        bool hit = pat && fnmatch(pat, name, FNM_NOESCAPE) == 0;
        free(pat);
        if (hit)
            return true;
        p += l;
    }
    return false;
}

/* The first variable of the environment that the patterns name (heap), or NULL. */
static char *next_blacklisted(const char *patterns)
{
    for (char **e = environ; e && *e; e++) {
        char *name = strndup(*e, strcspn(*e, "="));
        if (name && name[0] && blacklisted(name, patterns))
            return name;
        free(name);
    }
    return NULL;
}

void cw_env_scrub(void)
{
    const char *bl = getenv("WORKER_ENVIRONMENT_BLACKLIST");
    char *patterns = bl ? strdup(bl) : NULL, *name; /* unsetenv may free bl */
    unsetenv("CWORKER_PASSWORD");
    unsetenv("WORKERPASS");
    /* one at a time: unsetenv changes environ under our feet */
    while (patterns && (name = next_blacklisted(patterns)) != NULL) {
        unsetenv(name);
        free(name);
    }
    free(patterns);
}

/* ------------------------------------------------------------------------ */
/* Config file                                                              */
/* ------------------------------------------------------------------------ */

/* One escape of a quoted value at *s (after the backslash); 0 or -1. */
static int unescape(const char **s, const char *end, char *c, const char **why)
{
    *c = *(*s)++;
    switch (*c) {
    case '\\':
    case '"':
        return 0;
    case 'n':
        *c = '\n';
        return 0;
    case 't':
        *c = '\t';
        return 0;
    case 'r':
        *c = '\r';
        return 0;
    case 'x': {
        char hex[3] = {0, 0, 0};
        if (end - *s >= 2 && isxdigit((unsigned char)(*s)[0]) && isxdigit((unsigned char)(*s)[1])) {
            hex[0] = (*s)[0];
            hex[1] = (*s)[1];
            *s += 2;
        }
        *c = (char)strtol(hex, NULL, 16);
        if (*c != 0)
            return 0;
        *why = "bad \\x escape (two hex digits, not 00)";
        return -1;
    }
    default:
        *why = "unknown escape in a quoted value (use \\\\ \\\" \\n \\t \\r \\xHH)";
        return -1;
    }
}

/* Decode a double-quoted value starting at s (after the opening quote);
 * only blanks may follow the closing quote.  NULL with *why on error. */
static char *unquote(const char *s, const char *end, const char **why)
{
    char *out = malloc((size_t)(end - s) + 1);
    size_t n = 0;
    if (out == NULL) {
        *why = "out of memory";
        return NULL;
    }
    while (s < end && *s != '"') {
        char c = *s++;
        if (c == '\\' && s < end && unescape(&s, end, &c, why) < 0)
            goto bad;
        out[n++] = c;
    }
    if (s >= end) {
        *why = "missing closing '\"'";
        goto bad;
    }
    for (s++; s < end; s++) {
        if (*s != ' ' && *s != '\t') {
            *why = "text after the closing '\"'";
            goto bad;
        }
    }
    out[n] = '\0';
    return out;
bad:
    free(out);
    return NULL;
}

typedef struct conf {
    cw_opts_t *o;
    const char *path;
    unsigned mode;
    int seen[CW_OPT__COUNT]; /* the line that set each key */
} conf_t;

/* The value of one "key = value" line (v..le), for option id. */
static int conf_value(conf_t *c, int line, int id, const char *v, const char *le, char *err,
                      size_t errlen)
{
    const cw_optdef_t *d = &cw_optdefs[id];
    char *value;
    if (v < le && *v == '"') {
        const char *why = NULL;
        if ((value = unquote(v + 1, le, &why)) == NULL)
            return cw_opt_fail(err, errlen, "%s:%d: %s: %s", c->path, line, d->name, why);
    } else if ((value = strndup(v, (size_t)(le - v))) == NULL) {
        return cw_opt_oom(err, errlen);
    }
    int rc = 0;
    if (d->type == CW_T_SECRET && (c->mode & 077)) {
        rc = cw_opt_fail(err, errlen,
                         "%s:%d: %s in a file that group or others can access (mode %04o); "
                         "refusing it: run chmod 600 '%s', or use password-file",
                         c->path, line, d->name, c->mode & 07777, c->path);
    } else if (d->type == CW_T_PATH && value[0] != '\0') {
        char *abs = cw_opt_relative_to(c->path, value);
        free(value);
        if ((value = abs) == NULL)
            return cw_opt_oom(err, errlen);
    }
    if (rc == 0) {
        char where[PATH_MAX + 32];
        snprintf(where, sizeof where, "%s:%d", c->path, line);
        rc = cw_opts_set(c->o, id, value, where, CW_SRC_FILE, err, errlen);
    }
    explicit_bzero(value, strlen(value));
    free(value);
    return rc;
}

/* One line p..le without its line end; blank and comment lines are fine. */
static int conf_line(conf_t *c, int line, const char *p, const char *le, char *err, size_t errlen)
{
    if (memchr(p, '\0', (size_t)(le - p)))
        return cw_opt_fail(err, errlen, "%s:%d: NUL byte in the line", c->path, line);
    if (le > p && le[-1] == '\r')
        le--;
    while (p < le && (*p == ' ' || *p == '\t'))
        p++;
    while (le > p && (le[-1] == ' ' || le[-1] == '\t'))
        le--;
    if (p == le || *p == '#')
        return 0;
    const char *eq = memchr(p, '=', (size_t)(le - p));
    if (eq == NULL)
        return cw_opt_fail(err, errlen, "%s:%d: expected 'key = value'", c->path, line);
    const char *ke = eq;
    while (ke > p && (ke[-1] == ' ' || ke[-1] == '\t'))
        ke--;
    int id = cw_opt_find(p, (size_t)(ke - p));
    if (id < 0) {
        char k[80];
        snprintf(k, sizeof k, "%.*s", (int)(ke - p > 60 ? 60 : ke - p), p);
        cw_opt_show(k, sizeof k, k);
        return cw_opt_fail(err, errlen, "%s:%d: unknown key '%s' (see cworker --help)", c->path,
                           line, k);
    }
    if (cw_optdefs[id].flags & CW_OPTF_NOFILE)
        return cw_opt_fail(err, errlen, "%s:%d: '%s' cannot be set inside a config file", c->path,
                           line, cw_optdefs[id].name);
    if (c->seen[id])
        return cw_opt_fail(err, errlen, "%s:%d: '%s' was already set on line %d", c->path, line,
                           cw_optdefs[id].name, c->seen[id]);
    c->seen[id] = line;
    const char *v = eq + 1;
    while (v < le && (*v == ' ' || *v == '\t'))
        v++;
    return conf_value(c, line, id, v, le, err, errlen);
}

int cw_opts_parse_conf(cw_opts_t *o, const char *text, size_t len, const char *path, unsigned mode,
                       char *err, size_t errlen)
{
    conf_t c = {.o = o, .path = path, .mode = mode};
    const char *p = text, *end = text + len;
    if (len >= 3 && memcmp(p, "\xef\xbb\xbf", 3) == 0)
        p += 3;
    for (int line = 1; p < end; line++) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        int rc = conf_line(&c, line, p, nl ? nl : end, err, errlen);
        if (rc < 0)
            return rc;
        p = nl ? nl + 1 : end;
    }
    return 0;
}
