/*
 * Copyright (C) ngxshm authors
 *
 * Fuzz target "lib_hello": the library's handshake, ngxshm_chan_hello()
 * and ngxshm_chan_attach() (src/lib/ngxshm.c), on a real socket.  Per
 * input, a fake nginx connects to a libngxshm server in this process and
 * sends a HELLO message built from the input: any length, any fields
 * (the input is XORed onto a valid message, so that an input of zeros
 * is a valid handshake), 0 to 9 descriptors of several kinds (memfd
 * sealed or not, eventfd, pipe, /dev/null, socket), a segment of a good
 * or wrong size whose header and initial ring indexes are also XORed
 * with the input.
 *
 * Checked: the answer is a HELLO_ACK whose status is the one an
 * independent reading of docs/protocol.md (sections 2 and 3) and of the
 * library's documented refusals gives (0, EPROTO, EPROTONOSUPPORT,
 * EINVAL, EPERM); a refused channel is closed after the answer; an
 * accepted one is served and torn down when nginx goes away; no
 * descriptor received or created stays open, and no channel or request
 * is left behind.
 */

#include <sys/stat.h>

#include "fake.h"


#define FZ_KINDS  6

enum {
    FZ_FD_EXPECTED = 0,     /* memfd for 0, pipe for 1, eventfd for 2 */
    FZ_FD_EVENTFD,
    FZ_FD_MEMFD,            /* another memfd, not sealed */
    FZ_FD_PIPE,
    FZ_FD_NULL,
    FZ_FD_SOCKET
};


static fz_server_t  *fz_srv;


static void
fz_handler(ngxshm_request_t *r, void *arg)
{
    (void) arg;

    (void) ngxshm_respond(r, 200, NULL, 0, "ok", 2);
}


static int
fz_open_kind(int kind, int slot, int seg)
{
    int  fd, sv[2];

    if (kind == FZ_FD_EXPECTED) {
        kind = (slot == 0) ? -1 : (slot == 1) ? FZ_FD_PIPE : FZ_FD_EVENTFD;
    }

    switch (kind) {

    case -1:
        fd = dup(seg);
        break;

    case FZ_FD_EVENTFD:
        fd = eventfd(0, EFD_NONBLOCK|EFD_CLOEXEC);
        break;

    case FZ_FD_MEMFD:
        fd = memfd_create("ngxshm-fuzz-other", MFD_CLOEXEC);
        break;

    case FZ_FD_PIPE:
        fz_check(pipe2(sv, O_CLOEXEC) == 0);
        close(sv[1]);
        fd = sv[0];
        break;

    case FZ_FD_NULL:
        fd = open("/dev/null", O_RDWR|O_CLOEXEC);
        break;

    default: /* FZ_FD_SOCKET */
        fz_check(socketpair(AF_UNIX, SOCK_STREAM|SOCK_CLOEXEC, 0, sv) == 0);
        close(sv[1]);
        fd = sv[0];
        break;
    }

    fz_check(fd >= 0);

    return fd;
}


static int
fz_is_eventfd(int kind, int slot)
{
    return kind == FZ_FD_EVENTFD || (kind == FZ_FD_EXPECTED && slot == 2);
}


/* the read end of a pipe: what nginx sends for efd_app (protocol 2) */
static int
fz_is_wake_pipe(int kind, int slot)
{
    return kind == FZ_FD_PIPE || (kind == FZ_FD_EXPECTED && slot == 1);
}


static int
fz_pow2(uint32_t v)
{
    return v != 0 && (v & (v - 1)) == 0;
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int                i, nfds, kinds[9], fds[9], seg, seal, want, base, s;
    int                sealed_ok, sealable;
    char               junk[16];
    size_t             len, fsize, got;
    ssize_t            n;
    uint8_t            a, b, c, lsel, nj;
    uint32_t           ring, x0, x1, x2, start;
    uint64_t           gsize;
    fz_in_t            in;
    unsigned char     *map, *mh, *mm;
    const uint8_t     *p;
    ngxshm_msg_t       m, ack;
    ngxshm_seg_hdr_t   h, hv;
    unsigned char      mb[40];

    static const uint32_t  rings[4] = { 4096, 8192, 65536, 12288 };
    static const int       counts[8] = { 3, 3, 3, 0, 1, 2, 4, 9 };

    if (fz_srv == NULL) {
        fz_srv = fz_server_start(fz_handler, 0);
    }

    base = fz_nfds();

    fz_init(&in, data, size);

    a = fz_u8(&in);
    b = fz_u8(&in);
    c = fz_u8(&in);
    lsel = fz_u8(&in);

    ring = rings[a & 3];
    seal = (a >> 2) & 3;
    nfds = counts[c & 7];

    for (i = 0; i < 9; i++) {
        kinds[i] = (i < 3) ? fz_u8(&in) % FZ_KINDS : FZ_FD_EVENTFD;
    }

    /* the segment: its file size, and the size HELLO claims */
    fsize = NGXSHM_HDR_SIZE + 2 * (size_t) ring;

    switch (b & 3) {
    case 1: fsize += 4096; break;
    case 2: fsize -= 4096; break;
    case 3: fsize = 4096; break;
    }

    memset(&m, 0, sizeof(m));
    m.magic = NGXSHM_MAGIC;
    m.version = NGXSHM_VERSION;
    m.type = NGXSHM_MSG_HELLO;
    m.size = sizeof(m);
    m.pid = (uint32_t) getpid();
    m.seg_size = fsize;

    switch ((b >> 2) & 3) {
    case 1: m.seg_size = NGXSHM_HDR_SIZE + 2 * (uint64_t) ring; break;
    case 2: m.seg_size = fsize + 1; break;
    case 3: m.seg_size = (uint64_t) 1 << 40; break;
    }

    memset(&h, 0, sizeof(h));
    h.magic = NGXSHM_MAGIC;
    h.version = NGXSHM_VERSION;
    h.hdr_size = NGXSHM_HDR_SIZE;
    h.seg_size = m.seg_size;
    h.ring_size = ring;
    h.max_frame = 1024;
    h.max_streams = 16;
    h.window = 4096;
    h.nginx_pid = (uint32_t) getpid();

    /* the input's changes, XORed on */
    mm = (unsigned char *) &m;
    p = fz_bytes(&in, sizeof(m), &got);

    for (i = 0; i < (int) got; i++) {
        mm[i] ^= p[i];
    }

    mh = (unsigned char *) &h;
    p = fz_bytes(&in, sizeof(h), &got);

    for (i = 0; i < (int) got; i++) {
        mh[i] ^= p[i];
    }

    start = fz_u32(&in) & ~(NGXSHM_ALIGN - 1);
    x0 = fz_u32(&in);
    x1 = fz_u32(&in);
    x2 = fz_u32(&in);
    nj = fz_u8(&in) % sizeof(junk);

    seg = memfd_create("ngxshm-fuzz", MFD_CLOEXEC
                       | (seal != 1 ? MFD_ALLOW_SEALING : 0));
    fz_check(seg >= 0);
    fz_check(ftruncate(seg, (off_t) fsize) == 0);

    map = mmap(NULL, fsize, PROT_READ|PROT_WRITE, MAP_SHARED, seg, 0);
    fz_check(map != MAP_FAILED);

    memcpy(map, &h, sizeof(h));

    if (fsize >= NGXSHM_HDR_SIZE) {
        ngxshm_ring_ctrl_t  *c0, *c1;

        c0 = (ngxshm_ring_ctrl_t *) (map + NGXSHM_CTRL_OFF0);
        c1 = (ngxshm_ring_ctrl_t *) (map + NGXSHM_CTRL_OFF1);
        c0->head = start ^ x0;
        c0->tail = start ^ x0;
        c1->tail = start ^ x1;
        c1->head = start ^ x2;
    }

    if (seal == 0) {
        fz_check(fcntl(seg, F_ADD_SEALS,
                       F_SEAL_SHRINK|F_SEAL_GROW|F_SEAL_SEAL) == 0);

    } else if (seal == 2) {
        fz_check(fcntl(seg, F_ADD_SEALS, F_SEAL_SHRINK) == 0);
    }

    for (i = 0; i < nfds; i++) {
        fds[i] = fz_open_kind(kinds[i], i, seg);
    }

    /* the expected answer, in the order of the library's checks */
    memcpy(&hv, map, sizeof(hv));
    len = lsel ? 1 + lsel % sizeof(mb) : sizeof(m);

    sealable = (kinds[0] == FZ_FD_EXPECTED && seal != 1)
               || kinds[0] == FZ_FD_MEMFD;
    sealed_ok = (kinds[0] == FZ_FD_EXPECTED && seal == 0);

    if (kinds[0] == FZ_FD_EXPECTED && seal == 1) {
        /* a memfd without MFD_ALLOW_SEALING has F_SEAL_SEAL only */
        sealable = 1;
    }

    gsize = NGXSHM_HDR_SIZE + 2 * (uint64_t) hv.ring_size;

    if (nfds > 8) {
        want = EPROTO;

    } else if (len < sizeof(m) || m.magic != NGXSHM_MAGIC
               || m.type != NGXSHM_MSG_HELLO || m.size != sizeof(m))
    {
        want = EPROTO;

    } else if (m.version != NGXSHM_VERSION) {
        want = EPROTONOSUPPORT;

    } else if (nfds != 3) {
        want = EPROTO;

    } else if (!sealable) {
        want = EINVAL;

    } else if (!sealed_ok) {
        want = EPERM;

    } else if (m.seg_size != fsize || fsize < NGXSHM_HDR_SIZE + 2 * 4096) {
        want = EINVAL;

    } else if (!fz_is_wake_pipe(kinds[1], 1) || !fz_is_eventfd(kinds[2], 2)) {
        want = EINVAL;

    } else if (hv.magic != NGXSHM_MAGIC || hv.version != NGXSHM_VERSION
               || hv.hdr_size != 4096 || hv.flags != 0
               || hv.reserved[0] || hv.reserved[1] || hv.reserved[2]
               || hv.reserved[3] || hv.reserved[4]
               || hv.seg_size != m.seg_size
               || !fz_pow2(hv.ring_size) || hv.ring_size < 4096
               || hv.ring_size > (1u << 30) || hv.seg_size != gsize
               || hv.max_frame == 0 || hv.max_frame > hv.ring_size / 4
               || hv.max_streams == 0 || hv.max_streams > 65536
               || hv.window == 0 || hv.window > hv.ring_size)
    {
        want = EINVAL;

    } else if (((start ^ x0) & 15) != 0 || (start ^ x1) != (start ^ x2)
               || ((start ^ x1) & 15) != 0)
    {
        want = EINVAL;

    } else {
        want = 0;
    }

    /* HELLO, maybe short or long */
    memset(mb, 'j', sizeof(mb));
    memcpy(mb, &m, sizeof(m));

    s = fz_connect(fz_srv);

    n = fz_sendmsg(s, mb, len, fds, nfds);
    fz_check(n == (ssize_t) len);

    for (i = 0; i < nfds; i++) {
        close(fds[i]);
    }

    close(seg);

    n = fz_answer(fz_srv, s, &ack, sizeof(ack));
    fz_check(n == sizeof(ack));
    fz_check(ack.magic == NGXSHM_MAGIC && ack.version == NGXSHM_VERSION
             && ack.type == NGXSHM_MSG_HELLO_ACK && ack.size == sizeof(ack));

    /* the status is the expected one, not just "some refusal" */
    if (ack.status != want) {
        fprintf(stderr, "status %d, expected %d\n", ack.status, want);
        fz_check(ack.status == want);
    }

    if (want != 0 || len > sizeof(m)) {
        /* refused, or bytes after HELLO: closed after the answer */
        fz_check(fz_closed(fz_srv, s));

    } else if (nj != 0 && send(s, junk, nj, MSG_NOSIGNAL) == nj) {
        /* nothing may come on the socket after HELLO */
        fz_check(fz_closed(fz_srv, s));
    }

    close(s);

    fz_check(fz_wait_idle(fz_srv));
    fz_check(ngxshm_link_empty(&fz_srv->srv->loops[0].reqs));

    munmap(map, fsize);

    if (fz_nfds() != base) {
        fz_dump_fds();
        fz_check(fz_nfds() == base);
    }

    return 0;
}
