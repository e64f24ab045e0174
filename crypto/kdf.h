/* Keys derived from a guest's vTPM passphrase (HKDF-SHA256), one per use. */
#ifndef VMSUP_CRYPTO_KDF_H
#define VMSUP_CRYPTO_KDF_H

#include <stddef.h>
#include <stdint.h>

#include "common/error.h"

#define KDF_KEY_LEN 32 /* AES-256 */
#define KDF_PASSPHRASE_MAX 4096

enum kdf_use {
        KDF_USE_STATE_SEAL,       /* "vmsup state-seal v1": the sealed TPM state files */
        KDF_USE_SWTPM_MIGRATION,  /* "vmsup swtpm-migration-key v1": swtpm --migration-key */
};

/* The HKDF info label of a use. */
const char *kdf_use_label(enum kdf_use use);

/* Refuse a passphrase that is empty, longer than KDF_PASSPHRASE_MAX or holds a byte that
 * is not printable ASCII (Nova's is 512 characters of base64). Exit 65; the message never
 * shows the passphrase. */
int kdf_check_passphrase(const void *passphrase, size_t len, vmsup_error **err);

/* Derive the KDF_KEY_LEN-byte key of use for guest uuid (lower-case canonical) from the
 * passphrase (opaque bytes after the check above). *ret_key is secmem: free it with
 * secmem_free(). */
int kdf_derive_key(const void *passphrase, size_t len, const char *uuid, enum kdf_use use, uint8_t **ret_key,
                   vmsup_error **err);

#endif
