/* The option table: every option of cworker described once -- its flag and
 * config-file key, environment variable, type, range and default, where it
 * comes from in a buildbot.tac, in `create-worker` and in the
 * buildbot/buildbot-worker container image, and its help and docs.
 *
 * The flags, environment and config-file parsers (options_read.c), the tac
 * import and create-worker (tac.c, create_worker.c), validation (optval.c,
 * config.c), --check-config, --write-config, --help and the docs
 * (options_print.c) all read it: adding an option is one row in
 * options_table.c and its use.  tests/unit/test_options.c checks the rows and
 * that README.md and man/cworker.1 are what `cworker --help-table` prints. */
#ifndef CW_WORKER_OPTIONS_TABLE_H
#define CW_WORKER_OPTIONS_TABLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "options.h"

/* How a value is read, checked and printed (optval.c). */
typedef enum cw_opt_type {
    CW_T_MASTER,   /* HOST[:PORT], [V6][:PORT], ws[s]://HOST[:PORT]/PATH: master_*, use_tls */
    CW_T_PROTOCOL, /* pb, msgpack_experimental_v7 (or msgpack): cw_protocol_t */
    CW_T_NAME,     /* the worker name: not empty, no ':' or control character */
    CW_T_PATH,     /* a file or directory; in a config file relative to the file */
    CW_T_SECRET,   /* the password: never shown, never a flag */
    CW_T_BOOL,     /* true/false/yes/no/on/off/1/0 */
    CW_T_SECONDS,  /* decimal seconds, from min to 10^7 */
    CW_T_NUMBER,   /* decimal integer from min to max */
    CW_T_UMASK,    /* octal 0-777: 022, 0o22 */
    CW_T_PROXY,    /* http://[USER:PASS@]HOST[:PORT] */
    CW_T_LISTEN,   /* IP:PORT, [IPv6]:PORT */
    CW_T_RELAY,    /* HOST:PORT, [IPv6]:PORT, the port required: relay, relay_host/_port */
    CW_T_WORD,     /* one of .words, stored as its index (an int); .none is the first */
} cw_opt_type_t;

/* The cw_config_t field at .off that holds the value. */
typedef enum cw_ctype {
    CW_C_NONE, /* no field of its own (the type's code knows) */
    CW_C_STR,  /* char *, heap */
    CW_C_BOOL,
    CW_C_INT,
    CW_C_UINT,   /* unsigned */
    CW_C_SIZE,   /* size_t */
    CW_C_U64,    /* uint64_t */
    CW_C_MS,     /* uint64_t milliseconds of a value given in seconds */
    CW_C_DOUBLE, /* double, seconds */
    CW_C_LONG,
} cw_ctype_t;

/* How a buildbot.tac variable -- or a create-worker value, which the stock
 * script pastes into the tac -- becomes the option's value (tac.c). */
typedef enum cw_tac_kind {
    CW_TAC_NONE,     /* not in a tac */
    CW_TAC_MASTER,   /* buildmaster_host + port, or connection_string (tcp:, tls:) */
    CW_TAC_STR,      /* a string; None: .tac_none (NULL: None is refused) */
    CW_TAC_BASEDIR,  /* a directory; '.' and os.path...(__file__) are the tac's */
    CW_TAC_UMASK,    /* an int 0-0o777 (the Python 2 form 022 read as octal); None: unset */
    CW_TAC_INT,      /* an int (the option checks its range); None: .tac_none */
    CW_TAC_BOOL,     /* Python's truth of an int, a bool or None */
    CW_TAC_PROXY,    /* a tcp: endpoint of an HTTP CONNECT proxy; None: unset */
    CW_TAC_PROTOCOL, /* a string; no protocol line at all: the stock default 'pb' */
} cw_tac_kind_t;

/* The syntax of a create-worker option's value (create_worker.c). */
typedef enum cw_cwarg {
    CW_CWARG_NONE,  /* not a create-worker option */
    CW_CWARG_FLAG,  /* no value: true */
    CW_CWARG_INT,   /* decimal digits */
    CW_CWARG_PYNUM, /* ^(0o)?\d+$ or None, as the stock script checks */
    CW_CWARG_PYLIT, /* a Python literal pasted into the tac: a string, quoted or not, or None */
    CW_CWARG_STR,   /* a string */
} cw_cwarg_t;

enum {
    CW_OPTF_NOFLAG = 1,   /* never on the command line (the password) */
    CW_OPTF_NOFILE = 2,   /* not a config-file key */
    CW_OPTF_REQUIRED = 4, /* no default: some source must set it */
    CW_OPTF_TLS = 8,      /* only used with TLS (a note says so otherwise) */
    CW_OPTF_LOGFILE = 16, /* only used with log-file (a note says so otherwise) */
};

typedef struct cw_optdef {
    const char *name; /* --NAME, and the config-file key NAME ('_' may stand for '-') */
    const char *env;  /* its CWORKER_ variable */
    cw_opt_type_t type;
    cw_ctype_t ctype;
    size_t off; /* offsetof(cw_config_t, field), with ctype */
    unsigned flags;
    uint64_t min, max;   /* CW_T_NUMBER: the range; CW_T_SECONDS: min seconds */
    const char *none;    /* the word for the zero or unset value ("none", "auto", "0"), or NULL */
    const char *words;   /* CW_T_WORD: the accepted words, space-separated */
    const char *def;     /* the default, in the option's own syntax; NULL: none */
    const char *def_doc; /* how --help and the docs say the default, when not def */
    const char *what;    /* CW_OPTF_REQUIRED: "master" in "no master: ..." */
    const char *need;    /* what a bad value is told: "needs true or false" */
    const char *arg;     /* metavariable: --NAME ARG */
    const char *tac[3];  /* the buildbot.tac variables it is read from */
    cw_tac_kind_t tac_kind;
    const char *tac_none; /* the value a tac's None gives (CW_TAC_INT: NULL leaves it unset) */
    const char *cw;       /* the stock create-worker option that maps to it (no dashes) */
    char cw_short;
    cw_cwarg_t cw_arg;
    const char *image[2];     /* the container image's variables */
    const char *image_def[2]; /* and the image's values when they are unset */
    const char *help;         /* one line for --help (markup: `literal`, *ARG*) */
    const char *doc;          /* the docs' text, README table and man page (the same markup) */
} cw_optdef_t;

extern const cw_optdef_t cw_optdefs[CW_OPT__COUNT];

/* Settings of buildbot-worker that cworker accepts and ignores (a note
 * says so): in a tac when not the stock value, on create-worker's command
 * line always. */
typedef struct cw_foreign {
    const char *tac;   /* the tac variable, or NULL */
    long long tac_def; /* the value the stock create-worker writes, or -1: None */
    const char *cw;    /* the create-worker option */
    char cw_short;
    cw_cwarg_t cw_arg;    /* CW_CWARG_FLAG, _INT or _STR */
    const char *cw_words; /* CW_CWARG_STR: the accepted values, space-separated */
    const char *why;      /* why cworker ignores it */
} cw_foreign_t;

#define CW_NFOREIGN 2
extern const cw_foreign_t cw_foreign[CW_NFOREIGN];

/* The command line's actions (flags that are not options). */
typedef enum cw_act {
    CW_ACT_CHECK_CONFIG,
    CW_ACT_WRITE_CONFIG,
    CW_ACT_FORCE,
    CW_ACT_HELP_TABLE,
    CW_ACT_HELP,
    CW_ACT_VERSION,
    CW_ACT__COUNT
} cw_act_t;

typedef struct cw_actiondef {
    const char *name; /* --NAME */
    char shrt;
    const char *arg;  /* metavariable, or NULL: no value */
    const char *help; /* its --help line, or NULL: another action's line mentions it */
} cw_actiondef_t;

extern const cw_actiondef_t cw_actions[CW_ACT__COUNT];

/* The options of `cworker create-worker` that are not options of the worker. */
typedef enum cw_cwopt {
    CW_CWOPT_FORCE,
    CW_CWOPT_RELOCATABLE,
    CW_CWOPT_QUIET,
    CW_CWOPT_ADMIN,
    CW_CWOPT_HOST,
    CW_CWOPT_HELP,
    CW_CWOPT__COUNT
} cw_cwopt_t;

typedef struct cw_cwoptdef {
    const char *name; /* --NAME */
    char shrt;
    const char *arg;  /* metavariable, or NULL: no value */
    const char *help; /* its line in `create-worker --help` */
} cw_cwoptdef_t;

extern const cw_cwoptdef_t cw_cwopts[CW_CWOPT__COUNT];

/* The option called name (len bytes; '_' may stand for '-'), or -1. */
int cw_opt_find(const char *name, size_t len);

/* Values of the table's types (optval.c). */

/* Parse text as option id into its field of cfg.  0; -1 when the value is
 * not one the option accepts, with *why saying what it needs; -ENOMEM. */
int cw_opt_parse(cw_opt_id_t id, const char *text, cw_config_t *cfg, const char **why);
/* The canonical text of option id in cfg (which cw_opt_parse reads back to
 * the same value), in buf or static; NULL when it has none. */
const char *cw_opt_format(cw_opt_id_t id, const cw_config_t *cfg, char *buf, size_t cap);

#endif
