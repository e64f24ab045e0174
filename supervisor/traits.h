/* Probe the host for what its vTPM traits depend on (programs, swtpm's capabilities,
 * users); nova/traits.h decides the COMPUTE_SECURITY_TPM_* traits from those facts. */
#ifndef VMSUP_SUPERVISOR_TRAITS_H
#define VMSUP_SUPERVISOR_TRAITS_H

#include "common/error.h"
#include "nova/traits.h"
#include "supervisor/hostconfig.h"

/* Probe swtpm, swtpm_setup and QEMU (for Nova's _get_tpm_traits). With swtpm_enabled false
 * nothing is probed. With it true, a host that cannot run vTPMs at all (no swtpm, no QEMU
 * emulator backend, no swtpm user or group) is an error, as nova-compute's
 * _check_vtpm_support refuses to start. */
int host_traits_probe_facts(const struct host_config *cfg, struct host_tpm_facts *ret, vmsup_error **err);

/* The probe, then host_traits_decide(). */
int host_traits_probe(const struct host_config *cfg, struct host_traits *ret, vmsup_error **err);

#endif
