/* Printing from the option table: the effective configuration
 * (--check-config), a config file (--write-config), --help, and the docs'
 * option lists (--help-table: the man page's OPTIONS entries, README's
 * table), which tests/unit/test_options.c compares with the checked-in
 * files. */
#include "options.h"
#include "optutil.h"
#include "options_table.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cw_config.h"
#include "cworker/cw.h"

/* ------------------------------------------------------------------------ */
/* Config-file syntax                                                       */
/* ------------------------------------------------------------------------ */

/* Does a value need quotes to read back the same? */
static bool needs_quotes(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || s[0] == '"' || s[0] == ' ' || s[0] == '\t' || s[n - 1] == ' ' || s[n - 1] == '\t')
        return true;
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            return true;
    return false;
}

/* Write "key = value" in the config-file syntax; returns the columns used. */
static int put_kv(FILE *f, const char *key, const char *val)
{
    int col = fprintf(f, "%s = ", key);
    if (!needs_quotes(val))
        return col + fprintf(f, "%s", val);
    col += fprintf(f, "\"");
    for (const char *s = val; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            col += fprintf(f, "\\%c", c);
        else if (c == '\n')
            col += fprintf(f, "\\n");
        else if (c == '\t')
            col += fprintf(f, "\\t");
        else if (c == '\r')
            col += fprintf(f, "\\r");
        else if (c < 0x20 || c == 0x7f)
            col += fprintf(f, "\\x%02x", c);
        else
            col += fprintf(f, "%c", c);
    }
    return col + fprintf(f, "\"");
}

/* "key = value   # source" */
static void put_kv_src(FILE *f, const char *key, const char *val, const char *src, const char *more)
{
    int col = put_kv(f, key, val);
    fprintf(f, "%*s # %s%s\n", col < 44 ? 44 - col : 0, "", src, more);
}

/* The proxy URL with its password replaced by "***". */
static void mask_proxy(char *buf, size_t cap, const char *url)
{
    const char *s = url + 7; /* normalised: "http://" */
    const char *at = strrchr(s, '@');
    const char *colon = at ? memchr(s, ':', (size_t)(at - s)) : NULL;
    if (colon)
        snprintf(buf, cap, "http://%.*s:***%s", (int)(colon - s), s, at);
    else
        snprintf(buf, cap, "%s", url);
}

/* One option of --check-config: value and source, the password hidden. */
static void format_check(FILE *f, const cw_config_t *cfg, const cw_opts_t *o, int id)
{
    char buf[PATH_MAX + 64], masked[PATH_MAX + 64], srcbuf[PATH_MAX + 64];
    const cw_optval_t *v = &o->v[id];
    const char *name = cw_optdefs[id].name;
    const char *val = cw_opt_format(id, cfg, buf, sizeof buf);
    const char *src = v->src == CW_SRC_DEFAULT ? "default" : v->where;
    if (id == CW_OPT_PASSWORD) {
        if (cfg->password && !cfg->password_file)
            fprintf(f, "# password: set, hidden (%s)\n", src);
        return;
    }
    if (id == CW_OPT_PASSWORD_FILE) {
        if (cfg->password_file)
            put_kv_src(f, name, cfg->password_file, src, "; the password is hidden");
        return;
    }
    if (val == NULL) {
        fprintf(f, "# %s: not set\n", name);
        return;
    }
    if (id == CW_OPT_USE_TLS && v->src == CW_SRC_DEFAULT && cfg->use_tls)
        src = "from the wss:// master URL";
    if (id == CW_OPT_PROTOCOL && v->src == CW_SRC_DEFAULT && cfg->protocol == CW_PROTO_MSGPACK)
        src = "from the ws:// or wss:// master URL";
    if (id == CW_OPT_PROXY && cfg->proxy) {
        mask_proxy(masked, sizeof masked, cfg->proxy);
        val = masked;
    }
    if (id == CW_OPT_PROXY && v->src == CW_SRC_DEFAULT && o->proxy_from) {
        if (o->proxy_env)
            snprintf(srcbuf, sizeof srcbuf, "%s (%s)", o->proxy_env, o->proxy_from);
        else
            snprintf(srcbuf, sizeof srcbuf, "%s", o->proxy_from);
        src = srcbuf;
    }
    put_kv_src(f, name, val, src, "");
}

/* One option of --write-config: what some source set (and the password). */
static void format_write(FILE *f, const cw_config_t *cfg, const cw_opts_t *o, int id)
{
    char buf[PATH_MAX + 64];
    const char *val = cw_opt_format(id, cfg, buf, sizeof buf);
    if (id == CW_OPT_PASSWORD)
        val = cfg->password_file ? NULL : cfg->password;
    else if (id != CW_OPT_PASSWORD_FILE && o->v[id].src == CW_SRC_DEFAULT)
        val = NULL;
    if (val) {
        put_kv(f, cw_optdefs[id].name, val);
        fputc('\n', f);
    }
}

void cw_config_format(FILE *f, const cw_config_t *cfg, const cw_opts_t *o, bool for_check)
{
    if (for_check) {
        fprintf(f,
                "# cworker %s: effective configuration (flags > environment > config file "
                "> buildbot.tac > container image > defaults)\n",
                CW_VERSION_STRING);
        if (o->v[CW_OPT_CONFIG].value)
            fprintf(f, "# config file: %s (%s)\n", o->v[CW_OPT_CONFIG].value,
                    o->v[CW_OPT_CONFIG].where);
        if (o->v[CW_OPT_FROM_TAC].value)
            fprintf(f, "# buildbot.tac: %s (%s)\n", o->v[CW_OPT_FROM_TAC].value,
                    o->v[CW_OPT_FROM_TAC].where);
    } else {
        fprintf(f, "# cworker configuration: key = value, see cworker(1).\n"
                   "# Check it with: cworker --config FILE --check-config\n");
    }
    for (int id = 0; id < CW_OPT__COUNT; id++) {
        if (id == CW_OPT_CONFIG || id == CW_OPT_FROM_TAC)
            continue;
        if (for_check)
            format_check(f, cfg, o, id);
        else
            format_write(f, cfg, o, id);
    }
    if (for_check)
        for (size_t i = 0; i < o->nnotes; i++)
            fprintf(f, "# note: %s\n", o->notes[i]);
}

int cw_config_write(const char *path, const cw_config_t *cfg, const cw_opts_t *o, bool force,
                    char *err, size_t errlen)
{
    struct stat st;
    if (!force && lstat(path, &st) == 0)
        return cw_opt_fail(err, errlen, "'%s' exists; add --force to replace it", path);
    char *tmp = cw_opt_asprintf("%s.tmpXXXXXX", path);
    if (tmp == NULL)
        return cw_opt_oom(err, errlen);
    int fd = cw_mkstemp_cloexec(tmp);
    if (fd < 0) {
        int rc = cw_opt_fail(err, errlen, "cannot write '%s': %s", path, strerror(errno));
        free(tmp);
        return rc;
    }
    fchmod(fd, 0600);
    FILE *f = fdopen(fd, "w");
    if (f == NULL) {
        close(fd);
        unlink(tmp);
        free(tmp);
        return cw_opt_oom(err, errlen);
    }
    cw_config_format(f, cfg, o, false);
    int bad = ferror(f) | fflush(f) | fsync(fd);
    bad |= fclose(f);
    int rc = 0;
    if (bad) {
        rc = cw_opt_fail(err, errlen, "cannot write '%s': %s", path, strerror(errno));
    } else if (force) {
        if (rename(tmp, path) < 0)
            rc = cw_opt_fail(err, errlen, "cannot write '%s': %s", path, strerror(errno));
    } else if (link(tmp, path) < 0) { /* link() never replaces an existing file */
        rc = cw_opt_fail(err, errlen, "cannot write '%s': %s", path,
                         errno == EEXIST ? "it exists (add --force to replace it)"
                                         : strerror(errno));
    }
    unlink(tmp);
    free(tmp);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* --help                                                                   */
/* ------------------------------------------------------------------------ */

/* The text of marked-up help without its markup (`x` and *x*). */
static void plain(char *out, size_t cap, const char *text)
{
    size_t n = 0;
    bool code = false;
    for (const char *p = text; *p && n + 1 < cap; p++) {
        if (*p == '`')
            code = !code;
        else if (*p != '*' || code)
            out[n++] = *p;
    }
    out[n] = '\0';
}

/* Print text word-wrapped to width, continuation lines indented by indent;
 * col is the column the first word starts at (>= width: on a new line). */
static void wrap(FILE *f, const char *text, int col, int indent, int width)
{
    if (col >= width) {
        fprintf(f, "\n%*s", indent, "");
        col = indent;
    }
    bool first = true;
    for (const char *p = text; *p;) {
        size_t wl = strcspn(p, " ");
        if (!first && col + 1 + (int)wl > width) {
            fprintf(f, "\n%*s", indent, "");
            col = indent;
        } else if (!first) {
            fputc(' ', f);
            col++;
        }
        fprintf(f, "%.*s", (int)wl, p);
        col += (int)wl;
        first = false;
        p += wl;
        p += strspn(p, " ");
    }
    fputc('\n', f);
}

/* One entry of --help: the flag in a 28-column head, then the text. */
static void usage_entry(FILE *f, const char *head, const char *text)
{
    fprintf(f, "%-28s", head);
    wrap(f, text, strlen(head) >= 28 ? 80 : 28, 28, 79);
}

/* The container image's variables, "A, B, C". */
static void image_vars(char *buf, size_t cap)
{
    size_t n = 0;
    buf[0] = '\0';
    for (int id = 0; id < CW_OPT__COUNT; id++)
        for (int k = 0; k < 2 && cw_optdefs[id].image[k]; k++)
            n += (size_t)snprintf(buf + n, n < cap ? cap - n : 0, "%s%s", n ? ", " : "",
                                  cw_optdefs[id].image[k]);
}

void cw_config_usage(FILE *f)
{
    char vars[256], text[512], head[160];
    image_vars(vars, sizeof vars);
    fprintf(f, "Usage: cworker --master HOST:PORT --name NAME --basedir DIR [options]\n"
               "       cworker --config FILE [options]\n"
               "       cworker --from-tac BASEDIR/buildbot.tac [options]\n"
               "       cworker create-worker [--force] [stock options] BASEDIR MASTER NAME "
               "PASSWORD\n"
               "\n"
               "A Buildbot worker.  It speaks Perspective Broker (pb, the default) or\n"
               "msgpack_experimental_v7 (--protocol msgpack, or a ws:// or wss:// master).\n"
               "\n"
               "Every option is also an environment variable CWORKER_<NAME> (upper case,\n"
               "'-' -> '_') and a config-file key NAME (\"name = value\" lines, '#' comments).\n"
               "Precedence: flags > environment > config file > buildbot.tac > container\n"
               "image variables > defaults.  The password is never a flag: --password-file\n"
               "FILE, CWORKER_PASSWORD, or password = ... in a config file only its owner\n"
               "can read.\n");
    snprintf(text, sizeof text,
             "The variables of the buildbot/buildbot-worker container image count too: %s; "
             "when one is set and no other source configures the master, the image's defaults "
             "apply.",
             vars);
    wrap(f, text, 0, 0, 79);
    fprintf(f, "\nOptions (default in brackets):\n");
    for (int id = 0; id < CW_OPT__COUNT; id++) {
        const cw_optdef_t *d = &cw_optdefs[id];
        const char *def = d->def_doc ? d->def_doc : d->def;
        char help[400];
        if (d->flags & CW_OPTF_NOFLAG)
            snprintf(head, sizeof head, "  (no flag) %s", d->env);
        else if (d->type == CW_T_BOOL)
            snprintf(head, sizeof head, "  --%s[=BOOL]", d->name);
        else
            snprintf(head, sizeof head, "  --%s %s", d->name, d->arg);
        plain(help, sizeof help, d->help);
        snprintf(text, sizeof text, "%s%s%s%s", help, def ? " [" : "", def ? def : "",
                 def ? "]" : "");
        usage_entry(f, head, text);
    }
    fprintf(f, "Actions:\n");
    for (int k = 0; k < CW_ACT__COUNT; k++) {
        if (cw_actions[k].help == NULL)
            continue;
        snprintf(head, sizeof head, "  --%s%s%s", cw_actions[k].name, cw_actions[k].arg ? " " : "",
                 cw_actions[k].arg ? cw_actions[k].arg : "");
        usage_entry(f, head, cw_actions[k].help);
    }
    fprintf(f, "\nExit status: 0 stopped normally, 1 failure (max-retries reached...), 2 bad\n"
               "configuration or usage (the message names the option and its source).\n");
}

/* The metavariable of a create-worker option's value. */
static const char *cw_metavar(cw_cwarg_t arg)
{
    return arg == CW_CWARG_FLAG    ? ""
           : arg == CW_CWARG_PYNUM ? " N|None"
           : arg == CW_CWARG_INT   ? " N"
                                   : " VALUE";
}

/* "  -s, --log-size N" or "  --umask N|None" */
static void flag_head(char *buf, size_t cap, char shrt, const char *lng, const char *arg)
{
    if (shrt)
        snprintf(buf, cap, "  -%c, --%s%s", shrt, lng, arg);
    else
        snprintf(buf, cap, "  --%s%s", lng, arg);
}

void cw_create_worker_usage(FILE *f)
{
    char head[160], text[512], help[400];
    fprintf(f, "Usage: cworker create-worker [options] BASEDIR MASTER NAME PASSWORD\n"
               "\n"
               "Like `buildbot-worker create-worker`: creates BASEDIR, info/admin, info/host and\n"
               "BASEDIR/cworker.conf (mode 0600: master, name, password, basedir and the options\n"
               "below); run the worker with `cworker --config BASEDIR/cworker.conf`.\n"
               "MASTER is HOST[:PORT] (port 9989), [V6ADDR]:PORT, or a ws:// or wss:// URL.\n"
               "The stock options' values are read as the buildbot.tac would have them.\n"
               "\n");
    for (int k = 0; k < CW_CWOPT__COUNT; k++) {
        const cw_cwoptdef_t *c = &cw_cwopts[k];
        char arg[32];
        snprintf(arg, sizeof arg, "%s%s", c->arg ? " " : "", c->arg ? c->arg : "");
        flag_head(head, sizeof head, c->shrt, c->name, arg);
        usage_entry(f, head, c->help);
    }
    for (int id = 0; id < CW_OPT__COUNT; id++) {
        const cw_optdef_t *d = &cw_optdefs[id];
        if (d->cw == NULL)
            continue;
        flag_head(head, sizeof head, d->cw_short, d->cw, cw_metavar(d->cw_arg));
        plain(help, sizeof help, d->help);
        snprintf(text, sizeof text, "%s: %s", d->name, help);
        usage_entry(f, head, text);
    }
    for (size_t k = 0; k < CW_NFOREIGN; k++) {
        const cw_foreign_t *fo = &cw_foreign[k];
        flag_head(head, sizeof head, fo->cw_short, fo->cw, cw_metavar(fo->cw_arg));
        snprintf(text, sizeof text, "accepted and ignored: %s", fo->why);
        usage_entry(f, head, text);
    }
}

/* ------------------------------------------------------------------------ */
/* The docs: man page entries and README's table                            */
/* ------------------------------------------------------------------------ */

/* Append text in roff to out: `x` bold, *x* italic, '-' and '\' escaped,
 * a new line for each sentence (after ".  "). */
static void roff_text(FILE *out, const char *text)
{
    bool code = false, ital = false, bol = true;
    for (const char *p = text; *p; p++) {
        if (*p == '`' || (*p == '*' && !code)) {
            bool *on = *p == '`' ? &code : &ital;
            fputs(*on ? "\\fR" : (*p == '`' ? "\\fB" : "\\fI"), out);
            *on = !*on;
            continue;
        }
        if (!code && p[0] == '.' && p[1] == ' ' && p[2] == ' ') {
            fputs(".\n", out);
            p += 2;
            bol = true;
            continue;
        }
        if (bol && (*p == '.' || *p == '\''))
            fputs("\\&", out);
        bol = false;
        if (*p == '-')
            fputs("\\-", out);
        else if (*p == '\\')
            fputs("\\e", out);
        else
            fputc(*p, out);
    }
    fputc('\n', out);
}

/* A bold word list for the man page: "\fBa\fR, \fBb\fR and \fBc\fR". */
static void roff_list(FILE *out, const char *const *items, size_t n)
{
    for (size_t k = 0; k < n && items[k]; k++) {
        const char *sep = k == 0 ? "" : (k + 1 < n && items[k + 1]) ? ", " : " and ";
        fprintf(out, "%s`%s`", sep, items[k]);
    }
}

/* The sentence on where else option d comes from, in markup. */
static void sources_sentence(FILE *out, const cw_optdef_t *d)
{
    fprintf(out, "Also `%s`", d->env);
    if (!(d->flags & CW_OPTF_NOFILE))
        fprintf(out, " and the key `%s`", d->name);
    if (d->tac[0]) {
        fprintf(out, "; from a buildbot.tac ");
        roff_list(out, d->tac, 3);
    }
    if (d->cw)
        fprintf(out, "; create-worker's `--%s`", d->cw);
    for (int k = 0; k < 2 && d->image[k]; k++)
        fprintf(out, "%s `%s`%s%s%s", k ? "," : "; in a container", d->image[k],
                d->image_def[k] ? " (default `" : "", d->image_def[k] ? d->image_def[k] : "",
                d->image_def[k] ? "`)" : "");
    fprintf(out, ".");
}

/* The man page's entry for option d. */
static void man_entry(FILE *f, const cw_optdef_t *d)
{
    char *more = NULL;
    size_t len = 0;
    FILE *m = open_memstream(&more, &len);
    if (m == NULL)
        return;
    char name[64];
    size_t n = 0;
    for (const char *c = d->name; *c && n + 3 < sizeof name; c++) /* '-' is \- in roff */
        n += (size_t)snprintf(name + n, sizeof name - n, *c == '-' ? "\\-" : "%c", *c);
    fprintf(f, ".TP\n");
    if (d->flags & CW_OPTF_NOFLAG)
        fprintf(f, ".BR %s \", \" \"%s =\"\n", d->env, name);
    else if (d->type == CW_T_BOOL)
        fprintf(f, ".BR \\-\\-%s [ =\\c\n.IR %s ]\n", name, d->arg);
    else
        fprintf(f, ".BI \\-\\-%s \" %s\"\n", name, d->arg);
    if (d->def_doc && strcmp(d->def_doc, "required") == 0)
        fprintf(m, "%s  Required.", d->doc);
    else if (d->def_doc || d->def)
        fprintf(m, "%s  Default: %s%s%s.", d->doc, d->def_doc ? "" : "`",
                d->def_doc ? d->def_doc : d->def, d->def_doc ? "" : "`");
    else
        fprintf(m, "%s", d->doc);
    fprintf(m, "  ");
    sources_sentence(m, d);
    fclose(m);
    roff_text(f, more);
    free(more);
}

/* Write s into a Markdown table cell: '|' escaped, sentences joined. */
static void md_cell(FILE *f, const char *s)
{
    for (; *s; s++) {
        if (*s == '|')
            fputs("\\|", f);
        else if (s[0] == ' ' && s[1] == ' ')
            continue;
        else
            fputc(*s, f);
    }
}

/* README's row for option d. */
static void md_row(FILE *f, const cw_optdef_t *d)
{
    char buf[160];
    if (d->flags & CW_OPTF_NOFLAG)
        snprintf(buf, sizeof buf, "*(never a flag)*");
    else if (d->type == CW_T_BOOL)
        snprintf(buf, sizeof buf, "`--%s[=BOOL]`", d->name);
    else
        snprintf(buf, sizeof buf, "`--%s %s`", d->name, d->arg);
    fputs("| ", f);
    md_cell(f, buf);
    fprintf(f, " | `%s`", d->env);
    for (int k = 0; k < 2 && d->image[k]; k++)
        fprintf(f, "%s`%s`", k ? ", " : "; container: ", d->image[k]);
    fprintf(f, d->flags & CW_OPTF_NOFILE ? " | — |" : " | `%s` |", d->name);
    for (int k = 0; k < 3 && d->tac[k]; k++)
        fprintf(f, "%s`%s`", k ? ", " : " ", d->tac[k]);
    fprintf(f, "%s | ", d->tac[0] ? "" : " —");
    md_cell(f, d->def_doc ? d->def_doc : d->def ? d->def : "—");
    fputs(" | ", f);
    md_cell(f, d->doc);
    fputs(" |\n", f);
}

int cw_opts_doc(FILE *f, const char *format)
{
    bool man = format && strcmp(format, "man") == 0;
    if (!man && (format == NULL || strcmp(format, "markdown") != 0))
        return -EINVAL;
    if (!man)
        fprintf(f, "| Flag | Environment | File key | buildbot.tac | Default | Meaning |\n"
                   "|---|---|---|---|---|---|\n");
    for (int id = 0; id < CW_OPT__COUNT; id++) {
        if (man)
            man_entry(f, &cw_optdefs[id]);
        else
            md_row(f, &cw_optdefs[id]);
    }
    return 0;
}
