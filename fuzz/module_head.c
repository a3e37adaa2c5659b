/*
 * Copyright (C) ngxshm authors
 *
 * Fuzz target "module_head": the module's checks of a response head
 * block (src/module/ngx_http_shm_check.h), run as
 * ngx_http_shm_process_header() runs them: on the bytes received so far
 * at the start of a buffer with room for more.  The bytes past those
 * received are poisoned, so ASan reports a read of them as well as a
 * read past the buffer.
 *
 * Checked: every result (AGAIN, TOO_BIG, BAD_BLOCK, BAD_STATUS, and per
 * field BAD_FIELD, BAD_NAME, BAD_VALUE with the index of the bad byte)
 * is the one an independent reading of docs/protocol.md section 5
 * gives; a field that passes has a non-empty name of tchars and a value
 * without CR, LF or NUL, both inside the block after the field table.
 *
 * Input: u16 extra room past the bytes received, then the bytes.
 */

#include <sanitizer/asan_interface.h>

#include "ngx_http_shm_check.h"
#include "fuzz.h"


static int
fz_tchar(unsigned char c)
{
    static const char  tchars[] = "!#$%&'*+-.^_`|~"
                                  "0123456789"
                                  "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                  "abcdefghijklmnopqrstuvwxyz";

    return c != '\0' && strchr(tchars, c) != NULL;
}


/* the expected result for the block's header */
static int
fz_expect_head(const unsigned char *b, size_t avail, size_t room)
{
    ngxshm_head_t  hd;

    if (avail < 16) {
        return NGX_HTTP_SHM_HEAD_AGAIN;
    }

    memcpy(&hd, b, sizeof(hd));

    if (hd.size > room) {
        return NGX_HTTP_SHM_HEAD_TOO_BIG;
    }

    if (hd.size > avail) {
        return NGX_HTTP_SHM_HEAD_AGAIN;
    }

    if (16 + 16 * (uint64_t) hd.nfields > hd.size || hd.flags != 0
        || hd.reserved != 0)
    {
        return NGX_HTTP_SHM_HEAD_BAD_BLOCK;
    }

    if (hd.status < 200 || hd.status >= 600) {
        return NGX_HTTP_SHM_HEAD_BAD_STATUS;
    }

    return NGX_HTTP_SHM_HEAD_OK;
}


/* the expected result for field n, and the bad byte's index */
static int
fz_expect_field(const unsigned char *b, const ngxshm_head_t *hd, uint32_t n,
    size_t *pos)
{
    size_t          i;
    uint64_t        table;
    ngxshm_field_t  fl;

    memcpy(&fl, b + 16 + 16 * (size_t) n, sizeof(fl));
    table = 16 + 16 * (uint64_t) hd->nfields;

    if (fl.kind != NGXSHM_FIELD_HEADER || fl.reserved != 0
        || fl.name_len == 0 || fl.off < table
        || (uint64_t) fl.off + fl.name_len + fl.value_len > hd->size)
    {
        return NGX_HTTP_SHM_HEAD_BAD_FIELD;
    }

    for (i = 0; i < fl.name_len; i++) {
        if (!fz_tchar(b[fl.off + i])) {
            *pos = i;
            return NGX_HTTP_SHM_HEAD_BAD_NAME;
        }
    }

    for (i = 0; i < fl.value_len; i++) {
        if (memchr("\r\n", b[fl.off + fl.name_len + i], 3) != NULL) {
            *pos = i;
            return NGX_HTTP_SHM_HEAD_BAD_VALUE;
        }
    }

    return NGX_HTTP_SHM_HEAD_OK;
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int                   rc, want;
    size_t                avail, room, pos, wpos, got, i;
    uint32_t              n;
    fz_in_t               in;
    unsigned char        *buf, *copy;
    const uint8_t        *b;
    ngxshm_head_t         head;
    ngxshm_field_t        field;
    const unsigned char  *name, *value;

    fz_init(&in, data, size);

    room = fz_u16(&in);
    b = fz_bytes(&in, in.n, &got);
    avail = got;
    room += avail;

    buf = fz_alloc(room);

    if (avail != 0) {
        memcpy(buf, b, avail);
    }

    /* received so far: [0, avail); the rest of the buffer is not ours */
    ASAN_POISON_MEMORY_REGION(buf + avail, room - avail);

    rc = ngx_http_shm_check_head(buf, avail, room, &head);
    want = fz_expect_head(buf, avail, room);

    fz_check(rc == want);

    if (rc != NGX_HTTP_SHM_HEAD_OK) {
        goto done;
    }

    fz_check(head.size <= avail);
    fz_check(memcmp(&head, buf, sizeof(head)) == 0);

    for (n = 0; n < head.nfields; n++) {
        pos = (size_t) -1;
        wpos = (size_t) -2;

        rc = ngx_http_shm_check_field(buf, &head, n, &field, &pos);
        want = fz_expect_field(buf, &head, n, &wpos);

        fz_check(rc == want);
        fz_check(memcmp(&field, buf + 16 + 16 * (size_t) n, 16) == 0);

        if (rc == NGX_HTTP_SHM_HEAD_BAD_NAME
            || rc == NGX_HTTP_SHM_HEAD_BAD_VALUE)
        {
            fz_check(pos == wpos);
        }

        if (rc != NGX_HTTP_SHM_HEAD_OK) {
            break;
        }

        name = buf + field.off;
        value = name + field.name_len;

        fz_check(field.name_len != 0);
        fz_check(name >= buf + 16 + 16 * (size_t) head.nfields);
        fz_check(value + field.value_len <= buf + head.size);

        for (i = 0; i < field.name_len; i++) {
            fz_check(fz_tchar(name[i]));
        }

        /* what the module does next: copy name and value */
        copy = fz_alloc((size_t) field.name_len + field.value_len + 1);
        memcpy(copy, name, field.name_len);
        memcpy(copy + field.name_len, value, field.value_len);
        copy[field.name_len + field.value_len] = '\0';

        fz_check(strlen((char *) copy)
                 == (size_t) field.name_len + field.value_len);
        fz_check(strpbrk((char *) copy + field.name_len, "\r\n") == NULL);

        free(copy);
    }

done:

    ASAN_UNPOISON_MEMORY_REGION(buf + avail, room - avail);
    free(buf);

    return 0;
}
