/*
 * Copyright (C) ngxshm authors
 *
 * fcgi-responder: the FastCGI backend of the benchmark (bench/run.sh),
 * a minimal single-threaded libfcgi responder with the same workloads as
 * bench/sidecar.c:
 *
 *   GET  /N      N bytes ("N" decimal with an optional k or m suffix:
 *                /5, /1k, /64k, /1m) of a body made once at start-up,
 *                Content-Length set
 *   POST /echo   the request body (CONTENT_LENGTH bytes), read whole,
 *                then written back
 *
 * The path is taken from DOCUMENT_URI (fastcgi_params), else SCRIPT_NAME.
 * It is run under spawn-fcgi, which passes the listening socket as fd 0.
 *
 * Build:   cc -O2 -o fcgi-responder bench/fcgi-responder.c -lfcgi
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcgiapp.h>


#define BENCH_MAX_BODY  (16 * 1024 * 1024)
#define BENCH_ECHO_BUF  65536


static long
bench_size(const char *p)
{
    char  *end;
    long   n;

    if (p == NULL || p[0] != '/' || p[1] < '0' || p[1] > '9') {
        return -1;
    }

    n = strtol(p + 1, &end, 10);

    if (*end == 'k' || *end == 'K') {
        n *= 1024;
        end++;

    } else if (*end == 'm' || *end == 'M') {
        n *= 1024 * 1024;
        end++;
    }

    if (*end != '\0' || n < 0 || n > BENCH_MAX_BODY) {
        return -1;
    }

    return n;
}


int
main(void)
{
    int            n;
    long           size, len, got;
    char          *body, *buf;
    const char    *method, *path, *cl;
    FCGX_Request   req;

    body = malloc(BENCH_MAX_BODY);
    if (body == NULL) {
        return 1;
    }

    buf = malloc(BENCH_MAX_BODY);
    if (buf == NULL) {
        return 1;
    }

    for (n = 0; n < BENCH_MAX_BODY; n++) {
        body[n] = 'a' + n % 26;
    }

    if (FCGX_Init() != 0 || FCGX_InitRequest(&req, 0, 0) != 0) {
        return 1;
    }

    while (FCGX_Accept_r(&req) >= 0) {
        method = FCGX_GetParam("REQUEST_METHOD", req.envp);
        path = FCGX_GetParam("DOCUMENT_URI", req.envp);
        if (path == NULL) {
            path = FCGX_GetParam("SCRIPT_NAME", req.envp);
        }

        if (method != NULL && strcmp(method, "POST") == 0) {
            /* the whole body first: nginx reads no response before it
             * has sent the request, so echoing while reading deadlocks
             * once the socket buffers are full */
            cl = FCGX_GetParam("CONTENT_LENGTH", req.envp);
            len = (cl != NULL) ? strtol(cl, NULL, 10) : 0;
            if (len < 0 || len > BENCH_MAX_BODY) {
                len = 0;
            }

            got = 0;
            while (got < len) {
                n = FCGX_GetStr(buf + got, len - got < BENCH_ECHO_BUF
                                ? (int) (len - got) : BENCH_ECHO_BUF, req.in);
                if (n <= 0) {
                    break;
                }

                got += n;
            }

            FCGX_FPrintF(req.out, "Status: 200 OK\r\n"
                         "Content-Type: text/plain\r\n"
                         "Content-Length: %ld\r\n\r\n", got);
            FCGX_PutStr(buf, (int) got, req.out);
            FCGX_Finish_r(&req);
            continue;
        }

        size = bench_size(path);

        if (size < 0) {
            FCGX_FPrintF(req.out, "Status: 404 Not Found\r\n"
                         "Content-Type: text/plain\r\n\r\nnot found\n");
            FCGX_Finish_r(&req);
            continue;
        }

        FCGX_FPrintF(req.out, "Status: 200 OK\r\n"
                     "Content-Type: text/plain\r\n"
                     "Content-Length: %ld\r\n\r\n", size);
        FCGX_PutStr(body, (int) size, req.out);
        FCGX_Finish_r(&req);
    }

    return 0;
}
