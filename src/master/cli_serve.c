/* cworker-master serve: the control socket (--control PATH).
 *
 * A Unix stream socket that takes one request line per connection and
 * answers it, then closes:
 *
 *   stats                 -> "attached A connections C accounts N rss_kib R\n"
 *   run NAME WORD...      -> runs WORD... (an argv, split on spaces, no shell)
 *                            on the attached worker NAME; the answer is
 *                            "exit CODE ms MS\n" and then the command's
 *                            stdout and stderr as they arrived
 *
 * Errors are one line "error TEXT\n".  A command started for a client that
 * goes away still runs to its end (its output is dropped).  The socket is
 * for the local user: it is created with mode 0600.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "procstat.h"
#include "cli.h"
#include "log.h"

#define CTL_MAX_LINE 8192

typedef struct ctl_client {
    uv_pipe_t pipe;
    cli_t *cli;
    struct ctl_client *next, *prev;
    cw_buf_t in;
    cw_buf_t out;   /* the command's output, sent after the exit line */
    cw_remote_t *r; /* a running command, or NULL */
    uint64_t t0;    /* uv_hrtime at the request */
    bool replied;   /* the answer is written: close after it */
    bool closing;
} ctl_client_t;

static ctl_client_t *ctl_clients;

static void ctl_client_closed(uv_handle_t *h)
{
    ctl_client_t *cc = h->data;
    if (cc->prev)
        cc->prev->next = cc->next;
    else
        ctl_clients = cc->next;
    if (cc->next)
        cc->next->prev = cc->prev;
    cw_buf_free(&cc->in);
    cw_buf_free(&cc->out);
    free(cc);
}

/* Close the client's pipe (its command, if any, keeps running). */
static void ctl_client_close(ctl_client_t *cc)
{
    if (cc->closing)
        return;
    cc->closing = true;
    if (cc->r) {
        cc->r->data = NULL; /* the completion finds no client */
        cc->r = NULL;
    }
    uv_close((uv_handle_t *)&cc->pipe, ctl_client_closed);
}

typedef struct ctl_write {
    uv_write_t req;
    ctl_client_t *cc;
    cw_buf_t b;
} ctl_write_t;

static void ctl_written(uv_write_t *req, int status)
{
    ctl_write_t *wr = (ctl_write_t *)req;
    cw_buf_free(&wr->b);
    ctl_client_close(wr->cc);
    free(wr);
}

/* Send b (taken) as the whole answer, then close. */
static void ctl_reply(ctl_client_t *cc, cw_buf_t *b)
{
    cc->replied = true;
    ctl_write_t *wr = calloc(1, sizeof *wr);
    if (wr == NULL || cc->closing) {
        free(wr);
        cw_buf_free(b);
        ctl_client_close(cc);
        return;
    }
    wr->cc = cc;
    wr->b = *b;
    *b = (cw_buf_t)CW_BUF_INIT;
    uv_buf_t ub = uv_buf_init((char *)wr->b.data, (unsigned)wr->b.len);
    uv_read_stop((uv_stream_t *)&cc->pipe);
    if (uv_write(&wr->req, (uv_stream_t *)&cc->pipe, &ub, 1, ctl_written) < 0) {
        cw_buf_free(&wr->b);
        free(wr);
        ctl_client_close(cc);
    }
}

static void ctl_reply_text(ctl_client_t *cc, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* A one-line answer. */
static void ctl_reply_text(ctl_client_t *cc, const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    cw_buf_t b = CW_BUF_INIT;
    cw_buf_append_str(&b, line);
    ctl_reply(cc, &b);
}

/* ---- run ---- */

static void ctl_on_update(cw_remote_t *r, cw_str_t key, const msgpack_object *v)
{
    ctl_client_t *cc = r->data;
    if (cc == NULL || !(cw_str_eq(key, "stdout") || cw_str_eq(key, "stderr")))
        return;
    cw_str_t t;
    if (v->type == MSGPACK_OBJECT_ARRAY && v->via.array.size > 0 &&
        cw_obj_str(&v->via.array.ptr[0], &t) && cc->out.len + t.len <= (64u << 20))
        cw_buf_append(&cc->out, t.ptr, t.len);
}

static void ctl_on_complete(cw_remote_t *r, bool has_rc, int64_t rc, const char *failure, bool lost)
{
    ctl_client_t *cc = r->data;
    if (cc == NULL)
        return;
    cc->r = NULL;
    double ms = (double)(uv_hrtime() - cc->t0) / 1e6;
    cw_buf_t b = CW_BUF_INIT;
    if (failure || !has_rc)
        cw_buf_printf(&b, "error %s%s (after %.3f ms)\n", lost ? "link lost: " : "",
                      failure ? failure : "no exit code", ms);
    else
        cw_buf_printf(&b, "exit %lld ms %.3f\n", (long long)rc, ms);
    cw_buf_append(&b, cc->out.data, cc->out.len);
    ctl_reply(cc, &b);
}

static const cw_remote_callbacks_t ctl_run_callbacks = {
    .on_update = ctl_on_update,
    .on_transfer = NULL,
    .on_complete = ctl_on_complete,
};

/* run NAME WORD...: start the command (argv) on the worker. */
static void ctl_run(ctl_client_t *cc, char **words, size_t n)
{
    cli_t *cli = cc->cli;
    if (n < 3) {
        ctl_reply_text(cc, "error usage: run NAME WORD...\n");
        return;
    }
    cw_mworker_t *w = cw_master_find(&cli->master, words[1]);
    if (w == NULL) {
        ctl_reply_text(cc, "error no attached worker '%.200s'\n", words[1]);
        return;
    }
    cw_buf_t b = CW_BUF_INIT;
    msgpack_packer pk;
    cw_pack_init(&pk, &b);
    msgpack_pack_map(&pk, 6);
    cw_pack_str(&pk, "command");
    msgpack_pack_array(&pk, n - 2);
    for (size_t i = 2; i < n; i++)
        cw_pack_str(&pk, words[i]);
    cw_pack_str(&pk, "workdir");
    cw_pack_str(&pk, w->basedir ? w->basedir : ".");
    cw_pack_str(&pk, "want_stdout");
    msgpack_pack_true(&pk);
    cw_pack_str(&pk, "want_stderr");
    msgpack_pack_true(&pk);
    cw_pack_str(&pk, "logEnviron");
    msgpack_pack_false(&pk);
    cw_pack_str(&pk, "usePTY");
    msgpack_pack_false(&pk);
    cc->r = cw_remote_start(w, "shell", b.data, b.len, &ctl_run_callbacks, cc);
    cw_buf_free(&b);
    if (cc->r == NULL)
        ctl_reply_text(cc, "error cannot start the command on '%.200s'\n", words[1]);
}

/* One request line. */
static void ctl_request(ctl_client_t *cc, char *line)
{
    char *words[256];
    size_t n = 0;
    char *save = NULL;
    for (char *t = strtok_r(line, " \t", &save); t && n < 256; t = strtok_r(NULL, " \t", &save))
        words[n++] = t;
    if (n == 0) {
        ctl_reply_text(cc, "error empty request\n");
    } else if (strcmp(words[0], "stats") == 0) {
        cw_master_t *m = &cc->cli->master;
        ctl_reply_text(cc, "attached %zu connections %zu accounts %zu rss_kib %ld\n", m->nattached,
                       m->nconns, m->naccounts, cw_rss_kib());
    } else if (strcmp(words[0], "run") == 0) {
        ctl_run(cc, words, n);
    } else {
        ctl_reply_text(cc, "error unknown request '%.100s' (stats, run)\n", words[0]);
    }
}

static void ctl_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    ctl_client_t *cc = h->data;
    if (cw_buf_reserve(&cc->in, 1024) < 0) {
        *buf = uv_buf_init(NULL, 0);
        return;
    }
    *buf = uv_buf_init((char *)cc->in.data + cc->in.len, (unsigned)(cc->in.cap - cc->in.len));
}

static void ctl_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    ctl_client_t *cc = s->data;
    if (nread < 0) {
        /* gone before asking, or before the answer (a command runs on) */
        ctl_client_close(cc);
        return;
    }
    cc->in.len += (size_t)nread;
    char *nl = memchr(cc->in.data, '\n', cc->in.len);
    if (nl == NULL) {
        if (cc->in.len > CTL_MAX_LINE)
            ctl_reply_text(cc, "error request line too long\n");
        return;
    }
    *nl = '\0';
    if (nl > (char *)cc->in.data && nl[-1] == '\r')
        nl[-1] = '\0';
    uv_read_stop(s);
    cc->t0 = uv_hrtime();
    ctl_request(cc, (char *)cc->in.data);
}

static void ctl_on_connection(uv_stream_t *server, int status)
{
    cli_t *cli = server->data;
    if (status < 0)
        return;
    ctl_client_t *cc = calloc(1, sizeof *cc);
    if (cc == NULL)
        return;
    cc->cli = cli;
    uv_pipe_init(cli->loop, &cc->pipe, 0);
    cc->pipe.data = cc;
    cc->next = ctl_clients;
    if (ctl_clients)
        ctl_clients->prev = cc;
    ctl_clients = cc;
    if (uv_accept(server, (uv_stream_t *)&cc->pipe) < 0 ||
        uv_read_start((uv_stream_t *)&cc->pipe, ctl_alloc, ctl_read) < 0)
        ctl_client_close(cc);
}

int cli_serve_control_start(cli_t *cli, const char *path)
{
    uv_pipe_init(cli->loop, &cli->control, 0);
    cli->control.data = cli;
    cli->control_open = true;
    unlink(path); /* a socket left by an earlier run */
    mode_t um = umask(077);
    int rc = uv_pipe_bind(&cli->control, path);
    umask(um);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&cli->control, 64, ctl_on_connection);
    if (rc < 0)
        return rc;
    cli->control_path = path;
    return 0;
}

void cli_serve_control_close(cli_t *cli)
{
    if (!cli->control_open)
        return;
    cli->control_open = false;
    uv_close((uv_handle_t *)&cli->control, NULL);
    if (cli->control_path)
        unlink(cli->control_path);
    for (ctl_client_t *cc = ctl_clients; cc; cc = cc->next)
        ctl_client_close(cc);
}
