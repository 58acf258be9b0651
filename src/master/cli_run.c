/* cworker-master run: one shell command on the worker, its output streamed
 * to our stdout/stderr, its exit code ours. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "log.h"

/* A line record's text ([text, offsets, times] -> text). */
static bool record_text(const msgpack_object *v, cw_str_t *text)
{
    if (v->type != MSGPACK_OBJECT_ARRAY || v->via.array.size < 1)
        return false;
    return cw_obj_str(&v->via.array.ptr[0], text);
}

static void run_on_update(cw_remote_t *r, cw_str_t key, const msgpack_object *value)
{
    cli_t *cli = r->data;
    cw_str_t text;
    if (cw_str_eq(key, "stdout") && record_text(value, &text)) {
        cli_write_all(1, text.ptr, text.len);
    } else if (cw_str_eq(key, "stderr") && record_text(value, &text)) {
        cli_write_all(2, text.ptr, text.len);
    } else if (cw_str_eq(key, "header") && record_text(value, &text)) {
        /* the worker's own lines ("process killed by signal 9", ...) */
        const char *p = text.ptr, *end = text.ptr + text.len;
        const char *needle = "process killed by signal ";
        size_t nl = strlen(needle);
        for (; p + nl < end; p++)
            if (memcmp(p, needle, nl) == 0)
                cli->killed_by_signal = atoi(p + nl);
        /* workers older than 3.10 send no failure_reason, only this header */
        const char *to = "seconds elapsed running";
        size_t tl = strlen(to);
        for (p = text.ptr; p + tl <= end; p++)
            if (memcmp(p, to, tl) == 0)
                cli->timed_out = true;
        if (cli->verbose)
            cli_write_all(2, text.ptr, text.len);
    } else if (cw_str_eq(key, "failure_reason")) {
        cw_str_t s;
        if (cw_obj_str(value, &s) && cw_str_eq(s, "timeout"))
            cli->timed_out = true;
    }
}

static void run_on_complete(cw_remote_t *r, bool has_rc, int64_t rc, const char *failure,
                            bool lost)
{
    cli_t *cli = r->data;
    cli->xfer = NULL; /* r is freed after this call */
    if (lost) {
        cw_error("lost the link to worker '%s' while the command ran: %s", cli->worker_name,
                 failure ? failure : "?");
        cli_finish(cli, CLI_EXIT_LINK_LOST);
        return;
    }
    if (failure) {
        cw_error("the command failed on the worker: %s", failure);
        cli_finish(cli, CLI_EXIT_FAILURE);
        return;
    }
    if (!has_rc) {
        cw_error("the worker reported no exit code");
        cli_finish(cli, CLI_EXIT_FAILURE);
        return;
    }
    int code;
    if (cli->timed_out)
        code = CLI_EXIT_TIMEOUT;
    else if (rc >= 0 && rc <= 255)
        code = (int)rc;
    else if (cli->killed_by_signal > 0)
        code = 128 + (cli->killed_by_signal & 127);
    else
        code = CLI_EXIT_FAILURE;
    if (cli->signals && rc < 0)
        code = 130; /* we interrupted it, like a shell after Ctrl-C */
    cli_finish(cli, code);
}

static const cw_remote_callbacks_t run_callbacks = {
    .on_update = run_on_update,
    .on_transfer = NULL,
    .on_complete = run_on_complete,
};

static void run_start(cli_t *cli, cw_mworker_t *w)
{
    char *workdir = cli_remote_path(cli, cli->workdir ? cli->workdir : ".");
    cw_buf_t b = CW_BUF_INIT;
    msgpack_packer pk;
    cw_pack_init(&pk, &b);
    msgpack_pack_map(&pk, 9);
    cw_pack_str(&pk, "command");
    size_t n = 0;
    while (cli->cmd_argv[n])
        n++;
    msgpack_pack_array(&pk, n);
    for (size_t i = 0; i < n; i++)
        cw_pack_str(&pk, cli->cmd_argv[i]);
    cw_pack_str(&pk, "workdir");
    cw_pack_str(&pk, workdir);
    cw_pack_str(&pk, "env");
    msgpack_pack_map(&pk, cli->nenv);
    for (size_t i = 0; i < cli->nenv; i++) {
        const char *eq = strchr(cli->env[i], '=');
        cw_pack_strn(&pk, cli->env[i], (size_t)(eq - cli->env[i]));
        if (eq[1] == '\0')
            msgpack_pack_nil(&pk); /* K= removes the variable */
        else
            cw_pack_str(&pk, eq + 1);
    }
    cw_pack_str(&pk, "want_stdout");
    msgpack_pack_true(&pk);
    cw_pack_str(&pk, "want_stderr");
    msgpack_pack_true(&pk);
    cw_pack_str(&pk, "logEnviron");
    msgpack_pack_false(&pk);
    cw_pack_str(&pk, "usePTY");
    msgpack_pack_false(&pk);
    cw_pack_str(&pk, "timeout");
    msgpack_pack_nil(&pk);
    cw_pack_str(&pk, "maxTime");
    if (cli->timeout > 0)
        msgpack_pack_double(&pk, cli->timeout);
    else
        msgpack_pack_nil(&pk);
    cw_remote_t *r = cw_remote_start(w, "shell", b.data, b.len, &run_callbacks, cli);
    cw_buf_free(&b);
    free(workdir);
    if (r == NULL) {
        cw_error("cannot start the command on worker '%s'", cli->worker_name);
        cli_finish(cli, CLI_EXIT_FAILURE);
        return;
    }
    cli->xfer = r;
}

static void run_interrupt(cli_t *cli)
{
    if (cli->xfer)
        cw_remote_interrupt(cli->xfer, "interrupted by cworker-master");
}

const cli_job_t cli_run_job = {
    .start = run_start,
    .interrupt = run_interrupt,
};
