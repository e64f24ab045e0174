#include "config.h"

#include <stdio.h>
#include <string.h>

#include "common/util.h"
#include "supervisor/qmppolicy.h"

/* The id vmsup gives the TPM device and its chardev (supervisor/qemuargs.c). */
#define TPM_DEVICE_ID "tpm0"
#define TPM_CHARDEV_ID "chrtpm"

/* QMP and HMP commands that copy the guest's memory and device state (its TPM's
 * included) into an image or to another QEMU, or bring an older copy back: the TPM state
 * lives sealed, with generations that only go up, and exists once; a snapshot or a
 * migration behind vmsup's back would copy it out in the clear, roll it back, or run the
 * guest twice. `vmsup migrate` is the way to move a guest. Tuning a migration
 * (migrate-set-parameters, migrate-set-capabilities) stays allowed. */
static const char *const moves_state[] = {
        /* QMP */
        "snapshot-save", "snapshot-load", "xen-save-devices-state", "xen-load-devices-state", "migrate",
        "migrate-incoming", "migrate-recover", "migrate-start-postcopy", "migrate-continue", "migrate-pause",
        "x-colo-lost-heartbeat",
        /* HMP */
        "savevm", "loadvm", "migrate_incoming", "migrate_recover", "migrate_start_postcopy", "migrate_continue",
        "migrate_pause", NULL,
};

/* Read-only: what an operator may still ask a guest that was handed over. */
static const char *const reads_only[] = { "qom-get", "qom-list", "qom-list-types", "qom-list-properties",
                                          "device-list-properties", NULL };

static bool in(const char *const *list, const char *name) {
        for (size_t i = 0; list[i]; i++)
                if (streq(list[i], name))
                        return true;
        return false;
}

static const char *str_arg(json_object *args, const char *key) {
        json_object *v;

        return args && json_object_object_get_ex(args, key, &v) && json_object_is_type(v, json_type_string)
                       ? json_object_get_string(v)
                       : NULL;
}

/* The TPM device, by its id or its QOM path. */
static bool is_tpm_device(const char *id) {
        return id && (streq(id, TPM_DEVICE_ID) || streq(id, "/machine/peripheral/" TPM_DEVICE_ID));
}

/* A NIC's device (supervisor/qemuargs.h: netN), by its id or its QOM path. */
static bool is_nic_device(const char *id) {
        unsigned n;
        char tail;

        if (id && strncmp(id, "/machine/peripheral/", 20) == 0)
                id += 20;
        return id && sscanf(id, "net%u%c", &n, &tail) == 1;
}

static enum qmp_policy check(const char *name, const char *arg1, bool hmp, bool handed_over, char *why,
                             size_t why_len) {
        const char *how = hmp ? "HMP command" : "QMP command";

        if (in(moves_state, name)) {
                snprintf(why, why_len,
                         "%s '%s' is refused: it would copy the guest's state, its TPM's too, into an image or to "
                         "another QEMU, or put an older copy back, outside vmsup's sealed TPM state (to move a guest, "
                         "use 'vmsup migrate')",
                         how, name);
                return QMP_POLICY_REFUSED;
        }
        if ((streq(name, "device_del") && is_tpm_device(arg1)) ||
            ((streq(name, "chardev-remove") || streq(name, "chardev_remove")) && arg1 && streq(arg1, TPM_CHARDEV_ID))) {
                snprintf(why, why_len,
                         "%s '%s %s' is refused: the guest's vTPM cannot be removed from a running guest (QEMU "
                         "aborts, and the TPM state would be left half shut down)",
                         how, name, arg1);
                return QMP_POLICY_REFUSED;
        }
        /* the NICs are the spec's (nics.c): a change here would be lost at the next hard
         * reboot or migration, and a netdev of QEMU's own would be a network vmsup never set up */
        if (streq(name, "netdev_add") || streq(name, "netdev_del") ||
            (streq(name, "device_del") && is_nic_device(arg1))) {
                snprintf(why, why_len,
                         "%s '%s%s%s' is refused: the guest's NICs change with 'vmsup nic add' and 'vmsup nic "
                         "remove', which keep its spec copy right",
                         how, name, arg1 ? " " : "", arg1 ? arg1 : "");
                return QMP_POLICY_REFUSED;
        }
        if (!handed_over)
                return QMP_POLICY_ALLOW;
        if (hmp ? streq(name, "info") : (strncmp(name, "query-", 6) == 0 || in(reads_only, name)))
                return QMP_POLICY_ALLOW;
        snprintf(why, why_len,
                 "%s '%s' is refused: the guest was handed over to another host by a live migration whose outcome "
                 "is unknown (its migrated-out marker), and may run there; until that is resolved only read-only "
                 "commands (query-*, qom-get, qom-list, HMP info) reach it here (vmsup(8), MIGRATION)",
                 how, name);
        return QMP_POLICY_HANDED_OVER;
}

enum qmp_policy qmp_policy_check(const char *command, json_object *args, bool handed_over, char *why, size_t why_len) {
        const char *line;
        char name[64] = "", arg1[256] = "";

        why[0] = '\0';
        if (!streq(command, "human-monitor-command"))
                return check(command, str_arg(args, "id"), false, handed_over, why, why_len);
        /* HMP: "NAME [ARGS]"; QEMU splits on blanks, and device_del's and
         * chardev-remove's one argument is the id. */
        line = str_arg(args, "command-line");
        if (!line)
                return QMP_POLICY_ALLOW; /* QEMU refuses it */
        if (sscanf(line, " %63s %255s", name, arg1) < 1)
                return QMP_POLICY_ALLOW; /* an empty line does nothing */
        return check(name, arg1[0] ? arg1 : NULL, true, handed_over, why, why_len);
}
