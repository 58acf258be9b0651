/* Figures about this process, in plain C (no libuv). */
#ifndef CW_PROCSTAT_H
#define CW_PROCSTAT_H

/* Resident set of this process in KiB, from /proc/self/statm (0 if unknown). */
long cw_rss_kib(void);

#endif
