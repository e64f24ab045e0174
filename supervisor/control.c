#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "common/util.h"
#include "supervisor/control.h"

static size_t conns_open; /* control_conn objects alive: what counts against CONTROL_MAX_CLIENTS */

static int make_addr(const char *path, struct sockaddr_un *sa, vmsup_error **err) {
        memset(sa, 0, sizeof(*sa));
        sa->sun_family = AF_UNIX;
        if (strlen(path) >= sizeof(sa->sun_path))
                return vmsup_fail(err, VMSUP_ERR_CONFIG, ENAMETOOLONG, "control socket '%s'", path);
        strcpy(sa->sun_path, path);
        return 0;
}

int control_listen(const char *path, vmsup_error **err) {
        _cleanup_close_ int fd = -1;
        struct sockaddr_un sa;
        mode_t old;
        int r;

        if ((r = make_addr(path, &sa, err)) < 0)
                return r;
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, errno, "control socket");
        if (unlink(path) < 0 && errno != ENOENT)
                return vmsup_fail(err, VMSUP_ERR_IO, errno, "remove stale control socket '%s'", path);
        old = umask(0177); /* the socket is born 0600: no window with wider access */
        r = bind(fd, (struct sockaddr *) &sa, sizeof(sa));
        umask(old);
        if (r < 0)
                return vmsup_fail(err, VMSUP_ERR_CANT_CREATE, errno, "bind control socket '%s'", path);
        /* Clients beyond the cap are accepted only to be told so: a deep backlog keeps their
         * connect from waiting while we do that. */
        if (listen(fd, SOMAXCONN) < 0)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, errno, "listen on '%s'", path);
        return TAKE_FD(fd);
}

struct control_conn *control_accept(int listen_fd, vmsup_error **err) {
        struct control_conn *c;
        struct ucred cred;
        socklen_t len = sizeof(cred);
        int fd;

        fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (fd < 0) {
                if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
                        vmsup_fail(err, VMSUP_ERR_SYSTEM, errno, "accept on the control socket");
                return NULL;
        }
        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0 || (cred.uid != 0 && cred.uid != geteuid())) {
                close(fd); /* the socket is 0600 already; this is the second lock on the door */
                return NULL;
        }
        c = calloc(1, sizeof(*c));
        if (!c) {
                close(fd);
                vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "control connection");
                return NULL;
        }
        c->fd = fd;
        conns_open++;
        return c;
}

size_t control_conn_count(void) {
        return conns_open;
}

/* {"ok": false, "error": msg, "kind": "<name>"} and a newline, as one text. */
static char *error_line(enum vmsup_err_kind kind, const char *msg) {
        json_object *o = json_object_new_object();
        char *line = NULL;

        json_object_object_add(o, "ok", json_object_new_boolean(0));
        json_object_object_add(o, "error", json_object_new_string(msg));
        json_object_object_add(o, "kind", json_object_new_string(vmsup_err_kind_to_string(kind)));
        if (asprintf(&line, "%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN |
                                                                                 JSON_C_TO_STRING_NOSLASHESCAPE)) < 0)
                line = NULL;
        json_object_put(o);
        return line;
}

int control_accept_refuse(int listen_fd, enum vmsup_err_kind kind, const char *msg) {
        _cleanup_free_ char *line = error_line(kind, msg);
        int fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);

        if (fd < 0)
                return errno == EAGAIN || errno == ECONNABORTED ? 0 : -errno;
        /* a new connection's send buffer is empty: the line goes out without waiting */
        if (line)
                (void) !send(fd, line, strlen(line), MSG_NOSIGNAL | MSG_DONTWAIT);
        shutdown(fd, SHUT_RDWR);
        close(fd);
        return 1;
}

int control_conn_read(struct control_conn *c, vmsup_error **err) {
        for (;;) {
                char chunk[4096], *nl, *nbuf;
                ssize_t n = read(c->fd, chunk, sizeof(chunk));

                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0 && errno == EAGAIN)
                        return 0;
                if (n < 0)
                        return vmsup_fail(err, VMSUP_ERR_IO, errno, "read a control request");
                if (n == 0)
                        return vmsup_fail(err, VMSUP_ERR_DATA, 0, "control client hung up before a whole request");
                if (c->len + (size_t) n > CONTROL_MAX_MESSAGE)
                        return vmsup_fail(err, VMSUP_ERR_DATA, 0, "control request larger than %d bytes", CONTROL_MAX_MESSAGE);
                nbuf = realloc(c->buf, c->len + (size_t) n + 1);
                if (!nbuf)
                        return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "control request");
                c->buf = nbuf;
                memcpy(c->buf + c->len, chunk, (size_t) n);
                c->len += (size_t) n;
                c->buf[c->len] = '\0';
                nl = memchr(c->buf, '\n', c->len);
                if (nl) {
                        *nl = '\0';
                        c->request = json_tokener_parse(c->buf);
                        if (!c->request || !json_object_is_type(c->request, json_type_object))
                                return vmsup_fail(err, VMSUP_ERR_DATA, 0, "control request is not a JSON object");
                        return 1;
                }
        }
}

/* Bytes [done, len] of TEXT and its newline in one message: the peer wakes once for the
 * line, not once for the text and again for its newline. */
static ssize_t send_line_from(int fd, const char *text, size_t len, size_t done) {
        struct iovec iov[2];
        struct msghdr m = { .msg_iov = iov };

        if (done < len)
                iov[m.msg_iovlen++] = (struct iovec) { .iov_base = (void *) (text + done), .iov_len = len - done };
        iov[m.msg_iovlen++] = (struct iovec) { .iov_base = (void *) "\n", .iov_len = 1 };
        return sendmsg(fd, &m, MSG_NOSIGNAL);
}

static void send_line(struct control_conn *c, json_object *obj) {
        const char *text = json_object_to_json_string_ext(obj, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
        size_t len = strlen(text), done = 0;

        /* Replies are small; a client that does not read gets cut off after 1 s. */
        while (done <= len) {
                ssize_t n = send_line_from(c->fd, text, len, done);

                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0 && errno == EAGAIN) {
                        struct pollfd p = { .fd = c->fd, .events = POLLOUT };

                        if (poll(&p, 1, 1000) <= 0)
                                return;
                        continue;
                }
                if (n <= 0)
                        return;
                done += (size_t) n;
        }
}

void control_conn_reply_ok(struct control_conn *c, json_object *ret) {
        json_object *o = json_object_new_object();

        json_object_object_add(o, "ok", json_object_new_boolean(1));
        json_object_object_add(o, "return", ret);
        send_line(c, o);
        json_object_put(o);
        shutdown(c->fd, SHUT_RDWR);
}

void control_conn_reply_error(struct control_conn *c, enum vmsup_err_kind kind, const char *msg) {
        json_object *o = json_object_new_object();

        json_object_object_add(o, "ok", json_object_new_boolean(0));
        json_object_object_add(o, "error", json_object_new_string(msg));
        json_object_object_add(o, "kind", json_object_new_string(vmsup_err_kind_to_string(kind)));
        send_line(c, o);
        json_object_put(o);
        shutdown(c->fd, SHUT_RDWR);
}

int control_conn_reply_stream(struct control_conn *c, json_object *ret) {
        json_object *o = json_object_new_object();
        int fd;

        json_object_object_add(o, "ok", json_object_new_boolean(1));
        json_object_object_add(o, "return", ret);
        send_line(c, o);
        json_object_put(o);
        /* send_line() gives up silently on a client that does not read: a peer that is
         * gone shows now */
        if (send(c->fd, "", 0, MSG_NOSIGNAL | MSG_DONTWAIT) < 0 && errno != EAGAIN)
                return -1;
        evloop_source_remove(c->io_src);
        evloop_source_remove(c->timer_src);
        c->io_src = c->timer_src = NULL;
        fd = c->fd;
        c->fd = -1;
        return fd;
}

struct control_conn *control_conn_free(struct control_conn *c) {
        if (c) {
                conns_open--;
                evloop_source_remove(c->io_src);
                evloop_source_remove(c->timer_src);
                closep(&c->fd);
                free(c->buf);
                json_object_put(c->request);
                free(c);
        }
        return NULL;
}

void control_conn_progress(struct control_conn *c, json_object *progress) {
        json_object *o = json_object_new_object();

        json_object_object_add(o, "progress", progress);
        send_line(c, o);
        json_object_put(o);
}

/* Hand every whole {"progress": ...} line at the start of buf to fn and drop it. */
static void consume_progress(char *buf, size_t *len, control_progress_fn fn, void *userdata) {
        char *nl;

        while ((nl = memchr(buf, '\n', *len))) {
                size_t line = (size_t) (nl - buf) + 1;
                json_object *o, *p;

                *nl = '\0';
                o = json_tokener_parse(buf);
                if (!o || !json_object_object_get_ex(o, "progress", &p)) {
                        *nl = '\n'; /* the reply itself */
                        json_object_put(o);
                        return;
                }
                if (fn)
                        fn(userdata, p);
                json_object_put(o);
                memmove(buf, buf + line, *len - line);
                *len -= line;
        }
}

/* A supervisor's reply line: its "return" (a new reference), or its error and exit code. */
static int parse_reply(const char *buf, json_object **ret_return, vmsup_error **err) {
        json_object *reply, *ok, *v;
        int r;

        reply = json_tokener_parse(buf);
        if (!reply || !json_object_object_get_ex(reply, "ok", &ok)) {
                json_object_put(reply);
                return vmsup_fail(err, VMSUP_ERR_DATA, 0, "the supervisor's reply is not understood");
        }
        if (!json_object_get_boolean(ok)) {
                json_object *kind;

                r = vmsup_fail(err,
                               json_object_object_get_ex(reply, "kind", &kind)
                                       ? vmsup_err_kind_from_string(json_object_get_string(kind))
                                       : VMSUP_ERR_FAILED,
                               0, "%s",
                               json_object_object_get_ex(reply, "error", &v) ? json_object_get_string(v) : "failed");
                json_object_put(reply);
                return r;
        }
        if (ret_return)
                *ret_return = json_object_object_get_ex(reply, "return", &v) ? json_object_get(v) : NULL;
        json_object_put(reply);
        return 0;
}

int control_request(const char *path, json_object *req, int timeout_ms, json_object **ret_return, vmsup_error **err) {
        return control_request_progress(path, req, timeout_ms, NULL, NULL, ret_return, err);
}

/* Connect within timeout_ms (-1: no bound). A supervisor that does not accept (stopped,
 * or its backlog full) would keep a plain connect() on a unix socket waiting for ever:
 * SO_SNDTIMEO bounds that wait (the kernel's unix_stream_connect honours it). */
static int connect_bounded(int fd, const struct sockaddr_un *sa, const char *path, int timeout_ms, vmsup_error **err) {
        if (timeout_ms >= 0) {
                struct timeval tv = { .tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000 };

                if (tv.tv_sec == 0 && tv.tv_usec == 0)
                        tv.tv_usec = 1000;
                if (setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) < 0)
                        return vmsup_fail(err, VMSUP_ERR_SYSTEM, errno, "control socket timeout");
        }
        while (connect(fd, (const struct sockaddr *) sa, sizeof(*sa)) < 0) {
                if (errno == EINTR)
                        continue;
                if (errno == EAGAIN || errno == EINPROGRESS)
                        return vmsup_fail(err, VMSUP_ERR_BUSY, 0,
                                          "the guest's supervisor at '%s' did not take the connection within %d ms",
                                          path, timeout_ms);
                return vmsup_fail(err, errno == ENOENT || errno == ECONNREFUSED ? VMSUP_ERR_NO_SUPERVISOR : VMSUP_ERR_DENIED,
                                  errno, "connect to the guest's supervisor at '%s' (is 'vmsup run' running?)", path);
        }
        return 0;
}

/* Connect, send req, read the reply within timeout_ms. A stream (ret_fd set) reads a byte
 * at a time up to the reply's newline, for what follows it is the stream's, and keeps
 * the connection open for the caller. */
static int request(const char *path, json_object *req, int timeout_ms, control_progress_fn fn, void *userdata,
                   json_object **ret_return, int *ret_fd, vmsup_error **err) {
        _cleanup_close_ int fd = -1;
        _cleanup_free_ char *buf = NULL;
        struct sockaddr_un sa;
        const char *text;
        size_t len = 0;
        int send_errno = 0;
        long deadline = timeout_ms < 0 ? -1 : monotonic_ms() + timeout_ms;
        int r;

        if ((r = make_addr(path, &sa, err)) < 0)
                return r;
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, errno, "socket");
        if ((r = connect_bounded(fd, &sa, path, timeout_ms, err)) < 0)
                return r;
        text = json_object_to_json_string_ext(req, JSON_C_TO_STRING_PLAIN);
        if (send_line_from(fd, text, strlen(text), 0) < 0) {
                /* A supervisor that refuses us (too many clients) answers and closes at once:
                 * its answer is still there to read. */
                if (errno != EPIPE && errno != ECONNRESET)
                        return vmsup_fail(err, errno == EAGAIN ? VMSUP_ERR_BUSY : VMSUP_ERR_IO, errno,
                                          "send to the supervisor at '%s'", path);
                send_errno = errno;
        }
        buf = malloc(CONTROL_MAX_MESSAGE + 1);
        if (!buf)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "control reply");
        for (;;) {
                struct pollfd p = { .fd = fd, .events = POLLIN };
                long left = deadline < 0 ? -1 : deadline - monotonic_ms();
                ssize_t n;

                if (deadline >= 0 && left <= 0)
                        return vmsup_fail(err, VMSUP_ERR_TIMEOUT, 0, "the supervisor did not answer within %d ms", timeout_ms);
                if (poll(&p, 1, (int) left) < 0) {
                        if (errno == EINTR)
                                continue;
                        return vmsup_fail(err, VMSUP_ERR_IO, errno, "wait for the supervisor");
                }
                if (!p.revents)
                        continue;
                n = read(fd, buf + len, ret_fd ? 1 : CONTROL_MAX_MESSAGE - len);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0 && errno == ECONNRESET && len > 0)
                        break; /* closed with our request unread: its answer came first */
                if (n < 0)
                        return vmsup_fail(err, VMSUP_ERR_IO, errno, "read from the supervisor");
                if (n == 0)
                        break;
                if (ret_fd && buf[len] == '\n')
                        break;
                len += (size_t) n;
                if (!ret_fd)
                        consume_progress(buf, &len, fn, userdata);
                if (len == CONTROL_MAX_MESSAGE)
                        return vmsup_fail(err, VMSUP_ERR_DATA, 0, "the supervisor's reply is too large");
        }
        buf[len] = '\0';
        if (len == 0 && send_errno)
                return vmsup_fail(err, VMSUP_ERR_IO, send_errno, "send to the supervisor at '%s'", path);
        if (len == 0)
                return vmsup_fail(err, VMSUP_ERR_IO, 0, "the supervisor closed the connection without an answer");
        if ((r = parse_reply(buf, ret_return, err)) < 0)
                return r;
        if (ret_fd)
                *ret_fd = TAKE_FD(fd);
        return 0;
}

int control_request_progress(const char *path, json_object *req, int timeout_ms, control_progress_fn fn, void *userdata,
                             json_object **ret_return, vmsup_error **err) {
        return request(path, req, timeout_ms, fn, userdata, ret_return, NULL, err);
}

int control_stream_open(const char *path, json_object *req, int timeout_ms, json_object **ret_return,
                        vmsup_error **err) {
        int fd = -1, r = request(path, req, timeout_ms, NULL, NULL, ret_return, &fd, err);

        return r < 0 ? r : fd;
}

struct each {
        int fd;
        char *buf;
        size_t len;
        bool started, done;
        long deadline;
};

/* Connect to path and send line (len bytes with its newline); false with *err set when
 * there is nothing to wait for. */
static bool each_start(struct each *e, const char *path, const char *line, size_t len, int timeout_ms,
                       vmsup_error **err) {
        struct sockaddr_un sa;

        e->started = true;
        e->done = true;
        e->deadline = monotonic_ms() + timeout_ms;
        if (make_addr(path, &sa, err) < 0)
                return false;
        e->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (e->fd < 0) {
                vmsup_fail(err, VMSUP_ERR_SYSTEM, errno, "socket");
                return false;
        }
        /* non-blocking: a supervisor whose backlog is full does not hold the others */
        if (connect(e->fd, (struct sockaddr *) &sa, sizeof(sa)) < 0) {
                vmsup_fail(err,
                           errno == EAGAIN                            ? VMSUP_ERR_BUSY
                           : errno == ENOENT || errno == ECONNREFUSED ? VMSUP_ERR_NO_SUPERVISOR
                                                                      : VMSUP_ERR_DENIED,
                           errno == EAGAIN ? 0 : errno, "connect to the guest's supervisor at '%s'%s", path,
                           errno == EAGAIN ? ": it takes no connection" : "");
                closep(&e->fd);
                return false;
        }
        /* the line in one send (far below a socket buffer). A supervisor that refuses us
         * (too many clients) answers and closes without reading: its answer is still
         * there to read after EPIPE. */
        if (send(e->fd, line, len, MSG_NOSIGNAL) != (ssize_t) len && errno != EPIPE && errno != ECONNRESET) {
                vmsup_fail(err, VMSUP_ERR_IO, errno, "send to the supervisor at '%s'", path);
                closep(&e->fd);
                return false;
        }
        e->buf = malloc(CONTROL_MAX_MESSAGE + 1);
        if (!e->buf) {
                vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "control reply");
                closep(&e->fd);
                return false;
        }
        e->done = false;
        return true;
}

/* Read what is there; true once e is done (its answer parsed into *ret or *err). */
static bool each_read(struct each *e, json_object **ret, vmsup_error **err) {
        ssize_t r = read(e->fd, e->buf + e->len, CONTROL_MAX_MESSAGE - e->len);

        if (r < 0 && (errno == EINTR || errno == EAGAIN))
                return false;
        if (r < 0 && errno == ECONNRESET && e->len > 0)
                r = 0; /* closed with our request unread: its answer came first */
        if (r > 0)
                e->len += (size_t) r;
        if (r > 0 && e->len < CONTROL_MAX_MESSAGE)
                return false;
        /* the supervisor answers one line and closes */
        e->buf[e->len] = '\0';
        if (r < 0)
                vmsup_fail(err, VMSUP_ERR_IO, errno, "read from the supervisor");
        else if (e->len == 0)
                vmsup_fail(err, VMSUP_ERR_IO, 0, "the supervisor closed the connection without an answer");
        else
                parse_reply(e->buf, ret, err);
        return true;
}

static void each_end(struct each *e) {
        e->done = true;
        closep(&e->fd);
        free(e->buf);
        e->buf = NULL;
}

int control_request_each(const char *const *paths, size_t n, json_object *req, int timeout_ms, json_object **rets,
                         vmsup_error **errs) {
        return control_request_window(paths, n, req, n, timeout_ms, NULL, NULL, rets, errs);
}

int control_request_window(const char *const *paths, size_t n, json_object *req, size_t parallel, int timeout_ms,
                           control_each_fn fn, void *userdata, json_object **rets, vmsup_error **errs) {
        _cleanup_free_ struct each *e = calloc(n ? n : 1, sizeof(*e));
        _cleanup_free_ struct pollfd *p = calloc(n ? n : 1, sizeof(*p));
        _cleanup_free_ size_t *at = calloc(n ? n : 1, sizeof(*at));
        const char *text = json_object_to_json_string_ext(req, JSON_C_TO_STRING_PLAIN);
        size_t tl = strlen(text), next = 0, running = 0;
        _cleanup_free_ char *line = malloc(tl + 2);

        if (!e || !p || !at || !line)
                return -ENOMEM;
        if (parallel == 0)
                parallel = 1;
        memcpy(line, text, tl);
        memcpy(line + tl, "\n", 2);
        for (size_t i = 0; i < n; i++) {
                rets[i] = NULL;
                errs[i] = NULL;
                e[i].fd = -1;
        }
        for (;;) {
                long now, wake = -1;
                size_t np = 0;
                int k;

                while (running < parallel && next < n) {
                        size_t i = next++;

                        if (each_start(&e[i], paths[i], line, tl + 1, timeout_ms, &errs[i]))
                                running++;
                        else if (fn)
                                fn(userdata, i, NULL, errs[i]);
                }
                if (running == 0)
                        break;
                for (size_t i = 0; i < next; i++) {
                        if (e[i].done)
                                continue;
                        p[np] = (struct pollfd) { .fd = e[i].fd, .events = POLLIN };
                        at[np++] = i;
                        if (wake < 0 || e[i].deadline < wake)
                                wake = e[i].deadline;
                }
                now = monotonic_ms();
                k = poll(p, np, wake > now ? (int) (wake - now) : 0);
                if (k < 0 && errno != EINTR) {
                        int saved = errno;

                        for (size_t i = 0; i < n; i++) {
                                if (e[i].started && e[i].done)
                                        continue;
                                vmsup_fail(&errs[i], VMSUP_ERR_SYSTEM, saved, "poll");
                                each_end(&e[i]);
                        }
                        return 0;
                }
                for (size_t j = 0; k > 0 && j < np; j++) {
                        size_t i = at[j];

                        if (!p[j].revents || !each_read(&e[i], &rets[i], &errs[i]))
                                continue;
                        each_end(&e[i]);
                        running--;
                        if (fn)
                                fn(userdata, i, rets[i], errs[i]);
                }
                now = monotonic_ms();
                for (size_t j = 0; j < np; j++) {
                        size_t i = at[j];

                        if (e[i].done || e[i].deadline > now)
                                continue;
                        vmsup_fail(&errs[i], VMSUP_ERR_TIMEOUT, 0, "the supervisor did not answer within %d ms",
                                   timeout_ms);
                        each_end(&e[i]);
                        running--;
                        if (fn)
                                fn(userdata, i, NULL, errs[i]);
                }
        }
        return 0;
}
