/*
 * Copyright (C) ngxshm authors
 *
 * The nginx side of a channel for the library's fuzz targets: a real
 * libngxshm server listening on a UNIX socket in this process, run one
 * ngxshm_server_dispatch() round at a time, and the pieces a fake
 * nginx needs to talk to it (socket, sealed memfd segment, eventfds,
 * HELLO).  The library's internals (src/lib/ngxshm_internal.h) are
 * used only to look, e.g. whether a channel is gone.
 */

#ifndef NGXSHM_FUZZ_FAKE_H
#define NGXSHM_FUZZ_FAKE_H

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <unistd.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>

#include "ngxshm_internal.h"
#include "fuzz.h"


#define FZ_MAX_SERVERS  2


typedef struct {
    ngxshm_server_t  *srv;
    char              path[108];
} fz_server_t;


static fz_server_t  fz_servers[FZ_MAX_SERVERS];
static int          fz_nservers;


static inline void
fz_servers_stop(void)
{
    int  i;

    for (i = 0; i < fz_nservers; i++) {
        ngxshm_server_destroy(fz_servers[i].srv);
    }

    fz_nservers = 0;
}


static inline fz_server_t *
fz_server_start(ngxshm_handler_pt handler, size_t max_head)
{
    fz_server_t      *s;
    ngxshm_config_t   cfg;

    fz_check(fz_nservers < FZ_MAX_SERVERS);
    s = &fz_servers[fz_nservers];

    memset(&cfg, 0, sizeof(cfg));
    cfg.handler = handler;
    cfg.max_head = max_head;

    fz_check(ngxshm_server_create(&s->srv, &cfg) == 0);

    snprintf(s->path, sizeof(s->path), "/tmp/ngxshm-fuzz-%d-%d.sock",
             (int) getpid(), fz_nservers);
    fz_check(ngxshm_server_listen(s->srv, s->path) == 0);

    if (fz_nservers++ == 0) {
        atexit(fz_servers_stop);
    }

    return s;
}


/* dispatch rounds until one handles nothing */
static inline void
fz_run(fz_server_t *s)
{
    int  i, n;

    for (i = 0; i < 64; i++) {
        n = ngxshm_server_dispatch(s->srv, 0);
        fz_check(n >= 0);

        if (n == 0) {
            break;
        }
    }
}


/* the server has no channel left, dead or alive: 1, or 0 */
static inline int
fz_server_idle(fz_server_t *s)
{
    ngxshm_loop_t  *loop;

    loop = &s->srv->loops[0];

    return loop->nchans == 0 && ngxshm_link_empty(&loop->dead)
           && ngxshm_link_empty(&loop->chans);
}


/* after our side closed: the library notices and tears the channel down */
static inline int
fz_wait_idle(fz_server_t *s)
{
    int  i;

    for (i = 0; i < 100 && !fz_server_idle(s); i++) {
        (void) ngxshm_server_dispatch(s->srv, i < 50 ? 0 : 20);
    }

    return fz_server_idle(s);
}


static inline int
fz_nfds(void)
{
    int             n;
    DIR            *d;
    struct dirent  *e;

    d = opendir("/proc/self/fd");
    fz_check(d != NULL);

    n = 0;

    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] != '.') {
            n++;
        }
    }

    closedir(d);

    return n;
}


/* the open descriptors, for the report of a leak */
static inline void
fz_dump_fds(void)
{
    char            path[300], link[256], buf[4096];
    size_t          len;
    ssize_t         n;
    DIR            *d;
    struct dirent  *e;

    d = opendir("/proc/self/fd");

    if (d == NULL) {
        return;
    }

    len = 0;
    buf[0] = '\0';

    while ((e = readdir(d)) != NULL && len < sizeof(buf) - 300) {
        if (e->d_name[0] == '.') {
            continue;
        }

        snprintf(path, sizeof(path), "/proc/self/fd/%s", e->d_name);
        n = readlink(path, link, sizeof(link) - 1);
        link[n > 0 ? n : 0] = '\0';
        len += snprintf(buf + len, sizeof(buf) - len, "%s -> %s\n",
                        e->d_name, link);
    }

    closedir(d);

    __sanitizer_report_error_summary(buf);
}


static inline int
fz_connect(fz_server_t *s)
{
    int                 fd;
    struct sockaddr_un  sa;

    fd = socket(AF_UNIX, SOCK_STREAM|SOCK_CLOEXEC, 0);
    fz_check(fd >= 0);

    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, s->path, strlen(s->path));

    fz_check(connect(fd, (struct sockaddr *) &sa, sizeof(sa)) == 0);

    return fd;
}


/* a message with descriptors; what sendmsg() returned */
static inline ssize_t
fz_sendmsg(int fd, const void *buf, size_t len, const int *fds, int nfds)
{
    struct iovec     iov;
    struct msghdr    mh;
    struct cmsghdr  *cm;
    union {
        struct cmsghdr  align;
        char            buf[CMSG_SPACE(sizeof(int) * 16)];
    } ctl;

    memset(&mh, 0, sizeof(mh));
    memset(&ctl, 0, sizeof(ctl));

    iov.iov_base = (void *) buf;
    iov.iov_len = len;
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;

    if (nfds > 0) {
        mh.msg_control = ctl.buf;
        mh.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
        cm = CMSG_FIRSTHDR(&mh);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
        memcpy(CMSG_DATA(cm), fds, sizeof(int) * nfds);
    }

    return sendmsg(fd, &mh, MSG_NOSIGNAL|MSG_DONTWAIT);
}


/* something to read (or EOF) on fd now: 1, or 0 */
static inline int
fz_readable(int fd)
{
    struct pollfd  pfd;

    pfd.fd = fd;
    pfd.events = POLLIN;
    pfd.revents = 0;

    return poll(&pfd, 1, 0) == 1;
}


/* run the server until fd has something to read; the bytes read (0 at
 * EOF, -1 on an error), or -2 if nothing came */
static inline ssize_t
fz_answer(fz_server_t *s, int fd, void *buf, size_t len)
{
    int  i;

    for (i = 0; i < 100 && !fz_readable(fd); i++) {
        (void) ngxshm_server_dispatch(s->srv, i < 50 ? 0 : 20);
    }

    if (!fz_readable(fd)) {
        return -2;
    }

    return recv(fd, buf, len, MSG_DONTWAIT);
}


/* the peer closed fd (maybe with a reset, if it left our bytes unread):
 * 1, or 0 */
static inline int
fz_closed(fz_server_t *s, int fd)
{
    char     buf[64];
    ssize_t  n;

    n = fz_answer(s, fd, buf, sizeof(buf));

    return n == 0 || (n == -1 && errno == ECONNRESET);
}


/* a memfd of "size" bytes, sealed against resizing if "seal" */
static inline int
fz_memfd(size_t size, int seal)
{
    int  fd;

    fd = memfd_create("ngxshm-fuzz", MFD_CLOEXEC|MFD_ALLOW_SEALING);
    fz_check(fd >= 0);
    fz_check(ftruncate(fd, (off_t) size) == 0);

    if (seal) {
        fz_check(fcntl(fd, F_ADD_SEALS,
                       F_SEAL_SHRINK|F_SEAL_GROW|F_SEAL_SEAL) == 0);
    }

    return fd;
}


#endif /* NGXSHM_FUZZ_FAKE_H */
