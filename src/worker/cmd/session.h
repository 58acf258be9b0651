/* The session: what a command sees of the link to the master.
 *
 * A command reports through its session only, whatever the protocol: it
 * fills its output buffer (cw_outbuf_t: header and stream lines, rc and other
 * values), the command layer asks the session to send updates and the final
 * `complete`, and transfers ask for data or hand it over with cw_xfer
 * requests, each answered exactly once.  The msgpack/WebSocket link
 * (link_msgpack.c) implements it; a second protocol implements the same
 * table and changes no command.
 *
 * Lifetime: a session lives as long as one attached link.  Commands keep a
 * pointer to the session that started them (cmd->session); when the link
 * goes, the owner calls cw_cmds_session_gone(), which clears those pointers
 * (and detaches the commands) before the session is freed.  A session never
 * calls back into a command after ops->release(cmd).
 */
#ifndef CW_CMD_SESSION_H
#define CW_CMD_SESSION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct cw_session cw_session_t;
typedef struct cw_cmd cw_cmd_t;

/* Transfer requests (reference §7.3): what the command asks of the master's
 * FileWriter (upload) or FileReader (download). */
typedef enum cw_xfer_op {
    CW_XFER_WRITE,      /* upload_file / upload_directory: a block of data */
    CW_XFER_CLOSE,      /* upload_file: the file is complete */
    CW_XFER_UTIME,      /* upload_file with keepstamp: access and modification times */
    CW_XFER_UNPACK,     /* upload_directory: the tar stream is complete */
    CW_XFER_READ,       /* download_file: up to `length` bytes */
    CW_XFER_READ_CLOSE, /* download_file: done reading */
} cw_xfer_op_t;

/* One transfer request. */
typedef struct cw_xfer_req {
    cw_xfer_op_t op;
    const uint8_t *data; /* WRITE: the block (copied by the session) */
    size_t len;
    int64_t length;      /* READ: how much is asked for */
    double atime, mtime; /* UTIME */
} cw_xfer_req_t;

/* The answer to one transfer request.  Pointers live only during the
 * callback. */
typedef struct cw_xfer_answer {
    int status;        /* 0: answered; CW_EPROTO: the master refused (error
                          says why); CW_ECLOSED: the link went first */
    const char *error; /* the master's refusal text, not NUL-terminated */
    size_t error_len;
    const uint8_t *data; /* READ: the data; len 0 with nil false is EOF */
    size_t len;
    bool nil;      /* READ: the master answered nil instead of data */
    bool not_data; /* READ: the answer was neither data nor nil */
} cw_xfer_answer_t;

typedef void (*cw_xfer_cb)(cw_cmd_t *cmd, const cw_xfer_answer_t *answer);

typedef struct cw_session_ops {
    /* True while the link can take another update now (flow control:
     * unanswered updates and the socket's send queue). */
    bool (*can_send)(cw_session_t *s);
    /* Send one update taken from the front of cmd->out.  Returns 1 when one
     * was sent, 0 when nothing was pending, or a negative code. */
    int (*send_update)(cw_session_t *s, cw_cmd_t *cmd);
    /* Send `complete` (failure NULL: success). */
    int (*send_complete)(cw_session_t *s, cw_cmd_t *cmd, const char *failure);
    /* A transfer request; cb is called exactly once with the answer, or
     * with status CW_ECLOSED when the link goes first, unless the command
     * is released before.  Returns 0, or a negative code (then cb is never
     * called). */
    int (*xfer)(cw_session_t *s, cw_cmd_t *cmd, const cw_xfer_req_t *req, cw_xfer_cb cb);
    /* The command is going away: drop its pending callbacks and whatever the
     * session keeps for it. */
    void (*release)(cw_session_t *s, cw_cmd_t *cmd);
} cw_session_ops_t;

struct cw_session {
    const cw_session_ops_t *ops;
    const char *protocol; /* "msgpack", for logs */
    size_t max_block;     /* largest transfer block the protocol carries */
};

#endif
