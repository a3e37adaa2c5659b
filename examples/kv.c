/*
 * Copyright (C) ngxshm authors
 *
 * ngxshm-kv: an in-memory key-value store behind nginx.  It shows a small
 * real application on libngxshm: one-shot answers with ngxshm_respond(),
 * a request body streamed in with ngxshm_request_read() and the event
 * callback, shm_param values from the nginx configuration, several loop
 * threads sharing one store under a mutex, and a graceful stop.
 *
 * Build:   make examples          (build/examples/ngxshm-kv), or
 *          cc -o ngxshm-kv kv.c -lngxshm -lpthread
 * Run:     ngxshm-kv [-t THREADS] [-m MODE] [-u UID] [-g GID]
 *                    [-s MAX_VALUE_BYTES] SOCKET
 *
 *   GET    PREFIX          the keys, one a line (text/plain)
 *   GET    PREFIX KEY      the value, 404 if none (HEAD works too)
 *   PUT    PREFIX KEY      store the request body: 201 new, 204 replaced,
 *                          413 over the size limit (default 16 MiB)
 *   DELETE PREFIX KEY      204, or 404 if none
 *   other methods          405 with Allow
 *
 * PREFIX is "/kv/" unless the location sets "shm_param KV_PREFIX /x/;".
 * KEY is the rest of the decoded path.  The value keeps the Content-Type
 * of the PUT.
 *
 *   location /kv/ { shm_pass unix:/run/kv.sock; }
 *   curl -X PUT --data-binary @file http://localhost/kv/a
 *   curl http://localhost/kv/a
 */

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <ngxshm.h>


#define KV_BUCKETS  1024


typedef struct kv_item_s  kv_item_t;

struct kv_item_s {
    kv_item_t  *next;
    char       *key;
    size_t      key_len;
    char       *type;               /* Content-Type, may be NULL */
    char       *value;
    size_t      len;
};


/* a PUT whose body is still arriving */
typedef struct {
    char       *key;
    size_t      key_len;
    char       *type;
    char       *buf;
    size_t      len;
    size_t      cap;
} kv_put_t;


static ngxshm_server_t  *server;
static size_t            max_value = 16 * 1024 * 1024;

static pthread_mutex_t   store_mu = PTHREAD_MUTEX_INITIALIZER;
static kv_item_t        *store[KV_BUCKETS];


static void
on_signal(int signo)
{
    (void) signo;

    ngxshm_server_stop(server);
}


static kv_item_t **
kv_find(const char *key, size_t len)
{
    size_t       i;
    uint32_t     h;
    kv_item_t  **pp;

    h = 2166136261u;

    for (i = 0; i < len; i++) {
        h = (h ^ (unsigned char) key[i]) * 16777619u;
    }

    for (pp = &store[h % KV_BUCKETS]; *pp != NULL; pp = &(*pp)->next) {
        if ((*pp)->key_len == len && memcmp((*pp)->key, key, len) == 0) {
            break;
        }
    }

    return pp;
}


static void
kv_item_free(kv_item_t *it)
{
    free(it->key);
    free(it->type);
    free(it->value);
    free(it);
}


static void
kv_status(ngxshm_request_t *r, unsigned status, const char *text)
{
    ngxshm_header_t  h[2];

    h[0].name.data = "Content-Type";
    h[0].name.len = sizeof("Content-Type") - 1;
    h[0].value.data = "text/plain";
    h[0].value.len = sizeof("text/plain") - 1;

    h[1].name.data = "Allow";
    h[1].name.len = sizeof("Allow") - 1;
    h[1].value.data = "GET, HEAD, PUT, DELETE";
    h[1].value.len = sizeof("GET, HEAD, PUT, DELETE") - 1;

    ngxshm_respond(r, status, h, status == 405 ? 2 : 1, text,
                   text ? strlen(text) : 0);
}


static void
kv_get(ngxshm_request_t *r, const char *key, size_t len)
{
    size_t           n;
    kv_item_t       *it;
    ngxshm_header_t  h;

    pthread_mutex_lock(&store_mu);

    it = *kv_find(key, len);

    if (it == NULL) {
        pthread_mutex_unlock(&store_mu);
        kv_status(r, 404, "not found\n");
        return;
    }

    n = 0;

    if (it->type != NULL) {
        h.name.data = "Content-Type";
        h.name.len = sizeof("Content-Type") - 1;
        h.value.data = it->type;
        h.value.len = strlen(it->type);
        n = 1;
    }

    /* copies what it cannot send at once: the lock is not held long */
    ngxshm_respond(r, 200, &h, n, it->value, it->len);

    pthread_mutex_unlock(&store_mu);
}


static void
kv_list(ngxshm_request_t *r)
{
    char            *b, *nb;
    size_t           i, len, cap;
    kv_item_t       *it;
    ngxshm_header_t  h;

    b = NULL;
    len = 0;
    cap = 0;

    pthread_mutex_lock(&store_mu);

    for (i = 0; i < KV_BUCKETS; i++) {
        for (it = store[i]; it != NULL; it = it->next) {
            if (len + it->key_len + 1 > cap) {
                cap = (len + it->key_len + 1) * 2;
                nb = realloc(b, cap);

                if (nb == NULL) {
                    pthread_mutex_unlock(&store_mu);
                    free(b);
                    kv_status(r, 500, "out of memory\n");
                    return;
                }

                b = nb;
            }

            memcpy(b + len, it->key, it->key_len);
            len += it->key_len;
            b[len++] = '\n';
        }
    }

    pthread_mutex_unlock(&store_mu);

    h.name.data = "Content-Type";
    h.name.len = sizeof("Content-Type") - 1;
    h.value.data = "text/plain";
    h.value.len = sizeof("text/plain") - 1;

    ngxshm_respond(r, 200, &h, 1, b, len);
    free(b);
}


static void
kv_delete(ngxshm_request_t *r, const char *key, size_t len)
{
    kv_item_t  **pp, *it;

    pthread_mutex_lock(&store_mu);

    pp = kv_find(key, len);
    it = *pp;

    if (it != NULL) {
        *pp = it->next;
    }

    pthread_mutex_unlock(&store_mu);

    if (it == NULL) {
        kv_status(r, 404, "not found\n");
        return;
    }

    kv_item_free(it);
    kv_status(r, 204, NULL);
}


static void
kv_put_free(kv_put_t *p)
{
    free(p->key);
    free(p->type);
    free(p->buf);
    free(p);
}


/* the whole body is in: store it */
static void
kv_put_done(ngxshm_request_t *r, kv_put_t *p)
{
    int          replaced;
    kv_item_t  **pp, *it, *old;

    it = calloc(1, sizeof(kv_item_t));
    if (it == NULL) {
        kv_put_free(p);
        kv_status(r, 500, "out of memory\n");
        return;
    }

    it->key = p->key;
    it->key_len = p->key_len;
    it->type = p->type;
    it->value = p->buf;
    it->len = p->len;
    free(p);

    pthread_mutex_lock(&store_mu);

    pp = kv_find(it->key, it->key_len);
    old = *pp;
    replaced = (old != NULL);

    if (old != NULL) {
        it->next = old->next;
    }

    *pp = it;

    pthread_mutex_unlock(&store_mu);

    if (old != NULL) {
        kv_item_free(old);
    }

    kv_status(r, replaced ? 204 : 201, replaced ? NULL : "created\n");
}


/* read what has arrived; called by the handler and on events */
static void
kv_put_read(ngxshm_request_t *r, unsigned events, void *arg)
{
    char      *nb;
    size_t     cap;
    ssize_t    n;
    kv_put_t  *p;

    p = arg;

    if (events & NGXSHM_EV_CANCEL) {
        kv_put_free(p);
        ngxshm_response_end(r);
        return;
    }

    for ( ;; ) {
        if (p->len == p->cap) {
            if (p->cap == max_value + 1) {
                kv_put_free(p);
                kv_status(r, 413, "value too large\n");
                return;
            }

            /* one byte more than allowed tells "too large" */
            cap = p->cap ? p->cap * 2 : 65536;
            cap = cap < max_value + 1 ? cap : max_value + 1;

            nb = realloc(p->buf, cap);
            if (nb == NULL) {
                kv_put_free(p);
                kv_status(r, 500, "out of memory\n");
                return;
            }

            p->buf = nb;
            p->cap = cap;
        }

        n = ngxshm_request_read(r, p->buf + p->len, p->cap - p->len);

        if (n == -EAGAIN) {
            return;             /* NGXSHM_EV_READABLE follows */
        }

        if (n < 0) {
            kv_put_free(p);
            ngxshm_request_abort(r);
            return;
        }

        if (n == 0) {
            kv_put_done(r, p);
            return;
        }

        p->len += n;
    }
}


static void
kv_put(ngxshm_request_t *r, const char *key, size_t len)
{
    char          *end;
    kv_put_t      *p;
    ngxshm_str_t   v;

    v = ngxshm_request_header(r, "Content-Length");

    if (v.data != NULL && strtoull(v.data, &end, 10) > max_value) {
        /* refuse at once; the library discards the body */
        kv_status(r, 413, "value too large\n");
        return;
    }

    p = calloc(1, sizeof(kv_put_t));
    if (p == NULL) {
        kv_status(r, 500, "out of memory\n");
        return;
    }

    p->key = strndup(key, len);
    p->key_len = len;

    v = ngxshm_request_header(r, "Content-Type");
    if (v.data != NULL) {
        p->type = strndup(v.data, v.len);
    }

    if (p->key == NULL || (v.data != NULL && p->type == NULL)) {
        kv_put_free(p);
        kv_status(r, 500, "out of memory\n");
        return;
    }

    ngxshm_request_set_callback(r, kv_put_read, p);
    kv_put_read(r, 0, p);
}


static void
kv_handler(ngxshm_request_t *r, void *arg)
{
    size_t        plen;
    const char   *prefix;
    ngxshm_str_t  method, path, param;

    (void) arg;

    method = ngxshm_request_field(r, NGXSHM_FIELD_METHOD);
    path = ngxshm_request_field(r, NGXSHM_FIELD_PATH);

    param = ngxshm_request_param(r, "KV_PREFIX");
    prefix = param.data ? param.data : "/kv/";
    plen = strlen(prefix);

    if (path.len < plen || memcmp(path.data, prefix, plen) != 0) {
        kv_status(r, 404, "not found\n");
        return;
    }

    path.data += plen;
    path.len -= plen;

    if (strcmp(method.data, "GET") == 0 || strcmp(method.data, "HEAD") == 0) {
        if (path.len == 0) {
            kv_list(r);

        } else {
            kv_get(r, path.data, path.len);
        }

    } else if (path.len == 0) {
        kv_status(r, 405, "a key is needed\n");

    } else if (strcmp(method.data, "PUT") == 0) {
        kv_put(r, path.data, path.len);

    } else if (strcmp(method.data, "DELETE") == 0) {
        kv_delete(r, path.data, path.len);

    } else {
        kv_status(r, 405, "method not allowed\n");
    }
}


static void
usage(void)
{
    fprintf(stderr, "usage: ngxshm-kv [-t THREADS] [-m MODE] [-u UID] "
                    "[-g GID] [-s MAX_VALUE] SOCKET\n");
    exit(2);
}


int
main(int argc, char **argv)
{
    int                c, rc;
    size_t             i;
    kv_item_t         *it;
    ngxshm_config_t    cfg;
    struct sigaction   sa;

    memset(&cfg, 0, sizeof(cfg));
    cfg.handler = kv_handler;
    cfg.threads = 1;
    cfg.allow_uid = -1;
    cfg.allow_gid = -1;

    while ((c = getopt(argc, argv, "t:m:u:g:s:")) != -1) {
        switch (c) {
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
        case 's':
            max_value = strtoull(optarg, NULL, 10);
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
        fprintf(stderr, "ngxshm-kv: ngxshm_server_create(): %s\n",
                strerror(-rc));
        return 1;
    }

    rc = ngxshm_server_listen(server, argv[optind]);
    if (rc != 0) {
        fprintf(stderr, "ngxshm-kv: listen on \"%s\": %s\n", argv[optind],
                strerror(-rc));
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
        fprintf(stderr, "ngxshm-kv: ngxshm_server_run(): %s\n",
                strerror(-rc));
    }

    ngxshm_server_destroy(server);

    for (i = 0; i < KV_BUCKETS; i++) {
        while (store[i] != NULL) {
            it = store[i];
            store[i] = it->next;
            kv_item_free(it);
        }
    }

    return rc == 0 ? 0 : 1;
}
