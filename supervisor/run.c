#include "config.h"

/* guest_run(): set a guest up (spec, host checks, lock, ids, dirs, secret, loop,
 * confinement), start it, run the event loop, and tear everything down. */

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/log.h"
#include "common/proc.h"
#include "common/secmem.h"
#include "common/util.h"
#include "crypto/kdf.h"
#include "crypto/seal.h"
#include "nova/tpmrules.h"
#include "seccomp/filter.h"
#include "supervisor/confine.h"
#include "supervisor/control.h"
#include "supervisor/diskimages.h"
#include "supervisor/guest.h"
#include "supervisor/guestdirs.h"
#include "supervisor/specmatch.h"
#include "supervisor/tpmexport.h"
#include "secrets/vtpmsecret.h"
#include "tpmstate/sync.h"

#include "supervisor/guest_internal.h"

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

static int event_loop(struct guest *g) {
        vmsup_error *err = NULL;
        int code;

        if (g->done)
                return g->end_kind;
        if (evloop_run(g->loop, &code, &err) < 0) {
                log_error("%s", err->msg);
                vmsup_error_free(err);
                guest_stop_children(g);
                guest_finish(g, VMSUP_ERR_SYSTEM);
        }
        return g->end_kind;
}

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
                return vmsup_fail(err, VMSUP_ERR_CONFIG, 0, "[tpm] swtpm_user '%s' does not exist", g->cfg->tpm.swtpm_user);
        gr = getgrnam(g->cfg->tpm.swtpm_group);
        if (!gr)
                return vmsup_fail(err, VMSUP_ERR_CONFIG, 0, "[tpm] swtpm_group '%s' does not exist", g->cfg->tpm.swtpm_group);
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
                        return vmsup_fail(err, VMSUP_ERR_DATA, 0,
                                          "--new-tpm: the guest has sealed TPM state in '%s', which vmsup does not "
                                          "replace (to drop a TPM on purpose: 'vmsup delete', or 'vmsup resize "
                                          "--confirm-reset' to another TPM version or model)",
                                          g->dirs.state);
                return 0;
        }
        if (!stamp)
                return 0; /* a new guest: its TPM is manufactured */
        if (!g->new_tpm)
                return vmsup_fail(err, VMSUP_ERR_DATA, 0,
                                  "the guest's TPM state is gone: '%s' holds no sealed TPM state, but the guest has a "
                                  "TPM (%s: %s); refusing to manufacture a new one, which would change its EK and "
                                  "start its NV counters again; restore the sealed state from a backup, or start with "
                                  "--new-tpm to give the guest a new TPM on purpose",
                                  g->dirs.state, GUEST_STAMP_TPM, stamp);
        log_warning("--new-tpm: the guest's TPM state is gone from %s (it had a %s); manufacturing a new TPM: its EK "
                    "changes and its NV counters start again", g->dirs.state, stamp);
        return 0;
}

/* The vTPM passphrase (Barbican or the local store) is asked for here, from a forked
 * child, before the seccomp filter and before any other child; the start goes on (QEMU
 * comes up meanwhile) and takes the answer where the TPM's state is needed
 * (guest_tpm_secret_finish(), children.c). */
static int tpm_ask_secret(struct guest *g, int token_fd, vmsup_error **err) {
        _cleanup_free_ char *manifest = NULL;
        struct vtpm_secret_opts opts;
        struct vtpm_secret_request req = {
                .opts = &opts, .spec = &g->spec, .tpm = &g->tpm, .state_dir = g->dirs.state, .token_fd = token_fd,
                .cancel_fd = g->cancel_fd,
        };
        int r;

        host_config_vtpm_secret_opts(g->cfg, &opts);
        /* an import a crash interrupted: completed when committed, else dropped */
        r = tpm_import_finish(&g->dirs, err);
        if (r < 0)
                return r;
        if (asprintf(&manifest, "%s/%s%s", g->dirs.state, SEAL_MANIFEST_NAME, SEAL_SUFFIX) < 0)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "sealed state");
        req.first_start = access(manifest, F_OK) < 0 && errno == ENOENT;
        r = tpm_check_state_present(g, req.first_start, err);
        if (r < 0)
                return r;
        /* user mode: the owner's credential is read here, once: for the secret, then for
         * the keeper that records the anchor at the stop (docs/vmsup.8, TPM STATE) */
        if (token_fd >= 0 && g->tpm.secret_security == SECRET_SECURITY_USER) {
                struct vtpm_anchor_request areq = { .opts = &opts, .spec = &g->spec, .tpm = &g->tpm };

                r = vtpm_read_token(token_fd, &g->token, &g->token_len, err);
                if (r < 0)
                        return r;
                req.token = g->token;
                req.token_len = g->token_len;
                /* the token stays for the stop's anchor, in a child of its own, forked
                 * before the passphrase is here: the supervisor holds no credential while
                 * the guest runs, the keeper nothing but the token (docs/security.md) */
                areq.token = g->token;
                areq.token_len = g->token_len;
                r = vtpm_anchor_keeper_start(&areq, &g->anchor_keeper, err);
                if (r < 0)
                        return r;
        }
        r = vtpm_secret_obtain_start(&req, &g->secret_pending, err);
        g->token = secmem_free(g->token); /* the asking child has its own copy */
        return r;
}

/* The loop, and what it watches from the start: signals, the control socket, the
 * timers the guest re-arms as it goes (none armed yet). */
static int setup_loop(struct guest *g, const sigset_t *mask, vmsup_error **err) {
        int r = guest_loop_open(g, mask, err);

        return r < 0 ? r : guest_control_open(g, err);
}

/* The start, from the checks on this host to the children: a guest's whole start, or
 * an incoming guest's once the source has sent it (secret, secret_id: what it sent;
 * the lock and the loop are there already). token_fd (NULL for an incoming guest) is
 * closed once the secret is read. */
static int start_guest(struct guest *g, const struct guest_run_opts *opts, const sigset_t *mask, bool *state_dir_made,
                       int *token_fd, const char *secret, const char *secret_id, vmsup_error **err) {
        int r;

        /* before anything is made or fetched: an image naming files the spec does not */
        if ((r = disk_images_check(&g->spec, err)) < 0)
                return r;
        if ((r = tpm_rules_resolve(&g->spec, &g->tpm, err)) < 0 || (r = check_host_offers(g, err)) < 0 ||
            (r = resolve_programs(g, err)) < 0)
                return r;
        guest_step(g, "host checked");
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
        /* a tap that is not there, or another guest's: refused before anything is made
         * or fetched (an incoming migration's, before anything moves) */
        if ((r = guest_nics_open(g, err)) < 0)
                return r;
        if ((r = resolve_ids(g, err)) < 0 || (r = guest_dirs_prepare(&g->dirs, g->tpm_uid, g->tpm_gid, err)) < 0 ||
            (r = guest_dirs_write_pid(&g->dirs, err)) < 0)
                return r;
        {
                const char *text = NULL;
                json_object *copy = json_object_from_file(opts->spec_path);

                /* the NICs the guest has (an incoming guest's are the source's: nics.c) */
                if (copy && guest_nics_spec_copy(g, copy) < 0) {
                        json_object_put(copy);
                        return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "the guest's spec copy");
                }
                text = copy ? json_object_to_json_string_ext(copy, JSON_C_TO_STRING_PRETTY) : NULL;
                r = text ? replace_file(g->dirs.spec_copy, text, strlen(text), 0600, err) : 0; /* at every start */
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
        guest_step(g, "locked, files ready");
        if (g->tpm.present && (r = g->incoming ? migrate_in_secret(g, secret, secret_id, err)
                                               : tpm_ask_secret(g, token_fd ? *token_fd : -1, err)) < 0)
                return r;
        guest_step(g, "secret asked");
        if (token_fd)
                closep(token_fd);
        migrate_in_mark(g, "secret kept, files ready");
        if (!g->loop) {
                if ((r = guest_start_check_cancel(g, err)) < 0 || (r = setup_loop(g, mask, err)) < 0)
                        return r;
                guest_fd_reserve_fill(g);
        }
        /* Confinement (docs/security.md): QEMU's user gets its files; then the seccomp
         * filter, before the first child starts, so that every child runs under it too. */
        if ((r = confine_qemu_files(&g->dirs, streq(g->spec.firmware_type, "uefi"), g->qemu_uid, g->qemu_gid, err)) < 0 ||
            (r = seccomp_filter_load(g->cfg->security.seccomp, err)) < 0)
                return r;
        log_debug("seccomp filter: %s", seccomp_filter_mode_to_string(g->cfg->security.seccomp));
        guest_step(g, "confined");
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

/* migrate_in.c's setup, once the source has sent the guest (guest_setup_fn) */
static int incoming_setup(struct guest *g, const struct guest_run_opts *opts, const char *secret,
                          const char *secret_id, vmsup_error **err) {
        return start_guest(g, opts, NULL, NULL, NULL, secret, secret_id, err);
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
        } else if ((r = guest_loop_open(g, mask, err)) < 0) {
                /* the guest is another supervisor's: its control socket is not ours */
                vmsup_error_free(lock_err);
                return r;
        }
        guest_fd_reserve_fill(g);
        /* the loop's signal source takes SIGTERM and SIGINT from here on */
        closep(&g->cancel_fd);
        return migrate_in_start(g, opts, lock_err, incoming_setup, err);
}

static void teardown(struct guest *g) {
        while (g->conns) {
                struct control_conn *c = g->conns;

                g->conns = c->next;
                control_conn_free(c);
        }
        guest_answer_waiters(g, g->end_kind == 0, g->end_kind, g->end_kind == 0 ? "stopped" : "the supervisor is exiting");
        if (g->listen_fd >= 0) {
                g->listen_src = evloop_source_remove(g->listen_src);
                close(g->listen_fd);
                unlink(g->dirs.control);
        }
        if (g->dirs.pidfile && g->lock_fd >= 0)
                unlink(g->dirs.pidfile);
        /* every source goes before the fds it watches: a migration's, the sync's, the children's */
        migrate_out_free(g);
        migrate_in_free(g); /* its sources too */
        guest_logs_free(g);
        g->sync_src = evloop_source_remove(g->sync_src);
        guest_vnc_close(g);
        guest_nics_close(g, true);
        guest_child_forget(&g->qemu);
        guest_child_forget(&g->swtpm);
        g->events = events_free(g->events); /* the last lines, if they fit now */
        guest_anchor_settle(g); /* its source goes before the loop */
        g->loop = evloop_free(g->loop); /* with the signalfd */
        g->sync = tpm_sync_free(g->sync);
        g->tpm_stop_err = vmsup_error_free(g->tpm_stop_err);
        g->seal_key = secmem_free(g->seal_key);
        g->token = secmem_free(g->token);
        g->anchor_keeper = vtpm_anchor_keeper_free(g->anchor_keeper);
        g->secret_pending = vtpm_secret_pending_free(g->secret_pending);
        g->migration_key = secmem_free(g->migration_key);
        guest_fd_reserve_release(g);
        closep(&g->cancel_fd);
        guest_notify_close(g);
        closep(&g->lock_fd);
        free(g->qemu_path);
        free(g->swtpm_path);
        free(g->swtpm_setup_path);
        guest_dirs_clear(&g->dirs);
        guest_spec_clear(&g->spec);
}

int guest_run(const struct guest_run_opts *opts) {
        struct guest g = { .cfg = opts->cfg, .lock_fd = -1, .listen_fd = -1,
                           .qemu = { .name = "QEMU", .pidfd = -1 }, .swtpm = { .name = "swtpm", .pidfd = -1 },
                           .tpm_ctrl_fd = -1, .new_tpm = opts->new_tpm, .cancel_fd = -1,
                           .start_migration = migrate_out, .ready_fd = -1 };
        vmsup_error *err = NULL;
        sigset_t mask, stop;
        char signame[16];
        bool state_dir_made = false, run_dir_made = false;
        _cleanup_close_ int token_fd = opts->token_fd; /* ours: closed once the secret is read */
        int r, code;

        g.steps_t0 = monotonic_us();
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
                r = vmsup_fail(&err, VMSUP_ERR_SYSTEM, errno, "signalfd");
                goto fail;
        }
        /* the service manager's socket (then gone from the environment, before any child) */
        if ((r = guest_notify_open(&g, opts->ready_fd, &err)) < 0)
                goto fail;
        /* swtpm_setup orphans a swtpm and waits until it is reaped: be the one who reaps. */
        prctl(PR_SET_CHILD_SUBREAPER, 1);

        /* an incoming guest runs from this host's spec too; the source's must match it */
        g.incoming = opts->incoming_port != NULL;
        if ((r = guest_spec_load(opts->spec_path, &g.spec, &err)) < 0 ||
            (r = spec_match_host_dirs(&g.spec, g.cfg, opts->spec_path, &err)) < 0 ||
            (r = guest_dirs_init(&g.dirs, g.cfg, g.spec.uuid, &err)) < 0) /* its paths only */
                goto fail;
        log_set_guest(g.spec.uuid);
        guest_step(&g, "spec read");
        if (g.incoming)
                guest_notify_status(&g, "incoming: waiting for guest '%s' from the source on port %s", g.spec.name,
                                    opts->incoming_port);
        else
                guest_notify_status(&g, "starting guest '%s'", g.spec.name);
        if (g.incoming) {
                /* the loop runs from the start: the destination receives the guest on it
                 * (migrate_in.c), and the guest, once it runs here, goes on on it */
                closep(&token_fd); /* an incoming guest's secret comes from the source */
                if ((r = start_incoming(&g, opts, &mask, &state_dir_made, &run_dir_made, &err)) < 0)
                        goto fail;
                code = event_loop(&g);
                err = migrate_in_take_error(&g);
                if (err) {
                        r = -1;
                        goto fail;
                }
        } else {
                if ((r = start_guest(&g, opts, &mask, &state_dir_made, &token_fd, NULL, NULL, &err)) < 0)
                        goto fail;
                /* started: from now on SIGTERM stops the guest (the loop's signal source) */
                closep(&g.cancel_fd);
                g.cancel_fd = -1;
                code = event_loop(&g);
        }
        guest_stop_children(&g);
        if (code == 0 && g.tpm_stop_err)
                code = g.tpm_stop_err->kind; /* logged by guest_tpm_stop */
        guest_reap_all(&g);
        /* the guest is down and its state sealed: the anchor (Barbican's, in user and
         * deployment mode) catches up before the supervisor exits */
        guest_anchor_catch_up(&g, GUEST_ANCHOR_STOP);
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
                g.listen_fd = -1;
                unlink(g.dirs.control);
                (void) rmdir(g.dirs.run);
        }
        if (state_dir_made && g.lock_fd >= 0)
                (void) rmdir(g.dirs.state);
        if (start_abandoned(&g, err, signame, sizeof(signame))) {
                /* on request: nothing runs, nothing is half written; the start can be tried again */
                log_info("start abandoned: %s (%s)", signame, err->msg);
                code = VMSUP_ERR_BUSY;
        } else
                code = log_error_exit(err);
        vmsup_error_free(err);
        /* the process asking for the secret, if it still does: ended and reaped by its own
         * pid, before the reaping below could take that pid from it */
        g.secret_pending = vtpm_secret_pending_free(g.secret_pending);
        guest_reap_all(&g);
        teardown(&g);
        return code;
}
