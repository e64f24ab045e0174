#include "config.h"

#include <ctype.h>
#include <string.h>

#include "common/vtpm.h"

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
