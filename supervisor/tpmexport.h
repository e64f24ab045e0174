/* `vmsup tpm export` and `vmsup tpm import` (vmsup(8), TPM STATE): a guest's TPM state
 * as one file, and back.
 *
 * The file is sealed as crypto/seal.h seals a state file: under the guest's state-seal
 * key, with the guest's UUID, the name "tpm-export" and the state's generation in its
 * authenticated header (magic VMSUPSL1, format version), so that it says whose and how
 * new it is without a key, and opens only for that guest and unaltered. Inside (never
 * on disk in plaintext, and only sealed files besides the spec and VARS):
 *
 *     vmsup-tpm-export 1\n
 *     file <name> <length>\n<bytes>      for the manifest and each sealed state file it
 *                                        records (as sealed, not re-encrypted), the
 *                                        guest spec copy and the OVMF VARS when present
 *
 * An import is staged in <state>/.import.new, committed by renaming that to
 * <state>/.import.ready, then moved into place; a crash before the rename leaves the old
 * state (the stage is removed at the next start or import), one after it is completed
 * at the next start or import (tpm_import_finish()). The imported manifest is sealed
 * again with a generation above both the current state's and the anchor's, so the
 * anchor only ever goes up and neither the replaced state nor an older copy of it can
 * come back. */
#ifndef VMSUP_SUPERVISOR_TPMEXPORT_H
#define VMSUP_SUPERVISOR_TPMEXPORT_H

#include <stdbool.h>
#include <stdint.h>

#include "common/error.h"
#include "common/vtpm.h"
#include "supervisor/guestdirs.h"

#define TPM_EXPORT_NAME "tpm-export"

/* Write the export of the sealed state in d->state to path (0600, atomically). The
 * state's generation in *ret_generation. */
int tpm_export_write(const struct guest_dirs *d, const char *uuid, const uint8_t *key, const char *path,
                     uint64_t *ret_generation, vmsup_error **err);

struct tpm_import_result {
        uint64_t export_generation; /* the state's in the file */
        uint64_t current;           /* the newest the guest had: its state's or the anchor's */
        uint64_t generation;        /* the imported state's now (above both) */
        bool rollback;              /* export_generation < current */
};

/* Import data (an export's bytes) into the stopped guest's state dir (the caller holds
 * its lock). anchor: the rollback anchor (0 when none). An export older than the newest
 * generation the guest had is refused (VMSUP_ERR_DATA, naming both) unless
 * allow_rollback. Nothing in the state dir changes on any error. */
int tpm_import(const struct guest_dirs *d, const char *uuid, const uint8_t *key, enum tpm_version version,
               const void *data, size_t len, uint64_t anchor, bool allow_rollback, struct tpm_import_result *ret,
               vmsup_error **err);

/* Complete a committed import a crash interrupted, remove an uncommitted one: before the
 * sealed state is opened. */
int tpm_import_finish(const struct guest_dirs *d, vmsup_error **err);

#endif
