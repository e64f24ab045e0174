#include "config.h"

#include <getopt.h>
#include <stdio.h>

#include "common/util.h"
#include "common/log.h"
#include "cli/verbs.h"

static void help(void) {
        printf("Usage: vmsup reboot UUID [--hard]\n"
               "\n"
               "Reboot a supervised guest: a reset of the virtual machine (QMP system_reset).\n"
               "--hard restarts QEMU and swtpm instead (as Nova's hard reboot); the TPM\n"
               "state is kept.\n"
               "\n"
               "Exit status: 0 rebooted; 69 the guest is not running under vmsup; 75 the\n"
               "guest is not in a state to reboot.\n");
}

int verb_reboot(struct vmsup_ctx *ctx, int argc, char **argv) {
        static const struct option longopts[] = { { "hard", no_argument, NULL, 'H' },
                                                   { "help", no_argument, NULL, 'h' }, {} };
        _cleanup_error_ vmsup_error *err = NULL;
        _cleanup_json_ json_object *req = json_object_new_object(), *ret = NULL;
        bool hard = false;
        int c;

        while ((c = getopt_long(argc, argv, "Hh", longopts, NULL)) != -1) {
                if (c == 'H')
                        hard = true;
                else if (c == 'h') {
                        help();
                        return 0;
                } else
                        return verb_usage_error("reboot", "bad option");
        }
        if (argc - optind != 1)
                return verb_usage_error("reboot", "expects a guest UUID");
        json_object_object_add(req, "cmd", json_object_new_string("reboot"));
        json_object_object_add(req, "hard", json_object_new_boolean(hard));
        if (vmsup_ctx_control(ctx, argv[optind], req, -1, &ret, &err) < 0)
                return log_error_kind(err);
        return 0;
}
