/* Message layer of msgpack_experimental_v7: envelope and typed ops.
 *
 * Decoding is two-stage.  cw_msgpack_check() walks the raw bytes first and
 * refuses, before msgpack-c allocates anything, input whose declared lengths
 * exceed the bytes present, nesting deeper than CW_MSG_MAX_DEPTH, str values
 * that are not UTF-8, map keys that are not str, ext types and trailing
 * bytes.  Then msgpack-c builds the object tree and cw_msg_decode() checks the
 * envelope and the op-specific keys and types, filling cw_msg_t.
 *
 * Every outcome is a value, never a crash:
 *   0           valid message (m->op may be CW_OP_UNKNOWN: answer "Command
 *               <op> does not exist." with an exception response)
 *   CW_EBADMSG  not a well-formed msgpack map: the stock peers drop the
 *               connection; so do we
 *   CW_EIGNORE  a map without a str `op` or an int `seq_number`: the stock
 *               peers log and ignore it (no answer)
 *   CW_EMSGKEY  a known request whose op-specific key is missing or has the
 *               wrong type: answer an exception response carrying `err`
 *               (m->seq is valid)
 *   -ENOMEM
 * For responses, a missing `result` is CW_EBADMSG (a response cannot be
 * answered).
 */
#ifndef CWORKER_MSG_H
#define CWORKER_MSG_H

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cworker/args.h"
#include "cworker/buf.h"
#include "cworker/cw.h"

#define CW_MSG_MAX_DEPTH 32

typedef enum cw_op {
    CW_OP_UNKNOWN = 0,
    CW_OP_RESPONSE,
    /* master -> worker requests */
    CW_OP_PRINT,
    CW_OP_KEEPALIVE,
    CW_OP_GET_WORKER_INFO,
    CW_OP_SET_WORKER_SETTINGS,
    CW_OP_START_COMMAND,
    CW_OP_INTERRUPT_COMMAND,
    CW_OP_SHUTDOWN,
    /* worker -> master requests */
    CW_OP_UPDATE,
    CW_OP_COMPLETE,
    CW_OP_UPLOAD_FILE_WRITE,
    CW_OP_UPLOAD_FILE_CLOSE,
    CW_OP_UPLOAD_FILE_UTIME,
    CW_OP_UPLOAD_DIRECTORY_WRITE,
    CW_OP_UPLOAD_DIRECTORY_UNPACK,
    CW_OP_READ_FILE,
    CW_OP_READ_FILE_CLOSE,
    CW_OP__COUNT
} cw_op_t;

/* Which side is decoding: it decides which request ops are known.  A worker
 * receiving "update" answers "Command update does not exist." like the stock
 * worker does. */
typedef enum cw_side {
    CW_SIDE_WORKER, /* decodes master -> worker requests */
    CW_SIDE_MASTER, /* decodes worker -> master requests */
} cw_side_t;

/* Wire name of an op ("response", "print", "update_read_file", ...). */
const char *cw_op_name(cw_op_t op);
/* The answer to a request whose op this side does not handle, as the stock
 * peers word it: "Command NAME does not exist." (appended, NUL-terminated).
 * 0 or -ENOMEM. */
int cw_op_unknown_text(cw_buf_t *out, cw_str_t op_name);

/* A decoded message.  Every cw_str_t and msgpack_object inside points into
 * the msgpack_unpacked given to cw_msg_decode() and into the `data` bytes
 * given to it (msgpack-c does not copy str/bin payloads): both must outlive
 * the use of the message. */
typedef struct cw_msg {
    cw_op_t op;
    cw_str_t op_name; /* as received (for the "does not exist" answer) */
    int64_t seq;
    union {
        struct { /* CW_OP_RESPONSE */
            msgpack_object result;
            bool is_exception; /* key present (its value is not looked at) */
        } response;
        struct { /* CW_OP_PRINT */
            cw_str_t message;
        } print;
        struct { /* CW_OP_SET_WORKER_SETTINGS; all four keys required */
            int64_t buffer_size;
            int64_t buffer_timeout;
            int64_t max_line_length;
            cw_str_t newline_re;
        } settings;
        struct { /* CW_OP_START_COMMAND */
            cw_str_t command_id;
            cw_str_t command_name;
            msgpack_object args; /* a map (checked) */
            bool has_builder_name;
            cw_str_t builder_name;
        } start;
        struct { /* CW_OP_INTERRUPT_COMMAND; why required like the stock worker */
            cw_str_t command_id;
            cw_str_t why;
        } interrupt;
        struct { /* CW_OP_UPDATE: args is an array of 2-element arrays whose
                    first element is a str (checked) */
            cw_str_t command_id;
            msgpack_object args;
        } update;
        struct { /* CW_OP_COMPLETE: args nil (success) or str (failure) */
            cw_str_t command_id;
            bool failed;
            cw_str_t failure;
        } complete;
        struct { /* CW_OP_UPLOAD_FILE_WRITE, CW_OP_UPLOAD_DIRECTORY_WRITE:
                    args bin (str accepted too, like the stock master) */
            cw_str_t command_id;
            const uint8_t *data;
            size_t len;
        } write;
        struct { /* CW_OP_UPLOAD_FILE_CLOSE, CW_OP_UPLOAD_DIRECTORY_UNPACK,
                    CW_OP_READ_FILE_CLOSE */
            cw_str_t command_id;
        } cmd;
        struct { /* CW_OP_UPLOAD_FILE_UTIME: int or float accepted */
            cw_str_t command_id;
            double access_time;
            double modified_time;
        } utime;
        struct { /* CW_OP_READ_FILE: length >= 0 */
            cw_str_t command_id;
            int64_t length;
        } read_file;
    } u;
} cw_msg_t;

/* Validate raw msgpack bytes (see top of file).  Returns 0 or CW_EBADMSG with
 * a reason in err. */
int cw_msgpack_check(const uint8_t *data, size_t len, unsigned max_depth, char *err, size_t errlen);

/* Decode one WebSocket message.  `up` must have been initialised with
 * msgpack_unpacked_init(); it is reused across calls (the caller destroys it
 * with msgpack_unpacked_destroy()).  On CW_EMSGKEY, err holds the exact
 * answer text of the stock peers, e.g.
 *   'message did not contain obligatory "command_id" key'
 * (single quotes included).  On other errors err holds a log-friendly reason. */
int cw_msg_decode(cw_msg_t *m, msgpack_unpacked *up, cw_side_t side, const uint8_t *data,
                  size_t len, char *err, size_t errlen);

/* ---- small object helpers (for command arguments) ---- */

/* Find key in a map object; NULL if absent or obj is not a map. Keys are
 * compared as str (bin keys also match). */
const msgpack_object *cw_map_get(const msgpack_object *map, const char *key);
/* True and *out set if o is a str (or bin). */
bool cw_obj_str(const msgpack_object *o, cw_str_t *out);
/* True and *out set if o is an int (positive or negative) fitting int64. */
bool cw_obj_int(const msgpack_object *o, int64_t *out);
/* True and *out set if o is an int or a float. */
bool cw_obj_num(const msgpack_object *o, double *out);

/* ---- encoding ----
 * Messages are packed with a msgpack_packer that appends to a cw_buf_t
 * (cw_pack_init).  Key order follows the stock peers: op first, seq_number
 * last, except responses (op, seq_number, result, is_exception).
 * The functions return 0 or -ENOMEM (the packer callback's failure). */

void cw_pack_init(msgpack_packer *pk, cw_buf_t *out);
int cw_pack_str(msgpack_packer *pk, const char *s);
int cw_pack_strn(msgpack_packer *pk, const char *s, size_t len);
int cw_pack_cwstr(msgpack_packer *pk, cw_str_t s);
int cw_pack_bin(msgpack_packer *pk, const void *data, size_t len);

/* Response with result nil. */
int cw_pack_response_nil(msgpack_packer *pk, int64_t seq);
/* Exception response: result = msg, is_exception = true. */
int cw_pack_response_error(msgpack_packer *pk, int64_t seq, const char *msg, size_t len);
/* Opens a response: packs op, seq_number and the "result" key; the caller
 * packs exactly one object (the result) next. */
int cw_pack_response_begin(msgpack_packer *pk, int64_t seq);

/* Opens a request with `nextra` op-specific keys: packs the map header and
 * op.  The caller packs the nextra key/value pairs, then cw_pack_request_end. */
int cw_pack_request_begin(msgpack_packer *pk, cw_op_t op, size_t nextra);
int cw_pack_request_end(msgpack_packer *pk, int64_t seq);

/* Complete requests.  */
int cw_pack_print(msgpack_packer *pk, int64_t seq, const char *message);
int cw_pack_simple(msgpack_packer *pk, int64_t seq,
                   cw_op_t op); /* keepalive, get_worker_info, shutdown */
int cw_pack_set_worker_settings(msgpack_packer *pk, int64_t seq, int64_t buffer_size,
                                int64_t buffer_timeout, int64_t max_line_length,
                                const char *newline_re);
/* start_command: args are packed by the caller right after this call (one
 * map object); builder_name NULL = key absent.  Then cw_pack_request_end. */
int cw_pack_start_command_begin(msgpack_packer *pk, const char *command_id,
                                const char *command_name, const char *builder_name);
int cw_pack_interrupt_command(msgpack_packer *pk, int64_t seq, const char *command_id,
                              const char *why);
/* complete: failure NULL = nil. */
int cw_pack_complete(msgpack_packer *pk, int64_t seq, cw_str_t command_id, const char *failure);
/* update_upload_file_write / update_upload_directory_write. */
int cw_pack_write(msgpack_packer *pk, int64_t seq, cw_op_t op, cw_str_t command_id,
                  const void *data, size_t len);
/* update_upload_file_close / update_upload_directory_unpack / update_read_file_close. */
int cw_pack_cmd_simple(msgpack_packer *pk, int64_t seq, cw_op_t op, cw_str_t command_id);
int cw_pack_utime(msgpack_packer *pk, int64_t seq, cw_str_t command_id, double access_time,
                  double modified_time);
int cw_pack_read_file(msgpack_packer *pk, int64_t seq, cw_str_t command_id, int64_t length);

/* One complete `update` request for command_id with the given seq, made of
 * the next pairs cw_outbuf_plan() takes from ob, which are then removed.
 * Returns 1 when a message was packed, 0 when nothing was pending, -ENOMEM
 * on failure (then nothing was removed). */
/* ---- start_command's arguments (args.c) ---- */

/* Validate `args` (a map) for command `kind` into *a (args.h).  Returns 0,
 * CW_EBADARG with a message in err, or -ENOMEM.  On error *a holds nothing
 * to free. */
int cw_args_parse(cw_args_t *a, cw_cmd_kind_t kind, const msgpack_object *args, char *err,
                  size_t errlen);
/* The `env` argument (nil, a map, or anything else: kept for cw_env_build
 * to report) as owned entries; 0 or -ENOMEM. */
int cw_env_arg_from_msgpack(cw_env_arg_t *out, const msgpack_object *env);

struct cw_outbuf;
int cw_pack_update(msgpack_packer *pk, int64_t seq, cw_str_t command_id, struct cw_outbuf *ob);
/* update: packs op, "args" key and the array header of npairs; the caller
 * packs npairs [key, value] arrays, then cw_pack_update_end. */
int cw_pack_update_begin(msgpack_packer *pk, size_t npairs);
int cw_pack_update_end(msgpack_packer *pk, int64_t seq, cw_str_t command_id);

#endif
