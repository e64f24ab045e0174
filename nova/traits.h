/* The host's COMPUTE_SECURITY_TPM_* traits, as Nova's libvirt driver reports them, decided
 * from what a probe of the host found (supervisor/traits.c). No I/O here. */
#ifndef VMSUP_NOVA_TRAITS_H
#define VMSUP_NOVA_TRAITS_H

#include <stdbool.h>

/* What the host has, as probed. */
struct host_tpm_facts {
        bool swtpm_enabled;               /* [tpm] swtpm_enabled; false: nothing else was probed */
        bool qemu_tpm_tis, qemu_tpm_crb;  /* QEMU's -device help lists tpm-tis, tpm-crb */
        bool swtpm_tpm_1_2, swtpm_tpm_2_0; /* `swtpm --print-capabilities` features */
        bool setup_tpm_1_2, setup_tpm_2_0; /* `swtpm_setup --print-capabilities` features */
        unsigned secret_security;         /* [tpm] supported_tpm_secret_security: SECRET_SECURITY_* bits */
};

struct host_traits {
        bool tpm_1_2, tpm_2_0, tpm_tis, tpm_crb;
        unsigned secret_security; /* SECRET_SECURITY_* bits */
};

/* Nova's _get_tpm_traits: no trait unless swtpm is enabled; a TPM version when both swtpm
 * and swtpm_setup support it (both versions when neither reports any: an old swtpm); a
 * model when QEMU has its device; the secret-security modes the host supports. */
void host_traits_decide(const struct host_tpm_facts *facts, struct host_traits *ret);

/* The trait names that are set, in os-traits spelling, NULL-terminated (static strings). */
void host_traits_names(const struct host_traits *t, const char *ret_names[8]);

#endif
