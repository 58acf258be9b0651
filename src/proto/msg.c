/* Message layer: envelope and typed ops of msgpack_experimental_v7, sans-I/O.
 *
 * Obligatory keys per op follow what the stock 3.7 peers check with
 * contains_msg_key(), in the same order, so a message lacking several keys
 * gets the same error text (the first missing one):
 *
 *   master -> worker (buildbot_worker/msgpack.py)
 *     print                message                                   l.200
 *     keepalive, get_worker_info, shutdown: none                     l.209-275
 *     set_worker_settings  args; then buffer_size, buffer_timeout,
 *                          newline_re, max_line_length inside args
 *                          ("obligatory settings for worker")        l.233-236
 *     start_command        command_id, command_name, args            l.253
 *                          (builder_name is never read by the stock
 *                          worker: kept if it is a str, else ignored)
 *     interrupt_command    command_id, why                           l.280
 *   worker -> master (buildbot/worker/protocols/manager/msgpack.py)
 *     update               command_id, args                          l.121
 *     complete             command_id, args (nil allowed)            l.139
 *     update_upload_file_write       command_id, args                l.162
 *     update_upload_file_utime       command_id, access_time,
 *                                    modified_time                   l.179
 *     update_upload_file_close       command_id                      l.196
 *     update_read_file               command_id, length              l.213
 *     update_read_file_close         command_id                      l.230
 *     update_upload_directory_unpack command_id                      l.247
 *     update_upload_directory_write  command_id, args                l.264
 *   response (both)        result; a missing one is CW_EBADMSG, since the
 *                          stock peers' msg['result'] raises and drops the
 *                          connection (l.328-330 / l.330-332).
 *
 * The stock peers use values with whatever type they have; we check the types
 * the stock senders produce, after all presence checks, and report a wrong
 * type as CW_EMSGKEY too.
 */
#include "cworker/msg.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* Wire names, indexed by cw_op_t. */
static const char *const op_names[CW_OP__COUNT] = {
    [CW_OP_UNKNOWN] = "unknown",
    [CW_OP_RESPONSE] = "response",
    [CW_OP_PRINT] = "print",
    [CW_OP_KEEPALIVE] = "keepalive",
    [CW_OP_GET_WORKER_INFO] = "get_worker_info",
    [CW_OP_SET_WORKER_SETTINGS] = "set_worker_settings",
    [CW_OP_START_COMMAND] = "start_command",
    [CW_OP_INTERRUPT_COMMAND] = "interrupt_command",
    [CW_OP_SHUTDOWN] = "shutdown",
    [CW_OP_UPDATE] = "update",
    [CW_OP_COMPLETE] = "complete",
    [CW_OP_UPLOAD_FILE_WRITE] = "update_upload_file_write",
    [CW_OP_UPLOAD_FILE_CLOSE] = "update_upload_file_close",
    [CW_OP_UPLOAD_FILE_UTIME] = "update_upload_file_utime",
    [CW_OP_UPLOAD_DIRECTORY_WRITE] = "update_upload_directory_write",
    [CW_OP_UPLOAD_DIRECTORY_UNPACK] = "update_upload_directory_unpack",
    [CW_OP_READ_FILE] = "update_read_file",
    [CW_OP_READ_FILE_CLOSE] = "update_read_file_close",
};

/* Name of an op; "unknown" for CW_OP_UNKNOWN and out-of-range values. */
const char *cw_op_name(cw_op_t op)
{
    if ((unsigned)op >= CW_OP__COUNT)
        return op_names[CW_OP_UNKNOWN];
    return op_names[op];
}

int cw_op_unknown_text(cw_buf_t *out, cw_str_t op_name)
{
    int rc = cw_buf_printf(out, "Command %.*s does not exist.", (int)op_name.len, op_name.ptr);
    return rc < 0 ? rc : cw_buf_append(out, "", 1);
}

/* True if a peer on `side` accepts op as a request (responses are separate). */
static bool side_knows(cw_side_t side, cw_op_t op)
{
    if (side == CW_SIDE_WORKER)
        return op >= CW_OP_PRINT && op <= CW_OP_SHUTDOWN;
    return op >= CW_OP_UPDATE && op <= CW_OP_READ_FILE_CLOSE;
}

/* Map a received op name to the op the decoding side knows. */
static cw_op_t lookup_op(cw_side_t side, cw_str_t name)
{
    if (cw_str_eq(name, op_names[CW_OP_RESPONSE]))
        return CW_OP_RESPONSE;
    for (int op = CW_OP_PRINT; op < CW_OP__COUNT; op++) {
        if (side_knows(side, (cw_op_t)op) && cw_str_eq(name, op_names[op]))
            return (cw_op_t)op;
    }
    return CW_OP_UNKNOWN;
}

/* ---- object helpers ---- */

/* Last entry of map whose str/bin key equals key: a Python dict built from a
 * map with duplicate keys keeps the last value, and so do we. */
const msgpack_object *cw_map_get(const msgpack_object *map, const char *key)
{
    if (map == NULL || map->type != MSGPACK_OBJECT_MAP)
        return NULL;
    const size_t klen = strlen(key);
    const msgpack_object *found = NULL;
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object *k = &map->via.map.ptr[i].key;
        cw_str_t s;
        if (cw_obj_str(k, &s) && s.len == klen && (klen == 0 || memcmp(s.ptr, key, klen) == 0))
            found = &map->via.map.ptr[i].val;
    }
    return found;
}

/* View a str or bin object as a counted string. */
bool cw_obj_str(const msgpack_object *o, cw_str_t *out)
{
    if (o == NULL)
        return false;
    if (o->type == MSGPACK_OBJECT_STR) {
        out->ptr = o->via.str.ptr;
        out->len = o->via.str.size;
        return true;
    }
    if (o->type == MSGPACK_OBJECT_BIN) {
        out->ptr = o->via.bin.ptr;
        out->len = o->via.bin.size;
        return true;
    }
    return false;
}

/* Read an int object that fits int64_t (booleans are not ints here). */
bool cw_obj_int(const msgpack_object *o, int64_t *out)
{
    if (o == NULL)
        return false;
    if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
        if (o->via.u64 > (uint64_t)INT64_MAX)
            return false;
        *out = (int64_t)o->via.u64;
        return true;
    }
    if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
        *out = o->via.i64;
        return true;
    }
    return false;
}

/* Read an int or float object as a double. */
bool cw_obj_num(const msgpack_object *o, double *out)
{
    if (o == NULL)
        return false;
    switch (o->type) {
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        *out = (double)o->via.u64;
        return true;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        *out = (double)o->via.i64;
        return true;
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        *out = o->via.f64;
        return true;
    default:
        return false;
    }
}

/* ---- decoding ---- */

/* The stock peers' KeyError text; str(KeyError) adds the single quotes. */
static int missing_key(char *err, size_t errlen, const char *key)
{
    return cw_err_fmt(CW_EMSGKEY, err, errlen, "'message did not contain obligatory \"%s\" key'",
                      key);
}

/* Our text for a present key of the wrong type (the stock peers have none). */
static int wrong_type(char *err, size_t errlen, const char *key, const char *expected)
{
    return cw_err_fmt(CW_EMSGKEY, err, errlen,
                      "message key \"%s\" has the wrong type (expected %s)", key, expected);
}

/* Presence check of the keys in stock order; the first absent one is named. */
static int require_keys(const msgpack_object *root, const char *const *keys, size_t nkeys,
                        char *err, size_t errlen)
{
    for (size_t i = 0; i < nkeys; i++) {
        if (cw_map_get(root, keys[i]) == NULL)
            return missing_key(err, errlen, keys[i]);
    }
    return 0;
}

/* Fetch a key the caller has already checked is present, as str. */
static int get_str(const msgpack_object *root, const char *key, cw_str_t *out, char *err,
                   size_t errlen)
{
    const msgpack_object *o = cw_map_get(root, key);
    if (o == NULL || o->type != MSGPACK_OBJECT_STR)
        return wrong_type(err, errlen, key, "str");
    out->ptr = o->via.str.ptr;
    out->len = o->via.str.size;
    return 0;
}

/* The update payload: an array of [str key, value] pairs (§3.3 of the
 * reference); the master iterates it as pairs, so anything else is refused. */
static bool update_args_ok(const msgpack_object *o)
{
    if (o->type != MSGPACK_OBJECT_ARRAY)
        return false;
    for (uint32_t i = 0; i < o->via.array.size; i++) {
        const msgpack_object *pair = &o->via.array.ptr[i];
        if (pair->type != MSGPACK_OBJECT_ARRAY || pair->via.array.size != 2 ||
            pair->via.array.ptr[0].type != MSGPACK_OBJECT_STR)
            return false;
    }
    return true;
}

/* set_worker_settings: args map with all four settings (stock l.233-236). */
static int decode_settings(cw_msg_t *m, const msgpack_object *root, char *err, size_t errlen)
{
    static const char *const keys[] = {"args"};
    int rc = require_keys(root, keys, 1, err, errlen);
    if (rc < 0)
        return rc;
    const msgpack_object *args = cw_map_get(root, "args");
    if (args->type != MSGPACK_OBJECT_MAP)
        return wrong_type(err, errlen, "args", "map");
    /* Stock check order; any absent one gives the same text. */
    static const char *const settings[] = {"buffer_size", "buffer_timeout", "newline_re",
                                           "max_line_length"};
    for (size_t i = 0; i < 4; i++) {
        if (cw_map_get(args, settings[i]) == NULL)
            return cw_err_fmt(CW_EMSGKEY, err, errlen,
                              "'message did not contain obligatory settings for worker'");
    }
    /* Negative sizes mean nothing and would only trip the output layer. */
    struct {
        const char *key;
        int64_t *out;
    } ints[] = {
        {"buffer_size", &m->u.settings.buffer_size},
        {"buffer_timeout", &m->u.settings.buffer_timeout},
        {"max_line_length", &m->u.settings.max_line_length},
    };
    for (size_t i = 0; i < 3; i++) {
        if (!cw_obj_int(cw_map_get(args, ints[i].key), ints[i].out) || *ints[i].out < 0)
            return cw_err_fmt(CW_EMSGKEY, err, errlen,
                              "setting \"%s\" has the wrong type (expected non-negative int)",
                              ints[i].key);
    }
    const msgpack_object *re = cw_map_get(args, "newline_re");
    if (re->type != MSGPACK_OBJECT_STR)
        return cw_err_fmt(CW_EMSGKEY, err, errlen,
                          "setting \"newline_re\" has the wrong type "
                          "(expected str)");
    m->u.settings.newline_re.ptr = re->via.str.ptr;
    m->u.settings.newline_re.len = re->via.str.size;
    return 0;
}

/* Requests a worker receives. */
static int decode_worker_op(cw_msg_t *m, const msgpack_object *root, char *err, size_t errlen)
{
    int rc = 0;
    switch (m->op) {
    case CW_OP_PRINT: {
        static const char *const keys[] = {"message"};
        if ((rc = require_keys(root, keys, 1, err, errlen)) < 0)
            return rc;
        return get_str(root, "message", &m->u.print.message, err, errlen);
    }
    case CW_OP_KEEPALIVE:
    case CW_OP_GET_WORKER_INFO:
    case CW_OP_SHUTDOWN:
        return 0;
    case CW_OP_SET_WORKER_SETTINGS:
        return decode_settings(m, root, err, errlen);
    case CW_OP_START_COMMAND: {
        static const char *const keys[] = {"command_id", "command_name", "args"};
        if ((rc = require_keys(root, keys, 3, err, errlen)) < 0)
            return rc;
        if ((rc = get_str(root, "command_id", &m->u.start.command_id, err, errlen)) < 0 ||
            (rc = get_str(root, "command_name", &m->u.start.command_name, err, errlen)) < 0)
            return rc;
        const msgpack_object *args = cw_map_get(root, "args");
        if (args->type != MSGPACK_OBJECT_MAP)
            return wrong_type(err, errlen, "args", "map");
        m->u.start.args = *args;
        const msgpack_object *bn = cw_map_get(root, "builder_name");
        if (bn != NULL && bn->type == MSGPACK_OBJECT_STR) {
            m->u.start.has_builder_name = true;
            m->u.start.builder_name.ptr = bn->via.str.ptr;
            m->u.start.builder_name.len = bn->via.str.size;
        }
        return 0;
    }
    case CW_OP_INTERRUPT_COMMAND: {
        static const char *const keys[] = {"command_id", "why"};
        if ((rc = require_keys(root, keys, 2, err, errlen)) < 0)
            return rc;
        if ((rc = get_str(root, "command_id", &m->u.interrupt.command_id, err, errlen)) < 0)
            return rc;
        return get_str(root, "why", &m->u.interrupt.why, err, errlen);
    }
    default:
        return cw_err_fmt(CW_EBADMSG, err, errlen, "internal: op %d on the worker side",
                          (int)m->op);
    }
}

/* Requests a master receives. */
static int decode_master_op(cw_msg_t *m, const msgpack_object *root, char *err, size_t errlen)
{
    static const char *const k_id[] = {"command_id"};
    static const char *const k_id_args[] = {"command_id", "args"};
    static const char *const k_utime[] = {"command_id", "access_time", "modified_time"};
    static const char *const k_read[] = {"command_id", "length"};
    int rc = 0;
    const msgpack_object *args = NULL;

    switch (m->op) {
    case CW_OP_UPDATE:
        if ((rc = require_keys(root, k_id_args, 2, err, errlen)) < 0 ||
            (rc = get_str(root, "command_id", &m->u.update.command_id, err, errlen)) < 0)
            return rc;
        args = cw_map_get(root, "args");
        if (!update_args_ok(args))
            return wrong_type(err, errlen, "args", "array of [str, value] pairs");
        m->u.update.args = *args;
        return 0;
    case CW_OP_COMPLETE:
        if ((rc = require_keys(root, k_id_args, 2, err, errlen)) < 0 ||
            (rc = get_str(root, "command_id", &m->u.complete.command_id, err, errlen)) < 0)
            return rc;
        args = cw_map_get(root, "args");
        if (args->type == MSGPACK_OBJECT_NIL)
            return 0;
        if (!cw_obj_str(args, &m->u.complete.failure))
            return wrong_type(err, errlen, "args", "nil or str");
        m->u.complete.failed = true;
        return 0;
    case CW_OP_UPLOAD_FILE_WRITE:
    case CW_OP_UPLOAD_DIRECTORY_WRITE: {
        cw_str_t data;
        if ((rc = require_keys(root, k_id_args, 2, err, errlen)) < 0 ||
            (rc = get_str(root, "command_id", &m->u.write.command_id, err, errlen)) < 0)
            return rc;
        /* The stock master's remote_write() takes str as well as bytes. */
        if (!cw_obj_str(cw_map_get(root, "args"), &data))
            return wrong_type(err, errlen, "args", "bin");
        m->u.write.data = (const uint8_t *)data.ptr;
        m->u.write.len = data.len;
        return 0;
    }
    case CW_OP_UPLOAD_FILE_CLOSE:
    case CW_OP_UPLOAD_DIRECTORY_UNPACK:
    case CW_OP_READ_FILE_CLOSE:
        if ((rc = require_keys(root, k_id, 1, err, errlen)) < 0)
            return rc;
        return get_str(root, "command_id", &m->u.cmd.command_id, err, errlen);
    case CW_OP_UPLOAD_FILE_UTIME:
        if ((rc = require_keys(root, k_utime, 3, err, errlen)) < 0 ||
            (rc = get_str(root, "command_id", &m->u.utime.command_id, err, errlen)) < 0)
            return rc;
        /* os.utime() refuses NaN and infinities; so do we, up front. */
        if (!cw_obj_num(cw_map_get(root, "access_time"), &m->u.utime.access_time) ||
            !isfinite(m->u.utime.access_time))
            return wrong_type(err, errlen, "access_time", "finite number");
        if (!cw_obj_num(cw_map_get(root, "modified_time"), &m->u.utime.modified_time) ||
            !isfinite(m->u.utime.modified_time))
            return wrong_type(err, errlen, "modified_time", "finite number");
        return 0;
    case CW_OP_READ_FILE:
        if ((rc = require_keys(root, k_read, 2, err, errlen)) < 0 ||
            (rc = get_str(root, "command_id", &m->u.read_file.command_id, err, errlen)) < 0)
            return rc;
        if (!cw_obj_int(cw_map_get(root, "length"), &m->u.read_file.length) ||
            m->u.read_file.length < 0)
            return wrong_type(err, errlen, "length", "non-negative int");
        return 0;
    default:
        return cw_err_fmt(CW_EBADMSG, err, errlen, "internal: op %d on the master side",
                          (int)m->op);
    }
}

int cw_msg_decode(cw_msg_t *m, msgpack_unpacked *up, cw_side_t side, const uint8_t *data,
                  size_t len, char *err, size_t errlen)
{
    memset(m, 0, sizeof(*m));
    if (err != NULL && errlen > 0)
        err[0] = '\0';

    /* Bounds every allocation msgpack-c makes below (see mpcheck.c). */
    int rc = cw_msgpack_check(data, len, CW_MSG_MAX_DEPTH, err, errlen);
    if (rc < 0)
        return rc;

    size_t off = 0;
    msgpack_unpack_return ur = msgpack_unpack_next(up, (const char *)data, len, &off);
    if (ur == MSGPACK_UNPACK_NOMEM_ERROR)
        return cw_err_fmt(-ENOMEM, err, errlen, "out of memory decoding msgpack");
    if (ur != MSGPACK_UNPACK_SUCCESS || off != len)
        return cw_err_fmt(CW_EBADMSG, err, errlen, "msgpack-c refused the message (%d)", (int)ur);

    const msgpack_object *root = &up->data;
    if (root->type != MSGPACK_OBJECT_MAP)
        return cw_err_fmt(CW_EBADMSG, err, errlen, "message is not a map");

    const msgpack_object *op = cw_map_get(root, "op");
    const msgpack_object *seq = cw_map_get(root, "seq_number");
    if (op == NULL || seq == NULL)
        return cw_err_fmt(CW_EIGNORE, err, errlen, "message without \"op\" or \"seq_number\"");
    if (op->type != MSGPACK_OBJECT_STR)
        return cw_err_fmt(CW_EIGNORE, err, errlen, "message whose \"op\" is not a str");
    if (!cw_obj_int(seq, &m->seq))
        return cw_err_fmt(CW_EIGNORE, err, errlen, "message whose \"seq_number\" is not an int64");
    m->op_name.ptr = op->via.str.ptr;
    m->op_name.len = op->via.str.size;
    m->op = lookup_op(side, m->op_name);

    switch (m->op) {
    case CW_OP_UNKNOWN:
        return 0;
    case CW_OP_RESPONSE: {
        const msgpack_object *result = cw_map_get(root, "result");
        if (result == NULL)
            return cw_err_fmt(CW_EBADMSG, err, errlen, "response without \"result\"");
        m->u.response.result = *result;
        /* Presence only, like the stock peers: even false means exception. */
        m->u.response.is_exception = cw_map_get(root, "is_exception") != NULL;
        return 0;
    }
    default:
        break;
    }
    rc = side == CW_SIDE_WORKER ? decode_worker_op(m, root, err, errlen)
                                : decode_master_op(m, root, err, errlen);
    if (rc < 0) {
        /* Keep the envelope for the exception answer; drop half-filled fields. */
        memset(&m->u, 0, sizeof(m->u));
    }
    return rc;
}

/* ---- encoding ---- */

/* msgpack_packer write callback: append to the cw_buf_t; its -ENOMEM becomes
 * the return value of every msgpack_pack_* call. */
static int buf_write(void *data, const char *buf, size_t len)
{
    return cw_buf_append(data, buf, len);
}

void cw_pack_init(msgpack_packer *pk, cw_buf_t *out)
{
    msgpack_packer_init(pk, out, buf_write);
}

int cw_pack_strn(msgpack_packer *pk, const char *s, size_t len)
{
    /* msgpack lengths are 32-bit; msgpack-c would silently truncate. */
    if (len > UINT32_MAX)
        return CW_ETOOBIG;
    return msgpack_pack_str_with_body(pk, s, len);
}

int cw_pack_str(msgpack_packer *pk, const char *s)
{
    return cw_pack_strn(pk, s, strlen(s));
}

int cw_pack_cwstr(msgpack_packer *pk, cw_str_t s)
{
    return cw_pack_strn(pk, s.ptr, s.len);
}

int cw_pack_bin(msgpack_packer *pk, const void *data, size_t len)
{
    if (len > UINT32_MAX)
        return CW_ETOOBIG;
    return msgpack_pack_bin_with_body(pk, data, len);
}

/* Pack the first keys of a response map of n entries. */
static int response_head(msgpack_packer *pk, size_t n, int64_t seq)
{
    int rc;
    if ((rc = msgpack_pack_map(pk, n)) != 0 || (rc = cw_pack_str(pk, "op")) != 0 ||
        (rc = cw_pack_str(pk, "response")) != 0 || (rc = cw_pack_str(pk, "seq_number")) != 0 ||
        (rc = msgpack_pack_int64(pk, seq)) != 0)
        return rc;
    return cw_pack_str(pk, "result");
}

int cw_pack_response_begin(msgpack_packer *pk, int64_t seq)
{
    return response_head(pk, 3, seq);
}

int cw_pack_response_nil(msgpack_packer *pk, int64_t seq)
{
    int rc = response_head(pk, 3, seq);
    return rc != 0 ? rc : msgpack_pack_nil(pk);
}

int cw_pack_response_error(msgpack_packer *pk, int64_t seq, const char *msg, size_t len)
{
    int rc;
    if ((rc = response_head(pk, 4, seq)) != 0 || (rc = cw_pack_strn(pk, msg, len)) != 0 ||
        (rc = cw_pack_str(pk, "is_exception")) != 0)
        return rc;
    return msgpack_pack_true(pk);
}

int cw_pack_request_begin(msgpack_packer *pk, cw_op_t op, size_t nextra)
{
    if (op <= CW_OP_RESPONSE || op >= CW_OP__COUNT)
        return -EINVAL;
    if (nextra > UINT32_MAX - 2)
        return CW_ETOOBIG;
    int rc;
    if ((rc = msgpack_pack_map(pk, nextra + 2)) != 0 || (rc = cw_pack_str(pk, "op")) != 0)
        return rc;
    return cw_pack_str(pk, op_names[op]);
}

int cw_pack_request_end(msgpack_packer *pk, int64_t seq)
{
    int rc = cw_pack_str(pk, "seq_number");
    return rc != 0 ? rc : msgpack_pack_int64(pk, seq);
}

/* Pack one "key": str pair. */
static int kv_str(msgpack_packer *pk, const char *key, const char *val)
{
    int rc = cw_pack_str(pk, key);
    return rc != 0 ? rc : cw_pack_str(pk, val);
}

/* Pack one "key": int pair. */
static int kv_int(msgpack_packer *pk, const char *key, int64_t val)
{
    int rc = cw_pack_str(pk, key);
    return rc != 0 ? rc : msgpack_pack_int64(pk, val);
}

/* Pack the trailing "command_id" pair and seq_number of worker requests. */
static int end_with_command_id(msgpack_packer *pk, int64_t seq, cw_str_t command_id)
{
    int rc;
    if ((rc = cw_pack_str(pk, "command_id")) != 0 || (rc = cw_pack_cwstr(pk, command_id)) != 0)
        return rc;
    return cw_pack_request_end(pk, seq);
}

int cw_pack_print(msgpack_packer *pk, int64_t seq, const char *message)
{
    int rc;
    if ((rc = cw_pack_request_begin(pk, CW_OP_PRINT, 1)) != 0 ||
        (rc = kv_str(pk, "message", message)) != 0)
        return rc;
    return cw_pack_request_end(pk, seq);
}

int cw_pack_simple(msgpack_packer *pk, int64_t seq, cw_op_t op)
{
    if (op != CW_OP_KEEPALIVE && op != CW_OP_GET_WORKER_INFO && op != CW_OP_SHUTDOWN)
        return -EINVAL;
    int rc = cw_pack_request_begin(pk, op, 0);
    return rc != 0 ? rc : cw_pack_request_end(pk, seq);
}

int cw_pack_set_worker_settings(msgpack_packer *pk, int64_t seq, int64_t buffer_size,
                                int64_t buffer_timeout, int64_t max_line_length,
                                const char *newline_re)
{
    int rc;
    /* The stock master's key order inside args. */
    if ((rc = cw_pack_request_begin(pk, CW_OP_SET_WORKER_SETTINGS, 1)) != 0 ||
        (rc = cw_pack_str(pk, "args")) != 0 || (rc = msgpack_pack_map(pk, 4)) != 0 ||
        (rc = kv_str(pk, "newline_re", newline_re)) != 0 ||
        (rc = kv_int(pk, "max_line_length", max_line_length)) != 0 ||
        (rc = kv_int(pk, "buffer_timeout", buffer_timeout)) != 0 ||
        (rc = kv_int(pk, "buffer_size", buffer_size)) != 0)
        return rc;
    return cw_pack_request_end(pk, seq);
}

int cw_pack_start_command_begin(msgpack_packer *pk, const char *command_id,
                                const char *command_name, const char *builder_name)
{
    int rc;
    /* Stock order: op, builder_name, command_id, command_name, args. */
    if ((rc = cw_pack_request_begin(pk, CW_OP_START_COMMAND, builder_name ? 4 : 3)) != 0)
        return rc;
    if (builder_name != NULL && (rc = kv_str(pk, "builder_name", builder_name)) != 0)
        return rc;
    if ((rc = kv_str(pk, "command_id", command_id)) != 0 ||
        (rc = kv_str(pk, "command_name", command_name)) != 0)
        return rc;
    return cw_pack_str(pk, "args");
}

int cw_pack_interrupt_command(msgpack_packer *pk, int64_t seq, const char *command_id,
                              const char *why)
{
    int rc;
    /* The stock worker requires why; an empty one is still a why. */
    if ((rc = cw_pack_request_begin(pk, CW_OP_INTERRUPT_COMMAND, 2)) != 0 ||
        (rc = kv_str(pk, "command_id", command_id)) != 0 ||
        (rc = kv_str(pk, "why", why ? why : "")) != 0)
        return rc;
    return cw_pack_request_end(pk, seq);
}

int cw_pack_complete(msgpack_packer *pk, int64_t seq, cw_str_t command_id, const char *failure)
{
    int rc;
    if ((rc = cw_pack_request_begin(pk, CW_OP_COMPLETE, 2)) != 0 ||
        (rc = cw_pack_str(pk, "args")) != 0)
        return rc;
    rc = failure != NULL ? cw_pack_str(pk, failure) : msgpack_pack_nil(pk);
    return rc != 0 ? rc : end_with_command_id(pk, seq, command_id);
}

int cw_pack_write(msgpack_packer *pk, int64_t seq, cw_op_t op, cw_str_t command_id,
                  const void *data, size_t len)
{
    if (op != CW_OP_UPLOAD_FILE_WRITE && op != CW_OP_UPLOAD_DIRECTORY_WRITE)
        return -EINVAL;
    int rc;
    if ((rc = cw_pack_request_begin(pk, op, 2)) != 0 || (rc = cw_pack_str(pk, "args")) != 0 ||
        (rc = cw_pack_bin(pk, data, len)) != 0)
        return rc;
    return end_with_command_id(pk, seq, command_id);
}

int cw_pack_cmd_simple(msgpack_packer *pk, int64_t seq, cw_op_t op, cw_str_t command_id)
{
    if (op != CW_OP_UPLOAD_FILE_CLOSE && op != CW_OP_UPLOAD_DIRECTORY_UNPACK &&
        op != CW_OP_READ_FILE_CLOSE)
        return -EINVAL;
    int rc = cw_pack_request_begin(pk, op, 1);
    return rc != 0 ? rc : end_with_command_id(pk, seq, command_id);
}

int cw_pack_utime(msgpack_packer *pk, int64_t seq, cw_str_t command_id, double access_time,
                  double modified_time)
{
    int rc;
    /* Python floats: always float64, like the stock worker's st_atime. */
    if ((rc = cw_pack_request_begin(pk, CW_OP_UPLOAD_FILE_UTIME, 3)) != 0 ||
        (rc = cw_pack_str(pk, "access_time")) != 0 ||
        (rc = msgpack_pack_double(pk, access_time)) != 0 ||
        (rc = cw_pack_str(pk, "modified_time")) != 0 ||
        (rc = msgpack_pack_double(pk, modified_time)) != 0)
        return rc;
    return end_with_command_id(pk, seq, command_id);
}

int cw_pack_read_file(msgpack_packer *pk, int64_t seq, cw_str_t command_id, int64_t length)
{
    int rc;
    if ((rc = cw_pack_request_begin(pk, CW_OP_READ_FILE, 2)) != 0 ||
        (rc = kv_int(pk, "length", length)) != 0)
        return rc;
    return end_with_command_id(pk, seq, command_id);
}

int cw_pack_update_begin(msgpack_packer *pk, size_t npairs)
{
    if (npairs > UINT32_MAX)
        return CW_ETOOBIG;
    int rc;
    if ((rc = cw_pack_request_begin(pk, CW_OP_UPDATE, 2)) != 0 ||
        (rc = cw_pack_str(pk, "args")) != 0)
        return rc;
    return msgpack_pack_array(pk, npairs);
}

int cw_pack_update_end(msgpack_packer *pk, int64_t seq, cw_str_t command_id)
{
    return end_with_command_id(pk, seq, command_id);
}
