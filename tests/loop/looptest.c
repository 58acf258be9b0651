/* Loop test helpers (looptest.h). */
#include "looptest.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "cworker/output.h"

static fake_session_t *fake_of(cw_session_t *s)
{
    return (fake_session_t *)s;
}

static bool fake_can_send(cw_session_t *s)
{
    return !fake_of(s)->blocked;
}

/* Take one update's worth of pairs, as a link would, and keep their text. */
static int fake_send_update(cw_session_t *s, cw_cmd_t *cmd)
{
    fake_session_t *f = fake_of(s);
    if (cw_outbuf_size(&cmd->out) > f->max_pending)
        f->max_pending = cw_outbuf_size(&cmd->out);
    cw_out_plan_t plan;
    size_t n = cw_outbuf_plan(&cmd->out, &plan);
    if (n == 0)
        return 0;
    for (size_t k = 0; k < n; k++) {
        cw_out_pair_t p;
        cw_outbuf_plan_pair(&cmd->out, &plan, k, &p);
        if (p.kind == CW_OUT_TEXT) {
            cw_buf_append(&f->text[p.stream], p.data, p.len);
        } else if (p.kind == CW_OUT_INT && p.key_len == 2 && memcmp(p.key, "rc", 2) == 0) {
            f->has_rc = true;
            f->rc = p.ival;
        } else if (p.kind == CW_OUT_STR && p.key_len == 14 &&
                   memcmp(p.key, "failure_reason", 14) == 0) {
            size_t m = p.len < sizeof f->failure_reason - 1 ? p.len : sizeof f->failure_reason - 1;
            memcpy(f->failure_reason, p.data, m);
            f->failure_reason[m] = '\0';
        }
    }
    cw_outbuf_commit(&cmd->out, &plan);
    f->updates++;
    return 1;
}

static int fake_send_complete(cw_session_t *s, cw_cmd_t *cmd, const char *failure)
{
    (void)cmd;
    fake_session_t *f = fake_of(s);
    f->completed = true;
    f->complete_failure = failure ? strdup(failure) : NULL;
    return 0;
}

/* Answer transfer requests at once, from memory. */
static int fake_xfer(cw_session_t *s, cw_cmd_t *cmd, const cw_xfer_req_t *req, cw_xfer_cb cb)
{
    fake_session_t *f = fake_of(s);
    cw_xfer_answer_t a = {0};
    f->xfers++;
    switch (req->op) {
    case CW_XFER_WRITE:
        cw_buf_append(&f->upload, req->data, req->len);
        break;
    case CW_XFER_CLOSE:
    case CW_XFER_UNPACK:
        f->upload_closed = true;
        break;
    case CW_XFER_READ: {
        size_t left = f->download_len - f->download_off;
        size_t n = (size_t)req->length < left ? (size_t)req->length : left;
        a.data = f->download + f->download_off;
        a.len = n;
        f->download_off += n;
        break;
    }
    default:
        break;
    }
    cb(cmd, &a);
    return 0;
}

static void fake_release(cw_session_t *s, cw_cmd_t *cmd)
{
    (void)cmd;
    fake_of(s)->released++;
}

static const cw_session_ops_t fake_ops = {
    .can_send = fake_can_send,
    .send_update = fake_send_update,
    .send_complete = fake_send_complete,
    .xfer = fake_xfer,
    .release = fake_release,
};

void fake_session_init(fake_session_t *s)
{
    memset(s, 0, sizeof *s);
    s->base.ops = &fake_ops;
    s->base.protocol = "fake";
}

void fake_session_free(fake_session_t *s)
{
    for (int i = 0; i < 4; i++)
        cw_buf_free(&s->text[i]);
    cw_buf_free(&s->upload);
    free(s->complete_failure);
}

uint64_t now_ms(void)
{
    return uv_hrtime() / 1000000;
}

static void deadline_cb(uv_timer_t *t)
{
    *(bool *)t->data = true;
    uv_stop(t->loop);
}

/* Run with a deadline timer; the flag or the deadline ends it. */
static bool run_bounded(uv_loop_t *loop, const bool *flag, uint64_t timeout_ms)
{
    bool expired = false;
    uv_timer_t t;
    uv_timer_init(loop, &t);
    t.data = &expired;
    uv_timer_start(&t, deadline_cb, timeout_ms, 0);
    uv_unref((uv_handle_t *)&t);
    while (!expired && (flag == NULL || !*flag)) {
        if (uv_run(loop, UV_RUN_ONCE) == 0 && flag == NULL)
            break;
    }
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
    return !expired;
}

bool run_until(uv_loop_t *loop, const bool *flag, uint64_t timeout_ms)
{
    return run_bounded(loop, flag, timeout_ms);
}

bool run_out(uv_loop_t *loop, uint64_t timeout_ms)
{
    return run_bounded(loop, NULL, timeout_ms);
}

static char *dupstr(const char *s)
{
    return s ? strdup(s) : NULL;
}

void shell_args(cw_args_t *a, const char *workdir, const char *const *argv)
{
    memset(a, 0, sizeof *a);
    a->kind = CW_CMD_SHELL;
    size_t n = 0;
    while (argv[n])
        n++;
    a->argv = calloc(n + 1, sizeof *a->argv);
    a->argv_fake = calloc(n + 1, sizeof *a->argv_fake);
    for (size_t i = 0; i < n; i++) {
        a->argv[i] = dupstr(argv[i]);
        a->argv_fake[i] = dupstr(argv[i]);
    }
    a->display = dupstr(argv[0]);
    a->workdir = dupstr(workdir);
    a->want_stdout = a->want_stderr = true;
    a->timeout = a->max_time = a->sigterm_time = -1;
    a->interrupt_signal = SIGKILL;
    strcpy(a->interrupt_signal_name, "KILL");
}
