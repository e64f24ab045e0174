/* The host's COMPUTE_SECURITY_TPM_* traits, as Nova's libvirt driver reports them. */
#ifndef VMSUP_SUPERVISOR_TRAITS_H
#define VMSUP_SUPERVISOR_TRAITS_H

#include <stdbool.h>

#include "common/error.h"
#include "supervisor/hostconfig.h"

struct host_traits {
        bool tpm_1_2, tpm_2_0, tpm_tis, tpm_crb;
        unsigned secret_security; /* SECRET_SECURITY_* bits */
};

/* Probe swtpm, swtpm_setup and QEMU (Nova's _get_tpm_traits). With swtpm_enabled false
 * nothing is probed and no trait is set. With it true, a host that cannot run vTPMs at all
 * (no swtpm, no QEMU emulator backend, no swtpm user or group) is an error, as
 * nova-compute's _check_vtpm_support refuses to start. */
int host_traits_probe(const struct host_config *cfg, struct host_traits *ret, vmsup_error **err);

/* The trait names that are set, in os-traits spelling, NULL-terminated (static strings). */
void host_traits_names(const struct host_traits *t, const char *ret_names[8]);

#endif
