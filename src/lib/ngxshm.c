/*
 * Copyright (C) ngxshm authors
 *
 * libngxshm: the server, its loops, and channels (socket, handshake,
 * segment, rings, outbound queue).  Streams and the request API are in
 * ngxshm_request.c.
 */

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include "ngxshm_internal.h"


#define NGXSHM_EVENTS        64
#define NGXSHM_ACCEPTS       16       /* per listener event */
#define NGXSHM_BATCH         64       /* frames between "consumed" checks */
#define NGXSHM_MAX_FDS       8        /* descriptors we make room for */
#define NGXSHM_ACCEPT_PAUSE  100      /* ms without accept after EMFILE */
#define NGXSHM_MAX_THREADS   1024


static uint64_t ngxshm_now_ms(void);
static int ngxshm_loop_init(ngxshm_loop_t *loop, ngxshm_server_t *srv);
static void ngxshm_loop_free(ngxshm_loop_t *loop);
static int ngxshm_loop_once(ngxshm_loop_t *loop, int timeout);
static void *ngxshm_loop_thread(void *arg);
static void ngxshm_loop_begin_stop(ngxshm_loop_t *loop);
static void ngxshm_loop_check_drain(ngxshm_loop_t *loop);
static void ngxshm_loop_settle(ngxshm_loop_t *loop);
static int ngxshm_loop_hello_timeout(ngxshm_loop_t *loop, int timeout);
static void ngxshm_loop_wake(ngxshm_loop_t *loop);
static void ngxshm_loop_posts(ngxshm_loop_t *loop);
static void ngxshm_loop_accept(ngxshm_loop_t *loop);
static int ngxshm_peer_allowed(ngxshm_server_t *srv, int fd);
static ngxshm_chan_t *ngxshm_chan_new(ngxshm_loop_t *loop, int fd);
static void ngxshm_chan_sock(ngxshm_chan_t *ch, uint32_t events);
static void ngxshm_chan_hello(ngxshm_chan_t *ch);
static int ngxshm_chan_attach(ngxshm_chan_t *ch, const ngxshm_msg_t *m,
    int *fds, const char **why);
static void ngxshm_chan_refuse(ngxshm_chan_t *ch, int status,
    const char *why);
static void ngxshm_chan_efd(ngxshm_chan_t *ch);
static void ngxshm_chan_service(ngxshm_chan_t *ch);
static void ngxshm_chan_drain(ngxshm_chan_t *ch);
static void ngxshm_chan_flush(ngxshm_chan_t *ch);
static void ngxshm_chan_teardown(ngxshm_chan_t *ch);
static void ngxshm_chan_wake_nginx(ngxshm_chan_t *ch);
static void ngxshm_loop_flush(ngxshm_loop_t *loop);
static int ngxshm_chan_put(ngxshm_chan_t *ch, const ngxshm_frame_t *hdr,
    const void *data);
static int ngxshm_is_wake_pipe(int fd);
static int ngxshm_is_eventfd(int fd);


void
ngxshm_log(const char *fmt, ...)
{
    char     buf[512];
    int      n, m;
    va_list  ap;

    n = snprintf(buf, sizeof(buf), "ngxshm[%d]: ", (int) getpid());

    va_start(ap, fmt);
    m = vsnprintf(buf + n, sizeof(buf) - n - 1, fmt, ap);
    va_end(ap);

    if (m < 0) {
        return;
    }

    n += m;

    if (n > (int) sizeof(buf) - 2) {
        n = sizeof(buf) - 2;
    }

    buf[n++] = '\n';

    /* one write, so that lines of several threads do not mix */
    if (write(STDERR_FILENO, buf, n) < 0) {
        return;
    }
}


static uint64_t
ngxshm_now_ms(void)
{
    struct timespec  ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);

    return (uint64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}


/* server */

NGXSHM_API int
ngxshm_server_create(ngxshm_server_t **srvp, const ngxshm_config_t *cfg)
{
    int               rc;
    unsigned          i;
    ngxshm_server_t  *srv;

    if (srvp == NULL || cfg == NULL || cfg->handler == NULL
        || cfg->threads > NGXSHM_MAX_THREADS
        || (cfg->socket_mode & ~0777u) != 0
        || cfg->allow_uid < -1 || (cfg->max_head != 0 && cfg->max_head < 16))
    {
        return -EINVAL;
    }

    srv = calloc(1, sizeof(ngxshm_server_t));
    if (srv == NULL) {
        return -ENOMEM;
    }

    srv->cfg = *cfg;
    srv->lfd = -1;
    srv->listen_io.kind = NGXSHM_IO_LISTEN;
    srv->listen_io.obj = srv;

    if (srv->cfg.threads == 0) {
        srv->cfg.threads = 1;
    }

    if (srv->cfg.socket_mode == 0) {
        srv->cfg.socket_mode = NGXSHM_DEFAULT_MODE;
    }

    if (srv->cfg.allow_uid <= 0) {
        srv->cfg.allow_uid = (long) geteuid();
    }

    if (srv->cfg.max_head == 0) {
        srv->cfg.max_head = NGXSHM_DEFAULT_MAX_HEAD;
    }

    if (srv->cfg.max_head > UINT32_MAX) {
        srv->cfg.max_head = UINT32_MAX;
    }

    if (srv->cfg.hello_ms == 0) {
        srv->cfg.hello_ms = NGXSHM_DEFAULT_HELLO_MS;
    }

    if (srv->cfg.drain_ms == 0) {
        srv->cfg.drain_ms = NGXSHM_DEFAULT_DRAIN_MS;
    }

    srv->loops = calloc(srv->cfg.threads, sizeof(ngxshm_loop_t));
    if (srv->loops == NULL) {
        free(srv);
        return -ENOMEM;
    }

    for (i = 0; i < srv->cfg.threads; i++) {
        rc = ngxshm_loop_init(&srv->loops[i], srv);
        if (rc != 0) {
            ngxshm_server_destroy(srv);
            return rc;
        }

        srv->nloops++;
    }

    *srvp = srv;

    return 0;
}


NGXSHM_API int
ngxshm_server_listen(ngxshm_server_t *srv, const char *path)
{
    int                 fd, probe, err;
    unsigned            i;
    struct stat         st;
    struct epoll_event  ev;
    struct sockaddr_un  sa;

    if (srv == NULL || path == NULL || path[0] == '\0') {
        return -EINVAL;
    }

    if (srv->lfd >= 0) {
        return -EALREADY;
    }

    if (strlen(path) >= sizeof(sa.sun_path)) {
        return -ENAMETOOLONG;
    }

    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, path, strlen(path));

    if (lstat(path, &st) == 0) {
        if (!S_ISSOCK(st.st_mode)) {
            return -EEXIST;
        }

        /* a socket file: is somebody serving it? */
        probe = socket(AF_UNIX, SOCK_STREAM|SOCK_NONBLOCK|SOCK_CLOEXEC, 0);
        if (probe < 0) {
            return -errno;
        }

        if (connect(probe, (struct sockaddr *) &sa, sizeof(sa)) == 0) {
            close(probe);
            return -EADDRINUSE;
        }

        err = errno;
        close(probe);

        /* a full backlog (EAGAIN) still means a live server */
        if (err != ECONNREFUSED && err != ENOENT) {
            return err == EAGAIN ? -EADDRINUSE : -err;
        }

        if (unlink(path) != 0 && errno != ENOENT) {
            return -errno;
        }
    }

    fd = socket(AF_UNIX, SOCK_STREAM|SOCK_NONBLOCK|SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return -errno;
    }

    /*
     * The file exists with the umask's mode until chmod(); peers that
     * connect meanwhile are still checked with SO_PEERCRED.
     */
    if (bind(fd, (struct sockaddr *) &sa, sizeof(sa)) != 0) {
        err = errno;
        close(fd);
        return -err;
    }

    if (chmod(path, srv->cfg.socket_mode) != 0
        || stat(path, &st) != 0
        || listen(fd, NGXSHM_BACKLOG) != 0)
    {
        err = errno;
        close(fd);
        unlink(path);
        return -err;
    }

    srv->path = strdup(path);
    if (srv->path == NULL) {
        close(fd);
        unlink(path);
        return -ENOMEM;
    }

    srv->dev = st.st_dev;
    srv->ino = st.st_ino;
    srv->lfd = fd;

    /* every loop may accept; EPOLLEXCLUSIVE wakes one of them */
    for (i = 0; i < srv->nloops; i++) {
        memset(&ev, 0, sizeof(ev));
        ev.events = EPOLLIN | (srv->nloops > 1 ? EPOLLEXCLUSIVE : 0);
        ev.data.ptr = &srv->listen_io;

        if (epoll_ctl(srv->loops[i].ep, EPOLL_CTL_ADD, fd, &ev) != 0) {
            err = errno;

            while (i-- > 0) {
                epoll_ctl(srv->loops[i].ep, EPOLL_CTL_DEL, fd, NULL);
                srv->loops[i].listening = 0;
            }

            srv->lfd = -1;
            close(fd);
            unlink(path);
            free(srv->path);
            srv->path = NULL;
            return -err;
        }

        srv->loops[i].listening = 1;
    }

    return 0;
}


NGXSHM_API int
ngxshm_server_run(ngxshm_server_t *srv)
{
    int       rc;
    unsigned  i;

    if (srv == NULL || srv->lfd < 0) {
        return -EINVAL;
    }

    for (i = 1; i < srv->nloops; i++) {
        rc = pthread_create(&srv->loops[i].thread, NULL, ngxshm_loop_thread,
                            &srv->loops[i]);
        if (rc != 0) {
            ngxshm_log("pthread_create() failed: %s", strerror(rc));
            ngxshm_server_stop(srv);
            break;
        }

        srv->loops[i].thread_started = 1;
    }

    ngxshm_loop_thread(&srv->loops[0]);

    for (i = 1; i < srv->nloops; i++) {
        if (srv->loops[i].thread_started) {
            pthread_join(srv->loops[i].thread, NULL);
            srv->loops[i].thread_started = 0;
        }
    }

    return 0;
}


NGXSHM_API int
ngxshm_server_fd(ngxshm_server_t *srv)
{
    if (srv == NULL) {
        return -EINVAL;
    }

    return srv->loops[0].ep;
}


NGXSHM_API int
ngxshm_server_dispatch(ngxshm_server_t *srv, int timeout_ms)
{
    if (srv == NULL) {
        return -EINVAL;
    }

    return ngxshm_loop_once(&srv->loops[0], timeout_ms);
}


NGXSHM_API int
ngxshm_server_stop(ngxshm_server_t *srv)
{
    int       saved;
    unsigned  i;
    uint64_t  one;

    /* async-signal-safe: an atomic store and write()s */

    if (srv == NULL) {
        return -EINVAL;
    }

    saved = errno;

    __atomic_store_n(&srv->stop, 1, __ATOMIC_SEQ_CST);

    for (i = 0; i < srv->nloops; i++) {
        one = 1;
        if (write(srv->loops[i].wakefd, &one, sizeof(one)) < 0) {
            /* EAGAIN: the counter is full, the loop wakes anyway */
        }
    }

    errno = saved;

    return 0;
}


NGXSHM_API void
ngxshm_server_destroy(ngxshm_server_t *srv)
{
    unsigned     i;
    struct stat  st;

    if (srv == NULL) {
        return;
    }

    for (i = 0; i < srv->nloops; i++) {
        ngxshm_loop_free(&srv->loops[i]);
    }

    if (srv->lfd >= 0) {
        close(srv->lfd);
    }

    if (srv->path != NULL
        && !__atomic_exchange_n(&srv->unlinked, 1, __ATOMIC_SEQ_CST)
        && stat(srv->path, &st) == 0
        && st.st_dev == srv->dev && st.st_ino == srv->ino)
    {
        unlink(srv->path);
    }

    free(srv->path);
    free(srv->loops);
    free(srv);
}


/* loops */

static int
ngxshm_loop_init(ngxshm_loop_t *loop, ngxshm_server_t *srv)
{
    int                 err;
    struct epoll_event  ev;

    loop->srv = srv;
    loop->ep = -1;
    loop->wakefd = -1;
    ngxshm_link_init(&loop->chans);
    ngxshm_link_init(&loop->dead);
    ngxshm_link_init(&loop->runq);
    ngxshm_link_init(&loop->reqs);
    loop->posts = NULL;
    loop->posts_last = &loop->posts;

    err = pthread_mutex_init(&loop->mu, NULL);
    if (err != 0) {
        return -err;
    }

    loop->ep = epoll_create1(EPOLL_CLOEXEC);
    if (loop->ep < 0) {
        return -errno;
    }

    loop->wakefd = eventfd(0, EFD_NONBLOCK|EFD_CLOEXEC);
    if (loop->wakefd < 0) {
        return -errno;
    }

    loop->wake_io.kind = NGXSHM_IO_WAKE;
    loop->wake_io.obj = loop;

    memset(&ev, 0, sizeof(ev));
    ev.events = EPOLLIN;
    ev.data.ptr = &loop->wake_io;

    if (epoll_ctl(loop->ep, EPOLL_CTL_ADD, loop->wakefd, &ev) != 0) {
        return -errno;
    }

    return 0;
}


static void
ngxshm_loop_free(ngxshm_loop_t *loop)
{
    ngxshm_link_t     *l;
    ngxshm_post_t     *p;
    ngxshm_chan_t     *ch;
    ngxshm_request_t  *r;

    if (loop->srv == NULL) {
        return;
    }

    while (!ngxshm_link_empty(&loop->chans)) {
        ch = ngxshm_link_data(loop->chans.next, ngxshm_chan_t, link);
        ngxshm_chan_fail(ch, NULL);
    }

    while (!ngxshm_link_empty(&loop->dead)) {
        ch = ngxshm_link_data(loop->dead.next, ngxshm_chan_t, link);
        ngxshm_chan_teardown(ch);
    }

    while (loop->posts != NULL) {
        p = loop->posts;
        loop->posts = p->next;
        free(p);
    }

    /* requests the application never completed, or with posts pending */
    while (!ngxshm_link_empty(&loop->reqs)) {
        l = loop->reqs.next;
        r = ngxshm_link_data(l, ngxshm_request_t, all);
        ngxshm_req_free(r);
    }

    if (loop->wakefd >= 0) {
        close(loop->wakefd);
    }

    if (loop->ep >= 0) {
        close(loop->ep);
    }

    pthread_mutex_destroy(&loop->mu);
    loop->srv = NULL;
}


static void *
ngxshm_loop_thread(void *arg)
{
    int             rc;
    ngxshm_loop_t  *loop;

    loop = arg;

    while (!loop->done) {
        rc = ngxshm_loop_once(loop, -1);

        if (rc < 0 && rc != -ESHUTDOWN) {
            ngxshm_log("event loop failed: %s", strerror(-rc));
            break;
        }
    }

    return NULL;
}


/* one round: wait for events, handle them, run the application */
static int
ngxshm_loop_once(ngxshm_loop_t *loop, int timeout)
{
    int                  i, n;
    uint64_t             now, left;
    ngxshm_io_t         *io;
    ngxshm_server_t     *srv;
    struct epoll_event   evs[NGXSHM_EVENTS];

    srv = loop->srv;

    if (loop->done) {
        return -ESHUTDOWN;
    }

    if (!loop->stopping && __atomic_load_n(&srv->stop, __ATOMIC_SEQ_CST)) {
        ngxshm_loop_begin_stop(loop);
    }

    if (loop->stopping) {
        ngxshm_loop_check_drain(loop);

        if (loop->done) {
            return -ESHUTDOWN;
        }

        now = ngxshm_now_ms();
        left = loop->deadline > now ? loop->deadline - now : 0;

        if (timeout < 0 || (uint64_t) timeout > left) {
            timeout = (int) (left < 1000000 ? left : 1000000);
        }

    } else if (!loop->listening && srv->lfd >= 0 && loop->deadline != 0) {
        /* accepting was paused after EMFILE */
        now = ngxshm_now_ms();

        if (now >= loop->deadline) {
            struct epoll_event  ev;

            memset(&ev, 0, sizeof(ev));
            ev.events = EPOLLIN | (srv->nloops > 1 ? EPOLLEXCLUSIVE : 0);
            ev.data.ptr = &srv->listen_io;

            if (epoll_ctl(loop->ep, EPOLL_CTL_ADD, srv->lfd, &ev) == 0) {
                loop->listening = 1;
            }

            loop->deadline = 0;

        } else if (timeout < 0 || (uint64_t) timeout > loop->deadline - now) {
            timeout = (int) (loop->deadline - now);
        }
    }

    if (loop->nhello) {
        timeout = ngxshm_loop_hello_timeout(loop, timeout);
    }

    n = epoll_wait(loop->ep, evs, NGXSHM_EVENTS, timeout);

    if (n < 0) {
        if (errno != EINTR) {
            return -errno;
        }

        n = 0;
    }

    for (i = 0; i < n; i++) {
        io = evs[i].data.ptr;

        switch (io->kind) {

        case NGXSHM_IO_LISTEN:
            ngxshm_loop_accept(loop);
            break;

        case NGXSHM_IO_WAKE:
            ngxshm_loop_wake(loop);
            break;

        case NGXSHM_IO_SOCK:
            ngxshm_chan_sock(io->obj, evs[i].events);
            break;

        case NGXSHM_IO_EFD:
            ngxshm_chan_efd(io->obj);
            break;
        }
    }

    ngxshm_loop_settle(loop);
    ngxshm_loop_flush(loop);

    if (loop->stopping) {
        ngxshm_loop_check_drain(loop);
        ngxshm_loop_flush(loop);

        if (loop->done) {
            return n > 0 ? n : -ESHUTDOWN;
        }
    }

    return n;
}


/*
 * close the peers that connected but sent no HELLO in time (they would
 * keep a descriptor each for ever); the epoll timeout until the next
 * such deadline
 */
static int
ngxshm_loop_hello_timeout(ngxshm_loop_t *loop, int timeout)
{
    uint64_t        now;
    ngxshm_link_t  *l, *next;
    ngxshm_chan_t  *ch;

    now = ngxshm_now_ms();

    for (l = loop->chans.next; l != &loop->chans; l = next) {
        next = l->next;
        ch = ngxshm_link_data(l, ngxshm_chan_t, link);

        if (ch->state != NGXSHM_CH_HELLO) {
            continue;
        }

        if (now >= ch->hello_by) {
            ngxshm_chan_fail(ch, "no HELLO in time");
            continue;
        }

        if (timeout < 0 || (uint64_t) timeout > ch->hello_by - now) {
            timeout = (int) (ch->hello_by - now);
        }
    }

    if (!ngxshm_link_empty(&loop->dead)) {
        ngxshm_loop_settle(loop);
    }

    return timeout;
}


/* run the application and tear dead channels down until both are idle */
static void
ngxshm_loop_settle(ngxshm_loop_t *loop)
{
    unsigned           ev;
    ngxshm_chan_t     *ch;
    ngxshm_request_t  *r;

    for ( ;; ) {
        if (!ngxshm_link_empty(&loop->dead)) {
            ch = ngxshm_link_data(loop->dead.next, ngxshm_chan_t, link);
            ngxshm_chan_teardown(ch);
            continue;
        }

        if (ngxshm_link_empty(&loop->runq)) {
            break;
        }

        r = ngxshm_link_data(loop->runq.next, ngxshm_request_t, runq);
        ngxshm_link_del(&r->runq);

        ev = r->pending;
        r->pending = 0;

        if (ev & NGXSHM_EV_NEW) {
            if (r->cancelled) {
                /* nginx gave up before the handler ran */
                r->app = 0;
                loop->napp--;
                ngxshm_req_unref(r);
                continue;
            }

            loop->srv->cfg.handler(r, loop->srv->cfg.handler_arg);
            continue;
        }

        if (r->app && r->cb != NULL) {
            r->cb(r, ev, r->cb_arg);
        }
    }
}


static void
ngxshm_loop_wake(ngxshm_loop_t *loop)
{
    uint64_t  v;

    if (read(loop->wakefd, &v, sizeof(v)) < 0) {
        /* EAGAIN: somebody else reset it */
    }

    if (!loop->stopping
        && __atomic_load_n(&loop->srv->stop, __ATOMIC_SEQ_CST))
    {
        ngxshm_loop_begin_stop(loop);
    }

    ngxshm_loop_posts(loop);
}


static void
ngxshm_loop_posts(ngxshm_loop_t *loop)
{
    ngxshm_post_t  *p, *next;

    pthread_mutex_lock(&loop->mu);
    p = loop->posts;
    loop->posts = NULL;
    loop->posts_last = &loop->posts;
    pthread_mutex_unlock(&loop->mu);

    while (p != NULL) {
        next = p->next;

        p->fn(p->r, p->arg);
        ngxshm_req_unref(p->r);
        free(p);

        p = next;
    }
}


static void
ngxshm_loop_begin_stop(ngxshm_loop_t *loop)
{
    ngxshm_link_t    *l, *next;
    ngxshm_chan_t    *ch;
    ngxshm_frame_t    hdr;
    ngxshm_server_t  *srv;
    struct stat       st;

    srv = loop->srv;
    loop->stopping = 1;
    loop->deadline = ngxshm_now_ms() + srv->cfg.drain_ms;

    if (srv->lfd >= 0) {
        if (loop->listening) {
            epoll_ctl(loop->ep, EPOLL_CTL_DEL, srv->lfd, NULL);
            loop->listening = 0;
        }

        /*
         * A shut down listening socket refuses connect() at once, and its
         * descriptor stays valid for the other loops until they notice.
         */
        shutdown(srv->lfd, SHUT_RDWR);

        if (!__atomic_exchange_n(&srv->unlinked, 1, __ATOMIC_SEQ_CST)
            && stat(srv->path, &st) == 0
            && st.st_dev == srv->dev && st.st_ino == srv->ino)
        {
            unlink(srv->path);
        }
    }

    for (l = loop->chans.next; l != &loop->chans; l = next) {
        next = l->next;
        ch = ngxshm_link_data(l, ngxshm_chan_t, link);

        if (ch->state != NGXSHM_CH_OPEN) {
            ngxshm_chan_fail(ch, NULL);
            continue;
        }

        memset(&hdr, 0, sizeof(hdr));
        hdr.type = NGXSHM_GOAWAY;
        ch->goaway = 1;

        (void) ngxshm_chan_send(ch, &hdr, NULL);
    }
}


static void
ngxshm_loop_check_drain(ngxshm_loop_t *loop)
{
    int             expired;
    ngxshm_link_t  *l, *next;
    ngxshm_chan_t  *ch;

    expired = ngxshm_now_ms() >= loop->deadline;

    for (l = loop->chans.next; l != &loop->chans; l = next) {
        next = l->next;
        ch = ngxshm_link_data(l, ngxshm_chan_t, link);

        if (ch->state == NGXSHM_CH_OPEN && !expired) {
            /*
             * nginx closes the channel once it has seen GOAWAY and its
             * last stream has ended; a stream it opened before it saw
             * GOAWAY is still served meanwhile
             */
            continue;
        }

        ngxshm_chan_fail(ch, NULL);
    }

    ngxshm_loop_settle(loop);

    if (loop->nchans == 0 && (loop->napp == 0 || expired)) {
        loop->done = 1;
    }
}


/* accepting */

static void
ngxshm_loop_accept(ngxshm_loop_t *loop)
{
    int               i, fd, err;
    ngxshm_server_t  *srv;

    srv = loop->srv;

    for (i = 0; i < NGXSHM_ACCEPTS && !loop->stopping; i++) {
        fd = accept4(srv->lfd, NULL, NULL, SOCK_NONBLOCK|SOCK_CLOEXEC);

        if (fd < 0) {
            err = errno;

            if (err == EINTR || err == ECONNABORTED) {
                continue;
            }

            if (err == EMFILE || err == ENFILE || err == ENOBUFS
                || err == ENOMEM)
            {
                /* level-triggered: pause instead of spinning */
                ngxshm_log("accept4() failed: %s", strerror(err));
                epoll_ctl(loop->ep, EPOLL_CTL_DEL, srv->lfd, NULL);
                loop->listening = 0;
                loop->deadline = ngxshm_now_ms() + NGXSHM_ACCEPT_PAUSE;
            }

            return;
        }

        if (!ngxshm_peer_allowed(srv, fd)) {
            close(fd);
            continue;
        }

        if (ngxshm_chan_new(loop, fd) == NULL) {
            close(fd);
        }
    }
}


static int
ngxshm_peer_allowed(ngxshm_server_t *srv, int fd)
{
    socklen_t     len;
    struct ucred  cr;
    ngxshm_msg_t  ack;

    len = sizeof(cr);

    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) != 0) {
        ngxshm_log("getsockopt(SO_PEERCRED) failed: %s", strerror(errno));
        return 0;
    }

    if (cr.uid == 0 || (long) cr.uid == srv->cfg.allow_uid
        || (srv->cfg.allow_gid > 0 && (long) cr.gid == srv->cfg.allow_gid))
    {
        return 1;
    }

    ngxshm_log("refused peer pid %d uid %u gid %u: not allowed",
               (int) cr.pid, (unsigned) cr.uid, (unsigned) cr.gid);

    /* tell nginx why before the socket closes: its log names the cause */

    memset(&ack, 0, sizeof(ack));
    ack.magic = NGXSHM_MAGIC;
    ack.version = NGXSHM_VERSION;
    ack.type = NGXSHM_MSG_HELLO_ACK;
    ack.size = sizeof(ack);
    ack.status = EACCES;
    ack.pid = (uint32_t) getpid();

    if (send(fd, &ack, sizeof(ack), MSG_NOSIGNAL|MSG_DONTWAIT) < 0) {
        /* the peer is gone: nothing to tell */
    }

    return 0;
}


/* channels */

static ngxshm_chan_t *
ngxshm_chan_new(ngxshm_loop_t *loop, int fd)
{
    ngxshm_chan_t       *ch;
    struct ucred         cr;
    socklen_t            len;
    struct epoll_event   ev;

    ch = calloc(1, sizeof(ngxshm_chan_t));
    if (ch == NULL) {
        ngxshm_log("out of memory accepting a channel");
        return NULL;
    }

    ch->loop = loop;
    ch->state = NGXSHM_CH_HELLO;
    ch->fd = fd;
    ch->efd_app = -1;
    ch->efd_nginx = -1;
    ch->sock_io.kind = NGXSHM_IO_SOCK;
    ch->sock_io.obj = ch;
    ch->efd_io.kind = NGXSHM_IO_EFD;
    ch->efd_io.obj = ch;
    ngxshm_link_init(&ch->waiters);

    len = sizeof(cr);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) == 0) {
        ch->pid = cr.pid;
    }

    memset(&ev, 0, sizeof(ev));
    ev.events = EPOLLIN|EPOLLRDHUP;
    ev.data.ptr = &ch->sock_io;

    if (epoll_ctl(loop->ep, EPOLL_CTL_ADD, fd, &ev) != 0) {
        ngxshm_log("epoll_ctl() failed: %s", strerror(errno));
        free(ch);
        return NULL;
    }

    ngxshm_link_add(&loop->chans, &ch->link);
    loop->nchans++;

    ch->hello_by = ngxshm_now_ms() + loop->srv->cfg.hello_ms;
    loop->nhello++;

    return ch;
}


/* mark a channel dead (logging why, if reason is set); it is torn down,
 * and its requests cancelled, at the end of the current round */
void
ngxshm_chan_fail(ngxshm_chan_t *ch, const char *reason)
{
    if (ch->state == NGXSHM_CH_DEAD) {
        return;
    }

    if (reason != NULL) {
        ngxshm_log("channel of nginx pid %d: %s, closing", (int) ch->pid,
                   reason);
    }

    if (ch->state == NGXSHM_CH_HELLO) {
        ch->loop->nhello--;
    }

    ch->state = NGXSHM_CH_DEAD;
    ch->reason = reason;

    ngxshm_link_del(&ch->link);
    ngxshm_link_add(&ch->loop->dead, &ch->link);
    ch->loop->nchans--;
}


static void
ngxshm_chan_teardown(ngxshm_chan_t *ch)
{
    uint32_t        i;
    ngxshm_loop_t  *loop;

    loop = ch->loop;

    ngxshm_link_del(&ch->link);

    for (i = 0; ch->slots != NULL && i < ch->max_streams; i++) {
        if (ch->slots[i].r != NULL) {
            ngxshm_req_detach(ch->slots[i].r);
        }
    }

    if (ch->efd_app >= 0) {
        epoll_ctl(loop->ep, EPOLL_CTL_DEL, ch->efd_app, NULL);
        close(ch->efd_app);
    }

    if (ch->efd_nginx >= 0) {
        close(ch->efd_nginx);
    }

    epoll_ctl(loop->ep, EPOLL_CTL_DEL, ch->fd, NULL);
    close(ch->fd);

    if (ch->seg != NULL) {
        munmap(ch->seg, ch->seg_size);
    }

    free(ch->slots);
    free(ch->q);
    free(ch);
}


static void
ngxshm_chan_sock(ngxshm_chan_t *ch, uint32_t events)
{
    char     c;
    ssize_t  n;

    if (ch->state == NGXSHM_CH_DEAD) {
        return;
    }

    if (ch->state == NGXSHM_CH_HELLO) {
        ngxshm_chan_hello(ch);
        return;
    }

    if (events & (EPOLLERR|EPOLLHUP|EPOLLRDHUP)) {
        ngxshm_chan_fail(ch, NULL);
        return;
    }

    n = recv(ch->fd, &c, 1, MSG_DONTWAIT);

    if (n == 0) {
        ngxshm_chan_fail(ch, NULL);

    } else if (n > 0) {
        ngxshm_chan_fail(ch, "unexpected data on the socket");

    } else if (errno != EAGAIN && errno != EINTR) {
        ngxshm_chan_fail(ch, NULL);
    }
}


static void
ngxshm_chan_hello(ngxshm_chan_t *ch)
{
    int              i, nfds, status, fds[NGXSHM_MAX_FDS];
    ssize_t          n;
    const char      *why;
    struct iovec     iov;
    struct msghdr    mh;
    struct cmsghdr  *cm;
    ngxshm_msg_t     m;
    union {
        struct cmsghdr  align;
        char            buf[CMSG_SPACE(sizeof(int) * NGXSHM_MAX_FDS)];
    } ctl;

    memset(&m, 0, sizeof(m));
    memset(&mh, 0, sizeof(mh));
    memset(&ctl, 0, sizeof(ctl));

    iov.iov_base = &m;
    iov.iov_len = sizeof(m);
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    mh.msg_control = ctl.buf;
    mh.msg_controllen = sizeof(ctl.buf);

    n = recvmsg(ch->fd, &mh, MSG_DONTWAIT|MSG_CMSG_CLOEXEC);

    if (n < 0) {
        if (errno != EAGAIN && errno != EINTR) {
            ngxshm_chan_fail(ch, NULL);
        }

        return;
    }

    if (n == 0) {
        ngxshm_chan_fail(ch, NULL);
        return;
    }

    nfds = 0;

    for (cm = CMSG_FIRSTHDR(&mh); cm != NULL; cm = CMSG_NXTHDR(&mh, cm)) {
        if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS
            || cm->cmsg_len < CMSG_LEN(0))
        {
            continue;
        }

        for (i = 0; i < (int) ((cm->cmsg_len - CMSG_LEN(0)) / sizeof(int));
             i++)
        {
            if (nfds < NGXSHM_MAX_FDS) {
                memcpy(&fds[nfds++], CMSG_DATA(cm) + i * sizeof(int),
                       sizeof(int));
            }
        }
    }

    status = 0;
    why = NULL;

    if (mh.msg_flags & MSG_CTRUNC) {
        status = EPROTO;
        why = "too many descriptors";

    } else if (n != sizeof(m) || m.magic != NGXSHM_MAGIC
               || m.type != NGXSHM_MSG_HELLO || m.size != sizeof(m))
    {
        status = EPROTO;
        why = "bad HELLO message";

    } else if (m.version != NGXSHM_VERSION) {
        status = EPROTONOSUPPORT;
        why = "unsupported protocol version";

    } else if (nfds != 3) {
        status = EPROTO;
        why = "HELLO without three descriptors";

    } else {
        status = ngxshm_chan_attach(ch, &m, fds, &why);
    }

    if (status != 0) {
        for (i = 0; i < nfds; i++) {
            if (fds[i] >= 0 && fds[i] != ch->efd_app
                && fds[i] != ch->efd_nginx)
            {
                close(fds[i]);
            }
        }

        ngxshm_chan_refuse(ch, status, why);
    }
}


/* check and map what HELLO brought, answer it; 0 or a positive errno */
static int
ngxshm_chan_attach(ngxshm_chan_t *ch, const ngxshm_msg_t *m, int *fds,
    const char **why)
{
    int                  seals, i;
    void                *p;
    uint32_t             t, h;
    struct stat          st;
    ngxshm_msg_t         ack;
    ngxshm_seg_hdr_t     hdr;
    struct epoll_event   ev;

    seals = fcntl(fds[0], F_GET_SEALS);

    if (seals < 0) {
        *why = "segment is not a sealable memfd";
        return EINVAL;
    }

    if ((seals & (F_SEAL_SHRINK|F_SEAL_GROW))
        != (F_SEAL_SHRINK|F_SEAL_GROW))
    {
        *why = "segment is not sealed against resizing";
        return EPERM;
    }

    if (fstat(fds[0], &st) != 0 || !S_ISREG(st.st_mode)
        || (uint64_t) st.st_size != m->seg_size
        || m->seg_size < NGXSHM_HDR_SIZE + 2 * NGXSHM_RING_MIN
        || m->seg_size > NGXSHM_HDR_SIZE + 2 * (uint64_t) NGXSHM_RING_MAX)
    {
        *why = "segment size does not match HELLO";
        return EINVAL;
    }

    if (!ngxshm_is_wake_pipe(fds[1]) || !ngxshm_is_eventfd(fds[2])) {
        *why = "wakeup descriptors are not a pipe and an eventfd";
        return EINVAL;
    }

    p = mmap(NULL, m->seg_size, PROT_READ|PROT_WRITE, MAP_SHARED, fds[0], 0);
    if (p == MAP_FAILED) {
        *why = "mmap() of the segment failed";
        return errno;
    }

    close(fds[0]);
    fds[0] = -1;

    ch->seg = p;
    ch->seg_size = m->seg_size;
    ch->efd_app = fds[1];
    ch->efd_nginx = fds[2];

    /* copy out once, then check the copy */
    memcpy(&hdr, ch->seg, sizeof(hdr));

    for (i = 0; i < 5; i++) {
        if (hdr.reserved[i] != 0) {
            break;
        }
    }

    if (hdr.magic != NGXSHM_MAGIC || hdr.version != NGXSHM_VERSION
        || hdr.hdr_size != NGXSHM_HDR_SIZE || hdr.flags != 0 || i != 5
        || hdr.seg_size != m->seg_size
        || ngxshm_geometry_valid(hdr.seg_size, hdr.ring_size, hdr.max_frame)
           != 0
        || hdr.max_streams < 1 || hdr.max_streams > 65536
        || hdr.window < 1 || hdr.window > hdr.ring_size)
    {
        *why = "bad segment header";
        return EINVAL;
    }

    ch->max_frame = hdr.max_frame;
    ch->max_streams = hdr.max_streams;
    ch->window = hdr.window;

    ngxshm_ring_init(&ch->rx, ch->seg, NGXSHM_RING_TO_APP, hdr.ring_size,
                     hdr.max_frame);
    ngxshm_ring_init(&ch->tx, ch->seg, NGXSHM_RING_TO_NGINX, hdr.ring_size,
                     hdr.max_frame);

    /* the indexes need not start at 0; ring 1 must be empty */
    ch->rx.pos = ngxshm_load_acquire(&ch->rx.ctrl->head);
    t = ngxshm_load_acquire(&ch->tx.ctrl->tail);
    h = ngxshm_load_acquire(&ch->tx.ctrl->head);

    if ((ch->rx.pos & (NGXSHM_ALIGN - 1)) != 0 || t != h
        || (t & (NGXSHM_ALIGN - 1)) != 0)
    {
        *why = "bad initial ring indexes";
        return EINVAL;
    }

    ch->tx.pos = t;
    ch->tx.peer = t;

    ch->slots = calloc(hdr.max_streams, sizeof(ngxshm_slot_t));
    if (ch->slots == NULL) {
        *why = "out of memory";
        return ENOMEM;
    }

    memset(&ev, 0, sizeof(ev));
    ev.events = EPOLLIN;
    ev.data.ptr = &ch->efd_io;

    if (epoll_ctl(ch->loop->ep, EPOLL_CTL_ADD, ch->efd_app, &ev) != 0) {
        *why = "epoll_ctl() failed";
        return errno;
    }

    memset(&ack, 0, sizeof(ack));
    ack.magic = NGXSHM_MAGIC;
    ack.version = NGXSHM_VERSION;
    ack.type = NGXSHM_MSG_HELLO_ACK;
    ack.size = sizeof(ack);
    ack.status = 0;
    ack.pid = (uint32_t) getpid();

    if (send(ch->fd, &ack, sizeof(ack), MSG_NOSIGNAL|MSG_DONTWAIT)
        != (ssize_t) sizeof(ack))
    {
        ngxshm_chan_fail(ch, NULL);
        return 0;
    }

    ch->loop->nhello--;
    ch->state = NGXSHM_CH_OPEN;

    if (ch->loop->stopping) {
        ngxshm_frame_t  gw;

        memset(&gw, 0, sizeof(gw));
        gw.type = NGXSHM_GOAWAY;
        ch->goaway = 1;
        (void) ngxshm_chan_send(ch, &gw, NULL);
    }

    /* frames may be waiting already; this also announces our sleep */
    ngxshm_chan_service(ch);

    return 0;
}


static void
ngxshm_chan_refuse(ngxshm_chan_t *ch, int status, const char *why)
{
    ngxshm_msg_t  ack;

    ngxshm_log("refused channel of nginx pid %d: %s", (int) ch->pid, why);

    memset(&ack, 0, sizeof(ack));
    ack.magic = NGXSHM_MAGIC;
    ack.version = NGXSHM_VERSION;
    ack.type = NGXSHM_MSG_HELLO_ACK;
    ack.size = sizeof(ack);
    ack.status = status;
    ack.pid = (uint32_t) getpid();

    if (send(ch->fd, &ack, sizeof(ack), MSG_NOSIGNAL|MSG_DONTWAIT) < 0) {
        /* the peer is gone: nothing to tell */
    }

    ngxshm_chan_fail(ch, NULL);
}


/* the read end of a pipe, made non-blocking: nginx wakes us through it */
static int
ngxshm_is_wake_pipe(int fd)
{
    int          fl;
    struct stat  st;

    if (fstat(fd, &st) != 0 || !S_ISFIFO(st.st_mode)) {
        return 0;
    }

    fl = fcntl(fd, F_GETFL);

    if (fl == -1 || (fl & O_ACCMODE) != O_RDONLY) {
        return 0;
    }

    return (fl & O_NONBLOCK) || fcntl(fd, F_SETFL, fl | O_NONBLOCK) == 0;
}


static int
ngxshm_is_eventfd(int fd)
{
    char     path[64], link[64];
    ssize_t  n;

    snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);

    n = readlink(path, link, sizeof(link) - 1);
    if (n < 0) {
        /* no /proc: cannot tell, trust it */
        return errno == ENOENT ? 1 : 0;
    }

    link[n] = '\0';

    return strcmp(link, "anon_inode:[eventfd]") == 0;
}


static void
ngxshm_chan_efd(ngxshm_chan_t *ch)
{
    char     buf[256];
    ssize_t  n;

    if (ch->state != NGXSHM_CH_OPEN) {
        return;
    }

    /* a byte per wake-up from nginx: take them all, they mean the same */

    do {
        n = read(ch->efd_app, buf, sizeof(buf));
    } while (n == (ssize_t) sizeof(buf));

    if (n == 0) {
        /* nginx closed the channel, as an EOF on the socket */
        ngxshm_chan_fail(ch, NULL);
        return;
    }

    if (n < 0 && errno != EAGAIN && errno != EINTR) {
        ngxshm_chan_fail(ch, "wake-up pipe read failed");
        return;
    }

    ngxshm_chan_service(ch);
}


static void
ngxshm_chan_service(ngxshm_chan_t *ch)
{
    for ( ;; ) {
        /* room nginx made goes to the waiting streams before new ones */

        ngxshm_chan_flush(ch);

        if (ch->state != NGXSHM_CH_OPEN) {
            return;
        }

        ngxshm_chan_drain(ch);

        if (ch->state != NGXSHM_CH_OPEN) {
            return;
        }

        ngxshm_chan_flush(ch);

        if (ch->state != NGXSHM_CH_OPEN) {
            return;
        }

        if (!ngxshm_ring_sleep(&ch->rx)) {
            return;
        }
    }
}


static void
ngxshm_chan_drain(ngxshm_chan_t *ch)
{
    unsigned              n;
    const char           *bad;
    ngxshm_frame_t        f;
    const unsigned char  *p;

    n = 0;

    for ( ;; ) {
        p = ngxshm_ring_peek(&ch->rx, &f, &bad);

        if (p == NULL) {
            if (bad != NULL) {
                ngxshm_chan_fail(ch, bad);
                return;
            }

            break;
        }

        (void) ngxshm_frame_in(ch, &f, p);

        if (ch->state != NGXSHM_CH_OPEN) {
            return;
        }

        ngxshm_ring_consume(&ch->rx, &f);

        if (++n % NGXSHM_BATCH == 0 && ngxshm_ring_consumed(&ch->rx)) {
            ngxshm_chan_wake_nginx(ch);
        }
    }

    if (n % NGXSHM_BATCH != 0 && ngxshm_ring_consumed(&ch->rx)) {
        ngxshm_chan_wake_nginx(ch);
    }
}


static void
ngxshm_chan_wake_nginx(ngxshm_chan_t *ch)
{
    /* one eventfd write per dispatch batch, see ngxshm_loop_flush() */
    ch->wake = 1;
}


/* signal nginx for every channel that produced frames in this batch */
static void
ngxshm_loop_flush(ngxshm_loop_t *loop)
{
    uint64_t        one;
    ngxshm_link_t  *l, *next;
    ngxshm_chan_t  *ch;

    one = 1;

    for (l = loop->chans.next; l != &loop->chans; l = next) {
        next = l->next;
        ch = ngxshm_link_data(l, ngxshm_chan_t, link);

        if (!ch->wake || ch->state != NGXSHM_CH_OPEN) {
            continue;
        }

        ch->wake = 0;

        if (write(ch->efd_nginx, &one, sizeof(one)) < 0
            && errno != EAGAIN && errno != EINTR)
        {
            ngxshm_chan_fail(ch, "eventfd write failed");
        }
    }
}


/* write one frame into ring 1: 1 written, 0 no room, -1 channel failed */
static int
ngxshm_chan_put(ngxshm_chan_t *ch, const ngxshm_frame_t *hdr,
    const void *data)
{
    int              bad;
    ngxshm_frame_t  *f;

    bad = 0;
    f = ngxshm_ring_reserve(&ch->tx, hdr->len, &bad);

    if (f == NULL && !bad) {
        ngxshm_ring_wait_space(&ch->tx);
        f = ngxshm_ring_reserve(&ch->tx, hdr->len, &bad);
    }

    if (bad) {
        ngxshm_chan_fail(ch, "ring 1 head out of range");
        return -1;
    }

    if (f == NULL) {
        return 0;
    }

    memcpy(f, hdr, sizeof(ngxshm_frame_t));

    if (hdr->len != 0) {
        memcpy((unsigned char *) f + sizeof(ngxshm_frame_t), data, hdr->len);
    }

    if (ngxshm_ring_commit(&ch->tx, hdr->len)) {
        ngxshm_chan_wake_nginx(ch);
    }

    return 1;
}


/* send a frame now or, if the ring is full or frames already wait,
 * after them; 0 or -ECANCELED / -ENOMEM (the channel has failed) */
int
ngxshm_chan_send(ngxshm_chan_t *ch, const ngxshm_frame_t *hdr,
    const void *data)
{
    int             rc;
    size_t          need, cap;
    unsigned char  *q;

    if (ch->state != NGXSHM_CH_OPEN) {
        return -ECANCELED;
    }

    if (ch->qlen == 0) {
        rc = ngxshm_chan_put(ch, hdr, data);

        if (rc != 0) {
            return rc > 0 ? 0 : -ECANCELED;
        }
    }

    need = sizeof(ngxshm_frame_t) + hdr->len;

    if (ch->qstart + ch->qlen + need > ch->qcap) {
        if (ch->qstart != 0) {
            memmove(ch->q, ch->q + ch->qstart, ch->qlen);
            ch->qstart = 0;
        }

        if (ch->qlen + need > ch->qcap) {
            cap = ch->qcap ? ch->qcap * 2 : 4096;

            while (cap < ch->qlen + need) {
                cap *= 2;
            }

            q = realloc(ch->q, cap);
            if (q == NULL) {
                ngxshm_chan_fail(ch, "out of memory queueing a frame");
                return -ENOMEM;
            }

            ch->q = q;
            ch->qcap = cap;
        }
    }

    q = ch->q + ch->qstart + ch->qlen;
    memcpy(q, hdr, sizeof(ngxshm_frame_t));

    if (hdr->len != 0) {
        memcpy(q + sizeof(ngxshm_frame_t), data, hdr->len);
    }

    ch->qlen += need;

    return 0;
}


/* write response body frames of r within its credit and the ring's room,
 * never past queued frames; the count written or -ECANCELED */
ssize_t
ngxshm_chan_send_body(ngxshm_chan_t *ch, ngxshm_request_t *r,
    const unsigned char *data, size_t len)
{
    int             rc;
    size_t          sent, n;
    ngxshm_frame_t  hdr;

    if (ch->state != NGXSHM_CH_OPEN) {
        return -ECANCELED;
    }

    sent = 0;

    /*
     * first come, first served: a stream that finds others waiting for
     * room waits after them, or new requests answered in this batch would
     * take the room the sidecar's oldest streams wait for
     */

    if (ch->qlen != 0 || !ngxshm_link_empty(&ch->waiters)) {
        goto wait;
    }

    while (sent < len && r->out_credit > 0) {
        n = len - sent;

        if (n > r->out_credit) {
            n = r->out_credit;
        }

        if (n > ch->max_frame) {
            n = ch->max_frame;
        }

        memset(&hdr, 0, sizeof(hdr));
        hdr.len = (uint32_t) n;
        hdr.type = NGXSHM_RESP_BODY;
        hdr.stream = r->slot;
        hdr.gen = r->gen;

        rc = ngxshm_chan_put(ch, &hdr, data + sent);

        if (rc < 0) {
            return -ECANCELED;
        }

        if (rc == 0) {
            goto wait;
        }

        sent += n;
        r->out_credit -= (uint32_t) n;
    }

    return sent;

wait:

    if (!ngxshm_linked(&r->wait)) {
        ngxshm_link_add(&ch->waiters, &r->wait);
    }

    return sent;
}


/* ring 1 may have room: send queued frames, then wake the waiters */
static void
ngxshm_chan_flush(ngxshm_chan_t *ch)
{
    int                rc;
    ngxshm_link_t      w;
    ngxshm_frame_t     hdr;
    ngxshm_request_t  *r;

    while (ch->qlen != 0) {
        memcpy(&hdr, ch->q + ch->qstart, sizeof(hdr));

        rc = ngxshm_chan_put(ch, &hdr, ch->q + ch->qstart + sizeof(hdr));

        if (rc <= 0) {
            return;
        }

        ch->qstart += sizeof(hdr) + hdr.len;
        ch->qlen -= sizeof(hdr) + hdr.len;
    }

    ch->qstart = 0;

    if (ngxshm_link_empty(&ch->waiters)) {
        return;
    }

    /* take the list: whoever blocks again joins a fresh one */
    w = ch->waiters;
    w.next->prev = &w;
    w.prev->next = &w;
    ngxshm_link_init(&ch->waiters);

    while (!ngxshm_link_empty(&w)) {
        r = ngxshm_link_data(w.next, ngxshm_request_t, wait);
        ngxshm_link_del(&r->wait);

        if (r->obuf != NULL) {
            ngxshm_req_pump(r);

        } else {
            ngxshm_req_notify(r, NGXSHM_EV_WRITABLE);
        }
    }
}
