/* What every layer says about a guest: the one UUID rule and the vTPM's kinds. */
#ifndef VMSUP_COMMON_VTPM_H
#define VMSUP_COMMON_VTPM_H

#include <stdbool.h>

enum tpm_version { TPM_VERSION_1_2 = 1, TPM_VERSION_2_0 };
enum tpm_model { TPM_MODEL_TIS = 1, TPM_MODEL_CRB };

const char *tpm_version_to_string(enum tpm_version v); /* "1.2", "2.0"; NULL otherwise */
const char *tpm_model_to_string(enum tpm_model m);     /* "tpm-tis", "tpm-crb"; NULL otherwise */

/* Nova's TPM secret-security modes, as a bit set. */
enum secret_security {
        SECRET_SECURITY_USER = 1 << 0,
        SECRET_SECURITY_HOST = 1 << 1,
        SECRET_SECURITY_DEPLOYMENT = 1 << 2,
};
#define SECRET_SECURITY_ALL (SECRET_SECURITY_USER | SECRET_SECURITY_HOST | SECRET_SECURITY_DEPLOYMENT)

/* "user" -> SECRET_SECURITY_USER ...; 0 for anything else. */
unsigned secret_security_from_string(const char *s);
const char *secret_security_to_string(unsigned mode);

/* A guest UUID as Nova writes it: lower-case hex, 8-4-4-4-12. */
bool uuid_is_valid(const char *s);

#endif
