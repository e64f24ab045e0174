/* A guest's NICs through a live migration (issue 17, item 4): the destination opens taps
 * of the same names, which its orchestrator plugged first; a tap missing there fails the
 * migration before anything moves, the guest still running (and answering ping) on the
 * source; with the taps there the guest answers ping through the destination's tap, a
 * NIC hot-plugged on the source included. Two hosts in network namespaces
 * (tests/twohostfix.c), each with its own tap of the guest's network. */
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

TestSuite(migrate_net, .init = th_setup, .fini = th_teardown, .timeout = 900);

/* a tap of the guest's network on host h, as the orchestrator plugs it: the same MAC on
 * both hosts (the guest's ARP entry for 10.17.0.1 stays right after the move) */
static void plug(int h, const char *tap, const char *addr) {
        th_sh("ip -n %s-%c tuntap add dev %s mode tap vnet_hdr && ip -n %s-%c link set %s address fe:54:00:17:00:%02x"
              " && ip -n %s-%c link set %s up",
              th_prefix, 'a' + h, tap, th_prefix, 'a' + h, tap, tap[strlen(tap) - 1] == '0' ? 1 : 2, th_prefix,
              'a' + h, tap);
        if (addr)
                th_sh("ip -n %s-%c addr add %s dev %s", th_prefix, 'a' + h, addr, tap);
}

static void assert_ping(int h) {
        char *cmd = NULL;

        cr_assert_eq(access("/bin/busybox", X_OK), 0, "/bin/busybox is missing: install the Debian package busybox-static");
        cr_assert(asprintf(&cmd, "ip netns exec %s-%c /bin/busybox ping -c 10 -W 30 -w 120 10.17.0.2 >%s/ping.out 2>&1",
                           th_prefix, 'a' + h, th_root) > 0);
        cr_assert_eq(system(cmd), 0, "[%s] the guest does not answer ping through host %c's tap: %s\n--- console:\n%s",
                     th_step, 'a' + h, th_slurp(th_path("%s/ping.out", th_root)), th_slurp(th_console(h)));
        free(cmd);
}

Test(migrate_net, the_guest_answers_ping_through_the_destinations_tap_and_a_missing_tap_moves_nothing) {
        const char *add[] = { "nic", "add", UUID, "--ifname", "vm-t1", NULL };
        json_object *spec = json_object_from_file(th_path("%s/guest.json", th_root)), *fw, *cmdline;
        char *line = NULL;
        pid_t sup, in;
        int rc;

        /* the fixture's guest with a NIC on vm-t0 and its address */
        cr_assert_not_null(spec);
        cr_assert(json_object_object_get_ex(spec, "firmware", &fw) && json_object_object_get_ex(fw, "cmdline", &cmdline));
        cr_assert(asprintf(&line, "%s vmsup.net=10.17.0.2/24", json_object_get_string(cmdline)) > 0);
        json_object_object_add(fw, "cmdline", json_object_new_string(line));
        json_object_object_add(spec, "nics",
                               json_tokener_parse("[{\"ifname\": \"vm-t0\", \"mac\": \"fa:16:3e:17:00:01\"}]"));
        cr_assert_eq(json_object_to_file(th_path("%s/guest.json", th_root), spec), 0);
        json_object_put(spec);
        free(line);
        plug(0, "vm-t0", "10.17.0.1/24");
        plug(0, "vm-t1", NULL);
        plug(1, "vm-t0", "10.17.0.1/24");

        th_step = "the source";
        sup = th_boot_on_a();
        th_wait_text(th_console(0), "net: eth0 10.17.0.2/24 up", 1, GUEST_BOOT_MS);
        assert_ping(0);
        cr_assert_eq(th_run(0, "nic", add), 0, "%s\n%s", th_err("nic"), th_logs());
        th_wait_text(th_console(0), "net: eth1 appeared", 1, GUEST_BOOT_MS);

        th_step = "the hot-plugged NIC's tap is missing on the destination";
        in = th_incoming(1, "in-b");
        rc = th_migrate(0, "mig");
        cr_assert_neq(rc, 0, "[%s] the migration went ahead\n%s", th_step, th_logs());
        cr_assert(strstr(th_err("mig"), "tap 'vm-t1' does not exist"), "[%s] %s\n%s", th_step, th_err("mig"),
                  th_logs());
        cr_assert_neq(th_wait_exit(in), 0);
        th_assert_running(0);
        th_assert_gone(1);
        assert_ping(0);

        th_step = "both taps on the destination";
        plug(1, "vm-t1", NULL);
        in = th_incoming(1, "in-b2");
        cr_assert_eq(th_migrate(0, "mig2"), 0, "%s\n%s", th_err("mig2"), th_logs());
        th_reap(sup, 0);
        th_assert_gone(0);
        th_assert_running(1);
        assert_ping(1);
        cr_assert(strstr(th_slurp(th_path("%s/b/state/" UUID "/guest.json", th_root)), "vm-t1"),
                  "the destination's spec copy lost the hot-plugged NIC: %s",
                  th_slurp(th_path("%s/b/state/" UUID "/guest.json", th_root)));
        kill(in, SIGTERM);
        th_wait_exit(in);
}
