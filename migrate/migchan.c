/* The migration channel's frames on an open channel (migrate/migchan.h): send, receive,
 * close. How a channel is set up (listen, accept, connect, the TLS handshake) is
 * migchan_connect.c; what both use is migchan_internal.h. */
#include "config.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/secmem.h"
#include "common/util.h"
#include "crypto/tls.h"
#include "migrate/frame.h"
#include "migrate/migchan.h"
#include "migrate/migchan_internal.h"

/* ---- errors ---- */

/* "<peer>: <message>"; the channel cannot be used after it. */
__attribute__((format(printf, 5, 6))) static int chan_fail(struct migchan *c, vmsup_error **err, enum vmsup_err_kind kind,
                                                           int errnum, const char *fmt, ...) {
        _cleanup_free_ char *msg = NULL;
        va_list ap;

        c->broken = true;
        va_start(ap, fmt);
        if (vasprintf(&msg, fmt, ap) < 0)
                msg = NULL;
        va_end(ap);
        return vmsup_fail(err, kind, errnum, "%s: %s", c->peer, msg ? msg : "out of memory");
}

/* ---- the channel ---- */

static void frame_reset(struct migchan *c) {
        if (c->buf) {
                if (c->buf_secmem)
                        secmem_free(c->buf);
                else {
                        erase(c->buf, c->len + 1);
                        free(c->buf);
                }
        }
        c->buf = NULL;
        c->buf_secmem = false;
        c->len = c->got = c->hdr_got = 0;
        erase(c->hdr, sizeof(c->hdr));
}

struct migchan *migchan_free(struct migchan *c) {
        if (!c)
                return NULL;
        if (c->tls) {
                if (c->handshake_done && !c->broken)
                        tls_session_bye(c->tls);
                tls_session_free(c->tls);
        }
        if (c->fd >= 0)
                close(c->fd);
        migchan_tcp_free(c->tcp);
        frame_reset(c);
        free(c);
        return NULL;
}

int migchan_fd(const struct migchan *c) {
        return c->tcp ? migchan_tcp_fd(c->tcp) : c->fd;
}

const char *migchan_peer(const struct migchan *c) {
        return c->peer;
}

const char *migchan_local_addr(const struct migchan *c) {
        return c->local_addr;
}

/* > 0 try again (ready, or EINTR: the deadline still holds), 0 the time is up, -errno
 * (-ECANCELED: the channel's cancel fd is readable). */
static int wait_io(struct migchan *c, long deadline) {
        int left = chan_left_ms(deadline), n;

        if (left == 0)
                return 0;
        n = chan_poll_cancel(c->fd, tls_session_events(c->tls), c->cancel_fd, left);
        return n == -EINTR ? 1 : n;
}

int migchan_send(struct migchan *c, enum mig_msg type, const void *payload, size_t len, int timeout_ms,
                 vmsup_error **err) {
        long deadline = chan_deadline_of(timeout_ms);
        char reason[MIG_WHY_MAX];
        uint8_t *frame;
        size_t total, off = 0;
        int r;

        if (c->broken)
                return vmsup_fail(err, VMSUP_ERR_INTERNAL, 0, "%s: send %s: the migration channel failed earlier",
                                  c->peer, mig_msg_name(type));
        if (!payload && len > 0)
                return vmsup_fail(err, VMSUP_ERR_INTERNAL, 0, "%s: send %s: no payload", c->peer, mig_msg_name(type));
        r = mig_frame_check(type, payload ? payload : (const void *) "", len, NULL, reason);
        if (r == -ENOMEM)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "%s: send %s", c->peer, mig_msg_name(type));
        if (r < 0)
                return vmsup_fail(err, VMSUP_ERR_INTERNAL, 0, "%s: send %s: a frame the peer would refuse: %s", c->peer,
                                  mig_msg_name(type), reason);

        total = MIGCHAN_HEADER_LEN + len;
        frame = type == MIG_SECRET ? secmem_alloc(total) : malloc(total);
        if (!frame)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "%s: send %s", c->peer, mig_msg_name(type));
        frame[0] = MIGCHAN_PROTOCOL;
        frame[1] = (uint8_t) type;
        frame[2] = frame[3] = 0;
        frame[4] = (uint8_t) (len >> 24);
        frame[5] = (uint8_t) (len >> 16);
        frame[6] = (uint8_t) (len >> 8);
        frame[7] = (uint8_t) len;
        if (len)
                memcpy(frame + MIGCHAN_HEADER_LEN, payload, len);

        r = 0;
        while (off < total) {
                /* after tls_again() the session wants the very same arguments again */
                ssize_t n = tls_session_send(c->tls, frame + off, total - off);

                if (n >= 0) {
                        off += (size_t) n;
                        continue;
                }
                if (tls_again(n)) {
                        int w = wait_io(c, deadline);

                        if (w == 0) {
                                r = chan_fail(c, err, VMSUP_ERR_BUSY, 0,
                                              "send %s: the migration peer took nothing within %g s",
                                              mig_msg_name(type), chan_seconds(timeout_ms));
                                break;
                        }
                        if (w < 0) {
                                r = chan_fail(c, err, w == -ECANCELED ? VMSUP_ERR_BUSY : VMSUP_ERR_SYSTEM, -w, "send %s",
                                              mig_msg_name(type));
                                break;
                        }
                        continue;
                }
                if (tls_session_send_closed(c->tls, n))
                        r = chan_fail(c, err, VMSUP_ERR_UNAVAILABLE, 0,
                                      "send %s: the migration peer closed the connection", mig_msg_name(type));
                else {
                        char text[256];

                        tls_session_error_text(c->tls, (int) n, text, sizeof(text));
                        r = chan_fail(c, err, VMSUP_ERR_UNAVAILABLE, tls_session_errno(c->tls, (int) n),
                                      "send %s: TLS error: %s",
                                      mig_msg_name(type), text);
                }
                break;
        }
        if (type == MIG_SECRET)
                secmem_free(frame);
        else {
                erase(frame, total);
                free(frame);
        }
        return r;
}

int migchan_send_json(struct migchan *c, enum mig_msg type, json_object *o, int timeout_ms, vmsup_error **err) {
        const char *s = o ? json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN) : "{}";

        if (!s)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "%s: send %s", c->peer, mig_msg_name(type));
        if (type == MIG_SECRET)
                return vmsup_fail(err, VMSUP_ERR_INTERNAL, 0, "%s: send SECRET: its payload is not JSON", c->peer);
        return migchan_send(c, type, s, strlen(s), timeout_ms, err);
}

/* Some bytes of the frame in progress: > 0 read, 0 nothing available yet, < 0 error. */
static int read_some(struct migchan *c, uint8_t *dst, size_t want, vmsup_error **err) {
        char where[64] = "", text[256];
        ssize_t n;

        n = tls_session_recv(c->tls, dst, want);
        if (n > 0)
                return (int) n;
        if (tls_again(n))
                return 0;

        if (c->hdr_got == MIGCHAN_HEADER_LEN)
                snprintf(where, sizeof(where), " in the middle of a %s message", mig_msg_name(c->hdr[1]));
        else if (c->hdr_got > 0)
                snprintf(where, sizeof(where), " in the middle of a frame header");
        if (n == 0)
                return chan_fail(c, err, VMSUP_ERR_UNAVAILABLE, 0, "the migration peer closed the connection%s", where);
        if (tls_session_recv_closed(c->tls, n))
                return chan_fail(c, err, VMSUP_ERR_UNAVAILABLE, 0,
                                 "the migration peer closed the connection%s (without TLS close_notify)", where);
        tls_session_error_text(c->tls, (int) n, text, sizeof(text));
        return chan_fail(c, err, VMSUP_ERR_UNAVAILABLE, tls_session_errno(c->tls, (int) n), "TLS error: %s", text);
}

/* The header is complete: check it before a byte of the payload is read. */
static int start_payload(struct migchan *c, vmsup_error **err) {
        const uint8_t *h = c->hdr;
        unsigned flags = (unsigned) h[2] << 8 | h[3];
        size_t len = (size_t) h[4] << 24 | (size_t) h[5] << 16 | (size_t) h[6] << 8 | h[7];
        char reason[MIG_WHY_MAX];

        if (h[0] != MIGCHAN_PROTOCOL)
                return chan_fail(c, err, VMSUP_ERR_DATA, 0,
                                 "invalid migration message: wrong protocol version %u (this host speaks %d: "
                                 "run the same vmsup release on both hosts)", h[0], MIGCHAN_PROTOCOL);
        if (!mig_msg_known(h[1]))
                return chan_fail(c, err, VMSUP_ERR_DATA, 0, "invalid migration message: unknown message type %u",
                                 h[1]);
        if (flags != 0)
                return chan_fail(c, err, VMSUP_ERR_DATA, 0,
                                 "invalid migration message: %s with flags 0x%04x (must be 0)", mig_msg_name(h[1]),
                                 flags);
        if (mig_frame_check_length(h[1], len, reason) < 0)
                return chan_fail(c, err, VMSUP_ERR_DATA, 0, "invalid migration message: %s", reason);

        /* A passphrase lands only in locked, undumpable memory. */
        c->buf_secmem = h[1] == MIG_SECRET;
        c->buf = c->buf_secmem ? secmem_alloc(len + 1) : calloc(1, len + 1);
        if (!c->buf)
                return chan_fail(c, err, VMSUP_ERR_SYSTEM, ENOMEM, "receive a %s message", mig_msg_name(h[1]));
        c->len = len;
        c->got = 0;
        return 0;
}

static int finish_frame(struct migchan *c, struct mig_frame *ret, vmsup_error **err) {
        enum mig_msg type = c->hdr[1];
        json_object *o = NULL;
        char reason[MIG_WHY_MAX];
        int r;

        c->buf[c->len] = 0;
        r = mig_frame_check(type, c->buf, c->len, &o, reason);
        if (r == -ENOMEM)
                return chan_fail(c, err, VMSUP_ERR_SYSTEM, ENOMEM, "receive a %s message", mig_msg_name(type));
        if (r < 0)
                return chan_fail(c, err, VMSUP_ERR_DATA, 0, "invalid migration message: %s", reason);
        if (type == MIG_ABORT && mig_frame_sanitize_abort(o) < 0) {
                json_object_put(o);
                return chan_fail(c, err, VMSUP_ERR_SYSTEM, ENOMEM, "receive a %s message", mig_msg_name(type));
        }
        *ret = (struct mig_frame) { .type = type, .json = o, .len = c->len };
        if (type == MIG_SECRET) {
                ret->secret = TAKE_PTR(c->buf);
                c->buf_secmem = false;
        }
        frame_reset(c);
        return 1;
}

int migchan_recv(struct migchan *c, struct mig_frame *ret, vmsup_error **err) {
        int n, r;

        if (c->broken)
                return vmsup_fail(err, VMSUP_ERR_INTERNAL, 0, "%s: receive: the migration channel failed earlier",
                                  c->peer);
        for (;;) {
                if (c->hdr_got < MIGCHAN_HEADER_LEN) {
                        n = read_some(c, c->hdr + c->hdr_got, MIGCHAN_HEADER_LEN - c->hdr_got, err);
                        if (n <= 0)
                                return n;
                        c->hdr_got += (size_t) n;
                        if (c->hdr_got < MIGCHAN_HEADER_LEN)
                                continue;
                        r = start_payload(c, err);
                        if (r < 0)
                                return r;
                }
                if (c->got < c->len) {
                        n = read_some(c, c->buf + c->got, c->len - c->got, err);
                        if (n <= 0)
                                return n;
                        c->got += (size_t) n;
                        if (c->got < c->len)
                                continue;
                }
                return finish_frame(c, ret, err);
        }
}

int migchan_recv_wait(struct migchan *c, enum mig_msg expect, int timeout_ms, struct mig_frame *ret,
                      vmsup_error **err) {
        long deadline = chan_deadline_of(timeout_ms);
        struct mig_frame f = { 0 };
        int r;

        for (;;) {
                r = migchan_recv(c, &f, err);
                if (r < 0)
                        return r;
                if (r > 0)
                        break;
                r = wait_io(c, deadline);
                if (r == 0)
                        return vmsup_fail(err, VMSUP_ERR_BUSY, 0,
                                          "%s: no answer from the migration peer within %g s (waiting for %s)", c->peer,
                                          chan_seconds(timeout_ms), expect ? mig_msg_name(expect) : "a message");
                if (r < 0)
                        return chan_fail(c, err, r == -ECANCELED ? VMSUP_ERR_BUSY : VMSUP_ERR_SYSTEM, -r, "receive");
        }
        if (expect && f.type != expect && f.type != MIG_ABORT) {
                r = chan_fail(c, err, VMSUP_ERR_DATA, 0, "unexpected %s message (expected %s)", mig_msg_name(f.type),
                              mig_msg_name(expect));
                mig_frame_clear(&f);
                return r;
        }
        *ret = f;
        return 0;
}

void mig_frame_clear(struct mig_frame *f) {
        if (!f)
                return;
        secmem_free(f->secret);
        json_object_put(f->json);
        *f = (struct mig_frame) { 0 };
}
