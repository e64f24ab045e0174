#include "config.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "tests/fakehttp.h"

#define MAX_REQUESTS 32

struct fakehttp {
        const struct fakehttp_reply *script;
        size_t n;
        int listen_fd;
        int stop_pipe[2];
        char url[64];
        pthread_t thread;
        pthread_mutex_t lock;
        char *requests[MAX_REQUESTS];
        size_t count;
};

/* Wait until fd is readable or the test stops us; false when stopping. */
static int wait_readable(struct fakehttp *f, int fd) {
        struct pollfd p[2] = { { .fd = fd, .events = POLLIN }, { .fd = f->stop_pipe[0], .events = POLLIN } };

        for (;;) {
                if (poll(p, 2, -1) < 0) {
                        if (errno == EINTR)
                                continue;
                        return 0;
                }
                if (p[1].revents)
                        return 0;
                if (p[0].revents)
                        return 1;
        }
}

/* Read one request (head, then Content-Length bytes of body). NULL on hang-up. */
static char *read_request(struct fakehttp *f, int fd) {
        size_t cap = 1 << 16, len = 0, want = 0;
        char *buf = malloc(cap + 1), *end = NULL;

        cr_assert_not_null(buf);
        for (;;) {
                ssize_t n;

                if (end && len >= want)
                        break;
                if (!wait_readable(f, fd))
                        goto fail;
                n = read(fd, buf + len, cap - len);
                if (n <= 0)
                        goto fail;
                len += (size_t) n;
                buf[len] = '\0';
                if (!end && (end = strstr(buf, "\r\n\r\n"))) {
                        const char *cl = strcasestr(buf, "\r\nContent-Length:");

                        want = (size_t) (end + 4 - buf);
                        if (cl && cl < end)
                                want += strtoul(cl + 17, NULL, 10);
                }
                if (len == cap)
                        goto fail;
        }
        return buf;
fail:
        free(buf);
        return NULL;
}

static void write_all(int fd, const char *s, size_t len) {
        while (len > 0) {
                ssize_t n = send(fd, s, len, MSG_NOSIGNAL);

                if (n < 0 && errno == EINTR)
                        continue;
                if (n <= 0)
                        return;
                s += n;
                len -= (size_t) n;
        }
}

/* raw with $URL and $LEN replaced. */
static char *expand(const struct fakehttp *f, const char *raw) {
        size_t cap = strlen(raw) * 2 + 256, o = 0;
        char *out = malloc(cap), *head_end, *len_at;
        char num[32];

        cr_assert_not_null(out);
        for (const char *p = raw; *p;) {
                if (strncmp(p, "$URL", 4) == 0) {
                        o += (size_t) snprintf(out + o, cap - o, "%s", f->url);
                        p += 4;
                } else
                        out[o++] = *p++;
                cr_assert(o < cap - 64);
        }
        out[o] = '\0';
        len_at = strstr(out, "$LEN");
        head_end = strstr(out, "\r\n\r\n");
        if (len_at && head_end) {
                size_t body = strlen(head_end + 4);
                char *fixed = NULL;

                snprintf(num, sizeof(num), "%zu", body);
                *len_at = '\0';
                cr_assert(asprintf(&fixed, "%s%s%s", out, num, len_at + 4) > 0);
                free(out);
                out = fixed;
        }
        return out;
}

static void serve_one(struct fakehttp *f, int fd) {
        const struct fakehttp_reply *r;
        char *req = read_request(f, fd), *text;
        size_t i;

        if (!req)
                return;
        pthread_mutex_lock(&f->lock);
        i = f->count;
        if (f->count < MAX_REQUESTS)
                f->requests[f->count++] = req;
        else
                free(req);
        pthread_mutex_unlock(&f->lock);
        r = &f->script[i < f->n ? i : f->n - 1];
        if (r->hang) {
                char c;

                while (wait_readable(f, fd) && read(fd, &c, 1) > 0)
                        ;
                return;
        }
        text = expand(f, r->raw);
        write_all(fd, text, strlen(text));
        free(text);
        if (r->flood) {
                static char chunk[4096];

                memset(chunk, 'A', sizeof(chunk));
                for (size_t sent = 0; sent < r->flood; sent += sizeof(chunk)) {
                        struct pollfd p = { .fd = fd, .events = POLLOUT };

                        if (poll(&p, 1, 2000) <= 0 || (p.revents & (POLLERR | POLLHUP)))
                                break;
                        if (send(fd, chunk, sizeof(chunk), MSG_NOSIGNAL) <= 0)
                                break;
                }
        }
}

static void *serve(void *arg) {
        struct fakehttp *f = arg;

        while (wait_readable(f, f->listen_fd)) {
                int fd = accept4(f->listen_fd, NULL, NULL, SOCK_CLOEXEC);

                if (fd < 0)
                        continue;
                serve_one(f, fd);
                shutdown(fd, SHUT_WR);
                close(fd);
        }
        return NULL;
}

struct fakehttp *fakehttp_start(const struct fakehttp_reply *script, size_t n) {
        struct fakehttp *f = calloc(1, sizeof(*f));
        struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        socklen_t alen = sizeof(a);

        cr_assert_not_null(f);
        cr_assert(n > 0);
        f->script = script;
        f->n = n;
        pthread_mutex_init(&f->lock, NULL);
        cr_assert_eq(pipe2(f->stop_pipe, O_CLOEXEC), 0);
        f->listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        cr_assert(f->listen_fd >= 0);
        cr_assert_eq(bind(f->listen_fd, (struct sockaddr *) &a, sizeof(a)), 0);
        cr_assert_eq(listen(f->listen_fd, 16), 0);
        cr_assert_eq(getsockname(f->listen_fd, (struct sockaddr *) &a, &alen), 0);
        snprintf(f->url, sizeof(f->url), "http://127.0.0.1:%u", ntohs(a.sin_port));
        cr_assert_eq(pthread_create(&f->thread, NULL, serve, f), 0);
        return f;
}

const char *fakehttp_url(const struct fakehttp *f) {
        return f->url;
}

size_t fakehttp_count(struct fakehttp *f) {
        size_t n;

        pthread_mutex_lock(&f->lock);
        n = f->count;
        pthread_mutex_unlock(&f->lock);
        return n;
}

char *fakehttp_request(struct fakehttp *f, size_t i) {
        char *copy = NULL;

        pthread_mutex_lock(&f->lock);
        if (i < f->count)
                copy = strdup(f->requests[i]);
        pthread_mutex_unlock(&f->lock);
        return copy;
}

char *fakehttp_request_body(struct fakehttp *f, size_t i) {
        char *req = fakehttp_request(f, i), *body, *copy;

        if (!req)
                return NULL;
        body = strstr(req, "\r\n\r\n");
        copy = strdup(body ? body + 4 : "");
        free(req);
        return copy;
}

void fakehttp_stop(struct fakehttp *f) {
        if (!f)
                return;
        (void) !write(f->stop_pipe[1], "x", 1);
        pthread_join(f->thread, NULL);
        close(f->listen_fd);
        close(f->stop_pipe[0]);
        close(f->stop_pipe[1]);
        for (size_t i = 0; i < f->count && i < MAX_REQUESTS; i++)
                free(f->requests[i]);
        pthread_mutex_destroy(&f->lock);
        free(f);
}
