#include "config.h"

#include <getopt.h>
#include <stdio.h>

#include "supervisor/confine.h"
#include "supervisor/guest.h"
#include "supervisor/log.h"
#include "supervisor/verbs.h"

static void help(void) {
        printf("Usage: vmsup run GUEST.json\n"
               "\n"
               "Boot the guest the spec describes, with the vTPM Nova's rules give it, and\n"
               "supervise it in the foreground until it ends: swtpm and QEMU are started as\n"
               "children, checked over QMP (query-tpm), and watched in one event loop.\n"
               "\n"
               "SIGTERM or SIGINT stops the guest gracefully (ACPI power button, then quit\n"
               "after [supervisor] stop_timeout); a second one stops it at once. 'vmsup\n"
               "status|stop|reboot|qmp UUID' talk to the running supervisor.\n"
               "\n"
               "Exit status: 0 the guest powered off or was stopped; 1 QEMU or swtpm died;\n"
               "65 bad guest spec; 69 vTPM or a program unavailable; 75 the guest is already\n"
               "supervised; 78 bad host configuration; see vmsup(8).\n");
}

int verb_run(struct vmsup_ctx *ctx, int argc, char **argv) {
        static const struct option longopts[] = { { "help", no_argument, NULL, 'h' }, {} };
        _cleanup_error_ vmsup_error *err = NULL;
        struct guest_run_opts opts = { 0 };
        int c;

        while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
                if (c == 'h') {
                        help();
                        return 0;
                }
                return verb_usage_error("run", "bad option");
        }
        if (argc - optind != 1)
                return verb_usage_error("run", "expects one guest spec file");
        /* before anything could hold a secret */
        if (confine_no_dumps(&err) < 0 || vmsup_ctx_config(ctx, &err) < 0)
                return log_error_exit(err);
        opts.cfg = &ctx->cfg;
        opts.spec_path = argv[optind];
        return guest_run(&opts);
}
