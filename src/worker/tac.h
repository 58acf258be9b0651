/* The buildbot.tac import (tac.c) as far as `cworker create-worker` shares
 * it: the stock create-worker pastes its option values into the tac it
 * writes, so a create-worker value is read like the tac variable it becomes
 * (options_table.h: tac_kind).  The tac import itself is cw_opts_parse_tac()
 * in options.h. */
#ifndef CW_WORKER_TAC_H
#define CW_WORKER_TAC_H

#include <stdbool.h>

#include "options.h"

/* A Python literal, as far as cworker reads them. */
typedef enum cw_pv_kind {
    CW_PV_UNSET,
    CW_PV_NONE,
    CW_PV_STR,
    CW_PV_INT,
    CW_PV_BOOL,
    CW_PV_FILEDIR, /* os.path.abspath(os.path.dirname(__file__)) */
    CW_PV_OTHER,   /* an expression we do not evaluate */
} cw_pv_kind_t;

typedef struct cw_pyval {
    cw_pv_kind_t kind;
    char *s; /* CW_PV_STR */
    long long i;
    bool legacy_octal; /* Python 2 "022" */
} cw_pyval_t;

/* Parse a Python int literal (decimal, 0o, 0x, 0b, underscores, and the
 * Python 2 leading-zero octal, which sets *legacy).  Advances *ps; 0 or -1. */
int cw_py_int(const char **ps, const char *end, long long *out, bool *legacy);

/* Give option id the value v as its row's tac_kind reads it, from where at
 * precedence src; tac is the tac's path (relative basedirs), or NULL.
 * Returns 0 (imported, or v says "leave it unset"), 1 when v is no value
 * the option can take (*why says what it needs), or -ENOMEM. */
int cw_tac_import(cw_opts_t *o, cw_opt_id_t id, const cw_pyval_t *v, const char *where,
                  cw_src_t src, const char *tac, const char **why, char *err, size_t errlen);

#endif
