/* The worker info (reference §5): what the master stores as the worker's
 * properties, collected once per attach and encoded by each protocol. */
#ifndef CW_WORKER_INFO_H
#define CW_WORKER_INFO_H

#include <stdbool.h>
#include <stddef.h>

#include "cworker/buf.h"

/* A key and its text value, both valid UTF-8 (repaired). */
typedef struct cw_info_kv {
    char *key;
    cw_buf_t val;
} cw_info_kv_t;

/* Where the info comes from. */
typedef struct cw_info_src {
    const char *basedir; /* BASEDIR/info/<name> files */
    char **environ;      /* the worker's environment */
    unsigned numcpus;    /* 0: the CPUs this process may run on */
    bool delete_leftover_dirs;
} cw_info_src_t;

typedef struct cw_info {
    cw_info_kv_t *files; /* info/ files and os_* from os-release, in that order */
    size_t nfiles;
    cw_info_kv_t *env; /* environ */
    size_t nenv;
    const char *system; /* "posix" */
    const char *basedir;
    const char *version; /* "cworker X.Y.Z" */
    unsigned numcpus;
    bool delete_leftover_dirs;
} cw_info_t;

/* Collect; 0 or -ENOMEM (then nothing needs freeing). */
int cw_info_collect(cw_info_t *info, const cw_info_src_t *src);
void cw_info_free(cw_info_t *info);

#endif
