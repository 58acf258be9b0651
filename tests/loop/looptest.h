/* Helpers of the loop tests: a real libuv loop, the worker's own code, no
 * Buildbot master.  A fake session records what commands report; runs are
 * bounded by a deadline so a hang fails the test instead of blocking it. */
#ifndef CW_LOOPTEST_H
#define CW_LOOPTEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "cmd/cmd.h"
#include "cworker/buf.h"

/* A session that collects output instead of sending it. */
typedef struct fake_session {
    cw_session_t base;
    bool blocked;     /* can_send answers false (a slow master) */
    size_t updates;   /* update messages taken */
    cw_buf_t text[4]; /* per cw_stream_t */
    bool has_rc;
    int64_t rc;
    char failure_reason[64];
    bool completed;
    char *complete_failure; /* complete's failure text, or NULL */
    size_t released;        /* release calls */
    size_t max_pending;     /* largest cw_outbuf_size seen at an update */
    /* transfers: uploads go to upload, downloads come from download */
    cw_buf_t upload;
    bool upload_closed;
    const uint8_t *download;
    size_t download_len, download_off;
    size_t xfers;
} fake_session_t;

void fake_session_init(fake_session_t *s);
void fake_session_free(fake_session_t *s);

/* Run the loop until *flag becomes true or timeout_ms pass; false on timeout. */
bool run_until(uv_loop_t *loop, const bool *flag, uint64_t timeout_ms);
/* Run the loop until nothing is left (handles closed); false on timeout. */
bool run_out(uv_loop_t *loop, uint64_t timeout_ms);
/* Milliseconds since an arbitrary point. */
uint64_t now_ms(void);

/* Shell arguments for argv (NULL-terminated), in workdir. */
void shell_args(cw_args_t *a, const char *workdir, const char *const *argv);

#endif
