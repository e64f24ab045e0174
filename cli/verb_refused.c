#include "config.h"

#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "common/util.h"
#include "nova/guestspec.h"
#include "common/log.h"
#include "nova/tpmrules.h"
#include "cli/verbs.h"

/* Nova's compute API refuses rebuild, rescue, shelve and evacuate for every vTPM guest
 * (compute/api.py reject_vtpm_instances); vmsup answers these verbs the same way. */
int verb_refused(struct vmsup_ctx *ctx, int argc, char **argv) {
        _cleanup_error_ vmsup_error *err = NULL;
        _cleanup_free_ char *path = NULL;
        const char *op = argv[0], *arg;
        struct guest_spec spec = { 0 };
        struct vtpm_config tpm;
        int r;

        if (argc == 2 && (streq(argv[1], "--help") || streq(argv[1], "-h"))) {
                printf("Usage: vmsup %s UUID|GUEST.json\n"
                       "\n"
                       "vmsup does not %s guests. For a guest with a vTPM it answers as Nova does:\n"
                       "\"Operation '%s' not supported for vTPM-enabled instance (<uuid>).\"\n"
                       "\n"
                       "Exit status: 69 (refused or not offered); 65 bad guest spec.\n",
                       op, op, op);
                return 0;
        }
        if (argc != 2)
                return verb_usage_error(op, "expects a guest UUID or spec file");
        arg = argv[1];
        if (uuid_is_valid(arg)) {
                if (vmsup_ctx_config(ctx, &err) < 0)
                        return log_error_kind(err);
                if (asprintf(&path, "%s/%s/guest.json", ctx->cfg.paths.state_dir, arg) < 0)
                        return VMSUP_ERR_SYSTEM;
                arg = path;
        }
        if (guest_spec_load(arg, &spec, &err) < 0)
                return log_error_kind(err);
        r = tpm_rules_resolve(&spec, &tpm, &err);
        if (r < 0) {
                guest_spec_clear(&spec);
                return log_error_kind(err);
        }
        if (tpm.present)
                vmsup_fail(&err, VMSUP_ERR_UNAVAILABLE, 0, "Operation '%s' not supported for vTPM-enabled instance (%s).", op,
                           spec.uuid);
        else
                vmsup_fail(&err, VMSUP_ERR_UNAVAILABLE, 0, "vmsup does not offer '%s' (guest %s has no vTPM: use your "
                                                          "orchestrator's own %s)", op, spec.uuid, op);
        guest_spec_clear(&spec);
        return log_error_kind(err);
}
