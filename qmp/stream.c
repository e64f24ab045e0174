#include "config.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/util.h"
#include "qmp/client.h"
#include "qmp/stream.h"

int qmp_stream_init(struct qmp_stream *s) {
        *s = (struct qmp_stream) { 0 };
        s->buf = malloc(QMP_STREAM_CHUNK);
        s->tok = json_tokener_new();
        if (!s->buf || !s->tok) {
                qmp_stream_clear(s);
                return -ENOMEM;
        }
        json_tokener_set_flags(s->tok,
                               JSON_TOKENER_STRICT | JSON_TOKENER_ALLOW_TRAILING_CHARS | JSON_TOKENER_VALIDATE_UTF8);
        return 0;
}

void qmp_stream_clear(struct qmp_stream *s) {
        if (s->tok)
                json_tokener_free(s->tok);
        free(s->buf);
        *s = (struct qmp_stream) { 0 };
}

char *qmp_stream_room(struct qmp_stream *s, size_t *ret_len) {
        if (s->start == s->end)
                s->start = s->end = 0;
        *ret_len = QMP_STREAM_CHUNK - s->end;
        return s->buf + s->end;
}

void qmp_stream_filled(struct qmp_stream *s, size_t n) {
        s->end += n;
}

static void close_received_fds(struct msghdr *mh) {
        for (struct cmsghdr *cm = CMSG_FIRSTHDR(mh); cm; cm = CMSG_NXTHDR(mh, cm)) {
                if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
                        continue;
                for (size_t i = 0; i < (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int); i++) {
                        int fd;

                        memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
                        close(fd);
                }
        }
}

ssize_t qmp_stream_recv(struct qmp_stream *s, int fd) {
        union {
                struct cmsghdr align;
                char buf[CMSG_SPACE(sizeof(int) * 8)];
        } control;
        struct iovec iov;
        struct msghdr mh = { 0 };
        ssize_t got;

        iov.iov_base = qmp_stream_room(s, &iov.iov_len);
        mh.msg_iov = &iov;
        mh.msg_iovlen = 1;
        mh.msg_control = control.buf;
        mh.msg_controllen = sizeof(control.buf);
        got = recvmsg(fd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
        if (got < 0)
                return errno == ECONNRESET ? 0 : -errno;
        close_received_fds(&mh);
        qmp_stream_filled(s, (size_t) got);
        return got;
}

ssize_t qmp_stream_send(int fd, const void *buf, size_t len, int pass_fd) {
        union {
                struct cmsghdr align;
                char buf[CMSG_SPACE(sizeof(int))];
        } control;
        struct iovec iov = { (void *) buf, len };
        struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
        ssize_t sent;

        if (pass_fd >= 0) {
                struct cmsghdr *cm;

                memset(&control, 0, sizeof(control));
                mh.msg_control = control.buf;
                mh.msg_controllen = sizeof(control.buf);
                cm = CMSG_FIRSTHDR(&mh);
                cm->cmsg_level = SOL_SOCKET;
                cm->cmsg_type = SCM_RIGHTS;
                cm->cmsg_len = CMSG_LEN(sizeof(int));
                memcpy(CMSG_DATA(cm), &pass_fd, sizeof(int));
        }
        sent = sendmsg(fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
        return sent < 0 ? -errno : sent;
}

static bool is_ws(char ch) {
        return ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n';
}

int qmp_stream_next(struct qmp_stream *s, json_object **ret_msg, vmsup_error **err) {
        while (s->start < s->end) {
                const char *p = s->buf + s->start;
                size_t n = s->end - s->start, end;
                enum json_tokener_error jerr;
                json_object *msg;

                if (!s->in_message) {
                        while (n > 0 && is_ws(*p)) {
                                p++;
                                n--;
                                s->start++;
                        }
                        if (n == 0)
                                break;
                        s->in_message = true;
                        s->message_len = 0;
                }
                /* json-c takes a NUL for the end of the input; no JSON text holds one */
                if (memchr(p, '\0', n))
                        return vmsup_fail(err, VMSUP_ERR_DATA, 0, "malformed QMP message: it contains a NUL byte");
                msg = json_tokener_parse_ex(s->tok, p, (int) n);
                jerr = json_tokener_get_error(s->tok);
                if (jerr == json_tokener_continue) {
                        s->message_len += n;
                        s->start = s->end;
                        if (s->message_len > QMP_MAX_MESSAGE_SIZE)
                                return vmsup_fail(err, VMSUP_ERR_DATA, 0,
                                                  "QMP message longer than %d bytes (endless or oversized)",
                                                  QMP_MAX_MESSAGE_SIZE);
                        break;
                }
                if (jerr != json_tokener_success) {
                        size_t at = s->message_len + json_tokener_get_parse_end(s->tok);

                        json_object_put(msg);
                        return vmsup_fail(err, VMSUP_ERR_DATA, 0, "malformed JSON in QMP message at byte %zu: %s",
                                          at, json_tokener_error_desc(jerr));
                }
                end = json_tokener_get_parse_end(s->tok);
                s->message_len += end;
                s->start += end;
                s->in_message = false;
                json_tokener_reset(s->tok);
                if (s->message_len > QMP_MAX_MESSAGE_SIZE) {
                        json_object_put(msg);
                        return vmsup_fail(err, VMSUP_ERR_DATA, 0, "QMP message longer than %d bytes (oversized)",
                                          QMP_MAX_MESSAGE_SIZE);
                }
                *ret_msg = msg;
                return 1;
        }
        return 0;
}

bool qmp_stream_in_message(const struct qmp_stream *s) {
        return s->in_message;
}
