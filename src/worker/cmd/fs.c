/* File-system commands: mkdir, rmdir, listdir, stat, rmfile, glob, cpdir.
 *
 * Each runs natively (no rm/cp/chmod subprocess) in libuv's thread pool so a
 * large tree never blocks the loop; the thread fills an fs_job_t and the
 * loop thread turns it into updates.  Errors follow the stock worker: a
 * header "<cmd>: <strerror>: <path>" and rc = errno.
 */
#include <dirent.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cworker/utf8.h"
#include "cmd.h"
#include "fsutil.h"
#include "log.h"

typedef struct fs_job {
    uv_work_t req;
    cw_cmd_t *cmd;
    atomic_bool stop;
    bool running;
    /* results, written by the thread */
    int rc;
    cw_buf_t header; /* header text (lines) */
    cw_buf_t stderr_text;
    cw_buf_t stdout_text;  /* cpdir: the cp -v style log */
    const char *value_key; /* "files" or "stat", or NULL */
    cw_strlist_t files;    /* "files" (listdir, glob) */
    cw_num_t stat[10];     /* "stat" */
} fs_job_t;

/* Stock error report: "<cmd>: <strerror>: <path>" and rc = errno (1 for a
 * code of ours, such as the depth limit).  rc is negative. */
static void job_error(fs_job_t *job, const char *what, int rc, const char *path)
{
    char ebuf[128];
    cw_buf_printf(&job->header, "%s: %s: ", what, cw_fs_strerror(rc, ebuf, sizeof ebuf));
    cw_buf_append_elided(&job->header, path, 1024);
    cw_buf_append_str(&job->header, "\n");
    job->rc = rc > CW_ERR_BASE ? -rc : 1;
}

static void do_mkdir(fs_job_t *job)
{
    cw_args_t *a = &job->cmd->args;
    for (size_t i = 0; i < a->npaths; i++) {
        int rc = cw_mkdirs(a->paths[i], 0777);
        if (rc < 0) {
            job_error(job, "mkdir", rc, a->paths[i]);
            return;
        }
    }
    job->rc = 0;
}

static void do_rmdir(fs_job_t *job)
{
    cw_args_t *a = &job->cmd->args;
    job->rc = 0;
    /* like the stock worker: try every path, report the last failure */
    for (size_t i = 0; i < a->npaths; i++) {
        /* rm -rf's refusals (., .., /) and ours (the basedir and above it),
         * before anything of that path is touched */
        cw_buf_t why = CW_BUF_INIT;
        int rc = cw_rm_refusal(a->paths[i], job->cmd->cs->env.basedir, &why);
        if (rc < 0) {
            cw_buf_append_str(&job->stderr_text, "rmdir: ");
            cw_buf_append(&job->stderr_text, why.data, why.len);
            cw_buf_free(&why);
            job->rc = 1; /* rm's exit status */
            continue;
        }
        cw_buf_free(&why);
        rc = cw_rmtree(a->paths[i], job->cmd->cs->env.fs_max_depth, &job->stop, &job->stderr_text);
        if (rc == -EINTR || atomic_load(&job->stop)) {
            job->rc = -1;
            return;
        }
        if (rc < 0)
            job_error(job, "rmdir", rc, a->paths[i]);
    }
}

static void do_listdir(fs_job_t *job)
{
    const char *path = job->cmd->args.path;
    DIR *d = opendir(path);
    if (d == NULL) {
        job_error(job, "listdir", -errno, path);
        return;
    }
    struct dirent *de;
    int rc = 0;
    while (rc == 0 && (de = readdir(d)) != NULL)
        if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0)
            rc = cw_strlist_add(&job->files, de->d_name);
    closedir(d);
    if (rc < 0) {
        job_error(job, "listdir", rc, path);
        return;
    }
    job->value_key = "files";
    job->rc = 0;
}

static void do_stat(fs_job_t *job)
{
    const char *path = job->cmd->args.path;
    struct stat st;
    if (stat(path, &st) < 0) {
        job_error(job, "stat", -errno, path);
        return;
    }
    /* os.stat()'s tuple: mode, ino, dev, nlink, uid, gid, size, atime, mtime, ctime */
    cw_num_t *v = job->stat;
    v[0] = (cw_num_t){.i = (int64_t)st.st_mode};
    v[1] = (cw_num_t){.is_unsigned = true, .u = (uint64_t)st.st_ino};
    v[2] = (cw_num_t){.is_unsigned = true, .u = (uint64_t)st.st_dev};
    v[3] = (cw_num_t){.is_unsigned = true, .u = (uint64_t)st.st_nlink};
    v[4] = (cw_num_t){.i = (int64_t)st.st_uid};
    v[5] = (cw_num_t){.i = (int64_t)st.st_gid};
    v[6] = (cw_num_t){.i = (int64_t)st.st_size};
    v[7] = (cw_num_t){.i = (int64_t)st.st_atime};
    v[8] = (cw_num_t){.i = (int64_t)st.st_mtime};
    v[9] = (cw_num_t){.i = (int64_t)st.st_ctime};
    job->value_key = "stat";
    job->rc = 0;
}

static void do_rmfile(fs_job_t *job)
{
    const char *path = job->cmd->args.path;
    if (unlink(path) < 0) {
        job_error(job, "rmfile", -errno, path);
        return;
    }
    job->rc = 0;
}

static void do_glob(fs_job_t *job)
{
    int rc = cw_glob(job->cmd->args.path, job->cmd->cs->env.fs_max_depth, &job->stop, &job->files,
                     &job->stderr_text);
    if (rc < 0) {
        job_error(job, "glob", rc, job->cmd->args.path);
        cw_strlist_free(&job->files);
        return;
    }
    job->value_key = "files";
    job->rc = 0;
}

static void do_cpdir(fs_job_t *job)
{
    cw_args_t *a = &job->cmd->args;
    /* like the stock worker: make the destination's parent first */
    char *parent = strdup(a->to_path);
    if (parent == NULL) {
        job->rc = ENOMEM;
        return;
    }
    char *slash = strrchr(parent, '/');
    if (slash && slash != parent) {
        *slash = '\0';
        int rc = cw_mkdirs(parent, 0777);
        if (rc < 0) {
            job_error(job, "cpdir", rc, parent);
            free(parent);
            return;
        }
    }
    free(parent);
    int rc = cw_copytree(a->from_path, a->to_path, job->cmd->cs->env.fs_max_depth, &job->stop,
                         &job->stdout_text, &job->stderr_text);
    /* cp's exit status: 0, or 1 when anything failed; -1 when interrupted,
     * as for an interrupted shell command */
    if (rc == -EINTR || atomic_load(&job->stop)) {
        cw_buf_append_str(&job->header, "cpdir: interrupted; the copy is incomplete\n");
        job->rc = -1;
        return;
    }
    job->rc = rc == 0 ? 0 : 1;
}

static void fs_work(uv_work_t *req)
{
    fs_job_t *job = req->data;
    switch (job->cmd->kind) {
    case CW_CMD_MKDIR:
        do_mkdir(job);
        break;
    case CW_CMD_RMDIR:
        do_rmdir(job);
        break;
    case CW_CMD_LISTDIR:
        do_listdir(job);
        break;
    case CW_CMD_STAT:
        do_stat(job);
        break;
    case CW_CMD_RMFILE:
        do_rmfile(job);
        break;
    case CW_CMD_GLOB:
        do_glob(job);
        break;
    case CW_CMD_CPDIR:
        do_cpdir(job);
        break;
    default:
        cw_buf_printf(&job->header, "%s: not implemented in this cworker\n",
                      cw_cmd_names(job->cmd->kind)[0]);
        job->rc = -1;
        break;
    }
}

/* Text the thread collected, as lines of a stream (valid UTF-8). */
static void add_text(cw_cmd_t *cmd, cw_stream_t stream, const cw_buf_t *text, double now)
{
    if (text->len == 0)
        return;
    cw_buf_t fixed = CW_BUF_INIT;
    if (cw_utf8_repair(text->data, text->len, &fixed) == 0 &&
        (fixed.len == 0 || fixed.data[fixed.len - 1] == '\n' ||
         cw_buf_append(&fixed, "\n", 1) == 0))
        cw_outbuf_add_lines(&cmd->out, stream, NULL, (const char *)fixed.data, fixed.len, now);
    cw_buf_free(&fixed);
}

/* Back on the loop thread: report the results. */
static void fs_after(uv_work_t *req, int status)
{
    fs_job_t *job = req->data;
    cw_cmd_t *cmd = job->cmd;
    job->running = false;
    if (status == UV_ECANCELED) {
        job->rc = -1;
    }
    double now = cw_cmd_now(cmd);
    /* Most steps that run these commands keep no log of them (RemoveDirectory,
     * CopyDirectory, the glob of MultipleFileUpload): why one failed goes to
     * the worker's log too, its first line. */
    const cw_buf_t *why = job->stderr_text.len ? &job->stderr_text : &job->header;
    if (job->rc != 0 && why->len) {
        const uint8_t *nl = memchr(why->data, '\n', why->len);
        size_t n = nl ? (size_t)(nl - why->data) : why->len;
        cw_warn("command %s: %.*s", cmd->id, (int)n, (const char *)why->data);
    }
    add_text(cmd, CW_STREAM_STDOUT, &job->stdout_text, now);
    add_text(cmd, CW_STREAM_STDERR, &job->stderr_text, now);
    add_text(cmd, CW_STREAM_HEADER, &job->header, now);
    if (job->value_key && strcmp(job->value_key, "files") == 0)
        cw_cmd_add_strlist(cmd, "files", (const char *const *)job->files.v, job->files.n);
    else if (job->value_key)
        cw_cmd_add_numlist(cmd, job->value_key, job->stat, 10);
    cw_cmd_add_int(cmd, "rc", job->rc);
    cw_cmd_finish(cmd, NULL);
}

static int fs_start(cw_cmd_t *cmd)
{
    fs_job_t *job = calloc(1, sizeof *job);
    if (job == NULL) {
        cw_cmd_add_int(cmd, "rc", -1);
        return -ENOMEM;
    }
    cmd->state = job;
    job->cmd = cmd;
    atomic_init(&job->stop, false);
    job->req.data = job;
    int rc = uv_queue_work(cw_cmd_loop(cmd), &job->req, fs_work, fs_after);
    if (rc < 0) {
        cw_cmd_header(cmd, "cannot start: %s", uv_strerror(rc));
        cw_cmd_add_int(cmd, "rc", -1);
        return rc;
    }
    job->running = true;
    return 0;
}

static void fs_interrupt(cw_cmd_t *cmd, const char *why)
{
    fs_job_t *job = cmd->state;
    if (job)
        atomic_store(&job->stop, true);
}

static void fs_destroy(cw_cmd_t *cmd)
{
    fs_job_t *job = cmd->state;
    if (job) {
        cw_buf_free(&job->header);
        cw_buf_free(&job->stderr_text);
        cw_buf_free(&job->stdout_text);
        cw_strlist_free(&job->files);
        free(job);
        cmd->state = NULL;
    }
    cw_cmd_destroyed(cmd);
}

const cw_cmd_impl_t cw_cmd_fs_impl = {
    .start = fs_start,
    .interrupt = fs_interrupt,
    .resume = NULL,
    .destroy = fs_destroy,
};
