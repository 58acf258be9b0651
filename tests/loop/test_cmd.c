/* Loop tests of commands (src/worker/cmd): the shell command's phases on a
 * real libuv loop with a fake session — exit before EOF, EOF before exit,
 * interrupts, timeouts, a lost link, backpressure — and file commands.  Every
 * test ends with a clean uv_loop_close: no handle is left behind. */
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
#include <sys/stat.h>
#include <unistd.h>

#include "cmd/proc.h"
#include "looptest.h"

/* One test's world: a loop, a command set, a session, a work directory. */
typedef struct world {
    uv_loop_t loop;
    cw_cmds_t cmds;
    fake_session_t fs;
    cw_cmd_settings_t set;
    char dir[64];
    size_t changes; /* the command set's "changed" events */
} world_t;

static void on_changed(cw_cmds_t *cs)
{
    ((world_t *)cs->owner)->changes++;
}

static const cw_cmds_events_t events = {.changed = on_changed};

static double wall(void)
{
    return (double)uv_hrtime() / 1e9;
}

extern char **environ;

static int setup(void **state)
{
    world_t *w = calloc(1, sizeof *w);
    uv_loop_init(&w->loop);
    snprintf(w->dir, sizeof w->dir, "/tmp/cw-loop-XXXXXX");
    if (mkdtemp(w->dir) == NULL)
        return -1;
    cw_cmd_env_t env = {
        .loop = &w->loop,
        .environ = environ,
        .basedir = w->dir,
        .umask = 022,
        .fs_max_depth = 1000,
        .now = wall,
    };
    cw_cmds_init(&w->cmds, &env, &events, w);
    fake_session_init(&w->fs);
    cw_cmd_settings_default(&w->set);
    if (cw_proc_init(&w->loop) < 0)
        return -1;
    *state = w;
    return 0;
}

static int teardown(void **state)
{
    world_t *w = *state;
    cw_proc_shutdown();
    bool out = run_out(&w->loop, 5000);
    int rc = uv_loop_close(&w->loop);
    fake_session_free(&w->fs);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", w->dir);
    if (system(cmd) != 0)
        return -1;
    free(w);
    /* every handle closed: the loop closes cleanly */
    assert_true(out);
    assert_int_equal(rc, 0);
    return 0;
}

/* Start a shell command; returns it (running). */
static cw_cmd_t *start_shell(world_t *w, const char *const *argv, void (*tweak)(cw_args_t *))
{
    cw_args_t a;
    shell_args(&a, w->dir, argv);
    if (tweak)
        tweak(&a);
    cw_cmd_t *cmd = NULL;
    char err[256];
    cw_str_t id = {"1", 1};
    assert_int_equal(
        cw_cmds_create(&w->cmds, &w->fs.base, &w->set, id, CW_CMD_SHELL, &a, err, sizeof err, &cmd),
        0);
    assert_int_equal(cmd->phase, CW_CMD_CREATED);
    cw_cmd_start(cmd);
    return cmd;
}

/* Run until the command set is empty (the command freed). */
static void wait_gone(world_t *w, uint64_t ms)
{
    uint64_t end = now_ms() + ms;
    while (w->cmds.n > 0 && now_ms() < end) {
        bool never = false;
        run_until(&w->loop, &never, 20);
    }
    assert_int_equal(w->cmds.n, 0);
    /* The command leaves the set in a close callback and is freed in the
     * close callback of its flush timer, one loop iteration later: when the
     * deadline ended the run in between, that iteration has not run yet. */
    uv_run(&w->loop, UV_RUN_NOWAIT);
    uv_run(&w->loop, UV_RUN_NOWAIT);
}

static const char *text(world_t *w, cw_stream_t s)
{
    cw_buf_append(&w->fs.text[s], "", 1);
    w->fs.text[s].len--;
    return (const char *)w->fs.text[s].data;
}

/* The plain case: output, rc, complete, every phase, freed. */
static void test_echo(void **state)
{
    world_t *w = *state;
    static const char *const argv[] = {"sh", "-c", "echo hi; echo err >&2", NULL};
    cw_cmd_t *cmd = start_shell(w, argv, NULL);
    assert_int_equal(cmd->phase, CW_CMD_RUNNING);
    wait_gone(w, 5000);
    assert_true(w->fs.completed);
    assert_null(w->fs.complete_failure);
    assert_true(w->fs.has_rc);
    assert_int_equal(w->fs.rc, 0);
    assert_string_equal(text(w, CW_STREAM_STDOUT), "hi\n");
    assert_string_equal(text(w, CW_STREAM_STDERR), "err\n");
    assert_non_null(strstr(text(w, CW_STREAM_HEADER), "elapsedTime="));
    assert_int_equal(w->changes, 2); /* created, freed */
    assert_true(w->fs.released >= 1);
}

/* The child exits first; a background grandchild still holds the pipes:
 * the command waits for EOF, and keeps what came late. */
static void test_exit_before_eof(void **state)
{
    world_t *w = *state;
    static const char *const argv[] = {"sh", "-c", "(sleep 0.3; echo late) & echo early", NULL};
    uint64_t t0 = now_ms();
    start_shell(w, argv, NULL);
    wait_gone(w, 5000);
    assert_true(now_ms() - t0 >= 250);
    assert_string_equal(text(w, CW_STREAM_STDOUT), "early\nlate\n");
    assert_int_equal(w->fs.rc, 0);
}

/* Every pipe is closed long before the process ends: rc waits for the exit. */
static void test_eof_before_exit(void **state)
{
    world_t *w = *state;
    static const char *const argv[] = {"sh", "-c", "exec >/dev/null 2>&1; sleep 0.3; exit 3", NULL};
    uint64_t t0 = now_ms();
    start_shell(w, argv, NULL);
    wait_gone(w, 5000);
    assert_true(now_ms() - t0 >= 250);
    assert_int_equal(w->fs.rc, 3);
}

/* The master's interrupt: the group is killed, rc -1, complete soon. */
static void test_interrupt(void **state)
{
    world_t *w = *state;
    static const char *const argv[] = {"sh", "-c", "sleep 30 & sleep 30", NULL};
    cw_cmd_t *cmd = start_shell(w, argv, NULL);
    bool never = false;
    run_until(&w->loop, &never, 100);
    uint64_t t0 = now_ms();
    cw_cmd_interrupt(cmd, "test interrupt");
    wait_gone(w, 5000);
    assert_true(now_ms() - t0 < 2000);
    assert_int_equal(w->fs.rc, -1);
    assert_true(w->fs.completed);
    assert_non_null(strstr(text(w, CW_STREAM_HEADER), "test interrupt, attempting to kill"));
    assert_int_equal(cw_proc_live_count(), 0);
}

static void short_timeout(cw_args_t *a)
{
    a->timeout = 0.3;
}

static void short_maxtime(cw_args_t *a)
{
    a->max_time = 0.3;
}

/* No output for `timeout` seconds. */
static void test_timeout(void **state)
{
    world_t *w = *state;
    static const char *const argv[] = {"sleep", "30", NULL};
    start_shell(w, argv, short_timeout);
    wait_gone(w, 5000);
    assert_int_equal(w->fs.rc, -1);
    assert_string_equal(w->fs.failure_reason, "timeout_without_output");
}

/* maxTime, although there is output all the time. */
static void test_maxtime(void **state)
{
    world_t *w = *state;
    static const char *const argv[] = {"sh", "-c", "while :; do echo x; sleep 0.05; done", NULL};
    start_shell(w, argv, short_maxtime);
    wait_gone(w, 5000);
    assert_int_equal(w->fs.rc, -1);
    assert_string_equal(w->fs.failure_reason, "timeout");
}

/* The link goes while the command runs: it is interrupted, nothing more is
 * sent to that session, and everything is released. */
static void test_session_gone(void **state)
{
    world_t *w = *state;
    static const char *const argv[] = {"sh", "-c", "echo started; sleep 30", NULL};
    start_shell(w, argv, NULL);
    bool never = false;
    run_until(&w->loop, &never, 200);
    size_t updates = w->fs.updates;
    cw_cmds_session_gone(&w->cmds, &w->fs.base);
    wait_gone(w, 5000);
    assert_false(w->fs.completed);
    assert_int_equal(w->fs.updates, updates);
    assert_int_equal(cw_proc_live_count(), 0);
}

/* A master that does not take output: the producer stops reading (memory
 * bounded), and resumes when the link takes more; nothing is lost. */
static void test_backpressure(void **state)
{
    world_t *w = *state;
    w->fs.blocked = true;
    static const char *const argv[] = {"sh", "-c", "yes 0123456789abcdef | head -c 4194304", NULL};
    cw_cmd_t *cmd = start_shell(w, argv, NULL);
    bool never = false;
    run_until(&w->loop, &never, 500);
    assert_true(cmd->paused);
    /* the pause point (2 x buffer_size) plus at most one read of 64 KiB, which
     * the budget counts with 16 bytes per line (17-byte lines here: ~2x) */
    size_t held = cw_outbuf_size(&cmd->out);
    if (held > 2 * w->set.buffer_size + 2 * 65536 + 4096)
        fail_msg("%zu bytes of output held while the link took none", held);
    w->fs.blocked = false;
    cw_cmds_kick(&w->cmds, &w->fs.base);
    wait_gone(w, 10000);
    assert_int_equal(w->fs.rc, 0);
    /* 4 MiB cut in the middle of a line: the last line gets its '\n' */
    assert_int_equal(w->fs.text[CW_STREAM_STDOUT].len, 4194304 + 1);
}

/* A file command on the thread pool: listdir of a directory. */
static void test_fs_listdir(void **state)
{
    world_t *w = *state;
    char p[128];
    snprintf(p, sizeof p, "%s/a-file", w->dir);
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    fclose(f);
    cw_args_t a;
    memset(&a, 0, sizeof a);
    a.kind = CW_CMD_LISTDIR;
    a.path = strdup(w->dir);
    cw_cmd_t *cmd = NULL;
    char err[256];
    assert_int_equal(cw_cmds_create(&w->cmds, &w->fs.base, &w->set, (cw_str_t){"2", 1},
                                    CW_CMD_LISTDIR, &a, err, sizeof err, &cmd),
                     0);
    cw_cmd_start(cmd);
    wait_gone(w, 5000);
    assert_int_equal(w->fs.rc, 0);
    assert_true(w->fs.completed);
}

/* An upload through the session's transfer requests, with the data. */
static void test_upload(void **state)
{
    world_t *w = *state;
    char p[128];
    snprintf(p, sizeof p, "%s/up.bin", w->dir);
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    for (int i = 0; i < 100000; i++)
        fputc('a' + i % 26, f);
    fclose(f);
    cw_args_t a;
    memset(&a, 0, sizeof a);
    a.kind = CW_CMD_UPLOAD_FILE;
    a.path = strdup(p);
    a.blocksize = 16384;
    a.maxsize = -1;
    a.mode = -1;
    cw_cmd_t *cmd = NULL;
    char err[256];
    assert_int_equal(cw_cmds_create(&w->cmds, &w->fs.base, &w->set, (cw_str_t){"3", 1},
                                    CW_CMD_UPLOAD_FILE, &a, err, sizeof err, &cmd),
                     0);
    cw_cmd_start(cmd);
    wait_gone(w, 5000);
    assert_int_equal(w->fs.rc, 0);
    assert_int_equal(w->fs.upload.len, 100000);
    assert_true(w->fs.upload_closed);
    assert_int_equal(w->fs.upload.data[99999], 'a' + 99999 % 26);
}

/* The phase table: every allowed move, and nothing backwards. */
static void test_phase_table(void **state)
{
    (void)state;
    assert_true(cw_cmd_phase_allowed(CW_CMD_CREATED, CW_CMD_RUNNING));
    assert_true(cw_cmd_phase_allowed(CW_CMD_CREATED, CW_CMD_FINISHING));
    assert_true(cw_cmd_phase_allowed(CW_CMD_RUNNING, CW_CMD_FINISHING));
    assert_true(cw_cmd_phase_allowed(CW_CMD_FINISHING, CW_CMD_CLOSING));
    for (int a = 0; a < CW_CMD_PHASES; a++)
        for (int b = 0; b <= a; b++)
            assert_false(cw_cmd_phase_allowed((cw_cmd_phase_t)a, (cw_cmd_phase_t)b));
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_echo),
        T(test_exit_before_eof),
        T(test_eof_before_exit),
        T(test_interrupt),
        T(test_timeout),
        T(test_maxtime),
        T(test_session_gone),
        T(test_backpressure),
        T(test_fs_listdir),
        T(test_upload),
        cmocka_unit_test(test_phase_table),
    };
#undef T
    return cmocka_run_group_tests(tests, NULL, NULL);
}
