/*
 * Copyright (C) ngxshm authors
 *
 * Writes the seed corpus of the fuzz targets: a few valid inputs and
 * edge cases per target, in each target's input format (see the comment
 * at the top of fuzz/<target>.c).  Usage: gen-seeds DIR; the files go to
 * DIR/<target>/<name>.  "make fuzz-seeds" runs it on fuzz/corpus.
 * Files found by fuzzing (regress-*) are kept there separately.
 */

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "ngxshm_abi.h"


typedef struct {
    unsigned char  b[65536];
    size_t         n;
} buf_t;


static const char  *out_dir;


static void
put(buf_t *b, const void *p, size_t n)
{
    if (b->n + n > sizeof(b->b)) {
        fprintf(stderr, "gen-seeds: seed too large\n");
        exit(1);
    }

    memcpy(b->b + b->n, p, n);
    b->n += n;
}


static void
u8(buf_t *b, unsigned v)
{
    unsigned char  c = (unsigned char) v;

    put(b, &c, 1);
}


static void
u16(buf_t *b, unsigned v)
{
    u8(b, v & 0xff);
    u8(b, (v >> 8) & 0xff);
}


static void
u32(buf_t *b, uint32_t v)
{
    u16(b, v & 0xffff);
    u16(b, v >> 16);
}


static void
save(const char *target, const char *name, const buf_t *b)
{
    char   path[512];
    FILE  *f;

    snprintf(path, sizeof(path), "%s/%s", out_dir, target);

    if (mkdir(path, 0755) != 0 && errno != EEXIST) {
        perror(path);
        exit(1);
    }

    snprintf(path, sizeof(path), "%s/%s/%s", out_dir, target, name);

    f = fopen(path, "wb");

    if (f == NULL || fwrite(b->b, 1, b->n, f) != b->n || fclose(f) != 0) {
        perror(path);
        exit(1);
    }
}


/* head blocks: request blocks have a NUL after each name and value */

typedef struct {
    uint16_t     kind;
    const char  *name;
    const char  *value;
} fld_t;


static void
block(buf_t *b, int request, unsigned status, const fld_t *f, size_t n)
{
    size_t          i, off, start;
    ngxshm_head_t   hd;
    ngxshm_field_t  fl;

    start = b->n;
    off = sizeof(hd) + n * sizeof(fl);

    memset(&hd, 0, sizeof(hd));
    hd.nfields = (uint16_t) n;
    hd.status = (uint16_t) status;
    put(b, &hd, sizeof(hd));

    for (i = 0; i < n; i++) {
        memset(&fl, 0, sizeof(fl));
        fl.off = (uint32_t) off;
        fl.name_len = (uint16_t) strlen(f[i].name);
        fl.value_len = (uint32_t) strlen(f[i].value);
        fl.kind = f[i].kind;
        put(b, &fl, sizeof(fl));
        off += fl.name_len + fl.value_len + (request ? 2 : 0);
    }

    for (i = 0; i < n; i++) {
        put(b, f[i].name, strlen(f[i].name) + (request ? 1 : 0));
        put(b, f[i].value, strlen(f[i].value) + (request ? 1 : 0));
    }

    hd.size = (uint32_t) (b->n - start);
    memcpy(b->b + start, &hd.size, sizeof(hd.size));
}


static const fld_t  get_req[] = {
    { NGXSHM_FIELD_METHOD, "", "GET" },
    { NGXSHM_FIELD_URI, "", "/a?b=c" },
    { NGXSHM_FIELD_PATH, "", "/a" },
    { NGXSHM_FIELD_QUERY, "", "b=c" },
    { NGXSHM_FIELD_PROTOCOL, "", "HTTP/1.1" },
    { NGXSHM_FIELD_SCHEME, "", "http" },
    { NGXSHM_FIELD_HEADER, "Host", "localhost" },
    { NGXSHM_FIELD_HEADER, "X-Echo", "1" },
    { NGXSHM_FIELD_PARAM, "app", "fuzz" },
};

static const fld_t  head_req[] = {
    { NGXSHM_FIELD_METHOD, "", "HEAD" },
    { NGXSHM_FIELD_METHOD, "", "GET" },          /* duplicate: first wins */
    { 99, "unknown", "kind" },                    /* ignored */
    { NGXSHM_FIELD_HEADER, "", "" },
};

static const fld_t  resp[] = {
    { NGXSHM_FIELD_HEADER, "Content-Type", "text/plain" },
    { NGXSHM_FIELD_HEADER, "X-A", "" },
    { NGXSHM_FIELD_HEADER, "Connection", "close" },   /* dropped */
};


static void
gen_lib_head(void)
{
    buf_t  b;

    memset(&b, 0, sizeof(b));
    block(&b, 1, 0, get_req, sizeof(get_req) / sizeof(get_req[0]));
    save("lib_head", "get", &b);

    b.n = 0;
    block(&b, 1, 0, head_req, sizeof(head_req) / sizeof(head_req[0]));
    save("lib_head", "head-dup-unknown", &b);

    b.n = 0;
    block(&b, 1, 0, NULL, 0);
    save("lib_head", "empty", &b);

    /* the value's NUL replaced */
    b.n = 0;
    block(&b, 1, 0, get_req, 2);
    b.b[b.n - 1] = 'x';
    save("lib_head", "no-nul", &b);

    /* a named datum */
    b.n = 0;
    {
        fld_t  f = { NGXSHM_FIELD_URI, "n", "/" };

        block(&b, 1, 0, &f, 1);
    }
    save("lib_head", "named-datum", &b);
}


static void
gen_module_head(void)
{
    buf_t  b;

    /* u16 extra room, then the bytes received */
    memset(&b, 0, sizeof(b));
    u16(&b, 0);
    block(&b, 0, 200, resp, sizeof(resp) / sizeof(resp[0]));
    save("module_head", "ok", &b);

    b.n = 0;
    u16(&b, 100);
    block(&b, 0, 404, resp, 1);
    b.n -= 3;                                     /* not all there yet */
    save("module_head", "again", &b);

    b.n = 0;
    u16(&b, 0);
    block(&b, 0, 99, NULL, 0);
    save("module_head", "status-99", &b);

    b.n = 0;
    u16(&b, 0);
    {
        fld_t  f = { NGXSHM_FIELD_HEADER, "X-Evil\r", "v" };

        block(&b, 0, 200, &f, 1);
    }
    save("module_head", "cr-in-name", &b);

    b.n = 0;
    u16(&b, 0);
    {
        fld_t  f = { NGXSHM_FIELD_HEADER, "X-Evil", "a\nb" };

        block(&b, 0, 200, &f, 1);
    }
    save("module_head", "lf-in-value", &b);

    /* nfields 65535 in a block of 32 bytes */
    b.n = 0;
    u16(&b, 0);
    u32(&b, 32);
    u16(&b, 65535);
    u16(&b, 200);
    u32(&b, 0);
    u32(&b, 0);
    u32(&b, 0);
    u32(&b, 0);
    u32(&b, 0);
    u32(&b, 0);
    save("module_head", "huge-nfields", &b);
}


static void
gen_module_msg(void)
{
    buf_t         b;
    ngxshm_msg_t  m;

    memset(&m, 0, sizeof(m));
    m.magic = NGXSHM_MAGIC;
    m.version = NGXSHM_VERSION;
    m.type = NGXSHM_MSG_HELLO_ACK;
    m.size = sizeof(m);

    memset(&b, 0, sizeof(b));
    u8(&b, 0);
    put(&b, &m, sizeof(m));
    save("module_msg", "ack", &b);

    m.status = 1;
    b.n = 0;
    u8(&b, 0);
    put(&b, &m, sizeof(m));
    save("module_msg", "ack-refused", &b);

    b.n = 0;
    u8(&b, 0);
    put(&b, &m, 20);
    save("module_msg", "ack-short", &b);

    /* frames: u16 max_streams - 1, header */
    b.n = 0;
    u8(&b, 1);
    u16(&b, 15);
    u32(&b, 0);
    u8(&b, NGXSHM_GOAWAY);
    u8(&b, 0);
    u16(&b, 0);
    u32(&b, 0);
    u32(&b, 0);
    save("module_msg", "goaway", &b);

    b.n = 0;
    u8(&b, 1);
    u16(&b, 15);
    u32(&b, 10);
    u8(&b, NGXSHM_RESP_BODY);
    u8(&b, NGXSHM_F_END);
    u16(&b, 0);
    u32(&b, 16);
    u32(&b, 1);
    save("module_msg", "body-slot-16", &b);
}


/* ring: u8 size class, u32 max_frame seed, u32 start, operations */

static void
gen_ring(void)
{
    int    i;
    buf_t  b;

    /* produce and consume around the end of a 4 KiB ring */
    memset(&b, 0, sizeof(b));
    u8(&b, 0);
    u32(&b, 1000);
    u32(&b, 4096 - 64);

    for (i = 0; i < 6; i++) {
        u8(&b, 7);                                /* produce */
        u16(&b, 100 + 200 * i);
        u8(&b, 5);                                /* consume */
        u8(&b, 2);
    }

    save("ring", "wrap", &b);

    /* forged frames, published, consumed */
    b.n = 0;
    u8(&b, 1);
    u32(&b, 2000);
    u32(&b, 0);
    u8(&b, 1);                                    /* frame: ctl, type */
    u8(&b, 4 | 8);
    u8(&b, NGXSHM_REQ_HEAD);
    u16(&b, 5);
    u8(&b, 0);
    u8(&b, 1);
    put(&b, "hello", 5);
    u8(&b, 2);                                    /* a pad to the end */
    u8(&b, 0);
    u8(&b, 1);                                    /* a frame at 0 */
    u8(&b, 8);
    u8(&b, NGXSHM_CREDIT);
    u16(&b, 4);
    u8(&b, 0);
    u8(&b, 1);
    u8(&b, 5);
    u8(&b, 15);
    save("ring", "forged", &b);

    /* bad tail, bad head */
    b.n = 0;
    u8(&b, 2);
    u32(&b, 7);
    u32(&b, 0xfffffff0);
    u8(&b, 4);
    u32(&b, 0x10008);
    u8(&b, 5);
    u8(&b, 0);
    u8(&b, 6);
    u32(&b, 0x20);
    u8(&b, 7);
    u16(&b, 30);
    save("ring", "bad-indexes", &b);
}


/* lib_hello: u8 ring/seal, u8 sizes, u8 fd count, u8 length, u8 kinds
 * x3, HELLO xor (32), header xor (64), u32 start, u32 x3 index xors,
 * u8 junk */

static void
hello(const char *name, unsigned a, unsigned b2, unsigned c, unsigned len,
    unsigned k0, unsigned k1, unsigned k2, size_t mxor_at, unsigned mxor,
    size_t hxor_at, unsigned hxor, uint32_t start, uint32_t x0,
    unsigned junk)
{
    buf_t          b;
    unsigned char  z[96];

    memset(&b, 0, sizeof(b));
    memset(z, 0, sizeof(z));

    u8(&b, a);
    u8(&b, b2);
    u8(&b, c);
    u8(&b, len);
    u8(&b, k0);
    u8(&b, k1);
    u8(&b, k2);

    z[mxor_at] = (unsigned char) mxor;
    z[32 + hxor_at] = (unsigned char) hxor;
    put(&b, z, sizeof(z));

    u32(&b, start);
    u32(&b, x0);
    u32(&b, 0);
    u32(&b, 0);
    u8(&b, junk);

    save("lib_hello", name, &b);
}


static void
gen_lib_hello(void)
{
    hello("ok", 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
    hello("ok-64k-start", 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xfffff000, 0, 0);
    hello("ok-junk-after", 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5);
    hello("version-2", 0, 0, 0, 0, 0, 0, 0, 4, 3, 0, 0, 0, 0, 0);
    hello("short", 0, 0, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
    hello("two-fds", 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
    hello("nine-fds", 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
    hello("unsealed", 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
    hello("pipe-efd", 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0);
    hello("size-mismatch", 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
    hello("bad-window", 0, 0, 0, 0, 0, 0, 0, 0, 0, 36, 0xff, 0, 0, 0);
    hello("unaligned-head", 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0);
}


/* lib_frames: u8 sel, u16 max_frame seed, u8 max_streams - 1, u16
 * window - 1, u32 start, operations */

static void
frames_conf(buf_t *b, unsigned sel, unsigned mf, unsigned ms, unsigned win,
    uint32_t start)
{
    memset(b, 0, sizeof(*b));
    u8(b, sel);
    u16(b, mf);
    u8(b, ms);
    u16(b, win);
    u32(b, start);
}


/* op 2: a request head with the fields of get_req (GET, headers) */
static void
frames_head(buf_t *b, unsigned slot, unsigned flags, unsigned chunk,
    const char *method)
{
    size_t  i, n;

    static const struct {
        unsigned     kind;
        const char  *name;
        const char  *value;
    } f[] = {
        { 2, "", "" },            /* kinds[2]: METHOD, value set below */
        { 3, "", "/a?b=c" },      /* URI */
        { 0, "Host", "localhost" },
        { 0, "X-Echo", "1" },
        { 1, "app", "fuzz" },
    };

    n = sizeof(f) / sizeof(f[0]);

    u8(b, 2);
    u8(b, slot);
    u8(b, 0);                     /* the next generation */
    u8(b, flags);
    u8(b, 0);                     /* no byte changed */
    u8(b, chunk);
    u8(b, n);

    for (i = 0; i < n; i++) {
        const char  *v = (i == 0) ? method : f[i].value;

        u8(b, f[i].kind);
        u8(b, strlen(f[i].name));
        u8(b, strlen(v));
        put(b, f[i].name, strlen(f[i].name));
        put(b, v, strlen(v));
    }
}


static void
gen_lib_frames(void)
{
    int    i;
    buf_t  b;

    /* GET, answered at once (mode 0), 4 KiB ring */
    frames_conf(&b, 0, 1000, 3, 4095, 0);
    frames_head(&b, 0, NGXSHM_F_END, 0, "GET");
    u8(&b, 8);
    save("lib_frames", "get", &b);

    /* POST with a body in pieces, read then answered (mode 1) */
    frames_conf(&b, 1 << 3, 200, 3, 999, 4096 - 32);
    frames_head(&b, 1, 0, 0, "POST");

    for (i = 0; i < 4; i++) {
        u8(&b, 4);
        u8(&b, 1);
        u8(&b, i == 3 ? NGXSHM_F_END : 0);
        u16(&b, 150);
        u8(&b, 8);
    }

    save("lib_frames", "post-read", &b);

    /* head split over CONT frames of 16 bytes */
    frames_conf(&b, 2, 0, 0, 4095, 0);
    frames_head(&b, 0, NGXSHM_F_END, 16, "GET");
    u8(&b, 8);
    save("lib_frames", "head-cont", &b);

    /* streaming a large body (mode 3) with credit */
    frames_conf(&b, 3 << 3, 500, 1, 1023, 0);
    frames_head(&b, 0, NGXSHM_F_END, 0, "GET");

    for (i = 0; i < 4; i++) {
        u8(&b, 8);
        u8(&b, 5);
        u8(&b, 0);
        u8(&b, 0);
        u16(&b, 1024);
    }

    u8(&b, 8);
    save("lib_frames", "stream-credit", &b);

    /* ngxshm_respond() beyond the credit (mode 4), then cancel */
    frames_conf(&b, 4 << 3, 500, 1, 511, 0);
    frames_head(&b, 0, NGXSHM_F_END, 0, "GET");
    u8(&b, 8);
    u8(&b, 6);
    u8(&b, 0);
    u8(&b, 8);
    save("lib_frames", "big-cancel", &b);

    /* from a post (mode 6); then a second request on the slot */
    frames_conf(&b, 6 << 3, 500, 1, 4095, 0);
    frames_head(&b, 0, NGXSHM_F_END, 0, "HEAD");
    u8(&b, 7);
    u8(&b, 8);
    frames_head(&b, 0, NGXSHM_F_END, 0, "GET");
    u8(&b, 8);
    save("lib_frames", "post-twice", &b);

    /* a head over max_head (server 1: 256 bytes) */
    frames_conf(&b, 1, 100, 1, 4095, 0);
    u8(&b, 2);
    u8(&b, 0);
    u8(&b, 0);
    u8(&b, 0);
    u8(&b, 0);
    u8(&b, 0);
    u8(&b, 3);

    for (i = 0; i < 3; i++) {
        u8(&b, 0);
        u8(&b, 10);
        u8(&b, 200);
        put(&b, "X-Long-Hdr", 10);

        for (int j = 0; j < 200; j++) {
            u8(&b, 'a');
        }
    }

    u8(&b, 4);
    u8(&b, 0);
    u8(&b, NGXSHM_F_END);
    u16(&b, 50);
    u8(&b, 8);
    save("lib_frames", "too-large", &b);

    /* a frame type nginx never sends: the channel closes */
    frames_conf(&b, 0, 100, 1, 4095, 0);
    frames_head(&b, 0, 0, 0, "GET");
    u8(&b, 1);
    u8(&b, NGXSHM_RESP_HEAD);
    u8(&b, 0);
    u8(&b, 0);
    u8(&b, 1);
    u16(&b, 0);
    u8(&b, 8);
    save("lib_frames", "wrong-direction", &b);

    /* a PAD frame alone at the end of the ring (a forged ring) */
    frames_conf(&b, 6, 100, 7, 4095, 0xfff0);
    u8(&b, 0);
    for (i = 0; i < 16; i++) {
        u8(&b, 0);
    }
    u16(&b, 0);
    save("lib_frames", "lone-pad", &b);
}


int
main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: gen-seeds DIR\n");
        return 2;
    }

    out_dir = argv[1];

    if (mkdir(out_dir, 0755) != 0 && errno != EEXIST) {
        perror(out_dir);
        return 1;
    }

    gen_ring();
    gen_lib_head();
    gen_lib_hello();
    gen_lib_frames();
    gen_module_head();
    gen_module_msg();

    return 0;
}
