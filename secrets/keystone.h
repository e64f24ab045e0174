/* Keystone v3 for the Barbican client: the service's credentials file, token issue
 * (password or application credential) and the service catalog. */
#ifndef VMSUP_SECRETS_KEYSTONE_H
#define VMSUP_SECRETS_KEYSTONE_H

#include "common/error.h"
#include "secrets/http.h"

/* The root-only credentials file ([keystone] credentials_file): key = value lines with
 * keystoneauth's option names, no section. auth_type = password needs username or
 * user_id, password, and a project (project_id, or project_name with a project domain);
 * auth_type = v3applicationcredential needs application_credential_id and
 * application_credential_secret. Every field is wiped by keystone_credentials_clear. */
struct keystone_credentials {
        char *auth_type;
        char *username;
        char *user_id;
        char *user_domain_name;
        char *user_domain_id;
        char *password;
        char *project_name;
        char *project_id;
        char *project_domain_name;
        char *project_domain_id;
        char *application_credential_id;
        char *application_credential_secret;
};

/* Read path, which must be a regular file owned by root with no group or other access
 * (0600 or stricter); anything else is refused (VMSUP_ERR_CONFIG) without reading it. */
int keystone_credentials_load(const char *path, struct keystone_credentials *ret, vmsup_error **err);
void keystone_credentials_clear(struct keystone_credentials *c);

/* Where to find a service in the catalog: type ("key-manager"), interface ("public",
 * "internal", "admin") and region (NULL: any). */
struct keystone_service_filter {
        const char *type;
        const char *interface;
        const char *region;
};

struct keystone_token {
        char *token;      /* X-Subject-Token, NUL-terminated; wiped by keystone_token_clear */
        char *project_id; /* the project the token is scoped to; NULL if unscoped */
        char *endpoint;   /* the filter's endpoint from the token's catalog; NULL without a filter */
};

/* POST auth_url/v3/auth/tokens (auth_url with or without its /v3). With a filter, the
 * token's catalog must hold that endpoint (VMSUP_ERR_CONFIG otherwise). Errors: 401/403 are
 * VMSUP_ERR_DENIED naming the credentials' user or application credential id, never secrets. */
int keystone_token_issue(const struct http_options *o, const char *auth_url, const struct keystone_credentials *c,
                         const struct keystone_service_filter *f, struct keystone_token *ret, vmsup_error **err);
void keystone_token_clear(struct keystone_token *t);

/* GET auth_url/v3/auth/catalog with token (e.g. the guest owner's) and return the
 * filter's endpoint URL (no trailing '/'). Not in the catalog: VMSUP_ERR_CONFIG. */
int keystone_catalog_endpoint(const struct http_options *o, const char *auth_url, const char *token,
                              const struct keystone_service_filter *f, char **ret_url, vmsup_error **err);

#endif
