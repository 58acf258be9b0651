/* `cworker create-worker`: the stock script's command line, read through
 * the option table -- each stock option is the row that names it (cw) or an
 * ignored setting, and its value is read like the tac variable the stock
 * script would paste it into -- into flag-level options; then the new base
 * directory with cworker.conf and the info/ files. */
#include "options.h"
#include "optutil.h"
#include "options_table.h"
#include "tac.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* The flag ids of the scanner: options, ignored settings, create-worker's own. */
#define ID_FOREIGN 1000
#define ID_OWN     2000

void cw_create_free(cw_create_t *cr)
{
    free(cr->basedir);
    free(cr->admin);
    free(cr->host);
    memset(cr, 0, sizeof *cr);
}

/* A Python int literal or None, as buildbot-worker's create-worker takes
 * them (regex ^(0o)?\d+$ or None); legacy leading-zero octal accepted. */
static int stock_number(const char *s, long long *out, bool *legacy)
{
    if (strcmp(s, "None") == 0)
        return 1;
    const char *p = s;
    if (cw_py_int(&p, s + strlen(s), out, legacy) < 0 || *p || strchr(s, 'x') || strchr(s, 'b') ||
        strchr(s, 'X') || strchr(s, 'B') || strchr(s, '_'))
        return -1;
    return 0;
}

/* The value s of a create-worker option of syntax arg, as the Python value
 * the stock script writes into the tac; *why when it is none.  v->s points
 * into copy (the caller frees it). */
static int stock_value(cw_cwarg_t arg, const char *s, cw_pyval_t *v, char **copy, const char **why)
{
    uint64_t u;
    memset(v, 0, sizeof *v);
    switch (arg) {
    case CW_CWARG_FLAG:
        v->kind = CW_PV_BOOL;
        v->i = 1;
        return 0;
    case CW_CWARG_INT:
        *why = "needs a number";
        if (cw_opt_parse_u64(s, &u) < 0 || u > LLONG_MAX)
            return -1;
        v->kind = CW_PV_INT;
        v->i = (long long)u;
        return 0;
    case CW_CWARG_PYNUM: {
        *why = "needs a number or None";
        int sn = stock_number(s, &v->i, &v->legacy_octal);
        v->kind = sn == 1 ? CW_PV_NONE : CW_PV_INT;
        return sn < 0 ? -1 : 0;
    }
    case CW_CWARG_PYLIT: { /* pasted into the tac as Python: strip the quotes */
        size_t l = strlen(s);
        if (strcmp(s, "None") == 0) {
            v->kind = CW_PV_NONE;
            return 0;
        }
        if ((*copy = strdup(s)) == NULL)
            return -ENOMEM;
        if (l >= 2 && (s[0] == '\'' || s[0] == '"') && s[l - 1] == s[0]) {
            (*copy)[l - 1] = '\0';
            v->s = *copy + 1;
        } else {
            v->s = *copy;
        }
        v->kind = CW_PV_STR;
        return 0;
    }
    default:
        v->kind = CW_PV_STR;
        v->s = (char *)s;
        return 0;
    }
}

typedef struct cwparse {
    cw_create_t *cr;
    cw_opts_t *o;
    const char *pos[4];
    int npos;
} cwparse_t;

/* A stock option that maps to option id. */
static int cw_option(cwparse_t *p, int id, const char *name, const char *value, char *err,
                     size_t errlen)
{
    cw_pyval_t v;
    char *copy = NULL;
    const char *why = NULL;
    int rc = stock_value(cw_optdefs[id].cw_arg, value, &v, &copy, &why);
    if (rc == 0) {
        rc = cw_tac_import(p->o, id, &v, name, CW_SRC_FLAG, NULL, &why, err, errlen);
        rc = rc == 1 ? -1 : rc;
    }
    if (rc == -1)
        rc = cw_opt_fail(err, errlen, "create-worker: %s '%.60s': %s", name, value, why);
    else if (rc == -ENOMEM)
        rc = cw_opt_oom(err, errlen);
    free(copy);
    return rc;
}

/* A stock option cworker ignores: checked like the stock script does, noted. */
static int cw_foreign_option(cwparse_t *p, const cw_foreign_t *fo, const char *name,
                             const char *value, char *err, size_t errlen)
{
    uint64_t u;
    if (fo->cw_arg == CW_CWARG_INT && cw_opt_parse_u64(value, &u) < 0)
        return cw_opt_fail(err, errlen, "create-worker: %s '%.60s': needs a number", name, value);
    if (fo->cw_arg == CW_CWARG_STR) {
        size_t n = strlen(value);
        const char *w = strstr(fo->cw_words, value);
        if (n == 0 || w == NULL || (w > fo->cw_words && w[-1] != ' ') || (w[n] && w[n] != ' '))
            return cw_opt_fail(err, errlen, "create-worker: %s '%.60s': needs one of: %s", name,
                               value, fo->cw_words);
    }
    cw_opts_note(p->o, cw_opt_asprintf("%s: ignored (%s)", name, fo->why));
    return 0;
}

/* create-worker's own options. */
static int cw_own_option(cwparse_t *p, int k, const char *value, char *err, size_t errlen)
{
    char **dst = k == CW_CWOPT_ADMIN ? &p->cr->admin : &p->cr->host;
    switch (k) {
    case CW_CWOPT_FORCE:
        p->cr->force = true;
        return 0;
    case CW_CWOPT_RELOCATABLE:
        p->cr->relocatable = true;
        return 0;
    case CW_CWOPT_QUIET:
        p->cr->quiet = true;
        return 0;
    case CW_CWOPT_HELP:
        p->o->action = CW_ACTION_HELP;
        return 1;
    default: /* --admin, --host */
        free(*dst);
        return (*dst = strdup(value)) ? 0 : cw_opt_oom(err, errlen);
    }
}

/* One flag or positional word of create-worker's command line. */
static int cw_flag(void *ctx, const cw_flagspec_t *f, const char *name, const char *value,
                   char *err, size_t errlen)
{
    cwparse_t *p = ctx;
    if (f == NULL) {
        if (p->npos == 4)
            return cw_opt_fail(err, errlen,
                               "create-worker: too many arguments ('%s'); usage: cworker "
                               "create-worker [options] BASEDIR MASTER NAME PASSWORD",
                               value);
        p->pos[p->npos++] = value;
        return 0;
    }
    if (f->id >= ID_OWN)
        return cw_own_option(p, f->id - ID_OWN, value, err, errlen);
    if (f->id >= ID_FOREIGN)
        return cw_foreign_option(p, &cw_foreign[f->id - ID_FOREIGN], name, value, err, errlen);
    return cw_option(p, f->id, name, value, err, errlen);
}

/* The scanner's view of create-worker's options; returns their number. */
static size_t cw_specs(cw_flagspec_t *specs)
{
    size_t n = 0;
    for (int id = 0; id < CW_OPT__COUNT; id++) {
        const cw_optdef_t *d = &cw_optdefs[id];
        if (d->cw)
            specs[n++] = (cw_flagspec_t){
                d->cw, d->cw_short, d->cw_arg == CW_CWARG_FLAG ? CW_ARG_NONE : CW_ARG_REQUIRED, id};
    }
    for (size_t k = 0; k < CW_NFOREIGN; k++)
        specs[n++] =
            (cw_flagspec_t){cw_foreign[k].cw, cw_foreign[k].cw_short,
                            cw_foreign[k].cw_arg == CW_CWARG_FLAG ? CW_ARG_NONE : CW_ARG_REQUIRED,
                            ID_FOREIGN + (int)k};
    for (int k = 0; k < CW_CWOPT__COUNT; k++)
        specs[n++] = (cw_flagspec_t){cw_cwopts[k].name, cw_cwopts[k].shrt,
                                     cw_cwopts[k].arg ? CW_ARG_REQUIRED : CW_ARG_NONE, ID_OWN + k};
    return n;
}

/* BASEDIR MASTER NAME PASSWORD into flag-level options. */
static int cw_positional(cwparse_t *p, char *err, size_t errlen)
{
    static const struct {
        int id;
        const char *where;
    } args[] = {
        {CW_OPT_MASTER, "MASTER argument"},
        {CW_OPT_NAME, "NAME argument"},
        {CW_OPT_PASSWORD, "PASSWORD argument"},
    };
    if (p->npos != 4)
        return cw_opt_fail(err, errlen,
                           "create-worker: expected BASEDIR MASTER NAME PASSWORD (got %d "
                           "argument%s)",
                           p->npos, p->npos == 1 ? "" : "s");
    if (strncmp(p->pos[1], "http:", 5) == 0)
        return cw_opt_fail(
            err, errlen, "create-worker: MASTER '%.80s' is not a URL - do not use URL", p->pos[1]);
    if ((p->cr->basedir = strdup(p->pos[0])) == NULL)
        return cw_opt_oom(err, errlen);
    for (size_t k = 0; k < 3; k++) {
        int rc =
            cw_opts_set(p->o, args[k].id, p->pos[k + 1], args[k].where, CW_SRC_FLAG, err, errlen);
        if (rc < 0)
            return rc;
    }
    return cw_opts_set(p->o, CW_OPT_BASEDIR, p->cr->relocatable ? "." : p->pos[0],
                       "BASEDIR argument", CW_SRC_FLAG, err, errlen);
}

int cw_create_worker_parse(cw_create_t *cr, cw_opts_t *o, int argc, char **argv, char *err,
                           size_t errlen)
{
    memset(cr, 0, sizeof *cr);
    cw_flagspec_t specs[CW_OPT__COUNT + CW_NFOREIGN + CW_CWOPT__COUNT];
    cwparse_t p = {.cr = cr, .o = o};
    int rc = cw_opt_scan(specs, cw_specs(specs), true, argc, argv, cw_flag, &p,
                         "create-worker: ", err, errlen);
    if (rc == 0 && o->action == CW_ACTION_HELP)
        return 0;
    if (rc == 0)
        rc = cw_positional(&p, err, errlen);
    if (rc == 0) { /* validate now, before anything is created */
        cw_config_t cfg;
        char *const noenv[] = {NULL};
        size_t nnotes = o->nnotes;
        rc = cw_config_resolve(o, noenv, &cfg, err, errlen);
        if (rc == 0)
            cw_config_free(&cfg);
        while (o->nnotes > nnotes) /* cw_create_worker_run resolves (and notes) again */
            free(o->notes[--o->nnotes]);
    }
    if (rc < 0)
        cw_create_free(cr);
    return rc;
}

/* Write a new file with contents unless it exists (the stock behaviour). */
static int create_info_file(const char *dir, const char *name, const char *text, FILE *out,
                            char *err, size_t errlen)
{
    char *p = cw_opt_asprintf("%s/%s", dir, name);
    if (p == NULL)
        return cw_opt_oom(err, errlen);
    int fd = open(p, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) {
        int e = errno;
        free(p);
        return e == EEXIST
                   ? 0
                   : cw_opt_fail(err, errlen, "could not write info/%s: %s", name, strerror(e));
    }
    size_t len = strlen(text);
    bool nl = len == 0 || text[len - 1] != '\n';
    bool ok = write(fd, text, len) == (ssize_t)len && (!nl || write(fd, "\n", 1) == 1);
    ok = (close(fd) == 0) && ok;
    free(p);
    if (!ok)
        return cw_opt_fail(err, errlen, "could not write info/%s: %s", name, strerror(errno));
    if (out)
        fprintf(out, "Creating info/%s, you need to edit it appropriately.\n", name);
    return 0;
}

/* mkdir dir unless it exists; what names it in messages. */
static int make_dir(const char *dir, FILE *msg, bool quiet_if_exists, char *err, size_t errlen)
{
    if (mkdir(dir, 0777) == 0) {
        if (msg)
            fprintf(msg, "mkdir %s\n", dir);
        return 0;
    }
    if (errno == EEXIST) {
        if (msg && !quiet_if_exists)
            fprintf(msg, "updating existing installation\n");
        return 0;
    }
    return cw_opt_fail(err, errlen, "create-worker: error creating directory %s: %s", dir,
                       strerror(errno));
}

/* Everything on disk: the base directory, cworker.conf, info/. */
static int create_files(const cw_create_t *cr, cw_opts_t *o, const char *base, FILE *msg, char *err,
                        size_t errlen)
{
    char *conf = cw_opt_asprintf("%s/cworker.conf", base), *info = cw_opt_asprintf("%s/info", base);
    cw_config_t cfg;
    char *const noenv[] = {NULL};
    int rc = conf && info ? 0 : cw_opt_oom(err, errlen);
    struct stat st;
    if (rc == 0 && !cr->force && lstat(conf, &st) == 0)
        rc = cw_opt_fail(err, errlen,
                         "create-worker: '%s' exists; add --force to replace it (info/ files are "
                         "kept)",
                         conf);
    if (rc == 0 && !cr->relocatable)
        rc = cw_opts_set(o, CW_OPT_BASEDIR, base, "BASEDIR argument", CW_SRC_FLAG, err, errlen);
    if (rc == 0 && (rc = cw_config_resolve(o, noenv, &cfg, err, errlen)) == 0) {
        if ((rc = make_dir(base, msg, false, err, errlen)) == 0)
            rc = cw_config_write(conf, &cfg, o, true, err, errlen);
        cw_config_free(&cfg);
    }
    if (rc == 0 && msg)
        fprintf(msg, "wrote %s (mode 0600)\n", conf);
    if (rc == 0)
        rc = make_dir(info, msg, true, err, errlen);
    if (rc == 0)
        rc = create_info_file(info, "admin",
                              cr->admin ? cr->admin : "Your Name Here <admin@youraddress.invalid>",
                              msg, err, errlen);
    if (rc == 0)
        rc = create_info_file(
            info, "host", cr->host ? cr->host : "Please put a description of this build host here",
            msg, err, errlen);
    if (rc == 0 && msg) {
        for (size_t i = 0; i < o->nnotes; i++)
            fprintf(msg, "note: %s\n", o->notes[i]);
        fprintf(msg, "worker configured in %s\nrun it with: cworker --config %s\n", base, conf);
    }
    free(conf);
    free(info);
    return rc;
}

int cw_create_worker_run(const cw_create_t *cr, cw_opts_t *o, FILE *out, char *err, size_t errlen)
{
    char *base = cw_opt_absolute(cr->basedir);
    if (base == NULL)
        return cw_opt_oom(err, errlen);
    size_t bl = strlen(base);
    while (bl > 1 && base[bl - 1] == '/')
        base[--bl] = '\0';
    int rc = create_files(cr, o, base, cr->quiet ? NULL : out, err, errlen);
    free(base);
    return rc;
}
