/* startCommand's arguments over Perspective Broker (reference PB §8): the
 * step's own argument names and paths relative to the builder's directory,
 * turned into what the msgpack master sends (names and absolute paths), so
 * that one validator (args_msgpack.c) serves both protocols with the same
 * rules and messages.  The writer/reader references are taken out. */
#include "cworker/args_pb.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cworker/msg.h"

/* os.path.join(a, b): an absolute b replaces a. */
static int path_join(cw_buf_t *out, const char *a, size_t alen, const char *b, size_t blen)
{
    out->len = 0;
    if (blen > 0 && b[0] == '/')
        return cw_buf_append(out, b, blen);
    if (cw_buf_append(out, a, alen) < 0)
        return -ENOMEM;
    if (alen > 0 && a[alen - 1] != '/' && cw_buf_append(out, "/", 1) < 0)
        return -ENOMEM;
    return cw_buf_append(out, b, blen);
}

/* os.path.expanduser for "~" and "~/..." (other users' "~name" are left
 * as they are, like Python does when the name is unknown). */
static int expand_user(cw_buf_t *out, cw_str_t s, const char *home)
{
    out->len = 0;
    if (home && s.len >= 1 && s.ptr[0] == '~' && (s.len == 1 || s.ptr[1] == '/')) {
        size_t hl = strlen(home);
        while (hl > 1 && home[hl - 1] == '/')
            hl--;
        if (cw_buf_append(out, home, hl) < 0 || cw_buf_append(out, s.ptr + 1, s.len - 1) < 0)
            return -ENOMEM;
        return 0;
    }
    return cw_buf_append(out, s.ptr, s.len);
}

/* Where the conversion writes: a msgpack map of the converted arguments. */
typedef struct conv {
    msgpack_packer pk;
    cw_buf_t buf;
    const char *bdir; /* the builder's directory */
    const char *home;
    char *err;
    size_t errlen;
    int rc;
} conv_t;

/* A jelly value as msgpack: None -> nil, bool, int, float, bytes/unicode ->
 * str, list/tuple -> array, dictionary -> map.  Remote references and
 * failures have no msgpack form: they become nil (and fail validation where
 * a value was needed). */
static void put_value(conv_t *c, const cw_jelly_t *v)
{
    msgpack_packer *pk = &c->pk;
    switch (v->type) {
    case CW_JELLY_NONE:
    case CW_JELLY_REMOTE:
    case CW_JELLY_FAILURE:
    case CW_JELLY_BIGINT:
        msgpack_pack_nil(pk);
        break;
    case CW_JELLY_BOOL:
        v->u.b ? msgpack_pack_true(pk) : msgpack_pack_false(pk);
        break;
    case CW_JELLY_INT:
        msgpack_pack_int64(pk, v->u.i);
        break;
    case CW_JELLY_FLOAT:
        msgpack_pack_double(pk, v->u.f);
        break;
    case CW_JELLY_BYTES:
    case CW_JELLY_UNICODE:
        cw_pack_strn(pk, v->u.s.ptr, v->u.s.len);
        break;
    case CW_JELLY_LIST:
    case CW_JELLY_TUPLE:
        msgpack_pack_array(pk, v->u.seq.n);
        for (size_t i = 0; i < v->u.seq.n; i++)
            put_value(c, &v->u.seq.items[i]);
        break;
    case CW_JELLY_DICT:
        msgpack_pack_map(pk, v->u.dict.n);
        for (size_t i = 0; i < v->u.dict.n; i++) {
            put_value(c, &v->u.dict.pairs[i].key);
            put_value(c, &v->u.dict.pairs[i].value);
        }
        break;
    }
}

/* Copy argument `from` under the name `to` (when present). */
static size_t copy_arg(conv_t *c, const cw_jelly_t *args, const char *from, const char *to)
{
    const cw_jelly_t *v = cw_jelly_dict_get(args, from);
    if (v == NULL)
        return 0;
    cw_pack_str(&c->pk, to);
    put_value(c, v);
    return 1;
}

/* A text argument, or NULL with an error (stock wording). */
static bool text_arg(conv_t *c, const cw_jelly_t *args, const char *key, cw_str_t *out,
                     bool required)
{
    const cw_jelly_t *v = cw_jelly_dict_get(args, key);
    if (v == NULL || v->type == CW_JELLY_NONE) {
        if (required)
            c->rc = cw_err_fmt(CW_EBADARG, c->err, c->errlen, "missing argument '%s'", key);
        *out = (cw_str_t){"", 0};
        return !required;
    }
    if (!cw_jelly_text(v, out) || memchr(out->ptr, '\0', out->len) != NULL) {
        c->rc = cw_err_fmt(CW_EBADARG, c->err, c->errlen, "argument '%s' must be a string", key);
        return false;
    }
    return true;
}

/* key = join(B, parts...) with `~` expanded in the last part when asked. */
static bool put_path(conv_t *c, const char *key, const cw_str_t *parts, size_t n, bool expand)
{
    cw_buf_t p = CW_BUF_INIT, q = CW_BUF_INIT, e = CW_BUF_INIT;
    int rc = cw_buf_append_str(&p, c->bdir);
    for (size_t i = 0; rc == 0 && i < n; i++) {
        cw_str_t part = parts[i];
        if (expand && i == n - 1) {
            rc = expand_user(&e, part, c->home);
            part = (cw_str_t){(const char *)e.data, e.len};
        }
        if (rc == 0)
            rc = path_join(&q, (const char *)p.data, p.len, part.ptr, part.len);
        cw_buf_t t = p;
        p = q;
        q = t;
    }
    if (rc == 0) {
        cw_pack_str(&c->pk, key);
        cw_pack_strn(&c->pk, (const char *)p.data, p.len);
    }
    cw_buf_free(&p);
    cw_buf_free(&q);
    cw_buf_free(&e);
    if (rc < 0)
        c->rc = -ENOMEM;
    return rc == 0;
}

/* `dir` (a string or a list of them) as `paths`, each joined with B. */
static size_t put_dirs(conv_t *c, const cw_jelly_t *args)
{
    const cw_jelly_t *v = cw_jelly_dict_get(args, "dir");
    if (v == NULL) {
        c->rc = cw_err_fmt(CW_EBADARG, c->err, c->errlen, "missing argument 'dir'");
        return 0;
    }
    size_t n = 1;
    const cw_jelly_t *items = v;
    if (v->type == CW_JELLY_LIST || v->type == CW_JELLY_TUPLE)
        items = cw_jelly_items(v, &n);
    cw_pack_str(&c->pk, "paths");
    msgpack_pack_array(&c->pk, n);
    cw_buf_t p = CW_BUF_INIT;
    for (size_t i = 0; i < n; i++) {
        cw_str_t s;
        if (!cw_jelly_text(&items[i], &s) || memchr(s.ptr, '\0', s.len) != NULL) {
            c->rc = cw_err_fmt(CW_EBADARG, c->err, c->errlen,
                               "argument 'dir' must be a string or a list of strings");
            break;
        }
        if (path_join(&p, c->bdir, strlen(c->bdir), s.ptr, s.len) < 0) {
            c->rc = -ENOMEM;
            break;
        }
        cw_pack_strn(&c->pk, (const char *)p.data, p.len);
    }
    cw_buf_free(&p);
    return 1;
}

/* The reference an argument holds (writer, reader), or 0. */
static int64_t remote_arg(const cw_jelly_t *args, const char *key)
{
    const cw_jelly_t *v = cw_jelly_dict_get(args, key);
    return v && v->type == CW_JELLY_REMOTE ? v->u.luid : 0;
}

/* The converted map for one command kind: the number of keys written (the
 * map header is patched in afterwards). */
static size_t convert(conv_t *c, cw_cmd_kind_t kind, const cw_jelly_t *a)
{
    static const char *const shell_keys[] = {
        "command",       "env",      "want_stdout", "want_stderr", "usePTY",
        "logEnviron",    "timeout",  "maxTime",     "sigtermTime", "interruptSignal",
        "initial_stdin", "logfiles", "max_lines",   NULL,
    };
    size_t n = 0;
    cw_str_t parts[3];
    switch (kind) {
    case CW_CMD_SHELL:
        if (text_arg(c, a, "workdir", &parts[0], true))
            n += put_path(c, "workdir", parts, 1, false);
        for (size_t i = 0; shell_keys[i]; i++)
            n += copy_arg(c, a, shell_keys[i], shell_keys[i]);
        break;
    case CW_CMD_MKDIR:
    case CW_CMD_RMDIR:
        n += put_dirs(c, a);
        n += copy_arg(c, a, "logEnviron", "logEnviron");
        break;
    case CW_CMD_CPDIR:
        if (text_arg(c, a, "fromdir", &parts[0], true))
            n += put_path(c, "from_path", parts, 1, false);
        if (c->rc == 0 && text_arg(c, a, "todir", &parts[0], true))
            n += put_path(c, "to_path", parts, 1, false);
        break;
    case CW_CMD_STAT:
        if (text_arg(c, a, "workdir", &parts[0], false) && text_arg(c, a, "file", &parts[1], true))
            n += put_path(c, "path", parts, 2, false);
        break;
    case CW_CMD_GLOB:
    case CW_CMD_RMFILE:
        if (text_arg(c, a, "path", &parts[0], true))
            n += put_path(c, "path", parts, 1, false);
        break;
    case CW_CMD_LISTDIR:
        if (text_arg(c, a, "dir", &parts[0], true))
            n += put_path(c, "path", parts, 1, false);
        break;
    case CW_CMD_UPLOAD_FILE:
    case CW_CMD_UPLOAD_DIRECTORY:
    case CW_CMD_DOWNLOAD_FILE: {
        const char *name = kind == CW_CMD_DOWNLOAD_FILE ? "workerdest" : "workersrc";
        if (text_arg(c, a, "workdir", &parts[0], false) && text_arg(c, a, name, &parts[1], true))
            n += put_path(c, "path", parts, 2, true);
        n += copy_arg(c, a, "blocksize", "blocksize");
        /* required keys of the msgpack form, None when the step gave none */
        static const char *const opt[] = {"maxsize", "compress", "mode", "keepstamp", NULL};
        for (size_t i = 0; opt[i]; i++) {
            if (copy_arg(c, a, opt[i], opt[i])) {
                n++;
            } else if (strcmp(opt[i], "keepstamp") != 0) {
                cw_pack_str(&c->pk, opt[i]);
                msgpack_pack_nil(&c->pk);
                n++;
            }
        }
        break;
    }
    default:
        break;
    }
    return n;
}

int cw_args_from_pb(cw_args_t *out, cw_cmd_kind_t kind, const cw_jelly_t *args,
                    const char *builder_dir, const char *home, cw_pb_refs_t *refs, char *err,
                    size_t errlen)
{
    memset(refs, 0, sizeof *refs);
    if (args == NULL || args->type != CW_JELLY_DICT)
        return cw_err_fmt(CW_EBADARG, err, errlen, "command arguments must be a dictionary");
    conv_t c = {.bdir = builder_dir, .home = home, .err = err, .errlen = errlen};
    /* keys first into a scratch packer, then the map header before them */
    cw_buf_t body = CW_BUF_INIT;
    cw_pack_init(&c.pk, &body);
    size_t n = convert(&c, kind, args);
    int rc = c.rc;
    if (rc == 0) {
        cw_pack_init(&c.pk, &c.buf);
        msgpack_pack_map(&c.pk, n);
        if (cw_buf_append(&c.buf, body.data, body.len) < 0)
            rc = -ENOMEM;
    }
    cw_buf_free(&body);
    msgpack_unpacked up;
    msgpack_unpacked_init(&up);
    size_t off = 0;
    if (rc == 0 && msgpack_unpack_next(&up, (const char *)c.buf.data, c.buf.len, &off) !=
                       MSGPACK_UNPACK_SUCCESS)
        rc = cw_err_fmt(-ENOMEM, err, errlen, "out of memory");
    if (rc == 0)
        rc = cw_args_parse(out, kind, &up.data, err, errlen);
    msgpack_unpacked_destroy(&up);
    cw_buf_free(&c.buf);
    if (rc == 0) {
        refs->writer = remote_arg(args, "writer");
        refs->reader = remote_arg(args, "reader");
    }
    return rc;
}
