
/*
 * Copyright (C) ngxshm authors
 *
 * Checks of what a sidecar sends that need nothing from nginx: the
 * response head block, the HELLO_ACK message and the stateless part of
 * a frame header.  Plain C on the ABI header only, so that the fuzz
 * targets in fuzz/ run the very code the module runs; the module turns
 * the results into its error-log lines.
 */


#ifndef NGX_HTTP_SHM_CHECK_H
#define NGX_HTTP_SHM_CHECK_H


#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "ngxshm_abi.h"


/* results of ngx_http_shm_check_head() and ngx_http_shm_check_field() */
#define NGX_HTTP_SHM_HEAD_OK          0
#define NGX_HTTP_SHM_HEAD_AGAIN       1   /* the block is not all there */
#define NGX_HTTP_SHM_HEAD_TOO_BIG     2   /* size beyond the buffer */
#define NGX_HTTP_SHM_HEAD_BAD_BLOCK   3   /* size, nfields, flags, reserved */
#define NGX_HTTP_SHM_HEAD_BAD_STATUS  4   /* not 200 .. 599 */
#define NGX_HTTP_SHM_HEAD_BAD_FIELD   5   /* kind, reserved, off, lengths */
#define NGX_HTTP_SHM_HEAD_BAD_NAME    6   /* a byte of the name is no tchar */
#define NGX_HTTP_SHM_HEAD_BAD_VALUE   7   /* CR, LF or NUL in the value */

/* results of ngx_http_shm_check_ack() */
#define NGX_HTTP_SHM_ACK_OK           0
#define NGX_HTTP_SHM_ACK_INVALID      1   /* not a HELLO_ACK message */
#define NGX_HTTP_SHM_ACK_REFUSED      2   /* other version, or status */


/* RFC 9110 tchar */

static inline int
ngx_http_shm_check_tchar(unsigned char ch)
{
    if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z')
        || (ch >= '0' && ch <= '9'))
    {
        return 1;
    }

    switch (ch) {
    case '!': case '#': case '$': case '%': case '&': case '\'': case '*':
    case '+': case '-': case '.': case '^': case '_': case '`': case '|':
    case '~':
        return 1;
    }

    return 0;
}


/*
 * The header of a response head block at "start", of which "avail"
 * bytes have arrived in a buffer with room for "room" bytes from
 * "start".  The header is copied to *head (once "avail" covers it).
 * HEAD_OK means the whole block is in the buffer, its field table fits
 * in it and the status is valid; each field is then checked by
 * ngx_http_shm_check_field().
 */

static inline int
ngx_http_shm_check_head(const unsigned char *start, size_t avail,
    size_t room, ngxshm_head_t *head)
{
    size_t  end;

    if (avail < sizeof(ngxshm_head_t)) {
        return NGX_HTTP_SHM_HEAD_AGAIN;
    }

    memcpy(head, start, sizeof(ngxshm_head_t));

    if (head->size > room) {
        return NGX_HTTP_SHM_HEAD_TOO_BIG;
    }

    if (avail < head->size) {
        return NGX_HTTP_SHM_HEAD_AGAIN;
    }

    end = sizeof(ngxshm_head_t)
          + (size_t) head->nfields * sizeof(ngxshm_field_t);

    if (head->size < end || head->flags != 0 || head->reserved != 0) {
        return NGX_HTTP_SHM_HEAD_BAD_BLOCK;
    }

    if (head->status < 200 || head->status > 599) {
        return NGX_HTTP_SHM_HEAD_BAD_STATUS;
    }

    return NGX_HTTP_SHM_HEAD_OK;
}


/*
 * Field "n" (< head->nfields) of a block that passed
 * ngx_http_shm_check_head(), copied to *field.  HEAD_OK means: a header
 * with a non-empty name of tchars, and a value without CR, LF or NUL,
 * both inside the block after the field table; the value follows the
 * name.  For HEAD_BAD_NAME and HEAD_BAD_VALUE, *pos is the index of the
 * bad byte in the name or the value, and the bytes before it are good.
 */

static inline int
ngx_http_shm_check_field(const unsigned char *start,
    const ngxshm_head_t *head, uint32_t n, ngxshm_field_t *field,
    size_t *pos)
{
    size_t                i, end;
    const unsigned char  *name, *value;

    end = sizeof(ngxshm_head_t)
          + (size_t) head->nfields * sizeof(ngxshm_field_t);

    memcpy(field, start + sizeof(ngxshm_head_t) + n * sizeof(ngxshm_field_t),
           sizeof(ngxshm_field_t));

    if (field->kind != NGXSHM_FIELD_HEADER || field->reserved != 0
        || field->name_len == 0
        || field->off < end || field->off > head->size
        || field->name_len > head->size - field->off
        || field->value_len > head->size - field->off - field->name_len)
    {
        return NGX_HTTP_SHM_HEAD_BAD_FIELD;
    }

    name = start + field->off;
    value = name + field->name_len;

    for (i = 0; i < field->name_len; i++) {
        if (!ngx_http_shm_check_tchar(name[i])) {
            *pos = i;
            return NGX_HTTP_SHM_HEAD_BAD_NAME;
        }
    }

    for (i = 0; i < field->value_len; i++) {
        if (value[i] == '\r' || value[i] == '\n' || value[i] == '\0') {
            *pos = i;
            return NGX_HTTP_SHM_HEAD_BAD_VALUE;
        }
    }

    return NGX_HTTP_SHM_HEAD_OK;
}


/*
 * The answer to HELLO: "n" bytes (> 0) received into *ack.  ACK_REFUSED
 * is a well-formed HELLO_ACK that refuses the channel (ack->status, if
 * positive, is the sidecar's errno) or speaks another version.
 */

static inline int
ngx_http_shm_check_ack(const ngxshm_msg_t *ack, size_t n)
{
    if (n != sizeof(ngxshm_msg_t)
        || ack->magic != NGXSHM_MAGIC
        || ack->type != NGXSHM_MSG_HELLO_ACK
        || ack->size != sizeof(ngxshm_msg_t))
    {
        return NGX_HTTP_SHM_ACK_INVALID;
    }

    if (ack->version != NGXSHM_VERSION || ack->status != 0) {
        return NGX_HTTP_SHM_ACK_REFUSED;
    }

    return NGX_HTTP_SHM_ACK_OK;
}


/*
 * The checks of a frame from the response ring that need no stream
 * state: NULL, or the violation.  A GOAWAY frame that passes needs no
 * more checks; any other frame that passes is RESP_HEAD, RESP_BODY,
 * RESET or CREDIT, for a slot below max_streams.
 */

static inline const char *
ngx_http_shm_check_frame(const ngxshm_frame_t *f, uint32_t max_streams)
{
    if (f->type == NGXSHM_GOAWAY) {
        if (f->stream != 0 || f->gen != 0 || f->len != 0 || f->flags != 0) {
            return "invalid GOAWAY frame";
        }

        return NULL;
    }

    if (f->type != NGXSHM_RESP_HEAD && f->type != NGXSHM_RESP_BODY
        && f->type != NGXSHM_RESET && f->type != NGXSHM_CREDIT)
    {
        return "frame type not allowed from a sidecar";
    }

    if (f->stream >= max_streams) {
        return "stream slot out of range";
    }

    return NULL;
}


#endif /* NGX_HTTP_SHM_CHECK_H */
