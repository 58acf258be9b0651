/* cmdref.update([[{key: value}, 0], ...]) from a cw_outbuf_t plan
 * (pb_update.h). */
#include "cworker/pb_update.h"

#include <errno.h>
#include <string.h>

/* One [{key: value}, 0] pair. */
static void put_pair(cw_jelly_enc_t *e, const cw_out_pair_t *p)
{
    cw_jelly_list(e, 2);
    cw_jelly_dict(e, 1);
    if (p->kind == CW_OUT_TEXT) {
        cw_jelly_str(e, cw_stream_key(p->stream));
        if (p->stream == CW_STREAM_LOG) {
            cw_jelly_tuple(e, 2);
            cw_jelly_unicode_lossy(e, p->key, p->key_len);
        }
        cw_jelly_unicode_trusted(e, p->data, p->len); /* repaired by the outbuf */
    } else {
        cw_jelly_unicode_lossy(e, p->key, p->key_len);
        switch (p->kind) {
        case CW_OUT_INT:
            cw_jelly_int64(e, p->ival);
            break;
        case CW_OUT_FLOAT:
            cw_jelly_float(e, p->fval);
            break;
        case CW_OUT_STR:
            cw_jelly_unicode_trusted(e, p->data, p->len);
            break;
        case CW_OUT_STRLIST: {
            cw_jelly_list(e, p->count);
            const char *s = p->data;
            for (size_t i = 0; i < p->count; i++) {
                size_t len = strlen(s);
                cw_jelly_unicode_trusted(e, s, len);
                s += len + 1;
            }
            break;
        }
        case CW_OUT_NUMLIST:
            cw_jelly_tuple(e, p->count);
            for (size_t i = 0; i < p->count; i++) {
                if (p->nums[i].is_unsigned)
                    cw_jelly_uint64(e, p->nums[i].u);
                else
                    cw_jelly_int64(e, p->nums[i].i);
            }
            break;
        default:
            cw_jelly_none(e);
            break;
        }
    }
    cw_jelly_int64(e, 0);
}

/* Encode pairs [from, to) of the plan as one update call. */
static int send_pairs(cw_pb_t *pb, int64_t cmdref, const cw_outbuf_t *ob, const cw_out_plan_t *plan,
                      size_t from, size_t to, void *ctx)
{
    cw_jelly_enc_t e;
    int rc = cw_pb_call_begin(pb, cmdref, "update", 1, ctx, &e, NULL);
    if (rc < 0)
        return rc;
    cw_jelly_list(&e, to - from);
    for (size_t k = from; k < to; k++) {
        cw_out_pair_t pair;
        cw_outbuf_plan_pair(ob, plan, k, &pair);
        put_pair(&e, &pair);
    }
    cw_jelly_dict(&e, 0);
    return cw_pb_call_end(pb, &e);
}

int cw_pb_send_update(cw_pb_t *pb, int64_t cmdref, cw_outbuf_t *ob, void *ctx, bool *dropped)
{
    *dropped = false;
    cw_out_plan_t plan;
    size_t n = cw_outbuf_plan(ob, &plan);
    if (n == 0)
        return 0;
    int rc = send_pairs(pb, cmdref, ob, &plan, 0, n, ctx);
    if (rc == CW_ETOOBIG) {
        /* Some pair is over banana's limits (the text of a planned update
         * is at most buffer_size plus one line, so only a huge list gets
         * here): send the others one by one and drop the culprits. */
        bool sent = false;
        for (size_t k = 0; k < n; k++) {
            rc = send_pairs(pb, cmdref, ob, &plan, k, k + 1, sent ? NULL : ctx);
            if (rc == CW_ETOOBIG)
                *dropped = true;
            else if (rc < 0)
                break;
            else
                sent = true;
        }
        if (!sent && rc < 0 && rc != CW_ETOOBIG)
            return rc;
        cw_outbuf_commit(ob, &plan);
        return sent ? 1 : 0;
    }
    if (rc < 0)
        return rc;
    cw_outbuf_commit(ob, &plan);
    return 1;
}
