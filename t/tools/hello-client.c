/*
 * Copyright (C) ngxshm authors
 *
 * hello-client: the nginx side of the handshake, for t/creds.t.  It
 * connects to a sidecar's socket, builds a segment the way nginx does
 * (sealed memfd, header), makes the wake-up pipe and eventfd, sends
 * HELLO with the three descriptors and waits at most 5 s for the answer.
 * Run it as another user to see whether the sidecar lets that user
 * attach "as nginx".
 *
 *   hello-client SOCKET_PATH
 *
 * It prints one line and exits with:
 *   0  "ack status 0 pid P"           accepted
 *   1  "ack status N pid P"           refused with errno N
 *   2  "closed" or "reset"            closed without an answer
 *   3  "connect: ERROR"               could not connect
 *   4  "error: WHAT: ERROR"           anything else (our own failure)
 *
 * Build:   make    (build/t/tools/hello-client)
 */

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>

#include "ngxshm_abi.h"


#define HELLO_RING       65536u
#define HELLO_WAIT_MS    5000


static int
fail(const char *what)
{
    printf("error: %s: %s\n", what, strerror(errno));

    return 4;
}


int
main(int argc, char **argv)
{
    int                  fd, memfd, wake[2], efd, fds[3];
    ssize_t              n;
    size_t               seg_size;
    struct iovec         iov;
    struct msghdr        msg;
    struct pollfd        pfd;
    struct cmsghdr      *cmsg;
    ngxshm_msg_t         hello, ack;
    ngxshm_seg_hdr_t    *hdr;
    struct sockaddr_un   sa;
    unsigned char       *seg;

    union {
        struct cmsghdr   cm;
        char             space[CMSG_SPACE(sizeof(fds))];
    } cmsgbuf;

    setvbuf(stdout, NULL, _IONBF, 0);

    if (argc != 2 || strlen(argv[1]) >= sizeof(sa.sun_path)) {
        fprintf(stderr, "usage: hello-client SOCKET_PATH\n");
        return 4;
    }

    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, argv[1], strlen(argv[1]));

    fd = socket(AF_UNIX, SOCK_STREAM|SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return fail("socket()");
    }

    if (connect(fd, (struct sockaddr *) &sa, sizeof(sa)) != 0) {
        printf("connect: %s\n", strerror(errno));
        return 3;
    }

    /* the segment, as nginx builds it */

    seg_size = NGXSHM_HDR_SIZE + 2 * (size_t) HELLO_RING;

    memfd = memfd_create("hello-client", MFD_CLOEXEC|MFD_ALLOW_SEALING);
    if (memfd < 0) {
        return fail("memfd_create()");
    }

    if (ftruncate(memfd, seg_size) != 0) {
        return fail("ftruncate()");
    }

    seg = mmap(NULL, seg_size, PROT_READ|PROT_WRITE, MAP_SHARED, memfd, 0);
    if (seg == MAP_FAILED) {
        return fail("mmap()");
    }

    if (fcntl(memfd, F_ADD_SEALS, F_SEAL_SHRINK|F_SEAL_GROW|F_SEAL_SEAL)
        != 0)
    {
        return fail("fcntl(F_ADD_SEALS)");
    }

    hdr = (ngxshm_seg_hdr_t *) seg;
    hdr->magic = NGXSHM_MAGIC;
    hdr->version = NGXSHM_VERSION;
    hdr->hdr_size = NGXSHM_HDR_SIZE;
    hdr->seg_size = seg_size;
    hdr->ring_size = HELLO_RING;
    hdr->max_frame = HELLO_RING / 8;
    hdr->max_streams = 64;
    hdr->window = HELLO_RING / 4;
    hdr->nginx_pid = (uint32_t) getpid();

    /* protocol 2: the sidecar is woken through a pipe, nginx by eventfd */

    if (pipe2(wake, O_CLOEXEC|O_NONBLOCK) != 0) {
        return fail("pipe2()");
    }

    efd = eventfd(0, EFD_CLOEXEC|EFD_NONBLOCK);
    if (efd < 0) {
        return fail("eventfd()");
    }

    memset(&hello, 0, sizeof(hello));
    hello.magic = NGXSHM_MAGIC;
    hello.version = NGXSHM_VERSION;
    hello.type = NGXSHM_MSG_HELLO;
    hello.size = sizeof(hello);
    hello.pid = (uint32_t) getpid();
    hello.seg_size = seg_size;

    fds[0] = memfd;
    fds[1] = wake[0];
    fds[2] = efd;

    iov.iov_base = &hello;
    iov.iov_len = sizeof(hello);

    memset(&msg, 0, sizeof(msg));
    memset(&cmsgbuf, 0, sizeof(cmsgbuf));
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = &cmsgbuf;
    msg.msg_controllen = sizeof(cmsgbuf);

    cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(fds));
    memcpy(CMSG_DATA(cmsg), fds, sizeof(fds));

    /* a refusing sidecar may have closed already: read its answer anyway */

    n = sendmsg(fd, &msg, MSG_NOSIGNAL);

    if (n < 0 && errno != EPIPE && errno != ECONNRESET) {
        return fail("sendmsg()");
    }

    pfd.fd = fd;
    pfd.events = POLLIN;

    if (poll(&pfd, 1, HELLO_WAIT_MS) != 1) {
        printf("error: no answer within %d ms\n", HELLO_WAIT_MS);
        return 4;
    }

    n = recv(fd, &ack, sizeof(ack), MSG_DONTWAIT);

    if (n == 0) {
        printf("closed\n");
        return 2;
    }

    if (n < 0) {
        if (errno == ECONNRESET) {
            printf("reset\n");
            return 2;
        }

        return fail("recv()");
    }

    if (n != (ssize_t) sizeof(ack) || ack.magic != NGXSHM_MAGIC
        || ack.type != NGXSHM_MSG_HELLO_ACK || ack.size != sizeof(ack))
    {
        printf("error: not a HELLO_ACK (%zd bytes)\n", n);
        return 4;
    }

    printf("ack status %d pid %u\n", (int) ack.status, (unsigned) ack.pid);

    return ack.status == 0 ? 0 : 1;
}
