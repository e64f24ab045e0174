/* The destination of a live migration (`vmsup run --incoming`, docs/migration.md) as a
 * state machine on the process's one event loop: it adds its own sources (the listening
 * socket, the connections in their TLS handshake and their deadlines, the channel to the
 * source, the listener of QEMU's stream, its timers) and never waits by itself, but for
 * sending a frame: migchan_send's bounded blocking send (frames are small, at most
 * answer_timeout each).
 *
 * States, in order (any failure before `cont` goes through aborting: ABORT to the source,
 * then finished(MIGRATE_DEST_ABORTED)):
 *   waiting        listening; up to MIGRATE_DEST_PENDING_MAX TLS handshakes at once
 *   receiving      the source's HELLO, PREPARE, SECRET
 *   claimed        received() took the guest: the supervisor starts its children
 *   children up    migrate_dest_children_up(): QEMU's TLS for the stream, its listener
 *   ready sent     READY {port}; QEMU's stream is accepted (from the source's host only)
 *   loading        migrate-incoming; the source's MIGRATED and QEMU's completed load
 *   sealed         QEMU paused with the guest; the TPM state sealed (seal())
 *   prepared sent  PREPARED {generation}; the source's COMMIT
 *   committed      mark_committed(); `cont`: from here on no ABORT is ever sent (the
 *                  source must not roll back a guest that may run here)
 *   running        started(); RUNNING sent; the source's DONE
 * Nothing here logs: what today's supervisor logged comes through note(). */
#ifndef VMSUP_MIGRATE_DEST_H
#define VMSUP_MIGRATE_DEST_H

#include <json-c/json.h>
#include <stdbool.h>
#include <stdint.h>

#include "common/error.h"
#include "common/evloop.h"
#include "common/log.h"
#include "migrate/migchan.h"
#include "nova/guestspec.h"
#include "qmp/client.h"

/* connections in their TLS handshake at once while the destination waits for its source */
#define MIGRATE_DEST_PENDING_MAX 8
/* QEMU's name for the stream's socket (getfd), and for its TLS credentials */
#define MIGRATE_DEST_STREAM_FD_NAME "vmsup-migration"
#define MIGRATE_DEST_TLS_ID "vmsup-migration-tls"

enum migrate_dest_state {
        MIGRATE_DEST_WAITING,
        MIGRATE_DEST_RECEIVING,
        MIGRATE_DEST_CLAIMED,
        MIGRATE_DEST_CHILDREN_UP,
        MIGRATE_DEST_READY_SENT,
        MIGRATE_DEST_LOADING,
        MIGRATE_DEST_SEALED,
        MIGRATE_DEST_PREPARED_SENT,
        MIGRATE_DEST_COMMITTED,
        MIGRATE_DEST_RUNNING,
        MIGRATE_DEST_ABORTING,
        MIGRATE_DEST_FINISHED,
};

enum migrate_dest_outcome {
        /* the guest runs here; why NULL: the source confirmed (DONE), the incoming marker
         * may go; otherwise why the hand-over is unconfirmed (the marker stays) */
        MIGRATE_DEST_RAN,
        /* given up before COMMIT's marker, the source told (ABORT): nothing of the guest
         * may stay here */
        MIGRATE_DEST_ABORTED,
        /* given up after the committed marker (cont or the status after it failed): the
         * source was NOT told, the copy here stays, marked */
        MIGRATE_DEST_FAILED_COMMITTED,
};

struct migrate_dest;

/* Borrowed for the migration's life. Callbacks run from the loop's callbacks (never from
 * migrate_dest_new() or _free()); each may call migrate_dest_* functions but
 * migrate_dest_free(), except finished(), after which the destination does nothing more
 * and may be freed from inside it. */
struct migrate_dest_env {
        struct evloop *loop;
        const char *uuid;                      /* the guest this host expects */
        const char *listen_addr, *listen_port; /* addr NULL or "": any */
        struct migchan_tls tls;                /* the channel's server side */
        const char *qemu_tls_dir;              /* [migration] qemu_tls_dir, for QEMU's stream */
        unsigned timeout_s, answer_timeout_s, handshake_timeout_s; /* [migration] */
        int qmp_timeout_ms;                    /* each QMP command */
        void *userdata;

        /* What the supervisor logs (level from common/log.h). */
        void (*note)(void *userdata, enum log_level level, const char *text);
        /* The source sent the guest: its spec (parsed) and vTPM secret (id and passphrase,
         * wiped after the call). Match the spec with this host's, claim the guest, keep
         * the secret, start the children; call migrate_dest_children_up() once QEMU waits
         * (from inside or later). <0 refuses the guest: the error goes to the source. */
        int (*received)(void *userdata, const struct guest_spec *spec, const char *secret_uuid, const char *secret,
                        vmsup_error **err);
        /* Called after each QMP command queued on the client (the supervisor's io source
         * must then watch for EPOLLOUT: qmp_client_epoll_events()). May be NULL. */
        void (*qmp_queued)(void *userdata);
        /* QEMU paused with the guest loaded: the TPM state must be in the live dir;
         * seal it and give the generation PREPARED announces. */
        int (*seal)(void *userdata, int64_t *ret_generation, vmsup_error **err);
        /* COMMIT: write the committed marker, durably, before anything else. <0 is a
         * plain failure (ABORT: the source rolls back). */
        int (*mark_committed)(void *userdata, const char *source, vmsup_error **err);
        /* QEMU runs the guest (after cont). */
        void (*started)(void *userdata);
        /* The last lines of QEMU's (qemu true) or swtpm's log, for a message; NULL: none. */
        char *(*log_tail)(void *userdata, bool qemu);
        /* The end; why is borrowed for the call (NULL only for a confirmed MIGRATE_DEST_RAN). */
        void (*finished)(void *userdata, enum migrate_dest_outcome outcome, const vmsup_error *why);
};

/* Listen (env->listen_addr:port) and wait on env->loop; the TLS credentials are checked
 * first (78). */
int migrate_dest_new(const struct migrate_dest_env *env, struct migrate_dest **ret, vmsup_error **err);
/* Removes its sources, closes what it holds (not the qmp client); sends nothing. NULL ok. */
struct migrate_dest *migrate_dest_free(struct migrate_dest *d);
static inline void migrate_dest_freep(struct migrate_dest **d) {
        migrate_dest_free(*d);
}
#define _cleanup_migrate_dest_ __attribute__((cleanup(migrate_dest_freep)))

/* QEMU waits (-incoming defer) with its monitor on qmp (borrowed, handshake done). */
void migrate_dest_children_up(struct migrate_dest *d, struct qmp_client *qmp);
/* Forward each QEMU event (the MIGRATION events matter). */
void migrate_dest_qemu_event(struct migrate_dest *d, const char *event, json_object *data);
/* The supervisor dropped the qmp client given to children_up() (its connection failed,
 * or QEMU is being stopped): its commands of ours are forgotten, and before COMMIT's
 * marker the migration fails ("QEMU's monitor: why"). */
void migrate_dest_qmp_lost(struct migrate_dest *d, const vmsup_error *why);
/* QEMU (qemu true) or swtpm ended. */
void migrate_dest_child_exited(struct migrate_dest *d, bool qemu);
/* Give up (a stop request, a signal): before COMMIT, ABORT with why and 1 (finished()
 * follows); from COMMIT on, 0: too late, the migration goes on. */
int migrate_dest_cancel(struct migrate_dest *d, const vmsup_error *why);

/* the port it listens on for the source (before the source came), else 0 */
int migrate_dest_port(const struct migrate_dest *d);
enum migrate_dest_state migrate_dest_state(const struct migrate_dest *d);
/* "waiting for the source", "receiving", ..., "running" */
const char *migrate_dest_phase(const struct migrate_dest *d);
const char *migrate_dest_state_name(enum migrate_dest_state s);
/* the source supervisor's "ADDR:PORT (CN=...)" once its TLS handshake completed; NULL before */
/* The generation of the source's sealed TPM state (its PREPARE); 0 when it sent none. */
uint64_t migrate_dest_tpm_generation(const struct migrate_dest *d);
const char *migrate_dest_source(const struct migrate_dest *d);

#endif
