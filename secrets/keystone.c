#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <ini.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/secmem.h"
#include "common/util.h"
#include "secrets/keystone.h"
#include "crypto/secretbuf.h"

#define CREDENTIALS_MAX_SIZE (16 * 1024)

#define FIELD(name) { #name, offsetof(struct keystone_credentials, name) }
static const struct {
        const char *key;
        size_t offset;
} credential_fields[] = {
        FIELD(auth_type),           FIELD(username),
        FIELD(user_id),             FIELD(user_domain_name),
        FIELD(user_domain_id),      FIELD(password),
        FIELD(project_name),        FIELD(project_id),
        FIELD(project_domain_name), FIELD(project_domain_id),
        FIELD(application_credential_id), FIELD(application_credential_secret),
};
#undef FIELD

static char **credential_field(struct keystone_credentials *c, size_t i) {
        return (char **) ((char *) c + credential_fields[i].offset);
}

void keystone_credentials_clear(struct keystone_credentials *c) {
        if (!c)
                return;
        for (size_t i = 0; i < ARRAY_SIZE(credential_fields); i++)
                erase_and_free(*credential_field(c, i));
        explicit_bzero(c, sizeof(*c));
}

struct cred_parse {
        struct keystone_credentials *c;
        const char *path;
        vmsup_error **err;
        int r;
};

static int cred_handler(void *user, const char *section, const char *name, const char *value) {
        struct cred_parse *p = user;

        if (p->r < 0)
                return 1;
        if (*section) {
                p->r = vmsup_fail(p->err, VMSUP_ERR_CONFIG, 0,
                                  "Keystone credentials file '%s': [%s]: sections are not used (key = value lines only)",
                                  p->path, section);
                return 1;
        }
        for (size_t i = 0; i < ARRAY_SIZE(credential_fields); i++) {
                char **f;

                if (!streq(credential_fields[i].key, name))
                        continue;
                f = credential_field(p->c, i);
                if (*f) {
                        p->r = vmsup_fail(p->err, VMSUP_ERR_CONFIG, 0, "Keystone credentials file '%s': %s: set twice",
                                          p->path, name);
                        return 1;
                }
                *f = strdup(value);
                if (!*f)
                        p->r = vmsup_fail(p->err, VMSUP_ERR_SYSTEM, ENOMEM, "Keystone credentials file '%s'", p->path);
                return 1;
        }
        p->r = vmsup_fail(p->err, VMSUP_ERR_CONFIG, 0, "Keystone credentials file '%s': %s: unknown key", p->path,
                          name);
        return 1;
}

static int credentials_check(const struct keystone_credentials *c, const char *path, vmsup_error **err) {
        if (streq(c->auth_type, "password")) {
                if (!c->username && !c->user_id)
                        return vmsup_fail(err, VMSUP_ERR_CONFIG, 0,
                                          "Keystone credentials file '%s': auth_type password needs username or user_id",
                                          path);
                if (c->username && !c->user_id && !c->user_domain_name && !c->user_domain_id)
                        return vmsup_fail(err, VMSUP_ERR_CONFIG, 0,
                                          "Keystone credentials file '%s': username needs user_domain_name or "
                                          "user_domain_id",
                                          path);
                if (!c->password)
                        return vmsup_fail(err, VMSUP_ERR_CONFIG, 0,
                                          "Keystone credentials file '%s': auth_type password needs password", path);
                if (!c->project_id && !c->project_name)
                        return vmsup_fail(err, VMSUP_ERR_CONFIG, 0,
                                          "Keystone credentials file '%s': auth_type password needs project_id or "
                                          "project_name (Barbican needs a project-scoped token)",
                                          path);
                if (c->project_name && !c->project_id && !c->project_domain_name && !c->project_domain_id)
                        return vmsup_fail(err, VMSUP_ERR_CONFIG, 0,
                                          "Keystone credentials file '%s': project_name needs project_domain_name or "
                                          "project_domain_id",
                                          path);
                return 0;
        }
        if (streq(c->auth_type, "v3applicationcredential")) {
                if (!c->application_credential_id || !c->application_credential_secret)
                        return vmsup_fail(err, VMSUP_ERR_CONFIG, 0,
                                          "Keystone credentials file '%s': auth_type v3applicationcredential needs "
                                          "application_credential_id and application_credential_secret",
                                          path);
                return 0;
        }
        return vmsup_fail(err, VMSUP_ERR_CONFIG, 0,
                          "Keystone credentials file '%s': auth_type must be password or v3applicationcredential", path);
}

int keystone_credentials_load(const char *path, struct keystone_credentials *ret, vmsup_error **err) {
        _cleanup_close_ int fd = -1;
        _cleanup_erase_ char *text = NULL;
        struct keystone_credentials c = { 0 };
        struct cred_parse p = { .c = &c, .path = path, .err = err };
        struct stat st;
        size_t len = 0;
        int r;

        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY);
        if (fd < 0)
                return vmsup_fail(err, errno == ENOENT ? VMSUP_ERR_NOT_FOUND : VMSUP_ERR_CONFIG, errno,
                                  "open Keystone credentials file '%s'", path);
        if (fstat(fd, &st) < 0)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, errno, "stat Keystone credentials file '%s'", path);
        /* Secrets readable by anyone but root are already leaked: refuse rather than use them. */
        if (!S_ISREG(st.st_mode) || st.st_uid != 0 || (st.st_mode & 077))
                return vmsup_fail(err, VMSUP_ERR_CONFIG, 0,
                                  "Keystone credentials file '%s' is %s owned by uid %u with mode %04o: it must be a "
                                  "regular file owned by root with mode 0600 (chown root: '%s'; chmod 600 '%s')",
                                  path, S_ISREG(st.st_mode) ? "a file" : "not a regular file", (unsigned) st.st_uid,
                                  (unsigned) (st.st_mode & 07777), path, path);
        if (st.st_size > CREDENTIALS_MAX_SIZE)
                return vmsup_fail(err, VMSUP_ERR_CONFIG, 0,
                                  "Keystone credentials file '%s' is larger than %d bytes", path, CREDENTIALS_MAX_SIZE);
        /* Read straight into a buffer that is wiped: no stdio buffer keeps a copy. */
        text = malloc(CREDENTIALS_MAX_SIZE + 1);
        if (!text)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "read Keystone credentials file '%s'", path);
        for (;;) {
                ssize_t n = read(fd, text + len, CREDENTIALS_MAX_SIZE - len);

                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0)
                        return vmsup_fail(err, VMSUP_ERR_IO, errno, "read Keystone credentials file '%s'", path);
                if (n == 0)
                        break;
                len += (size_t) n;
                if (len == CREDENTIALS_MAX_SIZE)
                        return vmsup_fail(err, VMSUP_ERR_CONFIG, 0, "Keystone credentials file '%s' is larger than %d bytes",
                                          path, CREDENTIALS_MAX_SIZE);
        }
        text[len] = '\0';
        r = ini_parse_string(text, cred_handler, &p);
        if (p.r < 0) {
                r = p.r;
                goto fail;
        }
        if (r > 0) {
                r = vmsup_fail(err, VMSUP_ERR_CONFIG, 0,
                               "Keystone credentials file '%s':%d: not a key = value line", path, r);
                goto fail;
        }
        if (r < 0) {
                r = vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "parse Keystone credentials file '%s'", path);
                goto fail;
        }
        r = credentials_check(&c, path, err);
        if (r < 0)
                goto fail;
        *ret = c;
        return 0;
fail:
        keystone_credentials_clear(&c);
        return r;
}

void keystone_token_clear(struct keystone_token *t) {
        if (!t)
                return;
        erase_and_free(t->token);
        free(t->project_id);
        free(t->endpoint);
        memset(t, 0, sizeof(*t));
}

/* auth_url + "/v3" + path, whether auth_url ends with /v3 or not. */
static char *keystone_url(const char *auth_url, const char *path) {
        size_t n = strlen(auth_url);

        while (n > 0 && auth_url[n - 1] == '/')
                n--;
        if (n >= 3 && strncmp(auth_url + n - 3, "/v3", 3) == 0)
                n -= 3;
        return secretbuf_printf("%.*s/v3%s", (int) n, auth_url, path);
}

/* Keystone's {"error": {"code", "title", "message"}}, sanitized; NULL when absent. */
static char *keystone_error_text(const struct http_response *resp) {
        _cleanup_json_ json_object *root = NULL;
        json_object *e, *m;

        if (!resp->body_len)
                return NULL;
        root = json_tokener_parse(resp->body);
        if (!root || !json_object_object_get_ex(root, "error", &e) ||
            (!json_object_object_get_ex(e, "message", &m) && !json_object_object_get_ex(e, "title", &m)) ||
            !json_object_is_type(m, json_type_string))
                return NULL;
        return http_sanitize_text(json_object_get_string(m), 300);
}

static int keystone_http_error(const struct http_options *o, const char *what, const char *url,
                               const struct http_response *resp, vmsup_error **err) {
        _cleanup_free_ char *origin = http_url_origin(url);
        _cleanup_free_ char *text = keystone_error_text(resp);
        int code = resp->status == 401 || resp->status == 403 ? VMSUP_ERR_DENIED : VMSUP_ERR_UNAVAILABLE;

        return vmsup_fail(err, code, 0, "%s at %s refused %s (HTTP %ld)%s%s", o->service ? o->service : "Keystone",
                          origin ? origin : "?", what, resp->status, text ? ": " : "", text ? text : "");
}

static char *strip_slashes(const char *url) {
        size_t n = strlen(url);

        while (n > 0 && url[n - 1] == '/')
                n--;
        return strndup(url, n);
}

/* The endpoint of f in a Keystone v3 catalog array; NULL when absent (ENOENT) or bad. */
static int catalog_find(json_object *catalog, const struct keystone_service_filter *f, char **ret_url) {
        if (!json_object_is_type(catalog, json_type_array))
                return -EBADMSG;
        for (size_t i = 0; i < json_object_array_length(catalog); i++) {
                json_object *svc = json_object_array_get_idx(catalog, i), *type, *eps;

                if (!json_object_object_get_ex(svc, "type", &type) || !streq(json_object_get_string(type), f->type) ||
                    !json_object_object_get_ex(svc, "endpoints", &eps) || !json_object_is_type(eps, json_type_array))
                        continue;
                for (size_t k = 0; k < json_object_array_length(eps); k++) {
                        json_object *ep = json_object_array_get_idx(eps, k), *iface, *url, *region;

                        if (!json_object_object_get_ex(ep, "interface", &iface) ||
                            !streq(json_object_get_string(iface), f->interface) ||
                            !json_object_object_get_ex(ep, "url", &url) || !json_object_is_type(url, json_type_string))
                                continue;
                        if (f->region && !((json_object_object_get_ex(ep, "region_id", &region) &&
                                            streq(json_object_get_string(region), f->region)) ||
                                           (json_object_object_get_ex(ep, "region", &region) &&
                                            streq(json_object_get_string(region), f->region))))
                                continue;
                        *ret_url = strip_slashes(json_object_get_string(url));
                        return *ret_url ? 0 : -ENOMEM;
                }
        }
        return -ENOENT;
}

static int catalog_missing(const char *origin, const struct keystone_service_filter *f, vmsup_error **err) {
        return vmsup_fail(err, VMSUP_ERR_CONFIG, 0,
                          "the service catalog from Keystone at %s has no %s endpoint for interface %s%s%s: set "
                          "[barbican] endpoint, or check [barbican] interface and region_name",
                          origin, f->type, f->interface, f->region ? " in region " : "", f->region ? f->region : "");
}

/* A JSON string literal for s (quoted, escaped), in a buffer that is wiped on free. */
static char *json_quote(const char *s) {
        size_t n = 2;
        char *out, *o;

        for (const char *p = s; *p; p++)
                n += ((unsigned char) *p < 0x20 || *p == '"' || *p == '\\') ? 6 : 1;
        out = o = malloc(n + 1);
        if (!out)
                return NULL;
        *o++ = '"';
        for (const unsigned char *p = (const unsigned char *) s; *p; p++) {
                if (*p < 0x20 || *p == '"' || *p == '\\') {
                        snprintf(o, 7, "\\u%04x", *p);
                        o += 6;
                } else
                        *o++ = (char) *p;
        }
        *o++ = '"';
        *o = '\0';
        return out;
}

/* {"id": ...} or {"name": ..., "domain": {...}} */
static char *identity_object(const char *id, const char *name, const char *domain_id, const char *domain_name,
                             const char *extra) {
        _cleanup_erase_ char *qid = NULL, *qname = NULL, *qdom = NULL;

        if (id) {
                qid = json_quote(id);
                return qid ? secretbuf_printf("{\"id\": %s%s}", qid, extra) : NULL;
        }
        qname = json_quote(name);
        qdom = json_quote(domain_id ? domain_id : domain_name);
        if (!qname || !qdom)
                return NULL;
        return secretbuf_printf("{\"name\": %s, \"domain\": {\"%s\": %s}%s}", qname, domain_id ? "id" : "name", qdom,
                                extra);
}

/* The POST body; it holds the password or application credential secret: wipe it. */
static char *auth_body(const struct keystone_credentials *c) {
        if (streq(c->auth_type, "v3applicationcredential")) {
                _cleanup_erase_ char *qid = json_quote(c->application_credential_id);
                _cleanup_erase_ char *qsecret = json_quote(c->application_credential_secret);

                if (!qid || !qsecret)
                        return NULL;
                /* An application credential is scoped already: no "scope". */
                return secretbuf_printf("{\"auth\": {\"identity\": {\"methods\": [\"application_credential\"], "
                                        "\"application_credential\": {\"id\": %s, \"secret\": %s}}}}",
                                        qid, qsecret);
        }
        {
                _cleanup_erase_ char *qpass = json_quote(c->password);
                _cleanup_erase_ char *pass_member = NULL, *user = NULL, *project = NULL;

                if (!qpass)
                        return NULL;
                pass_member = secretbuf_printf(", \"password\": %s", qpass);
                if (!pass_member)
                        return NULL;
                user = identity_object(c->user_id, c->username, c->user_domain_id, c->user_domain_name, pass_member);
                project = identity_object(c->project_id, c->project_name, c->project_domain_id, c->project_domain_name,
                                          "");
                if (!user || !project)
                        return NULL;
                return secretbuf_printf("{\"auth\": {\"identity\": {\"methods\": [\"password\"], \"password\": "
                                        "{\"user\": %s}}, \"scope\": {\"project\": %s}}}",
                                        user, project);
        }
}

static const char *credentials_name(const struct keystone_credentials *c) {
        if (c->application_credential_id)
                return c->application_credential_id;
        return c->username ? c->username : c->user_id;
}

int keystone_token_issue(const struct http_options *o, const char *auth_url, const struct keystone_credentials *c,
                         const struct keystone_service_filter *f, struct keystone_token *ret, vmsup_error **err) {
        static const char *const headers[] = { "Content-Type: application/json", "Accept: application/json", NULL };
        _cleanup_free_ char *url = keystone_url(auth_url, "/auth/tokens");
        _cleanup_free_ char *origin = http_url_origin(auth_url);
        _cleanup_erase_ char *body = NULL;
        _cleanup_json_ json_object *root = NULL;
        struct http_response resp = { 0 };
        struct keystone_token t = { 0 };
        json_object *token, *catalog, *project, *id;
        int r;

        if (!url || !origin)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "Keystone token request");
        body = auth_body(c);
        if (!body)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "Keystone token request");
        r = http_request(o, &(struct http_request) { .method = "POST", .url = url, .headers = headers, .body = body,
                                                     .body_len = strlen(body), .idempotent = true },
                         &resp, err);
        if (r < 0)
                return vmsup_error_prefix(err, "get a Keystone token for '%s'", credentials_name(c));
        if (resp.status != 201 && resp.status != 200) {
                _cleanup_free_ char *what = NULL;

                what = secretbuf_printf("the credentials of '%s'", credentials_name(c));
                r = keystone_http_error(o, what ? what : "the credentials", auth_url, &resp, err);
                goto out;
        }
        if (!resp.subject_token || !*resp.subject_token) {
                r = vmsup_fail(err, VMSUP_ERR_UNAVAILABLE, 0, "Keystone at %s issued no token (no X-Subject-Token header)",
                               origin);
                goto out;
        }
        root = json_tokener_parse(resp.body);
        if (!root || !json_object_object_get_ex(root, "token", &token) ||
            !json_object_is_type(token, json_type_object)) {
                r = vmsup_fail(err, VMSUP_ERR_UNAVAILABLE, 0,
                               "Keystone at %s answered the token request with something other than a v3 token",
                               origin);
                goto out;
        }
        t.token = TAKE_PTR(resp.subject_token);
        if (json_object_object_get_ex(token, "project", &project) && json_object_object_get_ex(project, "id", &id) &&
            json_object_is_type(id, json_type_string)) {
                t.project_id = strdup(json_object_get_string(id));
                if (!t.project_id) {
                        r = vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "Keystone token");
                        goto out;
                }
        }
        if (f) {
                if (!json_object_object_get_ex(token, "catalog", &catalog)) {
                        r = catalog_missing(origin, f, err);
                        goto out;
                }
                r = catalog_find(catalog, f, &t.endpoint);
                if (r == -ENOENT) {
                        r = catalog_missing(origin, f, err);
                        goto out;
                }
                if (r == -EBADMSG) {
                        r = vmsup_fail(err, VMSUP_ERR_UNAVAILABLE, 0, "Keystone at %s: the token's catalog is not a list",
                                       origin);
                        goto out;
                }
                if (r == -ENOMEM) {
                        r = vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "Keystone catalog");
                        goto out;
                }
        }
        *ret = t;
        memset(&t, 0, sizeof(t));
        r = 0;
out:
        keystone_token_clear(&t);
        http_response_clear(&resp);
        return r;
}

int keystone_catalog_endpoint(const struct http_options *o, const char *auth_url, const char *token,
                              const struct keystone_service_filter *f, char **ret_url, vmsup_error **err) {
        _cleanup_free_ char *url = keystone_url(auth_url, "/auth/catalog");
        _cleanup_free_ char *origin = http_url_origin(auth_url);
        _cleanup_erase_ char *auth = NULL;
        _cleanup_json_ json_object *root = NULL;
        struct http_response resp = { 0 };
        json_object *catalog;
        char *endpoint = NULL;
        int r;

        if (!url || !origin)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "Keystone catalog request");
        if (strpbrk(token, "\r\n"))
                return vmsup_fail(err, VMSUP_ERR_DATA, 0, "the Keystone token holds a line break");
        auth = secretbuf_printf("X-Auth-Token: %s", token);
        if (!auth)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "Keystone catalog request");
        r = http_request(o,
                         &(struct http_request) { .method = "GET", .url = url, .idempotent = true,
                                                  .headers = (const char *const[]) { auth, "Accept: application/json",
                                                                                     NULL } },
                         &resp, err);
        if (r < 0)
                return vmsup_error_prefix(err, "get the service catalog");
        if (resp.status != 200) {
                r = keystone_http_error(o, "the token for the service catalog", auth_url, &resp, err);
                goto out;
        }
        root = json_tokener_parse(resp.body);
        if (!root || !json_object_object_get_ex(root, "catalog", &catalog)) {
                r = vmsup_fail(err, VMSUP_ERR_UNAVAILABLE, 0, "Keystone at %s answered GET /v3/auth/catalog without a catalog",
                               origin);
                goto out;
        }
        r = catalog_find(catalog, f, &endpoint);
        if (r == -ENOENT)
                r = catalog_missing(origin, f, err);
        else if (r == -EBADMSG)
                r = vmsup_fail(err, VMSUP_ERR_UNAVAILABLE, 0, "Keystone at %s: the catalog is not a list", origin);
        else if (r < 0)
                r = vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "Keystone catalog");
        else
                *ret_url = endpoint;
out:
        http_response_clear(&resp);
        return r;
}
