/* From option values to the cw_config_t the daemon runs with: loading the
 * config file and the tac, the container image's defaults, validation of
 * every value through the table, the rules that involve several options,
 * and the file-system checks of cw_config_finish. */
#include "options.h"
#include "optutil.h"
#include "options_table.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cw_config.h"

/* ------------------------------------------------------------------------ */
/* Reading the files                                                        */
/* ------------------------------------------------------------------------ */

typedef int (*file_parser_t)(cw_opts_t *o, const char *text, size_t len, const char *path,
                             unsigned mode, char *err, size_t errlen);

/* Read the file option id names, if any, and give it to parse. */
static int load_file(cw_opts_t *o, cw_opt_id_t id, const char *what, file_parser_t parse, char *err,
                     size_t errlen)
{
    const cw_optval_t *v = &o->v[id];
    if (v->value == NULL || v->value[0] == '\0')
        return 0;
    char *path = strdup(v->value), *text = NULL;
    size_t len = 0;
    unsigned mode = 0;
    if (path == NULL)
        return cw_opt_oom(err, errlen);
    int rc = cw_opt_read_file(path, what, v->where, &text, &len, &mode, err, errlen);
    if (rc == 0)
        rc = parse(o, text, len, path, mode, err, errlen);
    if (text)
        explicit_bzero(text, len);
    free(text);
    free(path);
    return rc;
}

int cw_opts_load_files(cw_opts_t *o, char *err, size_t errlen)
{
    int rc = load_file(o, CW_OPT_CONFIG, "config file", cw_opts_parse_conf, err, errlen);
    return rc < 0 ? rc
                  : load_file(o, CW_OPT_FROM_TAC, "buildbot.tac", cw_opts_parse_tac, err, errlen);
}

/* ------------------------------------------------------------------------ */
/* Messages                                                                 */
/* ------------------------------------------------------------------------ */

/* "--master 'x'", "CWORKER_MASTER='x' (environment)", "FILE:3: master 'x'":
 * the option and its source, for error messages; secrets never shown. */
static void label(char *buf, size_t cap, cw_opt_id_t id, const cw_optval_t *v)
{
    char val[128];
    const char *name = cw_optdefs[id].name, *where = v->where ? v->where : "?";
    bool secret = cw_optdefs[id].type == CW_T_SECRET;
    cw_opt_show(val, sizeof val, v->value);
    switch (v->src) {
    case CW_SRC_FLAG: /* where is "--NAME", or "NAME argument" for create-worker */
        snprintf(buf, cap, secret ? "%s" : "%s '%s'", where, val);
        break;
    case CW_SRC_ENV:
        snprintf(buf, cap, secret ? "%s (environment)" : "%s='%s' (environment)", where, val);
        break;
    default:
        snprintf(buf, cap, secret ? "%s: %s" : "%s: %s '%s'", where, name, val);
        break;
    }
}

/* Error about one option's value: "<label>: <reason>". */
static int bad_value(char *err, size_t errlen, const cw_opts_t *o, cw_opt_id_t id, const char *fmt,
                     ...) __attribute__((format(printf, 5, 6)));
static int bad_value(char *err, size_t errlen, const cw_opts_t *o, cw_opt_id_t id, const char *fmt,
                     ...)
{
    char lab[320], why[768];
    label(lab, sizeof lab, id, &o->v[id]);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    return cw_opt_fail(err, errlen, "%s: %s", lab, why);
}

/* ------------------------------------------------------------------------ */
/* Validation                                                               */
/* ------------------------------------------------------------------------ */

void cw_config_free(cw_config_t *cfg)
{
    for (int id = 0; id < CW_OPT__COUNT; id++) {
        const cw_optdef_t *d = &cw_optdefs[id];
        char **s = (char **)((char *)cfg + d->off);
        if (d->ctype != CW_C_STR || *s == NULL)
            continue;
        explicit_bzero(*s, strlen(*s)); /* the password, among others */
        free(*s);
    }
    free(cfg->master_host);
    free(cfg->master_path);
    free(cfg->relay_host);
    memset(cfg, 0, sizeof *cfg);
}

/* Is the master value a ws:// or wss:// URL, which always means msgpack? */
static bool master_is_url(const char *m)
{
    return m && (strncmp(m, "ws://", 5) == 0 || strncmp(m, "wss://", 6) == 0);
}

/* The container image's defaults (localhost, 9989, docker, /buildbot, pb)
 * for what no source set, when one of its variables was set and no other
 * source configures the master: then cworker runs as the image's worker.
 * (Its master is always HOST:PORT, so its pb never meets a ws:// URL.) */
static int apply_container(cw_opts_t *o, char *err, size_t errlen)
{
    if (!o->container_env || o->v[CW_OPT_MASTER].src > CW_SRC_CONTAINER)
        return 0;
    for (int id = 0; id < CW_OPT__COUNT; id++) {
        const cw_optdef_t *d = &cw_optdefs[id];
        if (d->image_def[0] == NULL || o->v[id].src != CW_SRC_DEFAULT)
            continue;
        char where[128], *val;
        snprintf(where, sizeof where, "the container image's default (no %s)", d->image[0]);
        if (id == CW_OPT_MASTER)
            val = cw_opt_asprintf("%s:%s", d->image_def[0], d->image_def[1]);
        else
            val = strdup(d->image_def[0]);
        int rc = val ? cw_opts_set(o, id, val, where, CW_SRC_CONTAINER, err, errlen)
                     : cw_opt_oom(err, errlen);
        free(val);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* The protocol a value names (its canonical name), or NULL for rubbish. */
static const char *protocol_name(const char *v)
{
    if (v && strcmp(v, "pb") == 0)
        return "pb";
    if (v && (strcmp(v, "msgpack_experimental_v7") == 0 || strcmp(v, "msgpack") == 0))
        return "msgpack_experimental_v7";
    return NULL;
}

/* A protocol from a source of lower precedence than the master's address
 * (a tac's, a config file's or the container's, with --master) was about
 * another port: drop it, so the master's address decides (msgpack for a
 * ws:// URL, else the default pb).  A note only when that changes the
 * protocol: a tac's pb dropped for a --master HOST:PORT is still pb. */
static void drop_foreign_protocol(cw_opts_t *o)
{
    const cw_optval_t *p = &o->v[CW_OPT_PROTOCOL], *m = &o->v[CW_OPT_MASTER];
    if (p->src == CW_SRC_DEFAULT || p->src >= m->src)
        return;
    bool url = master_is_url(m->value);
    const char *was = protocol_name(p->value);
    const char *now = url ? "msgpack_experimental_v7" : cw_optdefs[CW_OPT_PROTOCOL].def;
    char shown[64];
    cw_opt_show(shown, sizeof shown, p->value);
    if (p->value && (was == NULL || strcmp(was, now) != 0))
        cw_opts_note(o, url ? cw_opt_asprintf("%s: protocol '%s' ignored: the master's address "
                                              "comes from %s, which outranks it, and is a ws:// "
                                              "or wss:// URL: the protocol is %s",
                                              p->where, shown, m->where, now)
                            : cw_opt_asprintf("%s: protocol '%s' ignored: the master's address "
                                              "comes from %s, which outranks it, so the default "
                                              "%s applies; set the protocol next to the master "
                                              "to keep '%s'",
                                              p->where, shown, m->where, now, shown));
    cw_opts_unset(o, CW_OPT_PROTOCOL);
}

/* Every option's default, through its own parser. */
static int apply_defaults(cw_config_t *cfg, char *err, size_t errlen)
{
    for (int id = 0; id < CW_OPT__COUNT; id++) {
        const char *why;
        const char *def = cw_optdefs[id].def;
        int rc = def ? cw_opt_parse(id, def, cfg, &why) : 0;
        if (rc == -1)
            return cw_opt_fail(err, errlen, "%s: the default '%s' does not parse: %s",
                               cw_optdefs[id].name, def, why);
        if (rc < 0)
            return cw_opt_oom(err, errlen);
    }
    return 0;
}

/* Values a source had but cworker cannot use, and required options unset. */
static int check_sources(const cw_opts_t *o, char *err, size_t errlen)
{
    for (int id = 0; id < CW_OPT__COUNT; id++)
        if (o->v[id].bad)
            return cw_opt_fail(err, errlen, "%s: %s", o->v[id].where, o->v[id].bad);
    for (int id = 0; id < CW_OPT__COUNT; id++) {
        const cw_optdef_t *d = &cw_optdefs[id];
        if (!(d->flags & CW_OPTF_REQUIRED) || o->v[id].value)
            continue;
        return cw_opt_fail(err, errlen,
                           "no %s: --%s %s is required (or %s, or %s = ... in the config "
                           "file%s%s)",
                           d->what, d->name, d->arg, d->env, d->name,
                           d->image[0] ? ", or in a container " : "",
                           d->image[0] ? d->image[0] : "");
    }
    return 0;
}

/* Parse option id's value into cfg; a bad one is an error naming its source. */
static int convert(const cw_opts_t *o, cw_opt_id_t id, cw_config_t *cfg, char *err, size_t errlen)
{
    const char *why = NULL;
    int rc = cw_opt_parse(id, o->v[id].value, cfg, &why);
    if (rc == -1)
        return bad_value(err, errlen, o, id, "%s", why ? why : "not a value it takes");
    return rc < 0 ? cw_opt_oom(err, errlen) : 0;
}

/* A ws:// or wss:// master is a msgpack port: it implies msgpack, and a pb
 * that some source gave is an error naming both. */
static int resolve_protocol(const cw_opts_t *o, cw_config_t *cfg, char *err, size_t errlen)
{
    const cw_optval_t *m = &o->v[CW_OPT_MASTER];
    if (!master_is_url(m->value))
        return 0;
    if (o->v[CW_OPT_PROTOCOL].src != CW_SRC_DEFAULT && cfg->protocol == CW_PROTO_PB) {
        char lab[320];
        label(lab, sizeof lab, CW_OPT_MASTER, m);
        return bad_value(err, errlen, o, CW_OPT_PROTOCOL,
                         "conflicts with the master URL (%s): a ws:// or wss:// URL is a msgpack "
                         "port; for PB give the master's pb port as HOST:PORT (with use-tls for "
                         "TLS), or drop the protocol",
                         lab);
    }
    cfg->protocol = CW_PROTO_MSGPACK;
    return 0;
}

/* use-tls: also a wss:// master; never with an explicit ws://. */
static int resolve_tls(const cw_opts_t *o, cw_config_t *cfg, char *err, size_t errlen)
{
    const char *m = o->v[CW_OPT_MASTER].value;
    bool set = o->v[CW_OPT_USE_TLS].value != NULL;
    if (set && cfg->use_tls && strncmp(m, "ws://", 5) == 0)
        return bad_value(err, errlen, o, CW_OPT_USE_TLS,
                         "conflicts with the ws:// master URL (use wss://)");
    cfg->use_tls = cfg->use_tls || strncmp(m, "wss://", 6) == 0;
    if (cfg->use_tls && !CW_HAVE_TLS)
        return bad_value(err, errlen, o, set ? CW_OPT_USE_TLS : CW_OPT_MASTER,
                         "TLS (wss://) is not supported by this build (built without OpenSSL)");
    return 0;
}

/* The password: the source of highest precedence, value or file. */
static int resolve_password(const cw_opts_t *o, cw_config_t *cfg, char *err, size_t errlen)
{
    const cw_optval_t *pw = &o->v[CW_OPT_PASSWORD], *pf = &o->v[CW_OPT_PASSWORD_FILE];
    if (pw->value && pf->value && pw->src == pf->src)
        return cw_opt_fail(err, errlen,
                           "both password (%s) and password-file (%s) are set; keep one", pw->where,
                           pf->where);
    if (pf->value && (!pw->value || pf->src > pw->src))
        return convert(o, CW_OPT_PASSWORD_FILE, cfg, err, errlen);
    if (pw->value)
        return convert(o, CW_OPT_PASSWORD, cfg, err, errlen);
    return cw_opt_fail(err, errlen,
                       "no password: use --password-file FILE, CWORKER_PASSWORD, or "
                       "password-file / password = ... in a config file only its owner can read "
                       "(in a container %s)",
                       cw_optdefs[CW_OPT_PASSWORD].image[0]);
}

/* Options that only matter with another one: notes; client-cert and
 * client-key go together. */
static int resolve_dependents(cw_opts_t *o, cw_config_t *cfg, char *err, size_t errlen)
{
    bool tac_noted = false;
    for (int id = 0; id < CW_OPT__COUNT; id++) {
        const cw_optdef_t *d = &cw_optdefs[id];
        const cw_optval_t *v = &o->v[id];
        if ((d->flags & CW_OPTF_TLS) && !cfg->use_tls && !(cfg->relay && cfg->relay_tls) &&
            *(char **)((char *)cfg + d->off))
            cw_opts_note(o, cw_opt_asprintf("%s: %s is only used with a wss:// master (or "
                                            "use-tls), or with relay-tls",
                                            v->where, d->name));
        if (!(d->flags & CW_OPTF_LOGFILE) || cfg->log_file || v->value == NULL)
            continue;
        if (v->src != CW_SRC_TAC)
            cw_opts_note(o, cw_opt_asprintf("%s: %s only applies with log-file (logging to "
                                            "stderr)",
                                            v->where, d->name));
        else if (!tac_noted && (tac_noted = true))
            cw_opts_note(o, cw_opt_asprintf("%s: log rotation settings kept, but cworker logs "
                                            "to stderr unless log-file is set (the stock worker "
                                            "wrote BASEDIR/twistd.log: --log-file "
                                            "BASEDIR/twistd.log)",
                                            v->where));
    }
    /* keepalive is PB's; one given for msgpack (not a tac's stock 600) does nothing */
    const cw_optval_t *ka = &o->v[CW_OPT_KEEPALIVE];
    uint64_t ka_def = strtoull(cw_optdefs[CW_OPT_KEEPALIVE].def, NULL, 10) * 1000;
    if (cfg->protocol == CW_PROTO_MSGPACK && ka->value &&
        (ka->src > CW_SRC_TAC || cfg->keepalive != ka_def))
        cw_opts_note(o, cw_opt_asprintf("%s: keepalive has no effect over msgpack (WebSocket "
                                        "pings keep the link alive: ping-interval)",
                                        ka->where));
    if (cfg->relay_tls && !cfg->relay && o->v[CW_OPT_RELAY_TLS].value)
        cw_opts_note(o, cw_opt_asprintf("%s: relay-tls is only used with relay",
                                        o->v[CW_OPT_RELAY_TLS].where));
    if (cfg->relay && cfg->relay_tls && !CW_HAVE_TLS)
        return bad_value(err, errlen, o, CW_OPT_RELAY_TLS,
                         "TLS is not supported by this build (built without OpenSSL)");
    if ((cfg->client_cert == NULL) != (cfg->client_key == NULL))
        return bad_value(err, errlen, o, cfg->client_cert ? CW_OPT_CLIENT_CERT : CW_OPT_CLIENT_KEY,
                         "client-cert and client-key go together");
    return 0;
}

/* First non-empty variable among names in envp; *which gets its name. */
static const char *env_get(char *const *envp, const char *const *names, const char **which)
{
    for (; *names; names++) {
        const char *v = cw_opt_getenv(envp, *names);
        if (v) {
            *which = *names;
            return v;
        }
    }
    return NULL;
}

/* msgpack: a proxy option, else the environment's proxy for the master, if
 * any.  PB: no proxy (the stock PB worker ignores the variables too); a
 * proxy option other than none is an error. */
static int resolve_proxy(cw_opts_t *o, char *const *envp, cw_config_t *cfg, char *err,
                         size_t errlen)
{
    free(o->proxy_env);
    o->proxy_env = NULL;
    if (cfg->relay && cfg->proxy)
        return cw_opt_fail(err, errlen,
                           "%s: an HTTP proxy cannot be used with a relay (%s); set proxy = "
                           "none (--proxy none), or relay = none",
                           o->v[CW_OPT_PROXY].where, o->v[CW_OPT_RELAY].where);
    if (cfg->relay) {
        o->proxy_from = o->v[CW_OPT_PROXY].value
                            ? NULL
                            : "default: through the relay, proxy variables not used";
        return 0;
    }
    if (cfg->protocol == CW_PROTO_PB && cfg->proxy) {
        /* (not the value: it may hold the proxy's password) */
        const cw_optval_t *p = &o->v[CW_OPT_PROTOCOL];
        return cw_opt_fail(err, errlen,
                           "%s: an HTTP proxy is supported over msgpack only, and the protocol "
                           "is pb (%s); set proxy = none (--proxy none), or use the master's "
                           "msgpack port with --protocol msgpack",
                           o->v[CW_OPT_PROXY].where,
                           p->src == CW_SRC_DEFAULT ? "the default" : p->where);
    }
    if (cfg->protocol == CW_PROTO_PB) {
        o->proxy_from =
            o->v[CW_OPT_PROXY].value ? NULL : "default: protocol pb, proxy variables not used";
        return 0;
    }
    if (o->v[CW_OPT_PROXY].value) {
        o->proxy_from = NULL; /* the option's own source */
        return 0;
    }
    static const char *const https_names[] = {"https_proxy", "HTTPS_PROXY", NULL};
    static const char *const http_names[] = {"http_proxy", "HTTP_PROXY", NULL};
    static const char *const no_names[] = {"no_proxy", "NO_PROXY", NULL};
    const char *which = NULL, *nwhich = NULL;
    const char *val = env_get(envp, cfg->use_tls ? https_names : http_names, &which);
    if (val == NULL) {
        o->proxy_from = "default: no proxy variable in the environment";
        return 0;
    }
    const char *np = env_get(envp, no_names, &nwhich);
    if (np && cw_no_proxy_match(np, cfg->master_host, cfg->master_port)) {
        o->proxy_from = "no_proxy/NO_PROXY covers the master";
        return 0;
    }
    o->proxy_env = strdup(which);
    o->proxy_from = "environment";
    cfg->proxy = strncasecmp(val, "https://", 8) == 0 ? NULL : cw_proxy_normalise(val);
    if (cfg->proxy == NULL) {
        char shown[128];
        cw_opt_show(shown, sizeof shown, val);
        return cw_opt_fail(err, errlen,
                           "%s='%s' (environment): cworker can only use an HTTP proxy "
                           "http://HOST:PORT; set proxy = none (or --proxy none, "
                           "CWORKER_PROXY=none) to connect directly",
                           which, shown);
    }
    return 0;
}

/* Every value that some source set, except the password's (resolve_password). */
static int convert_all(const cw_opts_t *o, cw_config_t *cfg, char *err, size_t errlen)
{
    for (int id = 0; id < CW_OPT__COUNT; id++) {
        if (o->v[id].value == NULL || id == CW_OPT_PASSWORD || id == CW_OPT_PASSWORD_FILE)
            continue;
        int rc = convert(o, id, cfg, err, errlen);
        if (rc < 0)
            return rc;
    }
    return 0;
}

int cw_config_resolve(cw_opts_t *o, char *const *envp, cw_config_t *cfg, char *err, size_t errlen)
{
    memset(cfg, 0, sizeof *cfg);
    int rc = apply_container(o, err, errlen);
    drop_foreign_protocol(o);
    if (rc == 0)
        rc = apply_defaults(cfg, err, errlen);
    if (rc == 0)
        rc = check_sources(o, err, errlen);
    if (rc == 0)
        rc = convert_all(o, cfg, err, errlen);
    if (rc == 0)
        rc = resolve_protocol(o, cfg, err, errlen);
    if (rc == 0)
        rc = resolve_tls(o, cfg, err, errlen);
    if (rc == 0)
        rc = resolve_password(o, cfg, err, errlen);
    if (rc == 0)
        rc = resolve_dependents(o, cfg, err, errlen);
    if (rc == 0)
        rc = resolve_proxy(o, envp, cfg, err, errlen);
    if (rc < 0)
        cw_config_free(cfg);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* File-system checks                                                       */
/* ------------------------------------------------------------------------ */

/* Where option id's value came from, for messages ("" when unknown). */
static const char *where_of(const cw_opts_t *o, cw_opt_id_t id)
{
    return o->v[id].where ? o->v[id].where : "";
}

/* Make the string field *path absolute; 0 or -ENOMEM. */
static int make_absolute(char **path, char *err, size_t errlen)
{
    char *abs = cw_opt_absolute(*path);
    if (abs == NULL)
        return cw_opt_oom(err, errlen);
    free(*path);
    *path = abs;
    return 0;
}

/* Read the password: the first line of the file, without its line end. */
static int finish_password(cw_config_t *cfg, const cw_opts_t *o, char *err, size_t errlen)
{
    const char *where = where_of(o, CW_OPT_PASSWORD_FILE);
    char *text = NULL;
    size_t len = 0;
    unsigned mode;
    int rc = make_absolute(&cfg->password_file, err, errlen);
    if (rc == 0)
        rc = cw_opt_read_file(cfg->password_file, "password file", where, &text, &len, &mode, err,
                              errlen);
    if (rc < 0)
        return rc;
    text[strcspn(text, "\r\n")] = '\0';
    if (text[0] == '\0') {
        explicit_bzero(text, len);
        free(text);
        return cw_opt_fail(err, errlen, "password file '%s' (%s): the first line is empty",
                           cfg->password_file, where);
    }
    if (cfg->password) {
        explicit_bzero(cfg->password, strlen(cfg->password));
        free(cfg->password);
    }
    cfg->password = text;
    return 0;
}

/* The TLS files (rows flagged CW_OPTF_TLS): absolute, readable regular files. */
static int finish_tls_files(cw_config_t *cfg, const cw_opts_t *o, char *err, size_t errlen)
{
    for (int id = 0; id < CW_OPT__COUNT; id++) {
        char **f = (char **)((char *)cfg + cw_optdefs[id].off);
        if (!(cw_optdefs[id].flags & CW_OPTF_TLS) || *f == NULL)
            continue;
        int rc = make_absolute(f, err, errlen);
        if (rc < 0)
            return rc;
        int fd = open(*f, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
        struct stat st;
        int e = fd < 0 ? errno : fstat(fd, &st) < 0 ? errno : S_ISREG(st.st_mode) ? 0 : -1;
        if (fd >= 0)
            close(fd);
        if (e != 0)
            return cw_opt_fail(err, errlen, "%s '%s' (%s): %s", cw_optdefs[id].name, *f,
                               where_of(o, id), e < 0 ? "not a regular file" : strerror(e));
    }
    return 0;
}

/* Make the log file absolute (the worker later enters its basedir) and check
 * that it can be appended to, or created, without creating it. */
static int check_log_file(cw_config_t *cfg, const cw_opts_t *o, char *err, size_t errlen)
{
    const char *where = where_of(o, CW_OPT_LOG_FILE);
    int rc = make_absolute(&cfg->log_file, err, errlen);
    const char *abs = cfg->log_file;
    struct stat st;
    if (rc < 0)
        return rc;
    if (stat(abs, &st) == 0) {
        if (S_ISDIR(st.st_mode))
            return cw_opt_fail(err, errlen, "log-file '%s' (%s): is a directory", abs, where);
        if (!S_ISREG(st.st_mode) && !S_ISCHR(st.st_mode))
            return cw_opt_fail(err, errlen, "log-file '%s' (%s): not a regular file", abs, where);
        if (access(abs, W_OK) < 0)
            return cw_opt_fail(err, errlen, "log-file '%s' (%s): not writable: %s", abs, where,
                               strerror(errno));
        return 0;
    }
    if (errno != ENOENT)
        return cw_opt_fail(err, errlen, "log-file '%s' (%s): %s", abs, where, strerror(errno));
    char *parent = NULL;
    int e = 0;
    rc = cw_opt_parent_dir(abs, &parent, &e);
    if (rc == CW_OPT_NO_PARENT)
        rc = cw_opt_fail(err, errlen, "log-file '%s' (%s): its directory '%s' does not exist", abs,
                         where, parent);
    else if (rc == CW_OPT_PARENT_DENIED)
        rc = cw_opt_fail(err, errlen, "log-file '%s' (%s) cannot be created in '%s': %s", abs,
                         where, parent, strerror(e));
    else if (rc < 0)
        rc = cw_opt_oom(err, errlen);
    free(parent);
    return rc;
}

/* Replace the basedir by its real path (symbolic links resolved), if any. */
static int use_realpath(cw_config_t *cfg, char *err, size_t errlen)
{
    char real[PATH_MAX];
    if (realpath(cfg->basedir, real) == NULL)
        return 0;
    char *r = strdup(real);
    if (r == NULL)
        return cw_opt_oom(err, errlen);
    free(cfg->basedir);
    cfg->basedir = r;
    return 0;
}

/* Run mode: create the basedir (one level) and check it is a directory. */
static int create_basedir(cw_config_t *cfg, const char *bw, char *err, size_t errlen)
{
    const char *abs = cfg->basedir;
    struct stat st;
    if (mkdir(abs, 0777) < 0 && errno != EEXIST)
        return cw_opt_fail(err, errlen, "cannot create basedir '%s' (%s): %s", abs, bw,
                           strerror(errno));
    char real[PATH_MAX];
    if (realpath(abs, real) == NULL)
        return cw_opt_fail(err, errlen, "basedir '%s' (%s): %s", abs, bw, strerror(errno));
    if (stat(real, &st) < 0 || !S_ISDIR(st.st_mode))
        return cw_opt_fail(err, errlen, "basedir '%s' (%s): not a directory", abs, bw);
    return use_realpath(cfg, err, errlen);
}

/* Check mode: the basedir exists and is writable, or could be created. */
static int check_basedir(cw_config_t *cfg, const char *bw, char *err, size_t errlen)
{
    const char *abs = cfg->basedir;
    struct stat st;
    if (stat(abs, &st) == 0) {
        if (!S_ISDIR(st.st_mode))
            return cw_opt_fail(err, errlen, "basedir '%s' (%s): not a directory", abs, bw);
        if (access(abs, W_OK | X_OK) < 0)
            return cw_opt_fail(err, errlen, "basedir '%s' (%s): not writable: %s", abs, bw,
                               strerror(errno));
        return use_realpath(cfg, err, errlen);
    }
    if (errno != ENOENT)
        return cw_opt_fail(err, errlen, "basedir '%s' (%s): %s", abs, bw, strerror(errno));
    /* it would be created (one level): the parent must be a writable directory */
    char *parent = NULL;
    int e = 0, rc = cw_opt_parent_dir(abs, &parent, &e);
    if (rc == CW_OPT_NO_PARENT)
        rc = cw_opt_fail(err, errlen,
                         "basedir '%s' (%s) cannot be created: its parent '%s' is not a "
                         "directory%s",
                         abs, bw, parent, e == ENOENT ? " (it does not exist)" : "");
    else if (rc == CW_OPT_PARENT_DENIED)
        rc = cw_opt_fail(err, errlen, "basedir '%s' (%s) cannot be created in '%s': %s", abs, bw,
                         parent, strerror(e));
    else if (rc < 0)
        rc = cw_opt_oom(err, errlen);
    free(parent);
    return rc;
}

int cw_config_finish(cw_config_t *cfg, const cw_opts_t *o, bool create, char *err, size_t errlen)
{
    int rc = 0;
    if (cfg->password_file)
        rc = finish_password(cfg, o, err, errlen);
    if (rc == 0)
        rc = finish_tls_files(cfg, o, err, errlen);
    if (rc == 0 && cfg->log_file)
        rc = check_log_file(cfg, o, err, errlen);
    if (rc == 0)
        rc = make_absolute(&cfg->basedir, err, errlen);
    if (rc < 0)
        return rc;
    const char *bw = where_of(o, CW_OPT_BASEDIR);
    return create ? create_basedir(cfg, bw, err, errlen) : check_basedir(cfg, bw, err, errlen);
}
