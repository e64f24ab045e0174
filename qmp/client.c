#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "common/util.h"
#include "qmp/client.h"
#include "qmp/stream.h"

/* Framing: qmp/stream.h. */

#define MAX_READS_PER_DISPATCH 64  /* level-triggered: let the loop breathe under a flood */
#define HANDSHAKE_DEFAULT_TIMEOUT_MS 30000
#define CAPABILITIES_ID 0          /* user commands count from 1 */
#define EXCERPT 200

enum qmp_state { QMP_GREETING, QMP_NEGOTIATING, QMP_READY, QMP_BROKEN };

struct out_msg {
        struct out_msg *next;
        int64_t id;
        char *buf;
        size_t len, off;
        int fd;         /* -1, or sent along with the first byte */
        bool handshake; /* may go out before capabilities are negotiated */
};

struct pending {
        struct pending *next;
        int64_t id;
        char *command;
        int timeout_ms;
        int64_t deadline; /* CLOCK_MONOTONIC, ms */
        qmp_reply_fn fn;
        void *userdata;
};

struct qmp_client {
        int fd;
        enum qmp_state state;
        char *version;
        struct qmp_stream in;
        struct out_msg *out_head, *out_tail;
        struct pending *pending_head, *pending_tail;
        int64_t next_id; /* ids only grow: every id below this one was issued by us */
        qmp_event_fn event_fn;
        void *event_userdata;
        vmsup_error *broken; /* why the connection is unusable */
};

/* The start of a message for error texts, so a 1 MiB message does not become the error. */
static char *excerpt(json_object *o) {
        const char *s = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
        size_t n = strlen(s);
        char *r;

        if (n <= EXCERPT)
                return strdup(s);
        if (asprintf(&r, "%.*s...", EXCERPT, s) < 0)
                return NULL;
        return r;
}

static void error_copy(vmsup_error **dst, const vmsup_error *src) {
        if (!dst || *dst)
                return;
        vmsup_fail(dst, src->kind, 0, "%s", src->msg);
        if (*dst)
                (*dst)->errnum = src->errnum;
}

static int error_ret(const vmsup_error *e) {
        return e && e->errnum > 0 ? -e->errnum : -EINVAL;
}

static void out_msg_free(struct out_msg *m) {
        if (!m)
                return;
        if (m->fd >= 0)
                close(m->fd);
        free(m->buf);
        free(m);
}

static void pending_free(struct pending *p) {
        if (p) {
                free(p->command);
                free(p);
        }
}

/* The connection cannot go on: keep why, fail every pending command with it. */
static int set_broken(struct qmp_client *c, enum vmsup_err_kind kind, int errnum, const char *fmt, ...)
        __attribute__((format(printf, 4, 5)));
static int set_broken(struct qmp_client *c, enum vmsup_err_kind kind, int errnum, const char *fmt, ...) {
        struct pending *list;
        va_list ap;

        if (c->broken)
                return error_ret(c->broken);
        va_start(ap, fmt);
        vmsup_vfail(&c->broken, kind, errnum, fmt, ap);
        va_end(ap);
        c->state = QMP_BROKEN;

        while (c->out_head) {
                struct out_msg *m = c->out_head;

                c->out_head = m->next;
                out_msg_free(m);
        }
        c->out_tail = NULL;

        list = c->pending_head;
        c->pending_head = c->pending_tail = NULL;
        while (list) {
                struct pending *p = list;
                vmsup_error *e = NULL;

                list = p->next;
                vmsup_fail(&e, c->broken->kind, 0, "QMP command '%s' got no reply: %s", p->command,
                           c->broken->msg);
                if (e)
                        e->errnum = c->broken->errnum;
                p->fn(p->userdata, NULL, e);
                vmsup_error_free(e);
                pending_free(p);
        }
        return error_ret(c->broken);
}

static int queue_command(struct qmp_client *c, int64_t id, const char *command, json_object *args, int fd,
                         bool handshake, bool at_head, vmsup_error **err) {
        json_object *msg = json_object_new_object();
        struct out_msg *m = calloc(1, sizeof(*m));
        const char *text;

        if (!msg || !m)
                goto oom;
        json_object_object_add(msg, "execute", json_object_new_string(command));
        if (args)
                json_object_object_add(msg, "arguments", json_object_get(args));
        json_object_object_add(msg, "id", json_object_new_int64(id));
        text = json_object_to_json_string_ext(msg, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
        if (!text || asprintf(&m->buf, "%s\n", text) < 0)
                goto oom;
        json_object_put(msg);
        m->len = strlen(m->buf);
        m->id = id;
        m->fd = fd;
        m->handshake = handshake;
        if (at_head) {
                m->next = c->out_head;
                c->out_head = m;
                if (!c->out_tail)
                        c->out_tail = m;
        } else {
                if (c->out_tail)
                        c->out_tail->next = m;
                else
                        c->out_head = m;
                c->out_tail = m;
        }
        return 0;
oom:
        json_object_put(msg);
        free(m);
        return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "queue QMP command '%s'", command);
}

static int add_pending(struct qmp_client *c, int64_t id, const char *command, int timeout_ms, qmp_reply_fn fn,
                       void *userdata, vmsup_error **err) {
        struct pending *p = calloc(1, sizeof(*p));

        if (!p || !(p->command = strdup(command))) {
                free(p);
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "queue QMP command '%s'", command);
        }
        p->id = id;
        p->timeout_ms = timeout_ms;
        p->deadline = monotonic_ms() + timeout_ms;
        p->fn = fn;
        p->userdata = userdata;
        if (c->pending_tail)
                c->pending_tail->next = p;
        else
                c->pending_head = p;
        c->pending_tail = p;
        return 0;
}

static struct pending *take_pending(struct qmp_client *c, int64_t id) {
        for (struct pending **pp = &c->pending_head, *prev = NULL; *pp; prev = *pp, pp = &(*pp)->next) {
                struct pending *p = *pp;

                if (p->id != id)
                        continue;
                *pp = p->next;
                if (c->pending_tail == p)
                        c->pending_tail = prev;
                p->next = NULL;
                return p;
        }
        return NULL;
}

static void capabilities_done(void *userdata, json_object *ret, const vmsup_error *err) {
        struct qmp_client *c = userdata;

        if (err) {
                set_broken(c, err->kind, err->errnum, "QMP capabilities negotiation failed: %s", err->msg);
                return;
        }
        if (c->state == QMP_NEGOTIATING)
                c->state = QMP_READY;
}

static int handle_greeting(struct qmp_client *c, json_object *msg) {
        json_object *qmp, *version, *qemu, *caps, *major, *minor, *micro;
        _cleanup_free_ char *text = NULL;
        vmsup_error *e = NULL;
        int r;

        if (!json_object_object_get_ex(msg, "QMP", &qmp) || !json_object_is_type(qmp, json_type_object) ||
            !json_object_object_get_ex(qmp, "version", &version) || !json_object_is_type(version, json_type_object) ||
            !json_object_object_get_ex(qmp, "capabilities", &caps) || !json_object_is_type(caps, json_type_array) ||
            !json_object_object_get_ex(version, "qemu", &qemu) || !json_object_is_type(qemu, json_type_object) ||
            !json_object_object_get_ex(qemu, "major", &major) || !json_object_is_type(major, json_type_int) ||
            !json_object_object_get_ex(qemu, "minor", &minor) || !json_object_is_type(minor, json_type_int) ||
            !json_object_object_get_ex(qemu, "micro", &micro) || !json_object_is_type(micro, json_type_int)) {
                text = excerpt(msg);
                return set_broken(c, VMSUP_ERR_DATA, 0,
                                  "the peer is not a QMP server: expected a greeting "
                                  "{\"QMP\": {\"version\": {\"qemu\": {...}}, \"capabilities\": [...]}}, got %s",
                                  text ? text : "(a message)");
        }
        if (asprintf(&c->version, "%" PRId64 ".%" PRId64 ".%" PRId64, json_object_get_int64(major),
                     json_object_get_int64(minor), json_object_get_int64(micro)) < 0) {
                c->version = NULL;
                return set_broken(c, VMSUP_ERR_SYSTEM, ENOMEM, "read the QMP greeting");
        }
        c->state = QMP_NEGOTIATING;
        /* capabilities first, ahead of the commands queued while we waited */
        r = queue_command(c, CAPABILITIES_ID, "qmp_capabilities", NULL, -1, true, true, &e);
        if (r >= 0)
                r = add_pending(c, CAPABILITIES_ID, "qmp_capabilities", HANDSHAKE_DEFAULT_TIMEOUT_MS,
                                capabilities_done, c, &e);
        if (r < 0) {
                r = set_broken(c, e->kind, e->errnum, "%s", e->msg);
                vmsup_error_free(e);
        }
        return r;
}

static int handle_event(struct qmp_client *c, json_object *msg, json_object *event) {
        json_object *data = NULL, *timestamp = NULL;

        if (!json_object_is_type(event, json_type_string)) {
                _cleanup_free_ char *text = excerpt(msg);
                return set_broken(c, VMSUP_ERR_DATA, 0, "QMP event without a name: %s", text ? text : "");
        }
        if (json_object_object_get_ex(msg, "data", &data) && !json_object_is_type(data, json_type_object))
                data = NULL;
        if (json_object_object_get_ex(msg, "timestamp", &timestamp) &&
            !json_object_is_type(timestamp, json_type_object))
                timestamp = NULL;
        if (c->event_fn)
                c->event_fn(c->event_userdata, json_object_get_string(event), data, timestamp);
        return 0;
}

static int handle_reply(struct qmp_client *c, json_object *msg) {
        json_object *id = NULL, *ret = NULL, *error = NULL, *cls = NULL, *desc = NULL;
        _cleanup_free_ char *text = NULL;
        struct pending *p = NULL;
        bool has_ret, has_error;
        vmsup_error *e = NULL;
        int64_t n = -1;

        has_ret = json_object_object_get_ex(msg, "return", &ret);
        has_error = json_object_object_get_ex(msg, "error", &error);
        if (has_error &&
            (!json_object_is_type(error, json_type_object) || !json_object_object_get_ex(error, "class", &cls) ||
             !json_object_is_type(cls, json_type_string) || !json_object_object_get_ex(error, "desc", &desc) ||
             !json_object_is_type(desc, json_type_string))) {
                text = excerpt(msg);
                return set_broken(c, VMSUP_ERR_DATA, 0,
                                  "malformed QMP error reply (no \"class\" and \"desc\" strings): %s",
                                  text ? text : "");
        }
        if (!json_object_object_get_ex(msg, "id", &id)) {
                /* QEMU answers without an id when it could not even parse the command */
                if (has_error)
                        return set_broken(c, VMSUP_ERR_DATA, 0, "QMP error without an id: %s: %s",
                                          json_object_get_string(cls), json_object_get_string(desc));
                text = excerpt(msg);
                return set_broken(c, VMSUP_ERR_DATA, 0, "QMP reply without an id: %s", text ? text : "");
        }
        if (json_object_is_type(id, json_type_int))
                n = json_object_get_int64(id);
        if (n >= 0)
                p = take_pending(c, n);
        if (!p) {
                /* An id we issued and no longer wait for: the answer to a command that
                 * timed out. A stalled QEMU (SIGSTOP, a blocked main loop) answers every
                 * command it was sent once it resumes, however many timed out meanwhile;
                 * since ids only grow, no list of them is needed. */
                if (n >= CAPABILITIES_ID && n < c->next_id)
                        return 0;
                text = excerpt(msg);
                return set_broken(c, VMSUP_ERR_DATA, 0, "QMP reply with an unknown id %s: %s",
                                  json_object_to_json_string_ext(id, JSON_C_TO_STRING_PLAIN), text ? text : "");
        }
        if (!has_ret && !has_error) {
                text = excerpt(msg);
                set_broken(c, VMSUP_ERR_DATA, 0,
                           "QMP reply to command '%s' has neither \"return\" nor \"error\": %s", p->command,
                           text ? text : "");
                vmsup_fail(&e, VMSUP_ERR_DATA, 0, "QMP command '%s' got no reply: %s", p->command,
                           c->broken->msg);
                p->fn(p->userdata, NULL, e);
                vmsup_error_free(e);
                pending_free(p);
                return error_ret(c->broken);
        }
        if (has_error) {
                vmsup_fail(&e, VMSUP_ERR_FAILED, 0, "QMP command '%s' failed: %s: %s", p->command,
                           json_object_get_string(cls), json_object_get_string(desc));
                p->fn(p->userdata, NULL, e);
                vmsup_error_free(e);
        } else
                p->fn(p->userdata, ret, NULL);
        pending_free(p);
        return 0;
}

static int handle_message(struct qmp_client *c, json_object *msg) {
        _cleanup_free_ char *text = NULL;
        json_object *v;

        if (!json_object_is_type(msg, json_type_object)) {
                text = excerpt(msg);
                return set_broken(c, VMSUP_ERR_DATA, 0, "QMP message is not a JSON object: %s", text ? text : "");
        }
        if (c->state == QMP_GREETING)
                return handle_greeting(c, msg);
        if (json_object_object_get_ex(msg, "event", &v))
                return handle_event(c, msg, v);
        if (json_object_object_get_ex(msg, "return", &v) || json_object_object_get_ex(msg, "error", &v) ||
            json_object_object_get_ex(msg, "id", &v))
                return handle_reply(c, msg);
        text = excerpt(msg);
        if (json_object_object_get_ex(msg, "QMP", &v))
                return set_broken(c, VMSUP_ERR_DATA, 0, "unexpected second QMP greeting: %s", text ? text : "");
        return set_broken(c, VMSUP_ERR_DATA, 0, "QMP message is neither a reply nor an event: %s",
                          text ? text : "");
}

/* Handle the whole messages read. */
static int process_input(struct qmp_client *c) {
        while (c->state != QMP_BROKEN) {
                _cleanup_error_ vmsup_error *e = NULL;
                json_object *msg = NULL;
                int r = qmp_stream_next(&c->in, &msg, &e);

                if (r < 0)
                        return set_broken(c, e ? e->kind : VMSUP_ERR_SYSTEM, e ? e->errnum : ENOMEM, "%s",
                                          e ? e->msg : "out of memory");
                if (r == 0)
                        break;
                r = handle_message(c, msg);
                json_object_put(msg);
                if (r < 0)
                        return r;
        }
        return c->broken ? error_ret(c->broken) : 0;
}

int qmp_client_feed(struct qmp_client *c, const void *data, size_t len, vmsup_error **err) {
        const char *p = data;
        int r;

        if (c->broken) {
                error_copy(err, c->broken);
                return error_ret(c->broken);
        }
        while (len > 0) {
                size_t n;
                char *room = qmp_stream_room(&c->in, &n);

                if (n > len)
                        n = len;
                memcpy(room, p, n);
                qmp_stream_filled(&c->in, n);
                p += n;
                len -= n;
                r = process_input(c);
                if (r < 0) {
                        error_copy(err, c->broken);
                        return r;
                }
        }
        return 0;
}

static int read_input(struct qmp_client *c) {
        for (int i = 0; i < MAX_READS_PER_DISPATCH && c->state != QMP_BROKEN; i++) {
                ssize_t got;
                int r;

                r = process_input(c);
                if (r < 0)
                        return r;
                got = qmp_stream_recv(&c->in, c->fd);
                if (got == -EINTR)
                        continue;
                if (got == -EAGAIN || got == -EWOULDBLOCK)
                        return 0;
                if (got < 0)
                        return set_broken(c, VMSUP_ERR_UNAVAILABLE, (int) -got, "read from the QMP socket");
                if (got == 0) {
                        if (qmp_stream_in_message(&c->in))
                                return set_broken(c, VMSUP_ERR_UNAVAILABLE, 0,
                                                  "QEMU closed the QMP connection in the middle of a message");
                        if (c->state == QMP_GREETING)
                                return set_broken(c, VMSUP_ERR_UNAVAILABLE, 0,
                                                  "QEMU closed the QMP connection before its greeting");
                        return set_broken(c, VMSUP_ERR_UNAVAILABLE, 0, "QEMU closed the QMP connection");
                }
        }
        return process_input(c);
}

static bool can_send_head(const struct qmp_client *c) {
        return c->out_head && (c->out_head->handshake || c->state == QMP_READY);
}

static int flush_output(struct qmp_client *c) {
        while (c->state != QMP_BROKEN && can_send_head(c)) {
                struct out_msg *m = c->out_head;
                ssize_t sent = qmp_stream_send(c->fd, m->buf + m->off, m->len - m->off, m->off == 0 ? m->fd : -1);

                if (sent < 0) {
                        if (sent == -EINTR)
                                continue;
                        if (sent == -EAGAIN || sent == -EWOULDBLOCK)
                                return 0;
                        if (sent == -EPIPE || sent == -ECONNRESET)
                                return set_broken(c, VMSUP_ERR_UNAVAILABLE, 0, "QEMU closed the QMP connection");
                        return set_broken(c, VMSUP_ERR_UNAVAILABLE, (int) -sent, "write to the QMP socket");
                }
                if (m->fd >= 0) {
                        close(m->fd); /* the kernel holds its own reference in flight */
                        m->fd = -1;
                }
                m->off += (size_t) sent;
                if (m->off < m->len)
                        continue;
                c->out_head = m->next;
                if (!c->out_head)
                        c->out_tail = NULL;
                out_msg_free(m);
        }
        return c->broken ? error_ret(c->broken) : 0;
}

int qmp_client_new_fd(int fd, struct qmp_client **ret, vmsup_error **err) {
        _cleanup_close_ int owned = fd;
        struct qmp_client *c;
        socklen_t len = sizeof(int);
        int type = 0, flags;

        if (fd < 0)
                return vmsup_fail(err, VMSUP_ERR_INTERNAL, EBADF, "QMP client on fd %d", fd);
        if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) < 0 || type != SOCK_STREAM)
                return vmsup_fail(err, VMSUP_ERR_INTERNAL, errno == ENOTSOCK ? ENOTSOCK : 0,
                                  "QMP client on fd %d: not a stream socket", fd);
        flags = fcntl(fd, F_GETFL);
        if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0 || fcntl(fd, F_SETFD, FD_CLOEXEC) < 0)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, errno, "QMP client on fd %d: set O_NONBLOCK", fd);

        c = calloc(1, sizeof(*c));
        if (!c)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "QMP client");
        if (qmp_stream_init(&c->in) < 0) {
                free(c);
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "QMP client");
        }
        c->fd = TAKE_FD(owned);
        c->state = QMP_GREETING;
        c->next_id = CAPABILITIES_ID + 1;
        *ret = c;
        return 0;
}

int qmp_client_connect(const char *socket_path, struct qmp_client **ret, vmsup_error **err) {
        _cleanup_close_ int fd = -1;
        struct sockaddr_un sa = { .sun_family = AF_UNIX };

        if (!socket_path || !*socket_path)
                return vmsup_fail(err, VMSUP_ERR_USAGE, 0, "empty QMP socket path");
        if (strlen(socket_path) >= sizeof(sa.sun_path))
                return vmsup_fail(err, VMSUP_ERR_USAGE, ENAMETOOLONG, "QMP socket path '%s' (at most %zu bytes)",
                                  socket_path, sizeof(sa.sun_path) - 1);
        memcpy(sa.sun_path, socket_path, strlen(socket_path) + 1);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, errno, "create a socket for QMP");
        /* a unix connect completes at once (or waits for backlog room); no EINPROGRESS */
        while (connect(fd, (struct sockaddr *) &sa, sizeof(sa)) < 0)
                if (errno != EINTR)
                        return vmsup_fail(err, VMSUP_ERR_UNAVAILABLE, errno, "connect to QMP socket '%s'",
                                          socket_path);
        return qmp_client_new_fd(TAKE_FD(fd), ret, err);
}

void qmp_client_set_event_handler(struct qmp_client *c, qmp_event_fn fn, void *userdata) {
        c->event_fn = fn;
        c->event_userdata = userdata;
}

int qmp_client_fd(const struct qmp_client *c) {
        return c->fd;
}

uint32_t qmp_client_epoll_events(const struct qmp_client *c) {
        if (c->state == QMP_BROKEN)
                return 0;
        return EPOLLIN | (can_send_head(c) ? EPOLLOUT : 0);
}

int qmp_client_dispatch(struct qmp_client *c, vmsup_error **err) {
        int r;

        r = flush_output(c);
        if (r >= 0)
                r = read_input(c);
        /* a greeting or a capabilities reply read just now may let queued commands go */
        if (r >= 0)
                r = flush_output(c);
        qmp_client_expire(c);
        if (r >= 0 && c->broken)
                r = error_ret(c->broken);
        if (r < 0)
                error_copy(err, c->broken);
        return r;
}

int qmp_client_execute_async(struct qmp_client *c, const char *command, json_object *args, int pass_fd,
                             int timeout_ms, qmp_reply_fn fn, void *userdata, vmsup_error **err) {
        int64_t id;
        int fd = -1, r;

        if (c->broken) {
                vmsup_fail(err, c->broken->kind, 0, "QMP command '%s': the connection is unusable: %s",
                           command ? command : "", c->broken->msg);
                return error_ret(c->broken);
        }
        if (!command || !*command || !fn)
                return vmsup_fail(err, VMSUP_ERR_INTERNAL, EINVAL, "QMP command '%s'", command ? command : "");
        if (args && !json_object_is_type(args, json_type_object))
                return vmsup_fail(err, VMSUP_ERR_USAGE, 0, "QMP command '%s': the arguments must be a JSON object",
                                  command);
        if (timeout_ms <= 0)
                return vmsup_fail(err, VMSUP_ERR_INTERNAL, EINVAL, "QMP command '%s': timeout %d ms", command,
                                  timeout_ms);
        if (pass_fd >= 0) {
                fd = fcntl(pass_fd, F_DUPFD_CLOEXEC, 3);
                if (fd < 0)
                        return vmsup_fail(err, VMSUP_ERR_SYSTEM, errno, "QMP command '%s': duplicate fd %d", command,
                                          pass_fd);
        }
        id = c->next_id++;
        r = queue_command(c, id, command, args, fd, false, false, err);
        if (r < 0) {
                if (fd >= 0)
                        close(fd);
                return r;
        }
        r = add_pending(c, id, command, timeout_ms, fn, userdata, err);
        if (r < 0) {
                /* the message was appended last: take it back */
                struct out_msg **pp = &c->out_head, *prev = NULL;

                while ((*pp)->next) {
                        prev = *pp;
                        pp = &(*pp)->next;
                }
                out_msg_free(*pp);
                *pp = NULL;
                c->out_tail = prev;
                return r;
        }
        return 0;
}

int qmp_client_next_timeout_ms(const struct qmp_client *c) {
        int64_t first = INT64_MAX, left;

        for (const struct pending *p = c->pending_head; p; p = p->next)
                if (p->deadline < first)
                        first = p->deadline;
        if (first == INT64_MAX)
                return -1;
        left = first - monotonic_ms();
        if (left < 0)
                return 0;
        return left > INT_MAX ? INT_MAX : (int) left;
}

/* A command that times out before a byte of it went out is not sent at all. */
static bool unqueue(struct qmp_client *c, int64_t id) {
        for (struct out_msg **pp = &c->out_head, *prev = NULL; *pp; prev = *pp, pp = &(*pp)->next) {
                struct out_msg *m = *pp;

                if (m->id != id)
                        continue;
                if (m->off > 0)
                        return false;
                *pp = m->next;
                if (c->out_tail == m)
                        c->out_tail = prev;
                out_msg_free(m);
                return true;
        }
        return false;
}

void qmp_client_expire(struct qmp_client *c) {
        struct pending *expired = NULL, **tail = &expired;
        int64_t now = monotonic_ms();

        for (struct pending **pp = &c->pending_head, *prev = NULL; *pp;) {
                struct pending *p = *pp;

                if (p->deadline > now) {
                        prev = p;
                        pp = &p->next;
                        continue;
                }
                *pp = p->next;
                if (c->pending_tail == p)
                        c->pending_tail = prev;
                p->next = NULL;
                *tail = p;
                tail = &p->next;
        }
        while (expired) {
                struct pending *p = expired;
                vmsup_error *e = NULL;

                expired = p->next;
                unqueue(c, p->id); /* else its reply, should it come, is dropped */
                vmsup_fail(&e, VMSUP_ERR_UNAVAILABLE, 0, "QMP command '%s' got no reply within %d ms%s", p->command,
                           p->timeout_ms, c->state == QMP_GREETING ? " (no QMP greeting yet)" : "");
                if (e)
                        e->errnum = ETIMEDOUT;
                p->fn(p->userdata, NULL, e);
                vmsup_error_free(e);
                pending_free(p);
        }
}

/* Run the loop until done(c, arg), the deadline (-1: none) or a broken connection. */
static int wait_for(struct qmp_client *c, bool (*done)(const struct qmp_client *c, const void *arg), const void *arg,
                    int64_t deadline) {
        while (!done(c, arg) && c->state != QMP_BROKEN) {
                uint32_t ev = qmp_client_epoll_events(c);
                struct pollfd pfd = { c->fd, (short) ((ev & EPOLLIN ? POLLIN : 0) | (ev & EPOLLOUT ? POLLOUT : 0)), 0 };
                int timeout = qmp_client_next_timeout_ms(c), n;

                if (deadline >= 0) {
                        int64_t left = deadline - monotonic_ms();

                        if (left <= 0)
                                return -ETIMEDOUT;
                        if (timeout < 0 || left < timeout)
                                timeout = (int) (left > INT_MAX ? INT_MAX : left);
                }
                n = poll(&pfd, 1, timeout);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return set_broken(c, VMSUP_ERR_SYSTEM, errno, "wait for the QMP socket");
                }
                if (n == 0)
                        qmp_client_expire(c);
                else
                        qmp_client_dispatch(c, NULL);
        }
        return done(c, arg) ? 0 : error_ret(c->broken);
}

static bool is_ready(const struct qmp_client *c, const void *arg) {
        return c->state == QMP_READY;
}

int qmp_client_handshake(struct qmp_client *c, int timeout_ms, vmsup_error **err) {
        if (timeout_ms <= 0)
                return vmsup_fail(err, VMSUP_ERR_INTERNAL, EINVAL, "QMP handshake: timeout %d ms", timeout_ms);
        if (wait_for(c, is_ready, NULL, monotonic_ms() + timeout_ms) >= 0)
                return 0;
        if (c->state == QMP_GREETING)
                set_broken(c, VMSUP_ERR_UNAVAILABLE, 0,
                           "no QMP greeting within %d ms (is another client connected to this QEMU?)", timeout_ms);
        else if (c->state == QMP_NEGOTIATING)
                set_broken(c, VMSUP_ERR_UNAVAILABLE, 0, "QMP capabilities negotiation got no reply within %d ms",
                           timeout_ms);
        error_copy(err, c->broken);
        return error_ret(c->broken);
}

struct blocking_result {
        bool done;
        json_object *ret;
        vmsup_error *err;
};

static bool is_done(const struct qmp_client *c, const void *arg) {
        return ((const struct blocking_result *) arg)->done;
}

static void blocking_done(void *userdata, json_object *ret, const vmsup_error *err) {
        struct blocking_result *b = userdata;

        b->done = true;
        if (err)
                error_copy(&b->err, err);
        else
                b->ret = json_object_get(ret);
}

int qmp_client_execute(struct qmp_client *c, const char *command, json_object *args, int pass_fd, int timeout_ms,
                       json_object **ret_return, vmsup_error **err) {
        struct blocking_result b = { 0 };
        int r;

        r = qmp_client_execute_async(c, command, args, pass_fd, timeout_ms, blocking_done, &b, err);
        if (r < 0)
                return r;
        /* the command's own deadline ends the wait; the callback runs exactly once */
        wait_for(c, is_done, &b, -1);
        if (!b.done) /* cannot happen: a broken connection fails every pending command */
                return vmsup_fail(err, VMSUP_ERR_INTERNAL, 0, "QMP command '%s': no outcome", command);
        if (b.err) {
                r = error_ret(b.err);
                error_copy(err, b.err);
                vmsup_error_free(b.err);
                return r;
        }
        if (ret_return)
                *ret_return = b.ret;
        else
                json_object_put(b.ret);
        return 0;
}

const char *qmp_client_qemu_version(const struct qmp_client *c) {
        return c->version;
}

struct qmp_client *qmp_client_free(struct qmp_client *c) {
        if (!c)
                return NULL;
        while (c->out_head) {
                struct out_msg *m = c->out_head;

                c->out_head = m->next;
                out_msg_free(m);
        }
        while (c->pending_head) {
                struct pending *p = c->pending_head;

                c->pending_head = p->next;
                pending_free(p);
        }
        if (c->fd >= 0)
                close(c->fd);
        qmp_stream_clear(&c->in);
        free(c->version);
        vmsup_error_free(c->broken);
        free(c);
        return NULL;
}
