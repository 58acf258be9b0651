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

#endif
