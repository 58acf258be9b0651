/* cworker: command line, configuration, start-up. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "options.h"
#include "cw_config.h"
#include "log.h"
#include "notify.h"
#include "resolve.h"
#include "worker.h"

extern char **environ;

/* Report a configuration or usage error; exit code 2. */
static int config_error(const char *msg)
{
    fprintf(stderr, "cworker: %s\nTry 'cworker --help'.\n", msg);
    return 2;
}

/* `cworker create-worker ...`: 0, or 2 for bad usage / failure to create. */
static int create_worker(cw_opts_t *o)
{
    char err[1024];
    cw_create_t cr;
    if (cw_create_worker_parse(&cr, o, o->create_argc, o->create_argv, err, sizeof err) < 0) {
        fprintf(stderr, "cworker: %s\nTry 'cworker create-worker --help'.\n", err);
        return 2;
    }
    if (o->action == CW_ACTION_HELP) {
        cw_create_worker_usage(stdout);
        cw_create_free(&cr);
        return 0;
    }
    int rc = cw_create_worker_run(&cr, o, stdout, err, sizeof err);
    cw_create_free(&cr);
    if (rc < 0) {
        fprintf(stderr, "cworker: %s\n", err);
        return 2;
    }
    return 0;
}

/* Set the configured umask, or read the inherited one; the worker then
 * knows the real mask (cmd_transfer's file modes). */
static void apply_umask(cw_config_t *cfg)
{
    if (cfg->umask >= 0) {
        umask((mode_t)cfg->umask);
    } else {
        /* the umask can only be read by setting it; no thread exists yet */
        mode_t cur = umask(022);
        umask(cur);
        cfg->umask = (long)cur;
    }
}

/* WATCHDOG=1 from the loop: proves to systemd that the loop still turns. */
static void watchdog_cb(uv_timer_t *t)
{
    (void)t;
    cw_notify_watchdog();
}

static void pool_probe_thread(void *arg)
{
    (void)arg;
}

static void pool_noop(uv_work_t *req)
{
    (void)req;
}

static void pool_noop_done(uv_work_t *req, int status)
{
    (void)req;
    (void)status;
}

/* Start libuv's thread pool now, where a failure can be reported.  libuv
 * creates its threads on first use (name resolution, file commands) and
 * calls abort() when it cannot (the process limit, ulimit -u, reached): a
 * SIGABRT with nothing in the log.  So first create as many threads as the
 * pool will, with its 8 MiB stacks; if that works, let the pool start.
 * 0, or the error of the thread that could not be created. */
static int start_thread_pool(uv_loop_t *loop)
{
    unsigned n = 4; /* libuv's default pool size */
    const char *env = getenv("UV_THREADPOOL_SIZE");
    if (env != NULL && atoi(env) > 0)
        n = (unsigned)atoi(env) > 1024 ? 1024 : (unsigned)atoi(env);
    uv_thread_options_t opt = {.flags = UV_THREAD_HAS_STACK_SIZE, .stack_size = 8u << 20};
    uv_thread_t *t = calloc(n, sizeof *t);
    if (t == NULL)
        return UV_ENOMEM;
    unsigned made = 0;
    int rc = 0;
    for (; made < n; made++)
        if ((rc = uv_thread_create_ex(&t[made], &opt, pool_probe_thread, NULL)) != 0)
            break;
    for (unsigned i = 0; i < made; i++)
        uv_thread_join(&t[i]);
    free(t);
    if (rc != 0)
        return rc;
    uv_work_t req;
    rc = uv_queue_work(loop, &req, pool_noop, pool_noop_done);
    if (rc == 0)
        uv_run(loop, UV_RUN_DEFAULT); /* nothing else is on the loop yet */
    return rc;
}

/* Run the worker until it stops; returns its exit code. */
static int run_worker(cw_config_t *cfg, cw_opts_t *o)
{
    /* the password must not reach build steps (logEnviron shows the
     * environment in every build log): CWORKER_PASSWORD, WORKERPASS and
     * what WORKER_ENVIRONMENT_BLACKLIST names, as the container image does */
    cw_env_scrub();
    /* The stock worker runs in its basedir; relative paths in builds expect it. */
    if (chdir(cfg->basedir) < 0) {
        cw_error("cannot enter basedir '%s': %s", cfg->basedir, strerror(errno));
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    /* the locale (for libarchive's name conversions) is set by the first
     * directory upload: cmd/transfer.c, tar_locale_once() */
    for (size_t i = 0; i < o->nnotes; i++)
        cw_info("note: %s", o->notes[i]);
    /* before the worker copies the environment for its children */
    if (cw_notify_init() < 0)
        cw_warn("NOTIFY_SOCKET is malformed; not notifying systemd");

    uv_loop_t *loop = uv_default_loop();
    int rc = 0;
    for (int attempt = 1; attempt <= 3; attempt++) {
        rc = start_thread_pool(loop);
        if (rc == 0)
            break;
        cw_error("cannot start threads: %s (is the user's process limit, ulimit -u, reached?)%s",
                 uv_strerror(rc), attempt < 3 ? "; trying again in 2 s" : "");
        if (attempt < 3)
            sleep(2); /* nothing runs yet: no loop to keep turning */
    }
    if (rc != 0)
        return 1;
    cw_worker_t w;
    rc = cw_worker_init(&w, loop, cfg);
    if (rc < 0) {
        cw_error("cannot start: %s", cw_strerror(rc));
        return 1;
    }
    cw_notify_ready();
    cw_notify_status("connecting to master %s:%d", cfg->master_host, cfg->master_port);
    uv_timer_t watchdog;
    uint64_t wd = cw_notify_watchdog_interval_ms();
    uv_timer_init(loop, &watchdog);
    if (wd) {
        cw_debug("systemd watchdog: pinging every %llu ms", (unsigned long long)wd);
        uv_timer_start(&watchdog, watchdog_cb, wd, wd);
    }
    uv_unref((uv_handle_t *)&watchdog); /* never keeps the loop alive by itself */

    uv_run(loop, UV_RUN_DEFAULT);
    uv_close((uv_handle_t *)&watchdog, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
    int exit_code = w.exit_code;
    rc = uv_loop_close(loop);
    if (rc != 0) {
        /* Something we gave up on is still in flight, maybe a thread-pool
         * call blocked in the kernel.  libuv's exit handler would wait for
         * its pool threads: leave without running it. */
        cw_info("exited (leaving %s behind)", uv_strerror(rc));
        _exit(exit_code);
    }
    cw_info("exited");
    return exit_code;
}

int main(int argc, char **argv)
{
    char err[1024];
    cw_opts_t o;
    cw_config_t cfg;
    int rc;
    cw_opts_init(&o);
    memset(&cfg, 0, sizeof cfg);
    if (cw_opts_parse_argv(&o, argc, argv, err, sizeof err) < 0) {
        rc = config_error(err);
        goto out;
    }
    switch (o.action) {
    case CW_ACTION_HELP:
        cw_config_usage(stdout);
        rc = 0;
        goto out;
    case CW_ACTION_VERSION:
        printf("cworker %s (protocols pb and msgpack_experimental_v7, command version %s, "
               "resolver %s, tls %s)\n",
               CW_VERSION_STRING, CW_COMMAND_VERSION, cw_resolve_backend(), CW_TLS_BACKEND);
        rc = 0;
        goto out;
    case CW_ACTION_CREATE:
        rc = create_worker(&o);
        goto out;
    case CW_ACTION_DOC:
        if (cw_opts_doc(stdout, o.doc_format) < 0) {
            rc = config_error("--help-table takes man or markdown");
            goto out;
        }
        rc = fflush(stdout) == 0 ? 0 : 1;
        goto out;
    default:
        break;
    }
    if (cw_opts_parse_env(&o, environ, err, sizeof err) < 0 ||
        cw_opts_load_files(&o, err, sizeof err) < 0 ||
        cw_config_resolve(&o, environ, &cfg, err, sizeof err) < 0) {
        rc = config_error(err);
        goto out;
    }
    bool run = o.action == CW_ACTION_RUN;
    if (run) {
        apply_umask(&cfg); /* first, as the stock worker does: the basedir gets it too */
        /* from here on, errors are log lines (JSON with --log-format json) */
        cw_log_setup("cworker", cfg.verbose ? CW_LOG_DEBUG : CW_LOG_INFO,
                     cfg.log_format ? CW_LOG_JSON : CW_LOG_TEXT);
    }
    if (cw_config_finish(&cfg, &o, run, err, sizeof err) < 0) {
        if (run)
            cw_error("%s", err);
        else
            fprintf(stderr, "cworker: %s\n", err);
        rc = 2;
        goto out;
    }
    if (run && cfg.log_file) {
        cw_info("logging to %s", cfg.log_file); /* the last line on stderr */
        int lrc = cw_log_open_file(cfg.log_file, cfg.log_size, cfg.log_count);
        if (lrc < 0) {
            cw_error("cannot open log-file '%s' (%s): %s", cfg.log_file, o.v[CW_OPT_LOG_FILE].where,
                     strerror(-lrc));
            rc = 2;
            goto out;
        }
    }
    switch (o.action) {
    case CW_ACTION_CHECK:
        cw_config_format(stdout, &cfg, &o, true);
        rc = fflush(stdout) == 0 ? 0 : 1;
        break;
    case CW_ACTION_WRITE:
        for (size_t i = 0; i < o.nnotes; i++)
            fprintf(stderr, "cworker: note: %s\n", o.notes[i]);
        if (cw_config_write(o.write_config, &cfg, &o, o.force, err, sizeof err) < 0) {
            fprintf(stderr, "cworker: %s\n", err);
            rc = 2;
            break;
        }
        fprintf(stderr, "cworker: wrote %s (mode 0600); run: cworker --config %s\n", o.write_config,
                o.write_config);
        rc = 0;
        break;
    default:
        rc = run_worker(&cfg, &o);
        break;
    }
out:
    cw_config_free(&cfg);
    cw_opts_free(&o);
    return rc;
}
