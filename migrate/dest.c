/* The destination of a live migration on the one event loop (migrate/dest.h): receive the
 * guest from the source's supervisor, let QEMU receive memory and TPM state, have it
 * sealed, and run the guest only when the source says so. */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/secmem.h"
#include "common/util.h"
#include "migrate/dest.h"
#include "migrate/proto.h"

/* after QEMU reported its load failed: how long it has to end (and say why in its log) */
#define QEMU_FAILED_EXIT_MS 2000
/* the ABORT we send when giving up */
#define ABORT_SEND_MS 2000

/* A connection in its TLS handshake, and when it must have completed it. */
struct pending {
        struct migchan *c;
        struct evloop_source *io, *timer;
};

/* What a wait on the source is, for its messages. */
enum wait_kind {
        WAIT_NONE,
        WAIT_EXPECT,  /* HELLO, PREPARE, SECRET: the channel's own words */
        WAIT_SOURCE,  /* MIGRATED, COMMIT, DONE */
};

/* One QMP command in flight; outlives the destination when freed before its reply. */
struct cmd {
        struct migrate_dest *d;
        void (*done)(struct migrate_dest *d, json_object *ret, const vmsup_error *err);
        struct cmd *next;
};

struct migrate_dest {
        struct migrate_dest_env env;
        enum migrate_dest_state state;
        int answer_ms;
        long deadline; /* ms: the whole migration's ([migration] timeout) */
        long t0;       /* the source connected */
        long t_up;     /* the children came up */

        int listen_fd;
        struct evloop_source *listen_io, *deadline_timer;
        struct pending pending[MIGRATE_DEST_PENDING_MAX];
        size_t n_pending;

        struct migchan *ch;
        struct evloop_source *ch_io;
        char source[320];
        char secret_id[37];
        struct guest_spec theirs;
        char *secret; /* secmem, until received() */

        enum wait_kind wait;
        enum mig_msg wait_type;
        struct evloop_source *wait_timer;
        const char *wait_timeout_fmt; /* WAIT_SOURCE with a status instead of a frame */

        struct qmp_client *qmp;
        struct cmd *cmds;
        int stream_listen_fd, stream_fd;
        struct evloop_source *stream_io;
        char qemu_status[24];
        bool migrated;      /* the source's MIGRATED came */
        bool checking;      /* query-status after the load is in flight */
        bool qemu_failed;   /* QEMU said its load failed: it has a moment to end */
        bool qemu_gone;
        bool cont_issued;   /* from now on no ABORT */
        struct evloop_source *qemu_exit_timer; /* QEMU's moment to end after its load failed */
        long tls_t0;

        struct evloop_source *finish_timer;
        enum migrate_dest_outcome outcome;
        vmsup_error *why;
};

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

static void note(struct migrate_dest *d, enum log_level level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void note(struct migrate_dest *d, enum log_level level, const char *fmt, ...) {
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
static void mark(struct migrate_dest *d, const char *what) {
        if (d->t0)
                note(d, LOG_LEVEL_DEBUG, "incoming: %s at +%ld ms", what, monotonic_ms() - d->t0);
}

/* ---- the end ------------------------------------------------------------------------- */

static void stop_waiting(struct migrate_dest *d) {
        d->wait = WAIT_NONE;
        if (d->wait_timer)
                evloop_timer_set(d->wait_timer, -1);
}

static void pending_drop(struct migrate_dest *d, size_t i) {
        struct pending *p = &d->pending[i];

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

static void close_stream_listener(struct migrate_dest *d) {
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
static void finish(struct migrate_dest *d, enum migrate_dest_outcome outcome, vmsup_error *why) {
        vmsup_error *ignored = NULL;

        if (d->state == MIGRATE_DEST_FINISHED) {
                vmsup_error_free(why);
                return;
        }
        d->state = MIGRATE_DEST_FINISHED;
        d->outcome = outcome;
        d->why = why;
        stop_waiting(d);
        close_listener(d);
        close_stream_listener(d);
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
static void fail(struct migrate_dest *d, vmsup_error *err) {
        if (d->state == MIGRATE_DEST_FINISHED || d->state == MIGRATE_DEST_ABORTING) {
                vmsup_error_free(err);
                return;
        }
        if (!err)
                vmsup_fail(&err, VMSUP_ERR_INTERNAL, 0, "incoming migration failed");
        if (d->state == MIGRATE_DEST_RUNNING) {
                /* RUNNING sent: only the source's confirmation is missing */
                finish(d, MIGRATE_DEST_RAN, err);
                return;
        }
        if (d->cont_issued) {
                finish(d, MIGRATE_DEST_FAILED_COMMITTED, err);
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
        finish(d, MIGRATE_DEST_ABORTED, err);
}

#define FAIL(d, ...)                                                \
        do {                                                        \
                vmsup_error *e_ = NULL;                             \
                vmsup_fail(&e_, __VA_ARGS__);                       \
                fail((d), e_);                                      \
        } while (0)

/* An error of a callee, borrowed: a copy with its words and exit code, prefixed. */
static vmsup_error *copy_error(const vmsup_error *e, const char *prefix) {
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
        fail(d, copy_error(why, NULL));
        return 1;
}

/* ---- QMP ------------------------------------------------------------------------------ */

static void cmd_reply(void *userdata, json_object *ret, const vmsup_error *err) {
        struct cmd *c = userdata;
        struct migrate_dest *d = c->d;

        if (d) {
                struct cmd **pp = &d->cmds;

                while (*pp != c)
                        pp = &(*pp)->next;
                *pp = c->next;
                if (d->state != MIGRATE_DEST_FINISHED)
                        c->done(d, ret, err);
        }
        free(c);
}

static int qemu_cmd(struct migrate_dest *d, const char *command, json_object *args, int pass_fd,
               void (*done)(struct migrate_dest *d, json_object *ret, const vmsup_error *err), vmsup_error **err) {
        struct cmd *c;
        int r;

        if (!d->qmp)
                return vmsup_fail(err, VMSUP_ERR_FAILED, 0, "QEMU's monitor is gone");
        c = calloc(1, sizeof(*c));
        if (!c)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "QMP command '%s'", command);
        *c = (struct cmd) { .d = d, .done = done, .next = d->cmds };
        r = qmp_client_execute_async(d->qmp, command, args, pass_fd,
                                     d->env.qmp_timeout_ms > 0 ? d->env.qmp_timeout_ms : 30000, cmd_reply, c, err);
        if (r < 0) {
                free(c);
                return r;
        }
        d->cmds = c;
        if (d->env.qmp_queued)
                d->env.qmp_queued(d->env.userdata);
        return 0;
}

/* QEMU failed or ended: what, with the last lines of its log (a wrong migration key
 * shows there as swtpm's "decryption error"). */
static void child_failed(struct migrate_dest *d, bool qemu, const char *what) {
        _cleanup_free_ char *tail = d->env.log_tail ? d->env.log_tail(d->env.userdata, qemu) : NULL;

        FAIL(d, VMSUP_ERR_FAILED, 0, "%s (its log: %s)", what, tail ? tail : "?");
}

/* ---- waiting on the source -------------------------------------------------------------- */

static void on_wait_timeout(struct evloop_source *s, void *userdata) {
        struct migrate_dest *d = userdata;

        (void) s;
        if (d->wait == WAIT_EXPECT)
                FAIL(d, VMSUP_ERR_BUSY, 0,
                     "the source: %s: no answer from the migration peer within %g s (waiting for %s)", d->source,
                     d->answer_ms / 1000.0, mig_msg_name(d->wait_type));
        else if (d->wait_timeout_fmt)
                FAIL(d, VMSUP_ERR_BUSY, 0, "QEMU's migration is still '%s' after %d s", d->qemu_status,
                     d->answer_ms / 1000);
        else if (d->wait == WAIT_SOURCE)
                FAIL(d, VMSUP_ERR_BUSY, 0, "no %s from the source in time", mig_msg_name(d->wait_type));
}

static void wait_for(struct migrate_dest *d, enum wait_kind kind, enum mig_msg type, long deadline) {
        d->wait = kind;
        d->wait_type = type;
        d->wait_timeout_fmt = NULL;
        evloop_timer_set(d->wait_timer, deadline);
}

static int send_json(struct migrate_dest *d, enum mig_msg type, json_object *obj, vmsup_error **err) {
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
                        fail(d, err);
                        return;
                }
                on_frame(d, &f);
        }
}

/* A frame while we wait for the source's next one (or while our own steps run). */
static bool frame_in_turn(struct migrate_dest *d, const struct mig_frame *f) {
        vmsup_error *err = NULL;

        if (d->wait == WAIT_EXPECT && f->type == d->wait_type)
                return true;
        if (d->wait == WAIT_SOURCE && f->type == d->wait_type && !d->wait_timeout_fmt)
                return true;
        if (f->type == MIG_ABORT)
                vmsup_fail(&err, VMSUP_ERR_UNAVAILABLE, 0, "the source gave up: %s", mig_json_str(f->json, "error"));
        else if (d->wait == WAIT_EXPECT)
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
        fail(d, err);
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
        stop_waiting(d);
        switch (f->type) {
        case MIG_HELLO: got_hello(d, f); break;
        case MIG_PREPARE: got_prepare(d, f); break;
        case MIG_SECRET: got_secret(d, f); break;
        case MIG_MIGRATED: got_migrated(d); break;
        case MIG_COMMIT: got_commit(d); break;
        case MIG_DONE: got_done(d); break;
        default: FAIL(d, VMSUP_ERR_INTERNAL, 0, "the source's %s: nothing to do with it", mig_msg_name(f->type));
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
                fail(d, err);
                return;
        }
        wait_for(d, WAIT_EXPECT, MIG_HELLO, monotonic_ms() + d->answer_ms);
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
                note(d, LOG_LEVEL_WARNING, "turned a connection away: %s", err->msg);
                vmsup_error_free(err);
                pending_drop(d, i);
                return;
        }
        if (evloop_io_set_events(d->pending[i].io, (uint32_t) migchan_handshake_events(d->pending[i].c), &err) < 0) {
                fail(d, err);
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
        note(d, LOG_LEVEL_WARNING,
             "turned a connection away: TLS handshake with %s: no answer within %u s ([migration] handshake_timeout)",
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
                struct pending *p;
                int r = migchan_accept_start(fd, &d->env.tls, &c, &err);

                if (r == 0)
                        return;
                if (r < 0) {
                        fail(d, err);
                        return;
                }
                if (d->n_pending == MIGRATE_DEST_PENDING_MAX) {
                        note(d, LOG_LEVEL_WARNING,
                             "turned a connection away: %s: %d connections are in their TLS handshake, the most this "
                             "host waits for at once; the oldest makes room",
                             migchan_peer(d->pending[0].c), MIGRATE_DEST_PENDING_MAX);
                        pending_drop(d, 0);
                }
                p = &d->pending[d->n_pending];
                *p = (struct pending) { .c = c };
                if (evloop_add_io(d->env.loop, migchan_fd(c), (uint32_t) migchan_handshake_events(c), on_pending_io, d,
                                  &p->io, &err) < 0 ||
                    evloop_add_timer(d->env.loop, monotonic_ms() + (long) d->env.handshake_timeout_s * 1000,
                                     on_pending_timeout, d, &p->timer, &err) < 0) {
                        evloop_source_remove(p->io);
                        migchan_free(c);
                        fail(d, err);
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
                FAIL(d, VMSUP_ERR_BUSY, 0, "wait for the source: no source supervisor came within %u s",
                     d->env.timeout_s);
}

/* ---- receiving the guest ---------------------------------------------------------------- */

static void got_hello(struct migrate_dest *d, struct mig_frame *f) {
        _cleanup_json_ json_object *hello = NULL;
        vmsup_error *err = NULL;

        if (!streq(mig_json_str(f->json, "uuid"), d->env.uuid)) {
                FAIL(d, VMSUP_ERR_DATA, 0, "%s offers guest %s; this host expects %s", d->source,
                     mig_json_str(f->json, "uuid"), d->env.uuid);
                return;
        }
        note(d, LOG_LEVEL_INFO, "source %s (host %s) sends guest %s", d->source, mig_json_str(f->json, "host") ?: "?",
             d->env.uuid);
        hello = mig_hello_new(d->env.uuid);
        if (!hello) {
                FAIL(d, VMSUP_ERR_SYSTEM, ENOMEM, "HELLO");
                return;
        }
        if (send_json(d, MIG_HELLO, hello, &err) < 0) {
                fail(d, err);
                return;
        }
        wait_for(d, WAIT_EXPECT, MIG_PREPARE, monotonic_ms() + d->answer_ms);
}

static void got_prepare(struct migrate_dest *d, struct mig_frame *f) {
        json_object *spec = NULL;
        vmsup_error *err = NULL;
        const char *text;

        json_object_object_get_ex(f->json, "spec", &spec);
        text = json_object_to_json_string_ext(spec, JSON_C_TO_STRING_PLAIN);
        if (guest_spec_parse(text, strlen(text), "the source's guest spec", &d->theirs, &err) < 0) {
                fail(d, err);
                return;
        }
        snprintf(d->secret_id, sizeof(d->secret_id), "%s", mig_json_str(f->json, "secret_uuid") ?: "");
        /* the secret first, then judge: a source told off with its SECRET unread could
         * lose our ABORT to the reset of the connection */
        wait_for(d, WAIT_EXPECT, MIG_SECRET, monotonic_ms() + d->answer_ms);
}

static void got_secret(struct migrate_dest *d, struct mig_frame *f) {
        vmsup_error *err = NULL;
        int r;

        d->secret = (char *) TAKE_PTR(f->secret);
        d->state = MIGRATE_DEST_CLAIMED;
        /* from here until READY the source says nothing; its ABORT or hang-up is heard */
        wait_for(d, WAIT_SOURCE, MIG_MIGRATED, -1);
        r = d->env.received(d->env.userdata, &d->theirs, d->secret_id, d->secret, &err);
        d->secret = secmem_free(d->secret);
        if (r < 0)
                fail(d, err);
}

/* ---- QEMU receives the guest ------------------------------------------------------------ */

static void fail_reply(struct migrate_dest *d, const vmsup_error *err, const char *prefix) {
        fail(d, copy_error(err, prefix));
}

static void tls_added(struct migrate_dest *d, json_object *ret, const vmsup_error *err);
static void caps_set(struct migrate_dest *d, json_object *ret, const vmsup_error *err);
static void params_set(struct migrate_dest *d, json_object *ret, const vmsup_error *err);

void migrate_dest_children_up(struct migrate_dest *d, struct qmp_client *qmp) {
        _cleanup_json_ json_object *creds = json_object_new_object();
        vmsup_error *err = NULL;

        if (d->state != MIGRATE_DEST_CLAIMED)
                return;
        d->qmp = qmp;
        d->state = MIGRATE_DEST_CHILDREN_UP;
        d->t_up = monotonic_ms();
        mark(d, "swtpm and QEMU up");
        json_object_object_add(creds, "qom-type", json_object_new_string("tls-creds-x509"));
        json_object_object_add(creds, "id", json_object_new_string(MIGRATE_DEST_TLS_ID));
        json_object_object_add(creds, "dir", json_object_new_string(d->env.qemu_tls_dir));
        json_object_object_add(creds, "endpoint", json_object_new_string("server"));
        json_object_object_add(creds, "verify-peer", json_object_new_boolean(1));
        d->tls_t0 = monotonic_ms();
        if (qemu_cmd(d, "object-add", creds, -1, tls_added, &err) < 0)
                fail(d, err);
}

static void tls_added(struct migrate_dest *d, json_object *ret, const vmsup_error *qerr) {
        _cleanup_json_ json_object *caps = json_object_new_object();
        json_object *list = json_object_new_array(), *cap = json_object_new_object();
        vmsup_error *err = NULL;
        char prefix[600];

        (void) ret;
        note(d, LOG_LEVEL_DEBUG, "migration: QEMU loaded the TLS credentials in %ld ms", monotonic_ms() - d->tls_t0);
        if (qerr) {
                json_object_put(list);
                json_object_put(cap);
                snprintf(prefix, sizeof(prefix), "QEMU's TLS credentials from '%s'", d->env.qemu_tls_dir);
                fail_reply(d, qerr, prefix);
                return;
        }
        /* Without return-path on both sides the source reports success even when the
         * destination failed to load the guest (platform.md). */
        json_object_object_add(cap, "capability", json_object_new_string("return-path"));
        json_object_object_add(cap, "state", json_object_new_boolean(1));
        json_object_array_add(list, cap);
        /* MIGRATION events: the end of an incoming migration */
        cap = json_object_new_object();
        json_object_object_add(cap, "capability", json_object_new_string("events"));
        json_object_object_add(cap, "state", json_object_new_boolean(1));
        json_object_array_add(list, cap);
        json_object_object_add(caps, "capabilities", list);
        if (qemu_cmd(d, "migrate-set-capabilities", caps, -1, caps_set, &err) < 0)
                fail(d, err);
}

static void caps_set(struct migrate_dest *d, json_object *ret, const vmsup_error *qerr) {
        _cleanup_json_ json_object *params = json_object_new_object();
        vmsup_error *err = NULL;

        (void) ret;
        if (qerr) {
                fail_reply(d, qerr, NULL);
                return;
        }
        json_object_object_add(params, "tls-creds", json_object_new_string(MIGRATE_DEST_TLS_ID));
        if (qemu_cmd(d, "migrate-set-parameters", params, -1, params_set, &err) < 0)
                fail(d, err);
}

static void on_stream(struct evloop_source *s, int fd, uint32_t revents, void *userdata);

/* We listen for QEMU's stream on the address the source reached us at, on a port the
 * kernel picks; the source learns it from READY. The connection is accepted by us (from
 * the source's address only) and handed to QEMU (on_stream()). */
static void params_set(struct migrate_dest *d, json_object *ret, const vmsup_error *qerr) {
        _cleanup_json_ json_object *ready = json_object_new_object();
        struct sockaddr_storage sa;
        socklen_t len = sizeof(sa);
        vmsup_error *err = NULL;
        int port;

        (void) ret;
        if (qerr) {
                fail_reply(d, qerr, NULL);
                return;
        }
        mark(d, "QEMU's TLS set up");
        d->stream_listen_fd = migchan_listen(migchan_local_addr(d->ch), "0", &err);
        if (d->stream_listen_fd < 0) {
                vmsup_error_prefix(&err, "listen for QEMU's migration stream");
                fail(d, err);
                return;
        }
        if (getsockname(d->stream_listen_fd, (struct sockaddr *) &sa, &len) < 0) {
                FAIL(d, VMSUP_ERR_SYSTEM, errno, "listen for QEMU's migration stream");
                return;
        }
        port = ntohs(sa.ss_family == AF_INET6 ? ((struct sockaddr_in6 *) &sa)->sin6_port
                                              : ((struct sockaddr_in *) &sa)->sin_port);
        if (evloop_add_io(d->env.loop, d->stream_listen_fd, EPOLLIN, on_stream, d, &d->stream_io, &err) < 0) {
                fail(d, err);
                return;
        }
        json_object_object_add(ready, "port", json_object_new_int(port));
        if (send_json(d, MIG_READY, ready, &err) < 0) {
                fail(d, err);
                return;
        }
        d->state = MIGRATE_DEST_READY_SENT;
        note(d, LOG_LEVEL_INFO, "ready: QEMU receives on port %d (TLS)", port);
        mark(d, "READY sent");
        wait_for(d, WAIT_SOURCE, MIG_MIGRATED, d->deadline);
}

/* The address of a peer as 16 bytes, an IPv4 one as IPv6 maps it (the source may reach
 * our dual-stack channel as ::ffff:a.b.c.d and the stream's listener as a.b.c.d). */
static bool address_of(const struct sockaddr_storage *sa, struct in6_addr *ret) {
        if (sa->ss_family == AF_INET6) {
                *ret = ((const struct sockaddr_in6 *) sa)->sin6_addr;
                return true;
        }
        if (sa->ss_family == AF_INET) {
                memset(ret, 0, sizeof(*ret));
                ret->s6_addr[10] = ret->s6_addr[11] = 0xff;
                memcpy(&ret->s6_addr[12], &((const struct sockaddr_in *) sa)->sin_addr, 4);
                return true;
        }
        return false;
}

static bool same_host(const struct sockaddr_storage *a, const struct sockaddr_storage *b) {
        struct in6_addr x, y;

        return address_of(a, &x) && address_of(b, &y) && memcmp(&x, &y, sizeof(x)) == 0;
}

/* A dead link fails QEMU's migration by itself after [migration] answer_timeout:
 * unacknowledged data or unanswered keepalive probes for that long end the connection. */
static void stream_keepalive(struct migrate_dest *d, int fd) {
        int one = 1, idle = d->answer_ms / 3000 > 0 ? d->answer_ms / 3000 : 1;
        unsigned user_timeout = (unsigned) d->answer_ms;

        if (setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one)) < 0 ||
            setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle)) < 0 ||
            setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &idle, sizeof(idle)) < 0 ||
            setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &user_timeout, sizeof(user_timeout)) < 0)
                note(d, LOG_LEVEL_WARNING,
                     "QEMU's migration connection: keepalive: %s (a dead link then waits for the migration timeout)",
                     strerror(errno));
}

static void stream_given(struct migrate_dest *d, json_object *ret, const vmsup_error *err);
static void incoming_started(struct migrate_dest *d, json_object *ret, const vmsup_error *err);

/* QEMU's stream connects: from the source supervisor's host, it goes to QEMU
 * (migrate-incoming fd:); from anywhere else it is turned away and we listen on. */
static void on_stream(struct evloop_source *s, int lfd, uint32_t revents, void *userdata) {
        struct migrate_dest *d = userdata;
        _cleanup_json_ json_object *args = json_object_new_object();
        struct sockaddr_storage peer, source;
        socklen_t plen = sizeof(peer), slen = sizeof(source);
        char addr[INET6_ADDRSTRLEN] = "?";
        vmsup_error *err = NULL;
        int fd;

        (void) s, (void) revents;
        fd = accept4(lfd, (struct sockaddr *) &peer, &plen, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
                if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
                        FAIL(d, VMSUP_ERR_SYSTEM, errno, "accept QEMU's migration stream");
                return;
        }
        if (getpeername(migchan_fd(d->ch), (struct sockaddr *) &source, &slen) < 0 || !same_host(&peer, &source)) {
                inet_ntop(peer.ss_family,
                          peer.ss_family == AF_INET6 ? (void *) &((struct sockaddr_in6 *) &peer)->sin6_addr
                                                     : (void *) &((struct sockaddr_in *) &peer)->sin_addr,
                          addr, sizeof(addr));
                note(d, LOG_LEVEL_WARNING, "turned away a migration stream from %s: the source is %s", addr, d->source);
                close(fd);
                return;
        }
        close_stream_listener(d);
        d->stream_fd = fd;
        stream_keepalive(d, fd);
        json_object_object_add(args, "fdname", json_object_new_string(MIGRATE_DEST_STREAM_FD_NAME));
        if (qemu_cmd(d, "getfd", args, fd, stream_given, &err) < 0) {
                vmsup_error_prefix(&err, "hand QEMU the migration connection");
                fail(d, err);
        }
}

static void stream_given(struct migrate_dest *d, json_object *ret, const vmsup_error *qerr) {
        _cleanup_json_ json_object *args = json_object_new_object();
        vmsup_error *err = NULL;

        (void) ret;
        if (qerr) {
                fail_reply(d, qerr, "hand QEMU the migration connection");
                return;
        }
        json_object_object_add(args, "uri", json_object_new_string("fd:" MIGRATE_DEST_STREAM_FD_NAME));
        if (qemu_cmd(d, "migrate-incoming", args, -1, incoming_started, &err) < 0) {
                vmsup_error_prefix(&err, "QEMU migrate-incoming");
                fail(d, err);
        }
}

static void loaded(struct migrate_dest *d);

static void incoming_started(struct migrate_dest *d, json_object *ret, const vmsup_error *qerr) {
        (void) ret;
        if (qerr) {
                fail_reply(d, qerr, "QEMU migrate-incoming");
                return;
        }
        if (d->state == MIGRATE_DEST_READY_SENT)
                d->state = MIGRATE_DEST_LOADING;
        mark(d, "stream accepted, migrate-incoming");
}

/* QEMU said its load failed: it exits after saying why; a moment for that, then fail with
 * its log. */
static void on_qemu_failed_wait(struct evloop_source *s, void *userdata) {
        struct migrate_dest *d = userdata;

        (void) s;
        child_failed(d, true, "QEMU failed to load the guest");
}

static void qemu_load_failed(struct migrate_dest *d) {
        vmsup_error *err = NULL;

        if (d->qemu_failed)
                return;
        d->qemu_failed = true;
        /* a MIGRATED still on its way is no surprise: only the timer stops */
        evloop_timer_set(d->wait_timer, -1);
        d->wait_timeout_fmt = NULL;
        if (d->qemu_gone ||
            evloop_add_timer(d->env.loop, monotonic_ms() + QEMU_FAILED_EXIT_MS, on_qemu_failed_wait, d,
                             &d->qemu_exit_timer, &err) < 0) {
                vmsup_error_free(err);
                child_failed(d, true, "QEMU failed to load the guest");
        }
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
                qemu_load_failed(d);
        else if (streq(status, "completed") && d->migrated)
                loaded(d);
}

void migrate_dest_qmp_lost(struct migrate_dest *d, const vmsup_error *why) {
        if (!d->qmp)
                return;
        d->qmp = NULL;
        /* the client is gone with their callbacks */
        while (d->cmds) {
                struct cmd *c = d->cmds;

                d->cmds = c->next;
                free(c);
        }
        /* QEMU that said its load failed closes its monitor as it exits: its log says why
         * (on_qemu_failed_wait); once the guest runs, its monitor is the supervisor's */
        if (!d->qemu_failed && d->state >= MIGRATE_DEST_CHILDREN_UP && d->state < MIGRATE_DEST_RUNNING)
                fail(d, copy_error(why, "QEMU's monitor"));
}

void migrate_dest_child_exited(struct migrate_dest *d, bool qemu) {
        if (qemu)
                d->qemu_gone = true;
        if (d->state < MIGRATE_DEST_CHILDREN_UP || d->state >= MIGRATE_DEST_COMMITTED)
                return; /* not ours to watch: before, the supervisor's start; after, its guest */
        if (qemu && d->qemu_failed)
                child_failed(d, true, "QEMU failed to load the guest");
        else
                child_failed(d, qemu, qemu ? "QEMU ended while receiving the guest" : "swtpm ended while receiving the guest");
}

static void got_migrated(struct migrate_dest *d) {
        mark(d, "MIGRATED received");
        d->migrated = true;
        /* the source completes only once we loaded everything (return path); our own
         * MIGRATION event may come a moment later */
        if (streq(d->qemu_status, "completed")) {
                loaded(d);
                return;
        }
        if (streq(d->qemu_status, "failed")) {
                qemu_load_failed(d);
                return;
        }
        d->wait = WAIT_SOURCE;
        d->wait_type = MIG_MIGRATED;
        d->wait_timeout_fmt = "status";
        evloop_timer_set(d->wait_timer, monotonic_ms() + d->answer_ms);
}

static void status_before_commit(struct migrate_dest *d, json_object *ret, const vmsup_error *err);

static void loaded(struct migrate_dest *d) {
        vmsup_error *err = NULL;

        if (d->checking)
                return;
        d->checking = true;
        stop_waiting(d);
        d->state = MIGRATE_DEST_LOADING;
        if (qemu_cmd(d, "query-status", NULL, -1, status_before_commit, &err) < 0)
                fail(d, err);
}

static void status_before_commit(struct migrate_dest *d, json_object *ret, const vmsup_error *qerr) {
        _cleanup_json_ json_object *prepared = json_object_new_object();
        vmsup_error *err = NULL;
        int64_t generation = 0;

        if (qerr) {
                fail_reply(d, qerr, NULL);
                return;
        }
        if (streq(mig_json_str(ret, "status"), "running")) {
                FAIL(d, VMSUP_ERR_INTERNAL, 0, "QEMU runs the guest before the source said so");
                return;
        }
        /* The TPM state must be here, and sealed, before the source lets go. */
        if (d->env.seal(d->env.userdata, &generation, &err) < 0) {
                fail(d, err);
                return;
        }
        d->state = MIGRATE_DEST_SEALED;
        json_object_object_add(prepared, "generation", json_object_new_int64(generation));
        if (send_json(d, MIG_PREPARED, prepared, &err) < 0) {
                fail(d, err);
                return;
        }
        d->state = MIGRATE_DEST_PREPARED_SENT;
        note(d, LOG_LEVEL_INFO, "guest received in %ld ms; TPM state sealed; waiting for the source's go",
             monotonic_ms() - d->t_up);
        wait_for(d, WAIT_SOURCE, MIG_COMMIT, monotonic_ms() + d->answer_ms);
}

/* ---- running the guest ------------------------------------------------------------------- */

static void contd(struct migrate_dest *d, json_object *ret, const vmsup_error *err);
static void status_after_cont(struct migrate_dest *d, json_object *ret, const vmsup_error *err);

static void got_commit(struct migrate_dest *d) {
        vmsup_error *err = NULL;

        /* From COMMIT on, the source holds no copy that may run: whatever happens here,
         * ours stays, and its marker keeps it from starting again until the source
         * confirms (DONE) or an operator resolves it. A marker that cannot be written is a
         * plain failure: the source rolls back. */
        if (d->env.mark_committed(d->env.userdata, d->source, &err) < 0) {
                fail(d, err);
                return;
        }
        d->state = MIGRATE_DEST_COMMITTED;
        /* what the source says now is read once RUNNING is sent */
        if (evloop_io_set_events(d->ch_io, 0, &err) < 0) {
                fail(d, err);
                return;
        }
        if (qemu_cmd(d, "cont", NULL, -1, contd, &err) < 0) {
                vmsup_error_prefix(&err, "run the received guest");
                fail(d, err);
                return;
        }
        /* The source must not roll back a guest that may run here: from now on, whatever
         * fails, it is not told ABORT (docs/migration.md). */
        d->cont_issued = true;
}

static void contd(struct migrate_dest *d, json_object *ret, const vmsup_error *qerr) {
        vmsup_error *err = NULL;

        (void) ret;
        if (qerr) {
                fail_reply(d, qerr, "run the received guest");
                return;
        }
        if (qemu_cmd(d, "query-status", NULL, -1, status_after_cont, &err) < 0)
                fail(d, err);
}

static void status_after_cont(struct migrate_dest *d, json_object *ret, const vmsup_error *qerr) {
        vmsup_error *err = NULL;

        if (qerr) {
                fail_reply(d, qerr, NULL);
                return;
        }
        if (!streq(mig_json_str(ret, "status"), "running")) {
                FAIL(d, VMSUP_ERR_FAILED, 0, "the received guest does not run after cont (QEMU: %s)",
                     mig_json_str(ret, "status") ?: "?");
                return;
        }
        d->state = MIGRATE_DEST_RUNNING;
        d->env.started(d->env.userdata);
        /* The marker goes only when the source says it holds its migrated-out marker:
         * until then the source may not know, and an operator may take it back there. */
        if (send_json(d, MIG_RUNNING, NULL, &err) < 0) {
                finish(d, MIGRATE_DEST_RAN, err);
                return;
        }
        wait_for(d, WAIT_SOURCE, MIG_DONE, monotonic_ms() + d->answer_ms);
        if (evloop_io_set_events(d->ch_io, EPOLLIN, &err) < 0)
                finish(d, MIGRATE_DEST_RAN, err);
}

static void got_done(struct migrate_dest *d) {
        finish(d, MIGRATE_DEST_RAN, NULL);
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
        note(d, LOG_LEVEL_INFO, "waiting up to %u s for guest %s from a source supervisor on %s%s%s:%s", env->timeout_s,
             env->uuid, env->listen_addr && strchr(env->listen_addr, ':') ? "[" : "",
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
        close_stream_listener(d);
        for (struct cmd *c = d->cmds; c; c = c->next)
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
