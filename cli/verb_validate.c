#include "config.h"

#include <getopt.h>
#include <stdio.h>

#include "supervisor/diskimages.h"
#include "nova/guestspec.h"
#include "common/log.h"
#include "supervisor/specmatch.h"
#include "nova/tpmrules.h"
#include "cli/verbs.h"

static void help(void) {
        printf("Usage: vmsup validate GUEST.json\n"
               "\n"
               "Read a guest spec, apply Nova's vTPM rules (flavor extra specs and image\n"
               "properties) and this host's [tpm] settings, and print the result as one JSON\n"
               "object: {\"uuid\": ..., \"tpm\": {\"version\", \"model\", \"secret_security\"}}\n"
               "or \"tpm\": null when the guest asks for no vTPM. The headers of its qcow2\n"
               "disk images must name no file the spec does not give (vmsup(8), GUEST SPEC),\n"
               "and no disk, backing file, kernel or initrd may lie in vmsup's own state,\n"
               "run, log or secrets dir (after resolving symbolic links).\n"
               "\n"
               "Exit status: 0 valid; 65 the spec breaks a rule (Nova's message on stderr)\n"
               "or a disk image's header names a file the spec does not give, or a path\n"
               "lies in vmsup's own dirs;\n"
               "66 no such file (the spec or a disk image); 69 this host does not offer\n"
               "what the guest asks for;\n"
               "78 bad host configuration.\n");
}

int verb_validate(struct vmsup_ctx *ctx, int argc, char **argv) {
        static const struct option longopts[] = { { "help", no_argument, NULL, 'h' }, {} };
        _cleanup_error_ vmsup_error *err = NULL;
        struct guest_spec spec = { 0 };
        struct vtpm_config tpm;
        struct tpm_host_offer offer;
        json_object *out;
        int c, r;

        while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
                if (c == 'h') {
                        help();
                        return 0;
                }
                return verb_usage_error("validate", "bad option");
        }
        if (argc - optind != 1)
                return verb_usage_error("validate", "expects one guest spec file");

        if (vmsup_ctx_config(ctx, &err) < 0)
                return log_error_kind(err);
        if (guest_spec_load(argv[optind], &spec, &err) < 0)
                return log_error_kind(err);
        r = spec_match_host_dirs(&spec, &ctx->cfg, argv[optind], &err);
        if (r == 0)
                r = tpm_rules_resolve(&spec, &tpm, &err);
        if (r == 0) {
                host_config_tpm_offer(&ctx->cfg, &offer);
                r = tpm_rules_check_host(&tpm, &offer, &err);
        }
        if (r == 0)
                r = disk_images_check(&spec, &err);
        if (r < 0) {
                guest_spec_clear(&spec);
                return log_error_kind(err);
        }
        out = json_object_new_object();
        json_object_object_add(out, "uuid", json_object_new_string(spec.uuid));
        json_object_object_add(out, "tpm", vtpm_config_to_json(&tpm));
        printf("%s\n", json_object_to_json_string_ext(out, JSON_C_TO_STRING_SPACED | JSON_C_TO_STRING_NOSLASHESCAPE));
        json_object_put(out);
        guest_spec_clear(&spec);
        return 0;
}
