/*
 * Copyright (C) ngxshm authors
 *
 * hostile-sidecar: a sidecar that breaks the protocol on purpose, for
 * t/hostile_more.t.  It speaks the sidecar side of docs/protocol.md by hand,
 * not through libngxshm's server: it accepts channels on a UNIX socket,
 * answers HELLO, and reads ring 0 and writes ring 1 with the helpers of
 * ngxshm_ring.h, following the wakeup rules of section 8.
 *
 * On the first channel it misbehaves as MODE says, mostly on that
 * channel's first request.  After that it behaves: every request is
 * answered "200", body "ok N\n" where N is the channel's number (1, 2,
 * ...), so that a test can tell whether nginx kept the channel or opened
 * a new one.
 *
 * Modes efd-block-read and efd-block-write go after the wake-up fds: the
 * eventfd nginx is woken by is one open file shared with the sidecar,
 * O_NONBLOCK included; the pipe nginx wakes the sidecar through is not.
 *
 * Usage:   hostile-sidecar MODE SOCKET_PATH
 *          hostile-sidecar -l             (lists the modes)
 *
 * It prints one line per event on stdout, for the test to read:
 *
 *   channel N: open
 *   channel N: MODE: what it did
 *   channel N: served STREAM/GEN
 *   channel N: closed by nginx          (EOF on the channel's socket)
 *
 * Exit status: 0 on SIGTERM, 1 if a seal of the segment did not hold
 * (mode ftruncate), 2 on an error of its own.
 *
 * Build:   make    (build/t/tools/hostile-sidecar)
 */

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>

#include "ngxshm_ring.h"


#define EVIL_HEAD_MAX   16384      /* bytes of a head block we build */
#define EVIL_WAIT_MS    5000       /* bounded waits for nginx */
#define EVIL_FLOOD_MS   2000       /* how long mode "flood" floods */
#define EVIL_EFD_MS     2000       /* how long efd-block-read tries */
#define EVIL_BIG_HEAD   8192       /* mode head-too-big; > shm_buffer_size */


typedef struct {
    int                 fd;         /* the channel's socket */
    int                 memfd;
    int                 efd_app;    /* nginx wakes us: a pipe's read end */
    int                 no_wake;    /* never read efd_app, poll the ring */
    int                 efd_nginx;  /* we wake nginx */
    unsigned char      *seg;
    size_t              seg_size;
    ngxshm_seg_hdr_t    hdr;        /* checked copy */
    ngxshm_ring_t       rx;         /* ring 0: we consume */
    ngxshm_ring_t       tx;         /* ring 1: we produce */
    int                 n;          /* the channel's number, from 1 */
} evil_t;


typedef struct {
    uint32_t            stream;
    uint32_t            gen;
    int                 end;        /* the head carried END: no body */
} evil_req_t;


/* what to do with the channel after misbehaving */
typedef enum {
    EVIL_SERVE,                     /* it is sane: answer requests */
    EVIL_WAIT,                      /* touch nothing, wait for EOF */
    EVIL_CLOSE                      /* close it ourselves */
} evil_next_t;


typedef struct {
    const char         *name;
    /* replaces the HELLO_ACK; NULL: a normal one */
    evil_next_t       (*ack)(evil_t *ev);
    /* called with the first request's head read; NULL: none */
    evil_next_t       (*run)(evil_t *ev, const evil_req_t *rq);
} evil_mode_t;


typedef struct {
    const char         *name;
    const char         *value;
    size_t              value_len;  /* 0: strlen(value) */
} evil_field_t;


static const char  *mode_name = "?";


static void
die(const char *fmt, ...)
{
    va_list  ap;

    fprintf(stderr, "hostile-sidecar: %s: ", mode_name);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n");

    exit(2);
}


static void
say(evil_t *ev, const char *fmt, ...)
{
    va_list  ap;

    printf("channel %d: ", ev->n);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
}


static int64_t
now_ms(void)
{
    struct timespec  ts;

    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0) {
        die("clock_gettime(): %s", strerror(errno));
    }

    return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}


/* SIGTERM: the harness stops us; nothing to clean up that exit would */
static void
on_term(int signo)
{
    (void) signo;
    _exit(0);
}


/* the channel's socket */

static int
listen_on(const char *path)
{
    int                 fd;
    struct sockaddr_un  sa;

    if (strlen(path) >= sizeof(sa.sun_path)) {
        die("socket path too long: %s", path);
    }

    fd = socket(AF_UNIX, SOCK_STREAM|SOCK_CLOEXEC, 0);
    if (fd == -1) {
        die("socket(): %s", strerror(errno));
    }

    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, path, strlen(path));

    if (unlink(path) == -1 && errno != ENOENT) {
        die("unlink(%s): %s", path, strerror(errno));
    }

    if (bind(fd, (struct sockaddr *) &sa, sizeof(sa)) == -1) {
        die("bind(%s): %s", path, strerror(errno));
    }

    if (listen(fd, 16) == -1) {
        die("listen(): %s", strerror(errno));
    }

    return fd;
}


/* wait up to "ms" (-1: for ever) for the socket; 1 readable, 0 not */
static int
wait_fd(int fd, int ms)
{
    int            rc;
    struct pollfd  p;

    p.fd = fd;
    p.events = POLLIN;
    p.revents = 0;

    do {
        rc = poll(&p, 1, ms);
    } while (rc == -1 && errno == EINTR);

    if (rc == -1) {
        die("poll(): %s", strerror(errno));
    }

    return rc;
}


/*
 * receive HELLO and its three descriptors, check them, map the segment:
 * 0, or -1 for a connection that was no channel (the harness checks that
 * the socket accepts by connecting and closing at once)
 */
static int
hello(evil_t *ev)
{
    int              fds[3], seals, nfds;
    ssize_t          n;
    struct stat      st;
    struct iovec     iov;
    struct msghdr    mh;
    struct cmsghdr  *cm;
    ngxshm_msg_t     m;
    union {
        struct cmsghdr  align;
        char            buf[CMSG_SPACE(sizeof(fds))];
    } ctl;

    if (wait_fd(ev->fd, EVIL_WAIT_MS) == 0) {
        return -1;
    }

    memset(&m, 0, sizeof(m));
    memset(&mh, 0, sizeof(mh));
    memset(&ctl, 0, sizeof(ctl));

    iov.iov_base = &m;
    iov.iov_len = sizeof(m);
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    mh.msg_control = ctl.buf;
    mh.msg_controllen = sizeof(ctl.buf);

    n = recvmsg(ev->fd, &mh, MSG_CMSG_CLOEXEC);

    if (n <= 0) {
        return -1;
    }

    cm = CMSG_FIRSTHDR(&mh);
    nfds = 0;

    if (cm != NULL && cm->cmsg_level == SOL_SOCKET
        && cm->cmsg_type == SCM_RIGHTS && cm->cmsg_len == CMSG_LEN(sizeof(fds)))
    {
        memcpy(fds, CMSG_DATA(cm), sizeof(fds));
        nfds = 3;
    }

    if (n != (ssize_t) sizeof(m) || nfds != 3 || (mh.msg_flags & MSG_CTRUNC)
        || m.magic != NGXSHM_MAGIC || m.version != NGXSHM_VERSION
        || m.type != NGXSHM_MSG_HELLO || m.size != sizeof(m))
    {
        die("bad HELLO (%zd bytes, %d descriptors)", n, nfds);
    }

    ev->memfd = fds[0];
    ev->efd_app = fds[1];
    ev->efd_nginx = fds[2];

    seals = fcntl(ev->memfd, F_GET_SEALS);
    if (seals == -1) {
        die("F_GET_SEALS: %s", strerror(errno));
    }

    if ((seals & (F_SEAL_SHRINK|F_SEAL_GROW)) != (F_SEAL_SHRINK|F_SEAL_GROW)) {
        die("segment not sealed against resizing: seals %#x", seals);
    }

    if (fstat(ev->memfd, &st) == -1) {
        die("fstat(): %s", strerror(errno));
    }

    if ((uint64_t) st.st_size != m.seg_size) {
        die("segment size %lld, HELLO says %llu", (long long) st.st_size,
            (unsigned long long) m.seg_size);
    }

    ev->seg_size = m.seg_size;
    ev->seg = mmap(NULL, ev->seg_size, PROT_READ|PROT_WRITE, MAP_SHARED,
                   ev->memfd, 0);
    if (ev->seg == MAP_FAILED) {
        die("mmap(): %s", strerror(errno));
    }

    memcpy(&ev->hdr, ev->seg, sizeof(ev->hdr));

    if (ev->hdr.magic != NGXSHM_MAGIC
        || ev->hdr.seg_size != ev->seg_size
        || ngxshm_geometry_valid(ev->hdr.seg_size, ev->hdr.ring_size,
                                 ev->hdr.max_frame) != 0
        || ev->hdr.max_streams < 1 || ev->hdr.max_streams > 65536
        || ev->hdr.window < 1 || ev->hdr.window > ev->hdr.ring_size)
    {
        die("bad segment header");
    }

    ngxshm_ring_init(&ev->rx, ev->seg, NGXSHM_RING_TO_APP,
                     ev->hdr.ring_size, ev->hdr.max_frame);
    ngxshm_ring_init(&ev->tx, ev->seg, NGXSHM_RING_TO_NGINX,
                     ev->hdr.ring_size, ev->hdr.max_frame);

    ev->rx.pos = ngxshm_load_acquire(&ev->rx.ctrl->head);
    ev->tx.pos = ngxshm_load_acquire(&ev->tx.ctrl->tail);
    ev->tx.peer = ev->tx.pos;

    return 0;
}


static void
send_ack(evil_t *ev, uint32_t magic, int32_t status, size_t size)
{
    ngxshm_msg_t  ack;

    memset(&ack, 0, sizeof(ack));
    ack.magic = magic;
    ack.version = NGXSHM_VERSION;
    ack.type = NGXSHM_MSG_HELLO_ACK;
    ack.size = sizeof(ack);
    ack.status = status;
    ack.pid = (uint32_t) getpid();

    if (send(ev->fd, &ack, size, MSG_NOSIGNAL) != (ssize_t) size) {
        die("send(HELLO_ACK): %s", strerror(errno));
    }
}


static void
signal_nginx(evil_t *ev)
{
    uint64_t  one;

    one = 1;

    if (write(ev->efd_nginx, &one, sizeof(one)) != (ssize_t) sizeof(one)) {
        die("write(efd_nginx): %s", strerror(errno));
    }
}


/*
 * wait up to "ms" for a wakeup on efd_app or for the socket: 0, or -1
 * when nginx closed the channel
 */
static int
wait_events(evil_t *ev, int ms)
{
    int            rc;
    char           c;
    ssize_t        n;
    uint64_t       count;
    struct pollfd  p[2];

    p[0].fd = ev->no_wake ? -1 : ev->efd_app;
    p[0].events = POLLIN;
    p[0].revents = 0;
    p[1].fd = ev->fd;
    p[1].events = POLLIN;
    p[1].revents = 0;

    if (ev->no_wake && (ms < 0 || ms > 1)) {
        ms = 1;
    }

    rc = poll(p, 2, ms);

    if (rc == -1) {
        if (errno == EINTR) {
            return 0;
        }

        die("poll(): %s", strerror(errno));
    }

    if (p[0].revents & POLLIN) {
        if (read(ev->efd_app, &count, sizeof(count)) == -1
            && errno != EAGAIN)
        {
            die("read(efd_app): %s", strerror(errno));
        }
    }

    if (p[1].revents) {
        n = recv(ev->fd, &c, 1, MSG_DONTWAIT);

        if (n == 0 || (n == -1 && errno != EAGAIN)) {
            return -1;
        }
    }

    return 0;
}


/* ring 1: what we produce */

/* store tail with release and wake nginx if it sleeps: the steps of
 * ngxshm_ring_commit(), for a batch of frames written with put() */
static void
publish(evil_t *ev)
{
    ngxshm_store_release(&ev->tx.ctrl->tail, ev->tx.pos);
    ngxshm_full_fence();

    if (ngxshm_load_relaxed(&ev->tx.ctrl->sleeping)
        && ngxshm_exchange(&ev->tx.ctrl->sleeping, 0) != 0)
    {
        signal_nginx(ev);
    }
}


/* publish an arbitrary tail (the modes that corrupt ring 1) */
static void
publish_tail(evil_t *ev, uint32_t tail)
{
    ev->tx.pos = tail;
    publish(ev);
}


/*
 * room for a frame of "len" payload bytes, waiting for nginx to free
 * space (what is written but unpublished is published first); NULL if
 * nginx closed the channel or freed nothing within EVIL_WAIT_MS
 */
static ngxshm_frame_t *
reserve(evil_t *ev, uint32_t len)
{
    int              bad;
    int64_t          end;
    ngxshm_frame_t  *f;

    end = now_ms() + EVIL_WAIT_MS;

    for ( ;; ) {
        bad = 0;
        f = ngxshm_ring_reserve(&ev->tx, len, &bad);

        if (bad) {
            die("nginx moved the head of ring 1 out of range");
        }

        if (f != NULL) {
            return f;
        }

        if (ngxshm_load_relaxed(&ev->tx.ctrl->tail) != ev->tx.pos) {
            publish(ev);
        }

        ngxshm_ring_wait_space(&ev->tx);

        f = ngxshm_ring_reserve(&ev->tx, len, &bad);

        if (f != NULL && !bad) {
            return f;
        }

        if (now_ms() >= end || wait_events(ev, 100) == -1) {
            return NULL;
        }
    }
}


/*
 * write a frame whose header says "len" and whose payload is the "plen"
 * bytes of "data" (NULL: whatever the ring holds there; the header may
 * lie); the tail advances over what was written, at the next publish()
 */
static int
raw(evil_t *ev, uint8_t type, uint8_t flags, uint32_t stream, uint32_t gen,
    uint32_t len, const void *data, uint32_t plen)
{
    ngxshm_frame_t  *f;

    f = reserve(ev, plen);
    if (f == NULL) {
        return -1;
    }

    f->len = len;
    f->type = type;
    f->flags = flags;
    f->reserved = 0;
    f->stream = stream;
    f->gen = gen;

    if (data != NULL && plen) {
        memcpy((unsigned char *) f + sizeof(ngxshm_frame_t), data, plen);
    }

    ev->tx.pos += (uint32_t) sizeof(ngxshm_frame_t) + ngxshm_align(plen);

    return 0;
}


static int
put(evil_t *ev, uint8_t type, uint8_t flags, uint32_t stream, uint32_t gen,
    const void *data, uint32_t len)
{
    return raw(ev, type, flags, stream, gen, len, data, len);
}


static int
put_credit(evil_t *ev, uint32_t stream, uint32_t gen, uint32_t n)
{
    return put(ev, NGXSHM_CREDIT, 0, stream, gen, &n, sizeof(n));
}


/* a response head block: its size, written to buf */
static uint32_t
head_block(unsigned char *buf, uint16_t status, const evil_field_t *fields,
    int nfields)
{
    int              i;
    size_t           off, vlen;
    ngxshm_head_t    head;
    ngxshm_field_t   field;

    off = sizeof(head) + nfields * sizeof(field);

    for (i = 0; i < nfields; i++) {
        vlen = fields[i].value_len ? fields[i].value_len
                                   : strlen(fields[i].value);

        if (off + strlen(fields[i].name) + vlen > EVIL_HEAD_MAX) {
            die("head block too large for the buffer");
        }

        memset(&field, 0, sizeof(field));
        field.off = (uint32_t) off;
        field.name_len = (uint16_t) strlen(fields[i].name);
        field.value_len = (uint32_t) vlen;
        field.kind = NGXSHM_FIELD_HEADER;

        memcpy(buf + sizeof(head) + i * sizeof(field), &field, sizeof(field));
        memcpy(buf + off, fields[i].name, field.name_len);
        off += field.name_len;
        memcpy(buf + off, fields[i].value, vlen);
        off += vlen;
    }

    memset(&head, 0, sizeof(head));
    head.size = (uint32_t) off;
    head.nfields = (uint16_t) nfields;
    head.status = status;
    memcpy(buf, &head, sizeof(head));

    return (uint32_t) off;
}


/* a head block in frames of at most max_frame bytes */
static int
put_head(evil_t *ev, uint32_t stream, uint32_t gen, const unsigned char *b,
    uint32_t size, uint8_t end)
{
    uint32_t  n;
    uint8_t   flags;

    do {
        n = size < ev->hdr.max_frame ? size : ev->hdr.max_frame;
        flags = (n < size) ? NGXSHM_F_CONT : end;

        if (put(ev, NGXSHM_RESP_HEAD, flags, stream, gen, b, n) != 0) {
            return -1;
        }

        b += n;
        size -= n;
    } while (size);

    return 0;
}


/* a whole response: head, then the body in one END frame (if any) */
static int
put_response(evil_t *ev, uint32_t stream, uint32_t gen, uint16_t status,
    const evil_field_t *fields, int nfields, const char *body)
{
    uint32_t       size;
    unsigned char  b[EVIL_HEAD_MAX];

    size = head_block(b, status, fields, nfields);

    if (put_head(ev, stream, gen, b, size, body ? 0 : NGXSHM_F_END) != 0) {
        return -1;
    }

    if (body == NULL) {
        return 0;
    }

    return put(ev, NGXSHM_RESP_BODY, NGXSHM_F_END, stream, gen, body,
               (uint32_t) strlen(body));
}


static int
answer(evil_t *ev, uint32_t stream, uint32_t gen)
{
    int                  unread;
    char                 body[32];
    static evil_field_t  ct = { "Content-Type", "text/plain", 0 };

    snprintf(body, sizeof(body), "ok %d\n", ev->n);

    if (put_response(ev, stream, gen, 200, &ct, 1, body) != 0) {
        return -1;
    }

    publish(ev);
    say(ev, "served %u/%u", stream, gen);

    if (ev->no_wake == 1 && ioctl(ev->efd_app, FIONREAD, &unread) == 0
        && unread >= 4096)
    {
        say(ev, "efd-block-write: wake-up pipe full");
        ev->no_wake = 2;
    }

    return 0;
}


/* ring 0: what nginx produces */

/*
 * the next frame of ring 0, waiting up to "ms" (-1: for ever): 1 with *f
 * and *payload set, 0 on timeout, -1 when nginx closed the channel
 */
static int
next_frame(evil_t *ev, ngxshm_frame_t *f, const unsigned char **payload,
    int ms)
{
    int64_t      end;
    const char  *bad;

    end = (ms < 0) ? -1 : now_ms() + ms;

    for ( ;; ) {
        *payload = ngxshm_ring_peek(&ev->rx, f, &bad);

        if (*payload != NULL) {
            return 1;
        }

        if (bad) {
            die("nginx broke ring 0: %s", bad);
        }

        if (ngxshm_ring_consumed(&ev->rx)) {
            signal_nginx(ev);
        }

        if (ngxshm_ring_sleep(&ev->rx)) {
            continue;
        }

        if (end != -1 && now_ms() >= end) {
            return 0;
        }

        if (wait_events(ev, end == -1 ? -1 : (int) (end - now_ms())) == -1) {
            return -1;
        }
    }
}


/* consume ring 0 until the head of a request is complete */
static int
first_request(evil_t *ev, evil_req_t *rq)
{
    int                   rc;
    ngxshm_frame_t        f;
    const unsigned char  *p;

    for ( ;; ) {
        rc = next_frame(ev, &f, &p, -1);

        if (rc != 1) {
            return -1;
        }

        ngxshm_ring_consume(&ev->rx, &f);

        if (f.type == NGXSHM_REQ_HEAD && !(f.flags & NGXSHM_F_CONT)) {
            rq->stream = f.stream;
            rq->gen = f.gen;
            rq->end = (f.flags & NGXSHM_F_END) != 0;
            return 0;
        }
    }
}


/* consume ring 0 until "bytes" of the request body came */
static int
read_body(evil_t *ev, const evil_req_t *rq, uint32_t bytes)
{
    uint32_t              got;
    ngxshm_frame_t        f;
    const unsigned char  *p;

    got = 0;

    while (got < bytes) {
        if (next_frame(ev, &f, &p, EVIL_WAIT_MS) != 1) {
            return -1;
        }

        ngxshm_ring_consume(&ev->rx, &f);

        if (f.type == NGXSHM_REQ_BODY && f.stream == rq->stream
            && f.gen == rq->gen)
        {
            got += f.len;
        }
    }

    return 0;
}


/* behave: answer each request when its END came; returns at EOF */
static void
serve(evil_t *ev)
{
    ngxshm_frame_t        f;
    const unsigned char  *p;

    while (next_frame(ev, &f, &p, -1) == 1) {
        ngxshm_ring_consume(&ev->rx, &f);

        if (f.type == NGXSHM_REQ_BODY && !(f.flags & NGXSHM_F_END) && f.len) {
            if (put_credit(ev, f.stream, f.gen, f.len) != 0) {
                return;
            }

            publish(ev);
        }

        if ((f.type == NGXSHM_REQ_HEAD || f.type == NGXSHM_REQ_BODY)
            && (f.flags & NGXSHM_F_END))
        {
            if (answer(ev, f.stream, f.gen) != 0) {
                return;
            }
        }
    }
}


/* the modes: handshake */

static evil_next_t
ack_bad_magic(evil_t *ev)
{
    send_ack(ev, NGXSHM_MAGIC ^ 0xff, 0, sizeof(ngxshm_msg_t));
    say(ev, "bad-magic-ack: HELLO_ACK with magic %#x", NGXSHM_MAGIC ^ 0xff);

    return EVIL_WAIT;
}


static evil_next_t
ack_refuse(evil_t *ev)
{
    send_ack(ev, NGXSHM_MAGIC, EPERM, sizeof(ngxshm_msg_t));
    say(ev, "refuse: HELLO_ACK with status EPERM");

    return EVIL_CLOSE;
}


static evil_next_t
ack_short(evil_t *ev)
{
    send_ack(ev, NGXSHM_MAGIC, 0, sizeof(ngxshm_msg_t) / 2);
    say(ev, "short-ack: 16 bytes of HELLO_ACK");

    return EVIL_WAIT;
}


/* the ACK and junk behind it in one write */
static evil_next_t
ack_junk(evil_t *ev)
{
    ngxshm_msg_t  m[2];

    memset(m, 0, sizeof(m));
    m[0].magic = NGXSHM_MAGIC;
    m[0].version = NGXSHM_VERSION;
    m[0].type = NGXSHM_MSG_HELLO_ACK;
    m[0].size = sizeof(ngxshm_msg_t);
    m[0].pid = (uint32_t) getpid();
    memset(&m[1], 'J', sizeof(ngxshm_msg_t));

    if (send(ev->fd, m, sizeof(m), MSG_NOSIGNAL) != (ssize_t) sizeof(m)) {
        die("send(HELLO_ACK): %s", strerror(errno));
    }

    say(ev, "ack-junk: HELLO_ACK and 32 bytes of junk in one write");

    return EVIL_SERVE;
}


static evil_next_t
ack_never_read(evil_t *ev)
{
    send_ack(ev, NGXSHM_MAGIC, 0, sizeof(ngxshm_msg_t));
    say(ev, "never-read: ring 0 is never read");

    return EVIL_WAIT;
}


static void
try_truncate(evil_t *ev, const char *what, off_t size)
{
    if (ftruncate(ev->memfd, size) == 0) {
        say(ev, "ftruncate: %s to %lld: succeeded", what, (long long) size);
        exit(1);
    }

    say(ev, "ftruncate: %s: %s", what,
        errno == EPERM ? "EPERM" : strerror(errno));
}


/* the seals must stop us from resizing the segment under nginx */
static evil_next_t
ack_ftruncate(evil_t *ev)
{
    try_truncate(ev, "shrink", (off_t) ev->seg_size / 2);
    try_truncate(ev, "grow", (off_t) ev->seg_size * 2);

    if (fcntl(ev->memfd, F_ADD_SEALS, F_SEAL_WRITE) == 0) {
        say(ev, "ftruncate: F_SEAL_WRITE: succeeded");
        exit(1);
    }

    say(ev, "ftruncate: F_SEAL_WRITE: %s",
        errno == EPERM ? "EPERM" : strerror(errno));

    send_ack(ev, NGXSHM_MAGIC, 0, sizeof(ngxshm_msg_t));

    return EVIL_SERVE;
}


/* the modes: the first request's stream */

static evil_next_t
run_ack_twice(evil_t *ev, const evil_req_t *rq)
{
    (void) rq;

    send_ack(ev, NGXSHM_MAGIC, 0, sizeof(ngxshm_msg_t));
    say(ev, "ack-twice: a second HELLO_ACK");

    return EVIL_WAIT;
}


static evil_next_t
run_garbage(evil_t *ev, const evil_req_t *rq)
{
    uint32_t  i, x;

    (void) rq;

    /* xorshift32, fixed seed: the same bytes every run */
    x = 2463534242u;

    for (i = 0; i < ev->tx.size; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        ev->tx.data[i] = (unsigned char) x;
    }

    publish_tail(ev, ev->tx.pos + 4096);
    say(ev, "garbage: 4096 random bytes published");

    return EVIL_WAIT;
}


static evil_next_t
run_tail_unaligned(evil_t *ev, const evil_req_t *rq)
{
    (void) rq;

    publish_tail(ev, ev->tx.pos + 8);
    say(ev, "tail-unaligned: tail moved by 8");

    return EVIL_WAIT;
}


/* wait until nginx consumed all we published */
static void
wait_consumed(evil_t *ev)
{
    int64_t  end;

    end = now_ms() + EVIL_WAIT_MS;

    while (ngxshm_load_acquire(&ev->tx.ctrl->head) != ev->tx.pos) {
        if (now_ms() >= end) {
            die("nginx did not consume ring 1");
        }

        usleep(1000);
    }
}


/*
 * the first part of a head block (CONT), then, once nginx consumed it,
 * the tail moves back behind nginx's head
 */
static evil_next_t
run_tail_backwards(evil_t *ev, const evil_req_t *rq)
{
    evil_field_t   fl = { "X-Evil", "1", 0 };
    unsigned char  b[EVIL_HEAD_MAX];

    (void) head_block(b, 200, &fl, 1);

    if (put(ev, NGXSHM_RESP_HEAD, NGXSHM_F_CONT, rq->stream, rq->gen, b,
            sizeof(ngxshm_head_t))
        != 0)
    {
        return EVIL_WAIT;
    }

    publish(ev);
    wait_consumed(ev);

    publish_tail(ev, ev->tx.pos - 16);
    say(ev, "tail-backwards: tail moved back by 16");

    return EVIL_WAIT;
}


static evil_next_t
run_len_past_ring(evil_t *ev, const evil_req_t *rq)
{
    if (raw(ev, NGXSHM_RESP_BODY, 0, rq->stream, rq->gen, ev->tx.size,
            NULL, 0)
        == 0)
    {
        publish(ev);
    }

    say(ev, "len-past-ring: frame len %u, max_frame %u", ev->tx.size,
        ev->hdr.max_frame);

    return EVIL_WAIT;
}


static evil_next_t
run_len_past_tail(evil_t *ev, const evil_req_t *rq)
{
    unsigned char  b[64];

    memset(b, 0, sizeof(b));

    if (raw(ev, NGXSHM_RESP_HEAD, 0, rq->stream, rq->gen, 256, b, sizeof(b))
        == 0)
    {
        publish(ev);
    }

    say(ev, "len-past-tail: frame len 256, 64 bytes published");

    return EVIL_WAIT;
}


static evil_next_t
run_bad_pad(evil_t *ev, const evil_req_t *rq)
{
    unsigned char  b[16];

    (void) rq;
    memset(b, 0, sizeof(b));

    if (raw(ev, NGXSHM_PAD, 0, 0, 0, sizeof(b), b, sizeof(b)) == 0) {
        publish(ev);
    }

    say(ev, "bad-pad: PAD of 16 bytes in the middle of the ring");

    return EVIL_WAIT;
}


static evil_next_t
run_bad_reserved(evil_t *ev, const evil_req_t *rq)
{
    ngxshm_frame_t  *f;

    f = (ngxshm_frame_t *) (ev->tx.data + (ev->tx.pos & (ev->tx.size - 1)));

    if (raw(ev, NGXSHM_RESET, 0, rq->stream, rq->gen, 0, NULL, 0) == 0) {
        f->reserved = 0x5a5a;
        publish(ev);
    }

    say(ev, "bad-reserved: RESET with reserved 0x5a5a");

    return EVIL_WAIT;
}


/* one frame of the given type for the request's stream, then wait */
static evil_next_t
one_frame(evil_t *ev, uint8_t type, uint8_t flags, uint32_t stream,
    uint32_t gen, uint32_t len, const void *data, uint32_t plen)
{
    if (raw(ev, type, flags, stream, gen, len, data, plen) == 0) {
        publish(ev);
    }

    say(ev, "%s: frame type %u flags %u stream %u/%u len %u", mode_name,
        type, flags, stream, gen, len);

    return EVIL_WAIT;
}


/*
 * a whole head block in a frame that says CONT (more head to come), and,
 * once nginx had the time to look at it, a body frame: the head was not
 * complete, so it must not have been answered to the client
 */
static evil_next_t
run_head_cont_complete(evil_t *ev, const evil_req_t *rq)
{
    uint32_t       size;
    unsigned char  b[EVIL_HEAD_MAX];

    size = head_block(b, 200, NULL, 0);

    if (put(ev, NGXSHM_RESP_HEAD, NGXSHM_F_CONT, rq->stream, rq->gen, b,
            size)
        != 0)
    {
        return EVIL_WAIT;
    }

    publish(ev);
    wait_consumed(ev);
    usleep(100000);

    return one_frame(ev, NGXSHM_RESP_BODY, NGXSHM_F_END, rq->stream,
                     rq->gen, 1, "x", 1);
}


static evil_next_t
run_unknown_type(evil_t *ev, const evil_req_t *rq)
{
    return one_frame(ev, NGXSHM_TYPE_MAX + 1, 0, rq->stream, rq->gen, 0,
                     NULL, 0);
}


static evil_next_t
run_wrong_direction(evil_t *ev, const evil_req_t *rq)
{
    return one_frame(ev, NGXSHM_CANCEL, 0, rq->stream, rq->gen, 0, NULL, 0);
}


static evil_next_t
run_bad_goaway(evil_t *ev, const evil_req_t *rq)
{
    return one_frame(ev, NGXSHM_GOAWAY, 0, rq->stream + 1, 1, 0, NULL, 0);
}


static evil_next_t
run_bad_slot(evil_t *ev, const evil_req_t *rq)
{
    return one_frame(ev, NGXSHM_RESET, 0, ev->hdr.max_streams, rq->gen, 0,
                     NULL, 0);
}


static evil_next_t
run_never_issued(evil_t *ev, const evil_req_t *rq)
{
    (void) rq;

    return one_frame(ev, NGXSHM_RESET, 0, 5, 99, 0, NULL, 0);
}


static evil_next_t
run_wrong_gen_future(evil_t *ev, const evil_req_t *rq)
{
    return one_frame(ev, NGXSHM_RESET, 0, rq->stream, rq->gen + 1, 0,
                     NULL, 0);
}


static evil_next_t
run_body_before_head(evil_t *ev, const evil_req_t *rq)
{
    return one_frame(ev, NGXSHM_RESP_BODY, NGXSHM_F_END, rq->stream, rq->gen,
                     1, "x", 1);
}


static evil_next_t
run_short_head_frame(evil_t *ev, const evil_req_t *rq)
{
    unsigned char  b[8];

    memset(b, 0, sizeof(b));

    return one_frame(ev, NGXSHM_RESP_HEAD, NGXSHM_F_END, rq->stream, rq->gen,
                     sizeof(b), b, sizeof(b));
}


static evil_next_t
run_bad_head_size(evil_t *ev, const evil_req_t *rq)
{
    ngxshm_head_t  h;

    memset(&h, 0, sizeof(h));
    h.size = 8;
    h.status = 200;

    return one_frame(ev, NGXSHM_RESP_HEAD, NGXSHM_F_END, rq->stream, rq->gen,
                     sizeof(h), &h, sizeof(h));
}


/* a head frame longer (or shorter) than its block says */
static evil_next_t
head_mismatch(evil_t *ev, const evil_req_t *rq, uint32_t size, uint32_t len)
{
    ngxshm_head_t  *h;
    unsigned char   b[64];

    memset(b, 0, sizeof(b));
    h = (ngxshm_head_t *) b;
    h->size = size;
    h->status = 200;

    return one_frame(ev, NGXSHM_RESP_HEAD, NGXSHM_F_END, rq->stream, rq->gen,
                     len, b, len);
}


static evil_next_t
run_head_overrun(evil_t *ev, const evil_req_t *rq)
{
    return head_mismatch(ev, rq, 32, 48);
}


static evil_next_t
run_head_underrun(evil_t *ev, const evil_req_t *rq)
{
    return head_mismatch(ev, rq, 64, 32);
}


static evil_next_t
run_bad_head_flags(evil_t *ev, const evil_req_t *rq)
{
    uint32_t       size;
    unsigned char  b[EVIL_HEAD_MAX];

    size = head_block(b, 200, NULL, 0);

    return one_frame(ev, NGXSHM_RESP_HEAD, NGXSHM_F_END|NGXSHM_F_CONT,
                     rq->stream, rq->gen, size, b, size);
}


/* a valid head (no END), then "frames" in the same batch */
static int
head_then(evil_t *ev, const evil_req_t *rq, uint8_t end)
{
    uint32_t       size;
    unsigned char  b[EVIL_HEAD_MAX];

    size = head_block(b, 200, NULL, 0);

    return put_head(ev, rq->stream, rq->gen, b, size, end);
}


static evil_next_t
run_bad_body_flags(evil_t *ev, const evil_req_t *rq)
{
    if (head_then(ev, rq, 0) != 0) {
        return EVIL_WAIT;
    }

    return one_frame(ev, NGXSHM_RESP_BODY, NGXSHM_F_CONT, rq->stream,
                     rq->gen, 1, "x", 1);
}


/* window bytes of body in max_frame pieces, then one byte more */
static evil_next_t
run_body_over_credit(evil_t *ev, const evil_req_t *rq)
{
    uint32_t        n, sent;
    static uint8_t  zero[NGXSHM_RING_MAX / 4 < 65536 ? 1 : 65536];

    if (head_then(ev, rq, 0) != 0) {
        return EVIL_WAIT;
    }

    for (sent = 0; sent <= ev->hdr.window; sent += n) {
        n = ev->hdr.window - sent;
        n = n > ev->hdr.max_frame ? ev->hdr.max_frame : n;
        n = n > sizeof(zero) ? (uint32_t) sizeof(zero) : n;
        n = n ? n : 1;

        if (put(ev, NGXSHM_RESP_BODY, 0, rq->stream, rq->gen, zero, n) != 0) {
            return EVIL_WAIT;
        }
    }

    publish(ev);
    say(ev, "body-over-credit: %u body bytes, window %u", sent,
        ev->hdr.window);

    return EVIL_WAIT;
}


/* a window of body in 1-byte frames: legal, and nginx's memory for the
 * stream must stay about the bytes, not a chunk per frame */
static evil_next_t
run_tiny_frames(evil_t *ev, const evil_req_t *rq)
{
    uint32_t  sent;

    if (head_then(ev, rq, 0) != 0) {
        return EVIL_WAIT;
    }

    for (sent = 0; sent < ev->hdr.window; sent++) {
        if (put(ev, NGXSHM_RESP_BODY, 0, rq->stream, rq->gen, "x", 1) != 0) {
            return EVIL_WAIT;
        }
    }

    if (put(ev, NGXSHM_RESP_BODY, NGXSHM_F_END, rq->stream, rq->gen, NULL, 0)
        != 0)
    {
        return EVIL_WAIT;
    }

    publish(ev);
    say(ev, "tiny-frames: done, %u frames of 1 byte", sent);

    return EVIL_SERVE;
}


static evil_next_t
run_credit(evil_t *ev, const evil_req_t *rq, uint32_t n)
{
    if (put_credit(ev, rq->stream, rq->gen, n) == 0) {
        publish(ev);
    }

    say(ev, "%s: CREDIT %u", mode_name, n);

    return EVIL_WAIT;
}


static evil_next_t
run_credit_overflow(evil_t *ev, const evil_req_t *rq)
{
    return run_credit(ev, rq, 0xffffffff);
}


static evil_next_t
run_credit_zero(evil_t *ev, const evil_req_t *rq)
{
    return run_credit(ev, rq, 0);
}


static evil_next_t
run_bad_credit_len(evil_t *ev, const evil_req_t *rq)
{
    uint32_t  n[2] = { 1, 1 };

    return one_frame(ev, NGXSHM_CREDIT, 0, rq->stream, rq->gen, sizeof(n),
                     n, sizeof(n));
}


static evil_next_t
run_bad_reset_len(evil_t *ev, const evil_req_t *rq)
{
    unsigned char  b[16];

    memset(b, 0, sizeof(b));

    return one_frame(ev, NGXSHM_RESET, 0, rq->stream, rq->gen, sizeof(b), b,
                     sizeof(b));
}


static evil_next_t
run_head_after_head(evil_t *ev, const evil_req_t *rq)
{
    if (head_then(ev, rq, 0) != 0 || head_then(ev, rq, NGXSHM_F_END) != 0) {
        return EVIL_WAIT;
    }

    publish(ev);
    say(ev, "head-after-head: two heads");

    return EVIL_WAIT;
}


/*
 * the "after-end" modes need a request whose body is still on its way
 * (larger than the window): nginx holds the stream until it has sent its
 * END, so the frames after our END reach a live stream
 */
static void
need_body(evil_t *ev, const evil_req_t *rq)
{
    if (rq->end) {
        say(ev, "%s: warning: the request has no body", mode_name);
    }
}


static evil_next_t
run_head_after_end(evil_t *ev, const evil_req_t *rq)
{
    need_body(ev, rq);

    if (head_then(ev, rq, NGXSHM_F_END) != 0
        || head_then(ev, rq, NGXSHM_F_END) != 0)
    {
        return EVIL_WAIT;
    }

    publish(ev);
    say(ev, "head-after-end: a head after END");

    return EVIL_WAIT;
}


static evil_next_t
run_body_after_end(evil_t *ev, const evil_req_t *rq)
{
    need_body(ev, rq);

    if (head_then(ev, rq, 0) != 0
        || put(ev, NGXSHM_RESP_BODY, NGXSHM_F_END, rq->stream, rq->gen,
               "x", 1) != 0)
    {
        return EVIL_WAIT;
    }

    return one_frame(ev, NGXSHM_RESP_BODY, 0, rq->stream, rq->gen, 1, "y", 1);
}


static evil_next_t
run_reset_after_end(evil_t *ev, const evil_req_t *rq)
{
    need_body(ev, rq);

    if (head_then(ev, rq, NGXSHM_F_END) != 0) {
        return EVIL_WAIT;
    }

    return one_frame(ev, NGXSHM_RESET, 0, rq->stream, rq->gen, 0, NULL, 0);
}


/* nginx waits for credit; the head of ring 0 jumps, then credit comes */
static evil_next_t
run_head_index_garbage(evil_t *ev, const evil_req_t *rq)
{
    uint32_t  head;

    need_body(ev, rq);

    if (read_body(ev, rq, ev->hdr.window) != 0) {
        say(ev, "head-index-garbage: nginx sent less than the window");
        return EVIL_WAIT;
    }

    head = ngxshm_load_acquire(&ev->rx.ctrl->tail) + 2 * ev->rx.size;
    ngxshm_store_release(&ev->rx.ctrl->head, head);

    if (put_credit(ev, rq->stream, rq->gen, 4096) == 0) {
        publish(ev);
    }

    say(ev, "head-index-garbage: ring 0 head set to %u, CREDIT 4096", head);

    return EVIL_WAIT;
}


/* the modes that keep the channel sane: nginx should keep it */

static evil_next_t
run_reset(evil_t *ev, const evil_req_t *rq)
{
    if (put(ev, NGXSHM_RESET, 0, rq->stream, rq->gen, NULL, 0) == 0) {
        publish(ev);
    }

    say(ev, "reset: RESET");

    return EVIL_SERVE;
}


/* a complete answer, then late frames for the finished stream */
static evil_next_t
run_finished_stream(evil_t *ev, const evil_req_t *rq)
{
    static evil_field_t  ct = { "Content-Type", "text/plain", 0 };

    if (put_response(ev, rq->stream, rq->gen, 200, &ct, 1, "finished\n")
        != 0
        || put(ev, NGXSHM_RESP_BODY, NGXSHM_F_END, rq->stream, rq->gen,
               "late", 4) != 0
        || put_credit(ev, rq->stream, rq->gen, 1) != 0
        || put(ev, NGXSHM_RESET, 0, rq->stream, rq->gen, NULL, 0) != 0)
    {
        return EVIL_WAIT;
    }

    publish(ev);
    say(ev, "finished-stream: answer, then RESP_BODY, CREDIT, RESET");

    return EVIL_SERVE;
}


/* a head block that passes the frame checks; nginx parses it later */
static evil_next_t
bad_head(evil_t *ev, const evil_req_t *rq, unsigned char *b, uint32_t size,
    const char *what)
{
    if (put_head(ev, rq->stream, rq->gen, b, size, NGXSHM_F_END) == 0) {
        publish(ev);
    }

    say(ev, "%s: %s", mode_name, what);

    return EVIL_SERVE;
}


static evil_next_t
run_huge_nfields(evil_t *ev, const evil_req_t *rq)
{
    ngxshm_head_t  h;
    unsigned char  b[32];

    memset(b, 0, sizeof(b));
    memset(&h, 0, sizeof(h));
    h.size = sizeof(b);
    h.nfields = 65535;
    h.status = 200;
    memcpy(b, &h, sizeof(h));

    return bad_head(ev, rq, b, sizeof(b), "nfields 65535 in 32 bytes");
}


static evil_next_t
head_with(evil_t *ev, const evil_req_t *rq, uint16_t status,
    const char *name, const char *value, size_t value_len)
{
    uint32_t       size;
    evil_field_t   fl;
    unsigned char  b[EVIL_HEAD_MAX];

    fl.name = name;
    fl.value = value;
    fl.value_len = value_len;

    size = head_block(b, status, &fl, 1);

    return bad_head(ev, rq, b, size, "one odd field or status");
}


static evil_next_t
run_cr_in_name(evil_t *ev, const evil_req_t *rq)
{
    return head_with(ev, rq, 200, "X-Evil\rName", "1", 0);
}


/* were the name logged as it is, this would forge an [alert] line */
static evil_next_t
run_lf_in_name(evil_t *ev, const evil_req_t *rq)
{
    return head_with(ev, rq, 200,
                     "X-Evil\n2000/01/01 00:00:00 [alert] 1#1: forged", "1",
                     0);
}


static evil_next_t
run_lf_in_value(evil_t *ev, const evil_req_t *rq)
{
    return head_with(ev, rq, 200, "X-Evil", "a\r\nSet-Cookie: evil=1", 0);
}


static evil_next_t
run_nul_in_value(evil_t *ev, const evil_req_t *rq)
{
    return head_with(ev, rq, 200, "X-Evil", "a\0b", 3);
}


static evil_next_t
run_status_99(evil_t *ev, const evil_req_t *rq)
{
    return head_with(ev, rq, 99, "X-Evil", "1", 0);
}


static evil_next_t
run_status_1000(evil_t *ev, const evil_req_t *rq)
{
    return head_with(ev, rq, 1000, "X-Evil", "1", 0);
}


/* a field whose value runs past the end of the block */
static evil_next_t
run_bad_field(evil_t *ev, const evil_req_t *rq)
{
    uint32_t         size;
    ngxshm_field_t   fl;
    evil_field_t     f = { "X-Evil", "1", 0 };
    unsigned char    b[EVIL_HEAD_MAX];

    size = head_block(b, 200, &f, 1);

    memcpy(&fl, b + sizeof(ngxshm_head_t), sizeof(fl));
    fl.value_len = 1000;
    memcpy(b + sizeof(ngxshm_head_t), &fl, sizeof(fl));

    return bad_head(ev, rq, b, size, "field value past the block");
}


static evil_next_t
run_head_too_big(evil_t *ev, const evil_req_t *rq)
{
    uint32_t       size;
    evil_field_t   fl;
    static char    big[EVIL_BIG_HEAD];
    unsigned char  b[EVIL_HEAD_MAX];

    memset(big, 'b', sizeof(big) - 1);
    fl.name = "X-Big";
    fl.value = big;
    fl.value_len = 0;

    size = head_block(b, 200, &fl, 1);

    return bad_head(ev, rq, b, size, "a head block over shm_buffer_size");
}


/* a response with the given Content-Length and body */
static evil_next_t
cl_response(evil_t *ev, const evil_req_t *rq, const char *cl,
    const char *body)
{
    evil_field_t  fl = { "Content-Length", cl, 0 };

    if (put_response(ev, rq->stream, rq->gen, 200, &fl, 1, body) == 0) {
        publish(ev);
    }

    say(ev, "%s: Content-Length %s, %zu body bytes", mode_name, cl,
        strlen(body));

    return EVIL_SERVE;
}


static evil_next_t
run_cl_short(evil_t *ev, const evil_req_t *rq)
{
    return cl_response(ev, rq, "100", "0123456789");
}


static evil_next_t
run_cl_long(evil_t *ev, const evil_req_t *rq)
{
    return cl_response(ev, rq, "5", "0123456789");
}


/* hop-by-hop headers nginx must drop, with a body that looks chunked */
static evil_next_t
run_hop_headers(evil_t *ev, const evil_req_t *rq)
{
    static evil_field_t  fl[] = {
        { "Connection", "evil", 0 },
        { "Transfer-Encoding", "chunked", 0 },
        { "Keep-Alive", "timeout=1", 0 },
        { "Upgrade", "evil/1", 0 },
        { "X-Ok", "1", 0 },
    };

    if (put_response(ev, rq->stream, rq->gen, 200, fl,
                     sizeof(fl) / sizeof(fl[0]), "5\r\nhello\r\n0\r\n\r\n")
        == 0)
    {
        publish(ev);
    }

    say(ev, "hop-headers: Connection, Transfer-Encoding, Keep-Alive, "
        "Upgrade");

    return EVIL_SERVE;
}


/*
 * answer, then flood ring 1 with late frames for the finished stream
 * (nginx drops them) for EVIL_FLOOD_MS, as fast as nginx frees space:
 * batches of 64 frames published at once, 63 empty and one of max_frame
 * bytes, so that nginx has many frames to drain per wakeup
 */
static evil_next_t
run_flood(evil_t *ev, const evil_req_t *rq)
{
    int64_t    end;
    uint32_t   len;
    uint64_t   n, bytes;

    if (answer(ev, rq->stream, rq->gen) != 0) {
        return EVIL_WAIT;
    }

    end = now_ms() + EVIL_FLOOD_MS;
    n = 0;
    bytes = 0;

    while (now_ms() < end) {
        len = (n % 64 == 63) ? ev->hdr.max_frame : 0;

        if (raw(ev, NGXSHM_RESP_BODY, 0, rq->stream, rq->gen, len, NULL,
                len)
            != 0)
        {
            say(ev, "flood: nginx stopped reading after %llu frames",
                (unsigned long long) n);
            return EVIL_WAIT;
        }

        if (len) {
            publish(ev);
        }

        n++;
        bytes += sizeof(ngxshm_frame_t) + len;
    }

    publish(ev);

    say(ev, "flood: done, %llu frames, %llu MiB", (unsigned long long) n,
        (unsigned long long) (bytes >> 20));

    return EVIL_SERVE;
}


/*
 * nginx wakes us through a pipe: make our end blocking, the pipe as small
 * as it gets, and never read it, while we say we sleep after every
 * request: nginx's write end fills up and must not block
 */
static evil_next_t
run_efd_block_write(evil_t *ev, const evil_req_t *rq)
{
    int  fl;

    if (fcntl(ev->efd_app, F_SETPIPE_SZ, 4096) == -1) {
        die("fcntl(F_SETPIPE_SZ): %s", strerror(errno));
    }

    fl = fcntl(ev->efd_app, F_GETFL);
    if (fl == -1 || fcntl(ev->efd_app, F_SETFL, fl & ~O_NONBLOCK) == -1) {
        die("fcntl(efd_app): %s", strerror(errno));
    }

    ev->no_wake = 1;

    if (answer(ev, rq->stream, rq->gen) != 0) {
        return EVIL_WAIT;
    }

    say(ev, "efd-block-write: wake-up pipe blocking, 4 KiB, never read");

    return EVIL_SERVE;
}


/*
 * efd_nginx is one open file shared with nginx, O_NONBLOCK included: make
 * it blocking, then wake nginx and take the wakeup back a little later
 * (preadv2 RWF_NOWAIT: without blocking ourselves), with a delay that
 * sweeps the time nginx takes from epoll_wait() to its read(); when the
 * counter is taken between the two, nginx's read() finds 0 and blocks.
 * Until nginx is seen blocked in read(), or for EVIL_EFD_MS; then, if
 * nginx is not blocked, serve as usual
 */
static evil_next_t
run_efd_block_read(evil_t *ev, const evil_req_t *rq)
{
    int           fl, i, k;
    char          path[64], buf[128];
    FILE         *f;
    int64_t       end;
    uint64_t      v;
    struct iovec  iov;

    if (answer(ev, rq->stream, rq->gen) != 0) {
        return EVIL_WAIT;
    }

    fl = fcntl(ev->efd_nginx, F_GETFL);
    if (fl == -1 || fcntl(ev->efd_nginx, F_SETFL, fl & ~O_NONBLOCK) == -1) {
        die("fcntl(efd_nginx): %s", strerror(errno));
    }

    snprintf(path, sizeof(path), "/proc/%u/syscall", ev->hdr.nginx_pid);
    iov.iov_base = &v;
    iov.iov_len = sizeof(v);
    end = now_ms() + EVIL_EFD_MS;

    for (i = 0; now_ms() < end; i++) {
        v = 1;

        if (write(ev->efd_nginx, &v, sizeof(v)) != (ssize_t) sizeof(v)) {
            die("write(efd_nginx): %s", strerror(errno));
        }

        for (k = 0; k < (i % 512) * 8; k++) {
            __asm__ __volatile__("" ::: "memory");
        }

        if (preadv2(ev->efd_nginx, &iov, 1, -1, RWF_NOWAIT) == -1
            && errno != EAGAIN)
        {
            die("preadv2(efd_nginx): %s", strerror(errno));
        }

        usleep(50);

        f = fopen(path, "r");
        if (f == NULL) {
            die("fopen(%s): %s", path, strerror(errno));
        }

        if (fgets(buf, sizeof(buf), f) == NULL) {
            buf[0] = '\0';
        }

        if (fclose(f) != 0) {
            die("fclose(%s): %s", path, strerror(errno));
        }

        /* read(2) is system call 0 on x86_64 */
        if (strncmp(buf, "0 ", 2) == 0) {
            say(ev, "efd-block-read: nginx blocked in read() after %d", i);
            return EVIL_WAIT;
        }
    }

    say(ev, "efd-block-read: nginx never blocked in %d tries", i);

    return EVIL_SERVE;
}


static const evil_mode_t  modes[] = {
    { "bad-magic-ack",      ack_bad_magic,     NULL },
    { "refuse",             ack_refuse,        NULL },
    { "short-ack",          ack_short,         NULL },
    { "ack-junk",           ack_junk,          NULL },
    { "ack-twice",          NULL,              run_ack_twice },
    { "never-read",         ack_never_read,    NULL },
    { "ftruncate",          ack_ftruncate,     NULL },

    { "garbage",            NULL,              run_garbage },
    { "tail-unaligned",     NULL,              run_tail_unaligned },
    { "tail-backwards",     NULL,              run_tail_backwards },
    { "len-past-ring",      NULL,              run_len_past_ring },
    { "len-past-tail",      NULL,              run_len_past_tail },
    { "bad-pad",            NULL,              run_bad_pad },
    { "bad-reserved",       NULL,              run_bad_reserved },
    { "unknown-type",       NULL,              run_unknown_type },
    { "wrong-direction",    NULL,              run_wrong_direction },
    { "bad-goaway",         NULL,              run_bad_goaway },
    { "bad-slot",           NULL,              run_bad_slot },
    { "never-issued",       NULL,              run_never_issued },
    { "wrong-gen-future",   NULL,              run_wrong_gen_future },
    { "body-before-head",   NULL,              run_body_before_head },
    { "short-head-frame",   NULL,              run_short_head_frame },
    { "bad-head-size",      NULL,              run_bad_head_size },
    { "head-overrun",       NULL,              run_head_overrun },
    { "head-underrun",      NULL,              run_head_underrun },
    { "bad-head-flags",     NULL,              run_bad_head_flags },
    { "bad-body-flags",     NULL,              run_bad_body_flags },
    { "body-over-credit",   NULL,              run_body_over_credit },
    { "tiny-frames",        NULL,              run_tiny_frames },
    { "credit-overflow",    NULL,              run_credit_overflow },
    { "credit-zero",        NULL,              run_credit_zero },
    { "bad-credit-len",     NULL,              run_bad_credit_len },
    { "bad-reset-len",      NULL,              run_bad_reset_len },
    { "head-after-head",    NULL,              run_head_after_head },
    { "head-cont-complete", NULL,              run_head_cont_complete },
    { "head-after-end",     NULL,              run_head_after_end },
    { "body-after-end",     NULL,              run_body_after_end },
    { "reset-after-end",    NULL,              run_reset_after_end },
    { "head-index-garbage", NULL,              run_head_index_garbage },

    { "reset",              NULL,              run_reset },
    { "finished-stream",    NULL,              run_finished_stream },
    { "huge-nfields",       NULL,              run_huge_nfields },
    { "cr-in-name",         NULL,              run_cr_in_name },
    { "lf-in-name",         NULL,              run_lf_in_name },
    { "lf-in-value",        NULL,              run_lf_in_value },
    { "nul-in-value",       NULL,              run_nul_in_value },
    { "status-99",          NULL,              run_status_99 },
    { "status-1000",        NULL,              run_status_1000 },
    { "bad-field",          NULL,              run_bad_field },
    { "head-too-big",       NULL,              run_head_too_big },
    { "cl-short",           NULL,              run_cl_short },
    { "cl-long",            NULL,              run_cl_long },
    { "hop-headers",        NULL,              run_hop_headers },
    { "flood",              NULL,              run_flood },
    { "efd-block-write",    NULL,              run_efd_block_write },
    { "efd-block-read",     NULL,              run_efd_block_read },
};


/* one accepted connection; 1 if it was a channel, 0 if not */
static int
channel(evil_t *ev, const evil_mode_t *mode, int first)
{
    evil_req_t   rq;
    evil_next_t  next;

    ev->memfd = -1;
    ev->efd_app = -1;
    ev->efd_nginx = -1;
    ev->seg = MAP_FAILED;

    if (hello(ev) != 0) {
        return 0;
    }

    say(ev, "open");

    if (first && mode->ack) {
        next = mode->ack(ev);

    } else {
        send_ack(ev, NGXSHM_MAGIC, 0, sizeof(ngxshm_msg_t));
        next = EVIL_SERVE;
    }

    if (first && mode->run) {
        if (first_request(ev, &rq) != 0) {
            say(ev, "closed by nginx");
            return 1;
        }

        next = mode->run(ev, &rq);
    }

    switch (next) {

    case EVIL_SERVE:
        serve(ev);
        say(ev, "closed by nginx");
        break;

    case EVIL_WAIT:
        while (wait_fd(ev->fd, -1) == 1 && wait_events(ev, 0) == 0) {
            /* void */
        }

        say(ev, "closed by nginx");
        break;

    case EVIL_CLOSE:
        say(ev, "closed by us");
        break;
    }

    return 1;
}


static void
channel_free(evil_t *ev)
{
    if (ev->seg != MAP_FAILED && munmap(ev->seg, ev->seg_size) != 0) {
        die("munmap(): %s", strerror(errno));
    }

    if (ev->memfd != -1 && close(ev->memfd) != 0) {
        die("close(memfd): %s", strerror(errno));
    }

    if (ev->efd_app != -1 && close(ev->efd_app) != 0) {
        die("close(efd_app): %s", strerror(errno));
    }

    if (ev->efd_nginx != -1 && close(ev->efd_nginx) != 0) {
        die("close(efd_nginx): %s", strerror(errno));
    }

    if (close(ev->fd) != 0) {
        die("close(): %s", strerror(errno));
    }
}


int
main(int argc, char **argv)
{
    int                 lfd, n, first;
    size_t              i;
    evil_t              ev;
    struct sigaction    sa;
    const evil_mode_t  *mode;

    if (argc == 2 && strcmp(argv[1], "-l") == 0) {
        for (i = 0; i < sizeof(modes) / sizeof(modes[0]); i++) {
            printf("%s\n", modes[i].name);
        }

        return 0;
    }

    if (argc != 3) {
        fprintf(stderr, "usage: hostile-sidecar MODE SOCKET_PATH\n"
                        "       hostile-sidecar -l\n");
        return 2;
    }

    mode = NULL;

    for (i = 0; i < sizeof(modes) / sizeof(modes[0]); i++) {
        if (strcmp(argv[1], modes[i].name) == 0) {
            mode = &modes[i];
        }
    }

    if (mode == NULL) {
        fprintf(stderr, "hostile-sidecar: unknown mode \"%s\"\n", argv[1]);
        return 2;
    }

    mode_name = mode->name;

    /* stdout is a file the test reads while we run */
    if (setvbuf(stdout, NULL, _IOLBF, 0) != 0) {
        die("setvbuf() failed");
    }

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_term;

    if (sigaction(SIGTERM, &sa, NULL) != 0) {
        die("sigaction(SIGTERM): %s", strerror(errno));
    }

    sa.sa_handler = SIG_IGN;

    if (sigaction(SIGPIPE, &sa, NULL) != 0) {
        die("sigaction(SIGPIPE): %s", strerror(errno));
    }

    lfd = listen_on(argv[2]);
    n = 0;
    first = 1;

    for ( ;; ) {
        memset(&ev, 0, sizeof(ev));

        ev.fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (ev.fd == -1) {
            if (errno == EINTR || errno == ECONNABORTED) {
                continue;
            }

            die("accept4(): %s", strerror(errno));
        }

        ev.n = n + 1;

        if (channel(&ev, mode, first)) {
            n++;
            first = 0;
        }

        channel_free(&ev);
    }
}
