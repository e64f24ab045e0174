#include "config.h"

/* The guest's life on the event loop: its state, stop and reboot, QEMU's events, the
 * end of QEMU or swtpm, signals, and the loop's own sources. */

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/log.h"
#include "common/proc.h"
#include "common/util.h"
#include "qmp/client.h"
#include "tpmstate/sync.h"

#include "supervisor/guest_internal.h"

static const char *const state_names[] = {
        [GUEST_STARTING] = "starting", [GUEST_RUNNING] = "running", [GUEST_STOPPING] = "stopping",
        [GUEST_REBOOTING] = "rebooting", [GUEST_STOPPED] = "stopped", [GUEST_CRASHED] = "crashed",
};

const char *guest_state_name(const struct guest *g) {
        return state_names[g->state];
}

/* A QMP command's deadline: its callback gets the timeout. */
static void on_qmp_timer(struct evloop_source *s, void *userdata) {
        struct guest *g = userdata;

        (void) s;
        if (g->qmp)
                qmp_client_expire(g->qmp);
        guest_qmp_watch(g);
}

void guest_answer_waiters(struct guest *g, bool ok, enum vmsup_err_kind kind, const char *msg) {
        if (g->waiters)
                guest_stop_step(g, "answered");
        while (g->waiters) {
                struct control_conn *c = g->waiters;

                g->waiters = c->next;
                if (ok)
                        control_conn_reply_ok(c, json_object_new_string(msg));
                else
                        control_conn_reply_error(c, kind, msg);
                control_conn_free(c);
        }
}

void guest_finish(struct guest *g, enum vmsup_err_kind kind) {
        guest_notify_stopping(g, kind ? "stopped: the guest failed" : "stopped");
        g->state = GUEST_STOPPED;
        g->end_kind = kind;
        g->done = true;
        if (g->loop)
                evloop_exit(g->loop, (int) kind);
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
        guest_child_signal(&g->qemu, SIGKILL);
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
        guest_child_signal(&g->qemu, SIGTERM);
}

/* Graceful: ACPI power button, then quit when the grace time is over. */
void guest_begin_stop(struct guest *g, unsigned timeout_s, bool force, bool reboot) {
        bool again = g->stop_requested && (force || timeout_s == 0);
        vmsup_error *err = NULL;

        if (!reboot && g->state == GUEST_REBOOTING)
                g->crashed = false; /* a stop during on_crash's restart: the operator's stop */
        g->stop_requested = true;
        if (!g->stop_t0)
                g->stop_t0 = monotonic_us();
        g->state = reboot ? GUEST_REBOOTING : GUEST_STOPPING;
        if (reboot)
                guest_notify_status(g, "rebooting (hard: QEMU restarts, the TPM state is kept)");
        else
                guest_notify_stopping(g, force || timeout_s == 0 ? "stopping (forced)" : "stopping");
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
        guest_qmp_watch(g);
}

/* The guest's kernel panicked (pvpanic): QEMU paused it (-action panic=pause), and the
 * spec's on_crash decides, as libvirt's <on_crash> does. */
static void on_guest_panicked(struct guest *g) {
        const char *what = guest_on_crash_to_string(g->spec.on_crash);
        json_object *d = json_object_new_object();

        json_object_object_add(d, "on_crash", json_object_new_string(what));
        events_emit(g->events, "CRASHED", d);

        if (g->state != GUEST_RUNNING || g->migration) {
                /* a stop or a migration under way goes on with the paused guest */
                log_error("the guest crashed (kernel panic) while %s; on_crash %s is not applied", guest_state_name(g),
                          what);
                return;
        }
        switch (g->spec.on_crash) {
        case GUEST_ON_CRASH_RESTART:
                log_error("the guest crashed (kernel panic); on_crash restart: hard reboot, the TPM state is kept");
                g->crashed = true;
                guest_begin_stop(g, 0, true, true);
                break;
        case GUEST_ON_CRASH_PRESERVE:
                log_error("the guest crashed (kernel panic); on_crash preserve: QEMU keeps it paused (for a memory "
                          "dump: vmsup qmp %s dump-guest-memory ...; vmsup stop %s ends it)", g->spec.uuid,
                          g->spec.uuid);
                g->state = GUEST_CRASHED;
                /* QEMU's name for its state from here on (query-status); the STOP event that
                 * follows does not make it "paused" */
                snprintf(g->qemu_status, sizeof(g->qemu_status), "guest-panicked");
                break;
        case GUEST_ON_CRASH_DESTROY:
        default:
                log_error("the guest crashed (kernel panic); on_crash destroy: QEMU is stopped");
                g->crashed = true;
                guest_begin_stop(g, 0, true, false);
                break;
        }
}

static void on_qmp_event(void *userdata, const char *event, json_object *data, json_object *timestamp) {
        struct guest *g = userdata;
        json_object *reason;
        const char *why = data && json_object_object_get_ex(data, "reason", &reason) ? json_object_get_string(reason)
                                                                                      : NULL;

        (void) timestamp;
        if (streq(event, "SHUTDOWN")) {
                g->guest_shutdown = true;
                if (!g->stop_t0)
                        g->stop_t0 = monotonic_us(); /* the guest powered off by itself */
                if (!g->stop_requested)
                        guest_notify_stopping(g, "stopping (the guest powered off)");
                log_info("QEMU: SHUTDOWN (%s)", why ? why : "no reason given");
                guest_stop_step(g, "QEMU shutting down");
        } else if (streq(event, "GUEST_PANICKED"))
                on_guest_panicked(g);
        else if (streq(event, "RESET"))
                log_info("QEMU: guest reset (%s)", why ? why : "no reason given");
        else if (streq(event, "STOP")) {
                if (g->state != GUEST_CRASHED)
                        snprintf(g->qemu_status, sizeof(g->qemu_status), "paused");
                /* not the pause of a stop, a hard reboot or on_crash's */
                if (g->state == GUEST_RUNNING || g->state == GUEST_CRASHED)
                        events_emit_reason(g->events, "PAUSED", g->state == GUEST_CRASHED ? "crashed"
                                                                : g->migration         ? "migration"
                                                                                       : NULL);
        } else if (streq(event, "RESUME")) {
                snprintf(g->qemu_status, sizeof(g->qemu_status), "running");
                /* not the cont of the start (STARTED comes after it) */
                if (g->state == GUEST_RUNNING)
                        events_emit_reason(g->events, "RESUMED", g->migration ? "migration" : NULL);
        } else if (streq(event, "SUSPEND")) {
                if (g->state == GUEST_RUNNING)
                        events_emit(g->events, "SUSPENDED", NULL);
        } else if (streq(event, "WAKEUP")) {
                if (g->state == GUEST_RUNNING)
                        events_emit_reason(g->events, "RESUMED", "wakeup");
        } else if (streq(event, "MIGRATION")) {
                json_object *st;

                if (data && json_object_object_get_ex(data, "status", &st))
                        snprintf(g->migration_status, sizeof(g->migration_status), "%s", json_object_get_string(st));
                log_debug("QEMU: migration %s", g->migration_status);
        } else if (streq(event, "DEVICE_DELETED"))
                guest_nics_qemu_event(g, event, data);
        else
                log_debug("QEMU: event %s", event);
        if (g->migration && g->migration->qemu_event)
                g->migration->qemu_event(g, event, data);
}

static void on_qemu_exit(struct guest *g) {
        vmsup_error *err = NULL;
        int r;
        char why[64];
        bool expected = g->stop_requested || g->guest_shutdown;
        /* QEMU was made to go (quit after no power-off, SIGTERM, SIGKILL): destroyed */
        bool forced = g->force_pending || g->qemu_termed;

        proc_describe_status(g->qemu.status, why, sizeof(why));
        guest_stop_step(g, "QEMU exited");
        guest_qmp_drop(g);
        guest_child_forget(&g->qemu);
        evloop_timer_set(g->stop_timer, -1);
        evloop_timer_set(g->kill_timer, -1);
        g->force_pending = false;
        guest_tpm_stop(g);

        if (g->tpm_stop_err) {
                /* swtpm had to be killed: the stop (or reboot) did not go as it should */
                const vmsup_error *e = g->tpm_stop_err;

                if (expected)
                        log_info("guest stopped: %s (QEMU %s)%s%s; swtpm did not shut down",
                                 g->stop_requested ? "on request" : "it powered off", why, g->stop_note[0] ? ": " : "",
                                 g->stop_note);
                else
                        log_error("QEMU %s unexpectedly; the guest is gone", why);
                events_emit_reason(g->events, "STOPPED", !expected    ? "failed"
                                                         : g->crashed ? "crashed"
                                                         : forced     ? "destroyed"
                                                                      : "shutdown");
                guest_answer_waiters(g, false, e->kind, e->msg);
                guest_finish(g, e->kind);
                return;
        }
        if (g->state == GUEST_REBOOTING) {
                log_info("QEMU stopped for the hard reboot (%s); starting it again", why);
                /* a hard reboot is the end of one QEMU and the start of the next:
                 * STOPPED, then STARTED (children.c), both with the reason */
                events_emit_reason(g->events, "STOPPED", g->crashed ? "crash-restart" : "reboot");
                g->stop_requested = false;
                g->stop_t0 = 0;
                g->stop_note[0] = '\0';
                r = guest_start_children(g, &err);
                g->crashed = false;
                if (r < 0) {
                        log_error("hard reboot failed: %s", err->msg);
                        guest_answer_waiters(g, false, err->kind ? err->kind : VMSUP_ERR_FAILED, err->msg);
                        vmsup_error_free(err);
                        guest_stop_children(g);
                        guest_finish(g, VMSUP_ERR_FAILED);
                        return;
                }
                guest_answer_waiters(g, true, 0, "rebooted");
                return;
        }
        if (g->crashed) {
                log_error("guest destroyed after its crash (on_crash destroy; QEMU %s)", why);
                events_emit_reason(g->events, "STOPPED", "crashed");
                guest_answer_waiters(g, false, VMSUP_ERR_CRASHED, "the guest crashed and was destroyed");
                guest_finish(g, VMSUP_ERR_CRASHED);
                return;
        }
        if (expected) {
                char msg[640];

                log_info("guest stopped: %s (QEMU %s)%s%s", g->stop_requested ? "on request" : "it powered off", why,
                         g->stop_note[0] ? ": " : "", g->stop_note);
                snprintf(msg, sizeof(msg), "stopped%s%s", g->stop_note[0] ? ": " : "", g->stop_note);
                events_emit_reason(g->events, "STOPPED", forced ? "destroyed" : "shutdown");
                guest_answer_waiters(g, true, 0, msg);
                guest_finish(g, 0);
        } else {
                log_error("QEMU %s unexpectedly; the guest is gone", why);
                events_emit_reason(g->events, "STOPPED", "failed");
                guest_answer_waiters(g, false, VMSUP_ERR_FAILED, "QEMU ended unexpectedly");
                guest_finish(g, VMSUP_ERR_FAILED);
        }
}

static void on_swtpm_exit(struct guest *g) {
        _cleanup_free_ char *tail = guest_log_tail(g, GUEST_LOG_SWTPM, 5);
        char why[64];

        proc_describe_status(g->swtpm.status, why, sizeof(why));
        guest_stop_step(g, "swtpm exited");
        guest_child_forget(&g->swtpm);
        closep(&g->tpm_ctrl_fd);
        g->tpm_ctrl_fd = -1;
        guest_tpm_seal_and_wipe(g);
        /* QEMU shuts the TPM down (CMD_SHUTDOWN) as it exits: swtpm may go first. */
        if (g->guest_shutdown || g->stop_requested) {
                log_debug("swtpm %s as QEMU shut it down", why);
                return;
        }
        if (g->qemu.pid && !g->qemu.exited) {
                log_error("swtpm %s while the guest was running; stopping QEMU. swtpm's last log lines: %s", why, tail);
                g->stop_requested = true; /* ours, not the guest's */
                guest_qemu_kill(g);
                guest_reap_all(g);
                guest_qmp_drop(g);
                guest_child_forget(&g->qemu);
                events_emit_reason(g->events, "STOPPED", "failed");
                guest_answer_waiters(g, false, VMSUP_ERR_FAILED, "swtpm ended unexpectedly");
                guest_finish(g, VMSUP_ERR_FAILED);
        }
}

/* After any reap: a QEMU that is gone ends the guest's run (or restarts it, for a hard
 * reboot), and takes swtpm with it; a swtpm that is gone alone stops QEMU. */
void guest_check_children(struct guest *g) {
        bool qemu_gone = g->qemu.pid && g->qemu.exited;

        if (g->done)
                return;
        /* a migration that runs first: a received guest's children are the incoming
         * migration's; an outgoing one's end answers its client, then comes this */
        if ((qemu_gone || (g->swtpm.pid && g->swtpm.exited)) && g->migration && g->migration->child_exited &&
            g->migration->child_exited(g, qemu_gone)) {
                guest_qmp_watch(g);
                return;
        }
        if (g->qemu.pid && g->qemu.exited)
                on_qemu_exit(g);
        else if (g->swtpm.pid && g->swtpm.exited)
                on_swtpm_exit(g);
        guest_qmp_watch(g);
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
        guest_qmp_watch(g);
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
                if (g->migration && g->migration->signal && g->migration->signal(g, (int) si->ssi_signo))
                        break;
                if (g->state == GUEST_CRASHED) {
                        /* paused: the power button would wait out the whole timeout */
                        log_info("SIG%s: stopping the crashed guest at once", sigabbrev_np((int) si->ssi_signo));
                        guest_begin_stop(g, 0, true, false);
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

static const struct guest_life life = {
        .children_changed = guest_check_children,
        .qemu_event = on_qmp_event,
};

int guest_loop_open(struct guest *g, const sigset_t *mask, vmsup_error **err) {
        int r;

        g->life = &life;
        if ((r = evloop_new(&g->loop, err)) < 0 ||
            (r = evloop_add_signal(g->loop, mask, on_signal, g, &g->sig_src, err)) < 0)
                return r;
        if ((r = evloop_add_timer(g->loop, -1, on_qmp_timer, g, &g->qmp_timer, err)) < 0 ||
            (r = evloop_add_timer(g->loop, -1, on_stop_timer, g, &g->stop_timer, err)) < 0 ||
            (r = evloop_add_timer(g->loop, -1, on_kill_timer, g, &g->kill_timer, err)) < 0)
                return r;
        return 0;
}
