/*
 * Copyright (C) ngxshm authors
 *
 * Fuzz target "lib_frames": the library reading what nginx writes into
 * ring 0, on a real channel.  Per input, a fake nginx in this process
 * connects to a libngxshm server (also in this process, run one
 * ngxshm_server_dispatch() round at a time), hands it a sealed memfd
 * segment and two eventfds with a valid HELLO, then writes a sequence
 * of frames the input describes: raw headers, frames of any type, flags,
 * slot and generation, well-formed request heads (split over CONT
 * frames, maybe with one byte changed), bodies, credits, cancels, and
 * a forged tail.  It wakes the library as the protocol says (only when
 * it sleeps), and reads what the library answers in ring 1.  The
 * application handler checks each request it gets and answers in one of
 * several ways (at once, after reading the body, streaming a large body,
 * ngxshm_respond() with a body beyond the credit, from a post, abort,
 * or never); the input chooses.
 *
 * Checked on the library's side: every string a request hands out lies
 * in its head block, NUL-terminated; handlers run only for complete,
 * valid heads.  On what the library writes (the fake nginx reads it as
 * the module would): the ring stays well-formed; only sidecar frame
 * types, for streams nginx opened, pass the module's own frame checks
 * (ngx_http_shm_check_frame()); response heads arrive whole, before any
 * body, and pass the module's head checks (ngx_http_shm_check.h); no
 * frame after a stream's END or RESET but CREDIT; response body within
 * the window plus the credit granted; credit returned never exceeds the
 * body sent.  On the channel: a frame that breaks a stateless rule of
 * docs/protocol.md makes the library close the channel; a channel that
 * stays open has consumed all of ring 0 and signalled nginx whenever it
 * made room or wrote while nginx slept (no lost wakeup); when nginx
 * goes away, the channel is torn down, every request is freed once the
 * application completed it, and no descriptor is left open.  Once a
 * raw header's len ends its frame elsewhere than its payload, the
 * library reads bytes that were not meant as frames: the checks that
 * need to know which streams it opened and what it received (nginx
 * opened the stream, credit and body bounds, a violation closes) are
 * off for the rest of that input.
 */

#include <signal.h>

#include "ngx_http_shm_check.h"
#include "fake.h"


#define FZ_NSIZES      4
#define FZ_MAX_REQS    64
#define FZ_MAX_KEYS    1024
#define FZ_MAX_OPS     512

enum {
    FZ_APP_RESPOND = 0,     /* ngxshm_respond() at once, echoing headers */
    FZ_APP_READ,            /* read the body, then respond */
    FZ_APP_ABORT,
    FZ_APP_STREAM,          /* start, write 3 windows, end */
    FZ_APP_BIG,             /* ngxshm_respond() with 3 windows of body */
    FZ_APP_HOLD,            /* nothing until the input ends */
    FZ_APP_POST,            /* respond from an ngxshm_request_post() */
    FZ_APP_MODES
};


typedef struct {
    ngxshm_request_t   *r;
    int                 mode;
    int                 post;       /* a post is pending */
    uint64_t            read;
    size_t              written;
    size_t              total;
} fz_req_t;


/* what happened on one stream (slot, generation), seen from nginx */
typedef struct {
    uint32_t            slot;
    uint32_t            gen;
    uint64_t            body_sent;      /* REQ_BODY bytes we wrote */
    uint64_t            credit_sent;    /* CREDIT we granted */
    uint64_t            resp_body;      /* RESP_BODY bytes received */
    uint64_t            credit_recv;    /* CREDIT received */
    unsigned            head_done:1;
    unsigned            ended:1;        /* END or RESET received */
    unsigned char      *head;
    uint32_t            head_len;
    uint32_t            head_size;
} fz_key_t;


typedef struct {
    fz_server_t        *srv;
    int                 fd;
    int                 efd_app;
    int                 efd_nginx;
    unsigned char      *seg;
    size_t              seg_size;
    ngxshm_ring_t       tx;             /* ring 0, we produce */
    ngxshm_ring_t       rx;             /* ring 1, we consume */
    uint32_t            ring_size;
    uint32_t            max_frame;
    uint32_t            max_streams;
    uint32_t            window;
    uint32_t            gens[256];      /* last generation per slot */
    unsigned            tainted:1;      /* we broke ring 0 ourselves */
    unsigned            rx_tainted:1;   /* we broke ring 1's head */
    unsigned            must_close:1;   /* we sent a violation */
    unsigned            closed:1;       /* the library closed */
    unsigned            sleeping:1;     /* we said so on ring 1 */
    unsigned            desync:1;       /* its frames are not ours */
    fz_key_t            keys[FZ_MAX_KEYS];
    unsigned            nkeys;
} fz_nginx_t;


static const uint32_t  fz_sizes[FZ_NSIZES] = { 4096, 8192, 16384, 65536 };

static fz_server_t    *fz_srv[2];
static fz_nginx_t      fz_ng;
static fz_req_t        fz_reqs[FZ_MAX_REQS];
static int             fz_mode;
static unsigned        fz_rchunk;       /* 0: read until EAGAIN */
static int             fz_base_fds;
static unsigned char   fz_pattern[3 * 65536];

/* NGXSHM_FUZZ_TRACE=1: a line per input on what it did */
static int             fz_trace;
static unsigned        fz_nreq;
static unsigned        fz_nans[NGXSHM_TYPE_MAX + 1];


/* the application */

static void fz_event(ngxshm_request_t *r, unsigned ev, void *arg);
static void fz_wakeup(void);


static void
fz_req_done(fz_req_t *q)
{
    q->r = NULL;
}


/* every string the request hands out is in its head block */
static void
fz_check_str(const ngxshm_request_t *r, ngxshm_str_t s)
{
    ngxshm_head_t  hd;

    memcpy(&hd, r->head, sizeof(hd));

    fz_check(s.data != NULL);

    if (s.len == 0 && s.data[0] == '\0'
        && ((const unsigned char *) s.data < r->head
            || (const unsigned char *) s.data >= r->head + r->head_len))
    {
        /* the library's own empty string */
        return;
    }

    fz_check((const unsigned char *) s.data
             >= r->head + sizeof(hd) + 16 * (size_t) hd.nfields);
    fz_check((const unsigned char *) s.data + s.len
             < r->head + r->head_len);
    fz_check(s.data[s.len] == '\0');
}


static void
fz_check_request(ngxshm_request_t *r)
{
    size_t        i, n;
    unsigned      k;
    uint32_t      size;
    ngxshm_str_t  name, value;

    fz_check(r->head_done && r->head != NULL);
    fz_check(r->head_len >= sizeof(ngxshm_head_t));
    memcpy(&size, r->head, sizeof(size));
    fz_check(size == r->head_len);

    n = ngxshm_request_header_count(r);

    for (i = 0; i < n; i++) {
        fz_check(ngxshm_request_header_at(r, i, &name, &value) == 0);
        fz_check_str(r, name);
        fz_check_str(r, value);
    }

    n = ngxshm_request_param_count(r);

    for (i = 0; i < n; i++) {
        fz_check(ngxshm_request_param_at(r, i, &name, &value) == 0);
        fz_check_str(r, name);
        fz_check_str(r, value);
    }

    for (k = NGXSHM_FIELD_METHOD; k <= NGXSHM_FIELD_MAX; k++) {
        fz_check_str(r, ngxshm_request_field(r, k));
    }
}


static void
fz_respond(fz_req_t *q, size_t body)
{
    int               rc;
    size_t            i, n;
    unsigned          status;
    ngxshm_str_t      m;
    ngxshm_header_t   h[4];

    /* echo some request headers: the library checks them, the fake
     * nginx checks what it sends against the module's checks */
    n = ngxshm_request_header_count(q->r);

    if (n > 4) {
        n = 4;
    }

    for (i = 0; i < n; i++) {
        (void) ngxshm_request_header_at(q->r, i, &h[i].name, &h[i].value);
    }

    m = ngxshm_request_field(q->r, NGXSHM_FIELD_METHOD);
    status = 200 + (m.len ? (unsigned char) m.data[0] : 0) % 400;

    rc = ngxshm_respond(q->r, status, h, n, fz_pattern, body);

    if (rc == -EINVAL) {
        rc = ngxshm_respond(q->r, 200, NULL, 0, fz_pattern, body);
        fz_check(rc != -EINVAL && rc != -EALREADY);
    }

    fz_req_done(q);
}


/* write the streamed body; completes the request at its end */
static void
fz_stream(fz_req_t *q)
{
    ssize_t  n;

    while (q->written < q->total) {
        n = ngxshm_response_write(q->r, fz_pattern + q->written,
                                  q->total - q->written);

        if (n == -EAGAIN) {
            return;
        }

        if (n < 0) {
            (void) ngxshm_response_end(q->r);
            fz_req_done(q);
            return;
        }

        fz_check((size_t) n <= q->total - q->written);
        q->written += n;
    }

    (void) ngxshm_response_end(q->r);
    fz_req_done(q);
}


static void
fz_read(fz_req_t *q)
{
    char     buf[4096];
    size_t   want;
    ssize_t  n;

    /* an application that reads less than there is, if fz_rchunk says
     * so, and waits for the next event */
    want = fz_rchunk ? fz_rchunk : sizeof(buf);

    for ( ;; ) {
        n = ngxshm_request_read(q->r, buf, want);

        if (n == -EAGAIN) {
            return;
        }

        if (n < 0) {
            ngxshm_request_abort(q->r);
            fz_req_done(q);
            return;
        }

        if (n == 0) {
            fz_respond(q, q->read % 100);
            return;
        }

        fz_check((size_t) n <= want);
        q->read += n;

        if (fz_rchunk != 0) {
            return;
        }
    }
}


static void
fz_post(ngxshm_request_t *r, void *arg)
{
    fz_req_t  *q;

    q = arg;
    fz_check(q->r == r && q->post);
    q->post = 0;

    fz_respond(q, 10);
}


static void
fz_event(ngxshm_request_t *r, unsigned ev, void *arg)
{
    fz_req_t  *q;

    q = arg;
    fz_check(q->r == r);

    if (ev & NGXSHM_EV_CANCEL) {
        ngxshm_request_abort(r);
        fz_req_done(q);
        return;
    }

    if (q->mode == FZ_APP_READ && (ev & NGXSHM_EV_READABLE)) {
        fz_read(q);

    } else if (q->mode == FZ_APP_STREAM && (ev & NGXSHM_EV_WRITABLE)) {
        fz_stream(q);
    }
}


static void
fz_handler(ngxshm_request_t *r, void *arg)
{
    int        i;
    fz_req_t  *q;

    (void) arg;

    fz_check_request(r);
    fz_nreq++;

    q = NULL;

    for (i = 0; i < FZ_MAX_REQS; i++) {
        if (fz_reqs[i].r == NULL && !fz_reqs[i].post) {
            q = &fz_reqs[i];
            break;
        }
    }

    if (q == NULL) {
        ngxshm_request_abort(r);
        return;
    }

    memset(q, 0, sizeof(*q));
    q->r = r;
    q->mode = fz_mode;

    switch (q->mode) {

    case FZ_APP_RESPOND:
        fz_respond(q, 2);
        break;

    case FZ_APP_READ:
        ngxshm_request_set_callback(r, fz_event, q);
        fz_read(q);
        break;

    case FZ_APP_ABORT:
        ngxshm_request_abort(r);
        fz_req_done(q);
        break;

    case FZ_APP_STREAM:
        ngxshm_request_set_callback(r, fz_event, q);
        q->total = 3 * (size_t) fz_ng.window;

        if (ngxshm_response_start(r, 200, NULL, 0) != 0) {
            (void) ngxshm_response_end(r);
            fz_req_done(q);
            break;
        }

        fz_stream(q);
        break;

    case FZ_APP_BIG:
        fz_respond(q, 3 * (size_t) fz_ng.window);
        break;

    case FZ_APP_HOLD:
        ngxshm_request_set_callback(r, fz_event, q);
        break;

    default: /* FZ_APP_POST */
        q->post = 1;
        fz_check(ngxshm_request_post(r, fz_post, q) == 0);
        break;
    }
}


/* the fake nginx */

static fz_key_t *
fz_key(uint32_t slot, uint32_t gen, int add)
{
    unsigned   i;
    fz_key_t  *k;

    for (i = 0; i < fz_ng.nkeys; i++) {
        if (fz_ng.keys[i].slot == slot && fz_ng.keys[i].gen == gen) {
            return &fz_ng.keys[i];
        }
    }

    if (!add || fz_ng.nkeys == FZ_MAX_KEYS) {
        return NULL;
    }

    k = &fz_ng.keys[fz_ng.nkeys++];
    memset(k, 0, sizeof(*k));
    k->slot = slot;
    k->gen = gen;

    return k;
}


static void
fz_kick(void)
{
    if (write(fz_ng.efd_app, "", 1) != 1) {
        /* the pipe is full: the library wakes anyway */
    }
}


/* we cannot or need not write into ring 0 any more: 1 */
static int
fz_stopped(void)
{
    return fz_ng.closed || fz_ng.tainted;
}


/*
 * Write one frame, header as given (its len need not be the payload's),
 * with "plen" payload bytes; the ring's own bookkeeping uses plen.
 * Stateless rule breaks of the header are noted.  0, or -1 if the ring
 * stays full or the channel is gone.
 */
static int
fz_put(const ngxshm_frame_t *hdr, const unsigned char *payload,
    uint32_t plen)
{
    int              bad, tries;
    uint32_t         v, head;
    fz_key_t        *k;
    ngxshm_frame_t  *f;

    if (fz_stopped()) {
        return -1;
    }

    for (tries = 0; tries < 4; tries++) {
        bad = 0;
        f = ngxshm_ring_reserve(&fz_ng.tx, plen, &bad);

        /* the library publishes a head only in [our last head, tail] */
        fz_check(!bad);

        if (f != NULL) {
            break;
        }

        ngxshm_ring_wait_space(&fz_ng.tx);
        fz_wakeup();
        head = fz_ng.tx.ctrl->head;
        fz_run(fz_ng.srv);

        if (fz_readable(fz_ng.fd)) {
            fz_ng.closed = 1;
            return -1;
        }

        /* the library made room while we waited for it: it woke us */
        if (fz_ng.tx.ctrl->head != head) {
            fz_check(fz_readable(fz_ng.efd_nginx));
        }
    }

    if (f == NULL) {
        return -1;
    }

    if (fz_trace) {
        fprintf(stderr, "lib_frames: put type %u flags %#x reserved %u "
                "stream %u gen %u len %u, payload %u at %u\n", hdr->type,
                hdr->flags, hdr->reserved, hdr->stream, hdr->gen, hdr->len,
                plen, (unsigned) ((unsigned char *) f - fz_ng.tx.data));
    }

    memcpy(f, hdr, sizeof(ngxshm_frame_t));

    if (plen != 0) {
        memcpy((unsigned char *) f + sizeof(ngxshm_frame_t), payload, plen);
    }

    if (ngxshm_ring_commit(&fz_ng.tx, plen)) {
        fz_kick();
    }

    /* what the library must refuse whatever the stream's state */
    if (hdr->len == plen && hdr->reserved == 0
        && hdr->len <= fz_ng.max_frame && hdr->type != NGXSHM_PAD
        && (hdr->type > NGXSHM_CREDIT
            || (hdr->flags & ~(NGXSHM_F_END|NGXSHM_F_CONT))
            || ((hdr->type == NGXSHM_CANCEL || hdr->type == NGXSHM_CREDIT)
                && hdr->flags != 0)
            || (hdr->type == NGXSHM_CANCEL && hdr->len != 0)
            || (hdr->type == NGXSHM_CREDIT && hdr->len != 4)
            || (hdr->type != NGXSHM_REQ_HEAD
                && (hdr->flags & NGXSHM_F_CONT))
            || hdr->stream >= fz_ng.max_streams))
    {
        fz_ng.must_close = 1;
    }

    /*
     * Bookkeeping for the checks of the answers, as the library sees the
     * frame: it goes by the header's len.  If that ends the frame
     * elsewhere than our payload does, or a CREDIT's value is not all
     * ours, the library reads bytes we did not mean as frames: from then
     * on we cannot tell which streams it opened and what it received.
     */
    if (ngxshm_align(hdr->len) != ngxshm_align(plen)
        || (hdr->type == NGXSHM_CREDIT && hdr->len == 4 && plen < 4))
    {
        fz_ng.desync = 1;
    }

    if (hdr->stream < 256) {
        if (hdr->type == NGXSHM_REQ_HEAD && hdr->gen > fz_ng.gens[hdr->stream])
        {
            fz_ng.gens[hdr->stream] = hdr->gen;
        }

        k = fz_key(hdr->stream, hdr->gen, hdr->type == NGXSHM_REQ_HEAD);

        if (k != NULL && hdr->type == NGXSHM_REQ_BODY) {
            k->body_sent += hdr->len;
        }

        if (k != NULL && hdr->type == NGXSHM_CREDIT && hdr->len == 4
            && plen >= 4)
        {
            memcpy(&v, payload, sizeof(v));
            k->credit_sent += v;
        }
    }

    return 0;
}


static int
fz_frame(uint8_t type, uint8_t flags, uint32_t slot, uint32_t gen,
    const unsigned char *p, uint32_t len)
{
    ngxshm_frame_t  f;

    memset(&f, 0, sizeof(f));
    f.len = len;
    f.type = type;
    f.flags = flags;
    f.stream = slot;
    f.gen = gen;

    return fz_put(&f, p, len);
}


/* a response frame from the library, checked as the module would */
static void
fz_answer_frame(const ngxshm_frame_t *f, const unsigned char *p)
{
    int              rc;
    size_t           pos;
    uint32_t         n, v;
    fz_key_t        *k;
    ngxshm_head_t    head;
    ngxshm_field_t   field;

    if (fz_trace) {
        fprintf(stderr, "lib_frames: got type %u flags %#x stream %u gen %u "
                "len %u\n", f->type, f->flags, f->stream, f->gen, f->len);
    }

    fz_check(ngx_http_shm_check_frame(f, fz_ng.max_streams) == NULL);

    /* the library says GOAWAY only when it stops, which it never does */
    fz_check(f->type != NGXSHM_GOAWAY);

    /* a stream nginx opened (which we know only while the library sees
     * our frames as we wrote them) */
    k = fz_key(f->stream, f->gen, fz_ng.desync);
    fz_check(k != NULL || fz_ng.desync);

    if (k == NULL) {
        return;
    }

    switch (f->type) {

    case NGXSHM_CREDIT:
        fz_check(f->len == 4 && f->flags == 0);
        memcpy(&v, p, sizeof(v));
        fz_check(v != 0);
        k->credit_recv += v;
        fz_check(k->credit_recv <= k->body_sent || fz_ng.desync);
        return;

    case NGXSHM_RESET:
        fz_check(f->len == 0 && f->flags == 0);
        fz_check(!k->ended);
        k->ended = 1;
        return;

    case NGXSHM_RESP_HEAD:
        fz_check(!k->ended && !k->head_done);
        fz_check((f->flags & ~(NGXSHM_F_END|NGXSHM_F_CONT)) == 0);
        fz_check((f->flags & (NGXSHM_F_END|NGXSHM_F_CONT))
                 != (NGXSHM_F_END|NGXSHM_F_CONT));

        if (k->head == NULL) {
            fz_check(f->len >= sizeof(ngxshm_head_t));
            memcpy(&k->head_size, p, sizeof(uint32_t));
            fz_check(k->head_size >= sizeof(ngxshm_head_t));
            k->head = fz_alloc(k->head_size);
        }

        fz_check(f->len <= k->head_size - k->head_len);
        memcpy(k->head + k->head_len, p, f->len);
        k->head_len += f->len;

        if (f->flags & NGXSHM_F_CONT) {
            return;
        }

        fz_check(k->head_len == k->head_size);
        k->head_done = 1;

        /* what the module does with the whole block */
        rc = ngx_http_shm_check_head(k->head, k->head_len, k->head_len,
                                     &head);
        fz_check(rc == NGX_HTTP_SHM_HEAD_OK);

        for (n = 0; n < head.nfields; n++) {
            rc = ngx_http_shm_check_field(k->head, &head, n, &field, &pos);
            fz_check(rc == NGX_HTTP_SHM_HEAD_OK);
        }

        free(k->head);
        k->head = NULL;

        if (f->flags & NGXSHM_F_END) {
            k->ended = 1;
        }

        return;

    default: /* NGXSHM_RESP_BODY */
        fz_check(k->head_done && !k->ended);
        fz_check((f->flags & ~NGXSHM_F_END) == 0);
        k->resp_body += f->len;
        fz_check(k->resp_body <= fz_ng.window + k->credit_sent
                 || fz_ng.desync);

        if (f->flags & NGXSHM_F_END) {
            k->ended = 1;
        }

        return;
    }
}


/* read what the library wrote in ring 1 */
static void
fz_drain(void)
{
    int                   i;
    const char           *bad;
    ngxshm_frame_t        f;
    const unsigned char  *p;

    if (fz_ng.rx_tainted) {
        return;
    }

    for (i = 0; i < 10000; i++) {
        p = ngxshm_ring_peek(&fz_ng.rx, &f, &bad);

        if (p == NULL) {
            /* the library writes a well-formed ring */
            fz_check(bad == NULL);
            break;
        }

        fz_answer_frame(&f, p);
        fz_nans[f.type]++;
        ngxshm_ring_consume(&fz_ng.rx, &f);
    }

    if (ngxshm_ring_consumed(&fz_ng.rx)) {
        fz_kick();
    }

    /* as the module does: announce sleep; if a frame came meanwhile,
     * the next round reads it */
    if (!fz_ng.sleeping && !ngxshm_ring_sleep(&fz_ng.rx)) {
        fz_ng.sleeping = 1;
    }
}


/*
 * Before we reset efd_nginx: if we slept on ring 1 and the library wrote
 * there since, it has signalled us, unless it closed the channel (the
 * socket's EOF wakes nginx then).  Then we are awake.
 */
static void
fz_wakeup(void)
{
    uint64_t  v;

    if (fz_ng.sleeping) {
        if (!fz_ng.rx_tainted && fz_ng.rx.ctrl->tail != fz_ng.rx.pos
            && !fz_readable(fz_ng.fd))
        {
            fz_check(fz_readable(fz_ng.efd_nginx));
        }

        fz_ng.sleeping = 0;
    }

    if (read(fz_ng.efd_nginx, &v, sizeof(v)) < 0) {
        /* EAGAIN: not signalled */
    }
}


/* let the library run, read its answers, until both are quiet */
static void
fz_settle(void)
{
    int       i;
    uint32_t  head;

    for (i = 0; i < 16; i++) {
        head = fz_ng.rx.pos;
        fz_run(fz_ng.srv);
        fz_wakeup();
        fz_drain();

        if (fz_ng.rx.pos == head) {
            break;
        }
    }

    if (!fz_ng.closed && fz_readable(fz_ng.fd)) {
        fz_ng.closed = 1;
    }
}


/* the fake nginx's handshake: 0, or -1 */
static int
fz_open(fz_server_t *s, uint32_t ring_size, uint32_t max_frame,
    uint32_t max_streams, uint32_t window, uint32_t start)
{
    int                mfd, fds[3], wp[2];
    size_t             size;
    ssize_t            n;
    ngxshm_msg_t       m;
    ngxshm_seg_hdr_t  *h;

    memset(&fz_ng, 0, sizeof(fz_ng));
    fz_ng.srv = s;
    fz_ng.ring_size = ring_size;
    fz_ng.max_frame = max_frame;
    fz_ng.max_streams = max_streams;
    fz_ng.window = window;

    size = NGXSHM_HDR_SIZE + 2 * (size_t) ring_size;
    mfd = fz_memfd(size, 0);

    fz_ng.seg = mmap(NULL, size, PROT_READ|PROT_WRITE, MAP_SHARED, mfd, 0);
    fz_check(fz_ng.seg != MAP_FAILED);
    fz_ng.seg_size = size;

    h = (ngxshm_seg_hdr_t *) fz_ng.seg;
    h->magic = NGXSHM_MAGIC;
    h->version = NGXSHM_VERSION;
    h->hdr_size = NGXSHM_HDR_SIZE;
    h->seg_size = size;
    h->ring_size = ring_size;
    h->max_frame = max_frame;
    h->max_streams = max_streams;
    h->window = window;
    h->nginx_pid = (uint32_t) getpid();

    ngxshm_ring_init(&fz_ng.tx, fz_ng.seg, 0, ring_size, max_frame);
    ngxshm_ring_init(&fz_ng.rx, fz_ng.seg, 1, ring_size, max_frame);

    fz_ng.tx.ctrl->head = start;
    fz_ng.tx.ctrl->tail = start;
    fz_ng.tx.pos = start;
    fz_ng.tx.peer = start;
    fz_ng.rx.ctrl->head = start;
    fz_ng.rx.ctrl->tail = start;
    fz_ng.rx.pos = start;

    fz_check(fcntl(mfd, F_ADD_SEALS, F_SEAL_SHRINK|F_SEAL_GROW|F_SEAL_SEAL)
             == 0);

    /* protocol 2: nginx wakes the library through a pipe */
    fz_check(pipe2(wp, O_NONBLOCK|O_CLOEXEC) == 0);
    fz_ng.efd_app = wp[1];
    fz_ng.efd_nginx = eventfd(0, EFD_NONBLOCK|EFD_CLOEXEC);
    fz_check(fz_ng.efd_nginx >= 0);

    fz_ng.fd = fz_connect(s);

    memset(&m, 0, sizeof(m));
    m.magic = NGXSHM_MAGIC;
    m.version = NGXSHM_VERSION;
    m.type = NGXSHM_MSG_HELLO;
    m.size = sizeof(m);
    m.pid = (uint32_t) getpid();
    m.seg_size = size;

    fds[0] = mfd;
    fds[1] = wp[0];
    fds[2] = fz_ng.efd_nginx;

    fz_check(fz_sendmsg(fz_ng.fd, &m, sizeof(m), fds, 3) == sizeof(m));
    close(mfd);
    close(wp[0]);

    /* a valid handshake is accepted */
    n = fz_answer(s, fz_ng.fd, &m, sizeof(m));
    fz_check(n == sizeof(m));
    fz_check(m.magic == NGXSHM_MAGIC && m.type == NGXSHM_MSG_HELLO_ACK
             && m.status == 0);

    return 0;
}


static void
fz_close(void)
{
    int             i, pending;
    unsigned        k;
    ngxshm_chan_t  *ch;
    ngxshm_loop_t  *loop;

    fz_settle();

    if (!fz_ng.closed && !fz_ng.tainted) {
        /*
         * An open channel has read all we wrote: no lost wakeup.  (Its
         * published head may lag behind a PAD frame that nothing
         * follows, which only a forged ring has: the consumer moves its
         * head past a PAD with the next frame.)
         */
        loop = &fz_ng.srv->srv->loops[0];
        fz_check(!ngxshm_link_empty(&loop->chans));
        ch = ngxshm_link_data(loop->chans.next, ngxshm_chan_t, link);
        fz_check(ch->state == NGXSHM_CH_OPEN);
        fz_check(ch->rx.pos == fz_ng.tx.pos);
        fz_check(fz_ng.tx.pos - fz_ng.tx.ctrl->head < fz_ng.ring_size);

        /* and closed it if we broke a rule (unless the library took
         * that frame for part of another, which we cannot tell) */
        fz_check(!fz_ng.must_close || fz_ng.desync);
    }

    if (fz_trace) {
        fprintf(stderr, "lib_frames: %u requests; answers: %u head, %u body, "
                "%u reset, %u credit; channel %s%s%s\n", fz_nreq,
                fz_nans[NGXSHM_RESP_HEAD], fz_nans[NGXSHM_RESP_BODY],
                fz_nans[NGXSHM_RESET], fz_nans[NGXSHM_CREDIT],
                fz_ng.closed ? "closed" : "open",
                fz_ng.must_close ? ", a violation sent" : "",
                fz_ng.tainted ? ", rings forged" : "");
    }

    /* the application completes what it holds */
    for (i = 0; i < FZ_MAX_REQS; i++) {
        /* posts ran in the rounds above */
        fz_check(!fz_reqs[i].post);

        if (fz_reqs[i].r != NULL) {
            ngxshm_request_abort(fz_reqs[i].r);
            fz_reqs[i].r = NULL;
        }
    }

    fz_settle();

    close(fz_ng.fd);
    fz_check(fz_wait_idle(fz_ng.srv));

    /* every request freed, nothing held by the application */
    pending = !ngxshm_link_empty(&fz_ng.srv->srv->loops[0].reqs);
    fz_check(!pending);
    fz_check(fz_ng.srv->srv->loops[0].napp == 0);

    close(fz_ng.efd_app);
    close(fz_ng.efd_nginx);
    munmap(fz_ng.seg, fz_ng.seg_size);

    for (k = 0; k < fz_ng.nkeys; k++) {
        free(fz_ng.keys[k].head);
    }
}


/* a well-formed request head from the input, maybe with a byte changed */
static void
fz_head(fz_in_t *in)
{
    uint8_t         nf, i, kind, nl, vl, flags, corrupt, chunk;
    uint32_t        slot, gen, table, off, part, size;
    size_t          got;
    const uint8_t  *b;
    unsigned char   blk[16 + 16 * 16 + 16 * 2 * 256];
    ngxshm_head_t   hd;
    ngxshm_field_t  fl;

    static const uint16_t  kinds[] = {
        NGXSHM_FIELD_HEADER, NGXSHM_FIELD_PARAM, NGXSHM_FIELD_METHOD,
        NGXSHM_FIELD_URI, NGXSHM_FIELD_PATH, NGXSHM_FIELD_QUERY,
        NGXSHM_FIELD_PROTOCOL, NGXSHM_FIELD_REMOTE_ADDR,
        NGXSHM_FIELD_SERVER_NAME, NGXSHM_FIELD_SCHEME, 3, 27
    };

    slot = fz_u8(in) % (fz_ng.max_streams + 1);
    gen = fz_ng.gens[slot] + 1 - (fz_u8(in) & 1);
    flags = fz_u8(in);
    corrupt = fz_u8(in);
    chunk = fz_u8(in);
    nf = fz_u8(in) % 16;

    table = 16 + 16 * nf;
    off = table;

    for (i = 0; i < nf; i++) {
        kind = fz_u8(in);
        nl = fz_u8(in);
        vl = fz_u8(in);

        memset(&fl, 0, sizeof(fl));
        fl.kind = kinds[kind % (sizeof(kinds) / sizeof(kinds[0]))];

        if (fl.kind >= NGXSHM_FIELD_METHOD && fl.kind <= NGXSHM_FIELD_MAX) {
            nl = 0;
        }

        fl.off = off;
        fl.name_len = nl;
        fl.value_len = vl;

        b = fz_bytes(in, nl, &got);
        memset(blk + off, 'n', nl);

        if (got != 0) {
            memcpy(blk + off, b, got);
        }

        blk[off + nl] = '\0';
        off += nl + 1;

        b = fz_bytes(in, vl, &got);
        memset(blk + off, 'v', vl);

        if (got != 0) {
            memcpy(blk + off, b, got);
        }

        blk[off + vl] = '\0';
        off += vl + 1;

        memcpy(blk + 16 + 16 * i, &fl, sizeof(fl));
    }

    memset(&hd, 0, sizeof(hd));
    hd.size = off;
    hd.nfields = nf;
    memcpy(blk, &hd, sizeof(hd));
    size = off;

    if (corrupt != 0) {
        blk[(corrupt * 7u) % size] ^= (uint8_t) (corrupt | 1);
    }

    /* parts of at most "chunk" bytes (0: max_frame) */
    part = chunk ? chunk : fz_ng.max_frame;

    if (part > fz_ng.max_frame) {
        part = fz_ng.max_frame;
    }

    for (off = 0; off < size; off += part) {
        if (part > size - off) {
            part = size - off;
        }

        if (fz_frame(NGXSHM_REQ_HEAD,
                     off + part < size ? NGXSHM_F_CONT
                                       : (flags & NGXSHM_F_END),
                     slot, gen, blk + off, part) != 0)
        {
            return;
        }
    }
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int              ops;
    uint8_t          op, sel, type, flags;
    uint32_t         rsize, max_frame, slot, gen, len, v;
    size_t           got;
    fz_in_t          in;
    const uint8_t   *b;
    unsigned char    buf[65536];
    ngxshm_frame_t   f;

    if (fz_srv[0] == NULL) {
        /* a wake-up into the pipe of a channel the library closed: EPIPE,
         * as nginx gets it (nginx ignores SIGPIPE too) */
        signal(SIGPIPE, SIG_IGN);

        fz_srv[0] = fz_server_start(fz_handler, 0);
        fz_srv[1] = fz_server_start(fz_handler, 256);
        memset(fz_pattern, 'b', sizeof(fz_pattern));
        fz_trace = getenv("NGXSHM_FUZZ_TRACE") != NULL;
    }

    fz_nreq = 0;
    memset(fz_nans, 0, sizeof(fz_nans));

    /* per input: libFuzzer opens some between inputs (the symbolizer) */
    fz_base_fds = fz_nfds();

    fz_init(&in, data, size);

    sel = fz_u8(&in);
    rsize = fz_sizes[(sel >> 1) % FZ_NSIZES];
    max_frame = 16 + fz_u16(&in) % (rsize / 4 - 15);

    memset(fz_reqs, 0, sizeof(fz_reqs));
    fz_mode = (sel >> 3) % FZ_APP_MODES;
    fz_rchunk = 0;

    fz_open(fz_srv[sel & 1], rsize, max_frame, 1 + fz_u8(&in) % 8,
            1 + fz_u16(&in) % rsize, fz_u32(&in) & ~(NGXSHM_ALIGN - 1));

    for (ops = 0; in.n != 0 && ops < FZ_MAX_OPS; ops++) {
        op = fz_u8(&in);

        switch (op % 12) {

        case 0: /* a raw frame header, and payload */
            fz_copy(&in, &f, sizeof(f));
            len = fz_u16(&in) % (max_frame + 1);
            b = fz_bytes(&in, len, &got);
            memset(buf, 0, len);

            if (got != 0) {
                memcpy(buf, b, got);
            }

            (void) fz_put(&f, buf, len);
            break;

        case 1: /* a frame of any type on any stream */
            type = fz_u8(&in) % (NGXSHM_TYPE_MAX + 1);
            flags = fz_u8(&in);
            flags = (flags & 0x80) ? flags : (flags & 3);
            slot = fz_u8(&in) % (fz_ng.max_streams + 1);
            gen = fz_ng.gens[slot] + (fz_u8(&in) % 4) - 1;
            len = fz_u16(&in) % (max_frame + 1);

            if (type == NGXSHM_CREDIT && !(flags & 0x40)) {
                len = 4;
            }

            b = fz_bytes(&in, len, &got);
            memset(buf, 0, len);

            if (got != 0) {
                memcpy(buf, b, got);
            }

            (void) fz_frame(type, flags, slot, gen, buf, len);
            break;

        case 2:
        case 3: /* a request head */
            fz_head(&in);
            break;

        case 4: /* request body on a stream's last generation */
            slot = fz_u8(&in) % fz_ng.max_streams;
            flags = fz_u8(&in) & NGXSHM_F_END;
            len = fz_u16(&in) % (max_frame + 1);
            (void) fz_frame(NGXSHM_REQ_BODY, flags, slot, fz_ng.gens[slot],
                            fz_pattern, len);
            break;

        case 5: /* credit for the response body */
            slot = fz_u8(&in) % fz_ng.max_streams;
            v = (fz_u8(&in) & 1) ? fz_u32(&in) : fz_u16(&in);
            (void) fz_frame(NGXSHM_CREDIT, 0, slot, fz_ng.gens[slot],
                            (unsigned char *) &v, 4);
            break;

        case 6: /* cancel */
            slot = fz_u8(&in) % fz_ng.max_streams;
            (void) fz_frame(NGXSHM_CANCEL, 0, slot, fz_ng.gens[slot],
                            NULL, 0);
            break;

        case 7: /* let the library run */
            fz_run(fz_ng.srv);
            break;

        case 8: /* read the library's answers */
            fz_settle();
            break;

        case 9: /* the application's behaviour for the next requests */
            fz_mode = fz_u8(&in) % FZ_APP_MODES;
            fz_rchunk = fz_u8(&in) % 64 * 64;
            break;

        case 10: /* a forged tail: nothing sane can follow */
            if (!fz_ng.tainted) {
                fz_ng.tx.ctrl->tail = fz_ng.tx.pos + fz_u32(&in);
                fz_ng.tainted = 1;
                fz_kick();
            }

            break;

        default: /* a forged head of ring 1 */
            if (fz_u8(&in) == 0x5a && !fz_ng.rx_tainted) {
                fz_ng.rx.ctrl->head = fz_ng.rx.pos + fz_u32(&in);
                fz_ng.rx_tainted = 1;
                fz_ng.tainted = 1;
            }

            break;
        }
    }

    fz_close();

    /* nothing left open */
    if (fz_nfds() != fz_base_fds) {
        fz_dump_fds();
        fz_check(fz_nfds() == fz_base_fds);
    }

    return 0;
}
