/* The guest spec against this host: the host files a spec may name, and, on the
 * destination of a live migration, the spec the source sends against the one this host's
 * orchestrator declared (`vmsup run --incoming --spec FILE`, docs/migration.md). */
#ifndef VMSUP_SUPERVISOR_SPECMATCH_H
#define VMSUP_SUPERVISOR_SPECMATCH_H

#include "common/error.h"
#include "nova/guestspec.h"
#include "supervisor/hostconfig.h"

/* Refuse (65) a disk, backing layer, kernel or initrd that lies, after resolving symbolic
 * links, in [paths] secrets_dir, state_dir, run_dir or log_dir: vmsup's own files (local
 * secrets, sealed and live TPM state, sockets, logs) are never a guest's. The message
 * names source, the key and the path. */
int spec_match_host_dirs(const struct guest_spec *spec, const struct host_config *cfg, const char *source,
                         vmsup_error **err);

/* A migration source's spec (theirs) against this host's (ours): the same uuid, vCPUs,
 * memory, vTPM and firmware keys, kernel, initrd and cmdline, and the same disks (count,
 * order, paths, formats, readonly, backing chains); ours' vtpm_secret_uuid when it has
 * one. Anything else (name, owner, flavor and image names, other extra specs and
 * properties) is ours alone. 65 naming the first key that differs, with both values. */
int spec_match_incoming(const struct guest_spec *ours, const struct guest_spec *theirs, vmsup_error **err);

#endif
