/* The `shell` command: run a process in its own process group, stream its
 * output, enforce timeout / maxTime / max_lines, watch logfiles, and kill
 * the whole group on interrupt (reference §7.1).
 *
 * The command is done only when the child has been reaped AND every output
 * pipe has reached EOF (a background grandchild may hold them open; the
 * no-output timeout still applies).  After the last kill signal a backup
 * timer bounds the wait: pipes held by processes that escaped the group
 * are then closed, and a child that survives SIGKILL is given up with the
 * stock "failed to kill" report.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cmd.h"
#include "cworker/env.h"
#include "fsutil.h"
#include "log.h"
#include "proc.h"

#define READ_CHUNK        (64 * 1024)
#define READS_PER_EVENT   16 /* up to 1 MiB per wake-up (the pipe's size, proc.c) */
#define BACKUP_TIMEOUT_MS 5000
#define LOGFILE_POLL_MS   1000

/* One watched logfile. */
typedef struct shell_logfile {
    const cw_logfile_arg_t *arg;
    char *path;
    cw_lines_t lines;
    int fd;
    bool started;
    bool had_initial; /* the file existed when the command started */
    struct stat initial;
} shell_logfile_t;

/* One output stream of the child (stdout, stderr, or the PTY). */
typedef struct shell shell_t;

typedef struct shell_stream {
    uv_poll_t poll;
    shell_t *sh;
    int fd;
    bool open; /* fd open, not at EOF yet */
    bool polling;
    bool handle_init;
    bool want; /* send it to the master (want_stdout / want_stderr) */
    cw_lines_t lines;
} shell_stream_t;

struct shell {
    cw_cmd_t *cmd;
    cw_proc_t *proc;
    cw_envp_t envp;
    shell_stream_t out, err;
    uv_poll_t in_poll;
    int in_fd;
    bool in_handle_init;
    size_t in_off;

    uv_timer_t t_timeout, t_maxtime, t_sigterm, t_backup, t_logpoll;
    uv_check_t resume; /* the reads after a pause, outside the flush that resumed us */
    bool timers_init;
    shell_logfile_t *logfiles;
    size_t nlogfiles;

    bool spawned;
    bool exited;
    int exit_status;
    int term_signal;
    bool killed;        /* a kill was attempted: exit 0 becomes rc -1 */
    bool gave_up;       /* the child survived SIGKILL */
    bool done;          /* finish reported */
    bool draining_logs; /* final logfile reads after the child ended */
    int64_t line_count;
    bool max_lines_hit;
    int closing; /* handles still closing in destroy */
};

/* A timer's milliseconds for a number of seconds: a value whose milliseconds
 * do not fit uint64_t (a timeout of 1e300 s) means "never" rather than the
 * undefined conversion (0 on x86-64: the timer would fire at once). */
static uint64_t seconds_ms(double s)
{
    if (!(s > 0))
        return 0;
    return s >= 1.8e16 ? UINT64_MAX : (uint64_t)(s * 1000);
}

static uint8_t shell_rbuf[READ_CHUNK]; /* shared: data is consumed synchronously */

static void shell_check_done(shell_t *sh);
static void shell_kill(shell_t *sh, const char *reason);
static void shell_poll_logfiles(shell_t *sh, bool final);

/* Python-like repr of a string for the " argv: [...]" header. */
static void repr_str(cw_buf_t *b, const char *s)
{
    cw_buf_append_str(b, "'");
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '\'' || c == '\\')
            cw_buf_printf(b, "\\%c", c);
        else if (c == '\n')
            cw_buf_append_str(b, "\\n");
        else if (c == '\t')
            cw_buf_append_str(b, "\\t");
        else if (c < 0x20 || c == 0x7f)
            cw_buf_printf(b, "\\x%02x", c);
        else
            cw_buf_append(b, &c, 1);
    }
    cw_buf_append_str(b, "'");
}

/* Seconds as the stock worker prints them: 1200, 2.5. */
static void fmt_secs(char *out, size_t n, double v)
{
    snprintf(out, n, "%g", v);
}

/* The header block the stock worker sends before starting the process. */
static void shell_headers(shell_t *sh, bool pty_disabled)
{
    cw_cmd_t *cmd = sh->cmd;
    cw_args_t *a = &cmd->args;
    cw_buf_t b = CW_BUF_INIT;
    char t[64];

    if (pty_disabled)
        cw_buf_append_str(&b, "WARNING: disabling usePTY for this command\n");
    cw_buf_printf(&b, "%s\n in dir %s", a->display, a->workdir);
    if (a->timeout > 0) {
        fmt_secs(t, sizeof t, a->timeout);
        cw_buf_printf(&b, " (timeout %s %s)", t, a->timeout == 1 ? "sec" : "secs");
    }
    if (a->max_time > 0) {
        fmt_secs(t, sizeof t, a->max_time);
        cw_buf_printf(&b, " (maxTime %s %s)", t, a->max_time == 1 ? "sec" : "secs");
    }
    cw_buf_append_str(&b, "\n watching logfiles {");
    for (size_t i = 0; i < a->nlogfiles; i++) {
        if (i)
            cw_buf_append_str(&b, ", ");
        repr_str(&b, a->logfiles[i].name);
        cw_buf_append_str(&b, ": ");
        repr_str(&b, a->logfiles[i].filename);
    }
    cw_buf_append_str(&b, "}\n argv: [");
    for (char **p = a->argv_fake; *p; p++) {
        if (p != a->argv_fake)
            cw_buf_append_str(&b, ", ");
        repr_str(&b, *p);
    }
    cw_buf_append_str(&b, "]\n");
    if (a->log_environ) {
        cw_buf_append_str(&b, " environment:\n");
        for (char **e = sh->envp; *e; e++)
            cw_buf_printf(&b, "  %s\n", *e);
    }
    if (a->has_initial_stdin)
        cw_buf_printf(&b, " writing %zu bytes to stdin\n", a->initial_stdin_len);
    cw_buf_printf(&b, " using PTY: %s\n", a->use_pty ? "True" : "False");
    cw_buf_append(&b, "", 1);
    cw_cmd_header(cmd, "%s", (const char *)b.data);
    cw_buf_free(&b);
}

/* Restart the no-output timer. */
static void shell_touch(shell_t *sh)
{
    if (sh->cmd->args.timeout > 0 && uv_is_active((uv_handle_t *)&sh->t_timeout))
        uv_timer_again(&sh->t_timeout);
}

static void stream_stop(shell_stream_t *s)
{
    if (s->polling) {
        uv_poll_stop(&s->poll);
        s->polling = false;
    }
}

/* EOF (or an error we treat as EOF) on a stream. */
static void stream_close(shell_t *sh, shell_stream_t *s)
{
    if (!s->open)
        return;
    stream_stop(s);
    s->open = false;
    close(s->fd);
    s->fd = -1;
    if (s->want && cw_lines_pending(&s->lines)) {
        cw_lines_flush(&s->lines, &sh->cmd->out, cw_cmd_now(sh->cmd));
        cw_cmd_output_added(sh->cmd);
    }
}

/* Count line ends like the stock max_lines check: \r\n, \r or \n. */
static int64_t count_line_ends(const uint8_t *p, size_t n)
{
    int64_t c = 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i] == '\n') {
            c++;
        } else if (p[i] == '\r') {
            c++;
            if (i + 1 < n && p[i + 1] == '\n')
                i++;
        }
    }
    return c;
}

static void stream_poll_cb(uv_poll_t *h, int status, int events);

static void stream_start(shell_stream_t *s)
{
    if (s->open && !s->polling) {
        uv_poll_start(&s->poll, UV_READABLE | UV_DISCONNECT, stream_poll_cb);
        s->polling = true;
    }
}

/* What stream_drain() stopped at. */
enum drain_end {
    DRAIN_EMPTY,  /* the pipe is empty (EAGAIN) */
    DRAIN_MORE,   /* READS_PER_EVENT reads done, there may be more */
    DRAIN_PAUSED, /* backpressure: this stream stopped */
    DRAIN_CLOSED, /* EOF, or the command was ended (max_lines) */
};

/* Read what the stream has, up to READS_PER_EVENT chunks. */
static enum drain_end stream_drain(shell_stream_t *s)
{
    shell_t *sh = s->sh;
    cw_cmd_t *cmd = sh->cmd;
    for (int i = 0; i < READS_PER_EVENT && s->open; i++) {
        ssize_t n = read(s->fd, shell_rbuf, sizeof shell_rbuf);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return DRAIN_EMPTY;
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            /* EOF; a PTY reports EIO once the last writer is gone */
            stream_close(sh, s);
            shell_check_done(sh);
            return DRAIN_CLOSED;
        }
        shell_touch(sh);
        if (!s->want)
            continue;
        if (cmd->args.max_lines > 0 && !sh->max_lines_hit) {
            sh->line_count += count_line_ends(shell_rbuf, (size_t)n);
            if (sh->line_count > cmd->args.max_lines) {
                sh->max_lines_hit = true;
                cw_lines_feed(&s->lines, &cmd->out, shell_rbuf, (size_t)n, cw_cmd_now(cmd));
                cw_cmd_output_added(cmd);
                char why[256];
                snprintf(why, sizeof why,
                         "command exceeds max lines: %lld/%lld written/allowed running %s",
                         (long long)sh->line_count, (long long)cmd->args.max_lines,
                         cmd->args.display);
                cw_cmd_add_str(cmd, "failure_reason", "max_lines_failure");
                /* the rest of its output is not wanted */
                stream_close(sh, &sh->out);
                stream_close(sh, &sh->err);
                shell_kill(sh, why);
                shell_check_done(sh);
                return DRAIN_CLOSED;
            }
        }
        if (cw_lines_feed(&s->lines, &cmd->out, shell_rbuf, (size_t)n, cw_cmd_now(cmd)) < 0)
            cw_error("command %s: out of memory", cmd->id);
        cw_cmd_output_added(cmd);
        if (cw_cmd_should_pause(cmd)) {
            /* backpressure: the child blocks on a full pipe.  The other stream stops
             * when it next has something (stream_poll_cb): usually it never does, and
             * its poll stays as it is (no epoll_ctl). */
            stream_stop(s);
            return DRAIN_PAUSED;
        }
    }
    return s->open ? DRAIN_MORE : DRAIN_CLOSED;
}

static void stream_poll_cb(uv_poll_t *h, int status, int events)
{
    (void)status;
    (void)events;
    shell_stream_t *s = h->data;
    if (s->sh->cmd->paused) {
        stream_stop(s); /* on_resume reads it */
        return;
    }
    stream_drain(s);
}

/* After a pause: read the streams from here (the check phase of the loop, not inside the
 * flush that resumed the command), and poll a stream again only once it is empty.  A
 * child that writes faster than the master takes its output keeps its pipe full: then
 * each resume is one read, where stopping and restarting the poll cost three epoll_ctl
 * calls and an extra loop turn (perf stat: 4272 epoll_ctl for the 100 MiB log). */
static void on_resume(uv_check_t *h)
{
    shell_t *sh = h->data;
    uv_check_stop(h);
    if (sh->cmd->paused || sh->done)
        return;
    shell_stream_t *ss[2] = {&sh->out, &sh->err};
    for (int i = 0; i < 2; i++) {
        shell_stream_t *s = ss[i];
        if (!s->open || s->polling)
            continue;
        switch (stream_drain(s)) {
        case DRAIN_PAUSED:
            return;
        case DRAIN_EMPTY:
        case DRAIN_MORE:
            stream_start(s);
            break;
        case DRAIN_CLOSED:
            break;
        }
    }
}

static void stdin_poll_cb(uv_poll_t *h, int status, int events)
{
    shell_t *sh = h->data;
    cw_args_t *a = &sh->cmd->args;
    while (sh->in_off < a->initial_stdin_len) {
        ssize_t n =
            write(sh->in_fd, a->initial_stdin + sh->in_off, a->initial_stdin_len - sh->in_off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (n < 0)
            break; /* EPIPE: the child does not read stdin; fine */
        sh->in_off += (size_t)n;
    }
    uv_poll_stop(&sh->in_poll);
    close(sh->in_fd);
    sh->in_fd = -1;
}

static void on_timeout(uv_timer_t *t)
{
    shell_t *sh = t->data;
    char why[512], secs[32];
    fmt_secs(secs, sizeof secs, sh->cmd->args.timeout);
    snprintf(why, sizeof why, "command timed out: %s seconds without output running %s", secs,
             sh->cmd->args.display);
    cw_cmd_add_str(sh->cmd, "failure_reason", "timeout_without_output");
    shell_kill(sh, why);
}

static void on_maxtime(uv_timer_t *t)
{
    shell_t *sh = t->data;
    char why[512], secs[32];
    fmt_secs(secs, sizeof secs, sh->cmd->args.max_time);
    snprintf(why, sizeof why, "command timed out: %s seconds elapsed running %s", secs,
             sh->cmd->args.display);
    cw_cmd_add_str(sh->cmd, "failure_reason", "timeout");
    shell_kill(sh, why);
}

/* The last kill signal went out BACKUP_TIMEOUT_MS ago. */
static void on_backup(uv_timer_t *t)
{
    shell_t *sh = t->data;
    cw_cmd_t *cmd = sh->cmd;
    if (sh->exited) {
        /* The group is dead but something outside it holds our pipes. */
        cw_warn("command %s: output pipes still open after the process ended; closing them",
                cmd->id);
        stream_close(sh, &sh->out);
        stream_close(sh, &sh->err);
        shell_check_done(sh);
        return;
    }
    sh->gave_up = true;
    cw_cmd_header(cmd, "SIG%s failed to kill process", cmd->args.interrupt_signal_name);
    cw_cmd_header(cmd, "using fake rc=-1");
    cw_cmd_add_int(cmd, "rc", -1);
    stream_close(sh, &sh->out);
    stream_close(sh, &sh->err);
    char failure[64];
    snprintf(failure, sizeof failure, "SIG%s failed to kill process",
             cmd->args.interrupt_signal_name);
    sh->done = true;
    uv_timer_stop(&sh->t_logpoll);
    cw_cmd_finish(cmd, failure);
}

/* Send the final signal and bound the wait for the group to go. */
static void shell_final_signal(shell_t *sh)
{
    cw_proc_signal(sh->proc, sh->cmd->args.interrupt_signal);
    uv_timer_start(&sh->t_backup, on_backup, BACKUP_TIMEOUT_MS, 0);
}

static void on_sigterm_time(uv_timer_t *t)
{
    shell_t *sh = t->data;
    /* Unlike the stock worker, the second signal goes to the whole group. */
    if (cw_proc_group_alive(sh->proc))
        shell_final_signal(sh);
    else
        uv_timer_start(&sh->t_backup, on_backup, BACKUP_TIMEOUT_MS, 0);
}

/* Kill the process group: SIGTERM first when sigtermTime is set, then the
 * interruptSignal (default SIGKILL). */
static void shell_kill(shell_t *sh, const char *reason)
{
    if (sh->killed || sh->done)
        return;
    sh->killed = true;
    uv_timer_stop(&sh->t_timeout);
    uv_timer_stop(&sh->t_maxtime);
    cw_cmd_header(sh->cmd, "\n%s, attempting to kill", reason);
    if (!sh->spawned)
        return;
    if (sh->cmd->args.sigterm_time >= 0) {
        cw_proc_signal(sh->proc, SIGTERM);
        uv_timer_start(&sh->t_sigterm, on_sigterm_time, seconds_ms(sh->cmd->args.sigterm_time), 0);
    } else {
        shell_final_signal(sh);
    }
}

static void on_child_exit(cw_proc_t *p, int exit_status, int term_signal)
{
    shell_t *sh = p->data;
    sh->exited = true;
    sh->exit_status = exit_status;
    sh->term_signal = term_signal;
    shell_check_done(sh);
}

/* Report the end: logfiles drained, headers, rc, elapsedTime. */
static void shell_report(shell_t *sh)
{
    cw_cmd_t *cmd = sh->cmd;
    sh->done = true;
    uv_timer_stop(&sh->t_timeout);
    uv_timer_stop(&sh->t_maxtime);
    uv_timer_stop(&sh->t_sigterm);
    uv_timer_stop(&sh->t_backup);
    uv_timer_stop(&sh->t_logpoll);
    int rc = sh->exit_status;
    if (sh->term_signal) {
        cw_cmd_header(cmd, "process killed by signal %d", sh->term_signal);
        rc = -1;
    } else if (sh->killed && rc == 0) {
        rc = -1;
    }
    cw_cmd_add_int(cmd, "rc", rc);
    cw_cmd_header(cmd, "elapsedTime=%0.6f", cw_cmd_elapsed(cmd));
    cw_info("command %s: process exited, rc %d", cmd->id, rc);
    cw_cmd_finish(cmd, NULL);
}

static void shell_check_done(shell_t *sh)
{
    if (sh->done || !sh->exited || sh->out.open || sh->err.open)
        return;
    if (sh->nlogfiles && !sh->draining_logs) {
        sh->draining_logs = true;
        uv_timer_stop(&sh->t_logpoll);
    }
    if (sh->draining_logs) {
        shell_poll_logfiles(sh, true);
        if (sh->cmd->paused)
            return; /* resume continues the drain */
    }
    shell_report(sh);
}

/* ---- logfiles ---- */

static bool same_stat(const struct stat *a, const struct stat *b)
{
    return a->st_ctime == b->st_ctime && a->st_mtime == b->st_mtime && a->st_size == b->st_size;
}

/* Read new logfile content; `final` reads to EOF (subject to backpressure). */
static void shell_poll_logfiles(shell_t *sh, bool final)
{
    cw_cmd_t *cmd = sh->cmd;
    for (size_t i = 0; i < sh->nlogfiles; i++) {
        shell_logfile_t *lf = &sh->logfiles[i];
        if (!lf->started) {
            struct stat st;
            if (stat(lf->path, &st) < 0) {
                lf->had_initial = false; /* deleted: a new one will come */
                continue;
            }
            if (lf->had_initial && same_stat(&st, &lf->initial))
                continue; /* not touched since the command started */
            lf->fd = open(lf->path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
            if (lf->fd < 0)
                continue;
            if (lf->arg->follow)
                lseek(lf->fd, st.st_size, SEEK_SET);
            lf->started = true;
        }
        /* bounded per tick so one big logfile cannot stall the loop */
        for (int k = 0; k < (final ? 64 : 16); k++) {
            ssize_t n = read(lf->fd, shell_rbuf, sizeof shell_rbuf);
            if (n <= 0)
                break;
            shell_touch(sh);
            cw_lines_feed(&lf->lines, &cmd->out, shell_rbuf, (size_t)n, cw_cmd_now(cmd));
            cw_cmd_output_added(cmd);
            if (cw_cmd_should_pause(cmd))
                return;
        }
        if (final && cw_lines_pending(&lf->lines)) {
            cw_lines_flush(&lf->lines, &cmd->out, cw_cmd_now(cmd));
            cw_cmd_output_added(cmd);
        }
    }
}

static void on_logpoll(uv_timer_t *t)
{
    shell_t *sh = t->data;
    if (!sh->cmd->paused)
        shell_poll_logfiles(sh, false);
}

/* ---- lifecycle ---- */

static void shell_resume(cw_cmd_t *cmd)
{
    shell_t *sh = cmd->state;
    if (sh->draining_logs && !sh->done) {
        shell_check_done(sh);
        return;
    }
    if (sh->timers_init && !uv_is_active((uv_handle_t *)&sh->resume))
        uv_check_start(&sh->resume, on_resume);
}

static void shell_interrupt(cw_cmd_t *cmd, const char *why)
{
    shell_t *sh = cmd->state;
    if (sh->done)
        return;
    if (!sh->spawned) {
        cw_cmd_add_int(cmd, "rc", -1);
        sh->done = true;
        cw_cmd_finish(cmd, NULL);
        return;
    }
    if (sh->killed) {
        /* already being killed: escalate at once */
        uv_timer_stop(&sh->t_sigterm);
        shell_final_signal(sh);
        return;
    }
    shell_kill(sh, why);
}

static int shell_start(cw_cmd_t *cmd)
{
    cw_args_t *a = &cmd->args;
    shell_t *sh = calloc(1, sizeof *sh);
    if (sh == NULL) {
        cw_cmd_add_int(cmd, "rc", -1);
        return -ENOMEM;
    }
    cmd->state = sh;
    sh->cmd = cmd;
    sh->in_fd = -1;
    sh->out.fd = sh->err.fd = -1;
    uv_loop_t *loop = cw_cmd_loop(cmd);
    uv_timer_t *timers[] = {&sh->t_timeout, &sh->t_maxtime, &sh->t_sigterm, &sh->t_backup,
                            &sh->t_logpoll};
    for (size_t i = 0; i < sizeof timers / sizeof timers[0]; i++) {
        uv_timer_init(loop, timers[i]);
        timers[i]->data = sh;
    }
    uv_check_init(loop, &sh->resume);
    sh->resume.data = sh;
    sh->timers_init = true;

    size_t maxline = cmd->settings.max_line_length;
    cw_lines_init(&sh->out.lines, CW_STREAM_STDOUT, NULL, maxline);
    cw_lines_init(&sh->err.lines, CW_STREAM_STDERR, NULL, maxline);
    sh->out.want = a->want_stdout;
    sh->err.want = a->want_stderr;

    /* The stock worker turns the PTY off when it must feed stdin. */
    bool pty_disabled = false;
    if (a->use_pty && a->has_initial_stdin) {
        a->use_pty = false;
        pty_disabled = true;
    }

    char err[600];
    int rc = cw_mkdirs(a->workdir, 0777);
    if (rc < 0) {
        cw_cmd_header(cmd, "cannot create workdir %s: %s", a->workdir, strerror(-rc));
        cw_cmd_add_int(cmd, "rc", -1);
        return rc;
    }
    rc = cw_env_build(cmd->cs->env.environ, &a->env, a->workdir, &sh->envp, err, sizeof err);
    if (rc < 0) {
        cw_cmd_header(cmd, "%s", rc == -ENOMEM ? "out of memory" : err);
        cw_cmd_add_int(cmd, "rc", -1);
        return rc;
    }

    shell_headers(sh, pty_disabled);

    /* logfiles: remember what exists now, so old content is not resent */
    if (a->nlogfiles) {
        sh->logfiles = calloc(a->nlogfiles, sizeof *sh->logfiles);
        if (sh->logfiles == NULL) {
            cw_cmd_add_int(cmd, "rc", -1);
            return -ENOMEM;
        }
        sh->nlogfiles = a->nlogfiles;
        for (size_t i = 0; i < a->nlogfiles; i++) {
            shell_logfile_t *lf = &sh->logfiles[i];
            lf->arg = &a->logfiles[i];
            lf->fd = -1;
            cw_buf_t p = CW_BUF_INIT;
            if (a->logfiles[i].filename[0] == '/')
                cw_buf_append_str(&p, a->logfiles[i].filename);
            else
                cw_buf_printf(&p, "%s/%s", a->workdir, a->logfiles[i].filename);
            cw_buf_append(&p, "", 1);
            lf->path = (char *)cw_buf_steal(&p, NULL);
            lf->had_initial = stat(lf->path, &lf->initial) == 0;
            cw_lines_init(&lf->lines, CW_STREAM_LOG, a->logfiles[i].name, maxline);
        }
    }

    sh->proc = cw_proc_new(on_child_exit, sh);
    if (sh->proc == NULL) {
        cw_cmd_add_int(cmd, "rc", -1);
        return -ENOMEM;
    }
    cw_proc_options_t po = {
        .argv = a->argv,
        .envp = sh->envp,
        .cwd = a->workdir,
        .use_pty = a->use_pty,
        .want_stdin = a->has_initial_stdin,
    };
    rc = cw_proc_spawn(sh->proc, &po, err, sizeof err);
    if (rc < 0) {
        /* like a shell: 127 for a missing program, 126 when it cannot run */
        cw_lines_feed(&sh->err.lines, &cmd->out, (const uint8_t *)err, strlen(err),
                      cw_cmd_now(cmd));
        cw_lines_flush(&sh->err.lines, &cmd->out, cw_cmd_now(cmd));
        int code = rc == -ENOENT ? 127 : 126;
        if (strncmp(err, "cannot run", 10) != 0)
            code = -1;
        cw_cmd_add_int(cmd, "rc", code);
        cw_cmd_header(cmd, "elapsedTime=%0.6f", cw_cmd_elapsed(cmd));
        sh->done = true;
        cw_cmd_finish(cmd, NULL);
        return 0;
    }
    sh->spawned = true;
    cw_info("command %s: pid %d", cmd->id, (int)sh->proc->pid);

    shell_stream_t *streams[2] = {&sh->out, &sh->err};
    int fds[2] = {sh->proc->fd_out, sh->proc->fd_err};
    for (int i = 0; i < 2; i++) {
        shell_stream_t *s = streams[i];
        s->fd = fds[i];
        sh->proc->fd_out = sh->proc->fd_err = -1;
        if (s->fd < 0)
            continue;
        uv_poll_init(loop, &s->poll, s->fd);
        s->poll.data = s;
        s->sh = sh;
        s->handle_init = true;
        s->open = true;
        stream_start(s);
    }
    if (sh->proc->fd_in >= 0) {
        sh->in_fd = sh->proc->fd_in;
        sh->proc->fd_in = -1;
        uv_poll_init(loop, &sh->in_poll, sh->in_fd);
        sh->in_poll.data = sh;
        sh->in_handle_init = true;
        uv_poll_start(&sh->in_poll, UV_WRITABLE, stdin_poll_cb);
    }
    if (a->timeout > 0) {
        uint64_t ms = seconds_ms(a->timeout);
        uv_timer_start(&sh->t_timeout, on_timeout, ms, ms);
    }
    if (a->max_time > 0)
        uv_timer_start(&sh->t_maxtime, on_maxtime, seconds_ms(a->max_time), 0);
    if (sh->nlogfiles)
        uv_timer_start(&sh->t_logpoll, on_logpoll, LOGFILE_POLL_MS, LOGFILE_POLL_MS);
    return 0;
}

static void shell_handle_closed(uv_handle_t *h)
{
    shell_t *sh = h->data;
    if (--sh->closing > 0)
        return;
    cw_cmd_t *cmd = sh->cmd;
    cw_lines_free(&sh->out.lines);
    cw_lines_free(&sh->err.lines);
    for (size_t i = 0; i < sh->nlogfiles; i++) {
        if (sh->logfiles[i].fd >= 0)
            close(sh->logfiles[i].fd);
        free(sh->logfiles[i].path);
        cw_lines_free(&sh->logfiles[i].lines);
    }
    free(sh->logfiles);
    free(sh->envp);
    cw_proc_release(sh->proc);
    free(sh);
    cmd->state = NULL;
    cw_cmd_destroyed(cmd);
}

static void shell_destroy(cw_cmd_t *cmd)
{
    shell_t *sh = cmd->state;
    if (sh == NULL) {
        cw_cmd_destroyed(cmd);
        return;
    }
    /* A child we gave up on is reaped later by the proc registry. */
    if (sh->proc)
        sh->proc->on_exit = NULL;
    stream_close(sh, &sh->out);
    stream_close(sh, &sh->err);
    if (sh->in_fd >= 0) {
        close(sh->in_fd);
        sh->in_fd = -1;
    }
    sh->closing = 1; /* guard until every close is issued */
    uv_handle_t *hs[9];
    size_t n = 0;
    if (sh->out.handle_init)
        hs[n++] = (uv_handle_t *)&sh->out.poll;
    if (sh->err.handle_init)
        hs[n++] = (uv_handle_t *)&sh->err.poll;
    if (sh->in_handle_init)
        hs[n++] = (uv_handle_t *)&sh->in_poll;
    if (sh->timers_init) {
        hs[n++] = (uv_handle_t *)&sh->t_timeout;
        hs[n++] = (uv_handle_t *)&sh->t_maxtime;
        hs[n++] = (uv_handle_t *)&sh->t_sigterm;
        hs[n++] = (uv_handle_t *)&sh->t_backup;
        hs[n++] = (uv_handle_t *)&sh->t_logpoll;
        hs[n++] = (uv_handle_t *)&sh->resume;
    }
    for (size_t i = 0; i < n; i++) {
        sh->closing++;
        hs[i]->data = sh;
        uv_close(hs[i], shell_handle_closed);
    }
    /* drop the guard (frees now if nothing was open) */
    sh->closing--;
    if (sh->closing == 0) {
        sh->closing = 1;
        shell_handle_closed((uv_handle_t *)&sh->t_timeout);
    }
}

const cw_cmd_impl_t cw_cmd_shell_impl = {
    .start = shell_start,
    .interrupt = shell_interrupt,
    .resume = shell_resume,
    .destroy = shell_destroy,
};
