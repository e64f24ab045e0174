#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/fileio.h"
#include "common/util.h"
#include "secrets/localstore.h"
#include "crypto/seal.h"
#include "supervisor/guestdirs.h"
#include "common/log.h"
#include "nova/tpmrules.h"
#include "cli/verbs.h"

static void help(void) {
        printf("Usage: vmsup resize UUID --flavor FLAVOR.json [--confirm-reset]\n"
               "\n"
               "Move a stopped guest to another flavor ({\"name\": ..., \"extra_specs\": {...}}), with\n"
               "Nova's rules for its vTPM: secret security may change between user and host\n"
               "(from host to user the host's copy of the secret is deleted; from user to host\n"
               "the next start keeps one, with the owner's token); a change to or from\n"
               "deployment is refused. The same TPM version and model keep the TPM state; a\n"
               "different one replaces it with a new TPM, only with --confirm-reset.\n"
               "Prints the new resolved TPM as 'vmsup validate' does; the orchestrator\n"
               "starts the guest with the new flavor in its spec.\n"
               "\n"
               "Exit status: 0; 65 refused by Nova's rules, or a reset not confirmed;\n"
               "66 no such guest; 75 the guest is running.\n");
}

static bool same_tpm(const struct vtpm_config *a, const struct vtpm_config *b) {
        return a->present == b->present && (!a->present || (a->version == b->version && a->model == b->model));
}

static void describe(const struct vtpm_config *t, char *buf, size_t len) {
        if (t->present)
                snprintf(buf, len, "TPM %s %s", tpm_version_to_string(t->version), tpm_model_to_string(t->model));
        else
                snprintf(buf, len, "no TPM");
}

/* Remove the sealed TPM state (the manifest last, so a crash leaves it refusing rather
 * than half a TPM), then the stamp that says the guest has a TPM: a crash before that
 * leaves a start refusing (--new-tpm goes ahead), never a silent new TPM. */
static int reset_tpm_state(const char *state_dir, vmsup_error **err) {
        static const char *const names[] = { "tpm2-00.permall", "tpm2-00.volatilestate", "tpm2-00.savestate",
                                             "tpm-00.permall", "tpm-00.volatilestate", "tpm-00.savestate",
                                             SEAL_MANIFEST_NAME };
        _cleanup_close_ int dfd = open(state_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

        if (dfd < 0)
                return vmsup_fail(err, VMSUP_ERR_IO, errno, "open '%s'", state_dir);
        for (size_t i = 0; i < ARRAY_SIZE(names); i++) {
                char f[64];

                snprintf(f, sizeof(f), "%s" SEAL_SUFFIX, names[i]);
                if (unlinkat(dfd, f, 0) < 0 && errno != ENOENT)
                        return vmsup_fail(err, VMSUP_ERR_IO, errno, "remove '%s/%s'", state_dir, f);
        }
        if (fsync(dfd) < 0)
                return vmsup_fail(err, VMSUP_ERR_IO, errno, "sync '%s'", state_dir);
        if (unlinkat(dfd, GUEST_STAMP_TPM, 0) < 0 && errno != ENOENT)
                return vmsup_fail(err, VMSUP_ERR_IO, errno, "remove '%s/%s'", state_dir, GUEST_STAMP_TPM);
        if (fsync(dfd) < 0)
                return vmsup_fail(err, VMSUP_ERR_IO, errno, "sync '%s'", state_dir);
        return 0;
}

int verb_resize(struct vmsup_ctx *ctx, int argc, char **argv) {
        static const struct option longopts[] = { { "flavor", required_argument, NULL, 'f' },
                                                   { "confirm-reset", no_argument, NULL, 'R' },
                                                   { "help", no_argument, NULL, 'h' }, {} };
        _cleanup_error_ vmsup_error *err = NULL;
        _cleanup_close_ int lock = -1;
        _cleanup_json_ json_object *old_json = NULL, *flavor = NULL, *out = NULL;
        struct guest_spec old_spec = { 0 }, new_spec = { 0 };
        struct vtpm_config old_tpm, new_tpm;
        struct tpm_host_offer offer;
        struct guest_dirs d = { 0 };
        const char *flavor_path = NULL, *uuid, *text;
        char from[64], to[64];
        bool confirm = false;
        int c, r = 0;

        while ((c = getopt_long(argc, argv, "f:Rh", longopts, NULL)) != -1) {
                switch (c) {
                case 'f':
                        flavor_path = optarg;
                        break;
                case 'R':
                        confirm = true;
                        break;
                case 'h':
                        help();
                        return 0;
                default:
                        return verb_usage_error("resize", "bad option");
                }
        }
        if (argc - optind != 1 || !flavor_path)
                return verb_usage_error("resize", "expects a guest UUID and --flavor FLAVOR.json");
        uuid = argv[optind];
        if (!uuid_is_valid(uuid))
                return verb_usage_error("resize", "'%s' is not a guest UUID", uuid);
        if (vmsup_ctx_config(ctx, &err) < 0 || guest_dirs_init(&d, &ctx->cfg, uuid, &err) < 0)
                return log_error_kind(err);
        log_set_guest(uuid);

        if (guest_dirs_lock_stopped(&d, false, &lock, &err) < 0)
                goto out;
        /* the spec the guest last ran with, and the new flavor in its place */
        if ((r = guest_spec_load(d.spec_copy, &old_spec, &err)) < 0 ||
            (r = tpm_rules_resolve(&old_spec, &old_tpm, &err)) < 0)
                goto out;
        old_json = json_object_from_file(d.spec_copy);
        flavor = json_object_from_file(flavor_path);
        if (!old_json || !flavor || !json_object_is_type(flavor, json_type_object)) {
                vmsup_fail(&err, VMSUP_ERR_DATA, 0, "flavor '%s': not a JSON object", flavor_path);
                goto out;
        }
        json_object_object_add(old_json, "flavor", json_object_get(flavor));
        text = json_object_to_json_string_ext(old_json, JSON_C_TO_STRING_PRETTY);
        if ((r = guest_spec_parse(text, strlen(text), flavor_path, &new_spec, &err)) < 0 ||
            (r = tpm_rules_resolve(&new_spec, &new_tpm, &err)) < 0 ||
            (host_config_tpm_offer(&ctx->cfg, &offer), (r = tpm_rules_check_host(&new_tpm, &offer, &err)) < 0))
                goto out;

        /* Nova's _validate_vtpm_secret_security: user <-> host only */
        if (old_tpm.present && new_tpm.present && old_tpm.secret_security != new_tpm.secret_security &&
            (old_tpm.secret_security == SECRET_SECURITY_DEPLOYMENT ||
             new_tpm.secret_security == SECRET_SECURITY_DEPLOYMENT)) {
                vmsup_fail(&err, VMSUP_ERR_DATA, 0,
                           "Resize between 'deployment' TPM secret security and other TPM secret security modes is "
                           "not supported.");
                goto out;
        }
        describe(&old_tpm, from, sizeof(from));
        describe(&new_tpm, to, sizeof(to));
        /* Nova's _finish_migration_vtpm: the state stays only for the same version and model */
        if (!same_tpm(&old_tpm, &new_tpm) && old_tpm.present) {
                if (!confirm) {
                        vmsup_fail(&err, VMSUP_ERR_DATA, 0,
                                   "resizing from %s to %s replaces the guest's TPM: its keys and NV data would be "
                                   "lost; pass --confirm-reset to go ahead",
                                   from, to);
                        goto out;
                }
                if ((r = reset_tpm_state(d.state, &err)) < 0)
                        goto out;
                log_warning("TPM state removed: %s replaces %s; the next start manufactures a new TPM", to, from);
        }
        /* host -> user: the host no longer keeps the secret (Nova undefines the secret) */
        if (old_tpm.present && old_tpm.secret_security == SECRET_SECURITY_HOST &&
            !(new_tpm.present && new_tpm.secret_security == SECRET_SECURITY_HOST) &&
            access(ctx->cfg.paths.secrets_dir, F_OK) == 0) {
                struct localstore *store = NULL;

                r = localstore_open(ctx->cfg.paths.secrets_dir, false, &store, &err);
                if (r >= 0)
                        r = localstore_delete(store, uuid, &err);
                localstore_free(store);
                if (r < 0)
                        goto out;
        }
        if ((r = write_file_atomic(d.spec_copy, text, strlen(text), 0600, &err)) < 0)
                goto out;
        log_info("resized to flavor '%s': %s%s%s", new_spec.flavor_name, to,
                 new_tpm.present ? ", secret security " : "",
                 new_tpm.present ? secret_security_to_string(new_tpm.secret_security) : "");
        out = json_object_new_object();
        json_object_object_add(out, "uuid", json_object_new_string(uuid));
        json_object_object_add(out, "tpm", vtpm_config_to_json(&new_tpm));
        printf("%s\n", json_object_to_json_string_ext(out, JSON_C_TO_STRING_SPACED | JSON_C_TO_STRING_NOSLASHESCAPE));
out:
        guest_spec_clear(&old_spec);
        guest_spec_clear(&new_spec);
        guest_dirs_clear(&d);
        return err ? log_error_kind(err) : 0;
}
