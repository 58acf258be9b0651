/* libFuzzer target for the message layer (cworker/msg.h).
 *
 * For every input:
 *  - whatever cw_msgpack_check() accepts, msgpack-c must parse completely
 *    (the pre-validator is never looser than the parser behind it);
 *  - cw_msg_decode() on both sides returns one of the documented codes, with a
 *    reason in err for every failure;
 *  - a decoded message is packed again with our encoders, decoded again, and
 *    must come back with the same fields (an unknown op is answered with the
 *    "does not exist" exception response instead).
 * Any violation aborts, which libFuzzer reports as a crash.
 */
#include "cworker/msg.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cworker/utf8.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Abort with a note when an invariant does not hold. */
#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);               \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* Same bytes. */
static bool str_same(cw_str_t a, cw_str_t b)
{
    return a.len == b.len && (a.len == 0 || memcmp(a.ptr, b.ptr, a.len) == 0);
}

/* Same msgpack object, compared by its packed form (NaN-safe, str/bin-aware). */
static bool obj_same(const msgpack_object *a, const msgpack_object *b)
{
    cw_buf_t ba = CW_BUF_INIT, bb = CW_BUF_INIT;
    msgpack_packer pa, pb;
    cw_pack_init(&pa, &ba);
    cw_pack_init(&pb, &bb);
    CHECK(msgpack_pack_object(&pa, *a) == 0);
    CHECK(msgpack_pack_object(&pb, *b) == 0);
    bool same = ba.len == bb.len && (ba.len == 0 || memcmp(ba.data, bb.data, ba.len) == 0);
    cw_buf_free(&ba);
    cw_buf_free(&bb);
    return same;
}

/* A NUL-terminated copy for the encoders taking const char *, or NULL when s
 * holds a NUL byte (such a string cannot go through them unchanged). */
static char *cstr(cw_str_t s)
{
    if (s.len > 0 && memchr(s.ptr, '\0', s.len) != NULL)
        return NULL;
    char *p = cw_str_dup(s);
    CHECK(p != NULL);
    return p;
}

/* Pack m again; 1 if it cannot be re-encoded unchanged, else the encoders' rc. */
static int repack(msgpack_packer *pk, const cw_msg_t *m)
{
    int rc = 1;
    char *a = NULL, *b = NULL, *c = NULL;
    switch (m->op) {
    case CW_OP_UNKNOWN:
        return 1;
    case CW_OP_RESPONSE:
        if (!m->u.response.is_exception) {
            rc = cw_pack_response_begin(pk, m->seq);
            if (rc == 0)
                rc = msgpack_pack_object(pk, m->u.response.result);
        } else if (m->u.response.result.type == MSGPACK_OBJECT_STR) {
            rc = cw_pack_response_error(pk, m->seq, m->u.response.result.via.str.ptr,
                                        m->u.response.result.via.str.size);
        }
        return rc;
    case CW_OP_PRINT:
        if ((a = cstr(m->u.print.message)) != NULL)
            rc = cw_pack_print(pk, m->seq, a);
        break;
    case CW_OP_KEEPALIVE:
    case CW_OP_GET_WORKER_INFO:
    case CW_OP_SHUTDOWN:
        return cw_pack_simple(pk, m->seq, m->op);
    case CW_OP_SET_WORKER_SETTINGS:
        if ((a = cstr(m->u.settings.newline_re)) != NULL)
            rc = cw_pack_set_worker_settings(pk, m->seq, m->u.settings.buffer_size,
                                             m->u.settings.buffer_timeout,
                                             m->u.settings.max_line_length, a);
        break;
    case CW_OP_START_COMMAND:
        a = cstr(m->u.start.command_id);
        b = cstr(m->u.start.command_name);
        c = m->u.start.has_builder_name ? cstr(m->u.start.builder_name) : NULL;
        if (a != NULL && b != NULL && (c != NULL || !m->u.start.has_builder_name)) {
            rc = cw_pack_start_command_begin(pk, a, b, c);
            if (rc == 0)
                rc = msgpack_pack_object(pk, m->u.start.args);
            if (rc == 0)
                rc = cw_pack_request_end(pk, m->seq);
        }
        break;
    case CW_OP_INTERRUPT_COMMAND:
        a = cstr(m->u.interrupt.command_id);
        b = cstr(m->u.interrupt.why);
        if (a != NULL && b != NULL)
            rc = cw_pack_interrupt_command(pk, m->seq, a, b);
        break;
    case CW_OP_UPDATE: {
        const msgpack_object *args = &m->u.update.args;
        rc = cw_pack_update_begin(pk, args->via.array.size);
        for (uint32_t i = 0; rc == 0 && i < args->via.array.size; i++)
            rc = msgpack_pack_object(pk, args->via.array.ptr[i]);
        return rc == 0 ? cw_pack_update_end(pk, m->seq, m->u.update.command_id) : rc;
    }
    case CW_OP_COMPLETE:
        if (!m->u.complete.failed)
            return cw_pack_complete(pk, m->seq, m->u.complete.command_id, NULL);
        /* A bin failure text goes out as str: only if it is text. */
        if (cw_utf8_valid((const uint8_t *)m->u.complete.failure.ptr, m->u.complete.failure.len) &&
            (a = cstr(m->u.complete.failure)) != NULL)
            rc = cw_pack_complete(pk, m->seq, m->u.complete.command_id, a);
        break;
    case CW_OP_UPLOAD_FILE_WRITE:
    case CW_OP_UPLOAD_DIRECTORY_WRITE:
        return cw_pack_write(pk, m->seq, m->op, m->u.write.command_id, m->u.write.data,
                             m->u.write.len);
    case CW_OP_UPLOAD_FILE_CLOSE:
    case CW_OP_UPLOAD_DIRECTORY_UNPACK:
    case CW_OP_READ_FILE_CLOSE:
        return cw_pack_cmd_simple(pk, m->seq, m->op, m->u.cmd.command_id);
    case CW_OP_UPLOAD_FILE_UTIME:
        return cw_pack_utime(pk, m->seq, m->u.utime.command_id, m->u.utime.access_time,
                             m->u.utime.modified_time);
    case CW_OP_READ_FILE:
        return cw_pack_read_file(pk, m->seq, m->u.read_file.command_id, m->u.read_file.length);
    default:
        CHECK(!"op out of range");
    }
    free(a);
    free(b);
    free(c);
    return rc;
}

/* The fields that define m are the same in n. */
static void check_same(const cw_msg_t *m, const cw_msg_t *n)
{
    CHECK(m->op == n->op);
    CHECK(m->seq == n->seq);
    CHECK(str_same(m->op_name, n->op_name));
    switch (m->op) {
    case CW_OP_RESPONSE:
        CHECK(m->u.response.is_exception == n->u.response.is_exception);
        CHECK(obj_same(&m->u.response.result, &n->u.response.result));
        break;
    case CW_OP_PRINT:
        CHECK(str_same(m->u.print.message, n->u.print.message));
        break;
    case CW_OP_SET_WORKER_SETTINGS:
        CHECK(m->u.settings.buffer_size == n->u.settings.buffer_size);
        CHECK(m->u.settings.buffer_timeout == n->u.settings.buffer_timeout);
        CHECK(m->u.settings.max_line_length == n->u.settings.max_line_length);
        CHECK(str_same(m->u.settings.newline_re, n->u.settings.newline_re));
        break;
    case CW_OP_START_COMMAND:
        CHECK(str_same(m->u.start.command_id, n->u.start.command_id));
        CHECK(str_same(m->u.start.command_name, n->u.start.command_name));
        CHECK(m->u.start.has_builder_name == n->u.start.has_builder_name);
        CHECK(str_same(m->u.start.builder_name, n->u.start.builder_name));
        CHECK(obj_same(&m->u.start.args, &n->u.start.args));
        break;
    case CW_OP_INTERRUPT_COMMAND:
        CHECK(str_same(m->u.interrupt.command_id, n->u.interrupt.command_id));
        CHECK(str_same(m->u.interrupt.why, n->u.interrupt.why));
        break;
    case CW_OP_UPDATE:
        CHECK(str_same(m->u.update.command_id, n->u.update.command_id));
        CHECK(obj_same(&m->u.update.args, &n->u.update.args));
        break;
    case CW_OP_COMPLETE:
        CHECK(str_same(m->u.complete.command_id, n->u.complete.command_id));
        CHECK(m->u.complete.failed == n->u.complete.failed);
        CHECK(str_same(m->u.complete.failure, n->u.complete.failure));
        break;
    case CW_OP_UPLOAD_FILE_WRITE:
    case CW_OP_UPLOAD_DIRECTORY_WRITE: {
        cw_str_t a = {(const char *)m->u.write.data, m->u.write.len};
        cw_str_t b = {(const char *)n->u.write.data, n->u.write.len};
        CHECK(str_same(m->u.write.command_id, n->u.write.command_id));
        CHECK(str_same(a, b));
        break;
    }
    case CW_OP_UPLOAD_FILE_CLOSE:
    case CW_OP_UPLOAD_DIRECTORY_UNPACK:
    case CW_OP_READ_FILE_CLOSE:
        CHECK(str_same(m->u.cmd.command_id, n->u.cmd.command_id));
        break;
    case CW_OP_UPLOAD_FILE_UTIME:
        CHECK(str_same(m->u.utime.command_id, n->u.utime.command_id));
        CHECK(m->u.utime.access_time == n->u.utime.access_time);
        CHECK(m->u.utime.modified_time == n->u.utime.modified_time);
        break;
    case CW_OP_READ_FILE:
        CHECK(str_same(m->u.read_file.command_id, n->u.read_file.command_id));
        CHECK(m->u.read_file.length == n->u.read_file.length);
        break;
    default:
        break;
    }
}

/* Re-encode a decoded message (or answer an unknown op) and decode that. */
static void roundtrip(const cw_msg_t *m, cw_side_t side)
{
    cw_buf_t out = CW_BUF_INIT;
    msgpack_packer pk;
    cw_pack_init(&pk, &out);
    int rc;
    if (m->op == CW_OP_UNKNOWN) {
        /* What a peer answers; op_name is valid UTF-8 (checked), so is this. */
        cw_buf_t text = CW_BUF_INIT;
        CHECK(cw_buf_append_str(&text, "Command ") == 0);
        CHECK(cw_buf_append(&text, m->op_name.ptr, m->op_name.len) == 0);
        CHECK(cw_buf_append_str(&text, " does not exist.") == 0);
        rc = cw_pack_response_error(&pk, m->seq, (const char *)text.data, text.len);
        cw_buf_free(&text);
    } else {
        rc = repack(&pk, m);
    }
    CHECK(rc == 0 || rc == 1);
    if (rc == 0) {
        msgpack_unpacked up;
        msgpack_unpacked_init(&up);
        cw_msg_t n;
        char err[256];
        rc = cw_msg_decode(&n, &up, side, out.data, out.len, err, sizeof(err));
        if (rc != 0)
            fprintf(stderr, "re-decode: %d %s\n", rc, err);
        CHECK(rc == 0);
        if (m->op == CW_OP_UNKNOWN) {
            CHECK(n.op == CW_OP_RESPONSE && n.seq == m->seq && n.u.response.is_exception);
            CHECK(n.u.response.result.type == MSGPACK_OBJECT_STR);
        } else {
            check_same(m, &n);
        }
        msgpack_unpacked_destroy(&up);
    }
    cw_buf_free(&out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[256];

    /* Differential: the pre-validator never lets through what msgpack-c
     * cannot parse in full. */
    int checked = cw_msgpack_check(data, size, CW_MSG_MAX_DEPTH, err, sizeof(err));
    CHECK(checked == 0 || (checked == CW_EBADMSG && err[0] != '\0'));
    if (checked == 0) {
        msgpack_unpacked up;
        msgpack_unpacked_init(&up);
        size_t off = 0;
        msgpack_unpack_return ur = msgpack_unpack_next(&up, (const char *)data, size, &off);
        CHECK(ur == MSGPACK_UNPACK_SUCCESS && off == size);
        msgpack_unpacked_destroy(&up);
    }

    for (int side = CW_SIDE_WORKER; side <= CW_SIDE_MASTER; side++) {
        msgpack_unpacked up;
        msgpack_unpacked_init(&up);
        cw_msg_t m;
        int rc = cw_msg_decode(&m, &up, (cw_side_t)side, data, size, err, sizeof(err));
        CHECK(rc == 0 || rc == CW_EBADMSG || rc == CW_EIGNORE || rc == CW_EMSGKEY);
        CHECK(strlen(err) < sizeof(err));
        if (rc != 0)
            CHECK(err[0] != '\0');
        if (rc != CW_EBADMSG)
            CHECK(checked == 0);
        if (rc == CW_EMSGKEY)
            CHECK(m.op != CW_OP_UNKNOWN && m.op != CW_OP_RESPONSE);
        if (rc == 0)
            roundtrip(&m, (cw_side_t)side);
        msgpack_unpacked_destroy(&up);
    }
    return 0;
}
