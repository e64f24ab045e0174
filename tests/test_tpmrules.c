#include "config.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>

#include "nova/tpmrules.h"

#define UUID "0b7c6e4a-3f0e-4d5c-9a1b-2c3d4e5f6a7b"

/* NULL-valued entries are left out of the spec. */
static struct guest_spec make_spec(const char *fv, const char *fm, const char *fs, const char *iv, const char *im) {
        json_object *root = json_object_new_object(), *flavor = json_object_new_object(),
                    *es = json_object_new_object(), *image = json_object_new_object(),
                    *props = json_object_new_object();
        struct guest_spec spec;
        vmsup_error *err = NULL;
        const char *text;

        json_object_object_add(root, "uuid", json_object_new_string(UUID));
        json_object_object_add(root, "name", json_object_new_string("g"));
        json_object_object_add(root, "vcpus", json_object_new_int(1));
        json_object_object_add(root, "memory_mb", json_object_new_int(256));
        json_object_object_add(flavor, "name", json_object_new_string("m1.tpm"));
        if (fv)
                json_object_object_add(es, "hw:tpm_version", json_object_new_string(fv));
        if (fm)
                json_object_object_add(es, "hw:tpm_model", json_object_new_string(fm));
        if (fs)
                json_object_object_add(es, "hw:tpm_secret_security", json_object_new_string(fs));
        json_object_object_add(flavor, "extra_specs", es);
        json_object_object_add(root, "flavor", flavor);
        json_object_object_add(image, "name", json_object_new_string("cirros"));
        if (iv)
                json_object_object_add(props, "hw_tpm_version", json_object_new_string(iv));
        if (im)
                json_object_object_add(props, "hw_tpm_model", json_object_new_string(im));
        json_object_object_add(image, "properties", props);
        json_object_object_add(root, "image", image);
        text = json_object_to_json_string(root);
        cr_assert_eq(guest_spec_parse(text, strlen(text), "t.json", &spec, &err), 0, "%s", err ? err->msg : "");
        json_object_put(root);
        return spec;
}

/* Resolve; returns NULL and fills *tpm on success, or the error message. */
static char *resolve(const char *fv, const char *fm, const char *fs, const char *iv, const char *im,
                     struct vtpm_config *tpm) {
        struct guest_spec spec = make_spec(fv, fm, fs, iv, im);
        vmsup_error *err = NULL;
        char *msg = NULL;

        if (tpm_rules_resolve(&spec, tpm, &err) < 0) {
                cr_assert_eq(err->kind, VMSUP_ERR_DATA);
                msg = strdup(err->msg);
                vmsup_error_free(err);
        }
        guest_spec_clear(&spec);
        return msg;
}

static void expect_tpm(const char *fv, const char *fm, const char *iv, const char *im, const char *version,
                       const char *model) {
        struct vtpm_config tpm;
        char *msg = resolve(fv, fm, NULL, iv, im, &tpm);

        cr_assert_null(msg, "unexpected error: %s", msg);
        cr_assert(tpm.present);
        cr_assert_str_eq(tpm_version_to_string(tpm.version), version);
        cr_assert_str_eq(tpm_model_to_string(tpm.model), model);
        cr_assert_eq(tpm.secret_security, SECRET_SECURITY_USER);
}

static void expect_error(const char *fv, const char *fm, const char *iv, const char *im, const char *text) {
        struct vtpm_config tpm;
        char *msg = resolve(fv, fm, NULL, iv, im, &tpm);

        cr_assert_not_null(msg, "accepted");
        cr_assert_str_eq(msg, text);
        free(msg);
}

Test(tpmrules, no_version_no_vtpm) {
        struct vtpm_config tpm;

        cr_assert_null(resolve(NULL, NULL, NULL, NULL, NULL, &tpm));
        cr_assert_not(tpm.present);
        cr_assert_null(resolve(NULL, "tpm-crb", NULL, NULL, NULL, &tpm), "a lone model is ignored");
        cr_assert_not(tpm.present);
        cr_assert_null(resolve(NULL, NULL, NULL, NULL, "tpm-bogus", &tpm), "a lone bad model is ignored too");
        cr_assert_not(tpm.present);
        cr_assert_null(resolve(NULL, NULL, "bogus", NULL, NULL, &tpm), "secret security alone asks for nothing");
        cr_assert_not(tpm.present);
        cr_assert_null(resolve("", NULL, NULL, NULL, NULL, &tpm), "\"\" or None is None");
        cr_assert_not(tpm.present);
}

Test(tpmrules, defaults_and_sources) {
        expect_tpm("2.0", NULL, NULL, NULL, "2.0", "tpm-tis");
        expect_tpm(NULL, NULL, "1.2", NULL, "1.2", "tpm-tis");
        expect_tpm("2.0", "tpm-crb", NULL, NULL, "2.0", "tpm-crb");
        expect_tpm(NULL, NULL, "2.0", "tpm-crb", "2.0", "tpm-crb");
        expect_tpm("2.0", NULL, NULL, "tpm-crb", "2.0", "tpm-crb");
        expect_tpm("2.0", "tpm-crb", "2.0", "tpm-crb", "2.0", "tpm-crb");
        expect_tpm("", NULL, "2.0", NULL, "2.0", "tpm-tis");
        expect_tpm("1.2", "", NULL, "tpm-tis", "1.2", "tpm-tis");
}

Test(tpmrules, nova_messages) {
        expect_error("3.0", NULL, NULL, NULL, "Invalid TPM version '3.0'. Allowed values: 1.2, 2.0.");
        expect_error(NULL, NULL, "2", NULL, "Invalid TPM version '2'. Allowed values: 1.2, 2.0.");
        expect_error("", NULL, "", NULL, "Invalid TPM version ''. Allowed values: 1.2, 2.0.");
        expect_error("2.0", "tpm-spi", NULL, NULL, "Invalid TPM model 'tpm-spi'. Allowed values: tpm-tis, tpm-crb.");
        expect_error("1.2", "tpm-crb", NULL, NULL, "TPM model CRB is only valid with TPM version 2.0.");
        expect_error(NULL, NULL, "1.2", "tpm-crb", "TPM model CRB is only valid with TPM version 2.0.");
        expect_error("2.0", NULL, "1.2", NULL,
                     "Flavor m1.tpm has hw:tpm_version extra spec explicitly set to 2.0, conflicting with image "
                     "cirros which has hw_tpm_version explicitly set to 1.2.");
        expect_error("2.0", "tpm-tis", NULL, "tpm-crb",
                     "Flavor m1.tpm has hw:tpm_model extra spec explicitly set to tpm-tis, conflicting with image "
                     "cirros which has hw_tpm_model explicitly set to tpm-crb.");
        expect_error("it's", NULL, NULL, NULL, "Invalid TPM version \"it's\". Allowed values: 1.2, 2.0.");
}

Test(tpmrules, secret_security_modes) {
        static const char *const modes[] = { "user", "host", "deployment" };
        struct vtpm_config tpm;
        char *msg;

        for (int i = 0; i < 3; i++) {
                cr_assert_null(resolve("2.0", NULL, modes[i], NULL, NULL, &tpm));
                cr_assert_eq(tpm.secret_security, 1u << i);
                cr_assert_str_eq(secret_security_to_string(tpm.secret_security), modes[i]);
        }
        cr_assert_null(resolve("2.0", NULL, "", NULL, NULL, &tpm));
        cr_assert_eq(tpm.secret_security, SECRET_SECURITY_USER, "'' or 'user' is user");
        msg = resolve("2.0", NULL, "root", NULL, NULL, &tpm);
        cr_assert_str_eq(msg, "TPM secret security 'root' is not supported.");
        free(msg);
}

/* Every combination of flavor and image version and model (5^4 = 625), against the rules
 * as Nova's docs state them: a value set in both places must agree; the flavor's truthy
 * value wins, else the image's; no version -> no vTPM; model defaults to tpm-tis. */
Test(tpmrules, whole_table) {
        static const char *const versions[] = { NULL, "", "1.2", "2.0", "3.0" };
        static const char *const models[] = { NULL, "", "tpm-tis", "tpm-crb", "tpm-x" };
        int checked = 0, vtpms = 0;

        for (int a = 0; a < 5; a++)
                for (int b = 0; b < 5; b++)
                        for (int c = 0; c < 5; c++)
                                for (int d = 0; d < 5; d++) {
                                        const char *fv = versions[a], *iv = versions[b], *fm = models[c], *im = models[d];
                                        bool fvt = fv && *fv, ivt = iv && *iv, fmt = fm && *fm, imt = im && *im;
                                        const char *v = fvt ? fv : iv, *m = fmt ? fm : im;
                                        struct vtpm_config tpm;
                                        char *msg = resolve(fv, fm, NULL, iv, im, &tpm);

                                        checked++;
                                        if (fvt && ivt && strcmp(fv, iv) != 0) {
                                                cr_assert(msg && strstr(msg, "hw:tpm_version extra spec"), "%s/%s", fv, iv);
                                        } else if (!v) {
                                                cr_assert_null(msg, "%s", msg);
                                                cr_assert_not(tpm.present);
                                        } else if (strcmp(v, "1.2") && strcmp(v, "2.0")) {
                                                cr_assert(msg && strstr(msg, "Invalid TPM version"));
                                        } else if (fmt && imt && strcmp(fm, im) != 0) {
                                                cr_assert(msg && strstr(msg, "hw:tpm_model extra spec"));
                                        } else if (m && strcmp(m, "tpm-tis") && strcmp(m, "tpm-crb")) {
                                                cr_assert(msg && strstr(msg, "Invalid TPM model"), "model %s", m);
                                        } else if (m && !strcmp(m, "tpm-crb") && strcmp(v, "2.0")) {
                                                cr_assert_str_eq(msg, "TPM model CRB is only valid with TPM version 2.0.");
                                        } else {
                                                cr_assert_null(msg, "%s (fv=%s iv=%s fm=%s im=%s)", msg, fv, iv, fm, im);
                                                cr_assert(tpm.present);
                                                cr_assert_str_eq(tpm_version_to_string(tpm.version), v);
                                                cr_assert_str_eq(tpm_model_to_string(tpm.model), m ? m : "tpm-tis");
                                                vtpms++;
                                        }
                                        free(msg);
                                }
        cr_assert_eq(checked, 625);
        cr_assert_gt(vtpms, 50);
}

static struct tpm_host_offer host(bool enabled, unsigned modes) {
        return (struct tpm_host_offer) { .swtpm_enabled = enabled, .supported_secret_security = modes };
}

Test(tpmrules, host_restrictions) {
        struct vtpm_config tpm = { .present = true, .version = TPM_VERSION_2_0, .model = TPM_MODEL_CRB,
                                   .secret_security = SECRET_SECURITY_HOST };
        struct vtpm_config none = { 0 };
        struct tpm_host_offer cfg;
        vmsup_error *err = NULL;

        cfg = host(false, SECRET_SECURITY_ALL);
        cr_assert_eq(tpm_rules_check_host(&none, &cfg, &err), 0, "no vTPM needs nothing of the host");
        cr_assert_lt(tpm_rules_check_host(&tpm, &cfg, &err), 0);
        cr_assert_eq(err->kind, VMSUP_ERR_UNAVAILABLE);
        cr_assert(strstr(err->msg, "swtpm_enabled is false"), "%s", err->msg);
        err = vmsup_error_free(err);

        cfg = host(true, SECRET_SECURITY_USER | SECRET_SECURITY_DEPLOYMENT);
        cr_assert_lt(tpm_rules_check_host(&tpm, &cfg, &err), 0);
        cr_assert(strstr(err->msg, "TPM secret security 'host' is not enabled on this host"), "%s", err->msg);
        cr_assert(strstr(err->msg, "supported_tpm_secret_security"), "%s", err->msg);
        err = vmsup_error_free(err);

        cfg = host(true, SECRET_SECURITY_HOST);
        cr_assert_eq(tpm_rules_check_host(&tpm, &cfg, &err), 0);
}
