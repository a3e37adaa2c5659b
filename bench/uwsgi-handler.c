/*
 * Copyright (C) ngxshm authors
 *
 * uwsgi-handler: the uwsgi backend of the benchmark (bench/run.sh), a C
 * request handler for Debian's uwsgi-core through its symcall plugin
 * (modifier1 18), so that the uwsgi contender runs C code as the others
 * do rather than a Python interpreter.  Same workloads as
 * bench/sidecar.c:
 *
 *   GET  /N      N bytes ("N" decimal with an optional k or m suffix:
 *                /5, /1k, /64k, /1m) of a body made once, Content-Length
 *   POST /echo   the request body, read whole, then written back
 *
 * Build (run.sh does it):
 *   uwsgi --dot-h > uwsgi.h
 *   cc $(uwsgi --cflags) -shared -fPIC -o uwsgi-handler.so \
 *       bench/uwsgi-handler.c
 * Run:
 *   uwsgi --plugin symcall --dlopen ./uwsgi-handler.so \
 *       --symcall bench_uwsgi_request --socket PATH ...
 */

#include "uwsgi.h"


#define BENCH_MAX_BODY  (16 * 1024 * 1024)


static char  *bench_body;
static char  *bench_echo;


static long
bench_size(const char *p, size_t len)
{
    size_t  i;
    long    n;

    if (len < 2 || p[0] != '/') {
        return -1;
    }

    n = 0;

    for (i = 1; i < len && p[i] >= '0' && p[i] <= '9'; i++) {
        n = n * 10 + (p[i] - '0');
        if (n > BENCH_MAX_BODY) {
            return -1;
        }
    }

    if (i == 1) {
        return -1;
    }

    if (i + 1 == len && (p[i] == 'k' || p[i] == 'K')) {
        n *= 1024;
        i++;

    } else if (i + 1 == len && (p[i] == 'm' || p[i] == 'M')) {
        n *= 1024 * 1024;
        i++;
    }

    if (i != len || n > BENCH_MAX_BODY) {
        return -1;
    }

    return n;
}


int bench_uwsgi_request(struct wsgi_request *wsgi_req);


int
bench_uwsgi_request(struct wsgi_request *wsgi_req)
{
    long      size, i;
    char     *p;
    size_t    len, got;
    ssize_t   n;

    if (bench_body == NULL) {
        if (bench_echo == NULL) {
            bench_echo = malloc(BENCH_MAX_BODY);
            if (bench_echo == NULL) {
                return -1;
            }
        }

        bench_body = malloc(BENCH_MAX_BODY);
        if (bench_body == NULL) {
            return -1;
        }

        for (i = 0; i < BENCH_MAX_BODY; i++) {
            bench_body[i] = 'a' + i % 26;
        }
    }

    /* the symcall plugin hands the request over unparsed */
    if (uwsgi_parse_vars(wsgi_req) != 0) {
        return -1;
    }

    if (wsgi_req->method_len == 4 && memcmp(wsgi_req->method, "POST", 4) == 0)
    {
        /* the whole body first: nginx reads no response before it has
         * sent the request, so echoing while reading deadlocks once the
         * socket buffers are full */
        len = wsgi_req->post_cl;
        if (len > BENCH_MAX_BODY) {
            return -1;
        }

        got = 0;
        while (got < len) {
            n = 0;      /* an accumulator: uwsgi adds to it */
            p = uwsgi_request_body_read(wsgi_req, len - got, &n);
            if (p == NULL || n <= 0) {
                break;
            }

            memcpy(bench_echo + got, p, n);
            got += n;
        }

        uwsgi_response_prepare_headers(wsgi_req, "200 OK", 6);
        uwsgi_response_add_header(wsgi_req, "Content-Type", 12,
                                  "text/plain", 10);
        uwsgi_response_add_content_length(wsgi_req, got);
        uwsgi_response_write_body_do(wsgi_req, bench_echo, got);

        return UWSGI_OK;
    }

    size = bench_size(wsgi_req->path_info, wsgi_req->path_info_len);

    if (size < 0) {
        uwsgi_response_prepare_headers(wsgi_req, "404 Not Found", 13);
        uwsgi_response_add_header(wsgi_req, "Content-Type", 12,
                                  "text/plain", 10);
        uwsgi_response_write_body_do(wsgi_req, "not found\n", 10);
        return UWSGI_OK;
    }

    uwsgi_response_prepare_headers(wsgi_req, "200 OK", 6);
    uwsgi_response_add_header(wsgi_req, "Content-Type", 12, "text/plain", 10);
    uwsgi_response_add_content_length(wsgi_req, size);
    uwsgi_response_write_body_do(wsgi_req, bench_body, size);

    return UWSGI_OK;
}
