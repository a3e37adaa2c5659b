/*
 * Copyright (C) ngxshm authors
 *
 * libngxshm against a fake nginx: this program plays the module's side of
 * the protocol (memfd, seals, eventfds, HELLO, ring 0 producer, ring 1
 * consumer) and checks what the library answers, including its refusal
 * of bad handshakes and its closing of channels that break the rules.
 * The library runs ngxshm_server_run() in a thread.  Prints TAP.
 */

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include "ngxshm.h"
#include "ngxshm_ring.h"


#define T_TIMEOUT  3000       /* ms */


static int              t_n;
static int              t_failed;
static char             t_path[108];
static ngxshm_server_t *t_srv;

/* counters the handlers update (loop thread), read by the test thread */
static int              t_cancels;
static int              t_cancel_rc;


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
    fflush(stdout);

    if (!cond) {
        t_failed++;
    }
}


/* the fake nginx */

typedef struct {
    int             fd;
    int             efd_app;      /* write end of the wake-up pipe */
    int             app_rd;       /* its read end, sent */
    int             efd_nginx;
    unsigned char  *seg;
    size_t          seg_size;
    ngxshm_ring_t   tx;             /* ring 0: we produce */
    ngxshm_ring_t   rx;             /* ring 1: we consume */
    uint32_t        window;
    uint32_t        max_frame;
    uint32_t        max_streams;
} fake_t;

typedef struct {
    uint32_t        ring_size;
    uint32_t        max_frame;
    uint32_t        max_streams;
    uint32_t        window;
    uint32_t        magic;
    uint32_t        start;          /* initial ring indexes */
    int             no_seals;
    int             nfds;
} fake_opts_t;


static void
fake_defaults(fake_opts_t *o)
{
    memset(o, 0, sizeof(*o));
    o->ring_size = 65536;
    o->max_frame = 4096;
    o->max_streams = 16;
    o->window = 8192;
    o->magic = NGXSHM_MAGIC;
    o->nfds = 3;
}


/* connect and handshake: the HELLO_ACK status, or -1 */
static int
fake_open(fake_t *fk, const fake_opts_t *o)
{
    int                  mfd, fds[4], pp[2], n;
    size_t               size;
    ssize_t              rc;
    struct iovec         iov;
    struct msghdr        mh;
    struct cmsghdr      *cm;
    struct pollfd        pfd;
    ngxshm_msg_t         m;
    ngxshm_seg_hdr_t    *h;
    struct sockaddr_un   sa;
    union {
        struct cmsghdr   align;
        char             buf[CMSG_SPACE(sizeof(int) * 4)];
    } ctl;

    memset(fk, 0, sizeof(*fk));
    fk->fd = socket(AF_UNIX, SOCK_STREAM|SOCK_CLOEXEC, 0);

    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    strcpy(sa.sun_path, t_path);

    if (connect(fk->fd, (struct sockaddr *) &sa, sizeof(sa)) != 0) {
        return -1;
    }

    size = NGXSHM_HDR_SIZE + 2 * (size_t) o->ring_size;
    mfd = memfd_create("fake", MFD_CLOEXEC|MFD_ALLOW_SEALING);
    if (mfd < 0 || ftruncate(mfd, size) != 0) {
        return -1;
    }

    fk->seg = mmap(NULL, size, PROT_READ|PROT_WRITE, MAP_SHARED, mfd, 0);
    if (fk->seg == MAP_FAILED) {
        return -1;
    }

    fk->seg_size = size;
    h = (ngxshm_seg_hdr_t *) fk->seg;
    h->magic = NGXSHM_MAGIC;
    h->version = NGXSHM_VERSION;
    h->hdr_size = NGXSHM_HDR_SIZE;
    h->seg_size = size;
    h->ring_size = o->ring_size;
    h->max_frame = o->max_frame;
    h->max_streams = o->max_streams;
    h->window = o->window;
    h->nginx_pid = getpid();

    fk->window = o->window;
    fk->max_frame = o->max_frame;
    fk->max_streams = o->max_streams;

    ngxshm_ring_init(&fk->tx, fk->seg, 0, o->ring_size, o->max_frame);
    ngxshm_ring_init(&fk->rx, fk->seg, 1, o->ring_size, o->max_frame);

    fk->tx.ctrl->head = o->start;
    fk->tx.ctrl->tail = o->start;
    fk->tx.pos = o->start;
    fk->tx.peer = o->start;
    fk->rx.ctrl->head = o->start;
    fk->rx.ctrl->tail = o->start;
    fk->rx.pos = o->start;

    if (!o->no_seals
        && fcntl(mfd, F_ADD_SEALS, F_SEAL_SHRINK|F_SEAL_GROW|F_SEAL_SEAL)
           != 0)
    {
        return -1;
    }

    if (pipe2(pp, O_NONBLOCK|O_CLOEXEC) != 0) {
        return -1;
    }

    fk->app_rd = pp[0];
    fk->efd_app = pp[1];
    fk->efd_nginx = eventfd(0, EFD_NONBLOCK|EFD_CLOEXEC);

    memset(&m, 0, sizeof(m));
    m.magic = o->magic;
    m.version = NGXSHM_VERSION;
    m.type = NGXSHM_MSG_HELLO;
    m.size = sizeof(m);
    m.pid = getpid();
    m.seg_size = size;

    fds[0] = mfd;
    fds[1] = fk->app_rd;
    fds[2] = fk->efd_nginx;
    fds[3] = fk->app_rd;
    n = o->nfds;

    memset(&mh, 0, sizeof(mh));
    memset(&ctl, 0, sizeof(ctl));
    iov.iov_base = &m;
    iov.iov_len = sizeof(m);
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    mh.msg_control = ctl.buf;
    mh.msg_controllen = CMSG_SPACE(sizeof(int) * n);
    cm = CMSG_FIRSTHDR(&mh);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int) * n);
    memcpy(CMSG_DATA(cm), fds, sizeof(int) * n);

    if (sendmsg(fk->fd, &mh, MSG_NOSIGNAL) != sizeof(m)) {
        return -1;
    }

    close(mfd);

    pfd.fd = fk->fd;
    pfd.events = POLLIN;

    if (poll(&pfd, 1, T_TIMEOUT) != 1) {
        return -1;
    }

    rc = recv(fk->fd, &m, sizeof(m), 0);
    if (rc != sizeof(m) || m.magic != NGXSHM_MAGIC
        || m.type != NGXSHM_MSG_HELLO_ACK)
    {
        return -1;
    }

    return m.status;
}


static void
fake_close(fake_t *fk)
{
    close(fk->fd);
    close(fk->efd_app);
    close(fk->app_rd);
    close(fk->efd_nginx);
    munmap(fk->seg, fk->seg_size);
}


static int fake_recv(fake_t *fk, ngxshm_frame_t *f, unsigned char *buf,
    int timeout);


/* 1 once a GOAWAY frame arrived, 0 on a timeout */

static int
fake_goaway(fake_t *fk)
{
    ngxshm_frame_t  f;
    unsigned char   buf[4096];

    while (fake_recv(fk, &f, buf, T_TIMEOUT) == 1) {
        if (f.type == NGXSHM_GOAWAY && f.stream == 0 && f.gen == 0) {
            return 1;
        }
    }

    return 0;
}


static void
fake_wait_efd(fake_t *fk, int timeout)
{
    uint64_t       v;
    struct pollfd  pfd;

    pfd.fd = fk->efd_nginx;
    pfd.events = POLLIN;

    if (poll(&pfd, 1, timeout) == 1) {
        if (read(fk->efd_nginx, &v, sizeof(v)) < 0) {
            /* EAGAIN */
        }
    }
}


static void
fake_kick(fake_t *fk)
{
    if (write(fk->efd_app, "", 1) != 1) {
        /* a full pipe: the library has wake-ups to read already */
    }
}


/* produce one frame into ring 0; 0 or -1 if the ring stays full */
static int
fake_send(fake_t *fk, int type, int flags, uint32_t stream, uint32_t gen,
    const void *p, uint32_t len)
{
    int              bad, tries;
    ngxshm_frame_t  *f;

    for (tries = 0; tries < 40; tries++) {
        bad = 0;
        f = ngxshm_ring_reserve(&fk->tx, len, &bad);

        if (bad) {
            return -1;
        }

        if (f != NULL) {
            f->len = len;
            f->type = (uint8_t) type;
            f->flags = (uint8_t) flags;
            f->reserved = 0;
            f->stream = stream;
            f->gen = gen;

            if (len) {
                memcpy((unsigned char *) f + sizeof(*f), p, len);
            }

            if (ngxshm_ring_commit(&fk->tx, len)) {
                fake_kick(fk);
            }

            return 0;
        }

        ngxshm_ring_wait_space(&fk->tx);

        if (ngxshm_ring_reserve(&fk->tx, len, &bad) == NULL) {
            fake_wait_efd(fk, 50);
        }
    }

    return -1;
}


/* consume one frame from ring 1: 1, 0 on timeout, -1 on a bad ring */
static int
fake_recv(fake_t *fk, ngxshm_frame_t *f, unsigned char *buf, int timeout)
{
    const char           *bad;
    const unsigned char  *p;

    for ( ;; ) {
        p = ngxshm_ring_peek(&fk->rx, f, &bad);

        if (p != NULL) {
            if (f->len) {
                memcpy(buf, p, f->len);
            }

            ngxshm_ring_consume(&fk->rx, f);

            if (ngxshm_ring_consumed(&fk->rx)) {
                fake_kick(fk);
            }

            return 1;
        }

        if (bad != NULL) {
            return -1;
        }

        if (ngxshm_ring_sleep(&fk->rx)) {
            continue;
        }

        if (timeout <= 0) {
            return 0;
        }

        fake_wait_efd(fk, 100);
        timeout -= 100;
    }
}


/* the socket has reached EOF (or an error) already */
static int
fake_dead(fake_t *fk)
{
    struct pollfd  pfd;

    pfd.fd = fk->fd;
    pfd.events = POLLIN;

    return poll(&pfd, 1, 0) != 0;
}


/* the socket reaches EOF within the timeout */
static int
fake_eof(fake_t *fk)
{
    char           c;
    struct pollfd  pfd;

    pfd.fd = fk->fd;
    pfd.events = POLLIN;

    if (poll(&pfd, 1, T_TIMEOUT) != 1) {
        return 0;
    }

    return recv(fk->fd, &c, 1, MSG_DONTWAIT) == 0;
}


/* request head blocks: name NUL value NUL */

typedef struct {
    unsigned char   b[65536];
    uint32_t        n;
    uint16_t        nfields;
    uint32_t        str;
    ngxshm_field_t  fl[64];
    unsigned char   s[32768];
} block_t;


static void
blk_init(block_t *b)
{
    memset(b, 0, sizeof(*b));
}


static void
blk_add(block_t *b, int kind, const char *name, const char *value)
{
    size_t  nl, vl;

    nl = strlen(name);
    vl = strlen(value);

    b->fl[b->nfields].off = b->str;         /* relative to strings, fixed */
    b->fl[b->nfields].name_len = (uint16_t) nl;
    b->fl[b->nfields].value_len = (uint32_t) vl;
    b->fl[b->nfields].kind = (uint16_t) kind;
    b->nfields++;

    memcpy(b->s + b->str, name, nl + 1);
    b->str += nl + 1;
    memcpy(b->s + b->str, value, vl + 1);
    b->str += vl + 1;
}


static void
blk_req(block_t *b, const char *method, const char *uri)
{
    blk_init(b);
    blk_add(b, NGXSHM_FIELD_METHOD, "", method);
    blk_add(b, NGXSHM_FIELD_URI, "", uri);
}


static uint32_t
blk_build(block_t *b)
{
    uint16_t       i;
    uint32_t       table;
    ngxshm_head_t  h;

    table = 16 + 16 * b->nfields;

    memset(&h, 0, sizeof(h));
    h.size = table + b->str;
    h.nfields = b->nfields;
    memcpy(b->b, &h, sizeof(h));

    for (i = 0; i < b->nfields; i++) {
        b->fl[i].off += table;
        memcpy(b->b + 16 + 16 * i, &b->fl[i], 16);
    }

    memcpy(b->b + table, b->s, b->str);
    b->n = h.size;

    return b->n;
}


static int
send_head(fake_t *fk, uint32_t stream, uint32_t gen, block_t *b, int end)
{
    uint32_t  off, part;

    if (b->n == 0) {
        blk_build(b);
    }

    for (off = 0; off < b->n; off += part) {
        part = b->n - off;

        if (part > fk->max_frame) {
            part = fk->max_frame;
        }

        if (fake_send(fk, NGXSHM_REQ_HEAD,
                      off + part < b->n ? NGXSHM_F_CONT
                                        : (end ? NGXSHM_F_END : 0),
                      stream, gen, b->b + off, part) != 0)
        {
            return -1;
        }
    }

    return 0;
}


/* a response as the fake nginx sees it */

typedef struct {
    int             status;
    int             reset;
    int             ended;
    int             bad;
    unsigned char   head[65536];
    uint32_t        head_len;
    unsigned char  *body;
    size_t          body_len;
    size_t          body_cap;
    uint32_t        credit_got;     /* request credit returned to us */
    uint32_t        unreported;     /* response bytes not yet credited */
    uint32_t        gen;            /* of the stream, for our CREDIT */
} resp_t;


static void
resp_init(resp_t *rs)
{
    memset(rs, 0, sizeof(*rs));
    rs->gen = 1;
}


/* a response header value from the head block, or NULL */
static const char *
resp_header(resp_t *rs, const char *name, size_t *len)
{
    uint16_t        i;
    ngxshm_head_t   h;
    ngxshm_field_t  fl;
    static char     v[1024];

    memcpy(&h, rs->head, sizeof(h));

    for (i = 0; i < h.nfields; i++) {
        memcpy(&fl, rs->head + 16 + 16 * i, sizeof(fl));

        if (fl.name_len == strlen(name)
            && memcmp(rs->head + fl.off, name, fl.name_len) == 0
            && fl.value_len < sizeof(v))
        {
            memcpy(v, rs->head + fl.off + fl.name_len, fl.value_len);
            v[fl.value_len] = '\0';
            *len = fl.value_len;
            return v;
        }
    }

    return NULL;
}


/* handle one frame for stream s: 1 if it was one, 0 timeout, -1 bad */
static int
resp_step(fake_t *fk, resp_t *rs, uint32_t s, int timeout)
{
    int             rc;
    uint32_t        v;
    ngxshm_frame_t  f;
    ngxshm_head_t   h;
    unsigned char   buf[65536];

    rc = fake_recv(fk, &f, buf, timeout);
    if (rc <= 0) {
        return rc;
    }

    if (f.stream != s && f.type != NGXSHM_GOAWAY) {
        rs->bad = 1;
        return 1;
    }

    switch (f.type) {

    case NGXSHM_RESP_HEAD:
        if (rs->head_len + f.len > sizeof(rs->head)) {
            rs->bad = 1;
            break;
        }

        memcpy(rs->head + rs->head_len, buf, f.len);
        rs->head_len += f.len;

        if (!(f.flags & NGXSHM_F_CONT)) {
            memcpy(&h, rs->head, sizeof(h));
            rs->status = h.status;

            if (h.size != rs->head_len) {
                rs->bad = 1;
            }
        }

        if (f.flags & NGXSHM_F_END) {
            rs->ended = 1;
        }

        break;

    case NGXSHM_RESP_BODY:
        if (rs->body_len + f.len > rs->body_cap) {
            rs->body_cap = (rs->body_len + f.len) * 2;
            rs->body = realloc(rs->body, rs->body_cap);
            if (rs->body == NULL) {
                abort();
            }
        }

        if (f.len != 0) {
            memcpy(rs->body + rs->body_len, buf, f.len);
            rs->body_len += f.len;
        }
        rs->unreported += f.len;

        if (f.flags & NGXSHM_F_END) {
            rs->ended = 1;
        }

        /* return credit at once, as nginx does when it consumed all */
        if (rs->unreported && !rs->ended) {
            v = rs->unreported;
            rs->unreported = 0;
            fake_send(fk, NGXSHM_CREDIT, 0, s, rs->gen, &v, 4);
        }

        break;

    case NGXSHM_CREDIT:
        memcpy(&v, buf, 4);
        rs->credit_got += v;
        break;

    case NGXSHM_RESET:
        rs->reset = 1;
        break;

    case NGXSHM_GOAWAY:
        break;

    default:
        rs->bad = 1;
    }

    return 1;
}


/* the library fixes the gen of our CREDIT frames: patch it in */
static uint32_t  t_gen;

static int
fake_credit(fake_t *fk, uint32_t s, uint32_t v)
{
    return fake_send(fk, NGXSHM_CREDIT, 0, s, t_gen, &v, 4);
}


/* read the whole response of stream s */
static int
resp_read(fake_t *fk, resp_t *rs, uint32_t s)
{
    while (!rs->ended && !rs->reset && !rs->bad) {
        if (resp_step(fk, rs, s, T_TIMEOUT) <= 0) {
            return -1;
        }
    }

    return rs->bad ? -1 : 0;
}


/* the application */

static void app_echo_pump(ngxshm_request_t *r);


/* a held request: waits for nginx to cancel it, reads nothing */
static void
app_hold_event(ngxshm_request_t *r, unsigned ev, void *arg)
{
    (void) arg;

    if (ev & NGXSHM_EV_CANCEL) {
        t_cancel_rc = ngxshm_response_end(r);
        __atomic_add_fetch(&t_cancels, 1, __ATOMIC_SEQ_CST);
    }
}


static void
app_echo_event(ngxshm_request_t *r, unsigned ev, void *arg)
{
    (void) arg;

    if (ev & NGXSHM_EV_CANCEL) {
        __atomic_add_fetch(&t_cancels, 1, __ATOMIC_SEQ_CST);
        t_cancel_rc = ngxshm_response_end(r);
        return;
    }

    app_echo_pump(r);
}


/* echo: at most 1000 bytes in flight, leftover kept in a static buffer
 * (one streaming request at a time in these tests) */
static unsigned char  echo_buf[1000];
static size_t         echo_len, echo_off;
static int            echo_eof;

/* "/peek": the echo writes from the bytes ngxshm_request_peek() shows */
static int            echo_peek;
static unsigned       echo_peek_bad;
static const char    *t_echo_uri = "/echo";

static void
app_peek_pump(ngxshm_request_t *r)
{
    ssize_t      n, w;
    const void  *data;

    for ( ;; ) {
        data = r;
        n = ngxshm_request_peek(r, &data);

        if (n == -EAGAIN || n == 0) {
            echo_peek_bad += (data != NULL);

            if (n == 0) {
                ngxshm_response_end(r);
            }

            return;
        }

        if (n < 0) {
            ngxshm_request_abort(r);
            return;
        }

        echo_peek_bad += (ngxshm_request_consume(r, n + 1) != -EINVAL);
        echo_peek_bad += (ngxshm_request_peek(r, NULL) != -EINVAL);

        /* at most 777 bytes a write: the rest stays for the next peek */
        w = ngxshm_response_write(r, data, n < 777 ? n : 777);
        if (w == -EAGAIN) {
            return;
        }

        if (w < 0) {
            ngxshm_request_abort(r);
            return;
        }

        echo_peek_bad += (ngxshm_request_consume(r, w) != 0);
    }
}


static void
app_echo_pump(ngxshm_request_t *r)
{
    ssize_t  n;

    if (echo_peek) {
        app_peek_pump(r);
        return;
    }

    for ( ;; ) {
        if (echo_off < echo_len) {
            n = ngxshm_response_write(r, echo_buf + echo_off,
                                      echo_len - echo_off);
            if (n == -EAGAIN) {
                return;
            }

            if (n < 0) {
                ngxshm_request_abort(r);
                return;
            }

            echo_off += n;
            continue;
        }

        if (echo_eof) {
            ngxshm_response_end(r);
            return;
        }

        n = ngxshm_request_read(r, echo_buf, sizeof(echo_buf));
        if (n == -EAGAIN) {
            return;
        }

        if (n < 0) {
            ngxshm_request_abort(r);
            return;
        }

        if (n == 0) {
            echo_eof = 1;
            continue;
        }

        echo_len = n;
        echo_off = 0;
    }
}


static void
app_posted(ngxshm_request_t *r, void *arg)
{
    (void) arg;

    ngxshm_respond(r, 200, NULL, 0, "posted", 6);
}


static void *
app_poster(void *arg)
{
    usleep(20000);

    if (ngxshm_request_post(arg, app_posted, NULL) != 0) {
        abort();
    }

    return NULL;
}


static void
app_handler(ngxshm_request_t *r, void *arg)
{
    int              rc;
    char             body[4096];
    size_t           len;
    ngxshm_str_t     uri, n, v;
    ngxshm_header_t  h;
    static char      big[200000];

    (void) arg;

    uri = ngxshm_request_field(r, NGXSHM_FIELD_URI);

    h.name.data = "X-Test";
    h.name.len = 6;
    h.value.data = "yes";
    h.value.len = 3;

    if (strcmp(uri.data, "/oneshot") == 0) {
        ngxshm_respond(r, 200, &h, 1, "hello", 5);

    } else if (strcmp(uri.data, "/big") == 0) {
        memset(big, 'x', sizeof(big));
        ngxshm_respond(r, 200, NULL, 0, big, sizeof(big));

    } else if (strcmp(uri.data, "/echo") == 0
               || strcmp(uri.data, "/peek") == 0)
    {
        echo_peek = (uri.data[1] == 'p');
        echo_len = 0;
        echo_off = 0;
        echo_eof = 0;
        rc = ngxshm_response_start(r, 201, &h, 1);
        if (rc != 0) {
            ngxshm_request_abort(r);
            return;
        }

        ngxshm_request_set_callback(r, app_echo_event, NULL);
        app_echo_pump(r);

    } else if (strcmp(uri.data, "/hold") == 0) {
        ngxshm_request_set_callback(r, app_hold_event, NULL);

    } else if (strcmp(uri.data, "/post") == 0) {
        pthread_t  tid;

        if (pthread_create(&tid, NULL, app_poster, r) != 0) {
            ngxshm_request_abort(r);
            return;
        }

        pthread_detach(tid);

    } else if (strcmp(uri.data, "/abort") == 0) {
        ngxshm_request_abort(r);

    } else if (strcmp(uri.data, "/badheader") == 0) {
        h.name.data = "Connection";
        h.name.len = 10;
        rc = ngxshm_response_start(r, 200, &h, 1);
        h.name.data = "X-Ok";
        h.name.len = 4;
        h.value.data = "a\r\nb";
        h.value.len = 4;
        rc = (rc == -EINVAL)
             && ngxshm_response_start(r, 200, &h, 1) == -EINVAL
             && ngxshm_response_start(r, 99, NULL, 0) == -EINVAL
             && ngxshm_response_write(r, "x", 1) == -EINVAL;
        ngxshm_respond(r, rc ? 200 : 500, NULL, 0, NULL, 0);

    } else if (strcmp(uri.data, "/fields") == 0) {
        len = 0;
        len += snprintf(body + len, sizeof(body) - len, "%s|%s|%zu|",
                        ngxshm_request_field(r, NGXSHM_FIELD_METHOD).data,
                        ngxshm_request_field(r, NGXSHM_FIELD_SCHEME).data,
                        ngxshm_request_header_count(r));
        v = ngxshm_request_header(r, "x-ONE");
        len += snprintf(body + len, sizeof(body) - len, "%s|",
                        v.data ? v.data : "(null)");
        v = ngxshm_request_param(r, "P");
        len += snprintf(body + len, sizeof(body) - len, "%s|",
                        v.data ? v.data : "(null)");
        v = ngxshm_request_param(r, "p");
        len += snprintf(body + len, sizeof(body) - len, "%s|",
                        v.data ? v.data : "(null)");
        rc = ngxshm_request_header_at(r, 1, &n, &v);
        len += snprintf(body + len, sizeof(body) - len, "%d:%s=%s|", rc,
                        rc == 0 ? n.data : "", rc == 0 ? v.data : "");
        len += snprintf(body + len, sizeof(body) - len, "%d",
                        ngxshm_request_header_at(r, 9, &n, &v));
        ngxshm_respond(r, 200, NULL, 0, body, len);

    } else {
        ngxshm_respond(r, 404, NULL, 0, NULL, 0);
    }
}


static void *
server_thread(void *arg)
{
    (void) arg;

    ngxshm_server_run(t_srv);

    return NULL;
}


/* tests */

static void
test_oneshot(void)
{
    fake_t       fk;
    resp_t       rs;
    block_t      b;
    size_t       len;
    fake_opts_t  o;
    const char  *v;

    fake_defaults(&o);
    ok(fake_open(&fk, &o) == 0, "handshake accepted");

    blk_req(&b, "GET", "/oneshot");
    send_head(&fk, 3, 1, &b, 1);
    resp_init(&rs);
    ok(resp_read(&fk, &rs, 3) == 0 && rs.status == 200,
       "one-shot response: status 200");
    v = resp_header(&rs, "X-Test", &len);
    ok(v != NULL && strcmp(v, "yes") == 0, "one-shot response: header");
    ok(rs.body_len == 5 && memcmp(rs.body, "hello", 5) == 0,
       "one-shot response: body");
    free(rs.body);

    /* the slot is free: a new generation may use it */
    blk_req(&b, "HEAD", "/oneshot");
    send_head(&fk, 3, 2, &b, 1);
    resp_init(&rs);
    rs.gen = 2;
    ok(resp_read(&fk, &rs, 3) == 0 && rs.status == 200 && rs.body_len == 0,
       "HEAD request: no body");
    free(rs.body);

    /* nginx's late CREDIT and CANCEL for a finished stream are fine */
    t_gen = 2;
    fake_credit(&fk, 3, 100);
    fake_send(&fk, NGXSHM_CANCEL, 0, 3, 2, NULL, 0);

    blk_req(&b, "GET", "/nothing");
    send_head(&fk, 0, 1, &b, 1);
    resp_init(&rs);
    ok(resp_read(&fk, &rs, 0) == 0 && rs.status == 404 && rs.ended,
       "late CREDIT and CANCEL ignored; 404 with END on the head");
    free(rs.body);

    blk_req(&b, "GET", "/fields");
    blk_add(&b, NGXSHM_FIELD_HEADER, "X-One", "1");
    blk_add(&b, NGXSHM_FIELD_HEADER, "X-Two", "two");
    blk_add(&b, NGXSHM_FIELD_PARAM, "P", "param");
    blk_add(&b, NGXSHM_FIELD_SCHEME, "", "https");
    blk_add(&b, 99, "unknown", "kind");
    send_head(&fk, 1, 1, &b, 1);
    resp_init(&rs);
    resp_read(&fk, &rs, 1);
    ok(rs.body_len > 0 && rs.body_len < 200
       && memcmp(rs.body, "GET|https|2|1|param|(null)|0:X-Two=two|-34",
                 rs.body_len) == 0,
       "request fields, headers, params");
    if (rs.body_len > 0 && rs.body_len < 200) {
        printf("# %.*s\n", (int) rs.body_len, rs.body);
    }
    free(rs.body);

    blk_req(&b, "GET", "/badheader");
    send_head(&fk, 1, 2, &b, 1);
    resp_init(&rs);
    rs.gen = 2;
    ok(resp_read(&fk, &rs, 1) == 0 && rs.status == 200,
       "bad response heads refused with -EINVAL");
    free(rs.body);

    blk_req(&b, "GET", "/abort");
    send_head(&fk, 2, 1, &b, 1);
    resp_init(&rs);
    ok(resp_read(&fk, &rs, 2) == 0 && rs.reset, "abort sends RESET");
    free(rs.body);

    /* a large response: the library queues beyond the credit */
    blk_req(&b, "GET", "/big");
    send_head(&fk, 4, 1, &b, 1);
    resp_init(&rs);
    ok(resp_read(&fk, &rs, 4) == 0 && rs.body_len == 200000
       && rs.body[199999] == 'x', "one-shot response beyond the credit");
    free(rs.body);

    fake_close(&fk);
}


static void
test_stream(uint32_t start, uint32_t ring, uint32_t frame, uint32_t win,
    size_t total)
{
    int             ok_data;
    size_t          sent, chunk, i;
    uint32_t        credit;
    fake_t          fk;
    resp_t          rs;
    block_t         b;
    fake_opts_t     o;
    unsigned char  *body;

    fake_defaults(&o);
    o.start = start;
    o.ring_size = ring;
    o.max_frame = frame;
    o.window = win;
    ok(fake_open(&fk, &o) == 0, "handshake (ring %u, start %u)", ring, start);

    body = malloc(total + 1);
    if (body == NULL) {
        abort();
    }

    for (i = 0; i < total; i++) {
        body[i] = (unsigned char) (i * 7 + i / 251);
    }

    blk_req(&b, "POST", t_echo_uri);
    send_head(&fk, 5, 7, &b, 0);
    t_gen = 7;

    resp_init(&rs);
    rs.gen = 7;
    sent = 0;
    credit = win;

    while (!rs.ended && !rs.bad && !rs.reset) {
        while (sent < total && credit > 0) {
            chunk = total - sent;
            chunk = chunk < credit ? chunk : credit;
            chunk = chunk < frame ? chunk : frame;
            chunk = chunk < 777 ? chunk : 777;

            if (fake_send(&fk, NGXSHM_REQ_BODY,
                          sent + chunk == total ? NGXSHM_F_END : 0,
                          5, 7, body + sent, (uint32_t) chunk) != 0)
            {
                break;
            }

            sent += chunk;
            credit -= chunk;
        }

        if (sent == total && total == 0) {
            fake_send(&fk, NGXSHM_REQ_BODY, NGXSHM_F_END, 5, 7, NULL, 0);
            sent = 1;
        }

        rs.credit_got = 0;

        if (resp_step(&fk, &rs, 5, T_TIMEOUT) <= 0) {
            break;
        }

        credit += rs.credit_got;
        if (credit > win) {
            rs.bad = 1;
        }
    }

    ok(rs.ended && !rs.bad && rs.status == 201, "streamed echo ended");

    ok_data = rs.body_len == total
              && (total == 0 || memcmp(rs.body, body, total) == 0);
    ok(ok_data, "streamed echo of %zu bytes (window %u, frame %u)", total,
       win, frame);

    free(rs.body);
    free(body);
    fake_close(&fk);
}


static void
test_cancel(void)
{
    int          i, before;
    fake_t       fk;
    resp_t       rs;
    block_t      b;
    fake_opts_t  o;

    fake_defaults(&o);
    ok(fake_open(&fk, &o) == 0, "handshake for cancel");

    before = __atomic_load_n(&t_cancels, __ATOMIC_SEQ_CST);

    /* a request cancelled before its handler ran is dropped quietly;
     * give the handler time to run first */
    blk_req(&b, "POST", "/hold");
    send_head(&fk, 9, 1, &b, 0);
    usleep(100000);
    fake_send(&fk, NGXSHM_REQ_BODY, 0, 9, 1, "abc", 3);
    fake_send(&fk, NGXSHM_CANCEL, 0, 9, 1, NULL, 0);

    for (i = 0; i < 300; i++) {
        if (__atomic_load_n(&t_cancels, __ATOMIC_SEQ_CST) != before) {
            break;
        }

        usleep(10000);
    }

    ok(__atomic_load_n(&t_cancels, __ATOMIC_SEQ_CST) == before + 1,
       "CANCEL reaches the event callback");
    ok(t_cancel_rc == -ECANCELED, "end after cancel returns -ECANCELED");

    /* the slot is free for the next generation */
    blk_req(&b, "GET", "/oneshot");
    send_head(&fk, 9, 2, &b, 1);
    resp_init(&rs);
    rs.gen = 2;
    ok(resp_read(&fk, &rs, 9) == 0 && rs.status == 200,
       "slot reused after CANCEL");
    free(rs.body);

    /* nothing was written for the cancelled stream */
    ok(fake_recv(&fk, &(ngxshm_frame_t) { 0 }, (unsigned char [4096]) { 0 },
                 100) == 0, "nothing sent after CANCEL");

    /* a held request cancelled by the channel closing */
    before = __atomic_load_n(&t_cancels, __ATOMIC_SEQ_CST);
    blk_req(&b, "GET", "/hold");
    send_head(&fk, 1, 1, &b, 1);
    usleep(100000);
    fake_close(&fk);

    for (i = 0; i < 300; i++) {
        if (__atomic_load_n(&t_cancels, __ATOMIC_SEQ_CST) != before) {
            break;
        }

        usleep(10000);
    }

    ok(__atomic_load_n(&t_cancels, __ATOMIC_SEQ_CST) == before + 1,
       "socket EOF cancels held requests");
}


/* a broken rule closes the channel; "what" builds the offence */
typedef void (*offence_pt)(fake_t *fk);

static void
off_no_stream(fake_t *fk)
{
    fake_send(fk, NGXSHM_REQ_BODY, 0, 0, 1, "x", 1);
}

static void
off_range(fake_t *fk)
{
    block_t  b;

    blk_req(&b, "GET", "/hold");
    send_head(fk, 16, 1, &b, 1);
}

static void
off_type(fake_t *fk)
{
    fake_send(fk, NGXSHM_RESP_HEAD, 0, 0, 1, NULL, 0);
}

static void
off_reserved(fake_t *fk)
{
    int              bad;
    ngxshm_frame_t  *f;

    f = ngxshm_ring_reserve(&fk->tx, 0, &bad);
    memset(f, 0, sizeof(*f));
    f->type = NGXSHM_CANCEL;
    f->reserved = 1;
    ngxshm_ring_commit(&fk->tx, 0);
    fake_kick(fk);
}

static void
off_tail(fake_t *fk)
{
    ngxshm_store_release(&fk->tx.ctrl->tail, fk->tx.pos + 8);
    fake_kick(fk);
}

static void
off_tail_far(fake_t *fk)
{
    ngxshm_store_release(&fk->tx.ctrl->tail, fk->tx.pos - 16);
    fake_kick(fk);
}

static void
off_offset(fake_t *fk)
{
    block_t  b;

    blk_req(&b, "GET", "/hold");
    blk_build(&b);
    /* field 1's offset past the block */
    memcpy(b.b + 16 + 16, &b.n, 4);
    send_head(fk, 0, 1, &b, 1);
}

static void
off_nul(fake_t *fk)
{
    block_t  b;

    blk_req(&b, "GET", "/hold");
    blk_build(&b);
    b.b[b.n - 1] = 'x';
    send_head(fk, 0, 1, &b, 1);
}

static void
off_nfields(fake_t *fk)
{
    block_t   b;
    uint16_t  n;

    blk_req(&b, "GET", "/hold");
    blk_build(&b);
    n = 60000;
    memcpy(b.b + 4, &n, 2);
    send_head(fk, 0, 1, &b, 1);
}

static void
off_size(fake_t *fk)
{
    block_t   b;
    uint32_t  n;

    blk_req(&b, "GET", "/hold");
    blk_build(&b);
    n = b.n + 16;
    memcpy(b.b, &n, 4);
    send_head(fk, 0, 1, &b, 1);
}

static void
off_short(fake_t *fk)
{
    fake_send(fk, NGXSHM_REQ_HEAD, NGXSHM_F_END, 0, 1, "abc", 3);
}

static void
off_gen(fake_t *fk)
{
    block_t  b;
    resp_t   rs;

    blk_req(&b, "GET", "/oneshot");
    send_head(fk, 0, 5, &b, 1);
    resp_init(&rs);
    rs.gen = 5;
    resp_read(fk, &rs, 0);
    free(rs.body);

    blk_req(&b, "GET", "/oneshot");
    send_head(fk, 0, 5, &b, 1);
}

static void
off_stale(fake_t *fk)
{
    block_t  b;
    resp_t   rs;

    blk_req(&b, "GET", "/oneshot");
    send_head(fk, 0, 5, &b, 1);
    resp_init(&rs);
    rs.gen = 5;
    resp_read(fk, &rs, 0);
    free(rs.body);

    fake_send(fk, NGXSHM_REQ_BODY, 0, 0, 5, "x", 1);
}

static void
off_wrong_gen(fake_t *fk)
{
    block_t  b;

    blk_req(&b, "POST", "/hold");
    send_head(fk, 0, 5, &b, 0);
    fake_send(fk, NGXSHM_REQ_BODY, 0, 0, 4, "x", 1);
}

static void
off_credit(fake_t *fk)
{
    static unsigned char  big[8192 + 16];
    block_t               b;

    blk_req(&b, "POST", "/hold");
    send_head(fk, 0, 1, &b, 0);
    fake_send(fk, NGXSHM_REQ_BODY, 0, 0, 1, big, 4096);
    fake_send(fk, NGXSHM_REQ_BODY, 0, 0, 1, big, 4096);
    fake_send(fk, NGXSHM_REQ_BODY, 0, 0, 1, big, 1);
}

static void
off_credit_up(fake_t *fk)
{
    uint32_t  v = 1;
    block_t   b;

    blk_req(&b, "POST", "/hold");
    send_head(fk, 0, 1, &b, 0);
    fake_send(fk, NGXSHM_CREDIT, 0, 0, 1, &v, 4);
}

static void
off_after_end(fake_t *fk)
{
    block_t  b;

    blk_req(&b, "POST", "/hold");
    send_head(fk, 0, 1, &b, 1);
    fake_send(fk, NGXSHM_REQ_BODY, 0, 0, 1, "x", 1);
}

static void
off_body_early(fake_t *fk)
{
    block_t  b;

    blk_req(&b, "POST", "/hold");
    blk_build(&b);
    fake_send(fk, NGXSHM_REQ_HEAD, NGXSHM_F_CONT, 0, 1, b.b, 8);
    fake_send(fk, NGXSHM_REQ_BODY, 0, 0, 1, "x", 1);
}

static void
off_data(fake_t *fk)
{
    if (send(fk->fd, "x", 1, MSG_NOSIGNAL) != 1) {
        /* the test sees no EOF then */
    }
}


static void
test_violation(const char *name, offence_pt fn)
{
    fake_t       fk;
    fake_opts_t  o;

    fake_defaults(&o);

    if (fake_open(&fk, &o) != 0) {
        ok(0, "violation %s: handshake", name);
        return;
    }

    fn(&fk);
    ok(fake_eof(&fk), "violation closes the channel: %s", name);
    fake_close(&fk);
}


/*
 * Fuzzing: mostly valid traffic on 16 streams (heads, bodies within the
 * credit, cancels, credit for the responses), with a rare mutated head
 * block or random frame.  Channels may die; the process may not.
 */
typedef struct {
    uint32_t  gen;
    uint32_t  credit;               /* request body we may send */
    uint32_t  owed;                 /* response body to credit back */
    int       open;
    int       in_end;               /* we sent END or CANCEL */
    int       out_end;              /* it sent END or RESET */
} fz_slot_t;


static void
fz_read(fake_t *fk, fz_slot_t *sl)
{
    uint32_t        v;
    fz_slot_t      *z;
    ngxshm_frame_t  f;
    unsigned char   buf[65536];

    while (fake_recv(fk, &f, buf, 0) == 1) {
        if (f.type == NGXSHM_GOAWAY || f.stream >= 16) {
            continue;
        }

        z = &sl[f.stream];

        if (!z->open || z->gen != f.gen) {
            continue;
        }

        if (f.type == NGXSHM_CREDIT && f.len == 4) {
            memcpy(&v, buf, 4);
            z->credit += v;
        }

        if (f.type == NGXSHM_RESP_BODY) {
            z->owed += f.len;
        }

        if (f.type == NGXSHM_RESET || (f.flags & NGXSHM_F_END)) {
            z->out_end = 1;
        }

        if (z->owed && !z->out_end) {
            fake_send(fk, NGXSHM_CREDIT, 0, f.stream, z->gen, &z->owed, 4);
            z->owed = 0;
        }

        if (z->out_end && z->in_end) {
            z->open = 0;
        }
    }
}


static void
test_fuzz(void)
{
    int             i, j, k, closed, mutate;
    fake_t          fk;
    resp_t          rs;
    block_t         b;
    uint32_t        len, n;
    fz_slot_t       sl[16], *z;
    fake_opts_t     o;
    unsigned char   junk[1024];
    static const char  *uris[] = { "/oneshot", "/hold", "/echo", "/big",
                                   "/abort", "/fields", "/nothing" };

    srand(4242);
    closed = 0;

    for (i = 0; i < 120; i++) {
        fake_defaults(&o);
        o.max_frame = 1024;
        o.window = 1 + rand() % 8192;

        if (fake_open(&fk, &o) != 0) {
            ok(0, "fuzz: handshake %d", i);
            return;
        }

        memset(sl, 0, sizeof(sl));

        for (j = 0; j < 300; j++) {
            k = rand() % 16;
            z = &sl[k];
            mutate = (rand() % 300 == 0);

            if (!z->open) {
                blk_req(&b, rand() % 5 ? "POST" : "HEAD",
                        uris[rand() % (sizeof(uris) / sizeof(uris[0]))]);
                blk_add(&b, NGXSHM_FIELD_HEADER, "X-A", "b");
                blk_add(&b, NGXSHM_FIELD_PARAM, "P", "v");
                blk_build(&b);

                if (mutate) {
                    for (n = 1 + rand() % 3; n > 0; n--) {
                        b.b[rand() % b.n] ^= (unsigned char) (1 << rand() % 8);
                    }
                }

                z->gen++;
                z->open = 1;
                z->in_end = rand() % 3 == 0;
                z->out_end = 0;
                z->credit = o.window;
                z->owed = 0;
                send_head(&fk, k, z->gen, &b, z->in_end);

            } else if (mutate) {
                fake_send(&fk, rand() % 10, rand() % 4, rand() % 20,
                          z->gen + rand() % 3 - 1, junk, rand() % 64);

            } else if (!z->in_end && rand() % 4) {
                len = rand() % (sizeof(junk) + 1);
                len = len < z->credit ? len : z->credit;
                z->in_end = (rand() % 5 == 0);
                memset(junk, 'a' + k, len);
                fake_send(&fk, NGXSHM_REQ_BODY,
                          z->in_end ? NGXSHM_F_END : 0, k, z->gen, junk, len);
                z->credit -= len;

            } else if (rand() % 6 == 0) {
                fake_send(&fk, NGXSHM_CANCEL, 0, k, z->gen, NULL, 0);
                z->open = 0;
            }

            if (z->open && z->in_end && z->out_end) {
                z->open = 0;
            }

            if (rand() % 4 == 0) {
                usleep(100);
            }

            fz_read(&fk, sl);

            if (fake_dead(&fk)) {
                closed++;
                break;
            }
        }

        fake_close(&fk);
    }

    ok(closed > 0,
       "fuzz: %d of 120 channels closed for violations", closed);

    fake_defaults(&o);
    ok(fake_open(&fk, &o) == 0, "fuzz: server alive");
    blk_req(&b, "GET", "/oneshot");
    send_head(&fk, 0, 1, &b, 1);
    resp_init(&rs);
    ok(resp_read(&fk, &rs, 0) == 0 && rs.body_len == 5,
       "fuzz: server still answers");
    free(rs.body);
    fake_close(&fk);
}


static void
test_max_head(void)
{
    fake_t       fk;
    resp_t       rs;
    block_t      b;
    fake_opts_t  o;
    static char  v[6000];

    fake_defaults(&o);
    o.max_frame = 1024;
    ok(fake_open(&fk, &o) == 0, "handshake for max_head");

    memset(v, 'v', sizeof(v) - 1);
    blk_req(&b, "POST", "/oneshot");
    blk_add(&b, NGXSHM_FIELD_HEADER, "X-Big", v);
    send_head(&fk, 2, 1, &b, 0);
    fake_send(&fk, NGXSHM_REQ_BODY, NGXSHM_F_END, 2, 1, "body", 4);

    resp_init(&rs);
    ok(resp_read(&fk, &rs, 2) == 0 && rs.reset,
       "head over max_head: RESET, channel kept");

    /* multi-frame head within the limit works */
    blk_req(&b, "GET", "/oneshot");
    blk_add(&b, NGXSHM_FIELD_HEADER, "X-Big", v + 3000);
    send_head(&fk, 2, 2, &b, 1);
    resp_init(&rs);
    rs.gen = 2;
    ok(resp_read(&fk, &rs, 2) == 0 && rs.status == 200,
       "head over several CONT frames");
    free(rs.body);

    fake_close(&fk);
}


static void
test_refusals(void)
{
    fake_t       fk;
    fake_opts_t  o;

    fake_defaults(&o);
    o.magic = 0x12345678;
    ok(fake_open(&fk, &o) == EPROTO && fake_eof(&fk),
       "wrong magic refused");
    fake_close(&fk);

    fake_defaults(&o);
    o.no_seals = 1;
    ok(fake_open(&fk, &o) == EPERM && fake_eof(&fk),
       "segment without seals refused");
    fake_close(&fk);

    fake_defaults(&o);
    o.max_frame = o.ring_size / 2;
    ok(fake_open(&fk, &o) == EINVAL, "max_frame over ring_size/4 refused");
    fake_close(&fk);

    fake_defaults(&o);
    o.max_streams = 0;
    ok(fake_open(&fk, &o) == EINVAL, "zero max_streams refused");
    fake_close(&fk);

    fake_defaults(&o);
    o.window = o.ring_size + 1;
    ok(fake_open(&fk, &o) == EINVAL, "window over ring_size refused");
    fake_close(&fk);

    fake_defaults(&o);
    o.nfds = 2;
    ok(fake_open(&fk, &o) == EPROTO, "two descriptors refused");
    fake_close(&fk);

    fake_defaults(&o);
    o.nfds = 4;
    ok(fake_open(&fk, &o) == EPROTO, "four descriptors refused");
    fake_close(&fk);
}


static void
test_listen(void)
{
    ngxshm_config_t   cfg;
    ngxshm_server_t  *s2;
    struct stat       st;

    memset(&cfg, 0, sizeof(cfg));
    cfg.handler = app_handler;
    cfg.allow_uid = -1;
    cfg.allow_gid = -1;

    ok(ngxshm_server_create(&s2, &cfg) == 0, "second server created");
    ok(ngxshm_server_listen(s2, t_path) == -EADDRINUSE,
       "listen on a live socket: -EADDRINUSE");
    ngxshm_server_destroy(s2);

    ok(stat(t_path, &st) == 0 && (st.st_mode & 0777) == 0600,
       "socket mode 0600, still there");
}


static uint64_t
now_ms(void)
{
    struct timespec  ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);

    return (uint64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}


/* a peer that connects and never sends HELLO is closed after hello_ms */
static void
test_silent_peer(void)
{
    int                 fd;
    char                c;
    ssize_t             n;
    uint64_t            t0, el;
    struct pollfd       pfd;
    struct sockaddr_un  sa;

    fd = socket(AF_UNIX, SOCK_STREAM|SOCK_CLOEXEC, 0);

    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", t_path);

    if (fd < 0 || connect(fd, (struct sockaddr *) &sa, sizeof(sa)) != 0) {
        ok(0, "silent peer connects");
        return;
    }

    t0 = now_ms();
    pfd.fd = fd;
    pfd.events = POLLIN;
    n = -1;

    if (poll(&pfd, 1, 5000) == 1) {
        n = recv(fd, &c, 1, 0);
    }

    el = now_ms() - t0;

    ok(n == 0 && el >= 250 && el < 3000,
       "a peer silent for hello_ms (300 ms) is closed");

    close(fd);
}


static void
test_post(void)
{
    fake_t       fk;
    resp_t       rs;
    block_t      b;
    fake_opts_t  o;

    fake_defaults(&o);
    ok(fake_open(&fk, &o) == 0, "handshake for post");

    blk_req(&b, "GET", "/post");
    send_head(&fk, 0, 1, &b, 1);
    resp_init(&rs);
    ok(resp_read(&fk, &rs, 0) == 0 && rs.body_len == 6
       && memcmp(rs.body, "posted", 6) == 0,
       "answer from a function posted by another thread");
    free(rs.body);

    fake_close(&fk);
}


/* event-loop integration: the test polls ngxshm_server_fd() itself */
static int  t_dispatch_rc;

static void *
dispatch_thread(void *arg)
{
    int              rc;
    struct pollfd    pfd;
    ngxshm_server_t *srv;

    srv = arg;
    pfd.fd = ngxshm_server_fd(srv);
    pfd.events = POLLIN;

    for ( ;; ) {
        if (poll(&pfd, 1, 5000) < 0) {
            break;
        }

        rc = ngxshm_server_dispatch(srv, 0);

        if (rc < 0) {
            t_dispatch_rc = rc;
            break;
        }
    }

    return NULL;
}


static void
test_dispatch(void)
{
    char              saved[108];
    fake_t            fk;
    resp_t            rs;
    block_t           b;
    pthread_t         tid;
    fake_opts_t       o;
    ngxshm_config_t   cfg;
    ngxshm_server_t  *srv;

    memset(&cfg, 0, sizeof(cfg));
    cfg.handler = app_handler;
    cfg.allow_uid = -1;
    cfg.allow_gid = -1;
    cfg.drain_ms = 2000;

    memcpy(saved, t_path, sizeof(saved));
    snprintf(t_path, sizeof(t_path), "/tmp/ngxshm-unit-dsp-%d.sock",
             (int) getpid());

    ok(ngxshm_server_create(&srv, &cfg) == 0
       && ngxshm_server_listen(srv, t_path) == 0
       && ngxshm_server_fd(srv) >= 0, "dispatch server listening");

    pthread_create(&tid, NULL, dispatch_thread, srv);

    fake_defaults(&o);
    ok(fake_open(&fk, &o) == 0, "dispatch: handshake");

    blk_req(&b, "GET", "/oneshot");
    send_head(&fk, 0, 1, &b, 1);
    resp_init(&rs);
    ok(resp_read(&fk, &rs, 0) == 0 && rs.body_len == 5,
       "dispatch: one-shot response");
    free(rs.body);

    ngxshm_server_stop(srv);
    ok(fake_goaway(&fk), "dispatch: GOAWAY at stop");

    /* nginx closes an idle channel that went away */
    fake_close(&fk);
    pthread_join(tid, NULL);
    ok(t_dispatch_rc == -ESHUTDOWN, "dispatch returns -ESHUTDOWN");

    ngxshm_server_destroy(srv);
    memcpy(t_path, saved, sizeof(saved));
}


static void
test_goaway(void)
{
    fake_t          fk;
    block_t         b;
    resp_t          rs;
    fake_opts_t     o;

    fake_defaults(&o);
    ok(fake_open(&fk, &o) == 0, "handshake before stop");

    /* one request in flight during the stop */
    blk_req(&b, "POST", "/echo");
    send_head(&fk, 1, 1, &b, 0);
    usleep(50000);

    ngxshm_server_stop(t_srv);

    ok(fake_goaway(&fk), "GOAWAY after stop");

    fake_send(&fk, NGXSHM_REQ_BODY, NGXSHM_F_END, 1, 1, "bye", 3);
    resp_init(&rs);
    ok(resp_read(&fk, &rs, 1) == 0 && rs.body_len == 3,
       "in-flight request finished during the drain");
    free(rs.body);

    /* a stream nginx opened before it read GOAWAY is still served */
    blk_req(&b, "GET", "/oneshot");
    send_head(&fk, 2, 1, &b, 1);
    resp_init(&rs);
    ok(resp_read(&fk, &rs, 2) == 0 && rs.body_len == 5,
       "stream opened before nginx saw GOAWAY served");
    free(rs.body);

    /* nginx then closes the channel, and the server finishes */
    fake_close(&fk);
}


int
main(void)
{
    pthread_t        tid;
    struct stat      st;
    ngxshm_config_t  cfg;

    setvbuf(stdout, NULL, _IOLBF, 0);

    snprintf(t_path, sizeof(t_path), "/tmp/ngxshm-unit-lib-%d.sock",
             (int) getpid());

    memset(&cfg, 0, sizeof(cfg));
    cfg.handler = app_handler;
    cfg.allow_uid = -1;
    cfg.allow_gid = -1;
    cfg.max_head = 4096;
    cfg.drain_ms = 3000;
    cfg.hello_ms = 300;
    cfg.threads = 2;

    printf("1..92\n");

    ok(ngxshm_server_create(&t_srv, &cfg) == 0, "server created");
    ok(ngxshm_server_listen(t_srv, t_path) == 0, "listening");

    if (pthread_create(&tid, NULL, server_thread, NULL) != 0) {
        return 1;
    }

    test_listen();
    test_silent_peer();
    test_oneshot();
    test_stream(0, 65536, 4096, 8192, 100000);
    test_stream(0, 4096, 1024, 1, 5000);
    test_stream(0xfffff000u, 4096, 1024, 4096, 300000);
    test_stream(0, 65536, 16384, 65536, 0);

    /* the same echoes, written from the body in place */
    t_echo_uri = "/peek";
    echo_peek_bad = 0;
    test_stream(0, 65536, 4096, 8192, 100000);
    test_stream(0, 4096, 1024, 1, 5000);
    test_stream(0xfffff000u, 4096, 1024, 4096, 300000);
    test_stream(0, 65536, 16384, 65536, 0);
    ok(echo_peek_bad == 0, "peek and consume: %u unexpected results",
       echo_peek_bad);
    t_echo_uri = "/echo";
    test_cancel();
    test_post();
    test_dispatch();
    test_max_head();
    test_refusals();

    test_violation("frame for a stream not open", off_no_stream);
    test_violation("stream out of range", off_range);
    test_violation("frame type from the wrong side", off_type);
    test_violation("nonzero reserved", off_reserved);
    test_violation("unaligned tail", off_tail);
    test_violation("tail behind head", off_tail_far);
    test_violation("field offset out of range", off_offset);
    test_violation("missing NUL", off_nul);
    test_violation("nfields overflow", off_nfields);
    test_violation("block size mismatch", off_size);
    test_violation("head block too short", off_short);
    test_violation("generation did not grow", off_gen);
    test_violation("frame for a finished stream", off_stale);
    test_violation("frame for a wrong generation", off_wrong_gen);
    test_violation("body beyond the credit", off_credit);
    test_violation("credit above the window", off_credit_up);
    test_violation("body after END", off_after_end);
    test_violation("body before the head ended", off_body_early);
    test_violation("data on the socket", off_data);
    test_fuzz();

    test_goaway();

    pthread_join(tid, NULL);
    ok(1, "server run returned after the drain");
    ok(stat(t_path, &st) != 0, "socket file removed at stop");

    ngxshm_server_destroy(t_srv);

    return t_failed ? 1 : 0;
}
