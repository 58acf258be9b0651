/* Give back what an idle process holds but does not use, in plain C (no
 * libuv). */
#ifndef CW_MEMTRIM_H
#define CW_MEMTRIM_H

/* What cw_trim_idle did. */
typedef struct cw_trim_stats {
    long rss_before_kib, rss_after_kib; /* VmRSS around the call */
    unsigned mappings;                  /* code/read-only mappings dropped */
    unsigned skipped;                   /* read-only mappings with private pages, kept */
} cw_trim_stats_t;

/* For an idle process: drop this process's page-table entries for its
 * read-only, private, file-backed mappings (program and library code,
 * read-only data) that hold no private page, and return free heap memory
 * to the kernel (glibc's malloc_trim).
 *
 * The pages themselves stay in the page cache (shared with every other
 * process that maps them); what is dropped is this process's claim on
 * them, which is what RSS counts.  Whatever runs next faults the pages it
 * needs back in (the kernel maps up to 64 KiB around each fault).  A
 * mapping holding any private (copy-on-write) page, e.g. relocated data
 * made read-only after loading, or code a debugger patched, is left
 * alone: dropping those pages would lose their contents.
 *
 * Before it drops anything, the same read of /proc/self/smaps must show a
 * probe mapping that holds a private page as holding one; when it does not
 * (an emulator such as qemu-user renders smaps without page counts, or
 * shows its host's mappings), nothing is dropped, now or later.
 *
 * Linux only; elsewhere a no-op.  Returns 0; -ENOTSUP when smaps cannot be
 * trusted; or -errno when /proc/self/smaps cannot be read.  Nothing is
 * dropped unless it returns 0. */
int cw_trim_idle(cw_trim_stats_t *st);

#endif
