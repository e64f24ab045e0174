/* The bytes on a QMP socket: what QEMU sends, cut into JSON messages, and what we send
 * (with an fd along). Framing: the bytes go through one json_tokener fed incrementally,
 * not through a newline splitter. QEMU ends every message with "\r\n", but with
 * `-mon pretty=on` a message spans many lines; the tokener takes both, and messages split
 * across reads or merged into one read, without a second buffer. The size bound is ours:
 * we count the bytes fed since a message began and give up past QMP_MAX_MESSAGE_SIZE, so
 * an endless message costs at most that much (plus one read). Strict mode, UTF-8
 * checked, depth bounded by json-c's default (32). */
#ifndef VMSUP_QMP_STREAM_H
#define VMSUP_QMP_STREAM_H

#include <json-c/json.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "common/error.h"

#define QMP_STREAM_CHUNK 65536 /* the read buffer */

/* State lives here, not in a caller's locals, so that a callback that runs a nested loop
 * (a blocking execute from an event handler) continues from the right byte. */
struct qmp_stream {
        json_tokener *tok;
        bool in_message;    /* a message has begun and not ended */
        size_t message_len; /* its bytes fed so far */
        char *buf;          /* QMP_STREAM_CHUNK bytes; start..end read but not parsed yet */
        size_t start, end;
};

int qmp_stream_init(struct qmp_stream *s); /* 0 or -ENOMEM */
void qmp_stream_clear(struct qmp_stream *s);

/* Room for new bytes once every byte read was parsed: *ret_len bytes at the pointer
 * returned; qmp_stream_filled() then counts the n bytes put there. */
char *qmp_stream_room(struct qmp_stream *s, size_t *ret_len);
void qmp_stream_filled(struct qmp_stream *s, size_t n);

/* recvmsg() from the socket fd into the room, without waiting; fds that came along are
 * closed (QEMU sends us none; a stray one must not leak). > 0 bytes read, 0 for a
 * hang-up (a reset too: one with our bytes unread on its side), -errno. */
ssize_t qmp_stream_recv(struct qmp_stream *s, int fd);

/* sendmsg() of len bytes to the socket fd, without waiting and without SIGPIPE, with
 * pass_fd (-1: none) as SCM_RIGHTS: bytes sent (pass_fd went with the first of them), or
 * -errno. */
ssize_t qmp_stream_send(int fd, const void *buf, size_t len, int pass_fd);

/* The next whole message of what was read: 1 with *ret_msg (a new reference; any JSON
 * type), 0 when every byte read is used (a message may be in progress: more is needed),
 * negative on bytes that cannot be a QMP stream (exit 65: a NUL byte, malformed JSON, an
 * oversized message); the stream is then unusable. */
int qmp_stream_next(struct qmp_stream *s, json_object **ret_msg, vmsup_error **err);

bool qmp_stream_in_message(const struct qmp_stream *s); /* bytes of a message were read, not its end */

#endif
