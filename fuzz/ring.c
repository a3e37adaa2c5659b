/*
 * Copyright (C) ngxshm authors
 *
 * Fuzz target "ring": the frame ring of include/ngxshm_ring.h as both
 * peers use it on memory the other side writes.  A ring (its header
 * page, then its data) lies between two PROT_NONE guard pages.  The
 * input writes arbitrary bytes and frame headers into it, sets the
 * peer's indexes to anything, and runs the consumer (ngxshm_ring_peek()
 * and ngxshm_ring_consume()) and an honest producer
 * (ngxshm_ring_reserve() and ngxshm_ring_commit()).
 *
 * Checked, besides "no read or write outside the ring": a frame the
 * consumer accepts starts at its index, lies inside the ring and before
 * tail, has a known type, a zero reserved field, len <= max_frame, and
 * is the header that is in the ring; the consumer never moves past
 * tail; "empty" means tail == pos; a violation is one of the documented
 * reasons.  The producer refuses a head outside [its last head, its
 * tail], never hands out room past the ring's end or over bytes not yet
 * consumed, and says "no room" only when there is none.
 *
 * Input: u8 ring size class, u32 max_frame seed, u32 start index, then
 * operations, an opcode byte each (see the switch below).
 */

#include <sys/mman.h>

#include "ngxshm_ring.h"
#include "fuzz.h"


#define FZ_PAGE      4096u
#define FZ_NSIZES    4
#define FZ_MAX_PEEK  16


static const uint32_t   fz_sizes[FZ_NSIZES] = { 4096, 8192, 16384, 65536 };
static unsigned char   *fz_segs[FZ_NSIZES];

static const char  *fz_reasons[] = {
    "ring tail out of range",
    "nonzero reserved field in frame",
    "bad pad frame",
    "frame longer than max_frame",
    "frame crosses ring end or tail",
    "unknown frame type",
    NULL
};


/* guard page, header page, ring data, guard page */
static void
fz_map(void)
{
    int             i;
    size_t          total;
    unsigned char  *p;

    for (i = 0; i < FZ_NSIZES; i++) {
        total = 3 * FZ_PAGE + fz_sizes[i];

        p = mmap(NULL, total, PROT_NONE, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0);
        fz_check(p != MAP_FAILED);
        fz_check(mprotect(p + FZ_PAGE, FZ_PAGE + fz_sizes[i],
                          PROT_READ|PROT_WRITE) == 0);

        fz_segs[i] = p + FZ_PAGE;
    }
}


static int
fz_known_reason(const char *bad)
{
    int  i;

    for (i = 0; fz_reasons[i] != NULL; i++) {
        if (strcmp(bad, fz_reasons[i]) == 0) {
            return 1;
        }
    }

    return 0;
}


/* consumer: up to n frames; 0, or -1 after a violation */
static int
fz_peek(ngxshm_ring_t *c, unsigned n)
{
    unsigned              i;
    uint32_t              tail, old, off, size;
    const char           *bad;
    ngxshm_frame_t        f;
    const unsigned char  *p;
    volatile unsigned     sum;

    for (i = 0; i < n; i++) {
        old = c->pos;
        tail = c->ctrl->tail;

        p = ngxshm_ring_peek(c, &f, &bad);

        if (p == NULL) {
            if (bad != NULL) {
                fz_check(fz_known_reason(bad));
                return -1;
            }

            fz_check(tail == c->pos);
            fz_check(c->pos - old <= tail - old);
            return 0;
        }

        fz_check(bad == NULL);

        /* PAD frames skipped: only published bytes */
        fz_check(c->pos - old <= tail - old);
        fz_check((c->pos & (NGXSHM_ALIGN - 1)) == 0);

        fz_check(p >= c->data + sizeof(ngxshm_frame_t));
        off = (uint32_t) (p - c->data - sizeof(ngxshm_frame_t));
        size = (uint32_t) sizeof(ngxshm_frame_t) + ngxshm_align(f.len);

        fz_check(off == (c->pos & (c->size - 1)));
        fz_check(off + (uint64_t) size <= c->size);
        fz_check(size <= tail - c->pos);
        fz_check(f.len <= c->max_frame);
        fz_check(f.type >= 1 && f.type <= NGXSHM_TYPE_MAX);
        fz_check(f.reserved == 0);
        fz_check(memcmp(&f, c->data + off, sizeof(f)) == 0);

        /* touch the payload: the guard page is right after the ring */
        sum = 0;

        for (off = 0; off < f.len; off++) {
            sum += p[off];
        }

        (void) sum;

        ngxshm_ring_consume(c, &f);

        fz_check(c->ctrl->head == c->pos);
        fz_check(tail - c->pos <= c->size);

        (void) ngxshm_ring_consumed(c);
    }

    return 0;
}


/* producer: one frame of len bytes; 0, or -1 after a violation */
static int
fz_reserve(ngxshm_ring_t *w, uint32_t len)
{
    int              bad;
    uint32_t         pos, peer, head, used, need, off, room;
    ngxshm_frame_t  *f, *pad;

    pos = w->pos;
    peer = w->peer;
    head = w->ctrl->head;
    bad = 0;

    f = ngxshm_ring_reserve(w, len, &bad);

    if (bad) {
        fz_check(f == NULL);
        fz_check(head - peer > pos - peer);
        return -1;
    }

    fz_check(head - peer <= pos - peer);
    fz_check(w->peer == head);

    used = pos - head;
    need = (uint32_t) sizeof(ngxshm_frame_t) + ngxshm_align(len);
    off = pos & (w->size - 1);
    room = w->size - off;

    if (f == NULL) {
        fz_check(need > room ? used + room + need > w->size
                             : used + need > w->size);
        return 0;
    }

    if (need > room) {
        /* a PAD frame to the end first, then the frame at 0 */
        pad = (ngxshm_frame_t *) (w->data + off);
        fz_check(pad->type == NGXSHM_PAD);
        fz_check(pad->len == room - sizeof(ngxshm_frame_t));
        fz_check(w->pos == pos + room);
        fz_check((unsigned char *) f == w->data);

    } else {
        fz_check(w->pos == pos);
        fz_check((unsigned char *) f == w->data + off);
    }

    off = (uint32_t) ((unsigned char *) f - w->data);
    fz_check((off & (NGXSHM_ALIGN - 1)) == 0);
    fz_check(off + (uint64_t) need <= w->size);

    memset(f, 0, need);
    f->len = len;
    f->type = NGXSHM_REQ_BODY;

    (void) ngxshm_ring_commit(w, len);

    fz_check(w->ctrl->tail == w->pos);
    fz_check(w->pos - head <= w->size);

    return 0;
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int                   cdead, wdead;
    unsigned              cls;
    uint8_t               op, ctl;
    uint32_t              rsize, max_frame, start, cur, len, off, n;
    size_t                got;
    fz_in_t               in;
    unsigned char        *seg;
    ngxshm_ring_t         c, w;
    ngxshm_frame_t        f;
    const uint8_t        *b;

    if (fz_segs[0] == NULL) {
        fz_map();
    }

    fz_init(&in, data, size);

    cls = fz_u8(&in) % FZ_NSIZES;
    rsize = fz_sizes[cls];
    seg = fz_segs[cls];
    max_frame = 1 + fz_u32(&in) % (rsize / 4);
    start = fz_u32(&in) & ~(NGXSHM_ALIGN - 1);

    memset(seg, 0, NGXSHM_HDR_SIZE + rsize);
    fz_check(ngxshm_geometry_valid(NGXSHM_HDR_SIZE + 2 * (uint64_t) rsize,
                                   rsize, max_frame) == 0);

    /* one ring seen by its consumer and by its producer */
    ngxshm_ring_init(&c, seg, 0, rsize, max_frame);
    ngxshm_ring_init(&w, seg, 0, rsize, max_frame);
    c.pos = start;
    w.pos = start;
    w.peer = start;
    c.ctrl->tail = start;
    c.ctrl->head = start;

    /* where the forged frames go */
    cur = start;
    cdead = 0;
    wdead = 0;

    while (in.n != 0) {
        op = fz_u8(&in);

        switch (op % 9) {

        case 0: /* raw bytes anywhere in the data */
            off = fz_u16(&in) & (rsize - 1);
            len = fz_u8(&in);

            if (len > rsize - off) {
                len = rsize - off;
            }

            b = fz_bytes(&in, len, &got);

            if (got != 0) {
                memcpy(c.data + off, b, got);
            }

            break;

        case 1: /* a forged frame header (and payload) at cur */
            ctl = fz_u8(&in);
            memset(&f, 0, sizeof(f));
            f.type = (uint8_t) (fz_u8(&in) % (NGXSHM_TYPE_MAX + 2));
            f.flags = (uint8_t) (ctl >> 4);
            f.len = (ctl & 1) ? fz_u32(&in) : fz_u16(&in) % (max_frame + 1);
            f.reserved = (ctl & 2) ? fz_u16(&in) : 0;
            f.stream = fz_u8(&in);
            f.gen = fz_u8(&in);

            off = cur & (rsize - 1);
            memcpy(c.data + off, &f, sizeof(f));
            off += sizeof(f);

            len = f.len < rsize - off ? f.len : rsize - off;
            b = fz_bytes(&in, (ctl & 4) ? len : 0, &got);
            memset(c.data + off, 'x', len);

            if (got != 0) {
                memcpy(c.data + off, b, got);
            }

            cur += (uint32_t) sizeof(f) + ngxshm_align(f.len);

            if (ctl & 8) {
                c.ctrl->tail = cur;
            }

            break;

        case 2: /* a PAD frame to the end at cur, maybe a wrong one */
            off = cur & (rsize - 1);
            memset(&f, 0, sizeof(f));
            f.len = rsize - off - (uint32_t) sizeof(f);
            f.len += (uint32_t) (int8_t) fz_u8(&in) * 16;
            f.type = NGXSHM_PAD;
            memcpy(c.data + off, &f, sizeof(f));
            cur += rsize - off;
            break;

        case 3: /* publish the forged frames */
            c.ctrl->tail = cur;
            break;

        case 4: /* any tail */
            c.ctrl->tail = c.pos + fz_u32(&in);
            break;

        case 5: /* consume */
            n = 1 + fz_u8(&in) % FZ_MAX_PEEK;

            if (!cdead && fz_peek(&c, n) != 0) {
                cdead = 1;
            }

            break;

        case 6: /* any head, as the producer sees it */
            c.ctrl->head = w.pos - fz_u32(&in);
            break;

        case 7: /* produce */
            len = fz_u16(&in) % (max_frame + 1);

            if (!wdead && fz_reserve(&w, len) != 0) {
                wdead = 1;
            }

            cur = w.pos;
            break;

        default: /* the consumer's head, as it was */
            c.ctrl->head = c.pos;
            break;
        }
    }

    if (!cdead) {
        (void) fz_peek(&c, FZ_MAX_PEEK);
    }

    return 0;
}
