#include "config.h"

#include <ctype.h>
#include <string.h>

#include "common/util.h"
#include "common/vtpm.h"

static const char *const secret_security_names[] = { "user", "host", "deployment" };

unsigned secret_security_from_string(const char *s) {
        for (size_t i = 0; i < ARRAY_SIZE(secret_security_names); i++)
                if (streq(s, secret_security_names[i]))
                        return 1u << i;
        return 0;
}

const char *secret_security_to_string(unsigned mode) {
        for (size_t i = 0; i < ARRAY_SIZE(secret_security_names); i++)
                if (mode == 1u << i)
                        return secret_security_names[i];
        return NULL;
}

const char *tpm_version_to_string(enum tpm_version v) {
        return v == TPM_VERSION_1_2 ? "1.2" : v == TPM_VERSION_2_0 ? "2.0" : NULL;
}

const char *tpm_model_to_string(enum tpm_model m) {
        return m == TPM_MODEL_TIS ? "tpm-tis" : m == TPM_MODEL_CRB ? "tpm-crb" : NULL;
}

bool uuid_is_valid(const char *s) {
        if (!s || strlen(s) != 36)
                return false;
        for (int i = 0; i < 36; i++) {
                if (i == 8 || i == 13 || i == 18 || i == 23) {
                        if (s[i] != '-')
                                return false;
                } else if (!isxdigit((unsigned char) s[i]) || isupper((unsigned char) s[i]))
                        return false;
        }
        return true;
}
