/* On the destination of a live migration: the spec the source sends against the one this
 * host's orchestrator declared (`vmsup run --incoming --spec FILE`, docs/migration.md).
 * A comparison only, no I/O. */
#ifndef VMSUP_NOVA_SPECMATCH_H
#define VMSUP_NOVA_SPECMATCH_H

#include "common/error.h"
#include "nova/guestspec.h"

/* A migration source's spec (theirs) against this host's (ours): the same uuid, vCPUs,
 * memory, vTPM and firmware keys, kernel, initrd and cmdline, graphics, and the same disks (count,
 * order, paths, formats, readonly, backing chains); ours' vtpm_secret_uuid when it has
 * one. Anything else (name, owner, flavor and image names, other extra specs and
 * properties) is ours alone. VMSUP_ERR_DATA naming the first key that differs, with both values. */
int spec_match_incoming(const struct guest_spec *ours, const struct guest_spec *theirs, vmsup_error **err);

#endif
