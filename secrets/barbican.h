/* The Barbican (OpenStack key manager) client for vTPM secrets, in Nova's format
 * (nova/crypto.py ensure_vtpm_secret / delete_vtpm_secret). */
#ifndef VMSUP_SECRETS_BARBICAN_H
#define VMSUP_SECRETS_BARBICAN_H

#include <stddef.h>
#include <stdint.h>

#include "common/error.h"
#include "secrets/keystone.h"

/* Nova's vTPM passphrase: base64 of 384 random bytes, 512 characters, no padding. */
#define BARBICAN_PASSPHRASE_BYTES 384
#define BARBICAN_PASSPHRASE_LEN 512
#define BARBICAN_SECRET_ID_LEN 36 /* a UUID */

enum barbican_auth {
        BARBICAN_AUTH_KEYSTONE, /* X-Auth-Token: a Keystone token */
        BARBICAN_AUTH_NOAUTH,   /* X-Project-Id (Barbican's unauthenticated pipeline; tests) */
};

struct barbican_options {
        enum barbican_auth auth;
        const char *endpoint;        /* key-manager URL; NULL (keystone only): from the catalog */
        const char *auth_url;        /* Keystone, for the catalog when endpoint is NULL */
        const char *interface;       /* catalog interface; NULL: "public" */
        const char *region;          /* catalog region; NULL: any */
        const char *ca_file;         /* NULL: the system's CA store */
        unsigned connect_timeout_ms; /* per attempt; 0: 10 s */
        unsigned timeout_ms;         /* per attempt; 0: 30 s */
        unsigned attempts;           /* 0: 3 */
        unsigned backoff_ms;         /* first pause between attempts, doubled after each; 0: 500 ms */
};

/* Whom the requests are made as. */
struct barbican_identity {
        const char *token;      /* keystone: the guest owner's or the service's token ... */
        size_t token_len;       /* ... and its length (a buffer: no NUL needed) */
        const char *project_id; /* noauth: X-Project-Id (required) */
        const char *user_id;    /* noauth: X-User-Id (optional) */
        const char *roles;      /* noauth: X-Roles, comma-separated (optional: Barbican then assumes admin) */
};

struct barbican_client;

/* A client for one identity. The token is copied (into memory wiped on free). In keystone
 * mode without an endpoint, the key-manager endpoint is looked up in the token's catalog
 * (GET auth_url/v3/auth/catalog). */
int barbican_client_new(const struct barbican_options *o, const struct barbican_identity *id,
                        struct barbican_client **ret, vmsup_error **err);
/* Same, with a service token from keystone_token_issue: its catalog endpoint is used
 * when o->endpoint is NULL. */
int barbican_client_new_from_token(const struct barbican_options *o, const struct keystone_token *t,
                                   struct barbican_client **ret, vmsup_error **err);
struct barbican_client *barbican_client_free(struct barbican_client *c);

/* The key-manager endpoint in use (no trailing '/'). */
const char *barbican_client_endpoint(const struct barbican_client *c);

/* A new passphrase as Nova makes one: 384 bytes from gnutls_rnd(GNUTLS_RND_KEY), base64,
 * 512 characters, NUL-terminated. */
int barbican_passphrase_generate(char ret[BARBICAN_PASSPHRASE_LEN + 1], vmsup_error **err);

/* Generate a passphrase and store it as Nova does: a "passphrase" secret named
 * "vTPM secret for instance <instance_uuid>". On success ret_passphrase holds it and
 * ret_secret_id the secret's UUID (BARBICAN_SECRET_ID_LEN + 1 bytes). */
int barbican_secret_create(struct barbican_client *c, const char *instance_uuid,
                           char ret_passphrase[BARBICAN_PASSPHRASE_LEN + 1],
                           char ret_secret_id[BARBICAN_SECRET_ID_LEN + 1], vmsup_error **err);

/* GET the passphrase of secret_id into ret_passphrase (checked: 512 base64 characters).
 * Errors: 401/403 VMSUP_ERR_DENIED; not found VMSUP_ERR_DATA (the sealed state cannot be
 * opened without it; retrying will not help); unreachable VMSUP_ERR_UNAVAILABLE. */
int barbican_secret_fetch(struct barbican_client *c, const char *secret_id,
                          char ret_passphrase[BARBICAN_PASSPHRASE_LEN + 1], vmsup_error **err);

/* DELETE secret_id. Idempotent as Nova's delete_vtpm_secret: a secret already gone is
 * success. Returns 1 when deleted, 0 when it was not there. */
int barbican_secret_delete(struct barbican_client *c, const char *secret_id, vmsup_error **err);

/* The rollback anchor of a guest's TPM state (docs/vmsup.8, TPM STATE): the newest
 * sealed generation, kept as the metadata key BARBICAN_ANCHOR_KEY of its vTPM secret.
 * get: 1 found (*ret_generation), 0 not set; put: set or replace it. 401/403 are
 * VMSUP_ERR_DENIED, a value that is not a number VMSUP_ERR_DATA. */
#define BARBICAN_ANCHOR_KEY "vmsup_tpm_generation"
int barbican_secret_anchor_get(struct barbican_client *c, const char *secret_id, uint64_t *ret_generation,
                               vmsup_error **err);
int barbican_secret_anchor_put(struct barbican_client *c, const char *secret_id, uint64_t generation,
                               vmsup_error **err);

/* Whether s is a canonical UUID (8-4-4-4-12 hex digits). */
int barbican_is_uuid(const char *s);

#endif
