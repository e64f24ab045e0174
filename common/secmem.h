/* Buffers for secrets: passphrases, derived keys, plaintext TPM state. */
#ifndef VMSUP_CRYPTO_SECMEM_H
#define VMSUP_CRYPTO_SECMEM_H

#include <stdbool.h>
#include <stddef.h>

/* A zeroed buffer of len bytes (len 0 is allowed) in its own mapping: left out of core
 * dumps (MADV_DONTDUMP) and locked in RAM when RLIMIT_MEMLOCK allows (else it is still
 * usable, only swappable). NULL with errno ENOMEM on failure. */
void *secmem_alloc(size_t len);

/* Wipe all of it, unlock, unmap. Accepts NULL; returns NULL. */
void *secmem_free(void *p);

/* The len given to secmem_alloc(). */
size_t secmem_size(const void *p);

/* Whether the buffer is locked in RAM (false when RLIMIT_MEMLOCK was too small). */
bool secmem_locked(const void *p);

/* Zero the buffer's bytes in a way the compiler cannot drop; it stays allocated. */
void secmem_wipe(void *p);

/* Zero len bytes at p in a way the compiler cannot drop. */
void erase(void *p, size_t len);

/* Wipe a malloc'd buffer (all malloc_usable_size() of it) then free it. Accepts NULL;
 * returns NULL. For short-lived heap copies of secrets whose length is not at hand. */
void *erase_and_free(void *p);

static inline void secmem_freep(void *p) {
        secmem_free(*(void **) p);
}
static inline void erase_and_freep(void *p) {
        erase_and_free(*(void **) p);
}
#define _cleanup_secmem_ __attribute__((cleanup(secmem_freep)))
#define _cleanup_erase_ __attribute__((cleanup(erase_and_freep)))

#endif
