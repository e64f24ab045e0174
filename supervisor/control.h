/* The supervisor's root-only control socket: one JSON request line, one JSON reply line.
 * Request: {"cmd": "status" | "stop" | "reboot" | "qmp", ...}
 * Reply:   {"ok": true, "return": ...} or {"ok": false, "error": "...", "kind": "<name>"}
 *          (the error's kind by name, vmsup_err_kind_to_string(); the CLI picks the exit status)
 * A long request (migrate) sends lines {"progress": {...}} before its reply. */
#ifndef VMSUP_SUPERVISOR_CONTROL_H
#define VMSUP_SUPERVISOR_CONTROL_H

#include <json-c/json.h>
#include <stdbool.h>
#include <stddef.h>

#include "common/error.h"
#include "common/evloop.h"

#define CONTROL_MAX_MESSAGE (256 * 1024)
/* Control connections open at once (reading a request, or waiting for their answer); a
 * client beyond that is answered with a refusal (kind busy) and closed. */
#define CONTROL_MAX_CLIENTS 64
/* A client must have sent its whole request line within this time (ms) of connecting. */
#define CONTROL_REQUEST_TIMEOUT_MS 5000

/* Bind and listen at path (mode 0600). The caller holds the guest lock, so a socket file
 * already there is a leftover of a dead supervisor and is replaced. */
int control_listen(const char *path, vmsup_error **err);

/* A connection from a client, read without blocking. */
struct control_conn {
        int fd;
        char *buf;
        size_t len;
        json_object *request; /* set once a whole line arrived */
        long deadline;        /* monotonic ms by which the request must be complete (the caller's) */
        struct control_conn *next;
        /* the caller's sources while it reads the request: the fd and the deadline;
         * control_conn_free() removes them before it closes the fd */
        struct evloop_source *io_src, *timer_src;
};

/* Accept one client (non-blocking); only root or our own uid may talk to us. Returns NULL
 * with *err empty when the peer was refused or nothing was pending. */
struct control_conn *control_accept(int listen_fd, vmsup_error **err);

/* How many accepted connections are open (not yet control_conn_free()d). */
size_t control_conn_count(void);

/* Accept one waiting client only to send it {"ok": false, "error": msg, "kind": name}
 * and close: for a supervisor that cannot serve it. 1 when one was refused, 0 when none
 * was waiting, -errno when accept failed (EMFILE: the caller has no fd to spare). */
int control_accept_refuse(int listen_fd, enum vmsup_err_kind kind, const char *msg);

/* Read what is there. Returns 1 when conn->request is complete, 0 for more, <0 on error. */
int control_conn_read(struct control_conn *c, vmsup_error **err);

/* Send a reply (takes ownership of ret, may be NULL) and close the connection. */
void control_conn_reply_ok(struct control_conn *c, json_object *ret);
void control_conn_reply_error(struct control_conn *c, enum vmsup_err_kind kind, const char *msg);
struct control_conn *control_conn_free(struct control_conn *c);

/* Send {"ok": true, "return": ret} (takes ret) and hand the connection on as a byte
 * stream (`vmsup console`): returns its fd, non-blocking, which the caller now owns, or
 * -1 when the reply could not be sent. c is left without an fd: free it. */
int control_conn_reply_stream(struct control_conn *c, json_object *ret);

/* An interim line {"progress": ...} (takes ownership); the connection stays open. */
void control_conn_progress(struct control_conn *c, json_object *progress);

/* Client side: connect to path, send req, wait up to timeout_ms (-1: forever) for the reply;
 * the connect itself is bounded by timeout_ms too (a supervisor that accepts nobody).
 * A reply with "ok": false becomes an error with the supervisor's message and kind; no
 * supervisor listening is VMSUP_ERR_NO_SUPERVISOR, no answer in time VMSUP_ERR_TIMEOUT. */
int control_request(const char *path, json_object *req, int timeout_ms, json_object **ret_return, vmsup_error **err);

/* The same, passing each {"progress": ...} line that comes before the reply to fn. */
typedef void (*control_progress_fn)(void *userdata, json_object *progress);
int control_request_progress(const char *path, json_object *req, int timeout_ms, control_progress_fn fn, void *userdata,
                             json_object **ret_return, vmsup_error **err);

/* Client side of a stream request: as control_request() (the same errors), but a
 * successful reply leaves the connection open for the bytes that follow it; returns its
 * fd (blocking), which the caller owns. */
int control_stream_open(const char *path, json_object *req, int timeout_ms, json_object **ret_return,
                        vmsup_error **err);

/* Send req to n supervisors at once and wait up to timeout_ms in all for their answers
 * (for `vmsup list`: one stuck supervisor does not hold the others). rets[i] gets the
 * i-th "return" (a new reference, may be NULL) or errs[i] why there is none. 0, or
 * -ENOMEM before anything was sent. */
int control_request_each(const char *const *paths, size_t n, json_object *req, int timeout_ms, json_object **rets,
                         vmsup_error **errs);

/* The same, parallel requests at a time (for `vmsup stop --all`): each is given
 * timeout_ms from its own start, and the next starts as soon as one ends. fn (may be
 * NULL) hears each end, in the order they come: i, and rets[i] or errs[i] (which it may
 * add context to, vmsup_error_prefix()). */
typedef void (*control_each_fn)(void *userdata, size_t i, json_object *ret, vmsup_error *err);
int control_request_window(const char *const *paths, size_t n, json_object *req, size_t parallel, int timeout_ms,
                           control_each_fn fn, void *userdata, json_object **rets, vmsup_error **errs);

#endif
