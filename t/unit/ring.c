/*
 * Copyright (C) ngxshm authors
 *
 * The ring helpers of ngxshm_ring.h: reserve, commit, peek, consume, PAD
 * at the end, a full ring, free-running indexes over 2^32, the sleep and
 * wait flags, and hostile ring contents reported through *bad.  The ring
 * under test is ring 1 of a segment followed by a PROT_NONE page, so a
 * read or write past its end faults.  Prints TAP.
 */

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>

#include "ngxshm_ring.h"


#define RING   4096u
#define FRAME  1024u


static int              t_n;
static int              t_failed;
static unsigned char   *seg;
static size_t           seg_size;
static ngxshm_ring_t    prod, cons;


static void
ok(int cond, const char *fmt, ...)
{
    va_list  ap;

    t_n++;
    printf("%sok %d - ", cond ? "" : "not ", t_n);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");

    if (!cond) {
        t_failed++;
    }
}


/* a fresh segment state with both indexes at "start" */
static void
reset(uint32_t start)
{
    memset(seg, 0, seg_size);

    ngxshm_ring_init(&prod, seg, 1, RING, FRAME);
    ngxshm_ring_init(&cons, seg, 1, RING, FRAME);

    prod.ctrl->tail = start;
    prod.ctrl->head = start;
    prod.pos = start;
    prod.peer = start;
    cons.pos = start;
}


static int
put(uint32_t len, uint8_t type, uint32_t stream, int *bad)
{
    uint32_t         i;
    unsigned char   *p;
    ngxshm_frame_t  *f;

    *bad = 0;
    f = ngxshm_ring_reserve(&prod, len, bad);
    if (f == NULL) {
        return -1;
    }

    f->len = len;
    f->type = type;
    f->flags = 0;
    f->reserved = 0;
    f->stream = stream;
    f->gen = 1;

    p = (unsigned char *) f + sizeof(*f);

    for (i = 0; i < len; i++) {
        p[i] = (unsigned char) (stream + i);
    }

    ngxshm_ring_commit(&prod, len);

    return 0;
}


/* take one frame; 1 and checks its payload, 0 empty, -1 bad */
static int
get(ngxshm_frame_t *f, const char **bad)
{
    uint32_t              i;
    const unsigned char  *p;

    p = ngxshm_ring_peek(&cons, f, bad);
    if (p == NULL) {
        return *bad ? -1 : 0;
    }

    if (p < cons.data || p + f->len > cons.data + RING) {
        return -1;
    }

    for (i = 0; i < f->len; i++) {
        if (p[i] != (unsigned char) (f->stream + i)) {
            return -1;
        }
    }

    ngxshm_ring_consume(&cons, f);

    return 1;
}


/* write a raw frame header at the consumer's position, publish "extra" */
static void
raw(uint32_t len, uint8_t type, uint16_t reserved, uint32_t publish)
{
    ngxshm_frame_t  f;

    memset(&f, 0, sizeof(f));
    f.len = len;
    f.type = type;
    f.reserved = reserved;
    memcpy(cons.data + (cons.pos & (RING - 1)), &f, sizeof(f));
    ngxshm_store_release(&cons.ctrl->tail, cons.pos + publish);
}


static const char *
hostile(void)
{
    const char      *bad;
    ngxshm_frame_t   f;

    if (ngxshm_ring_peek(&cons, &f, &bad) != NULL) {
        return "(accepted)";
    }

    return bad;
}


static void
test_basic(void)
{
    int              bad, n;
    const char      *b;
    ngxshm_frame_t   f;

    reset(0);

    ok(get(&f, &b) == 0 && b == NULL, "empty ring: nothing, no error");

    ok(put(5, NGXSHM_REQ_BODY, 7, &bad) == 0, "reserve and commit");
    ok(prod.ctrl->tail == 32, "tail published: 16 + align16(5)");
    ok(get(&f, &b) == 1 && f.len == 5 && f.type == NGXSHM_REQ_BODY
       && f.stream == 7, "peek returns the frame");
    ok(cons.ctrl->head == 32, "consume releases it");
    ok(get(&f, &b) == 0, "empty again");

    ok(put(0, NGXSHM_CANCEL, 1, &bad) == 0 && get(&f, &b) == 1
       && f.len == 0, "empty payload");

    ok(put(FRAME, NGXSHM_REQ_BODY, 3, &bad) == 0 && get(&f, &b) == 1
       && f.len == FRAME, "max_frame payload");

    /* full: 128-byte frames fill 4096 exactly after a reset */
    reset(0);

    for (n = 0; put(112, NGXSHM_REQ_BODY, n, &bad) == 0; n++) {
        /* fill */
    }

    ok(n == RING / 128 && !bad, "full ring holds %d frames of 128", n);

    ngxshm_ring_wait_space(&prod);
    ok(prod.ctrl->waiting == 1, "producer announces it waits");
    ok(put(112, NGXSHM_REQ_BODY, 0, &bad) == -1, "still full");

    ok(get(&f, &b) == 1 && f.stream == 0, "consumer takes one");
    ok(ngxshm_ring_consumed(&cons) == 1 && prod.ctrl->waiting == 0,
       "consumed(): producer must be signalled, flag cleared");
    ok(ngxshm_ring_consumed(&cons) == 0, "signalled once only");
    ok(put(112, NGXSHM_REQ_BODY, 99, &bad) == 0, "room again");

    for (n = 1; get(&f, &b) == 1; n++) {
        if (n == RING / 128) {
            break;
        }
    }

    ok(n == RING / 128 && f.stream == 99, "FIFO order kept");
}


static void
test_sleep(void)
{
    int              bad;
    const char      *b;
    ngxshm_frame_t   f;

    reset(0);

    ok(ngxshm_ring_sleep(&cons) == 0 && cons.ctrl->sleeping == 1,
       "consumer sleeps on an empty ring");
    put(1, NGXSHM_REQ_BODY, 1, &bad);
    ok(prod.ctrl->sleeping == 0, "commit cleared the sleeping flag");

    /* commit's return value: signal the sleeper once */
    get(&f, &b);
    ngxshm_ring_sleep(&cons);

    {
        ngxshm_frame_t  *fp;

        fp = ngxshm_ring_reserve(&prod, 0, &bad);
        memset(fp, 0, sizeof(*fp));
        fp->type = NGXSHM_CANCEL;
        ok(ngxshm_ring_commit(&prod, 0) == 1, "commit: signal the sleeper");

        fp = ngxshm_ring_reserve(&prod, 0, &bad);
        memset(fp, 0, sizeof(*fp));
        fp->type = NGXSHM_CANCEL;
        ok(ngxshm_ring_commit(&prod, 0) == 0, "commit: awake, no signal");
    }

    ok(ngxshm_ring_sleep(&cons) == 1 && cons.ctrl->sleeping == 0,
       "sleep refused while frames wait");
}


static void
test_pad(void)
{
    int              bad;
    const char      *b;
    uint32_t         start;
    ngxshm_frame_t   f;

    /* 32 bytes before the end: a 64-byte frame needs a PAD first */
    start = RING - 32;
    reset(start);

    ok(put(40, NGXSHM_REQ_BODY, 5, &bad) == 0, "reserve across the end");
    ok(prod.ctrl->tail == start + 32 + 16 + 48,
       "PAD covers the rest, frame at offset 0");
    ok(get(&f, &b) == 1 && f.len == 40 && f.stream == 5,
       "peek skips the PAD");
    ok(cons.pos == prod.pos, "consumer caught up");

    /* 16 bytes left: a PAD with an empty payload */
    reset(RING - 16);
    ok(put(0, NGXSHM_CANCEL, 2, &bad) == 0 && get(&f, &b) == 1
       && f.type == NGXSHM_CANCEL, "PAD of 16 bytes");

    /* no room for PAD + frame: NULL without writing */
    reset(RING - 32);
    prod.ctrl->head = RING - 32 - (RING - 64);
    prod.peer = prod.ctrl->head;
    ok(put(40, NGXSHM_REQ_BODY, 1, &bad) == -1 && !bad
       && prod.pos == RING - 32, "PAD + frame do not fit: nothing written");
}


static void
test_wrap32(void)
{
    int              bad, i, fail;
    uint32_t         len;
    const char      *b;
    ngxshm_frame_t   f;

    /* indexes run over 2^32 */
    reset(0u - 2048u - 16u);
    fail = 0;

    for (i = 0; i < 5000 && !fail; i++) {
        len = (uint32_t) (i * 37) % (FRAME + 1);

        if (put(len, NGXSHM_REQ_BODY, (uint32_t) i, &bad) != 0) {
            fail = 1;
            break;
        }

        if (i % 3 == 2) {
            continue;
        }

        while (get(&f, &b) == 1) {
            /* drain */
        }

        if (b != NULL) {
            fail = 2;
        }
    }

    while (get(&f, &b) == 1) {
        /* drain */
    }

    ok(!fail && b == NULL && cons.pos == prod.pos,
       "5000 frames across the 2^32 wrap (%d)", fail);
    ok(prod.pos < 0x80000000u, "index wrapped");
}


static void
test_hostile(void)
{
    int   bad;

    reset(0);
    ngxshm_store_release(&cons.ctrl->tail, 8);
    ok(hostile() != NULL && strstr(hostile(), "tail"), "unaligned tail");

    reset(0);
    ngxshm_store_release(&cons.ctrl->tail, RING + 16);
    ok(hostile() != NULL, "tail more than a ring ahead");

    reset(64);
    ngxshm_store_release(&cons.ctrl->tail, 32);
    ok(hostile() != NULL, "tail behind head");

    reset(0);
    raw(16, NGXSHM_REQ_BODY, 1, 32);
    ok(hostile() != NULL && strstr(hostile(), "reserved"),
       "nonzero reserved");

    reset(0);
    raw(FRAME + 1, NGXSHM_REQ_BODY, 0, RING);
    ok(hostile() != NULL && strstr(hostile(), "max_frame"),
       "len over max_frame");

    reset(RING - 64);
    raw(64, NGXSHM_REQ_BODY, 0, 128);
    ok(hostile() != NULL && strstr(hostile(), "crosses"),
       "frame crossing the ring end");

    reset(0);
    raw(64, NGXSHM_REQ_BODY, 0, 32);
    ok(hostile() != NULL && strstr(hostile(), "crosses"),
       "frame crossing the tail");

    reset(0);
    raw(0, NGXSHM_TYPE_MAX + 1, 0, 16);
    ok(hostile() != NULL && strstr(hostile(), "type"), "unknown type");

    reset(RING - 64);
    raw(16, NGXSHM_PAD, 0, 64);
    ok(hostile() != NULL && strstr(hostile(), "pad"), "PAD of wrong length");

    reset(RING - 64);
    raw(48, NGXSHM_PAD, 0, 32);
    ok(hostile() != NULL && strstr(hostile(), "pad"), "PAD beyond the tail");

    reset(0);
    raw(0xffffffffu, NGXSHM_REQ_BODY, 0, 16);
    ok(hostile() != NULL, "len 2^32-1");

    /* the producer checks the consumer's head */
    reset(0);
    put(16, NGXSHM_REQ_BODY, 1, &bad);
    ngxshm_store_release(&prod.ctrl->head, 64);
    bad = 0;
    ok(ngxshm_ring_reserve(&prod, 16, &bad) == NULL && bad,
       "head beyond tail");

    reset(256);
    ngxshm_store_release(&prod.ctrl->head, 128);
    bad = 0;
    ok(ngxshm_ring_reserve(&prod, 16, &bad) == NULL && bad,
       "head moved backwards");
}


static void
test_fuzz(void)
{
    int                   i, j, n;
    const char           *bad;
    uint32_t              start;
    ngxshm_frame_t        f;
    const unsigned char  *p;

    srand(12345);
    n = 0;

    for (i = 0; i < 3000; i++) {
        start = (uint32_t) rand() * 16u;
        reset(start);

        for (j = 0; j < (int) RING; j++) {
            cons.data[j] = (unsigned char) rand();
        }

        /* sometimes plausible headers */
        if (i % 2) {
            raw((uint32_t) rand() % (2 * FRAME), (uint8_t) (rand() % 10),
                0, 0);
        }

        ngxshm_store_release(&cons.ctrl->tail,
                             start + (uint32_t) (rand() % (2 * RING)));

        for (j = 0; j < 64; j++) {
            p = ngxshm_ring_peek(&cons, &f, &bad);

            if (p == NULL) {
                break;
            }

            /* touch every payload byte: the guard page would fault */
            if (p < cons.data || p + f.len > cons.data + RING
                || f.len > FRAME)
            {
                n++;
                break;
            }

            if (f.len) {
                volatile unsigned char  c = p[f.len - 1];
                (void) c;
            }

            ngxshm_ring_consume(&cons, &f);
        }
    }

    ok(n == 0, "3000 random rings: every payload inside the ring");
}


static void
test_geometry(void)
{
    uint64_t  s;

    s = NGXSHM_HDR_SIZE + 2 * (uint64_t) RING;

    ok(ngxshm_geometry_valid(s, RING, RING / 4) == 0, "valid geometry");
    ok(ngxshm_geometry_valid(s, RING, RING / 4 + 1) != 0,
       "max_frame over ring/4");
    ok(ngxshm_geometry_valid(s, RING, 0) != 0, "max_frame 0");
    ok(ngxshm_geometry_valid(s + 1, RING, 16) != 0, "seg_size mismatch");
    ok(ngxshm_geometry_valid(NGXSHM_HDR_SIZE + 2 * 6144, 6144, 16) != 0,
       "ring size not a power of two");
    ok(ngxshm_geometry_valid(NGXSHM_HDR_SIZE + 2 * 2048, 2048, 16) != 0,
       "ring size under the minimum");
    ok(ngxshm_geometry_valid(NGXSHM_HDR_SIZE + 2 * (2ull << 30), 2u << 30,
                             16) != 0, "ring size over the maximum");
}


int
main(void)
{
    long            page;
    unsigned char  *m;

    page = sysconf(_SC_PAGESIZE);
    seg_size = NGXSHM_HDR_SIZE + 2 * RING;

    m = mmap(NULL, seg_size + page, PROT_READ|PROT_WRITE,
             MAP_PRIVATE|MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED || mprotect(m + seg_size, page, PROT_NONE) != 0) {
        printf("1..0 # skip no memory\n");
        return 0;
    }

    seg = m;

    printf("1..50\n");

    test_basic();
    test_sleep();
    test_pad();
    test_wrap32();
    test_hostile();
    test_fuzz();
    test_geometry();

    munmap(m, seg_size + page);

    return t_failed ? 1 : 0;
}
