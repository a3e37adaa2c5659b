/*
 * Copyright (C) ngxshm authors
 *
 * Fuzz target "module_msg": the module's checks of the sidecar's small
 * messages (src/module/ngx_http_shm_check.h): the HELLO_ACK answer, of
 * which recv() got 1 to 32 bytes (the bytes past those received are
 * poisoned: the check must not look at them), and the stateless checks
 * of a frame header from the response ring (type, GOAWAY, slot range).
 *
 * Checked: the results are those of an independent reading of
 * docs/protocol.md (sections 4 and 9); a frame that passes is GOAWAY
 * with zero stream, gen, len and flags, or a sidecar-to-nginx type for a
 * slot below max_streams.
 *
 * Input: u8 selector; HELLO_ACK: the bytes received (at most 32);
 * frame: u16 max_streams, then the 16-byte header.
 */

#include <sanitizer/asan_interface.h>

#include "ngx_http_shm_check.h"
#include "fuzz.h"


static void
fz_ack(fz_in_t *in)
{
    int             rc, want;
    size_t          n;
    const uint8_t  *b;
    ngxshm_msg_t    m, *ack;

    b = fz_bytes(in, sizeof(ngxshm_msg_t), &n);

    if (n == 0) {
        return;
    }

    ack = fz_alloc(sizeof(ngxshm_msg_t));
    memset(ack, 0xa5, sizeof(ngxshm_msg_t));
    memcpy(ack, b, n);
    ASAN_POISON_MEMORY_REGION((unsigned char *) ack + n,
                              sizeof(ngxshm_msg_t) - n);

    rc = ngx_http_shm_check_ack(ack, n);

    ASAN_UNPOISON_MEMORY_REGION(ack, sizeof(ngxshm_msg_t));

    memset(&m, 0, sizeof(m));
    memcpy(&m, b, n);

    if (n != 32 || m.magic != 0x4d48534e || m.type != 2 || m.size != 32) {
        want = NGX_HTTP_SHM_ACK_INVALID;

    } else if (m.version != NGXSHM_VERSION || m.status != 0) {
        want = NGX_HTTP_SHM_ACK_REFUSED;

    } else {
        want = NGX_HTTP_SHM_ACK_OK;
    }

    fz_check(rc == want);

    free(ack);
}


static void
fz_frame(fz_in_t *in)
{
    uint32_t        max_streams;
    const char     *bad;
    ngxshm_frame_t  f;

    max_streams = 1 + fz_u16(in) % 4096;
    fz_copy(in, &f, sizeof(f));

    bad = ngx_http_shm_check_frame(&f, max_streams);

    if (f.type == 8) {
        fz_check((bad == NULL)
                 == (f.stream == 0 && f.gen == 0 && f.len == 0
                     && f.flags == 0));

        if (bad != NULL) {
            fz_check(strcmp(bad, "invalid GOAWAY frame") == 0);
        }

        return;
    }

    if (f.type != 5 && f.type != 6 && f.type != 7 && f.type != 4) {
        fz_check(bad != NULL
                 && strcmp(bad, "frame type not allowed from a sidecar")
                    == 0);
        return;
    }

    if (f.stream >= max_streams) {
        fz_check(bad != NULL
                 && strcmp(bad, "stream slot out of range") == 0);
        return;
    }

    fz_check(bad == NULL);
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fz_in_t  in;

    fz_init(&in, data, size);

    if (fz_u8(&in) & 1) {
        fz_frame(&in);

    } else {
        fz_ack(&in);
    }

    return 0;
}
