/* The source's half of a live migration on the loop: see source.h and docs/migration.md. */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/secmem.h"
#include "common/util.h"
#include "migrate/proto.h"
#include "migrate/source.h"

enum src_state {
        SRC_CONNECTING,
        SRC_HANDED_OVER,
        SRC_READY,
        SRC_STREAMING,
        SRC_COMPLETED,
        SRC_PREPARED,
        SRC_MARKED,
        SRC_COMMITTED,
        SRC_DONE,
        SRC_ROLLING_BACK,
        SRC_ROLLED_BACK,
        SRC_UNKNOWN,
};

static const char *const state_names[] = {
        [SRC_CONNECTING] = "connecting", [SRC_HANDED_OVER] = "handed over", [SRC_READY] = "ready",
        [SRC_STREAMING] = "streaming",   [SRC_COMPLETED] = "completed",     [SRC_PREPARED] = "prepared",
        [SRC_MARKED] = "marked",         [SRC_COMMITTED] = "committed",     [SRC_DONE] = "done",
        [SRC_ROLLING_BACK] = "rolling back", [SRC_ROLLED_BACK] = "rolled back", [SRC_UNKNOWN] = "unknown",
};

/* The steps of a rollback, in order; each may be skipped. */
enum rb_step { RB_STATUS, RB_CANCEL, RB_CANCEL_WAIT, RB_GONE_WAIT, RB_RUN_STATE, RB_CONT, RB_END };

struct src_call;

struct migrate_source {
        struct migrate_source_env env;
        enum src_state state;
        unsigned gen; /* the forward path's replies carry it: a rollback moves it on */

        struct migchan *ch;
        bool ch_open;       /* the channel's TCP connect and handshake are through */
        struct evloop_source *ch_src;
        enum mig_msg awaiting; /* the frame the current state waits for; 0: none */
        struct evloop_source *answer_timer, *deadline_timer, *tick_timer, *wait_timer;

        struct migchan_tcp *stream_connecting;
        struct evloop_source *stream_src;
        int stream_fd;      /* our copy of QEMU's migration socket, or -1 */
        int dest_port;
        char port_text[8];

        int ready_step;
        bool was_running;   /* QEMU ran the guest when the migration began (a rollback resumes only then) */
        bool migrating;     /* QEMU's migrate was issued */
        bool migrate_pending; /* its reply is not in yet */
        bool marker;        /* the supervisor wrote the migrated-out marker */
        bool committed;     /* COMMIT sent: the destination may run the guest */
        bool interrupted;
        int interrupt_signo;
        bool qemu_exited;
        bool query_pending; /* a query-migrate of the streaming state is out */
        long query_asked, step_at;
        char qemu_status[24]; /* from QEMU's MIGRATION events */
        int percent;
        struct migrate_source_times times;

        enum rb_step rb;
        bool rb_completed;  /* QEMU's migration had completed when the rollback began */
        vmsup_error *why;   /* the failure being rolled back, or the unknown outcome's */

        json_object *prepare; /* PREPARE's payload, and */
        char *pass;           /* the passphrase (secmem), from the hand-over until SECRET is sent */
        struct evloop_source *finish_timer;
        enum migrate_outcome outcome;

        struct src_call *calls;
};

/* One asynchronous QMP command. Its reply is dropped when the source is gone or (unless
 * always) when a rollback began after it was sent. */
typedef void (*src_reply_fn)(struct migrate_source *s, json_object *ret, const vmsup_error *err);
struct src_call {
        struct migrate_source *s; /* NULL: abandoned */
        unsigned gen;
        bool always;
        src_reply_fn fn;
        struct src_call *next;
};

static void fail(struct migrate_source *s, vmsup_error *why);
static bool qemu_usable(struct migrate_source *s);
static void roll_back_next(struct migrate_source *s);
static void ready_next(struct migrate_source *s);

static void note(struct migrate_source *s, enum log_level level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void note(struct migrate_source *s, enum log_level level, const char *fmt, ...) {
        char text[1024];
        va_list ap;

        if (!s->env.note)
                return;
        va_start(ap, fmt);
        vsnprintf(text, sizeof(text), fmt, ap);
        va_end(ap);
        s->env.note(s->env.userdata, level, text);
}

static void progress(struct migrate_source *s, const char *phase, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void progress(struct migrate_source *s, const char *phase, const char *fmt, ...) {
        json_object *p = json_object_new_object();
        char msg[512];
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        note(s, LOG_LEVEL_INFO, "migration: %s", msg);
        json_object_object_add(p, "phase", json_object_new_string(phase));
        json_object_object_add(p, "message", json_object_new_string(msg));
        if (s->env.progress)
                s->env.progress(s->env.userdata, p);
        else
                json_object_put(p);
}

static int error_from(vmsup_error **dst, const vmsup_error *src) {
        return vmsup_fail(dst, src->kind, 0, "%s", src->msg);
}

/* ---- QMP ---- */

static void call_done(void *userdata, json_object *ret, const vmsup_error *err) {
        struct src_call *c = userdata;
        struct migrate_source *s = c->s;

        if (s) {
                for (struct src_call **pp = &s->calls; *pp; pp = &(*pp)->next)
                        if (*pp == c) {
                                *pp = c->next;
                                break;
                        }
                if (c->always || c->gen == s->gen)
                        c->fn(s, ret, err);
        }
        free(c);
}

static struct qmp_client *qmp_of(struct migrate_source *s) {
        return s->env.qmp ? *s->env.qmp : NULL;
}

/* Queue a command; the reply (or its failure) comes to fn. A command that cannot be
 * queued fails the step at once. */
static int qmp_send(struct migrate_source *s, const char *cmd, json_object *args, int pass_fd, bool always,
                    src_reply_fn fn, vmsup_error **err) {
        struct qmp_client *q = qmp_of(s);
        struct src_call *c;
        int r;

        if (!q || s->qemu_exited)
                return vmsup_fail(err, VMSUP_ERR_FAILED, 0, "QEMU's monitor is gone");
        c = calloc(1, sizeof(*c));
        if (!c)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "QMP command '%s'", cmd);
        *c = (struct src_call) { .s = s, .gen = s->gen, .always = always, .fn = fn };
        r = qmp_client_execute_async(q, cmd, args, pass_fd, s->env.qmp_timeout_ms, call_done, c, err);
        if (r < 0) {
                free(c);
                return r;
        }
        c->next = s->calls;
        s->calls = c;
        if (s->env.qmp_queued)
                s->env.qmp_queued(s->env.userdata);
        return 0;
}

/* ---- timers and the channel ---- */

static void timer_set(struct evloop_source *t, long deadline) {
        if (t)
                evloop_timer_set(t, deadline);
}

/* Wait for the destination's next frame, type, within answer_timeout. */
static void await(struct migrate_source *s, enum mig_msg type) {
        s->awaiting = type;
        timer_set(s->answer_timer, monotonic_ms() + s->env.answer_ms);
}

static int send_frame(struct migrate_source *s, enum mig_msg type, json_object *obj, vmsup_error **err) {
        if (migchan_send_json(s->ch, type, obj, s->env.answer_ms, err) < 0)
                return vmsup_error_prefix(err, "send %s to the destination", mig_msg_name(type));
        return 0;
}

static void state_streaming_done(struct migrate_source *s);
static void frame_arrived(struct migrate_source *s, struct mig_frame *f);

static void channel_broken(struct migrate_source *s, vmsup_error *err) {
        s->ch_src = evloop_source_remove(s->ch_src);
        vmsup_error_prefix(&err, "the destination");
        fail(s, err);
}

static void on_answer_timeout(struct evloop_source *t, void *userdata) {
        struct migrate_source *s = userdata;
        vmsup_error *err = NULL;

        (void) t;
        if (s->state == SRC_CONNECTING && !s->ch_open) {
                migchan_connect_timeout(s->ch, s->env.answer_ms, &err);
                s->ch_src = evloop_source_remove(s->ch_src);
                fail(s, err);
                return;
        }
        if (s->state == SRC_READY && s->stream_connecting) {
                migchan_tcp_connect_timeout(s->stream_connecting, s->env.answer_ms, &err);
                vmsup_error_prefix(&err, "QEMU's migration stream");
                fail(s, err);
                return;
        }
        if (!s->awaiting)
                return;
        vmsup_fail(&err, VMSUP_ERR_BUSY, 0,
                   "the destination: %s: no answer from the migration peer within %d s (waiting for %s)",
                   migchan_peer(s->ch), s->env.answer_ms / 1000, mig_msg_name(s->awaiting));
        fail(s, err);
}

static void on_hello(struct migrate_source *s);
static void on_channel(struct evloop_source *src, int fd, uint32_t revents, void *userdata);

static void connect_progress(struct migrate_source *s) {
        vmsup_error *err = NULL;
        int fd = migchan_fd(s->ch), r = migchan_connect_step(s->ch, &err);

        if (r < 0) {
                s->ch_src = evloop_source_remove(s->ch_src);
                fail(s, err);
                return;
        }
        /* the TCP connect moves on to the host's next address on a new socket */
        if (fd != migchan_fd(s->ch) || !s->ch_src) {
                s->ch_src = evloop_source_remove(s->ch_src);
                if (evloop_add_io(s->env.loop, migchan_fd(s->ch), 0, on_channel, s, &s->ch_src, &err) < 0) {
                        fail(s, err);
                        return;
                }
        }
        if (r == 0) {
                if (evloop_io_set_events(s->ch_src, migchan_connect_events(s->ch) == POLLOUT ? EPOLLOUT : EPOLLIN,
                                         &err) < 0)
                        fail(s, err);
                return;
        }
        s->ch_open = true;
        if (evloop_io_set_events(s->ch_src, EPOLLIN, &err) < 0) {
                fail(s, err);
                return;
        }
        on_hello(s);
}

/* During a rollback: drop what comes; true once the destination has hung up (or the
 * channel failed). */
static bool drain_channel(struct migrate_source *s) {
        struct mig_frame f = { 0 };
        vmsup_error *err = NULL;
        int r;

        if (!s->ch || !s->ch_src)
                return true;
        while ((r = migchan_recv(s->ch, &f, &err)) > 0)
                mig_frame_clear(&f);
        if (r == 0)
                return false;
        vmsup_error_free(err);
        s->ch_src = evloop_source_remove(s->ch_src);
        return true;
}

static void on_channel(struct evloop_source *src, int fd, uint32_t revents, void *userdata) {
        struct migrate_source *s = userdata;

        (void) src;
        (void) fd;
        (void) revents;
        if (!s->ch_open) {
                connect_progress(s);
                return;
        }
        if (s->state == SRC_ROLLING_BACK) {
                if (drain_channel(s) && s->rb == RB_GONE_WAIT) {
                        timer_set(s->wait_timer, -1);
                        s->rb = RB_RUN_STATE;
                        roll_back_next(s);
                }
                return;
        }
        /* until nothing is left: gnutls may hold whole records already read */
        while (s->ch_src && s->state < SRC_DONE && s->state != SRC_ROLLING_BACK) {
                struct mig_frame f = { 0 };
                vmsup_error *err = NULL;
                int r = migchan_recv(s->ch, &f, &err);

                if (r < 0) {
                        channel_broken(s, err);
                        return;
                }
                if (r == 0)
                        return;
                frame_arrived(s, &f);
                mig_frame_clear(&f);
        }
}

/* ---- the forward path ---- */

#define CANCEL_TEXT "cancelled: the source's supervisor got SIG%s; the guest stays on the source, which stops it"

static void on_run_state(struct migrate_source *s, json_object *ret, const vmsup_error *e) {
        _cleanup_secmem_ char *pass = NULL; /* the vTPM passphrase, wiped however we leave */
        _cleanup_json_ json_object *spec = NULL;
        char secret_id[MIGRATE_SOURCE_SECRET_ID_LEN + 1] = "";
        vmsup_error *err = NULL;

        if (e) {
                error_from(&err, e);
                fail(s, err);
                return;
        }
        /* A rollback resumes only a guest that ran: an operator's pause stays a pause. */
        s->was_running = streq(mig_json_str(ret, "status") ?: "", "running");

        /* Hello, then the spec and the secret (host mode: from the local store, as Nova's
         * _add_vtpm_secret_to_live_migrate_data), then the destination's READY. */
        if (s->env.handover(s->env.userdata, &pass, secret_id, &spec, &err) < 0) {
                fail(s, err);
                return;
        }
        s->prepare = json_object_new_object();
        if (!s->prepare) {
                vmsup_fail(&err, VMSUP_ERR_SYSTEM, ENOMEM, "PREPARE");
                fail(s, err);
                return;
        }
        json_object_object_add(s->prepare, "spec", TAKE_PTR(spec));
        json_object_object_add(s->prepare, "secret_uuid", json_object_new_string(secret_id));
        s->pass = TAKE_PTR(pass);
        progress(s, "connect", "connecting to %s:%s", s->env.host, s->env.port);
        if (migchan_connect_start(s->env.host, s->env.port, &s->env.tls, &s->ch, &err) < 0) {
                fail(s, err);
                return;
        }
        /* the connect and the TLS handshake, together, as one answer */
        timer_set(s->answer_timer, monotonic_ms() + s->env.answer_ms);
        connect_progress(s);
}

static void on_hello(struct migrate_source *s) {
        _cleanup_json_ json_object *hello = mig_hello_new(s->env.uuid);
        vmsup_error *err = NULL;

        timer_set(s->answer_timer, -1);
        if (!hello)
                vmsup_fail(&err, VMSUP_ERR_SYSTEM, ENOMEM, "HELLO");
        else
                send_frame(s, MIG_HELLO, hello, &err);
        if (err) {
                fail(s, err);
                return;
        }
        await(s, MIG_HELLO);
}

static void send_prepare(struct migrate_source *s) {
        vmsup_error *err = NULL;
        int r = send_frame(s, MIG_PREPARE, s->prepare, &err);

        if (r >= 0 && (r = migchan_send(s->ch, MIG_SECRET, s->pass, strlen(s->pass), s->env.answer_ms, &err)) < 0)
                vmsup_error_prefix(&err, "send the vTPM secret to the destination");
        /* not needed any more: gone before the long wait */
        s->pass = secmem_free(s->pass);
        json_object_put(s->prepare);
        s->prepare = NULL;
        if (r < 0) {
                fail(s, err);
                return;
        }
        progress(s, "prepare", "%s prepares swtpm and QEMU (connected in %ld ms)", migchan_peer(s->ch),
                 monotonic_ms() - s->times.t0);
        s->state = SRC_HANDED_OVER;
        await(s, MIG_READY);
}

/* QEMU's figures, which it computes a moment after it says it completed: 0 until then
 * (asked again once the destination has answered). */
static void figures(struct migrate_source *s, json_object *info) {
        s->times.qemu_total_ms = mig_json_int(info, "total-time");
        s->times.downtime_ms = mig_json_int(info, "downtime");
}

static void commit(struct migrate_source *s) {
        vmsup_error *err = NULL;

        note(s, LOG_LEVEL_INFO,
             "migration: QEMU took %" PRId64 " ms (downtime %" PRId64 " ms); the destination has the guest paused",
             s->times.qemu_total_ms, s->times.downtime_ms);
        /* The point of no return for the destination: once it has COMMIT it may run the
         * guest. From here a lost answer leaves the outcome unknown, and the guest must
         * not run here too: the marker keeps it from starting here again. */
        if (s->env.write_marker(s->env.userdata, &err) < 0) {
                fail(s, err);
                return;
        }
        s->marker = true;
        s->state = SRC_MARKED;
        if (send_frame(s, MIG_COMMIT, NULL, &err) < 0) {
                fail(s, err);
                return;
        }
        s->committed = true;
        s->state = SRC_COMMITTED;
        await(s, MIG_RUNNING);
}

static void on_figures(struct migrate_source *s, json_object *ret, const vmsup_error *e) {
        (void) e;
        figures(s, ret);
        commit(s);
}

static void finish(struct migrate_source *s, enum migrate_outcome o);

static void on_running(struct migrate_source *s) {
        vmsup_error *err = NULL;

        s->times.running_at = monotonic_ms();
        /* the destination keeps its copy marked until it hears that we hold our marker;
         * without DONE it runs on, unconfirmed, and our copy goes all the same */
        if (send_frame(s, MIG_DONE, NULL, &err) < 0) {
                note(s, LOG_LEVEL_WARNING,
                     "%s; the guest runs there, but its hand-over stays unconfirmed there (see vmsup(8), MIGRATION)",
                     err->msg);
                vmsup_error_free(err);
        }
        s->state = SRC_DONE;
        finish(s, MIGRATE_DONE);
}

static void frame_arrived(struct migrate_source *s, struct mig_frame *f) {
        enum mig_msg type = s->awaiting;
        vmsup_error *err = NULL;
        int r;

        if (!type) {
                mig_frame_unexpected(f, MIG_PEER_DESTINATION, &err);
                fail(s, err);
                return;
        }
        r = mig_frame_expect(f, type, MIG_PEER_DESTINATION, &err);
        if (r < 0) {
                /* an explicit ABORT after COMMIT: the destination did not run the guest */
                if (r == -ECONNABORTED && s->state == SRC_COMMITTED)
                        s->committed = false;
                fail(s, err);
                return;
        }
        s->awaiting = 0;
        timer_set(s->answer_timer, -1);
        switch (type) {
        case MIG_HELLO:
                if (mig_hello_check(f, s->env.uuid, MIG_PEER_DESTINATION, &err) < 0) {
                        fail(s, err);
                        return;
                }
                send_prepare(s);
                return;
        case MIG_READY:
                s->dest_port = (int) mig_json_int(f->json, "port");
                s->times.ready_at = monotonic_ms();
                s->state = SRC_READY;
                s->ready_step = 0;
                ready_next(s);
                return;
        case MIG_PREPARED:
                s->state = SRC_PREPARED;
                if (s->times.qemu_total_ms)
                        commit(s);
                else if (qmp_send(s, "query-migrate", NULL, -1, false, on_figures, &err) < 0) {
                        vmsup_error_free(err);
                        commit(s);
                }
                return;
        case MIG_RUNNING:
                on_running(s);
                return;
        default:
                vmsup_fail(&err, VMSUP_ERR_INTERNAL, 0, "waiting for %s", mig_msg_name(type));
                fail(s, err);
                return;
        }
}

/* ---- QEMU's side: TLS, the stream, migrate ---- */

/* A dead link fails QEMU's migration by itself after [migration] answer_timeout, instead
 * of leaving QEMU (and, at the switch-over, the paused guest) waiting for the deadline:
 * unacknowledged data or unanswered keepalive probes for that long end the connection. */
static void stream_keepalive(struct migrate_source *s, int fd) {
        int one = 1, idle = s->env.answer_ms / 3000 > 0 ? s->env.answer_ms / 3000 : 1;
        unsigned user_timeout = (unsigned) s->env.answer_ms;

        if (setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one)) < 0 ||
            setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle)) < 0 ||
            setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &idle, sizeof(idle)) < 0 ||
            setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &user_timeout, sizeof(user_timeout)) < 0)
                note(s, LOG_LEVEL_WARNING,
                     "QEMU's migration connection: keepalive: %s (a dead link then waits for the migration timeout)",
                     strerror(errno));
}

/* QEMU 7.2 runs parts of an outgoing migration in its main loop on a blocking socket
 * (the TLS handshake; with the guest paused, the last pages and the devices' state are
 * sent holding the lock the main loop needs): a connection that dies then holds QEMU, its
 * monitor included, until the kernel gives up, if ever (a handshake waiting to read
 * waits forever; seen here). migrate_cancel waits behind it, and QMP's yank knows the
 * connection only after the handshake. So we connect the socket ourselves, hand QEMU a
 * copy and keep ours: shutting it down fails QEMU's reads and writes on it at once,
 * whatever QEMU is at. */
static void stream_shutdown(struct migrate_source *s) {
        if (s->stream_fd < 0)
                return;
        if (shutdown(s->stream_fd, SHUT_RDWR) < 0 && errno != ENOTCONN)
                note(s, LOG_LEVEL_WARNING, "shut QEMU's migration connection down: %s", strerror(errno));
        else
                note(s, LOG_LEVEL_INFO, "QEMU's migration connection shut down");
}

static char *stream_uri(struct migrate_source *s) {
        char *uri = NULL;

        if (asprintf(&uri, strchr(s->env.host, ':') ? "tcp:[%s]:%s" : "tcp:%s:%s", s->env.host, s->port_text) < 0)
                return NULL;
        return uri;
}

static void on_ready_reply(struct migrate_source *s, json_object *ret, const vmsup_error *e) {
        vmsup_error *err = NULL;

        (void) ret;
        switch (s->ready_step) {
        case 0: /* object-del: whatever it says */
                *s->env.qemu_tls_added = false;
                break;
        case 1:
                note(s, LOG_LEVEL_DEBUG, "migration: QEMU loaded the TLS credentials in %ld ms",
                     monotonic_ms() - s->step_at);
                if (e) {
                        error_from(&err, e);
                        vmsup_error_prefix(&err, "QEMU's TLS credentials from '%s'", s->env.qemu_tls_dir);
                        fail(s, err);
                        return;
                }
                *s->env.qemu_tls_added = true;
                break;
        case 5:
                if (e) {
                        error_from(&err, e);
                        vmsup_error_prefix(&err, "hand QEMU the migration connection");
                        fail(s, err);
                        return;
                }
                break;
        default:
                if (e) {
                        error_from(&err, e);
                        fail(s, err);
                        return;
                }
        }
        s->ready_step++;
        ready_next(s);
}

static void on_migrate_reply(struct migrate_source *s, json_object *ret, const vmsup_error *e) {
        _cleanup_free_ char *uri = stream_uri(s);
        vmsup_error *err = NULL;

        (void) ret;
        s->migrate_pending = false;
        if (e) {
                s->migrating = false;
                if (s->state != SRC_READY)
                        return; /* a rollback that began meanwhile goes on without it */
                s->qemu_status[0] = '\0';
                error_from(&err, e);
                vmsup_error_prefix(&err, "QEMU migrate to %s", uri ?: "?");
                fail(s, err);
                return;
        }
        if (s->state != SRC_READY)
                return;
        progress(s, "stream", "QEMU sends the guest to %s (TLS)", uri ?: "?");
        s->state = SRC_STREAMING;
        timer_set(s->deadline_timer, s->times.t0 + (long) s->env.timeout_s * 1000);
        timer_set(s->tick_timer, monotonic_ms());
}

static void on_stream(struct evloop_source *src, int fd, uint32_t revents, void *userdata);

static void stream_connect_progress(struct migrate_source *s) {
        vmsup_error *err = NULL;
        int fd = migchan_tcp_fd(s->stream_connecting), r = migchan_tcp_connect_step(s->stream_connecting, &s->stream_fd, &err);

        if (r < 0) {
                s->stream_src = evloop_source_remove(s->stream_src);
                vmsup_error_prefix(&err, "QEMU's migration stream");
                fail(s, err);
                return;
        }
        if (r > 0) {
                s->stream_src = evloop_source_remove(s->stream_src);
                s->stream_connecting = migchan_tcp_free(s->stream_connecting);
                timer_set(s->answer_timer, -1);
                s->ready_step++;
                ready_next(s);
                return;
        }
        if (fd != migchan_tcp_fd(s->stream_connecting) || !s->stream_src) {
                s->stream_src = evloop_source_remove(s->stream_src);
                if (evloop_add_io(s->env.loop, migchan_tcp_fd(s->stream_connecting), EPOLLOUT, on_stream, s,
                                  &s->stream_src, &err) < 0)
                        fail(s, err);
        }
}

static void on_stream(struct evloop_source *src, int fd, uint32_t revents, void *userdata) {
        (void) src;
        (void) fd;
        (void) revents;
        stream_connect_progress(userdata);
}

/* QEMU's tls-creds-x509 from [migration] qemu_tls_dir, return-path and TLS on, our own
 * connection for its stream (see stream_shutdown()), then migrate. */
static void ready_next(struct migrate_source *s) {
        _cleanup_json_ json_object *args = json_object_new_object();
        vmsup_error *err = NULL;
        int r = 0;

        switch (s->ready_step) {
        case 0:
                if (!*s->env.qemu_tls_added) {
                        s->ready_step = 1;
                        ready_next(s);
                        return;
                }
                /* read the certificates afresh: they may have been renewed */
                json_object_object_add(args, "id", json_object_new_string(MIGRATE_SOURCE_QEMU_TLS_ID));
                r = qmp_send(s, "object-del", args, -1, false, on_ready_reply, &err);
                break;
        case 1:
                json_object_object_add(args, "qom-type", json_object_new_string("tls-creds-x509"));
                json_object_object_add(args, "id", json_object_new_string(MIGRATE_SOURCE_QEMU_TLS_ID));
                json_object_object_add(args, "dir", json_object_new_string(s->env.qemu_tls_dir));
                json_object_object_add(args, "endpoint", json_object_new_string("client"));
                json_object_object_add(args, "verify-peer", json_object_new_boolean(1));
                s->step_at = monotonic_ms();
                r = qmp_send(s, "object-add", args, -1, false, on_ready_reply, &err);
                if (r < 0)
                        vmsup_error_prefix(&err, "QEMU's TLS credentials from '%s'", s->env.qemu_tls_dir);
                break;
        case 2: {
                json_object *list = json_object_new_array(), *cap = json_object_new_object();

                /* Without return-path on both sides the source reports success even when the
                 * destination failed to load the guest (platform.md). */
                json_object_object_add(cap, "capability", json_object_new_string("return-path"));
                json_object_object_add(cap, "state", json_object_new_boolean(1));
                json_object_array_add(list, cap);
                /* MIGRATION events: the end of a cancel */
                cap = json_object_new_object();
                json_object_object_add(cap, "capability", json_object_new_string("events"));
                json_object_object_add(cap, "state", json_object_new_boolean(1));
                json_object_array_add(list, cap);
                json_object_object_add(args, "capabilities", list);
                r = qmp_send(s, "migrate-set-capabilities", args, -1, false, on_ready_reply, &err);
                break;
        }
        case 3:
                /* QEMU checks the destination's certificate against tls-hostname, its host */
                json_object_object_add(args, "tls-creds", json_object_new_string(MIGRATE_SOURCE_QEMU_TLS_ID));
                json_object_object_add(args, "tls-hostname", json_object_new_string(s->env.host));
                r = qmp_send(s, "migrate-set-parameters", args, -1, false, on_ready_reply, &err);
                break;
        case 4:
                snprintf(s->port_text, sizeof(s->port_text), "%d", s->dest_port);
                r = migchan_tcp_connect_start(s->env.host, s->port_text, &s->stream_connecting, &err);
                if (r < 0) {
                        vmsup_error_prefix(&err, "QEMU's migration stream");
                        break;
                }
                timer_set(s->answer_timer, monotonic_ms() + s->env.answer_ms);
                stream_connect_progress(s);
                return;
        case 5:
                stream_keepalive(s, s->stream_fd);
                json_object_object_add(args, "fdname", json_object_new_string(MIGRATE_SOURCE_STREAM_FD_NAME));
                r = qmp_send(s, "getfd", args, s->stream_fd, false, on_ready_reply, &err);
                if (r < 0)
                        vmsup_error_prefix(&err, "hand QEMU the migration connection");
                break;
        case 6: {
                _cleanup_free_ char *uri = stream_uri(s);

                note(s, LOG_LEVEL_DEBUG, "migration: QEMU set up for TLS at +%ld ms", monotonic_ms() - s->times.t0);
                json_object_object_add(args, "uri", json_object_new_string("fd:" MIGRATE_SOURCE_STREAM_FD_NAME));
                /* before the command: QEMU's MIGRATION events may come before its reply */
                snprintf(s->qemu_status, sizeof(s->qemu_status), "setup");
                r = qmp_send(s, "migrate", args, -1, true, on_migrate_reply, &err);
                if (r < 0) {
                        s->qemu_status[0] = '\0';
                        vmsup_error_prefix(&err, "QEMU migrate to %s", uri ?: "?");
                        break;
                }
                s->migrating = s->migrate_pending = true;
                return;
        }
        default:
                return;
        }
        if (r < 0)
                fail(s, err);
}

/* ---- streaming ---- */

static bool qemu_ended(const char *status) {
        return streq(status, "completed") || streq(status, "failed") || streq(status, "cancelled");
}

static void transfer_progress(struct migrate_source *s, json_object *info) {
        json_object *ram = NULL, *p;
        int64_t total, transferred, remaining;

        json_object_object_get_ex(info, "ram", &ram);
        total = mig_json_int(ram, "total");
        transferred = mig_json_int(ram, "transferred");
        remaining = mig_json_int(ram, "remaining");
        p = json_object_new_object();
        json_object_object_add(p, "phase", json_object_new_string("transfer"));
        json_object_object_add(p, "status", json_object_new_string(mig_json_str(info, "status") ?: "?"));
        s->percent = total > 0 ? (int) ((total - remaining) * 100 / total) : 0;
        json_object_object_add(p, "percent", json_object_new_int64(s->percent));
        json_object_object_add(p, "transferred", json_object_new_int64(transferred));
        json_object_object_add(p, "total", json_object_new_int64(total));
        json_object_object_add(p, "remaining", json_object_new_int64(remaining));
        json_object_object_add(p, "expected_downtime_ms", json_object_new_int64(mig_json_int(info, "expected-downtime")));
        json_object_object_add(p, "elapsed_ms", json_object_new_int64(monotonic_ms() - s->times.t0));
        if (s->env.progress)
                s->env.progress(s->env.userdata, p);
        else
                json_object_put(p);
}

static void state_streaming_done(struct migrate_source *s) {
        vmsup_error *err = NULL;

        s->times.completed_at = monotonic_ms();
        timer_set(s->tick_timer, -1);
        timer_set(s->deadline_timer, -1);
        progress(s, "switchover", "QEMU completed; the destination checks the guest and seals its TPM state");
        if (send_frame(s, MIG_MIGRATED, NULL, &err) < 0) {
                fail(s, err);
                return;
        }
        s->state = SRC_COMPLETED;
        await(s, MIG_PREPARED);
}

/* query-migrate: the progress lines and the figures; QEMU's MIGRATION event ends the
 * wait at once. Asynchronous, so that a QEMU whose main loop is held (by a migration stuck
 * on a dead link) does not stop us from hearing the destination, signals and the deadline. */
static void on_query(struct migrate_source *s, json_object *info, const vmsup_error *e) {
        const char *status = mig_json_str(info, "status") ?: "";
        vmsup_error *err = NULL;
        long now = monotonic_ms();

        s->query_pending = false;
        if (s->state != SRC_STREAMING)
                return;
        if (e) {
                /* a stuck main loop, most likely; the deadline decides */
                note(s, LOG_LEVEL_WARNING,
                     "QEMU's monitor has not answered for %ld s (%s); waiting up to the migration timeout",
                     (now - s->query_asked) / 1000, e->msg);
        } else if (streq(status, "completed")) {
                figures(s, info);
                state_streaming_done(s);
                return;
        } else if (streq(status, "failed") || streq(status, "cancelled")) {
                vmsup_fail(&err, VMSUP_ERR_UNAVAILABLE, 0, "QEMU's migration %s: %s", status,
                           mig_json_str(info, "error-desc") ?: "no reason given");
                fail(s, err);
                return;
        } else
                transfer_progress(s, info);
        timer_set(s->tick_timer, qemu_ended(s->qemu_status) ? now : s->query_asked + s->env.progress_interval_ms);
}

static void on_tick(struct evloop_source *t, void *userdata) {
        struct migrate_source *s = userdata;
        vmsup_error *err = NULL;

        (void) t;
        if (s->state != SRC_STREAMING || s->query_pending)
                return;
        if (!qemu_usable(s))
                vmsup_fail(&err, VMSUP_ERR_FAILED, 0, "QEMU's monitor is gone");
        else if (qmp_send(s, "query-migrate", NULL, -1, false, on_query, &err) < 0)
                vmsup_error_prefix(&err, "QEMU's monitor");
        if (err) {
                fail(s, err);
                return;
        }
        s->query_pending = true;
        s->query_asked = monotonic_ms();
}

static void on_deadline(struct evloop_source *t, void *userdata) {
        struct migrate_source *s = userdata;
        vmsup_error *err = NULL;

        (void) t;
        if (s->state != SRC_STREAMING)
                return;
        vmsup_fail(&err, VMSUP_ERR_BUSY, 0, "the migration did not complete within %u s%s", s->env.timeout_s,
                   s->query_pending && monotonic_ms() - s->query_asked > 1000 ? " (QEMU's monitor does not answer)"
                                                                              : "");
        fail(s, err);
}

/* ---- the end ---- */

static void stop_sources(struct migrate_source *s) {
        s->ch_src = evloop_source_remove(s->ch_src);
        s->stream_src = evloop_source_remove(s->stream_src);
        timer_set(s->answer_timer, -1);
        timer_set(s->deadline_timer, -1);
        timer_set(s->tick_timer, -1);
        timer_set(s->wait_timer, -1);
        s->awaiting = 0;
}

static void on_finish(struct evloop_source *t, void *userdata) {
        struct migrate_source *s = userdata;

        (void) t;
        /* the last thing: the supervisor may free s in it */
        s->env.finished(s->env.userdata, s->outcome, s->why, &s->times);
}

/* finished() comes from a timer of its own, so that the code that got here may go on
 * touching s until its callback returns. */
static void finish(struct migrate_source *s, enum migrate_outcome o) {
        stop_sources(s);
        s->outcome = o;
        timer_set(s->finish_timer, monotonic_ms());
}

static void fail(struct migrate_source *s, vmsup_error *why) {
        if (s->state >= SRC_DONE) { /* rolling back, or over: the first failure counts */
                vmsup_error_free(why);
                return;
        }
        s->why = why;
        s->pass = secmem_free(s->pass);
        json_object_put(s->prepare);
        s->prepare = NULL;
        if (s->committed) {
                /* Nobody can tell here whether the destination runs the guest: nothing is
                 * undone, the guest stays paused, the marker stays. */
                s->state = SRC_UNKNOWN;
                finish(s, MIGRATE_OUTCOME_UNKNOWN);
                return;
        }
        s->state = SRC_ROLLING_BACK;
        s->gen++;
        timer_set(s->answer_timer, -1);
        timer_set(s->deadline_timer, -1);
        timer_set(s->tick_timer, -1);
        s->stream_src = evloop_source_remove(s->stream_src);
        s->stream_connecting = migchan_tcp_free(s->stream_connecting);
        s->awaiting = 0;
        if (s->ch && s->ch_open) {
                _cleanup_json_ json_object *a = json_object_new_object();
                vmsup_error *err = NULL;

                json_object_object_add(a, "error", json_object_new_string(why ? why->msg : "cancelled"));
                if (migchan_send_json(s->ch, MIG_ABORT, a, 2000, &err) < 0)
                        vmsup_error_free(err);
        } else
                s->ch_src = evloop_source_remove(s->ch_src);
        s->rb = RB_STATUS;
        roll_back_next(s);
}

static bool qemu_usable(struct migrate_source *s) {
        return qmp_of(s) && !s->qemu_exited;
}

static void rb_advance(struct migrate_source *s, enum rb_step next) {
        s->rb = next;
        roll_back_next(s);
}

static void on_rb_status(struct migrate_source *s, json_object *info, const vmsup_error *e) {
        (void) e;
        snprintf(s->qemu_status, sizeof(s->qemu_status), "%s", mig_json_str(info, "status") ?: "");
        s->rb_completed = s->migrating && streq(s->qemu_status, "completed");
        rb_advance(s, s->migrating && !qemu_ended(s->qemu_status) ? RB_CANCEL : RB_GONE_WAIT);
}

static void on_rb_cancel(struct migrate_source *s, json_object *ret, const vmsup_error *e) {
        (void) ret;
        (void) e;
        rb_advance(s, RB_CANCEL_WAIT);
}

static void on_rb_run_state(struct migrate_source *s, json_object *ret, const vmsup_error *e) {
        const char *status = mig_json_str(ret, "status");

        (void) e;
        if (status && !streq(status, "running")) {
                snprintf(s->qemu_status, sizeof(s->qemu_status), "%s", status); /* for cont's messages */
                rb_advance(s, RB_CONT);
        } else
                rb_advance(s, RB_END);
}

static void on_rb_cont(struct migrate_source *s, json_object *ret, const vmsup_error *e) {
        (void) ret;
        if (e)
                note(s, LOG_LEVEL_ERROR, "the guest stays %s here: cont failed: %s", s->qemu_status, e->msg);
        else
                note(s, LOG_LEVEL_INFO, "the guest runs here again (it was %s)", s->qemu_status);
        rb_advance(s, RB_END);
}

static void on_wait_timer(struct evloop_source *t, void *userdata) {
        struct migrate_source *s = userdata;

        (void) t;
        if (s->state != SRC_ROLLING_BACK)
                return;
        if (s->rb == RB_CANCEL_WAIT) {
                note(s, LOG_LEVEL_ERROR, "cancelling QEMU's migration: QEMU's migration is still '%s' after %d s",
                     s->qemu_status, s->env.cancel_timeout_ms / 1000);
                rb_advance(s, RB_GONE_WAIT);
        } else if (s->rb == RB_GONE_WAIT) {
                note(s, LOG_LEVEL_WARNING,
                     "the destination did not hang up within %d s of the ABORT; its QEMU may still hold the guest's disks",
                     s->env.answer_ms / 1000);
                rb_advance(s, RB_RUN_STATE);
        }
}

/* Undo: cancel QEMU's migration if it runs, and let the guest run here again. */
static void roll_back_next(struct migrate_source *s) {
        vmsup_error *err = NULL;

        switch (s->rb) {
        case RB_STATUS:
                if (!(s->migrating || s->migrate_pending) || !qemu_usable(s)) {
                        rb_advance(s, RB_GONE_WAIT);
                        return;
                }
                stream_shutdown(s);
                /* after migrate's own reply (QMP answers in order): s->migrating is known then */
                if (qmp_send(s, "query-migrate", NULL, -1, false, on_rb_status, &err) < 0) {
                        vmsup_error_free(err);
                        rb_advance(s, RB_GONE_WAIT);
                }
                return;
        case RB_CANCEL:
                if (qmp_send(s, "migrate_cancel", NULL, -1, false, on_rb_cancel, &err) < 0) {
                        vmsup_error_free(err);
                        rb_advance(s, RB_CANCEL_WAIT);
                }
                return;
        case RB_CANCEL_WAIT:
                if (qemu_ended(s->qemu_status)) {
                        rb_advance(s, RB_GONE_WAIT);
                        return;
                }
                if (!qemu_usable(s)) {
                        note(s, LOG_LEVEL_ERROR, "cancelling QEMU's migration: QEMU's monitor is gone");
                        rb_advance(s, RB_GONE_WAIT);
                        return;
                }
                timer_set(s->wait_timer, monotonic_ms() + s->env.cancel_timeout_ms);
                return;
        case RB_GONE_WAIT:
                /* After a completed QEMU migration the destination's QEMU has the guest's
                 * disks open and locked (shared storage): `cont` here fails ("Failed to get
                 * "write" lock") until it is gone. The destination hangs up once it has
                 * removed it, on our ABORT: wait for that, within answer_timeout, or until
                 * another signal. */
                if (s->rb_completed && s->ch && s->was_running && !drain_channel(s)) {
                        timer_set(s->wait_timer, monotonic_ms() + s->env.answer_ms);
                        return;
                }
                rb_advance(s, RB_RUN_STATE);
                return;
        case RB_RUN_STATE:
                timer_set(s->wait_timer, -1);
                if (!qemu_usable(s) || !s->was_running ||
                    qmp_send(s, "query-status", NULL, -1, false, on_rb_run_state, &err) < 0) {
                        vmsup_error_free(err);
                        rb_advance(s, RB_END);
                }
                return;
        case RB_CONT:
                if (qmp_send(s, "cont", NULL, -1, false, on_rb_cont, &err) < 0) {
                        note(s, LOG_LEVEL_ERROR, "the guest stays %s here: cont failed: %s", s->qemu_status, err->msg);
                        vmsup_error_free(err);
                        rb_advance(s, RB_END);
                }
                return;
        case RB_END:
                if (s->marker) {
                        s->env.remove_marker(s->env.userdata);
                        s->marker = false;
                }
                s->state = SRC_ROLLED_BACK;
                finish(s, MIGRATE_ROLLED_BACK);
                return;
        }
}

/* ---- entry points ---- */

int migrate_source_start(const struct migrate_source_env *env, struct migrate_source **ret, vmsup_error **err) {
        struct migrate_source *s;
        int r;

        if (!env->loop || !env->qmp || !env->qemu_tls_added || !env->uuid || !env->host || !env->port ||
            !env->qemu_tls_dir || !env->handover || !env->write_marker || !env->remove_marker || !env->finished ||
            env->answer_ms <= 0 || env->qmp_timeout_ms <= 0 || env->cancel_timeout_ms <= 0 ||
            env->progress_interval_ms <= 0)
                return vmsup_fail(err, VMSUP_ERR_INTERNAL, EINVAL, "migration source: incomplete set-up");
        s = calloc(1, sizeof(*s));
        if (!s)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "migration");
        s->env = *env;
        s->env.tls.peer_name = env->host;
        s->stream_fd = -1;
        s->state = SRC_CONNECTING;
        s->times.t0 = monotonic_ms();
        if ((r = evloop_add_timer(env->loop, -1, on_answer_timeout, s, &s->answer_timer, err)) < 0 ||
            (r = evloop_add_timer(env->loop, -1, on_deadline, s, &s->deadline_timer, err)) < 0 ||
            (r = evloop_add_timer(env->loop, -1, on_tick, s, &s->tick_timer, err)) < 0 ||
            (r = evloop_add_timer(env->loop, -1, on_wait_timer, s, &s->wait_timer, err)) < 0 ||
            (r = evloop_add_timer(env->loop, -1, on_finish, s, &s->finish_timer, err)) < 0 ||
            (r = qmp_send(s, "query-status", NULL, -1, false, on_run_state, err)) < 0) {
                migrate_source_free(s);
                return r;
        }
        *ret = s;
        return 0;
}

struct migrate_source *migrate_source_free(struct migrate_source *s) {
        if (!s)
                return NULL;
        /* replies still to come find their call abandoned */
        for (struct src_call *c = s->calls; c; c = c->next)
                c->s = NULL;
        stop_sources(s);
        evloop_source_remove(s->answer_timer);
        evloop_source_remove(s->deadline_timer);
        evloop_source_remove(s->tick_timer);
        evloop_source_remove(s->wait_timer);
        evloop_source_remove(s->finish_timer);
        migchan_tcp_free(s->stream_connecting);
        migchan_free(s->ch);
        if (s->stream_fd >= 0)
                close(s->stream_fd);
        secmem_free(s->pass);
        json_object_put(s->prepare);
        vmsup_error_free(s->why);
        free(s);
        return NULL;
}

void migrate_source_qemu_event(struct migrate_source *s, const char *event, json_object *data) {
        json_object *st;

        if (!streq(event, "MIGRATION") || !data || !json_object_object_get_ex(data, "status", &st))
                return;
        snprintf(s->qemu_status, sizeof(s->qemu_status), "%s", json_object_get_string(st));
        if (!qemu_ended(s->qemu_status))
                return;
        if (s->state == SRC_STREAMING && !s->query_pending)
                timer_set(s->tick_timer, monotonic_ms());
        else if (s->state == SRC_ROLLING_BACK && s->rb == RB_CANCEL_WAIT) {
                timer_set(s->wait_timer, -1);
                rb_advance(s, RB_GONE_WAIT);
        }
}

void migrate_source_qemu_exited(struct migrate_source *s) {
        struct src_call *mine = NULL;
        vmsup_error *err = NULL;

        if (s->qemu_exited)
                return;
        s->qemu_exited = true;
        /* the calls QEMU will never answer now (a reply that still comes is dropped) */
        for (struct src_call *c = s->calls; c; c = c->next) {
                if (c->fn == on_migrate_reply)
                        s->migrate_pending = false;
                else if (c->gen == s->gen && !mine)
                        mine = c;
                c->s = NULL;
        }
        s->calls = NULL;
        if (s->state == SRC_STREAMING) {
                vmsup_fail(&err, VMSUP_ERR_FAILED, 0, "QEMU ended during the migration");
                fail(s, err);
        } else if (s->state == SRC_ROLLING_BACK && s->rb == RB_CANCEL_WAIT) {
                timer_set(s->wait_timer, -1);
                roll_back_next(s);
        } else if (mine && (s->state < SRC_DONE || s->state == SRC_ROLLING_BACK)) {
                vmsup_fail(&err, VMSUP_ERR_FAILED, 0, "QEMU's monitor is gone");
                mine->fn(s, NULL, err);
                vmsup_error_free(err);
        }
}

bool migrate_source_interrupt(struct migrate_source *s, int signo) {
        vmsup_error *err = NULL;

        if (s->state < SRC_COMMITTED) {
                s->interrupted = true;
                s->interrupt_signo = signo;
                vmsup_fail(&err, VMSUP_ERR_BUSY, 0, CANCEL_TEXT, sigabbrev_np(signo) ?: "TERM");
                fail(s, err);
                return true;
        }
        if (s->state == SRC_ROLLING_BACK && s->rb == RB_GONE_WAIT && s->interrupted) {
                /* a second signal: no more waiting */
                rb_advance(s, RB_RUN_STATE);
                return true;
        }
        if (!s->interrupted)
                s->interrupt_signo = signo;
        s->interrupted = true;
        return false;
}

const char *migrate_source_qemu_status(const struct migrate_source *s) {
        return s->qemu_status;
}

int migrate_source_percent(const struct migrate_source *s) {
        return s->percent;
}

bool migrate_source_committed(const struct migrate_source *s) {
        return s->committed;
}

const char *migrate_source_state_name(const struct migrate_source *s) {
        return state_names[s->state];
}
