/* Transfers, driven by the worker one request at a time (reference §7.3):
 *   upload_file       file -> update_upload_file_write* -> close [-> utime]
 *   upload_directory  tar stream (built while sent) -> ..._directory_write*
 *                     -> update_upload_directory_unpack
 *   download_file     update_read_file* -> update_read_file_close
 * With cworker-master's "pipeline" argument (docs/protocol.md) several reads
 * or writes are in flight; the closing request still waits for all of them.
 *
 * File I/O never blocks the loop: upload_file and download_file use uv_fs_*
 * requests; upload_directory builds its tar stream with libarchive in a
 * thread of its own that hands finished chunks to the loop through a small
 * bounded queue, so memory stays at a few blocks whatever the tree's size.
 *
 * Failures never leave a half-written file under a real name: a download is
 * written to a temporary name beside the destination and renamed only when
 * complete; an upload that fails or is interrupted sends no close/unpack,
 * so the master discards its temporary file instead of installing it.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "cworker/utf8.h"
#include "cmd.h"
#include "cw_config.h"
#include "fsutil.h"
#include "log.h"

#if CW_HAVE_ARCHIVE
#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
#include <langinfo.h>
#include <locale.h>
#endif

/* Chunks the tar thread may have ready ahead of the network. */
#define TAR_QUEUE 4

typedef struct xfer xfer_t;

#if CW_HAVE_ARCHIVE
/* The tar-building thread and its hand-over queue. */
typedef struct tar_producer {
    uv_thread_t thread;
    uv_async_t async;
    bool async_init;
    bool thread_started;
    uv_mutex_t mu;
    uv_cond_t cond;
    cw_buf_t q[TAR_QUEUE]; /* ready chunks (ring) */
    int qhead, qcount;
    bool eof; /* the stream is complete (after the last chunk) */
    int err;  /* <0: the thread failed; errmsg says why */
    char errmsg[600];
    atomic_bool stop;
    /* thread-side */
    cw_buf_t cur;
    size_t blocksize;
    char *root;
    cw_compress_t compress;
    bool utf8_names;  /* the locale is UTF-8: libarchive can convert names */
    size_t max_depth; /* fs-max-depth */
    /* file data on its way into the archive; here rather than _Thread_local,
     * whose 64 KiB every thread of the process (libuv's pool too) would
     * zero and keep resident (docs/performance.md, "Footprint") */
    uint8_t readbuf[65536];
} tar_producer_t;
#endif

struct xfer {
    cw_cmd_t *cmd;
    uv_fs_t fs;
    bool fs_busy;  /* an fs request is in flight */
    bool req_busy; /* a request to the master is in flight */
    uv_file fd;
    uint8_t *buf;
    size_t buflen;
    uint64_t done_bytes; /* sent (upload) or written (download) */
    int64_t seq;
    bool stopping; /* interrupted or lost: wind down */
    bool finished;
    int rc;
    double atime, mtime; /* keepstamp */
    char *tmp_path;      /* download: temporary file */
    char *dest;          /* download: the destination, symbolic links followed */
    int dl_mode;         /* download: DL_RENAME, DL_COPY_BACK or DL_DIRECT */
    bool dest_chr;       /* download: the destination is a character device */
    int64_t cmd_mode;    /* download: the requested mode, or -1 */
    size_t wdone;        /* download: bytes of buf already written */
    uv_work_t work;      /* download: the copy back (DL_COPY_BACK) */
    bool work_busy;
    int work_err;
    uint64_t file_off;
    bool probing; /* download: asked 1 byte past maxsize */
    bool zombie;  /* destroyed while an fs request was in flight */
    /* inside a call that may end the command (xfer_end can complete it at
     * once, e.g. on an allocation failure): a destroy leaves x for
     * xfer_leave to free (pipelined downloads and uploads) */
    unsigned busy;
#if CW_HAVE_ARCHIVE
    tar_producer_t *tar;
#endif
    /* download with the master's "pipeline" argument (cworker-master): up
     * to dl_window reads in flight; their answers wait in dl_q and reach
     * read_file_done one at a time, as if each had just been asked for */
    int dl_window;
    unsigned dl_inflight;
    struct dl_answer *dl_q, *dl_q_tail;
    unsigned dl_queued;
    bool dl_wanting;       /* read_file_done waits for the next answer */
    bool dl_last_asked;    /* an answer ended the file (or failed): ask no more */
    bool dl_close_pending; /* read-close waits for the reads in flight */
    uint8_t *dl_spare[16]; /* block buffers to reuse (no page faults per block) */
    unsigned dl_nspare;
    /* upload: up to ul_window update_upload_*_write requests in flight (the
     * master's "pipeline" argument; 1 without it: each block is read only
     * once the previous write is answered, as the stock worker does).  The
     * data is copied into each message, so one read buffer serves them all. */
    int ul_window;
    unsigned ul_inflight;
    bool ul_eof; /* nothing more to send: close/unpack once the writes are answered */
};

/* A stored answer to a pipelined read. */
typedef struct dl_answer {
    struct dl_answer *next;
    int status;
    bool nil, not_data;
    uint8_t *data; /* block_size bytes (data), or the refusal text */
    size_t len;
} dl_answer_t;

static void xfer_end(xfer_t *x, int rc, const char *stderr_msg, const char *failure);
static void xfer_free(xfer_t *x, cw_cmd_t *cmd);

/* Every fs callback starts here: false when the command is already gone
 * (then x is freed now that the request no longer references it). */
static bool fs_cb_enter(xfer_t *x, uv_fs_t *req)
{
    uv_fs_req_cleanup(req);
    x->fs_busy = false;
    if (x->zombie) {
        xfer_free(x, NULL);
        return false;
    }
    return true;
}

/* The end of a call that held x (x->busy++): a transfer destroyed inside
 * it (xfer_end can complete the command at once) is freed here, once
 * nothing uses x. */
static void xfer_leave(xfer_t *x)
{
    if (--x->busy == 0 && x->zombie && !x->fs_busy && !x->work_busy)
        xfer_free(x, NULL);
}

/* Add a stderr line (for error messages). */
static void xfer_stderr(xfer_t *x, const char *msg)
{
    cw_outbuf_t *ob = &x->cmd->out;
    cw_buf_t line = CW_BUF_INIT;
    cw_utf8_repair((const uint8_t *)msg, strlen(msg), &line);
    if (line.len == 0 || line.data[line.len - 1] != '\n')
        cw_buf_append(&line, "\n", 1);
    cw_outbuf_add_lines(ob, CW_STREAM_STDERR, NULL, (const char *)line.data, line.len,
                        cw_cmd_now(x->cmd));
    cw_buf_free(&line);
    cw_cmd_output_added(x->cmd);
}

/* "pre" PATH "post", the path elided to a bounded length (a path can be
 * as long as the file system allows; a message should not be). */
static void path_msg(cw_buf_t *b, const char *pre, const char *path, const char *post)
{
    cw_buf_append_str(b, pre);
    cw_buf_append_elided(b, path, 1024);
    cw_buf_append_str(b, post);
}

static void xfer_end_path(xfer_t *x, int rc, const char *pre, const char *path,
                          const char *post_fmt, ...) __attribute__((format(printf, 5, 6)));

/* xfer_end with the message "pre'PATH'post" (post a printf format). */
static void xfer_end_path(xfer_t *x, int rc, const char *pre, const char *path,
                          const char *post_fmt, ...)
{
    cw_buf_t m = CW_BUF_INIT;
    path_msg(&m, pre, path, "");
    char post[700];
    va_list ap;
    va_start(ap, post_fmt);
    vsnprintf(post, sizeof post, post_fmt, ap);
    va_end(ap);
    cw_buf_append_str(&m, post);
    cw_buf_append(&m, "", 1);
    xfer_end(x, rc, m.data ? (const char *)m.data : "out of memory", NULL);
    cw_buf_free(&m);
}

/* Why a file of this type is not transferred. */
static const char *not_regular(mode_t mode)
{
    return S_ISFIFO(mode)   ? "not a regular file (a FIFO)"
           : S_ISSOCK(mode) ? "not a regular file (a socket)"
           : S_ISCHR(mode)  ? "not a regular file (a character device)"
           : S_ISBLK(mode)  ? "not a regular file (a block device)"
           : S_ISDIR(mode)  ? "Is a directory"
                            : "not a regular file";
}

/* Text of the master's refusal (for messages). */
static void answer_text(const cw_xfer_answer_t *a, char *out, size_t n)
{
    if (a->error && a->error_len)
        snprintf(out, n, "%.*s", (int)(a->error_len > 400 ? 400 : a->error_len), a->error);
    else
        snprintf(out, n, "(no message)");
}

/* The block size to use: the step's, within what the link carries in one
 * message (Perspective Broker: 640 KiB). */
static size_t block_size(const xfer_t *x)
{
    size_t bs = (size_t)x->cmd->args.blocksize, max = cw_cmd_max_block(x->cmd);
    return max && bs > max ? max : bs;
}

/* Ask the master (through the command's session); false when that cannot
 * be done (the link is gone, out of memory): the caller ends the transfer. */
static bool xfer_ask(xfer_t *x, const cw_xfer_req_t *req, cw_xfer_cb cb)
{
    x->req_busy = true;
    if (cw_cmd_xfer(x->cmd, req, cb) < 0) {
        x->req_busy = false;
        return false;
    }
    return true;
}

/* ---- upload_file ---- */

static void upload_fill(xfer_t *x);

static void utime_done(cw_cmd_t *cmd, const cw_xfer_answer_t *ans)
{
    xfer_t *x = cmd->state;
    x->req_busy = false;
    if (ans->status == CW_ECLOSED) {
        xfer_end(x, 1, NULL, NULL);
        return;
    }
    if (ans->status < 0) {
        /* Buildbot <= 4.3 cannot set times over msgpack (reference §8.2). The
         * file is there; the master's answer decides the step (EXCEPTION),
         * as with the stock worker, but the log says what happened. */
        char t[450], failure[600];
        answer_text(ans, t, sizeof t);
        cw_cmd_header(x->cmd,
                      "keepstamp: the master could not set the file times (a known bug of "
                      "Buildbot masters up to 4.3 with this protocol): %s",
                      t);
        snprintf(failure, sizeof failure, "master refused update_upload_file_utime: %s", t);
        xfer_end(x, 1, NULL, failure);
        return;
    }
    xfer_end(x, x->rc, NULL, NULL);
}

static void upload_close_done(cw_cmd_t *cmd, const cw_xfer_answer_t *ans)
{
    xfer_t *x = cmd->state;
    x->req_busy = false;
    if (ans->status == CW_ECLOSED) {
        xfer_end(x, 1, NULL, NULL);
        return;
    }
    if (ans->status < 0) {
        char t[450], msg[600];
        answer_text(ans, t, sizeof t);
        snprintf(msg, sizeof msg, "the master could not store the upload: %s", t);
        xfer_end(x, 1, msg, NULL);
        return;
    }
    cw_args_t *a = &x->cmd->args;
    if (a->keepstamp && x->rc == 0 && !x->stopping) {
        cw_xfer_req_t req = {.op = CW_XFER_UTIME, .atime = x->atime, .mtime = x->mtime};
        if (!xfer_ask(x, &req, utime_done))
            xfer_end(x, 1, NULL, NULL);
        return;
    }
    xfer_end(x, x->rc, NULL, NULL);
}

/* Tell the master the file (CW_XFER_CLOSE) or the tar stream
 * (CW_XFER_UNPACK) is complete (only when it really is). */
static void upload_send_close(xfer_t *x, cw_xfer_op_t op)
{
    cw_xfer_req_t req = {.op = op};
    if (!xfer_ask(x, &req, upload_close_done))
        xfer_end(x, 1, NULL, NULL);
}

/* The answer to one update_upload_*_write (with several in flight, any of
 * them: they are all alike). */
static void upload_write_done(cw_cmd_t *cmd, const cw_xfer_answer_t *ans)
{
    xfer_t *x = cmd->state;
    x->ul_inflight--;
    x->req_busy = x->ul_inflight > 0;
    if (x->finished)
        return; /* a write that was in flight when the command ended */
    if (ans->status == CW_ECLOSED) {
        xfer_end(x, 1, NULL, NULL);
        return;
    }
    if (ans->status < 0) {
        char t[450], msg[600];
        answer_text(ans, t, sizeof t);
        snprintf(msg, sizeof msg, "the master refused upload data: %s", t);
        xfer_end(x, 1, msg, NULL);
        return;
    }
    if (x->stopping) {
        xfer_end(x, 1, NULL, NULL);
        return;
    }
#if CW_HAVE_ARCHIVE
    if (x->tar) {
        uv_async_send(&x->tar->async); /* look at the queue again */
        return;
    }
#endif
    if (x->ul_eof) {
        /* the end of the file (or maxsize: the truncated file is still
         * delivered, as the stock worker does, and the step fails) */
        if (x->ul_inflight == 0 && !x->fs_busy)
            upload_send_close(x, CW_XFER_CLOSE);
        return;
    }
    upload_fill(x);
}

/* Send one chunk (copied into the message). */
static int upload_send_chunk(xfer_t *x, const uint8_t *data, size_t len)
{
    cw_xfer_req_t req = {.op = CW_XFER_WRITE, .data = data, .len = len};
    x->ul_inflight++;
    x->req_busy = true;
    int rc = cw_cmd_xfer(x->cmd, &req, upload_write_done);
    if (rc < 0) {
        x->ul_inflight--;
        x->req_busy = x->ul_inflight > 0;
    } else {
        x->done_bytes += len;
    }
    return rc;
}

/* A block read from the file (n bytes, 0 at EOF, or a negative libuv code). */
static void upload_got(xfer_t *x, ssize_t n)
{
    if (x->stopping) {
        xfer_end(x, 1, NULL, NULL);
        return;
    }
    cw_args_t *a = &x->cmd->args;
    if (n < 0) {
        xfer_end_path(x, 1, "Cannot read file '", a->path, "' for upload: %s", uv_strerror((int)n));
        return;
    }
    if (n == 0) {
        x->ul_eof = true;
        if (x->ul_inflight == 0)
            upload_send_close(x, CW_XFER_CLOSE);
        return;
    }
    size_t len = (size_t)n;
    x->file_off += len;
    if (a->maxsize >= 0 && x->done_bytes + len > (uint64_t)a->maxsize) {
        /* more than maxsize: send what fits, then fail (a file of exactly
         * maxsize bytes is not affected: its EOF read returns 0) */
        len = (size_t)((uint64_t)a->maxsize - x->done_bytes);
        x->rc = 1;
        x->ul_eof = true;
        cw_buf_t m = CW_BUF_INIT;
        path_msg(&m, "Maximum filesize reached, truncating file '", a->path, "'");
        cw_buf_append(&m, "", 1);
        xfer_stderr(x, m.data ? (const char *)m.data : "Maximum filesize reached");
        cw_buf_free(&m);
        if (len == 0) {
            if (x->ul_inflight == 0)
                upload_send_close(x, CW_XFER_CLOSE);
            return;
        }
    }
    int rc = upload_send_chunk(x, x->buf, len);
    if (rc < 0)
        xfer_end(x, 1, rc == -ENOMEM ? "out of memory" : NULL, NULL);
}

static void upload_read_cb(uv_fs_t *req)
{
    xfer_t *x = req->data;
    ssize_t n = req->result;
    if (!fs_cb_enter(x, req))
        return;
    if (x->finished)
        return; /* ended by a write's answer while the block was read */
    x->busy++;
    upload_got(x, n);
    if (!x->finished)
        upload_fill(x);
    xfer_leave(x);
}

/* Read and send blocks while fewer than ul_window writes are in flight (one
 * at a time without the "pipeline" argument: the next block is read once
 * the write before it is answered).
 *
 * Each block comes from the page cache on the loop thread when it is all
 * there (preadv2 with RWF_NOWAIT never waits for the disk: it fails with
 * EAGAIN instead), else through libuv's thread pool (then upload_read_cb
 * goes on).  A file just built is usually cached, and a pool round trip
 * costs two thread wake-ups per block, more CPU than copying the block.  An
 * empty or failed RWF_NOWAIT read (EOF, an error, a kernel or file system
 * without it) is left to the pool read, which is authoritative. */
static void upload_fill(xfer_t *x)
{
    x->busy++; /* upload_got may end the command (and destroy x) */
    while (!x->finished && !x->stopping && !x->ul_eof && !x->fs_busy &&
           x->ul_inflight < (unsigned)x->ul_window) {
#if defined(__linux__) && defined(RWF_NOWAIT)
        struct iovec iov = {.iov_base = x->buf, .iov_len = x->buflen};
        ssize_t got = preadv2(x->fd, &iov, 1, (off_t)x->file_off, RWF_NOWAIT);
        if (got > 0) {
            upload_got(x, got);
            continue;
        }
#endif
        x->fs.data = x;
        x->fs_busy = true;
        uv_buf_t b = uv_buf_init((char *)x->buf, (unsigned)x->buflen);
        int rc = uv_fs_read(cw_cmd_loop(x->cmd), &x->fs, x->fd, &b, 1, (int64_t)x->file_off,
                            upload_read_cb);
        if (rc < 0) {
            x->fs_busy = false;
            xfer_end(x, 1, "cannot read the file", NULL);
        }
        break;
    }
    /* interrupted inside (a lost link): nothing in flight will end it */
    if (!x->finished && x->stopping && !x->fs_busy && !x->req_busy)
        xfer_end(x, 1, NULL, NULL);
    xfer_leave(x);
}

static void upload_open_cb(uv_fs_t *req)
{
    xfer_t *x = req->data;
    ssize_t r = req->result;
    if (!fs_cb_enter(x, req)) {
        if (r >= 0)
            close((int)r);
        return;
    }
    cw_args_t *a = &x->cmd->args;
    if (x->stopping) {
        if (r >= 0)
            x->fd = (uv_file)r;
        xfer_end(x, 1, NULL, NULL);
        return;
    }
    if (r < 0) {
        xfer_end_path(x, 1, "Cannot open file '", a->path, "' for upload: %s", uv_strerror((int)r));
        return;
    }
    x->fd = (uv_file)r;
    struct stat st;
    if (fstat(x->fd, &st) == 0) {
        if (!S_ISREG(st.st_mode)) {
            /* A FIFO would block a pool thread until a writer came (and an
             * interrupt could not end it), a device may never end: only
             * regular files are uploaded. */
            xfer_end_path(x, 1, "Cannot open file '", a->path, "' for upload: %s",
                          not_regular(st.st_mode));
            return;
        }
        x->atime = (double)CW_ST_ATIM(&st).tv_sec + (double)CW_ST_ATIM(&st).tv_nsec / 1e9;
        x->mtime = (double)CW_ST_MTIM(&st).tv_sec + (double)CW_ST_MTIM(&st).tv_nsec / 1e9;
    }
    cw_cmd_header(x->cmd, "sending %s", a->path);
    upload_fill(x);
}

static int upload_file_start(xfer_t *x)
{
    cw_args_t *a = &x->cmd->args;
    x->ul_window = a->pipeline > 1 ? a->pipeline : 1;
    x->buflen = block_size(x);
    x->buf = malloc(x->buflen);
    if (x->buf == NULL)
        return -ENOMEM;
    x->fs.data = x;
    x->fs_busy = true;
    /* O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused
     * once open); it does nothing to reads of a regular file */
    int rc = uv_fs_open(cw_cmd_loop(x->cmd), &x->fs, a->path,
                        O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY, 0, upload_open_cb);
    if (rc < 0)
        x->fs_busy = false;
    return rc;
}

/* ---- upload_directory ---- */

#if CW_HAVE_ARCHIVE
/* Thread side: hand a full chunk to the loop, waiting while the queue is
 * full (that wait is the backpressure). */
static int tar_push(tar_producer_t *t)
{
    uv_mutex_lock(&t->mu);
    while (t->qcount == TAR_QUEUE && !atomic_load(&t->stop))
        uv_cond_wait(&t->cond, &t->mu);
    if (atomic_load(&t->stop)) {
        uv_mutex_unlock(&t->mu);
        return -1;
    }
    t->q[(t->qhead + t->qcount) % TAR_QUEUE] = t->cur;
    t->qcount++;
    uv_mutex_unlock(&t->mu);
    memset(&t->cur, 0, sizeof t->cur);
    uv_async_send(&t->async);
    return 0;
}

static la_ssize_t tar_write_cb(struct archive *a, void *ud, const void *buf, size_t len)
{
    tar_producer_t *t = ud;
    if (atomic_load(&t->stop))
        return -1;
    if (cw_buf_append(&t->cur, buf, len) < 0) {
        archive_set_error(a, ENOMEM, "out of memory");
        return -1;
    }
    if (t->cur.len >= t->blocksize && tar_push(t) < 0)
        return -1;
    return (la_ssize_t)len;
}

static void tar_fail(tar_producer_t *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void tar_fail_path(tar_producer_t *t, const char *pre, const char *path, const char *post,
                          const char *detail);

/* Thread side: record why the stream failed (the first reason wins). */
static void tar_fail(tar_producer_t *t, const char *fmt, ...)
{
    if (t->err == 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(t->errmsg, sizeof t->errmsg, fmt, ap);
        va_end(ap);
        t->err = -1;
    }
}

/* tar_fail with "pre'PATH'post detail", the path elided (paths can be as long
 * as the file system allows). */
static void tar_fail_path(tar_producer_t *t, const char *pre, const char *path, const char *post,
                          const char *detail)
{
    cw_buf_t m = CW_BUF_INIT;
    cw_buf_append_str(&m, pre);
    cw_buf_append_elided(&m, path, 256);
    cw_buf_append_str(&m, post);
    cw_buf_append_str(&m, detail);
    cw_buf_append(&m, "", 1);
    tar_fail(t, "%s", m.data ? (const char *)m.data : "out of memory");
    cw_buf_free(&m);
}

/* Thread side: add one file system object (relative name rel). */
static int tar_add(tar_producer_t *t, struct archive *ar, struct archive_entry *e, int dirfd,
                   const char *name, const char *rel, const struct stat *st)
{
    archive_entry_clear(e);
    /* names are bytes; pax stores them as UTF-8 (or marked binary when
     * they are not), independent of the worker's locale */
    if (t->utf8_names && cw_utf8_valid((const uint8_t *)rel, strlen(rel)))
        archive_entry_update_pathname_utf8(e, rel);
    else
        archive_entry_copy_pathname(e, rel);
    archive_entry_copy_stat(e, st);
    char target[4096];
    if (S_ISLNK(st->st_mode)) {
        ssize_t n = readlinkat(dirfd, name, target, sizeof target - 1);
        if (n < 0) {
            tar_fail_path(t, "cannot read link '", rel, "': ", strerror(errno));
            return -1;
        }
        target[n] = '\0';
        if (t->utf8_names && cw_utf8_valid((const uint8_t *)target, (size_t)n))
            archive_entry_update_symlink_utf8(e, target);
        else
            archive_entry_copy_symlink(e, target);
        archive_entry_set_size(e, 0);
    } else if (!S_ISREG(st->st_mode)) {
        archive_entry_set_size(e, 0);
    }
    int fd = -1;
    if (S_ISREG(st->st_mode)) {
        /* O_NONBLOCK: a FIFO swapped in since the lstat must not block */
        fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY);
        struct stat ost;
        if (fd >= 0 && (fstat(fd, &ost) < 0 || !S_ISREG(ost.st_mode))) {
            close(fd);
            fd = -1;
            errno = EAGAIN;
        }
        if (fd < 0) {
            tar_fail_path(t, "cannot open '", rel, "' for the upload: ",
                          errno == EAGAIN ? "it changed while it was being uploaded"
                                          : strerror(errno));
            return -1;
        }
    }
    /* ARCHIVE_WARN (e.g. a name stored as binary) still wrote the entry */
    if (archive_write_header(ar, e) < ARCHIVE_WARN) {
        tar_fail(t, "tar: %s%s", archive_error_string(ar) ? archive_error_string(ar) : "error", "");
        if (fd >= 0)
            close(fd);
        return -1;
    }
    if (fd >= 0) {
        uint8_t *buf = t->readbuf;
        int64_t left = st->st_size;
        while (left > 0) {
            ssize_t n = read(fd, buf, sizeof t->readbuf);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0) {
                /* the file shrank while we read it: the header promised more */
                tar_fail_path(t, "'", rel, "' changed while it was being uploaded",
                              n < 0 ? strerror(errno) : "");
                close(fd);
                return -1;
            }
            if (n > left)
                n = (ssize_t)left; /* it grew: take what the header says */
            if (archive_write_data(ar, buf, (size_t)n) < 0) {
                close(fd);
                if (!atomic_load(&t->stop))
                    tar_fail(t, "tar: %s%s",
                             archive_error_string(ar) ? archive_error_string(ar) : "error", "");
                return -1;
            }
            left -= n;
        }
        close(fd);
    }
    return atomic_load(&t->stop) ? -1 : 0;
}

/* Thread side: add everything below the root, depth first, a directory
 * before its content, with a bounded number of open directories whatever
 * the depth (cw_walk).  0, or -1 with the reason recorded. */
static int tar_walk(tar_producer_t *t, struct archive *ar, struct archive_entry *e)
{
    cw_walk_t *w = NULL;
    cw_buf_t why = CW_BUF_INIT;
    cw_walk_entry_t we;
    int rc = cw_walk_open(&w, t->root, t->max_depth, &t->stop, &why);
    if (rc < 0) {
        char ebuf[128];
        tar_fail_path(t, "Cannot read directory '", t->root,
                      "' for upload: ", cw_fs_strerror(rc, ebuf, sizeof ebuf));
    }
    while (rc == 0 && (rc = cw_walk_next(w, &we)) == 1) {
        if (S_ISSOCK(we.st.st_mode)) {
            rc = 0; /* tar cannot hold sockets; Python's tarfile skips them too */
            continue;
        }
        rc = tar_add(t, ar, e, we.dirfd, we.name, we.path, &we.st) < 0 ? -1 : 0;
    }
    if (rc < -1 && rc != -EINTR && why.len) {
        /* the walker's line ends with '\n' */
        tar_fail(t, "%.*s", (int)why.len - 1, (const char *)why.data);
    }
    cw_walk_close(w);
    cw_buf_free(&why);
    return rc < 0 ? -1 : 0;
}

/* The tar thread: build the whole stream, chunk by chunk. */
static void tar_thread(void *arg)
{
    tar_producer_t *t = arg;
    struct archive *ar = archive_write_new();
    struct archive_entry *e = archive_entry_new();
    int rc = 0;
    if (ar == NULL || e == NULL) {
        tar_fail(t, "out of memory%s%s", "", "");
        rc = -1;
    }
    if (rc == 0) {
        archive_write_set_format_pax_restricted(ar);
        /* Without a UTF-8 locale (main.c asks for C.UTF-8, which a small device or
         * an emulated big-endian one may lack) libarchive 3.6 cannot convert a
         * non-ASCII name: it writes an empty one, or crashes on a NULL name.  There
         * every name is written as its bytes and marked hdrcharset=BINARY, which the
         * master's tarfile decodes with its file system encoding (UTF-8): the same
         * names as the UTF-8 path, at the cost of a pax header on every entry. */
        t->utf8_names = strcmp(nl_langinfo(CODESET), "UTF-8") == 0;
        if (!t->utf8_names &&
            archive_write_set_format_option(ar, "pax", "hdrcharset", "BINARY") != ARCHIVE_OK) {
            tar_fail(t, "tar: %s%s", archive_error_string(ar), "");
            rc = -1;
        }
    }
    if (rc == 0) {
        if (t->compress == CW_COMPRESS_GZ)
            rc = archive_write_add_filter_gzip(ar);
        else if (t->compress == CW_COMPRESS_BZ2)
            rc = archive_write_add_filter_bzip2(ar);
        else
            rc = archive_write_add_filter_none(ar);
        if (rc != ARCHIVE_OK)
            tar_fail(t, "tar: %s%s", archive_error_string(ar), "");
        archive_write_set_bytes_per_block(ar, 10240);
        archive_write_set_bytes_in_last_block(ar, 1);
        if (rc == ARCHIVE_OK &&
            archive_write_open2(ar, t, NULL, tar_write_cb, NULL, NULL) != ARCHIVE_OK) {
            tar_fail(t, "tar: %s%s", archive_error_string(ar), "");
            rc = -1;
        }
    }
    if (rc == 0)
        rc = tar_walk(t, ar, e);
    if (rc == 0 && archive_write_close(ar) != ARCHIVE_OK) {
        if (!atomic_load(&t->stop))
            tar_fail(t, "tar: %s%s", archive_error_string(ar), "");
        rc = -1;
    }
    if (ar)
        archive_write_free(ar);
    if (e)
        archive_entry_free(e);
    if (rc == 0 && t->cur.len && tar_push(t) < 0)
        rc = -1;
    uv_mutex_lock(&t->mu);
    if (rc == 0)
        t->eof = true;
    else if (t->err == 0)
        t->err = -1; /* stopped */
    uv_mutex_unlock(&t->mu);
    uv_async_send(&t->async);
}

/* Loop side: send the ready chunks while fewer than ul_window writes are in
 * flight (one at a time without the "pipeline" argument), or finish: the
 * unpack request once the stream is complete and every write answered. */
static void tar_async_cb(uv_async_t *h)
{
    xfer_t *x = h->data;
    tar_producer_t *t = x->tar;
    cw_args_t *a = &x->cmd->args;
    /* x outlives an end inside the loop: it is freed once the async handle
     * is closed (xfer_destroy) */
    while (!x->finished && !x->ul_eof && x->ul_inflight < (unsigned)x->ul_window) {
        if (x->stopping) {
            xfer_end(x, 1, NULL, NULL);
            return;
        }
        cw_buf_t chunk = CW_BUF_INIT;
        bool have = false, eof = false;
        int err = 0;
        uv_mutex_lock(&t->mu);
        if (t->qcount > 0) {
            chunk = t->q[t->qhead];
            memset(&t->q[t->qhead], 0, sizeof t->q[t->qhead]);
            t->qhead = (t->qhead + 1) % TAR_QUEUE;
            t->qcount--;
            have = true;
            uv_cond_signal(&t->cond);
        } else {
            eof = t->eof;
            err = t->err;
        }
        uv_mutex_unlock(&t->mu);
        if (have) {
            size_t len = chunk.len;
            if (a->maxsize >= 0 && x->done_bytes + len > (uint64_t)a->maxsize) {
                cw_buf_free(&chunk);
                /* a cut tar stream cannot be unpacked: do not ask for it */
                xfer_end_path(x, 1, "Maximum filesize reached, truncating file '", a->path, "'");
                return;
            }
            int rc = upload_send_chunk(x, chunk.data, len);
            cw_buf_free(&chunk);
            if (rc < 0) {
                xfer_end(x, 1, rc == -ENOMEM ? "out of memory" : NULL, NULL);
                return;
            }
            continue;
        }
        if (err) {
            xfer_end(x, 1, t->errmsg[0] ? t->errmsg : "the tar stream failed", NULL);
            return;
        }
        if (eof && x->ul_inflight == 0) {
            x->ul_eof = true;
            upload_send_close(x, CW_XFER_UNPACK);
        }
        return; /* the thread's next chunk, or the last write's answer, calls again */
    }
}

/* libarchive converts names through the locale's charset: use the
 * environment's, and UTF-8 rather than plain ASCII when it has none.  Set
 * here, on the loop thread before the first tar thread starts, rather than at
 * start-up: an idle worker then maps no locale files (docs/performance.md,
 * "Footprint"). */
static void tar_locale_once(void)
{
    static bool done;
    if (done)
        return;
    done = true;
    const char *loc = setlocale(LC_CTYPE, "");
    if (loc == NULL || strcmp(loc, "C") == 0 || strcmp(loc, "POSIX") == 0)
        setlocale(LC_CTYPE, "C.UTF-8");
}

static int upload_dir_start(xfer_t *x)
{
    cw_args_t *a = &x->cmd->args;
    struct stat st;
    if (stat(a->path, &st) < 0 || !S_ISDIR(st.st_mode)) {
        char ebuf[128];
        xfer_end_path(x, 1, "Cannot read directory '", a->path, "' for upload: %s",
                      stat(a->path, &st) < 0 ? cw_errstr(errno, ebuf, sizeof ebuf)
                                             : "Not a directory");
        return 0;
    }
    tar_producer_t *t = calloc(1, sizeof *t);
    if (t == NULL)
        return -ENOMEM;
    x->tar = t;
    x->ul_window = a->pipeline > 1 ? a->pipeline : 1;
    t->blocksize = block_size(x);
    t->max_depth = x->cmd->cs->env.fs_max_depth;
    t->compress = a->compress;
    t->root = strdup(a->path);
    atomic_init(&t->stop, false);
    uv_mutex_init(&t->mu);
    uv_cond_init(&t->cond);
    uv_async_init(cw_cmd_loop(x->cmd), &t->async, tar_async_cb);
    t->async.data = x;
    t->async_init = true;
    cw_cmd_header(x->cmd, "sending %s", a->path);
    tar_locale_once();
    if (t->root == NULL || uv_thread_create(&t->thread, tar_thread, t) != 0) {
        xfer_end(x, 1, "cannot start the tar thread", NULL);
        return 0;
    }
    t->thread_started = true;
    return 0;
}

/* Stop the tar thread and wait for it (it never blocks for long once
 * `stop` is set: it only waits on our condition variable). */
static void tar_stop(tar_producer_t *t)
{
    if (t->thread_started) {
        uv_mutex_lock(&t->mu);
        atomic_store(&t->stop, true);
        uv_cond_signal(&t->cond);
        uv_mutex_unlock(&t->mu);
        uv_thread_join(&t->thread);
        t->thread_started = false;
    }
}
#endif /* CW_HAVE_ARCHIVE */

/* ---- download_file ----
 *
 * Where the data goes depends on what the destination is, so that a
 * download keeps what the stock worker's open(path, 'wb') keeps (the file's
 * mode, owner and hard links; symbolic links written through) without its
 * partial files:
 *   DL_RENAME     a new file, or a regular file with one link: a temporary
 *                 file beside the (link-resolved) destination, given the
 *                 old file's mode and owner, renamed over it when complete;
 *   DL_COPY_BACK  a regular file with other hard links, or whose owner we
 *                 cannot give a new file: the data is collected in a
 *                 temporary file first, then copied into the file itself
 *                 (truncated) on the thread pool, so a lost link or an
 *                 interrupt never leaves it half written;
 *   DL_DIRECT     a character device (/dev/null), or a directory we cannot
 *                 create files in: written in place, as the stock worker
 *                 does, partial on failure.
 * A FIFO, socket or block device is refused (opening a FIFO would block).
 */

enum { DL_RENAME, DL_COPY_BACK, DL_DIRECT };

static void download_request(xfer_t *x);

static void download_unlink_tmp(xfer_t *x)
{
    if (x->tmp_path) {
        unlink(x->tmp_path);
        free(x->tmp_path);
        x->tmp_path = NULL;
    }
}

/* Thread pool: copy the complete temporary file into the destination. */
static void copy_back_work(uv_work_t *req)
{
    xfer_t *x = req->data;
    x->work_err = 0;
    /* the destination was resolved to a regular file at the start: refuse
     * to follow a link or block on a FIFO put there since */
    int out = open(x->dest, O_WRONLY | O_NOCTTY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    struct stat st;
    if (out < 0 || fstat(out, &st) < 0) {
        x->work_err = errno;
    } else if (!S_ISREG(st.st_mode)) {
        x->work_err = EINVAL;
    } else if (ftruncate(out, 0) < 0) {
        x->work_err = errno;
    } else {
        off_t off = 0;
        for (;;) {
            ssize_t n = pread(x->fd, x->buf, x->buflen, off);
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0) {
                x->work_err = errno;
                break;
            }
            if (n == 0)
                break;
            for (ssize_t w = 0; w < n;) {
                ssize_t k = pwrite(out, x->buf + w, (size_t)(n - w), off + w);
                if (k < 0 && errno == EINTR)
                    continue;
                if (k < 0) {
                    x->work_err = errno;
                    break;
                }
                w += k;
            }
            if (x->work_err)
                break;
            off += n;
        }
        if (x->work_err == 0 && x->cmd_mode >= 0 && fchmod(out, (mode_t)x->cmd_mode) < 0)
            x->work_err = errno;
    }
    if (out >= 0 && close(out) < 0 && x->work_err == 0)
        x->work_err = errno;
}

static void copy_back_done(uv_work_t *req, int status)
{
    xfer_t *x = req->data;
    x->work_busy = false;
    if (x->zombie) {
        xfer_free(x, NULL);
        return;
    }
    if (status == UV_ECANCELED)
        x->work_err = ECANCELED;
    if (x->work_err) {
        char ebuf[128];
        xfer_end_path(x, 1, "Cannot write file '", x->cmd->args.path, "' for download: %s",
                      cw_errstr(x->work_err, ebuf, sizeof ebuf));
        return;
    }
    xfer_end(x, x->rc, NULL, NULL);
}

/* The master has been told we are done; the data is complete: put it in place. */
static void read_close_done(cw_cmd_t *cmd, const cw_xfer_answer_t *ans)
{
    (void)ans;
    xfer_t *x = cmd->state;
    x->req_busy = false;
    cw_args_t *a = &x->cmd->args;
    if (x->rc != 0 || x->stopping) {
        xfer_end(x, x->rc, NULL, NULL);
        return;
    }
    if (x->dl_mode == DL_COPY_BACK) {
        x->work.data = x;
        x->work_busy = true;
        int rc = uv_queue_work(cw_cmd_loop(x->cmd), &x->work, copy_back_work, copy_back_done);
        if (rc < 0) {
            x->work_busy = false;
            xfer_end_path(x, 1, "Cannot write file '", a->path, "' for download: %s",
                          uv_strerror(rc));
        }
        return;
    }
    if (x->dl_mode == DL_DIRECT) {
        if (x->cmd_mode >= 0 && fchmod(x->fd, (mode_t)x->cmd_mode) < 0) {
            char ebuf[128];
            xfer_end_path(x, 1, "Cannot set the mode of '", a->path, "': %s",
                          cw_errstr(errno, ebuf, sizeof ebuf));
            return;
        }
        xfer_end(x, x->rc, NULL, NULL);
        return;
    }
    if (x->fd >= 0) {
        close(x->fd);
        x->fd = -1;
    }
    if (rename(x->tmp_path, x->dest) < 0) {
        char ebuf[128];
        int e = errno;
        download_unlink_tmp(x);
        xfer_end_path(x, 1, "Cannot open file '", a->path, "' for download: %s",
                      cw_errstr(e, ebuf, sizeof ebuf));
        return;
    }
    free(x->tmp_path);
    x->tmp_path = NULL;
    xfer_end(x, x->rc, NULL, NULL);
}

/* The reader is done with (success or not): always tell the master. */
static void download_finish(xfer_t *x, int rc, const char *msg)
{
    x->rc = rc;
    if (msg)
        xfer_stderr(x, msg);
    if (rc != 0)
        download_unlink_tmp(x);
    if (x->dl_inflight > 0) {
        /* pipelined reads are still answered first (dl_answer sends it) */
        x->dl_close_pending = true;
        x->req_busy = true;
        return;
    }
    cw_xfer_req_t req = {.op = CW_XFER_READ_CLOSE};
    if (!xfer_ask(x, &req, read_close_done))
        xfer_end(x, 1, NULL, NULL);
}

/* download_finish with "pre'PATH'post" (path elided) on stderr. */
static void download_finish_path(xfer_t *x, const char *pre, const char *path, const char *post,
                                 const char *detail)
{
    cw_buf_t m = CW_BUF_INIT;
    path_msg(&m, pre, path, post);
    cw_buf_append_str(&m, detail);
    cw_buf_append(&m, "", 1);
    download_finish(x, 1, m.data ? (const char *)m.data : "out of memory");
    cw_buf_free(&m);
}

static void download_write_next(xfer_t *x);

static void download_write_cb(uv_fs_t *req)
{
    xfer_t *x = req->data;
    ssize_t n = req->result;
    if (!fs_cb_enter(x, req))
        return;
    if (x->stopping) {
        download_finish(x, 1, NULL);
        return;
    }
    if (n < 0 || (n == 0 && x->wdone < x->buflen)) {
        /* a short write is followed by another one, so the text is the
         * kernel's reason ("No space left on device"), never "short write" */
        download_finish_path(x, "Cannot write file '", x->cmd->args.path, "' for download: ",
                             n < 0 ? uv_strerror((int)n) : "the file system accepted no data");
        return;
    }
    x->wdone += (size_t)n;
    x->file_off += (uint64_t)n;
    if (x->wdone < x->buflen) {
        download_write_next(x);
        return;
    }
    download_request(x);
}

/* Write the rest of the block in buf. */
static void download_write_next(xfer_t *x)
{
    x->fs.data = x;
    x->fs_busy = true;
    uv_buf_t b = uv_buf_init((char *)x->buf + x->wdone, (unsigned)(x->buflen - x->wdone));
    /* a character device (DL_DIRECT) has no offsets: -1 writes at the current position */
    int64_t off = x->dl_mode == DL_DIRECT && x->dest_chr ? -1 : (int64_t)x->file_off;
    int rc = uv_fs_write(cw_cmd_loop(x->cmd), &x->fs, x->fd, &b, 1, off, download_write_cb);
    if (rc < 0) {
        x->fs_busy = false;
        download_finish_path(x, "Cannot write file '", x->cmd->args.path,
                             "' for download: ", uv_strerror(rc));
    }
}

static void read_file_done(cw_cmd_t *cmd, const cw_xfer_answer_t *ans)
{
    xfer_t *x = cmd->state;
    x->req_busy = false;
    cw_args_t *a = &x->cmd->args;
    if (ans->status == CW_ECLOSED) {
        xfer_end(x, 1, NULL, NULL);
        return;
    }
    if (x->stopping) {
        download_finish(x, 1, NULL);
        return;
    }
    if (ans->status < 0) {
        char t[450], msg[600];
        answer_text(ans, t, sizeof t);
        snprintf(msg, sizeof msg, "the master failed to read the file: %s", t);
        download_finish(x, 1, msg);
        return;
    }
    const uint8_t *data = ans->data;
    size_t len = ans->len;
    bool pb = strcmp(cw_cmd_protocol(x->cmd), "pb") == 0;
    if (ans->nil) {
        if (x->done_bytes == 0 && !x->probing) {
            download_finish(
                x, 1,
                pb ? "download failed: the master's FileReader answered read() with None instead "
                     "of the file's data. Nothing was written."
                   : "download failed: the master answered update_read_file with nil instead of "
                     "the file's data. This is a bug of Buildbot masters (3.7 up to at least 4.3) "
                     "with the msgpack protocol: the stock worker would silently write an empty "
                     "file. Nothing was written; use a master with the fix, the pb protocol, or "
                     "transfer the file another way.");
            return;
        }
        len = 0; /* after data, treat nil as end of file */
    } else if (ans->not_data) {
        download_finish(x, 1,
                        pb ? "download failed: the master's FileReader answered read() with "
                             "something that is not data"
                           : "download failed: the master answered update_read_file with "
                             "something that is not data");
        return;
    }
    if (len == 0) {
        download_finish(x, 0, NULL);
        return;
    }
    if (len > x->buflen && !x->probing) {
        download_finish(x, 1, "download failed: the master sent more data than asked for");
        return;
    }
    if (x->probing) {
        download_finish_path(x, "Maximum filesize reached, truncating file '", a->path, "'", "");
        return;
    }
    if (data != x->buf) /* a pipelined answer is already in buf */
        memcpy(x->buf, data, len);
    x->buflen = len;
    x->wdone = 0;
    x->done_bytes += len;
    download_write_next(x);
}

/* ---- download: pipelined reads (cworker-master's "pipeline" argument) ---- */

static void dl_fill(xfer_t *x);

/* Hand the oldest stored answer to read_file_done if it waits for one. */
static void dl_deliver(xfer_t *x)
{
    dl_answer_t *e = x->dl_q;
    if (!x->dl_wanting || e == NULL)
        return;
    x->dl_q = e->next;
    if (x->dl_q == NULL)
        x->dl_q_tail = NULL;
    x->dl_queued--;
    x->dl_wanting = false;
    cw_xfer_answer_t a = {.status = e->status, .nil = e->nil, .not_data = e->not_data};
    if (e->status < 0) {
        a.error = (const char *)e->data;
        a.error_len = e->len;
    } else if (e->data) {
        /* the block becomes buf (no copy) */
        uint8_t *t = x->buf;
        x->buf = e->data;
        e->data = t;
        a.data = x->buf;
        a.len = e->len;
        if (x->dl_nspare < 16) {
            x->dl_spare[x->dl_nspare++] = e->data;
            e->data = NULL;
        }
    }
    free(e->data);
    free(e);
    read_file_done(x->cmd, &a);
}

/* The answer to one pipelined read (they come in order). */
static void dl_answer(cw_cmd_t *cmd, const cw_xfer_answer_t *ans)
{
    xfer_t *x = cmd->state;
    x->dl_inflight--;
    if (x->dl_close_pending) {
        if (x->dl_inflight == 0) {
            x->dl_close_pending = false;
            cw_xfer_req_t req = {.op = CW_XFER_READ_CLOSE};
            if (!xfer_ask(x, &req, read_close_done))
                xfer_end(x, 1, NULL, NULL);
        }
        return; /* read_file_done is done with the file */
    }
    x->busy++;
    dl_answer_t *e = calloc(1, sizeof *e);
    size_t bs = block_size(x);
    bool data = ans->status == 0 && !ans->nil && !ans->not_data && ans->len > 0;
    if (e && data && ans->len <= bs && x->dl_nspare > 0)
        e->data = x->dl_spare[--x->dl_nspare];
    if (e == NULL ||
        (data && ans->len <= bs && e->data == NULL && (e->data = malloc(bs)) == NULL) ||
        (ans->status < 0 && ans->error_len && (e->data = malloc(ans->error_len)) == NULL)) {
        free(e);
        xfer_end(x, 1, "out of memory", NULL);
        xfer_leave(x);
        return;
    }
    e->status = ans->status;
    e->nil = ans->nil;
    e->not_data = ans->not_data;
    e->len = ans->status < 0 ? ans->error_len : ans->len;
    if (e->data)
        memcpy(e->data, ans->status < 0 ? (const uint8_t *)ans->error : ans->data, e->len);
    if (!data || ans->len > bs)
        x->dl_last_asked = true; /* end, failure or too much: read_file_done decides */
    if (x->dl_q_tail)
        x->dl_q_tail->next = e;
    else
        x->dl_q = e;
    x->dl_q_tail = e;
    x->dl_queued++;
    dl_deliver(x);
    if (!x->finished)
        dl_fill(x);
    xfer_leave(x);
}

/* Keep dl_window reads asked for or answered ahead of the writes. */
static void dl_fill(xfer_t *x)
{
    while (!x->finished && !x->stopping && !x->dl_last_asked && !x->dl_close_pending &&
           x->dl_inflight + x->dl_queued < (unsigned)x->dl_window) {
        cw_xfer_req_t req = {.op = CW_XFER_READ, .length = (int64_t)block_size(x)};
        if (cw_cmd_xfer(x->cmd, &req, dl_answer) < 0) {
            x->dl_last_asked = true;
            if (x->dl_inflight == 0 && x->dl_q == NULL && x->dl_wanting)
                xfer_end(x, 1, NULL, NULL);
            return;
        }
        x->dl_inflight++;
    }
}

/* read_file_done wants the next block: from the stored answers, or the
 * next to come. */
static void dl_want(xfer_t *x)
{
    x->busy++;
    x->req_busy = true;
    x->dl_wanting = true;
    dl_fill(x);
    if (!x->finished)
        dl_deliver(x);
    if (!x->finished && x->dl_wanting && x->dl_inflight == 0 && x->dl_q == NULL)
        xfer_end(x, 1, NULL, NULL); /* nothing asked, nothing to come: the link is gone */
    xfer_leave(x);
}

/* Ask the master for the next block (or one byte past maxsize, to tell a
 * file of exactly maxsize bytes from a longer one). */
static void download_request(xfer_t *x)
{
    cw_args_t *a = &x->cmd->args;
    int64_t length = (int64_t)block_size(x);
    if (a->maxsize >= 0) {
        int64_t left = a->maxsize - (int64_t)x->done_bytes;
        if (left <= 0) {
            x->probing = true;
            length = 1;
        } else if (left < length) {
            length = left;
        }
    }
    x->buflen = block_size(x);
    if (x->dl_window > 1) {
        dl_want(x);
        return;
    }
    cw_xfer_req_t req = {.op = CW_XFER_READ, .length = length};
    if (!xfer_ask(x, &req, read_file_done))
        xfer_end(x, 1, NULL, NULL);
}

/* Follow symbolic links from path (at most 40, like the kernel) to the
 * name that open(path, O_CREAT) would create or write: a heap string, or
 * NULL with errno set. */
static char *resolve_links(const char *path)
{
    char *p = strdup(path);
    for (int hops = 0; p != NULL; hops++) {
        struct stat st;
        if (lstat(p, &st) < 0 || !S_ISLNK(st.st_mode))
            return p; /* not there (created by the download), or not a link */
        if (hops == 40) {
            free(p);
            errno = ELOOP;
            return NULL;
        }
        cw_buf_t t = CW_BUF_INIT;
        ssize_t n;
        size_t cap = 256;
        for (;;) {
            if (cw_buf_reserve(&t, cap) < 0) {
                n = -1;
                errno = ENOMEM;
                break;
            }
            n = readlink(p, (char *)t.data, cap);
            if (n < 0 || (size_t)n < cap)
                break;
            cap *= 2;
        }
        if (n < 0) {
            int e = errno;
            cw_buf_free(&t);
            free(p);
            errno = e;
            return NULL;
        }
        t.len = (size_t)n;
        cw_buf_t next = CW_BUF_INIT;
        const char *slash = strrchr(p, '/');
        if (t.data[0] != '/' && slash != NULL)
            cw_buf_append(&next, p, (size_t)(slash - p) + 1);
        cw_buf_append(&next, t.data, t.len);
        int rc = cw_buf_append(&next, "", 1);
        cw_buf_free(&t);
        free(p);
        p = rc == 0 ? (char *)cw_buf_steal(&next, NULL) : NULL;
        cw_buf_free(&next);
    }
    errno = ENOMEM;
    return NULL;
}

/* A temporary file in dest's directory: a short fixed name, so that any
 * destination name the file system accepts (up to NAME_MAX) works. */
static int download_make_tmp(xfer_t *x)
{
    cw_buf_t tmp = CW_BUF_INIT;
    const char *slash = strrchr(x->dest, '/');
    if (slash)
        cw_buf_append(&tmp, x->dest, (size_t)(slash - x->dest) + 1);
    cw_buf_append_str(&tmp, ".cworker-XXXXXX");
    if (cw_buf_append(&tmp, "", 1) < 0) {
        cw_buf_free(&tmp);
        return -ENOMEM;
    }
    x->tmp_path = (char *)cw_buf_steal(&tmp, NULL);
    /* small and local: mkstemp on the loop thread is fine */
    x->fd = cw_mkstemp_cloexec(x->tmp_path);
    if (x->fd < 0) {
        int e = errno;
        free(x->tmp_path);
        x->tmp_path = NULL;
        return -e;
    }
    return 0;
}

/* Open the destination itself (DL_DIRECT): 0 or -errno. */
static int download_open_direct(xfer_t *x)
{
    x->fd = open(x->dest, O_WRONLY | O_CREAT | O_NOCTTY | O_NONBLOCK | O_CLOEXEC, 0666);
    if (x->fd < 0)
        return -errno;
    struct stat st;
    if (fstat(x->fd, &st) < 0 || !(S_ISREG(st.st_mode) || S_ISCHR(st.st_mode)) ||
        (S_ISREG(st.st_mode) && ftruncate(x->fd, 0) < 0) || fcntl(x->fd, F_SETFL, 0) < 0) {
        int e = S_ISREG(st.st_mode) || S_ISCHR(st.st_mode) ? errno : EINVAL;
        close(x->fd);
        x->fd = -1;
        return -e;
    }
    x->dest_chr = S_ISCHR(st.st_mode);
    x->dl_mode = DL_DIRECT;
    return 0;
}

static int download_start(xfer_t *x)
{
    cw_args_t *a = &x->cmd->args;
    char ebuf[128];
    x->cmd_mode = a->mode;
    /* several reads in flight only where the master offers it, and not
     * with maxsize (its last read is sized to what is left) */
    x->dl_window = a->maxsize < 0 && a->pipeline > 1 ? a->pipeline : 1;
    x->buf = malloc(block_size(x));
    if (x->buf == NULL)
        return -ENOMEM;
    /* parent directories, as the stock worker makes them */
    char *dir = strdup(a->path);
    if (dir == NULL)
        return -ENOMEM;
    char *slash = strrchr(dir, '/');
    int rc = 0;
    if (slash && slash != dir) {
        *slash = '\0';
        rc = cw_mkdirs(dir, 0777);
    }
    free(dir);
    if (rc < 0) {
        download_finish_path(x, "Cannot open file '", a->path,
                             "' for download: ", cw_errstr(-rc, ebuf, sizeof ebuf));
        return 0;
    }
    x->dest = resolve_links(a->path);
    if (x->dest == NULL) {
        download_finish_path(x, "Cannot open file '", a->path,
                             "' for download: ", cw_errstr(errno, ebuf, sizeof ebuf));
        return 0;
    }
    struct stat st;
    bool exists = lstat(x->dest, &st) == 0;
    if (!exists && errno != ENOENT) {
        download_finish_path(x, "Cannot open file '", a->path,
                             "' for download: ", cw_errstr(errno, ebuf, sizeof ebuf));
        return 0;
    }
    if (exists && S_ISCHR(st.st_mode)) {
        rc = download_open_direct(x);
    } else if (exists && !S_ISREG(st.st_mode)) {
        download_finish_path(x, "Cannot open file '", a->path,
                             "' for download: ", not_regular(st.st_mode));
        return 0;
    } else {
        /* the requested mode; else the old file's; else what open(2) gives */
        mode_t mode = a->mode >= 0 ? (mode_t)a->mode
                      : exists     ? st.st_mode & 07777
                                   : 0666 & ~(mode_t)x->cmd->cs->env.umask;
        x->dl_mode = exists && st.st_nlink > 1 ? DL_COPY_BACK : DL_RENAME;
        rc = download_make_tmp(x);
        if (rc == -EACCES || rc == -EPERM || rc == -EROFS) {
            /* a writable file in a directory we cannot add to: in place */
            rc = download_open_direct(x);
        } else if (rc == 0 && x->dl_mode == DL_RENAME) {
            /* the new file takes the old one's owner (as root; otherwise only
             * if we own it already), then its mode: fchown clears set-id bits */
            if (exists && (st.st_uid != geteuid() || st.st_gid != getegid()) &&
                fchown(x->fd, st.st_uid, st.st_gid) < 0)
                x->dl_mode = DL_COPY_BACK; /* only the old inode keeps its owner */
            if (x->dl_mode == DL_RENAME && fchmod(x->fd, mode) < 0)
                rc = -errno;
        }
    }
    if (rc < 0) {
        download_finish_path(x, "Cannot open file '", a->path,
                             "' for download: ", cw_errstr(-rc, ebuf, sizeof ebuf));
        return 0;
    }
    download_request(x);
    return 0;
}

/* ---- common ---- */

/* The transfer is over: report rc (and a message), complete.  failure is a
 * `complete` failure text (EXCEPTION on the master), normally NULL. */
static void xfer_end(xfer_t *x, int rc, const char *stderr_msg, const char *failure)
{
    if (x->finished)
        return;
    x->finished = true;
    if (x->fd >= 0) {
        close(x->fd);
        x->fd = -1;
    }
    download_unlink_tmp(x);
#if CW_HAVE_ARCHIVE
    if (x->tar)
        tar_stop(x->tar);
#endif
    if (stderr_msg)
        xfer_stderr(x, stderr_msg);
    if (x->stopping && rc == 0)
        rc = 1;
    cw_cmd_add_int(x->cmd, "rc", rc);
    cw_cmd_finish(x->cmd, failure);
}

static int xfer_start(cw_cmd_t *cmd)
{
    xfer_t *x = calloc(1, sizeof *x);
    if (x == NULL) {
        cw_cmd_add_int(cmd, "rc", 1);
        return -ENOMEM;
    }
    cmd->state = x;
    x->cmd = cmd;
    x->fd = -1;
    int rc;
    switch (cmd->kind) {
    case CW_CMD_UPLOAD_FILE:
        rc = upload_file_start(x);
        break;
#if CW_HAVE_ARCHIVE
    case CW_CMD_UPLOAD_DIRECTORY:
        rc = upload_dir_start(x);
        break;
#endif
    case CW_CMD_DOWNLOAD_FILE:
        rc = download_start(x);
        break;
    default:
        rc = -EINVAL;
        break;
    }
    if (rc < 0 && !x->finished)
        xfer_end(x, 1, rc == -ENOMEM ? "out of memory" : uv_strerror(rc), NULL);
    return 0;
}

static void xfer_interrupt(cw_cmd_t *cmd, const char *why)
{
    xfer_t *x = cmd->state;
    if (x == NULL || x->finished)
        return;
    x->stopping = true;
#if CW_HAVE_ARCHIVE
    if (x->tar)
        atomic_store(&x->tar->stop, true);
#endif
    /* with nothing in flight, end now; otherwise the pending callback does
     * (a copy back, once started, is finished: the data is complete) */
    if (!x->fs_busy && !x->req_busy && !x->work_busy) {
        if (cmd->kind == CW_CMD_DOWNLOAD_FILE && cmd->session != NULL)
            download_finish(x, 1, NULL);
        else
            xfer_end(x, 1, NULL, NULL);
    }
}

/* Free the transfer; cmd NULL when the command was already released. */
static void xfer_free(xfer_t *x, cw_cmd_t *cmd)
{
    if (cmd)
        cw_cmd_count_transfer(cmd, x->done_bytes);
    if (x->fd >= 0)
        close(x->fd);
    if (x->tmp_path)
        unlink(x->tmp_path);
    while (x->dl_nspare > 0)
        free(x->dl_spare[--x->dl_nspare]);
    while (x->dl_q) {
        dl_answer_t *e = x->dl_q;
        x->dl_q = e->next;
        free(e->data);
        free(e);
    }
    free(x->buf);
    free(x->tmp_path);
    free(x->dest);
    free(x);
    if (cmd) {
        cmd->state = NULL;
        cw_cmd_destroyed(cmd);
    }
}

#if CW_HAVE_ARCHIVE
static void tar_async_closed(uv_handle_t *h)
{
    xfer_t *x = h->data;
    tar_producer_t *t = x->tar;
    for (int i = 0; i < TAR_QUEUE; i++)
        cw_buf_free(&t->q[i]);
    cw_buf_free(&t->cur);
    uv_mutex_destroy(&t->mu);
    uv_cond_destroy(&t->cond);
    free(t->root);
    free(t);
    x->tar = NULL;
    xfer_free(x, x->cmd);
}
#endif

static void xfer_destroy(cw_cmd_t *cmd)
{
    xfer_t *x = cmd->state;
    if (x == NULL) {
        cw_cmd_destroyed(cmd);
        return;
    }
    if (x->fs_busy || x->work_busy || x->busy) {
        /* an fs request (or a call further up the stack) still uses x:
         * the command goes now, x when the request ends (fs_cb_enter,
         * copy_back_done) or the call returns (xfer_leave) */
        if (x->fs_busy || x->work_busy)
            uv_cancel(x->fs_busy ? (uv_req_t *)&x->fs : (uv_req_t *)&x->work);
        x->zombie = true;
        cmd->state = NULL;
#if CW_HAVE_ARCHIVE
        if (x->tar)
            tar_stop(x->tar);
#endif
        cw_cmd_destroyed(cmd);
        return;
    }
#if CW_HAVE_ARCHIVE
    if (x->tar) {
        tar_stop(x->tar);
        if (x->tar->async_init) {
            uv_close((uv_handle_t *)&x->tar->async, tar_async_closed);
            return;
        }
    }
#endif
    xfer_free(x, cmd);
}

const cw_cmd_impl_t cw_cmd_upload_impl = {
    .start = xfer_start,
    .interrupt = xfer_interrupt,
    .resume = NULL,
    .destroy = xfer_destroy,
};

const cw_cmd_impl_t cw_cmd_download_impl = {
    .start = xfer_start,
    .interrupt = xfer_interrupt,
    .resume = NULL,
    .destroy = xfer_destroy,
};
