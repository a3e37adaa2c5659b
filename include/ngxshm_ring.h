/*
 * Copyright (C) ngxshm authors
 *
 * Single-producer single-consumer frame rings in a shared segment, and
 * the memory ordering they rely on.  Shared by ngx_http_shm_module and
 * libngxshm; not part of the library's public API.
 *
 * Each side keeps its own copy of the ring geometry and of the index it
 * owns; only the peer's index and the two flags are read from shared
 * memory, and every value read there is checked before use.
 */

#ifndef NGXSHM_RING_H
#define NGXSHM_RING_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include "ngxshm_abi.h"


/*
 * Ordering helpers.  The data of a frame is written with plain stores
 * and published by a release store of tail; the consumer reads tail with
 * an acquire load before touching the data.  The consumer frees space by
 * a release store of head (its reads of the data happen before it).
 * The sleep/wake handshake needs a full fence on both sides: the sleeper
 * stores "sleeping = 1" then loads tail, the producer stores tail then
 * loads "sleeping"; without a store-load fence both could miss the other
 * (x86 reorders a store with a later load) and the consumer would sleep
 * on a non-empty ring.
 */
#define ngxshm_load_acquire(p)     __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define ngxshm_load_relaxed(p)     __atomic_load_n((p), __ATOMIC_RELAXED)
#define ngxshm_store_release(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
#define ngxshm_store_relaxed(p, v) __atomic_store_n((p), (v), __ATOMIC_RELAXED)
#define ngxshm_exchange(p, v)      __atomic_exchange_n((p), (v),             \
                                                       __ATOMIC_SEQ_CST)
#define ngxshm_full_fence()        __atomic_thread_fence(__ATOMIC_SEQ_CST)


typedef struct {
    ngxshm_ring_ctrl_t  *ctrl;
    unsigned char       *data;
    uint32_t             size;      /* 2^n */
    uint32_t             max_frame;
    uint32_t             pos;       /* our own index: tail or head */
    uint32_t             peer;      /* last checked value of peer's index */
} ngxshm_ring_t;


/* ring_size and max_frame describe a valid geometry: 0 or -1 */
static inline int
ngxshm_geometry_valid(uint64_t seg_size, uint32_t ring_size,
    uint32_t max_frame)
{
    if (ring_size < NGXSHM_RING_MIN || ring_size > NGXSHM_RING_MAX
        || (ring_size & (ring_size - 1)) != 0
        || seg_size != NGXSHM_HDR_SIZE + 2 * (uint64_t) ring_size
        || max_frame == 0 || max_frame > ring_size / 4)
    {
        return -1;
    }

    return 0;
}


/* bind a view of ring "which" (0 or 1) of a mapped, validated segment */
static inline void
ngxshm_ring_init(ngxshm_ring_t *r, unsigned char *seg, int which,
    uint32_t ring_size, uint32_t max_frame)
{
    r->ctrl = (ngxshm_ring_ctrl_t *) (seg + (which ? NGXSHM_CTRL_OFF1
                                                   : NGXSHM_CTRL_OFF0));
    r->data = seg + NGXSHM_HDR_SIZE + (size_t) which * ring_size;
    r->size = ring_size;
    r->max_frame = max_frame;
    r->pos = 0;
    r->peer = 0;
}


/*
 * Producer: room for a frame with "len" payload bytes.  Returns the
 * frame header to fill, or NULL if the ring has no room now.  A PAD
 * frame is written first when the frame would cross the ring's end.
 * The peer's head is checked: a head outside [old head, tail] is a
 * violation, reported through *bad.
 */
/* ring bytes a frame with "len" bytes of payload occupies */
static inline uint32_t
ngxshm_frame_size(uint32_t len)
{
    return (uint32_t) sizeof(ngxshm_frame_t) + ngxshm_align(len);
}


/* ring bytes a frame of "need" bytes (ngxshm_frame_size()) takes when
 * written at index "pos" of a ring of "size" bytes holding "used": need,
 * or need plus the padding to the end of the ring if it does not fit
 * before it; 0 if it does not fit at all */
static inline uint32_t
ngxshm_ring_fit(uint32_t size, uint32_t pos, uint32_t used, uint32_t need)
{
    uint32_t  room;

    room = size - (pos & (size - 1));

    if (need > room) {
        return (used + room + need > size) ? 0 : room + need;
    }

    return (used + need > size) ? 0 : need;
}


static inline ngxshm_frame_t *
ngxshm_ring_reserve(ngxshm_ring_t *r, uint32_t len, int *bad)
{
    uint32_t         head, used, need, take, off, room;
    ngxshm_frame_t  *f;

    head = ngxshm_load_acquire(&r->ctrl->head);

    if (head - r->peer > r->pos - r->peer) {
        *bad = 1;
        return NULL;
    }

    r->peer = head;
    used = r->pos - head;
    need = ngxshm_frame_size(len);
    take = ngxshm_ring_fit(r->size, r->pos, used, need);

    if (take == 0) {
        return NULL;
    }

    off = r->pos & (r->size - 1);

    if (take != need) {
        /* pad to the end, then start at offset 0 */
        room = take - need;

        f = (ngxshm_frame_t *) (r->data + off);
        f->len = room - (uint32_t) sizeof(ngxshm_frame_t);
        f->type = NGXSHM_PAD;
        f->flags = 0;
        f->reserved = 0;
        f->stream = 0;
        f->gen = 0;
        r->pos += room;
        off = 0;
    }

    return (ngxshm_frame_t *) (r->data + off);
}


/* producer: publish the frame reserved last, whose payload length is
 * "len" (passed in, never read back from shared memory, where the peer
 * could change it); returns 1 if the consumer sleeps and must be
 * signalled */
static inline int
ngxshm_ring_commit(ngxshm_ring_t *r, uint32_t len)
{
    r->pos += ngxshm_frame_size(len);
    ngxshm_store_release(&r->ctrl->tail, r->pos);
    ngxshm_full_fence();

    if (ngxshm_load_relaxed(&r->ctrl->sleeping)) {
        return ngxshm_exchange(&r->ctrl->sleeping, 0) != 0;
    }

    return 0;
}


/* producer, ring full: ask to be signalled when the consumer frees
 * space; then try ngxshm_ring_reserve() once more before sleeping, as
 * the consumer may have freed space before it saw the flag */
static inline void
ngxshm_ring_wait_space(ngxshm_ring_t *r)
{
    ngxshm_store_relaxed(&r->ctrl->waiting, 1);
    ngxshm_full_fence();
}


/*
 * Consumer: copy the next frame header out to *f and return a pointer
 * to its payload (valid until ngxshm_ring_consume()), or NULL with
 * *bad = 0 if the ring is empty, or NULL with *bad set to a static
 * string naming the violation.  PAD frames are skipped here.
 */
static inline const unsigned char *
ngxshm_ring_peek(ngxshm_ring_t *r, ngxshm_frame_t *f, const char **bad)
{
    uint32_t  tail, avail, off, room, size;

    *bad = NULL;

    for ( ;; ) {
        tail = ngxshm_load_acquire(&r->ctrl->tail);
        avail = tail - r->pos;

        if (avail == 0) {
            return NULL;
        }

        if (avail > r->size || (avail & (NGXSHM_ALIGN - 1)) != 0) {
            *bad = "ring tail out of range";
            return NULL;
        }

        off = r->pos & (r->size - 1);
        room = r->size - off;

        memcpy(f, r->data + off, sizeof(ngxshm_frame_t));

        if (f->reserved != 0) {
            *bad = "nonzero reserved field in frame";
            return NULL;
        }

        if (f->type == NGXSHM_PAD) {
            if (f->len != room - sizeof(ngxshm_frame_t) || room > avail) {
                *bad = "bad pad frame";
                return NULL;
            }

            r->pos += room;
            continue;
        }

        if (f->len > r->max_frame) {
            *bad = "frame longer than max_frame";
            return NULL;
        }

        size = ngxshm_frame_size(f->len);

        if (size > room || size > avail) {
            *bad = "frame crosses ring end or tail";
            return NULL;
        }

        if (f->type > NGXSHM_TYPE_MAX) {
            *bad = "unknown frame type";
            return NULL;
        }

        return r->data + off + sizeof(ngxshm_frame_t);
    }
}


/* consumer: release the frame returned by the last peek */
static inline void
ngxshm_ring_consume(ngxshm_ring_t *r, const ngxshm_frame_t *f)
{
    r->pos += ngxshm_frame_size(f->len);
    ngxshm_store_release(&r->ctrl->head, r->pos);
}


/* consumer, after consuming a batch: returns 1 if the producer waits for
 * space and must be signalled */
static inline int
ngxshm_ring_consumed(ngxshm_ring_t *r)
{
    ngxshm_full_fence();

    if (ngxshm_load_relaxed(&r->ctrl->waiting)) {
        return ngxshm_exchange(&r->ctrl->waiting, 0) != 0;
    }

    return 0;
}


/* consumer, ring empty: announce sleep; returns 1 if a frame arrived
 * meanwhile (then do not sleep: consume again) */
static inline int
ngxshm_ring_sleep(ngxshm_ring_t *r)
{
    ngxshm_store_relaxed(&r->ctrl->sleeping, 1);
    ngxshm_full_fence();

    if (ngxshm_load_acquire(&r->ctrl->tail) != r->pos) {
        ngxshm_store_relaxed(&r->ctrl->sleeping, 0);
        return 1;
    }

    return 0;
}


#endif /* NGXSHM_RING_H */
