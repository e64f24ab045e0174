/* What the supervisor's files share (guest.c, children.c, requests.c, run.c) and share
 * with the live-migration code (migrate_out.c and migrate_in.c): the supervised guest
 * and the steps they need. Not an API. */
#ifndef VMSUP_SUPERVISOR_GUEST_INTERNAL_H
#define VMSUP_SUPERVISOR_GUEST_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>
#include <signal.h>
#include <sys/types.h>
#include <time.h>

#include "common/error.h"
#include "common/evloop.h"
#include "qmp/client.h"
#include "supervisor/control.h"
#include "supervisor/guest.h"
#include "supervisor/guestdirs.h"
#include "nova/guestspec.h"
#include "supervisor/hostconfig.h"
#include "nova/tpmrules.h"
#include "tpmstate/sync.h"

/* Timeouts (ms) for steps that should take a fraction of that on any host. */
#define QMP_HANDSHAKE_TIMEOUT 30000
#define QMP_COMMAND_TIMEOUT 30000
/* `vmsup status` answers within its client's wait even when QEMU does not */
#define STATUS_QMP_TIMEOUT_MS 5000
#define TPM_CTRL_TIMEOUT 5000
#define SWTPM_EXIT_TIMEOUT 10000
/* a swtpm that did not answer CMD_SHUTDOWN gets this long after SIGTERM, then SIGKILL */
#define SWTPM_TERM_TIMEOUT 5000
#define QEMU_QUIT_TIMEOUT 10000
/* accept() found no free fd: the control socket is left alone for this long (ms) */
#define CONTROL_ACCEPT_BACKOFF_MS 250
/* fds held on /dev/null and let go when sealing the TPM state or refusing a control
 * client needs them, so that a full fd table never stops either */
#define FD_RESERVE 8

enum guest_state { GUEST_STARTING, GUEST_RUNNING, GUEST_STOPPING, GUEST_REBOOTING, GUEST_STOPPED };


struct child {
        const char *name;
        pid_t pid; /* 0 when not running */
        int pidfd;
        struct evloop_source *src; /* its exit, on the loop (a pidfd of the loop's own) */
        bool exited;
        int status;
};

struct guest {
        const struct host_config *cfg;
        struct guest_spec spec;
        struct vtpm_config tpm;
        struct guest_dirs dirs;
        char *qemu_path, *swtpm_path, *swtpm_setup_path;
        uid_t tpm_uid;  /* confine_guest_ids() */
        gid_t tpm_gid;
        bool tpm_uid_private; /* no other guest's swtpm runs as tpm_uid */
        uid_t qemu_uid;
        gid_t qemu_gid;
        gid_t qemu_groups[1];
        size_t n_qemu_groups;

        /* The one event loop (common/evloop.h) and the guest's sources on it. sigfd and
         * listen_fd are the signal and listen sources' fds, for a migration's own wait. */
        struct evloop *loop;
        struct evloop_source *sig_src, *listen_src, *qmp_src, *sync_src;
        struct evloop_source *accept_timer; /* armed: the listen fd is not watched until then (no fd to accept) */
        struct evloop_source *qmp_timer;    /* the QMP client's next command deadline */
        struct evloop_source *stop_timer;   /* powerdown grace ends, then quit */
        struct evloop_source *kill_timer;   /* quit grace ends, then SIGKILL */
        int lock_fd, sigfd, listen_fd;
        int cancel_fd;          /* signalfd for SIGTERM and SIGINT while the guest starts; -1 after */
        int fd_reserve[FD_RESERVE]; /* -1 where not held */
        bool accept_starved;    /* in an episode of accept() failing for lack of fds (logged once) */
        struct child qemu, swtpm;
        int tpm_ctrl_fd; /* our copy of the end QEMU talks on, for CMD_SHUTDOWN after QEMU */
        uint8_t *seal_key;     /* secmem: the state-seal key derived from the vTPM passphrase */
        uint8_t *migration_key; /* secmem: swtpm's --migration-key, derived from the same passphrase */
        struct tpm_sync *sync; /* live dir <-> sealed state */
        bool sync_watched;
        struct qmp_client *qmp;

        enum guest_state state;
        time_t started_at;
        char qemu_status[32];
        bool guest_shutdown;    /* QEMU reported SHUTDOWN */
        bool stop_requested;    /* stop, SIGTERM or SIGINT */
        bool force_pending;     /* quit sent, SIGKILL due at kill_timer */
        bool qemu_termed;       /* QEMU was sent SIGTERM (QMP lost) */
        char qmp_lost[256];     /* why QMP was lost while QEMU ran; "" while it works */
        char stop_note[512];    /* how the stop went when not as asked, for the stop reply */
        vmsup_error *tpm_stop_err; /* swtpm did not shut down and had to be killed */

        struct control_conn *conns;  /* reading their request */
        struct control_conn *waiters; /* answered when the guest stopped or rebooted */
        enum vmsup_err_kind end_kind; /* how the guest ended: the supervisor's exit */
        bool done;

        /* live migration (supervisor/migrate_out.c, migrate_in.c) */
        bool new_tpm;           /* `run --new-tpm`: a guest whose TPM state is gone gets a new TPM */
        bool incoming;          /* started by `run --incoming`: QEMU with -incoming defer, empty live dir */
        bool tpm_discard;       /* stopping swtpm wipes its state instead of sealing it (it lives elsewhere now) */
        bool migrate_tls_added; /* QEMU has our tls-creds-x509 object */
        bool interrupted;       /* SIGTERM or SIGINT arrived during a migration */
        int interrupt_signo;    /* which one, first */
        bool migration_committed; /* the source sent COMMIT: a signal no longer cancels the migration */
        char migration_status[24]; /* from QEMU's MIGRATION events */
        const char *migrating_to;  /* "HOST:PORT" while a migration to there runs; other requests are then refused */
        int migration_percent;     /* of the guest's memory sent, for `vmsup status` */
        struct migrate_in *in;  /* the incoming migration until the guest runs here */
        struct migrate_out *out; /* the outgoing migration while it runs (migrate_out.c) */
};


/* guest.c: the guest's life on the loop */
const char *guest_state_name(const struct guest *g);
/* The loop, its signal source, and the QMP, stop and kill timers (disarmed). */
int guest_loop_open(struct guest *g, const sigset_t *mask, vmsup_error **err);
/* fds held on /dev/null (FD_RESERVE), let go while sealing or refusing a client needs them */
void guest_fd_reserve_fill(struct guest *g);
void guest_fd_reserve_release(struct guest *g);
/* Answer the clients waiting for the guest to stop or reboot. */
void guest_answer_waiters(struct guest *g, bool ok, enum vmsup_err_kind kind, const char *msg);
void guest_finish(struct guest *g, enum vmsup_err_kind kind);
void guest_begin_stop(struct guest *g, unsigned timeout_s, bool force, bool reboot);
void guest_on_qmp_event(void *userdata, const char *event, json_object *data, json_object *timestamp);
/* After a reap: a QEMU or swtpm that is gone ends (or, a hard reboot, restarts) the guest. */
void guest_check_children(struct guest *g);
void guest_dispatch_sync(struct guest *g);

/* children.c: swtpm and QEMU */
void guest_reap_all(struct guest *g);
bool guest_child_wait(struct guest *g, struct child *c, int timeout_ms);
/* Signal a tracked child through its pidfd. */
int guest_child_signal(struct child *c, int sig);
/* Stop tracking a child: its loop source and pidfd go. */
void guest_child_forget(struct child *c);
char *guest_log_tail(const char *path, int lines);
/* SIGTERM or SIGINT while the guest starts (g->cancel_fd): ECANCELED. */
int guest_start_check_cancel(struct guest *g, vmsup_error **err);
int guest_start_children(struct guest *g, vmsup_error **err);
void guest_stop_children(struct guest *g);
/* QEMU gone: quit, then SIGTERM, then SIGKILL (blocking). */
void guest_qemu_kill(struct guest *g);
/* swtpm: CMD_SHUTDOWN (then SIGTERM, SIGKILL), then seal and wipe its live dir. */
void guest_tpm_stop(struct guest *g);
void guest_tpm_seal_and_wipe(struct guest *g);
/* The QMP source and timer follow the client's needs (after anything that queued or read). */
void guest_qmp_watch(struct guest *g);
void guest_qmp_drop(struct guest *g);
/* The guest runs: stamp that it has a TPM and uses its VARS (guestdirs.h). */
void guest_record_history(struct guest *g);

/* run.c: set-up */
int guest_derive_keys(struct guest *g, const char *passphrase, vmsup_error **err);
int guest_open_sync(struct guest *g, vmsup_error **err);

/* requests.c: the control socket and its requests */
/* Listen on the control socket: its source and the accept back-off's timer. */
int guest_control_open(struct guest *g, vmsup_error **err);
/* Accept a client; read a client's request and answer it; whether the listen fd is
 * watched now (not during an accept back-off). */
void guest_accept_conn(struct guest *g);
void guest_handle_conn(struct guest *g, struct control_conn *c);
bool guest_control_listening(const struct guest *g);

/* migrate_out.c: the source's half (migrate/source.h) on the guest's loop */
struct migrate_out;
/* The "migrate" control request: starts the migration and returns; c is answered when it
 * ends, and the supervisor ends (guest_finish) when the guest runs on the destination.
 * Until then g->out is set: the guest's events go to it as below, QEMU's and swtpm's
 * exits wait for its end (guest_check_children()). */
void migrate_out(struct guest *g, struct control_conn *c);
void migrate_out_qemu_event(struct guest *g, const char *event, json_object *data);
/* QEMU exited (reaped): the migration fails, if it still can. */
void migrate_out_child_exited(struct guest *g);
/* SIGTERM or SIGINT: cancels before COMMIT; the guest is stopped once it has ended. */
void migrate_out_signal(struct guest *g, int signo);
/* The supervisor ends during a migration: its sources and connections go. */
void migrate_out_free(struct guest *g);

/* migrate_in.c: `vmsup run --incoming`, the supervisor's side of migrate/dest.h. */
struct migrate_in;
/* On g->loop (before it runs): listen for the source. lock_err (taken; NULL when the
 * guest's lock is ours): the guest is another supervisor's; the source that comes hears
 * it as the refusal. */
int migrate_in_start(struct guest *g, const struct guest_run_opts *opts, vmsup_error *lock_err, vmsup_error **err);
/* With the guest's lock held, before the source comes: remove what an earlier,
 * incomplete incoming migration of the guest left (never a committed copy). */
int migrate_in_clear_leftovers(struct guest *g, vmsup_error **err);
/* With the guest's lock held, when the source sent the guest: the guest must not exist
 * here yet; then mark its dirs as incoming and start the janitor that removes them if
 * this supervisor dies before the guest runs here. */
int migrate_in_claim(struct guest *g, vmsup_error **err);
/* Keep the received secret (local store), derive the keys, open the sealed state. */
int migrate_in_secret(struct guest *g, const char *secret, const char *secret_id, vmsup_error **err);
/* run.c: the start of a received guest, from the checks on this host to its children
 * waiting (migrate_in_claim() and migrate_in_secret() on the way). */
int guest_incoming_setup(struct guest *g, const struct guest_run_opts *opts, const char *secret,
                         const char *secret_id, vmsup_error **err);
/* An incoming migration runs (the guest does not run here yet, or DONE is awaited). */
bool migrate_in_active(const struct guest *g);
/* The source's "ADDR:PORT (CN=...)" once it came; NULL before. */
const char *migrate_in_source(const struct guest *g);
void migrate_in_qemu_event(struct guest *g, const char *event, json_object *data);
/* The QMP client is being dropped. */
void migrate_in_qmp_dropped(struct guest *g);
/* QEMU (qemu true) or swtpm exited: true when that is the incoming migration's to handle
 * (it fails it, or the start or the abort deals with it), false when it is the guest's. */
bool migrate_in_child_exited(struct guest *g, bool qemu);
/* A stop request or a signal: true when it abandons the migration (before COMMIT; its
 * end follows on the loop), false when too late. */
bool migrate_in_cancel(struct guest *g, const char *why);
/* `stop` on request: c is answered once the migration is undone. */
void migrate_in_stop_conn(struct guest *g, struct control_conn *c);
/* status: "migration": {"from", "phase"} */
void migrate_in_status(const struct guest *g, json_object *o);
/* Why the migration ended without the guest running here (then guest_run() fails with
 * it); NULL otherwise. */
vmsup_error *migrate_in_take_error(struct guest *g);
/* Undo everything of a failed incoming migration (ABORT to the source if still before
 * COMMIT); once. */
void migrate_in_abort(struct guest *g, const vmsup_error *why);
void migrate_in_free(struct guest *g);
/* A debug line: what the incoming migration has done, and when (ms since the guest came). */
void migrate_in_mark(struct guest *g, const char *what);

#endif
