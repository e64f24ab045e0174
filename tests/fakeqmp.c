#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "tests/fakeqmp.h"

#define MAX_FDS 16

struct fakeqmp {
        const struct fakeqmp_step *script;
        int listen_fd; /* unix mode until accepted */
        int fd;
        pthread_t thread;
        pthread_mutex_t lock;
        pthread_cond_t cond;
        bool paused, go, done, stop;
        size_t step;
        char *failure;
        char *last_id; /* JSON text of the last command's id */
        char buf[65536];
        size_t buf_len;
        int fds[MAX_FDS];
        size_t n_fds;
};

static void fail(struct fakeqmp *f, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fail(struct fakeqmp *f, const char *fmt, ...) {
        char *msg = NULL, *full = NULL;
        va_list ap;

        va_start(ap, fmt);
        if (vasprintf(&msg, fmt, ap) < 0)
                msg = NULL;
        va_end(ap);
        if (asprintf(&full, "fake QMP server, step %zu: %s", f->step, msg ? msg : "?") < 0)
                full = NULL;
        free(msg);
        pthread_mutex_lock(&f->lock);
        if (!f->failure)
                f->failure = full;
        else
                free(full);
        pthread_mutex_unlock(&f->lock);
}

static bool write_all(struct fakeqmp *f, const char *p, size_t n) {
        while (n > 0) {
                ssize_t w = send(f->fd, p, n, MSG_NOSIGNAL);

                if (w < 0 && errno == EINTR)
                        continue;
                if (w <= 0)
                        return false;
                p += w;
                n -= (size_t) w;
        }
        return true;
}

/* Read more bytes (and any fds) from the client; 0 on EOF, -1 on error. */
static int read_more(struct fakeqmp *f) {
        union {
                struct cmsghdr align;
                char buf[CMSG_SPACE(sizeof(int) * 4)];
        } control;
        struct iovec iov = { f->buf + f->buf_len, sizeof(f->buf) - 1 - f->buf_len };
        struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf,
                             .msg_controllen = sizeof(control.buf) };
        ssize_t got;

        if (iov.iov_len == 0)
                return -1;
        do
                got = recvmsg(f->fd, &mh, MSG_CMSG_CLOEXEC);
        while (got < 0 && errno == EINTR);
        if (got < 0)
                return -1;
        for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
                if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
                        continue;
                for (size_t i = 0; i < (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int); i++) {
                        int fd;

                        memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
                        if (f->n_fds < MAX_FDS)
                                f->fds[f->n_fds++] = fd;
                        else
                                close(fd);
                }
        }
        f->buf_len += (size_t) got;
        f->buf[f->buf_len] = '\0';
        return got > 0;
}

/* One line from the client: 1 with *ret_line (free it), 0 on EOF, -1 on error. */
static int read_line(struct fakeqmp *f, char **ret_line) {
        for (;;) {
                char *nl = memchr(f->buf, '\n', f->buf_len);
                int r;

                if (nl) {
                        size_t n = (size_t) (nl - f->buf) + 1;

                        *ret_line = strndup(f->buf, n - 1);
                        memmove(f->buf, f->buf + n, f->buf_len - n);
                        f->buf_len -= n;
                        return 1;
                }
                r = read_more(f);
                if (r <= 0)
                        return r;
        }
}

static char *fd_contents(int fd) {
        char buf[4096];
        ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);

        if (n < 0 && errno == ESPIPE) {
                /* a socket (non-blocking, say) whose bytes may still be on their way */
                struct pollfd p = { .fd = fd, .events = POLLIN };

                (void) poll(&p, 1, 5000);
                n = read(fd, buf, sizeof(buf) - 1);
        }
        if (n < 0)
                return strdup("(unreadable)");
        buf[n] = '\0';
        return strdup(buf);
}

static bool expect(struct fakeqmp *f, const struct fakeqmp_step *s) {
        json_object *msg = NULL, *execute, *args = NULL, *id, *want = NULL;
        char *line = NULL;
        bool ok = false;
        int r;

        r = read_line(f, &line);
        if (r <= 0) {
                fail(f, "expected command '%s', got %s", s->text, r == 0 ? "a hang-up" : "a read error");
                return false;
        }
        msg = json_tokener_parse(line);
        if (!msg || !json_object_object_get_ex(msg, "execute", &execute) ||
            !json_object_is_type(execute, json_type_string)) {
                fail(f, "expected command '%s', got something else: %s", s->text, line);
                goto out;
        }
        if (strcmp(json_object_get_string(execute), s->text) != 0) {
                fail(f, "expected command '%s', got %s", s->text, line);
                goto out;
        }
        json_object_object_get_ex(msg, "arguments", &args);
        if (s->args) {
                want = json_tokener_parse(s->args);
                if (!want) {
                        fail(f, "bad args JSON in the script: %s", s->args);
                        goto out;
                }
        }
        if (!json_object_equal(args, want)) {
                fail(f, "command '%s' with other arguments than %s: %s", s->text, s->args ? s->args : "none",
                     line);
                goto out;
        }
        if (!json_object_object_get_ex(msg, "id", &id)) {
                fail(f, "command '%s' without an id: %s", s->text, line);
                goto out;
        }
        free(f->last_id);
        f->last_id = strdup(json_object_to_json_string_ext(id, JSON_C_TO_STRING_PLAIN));
        if (s->fd_content) {
                char *got;

                if (f->n_fds == 0) {
                        fail(f, "command '%s' came without an fd", s->text);
                        goto out;
                }
                got = fd_contents(f->fds[0]);
                close(f->fds[0]);
                memmove(f->fds, f->fds + 1, (--f->n_fds) * sizeof(int));
                if (strcmp(got, s->fd_content) != 0) {
                        fail(f, "the fd with '%s' holds '%s', not '%s'", s->text, got, s->fd_content);
                        free(got);
                        goto out;
                }
                free(got);
        } else if (f->n_fds > 0) {
                fail(f, "command '%s' came with an unexpected fd", s->text);
                goto out;
        }
        ok = true;
out:
        free(line);
        json_object_put(msg);
        json_object_put(want);
        return ok;
}

static bool send_text(struct fakeqmp *f, const struct fakeqmp_step *s) {
        size_t n = s->len ? s->len : strlen(s->text), id_len = f->last_id ? strlen(f->last_id) : 0;
        char *out = malloc(n * (id_len + 1) + 1), *o = out;
        bool ok;

        if (!out)
                return false;
        for (size_t i = 0; i < n; i++) {
                if (i + 3 <= n && memcmp(s->text + i, "$ID", 3) == 0 && f->last_id) {
                        memcpy(o, f->last_id, id_len);
                        o += id_len;
                        i += 2;
                } else
                        *o++ = s->text[i];
        }
        ok = write_all(f, out, (size_t) (o - out));
        free(out);
        return ok;
}

static bool stopping(struct fakeqmp *f) {
        bool s;

        pthread_mutex_lock(&f->lock);
        s = f->stop;
        pthread_mutex_unlock(&f->lock);
        return s;
}

static void run_script(struct fakeqmp *f) {
        for (;; f->step++) {
                const struct fakeqmp_step *s = &f->script[f->step];
                char *line = NULL;
                int r;

                switch (s->op) {
                case FQ_SEND:
                        /* a client that already hung up is the test's business, not ours */
                        send_text(f, s);
                        break;
                case FQ_EXPECT:
                        if (!expect(f, s))
                                return;
                        break;
                case FQ_PAUSE:
                        pthread_mutex_lock(&f->lock);
                        f->paused = true;
                        pthread_cond_broadcast(&f->cond);
                        while (!f->go && !f->stop)
                                pthread_cond_wait(&f->cond, &f->lock);
                        f->go = false;
                        f->paused = false;
                        pthread_mutex_unlock(&f->lock);
                        break;
                case FQ_HANGUP:
                        return;
                case FQ_SILENCE:
                        do
                                f->buf_len = 0;
                        while (read_more(f) > 0);
                        return;
                case FQ_FLOOD:
                        while (!stopping(f) && write_all(f, s->text, strlen(s->text)))
                                ;
                        return;
                case FQ_END:
                        r = read_line(f, &line);
                        if (r > 0) {
                                fail(f, "unexpected message after the end of the script: %s", line);
                                free(line);
                        } else if (r == 0 && f->buf_len > 0)
                                fail(f, "unexpected bytes after the end of the script: %.*s", (int) f->buf_len,
                                     f->buf);
                        return;
                }
        }
}

static void *serve(void *arg) {
        struct fakeqmp *f = arg;

        if (f->listen_fd >= 0) {
                f->fd = accept4(f->listen_fd, NULL, NULL, SOCK_CLOEXEC);
                close(f->listen_fd);
                f->listen_fd = -1;
                if (f->fd < 0)
                        fail(f, "accept: %s", strerror(errno));
        }
        if (f->fd >= 0) {
                run_script(f);
                shutdown(f->fd, SHUT_RDWR);
        }
        pthread_mutex_lock(&f->lock);
        f->done = true;
        pthread_cond_broadcast(&f->cond);
        pthread_mutex_unlock(&f->lock);
        return NULL;
}

static struct fakeqmp *start(const struct fakeqmp_step *script, int fd, int listen_fd) {
        struct fakeqmp *f = calloc(1, sizeof(*f));

        if (!f)
                abort();
        f->script = script;
        f->fd = fd;
        f->listen_fd = listen_fd;
        pthread_mutex_init(&f->lock, NULL);
        pthread_cond_init(&f->cond, NULL);
        if (pthread_create(&f->thread, NULL, serve, f) != 0)
                abort();
        return f;
}

struct fakeqmp *fakeqmp_start(const struct fakeqmp_step *script, int *ret_client_fd) {
        int sv[2];

        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
                abort();
        *ret_client_fd = sv[0];
        return start(script, sv[1], -1);
}

struct fakeqmp *fakeqmp_start_unix(const struct fakeqmp_step *script, const char *path) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        int fd;

        if (strlen(path) >= sizeof(sa.sun_path))
                abort();
        strcpy(sa.sun_path, path);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0 || bind(fd, (struct sockaddr *) &sa, sizeof(sa)) < 0 || listen(fd, 4) < 0)
                abort();
        return start(script, -1, fd);
}

void fakeqmp_wait_paused(struct fakeqmp *f) {
        pthread_mutex_lock(&f->lock);
        while (!f->paused && !f->done)
                pthread_cond_wait(&f->cond, &f->lock);
        pthread_mutex_unlock(&f->lock);
}

void fakeqmp_resume(struct fakeqmp *f) {
        pthread_mutex_lock(&f->lock);
        f->go = true;
        f->paused = false;
        pthread_cond_broadcast(&f->cond);
        pthread_mutex_unlock(&f->lock);
}

char *fakeqmp_finish(struct fakeqmp *f) {
        struct timespec deadline;
        char *failure;
        bool cut = false;

        clock_gettime(CLOCK_REALTIME, &deadline);
        deadline.tv_sec += 10;
        pthread_mutex_lock(&f->lock);
        while (!f->done)
                if (pthread_cond_timedwait(&f->cond, &f->lock, &deadline) == ETIMEDOUT)
                        break;
        if (!f->done) {
                cut = true;
                f->stop = true;
                pthread_cond_broadcast(&f->cond);
                /* unblock a read, write or accept */
                if (f->fd >= 0)
                        shutdown(f->fd, SHUT_RDWR);
                if (f->listen_fd >= 0)
                        shutdown(f->listen_fd, SHUT_RDWR);
        }
        pthread_mutex_unlock(&f->lock);
        pthread_join(f->thread, NULL);
        if (cut && !f->failure && asprintf(&f->failure, "fake QMP server: the script did not end (stuck at step %zu)",
                                           f->step) < 0)
                f->failure = NULL;
        failure = f->failure;
        if (f->fd >= 0)
                close(f->fd);
        for (size_t i = 0; i < f->n_fds; i++)
                close(f->fds[i]);
        free(f->last_id);
        pthread_mutex_destroy(&f->lock);
        pthread_cond_destroy(&f->cond);
        free(f);
        return failure;
}
