#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/secmem.h"
#include "common/util.h"
#include "secrets/barbican.h"
#include "secrets/http.h"
#include "crypto/secretbuf.h"

struct barbican_client {
        struct http_options http;
        char *endpoint;       /* no trailing '/' */
        char *origin;         /* scheme://host:port, for messages */
        char *auth_header;    /* "X-Auth-Token: ..." (wiped) or "X-Project-Id: ..." */
        char *user_header;    /* noauth: "X-User-Id: ..." or NULL */
        char *roles_header;   /* noauth: "X-Roles: ..." or NULL */
        char *ca_file;
};

int barbican_is_uuid(const char *s) {
        static const char pattern[] = "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx";

        if (!s || strlen(s) != BARBICAN_SECRET_ID_LEN)
                return 0;
        for (size_t i = 0; i < BARBICAN_SECRET_ID_LEN; i++)
                if (pattern[i] == '-' ? s[i] != '-' : !isxdigit((unsigned char) s[i]))
                        return 0;
        return 1;
}

static bool is_b64_text(const char *s, size_t len) {
        for (size_t i = 0; i < len; i++)
                if (!isalnum((unsigned char) s[i]) && s[i] != '+' && s[i] != '/')
                        return false;
        return true;
}

static bool header_value_ok(const char *s, size_t len) {
        for (size_t i = 0; i < len; i++)
                if (s[i] == '\r' || s[i] == '\n' || s[i] == '\0')
                        return false;
        return len > 0;
}

/* The endpoint without trailing '/' and without a trailing "/v1" (the paths add it). */
static char *endpoint_base(const char *url) {
        size_t n = strlen(url);

        while (n > 0 && url[n - 1] == '/')
                n--;
        if (n >= 3 && strncmp(url + n - 3, "/v1", 3) == 0)
                n -= 3;
        return strndup(url, n);
}

struct barbican_client *barbican_client_free(struct barbican_client *c) {
        if (!c)
                return NULL;
        free(c->endpoint);
        free(c->origin);
        erase_and_free(c->auth_header);
        free(c->user_header);
        free(c->roles_header);
        free(c->ca_file);
        free(c);
        return NULL;
}

static void barbican_client_freep(struct barbican_client **c) {
        barbican_client_free(*c);
}
#define _cleanup_barbican_client_ __attribute__((cleanup(barbican_client_freep)))

const char *barbican_client_endpoint(const struct barbican_client *c) {
        return c->endpoint;
}

static int client_alloc(const struct barbican_options *o, struct barbican_client **ret, vmsup_error **err) {
        struct barbican_client *c = calloc(1, sizeof(*c));

        if (!c)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "Barbican client");
        c->http = (struct http_options) {
                .service = "Barbican",
                .connect_timeout_ms = o->connect_timeout_ms,
                .timeout_ms = o->timeout_ms,
                .attempts = o->attempts,
                .backoff_ms = o->backoff_ms,
        };
        if (o->ca_file) {
                c->ca_file = strdup(o->ca_file);
                if (!c->ca_file) {
                        barbican_client_free(c);
                        return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "Barbican client");
                }
                c->http.ca_file = c->ca_file;
        }
        *ret = c;
        return 0;
}

static int client_set_endpoint(struct barbican_client *c, const char *url, vmsup_error **err) {
        if (strncmp(url, "http://", 7) != 0 && strncmp(url, "https://", 8) != 0)
                return vmsup_fail(err, VMSUP_ERR_CONFIG, 0, "the Barbican endpoint is not an http:// or https:// URL");
        c->endpoint = endpoint_base(url);
        c->origin = c->endpoint ? http_url_origin(c->endpoint) : NULL;
        if (!c->endpoint || !c->origin)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "Barbican client");
        return 0;
}

static struct keystone_service_filter key_manager_filter(const struct barbican_options *o) {
        return (struct keystone_service_filter) {
                .type = "key-manager",
                .interface = o->interface ? o->interface : "public",
                .region = o->region,
        };
}

static int set_token_header(struct barbican_client *c, const char *token, size_t len, vmsup_error **err) {
        if (!token || !header_value_ok(token, len))
                return vmsup_fail(err, VMSUP_ERR_DATA, 0,
                                  "the Keystone token for Barbican is empty or holds a line break or NUL");
        c->auth_header = secretbuf_printf("X-Auth-Token: %.*s", (int) len, token);
        if (!c->auth_header)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "Barbican client");
        return 0;
}

static int set_noauth_header(char **h, const char *name, const char *value, vmsup_error **err) {
        if (!header_value_ok(value, strlen(value)))
                return vmsup_fail(err, VMSUP_ERR_DATA, 0, "Barbican %s: empty or holds a line break", name);
        *h = secretbuf_printf("%s: %s", name, value);
        if (!*h)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "Barbican client");
        return 0;
}

int barbican_client_new(const struct barbican_options *o, const struct barbican_identity *id,
                        struct barbican_client **ret, vmsup_error **err) {
        _cleanup_barbican_client_ struct barbican_client *c = NULL;
        int r;

        r = client_alloc(o, &c, err);
        if (r < 0)
                return r;
        if (o->auth == BARBICAN_AUTH_NOAUTH) {
                if (!o->endpoint)
                        return vmsup_fail(err, VMSUP_ERR_CONFIG, 0,
                                          "[barbican] auth = noauth needs [barbican] endpoint");
                if (!id->project_id)
                        return vmsup_fail(err, VMSUP_ERR_DATA, 0,
                                          "Barbican without Keystone (auth = noauth) needs the guest's project id");
                r = set_noauth_header(&c->auth_header, "X-Project-Id", id->project_id, err);
                if (r == 0 && id->user_id)
                        r = set_noauth_header(&c->user_header, "X-User-Id", id->user_id, err);
                if (r == 0 && id->roles)
                        r = set_noauth_header(&c->roles_header, "X-Roles", id->roles, err);
                if (r == 0)
                        r = client_set_endpoint(c, o->endpoint, err);
                if (r < 0)
                        return r;
                *ret = TAKE_PTR(c);
                return 0;
        }

        r = set_token_header(c, id->token, id->token_len, err);
        if (r < 0)
                return r;
        if (o->endpoint)
                r = client_set_endpoint(c, o->endpoint, err);
        else if (!o->auth_url)
                r = vmsup_fail(err, VMSUP_ERR_CONFIG, 0,
                               "no Barbican endpoint: set [barbican] endpoint or [keystone] auth_url (for the catalog)");
        else {
                _cleanup_erase_ char *token = strndup(id->token, id->token_len);
                _cleanup_free_ char *url = NULL;
                struct keystone_service_filter f = key_manager_filter(o);
                struct http_options ko = c->http;

                if (!token)
                        return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "Barbican client");
                ko.service = "Keystone";
                r = keystone_catalog_endpoint(&ko, o->auth_url, token, &f, &url, err);
                if (r == 0)
                        r = client_set_endpoint(c, url, err);
        }
        if (r < 0)
                return r;
        *ret = TAKE_PTR(c);
        return 0;
}

int barbican_client_new_from_token(const struct barbican_options *o, const struct keystone_token *t,
                                   struct barbican_client **ret, vmsup_error **err) {
        _cleanup_barbican_client_ struct barbican_client *c = NULL;
        const char *endpoint = o->endpoint ? o->endpoint : t->endpoint;
        int r;

        if (o->auth != BARBICAN_AUTH_KEYSTONE)
                return vmsup_fail(err, VMSUP_ERR_CONFIG, 0, "a Keystone token needs [barbican] auth = keystone");
        if (!endpoint)
                return vmsup_fail(err, VMSUP_ERR_CONFIG, 0,
                                  "no Barbican endpoint: set [barbican] endpoint, or have Keystone's catalog list "
                                  "the key-manager service");
        r = client_alloc(o, &c, err);
        if (r < 0)
                return r;
        r = set_token_header(c, t->token, t->token ? strlen(t->token) : 0, err);
        if (r == 0)
                r = client_set_endpoint(c, endpoint, err);
        if (r < 0)
                return r;
        *ret = TAKE_PTR(c);
        return 0;
}

int barbican_passphrase_generate(char ret[BARBICAN_PASSPHRASE_LEN + 1], vmsup_error **err) {
        unsigned char raw[BARBICAN_PASSPHRASE_BYTES];
        int r;

        /* nova/crypto.py: base64.b64encode(os.urandom(384)): 512 characters, no '='. */
        r = gnutls_rnd(GNUTLS_RND_KEY, raw, sizeof(raw));
        if (r < 0)
                return vmsup_fail(err, VMSUP_ERR_INTERNAL, 0, "generate a vTPM passphrase: %s", gnutls_strerror(r));
        secretbuf_base64(raw, sizeof(raw), ret);
        gnutls_memset(raw, 0, sizeof(raw));
        return 0;
}

/* One request with this client's identity headers. */
static int client_request(struct barbican_client *c, const char *method, const char *path, const char *accept,
                          const char *body, bool idempotent, struct http_response *ret, vmsup_error **err) {
        _cleanup_free_ char *url = secretbuf_printf("%s%s", c->endpoint, path);
        const char *headers[6];
        size_t n = 0;

        if (!url)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "Barbican request");
        headers[n++] = c->auth_header;
        if (c->user_header)
                headers[n++] = c->user_header;
        if (c->roles_header)
                headers[n++] = c->roles_header;
        headers[n++] = accept;
        if (body)
                headers[n++] = "Content-Type: application/json";
        headers[n] = NULL;
        return http_request(&c->http,
                            &(struct http_request) { .method = method, .url = url, .headers = headers, .body = body,
                                                     .body_len = body ? strlen(body) : 0, .idempotent = idempotent },
                            ret, err);
}

/* "title: description" from Barbican's JSON error body, sanitized; NULL when absent. */
static char *barbican_error_text(const struct http_response *resp) {
        _cleanup_json_ json_object *root = NULL;
        _cleanup_free_ char *joined = NULL;
        json_object *title = NULL, *desc = NULL;
        const char *t, *d;

        if (!resp->body_len || !resp->content_type || !strstr(resp->content_type, "json"))
                return NULL;
        root = json_tokener_parse(resp->body);
        if (!root || !json_object_is_type(root, json_type_object))
                return NULL;
        json_object_object_get_ex(root, "title", &title);
        json_object_object_get_ex(root, "description", &desc);
        t = json_object_is_type(title, json_type_string) ? json_object_get_string(title) : NULL;
        d = json_object_is_type(desc, json_type_string) ? json_object_get_string(desc) : NULL;
        if (!t && !d)
                return NULL;
        joined = secretbuf_printf("%s%s%s", t ? t : "", t && d ? ": " : "", d ? d : "");
        if (!joined)
                return NULL;
        return http_sanitize_text(joined, 400);
}

/* Any answer but the expected one: status and Barbican's own words. */
static int barbican_http_error(struct barbican_client *c, const struct http_response *resp, const char *what,
                               vmsup_error **err) {
        _cleanup_free_ char *text = barbican_error_text(resp);

        return vmsup_fail(err, VMSUP_ERR_UNAVAILABLE, 0, "Barbican at %s answered HTTP %ld to %s%s%s%s", c->origin,
                          resp->status, what, text ? " (" : "", text ? text : "", text ? ")" : "");
}

static int barbican_refused(const char *what, long status, vmsup_error **err) {
        return vmsup_fail(err, VMSUP_ERR_DENIED, 0, "Barbican refused %s (HTTP %ld): the guest owner's credentials are required",
                          what, status);
}

static int check_secret_id(const char *secret_id, vmsup_error **err) {
        if (!barbican_is_uuid(secret_id))
                return vmsup_fail(err, VMSUP_ERR_DATA, 0, "vTPM secret id '%.40s%s' is not a UUID", secret_id,
                                  strlen(secret_id) > 40 ? "..." : "");
        return 0;
}

/* The UUID at the end of a secret_ref ("<endpoint>/v1/secrets/<uuid>"). */
static int secret_ref_uuid(const char *ref, char ret[BARBICAN_SECRET_ID_LEN + 1]) {
        const char *slash = strrchr(ref, '/');
        const char *last = slash ? slash + 1 : ref;

        if (!slash || (size_t) (slash - ref) < 8 || strncmp(slash - 8, "/secrets", 8) != 0 || !barbican_is_uuid(last))
                return -EBADMSG;
        memcpy(ret, last, BARBICAN_SECRET_ID_LEN + 1);
        return 0;
}

int barbican_secret_create(struct barbican_client *c, const char *instance_uuid,
                           char ret_passphrase[BARBICAN_PASSPHRASE_LEN + 1],
                           char ret_secret_id[BARBICAN_SECRET_ID_LEN + 1], vmsup_error **err) {
        char passphrase[BARBICAN_PASSPHRASE_LEN + 1];
        char payload[secretbuf_base64_len(BARBICAN_PASSPHRASE_LEN) + 1];
        char id[BARBICAN_SECRET_ID_LEN + 1];
        _cleanup_erase_ char *body = NULL;
        _cleanup_free_ char *what = NULL;
        _cleanup_json_ json_object *root = NULL;
        struct http_response resp = { 0 };
        json_object *ref;
        int r;

        if (!barbican_is_uuid(instance_uuid))
                return vmsup_fail(err, VMSUP_ERR_DATA, 0, "instance UUID '%.40s' is not a UUID", instance_uuid);
        what = secretbuf_printf("to store the vTPM secret for instance %s", instance_uuid);
        if (!what)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "Barbican request");
        r = barbican_passphrase_generate(passphrase, err);
        if (r < 0)
                return r;
        /* As castellan + barbicanclient store Nova's Passphrase: the 512-character text is
         * the secret's bytes, sent base64-encoded as application/octet-stream. */
        secretbuf_base64((const unsigned char *) passphrase, BARBICAN_PASSPHRASE_LEN, payload);
        body = secretbuf_printf("{\"name\": \"vTPM secret for instance %s\", \"secret_type\": \"passphrase\", "
                                "\"payload\": \"%s\", \"payload_content_type\": \"application/octet-stream\", "
                                "\"payload_content_encoding\": \"base64\"}",
                                instance_uuid, payload);
        gnutls_memset(payload, 0, sizeof(payload));
        if (!body) {
                r = vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "Barbican request");
                goto out;
        }
        r = client_request(c, "POST", "/v1/secrets", "Accept: application/json", body, false, &resp, err);
        if (r < 0) {
                vmsup_error_prefix(err, "store the vTPM secret for instance %s", instance_uuid);
                goto out;
        }
        if (resp.status == 401 || resp.status == 403) {
                r = barbican_refused(what, resp.status, err);
                goto out;
        }
        if (resp.status != 201) {
                r = barbican_http_error(c, &resp, "the request to store the vTPM secret", err);
                goto out;
        }
        root = json_tokener_parse(resp.body);
        if (!root || !json_object_object_get_ex(root, "secret_ref", &ref) || !json_object_is_type(ref, json_type_string) ||
            secret_ref_uuid(json_object_get_string(ref), id) < 0) {
                _cleanup_free_ char *shown = http_sanitize_text(resp.body, 200);

                r = vmsup_fail(err, VMSUP_ERR_UNAVAILABLE, 0,
                               "Barbican at %s accepted the vTPM secret for instance %s but answered without a "
                               "secret_ref ending in a UUID ('%s'): the secret may be left behind in Barbican",
                               c->origin, instance_uuid, shown ? shown : "");
                goto out;
        }
        memcpy(ret_passphrase, passphrase, sizeof(passphrase));
        memcpy(ret_secret_id, id, sizeof(id));
        r = 0;
out:
        gnutls_memset(passphrase, 0, sizeof(passphrase));
        http_response_clear(&resp);
        return r;
}

int barbican_secret_fetch(struct barbican_client *c, const char *secret_id,
                          char ret_passphrase[BARBICAN_PASSPHRASE_LEN + 1], vmsup_error **err) {
        _cleanup_free_ char *path = NULL, *what = NULL;
        struct http_response resp = { 0 };
        int r;

        r = check_secret_id(secret_id, err);
        if (r < 0)
                return r;
        path = secretbuf_printf("/v1/secrets/%s/payload", secret_id);
        what = secretbuf_printf("access to vTPM secret %s", secret_id);
        if (!path || !what)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "Barbican request");
        r = client_request(c, "GET", path, "Accept: application/octet-stream", NULL, true, &resp, err);
        if (r < 0)
                return vmsup_error_prefix(err, "fetch vTPM secret %s", secret_id);
        if (resp.status == 401 || resp.status == 403)
                r = barbican_refused(what, resp.status, err);
        else if (resp.status == 404)
                /* nova/crypto.py: "Your vTPM is likely to be unrecoverable"; never offer a reset. */
                r = vmsup_fail(err, VMSUP_ERR_DATA, 0,
                               "vTPM secret %s not found in Barbican: the TPM state cannot be decrypted", secret_id);
        else if (resp.status != 200)
                r = barbican_http_error(c, &resp, "the request for the vTPM secret", err);
        else if (resp.body_len != BARBICAN_PASSPHRASE_LEN || !is_b64_text(resp.body, resp.body_len))
                r = vmsup_fail(err, VMSUP_ERR_DATA, 0,
                               "vTPM secret %s in Barbican is not a vTPM passphrase (%zu bytes; expected %d base64 "
                               "characters)",
                               secret_id, resp.body_len, BARBICAN_PASSPHRASE_LEN);
        else {
                memcpy(ret_passphrase, resp.body, BARBICAN_PASSPHRASE_LEN);
                ret_passphrase[BARBICAN_PASSPHRASE_LEN] = '\0';
                r = 0;
        }
        http_response_clear(&resp);
        return r;
}

int barbican_secret_delete(struct barbican_client *c, const char *secret_id, vmsup_error **err) {
        _cleanup_free_ char *path = NULL, *what = NULL;
        struct http_response resp = { 0 };
        int r;

        r = check_secret_id(secret_id, err);
        if (r < 0)
                return r;
        path = secretbuf_printf("/v1/secrets/%s", secret_id);
        what = secretbuf_printf("access to vTPM secret %s", secret_id);
        if (!path || !what)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "Barbican request");
        r = client_request(c, "DELETE", path, "Accept: application/json", NULL, true, &resp, err);
        if (r < 0)
                return vmsup_error_prefix(err, "delete vTPM secret %s", secret_id);
        if (resp.status == 204 || resp.status == 200)
                r = 1;
        else if (resp.status == 404)
                r = 0; /* nova/crypto.py delete_vtpm_secret: already gone is fine */
        else if (resp.status == 401 || resp.status == 403)
                r = barbican_refused(what, resp.status, err);
        else
                r = barbican_http_error(c, &resp, "the request to delete the vTPM secret", err);
        http_response_clear(&resp);
        return r;
}

/* The anchor is one key of the secret's user metadata (Barbican's /v1/secrets/{id}/metadata,
 * which Debian 12's barbican-api 15 serves: GET and PUT per key, POST to add one; keys are
 * stored lower-case). The owner's token (or the service's) may read and write it, as the
 * payload; a reader role may not. */
#define ANCHOR_PATH "/v1/secrets/%s/metadata/" BARBICAN_ANCHOR_KEY

int barbican_secret_anchor_get(struct barbican_client *c, const char *secret_id, uint64_t *ret_generation,
                               vmsup_error **err) {
        _cleanup_free_ char *path = NULL, *what = NULL;
        _cleanup_json_ json_object *root = NULL;
        struct http_response resp = { 0 };
        json_object *value = NULL;
        const char *text;
        char *end;
        unsigned long long v;
        int r;

        r = check_secret_id(secret_id, err);
        if (r < 0)
                return r;
        path = secretbuf_printf(ANCHOR_PATH, secret_id);
        what = secretbuf_printf("access to the metadata of vTPM secret %s", secret_id);
        if (!path || !what)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "Barbican request");
        r = client_request(c, "GET", path, "Accept: application/json", NULL, true, &resp, err);
        if (r < 0)
                return vmsup_error_prefix(err, "read the TPM state anchor of vTPM secret %s", secret_id);
        if (resp.status == 404)
                r = 0; /* none yet (or no such secret: the payload's fetch says so) */
        else if (resp.status == 401 || resp.status == 403)
                r = barbican_refused(what, resp.status, err);
        else if (resp.status != 200)
                r = barbican_http_error(c, &resp, "the request for the TPM state anchor", err);
        else if (!(root = json_tokener_parse(resp.body)) || !json_object_object_get_ex(root, "value", &value) ||
                 !json_object_is_type(value, json_type_string) || !isdigit((unsigned char) *(text = json_object_get_string(value))) ||
                 (errno = 0, v = strtoull(text, &end, 10), errno != 0 || *end))
                r = vmsup_fail(err, VMSUP_ERR_DATA, 0,
                               "the metadata '%s' of vTPM secret %s in Barbican is not a TPM state generation",
                               BARBICAN_ANCHOR_KEY, secret_id);
        else {
                *ret_generation = v;
                r = 1;
        }
        http_response_clear(&resp);
        return r;
}

int barbican_secret_anchor_put(struct barbican_client *c, const char *secret_id, uint64_t generation,
                               vmsup_error **err) {
        _cleanup_free_ char *path = NULL, *what = NULL, *body = NULL, *coll = NULL;
        struct http_response resp = { 0 };
        int r;

        r = check_secret_id(secret_id, err);
        if (r < 0)
                return r;
        path = secretbuf_printf(ANCHOR_PATH, secret_id);
        what = secretbuf_printf("a change to the metadata of vTPM secret %s", secret_id);
        body = secretbuf_printf("{\"key\": \"" BARBICAN_ANCHOR_KEY "\", \"value\": \"%" PRIu64 "\"}", generation);
        if (!path || !what || !body)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "Barbican request");
        /* PUT replaces the key and answers 404 while it does not exist; POST (to the
         * collection) adds it and answers 409 when another writer was first: then PUT
         * again. Each carries the whole value, so a repeat is harmless. */
        r = client_request(c, "PUT", path, "Accept: application/json", body, true, &resp, err);
        if (r >= 0 && resp.status == 404) {
                http_response_clear(&resp);
                coll = secretbuf_printf("/v1/secrets/%s/metadata", secret_id);
                r = coll ? client_request(c, "POST", coll, "Accept: application/json", body, false, &resp, err)
                         : vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "Barbican request");
                if (r >= 0 && resp.status == 409) {
                        http_response_clear(&resp);
                        r = client_request(c, "PUT", path, "Accept: application/json", body, true, &resp, err);
                }
        }
        if (r < 0)
                return vmsup_error_prefix(err, "write the TPM state anchor of vTPM secret %s", secret_id);
        if (resp.status == 200 || resp.status == 201)
                r = 0;
        else if (resp.status == 401 || resp.status == 403)
                r = barbican_refused(what, resp.status, err);
        else
                r = barbican_http_error(c, &resp, "the request to write the TPM state anchor", err);
        http_response_clear(&resp);
        return r;
}
