/* SIGTERM (or SIGINT) to the source's supervisor during a live migration (the fixture:
 * tests/twohostfix.c). Before COMMIT it cancels at once: ABORT to the destination, which
 * keeps nothing, and the guest stays on the source, which then stops it as SIGTERM asks
 * (its TPM state sealed: it starts again with its NV counter and EK). After COMMIT the
 * migration finishes. The relay between the supervisors (tests/migrelay) holds one of the
 * destination's answers, so that the signal comes while the source waits for it. */
#include "config.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/util.h"
#include "migrate/migchan.h"
#include "tests/helpers.h"
#include "tests/twohostfix.h"

TestSuite(migrate_signal, .init = th_setup, .fini = th_teardown, .timeout = 1200);

/* The relay holds the destination's answer of this type until SIGUSR1 (NULL: none). */
static pid_t relay_holding(const char *type) {
        const char *hold[] = { "--hold", type ? strdup(th_path("b2a:%s:%s/release", type, th_root)) : NULL, NULL };

        return th_relay_start(type ? hold : hold + 2);
}

static void relay_end(pid_t relay) {
        kill(relay, SIGKILL);
        th_wait_exit(relay);
}

/* the guest again on a from its sealed state (host mode: the local secret), the n-th
 * boot on a's console */
static pid_t restart_on_a(const char *name, int n) {
        const char *args[] = { "run", strdup(th_path("%s/guest.json", th_root)), NULL };
        pid_t pid = th_start(0, name, NULL, args);

        th_wait_text(th_console(0), "tpmprobe: done", n, GUEST_BOOT_MS);
        return pid;
}

/* sig (SIGTERM or SIGINT) to a's supervisor once `ready` shows in file; then: the
 * migration cancelled (not timed out), b rolled back and empty, a's guest stopped
 * normally with its state. */
static void signal_cancels(int sig, pid_t sup, pid_t in, pid_t mig, pid_t relay, const char *file,
                           const char *ready) {
        char want[128];
        int rc;

        th_wait_text(file, ready, 1, 60000);
        cr_assert_eq(kill(sup, sig), 0);
        rc = th_wait_exit(mig);
        cr_assert_eq(rc, 75, "[%s] vmsup migrate: %d: %s\n%s", th_step, rc, th_err("mig"), th_logs());
        snprintf(want, sizeof(want), "cancelled: the source's supervisor got SIG%s; the guest stays on the source",
                 sigabbrev_np(sig));
        cr_assert(strstr(th_err("mig"), want), "[%s] %s\n%s", th_step, th_err("mig"), th_logs());
        cr_assert(!strstr(th_err("mig"), "no answer"), "[%s] %s", th_step, th_err("mig"));
        /* the source stops the guest as SIGTERM asks: normally, its TPM state sealed */
        rc = th_wait_exit(sup);
        cr_assert_eq(rc, 0, "[%s] a's supervisor: %d\n%s", th_step, rc, th_logs());
        cr_assert_neq(th_wait_exit(in), 0);
        cr_assert(strstr(th_slurp(th_path("%s/relay.err", th_root)), "a2b ABORT"), "[%s] relay: %s", th_step,
                  th_slurp(th_path("%s/relay.err", th_root)));
        relay_end(relay);
        th_assert_gone(1);
        cr_assert_eq(test_count_processes(th_path("%s/a/", th_root), false), 0, "[%s] a still runs QEMU or swtpm\n%s",
                     th_step, th_logs());
}

Test(migrate_signal, sigterm_before_commit_cancels_and_the_guest_stays) {
        char ek[256];
        long c1;
        pid_t sup, in, mig, relay;

        sup = th_boot_on_a();
        c1 = atol(th_console_last(0, "nv-counter="));
        snprintf(ek, sizeof(ek), "%s", th_console_last(0, "ek="));

        /* while the source waits for READY (b prepared, its answer held) */
        th_step = "SIGTERM waiting for READY";
        in = th_incoming(1, "in-b");
        relay = relay_holding("READY");
        mig = th_migrate_via_relay("mig");
        signal_cancels(SIGTERM, sup, in, mig, relay, th_path("%s/relay.err", th_root), "holding b2a READY");
        sup = restart_on_a("run-a2", 2);
        cr_assert_eq(atol(th_console_last(0, "nv-counter=")), c1 + 1);
        cr_assert_str_eq(th_console_last(0, "ek="), ek);

        /* while QEMU streams (slowed down: the signal comes mid-way); SIGINT as SIGTERM */
        th_step = "SIGINT while QEMU streams";
        {
                const char *bw[] = { "qmp", UUID, "migrate-set-parameters", "{\"max-bandwidth\": 8388608}", NULL };

                cr_assert_eq(th_run(0, "bw", bw), 0, "%s", th_err("bw"));
        }
        in = th_incoming(1, "in-b");
        relay = relay_holding(NULL);
        mig = th_migrate_via_relay("mig");
        signal_cancels(SIGINT, sup, in, mig, relay, th_path("%s/mig.err", th_root), "% ");
        sup = restart_on_a("run-a3", 3);
        cr_assert_eq(atol(th_console_last(0, "nv-counter=")), c1 + 2);
        cr_assert_str_eq(th_console_last(0, "ek="), ek);

        /* while the source waits for PREPARED (QEMU completed: the guest is paused here,
         * b has it paused with its TPM state sealed) */
        th_step = "SIGTERM waiting for PREPARED";
        in = th_incoming(1, "in-b");
        relay = relay_holding("PREPARED");
        mig = th_migrate_via_relay("mig");
        signal_cancels(SIGTERM, sup, in, mig, relay, th_path("%s/relay.err", th_root), "holding b2a PREPARED");
        cr_assert(strstr(th_slurp(th_path("%s/run-a3.err", th_root)), "the guest runs here again"), "%s",
                  th_slurp(th_path("%s/run-a3.err", th_root)));
        sup = restart_on_a("run-a4", 4);
        cr_assert_eq(atol(th_console_last(0, "nv-counter=")), c1 + 3);
        cr_assert_str_eq(th_console_last(0, "ek="), ek);
        th_assert_running(0);
        th_assert_gone(1);
        kill(sup, SIGTERM);
        cr_assert_eq(th_wait_exit(sup), 0);
}

Test(migrate_signal, sigterm_after_commit_lets_the_migration_finish) {
        char ek[256];
        long c1;
        pid_t sup, in, mig, relay;
        int rc;

        sup = th_boot_on_a();
        c1 = atol(th_console_last(0, "nv-counter="));
        snprintf(ek, sizeof(ek), "%s", th_console_last(0, "ek="));

        /* b runs the guest; its RUNNING is held, and the source gets SIGTERM meanwhile */
        th_step = "SIGTERM after COMMIT";
        in = th_incoming(1, "in-b");
        relay = relay_holding("RUNNING");
        mig = th_migrate_via_relay("mig");
        th_wait_text(th_path("%s/relay.err", th_root), "holding b2a RUNNING", 1, 120000);
        cr_assert_eq(kill(sup, SIGTERM), 0);
        th_wait_text(th_path("%s/run-a.err", th_root), "SIGTERM during the migration, after the destination was told "
                     "to run the guest: the migration finishes first", 1, 30000);
        cr_assert_eq(kill(relay, SIGUSR1), 0); /* RUNNING goes on to the source */
        rc = th_wait_exit(mig);
        cr_assert_eq(rc, 0, "vmsup migrate: %d: %s\n%s", rc, th_err("mig"), th_logs());
        cr_assert(strstr(th_out("mig"), "migrated to"), "%s", th_out("mig"));
        rc = th_wait_exit(sup);
        cr_assert_eq(rc, 0, "a's supervisor: %d\n%s", rc, th_logs());
        relay_end(relay);
        th_assert_gone(0);
        th_assert_running(1);

        /* the guest goes on on b, its TPM with it */
        {
                const char *reboot[] = { "reboot", UUID, NULL };

                cr_assert_eq(th_run(1, "reboot", reboot), 0, "%s", th_err("reboot"));
        }
        th_wait_text(th_console(1), "tpmprobe: done", 1, GUEST_BOOT_MS);
        cr_assert_eq(atol(th_console_last(1, "nv-counter=")), c1 + 1);
        cr_assert_str_eq(th_console_last(1, "ek="), ek);
        kill(in, SIGTERM);
        cr_assert_eq(th_wait_exit(in), 0);
}

/* A destination that takes the TCP connection and never starts TLS: the source's
 * supervisor waits in its handshake. A signal there cancels at once too, not after
 * answer_timeout. */
Test(migrate_signal, sigterm_while_the_destination_is_silent_cancels) {
        char ek[256];
        long c1;
        pid_t sup, mig, silent;
        int rc, ready[2];

        sup = th_boot_on_a();
        c1 = atol(th_console_last(0, "nv-counter="));
        snprintf(ek, sizeof(ek), "%s", th_console_last(0, "ek="));

        th_step = "SIGTERM in the TLS handshake";
        cr_assert_eq(pipe(ready), 0);
        silent = fork();
        cr_assert_geq(silent, 0);
        if (silent == 0) {
                vmsup_error *e = NULL;
                int ns = open(th_path("/run/netns/%s-b", th_prefix), O_RDONLY | O_CLOEXEC), lfd, c;

                close(ready[0]);
                if (ns < 0 || setns(ns, CLONE_NEWNET) < 0 || (lfd = migchan_listen(NULL, "49152", &e)) < 0)
                        _exit(10);
                (void) !write(ready[1], "x", 1);
                for (;;) {
                        c = accept(lfd, NULL, NULL);
                        if (c >= 0)
                                pause(); /* holds it, silent */
                }
        }
        close(ready[1]);
        {
                char x;

                cr_assert_eq(read(ready[0], &x, 1), 1, "the silent destination did not listen");
                close(ready[0]);
        }
        mig = th_start_migrate(0, "mig");
        th_wait_text(th_path("%s/mig.err", th_root), "connecting to", 1, 30000);
        /* the connection is up; the handshake waits for the silent side */
        {
                char cmd[256];
                long deadline = monotonic_ms() + 10000;

                snprintf(cmd, sizeof(cmd), "ip netns exec %s-b ss -Htn state established '( sport = :49152 )' | grep -q .",
                         th_prefix);
                while (system(cmd) != 0) {
                        cr_assert_lt(monotonic_ms(), deadline, "no connection to the silent destination\n%s", th_logs());
                        poll(NULL, 0, 20);
                }
        }
        cr_assert_eq(kill(sup, SIGTERM), 0);
        rc = th_wait_exit(mig);
        cr_assert_eq(rc, 75, "vmsup migrate: %d: %s\n%s", rc, th_err("mig"), th_logs());
        cr_assert(strstr(th_err("mig"), "cancelled: the source's supervisor got SIGTERM"), "%s", th_err("mig"));
        cr_assert(!strstr(th_err("mig"), "no answer"), "%s", th_err("mig"));
        rc = th_wait_exit(sup);
        cr_assert_eq(rc, 0, "a's supervisor: %d\n%s", rc, th_logs());
        kill(silent, SIGKILL);
        th_wait_exit(silent);
        th_assert_gone(1);

        /* the guest's TPM state was sealed on the way down: it goes on */
        {
                const char *args[] = { "run", strdup(th_path("%s/guest.json", th_root)), NULL };

                sup = th_start(0, "run-a2", NULL, args);
                th_wait_text(th_console(0), "tpmprobe: done", 2, GUEST_BOOT_MS);
        }
        cr_assert_eq(atol(th_console_last(0, "nv-counter=")), c1 + 1);
        cr_assert_str_eq(th_console_last(0, "ek="), ek);
        kill(sup, SIGTERM);
        cr_assert_eq(th_wait_exit(sup), 0);
}
