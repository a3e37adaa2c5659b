/*
 * Copyright (C) ngxshm authors
 *
 * libngxshm internals shared by the library's source files: loops,
 * channels, streams.  Not installed; nothing here is API.
 *
 * Ownership in one paragraph: a loop owns its channels and requests.  A
 * request (one stream) is held by up to three kinds of references: its
 * slot in a channel (until both directions ended or nginx cancelled),
 * the application (from the handler call until it completes the
 * request) and each pending ngxshm_request_post().  It is freed when the
 * last one goes.  Application code is only ever called from the loop's
 * run queue, never from inside the frame parser, so a callback can do
 * anything (complete requests, fail the channel) without pulling state
 * from under the parser.
 */

#ifndef NGXSHM_INTERNAL_H
#define NGXSHM_INTERNAL_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include "ngxshm.h"
#include "ngxshm_ring.h"


#define NGXSHM_API  __attribute__((visibility("default")))

#define NGXSHM_DEFAULT_MAX_HEAD   (1024 * 1024)
#define NGXSHM_DEFAULT_DRAIN_MS   30000
#define NGXSHM_DEFAULT_HELLO_MS   10000
#define NGXSHM_DEFAULT_MODE       0600
#define NGXSHM_BACKLOG            511

/* internal event: the head is complete, call the handler */
#define NGXSHM_EV_NEW             0x100

#define NGXSHM_NPSEUDO   (NGXSHM_FIELD_MAX - NGXSHM_FIELD_METHOD + 1)


typedef struct ngxshm_loop_s  ngxshm_loop_t;
typedef struct ngxshm_chan_s  ngxshm_chan_t;
typedef struct ngxshm_post_s  ngxshm_post_t;


/* what an epoll event points at */
enum {
    NGXSHM_IO_LISTEN = 1,
    NGXSHM_IO_WAKE,
    NGXSHM_IO_SOCK,
    NGXSHM_IO_EFD
};

typedef struct {
    int         kind;
    void       *obj;
} ngxshm_io_t;


/* intrusive doubly linked list, as nginx's ngx_queue_t */
typedef struct ngxshm_link_s  ngxshm_link_t;

struct ngxshm_link_s {
    ngxshm_link_t  *prev;
    ngxshm_link_t  *next;
};

#define ngxshm_link_init(h)      ((h)->prev = (h)->next = (h))
#define ngxshm_link_empty(h)     ((h)->next == (h))
#define ngxshm_linked(l)         ((l)->next != NULL)
#define ngxshm_link_data(l, type, member)                                   \
    ((type *) (void *) ((unsigned char *) (l) - offsetof(type, member)))

static inline void
ngxshm_link_add(ngxshm_link_t *h, ngxshm_link_t *l)
{
    l->prev = h->prev;
    l->next = h;
    h->prev->next = l;
    h->prev = l;
}

static inline void
ngxshm_link_del(ngxshm_link_t *l)
{
    if (l->next != NULL) {
        l->prev->next = l->next;
        l->next->prev = l->prev;
        l->next = NULL;
        l->prev = NULL;
    }
}


struct ngxshm_request_s {
    ngxshm_loop_t      *loop;
    ngxshm_chan_t      *ch;           /* NULL once out of its slot */
    uint32_t            slot;
    uint32_t            gen;

    unsigned            refs;         /* atomic: slot + app + posts */
    unsigned            pending;      /* NGXSHM_EV_* to deliver */

    unsigned            in_slot:1;
    unsigned            app:1;        /* the application holds it */
    unsigned            head_done:1;  /* request head complete */
    unsigned            discard:1;    /* drop request body, grant credit */
    unsigned            in_end:1;     /* END received */
    unsigned            cancelled:1;
    unsigned            started:1;    /* response head sent */
    unsigned            out_end:1;    /* END or RESET sent */
    unsigned            no_body:1;    /* HEAD request, 204, 304 */
    unsigned            want_write:1;
    unsigned            is_head:1;    /* method HEAD */

    ngxshm_link_t       runq;         /* loop's run queue */
    ngxshm_link_t       all;          /* loop's requests */
    ngxshm_link_t       wait;         /* channel's ring-space waiters */

    ngxshm_event_pt     cb;
    void               *cb_arg;

    /* the request head block, copied out, and its index */
    unsigned char      *head;
    uint32_t            head_len;     /* bytes received */
    uint32_t            head_cap;
    ngxshm_str_t        pseudo[NGXSHM_NPSEUDO];
    ngxshm_header_t    *hdrs;
    size_t              nhdrs;
    ngxshm_header_t    *params;
    size_t              nparams;

    /* request body: a FIFO never holding more than the window */
    unsigned char      *ibuf;
    uint32_t            icap;
    uint32_t            istart;
    uint32_t            ilen;
    uint32_t            in_credit;    /* bytes nginx may still send */
    uint32_t            in_unrep;     /* consumed, not yet credited */

    /* response body */
    uint32_t            out_credit;
    unsigned char      *obuf;         /* ngxshm_respond() remainder */
    size_t              olen;
    size_t              ooff;
};


typedef struct {
    ngxshm_request_t   *r;
    uint32_t            gen;          /* last generation seen */
} ngxshm_slot_t;


enum {
    NGXSHM_CH_HELLO = 1,              /* waiting for HELLO */
    NGXSHM_CH_OPEN,
    NGXSHM_CH_DEAD                    /* torn down at the batch end */
};

struct ngxshm_chan_s {
    ngxshm_loop_t      *loop;
    ngxshm_link_t       link;         /* loop's channels or dead list */
    int                 state;
    const char         *reason;       /* why it is dead, NULL if quietly */

    int                 fd;
    int                 efd_app;      /* nginx wakes us */
    int                 efd_nginx;    /* we wake nginx */
    ngxshm_io_t         sock_io;
    ngxshm_io_t         efd_io;
    pid_t               pid;          /* the peer, for logs */
    uint64_t            hello_by;     /* ms: HELLO must come by then */

    unsigned char      *seg;
    size_t              seg_size;
    ngxshm_ring_t       rx;           /* ring 0, we consume */
    ngxshm_ring_t       tx;           /* ring 1, we produce */
    uint32_t            max_frame;
    uint32_t            max_streams;
    uint32_t            window;

    ngxshm_slot_t      *slots;
    uint32_t            nopen;        /* slots held */

    /* frames that found the ring full, in order (header + payload) */
    unsigned char      *q;
    size_t              qcap;
    size_t              qstart;
    size_t              qlen;

    ngxshm_link_t       waiters;      /* requests waiting for ring space */
    unsigned            goaway:1;
    unsigned            wake:1;       /* write efd_nginx after the batch */
};


struct ngxshm_post_s {
    ngxshm_post_t      *next;
    ngxshm_request_t   *r;
    ngxshm_post_pt      fn;
    void               *arg;
};


struct ngxshm_loop_s {
    ngxshm_server_t    *srv;
    int                 ep;
    int                 wakefd;
    ngxshm_io_t         wake_io;
    pthread_t           thread;
    unsigned            thread_started:1;
    unsigned            stopping:1;
    unsigned            done:1;
    unsigned            listening:1;  /* listener is in our epoll */

    ngxshm_link_t       chans;
    ngxshm_link_t       dead;
    ngxshm_link_t       runq;
    ngxshm_link_t       reqs;
    unsigned            nchans;
    unsigned            nhello;       /* channels waiting for HELLO */
    unsigned            napp;         /* requests the application holds */
    uint64_t            deadline;     /* ms, CLOCK_MONOTONIC */

    pthread_mutex_t     mu;           /* posts */
    ngxshm_post_t      *posts;
    ngxshm_post_t     **posts_last;
};


struct ngxshm_server_s {
    ngxshm_config_t     cfg;
    int                 lfd;
    ngxshm_io_t         listen_io;
    char               *path;
    dev_t               dev;
    ino_t               ino;
    int                 unlinked;     /* atomic */
    int                 stop;         /* atomic */
    unsigned            nloops;
    ngxshm_loop_t      *loops;
};


/* ngxshm.c */
void ngxshm_log(const char *fmt, ...)
    __attribute__((format(printf, 1, 2)));
void ngxshm_chan_fail(ngxshm_chan_t *ch, const char *reason);
int ngxshm_chan_send(ngxshm_chan_t *ch, const ngxshm_frame_t *hdr,
    const void *data);
ssize_t ngxshm_chan_send_body(ngxshm_chan_t *ch, ngxshm_request_t *r,
    const unsigned char *data, size_t len);

/* ngxshm_request.c */
int ngxshm_frame_in(ngxshm_chan_t *ch, const ngxshm_frame_t *f,
    const unsigned char *p);
void ngxshm_req_notify(ngxshm_request_t *r, unsigned ev);
void ngxshm_req_detach(ngxshm_request_t *r);
void ngxshm_req_unref(ngxshm_request_t *r);
void ngxshm_req_pump(ngxshm_request_t *r);
void ngxshm_req_free(ngxshm_request_t *r);
const char *ngxshm_head_parse(ngxshm_request_t *r);

#endif /* NGXSHM_INTERNAL_H */
