/* The source's half of a live migration on the loop: see source.h and docs/migration.md. */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/secmem.h"
#include "common/util.h"
#include "migrate/proto.h"
#include "migrate/source_internal.h"

static const char *const state_names[] = {
        [SRC_CONNECTING] = "connecting", [SRC_HANDED_OVER] = "handed over", [SRC_READY] = "ready",
        [SRC_STREAMING] = "streaming",   [SRC_COMPLETED] = "completed",     [SRC_PREPARED] = "prepared",
        [SRC_MARKED] = "marked",         [SRC_COMMITTED] = "committed",     [SRC_DONE] = "done",
        [SRC_ROLLING_BACK] = "rolling back", [SRC_ROLLED_BACK] = "rolled back", [SRC_UNKNOWN] = "unknown",
};

void src_note(struct migrate_source *s, enum log_level level, const char *fmt, ...) {
        char text[1024];
        va_list ap;

        if (!s->env.note)
                return;
        va_start(ap, fmt);
        vsnprintf(text, sizeof(text), fmt, ap);
        va_end(ap);
        s->env.note(s->env.userdata, level, text);
}

void src_progress(struct migrate_source *s, const char *phase, const char *fmt, ...) {
        json_object *p = json_object_new_object();
        char msg[512];
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        src_note(s, LOG_LEVEL_INFO, "migration: %s", msg);
        json_object_object_add(p, "phase", json_object_new_string(phase));
        json_object_object_add(p, "message", json_object_new_string(msg));
        if (s->env.progress)
                s->env.progress(s->env.userdata, p);
        else
                json_object_put(p);
}

int src_error_from(vmsup_error **dst, const vmsup_error *src) {
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
int src_qmp_send(struct migrate_source *s, const char *cmd, json_object *args, int pass_fd, bool always,
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

bool src_qemu_usable(struct migrate_source *s) {
        return qmp_of(s) && !s->qemu_exited;
}

/* ---- timers and the channel ---- */

void src_timer_set(struct evloop_source *t, long deadline) {
        if (t)
                evloop_timer_set(t, deadline);
}

/* Wait for the destination's next frame, type, within answer_timeout. */
void src_await(struct migrate_source *s, enum mig_msg type) {
        s->awaiting = type;
        src_timer_set(s->answer_timer, monotonic_ms() + s->env.answer_ms);
}

int src_send_frame(struct migrate_source *s, enum mig_msg type, json_object *obj, vmsup_error **err) {
        if (migchan_send_json(s->ch, type, obj, s->env.answer_ms, err) < 0)
                return vmsup_error_prefix(err, "send %s to the destination", mig_msg_name(type));
        return 0;
}

static void frame_arrived(struct migrate_source *s, struct mig_frame *f);

static void channel_broken(struct migrate_source *s, vmsup_error *err) {
        s->ch_src = evloop_source_remove(s->ch_src);
        vmsup_error_prefix(&err, "the destination");
        src_fail(s, err);
}

static void on_answer_timeout(struct evloop_source *t, void *userdata) {
        struct migrate_source *s = userdata;
        vmsup_error *err = NULL;

        (void) t;
        if (s->state == SRC_CONNECTING && !s->ch_open) {
                migchan_connect_timeout(s->ch, s->env.answer_ms, &err);
                s->ch_src = evloop_source_remove(s->ch_src);
                src_fail(s, err);
                return;
        }
        if (s->state == SRC_READY && s->stream_connecting) {
                migchan_tcp_connect_timeout(s->stream_connecting, s->env.answer_ms, &err);
                vmsup_error_prefix(&err, "QEMU's migration stream");
                src_fail(s, err);
                return;
        }
        if (!s->awaiting)
                return;
        vmsup_fail(&err, VMSUP_ERR_BUSY, 0,
                   "the destination: %s: no answer from the migration peer within %d s (waiting for %s)",
                   migchan_peer(s->ch), s->env.answer_ms / 1000, mig_msg_name(s->awaiting));
        src_fail(s, err);
}

static void on_hello(struct migrate_source *s);
static void on_channel(struct evloop_source *src, int fd, uint32_t revents, void *userdata);

static void connect_progress(struct migrate_source *s) {
        vmsup_error *err = NULL;
        int fd = migchan_fd(s->ch), r = migchan_connect_step(s->ch, &err);

        if (r < 0) {
                s->ch_src = evloop_source_remove(s->ch_src);
                src_fail(s, err);
                return;
        }
        /* the TCP connect moves on to the host's next address on a new socket */
        if (fd != migchan_fd(s->ch) || !s->ch_src) {
                s->ch_src = evloop_source_remove(s->ch_src);
                if (evloop_add_io(s->env.loop, migchan_fd(s->ch), 0, on_channel, s, &s->ch_src, &err) < 0) {
                        src_fail(s, err);
                        return;
                }
        }
        if (r == 0) {
                if (evloop_io_set_events(s->ch_src, migchan_connect_events(s->ch) == POLLOUT ? EPOLLOUT : EPOLLIN,
                                         &err) < 0)
                        src_fail(s, err);
                return;
        }
        s->ch_open = true;
        if (evloop_io_set_events(s->ch_src, EPOLLIN, &err) < 0) {
                src_fail(s, err);
                return;
        }
        on_hello(s);
}

/* During a rollback: drop what comes; true once the destination has hung up (or the
 * channel failed). */
bool src_drain_channel(struct migrate_source *s) {
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
                if (src_drain_channel(s) && s->rb == RB_GONE_WAIT) {
                        src_timer_set(s->wait_timer, -1);
                        s->rb = RB_RUN_STATE;
                        src_roll_back_next(s);
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
                src_error_from(&err, e);
                src_fail(s, err);
                return;
        }
        /* A rollback resumes only a guest that ran: an operator's pause stays a pause. */
        s->was_running = streq(mig_json_str(ret, "status") ?: "", "running");

        /* Hello, then the spec and the secret (host mode: from the local store, as Nova's
         * _add_vtpm_secret_to_live_migrate_data), then the destination's READY. */
        if (s->env.handover(s->env.userdata, &pass, secret_id, &spec, &err) < 0) {
                src_fail(s, err);
                return;
        }
        s->prepare = json_object_new_object();
        if (!s->prepare) {
                vmsup_fail(&err, VMSUP_ERR_SYSTEM, ENOMEM, "PREPARE");
                src_fail(s, err);
                return;
        }
        json_object_object_add(s->prepare, "spec", TAKE_PTR(spec));
        json_object_object_add(s->prepare, "secret_uuid", json_object_new_string(secret_id));
        if (s->env.tpm_generation)
                json_object_object_add(s->prepare, "tpm_generation",
                                       json_object_new_int64((int64_t) s->env.tpm_generation(s->env.userdata)));
        s->pass = TAKE_PTR(pass);
        src_progress(s, "connect", "connecting to %s:%s", s->env.host, s->env.port);
        if (migchan_connect_start(s->env.host, s->env.port, &s->env.tls, &s->ch, &err) < 0) {
                src_fail(s, err);
                return;
        }
        /* the connect and the TLS handshake, together, as one answer */
        src_timer_set(s->answer_timer, monotonic_ms() + s->env.answer_ms);
        connect_progress(s);
}

static void on_hello(struct migrate_source *s) {
        _cleanup_json_ json_object *hello = mig_hello_new(s->env.uuid);
        vmsup_error *err = NULL;

        src_timer_set(s->answer_timer, -1);
        if (!hello)
                vmsup_fail(&err, VMSUP_ERR_SYSTEM, ENOMEM, "HELLO");
        else
                src_send_frame(s, MIG_HELLO, hello, &err);
        if (err) {
                src_fail(s, err);
                return;
        }
        src_await(s, MIG_HELLO);
}

static void send_prepare(struct migrate_source *s) {
        vmsup_error *err = NULL;
        int r = src_send_frame(s, MIG_PREPARE, s->prepare, &err);

        if (r >= 0 && (r = migchan_send(s->ch, MIG_SECRET, s->pass, strlen(s->pass), s->env.answer_ms, &err)) < 0)
                vmsup_error_prefix(&err, "send the vTPM secret to the destination");
        /* not needed any more: gone before the long wait */
        s->pass = secmem_free(s->pass);
        json_object_put(s->prepare);
        s->prepare = NULL;
        if (r < 0) {
                src_fail(s, err);
                return;
        }
        src_progress(s, "prepare", "%s prepares swtpm and QEMU (connected in %ld ms)", migchan_peer(s->ch),
                     monotonic_ms() - s->times.t0);
        s->state = SRC_HANDED_OVER;
        src_await(s, MIG_READY);
}

/* QEMU's figures, which it computes a moment after it says it completed: 0 until then
 * (asked again once the destination has answered). */
void src_figures(struct migrate_source *s, json_object *info) {
        s->times.qemu_total_ms = mig_json_int(info, "total-time");
        s->times.downtime_ms = mig_json_int(info, "downtime");
}

static void commit(struct migrate_source *s) {
        vmsup_error *err = NULL;

        src_note(s, LOG_LEVEL_INFO,
                 "migration: QEMU took %" PRId64 " ms (downtime %" PRId64 " ms); the destination has the guest paused",
                 s->times.qemu_total_ms, s->times.downtime_ms);
        /* The point of no return for the destination: once it has COMMIT it may run the
         * guest. From here a lost answer leaves the outcome unknown, and the guest must
         * not run here too: the marker keeps it from starting here again. */
        if (s->env.write_marker(s->env.userdata, &err) < 0) {
                src_fail(s, err);
                return;
        }
        s->marker = true;
        s->state = SRC_MARKED;
        if (src_send_frame(s, MIG_COMMIT, NULL, &err) < 0) {
                src_fail(s, err);
                return;
        }
        s->committed = true;
        s->state = SRC_COMMITTED;
        src_await(s, MIG_RUNNING);
}

static void on_figures(struct migrate_source *s, json_object *ret, const vmsup_error *e) {
        (void) e;
        src_figures(s, ret);
        commit(s);
}

static void on_running(struct migrate_source *s) {
        vmsup_error *err = NULL;

        s->times.running_at = monotonic_ms();
        /* the destination keeps its copy marked until it hears that we hold our marker;
         * without DONE it runs on, unconfirmed, and our copy goes all the same */
        if (src_send_frame(s, MIG_DONE, NULL, &err) < 0) {
                src_note(s, LOG_LEVEL_WARNING,
                         "%s; the guest runs there, but its hand-over stays unconfirmed there (see vmsup(8), MIGRATION)",
                         err->msg);
                vmsup_error_free(err);
        }
        s->state = SRC_DONE;
        src_finish(s, MIGRATE_DONE);
}

static void frame_arrived(struct migrate_source *s, struct mig_frame *f) {
        enum mig_msg type = s->awaiting;
        vmsup_error *err = NULL;
        int r;

        if (!type) {
                mig_frame_unexpected(f, MIG_PEER_DESTINATION, &err);
                src_fail(s, err);
                return;
        }
        r = mig_frame_expect(f, type, MIG_PEER_DESTINATION, &err);
        if (r < 0) {
                /* an explicit ABORT after COMMIT: the destination did not run the guest */
                if (r == -ECONNABORTED && s->state == SRC_COMMITTED)
                        s->committed = false;
                src_fail(s, err);
                return;
        }
        s->awaiting = 0;
        src_timer_set(s->answer_timer, -1);
        switch (type) {
        case MIG_HELLO:
                if (mig_hello_check(f, s->env.uuid, MIG_PEER_DESTINATION, &err) < 0) {
                        src_fail(s, err);
                        return;
                }
                send_prepare(s);
                return;
        case MIG_READY:
                s->dest_port = (int) mig_json_int(f->json, "port");
                s->times.ready_at = monotonic_ms();
                s->state = SRC_READY;
                s->ready_step = 0;
                src_ready_next(s);
                return;
        case MIG_PREPARED:
                s->state = SRC_PREPARED;
                if (s->times.qemu_total_ms)
                        commit(s);
                else if (src_qmp_send(s, "query-migrate", NULL, -1, false, on_figures, &err) < 0) {
                        vmsup_error_free(err);
                        commit(s);
                }
                return;
        case MIG_RUNNING:
                on_running(s);
                return;
        default:
                vmsup_fail(&err, VMSUP_ERR_INTERNAL, 0, "waiting for %s", mig_msg_name(type));
                src_fail(s, err);
                return;
        }
}

/* ---- the end ---- */

static void stop_sources(struct migrate_source *s) {
        s->ch_src = evloop_source_remove(s->ch_src);
        s->stream_src = evloop_source_remove(s->stream_src);
        src_timer_set(s->answer_timer, -1);
        src_timer_set(s->deadline_timer, -1);
        src_timer_set(s->tick_timer, -1);
        src_timer_set(s->wait_timer, -1);
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
void src_finish(struct migrate_source *s, enum migrate_outcome o) {
        stop_sources(s);
        s->outcome = o;
        src_timer_set(s->finish_timer, monotonic_ms());
}

void src_fail(struct migrate_source *s, vmsup_error *why) {
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
                src_finish(s, MIGRATE_OUTCOME_UNKNOWN);
                return;
        }
        s->state = SRC_ROLLING_BACK;
        s->gen++;
        src_timer_set(s->answer_timer, -1);
        src_timer_set(s->deadline_timer, -1);
        src_timer_set(s->tick_timer, -1);
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
        src_roll_back_next(s);
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
            (r = evloop_add_timer(env->loop, -1, src_on_deadline, s, &s->deadline_timer, err)) < 0 ||
            (r = evloop_add_timer(env->loop, -1, src_on_tick, s, &s->tick_timer, err)) < 0 ||
            (r = evloop_add_timer(env->loop, -1, src_on_wait_timer, s, &s->wait_timer, err)) < 0 ||
            (r = evloop_add_timer(env->loop, -1, on_finish, s, &s->finish_timer, err)) < 0 ||
            (r = src_qmp_send(s, "query-status", NULL, -1, false, on_run_state, err)) < 0) {
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
        if (!src_qemu_ended(s->qemu_status))
                return;
        if (s->state == SRC_STREAMING && !s->query_pending)
                src_timer_set(s->tick_timer, monotonic_ms());
        else if (s->state == SRC_ROLLING_BACK && s->rb == RB_CANCEL_WAIT) {
                src_timer_set(s->wait_timer, -1);
                src_rb_advance(s, RB_GONE_WAIT);
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
                if (c->fn == src_on_migrate_reply)
                        s->migrate_pending = false;
                else if (c->gen == s->gen && !mine)
                        mine = c;
                c->s = NULL;
        }
        s->calls = NULL;
        if (s->state == SRC_STREAMING) {
                vmsup_fail(&err, VMSUP_ERR_FAILED, 0, "QEMU ended during the migration");
                src_fail(s, err);
        } else if (s->state == SRC_ROLLING_BACK && s->rb == RB_CANCEL_WAIT) {
                src_timer_set(s->wait_timer, -1);
                src_roll_back_next(s);
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
                src_fail(s, err);
                return true;
        }
        if (s->state == SRC_ROLLING_BACK && s->rb == RB_GONE_WAIT && s->interrupted) {
                /* a second signal: no more waiting */
                src_rb_advance(s, RB_RUN_STATE);
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
