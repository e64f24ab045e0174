#include "config.h"

#include <getopt.h>
#include <stdio.h>

#include "common/util.h"
#include "common/log.h"
#include "cli/verbs.h"

static void help(void) {
        printf("Usage: vmsup resume UUID\n"
               "\n"
               "Let a paused guest run again (QMP cont): after 'vmsup tpm export --keep-paused'\n"
               "and the disks' snapshots taken in the same pause.\n"
               "\n"
               "Exit status: 0 running; 69 the guest is not running under vmsup; 75 the\n"
               "guest is not in a state to resume (or was handed over to another host).\n");
}

int verb_resume(struct vmsup_ctx *ctx, int argc, char **argv) {
        static const struct option longopts[] = { { "help", no_argument, NULL, 'h' }, {} };
        _cleanup_error_ vmsup_error *err = NULL;
        _cleanup_json_ json_object *req = json_object_new_object(), *ret = NULL;
        int c;

        while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
                if (c == 'h') {
                        help();
                        return 0;
                }
                return verb_usage_error("resume", "bad option");
        }
        if (argc - optind != 1)
                return verb_usage_error("resume", "expects a guest UUID");
        json_object_object_add(req, "cmd", json_object_new_string("resume"));
        if (vmsup_ctx_control(ctx, argv[optind], req, -1, &ret, &err) < 0)
                return log_error_kind(err);
        return 0;
}
