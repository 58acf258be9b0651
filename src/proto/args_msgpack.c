/* start_command's arguments over msgpack (reference §7): validation of
 * every command's map into the neutral cw_args_t (args.h). */
#include "cworker/args.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cworker/msg.h"

/* The stock worker's class names, used in its "missing args" message. */
static const char *const cmd_class[CW_CMD__COUNT] = {
    [CW_CMD_SHELL] = "WorkerShellCommand",
    [CW_CMD_MKDIR] = "MakeDirectory",
    [CW_CMD_RMDIR] = "RemoveDirectory",
    [CW_CMD_CPDIR] = "CopyDirectory",
    [CW_CMD_STAT] = "StatFile",
    [CW_CMD_GLOB] = "GlobPath",
    [CW_CMD_LISTDIR] = "ListDir",
    [CW_CMD_RMFILE] = "RemoveFile",
    [CW_CMD_UPLOAD_FILE] = "WorkerFileUploadCommand",
    [CW_CMD_UPLOAD_DIRECTORY] = "WorkerDirectoryUploadCommand",
    [CW_CMD_DOWNLOAD_FILE] = "WorkerFileDownloadCommand",
};

/* True if the object is absent or nil. */
static bool is_none(const msgpack_object *o)
{
    return o == NULL || o->type == MSGPACK_OBJECT_NIL;
}

/* A str argument as a NUL-terminated heap string; embedded NULs refused. */
static int get_cstr(const msgpack_object *o, const char *key, char **out, char *err, size_t errlen)
{
    cw_str_t s;
    if (!cw_obj_str(o, &s))
        return cw_err_fmt(CW_EBADARG, err, errlen, "argument '%s' must be a string", key);
    if (memchr(s.ptr, '\0', s.len) != NULL)
        return cw_err_fmt(CW_EBADARG, err, errlen, "argument '%s' contains a NUL byte", key);
    *out = cw_str_dup(s);
    return *out ? 0 : -ENOMEM;
}

/* A required path-like str argument. */
static int req_str(const msgpack_object *args, const char *key, char **out, char *err,
                   size_t errlen)
{
    return get_cstr(cw_map_get(args, key), key, out, err, errlen);
}

/* An optional number (int or float) >= 0; nil/absent gives `def`. */
static int opt_num(const msgpack_object *args, const char *key, double def, double *out, char *err,
                   size_t errlen)
{
    const msgpack_object *o = cw_map_get(args, key);
    if (is_none(o)) {
        *out = def;
        return 0;
    }
    double v;
    if (!cw_obj_num(o, &v) || !isfinite(v) || v < 0)
        return cw_err_fmt(CW_EBADARG, err, errlen,
                          "argument '%s' must be a non-negative number or nil", key);
    *out = v;
    return 0;
}

/* An optional boolean; ints are accepted as truth values like Python does. */
static int opt_bool(const msgpack_object *args, const char *key, bool def, bool *out, char *err,
                    size_t errlen)
{
    const msgpack_object *o = cw_map_get(args, key);
    int64_t i;
    if (is_none(o))
        *out = def;
    else if (o->type == MSGPACK_OBJECT_BOOLEAN)
        *out = o->via.boolean;
    else if (cw_obj_int(o, &i))
        *out = i != 0;
    else
        return cw_err_fmt(CW_EBADARG, err, errlen, "argument '%s' must be a boolean", key);
    return 0;
}

/* One word of an argv command: a str, or ["obfuscated", real, fake]. */
static int parse_word(const msgpack_object *o, char **real, char **fake, char *err, size_t errlen)
{
    if (o->type == MSGPACK_OBJECT_ARRAY && o->via.array.size == 3) {
        const msgpack_object *e = o->via.array.ptr;
        cw_str_t tag;
        if (cw_obj_str(&e[0], &tag) && cw_str_eq(tag, "obfuscated")) {
            int rc = get_cstr(&e[1], "command", real, err, errlen);
            if (rc == 0)
                rc = get_cstr(&e[2], "command", fake, err, errlen);
            return rc;
        }
    }
    int64_t i;
    if (cw_obj_int(o, &i)) { /* numbers are fine words too */
        char tmp[32];
        snprintf(tmp, sizeof tmp, "%lld", (long long)i);
        *real = strdup(tmp);
        *fake = strdup(tmp);
        return *real && *fake ? 0 : -ENOMEM;
    }
    int rc = get_cstr(o, "command", real, err, errlen);
    if (rc == 0) {
        *fake = strdup(*real);
        if (*fake == NULL)
            return -ENOMEM;
    }
    return rc;
}

/* The shell `command`: a string for /bin/sh -c, or an argv array. */
static int parse_command(cw_args_t *a, const msgpack_object *o, char *err, size_t errlen)
{
    cw_str_t s;
    if (cw_obj_str(o, &s)) {
        a->command_is_string = true;
        a->argv = calloc(4, sizeof(char *));
        a->argv_fake = calloc(4, sizeof(char *));
        if (a->argv == NULL || a->argv_fake == NULL)
            return -ENOMEM;
        int rc = get_cstr(o, "command", &a->argv[2], err, errlen);
        if (rc < 0)
            return rc;
        a->argv[0] = strdup("/bin/sh");
        a->argv[1] = strdup("-c");
        a->argv_fake[0] = strdup("/bin/sh");
        a->argv_fake[1] = strdup("-c");
        a->argv_fake[2] = strdup(a->argv[2]);
        a->display = strdup(a->argv[2]);
        if (!a->argv[0] || !a->argv[1] || !a->argv_fake[0] || !a->argv_fake[1] ||
            !a->argv_fake[2] || !a->display)
            return -ENOMEM;
        return 0;
    }
    if (o->type != MSGPACK_OBJECT_ARRAY)
        return cw_err_fmt(CW_EBADARG, err, errlen,
                          "argument 'command' must be a string or a list of strings");
    uint32_t n = o->via.array.size;
    if (n == 0)
        return cw_err_fmt(CW_EBADARG, err, errlen, "argument 'command' is an empty list");
    a->argv = calloc((size_t)n + 1, sizeof(char *));
    a->argv_fake = calloc((size_t)n + 1, sizeof(char *));
    if (a->argv == NULL || a->argv_fake == NULL)
        return -ENOMEM;
    size_t dlen = 0;
    for (uint32_t i = 0; i < n; i++) {
        int rc = parse_word(&o->via.array.ptr[i], &a->argv[i], &a->argv_fake[i], err, errlen);
        if (rc < 0)
            return rc;
        dlen += strlen(a->argv_fake[i]) * 4 + 3;
    }
    a->display = malloc(dlen + 1);
    if (a->display == NULL)
        return -ENOMEM;
    a->display[0] = '\0';
    char *p = a->display;
    for (uint32_t i = 0; i < n; i++) {
        char *q = cw_shell_quote(a->argv_fake[i]);
        if (q == NULL)
            return -ENOMEM;
        if (i)
            *p++ = ' ';
        size_t ql = strlen(q);
        memcpy(p, q, ql + 1);
        p += ql;
        free(q);
    }
    return 0;
}

/* `logfiles`: name -> filename, or name -> {filename, follow}. */
static int parse_logfiles(cw_args_t *a, const msgpack_object *o, char *err, size_t errlen)
{
    if (is_none(o))
        return 0;
    if (o->type != MSGPACK_OBJECT_MAP)
        return cw_err_fmt(CW_EBADARG, err, errlen, "argument 'logfiles' must be a map");
    uint32_t n = o->via.map.size;
    if (n == 0)
        return 0;
    a->logfiles = calloc(n, sizeof *a->logfiles);
    if (a->logfiles == NULL)
        return -ENOMEM;
    for (uint32_t i = 0; i < n; i++) {
        const msgpack_object_kv *kv = &o->via.map.ptr[i];
        cw_logfile_arg_t *lf = &a->logfiles[a->nlogfiles++];
        int rc = get_cstr(&kv->key, "logfiles", &lf->name, err, errlen);
        if (rc < 0)
            return rc;
        if (kv->val.type == MSGPACK_OBJECT_MAP) {
            rc = req_str(&kv->val, "filename", &lf->filename, err, errlen);
            if (rc == CW_EBADARG)
                return cw_err_fmt(CW_EBADARG, err, errlen,
                                  "logfiles entry '%s' needs a 'filename' string", lf->name);
            if (rc < 0)
                return rc;
            rc = opt_bool(&kv->val, "follow", false, &lf->follow, err, errlen);
        } else {
            rc = get_cstr(&kv->val, "logfiles", &lf->filename, err, errlen);
        }
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* Arguments of `shell` (reference §7.1). */
static int parse_shell(cw_args_t *a, const msgpack_object *args, char *err, size_t errlen)
{
    int rc;
    const msgpack_object *o;
    if ((rc = parse_command(a, cw_map_get(args, "command"), err, errlen)) < 0)
        return rc;
    if ((rc = req_str(args, "workdir", &a->workdir, err, errlen)) < 0)
        return rc;
    o = cw_map_get(args, "env");
    if (!is_none(o)) {
        if (o->type != MSGPACK_OBJECT_MAP)
            return cw_err_fmt(CW_EBADARG, err, errlen, "argument 'env' must be a map");
        if ((rc = cw_env_arg_from_msgpack(&a->env, o)) < 0)
            return rc;
    }
    if ((rc = opt_bool(args, "want_stdout", true, &a->want_stdout, err, errlen)) < 0 ||
        (rc = opt_bool(args, "want_stderr", true, &a->want_stderr, err, errlen)) < 0 ||
        (rc = opt_bool(args, "usePTY", false, &a->use_pty, err, errlen)) < 0 ||
        (rc = opt_bool(args, "logEnviron", true, &a->log_environ, err, errlen)) < 0 ||
        (rc = opt_num(args, "timeout", -1, &a->timeout, err, errlen)) < 0 ||
        (rc = opt_num(args, "maxTime", -1, &a->max_time, err, errlen)) < 0 ||
        (rc = opt_num(args, "sigtermTime", -1, &a->sigterm_time, err, errlen)) < 0)
        return rc;
    /* timeout 0 means "none" for the stock worker (a falsy value). */
    if (a->timeout == 0)
        a->timeout = -1;
    if (a->max_time == 0)
        a->max_time = -1;

    snprintf(a->interrupt_signal_name, sizeof a->interrupt_signal_name, "KILL");
    a->interrupt_signal = SIGKILL;
    o = cw_map_get(args, "interruptSignal");
    if (!is_none(o)) {
        cw_str_t s;
        if (!cw_obj_str(o, &s) || s.len == 0 || s.len >= sizeof a->interrupt_signal_name)
            return cw_err_fmt(CW_EBADARG, err, errlen,
                              "argument 'interruptSignal' must be a signal name");
        memcpy(a->interrupt_signal_name, s.ptr, s.len);
        a->interrupt_signal_name[s.len] = '\0';
        if (strncmp(a->interrupt_signal_name, "SIG", 3) == 0)
            memmove(a->interrupt_signal_name, a->interrupt_signal_name + 3, s.len - 2);
        a->interrupt_signal = cw_signal_by_name(a->interrupt_signal_name);
        if (a->interrupt_signal < 0)
            return cw_err_fmt(CW_EBADARG, err, errlen, "unknown interruptSignal '%s'",
                              a->interrupt_signal_name);
    }

    o = cw_map_get(args, "initial_stdin");
    if (!is_none(o)) {
        cw_str_t s;
        if (!cw_obj_str(o, &s))
            return cw_err_fmt(CW_EBADARG, err, errlen, "argument 'initial_stdin' must be a string");
        a->has_initial_stdin = true;
        a->initial_stdin_len = s.len;
        a->initial_stdin = malloc(s.len ? s.len : 1);
        if (a->initial_stdin == NULL)
            return -ENOMEM;
        memcpy(a->initial_stdin, s.ptr, s.len);
    }
    if ((rc = parse_logfiles(a, cw_map_get(args, "logfiles"), err, errlen)) < 0)
        return rc;
    o = cw_map_get(args, "max_lines");
    if (!is_none(o) && (!cw_obj_int(o, &a->max_lines) || a->max_lines < 0))
        return cw_err_fmt(CW_EBADARG, err, errlen,
                          "argument 'max_lines' must be a non-negative integer or nil");
    return 0;
}

/* `paths`: a list of str (a single str is accepted too). */
static int parse_paths(cw_args_t *a, const msgpack_object *o, char *err, size_t errlen)
{
    cw_str_t s;
    if (cw_obj_str(o, &s)) {
        a->paths = calloc(2, sizeof(char *));
        if (a->paths == NULL)
            return -ENOMEM;
        a->npaths = 1;
        return get_cstr(o, "paths", &a->paths[0], err, errlen);
    }
    if (o->type != MSGPACK_OBJECT_ARRAY)
        return cw_err_fmt(CW_EBADARG, err, errlen, "argument 'paths' must be a list of strings");
    uint32_t n = o->via.array.size;
    a->paths = calloc((size_t)n + 1, sizeof(char *));
    if (a->paths == NULL)
        return -ENOMEM;
    for (uint32_t i = 0; i < n; i++) {
        int rc = get_cstr(&o->via.array.ptr[i], "paths", &a->paths[i], err, errlen);
        if (rc < 0)
            return rc;
        a->npaths++;
    }
    return 0;
}

/* blocksize / maxsize (required key, may be nil) / keepstamp / compress / mode. */
static int parse_transfer(cw_args_t *a, const msgpack_object *args, char *err, size_t errlen)
{
    int rc = req_str(args, "path", &a->path, err, errlen);
    if (rc < 0)
        return rc;
    const msgpack_object *o = cw_map_get(args, "blocksize");
    if (is_none(o)) {
        a->blocksize = 16384;
    } else if (!cw_obj_int(o, &a->blocksize) || a->blocksize <= 0) {
        return cw_err_fmt(CW_EBADARG, err, errlen,
                          "argument 'blocksize' must be a positive integer");
    }
    if (a->blocksize > (16 << 20))
        a->blocksize = 16 << 20;
    o = cw_map_get(args, "maxsize");
    if (o == NULL)
        return cw_err_fmt(CW_EBADARG, err, errlen, "'maxsize'");
    a->maxsize = -1;
    if (o->type != MSGPACK_OBJECT_NIL && (!cw_obj_int(o, &a->maxsize) || a->maxsize < 0))
        return cw_err_fmt(CW_EBADARG, err, errlen,
                          "argument 'maxsize' must be a non-negative integer or nil");
    if ((rc = opt_bool(args, "keepstamp", false, &a->keepstamp, err, errlen)) < 0)
        return rc;
    /* cworker-master's "pipeline": a hint, so a value that is not a small
     * positive integer means one request at a time */
    int64_t pipeline;
    o = cw_map_get(args, "pipeline");
    if (o && cw_obj_int(o, &pipeline) && pipeline > 1)
        a->pipeline = pipeline > 16 ? 16 : (int)pipeline;
    if (a->kind == CW_CMD_UPLOAD_DIRECTORY) {
        o = cw_map_get(args, "compress");
        if (o == NULL)
            return cw_err_fmt(CW_EBADARG, err, errlen, "'compress'");
        cw_str_t s;
        if (o->type == MSGPACK_OBJECT_NIL)
            a->compress = CW_COMPRESS_NONE;
        else if (cw_obj_str(o, &s) && cw_str_eq(s, "gz"))
            a->compress = CW_COMPRESS_GZ;
        else if (cw_obj_str(o, &s) && cw_str_eq(s, "bz2"))
            a->compress = CW_COMPRESS_BZ2;
        else
            return cw_err_fmt(CW_EBADARG, err, errlen,
                              "argument 'compress' must be nil, \"gz\" or \"bz2\"");
    }
    if (a->kind == CW_CMD_DOWNLOAD_FILE) {
        o = cw_map_get(args, "mode");
        if (o == NULL)
            return cw_err_fmt(CW_EBADARG, err, errlen, "'mode'");
        int64_t m;
        a->mode = -1;
        if (o->type != MSGPACK_OBJECT_NIL) {
            if (!cw_obj_int(o, &m) || m < 0 || m > 07777)
                return cw_err_fmt(CW_EBADARG, err, errlen,
                                  "argument 'mode' must be permission bits or nil");
            a->mode = (int)m;
        }
    }
    return 0;
}

/* Names of the required keys missing from args, stock style. */
static bool check_required(cw_cmd_kind_t kind, const msgpack_object *args, char *err, size_t errlen)
{
    static const char *const req[CW_CMD__COUNT][3] = {
        [CW_CMD_SHELL] = {"workdir", "command", NULL},
        [CW_CMD_MKDIR] = {"paths", NULL},
        [CW_CMD_RMDIR] = {"paths", NULL},
        [CW_CMD_CPDIR] = {"to_path", "from_path", NULL},
        [CW_CMD_STAT] = {"path", NULL},
        [CW_CMD_GLOB] = {"path", NULL},
        [CW_CMD_LISTDIR] = {"path", NULL},
        [CW_CMD_RMFILE] = {"path", NULL},
        [CW_CMD_UPLOAD_FILE] = {"path", NULL},
        [CW_CMD_UPLOAD_DIRECTORY] = {"path", NULL},
        [CW_CMD_DOWNLOAD_FILE] = {"path", NULL},
    };
    char missing[128] = "";
    for (int i = 0; req[kind][i]; i++) {
        if (cw_map_get(args, req[kind][i]) != NULL)
            continue;
        if (missing[0])
            strncat(missing, ", ", sizeof missing - strlen(missing) - 1);
        strncat(missing, req[kind][i], sizeof missing - strlen(missing) - 1);
    }
    if (!missing[0])
        return true;
    snprintf(err, errlen, "%s is missing args: %s", cmd_class[kind], missing);
    return false;
}

int cw_args_parse(cw_args_t *a, cw_cmd_kind_t kind, const msgpack_object *args, char *err,
                  size_t errlen)
{
    memset(a, 0, sizeof *a);
    a->kind = kind;
    a->maxsize = -1;
    a->mode = -1;
    a->timeout = a->max_time = a->sigterm_time = -1;
    if (args == NULL || args->type != MSGPACK_OBJECT_MAP)
        return cw_err_fmt(CW_EBADARG, err, errlen, "command arguments must be a map");
    if (!check_required(kind, args, err, errlen))
        return CW_EBADARG;
    int rc = 0;
    switch (kind) {
    case CW_CMD_SHELL:
        rc = parse_shell(a, args, err, errlen);
        break;
    case CW_CMD_MKDIR:
    case CW_CMD_RMDIR:
        rc = parse_paths(a, cw_map_get(args, "paths"), err, errlen);
        if (rc == 0 && kind == CW_CMD_RMDIR)
            rc = opt_bool(args, "logEnviron", true, &a->log_environ, err, errlen);
        break;
    case CW_CMD_CPDIR:
        rc = req_str(args, "from_path", &a->from_path, err, errlen);
        if (rc == 0)
            rc = req_str(args, "to_path", &a->to_path, err, errlen);
        break;
    case CW_CMD_STAT:
    case CW_CMD_GLOB:
    case CW_CMD_LISTDIR:
    case CW_CMD_RMFILE:
        rc = req_str(args, "path", &a->path, err, errlen);
        break;
    case CW_CMD_UPLOAD_FILE:
    case CW_CMD_UPLOAD_DIRECTORY:
    case CW_CMD_DOWNLOAD_FILE:
        rc = parse_transfer(a, args, err, errlen);
        break;
    default:
        rc = cw_err_fmt(CW_EBADARG, err, errlen, "unknown command kind");
        break;
    }
    if (rc < 0) {
        if (rc == -ENOMEM)
            snprintf(err, errlen, "out of memory");
        cw_args_free(a);
    }
    return rc;
}

/* A counted copy (NUL-terminated too). */
static int str_copy(cw_str_t *out, const char *p, size_t n)
{
    char *c = malloc(n + 1);
    if (c == NULL)
        return -ENOMEM;
    if (n)
        memcpy(c, p, n);
    c[n] = '\0';
    *out = (cw_str_t){c, n};
    return 0;
}

/* One entry of the env map. */
static int env_entry(cw_env_entry_t *e, const msgpack_object *k, const msgpack_object *v)
{
    memset(e, 0, sizeof *e);
    e->key_is_str = k->type == MSGPACK_OBJECT_STR;
    if (e->key_is_str && str_copy(&e->key, k->via.str.ptr, k->via.str.size) < 0)
        return -ENOMEM;
    if (!e->key_is_str && str_copy(&e->key, "", 0) < 0)
        return -ENOMEM;
    if (v->type == MSGPACK_OBJECT_NIL) {
        e->kind = CW_ENV_UNSET;
        return 0;
    }
    uint32_t n = v->type == MSGPACK_OBJECT_STR     ? 1
                 : v->type == MSGPACK_OBJECT_ARRAY ? v->via.array.size
                                                   : 0;
    if (v->type != MSGPACK_OBJECT_STR && v->type != MSGPACK_OBJECT_ARRAY) {
        e->kind = CW_ENV_BAD;
        return 0;
    }
    e->kind = v->type == MSGPACK_OBJECT_STR ? CW_ENV_STR : CW_ENV_LIST;
    if (n > 0 && (e->values = calloc(n, sizeof *e->values)) == NULL)
        return -ENOMEM;
    for (uint32_t j = 0; j < n; j++) {
        const msgpack_object *el = v->type == MSGPACK_OBJECT_STR ? v : &v->via.array.ptr[j];
        if (el->type != MSGPACK_OBJECT_STR) {
            e->kind = CW_ENV_BAD;
            return 0;
        }
        if (str_copy(&e->values[j], el->via.str.ptr, el->via.str.size) < 0)
            return -ENOMEM;
        e->nvalues++;
    }
    return 0;
}

int cw_env_arg_from_msgpack(cw_env_arg_t *out, const msgpack_object *env)
{
    memset(out, 0, sizeof *out);
    if (env == NULL || env->type == MSGPACK_OBJECT_NIL)
        return 0;
    out->given = true;
    if (env->type != MSGPACK_OBJECT_MAP) {
        out->not_a_map = true;
        return 0;
    }
    uint32_t n = env->via.map.size;
    if (n > 0 && (out->v = calloc(n, sizeof *out->v)) == NULL)
        return -ENOMEM;
    for (uint32_t k = 0; k < n; k++) {
        out->n++;
        if (env_entry(&out->v[k], &env->via.map.ptr[k].key, &env->via.map.ptr[k].val) < 0) {
            cw_env_arg_free(out);
            return -ENOMEM;
        }
    }
    return 0;
}
