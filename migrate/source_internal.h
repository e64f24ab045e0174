/* What the source's files share (source.c: the channel, the forward path, the end and the
 * entry points; source_stream.c: QEMU's side of the stream; source_rollback.c: the
 * rollback): the state machine's struct and the steps they call across. Not an API: the
 * supervisor uses source.h. */
#ifndef VMSUP_MIGRATE_SOURCE_INTERNAL_H
#define VMSUP_MIGRATE_SOURCE_INTERNAL_H

#include <json-c/json.h>
#include <stdbool.h>

#include "common/error.h"
#include "common/evloop.h"
#include "common/log.h"
#include "migrate/migchan.h"
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

/* source.c: notes for the supervisor, progress for the client */
void src_note(struct migrate_source *s, enum log_level level, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));
void src_progress(struct migrate_source *s, const char *phase, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));
/* A QMP reply's error as ours: its kind and message */
int src_error_from(vmsup_error **dst, const vmsup_error *src);

/* source.c: QEMU, the timers, the channel */
int src_qmp_send(struct migrate_source *s, const char *cmd, json_object *args, int pass_fd, bool always,
                 src_reply_fn fn, vmsup_error **err);
bool src_qemu_usable(struct migrate_source *s);
/* evloop_timer_set() on a timer that may not exist (yet) */
void src_timer_set(struct evloop_source *t, long deadline);
void src_await(struct migrate_source *s, enum mig_msg type);
int src_send_frame(struct migrate_source *s, enum mig_msg type, json_object *obj, vmsup_error **err);
bool src_drain_channel(struct migrate_source *s);
void src_figures(struct migrate_source *s, json_object *info);

/* source.c: the end. src_fail() takes why and rolls back (or ends unknown after COMMIT);
 * src_finish() ends with outcome o. */
void src_fail(struct migrate_source *s, vmsup_error *why);
void src_finish(struct migrate_source *s, enum migrate_outcome o);

/* source_stream.c: QEMU's side of the stream */
void src_ready_next(struct migrate_source *s);
/* migrate's reply: migrate_source_qemu_exited() knows that call by it */
void src_on_migrate_reply(struct migrate_source *s, json_object *ret, const vmsup_error *e);
void src_stream_shutdown(struct migrate_source *s);
/* QEMU's migration status is one it ends in */
bool src_qemu_ended(const char *status);
/* the timers migrate_source_start() adds */
void src_on_tick(struct evloop_source *t, void *userdata);
void src_on_deadline(struct evloop_source *t, void *userdata);

/* source_rollback.c: the rollback's next step, from s->rb */
void src_roll_back_next(struct migrate_source *s);
void src_rb_advance(struct migrate_source *s, enum rb_step next);
void src_on_wait_timer(struct evloop_source *t, void *userdata);

#endif
