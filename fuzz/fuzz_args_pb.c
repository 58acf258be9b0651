/* Fuzz target: startCommand's arguments over Perspective Broker.  The input
 * is one banana expression (VOCAB on, as after the dialect) decoded as jelly,
 * then converted for every command kind the way link_pb.c does it (paths
 * joined with a builder directory, "~" expanded), then, for a shell, the
 * environment built from it. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cworker/args_pb.h"
#include "cworker/banana.h"
#include "cworker/env.h"
#include "cworker/jelly.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c))                                                                                  \
            abort();                                                                               \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    cw_banana_dec_t d;
    cw_banana_dec_init(&d, NULL);
    cw_banana_dec_set_vocab(&d, true);
    size_t used;
    cw_banana_msg_t *m = NULL;
    int rc = cw_banana_dec_feed(&d, data, size, &used, &m);
    cw_banana_dec_free(&d);
    if (rc < 0 || m == NULL)
        return 0;
    cw_jelly_doc_t *doc = cw_jelly_doc_new(m);
    CHECK(doc != NULL);
    cw_jelly_t v;
    cw_jelly_err_t jerr;
    cw_jelly_dec_opts_t o = {.max_nodes = 100000};
    if (cw_jelly_decode(doc, m->root, &o, &v, &jerr) == 0) {
        for (int k = 0; k < CW_CMD__COUNT; k++) {
            char err[512];
            cw_args_t a;
            cw_pb_refs_t refs;
            rc = cw_args_from_pb(&a, (cw_cmd_kind_t)k, &v, "/w/builder", (k & 1) ? "/home/u" : NULL,
                                 &refs, err, sizeof err);
            if (rc < 0) {
                CHECK(err[0] != '\0');
                CHECK(refs.writer == 0 && refs.reader == 0);
                continue;
            }
            if (k == CW_CMD_SHELL) {
                static char *base[] = {"HOME=/root", "PATH=/usr/bin:/bin", NULL};
                cw_envp_t envp = NULL;
                if (cw_env_build(base, &a.env, a.workdir, &envp, err, sizeof err) == 0) {
                    for (char **e = envp; *e; e++)
                        CHECK(strchr(*e, '=') != NULL);
                    free(envp);
                }
                /* a relative workdir was joined with the builder directory */
                CHECK(a.workdir && a.workdir[0] == '/');
            }
            cw_args_free(&a);
        }
    }
    cw_jelly_doc_free(doc);
    return 0;
}
