/* Allocation failure injection for the sweep (tests/loop/oom_sweep.py):
 * linked with -Wl,--wrap=malloc,... into a cworker, every allocation made by
 * our own code (not by libc, libuv or msgpack-c, which are shared libraries)
 * goes through these wrappers.
 *
 *   CW_FAIL_ALLOC=N     the Nth allocation (from 1) fails with ENOMEM, once
 *   CW_ALLOC_COUNT=FILE at exit, the number of allocations made is written
 *                       to FILE (to size the sweep)
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t m);
void *__real_realloc(void *p, size_t n);
char *__real_strdup(const char *s);
char *__real_strndup(const char *s, size_t n);
void *__wrap_malloc(size_t n);
void *__wrap_calloc(size_t n, size_t m);
void *__wrap_realloc(void *p, size_t n);
char *__wrap_strdup(const char *s);
char *__wrap_strndup(const char *s, size_t n);

static unsigned long fail_at, count;
static const char *count_file;

static void report(void)
{
    if (count_file == NULL)
        return;
    FILE *f = fopen(count_file, "w");
    if (f) {
        fprintf(f, "%lu\n", count);
        fclose(f);
    }
}

__attribute__((constructor)) static void failmalloc_init(void)
{
    const char *v = getenv("CW_FAIL_ALLOC");
    if (v)
        fail_at = strtoul(v, NULL, 10);
    count_file = getenv("CW_ALLOC_COUNT");
    if (count_file)
        atexit(report);
}

/* True when this allocation is the one to fail. */
static int fail_now(void)
{
    count++;
    if (fail_at != 0 && count == fail_at) {
        errno = ENOMEM;
        return 1;
    }
    return 0;
}

void *__wrap_malloc(size_t n)
{
    return fail_now() ? NULL : __real_malloc(n);
}

void *__wrap_calloc(size_t n, size_t m)
{
    return fail_now() ? NULL : __real_calloc(n, m);
}

void *__wrap_realloc(void *p, size_t n)
{
    return fail_now() ? NULL : __real_realloc(p, n);
}

char *__wrap_strdup(const char *s)
{
    return fail_now() ? NULL : __real_strdup(s);
}

char *__wrap_strndup(const char *s, size_t n)
{
    return fail_now() ? NULL : __real_strndup(s, n);
}
