/* The destination side of a live migration (`vmsup run --incoming`, docs/migration.md):
 * the supervisor's half of migrate/dest, the state machine that receives the guest from
 * the source's supervisor on the one loop. Here: what the destination host does with
 * it (the guest's claim, its secret, its children, the markers) and the janitor. Until
 * the source's COMMIT, whatever goes wrong, nothing of the guest stays on this host; a
 * janitor process removes it even if this supervisor is killed. From COMMIT on, our copy
 * may be the only one: it stays, marked "committed", until the source's DONE or an
 * operator's `vmsup resolve --keep` (vmsup(8), MIGRATION). */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/fileio.h"
#include "common/secmem.h"
#include "common/util.h"
#include "secrets/localstore.h"
#include "migrate/dest.h"
#include "migrate/migchan.h"
#include "seccomp/filter.h"
#include "supervisor/guest_internal.h"
#include "common/log.h"
#include "nova/specmatch.h"
#include "secrets/vtpmsecret.h"
#include "tpmstate/swtpm.h"

#define JANITOR_WAIT_MS 30000

struct migrate_in {
        struct guest *g;
        const struct guest_run_opts *opts;
        guest_setup_fn setup; /* run.c's start of the received guest */
        struct migrate_dest *dest;
        struct migration_tls_files files;
        char source[320];    /* the peer, for messages */
        bool claimed;        /* our incoming marker is on disk: what is here is ours to remove */
        bool undone;         /* migrate_in_abort() ran */
        int janitor_fd;      /* write end of the janitor's pipe; -1 when none */
        pid_t janitor_pid;
        long t0;             /* the source's guest arrived */
        vmsup_error *lock_err; /* the guest's lock is not ours: the refusal the source hears */
        vmsup_error *end_err;  /* why it ended without the guest running here */
        struct control_conn *stop_conn; /* a `stop` that abandoned it: answered once undone */
};

void migrate_in_mark(struct guest *g, const char *what) {
        if (g->in && g->in->t0)
                log_debug("incoming: %s at +%ld ms", what, monotonic_ms() - g->in->t0);
}

static void janitor_say(struct guest *g, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---- the janitor --------------------------------------------------------------------- */

/* The janitor's life: read "P <pid>" lines (our QEMU and swtpm) until "K" (nothing to
 * do: the guest runs here, or the supervisor cleaned up itself) or EOF (the supervisor
 * died): then wait for those processes to end, take the guest's lock and remove what
 * the incoming migration made. */
static int janitor_main(int fd, struct guest *g) {
        int pidfds[4], n = 0, lock;
        char buf[256];
        size_t len = 0;
        vmsup_error *err = NULL;
        long deadline;

        for (;;) {
                ssize_t k = read(fd, buf + len, sizeof(buf) - 1 - len);
                char *nl;

                if (k < 0 && errno == EINTR)
                        continue;
                if (k <= 0)
                        break;
                len += (size_t) k;
                buf[len] = '\0';
                while ((nl = strchr(buf, '\n'))) {
                        *nl = '\0';
                        if (buf[0] == 'K')
                                return 0;
                        if (buf[0] == 'P' && n < 4) {
                                int pfd = (int) syscall(SYS_pidfd_open, (pid_t) atoi(buf + 2), 0);

                                if (pfd >= 0)
                                        pidfds[n++] = pfd;
                        }
                        len -= (size_t) (nl + 1 - buf);
                        memmove(buf, nl + 1, len + 1);
                }
        }
        /* The supervisor is gone; its children get SIGTERM (PR_SET_PDEATHSIG). One that
         * does not end by then (stopped, hung) gets SIGKILL; one that outlives that keeps
         * its files. */
        for (int round = 0; round < 2; round++) {
                deadline = monotonic_ms() + JANITOR_WAIT_MS;
                for (int i = 0; i < n; i++) {
                        struct pollfd p = { .fd = pidfds[i], .events = POLLIN };
                        long left = deadline - monotonic_ms();

                        if (left > 0)
                                poll(&p, 1, (int) left);
                }
                for (int i = 0; i < n; i++) {
                        struct pollfd p = { .fd = pidfds[i], .events = POLLIN };

                        if (poll(&p, 1, 0) != 0)
                                continue;
                        if (round == 1) {
                                fprintf(stderr, "vmsup janitor: guest %s: a process of the incoming migration is "
                                                "still running after SIGKILL; not removing anything\n", g->spec.uuid);
                                return VMSUP_ERR_BUSY;
                        }
                        (void) syscall(SYS_pidfd_send_signal, pidfds[i], SIGKILL, NULL, 0);
                }
        }
        lock = guest_dirs_lock(&g->dirs, false, NULL, &err);
        if (lock < 0) {
                fprintf(stderr, "vmsup janitor: guest %s: %s; not removing anything\n", g->spec.uuid, err->msg);
                return VMSUP_ERR_BUSY;
        }
        if (access(g->dirs.incoming, F_OK) < 0 || guest_dirs_incoming_committed(&g->dirs)) {
                close(lock);
                return 0; /* the source ordered the guest to run here, or someone removed it */
        }
        if (guest_dirs_remove_all(&g->dirs, g->cfg->paths.secrets_dir, g->spec.uuid, &err) < 0) {
                fprintf(stderr, "vmsup janitor: guest %s: %s\n", g->spec.uuid, err->msg);
                return VMSUP_ERR_IO;
        }
        fprintf(stderr, "vmsup janitor: guest %s: the incoming migration's supervisor died; removed what it had "
                        "received\n", g->spec.uuid);
        close(lock);
        return 0;
}

static int janitor_start(struct guest *g, vmsup_error **err) {
        struct migrate_in *in = g->in;
        int p[2];
        pid_t pid;

        if (pipe2(p, O_CLOEXEC) < 0)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, errno, "janitor pipe");
        pid = fork();
        if (pid < 0) {
                close(p[0]);
                close(p[1]);
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, errno, "fork the janitor");
        }
        if (pid == 0) {
                vmsup_error *ferr = NULL;

                /* Only the pipe: an inherited copy of the guest's lock or of the source's
                 * connection would keep both alive after the supervisor's death. */
                if (dup2(p[0], 3) < 0)
                        _exit(VMSUP_ERR_SYSTEM);
                close_range(4, ~0U, 0);
                prctl(PR_SET_NAME, "vmsup-janitor");
                /* it must outlive the supervisor: no death signal; it keeps SIGTERM and
                 * SIGINT blocked (inherited), so only the supervisor's end matters */
                if (seccomp_filter_load(g->cfg->security.seccomp, &ferr) < 0)
                        _exit(VMSUP_ERR_INTERNAL);
                _exit(janitor_main(3, g));
        }
        close(p[0]);
        in->janitor_fd = p[1];
        in->janitor_pid = pid;
        return 0;
}

static void janitor_say(struct guest *g, const char *fmt, ...) {
        char line[64];
        va_list ap;
        int n;

        if (!g->in || g->in->janitor_fd < 0)
                return;
        va_start(ap, fmt);
        n = vsnprintf(line, sizeof(line), fmt, ap);
        va_end(ap);
        if (n > 0 && write(g->in->janitor_fd, line, (size_t) n) != n)
                log_warning("the janitor did not take '%.*s': %s", n - 1, line, strerror(errno));
}

/* ---- claiming the guest on this host --------------------------------------------------- */

int migrate_in_claim(struct guest *g, vmsup_error **err) {
        struct migrate_in *in = g->in;
        struct localstore *store = NULL;
        _cleanup_secmem_ char *pass = NULL; /* only whether there is one; wiped however we leave */
        char marker[512], when[64], id[LOCALSTORE_UUID_LEN + 1];
        time_t now = time(NULL);
        struct tm tm;
        int r;

        /* a copy the source ordered to run here may be the only one: never removed here */
        if (guest_dirs_incoming_committed(&g->dirs) || access(g->dirs.incoming, F_OK) == 0)
                return guest_dirs_check_markers(&g->dirs, err);
        if (access(g->dirs.migrated_out, F_OK) == 0)
                return vmsup_fail(err, VMSUP_ERR_CANT_CREATE, 0,
                                  "guest %s was migrated away from this host and its copy here was never removed "
                                  "(%s): not receiving it again before 'vmsup delete %s' here",
                                  g->spec.uuid, g->dirs.migrated_out, g->spec.uuid);
        if (access(g->dirs.spec_copy, F_OK) == 0)
                return vmsup_fail(err, VMSUP_ERR_CANT_CREATE, 0, "guest %s already exists on this host (%s)", g->spec.uuid,
                                  g->dirs.state);
        if (access(g->cfg->paths.secrets_dir, F_OK) == 0) {
                r = localstore_open(g->cfg->paths.secrets_dir, false, &store, err);
                if (r >= 0)
                        r = localstore_get(store, g->spec.uuid, &pass, id, err);
                localstore_free(store);
                if (r < 0)
                        return r;
                if (r > 0)
                        return vmsup_fail(err, VMSUP_ERR_CANT_CREATE, 0,
                                          "this host already keeps a vTPM secret for guest %s (%s)", g->spec.uuid,
                                          g->cfg->paths.secrets_dir);
        }
        strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&now, &tm));
        snprintf(marker, sizeof(marker), "from %s at %s\n", in->source, when);
        in->claimed = true; /* the guest is new here: from now on whatever is here is ours */
        r = write_file_atomic(g->dirs.incoming, marker, strlen(marker), 0600, err);
        if (r < 0)
                return r;
        return janitor_start(g, err);
}

int migrate_in_secret(struct guest *g, const char *secret, const char *secret_id, vmsup_error **err) {
        struct localstore *store = NULL;
        _cleanup_free_ char *id_path = NULL;
        char id_line[64];
        int r;

        /* Nova's pre_live_migration: the host keeps the secret under the same id */
        if (g->tpm.secret_security != SECRET_SECURITY_HOST)
                return vmsup_fail(err, VMSUP_ERR_UNAVAILABLE, 0,
                                  "Operation 'live-migration' not supported for vTPM-enabled instance (%s).",
                                  g->spec.uuid);
        r = localstore_open(g->cfg->paths.secrets_dir, true, &store, err);
        if (r >= 0)
                r = localstore_put(store, g->spec.uuid, secret, secret_id, err);
        localstore_free(store);
        if (r < 0)
                return vmsup_error_prefix(err, "keep the vTPM secret");
        if (asprintf(&id_path, "%s/%s", g->dirs.state, VTPM_SECRET_ID_FILE) < 0)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "secret id path");
        snprintf(id_line, sizeof(id_line), "%s\n", secret_id);
        r = write_file_atomic(id_path, id_line, strlen(id_line), 0600, err);
        if (r < 0)
                return r;
        r = guest_derive_keys(g, secret, err);
        if (r < 0)
                return r;
        r = guest_open_sync(g, err);
        /* the generations go on from the source's: no copy of its state dir can pass as
         * newer than what is sealed here (docs/vmsup.8, TPM STATE) */
        if (r >= 0 && g->in && g->in->dest)
                tpm_sync_continue_from(g->sync, migrate_dest_tpm_generation(g->in->dest));
        return r;
}

/* COMMIT arrived: the incoming marker says so, durably, before the guest runs. */
static int mark_committed(struct guest *g, vmsup_error **err) {
        char marker[512], when[64];
        time_t now = time(NULL);
        struct tm tm;

        strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&now, &tm));
        snprintf(marker, sizeof(marker), GUEST_INCOMING_COMMITTED " from %s at %s, unconfirmed\n", g->in->source, when);
        if (write_file_atomic(g->dirs.incoming, marker, strlen(marker), 0600, err) < 0)
                return vmsup_error_prefix(err, "record the source's order to run the guest");
        return 0;
}

/* ---- before the source comes -------------------------------------------------------------- */

int migrate_in_clear_leftovers(struct guest *g, vmsup_error **err) {
        int fd, r;

        /* a copy the source ordered to run here may be the only one: never removed here
         * (the source that comes hears the refusal: migrate_in_claim()) */
        if (access(g->dirs.incoming, F_OK) < 0 || guest_dirs_incoming_committed(&g->dirs))
                return 0;
        log_warning("removing what an earlier, incomplete incoming migration of this guest left");
        r = guest_dirs_remove_all(&g->dirs, g->cfg->paths.secrets_dir, g->spec.uuid, err);
        if (r < 0)
                return r;
        /* that took the locked state dir too: lock its successor */
        fd = guest_dirs_lock(&g->dirs, true, NULL, err);
        if (fd < 0)
                return fd;
        close(g->lock_fd);
        g->lock_fd = fd;
        return 0;
}

/* ---- migrate/dest's callbacks ------------------------------------------------------------- */

/* MIGRATION_* (and STARTED) with the source as the peer; reason may be NULL */
static void migration_event(struct guest *g, const char *event, const char *reason) {
        json_object *d = json_object_new_object();

        json_object_object_add(d, "direction", json_object_new_string("in"));
        json_object_object_add(d, "peer", json_object_new_string(g->in->source));
        if (reason)
                json_object_object_add(d, "reason", json_object_new_string(reason));
        events_emit(g->events, event, d);
}

static void on_note(void *userdata, enum log_level level, const char *text) {
        (void) userdata;
        log_msg(level, "%s", text);
}

static int on_received(void *userdata, const struct guest_spec *theirs, const char *secret_uuid, const char *secret,
                       vmsup_error **err) {
        struct migrate_in *in = userdata;
        struct guest *g = in->g;
        const char *source = migrate_dest_source(in->dest);
        int r;

        snprintf(in->source, sizeof(in->source), "%s", source ? source : "?");
        in->t0 = monotonic_ms();
        migration_event(g, "MIGRATION_STARTED", NULL);
        /* The source decides nothing about this host: its spec must be the one this
         * host's orchestrator declared (--spec), which the guest runs from. */
        r = spec_match_incoming(&g->spec, theirs, err);
        if (r < 0)
                return vmsup_error_prefix(err, "the source's guest spec differs from this host's '%s'",
                                          in->opts->spec_path);
        if (g->spec.vtpm_secret_uuid && !streq(secret_uuid, g->spec.vtpm_secret_uuid))
                return vmsup_fail(err, VMSUP_ERR_DATA, 0,
                                  "the source's vTPM secret is %s; this host's '%s' has key 'vtpm_secret_uuid' %s",
                                  secret_uuid, in->opts->spec_path, g->spec.vtpm_secret_uuid);
        if (in->lock_err) {
                vmsup_fail(err, in->lock_err->kind, 0, "%s", in->lock_err->msg);
                return -EBUSY;
        }
        /* The NICs are the source's, hot-plugged ones included: its devices are in QEMU's
         * stream. Their taps, of the same names, are this host's orchestrator's to plug
         * first (Nova's pre_live_migration); run.c opens them before anything moves. */
        if ((r = guest_spec_set_nics(&g->spec, theirs->nics, theirs->n_nics, err)) < 0)
                return r;
        r = in->setup(g, in->opts, secret, secret_uuid, err);
        if (r < 0)
                return r;
        janitor_say(g, "P %d\nP %d\n", (int) g->qemu.pid, (int) g->swtpm.pid);
        migrate_dest_children_up(in->dest, g->qmp);
        /* its tls-creds-x509 object: a migration out of here replaces it (migrate/source.c) */
        g->migrate_tls_added = true;
        return 0;
}

static void on_qmp_queued(void *userdata) {
        struct migrate_in *in = userdata;

        guest_qmp_watch(in->g);
}

static int on_seal(void *userdata, int64_t *ret_generation, vmsup_error **err) {
        struct migrate_in *in = userdata;
        struct guest *g = in->g;
        int r;

        /* The TPM state must be here, and sealed, before the source lets go. */
        r = swtpm_state_exists(g->dirs.live_tpm, g->tpm.version, err);
        if (r == 0)
                return vmsup_fail(err, VMSUP_ERR_FAILED, 0, "the TPM state did not arrive (no %s in %s)",
                                  swtpm_permall_name(g->tpm.version), g->dirs.live_tpm);
        if (r < 0)
                return r;
        r = tpm_sync_seal_all(g->sync, err);
        if (r < 0)
                return vmsup_error_prefix(err, "seal the received TPM state");
        /* this host's anchor (host mode: its local store) follows, before PREPARED */
        guest_anchor_catch_up(g, GUEST_ANCHOR_SEAL);
        *ret_generation = (int64_t) tpm_sync_sealed_count(g->sync);
        return 0;
}

static int on_mark_committed(void *userdata, const char *source, vmsup_error **err) {
        struct migrate_in *in = userdata;
        struct guest *g = in->g;
        int r;

        (void) source;
        /* From COMMIT on, the source holds no copy that may run: whatever happens here,
         * ours stays (sealed state, secret, spec, live dir), and its marker keeps it from
         * starting again until the source confirms (DONE) or an operator resolves it. A
         * marker that cannot be written is a plain failure: the source rolls back. */
        r = mark_committed(g, err);
        if (r < 0)
                return r;
        in->claimed = false;
                janitor_say(g, "K\n");
        return 0;
}

static void on_started(void *userdata) {
        struct migrate_in *in = userdata;
        struct guest *g = in->g;

        g->incoming = false;
        g->state = GUEST_RUNNING;
        g->started_at = time(NULL);
        guest_record_history(g);
        log_info("guest running here, received from %s: QEMU pid %d, swtpm pid %d", in->source, (int) g->qemu.pid,
                 (int) g->swtpm.pid);
        migration_event(g, "MIGRATION_COMPLETED", NULL);
        migration_event(g, "STARTED", "migrated");
        guest_notify_ready(g);
}

static char *on_log_tail(void *userdata, bool qemu) {
        struct migrate_in *in = userdata;

        return guest_log_tail(in->g, qemu ? GUEST_LOG_QEMU : GUEST_LOG_SWTPM, 3);
}

static void on_finished(void *userdata, enum migrate_dest_outcome outcome, const vmsup_error *why) {
        struct migrate_in *in = userdata;
        struct guest *g = in->g;

        if (outcome == MIGRATE_DEST_RAN) {
                if (why)
                        log_warning("the hand-over is unconfirmed: %s. The guest runs on here, but its copy stays "
                                    "marked (%s): 'vmsup run' here refuses it until an operator resolves it; see "
                                    "vmsup(8), MIGRATION",
                                    why->msg, g->dirs.incoming);
                else if (unlink(g->dirs.incoming) < 0)
                        log_error("remove '%s': %s (remove it with 'vmsup resolve --keep': the guest is this host's)",
                                  g->dirs.incoming, strerror(errno));
                else
                        log_info("the source confirmed the hand-over: the guest is this host's");
                in->dest = migrate_dest_free(in->dest);
                if (g->interrupted) {
                        /* a stop asked for while we waited: the loop's to carry out */
                        g->interrupted = false;
                        raise(SIGTERM);
                }
                migrate_in_free(g);
                return;
        }
        /* The guest does not run here: undo, and let guest_run() end with why. */
        vmsup_fail(&in->end_err, why ? why->kind : VMSUP_ERR_INTERNAL, 0, "%s", why ? why->msg : "failed");
        if (in->end_err && why)
                in->end_err->errnum = why->errnum;
        in->dest = migrate_dest_free(in->dest);
        migrate_in_abort(g, in->end_err);
        if (in->stop_conn) {
                control_conn_reply_ok(in->stop_conn, json_object_new_string("stopped: the incoming migration was abandoned"));
                in->stop_conn = control_conn_free(in->stop_conn);
        }
        guest_finish(g, in->end_err ? in->end_err->kind : VMSUP_ERR_INTERNAL);
}

/* ---- the guest's events while the guest is received (g->migration) ---------------------- */

/* The destination's state machine runs (the guest does not run here yet, or DONE is awaited). */
static bool active(const struct guest *g) {
        return g->in && g->in->dest;
}

/* Before the guest runs here (after, it is the supervisor's, while DONE is awaited). */
static bool receiving(const struct guest *g) {
        return active(g) && g->state != GUEST_RUNNING;
}

static void hook_qemu_event(struct guest *g, const char *event, json_object *data) {
        if (active(g))
                migrate_dest_qemu_event(g->in->dest, event, data);
}

/* QEMU or swtpm exited: the incoming migration's to handle (it fails it, or the start or
 * the abort deals with it) until the guest runs here. */
static bool hook_child_exited(struct guest *g, bool qemu) {
        enum migrate_dest_state s;

        if (!g->in)
                return false;
        if (!g->in->dest)
                return true; /* being undone */
        s = migrate_dest_state(g->in->dest);
        if (s == MIGRATE_DEST_RUNNING)
                return false; /* the guest is the supervisor's */
        /* before: the start sees it; once committed, QEMU's answers to cont fail */
        if (s >= MIGRATE_DEST_CHILDREN_UP && s < MIGRATE_DEST_COMMITTED)
                migrate_dest_child_exited(g->in->dest, qemu);
        return true;
}

static void hook_qmp_dropped(struct guest *g) {
        vmsup_error *err = NULL;

        if (!active(g))
                return;
        vmsup_fail(&err, VMSUP_ERR_FAILED, 0, "QEMU's monitor is gone");
        migrate_dest_qmp_lost(g->in->dest, err);
        vmsup_error_free(err);
}

/* A stop request or a signal: true when it abandons the migration (before COMMIT; its
 * end follows on the loop), false when too late. */
static bool cancel(struct guest *g, const char *why) {
        vmsup_error *err = NULL;
        bool cancelled;

        if (!active(g))
                return false;
        vmsup_fail(&err, VMSUP_ERR_BUSY, 0, "%s", why);
        cancelled = migrate_dest_cancel(g->in->dest, err) > 0;
        vmsup_error_free(err);
        return cancelled;
}

/* Before COMMIT the incoming migration is abandoned; after, the guest stops once it runs here. */
static bool hook_signal(struct guest *g, int signo) {
        if (!receiving(g))
                return false;
        if (!cancel(g, "interrupted by a signal")) {
                log_info("SIG%s during the migration, after the destination was told to run the guest: the "
                         "migration finishes first", sigabbrev_np(signo));
                g->interrupted = true;
        }
        return true;
}

/* `stop` abandons the migration (c is answered once it is undone); the rest waits. */
static bool hook_request(struct guest *g, struct control_conn *c, const char *cmd) {
        const char *from;
        char msg[512];

        if (!receiving(g))
                return false;
        if (streq(cmd, "stop") && cancel(g, "interrupted by a stop request")) {
                log_info("stop requested: abandoning the incoming migration");
                if (g->in->stop_conn) {
                        control_conn_reply_ok(c, json_object_new_string("stopped: the incoming migration was abandoned"));
                        control_conn_free(c);
                } else
                        g->in->stop_conn = c;
                return true;
        }
        from = migrate_dest_source(g->in->dest);
        snprintf(msg, sizeof(msg), "the guest is being received%s%s; '%s' must wait until that ends",
                 from ? " from " : " (waiting for the source)", from ? from : "", cmd);
        control_conn_reply_error(c, VMSUP_ERR_BUSY, msg);
        control_conn_free(c);
        return true;
}

/* status: "state": "incoming", "migration": {"from", "phase"} */
static void hook_status(struct guest *g, json_object *o) {
        json_object *m;
        const char *source;

        if (!receiving(g))
                return;
        json_object_object_add(o, "state", json_object_new_string("incoming"));
        m = json_object_new_object();
        source = migrate_dest_source(g->in->dest);
        json_object_object_add(m, "from", source ? json_object_new_string(source) : NULL);
        json_object_object_add(m, "phase", json_object_new_string(migrate_dest_phase(g->in->dest)));
        json_object_object_add(o, "migration", m);
}

static const struct guest_migration incoming_hooks = {
        .qemu_event = hook_qemu_event,
        .child_exited = hook_child_exited,
        .qmp_dropped = hook_qmp_dropped,
        .signal = hook_signal,
        .request = hook_request,
        .status = hook_status,
};

/* ---- the supervisor's entries -------------------------------------------------------------- */

int migrate_in_start(struct guest *g, const struct guest_run_opts *opts, vmsup_error *lock_err,
                     guest_setup_fn setup, vmsup_error **err) {
        struct migrate_dest_env env;
        struct migrate_in *in;
        int r;

        in = calloc(1, sizeof(*in));
        if (!in) {
                vmsup_error_free(lock_err);
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "incoming migration");
        }
        in->g = g;
        in->opts = opts;
        in->setup = setup;
        in->janitor_fd = -1;
        in->lock_err = lock_err;
        g->in = in;
        g->migration = &incoming_hooks;
        r = host_config_migration_tls(g->cfg, true, &in->files, err);
        if (r < 0)
                return r;
        env = (struct migrate_dest_env) {
                .loop = g->loop,
                .uuid = opts->incoming_uuid,
                .listen_addr = opts->incoming_addr,
                .listen_port = opts->incoming_port,
                .tls = { .ca_file = in->files.ca, .cert_file = in->files.cert, .key_file = in->files.key },
                .qemu_tls_dir = g->cfg->migration.qemu_tls_dir,
                .timeout_s = g->cfg->migration.timeout,
                .answer_timeout_s = g->cfg->migration.answer_timeout,
                .handshake_timeout_s = g->cfg->migration.handshake_timeout,
                .qmp_timeout_ms = QMP_COMMAND_TIMEOUT,
                .userdata = in,
                .note = on_note,
                .received = on_received,
                .qmp_queued = on_qmp_queued,
                .seal = on_seal,
                .mark_committed = on_mark_committed,
                .started = on_started,
                .log_tail = on_log_tail,
                .finished = on_finished,
        };
        return migrate_dest_new(&env, &in->dest, err);
}

vmsup_error *migrate_in_take_error(struct guest *g) {
        return g->in ? TAKE_PTR(g->in->end_err) : NULL;
}

/* A process (by a pidfd) that has not ended. */
static bool still_running(int pidfd) {
        struct pollfd p = { .fd = pidfd, .events = POLLIN };
        bool alive;

        if (pidfd < 0)
                return false;
        alive = poll(&p, 1, 0) == 0;
        return alive;
}

void migrate_in_abort(struct guest *g, const vmsup_error *why) {
        struct migrate_in *in = g->in;
        vmsup_error *err = NULL;
        _cleanup_close_ int qemu = -1, tpm = -1;
        pid_t qemu_pid, tpm_pid;
        const char *still;

        if (!in || in->undone)
                return;
        in->undone = true;
        if (in->source[0])
                migration_event(g, "MIGRATION_FAILED", why ? why->msg : "abandoned");
        /* still talking to the source (the supervisor fails): ABORT before COMMIT, and a
         * QEMU held by a dead stream is let go (migrate/dest) */
        if (in->dest && migrate_dest_cancel(in->dest, why) == 0 && !why)
                log_debug("incoming: ended after COMMIT");
        in->dest = migrate_dest_free(in->dest);
        /* a committed copy keeps its last TPM writes */
        g->tpm_discard = in->claimed;
        /* our own handles on them: guest_stop_children() forgets even a child that
         * outlived SIGKILL (tpm_stop: CMD_SHUTDOWN, then SIGTERM, then SIGKILL) */
        qemu = g->qemu.pidfd >= 0 && !g->qemu.exited ? fcntl(g->qemu.pidfd, F_DUPFD_CLOEXEC, 3) : -1;
        tpm = g->swtpm.pidfd >= 0 && !g->swtpm.exited ? fcntl(g->swtpm.pidfd, F_DUPFD_CLOEXEC, 3) : -1;
        qemu_pid = g->qemu.pid;
        tpm_pid = g->swtpm.pid;
        guest_stop_children(g);
        still = still_running(qemu) ? "QEMU" : still_running(tpm) ? "swtpm" : NULL;
        if (still) {
                /* its files stay while it runs; the janitor, at our exit, waits for it */
                log_error("%s (pid %d) is still running after SIGKILL: the incoming migration's files stay here "
                          "for the janitor to remove once it has ended", still,
                          (int) (streq(still, "QEMU") ? qemu_pid : tpm_pid));
                return;
        }
        if (in->claimed) {
                if (guest_dirs_remove_all(&g->dirs, g->cfg->paths.secrets_dir, g->spec.uuid, &err) < 0) {
                        log_error("%s; the janitor tries again", err->msg);
                        err = vmsup_error_free(err);
                        return; /* EOF on its pipe at our exit makes the janitor try */
                }
                log_info("%s removed everything the incoming migration had made here",
                         !qemu_pid && !tpm_pid ? "nothing was started;"
                         : g->tpm_stop_err     ? "QEMU and swtpm ended (swtpm had to be killed, see above);"
                                               : "QEMU and swtpm ended;");
        } else if (guest_dirs_incoming_committed(&g->dirs))
                log_warning("the source ordered the guest to run here: its copy stays, marked (%s); see vmsup(8), "
                            "MIGRATION", g->dirs.incoming);
        janitor_say(g, "K\n");
}

void migrate_in_free(struct guest *g) {
        struct migrate_in *in = g->in;

        if (!in)
                return;
        migrate_dest_free(in->dest);
        if (in->stop_conn) {
                control_conn_reply_ok(in->stop_conn, json_object_new_string("stopped: the incoming migration was abandoned"));
                control_conn_free(in->stop_conn);
        }
        migration_tls_files_clear(&in->files);
        vmsup_error_free(in->lock_err);
        vmsup_error_free(in->end_err);
        closep(&in->janitor_fd);
        free(in);
        g->in = NULL;
        if (g->migration == &incoming_hooks)
                g->migration = NULL;
}
