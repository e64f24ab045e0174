#include "config.h"

#include <stddef.h>

#include "common/vtpm.h"
#include "nova/traits.h"

void host_traits_decide(const struct host_tpm_facts *f, struct host_traits *ret) {
        struct host_traits t = { 0 };

        if (!f->swtpm_enabled) {
                *ret = t;
                return;
        }
        /* libvirt reports a TPM version when both programs support it; Nova falls back to
         * both versions when nothing is reported at all (old swtpm without the features). */
        t.tpm_1_2 = f->swtpm_tpm_1_2 && f->setup_tpm_1_2;
        t.tpm_2_0 = f->swtpm_tpm_2_0 && f->setup_tpm_2_0;
        if (!f->swtpm_tpm_1_2 && !f->swtpm_tpm_2_0 && !f->setup_tpm_1_2 && !f->setup_tpm_2_0)
                t.tpm_1_2 = t.tpm_2_0 = true;
        t.tpm_tis = f->qemu_tpm_tis;
        t.tpm_crb = f->qemu_tpm_crb;
        t.secret_security = f->secret_security;
        *ret = t;
}

void host_traits_names(const struct host_traits *t, const char *ret_names[8]) {
        size_t n = 0;

        if (t->tpm_1_2)
                ret_names[n++] = "COMPUTE_SECURITY_TPM_1_2";
        if (t->tpm_2_0)
                ret_names[n++] = "COMPUTE_SECURITY_TPM_2_0";
        if (t->tpm_crb)
                ret_names[n++] = "COMPUTE_SECURITY_TPM_CRB";
        if (t->tpm_tis)
                ret_names[n++] = "COMPUTE_SECURITY_TPM_TIS";
        if (t->secret_security & SECRET_SECURITY_DEPLOYMENT)
                ret_names[n++] = "COMPUTE_SECURITY_TPM_SECRET_SECURITY_DEPLOYMENT";
        if (t->secret_security & SECRET_SECURITY_HOST)
                ret_names[n++] = "COMPUTE_SECURITY_TPM_SECRET_SECURITY_HOST";
        if (t->secret_security & SECRET_SECURITY_USER)
                ret_names[n++] = "COMPUTE_SECURITY_TPM_SECRET_SECURITY_USER";
        ret_names[n] = NULL;
}
