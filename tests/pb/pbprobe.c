/* pbprobe: a test-only Perspective Broker worker built on the sans-I/O session (src/proto/pb.c),
 * to prove the protocol library against a stock Buildbot 3.7 master.  Blocking sockets, one
 * connection, no reconnect: this is test code, not the daemon.
 *
 *   pbprobe --port P --name NAME --password PW --basedir DIR [--record FILE] [--seconds N]
 *
 * It logs in, answers print / getWorkerInfo / setBuilderList / shutdown on the Bot and
 * startBuild / startCommand / interruptCommand on builders, runs `shell` commands with
 * /bin/sh (stdout and stderr collected, then sent as updates, rc, complete), decrefs every
 * command reference after complete is answered, and sends a perspective keepalive once logged
 * in.  Everything it does is printed to stdout, one line per event.
 *
 * Exit status: 0 the master closed or --seconds elapsed, 3 UnauthorizedLogin, 4 rejected as a
 * duplicate, 5 other login failure, 6 protocol error, 7 I/O error, 2 usage.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cworker/buf.h"
#include "cworker/cw.h"
#include "cworker/jelly.h"
#include "cworker/pb.h"

#define MAX_BUILDERS 64
#define CHUNK        (64 * 1024) /* text per update, well under banana's 640 KiB */

typedef struct builder {
    char name[128];
    char dir[256];
    int64_t luid;
} builder_t;

typedef struct probe {
    cw_pb_t *pb;
    cw_buf_t out;
    int fd;
    FILE *record;
    const char *basedir;
    builder_t builders[MAX_BUILDERS];
    size_t nbuilders;
    int exit_code;    /* >= 0: stop with this code */
    int64_t cmds[16]; /* command references waiting for complete's answer (ctx points here) */
    size_t ncmds;
} probe_t;

static volatile sig_atomic_t stop_requested;

static void on_signal(int sig)
{
    (void)sig;
    stop_requested = 1;
}

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
    fflush(stdout);
}

/* A counted string as a NUL-terminated copy in buf. */
static const char *cstr(cw_str_t s, char *buf, size_t cap)
{
    snprintf(buf, cap, "%.*s", (int)s.len, s.ptr);
    return buf;
}

/* Write everything the session queued; 0 or -1. */
static int flush_out(probe_t *p)
{
    while (p->out.len > 0) {
        ssize_t n = write(p->fd, p->out.data, p->out.len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        cw_buf_consume(&p->out, (size_t)n);
    }
    return 0;
}

/* ---- Bot methods ---- */

static void answer_worker_info(probe_t *p, int64_t reqid)
{
    static const char *const commands[] = {"shell", "uploadFile", "uploadDirectory", "downloadFile",
                                           "mkdir", "rmdir",      "cpdir",           "stat",
                                           "glob",  "listdir",    "rmfile"};
    size_t ncmd = sizeof(commands) / sizeof(commands[0]);
    cw_jelly_enc_t e;
    if (cw_pb_answer_begin(p->pb, reqid, &e) < 0)
        return;
    cw_jelly_dict(&e, 9);
    cw_jelly_str(&e, "admin");
    cw_jelly_str(&e, "pbprobe <test@localhost>");
    cw_jelly_str(&e, "host");
    cw_jelly_str(&e, "pbprobe test worker");
    cw_jelly_str(&e, "version");
    cw_jelly_str(&e, "3.7.0");
    cw_jelly_str(&e, "system");
    cw_jelly_str(&e, "posix");
    cw_jelly_str(&e, "basedir");
    cw_jelly_str(&e, p->basedir);
    cw_jelly_str(&e, "numcpus");
    cw_jelly_int64(&e, 1);
    cw_jelly_str(&e, "environ");
    cw_jelly_dict(&e, 0);
    cw_jelly_str(&e, "delete_leftover_dirs");
    cw_jelly_int64(&e, 0);
    cw_jelly_str(&e, "worker_commands");
    cw_jelly_dict(&e, ncmd);
    for (size_t i = 0; i < ncmd; i++) {
        cw_jelly_str(&e, commands[i]);
        cw_jelly_str(&e, "3.1");
    }
    int rc = cw_pb_answer_end(p->pb, &e);
    if (rc < 0)
        say("getWorkerInfo answer failed: %s", cw_strerror(rc));
}

/* setBuilderList([(name, builddir), ...]) -> {name: builder}; known names keep their luid. */
static void set_builder_list(probe_t *p, int64_t reqid, const cw_jelly_t *args)
{
    size_t n, m = 0;
    const cw_jelly_t *a = cw_jelly_items(args, &n);
    const cw_jelly_t *list = n == 1 ? cw_jelly_items(&a[0], &m) : NULL;
    builder_t keep[MAX_BUILDERS];
    size_t nkeep = 0;
    for (size_t i = 0; list && i < m && nkeep < MAX_BUILDERS; i++) {
        size_t k;
        const cw_jelly_t *t = cw_jelly_items(&list[i], &k);
        cw_str_t name, dir;
        if (k != 2 || !cw_jelly_text(&t[0], &name) || !cw_jelly_text(&t[1], &dir))
            continue;
        builder_t b = {.luid = 0};
        cstr(name, b.name, sizeof(b.name));
        cstr(dir, b.dir, sizeof(b.dir));
        for (size_t j = 0; j < p->nbuilders; j++)
            if (strcmp(p->builders[j].name, b.name) == 0)
                b.luid = p->builders[j].luid;
        if (b.luid == 0 && cw_pb_export(p->pb, NULL, true, &b.luid) < 0)
            continue;
        char path[600];
        snprintf(path, sizeof(path), "%s/%s", p->basedir, b.dir);
        mkdir(path, 0755);
        keep[nkeep++] = b;
    }
    for (size_t j = 0; j < p->nbuilders; j++) {
        bool listed = false;
        for (size_t i = 0; i < nkeep; i++)
            listed |= keep[i].luid == p->builders[j].luid;
        if (!listed)
            cw_pb_unexport(p->pb, p->builders[j].luid);
    }
    memcpy(p->builders, keep, nkeep * sizeof(keep[0]));
    p->nbuilders = nkeep;
    cw_jelly_enc_t e;
    if (cw_pb_answer_begin(p->pb, reqid, &e) < 0)
        return;
    cw_jelly_dict(&e, nkeep);
    for (size_t i = 0; i < nkeep; i++) {
        cw_jelly_str(&e, keep[i].name);
        cw_jelly_remote(&e, keep[i].luid);
        say("builder %s (%s) is luid %lld", keep[i].name, keep[i].dir, (long long)keep[i].luid);
    }
    int rc = cw_pb_answer_end(p->pb, &e);
    if (rc < 0)
        say("setBuilderList answer failed: %s", cw_strerror(rc));
}

/* ---- commands ---- */

/* Append s to cmd as one single-quoted shell word. */
static void shell_quote(cw_buf_t *cmd, cw_str_t s)
{
    cw_buf_append_str(cmd, "'");
    for (size_t i = 0; i < s.len; i++) {
        if (s.ptr[i] == '\'')
            cw_buf_append_str(cmd, "'\\''");
        else
            cw_buf_append(cmd, &s.ptr[i], 1);
    }
    cw_buf_append_str(cmd, "' ");
}

/* The shell command line of a `command` argument: text as is, a list quoted word by word
 * (obfuscated words arrive as ("obfuscated", real, fake) tuples: the real one runs). */
static bool command_line(const cw_jelly_t *c, cw_buf_t *cmd)
{
    cw_str_t s;
    if (cw_jelly_text(c, &s)) {
        cw_buf_append(cmd, s.ptr, s.len);
        return true;
    }
    size_t n;
    const cw_jelly_t *it = cw_jelly_items(c, &n);
    if (it == NULL)
        return false;
    for (size_t i = 0; i < n; i++) {
        size_t k;
        const cw_jelly_t *t = cw_jelly_items(&it[i], &k);
        if (it[i].type == CW_JELLY_TUPLE && k == 3 && cw_jelly_text(&t[1], &s))
            shell_quote(cmd, s);
        else if (cw_jelly_text(&it[i], &s))
            shell_quote(cmd, s);
        else
            return false;
    }
    return true;
}

/* update([[{key: text}, 0]]) in chunks */
static void send_text(probe_t *p, int64_t cmdref, const char *key, const uint8_t *data, size_t len)
{
    for (size_t off = 0; off < len; off += CHUNK) {
        size_t n = len - off < CHUNK ? len - off : CHUNK;
        cw_jelly_enc_t e;
        if (cw_pb_call_begin(p->pb, cmdref, "update", 1, NULL, &e, NULL) < 0)
            return;
        cw_jelly_list(&e, 1);
        cw_jelly_list(&e, 2);
        cw_jelly_dict(&e, 1);
        cw_jelly_str(&e, key);
        cw_jelly_unicode_lossy(&e, data + off, n);
        cw_jelly_int64(&e, 0);
        cw_jelly_dict(&e, 0);
        cw_pb_call_end(p->pb, &e);
    }
}

/* Read a whole file into buf (best effort). */
static void slurp(const char *path, cw_buf_t *buf)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return;
    char tmp[4096];
    size_t n;
    while ((n = fread(tmp, 1, sizeof(tmp), f)) > 0)
        cw_buf_append(buf, tmp, n);
    fclose(f);
}

/* Run a shell command in the builder's workdir; stdout, stderr and rc go to the master. */
static void run_shell(probe_t *p, const builder_t *b, int64_t cmdref, const cw_jelly_t *args)
{
    cw_buf_t cmd = CW_BUF_INIT;
    cw_str_t workdir = {"build", 5};
    cw_jelly_text(cw_jelly_dict_get(args, "workdir"), &workdir);
    char dir[1024], wd[256];
    snprintf(dir, sizeof(dir), "%s/%s/%s", p->basedir, b->dir, cstr(workdir, wd, sizeof(wd)));
    char mk[1100];
    snprintf(mk, sizeof(mk), "mkdir -p '%s'", dir);
    if (system(mk) != 0)
        say("cannot create %s", dir);
    char outf[1100], errf[1100];
    snprintf(outf, sizeof(outf), "%s/.pbprobe.out", p->basedir);
    snprintf(errf, sizeof(errf), "%s/.pbprobe.err", p->basedir);
    cw_buf_t line = CW_BUF_INIT;
    int rc = -1;
    if (command_line(cw_jelly_dict_get(args, "command"), &cmd)) {
        cw_buf_append(&cmd, "", 1);
        cw_buf_printf(&line, "cd '%s' && ( %s ) >'%s' 2>'%s' </dev/null", dir, (char *)cmd.data,
                      outf, errf);
        say("running: %s", (char *)cmd.data);
        int st = system((char *)line.data);
        rc = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    } else {
        say("startCommand without a usable command");
    }
    cw_buf_t o = CW_BUF_INIT, e = CW_BUF_INIT;
    slurp(outf, &o);
    slurp(errf, &e);
    unlink(outf);
    unlink(errf);
    send_text(p, cmdref, "stdout", o.data, o.len);
    send_text(p, cmdref, "stderr", e.data, e.len);
    cw_jelly_enc_t enc;
    if (cw_pb_call_begin(p->pb, cmdref, "update", 1, NULL, &enc, NULL) == 0) {
        cw_jelly_list(&enc, 1);
        cw_jelly_list(&enc, 2);
        cw_jelly_dict(&enc, 1);
        cw_jelly_str(&enc, "rc");
        cw_jelly_int64(&enc, rc);
        cw_jelly_int64(&enc, 0);
        cw_jelly_dict(&enc, 0);
        cw_pb_call_end(p->pb, &enc);
    }
    say("command finished, rc %d, %zu bytes of stdout, %zu of stderr", rc, o.len, e.len);
    cw_buf_free(&cmd);
    cw_buf_free(&line);
    cw_buf_free(&o);
    cw_buf_free(&e);
}

/* complete(None); the reference is given back when the answer comes. */
static void complete(probe_t *p, int64_t cmdref)
{
    int64_t *slot = &p->cmds[p->ncmds++ % 16];
    *slot = cmdref;
    cw_jelly_enc_t e;
    if (cw_pb_call_begin(p->pb, cmdref, "complete", 1, slot, &e, NULL) < 0)
        return;
    cw_jelly_none(&e);
    cw_jelly_dict(&e, 0);
    cw_pb_call_end(p->pb, &e);
}

static void start_command(probe_t *p, const builder_t *b, int64_t reqid, const cw_jelly_t *args)
{
    size_t n;
    const cw_jelly_t *a = cw_jelly_items(args, &n);
    cw_str_t name;
    if (n != 4 || a[0].type != CW_JELLY_REMOTE || !cw_jelly_text(&a[2], &name) ||
        a[3].type != CW_JELLY_DICT) {
        cw_jelly_failure_desc_t f = {.type = "builtins.TypeError",
                                     .value = "startCommand(cmdref, id, name, args)"};
        cw_pb_answer_error(p->pb, reqid, &f);
        cw_pb_decref_value(p->pb, args);
        return;
    }
    int64_t cmdref = a[0].u.luid;
    char nm[64];
    say("startCommand %s on builder %s", cstr(name, nm, sizeof(nm)), b->name);
    if (!cw_str_eq(name, "shell")) {
        char value[128];
        snprintf(value, sizeof(value), "unrecognized WorkerCommand '%s'", nm);
        cw_jelly_failure_desc_t f = {.type = "buildbot_worker.base.UnknownCommand", .value = value};
        cw_pb_answer_error(p->pb, reqid, &f);
        cw_pb_decref_value(p->pb, args);
        return;
    }
    cw_pb_answer_none(p->pb, reqid);
    run_shell(p, b, cmdref, &a[3]);
    complete(p, cmdref);
    /* a shell command carries no other reference, but give back any that came */
    cw_pb_decref_value(p->pb, &a[3]);
}

/* ---- events ---- */

static int on_event(void *ud, cw_pb_t *pb, const cw_pb_event_t *ev)
{
    probe_t *p = ud;
    char tmp[512];
    switch (ev->type) {
    case CW_PB_EV_LOGGED_IN:
        say("logged in, perspective %lld", (long long)ev->u.logged_in.perspective);
        cw_pb_call0(pb, ev->u.logged_in.perspective, "keepalive", NULL, NULL);
        break;
    case CW_PB_EV_LOGIN_FAILED:
        say("login failed (%s): %s",
            ev->u.login_failed.kind == CW_PB_LOGIN_UNAUTHORIZED ? "unauthorized"
            : ev->u.login_failed.kind == CW_PB_LOGIN_DUPLICATE  ? "duplicate"
                                                                : "other",
            ev->u.login_failed.text);
        p->exit_code = ev->u.login_failed.kind == CW_PB_LOGIN_UNAUTHORIZED ? 3
                       : ev->u.login_failed.kind == CW_PB_LOGIN_DUPLICATE  ? 4
                                                                           : 5;
        break;
    case CW_PB_EV_LOGIN:
        break; /* master role only */
    case CW_PB_EV_CALL: {
        cw_str_t m = ev->u.call.method;
        int64_t id = ev->u.call.reqid;
        say("call %lld: %s on luid %lld", (long long)id, cstr(m, tmp, sizeof(tmp)),
            (long long)ev->u.call.target);
        if (!ev->u.call.answer_required) {
            cw_pb_decref_value(pb, ev->u.call.args);
            break;
        }
        if (ev->u.call.target == CW_PB_BOT_LUID) {
            if (cw_str_eq(m, "print")) {
                cw_str_t text = {"", 0};
                const cw_jelly_t *msg = cw_jelly_dict_get(ev->u.call.kwargs, "message");
                size_t n;
                const cw_jelly_t *a = cw_jelly_items(ev->u.call.args, &n);
                if (msg == NULL && n == 1)
                    msg = &a[0];
                cw_jelly_text(msg, &text);
                say("master says: %s", cstr(text, tmp, sizeof(tmp)));
                cw_pb_answer_none(pb, id);
            } else if (cw_str_eq(m, "getWorkerInfo")) {
                answer_worker_info(p, id);
            } else if (cw_str_eq(m, "setBuilderList")) {
                set_builder_list(p, id, ev->u.call.args);
            } else if (cw_str_eq(m, "shutdown")) {
                cw_pb_answer_none(pb, id);
                p->exit_code = 0;
            } else {
                cw_pb_answer_no_such_method(pb, id, m);
            }
            break;
        }
        const builder_t *b = NULL;
        for (size_t i = 0; i < p->nbuilders; i++)
            if (p->builders[i].luid == ev->u.call.target)
                b = &p->builders[i];
        if (b && cw_str_eq(m, "startCommand")) {
            start_command(p, b, id, ev->u.call.args);
        } else if (b && (cw_str_eq(m, "startBuild") || cw_str_eq(m, "interruptCommand") ||
                         cw_str_eq(m, "print"))) {
            cw_pb_answer_none(pb, id);
        } else {
            cw_pb_answer_no_such_method(pb, id, m);
        }
        break;
    }
    case CW_PB_EV_ANSWER:
    case CW_PB_EV_ERROR: {
        void *ctx = ev->type == CW_PB_EV_ANSWER ? ev->u.answer.ctx : ev->u.error.ctx;
        if (ev->type == CW_PB_EV_ERROR)
            say("error answer %lld: %.*s: %.*s", (long long)ev->u.error.reqid,
                (int)ev->u.error.fail_type.len, ev->u.error.fail_type.ptr,
                (int)ev->u.error.fail_value.len, ev->u.error.fail_value.ptr);
        int64_t *slot = ctx;
        if (slot >= p->cmds && slot < p->cmds + 16 && cw_pb_refs_held(pb, *slot) > 0) {
            say("complete answered, giving back command reference %lld", (long long)*slot);
            cw_pb_decref(pb, *slot);
        }
        break;
    }
    case CW_PB_EV_RELEASED:
        break;
    case CW_PB_EV_NOTICE:
        say("notice: %s", ev->u.notice.text);
        break;
    case CW_PB_EV_PROTOCOL_ERROR:
        say("protocol error: %s", ev->u.notice.text);
        p->exit_code = 6;
        break;
    }
    return 0;
}

static int connect_to(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

int main(int argc, char **argv)
{
    int port = 0;
    double seconds = 0;
    const char *name = NULL, *password = NULL, *basedir = ".", *record = NULL;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--port") == 0)
            port = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--name") == 0)
            name = argv[i + 1];
        else if (strcmp(argv[i], "--password") == 0)
            password = argv[i + 1];
        else if (strcmp(argv[i], "--basedir") == 0)
            basedir = argv[i + 1];
        else if (strcmp(argv[i], "--record") == 0)
            record = argv[i + 1];
        else if (strcmp(argv[i], "--seconds") == 0)
            seconds = atof(argv[i + 1]);
        else
            port = -1;
    }
    if (port <= 0 || name == NULL || password == NULL) {
        fprintf(stderr, "usage: pbprobe --port P --name NAME --password PW --basedir DIR "
                        "[--record FILE] [--seconds N]\n");
        return 2;
    }
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    signal(SIGPIPE, SIG_IGN);

    probe_t p = {.fd = -1, .basedir = basedir, .exit_code = -1};
    if (record && (p.record = fopen(record, "wb")) == NULL) {
        perror(record);
        return 2;
    }
    p.fd = connect_to(port);
    if (p.fd < 0) {
        perror("connect");
        return 7;
    }
    say("connected to 127.0.0.1:%d as %s", port, name);
    cw_pb_config_t cfg = {
        .role = CW_PB_WORKER,
        .out = &p.out,
        .on_event = on_event,
        .ud = &p,
        .username = name,
        .username_len = strlen(name),
        .password = password,
        .password_len = strlen(password),
    };
    int rc = cw_pb_new(&p.pb, &cfg);
    if (rc < 0) {
        fprintf(stderr, "cw_pb_new: %s\n", cw_strerror(rc));
        return 2;
    }
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int code = 0;
    uint8_t buf[65536];
    while (p.exit_code < 0 && !stop_requested) {
        if (seconds > 0) {
            struct timespec now;
            clock_gettime(CLOCK_MONOTONIC, &now);
            if ((double)(now.tv_sec - t0.tv_sec) + (double)(now.tv_nsec - t0.tv_nsec) / 1e9 >=
                seconds)
                break;
        }
        struct pollfd pfd = {.fd = p.fd, .events = POLLIN};
        int pr = poll(&pfd, 1, 200);
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr <= 0)
            continue;
        ssize_t n = read(p.fd, buf, sizeof(buf));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            rc = cw_pb_close(p.pb);
            say("the master closed the connection%s", rc ? " inside a message" : "");
            code = rc ? 6 : 0;
            break;
        }
        if (p.record)
            fwrite(buf, 1, (size_t)n, p.record);
        rc = cw_pb_feed(p.pb, buf, (size_t)n);
        if (flush_out(&p) < 0) {
            say("write failed: %s", strerror(errno));
            code = 7;
            break;
        }
        if (rc < 0) {
            say("session ended: %s (%s)", cw_strerror(rc),
                cw_pb_error(p.pb) ? cw_pb_error(p.pb) : "");
            code = 6;
            break;
        }
    }
    if (p.exit_code >= 0)
        code = p.exit_code;
    flush_out(&p);
    cw_pb_free(p.pb);
    cw_buf_free(&p.out);
    close(p.fd);
    if (p.record)
        fclose(p.record);
    say("exit %d", code);
    return code;
}
