/* Transfers, driven by the worker one request at a time (reference §7.3):
 *   upload_file       file -> update_upload_file_write* -> close [-> utime]
 *   upload_directory  tar stream (built while sent) -> ..._directory_write*
 *                     -> update_upload_directory_unpack
 *   download_file     update_read_file* -> update_read_file_close
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
#include <unistd.h>

#include "cmd.h"
#include "cw_config.h"
#include "fsutil.h"
#include "log.h"

#if CW_HAVE_ARCHIVE
#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
#include <langinfo.h>
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
    bool eof;    /* the stream is complete (after the last chunk) */
    int err;     /* <0: the thread failed; errmsg says why */
    char errmsg[600];
    atomic_bool stop;
    /* thread-side */
    cw_buf_t cur;
    size_t blocksize;
    char *root;
    cw_compress_t compress;
    bool utf8_names; /* the locale is UTF-8: libarchive can convert names */
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
    bool stopping;       /* interrupted or lost: wind down */
    bool finished;
    int rc;
    double atime, mtime; /* keepstamp */
    char *tmp_path;      /* download: temporary file */
    uint64_t file_off;
    bool probing;        /* download: asked 1 byte past maxsize */
    bool zombie;         /* destroyed while an fs request was in flight */
#if CW_HAVE_ARCHIVE
    tar_producer_t *tar;
#endif
};

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

/* Add a stderr line (for error messages). */
static void xfer_stderr(xfer_t *x, const char *msg)
{
    cw_outbuf_t *ob = &x->cmd->out;
    cw_buf_t line = CW_BUF_INIT;
    cw_utf8_repair((const uint8_t *)msg, strlen(msg), &line);
    if (line.len == 0 || line.data[line.len - 1] != '\n')
        cw_buf_append(&line, "\n", 1);
    cw_outbuf_add_lines(ob, CW_STREAM_STDERR, NULL, (const char *)line.data, line.len, cw_now());
    cw_buf_free(&line);
    cw_cmd_output_added(x->cmd);
}

/* Text of an exception response (for messages). */
static void resp_text(const cw_msg_t *resp, char *out, size_t n)
{
    cw_str_t s;
    if (cw_obj_str(&resp->u.response.result, &s))
        snprintf(out, n, "%.*s", (int)(s.len > 400 ? 400 : s.len), s.ptr);
    else
        snprintf(out, n, "(no message)");
}

/* ---- upload_file ---- */

static void upload_read_next(xfer_t *x);

static void utime_done(cw_conn_t *c, void *ctx, const cw_msg_t *resp)
{
    xfer_t *x = ((cw_cmd_t *)ctx)->state;
    x->req_busy = false;
    if (resp == NULL) {
        xfer_end(x, 1, NULL, NULL);
        return;
    }
    if (resp->u.response.is_exception) {
        /* Buildbot <= 4.3 cannot set times over msgpack (reference §8.2). The
         * file is there; the master's answer decides the step (EXCEPTION),
         * as with the stock worker, but the log says what happened. */
        char t[450], failure[600];
        resp_text(resp, t, sizeof t);
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

static void upload_close_done(cw_conn_t *c, void *ctx, const cw_msg_t *resp)
{
    xfer_t *x = ((cw_cmd_t *)ctx)->state;
    x->req_busy = false;
    if (resp == NULL) {
        xfer_end(x, 1, NULL, NULL);
        return;
    }
    if (resp->u.response.is_exception) {
        char t[450], msg[600];
        resp_text(resp, t, sizeof t);
        snprintf(msg, sizeof msg, "the master could not store the upload: %s", t);
        xfer_end(x, 1, msg, NULL);
        return;
    }
    cw_args_t *a = &x->cmd->args;
    if (a->keepstamp && x->rc == 0 && !x->stopping) {
        cw_buf_t b = CW_BUF_INIT;
        msgpack_packer pk;
        cw_pack_init(&pk, &b);
        cw_conn_t *conn = cw_cmd_conn(x->cmd);
        if (conn == NULL) {
            cw_buf_free(&b);
            xfer_end(x, 1, NULL, NULL);
            return;
        }
        int64_t seq = cw_conn_next_seq(conn);
        cw_pack_utime(&pk, seq, x->cmd->idstr, x->atime, x->mtime);
        x->req_busy = true;
        if (cw_cmd_request(x->cmd, seq, &b, utime_done) < 0) {
            x->req_busy = false;
            xfer_end(x, 1, NULL, NULL);
        }
        return;
    }
    xfer_end(x, x->rc, NULL, NULL);
}

/* Tell the master the file is complete (only when it really is). */
static void upload_send_close(xfer_t *x, cw_op_t op)
{
    cw_conn_t *conn = cw_cmd_conn(x->cmd);
    if (conn == NULL) {
        xfer_end(x, 1, NULL, NULL);
        return;
    }
    cw_buf_t b = CW_BUF_INIT;
    msgpack_packer pk;
    cw_pack_init(&pk, &b);
    int64_t seq = cw_conn_next_seq(conn);
    cw_pack_cmd_simple(&pk, seq, op, x->cmd->idstr);
    x->req_busy = true;
    if (cw_cmd_request(x->cmd, seq, &b, upload_close_done) < 0) {
        x->req_busy = false;
        xfer_end(x, 1, NULL, NULL);
    }
}

static void upload_write_done(cw_conn_t *c, void *ctx, const cw_msg_t *resp)
{
    xfer_t *x = ((cw_cmd_t *)ctx)->state;
    x->req_busy = false;
    if (resp == NULL) {
        xfer_end(x, 1, NULL, NULL);
        return;
    }
    if (resp->u.response.is_exception) {
        char t[450], msg[600];
        resp_text(resp, t, sizeof t);
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
    if (x->rc != 0) {
        /* maxsize reached: the truncated file is still delivered, as the
         * stock worker does, and the step fails */
        upload_send_close(x, CW_OP_UPLOAD_FILE_CLOSE);
        return;
    }
    upload_read_next(x);
}

/* Send one chunk (copied into the message). */
static int upload_send_chunk(xfer_t *x, cw_op_t op, const uint8_t *data, size_t len)
{
    cw_conn_t *conn = cw_cmd_conn(x->cmd);
    if (conn == NULL)
        return CW_ECLOSED;
    cw_buf_t b = CW_BUF_INIT;
    if (cw_buf_reserve(&b, len + 96) < 0)
        return -ENOMEM;
    msgpack_packer pk;
    cw_pack_init(&pk, &b);
    int64_t seq = cw_conn_next_seq(conn);
    if (cw_pack_write(&pk, seq, op, x->cmd->idstr, data, len) < 0) {
        cw_buf_free(&b);
        return -ENOMEM;
    }
    x->req_busy = true;
    x->done_bytes += len;
    int rc = cw_cmd_request(x->cmd, seq, &b, upload_write_done);
    if (rc < 0)
        x->req_busy = false;
    return rc;
}

static void upload_read_cb(uv_fs_t *req)
{
    xfer_t *x = req->data;
    ssize_t n = req->result;
    if (!fs_cb_enter(x, req))
        return;
    if (x->stopping) {
        xfer_end(x, 1, NULL, NULL);
        return;
    }
    cw_args_t *a = &x->cmd->args;
    if (n < 0) {
        char msg[600];
        snprintf(msg, sizeof msg, "Cannot read file '%s' for upload: %s", a->path,
                 uv_strerror((int)n));
        xfer_end(x, 1, msg, NULL);
        return;
    }
    if (n == 0) {
        upload_send_close(x, CW_OP_UPLOAD_FILE_CLOSE);
        return;
    }
    size_t len = (size_t)n;
    x->file_off += len;
    if (a->maxsize >= 0 && x->done_bytes + len > (uint64_t)a->maxsize) {
        /* more than maxsize: send what fits, then fail (a file of exactly
         * maxsize bytes is not affected: its EOF read returns 0) */
        len = (size_t)((uint64_t)a->maxsize - x->done_bytes);
        x->rc = 1;
        char msg[600];
        snprintf(msg, sizeof msg, "Maximum filesize reached, truncating file '%s'", a->path);
        xfer_stderr(x, msg);
        if (len == 0) {
            upload_send_close(x, CW_OP_UPLOAD_FILE_CLOSE);
            return;
        }
    }
    int rc = upload_send_chunk(x, CW_OP_UPLOAD_FILE_WRITE, x->buf, len);
    if (rc < 0)
        xfer_end(x, 1, rc == -ENOMEM ? "out of memory" : NULL, NULL);
}

static void upload_read_next(xfer_t *x)
{
    x->fs.data = x;
    x->fs_busy = true;
    uv_buf_t b = uv_buf_init((char *)x->buf, (unsigned)x->buflen);
    int rc = uv_fs_read(x->cmd->w->loop, &x->fs, x->fd, &b, 1, (int64_t)x->file_off,
                        upload_read_cb);
    if (rc < 0) {
        x->fs_busy = false;
        xfer_end(x, 1, "cannot read the file", NULL);
    }
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
        char msg[600];
        snprintf(msg, sizeof msg, "Cannot open file '%s' for upload: %s", a->path,
                 uv_strerror((int)r));
        xfer_end(x, 1, msg, NULL);
        return;
    }
    x->fd = (uv_file)r;
    struct stat st;
    if (fstat(x->fd, &st) == 0) {
        if (S_ISDIR(st.st_mode)) {
            char msg[600];
            snprintf(msg, sizeof msg, "Cannot open file '%s' for upload: Is a directory",
                     a->path);
            xfer_end(x, 1, msg, NULL);
            return;
        }
        x->atime = (double)CW_ST_ATIM(&st).tv_sec + (double)CW_ST_ATIM(&st).tv_nsec / 1e9;
        x->mtime = (double)CW_ST_MTIM(&st).tv_sec + (double)CW_ST_MTIM(&st).tv_nsec / 1e9;
    }
    cw_cmd_header(x->cmd, "sending %s", a->path);
    upload_read_next(x);
}

static int upload_file_start(xfer_t *x)
{
    cw_args_t *a = &x->cmd->args;
    x->buflen = (size_t)a->blocksize;
    x->buf = malloc(x->buflen);
    if (x->buf == NULL)
        return -ENOMEM;
    x->fs.data = x;
    x->fs_busy = true;
    int rc = uv_fs_open(x->cmd->w->loop, &x->fs, a->path, O_RDONLY | O_CLOEXEC, 0,
                        upload_open_cb);
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
            tar_fail(t, "cannot read link '%s': %s", rel, strerror(errno));
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
        fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
        if (fd < 0) {
            tar_fail(t, "cannot open '%s' for the upload: %s", rel, strerror(errno));
            return -1;
        }
    }
    /* ARCHIVE_WARN (e.g. a name stored as binary) still wrote the entry */
    if (archive_write_header(ar, e) < ARCHIVE_WARN) {
        tar_fail(t, "tar: %s%s", archive_error_string(ar) ? archive_error_string(ar) : "error",
                 "");
        if (fd >= 0)
            close(fd);
        return -1;
    }
    if (fd >= 0) {
        static _Thread_local uint8_t buf[65536];
        int64_t left = st->st_size;
        while (left > 0) {
            ssize_t n = read(fd, buf, sizeof buf);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0) {
                /* the file shrank while we read it: the header promised more */
                tar_fail(t, "'%s' changed while it was being uploaded%s", rel,
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

/* Thread side: add everything below directory fd (prefix = its relative
 * name, "" for the root).  Depth-first, a directory before its content. */
static int tar_walk(tar_producer_t *t, struct archive *ar, struct archive_entry *e, int fd,
                    const char *prefix, int depth)
{
    if (depth > 256) {
        tar_fail(t, "directory tree too deep at '%s'%s", prefix, "");
        close(fd);
        return -1;
    }
    DIR *d = fdopendir(fd);
    if (d == NULL) {
        tar_fail(t, "cannot read directory '%s': %s", prefix, strerror(errno));
        close(fd);
        return -1;
    }
    struct dirent *de;
    int rc = 0;
    cw_buf_t rel = CW_BUF_INIT;
    while (rc == 0 && (de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        struct stat st;
        if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
            continue; /* vanished */
        if (S_ISSOCK(st.st_mode))
            continue; /* tar cannot hold sockets; Python's tarfile skips them too */
        cw_buf_reset(&rel);
        if (prefix[0])
            cw_buf_printf(&rel, "%s/%s", prefix, de->d_name);
        else
            cw_buf_append_str(&rel, de->d_name);
        cw_buf_append(&rel, "", 1);
        const char *r = (const char *)rel.data;
        rc = tar_add(t, ar, e, dirfd(d), de->d_name, r, &st);
        if (rc == 0 && S_ISDIR(st.st_mode)) {
            int sub = openat(dirfd(d), de->d_name,
                             O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            if (sub < 0) {
                tar_fail(t, "cannot read directory '%s': %s", r, strerror(errno));
                rc = -1;
            } else {
                char *copy = strdup(r);
                rc = copy ? tar_walk(t, ar, e, sub, copy, depth + 1) : -1;
                free(copy);
            }
        }
    }
    cw_buf_free(&rel);
    closedir(d);
    return rc;
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
    if (rc == 0) {
        int fd = open(t->root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0) {
            tar_fail(t, "Cannot read directory '%s' for upload: %s", t->root, strerror(errno));
            rc = -1;
        } else {
            rc = tar_walk(t, ar, e, fd, "", 0);
        }
    }
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

/* Loop side: send the next ready chunk, or finish. */
static void tar_async_cb(uv_async_t *h)
{
    xfer_t *x = h->data;
    tar_producer_t *t = x->tar;
    if (x->req_busy || x->finished)
        return;
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
    cw_args_t *a = &x->cmd->args;
    if (have) {
        size_t len = chunk.len;
        if (a->maxsize >= 0 && x->done_bytes + len > (uint64_t)a->maxsize) {
            char msg[600];
            snprintf(msg, sizeof msg, "Maximum filesize reached, truncating file '%s'",
                     a->path);
            cw_buf_free(&chunk);
            /* a cut tar stream cannot be unpacked: do not ask for it */
            xfer_end(x, 1, msg, NULL);
            return;
        }
        int rc = upload_send_chunk(x, CW_OP_UPLOAD_DIRECTORY_WRITE, chunk.data, len);
        cw_buf_free(&chunk);
        if (rc < 0)
            xfer_end(x, 1, rc == -ENOMEM ? "out of memory" : NULL, NULL);
        return;
    }
    if (err) {
        xfer_end(x, 1, t->errmsg[0] ? t->errmsg : "the tar stream failed", NULL);
        return;
    }
    if (eof)
        upload_send_close(x, CW_OP_UPLOAD_DIRECTORY_UNPACK);
}

static int upload_dir_start(xfer_t *x)
{
    cw_args_t *a = &x->cmd->args;
    struct stat st;
    if (stat(a->path, &st) < 0 || !S_ISDIR(st.st_mode)) {
        char msg[600];
        snprintf(msg, sizeof msg, "Cannot read directory '%s' for upload: %s", a->path,
                 stat(a->path, &st) < 0 ? strerror(errno) : "Not a directory");
        xfer_end(x, 1, msg, NULL);
        return 0;
    }
    tar_producer_t *t = calloc(1, sizeof *t);
    if (t == NULL)
        return -ENOMEM;
    x->tar = t;
    t->blocksize = (size_t)a->blocksize;
    t->compress = a->compress;
    t->root = strdup(a->path);
    atomic_init(&t->stop, false);
    uv_mutex_init(&t->mu);
    uv_cond_init(&t->cond);
    uv_async_init(x->cmd->w->loop, &t->async, tar_async_cb);
    t->async.data = x;
    t->async_init = true;
    cw_cmd_header(x->cmd, "sending %s", a->path);
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

/* ---- download_file ---- */

static void download_request(xfer_t *x);

static void download_unlink_tmp(xfer_t *x)
{
    if (x->tmp_path) {
        unlink(x->tmp_path);
        free(x->tmp_path);
        x->tmp_path = NULL;
    }
}

static void read_close_done(cw_conn_t *c, void *ctx, const cw_msg_t *resp)
{
    xfer_t *x = ((cw_cmd_t *)ctx)->state;
    x->req_busy = false;
    cw_args_t *a = &x->cmd->args;
    if (x->rc == 0 && !x->stopping) {
        if (x->fd >= 0) {
            close(x->fd);
            x->fd = -1;
        }
        if (rename(x->tmp_path, a->path) < 0) {
            char msg[600];
            snprintf(msg, sizeof msg, "Cannot open file '%s' for download: %s", a->path,
                     strerror(errno));
            download_unlink_tmp(x);
            xfer_end(x, 1, msg, NULL);
            return;
        }
        free(x->tmp_path);
        x->tmp_path = NULL;
    }
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
    cw_conn_t *conn = cw_cmd_conn(x->cmd);
    if (conn == NULL) {
        xfer_end(x, 1, NULL, NULL);
        return;
    }
    cw_buf_t b = CW_BUF_INIT;
    msgpack_packer pk;
    cw_pack_init(&pk, &b);
    int64_t seq = cw_conn_next_seq(conn);
    cw_pack_cmd_simple(&pk, seq, CW_OP_READ_FILE_CLOSE, x->cmd->idstr);
    x->req_busy = true;
    if (cw_cmd_request(x->cmd, seq, &b, read_close_done) < 0) {
        x->req_busy = false;
        xfer_end(x, 1, NULL, NULL);
    }
}

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
    if (n < 0 || (size_t)n != x->buflen) {
        char msg[600];
        snprintf(msg, sizeof msg, "cannot write '%s': %s", x->cmd->args.path,
                 n < 0 ? uv_strerror((int)n) : "short write");
        download_finish(x, 1, msg);
        return;
    }
    x->file_off += (uint64_t)n;
    download_request(x);
}

static void read_file_done(cw_conn_t *c, void *ctx, const cw_msg_t *resp)
{
    xfer_t *x = ((cw_cmd_t *)ctx)->state;
    x->req_busy = false;
    cw_args_t *a = &x->cmd->args;
    if (resp == NULL) {
        xfer_end(x, 1, NULL, NULL);
        return;
    }
    if (x->stopping) {
        download_finish(x, 1, NULL);
        return;
    }
    if (resp->u.response.is_exception) {
        char t[450], msg[600];
        resp_text(resp, t, sizeof t);
        snprintf(msg, sizeof msg, "the master failed to read the file: %s", t);
        download_finish(x, 1, msg);
        return;
    }
    const msgpack_object *r = &resp->u.response.result;
    const uint8_t *data = NULL;
    size_t len = 0;
    if (r->type == MSGPACK_OBJECT_NIL) {
        if (x->done_bytes == 0 && !x->probing) {
            download_finish(
                x, 1,
                "download failed: the master answered update_read_file with nil instead of the "
                "file's data. This is a bug of Buildbot masters (3.7 up to at least 4.3) with the "
                "msgpack protocol: the stock worker would silently write an empty file. Nothing "
                "was written; use a master with the fix, or transfer the file another way.");
            return;
        }
        len = 0; /* after data, treat nil as end of file */
    } else if (r->type == MSGPACK_OBJECT_BIN) {
        data = (const uint8_t *)r->via.bin.ptr;
        len = r->via.bin.size;
    } else if (r->type == MSGPACK_OBJECT_STR) {
        data = (const uint8_t *)r->via.str.ptr;
        len = r->via.str.size;
    } else {
        download_finish(x, 1, "download failed: the master answered update_read_file with "
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
        char msg[600];
        snprintf(msg, sizeof msg, "Maximum filesize reached, truncating file '%s'", a->path);
        download_finish(x, 1, msg);
        return;
    }
    memcpy(x->buf, data, len);
    x->buflen = len;
    x->done_bytes += len;
    x->fs.data = x;
    x->fs_busy = true;
    uv_buf_t b = uv_buf_init((char *)x->buf, (unsigned)len);
    if (uv_fs_write(x->cmd->w->loop, &x->fs, x->fd, &b, 1, (int64_t)x->file_off,
                    download_write_cb) < 0) {
        x->fs_busy = false;
        download_finish(x, 1, "cannot write the file");
    }
}

/* Ask the master for the next block (or one byte past maxsize, to tell a
 * file of exactly maxsize bytes from a longer one). */
static void download_request(xfer_t *x)
{
    cw_args_t *a = &x->cmd->args;
    int64_t length = a->blocksize;
    if (a->maxsize >= 0) {
        int64_t left = a->maxsize - (int64_t)x->done_bytes;
        if (left <= 0) {
            x->probing = true;
            length = 1;
        } else if (left < length) {
            length = left;
        }
    }
    cw_conn_t *conn = cw_cmd_conn(x->cmd);
    if (conn == NULL) {
        xfer_end(x, 1, NULL, NULL);
        return;
    }
    x->buflen = (size_t)a->blocksize;
    cw_buf_t b = CW_BUF_INIT;
    msgpack_packer pk;
    cw_pack_init(&pk, &b);
    int64_t seq = cw_conn_next_seq(conn);
    cw_pack_read_file(&pk, seq, x->cmd->idstr, length);
    x->req_busy = true;
    if (cw_cmd_request(x->cmd, seq, &b, read_file_done) < 0) {
        x->req_busy = false;
        xfer_end(x, 1, NULL, NULL);
    }
}

static int download_start(xfer_t *x)
{
    cw_args_t *a = &x->cmd->args;
    x->buf = malloc((size_t)a->blocksize);
    if (x->buf == NULL)
        return -ENOMEM;
    /* parent directories, then a temporary file beside the destination */
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
    char msg[700];
    if (rc < 0) {
        snprintf(msg, sizeof msg, "Cannot open file '%s' for download: %s", a->path,
                 strerror(-rc));
        download_finish(x, 1, msg);
        return 0;
    }
    cw_buf_t tmp = CW_BUF_INIT;
    cw_buf_printf(&tmp, "%s.cworker-XXXXXX", a->path);
    cw_buf_append(&tmp, "", 1);
    x->tmp_path = (char *)cw_buf_steal(&tmp, NULL);
    /* small and local: mkstemp on the loop thread is fine */
    x->fd = cw_mkstemp_cloexec(x->tmp_path);
    if (x->fd < 0) {
        snprintf(msg, sizeof msg, "Cannot open file '%s' for download: %s", a->path,
                 strerror(errno));
        free(x->tmp_path);
        x->tmp_path = NULL;
        download_finish(x, 1, msg);
        return 0;
    }
    /* the requested mode, or what open(2) would give under our umask */
    fchmod(x->fd, a->mode >= 0 ? (mode_t)a->mode : 0666 & ~x->cmd->w->cfg->umask);
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
    /* with nothing in flight, end now; otherwise the pending callback does */
    if (!x->fs_busy && !x->req_busy) {
        if (cmd->kind == CW_CMD_DOWNLOAD_FILE && !cmd->detached)
            download_finish(x, 1, NULL);
        else
            xfer_end(x, 1, NULL, NULL);
    }
}

/* Free the transfer; cmd NULL when the command was already released. */
static void xfer_free(xfer_t *x, cw_cmd_t *cmd)
{
    if (cmd)
        cmd->w->bytes_transfer += x->done_bytes;
    if (x->fd >= 0)
        close(x->fd);
    if (x->tmp_path)
        unlink(x->tmp_path);
    free(x->buf);
    free(x->tmp_path);
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
    if (x->fs_busy) {
        /* an fs request still references x: the command goes now, x when
         * the request ends (fs_cb_enter) */
        uv_cancel((uv_req_t *)&x->fs);
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
