/*
 * Copyright (C) ngxshm authors
 *
 * Helpers shared by the libFuzzer targets in fuzz/: reading an input as
 * a stream of little-endian integers and byte strings (reads past the
 * end give zeros and empty strings), and a check that aborts, so that a
 * broken invariant is a crash libFuzzer reports and saves.
 */

#ifndef NGXSHM_FUZZ_H
#define NGXSHM_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sanitizer/common_interface_defs.h>


/* to stderr and, should the target have closed stderr (libFuzzer's
 * -close_fd_mask=2, for the targets whose library logs a lot), to
 * where the sanitizers report */
#define fz_check(cond)                                                        \
    do {                                                                      \
        if (!(cond)) {                                                        \
            fz_fail(__FILE__, __LINE__, #cond);                               \
        }                                                                     \
    } while (0)


__attribute__((noreturn)) static inline void
fz_fail(const char *file, int line, const char *what)
{
    char  buf[512];

    snprintf(buf, sizeof(buf), "invariant failed: %s:%d: %s", file, line,
             what);
    fprintf(stderr, "%s\n", buf);
    __sanitizer_report_error_summary(buf);
    abort();
}


/* malloc() that does not fail (the target aborts); zeroed */
static inline void *
fz_alloc(size_t n)
{
    void  *p;

    p = calloc(1, n ? n : 1);

    if (p == NULL) {
        abort();
    }

    return p;
}


typedef struct {
    const uint8_t  *p;
    size_t          n;
} fz_in_t;


static inline void
fz_init(fz_in_t *in, const uint8_t *data, size_t size)
{
    in->p = data;
    in->n = size;
}


static inline uint8_t
fz_u8(fz_in_t *in)
{
    if (in->n == 0) {
        return 0;
    }

    in->n--;

    return *in->p++;
}


static inline uint16_t
fz_u16(fz_in_t *in)
{
    uint16_t  v;

    v = fz_u8(in);
    v |= (uint16_t) fz_u8(in) << 8;

    return v;
}


static inline uint32_t
fz_u32(fz_in_t *in)
{
    uint32_t  v;

    v = fz_u16(in);
    v |= (uint32_t) fz_u16(in) << 16;

    return v;
}


/* up to "len" bytes of the input; *got is how many there were */
static inline const uint8_t *
fz_bytes(fz_in_t *in, size_t len, size_t *got)
{
    const uint8_t  *p;

    if (len > in->n) {
        len = in->n;
    }

    p = in->p;
    in->p += len;
    in->n -= len;
    *got = len;

    return p;
}


/* a copy of "len" bytes of the input, zero-padded */
static inline void
fz_copy(fz_in_t *in, void *dst, size_t len)
{
    size_t          got;
    const uint8_t  *p;

    p = fz_bytes(in, len, &got);

    if (got != 0) {
        memcpy(dst, p, got);
    }

    memset((uint8_t *) dst + got, 0, len - got);
}


#endif /* NGXSHM_FUZZ_H */
