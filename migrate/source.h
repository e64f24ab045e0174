/* The source's half of a live migration (docs/migration.md) as a state machine on the
 * process's one event loop: hand the guest to the destination's supervisor, let QEMU carry
 * memory and TPM state over its own TLS, and say "done" only once the guest runs there.
 *
 * States, in order: connecting (QEMU's run state asked, the channel's TCP connect and TLS
 * handshake, HELLO both ways), handed over (PREPARE and SECRET sent, waiting for READY),
 * ready (QEMU set up for TLS, its stream connected and handed to it, migrate issued),
 * streaming (until QEMU completes), completed (MIGRATED sent, waiting for PREPARED),
 * prepared, marked (the supervisor wrote the migrated-out marker), committed (COMMIT sent,
 * waiting for RUNNING), done (DONE sent). Any failure before committed goes through
 * rolling back (ABORT to the destination, QEMU's stream shut down, its migration cancelled,
 * the guest resumed if it was running, the marker removed) to rolled back. A lost answer
 * after COMMIT is unknown: nothing is undone, the guest stays paused with the marker.
 *
 * Nothing here waits outside the loop, but for sending a frame: frames are small and go
 * with migchan_send()'s bounded blocking send (answer_timeout), and the name resolution of
 * the connects (getaddrinfo). QEMU is driven with asynchronous QMP commands only. Nothing
 * here logs: what the supervisor should log comes through note(). */
#ifndef VMSUP_MIGRATE_SOURCE_H
#define VMSUP_MIGRATE_SOURCE_H

#include <json-c/json.h>
#include <stdbool.h>
#include <stdint.h>

#include "common/error.h"
#include "common/evloop.h"
#include "common/log.h"
#include "migrate/migchan.h"
#include "qmp/client.h"

#define MIGRATE_SOURCE_SECRET_ID_LEN 36
/* QEMU's names for our tls-creds-x509 object and for the stream socket we hand it (getfd) */
#define MIGRATE_SOURCE_QEMU_TLS_ID "vmsup-migration-tls"
#define MIGRATE_SOURCE_STREAM_FD_NAME "vmsup-migration"

enum migrate_outcome {
        MIGRATE_DONE,            /* the guest runs on the destination: ours goes */
        MIGRATE_ROLLED_BACK,     /* the guest is here as before (running if it ran) */
        MIGRATE_OUTCOME_UNKNOWN, /* COMMIT went out, no answer came: paused here, marker kept */
};

/* Monotonic times (ms) and QEMU's figures of a migration, for the supervisor's reply. */
struct migrate_source_times {
        long t0, ready_at, completed_at, running_at;
        int64_t qemu_total_ms, downtime_ms;
};

struct migrate_source_env {
        /* borrowed for the migration's life */
        struct evloop *loop;
        /* where the supervisor keeps QEMU's monitor: read at each command, NULL once it is
         * gone (a client it frees must be NULL here first) */
        struct qmp_client **qmp;
        /* QEMU has our tls-creds-x509 object (it is replaced: certificates may be renewed) */
        bool *qemu_tls_added;
        const char *uuid;
        const char *host, *port;    /* the destination, as given with --to */
        struct migchan_tls tls;     /* the supervisors' channel, client side; peer_name = host */
        const char *qemu_tls_dir;   /* [migration] qemu_tls_dir */
        unsigned timeout_s;         /* [migration] timeout: the whole migration */
        int answer_ms;              /* [migration] answer_timeout */
        int qmp_timeout_ms;         /* each QMP command */
        int cancel_timeout_ms;      /* QEMU's migration to end after migrate_cancel */
        int progress_interval_ms;   /* query-migrate while QEMU streams */

        /* QMP commands were queued: the supervisor re-reads qmp_client_epoll_events() */
        void (*qmp_queued)(void *userdata);
        /* The hand-over's payload, just before connecting: the passphrase (secmem, taken by
         * the source, which wipes it), the local store's secret id and the guest spec (a new
         * reference). An error ends the migration before anything is sent. */
        int (*handover)(void *userdata, char **ret_passphrase, char ret_secret_id[MIGRATE_SOURCE_SECRET_ID_LEN + 1],
                        json_object **ret_spec, vmsup_error **err);
        /* The generation of the guest's sealed TPM state, sent with the hand-over so that
         * the destination's generations (and its rollback anchor) go on from it. May be
         * NULL: none is sent. */
        uint64_t (*tpm_generation)(void *userdata);
        /* A progress object for the client ({"phase", "message"}, or the transfer's figures);
         * the callee takes the reference. */
        void (*progress)(void *userdata, json_object *p);
        void (*note)(void *userdata, enum log_level level, const char *text);
        /* The migrated-out marker, written before COMMIT; removed by a rollback after it. */
        int (*write_marker)(void *userdata, vmsup_error **err);
        void (*remove_marker)(void *userdata);
        /* The end, called once, last thing from a loop callback; the supervisor may free
         * the source in it. why: NULL for DONE; otherwise what went wrong (borrowed). */
        void (*finished)(void *userdata, enum migrate_outcome outcome, const vmsup_error *why,
                         const struct migrate_source_times *times);
        void *userdata;
};

struct migrate_source;

/* Start: every step from here on runs from the loop. env is copied (its strings and the
 * objects it points to are borrowed). */
int migrate_source_start(const struct migrate_source_env *env, struct migrate_source **ret, vmsup_error **err);
/* Removes its sources and closes its connections (no ABORT is sent, nothing is undone:
 * call after finished(), or when the process ends anyway). NULL is fine; returns NULL. */
struct migrate_source *migrate_source_free(struct migrate_source *s);

/* QEMU's events, as the supervisor's QMP client hands them over (only MIGRATION is read). */
void migrate_source_qemu_event(struct migrate_source *s, const char *event, json_object *data);
/* QEMU exited. */
void migrate_source_qemu_exited(struct migrate_source *s);
/* SIGTERM or SIGINT: before COMMIT the migration is cancelled ("cancelled: the source's
 * supervisor got SIGTERM; ...", 75) and rolled back; after it, ignored (the migration
 * finishes). Returns true when it cancelled, or stopped a rollback's wait. */
bool migrate_source_interrupt(struct migrate_source *s, int signo);

/* For `vmsup status`: QEMU's migration status ("" before migrate), the share of memory
 * sent, and whether COMMIT was sent (a signal no longer cancels). */
const char *migrate_source_qemu_status(const struct migrate_source *s);
int migrate_source_percent(const struct migrate_source *s);
bool migrate_source_committed(const struct migrate_source *s);
const char *migrate_source_state_name(const struct migrate_source *s);

#endif
