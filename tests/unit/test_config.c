/* Unit tests for the worker's configuration (config.c): the config-file,
 * command-line, environment and buildbot.tac parsers, precedence, the
 * password rules, proxies, the written config reading back the same,
 * create-worker; and the sd_notify client (notify.c) against a real
 * AF_UNIX datagram socket. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "options.h"
#include "notify.h"

/* ------------------------------------------------------------------------ */
/* Helpers                                                                  */
/* ------------------------------------------------------------------------ */

typedef struct setup {
    const char *const *argv; /* words after argv[0], NULL-terminated (or NULL) */
    const char *const *env;  /* "K=V", NULL-terminated (or NULL) */
    const char *conf;        /* config-file text, or NULL */
    unsigned conf_mode;
    const char *tac; /* buildbot.tac text, or NULL */
    unsigned tac_mode;
} setup_t;

/* Run every pure stage; 0 or the failing stage's code (err explains). */
static int load(const setup_t *s, cw_opts_t *o, cw_config_t *cfg, char *err, size_t errlen)
{
    char *argv[32] = {"cworker"};
    int argc = 1;
    for (const char *const *a = s->argv; a && *a; a++)
        argv[argc++] = (char *)*a;
    cw_opts_init(o);
    memset(cfg, 0, sizeof *cfg);
    err[0] = '\0';
    int rc = cw_opts_parse_argv(o, argc, argv, err, errlen);
    if (rc == 0)
        rc = cw_opts_parse_env(o, (char *const *)s->env, err, errlen);
    if (rc == 0 && s->conf)
        rc = cw_opts_parse_conf(o, s->conf, strlen(s->conf), "/etc/cworker/w.conf",
                                s->conf_mode ? s->conf_mode : 0600, err, errlen);
    if (rc == 0 && s->tac)
        rc = cw_opts_parse_tac(o, s->tac, strlen(s->tac), "/srv/bb/w1/buildbot.tac",
                               s->tac_mode ? s->tac_mode : 0600, err, errlen);
    if (rc == 0)
        rc = cw_config_resolve(o, (char *const *)s->env, cfg, err, errlen);
    return rc;
}

/* load() that must succeed. */
static void load_ok(const setup_t *s, cw_opts_t *o, cw_config_t *cfg)
{
    char err[1024];
    int rc = load(s, o, cfg, err, sizeof err);
    if (rc != 0)
        fail_msg("unexpected error: %s", err);
}

/* load() that must fail with a message containing every given fragment. */
static void load_fails(const setup_t *s, ...)
{
    cw_opts_t o;
    cw_config_t cfg;
    char err[1024];
    int rc = load(s, &o, &cfg, err, sizeof err);
    if (rc == 0)
        fail_msg("expected an error, got none");
    va_list ap;
    va_start(ap, s);
    for (const char *frag; (frag = va_arg(ap, const char *)) != NULL;)
        if (strstr(err, frag) == NULL)
            fail_msg("error '%s' lacks '%s'", err, frag);
    va_end(ap);
    cw_config_free(&cfg);
    cw_opts_free(&o);
}

static void done(cw_opts_t *o, cw_config_t *cfg)
{
    cw_config_free(cfg);
    cw_opts_free(o);
}

#define ARGV(...)  ((const char *const[]){__VA_ARGS__, NULL})
#define BASIC      "--master", "m:1", "--name", "w", "--basedir", "/b", "--password-file", "/pw"
#define BASIC_CONF "master = m:1\nname = w\nbasedir = /b\npassword-file = /pw\n"

/* A unique empty directory under /tmp; the caller removes it. */
static char *tmpdir(void)
{
    char *d = strdup("/tmp/cw-test-config-XXXXXX");
    assert_non_null(mkdtemp(d));
    return d;
}

static void write_file(const char *path, const char *text, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    fchmod(fd, mode);
    close(fd);
}

static char *read_text(const char *path)
{
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    char *buf = calloc(1, 65536);
    size_t n = fread(buf, 1, 65535, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

static void rm_rf(const char *dir)
{
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

/* ------------------------------------------------------------------------ */
/* Config file syntax                                                       */
/* ------------------------------------------------------------------------ */

static void test_conf_syntax(void **state)
{
    cw_opts_t o;
    cw_config_t cfg;
    setup_t s = {.conf = "\xef\xbb\xbf# a comment\r\n"
                         "\n"
                         "   # indented comment\n"
                         "master   =   ws://10.0.0.1:8010/bb/ws  \r\n"
                         "name=worker # not a comment\n"
                         "basedir = relative/dir\n"
                         "password = \" secret with \\\"quotes\\\" \\x41\\\\ \"\n"
                         "dead_timeout = 12.5\n"
                         "verbose = yes\n"
                         "log-format = json\n"
                         "umask = 0o27\n"
                         "max-retries = 7\n"
                         "metrics-listen = [::1]:9101\n"
                         "kill-grace = 0.0015"};
    load_ok(&s, &o, &cfg);
    assert_string_equal(cfg.master_host, "10.0.0.1");
    assert_int_equal(cfg.master_port, 8010);
    assert_string_equal(cfg.master_path, "/bb/ws");
    assert_false(cfg.use_tls);
    assert_string_equal(cfg.name, "worker # not a comment");
    /* relative paths in a file are relative to the file's directory */
    assert_string_equal(cfg.basedir, "/etc/cworker/relative/dir");
    assert_string_equal(cfg.password, " secret with \"quotes\" A\\ ");
    assert_int_equal(cfg.dead_timeout, 12500);
    assert_int_equal(cfg.kill_grace, 2); /* rounded, not truncated */
    assert_true(cfg.verbose);
    assert_int_equal(cfg.log_format, 1);
    assert_int_equal(cfg.umask, 027);
    assert_int_equal(cfg.max_retries, 7);
    assert_string_equal(cfg.metrics_listen, "[::1]:9101");
    /* untouched options keep their defaults */
    assert_int_equal(cfg.ping_interval, 10000);
    assert_int_equal(cfg.drain_timeout, 60000);
    assert_true(cfg.backoff_cap == 30);
    assert_int_equal(cfg.max_message, 64u << 20);
    done(&o, &cfg);
}

static void test_conf_errors(void **state)
{
    load_fails(&(setup_t){.conf = "master = m:1\nbogus = 1\n"}, "/etc/cworker/w.conf:2",
               "unknown key 'bogus'", NULL);
    load_fails(&(setup_t){.conf = "master = m:1\n\nmaster = m:2\n"}, "w.conf:3", "'master'",
               "line 1", NULL);
    load_fails(&(setup_t){.conf = "master m:1\n"}, "w.conf:1", "key = value", NULL);
    load_fails(&(setup_t){.conf = "config = /x\n"}, "w.conf:1", "config", NULL);
    load_fails(&(setup_t){.conf = "name = \"open\n"}, "w.conf:1", "closing", NULL);
    load_fails(&(setup_t){.conf = "name = \"a\" b\n"}, "w.conf:1", "after the closing", NULL);
    load_fails(&(setup_t){.conf = "name = \"a\\q\"\n"}, "w.conf:1", "escape", NULL);
    load_fails(&(setup_t){.conf = BASIC_CONF "dead-timeout = soon\n"},
               "/etc/cworker/w.conf:5: dead-timeout 'soon'", "seconds", NULL);
    load_fails(&(setup_t){.conf = BASIC_CONF "backoff-max = 0.5\n"}, "w.conf:5", ">= 1", NULL);
    load_fails(&(setup_t){.conf = BASIC_CONF "max-message = 100\n"}, "max-message", "4096", NULL);
    load_fails(&(setup_t){.conf = BASIC_CONF "verbose = maybe\n"}, "verbose 'maybe'", NULL);
    load_fails(&(setup_t){.conf = BASIC_CONF "log-format = xml\n"}, "log-format", NULL);
    load_fails(&(setup_t){.conf = BASIC_CONF "umask = 0888\n"}, "umask '0888'", "octal", NULL);
    load_fails(&(setup_t){.conf = BASIC_CONF "umask = 1000\n"}, "umask", NULL);
    load_fails(&(setup_t){.conf = BASIC_CONF "max-retries = -1\n"}, "max-retries", NULL);
    load_fails(&(setup_t){.conf = BASIC_CONF "metrics-listen = localhost:9101\n"}, "metrics-listen",
               "numeric", NULL);
    load_fails(&(setup_t){.conf = BASIC_CONF "client-cert = /c.pem\n"}, "client-key", NULL);
    char nul[] = "name = a\0b\n";
    cw_opts_t o;
    char err[256];
    cw_opts_init(&o);
    assert_true(cw_opts_parse_conf(&o, nul, sizeof nul - 1, "f", 0600, err, sizeof err) < 0);
    assert_non_null(strstr(err, "NUL"));
    cw_opts_free(&o);
}

/* ------------------------------------------------------------------------ */
/* Command line, environment, precedence                                    */
/* ------------------------------------------------------------------------ */

static void test_argv(void **state)
{
    cw_opts_t o;
    cw_config_t cfg;
    load_ok(&(setup_t){.argv = ARGV(BASIC, "--verbose", "--delete-leftover-dirs=false",
                                    "--ping-interval=0", "--max-commands", "3")},
            &o, &cfg);
    assert_true(cfg.verbose);
    assert_false(cfg.delete_leftover_dirs);
    assert_int_equal(cfg.ping_interval, 0);
    assert_int_equal(cfg.max_commands, 3);
    assert_string_equal(cfg.password_file, "/pw");
    assert_null(cfg.password); /* read by cw_config_finish */
    assert_int_equal(o.action, CW_ACTION_RUN);
    done(&o, &cfg);

    load_fails(&(setup_t){.argv = ARGV(BASIC, "--bogus-option")}, "unknown option '--bogus-option'",
               NULL);
    load_fails(&(setup_t){.argv = ARGV(BASIC, "--dead-timeout")}, "'--dead-timeout' needs a value",
               NULL);
    load_fails(&(setup_t){.argv = ARGV(BASIC, "--dead-timeout", "soon")}, "--dead-timeout 'soon'",
               NULL);
    load_fails(&(setup_t){.argv = ARGV(BASIC, "stray")}, "unexpected argument 'stray'", NULL);
    load_fails(&(setup_t){.argv = ARGV(BASIC, "--numcpus", "-1")}, "--numcpus '-1'", NULL);
    load_fails(&(setup_t){.argv = ARGV(BASIC, "--log-size", "10M")}, "--log-size '10M'", NULL);
    load_fails(&(setup_t){.argv = ARGV(BASIC, "--log-count", "0")}, "--log-count '0'", "none",
               NULL);
    load_ok(&(setup_t){.argv = ARGV(BASIC, "--numcpus", "auto")}, &o, &cfg);
    assert_int_equal(cfg.numcpus, 0);
    assert_null(cfg.log_file); /* the defaults: stderr, 10 MB, 10 files */
    assert_int_equal(cfg.log_size, 10000000);
    assert_int_equal(cfg.log_count, 10);
    done(&o, &cfg);
    load_fails(&(setup_t){.argv = ARGV(BASIC, "--force")}, "--write-config", NULL);
    load_fails(&(setup_t){.argv = ARGV(BASIC, "--help=x")}, "takes no value", NULL);
    /* the password is never a flag, and the message does not echo it */
    cw_opts_t o2;
    cw_config_t c2;
    char err[1024];
    assert_true(load(&(setup_t){.argv = ARGV(BASIC, "--password", "hunter2")}, &o2, &c2, err,
                     sizeof err) < 0);
    assert_non_null(strstr(err, "never taken from the command line"));
    assert_null(strstr(err, "hunter2"));
    done(&o2, &c2);

    load_ok(&(setup_t){.argv = ARGV("--check-config", BASIC)}, &o, &cfg);
    assert_int_equal(o.action, CW_ACTION_CHECK);
    done(&o, &cfg);
    load_ok(&(setup_t){.argv = ARGV(BASIC, "--write-config", "/x.conf", "--force")}, &o, &cfg);
    assert_int_equal(o.action, CW_ACTION_WRITE);
    assert_string_equal(o.write_config, "/x.conf");
    assert_true(o.force);
    done(&o, &cfg);
    /* --help wins at once, whatever follows */
    cw_opts_init(&o);
    char *hv[] = {"cworker", "--help", "--bogus"};
    assert_int_equal(cw_opts_parse_argv(&o, 3, hv, err, sizeof err), 0);
    assert_int_equal(o.action, CW_ACTION_HELP);
    cw_opts_free(&o);
}

static void test_master_forms(void **state)
{
    static const struct {
        const char *in, *host, *path;
        int port;
        bool tls;
    } ok[] = {
        {"buildmaster.example.org", "buildmaster.example.org", "/", 9989, false},
        {"bm:1234", "bm", "/", 1234, false},
        {"[::1]:9989", "::1", "/", 9989, false},
        {"[fe80::1%eth0]", "fe80::1%eth0", "/", 9989, false},
        {"ws://h", "h", "/", 80, false},
        {"ws://h:8010/a/b?x=1", "h", "/a/b?x=1", 8010, false},
        {"wss://h/ws", "h", "/ws", 443, true},
        {"wss://[2001:db8::2]:9443/", "2001:db8::2", "/", 9443, true},
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        cw_opts_t o;
        cw_config_t cfg;
        load_ok(&(setup_t){.argv = ARGV("--master", ok[i].in, "--name", "w", "--basedir", "/b",
                                        "--password-file", "/p")},
                &o, &cfg);
        assert_string_equal(cfg.master_host, ok[i].host);
        assert_string_equal(cfg.master_path, ok[i].path);
        assert_int_equal(cfg.master_port, ok[i].port);
        assert_int_equal(cfg.use_tls, ok[i].tls);
        done(&o, &cfg);
    }
    static const char *bad[] = {
        "127.0.0.1:99999", "127.0.0.1:abc", "127.0.0.1:", "http://x:1", "ws://", "",
        "::1:9989",        "a/b:80",        "ws://h:0/",  "h o:1",      "[::1",  "ws://h/pa th"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char frag[64];
        snprintf(frag, sizeof frag, "--master '%s'", bad[i]);
        load_fails(&(setup_t){.argv = ARGV("--master", bad[i], "--name", "w", "--basedir", "/b",
                                           "--password-file", "/p")},
                   frag, NULL);
    }
    /* --use-tls turns HOST:PORT into TLS, but contradicts an explicit ws:// */
    cw_opts_t o;
    cw_config_t cfg;
    load_ok(&(setup_t){.argv = ARGV(BASIC, "--use-tls")}, &o, &cfg);
    assert_true(cfg.use_tls);
    assert_int_equal(cfg.master_port, 1);
    done(&o, &cfg);
    load_fails(&(setup_t){.argv = ARGV("--master", "ws://h/", "--name", "w", "--basedir", "/b",
                                       "--password-file", "/p", "--use-tls")},
               "--use-tls", "ws://", NULL);
    /* required options, each message naming the flag */
    load_fails(&(setup_t){.argv = ARGV("--name", "w", "--basedir", "/b", "--password-file", "/p")},
               "--master", "CWORKER_MASTER", NULL);
    load_fails(
        &(setup_t){.argv = ARGV("--master", "m", "--basedir", "/b", "--password-file", "/p")},
        "--name", NULL);
    load_fails(&(setup_t){.argv = ARGV("--master", "m", "--name", "w", "--password-file", "/p")},
               "--basedir", NULL);
    load_fails(&(setup_t){.argv = ARGV("--master", "m", "--name", "w", "--basedir", "/b")},
               "password", "--password-file", "CWORKER_PASSWORD", NULL);
    load_fails(&(setup_t){.argv = ARGV("--master", "m", "--name", "a:b", "--basedir", "/b",
                                       "--password-file", "/p")},
               "--name 'a:b'", "':'", NULL);
}

static void test_precedence(void **state)
{
    const char *env[] = {"CWORKER_MASTER=env-master:2",
                         "CWORKER_DEAD_TIMEOUT=20",
                         "CWORKER_PING_INTERVAL=", /* empty: unset */
                         "CWORKER_BIN=/usr/bin/x", /* not ours: ignored */
                         "CWORKER_FOO-BAR=1",      /* not a name: ignored */
                         "PATH=/usr/bin",
                         NULL};
    setup_t s = {.argv = ARGV("--dead-timeout", "5"),
                 .env = env,
                 .conf = "master = file-master:3\nname = file-name\nbasedir = /fb\n"
                         "dead-timeout = 40\nping-interval = 7\nkill-grace = 4\n"
                         "password-file = pw\n",
                 .tac = "buildmaster_host = 'tac-master'\nport = 4\nworkername = 'tac-name'\n"
                        "passwd = 'tacpw'\nbasedir = '/tb'\nkeepalive = 600\n"
                        "protocol = 'msgpack_experimental_v7'\nmaxretries = 9\n"};
    cw_opts_t o;
    cw_config_t cfg;
    load_ok(&s, &o, &cfg);
    assert_string_equal(cfg.master_host, "env-master"); /* env > file > tac */
    assert_string_equal(cfg.name, "file-name");         /* file > tac */
    assert_string_equal(cfg.basedir, "/fb");
    assert_int_equal(cfg.dead_timeout, 5000);  /* flag > env > file */
    assert_int_equal(cfg.ping_interval, 7000); /* empty env is unset */
    assert_int_equal(cfg.kill_grace, 4000);
    assert_int_equal(cfg.max_retries, 9); /* tac */
    /* password-file in the file beats the tac's passwd */
    assert_string_equal(cfg.password_file, "/etc/cworker/pw");
    assert_null(cfg.password);
    assert_string_equal(o.v[CW_OPT_MASTER].where, "CWORKER_MASTER");
    assert_string_equal(o.v[CW_OPT_NAME].where, "/etc/cworker/w.conf:2");
    assert_string_equal(o.v[CW_OPT_MAX_RETRIES].where, "/srv/bb/w1/buildbot.tac:8 (maxretries)");
    done(&o, &cfg);

    /* errors name the environment variable */
    const char *env2[] = {"CWORKER_DEAD_TIMEOUT=soon", NULL};
    load_fails(&(setup_t){.argv = ARGV(BASIC), .env = env2}, "CWORKER_DEAD_TIMEOUT='soon'",
               "environment", NULL);
}

static void test_password_rules(void **state)
{
    cw_opts_t o;
    cw_config_t cfg;
    /* a password key in a file others can read is refused, like ssh keys */
    load_fails(&(setup_t){.conf = "password = s3cret\n", .conf_mode = 0644}, "w.conf:1",
               "group or others", "0644", "chmod 600", NULL);
    load_fails(&(setup_t){.conf = "password = s3cret\n", .conf_mode = 0640}, "0640", NULL);
    /* ... but a password-file key in such a file is fine */
    load_ok(&(setup_t){.conf = BASIC_CONF, .conf_mode = 0644}, &o, &cfg);
    done(&o, &cfg);
    /* the environment's CWORKER_PASSWORD */
    const char *env[] = {"CWORKER_PASSWORD=from-env", NULL};
    load_ok(&(setup_t){.argv = ARGV("--master", "m", "--name", "w", "--basedir", "/b"), .env = env},
            &o, &cfg);
    assert_string_equal(cfg.password, "from-env");
    assert_null(cfg.password_file);
    done(&o, &cfg);
    /* the flag's password file beats the environment's password */
    load_ok(&(setup_t){.argv = ARGV(BASIC), .env = env}, &o, &cfg);
    assert_null(cfg.password);
    assert_string_equal(cfg.password_file, "/pw");
    done(&o, &cfg);
    /* both in one source: refused, naming both */
    const char *both[] = {"CWORKER_PASSWORD=x", "CWORKER_PASSWORD_FILE=/f", NULL};
    load_fails(
        &(setup_t){.argv = ARGV("--master", "m", "--name", "w", "--basedir", "/b"), .env = both},
        "CWORKER_PASSWORD", "CWORKER_PASSWORD_FILE", NULL);
    load_fails(&(setup_t){.conf = "master = m\nname = w\nbasedir = /b\npassword =\n"},
               "empty password", NULL);
    /* error messages never show the password */
    cw_opts_t o2;
    cw_config_t c2;
    char err[1024];
    const char *env3[] = {"CWORKER_PASSWORD=topsecret", "CWORKER_PASSWORD_FILE=/f", NULL};
    assert_true(load(&(setup_t){.argv = ARGV("--master", "m", "--name", "w", "--basedir", "/b"),
                                .env = env3},
                     &o2, &c2, err, sizeof err) < 0);
    assert_null(strstr(err, "topsecret"));
    done(&o2, &c2);
}

/* ------------------------------------------------------------------------ */
/* Proxies                                                                  */
/* ------------------------------------------------------------------------ */

static void test_proxy_parse(void **state)
{
    cw_proxy_t p;
    assert_int_equal(cw_proxy_parse("http://proxy.corp:3128", &p), 0);
    assert_string_equal(p.host, "proxy.corp");
    assert_int_equal(p.port, 3128);
    assert_null(p.user);
    cw_proxy_free(&p);
    assert_int_equal(cw_proxy_parse("http://us%40er:p%3As@[::1]:8080/", &p), 0);
    assert_string_equal(p.host, "::1");
    assert_int_equal(p.port, 8080);
    assert_string_equal(p.user, "us@er");
    assert_string_equal(p.password, "p:s");
    cw_proxy_free(&p);
    assert_int_equal(cw_proxy_parse("proxy:3128", &p), 0);
    assert_int_equal(p.port, 3128);
    cw_proxy_free(&p);
    assert_int_equal(cw_proxy_parse("HTTP://proxy", &p), 0);
    assert_int_equal(p.port, 80);
    cw_proxy_free(&p);
    static const char *bad[] = {
        "socks5://p:1080", "https://p:443",   "http://p:3128/path", "http://:3128",
        "http://p:0",      "http://u%zz@p:1", "http://u%00@p:1",    "",
        "http://p:1:2"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (cw_proxy_parse(bad[i], &p) == 0)
            fail_msg("'%s' accepted", bad[i]);
}

static void test_no_proxy(void **state)
{
    assert_true(cw_no_proxy_match("*", "anything", 1));
    assert_true(cw_no_proxy_match("example.com", "example.com", 1));
    assert_true(cw_no_proxy_match("example.com", "bm.Example.COM", 1));
    assert_true(cw_no_proxy_match(".example.com", "bm.example.com", 1));
    assert_true(cw_no_proxy_match(".example.com", "example.com", 1));
    assert_true(cw_no_proxy_match("*.example.com", "a.b.example.com", 1));
    assert_false(cw_no_proxy_match("example.com", "badexample.com", 1));
    assert_false(cw_no_proxy_match("example.com", "example.com.evil", 1));
    assert_true(cw_no_proxy_match("localhost, 10.0.0.0/8 ,.corp", "10.1.2.3", 1));
    assert_false(cw_no_proxy_match("10.0.0.0/8", "11.1.2.3", 1));
    assert_true(cw_no_proxy_match("192.168.1.5", "192.168.1.5", 1));
    assert_false(cw_no_proxy_match("192.168.1.5", "192.168.1.50", 1));
    assert_true(cw_no_proxy_match("::1", "::1", 1));
    assert_true(cw_no_proxy_match("[::1]", "0:0::1", 1));
    assert_true(cw_no_proxy_match("2001:db8::/32", "2001:db8:1::5", 1));
    assert_false(cw_no_proxy_match("2001:db8::/32", "2001:db9::5", 1));
    assert_true(cw_no_proxy_match("bm.corp:9989", "bm.corp", 9989));
    assert_false(cw_no_proxy_match("bm.corp:9989", "bm.corp", 9990));
    assert_true(cw_no_proxy_match("[::1]:9989", "::1", 9989));
    assert_false(cw_no_proxy_match("", "h", 1));
    assert_false(cw_no_proxy_match(" , ,", "h", 1));
    assert_false(cw_no_proxy_match("127.0.0.1", "localhost", 1));
}

static void test_proxy_resolution(void **state)
{
    cw_opts_t o;
    cw_config_t cfg;
    const char *env[] = {"http_proxy=http://plain:3128", "HTTPS_PROXY=secure:8443",
                         "no_proxy=.internal", NULL};
    /* (proxies are msgpack's: test_options checks that pb ignores them) */
#define BASIC_MP BASIC, "--protocol", "msgpack"
    /* ws:// uses http_proxy, wss:// https_proxy */
    load_ok(&(setup_t){.argv = ARGV(BASIC_MP), .env = env}, &o, &cfg);
    assert_string_equal(cfg.proxy, "http://plain:3128");
    assert_string_equal(o.proxy_env, "http_proxy");
    done(&o, &cfg);
    load_ok(&(setup_t){.argv = ARGV("--master", "wss://bm.example:9989", "--name", "w", "--basedir",
                                    "/b", "--password-file", "/p"),
                       .env = env},
            &o, &cfg);
    assert_string_equal(cfg.proxy, "http://secure:8443");
    done(&o, &cfg);
    /* no_proxy covers the master */
    load_ok(&(setup_t){.argv = ARGV("--master", "bm.internal:9989", "--name", "w", "--basedir",
                                    "/b", "--password-file", "/p", "--protocol", "msgpack"),
                       .env = env},
            &o, &cfg);
    assert_null(cfg.proxy);
    done(&o, &cfg);
    /* explicit wins, none disables, and bad ones are refused with their source */
    load_ok(&(setup_t){.argv = ARGV(BASIC_MP, "--proxy", "http://u:p@explicit:1"), .env = env}, &o,
            &cfg);
    assert_string_equal(cfg.proxy, "http://u:p@explicit:1");
    done(&o, &cfg);
    load_ok(&(setup_t){.argv = ARGV(BASIC_MP, "--proxy", "none"), .env = env}, &o, &cfg);
    assert_null(cfg.proxy);
    done(&o, &cfg);
    load_ok(&(setup_t){.argv = ARGV(BASIC_MP), .env = env, .conf = "proxy =\n"}, &o, &cfg);
    assert_null(cfg.proxy);
    done(&o, &cfg);
    load_fails(&(setup_t){.argv = ARGV(BASIC, "--proxy", "https://p:1")}, "--proxy", "TLS", NULL);
    const char *socks[] = {"http_proxy=socks5://s:1080", NULL};
    load_fails(&(setup_t){.argv = ARGV(BASIC_MP), .env = socks}, "http_proxy='socks5://s:1080'",
               "none", NULL);
#undef BASIC_MP
}

/* ------------------------------------------------------------------------ */
/* buildbot.tac                                                             */
/* ------------------------------------------------------------------------ */

/* What `buildbot-worker create-worker` 3.7 writes (the parts that matter). */
static const char stock_tac[] =
    "\nimport os\n\nfrom buildbot_worker.bot import Worker\n"
    "from twisted.application import service\n\n"
    "basedir = %s\n"
    "rotateLength = 10000000\nmaxRotatedFiles = 10\n\n"
    "# if this is a relocatable tac file, get the directory containing the TAC\n"
    "if basedir == '.':\n    import os.path\n"
    "    basedir = os.path.abspath(os.path.dirname(__file__))\n\n"
    "application = service.Application('buildbot-worker')\n\n"
    "buildmaster_host = %s\nport = %s\nworkername = %s\npasswd = %s\nkeepalive = 600\n"
    "umask = %s\nmaxdelay = 300\nnumcpus = None\nallow_shutdown = None\nmaxretries = %s\n"
    "use_tls = %s\ndelete_leftover_dirs = %s\nproxy_connection_string = %s\n"
    "protocol = %s\n\n"
    "s = Worker(buildmaster_host, port, workername, passwd, basedir,\n"
    "           keepalive, umask=umask, maxdelay=maxdelay,\n"
    "           numcpus=numcpus, allow_shutdown=allow_shutdown,\n"
    "           maxRetries=maxretries, protocol=protocol, useTls=use_tls,\n"
    "           delete_leftover_dirs=delete_leftover_dirs,\n"
    "           proxy_connection_string=proxy_connection_string)\n"
    "s.setServiceParent(application)\n";

static char *make_tac(const char *basedir, const char *host, const char *port, const char *name,
                      const char *passwd, const char *umask_, const char *maxretries,
                      const char *use_tls, const char *dld, const char *proxy, const char *protocol)
{
    char *t = NULL;
    assert_true(asprintf(&t, stock_tac, basedir, host, port, name, passwd, umask_, maxretries,
                         use_tls, dld, proxy, protocol) > 0);
    return t;
}

static void test_tac_stock(void **state)
{
    cw_opts_t o;
    cw_config_t cfg;
    char *tac = make_tac("'/var/lib/bb/w1'", "'bm.example.org'", "9989", "'w1'", "'p\"a\\\\ss\\'q'",
                         "None", "None", "0", "0", "None", "'msgpack_experimental_v7'");
    load_ok(&(setup_t){.tac = tac}, &o, &cfg);
    assert_string_equal(cfg.master_host, "bm.example.org");
    assert_int_equal(cfg.master_port, 9989);
    assert_string_equal(cfg.name, "w1");
    assert_string_equal(cfg.password, "p\"a\\ss'q");
    assert_string_equal(cfg.basedir, "/var/lib/bb/w1");
    assert_int_equal(cfg.umask, -1);
    assert_int_equal(cfg.max_retries, 0);
    assert_false(cfg.use_tls);
    assert_false(cfg.delete_leftover_dirs);
    assert_null(cfg.proxy);
    assert_int_equal(cfg.numcpus, 0); /* None: auto */
    assert_int_equal(cfg.log_size, 10000000);
    assert_int_equal(cfg.log_count, 10);
    assert_null(cfg.log_file); /* stderr, whatever the tac says about twistd.log */
    /* defaults of ignored settings: nothing to say; where the log goes: one note */
    assert_int_equal(o.nnotes, 1);
    assert_non_null(strstr(o.notes[0], "rotateLength"));
    assert_non_null(strstr(o.notes[0], "--log-file BASEDIR/twistd.log"));
    done(&o, &cfg);
    free(tac);

    /* every option create-worker can write, relocatable, IPv6 */
    tac = make_tac("'.'", "'::1'", "1234", "\"w\\u00f6'rker\"", "r'pa\\ss'", "0o22", "5", "1", "1",
                   "'tcp:host=proxy.corp:port=3128'", "'msgpack_experimental_v7'");
    load_ok(&(setup_t){.tac = tac}, &o, &cfg);
    assert_string_equal(cfg.master_host, "::1");
    assert_int_equal(cfg.master_port, 1234);
    assert_true(cfg.use_tls);
    assert_string_equal(cfg.name, "w\xc3\xb6'rker");
    assert_string_equal(cfg.password, "pa\\ss");
    assert_string_equal(cfg.basedir, "/srv/bb/w1");
    assert_int_equal(cfg.umask, 022);
    assert_int_equal(cfg.max_retries, 5);
    assert_true(cfg.delete_leftover_dirs);
    assert_string_equal(cfg.proxy, "http://proxy.corp:3128");
    done(&o, &cfg);
    free(tac);

    /* umask as decimal (18 == 0o22), Python 2 octal, True/False */
    tac = make_tac("os.path.abspath(os.path.dirname(__file__))", "'h'", "1", "'n'", "'p'", "18",
                   "None", "True", "False", "None", "\"msgpack_experimental_v7\"  # comment");
    load_ok(&(setup_t){.tac = tac}, &o, &cfg);
    assert_int_equal(cfg.umask, 022);
    assert_string_equal(cfg.basedir, "/srv/bb/w1");
    assert_true(cfg.use_tls);
    done(&o, &cfg);
    free(tac);
    tac = make_tac("'rel'", "'h'", "1", "'n'", "'p'", "022", "None", "0", "0", "None",
                   "'msgpack_experimental_v7'");
    load_ok(&(setup_t){.tac = tac}, &o, &cfg);
    assert_int_equal(cfg.umask, 022);
    assert_string_equal(cfg.basedir, "/srv/bb/w1/rel");
    assert_int_equal(o.nnotes, 2); /* the umask, and where the log goes */
    assert_non_null(strstr(o.notes[0], "Python 2"));
    done(&o, &cfg);
    free(tac);
}

static void test_tac_strings(void **state)
{
    static const struct {
        const char *lit, *want;
    } cases[] = {
        {"'plain'", "plain"},
        {"\"dq\"", "dq"},
        {"'a\\tb\\nc'", "a\tb\nc"},
        {"'\\x41\\101\\u00e9\\U0001F600'", "AA\xc3\xa9\xf0\x9f\x98\x80"},
        {"'keep\\d'", "keep\\d"},
        {"r'raw\\n\\''", "raw\\n\\'"},
        {"R\"x\\\"y\"", "x\\\"y"},
        {"u'uni'", "uni"},
        {"'con' \"cat\"", "concat"},
        {"'''tri'ple'''", "tri'ple"},
        {"'#not a comment'  # a comment", "#not a comment"},
        {"'caf\xc3\xa9'", "caf\xc3\xa9"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char tac[512];
        snprintf(tac, sizeof tac,
                 "buildmaster_host = 'h'\nport = 1\nworkername = 'w'\npasswd = %s\n"
                 "basedir = '/b'\nprotocol = 'msgpack_experimental_v7'\n",
                 cases[i].lit);
        cw_opts_t o;
        cw_config_t cfg;
        load_ok(&(setup_t){.tac = tac}, &o, &cfg);
        if (strcmp(cfg.password, cases[i].want) != 0)
            fail_msg("%s -> '%s', want '%s'", cases[i].lit, cfg.password, cases[i].want);
        done(&o, &cfg);
    }
    static const char *bad[] = {"'open",           "'\\x4'", "'\\N{BULLET}'", "'a' + 'b'",
                                "os.environ['W']", "'\\0'",  "f'x'"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char tac[512];
        snprintf(tac, sizeof tac,
                 "buildmaster_host = 'h'\nport = 1\nworkername = 'w'\npasswd = %s\n"
                 "basedir = '/b'\nprotocol = 'msgpack_experimental_v7'\n",
                 bad[i]);
        load_fails(&(setup_t){.tac = tac}, "buildbot.tac:4 (passwd)", NULL);
        /* ... unless something of higher precedence gives the password */
        cw_opts_t o;
        cw_config_t cfg;
        const char *env[] = {"CWORKER_PASSWORD=envpw", NULL};
        load_ok(&(setup_t){.tac = tac, .env = env}, &o, &cfg);
        assert_string_equal(cfg.password, "envpw");
        done(&o, &cfg);
    }
}

static void test_tac_protocol_and_modes(void **state)
{
    char *tac =
        make_tac("'/b'", "'h'", "9989", "'w'", "'p'", "None", "None", "0", "0", "None", "'pb'");
    /* a pb worker: cworker speaks pb to the same port */
    cw_opts_t o;
    cw_config_t cfg;
    load_ok(&(setup_t){.tac = tac}, &o, &cfg);
    assert_int_equal(cfg.protocol, CW_PROTO_PB);
    assert_int_equal(cfg.master_port, 9989);
    done(&o, &cfg);
    /* with the master given elsewhere, the tac's protocol is dropped (pb anyway) */
    load_ok(&(setup_t){.tac = tac, .argv = ARGV("--master", "h:9990")}, &o, &cfg);
    assert_int_equal(cfg.master_port, 9990);
    assert_int_equal(cfg.protocol, CW_PROTO_PB);
    assert_string_equal(cfg.password, "p");
    done(&o, &cfg);
    /* a tac passwd readable by others is refused */
    load_fails(&(setup_t){.tac = tac, .tac_mode = 0644}, "passwd", "0644", "chmod 600", NULL);
    free(tac);
    /* no protocol line at all: the stock default is pb */
    load_ok(&(setup_t){.tac = "buildmaster_host = 'h'\nport = 1\nworkername = 'w'\n"
                              "passwd = 'p'\nbasedir = '/b'\n"},
            &o, &cfg);
    assert_int_equal(cfg.protocol, CW_PROTO_PB);
    assert_non_null(strstr(o.v[CW_OPT_PROTOCOL].where, "no protocol line"));
    done(&o, &cfg);
    /* connection_string and a TLS endpoint */
    load_ok(&(setup_t){.tac = "buildmaster_host = None\nport = None\n"
                              "connection_string = 'tls:host=bm.example:port=9443'\n"
                              "workername = 'w'\npasswd = 'p'\nbasedir = '/b'\nuse_tls = 0\n"
                              "protocol = 'msgpack_experimental_v7'\n"},
            &o, &cfg);
    assert_string_equal(cfg.master_host, "bm.example");
    assert_int_equal(cfg.master_port, 9443);
    assert_true(cfg.use_tls);
    done(&o, &cfg);
    /* a proxy endpoint that is not an HTTP CONNECT proxy */
    load_fails(&(setup_t){.tac = "buildmaster_host = 'h'\nport = 1\nworkername = 'w'\n"
                                 "passwd = 'p'\nbasedir = '/b'\n"
                                 "proxy_connection_string = 'unix:/run/p.sock'\n"
                                 "protocol = 'msgpack_experimental_v7'\n"},
               "proxy_connection_string", NULL);
    /* settings that do nothing here give notes: keepalive over msgpack (maxdelay
     * at the stock 300 says nothing; allow_shutdown is an option) */
    load_ok(&(setup_t){.tac = "buildmaster_host = 'h'\nport = 1\nworkername = 'w'\n"
                              "passwd = 'p'\nbasedir = '/b'\nkeepalive = 60\nnumcpus = 4\n"
                              "allow_shutdown = 'file'\nmaxdelay = 300\n"
                              "protocol = 'msgpack_experimental_v7'\n"},
            &o, &cfg);
    assert_int_equal(o.nnotes, 1); /* keepalive */
    assert_int_equal(cfg.allow_shutdown, CW_SHUTDOWN_FILE);
    assert_int_equal(cfg.numcpus, 4);
    done(&o, &cfg);
    /* numcpus 0 is auto (the stock worker's `not numcpus`), maxRotatedFiles None
     * keeps every file, a flag wins over the tac */
    load_ok(&(setup_t){.tac = "buildmaster_host = 'h'\nport = 1\nworkername = 'w'\n"
                              "passwd = 'p'\nbasedir = '/b'\nnumcpus = 0\nrotateLength = 0\n"
                              "maxRotatedFiles = None\nprotocol = 'msgpack_experimental_v7'\n"},
            &o, &cfg);
    assert_int_equal(cfg.numcpus, 0);
    assert_int_equal(cfg.log_size, 0);
    assert_int_equal(cfg.log_count, 0);
    done(&o, &cfg);
    load_fails(&(setup_t){.tac = "buildmaster_host = 'h'\nport = 1\nworkername = 'w'\n"
                                 "passwd = 'p'\nbasedir = '/b'\nnumcpus = 'many'\n"
                                 "protocol = 'msgpack_experimental_v7'\n"},
               "numcpus", NULL);
}

/* The master of a tac: the message names the variable that is wrong. */
static void test_tac_master_errors(void **state)
{
    static const struct {
        const char *host, *port, *frag;
    } bad[] = {
        {"'h'", "'x'", "buildbot.tac:2 (port): port = 'x'"},
        {"'::1'", "'x'", "buildbot.tac:2 (port): port = 'x'"}, /* a bare IPv6 host */
        {"'h'", "70000", "buildbot.tac:2 (port)"},
        {"'h o'", "1", "buildbot.tac:1 (buildmaster_host): buildmaster_host = 'h o'"},
        {"None", "1", "buildbot.tac:1 (buildmaster_host)"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char tac[512];
        snprintf(tac, sizeof tac,
                 "buildmaster_host = %s\nport = %s\nworkername = 'w'\npasswd = 'p'\n"
                 "basedir = '/b'\nprotocol = 'msgpack_experimental_v7'\n",
                 bad[i].host, bad[i].port);
        load_fails(&(setup_t){.tac = tac}, bad[i].frag, "give master with a flag", NULL);
    }
    cw_opts_t o;
    cw_config_t cfg;
    load_ok(&(setup_t){.tac = "buildmaster_host = '::1'\nport = '9989'\nworkername = 'w'\n"
                              "passwd = 'p'\nbasedir = '/b'\n"
                              "protocol = 'msgpack_experimental_v7'\n"},
            &o, &cfg);
    assert_string_equal(cfg.master_host, "::1");
    assert_int_equal(cfg.master_port, 9989);
    done(&o, &cfg);
}

/* ------------------------------------------------------------------------ */
/* Printing, writing, finishing                                             */
/* ------------------------------------------------------------------------ */

/* Format cfg as a file, parse it back, and compare every field. */
static void assert_roundtrip(cw_opts_t *o, cw_config_t *cfg)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    cw_config_format(f, cfg, o, false);
    fclose(f);
    cw_opts_t o2;
    cw_config_t c2;
    char err[1024];
    cw_opts_init(&o2);
    if (cw_opts_parse_conf(&o2, text, len, "/etc/cworker/w.conf", 0600, err, sizeof err) < 0 ||
        cw_config_resolve(&o2, (char *[]){NULL}, &c2, err, sizeof err) < 0)
        fail_msg("written config does not read back: %s\n%s", err, text);
    assert_string_equal(c2.master_host, cfg->master_host);
    assert_int_equal(c2.master_port, cfg->master_port);
    assert_string_equal(c2.master_path, cfg->master_path);
    assert_int_equal(c2.use_tls, cfg->use_tls);
    assert_string_equal(c2.name, cfg->name);
    if (cfg->password_file)
        assert_string_equal(c2.password_file, cfg->password_file);
    else
        assert_string_equal(c2.password, cfg->password);
    assert_true(c2.backoff_cap == cfg->backoff_cap);
    assert_int_equal(c2.ping_interval, cfg->ping_interval);
    assert_int_equal(c2.dead_timeout, cfg->dead_timeout);
    assert_int_equal(c2.kill_grace, cfg->kill_grace);
    assert_int_equal(c2.drain_timeout, cfg->drain_timeout);
    assert_int_equal(c2.max_message, cfg->max_message);
    assert_int_equal(c2.max_commands, cfg->max_commands);
    assert_int_equal(c2.max_retries, cfg->max_retries);
    assert_int_equal(c2.umask, cfg->umask);
    assert_int_equal(c2.verbose, cfg->verbose);
    assert_int_equal(c2.delete_leftover_dirs, cfg->delete_leftover_dirs);
    assert_int_equal(c2.log_format, cfg->log_format);
    assert_int_equal(c2.numcpus, cfg->numcpus);
    if (cfg->log_file)
        assert_string_equal(c2.log_file, cfg->log_file);
    else
        assert_null(c2.log_file);
    assert_int_equal(c2.log_size, cfg->log_size);
    assert_int_equal(c2.log_count, cfg->log_count);
    free(text);
    cw_config_free(&c2);
    cw_opts_free(&o2);
}

static void test_format(void **state)
{
    cw_opts_t o;
    cw_config_t cfg;
    const char *env[] = {"CWORKER_PASSWORD= leading \"space\"\ttab\n", NULL};
    load_ok(
        &(setup_t){.argv = ARGV("--master", "wss://[2001:db8::1]:9443/p", "--name", "w",
                                "--basedir", "/b", "--backoff-max", "2.7182818284", "--kill-grace",
                                "1.001", "--umask", "0", "--verbose", "--log-format", "json",
                                "--max-retries", "3", "--numcpus", "6", "--log-file",
                                "/var/log/w.log", "--log-size", "0", "--log-count", "none"),
                   .env = env},
        &o, &cfg);
    assert_int_equal(cfg.numcpus, 6);
    assert_string_equal(cfg.log_file, "/var/log/w.log");
    assert_int_equal(cfg.log_size, 0);
    assert_int_equal(cfg.log_count, 0);
    assert_roundtrip(&o, &cfg);
    /* the check output hides the password and names sources */
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    cw_config_format(f, &cfg, &o, true);
    fclose(f);
    assert_null(strstr(text, "leading"));
    assert_non_null(strstr(text, "# password: set, hidden (CWORKER_PASSWORD)"));
    assert_non_null(strstr(text, "master = wss://[2001:db8::1]:9443/p"));
    assert_non_null(strstr(text, "# --master"));
    assert_non_null(strstr(text, "umask = 000"));
    assert_non_null(strstr(text, "ping-interval = 10"));
    assert_non_null(strstr(text, "# default"));
    free(text);
    done(&o, &cfg);

    char *tac = make_tac("'/b'", "'h'", "9989", "'w'", "'p'", "0o77", "4", "1", "1",
                         "'tcp:proxy:3128'", "'msgpack_experimental_v7'");
    load_ok(&(setup_t){.tac = tac}, &o, &cfg);
    assert_roundtrip(&o, &cfg);
    done(&o, &cfg);
    free(tac);
}

static void test_finish_and_write(void **state)
{
    char *dir = tmpdir();
    char pw[512], conf[512], base[512], out[512];
    snprintf(pw, sizeof pw, "%s/pw", dir);
    snprintf(conf, sizeof conf, "%s/w.conf", dir);
    snprintf(base, sizeof base, "%s/base", dir);
    snprintf(out, sizeof out, "%s/out.conf", dir);
    write_file(pw, "s3cret\r\nsecond line\n", 0600);
    char text[2048];
    snprintf(text, sizeof text, "master = m:1\nname = w\nbasedir = base\npassword-file = pw\n");
    write_file(conf, text, 0644);

    cw_opts_t o;
    cw_config_t cfg;
    char err[1024];
    cw_opts_init(&o);
    char *argv[] = {"cworker", "--config", conf, "--check-config"};
    assert_int_equal(cw_opts_parse_argv(&o, 4, argv, err, sizeof err), 0);
    assert_int_equal(cw_opts_load_files(&o, err, sizeof err), 0);
    assert_int_equal(cw_config_resolve(&o, (char *[]){NULL}, &cfg, err, sizeof err), 0);
    /* check mode: the basedir can be created, it is not */
    assert_int_equal(cw_config_finish(&cfg, &o, false, err, sizeof err), 0);
    assert_string_equal(cfg.password, "s3cret");
    assert_string_equal(cfg.basedir, base);
    struct stat st;
    assert_int_equal(stat(base, &st), -1);
    /* run mode creates it */
    assert_int_equal(cw_config_finish(&cfg, &o, true, err, sizeof err), 0);
    assert_int_equal(stat(base, &st), 0);
    assert_true(S_ISDIR(st.st_mode));
    /* written: mode 0600, refuses to replace without force */
    assert_int_equal(cw_config_write(out, &cfg, &o, false, err, sizeof err), 0);
    assert_int_equal(stat(out, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    char *w = read_text(out);
    assert_non_null(strstr(w, "password-file = "));
    assert_null(strstr(w, "s3cret"));
    free(w);
    assert_true(cw_config_write(out, &cfg, &o, false, err, sizeof err) < 0);
    assert_non_null(strstr(err, "--force"));
    assert_int_equal(cw_config_write(out, &cfg, &o, true, err, sizeof err), 0);
    done(&o, &cfg);

    /* the basedir's parent does not exist; an empty password file */
    setup_t s = {.argv = ARGV("--master", "m", "--name", "w", "--basedir", "/nonexistent/x/y",
                              "--password-file", pw)};
    assert_int_equal(load(&s, &o, &cfg, err, sizeof err), 0);
    assert_true(cw_config_finish(&cfg, &o, false, err, sizeof err) < 0);
    assert_non_null(strstr(err, "/nonexistent/x/y"));
    assert_non_null(strstr(err, "--basedir"));
    done(&o, &cfg);
    write_file(pw, "\nx\n", 0600);
    s.argv = ARGV("--master", "m", "--name", "w", "--basedir", base, "--password-file", pw);
    assert_int_equal(load(&s, &o, &cfg, err, sizeof err), 0);
    assert_true(cw_config_finish(&cfg, &o, false, err, sizeof err) < 0);
    assert_non_null(strstr(err, "empty"));
    done(&o, &cfg);
    s.argv = ARGV("--master", "m", "--name", "w", "--basedir", base, "--password-file",
                  "/nonexistent-pw");
    assert_int_equal(load(&s, &o, &cfg, err, sizeof err), 0);
    assert_true(cw_config_finish(&cfg, &o, false, err, sizeof err) < 0);
    assert_non_null(strstr(err, "/nonexistent-pw"));
    done(&o, &cfg);
    /* unreadable TLS file */
    write_file(pw, "x\n", 0600);
    s.argv = ARGV("--master", "m", "--name", "w", "--basedir", base, "--password-file", pw,
                  "--ca-file", "/nonexistent-ca.pem");
    assert_int_equal(load(&s, &o, &cfg, err, sizeof err), 0);
    assert_true(cw_config_finish(&cfg, &o, false, err, sizeof err) < 0);
    assert_non_null(strstr(err, "ca-file"));
    done(&o, &cfg);
    rm_rf(dir);
    free(dir);
}

static void test_create_worker(void **state)
{
    char *dir = tmpdir();
    char base[512];
    snprintf(base, sizeof base, "%s/w", dir);
    cw_opts_t o;
    cw_create_t cr;
    char err[1024];
    cw_opts_init(&o);
    char *argv[] = {"--umask=0o27",
                    "--maxretries",
                    "4",
                    "-k600",
                    "--numcpus=2",
                    "--delete-leftover-dirs",
                    "--proxy-connection-string",
                    "'tcp:host=px:port=3128'",
                    "--protocol=msgpack_experimental_v7",
                    "--host",
                    "a test box",
                    "-fq",
                    base,
                    "[::1]:9989",
                    "wname",
                    "pass word"};
    assert_int_equal(cw_create_worker_parse(&cr, &o, 16, argv, err, sizeof err), 0);
    assert_true(cr.force);
    assert_true(cr.quiet);
    assert_int_equal(cw_create_worker_run(&cr, &o, stdout, err, sizeof err), 0);
    assert_int_equal(o.nnotes, 1); /* keepalive */
    char path[600];
    snprintf(path, sizeof path, "%s/cworker.conf", base);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    char *text = read_text(path);
    assert_non_null(strstr(text, "master = ws://[::1]:9989/\n"));
    assert_non_null(strstr(text, "name = wname\n"));
    assert_non_null(strstr(text, "numcpus = 2\n"));
    assert_non_null(strstr(text, "password = pass word\n"));
    assert_non_null(strstr(text, "umask = 027\n"));
    assert_non_null(strstr(text, "max-retries = 4\n"));
    assert_non_null(strstr(text, "delete-leftover-dirs = true\n"));
    assert_non_null(strstr(text, "proxy = http://px:3128\n"));
    char want[600];
    snprintf(want, sizeof want, "basedir = %s\n", base);
    assert_non_null(strstr(text, want));
    free(text);
    snprintf(path, sizeof path, "%s/info/host", base);
    text = read_text(path);
    assert_string_equal(text, "a test box\n");
    free(text);
    snprintf(path, sizeof path, "%s/info/admin", base);
    text = read_text(path);
    assert_string_equal(text, "Your Name Here <admin@youraddress.invalid>\n");
    free(text);
    cw_create_free(&cr);
    cw_opts_free(&o);

    /* again without --force: refused; the existing file stays */
    cw_opts_init(&o);
    char *again[] = {base, "m", "n", "p"};
    assert_int_equal(cw_create_worker_parse(&cr, &o, 4, again, err, sizeof err), 0);
    assert_true(cw_create_worker_run(&cr, &o, stdout, err, sizeof err) < 0);
    assert_non_null(strstr(err, "--force"));
    cw_create_free(&cr);
    cw_opts_free(&o);

    static const struct {
        int argc;
        char *argv[6];
        const char *frag;
    } bad[] = {
        {3, {"b", "m", "n"}, "BASEDIR MASTER NAME PASSWORD"},
        {6, {"--protocol", "pb", "b", "ws://m/", "n", "p"}, "conflicts with the master URL"},
        {5, {"--umask=abc", "b", "m", "n", "p"}, "--umask"},
        {5, {"--allow-shutdown=never", "b", "m", "n", "p"}, "allow-shutdown"},
        {5, {"--bogus", "b", "m", "n", "p"}, "--bogus"},
        {4, {"b", "http://m:1", "n", "p"}, "URL"},
        {4, {"b", "m", "n:x", "p"}, "':'"},
        {5, {"--proxy-connection-string=unix:/x", "b", "m", "n", "p"}, "proxy"},
        {5, {"b", "m", "n", "p", "extra"}, "too many"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cw_opts_init(&o);
        if (cw_create_worker_parse(&cr, &o, bad[i].argc, (char **)bad[i].argv, err, sizeof err) ==
            0)
            fail_msg("case %zu accepted", i);
        if (strstr(err, bad[i].frag) == NULL)
            fail_msg("case %zu: '%s' lacks '%s'", i, err, bad[i].frag);
        cw_opts_free(&o);
    }
    rm_rf(dir);
    free(dir);
}

static void test_hostport(void **state)
{
    char *h;
    int p;
    assert_int_equal(cw_hostport_parse("127.0.0.1:9101", &h, &p), 0);
    assert_string_equal(h, "127.0.0.1");
    assert_int_equal(p, 9101);
    free(h);
    assert_int_equal(cw_hostport_parse("[::]:1", &h, &p), 0);
    assert_string_equal(h, "::");
    free(h);
    assert_true(cw_hostport_parse("127.0.0.1", &h, &p) < 0);
    assert_true(cw_hostport_parse("localhost:1", &h, &p) < 0);
    assert_true(cw_hostport_parse("1.2.3.4:65536", &h, &p) < 0);
    assert_true(cw_hostport_parse("::1:80", &h, &p) < 0);
}

/* ------------------------------------------------------------------------ */
/* The buildbot/buildbot-worker container image's variables                 */
/* ------------------------------------------------------------------------ */

static void test_container(void **state)
{
    cw_opts_t o;
    cw_config_t cfg;
    /* every variable the image's buildbot.tac reads */
    const char *all[] = {"BUILDMASTER=bm.example",
                         "BUILDMASTER_PORT=9990",
                         "WORKERNAME=w7",
                         "WORKERPASS=s3cret",
                         "BUILDMASTER_PROTOCOL=msgpack_experimental_v7",
                         "BUILDBOT_BASEDIR=/data/w7",
                         NULL};
    load_ok(&(setup_t){.env = all}, &o, &cfg);
    assert_string_equal(cfg.master_host, "bm.example");
    assert_int_equal(cfg.master_port, 9990);
    assert_false(cfg.use_tls);
    assert_string_equal(cfg.name, "w7");
    assert_string_equal(cfg.password, "s3cret");
    assert_string_equal(cfg.basedir, "/data/w7");
    assert_string_equal(o.v[CW_OPT_MASTER].where, "BUILDMASTER, BUILDMASTER_PORT");
    assert_string_equal(o.v[CW_OPT_NAME].where, "WORKERNAME");
    assert_int_equal(o.v[CW_OPT_NAME].src, CW_SRC_CONTAINER);
    /* --check-config says where each value came from; the password stays hidden */
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    cw_config_format(f, &cfg, &o, true);
    fclose(f);
    assert_non_null(strstr(text, "# BUILDMASTER, BUILDMASTER_PORT\n"));
    assert_non_null(strstr(text, "# WORKERNAME\n"));
    assert_non_null(strstr(text, "# BUILDBOT_BASEDIR\n"));
    assert_non_null(strstr(text, "# password: set, hidden (WORKERPASS)"));
    assert_null(strstr(text, "s3cret"));
    free(text);
    /* --write-config turns them into a file that reads back the same */
    assert_roundtrip(&o, &cfg);
    done(&o, &cfg);

    /* the image's defaults: localhost:9989, docker, /buildbot; msgpack for
     * msgpack_experimental_v7 */
    const char *few[] = {"WORKERPASS=p", "BUILDMASTER_PROTOCOL=msgpack", NULL};
    load_ok(&(setup_t){.env = few}, &o, &cfg);
    assert_string_equal(cfg.master_host, "localhost");
    assert_int_equal(cfg.master_port, 9989);
    assert_string_equal(cfg.name, "docker");
    assert_string_equal(cfg.basedir, "/buildbot");
    assert_non_null(strstr(o.v[CW_OPT_NAME].where, "WORKERNAME"));
    assert_non_null(strstr(o.v[CW_OPT_BASEDIR].where, "default"));
    done(&o, &cfg);
    /* BUILDMASTER alone keeps the image's port; an IPv6 address gets brackets */
    const char *v6[] = {"BUILDMASTER=::1", "BUILDMASTER_PROTOCOL=msgpack", "WORKERPASS=p", NULL};
    load_ok(&(setup_t){.env = v6}, &o, &cfg);
    assert_string_equal(cfg.master_host, "::1");
    assert_int_equal(cfg.master_port, 9989);
    assert_string_equal(o.v[CW_OPT_MASTER].where, "BUILDMASTER");
    done(&o, &cfg);

    /* explicit settings win, each of its own: a flag, CWORKER_*, the config
     * file, the tac */
    const char *mixed[] = {"BUILDMASTER=bm.example",
                           "BUILDMASTER_PORT=9990",
                           "WORKERNAME=w7",
                           "WORKERPASS=s3cret",
                           "BUILDMASTER_PROTOCOL=msgpack_experimental_v7",
                           "BUILDBOT_BASEDIR=/data/w7",
                           "CWORKER_NAME=env-name",
                           NULL};
    load_ok(&(setup_t){.argv = ARGV("--basedir", "/flag"),
                       .env = mixed,
                       .conf = "password-file = pw\n"},
            &o, &cfg);
    assert_string_equal(cfg.basedir, "/flag");
    assert_string_equal(cfg.name, "env-name");
    assert_string_equal(cfg.password_file, "/etc/cworker/pw");
    assert_null(cfg.password);
    assert_string_equal(cfg.master_host, "bm.example"); /* nothing else set it */
    done(&o, &cfg);
    load_ok(&(setup_t){.env = mixed,
                       .tac = "buildmaster_host = 'tac-master'\nport = 4\nworkername = 'tac'\n"
                              "passwd = 'tacpw'\nbasedir = '/tb'\n"
                              "protocol = 'msgpack_experimental_v7'\n"},
            &o, &cfg);
    assert_string_equal(cfg.master_host, "tac-master"); /* the tac beats the container */
    assert_string_equal(cfg.password, "tacpw");
    assert_string_equal(cfg.basedir, "/tb");
    done(&o, &cfg);

    /* a master configured another way: the image's defaults do not apply
     * (no /buildbot), its other variables still count below everything else,
     * and its protocol was about another port (dropped: pb anyway, no note) */
    const char *other[] = {"BUILDMASTER=bm", "BUILDMASTER_PROTOCOL=pb", "WORKERPASS=p", NULL};
    load_fails(&(setup_t){.argv = ARGV("--master", "h:1", "--name", "n"), .env = other},
               "no base directory", "BUILDBOT_BASEDIR", NULL);
    load_ok(
        &(setup_t){.argv = ARGV("--master", "h:1", "--name", "n", "--basedir", "/b"), .env = other},
        &o, &cfg);
    assert_string_equal(cfg.master_host, "h");
    assert_string_equal(cfg.password, "p");
    assert_int_equal(o.v[CW_OPT_PROTOCOL].src, CW_SRC_DEFAULT);
    assert_int_equal(cfg.protocol, CW_PROTO_PB);
    assert_int_equal(o.nnotes, 0);
    done(&o, &cfg);

    /* pb, the image's default protocol, works: unset, or set */
    const char *nopro[] = {"BUILDMASTER=bm", "WORKERPASS=p", NULL};
    load_ok(&(setup_t){.env = nopro}, &o, &cfg);
    assert_int_equal(cfg.protocol, CW_PROTO_PB);
    assert_non_null(strstr(o.v[CW_OPT_PROTOCOL].where, "no BUILDMASTER_PROTOCOL"));
    done(&o, &cfg);
    const char *pb[] = {"BUILDMASTER=bm", "WORKERPASS=p", "BUILDMASTER_PROTOCOL=pb", NULL};
    load_ok(&(setup_t){.env = pb}, &o, &cfg);
    assert_int_equal(cfg.protocol, CW_PROTO_PB);
    done(&o, &cfg);
    const char *odd[] = {"BUILDMASTER=bm", "WORKERPASS=p", "BUILDMASTER_PROTOCOL=http", NULL};
    load_fails(&(setup_t){.env = odd}, "protocol 'http'", "msgpack_experimental_v7", NULL);
    /* a bad port names both variables; an empty variable is unset */
    const char *port[] = {"BUILDMASTER=bm", "BUILDMASTER_PORT=x", "WORKERPASS=p",
                          "BUILDMASTER_PROTOCOL=msgpack", NULL};
    load_fails(&(setup_t){.env = port}, "BUILDMASTER, BUILDMASTER_PORT: master 'bm:x'", NULL);
    const char *empty[] = {"BUILDMASTER=", "WORKERNAME=", NULL};
    load_fails(&(setup_t){.env = empty}, "no master", "CWORKER_MASTER", "BUILDMASTER", NULL);
    /* a bad value's message shows the variable, never the password */
    const char *name[] = {"WORKERNAME=a:b", "WORKERPASS=topsecret", "BUILDMASTER_PROTOCOL=msgpack",
                          NULL};
    cw_config_t c2;
    char err[1024];
    assert_true(load(&(setup_t){.env = name}, &o, &c2, err, sizeof err) < 0);
    assert_non_null(strstr(err, "WORKERNAME: name 'a:b'"));
    done(&o, &c2);
    const char *pw[] = {"WORKERPASS=", "CWORKER_PASSWORD_FILE=", "BUILDMASTER=bm",
                        "BUILDMASTER_PROTOCOL=msgpack", NULL};
    load_fails(&(setup_t){.env = pw}, "no password", "WORKERPASS", NULL);
}

static void test_env_scrub(void **state)
{
    setenv("WORKERPASS", "p1", 1);
    setenv("CWORKER_PASSWORD", "p2", 1);
    setenv("SECRET_A", "1", 1);
    setenv("SECRET_B", "2", 1);
    setenv("TOKEN", "3", 1);
    setenv("TOKEN2", "4", 1);
    setenv("KEEP_ME", "5", 1);
    setenv("path_like", "6", 1);
    setenv("WORKER_ENVIRONMENT_BLACKLIST", " SECRET_*\tTOKEN  [p]ath_?ike ", 1);
    cw_env_scrub();
    static const char *gone[] = {"WORKERPASS", "CWORKER_PASSWORD", "SECRET_A", "SECRET_B",
                                 "TOKEN",      "path_like"};
    for (size_t i = 0; i < sizeof gone / sizeof gone[0]; i++)
        if (getenv(gone[i]))
            fail_msg("%s is still in the environment", gone[i]);
    assert_string_equal(getenv("TOKEN2"), "4"); /* whole names only */
    assert_string_equal(getenv("KEEP_ME"), "5");
    assert_non_null(getenv("WORKER_ENVIRONMENT_BLACKLIST")); /* as the image leaves it */
    assert_non_null(getenv("PATH"));
    /* without a blacklist only the passwords go; a pattern may name the
     * blacklist variable itself */
    unsetenv("WORKER_ENVIRONMENT_BLACKLIST");
    setenv("WORKERPASS", "p1", 1);
    cw_env_scrub();
    assert_null(getenv("WORKERPASS"));
    assert_string_equal(getenv("TOKEN2"), "4");
    setenv("WORKER_ENVIRONMENT_BLACKLIST", "WORKER_* TOKEN2", 1);
    cw_env_scrub();
    assert_null(getenv("WORKER_ENVIRONMENT_BLACKLIST"));
    assert_null(getenv("TOKEN2"));
    assert_string_equal(getenv("KEEP_ME"), "5");
    unsetenv("KEEP_ME");
}

/* ------------------------------------------------------------------------ */
/* sd_notify                                                                */
/* ------------------------------------------------------------------------ */

/* Receive one datagram (waiting at most 1 s) into buf. */
static ssize_t recv_one(int fd, char *buf, size_t cap)
{
    struct timeval tv = {1, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ssize_t n = recv(fd, buf, cap - 1, 0);
    if (n >= 0)
        buf[n] = '\0';
    return n;
}

static void test_notify_path_socket(void **state)
{
    char *dir = tmpdir();
    char path[512];
    snprintf(path, sizeof path, "%s/notify", dir);
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    assert_true(strlen(path) < sizeof a.sun_path);
    memcpy(a.sun_path, path, strlen(path) + 1);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);

    setenv("NOTIFY_SOCKET", path, 1);
    setenv("WATCHDOG_USEC", "30000000", 1);
    char pid[32];
    snprintf(pid, sizeof pid, "%d", (int)getpid());
    setenv("WATCHDOG_PID", pid, 1);
    assert_int_equal(cw_notify_init(), 0);
    /* the variables do not reach build steps */
    assert_null(getenv("NOTIFY_SOCKET"));
    assert_null(getenv("WATCHDOG_USEC"));
    assert_null(getenv("WATCHDOG_PID"));
    assert_int_equal(cw_notify_watchdog_interval_ms(), 15000);

    char buf[1024];
    assert_int_equal(cw_notify_ready(), 0);
    assert_true(recv_one(fd, buf, sizeof buf) > 0);
    assert_string_equal(buf, "READY=1");
    assert_int_equal(cw_notify_status("attached to master %s:%d\nINJECTED=1", "bm", 9989), 0);
    assert_true(recv_one(fd, buf, sizeof buf) > 0);
    assert_string_equal(buf, "STATUS=attached to master bm:9989 INJECTED=1");
    assert_int_equal(cw_notify_watchdog(), 0);
    assert_true(recv_one(fd, buf, sizeof buf) > 0);
    assert_string_equal(buf, "WATCHDOG=1");
    assert_int_equal(cw_notify_stopping(), 0);
    assert_true(recv_one(fd, buf, sizeof buf) > 0);
    assert_string_equal(buf, "STOPPING=1");

    /* the receiver is gone: an error, not a crash or a block */
    close(fd);
    unlink(path);
    assert_true(cw_notify_ready() < 0);
    rm_rf(dir);
    free(dir);
}

static void test_notify_abstract_socket(void **state)
{
    char name[64];
    snprintf(name, sizeof name, "cworker-test-notify-%d", (int)getpid());
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    memcpy(a.sun_path + 1, name, strlen(name));
    socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + strlen(name));
    assert_int_equal(bind(fd, (struct sockaddr *)&a, len), 0);
    char env[80];
    snprintf(env, sizeof env, "@%s", name);
    setenv("NOTIFY_SOCKET", env, 1);
    unsetenv("WATCHDOG_USEC");
    assert_int_equal(cw_notify_init(), 0);
    assert_int_equal(cw_notify_watchdog_interval_ms(), 0);
    assert_int_equal(cw_notify("READY=1\nSTATUS=both"), 0);
    char buf[256];
    assert_true(recv_one(fd, buf, sizeof buf) > 0);
    assert_string_equal(buf, "READY=1\nSTATUS=both");
    close(fd);
}

static void test_notify_environment(void **state)
{
    /* not under systemd: everything is a silent no-op */
    unsetenv("NOTIFY_SOCKET");
    assert_int_equal(cw_notify_init(), 0);
    assert_int_equal(cw_notify_ready(), 0);
    assert_int_equal(cw_notify_status("x"), 0);
    /* malformed values */
    setenv("NOTIFY_SOCKET", "relative/path", 1);
    assert_int_equal(cw_notify_init(), -EINVAL);
    static const struct {
        const char *usec, *pid;
        uint64_t want;
    } wd[] = {
        {"1000000", NULL, 500}, {"1000", NULL, 1},   {"0", NULL, 0},
        {"abc", NULL, 0},       {"-5", NULL, 0},     {"99999999999999999999999", NULL, 0},
        {"1000000", "1", 0},    {"1000000", "x", 0},
    };
    for (size_t i = 0; i < sizeof wd / sizeof wd[0]; i++) {
        setenv("WATCHDOG_USEC", wd[i].usec, 1);
        if (wd[i].pid)
            setenv("WATCHDOG_PID", wd[i].pid, 1);
        else
            unsetenv("WATCHDOG_PID");
        cw_notify_init();
        if (cw_notify_watchdog_interval_ms() != wd[i].want)
            fail_msg("WATCHDOG_USEC=%s WATCHDOG_PID=%s: %llu ms", wd[i].usec,
                     wd[i].pid ? wd[i].pid : "-",
                     (unsigned long long)cw_notify_watchdog_interval_ms());
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_conf_syntax),
        cmocka_unit_test(test_conf_errors),
        cmocka_unit_test(test_argv),
        cmocka_unit_test(test_master_forms),
        cmocka_unit_test(test_precedence),
        cmocka_unit_test(test_password_rules),
        cmocka_unit_test(test_proxy_parse),
        cmocka_unit_test(test_no_proxy),
        cmocka_unit_test(test_proxy_resolution),
        cmocka_unit_test(test_tac_stock),
        cmocka_unit_test(test_tac_strings),
        cmocka_unit_test(test_tac_protocol_and_modes),
        cmocka_unit_test(test_tac_master_errors),
        cmocka_unit_test(test_format),
        cmocka_unit_test(test_finish_and_write),
        cmocka_unit_test(test_create_worker),
        cmocka_unit_test(test_hostport),
        cmocka_unit_test(test_container),
        cmocka_unit_test(test_env_scrub),
        cmocka_unit_test(test_notify_path_socket),
        cmocka_unit_test(test_notify_abstract_socket),
        cmocka_unit_test(test_notify_environment),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
