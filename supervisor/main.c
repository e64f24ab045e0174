#include "config.h"

#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "common/util.h"
#include "supervisor/log.h"
#include "supervisor/verbs.h"

static const struct verb verbs[] = {
        { "validate", verb_validate, "apply Nova's vTPM rules to a guest spec and print the result" },
        { "traits", verb_traits, "print this host's COMPUTE_SECURITY_TPM_* traits" },
        { "qmp", verb_qmp, "run one QMP command on a QEMU monitor socket" },
};

static void usage(FILE *f) {
        fprintf(f,
                "Usage: vmsup [--config FILE] VERB [OPTIONS] [ARGS]\n"
                "\n"
                "Per-guest supervisor for QEMU guests with an swtpm vTPM.\n"
                "\n"
                "Verbs:\n");
        for (size_t i = 0; i < ARRAY_SIZE(verbs); i++)
                fprintf(f, "  %-10s %s\n", verbs[i].name, verbs[i].summary);
        fprintf(f,
                "\n"
                "Options:\n"
                "  -c, --config FILE  host configuration (default " VMSUP_DEFAULT_CONFIG ")\n"
                "  -v, --verbose      log more (debug lines)\n"
                "  -h, --help         show this help\n"
                "  -V, --version      show the version\n"
                "\n"
                "'vmsup VERB --help' describes a verb. See vmsup(8) and vmsup.conf(5).\n");
}

int verb_usage_error(const char *verb, const char *fmt, ...) {
        va_list ap;

        fprintf(stderr, "vmsup%s%s: ", verb ? " " : "", verb ? verb : "");
        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
        fprintf(stderr, "\nTry 'vmsup%s%s --help'.\n", verb ? " " : "", verb ? verb : "");
        return VMSUP_EX_USAGE;
}

int vmsup_ctx_config(struct vmsup_ctx *ctx, vmsup_error **err) {
        int r;

        if (ctx->cfg_loaded)
                return 0;
        r = host_config_load(ctx->config_path, ctx->config_path == NULL, &ctx->cfg, err);
        if (r < 0)
                return r;
        ctx->cfg_loaded = true;
        return 0;
}

int main(int argc, char **argv) {
        static const struct option longopts[] = {
                { "config", required_argument, NULL, 'c' },
                { "verbose", no_argument, NULL, 'v' },
                { "help", no_argument, NULL, 'h' },
                { "version", no_argument, NULL, 'V' },
                {},
        };
        struct vmsup_ctx ctx = { 0 };
        int c, r;

        /* '+': stop at the verb, whose own options come after it */
        while ((c = getopt_long(argc, argv, "+c:vhV", longopts, NULL)) != -1) {
                switch (c) {
                case 'c':
                        ctx.config_path = optarg;
                        break;
                case 'v':
                        log_set_level(LOG_LEVEL_DEBUG);
                        break;
                case 'h':
                        usage(stdout);
                        return 0;
                case 'V':
                        printf("vmsup %s\n", PACKAGE_VERSION);
                        return 0;
                default:
                        fprintf(stderr, "Try 'vmsup --help'.\n");
                        return VMSUP_EX_USAGE;
                }
        }
        if (optind >= argc) {
                usage(stderr);
                return VMSUP_EX_USAGE;
        }
        for (size_t i = 0; i < ARRAY_SIZE(verbs); i++) {
                if (streq(argv[optind], verbs[i].name)) {
                        int vargc = argc - optind;
                        char **vargv = argv + optind;

                        optind = 0; /* let the verb run getopt_long afresh */
                        r = verbs[i].run(&ctx, vargc, vargv);
                        if (ctx.cfg_loaded)
                                host_config_clear(&ctx.cfg);
                        return r;
                }
        }
        return verb_usage_error(NULL, "unknown verb '%s'", argv[optind]);
}
