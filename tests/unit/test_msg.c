/* Unit tests of the message layer: pre-validation, envelope, typed ops, encoders. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cworker/args.h"
#include "cworker/msg.h"
#include "cworker/utf8.h"

/* Per-test state: an output buffer with its packer, a reusable unpacked
 * object and the decoded message. */
typedef struct ctx {
    cw_buf_t buf;
    msgpack_packer pk;
    msgpack_unpacked up;
    cw_msg_t m;
    char err[256];
} ctx_t;

/* Fresh state for every test. */
static int setup(void **state)
{
    ctx_t *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return -1;
    cw_pack_init(&c->pk, &c->buf);
    msgpack_unpacked_init(&c->up);
    *state = c;
    return 0;
}

/* Free the state; valgrind and ASan see any zone the decoder leaked. */
static int teardown(void **state)
{
    ctx_t *c = *state;
    msgpack_unpacked_destroy(&c->up);
    cw_buf_free(&c->buf);
    free(c);
    return 0;
}

/* Decode arbitrary bytes on one side. */
static int dec_bytes(ctx_t *c, cw_side_t side, const uint8_t *p, size_t n)
{
    return cw_msg_decode(&c->m, &c->up, side, p, n, c->err, sizeof(c->err));
}

/* Decode what has been packed into c->buf. */
static int dec(ctx_t *c, cw_side_t side)
{
    return dec_bytes(c, side, c->buf.data, c->buf.len);
}

/* Parse hex digits (spaces ignored) into out; returns the byte count. */
static size_t unhex(const char *hex, uint8_t *out, size_t cap)
{
    size_t n = 0;
    int hi = -1;
    for (const char *p = hex; *p; p++) {
        int v;
        if (*p >= '0' && *p <= '9')
            v = *p - '0';
        else if (*p >= 'a' && *p <= 'f')
            v = *p - 'a' + 10;
        else
            continue;
        if (hi < 0) {
            hi = v;
        } else {
            assert_true(n < cap);
            out[n++] = (uint8_t)(hi << 4 | v);
            hi = -1;
        }
    }
    assert_int_equal(hi, -1);
    return n;
}

/* The packed buffer equals the hex bytes. */
static void assert_buf_hex(const cw_buf_t *b, const char *hex)
{
    uint8_t want[512];
    size_t n = unhex(hex, want, sizeof(want));
    assert_int_equal(b->len, n);
    assert_memory_equal(b->data, want, n);
}

/* A counted string equals a literal. */
static void assert_cwstr(cw_str_t s, const char *lit)
{
    assert_int_equal(s.len, strlen(lit));
    if (s.len > 0)
        assert_memory_equal(s.ptr, lit, s.len);
}

/* The map's keys are exactly `keys`, in this order (the stock key order). */
static void assert_key_order(const msgpack_object *map, const char *const *keys, size_t n)
{
    assert_int_equal(map->type, MSGPACK_OBJECT_MAP);
    assert_int_equal(map->via.map.size, n);
    for (size_t i = 0; i < n; i++) {
        cw_str_t k;
        assert_true(cw_obj_str(&map->via.map.ptr[i].key, &k));
        assert_cwstr(k, keys[i]);
    }
}

/* A str object equals a literal. */
static void assert_obj_str(const msgpack_object *o, const char *lit)
{
    assert_non_null(o);
    assert_int_equal(o->type, MSGPACK_OBJECT_STR);
    cw_str_t s;
    assert_true(cw_obj_str(o, &s));
    assert_cwstr(s, lit);
}

/* ---- op names ---- */

/* Every op has its stock wire name. */
static void test_op_names(void **state)
{
    (void)state;
    static const char *const names[CW_OP__COUNT] = {
        "unknown",
        "response",
        "print",
        "keepalive",
        "get_worker_info",
        "set_worker_settings",
        "start_command",
        "interrupt_command",
        "shutdown",
        "update",
        "complete",
        "update_upload_file_write",
        "update_upload_file_close",
        "update_upload_file_utime",
        "update_upload_directory_write",
        "update_upload_directory_unpack",
        "update_read_file",
        "update_read_file_close",
    };
    for (int op = 0; op < CW_OP__COUNT; op++)
        assert_string_equal(cw_op_name((cw_op_t)op), names[op]);
    assert_string_equal(cw_op_name(CW_OP__COUNT), "unknown");
    assert_string_equal(cw_op_name((cw_op_t)-1), "unknown");
}

/* ---- byte-exact examples of reference §1.7 ---- */

/* {"op":"response","seq_number":0,"result":nil}: 33 bytes, observed on the wire. */
static void test_bytes_response_nil(void **state)
{
    ctx_t *c = *state;
    static const char hex[] = "83 a2 6f70 a8 726573706f6e7365 aa 7365715f6e756d626572 00"
                              " a6 726573756c74 c0";
    assert_int_equal(cw_pack_response_nil(&c->pk, 0), 0);
    assert_int_equal(c->buf.len, 33);
    assert_buf_hex(&c->buf, hex);
    for (int side = CW_SIDE_WORKER; side <= CW_SIDE_MASTER; side++) {
        assert_int_equal(dec(c, (cw_side_t)side), 0);
        assert_int_equal(c->m.op, CW_OP_RESPONSE);
        assert_int_equal(c->m.seq, 0);
        assert_int_equal(c->m.u.response.result.type, MSGPACK_OBJECT_NIL);
        assert_false(c->m.u.response.is_exception);
    }
}

/* {"op":"print","message":"attached","seq_number":0}: 39 bytes. */
static void test_bytes_print(void **state)
{
    ctx_t *c = *state;
    static const char hex[] = "83 a2 6f70 a5 7072696e74 a7 6d657373616765 a8 6174746163686564"
                              " aa 7365715f6e756d626572 00";
    assert_int_equal(cw_pack_print(&c->pk, 0, "attached"), 0);
    assert_int_equal(c->buf.len, 39);
    assert_buf_hex(&c->buf, hex);

    uint8_t raw[64];
    size_t n = unhex(hex, raw, sizeof(raw));
    assert_int_equal(dec_bytes(c, CW_SIDE_WORKER, raw, n), 0);
    assert_int_equal(c->m.op, CW_OP_PRINT);
    assert_int_equal(c->m.seq, 0);
    assert_cwstr(c->m.u.print.message, "attached");
}

/* update_upload_file_write with a bin chunk, seq 25. */
static void test_bytes_upload_file_write(void **state)
{
    ctx_t *c = *state;
    static const char hex[] = "84 a2 6f70 b8 7570646174655f75706c6f61645f66696c655f7772697465"
                              " a4 61726773 c4 04 6162630a aa 636f6d6d616e645f6964 a2 3130"
                              " aa 7365715f6e756d626572 19";
    cw_str_t id = {"10", 2};
    assert_int_equal(cw_pack_write(&c->pk, 25, CW_OP_UPLOAD_FILE_WRITE, id, "abc\n", 4), 0);
    assert_buf_hex(&c->buf, hex);
    assert_int_equal(dec(c, CW_SIDE_MASTER), 0);
    assert_int_equal(c->m.op, CW_OP_UPLOAD_FILE_WRITE);
    assert_int_equal(c->m.seq, 25);
    assert_cwstr(c->m.u.write.command_id, "10");
    assert_int_equal(c->m.u.write.len, 4);
    assert_memory_equal(c->m.u.write.data, "abc\n", 4);
}

/* Exception response seq 300: seq as uint16, is_exception true last. */
static void test_bytes_error_response(void **state)
{
    ctx_t *c = *state;
    static const char hex[] = "84 a2 6f70 a8 726573706f6e7365 aa 7365715f6e756d626572 cd 012c"
                              " a6 726573756c74 a1 78 ac 69735f657863657074696f6e c3";
    assert_int_equal(cw_pack_response_error(&c->pk, 300, "x", 1), 0);
    assert_buf_hex(&c->buf, hex);
    assert_int_equal(dec(c, CW_SIDE_MASTER), 0);
    assert_int_equal(c->m.op, CW_OP_RESPONSE);
    assert_int_equal(c->m.seq, 300);
    assert_true(c->m.u.response.is_exception);
    assert_obj_str(&c->m.u.response.result, "x");
}

/* ---- round trips, master -> worker ops decoded by the worker ---- */

/* print keeps its text byte for byte, UTF-8 included. */
static void test_rt_print(void **state)
{
    ctx_t *c = *state;
    static const char *const order[] = {"op", "message", "seq_number"};
    assert_int_equal(cw_pack_print(&c->pk, 7, "master got a duplicate connection \xc3\xa9"), 0);
    assert_int_equal(dec(c, CW_SIDE_WORKER), 0);
    assert_int_equal(c->m.op, CW_OP_PRINT);
    assert_cwstr(c->m.op_name, "print");
    assert_int_equal(c->m.seq, 7);
    assert_cwstr(c->m.u.print.message, "master got a duplicate connection \xc3\xa9");
    assert_key_order(&c->up.data, order, 3);
}

/* keepalive, get_worker_info, shutdown carry only the envelope, any seq. */
static void test_rt_simple(void **state)
{
    ctx_t *c = *state;
    static const cw_op_t ops[] = {CW_OP_KEEPALIVE, CW_OP_GET_WORKER_INFO, CW_OP_SHUTDOWN};
    static const int64_t seqs[] = {0,     1,     127,       128, 255,      256,
                                   65535, 65536, INT64_MAX, -1,  INT64_MIN};
    static const char *const order[] = {"op", "seq_number"};
    for (size_t i = 0; i < 3; i++) {
        for (size_t j = 0; j < sizeof(seqs) / sizeof(seqs[0]); j++) {
            cw_buf_reset(&c->buf);
            assert_int_equal(cw_pack_simple(&c->pk, seqs[j], ops[i]), 0);
            assert_int_equal(dec(c, CW_SIDE_WORKER), 0);
            assert_int_equal(c->m.op, ops[i]);
            assert_cwstr(c->m.op_name, cw_op_name(ops[i]));
            assert_int_equal(c->m.seq, seqs[j]);
            assert_key_order(&c->up.data, order, 2);
        }
    }
}

/* set_worker_settings: all four settings, in the stock master's order. */
static void test_rt_settings(void **state)
{
    ctx_t *c = *state;
    static const char re[] =
        "(\\r\\n|\\r(?=.)|\\033\\[u|\\033\\[[0-9]+;[0-9]+[Hf]|\\033\\[2J|\\x08+)";
    static const char *const order[] = {"op", "args", "seq_number"};
    static const char *const args_order[] = {"newline_re", "max_line_length", "buffer_timeout",
                                             "buffer_size"};
    assert_int_equal(cw_pack_set_worker_settings(&c->pk, 3, 65536, 5, 4096, re), 0);
    assert_int_equal(dec(c, CW_SIDE_WORKER), 0);
    assert_int_equal(c->m.op, CW_OP_SET_WORKER_SETTINGS);
    assert_int_equal(c->m.seq, 3);
    assert_int_equal(c->m.u.settings.buffer_size, 65536);
    assert_int_equal(c->m.u.settings.buffer_timeout, 5);
    assert_int_equal(c->m.u.settings.max_line_length, 4096);
    assert_cwstr(c->m.u.settings.newline_re, re);
    assert_key_order(&c->up.data, order, 3);
    assert_key_order(cw_map_get(&c->up.data, "args"), args_order, 4);
}

/* Pack the shell-like args map used by the start_command tests. */
static void pack_shell_args(msgpack_packer *pk)
{
    assert_int_equal(msgpack_pack_map(pk, 4), 0);
    assert_int_equal(cw_pack_str(pk, "workdir"), 0);
    assert_int_equal(cw_pack_str(pk, "build"), 0);
    assert_int_equal(cw_pack_str(pk, "command"), 0);
    assert_int_equal(msgpack_pack_array(pk, 2), 0);
    assert_int_equal(cw_pack_str(pk, "echo"), 0);
    assert_int_equal(cw_pack_str(pk, "hi"), 0);
    assert_int_equal(cw_pack_str(pk, "want_stdout"), 0);
    assert_int_equal(msgpack_pack_true(pk), 0);
    assert_int_equal(cw_pack_str(pk, "timeout"), 0);
    assert_int_equal(msgpack_pack_int64(pk, 1200), 0);
}

/* start_command with and without builder_name; args come back whole. */
static void test_rt_start_command(void **state)
{
    ctx_t *c = *state;
    static const char *const order_b[] = {"op",           "builder_name", "command_id",
                                          "command_name", "args",         "seq_number"};
    static const char *const order[] = {"op", "command_id", "command_name", "args", "seq_number"};
    for (int with_builder = 0; with_builder <= 1; with_builder++) {
        cw_buf_reset(&c->buf);
        assert_int_equal(
            cw_pack_start_command_begin(&c->pk, "12", "shell", with_builder ? "runtests" : NULL),
            0);
        pack_shell_args(&c->pk);
        assert_int_equal(cw_pack_request_end(&c->pk, 9), 0);

        assert_int_equal(dec(c, CW_SIDE_WORKER), 0);
        assert_int_equal(c->m.op, CW_OP_START_COMMAND);
        assert_int_equal(c->m.seq, 9);
        assert_cwstr(c->m.u.start.command_id, "12");
        assert_cwstr(c->m.u.start.command_name, "shell");
        assert_int_equal(c->m.u.start.has_builder_name, with_builder);
        if (with_builder)
            assert_cwstr(c->m.u.start.builder_name, "runtests");
        else
            assert_int_equal(c->m.u.start.builder_name.len, 0);
        const msgpack_object *args = &c->m.u.start.args;
        assert_int_equal(args->type, MSGPACK_OBJECT_MAP);
        assert_int_equal(args->via.map.size, 4);
        assert_obj_str(cw_map_get(args, "workdir"), "build");
        const msgpack_object *cmd = cw_map_get(args, "command");
        assert_non_null(cmd);
        assert_int_equal(cmd->type, MSGPACK_OBJECT_ARRAY);
        assert_int_equal(cmd->via.array.size, 2);
        assert_obj_str(&cmd->via.array.ptr[0], "echo");
        assert_obj_str(&cmd->via.array.ptr[1], "hi");
        const msgpack_object *ws = cw_map_get(args, "want_stdout");
        assert_non_null(ws);
        assert_int_equal(ws->type, MSGPACK_OBJECT_BOOLEAN);
        assert_true(ws->via.boolean);
        int64_t t = 0;
        assert_true(cw_obj_int(cw_map_get(args, "timeout"), &t));
        assert_int_equal(t, 1200);
        if (with_builder)
            assert_key_order(&c->up.data, order_b, 6);
        else
            assert_key_order(&c->up.data, order, 5);
    }
}

/* interrupt_command carries command_id and why. */
static void test_rt_interrupt(void **state)
{
    ctx_t *c = *state;
    static const char *const order[] = {"op", "command_id", "why", "seq_number"};
    assert_int_equal(cw_pack_interrupt_command(&c->pk, 11, "12", "The build was stopped"), 0);
    assert_int_equal(dec(c, CW_SIDE_WORKER), 0);
    assert_int_equal(c->m.op, CW_OP_INTERRUPT_COMMAND);
    assert_int_equal(c->m.seq, 11);
    assert_cwstr(c->m.u.interrupt.command_id, "12");
    assert_cwstr(c->m.u.interrupt.why, "The build was stopped");
    assert_key_order(&c->up.data, order, 4);

    /* NULL why still sends the key the stock worker requires. */
    cw_buf_reset(&c->buf);
    assert_int_equal(cw_pack_interrupt_command(&c->pk, 12, "12", NULL), 0);
    assert_int_equal(dec(c, CW_SIDE_WORKER), 0);
    assert_cwstr(c->m.u.interrupt.why, "");
}

/* Responses decode the same on both sides; result may be any object. */
static void test_rt_responses(void **state)
{
    ctx_t *c = *state;
    static const char *const order_err[] = {"op", "seq_number", "result", "is_exception"};
    for (int side = CW_SIDE_WORKER; side <= CW_SIDE_MASTER; side++) {
        cw_buf_reset(&c->buf);
        assert_int_equal(cw_pack_response_error(&c->pk, 70000, "Command frob does not exist.",
                                                strlen("Command frob does not exist.")),
                         0);
        assert_int_equal(dec(c, (cw_side_t)side), 0);
        assert_int_equal(c->m.op, CW_OP_RESPONSE);
        assert_cwstr(c->m.op_name, "response");
        assert_int_equal(c->m.seq, 70000);
        assert_true(c->m.u.response.is_exception);
        assert_obj_str(&c->m.u.response.result, "Command frob does not exist.");
        assert_key_order(&c->up.data, order_err, 4);

        cw_buf_reset(&c->buf);
        assert_int_equal(cw_pack_response_begin(&c->pk, 1), 0);
        assert_int_equal(msgpack_pack_map(&c->pk, 2), 0);
        assert_int_equal(cw_pack_str(&c->pk, "basedir"), 0);
        assert_int_equal(cw_pack_str(&c->pk, "/w"), 0);
        assert_int_equal(cw_pack_str(&c->pk, "numcpus"), 0);
        assert_int_equal(msgpack_pack_int64(&c->pk, 4), 0);
        assert_int_equal(dec(c, (cw_side_t)side), 0);
        assert_int_equal(c->m.op, CW_OP_RESPONSE);
        assert_int_equal(c->m.seq, 1);
        assert_false(c->m.u.response.is_exception);
        assert_obj_str(cw_map_get(&c->m.u.response.result, "basedir"), "/w");
        int64_t n = 0;
        assert_true(cw_obj_int(cw_map_get(&c->m.u.response.result, "numcpus"), &n));
        assert_int_equal(n, 4);
    }
}

/* ---- round trips, worker -> master ops decoded by the master ---- */

/* update: the [key, value] pairs come back in order. */
static void test_rt_update(void **state)
{
    ctx_t *c = *state;
    static const char *const order[] = {"op", "args", "command_id", "seq_number"};
    msgpack_packer *pk = &c->pk;
    assert_int_equal(cw_pack_update_begin(pk, 3), 0);
    assert_int_equal(msgpack_pack_array(pk, 2), 0);
    assert_int_equal(cw_pack_str(pk, "stdout"), 0);
    assert_int_equal(msgpack_pack_array(pk, 3), 0);
    assert_int_equal(cw_pack_str(pk, "out\n"), 0);
    assert_int_equal(msgpack_pack_array(pk, 1), 0);
    assert_int_equal(msgpack_pack_int64(pk, 3), 0);
    assert_int_equal(msgpack_pack_array(pk, 1), 0);
    assert_int_equal(msgpack_pack_double(pk, 1795827900.006), 0);
    assert_int_equal(msgpack_pack_array(pk, 2), 0);
    assert_int_equal(cw_pack_str(pk, "rc"), 0);
    assert_int_equal(msgpack_pack_int64(pk, 0), 0);
    assert_int_equal(msgpack_pack_array(pk, 2), 0);
    assert_int_equal(cw_pack_str(pk, "elapsed"), 0);
    assert_int_equal(msgpack_pack_double(pk, 0.0128), 0);
    cw_str_t id = {"2", 1};
    assert_int_equal(cw_pack_update_end(pk, 4, id), 0);

    assert_int_equal(dec(c, CW_SIDE_MASTER), 0);
    assert_int_equal(c->m.op, CW_OP_UPDATE);
    assert_int_equal(c->m.seq, 4);
    assert_cwstr(c->m.u.update.command_id, "2");
    const msgpack_object *a = &c->m.u.update.args;
    assert_int_equal(a->type, MSGPACK_OBJECT_ARRAY);
    assert_int_equal(a->via.array.size, 3);
    const msgpack_object *p0 = a->via.array.ptr[0].via.array.ptr;
    assert_obj_str(&p0[0], "stdout");
    assert_int_equal(p0[1].type, MSGPACK_OBJECT_ARRAY);
    assert_obj_str(&p0[1].via.array.ptr[0], "out\n");
    assert_int_equal(p0[1].via.array.ptr[1].via.array.ptr[0].via.u64, 3);
    assert_true(p0[1].via.array.ptr[2].via.array.ptr[0].via.f64 == 1795827900.006);
    const msgpack_object *p1 = a->via.array.ptr[1].via.array.ptr;
    assert_obj_str(&p1[0], "rc");
    int64_t rc = -1;
    assert_true(cw_obj_int(&p1[1], &rc));
    assert_int_equal(rc, 0);
    const msgpack_object *p2 = a->via.array.ptr[2].via.array.ptr;
    assert_obj_str(&p2[0], "elapsed");
    assert_int_equal(p2[1].type, MSGPACK_OBJECT_FLOAT64);
    assert_true(p2[1].via.f64 == 0.0128);
    assert_key_order(&c->up.data, order, 4);

    /* An empty update is still a valid one. */
    cw_buf_reset(&c->buf);
    assert_int_equal(cw_pack_update_begin(pk, 0), 0);
    assert_int_equal(cw_pack_update_end(pk, 5, id), 0);
    assert_int_equal(dec(c, CW_SIDE_MASTER), 0);
    assert_int_equal(c->m.u.update.args.via.array.size, 0);
}

/* complete: nil is success, a str the failure text. */
static void test_rt_complete(void **state)
{
    ctx_t *c = *state;
    static const char *const order[] = {"op", "args", "command_id", "seq_number"};
    cw_str_t id = {"2", 1};
    assert_int_equal(cw_pack_complete(&c->pk, 5, id, NULL), 0);
    assert_buf_hex(&c->buf, "84 a2 6f70 a8 636f6d706c657465 a4 61726773 c0"
                            " aa 636f6d6d616e645f6964 a1 32 aa 7365715f6e756d626572 05");
    assert_int_equal(dec(c, CW_SIDE_MASTER), 0);
    assert_int_equal(c->m.op, CW_OP_COMPLETE);
    assert_int_equal(c->m.seq, 5);
    assert_cwstr(c->m.u.complete.command_id, "2");
    assert_false(c->m.u.complete.failed);
    assert_int_equal(c->m.u.complete.failure.len, 0);
    assert_key_order(&c->up.data, order, 4);

    cw_buf_reset(&c->buf);
    assert_int_equal(cw_pack_complete(&c->pk, 6, id, "[Failure instance: boom]"), 0);
    assert_int_equal(dec(c, CW_SIDE_MASTER), 0);
    assert_int_equal(c->m.seq, 6);
    assert_true(c->m.u.complete.failed);
    assert_cwstr(c->m.u.complete.failure, "[Failure instance: boom]");
}

/* Both write ops carry arbitrary binary chunks, empty ones included. */
static void test_rt_write(void **state)
{
    ctx_t *c = *state;
    static const char *const order[] = {"op", "args", "command_id", "seq_number"};
    static const cw_op_t ops[] = {CW_OP_UPLOAD_FILE_WRITE, CW_OP_UPLOAD_DIRECTORY_WRITE};
    uint8_t chunk[70000];
    for (size_t i = 0; i < sizeof(chunk); i++)
        chunk[i] = (uint8_t)(i * 7 + 1);
    chunk[0] = 0;
    chunk[1] = 0xff;
    static const size_t lens[] = {0, 1, 255, 256, 65535, 65536, sizeof(chunk)};
    cw_str_t id = {"command-17", 10};
    for (size_t i = 0; i < 2; i++) {
        for (size_t j = 0; j < sizeof(lens) / sizeof(lens[0]); j++) {
            cw_buf_reset(&c->buf);
            assert_int_equal(cw_pack_write(&c->pk, 100 + (int64_t)j, ops[i], id, chunk, lens[j]),
                             0);
            assert_int_equal(dec(c, CW_SIDE_MASTER), 0);
            assert_int_equal(c->m.op, ops[i]);
            assert_cwstr(c->m.op_name, cw_op_name(ops[i]));
            assert_int_equal(c->m.seq, 100 + (int64_t)j);
            assert_cwstr(c->m.u.write.command_id, "command-17");
            assert_int_equal(c->m.u.write.len, lens[j]);
            if (lens[j] > 0)
                assert_memory_equal(c->m.u.write.data, chunk, lens[j]);
            assert_int_equal(cw_map_get(&c->up.data, "args")->type, MSGPACK_OBJECT_BIN);
            assert_key_order(&c->up.data, order, 4);
        }
    }
}

/* The three ops that carry only command_id. */
static void test_rt_cmd_simple(void **state)
{
    ctx_t *c = *state;
    static const char *const order[] = {"op", "command_id", "seq_number"};
    static const cw_op_t ops[] = {CW_OP_UPLOAD_FILE_CLOSE, CW_OP_UPLOAD_DIRECTORY_UNPACK,
                                  CW_OP_READ_FILE_CLOSE};
    cw_str_t id = {"44", 2};
    for (size_t i = 0; i < 3; i++) {
        cw_buf_reset(&c->buf);
        assert_int_equal(cw_pack_cmd_simple(&c->pk, 30 + (int64_t)i, ops[i], id), 0);
        assert_int_equal(dec(c, CW_SIDE_MASTER), 0);
        assert_int_equal(c->m.op, ops[i]);
        assert_int_equal(c->m.seq, 30 + (int64_t)i);
        assert_cwstr(c->m.u.cmd.command_id, "44");
        assert_key_order(&c->up.data, order, 3);
    }
}

/* utime: float64 times come back exactly. */
static void test_rt_utime(void **state)
{
    ctx_t *c = *state;
    static const char *const order[] = {"op", "access_time", "modified_time", "command_id",
                                        "seq_number"};
    cw_str_t id = {"8", 1};
    assert_int_equal(cw_pack_utime(&c->pk, 40, id, 1700000000.5, 1700000001.25), 0);
    assert_int_equal(dec(c, CW_SIDE_MASTER), 0);
    assert_int_equal(c->m.op, CW_OP_UPLOAD_FILE_UTIME);
    assert_int_equal(c->m.seq, 40);
    assert_cwstr(c->m.u.utime.command_id, "8");
    assert_true(c->m.u.utime.access_time == 1700000000.5);
    assert_true(c->m.u.utime.modified_time == 1700000001.25);
    assert_int_equal(cw_map_get(&c->up.data, "access_time")->type, MSGPACK_OBJECT_FLOAT64);
    assert_key_order(&c->up.data, order, 5);
}

/* update_read_file: length as the smallest int. */
static void test_rt_read_file(void **state)
{
    ctx_t *c = *state;
    static const char *const order[] = {"op", "length", "command_id", "seq_number"};
    static const int64_t lens[] = {0, 16384, INT64_MAX};
    cw_str_t id = {"9", 1};
    for (size_t i = 0; i < 3; i++) {
        cw_buf_reset(&c->buf);
        assert_int_equal(cw_pack_read_file(&c->pk, 50, id, lens[i]), 0);
        assert_int_equal(dec(c, CW_SIDE_MASTER), 0);
        assert_int_equal(c->m.op, CW_OP_READ_FILE);
        assert_int_equal(c->m.seq, 50);
        assert_cwstr(c->m.u.read_file.command_id, "9");
        assert_int_equal(c->m.u.read_file.length, lens[i]);
        assert_key_order(&c->up.data, order, 4);
    }
}

/* ---- sides and unknown ops ---- */

/* Pack one valid message of op (all keys present). */
static void pack_valid(ctx_t *c, cw_op_t op, int64_t seq)
{
    cw_str_t id = {"1", 1};
    cw_buf_reset(&c->buf);
    switch (op) {
    case CW_OP_PRINT:
        assert_int_equal(cw_pack_print(&c->pk, seq, "ping"), 0);
        break;
    case CW_OP_KEEPALIVE:
    case CW_OP_GET_WORKER_INFO:
    case CW_OP_SHUTDOWN:
        assert_int_equal(cw_pack_simple(&c->pk, seq, op), 0);
        break;
    case CW_OP_SET_WORKER_SETTINGS:
        assert_int_equal(cw_pack_set_worker_settings(&c->pk, seq, 1, 2, 3, "\n"), 0);
        break;
    case CW_OP_START_COMMAND:
        assert_int_equal(cw_pack_start_command_begin(&c->pk, "1", "stat", "b"), 0);
        assert_int_equal(msgpack_pack_map(&c->pk, 0), 0);
        assert_int_equal(cw_pack_request_end(&c->pk, seq), 0);
        break;
    case CW_OP_INTERRUPT_COMMAND:
        assert_int_equal(cw_pack_interrupt_command(&c->pk, seq, "1", "why"), 0);
        break;
    case CW_OP_UPDATE:
        assert_int_equal(cw_pack_update_begin(&c->pk, 1), 0);
        assert_int_equal(msgpack_pack_array(&c->pk, 2), 0);
        assert_int_equal(cw_pack_str(&c->pk, "rc"), 0);
        assert_int_equal(msgpack_pack_int64(&c->pk, 0), 0);
        assert_int_equal(cw_pack_update_end(&c->pk, seq, id), 0);
        break;
    case CW_OP_COMPLETE:
        assert_int_equal(cw_pack_complete(&c->pk, seq, id, "failed"), 0);
        break;
    case CW_OP_UPLOAD_FILE_WRITE:
    case CW_OP_UPLOAD_DIRECTORY_WRITE:
        assert_int_equal(cw_pack_write(&c->pk, seq, op, id, "data", 4), 0);
        break;
    case CW_OP_UPLOAD_FILE_CLOSE:
    case CW_OP_UPLOAD_DIRECTORY_UNPACK:
    case CW_OP_READ_FILE_CLOSE:
        assert_int_equal(cw_pack_cmd_simple(&c->pk, seq, op, id), 0);
        break;
    case CW_OP_UPLOAD_FILE_UTIME:
        assert_int_equal(cw_pack_utime(&c->pk, seq, id, 1.0, 2.0), 0);
        break;
    case CW_OP_READ_FILE:
        assert_int_equal(cw_pack_read_file(&c->pk, seq, id, 10), 0);
        break;
    default:
        fail_msg("no packer for op %d", (int)op);
    }
}

/* A request op of the other direction is unknown, with name and seq kept. */
static void test_side_unknown(void **state)
{
    ctx_t *c = *state;
    for (int op = CW_OP_PRINT; op < CW_OP__COUNT; op++) {
        bool worker_op = op <= CW_OP_SHUTDOWN;
        pack_valid(c, (cw_op_t)op, 1000 + op);
        cw_side_t own = worker_op ? CW_SIDE_WORKER : CW_SIDE_MASTER;
        cw_side_t other = worker_op ? CW_SIDE_MASTER : CW_SIDE_WORKER;

        assert_int_equal(dec(c, own), 0);
        assert_int_equal(c->m.op, op);

        assert_int_equal(dec(c, other), 0);
        assert_int_equal(c->m.op, CW_OP_UNKNOWN);
        assert_cwstr(c->m.op_name, cw_op_name((cw_op_t)op));
        assert_int_equal(c->m.seq, 1000 + op);
    }
}

/* An op nobody knows: CW_OP_UNKNOWN on both sides, name kept for the answer. */
static void test_unknown_op(void **state)
{
    ctx_t *c = *state;
    /* Packed by hand: the encoders only know real ops. */
    assert_int_equal(msgpack_pack_map(&c->pk, 3), 0);
    assert_int_equal(cw_pack_str(&c->pk, "op"), 0);
    assert_int_equal(cw_pack_str(&c->pk, "frobnicate"), 0);
    assert_int_equal(cw_pack_str(&c->pk, "extra"), 0);
    assert_int_equal(msgpack_pack_int64(&c->pk, 1), 0);
    assert_int_equal(cw_pack_str(&c->pk, "seq_number"), 0);
    assert_int_equal(msgpack_pack_int64(&c->pk, 77), 0);
    for (int side = CW_SIDE_WORKER; side <= CW_SIDE_MASTER; side++) {
        assert_int_equal(dec(c, (cw_side_t)side), 0);
        assert_int_equal(c->m.op, CW_OP_UNKNOWN);
        assert_cwstr(c->m.op_name, "frobnicate");
        assert_int_equal(c->m.seq, 77);
    }
    /* "unknown" itself is not an op either; nor is a prefix of a real one. */
    static const char *const names[] = {"unknown", "prin", "printx", "PRINT", ""};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        cw_buf_reset(&c->buf);
        assert_int_equal(msgpack_pack_map(&c->pk, 2), 0);
        assert_int_equal(cw_pack_str(&c->pk, "op"), 0);
        assert_int_equal(cw_pack_str(&c->pk, names[i]), 0);
        assert_int_equal(cw_pack_str(&c->pk, "seq_number"), 0);
        assert_int_equal(msgpack_pack_int64(&c->pk, 1), 0);
        assert_int_equal(dec(c, CW_SIDE_WORKER), 0);
        assert_int_equal(c->m.op, CW_OP_UNKNOWN);
        assert_cwstr(c->m.op_name, names[i]);
    }
}

/* ---- obligatory keys: a table of every request and its keys ---- */

typedef enum vkind { V_STR, V_INT, V_MAP, V_NIL, V_BIN, V_FLOAT, V_PAIRS, V_SETTINGS } vkind_t;

typedef struct field {
    const char *key;
    vkind_t kind;
} field_t;

typedef struct opspec {
    cw_op_t op;
    cw_side_t side;
    size_t nfields; /* all obligatory, in the stock check order */
    field_t fields[3];
} opspec_t;

static const opspec_t specs[] = {
    {CW_OP_PRINT, CW_SIDE_WORKER, 1, {{"message", V_STR}}},
    {CW_OP_SET_WORKER_SETTINGS, CW_SIDE_WORKER, 1, {{"args", V_SETTINGS}}},
    {CW_OP_START_COMMAND,
     CW_SIDE_WORKER,
     3,
     {{"command_id", V_STR}, {"command_name", V_STR}, {"args", V_MAP}}},
    {CW_OP_INTERRUPT_COMMAND, CW_SIDE_WORKER, 2, {{"command_id", V_STR}, {"why", V_STR}}},
    {CW_OP_UPDATE, CW_SIDE_MASTER, 2, {{"command_id", V_STR}, {"args", V_PAIRS}}},
    {CW_OP_COMPLETE, CW_SIDE_MASTER, 2, {{"command_id", V_STR}, {"args", V_NIL}}},
    {CW_OP_UPLOAD_FILE_WRITE, CW_SIDE_MASTER, 2, {{"command_id", V_STR}, {"args", V_BIN}}},
    {CW_OP_UPLOAD_DIRECTORY_WRITE, CW_SIDE_MASTER, 2, {{"command_id", V_STR}, {"args", V_BIN}}},
    {CW_OP_UPLOAD_FILE_UTIME,
     CW_SIDE_MASTER,
     3,
     {{"command_id", V_STR}, {"access_time", V_FLOAT}, {"modified_time", V_FLOAT}}},
    {CW_OP_UPLOAD_FILE_CLOSE, CW_SIDE_MASTER, 1, {{"command_id", V_STR}}},
    {CW_OP_UPLOAD_DIRECTORY_UNPACK, CW_SIDE_MASTER, 1, {{"command_id", V_STR}}},
    {CW_OP_READ_FILE, CW_SIDE_MASTER, 2, {{"command_id", V_STR}, {"length", V_INT}}},
    {CW_OP_READ_FILE_CLOSE, CW_SIDE_MASTER, 1, {{"command_id", V_STR}}},
};

/* Pack a valid value of the kind, or (wrong) one of a type the kind refuses. */
static void pack_value(msgpack_packer *pk, vkind_t kind, bool wrong)
{
    switch (kind) {
    case V_STR:
    case V_BIN:
    case V_NIL:
        if (wrong) {
            assert_int_equal(msgpack_pack_int64(pk, 5), 0);
        } else if (kind == V_STR) {
            assert_int_equal(cw_pack_str(pk, "s"), 0);
        } else if (kind == V_BIN) {
            assert_int_equal(cw_pack_bin(pk, "b", 1), 0);
        } else {
            assert_int_equal(msgpack_pack_nil(pk), 0);
        }
        break;
    case V_INT:
        assert_int_equal(wrong ? cw_pack_str(pk, "5") : msgpack_pack_int64(pk, 5), 0);
        break;
    case V_FLOAT:
        assert_int_equal(wrong ? cw_pack_str(pk, "now") : msgpack_pack_double(pk, 5.5), 0);
        break;
    case V_MAP:
        assert_int_equal(wrong ? msgpack_pack_array(pk, 0) : msgpack_pack_map(pk, 0), 0);
        break;
    case V_PAIRS:
        if (wrong) {
            assert_int_equal(msgpack_pack_map(pk, 0), 0);
        } else {
            assert_int_equal(msgpack_pack_array(pk, 1), 0);
            assert_int_equal(msgpack_pack_array(pk, 2), 0);
            assert_int_equal(cw_pack_str(pk, "rc"), 0);
            assert_int_equal(msgpack_pack_int64(pk, 0), 0);
        }
        break;
    case V_SETTINGS:
        if (wrong) {
            assert_int_equal(cw_pack_str(pk, "settings"), 0);
        } else {
            assert_int_equal(msgpack_pack_map(pk, 4), 0);
            assert_int_equal(cw_pack_str(pk, "buffer_size"), 0);
            assert_int_equal(msgpack_pack_int64(pk, 1), 0);
            assert_int_equal(cw_pack_str(pk, "buffer_timeout"), 0);
            assert_int_equal(msgpack_pack_int64(pk, 1), 0);
            assert_int_equal(cw_pack_str(pk, "newline_re"), 0);
            assert_int_equal(cw_pack_str(pk, "\n"), 0);
            assert_int_equal(cw_pack_str(pk, "max_line_length"), 0);
            assert_int_equal(msgpack_pack_int64(pk, 1), 0);
        }
        break;
    }
}

/* Bit i of omit drops field i; bit i of wrong mistypes it. seq_number 42. */
static void pack_spec(ctx_t *c, const opspec_t *s, unsigned omit, unsigned wrong)
{
    size_t n = 2;
    for (size_t i = 0; i < s->nfields; i++)
        n += !(omit & (1u << i));
    cw_buf_reset(&c->buf);
    assert_int_equal(cw_pack_request_begin(&c->pk, s->op, n - 2), 0);
    for (size_t i = 0; i < s->nfields; i++) {
        if (omit & (1u << i))
            continue;
        assert_int_equal(cw_pack_str(&c->pk, s->fields[i].key), 0);
        pack_value(&c->pk, s->fields[i].kind, (wrong & (1u << i)) != 0);
    }
    assert_int_equal(cw_pack_request_end(&c->pk, 42), 0);
}

/* With every key present and well typed, every request decodes. */
static void test_spec_valid(void **state)
{
    ctx_t *c = *state;
    for (size_t i = 0; i < sizeof(specs) / sizeof(specs[0]); i++) {
        pack_spec(c, &specs[i], 0, 0);
        assert_int_equal(dec(c, specs[i].side), 0);
        assert_int_equal(c->m.op, specs[i].op);
        assert_int_equal(c->m.seq, 42);
    }
}

/* Each missing key gives the stock KeyError text, op and seq kept. */
static void test_spec_missing_key(void **state)
{
    ctx_t *c = *state;
    char want[128];
    for (size_t i = 0; i < sizeof(specs) / sizeof(specs[0]); i++) {
        const opspec_t *s = &specs[i];
        for (size_t k = 0; k < s->nfields; k++) {
            pack_spec(c, s, 1u << k, 0);
            assert_int_equal(dec(c, s->side), CW_EMSGKEY);
            snprintf(want, sizeof(want), "'message did not contain obligatory \"%s\" key'",
                     s->fields[k].key);
            assert_string_equal(c->err, want);
            assert_int_equal(c->m.op, s->op);
            assert_int_equal(c->m.seq, 42);
        }
        /* Several missing: the first in the stock order is named. */
        pack_spec(c, s, (1u << s->nfields) - 1, 0);
        assert_int_equal(dec(c, s->side), CW_EMSGKEY);
        snprintf(want, sizeof(want), "'message did not contain obligatory \"%s\" key'",
                 s->fields[0].key);
        assert_string_equal(c->err, want);
        /* A missing key wins over a mistyped one before it. */
        if (s->nfields > 1) {
            pack_spec(c, s, 1u << (s->nfields - 1), 1);
            assert_int_equal(dec(c, s->side), CW_EMSGKEY);
            snprintf(want, sizeof(want), "'message did not contain obligatory \"%s\" key'",
                     s->fields[s->nfields - 1].key);
            assert_string_equal(c->err, want);
        }
    }
}

/* Each mistyped key is CW_EMSGKEY naming the key. */
static void test_spec_wrong_type(void **state)
{
    ctx_t *c = *state;
    char want[64];
    for (size_t i = 0; i < sizeof(specs) / sizeof(specs[0]); i++) {
        const opspec_t *s = &specs[i];
        for (size_t k = 0; k < s->nfields; k++) {
            pack_spec(c, s, 0, 1u << k);
            assert_int_equal(dec(c, s->side), CW_EMSGKEY);
            snprintf(want, sizeof(want), "\"%s\"", s->fields[k].key);
            assert_non_null(strstr(c->err, want));
            assert_non_null(strstr(c->err, "wrong type"));
            assert_int_equal(c->m.op, s->op);
            assert_int_equal(c->m.seq, 42);
        }
    }
}

/* set_worker_settings: any of the four settings missing gives the stock text. */
static void test_settings_missing(void **state)
{
    ctx_t *c = *state;
    static const char *const keys[] = {"buffer_size", "buffer_timeout", "newline_re",
                                       "max_line_length"};
    for (size_t omit = 0; omit < 4; omit++) {
        cw_buf_reset(&c->buf);
        assert_int_equal(cw_pack_request_begin(&c->pk, CW_OP_SET_WORKER_SETTINGS, 1), 0);
        assert_int_equal(cw_pack_str(&c->pk, "args"), 0);
        assert_int_equal(msgpack_pack_map(&c->pk, 3), 0);
        for (size_t k = 0; k < 4; k++) {
            if (k == omit)
                continue;
            assert_int_equal(cw_pack_str(&c->pk, keys[k]), 0);
            if (k == 2)
                assert_int_equal(cw_pack_str(&c->pk, "x"), 0);
            else
                assert_int_equal(msgpack_pack_int64(&c->pk, 10), 0);
        }
        assert_int_equal(cw_pack_request_end(&c->pk, 8), 0);
        assert_int_equal(dec(c, CW_SIDE_WORKER), CW_EMSGKEY);
        assert_string_equal(c->err, "'message did not contain obligatory settings for worker'");
        assert_int_equal(c->m.seq, 8);
    }
}

/* set_worker_settings: mistyped or negative settings are refused by name. */
static void test_settings_types(void **state)
{
    ctx_t *c = *state;
    static const char *const keys[] = {"buffer_size", "buffer_timeout", "newline_re",
                                       "max_line_length"};
    for (size_t bad = 0; bad < 4; bad++) {
        for (int negative = 0; negative <= 1; negative++) {
            if (bad == 2 && negative)
                continue;
            cw_buf_reset(&c->buf);
            assert_int_equal(cw_pack_request_begin(&c->pk, CW_OP_SET_WORKER_SETTINGS, 1), 0);
            assert_int_equal(cw_pack_str(&c->pk, "args"), 0);
            assert_int_equal(msgpack_pack_map(&c->pk, 4), 0);
            for (size_t k = 0; k < 4; k++) {
                assert_int_equal(cw_pack_str(&c->pk, keys[k]), 0);
                bool is_str = k == 2;
                if (k == bad && negative)
                    assert_int_equal(msgpack_pack_int64(&c->pk, -1), 0);
                else if ((k == bad) != is_str)
                    assert_int_equal(cw_pack_str(&c->pk, "10"), 0);
                else
                    assert_int_equal(msgpack_pack_int64(&c->pk, 10), 0);
            }
            assert_int_equal(cw_pack_request_end(&c->pk, 8), 0);
            assert_int_equal(dec(c, CW_SIDE_WORKER), CW_EMSGKEY);
            char want[64];
            snprintf(want, sizeof(want), "\"%s\"", keys[bad]);
            assert_non_null(strstr(c->err, want));
        }
    }
    /* A float where an int is expected is refused too. */
    cw_buf_reset(&c->buf);
    assert_int_equal(cw_pack_request_begin(&c->pk, CW_OP_SET_WORKER_SETTINGS, 1), 0);
    assert_int_equal(cw_pack_str(&c->pk, "args"), 0);
    assert_int_equal(msgpack_pack_map(&c->pk, 4), 0);
    for (size_t k = 0; k < 4; k++) {
        assert_int_equal(cw_pack_str(&c->pk, keys[k]), 0);
        if (k == 2)
            assert_int_equal(cw_pack_str(&c->pk, "x"), 0);
        else if (k == 1)
            assert_int_equal(msgpack_pack_double(&c->pk, 5.0), 0);
        else
            assert_int_equal(msgpack_pack_int64(&c->pk, 10), 0);
    }
    assert_int_equal(cw_pack_request_end(&c->pk, 8), 0);
    assert_int_equal(dec(c, CW_SIDE_WORKER), CW_EMSGKEY);
    assert_non_null(strstr(c->err, "\"buffer_timeout\""));
}

/* Pack {"op": op, "command_id": "1", key: <value packed by fn>, "seq_number": 1}. */
static void pack_with(ctx_t *c, cw_op_t op, const char *key, void (*fn)(msgpack_packer *))
{
    cw_buf_reset(&c->buf);
    assert_int_equal(cw_pack_request_begin(&c->pk, op, 2), 0);
    assert_int_equal(cw_pack_str(&c->pk, "command_id"), 0);
    assert_int_equal(cw_pack_str(&c->pk, "1"), 0);
    assert_int_equal(cw_pack_str(&c->pk, key), 0);
    fn(&c->pk);
    assert_int_equal(cw_pack_request_end(&c->pk, 1), 0);
}

/* Bad update payloads, one shape each. */
static void pairs_not_array(msgpack_packer *pk)
{
    assert_int_equal(cw_pack_str(pk, "rc"), 0);
}
static void pairs_elem_not_array(msgpack_packer *pk)
{
    assert_int_equal(msgpack_pack_array(pk, 1), 0);
    assert_int_equal(cw_pack_str(pk, "rc"), 0);
}
static void pairs_triple(msgpack_packer *pk)
{
    assert_int_equal(msgpack_pack_array(pk, 1), 0);
    assert_int_equal(msgpack_pack_array(pk, 3), 0);
    assert_int_equal(cw_pack_str(pk, "rc"), 0);
    assert_int_equal(msgpack_pack_int64(pk, 0), 0);
    assert_int_equal(msgpack_pack_int64(pk, 0), 0);
}
static void pairs_single(msgpack_packer *pk)
{
    assert_int_equal(msgpack_pack_array(pk, 2), 0);
    assert_int_equal(msgpack_pack_array(pk, 2), 0);
    assert_int_equal(cw_pack_str(pk, "rc"), 0);
    assert_int_equal(msgpack_pack_int64(pk, 0), 0);
    assert_int_equal(msgpack_pack_array(pk, 1), 0);
    assert_int_equal(cw_pack_str(pk, "rc"), 0);
}
static void pairs_int_key(msgpack_packer *pk)
{
    assert_int_equal(msgpack_pack_array(pk, 1), 0);
    assert_int_equal(msgpack_pack_array(pk, 2), 0);
    assert_int_equal(msgpack_pack_int64(pk, 1), 0);
    assert_int_equal(msgpack_pack_int64(pk, 0), 0);
}
static void pairs_bin_key(msgpack_packer *pk)
{
    assert_int_equal(msgpack_pack_array(pk, 1), 0);
    assert_int_equal(msgpack_pack_array(pk, 2), 0);
    assert_int_equal(cw_pack_bin(pk, "rc", 2), 0);
    assert_int_equal(msgpack_pack_int64(pk, 0), 0);
}

/* update's args must be an array of [str, value] pairs. */
static void test_update_shapes(void **state)
{
    ctx_t *c = *state;
    void (*bad[])(msgpack_packer *) = {pairs_not_array, pairs_elem_not_array, pairs_triple,
                                       pairs_single,    pairs_int_key,        pairs_bin_key};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        pack_with(c, CW_OP_UPDATE, "args", bad[i]);
        assert_int_equal(dec(c, CW_SIDE_MASTER), CW_EMSGKEY);
        assert_non_null(strstr(c->err, "\"args\""));
        assert_int_equal(c->m.op, CW_OP_UPDATE);
    }
}

/* Values accepted beyond the stock senders' types, as the stock master does. */
static void val_str_abc(msgpack_packer *pk)
{
    assert_int_equal(cw_pack_str(pk, "abc"), 0);
}
static void val_bin_abc(msgpack_packer *pk)
{
    assert_int_equal(cw_pack_bin(pk, "abc", 3), 0);
}
static void val_int_1000(msgpack_packer *pk)
{
    assert_int_equal(msgpack_pack_int64(pk, 1000), 0);
}
static void val_neg1(msgpack_packer *pk)
{
    assert_int_equal(msgpack_pack_int64(pk, -1), 0);
}
static void val_u64max(msgpack_packer *pk)
{
    assert_int_equal(msgpack_pack_uint64(pk, UINT64_MAX), 0);
}
static void val_nan(msgpack_packer *pk)
{
    assert_int_equal(msgpack_pack_double(pk, NAN), 0);
}
static void val_float32(msgpack_packer *pk)
{
    assert_int_equal(msgpack_pack_float(pk, 1.5f), 0);
}
static void val_true(msgpack_packer *pk)
{
    assert_int_equal(msgpack_pack_true(pk), 0);
}

/* Per-op value rules: str for bin, bin for str failures, int/float times, lengths >= 0. */
static void test_value_rules(void **state)
{
    ctx_t *c = *state;
    /* write: str accepted like bin */
    pack_with(c, CW_OP_UPLOAD_DIRECTORY_WRITE, "args", val_str_abc);
    assert_int_equal(dec(c, CW_SIDE_MASTER), 0);
    assert_int_equal(c->m.u.write.len, 3);
    assert_memory_equal(c->m.u.write.data, "abc", 3);
    /* complete: bin failure text accepted, int refused */
    pack_with(c, CW_OP_COMPLETE, "args", val_bin_abc);
    assert_int_equal(dec(c, CW_SIDE_MASTER), 0);
    assert_true(c->m.u.complete.failed);
    assert_cwstr(c->m.u.complete.failure, "abc");
    pack_with(c, CW_OP_COMPLETE, "args", val_true);
    assert_int_equal(dec(c, CW_SIDE_MASTER), CW_EMSGKEY);
    /* read_file: negative or beyond int64 refused */
    pack_with(c, CW_OP_READ_FILE, "length", val_neg1);
    assert_int_equal(dec(c, CW_SIDE_MASTER), CW_EMSGKEY);
    assert_non_null(strstr(c->err, "\"length\""));
    pack_with(c, CW_OP_READ_FILE, "length", val_u64max);
    assert_int_equal(dec(c, CW_SIDE_MASTER), CW_EMSGKEY);
    pack_with(c, CW_OP_READ_FILE, "length", val_float32);
    assert_int_equal(dec(c, CW_SIDE_MASTER), CW_EMSGKEY);
    pack_with(c, CW_OP_READ_FILE, "length", val_int_1000);
    assert_int_equal(dec(c, CW_SIDE_MASTER), 0);
    assert_int_equal(c->m.u.read_file.length, 1000);

    /* utime: ints and float32 accepted, NaN refused */
    static void (*const times[])(msgpack_packer *) = {val_int_1000, val_float32, val_nan};
    static const double want[] = {1000.0, 1.5, 0};
    for (size_t i = 0; i < 3; i++) {
        cw_buf_reset(&c->buf);
        assert_int_equal(cw_pack_request_begin(&c->pk, CW_OP_UPLOAD_FILE_UTIME, 3), 0);
        assert_int_equal(cw_pack_str(&c->pk, "access_time"), 0);
        times[i](&c->pk);
        assert_int_equal(cw_pack_str(&c->pk, "modified_time"), 0);
        times[i](&c->pk);
        assert_int_equal(cw_pack_str(&c->pk, "command_id"), 0);
        assert_int_equal(cw_pack_str(&c->pk, "1"), 0);
        assert_int_equal(cw_pack_request_end(&c->pk, 1), 0);
        if (i < 2) {
            assert_int_equal(dec(c, CW_SIDE_MASTER), 0);
            assert_true(c->m.u.utime.access_time == want[i]);
            assert_true(c->m.u.utime.modified_time == want[i]);
        } else {
            assert_int_equal(dec(c, CW_SIDE_MASTER), CW_EMSGKEY);
            assert_non_null(strstr(c->err, "\"access_time\""));
        }
    }

    /* command_id must be a str (bin is not what the master sends) */
    cw_buf_reset(&c->buf);
    assert_int_equal(cw_pack_request_begin(&c->pk, CW_OP_UPLOAD_FILE_CLOSE, 1), 0);
    assert_int_equal(cw_pack_str(&c->pk, "command_id"), 0);
    assert_int_equal(cw_pack_bin(&c->pk, "1", 1), 0);
    assert_int_equal(cw_pack_request_end(&c->pk, 1), 0);
    assert_int_equal(dec(c, CW_SIDE_MASTER), CW_EMSGKEY);
    assert_non_null(strstr(c->err, "\"command_id\""));
}

/* builder_name is optional and, like the stock worker, not judged. */
static void test_builder_name_lenient(void **state)
{
    ctx_t *c = *state;
    for (int kind = 0; kind < 2; kind++) {
        cw_buf_reset(&c->buf);
        assert_int_equal(cw_pack_request_begin(&c->pk, CW_OP_START_COMMAND, 4), 0);
        assert_int_equal(cw_pack_str(&c->pk, "builder_name"), 0);
        if (kind == 0)
            assert_int_equal(msgpack_pack_nil(&c->pk), 0);
        else
            assert_int_equal(msgpack_pack_int64(&c->pk, 3), 0);
        assert_int_equal(cw_pack_str(&c->pk, "command_id"), 0);
        assert_int_equal(cw_pack_str(&c->pk, "1"), 0);
        assert_int_equal(cw_pack_str(&c->pk, "command_name"), 0);
        assert_int_equal(cw_pack_str(&c->pk, "mkdir"), 0);
        assert_int_equal(cw_pack_str(&c->pk, "args"), 0);
        assert_int_equal(msgpack_pack_map(&c->pk, 0), 0);
        assert_int_equal(cw_pack_request_end(&c->pk, 1), 0);
        assert_int_equal(dec(c, CW_SIDE_WORKER), 0);
        assert_int_equal(c->m.op, CW_OP_START_COMMAND);
        assert_false(c->m.u.start.has_builder_name);
        assert_cwstr(c->m.u.start.command_name, "mkdir");
    }
}

/* ---- envelope ---- */

/* Pack a map from alternating (key, kind) where kind picks the value. */
enum { E_STR_PRINT, E_INT, E_STR, E_BIN, E_FLOAT, E_U64MAX, E_NIL, E_FALSE, E_NEG };

/* Pack one envelope value of the given kind. */
static void pack_env_value(msgpack_packer *pk, int kind)
{
    switch (kind) {
    case E_STR_PRINT:
        assert_int_equal(cw_pack_str(pk, "print"), 0);
        break;
    case E_INT:
        assert_int_equal(msgpack_pack_int64(pk, 3), 0);
        break;
    case E_STR:
        assert_int_equal(cw_pack_str(pk, "3"), 0);
        break;
    case E_BIN:
        assert_int_equal(cw_pack_bin(pk, "print", 5), 0);
        break;
    case E_FLOAT:
        assert_int_equal(msgpack_pack_double(pk, 3.0), 0);
        break;
    case E_U64MAX:
        assert_int_equal(msgpack_pack_uint64(pk, UINT64_MAX), 0);
        break;
    case E_NIL:
        assert_int_equal(msgpack_pack_nil(pk), 0);
        break;
    case E_FALSE:
        assert_int_equal(msgpack_pack_false(pk), 0);
        break;
    case E_NEG:
        assert_int_equal(msgpack_pack_int64(pk, -5), 0);
        break;
    }
}

/* {"op": <op_kind or absent>, "message": "m", "seq_number": <seq_kind or absent>} */
static void pack_env(ctx_t *c, int op_kind, int seq_kind)
{
    cw_buf_reset(&c->buf);
    assert_int_equal(msgpack_pack_map(&c->pk, 1 + (op_kind >= 0) + (seq_kind >= 0)), 0);
    if (op_kind >= 0) {
        assert_int_equal(cw_pack_str(&c->pk, "op"), 0);
        pack_env_value(&c->pk, op_kind);
    }
    assert_int_equal(cw_pack_str(&c->pk, "message"), 0);
    assert_int_equal(cw_pack_str(&c->pk, "m"), 0);
    if (seq_kind >= 0) {
        assert_int_equal(cw_pack_str(&c->pk, "seq_number"), 0);
        pack_env_value(&c->pk, seq_kind);
    }
}

/* Without a str op or an int64 seq_number a message is ignored (no answer). */
static void test_envelope_ignore(void **state)
{
    ctx_t *c = *state;
    static const int cases[][2] = {
        {-1, E_INT},          {E_STR_PRINT, -1},      {-1, -1},
        {E_INT, E_INT},       {E_BIN, E_INT},         {E_NIL, E_INT},
        {E_STR_PRINT, E_STR}, {E_STR_PRINT, E_FLOAT}, {E_STR_PRINT, E_U64MAX},
        {E_STR_PRINT, E_NIL}, {E_STR_PRINT, E_FALSE},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        pack_env(c, cases[i][0], cases[i][1]);
        for (int side = CW_SIDE_WORKER; side <= CW_SIDE_MASTER; side++)
            assert_int_equal(dec(c, (cw_side_t)side), CW_EIGNORE);
    }
    /* A negative seq_number is still an int: the stock peers echo it. */
    pack_env(c, E_STR_PRINT, E_NEG);
    assert_int_equal(dec(c, CW_SIDE_WORKER), 0);
    assert_int_equal(c->m.seq, -5);
    assert_int_equal(c->m.op, CW_OP_PRINT);

    /* An empty map has neither. */
    static const uint8_t empty[] = {0x80};
    assert_int_equal(dec_bytes(c, CW_SIDE_WORKER, empty, 1), CW_EIGNORE);

    /* No err buffer: still a clean result. */
    assert_int_equal(cw_msg_decode(&c->m, &c->up, CW_SIDE_WORKER, empty, 1, NULL, 0), CW_EIGNORE);
}

/* A response needs result; is_exception counts by presence only. */
static void test_response_rules(void **state)
{
    ctx_t *c = *state;
    /* no result */
    cw_buf_reset(&c->buf);
    assert_int_equal(msgpack_pack_map(&c->pk, 2), 0);
    assert_int_equal(cw_pack_str(&c->pk, "op"), 0);
    assert_int_equal(cw_pack_str(&c->pk, "response"), 0);
    assert_int_equal(cw_pack_str(&c->pk, "seq_number"), 0);
    assert_int_equal(msgpack_pack_int64(&c->pk, 1), 0);
    assert_int_equal(dec(c, CW_SIDE_WORKER), CW_EBADMSG);
    assert_int_equal(dec(c, CW_SIDE_MASTER), CW_EBADMSG);

    /* is_exception false, nil, 0: still an exception, like "in msg" in Python */
    for (int kind = 0; kind < 3; kind++) {
        cw_buf_reset(&c->buf);
        assert_int_equal(cw_pack_response_begin(&c->pk, 2), 0);
        assert_int_equal(cw_pack_str(&c->pk, "err"), 0);
        /* patch the map header from 3 to 4 entries */
        assert_int_equal(c->buf.data[0], 0x83);
        c->buf.data[0] = 0x84;
        assert_int_equal(cw_pack_str(&c->pk, "is_exception"), 0);
        if (kind == 0)
            assert_int_equal(msgpack_pack_false(&c->pk), 0);
        else if (kind == 1)
            assert_int_equal(msgpack_pack_nil(&c->pk), 0);
        else
            assert_int_equal(msgpack_pack_int64(&c->pk, 0), 0);
        for (int side = CW_SIDE_WORKER; side <= CW_SIDE_MASTER; side++) {
            assert_int_equal(dec(c, (cw_side_t)side), 0);
            assert_int_equal(c->m.op, CW_OP_RESPONSE);
            assert_int_equal(c->m.seq, 2);
            assert_true(c->m.u.response.is_exception);
            assert_obj_str(&c->m.u.response.result, "err");
        }
    }
}

/* With duplicate keys the last one counts, as in a Python dict. */
static void test_duplicate_keys(void **state)
{
    ctx_t *c = *state;
    assert_int_equal(msgpack_pack_map(&c->pk, 4), 0);
    assert_int_equal(cw_pack_str(&c->pk, "op"), 0);
    assert_int_equal(cw_pack_str(&c->pk, "print"), 0);
    assert_int_equal(cw_pack_str(&c->pk, "seq_number"), 0);
    assert_int_equal(msgpack_pack_int64(&c->pk, 1), 0);
    assert_int_equal(cw_pack_str(&c->pk, "op"), 0);
    assert_int_equal(cw_pack_str(&c->pk, "keepalive"), 0);
    assert_int_equal(cw_pack_str(&c->pk, "seq_number"), 0);
    assert_int_equal(msgpack_pack_int64(&c->pk, 2), 0);
    assert_int_equal(dec(c, CW_SIDE_WORKER), 0);
    assert_int_equal(c->m.op, CW_OP_KEEPALIVE);
    assert_int_equal(c->m.seq, 2);
}

/* ---- malformed msgpack: all CW_EBADMSG, on both sides ---- */

/* Both sides refuse the bytes as malformed, and so does the pre-validator. */
static void assert_bad(ctx_t *c, const uint8_t *p, size_t n)
{
    char err[128];
    assert_int_equal(cw_msgpack_check(p, n, CW_MSG_MAX_DEPTH, err, sizeof(err)), CW_EBADMSG);
    assert_true(err[0] != '\0');
    for (int side = CW_SIDE_WORKER; side <= CW_SIDE_MASTER; side++) {
        assert_int_equal(dec_bytes(c, (cw_side_t)side, p, n), CW_EBADMSG);
        assert_true(c->err[0] != '\0');
    }
}

/* As assert_bad, from hex. */
static void assert_bad_hex(ctx_t *c, const char *hex)
{
    uint8_t raw[256];
    size_t n = unhex(hex, raw, sizeof(raw));
    assert_bad(c, raw, n);
}

/* The top level must be a map. */
static void test_not_a_map(void **state)
{
    ctx_t *c = *state;
    static const char *const hex[] = {
        "90",                       /* [] */
        "92 a2 6f70 a5 7072696e74", /* ["op", "print"] */
        "01",
        "c0",
        "c3",
        "a5 7072696e74",
        "c4 00",
        "cb 3ff0000000000000",
    };
    for (size_t i = 0; i < sizeof(hex) / sizeof(hex[0]); i++) {
        uint8_t raw[64];
        size_t n = unhex(hex[i], raw, sizeof(raw));
        assert_int_equal(cw_msgpack_check(raw, n, CW_MSG_MAX_DEPTH, NULL, 0), 0);
        for (int side = CW_SIDE_WORKER; side <= CW_SIDE_MASTER; side++)
            assert_int_equal(dec_bytes(c, (cw_side_t)side, raw, n), CW_EBADMSG);
    }
}

/* Map keys must be str (strict_map_key), at any depth. */
static void test_non_str_keys(void **state)
{
    ctx_t *c = *state;
    /* {1: 2, "op": "print", ...} */
    assert_bad_hex(c, "83 01 02 a2 6f70 a5 7072696e74 aa 7365715f6e756d626572 00");
    /* negative int, nil, bool, float, array, map and bin keys */
    assert_bad_hex(c, "81 ff 00");
    assert_bad_hex(c, "81 c0 00");
    assert_bad_hex(c, "81 c3 00");
    assert_bad_hex(c, "81 cb 0000000000000000 00");
    assert_bad_hex(c, "81 90 00");
    assert_bad_hex(c, "81 80 00");
    assert_bad_hex(c, "81 c4 02 6f70 00");
    /* nested: {"args": {"k": {5: nil}}} */
    assert_bad_hex(c, "81 a4 61726773 81 a1 6b 81 05 c0");
    /* the second key of a map, after a valid first entry */
    assert_bad_hex(c, "82 a1 61 01 02 03");
    /* a str value in key position parity: {"a": "b", 1: 1} */
    assert_bad_hex(c, "82 a1 61 a1 62 01 01");
}

/* str payloads (values and keys, at any depth) must be valid UTF-8. */
static void test_utf8(void **state)
{
    ctx_t *c = *state;
    static const char *const bad[] = {
        "ff",          /* invalid byte */
        "c0 80",       /* overlong NUL */
        "e0 80 80",    /* overlong */
        "ed a0 80",    /* surrogate */
        "e2 82",       /* cut sequence */
        "f4 90 80 80", /* > U+10FFFF */
        "80",          /* lone continuation */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        uint8_t seq[8];
        size_t n = unhex(bad[i], seq, sizeof(seq));
        uint8_t raw[64];
        /* as the value of "message" */
        size_t k = 0;
        raw[k++] = 0x81;
        raw[k++] = 0xa7;
        memcpy(raw + k, "message", 7);
        k += 7;
        raw[k++] = (uint8_t)(0xa0 | n);
        memcpy(raw + k, seq, n);
        k += n;
        assert_bad(c, raw, k);
        /* as a key */
        k = 0;
        raw[k++] = 0x81;
        raw[k++] = (uint8_t)(0xa0 | n);
        memcpy(raw + k, seq, n);
        k += n;
        raw[k++] = 0xc0;
        assert_bad(c, raw, k);
        /* nested in an array in a map, as str8 */
        k = 0;
        raw[k++] = 0x81;
        raw[k++] = 0xa1;
        raw[k++] = 'a';
        raw[k++] = 0x92;
        raw[k++] = 0xc0;
        raw[k++] = 0xd9;
        raw[k++] = (uint8_t)n;
        memcpy(raw + k, seq, n);
        k += n;
        assert_bad(c, raw, k);
    }
    /* Invalid UTF-8 inside bin is just bytes. */
    static const char okhex[] = "83 a2 6f70 b8 7570646174655f75706c6f61645f66696c655f7772697465"
                                " a4 61726773 c4 02 ff c0 aa 636f6d6d616e645f6964 a1 31";
    uint8_t raw[128];
    size_t n = unhex(okhex, raw, sizeof(raw));
    assert_int_equal(cw_msgpack_check(raw, n, CW_MSG_MAX_DEPTH, NULL, 0), 0);
    /* Valid multi-byte text passes: U+00E9, U+20AC, U+1F600, U+10FFFF. */
    cw_buf_reset(&c->buf);
    assert_int_equal(
        cw_pack_print(&c->pk, 1, "\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \xf4\x8f\xbf\xbf"), 0);
    assert_int_equal(dec(c, CW_SIDE_WORKER), 0);
    assert_cwstr(c->m.u.print.message, "\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \xf4\x8f\xbf\xbf");
}

/* ext and fixext (timestamps included) and the byte 0xc1 are refused anywhere. */
static void test_ext_and_c1(void **state)
{
    ctx_t *c = *state;
    static const char *const values[] = {
        "d4 01 00",
        "d5 01 0000",
        "d6 ff 00000000", /* timestamp 32 */
        "d7 ff 0000000000000000",
        "d8 01 00000000000000000000000000000000",
        "c7 01 05 00",
        "c7 0c ff 000000000000000000000000", /* timestamp 96 */
        "c8 0001 05 00",
        "c9 00000001 05 00",
        "c1",
    };
    for (size_t i = 0; i < sizeof(values) / sizeof(values[0]); i++) {
        char hex[200];
        /* as the value of "args" in a map */
        snprintf(hex, sizeof(hex), "81 a4 61726773 %s", values[i]);
        assert_bad_hex(c, hex);
        /* at the top level */
        assert_bad_hex(c, values[i]);
        /* inside an array */
        snprintf(hex, sizeof(hex), "81 a1 61 92 c0 %s", values[i]);
        assert_bad_hex(c, hex);
    }
}

/* One object per message: any trailing byte is refused. */
static void test_trailing_bytes(void **state)
{
    ctx_t *c = *state;
    assert_int_equal(cw_pack_print(&c->pk, 0, "attached"), 0);
    size_t n = c->buf.len;
    assert_int_equal(msgpack_pack_nil(&c->pk), 0);
    assert_bad(c, c->buf.data, c->buf.len);
    c->buf.len = n;
    assert_int_equal(cw_pack_print(&c->pk, 1, "attached"), 0); /* two messages */
    assert_bad(c, c->buf.data, c->buf.len);
    c->buf.len = n;
    static const uint8_t zero = 0;
    assert_int_equal(cw_buf_append(&c->buf, &zero, 1), 0);
    assert_bad(c, c->buf.data, c->buf.len);
}

/* Every strict prefix of a valid message is refused, on both sides. */
static void test_truncation(void **state)
{
    ctx_t *c = *state;
    for (int op = CW_OP_PRINT; op < CW_OP__COUNT; op++) {
        pack_valid(c, (cw_op_t)op, 300);
        uint8_t *copy = malloc(c->buf.len);
        assert_non_null(copy);
        memcpy(copy, c->buf.data, c->buf.len);
        size_t n = c->buf.len;
        for (size_t cut = 0; cut < n; cut++) {
            /* A private heap copy of the prefix lets ASan see any read past it. */
            uint8_t *p = malloc(cut ? cut : 1);
            assert_non_null(p);
            memcpy(p, copy, cut);
            assert_bad(c, p, cut);
            free(p);
        }
        assert_int_equal(
            dec_bytes(c, op <= CW_OP_SHUTDOWN ? CW_SIDE_WORKER : CW_SIDE_MASTER, copy, n), 0);
        free(copy);
    }
    /* And a response with a nested result. */
    cw_buf_reset(&c->buf);
    assert_int_equal(cw_pack_response_begin(&c->pk, 65536), 0);
    pack_shell_args(&c->pk);
    for (size_t cut = 0; cut < c->buf.len; cut++)
        assert_bad(c, c->buf.data, cut);
}

/* Declared lengths beyond the input are refused before msgpack-c allocates:
 * a fresh msgpack_unpacked still has no zone afterwards. */
static void test_oversized_lengths(void **state)
{
    ctx_t *c = *state;
    static const char *const hex[] = {
        "81 a7 6d657373616765 db ffffffff",    /* str32 claiming 4 GiB */
        "81 a7 6d657373616765 db ffffffff 41", /* ... with one byte behind */
        "81 a4 61726773 c6 ffffffff",          /* bin32 */
        "dd ffffffff",                         /* array32 of 2^32-1, nothing behind */
        "81 a4 61726773 dd ffffffff",          /* same, nested */
        "81 a4 61726773 dd ffffffff c0 c0 c0", /* a few bytes behind */
        "df ffffffff",                         /* map32 */
        "81 a4 61726773 df 80000000 a1 61 c0", /* map32 of 2^31 (2^32 elements) */
        "81 a4 61726773 dc ffff",              /* array16 */
        "81 a4 61726773 de ffff",              /* map16 */
        "81 a4 61726773 da ffff 61",           /* str16 */
        "81 a4 61726773 9f c0",                /* fixarray of 15 */
        "8f a1 61 c0",                         /* fixmap of 15 */
        /* An array whose length fits the bytes left, but not once the
         * enclosing map's pending value is counted. */
        "82 a1 61 92 c0 c0",
        /* A str that eats the bytes promised to its siblings. */
        "93 a3 616263",
        "81 a1 61 93 a2 6162 c0",
    };
    for (size_t i = 0; i < sizeof(hex) / sizeof(hex[0]); i++) {
        uint8_t raw[64];
        size_t n = unhex(hex[i], raw, sizeof(raw));
        /* Refused at the header, not by walking on to the end. */
        assert_int_equal(cw_msgpack_check(raw, n, CW_MSG_MAX_DEPTH, c->err, sizeof(c->err)),
                         CW_EBADMSG);
        assert_non_null(strstr(c->err, "declares"));
        for (int side = CW_SIDE_WORKER; side <= CW_SIDE_MASTER; side++) {
            msgpack_unpacked fresh;
            msgpack_unpacked_init(&fresh);
            assert_int_equal(
                cw_msg_decode(&c->m, &fresh, (cw_side_t)side, raw, n, c->err, sizeof(c->err)),
                CW_EBADMSG);
            assert_null(fresh.zone);
            msgpack_unpacked_destroy(&fresh);
        }
    }
}

/* Fill p with depth nested 1-element arrays around a nil; returns the size. */
static size_t nest(uint8_t *p, size_t depth)
{
    memset(p, 0x91, depth);
    p[depth] = 0xc0;
    return depth + 1;
}

/* Deep nesting is refused cleanly; the limit is exactly CW_MSG_MAX_DEPTH. */
static void test_depth(void **state)
{
    ctx_t *c = *state;
    enum { DEEP = 10000 };
    uint8_t *p = malloc(DEEP + 64);
    assert_non_null(p);

    /* 10,000 nested arrays at the top level and as a map value */
    size_t n = nest(p, DEEP);
    assert_bad(c, p, n);
    assert_int_equal(cw_msgpack_check(p, n, UINT_MAX, NULL, 0), CW_EBADMSG);
    static const uint8_t head[] = {0x81, 0xa4, 'a', 'r', 'g', 's'};
    memcpy(p, head, sizeof(head));
    n = sizeof(head) + nest(p + sizeof(head), DEEP);
    assert_bad(c, p, n);
    /* ... and as nested maps {"a": {"a": ...}} */
    free(p);
    p = malloc(3 * DEEP + 1);
    assert_non_null(p);
    for (size_t i = 0; i < DEEP; i++) {
        p[3 * i] = 0x81;
        p[3 * i + 1] = 0xa1;
        p[3 * i + 2] = 'a';
    }
    p[3 * DEEP] = 0xc0;
    assert_bad(c, p, 3 * DEEP + 1);

    /* The exact limit: a print whose extra value nests to a total depth of
     * CW_MSG_MAX_DEPTH is fine, one more level is refused. */
    for (int extra = 0; extra <= 1; extra++) {
        cw_buf_reset(&c->buf);
        assert_int_equal(cw_pack_request_begin(&c->pk, CW_OP_PRINT, 2), 0);
        assert_int_equal(cw_pack_str(&c->pk, "message"), 0);
        assert_int_equal(cw_pack_str(&c->pk, "x"), 0);
        assert_int_equal(cw_pack_str(&c->pk, "deep"), 0);
        /* map (1) + arrays (2..CW_MSG_MAX_DEPTH [+1]) */
        for (int d = 2; d <= CW_MSG_MAX_DEPTH + extra; d++)
            assert_int_equal(msgpack_pack_array(&c->pk, 1), 0);
        assert_int_equal(msgpack_pack_int64(&c->pk, 1), 0);
        assert_int_equal(cw_pack_request_end(&c->pk, 5), 0);
        if (extra == 0) {
            assert_int_equal(dec(c, CW_SIDE_WORKER), 0);
            assert_int_equal(c->m.op, CW_OP_PRINT);
        } else {
            assert_int_equal(dec(c, CW_SIDE_WORKER), CW_EBADMSG);
            assert_non_null(strstr(c->err, "nesting"));
        }
    }
    /* max_depth is the caller's: 0 allows scalars only. */
    static const uint8_t scalar[] = {0x05}, empty[] = {0x90};
    assert_int_equal(cw_msgpack_check(scalar, 1, 0, NULL, 0), 0);
    assert_int_equal(cw_msgpack_check(empty, 1, 0, NULL, 0), CW_EBADMSG);
    assert_int_equal(cw_msgpack_check(empty, 1, 1, NULL, 0), 0);
    free(p);
}

/* ---- the pre-validator accepts everything msgpack-c's packer makes ---- */

/* Reset the buffer, pack one object, check its first byte, validate it. */
#define CHECK_ONE(expr, first)                                                                     \
    do {                                                                                           \
        cw_buf_reset(&c->buf);                                                                     \
        assert_int_equal((expr), 0);                                                               \
        assert_int_equal(c->buf.data[0], (first));                                                 \
        assert_int_equal(cw_msgpack_check(c->buf.data, c->buf.len, 1, c->err, sizeof(c->err)), 0); \
    } while (0)

/* Pack a container of n elements (map: str keys), nil values. */
static int pack_container(msgpack_packer *pk, bool map, size_t n)
{
    int rc = map ? msgpack_pack_map(pk, n) : msgpack_pack_array(pk, n);
    for (size_t i = 0; i < n && rc == 0; i++) {
        if (map)
            rc = cw_pack_str(pk, "k");
        if (rc == 0)
            rc = msgpack_pack_nil(pk);
    }
    return rc;
}

/* ints of every width, floats, bin/str/array/map of every header size. */
static void test_check_accepts_packer(void **state)
{
    ctx_t *c = *state;
    msgpack_packer *pk = &c->pk;
    char *big = malloc(70000);
    assert_non_null(big);
    memset(big, 'a', 70000);

    CHECK_ONE(msgpack_pack_int64(pk, 0), 0x00);
    CHECK_ONE(msgpack_pack_int64(pk, 127), 0x7f);
    CHECK_ONE(msgpack_pack_int64(pk, 128), 0xcc);
    CHECK_ONE(msgpack_pack_int64(pk, 255), 0xcc);
    CHECK_ONE(msgpack_pack_int64(pk, 256), 0xcd);
    CHECK_ONE(msgpack_pack_int64(pk, 65535), 0xcd);
    CHECK_ONE(msgpack_pack_int64(pk, 65536), 0xce);
    CHECK_ONE(msgpack_pack_int64(pk, 0xffffffffLL), 0xce);
    CHECK_ONE(msgpack_pack_int64(pk, 0x100000000LL), 0xcf);
    CHECK_ONE(msgpack_pack_int64(pk, INT64_MAX), 0xcf);
    CHECK_ONE(msgpack_pack_uint64(pk, UINT64_MAX), 0xcf);
    CHECK_ONE(msgpack_pack_int64(pk, -1), 0xff);
    CHECK_ONE(msgpack_pack_int64(pk, -32), 0xe0);
    CHECK_ONE(msgpack_pack_int64(pk, -33), 0xd0);
    CHECK_ONE(msgpack_pack_int64(pk, -128), 0xd0);
    CHECK_ONE(msgpack_pack_int64(pk, -129), 0xd1);
    CHECK_ONE(msgpack_pack_int64(pk, -32768), 0xd1);
    CHECK_ONE(msgpack_pack_int64(pk, -32769), 0xd2);
    CHECK_ONE(msgpack_pack_int64(pk, INT32_MIN), 0xd2);
    CHECK_ONE(msgpack_pack_int64(pk, (int64_t)INT32_MIN - 1), 0xd3);
    CHECK_ONE(msgpack_pack_int64(pk, INT64_MIN), 0xd3);
    CHECK_ONE(msgpack_pack_fix_uint8(pk, 1), 0xcc);
    CHECK_ONE(msgpack_pack_fix_uint16(pk, 1), 0xcd);
    CHECK_ONE(msgpack_pack_fix_uint32(pk, 1), 0xce);
    CHECK_ONE(msgpack_pack_fix_uint64(pk, 1), 0xcf);
    CHECK_ONE(msgpack_pack_fix_int8(pk, -1), 0xd0);
    CHECK_ONE(msgpack_pack_fix_int16(pk, -1), 0xd1);
    CHECK_ONE(msgpack_pack_fix_int32(pk, -1), 0xd2);
    CHECK_ONE(msgpack_pack_fix_int64(pk, -1), 0xd3);
    CHECK_ONE(msgpack_pack_float(pk, 1.5f), 0xca);
    CHECK_ONE(msgpack_pack_double(pk, -0.1), 0xcb);
    CHECK_ONE(msgpack_pack_double(pk, NAN), 0xcb);
    CHECK_ONE(msgpack_pack_nil(pk), 0xc0);
    CHECK_ONE(msgpack_pack_false(pk), 0xc2);
    CHECK_ONE(msgpack_pack_true(pk), 0xc3);
    CHECK_ONE(cw_pack_bin(pk, big, 0), 0xc4);
    CHECK_ONE(cw_pack_bin(pk, big, 255), 0xc4);
    CHECK_ONE(cw_pack_bin(pk, big, 256), 0xc5);
    CHECK_ONE(cw_pack_bin(pk, big, 65536), 0xc6);
    CHECK_ONE(cw_pack_strn(pk, big, 0), 0xa0);
    CHECK_ONE(cw_pack_strn(pk, big, 31), 0xbf);
    CHECK_ONE(cw_pack_strn(pk, big, 32), 0xd9);
    CHECK_ONE(cw_pack_strn(pk, big, 255), 0xd9);
    CHECK_ONE(cw_pack_strn(pk, big, 256), 0xda);
    CHECK_ONE(cw_pack_strn(pk, big, 65535), 0xda);
    CHECK_ONE(cw_pack_strn(pk, big, 65536), 0xdb);
    CHECK_ONE(pack_container(pk, false, 0), 0x90);
    CHECK_ONE(pack_container(pk, false, 15), 0x9f);
    CHECK_ONE(pack_container(pk, false, 16), 0xdc);
    CHECK_ONE(pack_container(pk, false, 65535), 0xdc);
    CHECK_ONE(pack_container(pk, false, 65536), 0xdd);
    CHECK_ONE(pack_container(pk, true, 0), 0x80);
    CHECK_ONE(pack_container(pk, true, 15), 0x8f);
    CHECK_ONE(pack_container(pk, true, 16), 0xde);
    CHECK_ONE(pack_container(pk, true, 65536), 0xdf);

    /* All of them together as the args of a start_command, through the
     * whole decoder. */
    cw_buf_reset(&c->buf);
    assert_int_equal(cw_pack_start_command_begin(pk, "1", "shell", NULL), 0);
    assert_int_equal(msgpack_pack_map(pk, 1), 0);
    assert_int_equal(cw_pack_str(pk, "all"), 0);
    assert_int_equal(msgpack_pack_array(pk, 12), 0);
    assert_int_equal(msgpack_pack_int64(pk, INT64_MIN), 0);
    assert_int_equal(msgpack_pack_uint64(pk, UINT64_MAX), 0);
    assert_int_equal(msgpack_pack_float(pk, 1.5f), 0);
    assert_int_equal(msgpack_pack_double(pk, 2.5), 0);
    assert_int_equal(msgpack_pack_nil(pk), 0);
    assert_int_equal(msgpack_pack_true(pk), 0);
    assert_int_equal(cw_pack_bin(pk, big, 65536), 0);
    assert_int_equal(cw_pack_strn(pk, big, 65536), 0);
    assert_int_equal(pack_container(pk, false, 65536), 0);
    assert_int_equal(pack_container(pk, true, 65536), 0);
    assert_int_equal(pack_container(pk, true, 0), 0);
    assert_int_equal(pack_container(pk, false, 0), 0);
    assert_int_equal(cw_pack_request_end(pk, 1), 0);
    assert_int_equal(dec(c, CW_SIDE_WORKER), 0);
    const msgpack_object *all = cw_map_get(&c->m.u.start.args, "all");
    assert_non_null(all);
    assert_int_equal(all->via.array.size, 12);
    double f = 0;
    assert_true(cw_obj_num(&all->via.array.ptr[2], &f));
    assert_true(f == 1.5);
    assert_int_equal(all->via.array.ptr[6].via.bin.size, 65536);
    assert_int_equal(all->via.array.ptr[8].via.array.size, 65536);
    assert_int_equal(all->via.array.ptr[9].via.map.size, 65536);
    free(big);
}

/* ---- helpers ---- */

/* cw_map_get / cw_obj_* on hand-made objects. */
static void test_object_helpers(void **state)
{
    ctx_t *c = *state;
    msgpack_packer *pk = &c->pk;
    assert_int_equal(msgpack_pack_map(pk, 9), 0);
    assert_int_equal(cw_pack_str(pk, "a"), 0);
    assert_int_equal(msgpack_pack_int64(pk, 1), 0);
    assert_int_equal(cw_pack_str(pk, "a"), 0); /* duplicate: last wins */
    assert_int_equal(msgpack_pack_int64(pk, 2), 0);
    assert_int_equal(cw_pack_str(pk, "big"), 0);
    assert_int_equal(msgpack_pack_uint64(pk, (uint64_t)INT64_MAX + 1), 0);
    assert_int_equal(cw_pack_str(pk, "max"), 0);
    assert_int_equal(msgpack_pack_int64(pk, INT64_MAX), 0);
    assert_int_equal(cw_pack_str(pk, "neg"), 0);
    assert_int_equal(msgpack_pack_int64(pk, INT64_MIN), 0);
    assert_int_equal(cw_pack_str(pk, "bool"), 0);
    assert_int_equal(msgpack_pack_true(pk), 0);
    assert_int_equal(cw_pack_str(pk, "f32"), 0);
    assert_int_equal(msgpack_pack_float(pk, 0.5f), 0);
    assert_int_equal(cw_pack_str(pk, "bin"), 0);
    assert_int_equal(cw_pack_bin(pk, "xy", 2), 0);
    assert_int_equal(cw_pack_str(pk, ""), 0);
    assert_int_equal(cw_pack_str(pk, "empty key"), 0);
    size_t off = 0;
    assert_int_equal(msgpack_unpack_next(&c->up, (const char *)c->buf.data, c->buf.len, &off),
                     MSGPACK_UNPACK_SUCCESS);
    const msgpack_object *map = &c->up.data;
    int64_t i = 0;
    double d = 0;
    cw_str_t s;

    assert_true(cw_obj_int(cw_map_get(map, "a"), &i));
    assert_int_equal(i, 2);
    assert_false(cw_obj_int(cw_map_get(map, "big"), &i));
    assert_true(cw_obj_num(cw_map_get(map, "big"), &d));
    assert_true(d == 9223372036854775808.0);
    assert_true(cw_obj_int(cw_map_get(map, "max"), &i));
    assert_true(i == INT64_MAX);
    assert_true(cw_obj_int(cw_map_get(map, "neg"), &i));
    assert_true(i == INT64_MIN);
    assert_true(cw_obj_num(cw_map_get(map, "neg"), &d));
    assert_true(d == -9223372036854775808.0);
    assert_false(cw_obj_int(cw_map_get(map, "bool"), &i));
    assert_false(cw_obj_num(cw_map_get(map, "bool"), &d));
    assert_false(cw_obj_str(cw_map_get(map, "bool"), &s));
    assert_false(cw_obj_int(cw_map_get(map, "f32"), &i));
    assert_true(cw_obj_num(cw_map_get(map, "f32"), &d));
    assert_true(d == 0.5);
    assert_true(cw_obj_str(cw_map_get(map, "bin"), &s));
    assert_cwstr(s, "xy");
    assert_false(cw_obj_int(cw_map_get(map, "bin"), &i));
    assert_obj_str(cw_map_get(map, ""), "empty key");
    assert_null(cw_map_get(map, "missing"));
    assert_null(cw_map_get(map, "a "));
    assert_null(cw_map_get(NULL, "a"));
    assert_null(cw_map_get(cw_map_get(map, "a"), "a")); /* not a map */
    assert_false(cw_obj_str(NULL, &s));
    assert_false(cw_obj_int(NULL, &i));
    assert_false(cw_obj_num(NULL, &d));

    /* bin keys match too (command arguments built by hand) */
    cw_buf_reset(&c->buf);
    assert_int_equal(msgpack_pack_map(pk, 1), 0);
    assert_int_equal(cw_pack_bin(pk, "k", 1), 0);
    assert_int_equal(msgpack_pack_int64(pk, 9), 0);
    off = 0;
    assert_int_equal(msgpack_unpack_next(&c->up, (const char *)c->buf.data, c->buf.len, &off),
                     MSGPACK_UNPACK_SUCCESS);
    assert_true(cw_obj_int(cw_map_get(&c->up.data, "k"), &i));
    assert_int_equal(i, 9);
}

/* ---- encoder failures ---- */

/* A packer sink that accepts `budget` writes, then fails like an OOM. */
typedef struct sink {
    int budget;
    int calls;
} sink_t;

/* The failing write callback. */
static int sink_write(void *data, const char *buf, size_t len)
{
    (void)buf;
    (void)len;
    sink_t *s = data;
    s->calls++;
    return s->budget-- > 0 ? 0 : -ENOMEM;
}

/* Run encoder number `which` on pk; returns its result. */
static int run_encoder(msgpack_packer *pk, int which)
{
    cw_str_t id = {"1", 1};
    switch (which) {
    case 0:
        return cw_pack_response_nil(pk, 1);
    case 1:
        return cw_pack_response_error(pk, 1, "e", 1);
    case 2:
        return cw_pack_response_begin(pk, 1);
    case 3:
        return cw_pack_print(pk, 1, "m");
    case 4:
        return cw_pack_simple(pk, 1, CW_OP_KEEPALIVE);
    case 5:
        return cw_pack_set_worker_settings(pk, 1, 1, 2, 3, "re");
    case 6:
        return cw_pack_start_command_begin(pk, "1", "shell", "b");
    case 7:
        return cw_pack_interrupt_command(pk, 1, "1", "w");
    case 8:
        return cw_pack_complete(pk, 1, id, NULL);
    case 9:
        return cw_pack_complete(pk, 1, id, "f");
    case 10:
        return cw_pack_write(pk, 1, CW_OP_UPLOAD_FILE_WRITE, id, "d", 1);
    case 11:
        return cw_pack_cmd_simple(pk, 1, CW_OP_READ_FILE_CLOSE, id);
    case 12:
        return cw_pack_utime(pk, 1, id, 1.0, 2.0);
    case 13:
        return cw_pack_read_file(pk, 1, id, 5);
    case 14:
        return cw_pack_update_begin(pk, 2);
    case 15:
        return cw_pack_update_end(pk, 1, id);
    case 16:
        return cw_pack_request_end(pk, 1);
    case 17:
        return cw_pack_start_command_begin(pk, "1", "shell", NULL);
    default:
        return 0;
    }
}

/* Every encoder passes a failing write through, at every write it makes. */
static void test_encoder_errors(void **state)
{
    (void)state;
    for (int which = 0; which <= 17; which++) {
        msgpack_packer pk;
        sink_t s = {1000, 0};
        msgpack_packer_init(&pk, &s, sink_write);
        assert_int_equal(run_encoder(&pk, which), 0);
        int needed = s.calls;
        assert_true(needed > 0);
        for (int budget = 0; budget < needed; budget++) {
            s.budget = budget;
            s.calls = 0;
            assert_int_equal(run_encoder(&pk, which), -ENOMEM);
            /* it stops at the first failure */
            assert_int_equal(s.calls, budget + 1);
        }
    }
}

/* Ops an encoder is not for are refused without writing anything. */
static void test_encoder_misuse(void **state)
{
    ctx_t *c = *state;
    cw_str_t id = {"1", 1};
    assert_int_equal(cw_pack_request_begin(&c->pk, CW_OP_UNKNOWN, 0), -EINVAL);
    assert_int_equal(cw_pack_request_begin(&c->pk, CW_OP_RESPONSE, 0), -EINVAL);
    assert_int_equal(cw_pack_request_begin(&c->pk, CW_OP__COUNT, 0), -EINVAL);
    assert_int_equal(cw_pack_simple(&c->pk, 1, CW_OP_PRINT), -EINVAL);
    assert_int_equal(cw_pack_write(&c->pk, 1, CW_OP_UPDATE, id, "", 0), -EINVAL);
    assert_int_equal(cw_pack_cmd_simple(&c->pk, 1, CW_OP_UPLOAD_FILE_WRITE, id), -EINVAL);
    assert_int_equal(c->buf.len, 0);
#if SIZE_MAX > UINT32_MAX
    /* msgpack lengths are 32-bit; no truncated header is written */
    assert_int_equal(cw_pack_strn(&c->pk, "", (size_t)UINT32_MAX + 1), CW_ETOOBIG);
    assert_int_equal(cw_pack_bin(&c->pk, "", (size_t)UINT32_MAX + 1), CW_ETOOBIG);
    assert_int_equal(cw_pack_update_begin(&c->pk, (size_t)UINT32_MAX + 1), CW_ETOOBIG);
    assert_int_equal(c->buf.len, 0);
#endif
}

/* One msgpack_unpacked serves many messages, good and bad, without leaks. */
static void test_unpacked_reuse(void **state)
{
    ctx_t *c = *state;
    for (int i = 0; i < 200; i++) {
        cw_op_t op = (cw_op_t)(CW_OP_PRINT + i % (CW_OP__COUNT - CW_OP_PRINT));
        cw_side_t side = op <= CW_OP_SHUTDOWN ? CW_SIDE_WORKER : CW_SIDE_MASTER;
        pack_valid(c, op, i);
        assert_int_equal(dec(c, side), 0);
        assert_int_equal(c->m.seq, i);
        /* a bad one in between: truncated by one byte */
        assert_int_equal(dec_bytes(c, side, c->buf.data, c->buf.len - 1), CW_EBADMSG);
        /* one the pre-validator passes but the envelope refuses */
        static const uint8_t arr[] = {0x90};
        assert_int_equal(dec_bytes(c, side, arr, 1), CW_EBADMSG);
    }
}

/* ---- sizes beyond 4 GiB (32-bit targets: size_t and long are 32 bits) ---- */

/* Transfer arguments: maxsize is carried as int64_t unchanged; blocksize is
 * capped (16 MiB) before anything narrows it. */
static void test_transfer_sizes_64bit(void **state)
{
    ctx_t *c = *state;
    const int64_t big = ((int64_t)5 << 30) + 1; /* 5 GiB + 1: the low 32 bits are 1 */
    msgpack_pack_map(&c->pk, 5);
    cw_pack_str(&c->pk, "compress");
    msgpack_pack_nil(&c->pk);
    cw_pack_str(&c->pk, "mode");
    msgpack_pack_nil(&c->pk);
    cw_pack_str(&c->pk, "path");
    cw_pack_str(&c->pk, "out.bin");
    cw_pack_str(&c->pk, "maxsize");
    msgpack_pack_int64(&c->pk, big);
    cw_pack_str(&c->pk, "blocksize");
    msgpack_pack_int64(&c->pk, big);
    msgpack_unpacked_destroy(&c->up);
    msgpack_unpacked_init(&c->up);
    assert_int_equal(msgpack_unpack_next(&c->up, (const char *)c->buf.data, c->buf.len, NULL),
                     MSGPACK_UNPACK_SUCCESS);
    for (cw_cmd_kind_t k = CW_CMD_UPLOAD_FILE; k <= CW_CMD_DOWNLOAD_FILE; k++) {
        cw_args_t a;
        assert_int_equal(cw_args_parse(&a, k, &c->up.data, c->err, sizeof c->err), 0);
        assert_true(a.maxsize == big);
        assert_true(a.blocksize == (16 << 20));
        cw_args_free(&a);
    }
}

/* update_read_file lengths beyond 4 GiB decode unchanged, and the clamp a
 * reader applies before narrowing never yields the low 32 bits. */
static void test_read_file_length_64bit(void **state)
{
    ctx_t *c = *state;
    const int64_t big = ((int64_t)4 << 30) + 1; /* 4 GiB + 1 */
    cw_str_t id = {"7", 1};
    assert_int_equal(cw_pack_read_file(&c->pk, 3, id, big), 0);
    assert_int_equal(dec(c, CW_SIDE_MASTER), 0);
    assert_true(c->m.u.read_file.length == big);

    const size_t cap = (size_t)16 << 20;
    assert_true(cw_clamp_size(big, cap) == cap);
    assert_true(cw_clamp_size(((int64_t)1 << 32) + 10, cap) == cap);
    assert_true(cw_clamp_size(10, cap) == 10);
    assert_true(cw_clamp_size(0, cap) == 0);
    assert_true(cw_clamp_size(-5, cap) == 0);
    assert_true(cw_clamp_size(INT64_MAX, SIZE_MAX) ==
                (SIZE_MAX < (uint64_t)INT64_MAX ? SIZE_MAX : (size_t)INT64_MAX));
    /* a 64-bit size_t carries it whole; a 32-bit one saturates, never wraps */
    if (SIZE_MAX > UINT32_MAX)
        assert_true(cw_clamp_size(big, SIZE_MAX) == (size_t)big);
    else
        assert_true(cw_clamp_size(big, SIZE_MAX) == SIZE_MAX);
}

/* Long paths in messages: head and tail kept, the middle named, UTF-8 intact. */
static void test_buf_append_elided(void **state)
{
    (void)state;
    cw_buf_t b = CW_BUF_INIT;
    assert_int_equal(cw_buf_append_elided(&b, "short", 100), 0);
    assert_int_equal(b.len, 5);
    assert_memory_equal(b.data, "short", 5);
    /* 1000 bytes: a-block, 2-byte characters in the middle, z-block */
    char s[1001];
    memset(s, 'a', 300);
    for (int i = 300; i < 700; i += 2) {
        s[i] = (char)0xC3;
        s[i + 1] = (char)0xA9;
    }
    memset(s + 700, 'z', 300);
    s[1000] = '\0';
    cw_buf_reset(&b);
    assert_int_equal(cw_buf_append_elided(&b, s, 200), 0);
    assert_true(b.len < 220);
    assert_memory_equal(b.data, "aaaa", 4);
    assert_memory_equal(b.data + b.len - 4, "zzzz", 4);
    assert_true(cw_utf8_valid(b.data, b.len));
    assert_non_null(memmem(b.data, b.len, " bytes]...", 10));
    /* the numbers add up: head + tail + elided = whole */
    const char *open = memmem(b.data, b.len, "...[", 4);
    assert_non_null(open);
    size_t head = (size_t)(open - (const char *)b.data);
    size_t elided = strtoul(open + 4, NULL, 10);
    const char *close = memmem(b.data, b.len, "]...", 4);
    size_t tail = b.len - (size_t)(close + 4 - (const char *)b.data);
    assert_int_equal(head + elided + tail, 1000);
    cw_buf_free(&b);
}

int main(void)
{
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_op_names),
        T(test_bytes_response_nil),
        T(test_bytes_print),
        T(test_bytes_upload_file_write),
        T(test_bytes_error_response),
        T(test_rt_print),
        T(test_rt_simple),
        T(test_rt_settings),
        T(test_rt_start_command),
        T(test_rt_interrupt),
        T(test_rt_responses),
        T(test_rt_update),
        T(test_rt_complete),
        T(test_rt_write),
        T(test_rt_cmd_simple),
        T(test_rt_utime),
        T(test_rt_read_file),
        T(test_side_unknown),
        T(test_unknown_op),
        T(test_spec_valid),
        T(test_spec_missing_key),
        T(test_spec_wrong_type),
        T(test_settings_missing),
        T(test_settings_types),
        T(test_update_shapes),
        T(test_value_rules),
        T(test_builder_name_lenient),
        T(test_envelope_ignore),
        T(test_response_rules),
        T(test_duplicate_keys),
        T(test_not_a_map),
        T(test_non_str_keys),
        T(test_utf8),
        T(test_ext_and_c1),
        T(test_trailing_bytes),
        T(test_truncation),
        T(test_oversized_lengths),
        T(test_depth),
        T(test_check_accepts_packer),
        T(test_object_helpers),
        T(test_encoder_errors),
        T(test_encoder_misuse),
        T(test_unpacked_reuse),
        T(test_transfer_sizes_64bit),
        T(test_read_file_length_64bit),
        T(test_buf_append_elided),
    };
#undef T
    return cmocka_run_group_tests(tests, NULL, NULL);
}
