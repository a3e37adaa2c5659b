/*
 * Copyright (C) ngxshm authors
 *
 * ngxshm-echo: a sidecar that answers every request with what it got.
 * It shows the streaming side of libngxshm: the request body is taken as
 * it arrives, in place (ngxshm_request_peek(), no copy of its own), and
 * written back as the response body within the credit, driven by the
 * event callback, so that bodies of any size pass through the library's
 * window of memory per request.  It also shows ngxshm_request_post()
 * from a helper thread (delayed answers) and a graceful stop on signals.
 *
 * Build:   make examples          (build/examples/ngxshm-echo), or
 *          cc -o ngxshm-echo echo.c -lngxshm -lpthread
 * Run:     ngxshm-echo [-l] [-t THREADS] [-m MODE] [-u UID] [-g GID] SOCKET
 *          -t  loop threads (default 1), -m  socket mode in octal (0600),
 *          -u  peer uid allowed besides root (default: our euid),
 *          -g  peer gid allowed too, -l  log "start METHOD URI" when the
 *          handler is called, "answer METHOD URI" when the response head
 *          is sent and "cancel METHOD URI" when it learns that nginx
 *          gave a request up (an event or -ECANCELED), to stderr.
 *          SIGTERM or SIGINT stops gracefully.
 *
 * The response: status 200 and the request body, byte for byte, with
 *   X-Echo-Method: the method
 *   X-Echo-URI: the raw request URI with its query
 *   X-Echo-Header-Count: the number of request headers
 *
 * Request headers that change it (used by the tests):
 *   X-Echo-Status: N      status N (200..599; otherwise 200)
 *   X-Echo-Delay-Ms: N    send the response head N ms later (a timer
 *                         thread posts the request back to its loop)
 *   X-Echo-Size: BYTES    instead of the request body, answer BYTES bytes
 *                         "abc...zabc..." (byte i is 'a' + i % 26), with
 *                         Content-Length, streamed within the credit
 *   X-Echo-Chunks: N      with X-Echo-Size: write in pieces of
 *                         ceil(BYTES / N) bytes (at most 64 KiB each)
 *   X-Echo-Pace-Ms: N     wait N ms after each piece of the response body
 *                         (a piece of X-Echo-Size, or one read of the
 *                         request body of up to 64 KiB): a slow handler,
 *                         that produces slowly and reads the body slowly
 *   X-Echo-Headers: 1     instead of the body, answer a text dump:
 *                           "NAME: VALUE\n" for each request header,
 *                           in order;
 *                           "param NAME=VALUE\n" for each shm_param,
 *                           in the configuration's order;
 *                           "field KIND=VALUE\n" for KIND in method, uri,
 *                           path, query, protocol, remote_addr,
 *                           remote_port, server_addr, server_port,
 *                           server_name, scheme (in this order)
 *   X-Echo-Set-Cookie: N  add N (at most 3) Set-Cookie headers:
 *                         "a=1; Path=/", "b=2; Path=/", "c=3; HttpOnly"
 */

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <ngxshm.h>


#define ECHO_BUF  65536
#define ECHO_COOKIES  3


static const char  *echo_cookies[ECHO_COOKIES] = {
    "a=1; Path=/", "b=2; Path=/", "c=3; HttpOnly"
};

enum {
    ECHO_BODY,
    ECHO_GEN,
    ECHO_DUMP
};


typedef struct echo_s  echo_t;

struct echo_s {
    ngxshm_request_t  *r;
    echo_t            *prev;          /* all live ones, for exit */
    echo_t            *next;
    echo_t            *tnext;         /* timer list */
    uint64_t           due;           /* ms, CLOCK_MONOTONIC */
    uint64_t           pace;          /* ms after each body piece */

    int                mode;
    unsigned           status;
    unsigned           timer:1;       /* a timer or its post is pending */
    unsigned           cancelled:1;
    unsigned           started:1;
    unsigned           in_eof:1;

    uint64_t           gen_size;
    uint64_t           gen_pos;
    size_t             chunk;

    char              *dump;
    const char        *out;
    size_t             out_len;
    size_t             out_off;
    char               buf[ECHO_BUF];
};


static void echo_handler(ngxshm_request_t *r, void *arg);
static void echo_event(ngxshm_request_t *r, unsigned events, void *arg);
static void echo_timer_fired(ngxshm_request_t *r, void *arg);
static void echo_start(echo_t *e);
static void echo_pump(echo_t *e);
static void echo_done(echo_t *e, int ok);
static void echo_log(echo_t *e, const char *what);
static char *echo_dump(ngxshm_request_t *r, size_t *len);
static int echo_number(ngxshm_str_t s, uint64_t max, uint64_t *n);
static void *timer_thread(void *arg);
static void timer_add(echo_t *e, uint64_t ms);


static ngxshm_server_t  *server;

static pthread_mutex_t   live_mu = PTHREAD_MUTEX_INITIALIZER;
static echo_t           *live;

static pthread_mutex_t   timer_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t    timer_cv;
static echo_t           *timers;
static int               timer_quit;

static int               log_requests;


static uint64_t
now_ms(void)
{
    struct timespec  ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);

    return (uint64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}


static void
on_signal(int signo)
{
    (void) signo;

    ngxshm_server_stop(server);
}


static void
echo_handler(ngxshm_request_t *r, void *arg)
{
    uint64_t      n;
    echo_t       *e;
    ngxshm_str_t  v;

    (void) arg;

    e = calloc(1, sizeof(echo_t));
    if (e == NULL) {
        ngxshm_request_abort(r);
        return;
    }

    e->r = r;
    e->mode = ECHO_BODY;
    e->status = 200;

    pthread_mutex_lock(&live_mu);
    e->next = live;
    if (live != NULL) {
        live->prev = e;
    }
    live = e;
    pthread_mutex_unlock(&live_mu);

    v = ngxshm_request_header(r, "X-Echo-Status");
    if (v.data != NULL && echo_number(v, 599, &n) == 0 && n >= 200) {
        e->status = (unsigned) n;
    }

    v = ngxshm_request_header(r, "X-Echo-Size");
    if (v.data != NULL && echo_number(v, UINT64_MAX, &n) == 0) {
        e->mode = ECHO_GEN;
        e->gen_size = n;
        e->chunk = ECHO_BUF;

        v = ngxshm_request_header(r, "X-Echo-Chunks");
        if (v.data != NULL && echo_number(v, UINT64_MAX, &n) == 0 && n > 0) {
            n = (e->gen_size + n - 1) / n;
            e->chunk = (n == 0) ? 1 : (n < ECHO_BUF ? n : ECHO_BUF);
        }
    }

    v = ngxshm_request_header(r, "X-Echo-Headers");
    if (v.len == 1 && v.data[0] == '1') {
        e->mode = ECHO_DUMP;
    }

    v = ngxshm_request_header(r, "X-Echo-Pace-Ms");
    if (v.data != NULL && echo_number(v, 3600000, &n) == 0) {
        e->pace = n;
    }

    echo_log(e, "start");

    ngxshm_request_set_callback(r, echo_event, e);

    v = ngxshm_request_header(r, "X-Echo-Delay-Ms");
    if (v.data != NULL && echo_number(v, 3600000, &n) == 0 && n > 0) {
        e->timer = 1;
        timer_add(e, n);
        return;
    }

    echo_start(e);
}


static void
echo_event(ngxshm_request_t *r, unsigned events, void *arg)
{
    echo_t  *e;

    (void) r;

    e = arg;

    if (events & NGXSHM_EV_CANCEL) {
        echo_log(e, "cancel");

        if (e->timer) {
            /* the timer's post completes it: r must live until then */
            e->cancelled = 1;
            return;
        }

        echo_done(e, 0);
        return;
    }

    if (e->started && !e->timer) {
        echo_pump(e);
    }
}


static void
echo_timer_fired(ngxshm_request_t *r, void *arg)
{
    echo_t  *e;

    (void) r;

    e = arg;
    e->timer = 0;

    if (e->cancelled) {
        echo_done(e, 0);
        return;
    }

    if (e->started) {
        echo_pump(e);
        return;
    }

    echo_start(e);
}


static void
echo_start(echo_t *e)
{
    int              rc;
    size_t           n, i, cookies;
    char             count[32], length[32];
    ngxshm_str_t     v;
    ngxshm_header_t  h[4 + ECHO_COOKIES];

    h[0].name.data = "X-Echo-Method";
    h[0].name.len = sizeof("X-Echo-Method") - 1;
    h[0].value = ngxshm_request_field(e->r, NGXSHM_FIELD_METHOD);

    h[1].name.data = "X-Echo-URI";
    h[1].name.len = sizeof("X-Echo-URI") - 1;
    h[1].value = ngxshm_request_field(e->r, NGXSHM_FIELD_URI);

    snprintf(count, sizeof(count), "%zu",
             ngxshm_request_header_count(e->r));
    h[2].name.data = "X-Echo-Header-Count";
    h[2].name.len = sizeof("X-Echo-Header-Count") - 1;
    h[2].value.data = count;
    h[2].value.len = strlen(count);

    n = 3;

    if (e->mode == ECHO_GEN) {
        snprintf(length, sizeof(length), "%llu",
                 (unsigned long long) e->gen_size);
        h[3].name.data = "Content-Length";
        h[3].name.len = sizeof("Content-Length") - 1;
        h[3].value.data = length;
        h[3].value.len = strlen(length);
        n = 4;

    } else if (e->mode == ECHO_DUMP) {
        e->dump = echo_dump(e->r, &e->out_len);
        if (e->dump == NULL) {
            echo_done(e, 0);
            return;
        }

        e->out = e->dump;
        e->out_off = 0;
    }

    v = ngxshm_request_header(e->r, "X-Echo-Set-Cookie");
    cookies = v.data ? strtoul(v.data, NULL, 10) : 0;

    for (i = 0; i < cookies && i < ECHO_COOKIES; i++) {
        h[n].name.data = "Set-Cookie";
        h[n].name.len = sizeof("Set-Cookie") - 1;
        h[n].value.data = echo_cookies[i];
        h[n].value.len = strlen(echo_cookies[i]);
        n++;
    }

    rc = ngxshm_response_start(e->r, e->status, h, n);
    if (rc != 0) {
        if (rc == -ECANCELED) {
            echo_log(e, "cancel");
        }

        echo_done(e, 0);
        return;
    }

    echo_log(e, "answer");

    e->started = 1;
    echo_pump(e);
}


/* move bytes until the request or the response has to wait */
static void
echo_pump(echo_t *e)
{
    size_t       i, n;
    ssize_t      rc;
    const void  *data;

    for ( ;; ) {
        if (e->out_off < e->out_len) {

            if (e->out == NULL) {
                /* echoed in place: the chunk's rest is the body waiting */

                rc = ngxshm_request_peek(e->r, &data);

                if (rc < (ssize_t) (e->out_len - e->out_off)) {
                    if (rc == -ECANCELED) {
                        echo_log(e, "cancel");
                    }

                    echo_done(e, 0);
                    return;
                }

            } else {
                data = e->out + e->out_off;
            }

            rc = ngxshm_response_write(e->r, data, e->out_len - e->out_off);
            if (rc == -EAGAIN) {
                return;         /* NGXSHM_EV_WRITABLE follows */
            }

            if (rc < 0) {
                if (rc == -ECANCELED) {
                    echo_log(e, "cancel");
                }

                echo_done(e, 0);
                return;
            }

            if (e->out == NULL) {
                (void) ngxshm_request_consume(e->r, rc);
            }

            e->out_off += rc;

            if (e->out_off == e->out_len && e->pace > 0) {
                e->out_len = 0;
                e->out_off = 0;
                e->timer = 1;
                timer_add(e, e->pace);
                return;
            }

            continue;
        }

        switch (e->mode) {

        case ECHO_BODY:
            if (e->in_eof) {
                echo_done(e, 1);
                return;
            }

            rc = ngxshm_request_peek(e->r, &data);
            if (rc == -EAGAIN) {
                return;         /* NGXSHM_EV_READABLE follows */
            }

            if (rc < 0) {
                if (rc == -ECANCELED) {
                    echo_log(e, "cancel");
                }

                echo_done(e, 0);
                return;
            }

            if (rc == 0) {
                e->in_eof = 1;
                continue;
            }

            /* chunks of at most ECHO_BUF, as the paced echo sends them */
            e->out = NULL;
            e->out_len = ((size_t) rc < sizeof(e->buf)) ? (size_t) rc
                                                        : sizeof(e->buf);
            e->out_off = 0;
            break;

        case ECHO_GEN:
            if (e->gen_pos == e->gen_size) {
                echo_done(e, 1);
                return;
            }

            n = e->chunk;
            if (n > e->gen_size - e->gen_pos) {
                n = e->gen_size - e->gen_pos;
            }

            for (i = 0; i < n; i++) {
                e->buf[i] = 'a' + (e->gen_pos + i) % 26;
            }

            e->gen_pos += n;
            e->out = e->buf;
            e->out_len = n;
            e->out_off = 0;
            break;

        default: /* ECHO_DUMP */
            echo_done(e, 1);
            return;
        }
    }
}


/* complete the request (end or abort) and forget it */
static void
echo_done(echo_t *e, int ok)
{
    if (ok) {
        ngxshm_response_end(e->r);

    } else {
        ngxshm_request_abort(e->r);
    }

    pthread_mutex_lock(&live_mu);
    if (e->prev != NULL) {
        e->prev->next = e->next;
    } else {
        live = e->next;
    }
    if (e->next != NULL) {
        e->next->prev = e->prev;
    }
    pthread_mutex_unlock(&live_mu);

    free(e->dump);
    free(e);
}


static void
echo_log(echo_t *e, const char *what)
{
    ngxshm_str_t  m, u;

    if (!log_requests) {
        return;
    }

    m = ngxshm_request_field(e->r, NGXSHM_FIELD_METHOD);
    u = ngxshm_request_field(e->r, NGXSHM_FIELD_URI);

    /* one line in one write: the tests read it while we run */
    fprintf(stderr, "ngxshm-echo: %s %.*s %.*s\n", what, (int) m.len, m.data,
            (int) u.len, u.data);
}


static int
echo_append(char **buf, size_t *len, size_t *cap, const char *p, size_t n)
{
    char    *b;
    size_t   c;

    if (*len + n + 1 > *cap) {
        c = *cap ? *cap : 1024;

        while (c < *len + n + 1) {
            c *= 2;
        }

        b = realloc(*buf, c);
        if (b == NULL) {
            return -1;
        }

        *buf = b;
        *cap = c;
    }

    memcpy(*buf + *len, p, n);
    *len += n;
    (*buf)[*len] = '\0';

    return 0;
}


static char *
echo_dump(ngxshm_request_t *r, size_t *lenp)
{
    int            rc;
    char          *b;
    size_t         i, len, cap;
    ngxshm_str_t   n, v;
    static const char  *kinds[] = {
        "method", "uri", "path", "query", "protocol", "remote_addr",
        "remote_port", "server_addr", "server_port", "server_name", "scheme"
    };

    b = NULL;
    len = 0;
    cap = 0;
    rc = 0;

    for (i = 0; ngxshm_request_header_at(r, i, &n, &v) == 0; i++) {
        rc |= echo_append(&b, &len, &cap, n.data, n.len);
        rc |= echo_append(&b, &len, &cap, ": ", 2);
        rc |= echo_append(&b, &len, &cap, v.data, v.len);
        rc |= echo_append(&b, &len, &cap, "\n", 1);
    }

    for (i = 0; ngxshm_request_param_at(r, i, &n, &v) == 0; i++) {
        rc |= echo_append(&b, &len, &cap, "param ", 6);
        rc |= echo_append(&b, &len, &cap, n.data, n.len);
        rc |= echo_append(&b, &len, &cap, "=", 1);
        rc |= echo_append(&b, &len, &cap, v.data, v.len);
        rc |= echo_append(&b, &len, &cap, "\n", 1);
    }

    for (i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++) {
        v = ngxshm_request_field(r, NGXSHM_FIELD_METHOD + i);
        rc |= echo_append(&b, &len, &cap, "field ", 6);
        rc |= echo_append(&b, &len, &cap, kinds[i], strlen(kinds[i]));
        rc |= echo_append(&b, &len, &cap, "=", 1);
        rc |= echo_append(&b, &len, &cap, v.data, v.len);
        rc |= echo_append(&b, &len, &cap, "\n", 1);
    }

    if (rc != 0) {
        free(b);
        return NULL;
    }

    *lenp = len;

    return b;
}


static int
echo_number(ngxshm_str_t s, uint64_t max, uint64_t *n)
{
    size_t    i;
    uint64_t  v;

    if (s.len == 0 || s.len > 19) {
        return -1;
    }

    v = 0;

    for (i = 0; i < s.len; i++) {
        if (s.data[i] < '0' || s.data[i] > '9') {
            return -1;
        }

        v = v * 10 + (s.data[i] - '0');
    }

    if (v > max) {
        return -1;
    }

    *n = v;

    return 0;
}


/* timers: one thread, a list sorted by due time */

static void
timer_add(echo_t *e, uint64_t ms)
{
    echo_t  **pp;

    e->due = now_ms() + ms;

    pthread_mutex_lock(&timer_mu);

    for (pp = &timers; *pp != NULL && (*pp)->due <= e->due;
         pp = &(*pp)->tnext)
    {
        /* void */
    }

    e->tnext = *pp;
    *pp = e;

    pthread_cond_signal(&timer_cv);
    pthread_mutex_unlock(&timer_mu);
}


static void *
timer_thread(void *arg)
{
    echo_t           *e;
    uint64_t          now;
    struct timespec   ts;

    (void) arg;

    pthread_mutex_lock(&timer_mu);

    while (!timer_quit) {
        if (timers == NULL) {
            pthread_cond_wait(&timer_cv, &timer_mu);
            continue;
        }

        now = now_ms();

        if (timers->due > now) {
            clock_gettime(CLOCK_MONOTONIC, &ts);
            ts.tv_sec += (timers->due - now) / 1000;
            ts.tv_nsec += ((timers->due - now) % 1000) * 1000000;

            if (ts.tv_nsec >= 1000000000) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000;
            }

            pthread_cond_timedwait(&timer_cv, &timer_mu, &ts);
            continue;
        }

        e = timers;
        timers = e->tnext;

        pthread_mutex_unlock(&timer_mu);

        if (ngxshm_request_post(e->r, echo_timer_fired, e) != 0) {
            fprintf(stderr, "ngxshm-echo: ngxshm_request_post() failed\n");
        }

        pthread_mutex_lock(&timer_mu);
    }

    pthread_mutex_unlock(&timer_mu);

    return NULL;
}


static void
usage(void)
{
    fprintf(stderr, "usage: ngxshm-echo [-l] [-t THREADS] [-m MODE] "
                    "[-u UID] [-g GID] SOCKET\n");
    exit(2);
}


int
main(int argc, char **argv)
{
    int                 c, rc;
    echo_t             *e;
    sigset_t            set, old;
    pthread_t           tid;
    pthread_condattr_t  ca;
    ngxshm_config_t     cfg;
    struct sigaction    sa;

    memset(&cfg, 0, sizeof(cfg));
    cfg.handler = echo_handler;
    cfg.threads = 1;
    cfg.allow_uid = -1;
    cfg.allow_gid = -1;

    while ((c = getopt(argc, argv, "lt:m:u:g:")) != -1) {
        switch (c) {
        case 'l':
            log_requests = 1;
            break;
        case 't':
            cfg.threads = (unsigned) strtoul(optarg, NULL, 10);
            break;
        case 'm':
            cfg.socket_mode = (unsigned) strtoul(optarg, NULL, 8);
            break;
        case 'u':
            cfg.allow_uid = strtol(optarg, NULL, 10);
            break;
        case 'g':
            cfg.allow_gid = strtol(optarg, NULL, 10);
            break;
        default:
            usage();
        }
    }

    if (optind != argc - 1) {
        usage();
    }

    rc = ngxshm_server_create(&server, &cfg);
    if (rc != 0) {
        fprintf(stderr, "ngxshm-echo: ngxshm_server_create(): %s\n",
                strerror(-rc));
        return 1;
    }

    rc = ngxshm_server_listen(server, argv[optind]);
    if (rc != 0) {
        fprintf(stderr, "ngxshm-echo: listen on \"%s\": %s\n", argv[optind],
                strerror(-rc));
        ngxshm_server_destroy(server);
        return 1;
    }

    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&timer_cv, &ca);
    pthread_condattr_destroy(&ca);

    /* the timer thread takes no signals; the loops do */
    sigfillset(&set);
    pthread_sigmask(SIG_BLOCK, &set, &old);
    rc = pthread_create(&tid, NULL, timer_thread, NULL);
    pthread_sigmask(SIG_SETMASK, &old, NULL);

    if (rc != 0) {
        fprintf(stderr, "ngxshm-echo: pthread_create(): %s\n", strerror(rc));
        ngxshm_server_destroy(server);
        return 1;
    }

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    fprintf(stderr, "ngxshm-echo: listening on \"%s\"\n", argv[optind]);

    rc = ngxshm_server_run(server);
    if (rc != 0) {
        fprintf(stderr, "ngxshm-echo: ngxshm_server_run(): %s\n",
                strerror(-rc));
    }

    pthread_mutex_lock(&timer_mu);
    timer_quit = 1;
    pthread_cond_signal(&timer_cv);
    pthread_mutex_unlock(&timer_mu);
    pthread_join(tid, NULL);

    ngxshm_server_destroy(server);

    /* requests left after the drain time: the server freed them */
    while (live != NULL) {
        e = live;
        live = e->next;
        free(e->dump);
        free(e);
    }

    return rc == 0 ? 0 : 1;
}
