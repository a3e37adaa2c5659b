/*
 * Copyright (C) ngxshm authors
 *
 * ngxshm-bench: the libngxshm responder of the benchmark (bench/run.sh).
 * The example ngxshm-echo computes generated bodies byte by byte and
 * keeps a locked list of live requests; this one does the least work a
 * real application would, as the other benchmark backends do:
 *
 *   GET  /N      N bytes of a body made once at start-up ("N" is a
 *                decimal byte count, with an optional k or m suffix:
 *                /5, /1k, /64k, /1m), Content-Length set;
 *                up to 16 KiB in one ngxshm_respond() call, larger
 *                bodies streamed with ngxshm_response_write() within
 *                the stream's credit
 *   POST /echo   the request body, streamed back as it arrives, with the
 *                request's Content-Length as the response's; written
 *                from the library's copy in place (ngxshm_request_peek())
 *
 * Build:   cc -O2 -Iinclude -o ngxshm-bench bench/sidecar.c \
 *              build/libngxshm.a -lpthread
 * Run:     ngxshm-bench [-t THREADS] SOCKET     (SIGTERM/SIGINT stop it)
 */

#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <ngxshm.h>


#define BENCH_MAX_BODY   (16 * 1024 * 1024)
#define BENCH_ONE_SHOT   (16 * 1024)


typedef struct {
    ngxshm_request_t  *r;
    size_t             size;      /* generated body: total */
    size_t             off;       /* generated body: sent */
    int                echo;
} bench_req_t;


static ngxshm_server_t  *server;
static char             *body;


static void
on_signal(int signo)
{
    (void) signo;

    ngxshm_server_stop(server);
}


/* "/5", "/1k", "/64k", "/1m": the byte count, or -1 */
static long
bench_size(ngxshm_str_t path)
{
    size_t  i;
    long    n;

    if (path.len < 2 || path.data[0] != '/') {
        return -1;
    }

    n = 0;

    for (i = 1; i < path.len && path.data[i] >= '0' && path.data[i] <= '9';
         i++)
    {
        n = n * 10 + (path.data[i] - '0');
        if (n > BENCH_MAX_BODY) {
            return -1;
        }
    }

    if (i == 1) {
        return -1;
    }

    if (i + 1 == path.len && (path.data[i] == 'k' || path.data[i] == 'K')) {
        n *= 1024;
        i++;

    } else if (i + 1 == path.len
               && (path.data[i] == 'm' || path.data[i] == 'M'))
    {
        n *= 1024 * 1024;
        i++;
    }

    if (i != path.len || n > BENCH_MAX_BODY) {
        return -1;
    }

    return n;
}


static void
bench_done(bench_req_t *b, int ok)
{
    if (ok) {
        ngxshm_response_end(b->r);

    } else {
        ngxshm_request_abort(b->r);
    }

    free(b);
}


/* move bytes until the request or the response has to wait */
static void
bench_pump(bench_req_t *b)
{
    ssize_t      n;
    const void  *data;

    for ( ;; ) {
        if (!b->echo) {
            if (b->off == b->size) {
                bench_done(b, 1);
                return;
            }

            n = ngxshm_response_write(b->r, body + b->off, b->size - b->off);
            if (n == -EAGAIN) {
                return;                 /* NGXSHM_EV_WRITABLE follows */
            }

            if (n < 0) {
                bench_done(b, 0);
                return;
            }

            b->off += n;
            continue;
        }

        /* the echo writes from the body in place, consuming what went */

        n = ngxshm_request_peek(b->r, &data);
        if (n == -EAGAIN) {
            return;                     /* NGXSHM_EV_READABLE follows */
        }

        if (n <= 0) {
            bench_done(b, n == 0);
            return;
        }

        n = ngxshm_response_write(b->r, data, n);
        if (n == -EAGAIN) {
            return;                     /* NGXSHM_EV_WRITABLE follows */
        }

        if (n < 0) {
            bench_done(b, 0);
            return;
        }

        (void) ngxshm_request_consume(b->r, n);
    }
}


static void
bench_event(ngxshm_request_t *r, unsigned events, void *arg)
{
    (void) r;

    if (events & NGXSHM_EV_CANCEL) {
        bench_done(arg, 0);
        return;
    }

    bench_pump(arg);
}


static void
bench_handler(ngxshm_request_t *r, void *arg)
{
    int              echo;
    long             size;
    size_t           nh;
    char             length[32];
    bench_req_t     *b;
    ngxshm_str_t     m, path, cl;
    ngxshm_header_t  h[2];

    (void) arg;

    h[0].name.data = "Content-Type";
    h[0].name.len = sizeof("Content-Type") - 1;
    h[0].value.data = "text/plain";
    h[0].value.len = sizeof("text/plain") - 1;

    m = ngxshm_request_field(r, NGXSHM_FIELD_METHOD);
    path = ngxshm_request_field(r, NGXSHM_FIELD_PATH);

    echo = (m.len == 4 && memcmp(m.data, "POST", 4) == 0);
    size = echo ? 0 : bench_size(path);

    if (size < 0) {
        ngxshm_respond(r, 404, h, 1, "not found\n", 10);
        return;
    }

    nh = 1;

    if (echo) {
        cl = ngxshm_request_header(r, "Content-Length");

        if (cl.data != NULL && cl.len < sizeof(length)) {
            memcpy(length, cl.data, cl.len);
            length[cl.len] = '\0';
            nh = 2;
        }

    } else {
        snprintf(length, sizeof(length), "%ld", size);
        nh = 2;
    }

    h[1].name.data = "Content-Length";
    h[1].name.len = sizeof("Content-Length") - 1;
    h[1].value.data = length;
    h[1].value.len = strlen(length);

    if (!echo && size <= BENCH_ONE_SHOT) {
        ngxshm_respond(r, 200, h, nh, body, size);
        return;
    }

    b = malloc(sizeof(bench_req_t));
    if (b == NULL) {
        ngxshm_request_abort(r);
        return;
    }

    memset(b, 0, sizeof(bench_req_t));
    b->r = r;
    b->echo = echo;
    b->size = size;

    ngxshm_request_set_callback(r, bench_event, b);

    if (ngxshm_response_start(r, 200, h, nh) != 0) {
        bench_done(b, 0);
        return;
    }

    bench_pump(b);
}


int
main(int argc, char **argv)
{
    int               c, rc;
    size_t            i;
    ngxshm_config_t   cfg;
    struct sigaction  sa;

    memset(&cfg, 0, sizeof(cfg));
    cfg.handler = bench_handler;
    cfg.threads = 1;

    while ((c = getopt(argc, argv, "t:")) != -1) {
        switch (c) {
        case 't':
            cfg.threads = (unsigned) strtoul(optarg, NULL, 10);
            break;
        default:
            fprintf(stderr, "usage: ngxshm-bench [-t THREADS] SOCKET\n");
            return 2;
        }
    }

    if (optind != argc - 1) {
        fprintf(stderr, "usage: ngxshm-bench [-t THREADS] SOCKET\n");
        return 2;
    }

    body = malloc(BENCH_MAX_BODY);
    if (body == NULL) {
        return 1;
    }

    for (i = 0; i < BENCH_MAX_BODY; i++) {
        body[i] = 'a' + i % 26;
    }

    rc = ngxshm_server_create(&server, &cfg);
    if (rc != 0) {
        fprintf(stderr, "ngxshm-bench: ngxshm_server_create(): %s\n",
                strerror(-rc));
        return 1;
    }

    rc = ngxshm_server_listen(server, argv[optind]);
    if (rc != 0) {
        fprintf(stderr, "ngxshm-bench: listen on \"%s\": %s\n",
                argv[optind], strerror(-rc));
        ngxshm_server_destroy(server);
        return 1;
    }

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    rc = ngxshm_server_run(server);
    if (rc != 0) {
        fprintf(stderr, "ngxshm-bench: ngxshm_server_run(): %s\n",
                strerror(-rc));
    }

    ngxshm_server_destroy(server);
    free(body);

    return rc == 0 ? 0 : 1;
}
