#include "config.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/util.h"
#include "nova/guestspec.h"
#include "cli/verbs.h"

/* The supervisor bounds a removal (the guest's release of the device) itself. */
#define NIC_REQUEST_TIMEOUT_MS 120000

static void help(void) {
        printf("Usage: vmsup nic add UUID --ifname TAP [--mac MAC] [--model virtio|e1000]\n"
               "                        [--queues N] [--mtu MTU]\n"
               "       vmsup nic remove UUID --mac MAC\n"
               "\n"
               "Hot-plug a NIC into a running guest, on a tap the orchestrator has plugged on\n"
               "this host, or unplug one. 'add' opens the tap (and /dev/vhost-net where there\n"
               "is one), hands it to QEMU (getfd, netdev_add, device_add) in the first free\n"
               "NIC slot, and prints the NIC; without --mac the MAC is derived from the guest\n"
               "and the slot, with Nova's fa:16:3e prefix. 'remove' asks the guest to let go\n"
               "of the device (device_del) and waits for it (60 s), then drops its tap.\n"
               "Either change is kept in the guest's spec copy: a hard reboot, an on_crash\n"
               "restart and a live migration keep it (the destination's orchestrator plugs a\n"
               "tap of the same name there first).\n"
               "\n"
               "Exit status: 0 done; 64 usage; 65 a bad value, a tap in use by the guest\n"
               "already, no free slot; 66 no NIC with that MAC; 69 the tap does not exist,\n"
               "or the guest is not running under vmsup; 75 the guest is not running, the tap\n"
               "is in use by another process, another NIC change is under way, or the guest\n"
               "did not release the NIC in time (it stays until it does).\n");
}

int verb_nic(struct vmsup_ctx *ctx, int argc, char **argv) {
        static const struct option longopts[] = { { "ifname", required_argument, NULL, 'i' },
                                                   { "mac", required_argument, NULL, 'm' },
                                                   { "model", required_argument, NULL, 'M' },
                                                   { "queues", required_argument, NULL, 'q' },
                                                   { "mtu", required_argument, NULL, 'u' },
                                                   { "help", no_argument, NULL, 'h' }, {} };
        _cleanup_error_ vmsup_error *err = NULL;
        _cleanup_json_ json_object *req = json_object_new_object(), *ret = NULL;
        const char *ifname = NULL, *mac = NULL, *model = NULL, *what, *uuid;
        unsigned long queues = 1, mtu = 0;
        char *end;
        int c;

        while ((c = getopt_long(argc, argv, "i:m:M:q:u:h", longopts, NULL)) != -1) {
                switch (c) {
                case 'i':
                        ifname = optarg;
                        break;
                case 'm':
                        mac = optarg;
                        break;
                case 'M':
                        model = optarg;
                        break;
                case 'q':
                        queues = strtoul(optarg, &end, 10);
                        if (*end || !*optarg || queues < 1 || queues > GUEST_NIC_MAX_QUEUES)
                                return verb_usage_error("nic", "--queues '%s': 1 to %d", optarg, GUEST_NIC_MAX_QUEUES);
                        break;
                case 'u':
                        mtu = strtoul(optarg, &end, 10);
                        if (*end || !*optarg || mtu < 68 || mtu > 65535)
                                return verb_usage_error("nic", "--mtu '%s': 68 to 65535", optarg);
                        break;
                case 'h':
                        help();
                        return 0;
                default:
                        return verb_usage_error("nic", "bad option");
                }
        }
        if (argc - optind != 2)
                return verb_usage_error("nic", "expects add or remove, and a guest UUID");
        what = argv[optind];
        uuid = argv[optind + 1];
        if (!uuid_is_valid(uuid))
                return verb_usage_error("nic", "'%s' is not a guest UUID", uuid);
        if (streq(what, "add")) {
                if (!ifname)
                        return verb_usage_error("nic", "add needs --ifname TAP");
                json_object_object_add(req, "cmd", json_object_new_string("nic-add"));
                json_object_object_add(req, "ifname", json_object_new_string(ifname));
                if (mac)
                        json_object_object_add(req, "mac", json_object_new_string(mac));
                if (model)
                        json_object_object_add(req, "model", json_object_new_string(model));
                json_object_object_add(req, "queues", json_object_new_int((int) queues));
                if (mtu)
                        json_object_object_add(req, "mtu", json_object_new_int((int) mtu));
        } else if (streq(what, "remove")) {
                if (!mac)
                        return verb_usage_error("nic", "remove needs --mac MAC");
                if (ifname || model)
                        return verb_usage_error("nic", "remove takes only --mac");
                json_object_object_add(req, "cmd", json_object_new_string("nic-remove"));
                json_object_object_add(req, "mac", json_object_new_string(mac));
        } else
                return verb_usage_error("nic", "'%s': expects add or remove", what);
        if (vmsup_ctx_control(ctx, uuid, req, NIC_REQUEST_TIMEOUT_MS, &ret, &err) < 0)
                return log_error_kind(err);
        if (ret && !json_object_is_type(ret, json_type_string))
                printf("%s\n", json_object_to_json_string_ext(ret, JSON_C_TO_STRING_SPACED | JSON_C_TO_STRING_NOSLASHESCAPE));
        return 0;
}
