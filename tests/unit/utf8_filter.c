/* Test helper for test_utf8_python.py: reads records "<len:u32 LE><bytes>"
 * from stdin and writes each one repaired by cw_utf8_repair, in the same
 * framing, to stdout. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "cworker/utf8.h"

int main(void)
{
    uint8_t hdr[4];
    while (fread(hdr, 1, 4, stdin) == 4) {
        uint32_t n = hdr[0] | hdr[1] << 8 | hdr[2] << 16 | (uint32_t)hdr[3] << 24;
        uint8_t *in = malloc(n ? n : 1);
        if (in == NULL || fread(in, 1, n, stdin) != n)
            return 2;
        cw_buf_t out = CW_BUF_INIT;
        if (cw_utf8_repair(in, n, &out) < 0)
            return 3;
        uint32_t m = (uint32_t)out.len;
        uint8_t oh[4] = {m & 0xff, (m >> 8) & 0xff, (m >> 16) & 0xff, m >> 24};
        fwrite(oh, 1, 4, stdout);
        if (out.len)
            fwrite(out.data, 1, out.len, stdout);
        cw_buf_free(&out);
        free(in);
    }
    return fflush(stdout) == 0 ? 0 : 4;
}
