/* swtpm's state files, checked by libtpms before swtpm is handed them. */
#ifndef VMSUP_TPMSTATE_BLOB_H
#define VMSUP_TPMSTATE_BLOB_H

#include <stddef.h>
#include <stdint.h>

#include "common/error.h"
#include "common/vtpm.h"

enum tpm_blob_kind {
        TPM_BLOB_PERMANENT = 1, /* <prefix>.permall */
        TPM_BLOB_VOLATILE,      /* <prefix>.volatilestate */
        TPM_BLOB_SAVESTATE,     /* <prefix>.savestate */
};

/* The kind of swtpm state file name ("tpm2-00.permall") for version; 0 when name is not
 * one (wrong prefix for the version, or another file). */
int tpm_blob_kind_of(enum tpm_version version, const char *name);

/* Check swtpm's framing of one state file (10-byte header: version 2, hdrsize 10,
 * totlen = the file's length, no flags; then exactly one DATA TLV) and point
 * *ret_payload into data at what libtpms gets. name is for messages. A file encrypted
 * with swtpm's own --key, or a migration blob, is refused: vmsup gives swtpm no key. */
int tpm_blob_unwrap(const char *name, const uint8_t *data, size_t len, const uint8_t **ret_payload,
                    size_t *ret_len, vmsup_error **err);

struct tpm_blob_file {
        const char *name; /* for messages: a file name or path */
        enum tpm_blob_kind kind;
        const uint8_t *data; /* the whole file, swtpm's header included */
        size_t len;
};

/* Have libtpms take the files as the state of a TPM of version (TPMLIB_SetState of each,
 * then TPMLIB_ValidateState of all) in a forked child, so that nothing libtpms keeps in
 * its globals reaches this process. A permanent state is required; a volatile state is
 * checked against it. Refusals exit 65 and name the file libtpms refused. */
int tpm_blob_validate(enum tpm_version version, const struct tpm_blob_file *files, size_t n, vmsup_error **err);

/* Read the state files of version in dirfd (permall required, volatilestate and
 * savestate when present) and validate them as above; dir is for messages. */
int tpm_blob_validate_dir(int dirfd, const char *dir, enum tpm_version version, vmsup_error **err);

#endif
