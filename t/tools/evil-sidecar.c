/*
 * Copyright (C) ngxshm authors
 *
 * evil-sidecar: a sidecar that breaks the protocol on purpose, for
 * t/hostile.t.  It speaks the handshake and the rings itself (not
 * through libngxshm's server), waits for the first request on the
 * first channel, then misbehaves as MODE says, and waits until nginx
 * closes the channel (or SIGTERM) to exit with status 0.
 *
 *   evil-sidecar MODE SOCKET_PATH
 *
 * "evil-sidecar list" prints the modes.  Built by "make" into
 * $(B)/t/tools/evil-sidecar.
 */

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include "ngxshm_abi.h"
#include "ngxshm_ring.h"


#define EVIL_WAIT_MS     30000      /* longest wait for nginx, ms */
#define EVIL_HEAD_MAX    4096       /* our response head blocks, bytes */


typedef struct {
    int                  lfd;       /* listening socket */
    int                  fd;        /* the channel's socket */
    int                  memfd;
    int                  efd_app;   /* nginx writes it: ring 0 has frames */
    int                  efd_nginx; /* we write it: ring 1 has frames */
    unsigned char       *seg;
    size_t               seg_size;
    ngxshm_seg_hdr_t     hdr;       /* our copy, checked */
    ngxshm_ring_t        req;       /* ring 0: we consume */
    ngxshm_ring_t        resp;      /* ring 1: we produce */
    pid_t                nginx_pid; /* the worker, from HELLO */
    uint32_t             stream;    /* the first request's slot */
    uint32_t             gen;
} evil_t;


typedef int (*evil_mode_pt)(evil_t *ev);

/*
 * A mode either answers the handshake itself ("hello": returns 1 to exit
 * at once, 0 to stay until nginx closes the channel), or lets the
 * handshake succeed and then misbehaves after the first request's head
 * ("run": returns 0 to stay, 2 to exit with status 0, 1 with status 1).
 */
typedef struct {
    const char          *name;
    evil_mode_pt         hello;
    evil_mode_pt         run;
    const char          *what;
} evil_mode_t;


static void send_ack(evil_t *ev, int status);


static void
fail(const char *fmt, ...)
{
    va_list  ap;

    fprintf(stderr, "evil-sidecar: ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n");

    exit(1);
}


static void
on_term(int signo)
{
    (void) signo;

    /* the harness stops sidecars with SIGTERM and wants status 0 */
    _exit(0);
}


static void
notify_nginx(evil_t *ev)
{
    uint64_t  one;

    one = 1;

    if (write(ev->efd_nginx, &one, sizeof(one)) != (ssize_t) sizeof(one)
        && errno != EAGAIN)
    {
        fail("write(efd_nginx): %s", strerror(errno));
    }
}


/*
 * Write one frame into ring 1.  With "publish" the frame and all frames
 * staged before it become visible to nginx (and nginx is woken if it
 * sleeps); without, the frame is only staged, so that several frames
 * reach nginx in one batch, before it can answer any of them.
 */
static void
put_frame(evil_t *ev, uint8_t type, uint8_t flags, uint32_t stream,
    uint32_t gen, const void *payload, uint32_t len, int publish)
{
    int              bad;
    ngxshm_frame_t  *f;

    bad = 0;
    f = ngxshm_ring_reserve(&ev->resp, len, &bad);

    if (f == NULL) {
        fail("no room in ring 1 for a frame of %u bytes%s", len,
             bad ? " (bad head)" : "");
    }

    f->len = len;
    f->type = type;
    f->flags = flags;
    f->reserved = 0;
    f->stream = stream;
    f->gen = gen;

    if (len) {
        memcpy((unsigned char *) f + sizeof(ngxshm_frame_t), payload, len);
    }

    if (!publish) {
        ev->resp.pos += (uint32_t) sizeof(ngxshm_frame_t)
                        + ngxshm_align(len);
        return;
    }

    if (ngxshm_ring_commit(&ev->resp, len)) {
        notify_nginx(ev);
    }
}


/* a frame for the first request's stream */
static void
put(evil_t *ev, uint8_t type, uint8_t flags, const void *payload,
    uint32_t len, int publish)
{
    put_frame(ev, type, flags, ev->stream, ev->gen, payload, len, publish);
}


/*
 * A response head block in buf: status, then header fields from a
 * NULL-terminated list of name, value strings.  Returns its size.
 */
static uint32_t
head_block(unsigned char *buf, uint16_t status, const char *const *hdrs)
{
    size_t           n, i, nl, vl, off;
    ngxshm_head_t    head;
    ngxshm_field_t   field;

    for (n = 0; hdrs[2 * n] != NULL; n++) {
        /* count */
    }

    off = sizeof(ngxshm_head_t) + n * sizeof(ngxshm_field_t);

    for (i = 0; i < n; i++) {
        nl = strlen(hdrs[2 * i]);
        vl = strlen(hdrs[2 * i + 1]);

        if (off + nl + vl > EVIL_HEAD_MAX) {
            fail("response head too large");
        }

        memset(&field, 0, sizeof(field));
        field.off = (uint32_t) off;
        field.name_len = (uint16_t) nl;
        field.value_len = (uint32_t) vl;
        field.kind = NGXSHM_FIELD_HEADER;

        memcpy(buf + sizeof(ngxshm_head_t) + i * sizeof(field), &field,
               sizeof(field));
        memcpy(buf + off, hdrs[2 * i], nl);
        memcpy(buf + off + nl, hdrs[2 * i + 1], vl);
        off += nl + vl;
    }

    memset(&head, 0, sizeof(head));
    head.size = (uint32_t) off;
    head.nfields = (uint16_t) n;
    head.status = status;
    memcpy(buf, &head, sizeof(head));

    return (uint32_t) off;
}


/* a response head with one header and no body */
static void
put_head(evil_t *ev, uint16_t status, const char *name, const char *value,
    uint8_t flags, int publish)
{
    uint32_t        size;
    const char     *hdrs[3];
    unsigned char   buf[EVIL_HEAD_MAX];

    hdrs[0] = name;
    hdrs[1] = value;
    hdrs[2] = NULL;

    size = head_block(buf, status, name ? hdrs : hdrs + 2);
    put(ev, NGXSHM_RESP_HEAD, flags, buf, size, publish);
}


/* the modes that answer the handshake */

static int
mode_refuse(evil_t *ev)
{
    send_ack(ev, EPERM);
    return 1;
}


/* the acknowledgement and more, in one write: nginx gets one edge */
static int
mode_ack_junk(evil_t *ev)
{
    ngxshm_msg_t  m[2];

    memset(m, 0, sizeof(m));
    m[0].magic = NGXSHM_MAGIC;
    m[0].version = NGXSHM_VERSION;
    m[0].type = NGXSHM_MSG_HELLO_ACK;
    m[0].size = sizeof(ngxshm_msg_t);
    m[0].pid = (uint32_t) getpid();
    m[1] = m[0];

    if (send(ev->fd, m, sizeof(m), MSG_NOSIGNAL) != (ssize_t) sizeof(m)) {
        fail("send(): %s", strerror(errno));
    }

    return 0;
}


/* 1 when the process is stopped, 0 if not (yet), -1 on error */
static int
is_stopped(pid_t pid)
{
    int       fd;
    char      path[64], buf[256], *p;
    ssize_t   n;

    snprintf(path, sizeof(path), "/proc/%d/stat", (int) pid);

    fd = open(path, O_RDONLY|O_CLOEXEC);
    if (fd == -1) {
        return -1;
    }

    n = read(fd, buf, sizeof(buf) - 1);

    if (close(fd) == -1 || n <= 0) {
        return -1;
    }

    buf[n] = '\0';

    /* "pid (comm) S ...": the state follows the last ')' */
    p = strrchr(buf, ')');
    if (p == NULL || p[1] == '\0' || p[2] == '\0') {
        return -1;
    }

    return p[2] == 'T';
}


/*
 * The acknowledgement, then the socket closes right behind it.  The
 * worker is stopped meanwhile, so that it finds both at once, in one
 * edge-triggered event: the EOF must not go unnoticed.
 */
static int
mode_ack_close(evil_t *ev)
{
    int  i, rc;

    if (kill(ev->nginx_pid, SIGSTOP) == -1) {
        fail("kill(%d, SIGSTOP): %s", (int) ev->nginx_pid, strerror(errno));
    }

    for (i = 0; i < 1000; i++) {
        rc = is_stopped(ev->nginx_pid);

        if (rc != 0) {
            break;
        }

        if (usleep(1000) == -1 && errno != EINTR) {
            break;
        }
    }

    send_ack(ev, 0);

    rc = close(ev->fd);
    ev->fd = -1;

    if (kill(ev->nginx_pid, SIGCONT) == -1) {
        fail("kill(%d, SIGCONT): %s", (int) ev->nginx_pid, strerror(errno));
    }

    if (rc == -1) {
        fail("close(): %s", strerror(errno));
    }

    return 1;
}


/* the modes that run after the first request's head arrived */

static int
mode_garbage(evil_t *ev)
{
    uint32_t        i, x, n;
    unsigned char  *p;

    /* nothing was produced yet: the garbage fits before the ring's end */
    p = ev->resp.data + (ev->resp.pos & (ev->resp.size - 1));

    /* xorshift32 with a fixed seed: the same garbage every run */
    x = 2463534242u;
    n = 256;

    for (i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        p[i] = (unsigned char) x;
    }

    /* a nonzero "reserved" whatever the generator gave */
    p[6] |= 1;

    ev->resp.pos += n;

    if (ngxshm_ring_commit(&ev->resp, 0)) {
        notify_nginx(ev);
    }

    return 0;
}


static int
mode_len_past_max(evil_t *ev)
{
    ngxshm_frame_t  f;

    memset(&f, 0, sizeof(f));
    f.len = ev->hdr.max_frame + 16;
    f.type = NGXSHM_RESP_BODY;
    f.stream = ev->stream;
    f.gen = ev->gen;

    /* only the header is published: nginx must not look further */
    memcpy(ev->resp.data + (ev->resp.pos & (ev->resp.size - 1)), &f,
           sizeof(f));

    if (ngxshm_ring_commit(&ev->resp, 0)) {
        notify_nginx(ev);
    }

    return 0;
}


static int
mode_unknown_type(evil_t *ev)
{
    put(ev, NGXSHM_TYPE_MAX + 1, 0, NULL, 0, 1);
    return 0;
}


static int
mode_wrong_direction(evil_t *ev)
{
    put(ev, NGXSHM_REQ_HEAD, NGXSHM_F_END, NULL, 0, 1);
    return 0;
}


static int
mode_slot_out_of_range(evil_t *ev)
{
    put_frame(ev, NGXSHM_RESP_HEAD, 0, ev->hdr.max_streams, 1, NULL, 0, 1);
    return 0;
}


static int
mode_never_issued(evil_t *ev)
{
    put_frame(ev, NGXSHM_RESP_BODY, NGXSHM_F_END, 5, 99, "x", 1, 1);
    return 0;
}


static int
mode_finished_stream(evil_t *ev)
{
    put_head(ev, 200, "Content-Type", "text/plain", 0, 0);
    put(ev, NGXSHM_RESP_BODY, NGXSHM_F_END, "first response", 14, 0);
    put(ev, NGXSHM_RESP_BODY, NGXSHM_F_END, "second", 6, 1);
    return 0;
}


static int
mode_huge_nfields(evil_t *ev)
{
    unsigned char  buf[32];
    ngxshm_head_t  head;

    memset(buf, 0, sizeof(buf));
    memset(&head, 0, sizeof(head));
    head.size = sizeof(buf);
    head.nfields = 65535;
    head.status = 200;
    memcpy(buf, &head, sizeof(head));

    put(ev, NGXSHM_RESP_HEAD, NGXSHM_F_END, buf, sizeof(buf), 1);
    return 0;
}


static int
mode_cr_in_name(evil_t *ev)
{
    put_head(ev, 200, "X-Bad\rName", "value", NGXSHM_F_END, 1);
    return 0;
}


static int
mode_lf_in_value(evil_t *ev)
{
    put_head(ev, 200, "X-Bad", "one\nInjected: two", NGXSHM_F_END, 1);
    return 0;
}


static int
mode_status_99(evil_t *ev)
{
    put_head(ev, 99, NULL, NULL, NGXSHM_F_END, 1);
    return 0;
}


static int
mode_status_1000(evil_t *ev)
{
    put_head(ev, 1000, NULL, NULL, NGXSHM_F_END, 1);
    return 0;
}


static int
mode_cl_short(evil_t *ev)
{
    put_head(ev, 200, "Content-Length", "100", 0, 0);
    put(ev, NGXSHM_RESP_BODY, NGXSHM_F_END, "0123456789", 10, 1);
    return 0;
}


static int
mode_cl_long(evil_t *ev)
{
    put_head(ev, 200, "Content-Length", "5", 0, 0);
    put(ev, NGXSHM_RESP_BODY, NGXSHM_F_END, "0123456789", 10, 1);
    return 0;
}


static int
mode_body_over_credit(evil_t *ev)
{
    uint32_t        left, n;
    unsigned char  *body;

    body = calloc(1, ev->hdr.max_frame);
    if (body == NULL) {
        fail("calloc(%u) failed", ev->hdr.max_frame);
    }

    put_head(ev, 200, NULL, NULL, 0, 0);

    /* the whole window and 16 bytes more, in one batch */
    for (left = ev->hdr.window + 16; left; left -= n) {
        n = left < ev->hdr.max_frame ? left : ev->hdr.max_frame;
        put(ev, NGXSHM_RESP_BODY, 0, body, n, n == left);
    }

    free(body);
    return 0;
}


static int
mode_credit_overflow(evil_t *ev)
{
    uint32_t  credit;

    credit = 0xffffffff;
    put(ev, NGXSHM_CREDIT, 0, &credit, sizeof(credit), 1);
    return 0;
}


static int
mode_never_read(evil_t *ev)
{
    (void) ev;
    return 0;
}


static int
mode_reset(evil_t *ev)
{
    put(ev, NGXSHM_RESET, 0, NULL, 0, 1);
    return 0;
}


static int
mode_body_before_head(evil_t *ev)
{
    put(ev, NGXSHM_RESP_BODY, NGXSHM_F_END, "body", 4, 1);
    return 0;
}


static int
mode_head_after_head(evil_t *ev)
{
    put_head(ev, 200, NULL, NULL, 0, 0);
    put_head(ev, 200, NULL, NULL, NGXSHM_F_END, 1);
    return 0;
}


static int
mode_head_short(evil_t *ev)
{
    unsigned char  buf[EVIL_HEAD_MAX];
    uint32_t       size;
    const char    *hdrs[] = { "X-A", "b", NULL };

    size = head_block(buf, 200, hdrs);

    /* the block says "size" bytes, the frames bring 16 fewer */
    put(ev, NGXSHM_RESP_HEAD, NGXSHM_F_END, buf, size - 16, 1);
    return 0;
}


static int
mode_bad_pad(evil_t *ev)
{
    put_frame(ev, NGXSHM_PAD, 0, 0, 0, NULL, 0, 1);
    return 0;
}


static int
mode_tail_out_of_range(evil_t *ev)
{
    ngxshm_store_release(&ev->resp.ctrl->tail,
                         ev->resp.pos + ev->resp.size + 16);
    notify_nginx(ev);
    return 0;
}


/* ring 0's head moved past its tail: nginx finds out when it writes the
 * CANCEL at shm_read_timeout */
static int
mode_req_head_range(evil_t *ev)
{
    ngxshm_store_release(&ev->req.ctrl->head, ev->req.pos + 4096);
    return 0;
}


static int
mode_socket_junk(evil_t *ev)
{
    ngxshm_msg_t  m;

    memset(&m, 0, sizeof(m));
    m.magic = 0xdeadbeef;

    if (send(ev->fd, &m, sizeof(m), MSG_NOSIGNAL) != (ssize_t) sizeof(m)) {
        fail("send(): %s", strerror(errno));
    }

    return 0;
}


static int
mode_bad_goaway(evil_t *ev)
{
    put(ev, NGXSHM_GOAWAY, 0, NULL, 0, 1);
    return 0;
}


/* the seals must make both fail; then we go away without answering */
static int
mode_ftruncate(evil_t *ev)
{
    int  shrink, grow;

    shrink = ftruncate(ev->memfd, (off_t) ev->seg_size / 2);
    if (shrink == 0) {
        fprintf(stderr, "evil-sidecar: ftruncate() shrank the segment\n");

    } else {
        fprintf(stderr, "evil-sidecar: shrinking failed: %s\n",
                strerror(errno));
    }

    grow = ftruncate(ev->memfd, (off_t) ev->seg_size * 2);
    if (grow == 0) {
        fprintf(stderr, "evil-sidecar: ftruncate() grew the segment\n");

    } else {
        fprintf(stderr, "evil-sidecar: growing failed: %s\n",
                strerror(errno));
    }

    return (shrink == -1 && grow == -1) ? 2 : 1;
}


static const evil_mode_t  modes[] = {
    { "refuse", mode_refuse, NULL, "HELLO_ACK with status EPERM" },
    { "ack-junk", mode_ack_junk, NULL,
      "HELLO_ACK and a second message in one write" },
    { "ack-close", mode_ack_close, NULL,
      "HELLO_ACK and close while the worker is stopped" },
    { "garbage", NULL, mode_garbage, "random bytes in ring 1" },
    { "len-past-max", NULL, mode_len_past_max, "frame len > max_frame" },
    { "unknown-type", NULL, mode_unknown_type, "frame type 9" },
    { "wrong-direction", NULL, mode_wrong_direction, "a REQ_HEAD frame" },
    { "slot-out-of-range", NULL, mode_slot_out_of_range,
      "a frame for slot max_streams" },
    { "never-issued", NULL, mode_never_issued,
      "a frame for slot 5, gen 99" },
    { "finished-stream", NULL, mode_finished_stream,
      "a complete response, then one more body frame" },
    { "huge-nfields", NULL, mode_huge_nfields,
      "a head block of 32 bytes with 65535 fields" },
    { "cr-in-name", NULL, mode_cr_in_name, "CR in a header name" },
    { "lf-in-value", NULL, mode_lf_in_value, "LF in a header value" },
    { "status-99", NULL, mode_status_99, "status 99" },
    { "status-1000", NULL, mode_status_1000, "status 1000" },
    { "cl-short", NULL, mode_cl_short, "Content-Length 100, 10 bytes" },
    { "cl-long", NULL, mode_cl_long, "Content-Length 5, 10 bytes" },
    { "body-over-credit", NULL, mode_body_over_credit,
      "window + 16 body bytes at once" },
    { "credit-overflow", NULL, mode_credit_overflow, "CREDIT 0xffffffff" },
    { "never-read", NULL, mode_never_read, "no answer at all" },
    { "reset", NULL, mode_reset, "RESET" },
    { "body-before-head", NULL, mode_body_before_head, "RESP_BODY first" },
    { "head-after-head", NULL, mode_head_after_head, "two response heads" },
    { "head-short", NULL, mode_head_short,
      "head frames shorter than the block" },
    { "bad-pad", NULL, mode_bad_pad,
      "a PAD frame not up to the ring's end" },
    { "tail-out-of-range", NULL, mode_tail_out_of_range,
      "ring 1 tail beyond ring_size" },
    { "req-head-range", NULL, mode_req_head_range,
      "ring 0 head beyond its tail, no answer" },
    { "socket-junk", NULL, mode_socket_junk, "a message on the socket" },
    { "bad-goaway", NULL, mode_bad_goaway, "GOAWAY with a stream" },
    { "ftruncate", NULL, mode_ftruncate,
      "ftruncate() the memfd both ways; exit 0 if both fail" },
    { NULL, NULL, NULL, NULL }
};


/* the handshake */

static int
listen_on(const char *path)
{
    int                 fd;
    struct sockaddr_un  sa;

    if (strlen(path) >= sizeof(sa.sun_path)) {
        fail("socket path too long: %s", path);
    }

    if (unlink(path) == -1 && errno != ENOENT) {
        fail("unlink(%s): %s", path, strerror(errno));
    }

    fd = socket(AF_UNIX, SOCK_STREAM|SOCK_CLOEXEC, 0);
    if (fd == -1) {
        fail("socket(): %s", strerror(errno));
    }

    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, path, strlen(path));

    if (bind(fd, (struct sockaddr *) &sa, sizeof(sa)) == -1) {
        fail("bind(%s): %s", path, strerror(errno));
    }

    if (listen(fd, 16) == -1) {
        fail("listen(): %s", strerror(errno));
    }

    return fd;
}


/*
 * Accept connections until one brings a HELLO with three descriptors
 * (connections closed without a word, like the harness' probe, are
 * skipped); anything else is fatal.
 */
static void
accept_hello(evil_t *ev)
{
    int              fds[3];
    ssize_t          n;
    struct iovec     iov;
    struct msghdr    mh;
    struct cmsghdr  *cm;
    ngxshm_msg_t     hello;

    union {
        struct cmsghdr  align;
        char            buf[CMSG_SPACE(sizeof(fds))];
    } ctl;

    for ( ;; ) {
        ev->fd = accept4(ev->lfd, NULL, NULL, SOCK_CLOEXEC);
        if (ev->fd == -1) {
            if (errno == EINTR) {
                continue;
            }

            fail("accept(): %s", strerror(errno));
        }

        memset(&mh, 0, sizeof(mh));
        memset(&ctl, 0, sizeof(ctl));
        iov.iov_base = &hello;
        iov.iov_len = sizeof(hello);
        mh.msg_iov = &iov;
        mh.msg_iovlen = 1;
        mh.msg_control = ctl.buf;
        mh.msg_controllen = sizeof(ctl.buf);

        n = recvmsg(ev->fd, &mh, MSG_CMSG_CLOEXEC);

        if (n == 0) {
            if (close(ev->fd) == -1) {
                fail("close(): %s", strerror(errno));
            }

            continue;
        }

        if (n == -1) {
            fail("recvmsg(): %s", strerror(errno));
        }

        break;
    }

    cm = CMSG_FIRSTHDR(&mh);

    if (cm == NULL || cm->cmsg_level != SOL_SOCKET
        || cm->cmsg_type != SCM_RIGHTS
        || cm->cmsg_len != CMSG_LEN(sizeof(fds))
        || (mh.msg_flags & MSG_CTRUNC))
    {
        fail("HELLO without three descriptors");
    }

    memcpy(fds, CMSG_DATA(cm), sizeof(fds));
    ev->memfd = fds[0];
    ev->efd_app = fds[1];
    ev->efd_nginx = fds[2];

    if (n != (ssize_t) sizeof(hello) || hello.magic != NGXSHM_MAGIC
        || hello.version != NGXSHM_VERSION
        || hello.type != NGXSHM_MSG_HELLO || hello.size != sizeof(hello))
    {
        fail("invalid HELLO (%zd bytes)", n);
    }

    ev->seg_size = (size_t) hello.seg_size;
    ev->nginx_pid = (pid_t) hello.pid;
}


static void
map_segment(evil_t *ev)
{
    int          seals;
    struct stat  st;

    if (fstat(ev->memfd, &st) == -1) {
        fail("fstat(memfd): %s", strerror(errno));
    }

    if ((uint64_t) st.st_size != ev->seg_size) {
        fail("memfd is %lld bytes, HELLO says %zu",
             (long long) st.st_size, ev->seg_size);
    }

    seals = fcntl(ev->memfd, F_GET_SEALS);
    if (seals == -1) {
        fail("fcntl(F_GET_SEALS): %s", strerror(errno));
    }

    if ((seals & (F_SEAL_SHRINK|F_SEAL_GROW))
        != (F_SEAL_SHRINK|F_SEAL_GROW))
    {
        fail("memfd not sealed against resizing (seals 0x%x)", seals);
    }

    ev->seg = mmap(NULL, ev->seg_size, PROT_READ|PROT_WRITE, MAP_SHARED,
                   ev->memfd, 0);
    if (ev->seg == MAP_FAILED) {
        fail("mmap(%zu): %s", ev->seg_size, strerror(errno));
    }

    memcpy(&ev->hdr, ev->seg, sizeof(ngxshm_seg_hdr_t));

    if (ev->hdr.magic != NGXSHM_MAGIC || ev->hdr.version != NGXSHM_VERSION
        || ev->hdr.hdr_size != NGXSHM_HDR_SIZE
        || ev->hdr.seg_size != ev->seg_size
        || ngxshm_geometry_valid(ev->hdr.seg_size, ev->hdr.ring_size,
                                 ev->hdr.max_frame) != 0
        || ev->hdr.max_streams == 0 || ev->hdr.max_streams > 65536
        || ev->hdr.window == 0)
    {
        fail("invalid segment header");
    }

    ngxshm_ring_init(&ev->req, ev->seg, NGXSHM_RING_TO_APP,
                     ev->hdr.ring_size, ev->hdr.max_frame);
    ngxshm_ring_init(&ev->resp, ev->seg, NGXSHM_RING_TO_NGINX,
                     ev->hdr.ring_size, ev->hdr.max_frame);
}


static void
send_ack(evil_t *ev, int status)
{
    ngxshm_msg_t  ack;

    memset(&ack, 0, sizeof(ack));
    ack.magic = NGXSHM_MAGIC;
    ack.version = NGXSHM_VERSION;
    ack.type = NGXSHM_MSG_HELLO_ACK;
    ack.size = sizeof(ack);
    ack.status = status;
    ack.pid = (uint32_t) getpid();

    if (send(ev->fd, &ack, sizeof(ack), MSG_NOSIGNAL)
        != (ssize_t) sizeof(ack))
    {
        fail("send(HELLO_ACK): %s", strerror(errno));
    }
}


/*
 * Consume ring 0 until the first request's head block is complete
 * (docs/protocol.md, section 8: drain, announce sleep, block only if
 * nothing arrived meanwhile).  EOF on the socket or a silent nginx
 * is fatal.
 */
static void
wait_request(evil_t *ev)
{
    int                   done, rc;
    uint64_t              count;
    const char           *bad;
    struct pollfd         pfd[2];
    ngxshm_frame_t        f;
    const unsigned char  *payload;

    done = 0;

    for ( ;; ) {
        for ( ;; ) {
            payload = ngxshm_ring_peek(&ev->req, &f, &bad);

            if (payload == NULL) {
                break;
            }

            if (f.type == NGXSHM_REQ_HEAD && !done) {
                ev->stream = f.stream;
                ev->gen = f.gen;

                if (!(f.flags & NGXSHM_F_CONT)) {
                    done = 1;
                }
            }

            ngxshm_ring_consume(&ev->req, &f);
        }

        if (bad) {
            fail("nginx broke ring 0: %s", bad);
        }

        if (ngxshm_ring_consumed(&ev->req)) {
            notify_nginx(ev);
        }

        if (done) {
            return;
        }

        if (ngxshm_ring_sleep(&ev->req)) {
            continue;
        }

        pfd[0].fd = ev->efd_app;
        pfd[0].events = POLLIN;
        pfd[1].fd = ev->fd;
        pfd[1].events = POLLIN;

        rc = poll(pfd, 2, EVIL_WAIT_MS);

        if (rc == -1) {
            if (errno == EINTR) {
                continue;
            }

            fail("poll(): %s", strerror(errno));
        }

        if (rc == 0) {
            fail("no request within %d ms", EVIL_WAIT_MS);
        }

        if (pfd[1].revents) {
            fail("nginx closed the channel before the request");
        }

        if (read(ev->efd_app, &count, sizeof(count)) == -1
            && errno != EAGAIN)
        {
            fail("read(efd_app): %s", strerror(errno));
        }
    }
}


/* after the mischief: stay until nginx closes the channel */
static void
wait_close(evil_t *ev)
{
    int            rc;
    char           buf[64];
    ssize_t        n;
    struct pollfd  pfd;

    for ( ;; ) {
        pfd.fd = ev->fd;
        pfd.events = POLLIN;

        rc = poll(&pfd, 1, EVIL_WAIT_MS);

        if (rc == -1) {
            if (errno == EINTR) {
                continue;
            }

            fail("poll(): %s", strerror(errno));
        }

        if (rc == 0) {
            fprintf(stderr, "evil-sidecar: channel still open after %d ms\n",
                    EVIL_WAIT_MS);
            return;
        }

        n = recv(ev->fd, buf, sizeof(buf), 0);

        if (n <= 0) {
            return;
        }
    }
}


static void
cleanup(evil_t *ev)
{
    if (ev->seg != NULL && ev->seg != MAP_FAILED
        && munmap(ev->seg, ev->seg_size) == -1)
    {
        fail("munmap(): %s", strerror(errno));
    }

    if (close(ev->memfd) == -1 || close(ev->efd_app) == -1
        || close(ev->efd_nginx) == -1
        || (ev->fd != -1 && close(ev->fd) == -1) || close(ev->lfd) == -1)
    {
        fail("close(): %s", strerror(errno));
    }
}


int
main(int argc, char **argv)
{
    int                 rc;
    evil_t              ev;
    struct sigaction    sa;
    const evil_mode_t  *m;

    if (argc == 2 && strcmp(argv[1], "list") == 0) {
        for (m = modes; m->name; m++) {
            printf("%-20s %s\n", m->name, m->what);
        }

        return 0;
    }

    if (argc != 3) {
        fprintf(stderr, "usage: evil-sidecar MODE SOCKET_PATH\n"
                        "       evil-sidecar list\n");
        return 2;
    }

    for (m = modes; m->name; m++) {
        if (strcmp(m->name, argv[1]) == 0) {
            break;
        }
    }

    if (m->name == NULL) {
        fprintf(stderr, "evil-sidecar: unknown mode \"%s\"\n", argv[1]);
        return 2;
    }

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_term;

    if (sigemptyset(&sa.sa_mask) == -1
        || sigaction(SIGTERM, &sa, NULL) == -1)
    {
        fail("sigaction(): %s", strerror(errno));
    }

    memset(&ev, 0, sizeof(ev));
    ev.seg = MAP_FAILED;
    ev.lfd = listen_on(argv[2]);

    accept_hello(&ev);
    map_segment(&ev);

    if (m->hello != NULL) {
        if (m->hello(&ev) == 0) {
            wait_close(&ev);
        }

        cleanup(&ev);
        return 0;
    }

    send_ack(&ev, 0);
    wait_request(&ev);

    fprintf(stderr, "evil-sidecar: %s: stream %u/%u\n", m->name,
            ev.stream, ev.gen);

    rc = m->run(&ev);

    if (rc != 0) {
        /* ftruncate: 2 for success, 1 for failure; no answer, go away */
        cleanup(&ev);
        return rc == 2 ? 0 : 1;
    }

    wait_close(&ev);
    cleanup(&ev);

    return 0;
}
