/* Nova's vTPM rules: which TPM a guest gets from its flavor and image. */
#ifndef VMSUP_NOVA_TPMRULES_H
#define VMSUP_NOVA_TPMRULES_H

#include <json-c/json.h>
#include <stdbool.h>

#include "common/error.h"
#include "common/vtpm.h"
#include "nova/guestspec.h"


struct vtpm_config {
        bool present; /* false: the guest gets no vTPM */
        enum tpm_version version;
        enum tpm_model model;
        unsigned secret_security; /* one SECRET_SECURITY_* bit */
};


/* Nova's get_vtpm_constraint() plus the secret-security rule of the scheduler's
 * tpm_secret_security_filter(). Violations are VMSUP_ERR_DATA, in Nova's words. */
int tpm_rules_resolve(const struct guest_spec *spec, struct vtpm_config *ret, vmsup_error **err);

/* What a host offers (its [tpm] section, as Nova's scheduler sees it). */
struct tpm_host_offer {
        bool swtpm_enabled;
        unsigned supported_secret_security; /* SECRET_SECURITY_* bits */
        const char *where;                  /* the config file it comes from, for messages */
};

/* What Nova checks by scheduling: the host must enable swtpm and the mode (else VMSUP_ERR_UNAVAILABLE). */
int tpm_rules_check_host(const struct vtpm_config *tpm, const struct tpm_host_offer *host, vmsup_error **err);

/* {"version": "2.0", "model": "tpm-crb", "secret_security": "user"}, or JSON null. */
json_object *vtpm_config_to_json(const struct vtpm_config *tpm);

#endif
