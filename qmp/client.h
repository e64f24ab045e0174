/* QMP client: greeting, capabilities, commands matched to replies by id, events in order,
 * timeouts, fd passing. Non-blocking, driven by the caller's epoll loop; a few blocking
 * conveniences run their own poll loop on the same state. */
#ifndef VMSUP_QMP_CLIENT_H
#define VMSUP_QMP_CLIENT_H

#include <json-c/json.h>
#include <stddef.h>
#include <stdint.h>

#include "common/error.h"

/* A single message (greeting, reply or event) larger than this is a protocol error. */
#define QMP_MAX_MESSAGE_SIZE (1024 * 1024)

struct qmp_client;

/* data and timestamp are borrowed (NULL when the event has none). */
typedef void (*qmp_event_fn)(void *userdata, const char *event, json_object *data, json_object *timestamp);
/* ret and err are borrowed, valid during the call; exactly one of them is set. */
typedef void (*qmp_reply_fn)(void *userdata, json_object *ret, const vmsup_error *err);

/* Callbacks run only from qmp_client_dispatch(), qmp_client_expire() and the blocking
 * functions, never from qmp_client_execute_async(). They may queue commands; they must
 * not free the client. */

/* Take ownership of fd, a connected stream socket (made O_NONBLOCK). The greeting is read
 * and qmp_capabilities negotiated by dispatch; commands queued before that wait for it. */
int qmp_client_new_fd(int fd, struct qmp_client **ret, vmsup_error **err);
int qmp_client_connect(const char *socket_path, struct qmp_client **ret, vmsup_error **err);
void qmp_client_set_event_handler(struct qmp_client *c, qmp_event_fn fn, void *userdata);

int qmp_client_fd(const struct qmp_client *c); /* for epoll (level-triggered) */
/* EPOLLIN, | EPOLLOUT while output can be written, 0 once the connection is broken;
 * re-read after every call that may queue or send (dispatch, execute_async, expire). */
uint32_t qmp_client_epoll_events(const struct qmp_client *c);
/* Call when the fd is ready: writes queued commands, reads, runs callbacks, expires late
 * commands. <0 on EOF or a protocol error; every pending command then fails too, and
 * the client stays broken. */
int qmp_client_dispatch(struct qmp_client *c, vmsup_error **err);

/* Queue command with args (NULL or borrowed) and pass_fd (-1, or an fd sent with
 * SCM_RIGHTS along with the command: duplicated, the caller keeps its own). fn is called
 * exactly once: with the reply, QEMU's error (exit code 1), a timeout after timeout_ms
 * (> 0; exit code 69; a late reply is then dropped), or the connection's failure; or not
 * at all if the client is freed first. */
int qmp_client_execute_async(struct qmp_client *c, const char *command, json_object *args, int pass_fd,
                             int timeout_ms, qmp_reply_fn fn, void *userdata, vmsup_error **err);
int qmp_client_next_timeout_ms(const struct qmp_client *c); /* -1 when nothing is pending */
void qmp_client_expire(struct qmp_client *c); /* fail every command past its deadline */

/* Blocking: wait for the greeting and negotiate capabilities (returns at once when done). */
int qmp_client_handshake(struct qmp_client *c, int timeout_ms, vmsup_error **err);
/* Blocking: run one command (after the handshake, which it waits for); *ret_return gets a
 * new reference to the reply's "return" (ret_return may be NULL). */
int qmp_client_execute(struct qmp_client *c, const char *command, json_object *args, int pass_fd, int timeout_ms,
                       json_object **ret_return, vmsup_error **err);

/* "7.2.22" from the greeting; NULL before it arrived. */
const char *qmp_client_qemu_version(const struct qmp_client *c);
struct qmp_client *qmp_client_free(struct qmp_client *c);

/* For tests and fuzzing: handle bytes as if they had been read from the socket. */
int qmp_client_feed(struct qmp_client *c, const void *data, size_t len, vmsup_error **err);

static inline void qmp_client_freep(struct qmp_client **c) {
        qmp_client_free(*c);
}
#define _cleanup_qmp_client_ __attribute__((cleanup(qmp_client_freep)))

#endif
