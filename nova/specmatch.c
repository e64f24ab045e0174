#include "config.h"

#include <stdio.h>

#include "common/util.h"
#include "nova/specmatch.h"
#include "nova/tpmrules.h"

static int differ(vmsup_error **err, const char *key, const char *theirs, const char *ours, const char *why) {
        return vmsup_fail(err, VMSUP_ERR_DATA, 0, "key '%s': %s%s%s from the source, %s%s%s here%s", key,
                          theirs ? "'" : "", theirs ? theirs : "none", theirs ? "'" : "", ours ? "'" : "",
                          ours ? ours : "none", ours ? "'" : "", why ? why : "");
}

static int same_string(vmsup_error **err, const char *key, const char *theirs, const char *ours) {
        return streq_ptr(theirs, ours) ? 0 : differ(err, key, theirs, ours, NULL);
}

static int same_uint(vmsup_error **err, const char *key, unsigned theirs, unsigned ours) {
        char t[16], o[16];

        if (theirs == ours)
                return 0;
        snprintf(t, sizeof(t), "%u", theirs);
        snprintf(o, sizeof(o), "%u", ours);
        return vmsup_fail(err, VMSUP_ERR_DATA, 0, "key '%s': %s from the source, %s here", key, t, o);
}

/* The keys of Nova's vTPM and firmware rules (tpm_rules_resolve, parse_firmware), as
 * written: a source whose spec resolves to the same TPM by other keys is still refused. */
static int same_tpm_keys(const struct guest_spec *ours, const struct guest_spec *theirs, vmsup_error **err) {
        static const char *const flavor_keys[] = { "hw:tpm_version", "hw:tpm_model", "hw:tpm_secret_security", NULL };
        static const char *const image_keys[] = { "hw_tpm_version", "hw_tpm_model", "hw_firmware_type", NULL };
        struct vtpm_config tpm = { 0 };
        vmsup_error *ignored = NULL;
        const char *no_vtpm = NULL;
        char key[96];

        /* a spec without a vTPM is never sent by a vmsup source: say so, not just "differs" */
        if (tpm_rules_resolve(theirs, &tpm, &ignored) < 0)
                ignored = vmsup_error_free(ignored);
        else if (!tpm.present)
                no_vtpm = ": the source's spec gives the guest no vTPM, and only guests with a vTPM migrate";
        for (const char *const *k = flavor_keys; *k; k++) {
                const char *t = guest_spec_extra_spec(theirs, *k), *o = guest_spec_extra_spec(ours, *k);

                snprintf(key, sizeof(key), "flavor.extra_specs.%s", *k);
                if (!streq_ptr(t, o))
                        return differ(err, key, t, o, no_vtpm);
        }
        for (const char *const *k = image_keys; *k; k++) {
                const char *t = guest_spec_image_property(theirs, *k), *o = guest_spec_image_property(ours, *k);

                snprintf(key, sizeof(key), "image.properties.%s", *k);
                if (!streq_ptr(t, o))
                        return differ(err, key, t, o, no_vtpm);
        }
        if (no_vtpm) /* ours has none either: the caller refuses that before any source comes */
                return vmsup_fail(err, VMSUP_ERR_DATA, 0, "the guest has no vTPM; only guests with a vTPM migrate");
        return 0;
}

static int same_disk(const struct guest_disk *t, const struct guest_disk *o, size_t i, vmsup_error **err) {
        char key[256];
        int n = snprintf(key, sizeof(key), "disks[%zu]", i), r;

        snprintf(key + n, sizeof(key) - (size_t) n, ".path");
        if ((r = same_string(err, key, t->path, o->path)) < 0)
                return r;
        snprintf(key + n, sizeof(key) - (size_t) n, ".format");
        if ((r = same_string(err, key, t->format, o->format)) < 0)
                return r;
        snprintf(key + n, sizeof(key) - (size_t) n, ".readonly");
        if ((r = same_string(err, key, t->readonly ? "true" : "false", o->readonly ? "true" : "false")) < 0)
                return r;
        for (size_t j = 0; j < t->n_backing || j < o->n_backing; j++) {
                n += snprintf(key + n, sizeof(key) - (size_t) n, ".backing");
                if (j >= t->n_backing || j >= o->n_backing)
                        return same_string(err, key, j < t->n_backing ? t->backing[j].path : NULL,
                                           j < o->n_backing ? o->backing[j].path : NULL);
                snprintf(key + n, sizeof(key) - (size_t) n, ".path");
                if ((r = same_string(err, key, t->backing[j].path, o->backing[j].path)) < 0)
                        return r;
                snprintf(key + n, sizeof(key) - (size_t) n, ".format");
                if ((r = same_string(err, key, t->backing[j].format, o->backing[j].format)) < 0)
                        return r;
        }
        return 0;
}

int spec_match_incoming(const struct guest_spec *ours, const struct guest_spec *theirs, vmsup_error **err) {
        int r;

        if ((r = same_string(err, "uuid", theirs->uuid, ours->uuid)) < 0 || (r = same_tpm_keys(ours, theirs, err)) < 0 ||
            (r = same_string(err, "firmware.type", theirs->firmware_type, ours->firmware_type)) < 0 ||
            (r = same_uint(err, "vcpus", theirs->vcpus, ours->vcpus)) < 0 ||
            (r = same_uint(err, "memory_mb", theirs->memory_mb, ours->memory_mb)) < 0 ||
            (r = same_string(err, "firmware.kernel", theirs->kernel, ours->kernel)) < 0 ||
            (r = same_string(err, "firmware.initrd", theirs->initrd, ours->initrd)) < 0 ||
            (r = same_string(err, "firmware.cmdline", theirs->cmdline, ours->cmdline)) < 0 ||
            /* the display adapter is in QEMU's stream: a mismatch would fail only mid-way */
            (r = same_string(err, "graphics.type", theirs->graphics, ours->graphics)) < 0)
                return r;
        if (theirs->n_disks != ours->n_disks) {
                char t[16], o[16];

                snprintf(t, sizeof(t), "%zu", theirs->n_disks);
                snprintf(o, sizeof(o), "%zu", ours->n_disks);
                return vmsup_fail(err, VMSUP_ERR_DATA, 0, "key 'disks': %s disks from the source, %s here", t, o);
        }
        for (size_t i = 0; i < ours->n_disks; i++)
                if ((r = same_disk(&theirs->disks[i], &ours->disks[i], i, err)) < 0)
                        return r;
        /* the Barbican secret the guest's TPM state is sealed under, once the orchestrator
         * knows it: another id here would make `vmsup delete` remove another guest's */
        if (ours->vtpm_secret_uuid && theirs->vtpm_secret_uuid &&
            (r = same_string(err, "vtpm_secret_uuid", theirs->vtpm_secret_uuid, ours->vtpm_secret_uuid)) < 0)
                return r;
        return 0;
}
