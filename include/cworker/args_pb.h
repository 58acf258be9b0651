/* startCommand's arguments over Perspective Broker (args_pb.c): the step's
 * arguments (jelly), with paths relative to the builder's directory, into
 * the neutral cw_args_t (args.h), through the msgpack validator so both
 * protocols follow the same rules. */
#ifndef CWORKER_ARGS_PB_H
#define CWORKER_ARGS_PB_H

#include <stdint.h>

#include "cworker/args.h"
#include "cworker/jelly.h"

/* The master's objects a transfer command names: its FileWriter (uploads)
 * or FileReader (downloads), 0 when absent. */
typedef struct cw_pb_refs {
    int64_t writer;
    int64_t reader;
} cw_pb_refs_t;

/* Convert and validate args (a dictionary) for command kind.  builder_dir is
 * join(worker basedir, the builder's builddir); home expands a leading "~"
 * of workersrc/workerdest (NULL: no expansion).  Returns 0, CW_EBADARG with
 * the reason in err, or -ENOMEM; on error *out holds nothing. */
int cw_args_from_pb(cw_args_t *out, cw_cmd_kind_t kind, const cw_jelly_t *args,
                    const char *builder_dir, const char *home, cw_pb_refs_t *refs, char *err,
                    size_t errlen);

#endif
