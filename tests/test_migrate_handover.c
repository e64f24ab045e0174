/* Live migrations whose outcome the source cannot know (docs/migration.md, vmsup(8)
 * MIGRATION), on two hosts (tests/twohostfix.c) with a man in the middle of the
 * supervisors' channel (tests/migrelay.c, in host b on port 49153) that drops or holds
 * the destination's RUNNING. Whatever happens, and after the operator's procedure,
 * exactly one host can run the guest, and its TPM (NV counter, EK) goes on there. */
#include "config.h"

#include <criterion/criterion.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/util.h"
#include "tests/helpers.h"
#include "tests/twohostfix.h"

TestSuite(handover, .init = th_setup, .fini = th_teardown, .timeout = 900);

/* Host h's QEMU holds the guest paused (status answers, and not "running"). */
static void assert_paused(int h) {
        const char *args[] = { "status", UUID, NULL };

        cr_assert_eq(th_run(h, "status", args), 0, "[%s] status on %c: %s", th_step, 'a' + h, th_err("status"));
        cr_assert(strstr(th_out("status"), "qemu status:  ") && !strstr(th_out("status"), "qemu status:  running"),
                  "[%s] the guest runs on host %c:\n%s\n%s", th_step, 'a' + h, th_out("status"), th_logs());
}

/* No supervisor of the guest on host h. */
static void assert_not_running(int h) {
        const char *args[] = { "status", UUID, NULL };

        cr_assert_eq(th_run(h, "status", args), 69, "[%s] host %c: %s\n%s", th_step, 'a' + h, th_out("status"),
                     th_logs());
}

/* A migration through the relay that drops b's RUNNING and closes both sides: b runs the
 * guest, a cannot know it. */
static pid_t lose_running(void) {
        const char *drop[] = { "--drop", "b2a:RUNNING", NULL };
        pid_t relay, mig, in;

        in = th_incoming(1, "in-b");
        relay = th_relay_start(drop);
        mig = th_migrate_via_relay("mig");
        cr_assert_eq(th_wait_exit(mig), 75, "%s\n%s", th_err("mig"), th_slurp(th_path("%s/relay.err", th_root)));
        cr_assert(strstr(th_err("mig"), "outcome unknown"), "%s", th_err("mig"));
        cr_assert(strstr(th_slurp(th_path("%s/relay.err", th_root)), "dropped b2a RUNNING"), "%s",
                  th_slurp(th_path("%s/relay.err", th_root)));
        th_wait_exit(relay);
        th_assert_running(1);
        return in;
}

/* `vmsup ARGS` on host h must be refused with exit code want; one that starts the guest
 * instead is stopped, and the test fails. */
static void assert_refused(int h, const char *name, const char *const *args, int want, const char *text) {
        pid_t pid = th_start(h, name, NULL, args);
        long deadline = monotonic_ms() + 60000;
        int status;

        while (waitpid(pid, &status, WNOHANG) == 0) {
                if (monotonic_ms() > deadline) {
                        kill(pid, SIGTERM);
                        th_wait_exit(pid);
                        cr_assert_fail("[%s] '%s' on host %c was not refused: it runs the guest\n%s", th_step, args[0],
                                       'a' + h, th_err(name));
                }
                poll(NULL, 0, 50);
        }
        cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == want, "[%s] '%s' on host %c: status %d, wanted %d\n%s",
                  th_step, args[0], 'a' + h, status, want, th_err(name));
        cr_assert(strstr(th_err(name), text), "[%s] %s", th_step, th_err(name));
}

/* Item 1: the source stays paused and marked, whatever is tried on it; item 2, outcome
 * "the destination runs it": the source's copy is discarded, b's is resolved and runs on. */
Test(handover, running_lost_the_destination_keeps_it) {
        const char *reboot[] = { "reboot", UUID, NULL }, *hard[] = { "reboot", "--hard", UUID, NULL },
                   *status[] = { "status", UUID, NULL }, *stop[] = { "stop", "--force", UUID, NULL },
                   *del[] = { "delete", UUID, NULL },
                   *keep[] = { "resolve", UUID, "--keep", NULL },
                   *cont[] = { "qmp", UUID, "cont", NULL },
                   *hmp_cont[] = { "qmp", UUID, "human-monitor-command", "{\"command-line\": \"cont\"}", NULL },
                   *hmp_c[] = { "qmp", UUID, "human-monitor-command", "{\"command-line\": \"c\"}", NULL };
        const char *run[] = { "run", strdup(th_path("%s/guest.json", th_root)), NULL };
        char ek[256];
        long c1;
        pid_t sup_a, sup_b, relay;

        sup_a = th_boot_on_a();
        c1 = atol(th_console_last(0, "nv-counter="));
        snprintf(ek, sizeof(ek), "%s", th_console_last(0, "ek="));

        th_step = "RUNNING dropped";
        sup_b = lose_running();
        assert_paused(0);
        cr_assert_eq(th_run(0, "status", status), 0);
        cr_assert(strstr(th_out("status"), "migrated out: to "), "%s", th_out("status"));
        /* b runs it, unconfirmed: its copy stays marked */
        th_wait_text(th_path("%s/in-b.err", th_root), "the hand-over is unconfirmed", 1, 30000);
        cr_assert_eq(th_run(1, "status", status), 0);
        cr_assert(strstr(th_out("status"), "incoming:     committed from "), "%s", th_out("status"));

        /* nothing on a can run it: */
        th_step = "retry to b";
        cr_assert_eq(th_migrate(0, "mig"), 75, "%s", th_err("mig"));
        cr_assert(strstr(th_err("mig"), "outcome is unknown"), "%s", th_err("mig"));
        assert_paused(0);
        th_step = "retry through the relay";
        {
                const char *none[] = { NULL };

                relay = th_relay_start(none);
                cr_assert_eq(th_wait_exit(th_migrate_via_relay("mig")), 75, "%s", th_err("mig"));
                kill(relay, SIGTERM);
                th_wait_exit(relay);
        }
        assert_paused(0);
        th_step = "cont";
        cr_assert_neq(th_run(0, "qmp", cont), 0, "%s", th_out("qmp"));
        assert_paused(0);
        cr_assert_neq(th_run(0, "qmp", hmp_cont), 0, "%s", th_out("qmp"));
        assert_paused(0);
        cr_assert_neq(th_run(0, "qmp", hmp_c), 0, "%s", th_out("qmp"));
        assert_paused(0);
        th_step = "reboot";
        cr_assert_eq(th_run(0, "reboot", hard), 75, "%s", th_err("reboot"));
        assert_paused(0);
        cr_assert_eq(th_run(0, "reboot", reboot), 75, "%s", th_err("reboot"));
        assert_paused(0);
        th_step = "stop and run";
        cr_assert_eq(th_run(0, "stop", stop), 0, "%s", th_err("stop"));
        th_wait_exit(sup_a);
        assert_refused(0, "run-a2", run, 65, "handed over to another host");
        assert_not_running(0);
        cr_assert(strstr(th_out("status"), "migrated out: to "), "%s", th_out("status"));
        th_assert_running(1);

        /* the procedure, outcome "b runs it": discard a's copy, keep b's */
        th_step = "discard a";
        cr_assert_eq(th_run(0, "del", del), 0, "%s", th_err("del"));
        cr_assert(strstr(th_err("del"), "its Barbican secret is kept"), "%s", th_err("del"));
        th_assert_gone(0);
        th_step = "b stopped unresolved";
        cr_assert_eq(th_run(1, "stop", stop), 0, "%s", th_err("stop"));
        th_wait_exit(sup_b);
        assert_refused(1, "run-b", run, 65, "never confirmed");
        assert_not_running(1);
        /* status shows what it must look at, without a supervisor too */
        cr_assert(strstr(th_out("status"), "incoming:     committed from "), "%s", th_out("status"));
        th_step = "resolve b";
        cr_assert_eq(th_run(1, "resolve", keep), 0, "%s", th_err("resolve"));
        cr_assert_eq(th_run(1, "resolve", keep), 65, "%s", th_err("resolve"));
        cr_assert(strstr(th_err("resolve"), "nothing to resolve"), "%s", th_err("resolve"));
        sup_b = th_start(1, "run-b", NULL, run);
        th_wait_text(th_console(1), "tpmprobe: done", 1, GUEST_BOOT_MS); /* b's console is new since the migration */
        cr_assert_eq(atol(th_console_last(1, "nv-counter=")), c1 + 1);
        cr_assert_str_eq(th_console_last(1, "ek="), ek);
        cr_assert_eq(th_run(1, "status", status), 0);
        cr_assert(!strstr(th_out("status"), "incoming:"), "%s", th_out("status"));
        assert_not_running(0);
        th_assert_gone(0);
        kill(sup_b, SIGTERM);
        th_wait_exit(sup_b);
}

/* Item 2, outcome "the destination died": b's supervisor is killed after it resumed the
 * guest, while the relay holds its RUNNING; then the relay lets go of both sides. b keeps
 * its copy, marked, and refuses to start it; the procedure discards b's and keeps a's. */
Test(handover, destination_killed_after_cont_the_source_keeps_it) {
        const char *status[] = { "status", UUID, NULL }, *del[] = { "delete", UUID, NULL },
                   *keep[] = { "resolve", UUID, "--keep", NULL }, *reboot[] = { "reboot", UUID, NULL },
                   *bare[] = { "resolve", UUID, NULL };
        const char *run[] = { "run", strdup(th_path("%s/guest.json", th_root)), NULL };
        const char *hold[] = { "--hold", strdup(th_path("b2a:RUNNING:%s/release", th_root)), NULL };
        char ek[256];
        long c1, deadline;
        pid_t sup_a, in, relay, mig;
        struct stat st;

        sup_a = th_boot_on_a();
        c1 = atol(th_console_last(0, "nv-counter="));
        snprintf(ek, sizeof(ek), "%s", th_console_last(0, "ek="));

        th_step = "b killed after cont";
        in = th_incoming(1, "in-b");
        relay = th_relay_start(hold);
        mig = th_migrate_via_relay("mig");
        th_wait_text(th_path("%s/relay.err", th_root), "holding b2a RUNNING", 1, 120000);
        kill(in, SIGKILL);
        th_wait_exit(in);
        /* b's QEMU and swtpm end with their supervisor (their death signal) */
        deadline = monotonic_ms() + 30000;
        while (test_count_processes(th_path("%s/b/", th_root), false) > 0) {
                cr_assert_lt(monotonic_ms(), deadline, "b's QEMU or swtpm outlived their supervisor\n%s", th_logs());
                poll(NULL, 0, 50);
        }
        th_sh("echo drop > %s/release.tmp && mv %s/release.tmp %s/release", th_root, th_root, th_root);
        cr_assert_eq(th_wait_exit(mig), 75, "%s", th_err("mig"));
        cr_assert(strstr(th_err("mig"), "outcome unknown"), "%s", th_err("mig"));
        th_wait_exit(relay);

        /* b keeps its copy (it may be the only one) and refuses to start it */
        th_step = "b refuses";
        cr_assert_eq(stat(th_path("%s/b/state/" UUID "/guest.json", th_root), &st), 0, "b's copy is gone\n%s",
                     th_logs());
        cr_assert_eq(stat(th_path("%s/b/state/secrets/" UUID, th_root), &st), 0, "b's secret is gone\n%s", th_logs());
        assert_refused(1, "run-b", run, 65, "never confirmed");
        assert_not_running(1);
        /* status shows what it must look at, without a supervisor too */
        cr_assert(strstr(th_out("status"), "incoming:     committed from "), "%s", th_out("status"));
        cr_assert_eq(test_count_processes(th_path("%s/b/", th_root), false), 0);
        /* a is paused and marked */
        assert_paused(0);
        cr_assert_eq(th_run(0, "status", status), 0);
        cr_assert(strstr(th_out("status"), "migrated out: to "), "%s", th_out("status"));

        /* the procedure, outcome "b's supervisor died": discard b's copy, keep a's */
        th_step = "discard b";
        cr_assert_eq(th_run(1, "del", del), 0, "%s", th_err("del"));
        cr_assert(strstr(th_err("del"), "its Barbican secret is kept"), "%s", th_err("del"));
        th_assert_gone(1);
        th_step = "resolve a";
        cr_assert_eq(th_run(0, "resolve", bare), 64, "%s", th_err("resolve"));
        cr_assert_eq(th_run(0, "resolve", keep), 0, "%s", th_err("resolve"));
        th_assert_running(0);
        cr_assert_eq(th_run(0, "status", status), 0);
        cr_assert(!strstr(th_out("status"), "migrated out:"), "%s", th_out("status"));
        cr_assert_eq(th_run(0, "resolve", keep), 65, "%s", th_err("resolve"));
        cr_assert(strstr(th_err("resolve"), "nothing to resolve"), "%s", th_err("resolve"));
        cr_assert_eq(th_run(0, "reboot", reboot), 0, "%s", th_err("reboot"));
        th_wait_text(th_console(0), "tpmprobe: done", 2, GUEST_BOOT_MS);
        cr_assert_eq(atol(th_console_last(0, "nv-counter=")), c1 + 1);
        cr_assert_str_eq(th_console_last(0, "ek="), ek);
        th_assert_gone(1);
        kill(sup_a, SIGTERM);
        th_wait_exit(sup_a);
}
