#include "config.h"

#include <errno.h>
#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <string.h>

#include "common/secmem.h"
#include "common/util.h"
#include "common/vtpm.h"
#include "crypto/kdf.h"

const char *kdf_use_label(enum kdf_use use) {
        switch (use) {
        case KDF_USE_STATE_SEAL:
                return "vmsup state-seal v1";
        case KDF_USE_SWTPM_MIGRATION:
                return "vmsup swtpm-migration-key v1";
        }
        return NULL;
}

int kdf_check_passphrase(const void *passphrase, size_t len, vmsup_error **err) {
        const unsigned char *p = passphrase;

        if (len == 0 || len > KDF_PASSPHRASE_MAX)
                return vmsup_fail(err, VMSUP_ERR_DATA, 0, "vTPM passphrase: %zu bytes long, expected 1 to %d", len,
                                  KDF_PASSPHRASE_MAX);
        for (size_t i = 0; i < len; i++)
                if (p[i] < 0x20 || p[i] > 0x7e)
                        /* The offset only: the byte itself is part of the secret. */
                        return vmsup_fail(err, VMSUP_ERR_DATA, 0,
                                          "vTPM passphrase: the byte at offset %zu is not printable ASCII "
                                          "(Nova's passphrase is base64)",
                                          i);
        return 0;
}

/* HKDF-SHA256 (RFC 5869), with the guest uuid in info, not in the salt:
 * - info is where RFC 5869 puts context binding ("application and context specific
 *   information"); info = label || 0x00 || uuid gives every (use, guest) its own key, so
 *   a sealed file copied to another guest fails authentication even if two guests ever
 *   shared a passphrase, and the migration key is unrelated to the sealing key.
 * - the salt's job is to add independent randomness to a low-entropy or non-uniform
 *   input; the uuid is neither secret nor random (the user may choose it), and the
 *   passphrase is already 384 random bytes. So the salt is empty (HashLen zero bytes,
 *   RFC 5869 2.2) and one extraction serves every use.
 * The label never contains 0x00 and the uuid has a fixed length, so the encoding is
 * unambiguous. */
int kdf_derive_key(const void *passphrase, size_t len, const char *uuid, enum kdf_use use, uint8_t **ret_key,
                   vmsup_error **err) {
        _cleanup_secmem_ uint8_t *prk = NULL, *key = NULL;
        const char *label = kdf_use_label(use);
        uint8_t info[64 + 1 + 36];
        gnutls_datum_t ikm, salt = { .data = NULL, .size = 0 }, inf;
        size_t llen;
        int r;

        if (!label)
                return vmsup_fail(err, VMSUP_ERR_INTERNAL, 0, "derive a key: unknown use %d", (int) use);
        if (!uuid_is_valid(uuid))
                return vmsup_fail(err, VMSUP_ERR_INTERNAL, 0, "derive a key: '%s' is not a lower-case uuid", uuid);
        r = kdf_check_passphrase(passphrase, len, err);
        if (r < 0)
                return r;

        prk = secmem_alloc(32);
        key = secmem_alloc(KDF_KEY_LEN);
        if (!prk || !key)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "derive the %s key", label);

        ikm.data = (unsigned char *) passphrase;
        ikm.size = (unsigned) len;
        r = gnutls_hkdf_extract(GNUTLS_MAC_SHA256, &ikm, &salt, prk);
        if (r < 0)
                return vmsup_fail(err, VMSUP_ERR_INTERNAL, 0, "derive the %s key: HKDF extract: %s", label,
                                  gnutls_strerror(r));

        llen = strlen(label);
        memcpy(info, label, llen);
        info[llen] = 0;
        memcpy(info + llen + 1, uuid, 36);
        inf.data = info;
        inf.size = (unsigned) (llen + 1 + 36);
        ikm.data = prk;
        ikm.size = 32;
        r = gnutls_hkdf_expand(GNUTLS_MAC_SHA256, &ikm, &inf, key, KDF_KEY_LEN);
        if (r < 0)
                return vmsup_fail(err, VMSUP_ERR_INTERNAL, 0, "derive the %s key: HKDF expand: %s", label,
                                  gnutls_strerror(r));
        *ret_key = TAKE_PTR(key);
        return 0;
}
