/* start_command: command names and argument validation, sans-I/O.
 *
 * Every argument map the master can send is turned into a cw_args_t, or
 * refused with a message that becomes the exception response to
 * start_command (stock wording where the stock worker has one, e.g.
 * "WorkerShellCommand is missing args: workdir").  Unknown keys are ignored,
 * as the stock worker does.
 */
#ifndef CWORKER_ARGS_H
#define CWORKER_ARGS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cworker/cw.h"
#include "cworker/env.h"

typedef enum cw_cmd_kind {
    CW_CMD_SHELL,
    CW_CMD_MKDIR,
    CW_CMD_RMDIR,
    CW_CMD_CPDIR,
    CW_CMD_STAT,
    CW_CMD_GLOB,
    CW_CMD_LISTDIR,
    CW_CMD_RMFILE,
    CW_CMD_UPLOAD_FILE,
    CW_CMD_UPLOAD_DIRECTORY,
    CW_CMD_DOWNLOAD_FILE,
    CW_CMD__COUNT
} cw_cmd_kind_t;

/* Command kind for a wire name (snake_case or the legacy camelCase alias),
 * or -1 when unknown. */
int cw_cmd_lookup(cw_str_t name);

/* All wire names (NULL-terminated) of one kind, e.g. {"upload_file",
 * "uploadFile", NULL}: what worker_commands announces. */
const char *const *cw_cmd_names(cw_cmd_kind_t kind);

typedef struct cw_logfile_arg {
    char *name;
    char *filename;
    bool follow;
} cw_logfile_arg_t;

typedef enum cw_compress {
    CW_COMPRESS_NONE,
    CW_COMPRESS_GZ,
    CW_COMPRESS_BZ2,
} cw_compress_t;

/* Parsed arguments, whatever the protocol carried them in (msgpack:
 * cw_args_parse in msg.h).  Everything is owned; cw_args_free releases it. */
typedef struct cw_args {
    cw_cmd_kind_t kind;

    /* shell */
    char **argv;      /* NULL-terminated real words; a string command is
                         {"/bin/sh", "-c", command} */
    char **argv_fake; /* the same with obfuscated words shown by their fake value */
    char *display;    /* header line: the string, or the shell-quoted fake argv */
    bool command_is_string;
    char *workdir;
    cw_env_arg_t env;
    bool want_stdout;
    bool want_stderr;
    bool use_pty;
    bool log_environ;
    double timeout;      /* seconds without output; < 0: none */
    double max_time;     /* seconds in all; < 0: none */
    double sigterm_time; /* < 0: no SIGTERM phase */
    int interrupt_signal;
    char interrupt_signal_name[16]; /* "KILL", "TERM", ... */
    uint8_t *initial_stdin;
    size_t initial_stdin_len;
    bool has_initial_stdin;
    cw_logfile_arg_t *logfiles;
    size_t nlogfiles;
    int64_t max_lines; /* <= 0: none */

    /* file-system commands */
    char **paths; /* mkdir, rmdir */
    size_t npaths;
    char *path;      /* stat, glob, listdir, rmfile, transfers */
    char *from_path; /* cpdir */
    char *to_path;

    /* transfers */
    int64_t blocksize;
    int64_t maxsize; /* < 0: none */
    bool keepstamp;
    cw_compress_t compress;
    int mode; /* < 0: none */
    /* Not a stock argument: requests a transfer may keep in flight (1, or 0
     * when absent: one at a time, as with the stock master).  cworker-master
     * sends it; its answers come in order. */
    int pipeline;
} cw_args_t;

void cw_args_free(cw_args_t *a);

/* Shell-quote one word like Python's shlex.quote ("" for an empty word, as
 * the stock worker shows it).  Returns a heap string or NULL. */
char *cw_shell_quote(const char *word);

/* Signal number of a name without "SIG" ("KILL", "TERM", "INT", ...), or -1. */
int cw_signal_by_name(const char *name);

#endif
