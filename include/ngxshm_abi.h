/*
 * Copyright (C) ngxshm authors
 *
 * The wire contract between ngx_http_shm_module (nginx) and libngxshm
 * (the sidecar).  Everything here is fixed-width, little-endian (the
 * host's order: both peers run on one host), and addressed by offsets,
 * never by pointers.  docs/protocol.md explains it in prose.
 */

#ifndef NGXSHM_ABI_H
#define NGXSHM_ABI_H

#include <stdint.h>


#define NGXSHM_MAGIC            0x4d48534eu   /* "NSHM" */
#define NGXSHM_VERSION          2u

/* the segment: header page, then ring 0 data, then ring 1 data */
#define NGXSHM_HDR_SIZE         4096u
#define NGXSHM_CTRL_OFF0        1024u         /* ring 0 control block */
#define NGXSHM_CTRL_OFF1        2048u         /* ring 1 control block */
#define NGXSHM_RING_MIN         4096u
#define NGXSHM_RING_MAX         (1u << 30)

#define NGXSHM_RING_TO_APP      0             /* nginx produces */
#define NGXSHM_RING_TO_NGINX    1             /* the sidecar produces */

/* frames are 16-byte aligned and never wrap around the end of a ring */
#define NGXSHM_ALIGN            16u
#define ngxshm_align(n)                                                       \
    (((n) + (NGXSHM_ALIGN - 1)) & ~(NGXSHM_ALIGN - 1))


typedef struct {
    uint32_t    magic;            /* NGXSHM_MAGIC */
    uint32_t    version;          /* NGXSHM_VERSION */
    uint32_t    hdr_size;         /* NGXSHM_HDR_SIZE */
    uint32_t    flags;            /* 0 */
    uint64_t    seg_size;         /* hdr_size + 2 * ring_size */
    uint32_t    ring_size;        /* bytes of data in each ring, 2^n */
    uint32_t    max_frame;        /* largest payload of one frame */
    uint32_t    max_streams;      /* stream slots: 0 .. max_streams - 1 */
    uint32_t    window;           /* initial body credit of a stream,
                                     per direction, in bytes */
    uint32_t    nginx_pid;
    uint32_t    reserved[5];      /* 0 */
} ngxshm_seg_hdr_t;               /* at offset 0, 64 bytes */


/*
 * One control block per ring, each counter on its own cache line.
 * head and tail run freely over 2^32; tail - head is the bytes in use.
 */
typedef struct {
    uint32_t    tail;             /* bytes ever produced; producer writes */
    uint8_t     pad0[60];
    uint32_t    head;             /* bytes ever consumed; consumer writes */
    uint8_t     pad1[60];
    uint32_t    sleeping;         /* consumer sets 1 before it blocks;
                                     producer swaps it to 0 and signals */
    uint8_t     pad2[60];
    uint32_t    waiting;          /* producer sets 1 when the ring is full;
                                     consumer swaps it to 0 and signals */
    uint8_t     pad3[60];
} ngxshm_ring_ctrl_t;             /* 256 bytes */


/* frame types */
#define NGXSHM_PAD              0   /* filler to the end of the ring */
#define NGXSHM_REQ_HEAD         1   /* nginx -> app: part of a head block */
#define NGXSHM_REQ_BODY         2   /* nginx -> app: request body bytes */
#define NGXSHM_CANCEL           3   /* nginx -> app: stream abandoned */
#define NGXSHM_CREDIT           4   /* both: u32 more body bytes allowed */
#define NGXSHM_RESP_HEAD        5   /* app -> nginx: part of a head block */
#define NGXSHM_RESP_BODY        6   /* app -> nginx: response body bytes */
#define NGXSHM_RESET            7   /* app -> nginx: stream failed */
#define NGXSHM_GOAWAY           8   /* app -> nginx: open no new streams */
#define NGXSHM_TYPE_MAX         8

/* frame flags */
#define NGXSHM_F_END            0x01  /* last frame of this direction */
#define NGXSHM_F_CONT           0x02  /* head block continues in next frame */


typedef struct {
    uint32_t    len;              /* payload bytes following the header */
    uint8_t     type;
    uint8_t     flags;
    uint16_t    reserved;         /* 0 */
    uint32_t    stream;           /* slot, < max_streams */
    uint32_t    gen;              /* generation of the slot, from 1 */
} ngxshm_frame_t;                 /* 16 bytes */


/*
 * A head block: the request (nginx -> app) or the response head
 * (app -> nginx), sent as the payload of one or more *_HEAD frames.
 * Fields follow the header; strings follow the fields.  A field's
 * name is at offset "off" from the block's start.  In request blocks
 * nginx puts a NUL byte after each name and each value (not counted in
 * the lengths), so the value is at off + name_len + 1; in response
 * blocks there are no NULs and the value is at off + name_len.
 */
typedef struct {
    uint32_t    size;             /* bytes of the whole block */
    uint16_t    nfields;
    uint16_t    status;           /* response: HTTP status; request: 0 */
    uint32_t    flags;            /* 0 */
    uint32_t    reserved;         /* 0 */
} ngxshm_head_t;                  /* 16 bytes */

typedef struct {
    uint32_t    off;
    uint32_t    value_len;
    uint16_t    name_len;
    uint16_t    kind;
    uint32_t    reserved;         /* 0 */
} ngxshm_field_t;                 /* 16 bytes */

/* field kinds */
#define NGXSHM_FIELD_HEADER       1   /* HTTP header: name, value */
#define NGXSHM_FIELD_PARAM        2   /* shm_param: name, value */
#define NGXSHM_FIELD_METHOD       16  /* the rest: value only */
#define NGXSHM_FIELD_URI          17  /* raw request URI with query */
#define NGXSHM_FIELD_PATH         18  /* decoded, normalized path */
#define NGXSHM_FIELD_QUERY        19
#define NGXSHM_FIELD_PROTOCOL     20  /* "HTTP/1.1", "HTTP/2.0" */
#define NGXSHM_FIELD_REMOTE_ADDR  21
#define NGXSHM_FIELD_REMOTE_PORT  22  /* decimal text */
#define NGXSHM_FIELD_SERVER_ADDR  23
#define NGXSHM_FIELD_SERVER_PORT  24  /* decimal text */
#define NGXSHM_FIELD_SERVER_NAME  25
#define NGXSHM_FIELD_SCHEME       26  /* "http" or "https" */
#define NGXSHM_FIELD_MAX          26


/*
 * Handshake on the UNIX socket: nginx sends HELLO with SCM_RIGHTS
 * carrying, in order, the segment memfd, the eventfd that wakes the app
 * and the eventfd that wakes nginx.  The app answers with HELLO_ACK
 * (status 0) or refuses (status is a positive errno value) and closes.
 * nginx may write frames before the answer; they wait in the ring.
 */
#define NGXSHM_MSG_HELLO        1
#define NGXSHM_MSG_HELLO_ACK    2

typedef struct {
    uint32_t    magic;
    uint32_t    version;
    uint32_t    type;
    uint32_t    size;             /* sizeof(ngxshm_msg_t) */
    int32_t     status;           /* HELLO_ACK: 0 or a positive errno */
    uint32_t    pid;              /* sender's pid, for logs */
    uint64_t    seg_size;         /* HELLO: size of the memfd */
} ngxshm_msg_t;                   /* 32 bytes */


#endif /* NGXSHM_ABI_H */
