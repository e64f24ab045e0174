/* supervisor/qmppolicy.c: what the QMP passthrough lets through, decided by what a
 * command can do, for QMP and HMP alike. */
#include "config.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "supervisor/qmppolicy.h"

static enum qmp_policy verdict(const char *cmd, const char *args_json, bool handed_over, char *why, size_t len) {
        json_object *args = args_json ? json_tokener_parse(args_json) : NULL;
        enum qmp_policy v;

        cr_assert(!args_json || args, "bad test JSON %s", args_json);
        v = qmp_policy_check(cmd, args, handed_over, why, len);
        json_object_put(args);
        return v;
}

static enum qmp_policy hmp(const char *line, bool handed_over) {
        char args[256], why[512];

        snprintf(args, sizeof(args), "{\"command-line\": \"%s\"}", line);
        return verdict("human-monitor-command", args, handed_over, why, sizeof(why));
}

Test(qmppolicy, snapshots_of_the_guests_state_are_always_refused) {
        static const char *const qmp[] = { "snapshot-save", "snapshot-load", "xen-save-devices-state",
                                           "xen-load-devices-state", NULL };
        static const char *const hmp_lines[] = { "savevm s1", "  loadvm s1", "savevm", NULL };
        char why[512];

        for (size_t i = 0; qmp[i]; i++) {
                cr_expect_eq(verdict(qmp[i], "{}", false, why, sizeof(why)), QMP_POLICY_REFUSED, "%s", qmp[i]);
                cr_expect(strstr(why, "older copy back"), "%s: %s", qmp[i], why);
        }
        for (size_t i = 0; hmp_lines[i]; i++)
                cr_expect_eq(hmp(hmp_lines[i], false), QMP_POLICY_REFUSED, "%s", hmp_lines[i]);
        /* a snapshot's name is not a command */
        cr_expect_eq(hmp("info snapshots", false), QMP_POLICY_ALLOW);
}

Test(qmppolicy, migrations_behind_vmsups_back_are_refused) {
        static const char *const qmp[] = { "migrate", "migrate-incoming", "migrate-recover", "migrate-start-postcopy",
                                           "migrate-pause", "migrate-continue", NULL };
        static const char *const hmp_lines[] = { "migrate tcp:192.0.2.1:4444", "migrate -d exec:cat>/tmp/x",
                                                 "migrate_incoming tcp:0:4444", "migrate_start_postcopy", NULL };
        char why[512];

        for (size_t i = 0; qmp[i]; i++) {
                cr_expect_eq(verdict(qmp[i], "{\"uri\": \"tcp:192.0.2.1:4444\"}", false, why, sizeof(why)),
                             QMP_POLICY_REFUSED, "%s", qmp[i]);
                cr_expect(strstr(why, "vmsup migrate"), "%s: %s", qmp[i], why);
        }
        for (size_t i = 0; hmp_lines[i]; i++)
                cr_expect_eq(hmp(hmp_lines[i], false), QMP_POLICY_REFUSED, "%s", hmp_lines[i]);
        /* tuning and watching a migration is not making one */
        cr_expect_eq(verdict("migrate-set-parameters", "{\"max-bandwidth\": 1}", false, why, sizeof(why)),
                     QMP_POLICY_ALLOW);
        cr_expect_eq(verdict("migrate-set-capabilities", "{\"capabilities\": []}", false, why, sizeof(why)),
                     QMP_POLICY_ALLOW);
        cr_expect_eq(verdict("query-migrate", NULL, false, why, sizeof(why)), QMP_POLICY_ALLOW);
        cr_expect_eq(hmp("info migrate", false), QMP_POLICY_ALLOW);
}

Test(qmppolicy, the_tpm_cannot_be_removed) {
        char why[512];

        cr_expect_eq(verdict("device_del", "{\"id\": \"tpm0\"}", false, why, sizeof(why)), QMP_POLICY_REFUSED);
        cr_expect(strstr(why, "'device_del tpm0'"), "%s", why);
        cr_expect_eq(verdict("device_del", "{\"id\": \"/machine/peripheral/tpm0\"}", false, why, sizeof(why)),
                     QMP_POLICY_REFUSED);
        cr_expect_eq(verdict("chardev-remove", "{\"id\": \"chrtpm\"}", false, why, sizeof(why)), QMP_POLICY_REFUSED);
        cr_expect_eq(hmp("device_del tpm0", false), QMP_POLICY_REFUSED);
        cr_expect_eq(hmp("chardev-remove chrtpm", false), QMP_POLICY_REFUSED);
        /* other devices come and go as QEMU allows */
        cr_expect_eq(verdict("device_del", "{\"id\": \"virtio-disk0\"}", false, why, sizeof(why)), QMP_POLICY_ALLOW);
        cr_expect_eq(hmp("device_del video0", false), QMP_POLICY_ALLOW);
}

/* The NICs change only through vmsup nic, which records them in the spec copy. */
Test(qmppolicy, nics_change_only_through_vmsup_nic) {
        char why[512];

        cr_expect_eq(verdict("device_del", "{\"id\": \"net1\"}", false, why, sizeof(why)), QMP_POLICY_REFUSED);
        cr_expect(strstr(why, "'device_del net1' is refused") && strstr(why, "vmsup nic remove"), "%s", why);
        cr_expect_eq(verdict("device_del", "{\"id\": \"/machine/peripheral/net0\"}", false, why, sizeof(why)),
                     QMP_POLICY_REFUSED);
        cr_expect_eq(verdict("netdev_add", "{\"type\": \"user\", \"id\": \"u\"}", false, why, sizeof(why)),
                     QMP_POLICY_REFUSED);
        cr_expect_eq(verdict("netdev_del", "{\"id\": \"hostnet0\"}", false, why, sizeof(why)), QMP_POLICY_REFUSED);
        cr_expect_eq(hmp("device_del net0", false), QMP_POLICY_REFUSED);
        cr_expect_eq(hmp("netdev_add user,id=u", false), QMP_POLICY_REFUSED);
        cr_expect_eq(verdict("device_del", "{\"id\": \"network\"}", false, why, sizeof(why)), QMP_POLICY_ALLOW);
}

Test(qmppolicy, a_running_guest_takes_everything_else) {
        char why[512];

        cr_expect_eq(verdict("cont", NULL, false, why, sizeof(why)), QMP_POLICY_ALLOW);
        cr_expect_eq(verdict("system_reset", NULL, false, why, sizeof(why)), QMP_POLICY_ALLOW);
        cr_expect_eq(verdict("query-status", NULL, false, why, sizeof(why)), QMP_POLICY_ALLOW);
        cr_expect_eq(hmp("c", false), QMP_POLICY_ALLOW);
        cr_expect_eq(hmp("info status", false), QMP_POLICY_ALLOW);
        cr_expect_eq(verdict("human-monitor-command", "{}", false, why, sizeof(why)), QMP_POLICY_ALLOW);
        cr_expect_eq(why[0], '\0');
}

Test(qmppolicy, a_handed_over_guest_takes_read_only_commands_only) {
        static const char *const writes[] = { "cont", "system_reset", "system_wakeup", "stop", "quit", "x-exit-preconfig",
                                              "qom-set", "device_add", "set_link", "inject-nmi", NULL };
        static const char *const hmp_writes[] = { "c", "cont", "system_reset", "q", "qom-set x y 1", "nmi",
                                                  NULL };
        char why[512];

        for (size_t i = 0; writes[i]; i++) {
                cr_expect_eq(verdict(writes[i], "{}", true, why, sizeof(why)), QMP_POLICY_HANDED_OVER, "%s", writes[i]);
                cr_expect(strstr(why, "handed over to another host"), "%s", why);
        }
        for (size_t i = 0; hmp_writes[i]; i++)
                cr_expect_neq(hmp(hmp_writes[i], true), QMP_POLICY_ALLOW, "'%s'", hmp_writes[i]);
        cr_expect_eq(verdict("query-status", NULL, true, why, sizeof(why)), QMP_POLICY_ALLOW);
        cr_expect_eq(verdict("query-migrate", NULL, true, why, sizeof(why)), QMP_POLICY_ALLOW);
        cr_expect_eq(verdict("qom-get", "{\"path\": \"/machine\", \"property\": \"type\"}", true, why, sizeof(why)),
                     QMP_POLICY_ALLOW);
        cr_expect_eq(hmp("info status", true), QMP_POLICY_ALLOW);
        cr_expect_eq(hmp("  info migrate", true), QMP_POLICY_ALLOW);
        /* still refused for what it is, not for the marker */
        cr_expect_eq(verdict("snapshot-load", "{}", true, why, sizeof(why)), QMP_POLICY_REFUSED);
        cr_expect_eq(verdict("migrate", "{}", true, why, sizeof(why)), QMP_POLICY_REFUSED);
        cr_expect_eq(verdict("migrate-set-parameters", "{}", true, why, sizeof(why)), QMP_POLICY_HANDED_OVER);
}
