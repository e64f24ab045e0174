/* Small buffers for secrets (passphrases, tokens, request bodies that carry them): built
 * without intermediate copies, wiped when freed (erase_and_free / _cleanup_erase_). */
#ifndef VMSUP_CRYPTO_SECRETBUF_H
#define VMSUP_CRYPTO_SECRETBUF_H

#include <stddef.h>

/* Like asprintf, but measures first and formats once into a buffer of the exact size, so
 * no growing buffer leaves a copy of the arguments behind. NULL on failure. */
char *secretbuf_printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Standard base64 (RFC 4648, '=' padding) of len bytes into out, which holds
 * secretbuf_base64_len(len) + 1 bytes; NUL-terminated. */
#define secretbuf_base64_len(len) (((len) + 2) / 3 * 4)
void secretbuf_base64(const unsigned char *in, size_t len, char *out);

#endif
