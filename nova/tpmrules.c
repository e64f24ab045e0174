#include "config.h"

#include <errno.h>
#include <string.h>

#include "common/util.h"
#include "nova/tpmrules.h"

/* Python truthiness of an optional string. */
static bool truthy(const char *s) {
        return s && *s;
}

/* Nova's _get_unique_flavor_image_meta(): values set in both places must agree;
 * the result is "flavor_value or image_value". */
static int unique_flavor_image_meta(const struct guest_spec *spec, const char *key, const char **ret,
                                    vmsup_error **err) {
        char flavor_key[64], image_key[64];
        const char *fv, *iv;

        snprintf(flavor_key, sizeof(flavor_key), "hw:%s", key);
        snprintf(image_key, sizeof(image_key), "hw_%s", key);
        fv = guest_spec_extra_spec(spec, flavor_key);
        iv = guest_spec_image_property(spec, image_key);
        if (truthy(fv) && truthy(iv) && !streq(fv, iv))
                return vmsup_fail(err, VMSUP_ERR_DATA, 0,
                                  "Flavor %s has hw:%s extra spec explicitly set to %s, conflicting with image %s "
                                  "which has hw_%s explicitly set to %s.",
                                  spec->flavor_name, key, fv, spec->image_name ? spec->image_name : "None", key, iv);
        *ret = truthy(fv) ? fv : iv;
        return 0;
}

/* Python's repr() of a str, as Nova's "%r" prints it. */
static void py_repr(const char *s, char *buf, size_t len) {
        char quote = strchr(s, '\'') && !strchr(s, '"') ? '"' : '\'';
        size_t o = 0;

        buf[o++] = quote;
        for (; *s && o + 6 < len; s++) {
                unsigned char c = (unsigned char) *s;

                if (c == '\\' || c == (unsigned char) quote)
                        o += (size_t) snprintf(buf + o, len - o, "\\%c", c);
                else if (c == '\n')
                        o += (size_t) snprintf(buf + o, len - o, "\\n");
                else if (c == '\t')
                        o += (size_t) snprintf(buf + o, len - o, "\\t");
                else if (c == '\r')
                        o += (size_t) snprintf(buf + o, len - o, "\\r");
                else if (c < 0x20 || c == 0x7f)
                        o += (size_t) snprintf(buf + o, len - o, "\\x%02x", c);
                else
                        buf[o++] = (char) c;
        }
        buf[o++] = quote;
        buf[o] = '\0';
}

int tpm_rules_resolve(const struct guest_spec *spec, struct vtpm_config *ret, vmsup_error **err) {
        struct vtpm_config tpm = { 0 };
        const char *version, *model, *security;
        char repr[256];
        int r;

        r = unique_flavor_image_meta(spec, "tpm_version", &version, err);
        if (r < 0)
                return r;
        if (!version) { /* no version, no vTPM: a lone model is ignored */
                *ret = tpm;
                return 0;
        }
        if (streq(version, "1.2"))
                tpm.version = TPM_VERSION_1_2;
        else if (streq(version, "2.0"))
                tpm.version = TPM_VERSION_2_0;
        else {
                py_repr(version, repr, sizeof(repr));
                return vmsup_fail(err, VMSUP_ERR_DATA, 0, "Invalid TPM version %s. Allowed values: 1.2, 2.0.", repr);
        }

        r = unique_flavor_image_meta(spec, "tpm_model", &model, err);
        if (r < 0)
                return r;
        if (!model)
                tpm.model = TPM_MODEL_TIS;
        else if (streq(model, "tpm-tis"))
                tpm.model = TPM_MODEL_TIS;
        else if (streq(model, "tpm-crb"))
                tpm.model = TPM_MODEL_CRB;
        else {
                py_repr(model, repr, sizeof(repr));
                return vmsup_fail(err, VMSUP_ERR_DATA, 0, "Invalid TPM model %s. Allowed values: tpm-tis, tpm-crb.",
                                  repr);
        }
        if (tpm.model == TPM_MODEL_CRB && tpm.version != TPM_VERSION_2_0)
                return vmsup_fail(err, VMSUP_ERR_DATA, 0, "TPM model CRB is only valid with TPM version 2.0.");

        /* The flavor alone decides (get_tpm_secret_security_constraint), "or 'user'". */
        security = guest_spec_extra_spec(spec, "hw:tpm_secret_security");
        if (!truthy(security))
                security = "user";
        tpm.secret_security = secret_security_from_string(security);
        if (!tpm.secret_security)
                return vmsup_fail(err, VMSUP_ERR_DATA, 0, "TPM secret security '%s' is not supported.", security);

        tpm.present = true;
        *ret = tpm;
        return 0;
}

int tpm_rules_check_host(const struct vtpm_config *tpm, const struct tpm_host_offer *host, vmsup_error **err) {
        const char *where = host->where ? host->where : "built-in defaults";

        if (!tpm->present)
                return 0;
        if (!host->swtpm_enabled)
                return vmsup_fail(err, VMSUP_ERR_UNAVAILABLE, 0,
                                  "a vTPM is requested (TPM %s, %s) but this host does not offer vTPMs: "
                                  "[tpm] swtpm_enabled is false (%s)",
                                  tpm_version_to_string(tpm->version), tpm_model_to_string(tpm->model), where);
        if (!(host->supported_secret_security & tpm->secret_security))
                return vmsup_fail(err, VMSUP_ERR_UNAVAILABLE, 0,
                                  "TPM secret security '%s' is not enabled on this host: "
                                  "[tpm] supported_tpm_secret_security leaves it out (%s)",
                                  secret_security_to_string(tpm->secret_security), where);
        return 0;
}

json_object *vtpm_config_to_json(const struct vtpm_config *tpm) {
        json_object *o;

        if (!tpm->present)
                return NULL; /* json-c's NULL is JSON null */
        o = json_object_new_object();
        if (!o)
                return NULL;
        json_object_object_add(o, "version", json_object_new_string(tpm_version_to_string(tpm->version)));
        json_object_object_add(o, "model", json_object_new_string(tpm_model_to_string(tpm->model)));
        json_object_object_add(o, "secret_security",
                               json_object_new_string(secret_security_to_string(tpm->secret_security)));
        return o;
}
