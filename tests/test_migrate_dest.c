/* The destination's supervisor serves control requests during the whole incoming
 * migration (issue 15): `vmsup status` answers "incoming" with the phase and the source,
 * `vmsup list` agrees, other requests are refused (75), and `stop` before COMMIT abandons
 * the incoming migration cleanly: the guest stays on the source, nothing stays here. Two
 * hosts in network namespaces (tests/twohostfix.c); the relay between the supervisors
 * (tests/migrelay.c) holds the destination's PREPARED so that the test can look. */
#include "config.h"

#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/util.h"
#include "tests/helpers.h"
#include "tests/twohostfix.h"

TestSuite(migrate_dest, .init = th_setup, .fini = th_teardown, .timeout = 900);

/* `vmsup status UUID` on host h: exit 0 and its output */
static const char *status_of(int h) {
        const char *args[] = { "status", UUID, NULL };
        int rc = th_run(h, "status", args);

        cr_assert_eq(rc, 0, "[%s] status on host %c: %d: %s\n%s", th_step, 'a' + h, rc, th_err("status"), th_logs());
        return th_out("status");
}

static void assert_has(const char *text, const char *needle) {
        cr_assert(strstr(text, needle), "[%s] '%s' not in:\n%s", th_step, needle, text);
}

/* the relay holds b's PREPARED until ROOT/release says what to do with it (or SIGUSR1) */
static pid_t relay_holding_prepared(void) {
        const char *hold[] = { "--hold", strdup(th_path("b2a:PREPARED:%s/release", th_root)), NULL };

        return th_relay_start(hold);
}

Test(migrate_dest, status_and_requests_during_an_incoming_migration) {
        const char *list[] = { "list", NULL }, *qmp[] = { "qmp", UUID, "query-status", NULL },
                   *reboot[] = { "reboot", UUID, NULL };
        char ek[256];
        long c1;
        pid_t sup, in, relay, mig;
        const char *st;
        int rc;

        sup = th_boot_on_a();
        c1 = atol(th_console_last(0, "nv-counter="));
        snprintf(ek, sizeof(ek), "%s", th_console_last(0, "ek="));

        /* before the source comes */
        th_step = "waiting";
        in = th_incoming(1, "in-b");
        st = status_of(1);
        assert_has(st, "state:        incoming");
        assert_has(st, "migration:    incoming, waiting for the source");
        cr_assert_eq(th_run(1, "list", list), 0, "%s", th_err("list"));
        assert_has(th_out("list"), "incoming");

        /* the source has come; b's PREPARED is held: b holds the guest paused and sealed */
        th_step = "prepared sent";
        relay = relay_holding_prepared();
        mig = th_migrate_via_relay("mig");
        th_wait_text(th_path("%s/relay.err", th_root), "holding b2a PREPARED", 1, 120000);
        st = status_of(1);
        assert_has(st, "state:        incoming");
        assert_has(st, "migration:    incoming from ");
        assert_has(st, ", prepared sent");
        cr_assert_eq(th_run(1, "list", list), 0, "%s", th_err("list"));
        assert_has(th_out("list"), "incoming");
        /* other requests wait, as on a migrating source */
        rc = th_run(1, "qmp", qmp);
        cr_assert_eq(rc, 75, "[%s] qmp on b: %d: %s", th_step, rc, th_err("qmp"));
        assert_has(th_err("qmp"), "the guest is being received from ");
        rc = th_run(1, "reboot", reboot);
        cr_assert_eq(rc, 75, "[%s] reboot on b: %d: %s", th_step, rc, th_err("reboot"));

        /* let PREPARED through: the guest goes to b as usual */
        th_step = "released";
        cr_assert_eq(kill(relay, SIGUSR1), 0);
        rc = th_wait_exit(mig);
        cr_assert_eq(rc, 0, "[%s] migrate: %d: %s\n%s", th_step, rc, th_err("mig"), th_logs());
        th_reap(sup, 0);
        th_wait_exit(relay);
        th_assert_running(1);
        st = status_of(1);
        assert_has(st, "state:        running");
        cr_assert(!strstr(st, "migration:"), "%s", st);
        /* and its TPM goes on there */
        {
                const char *rb[] = { "reboot", UUID, NULL };

                cr_assert_eq(th_run(1, "reboot", rb), 0, "%s", th_err("reboot"));
                th_wait_text(th_console(1), "tpmprobe: done", 1, GUEST_BOOT_MS);
                cr_assert_eq(atol(th_console_last(1, "nv-counter=")), c1 + 1);
                cr_assert_str_eq(th_console_last(1, "ek="), ek);
        }
        kill(in, SIGTERM);
        th_reap(in, 0);
}

/* `vmsup stop` on the destination before COMMIT: the incoming migration is abandoned, the
 * source keeps (and resumes) its guest, nothing of the guest stays on b. */
Test(migrate_dest, stop_before_commit_abandons_the_incoming_migration) {
        const char *stop[] = { "stop", UUID, NULL };
        pid_t sup, in, relay, mig;
        int rc;

        sup = th_boot_on_a();
        th_step = "stop on b";
        in = th_incoming(1, "in-b");
        relay = relay_holding_prepared();
        mig = th_migrate_via_relay("mig");
        th_wait_text(th_path("%s/relay.err", th_root), "holding b2a PREPARED", 1, 120000);
        rc = th_run(1, "stop", stop);
        cr_assert_eq(rc, 0, "[%s] stop on b: %d: %s\n%s", th_step, rc, th_err("stop"), th_logs());
        rc = th_wait_exit(in);
        cr_assert_eq(rc, 75, "[%s] b's supervisor: %d\n%s", th_step, rc, th_logs());
        assert_has(th_err("in-b"), "interrupted by a stop request");
        /* the source hears b's ABORT, or b's hang-up, behind the held PREPARED */
        kill(relay, SIGUSR2);
        rc = th_wait_exit(mig);
        cr_assert_neq(rc, 0, "[%s] the migration succeeded: %s", th_step, th_err("mig"));
        th_wait_exit(relay);
        th_assert_gone(1);
        th_assert_running(0);
        kill(sup, SIGTERM);
        th_reap(sup, 0);
}
