#include "config.h"

/* The event stream's subscribers: a bounded queue each, written without blocking. */

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "common/util.h"
#include "supervisor/events.h"

/* The kernel holds little for a subscriber: the queue, not the socket, is where a slow
 * reader's backlog shows (and is bounded). */
#define SUBSCRIBER_SNDBUF (16 * 1024)

struct line {
        struct line *next;
        size_t len, off; /* off: sent already */
        char text[];
};

struct subscriber {
        struct events *ev;
        struct subscriber *next;
        int fd;
        struct evloop_source *src;
        struct line *head, *tail;
        size_t n_lines, n_bytes;
        uint64_t lost; /* events dropped since the last LOST marker */
};

struct past {
        int64_t at_ms; /* CLOCK_REALTIME */
        char *text;
};

struct events {
        struct evloop *loop;
        char *uuid, *name;
        struct subscriber *subs;
        size_t n_subs;
        /* the last events, for a subscriber that connected before we could take it */
        struct past history[EVENTS_HISTORY];
        size_t n_history, next; /* next: where the next one goes (a ring) */
};

static int64_t realtime_ms(void) {
        struct timespec ts;

        clock_gettime(CLOCK_REALTIME, &ts);
        return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void remember(struct events *ev, const char *text) {
        struct past *p = &ev->history[ev->next];
        char *copy = strdup(text);

        if (!copy)
                return;
        free(p->text);
        p->text = copy;
        p->at_ms = realtime_ms();
        ev->next = (ev->next + 1) % EVENTS_HISTORY;
        if (ev->n_history < EVENTS_HISTORY)
                ev->n_history++;
}

static void sub_free(struct subscriber *s) {
        while (s->head) {
                struct line *l = s->head;

                s->head = l->next;
                free(l);
        }
        s->src = evloop_source_remove(s->src);
        closep(&s->fd);
        free(s);
}

static void sub_drop(struct subscriber *s) {
        struct events *ev = s->ev;

        for (struct subscriber **pp = &ev->subs; *pp; pp = &(*pp)->next)
                if (*pp == s) {
                        *pp = s->next;
                        ev->n_subs--;
                        break;
                }
        sub_free(s);
}

static bool room_for(const struct subscriber *s, size_t lines, size_t bytes) {
        return s->n_lines + lines <= EVENTS_QUEUE_LINES && s->n_bytes + bytes <= EVENTS_QUEUE_BYTES;
}

/* text and a newline at the end of the queue; false without memory (counted as lost) */
static bool push(struct subscriber *s, const char *text, size_t len) {
        struct line *l = malloc(sizeof(*l) + len + 2);

        if (!l)
                return false;
        memcpy(l->text, text, len);
        l->text[len] = '\n';
        l->text[len + 1] = '\0';
        l->len = len + 1;
        l->off = 0;
        l->next = NULL;
        if (s->tail)
                s->tail->next = l;
        else
                s->head = l;
        s->tail = l;
        s->n_lines++;
        s->n_bytes += l->len;
        return true;
}

static void stamp(char *buf, size_t size) {
        struct tm tm;
        time_t now = time(NULL);

        if (!gmtime_r(&now, &tm) || strftime(buf, size, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
                snprintf(buf, size, "?");
}

/* {"event", "time", "uuid", "name"} and the members of details (taken) as one line. */
static char *event_line(const struct events *ev, const char *event, json_object *details, size_t *ret_len) {
        _cleanup_json_ json_object *o = json_object_new_object();
        char when[32];
        char *text;

        stamp(when, sizeof(when));
        if (!o) {
                json_object_put(details);
                return NULL;
        }
        json_object_object_add(o, "event", json_object_new_string(event));
        json_object_object_add(o, "time", json_object_new_string(when));
        json_object_object_add(o, "uuid", json_object_new_string(ev->uuid));
        json_object_object_add(o, "name", json_object_new_string(ev->name));
        if (details) {
                json_object_object_foreach(details, k, v)
                        json_object_object_add(o, k, json_object_get(v));
                json_object_put(details);
        }
        text = strdup(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
        if (text)
                *ret_len = strlen(text);
        return text;
}

/* The LOST marker, when it fits now (extra: room to keep for a line that follows it). */
static void push_lost(struct subscriber *s, size_t extra_lines, size_t extra_bytes) {
        _cleanup_free_ char *text = NULL;
        json_object *d;
        size_t len = 0;

        if (!s->lost || !room_for(s, 1 + extra_lines, 256 + extra_bytes))
                return;
        d = json_object_new_object();
        if (d)
                json_object_object_add(d, "count", json_object_new_int64((int64_t) s->lost));
        text = event_line(s->ev, "LOST", d, &len);
        if (text && push(s, text, len))
                s->lost = 0;
}

/* Write what the socket takes now; false when the subscriber is gone (dropped). Then the
 * source waits for EPOLLOUT only while something is left. */
static bool flush(struct subscriber *s) {
        while (s->head) {
                struct line *l = s->head;
                ssize_t n = send(s->fd, l->text + l->off, l->len - l->off, MSG_NOSIGNAL | MSG_DONTWAIT);

                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                        break;
                if (n <= 0) {
                        sub_drop(s);
                        return false;
                }
                l->off += (size_t) n;
                if (l->off < l->len)
                        continue;
                s->head = l->next;
                if (!s->head)
                        s->tail = NULL;
                s->n_lines--;
                s->n_bytes -= l->len;
                free(l);
                /* it reads again: it hears what it missed before anything newer */
                push_lost(s, 0, 0);
        }
        if (s->src && evloop_io_set_events(s->src, EPOLLIN | (s->head ? EPOLLOUT : 0), NULL) < 0) {
                sub_drop(s);
                return false;
        }
        return true;
}

static void on_sub_io(struct evloop_source *src, int fd, uint32_t revents, void *userdata) {
        struct subscriber *s = userdata;

        (void) src;
        if (revents & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
                char buf[512];
                ssize_t n = read(fd, buf, sizeof(buf));

                /* a subscriber has nothing more to say: what it sends is dropped, its
                 * end of file (or an error) ends it */
                if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
                        sub_drop(s);
                        return;
                }
        }
        if (revents & EPOLLOUT)
                flush(s);
}

static void deliver(struct subscriber *s, const char *text, size_t len) {
        push_lost(s, 1, len + 1);
        if (s->lost || !room_for(s, 1, len + 1) || !push(s, text, len)) {
                s->lost++;
                return;
        }
        flush(s);
}

int events_new(struct evloop *loop, const char *uuid, const char *name, struct events **ret, vmsup_error **err) {
        struct events *ev = calloc(1, sizeof(*ev));

        if (!ev || !(ev->uuid = strdup(uuid)) || !(ev->name = strdup(name ? name : ""))) {
                events_free(ev);
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "event stream");
        }
        ev->loop = loop;
        *ret = ev;
        return 0;
}

struct events *events_free(struct events *ev) {
        if (!ev)
                return NULL;
        while (ev->subs) {
                struct subscriber *s = ev->subs;

                ev->subs = s->next;
                s->src = evloop_source_remove(s->src);
                /* the last lines (STOPPED) go if the socket takes them now: never a wait */
                while (s->head) {
                        struct line *l = s->head;
                        ssize_t n = send(s->fd, l->text + l->off, l->len - l->off, MSG_NOSIGNAL | MSG_DONTWAIT);

                        if (n <= 0 || (size_t) n < l->len - l->off)
                                break;
                        s->head = l->next;
                        free(l);
                }
                shutdown(s->fd, SHUT_RDWR);
                sub_free(s);
        }
        for (size_t i = 0; i < EVENTS_HISTORY; i++)
                free(ev->history[i].text);
        free(ev->uuid);
        free(ev->name);
        free(ev);
        return NULL;
}

/* {"ok": false, ...} to a client we do not take, then close */
static void refuse(int fd, const char *msg) {
        _cleanup_json_ json_object *o = json_object_new_object();
        const char *text;

        json_object_object_add(o, "ok", json_object_new_boolean(0));
        json_object_object_add(o, "error", json_object_new_string(msg));
        json_object_object_add(o, "kind", json_object_new_string(vmsup_err_kind_to_string(VMSUP_ERR_BUSY)));
        text = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
        (void) !send(fd, text, strlen(text), MSG_NOSIGNAL | MSG_DONTWAIT);
        (void) !send(fd, "\n", 1, MSG_NOSIGNAL | MSG_DONTWAIT);
        shutdown(fd, SHUT_RDWR);
        close(fd);
}

int events_subscribe(struct events *ev, int fd, json_object *hello, int64_t since_ms, vmsup_error **err) {
        _cleanup_json_ json_object *reply = json_object_new_object();
        struct subscriber *s;
        const char *text;
        int sndbuf = SUBSCRIBER_SNDBUF, r;

        if (ev->n_subs >= EVENTS_MAX_SUBSCRIBERS) {
                char msg[96];

                json_object_put(hello);
                snprintf(msg, sizeof(msg), "too many event subscribers (%d); try again later", EVENTS_MAX_SUBSCRIBERS);
                refuse(fd, msg);
                return vmsup_fail(err, VMSUP_ERR_BUSY, EBUSY, "event subscriber refused");
        }
        s = calloc(1, sizeof(*s));
        if (!s || !reply) {
                json_object_put(hello);
                free(s);
                close(fd);
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "event subscriber");
        }
        s->ev = ev;
        s->fd = fd;
        (void) setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
        json_object_object_add(reply, "ok", json_object_new_boolean(1));
        json_object_object_add(reply, "return", hello);
        text = json_object_to_json_string_ext(reply, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
        if (!push(s, text, strlen(text))) {
                sub_free(s);
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "event subscriber");
        }
        /* what happened since it connected (the oldest first) */
        for (size_t i = 0; since_ms >= 0 && i < ev->n_history; i++) {
                const struct past *p = &ev->history[(ev->next + EVENTS_HISTORY - ev->n_history + i) % EVENTS_HISTORY];

                if (p->at_ms >= since_ms && room_for(s, 1, strlen(p->text) + 1))
                        push(s, p->text, strlen(p->text));
        }
        if ((r = evloop_add_io(ev->loop, fd, EPOLLIN | EPOLLOUT, on_sub_io, s, &s->src, err)) < 0) {
                sub_free(s);
                return r;
        }
        s->next = ev->subs;
        ev->subs = s;
        ev->n_subs++;
        flush(s);
        return 0;
}

void events_emit(struct events *ev, const char *event, json_object *details) {
        _cleanup_free_ char *text = NULL;
        struct subscriber *next;
        size_t len = 0;

        if (!ev) {
                json_object_put(details);
                return;
        }
        text = event_line(ev, event, details, &len);
        if (text)
                remember(ev, text);
        for (struct subscriber *s = ev->subs; s; s = next) {
                next = s->next; /* deliver() may drop s */
                if (text)
                        deliver(s, text, len);
                else
                        s->lost++;
        }
}

void events_emit_reason(struct events *ev, const char *event, const char *reason) {
        json_object *d = NULL;

        if (reason && (d = json_object_new_object()))
                json_object_object_add(d, "reason", json_object_new_string(reason));
        events_emit(ev, event, d);
}

size_t events_count(const struct events *ev) {
        return ev ? ev->n_subs : 0;
}
