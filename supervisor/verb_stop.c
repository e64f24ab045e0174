#include "config.h"

#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/util.h"
#include "supervisor/log.h"
#include "supervisor/verbs.h"

static void help(void) {
        printf("Usage: vmsup stop UUID [--timeout SECONDS | --force]\n"
               "\n"
               "Stop a supervised guest and wait until it is down. Graceful by default: the\n"
               "guest gets an ACPI power-button press and SECONDS (default [supervisor]\n"
               "stop_timeout) to power off, then QEMU is told to quit. --force quits QEMU at\n"
               "once (as 'virsh destroy'). swtpm is always shut down through its control\n"
               "channel, so the TPM state is kept.\n"
               "\n"
               "Exit status: 0 stopped; 69 the guest is not running under vmsup.\n");
}

int verb_stop(struct vmsup_ctx *ctx, int argc, char **argv) {
        static const struct option longopts[] = { { "timeout", required_argument, NULL, 't' },
                                                   { "force", no_argument, NULL, 'f' },
                                                   { "help", no_argument, NULL, 'h' }, {} };
        _cleanup_error_ vmsup_error *err = NULL;
        _cleanup_json_ json_object *req = json_object_new_object(), *ret = NULL;
        long timeout = -1;
        bool force = false;
        char *end;
        int c;

        while ((c = getopt_long(argc, argv, "t:fh", longopts, NULL)) != -1) {
                switch (c) {
                case 't':
                        timeout = strtol(optarg, &end, 10);
                        if (*end || timeout < 0 || timeout > 86400)
                                return verb_usage_error("stop", "--timeout takes seconds (0 to 86400)");
                        break;
                case 'f':
                        force = true;
                        break;
                case 'h':
                        help();
                        return 0;
                default:
                        return verb_usage_error("stop", "bad option");
                }
        }
        if (argc - optind != 1)
                return verb_usage_error("stop", "expects a guest UUID");
        if (force && timeout >= 0)
                return verb_usage_error("stop", "--force and --timeout exclude each other");
        json_object_object_add(req, "cmd", json_object_new_string("stop"));
        json_object_object_add(req, "force", json_object_new_boolean(force));
        if (timeout >= 0)
                json_object_object_add(req, "timeout", json_object_new_int((int) timeout));
        if (vmsup_ctx_control(ctx, argv[optind], req, -1, &ret, &err) < 0)
                return log_error_exit(err);
        return 0;
}
