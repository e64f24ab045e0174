#include "config.h"

#include <getopt.h>
#include <stdio.h>
#include <unistd.h>

#include "seccomp/filter.h"
#include "common/log.h"
#include "cli/verbs.h"

static void help(void) {
        printf("Usage: vmsup seccomp --print\n"
               "\n"
               "Print the seccomp filter 'vmsup run' loads on itself before it starts swtpm and\n"
               "QEMU (which inherit it), as libseccomp's pseudo filter code. The action for a\n"
               "call outside the allowlist follows [security] seccomp (kill, log); with 'off'\n"
               "the filter 'kill' would load is shown. See docs/security.md.\n");
}

int verb_seccomp(struct vmsup_ctx *ctx, int argc, char **argv) {
        static const struct option longopts[] = {
                { "print", no_argument, NULL, 'p' },
                { "help", no_argument, NULL, 'h' },
                {},
        };
        _cleanup_error_ vmsup_error *err = NULL;
        enum seccomp_filter_mode mode;
        bool print = false;
        int c;

        while ((c = getopt_long(argc, argv, "ph", longopts, NULL)) != -1) {
                if (c == 'h') {
                        help();
                        return 0;
                }
                if (c != 'p')
                        return verb_usage_error("seccomp", "bad option");
                print = true;
        }
        if (!print || optind != argc)
                return verb_usage_error("seccomp", "expects --print and nothing else");
        if (vmsup_ctx_config(ctx, &err) < 0)
                return log_error_kind(err);
        mode = ctx->cfg.security.seccomp == SECCOMP_FILTER_OFF ? SECCOMP_FILTER_KILL : ctx->cfg.security.seccomp;
        fflush(stdout);
        if (seccomp_filter_export(mode, STDOUT_FILENO, &err) < 0)
                return log_error_kind(err);
        return 0;
}
