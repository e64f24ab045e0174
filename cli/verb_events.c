#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"
#include "common/util.h"
#include "common/vtpm.h"
#include "cli/verbs.h"

/* For every guest: the run dir is looked at again this often (ms) for guests that
 * started since. */
#define EVENTS_RESCAN_MS 2000
/* A line longer than this is not one of ours. */
#define EVENTS_MAX_LINE (64 * 1024)
/* A guest whose supervisor sends nothing at all this long after our request (ms): its
 * stream is given up (one UUID: an error; every guest: tried again at a rescan). */
#define EVENTS_HELLO_TIMEOUT_MS 10000

static void help(void) {
        printf("Usage: vmsup events [UUID] [--json]\n"
               "\n"
               "Print the lifecycle events of one guest, or of every guest running on this\n"
               "host, one line each as they happen:\n"
               "  2026-12-07T15:00:00Z UUID NAME EVENT [key=value ...]\n"
               "or the supervisor's JSON line with --json. Events: STARTED, STOPPED, PAUSED,\n"
               "RESUMED, SUSPENDED (Nova's), CRASHED, MIGRATION_STARTED, MIGRATION_COMPLETED,\n"
               "MIGRATION_FAILED, TPM_STATE_SEALED, and LOST (count=N: events this reader\n"
               "missed because it did not read fast enough); see vmsup(8), events.\n"
               "\n"
               "With a UUID: until the guest's supervisor ends. Without: every supervisor\n"
               "in the run dir, which is looked at again every 2 s for guests that start\n"
               "later, until interrupted.\n"
               "\n"
               "Exit status: 0 the guest ended (its last event STOPPED); 69 the guest is not\n"
               "running under vmsup, or its supervisor went away before the guest stopped;\n"
               "75 the supervisor has too many subscribers.\n");
}

static int64_t realtime_ms(void) {
        struct timespec ts;

        clock_gettime(CLOCK_REALTIME, &ts);
        return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

struct stream {
        char uuid[40];
        int fd;
        char *buf;
        size_t len;
        bool hello;    /* the supervisor's {"ok": true} came */
        long since;    /* when we asked (monotonic ms) */
        char last[32]; /* the last event's name */
        bool warned;   /* a refusal was said once already */
};

static void stream_close(struct stream *s) {
        closep(&s->fd);
        s->fd = -1;
        free(s->buf);
        s->buf = NULL;
        s->len = 0;
        s->hello = false;
}

/* Connect to the guest's control socket and ask for its events; a supervisor's connect
 * either takes us at once or not at all (never a wait). */
static int stream_open(struct stream *s, const char *run_dir, int64_t since_ms, vmsup_error **err) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        _cleanup_close_ int fd = -1;
        char req[96];
        int len;

        if ((size_t) snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/%s/control.sock", run_dir, s->uuid) >=
            sizeof(sa.sun_path))
                return vmsup_fail(err, VMSUP_ERR_CONFIG, ENAMETOOLONG, "control socket of guest %s", s->uuid);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, errno, "socket");
        if (connect(fd, (struct sockaddr *) &sa, sizeof(sa)) < 0)
                return vmsup_fail(err,
                                  errno == ENOENT || errno == ECONNREFUSED ? VMSUP_ERR_NO_SUPERVISOR
                                  : errno == EAGAIN                        ? VMSUP_ERR_BUSY
                                                                           : VMSUP_ERR_DENIED,
                                  errno, "guest %s is not running under vmsup: connect to '%s'", s->uuid,
                                  sa.sun_path);
        /* since: the events from now on, also those the supervisor emits before it takes
         * our request (it may be busy starting the guest) */
        len = snprintf(req, sizeof(req), "{\"cmd\":\"events\",\"since\":%" PRId64 "}\n", since_ms);
        if (send(fd, req, (size_t) len, MSG_NOSIGNAL) != (ssize_t) len)
                return vmsup_fail(err, VMSUP_ERR_IO, errno, "send to the supervisor of guest %s", s->uuid);
        s->fd = TAKE_FD(fd);
        s->since = monotonic_ms();
        return 0;
}

static void print_event(json_object *o, const char *line, bool json) {
        const char *skip[] = { "event", "time", "uuid", "name" };
        json_object *v;

        if (json) {
                printf("%s\n", line);
                fflush(stdout);
                return;
        }
        printf("%s %s %s %s", json_object_object_get_ex(o, "time", &v) ? json_object_get_string(v) : "-",
               json_object_object_get_ex(o, "uuid", &v) ? json_object_get_string(v) : "-",
               json_object_object_get_ex(o, "name", &v) ? json_object_get_string(v) : "-",
               json_object_object_get_ex(o, "event", &v) ? json_object_get_string(v) : "?");
        json_object_object_foreach(o, key, val) {
                bool known = false;

                for (size_t i = 0; i < ARRAY_SIZE(skip); i++)
                        known = known || streq(key, skip[i]);
                if (!known)
                        printf(" %s=%s", key, val ? json_object_get_string(val) : "null");
        }
        printf("\n");
        fflush(stdout);
}

/* One line from the supervisor: its answer to our request first, then events. <0: the
 * stream ends with *err. */
static int handle_line(struct stream *s, char *line, bool json, vmsup_error **err) {
        _cleanup_json_ json_object *o = json_tokener_parse(line);
        json_object *v;

        if (!o || !json_object_is_type(o, json_type_object))
                return vmsup_fail(err, VMSUP_ERR_DATA, 0, "guest %s: the supervisor sent a line that is not JSON",
                                  s->uuid);
        if (!s->hello) {
                if (!json_object_object_get_ex(o, "ok", &v))
                        return vmsup_fail(err, VMSUP_ERR_DATA, 0, "guest %s: the supervisor's reply is not understood",
                                          s->uuid);
                if (!json_object_get_boolean(v)) {
                        json_object *kind, *msg;

                        return vmsup_fail(err,
                                          json_object_object_get_ex(o, "kind", &kind)
                                                  ? vmsup_err_kind_from_string(json_object_get_string(kind))
                                                  : VMSUP_ERR_FAILED,
                                          0, "guest %s: %s", s->uuid,
                                          json_object_object_get_ex(o, "error", &msg) ? json_object_get_string(msg)
                                                                                      : "refused");
                }
                s->hello = true;
                return 0;
        }
        if (json_object_object_get_ex(o, "event", &v))
                snprintf(s->last, sizeof(s->last), "%s", json_object_get_string(v));
        print_event(o, line, json);
        return 0;
}

/* Read what is there. 1: the stream goes on; 0: the supervisor closed it; <0: *err. */
static int stream_read(struct stream *s, bool json, vmsup_error **err) {
        char *nl;
        ssize_t n;
        int r;

        if (!s->buf && !(s->buf = malloc(EVENTS_MAX_LINE + 1)))
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "event stream");
        n = read(s->fd, s->buf + s->len, EVENTS_MAX_LINE - s->len);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
                return 1;
        if (n < 0 && errno != ECONNRESET)
                return vmsup_fail(err, VMSUP_ERR_IO, errno, "read the events of guest %s", s->uuid);
        if (n <= 0)
                return 0;
        s->len += (size_t) n;
        while ((nl = memchr(s->buf, '\n', s->len))) {
                size_t used = (size_t) (nl - s->buf) + 1;

                *nl = '\0';
                if ((r = handle_line(s, s->buf, json, err)) < 0)
                        return r;
                memmove(s->buf, s->buf + used, s->len - used);
                s->len -= used;
        }
        if (s->len == EVENTS_MAX_LINE)
                return vmsup_fail(err, VMSUP_ERR_DATA, 0, "guest %s: an event line longer than %d bytes", s->uuid,
                                  EVENTS_MAX_LINE);
        return 1;
}

/* One guest: until its supervisor closes the stream. */
static int events_one(struct vmsup_ctx *ctx, const char *uuid, bool json, vmsup_error **err) {
        struct stream s = { .fd = -1 };
        int r;

        snprintf(s.uuid, sizeof(s.uuid), "%s", uuid);
        if ((r = stream_open(&s, ctx->cfg.paths.run_dir, realtime_ms(), err)) < 0)
                return r;
        for (;;) {
                struct pollfd p = { .fd = s.fd, .events = POLLIN };
                int k = poll(&p, 1, s.hello ? -1 : EVENTS_HELLO_TIMEOUT_MS);

                if (k < 0 && errno == EINTR)
                        continue;
                if (k < 0) {
                        r = vmsup_fail(err, VMSUP_ERR_IO, errno, "wait for the events of guest %s", uuid);
                        break;
                }
                if (k == 0) {
                        r = vmsup_fail(err, VMSUP_ERR_TIMEOUT, 0, "guest %s: the supervisor did not answer within %d s",
                                       uuid, EVENTS_HELLO_TIMEOUT_MS / 1000);
                        break;
                }
                r = stream_read(&s, json, err);
                if (r < 0)
                        break;
                if (r == 0) {
                        /* the supervisor ends after the guest's STOPPED: anything else is a
                         * supervisor that went away (killed) */
                        r = streq(s.last, "STOPPED") ? 0
                                                     : vmsup_fail(err, VMSUP_ERR_NO_SUPERVISOR, 0,
                                                                  "guest %s: its supervisor closed the event stream "
                                                                  "before the guest stopped",
                                                                  uuid);
                        break;
                }
        }
        stream_close(&s);
        return r;
}

/* Every guest: the run dir's guests with a control socket, looked at again every
 * EVENTS_RESCAN_MS; a stream that ends is dropped (its guest, if it starts again, comes
 * back at a rescan). */
static int events_all(struct vmsup_ctx *ctx, bool json, vmsup_error **err) {
        struct stream *v = NULL;
        struct pollfd *p = NULL;
        size_t n = 0;
        long next_scan = 0;
        int64_t last_scan = -1;

        for (;;) {
                long now = monotonic_ms();
                size_t np = 0;
                int k;

                if (now >= next_scan) {
                        /* a guest found at a rescan: what it did since the last scan (a
                         * guest that was there at the first: from now on) */
                        int64_t scan_at = realtime_ms(), since = last_scan >= 0 ? last_scan : scan_at;

                        DIR *dir = opendir(ctx->cfg.paths.run_dir);
                        struct dirent *de;

                        while (dir && (de = readdir(dir))) {
                                struct stream *nv, *s = NULL;
                                vmsup_error *e = NULL;

                                if (!uuid_is_valid(de->d_name))
                                        continue;
                                for (size_t i = 0; i < n && !s; i++)
                                        if (streq(v[i].uuid, de->d_name))
                                                s = &v[i];
                                if (!s) {
                                        nv = realloc(v, (n + 1) * sizeof(*v));
                                        if (!nv)
                                                break;
                                        v = nv;
                                        s = &v[n++];
                                        *s = (struct stream) { .fd = -1 };
                                        memcpy(s->uuid, de->d_name, 36); /* a valid UUID: 36 characters */
                                        s->uuid[36] = '\0';
                                }
                                if (s->fd >= 0)
                                        continue;
                                s->last[0] = '\0';
                                if (stream_open(s, ctx->cfg.paths.run_dir, since, &e) < 0 &&
                                    e->kind != VMSUP_ERR_NO_SUPERVISOR &&
                                    !s->warned) {
                                        log_warning("%s", e->msg);
                                        s->warned = true;
                                }
                                vmsup_error_free(e);
                        }
                        if (dir)
                                closedir(dir);
                        next_scan = now + EVENTS_RESCAN_MS;
                        last_scan = scan_at;
                }
                free(p);
                p = calloc(n ? n : 1, sizeof(*p));
                if (!p) {
                        free(v);
                        return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "event streams");
                }
                for (size_t i = 0; i < n; i++)
                        p[np++] = (struct pollfd) { .fd = v[i].fd, .events = POLLIN };
                k = poll(p, np, (int) (next_scan - monotonic_ms() > 0 ? next_scan - monotonic_ms() : 0));
                if (k < 0 && errno != EINTR) {
                        int r = vmsup_fail(err, VMSUP_ERR_IO, errno, "wait for events");

                        free(p);
                        for (size_t i = 0; i < n; i++)
                                stream_close(&v[i]);
                        free(v);
                        return r;
                }
                for (size_t i = 0; i < n; i++) {
                        vmsup_error *e = NULL;
                        int r;

                        if (v[i].fd < 0)
                                continue;
                        if (!p[i].revents) {
                                /* a supervisor that took the request and says nothing */
                                if (!v[i].hello && monotonic_ms() - v[i].since > EVENTS_HELLO_TIMEOUT_MS)
                                        stream_close(&v[i]);
                                continue;
                        }
                        r = stream_read(&v[i], json, &e);
                        if (r < 0 && !v[i].warned) {
                                log_warning("%s", e->msg);
                                v[i].warned = true;
                        }
                        if (r <= 0)
                                stream_close(&v[i]);
                        vmsup_error_free(e);
                }
        }
}

int verb_events(struct vmsup_ctx *ctx, int argc, char **argv) {
        static const struct option longopts[] = { { "json", no_argument, NULL, 'j' },
                                                   { "help", no_argument, NULL, 'h' }, {} };
        _cleanup_error_ vmsup_error *err = NULL;
        bool json = false;
        int c, r;

        while ((c = getopt_long(argc, argv, "jh", longopts, NULL)) != -1) {
                if (c == 'j')
                        json = true;
                else if (c == 'h') {
                        help();
                        return 0;
                } else
                        return verb_usage_error("events", "bad option");
        }
        if (argc - optind > 1)
                return verb_usage_error("events", "takes at most one guest UUID");
        if (argc - optind == 1 && !uuid_is_valid(argv[optind]))
                return verb_usage_error("events", "'%s' is not a guest UUID", argv[optind]);
        if (vmsup_ctx_config(ctx, &err) < 0)
                return log_error_kind(err);
        r = argc - optind == 1 ? events_one(ctx, argv[optind], json, &err) : events_all(ctx, json, &err);
        return r < 0 ? log_error_kind(err) : 0;
}
