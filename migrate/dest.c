/* The destination of a live migration on the one event loop (migrate/dest.h): receive the
 * guest from the source's supervisor, let QEMU receive memory and TPM state, have it
 * sealed, and run the guest only when the source says so. This file is the state
 * machine: its states, the source's frames, the listener, the end and the entry points;
 * QEMU's side (its QMP commands and their replies, the incoming stream, the load, `cont`)
 * is dest_qemu.c; what both use is dest_internal.h. */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "common/secmem.h"
#include "common/util.h"
#include "migrate/dest.h"
#include "migrate/dest_internal.h"
#include "migrate/proto.h"

/* the ABORT we send when giving up */
#define ABORT_SEND_MS 2000

static const char *const state_names[] = {
        [MIGRATE_DEST_WAITING] = "waiting for the source",
        [MIGRATE_DEST_RECEIVING] = "receiving",
        [MIGRATE_DEST_CLAIMED] = "claimed",
        [MIGRATE_DEST_CHILDREN_UP] = "children up",
        [MIGRATE_DEST_READY_SENT] = "ready sent",
        [MIGRATE_DEST_LOADING] = "loading",
        [MIGRATE_DEST_SEALED] = "sealed",
        [MIGRATE_DEST_PREPARED_SENT] = "prepared sent",
        [MIGRATE_DEST_COMMITTED] = "committed",
        [MIGRATE_DEST_RUNNING] = "running",
        [MIGRATE_DEST_ABORTING] = "aborting",
        [MIGRATE_DEST_FINISHED] = "finished",
};

const char *migrate_dest_state_name(enum migrate_dest_state s) {
        return (unsigned) s < ARRAY_SIZE(state_names) ? state_names[s] : "?";
}

enum migrate_dest_state migrate_dest_state(const struct migrate_dest *d) {
        return d->state;
}

const char *migrate_dest_phase(const struct migrate_dest *d) {
        return migrate_dest_state_name(d->state);
}

int migrate_dest_port(const struct migrate_dest *d) {
        struct sockaddr_storage sa;
        socklen_t len = sizeof(sa);

        if (d->listen_fd < 0 || getsockname(d->listen_fd, (struct sockaddr *) &sa, &len) < 0)
                return 0;
        return ntohs(sa.ss_family == AF_INET6 ? ((struct sockaddr_in6 *) &sa)->sin6_port
                                              : ((struct sockaddr_in *) &sa)->sin_port);
}

const char *migrate_dest_source(const struct migrate_dest *d) {
        return d->ch ? d->source : NULL;
}

void dst_note(struct migrate_dest *d, enum log_level level, const char *fmt, ...) {
        char text[1024];
        va_list ap;

        if (!d->env.note)
                return;
        va_start(ap, fmt);
        vsnprintf(text, sizeof(text), fmt, ap);
        va_end(ap);
        d->env.note(d->env.userdata, level, text);
}

/* A debug line: what the incoming migration has done, and when. */
void dst_mark(struct migrate_dest *d, const char *what) {
        if (d->t0)
                dst_note(d, LOG_LEVEL_DEBUG, "incoming: %s at +%ld ms", what, monotonic_ms() - d->t0);
}

/* ---- the end ------------------------------------------------------------------------- */

void dst_stop_waiting(struct migrate_dest *d) {
        d->wait = DST_WAIT_NONE;
        if (d->wait_timer)
                evloop_timer_set(d->wait_timer, -1);
}

static void pending_drop(struct migrate_dest *d, size_t i) {
        struct dst_pending *p = &d->pending[i];

        evloop_source_remove(p->io);
        evloop_source_remove(p->timer);
        migchan_free(p->c);
        memmove(p, p + 1, (d->n_pending - i - 1) * sizeof(*p));
        d->n_pending--;
}

static void close_listener(struct migrate_dest *d) {
        while (d->n_pending > 0)
                pending_drop(d, d->n_pending - 1);
        d->listen_io = evloop_source_remove(d->listen_io);
        closep(&d->listen_fd);
        d->deadline_timer = evloop_source_remove(d->deadline_timer);
}

void dst_close_stream_listener(struct migrate_dest *d) {
        d->stream_io = evloop_source_remove(d->stream_io);
        closep(&d->stream_listen_fd);
}

static void on_finish(struct evloop_source *s, void *userdata) {
        struct migrate_dest *d = userdata;
        vmsup_error *why = TAKE_PTR(d->why);

        (void) s;
        d->finish_timer = evloop_source_remove(d->finish_timer);
        /* d may be freed inside */
        d->env.finished(d->env.userdata, d->outcome, why);
        vmsup_error_free(why);
}

/* Report the outcome from a round of its own: the caller may be deep in a callback of
 * ours that still uses d. */
void dst_finish(struct migrate_dest *d, enum migrate_dest_outcome outcome, vmsup_error *why) {
        vmsup_error *ignored = NULL;

        if (d->state == MIGRATE_DEST_FINISHED) {
                vmsup_error_free(why);
                return;
        }
        d->state = MIGRATE_DEST_FINISHED;
        d->outcome = outcome;
        d->why = why;
        dst_stop_waiting(d);
        close_listener(d);
        dst_close_stream_listener(d);
        d->ch_io = evloop_source_remove(d->ch_io);
        d->qemu_exit_timer = evloop_source_remove(d->qemu_exit_timer);
        if (evloop_add_timer(d->env.loop, monotonic_ms(), on_finish, d, &d->finish_timer, &ignored) < 0) {
                /* no memory for a timer: report at once, the caller is told to expect it */
                vmsup_error_free(ignored);
                on_finish(NULL, d);
        }
}

/* Give up with err (taken). Before `cont`: ABORT to the source, which keeps its guest, and
 * everything here is to be removed. From `cont` on the source must not roll back a guest
 * that may run here: it is not told, and the copy here stays. Once the guest runs, what
 * fails is the source's confirmation only. */
void dst_fail(struct migrate_dest *d, vmsup_error *err) {
        if (d->state == MIGRATE_DEST_FINISHED || d->state == MIGRATE_DEST_ABORTING) {
                vmsup_error_free(err);
                return;
        }
        if (!err)
                vmsup_fail(&err, VMSUP_ERR_INTERNAL, 0, "incoming migration failed");
        if (d->state == MIGRATE_DEST_RUNNING) {
                /* RUNNING sent: only the source's confirmation is missing */
                dst_finish(d, MIGRATE_DEST_RAN, err);
                return;
        }
        if (d->cont_issued) {
                dst_finish(d, MIGRATE_DEST_FAILED_COMMITTED, err);
                return;
        }
        d->state = MIGRATE_DEST_ABORTING;
        if (d->ch) {
                _cleanup_json_ json_object *a = json_object_new_object();
                vmsup_error *ignored = NULL;

                /* a frame's error holds at most 1024 bytes: a longer one would not go */
                json_object_object_add(a, "error", json_object_new_string_len(err->msg, (int) strnlen(err->msg, 1024)));
                if (migchan_send_json(d->ch, MIG_ABORT, a, ABORT_SEND_MS, &ignored) < 0)
                        vmsup_error_free(ignored);
        }
        /* a QEMU held by a dead stream (its TLS handshake blocks its main loop) would
         * ignore quit and SIGTERM */
        if (d->stream_fd >= 0)
                shutdown(d->stream_fd, SHUT_RDWR);
        dst_finish(d, MIGRATE_DEST_ABORTED, err);
}

/* An error of a callee, borrowed: a copy with its words and exit code, prefixed. */
vmsup_error *dst_copy_error(const vmsup_error *e, const char *prefix) {
        vmsup_error *c = NULL;

        vmsup_fail(&c, e ? e->kind : VMSUP_ERR_INTERNAL, 0, "%s%s%s", prefix ? prefix : "", prefix ? ": " : "",
                   e && e->msg ? e->msg : "failed");
        if (c && e)
                c->errnum = e->errnum;
        return c;
}

int migrate_dest_cancel(struct migrate_dest *d, const vmsup_error *why) {
        if (d->state >= MIGRATE_DEST_COMMITTED)
                return 0;
        dst_fail(d, dst_copy_error(why, NULL));
        return 1;
}

/* QEMU failed or ended: what, with the last lines of its log (a wrong migration key
 * shows there as swtpm's "decryption error"). */
void dst_child_failed(struct migrate_dest *d, bool qemu, const char *what) {
        _cleanup_free_ char *tail = d->env.log_tail ? d->env.log_tail(d->env.userdata, qemu) : NULL;

        DST_FAIL(d, VMSUP_ERR_FAILED, 0, "%s (its log: %s)", what, tail ? tail : "?");
}

/* ---- waiting on the source -------------------------------------------------------------- */

static void on_wait_timeout(struct evloop_source *s, void *userdata) {
        struct migrate_dest *d = userdata;

        (void) s;
        if (d->wait == DST_WAIT_EXPECT)
                DST_FAIL(d, VMSUP_ERR_BUSY, 0,
                         "the source: %s: no answer from the migration peer within %g s (waiting for %s)", d->source,
                         d->answer_ms / 1000.0, mig_msg_name(d->wait_type));
        else if (d->wait_timeout_fmt)
                DST_FAIL(d, VMSUP_ERR_BUSY, 0, "QEMU's migration is still '%s' after %d s", d->qemu_status,
                         d->answer_ms / 1000);
        else if (d->wait == DST_WAIT_SOURCE)
                DST_FAIL(d, VMSUP_ERR_BUSY, 0, "no %s from the source in time", mig_msg_name(d->wait_type));
}

void dst_wait_for(struct migrate_dest *d, enum dst_wait kind, enum mig_msg type, long deadline) {
        d->wait = kind;
        d->wait_type = type;
        d->wait_timeout_fmt = NULL;
        evloop_timer_set(d->wait_timer, deadline);
}

int dst_send_json(struct migrate_dest *d, enum mig_msg type, json_object *obj, vmsup_error **err) {
        _cleanup_json_ json_object *empty = obj ? NULL : json_object_new_object();
        int r = migchan_send_json(d->ch, type, obj ? obj : empty, d->answer_ms, err);

        return r < 0 ? vmsup_error_prefix(err, "send %s to the source", mig_msg_name(type)) : 0;
}

static void on_frame(struct migrate_dest *d, struct mig_frame *f);

static void on_channel(struct evloop_source *s, int fd, uint32_t revents, void *userdata) {
        struct migrate_dest *d = userdata;

        (void) s, (void) fd, (void) revents;
        /* gnutls may hold several records: until it needs more bytes */
        while (d->state != MIGRATE_DEST_FINISHED && d->state != MIGRATE_DEST_ABORTING && d->ch_io) {
                _cleanup_mig_frame_ struct mig_frame f = { 0 };
                vmsup_error *err = NULL;
                int r = migchan_recv(d->ch, &f, &err);

                if (r == 0)
                        return;
                if (r < 0) {
                        vmsup_error_prefix(&err, "the source");
                        dst_fail(d, err);
                        return;
                }
                on_frame(d, &f);
        }
}

/* A frame while we wait for the source's next one (or while our own steps run). */
static bool frame_in_turn(struct migrate_dest *d, const struct mig_frame *f) {
        vmsup_error *err = NULL;

        if (d->wait == DST_WAIT_EXPECT && f->type == d->wait_type)
                return true;
        if (d->wait == DST_WAIT_SOURCE && f->type == d->wait_type && !d->wait_timeout_fmt)
                return true;
        if (f->type == MIG_ABORT)
                vmsup_fail(&err, VMSUP_ERR_UNAVAILABLE, 0, "the source gave up: %s", mig_json_str(f->json, "error"));
        else if (d->wait == DST_WAIT_EXPECT)
                vmsup_fail(&err, VMSUP_ERR_DATA, 0, "the source: %s: unexpected %s message (expected %s)", d->source,
                           mig_msg_name(f->type), mig_msg_name(d->wait_type));
        else {
                /* what the source owes us next */
                enum mig_msg next = d->state <= MIGRATE_DEST_LOADING        ? MIG_MIGRATED
                                    : d->state <= MIGRATE_DEST_PREPARED_SENT ? MIG_COMMIT
                                                                             : MIG_DONE;

                vmsup_fail(&err, VMSUP_ERR_DATA, 0, "the source sent an unexpected %s message (expected %s)",
                           mig_msg_name(f->type), mig_msg_name(next));
        }
        dst_fail(d, err);
        return false;
}

static void got_hello(struct migrate_dest *d, struct mig_frame *f);
static void got_prepare(struct migrate_dest *d, struct mig_frame *f);
static void got_secret(struct migrate_dest *d, struct mig_frame *f);
static void got_migrated(struct migrate_dest *d);
static void got_commit(struct migrate_dest *d);
static void got_done(struct migrate_dest *d);

static void on_frame(struct migrate_dest *d, struct mig_frame *f) {
        if (!frame_in_turn(d, f))
                return;
        dst_stop_waiting(d);
        switch (f->type) {
        case MIG_HELLO: got_hello(d, f); break;
        case MIG_PREPARE: got_prepare(d, f); break;
        case MIG_SECRET: got_secret(d, f); break;
        case MIG_MIGRATED: got_migrated(d); break;
        case MIG_COMMIT: got_commit(d); break;
        case MIG_DONE: got_done(d); break;
        default: DST_FAIL(d, VMSUP_ERR_INTERNAL, 0, "the source's %s: nothing to do with it", mig_msg_name(f->type));
        }
}

/* ---- waiting for the source supervisor ------------------------------------------------- */

static void source_found(struct migrate_dest *d, size_t i) {
        vmsup_error *err = NULL;
        int r;

        d->ch = TAKE_PTR(d->pending[i].c);
        close_listener(d);
        snprintf(d->source, sizeof(d->source), "%s", migchan_peer(d->ch));
        d->t0 = monotonic_ms();
        d->state = MIGRATE_DEST_RECEIVING;
        r = evloop_add_io(d->env.loop, migchan_fd(d->ch), EPOLLIN, on_channel, d, &d->ch_io, &err);
        if (r < 0) {
                dst_fail(d, err);
                return;
        }
        dst_wait_for(d, DST_WAIT_EXPECT, MIG_HELLO, monotonic_ms() + d->answer_ms);
        /* the HELLO may have come with the handshake's last record */
        on_channel(d->ch_io, migchan_fd(d->ch), EPOLLIN, d);
}

static size_t pending_index(struct migrate_dest *d, struct evloop_source *s) {
        for (size_t i = 0; i < d->n_pending; i++)
                if (d->pending[i].io == s || d->pending[i].timer == s)
                        return i;
        return SIZE_MAX;
}

/* One step of a handshake: the source, still waiting, or turned away. */
static void pending_step(struct migrate_dest *d, size_t i) {
        vmsup_error *err = NULL;
        int r = migchan_handshake_step(d->pending[i].c, &err);

        if (r > 0) {
                source_found(d, i);
                return;
        }
        if (r < 0) {
                dst_note(d, LOG_LEVEL_WARNING, "turned a connection away: %s", err->msg);
                vmsup_error_free(err);
                pending_drop(d, i);
                return;
        }
        if (evloop_io_set_events(d->pending[i].io, (uint32_t) migchan_handshake_events(d->pending[i].c), &err) < 0) {
                dst_fail(d, err);
        }
}

static void on_pending_io(struct evloop_source *s, int fd, uint32_t revents, void *userdata) {
        struct migrate_dest *d = userdata;
        size_t i = pending_index(d, s);

        (void) fd, (void) revents;
        if (i != SIZE_MAX)
                pending_step(d, i);
}

static void on_pending_timeout(struct evloop_source *s, void *userdata) {
        struct migrate_dest *d = userdata;
        size_t i = pending_index(d, s);

        if (i == SIZE_MAX)
                return;
        dst_note(d, LOG_LEVEL_WARNING,
                 "turned a connection away: TLS handshake with %s: no answer within %u s "
                 "([migration] handshake_timeout)",
                 migchan_peer(d->pending[i].c), d->env.handshake_timeout_s);
        pending_drop(d, i);
}

/* Take every connection waiting and start its handshake; beyond MIGRATE_DEST_PENDING_MAX
 * the oldest is turned away (a host that keeps that many silent connections open must
 * not keep the source out). */
static void on_listen(struct evloop_source *s, int fd, uint32_t revents, void *userdata) {
        struct migrate_dest *d = userdata;

        (void) s, (void) revents;
        while (d->state == MIGRATE_DEST_WAITING) {
                struct migchan *c = NULL;
                vmsup_error *err = NULL;
                struct dst_pending *p;
                int r = migchan_accept_start(fd, &d->env.tls, &c, &err);

                if (r == 0)
                        return;
                if (r < 0) {
                        dst_fail(d, err);
                        return;
                }
                if (d->n_pending == MIGRATE_DEST_PENDING_MAX) {
                        dst_note(d, LOG_LEVEL_WARNING,
                                 "turned a connection away: %s: %d connections are in their TLS handshake, the "
                                 "most this host waits for at once; the oldest makes room",
                                 migchan_peer(d->pending[0].c), MIGRATE_DEST_PENDING_MAX);
                        pending_drop(d, 0);
                }
                p = &d->pending[d->n_pending];
                *p = (struct dst_pending) { .c = c };
                if (evloop_add_io(d->env.loop, migchan_fd(c), (uint32_t) migchan_handshake_events(c), on_pending_io, d,
                                  &p->io, &err) < 0 ||
                    evloop_add_timer(d->env.loop, monotonic_ms() + (long) d->env.handshake_timeout_s * 1000,
                                     on_pending_timeout, d, &p->timer, &err) < 0) {
                        evloop_source_remove(p->io);
                        migchan_free(c);
                        dst_fail(d, err);
                        return;
                }
                d->n_pending++;
                /* a step at once: its hello may be there already */
                pending_step(d, d->n_pending - 1);
        }
}

static void on_deadline(struct evloop_source *s, void *userdata) {
        struct migrate_dest *d = userdata;

        (void) s;
        if (d->state == MIGRATE_DEST_WAITING)
                DST_FAIL(d, VMSUP_ERR_BUSY, 0, "wait for the source: no source supervisor came within %u s",
                         d->env.timeout_s);
}

/* ---- receiving the guest ---------------------------------------------------------------- */

static void got_hello(struct migrate_dest *d, struct mig_frame *f) {
        _cleanup_json_ json_object *hello = NULL;
        vmsup_error *err = NULL;

        if (!streq(mig_json_str(f->json, "uuid"), d->env.uuid)) {
                DST_FAIL(d, VMSUP_ERR_DATA, 0, "%s offers guest %s; this host expects %s", d->source,
                         mig_json_str(f->json, "uuid"), d->env.uuid);
                return;
        }
        dst_note(d, LOG_LEVEL_INFO, "source %s (host %s) sends guest %s", d->source,
                 mig_json_str(f->json, "host") ?: "?", d->env.uuid);
        hello = mig_hello_new(d->env.uuid);
        if (!hello) {
                DST_FAIL(d, VMSUP_ERR_SYSTEM, ENOMEM, "HELLO");
                return;
        }
        if (dst_send_json(d, MIG_HELLO, hello, &err) < 0) {
                dst_fail(d, err);
                return;
        }
        dst_wait_for(d, DST_WAIT_EXPECT, MIG_PREPARE, monotonic_ms() + d->answer_ms);
}

static void got_prepare(struct migrate_dest *d, struct mig_frame *f) {
        json_object *spec = NULL;
        vmsup_error *err = NULL;
        const char *text;

        json_object_object_get_ex(f->json, "spec", &spec);
        text = json_object_to_json_string_ext(spec, JSON_C_TO_STRING_PLAIN);
        if (guest_spec_parse(text, strlen(text), "the source's guest spec", &d->theirs, &err) < 0) {
                dst_fail(d, err);
                return;
        }
        snprintf(d->secret_id, sizeof(d->secret_id), "%s", mig_json_str(f->json, "secret_uuid") ?: "");
        {
                json_object *gen = NULL;

                if (json_object_object_get_ex(f->json, "tpm_generation", &gen) && json_object_is_type(gen, json_type_int) &&
                    json_object_get_int64(gen) > 0)
                        d->tpm_generation = (uint64_t) json_object_get_int64(gen);
        }
        /* the secret first, then judge: a source told off with its SECRET unread could
         * lose our ABORT to the reset of the connection */
        dst_wait_for(d, DST_WAIT_EXPECT, MIG_SECRET, monotonic_ms() + d->answer_ms);
}

static void got_secret(struct migrate_dest *d, struct mig_frame *f) {
        vmsup_error *err = NULL;
        int r;

        d->secret = (char *) TAKE_PTR(f->secret);
        d->state = MIGRATE_DEST_CLAIMED;
        /* from here until READY the source says nothing; its ABORT or hang-up is heard */
        dst_wait_for(d, DST_WAIT_SOURCE, MIG_MIGRATED, -1);
        r = d->env.received(d->env.userdata, &d->theirs, d->secret_id, d->secret, &err);
        d->secret = secmem_free(d->secret);
        if (r < 0)
                dst_fail(d, err);
}

/* ---- QEMU receives the guest (dest_qemu.c drives it) ------------------------------------ */

void migrate_dest_children_up(struct migrate_dest *d, struct qmp_client *qmp) {
        if (d->state != MIGRATE_DEST_CLAIMED)
                return;
        d->qmp = qmp;
        d->state = MIGRATE_DEST_CHILDREN_UP;
        d->t_up = monotonic_ms();
        dst_mark(d, "swtpm and QEMU up");
        dst_qemu_setup(d);
}

void migrate_dest_qemu_event(struct migrate_dest *d, const char *event, json_object *data) {
        const char *status;

        if (!streq(event, "MIGRATION") || d->state == MIGRATE_DEST_FINISHED)
                return;
        status = mig_json_str(data, "status");
        if (!status)
                return;
        snprintf(d->qemu_status, sizeof(d->qemu_status), "%s", status);
        if (d->state < MIGRATE_DEST_CHILDREN_UP || d->state > MIGRATE_DEST_LOADING)
                return;
        if (streq(status, "failed"))
                dst_qemu_load_failed(d);
        else if (streq(status, "completed") && d->migrated)
                dst_qemu_loaded(d);
}

void migrate_dest_qmp_lost(struct migrate_dest *d, const vmsup_error *why) {
        if (!d->qmp)
                return;
        d->qmp = NULL;
        /* the client is gone with their callbacks */
        while (d->cmds) {
                struct dst_cmd *c = d->cmds;

                d->cmds = c->next;
                free(c);
        }
        /* QEMU that said its load failed closes its monitor as it exits: its log says why
         * (on_qemu_failed_wait); once the guest runs, its monitor is the supervisor's */
        if (!d->qemu_failed && d->state >= MIGRATE_DEST_CHILDREN_UP && d->state < MIGRATE_DEST_RUNNING)
                dst_fail(d, dst_copy_error(why, "QEMU's monitor"));
}

void migrate_dest_child_exited(struct migrate_dest *d, bool qemu) {
        if (qemu)
                d->qemu_gone = true;
        if (d->state < MIGRATE_DEST_CHILDREN_UP || d->state >= MIGRATE_DEST_COMMITTED)
                return; /* not ours to watch: before, the supervisor's start; after, its guest */
        if (qemu && d->qemu_failed)
                dst_child_failed(d, true, "QEMU failed to load the guest");
        else
                dst_child_failed(d, qemu,
                                 qemu ? "QEMU ended while receiving the guest" : "swtpm ended while receiving the guest");
}

static void got_migrated(struct migrate_dest *d) {
        dst_mark(d, "MIGRATED received");
        d->migrated = true;
        /* the source completes only once we loaded everything (return path); our own
         * MIGRATION event may come a moment later */
        if (streq(d->qemu_status, "completed")) {
                dst_qemu_loaded(d);
                return;
        }
        if (streq(d->qemu_status, "failed")) {
                dst_qemu_load_failed(d);
                return;
        }
        d->wait = DST_WAIT_SOURCE;
        d->wait_type = MIG_MIGRATED;
        d->wait_timeout_fmt = "status";
        evloop_timer_set(d->wait_timer, monotonic_ms() + d->answer_ms);
}

/* ---- running the guest ------------------------------------------------------------------- */

static void got_commit(struct migrate_dest *d) {
        vmsup_error *err = NULL;

        /* From COMMIT on, the source holds no copy that may run: whatever happens here,
         * ours stays, and its marker keeps it from starting again until the source
         * confirms (DONE) or an operator resolves it. A marker that cannot be written is a
         * plain failure: the source rolls back. */
        if (d->env.mark_committed(d->env.userdata, d->source, &err) < 0) {
                dst_fail(d, err);
                return;
        }
        d->state = MIGRATE_DEST_COMMITTED;
        /* what the source says now is read once RUNNING is sent */
        if (evloop_io_set_events(d->ch_io, 0, &err) < 0) {
                dst_fail(d, err);
                return;
        }
        if (dst_qemu_cont(d, &err) < 0) {
                vmsup_error_prefix(&err, "run the received guest");
                dst_fail(d, err);
                return;
        }
        /* The source must not roll back a guest that may run here: from now on, whatever
         * fails, it is not told ABORT (docs/migration.md). */
        d->cont_issued = true;
}

static void got_done(struct migrate_dest *d) {
        dst_finish(d, MIGRATE_DEST_RAN, NULL);
}

/* ---- life ---------------------------------------------------------------------------------- */

int migrate_dest_new(const struct migrate_dest_env *env, struct migrate_dest **ret, vmsup_error **err) {
        struct migrate_dest *d;
        int r;

        d = calloc(1, sizeof(*d));
        if (!d)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "incoming migration");
        d->env = *env;
        d->listen_fd = d->stream_listen_fd = d->stream_fd = -1;
        d->answer_ms = (int) env->answer_timeout_s * 1000;
        d->deadline = monotonic_ms() + (long) env->timeout_s * 1000;
        d->state = MIGRATE_DEST_WAITING;
        d->listen_fd = migchan_listen(env->listen_addr, env->listen_port, err);
        if (d->listen_fd < 0) {
                r = d->listen_fd;
                goto fail;
        }
        r = migchan_tls_check(&env->tls, true, err);
        if (r < 0)
                goto fail;
        if ((r = evloop_add_io(env->loop, d->listen_fd, EPOLLIN, on_listen, d, &d->listen_io, err)) < 0 ||
            (r = evloop_add_timer(env->loop, d->deadline, on_deadline, d, &d->deadline_timer, err)) < 0 ||
            (r = evloop_add_timer(env->loop, -1, on_wait_timeout, d, &d->wait_timer, err)) < 0)
                goto fail;
        dst_note(d, LOG_LEVEL_INFO, "waiting up to %u s for guest %s from a source supervisor on %s%s%s:%s",
                 env->timeout_s, env->uuid, env->listen_addr && strchr(env->listen_addr, ':') ? "[" : "",
                 env->listen_addr && env->listen_addr[0] ? env->listen_addr : "*",
                 env->listen_addr && strchr(env->listen_addr, ':') ? "]" : "", env->listen_port);
        *ret = d;
        return 0;
fail:
        migrate_dest_free(d);
        return r;
}

struct migrate_dest *migrate_dest_free(struct migrate_dest *d) {
        if (!d)
                return NULL;
        close_listener(d);
        dst_close_stream_listener(d);
        for (struct dst_cmd *c = d->cmds; c; c = c->next)
                c->d = NULL; /* their replies free them */
        evloop_source_remove(d->ch_io);
        evloop_source_remove(d->wait_timer);
        evloop_source_remove(d->finish_timer);
        evloop_source_remove(d->qemu_exit_timer);
        migchan_free(d->ch);
        closep(&d->stream_fd);
        secmem_free(d->secret);
        guest_spec_clear(&d->theirs);
        vmsup_error_free(d->why);
        free(d);
        return NULL;
}

uint64_t migrate_dest_tpm_generation(const struct migrate_dest *d) {
        return d->tpm_generation;
}
