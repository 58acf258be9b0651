/* cworker-master command line: shared state of the sub-commands. */
#ifndef CW_MASTER_CLI_H
#define CW_MASTER_CLI_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>
#include <uv.h>

#include "master.h"

/* Exit codes of cworker-master (documented in `cworker-master --help`). */
enum {
    CLI_EXIT_USAGE = 2,       /* bad command line */
    CLI_EXIT_TIMEOUT = 124,   /* run: the command was killed by --timeout */
    CLI_EXIT_NO_WORKER = 125, /* the worker did not attach within --wait */
    CLI_EXIT_LINK_LOST = 254, /* the link to the worker was lost mid-command */
    CLI_EXIT_FAILURE = 255,   /* any other failure (local I/O, refused command, ...) */
};

typedef struct cli cli_t;

/* What a sub-command does once its worker is attached. */
typedef struct cli_job {
    void (*start)(cli_t *cli, cw_mworker_t *w);
    /* SIGINT/SIGTERM: stop what runs (first signal). */
    void (*interrupt)(cli_t *cli);
    /* Free the job's state (cli->xfer) once the loop has ended. */
    void (*free)(cli_t *cli);
} cli_job_t;

struct cli {
    uv_loop_t *loop;
    cw_master_t master;
    const cli_job_t *job;
    const char *worker_name;
    double wait_secs;
    bool verbose;
    bool started;
    bool finishing;
    int exit_code;
    int signals;
    uv_timer_t wait_timer;
    uv_timer_t progress_timer;
    uv_signal_t sig_int, sig_term;
    cw_mworker_t *w;

    /* run */
    char **cmd_argv;
    char *workdir;
    double timeout;
    long parallel; /* run: copies at once (--parallel) */
    char **env;    /* K=V strings */
    size_t nenv;
    int killed_by_signal;
    bool timed_out;

    /* put / get */
    bool recursive;
    bool no_mode;         /* put: send mode nil (keep the destination's) */
    const char *compress; /* NULL, "gz", "bz2" */
    const char *local;
    const char *remote;
    uint64_t xfer_bytes;
    uint64_t xfer_total; /* 0 = unknown */
    uint64_t xfer_start_ns;
    bool progress;
    void *xfer; /* the put/get state */

    /* serve */
    uv_pipe_t control; /* --control PATH */
    bool control_open;
    const char *control_path;
};

/* End the program with this exit code once everything is closed. */
void cli_finish(cli_t *cli, int code);
/* Remote path: absolute as given, relative to the worker's basedir otherwise. */
char *cli_remote_path(cli_t *cli, const char *path);
/* Write all bytes to a (possibly non-blocking) fd; 0 or -errno. */
int cli_write_all(int fd, const void *data, size_t len);
/* Transfer progress line on a terminal. */
void cli_progress_start(cli_t *cli, uint64_t total);
void cli_progress_done(cli_t *cli);

/* serve --control PATH: listen for requests (cli_serve.c); 0 or a libuv code. */
int cli_serve_control_start(cli_t *cli, const char *path);
/* Stop listening and drop the control clients (idempotent). */
void cli_serve_control_close(cli_t *cli);

extern const cli_job_t cli_run_job;
extern const cli_job_t cli_put_job;
extern const cli_job_t cli_get_job;

#endif
