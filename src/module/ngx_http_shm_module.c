
/*
 * Copyright (C) ngxshm authors
 *
 * ngx_http_shm_module: an ngx_http_upstream protocol module whose
 * transport is shared memory.  Each worker opens one channel per sidecar
 * (a UNIX socket, a sealed memfd segment with two frame rings, two
 * eventfds); each request is a stream on a channel, seen by the upstream
 * code as a "virtual connection" whose recv/send functions read and
 * write that stream's frames.  See docs/architecture.md and
 * docs/protocol.md.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>
#include <ngx_http.h>

#include <sys/mman.h>
#include <sys/eventfd.h>
#include <sys/un.h>

#include <ngxshm_abi.h>
#include <ngxshm_ring.h>
#include "ngx_http_shm_check.h"


#define NGX_HTTP_SHM_MAX_STREAMS       4096

/*
 * frame copies: in power-of-two classes from 256 bytes up, kept on a
 * per-worker free list (up to CHUNK_CACHE bytes), so that neither a small
 * response (a head and a body chunk) nor streaming a large body goes to
 * malloc() and free() for every frame
 */
#define NGX_HTTP_SHM_CHUNK_MIN_CLASS   8
#define NGX_HTTP_SHM_CHUNK_MIN_BODY    256     /* small body frames share */
#define NGX_HTTP_SHM_CHUNK_CLASSES     32
#define NGX_HTTP_SHM_CHUNK_CACHE       (4 * 1024 * 1024)

#define NGX_HTTP_SHM_CH_HANDSHAKE      1
#define NGX_HTTP_SHM_CH_READY          2


typedef struct ngx_http_shm_channel_s  ngx_http_shm_channel_t;
typedef struct ngx_http_shm_stream_s   ngx_http_shm_stream_t;
typedef struct ngx_http_shm_chunk_s    ngx_http_shm_chunk_t;
typedef struct ngx_http_shm_lent_s     ngx_http_shm_lent_t;


typedef struct {
    ngx_str_t                      key;
    ngx_http_complex_value_t       value;
    ngx_uint_t                     skip_empty;
} ngx_http_shm_param_t;


typedef struct {
    ngx_http_upstream_conf_t       upstream;
    size_t                         segment_size;
    ngx_array_t                   *params;       /* ngx_http_shm_param_t */
} ngx_http_shm_loc_conf_t;


typedef struct {
    ngx_http_upstream_srv_conf_t  *uscf;
    ngx_http_upstream_init_peer_pt original_init;
    size_t                         segment_size;
} ngx_http_shm_upstream_t;


typedef struct {
    ngx_array_t                    upstreams;    /* ngx_http_shm_upstream_t */
    ngx_queue_t                    channels;     /* this worker's */
    ngx_queue_t                    free_streams;
    ngx_queue_t                    limbo_streams;
    ngx_event_t                    reaper;
    ngx_socket_t                   dummy_fd;
    ngx_uint_t                     nchannels;
    ngx_http_shm_chunk_t          *chunks[NGX_HTTP_SHM_CHUNK_CLASSES];
    size_t                         chunks_cached;
} ngx_http_shm_main_conf_t;


struct ngx_http_shm_chunk_s {
    ngx_http_shm_chunk_t          *next;
    uint32_t                       len;
    uint32_t                       pos;
    uint32_t                       cap;          /* bytes data[] holds */
    uint32_t                       refs;         /* slices lent out */
    unsigned                       body:1;
    unsigned                       cls:5;        /* 1 << cls bytes */
    u_char                         data[1];
};


/*
 * Response body slices lent to the event pipe as its buffers (see
 * ngx_http_shm_recv_chain()): a chunk wholly lent waits here until the
 * pipe hands its last slice back, or until the request's pool goes.
 */
struct ngx_http_shm_lent_s {
    ngx_http_shm_main_conf_t      *smcf;
    ngx_http_shm_stream_t         *stream;       /* NULL once released */
    ngx_http_shm_chunk_t          *chunks;
    size_t                         slice;        /* bytes per buffer */
};


struct ngx_http_shm_stream_s {
    ngx_connection_t               c;            /* first: c == stream */
    ngx_event_t                    rev;
    ngx_event_t                    wev;
    ngx_event_t                    start;        /* sends the request */

    ngx_queue_t                    queue;        /* free list, limbo */
    ngx_queue_t                    wait;         /* channel's wait_space */
    ngx_queue_t                    ctl;          /* channel's ctl_pending */

    ngx_http_shm_channel_t        *ch;
    ngx_http_shm_main_conf_t      *smcf;
    ngx_http_request_t            *request;

    uint32_t                       slot;
    uint32_t                       gen;

    /* nginx -> sidecar */
    size_t                         head_len;
    off_t                          send_total;
    off_t                          sent;
    uint32_t                       send_credit;
    uint32_t                       wait_need;    /* ring bytes it waits for */
    uint64_t                       wait_seq;     /* place among waiters */

    /* sidecar -> nginx */
    ngx_http_shm_chunk_t          *in;
    ngx_http_shm_chunk_t         **in_last;
    size_t                         in_bytes;
    size_t                         head_bytes;
    size_t                         head_size;
    size_t                         head_max;
    uint32_t                       recv_window;
    uint32_t                       unreported;
    ngx_http_shm_lent_t           *lent;         /* buffered responses */

    unsigned                       head_done:1;
    unsigned                       in_end:1;
    unsigned                       out_end:1;
    unsigned                       reset:1;
    unsigned                       failed:1;
    unsigned                       released:1;   /* slot given back */
    unsigned                       cancel:1;     /* CANCEL to write */
    unsigned                       waiting:1;    /* in wait_space */
    unsigned                       ctl_queued:1;
    unsigned                       slot_held:1;  /* until CANCEL written */
    unsigned                       destroyed:1;
};


struct ngx_http_shm_channel_s {
    ngx_queue_t                    queue;
    ngx_http_shm_main_conf_t      *smcf;
    ngx_log_t                     *log;

    ngx_str_t                      name;         /* "unix:/path" */
    struct sockaddr_un             sockaddr;
    socklen_t                      socklen;

    ngx_connection_t              *conn;         /* the UNIX socket */
    ngx_connection_t              *notify;       /* efd_nginx in epoll */
    ngx_fd_t                       wake_app;     /* pipe, our write end */
    ngx_fd_t                       wake_app_rd;  /* its read end, sent */
    ngx_fd_t                       memfd;
    u_char                        *seg;
    size_t                         seg_size;

    ngxshm_ring_t                  req;          /* we produce */
    ngxshm_ring_t                  resp;         /* we consume */

    uint32_t                       max_streams;
    uint32_t                       window;
    uint32_t                       max_frame;

    ngx_http_shm_stream_t        **slots;
    uint32_t                      *gens;
    uint32_t                      *free_slots;
    uint32_t                       nfree;
    ngx_uint_t                     nstreams;     /* slots in use */

    ngx_queue_t                    wait_space;   /* by wait_seq */
    ngx_queue_t                    ctl_pending;
    uint64_t                       wait_seq;

    ngx_uint_t                     state;
    ngx_uint_t                     serial;
    ngx_msec_t                     connect_timeout;
    unsigned                       goaway:1;
    unsigned                       wake_broken:1;
    unsigned                       listed:1;
    ngx_event_t                    wake_ev;
    ngx_event_t                    space_ev;     /* wakes more waiters */
    unsigned                       wake:1;       /* signal the app */
    unsigned                       broken:1;     /* fail when safe */
};


typedef struct {
    ngx_http_request_t            *request;
    ngx_http_shm_upstream_t       *shm_upstream;
    void                          *data;
    ngx_event_get_peer_pt          original_get;
    ngx_event_free_peer_pt         original_free;
} ngx_http_shm_peer_data_t;


typedef struct {
    size_t                         head_len;
    off_t                          send_total;
} ngx_http_shm_ctx_t;


static ngx_int_t ngx_http_shm_handler(ngx_http_request_t *r);
static ngx_int_t ngx_http_shm_create_request(ngx_http_request_t *r);
static ngx_int_t ngx_http_shm_server_addr(ngx_connection_t *c,
    ngx_str_t *value, u_char *buf);
static u_char *ngx_http_shm_port_text(u_char *p, struct sockaddr *sa);
static ngx_int_t ngx_http_shm_reinit_request(ngx_http_request_t *r);
static ngx_int_t ngx_http_shm_process_header(ngx_http_request_t *r);
static ngx_int_t ngx_http_shm_input_filter_init(void *data);
static ngx_int_t ngx_http_shm_pipe_input_filter(ngx_event_pipe_t *p,
    ngx_buf_t *buf);
static ngx_int_t ngx_http_shm_non_buffered_filter(void *data,
    ssize_t bytes);
static void ngx_http_shm_abort_request(ngx_http_request_t *r);
static void ngx_http_shm_finalize_request(ngx_http_request_t *r,
    ngx_int_t rc);

static ngx_int_t ngx_http_shm_init_peer(ngx_http_request_t *r,
    ngx_http_upstream_srv_conf_t *us);
static ngx_int_t ngx_http_shm_get_peer(ngx_peer_connection_t *pc,
    void *data);
static void ngx_http_shm_free_peer(ngx_peer_connection_t *pc, void *data,
    ngx_uint_t state);

static ngx_http_shm_channel_t *ngx_http_shm_channel_get(
    ngx_http_shm_main_conf_t *smcf, ngx_peer_connection_t *pc,
    size_t segment_size, ngx_msec_t timeout);
static ngx_int_t ngx_http_shm_channel_setup(ngx_http_shm_channel_t *ch);
static ngx_int_t ngx_http_shm_channel_hello(ngx_http_shm_channel_t *ch);
static void ngx_http_shm_channel_read(ngx_event_t *rev);
static void ngx_http_shm_channel_idle(ngx_event_t *wev);
static void ngx_http_shm_channel_notify(ngx_event_t *rev);
static void ngx_http_shm_channel_drain(ngx_http_shm_channel_t *ch);
static ngx_int_t ngx_http_shm_channel_frame(ngx_http_shm_channel_t *ch,
    ngxshm_frame_t *f, const u_char *payload);
static void ngx_http_shm_channel_space(ngx_http_shm_channel_t *ch);
static void ngx_http_shm_channel_signal(ngx_http_shm_channel_t *ch);
static ngx_int_t ngx_http_shm_channel_settle(ngx_http_shm_channel_t *ch);
static void ngx_http_shm_channel_wake_app(ngx_event_t *ev);
static void ngx_http_shm_channel_fail(ngx_http_shm_channel_t *ch,
    ngx_uint_t level, const char *reason);
static void ngx_http_shm_channel_close(ngx_http_shm_channel_t *ch);

static ngx_http_shm_stream_t *ngx_http_shm_stream_open(
    ngx_http_shm_channel_t *ch, ngx_http_request_t *r,
    ngx_peer_connection_t *pc);
static void ngx_http_shm_stream_start(ngx_event_t *ev);
static void ngx_http_shm_stream_wake(ngx_http_shm_stream_t *s);
static void ngx_http_shm_stream_unslot(ngx_http_shm_stream_t *s);
static void ngx_http_shm_stream_fail(ngx_http_shm_stream_t *s,
    ngx_uint_t cancel, const char *reason);
static void ngx_http_shm_stream_reap(ngx_http_shm_main_conf_t *smcf,
    ngx_http_shm_stream_t *s);
static void ngx_http_shm_stream_release(ngx_http_shm_stream_t *s);
static void ngx_http_shm_stream_free_chunks(ngx_http_shm_stream_t *s);
static void ngx_http_shm_stream_unlend(ngx_http_shm_stream_t *s);
static void ngx_http_shm_stream_shift(ngx_http_shm_stream_t *s);
static void ngx_http_shm_lent_cleanup(void *data);
static ngx_int_t ngx_http_shm_stream_ctl(ngx_http_shm_stream_t *s);
static void ngx_http_shm_reaper(ngx_event_t *ev);
static ngx_http_shm_chunk_t *ngx_http_shm_chunk_alloc(
    ngx_http_shm_main_conf_t *smcf, uint32_t len, ngx_log_t *log);
static void ngx_http_shm_chunk_free(ngx_http_shm_main_conf_t *smcf,
    ngx_http_shm_chunk_t *chunk);

static ssize_t ngx_http_shm_recv_state(ngx_http_shm_stream_t *s);
static void ngx_http_shm_recv_done(ngx_http_shm_stream_t *s, size_t n,
    size_t body);
static ngx_int_t ngx_http_shm_take_back(ngx_http_shm_stream_t *s,
    ngx_buf_t *b);
static ssize_t ngx_http_shm_lend(ngx_http_shm_stream_t *s, ngx_buf_t *b,
    size_t size);
static ssize_t ngx_http_shm_recv(ngx_connection_t *c, u_char *buf,
    size_t size);
static ssize_t ngx_http_shm_recv_chain(ngx_connection_t *c,
    ngx_chain_t *in, off_t limit);
static ssize_t ngx_http_shm_send(ngx_connection_t *c, u_char *buf,
    size_t size);
static ngx_chain_t *ngx_http_shm_send_chain(ngx_connection_t *c,
    ngx_chain_t *in, off_t limit);

static void *ngx_http_shm_create_main_conf(ngx_conf_t *cf);
static void *ngx_http_shm_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_shm_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child);
static char *ngx_http_shm_pass(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_shm_param(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_shm_segment_size(ngx_conf_t *cf, void *post,
    void *data);
static ngx_int_t ngx_http_shm_postconfiguration(ngx_conf_t *cf);
static ngx_int_t ngx_http_shm_init_module(ngx_cycle_t *cycle);
static ngx_int_t ngx_http_shm_init_process(ngx_cycle_t *cycle);
static void ngx_http_shm_exit_process(ngx_cycle_t *cycle);
static void ngx_http_shm_channel_space_handler(ngx_event_t *ev);
static void ngx_http_shm_channel_wake_waiters(ngx_http_shm_channel_t *ch);
static uint32_t ngx_http_shm_stream_need(ngx_http_shm_stream_t *s);


static ngx_conf_post_t  ngx_http_shm_segment_size_post =
    { ngx_http_shm_segment_size };


static ngx_conf_bitmask_t  ngx_http_shm_next_upstream_masks[] = {
    { ngx_string("error"), NGX_HTTP_UPSTREAM_FT_ERROR },
    { ngx_string("timeout"), NGX_HTTP_UPSTREAM_FT_TIMEOUT },
    { ngx_string("invalid_header"), NGX_HTTP_UPSTREAM_FT_INVALID_HEADER },
    { ngx_string("non_idempotent"), NGX_HTTP_UPSTREAM_FT_NON_IDEMPOTENT },
    { ngx_string("http_500"), NGX_HTTP_UPSTREAM_FT_HTTP_500 },
    { ngx_string("http_503"), NGX_HTTP_UPSTREAM_FT_HTTP_503 },
    { ngx_string("http_403"), NGX_HTTP_UPSTREAM_FT_HTTP_403 },
    { ngx_string("http_404"), NGX_HTTP_UPSTREAM_FT_HTTP_404 },
    { ngx_string("http_429"), NGX_HTTP_UPSTREAM_FT_HTTP_429 },
    { ngx_string("off"), NGX_HTTP_UPSTREAM_FT_OFF },
    { ngx_null_string, 0 }
};


static ngx_conf_bitmask_t  ngx_http_shm_ignore_headers_masks[] = {
    { ngx_string("X-Accel-Redirect"), NGX_HTTP_UPSTREAM_IGN_XA_REDIRECT },
    { ngx_string("X-Accel-Expires"), NGX_HTTP_UPSTREAM_IGN_XA_EXPIRES },
    { ngx_string("X-Accel-Limit-Rate"), NGX_HTTP_UPSTREAM_IGN_XA_LIMIT_RATE },
    { ngx_string("X-Accel-Buffering"), NGX_HTTP_UPSTREAM_IGN_XA_BUFFERING },
    { ngx_string("X-Accel-Charset"), NGX_HTTP_UPSTREAM_IGN_XA_CHARSET },
    { ngx_string("Expires"), NGX_HTTP_UPSTREAM_IGN_EXPIRES },
    { ngx_string("Cache-Control"), NGX_HTTP_UPSTREAM_IGN_CACHE_CONTROL },
    { ngx_string("Set-Cookie"), NGX_HTTP_UPSTREAM_IGN_SET_COOKIE },
    { ngx_string("Vary"), NGX_HTTP_UPSTREAM_IGN_VARY },
    { ngx_null_string, 0 }
};


static ngx_str_t  ngx_http_shm_hide_headers[] = {
    ngx_string("X-Accel-Expires"),
    ngx_string("X-Accel-Redirect"),
    ngx_string("X-Accel-Limit-Rate"),
    ngx_string("X-Accel-Buffering"),
    ngx_string("X-Accel-Charset"),
    ngx_null_string
};


/* hop-by-hop: meaningless between a sidecar and nginx, never passed */
static ngx_str_t  ngx_http_shm_hop_headers[] = {
    ngx_string("connection"),
    ngx_string("keep-alive"),
    ngx_string("transfer-encoding"),
    ngx_string("te"),
    ngx_string("trailer"),
    ngx_string("upgrade"),
    ngx_string("proxy-connection"),
    ngx_null_string
};


static ngx_path_init_t  ngx_http_shm_temp_path = {
    ngx_string("/var/lib/nginx/shm"), { 1, 2, 0 }
};


static ngx_command_t  ngx_http_shm_commands[] = {

    { ngx_string("shm_pass"),
      NGX_HTTP_LOC_CONF|NGX_HTTP_LIF_CONF|NGX_CONF_TAKE1,
      ngx_http_shm_pass,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("shm_connect_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_shm_loc_conf_t, upstream.connect_timeout),
      NULL },

    { ngx_string("shm_send_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_shm_loc_conf_t, upstream.send_timeout),
      NULL },

    { ngx_string("shm_read_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_shm_loc_conf_t, upstream.read_timeout),
      NULL },

    { ngx_string("shm_segment_size"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_size_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_shm_loc_conf_t, segment_size),
      &ngx_http_shm_segment_size_post },

    { ngx_string("shm_param"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE23,
      ngx_http_shm_param,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("shm_pass_request_headers"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_shm_loc_conf_t, upstream.pass_request_headers),
      NULL },

    { ngx_string("shm_pass_request_body"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_shm_loc_conf_t, upstream.pass_request_body),
      NULL },

    { ngx_string("shm_buffering"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_shm_loc_conf_t, upstream.buffering),
      NULL },

    { ngx_string("shm_buffer_size"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_size_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_shm_loc_conf_t, upstream.buffer_size),
      NULL },

    { ngx_string("shm_buffers"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE2,
      ngx_conf_set_bufs_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_shm_loc_conf_t, upstream.bufs),
      NULL },

    { ngx_string("shm_busy_buffers_size"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_size_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_shm_loc_conf_t, upstream.busy_buffers_size_conf),
      NULL },

    { ngx_string("shm_max_temp_file_size"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_size_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_shm_loc_conf_t, upstream.max_temp_file_size_conf),
      NULL },

    { ngx_string("shm_temp_file_write_size"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_size_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_shm_loc_conf_t, upstream.temp_file_write_size_conf),
      NULL },

    { ngx_string("shm_temp_path"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1234,
      ngx_conf_set_path_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_shm_loc_conf_t, upstream.temp_path),
      NULL },

    { ngx_string("shm_next_upstream"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_1MORE,
      ngx_conf_set_bitmask_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_shm_loc_conf_t, upstream.next_upstream),
      &ngx_http_shm_next_upstream_masks },

    { ngx_string("shm_next_upstream_tries"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_shm_loc_conf_t, upstream.next_upstream_tries),
      NULL },

    { ngx_string("shm_next_upstream_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_shm_loc_conf_t, upstream.next_upstream_timeout),
      NULL },

    { ngx_string("shm_hide_header"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_array_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_shm_loc_conf_t, upstream.hide_headers),
      NULL },

    { ngx_string("shm_pass_header"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_array_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_shm_loc_conf_t, upstream.pass_headers),
      NULL },

    { ngx_string("shm_ignore_headers"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_1MORE,
      ngx_conf_set_bitmask_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_shm_loc_conf_t, upstream.ignore_headers),
      &ngx_http_shm_ignore_headers_masks },

    { ngx_string("shm_intercept_errors"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_shm_loc_conf_t, upstream.intercept_errors),
      NULL },

    { ngx_string("shm_ignore_client_abort"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_shm_loc_conf_t, upstream.ignore_client_abort),
      NULL },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_shm_module_ctx = {
    NULL,                                  /* preconfiguration */
    ngx_http_shm_postconfiguration,        /* postconfiguration */

    ngx_http_shm_create_main_conf,         /* create main configuration */
    NULL,                                  /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    ngx_http_shm_create_loc_conf,          /* create location configuration */
    ngx_http_shm_merge_loc_conf            /* merge location configuration */
};


ngx_module_t  ngx_http_shm_module = {
    NGX_MODULE_V1,
    &ngx_http_shm_module_ctx,              /* module context */
    ngx_http_shm_commands,                 /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    ngx_http_shm_init_module,              /* init module */
    ngx_http_shm_init_process,             /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    ngx_http_shm_exit_process,             /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


static ngx_int_t
ngx_http_shm_handler(ngx_http_request_t *r)
{
    ngx_int_t                 rc;
    ngx_http_upstream_t      *u;
    ngx_http_shm_ctx_t       *ctx;
    ngx_http_shm_loc_conf_t  *slcf;

    if (ngx_http_upstream_create(r) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx = ngx_pcalloc(r->pool, sizeof(ngx_http_shm_ctx_t));
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_http_set_ctx(r, ctx, ngx_http_shm_module);

    slcf = ngx_http_get_module_loc_conf(r, ngx_http_shm_module);

    u = r->upstream;

    ngx_str_set(&u->schema, "shm://");
    u->output.tag = (ngx_buf_tag_t) &ngx_http_shm_module;

    u->conf = &slcf->upstream;

    u->create_request = ngx_http_shm_create_request;
    u->reinit_request = ngx_http_shm_reinit_request;
    u->process_header = ngx_http_shm_process_header;
    u->abort_request = ngx_http_shm_abort_request;
    u->finalize_request = ngx_http_shm_finalize_request;

    u->buffering = slcf->upstream.buffering;

    u->pipe = ngx_pcalloc(r->pool, sizeof(ngx_event_pipe_t));
    if (u->pipe == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    u->pipe->input_filter = ngx_http_shm_pipe_input_filter;
    u->pipe->input_ctx = r;

    u->input_filter_init = ngx_http_shm_input_filter_init;
    u->input_filter = ngx_http_shm_non_buffered_filter;
    u->input_filter_ctx = r;

    rc = ngx_http_read_client_request_body(r, ngx_http_upstream_init);

    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        return rc;
    }

    return NGX_DONE;
}


/* a field of a request head block, before it is laid out */

typedef struct {
    ngx_str_t    name;
    ngx_str_t    value;
    ngx_uint_t   kind;
} ngx_http_shm_field_t;


static ngx_int_t
ngx_http_shm_create_request(ngx_http_request_t *r)
{
    u_char                    *p, *strings, *port;
    size_t                     size, nfields;
    off_t                      body_len;
    ngx_str_t                  value;
    ngx_buf_t                 *b;
    ngx_uint_t                 i, n, nparams;
    ngx_chain_t               *cl, *body, **ll;
    ngx_list_part_t           *part;
    ngx_table_elt_t           *header;
    ngx_http_shm_ctx_t        *ctx;
    ngx_http_shm_param_t      *param;
    ngx_http_shm_field_t      *fields, *fl;
    ngx_http_upstream_t       *u;
    ngx_http_shm_loc_conf_t   *slcf;
    ngx_http_core_srv_conf_t  *cscf;
    ngxshm_head_t              head;
    ngxshm_field_t             field;
    u_char                     addr[NGX_SOCKADDR_STRLEN];

    u = r->upstream;
    slcf = ngx_http_get_module_loc_conf(r, ngx_http_shm_module);
    ctx = ngx_http_get_module_ctx(r, ngx_http_shm_module);
    cscf = ngx_http_get_module_srv_conf(r, ngx_http_core_module);

    n = 11;
    nparams = slcf->params ? slcf->params->nelts : 0;
    n += nparams;

    if (slcf->upstream.pass_request_headers) {
        part = &r->headers_in.headers.part;

        for ( ;; ) {
            n += part->nelts;

            if (part->next == NULL) {
                break;
            }

            part = part->next;
        }
    }

    if (n > 0xffff) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "too many request headers for a shm head block");
        return NGX_ERROR;
    }

    fields = ngx_palloc(r->pool, n * sizeof(ngx_http_shm_field_t));
    if (fields == NULL) {
        return NGX_ERROR;
    }

    fl = fields;

#define ngx_http_shm_field(k, v)                                              \
    fl->kind = k; fl->name.len = 0; fl->name.data = NULL; fl->value = v; fl++

    ngx_http_shm_field(NGXSHM_FIELD_METHOD, r->method_name);
    ngx_http_shm_field(NGXSHM_FIELD_URI, r->unparsed_uri);
    ngx_http_shm_field(NGXSHM_FIELD_PATH, r->uri);
    ngx_http_shm_field(NGXSHM_FIELD_QUERY, r->args);
    ngx_http_shm_field(NGXSHM_FIELD_PROTOCOL, r->http_protocol);
    ngx_http_shm_field(NGXSHM_FIELD_REMOTE_ADDR, r->connection->addr_text);

    port = ngx_pnalloc(r->pool, 2 * (sizeof("65535") - 1));
    if (port == NULL) {
        return NGX_ERROR;
    }

    value.data = port;
    value.len = ngx_http_shm_port_text(port, r->connection->sockaddr) - port;
    ngx_http_shm_field(NGXSHM_FIELD_REMOTE_PORT, value);

    if (ngx_http_shm_server_addr(r->connection, &value, addr) != NGX_OK) {
        return NGX_ERROR;
    }

    ngx_http_shm_field(NGXSHM_FIELD_SERVER_ADDR, value);

    value.data = port + sizeof("65535") - 1;
    value.len = ngx_http_shm_port_text(value.data,
                                       r->connection->local_sockaddr)
                - value.data;
    ngx_http_shm_field(NGXSHM_FIELD_SERVER_PORT, value);
    ngx_http_shm_field(NGXSHM_FIELD_SERVER_NAME, cscf->server_name);

#if (NGX_HTTP_SSL)
    if (r->connection->ssl) {
        ngx_str_set(&value, "https");

    } else {
        ngx_str_set(&value, "http");
    }
#else
    ngx_str_set(&value, "http");
#endif

    ngx_http_shm_field(NGXSHM_FIELD_SCHEME, value);

#undef ngx_http_shm_field

    if (nparams) {
        param = slcf->params->elts;

        for (i = 0; i < nparams; i++) {
            if (ngx_http_complex_value(r, &param[i].value, &value)
                != NGX_OK)
            {
                return NGX_ERROR;
            }

            if (value.len == 0 && param[i].skip_empty) {
                continue;
            }

            fl->kind = NGXSHM_FIELD_PARAM;
            fl->name = param[i].key;
            fl->value = value;
            fl++;
        }
    }

    if (slcf->upstream.pass_request_headers) {
        part = &r->headers_in.headers.part;
        header = part->elts;

        for (i = 0; /* void */; i++) {

            if (i >= part->nelts) {
                if (part->next == NULL) {
                    break;
                }

                part = part->next;
                header = part->elts;
                i = 0;
            }

            fl->kind = NGXSHM_FIELD_HEADER;
            fl->name = header[i].key;
            fl->value = header[i].value;
            fl++;
        }
    }

    nfields = fl - fields;
    size = sizeof(ngxshm_head_t) + nfields * sizeof(ngxshm_field_t);

    for (i = 0; i < nfields; i++) {
        if (fields[i].name.len > 0xffff
            || fields[i].value.len > 0x7fffffff)
        {
            ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                          "request field too long for a shm head block");
            return NGX_ERROR;
        }

        size += fields[i].name.len + 1 + fields[i].value.len + 1;
    }

    if (size > 0x7fffffff) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "request head too long for a shm head block");
        return NGX_ERROR;
    }

    b = ngx_create_temp_buf(r->pool, size);
    if (b == NULL) {
        return NGX_ERROR;
    }

    head.size = (uint32_t) size;
    head.nfields = (uint16_t) nfields;
    head.status = 0;
    head.flags = 0;
    head.reserved = 0;

    p = ngx_cpymem(b->last, &head, sizeof(ngxshm_head_t));
    strings = b->last + sizeof(ngxshm_head_t)
              + nfields * sizeof(ngxshm_field_t);

    for (i = 0; i < nfields; i++) {
        field.off = (uint32_t) (strings - b->last);
        field.name_len = (uint16_t) fields[i].name.len;
        field.value_len = (uint32_t) fields[i].value.len;
        field.kind = (uint16_t) fields[i].kind;
        field.reserved = 0;

        p = ngx_cpymem(p, &field, sizeof(ngxshm_field_t));

        /* empty strings may have NULL data: no memcpy() for them */

        if (fields[i].name.len) {
            strings = ngx_cpymem(strings, fields[i].name.data,
                                 fields[i].name.len);
        }

        *strings++ = '\0';

        if (fields[i].value.len) {
            strings = ngx_cpymem(strings, fields[i].value.data,
                                 fields[i].value.len);
        }

        *strings++ = '\0';
    }

    b->last = strings;

    cl = ngx_alloc_chain_link(r->pool);
    if (cl == NULL) {
        return NGX_ERROR;
    }

    cl->buf = b;
    ll = &cl->next;
    u->request_bufs = cl;

    body_len = 0;

    if (slcf->upstream.pass_request_body && r->request_body) {

        for (body = r->request_body->bufs; body; body = body->next) {

            if (ngx_buf_special(body->buf)) {
                continue;
            }

            b = ngx_alloc_buf(r->pool);
            if (b == NULL) {
                return NGX_ERROR;
            }

            ngx_memcpy(b, body->buf, sizeof(ngx_buf_t));

            *ll = ngx_alloc_chain_link(r->pool);
            if (*ll == NULL) {
                return NGX_ERROR;
            }

            (*ll)->buf = b;
            ll = &(*ll)->next;

            body_len += ngx_buf_size(b);
        }
    }

    *ll = NULL;

    ctx->head_len = size;
    ctx->send_total = size + body_len;

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "http shm request: %uz head, %O body, %uz fields",
                   size, body_len, nfields);

    return NGX_OK;
}


/*
 * SERVER_ADDR as $server_addr has it.  A connection accepted on a listen
 * socket bound to one address has that socket's sockaddr as its local
 * one, and the socket's text ("127.0.0.1:80", "[::1]:80") already says
 * it; others (wildcard listens, found with getsockname() once per
 * connection) are printed into buf, which must outlive the request head.
 */

static ngx_int_t
ngx_http_shm_server_addr(ngx_connection_t *c, ngx_str_t *value, u_char *buf)
{
    u_char           *p, *last;
    ngx_listening_t  *ls;

    ls = c->listening;

    if (ls != NULL
        && c->local_sockaddr == ls->sockaddr
        && (ls->sockaddr->sa_family == AF_INET
#if (NGX_HAVE_INET6)
            || ls->sockaddr->sa_family == AF_INET6
#endif
           ))
    {
        p = ls->addr_text.data;
        last = p + ls->addr_text.len;

        while (last > p && last[-1] != ':') {
            last--;
        }

        if (last > p + 1) {
            last--;

            if (*p == '[' && last[-1] == ']') {
                p++;
                last--;
            }

            value->data = p;
            value->len = last - p;

            return NGX_OK;
        }
    }

    value->data = buf;
    value->len = NGX_SOCKADDR_STRLEN;

    return ngx_connection_local_sockaddr(c, value, 0);
}


/* a port in decimal, as "%ui" prints it */

static u_char *
ngx_http_shm_port_text(u_char *p, struct sockaddr *sa)
{
    u_char      digits[NGX_INT_T_LEN];
    ngx_uint_t  port, n;

    port = ngx_inet_get_port(sa);
    n = sizeof(digits);

    do {
        digits[--n] = (u_char) ('0' + port % 10);
        port /= 10;
    } while (port);

    return ngx_cpymem(p, digits + n, sizeof(digits) - n);
}


static ngx_int_t
ngx_http_shm_reinit_request(ngx_http_request_t *r)
{
    return NGX_OK;
}


static ngx_int_t
ngx_http_shm_process_header(ngx_http_request_t *r)
{
    u_char                          *start, *name, *value;
    size_t                           k, pos;
    ngx_int_t                        rc;
    ngx_uint_t                       n, status;
    ngx_str_t                       *hop;
    ngx_table_elt_t                 *h;
    ngx_http_upstream_t             *u;
    ngx_http_upstream_header_t      *hh;
    ngx_http_upstream_main_conf_t   *umcf;
    ngxshm_head_t                    head;
    ngxshm_field_t                   field;

    u = r->upstream;
    umcf = ngx_http_get_module_main_conf(r, ngx_http_upstream_module);

    start = u->buffer.pos;

    /* the checks are in ngx_http_shm_check.h, shared with fuzz/ */

    rc = ngx_http_shm_check_head(start, u->buffer.last - u->buffer.pos,
                                 u->buffer.end - u->buffer.pos, &head);

    switch (rc) {

    case NGX_HTTP_SHM_HEAD_OK:
        break;

    case NGX_HTTP_SHM_HEAD_AGAIN:
        return NGX_AGAIN;

    case NGX_HTTP_SHM_HEAD_TOO_BIG:
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "sidecar sent too big header: %uD bytes, "
                      "\"shm_buffer_size\" is %uz",
                      head.size, u->conf->buffer_size);
        return NGX_HTTP_UPSTREAM_INVALID_HEADER;

    case NGX_HTTP_SHM_HEAD_BAD_STATUS:
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "sidecar sent invalid status %ui",
                      (ngx_uint_t) head.status);
        return NGX_HTTP_UPSTREAM_INVALID_HEADER;

    default: /* NGX_HTTP_SHM_HEAD_BAD_BLOCK */
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "sidecar sent invalid header block: "
                      "size %uD, %ud fields", head.size, head.nfields);
        return NGX_HTTP_UPSTREAM_INVALID_HEADER;
    }

    /* the block is in our own buffer now: check it once, use it */

    status = head.status;

    for (n = 0; n < head.nfields; n++) {
        pos = 0;
        rc = ngx_http_shm_check_field(start, &head, (uint32_t) n, &field,
                                      &pos);

        if (rc == NGX_HTTP_SHM_HEAD_BAD_FIELD) {
            ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                          "sidecar sent invalid header field #%ui", n);
            return NGX_HTTP_UPSTREAM_INVALID_HEADER;
        }

        name = start + field.off;
        value = name + field.name_len;

        if (rc == NGX_HTTP_SHM_HEAD_BAD_NAME) {
            /* up to the bad byte only: a CR or LF would forge lines */
            ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                          "sidecar sent invalid header name "
                          "\"%*s\\x%02xD...\"", pos, name, name[pos]);
            return NGX_HTTP_UPSTREAM_INVALID_HEADER;
        }

        if (rc == NGX_HTTP_SHM_HEAD_BAD_VALUE) {
            ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                          "sidecar sent invalid value in header \"%*s\"",
                          (size_t) field.name_len, name);
            return NGX_HTTP_UPSTREAM_INVALID_HEADER;
        }

        for (hop = ngx_http_shm_hop_headers; hop->len; hop++) {
            if (hop->len == field.name_len
                && ngx_strncasecmp(hop->data, name, hop->len) == 0)
            {
                break;
            }
        }

        if (hop->len) {
            ngx_log_debug2(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                           "http shm hop-by-hop header dropped: \"%*s\"",
                           (size_t) field.name_len, name);
            continue;
        }

        h = ngx_list_push(&u->headers_in.headers);
        if (h == NULL) {
            return NGX_ERROR;
        }

        k = field.name_len;

        h->key.len = k;
        h->key.data = ngx_pnalloc(r->pool, 2 * k + 1 + field.value_len + 1);
        if (h->key.data == NULL) {
            h->hash = 0;
            return NGX_ERROR;
        }

        h->value.len = field.value_len;
        h->value.data = h->key.data + k + 1;
        h->lowcase_key = h->value.data + field.value_len + 1;

        ngx_memcpy(h->key.data, name, k);
        h->key.data[k] = '\0';
        ngx_memcpy(h->value.data, value, field.value_len);
        h->value.data[field.value_len] = '\0';

        h->hash = ngx_hash_strlow(h->lowcase_key, h->key.data, k);

        hh = ngx_hash_find(&umcf->headers_in_hash, h->hash,
                           h->lowcase_key, h->key.len);

        if (hh && hh->handler(r, h, hh->offset) != NGX_OK) {
            return NGX_ERROR;
        }

        ngx_log_debug2(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                       "http shm header: \"%V: %V\"", &h->key, &h->value);
    }

    u->headers_in.status_n = status;

    if (u->state && u->state->status == 0) {
        u->state->status = status;
    }

    u->buffer.pos += head.size;

    return NGX_OK;
}


static ngx_int_t
ngx_http_shm_input_filter_init(void *data)
{
    ngx_http_request_t  *r = data;

    ngx_int_t               i;
    ngx_buf_t              *b;
    ngx_chain_t            *cl;
    ngx_event_pipe_t       *p;
    ngx_pool_cleanup_t     *cln;
    ngx_http_upstream_t    *u;
    ngx_http_shm_lent_t    *lent;
    ngx_http_shm_stream_t  *s;

    u = r->upstream;

    if (u->headers_in.status_n == NGX_HTTP_NO_CONTENT
        || u->headers_in.status_n == NGX_HTTP_NOT_MODIFIED
        || r->method == NGX_HTTP_HEAD)
    {
        u->length = 0;

    } else {
        u->length = u->headers_in.content_length_n;
    }

    p = u->pipe;
    p->length = u->length;

    if (!u->buffering || p->cacheable || u->length == 0
        || u->peer.connection == NULL || p->preread_bufs == NULL
        || p->preread_bufs->next || p->free_raw_bufs)
    {
        return NGX_OK;
    }

    /*
     * The pipe reads the body into buffers it allocates; we give it
     * buffers without memory instead, and ngx_http_shm_recv_chain()
     * points them at slices of the chunks the body arrived in, no bigger
     * than its own buffers would be: no second copy, and every limit of
     * the pipe (busy, temp file writes) sees the sizes it expects.
     * They follow the buffer that holds the head: the pipe reads that
     * one first and puts what follows it among its free buffers (before
     * that it would lose anything already there).
     */

    s = (ngx_http_shm_stream_t *) u->peer.connection;

    if (s->destroyed || s->lent) {
        return NGX_OK;
    }

    /* the whole body is in the head's buffer already: nothing to lend */

    if (s->in_end && s->in_bytes == 0) {
        return NGX_OK;
    }

    cln = ngx_pool_cleanup_add(r->pool, sizeof(ngx_http_shm_lent_t));
    if (cln == NULL) {
        return NGX_ERROR;
    }

    lent = cln->data;
    lent->smcf = s->smcf;
    lent->stream = NULL;
    lent->chunks = NULL;
    lent->slice = p->bufs.size;

    cln->handler = ngx_http_shm_lent_cleanup;

    for (i = p->allocated; i < p->bufs.num; i++) {
        b = ngx_calloc_buf(r->pool);
        if (b == NULL) {
            return NGX_ERROR;
        }

        b->temporary = 1;

        cl = ngx_alloc_chain_link(r->pool);
        if (cl == NULL) {
            return NGX_ERROR;
        }

        cl->buf = b;
        cl->next = p->preread_bufs->next;
        p->preread_bufs->next = cl;
    }

    p->allocated = p->bufs.num;

    lent->stream = s;
    s->lent = lent;

    return NGX_OK;
}


/*
 * The pipe counts its busy buffers at their full size and relies on it:
 * a lent slice shorter than a buffer (a chunk's tail) counts as a whole
 * buffer too, or all of them could end up busy with none left to read
 * into.
 */

static ngx_int_t
ngx_http_shm_pipe_input_filter(ngx_event_pipe_t *p, ngx_buf_t *buf)
{
    ngx_buf_t  *b;

    if (ngx_event_pipe_copy_input_filter(p, buf) != NGX_OK) {
        return NGX_ERROR;
    }

    b = buf->shadow;

    if (b && buf->tag == (ngx_buf_tag_t) &ngx_http_shm_lend) {
        b->end = b->start + p->bufs.size;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_shm_non_buffered_filter(void *data, ssize_t bytes)
{
    ngx_http_request_t  *r = data;

    ngx_buf_t            *b;
    ngx_chain_t          *cl, **ll;
    ngx_http_upstream_t  *u;

    u = r->upstream;

    if (u->length == 0) {
        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "sidecar sent more data than specified in "
                      "\"Content-Length\" header");
        return NGX_OK;
    }

    for (cl = u->out_bufs, ll = &u->out_bufs; cl; cl = cl->next) {
        ll = &cl->next;
    }

    cl = ngx_chain_get_free_buf(r->pool, &u->free_bufs);
    if (cl == NULL) {
        return NGX_ERROR;
    }

    *ll = cl;

    cl->buf->flush = 1;
    cl->buf->memory = 1;

    b = &u->buffer;

    cl->buf->pos = b->last;
    b->last += bytes;
    cl->buf->last = b->last;
    cl->buf->tag = u->output.tag;

    if (u->length == -1) {
        return NGX_OK;
    }

    if (bytes > u->length) {
        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "sidecar sent more data than specified in "
                      "\"Content-Length\" header");

        cl->buf->last = cl->buf->pos + u->length;
        u->length = 0;

        return NGX_OK;
    }

    u->length -= bytes;

    return NGX_OK;
}


static void
ngx_http_shm_abort_request(ngx_http_request_t *r)
{
    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "abort http shm request");
}


static void
ngx_http_shm_finalize_request(ngx_http_request_t *r, ngx_int_t rc)
{
    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "finalize http shm request");
}


/* the balancer wrapper: every peer becomes a stream */

static ngx_int_t
ngx_http_shm_init_peer(ngx_http_request_t *r,
    ngx_http_upstream_srv_conf_t *us)
{
    ngx_uint_t                 i;
    ngx_http_upstream_t       *u;
    ngx_http_shm_upstream_t   *su;
    ngx_http_shm_peer_data_t  *pd;
    ngx_http_shm_main_conf_t  *smcf;

    smcf = ngx_http_get_module_main_conf(r, ngx_http_shm_module);

    su = smcf->upstreams.elts;

    for (i = 0; i < smcf->upstreams.nelts; i++) {
        if (su[i].uscf == us) {
            break;
        }
    }

    if (i == smcf->upstreams.nelts) {
        return NGX_ERROR;
    }

    su = &su[i];

    if (su->original_init(r, us) != NGX_OK) {
        return NGX_ERROR;
    }

    if (ngx_http_get_module_ctx(r, ngx_http_shm_module) == NULL) {
        /* the group also serves another module, e.g. proxy_pass */
        return NGX_OK;
    }

    pd = ngx_palloc(r->pool, sizeof(ngx_http_shm_peer_data_t));
    if (pd == NULL) {
        return NGX_ERROR;
    }

    u = r->upstream;

    pd->request = r;
    pd->shm_upstream = su;
    pd->data = u->peer.data;
    pd->original_get = u->peer.get;
    pd->original_free = u->peer.free;

    u->peer.data = pd;
    u->peer.get = ngx_http_shm_get_peer;
    u->peer.free = ngx_http_shm_free_peer;

    return NGX_OK;
}


static ngx_int_t
ngx_http_shm_get_peer(ngx_peer_connection_t *pc, void *data)
{
    ngx_http_shm_peer_data_t  *pd = data;

    ngx_int_t                  rc;
    ngx_http_shm_stream_t     *s;
    ngx_http_shm_channel_t    *ch;
    ngx_http_shm_main_conf_t  *smcf;

    rc = pd->original_get(pc, pd->data);

    if (rc != NGX_OK) {
        return rc;
    }

    if (pc->sockaddr->sa_family != AF_UNIX) {
        ngx_log_error(NGX_LOG_ERR, pc->log, 0,
                      "shm_pass needs a unix: address, not \"%V\"",
                      pc->name);
        return NGX_DECLINED;
    }

    smcf = ngx_http_get_module_main_conf(pd->request, ngx_http_shm_module);

    if (smcf->dummy_fd == (ngx_socket_t) -1
        && ngx_http_shm_init_process((ngx_cycle_t *) ngx_cycle) != NGX_OK)
    {
        /* "master_process off" does not call init_process on reload */
        return NGX_ERROR;
    }

    ch = ngx_http_shm_channel_get(smcf, pc, pd->shm_upstream->segment_size,
                                  pd->request->upstream->conf
                                      ->connect_timeout);
    if (ch == NULL) {
        return NGX_DECLINED;
    }

    s = ngx_http_shm_stream_open(ch, pd->request, pc);
    if (s == NULL) {
        return NGX_DECLINED;
    }

    pc->connection = &s->c;

    if (s->send_total != (off_t) s->head_len) {
        /*
         * a request with a body is sent by the upstream at once; sent
         * from s->start instead, the benchmark's 1 MiB POSTs at c=64 had
         * a p99 about 1.6 times as long (not understood; see
         * docs/performance.md)
         */
        return NGX_DONE;
    }

    /*
     * a request without a body: NGX_AGAIN, as for a connect() in
     * progress; the upstream sets its handlers and a connect timer, and
     * the request goes out from the posted s->start, later in this cycle
     * (ngx_http_shm_stream_start())
     */

    ngx_post_event(&s->start, &ngx_posted_events);

    return NGX_AGAIN;
}


static void
ngx_http_shm_free_peer(ngx_peer_connection_t *pc, void *data,
    ngx_uint_t state)
{
    ngx_http_shm_peer_data_t  *pd = data;

    ngx_connection_t       *c;
    ngx_http_shm_stream_t  *s;

    c = pc->connection;

    if (c != NULL) {
        s = (ngx_http_shm_stream_t *) c;

        if (s->request == pd->request && !s->destroyed) {

            if (c->read->timer_set) {
                ngx_del_timer(c->read);
            }

            if (c->write->timer_set) {
                ngx_del_timer(c->write);
            }

            if (c->read->posted) {
                ngx_delete_posted_event(c->read);
            }

            if (c->write->posted) {
                ngx_delete_posted_event(c->write);
            }

            if (s->start.posted) {
                ngx_delete_posted_event(&s->start);
            }

            if (c->pool) {
                ngx_destroy_pool(c->pool);
                c->pool = NULL;
            }

            /* only the sidecar's failures count for max_fails */

            if (s->failed || s->reset) {
                state |= NGX_PEER_FAILED;
            }

            ngx_http_shm_stream_release(s);
            pc->connection = NULL;
        }
    }

    pd->original_free(pc, pd->data, state);
}


/* channels */

static ngx_http_shm_channel_t *
ngx_http_shm_channel_get(ngx_http_shm_main_conf_t *smcf,
    ngx_peer_connection_t *pc, size_t segment_size, ngx_msec_t timeout)
{
    ngx_queue_t             *q;
    ngx_socket_t             fd;
    ngx_connection_t        *c;
    ngx_http_shm_channel_t  *ch;

    for (q = ngx_queue_head(&smcf->channels);
         q != ngx_queue_sentinel(&smcf->channels);
         q = ngx_queue_next(q))
    {
        ch = ngx_queue_data(q, ngx_http_shm_channel_t, queue);

        if (!ch->goaway && ch->socklen == pc->socklen
            && ngx_memcmp(&ch->sockaddr, pc->sockaddr, pc->socklen) == 0)
        {
            if (!ch->broken) {
                return ch;
            }

            ngx_http_shm_channel_fail(ch, NGX_LOG_ERR,
                                      "request ring head out of range");
            break;
        }
    }

    if (pc->socklen > (socklen_t) sizeof(struct sockaddr_un)) {
        return NULL;
    }

    ch = ngx_calloc(sizeof(ngx_http_shm_channel_t) + pc->name->len,
                    pc->log);
    if (ch == NULL) {
        return NULL;
    }

    ch->smcf = smcf;
    ch->log = ngx_cycle->log;
    ch->name.len = pc->name->len;
    ch->name.data = (u_char *) (ch + 1);
    ngx_memcpy(ch->name.data, pc->name->data, pc->name->len);
    ngx_memcpy(&ch->sockaddr, pc->sockaddr, pc->socklen);
    ch->socklen = pc->socklen;
    ch->wake_app = -1;
    ch->wake_app_rd = -1;
    ch->memfd = -1;
    ch->seg = MAP_FAILED;
    ch->serial = smcf->nchannels++;
    ch->connect_timeout = timeout;

    ngx_queue_init(&ch->wait_space);
    ngx_queue_init(&ch->ctl_pending);

    ch->wake_ev.handler = ngx_http_shm_channel_wake_app;
    ch->wake_ev.data = ch;
    ch->wake_ev.log = ch->log;
    ch->space_ev.handler = ngx_http_shm_channel_space_handler;
    ch->space_ev.data = ch;
    ch->space_ev.log = ch->log;

    /* ring_size: the two rings share the configured size */

    ch->req.size = (uint32_t) (segment_size / 2);
    ch->seg_size = NGXSHM_HDR_SIZE + 2 * (size_t) ch->req.size;
    ch->window = ch->req.size / 4;
    ch->max_frame = ch->req.size / 8;
    ch->max_streams = NGX_HTTP_SHM_MAX_STREAMS;

    fd = ngx_socket(AF_UNIX, SOCK_STREAM, 0);
    if (fd == (ngx_socket_t) -1) {
        ngx_log_error(NGX_LOG_ALERT, pc->log, ngx_socket_errno,
                      ngx_socket_n " failed");
        ngx_free(ch);
        return NULL;
    }

    c = ngx_get_connection(fd, pc->log);
    if (c == NULL) {
        ngx_close_socket(fd);
        ngx_free(ch);
        return NULL;
    }

    ch->conn = c;
    c->data = ch;
    c->log = ch->log;
    c->read->log = ch->log;
    c->write->log = ch->log;
    c->type = SOCK_STREAM;
    c->recv = ngx_recv;
    c->send = ngx_send;

    if (ngx_nonblocking(fd) == -1) {
        ngx_log_error(NGX_LOG_ALERT, pc->log, ngx_socket_errno,
                      ngx_nonblocking_n " failed");
        goto failed;
    }

    /*
     * a UNIX socket connects at once or not at all: EAGAIN means the
     * sidecar's listen queue is full, and fails like a refusal
     */

    if (connect(fd, (struct sockaddr *) &ch->sockaddr, ch->socklen) == -1) {
        ngx_log_error(NGX_LOG_ERR, pc->log, ngx_socket_errno,
                      "connect() to sidecar %V failed", pc->name);
        goto failed;
    }

    if (ngx_http_shm_channel_setup(ch) != NGX_OK) {
        goto failed;
    }

    ngx_queue_insert_tail(&smcf->channels, &ch->queue);
    ch->listed = 1;

    return ch;

failed:

    ngx_http_shm_channel_close(ch);

    return NULL;
}


static ngx_int_t
ngx_http_shm_channel_setup(ngx_http_shm_channel_t *ch)
{
    int                  efd, pfd[2];
    uint32_t             i;
    ngx_connection_t    *c;
    ngxshm_seg_hdr_t    *hdr;

    c = ch->conn;

    ch->memfd = memfd_create("ngx_http_shm", MFD_CLOEXEC|MFD_ALLOW_SEALING);
    if (ch->memfd == -1) {
        ngx_log_error(NGX_LOG_ERR, ch->log, ngx_errno,
                      "memfd_create() for sidecar %V failed", &ch->name);
        return NGX_ERROR;
    }

    if (ftruncate(ch->memfd, ch->seg_size) == -1) {
        ngx_log_error(NGX_LOG_ERR, ch->log, ngx_errno,
                      "ftruncate(%uz) for sidecar %V failed",
                      ch->seg_size, &ch->name);
        return NGX_ERROR;
    }

    ch->seg = mmap(NULL, ch->seg_size, PROT_READ|PROT_WRITE, MAP_SHARED,
                   ch->memfd, 0);
    if (ch->seg == MAP_FAILED) {
        ngx_log_error(NGX_LOG_ERR, ch->log, ngx_errno,
                      "mmap(%uz) for sidecar %V failed",
                      ch->seg_size, &ch->name);
        return NGX_ERROR;
    }

    if (fcntl(ch->memfd, F_ADD_SEALS,
              F_SEAL_SHRINK|F_SEAL_GROW|F_SEAL_SEAL) == -1)
    {
        ngx_log_error(NGX_LOG_ERR, ch->log, ngx_errno,
                      "fcntl(F_ADD_SEALS) for sidecar %V failed", &ch->name);
        return NGX_ERROR;
    }

    hdr = (ngxshm_seg_hdr_t *) ch->seg;
    hdr->magic = NGXSHM_MAGIC;
    hdr->version = NGXSHM_VERSION;
    hdr->hdr_size = NGXSHM_HDR_SIZE;
    hdr->flags = 0;
    hdr->seg_size = ch->seg_size;
    hdr->ring_size = ch->req.size;
    hdr->max_frame = ch->max_frame;
    hdr->max_streams = ch->max_streams;
    hdr->window = ch->window;
    hdr->nginx_pid = (uint32_t) ngx_pid;

    ngxshm_ring_init(&ch->req, ch->seg, NGXSHM_RING_TO_APP, hdr->ring_size,
                     ch->max_frame);
    ngxshm_ring_init(&ch->resp, ch->seg, NGXSHM_RING_TO_NGINX,
                     hdr->ring_size, ch->max_frame);

    /* both consumers start asleep: the first frame each way signals */
    ch->req.ctrl->sleeping = 1;
    ch->resp.ctrl->sleeping = 1;

    ch->slots = ngx_calloc(ch->max_streams
                           * (sizeof(ngx_http_shm_stream_t *)
                              + 2 * sizeof(uint32_t)), ch->log);
    if (ch->slots == NULL) {
        return NGX_ERROR;
    }

    ch->gens = (uint32_t *) (ch->slots + ch->max_streams);
    ch->free_slots = ch->gens + ch->max_streams;

    for (i = 0; i < ch->max_streams; i++) {
        /* lowest slots first: they stay warm in both caches */
        ch->free_slots[i] = ch->max_streams - 1 - i;
    }

    ch->nfree = ch->max_streams;

    /*
     * the sidecar is woken through a pipe: its read end and our write end
     * are two open files, so nothing the sidecar does to its end (clear
     * O_NONBLOCK, stop reading) can make our write() block; an eventfd
     * would share one open file, and its flags, with the sidecar
     */

    if (pipe2(pfd, O_CLOEXEC|O_NONBLOCK) == -1) {
        ngx_log_error(NGX_LOG_ERR, ch->log, ngx_errno,
                      "pipe2() for sidecar %V failed", &ch->name);
        return NGX_ERROR;
    }

    ch->wake_app_rd = pfd[0];
    ch->wake_app = pfd[1];

    efd = eventfd(0, EFD_CLOEXEC|EFD_NONBLOCK);
    if (efd == -1) {
        ngx_log_error(NGX_LOG_ERR, ch->log, ngx_errno,
                      "eventfd() for sidecar %V failed", &ch->name);
        return NGX_ERROR;
    }

    ch->notify = ngx_get_connection(efd, ch->log);
    if (ch->notify == NULL) {
        close(efd);
        return NGX_ERROR;
    }

    ch->notify->data = ch;
    ch->notify->log = ch->log;
    ch->notify->read->log = ch->log;
    ch->notify->write->log = ch->log;
    ch->notify->read->handler = ngx_http_shm_channel_notify;

    if (ngx_add_event(ch->notify->read, NGX_READ_EVENT, NGX_CLEAR_EVENT)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (ngx_http_shm_channel_hello(ch) != NGX_OK) {
        return NGX_ERROR;
    }

    /* the mapping and the sidecar's copy keep the segment alive */

    close(ch->memfd);
    ch->memfd = -1;

    close(ch->wake_app_rd);
    ch->wake_app_rd = -1;

    ch->state = NGX_HTTP_SHM_CH_HANDSHAKE;

    c->read->handler = ngx_http_shm_channel_read;
    c->write->handler = ngx_http_shm_channel_idle;

    if (!c->read->active
        && ngx_add_event(c->read, NGX_READ_EVENT, NGX_CLEAR_EVENT) != NGX_OK)
    {
        return NGX_ERROR;
    }

    ngx_add_timer(c->read, ch->connect_timeout);

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, ch->log, 0,
                   "http shm channel %V: %uz bytes segment",
                   &ch->name, ch->seg_size);

    return NGX_OK;
}


static ngx_int_t
ngx_http_shm_channel_hello(ngx_http_shm_channel_t *ch)
{
    ssize_t          n;
    ngx_err_t        err;
    struct iovec     iov;
    struct msghdr    msg;
    struct cmsghdr  *cmsg;
    ngxshm_msg_t     hello;
    int              fds[3];

    union {
        struct cmsghdr  cm;
        char            space[CMSG_SPACE(sizeof(fds))];
    } cmsgbuf;

    ngx_memzero(&hello, sizeof(ngxshm_msg_t));
    hello.magic = NGXSHM_MAGIC;
    hello.version = NGXSHM_VERSION;
    hello.type = NGXSHM_MSG_HELLO;
    hello.size = sizeof(ngxshm_msg_t);
    hello.pid = (uint32_t) ngx_pid;
    hello.seg_size = ch->seg_size;

    fds[0] = ch->memfd;
    fds[1] = ch->wake_app_rd;
    fds[2] = ch->notify->fd;

    iov.iov_base = &hello;
    iov.iov_len = sizeof(ngxshm_msg_t);

    ngx_memzero(&msg, sizeof(struct msghdr));
    ngx_memzero(&cmsgbuf, sizeof(cmsgbuf));
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = &cmsgbuf;
    msg.msg_controllen = sizeof(cmsgbuf);

    cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(fds));
    ngx_memcpy(CMSG_DATA(cmsg), fds, sizeof(fds));

    n = sendmsg(ch->conn->fd, &msg, MSG_NOSIGNAL);

    if (n == (ssize_t) sizeof(ngxshm_msg_t)) {
        return NGX_OK;
    }

    err = (n == -1) ? ngx_errno : 0;

    if (err == NGX_EPIPE || err == NGX_ECONNRESET) {

        /* the sidecar closed at once: a refusal may wait in the socket */

        n = recv(ch->conn->fd, (char *) &hello, sizeof(ngxshm_msg_t),
                 MSG_DONTWAIT);

        if (n == (ssize_t) sizeof(ngxshm_msg_t)
            && hello.magic == NGXSHM_MAGIC
            && hello.type == NGXSHM_MSG_HELLO_ACK
            && hello.size == sizeof(ngxshm_msg_t)
            && hello.status > 0)
        {
            ngx_log_error(NGX_LOG_ERR, ch->log, (ngx_err_t) hello.status,
                          "sidecar %V refused the channel (version %uD)",
                          &ch->name, hello.version);
            return NGX_ERROR;
        }

        ngx_log_error(NGX_LOG_ERR, ch->log, err,
                      "sidecar %V closed the channel during the handshake",
                      &ch->name);
        return NGX_ERROR;
    }

    ngx_log_error(NGX_LOG_ERR, ch->log, err,
                  "sending hello to sidecar %V failed", &ch->name);

    return NGX_ERROR;
}


static void
ngx_http_shm_channel_idle(ngx_event_t *wev)
{
    /* the socket is never written after the handshake */
}


static void
ngx_http_shm_channel_read(ngx_event_t *rev)
{
    ssize_t                  n;
    ngx_int_t                rc;
    ngx_connection_t        *c;
    ngx_http_shm_channel_t  *ch;
    ngxshm_msg_t             ack;

    c = rev->data;
    ch = c->data;

    if (rev->timedout) {
        ngx_http_shm_channel_fail(ch, NGX_LOG_ERR,
                                  "sidecar did not answer the handshake "
                                  "within shm_connect_timeout");
        return;
    }

    n = recv(c->fd, (char *) &ack, sizeof(ngxshm_msg_t), MSG_DONTWAIT);

    if (n == -1) {
        if (ngx_socket_errno == NGX_EAGAIN) {
            if (ch->wake_broken) {
                /* no EOF came with it: the sidecar closed just the pipe */
                ngx_http_shm_channel_fail(ch, NGX_LOG_ERR,
                                          "sidecar closed its wake-up pipe");
            }

            return;
        }

        ngx_log_error(NGX_LOG_INFO, ch->log, ngx_socket_errno,
                      "recv() from sidecar %V failed", &ch->name);
        ngx_http_shm_channel_fail(ch, NGX_LOG_ERR,
                                  "channel socket failed");
        return;
    }

    if (n == 0) {
        ngx_http_shm_channel_fail(ch, ch->state == NGX_HTTP_SHM_CH_READY
                                      ? NGX_LOG_INFO : NGX_LOG_ERR,
                                  ch->state == NGX_HTTP_SHM_CH_READY
                                  ? "sidecar closed the channel"
                                  : "sidecar closed the channel "
                                    "during the handshake");
        return;
    }

    rc = ngx_http_shm_check_ack(&ack, (size_t) n);

    if (ch->state != NGX_HTTP_SHM_CH_HANDSHAKE
        || rc == NGX_HTTP_SHM_ACK_INVALID)
    {
        ngx_http_shm_channel_fail(ch, NGX_LOG_ERR,
                                  "sidecar sent an invalid control message");
        return;
    }

    if (rc == NGX_HTTP_SHM_ACK_REFUSED) {
        ngx_log_error(NGX_LOG_ERR, ch->log,
                      ack.status > 0 ? (ngx_err_t) ack.status : 0,
                      "sidecar %V refused the channel (version %uD)",
                      &ch->name, ack.version);
        ngx_http_shm_channel_fail(ch, NGX_LOG_ERR,
                                  "sidecar refused the channel");
        return;
    }

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, ch->log, 0,
                   "http shm channel %V ready, sidecar pid %uD",
                   &ch->name, ack.pid);

    ch->state = NGX_HTTP_SHM_CH_READY;

    if (rev->timer_set) {
        ngx_del_timer(rev);
    }

    /*
     * the events are edge-triggered: an EOF or a message that came with
     * the acknowledgement brings no new event, so look for it now (once:
     * in the ready state anything but EAGAIN fails the channel)
     */

    ngx_http_shm_channel_read(rev);
}


static void
ngx_http_shm_channel_notify(ngx_event_t *rev)
{
    ngx_connection_t        *c;
    ngx_http_shm_channel_t  *ch;

    c = rev->data;
    ch = c->data;

    /*
     * efd_nginx is never read: it is one open file with the sidecar's
     * copy, O_NONBLOCK included, so a sidecar could make it blocking and
     * take the count first, and read() would hang the worker; with
     * EPOLLET each write to it is an event all the same
     */

    ngx_http_shm_channel_drain(ch);
}


static void
ngx_http_shm_channel_drain(ngx_http_shm_channel_t *ch)
{
    const char            *bad;
    const u_char          *payload;
    ngxshm_frame_t         f;

    for ( ;; ) {

        for ( ;; ) {
            payload = ngxshm_ring_peek(&ch->resp, &f, &bad);

            if (payload == NULL) {
                break;
            }

            if (ngx_http_shm_channel_frame(ch, &f, payload) != NGX_OK) {
                return;
            }

            ngxshm_ring_consume(&ch->resp, &f);
        }

        if (bad) {
            ngx_http_shm_channel_fail(ch, NGX_LOG_ERR, bad);
            return;
        }

        if (ngxshm_ring_consumed(&ch->resp)) {
            ch->wake = 1;
        }

        if (!ngxshm_ring_sleep(&ch->resp)) {
            break;
        }
    }

    /* the sidecar may have freed space in the request ring */

    ngx_http_shm_channel_space(ch);

    (void) ngx_http_shm_channel_settle(ch);
}


/*
 * at a point where nobody iterates the channel: fail it if a ring
 * operation found it broken, close it if it went away and is idle;
 * NGX_DONE if the channel is gone
 */

static ngx_int_t
ngx_http_shm_channel_settle(ngx_http_shm_channel_t *ch)
{
    if (ch->broken) {
        ngx_http_shm_channel_fail(ch, NGX_LOG_ERR,
                                  "request ring head out of range");
        return NGX_DONE;
    }

    if (ch->goaway && ch->nstreams == 0
        && ngx_queue_empty(&ch->ctl_pending))
    {
        ngx_log_error(NGX_LOG_INFO, ch->log, 0,
                      "sidecar %V went away, channel closed", &ch->name);
        ngx_http_shm_channel_close(ch);
        return NGX_DONE;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_shm_channel_frame(ngx_http_shm_channel_t *ch, ngxshm_frame_t *f,
    const u_char *payload)
{
    uint32_t                n;
    const char             *bad;
    ngx_http_shm_chunk_t   *chunk, *last;
    ngx_http_shm_stream_t  *s;
    ngxshm_head_t           head;

    ngx_log_debug5(NGX_LOG_DEBUG_HTTP, ch->log, 0,
                   "http shm frame type:%ud flags:%ud stream:%uD/%uD "
                   "len:%uD", f->type, f->flags, f->stream, f->gen, f->len);

    chunk = NULL;

    /* type, GOAWAY and slot range: ngx_http_shm_check.h, also in fuzz/ */

    bad = ngx_http_shm_check_frame(f, ch->max_streams);

    if (bad) {
        goto violation;
    }

    if (f->type == NGXSHM_GOAWAY) {
        ch->goaway = 1;
        return NGX_OK;
    }

    s = ch->slots[f->stream];

    if (s == NULL || s->gen != f->gen) {
        if (f->gen == 0 || f->gen > ch->gens[f->stream]) {
            bad = "frame for a stream never opened";
            goto violation;
        }

        /* a late frame for a stream that was cancelled */
        return NGX_OK;
    }

    last = NULL;

    if (f->type == NGXSHM_RESP_BODY && s->in_last != &s->in) {
        /*
         * small body frames go into the room left in the last chunk: a
         * flood of tiny frames costs about the bytes it carries, not a
         * chunk each
         */

        last = (ngx_http_shm_chunk_t *)
                   ((u_char *) s->in_last
                    - offsetof(ngx_http_shm_chunk_t, next));

        if (!last->body || f->len > last->cap - last->len) {
            last = NULL;
        }
    }

    if (f->len && last == NULL
        && (f->type == NGXSHM_RESP_HEAD || f->type == NGXSHM_RESP_BODY))
    {
        /* copied once: everything below looks at our copy only */

        n = f->len;

        if (f->type == NGXSHM_RESP_BODY && n < NGX_HTTP_SHM_CHUNK_MIN_BODY) {
            n = NGX_HTTP_SHM_CHUNK_MIN_BODY;
        }

        chunk = ngx_http_shm_chunk_alloc(ch->smcf, n, ch->log);
        if (chunk == NULL) {
            ngx_http_shm_stream_fail(s, 1, NULL);
            return NGX_OK;
        }

        chunk->next = NULL;
        chunk->len = f->len;
        chunk->pos = 0;
        chunk->body = (f->type == NGXSHM_RESP_BODY);
        ngx_memcpy(chunk->data, payload, f->len);
    }

    switch (f->type) {

    case NGXSHM_CREDIT:
        if (f->len != sizeof(uint32_t) || f->flags != 0) {
            bad = "invalid CREDIT frame";
            goto violation;
        }

        ngx_memcpy(&n, payload, sizeof(uint32_t));

        if (n == 0 || n > ch->window - s->send_credit) {
            bad = "credit beyond the window";
            goto violation;
        }

        s->send_credit += n;

        if (s->send_credit == n && s->sent < s->send_total) {
            ngx_http_shm_stream_wake(s);
        }

        return NGX_OK;

    case NGXSHM_RESET:
        if (f->len != 0 || f->flags != 0) {
            bad = "invalid RESET frame";
            goto violation;
        }

        if (s->in_end) {
            bad = "RESET after the end of the response";
            goto violation;
        }

        ngx_log_error(NGX_LOG_ERR, ch->log, 0,
                      "sidecar %V reset stream %uD", &ch->name, f->stream);

        s->reset = 1;
        s->in_end = 1;
        ngx_http_shm_stream_fail(s, !s->out_end, NULL);
        return NGX_OK;

    case NGXSHM_RESP_HEAD:
        if (s->head_done) {
            bad = "response head after the head";
            goto violation;
        }

        if (f->flags & ~(NGXSHM_F_END|NGXSHM_F_CONT)
            || (f->flags & (NGXSHM_F_END|NGXSHM_F_CONT))
               == (NGXSHM_F_END|NGXSHM_F_CONT))
        {
            bad = "invalid flags on a head frame";
            goto violation;
        }

        if (s->head_bytes == 0) {
            if (f->len < sizeof(ngxshm_head_t)) {
                bad = "short first head frame";
                goto violation;
            }

            ngx_memcpy(&head, chunk->data, sizeof(ngxshm_head_t));

            if (head.size < sizeof(ngxshm_head_t)) {
                bad = "invalid head block size";
                goto violation;
            }

            s->head_size = head.size;

            if (head.size > s->head_max) {
                ngx_log_error(NGX_LOG_ERR, ch->log, 0,
                              "sidecar %V sent too big header: %uD bytes, "
                              "\"shm_buffer_size\" is %uz",
                              &ch->name, head.size, s->head_max);
                ngx_http_shm_chunk_free(ch->smcf, chunk);
                ngx_http_shm_stream_fail(s, 1, NULL);
                return NGX_OK;
            }
        }

        if (f->len > s->head_size - s->head_bytes) {
            bad = "head frames longer than the head block";
            goto violation;
        }

        s->head_bytes += f->len;

        if (!(f->flags & NGXSHM_F_CONT)) {
            if (s->head_bytes != s->head_size) {
                bad = "head frames shorter than the head block";
                goto violation;
            }

            s->head_done = 1;
        }

        break;

    default: /* NGXSHM_RESP_BODY */
        if (!s->head_done || s->in_end) {
            bad = s->in_end ? "body frame after the end of the response"
                            : "body frame before the response head";
            goto violation;
        }

        if (f->flags & ~NGXSHM_F_END) {
            bad = "invalid flags on a body frame";
            goto violation;
        }

        if (f->len > s->recv_window) {
            bad = "body beyond the credit";
            goto violation;
        }

        s->recv_window -= f->len;

        if (last) {
            ngx_memcpy(last->data + last->len, payload, f->len);
            last->len += f->len;
            s->in_bytes += f->len;
        }

        break;
    }

    if (chunk) {
        *s->in_last = chunk;
        s->in_last = &chunk->next;
        s->in_bytes += f->len;
    }

    if (f->flags & NGXSHM_F_END) {
        s->in_end = 1;
    }

    if (s->in_end && s->out_end) {
        /* both directions ended: the slot is free for the next stream */
        ngx_http_shm_stream_unslot(s);
    }

    ngx_http_shm_stream_wake(s);

    return NGX_OK;

violation:

    if (chunk) {
        ngx_http_shm_chunk_free(ch->smcf, chunk);
    }

    ngx_http_shm_channel_fail(ch, NGX_LOG_ERR, bad);

    return NGX_ERROR;
}


static void
ngx_http_shm_channel_space(ngx_http_shm_channel_t *ch)
{
    ngx_queue_t            *q;
    ngx_http_shm_stream_t  *s;

    while (!ngx_queue_empty(&ch->ctl_pending)) {
        q = ngx_queue_head(&ch->ctl_pending);
        s = ngx_queue_data(q, ngx_http_shm_stream_t, ctl);

        if (ngx_http_shm_stream_ctl(s) != NGX_OK) {
            break;
        }
    }

    ngx_http_shm_channel_wake_waiters(ch);

    ngx_http_shm_channel_signal(ch);
}


static void
ngx_http_shm_channel_space_handler(ngx_event_t *ev)
{
    ngx_http_shm_channel_wake_waiters(ev->data);
}


/*
 * Wakes, first come first served, the streams waiting for room that the
 * free part of the request ring can take, as ngxshm_ring_reserve() would
 * place their frames.  Waking them all made all but the first few find
 * no room and queue again: 64 uploads of 1 MiB at a time took 51
 * wake-ups per request, now 12.  If some are left, the sidecar is asked to
 * signal when it consumes, and space_ev, posted after the woken streams,
 * looks again once they have run, in case some of them wrote nothing.
 */

static void
ngx_http_shm_channel_wake_waiters(ngx_http_shm_channel_t *ch)
{
    uint32_t                head, pos, used, take;
    ngx_uint_t              armed, woken;
    ngx_queue_t            *q;
    ngx_http_shm_stream_t  *s;

    armed = 0;
    woken = 0;

again:

    head = ngxshm_load_acquire(&ch->req.ctrl->head);
    pos = ch->req.pos;

    if (head - ch->req.peer > pos - ch->req.peer) {
        /* out of range: the first waiter's ngxshm_ring_reserve() says so */
        used = 0;

    } else {
        used = pos - head;
    }

    while (!ngx_queue_empty(&ch->wait_space)) {
        q = ngx_queue_head(&ch->wait_space);
        s = ngx_queue_data(q, ngx_http_shm_stream_t, wait);

        take = ngxshm_ring_fit(ch->req.size, pos, used, s->wait_need);

        if (take == 0) {
            break;
        }

        pos += take;
        used += take;

        ngx_queue_remove(q);
        s->waiting = 0;
        woken++;

        s->wev.ready = 1;
        ngx_post_event(&s->wev, &ngx_posted_events);
    }

    if (ngx_queue_empty(&ch->wait_space)) {
        return;
    }

    if (woken) {
        if (!ch->space_ev.posted) {
            ngx_post_event(&ch->space_ev, &ngx_posted_events);
        }

        return;
    }

    if (!armed) {
        /* the sidecar may have consumed before it saw the flag */
        ngxshm_ring_wait_space(&ch->req);
        armed = 1;
        goto again;
    }
}


static void
ngx_http_shm_channel_signal(ngx_http_shm_channel_t *ch)
{
    /*
     * the eventfd is written once the event handlers that are running
     * now have all produced their frames: one write for a whole batch
     * of requests instead of one each
     */

    if (ch->wake && ch->wake_app != -1 && !ch->wake_ev.posted) {
        ngx_post_event(&ch->wake_ev, &ngx_posted_events);
    }
}


static void
ngx_http_shm_channel_wake_app(ngx_event_t *ev)
{
    ngx_err_t                err;
    ngx_http_shm_channel_t  *ch;

    ch = ev->data;

    if (!ch->wake || ch->wake_app == -1) {
        return;
    }

    ch->wake = 0;

    /* a full pipe is fine: the sidecar has wake-ups it has not read */

    if (write(ch->wake_app, "", 1) == -1) {
        err = ngx_errno;

        if (err == NGX_EAGAIN || err == NGX_EINTR) {
            return;
        }

        ngx_log_error(NGX_LOG_INFO, ch->log, err,
                      "write() to wake-up pipe of sidecar %V failed",
                      &ch->name);

        /*
         * a sidecar that exits closes its socket too: let the socket's
         * HELLO_ACK or EOF name the cause, and fail the channel for the
         * pipe only if the socket has nothing to say
         */

        close(ch->wake_app);
        ch->wake_app = -1;
        ch->wake_broken = 1;

        ngx_post_event(ch->conn->read, &ngx_posted_events);
    }
}


static void
ngx_http_shm_channel_fail(ngx_http_shm_channel_t *ch, ngx_uint_t level,
    const char *reason)
{
    uint32_t                i;
    ngx_http_shm_stream_t  *s;

    if (ch->nstreams) {
        ngx_log_error(NGX_LOG_ERR, ch->log, 0,
                      "sidecar %V: %s, channel closed with %ui streams "
                      "in flight", &ch->name, reason, ch->nstreams);

    } else {
        ngx_log_error(level, ch->log, 0, "sidecar %V: %s, channel closed",
                      &ch->name, reason);
    }

    if (ch->slots) {
        for (i = 0; i < ch->max_streams; i++) {
            s = ch->slots[i];

            if (s != NULL) {
                ngx_http_shm_stream_fail(s, 0, reason);
            }
        }
    }

    ngx_http_shm_channel_close(ch);
}


/* frees the channel; streams still on it are detached first */

static void
ngx_http_shm_channel_close(ngx_http_shm_channel_t *ch)
{
    ngx_queue_t               *q;
    ngx_http_shm_stream_t     *s;
    ngx_http_shm_main_conf_t  *smcf;

    smcf = ch->smcf;

    if (ch->listed) {
        ngx_queue_remove(&ch->queue);
        ch->listed = 0;
    }

    while (!ngx_queue_empty(&ch->wait_space)) {
        q = ngx_queue_head(&ch->wait_space);
        s = ngx_queue_data(q, ngx_http_shm_stream_t, wait);
        ngx_http_shm_stream_fail(s, 0, "channel closed");
    }

    while (!ngx_queue_empty(&ch->ctl_pending)) {
        q = ngx_queue_head(&ch->ctl_pending);
        ngx_queue_remove(q);
        s = ngx_queue_data(q, ngx_http_shm_stream_t, ctl);
        s->ctl_queued = 0;
        s->ch = NULL;

        if (s->request == NULL) {
            /* a released stream that waited to write its CANCEL */
            ngx_http_shm_stream_reap(smcf, s);
        }
    }

    if (ch->space_ev.posted) {
        ngx_delete_posted_event(&ch->space_ev);
    }

    if (ch->wake_ev.posted) {
        ngx_delete_posted_event(&ch->wake_ev);
    }

    if (ch->conn) {
        if (ch->conn->read->timer_set) {
            ngx_del_timer(ch->conn->read);
        }

        if (ch->conn->write->timer_set) {
            ngx_del_timer(ch->conn->write);
        }

        ngx_close_connection(ch->conn);
        ch->conn = NULL;
    }

    if (ch->notify) {
        /*
         * the sidecar shares this eventfd's file description, so close()
         * alone would leave it in our epoll set
         */
        if (ch->notify->read->active) {
            (void) ngx_del_event(ch->notify->read, NGX_READ_EVENT, 0);
        }

        ngx_close_connection(ch->notify);
        ch->notify = NULL;
    }

    if (ch->wake_app != -1) {
        close(ch->wake_app);
    }

    if (ch->wake_app_rd != -1) {
        close(ch->wake_app_rd);
    }

    if (ch->memfd != -1) {
        close(ch->memfd);
    }

    if (ch->seg != MAP_FAILED) {
        munmap(ch->seg, ch->seg_size);
    }

    if (ch->slots) {
        ngx_free(ch->slots);
    }

    ngx_free(ch);
}


/* streams */

static ngx_http_shm_stream_t *
ngx_http_shm_stream_open(ngx_http_shm_channel_t *ch, ngx_http_request_t *r,
    ngx_peer_connection_t *pc)
{
    ngx_queue_t               *q;
    ngx_connection_t          *c;
    ngx_http_shm_ctx_t        *ctx;
    ngx_http_shm_stream_t     *s;
    ngx_http_shm_main_conf_t  *smcf;

    smcf = ch->smcf;

    if (ch->nfree == 0) {
        ngx_log_error(NGX_LOG_ERR, pc->log, 0,
                      "no free stream on the channel to sidecar %V",
                      &ch->name);
        return NULL;
    }

    if (!ngx_queue_empty(&smcf->free_streams)) {
        q = ngx_queue_head(&smcf->free_streams);
        ngx_queue_remove(q);
        s = ngx_queue_data(q, ngx_http_shm_stream_t, queue);

    } else {
        s = ngx_alloc(sizeof(ngx_http_shm_stream_t), pc->log);
        if (s == NULL) {
            return NULL;
        }
    }

    ngx_memzero(s, sizeof(ngx_http_shm_stream_t));

    ctx = ngx_http_get_module_ctx(r, ngx_http_shm_module);

    s->ch = ch;
    s->smcf = smcf;
    s->request = r;
    s->slot = ch->free_slots[--ch->nfree];

    while (ch->gens[s->slot] == 0xffffffff) {
        /* generations never wrap: a slot that used them all retires */

        if (ch->nfree == 0) {
            ngx_log_error(NGX_LOG_ERR, pc->log, 0,
                          "no free stream on the channel to sidecar %V",
                          &ch->name);
            ngx_queue_insert_tail(&smcf->free_streams, &s->queue);
            return NULL;
        }

        s->slot = ch->free_slots[--ch->nfree];
    }

    s->gen = ++ch->gens[s->slot];
    s->head_len = ctx->head_len;
    s->send_total = ctx->send_total;
    s->send_credit = ch->window;
    s->recv_window = ch->window;
    s->head_max = r->upstream->conf->buffer_size;
    s->in_last = &s->in;

    ch->slots[s->slot] = s;
    ch->nstreams++;

    c = &s->c;

    c->read = &s->rev;
    c->write = &s->wev;
    c->fd = smcf->dummy_fd;
    c->recv = ngx_http_shm_recv;
    c->send = ngx_http_shm_send;
    c->recv_chain = ngx_http_shm_recv_chain;
    c->send_chain = ngx_http_shm_send_chain;
    c->log = pc->log;
    c->log_error = NGX_ERROR_ERR;
    c->type = SOCK_STREAM;
    c->sockaddr = pc->sockaddr;
    c->socklen = pc->socklen;
    c->addr_text = *pc->name;
    c->number = ngx_atomic_fetch_add(ngx_connection_counter, 1);
    c->start_time = ngx_current_msec;
    c->tcp_nopush = NGX_TCP_NOPUSH_DISABLED;
    c->tcp_nodelay = NGX_TCP_NODELAY_DISABLED;
    c->sendfile = 0;

    s->rev.data = c;
    s->rev.log = pc->log;
    s->rev.index = NGX_INVALID_INDEX;
    s->rev.active = 1;

    s->wev.data = c;
    s->wev.log = pc->log;
    s->wev.index = NGX_INVALID_INDEX;
    s->wev.active = 1;
    s->wev.write = 1;
    s->wev.ready = 1;

    s->start.data = s;
    s->start.handler = ngx_http_shm_stream_start;
    s->start.log = pc->log;

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, pc->log, 0,
                   "http shm stream %uD/%uD on %V", s->slot, s->gen,
                   &ch->name);

    return s;
}


/*
 * The first write event of a stream.  ngx_http_upstream_send_request()
 * asks a new connection for its SO_ERROR with getsockopt() before the
 * first send (one system call per request; a stream has no connect() to
 * check), and skips that once u->request_sent is set.  So the request
 * bufs go to u->output.in here, as ngx_output_chain() would put them there
 * (ngx_http_upstream_send_request_body() passes NULL once the request is
 * marked sent), and the upstream's own write handler sends them: its
 * errors, timers and retries stay the upstream's.  Request bodies are
 * always buffered on shm_pass locations (no r->request_body_no_buffering,
 * whose first send does more than this).
 */

static void
ngx_http_shm_stream_start(ngx_event_t *ev)
{
    ngx_http_shm_stream_t  *s = ev->data;

    ngx_chain_t          *cl, *ln, **ll;
    ngx_http_request_t   *r;
    ngx_http_upstream_t  *u;

    r = s->request;
    u = r->upstream;

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, s->c.log, 0,
                   "http shm stream %uD/%uD start", s->slot, s->gen);

    if (!u->request_sent
        && !r->request_body_no_buffering
        && u->output.in == NULL
        && u->output.busy == NULL)
    {
        ll = &u->output.in;

        for (cl = u->request_bufs; cl; cl = cl->next) {
            ln = ngx_alloc_chain_link(u->output.pool);
            if (ln == NULL) {
                /* leaves the first send to the upstream */
                u->output.in = NULL;
                goto send;
            }

            ln->buf = cl->buf;
            *ll = ln;
            ll = &ln->next;
        }

        *ll = NULL;
        u->request_sent = 1;
    }

send:

    s->wev.handler(&s->wev);
}


static void
ngx_http_shm_stream_wake(ngx_http_shm_stream_t *s)
{
    if (s->request == NULL) {
        return;
    }

    s->rev.ready = 1;

    if (!s->rev.posted) {
        ngx_post_event(&s->rev, &ngx_posted_events);
    }

    if (s->sent < s->send_total || s->failed) {
        s->wev.ready = 1;

        if (!s->wev.posted) {
            ngx_post_event(&s->wev, &ngx_posted_events);
        }
    }
}


/*
 * give the stream's slot back; the stream keeps its channel only while
 * it still has a control frame to write
 */

static void
ngx_http_shm_stream_unslot(ngx_http_shm_stream_t *s)
{
    ngx_http_shm_channel_t  *ch;

    ch = s->ch;

    if (ch == NULL || s->released) {
        return;
    }

    ch->slots[s->slot] = NULL;
    ch->nstreams--;
    s->released = 1;

    if (s->cancel) {
        /*
         * the slot is reused only once the CANCEL is in the ring: a new
         * stream's frames must come after it
         */
        s->slot_held = 1;

    } else {
        ch->free_slots[ch->nfree++] = s->slot;

        /* a CREDIT still queued is moot, and would name an old stream */
        s->unreported = 0;

        if (s->ctl_queued) {
            ngx_queue_remove(&s->ctl);
            s->ctl_queued = 0;
        }
    }

    if (s->waiting) {
        ngx_queue_remove(&s->wait);
        s->waiting = 0;
    }

    if (!s->ctl_queued) {
        s->ch = NULL;
    }
}


/*
 * the stream cannot go on: recv and send fail and the upstream sees it;
 * with "cancel" the sidecar is told
 */

static void
ngx_http_shm_stream_fail(ngx_http_shm_stream_t *s, ngx_uint_t cancel,
    const char *reason)
{
    ngx_http_shm_channel_t  *ch;

    ch = s->ch;
    s->failed = 1;

    if (reason && s->request) {
        ngx_log_error(NGX_LOG_ERR, s->c.log, 0, "sidecar %V: %s",
                      &s->c.addr_text, reason);
    }

    if (ch) {
        if (s->waiting) {
            ngx_queue_remove(&s->wait);
            s->waiting = 0;
        }

        /* the sidecar knows a stream only once its first frame is out */

        if (cancel && !s->released && s->sent > 0) {
            s->cancel = 1;
        }

        if (!s->cancel && s->ctl_queued) {
            ngx_queue_remove(&s->ctl);
            s->ctl_queued = 0;
        }

        s->unreported = 0;

        if (s->cancel) {
            (void) ngx_http_shm_stream_ctl(s);
        }

        if (!s->released) {
            ngx_http_shm_stream_unslot(s);
        }

        if (!s->ctl_queued) {
            s->ch = NULL;
        }
    }

    ngx_http_shm_stream_wake(s);
}


/*
 * write the stream's pending control frame (CANCEL or CREDIT): NGX_OK
 * when nothing is left pending, NGX_AGAIN when the ring is full (the
 * stream then waits in ctl_pending, and keeps its channel)
 */

static ngx_int_t
ngx_http_shm_stream_ctl(ngx_http_shm_stream_t *s)
{
    int                      bad;
    uint32_t                 len;
    ngx_http_shm_channel_t  *ch;
    ngxshm_frame_t          *f;

    ch = s->ch;

    if (ch == NULL || (!s->cancel && s->unreported == 0)) {
        goto done;
    }

    bad = 0;
    len = s->cancel ? 0 : sizeof(uint32_t);

    f = ngxshm_ring_reserve(&ch->req, len, &bad);

    if (f == NULL && !bad) {
        ngxshm_ring_wait_space(&ch->req);
        f = ngxshm_ring_reserve(&ch->req, len, &bad);
    }

    if (bad) {
        ch->broken = 1;
        goto done;
    }

    if (f == NULL) {
        if (!s->ctl_queued) {
            ngx_queue_insert_tail(&ch->ctl_pending, &s->ctl);
            s->ctl_queued = 1;
        }

        return NGX_AGAIN;
    }

    f->len = len;
    f->flags = 0;
    f->reserved = 0;
    f->stream = s->slot;
    f->gen = s->gen;

    if (s->cancel) {
        f->type = NGXSHM_CANCEL;
        s->cancel = 0;

        if (s->slot_held) {
            ch->free_slots[ch->nfree++] = s->slot;
            s->slot_held = 0;
        }

    } else {
        f->type = NGXSHM_CREDIT;
        ngx_memcpy((u_char *) f + sizeof(ngxshm_frame_t), &s->unreported,
                   sizeof(uint32_t));
        s->recv_window += s->unreported;
    }

    s->unreported = 0;

    if (ngxshm_ring_commit(&ch->req, len)) {
        ch->wake = 1;
    }

done:

    s->cancel = 0;

    if (s->ctl_queued) {
        ngx_queue_remove(&s->ctl);
        s->ctl_queued = 0;
    }

    if (s->released) {
        s->ch = NULL;

        if (s->request == NULL) {
            ngx_http_shm_stream_reap(ch->smcf, s);
        }
    }

    return NGX_OK;
}


/* peer.free: the upstream is done with the stream */

static void
ngx_http_shm_stream_release(ngx_http_shm_stream_t *s)
{
    ngx_http_shm_channel_t    *ch;
    ngx_http_shm_main_conf_t  *smcf;

    ch = s->ch;
    smcf = ngx_http_get_module_main_conf(s->request, ngx_http_shm_module);

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, s->c.log, 0,
                   "http shm stream %uD/%uD release%s", s->slot, s->gen,
                   s->released ? "" : ", cancel");

    ngx_http_shm_stream_unlend(s);

    s->request = NULL;
    s->destroyed = 1;
    s->c.fd = (ngx_socket_t) -1;

    if (ch == NULL) {
        ngx_http_shm_stream_reap(smcf, s);
        return;
    }

    if (!s->released) {
        s->cancel = (s->sent > 0);
        ngx_http_shm_stream_unslot(s);
        s->ch = ch;
    }

    /* reaps the stream unless its CANCEL waits for ring space */
    if (ngx_http_shm_stream_ctl(s) == NGX_AGAIN) {
        s->ch = ch;
    }

    ngx_http_shm_channel_signal(ch);
    (void) ngx_http_shm_channel_settle(ch);
}


/* a stream nobody uses goes to limbo, then to the free list */

static void
ngx_http_shm_stream_reap(ngx_http_shm_main_conf_t *smcf,
    ngx_http_shm_stream_t *s)
{
    ngx_http_shm_stream_free_chunks(s);
    s->ch = NULL;

    ngx_queue_insert_tail(&smcf->limbo_streams, &s->queue);

    if (!smcf->reaper.posted) {
        ngx_post_event(&smcf->reaper, &ngx_posted_events);
    }
}


static void
ngx_http_shm_stream_free_chunks(ngx_http_shm_stream_t *s)
{
    ngx_http_shm_chunk_t  *chunk, *next;

    ngx_http_shm_stream_unlend(s);

    for (chunk = s->in; chunk; chunk = next) {
        next = chunk->next;
        ngx_http_shm_chunk_free(s->smcf, chunk);
    }

    s->in = NULL;
    s->in_last = &s->in;
    s->in_bytes = 0;
}


/*
 * The pipe may hold slices of the stream's first chunk: that chunk goes
 * to the request's lent list, the rest stays with the stream.
 */

static void
ngx_http_shm_stream_unlend(ngx_http_shm_stream_t *s)
{
    ngx_http_shm_lent_t   *lent;
    ngx_http_shm_chunk_t  *chunk;

    lent = s->lent;

    if (lent == NULL) {
        return;
    }

    chunk = s->in;

    if (chunk && chunk->refs) {
        s->in_bytes -= chunk->len - chunk->pos;
        ngx_http_shm_stream_shift(s);
    }

    lent->stream = NULL;
    s->lent = NULL;
}


/*
 * The stream's first chunk is done with: freed, or kept on the request's
 * lent list while the pipe still holds slices of it.
 */

static void
ngx_http_shm_stream_shift(ngx_http_shm_stream_t *s)
{
    ngx_http_shm_chunk_t  *chunk;

    chunk = s->in;
    s->in = chunk->next;

    if (s->in == NULL) {
        s->in_last = &s->in;
    }

    if (chunk->refs == 0) {
        ngx_http_shm_chunk_free(s->smcf, chunk);
        return;
    }

    chunk->next = s->lent->chunks;
    s->lent->chunks = chunk;
}


static void
ngx_http_shm_lent_cleanup(void *data)
{
    ngx_http_shm_lent_t  *lent = data;

    ngx_http_shm_chunk_t  *chunk, *next;

    if (lent->stream) {
        ngx_http_shm_stream_unlend(lent->stream);
    }

    for (chunk = lent->chunks; chunk; chunk = next) {
        next = chunk->next;
        ngx_http_shm_chunk_free(lent->smcf, chunk);
    }

    lent->chunks = NULL;
}


/*
 * Released streams wait in limbo until the current event handler has
 * returned: in 1.22 the event pipe may still look at p->upstream after
 * the request was finalized.
 */

static void
ngx_http_shm_reaper(ngx_event_t *ev)
{
    ngx_queue_t               *q;
    ngx_http_shm_main_conf_t  *smcf;

    smcf = ev->data;

    while (!ngx_queue_empty(&smcf->limbo_streams)) {
        q = ngx_queue_head(&smcf->limbo_streams);
        ngx_queue_remove(q);
        ngx_queue_insert_tail(&smcf->free_streams, q);
    }
}


static ngx_http_shm_chunk_t *
ngx_http_shm_chunk_alloc(ngx_http_shm_main_conf_t *smcf, uint32_t len,
    ngx_log_t *log)
{
    size_t                 size;
    ngx_uint_t             cls;
    ngx_http_shm_chunk_t  *chunk;

    size = offsetof(ngx_http_shm_chunk_t, data) + len;

    for (cls = NGX_HTTP_SHM_CHUNK_MIN_CLASS; ((size_t) 1 << cls) < size; cls++)
    {
        /* void */
    }

    chunk = smcf->chunks[cls];

    if (chunk) {
        smcf->chunks[cls] = chunk->next;
        smcf->chunks_cached -= (size_t) 1 << cls;

    } else {
        chunk = ngx_alloc((size_t) 1 << cls, log);
        if (chunk == NULL) {
            return NULL;
        }
    }

    chunk->cls = cls;
    chunk->cap = ((size_t) 1 << cls) - offsetof(ngx_http_shm_chunk_t, data);
    chunk->refs = 0;

    return chunk;
}


static void
ngx_http_shm_chunk_free(ngx_http_shm_main_conf_t *smcf,
    ngx_http_shm_chunk_t *chunk)
{
    size_t  size;

    size = (size_t) 1 << chunk->cls;

    if (smcf->chunks_cached + size > NGX_HTTP_SHM_CHUNK_CACHE) {
        ngx_free(chunk);
        return;
    }

    chunk->next = smcf->chunks[chunk->cls];
    smcf->chunks[chunk->cls] = chunk;
    smcf->chunks_cached += size;
}


/* the virtual connection */

/*
 * The bytes waiting; or, if none, what recv() returns (0 at the end,
 * NGX_AGAIN, NGX_ERROR) with the read event set as ngx_unix_recv()
 * leaves it: no "ready" after an error or EOF, else the non-buffered
 * loop of the upstream code calls us again and again.
 */

static ssize_t
ngx_http_shm_recv_state(ngx_http_shm_stream_t *s)
{
    ngx_event_t  *rev;

    rev = s->c.read;

    if (s->destroyed || (s->failed && !s->in_end) || s->reset) {
        rev->error = 1;
        rev->ready = 0;
        return NGX_ERROR;
    }

    /* the head block goes up only when its last frame (no CONT) came */

    if (s->in_bytes == 0 || !s->head_done) {
        if (s->in_end) {
            rev->eof = 1;
            rev->ready = 0;
            return 0;
        }

        rev->ready = 0;
        return NGX_AGAIN;
    }

    return s->in_bytes;
}


/* n bytes, body of them, were taken: readiness, and credit to give */

static void
ngx_http_shm_recv_done(ngx_http_shm_stream_t *s, size_t n, size_t body)
{
    s->in_bytes -= n;

    s->c.read->ready = (s->in_bytes || s->in_end);

    if (body && !s->in_end && s->ch && !s->failed) {
        s->unreported += body;

        if (s->unreported >= s->ch->window / 2
            || (s->in_bytes == 0 && s->recv_window == 0))
        {
            if (ngx_http_shm_stream_ctl(s) == NGX_OK && s->ch) {
                ngx_http_shm_channel_signal(s->ch);
                (void) ngx_http_shm_channel_settle(s->ch);
            }
        }
    }
}


static ssize_t
ngx_http_shm_recv(ngx_connection_t *c, u_char *buf, size_t size)
{
    size_t                  n, k, body;
    ssize_t                 rc;
    ngx_http_shm_chunk_t   *chunk;
    ngx_http_shm_stream_t  *s;

    s = (ngx_http_shm_stream_t *) c;

    rc = ngx_http_shm_recv_state(s);

    if (rc <= 0) {
        return rc;
    }

    n = 0;
    body = 0;

    while (n < size && s->in) {
        chunk = s->in;
        k = ngx_min(size - n, chunk->len - chunk->pos);

        ngx_memcpy(buf + n, chunk->data + chunk->pos, k);

        n += k;
        chunk->pos += k;

        if (chunk->body) {
            body += k;
        }

        if (chunk->pos == chunk->len) {
            ngx_http_shm_stream_shift(s);
        }
    }

    ngx_http_shm_recv_done(s, n, body);

    return n;
}


/*
 * A buffer the pipe gives back: if it holds one of our slices, the slice
 * is released and the buffer is left without memory, NGX_OK; NGX_DECLINED
 * for the pipe's own memory (the upstream buffer that held the head).
 */

static ngx_int_t
ngx_http_shm_take_back(ngx_http_shm_stream_t *s, ngx_buf_t *b)
{
    ngx_http_shm_lent_t    *lent;
    ngx_http_shm_chunk_t   *chunk, **prev;

    if (b->start == NULL) {
        return NGX_OK;
    }

    lent = s->lent;
    chunk = s->in;

    if (chunk && chunk->refs
        && b->start >= chunk->data && b->start < chunk->data + chunk->len)
    {
        chunk->refs--;
        goto done;
    }

    for (prev = &lent->chunks; *prev; prev = &chunk->next) {
        chunk = *prev;

        if (b->start >= chunk->data && b->start < chunk->data + chunk->len) {
            if (--chunk->refs == 0) {
                *prev = chunk->next;
                ngx_http_shm_chunk_free(s->smcf, chunk);
            }

            goto done;
        }
    }

    return NGX_DECLINED;

done:

    b->start = NULL;
    b->pos = NULL;
    b->last = NULL;
    b->end = NULL;

    return NGX_OK;
}


/*
 * Points a buffer without memory at the next slice of the first chunk,
 * at most "size" bytes and the pipe's buffer size; the pipe advances
 * b->last over it as over bytes read.
 */

static ssize_t
ngx_http_shm_lend(ngx_http_shm_stream_t *s, ngx_buf_t *b, size_t size)
{
    size_t                 k, body;
    ngx_http_shm_lent_t   *lent;
    ngx_http_shm_chunk_t  *chunk;

    lent = s->lent;
    chunk = s->in;

    k = ngx_min(size, chunk->len - chunk->pos);
    k = ngx_min(k, lent->slice);

    b->start = chunk->data + chunk->pos;
    b->tag = (ngx_buf_tag_t) &ngx_http_shm_lend;
    b->pos = b->start;
    b->last = b->start;
    b->end = b->start + k;

    chunk->pos += k;
    chunk->refs++;
    body = chunk->body ? k : 0;

    if (chunk->pos == chunk->len) {
        ngx_http_shm_stream_shift(s);
    }

    ngx_http_shm_recv_done(s, k, body);

    return k;
}


static ssize_t
ngx_http_shm_recv_chain(ngx_connection_t *c, ngx_chain_t *in, off_t limit)
{
    size_t                  size;
    ssize_t                 n, total;
    ngx_buf_t              *b;
    ngx_http_shm_stream_t  *s;

    s = (ngx_http_shm_stream_t *) c;

    /*
     * nothing to read, the end or an error first: the pipe's buffers may
     * be without memory (lent ones given back), and reading none into
     * them must not look like the end of the response
     */

    n = ngx_http_shm_recv_state(s);

    if (n <= 0) {
        return n;
    }

    total = 0;

    for ( /* void */ ; in; in = in->next) {
        b = in->buf;

        if (limit && total >= limit) {
            break;
        }

        /* what is left is for the next call, an EOF or error too */

        if (total && s->in_bytes == 0) {
            break;
        }

        size = limit ? (size_t) (limit - total) : (size_t) -1;

        if (s->lent && ngx_http_shm_take_back(s, b) == NGX_OK) {
            n = ngx_http_shm_recv_state(s);

            if (n <= 0) {
                return total ? total : n;
            }

            total += ngx_http_shm_lend(s, b, size);

            continue;
        }

        /* fill b->last .. b->end; the caller advances b->last */

        size = ngx_min(size, (size_t) (b->end - b->last));

        if (size == 0) {
            break;
        }

        n = ngx_http_shm_recv(c, b->last, size);

        if (n == NGX_AGAIN || n == 0 || n == NGX_ERROR) {
            return total ? total : n;
        }

        total += n;

        if ((size_t) n < size) {
            break;
        }
    }

    return total;
}


static ssize_t
ngx_http_shm_send(ngx_connection_t *c, u_char *buf, size_t size)
{
    ngx_buf_t     b;
    ngx_chain_t   cl, *rest;

    ngx_memzero(&b, sizeof(ngx_buf_t));
    b.pos = buf;
    b.last = buf + size;
    b.memory = 1;

    cl.buf = &b;
    cl.next = NULL;

    rest = ngx_http_shm_send_chain(c, &cl, 0);

    if (rest == NGX_CHAIN_ERROR) {
        return NGX_ERROR;
    }

    if (b.pos == buf) {
        return NGX_AGAIN;
    }

    return b.pos - buf;
}


/* ring bytes the next frame of a stream's request takes, at most */

static uint32_t
ngx_http_shm_stream_need(ngx_http_shm_stream_t *s)
{
    off_t  n;

    n = s->send_total - s->sent;

    if (s->sent >= (off_t) s->head_len) {
        n = ngx_min(n, (off_t) s->send_credit);
    }

    n = ngx_min(n, (off_t) s->ch->max_frame);

    return ngxshm_frame_size((uint32_t) n);
}


static ngx_chain_t *
ngx_http_shm_send_chain(ngx_connection_t *c, ngx_chain_t *in, off_t limit)
{
    int                      bad;
    size_t                   n;
    uint8_t                  type, flags;
    ngx_buf_t               *b;
    ngx_queue_t             *q;
    ngx_http_shm_stream_t   *s, *w;
    ngx_http_shm_channel_t  *ch;
    ngxshm_frame_t          *f;

    s = (ngx_http_shm_stream_t *) c;
    ch = s->ch;

    if (s->out_end && !s->failed && !s->destroyed) {
        return NULL;
    }

    if (s->destroyed || s->failed || ch == NULL) {
        c->write->error = 1;
        return NGX_CHAIN_ERROR;
    }

    bad = 0;

    if (!s->waiting && s->wait_seq == 0
        && !ngx_queue_empty(&ch->wait_space))
    {
        /*
         * first come, first served: others wait for room in the ring, and
         * a new request would take what the oldest ones wait for
         */
        s->wait_need = ngx_http_shm_stream_need(s);
        goto wait;
    }

    for ( /* void */ ; in; in = in->next) {
        b = in->buf;

        if (ngx_buf_special(b)) {
            continue;
        }

        if (!ngx_buf_in_memory(b)) {
            ngx_log_error(NGX_LOG_ALERT, c->log, 0,
                          "shm send chain got a file buffer");
            return NGX_CHAIN_ERROR;
        }

        while (b->pos < b->last) {

            n = b->last - b->pos;

            if (s->sent < (off_t) s->head_len) {
                type = NGXSHM_REQ_HEAD;
                n = ngx_min(n, s->head_len - (size_t) s->sent);

            } else {
                type = NGXSHM_REQ_BODY;

                if (s->send_credit == 0) {
                    goto wait_credit;
                }

                n = ngx_min(n, s->send_credit);
            }

            n = ngx_min(n, ch->max_frame);

            if ((off_t) n > s->send_total - s->sent) {
                ngx_log_error(NGX_LOG_ALERT, c->log, 0,
                              "shm request longer than announced");
                return NGX_CHAIN_ERROR;
            }

            f = ngxshm_ring_reserve(&ch->req, (uint32_t) n, &bad);

            if (f == NULL && !bad) {
                ngxshm_ring_wait_space(&ch->req);
                f = ngxshm_ring_reserve(&ch->req, (uint32_t) n, &bad);
            }

            if (bad) {
                ngx_http_shm_channel_fail(ch, NGX_LOG_ERR,
                                          "request ring head out of range");
                return NGX_CHAIN_ERROR;
            }

            if (f == NULL) {
                s->wait_need = ngxshm_frame_size((uint32_t) n);
                goto wait;
            }

            flags = 0;

            if (type == NGXSHM_REQ_HEAD
                && s->sent + (off_t) n < (off_t) s->head_len)
            {
                flags = NGXSHM_F_CONT;
            }

            if (s->sent + (off_t) n == s->send_total) {
                flags = NGXSHM_F_END;
            }

            f->len = (uint32_t) n;
            f->type = type;
            f->flags = flags;
            f->reserved = 0;
            f->stream = s->slot;
            f->gen = s->gen;

            ngx_memcpy((u_char *) f + sizeof(ngxshm_frame_t), b->pos, n);

            if (ngxshm_ring_commit(&ch->req, (uint32_t) n)) {
                ch->wake = 1;
            }

            b->pos += n;
            s->sent += n;
            c->sent += n;

            if (type == NGXSHM_REQ_BODY) {
                s->send_credit -= (uint32_t) n;
            }

            if (flags & NGXSHM_F_END) {
                s->out_end = 1;
            }
        }
    }

    if (s->sent == s->send_total && !s->out_end) {
        /* nothing more to come, e.g. a body that was not passed */
        ngx_log_error(NGX_LOG_ALERT, c->log, 0,
                      "shm request ended without END frame");
        return NGX_CHAIN_ERROR;
    }

    s->wait_seq = 0;

    ngx_http_shm_channel_signal(ch);

    if (s->out_end && s->in_end) {
        ngx_http_shm_stream_unslot(s);
        (void) ngx_http_shm_channel_settle(ch);
    }

    return NULL;

wait:

    if (!s->waiting) {
        /* a stream woken for room that finds none keeps its place */

        if (s->wait_seq == 0) {
            s->wait_seq = ++ch->wait_seq;
        }

        for (q = ngx_queue_last(&ch->wait_space);
             q != ngx_queue_sentinel(&ch->wait_space);
             q = ngx_queue_prev(q))
        {
            w = ngx_queue_data(q, ngx_http_shm_stream_t, wait);

            if (w->wait_seq < s->wait_seq) {
                break;
            }
        }

        ngx_queue_insert_after(q, &s->wait);
        s->waiting = 1;
    }

    c->write->ready = 0;
    ngx_http_shm_channel_signal(ch);

    return in;

wait_credit:

    s->wait_seq = 0;
    c->write->ready = 0;
    ngx_http_shm_channel_signal(ch);

    return in;
}


/* configuration */

static void *
ngx_http_shm_create_main_conf(ngx_conf_t *cf)
{
    ngx_http_shm_main_conf_t  *smcf;

    smcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_shm_main_conf_t));
    if (smcf == NULL) {
        return NULL;
    }

    if (ngx_array_init(&smcf->upstreams, cf->pool, 4,
                       sizeof(ngx_http_shm_upstream_t))
        != NGX_OK)
    {
        return NULL;
    }

    ngx_queue_init(&smcf->channels);
    ngx_queue_init(&smcf->free_streams);
    ngx_queue_init(&smcf->limbo_streams);

    smcf->dummy_fd = (ngx_socket_t) -1;

    return smcf;
}


static void *
ngx_http_shm_create_loc_conf(ngx_conf_t *cf)
{
    ngx_http_shm_loc_conf_t  *conf;

    conf = ngx_pcalloc(cf->pool, sizeof(ngx_http_shm_loc_conf_t));
    if (conf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     conf->upstream.bufs.num = 0;
     *     conf->upstream.ignore_headers = 0;
     *     conf->upstream.next_upstream = 0;
     *     conf->upstream.temp_path = NULL;
     *     conf->upstream.hide_headers_hash = { NULL, 0 };
     *     conf->upstream.store_lengths = NULL;
     *     conf->upstream.store_values = NULL;
     */

    conf->upstream.store = NGX_CONF_UNSET;
    conf->upstream.store_access = NGX_CONF_UNSET_UINT;
    conf->upstream.next_upstream_tries = NGX_CONF_UNSET_UINT;
    conf->upstream.buffering = NGX_CONF_UNSET;
    conf->upstream.request_buffering = NGX_CONF_UNSET;
    conf->upstream.ignore_client_abort = NGX_CONF_UNSET;
    conf->upstream.force_ranges = NGX_CONF_UNSET;

    conf->upstream.local = NGX_CONF_UNSET_PTR;
    conf->upstream.socket_keepalive = NGX_CONF_UNSET;

    conf->upstream.connect_timeout = NGX_CONF_UNSET_MSEC;
    conf->upstream.send_timeout = NGX_CONF_UNSET_MSEC;
    conf->upstream.read_timeout = NGX_CONF_UNSET_MSEC;
    conf->upstream.next_upstream_timeout = NGX_CONF_UNSET_MSEC;

    conf->upstream.send_lowat = NGX_CONF_UNSET_SIZE;
    conf->upstream.buffer_size = NGX_CONF_UNSET_SIZE;
    conf->upstream.limit_rate = NGX_CONF_UNSET_SIZE;

    conf->upstream.busy_buffers_size_conf = NGX_CONF_UNSET_SIZE;
    conf->upstream.max_temp_file_size_conf = NGX_CONF_UNSET_SIZE;
    conf->upstream.temp_file_write_size_conf = NGX_CONF_UNSET_SIZE;

    conf->upstream.pass_request_headers = NGX_CONF_UNSET;
    conf->upstream.pass_request_body = NGX_CONF_UNSET;

    conf->upstream.hide_headers = NGX_CONF_UNSET_PTR;
    conf->upstream.pass_headers = NGX_CONF_UNSET_PTR;

    conf->upstream.intercept_errors = NGX_CONF_UNSET;

    conf->upstream.cyclic_temp_file = 0;
    conf->upstream.change_buffering = 1;

    /*
     * full duplex, as grpc: a sidecar may answer while the request body
     * still streams in, and the body must keep flowing after the response
     * head was sent (an echo of a body larger than the window needs it)
     */
    conf->upstream.preserve_output = 1;

    conf->segment_size = NGX_CONF_UNSET_SIZE;
    conf->params = NGX_CONF_UNSET_PTR;

    ngx_str_set(&conf->upstream.module, "shm");

    return conf;
}


static char *
ngx_http_shm_merge_loc_conf(ngx_conf_t *cf, void *parent, void *child)
{
    ngx_http_shm_loc_conf_t *prev = parent;
    ngx_http_shm_loc_conf_t *conf = child;

    size_t                     size;
    ngx_uint_t                 i;
    ngx_hash_init_t            hash;
    ngx_http_shm_upstream_t   *su;
    ngx_http_core_loc_conf_t  *clcf;
    ngx_http_shm_main_conf_t  *smcf;

    conf->upstream.store = 0;

    ngx_conf_merge_uint_value(conf->upstream.next_upstream_tries,
                              prev->upstream.next_upstream_tries, 0);

    ngx_conf_merge_value(conf->upstream.buffering,
                              prev->upstream.buffering, 1);

    /* request bodies are always read completely first */
    conf->upstream.request_buffering = 1;

    ngx_conf_merge_value(conf->upstream.ignore_client_abort,
                              prev->upstream.ignore_client_abort, 0);

    ngx_conf_merge_value(conf->upstream.force_ranges,
                              prev->upstream.force_ranges, 0);

    ngx_conf_merge_ptr_value(conf->upstream.local,
                              prev->upstream.local, NULL);

    ngx_conf_merge_value(conf->upstream.socket_keepalive,
                              prev->upstream.socket_keepalive, 0);

    ngx_conf_merge_msec_value(conf->upstream.connect_timeout,
                              prev->upstream.connect_timeout, 60000);

    ngx_conf_merge_msec_value(conf->upstream.send_timeout,
                              prev->upstream.send_timeout, 60000);

    ngx_conf_merge_msec_value(conf->upstream.read_timeout,
                              prev->upstream.read_timeout, 60000);

    ngx_conf_merge_msec_value(conf->upstream.next_upstream_timeout,
                              prev->upstream.next_upstream_timeout, 0);

    ngx_conf_merge_size_value(conf->upstream.send_lowat,
                              prev->upstream.send_lowat, 0);

    ngx_conf_merge_size_value(conf->upstream.buffer_size,
                              prev->upstream.buffer_size,
                              (size_t) ngx_pagesize);

    ngx_conf_merge_size_value(conf->upstream.limit_rate,
                              prev->upstream.limit_rate, 0);

    ngx_conf_merge_bufs_value(conf->upstream.bufs, prev->upstream.bufs,
                              8, ngx_pagesize);

    if (conf->upstream.bufs.num < 2) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "there must be at least 2 \"shm_buffers\"");
        return NGX_CONF_ERROR;
    }

    size = conf->upstream.buffer_size;
    if (size < conf->upstream.bufs.size) {
        size = conf->upstream.bufs.size;
    }

    ngx_conf_merge_size_value(conf->upstream.busy_buffers_size_conf,
                              prev->upstream.busy_buffers_size_conf,
                              NGX_CONF_UNSET_SIZE);

    if (conf->upstream.busy_buffers_size_conf == NGX_CONF_UNSET_SIZE) {

        /*
         * All buffers but two, where proxy_pass has two: the busy limit
         * is how much one write to the client may carry, and the fewer
         * the writes, the less a response costs.  Our buffers are slices
         * of the body as it arrived (see ngx_http_shm_recv_chain()), so
         * this costs no memory beyond shm_buffers.
         */

        conf->upstream.busy_buffers_size =
                          ngx_max(2 * size, (conf->upstream.bufs.num - 2)
                                            * conf->upstream.bufs.size);
    } else {
        conf->upstream.busy_buffers_size =
                                         conf->upstream.busy_buffers_size_conf;
    }

    if (conf->upstream.busy_buffers_size < size) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
             "\"shm_busy_buffers_size\" must be equal to or greater than "
             "the maximum of the value of \"shm_buffer_size\" and "
             "one of the \"shm_buffers\"");
        return NGX_CONF_ERROR;
    }

    if (conf->upstream.busy_buffers_size
        > (conf->upstream.bufs.num - 1) * conf->upstream.bufs.size)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
             "\"shm_busy_buffers_size\" must be less than "
             "the size of all \"shm_buffers\" minus one buffer");
        return NGX_CONF_ERROR;
    }

    ngx_conf_merge_size_value(conf->upstream.temp_file_write_size_conf,
                              prev->upstream.temp_file_write_size_conf,
                              NGX_CONF_UNSET_SIZE);

    if (conf->upstream.temp_file_write_size_conf == NGX_CONF_UNSET_SIZE) {
        conf->upstream.temp_file_write_size = 2 * size;
    } else {
        conf->upstream.temp_file_write_size =
                                      conf->upstream.temp_file_write_size_conf;
    }

    if (conf->upstream.temp_file_write_size < size) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
             "\"shm_temp_file_write_size\" must be equal to or greater "
             "than the maximum of the value of \"shm_buffer_size\" and "
             "one of the \"shm_buffers\"");
        return NGX_CONF_ERROR;
    }

    ngx_conf_merge_size_value(conf->upstream.max_temp_file_size_conf,
                              prev->upstream.max_temp_file_size_conf,
                              NGX_CONF_UNSET_SIZE);

    if (conf->upstream.max_temp_file_size_conf == NGX_CONF_UNSET_SIZE) {
        conf->upstream.max_temp_file_size = 1024 * 1024 * 1024;
    } else {
        conf->upstream.max_temp_file_size =
                                        conf->upstream.max_temp_file_size_conf;
    }

    if (conf->upstream.max_temp_file_size != 0
        && conf->upstream.max_temp_file_size < size)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
             "\"shm_max_temp_file_size\" must be equal to zero to disable "
             "temporary files usage or must be equal to or greater than "
             "the maximum of the value of \"shm_buffer_size\" and "
             "one of the \"shm_buffers\"");
        return NGX_CONF_ERROR;
    }

    ngx_conf_merge_bitmask_value(conf->upstream.ignore_headers,
                              prev->upstream.ignore_headers,
                              NGX_CONF_BITMASK_SET);

    ngx_conf_merge_bitmask_value(conf->upstream.next_upstream,
                              prev->upstream.next_upstream,
                              (NGX_CONF_BITMASK_SET
                               |NGX_HTTP_UPSTREAM_FT_ERROR
                               |NGX_HTTP_UPSTREAM_FT_TIMEOUT));

    if (conf->upstream.next_upstream & NGX_HTTP_UPSTREAM_FT_OFF) {
        conf->upstream.next_upstream = NGX_CONF_BITMASK_SET
                                       |NGX_HTTP_UPSTREAM_FT_OFF;
    }

    if (ngx_conf_merge_path_value(cf, &conf->upstream.temp_path,
                              prev->upstream.temp_path,
                              &ngx_http_shm_temp_path)
        != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    ngx_conf_merge_value(conf->upstream.pass_request_headers,
                              prev->upstream.pass_request_headers, 1);
    ngx_conf_merge_value(conf->upstream.pass_request_body,
                              prev->upstream.pass_request_body, 1);

    ngx_conf_merge_value(conf->upstream.intercept_errors,
                              prev->upstream.intercept_errors, 0);

    ngx_conf_merge_size_value(conf->segment_size, prev->segment_size,
                              1024 * 1024);

    ngx_conf_merge_ptr_value(conf->params, prev->params, NULL);

    hash.max_size = 512;
    hash.bucket_size = ngx_align(64, ngx_cacheline_size);
    hash.name = "shm_hide_headers_hash";

    if (ngx_http_upstream_hide_headers_hash(cf, &conf->upstream,
             &prev->upstream, ngx_http_shm_hide_headers, &hash)
        != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);

    if (clcf->noname && conf->upstream.upstream == NULL) {
        conf->upstream.upstream = prev->upstream.upstream;
    }

    if (clcf->lmt_excpt && clcf->handler == NULL && conf->upstream.upstream) {
        clcf->handler = ngx_http_shm_handler;
    }

    if (conf->upstream.upstream == NULL) {
        return NGX_CONF_OK;
    }

    /* the channel's segment: the largest of the locations using it */

    smcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_shm_module);
    su = smcf->upstreams.elts;

    for (i = 0; i < smcf->upstreams.nelts; i++) {
        if (su[i].uscf == conf->upstream.upstream) {
            if (su[i].segment_size < conf->segment_size) {
                su[i].segment_size = conf->segment_size;
            }

            break;
        }
    }

    return NGX_CONF_OK;
}


static char *
ngx_http_shm_pass(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_shm_loc_conf_t *slcf = conf;

    ngx_url_t                  u;
    ngx_str_t                 *value;
    ngx_uint_t                 i;
    ngx_http_shm_upstream_t   *su;
    ngx_http_core_loc_conf_t  *clcf;
    ngx_http_shm_main_conf_t  *smcf;

    if (slcf->upstream.upstream) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (ngx_http_script_variables_count(&value[1])) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "variables in \"shm_pass\" are not supported");
        return NGX_CONF_ERROR;
    }

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);

    clcf->handler = ngx_http_shm_handler;

    if (clcf->name.len && clcf->name.data[clcf->name.len - 1] == '/') {
        clcf->auto_redirect = 1;
    }

    ngx_memzero(&u, sizeof(ngx_url_t));

    u.url = value[1];
    u.no_resolve = 1;

    slcf->upstream.upstream = ngx_http_upstream_add(cf, &u, 0);
    if (slcf->upstream.upstream == NULL) {
        return NGX_CONF_ERROR;
    }

    smcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_shm_module);
    su = smcf->upstreams.elts;

    for (i = 0; i < smcf->upstreams.nelts; i++) {
        if (su[i].uscf == slcf->upstream.upstream) {
            return NGX_CONF_OK;
        }
    }

    su = ngx_array_push(&smcf->upstreams);
    if (su == NULL) {
        return NGX_CONF_ERROR;
    }

    su->uscf = slcf->upstream.upstream;
    su->original_init = NULL;
    su->segment_size = 0;

    return NGX_CONF_OK;
}


static char *
ngx_http_shm_param(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_shm_loc_conf_t *slcf = conf;

    ngx_str_t                         *value;
    ngx_http_shm_param_t              *param;
    ngx_http_compile_complex_value_t   ccv;

    value = cf->args->elts;

    if (slcf->params == NGX_CONF_UNSET_PTR || slcf->params == NULL) {
        slcf->params = ngx_array_create(cf->pool, 4,
                                        sizeof(ngx_http_shm_param_t));
        if (slcf->params == NULL) {
            return NGX_CONF_ERROR;
        }
    }

    if (value[1].len == 0 || value[1].len > 0xffff) {
        return "has an invalid parameter name";
    }

    param = ngx_array_push(slcf->params);
    if (param == NULL) {
        return NGX_CONF_ERROR;
    }

    param->key = value[1];
    param->skip_empty = 0;

    ngx_memzero(&ccv, sizeof(ngx_http_compile_complex_value_t));

    ccv.cf = cf;
    ccv.value = &value[2];
    ccv.complex_value = &param->value;

    if (ngx_http_compile_complex_value(&ccv) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    if (cf->args->nelts == 4) {
        if (ngx_strcmp(value[3].data, "if_not_empty") != 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid parameter \"%V\"", &value[3]);
            return NGX_CONF_ERROR;
        }

        param->skip_empty = 1;
    }

    return NGX_CONF_OK;
}


static char *
ngx_http_shm_segment_size(ngx_conf_t *cf, void *post, void *data)
{
    size_t *sp = data;

    size_t  ring;

    if (*sp < 2 * NGXSHM_RING_MIN || *sp > 2 * (size_t) NGXSHM_RING_MAX) {
        return "must be between 8k and 2g";
    }

    for (ring = NGXSHM_RING_MIN; ring * 4 <= *sp; ring *= 2) {
        /* void */
    }

    if (ring * 2 != *sp) {
        ngx_conf_log_error(NGX_LOG_WARN, cf, 0,
                           "\"shm_segment_size\" %uz rounded down to %uz, "
                           "a power of two", *sp, ring * 2);
        *sp = ring * 2;
    }

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_shm_postconfiguration(ngx_conf_t *cf)
{
    ngx_uint_t                     i, j, k;
    ngx_http_shm_upstream_t       *su;
    ngx_http_upstream_server_t    *server;
    ngx_http_shm_main_conf_t      *smcf;
    ngx_http_upstream_srv_conf_t  *uscf;

    smcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_shm_module);
    su = smcf->upstreams.elts;

    for (i = 0; i < smcf->upstreams.nelts; i++) {
        uscf = su[i].uscf;

        if (uscf->servers) {
            server = uscf->servers->elts;

            for (j = 0; j < uscf->servers->nelts; j++) {
                for (k = 0; k < server[j].naddrs; k++) {
                    if (server[j].addrs[k].sockaddr->sa_family != AF_UNIX) {
                        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                                      "shm_pass needs unix: addresses, "
                                      "\"%V\" in upstream \"%V\" is not",
                                      &server[j].addrs[k].name,
                                      &uscf->host);
                        return NGX_ERROR;
                    }
                }
            }
        }

        if (su[i].segment_size == 0) {
            su[i].segment_size = 1024 * 1024;
        }

        su[i].original_init = uscf->peer.init;
        uscf->peer.init = ngx_http_shm_init_peer;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_shm_init_module(ngx_cycle_t *cycle)
{
    ngx_event_conf_t          *ecf;
    ngx_http_shm_main_conf_t  *smcf;

    smcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_shm_module);

    if (smcf == NULL || smcf->upstreams.nelts == 0) {
        return NGX_OK;
    }

    ecf = ngx_event_get_conf(cycle->conf_ctx, ngx_event_core_module);

    if (ecf == NULL || ecf->name == NULL
        || ngx_strcmp(ecf->name, "epoll") != 0)
    {
        ngx_log_error(NGX_LOG_EMERG, cycle->log, 0,
                      "shm_pass needs the \"epoll\" event method");
        return NGX_ERROR;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_shm_init_process(ngx_cycle_t *cycle)
{
    int                        sv[2];
    ngx_http_shm_main_conf_t  *smcf;

    smcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_shm_module);

    if (smcf == NULL || smcf->upstreams.nelts == 0) {
        return NGX_OK;
    }

    /*
     * virtual connections need a real socket in c->fd: the upstream
     * code asks it for SO_ERROR if it sends a request not marked sent
     * (see ngx_http_shm_stream_start()); this one is never read or written
     */

    if (socketpair(AF_UNIX, SOCK_STREAM|SOCK_CLOEXEC, 0, sv) == -1) {
        ngx_log_error(NGX_LOG_EMERG, cycle->log, ngx_socket_errno,
                      "socketpair() failed");
        return NGX_ERROR;
    }

    close(sv[1]);
    smcf->dummy_fd = sv[0];

    smcf->reaper.handler = ngx_http_shm_reaper;
    smcf->reaper.data = smcf;
    smcf->reaper.log = cycle->log;

    return NGX_OK;
}


static void
ngx_http_shm_exit_process(ngx_cycle_t *cycle)
{
    ngx_uint_t                 i;
    ngx_queue_t               *q;
    ngx_http_shm_chunk_t      *chunk;
    ngx_http_shm_channel_t    *ch;
    ngx_http_shm_stream_t     *s;
    ngx_http_shm_main_conf_t  *smcf;

    smcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_shm_module);

    if (smcf == NULL || smcf->dummy_fd == (ngx_socket_t) -1) {
        return;
    }

    while (!ngx_queue_empty(&smcf->channels)) {
        q = ngx_queue_head(&smcf->channels);
        ch = ngx_queue_data(q, ngx_http_shm_channel_t, queue);
        ngx_http_shm_channel_fail(ch, NGX_LOG_INFO, "worker exits");
    }

    ngx_http_shm_reaper(&smcf->reaper);

    while (!ngx_queue_empty(&smcf->free_streams)) {
        q = ngx_queue_head(&smcf->free_streams);
        ngx_queue_remove(q);
        s = ngx_queue_data(q, ngx_http_shm_stream_t, queue);
        ngx_free(s);
    }

    for (i = 0; i < NGX_HTTP_SHM_CHUNK_CLASSES; i++) {
        while (smcf->chunks[i]) {
            chunk = smcf->chunks[i];
            smcf->chunks[i] = chunk->next;
            ngx_free(chunk);
        }
    }

    smcf->chunks_cached = 0;

    close(smcf->dummy_fd);
    smcf->dummy_fd = (ngx_socket_t) -1;
}
