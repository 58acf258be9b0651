/* The log file (src/net/log.c): rotation naming and count, size bound,
 * every line intact across rotations, reopening, the stderr fallback. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"

static char dir[256];

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof dir, "/tmp/cw-test-log-XXXXXX");
    return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    cw_log_open_file(NULL, 0, 0);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

/* dir/name[.i] (i 0: the base file). */
static const char *name_of(const char *base, unsigned i)
{
    static char p[512];
    if (i)
        snprintf(p, sizeof p, "%s/%s.%u", dir, base, i);
    else
        snprintf(p, sizeof p, "%s/%s", dir, base);
    return p;
}

static void put(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

/* The file's contents (heap), or NULL if it does not exist. */
static char *get(const char *path)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return NULL;
    char *buf = calloc(1, 1 << 20);
    size_t n = fread(buf, 1, (1 << 20) - 1, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

static void assert_content(const char *base, unsigned i, const char *want)
{
    char *got = get(name_of(base, i));
    if (want == NULL) {
        if (got)
            fail_msg("%s exists (%s)", name_of(base, i), got);
        return;
    }
    if (got == NULL)
        fail_msg("%s is missing", name_of(base, i));
    assert_string_equal(got, want);
    free(got);
}

/* Rotation on the files: PATH -> .1 -> .2 ..., the oldest beyond keep dropped. */
static void test_rotate_files_naming(void **state)
{
    (void)state;
    char path[512];
    snprintf(path, sizeof path, "%s", name_of("t.log", 0));
    static const char *gens[] = {"A", "B", "C", "D", "E"};
    for (int g = 0; g < 5; g++) {
        put(path, gens[g]);
        assert_int_equal(cw_log_rotate_files(path, 3), 0);
        assert_content("t.log", 0, NULL); /* the caller opens a new one */
    }
    assert_content("t.log", 1, "E");
    assert_content("t.log", 2, "D");
    assert_content("t.log", 3, "C");
    assert_content("t.log", 4, NULL);

    /* a smaller count also drops what a larger one left behind */
    put(name_of("t.log", 4), "old");
    put(name_of("t.log", 5), "older");
    put(path, "F");
    assert_int_equal(cw_log_rotate_files(path, 1), 0);
    assert_content("t.log", 1, "F");
    for (unsigned i = 2; i <= 5; i++)
        assert_content("t.log", i, NULL);

    /* keep 0: nothing is dropped */
    for (int g = 0; g < 4; g++) {
        put(path, gens[g]);
        assert_int_equal(cw_log_rotate_files(path, 0), 0);
    }
    assert_content("t.log", 1, "D");
    assert_content("t.log", 4, "A");
    assert_content("t.log", 5, "F");
    assert_content("t.log", 6, NULL);

    /* no file to rotate: an error, nothing renamed */
    assert_int_equal(cw_log_rotate_files(name_of("none.log", 0), 3), -ENOENT);
}

/* Logging through rotations: files stay within the size, at most keep old
 * ones, and the newest lines are all there, whole and in order. */
static void test_rotating_logger(void **state)
{
    (void)state;
    char path[512];
    snprintf(path, sizeof path, "%s", name_of("w.log", 0));
    put(path, "an older line\n");
    cw_log_setup("cworker", CW_LOG_INFO, CW_LOG_TEXT);
    assert_int_equal(cw_log_open_file(path, 400, 3), 0);
    assert_string_equal(cw_log_file(), path);
    for (int i = 0; i < 300; i++)
        cw_info("line %04d %.*s", i, i % 40, "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx");
    cw_debug("not logged");
    assert_int_equal(cw_log_open_file(NULL, 0, 0), 0);

    assert_content("w.log", 4, NULL);
    char all[1 << 16] = "";
    for (unsigned i = 3;; i--) {
        char *t = get(name_of("w.log", i));
        assert_non_null(t);
        assert_true(strlen(t) <= 400);
        assert_true(strlen(t) > 0 && t[strlen(t) - 1] == '\n');
        strcat(all, t);
        free(t);
        if (i == 0)
            break;
    }
    /* consecutive numbers up to the last, every line complete */
    int expect = -1, count = 0;
    for (char *l = strtok(all, "\n"); l; l = strtok(NULL, "\n")) {
        int n;
        char *p = strstr(l, " cworker: line ");
        assert_non_null(p);
        assert_int_equal(sscanf(p, " cworker: line %d", &n), 1);
        if (expect >= 0)
            assert_int_equal(n, expect);
        assert_int_equal(strlen(p + 20), (size_t)(n % 40));
        expect = n + 1;
        count++;
    }
    assert_int_equal(expect, 300);
    assert_true(count > 10);
}

/* Run fn with stderr going to a file; returns what was written there. */
static char *capture_stderr(void (*fn)(void))
{
    fflush(stderr);
    char cap[512];
    snprintf(cap, sizeof cap, "%s/stderr", dir);
    int fd = open(cap, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    int saved = dup(2);
    dup2(fd, 2);
    close(fd);
    fn();
    dup2(saved, 2);
    close(saved);
    return get(cap);
}

static void log_to_full_disk(void)
{
    if (cw_log_open_file("/dev/full", 0, 0) < 0)
        return;
    cw_info("first line");
    cw_info("second line");
    cw_log_open_file(NULL, 0, 0);
}

/* A write that fails (ENOSPC): reopened once, then stderr, one warning. */
static void test_failing_file_falls_back(void **state)
{
    (void)state;
    if (access("/dev/full", W_OK) < 0)
        skip();
    cw_log_setup("cworker", CW_LOG_INFO, CW_LOG_TEXT);
    char *err = capture_stderr(log_to_full_disk);
    assert_non_null(err);
    assert_non_null(strstr(err, "cworker: first line\n"));
    assert_non_null(strstr(err, "cworker: second line\n"));
    char *w = strstr(err, "logging to stderr");
    assert_non_null(w);
    assert_null(strstr(w + 1, "logging to stderr")); /* once */
    assert_non_null(strstr(err, "No space left on device"));
    free(err);
}

/* A removed file is created again; SIGHUP's reopen follows a rename. */
static void test_removed_and_reopened(void **state)
{
    (void)state;
    char path[512], moved[512];
    snprintf(path, sizeof path, "%s", name_of("r.log", 0));
    snprintf(moved, sizeof moved, "%s", name_of("r.moved", 0));
    cw_log_setup("cworker", CW_LOG_INFO, CW_LOG_TEXT);
    assert_int_equal(cw_log_open_file(path, 0, 0), 0);
    cw_info("one");
    assert_int_equal(rename(path, moved), 0);
    cw_info("two"); /* still the open (renamed) file: logrotate then sends SIGHUP */
    assert_int_equal(cw_log_reopen(), 0);
    cw_info("three");
    assert_int_equal(unlink(path), 0);
    usleep(1100 * 1000); /* the identity check runs at most once a second */
    cw_info("four");
    cw_log_open_file(NULL, 0, 0);
    char *a = get(moved), *b = get(path);
    assert_non_null(a);
    assert_non_null(b);
    assert_non_null(strstr(a, "cworker: one\n"));
    assert_non_null(strstr(a, "cworker: two\n"));
    assert_null(strstr(a, "three"));
    assert_null(strstr(b, "three")); /* went to the removed file */
    assert_non_null(strstr(b, "cworker: four\n"));
    free(a);
    free(b);
}

/* A 200 KB path in a message: one bounded line that keeps both ends. */
static void test_long_line_elided(void **state)
{
    (void)state;
    char path[512];
    snprintf(path, sizeof path, "%s", name_of("long.log", 0));
    cw_log_setup("cworker", CW_LOG_INFO, CW_LOG_TEXT);
    assert_int_equal(cw_log_open_file(path, 0, 0), 0);
    size_t n = 200 * 1024;
    char *pattern = malloc(n + 1);
    assert_non_null(pattern);
    for (size_t i = 0; i < n; i += 2) {
        pattern[i] = '/';
        pattern[i + 1] = '*';
    }
    pattern[n] = '\0';
    cw_info("command 7: glob %s: No such file or directory", pattern);
    cw_log_open_file(NULL, 0, 0);
    free(pattern);
    char *got = get(path);
    assert_non_null(got);
    size_t len = strlen(got);
    assert_true(len < 4096);
    assert_int_equal(got[len - 1], '\n');
    assert_null(strchr(got, '\n') + 1 < got + len ? strchr(strchr(got, '\n') + 1, '\n') : NULL);
    assert_non_null(strstr(got, "command 7: glob /*/*"));
    assert_non_null(strstr(got, "/*/*: No such file or directory\n"));
    assert_non_null(strstr(got, " bytes]..."));
    free(got);
}

/* A FIFO in the log file's place is refused at once instead of blocking
 * until a reader appears. */
static void test_fifo_refused(void **state)
{
    (void)state;
    char path[512];
    snprintf(path, sizeof path, "%s", name_of("fifo.log", 0));
    assert_int_equal(mkfifo(path, 0600), 0);
    cw_log_setup("cworker", CW_LOG_INFO, CW_LOG_TEXT);
    alarm(10); /* a regression blocks in open(): fail instead of hanging */
    assert_int_equal(cw_log_open_file(path, 0, 0), -EINVAL);
    alarm(0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_long_line_elided),        cmocka_unit_test(test_fifo_refused),
        cmocka_unit_test(test_rotate_files_naming),     cmocka_unit_test(test_rotating_logger),
        cmocka_unit_test(test_failing_file_falls_back), cmocka_unit_test(test_removed_and_reopened),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
