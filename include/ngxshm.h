/*
 * Copyright (C) ngxshm authors
 *
 * libngxshm: serve HTTP requests handed over by ngx_http_shm_module
 * through shared memory.
 *
 * Conventions: functions return 0 or a count on success and -errno on
 * failure.  Strings handed to the application (ngxshm_str_t) belong to
 * the library and stay valid until the request is completed; they are
 * followed by a NUL byte.  Data passed in by the application is copied
 * before the call returns unless said otherwise.
 *
 * Threads: a request belongs to the loop thread that received it; call
 * the ngxshm_request_* and ngxshm_response_* functions on that thread
 * only (inside the handler, an event callback, or a function run by
 * ngxshm_request_post(), which any thread may call).
 */

#ifndef NGXSHM_H
#define NGXSHM_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include "ngxshm_abi.h"

#ifdef __cplusplus
extern "C" {
#endif


typedef struct ngxshm_server_s   ngxshm_server_t;
typedef struct ngxshm_request_s  ngxshm_request_t;

typedef struct {
    const char  *data;
    size_t       len;
} ngxshm_str_t;

typedef struct {
    ngxshm_str_t  name;
    ngxshm_str_t  value;
} ngxshm_header_t;


/* called on a loop thread once a request's head has arrived; the body
 * may still be arriving.  The request must later be completed by
 * exactly one of ngxshm_respond(), ngxshm_response_end() or
 * ngxshm_request_abort(), here or later. */
typedef void (*ngxshm_handler_pt)(ngxshm_request_t *r, void *arg);

/* event callback of a request: "events" is a mask of NGXSHM_EV_* */
typedef void (*ngxshm_event_pt)(ngxshm_request_t *r, unsigned events,
    void *arg);

/* a function run on a request's loop thread by ngxshm_request_post() */
typedef void (*ngxshm_post_pt)(ngxshm_request_t *r, void *arg);

#define NGXSHM_EV_READABLE  0x1   /* body bytes or the body's end arrived */
#define NGXSHM_EV_WRITABLE  0x2   /* response body may be written again */
#define NGXSHM_EV_CANCEL    0x4   /* nginx gave the request up */


typedef struct {
    ngxshm_handler_pt  handler;       /* required */
    void              *handler_arg;
    unsigned           threads;       /* loops run by ngxshm_server_run();
                                         0 means 1 */
    unsigned           socket_mode;   /* listening socket; 0 means 0600 */
    long               allow_uid;     /* peer uid accepted besides root;
                                         0 or -1 mean this process' euid */
    long               allow_gid;     /* if > 0, peers of this gid are
                                         accepted too */
    size_t             max_head;      /* largest request head block;
                                         0 means 1 MiB */
    unsigned           drain_ms;      /* graceful stop waits at most this
                                         for requests; 0 means 30000 */
    unsigned           hello_ms;      /* a peer that connected must send
                                         HELLO within this, or it is
                                         closed; 0 means 10000 */
} ngxshm_config_t;


/* create a server for cfg (copied); *srv is set on success */
int ngxshm_server_create(ngxshm_server_t **srv, const ngxshm_config_t *cfg);

/* listen on a UNIX socket path, replacing a stale socket file there;
 * 0 or -errno (-EADDRINUSE if a live server answers on it) */
int ngxshm_server_listen(ngxshm_server_t *srv, const char *path);

/* run cfg.threads loops until ngxshm_server_stop() and the drain end;
 * 0 or -errno */
int ngxshm_server_run(ngxshm_server_t *srv);

/* event-loop integration (instead of ngxshm_server_run()): a file
 * descriptor that polls readable when ngxshm_server_dispatch() has work */
int ngxshm_server_fd(ngxshm_server_t *srv);

/* handle what is ready, waiting at most timeout_ms (-1: forever);
 * returns the number of events handled, or -ESHUTDOWN once stopped and
 * drained */
int ngxshm_server_dispatch(ngxshm_server_t *srv, int timeout_ms);

/* graceful stop: close the listener, tell nginx to open no new streams,
 * let in-flight requests finish; safe from any thread and from a signal
 * handler; 0 or -errno */
int ngxshm_server_stop(ngxshm_server_t *srv);

/* free a server that is not running; closes everything */
void ngxshm_server_destroy(ngxshm_server_t *srv);


/* a request datum by field kind (NGXSHM_FIELD_METHOD ... _SCHEME);
 * empty string if absent */
ngxshm_str_t ngxshm_request_field(const ngxshm_request_t *r, unsigned kind);

/* number of request headers, in the client's order, duplicates kept */
size_t ngxshm_request_header_count(const ngxshm_request_t *r);

/* the i-th request header; 0 or -ERANGE */
int ngxshm_request_header_at(const ngxshm_request_t *r, size_t i,
    ngxshm_str_t *name, ngxshm_str_t *value);

/* value of the first header named so (case-insensitive); data is NULL
 * if there is none */
ngxshm_str_t ngxshm_request_header(const ngxshm_request_t *r,
    const char *name);

/* number of shm_param values, in the configuration's order */
size_t ngxshm_request_param_count(const ngxshm_request_t *r);

/* the i-th shm_param; 0 or -ERANGE */
int ngxshm_request_param_at(const ngxshm_request_t *r, size_t i,
    ngxshm_str_t *name, ngxshm_str_t *value);

/* value of the shm_param named so (case-sensitive); data NULL if none */
ngxshm_str_t ngxshm_request_param(const ngxshm_request_t *r,
    const char *name);

/* read request body bytes: count > 0, 0 at the end of the body, -EAGAIN
 * if none has arrived yet (NGXSHM_EV_READABLE follows), -ECANCELED */
ssize_t ngxshm_request_read(ngxshm_request_t *r, void *buf, size_t len);

/* the body bytes that arrived and were not read yet, in place, without a
 * copy: *data points at them, count > 0, or 0, -EAGAIN, -ECANCELED as
 * ngxshm_request_read(); valid until ngxshm_request_consume() or the
 * return to the library's loop */
ssize_t ngxshm_request_peek(ngxshm_request_t *r, const void **data);

/* n of the bytes ngxshm_request_peek() showed are read (their credit goes
 * back to nginx); 0, -EINVAL if more than are waiting, -ECANCELED */
int ngxshm_request_consume(ngxshm_request_t *r, size_t n);

/* set the event callback (NULL to clear) */
void ngxshm_request_set_callback(ngxshm_request_t *r, ngxshm_event_pt cb,
    void *arg);

/* run fn(r, arg) on the request's loop thread soon; any thread;
 * 0 or -ENOMEM */
int ngxshm_request_post(ngxshm_request_t *r, ngxshm_post_pt fn, void *arg);

/* complete the request by failing it: nginx answers 502, or closes the
 * client connection if the response head was already sent; frees r */
void ngxshm_request_abort(ngxshm_request_t *r);


/* send the response head: status 200..599, headers (no hop-by-hop,
 * no CR, LF or NUL); 0, -EINVAL, -EALREADY, -ECANCELED or -ENOMEM */
int ngxshm_response_start(ngxshm_request_t *r, unsigned status,
    const ngxshm_header_t *headers, size_t n);

/* write response body bytes within the stream's credit: count accepted
 * (maybe fewer than len), -EAGAIN if none (NGXSHM_EV_WRITABLE follows),
 * -EINVAL before ngxshm_response_start(), -ECANCELED */
ssize_t ngxshm_response_write(ngxshm_request_t *r, const void *data,
    size_t len);

/* end the response body and complete the request; frees r (also if it
 * was cancelled); 0, -ECANCELED, or -EINVAL if the response was never
 * started (then nginx gets a reset and answers 502) */
int ngxshm_response_end(ngxshm_request_t *r);

/* one-shot: head, whole body (queued in library memory beyond the
 * credit), end; completes the request and frees r, except on -EINVAL
 * and -EALREADY, where nothing was sent and r is still the caller's;
 * 0 or -errno */
int ngxshm_respond(ngxshm_request_t *r, unsigned status,
    const ngxshm_header_t *headers, size_t n, const void *body, size_t len);


#ifdef __cplusplus
}
#endif

#endif /* NGXSHM_H */
