#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/proc.h"
#include "common/secmem.h"
#include "common/util.h"
#include "crypto/kdf.h"
#include "crypto/seal.h"
#include "qmp/client.h"
#include "seccomp/filter.h"
#include "supervisor/confine.h"
#include "supervisor/control.h"
#include "supervisor/diskimages.h"
#include "supervisor/guest.h"
#include "supervisor/guestdirs.h"
#include "common/log.h"
#include "supervisor/qemuargs.h"
#include "supervisor/qmppolicy.h"
#include "supervisor/specmatch.h"
#include "nova/tpmrules.h"
#include "supervisor/vtpmsecret.h"
#include "tpmstate/caps.h"
#include "tpmstate/ctrl.h"
#include "tpmstate/swtpm.h"
#include "tpmstate/sync.h"

#include "supervisor/guest_internal.h"

static const char *const state_names[] = {
        [GUEST_STARTING] = "starting", [GUEST_RUNNING] = "running", [GUEST_STOPPING] = "stopping",
        [GUEST_REBOOTING] = "rebooting", [GUEST_STOPPED] = "stopped",
};

const char *guest_state_name(const struct guest *g) {
        return state_names[g->state];
}

/* ---- spare fds ---------------------------------------------------------------------- */

/* Held on /dev/null: when control clients (or a low RLIMIT_NOFILE) took every other fd,
 * letting these go gives sealing the TPM state, and refusing a client, the fds they need. */
static void fd_reserve_fill(struct guest *g) {
        for (int i = 0; i < FD_RESERVE; i++)
                if (g->fd_reserve[i] < 0)
                        g->fd_reserve[i] = open("/dev/null", O_RDONLY | O_CLOEXEC);
}

static void fd_reserve_release(struct guest *g) {
        for (int i = 0; i < FD_RESERVE; i++) {
                closep(&g->fd_reserve[i]);
                g->fd_reserve[i] = -1;
        }
}

/* ---- children ---------------------------------------------------------------------- */

static void child_forget(struct child *c) {
        c->src = evloop_source_remove(c->src);
        closep(&c->pidfd);
        c->pidfd = -1;
        c->pid = 0;
}

static void guest_check_children(struct guest *g);

/* QEMU or swtpm ended (its pidfd, which the loop's child source owns). The loop never
 * reaps: we do, every exited descendant at once. */
static void on_child_exit(struct evloop_source *s, pid_t pid, void *userdata) {
        struct guest *g = userdata;

        (void) s;
        (void) pid;
        guest_reap_all(g);
        guest_check_children(g);
}

/* The exit of a child just spawned goes to the loop. */
static int child_watch(struct guest *g, struct child *c, vmsup_error **err) {
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
bool guest_child_wait(struct guest *g, struct child *c, int timeout_ms) {
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
char *guest_log_tail(const char *path, int lines) {
        _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
        char buf[2048];
        off_t size;
        ssize_t n;
        char *p;
        int seen = 0;

        if (fd < 0)
                return strdup("(no log)");
        size = lseek(fd, 0, SEEK_END);
        if (size < 0 || lseek(fd, size > (off_t) sizeof(buf) - 1 ? size - (off_t) sizeof(buf) + 1 : 0, SEEK_SET) < 0)
                return strdup("(unreadable log)");
        n = read(fd, buf, sizeof(buf) - 1);
        if (n <= 0)
                return strdup("(empty log)");
        buf[n] = '\0';
        while (n > 0 && buf[n - 1] == '\n')
                buf[--n] = '\0';
        for (p = buf + n; p > buf; p--)
                if (p[-1] == '\n' && ++seen == lines)
                        break;
        for (char *q = p; *q; q++)
                if (*q == '\n')
                        *q = '|';
        return strdup(p);
}

/* ---- abandoning the start ---------------------------------------------------------- */

/* SIGTERM or SIGINT while the guest starts abandons the start: each blocking step
 * (Barbican, swtpm_setup) watches g->cancel_fd, and the steps are checked between. */
static int start_check_cancel(struct guest *g, vmsup_error **err) {
        struct pollfd p = { .fd = g->cancel_fd, .events = POLLIN };

        if (g->cancel_fd < 0 || poll(&p, 1, 0) <= 0)
                return 0;
        return vmsup_fail(err, VMSUP_EX_TEMPFAIL, ECANCELED, "a stop was requested");
}

/* Whether err is a start abandoned on a signal (then signame names it), not another failure. */
static bool start_abandoned(struct guest *g, const vmsup_error *err, char *signame, size_t size) {
        struct signalfd_siginfo si;
        struct pollfd p = { .fd = g->cancel_fd, .events = POLLIN };

        if (g->cancel_fd < 0 || !err || err->errnum != ECANCELED || poll(&p, 1, 0) <= 0)
                return false;
        if (read(g->cancel_fd, &si, sizeof(si)) == sizeof(si))
                snprintf(signame, size, "SIG%s", sigabbrev_np((int) si.ssi_signo) ?: "?");
        else
                snprintf(signame, size, "a signal");
        return true;
}

/* ---- swtpm ------------------------------------------------------------------------- */

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

static int tpm_prepare_and_launch(struct guest *g, int *ret_qemu_end, vmsup_error **err) {
        struct swtpm_caps caps = { 0 };
        struct swtpm_launch_opts lo = { 0 };
        struct swtpm_proc proc = { 0 };
        _cleanup_close_ int mkey_fd = -1;
        int r;

        if (g->incoming)
                goto launch; /* an empty live dir: the state arrives in QEMU's migration stream */
        /* The live dir gets the sealed state (libtpms checks it first); what a crashed
         * run left there is sealed before, when it is newer and valid. */
        r = tpm_sync_restore(g->sync, err);
        if (r < 0)
                return r;
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
                        return vmsup_fail(err, VMSUP_EX_OSERR, ENOMEM, "manufacture the TPM");
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
                        r = start_check_cancel(g, err);
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
        if ((r = start_check_cancel(g, err)) < 0)
                return r;
        /* swtpm's --migration-key, so that the TPM blobs in QEMU's migration stream are
         * encrypted under a key both ends derive from the guest's passphrase */
        if (g->migration_key) {
                int p[2];

                if (pipe2(p, O_CLOEXEC) < 0)
                        return vmsup_fail(err, VMSUP_EX_OSERR, errno, "pipe for swtpm's migration key");
                mkey_fd = p[0];
                if (write(p[1], g->migration_key, KDF_KEY_LEN) != KDF_KEY_LEN) {
                        close(p[1]);
                        return vmsup_fail(err, VMSUP_EX_OSERR, errno, "write swtpm's migration key");
                }
                close(p[1]);
        }
        r = swtpm_caps_probe(g->swtpm_path, false, &caps, err);
        if (r < 0)
                return r;
        lo.swtpm = g->swtpm_path;
        lo.state_dir = g->dirs.live_tpm;
        lo.log_path = g->dirs.swtpm_log;
        lo.version = g->tpm.version;
        lo.seccomp = swtpm_caps_has(&caps, "cmdarg-seccomp");
        lo.key_fd = -1;
        lo.migration_key_fd = mkey_fd;
        lo.death_signal = SIGTERM;
        lo.set_ids = geteuid() == 0;
        lo.uid = g->tpm_uid;
        lo.gid = g->tpm_gid;
        lo.timeout_ms = TPM_CTRL_TIMEOUT;
        swtpm_caps_clear(&caps);
        /* swtpm_launch checks, on our end of the channel and before QEMU takes it over,
         * that swtpm has every control-channel capability QEMU needs. */
        r = swtpm_launch(&lo, &proc, err);
        if (r < 0)
                return r;
        g->swtpm.pid = proc.pid;
        g->swtpm.pidfd = proc.pidfd;
        g->swtpm.exited = false;
        g->tpm_ctrl_fd = proc.ctrl_fd;
        *ret_qemu_end = g->tpm_ctrl_fd;
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
static void tpm_seal_and_wipe(struct guest *g) {
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
        fd_reserve_release(g);
        r = tpm_sync_seal_all(g->sync, &err);
        fd_reserve_fill(g);
        if (r < 0) {
                log_error("sealing the TPM state failed: %s; its live copy stays in %s for the next start", err->msg,
                          g->dirs.live_tpm);
                vmsup_error_free(err);
                return;
        }
        g->sync_watched = false; /* wiping ends the watch; its fd stays open, silent */
        g->sync_src = evloop_source_remove(g->sync_src);
        if (tpm_sync_wipe_live(g->sync, &err) < 0) {
                log_error("%s", err->msg);
                vmsup_error_free(err);
        }
}

/* Signal a tracked child through its pidfd: the pid may be reused once reaped. */
static int child_signal(struct child *c, int sig) {
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
static void tpm_stop(struct guest *g) {
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
                child_signal(&g->swtpm, SIGTERM);
                if (!guest_child_wait(g, &g->swtpm, SWTPM_TERM_TIMEOUT)) {
                        log_error("swtpm (pid %d) ignored SIGTERM for %d s; killing it (SIGKILL)", pid,
                                  SWTPM_TERM_TIMEOUT / 1000);
                        how = "SIGKILL";
                        child_signal(&g->swtpm, SIGKILL);
                        guest_child_wait(g, &g->swtpm, SWTPM_TERM_TIMEOUT);
                }
        }
        if (!g->swtpm.exited) {
                /* not even SIGKILL (uninterruptible sleep): leave its files alone */
                vmsup_fail(&g->tpm_stop_err, VMSUP_EX_FAILURE, 0,
                           "swtpm (pid %d) did not shut down (%s) and is still running after SIGKILL; %s %s%s",
                           pid, shutdown_err ? shutdown_err : "no answer to CMD_SHUTDOWN",
                           g->tpm_discard ? "its live dir" : "its TPM state stays unsealed in", g->dirs.live_tpm,
                           g->tpm_discard ? " is left as it is" : " for the next start to seal");
                log_error("%s", g->tpm_stop_err->msg);
                child_forget(&g->swtpm);
                goto out;
        }
        if (how) {
                vmsup_fail(&g->tpm_stop_err, VMSUP_EX_FAILURE, 0,
                           "swtpm (pid %d) did not shut down (%s) and was ended with %s; %s",
                           pid, shutdown_err ? shutdown_err : "no answer to CMD_SHUTDOWN", how,
                           g->tpm_discard ? "its TPM state here is discarded (it lives on another host)"
                                          : "the TPM state kept is the last one it wrote whole");
                log_error("%s", g->tpm_stop_err->msg);
        } else if (!(WIFEXITED(g->swtpm.status) && WEXITSTATUS(g->swtpm.status) == 0))
                log_warning("swtpm %s", proc_describe_status(g->swtpm.status, why, sizeof(why)));
        else if (shutdown_err)
                log_warning("swtpm: %s", shutdown_err);
        child_forget(&g->swtpm);
        tpm_seal_and_wipe(g);
out:
        closep(&g->tpm_ctrl_fd);
        g->tpm_ctrl_fd = -1;
}

/* ---- QEMU -------------------------------------------------------------------------- */

static void on_qmp_event(void *userdata, const char *event, json_object *data, json_object *timestamp);

/* The QMP source waits for what the client needs now, and its timer for the client's
 * next command deadline: after anything that may have queued, sent or received. */
static void qmp_watch(struct guest *g) {
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

void guest_qmp_watch(struct guest *g) {
        qmp_watch(g);
}

static void qmp_drop(struct guest *g) {
        if (g->qmp)
                migrate_in_qmp_dropped(g);
        g->qmp_src = evloop_source_remove(g->qmp_src);
        if (g->qmp_timer)
                evloop_timer_set(g->qmp_timer, -1);
        g->qmp = qmp_client_free(g->qmp);
}

static void qemu_stop_by_signal(struct guest *g, bool again);

/* The QMP connection failed for good. QEMU closes it as it exits (its pidfd then tells us
 * when it is gone); anything else leaves a QEMU we can no longer drive: said loudly, shown
 * by `status`, and every stop then ends QEMU with signals (qemu_stop_by_signal). */
static void qmp_lost(struct guest *g, const vmsup_error *err) {
        struct pollfd p = { .fd = g->qemu.pidfd, .events = POLLIN };

        qmp_drop(g);
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
                qmp_watch(g);
}

/* A QMP command's deadline: its callback gets the timeout. */
static void on_qmp_timer(struct evloop_source *s, void *userdata) {
        struct guest *g = userdata;

        (void) s;
        if (g->qmp)
                qmp_client_expire(g->qmp);
        qmp_watch(g);
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
                return vmsup_fail(err, VMSUP_EX_SOFTWARE, 0, "query-tpm: QEMU does not show exactly one TPM");
        dev = json_object_array_get_idx(ret, 0);
        if (!json_object_object_get_ex(dev, "model", &model) || !streq(json_object_get_string(model), want) ||
            !json_object_object_get_ex(dev, "options", &options) ||
            !json_object_object_get_ex(options, "type", &type) || !streq(json_object_get_string(type), "emulator"))
                return vmsup_fail(err, VMSUP_EX_SOFTWARE, 0, "query-tpm: expected an emulator TPM of model %s, QEMU shows %s",
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
                        return vmsup_fail(err, VMSUP_EX_OSERR, errno, "wait for QEMU's monitor");
                if (p[2].revents)
                        return start_check_cancel(g, err);
                if (p[0].revents || p[1].revents)
                        return 0;
        }
}

static int qemu_launch(struct guest *g, int tpm_qemu_end, vmsup_error **err) {
        _cleanup_strv_ char **argv = NULL;
        _cleanup_close_ int log_fd = -1;
        _cleanup_free_ char *qemu_log = NULL;
        int qmp_sv[2] = { -1, -1 };
        struct proc_fd_map fds[2];
        struct qemu_args_in in = {
                .qemu = g->qemu_path, .spec = &g->spec, .tpm = &g->tpm, .cfg = g->cfg, .vars_path = g->dirs.vars,
                .console_log = g->dirs.console_log, .qmp_fd = 3, .tpm_ctrl_fd = g->tpm.present ? 4 : -1, .paused = true,
                .incoming = g->incoming ? "defer" : NULL,
        };
        struct proc_spawn_opts o = { 0 };
        int r;

        r = qemu_args_build(&in, &argv, err);
        if (r < 0)
                return r;
        if (asprintf(&qemu_log, "%s/qemu.log", g->dirs.logs) < 0)
                return vmsup_fail(err, VMSUP_EX_OSERR, ENOMEM, "QEMU log path");
        log_fd = open(qemu_log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (log_fd < 0)
                return vmsup_fail(err, VMSUP_EX_CANTCREAT, errno, "open '%s'", qemu_log);
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, qmp_sv) < 0)
                return vmsup_fail(err, VMSUP_EX_OSERR, errno, "QMP socketpair");
        fds[0] = (struct proc_fd_map) { qmp_sv[1], 3 };
        fds[1] = (struct proc_fd_map) { tpm_qemu_end, 4 };
        o.argv = argv;
        o.stdin_fd = -1;
        o.stdout_fd = log_fd;
        o.stderr_fd = log_fd;
        o.fds = fds;
        o.n_fds = g->tpm.present ? 2 : 1;
        o.death_signal = SIGTERM;
        o.new_session = true;
        o.set_ids = geteuid() == 0;
        o.uid = g->qemu_uid;
        o.gid = g->qemu_gid;
        o.groups = g->qemu_groups;
        o.n_groups = g->n_qemu_groups;
        r = proc_spawn(&o, &g->qemu.pid, &g->qemu.pidfd, err);
        close(qmp_sv[1]);
        if (r < 0) {
                close(qmp_sv[0]);
                return r;
        }
        g->qemu.exited = false;
        if ((r = child_watch(g, &g->qemu, err)) < 0) {
                close(qmp_sv[0]);
                return r;
        }
        r = qmp_client_new_fd(qmp_sv[0], &g->qmp, err);
        if (r < 0)
                return r;
        qmp_client_set_event_handler(g->qmp, on_qmp_event, g);
        if ((r = wait_qmp_greeting(g, err)) < 0)
                return r;
        r = qmp_client_handshake(g->qmp, QMP_HANDSHAKE_TIMEOUT, err);
        if (r < 0) {
                _cleanup_free_ char *tail = NULL;

                guest_child_wait(g, &g->qemu, 2000);
                tail = guest_log_tail(qemu_log, 3);
                vmsup_error_prefix(err, "QEMU did not come up (its log: %s)", tail);
                return r;
        }
        log_debug("QMP ready: QEMU %s", qmp_client_qemu_version(g->qmp));
        if (g->tpm.present && (r = check_tpm_device(g, err)) < 0)
                return r;
        return 0;
}

/* Bring up swtpm and QEMU, check them, and let the guest run. */
int guest_start_children(struct guest *g, vmsup_error **err) {
        int tpm_qemu_end = -1, r;
        long t0 = monotonic_ms();

        g->state = GUEST_STARTING;
        g->guest_shutdown = false;
        g->qemu_termed = false;
        g->qmp_lost[0] = '\0';
        snprintf(g->qemu_status, sizeof(g->qemu_status), "prelaunch");
        /* again at every launch (hard reboot): QEMU's user may have rewritten a header */
        if ((r = disk_images_check(&g->spec, err)) < 0)
                return r;
        if (g->tpm.present && (r = tpm_prepare_and_launch(g, &tpm_qemu_end, err)) < 0)
                return r;
        if ((r = start_check_cancel(g, err)) < 0)
                return r;
        r = qemu_launch(g, tpm_qemu_end, err);
        if (r < 0)
                return r;
        /* QEMU is still paused (-S): abandoned here, the guest has not run a single instruction */
        if ((r = start_check_cancel(g, err)) < 0)
                return r;
        if (!g->incoming && (r = qmp_client_execute(g->qmp, "cont", NULL, -1, QMP_COMMAND_TIMEOUT, NULL, err)) < 0)
                return r;

        r = evloop_add_io(g->loop, qmp_client_fd(g->qmp), qmp_client_epoll_events(g->qmp), on_qmp_io, g,
                          &g->qmp_src, err);
        if (r < 0)
                return vmsup_error_prefix(err, "watch QMP");
        qmp_watch(g);
        if (g->incoming) {
                log_info("QEMU (pid %d) and swtpm (pid %d) wait for the incoming migration (started in %ld ms)",
                         (int) g->qemu.pid, (int) g->swtpm.pid, monotonic_ms() - t0);
                return 0;
        }
        g->state = GUEST_RUNNING;
        g->started_at = time(NULL);
        guest_record_history(g);
        if (g->tpm.present)
                log_info("guest running: QEMU pid %d, swtpm pid %d, TPM %s %s (started in %ld ms)", (int) g->qemu.pid,
                         (int) g->swtpm.pid, tpm_version_to_string(g->tpm.version), tpm_model_to_string(g->tpm.model),
                         monotonic_ms() - t0);
        else
                log_info("guest running: QEMU pid %d, no vTPM (started in %ld ms)", (int) g->qemu.pid, monotonic_ms() - t0);
        return 0;
}

/* Make QEMU go away: quit over QMP, then SIGTERM, then SIGKILL. Blocking; for failure
 * paths and the end of a forced stop. */
static void qemu_kill(struct guest *g) {
        vmsup_error *err = NULL;

        if (!g->qemu.pid)
                return;
        guest_reap_all(g);
        if (!g->qemu.exited && g->qmp && qmp_client_execute(g->qmp, "quit", NULL, -1, 3000, NULL, &err) < 0)
                err = vmsup_error_free(err);
        if (!g->qmp || !guest_child_wait(g, &g->qemu, QEMU_QUIT_TIMEOUT)) {
                child_signal(&g->qemu, SIGTERM);
                if (!guest_child_wait(g, &g->qemu, QEMU_QUIT_TIMEOUT)) {
                        log_warning("QEMU (pid %d) ignored quit and SIGTERM; killing it", (int) g->qemu.pid);
                        child_signal(&g->qemu, SIGKILL);
                        guest_child_wait(g, &g->qemu, QEMU_QUIT_TIMEOUT);
                }
        }
}

/* Undo a start that failed half-way, leaving no process behind. */
void guest_stop_children(struct guest *g) {
        qemu_kill(g);
        qmp_drop(g);
        child_forget(&g->qemu);
        tpm_stop(g);
}

/* ---- requests and events ----------------------------------------------------------- */

static void answer_waiters(struct guest *g, bool ok, int exit_code, const char *msg) {
        while (g->waiters) {
                struct control_conn *c = g->waiters;

                g->waiters = c->next;
                if (ok)
                        control_conn_reply_ok(c, json_object_new_string(msg));
                else
                        control_conn_reply_error(c, exit_code, msg);
                control_conn_free(c);
        }
}

void guest_finish(struct guest *g, int exit_code) {
        g->state = GUEST_STOPPED;
        g->exit_code = exit_code;
        g->done = true;
        if (g->loop)
                evloop_exit(g->loop, exit_code);
}

static void on_quit_reply(void *userdata, json_object *ret, const vmsup_error *err) {
        struct guest *g = userdata;

        (void) ret;
        if (err && g->qemu.pid && !g->qemu.exited)
                log_warning("quit: %s", err->msg);
}

static void stop_note(struct guest *g, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void stop_note(struct guest *g, const char *fmt, ...) {
        size_t n = strlen(g->stop_note);
        va_list ap;

        if (n && n < sizeof(g->stop_note) - 2)
                n += (size_t) snprintf(g->stop_note + n, sizeof(g->stop_note) - n, "; ");
        va_start(ap, fmt);
        vsnprintf(g->stop_note + n, sizeof(g->stop_note) - n, fmt, ap);
        va_end(ap);
}

static void qemu_sigkill(struct guest *g, const char *why) {
        log_warning("%s; killing QEMU (pid %d) with SIGKILL", why, (int) g->qemu.pid);
        stop_note(g, "%s: QEMU was killed (SIGKILL)", why);
        evloop_timer_set(g->kill_timer, -1);
        child_signal(&g->qemu, SIGKILL);
}

/* Without QMP, QEMU is ended through its pidfd: SIGTERM (QEMU then shuts its devices
 * down, the TPM included, as for quit), SIGKILL at kill_deadline, or at once when asked
 * again. */
static void qemu_stop_by_signal(struct guest *g, bool again) {
        if (g->qemu_termed && again) {
                qemu_sigkill(g, "asked again to stop");
                return;
        }
        if (g->qemu_termed)
                return;
        log_warning("no QMP to ask QEMU to stop (%s); sending QEMU (pid %d) SIGTERM, SIGKILL in %d s if it is still there",
                    g->qmp_lost[0] ? g->qmp_lost : "QMP is not connected", (int) g->qemu.pid, QEMU_QUIT_TIMEOUT / 1000);
        stop_note(g, "QMP was lost (%s): QEMU was sent SIGTERM", g->qmp_lost[0] ? g->qmp_lost : "not connected");
        g->qemu_termed = true;
        evloop_timer_set(g->stop_timer, -1);
        evloop_timer_set(g->kill_timer, monotonic_ms() + QEMU_QUIT_TIMEOUT);
        g->force_pending = true;
        child_signal(&g->qemu, SIGTERM);
}

/* Graceful: ACPI power button, then quit when the grace time is over. */
void guest_begin_stop(struct guest *g, unsigned timeout_s, bool force, bool reboot) {
        bool again = g->stop_requested && (force || timeout_s == 0);
        vmsup_error *err = NULL;

        g->stop_requested = true;
        g->state = reboot ? GUEST_REBOOTING : GUEST_STOPPING;
        if (!g->qemu.pid || g->qemu.exited)
                return;
        if (!g->qmp) {
                qemu_stop_by_signal(g, again);
                return;
        }
        if (again && g->force_pending) {
                /* quit was sent already and QEMU is still there */
                qemu_sigkill(g, "asked again to stop after quit");
                return;
        }
        if (force || reboot || timeout_s == 0) {
                if (qmp_client_execute_async(g->qmp, "quit", NULL, -1, 5000, on_quit_reply, g, &err) < 0)
                        err = vmsup_error_free(err);
                evloop_timer_set(g->kill_timer, monotonic_ms() + QEMU_QUIT_TIMEOUT);
                g->force_pending = true;
        } else {
                if (qmp_client_execute_async(g->qmp, "system_powerdown", NULL, -1, 5000, on_quit_reply, g, &err) < 0)
                        err = vmsup_error_free(err);
                evloop_timer_set(g->stop_timer, monotonic_ms() + (long) timeout_s * 1000);
        }
        qmp_watch(g);
}

static void on_qmp_event(void *userdata, const char *event, json_object *data, json_object *timestamp) {
        struct guest *g = userdata;
        json_object *reason;
        const char *why = data && json_object_object_get_ex(data, "reason", &reason) ? json_object_get_string(reason)
                                                                                      : NULL;

        (void) timestamp;
        migrate_in_qemu_event(g, event, data);
        if (streq(event, "SHUTDOWN")) {
                g->guest_shutdown = true;
                log_info("QEMU: SHUTDOWN (%s)", why ? why : "no reason given");
        } else if (streq(event, "RESET"))
                log_info("QEMU: guest reset (%s)", why ? why : "no reason given");
        else if (streq(event, "STOP"))
                snprintf(g->qemu_status, sizeof(g->qemu_status), "paused");
        else if (streq(event, "RESUME"))
                snprintf(g->qemu_status, sizeof(g->qemu_status), "running");
        else if (streq(event, "MIGRATION")) {
                json_object *st;

                if (data && json_object_object_get_ex(data, "status", &st))
                        snprintf(g->migration_status, sizeof(g->migration_status), "%s", json_object_get_string(st));
                log_debug("QEMU: migration %s", g->migration_status);
        }
        else
                log_debug("QEMU: event %s", event);
}

struct pending_reply {
        struct guest *g;
        struct control_conn *conn;
};

static void on_status_reply(void *userdata, json_object *ret, const vmsup_error *err) {
        struct pending_reply *p = userdata;
        struct guest *g = p->g;
        json_object *o = json_object_new_object(), *tpm, *st;

        json_object_object_add(o, "uuid", json_object_new_string(g->spec.uuid));
        json_object_object_add(o, "name", json_object_new_string(g->spec.name));
        json_object_object_add(o, "state", json_object_new_string(migrate_in_active(g) && g->state != GUEST_RUNNING
                                                                           ? "incoming"
                                                                           : state_names[g->state]));
        json_object_object_add(o, "pid", json_object_new_int(getpid()));
        json_object_object_add(o, "qemu_pid", g->qemu.pid ? json_object_new_int(g->qemu.pid) : NULL);
        json_object_object_add(o, "swtpm_pid", g->swtpm.pid ? json_object_new_int(g->swtpm.pid) : NULL);
        json_object_object_add(o, "uptime_s", json_object_new_int64(g->started_at ? (int64_t) (time(NULL) - g->started_at) : 0));
        tpm = vtpm_config_to_json(&g->tpm);
        json_object_object_add(o, "tpm", tpm);
        if (!g->qmp && g->qmp_lost[0] && g->qemu.pid && !g->qemu.exited) {
                /* QEMU runs, but nothing tells us what it does */
                json_object_object_add(o, "qemu_status", json_object_new_string("unknown (QMP lost)"));
                json_object_object_add(o, "qmp_lost", json_object_new_string(g->qmp_lost));
        } else if (ret && json_object_object_get_ex(ret, "status", &st))
                json_object_object_add(o, "qemu_status", json_object_get(st));
        else if (err && err->errnum == ETIMEDOUT)
                /* its main loop is held: a migration on a dead link, a stuck device */
                json_object_object_add(o, "qemu_status", json_object_new_string("not answering"));
        else
                json_object_object_add(o, "qemu_status", json_object_new_string(err ? "unknown" : g->qemu_status));
        {
                vmsup_error *merr = NULL;
                _cleanup_free_ char *marker = guest_dirs_stamp_read(g->dirs.migrated_out, &merr);

                if (marker)
                        json_object_object_add(o, "migrated_out", json_object_new_string(marker));
                vmsup_error_free(merr);
                merr = NULL;
                free(marker);
                marker = g->incoming ? NULL : guest_dirs_stamp_read(g->dirs.incoming, &merr);
                if (marker)
                        json_object_object_add(o, "incoming", json_object_new_string(marker));
                vmsup_error_free(merr);
        }
        if (g->state != GUEST_RUNNING)
                migrate_in_status(g, o);
        if (g->migrating_to) {
                json_object *m = json_object_new_object();

                json_object_object_add(m, "to", json_object_new_string(g->migrating_to));
                json_object_object_add(m, "status", json_object_new_string(g->migration_status[0] ? g->migration_status
                                                                                                   : "preparing"));
                json_object_object_add(m, "percent", json_object_new_int(g->migration_percent));
                json_object_object_add(o, "migration", m);
        }
        control_conn_reply_ok(p->conn, o);
        control_conn_free(p->conn);
        free(p);
}

static void on_qmp_passthrough_reply(void *userdata, json_object *ret, const vmsup_error *err) {
        struct pending_reply *p = userdata;

        if (err)
                control_conn_reply_error(p->conn, err->exit_code ? err->exit_code : VMSUP_EX_FAILURE, err->msg);
        else
                control_conn_reply_ok(p->conn, json_object_get(ret));
        control_conn_free(p->conn);
        free(p);
}

static void on_reset_reply(void *userdata, json_object *ret, const vmsup_error *err) {
        struct pending_reply *p = userdata;

        (void) ret;
        if (err)
                control_conn_reply_error(p->conn, err->exit_code ? err->exit_code : VMSUP_EX_FAILURE, err->msg);
        else {
                log_info("guest rebooted (system_reset)");
                control_conn_reply_ok(p->conn, json_object_new_string("rebooted"));
        }
        control_conn_free(p->conn);
        free(p);
}

static void on_resolve_reply(void *userdata, json_object *ret, const vmsup_error *err) {
        struct pending_reply *p = userdata;

        (void) ret;
        if (err) {
                log_error("the migrated-out marker is removed, but the guest stays paused: cont: %s", err->msg);
                control_conn_reply_error(p->conn, err->exit_code ? err->exit_code : VMSUP_EX_FAILURE, err->msg);
        } else {
                log_info("an operator resolved the hand-over: this host's copy is the one; the guest runs here again");
                control_conn_reply_ok(p->conn, json_object_new_string("kept: the guest runs here again"));
        }
        control_conn_free(p->conn);
        free(p);
}

static void forward_qmp(struct guest *g, struct control_conn *c, const char *cmd, json_object *args, int timeout_ms,
                        qmp_reply_fn fn);

/* `vmsup resolve --keep` (vmsup(8), MIGRATION): an operator says this host's copy is the
 * one. A source's guest left paused by an undecided hand-over runs again; a destination's
 * unconfirmed copy becomes a plain guest of this host. */
static void resolve_keep(struct guest *g, struct control_conn *c) {
        char msg[600];

        if (access(g->dirs.migrated_out, F_OK) == 0) {
                if (unlink(g->dirs.migrated_out) < 0) {
                        snprintf(msg, sizeof(msg), "remove '%s': %s", g->dirs.migrated_out, strerror(errno));
                        control_conn_reply_error(c, VMSUP_EX_IOERR, msg);
                        control_conn_free(c);
                        return;
                }
                log_info("an operator resolved the hand-over: this host's copy is the one (removed %s)",
                         g->dirs.migrated_out);
                forward_qmp(g, c, "cont", NULL, QMP_COMMAND_TIMEOUT, on_resolve_reply);
                return;
        }
        if (guest_dirs_incoming_committed(&g->dirs)) {
                if (unlink(g->dirs.incoming) < 0) {
                        snprintf(msg, sizeof(msg), "remove '%s': %s", g->dirs.incoming, strerror(errno));
                        control_conn_reply_error(c, VMSUP_EX_IOERR, msg);
                } else {
                        log_info("an operator resolved the hand-over: this host's copy is the one (removed %s)",
                                 g->dirs.incoming);
                        control_conn_reply_ok(c, json_object_new_string("kept: the guest is this host's"));
                }
                control_conn_free(c);
                return;
        }
        snprintf(msg, sizeof(msg), "guest %s has no undecided live migration on this host (no %s, no committed %s): "
                 "nothing to resolve", g->spec.uuid, GUEST_MIGRATED_OUT, GUEST_INCOMING);
        control_conn_reply_error(c, VMSUP_EX_DATAERR, msg);
        control_conn_free(c);
}

static bool get_bool(json_object *req, const char *key) {
        json_object *v;

        return json_object_object_get_ex(req, key, &v) && json_object_get_boolean(v);
}

/* Queue a QMP command whose reply answers the control client; takes the connection. */
static void forward_qmp(struct guest *g, struct control_conn *c, const char *cmd, json_object *args, int timeout_ms,
                        qmp_reply_fn fn) {
        struct pending_reply *p = calloc(1, sizeof(*p));
        vmsup_error *err = NULL;

        if (!p || !g->qmp || g->state != GUEST_RUNNING) {
                char msg[320];

                free(p);
                snprintf(msg, sizeof(msg), "%s%s%s", g->qmp ? "the guest is not running" : "QEMU is not reachable",
                         !g->qmp && g->qmp_lost[0] ? ": QMP lost: " : "", !g->qmp ? g->qmp_lost : "");
                control_conn_reply_error(c, VMSUP_EX_TEMPFAIL, msg);
                control_conn_free(c);
                return;
        }
        p->g = g;
        p->conn = c;
        if (qmp_client_execute_async(g->qmp, cmd, args, -1, timeout_ms, fn, p, &err) < 0) {
                control_conn_reply_error(c, err->exit_code, err->msg);
                control_conn_free(c);
                free(p);
                vmsup_error_free(err);
                return;
        }
        qmp_watch(g);
}

/* The guest's migrated-out marker: an undecided hand-over to another host. */
static bool handed_over(const struct guest *g) {
        return access(g->dirs.migrated_out, F_OK) == 0;
}

static void handle_request(struct guest *g, struct control_conn *c) {
        json_object *cmdv, *v;
        const char *cmd = json_object_object_get_ex(c->request, "cmd", &cmdv) ? json_object_get_string(cmdv) : "";
        enum qmp_policy verdict;
        char why[512];

        if (migrate_in_active(g) && g->state != GUEST_RUNNING && !streq(cmd, "status")) {
                const char *from = migrate_in_source(g);
                char msg[512];

                if (streq(cmd, "stop") && migrate_in_cancel(g, "interrupted by a stop request")) {
                        log_info("stop requested: abandoning the incoming migration");
                        migrate_in_stop_conn(g, c); /* answered once it is undone */
                        return;
                }
                snprintf(msg, sizeof(msg), "the guest is being received%s%s; '%s' must wait until that ends",
                         from ? " from " : " (waiting for the source)", from ? from : "", cmd);
                control_conn_reply_error(c, VMSUP_EX_TEMPFAIL, msg);
                control_conn_free(c);
                return;
        }
        if (g->migrating_to && !streq(cmd, "status")) {
                char msg[320];

                snprintf(msg, sizeof(msg), "the guest is being migrated to %s; '%s' must wait until that ends",
                         g->migrating_to, cmd);
                control_conn_reply_error(c, VMSUP_EX_TEMPFAIL, msg);
                control_conn_free(c);
                return;
        }
        if ((streq(cmd, "reboot") || streq(cmd, "migrate")) && handed_over(g)) {
                /* a hard reboot starts QEMU afresh from the sealed state, a soft one and a
                 * migration's rollback resume the guest: a second running copy */
                snprintf(why, sizeof(why),
                         "'%s' is refused: the guest was handed over to another host by a live migration whose "
                         "outcome is unknown (%s), and may run there; see vmsup(8), MIGRATION",
                         cmd, g->dirs.migrated_out);
                log_warning("%s", why);
                control_conn_reply_error(c, VMSUP_EX_TEMPFAIL, why);
                control_conn_free(c);
                return;
        }
        if (streq(cmd, "status")) {
                if (g->qmp && g->state == GUEST_RUNNING)
                        forward_qmp(g, c, "query-status", NULL, STATUS_QMP_TIMEOUT_MS, on_status_reply);
                else {
                        struct pending_reply *p = calloc(1, sizeof(*p));

                        if (!p) {
                                control_conn_free(c);
                                return;
                        }
                        *p = (struct pending_reply) { g, c };
                        on_status_reply(p, NULL, NULL);
                }
        } else if (streq(cmd, "stop")) {
                unsigned timeout = g->cfg->supervisor.stop_timeout;

                if (json_object_object_get_ex(c->request, "timeout", &v) && json_object_is_type(v, json_type_int) &&
                    json_object_get_int(v) >= 0)
                        timeout = (unsigned) json_object_get_int(v);
                log_info("stop requested (%s)", get_bool(c->request, "force") ? "forced" : "graceful");
                c->next = g->waiters;
                g->waiters = c;
                if (g->state == GUEST_RUNNING)
                        guest_begin_stop(g, timeout, get_bool(c->request, "force"), false);
                else if (get_bool(c->request, "force") && g->qemu.pid)
                        guest_begin_stop(g, 0, true, g->state == GUEST_REBOOTING && false);
        } else if (streq(cmd, "reboot")) {
                if (g->state != GUEST_RUNNING) {
                        control_conn_reply_error(c, VMSUP_EX_TEMPFAIL, "the guest is not running");
                        control_conn_free(c);
                } else if (get_bool(c->request, "hard")) {
                        log_info("hard reboot requested: QEMU is restarted, the TPM state is kept");
                        c->next = g->waiters;
                        g->waiters = c;
                        guest_begin_stop(g, 0, true, true);
                } else
                        forward_qmp(g, c, "system_reset", NULL, QMP_COMMAND_TIMEOUT, on_reset_reply);
        } else if (streq(cmd, "migrate")) {
                migrate_out(g, c);
        } else if (streq(cmd, "resolve")) {
                resolve_keep(g, c);
        } else if (streq(cmd, "qmp")) {
                json_object *args = NULL;

                if (!json_object_object_get_ex(c->request, "command", &v) || !json_object_is_type(v, json_type_string)) {
                        control_conn_reply_error(c, VMSUP_EX_USAGE, "qmp request without a command");
                        control_conn_free(c);
                        return;
                }
                json_object_object_get_ex(c->request, "arguments", &args);
                /* After an undecided hand-over the guest may run on the destination: two
                 * copies of one TPM must never run (docs/migration.md). */
                verdict = qmp_policy_check(json_object_get_string(v), args, handed_over(g), why, sizeof(why));
                if (verdict != QMP_POLICY_ALLOW) {
                        log_warning("%s", why);
                        control_conn_reply_error(
                                c, verdict == QMP_POLICY_REFUSED ? VMSUP_EX_UNAVAILABLE : VMSUP_EX_TEMPFAIL, why);
                        control_conn_free(c);
                        return;
                }
                forward_qmp(g, c, json_object_get_string(v), args, QMP_COMMAND_TIMEOUT, on_qmp_passthrough_reply);
        } else {
                control_conn_reply_error(c, VMSUP_EX_USAGE, "unknown control request");
                control_conn_free(c);
        }
}

/* ---- the end of QEMU or swtpm ------------------------------------------------------ */

static void on_qemu_exit(struct guest *g) {
        vmsup_error *err = NULL;
        char why[64];
        bool expected = g->stop_requested || g->guest_shutdown;

        proc_describe_status(g->qemu.status, why, sizeof(why));
        qmp_drop(g);
        child_forget(&g->qemu);
        evloop_timer_set(g->stop_timer, -1);
        evloop_timer_set(g->kill_timer, -1);
        g->force_pending = false;
        tpm_stop(g);

        if (g->tpm_stop_err) {
                /* swtpm had to be killed: the stop (or reboot) did not go as it should */
                const vmsup_error *e = g->tpm_stop_err;

                if (expected)
                        log_info("guest stopped: %s (QEMU %s)%s%s; swtpm did not shut down",
                                 g->stop_requested ? "on request" : "it powered off", why, g->stop_note[0] ? ": " : "",
                                 g->stop_note);
                else
                        log_error("QEMU %s unexpectedly; the guest is gone", why);
                answer_waiters(g, false, e->exit_code, e->msg);
                guest_finish(g, e->exit_code);
                return;
        }
        if (g->state == GUEST_REBOOTING) {
                log_info("QEMU stopped for the hard reboot (%s); starting it again", why);
                g->stop_requested = false;
                g->stop_note[0] = '\0';
                if (guest_start_children(g, &err) < 0) {
                        log_error("hard reboot failed: %s", err->msg);
                        answer_waiters(g, false, err->exit_code ? err->exit_code : VMSUP_EX_FAILURE, err->msg);
                        vmsup_error_free(err);
                        guest_stop_children(g);
                        guest_finish(g, VMSUP_EX_FAILURE);
                        return;
                }
                answer_waiters(g, true, 0, "rebooted");
                return;
        }
        if (expected) {
                char msg[640];

                log_info("guest stopped: %s (QEMU %s)%s%s", g->stop_requested ? "on request" : "it powered off", why,
                         g->stop_note[0] ? ": " : "", g->stop_note);
                snprintf(msg, sizeof(msg), "stopped%s%s", g->stop_note[0] ? ": " : "", g->stop_note);
                answer_waiters(g, true, 0, msg);
                guest_finish(g, 0);
        } else {
                log_error("QEMU %s unexpectedly; the guest is gone", why);
                answer_waiters(g, false, VMSUP_EX_FAILURE, "QEMU ended unexpectedly");
                guest_finish(g, VMSUP_EX_FAILURE);
        }
}

static void on_swtpm_exit(struct guest *g) {
        _cleanup_free_ char *tail = guest_log_tail(g->dirs.swtpm_log, 5);
        char why[64];

        proc_describe_status(g->swtpm.status, why, sizeof(why));
        child_forget(&g->swtpm);
        closep(&g->tpm_ctrl_fd);
        g->tpm_ctrl_fd = -1;
        tpm_seal_and_wipe(g);
        /* QEMU shuts the TPM down (CMD_SHUTDOWN) as it exits: swtpm may go first. */
        if (g->guest_shutdown || g->stop_requested) {
                log_debug("swtpm %s as QEMU shut it down", why);
                return;
        }
        if (g->qemu.pid && !g->qemu.exited) {
                log_error("swtpm %s while the guest was running; stopping QEMU. swtpm's last log lines: %s", why, tail);
                g->stop_requested = true; /* ours, not the guest's */
                qemu_kill(g);
                guest_reap_all(g);
                qmp_drop(g);
                child_forget(&g->qemu);
                answer_waiters(g, false, VMSUP_EX_FAILURE, "swtpm ended unexpectedly");
                guest_finish(g, VMSUP_EX_FAILURE);
        }
}

/* ---- the loop ---------------------------------------------------------------------- */

/* After any reap: a QEMU that is gone ends the guest's run (or restarts it, for a hard
 * reboot), and takes swtpm with it; a swtpm that is gone alone stops QEMU. */
static void guest_check_children(struct guest *g) {
        bool qemu_gone = g->qemu.pid && g->qemu.exited;

        if (g->done)
                return;
        /* while the guest is received, its children are the incoming migration's */
        if ((qemu_gone || (g->swtpm.pid && g->swtpm.exited)) && migrate_in_child_exited(g, qemu_gone)) {
                qmp_watch(g);
                return;
        }
        if (g->qemu.pid && g->qemu.exited)
                on_qemu_exit(g);
        else if (g->swtpm.pid && g->swtpm.exited)
                on_swtpm_exit(g);
        qmp_watch(g);
}

/* The guest did not power off within the stop timeout: quit. */
static void on_stop_timer(struct evloop_source *s, void *userdata) {
        struct guest *g = userdata;
        vmsup_error *err = NULL;

        (void) s;
        if (!g->qemu.pid || g->qemu.exited)
                return;
        if (!g->qmp) {
                qemu_stop_by_signal(g, false);
                return;
        }
        log_info("the guest did not power off within the stop timeout; telling QEMU to quit");
        stop_note(g, "the guest did not power off within the stop timeout: QEMU was told to quit");
        if (qmp_client_execute_async(g->qmp, "quit", NULL, -1, 5000, on_quit_reply, g, &err) < 0)
                err = vmsup_error_free(err);
        evloop_timer_set(g->kill_timer, monotonic_ms() + QEMU_QUIT_TIMEOUT);
        g->force_pending = true;
        qmp_watch(g);
}

/* QEMU did not exit within the quit (or SIGTERM) grace: SIGKILL. */
static void on_kill_timer(struct evloop_source *s, void *userdata) {
        struct guest *g = userdata;
        char why[64];

        (void) s;
        if (!g->qemu.pid || g->qemu.exited)
                return;
        snprintf(why, sizeof(why), "QEMU did not exit within %d s", QEMU_QUIT_TIMEOUT / 1000);
        qemu_sigkill(g, why);
}

/* During a migration: reap, and remember a stop request for when it is over. */
void guest_drain_signals(struct guest *g) {
        struct signalfd_siginfo si;

        while (read(g->sigfd, &si, sizeof(si)) == sizeof(si)) {
                if (si.ssi_signo == SIGCHLD)
                        guest_reap_all(g);
                else if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT) {
                        if (g->migration_committed)
                                log_info("SIG%s during the migration, after the destination was told to run the "
                                         "guest: the migration finishes first",
                                         sigabbrev_np((int) si.ssi_signo));
                        else
                                log_info("SIG%s during the migration: it is cancelled, then the guest stops",
                                         sigabbrev_np((int) si.ssi_signo));
                        if (!g->interrupted)
                                g->interrupt_signo = (int) si.ssi_signo;
                        g->interrupted = true;
                }
        }
}

void guest_dispatch_sync(struct guest *g) {
        vmsup_error *err = NULL;
        int r;

        fd_reserve_release(g);
        r = tpm_sync_dispatch(g->sync, &err);
        fd_reserve_fill(g);
        /* a failure leaves the newest state live; the next write or the stop tries again */
        if (r < 0) {
                log_error("sealing the TPM state failed: %s", err->msg);
                vmsup_error_free(err);
        } else
                log_debug("TPM state sealed (%u writes so far)", tpm_sync_sealed_count(g->sync));
}

static void on_signal(struct evloop_source *s, const struct signalfd_siginfo *si, void *userdata) {
        struct guest *g = userdata;

        (void) s;
        switch (si->ssi_signo) {
        case SIGCHLD:
                /* QEMU's and swtpm's exits come on their pidfds; this reaps the rest */
                guest_reap_all(g);
                break;
        case SIGTERM:
        case SIGINT:
                if (migrate_in_active(g) && g->state != GUEST_RUNNING) {
                        /* before COMMIT the incoming migration is abandoned; after, the
                         * guest stops once it runs here */
                        if (!migrate_in_cancel(g, "interrupted by a signal")) {
                                log_info("SIG%s during the migration, after the destination was told to run the "
                                         "guest: the migration finishes first",
                                         sigabbrev_np((int) si->ssi_signo));
                                if (!g->interrupted)
                                        g->interrupt_signo = (int) si->ssi_signo;
                                g->interrupted = true;
                        }
                } else if (g->state == GUEST_STOPPING) {
                        log_info("%s again: stopping at once", sigabbrev_np((int) si->ssi_signo));
                        guest_begin_stop(g, 0, true, false);
                } else if (g->state == GUEST_RUNNING) {
                        log_info("SIG%s: stopping the guest (up to %u s for it to power off)",
                                 sigabbrev_np((int) si->ssi_signo), g->cfg->supervisor.stop_timeout);
                        guest_begin_stop(g, g->cfg->supervisor.stop_timeout, false, false);
                }
                break;
        default:
                break;
        }
}

/* accept() failed for lack of a free fd. Level-triggered epoll would wake us again at
 * once for the same waiting client, for ever (a core spinning, a log line each time): an
 * fd from the reserve takes the waiting clients only to tell them why, then the listen
 * fd is not watched until accept_timer, CONTROL_ACCEPT_BACKOFF_MS later. One log line
 * per episode. */
static void accept_starved(struct guest *g, const vmsup_error *err) {
        vmsup_error *lerr = NULL;
        char msg[160];

        if (!g->accept_starved)
                log_warning("%s; control clients are refused until file descriptors are free again (%zu control "
                            "connections open)",
                            err->msg, control_conn_count());
        g->accept_starved = true;
        snprintf(msg, sizeof(msg), "the supervisor is out of file descriptors (%s); try again later",
                 strerror(err->errnum));
        closep(&g->fd_reserve[0]);
        g->fd_reserve[0] = -1;
        for (int i = 0; i < CONTROL_MAX_CLIENTS && control_accept_refuse(g->listen_fd, VMSUP_EX_TEMPFAIL, msg) > 0; i++)
                ;
        fd_reserve_fill(g);
        if (evloop_io_set_events(g->listen_src, 0, &lerr) < 0) {
                log_error("the control socket: %s", lerr->msg);
                vmsup_error_free(lerr);
        }
        evloop_timer_set(g->accept_timer, monotonic_ms() + CONTROL_ACCEPT_BACKOFF_MS);
}

/* The back-off is over: watch the listen fd again. */
static void accept_resume(struct guest *g) {
        vmsup_error *err = NULL;

        evloop_timer_set(g->accept_timer, -1);
        if (evloop_io_set_events(g->listen_src, EPOLLIN, &err) < 0) {
                log_error("the control socket: %s", err->msg);
                vmsup_error_free(err);
        }
}

static void on_accept_timer(struct evloop_source *s, void *userdata) {
        (void) s;
        accept_resume(userdata);
}

bool guest_control_listening(const struct guest *g) {
        return g->listen_fd >= 0 && evloop_timer_deadline(g->accept_timer) < 0;
}

static void on_listen(struct evloop_source *s, int fd, uint32_t revents, void *userdata) {
        (void) s;
        (void) fd;
        (void) revents;
        guest_accept_conn(userdata);
}

static struct control_conn *conn_of(struct guest *g, const struct evloop_source *s) {
        for (struct control_conn *c = g->conns; c; c = c->next)
                if (c->io_src == s || c->timer_src == s)
                        return c;
        return NULL;
}

static void on_conn_io(struct evloop_source *s, int fd, uint32_t revents, void *userdata) {
        struct guest *g = userdata;
        struct control_conn *c = conn_of(g, s);

        (void) fd;
        (void) revents;
        if (!c)
                return;
        guest_handle_conn(g, c);
        qmp_watch(g); /* a request may have queued a command (or, a migration, dispatched some) */
}

/* Take c off the clients reading their request, and off the loop. */
static void conn_unlink(struct guest *g, struct control_conn *c) {
        for (struct control_conn **pp = &g->conns; *pp; pp = &(*pp)->next)
                if (*pp == c) {
                        *pp = c->next;
                        break;
                }
        c->next = NULL;
        c->io_src = evloop_source_remove(c->io_src);
        c->timer_src = evloop_source_remove(c->timer_src);
}

/* A client that connects and says nothing (or half a request) holds an fd: not for long. */
static void conn_expire(struct guest *g, struct control_conn *c) {
        char msg[96];

        conn_unlink(g, c);
        snprintf(msg, sizeof(msg), "no whole request within %d s: closed", CONTROL_REQUEST_TIMEOUT_MS / 1000);
        control_conn_reply_error(c, VMSUP_EX_TEMPFAIL, msg);
        control_conn_free(c);
}

static void on_conn_timer(struct evloop_source *s, void *userdata) {
        struct guest *g = userdata;
        struct control_conn *c = conn_of(g, s);

        if (c)
                conn_expire(g, c);
}

void guest_accept_conn(struct guest *g) {
        vmsup_error *err = NULL;
        struct control_conn *c;

        if (!guest_control_listening(g))
                return;
        c = control_accept(g->listen_fd, &err);
        if (err) {
                if (err->errnum == EMFILE || err->errnum == ENFILE)
                        accept_starved(g, err);
                else
                        log_warning("%s", err->msg);
                vmsup_error_free(err);
        }
        if (!c)
                return;
        g->accept_starved = false;
        if (control_conn_count() > CONTROL_MAX_CLIENTS) {
                char msg[128];

                snprintf(msg, sizeof(msg), "too many control connections (%d open); try again later",
                         CONTROL_MAX_CLIENTS);
                control_conn_reply_error(c, VMSUP_EX_TEMPFAIL, msg);
                control_conn_free(c);
                return;
        }
        c->deadline = monotonic_ms() + CONTROL_REQUEST_TIMEOUT_MS;
        if (evloop_add_io(g->loop, c->fd, EPOLLIN, on_conn_io, g, &c->io_src, &err) < 0 ||
            evloop_add_timer(g->loop, c->deadline, on_conn_timer, g, &c->timer_src, &err) < 0) {
                log_warning("control client: %s", err->msg);
                vmsup_error_free(err);
                control_conn_free(c);
                return;
        }
        c->next = g->conns;
        g->conns = c;
}

/* For a migration's own wait, which has no timers: what the loop's timers would do. */
void guest_control_expire(struct guest *g) {
        long now = monotonic_ms(), resume = evloop_timer_deadline(g->accept_timer);
        struct control_conn *c = g->conns;

        if (resume >= 0 && now >= resume)
                accept_resume(g);
        while (c) {
                struct control_conn *next = c->next;

                if (c->deadline <= now)
                        conn_expire(g, c);
                c = next;
        }
}

void guest_handle_conn(struct guest *g, struct control_conn *c) {
        vmsup_error *err = NULL;
        int r = control_conn_read(c, &err);

        if (r == 0)
                return;
        conn_unlink(g, c);
        if (r < 0) {
                control_conn_reply_error(c, err->exit_code, err->msg);
                control_conn_free(c);
                vmsup_error_free(err);
                return;
        }
        handle_request(g, c);
}

static int event_loop(struct guest *g) {
        vmsup_error *err = NULL;
        int code;

        if (g->done)
                return g->exit_code;
        if (evloop_run(g->loop, &code, &err) < 0) {
                log_error("%s", err->msg);
                vmsup_error_free(err);
                guest_stop_children(g);
                guest_finish(g, VMSUP_EX_OSERR);
        }
        return g->exit_code;
}

/* ---- set-up and tear-down ---------------------------------------------------------- */

static int check_host_offers(struct guest *g, vmsup_error **err) {
        struct tpm_host_offer offer;

        host_config_tpm_offer(g->cfg, &offer);
        return tpm_rules_check_host(&g->tpm, &offer, err);
}

static int resolve_programs(struct guest *g, vmsup_error **err) {
        struct passwd *pw;
        struct group *gr;

        g->qemu_path = proc_find_executable(g->cfg->qemu.binary, err);
        if (!g->qemu_path)
                return -ENOENT;
        if (!g->tpm.present)
                return 0;
        g->swtpm_path = proc_find_executable(g->cfg->tpm.swtpm, err);
        if (!g->swtpm_path)
                return -ENOENT;
        g->swtpm_setup_path = proc_find_executable(g->cfg->tpm.swtpm_setup, err);
        if (!g->swtpm_setup_path)
                return -ENOENT;
        pw = getpwnam(g->cfg->tpm.swtpm_user);
        if (!pw)
                return vmsup_fail(err, VMSUP_EX_CONFIG, 0, "[tpm] swtpm_user '%s' does not exist", g->cfg->tpm.swtpm_user);
        gr = getgrnam(g->cfg->tpm.swtpm_group);
        if (!gr)
                return vmsup_fail(err, VMSUP_EX_CONFIG, 0, "[tpm] swtpm_group '%s' does not exist", g->cfg->tpm.swtpm_group);
        return 0;
}

/* The guest's own uids and gids for swtpm and QEMU (one guest's children cannot read or
 * write another guest's live TPM state, VARS or console log). */
static int resolve_ids(struct guest *g, vmsup_error **err) {
        struct confine_ids ids;
        int r = confine_guest_ids(g->cfg, g->tpm.present, g->spec.uuid, &ids, err);

        if (r < 0)
                return r;
        g->tpm_uid = ids.swtpm_uid;
        g->tpm_gid = ids.swtpm_gid;
        g->tpm_uid_private = ids.swtpm_private;
        g->qemu_uid = ids.qemu_uid;
        g->qemu_gid = ids.qemu_gid;
        memcpy(g->qemu_groups, ids.qemu_groups, sizeof(g->qemu_groups));
        g->n_qemu_groups = ids.n_qemu_groups;
        if (geteuid() == 0)
                log_debug("guest ids: swtpm %u:%u, QEMU %u:%u", (unsigned) ids.swtpm_uid, (unsigned) ids.swtpm_gid,
                          (unsigned) ids.qemu_uid, (unsigned) ids.qemu_gid);
        return 0;
}

/* vmsup never resets a TPM by itself: no sealed state for a guest whose TPM was
 * manufactured (its stamp) is lost state, refused unless the operator asked for a new
 * TPM; --new-tpm for a guest that has its state is refused too. Before any secret is
 * fetched: nothing is contacted or changed for a start that cannot go on. */
static int tpm_check_state_present(struct guest *g, bool no_sealed_state, vmsup_error **err) {
        _cleanup_free_ char *stamp = guest_dirs_stamp_read(g->dirs.tpm_stamp, err);

        if (!stamp && *err)
                return -EIO;
        if (!no_sealed_state) {
                if (g->new_tpm)
                        return vmsup_fail(err, VMSUP_EX_DATAERR, 0,
                                          "--new-tpm: the guest has sealed TPM state in '%s', which vmsup does not "
                                          "replace (to drop a TPM on purpose: 'vmsup delete', or 'vmsup resize "
                                          "--confirm-reset' to another TPM version or model)",
                                          g->dirs.state);
                return 0;
        }
        if (!stamp)
                return 0; /* a new guest: its TPM is manufactured */
        if (!g->new_tpm)
                return vmsup_fail(err, VMSUP_EX_DATAERR, 0,
                                  "the guest's TPM state is gone: '%s' holds no sealed TPM state, but the guest has a "
                                  "TPM (%s: %s); refusing to manufacture a new one, which would change its EK and "
                                  "start its NV counters again; restore the sealed state from a backup, or start with "
                                  "--new-tpm to give the guest a new TPM on purpose",
                                  g->dirs.state, GUEST_STAMP_TPM, stamp);
        log_warning("--new-tpm: the guest's TPM state is gone from %s (it had a %s); manufacturing a new TPM: its EK "
                    "changes and its NV counters start again", g->dirs.state, stamp);
        return 0;
}

/* The vTPM passphrase (Barbican), the key the state is sealed under, and the sync of
 * the live dir with the sealed files. Before the seccomp filter and before any child. */
static int tpm_open_sealed_state(struct guest *g, int token_fd, vmsup_error **err) {
        _cleanup_free_ char *manifest = NULL;
        struct vtpm_secret secret = { 0 };
        struct vtpm_secret_request req = {
                .cfg = g->cfg, .spec = &g->spec, .tpm = &g->tpm, .state_dir = g->dirs.state, .token_fd = token_fd,
                .cancel_fd = g->cancel_fd,
        };
        int r;

        if (asprintf(&manifest, "%s/%s%s", g->dirs.state, SEAL_MANIFEST_NAME, SEAL_SUFFIX) < 0)
                return vmsup_fail(err, VMSUP_EX_OSERR, ENOMEM, "sealed state");
        req.first_start = access(manifest, F_OK) < 0 && errno == ENOENT;
        r = tpm_check_state_present(g, req.first_start, err);
        if (r < 0)
                return r;
        r = vtpm_secret_obtain(&req, &secret, err);
        if (r < 0)
                return r;
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

        so.live_dir = g->dirs.live_tpm;
        so.state_dir = g->dirs.state;
        so.uuid = g->spec.uuid;
        so.version = g->tpm.version;
        so.key = g->seal_key;
        so.uid = g->tpm_uid;
        so.gid = g->tpm_gid;
        so.uid_private = g->tpm_uid_private;
        return tpm_sync_open(&so, &g->sync, err);
}

/* The loop and what it watches from the start: signals, the control socket, and the
 * timers the guest re-arms as it goes (none armed yet). */
static int setup_loop(struct guest *g, const sigset_t *mask, vmsup_error **err) {
        int r;

        if ((r = evloop_new(&g->loop, err)) < 0 ||
            (r = evloop_add_signal(g->loop, mask, on_signal, g, &g->sig_src, err)) < 0)
                return r;
        g->sigfd = evloop_source_fd(g->sig_src);
        g->listen_fd = control_listen(g->dirs.control, err);
        if (g->listen_fd < 0)
                return g->listen_fd;
        if ((r = evloop_add_io(g->loop, g->listen_fd, EPOLLIN, on_listen, g, &g->listen_src, err)) < 0 ||
            (r = evloop_add_timer(g->loop, -1, on_accept_timer, g, &g->accept_timer, err)) < 0 ||
            (r = evloop_add_timer(g->loop, -1, on_qmp_timer, g, &g->qmp_timer, err)) < 0 ||
            (r = evloop_add_timer(g->loop, -1, on_stop_timer, g, &g->stop_timer, err)) < 0 ||
            (r = evloop_add_timer(g->loop, -1, on_kill_timer, g, &g->kill_timer, err)) < 0)
                return r;
        return 0;
}

static void teardown(struct guest *g) {
        while (g->conns) {
                struct control_conn *c = g->conns;

                g->conns = c->next;
                control_conn_free(c);
        }
        answer_waiters(g, g->exit_code == 0, g->exit_code, g->exit_code == 0 ? "stopped" : "the supervisor is exiting");
        if (g->listen_fd >= 0) {
                g->listen_src = evloop_source_remove(g->listen_src);
                close(g->listen_fd);
                unlink(g->dirs.control);
        }
        if (g->dirs.pidfile && g->lock_fd >= 0)
                unlink(g->dirs.pidfile);
        /* every source goes before the fds it watches: the sync's, the children's */
        g->sync_src = evloop_source_remove(g->sync_src);
        child_forget(&g->qemu);
        child_forget(&g->swtpm);
        migrate_in_free(g); /* its sources too */
        g->loop = evloop_free(g->loop); /* with the signalfd */
        g->sigfd = -1;
        g->sync = tpm_sync_free(g->sync);
        g->tpm_stop_err = vmsup_error_free(g->tpm_stop_err);
        g->seal_key = secmem_free(g->seal_key);
        g->migration_key = secmem_free(g->migration_key);
        migrate_in_free(g);
        fd_reserve_release(g);
        closep(&g->cancel_fd);
        closep(&g->lock_fd);
        free(g->qemu_path);
        free(g->swtpm_path);
        free(g->swtpm_setup_path);
        guest_dirs_clear(&g->dirs);
        guest_spec_clear(&g->spec);
}

/* The start, from the checks on this host to the children: a guest's whole start, or
 * an incoming guest's once the source has sent it (secret, secret_id: what it sent;
 * the lock and the loop are there already). */
static int start_guest(struct guest *g, const struct guest_run_opts *opts, const sigset_t *mask, bool *state_dir_made,
                       const char *secret, const char *secret_id, vmsup_error **err) {
        int r;

        /* before anything is made or fetched: an image naming files the spec does not */
        if ((r = disk_images_check(&g->spec, err)) < 0)
                return r;
        if ((r = tpm_rules_resolve(&g->spec, &g->tpm, err)) < 0 || (r = check_host_offers(g, err)) < 0 ||
            (r = resolve_programs(g, err)) < 0)
                return r;
        /* The lock first: nothing of the guest (its dirs' owners and modes, its ids) is
         * made or changed before it is ours, so that a refused start or incoming
         * migration leaves a guest that runs here as it was. */
        if (g->lock_fd < 0) {
                g->lock_fd = guest_dirs_lock(&g->dirs, true, state_dir_made, err);
                if (g->lock_fd < 0)
                        return g->lock_fd;
        }
        /* an incoming guest must be new here; a guest handed over to another host, or half
         * received from one, must not start here */
        if ((r = g->incoming ? migrate_in_claim(g, err) : guest_dirs_check_markers(&g->dirs, err)) < 0)
                return r;
        migrate_in_mark(g, "claimed");
        if ((r = resolve_ids(g, err)) < 0 || (r = guest_dirs_prepare(&g->dirs, g->tpm_uid, g->tpm_gid, err)) < 0 ||
            (r = guest_dirs_write_pid(&g->dirs, err)) < 0)
                return r;
        {
                const char *text = NULL;
                json_object *copy = json_object_from_file(opts->spec_path);

                text = copy ? json_object_to_json_string_ext(copy, JSON_C_TO_STRING_PRETTY) : NULL;
                r = text ? write_file_atomic(g->dirs.spec_copy, text, strlen(text), 0600, err) : 0;
                json_object_put(copy);
                if (r < 0)
                        return r;
        }
        if (streq(g->spec.firmware_type, "uefi")) {
                bool created;

                if ((r = guest_dirs_ensure_vars(&g->dirs, g->cfg->qemu.ovmf_vars, opts->new_vars, &created, err)) < 0)
                        return r;
                if (created && !g->incoming)
                        log_info("OVMF VARS %s from the template %s%s", g->dirs.vars, g->cfg->qemu.ovmf_vars,
                                 opts->new_vars ? " (--new-vars)" : "");
        }
        if (g->tpm.present && (r = g->incoming ? migrate_in_secret(g, secret, secret_id, err)
                                               : tpm_open_sealed_state(g, opts->token_fd, err)) < 0)
                return r;
        migrate_in_mark(g, "secret kept, files ready");
        if (!g->loop) {
                if ((r = start_check_cancel(g, err)) < 0 || (r = setup_loop(g, mask, err)) < 0)
                        return r;
                fd_reserve_fill(g);
        }
        /* Confinement (docs/security.md): QEMU's user gets its files; then the seccomp
         * filter, before the first child starts, so that every child runs under it too. */
        if ((r = confine_qemu_files(&g->dirs, streq(g->spec.firmware_type, "uefi"), g->qemu_uid, g->qemu_gid, err)) < 0 ||
            (r = seccomp_filter_load(g->cfg->security.seccomp, err)) < 0)
                return r;
        log_debug("seccomp filter: %s", seccomp_filter_mode_to_string(g->cfg->security.seccomp));
        migrate_in_mark(g, "confined");
        log_info("starting guest '%s' (%u vCPU, %u MiB, %s firmware, %s)", g->spec.name, g->spec.vcpus,
                 g->spec.memory_mb, g->spec.firmware_type, g->tpm.present ? "vTPM" : "no vTPM");
        if ((r = guest_start_children(g, err)) < 0) {
                if (!g->incoming)
                        guest_stop_children(g);
                return r;
        }
        return 0;
}

int guest_incoming_setup(struct guest *g, const struct guest_run_opts *opts, const char *secret,
                         const char *secret_id, vmsup_error **err) {
        return start_guest(g, opts, NULL, NULL, secret, secret_id, err);
}

/* `run --incoming` up to the source: the guest's lock (another supervisor's is not an
 * error yet: the source that comes hears it), what an earlier incoming migration left,
 * the loop with signals and the control socket (`status` answers from now on), and the
 * destination listening on the loop. */
static int start_incoming(struct guest *g, const struct guest_run_opts *opts, const sigset_t *mask,
                          bool *state_dir_made, bool *run_dir_made, vmsup_error **err) {
        vmsup_error *lock_err = NULL;
        int r;

        g->lock_fd = guest_dirs_lock(&g->dirs, true, state_dir_made, &lock_err);
        if (g->lock_fd >= 0) {
                if ((r = migrate_in_clear_leftovers(g, err)) < 0)
                        return r;
                *run_dir_made = access(g->dirs.run, F_OK) < 0;
                if ((r = mkdir_parents(g->dirs.run, 0711, err)) < 0 || (r = setup_loop(g, mask, err)) < 0)
                        return r;
        } else {
                /* the guest is another supervisor's: its control socket is not ours */
                if ((r = evloop_new(&g->loop, err)) < 0 ||
                    (r = evloop_add_signal(g->loop, mask, on_signal, g, &g->sig_src, err)) < 0 ||
                    (r = evloop_add_timer(g->loop, -1, on_qmp_timer, g, &g->qmp_timer, err)) < 0 ||
                    (r = evloop_add_timer(g->loop, -1, on_stop_timer, g, &g->stop_timer, err)) < 0 ||
                    (r = evloop_add_timer(g->loop, -1, on_kill_timer, g, &g->kill_timer, err)) < 0) {
                        vmsup_error_free(lock_err);
                        return r;
                }
                g->sigfd = evloop_source_fd(g->sig_src);
        }
        fd_reserve_fill(g);
        /* the loop's signal source takes SIGTERM and SIGINT from here on */
        closep(&g->cancel_fd);
        return migrate_in_start(g, opts, lock_err, err);
}

int guest_run(const struct guest_run_opts *opts) {
        struct guest g = { .cfg = opts->cfg, .lock_fd = -1, .sigfd = -1, .listen_fd = -1,
                           .qemu = { .name = "QEMU", .pidfd = -1 }, .swtpm = { .name = "swtpm", .pidfd = -1 },
                           .tpm_ctrl_fd = -1, .new_tpm = opts->new_tpm, .cancel_fd = -1 };
        vmsup_error *err = NULL;
        sigset_t mask, stop;
        char signame[16];
        bool state_dir_made = false, run_dir_made = false;
        int r, code;

        for (int i = 0; i < FD_RESERVE; i++)
                g.fd_reserve[i] = -1;

        sigemptyset(&mask);
        sigaddset(&mask, SIGCHLD);
        sigaddset(&mask, SIGTERM);
        sigaddset(&mask, SIGINT);
        sigaddset(&mask, SIGHUP);
        sigaddset(&mask, SIGPIPE);
        sigprocmask(SIG_BLOCK, &mask, NULL);
        /* From here on a stop request is seen at once, before any network call: the
         * start's blocking steps watch this fd and give up when it is readable. */
        sigemptyset(&stop);
        sigaddset(&stop, SIGTERM);
        sigaddset(&stop, SIGINT);
        g.cancel_fd = signalfd(-1, &stop, SFD_CLOEXEC | SFD_NONBLOCK);
        if (g.cancel_fd < 0) {
                r = vmsup_fail(&err, VMSUP_EX_OSERR, errno, "signalfd");
                goto fail;
        }
        /* swtpm_setup orphans a swtpm and waits until it is reaped: be the one who reaps. */
        prctl(PR_SET_CHILD_SUBREAPER, 1);

        /* an incoming guest runs from this host's spec too; the source's must match it */
        g.incoming = opts->incoming_port != NULL;
        if ((r = guest_spec_load(opts->spec_path, &g.spec, &err)) < 0 ||
            (r = spec_match_host_dirs(&g.spec, g.cfg, opts->spec_path, &err)) < 0 ||
            (r = guest_dirs_init(&g.dirs, g.cfg, g.spec.uuid, &err)) < 0) /* its paths only */
                goto fail;
        log_set_guest(g.spec.uuid);
        if (g.incoming) {
                /* the loop runs from the start: the destination receives the guest on it
                 * (migrate_in.c), and the guest, once it runs here, goes on on it */
                if ((r = start_incoming(&g, opts, &mask, &state_dir_made, &run_dir_made, &err)) < 0)
                        goto fail;
                code = event_loop(&g);
                err = migrate_in_take_error(&g);
                if (err) {
                        r = -1;
                        goto fail;
                }
        } else {
                if ((r = start_guest(&g, opts, &mask, &state_dir_made, NULL, NULL, &err)) < 0)
                        goto fail;
                /* started: from now on SIGTERM stops the guest (handle_signal) */
                closep(&g.cancel_fd);
                g.cancel_fd = -1;
                code = event_loop(&g);
        }
        guest_stop_children(&g);
        if (code == 0 && g.tpm_stop_err)
                code = g.tpm_stop_err->exit_code; /* logged by tpm_stop */
        guest_reap_all(&g);
        teardown(&g);
        return code;

fail:
        if (g.incoming)
                migrate_in_abort(&g, err); /* stops what runs, removes what it made */
        /* a state dir made only to take the lock (the start was refused before anything
         * went into it) goes again; one with files in it stays; so does a run dir made
         * for the control socket of an incoming migration that never claimed the guest */
        if (run_dir_made && g.listen_fd >= 0) {
                g.listen_src = evloop_source_remove(g.listen_src);
                closep(&g.listen_fd);
                unlink(g.dirs.control);
                (void) rmdir(g.dirs.run);
        }
        if (state_dir_made && g.lock_fd >= 0)
                (void) rmdir(g.dirs.state);
        if (start_abandoned(&g, err, signame, sizeof(signame))) {
                /* on request: nothing runs, nothing is half written; the start can be tried again */
                log_info("start abandoned: %s (%s)", signame, err->msg);
                code = VMSUP_EX_TEMPFAIL;
        } else
                code = log_error_exit(err);
        vmsup_error_free(err);
        guest_reap_all(&g);
        teardown(&g);
        return code;
}
