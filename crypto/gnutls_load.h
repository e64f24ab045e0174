/* libgnutls is loaded on first use (dlopen), not linked: see crypto/gnutls_load.c. */
#ifndef VMSUP_CRYPTO_GNUTLS_LOAD_H
#define VMSUP_CRYPTO_GNUTLS_LOAD_H

#include "common/error.h"

/* Load libgnutls now, for a process that must have it before anything else happens (the
 * supervisor: before its seccomp filter, and to fail at once, exit 69, rather than at its
 * first seal). Other processes load it at their first gnutls call; one that finds no
 * library there ends with abort(), naming it: an installation without the library vmsup
 * was built against. */
int crypto_gnutls_load(vmsup_error **err);

#endif
