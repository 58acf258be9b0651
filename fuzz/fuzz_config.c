/* Fuzz target: the worker's option parsers (src/worker/options*.c, tac.c,
 * create_worker.c, config.c) -- config file, command line, environment
 * (CWORKER_* and the container image's variables), buildbot.tac,
 * create-worker's command line -- and validation.  No file is read or
 * written.
 *
 * Input: the first byte picks the parser, the rest (after one optional
 * '\n') is its input, so corpus files stay readable:
 *   'c' config file (mode 0600)      'C' config file (mode 0644)
 *   't' buildbot.tac (mode 0600)     'T' buildbot.tac (mode 0644)
 *   'a' command line: one word per line; "ENV:K=V" lines go to the
 *       environment instead
 *   'w' create-worker's command line (words as for 'a')
 * Whatever validates must print as a config file that reads back to the
 * same configuration; a difference aborts. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "options.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_WORDS 64

/* Abort unless two configurations are the same (the write/read-back check). */
static void same_config(const cw_config_t *a, const cw_config_t *b)
{
    bool ok = strcmp(a->master_host, b->master_host) == 0 && a->master_port == b->master_port &&
              strcmp(a->master_path, b->master_path) == 0 && a->use_tls == b->use_tls &&
              strcmp(a->name, b->name) == 0 && strcmp(a->basedir, b->basedir) == 0 &&
              a->backoff_cap == b->backoff_cap && a->ping_interval == b->ping_interval &&
              a->dead_timeout == b->dead_timeout && a->max_message == b->max_message &&
              a->max_commands == b->max_commands && a->kill_grace == b->kill_grace &&
              a->drain_timeout == b->drain_timeout && a->verbose == b->verbose &&
              a->umask == b->umask && a->log_format == b->log_format &&
              a->delete_leftover_dirs == b->delete_leftover_dirs &&
              a->max_retries == b->max_retries && a->protocol == b->protocol &&
              a->keepalive == b->keepalive && a->allow_shutdown == b->allow_shutdown;
    if (a->password_file)
        ok = ok && b->password_file && strcmp(a->password_file, b->password_file) == 0;
    else
        ok = ok && b->password && a->password && strcmp(a->password, b->password) == 0;
    static const size_t strs[] = {
        offsetof(cw_config_t, ca_file), offsetof(cw_config_t, client_cert),
        offsetof(cw_config_t, client_key), offsetof(cw_config_t, metrics_listen)};
    for (size_t k = 0; k < sizeof strs / sizeof strs[0]; k++) {
        const char *x = *(char *const *)((const char *)a + strs[k]);
        const char *y = *(char *const *)((const char *)b + strs[k]);
        ok = ok && ((x == NULL && y == NULL) || (x && y && strcmp(x, y) == 0));
    }
    if (!ok)
        abort();
}

/* Print cfg as a config file, read it back, compare. */
static void roundtrip(cw_opts_t *o, const cw_config_t *cfg)
{
    char *text = NULL, err[512];
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (f == NULL)
        return;
    cw_config_format(f, cfg, o, false);
    fclose(f);
    cw_opts_t o2;
    cw_config_t c2;
    char *noenv[] = {NULL};
    cw_opts_init(&o2);
    if (cw_opts_parse_conf(&o2, text, len, "fuzz.conf", 0600, err, sizeof err) < 0 ||
        cw_config_resolve(&o2, noenv, &c2, err, sizeof err) < 0)
        abort(); /* what we write must read back */
    same_config(cfg, &c2);
    if (o->v[CW_OPT_PROXY].src != CW_SRC_DEFAULT &&
        !((cfg->proxy == NULL && c2.proxy == NULL) ||
          (cfg->proxy && c2.proxy && strcmp(cfg->proxy, c2.proxy) == 0)))
        abort();
    cw_config_free(&c2);
    cw_opts_free(&o2);
    free(text);

    /* the report format too, into nowhere */
    f = open_memstream(&text, &len);
    if (f) {
        cw_config_format(f, cfg, o, true);
        fclose(f);
        free(text);
    }
    /* the protocol rules: a URL is msgpack, pb never has a proxy */
    if ((cfg->protocol == CW_PROTO_PB && (cfg->proxy || o->v[CW_OPT_MASTER].value == NULL ||
                                          strstr(o->v[CW_OPT_MASTER].value, "ws://") ||
                                          strstr(o->v[CW_OPT_MASTER].value, "wss://"))))
        abort();
    /* the helpers the worker calls on what we produced must accept it */
    if (cfg->proxy) {
        cw_proxy_t p;
        if (cw_proxy_parse(cfg->proxy, &p) < 0)
            abort();
        cw_proxy_free(&p);
    }
    if (cfg->metrics_listen) {
        char *h;
        int port;
        if (cw_hostport_parse(cfg->metrics_listen, &h, &port) < 0)
            abort();
        free(h);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 65536)
        return 0;
    char sel = (char)data[0];
    const char *in = (const char *)data + 1;
    size_t len = size - 1;
    if (len && in[0] == '\n') {
        in++;
        len--;
    }
    char err[1024];
    cw_opts_t o;
    cw_opts_init(&o);
    /* a fixed environment with proxies, plus whatever the input adds */
    char *envp[MAX_WORDS + 8] = {
        "http_proxy=http://proxy.corp:3128", "HTTPS_PROXY=http://u%40x:p@[2001:db8::1]:8443/",
        "no_proxy=localhost,.internal,10.0.0.0/8,[::1]:9989", "CWORKER_BIN=/ignored", NULL};
    int nenv = 4;
    char *copy = NULL;
    char *words[MAX_WORDS + 1];
    int nwords = 0;
    int rc = 0;

    if (sel == 'a' || sel == 'w') {
        copy = malloc(len + 1);
        if (copy == NULL)
            return 0;
        memcpy(copy, in, len);
        copy[len] = '\0';
        words[nwords++] = "cworker";
        if (sel == 'w')
            words[nwords++] = "create-worker";
        /* words are separated by '\n' or NUL */
        char *p = copy, *end = copy + len;
        while (p <= end && nwords < MAX_WORDS) {
            char *q = p;
            while (q < end && *q != '\n' && *q != '\0')
                q++;
            *q = '\0';
            if (q - p >= 4 && memcmp(p, "ENV:", 4) == 0 && nenv < MAX_WORDS + 6)
                envp[nenv++] = p + 4;
            else if (q > p || p < end)
                words[nwords++] = p;
            p = q + 1;
        }
        envp[nenv] = NULL;
        words[nwords] = NULL;
        rc = cw_opts_parse_argv(&o, nwords, words, err, sizeof err);
        if (rc == 0 && o.action == CW_ACTION_CREATE) {
            cw_create_t cr;
            if (cw_create_worker_parse(&cr, &o, o.create_argc, o.create_argv, err, sizeof err) == 0)
                cw_create_free(&cr);
            goto out;
        }
        if (rc == 0)
            rc = cw_opts_parse_env(&o, envp, err, sizeof err);
    } else if (sel == 'c' || sel == 'C') {
        rc =
            cw_opts_parse_conf(&o, in, len, "fuzz.conf", sel == 'c' ? 0600 : 0644, err, sizeof err);
    } else if (sel == 't' || sel == 'T') {
        rc = cw_opts_parse_tac(&o, in, len, "buildbot.tac", sel == 't' ? 0600 : 0644, err,
                               sizeof err);
    } else {
        goto out;
    }
    if (rc == 0) {
        cw_config_t cfg;
        if (cw_config_resolve(&o, envp, &cfg, err, sizeof err) == 0) {
            roundtrip(&o, &cfg);
            cw_config_free(&cfg);
        }
    }
out:
    cw_opts_free(&o);
    free(copy);
    return 0;
}
