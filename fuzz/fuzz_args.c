/* Fuzz target: start_command argument validation for every command, and
 * the environment built from a validated shell `env`. */
#include <msgpack.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cworker/args.h"
#include "cworker/env.h"
#include "cworker/msg.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[512];
    if (cw_msgpack_check(data, size, CW_MSG_MAX_DEPTH, err, sizeof err) != 0)
        return 0;
    msgpack_unpacked up;
    msgpack_unpacked_init(&up);
    size_t off = 0;
    if (msgpack_unpack_next(&up, (const char *)data, size, &off) == MSGPACK_UNPACK_SUCCESS) {
        for (int k = 0; k < CW_CMD__COUNT; k++) {
            cw_args_t a;
            int rc = cw_args_parse(&a, (cw_cmd_kind_t)k, &up.data, err, sizeof err);
            if (rc == 0 && k == CW_CMD_SHELL) {
                /* what the shell command does next with them */
                static char *base[] = {"HOME=/root", "PATH=/usr/bin:/bin", "PYTHONPATH=/p", NULL};
                cw_envp_t envp = NULL;
                if (cw_env_build(base, &a.env, a.workdir, &envp, err, sizeof err) == 0) {
                    for (char **e = envp; *e; e++)
                        if (strchr(*e, '=') == NULL)
                            abort();
                    free(envp);
                }
                for (char **w = a.argv; *w; w++) {
                    char *q = cw_shell_quote(*w);
                    free(q);
                }
            }
            if (rc == 0)
                cw_args_free(&a);
        }
    }
    msgpack_unpacked_destroy(&up);
    return 0;
}
