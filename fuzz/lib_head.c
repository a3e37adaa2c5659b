/*
 * Copyright (C) ngxshm authors
 *
 * Fuzz target "lib_head": the library's parser of request head blocks,
 * ngxshm_head_parse() (src/lib/ngxshm_request.c), on a block of exactly
 * the input's bytes in a heap buffer of that size.  Its caller
 * (ngxshm_head_in()) has checked that the block's size field equals the
 * bytes received, so the target sets the size field to the input's
 * length unless the input is shorter than a size field.
 *
 * Checked: the parser accepts a block exactly when an independent
 * reading of docs/protocol.md section 5 does; in an accepted block every
 * header, parameter and request datum the API hands out lies inside the
 * block after the field table and is followed by its NUL, headers and
 * parameters come in the block's order, the first of duplicate data
 * wins, and the request API (ngxshm_request_header() and the others)
 * returns those same strings.
 */

#include <errno.h>

#include "ngxshm_internal.h"
#include "fuzz.h"


/* docs/protocol.md section 5, for request blocks; 1 if valid */
static int
fz_valid(const unsigned char *b, size_t n)
{
    uint32_t        i;
    uint64_t        table, name_end, value_end;
    ngxshm_head_t   hd;
    ngxshm_field_t  fl;

    if (n < sizeof(hd)) {
        return 0;
    }

    memcpy(&hd, b, sizeof(hd));
    table = sizeof(hd) + (uint64_t) hd.nfields * sizeof(fl);

    if (hd.size != n || table > n || hd.status != 0 || hd.flags != 0
        || hd.reserved != 0)
    {
        return 0;
    }

    for (i = 0; i < hd.nfields; i++) {
        memcpy(&fl, b + sizeof(hd) + (size_t) i * sizeof(fl), sizeof(fl));

        name_end = (uint64_t) fl.off + fl.name_len;
        value_end = name_end + 1 + fl.value_len;

        if (fl.reserved != 0 || fl.off < table || value_end + 1 > n
            || b[name_end] != 0 || b[value_end] != 0)
        {
            return 0;
        }

        if (fl.kind >= NGXSHM_FIELD_METHOD && fl.kind <= NGXSHM_FIELD_MAX
            && fl.name_len != 0)
        {
            return 0;
        }
    }

    return 1;
}


/* s lies in the block after the table, NUL-terminated */
static void
fz_inside(const ngxshm_request_t *r, uint64_t table, const char *s,
    size_t len)
{
    const unsigned char  *p;

    p = (const unsigned char *) s;

    fz_check(p >= r->head + table);
    fz_check(p + len < r->head + r->head_len);
    fz_check(p[len] == '\0');
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int                rc;
    size_t             nh, np, i;
    uint32_t           k, n32;
    uint64_t           table;
    const char        *bad;
    ngxshm_str_t       name, value, s, seen[NGXSHM_NPSEUDO];
    ngxshm_head_t      hd;
    ngxshm_field_t     fl;
    ngxshm_request_t  *r;

    if (size > 4 * 1024 * 1024) {
        return 0;
    }

    r = fz_alloc(sizeof(ngxshm_request_t));

    /* exactly "size" bytes: ASan sees a read past the block */
    r->head = fz_alloc(size);

    if (size != 0) {
        memcpy(r->head, data, size);
    }

    if (size >= sizeof(uint32_t)) {
        n32 = (uint32_t) size;
        memcpy(r->head, &n32, sizeof(n32));
    }

    r->head_len = (uint32_t) size;
    r->head_cap = (uint32_t) size;

    bad = ngxshm_head_parse(r);

    fz_check((bad == NULL) == fz_valid(r->head, size));

    if (bad != NULL) {
        goto done;
    }

    memcpy(&hd, r->head, sizeof(hd));
    table = sizeof(hd) + (uint64_t) hd.nfields * sizeof(fl);

    /* the index, against the block's fields in order */
    nh = 0;
    np = 0;

    for (k = 0; k < NGXSHM_NPSEUDO; k++) {
        seen[k].data = NULL;
        seen[k].len = 0;
    }

    for (k = 0; k < hd.nfields; k++) {
        memcpy(&fl, r->head + sizeof(hd) + (size_t) k * sizeof(fl),
               sizeof(fl));

        if (fl.kind == NGXSHM_FIELD_HEADER || fl.kind == NGXSHM_FIELD_PARAM) {
            rc = (fl.kind == NGXSHM_FIELD_HEADER)
                 ? ngxshm_request_header_at(r, nh++, &name, &value)
                 : ngxshm_request_param_at(r, np++, &name, &value);

            fz_check(rc == 0);
            fz_check(name.data == (const char *) r->head + fl.off);
            fz_check(name.len == fl.name_len);
            fz_check(value.data == name.data + fl.name_len + 1);
            fz_check(value.len == fl.value_len);
            fz_inside(r, table, name.data, name.len);
            fz_inside(r, table, value.data, value.len);

        } else if (fl.kind >= NGXSHM_FIELD_METHOD
                   && fl.kind <= NGXSHM_FIELD_MAX
                   && seen[fl.kind - NGXSHM_FIELD_METHOD].data == NULL)
        {
            seen[fl.kind - NGXSHM_FIELD_METHOD].data =
                                    (const char *) r->head + fl.off + 1;
            seen[fl.kind - NGXSHM_FIELD_METHOD].len = fl.value_len;
        }
    }

    fz_check(ngxshm_request_header_count(r) == nh);
    fz_check(ngxshm_request_param_count(r) == np);
    fz_check(ngxshm_request_header_at(r, nh, &name, &value) == -ERANGE);
    fz_check(ngxshm_request_param_at(r, np, &name, &value) == -ERANGE);

    for (k = NGXSHM_FIELD_METHOD; k <= NGXSHM_FIELD_MAX; k++) {
        s = ngxshm_request_field(r, k);
        fz_check(s.data != NULL);

        if (seen[k - NGXSHM_FIELD_METHOD].data == NULL) {
            fz_check(s.len == 0 && s.data[0] == '\0');

        } else {
            fz_check(s.data == seen[k - NGXSHM_FIELD_METHOD].data);
            fz_check(s.len == seen[k - NGXSHM_FIELD_METHOD].len);
            fz_inside(r, table, s.data, s.len);
        }
    }

    s = ngxshm_request_field(r, NGXSHM_FIELD_METHOD);
    fz_check(r->is_head == (s.len == 4 && memcmp(s.data, "HEAD", 4) == 0));

    /* lookups by name find the first match, case-insensitively */
    for (i = 0; i < nh && i < 4; i++) {
        char  buf[64];

        (void) ngxshm_request_header_at(r, i, &name, &value);

        if (name.len >= sizeof(buf) || memchr(name.data, 0, name.len)) {
            continue;
        }

        memcpy(buf, name.data, name.len);
        buf[name.len] = '\0';

        s = ngxshm_request_header(r, buf);
        fz_check(s.data != NULL);
        fz_inside(r, table, s.data, s.len);
    }

done:

    free(r->hdrs);
    free(r->head);
    free(r);

    return 0;
}
