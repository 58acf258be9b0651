/* The worker: connecting and reconnecting to the master, and answering the
 * master's requests (print, keepalive, get_worker_info, set_worker_settings,
 * start_command, interrupt_command, shutdown). */
#include "cw_config.h"
#include "worker.h"

#include <errno.h>
#include <math.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

#include "cmd.h"
#include "log.h"
#include "metrics.h"
#include "notify.h"
#include "proc.h"
#include "tls.h"

/* Updates in flight (sent, not answered) per connection.  Together with the
 * socket's high-water mark this bounds memory when the master reads slowly:
 * producers stop reading their pipes instead of buffering. */
#define MAX_INFLIGHT_UPDATES 8
/* how long a stopping worker waits for the answers to its last messages */
#define ACKS_WAIT_MS 5000
/* how long a drained worker stays attached after its last command (see worker_finish_stop) */
#define LINGER_MS 1500

static void worker_connect(cw_worker_t *w);
static void worker_try_next_addr(cw_worker_t *w);
static void worker_finish_stop(cw_worker_t *w);

double cw_now(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
}

void cw_worker_status(cw_worker_t *w)
{
    if (w->attached)
        cw_notify_status("attached to master %s, running %zu command(s)", w->host_header,
                         w->ncmds);
}

/* xorshift64*: jitter for reconnect delays; not for anything secret. */
static double worker_random(void)
{
    static uint64_t s;
    if (s == 0)
        s = uv_hrtime() ^ ((uint64_t)getpid() << 32) ^ 0x9E3779B97F4A7C15ull;
    s ^= s >> 12;
    s ^= s << 25;
    s ^= s >> 27;
    return (double)((s * 0x2545F4914F6CDD1Dull) >> 11) / (double)(1ull << 53);
}

static void settings_default(cw_settings_t *s)
{
    s->buffer_size = 65536;
    s->buffer_timeout = 5;
    s->max_line_length = 4096;
}

bool cw_worker_can_send(const cw_worker_t *w)
{
    return w->conn && cw_conn_writable(w->conn) && w->inflight_updates < MAX_INFLIGHT_UPDATES;
}

void cw_worker_kick(cw_worker_t *w)
{
    for (cw_cmd_t *c = w->cmds, *next; c; c = next) {
        next = c->next;
        if (!cw_worker_can_send(w))
            return;
        if (c->flush_wanted)
            cw_cmd_output_added(c);
    }
}

static void retry_timer_cb(uv_timer_t *t)
{
    worker_connect(t->data);
}

/* Exponential backoff with full jitter: uniform in (0, min(cap, 1.5^n)]. */
static void worker_schedule_retry(cw_worker_t *w, const char *why)
{
    if (w->exiting)
        return;
    if (w->cfg->max_retries > 0 && w->attempt + 1 >= (unsigned)w->cfg->max_retries) {
        cw_error("%s; giving up after %u failed attempts (--max-retries)", why, w->attempt + 1);
        cw_worker_stop(w, 1, "too many failed connection attempts");
        return;
    }
    cw_notify_status("connecting to master %s (attempt %u)", w->host_header, w->attempt + 2);
    double ceiling = pow(1.5, (double)w->attempt);
    if (ceiling > w->cfg->backoff_cap)
        ceiling = w->cfg->backoff_cap;
    double delay = ceiling * worker_random();
    if (delay < 0.05)
        delay = 0.05;
    w->attempt++;
    w->state = CW_W_BACKOFF;
    cw_info("%s; retrying in %.2f s", why, delay);
    uv_timer_start(&w->retry_timer, retry_timer_cb, (uint64_t)(delay * 1000), 0);
}

/* ---- requests from the master ---- */

static void on_get_worker_info(cw_worker_t *w, cw_conn_t *c, const cw_msg_t *m)
{
    cw_buf_t b = CW_BUF_INIT;
    msgpack_packer pk;
    cw_pack_init(&pk, &b);
    if (cw_pack_response_begin(&pk, m->seq) < 0 || cw_worker_pack_info(w, &pk) < 0) {
        cw_buf_free(&b);
        cw_conn_respond_error(c, m->seq, "cannot collect worker info");
        return;
    }
    cw_conn_send(c, &b);
    if (!w->attached) {
        w->attached = true;
        w->attempt = 0;
        w->last_attach = cw_now();
        cw_info("attached to master %s:%d as '%s'", w->cfg->master_host, w->cfg->master_port,
                w->cfg->name);
        cw_worker_status(w);
    }
}

static void on_set_worker_settings(cw_worker_t *w, cw_conn_t *c, const cw_msg_t *m)
{
    cw_settings_t *s = &w->settings;
    /* Keep sane bounds whatever the master sends. */
    int64_t bs = m->u.settings.buffer_size;
    s->buffer_size = bs < 1024 ? 1024 : bs > (16 << 20) ? (16 << 20) : (size_t)bs;
    int64_t bt = m->u.settings.buffer_timeout;
    s->buffer_timeout = bt < 0 ? 0 : bt > 3600 ? 3600 : (double)bt;
    int64_t ml = m->u.settings.max_line_length;
    s->max_line_length = ml < 2 ? 2 : ml > (1 << 20) ? (1 << 20) : (size_t)ml;
    if (!cw_newline_re_supported(m->u.settings.newline_re.ptr, m->u.settings.newline_re.len))
        cw_warn("master's newline_re '%.*s' is not supported; using the standard rules",
                (int)m->u.settings.newline_re.len, m->u.settings.newline_re.ptr);
    cw_debug("settings: buffer_size %zu, buffer_timeout %.0f, max_line_length %zu",
             s->buffer_size, s->buffer_timeout, s->max_line_length);
    cw_conn_respond_nil(c, m->seq);
}

static void on_start_command(cw_worker_t *w, cw_conn_t *c, const cw_msg_t *m)
{
    char err[512];
    cw_cmd_t *cmd = NULL;
    if (w->draining || w->exiting) {
        cw_warn("command %.*s refused: the worker is shutting down",
                (int)m->u.start.command_id.len, m->u.start.command_id.ptr);
        cw_conn_respond_error(c, m->seq, "worker is shutting down; command refused");
        return;
    }
    int rc = cw_cmd_create(w, m->u.start.command_id, m->u.start.command_name, &m->u.start.args,
                           err, sizeof err, &cmd);
    if (rc < 0) {
        cw_warn("command %.*s (%.*s) refused: %s", (int)m->u.start.command_id.len,
                m->u.start.command_id.ptr, (int)m->u.start.command_name.len,
                m->u.start.command_name.ptr, err);
        cw_conn_respond_error(c, m->seq, err);
        return;
    }
    cw_conn_respond_nil(c, m->seq);
    cw_cmd_start(cmd);
}

static void on_interrupt_command(cw_worker_t *w, cw_conn_t *c, const cw_msg_t *m)
{
    cw_cmd_t *cmd = cw_cmd_find(w, m->u.interrupt.command_id);
    if (cmd == NULL) {
        cw_info("interrupt for unknown command %.*s ignored", (int)m->u.interrupt.command_id.len,
                m->u.interrupt.command_id.ptr);
        cw_conn_respond_nil(c, m->seq);
        return;
    }
    cw_cmd_interrupt(cmd, "command interrupted");
    cw_conn_respond_nil(c, m->seq);
}

static void conn_on_request(cw_conn_t *c, const cw_msg_t *m)
{
    cw_worker_t *w = c->data;
    switch (m->op) {
    case CW_OP_PRINT:
        cw_info("message from master: %.*s", (int)m->u.print.message.len,
                m->u.print.message.ptr);
        cw_conn_respond_nil(c, m->seq);
        break;
    case CW_OP_KEEPALIVE:
        cw_conn_respond_nil(c, m->seq);
        break;
    case CW_OP_GET_WORKER_INFO:
        on_get_worker_info(w, c, m);
        break;
    case CW_OP_SET_WORKER_SETTINGS:
        on_set_worker_settings(w, c, m);
        break;
    case CW_OP_START_COMMAND:
        on_start_command(w, c, m);
        break;
    case CW_OP_INTERRUPT_COMMAND:
        on_interrupt_command(w, c, m);
        break;
    case CW_OP_SHUTDOWN:
        cw_conn_respond_nil(c, m->seq);
        cw_worker_stop(w, 0, "master requested shutdown");
        break;
    default: {
        char text[200];
        snprintf(text, sizeof text, "Command %s does not exist.", cw_op_name(m->op));
        cw_conn_respond_error(c, m->seq, text);
        break;
    }
    }
}

/* ---- connection lifecycle ---- */

static void conn_on_open(cw_conn_t *c)
{
    cw_worker_t *w = c->data;
    w->state = CW_W_CONNECTED;
    w->conn_gen++;
    w->n_connects++;
    w->attached = false;
    w->inflight_updates = 0;
    settings_default(&w->settings);
    w->naddrs = w->next_addr = 0;
    cw_info("connected to master %s (WebSocket open)", c->peer);
}

static void conn_on_drain(cw_conn_t *c)
{
    cw_worker_kick(c->data);
}

static void conn_on_close(cw_conn_t *c, int err, const char *why)
{
    cw_worker_t *w = c->data;
    bool was_open = w->state == CW_W_CONNECTED;
    char reason[256];
    snprintf(reason, sizeof reason, "%s", why);
    int code = err;
    free(c);
    w->conn = NULL;
    w->attached = false;
    w->inflight_updates = 0;

    if (was_open) {
        /* The master fails the running builds on a lost link (RETRY), so
         * their processes must not go on: kill their process groups. */
        for (cw_cmd_t *cmd = w->cmds; cmd; cmd = cmd->next)
            cw_cmd_detach(cmd);
    }
    if (w->exiting) {
        worker_finish_stop(w);
        return;
    }
    if (was_open) {
        char msg[600];
        snprintf(msg, sizeof msg, "connection to master lost: %s", reason);
        w->attempt = w->attempt ? w->attempt : 0;
        worker_schedule_retry(w, msg);
        return;
    }
    if (code == CW_EAUTH) {
        char msg[600];
        snprintf(msg, sizeof msg, "master refused worker '%s': %s", w->cfg->name, reason);
        w->naddrs = w->next_addr = 0;
        worker_schedule_retry(w, msg);
        return;
    }
    if (w->next_addr < w->naddrs) {
        cw_debug("connecting failed (%s); trying the next address", reason);
        worker_try_next_addr(w);
        return;
    }
    w->naddrs = w->next_addr = 0;
    char msg[600];
    snprintf(msg, sizeof msg, "cannot connect to master %s:%d: %s", w->cfg->master_host,
             w->cfg->master_port, reason);
    worker_schedule_retry(w, msg);
}

static const cw_conn_callbacks_t worker_conn_callbacks = {
    .on_open = conn_on_open,
    .on_request = conn_on_request,
    .on_drain = conn_on_drain,
    .on_close = conn_on_close,
    .on_auth = NULL,
};

static void on_tcp_connected(uv_connect_t *req, int status)
{
    cw_worker_t *w = req->data;
    cw_conn_t *c = w->conn;
    if (status < 0) {
        if (w->proxy.host) {
            /* the TCP connection goes to the proxy: say so, not just "refused" */
            char why[300];
            snprintf(why, sizeof why, "cannot reach the HTTP proxy %s:%d: %s", w->proxy.host,
                     w->proxy.port, uv_strerror(status));
            cw_conn_close(c, status, 0, why);
        } else {
            cw_conn_close(c, status, 0, uv_strerror(status));
        }
        return;
    }
    if (w->exiting) {
        cw_conn_close(c, 0, 0, "worker stopping");
        return;
    }
    cw_conn_client_t o = {
        .host_header = w->host_header,
        .path = w->cfg->master_path,
        .user = w->cfg->name,
        .password = w->cfg->password,
        .tls_ctx = w->tls_ctx,
        .tls_host = w->cfg->master_host,
        .proxy_target = w->proxy_target[0] ? w->proxy_target : NULL,
        .proxy_auth = w->proxy_auth,
    };
    int rc = cw_conn_start_client2(c, &o);
    if (rc < 0)
        cw_conn_close(c, rc, 0, cw_strerror(rc));
}

static void worker_try_next_addr(cw_worker_t *w)
{
    const cw_addr_t *ai = &w->addrs[w->next_addr++];
    cw_conn_t *c = malloc(sizeof *c);
    if (c == NULL) {
        worker_schedule_retry(w, "out of memory");
        return;
    }
    cw_conn_options_t opt;
    cw_conn_options_default(&opt);
    opt.max_message = w->cfg->max_message;
    opt.ping_interval = w->cfg->ping_interval;
    opt.dead_timeout = w->cfg->dead_timeout;
    cw_conn_init(c, w->loop, CW_CONN_CLIENT, &opt, &worker_conn_callbacks, w);
    w->conn = c;
    w->state = CW_W_CONNECTING;
    w->connect_req.data = w;
    int rc = uv_tcp_connect(&w->connect_req, cw_conn_tcp(c), (const struct sockaddr *)&ai->ss,
                            on_tcp_connected);
    if (rc < 0)
        cw_conn_close(c, rc, 0, uv_strerror(rc));
}

static void on_resolved(cw_resolve_t *r, int status, const cw_addr_t *addrs, size_t n)
{
    cw_worker_t *w = r->data;
    if (w->exiting) {
        worker_finish_stop(w);
        return;
    }
    if (status < 0) {
        char msg[600];
        snprintf(msg, sizeof msg, "cannot resolve %shost '%s': %s",
                 w->proxy.host ? "the HTTP proxy's " : "", w->dial_host, uv_strerror(status));
        worker_schedule_retry(w, msg);
        return;
    }
    memcpy(w->addrs, addrs, n * sizeof *addrs);
    w->naddrs = n;
    w->next_addr = 0;
    worker_try_next_addr(w);
}

static void worker_connect(cw_worker_t *w)
{
    if (w->exiting)
        return;
    w->state = CW_W_RESOLVING;
    w->resolver.data = w;
    cw_debug("resolving %s:%d", w->dial_host, w->dial_port);
    int rc = cw_resolve_start(&w->resolver, w->loop, w->dial_host, w->dial_port, on_resolved);
    if (rc < 0) {
        char msg[400];
        snprintf(msg, sizeof msg, "cannot resolve %shost '%s': %s",
                 w->proxy.host ? "the HTTP proxy's " : "", w->dial_host, uv_strerror(rc));
        worker_schedule_retry(w, msg);
    }
}

/* ---- signals and exit ---- */

static void drain_timer_cb(uv_timer_t *t)
{
    cw_worker_t *w = t->data;
    cw_worker_stop(w, 0, "drain deadline passed: interrupting the remaining commands");
}

/* SIGTERM: let running commands finish (up to --drain-timeout), refusing
 * new ones, then stop. */
static void worker_drain(cw_worker_t *w, const char *why)
{
    if (w->ncmds == 0 || w->cfg->drain_timeout == 0) {
        cw_worker_stop(w, 0, why);
        return;
    }
    w->draining = true;
    cw_info("%s: draining, waiting up to %.0f s for %zu running command(s); new commands are "
            "refused (SIGTERM again to interrupt them now)",
            why, (double)w->cfg->drain_timeout / 1000.0, w->ncmds);
    uv_timer_start(&w->exit_timer, drain_timer_cb, w->cfg->drain_timeout, 0);
}

/* SIGTERM drains, a second SIGTERM (or SIGINT) interrupts, a further one kills. */
static void on_signal(uv_signal_t *h, int signum)
{
    cw_worker_t *w = h->data;
    const char *name = signum == SIGINT ? "SIGINT" : "SIGTERM";
    if (w->exiting) {
        cw_info("%s again: killing every command now", name);
        for (cw_cmd_t *cmd = w->cmds; cmd; cmd = cmd->next)
            cw_cmd_detach(cmd);
        cw_proc_kill_all(SIGKILL);
        return;
    }
    char why[64];
    snprintf(why, sizeof why, "%s received", name);
    if (signum == SIGTERM && !w->draining)
        worker_drain(w, why);
    else
        cw_worker_stop(w, 0, why);
}

/* SIGHUP with --log-file: reopen it (logrotate moved it away). */
static void on_sighup(uv_signal_t *h, int signum)
{
    (void)h;
    (void)signum;
    if (cw_log_reopen() == 0)
        cw_info("SIGHUP: reopened the log file %s", cw_log_file());
}

static void exit_timer_cb(uv_timer_t *t)
{
    cw_worker_t *w = t->data;
    if (w->ncmds == 0) {
        worker_finish_stop(w);
        return;
    }
    if (!w->forced) {
        w->forced = true;
        cw_error("%zu command(s) still running after %.1f s; killing their process groups",
                 w->ncmds, (double)w->cfg->kill_grace / 1000.0);
        for (cw_cmd_t *cmd = w->cmds; cmd; cmd = cmd->next)
            cw_cmd_detach(cmd);
        cw_proc_kill_all(SIGKILL);
        uv_timer_start(&w->exit_timer, exit_timer_cb, 3000, 0);
        return;
    }
    /* A process that survives SIGKILL (uninterruptible sleep) cannot be
     * helped; do not hang the exit on it. */
    cw_error("%zu command(s) did not end after SIGKILL; exiting anyway", w->ncmds);
    w->abandon = true;
    worker_finish_stop(w);
}

static void linger_timer_cb(uv_timer_t *t)
{
    worker_finish_stop(t->data);
}

static void acks_timer_cb(uv_timer_t *t)
{
    cw_worker_t *w = t->data;
    if (w->conn && cw_reqtab_count(&w->conn->pending) > 0)
        cw_warn("the master did not acknowledge %zu message(s) within %d s; closing anyway",
                cw_reqtab_count(&w->conn->pending), ACKS_WAIT_MS / 1000);
    w->acks_waited = true;
    worker_finish_stop(w);
}

void cw_worker_acked(cw_worker_t *w)
{
    if (w->acks_waiting && !w->acks_waited && (!w->conn || cw_reqtab_count(&w->conn->pending) == 0)) {
        w->acks_waited = true;
        uv_timer_stop(&w->exit_timer);
        worker_finish_stop(w);
    }
}

static void close_if_open(uv_handle_t *h)
{
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

/* Everything is done or abandoned: close the connection and every handle. */
static void worker_finish_stop(cw_worker_t *w)
{
    /* A `complete` the master has not answered yet may not have been
     * processed: closing now would make the master see a lost link and
     * retry a build that ended well.  Wait for the answers, briefly. */
    if (w->conn && cw_reqtab_count(&w->conn->pending) > 0 && !w->acks_waited && !w->abandon) {
        if (!w->acks_waiting) {
            w->acks_waiting = true;
            cw_info("waiting for the master to acknowledge %zu message(s)", cw_reqtab_count(&w->conn->pending));
            uv_timer_start(&w->exit_timer, acks_timer_cb, ACKS_WAIT_MS, 0);
        }
        return;
    }
    /* The master ends a build some time after its last step's `complete`
     * (database writes); a link lost before that turns the build into a
     * RETRY.  Msgpack has no worker-initiated graceful shutdown (the master
     * would tell us when it is done), so a drained worker stays a moment. */
    if (w->conn && w->linger && !w->lingered && !w->abandon) {
        w->lingered = true;
        uv_timer_start(&w->exit_timer, linger_timer_cb, LINGER_MS, 0);
        return;
    }
    if (w->conn) {
        cw_conn_close(w->conn, 0, CW_WS_CLOSE_GOING_AWAY, "worker stopping");
        return; /* conn_on_close calls us again */
    }
    if (w->resolver.active) {
        cw_resolve_cancel(&w->resolver);
        return; /* on_resolved calls us again */
    }
    if (w->ncmds > 0 && !w->abandon)
        return;
    if (w->abandon)
        uv_stop(w->loop); /* commands we gave up on keep handles open */
    cw_resolve_shutdown();
    cw_tls_ctx_free(w->tls_ctx);
    w->tls_ctx = NULL;
    if (w->proxy.host)
        cw_proxy_free(&w->proxy);
    free(w->proxy_auth);
    w->proxy_auth = NULL;
    cw_metrics_stop(w);
    close_if_open((uv_handle_t *)&w->retry_timer);
    close_if_open((uv_handle_t *)&w->exit_timer);
    close_if_open((uv_handle_t *)&w->sig_term);
    close_if_open((uv_handle_t *)&w->sig_int);
    close_if_open((uv_handle_t *)&w->sig_hup);
    cw_proc_shutdown();
}

void cw_worker_stop(cw_worker_t *w, int exit_code, const char *why)
{
    if (!w->exiting) {
        w->exiting = true;
        w->exit_code = exit_code;
        w->state = CW_W_STOPPING;
        cw_info("stopping: %s", why ? why : "requested");
        cw_notify_stopping();
        uv_timer_stop(&w->retry_timer);
        uv_timer_stop(&w->exit_timer);
        w->draining = false;
        for (cw_cmd_t *cmd = w->cmds, *next; cmd; cmd = next) {
            next = cmd->next;
            cw_cmd_interrupt(cmd, "worker shutting down");
        }
        if (w->ncmds > 0) {
            cw_info("waiting for %zu command(s) to end", w->ncmds);
            uv_timer_start(&w->exit_timer, exit_timer_cb, w->cfg->kill_grace, 0);
            return;
        }
    }
    if (w->ncmds == 0)
        worker_finish_stop(w);
}

int cw_worker_init(cw_worker_t *w, uv_loop_t *loop, const cw_config_t *cfg)
{
    extern char **environ;
    memset(w, 0, sizeof *w);
    w->loop = loop;
    w->cfg = cfg;
    w->environ = environ;
    settings_default(&w->settings);
    uv_timer_init(loop, &w->retry_timer);
    w->retry_timer.data = w;
    uv_timer_init(loop, &w->exit_timer);
    w->exit_timer.data = w;
    uv_signal_init(loop, &w->sig_term);
    uv_signal_init(loop, &w->sig_int);
    w->sig_term.data = w;
    w->sig_int.data = w;
    uv_signal_start(&w->sig_term, on_signal, SIGTERM);
    uv_signal_start(&w->sig_int, on_signal, SIGINT);
    /* SIGHUP keeps its default effect (exit) unless there is a log file to
     * reopen */
    uv_signal_init(loop, &w->sig_hup);
    if (cw_log_file())
        uv_signal_start(&w->sig_hup, on_sighup, SIGHUP);
    int rc = cw_proc_init(loop);
    if (rc < 0)
        return rc;
    w->dial_host = cfg->master_host;
    w->dial_port = cfg->master_port;
    if (strchr(cfg->master_host, ':'))
        snprintf(w->host_header, sizeof w->host_header, "[%s]:%d", cfg->master_host,
                 cfg->master_port);
    else
        snprintf(w->host_header, sizeof w->host_header, "%s:%d", cfg->master_host,
                 cfg->master_port);
    if (cfg->use_tls) {
        char err[400];
        w->tls_ctx = cw_tls_client_ctx(cfg->ca_file, cfg->client_cert, cfg->client_key, err,
                                       sizeof err);
        if (w->tls_ctx == NULL) {
            cw_error("TLS: %s", err);
            return CW_ETLS;
        }
    }
    if (cfg->proxy) {
        if (cw_proxy_parse(cfg->proxy, &w->proxy) < 0) {
            cw_error("cannot use proxy '%s'", cfg->proxy);
            return -EINVAL;
        }
        w->dial_host = w->proxy.host;
        w->dial_port = w->proxy.port;
        /* the tunnel goes to the master; the Host header stays the master's */
        snprintf(w->proxy_target, sizeof w->proxy_target, "%s", w->host_header);
        if (w->proxy.user) {
            cw_buf_t b = CW_BUF_INIT;
            cw_http_basic_auth(&b, w->proxy.user, w->proxy.password ? w->proxy.password : "");
            cw_buf_append(&b, "", 1);
            w->proxy_auth = (char *)cw_buf_steal(&b, NULL);
        }
    }
    cw_info("cworker %s starting: worker '%s', basedir %s, master %s://%s%s", CW_VERSION_STRING,
            cfg->name, cfg->basedir, cfg->use_tls ? "wss" : "ws", w->host_header,
            cfg->master_path);
    if (cfg->proxy)
        cw_info("connecting through the HTTP proxy %s:%d", w->proxy.host, w->proxy.port);
    if (cfg->metrics_listen && (rc = cw_metrics_start(w)) < 0)
        return rc;
    worker_connect(w);
    return 0;
}
