/* Sealed files: AES-256-GCM under a guest's state-seal key, bound to the guest, the file
 * name and a generation (DESIGN.md "TPM state at rest").
 *
 * Layout (integers big-endian); every header byte is GCM additional data:
 *   0   8  magic "VMSUPSL1"
 *   8   2  format version (1)
 *   10 36  guest uuid, lower-case ASCII
 *   46  2  name length n (1..255)
 *   48  n  file name ("tpm2-00.permall"), without ".sealed"
 *   48+n 8 generation
 *   56+n 12 nonce, random for every write
 *   68+n   ciphertext, then the 16-byte tag
 * Every failure to open one exits 65. */
#ifndef VMSUP_CRYPTO_SEAL_H
#define VMSUP_CRYPTO_SEAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/error.h"
#include "crypto/kdf.h"

#define SEAL_MAGIC "VMSUPSL1"
#define SEAL_FORMAT_VERSION 1
#define SEAL_NAME_MAX 255
#define SEAL_NONCE_LEN 12
#define SEAL_TAG_LEN 16
#define SEAL_SUFFIX ".sealed"
#define SEAL_FILE_MAX (64u * 1024 * 1024)
#define SEAL_MANIFEST_NAME "state.manifest" /* stored as state.manifest.sealed */

/* Header bytes plus tag: a sealed file is this much longer than its plaintext. */
size_t seal_overhead(const char *name);

/* A name may be sealed when it is 1..SEAL_NAME_MAX of [A-Za-z0-9._-], not starting
 * with '.' (it becomes a file name in the state dir). */
bool seal_name_is_valid(const char *name);

/* Seal plaintext into a new malloc'd buffer (*ret_sealed, *ret_len). key: KDF_KEY_LEN
 * bytes from kdf_derive_key(KDF_USE_STATE_SEAL). */
int seal_buffer(const uint8_t *key, const char *uuid, const char *name, uint64_t generation, const void *plaintext,
                size_t len, uint8_t **ret_sealed, size_t *ret_len, vmsup_error **err);

/* Authenticate and decrypt a sealed buffer that must have been sealed for uuid as name.
 * *ret_plaintext is secmem (secmem_free() it). A uuid or name in the header that differs
 * is reported as what the header claims; it is a fact only when authentication passed,
 * and the message says which. Messages start "open sealed state '<name>': ". */
int seal_open_buffer(const uint8_t *key, const char *uuid, const char *name, const void *data, size_t len,
                     uint8_t **ret_plaintext, size_t *ret_len, uint64_t *ret_generation, vmsup_error **err);

/* A guest's state dir and the key and uuid its files are sealed with. */
struct seal_dir {
        int dirfd;          /* opened O_DIRECTORY by the caller */
        const char *path;   /* the dir's path, for messages */
        const uint8_t *key; /* KDF_KEY_LEN bytes, KDF_USE_STATE_SEAL */
        const char *uuid;
};

/* Seal plaintext as <dir>/<name>.sealed (0600), durably and atomically replacing the
 * old one (common/fileio.h: a crash leaves the old or the new file, never a torn one). */
int seal_file_write(const struct seal_dir *d, const char *name, uint64_t generation, const void *plaintext,
                    size_t len, vmsup_error **err);

/* Open <dir>/<name>.sealed; refuse it when its generation is below min_generation (an
 * older file put back). A missing file fails with -ENOENT, exit 66. Messages start
 * "open sealed state '<dir>/<name>.sealed': ". */
int seal_file_read(const struct seal_dir *d, const char *name, uint64_t min_generation, uint8_t **ret_plaintext,
                   size_t *ret_len, uint64_t *ret_generation, vmsup_error **err);

/* The manifest: a sealed record of the newest generation of every sealed state file.
 * The generation inside a file's authenticated header stops an older copy of that file
 * from passing as newer, but only if something remembers what "newer" was: the
 * manifest does, and it is sealed too, so it cannot be edited either.
 *
 * Order of writes: the file first, then the manifest. A crash in between leaves a file
 * newer than its record, which opens fine (the check is "at least the recorded one"),
 * and seal_state_read() raises the record to it, so the next write never reuses that
 * generation. The reverse order could leave a record newer than every file: a TPM that
 * can no longer start.
 *
 * Limitation: someone who can replace files in the state dir can put back an older
 * manifest together with the files that were current when it was written: a complete,
 * consistent older snapshot. Nothing in the dir can tell that apart from the real
 * newest state; it takes a record outside the attacker's reach: the rollback anchor
 * (the manifest's generation, in the local store or in Barbican; vmsup(8), TPM STATE). What the manifest does stop:
 * one file put back on its own, a file from another guest or under another name, and
 * deleting the manifest while sealed files remain. */
struct seal_manifest_entry {
        char *name;
        uint64_t generation;
};
struct seal_manifest {
        uint64_t generation; /* of state.manifest.sealed itself */
        size_t n;
        struct seal_manifest_entry *entries;
};

/* Load state.manifest.sealed. When it does not exist, an empty manifest is returned if
 * the dir holds no other *.sealed file and the load is refused (exit 65) if it does. */
int seal_manifest_load(const struct seal_dir *d, struct seal_manifest *ret, vmsup_error **err);

/* Write m to state.manifest.sealed with generation m->generation + 1 (updated on
 * success). */
int seal_manifest_store(const struct seal_dir *d, struct seal_manifest *m, vmsup_error **err);

/* The recorded generation of name; 0 when none. */
uint64_t seal_manifest_get(const struct seal_manifest *m, const char *name);

/* Record generation for name when higher than what is recorded (in memory only). */
int seal_manifest_raise(struct seal_manifest *m, const char *name, uint64_t generation, vmsup_error **err);

void seal_manifest_clear(struct seal_manifest *m);

/* Seal a state file with the generation after its record, then record it and store the
 * manifest. */
int seal_state_write(const struct seal_dir *d, struct seal_manifest *m, const char *name, const void *plaintext,
                     size_t len, vmsup_error **err);

/* Open a state file: refused when older than its record; the record is raised to the
 * file's generation in memory (see above). */
int seal_state_read(const struct seal_dir *d, struct seal_manifest *m, const char *name, uint8_t **ret_plaintext,
                    size_t *ret_len, vmsup_error **err);

#endif
