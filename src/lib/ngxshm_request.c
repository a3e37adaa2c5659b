/*
 * Copyright (C) ngxshm authors
 *
 * libngxshm: streams.  Incoming frames (validated against the stream
 * rules of docs/protocol.md section 6 and the credit rules of section 7),
 * request head blocks, and the request and response API.
 */

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "ngxshm_internal.h"


static int ngxshm_req_open(ngxshm_chan_t *ch, ngxshm_slot_t *s,
    const ngxshm_frame_t *f, const unsigned char *p);
static int ngxshm_head_in(ngxshm_request_t *r, const ngxshm_frame_t *f,
    const unsigned char *p);
static int ngxshm_body_in(ngxshm_request_t *r, const ngxshm_frame_t *f,
    const unsigned char *p);
static int ngxshm_credit_in(ngxshm_request_t *r, const ngxshm_frame_t *f,
    const unsigned char *p);
static int ngxshm_too_large(ngxshm_request_t *r);
static void ngxshm_req_check_done(ngxshm_request_t *r);
static void ngxshm_req_slot_release(ngxshm_request_t *r);
static void ngxshm_req_app_release(ngxshm_request_t *r);
static void ngxshm_req_credit(ngxshm_request_t *r);
static int ngxshm_req_usable(const ngxshm_request_t *r);
static int ngxshm_send_simple(ngxshm_request_t *r, uint8_t type,
    uint8_t flags, const void *data, uint32_t len);
static int ngxshm_resp_check(unsigned status, const ngxshm_header_t *h,
    size_t n);
static int ngxshm_resp_head(ngxshm_request_t *r, unsigned status,
    const ngxshm_header_t *h, size_t n, int end);


static const char  ngxshm_empty[] = "";


static int
ngxshm_violation(ngxshm_chan_t *ch, const char *reason)
{
    ngxshm_chan_fail(ch, reason);
    return -1;
}


/* one frame from ring 0, copied header and payload in the ring;
 * 0, or -1 after failing the channel */
int
ngxshm_frame_in(ngxshm_chan_t *ch, const ngxshm_frame_t *f,
    const unsigned char *p)
{
    ngxshm_slot_t     *s;
    ngxshm_request_t  *r;

    switch (f->type) {

    case NGXSHM_REQ_HEAD:
    case NGXSHM_REQ_BODY:
    case NGXSHM_CANCEL:
    case NGXSHM_CREDIT:
        break;

    default:
        return ngxshm_violation(ch, "frame type not sent by nginx");
    }

    if (f->flags & ~(NGXSHM_F_END|NGXSHM_F_CONT)) {
        return ngxshm_violation(ch, "unknown frame flags");
    }

    if ((f->type == NGXSHM_CANCEL || f->type == NGXSHM_CREDIT)
        && f->flags != 0)
    {
        return ngxshm_violation(ch, "flags on a CANCEL or CREDIT frame");
    }

    if (f->type == NGXSHM_CANCEL && f->len != 0) {
        return ngxshm_violation(ch, "CANCEL frame with a payload");
    }

    if (f->type == NGXSHM_CREDIT && f->len != sizeof(uint32_t)) {
        return ngxshm_violation(ch, "CREDIT frame of wrong length");
    }

    if (f->type != NGXSHM_REQ_HEAD && (f->flags & NGXSHM_F_CONT)) {
        return ngxshm_violation(ch, "CONT on a frame that is no head");
    }

    if (f->stream >= ch->max_streams) {
        return ngxshm_violation(ch, "stream slot out of range");
    }

    s = &ch->slots[f->stream];
    r = s->r;

    if (r == NULL) {
        if (f->type == NGXSHM_REQ_HEAD) {
            return ngxshm_req_open(ch, s, f, p);
        }

        /*
         * Our slot is free once we sent END and received END, but nginx
         * may still return credit for the body it read, or cancel, before
         * it has seen our END: ignore those for the last generation.
         */
        if ((f->type == NGXSHM_CANCEL || f->type == NGXSHM_CREDIT)
            && s->gen != 0 && f->gen == s->gen)
        {
            return 0;
        }

        return ngxshm_violation(ch, "frame for a stream not open");
    }

    if (f->type == NGXSHM_REQ_HEAD && r->head_done) {
        return ngxshm_violation(ch, "head frame for an open stream");
    }

    if (f->gen != r->gen) {
        return ngxshm_violation(ch, "frame for a wrong generation");
    }

    switch (f->type) {

    case NGXSHM_REQ_HEAD:
        return ngxshm_head_in(r, f, p);

    case NGXSHM_REQ_BODY:
        return ngxshm_body_in(r, f, p);

    case NGXSHM_CANCEL:
        ngxshm_req_detach(r);
        return 0;

    default: /* NGXSHM_CREDIT */
        return ngxshm_credit_in(r, f, p);
    }
}


static int
ngxshm_req_open(ngxshm_chan_t *ch, ngxshm_slot_t *s, const ngxshm_frame_t *f,
    const unsigned char *p)
{
    ngxshm_request_t  *r;

    if (f->gen <= s->gen) {
        return ngxshm_violation(ch, "stream generation did not grow");
    }

    r = calloc(1, sizeof(ngxshm_request_t));
    if (r == NULL) {
        return ngxshm_violation(ch, "out of memory for a request");
    }

    r->loop = ch->loop;
    r->ch = ch;
    r->slot = f->stream;
    r->gen = f->gen;
    r->refs = 1;
    r->in_slot = 1;
    r->in_credit = ch->window;
    r->out_credit = ch->window;

    s->r = r;
    s->gen = f->gen;
    ch->nopen++;

    ngxshm_link_add(&ch->loop->reqs, &r->all);

    return ngxshm_head_in(r, f, p);
}


static int
ngxshm_head_in(ngxshm_request_t *r, const ngxshm_frame_t *f,
    const unsigned char *p)
{
    uint32_t        size;
    uint64_t        need, cap;
    const char     *bad;
    unsigned char  *h;
    ngxshm_chan_t  *ch;

    ch = r->ch;

    if ((f->flags & NGXSHM_F_CONT) && (f->flags & NGXSHM_F_END)) {
        return ngxshm_violation(ch, "END and CONT on one head frame");
    }

    if (!r->discard) {
        need = (uint64_t) r->head_len + f->len;

        if (need > ch->loop->srv->cfg.max_head) {
            if (ngxshm_too_large(r) != 0) {
                return -1;
            }

        } else {
            if (need > r->head_cap) {
                cap = r->head_cap ? (uint64_t) r->head_cap * 2 : 1024;

                if (r->head_len >= sizeof(uint32_t)) {
                    memcpy(&size, r->head, sizeof(uint32_t));

                    if (size >= need && size <= ch->loop->srv->cfg.max_head) {
                        cap = size;
                    }
                }

                if (cap < need) {
                    cap = need;
                }

                if (cap > ch->loop->srv->cfg.max_head) {
                    cap = ch->loop->srv->cfg.max_head;
                }

                h = realloc(r->head, cap);
                if (h == NULL) {
                    return ngxshm_violation(ch, "out of memory for a head");
                }

                r->head = h;
                r->head_cap = (uint32_t) cap;
            }

            if (f->len != 0) {
                memcpy(r->head + r->head_len, p, f->len);
            }

            r->head_len = (uint32_t) need;

            if (r->head_len >= sizeof(uint32_t)) {
                memcpy(&size, r->head, sizeof(uint32_t));

                if (size < r->head_len) {
                    return ngxshm_violation(ch,
                                        "head block longer than its size");
                }

                if (size > ch->loop->srv->cfg.max_head
                    && ngxshm_too_large(r) != 0)
                {
                    return -1;
                }
            }
        }
    }

    if (f->flags & NGXSHM_F_CONT) {
        return 0;
    }

    r->head_done = 1;

    if (f->flags & NGXSHM_F_END) {
        r->in_end = 1;
    }

    if (r->discard) {
        ngxshm_req_check_done(r);
        return 0;
    }

    if (r->head_len < sizeof(uint32_t)) {
        return ngxshm_violation(ch, "head block too short");
    }

    memcpy(&size, r->head, sizeof(uint32_t));

    if (size != r->head_len) {
        return ngxshm_violation(ch, "head block size does not match");
    }

    bad = ngxshm_head_parse(r);

    if (bad != NULL) {
        return ngxshm_violation(ch, bad);
    }

    r->app = 1;
    __atomic_add_fetch(&r->refs, 1, __ATOMIC_ACQ_REL);
    r->loop->napp++;

    ngxshm_req_notify(r, NGXSHM_EV_NEW);

    return 0;
}


/* a request head over cfg.max_head: refuse the stream, keep the channel */
static int
ngxshm_too_large(ngxshm_request_t *r)
{
    free(r->head);
    r->head = NULL;
    r->head_len = 0;
    r->head_cap = 0;
    r->discard = 1;
    r->out_end = 1;

    ngxshm_log("request head larger than %zu bytes, stream reset",
               r->loop->srv->cfg.max_head);

    return ngxshm_send_simple(r, NGXSHM_RESET, 0, NULL, 0) == 0 ? 0 : -1;
}


/*
 * The request head block: header, field table, strings.  The block is
 * our private copy, so it cannot change under us; every offset is still
 * checked in 64 bits.  In a request block a NUL follows each name and
 * each value; the value starts after the name's NUL.
 */
const char *
ngxshm_head_parse(ngxshm_request_t *r)
{
    size_t           nh, np;
    uint32_t         i, table, voff;
    uint64_t         end;
    ngxshm_head_t    hd;
    ngxshm_field_t   fl;
    ngxshm_header_t *idx;

    if (r->head_len < sizeof(ngxshm_head_t)) {
        return "head block too short";
    }

    memcpy(&hd, r->head, sizeof(hd));

    table = (uint32_t) sizeof(ngxshm_head_t)
            + (uint32_t) hd.nfields * (uint32_t) sizeof(ngxshm_field_t);

    if (table > hd.size) {
        return "head block field table beyond its size";
    }

    if (hd.status != 0 || hd.flags != 0 || hd.reserved != 0) {
        return "nonzero status, flags or reserved in a request head";
    }

    for (i = 0; i < NGXSHM_NPSEUDO; i++) {
        r->pseudo[i].data = ngxshm_empty;
        r->pseudo[i].len = 0;
    }

    nh = 0;
    np = 0;

    for (i = 0; i < hd.nfields; i++) {
        memcpy(&fl, r->head + sizeof(hd) + i * sizeof(fl), sizeof(fl));

        end = (uint64_t) fl.off + fl.name_len + 1 + fl.value_len + 1;

        if (fl.reserved != 0) {
            return "nonzero reserved in a head field";
        }

        if (fl.off < table || end > hd.size) {
            return "head field outside the block";
        }

        voff = fl.off + fl.name_len + 1;

        if (r->head[fl.off + fl.name_len] != '\0'
            || r->head[voff + fl.value_len] != '\0')
        {
            return "head field without its NUL";
        }

        if (fl.kind == NGXSHM_FIELD_HEADER) {
            nh++;

        } else if (fl.kind == NGXSHM_FIELD_PARAM) {
            np++;

        } else if (fl.kind >= NGXSHM_FIELD_METHOD
                   && fl.kind <= NGXSHM_FIELD_MAX && fl.name_len != 0)
        {
            return "named request datum field";
        }
    }

    idx = NULL;

    if (nh + np != 0) {
        idx = malloc((nh + np) * sizeof(ngxshm_header_t));
        if (idx == NULL) {
            return "out of memory for a head index";
        }
    }

    /* no index without headers and parameters: NULL + 0 is undefined */
    r->hdrs = idx;
    r->params = (idx != NULL) ? idx + nh : NULL;
    r->nhdrs = 0;
    r->nparams = 0;

    for (i = 0; i < hd.nfields; i++) {
        memcpy(&fl, r->head + sizeof(hd) + i * sizeof(fl), sizeof(fl));

        voff = fl.off + fl.name_len + 1;

        if (fl.kind == NGXSHM_FIELD_HEADER || fl.kind == NGXSHM_FIELD_PARAM) {
            idx = (fl.kind == NGXSHM_FIELD_HEADER)
                  ? &r->hdrs[r->nhdrs++] : &r->params[r->nparams++];

            idx->name.data = (const char *) r->head + fl.off;
            idx->name.len = fl.name_len;
            idx->value.data = (const char *) r->head + voff;
            idx->value.len = fl.value_len;

        } else if (fl.kind >= NGXSHM_FIELD_METHOD
                   && fl.kind <= NGXSHM_FIELD_MAX
                   && r->pseudo[fl.kind - NGXSHM_FIELD_METHOD].data
                      == ngxshm_empty)
        {
            /* the first of duplicates wins */
            r->pseudo[fl.kind - NGXSHM_FIELD_METHOD].data =
                                             (const char *) r->head + voff;
            r->pseudo[fl.kind - NGXSHM_FIELD_METHOD].len = fl.value_len;
        }
    }

    if (r->pseudo[0].len == 4 && memcmp(r->pseudo[0].data, "HEAD", 4) == 0) {
        r->is_head = 1;
    }

    return NULL;
}


static int
ngxshm_body_in(ngxshm_request_t *r, const ngxshm_frame_t *f,
    const unsigned char *p)
{
    uint32_t        need, cap;
    unsigned char  *b;
    ngxshm_chan_t  *ch;

    ch = r->ch;

    if (!r->head_done) {
        return ngxshm_violation(ch, "body frame before the head ended");
    }

    if (r->in_end) {
        return ngxshm_violation(ch, "body frame after END");
    }

    if (f->len > r->in_credit) {
        return ngxshm_violation(ch, "request body beyond the credit");
    }

    r->in_credit -= f->len;

    if (f->flags & NGXSHM_F_END) {
        r->in_end = 1;
    }

    if (r->discard) {
        r->in_unrep += f->len;
        ngxshm_req_credit(r);
        ngxshm_req_check_done(r);
        return 0;
    }

    if (f->len != 0) {
        /* credit keeps ilen + f->len within the window */
        need = r->ilen + f->len;

        if (r->ilen == 0) {
            r->istart = 0;
        }

        if (r->istart + need > r->icap) {
            if (need <= r->icap) {
                memmove(r->ibuf, r->ibuf + r->istart, r->ilen);
                r->istart = 0;

            } else {
                cap = r->icap ? r->icap : 16384;

                while (cap < need && cap < ch->window) {
                    cap = (cap > ch->window / 2) ? ch->window : cap * 2;
                }

                if (cap < need) {
                    cap = need;
                }

                if (r->istart != 0) {
                    memmove(r->ibuf, r->ibuf + r->istart, r->ilen);
                    r->istart = 0;
                }

                b = realloc(r->ibuf, cap);
                if (b == NULL) {
                    return ngxshm_violation(ch, "out of memory for a body");
                }

                r->ibuf = b;
                r->icap = cap;
            }
        }

        memcpy(r->ibuf + r->istart + r->ilen, p, f->len);
        r->ilen = need;
    }

    if (f->len != 0 || r->in_end) {
        ngxshm_req_notify(r, NGXSHM_EV_READABLE);
    }

    return 0;
}


static int
ngxshm_credit_in(ngxshm_request_t *r, const ngxshm_frame_t *f,
    const unsigned char *p)
{
    uint32_t  v;

    (void) f;

    memcpy(&v, p, sizeof(v));

    if (v == 0) {
        return ngxshm_violation(r->ch, "CREDIT of zero");
    }

    if ((uint64_t) r->out_credit + v > r->ch->window) {
        return ngxshm_violation(r->ch, "CREDIT above the window");
    }

    r->out_credit += v;

    if (r->obuf != NULL) {
        ngxshm_req_pump(r);

    } else if (r->want_write) {
        r->want_write = 0;
        ngxshm_req_notify(r, NGXSHM_EV_WRITABLE);
    }

    return 0;
}


/* queue an event for the application (NGXSHM_EV_NEW: call the handler) */
void
ngxshm_req_notify(ngxshm_request_t *r, unsigned ev)
{
    if (!r->app) {
        return;
    }

    r->pending |= ev;

    if (!ngxshm_linked(&r->runq)) {
        ngxshm_link_add(&r->loop->runq, &r->runq);
    }
}


/* nginx cancelled the stream or the channel is gone: leave the slot */
void
ngxshm_req_detach(ngxshm_request_t *r)
{
    if (!r->in_slot) {
        return;
    }

    r->cancelled = 1;
    r->want_write = 0;
    r->ilen = 0;
    free(r->ibuf);
    r->ibuf = NULL;
    free(r->obuf);
    r->obuf = NULL;
    ngxshm_link_del(&r->wait);

    ngxshm_req_notify(r, NGXSHM_EV_CANCEL);
    ngxshm_req_slot_release(r);
}


static void
ngxshm_req_check_done(ngxshm_request_t *r)
{
    if (r->in_slot && r->in_end && r->out_end) {
        ngxshm_req_slot_release(r);
    }
}


static void
ngxshm_req_slot_release(ngxshm_request_t *r)
{
    ngxshm_chan_t  *ch;

    ch = r->ch;

    ch->slots[r->slot].r = NULL;
    ch->nopen--;
    r->in_slot = 0;
    r->ch = NULL;
    ngxshm_link_del(&r->wait);

    ngxshm_req_unref(r);
}


void
ngxshm_req_unref(ngxshm_request_t *r)
{
    if (__atomic_sub_fetch(&r->refs, 1, __ATOMIC_ACQ_REL) == 0) {
        ngxshm_req_free(r);
    }
}


void
ngxshm_req_free(ngxshm_request_t *r)
{
    ngxshm_link_del(&r->runq);
    ngxshm_link_del(&r->all);
    ngxshm_link_del(&r->wait);

    free(r->head);
    free(r->hdrs);
    free(r->ibuf);
    free(r->obuf);
    free(r);
}


/* the application completed the request */
static void
ngxshm_req_app_release(ngxshm_request_t *r)
{
    r->app = 0;
    r->cb = NULL;
    r->want_write = 0;
    r->pending = 0;
    r->loop->napp--;
    ngxshm_link_del(&r->runq);

    if (r->obuf == NULL) {
        ngxshm_link_del(&r->wait);
    }

    if (r->in_slot) {
        if (!r->in_end && !r->discard) {
            /* drop the rest of the request body, keep granting credit */
            r->discard = 1;
            r->in_unrep += r->ilen;
            r->ilen = 0;
            free(r->ibuf);
            r->ibuf = NULL;
            r->icap = 0;
            ngxshm_req_credit(r);
        }

        ngxshm_req_check_done(r);
    }

    ngxshm_req_unref(r);
}


/* return consumed request body bytes to nginx when due */
static void
ngxshm_req_credit(ngxshm_request_t *r)
{
    uint32_t  v;

    if (!r->in_slot || r->in_end || r->in_unrep == 0) {
        return;
    }

    if ((uint64_t) r->in_unrep * 2 < r->ch->window && r->ilen != 0) {
        return;
    }

    v = r->in_unrep;

    if (ngxshm_send_simple(r, NGXSHM_CREDIT, 0, &v, sizeof(v)) == 0) {
        r->in_credit += v;
        r->in_unrep = 0;
    }
}


/* send the rest of an ngxshm_respond() body as credit and room allow */
void
ngxshm_req_pump(ngxshm_request_t *r)
{
    ssize_t  n;

    if (!r->in_slot || r->obuf == NULL) {
        return;
    }

    n = ngxshm_chan_send_body(r->ch, r, r->obuf + r->ooff,
                              r->olen - r->ooff);
    if (n < 0) {
        return;
    }

    r->ooff += n;

    if (r->ooff < r->olen) {
        return;
    }

    free(r->obuf);
    r->obuf = NULL;
    ngxshm_link_del(&r->wait);

    if (ngxshm_send_simple(r, NGXSHM_RESP_BODY, NGXSHM_F_END, NULL, 0) != 0) {
        return;
    }

    r->out_end = 1;
    ngxshm_req_check_done(r);
}


static int
ngxshm_send_simple(ngxshm_request_t *r, uint8_t type, uint8_t flags,
    const void *data, uint32_t len)
{
    ngxshm_frame_t  hdr;

    memset(&hdr, 0, sizeof(hdr));
    hdr.len = len;
    hdr.type = type;
    hdr.flags = flags;
    hdr.stream = r->slot;
    hdr.gen = r->gen;

    return ngxshm_chan_send(r->ch, &hdr, data);
}


/* 0 if the application may use r for the response */
static int
ngxshm_req_usable(const ngxshm_request_t *r)
{
    if (!r->app || r->cancelled || !r->in_slot
        || r->ch->state != NGXSHM_CH_OPEN)
    {
        return -ECANCELED;
    }

    return 0;
}


/* request API */

NGXSHM_API ngxshm_str_t
ngxshm_request_field(const ngxshm_request_t *r, unsigned kind)
{
    ngxshm_str_t  s;

    if (r != NULL && kind >= NGXSHM_FIELD_METHOD && kind <= NGXSHM_FIELD_MAX
        && r->pseudo[kind - NGXSHM_FIELD_METHOD].data != NULL)
    {
        return r->pseudo[kind - NGXSHM_FIELD_METHOD];
    }

    s.data = ngxshm_empty;
    s.len = 0;

    return s;
}


NGXSHM_API size_t
ngxshm_request_header_count(const ngxshm_request_t *r)
{
    return r != NULL ? r->nhdrs : 0;
}


static int
ngxshm_pair_at(const ngxshm_header_t *pairs, size_t n, size_t i,
    ngxshm_str_t *name, ngxshm_str_t *value)
{
    if (i >= n) {
        return -ERANGE;
    }

    if (name != NULL) {
        *name = pairs[i].name;
    }

    if (value != NULL) {
        *value = pairs[i].value;
    }

    return 0;
}


NGXSHM_API int
ngxshm_request_header_at(const ngxshm_request_t *r, size_t i,
    ngxshm_str_t *name, ngxshm_str_t *value)
{
    if (r == NULL) {
        return -ERANGE;
    }

    return ngxshm_pair_at(r->hdrs, r->nhdrs, i, name, value);
}


NGXSHM_API size_t
ngxshm_request_param_count(const ngxshm_request_t *r)
{
    return r != NULL ? r->nparams : 0;
}


NGXSHM_API int
ngxshm_request_param_at(const ngxshm_request_t *r, size_t i,
    ngxshm_str_t *name, ngxshm_str_t *value)
{
    if (r == NULL) {
        return -ERANGE;
    }

    return ngxshm_pair_at(r->params, r->nparams, i, name, value);
}


NGXSHM_API ngxshm_str_t
ngxshm_request_header(const ngxshm_request_t *r, const char *name)
{
    size_t        i, len;
    ngxshm_str_t  s;

    s.data = NULL;
    s.len = 0;

    if (r == NULL || name == NULL) {
        return s;
    }

    len = strlen(name);

    for (i = 0; i < r->nhdrs; i++) {
        if (r->hdrs[i].name.len == len
            && strncasecmp(r->hdrs[i].name.data, name, len) == 0)
        {
            return r->hdrs[i].value;
        }
    }

    return s;
}


NGXSHM_API ngxshm_str_t
ngxshm_request_param(const ngxshm_request_t *r, const char *name)
{
    size_t        i, len;
    ngxshm_str_t  s;

    s.data = NULL;
    s.len = 0;

    if (r == NULL || name == NULL) {
        return s;
    }

    len = strlen(name);

    for (i = 0; i < r->nparams; i++) {
        if (r->params[i].name.len == len
            && memcmp(r->params[i].name.data, name, len) == 0)
        {
            return r->params[i].value;
        }
    }

    return s;
}


/* the body bytes waiting to be read, and how many; 0 at the end */

static ssize_t
ngxshm_req_body(ngxshm_request_t *r, const unsigned char **data)
{
    if (!r->app || r->cancelled) {
        return -ECANCELED;
    }

    if (r->ilen != 0) {
        *data = r->ibuf + r->istart;
        return (ssize_t) r->ilen;
    }

    if (r->in_end) {
        return 0;
    }

    if (!r->in_slot || r->ch->state != NGXSHM_CH_OPEN) {
        return -ECANCELED;
    }

    return -EAGAIN;
}


/* n body bytes read: their credit goes back to nginx */

static void
ngxshm_req_body_done(ngxshm_request_t *r, size_t n)
{
    r->istart += (uint32_t) n;
    r->ilen -= (uint32_t) n;
    r->in_unrep += (uint32_t) n;

    if (r->in_slot) {
        ngxshm_req_credit(r);
    }
}


NGXSHM_API ssize_t
ngxshm_request_read(ngxshm_request_t *r, void *buf, size_t len)
{
    ssize_t               n;
    const unsigned char  *data;

    if (r == NULL || (buf == NULL && len != 0)) {
        return -EINVAL;
    }

    n = ngxshm_req_body(r, &data);

    if (n <= 0) {
        return n;
    }

    if ((size_t) n > len) {
        n = (ssize_t) len;
    }

    if (n == 0) {
        return 0;
    }

    memcpy(buf, data, (size_t) n);
    ngxshm_req_body_done(r, (size_t) n);

    return n;
}


NGXSHM_API ssize_t
ngxshm_request_peek(ngxshm_request_t *r, const void **data)
{
    ssize_t               n;
    const unsigned char  *p;

    if (r == NULL || data == NULL) {
        return -EINVAL;
    }

    p = NULL;
    n = ngxshm_req_body(r, &p);
    *data = p;

    return n;
}


NGXSHM_API int
ngxshm_request_consume(ngxshm_request_t *r, size_t n)
{
    if (r == NULL) {
        return -EINVAL;
    }

    if (!r->app || r->cancelled) {
        return -ECANCELED;
    }

    if (n > r->ilen) {
        return -EINVAL;
    }

    if (n != 0) {
        ngxshm_req_body_done(r, n);
    }

    return 0;
}


NGXSHM_API void
ngxshm_request_set_callback(ngxshm_request_t *r, ngxshm_event_pt cb,
    void *arg)
{
    if (r == NULL || !r->app) {
        return;
    }

    r->cb = cb;
    r->cb_arg = arg;
}


NGXSHM_API int
ngxshm_request_post(ngxshm_request_t *r, ngxshm_post_pt fn, void *arg)
{
    uint64_t        one;
    ngxshm_loop_t  *loop;
    ngxshm_post_t  *p;

    if (r == NULL || fn == NULL) {
        return -EINVAL;
    }

    p = malloc(sizeof(ngxshm_post_t));
    if (p == NULL) {
        return -ENOMEM;
    }

    p->next = NULL;
    p->r = r;
    p->fn = fn;
    p->arg = arg;

    /* the post keeps r's memory; fn runs even if r completes meanwhile */
    __atomic_add_fetch(&r->refs, 1, __ATOMIC_ACQ_REL);

    loop = r->loop;

    pthread_mutex_lock(&loop->mu);
    *loop->posts_last = p;
    loop->posts_last = &p->next;
    pthread_mutex_unlock(&loop->mu);

    one = 1;

    if (write(loop->wakefd, &one, sizeof(one)) < 0) {
        /* EAGAIN: the counter is full, the loop wakes anyway */
    }

    return 0;
}


NGXSHM_API void
ngxshm_request_abort(ngxshm_request_t *r)
{
    if (r == NULL || !r->app) {
        return;
    }

    if (r->in_slot && !r->out_end && !r->cancelled
        && r->ch->state == NGXSHM_CH_OPEN)
    {
        r->out_end = 1;
        (void) ngxshm_send_simple(r, NGXSHM_RESET, 0, NULL, 0);
    }

    ngxshm_req_app_release(r);
}


/* response API */

static int
ngxshm_token_char(unsigned char c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
        || (c >= '0' && c <= '9'))
    {
        return 1;
    }

    return c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}


static int
ngxshm_resp_check(unsigned status, const ngxshm_header_t *h, size_t n)
{
    size_t              i, j;
    static const char  *hop[] = {
        "connection", "keep-alive", "transfer-encoding", "te", "trailer",
        "upgrade", "proxy-connection"
    };

    if (status < 200 || status > 599 || n > UINT16_MAX
        || (n != 0 && h == NULL))
    {
        return -EINVAL;
    }

    for (i = 0; i < n; i++) {
        if (h[i].name.len == 0 || h[i].name.len > UINT16_MAX
            || h[i].name.data == NULL || h[i].value.len > UINT32_MAX
            || (h[i].value.len != 0 && h[i].value.data == NULL))
        {
            return -EINVAL;
        }

        for (j = 0; j < h[i].name.len; j++) {
            if (!ngxshm_token_char((unsigned char) h[i].name.data[j])) {
                return -EINVAL;
            }
        }

        for (j = 0; j < h[i].value.len; j++) {
            if (h[i].value.data[j] == '\r' || h[i].value.data[j] == '\n'
                || h[i].value.data[j] == '\0')
            {
                return -EINVAL;
            }
        }

        for (j = 0; j < sizeof(hop) / sizeof(hop[0]); j++) {
            if (h[i].name.len == strlen(hop[j])
                && strncasecmp(h[i].name.data, hop[j], h[i].name.len) == 0)
            {
                return -EINVAL;
            }
        }
    }

    return 0;
}


/* encode and send the response head block; 0, -EINVAL or -ENOMEM with
 * nothing sent, or -ECANCELED (the channel failed) */
static int
ngxshm_resp_head(ngxshm_request_t *r, unsigned status,
    const ngxshm_header_t *h, size_t n, int end)
{
    int              rc;
    size_t           i;
    uint32_t         off, part, max;
    uint64_t         size;
    unsigned char   *b;
    ngxshm_head_t    hd;
    ngxshm_field_t   fl;
    ngxshm_frame_t   hdr;

    size = sizeof(ngxshm_head_t) + (uint64_t) n * sizeof(ngxshm_field_t);

    for (i = 0; i < n; i++) {
        size += h[i].name.len + (uint64_t) h[i].value.len;
    }

    if (size > UINT32_MAX) {
        return -EINVAL;
    }

    b = malloc(size);
    if (b == NULL) {
        return -ENOMEM;
    }

    memset(&hd, 0, sizeof(hd));
    hd.size = (uint32_t) size;
    hd.nfields = (uint16_t) n;
    hd.status = (uint16_t) status;
    memcpy(b, &hd, sizeof(hd));

    off = (uint32_t) (sizeof(ngxshm_head_t) + n * sizeof(ngxshm_field_t));

    /* response blocks: the value follows the name, no NULs */
    for (i = 0; i < n; i++) {
        memset(&fl, 0, sizeof(fl));
        fl.off = off;
        fl.name_len = (uint16_t) h[i].name.len;
        fl.value_len = (uint32_t) h[i].value.len;
        fl.kind = NGXSHM_FIELD_HEADER;
        memcpy(b + sizeof(hd) + i * sizeof(fl), &fl, sizeof(fl));

        memcpy(b + off, h[i].name.data, h[i].name.len);
        off += (uint32_t) h[i].name.len;

        if (h[i].value.len != 0) {
            memcpy(b + off, h[i].value.data, h[i].value.len);
            off += (uint32_t) h[i].value.len;
        }
    }

    max = r->ch->max_frame;
    off = 0;
    rc = 0;

    while (off < size) {
        part = (uint32_t) size - off;

        if (part > max) {
            part = max;
        }

        memset(&hdr, 0, sizeof(hdr));
        hdr.len = part;
        hdr.type = NGXSHM_RESP_HEAD;
        hdr.stream = r->slot;
        hdr.gen = r->gen;

        if (off + part < size) {
            hdr.flags = NGXSHM_F_CONT;

        } else if (end) {
            hdr.flags = NGXSHM_F_END;
        }

        if (ngxshm_chan_send(r->ch, &hdr, b + off) != 0) {
            rc = -ECANCELED;
            break;
        }

        off += part;
    }

    free(b);

    return rc;
}


NGXSHM_API int
ngxshm_response_start(ngxshm_request_t *r, unsigned status,
    const ngxshm_header_t *headers, size_t n)
{
    int  rc;

    if (r == NULL) {
        return -EINVAL;
    }

    rc = ngxshm_req_usable(r);
    if (rc != 0) {
        return rc;
    }

    if (r->started) {
        return -EALREADY;
    }

    rc = ngxshm_resp_check(status, headers, n);
    if (rc != 0) {
        return rc;
    }

    rc = ngxshm_resp_head(r, status, headers, n, 0);
    if (rc == -EINVAL || rc == -ENOMEM) {
        return rc;
    }

    r->started = 1;
    r->no_body = r->is_head || status == 204 || status == 304;

    return rc;
}


NGXSHM_API ssize_t
ngxshm_response_write(ngxshm_request_t *r, const void *data, size_t len)
{
    int      rc;
    ssize_t  n;

    if (r == NULL || (data == NULL && len != 0)) {
        return -EINVAL;
    }

    rc = ngxshm_req_usable(r);
    if (rc != 0) {
        return rc;
    }

    if (!r->started) {
        return -EINVAL;
    }

    if (len > SSIZE_MAX) {
        len = SSIZE_MAX;
    }

    if (r->no_body) {
        return (ssize_t) len;
    }

    if (len == 0) {
        return 0;
    }

    if (r->out_credit == 0) {
        r->want_write = 1;
        return -EAGAIN;
    }

    n = ngxshm_chan_send_body(r->ch, r, data, len);
    if (n < 0) {
        return n;
    }

    if (r->out_credit == 0) {
        r->want_write = 1;
    }

    return n > 0 ? n : -EAGAIN;
}


NGXSHM_API int
ngxshm_response_end(ngxshm_request_t *r)
{
    int  rc;

    if (r == NULL) {
        return -EINVAL;
    }

    if (!r->app) {
        return -ECANCELED;
    }

    rc = ngxshm_req_usable(r);

    if (rc == 0 && !r->started) {
        /* no head to end: fail the stream as ngxshm_request_abort() */
        r->out_end = 1;
        (void) ngxshm_send_simple(r, NGXSHM_RESET, 0, NULL, 0);
        rc = -EINVAL;

    } else if (rc == 0) {
        r->out_end = 1;

        if (ngxshm_send_simple(r, NGXSHM_RESP_BODY, NGXSHM_F_END, NULL, 0)
            != 0)
        {
            rc = -ECANCELED;
        }
    }

    ngxshm_req_app_release(r);

    return rc;
}


NGXSHM_API int
ngxshm_respond(ngxshm_request_t *r, unsigned status,
    const ngxshm_header_t *headers, size_t n, const void *body, size_t len)
{
    int       rc, end;
    ssize_t   sent;

    if (r == NULL || (body == NULL && len != 0)) {
        return -EINVAL;
    }

    if (!r->app) {
        return -ECANCELED;
    }

    rc = ngxshm_req_usable(r);
    if (rc != 0) {
        ngxshm_req_app_release(r);
        return rc;
    }

    if (r->started) {
        return -EALREADY;
    }

    rc = ngxshm_resp_check(status, headers, n);
    if (rc != 0) {
        return rc;
    }

    r->no_body = r->is_head || status == 204 || status == 304;
    end = (len == 0 || r->no_body);

    rc = ngxshm_resp_head(r, status, headers, n, end);
    if (rc == -EINVAL) {
        return rc;
    }

    if (rc == -ENOMEM) {
        ngxshm_request_abort(r);
        return rc;
    }

    r->started = 1;

    if (rc != 0) {
        ngxshm_req_app_release(r);
        return rc;
    }

    if (end) {
        r->out_end = 1;
        ngxshm_req_app_release(r);
        return 0;
    }

    sent = ngxshm_chan_send_body(r->ch, r, body, len);
    if (sent < 0) {
        ngxshm_req_app_release(r);
        return (int) sent;
    }

    if ((size_t) sent < len) {
        r->olen = len - sent;
        r->ooff = 0;
        r->obuf = malloc(r->olen);

        if (r->obuf == NULL) {
            r->out_end = 1;
            (void) ngxshm_send_simple(r, NGXSHM_RESET, 0, NULL, 0);
            ngxshm_req_app_release(r);
            return -ENOMEM;
        }

        memcpy(r->obuf, (const unsigned char *) body + sent, r->olen);
        ngxshm_req_app_release(r);
        return 0;
    }

    r->out_end = 1;
    rc = ngxshm_send_simple(r, NGXSHM_RESP_BODY, NGXSHM_F_END, NULL, 0);
    ngxshm_req_app_release(r);

    return rc == 0 ? 0 : -ECANCELED;
}
