/* The guest spec against this host: the host files a spec may name. (The spec a migration
 * source sends against ours: nova/specmatch.h.) */
#ifndef VMSUP_SUPERVISOR_SPECMATCH_H
#define VMSUP_SUPERVISOR_SPECMATCH_H

#include "common/error.h"
#include "nova/guestspec.h"
#include "supervisor/hostconfig.h"

/* Refuse (VMSUP_ERR_DATA) a disk, backing layer, kernel or initrd that lies, after resolving symbolic
 * links, in [paths] secrets_dir, state_dir, run_dir or log_dir: vmsup's own files (local
 * secrets, sealed and live TPM state, sockets, logs) are never a guest's. The message
 * names source, the key and the path. */
int spec_match_host_dirs(const struct guest_spec *spec, const struct host_config *cfg, const char *source,
                         vmsup_error **err);

#endif
