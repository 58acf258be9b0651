/* `cworker create-worker`: the stock script's command line, parsed into
 * flag-level options, and the new base directory with cworker.conf and
 * info/ files. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "options.h"
#include "config_internal.h"
#include "tac.h"

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
    if (py_int(&p, s + strlen(s), out, legacy) < 0 || *p || strchr(s, 'x') || strchr(s, 'b') ||
        strchr(s, 'X') || strchr(s, 'B') || strchr(s, '_'))
        return -1;
    return 0;
}

int cw_create_worker_parse(cw_create_t *cr, cw_opts_t *o, int argc, char **argv, char *err,
                           size_t errlen)
{
    memset(cr, 0, sizeof *cr);
    enum {
        P_NONE,
        P_KEEPALIVE,
        P_UMASK,
        P_MAXDELAY,
        P_MAXRETRIES,
        P_NUMCPUS,
        P_LOGSIZE,
        P_LOGCOUNT,
        P_ALLOW_SHUTDOWN,
        P_PROTOCOL,
        P_PROXY,
        P_ADMIN,
        P_HOST,
        F_FORCE,
        F_RELOC,
        F_NOLOGROTATE,
        F_USETLS,
        F_DELETE,
        F_QUIET,
        F_HELP,
    };
    static const struct {
        const char *lng;
        char shrt;
        int what;
    } opts[] = {
        {"keepalive", 'k', P_KEEPALIVE},
        {"umask", 0, P_UMASK},
        {"maxdelay", 0, P_MAXDELAY},
        {"maxretries", 0, P_MAXRETRIES},
        {"numcpus", 0, P_NUMCPUS},
        {"log-size", 's', P_LOGSIZE},
        {"log-count", 'l', P_LOGCOUNT},
        {"allow-shutdown", 'a', P_ALLOW_SHUTDOWN},
        {"protocol", 0, P_PROTOCOL},
        {"proxy-connection-string", 0, P_PROXY},
        {"admin", 0, P_ADMIN},
        {"host", 0, P_HOST},
        {"force", 'f', F_FORCE},
        {"relocatable", 'r', F_RELOC},
        {"no-logrotate", 'n', F_NOLOGROTATE},
        {"use-tls", 0, F_USETLS},
        {"delete-leftover-dirs", 0, F_DELETE},
        {"quiet", 'q', F_QUIET},
        {"help", 'h', F_HELP},
    };
    const size_t nopts = sizeof opts / sizeof opts[0];
    const char *pos[4];
    int npos = 0, rc = 0;
    bool only_pos = false;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (only_pos || a[0] != '-' || a[1] == '\0') {
            if (npos == 4) {
                rc = fail(err, errlen,
                          "create-worker: too many arguments ('%s'); usage: cworker "
                          "create-worker [options] BASEDIR MASTER NAME PASSWORD",
                          a);
                goto out;
            }
            pos[npos++] = a;
            continue;
        }
        if (strcmp(a, "--") == 0) {
            only_pos = true;
            continue;
        }
        /* --long[=value], -x [value], -xvalue, -fq */
        for (const char *sp = a + 1; *sp;) {
            int what = -1;
            const char *val = NULL;
            char optname[64];
            if (a[1] == '-') {
                const char *nm = a + 2, *eq = strchr(nm, '=');
                size_t nl = eq ? (size_t)(eq - nm) : strlen(nm);
                for (size_t k = 0; k < nopts; k++)
                    if (strlen(opts[k].lng) == nl && strncmp(opts[k].lng, nm, nl) == 0)
                        what = opts[k].what;
                snprintf(optname, sizeof optname, "--%.*s", (int)(nl > 40 ? 40 : nl), nm);
                val = eq ? eq + 1 : NULL;
                sp = nm + strlen(nm);
                if (what >= F_FORCE && val) {
                    rc = fail(err, errlen, "create-worker: %s takes no value", optname);
                    goto out;
                }
            } else {
                for (size_t k = 0; k < nopts; k++)
                    if (opts[k].shrt && opts[k].shrt == *sp)
                        what = opts[k].what;
                snprintf(optname, sizeof optname, "-%c", *sp);
                sp++;
                if (what >= 0 && what < F_FORCE && *sp) {
                    val = sp; /* -k600 */
                    sp += strlen(sp);
                }
            }
            if (what < 0) {
                rc = fail(err, errlen, "create-worker: unknown option '%s'", optname);
                goto out;
            }
            if (what < F_FORCE && val == NULL) {
                if (i + 1 >= argc) {
                    rc = fail(err, errlen, "create-worker: option '%s' needs a value", optname);
                    goto out;
                }
                val = argv[++i];
            }
            long long num = 0;
            bool legacy = false;
            int sn;
            char buf[64];
            switch (what) {
            case P_KEEPALIVE:
            case P_MAXDELAY:
            case P_LOGSIZE: {
                uint64_t u;
                if (parse_u64(val, &u) < 0) {
                    rc = fail(err, errlen, "create-worker: %s needs a number, not '%.60s'", optname,
                              val);
                    goto out;
                }
                if (what == P_LOGSIZE) {
                    snprintf(buf, sizeof buf, "%llu", (unsigned long long)u);
                    rc = set_val(o, CW_OPT_LOG_SIZE, buf, optname, CW_SRC_FLAG, err, errlen);
                    if (rc < 0)
                        goto out;
                } else {
                    add_note(o, xasprintf("%s is accepted and ignored: cworker's link liveness "
                                          "and reconnect delays are ping-interval, "
                                          "dead-timeout and backoff-max",
                                          optname));
                }
                break;
            }
            case P_LOGCOUNT:
            case P_NUMCPUS:
            case P_MAXRETRIES:
            case P_UMASK:
                sn = stock_number(val, &num, &legacy);
                if (sn < 0) {
                    rc = fail(err, errlen, "create-worker: %s needs a number or None, not '%.60s'",
                              optname, val);
                    goto out;
                }
                if ((what == P_NUMCPUS || what == P_LOGCOUNT) && (sn == 1 || num <= UINT32_MAX)) {
                    /* None: numcpus auto, log-count unlimited (the stock meanings) */
                    if (sn == 1)
                        snprintf(buf, sizeof buf, "%s", what == P_NUMCPUS ? "auto" : "none");
                    else
                        snprintf(buf, sizeof buf, "%lld", num);
                    rc = set_val(o, what == P_NUMCPUS ? CW_OPT_NUMCPUS : CW_OPT_LOG_COUNT, buf,
                                 optname, CW_SRC_FLAG, err, errlen);
                } else if (what == P_NUMCPUS || what == P_LOGCOUNT) {
                    rc = fail(err, errlen, "create-worker: %s '%.60s' is too large", optname, val);
                }
                if (rc < 0)
                    goto out;
                if (what == P_MAXRETRIES) {
                    if (sn == 0 && num > INT_MAX) {
                        rc = fail(err, errlen, "create-worker: %s '%.60s' is too large", optname,
                                  val);
                        goto out;
                    }
                    snprintf(buf, sizeof buf, "%lld", sn == 1 ? 0 : num);
                    rc = set_val(o, CW_OPT_MAX_RETRIES, buf, "--maxretries", CW_SRC_FLAG, err,
                                 errlen);
                }
                if (what == P_UMASK) {
                    if (sn == 0 && num > 0777) {
                        rc = fail(err, errlen, "create-worker: --umask '%.60s' is more than 0o777",
                                  val);
                        goto out;
                    }
                    if (sn == 0)
                        snprintf(buf, sizeof buf, "%03llo", num);
                    else
                        snprintf(buf, sizeof buf, "none");
                    if (legacy)
                        add_note(o, xasprintf("--umask %s read as octal (Python 3 would need "
                                              "0o%s)",
                                              val, val + 1));
                    rc = set_val(o, CW_OPT_UMASK, buf, "--umask", CW_SRC_FLAG, err, errlen);
                }
                if (rc < 0)
                    goto out;
                break;
            case P_ALLOW_SHUTDOWN:
                if (strcmp(val, "signal") != 0 && strcmp(val, "file") != 0) {
                    rc = fail(err, errlen,
                              "create-worker: allow-shutdown needs to be one of 'signal' or "
                              "'file'");
                    goto out;
                }
                add_note(o, xasprintf("%s is accepted and ignored (worker-initiated shutdown "
                                      "does not exist over msgpack; stop the service instead)",
                                      optname));
                break;
            case P_PROTOCOL:
                if (strcmp(val, "msgpack_experimental_v7") != 0) {
                    rc = fail(err, errlen,
                              "create-worker: --protocol '%.60s': cworker speaks only "
                              "msgpack_experimental_v7; enable it on the master with "
                              "c['protocols'] = {'msgpack_experimental_v7': {'port': PORT}} "
                              "(a port of its own if 'pb' stays on) and give that port in "
                              "MASTER",
                              val);
                    goto out;
                }
                break;
            case P_PROXY: {
                /* the stock script pastes it into the tac as Python: strip quotes */
                char *copy = strdup(val), *s = copy;
                size_t l = copy ? strlen(copy) : 0;
                if (copy == NULL) {
                    rc = oom(err, errlen);
                    goto out;
                }
                if (l >= 2 && (s[0] == '\'' || s[0] == '"') && s[l - 1] == s[0]) {
                    s[l - 1] = '\0';
                    s++;
                }
                char *host = NULL, *url = NULL, *hp = NULL;
                int port;
                bool tls;
                if (strcmp(s, "None") == 0) {
                    free(copy);
                    break;
                }
                if (twisted_endpoint(s, &host, &port, &tls) < 0 || tls) {
                    rc = fail(err, errlen,
                              "create-worker: --proxy-connection-string '%.80s' is not an "
                              "HTTP CONNECT proxy endpoint like tcp:host=PROXY:port=3128",
                              val);
                } else if ((hp = join_hostport(host, port)) == NULL ||
                           (url = xasprintf("http://%s", hp)) == NULL) {
                    rc = oom(err, errlen);
                } else {
                    rc = set_val(o, CW_OPT_PROXY, url, "--proxy-connection-string", CW_SRC_FLAG,
                                 err, errlen);
                }
                free(host);
                free(hp);
                free(url);
                free(copy);
                if (rc < 0)
                    goto out;
                break;
            }
            case P_ADMIN:
            case P_HOST: {
                char **dst = what == P_ADMIN ? &cr->admin : &cr->host;
                free(*dst);
                *dst = strdup(val);
                if (*dst == NULL) {
                    rc = oom(err, errlen);
                    goto out;
                }
                break;
            }
            case F_FORCE:
                cr->force = true;
                break;
            case F_RELOC:
                cr->relocatable = true;
                break;
            case F_NOLOGROTATE:
                break; /* cworker logs to stderr (the journal); nothing to rotate */
            case F_USETLS:
                rc = set_val(o, CW_OPT_USE_TLS, "true", "--use-tls", CW_SRC_FLAG, err, errlen);
                if (rc < 0)
                    goto out;
                break;
            case F_DELETE:
                rc = set_val(o, CW_OPT_DELETE_LEFTOVER_DIRS, "true", "--delete-leftover-dirs",
                             CW_SRC_FLAG, err, errlen);
                if (rc < 0)
                    goto out;
                break;
            case F_QUIET:
                cr->quiet = true;
                break;
            case F_HELP:
                o->action = CW_ACTION_HELP;
                rc = 0;
                goto out;
            default:
                break;
            }
            if (a[1] == '-')
                break;
        }
    }
    if (npos != 4) {
        rc = fail(err, errlen,
                  "create-worker: expected BASEDIR MASTER NAME PASSWORD (got %d argument%s)", npos,
                  npos == 1 ? "" : "s");
        goto out;
    }
    if (strncmp(pos[1], "http:", 5) == 0) {
        rc = fail(err, errlen, "create-worker: MASTER '%.80s' is not a URL - do not use URL",
                  pos[1]);
        goto out;
    }
    cr->basedir = strdup(pos[0]);
    if (cr->basedir == NULL) {
        rc = oom(err, errlen);
        goto out;
    }
    if ((rc = set_val(o, CW_OPT_MASTER, pos[1], "MASTER argument", CW_SRC_FLAG, err, errlen)) < 0 ||
        (rc = set_val(o, CW_OPT_NAME, pos[2], "NAME argument", CW_SRC_FLAG, err, errlen)) < 0 ||
        (rc = set_val(o, CW_OPT_PASSWORD, pos[3], "PASSWORD argument", CW_SRC_FLAG, err, errlen)) <
            0 ||
        (rc = set_val(o, CW_OPT_BASEDIR, cr->relocatable ? "." : pos[0], "BASEDIR argument",
                      CW_SRC_FLAG, err, errlen)) < 0)
        goto out;
    /* validate now, before anything is created */
    cw_config_t cfg;
    char *const noenv[] = {NULL};
    rc = cw_config_resolve(o, noenv, &cfg, err, errlen);
    if (rc == 0)
        cw_config_free(&cfg);
out:
    if (rc < 0)
        cw_create_free(cr);
    return rc;
}

/* Write a new file with contents unless it exists (the stock behaviour). */
static int create_info_file(const char *dir, const char *name, const char *text, bool quiet,
                            FILE *out, char *err, size_t errlen)
{
    char *p = xasprintf("%s/%s", dir, name);
    if (p == NULL)
        return oom(err, errlen);
    int fd = open(p, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) {
        int e = errno;
        free(p);
        return e == EEXIST ? 0
                           : fail(err, errlen, "could not write info/%s: %s", name, strerror(e));
    }
    size_t len = strlen(text);
    bool nl = len == 0 || text[len - 1] != '\n';
    bool ok = write(fd, text, len) == (ssize_t)len && (!nl || write(fd, "\n", 1) == 1);
    ok = (close(fd) == 0) && ok;
    free(p);
    if (!ok)
        return fail(err, errlen, "could not write info/%s: %s", name, strerror(errno));
    if (!quiet && out)
        fprintf(out, "Creating info/%s, you need to edit it appropriately.\n", name);
    return 0;
}

int cw_create_worker_run(const cw_create_t *cr, cw_opts_t *o, FILE *out, char *err, size_t errlen)
{
    FILE *msg = cr->quiet ? NULL : out;
    char *base = absolute(cr->basedir);
    char *conf = NULL, *info = NULL;
    cw_config_t cfg;
    memset(&cfg, 0, sizeof cfg);
    int rc = 0;
    if (base == NULL)
        return oom(err, errlen);
    size_t bl = strlen(base);
    while (bl > 1 && base[bl - 1] == '/')
        base[--bl] = '\0';
    conf = xasprintf("%s/cworker.conf", base);
    info = xasprintf("%s/info", base);
    if (conf == NULL || info == NULL) {
        rc = oom(err, errlen);
        goto out;
    }
    struct stat st;
    if (!cr->force && lstat(conf, &st) == 0) {
        rc = fail(err, errlen,
                  "create-worker: '%s' exists; add --force to replace it (info/ files are "
                  "kept)",
                  conf);
        goto out;
    }
    if (!cr->relocatable) {
        rc = set_val(o, CW_OPT_BASEDIR, base, "BASEDIR argument", CW_SRC_FLAG, err, errlen);
        if (rc < 0)
            goto out;
    }
    char *const noenv[] = {NULL};
    rc = cw_config_resolve(o, noenv, &cfg, err, errlen);
    if (rc < 0)
        goto out;
    if (stat(base, &st) == 0) {
        if (msg)
            fprintf(msg, "updating existing installation\n");
    } else {
        if (msg)
            fprintf(msg, "mkdir %s\n", base);
        if (mkdir(base, 0777) < 0) {
            rc = fail(err, errlen, "create-worker: error creating directory %s: %s", base,
                      strerror(errno));
            goto out;
        }
    }
    rc = cw_config_write(conf, &cfg, o, true, err, errlen);
    if (rc < 0)
        goto out;
    if (msg)
        fprintf(msg, "wrote %s (mode 0600)\n", conf);
    if (mkdir(info, 0777) == 0) {
        if (msg)
            fprintf(msg, "mkdir %s\n", info);
    } else if (errno != EEXIST) {
        rc = fail(err, errlen, "create-worker: error creating directory %s: %s", info,
                  strerror(errno));
        goto out;
    }
    rc = create_info_file(info, "admin",
                          cr->admin ? cr->admin : "Your Name Here <admin@youraddress.invalid>",
                          cr->quiet, msg, err, errlen);
    if (rc == 0)
        rc = create_info_file(
            info, "host", cr->host ? cr->host : "Please put a description of this build host here",
            cr->quiet, msg, err, errlen);
    if (rc < 0)
        goto out;
    if (msg) {
        for (size_t i = 0; i < o->nnotes; i++)
            fprintf(msg, "note: %s\n", o->notes[i]);
        fprintf(msg, "worker configured in %s\nrun it with: cworker --config %s\n", base, conf);
    }
out:
    cw_config_free(&cfg);
    free(base);
    free(conf);
    free(info);
    return rc;
}
