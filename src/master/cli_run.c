/* cworker-master run: a shell command on the worker, its output streamed to
 * our stdout/stderr, its exit code ours.  With --parallel N the command runs
 * N times at once (each with CW_RUN_INDEX=i in its environment); each copy's
 * output is collected and printed as one block when it ends, so blocks never
 * mix. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "log.h"

/* One running copy of the command. */
typedef struct run_one {
    cli_t *cli;
    cw_remote_t *r;
    unsigned index;
    cw_buf_t out, err; /* --parallel: collected output */
    int killed_by_signal;
    bool timed_out;
    bool done;
    int code;
} run_one_t;

typedef struct run_state {
    run_one_t *runs;
    unsigned n;
    unsigned left;
    int code; /* the first non-zero exit code, in index order */
} run_state_t;

/* A line record's text ([text, offsets, times] -> text). */
static bool record_text(const msgpack_object *v, cw_str_t *text)
{
    if (v->type != MSGPACK_OBJECT_ARRAY || v->via.array.size < 1)
        return false;
    return cw_obj_str(&v->via.array.ptr[0], text);
}

/* True if the text contains needle. */
static const char *find(cw_str_t text, const char *needle)
{
    size_t nl = strlen(needle);
    for (const char *p = text.ptr; p + nl <= text.ptr + text.len; p++)
        if (memcmp(p, needle, nl) == 0)
            return p;
    return NULL;
}

static void run_on_update(cw_remote_t *r, cw_str_t key, const msgpack_object *value)
{
    run_one_t *one = r->data;
    cli_t *cli = one->cli;
    bool stream = cli->parallel <= 1;
    cw_str_t text;
    if (cw_str_eq(key, "stdout") && record_text(value, &text)) {
        if (stream)
            cli_write_all(1, text.ptr, text.len);
        else
            cw_buf_append(&one->out, text.ptr, text.len);
    } else if (cw_str_eq(key, "stderr") && record_text(value, &text)) {
        if (stream)
            cli_write_all(2, text.ptr, text.len);
        else
            cw_buf_append(&one->err, text.ptr, text.len);
    } else if (cw_str_eq(key, "header") && record_text(value, &text)) {
        /* the worker's own lines ("process killed by signal 9", ...) */
        const char *p = find(text, "process killed by signal ");
        if (p)
            one->killed_by_signal = atoi(p + strlen("process killed by signal "));
        /* workers older than 3.10 send no failure_reason, only this header */
        if (find(text, "seconds elapsed running"))
            one->timed_out = true;
        if (cli->verbose && stream)
            cli_write_all(2, text.ptr, text.len);
    } else if (cw_str_eq(key, "failure_reason")) {
        cw_str_t s;
        if (cw_obj_str(value, &s) && cw_str_eq(s, "timeout"))
            one->timed_out = true;
    }
}

/* Exit code for one finished copy. */
static int run_code(run_one_t *one, bool has_rc, int64_t rc, const char *failure, bool lost)
{
    cli_t *cli = one->cli;
    /* with --parallel, say which copy an error belongs to */
    char tag[24] = "";
    if (cli->parallel > 1)
        snprintf(tag, sizeof tag, "[%u] ", one->index);
    if (lost) {
        cw_error("%slost the link to worker '%s' while the command ran: %s", tag, cli->worker_name,
                 failure ? failure : "?");
        return CLI_EXIT_LINK_LOST;
    }
    if (failure) {
        cw_error("%sthe command failed on the worker: %s", tag, failure);
        return CLI_EXIT_FAILURE;
    }
    if (!has_rc) {
        cw_error("%sthe worker reported no exit code", tag);
        return CLI_EXIT_FAILURE;
    }
    if (cli->signals && rc < 0)
        return 130; /* we interrupted it, like a shell after Ctrl-C */
    if (one->timed_out)
        return CLI_EXIT_TIMEOUT;
    if (rc >= 0 && rc <= 255)
        return (int)rc;
    if (one->killed_by_signal > 0)
        return 128 + (one->killed_by_signal & 127);
    return CLI_EXIT_FAILURE;
}

static void run_on_complete(cw_remote_t *r, bool has_rc, int64_t rc, const char *failure, bool lost)
{
    run_one_t *one = r->data;
    cli_t *cli = one->cli;
    run_state_t *st = cli->xfer;
    one->r = NULL; /* r is freed after this call */
    one->done = true;
    one->code = run_code(one, has_rc, rc, failure, lost);
    if (cli->parallel > 1) {
        char head[64];
        int n = snprintf(head, sizeof head, "=== [%u] exit %d\n", one->index, one->code);
        cli_write_all(1, head, (size_t)n);
        cli_write_all(1, one->out.data, one->out.len);
        cli_write_all(2, one->err.data, one->err.len);
        cw_buf_free(&one->out);
        cw_buf_free(&one->err);
    }
    if (--st->left > 0)
        return;
    int code = 0;
    for (unsigned i = 0; i < st->n && code == 0; i++)
        code = st->runs[i].code;
    cli_finish(cli, code);
}

static const cw_remote_callbacks_t run_callbacks = {
    .on_update = run_on_update,
    .on_transfer = NULL,
    .on_complete = run_on_complete,
};

/* The shell command's arguments, packed (index < 0: no CW_RUN_INDEX). */
static void pack_args(cli_t *cli, const char *workdir, int index, cw_buf_t *b)
{
    msgpack_packer pk;
    cw_pack_init(&pk, b);
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
    msgpack_pack_map(&pk, cli->nenv + (index >= 0));
    for (size_t i = 0; i < cli->nenv; i++) {
        const char *eq = strchr(cli->env[i], '=');
        cw_pack_strn(&pk, cli->env[i], (size_t)(eq - cli->env[i]));
        if (eq[1] == '\0')
            msgpack_pack_nil(&pk); /* K= removes the variable */
        else
            cw_pack_str(&pk, eq + 1);
    }
    if (index >= 0) {
        char v[16];
        snprintf(v, sizeof v, "%d", index);
        cw_pack_str(&pk, "CW_RUN_INDEX");
        cw_pack_str(&pk, v);
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
}

static void run_start(cli_t *cli, cw_mworker_t *w)
{
    unsigned n = cli->parallel > 1 ? (unsigned)cli->parallel : 1;
    run_state_t *st = calloc(1, sizeof *st);
    if (st == NULL || (st->runs = calloc(n, sizeof *st->runs)) == NULL) {
        free(st);
        cli_finish(cli, CLI_EXIT_FAILURE);
        return;
    }
    st->n = n;
    cli->xfer = st;
    char *workdir = cli_remote_path(cli, cli->workdir ? cli->workdir : ".");
    for (unsigned i = 0; i < n; i++) {
        run_one_t *one = &st->runs[i];
        one->cli = cli;
        one->index = i;
        cw_buf_t b = CW_BUF_INIT;
        pack_args(cli, workdir, n > 1 ? (int)i : -1, &b);
        one->r = cw_remote_start(w, "shell", b.data, b.len, &run_callbacks, one);
        cw_buf_free(&b);
        if (one->r == NULL) {
            cw_error("cannot start the command on worker '%s'", cli->worker_name);
            one->done = true;
            one->code = CLI_EXIT_FAILURE;
            continue;
        }
        st->left++;
    }
    free(workdir);
    if (st->left == 0)
        cli_finish(cli, CLI_EXIT_FAILURE);
}

static void run_interrupt(cli_t *cli)
{
    run_state_t *st = cli->xfer;
    for (unsigned i = 0; st && i < st->n; i++)
        if (st->runs[i].r)
            cw_remote_interrupt(st->runs[i].r, "interrupted by cworker-master");
}

static void run_free(cli_t *cli)
{
    run_state_t *st = cli->xfer;
    for (unsigned i = 0; i < st->n; i++) {
        cw_buf_free(&st->runs[i].out);
        cw_buf_free(&st->runs[i].err);
    }
    free(st->runs);
    free(st);
    cli->xfer = NULL;
}

const cli_job_t cli_run_job = {
    .start = run_start,
    .interrupt = run_interrupt,
    .free = run_free,
};
