/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Fuzz the control-frame decoder. Input: byte 0 = number of fds the kernel
 * "delivered" (0..3), byte 1 = how many packets to split the rest into;
 * the remainder is cut into that many frames (each decoded on its own,
 * as SEQPACKET delivers them), so truncated, merged and partial frames are
 * all exercised. A decoded frame is re-encoded and must round-trip.
 */
#include <stdint.h>
#include <string.h>
#include <stdlib.h>

#include "shm/wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    size_t n_fds = data[0] & 3;
    size_t parts = (size_t)(data[1] % 4) + 1;
    data += 2;
    size -= 2;
    size_t off = 0;
    for (size_t i = 0; i < parts && off <= size; i++) {
        size_t len = i + 1 == parts ? size - off : (size - off) / (parts - i);
        /* Exact-size heap copy so ASan sees any overread. */
        uint8_t *pkt = malloc(len ? len : 1);
        if (!pkt)
            return 0;
        memcpy(pkt, data + off, len);
        struct shm_wire_msg m;
        const char *why = NULL;
        int r = shm_wire_decode(pkt, len, n_fds, &m, &why);
        if (r == 0) {
            uint8_t out[SHM_WIRE_MAX];
            int n = -1;
            if (m.type == SHM_WIRE_ERROR)
                n = shm_wire_encode_error(out, m.u.error.code, m.u.error.msg);
            else
                n = shm_wire_encode(out, m.type, m.n_fds, pkt + 16, len - 16);
            if (n != (int)len || memcmp(out, pkt, len) != 0)
                abort();
        } else if (!why) {
            abort();    /* every rejection names its reason */
        }
        free(pkt);
        off += len;
    }
    return 0;
}
