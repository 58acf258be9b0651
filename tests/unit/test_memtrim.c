/* cw_trim_idle: which mappings an idle process gives back, and that no
 * private page is ever lost (a dropped private page would read back as the
 * file's content).  Where /proc/self/smaps does not describe this process's
 * pages (qemu-user, which runs the cross builds' tests), the trim must refuse
 * and leave everything as it was. */
#include <errno.h>
#include <setjmp.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmocka.h>

#include "memtrim.h"

#define FILE_KIB 1024

static char file_path[64];
static size_t page;

/* Rss and Anonymous (KiB) of the mapping that starts at addr; false when
 * smaps has no such mapping or no such lines. */
static bool find_mapping(const void *addr, long *rss, long *anon)
{
    char want[32];
    snprintf(want, sizeof want, "%08lx-",
             (unsigned long)(uintptr_t)addr); /* smaps pads to 8 digits */
    FILE *f = fopen("/proc/self/smaps", "r");
    if (f == NULL)
        return false;
    char line[512];
    int in = 0;
    *rss = *anon = -1;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, want, strlen(want)) == 0)
            in = 1;
        else if (in && strspn(line, "0123456789abcdef") > 0 &&
                 line[strspn(line, "0123456789abcdef")] == '-')
            break; /* the next mapping's header */
        else if (in && strncmp(line, "Rss:", 4) == 0)
            *rss = strtol(line + 4, NULL, 10);
        else if (in && strncmp(line, "Anonymous:", 10) == 0)
            *anon = strtol(line + 10, NULL, 10);
    }
    fclose(f);
    return *rss >= 0 && *anon >= 0;
}

static void mapping_kib(const void *addr, long *rss, long *anon)
{
    assert_true(find_mapping(addr, rss, anon));
}

static uint8_t pattern(size_t i)
{
    return (uint8_t)(i * 7 + i / 4096);
}

static int setup(void **state)
{
    page = (size_t)sysconf(_SC_PAGESIZE);
    snprintf(file_path, sizeof file_path, "/tmp/cw-memtrim-XXXXXX");
    int fd = mkstemp(file_path);
    assert_true(fd >= 0);
    size_t n = FILE_KIB * 1024;
    uint8_t *b = malloc(n);
    for (size_t i = 0; i < n; i++)
        b[i] = pattern(i);
    assert_int_equal(write(fd, b, n), (ssize_t)n);
    free(b);
    close(fd);
    return 0;
}

static int teardown(void **state)
{
    unlink(file_path);
    return 0;
}

static uint8_t *map_file(int prot, int flags);

/* Does smaps show a private page where we made one?  (The test's own
 * check, independent of memtrim.c's.) */
static bool smaps_honest(void)
{
    static int honest = -1;
    if (honest < 0) {
        uint8_t *p = map_file(PROT_READ | PROT_WRITE, MAP_PRIVATE);
        p[0] ^= 1;
        long rss, anon;
        honest = find_mapping(p, &rss, &anon) && anon > 0 && rss >= anon;
        munmap(p, FILE_KIB * 1024);
        if (!honest)
            print_message("/proc/self/smaps does not show this process's private pages (an "
                          "emulator?): checking that the trim refuses and changes nothing\n");
    }
    return honest;
}

static uint8_t *map_file(int prot, int flags)
{
    FILE *f = fopen(file_path, "r");
    assert_non_null(f);
    void *p = mmap(NULL, FILE_KIB * 1024, prot, flags, fileno(f), 0);
    fclose(f);
    assert_true(p != MAP_FAILED);
    return p;
}

static unsigned touch(const uint8_t *p)
{
    unsigned sum = 0;
    for (size_t i = 0; i < FILE_KIB * 1024; i += page)
        sum += ((const volatile uint8_t *)p)[i];
    return sum;
}

static void check_content(const uint8_t *p, size_t from)
{
    for (size_t i = from; i < FILE_KIB * 1024; i++)
        if (p[i] != pattern(i))
            fail_msg("byte %zu: %u, the file has %u", i, p[i], pattern(i));
}

/* a clean read-only private mapping is dropped; its content reads back */
static void test_drops_clean_read_only(void **state)
{
    uint8_t *p = map_file(PROT_READ, MAP_PRIVATE);
    touch(p);
    long rss, anon;
    if (!smaps_honest()) {
        assert_int_equal(cw_trim_idle(NULL), -ENOTSUP);
        check_content(p, 0);
        munmap(p, FILE_KIB * 1024);
        return;
    }
    mapping_kib(p, &rss, &anon);
    assert_int_equal(rss, FILE_KIB);
    assert_int_equal(anon, 0);
    cw_trim_stats_t st;
    assert_int_equal(cw_trim_idle(&st), 0);
    mapping_kib(p, &rss, &anon);
    assert_int_equal(rss, 0);
    assert_true(st.mappings >= 1);
    assert_true(st.rss_after_kib < st.rss_before_kib);
    assert_true(st.rss_before_kib - st.rss_after_kib >= FILE_KIB);
    check_content(p, 0);
    munmap(p, FILE_KIB * 1024);
}

/* a read-only mapping holding a private (written) page is kept whole: the
 * written bytes survive, so do the clean pages' PTEs */
static void test_keeps_private_pages(void **state)
{
    uint8_t *p = map_file(PROT_READ | PROT_WRITE, MAP_PRIVATE);
    touch(p);
    memset(p, 0xA5, 100); /* copy-on-write: the first page is now private */
    assert_int_equal(mprotect(p, FILE_KIB * 1024, PROT_READ), 0);
    long rss, anon;
    if (!smaps_honest()) {
        assert_int_equal(cw_trim_idle(NULL), -ENOTSUP);
        for (size_t i = 0; i < 100; i++)
            assert_int_equal(p[i], 0xA5);
        check_content(p, 100);
        munmap(p, FILE_KIB * 1024);
        return;
    }
    mapping_kib(p, &rss, &anon);
    assert_int_equal(anon, page / 1024);
    cw_trim_stats_t st;
    assert_int_equal(cw_trim_idle(&st), 0);
    assert_true(st.skipped >= 1);
    mapping_kib(p, &rss, &anon);
    assert_int_equal(rss, FILE_KIB);
    assert_int_equal(anon, page / 1024);
    for (size_t i = 0; i < 100; i++)
        assert_int_equal(p[i], 0xA5);
    check_content(p, 100);
    munmap(p, FILE_KIB * 1024);
}

/* writable private and shared mappings are never touched */
static void test_keeps_writable_and_shared(void **state)
{
    uint8_t *w = map_file(PROT_READ | PROT_WRITE, MAP_PRIVATE);
    uint8_t *s = map_file(PROT_READ, MAP_SHARED);
    touch(w);
    touch(s);
    if (!smaps_honest()) {
        assert_int_equal(cw_trim_idle(NULL), -ENOTSUP);
        check_content(w, 0);
        check_content(s, 0);
        munmap(w, FILE_KIB * 1024);
        munmap(s, FILE_KIB * 1024);
        return;
    }
    assert_int_equal(cw_trim_idle(NULL), 0);
    long rss, anon;
    mapping_kib(w, &rss, &anon);
    assert_int_equal(rss, FILE_KIB);
    mapping_kib(s, &rss, &anon);
    assert_int_equal(rss, FILE_KIB);
    check_content(w, 0);
    check_content(s, 0);
    munmap(w, FILE_KIB * 1024);
    munmap(s, FILE_KIB * 1024);
}

/* the process keeps working after its own code was dropped (it runs this) */
static void test_code_faults_back(void **state)
{
    for (int i = 0; i < 3; i++) {
        cw_trim_stats_t st;
        int rc = cw_trim_idle(&st);
        if (rc != (smaps_honest() ? 0 : -ENOTSUP) || st.rss_before_kib <= 0)
            fail_msg("trim %d: rc %d, RSS %ld -> %ld KiB", i, rc, st.rss_before_kib,
                     st.rss_after_kib);
        char buf[64];
        snprintf(buf, sizeof buf, "%d %s", i, "after");
        assert_string_equal(buf + 2, "after");
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_drops_clean_read_only),
        cmocka_unit_test(test_keeps_private_pages),
        cmocka_unit_test(test_keeps_writable_and_shared),
        cmocka_unit_test(test_code_faults_back),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
