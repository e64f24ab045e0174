#include "config.h"

/* The guest's children: swtpm (its TPM state prepared, launched, stopped, its last
 * writes sealed) and QEMU (launched, its monitor, ended), and reaping them. */

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"
#include "common/proc.h"
#include "common/util.h"
#include "crypto/gnutls_load.h"
#include "crypto/kdf.h"
#include "nova/tpmrules.h"
#include "qmp/client.h"
#include "secrets/vtpmsecret.h"
#include "supervisor/diskimages.h"
#include "supervisor/guestdirs.h"
#include "supervisor/qemuargs.h"
#include "tpmstate/caps.h"
#include "tpmstate/ctrl.h"
#include "tpmstate/swtpm.h"
#include "tpmstate/sync.h"

#include "supervisor/guest_internal.h"

void guest_step(const struct guest *g, const char *step) {
        log_debug("start: %s (+%.1f ms)", step, (double) (monotonic_us() - g->steps_t0) / 1000.0);
}

void guest_stop_step(const struct guest *g, const char *step) {
        if (g->stop_t0)
                log_debug("stop: %s (+%.1f ms)", step, (double) (monotonic_us() - g->stop_t0) / 1000.0);
}

void guest_child_forget(struct guest_child *c) {
        c->src = evloop_source_remove(c->src);
        closep(&c->pidfd);
        c->pidfd = -1;
        c->pid = 0;
}

/* Held on /dev/null: when control clients (or a low RLIMIT_NOFILE) took every other fd,
 * letting these go gives sealing the TPM state, and refusing a client, the fds they need. */
void guest_fd_reserve_fill(struct guest *g) {
        for (int i = 0; i < FD_RESERVE; i++)
                if (g->fd_reserve[i] < 0)
                        g->fd_reserve[i] = open("/dev/null", O_RDONLY | O_CLOEXEC);
}

void guest_fd_reserve_release(struct guest *g) {
        for (int i = 0; i < FD_RESERVE; i++) {
                closep(&g->fd_reserve[i]);
                g->fd_reserve[i] = -1;
        }
}

/* QEMU or swtpm ended (its pidfd, which the loop's child source owns). The loop never
 * reaps: we do, every exited descendant at once. */
static void on_child_exit(struct evloop_source *s, pid_t pid, void *userdata) {
        struct guest *g = userdata;

        (void) s;
        (void) pid;
        guest_reap_all(g);
        guest_logs_drain(g); /* its last lines, before anyone reads the logs for why */
        g->life->children_changed(g);
}

/* The exit of a child just spawned goes to the loop. */
static int child_watch(struct guest *g, struct guest_child *c, vmsup_error **err) {
        int r = evloop_add_child(g->loop, c->pid, on_child_exit, g, &c->src, err);

        return r < 0 ? vmsup_error_prefix(err, "watch %s (pid %d)", c->name, (int) c->pid) : 0;
}

/* Reap every exited descendant at once (we are a child subreaper: swtpm_setup orphans a
 * swtpm of its own), recording the status of the children we track. */
void guest_reap_all(struct guest *g) {
        for (;;) {
                int status;
                pid_t pid = waitpid(-1, &status, WNOHANG);

                if (pid <= 0)
                        return;
                if (pid == g->qemu.pid && !g->qemu.exited) {
                        g->qemu.exited = true;
                        g->qemu.status = status;
                } else if (pid == g->swtpm.pid && !g->swtpm.exited) {
                        g->swtpm.exited = true;
                        g->swtpm.status = status;
                }
        }
}

/* Wait up to timeout_ms for a tracked child to exit (poll on its pidfd). */
bool guest_child_wait(struct guest *g, struct guest_child *c, int timeout_ms) {
        long deadline = monotonic_ms() + timeout_ms;

        guest_reap_all(g);
        while (c->pid && !c->exited) {
                struct pollfd p = { .fd = c->pidfd, .events = POLLIN };
                long left = deadline - monotonic_ms();

                if (left <= 0)
                        return false;
                if (poll(&p, 1, (int) left) < 0 && errno != EINTR)
                        return false;
                guest_reap_all(g);
        }
        return true;
}

/* The last lines of a log file, for error messages. */
/* SIGTERM or SIGINT while the guest starts abandons the start: each blocking step
 * (Barbican, swtpm_setup) watches g->cancel_fd, and the steps are checked between. */
int guest_start_check_cancel(struct guest *g, vmsup_error **err) {
        struct pollfd p = { .fd = g->cancel_fd, .events = POLLIN };

        if (g->cancel_fd < 0 || poll(&p, 1, 0) <= 0)
                return 0;
        return vmsup_fail(err, VMSUP_ERR_BUSY, ECANCELED, "a stop was requested");
}

/* The state-seal key and swtpm's migration key, from the vTPM passphrase. */
int guest_derive_keys(struct guest *g, const char *passphrase, vmsup_error **err) {
        size_t len = strlen(passphrase);
        int r;

        r = kdf_check_passphrase(passphrase, len, err);
        if (r >= 0)
                r = kdf_derive_key(passphrase, len, g->spec.uuid, KDF_USE_STATE_SEAL, &g->seal_key, err);
        if (r >= 0)
                r = kdf_derive_key(passphrase, len, g->spec.uuid, KDF_USE_SWTPM_MIGRATION, &g->migration_key, err);
        return r < 0 ? vmsup_error_prefix(err, "vTPM secret") : 0;
}

int guest_open_sync(struct guest *g, vmsup_error **err) {
        struct tpm_sync_opts so = { 0 };
        int r;

        so.live_dir = g->dirs.live_tpm;
        so.state_dir = g->dirs.state;
        so.uuid = g->spec.uuid;
        so.version = g->tpm.version;
        so.key = g->seal_key;
        so.uid = g->tpm_uid;
        so.gid = g->tpm_gid;
        so.uid_private = g->tpm_uid_private;
        r = tpm_sync_open(&so, &g->sync, err);
        if (r < 0)
                return r;
        /* the anchor on its way from Barbican: checked before anything is sealed or the
         * guest runs (guest_start_children()) */
        return g->anchor_pending ? 0 : guest_tpm_anchor_check(g, err);
}

int guest_tpm_anchor_check(struct guest *g, vmsup_error **err) {
        uint64_t gen = tpm_sync_generation(g->sync);

        /* No sealed state at all is a lost TPM, not an older one: the stamp and --new-tpm
         * decide on it (run.c), and a TPM manufactured now goes on from the anchor's
         * generation, which never goes back. */
        if (gen == 0 && g->anchored) {
                tpm_sync_continue_from(g->sync, g->anchor);
                gen = g->anchor;
        }
        /* A complete older copy of the state dir passes every check inside it (crypto/seal.h);
         * only the anchor outside knows better. Before anything is sealed or the guest runs. */
        if (g->anchored && gen < g->anchor)
                return vmsup_fail(err, VMSUP_ERR_DATA, 0,
                                  "the sealed TPM state in '%s' is generation %" PRIu64 ", older than generation %" PRIu64
                                  " that its rollback anchor (%s) records: a restored or rolled-back copy of the "
                                  "state; refusing to start it, nothing was changed (to go back to an older TPM "
                                  "state on purpose: 'vmsup tpm import --allow-rollback')",
                                  g->dirs.state, gen, g->anchor,
                                  g->tpm.secret_security == SECRET_SECURITY_HOST ? "in the local secret store"
                                                                                 : "in Barbican");
        guest_test_kill_point("start-checked");
        return 0;
}

void guest_test_kill_point(const char *point) {
        static const char *at;
        static unsigned long n, seen;
        static bool parsed;

        if (!parsed) {
                const char *e = getenv("VMSUP_TEST_KILL_AT"), *colon = e ? strrchr(e, ':') : NULL;

                parsed = true;
                if (colon && (n = strtoul(colon + 1, NULL, 10)) > 0)
                        at = strndup(e, (size_t) (colon - e));
        }
        if (at && streq(at, point) && ++seen == n)
                raise(SIGKILL);
}

static void anchor_recorded(struct guest *g, uint64_t gen, const vmsup_error *err) {
        if (err) {
                log_warning("the TPM state's rollback anchor stays at generation %" PRIu64 " (the sealed state is at %" PRIu64
                            "): %s", g->anchor, gen, err->msg);
                return;
        }
        g->anchor = gen;
        g->anchored = true;
        log_debug("TPM state anchor: generation %" PRIu64, gen);
        guest_test_kill_point("anchor-after");
}

/* The keeper answered the request of a launch (guest_anchor_catch_up()). */
static void on_anchor_answer(struct evloop_source *src, int fd, uint32_t revents, void *userdata) {
        struct guest *g = userdata;
        vmsup_error *err = NULL;

        (void) src;
        (void) fd;
        (void) revents;
        g->anchor_src = evloop_source_remove(g->anchor_src);
        (void) vtpm_anchor_keeper_recv(g->anchor_keeper, &err);
        anchor_recorded(g, g->anchor_sent, err);
        vmsup_error_free(err);
}

void guest_anchor_settle(struct guest *g) {
        vmsup_error *err = NULL;

        if (!g->anchor_src)
                return;
        g->anchor_src = evloop_source_remove(g->anchor_src);
        (void) vtpm_anchor_keeper_recv(g->anchor_keeper, &err);
        anchor_recorded(g, g->anchor_sent, err);
        vmsup_error_free(err);
}

void guest_anchor_catch_up(struct guest *g, enum guest_anchor_when when) {
        struct vtpm_secret_opts opts;
        struct vtpm_anchor_request req = { .opts = &opts, .spec = &g->spec, .tpm = &g->tpm,
                                           .secret_id = g->secret_id, .token = g->token, .token_len = g->token_len };
        vmsup_error *err = NULL;
        uint64_t gen;

        if (!g->sync || g->tpm_discard)
                return;
        if (when == GUEST_ANCHOR_STOP)
                guest_anchor_settle(g); /* a launch's request still under way: its answer first */
        gen = tpm_sync_generation(g->sync);
        if (gen == 0 || (g->anchored && gen <= g->anchor))
                return;
        if (g->tpm.secret_security != SECRET_SECURITY_HOST && when == GUEST_ANCHOR_SEAL)
                return;
        if (g->anchor_src)
                return; /* one request at a time: the stop records what comes meanwhile */
        host_config_vtpm_secret_opts(g->cfg, &opts);
        guest_test_kill_point("anchor-before");
        if (g->anchor_keeper && when == GUEST_ANCHOR_START && g->loop) {
                /* a launch (a hard reboot's too) does not wait for Barbican: the answer
                 * comes on the loop, and the guest starts meanwhile */
                if (vtpm_anchor_keeper_send(g->anchor_keeper, g->secret_id, gen, &err) < 0 ||
                    evloop_add_io(g->loop, vtpm_anchor_keeper_fd(g->anchor_keeper), EPOLLIN, on_anchor_answer, g,
                                  &g->anchor_src, &err) < 0) {
                        anchor_recorded(g, gen, err);
                        vmsup_error_free(err);
                        return;
                }
                g->anchor_sent = gen;
                return;
        }
        if (g->anchor_keeper)
                (void) vtpm_anchor_keeper_store(g->anchor_keeper, g->secret_id, gen, &err);
        else
                (void) vtpm_anchor_store(&req, gen, &err);
        anchor_recorded(g, gen, err);
        vmsup_error_free(err);
}

void guest_dispatch_sync(struct guest *g) {
        vmsup_error *err = NULL;
        int r;

        guest_fd_reserve_release(g);
        r = tpm_sync_dispatch(g->sync, &err);
        guest_fd_reserve_fill(g);
        /* a failure leaves the newest state live; the next write or the stop tries again */
        if (r < 0) {
                log_error("sealing the TPM state failed: %s", err->msg);
                vmsup_error_free(err);
        } else {
                log_debug("TPM state sealed (%u writes so far)", tpm_sync_sealed_count(g->sync));
                guest_anchor_catch_up(g, GUEST_ANCHOR_SEAL);
        }
}


static const char *tpm_stamp_what(const struct guest *g) {
        return g->tpm.version == TPM_VERSION_1_2 ? "TPM 1.2" : "TPM 2.0";
}

/* The stamps that make a later start refuse lost TPM state or VARS (guestdirs.h); a
 * failure to write one is logged: the guest runs, and the next start tries again. */
void guest_record_history(struct guest *g) {
        vmsup_error *err = NULL;

        if ((g->tpm.present && g->sync &&
             guest_dirs_stamp(g->dirs.tpm_stamp, tpm_stamp_what(g), &err) < 0) ||
            (streq(g->spec.firmware_type, "uefi") && guest_dirs_stamp(g->dirs.vars_stamp, "OVMF VARS", &err) < 0)) {
                log_warning("%s", err->msg);
                vmsup_error_free(err);
        }
}

static void on_sync(struct evloop_source *s, int fd, uint32_t revents, void *userdata) {
        (void) s;
        (void) fd;
        (void) revents;
        guest_dispatch_sync(userdata);
}

static char *swtpm_log_tail(void *userdata) {
        return guest_log_tail(userdata, GUEST_LOG_SWTPM, 3);
}

/* The vTPM passphrase run.c asked for (g->secret_pending): the keys it gives, and the
 * sync of the live dir with the sealed state, checked against the rollback anchor, or
 * (user and deployment mode) opened while the anchor is still on its way. */
static int tpm_secret_finish(struct guest *g, vmsup_error **err) {
        struct vtpm_secret secret = { 0 };
        int r;

        r = vtpm_secret_obtain_finish(&g->secret_pending, &secret, err);
        if (r < 0)
                return r;
        g->anchor_pending = secret.anchor_follows;
        g->anchored = secret.anchored;
        g->anchor = secret.anchor;
        snprintf(g->secret_id, sizeof(g->secret_id), "%s", secret.id);
        if (secret.created) {
                log_info("created vTPM secret %s in Barbican; the orchestrator must keep it as the guest's "
                         "vtpm_secret_uuid", secret.id);
                printf("vtpm_secret_uuid=%s\n", secret.id);
                fflush(stdout);
        }
        r = guest_derive_keys(g, secret.passphrase, err);
        vtpm_secret_clear(&secret);
        if (r < 0)
                return r;
        return guest_open_sync(g, err);
}

/* The rollback anchor that followed the passphrase (user and deployment mode), and the
 * check of the sealed state against it. */
static int tpm_anchor_arrived(struct guest *g, vmsup_error **err) {
        long long t0 = monotonic_us();
        char step[64];
        int r;

        if (!g->anchor_pending)
                return 0;
        g->anchor_pending = false;
        r = vtpm_secret_anchor_finish(&g->secret_pending, &g->anchored, &g->anchor, err);
        if (r < 0)
                return r;
        /* how long the start waited for it here: 0 when it came while QEMU set itself up */
        snprintf(step, sizeof(step), "rollback anchor here (waited %.1f ms)", (double) (monotonic_us() - t0) / 1000.0);
        guest_step(g, step);
        return guest_tpm_anchor_check(g, err);
}

/* The live dir gets the sealed state (or a new TPM is manufactured), then swtpm starts on
 * swtpm_end, the other end of QEMU's TPM channel. */
static int tpm_prepare_and_launch(struct guest *g, int swtpm_end, vmsup_error **err) {
        struct swtpm_caps caps = { 0 };
        struct swtpm_launch_opts lo = { 0 };
        struct swtpm_proc proc = { 0 };
        _cleanup_close_ int mkey_fd = -1, log_fd = -1;
        int r;

        if (g->incoming)
                goto launch; /* an empty live dir: the state arrives in QEMU's migration stream */
        /* A TPM manufactured now continues from the anchor's generation, and what a crashed
         * run left in the live dir is sealed by the restore: either waits for the anchor
         * (the common start does not: guest_start_children()). */
        if (g->anchor_pending && (tpm_sync_generation(g->sync) == 0 || tpm_sync_live_has_state(g->sync)) &&
            (r = tpm_anchor_arrived(g, err)) < 0)
                return r;
        /* The live dir gets the sealed state (libtpms checks it first); what a crashed
         * run left there is sealed before, when it is newer and valid. */
        r = tpm_sync_restore(g->sync, err);
        if (r < 0)
                return r;
        guest_step(g, "TPM state unsealed and checked");
        if (tpm_sync_recovered_count(g->sync))
                log_warning("sealed %u TPM state file(s) that an earlier run left unsealed in %s",
                            tpm_sync_recovered_count(g->sync), g->dirs.live_tpm);
        if (r == 0) {
                _cleanup_free_ char *ca_dir = NULL, *setup_conf = NULL, *localca = NULL, *vmid = NULL;
                struct swtpm_setup_opts so = { 0 };
                long t0 = monotonic_ms();

                /* EK and platform certificates come from vmsup's own local CA, not from
                 * swtpm-localca's defaults under /var/lib. */
                localca = proc_find_executable("swtpm_localca", err);
                if (!localca)
                        return vmsup_error_prefix(err, "manufacture the TPM (package swtpm-tools)");
                if (asprintf(&ca_dir, "%s/swtpm-localca", g->cfg->paths.state_dir) < 0 ||
                    asprintf(&vmid, "%s:%s", g->spec.name, g->spec.uuid) < 0)
                        return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "manufacture the TPM");
                r = swtpm_localca_prepare(ca_dir, localca, &setup_conf, err);
                if (r < 0)
                        return r;
                so.swtpm_setup = g->swtpm_setup_path;
                so.swtpm = g->swtpm_path;
                so.config = setup_conf;
                so.state_dir = g->dirs.live_tpm;
                so.log_path = g->dirs.swtpm_setup_log;
                so.tmp_dir = g->dirs.run;
                so.vmid = vmid;
                so.version = g->tpm.version;
                so.timeout_ms = 60000;
                so.cancel_fd = g->cancel_fd;
                log_info("manufacturing a TPM %s (swtpm_setup, EK and platform certificates)",
                         tpm_version_to_string(g->tpm.version));
                r = swtpm_manufacture(&so, err);
                guest_reap_all(g);
                if (r >= 0)
                        r = guest_start_check_cancel(g, err);
                if (r < 0) {
                        /* a TPM half made (stopped, or abandoned) must not be sealed by the next start */
                        vmsup_error *werr = NULL;

                        if (tpm_sync_wipe_live(g->sync, &werr) < 0) {
                                log_error("%s", werr->msg);
                                vmsup_error_free(werr);
                        }
                        return r;
                }
                log_info("TPM manufactured in %ld ms", monotonic_ms() - t0);
                r = tpm_sync_seal_all(g->sync, err);
                if (r < 0)
                        return vmsup_error_prefix(err, "seal the new TPM state");
                log_info("TPM state sealed in %s", g->dirs.state);
        }
        /* from here on a start that finds no sealed state refuses instead of manufacturing */
        r = guest_dirs_stamp(g->dirs.tpm_stamp, tpm_stamp_what(g), err);
        if (r < 0)
                return r;

launch:
        if ((r = guest_start_check_cancel(g, err)) < 0)
                return r;
        /* swtpm's --migration-key, so that the TPM blobs in QEMU's migration stream are
         * encrypted under a key both ends derive from the guest's passphrase */
        if (g->migration_key) {
                int p[2];

                if (pipe2(p, O_CLOEXEC) < 0)
                        return vmsup_fail(err, VMSUP_ERR_SYSTEM, errno, "pipe for swtpm's migration key");
                mkey_fd = p[0];
                if (write(p[1], g->migration_key, KDF_KEY_LEN) != KDF_KEY_LEN) {
                        close(p[1]);
                        return vmsup_fail(err, VMSUP_ERR_SYSTEM, errno, "write swtpm's migration key");
                }
                close(p[1]);
        }
        r = swtpm_caps_probe_cached(g->swtpm_path, g->cfg->paths.state_dir, &caps, err);
        if (r < 0)
                return r;
        guest_step(g, "swtpm's capabilities");
        lo.swtpm = g->swtpm_path;
        lo.state_dir = g->dirs.live_tpm;
        if ((r = guest_log_pipe(g, GUEST_LOG_SWTPM, &log_fd, err)) < 0)
                return r;
        lo.log_fd = log_fd;
        lo.log_tail = swtpm_log_tail;
        lo.log_userdata = g;
        lo.version = g->tpm.version;
        lo.seccomp = swtpm_caps_has(&caps, "cmdarg-seccomp");
        lo.key_fd = -1;
        lo.migration_key_fd = mkey_fd;
        lo.death_signal = SIGTERM;
        lo.set_ids = geteuid() == 0;
        lo.uid = g->tpm_uid;
        lo.gid = g->tpm_gid;
        lo.timeout_ms = TPM_CTRL_TIMEOUT;
        /* QEMU, waiting on the other end, asks swtpm for its capabilities and checks them */
        lo.ctrl_peer_fd = swtpm_end;
        swtpm_caps_clear(&caps);
        r = swtpm_launch(&lo, &proc, err);
        if (r < 0)
                return r;
        g->swtpm.pid = proc.pid;
        g->swtpm.pidfd = proc.pidfd;
        g->swtpm.exited = false;
        guest_step(g, "swtpm started");
        if ((r = child_watch(g, &g->swtpm, err)) < 0)
                return r;
        if (!g->sync_watched) {
                /* tpm_sync_watch() replaces the fd the last watch left */
                g->sync_src = evloop_source_remove(g->sync_src);
                r = tpm_sync_watch(g->sync, err);
                if (r < 0)
                        return r;
                r = evloop_add_io(g->loop, tpm_sync_fd(g->sync), EPOLLIN, on_sync, g, &g->sync_src, err);
                if (r < 0)
                        return vmsup_error_prefix(err, "watch the live TPM state");
                g->sync_watched = true;
        }
        return 0;
}

/* swtpm is gone: seal its last writes, then leave no plaintext behind. If sealing
 * fails the live dir stays as it is, for the next start to seal (tpm_sync_restore). */
void guest_tpm_seal_and_wipe(struct guest *g) {
        vmsup_error *err = NULL;
        int r;

        if (!g->sync)
                return;
        if (g->tpm_discard) {
                g->sync_watched = false;
                g->sync_src = evloop_source_remove(g->sync_src);
                if (tpm_sync_wipe_live(g->sync, &err) < 0) {
                        log_error("%s", err->msg);
                        vmsup_error_free(err);
                }
                return;
        }
        guest_fd_reserve_release(g);
        r = tpm_sync_seal_all(g->sync, &err);
        guest_fd_reserve_fill(g);
        if (r < 0) {
                log_error("sealing the TPM state failed: %s; its live copy stays in %s for the next start", err->msg,
                          g->dirs.live_tpm);
                vmsup_error_free(err);
                return;
        }
        guest_stop_step(g, "TPM state sealed");
        events_emit(g->events, "TPM_STATE_SEALED", NULL);
        guest_anchor_catch_up(g, GUEST_ANCHOR_SEAL);
        g->sync_watched = false; /* wiping ends the watch; its fd stays open, silent */
        g->sync_src = evloop_source_remove(g->sync_src);
        if (tpm_sync_wipe_live(g->sync, &err) < 0) {
                log_error("%s", err->msg);
                vmsup_error_free(err);
        }
        guest_stop_step(g, "live TPM state wiped");
}

/* Signal a tracked child through its pidfd: the pid may be reused once reaped. */
int guest_child_signal(struct guest_child *c, int sig) {
        if (c->pidfd >= 0)
                return (int) syscall(SYS_pidfd_send_signal, c->pidfd, sig, NULL, 0);
        return kill(c->pid, sig);
}

/* Stop swtpm through its control channel: a TPM that never saw a shutdown can count it as
 * an attack (dictionary-attack lockout). A swtpm that does not answer (hung, SIGSTOPped)
 * still ends, within bounds: SIGTERM, then SIGKILL. swtpm writes each state file whole
 * (TMP2-00.x renamed over tpm2-00.x), so its live dir then holds its last complete state,
 * and that is what is sealed. Killing it is a failure of the stop: g->tpm_stop_err says
 * what happened. The live dir is sealed and wiped only once swtpm is gone. */
void guest_tpm_stop(struct guest *g) {
        vmsup_error *err = NULL;
        _cleanup_free_ char *shutdown_err = NULL;
        const char *how = NULL;
        int pid = (int) g->swtpm.pid;
        char why[64];

        if (!g->swtpm.pid)
                goto out;
        guest_reap_all(g);
        if (!g->swtpm.exited && g->tpm_ctrl_fd >= 0) {
                if (swtpm_ctrl_shutdown(g->tpm_ctrl_fd, TPM_CTRL_TIMEOUT, &err) < 0) {
                        shutdown_err = strdup(err->msg);
                        err = vmsup_error_free(err);
                }
        }
        closep(&g->tpm_ctrl_fd);
        g->tpm_ctrl_fd = -1;
        /* a failed CMD_SHUTDOWN may only mean that swtpm is on its way out already */
        if (!guest_child_wait(g, &g->swtpm, shutdown_err ? SWTPM_TERM_TIMEOUT : SWTPM_EXIT_TIMEOUT) && !shutdown_err &&
            asprintf(&shutdown_err, "it did not exit within %d s of CMD_SHUTDOWN", SWTPM_EXIT_TIMEOUT / 1000) < 0)
                shutdown_err = NULL;
        if (!g->swtpm.exited) {
                log_error("swtpm (pid %d) did not shut down: %s; sending it SIGTERM", pid,
                          shutdown_err ? shutdown_err : "no answer to CMD_SHUTDOWN");
                how = "SIGTERM";
                guest_child_signal(&g->swtpm, SIGTERM);
                if (!guest_child_wait(g, &g->swtpm, SWTPM_TERM_TIMEOUT)) {
                        log_error("swtpm (pid %d) ignored SIGTERM for %d s; killing it (SIGKILL)", pid,
                                  SWTPM_TERM_TIMEOUT / 1000);
                        how = "SIGKILL";
                        guest_child_signal(&g->swtpm, SIGKILL);
                        guest_child_wait(g, &g->swtpm, SWTPM_TERM_TIMEOUT);
                }
        }
        if (!g->swtpm.exited) {
                /* not even SIGKILL (uninterruptible sleep): leave its files alone */
                vmsup_fail(&g->tpm_stop_err, VMSUP_ERR_FAILED, 0,
                           "swtpm (pid %d) did not shut down (%s) and is still running after SIGKILL; %s %s%s",
                           pid, shutdown_err ? shutdown_err : "no answer to CMD_SHUTDOWN",
                           g->tpm_discard ? "its live dir" : "its TPM state stays unsealed in", g->dirs.live_tpm,
                           g->tpm_discard ? " is left as it is" : " for the next start to seal");
                log_error("%s", g->tpm_stop_err->msg);
                guest_child_forget(&g->swtpm);
                goto out;
        }
        if (how) {
                vmsup_fail(&g->tpm_stop_err, VMSUP_ERR_FAILED, 0,
                           "swtpm (pid %d) did not shut down (%s) and was ended with %s; %s",
                           pid, shutdown_err ? shutdown_err : "no answer to CMD_SHUTDOWN", how,
                           g->tpm_discard ? "its TPM state here is discarded (it lives on another host)"
                                          : "the TPM state kept is the last one it wrote whole");
                log_error("%s", g->tpm_stop_err->msg);
        } else if (!(WIFEXITED(g->swtpm.status) && WEXITSTATUS(g->swtpm.status) == 0))
                log_warning("swtpm %s", proc_describe_status(g->swtpm.status, why, sizeof(why)));
        else if (shutdown_err)
                log_warning("swtpm: %s", shutdown_err);
        guest_stop_step(g, "swtpm exited");
        guest_child_forget(&g->swtpm);
        guest_tpm_seal_and_wipe(g);
out:
        closep(&g->tpm_ctrl_fd);
        g->tpm_ctrl_fd = -1;
}

/* The QMP source waits for what the client needs now, and its timer for the client's
 * next command deadline: after anything that may have queued, sent or received. */
void guest_qmp_watch(struct guest *g) {
        vmsup_error *err = NULL;
        int t;

        if (!g->qmp || !g->qmp_src)
                return;
        if (evloop_io_set_events(g->qmp_src, qmp_client_epoll_events(g->qmp), &err) < 0) {
                log_error("QMP: %s", err->msg);
                vmsup_error_free(err);
        }
        t = qmp_client_next_timeout_ms(g->qmp);
        evloop_timer_set(g->qmp_timer, t < 0 ? -1 : monotonic_ms() + t);
}

void guest_qmp_drop(struct guest *g) {
        if (g->qmp && g->migration && g->migration->qmp_dropped)
                g->migration->qmp_dropped(g);
        guest_vnc_close(g); /* no monitor to hand its clients to */
        guest_nics_qmp_dropped(g);
        guest_tpm_export_qmp_dropped(g);
        g->qmp_src = evloop_source_remove(g->qmp_src);
        if (g->qmp_timer)
                evloop_timer_set(g->qmp_timer, -1);
        g->qmp = qmp_client_free(g->qmp);
}

/* The QMP connection failed for good. QEMU closes it as it exits (its pidfd then tells us
 * when it is gone); anything else leaves a QEMU we can no longer drive: said loudly, shown
 * by `status`, and every stop then ends QEMU with signals (qemu_stop_by_signal). */
static void qmp_lost(struct guest *g, const vmsup_error *err) {
        struct pollfd p = { .fd = g->qemu.pidfd, .events = POLLIN };

        guest_qmp_drop(g);
        guest_reap_all(g);
        if (g->qemu.pid && !g->qemu.exited && g->qemu.pidfd >= 0 && poll(&p, 1, 0) == 1)
                guest_reap_all(g);
        if (!g->qemu.pid || g->qemu.exited || p.revents || g->guest_shutdown || g->force_pending) {
                log_debug("QMP: %s", err->msg);
                return;
        }
        snprintf(g->qmp_lost, sizeof(g->qmp_lost), "%s", err->msg);
        log_error("lost QMP with QEMU (pid %d): %s; QEMU is no longer driven, a stop ends it with SIGTERM, then "
                  "SIGKILL", (int) g->qemu.pid, err->msg);
}

static void on_qmp_io(struct evloop_source *s, int fd, uint32_t revents, void *userdata) {
        struct guest *g = userdata;
        vmsup_error *err = NULL;

        (void) s;
        (void) fd;
        (void) revents;
        if (!g->qmp)
                return;
        if (qmp_client_dispatch(g->qmp, &err) < 0) {
                qmp_lost(g, err);
                vmsup_error_free(err);
        } else
                guest_qmp_watch(g);
}

/* query-tpm must show our emulator with the model Nova's rules chose. */
static int check_tpm_device(struct guest *g, vmsup_error **err) {
        _cleanup_json_ json_object *ret = NULL;
        json_object *dev, *model, *options, *type;
        const char *want = tpm_model_to_string(g->tpm.model);
        int r;

        r = qmp_client_execute(g->qmp, "query-tpm", NULL, -1, QMP_COMMAND_TIMEOUT, &ret, err);
        if (r < 0)
                return r;
        if (!json_object_is_type(ret, json_type_array) || json_object_array_length(ret) != 1)
                return vmsup_fail(err, VMSUP_ERR_INTERNAL, 0, "query-tpm: QEMU does not show exactly one TPM");
        dev = json_object_array_get_idx(ret, 0);
        if (!json_object_object_get_ex(dev, "model", &model) || !streq(json_object_get_string(model), want) ||
            !json_object_object_get_ex(dev, "options", &options) ||
            !json_object_object_get_ex(options, "type", &type) || !streq(json_object_get_string(type), "emulator"))
                return vmsup_fail(err, VMSUP_ERR_INTERNAL, 0, "query-tpm: expected an emulator TPM of model %s, QEMU shows %s",
                                  want, json_object_to_json_string(dev));
        return 0;
}

/* QEMU greets on its monitor as soon as it is up: wait for that here, where a stop request
 * during the start is seen too, and leave the handshake and its errors to
 * qmp_client_handshake() (QEMU gone, no greeting in time). */
static int wait_qmp_greeting(struct guest *g, vmsup_error **err) {
        long deadline = monotonic_ms() + QMP_HANDSHAKE_TIMEOUT;

        for (;;) {
                struct pollfd p[3] = { { qmp_client_fd(g->qmp), POLLIN, 0 }, { g->qemu.pidfd, POLLIN, 0 },
                                       { g->cancel_fd, POLLIN, 0 } };
                long left = deadline - monotonic_ms();
                int n;

                if (left <= 0)
                        return 0;
                n = poll(p, 3, (int) left);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0)
                        return vmsup_fail(err, VMSUP_ERR_SYSTEM, errno, "wait for QEMU's monitor");
                if (p[2].revents)
                        return guest_start_check_cancel(g, err);
                if (p[0].revents || p[1].revents)
                        return 0;
        }
}

/* QEMU, paused (-S), with tpm_qemu_end as its TPM channel: it comes up while the TPM's
 * state is prepared and swtpm starts on the other end, and waits in its TPM backend's
 * set-up until swtpm answers there. */
static int qemu_spawn(struct guest *g, int tpm_qemu_end, vmsup_error **err) {
        _cleanup_strv_ char **argv = NULL;
        _cleanup_close_ int log_fd = -1, serial_fd = -1;
        int qmp_sv[2] = { -1, -1 };
        _cleanup_free_ struct proc_fd_map *fds = NULL;
        struct qemu_nic_fds nic_fds[GUEST_NIC_MAX];
        size_t n_fds;
        struct qemu_args_in in = {
                .qemu = g->qemu_path, .spec = &g->spec, .tpm = &g->tpm, .cfg = g->cfg, .vars_path = g->dirs.vars,
                .serial_fd = 5, .qmp_fd = 3, .tpm_ctrl_fd = g->tpm.present ? 4 : -1, .paused = true,
                .incoming = g->incoming ? "defer" : NULL,
        };
        struct proc_spawn_opts o = { 0 };
        int r;

        /* the taps and vhost-nets after QMP (3), swtpm (4), the serial port (5) */
        fds = calloc(3 + guest_nics_fd_count(g), sizeof(*fds));
        if (!fds)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "QEMU's fds");
        n_fds = 2;
        if (g->tpm.present)
                n_fds++;
        n_fds += guest_nics_map_fds(g, 6, fds + n_fds, nic_fds);
        in.nic_fds = g->spec.n_nics ? nic_fds : NULL;
        r = qemu_args_build(&in, &argv, err);
        if (r < 0)
                return r;
        /* QEMU writes neither its log nor the console log itself: we bound both (logs.c) */
        if ((r = guest_log_pipe(g, GUEST_LOG_QEMU, &log_fd, err)) < 0 ||
            (r = guest_serial_open(g, &serial_fd, err)) < 0)
                return r;
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, qmp_sv) < 0)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, errno, "QMP socketpair");
        fds[0] = (struct proc_fd_map) { qmp_sv[1], 3 };
        fds[1] = (struct proc_fd_map) { serial_fd, 5 };
        if (g->tpm.present)
                fds[2] = (struct proc_fd_map) { tpm_qemu_end, 4 };
        o.argv = argv;
        o.stdin_fd = -1;
        o.stdout_fd = log_fd;
        o.stderr_fd = log_fd;
        o.fds = fds;
        o.n_fds = n_fds;
        o.death_signal = SIGTERM;
        o.new_session = true;
        o.set_ids = geteuid() == 0;
        o.uid = g->qemu_uid;
        o.gid = g->qemu_gid;
        o.groups = g->qemu_groups;
        o.n_groups = g->n_qemu_groups;
        r = proc_spawn(&o, &g->qemu.pid, &g->qemu.pidfd, err);
        close(qmp_sv[1]);
        closep(&log_fd); /* QEMU's now: the pipe ends with it */
        closep(&serial_fd);
        if (r < 0) {
                close(qmp_sv[0]);
                return r;
        }
        guest_nics_close(g, false); /* QEMU's now */
        g->qemu.exited = false;
        if ((r = child_watch(g, &g->qemu, err)) < 0) {
                close(qmp_sv[0]);
                return r;
        }
        r = qmp_client_new_fd(qmp_sv[0], &g->qmp, err);
        if (r < 0)
                return r;
        qmp_client_set_event_handler(g->qmp, g->life->qemu_event, g);
        return 0;
}

/* QEMU's monitor: it greets once QEMU is up (its TPM backend set up with swtpm's
 * answers), then the TPM device is checked. */
static int qemu_connect(struct guest *g, vmsup_error **err) {
        int r;

        if ((r = wait_qmp_greeting(g, err)) < 0)
                return r;
        guest_step(g, "QEMU up");
        r = qmp_client_handshake(g->qmp, QMP_HANDSHAKE_TIMEOUT, err);
        if (r < 0) {
                _cleanup_free_ char *tail = NULL, *tpm_tail = NULL;
                char why[64];

                guest_child_wait(g, &g->qemu, 2000);
                tail = guest_log_tail(g, GUEST_LOG_QEMU, 3);
                /* QEMU stops when swtpm is gone from the other end of its TPM channel */
                if (g->swtpm.pid && g->swtpm.exited) {
                        tpm_tail = guest_log_tail(g, GUEST_LOG_SWTPM, 3);
                        vmsup_error_prefix(err, "QEMU did not come up (its log: %s); swtpm %s (its log: %s)", tail,
                                           proc_describe_status(g->swtpm.status, why, sizeof(why)), tpm_tail);
                } else
                        vmsup_error_prefix(err, "QEMU did not come up (its log: %s)", tail);
                return r;
        }
        log_debug("QMP ready: QEMU %s", qmp_client_qemu_version(g->qmp));
        if (g->tpm.present && (r = check_tpm_device(g, err)) < 0)
                return r;
        /* still paused (-S): a client sees the firmware's first screen */
        return guest_vnc_open(g, err);
}

/* Bring up swtpm and QEMU, check them, and let the guest run. */
static int start_children(struct guest *g, vmsup_error **err) {
        _cleanup_close_ int swtpm_end = -1;
        int r;
        long t0 = monotonic_ms();
        /* the reason of STARTED: a hard reboot's (or on_crash restart's) QEMU, or the first */
        const char *reason = g->state != GUEST_REBOOTING ? "boot" : g->crashed ? "crash-restart" : "reboot";

        if (g->state == GUEST_REBOOTING)
                g->steps_t0 = monotonic_us();
        g->state = GUEST_STARTING;
        g->guest_shutdown = false;
        g->qemu_termed = false;
        g->qmp_lost[0] = '\0';
        snprintf(g->qemu_status, sizeof(g->qemu_status), "prelaunch");
        /* again at every launch (hard reboot): QEMU's user may have rewritten a header */
        if ((r = disk_images_check(&g->spec, err)) < 0)
                return r;
        /* the taps first: a tap missing or in use fails the start before swtpm runs */
        if ((r = guest_nics_open(g, err)) < 0)
                return r;
        if (g->tpm.present) {
                int sp[2];

                /* QEMU's end, and ours to shut swtpm down once QEMU is gone (guest_tpm_stop) */
                if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp) < 0)
                        return vmsup_fail(err, VMSUP_ERR_SYSTEM, errno, "the TPM's control channel");
                g->tpm_ctrl_fd = sp[0];
                swtpm_end = sp[1];
        }
        if ((r = guest_start_check_cancel(g, err)) < 0)
                return r;
        /* QEMU first, paused: it comes up while the secret is fetched, the TPM state is
         * unsealed and checked and swtpm starts, and its TPM backend's set-up waits for
         * swtpm's answers on the channel. A start that fails before swtpm runs closes
         * swtpm_end: QEMU reads the end of its channel and exits, having run nothing. */
        if ((r = qemu_spawn(g, g->tpm_ctrl_fd, err)) < 0)
                return r;
        guest_step(g, "QEMU started");
        /* gnutls (crypto/gnutls_load.h) for the keys and the sealed state, while QEMU comes up */
        if ((r = crypto_gnutls_load(err)) < 0)
                return r;
        if (g->tpm.present) {
                if (g->secret_pending && (r = tpm_secret_finish(g, err)) < 0)
                        return r;
                guest_step(g, "secret here, sealed state opened");
                if ((r = tpm_prepare_and_launch(g, swtpm_end, err)) < 0)
                        return r;
                closep(&swtpm_end); /* swtpm's now: QEMU sees the channel end when swtpm does */
        }
        if ((r = guest_start_check_cancel(g, err)) < 0 || (r = qemu_connect(g, err)) < 0)
                return r;
        /* The anchor came while QEMU set itself up. Before it is checked, nothing is
         * sealed (the loop that would seal swtpm's writes has not run yet) and the guest
         * has not run: a refused state is discarded unsealed (guest_start_children()). */
        if ((r = tpm_anchor_arrived(g, err)) < 0)
                return r;
        /* the anchor catches up with what the start sealed (after it is durable) */
        if (g->tpm.present && !g->incoming)
                guest_anchor_catch_up(g, GUEST_ANCHOR_START);
        /* QEMU is still paused (-S): abandoned here, the guest has not run a single instruction */
        if ((r = guest_start_check_cancel(g, err)) < 0)
                return r;
        guest_step(g, "QMP ready, TPM checked");
        if (!g->incoming && (r = qmp_client_execute(g->qmp, "cont", NULL, -1, QMP_COMMAND_TIMEOUT, NULL, err)) < 0)
                return r;
        guest_step(g, "cont");

        r = evloop_add_io(g->loop, qmp_client_fd(g->qmp), qmp_client_epoll_events(g->qmp), on_qmp_io, g,
                          &g->qmp_src, err);
        if (r < 0)
                return vmsup_error_prefix(err, "watch QMP");
        guest_qmp_watch(g);
        if (g->incoming) {
                log_info("QEMU (pid %d) and swtpm (pid %d) wait for the incoming migration (started in %ld ms)",
                         (int) g->qemu.pid, (int) g->swtpm.pid, monotonic_ms() - t0);
                return 0;
        }
        g->state = GUEST_RUNNING;
        g->started_at = time(NULL);
        guest_record_history(g);
        events_emit_reason(g->events, "STARTED", reason);
        if (g->tpm.present)
                log_info("guest running: QEMU pid %d, swtpm pid %d, TPM %s %s (started in %ld ms)", (int) g->qemu.pid,
                         (int) g->swtpm.pid, tpm_version_to_string(g->tpm.version), tpm_model_to_string(g->tpm.model),
                         monotonic_ms() - t0);
        else
                log_info("guest running: QEMU pid %d, no vTPM (started in %ld ms)", (int) g->qemu.pid, monotonic_ms() - t0);
        guest_notify_ready(g);
        return 0;
}

int guest_start_children(struct guest *g, vmsup_error **err) {
        int r = start_children(g, err);

        /* A start that failed before the anchor was checked: what swtpm may have written
         * (it loads the state on QEMU's CMD_INIT) is wiped, not sealed, so that a refused
         * state changes nothing. The sealed state is as it was. */
        if (r < 0 && g->anchor_pending)
                g->tpm_discard = true;
        return r;
}

/* Make QEMU go away: quit over QMP, then SIGTERM, then SIGKILL. Blocking; for failure
 * paths and the end of a forced stop. */
void guest_qemu_kill(struct guest *g) {
        vmsup_error *err = NULL;

        if (!g->qemu.pid)
                return;
        guest_reap_all(g);
        if (!g->qemu.exited && g->qmp && qmp_client_execute(g->qmp, "quit", NULL, -1, 3000, NULL, &err) < 0)
                err = vmsup_error_free(err);
        if (!g->qmp || !guest_child_wait(g, &g->qemu, QEMU_QUIT_TIMEOUT)) {
                guest_child_signal(&g->qemu, SIGTERM);
                if (!guest_child_wait(g, &g->qemu, QEMU_QUIT_TIMEOUT)) {
                        log_warning("QEMU (pid %d) ignored quit and SIGTERM; killing it", (int) g->qemu.pid);
                        guest_child_signal(&g->qemu, SIGKILL);
                        guest_child_wait(g, &g->qemu, QEMU_QUIT_TIMEOUT);
                }
        }
}

/* Undo a start that failed half-way, leaving no process behind. */
void guest_stop_children(struct guest *g) {
        guest_nics_close(g, true); /* a start that failed before QEMU had them */
        guest_qemu_kill(g);
        guest_qmp_drop(g);
        guest_child_forget(&g->qemu);
        guest_tpm_stop(g);
}
