/* What the supervisor's files share: the supervised guest and the steps they need. Not
 * an API. The files call each other downwards only, in this order from the top:
 *
 *   run.c                      guest_run(): set-up, the loop, teardown
 *   migrate_in.c migrate_out.c the supervisor's part of either half of a live migration
 *   requests.c                 control requests
 *   guest.c                    the guest's life on the loop: stop, reboot, QEMU's events
 *   children.c                 swtpm and QEMU: start, stop, reap, QMP, the TPM state's sync
 *   logs.c                     what they write: the serial console, QEMU's and swtpm's output,
 *                              into rotated logs; the attached console client
 *   vnc.c                      the graphical console's socket, its clients handed to QEMU
 *   nics.c                     the NICs: taps opened for QEMU, hot-plug and removal over QMP
 *   events.c                   the event stream's subscribers (knows nothing of the guest: any
 *                              file above emits through g->events)
 *   readiness.c                what the service manager hears (NOTIFY_SOCKET, --ready-fd)
 *
 * What goes up goes through the function pointers below, set by the file above:
 * children.c reports a child's exit and QEMU's events to guest.c (g->life); guest.c and
 * requests.c hand the guest's events to a migration that runs (g->migration), and the
 * migrate request to migrate_out.c (g->start_migration); migrate_in.c sets the received
 * guest up with run.c's start (the setup given to migrate_in_start()). */
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
#include "supervisor/events.h"
#include "supervisor/guest.h"
#include "supervisor/guestdirs.h"
#include "nova/guestspec.h"
#include "supervisor/hostconfig.h"
#include "supervisor/nics.h"
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

enum guest_state { GUEST_STARTING, GUEST_RUNNING, GUEST_STOPPING, GUEST_REBOOTING, GUEST_STOPPED,
                   GUEST_CRASHED /* panicked and preserved (on_crash preserve): QEMU paused */ };


struct guest_child {
        const char *name;
        pid_t pid; /* 0 when not running */
        int pidfd;
        struct evloop_source *src; /* its exit, on the loop (a pidfd of the loop's own) */
        bool exited;
        int status;
};

struct guest;
struct vtpm_anchor_keeper;
struct vtpm_secret_pending;

/* A live migration that runs, as the guest's life sees it (migrate_in.c, migrate_out.c
 * set g->migration while it runs): the guest's events go to it first. */
struct guest_migration {
        /* one of QEMU's events, after the guest's own bookkeeping */
        void (*qemu_event)(struct guest *g, const char *event, json_object *data);
        /* QEMU (qemu true) or swtpm exited: true when the migration deals with it */
        bool (*child_exited)(struct guest *g, bool qemu);
        /* the QMP client is being dropped */
        void (*qmp_dropped)(struct guest *g);
        /* SIGTERM or SIGINT: true when the migration took it */
        bool (*signal)(struct guest *g, int signo);
        /* a control request other than status: true when the migration took it (c is
         * answered, now or later, and freed) */
        bool (*request)(struct guest *g, struct control_conn *c, const char *cmd);
        /* status: what the migration shows ("state", "migration") */
        void (*status)(struct guest *g, json_object *o);
};

/* What children.c reports to the guest's life (guest.c; set by guest_loop_open()). */
struct guest_life {
        /* a child exited (reaped): a QEMU or swtpm that is gone ends or restarts the guest */
        void (*children_changed)(struct guest *g);
        qmp_event_fn qemu_event; /* userdata: the guest */
};

/* run.c's start of a guest received from another host, for migrate_in.c. */
typedef int (*guest_setup_fn)(struct guest *g, const struct guest_run_opts *opts, const char *secret,
                              const char *secret_id, vmsup_error **err);

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

        /* The one event loop (common/evloop.h) and the guest's sources on it. */
        struct evloop *loop;
        struct evloop_source *sig_src, *listen_src, *qmp_src, *sync_src;
        struct evloop_source *accept_timer; /* armed: the listen fd is not watched until then (no fd to accept) */
        struct evloop_source *qmp_timer;    /* the QMP client's next command deadline */
        struct evloop_source *stop_timer;   /* powerdown grace ends, then quit */
        struct evloop_source *kill_timer;   /* quit grace ends, then SIGKILL */
        struct evloop_source *vnc_src;      /* the VNC socket (vnc.c); vnc_fd is valid while it is set */
        int vnc_fd;
        int lock_fd, listen_fd;
        int cancel_fd;          /* signalfd for SIGTERM and SIGINT while the guest starts; -1 after */
        int fd_reserve[FD_RESERVE]; /* -1 where not held */
        bool accept_starved;    /* in an episode of accept() failing for lack of fds (logged once) */
        struct guest_child qemu, swtpm;
        int tpm_ctrl_fd; /* our copy of the end QEMU talks on, for CMD_SHUTDOWN after QEMU */
        uint8_t *seal_key;     /* secmem: the state-seal key derived from the vTPM passphrase */
        uint8_t *migration_key; /* secmem: swtpm's --migration-key, derived from the same passphrase */
        struct tpm_sync *sync; /* live dir <-> sealed state */
        bool sync_watched;
        /* The rollback anchor (docs/vmsup.8, TPM STATE): the newest generation of the sealed
         * state recorded outside the state dir (host mode: the local store; user and
         * deployment: the vTPM secret's metadata in Barbican). */
        bool anchored;
        uint64_t anchor;
        char secret_id[37];    /* the vTPM secret's Barbican id */
        char *token;           /* secmem: user mode, the owner's credential, only while the
                                * guest starts; then it is the keeper's alone */
        size_t token_len;
        struct vtpm_anchor_keeper *anchor_keeper; /* user mode: holds the token to record
                                                   * the anchor at the stop; NULL */
        struct evloop_source *anchor_src; /* a launch's request to the keeper, answer pending */
        struct vtpm_secret_pending *secret_pending; /* run.c asked for the passphrase; the
                                                     * first launch takes the answer */
        bool anchor_pending;    /* the passphrase came, the anchor is still on its way (in
                                 * secret_pending): checked before the guest runs */
        uint64_t anchor_sent;             /* the generation it asked for */
        struct qmp_client *qmp;
        const struct guest_life *life;

        enum guest_state state;
        time_t started_at;
        long long steps_t0;     /* monotonic_us() at the start (a hard reboot's too): guest_step() */
        long long stop_t0;      /* monotonic_us() at the stop's request or the guest's power-off: guest_stop_step() */
        char qemu_status[32];
        bool guest_shutdown;    /* QEMU reported SHUTDOWN */
        bool stop_requested;    /* stop, SIGTERM or SIGINT */
        bool force_pending;     /* quit sent, SIGKILL due at kill_timer */
        bool qemu_termed;       /* QEMU was sent SIGTERM (QMP lost) */
        bool crashed;           /* the guest panicked: the stop or hard reboot under way is on_crash's */
        char qmp_lost[256];     /* why QMP was lost while QEMU ran; "" while it works */
        char stop_note[512];    /* how the stop went when not as asked, for the stop reply */
        vmsup_error *tpm_stop_err; /* swtpm did not shut down and had to be killed */

        struct control_conn *conns;  /* reading their request */
        struct control_conn *waiters; /* answered when the guest stopped or rebooted */
        struct events *events;        /* `vmsup events`: the subscribers (events.h) */
        enum vmsup_err_kind end_kind; /* how the guest ended: the supervisor's exit */
        bool done;

        /* live migration (supervisor/migrate_out.c, migrate_in.c) */
        const struct guest_migration *migration; /* the one that runs; NULL when none */
        void (*start_migration)(struct guest *g, struct control_conn *c); /* the migrate request */
        bool new_tpm;           /* `run --new-tpm`: a guest whose TPM state is gone gets a new TPM */
        bool incoming;          /* started by `run --incoming`: QEMU with -incoming defer, empty live dir */
        bool tpm_discard;       /* stopping swtpm wipes its state instead of sealing it (it lives elsewhere now) */
        bool migrate_tls_added; /* QEMU has our tls-creds-x509 object */
        bool interrupted;       /* SIGTERM or SIGINT arrived during a migration */
        char migration_status[24]; /* from QEMU's MIGRATION events */
        struct migrate_in *in;  /* the incoming migration until the guest runs here */
        struct migrate_out *out; /* the outgoing migration while it runs (migrate_out.c) */

        /* the NICs (nics.c): the taps and vhost-nets for the QEMU about to start, in the
         * spec's order (open from the start's check until QEMU has its copies) */
        struct nic_fds nic_fds[GUEST_NIC_MAX];
        bool nics_open;
        bool vhost_off_logged;
        unsigned nic_unplugging;  /* slots whose device_del was sent, until DEVICE_DELETED */
        struct nic_op *nic_op;    /* the hot-plug or removal a client waits for */
        struct export_req *export_req; /* the running export a client waits for (tpmexport.c) */

        struct guest_logs *logs; /* logs.c: NULL until a child needs its log */
        /* the service manager (readiness.c) */
        struct notify_socket *notify; /* $NOTIFY_SOCKET's; NULL when none */
        int ready_fd;                 /* `run --ready-fd`: a newline when ready, then closed; -1 */
        bool notified_ready, notified_stopping;
};


/* guest.c: the guest's life on the loop */
const char *guest_state_name(const struct guest *g);
/* The loop, its signal source, and the QMP, stop and kill timers (disarmed). */
int guest_loop_open(struct guest *g, const sigset_t *mask, vmsup_error **err);
/* Answer the clients waiting for the guest to stop or reboot. */
void guest_answer_waiters(struct guest *g, bool ok, enum vmsup_err_kind kind, const char *msg);
void guest_finish(struct guest *g, enum vmsup_err_kind kind);
void guest_begin_stop(struct guest *g, unsigned timeout_s, bool force, bool reboot);
/* After a reap: a QEMU or swtpm that is gone ends (or, a hard reboot, restarts) the guest. */
void guest_check_children(struct guest *g);

/* children.c: swtpm and QEMU */
/* -v: a step of the start and when it was done, from the supervisor's (or the hard
 * reboot's) start (docs/performance.md reads these). */
void guest_step(const struct guest *g, const char *step);
/* -v: a step of a stop (or hard reboot) and when it was done, from its request or from
 * the guest's own power-off */
void guest_stop_step(const struct guest *g, const char *step);
/* fds held on /dev/null (FD_RESERVE), let go while sealing or refusing a client needs them */
void guest_fd_reserve_fill(struct guest *g);
void guest_fd_reserve_release(struct guest *g);
/* The state-seal key and swtpm's migration key, from the vTPM passphrase. */
int guest_derive_keys(struct guest *g, const char *passphrase, vmsup_error **err);
/* The sync of the live TPM dir with the sealed state (tpmstate/sync.h), and its dispatch.
 * A sealed state older than the anchor (g->anchor) is refused here (VMSUP_ERR_DATA), before
 * anything is changed. */
int guest_open_sync(struct guest *g, vmsup_error **err);
/* The check of the sealed state against the anchor (g->anchor) guest_open_sync() makes,
 * for an anchor that came later. */
int guest_tpm_anchor_check(struct guest *g, vmsup_error **err);
/* When the rollback anchor follows the sealed state: host mode at every seal (the local
 * store, durably); user and deployment mode (Barbican) at a start and a stop only. */
enum guest_anchor_when { GUEST_ANCHOR_SEAL, GUEST_ANCHOR_START, GUEST_ANCHOR_STOP };
/* Raise the anchor to the sealed state's generation when it is behind (only ever after
 * that state is durable). A failure is logged: the anchor lags, the state is fine. */
void guest_anchor_catch_up(struct guest *g, enum guest_anchor_when when);
/* A launch's request to the keeper still under way: wait for its answer now (the stop, the
 * teardown), so that no answer is left in the pipe and the anchor is known. */
void guest_anchor_settle(struct guest *g);
/* A test hook, not a feature: with VMSUP_TEST_KILL_AT=<point>:<n> in the supervisor's
 * environment it kills itself (SIGKILL) the nth time it reaches point (tests/test_anchor.c
 * proves each step crash-safe). Nothing happens without the variable. */
void guest_test_kill_point(const char *point);
void guest_dispatch_sync(struct guest *g);
void guest_reap_all(struct guest *g);
bool guest_child_wait(struct guest *g, struct guest_child *c, int timeout_ms);
/* Signal a tracked child through its pidfd. */
int guest_child_signal(struct guest_child *c, int sig);
/* Stop tracking a child: its loop source and pidfd go. */
void guest_child_forget(struct guest_child *c);
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

/* logs.c: the serial console, QEMU's and swtpm's output, each into a rotated log
 * ([logs] in vmsup.conf(5)); the console client. */
enum guest_log { GUEST_LOG_CONSOLE, GUEST_LOG_QEMU, GUEST_LOG_SWTPM, GUEST_LOG_N };
/* A new serial port for the QEMU about to start: *ret_qemu_end is its end (close it
 * after the spawn); ours is read on the loop into console.log and the client. */
int guest_serial_open(struct guest *g, int *ret_qemu_end, vmsup_error **err);
/* A new pipe for the output of the child about to start (QEMU or swtpm). */
int guest_log_pipe(struct guest *g, enum guest_log which, int *ret_write_end, vmsup_error **err);
/* What the children wrote and we have not read yet, into the logs now. */
void guest_logs_drain(struct guest *g);
/* The last lines of a log, after a drain, '|' between them: for error messages. */
char *guest_log_tail(struct guest *g, enum guest_log which, int lines);
/* `vmsup console`: c's connection becomes the serial console (takes c). A second client
 * is refused (busy) unless force, which closes the first. */
void guest_console_attach(struct guest *g, struct control_conn *c, bool force);
/* A `vmsup console` client is attached. */
bool guest_console_attached(const struct guest *g);
/* Drain, close the client and the logs (teardown). */
void guest_logs_free(struct guest *g);
/* vnc.c: the graphical console of a guest with "graphics": {"type": "vnc"} */
/* Listen on <run>/vnc.sock (0600) and hand each client to QEMU over QMP; nothing to do
 * for a guest without graphics. After QEMU's monitor is up, at every launch. */
int guest_vnc_open(struct guest *g, vmsup_error **err);
/* The socket goes (closed, removed): QEMU's monitor is gone. Idempotent. */
void guest_vnc_close(struct guest *g);
/* nics.c: the guest's NICs on taps the orchestrator plugged (nics.h) */
struct proc_fd_map;
struct qemu_nic_fds;
/* Open every NIC's taps and vhost-nets for the next QEMU (nothing when open already);
 * a tap missing or in use fails the start before anything else runs. */
int guest_nics_open(struct guest *g, vmsup_error **err);
/* Our copies go (QEMU has its own), or a failed start's (restore_mtu: as they were). */
void guest_nics_close(struct guest *g, bool restore_mtu);
/* How many fds the open NICs give QEMU; map them to child fds from first_child_fd on
 * (map: that many entries), and say which ones each NIC got (ret: one per NIC). */
size_t guest_nics_fd_count(const struct guest *g);
size_t guest_nics_map_fds(struct guest *g, int first_child_fd, struct proc_fd_map *map, struct qemu_nic_fds *ret);
/* The spec copy's "nics" as the guest has them now (copy: the spec's JSON). */
int guest_nics_spec_copy(const struct guest *g, json_object *copy);
/* `vmsup nic add` and `vmsup nic remove` (take c; answered when done). */
void guest_nic_add(struct guest *g, struct control_conn *c);
void guest_nic_remove(struct guest *g, struct control_conn *c);
/* QEMU's events (DEVICE_DELETED ends a removal); QMP gone (a client waiting is answered). */
void guest_nics_qemu_event(struct guest *g, const char *event, json_object *data);
void guest_nics_qmp_dropped(struct guest *g);
/* readiness.c: READY=1 (and --ready-fd's newline) once the guest runs, STATUS= lines,
 * STOPPING=1; nothing when no service manager listens. Failures to send are logged. */
struct notify_socket;
/* $NOTIFY_SOCKET (then removed from the environment) and ready_fd (taken). */
int guest_notify_open(struct guest *g, int ready_fd, vmsup_error **err);
void guest_notify_status(struct guest *g, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The guest runs (after cont, its TPM checked): READY=1 the first time, then STATUS=running. */
void guest_notify_ready(struct guest *g);
/* STOPPING=1 (the first time) with STATUS=status. */
void guest_notify_stopping(struct guest *g, const char *status);
void guest_notify_close(struct guest *g);


/* tpmexport.c: {"cmd": "tpm-export", "path": ABS, "keep_paused": bool} of a running guest:
 * pause (QMP stop), seal what swtpm wrote, write the export (tpmexport.h), resume unless
 * keep_paused; c is answered with {"generation", "paused"}. */
void guest_tpm_export_request(struct guest *g, struct control_conn *c);
/* QMP is gone (guest_qmp_drop()): an export waiting for QEMU is answered with a failure. */
void guest_tpm_export_qmp_dropped(struct guest *g);

/* requests.c: the control socket and its requests */
/* Listen on the control socket: its source and the accept back-off's timer. */
int guest_control_open(struct guest *g, vmsup_error **err);

/* migrate_out.c: the source's half (migrate/source.h) on the guest's loop */
struct migrate_out;
/* The "migrate" control request (g->start_migration): starts the migration and returns;
 * c is answered when it ends, and the supervisor ends (guest_finish) when the guest runs
 * on the destination. Until then g->migration is the source's: QEMU's events and exit and
 * the signals go to it, and other requests wait. */
void migrate_out(struct guest *g, struct control_conn *c);
/* The supervisor ends during a migration: its sources and connections go. */
void migrate_out_free(struct guest *g);

/* migrate_in.c: `vmsup run --incoming`, the supervisor's side of migrate/dest.h. */
struct migrate_in;
/* On g->loop (before it runs): listen for the source; g->migration is the destination's
 * until the guest runs here and the source confirmed it. lock_err (taken; NULL when the
 * guest's lock is ours): the guest is another supervisor's; the source that comes hears
 * it as the refusal. setup: run.c's start of the received guest, from the checks on this
 * host to its children waiting (migrate_in_claim() and migrate_in_secret() on the way). */
int migrate_in_start(struct guest *g, const struct guest_run_opts *opts, vmsup_error *lock_err,
                     guest_setup_fn setup, vmsup_error **err);
/* With the guest's lock held, before the source comes: remove what an earlier,
 * incomplete incoming migration of the guest left (never a committed copy). */
int migrate_in_clear_leftovers(struct guest *g, vmsup_error **err);
/* With the guest's lock held, when the source sent the guest: the guest must not exist
 * here yet; then mark its dirs as incoming and start the janitor that removes them if
 * this supervisor dies before the guest runs here. */
int migrate_in_claim(struct guest *g, vmsup_error **err);
/* Keep the received secret (local store), derive the keys, open the sealed state. */
int migrate_in_secret(struct guest *g, const char *secret, const char *secret_id, vmsup_error **err);
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
