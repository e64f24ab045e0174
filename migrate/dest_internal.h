/* The destination of a live migration inside (migrate/dest.h is its API): what its two
 * files share. dest.c is the state machine: its state and transitions, the source's
 * frames in their order, the listener, the end (abort, finish) and the entry points;
 * dest_qemu.c is QEMU's side: the QMP commands and their replies, the incoming stream,
 * the load, `cont`. Only these two files include this header. */
#ifndef VMSUP_MIGRATE_DEST_INTERNAL_H
#define VMSUP_MIGRATE_DEST_INTERNAL_H

#include <json-c/json.h>
#include <stdbool.h>

#include "common/error.h"
#include "common/evloop.h"
#include "common/log.h"
#include "migrate/dest.h"
#include "migrate/migchan.h"

/* A connection in its TLS handshake, and when it must have completed it. */
struct dst_pending {
        struct migchan *c;
        struct evloop_source *io, *timer;
};

/* What a wait on the source is, for its messages. */
enum dst_wait {
        DST_WAIT_NONE,
        DST_WAIT_EXPECT,  /* HELLO, PREPARE, SECRET: the channel's own words */
        DST_WAIT_SOURCE,  /* MIGRATED, COMMIT, DONE */
};

/* One QMP command in flight; outlives the destination when freed before its reply. */
struct dst_cmd {
        struct migrate_dest *d;
        void (*done)(struct migrate_dest *d, json_object *ret, const vmsup_error *err);
        struct dst_cmd *next;
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
        struct dst_pending pending[MIGRATE_DEST_PENDING_MAX];
        size_t n_pending;

        struct migchan *ch;
        struct evloop_source *ch_io;
        char source[320];
        char secret_id[37];
        uint64_t tpm_generation; /* the source's sealed state's (PREPARE); 0 when not sent */
        struct guest_spec theirs;
        char *secret; /* secmem, until received() */

        enum dst_wait wait;
        enum mig_msg wait_type;
        struct evloop_source *wait_timer;
        const char *wait_timeout_fmt; /* DST_WAIT_SOURCE with a status instead of a frame */

        struct qmp_client *qmp;
        struct dst_cmd *cmds;
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

/* ---- dest.c ---- */

void dst_note(struct migrate_dest *d, enum log_level level, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));
void dst_mark(struct migrate_dest *d, const char *what);
void dst_stop_waiting(struct migrate_dest *d);
void dst_wait_for(struct migrate_dest *d, enum dst_wait kind, enum mig_msg type, long deadline);
/* obj NULL sends {}; within answer_timeout */
int dst_send_json(struct migrate_dest *d, enum mig_msg type, json_object *obj, vmsup_error **err);
void dst_close_stream_listener(struct migrate_dest *d);
void dst_finish(struct migrate_dest *d, enum migrate_dest_outcome outcome, vmsup_error *why);
void dst_fail(struct migrate_dest *d, vmsup_error *err);
vmsup_error *dst_copy_error(const vmsup_error *e, const char *prefix);
void dst_child_failed(struct migrate_dest *d, bool qemu, const char *what);

/* dst_fail() with a new error: vmsup_fail()'s arguments after its first */
#define DST_FAIL(d, ...)                      \
        do {                                  \
                vmsup_error *e_ = NULL;       \
                vmsup_fail(&e_, __VA_ARGS__); \
                dst_fail((d), e_);            \
        } while (0)

/* ---- dest_qemu.c ---- */

/* children up: QEMU's TLS credentials, the migration's capabilities and parameters, the
 * stream's listener, READY; the stream then goes to QEMU (migrate-incoming) */
void dst_qemu_setup(struct migrate_dest *d);
/* QEMU's MIGRATION status "failed" */
void dst_qemu_load_failed(struct migrate_dest *d);
/* QEMU completed its load and the source's MIGRATED came: check, seal, PREPARED */
void dst_qemu_loaded(struct migrate_dest *d);
/* COMMIT: `cont`, then RUNNING once QEMU says the guest runs */
int dst_qemu_cont(struct migrate_dest *d, vmsup_error **err);

#endif
