/* supervisor/events.c on a real loop and real sockets: the bounded queue, LOST, the cap,
 * the events kept for a late request, a subscriber that hangs up. */
#include "config.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "common/evloop.h"
#include "common/util.h"
#include "supervisor/events.h"

#define UUID "0b7c6e4a-3f0e-4d5c-9a1b-2c3d4e5f6a7b"

static struct evloop *loop;
static struct events *ev;

static void setup(void) {
        vmsup_error *err = NULL;

        cr_assert_eq(evloop_new(&loop, &err), 0);
        cr_assert_eq(events_new(loop, UUID, "web1", &ev, &err), 0);
}

static void teardown(void) {
        ev = events_free(ev);
        loop = evloop_free(loop);
}

TestSuite(eventstream, .init = setup, .fini = teardown, .timeout = 60);

/* A subscriber: returns the client's end. */
static int subscribe(int64_t since) {
        vmsup_error *err = NULL;
        int sv[2];

        cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv), 0);
        cr_assert_eq(events_subscribe(ev, sv[1], json_object_new_object(), since, &err), 0, "%s",
                     err ? err->msg : "");
        return sv[0];
}

static void emit(const char *event, int i) {
        json_object *d = json_object_new_object();

        json_object_object_add(d, "i", json_object_new_int(i));
        events_emit(ev, event, d);
}

/* The next line the client has, running the loop meanwhile; NULL when none came within
 * 2 s or the stream ended. */
static char *next_line(int fd) {
        static char buf[70000];
        static size_t len;
        static int last_fd = -1;
        long deadline = monotonic_ms() + 2000;

        if (fd != last_fd)
                len = 0; /* another client's stream */
        last_fd = fd;
        for (;;) {
                char *nl = memchr(buf, '\n', len);
                ssize_t n;

                if (nl) {
                        static char line[70000];
                        size_t l = (size_t) (nl - buf);

                        memcpy(line, buf, l);
                        line[l] = '\0';
                        memmove(buf, nl + 1, len - l - 1);
                        len -= l + 1;
                        return line;
                }
                evloop_iterate(loop, 10, NULL);
                n = read(fd, buf + len, sizeof(buf) - len);
                if (n == 0)
                        return NULL;
                if (n > 0)
                        len += (size_t) n;
                else if (monotonic_ms() > deadline)
                        return NULL;
        }
}

Test(eventstream, a_reader_that_stops_gets_what_was_kept_then_lost_with_the_count) {
        int fd = subscribe(-1);
        long kept = 0, lost = -1;
        char *line;
        json_object *o, *v;

        line = next_line(fd);
        cr_assert(line && strstr(line, "\"ok\":true"), "%s", line ? line : "(none)");
        for (int i = 0; i < 3000; i++)
                emit("PAUSED", i); /* nobody reads meanwhile: the supervisor never waits */
        while (lost < 0 && (line = next_line(fd))) {
                o = json_tokener_parse(line);
                cr_assert(o && json_object_object_get_ex(o, "event", &v), "%s", line);
                if (streq(json_object_get_string(v), "LOST")) {
                        cr_assert(json_object_object_get_ex(o, "count", &v), "%s", line);
                        lost = json_object_get_int64(v);
                } else {
                        cr_assert(json_object_object_get_ex(o, "i", &v));
                        cr_assert_eq(json_object_get_int(v), kept, "lines out of order: %s", line);
                        kept++;
                }
                json_object_put(o);
        }
        cr_assert_geq(lost, 1, "no LOST line (kept %ld)", kept);
        cr_assert_eq(kept + lost, 3000, "kept %ld, lost %ld", kept, lost);
        /* at most the queue and what the kernel held */
        cr_assert_lt(kept, 3000 / 2, "kept %ld: the queue is not bounded", kept);
        cr_assert(strstr(line, "\"uuid\":\"" UUID "\"") && strstr(line, "\"name\":\"web1\""), "%s", line);

        emit("RESUMED", 4000);
        line = next_line(fd);
        cr_assert(line && strstr(line, "\"event\":\"RESUMED\"") && strstr(line, "\"i\":4000"), "%s",
                  line ? line : "(none)");
        close(fd);
}

Test(eventstream, lines_have_the_time_in_utc_and_the_details) {
        int fd = subscribe(-1);
        char *line, when[32];
        time_t now = time(NULL);
        struct tm tm;

        next_line(fd);
        events_emit_reason(ev, "STOPPED", "shutdown");
        line = next_line(fd);
        cr_assert_not_null(line);
        gmtime_r(&now, &tm);
        strftime(when, sizeof(when), "\"time\":\"%Y-%m-%dT", &tm);
        cr_assert(strstr(line, "{\"event\":\"STOPPED\",\"time\":\"") == line && strstr(line, when) &&
                          strstr(line, "Z\",\"uuid\":\"" UUID "\",\"name\":\"web1\",\"reason\":\"shutdown\"}"),
                  "%s", line);
        close(fd);
}

Test(eventstream, sixteen_subscribers_at_most) {
        int fds[EVENTS_MAX_SUBSCRIBERS], sv[2];
        vmsup_error *err = NULL;
        char buf[512] = "";
        ssize_t n;

        for (int i = 0; i < EVENTS_MAX_SUBSCRIBERS; i++)
                fds[i] = subscribe(-1);
        cr_assert_eq(events_count(ev), EVENTS_MAX_SUBSCRIBERS);
        cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
        cr_assert_lt(events_subscribe(ev, sv[1], json_object_new_object(), -1, &err), 0);
        cr_assert_eq(err->kind, VMSUP_ERR_BUSY);
        vmsup_error_free(err);
        n = read(sv[0], buf, sizeof(buf) - 1);
        cr_assert_gt(n, 0);
        cr_assert(strstr(buf, "\"ok\":false") && strstr(buf, "too many event subscribers (16)") &&
                          strstr(buf, "\"kind\":\"busy\""),
                  "%s", buf);
        close(sv[0]);
        /* one goes: it hung up, and the next is taken */
        close(fds[0]);
        for (int i = 0; i < 10 && events_count(ev) == EVENTS_MAX_SUBSCRIBERS; i++)
                evloop_iterate(loop, 100, NULL);
        cr_assert_eq(events_count(ev), EVENTS_MAX_SUBSCRIBERS - 1, "a subscriber that hung up stays");
        fds[0] = subscribe(-1);
        for (int i = 0; i < EVENTS_MAX_SUBSCRIBERS; i++)
                close(fds[i]);
}

/* A request that waited (the loop was held) gets what was emitted since its client
 * connected; without "since", nothing old. */
Test(eventstream, the_events_since_the_client_connected_come_first) {
        struct timespec ts;
        int64_t before;
        int fd;
        char *line;

        clock_gettime(CLOCK_REALTIME, &ts);
        before = (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
        events_emit_reason(ev, "STARTED", "boot");
        emit("PAUSED", 1);

        fd = subscribe(before);
        cr_assert(strstr(next_line(fd), "\"ok\":true"));
        line = next_line(fd);
        cr_assert(line && strstr(line, "\"event\":\"STARTED\""), "%s", line ? line : "(none)");
        line = next_line(fd);
        cr_assert(line && strstr(line, "\"event\":\"PAUSED\""), "%s", line ? line : "(none)");
        close(fd);

        fd = subscribe(-1);
        cr_assert(strstr(next_line(fd), "\"ok\":true"));
        emit("RESUMED", 2);
        line = next_line(fd);
        cr_assert(line && strstr(line, "\"event\":\"RESUMED\""), "nothing older: %s", line ? line : "(none)");
        close(fd);

        fd = subscribe(before + 3600 * 1000);
        cr_assert(strstr(next_line(fd), "\"ok\":true"));
        cr_assert_null(next_line(fd));
        close(fd);
}
