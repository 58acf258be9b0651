/* cworker-master put / get: files and directory trees between this machine
 * and the worker, byte-exact, with real data in update_read_file answers.
 *
 *   put FILE  -> download_file on the worker, answering update_read_file
 *   put -r    -> one mkdir for every directory, download_file per file,
 *                one shell `ln -sfn` batch for symbolic links
 *   get FILE  -> upload_file: written to LOCAL.cwm-XXXXXX, renamed at close
 *   get -r    -> upload_directory: the tar stream goes to a temporary file
 *                and is unpacked (libarchive, secure flags) into LOCAL
 *
 * Local file I/O uses uv_fs requests (and a thread-pool job for unpacking),
 * so the protocol keeps moving while the disk works.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "cw_config.h"
#include "cworker/args.h"
#include "log.h"

#if CW_HAVE_ARCHIVE
#include <archive.h>
#include <archive_entry.h>
#endif

#define XFER_BLOCK (1024 * 1024)
/* put: blocks read ahead of the worker's requests (its next read is answered
 * from memory at once; the disk works while the block travels) */
#define PUT_AHEAD 4
/* put: requests the worker may have in flight (a cworker asks for several at
 * once when the command's "pipeline" argument allows it) */
#define PUT_MAX_REQS 64
/* get: bytes answered but not yet on disk before answers wait for the disk */
#define GET_BEHIND (8u << 20)
/* get: update_upload_*_write requests a cworker may keep in flight (the
 * command's "pipeline" argument); at most GET_BEHIND of blocks */
#define GET_PIPELINE 4
/* The response to update_read_file with a whole block, packed in front of
 * the block's bytes in the same allocation (no copy of the data): a map of
 * op, seq_number (as uint64) and result (as bin32), always this long. */
#define RESP_PREFIX 45

/* A block read ahead: RESP_PREFIX bytes of room, then up to XFER_BLOCK of the
 * file; mem is handed to the connection when one answer takes it whole. */
typedef struct pblock {
    uint8_t *mem;
    size_t len; /* bytes of file data */
    size_t pos; /* of them already sent */
    bool eof;   /* the read returned 0 (len 0) */
} pblock_t;

/* A worker request waiting for data (put), or for the disk (get). */
typedef struct preq {
    int64_t seq;
    size_t len;
    cw_op_t op;
} preq_t;

/* get: a block answered, waiting for the disk (a FIFO list): in the
 * request's own storage (mem, taken from the connection: no copy) or copied
 * after the struct. */
typedef struct gblock {
    struct gblock *next;
    size_t len;
    const uint8_t *data;
    uint8_t *mem;
    uint8_t copy[];
} gblock_t;

static void gblock_free(gblock_t *b)
{
    free(b->mem);
    free(b);
}

typedef enum { ITEM_MKDIR, ITEM_FILE, ITEM_LINKS } item_kind_t;

typedef struct xitem {
    item_kind_t kind;
    char *local;  /* file: local path */
    char *remote; /* file: remote path */
    int mode;
} xitem_t;

typedef struct xfer {
    cli_t *cli;
    cw_remote_t *remote;
    uv_fs_t fs;
    bool fs_busy;
    int64_t pending_seq; /* the request the fs operation answers */
    uv_file fd;
    uint64_t off;
    uint8_t *buf;
    size_t buflen;
    bool closed; /* get: the worker sent close/unpack and we stored it */
    char *tmp;   /* get: temporary file */
    char *final; /* get: destination */
    char *error; /* first local failure */
    /* put -r */
    xitem_t *items;
    size_t nitems, cap, next;
    cw_str_t dummy;
    char **mkdirs;
    size_t nmkdirs;
    cw_buf_t links; /* shell script of ln -sfn lines */
    uv_work_t work;
    /* put: read-ahead (a ring of blocks, the head is answered from) */
    pblock_t ahead[PUT_AHEAD];
    unsigned ahead_head, ahead_n; /* ready blocks (and the one being read, last) */
    bool reading;                 /* a read into ahead[head + n - 1] is in flight */
    bool read_eof;                /* the file's end was read: no more reads */
    uint64_t read_off;            /* where the next read starts */
    preq_t reqs[PUT_MAX_REQS];    /* requests waiting for data, in order */
    unsigned req_head, req_n;
    int put_code; /* put: -1, or the exit code waiting for a read to end */
    /* get: write-behind (blocks answered at once, written in order) */
    gblock_t *behind, *behind_tail;
    size_t behind_bytes;
    bool writing;
    bool close_later; /* xfer_done ran during an fs request: close fd after it */
} xfer_t;

static void xfer_fail(xfer_t *x, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Remember the first local failure (reported at the end). */
static void xfer_fail(xfer_t *x, const char *fmt, ...)
{
    if (x->error)
        return;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    x->error = strdup(msg);
}

/* Report the end of a job. */
static void xfer_done(xfer_t *x, int code)
{
    cli_t *cli = x->cli;
    if (x->tmp) {
        unlink(x->tmp);
        free(x->tmp);
        x->tmp = NULL;
    }
    if (x->fd >= 0 && x->fs_busy)
        x->close_later = true; /* a read or write still uses it */
    else if (x->fd >= 0) {
        close(x->fd);
        x->fd = -1;
    }
    if (code == 0)
        cli_progress_done(cli);
    else if (x->error)
        cw_error("%s", x->error);
    cli_finish(cli, code);
}

/* Common end of every remote command: stderr/header lines were printed by
 * on_update; decide on rc, failure and loss. Returns the exit code. */
static int remote_result(xfer_t *x, bool has_rc, int64_t rc, const char *failure, bool lost)
{
    x->remote = NULL;
    if (lost) {
        xfer_fail(x, "lost the link to worker '%s': %s", x->cli->worker_name,
                  failure ? failure : "?");
        return CLI_EXIT_LINK_LOST;
    }
    if (failure) {
        xfer_fail(x, "the worker failed: %s", failure);
        return CLI_EXIT_FAILURE;
    }
    if (x->error)
        return CLI_EXIT_FAILURE;
    if (!has_rc || rc != 0) {
        xfer_fail(x, "the worker reported rc %lld", (long long)(has_rc ? rc : -1));
        return CLI_EXIT_FAILURE;
    }
    return 0;
}

/* Worker messages about the transfer (stderr lines) go to our stderr. */
static void xfer_on_update(cw_remote_t *r, cw_str_t key, const msgpack_object *v)
{
    cli_t *cli = ((xfer_t *)r->data)->cli;
    if ((cw_str_eq(key, "stderr") || (cli->verbose && cw_str_eq(key, "header"))) &&
        v->type == MSGPACK_OBJECT_ARRAY && v->via.array.size > 0) {
        cw_str_t t;
        if (cw_obj_str(&v->via.array.ptr[0], &t))
            cli_write_all(2, t.ptr, t.len);
    }
}

/* ---- put ---- */

static void put_next(xfer_t *x);
static void put_read_more(xfer_t *x);

/* Pack the fixed-length response head for seq and a result of len bytes. */
static void resp_prefix(uint8_t *p, int64_t seq, size_t len)
{
    static const uint8_t head[] = {0x83, 0xa2, 'o', 'p', 0xa8, 'r', 'e', 's', 'p', 'o', 'n', 's',
                                   'e',  0xaa, 's', 'e', 'q',  '_', 'n', 'u', 'm', 'b', 'e', 'r'};
    memcpy(p, head, sizeof head);
    p += sizeof head;
    *p++ = 0xcf;
    for (int i = 7; i >= 0; i--)
        *p++ = (uint8_t)((uint64_t)seq >> (8 * i));
    static const uint8_t result[] = {0xa6, 'r', 'e', 's', 'u', 'l', 't', 0xc6};
    memcpy(p, result, sizeof result);
    p += sizeof result;
    for (int i = 3; i >= 0; i--)
        *p++ = (uint8_t)((uint32_t)len >> (8 * i));
}

/* A local failure (recorded in x->error): every waiting request is answered
 * with an error, and so is every later one (put_on_transfer). */
static void put_fail_requests(xfer_t *x)
{
    x->read_eof = true; /* read no more */
    while (x->req_n > 0 && x->remote) {
        cw_remote_respond_error(x->remote, x->reqs[x->req_head].seq, "read error on the master");
        x->req_head = (x->req_head + 1) % PUT_MAX_REQS;
        x->req_n--;
    }
}

/* Answer waiting requests from the ready blocks, in order. */
static void put_serve(xfer_t *x)
{
    while (x->req_n > 0 && x->remote) {
        unsigned ready = x->ahead_n - (x->reading ? 1 : 0);
        if (ready == 0)
            break;
        pblock_t *b = &x->ahead[x->ahead_head];
        preq_t *q = &x->reqs[x->req_head];
        if (b->eof) {
            /* the end: every request from now on is answered empty (the
             * block stays, so later requests find it too) */
            cw_remote_respond_data(x->remote, q->seq, NULL, 0);
        } else if (b->pos == 0 && q->len >= b->len) {
            /* the whole block: the answer is built in place, the memory
             * goes to the connection */
            resp_prefix(b->mem, q->seq, b->len);
            cw_buf_t m = {b->mem, RESP_PREFIX + b->len, RESP_PREFIX + XFER_BLOCK};
            b->mem = NULL;
            x->cli->xfer_bytes += b->len;
            cw_remote_send_packed(x->remote, &m);
            b->len = 0;
        } else {
            size_t n = b->len - b->pos < q->len ? b->len - b->pos : q->len;
            cw_remote_respond_data(x->remote, q->seq, b->mem + RESP_PREFIX + b->pos, n);
            x->cli->xfer_bytes += n;
            b->pos += n;
            if (b->pos == b->len)
                b->len = 0;
        }
        x->req_head = (x->req_head + 1) % PUT_MAX_REQS;
        x->req_n--;
        if (!b->eof && b->len == 0) {
            /* used up: its slot reads further ahead */
            free(b->mem);
            b->mem = NULL;
            b->pos = 0;
            x->ahead_head = (x->ahead_head + 1) % PUT_AHEAD;
            x->ahead_n--;
        }
    }
    put_read_more(x);
}

static void put_read_cb(uv_fs_t *req)
{
    xfer_t *x = req->data;
    ssize_t n = req->result;
    uv_fs_req_cleanup(req);
    x->fs_busy = false;
    x->reading = false;
    pblock_t *b = &x->ahead[(x->ahead_head + x->ahead_n - 1) % PUT_AHEAD];
    if (x->close_later) {
        close(x->fd);
        x->fd = -1;
        return;
    }
    if (x->put_code >= 0) {
        /* the command ended while this read ran: carry on now */
        int code = x->put_code;
        x->put_code = -1;
        if (code != 0)
            xfer_done(x, code);
        else
            put_next(x);
        return;
    }
    if (x->remote == NULL)
        return;
    if (n < 0) {
        xfer_fail(x, "cannot read '%s': %s", x->items[x->next - 1].local, uv_strerror((int)n));
        x->ahead_n--;
        put_fail_requests(x);
        return;
    }
    b->len = (size_t)n;
    b->pos = 0;
    b->eof = n == 0;
    x->read_off += (uint64_t)n;
    if (n == 0)
        x->read_eof = true;
    put_serve(x);
}

/* Start the next read ahead, if there is room and the file goes on. */
static void put_read_more(xfer_t *x)
{
    if (x->reading || x->read_eof || x->error || x->ahead_n >= PUT_AHEAD || x->remote == NULL)
        return;
    pblock_t *b = &x->ahead[(x->ahead_head + x->ahead_n) % PUT_AHEAD];
    if (b->mem == NULL && (b->mem = malloc(RESP_PREFIX + XFER_BLOCK)) == NULL) {
        xfer_fail(x, "out of memory reading '%s'", x->items[x->next - 1].local);
        put_fail_requests(x);
        return;
    }
    b->len = b->pos = 0;
    b->eof = false;
    x->ahead_n++;
    x->reading = true;
    x->fs_busy = true;
    x->fs.data = x;
    uv_buf_t ub = uv_buf_init((char *)b->mem + RESP_PREFIX, XFER_BLOCK);
    if (uv_fs_read(x->cli->loop, &x->fs, x->fd, &ub, 1, (int64_t)x->read_off, put_read_cb) < 0) {
        x->ahead_n--;
        x->reading = x->fs_busy = false;
        xfer_fail(x, "cannot read '%s'", x->items[x->next - 1].local);
        put_fail_requests(x);
    }
}

/* Forget the read-ahead of the last file (no read in flight). */
static void put_reset(xfer_t *x)
{
    for (unsigned i = 0; i < PUT_AHEAD; i++) {
        free(x->ahead[i].mem);
        memset(&x->ahead[i], 0, sizeof x->ahead[i]);
    }
    x->ahead_head = x->ahead_n = 0;
    x->req_head = x->req_n = 0;
    x->read_eof = false;
    x->read_off = 0;
}

static void put_on_transfer(cw_remote_t *r, const cw_msg_t *m)
{
    xfer_t *x = r->data;
    if (m->op == CW_OP_READ_FILE) {
        if (x->error) {
            cw_remote_respond_error(r, m->seq, "read error on the master");
            return;
        }
        if (x->req_n == PUT_MAX_REQS) {
            cw_remote_respond_error(r, m->seq, "too many read requests at once");
            return;
        }
        /* clamped as int64_t: on 32 bits a 4 GiB + n request must not
         * become an n-byte read (a short answer reads as end of file) */
        size_t len = cw_clamp_size(m->u.read_file.length, (size_t)16 << 20);
        x->reqs[(x->req_head + x->req_n) % PUT_MAX_REQS] = (preq_t){m->seq, len, m->op};
        x->req_n++;
        put_serve(x);
    } else if (m->op == CW_OP_READ_FILE_CLOSE) {
        cw_remote_respond(r, m->seq);
    } else {
        cw_remote_respond_error(r, m->seq, "unexpected request during a download");
    }
}

static void put_on_complete(cw_remote_t *r, bool has_rc, int64_t rc, const char *failure, bool lost)
{
    xfer_t *x = r->data;
    int code = remote_result(x, has_rc, rc, failure, lost);
    if (x->fs_busy) {
        /* a read ahead is still running on this file: go on when it ends */
        x->put_code = code;
        return;
    }
    if (code != 0) {
        xfer_done(x, code);
        return;
    }
    put_next(x);
}

static const cw_remote_callbacks_t put_callbacks = {
    .on_update = xfer_on_update,
    .on_transfer = put_on_transfer,
    .on_complete = put_on_complete,
};

/* Pack and start one remote command for item i. */
static void put_item(xfer_t *x, xitem_t *it)
{
    cli_t *cli = x->cli;
    cw_buf_t b = CW_BUF_INIT;
    msgpack_packer pk;
    cw_pack_init(&pk, &b);
    const char *cmd;
    if (it->kind == ITEM_MKDIR) {
        cmd = "mkdir";
        msgpack_pack_map(&pk, 1);
        cw_pack_str(&pk, "paths");
        msgpack_pack_array(&pk, x->nmkdirs);
        for (size_t i = 0; i < x->nmkdirs; i++)
            cw_pack_str(&pk, x->mkdirs[i]);
    } else if (it->kind == ITEM_LINKS) {
        cmd = "shell";
        msgpack_pack_map(&pk, 4);
        cw_pack_str(&pk, "command");
        cw_pack_strn(&pk, (const char *)x->links.data, x->links.len);
        cw_pack_str(&pk, "workdir");
        cw_pack_str(&pk, x->mkdirs[0]);
        cw_pack_str(&pk, "logEnviron");
        msgpack_pack_false(&pk);
        cw_pack_str(&pk, "env");
        msgpack_pack_map(&pk, 0);
    } else {
        cmd = "download_file";
        if (x->fd >= 0)
            close(x->fd);
        put_reset(x);
        x->fd = open(it->local, O_RDONLY | O_CLOEXEC);
        if (x->fd < 0) {
            xfer_fail(x, "cannot open '%s': %s", it->local, strerror(errno));
            cw_buf_free(&b);
            xfer_done(x, CLI_EXIT_FAILURE);
            return;
        }
        msgpack_pack_map(&pk, 8);
        cw_pack_str(&pk, "path");
        cw_pack_str(&pk, it->remote);
        cw_pack_str(&pk, "blocksize");
        msgpack_pack_int64(&pk, XFER_BLOCK);
        cw_pack_str(&pk, "maxsize");
        msgpack_pack_nil(&pk);
        cw_pack_str(&pk, "mode");
        if (x->cli->no_mode)
            msgpack_pack_nil(&pk);
        else
            msgpack_pack_int(&pk, it->mode);
        cw_pack_str(&pk, "reader");
        msgpack_pack_nil(&pk);
        cw_pack_str(&pk, "workdir");
        cw_pack_str(&pk, "");
        cw_pack_str(&pk, "workerdest");
        cw_pack_str(&pk, it->remote);
        /* not a stock argument (the stock worker ignores it): a cworker may
         * keep this many update_read_file requests in flight */
        cw_pack_str(&pk, "pipeline");
        msgpack_pack_int(&pk, PUT_AHEAD);
    }
    x->remote = cw_remote_start(cli->w, cmd, b.data, b.len, &put_callbacks, x);
    cw_buf_free(&b);
    if (x->remote == NULL) {
        xfer_fail(x, "cannot start %s on worker '%s'", cmd, cli->worker_name);
        xfer_done(x, CLI_EXIT_FAILURE);
    }
}

static void put_next(xfer_t *x)
{
    if (x->next >= x->nitems) {
        xfer_done(x, 0);
        return;
    }
    put_item(x, &x->items[x->next++]);
}

static int add_item(xfer_t *x, item_kind_t kind, const char *local, const char *remote, int mode)
{
    xitem_t *n = cw_grow(x->items, &x->cap, x->nitems + 1, sizeof *n);
    if (n == NULL)
        return -ENOMEM;
    x->items = n;
    xitem_t *it = &x->items[x->nitems++];
    it->kind = kind;
    it->local = local ? strdup(local) : NULL;
    it->remote = remote ? strdup(remote) : NULL;
    it->mode = mode;
    return 0;
}

static int add_mkdir(xfer_t *x, const char *remote)
{
    char **n = realloc(x->mkdirs, (x->nmkdirs + 1) * sizeof *n);
    if (n == NULL)
        return -ENOMEM;
    x->mkdirs = n;
    x->mkdirs[x->nmkdirs] = strdup(remote);
    return x->mkdirs[x->nmkdirs++] ? 0 : -ENOMEM;
}

/* put -r: collect the local tree (directories first, in walk order). */
static int put_walk(xfer_t *x, const char *local, const char *remote, int depth)
{
    if (depth > 256)
        return -ELOOP;
    if (add_mkdir(x, remote) < 0)
        return -ENOMEM;
    DIR *d = opendir(local);
    if (d == NULL) {
        xfer_fail(x, "cannot read directory '%s': %s", local, strerror(errno));
        return -errno;
    }
    struct dirent *de;
    int rc = 0;
    while (rc == 0 && (de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        char *l = NULL, *r = NULL;
        if (asprintf(&l, "%s/%s", local, de->d_name) < 0 ||
            asprintf(&r, "%s/%s", remote, de->d_name) < 0) {
            free(l);
            closedir(d);
            return -ENOMEM;
        }
        struct stat st;
        if (lstat(l, &st) < 0) {
            xfer_fail(x, "cannot stat '%s': %s", l, strerror(errno));
            rc = -errno;
        } else if (S_ISDIR(st.st_mode)) {
            rc = put_walk(x, l, r, depth + 1);
        } else if (S_ISREG(st.st_mode)) {
            x->cli->xfer_total += (uint64_t)st.st_size;
            rc = add_item(x, ITEM_FILE, l, r, st.st_mode & 07777);
        } else if (S_ISLNK(st.st_mode)) {
            char target[4096];
            ssize_t n = readlink(l, target, sizeof target - 1);
            if (n >= 0) {
                target[n] = '\0';
                char *qt = cw_shell_quote(target), *qr = cw_shell_quote(r);
                cw_buf_printf(&x->links, "ln -sfn -- %s %s || exit 1\n", qt, qr);
                free(qt);
                free(qr);
            }
        } else {
            cw_warn("skipping '%s': not a regular file, directory or link", l);
        }
        free(l);
        free(r);
    }
    closedir(d);
    return rc;
}

static void put_start(cli_t *cli, cw_mworker_t *w)
{
    xfer_t *x = calloc(1, sizeof *x);
    x->cli = cli;
    x->fd = -1;
    x->put_code = -1;
    cli->xfer = x;
    char *remote = cli_remote_path(cli, cli->remote);
    struct stat st;
    if (stat(cli->local, &st) < 0) {
        xfer_fail(x, "cannot read '%s': %s", cli->local, strerror(errno));
        free(remote);
        xfer_done(x, CLI_EXIT_FAILURE);
        return;
    }
    cli->xfer_total = 0;
    if (S_ISDIR(st.st_mode)) {
        if (!cli->recursive) {
            xfer_fail(x, "'%s' is a directory (use -r)", cli->local);
            free(remote);
            xfer_done(x, CLI_EXIT_FAILURE);
            return;
        }
        /* the mkdir item goes first; it sends every directory at once */
        add_item(x, ITEM_MKDIR, NULL, NULL, 0);
        if (put_walk(x, cli->local, remote, 0) < 0) {
            free(remote);
            xfer_done(x, CLI_EXIT_FAILURE);
            return;
        }
        if (x->links.len)
            add_item(x, ITEM_LINKS, NULL, NULL, 0);
    } else {
        cli->xfer_total = (uint64_t)st.st_size;
        add_item(x, ITEM_FILE, cli->local, remote, st.st_mode & 07777);
    }
    free(remote);
    cli_progress_start(cli, cli->xfer_total);
    uint64_t total = cli->xfer_total;
    cli->xfer_total = total;
    put_next(x);
}

static void xfer_interrupt(cli_t *cli)
{
    xfer_t *x = cli->xfer;
    if (x && x->remote)
        cw_remote_interrupt(x->remote, "interrupted by cworker-master");
}

/* Free everything a put/get allocated (after the loop has ended). */
static void xfer_free(cli_t *cli)
{
    xfer_t *x = cli->xfer;
    if (x->fd >= 0)
        close(x->fd);
    if (x->tmp)
        unlink(x->tmp);
    for (size_t i = 0; i < x->nitems; i++) {
        free(x->items[i].local);
        free(x->items[i].remote);
    }
    free(x->items);
    for (size_t i = 0; i < x->nmkdirs; i++)
        free(x->mkdirs[i]);
    free(x->mkdirs);
    cw_buf_free(&x->links);
    for (unsigned i = 0; i < PUT_AHEAD; i++)
        free(x->ahead[i].mem);
    while (x->behind) {
        gblock_t *b = x->behind;
        x->behind = b->next;
        gblock_free(b);
    }
    free(x->buf);
    free(x->tmp);
    free(x->final);
    free(x->error);
    free(x);
    cli->xfer = NULL;
}

const cli_job_t cli_put_job = {
    .start = put_start,
    .interrupt = xfer_interrupt,
    .free = xfer_free,
};

/* ---- get ---- */

static void get_write_next(xfer_t *x);
static void get_release(xfer_t *x);

static void get_write_cb(uv_fs_t *req)
{
    xfer_t *x = req->data;
    ssize_t n = req->result;
    uv_fs_req_cleanup(req);
    x->fs_busy = false;
    x->writing = false;
    if (x->close_later) {
        close(x->fd);
        x->fd = -1;
        return;
    }
    if (x->remote == NULL)
        return;
    gblock_t *b = x->behind;
    if (n < 0 || (size_t)n != b->len)
        xfer_fail(x, "cannot write '%s': %s", x->tmp, n < 0 ? uv_strerror((int)n) : "short");
    else {
        x->off += (uint64_t)n;
        x->cli->xfer_bytes += (uint64_t)n;
    }
    /* written (or, after a failure, dropped with the rest) */
    do {
        b = x->behind;
        x->behind = b->next;
        x->behind_bytes -= b->len;
        gblock_free(b);
    } while (x->error && x->behind);
    if (x->behind == NULL)
        x->behind_tail = NULL;
    get_write_next(x);
    get_release(x);
}

/* Write the next block answered ahead of the disk. */
static void get_write_next(xfer_t *x)
{
    if (x->writing || x->behind == NULL || x->error)
        return;
    gblock_t *b = x->behind;
    x->writing = x->fs_busy = true;
    x->fs.data = x;
    uv_buf_t ub = uv_buf_init((char *)b->data, (unsigned)b->len);
    if (uv_fs_write(x->cli->loop, &x->fs, x->fd, &ub, 1, (int64_t)x->off, get_write_cb) < 0) {
        x->writing = x->fs_busy = false;
        xfer_fail(x, "cannot write '%s'", x->tmp);
    }
}

#if CW_HAVE_ARCHIVE
static void unpack_work(uv_work_t *req);
static void unpack_after(uv_work_t *req, int status);
#endif

/* Answer the requests that waited for the disk, in order: a write once the
 * data behind is below GET_BEHIND, close and unpack once it is all written
 * (or a failure was recorded). */
static void get_release(xfer_t *x)
{
    while (x->req_n > 0 && x->remote) {
        preq_t *q = &x->reqs[x->req_head];
        bool drained = x->behind == NULL && !x->writing;
        if (x->error && q->op != CW_OP_UPLOAD_DIRECTORY_UNPACK) {
            cw_remote_respond_error(x->remote, q->seq, "write error on the master");
        } else if (q->op == CW_OP_UPLOAD_FILE_WRITE || q->op == CW_OP_UPLOAD_DIRECTORY_WRITE) {
            if (x->behind_bytes > GET_BEHIND)
                return;
            cw_remote_respond(x->remote, q->seq);
        } else if (!drained) {
            return;
        } else if (q->op == CW_OP_UPLOAD_FILE_CLOSE) {
            /* Not renamed yet: the stock worker sends close even after a failed
             * open or an interrupt, so the file becomes LOCAL only when the
             * command ends with rc 0 (get_on_complete). */
            close(x->fd);
            x->fd = -1;
            x->closed = true;
            cw_remote_respond(x->remote, q->seq);
        } else {
#if CW_HAVE_ARCHIVE
            /* CW_OP_UPLOAD_DIRECTORY_UNPACK: the thread pool unpacks, then
             * unpack_after answers */
            if (x->error) {
                cw_remote_respond_error(x->remote, q->seq, x->error);
            } else {
                close(x->fd);
                x->fd = -1;
                x->pending_seq = q->seq;
                x->work.data = x;
                x->fs_busy = true;
                uv_queue_work(x->cli->loop, &x->work, unpack_work, unpack_after);
            }
#endif
        }
        x->req_head = (x->req_head + 1) % PUT_MAX_REQS;
        x->req_n--;
    }
}

/* Hold a request until the disk catches up (get_release answers it). */
static void get_hold(xfer_t *x, const cw_msg_t *m)
{
    if (x->req_n == PUT_MAX_REQS) {
        cw_remote_respond_error(x->remote, m->seq, "too many requests at once");
        return;
    }
    x->reqs[(x->req_head + x->req_n) % PUT_MAX_REQS] = (preq_t){m->seq, 0, m->op};
    x->req_n++;
    get_release(x);
}

#if CW_HAVE_ARCHIVE
/* Unpack the received tar into the destination (thread pool). */
static void unpack_work(uv_work_t *req)
{
    xfer_t *x = req->data;
    struct archive *a = archive_read_new();
    struct archive *out = archive_write_disk_new();
    /* what a worker sends (tar, gzip or bzip2 as asked); not the _all()
     * calls, which would link every reader (and libxml2, ICU) from the
     * static libarchive (meson option archive_link) */
    archive_read_support_filter_gzip(a);
    archive_read_support_filter_bzip2(a);
    archive_read_support_format_tar(a);
    /* Entry names are checked here and then prefixed with the (absolute)
     * destination, so libarchive's absolute-path guard cannot be used; the
     * ".." and symlink guards still apply to the full path. */
    archive_write_disk_set_options(out, ARCHIVE_EXTRACT_TIME | ARCHIVE_EXTRACT_PERM |
                                            ARCHIVE_EXTRACT_SECURE_NODOTDOT |
                                            ARCHIVE_EXTRACT_SECURE_SYMLINKS);
    if (archive_read_open_filename(a, x->tmp, 65536) != ARCHIVE_OK) {
        xfer_fail(x, "cannot read the received archive: %s", archive_error_string(a));
        goto out;
    }
    struct archive_entry *e;
    int r;
    while ((r = archive_read_next_header(a, &e)) == ARCHIVE_OK) {
        const char *raw = archive_entry_pathname(e);
        while (raw && raw[0] == '.' && raw[1] == '/')
            raw += 2;
        /* the root entry of the stock worker's tar has an empty name,
         * which libarchive shows as "/" for a directory */
        if (raw == NULL || raw[0] == '\0' || strcmp(raw, ".") == 0 || strcmp(raw, "/") == 0)
            continue;
        /* keep our own copy: the entry's string changes below */
        char *name = strdup(raw);
        if (name == NULL)
            break;
        if (name[0] == '/') {
            xfer_fail(x, "refusing archive entry with an absolute name '%s'", name);
            free(name);
            goto out;
        }
        char *path = NULL;
        if (asprintf(&path, "%s/%s", x->final, name) < 0) {
            free(name);
            break;
        }
        archive_entry_copy_pathname(e, path);
        free(path);
        const char *hl = archive_entry_hardlink(e);
        if (hl) {
            char *hp = NULL;
            if (hl[0] != '/' && asprintf(&hp, "%s/%s", x->final, hl) >= 0)
                archive_entry_copy_hardlink(e, hp);
            free(hp);
        }
        if (archive_write_header(out, e) < ARCHIVE_WARN) {
            xfer_fail(x, "cannot unpack '%s': %s", name, archive_error_string(out));
            free(name);
            goto out;
        }
        free(name);
        const void *buf;
        size_t size;
        la_int64_t off;
        while ((r = archive_read_data_block(a, &buf, &size, &off)) == ARCHIVE_OK)
            if (archive_write_data_block(out, buf, size, off) < ARCHIVE_WARN)
                break;
        archive_write_finish_entry(out);
    }
    if (r != ARCHIVE_EOF && r != ARCHIVE_OK)
        xfer_fail(x, "broken archive from the worker: %s", archive_error_string(a));
out:
    archive_read_free(a);
    archive_write_free(out);
}

static void unpack_after(uv_work_t *req, int status)
{
    xfer_t *x = req->data;
    x->fs_busy = false;
    if (x->remote == NULL)
        return;
    if (x->error) {
        cw_remote_respond_error(x->remote, x->pending_seq, x->error);
        return;
    }
    unlink(x->tmp);
    free(x->tmp);
    x->tmp = NULL;
    x->closed = true;
    cw_remote_respond(x->remote, x->pending_seq);
}
#endif

static void get_on_transfer(cw_remote_t *r, const cw_msg_t *m)
{
    xfer_t *x = r->data;
    switch (m->op) {
    case CW_OP_UPLOAD_FILE_WRITE:
    case CW_OP_UPLOAD_DIRECTORY_WRITE: {
        /* copied (the message's storage is reused) and answered at once
         * while less than GET_BEHIND waits for the disk: the worker's next
         * block is on its way while this one is written */
        size_t len = m->u.write.len;
        if (x->error) {
            cw_remote_respond_error(r, m->seq, "write error on the master");
            return;
        }
        if (len == 0) {
            get_hold(x, m);
            return;
        }
        /* a block that arrived in pieces (most of them) is kept where it
         * was assembled; a small one is copied */
        uint8_t *mem = cw_remote_take_message(r, m->u.write.data, len);
        gblock_t *b = malloc(sizeof *b + (mem ? 0 : len));
        if (b == NULL) {
            free(mem);
            cw_remote_respond_error(r, m->seq, "out of memory on the master");
            return;
        }
        b->next = NULL;
        b->len = len;
        b->mem = mem;
        if (mem) {
            b->data = m->u.write.data;
        } else {
            memcpy(b->copy, m->u.write.data, len);
            b->data = b->copy;
        }
        if (x->behind_tail)
            x->behind_tail->next = b;
        else
            x->behind = b;
        x->behind_tail = b;
        x->behind_bytes += len;
        get_write_next(x);
        get_hold(x, m);
        break;
    }
    case CW_OP_UPLOAD_FILE_CLOSE:
#if CW_HAVE_ARCHIVE
    case CW_OP_UPLOAD_DIRECTORY_UNPACK:
#endif
        get_hold(x, m);
        break;
    case CW_OP_UPLOAD_FILE_UTIME:
        cw_remote_respond(r, m->seq);
        break;
    default:
        cw_remote_respond_error(r, m->seq, "unexpected request during an upload");
        break;
    }
}

static void get_on_complete(cw_remote_t *r, bool has_rc, int64_t rc, const char *failure, bool lost)
{
    xfer_t *x = r->data;
    int code = remote_result(x, has_rc, rc, failure, lost);
    if (code == 0 && !x->closed) {
        xfer_fail(x, "the worker finished without delivering the data");
        code = CLI_EXIT_FAILURE;
    }
    if (code == 0 && x->tmp) {
        if (rename(x->tmp, x->final) < 0) {
            xfer_fail(x, "cannot create '%s': %s", x->final, strerror(errno));
            code = CLI_EXIT_FAILURE;
        } else {
            free(x->tmp);
            x->tmp = NULL;
        }
    }
    xfer_done(x, code); /* removes x->tmp if it is still there */
}

static const cw_remote_callbacks_t get_callbacks = {
    .on_update = xfer_on_update,
    .on_transfer = get_on_transfer,
    .on_complete = get_on_complete,
};

static void get_start(cli_t *cli, cw_mworker_t *w)
{
    xfer_t *x = calloc(1, sizeof *x);
    x->cli = cli;
    x->fd = -1;
    cli->xfer = x;
    char *remote = cli_remote_path(cli, cli->remote);
    struct stat st;
    if (cli->recursive) {
#if !CW_HAVE_ARCHIVE
        xfer_fail(x, "get -r needs libarchive, which this build lacks");
        free(remote);
        xfer_done(x, CLI_EXIT_FAILURE);
        return;
#endif
        if (mkdir(cli->local, 0777) < 0 && errno != EEXIST) {
            xfer_fail(x, "cannot create '%s': %s", cli->local, strerror(errno));
            free(remote);
            xfer_done(x, CLI_EXIT_FAILURE);
            return;
        }
        /* absolute and free of "..", as the extraction guards want */
        x->final = realpath(cli->local, NULL);
        if (x->final == NULL) {
            xfer_fail(x, "cannot use '%s': %s", cli->local, strerror(errno));
            free(remote);
            xfer_done(x, CLI_EXIT_FAILURE);
            return;
        }
        if (asprintf(&x->tmp, "%s/.cwm-tar-XXXXXX", cli->local) < 0)
            x->tmp = NULL;
    } else {
        if (stat(cli->local, &st) == 0 && S_ISDIR(st.st_mode)) {
            const char *base = strrchr(cli->remote, '/');
            base = base ? base + 1 : cli->remote;
            if (asprintf(&x->final, "%s/%s", cli->local, base) < 0)
                x->final = NULL;
        } else {
            x->final = strdup(cli->local);
        }
        if (x->final && asprintf(&x->tmp, "%s.cwm-XXXXXX", x->final) < 0)
            x->tmp = NULL;
    }
    if (x->tmp == NULL || (x->fd = cw_mkstemp_cloexec(x->tmp)) < 0) {
        xfer_fail(x, "cannot create a file beside '%s': %s", cli->local, strerror(errno));
        free(x->tmp);
        x->tmp = NULL;
        free(remote);
        xfer_done(x, CLI_EXIT_FAILURE);
        return;
    }
    if (!cli->recursive) {
        mode_t um = umask(0);
        umask(um);
        fchmod(x->fd, 0666 & ~um);
    }
    cw_buf_t b = CW_BUF_INIT;
    msgpack_packer pk;
    cw_pack_init(&pk, &b);
    msgpack_pack_map(&pk, 8);
    cw_pack_str(&pk, "path");
    cw_pack_str(&pk, remote);
    cw_pack_str(&pk, "blocksize");
    msgpack_pack_int64(&pk, XFER_BLOCK);
    cw_pack_str(&pk, "maxsize");
    msgpack_pack_nil(&pk);
    cw_pack_str(&pk, "writer");
    msgpack_pack_nil(&pk);
    cw_pack_str(&pk, "workdir");
    cw_pack_str(&pk, "");
    cw_pack_str(&pk, "workersrc");
    cw_pack_str(&pk, remote);
    if (cli->recursive) {
        cw_pack_str(&pk, "compress");
        if (cli->compress)
            cw_pack_str(&pk, cli->compress);
        else
            msgpack_pack_nil(&pk);
    } else {
        cw_pack_str(&pk, "keepstamp");
        msgpack_pack_false(&pk);
    }
    /* not a stock argument (the stock worker ignores it): a cworker may keep
     * this many update_upload_*_write requests in flight */
    cw_pack_str(&pk, "pipeline");
    msgpack_pack_int(&pk, GET_PIPELINE);
    free(remote);
    cli_progress_start(cli, 0);
    x->remote = cw_remote_start(w, cli->recursive ? "upload_directory" : "upload_file", b.data,
                                b.len, &get_callbacks, x);
    cw_buf_free(&b);
    if (x->remote == NULL) {
        xfer_fail(x, "cannot start the upload on worker '%s'", cli->worker_name);
        xfer_done(x, CLI_EXIT_FAILURE);
    }
}

const cli_job_t cli_get_job = {
    .start = get_start,
    .interrupt = xfer_interrupt,
    .free = xfer_free,
};
