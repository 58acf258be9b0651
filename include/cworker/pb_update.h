/* The Perspective Broker form of a command's output (reference PB §7.3):
 * the pairs a cw_outbuf_t plans (output.h) sent as one call
 * cmdref.update([[{key: value}, 0], ...]).  Text goes as plain unicode
 * fragments (the master re-splits lines itself), a log's text as the tuple
 * (logname, text), numbers as ints and floats, lists as lists. */
#ifndef CWORKER_PB_UPDATE_H
#define CWORKER_PB_UPDATE_H

#include "cworker/output.h"
#include "cworker/pb.h"

/* Send the next planned update of ob to the master's RemoteCommand cmdref
 * (a held reference).  Returns 1 when an update call carrying ctx was sent
 * (its answer brings ctx back; the pairs are removed from ob), 0 when
 * nothing was sent, or a negative code with ob unchanged (-ENOTCONN,
 * -ENOMEM, CW_EBADARG).  A pair banana cannot carry (a list of more than
 * 655,360 entries) is dropped with *dropped set, so output never stalls on
 * it; when every planned pair was dropped the result is 0. */
int cw_pb_send_update(cw_pb_t *pb, int64_t cmdref, cw_outbuf_t *ob, void *ctx, bool *dropped);

/* Bytes that belong in the output at offset `at` but were not copied there: the caller
 * writes out[0, h[0].at), h[0]'s bytes, out[h[0].at, h[1].at), ... (offsets ascending). */
typedef struct cw_pb_hole {
    const uint8_t *data;
    size_t len;
    size_t at;
} cw_pb_hole_t;

#define CW_PB_MAX_HOLES 4

typedef struct cw_pb_holes {
    cw_pb_hole_t h[CW_PB_MAX_HOLES];
    size_t n;
} cw_pb_holes_t;

/* Text of an update from this size on is left as a hole (not copied). */
#define CW_PB_HOLE_MIN 4096

/* cw_pb_send_update, but large text (up to CW_PB_MAX_HOLES pieces) is not copied into
 * the output: it is appended to holes, pointing into ob, valid until ob is next changed
 * (the caller hands the output to the socket before that). */
int cw_pb_send_update_holes(cw_pb_t *pb, int64_t cmdref, cw_outbuf_t *ob, void *ctx, bool *dropped,
                            cw_pb_holes_t *holes);

#endif
