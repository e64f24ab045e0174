#include "config.h"

#include <getopt.h>
#include <json-c/json.h>
#include <stdbool.h>
#include <stdio.h>

#include "common/log.h"
#include "supervisor/traits.h"
#include "cli/verbs.h"

static void help(void) {
        printf("Usage: vmsup traits [--json]\n"
               "\n"
               "Print this host's COMPUTE_SECURITY_TPM_* traits, one per line, as Nova's\n"
               "libvirt driver reports them to placement:\n"
               "  _1_2, _2_0   TPM versions both swtpm and swtpm_setup support\n"
               "  _TIS, _CRB   TPM devices the QEMU binary offers\n"
               "  _SECRET_SECURITY_USER/_HOST/_DEPLOYMENT   from supported_tpm_secret_security\n"
               "Nothing is printed when [tpm] swtpm_enabled is false.\n"
               "\n"
               "  --json   print a JSON array instead\n"
               "\n"
               "Exit status: 0; 69 swtpm is enabled but swtpm, swtpm_setup or QEMU cannot\n"
               "run vTPMs; 78 bad host configuration.\n");
}

int verb_traits(struct vmsup_ctx *ctx, int argc, char **argv) {
        static const struct option longopts[] = { { "json", no_argument, NULL, 'j' },
                                                   { "help", no_argument, NULL, 'h' }, {} };
        _cleanup_error_ vmsup_error *err = NULL;
        struct host_traits traits;
        const char *names[8];
        bool json = false;
        int c;

        while ((c = getopt_long(argc, argv, "jh", longopts, NULL)) != -1) {
                switch (c) {
                case 'j':
                        json = true;
                        break;
                case 'h':
                        help();
                        return 0;
                default:
                        return verb_usage_error("traits", "bad option");
                }
        }
        if (optind != argc)
                return verb_usage_error("traits", "takes no arguments");
        if (vmsup_ctx_config(ctx, &err) < 0 || host_traits_probe(&ctx->cfg, &traits, &err) < 0)
                return log_error_kind(err);
        host_traits_names(&traits, names);
        if (json) {
                json_object *arr = json_object_new_array();

                for (const char **n = names; *n; n++)
                        json_object_array_add(arr, json_object_new_string(*n));
                printf("%s\n", json_object_to_json_string_ext(arr, JSON_C_TO_STRING_PLAIN));
                json_object_put(arr);
        } else
                for (const char **n = names; *n; n++)
                        printf("%s\n", *n);
        return 0;
}
