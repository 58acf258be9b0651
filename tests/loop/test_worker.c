/* Loop tests of the worker and the master endpoint together, in one
 * process on one libuv loop over loopback TCP (no Buildbot master): attach,
 * a command through the endpoint, the drain and stop sequences phase by
 * phase, a dead link and the reconnect, a lost link killing the command,
 * and the state tables of docs/design.md against the code. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cmd/proc.h"
#include "cworker/msg.h"
#include "log.h"
#include "looptest.h"
#include "master.h"
#include "worker.h"

extern char **environ;

typedef struct world {
    uv_loop_t *loop;
    cw_master_t master;
    int port;
    char dir[64];
    cw_opts_t opts;
    cw_config_t cfg;
    cw_worker_t w;
    bool worker_up;
    /* what the master saw */
    int attaches, detaches;
    cw_mworker_t *mw;
    bool done; /* the remote command completed */
    bool has_rc;
    int64_t rc;
    bool lost;
    cw_buf_t out;
    /* stop phases the worker went through (polled) */
    cw_stop_phase_t seen[16];
    size_t nseen;
} world_t;

static world_t *W;

static void m_attach(cw_master_t *m, cw_mworker_t *mw)
{
    world_t *w = m->data;
    w->attaches++;
    w->mw = mw;
}

static void m_detach(cw_master_t *m, cw_mworker_t *mw, const char *why)
{
    world_t *w = m->data;
    w->detaches++;
    if (w->mw == mw)
        w->mw = NULL;
}

static const cw_master_callbacks_t master_cb = {.on_attach = m_attach, .on_detach = m_detach};

static void r_update(cw_remote_t *r, cw_str_t key, const msgpack_object *v)
{
    world_t *w = r->data;
    if (cw_str_eq(key, "stdout") && v->type == MSGPACK_OBJECT_ARRAY && v->via.array.size == 3 &&
        v->via.array.ptr[0].type == MSGPACK_OBJECT_STR)
        cw_buf_append(&w->out, v->via.array.ptr[0].via.str.ptr, v->via.array.ptr[0].via.str.size);
}

static void r_complete(cw_remote_t *r, bool has_rc, int64_t rc, const char *failure, bool lost)
{
    world_t *w = r->data;
    w->done = true;
    w->has_rc = has_rc;
    w->rc = rc;
    w->lost = lost;
}

static const cw_remote_callbacks_t remote_cb = {.on_update = r_update, .on_complete = r_complete};

/* Start the endpoint and a worker configured by extra flags. */
static int setup_with(void **state, const char *const *extra)
{
    world_t *w = calloc(1, sizeof *w);
    W = w;
    w->loop = uv_default_loop();
    snprintf(w->dir, sizeof w->dir, "/tmp/cw-loopw-XXXXXX");
    if (mkdtemp(w->dir) == NULL)
        return -1;
    cw_master_options_t mo;
    cw_master_options_default(&mo);
    mo.dup_timeout_ms = 500; /* a stalled old link is given up quickly */
    if (cw_master_init(&w->master, w->loop, &mo, &master_cb, w) < 0 ||
        cw_master_add_account(&w->master, "w1", "pw") < 0 ||
        cw_master_listen(&w->master, "127.0.0.1", 0, &w->port) < 0)
        return -1;
    char pwfile[128], master[64], basedir[128];
    snprintf(pwfile, sizeof pwfile, "%s/pw", w->dir);
    FILE *f = fopen(pwfile, "w");
    fputs("pw\n", f);
    fclose(f);
    chmod(pwfile, 0600);
    snprintf(master, sizeof master, "127.0.0.1:%d", w->port);
    snprintf(basedir, sizeof basedir, "%s/basedir", w->dir);
    char *argv[32] = {"cworker", "--master",        master, "--protocol",
                      "msgpack", "--name",          "w1",   "--basedir",
                      basedir,   "--password-file", pwfile, "--backoff-max",
                      "1"};
    int argc = 13;
    for (size_t i = 0; extra && extra[i]; i++)
        argv[argc++] = (char *)extra[i];
    char err[512];
    static char *no_env[] = {NULL};
    cw_opts_init(&w->opts);
    if (cw_opts_parse_argv(&w->opts, argc, argv, err, sizeof err) < 0 ||
        cw_opts_parse_env(&w->opts, no_env, err, sizeof err) < 0 ||
        cw_opts_load_files(&w->opts, err, sizeof err) < 0 ||
        cw_config_resolve(&w->opts, no_env, &w->cfg, err, sizeof err) < 0 ||
        cw_config_finish(&w->cfg, &w->opts, true, err, sizeof err) < 0) {
        fprintf(stderr, "config: %s\n", err);
        return -1;
    }
    if (w->cfg.umask < 0)
        w->cfg.umask = 022;
    if (cw_worker_init(&w->w, w->loop, &w->cfg) < 0)
        return -1;
    w->worker_up = true;
    *state = w;
    return 0;
}

static int setup(void **state)
{
    return setup_with(state, NULL);
}

static int setup_dead(void **state)
{
    static const char *const extra[] = {"--dead-timeout", "1", "--ping-interval", "0.3", NULL};
    return setup_with(state, extra);
}

static bool attached(world_t *w)
{
    return w->mw != NULL && w->mw->state == CW_MW_ATTACHED;
}

/* Run the loop until cond(w) or timeout_ms; records stop phases as seen. */
static bool run_cond(world_t *w, bool (*cond)(world_t *), uint64_t timeout_ms)
{
    uint64_t end = now_ms() + timeout_ms;
    while (!cond(w) && now_ms() < end) {
        bool never = false;
        run_until(w->loop, &never, 10);
        if (w->worker_up && (w->nseen == 0 || w->seen[w->nseen - 1] != w->w.stop_phase) &&
            w->nseen < 16)
            w->seen[w->nseen++] = w->w.stop_phase;
    }
    return cond(w);
}

static bool is_done(world_t *w)
{
    return w->done;
}

static bool stopped(world_t *w)
{
    return w->w.stop_phase == CW_STOP_STOPPED;
}

static int teardown(void **state)
{
    world_t *w = *state;
    if (w->w.stop_phase != CW_STOP_STOPPED)
        cw_worker_stop(&w->w, 0, "test teardown");
    run_cond(w, stopped, 20000);
    cw_master_close(&w->master);
    bool out = run_out(w->loop, 10000);
    int rc = uv_loop_close(w->loop);
    cw_config_free(&w->cfg);
    cw_opts_free(&w->opts);
    cw_buf_free(&w->out);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", w->dir);
    int sys = system(cmd);
    free(w);
    assert_true(out);
    assert_int_equal(rc, 0);
    assert_int_equal(sys, 0);
    return 0;
}

/* A shell command on the worker, through the endpoint. */
static cw_remote_t *run_shell(world_t *w, const char *script)
{
    cw_buf_t b = CW_BUF_INIT;
    msgpack_packer pk;
    cw_pack_init(&pk, &b);
    msgpack_pack_map(&pk, 2);
    cw_pack_str(&pk, "command");
    msgpack_pack_array(&pk, 3);
    cw_pack_str(&pk, "sh");
    cw_pack_str(&pk, "-c");
    cw_pack_str(&pk, script);
    cw_pack_str(&pk, "workdir");
    cw_pack_str(&pk, w->dir);
    w->done = false;
    cw_remote_t *r = cw_remote_start(w->mw, "shell", b.data, b.len, &remote_cb, w);
    cw_buf_free(&b);
    assert_non_null(r);
    return r;
}

static void test_attach_and_run(void **state)
{
    world_t *w = *state;
    assert_true(run_cond(w, attached, 5000));
    assert_int_equal(w->w.link_state, CW_LINK_ATTACHED);
    assert_true(cw_mworker_has_command(w->mw, "shell"));
    run_shell(w, "echo hello loop");
    assert_true(run_cond(w, is_done, 5000));
    assert_true(w->has_rc);
    assert_int_equal(w->rc, 0);
    cw_buf_append(&w->out, "", 1);
    assert_string_equal((const char *)w->out.data, "hello loop\n");
}

/* SIGTERM while a command runs: DRAIN (the command finishes, rc 0), ACKS,
 * LINGER, CLOSE, STOPPED. */
static void test_drain(void **state)
{
    world_t *w = *state;
    assert_true(run_cond(w, attached, 5000));
    run_shell(w, "sleep 0.4; echo drained");
    bool never = false;
    run_until(w->loop, &never, 100);
    raise(SIGTERM);
    assert_true(run_cond(w, stopped, 10000));
    assert_true(w->done);
    assert_int_equal(w->rc, 0);
    assert_false(w->lost);
    assert_int_equal(w->w.exit_code, 0);
    /* the phases, in order (each recorded as the loop saw it) */
    bool drain = false, linger = false;
    for (size_t i = 0; i < w->nseen; i++) {
        drain |= w->seen[i] == CW_STOP_DRAIN;
        linger |= w->seen[i] == CW_STOP_LINGER;
        if (i > 0)
            assert_true(w->seen[i] > w->seen[i - 1]);
    }
    assert_true(drain);
    assert_true(linger);
    assert_int_equal(w->w.link_state, CW_LINK_DOWN);
}

/* An explicit stop: INTERRUPT kills the command (rc -1), then STOPPED,
 * without the drain's linger. */
static void test_stop_interrupts(void **state)
{
    world_t *w = *state;
    assert_true(run_cond(w, attached, 5000));
    run_shell(w, "sleep 30");
    bool never = false;
    run_until(w->loop, &never, 200);
    uint64_t t0 = now_ms();
    cw_worker_stop(&w->w, 3, "test stop");
    assert_true(run_cond(w, stopped, 10000));
    assert_true(now_ms() - t0 < 3000);
    assert_true(w->done);
    assert_int_equal(w->rc, -1);
    assert_int_equal(w->w.exit_code, 3);
    for (size_t i = 0; i < w->nseen; i++)
        assert_true(w->seen[i] != CW_STOP_DRAIN && w->seen[i] != CW_STOP_KILL);
    assert_int_equal(cw_proc_live_count(), 0);
}

static bool reattached(world_t *w)
{
    return w->attaches >= 2 && attached(w);
}

/* The master stops reading: the worker calls the link dead after its
 * timeout, kills the running command, and attaches again. */
static void test_dead_link(void **state)
{
    world_t *w = *state;
    assert_true(run_cond(w, attached, 5000));
    run_shell(w, "sleep 30");
    bool never = false;
    run_until(w->loop, &never, 200);
    cw_conn_pause_reading(&w->mw->conn, true);
    uv_read_stop((uv_stream_t *)&w->mw->conn.tcp);
    uint64_t t0 = now_ms();
    assert_true(run_cond(w, reattached, 10000));
    assert_true(now_ms() - t0 >= 900);
    assert_true(w->done);
    assert_true(w->lost);
    /* the command's process group went with the link */
    uint64_t end = now_ms() + 3000;
    while (cw_proc_live_count() > 0 && now_ms() < end)
        run_until(w->loop, &never, 20);
    assert_int_equal(cw_proc_live_count(), 0);
}

/* The same silence while the link's liveness is held (a relay's tunnel
 * resuming): nothing happens, the command runs on; released, the silence
 * counts from then and the link is dead a timeout later. */
static void test_held_liveness(void **state)
{
    world_t *w = *state;
    assert_true(run_cond(w, attached, 5000));
    run_shell(w, "sleep 30");
    bool never = false;
    run_until(w->loop, &never, 200);
    cw_conn_pause_reading(&w->mw->conn, true);
    uv_read_stop((uv_stream_t *)&w->mw->conn.tcp);
    cw_link_t *l = w->w.link;
    l->ops->hold_liveness(l, true);
    run_until(w->loop, &never, 2500); /* 2.5 dead timeouts */
    assert_ptr_equal(w->w.link, l);
    assert_int_equal(w->attaches, 1);
    assert_false(w->lost);
    assert_false(w->done);
    assert_int_equal(cw_proc_live_count(), 1);
    uint64_t t0 = now_ms();
    l->ops->hold_liveness(l, false);
    assert_true(run_cond(w, reattached, 10000));
    assert_true(now_ms() - t0 >= 900);
    assert_true(w->lost);
}

/* ---- the state tables of docs/design.md ---- */

/* The rows of the table under the heading that contains `title`: lines
 * "| from | to, to, ... |".  Returns how many were read. */
static size_t read_table(const char *title, char from[][64], char to[][256], size_t max)
{
    FILE *f = fopen(CW_SOURCE_ROOT "/docs/design.md", "r");
    assert_non_null(f);
    char line[512];
    bool in = false, table = false;
    size_t n = 0;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "#", 1) == 0) {
            in = strstr(line, title) != NULL;
            table = false;
            continue;
        }
        /* the table whose header says "may move to", up to its end */
        if (in && line[0] == '|' && strstr(line, "may move to")) {
            table = true;
            continue;
        }
        if (line[0] != '|')
            table = false;
        if (!in || !table || strstr(line, "---"))
            continue;
        char a[64], b[256] = "";
        int got = sscanf(line, "| %63[^|]| %255[^|]|", a, b);
        if (got < 1 || n >= max)
            continue;
        if (got == 1)
            b[0] = '\0'; /* a final state: moves nowhere */
        for (char *p = a + strlen(a); p > a && (p[-1] == ' ' || p[-1] == '`'); *--p = '\0')
            ;
        char *pa = a;
        while (*pa == '`')
            pa++;
        for (char *p = b + strlen(b); p > b && p[-1] == ' '; *--p = '\0')
            ;
        snprintf(from[n], 64, "%s", pa);
        snprintf(to[n], 256, "%s", b);
        n++;
    }
    fclose(f);
    return n;
}

/* Every pair (a, b): allowed in code iff listed in the doc's row for a. */
static void check_table(const char *title, int count, const char *(*name)(int),
                        bool (*allowed)(int, int))
{
    char from[16][64], to[16][256];
    size_t n = read_table(title, from, to, 16);
    assert_int_equal(n, (size_t)count);
    for (size_t r = 0; r < n; r++) {
        int a = -1;
        for (int k = 0; k < count; k++)
            if (strcmp(from[r], name(k)) == 0)
                a = k;
        if (a < 0)
            fail_msg("%s: unknown state '%s' in docs/design.md", title, from[r]);
        for (int b = 0; b < count; b++) {
            char want[32];
            snprintf(want, sizeof want, "`%s`", name(b));
            bool doc = strstr(to[r], want) != NULL;
            if (doc != allowed(a, b))
                fail_msg("%s: %s -> %s is %s in the code but %s in docs/design.md", title, name(a),
                         name(b), allowed(a, b) ? "allowed" : "not allowed",
                         doc ? "listed" : "not listed");
        }
    }
}

static const char *link_name(int s)
{
    return cw_link_state_name((cw_link_state_t)s);
}
static bool link_ok(int a, int b)
{
    return cw_link_state_allowed((cw_link_state_t)a, (cw_link_state_t)b);
}
static const char *stop_name(int s)
{
    return cw_stop_phase_name((cw_stop_phase_t)s);
}
static bool stop_ok(int a, int b)
{
    return cw_stop_phase_allowed((cw_stop_phase_t)a, (cw_stop_phase_t)b);
}
static const char *cmd_name(int s)
{
    return cw_cmd_phase_name((cw_cmd_phase_t)s);
}
static bool cmd_ok(int a, int b)
{
    return cw_cmd_phase_allowed((cw_cmd_phase_t)a, (cw_cmd_phase_t)b);
}

static void test_state_tables_match_docs(void **state)
{
    (void)state;
    check_table("The link's states", CW_LINK_STATES, link_name, link_ok);
    check_table("The stop sequence", CW_STOP_PHASES, stop_name, stop_ok);
    check_table("A command's phases", CW_CMD_PHASES, cmd_name, cmd_ok);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    cw_log_setup("cworker", CW_LOG_INFO, CW_LOG_TEXT);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_attach_and_run, setup, teardown),
        cmocka_unit_test_setup_teardown(test_drain, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stop_interrupts, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dead_link, setup_dead, teardown),
        cmocka_unit_test_setup_teardown(test_held_liveness, setup_dead, teardown),
        cmocka_unit_test(test_state_tables_match_docs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
