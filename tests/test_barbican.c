/* The Barbican and Keystone clients: against a real Barbican 15 on loopback (one per test
 * program, started by tests/barbican/barbican.sh in Criterion's runner process), and
 * against a fake HTTP server for what a real one will not do on demand. */
#include "config.h"

#include <criterion/criterion.h>
#include <criterion/hooks.h>
#include <ctype.h>
#include <gnutls/gnutls.h>
#include <json-c/json.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/proc.h"
#include "common/util.h"
#include "secrets/barbican.h"
#include "secrets/http.h"
#include "secrets/keystone.h"
#include "tests/fakehttp.h"
#include "tests/barbican_fixture.h"
#include "tests/helpers.h"

#define INSTANCE "6d1b8a52-8c4e-4f43-9a3e-0c1f5b7d2e90"

/* Short timeouts so that failures stay quick. */
static struct barbican_options noauth_options(const char *endpoint) {
        return (struct barbican_options) {
                .auth = BARBICAN_AUTH_NOAUTH,
                .endpoint = endpoint,
                .connect_timeout_ms = 2000,
                .timeout_ms = 20000,
                .attempts = 3,
                .backoff_ms = 100,
        };
}

static struct barbican_client *client_for(const struct barbican_options *o, const char *project) {
        struct barbican_client *c = NULL;
        vmsup_error *err = NULL;

        if (barbican_client_new(o, &(struct barbican_identity) { .project_id = project, .user_id = "owner" }, &c,
                                &err) < 0)
                cr_assert_fail("barbican_client_new: %s", err->msg);
        return c;
}

static bool is_passphrase(const char *p) {
        if (strlen(p) != BARBICAN_PASSPHRASE_LEN)
                return false;
        for (const char *s = p; *s; s++)
                if (!isalnum((unsigned char) *s) && *s != '+' && *s != '/')
                        return false;
        return true;
}

static char *random_project(void) {
        char *p = NULL;

        cr_assert(asprintf(&p, "project-%d-%ld", (int) getpid(), (long) time(NULL)) > 0);
        return p;
}

static double now_s(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double) ts.tv_sec + (double) ts.tv_nsec / 1e9;
}

/* ---- against the real Barbican ---- */

Test(barbican, create_fetch_delete_fetch_delete, .timeout = 120) {
        struct barbican_options o = noauth_options(test_barbican_url());
        char *project = random_project();
        struct barbican_client *c = client_for(&o, project);
        char pass[BARBICAN_PASSPHRASE_LEN + 1], got[BARBICAN_PASSPHRASE_LEN + 1], id[BARBICAN_SECRET_ID_LEN + 1];
        char *expected = NULL;
        vmsup_error *err = NULL;

        if (barbican_secret_create(c, INSTANCE, pass, id, &err) < 0)
                cr_assert_fail("create: %s", err->msg);
        cr_assert(is_passphrase(pass), "Nova's format: 512 base64 characters, got '%s'", pass);
        cr_assert(barbican_is_uuid(id), "secret id '%s'", id);

        if (barbican_secret_fetch(c, id, got, &err) < 0)
                cr_assert_fail("fetch: %s", err->msg);
        cr_assert_str_eq(got, pass, "Barbican gives back the 512-character text that was stored");

        cr_assert_eq(barbican_secret_delete(c, id, &err), 1, "%s", err ? err->msg : "");
        cr_assert_lt(barbican_secret_fetch(c, id, got, &err), 0);
        cr_assert(asprintf(&expected, "vTPM secret %s not found in Barbican: the TPM state cannot be decrypted", id) > 0);
        cr_assert_str_eq(err->msg, expected);
        cr_assert_eq(err->kind, VMSUP_ERR_DATA);
        cr_assert_null(strstr(err->msg, "reset"), "never suggest resetting the TPM");
        err = vmsup_error_free(err);

        cr_assert_eq(barbican_secret_delete(c, id, &err), 0, "deleting again is fine (Nova's delete_vtpm_secret): %s",
                     err ? err->msg : "");
        free(expected);
        free(project);
        barbican_client_free(c);
}

/* The secret's metadata, as Nova's (castellan + barbicanclient) would leave it. */
Test(barbican, stored_as_nova_stores_it, .timeout = 120) {
        struct barbican_options o = noauth_options(test_barbican_url());
        char *project = random_project(), *url = NULL, *hdr = NULL;
        struct barbican_client *c = client_for(&o, project);
        char pass[BARBICAN_PASSPHRASE_LEN + 1], id[BARBICAN_SECRET_ID_LEN + 1];
        struct http_response resp = { 0 };
        vmsup_error *err = NULL;
        json_object *meta, *v, *ct;

        if (barbican_secret_create(c, INSTANCE, pass, id, &err) < 0)
                cr_assert_fail("create: %s", err->msg);
        cr_assert(asprintf(&url, "%s/v1/secrets/%s", test_barbican_url(), id) > 0);
        cr_assert(asprintf(&hdr, "X-Project-Id: %s", project) > 0);
        if (http_request(&(struct http_options) { .service = "Barbican" },
                         &(struct http_request) { .method = "GET", .url = url, .idempotent = true,
                                                  .headers = (const char *const[]) { hdr, "Accept: application/json",
                                                                                     NULL } },
                         &resp, &err) < 0)
                cr_assert_fail("GET metadata: %s", err->msg);
        cr_assert_eq(resp.status, 200, "%s", resp.body);
        meta = json_tokener_parse(resp.body);
        cr_assert_not_null(meta, "%s", resp.body);
        cr_assert(json_object_object_get_ex(meta, "name", &v));
        cr_assert_str_eq(json_object_get_string(v), "vTPM secret for instance " INSTANCE);
        cr_assert(json_object_object_get_ex(meta, "secret_type", &v));
        cr_assert_str_eq(json_object_get_string(v), "passphrase");
        cr_assert(json_object_object_get_ex(meta, "content_types", &ct));
        cr_assert(json_object_object_get_ex(ct, "default", &v));
        cr_assert_str_eq(json_object_get_string(v), "application/octet-stream");
        json_object_put(meta);
        http_response_clear(&resp);
        cr_assert_eq(barbican_secret_delete(c, id, &err), 1);
        free(url);
        free(hdr);
        free(project);
        barbican_client_free(c);
}

Test(barbican, another_project_is_refused, .timeout = 120) {
        struct barbican_options o = noauth_options(test_barbican_url());
        char *project = random_project(), *expected = NULL;
        struct barbican_client *owner = client_for(&o, project), *other = client_for(&o, "someone-else");
        char pass[BARBICAN_PASSPHRASE_LEN + 1], got[BARBICAN_PASSPHRASE_LEN + 1], id[BARBICAN_SECRET_ID_LEN + 1];
        vmsup_error *err = NULL;

        if (barbican_secret_create(owner, INSTANCE, pass, id, &err) < 0)
                cr_assert_fail("create: %s", err->msg);
        cr_assert(asprintf(&expected,
                           "Barbican refused access to vTPM secret %s (HTTP 403): the guest owner's credentials are "
                           "required",
                           id) > 0);
        cr_assert_lt(barbican_secret_fetch(other, id, got, &err), 0);
        cr_assert_str_eq(err->msg, expected);
        cr_assert_eq(err->kind, VMSUP_ERR_DENIED);
        err = vmsup_error_free(err);
        cr_assert_lt(barbican_secret_delete(other, id, &err), 0);
        cr_assert_str_eq(err->msg, expected);
        err = vmsup_error_free(err);
        /* still there for its owner */
        cr_assert_eq(barbican_secret_fetch(owner, id, got, &err), 0, "%s", err ? err->msg : "");
        cr_assert_str_eq(got, pass);
        cr_assert_eq(barbican_secret_delete(owner, id, &err), 1);
        free(expected);
        free(project);
        barbican_client_free(owner);
        barbican_client_free(other);
}

/* The rollback anchor as the secret's metadata: none at first, set, replaced; another
 * project can neither read nor write it. */
Test(barbican, anchor_metadata_set_replaced_and_the_owners_only, .timeout = 120) {
        struct barbican_options o = noauth_options(test_barbican_url());
        char *project = random_project();
        struct barbican_client *owner = client_for(&o, project), *other = client_for(&o, "someone-else");
        char pass[BARBICAN_PASSPHRASE_LEN + 1], id[BARBICAN_SECRET_ID_LEN + 1];
        vmsup_error *err = NULL;
        uint64_t gen = 42;

        if (barbican_secret_create(owner, INSTANCE, pass, id, &err) < 0)
                cr_assert_fail("create: %s", err->msg);
        cr_assert_eq(barbican_secret_anchor_get(owner, id, &gen, &err), 0, "%s", err ? err->msg : "");
        cr_assert_eq(gen, 42, "written without an anchor");
        cr_assert_eq(barbican_secret_anchor_put(owner, id, 7, &err), 0, "%s", err ? err->msg : "");
        cr_assert_eq(barbican_secret_anchor_get(owner, id, &gen, &err), 1, "%s", err ? err->msg : "");
        cr_assert_eq(gen, 7);
        cr_assert_eq(barbican_secret_anchor_put(owner, id, 18446744073709551000ull, &err), 0, "%s",
                     err ? err->msg : "");
        cr_assert_eq(barbican_secret_anchor_get(owner, id, &gen, &err), 1, "%s", err ? err->msg : "");
        cr_assert_eq(gen, 18446744073709551000ull);
        cr_assert_lt(barbican_secret_anchor_put(other, id, 1, &err), 0);
        cr_assert_eq(err->kind, VMSUP_ERR_DENIED, "%s", err->msg);
        err = vmsup_error_free(err);
        cr_assert_lt(barbican_secret_anchor_get(other, id, &gen, &err), 0);
        cr_assert_eq(err->kind, VMSUP_ERR_DENIED, "%s", err->msg);
        err = vmsup_error_free(err);
        cr_assert_eq(barbican_secret_anchor_get(owner, id, &gen, &err), 1);
        cr_assert_eq(gen, 18446744073709551000ull, "another project changed it");
        cr_assert_eq(barbican_secret_delete(owner, id, &err), 1);
        free(project);
        barbican_client_free(owner);
        barbican_client_free(other);
}

Test(barbican, unknown_secret_is_not_found, .timeout = 120) {
        struct barbican_options o = noauth_options(test_barbican_url());
        struct barbican_client *c = client_for(&o, "p");
        char got[BARBICAN_PASSPHRASE_LEN + 1];
        vmsup_error *err = NULL;

        cr_assert_lt(barbican_secret_fetch(c, "0b8e3e5c-2d7a-4a43-9d3b-6a1f0e2c4b5d", got, &err), 0);
        cr_assert_str_eq(err->msg, "vTPM secret 0b8e3e5c-2d7a-4a43-9d3b-6a1f0e2c4b5d not found in Barbican: the TPM "
                                   "state cannot be decrypted");
        err = vmsup_error_free(err);
        cr_assert_eq(barbican_secret_delete(c, "0b8e3e5c-2d7a-4a43-9d3b-6a1f0e2c4b5d", &err), 0);
        barbican_client_free(c);
}

Test(barbican, bad_ids_are_refused_before_any_request) {
        struct barbican_options o = noauth_options("http://127.0.0.1:1");
        struct barbican_client *c = client_for(&o, "p");
        char got[BARBICAN_PASSPHRASE_LEN + 1], id[BARBICAN_SECRET_ID_LEN + 1];
        vmsup_error *err = NULL;

        cr_assert_lt(barbican_secret_fetch(c, "../../v1/secrets", got, &err), 0);
        cr_assert_str_eq(err->msg, "vTPM secret id '../../v1/secrets' is not a UUID");
        cr_assert_eq(err->kind, VMSUP_ERR_DATA);
        err = vmsup_error_free(err);
        cr_assert_lt(barbican_secret_create(c, "not-a-uuid", got, id, &err), 0);
        cr_assert_str_eq(err->msg, "instance UUID 'not-a-uuid' is not a UUID");
        err = vmsup_error_free(err);
        barbican_client_free(c);
}

/* A port nothing listens on: what a stopped Barbican looks like (connection refused). */
static int closed_port(void) {
        struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        socklen_t len = sizeof(a);
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

        cr_assert(fd >= 0);
        cr_assert_eq(bind(fd, (struct sockaddr *) &a, sizeof(a)), 0);
        cr_assert_eq(getsockname(fd, (struct sockaddr *) &a, &len), 0);
        close(fd);
        return ntohs(a.sin_port);
}

Test(barbican, stopped_barbican_is_unreachable_after_bounded_retries) {
        char *endpoint = NULL, *prefix = NULL;
        struct barbican_options o;
        struct barbican_client *c;
        char got[BARBICAN_PASSPHRASE_LEN + 1];
        vmsup_error *err = NULL;
        double t0, took;

        cr_assert(asprintf(&endpoint, "http://127.0.0.1:%d", closed_port()) > 0);
        o = noauth_options(endpoint);
        o.attempts = 3;
        o.backoff_ms = 200;
        c = client_for(&o, "p");
        t0 = now_s();
        cr_assert_lt(barbican_secret_fetch(c, "0b8e3e5c-2d7a-4a43-9d3b-6a1f0e2c4b5d", got, &err), 0);
        took = now_s() - t0;
        cr_assert(asprintf(&prefix,
                           "fetch vTPM secret 0b8e3e5c-2d7a-4a43-9d3b-6a1f0e2c4b5d: Barbican at %s unreachable after 3 "
                           "attempts: ",
                           endpoint) > 0);
        cr_assert_eq(strncmp(err->msg, prefix, strlen(prefix)), 0, "got: %s", err->msg);
        cr_assert_not_null(strstr(err->msg, "onnect"), "curl's reason: %s", err->msg);
        cr_assert_eq(err->kind, VMSUP_ERR_UNAVAILABLE);
        /* backoff 200 + 400 ms between three refused connections */
        cr_assert(took >= 0.55 && took < 5, "retries took %.2f s", took);
        vmsup_error_free(err);
        free(prefix);
        free(endpoint);
        barbican_client_free(c);
}

/* ---- against the fake server ---- */

static struct barbican_client *fake_client(struct fakehttp *f, unsigned attempts, unsigned timeout_ms) {
        struct barbican_options o = noauth_options(fakehttp_url(f));

        o.attempts = attempts;
        o.backoff_ms = 50;
        o.timeout_ms = timeout_ms;
        return client_for(&o, "p");
}

static char *fetch_error(struct barbican_client *c, enum vmsup_err_kind *ret_kind) {
        char got[BARBICAN_PASSPHRASE_LEN + 1];
        vmsup_error *err = NULL;
        char *msg;

        cr_assert_lt(barbican_secret_fetch(c, "0b8e3e5c-2d7a-4a43-9d3b-6a1f0e2c4b5d", got, &err), 0);
        msg = strdup(err->msg);
        if (ret_kind)
                *ret_kind = err->kind;
        vmsup_error_free(err);
        return msg;
}

static char *create_error(struct barbican_client *c) {
        char pass[BARBICAN_PASSPHRASE_LEN + 1], id[BARBICAN_SECRET_ID_LEN + 1];
        vmsup_error *err = NULL;
        char *msg;

        cr_assert_lt(barbican_secret_create(c, INSTANCE, pass, id, &err), 0);
        msg = strdup(err->msg);
        vmsup_error_free(err);
        return msg;
}

#define PASS512                                                                                             \
        "QUFB" /* 4 chars, repeated to 512 below */
static char *passphrase_reply(void) {
        static char raw[1024];
        char body[BARBICAN_PASSPHRASE_LEN + 1];

        for (int i = 0; i < BARBICAN_PASSPHRASE_LEN; i += 4)
                memcpy(body + i, PASS512, 4);
        body[BARBICAN_PASSPHRASE_LEN] = '\0';
        snprintf(raw, sizeof(raw),
                 "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: $LEN\r\n"
                 "Connection: close\r\n\r\n%s",
                 body);
        return raw;
}

Test(fake, error_500_then_200_is_retried) {
        struct fakehttp_reply script[] = {
                FAKEHTTP_JSON("500 Internal Server Error", "{\"code\": 500, \"title\": \"Internal Server Error\"}"),
                { passphrase_reply() },
        };
        struct fakehttp *f = fakehttp_start(script, ARRAY_SIZE(script));
        struct barbican_client *c = fake_client(f, 3, 5000);
        char got[BARBICAN_PASSPHRASE_LEN + 1];
        vmsup_error *err = NULL;

        cr_assert_eq(barbican_secret_fetch(c, "0b8e3e5c-2d7a-4a43-9d3b-6a1f0e2c4b5d", got, &err), 0, "%s",
                     err ? err->msg : "");
        cr_assert(is_passphrase(got));
        cr_assert_eq(fakehttp_count(f), 2);
        barbican_client_free(c);
        fakehttp_stop(f);
}

Test(fake, persistent_5xx_reports_barbican_words) {
        struct fakehttp_reply script[] = {
                FAKEHTTP_JSON("503 Service Unavailable",
                              "{\"code\": 503, \"title\": \"Service Unavailable\", \"description\": \"database down\"}"),
        };
        struct fakehttp *f = fakehttp_start(script, 1);
        struct barbican_client *c = fake_client(f, 3, 5000);
        char *msg, *expected = NULL;
        enum vmsup_err_kind code;

        msg = fetch_error(c, &code);
        cr_assert(asprintf(&expected,
                           "Barbican at %s answered HTTP 503 to the request for the vTPM secret (Service Unavailable: "
                           "database down)",
                           fakehttp_url(f)) > 0);
        cr_assert_str_eq(msg, expected);
        cr_assert_eq(code, VMSUP_ERR_UNAVAILABLE);
        cr_assert_eq(fakehttp_count(f), 3, "three attempts");
        free(msg);
        free(expected);
        barbican_client_free(c);
        fakehttp_stop(f);
}

Test(fake, create_is_not_retried_after_a_500) {
        struct fakehttp_reply script[] = { FAKEHTTP_JSON("500 Internal Server Error", "{}") };
        struct fakehttp *f = fakehttp_start(script, 1);
        struct barbican_client *c = fake_client(f, 3, 5000);
        char *msg = create_error(c);

        cr_assert_eq(fakehttp_count(f), 1, "a POST that may have stored a secret is not repeated");
        cr_assert_not_null(strstr(msg, "answered HTTP 500 to the request to store the vTPM secret"), "%s", msg);
        free(msg);
        barbican_client_free(c);
        fakehttp_stop(f);
}

Test(fake, create_sends_nova_body) {
        struct fakehttp_reply script[] = {
                FAKEHTTP_JSON("201 Created", "{\"secret_ref\": \"$URL/v1/secrets/0b8e3e5c-2d7a-4a43-9d3b-6a1f0e2c4b5d\"}"),
        };
        struct fakehttp *f = fakehttp_start(script, 1);
        struct barbican_client *c = fake_client(f, 1, 5000);
        char pass[BARBICAN_PASSPHRASE_LEN + 1], id[BARBICAN_SECRET_ID_LEN + 1];
        char *body, *req, decoded[BARBICAN_PASSPHRASE_LEN + 8];
        vmsup_error *err = NULL;
        json_object *j, *v;
        size_t n = 0;

        cr_assert_eq(barbican_secret_create(c, INSTANCE, pass, id, &err), 0, "%s", err ? err->msg : "");
        cr_assert_str_eq(id, "0b8e3e5c-2d7a-4a43-9d3b-6a1f0e2c4b5d");
        req = fakehttp_request(f, 0);
        cr_assert_eq(strncmp(req, "POST /v1/secrets HTTP/1.1\r\n", 27), 0, "%s", req);
        cr_assert_not_null(strstr(req, "\r\nX-Project-Id: p\r\n"));
        cr_assert_not_null(strstr(req, "\r\nX-User-Id: owner\r\n"));
        cr_assert_not_null(strstr(req, "\r\nContent-Type: application/json\r\n"));
        body = fakehttp_request_body(f, 0);
        j = json_tokener_parse(body);
        cr_assert_not_null(j, "%s", body);
        cr_assert_eq(json_object_object_length(j), 5, "%s", body);
        cr_assert(json_object_object_get_ex(j, "name", &v));
        cr_assert_str_eq(json_object_get_string(v), "vTPM secret for instance " INSTANCE);
        cr_assert(json_object_object_get_ex(j, "secret_type", &v));
        cr_assert_str_eq(json_object_get_string(v), "passphrase");
        cr_assert(json_object_object_get_ex(j, "payload_content_type", &v));
        cr_assert_str_eq(json_object_get_string(v), "application/octet-stream");
        cr_assert(json_object_object_get_ex(j, "payload_content_encoding", &v));
        cr_assert_str_eq(json_object_get_string(v), "base64");
        cr_assert(json_object_object_get_ex(j, "payload", &v));
        {
                /* the payload is base64 of the 512-character text */
                gnutls_datum_t in = { (unsigned char *) json_object_get_string(v),
                                      (unsigned) json_object_get_string_len(v) },
                               out = { 0 };

                cr_assert_eq(json_object_get_string_len(v), 684);
                cr_assert_eq(gnutls_base64_decode2(&in, &out), 0);
                n = out.size;
                cr_assert_eq(n, BARBICAN_PASSPHRASE_LEN);
                memcpy(decoded, out.data, n);
                decoded[n] = '\0';
                gnutls_free(out.data);
        }
        cr_assert_str_eq(decoded, pass);
        json_object_put(j);
        free(body);
        free(req);
        barbican_client_free(c);
        fakehttp_stop(f);
}

Test(fake, garbage_json_on_create) {
        struct fakehttp_reply script[] = { FAKEHTTP_JSON("201 Created", "{\"secret_ref\": [1, 2") };
        struct fakehttp *f = fakehttp_start(script, 1);
        struct barbican_client *c = fake_client(f, 1, 5000);
        char *msg = create_error(c), *expected = NULL;

        cr_assert(asprintf(&expected,
                           "Barbican at %s accepted the vTPM secret for instance " INSTANCE " but answered without a "
                           "secret_ref ending in a UUID ('{\"secret_ref\": [1, 2'): the secret may be left behind in "
                           "Barbican",
                           fakehttp_url(f)) > 0);
        cr_assert_str_eq(msg, expected);
        free(msg);
        free(expected);
        barbican_client_free(c);
        fakehttp_stop(f);
}

Test(fake, secret_ref_without_uuid) {
        struct fakehttp_reply script[] = { FAKEHTTP_JSON("201 Created", "{\"secret_ref\": \"$URL/v1/secrets/\"}") };
        struct fakehttp *f = fakehttp_start(script, 1);
        struct barbican_client *c = fake_client(f, 1, 5000);
        char *msg = create_error(c);

        cr_assert_not_null(strstr(msg, "answered without a secret_ref ending in a UUID"), "%s", msg);
        cr_assert_not_null(strstr(msg, "/v1/secrets/\"}"), "shows what came: %s", msg);
        free(msg);
        barbican_client_free(c);
        fakehttp_stop(f);
}

Test(fake, huge_body_is_cut_off) {
        struct fakehttp_reply script[] = {
                { "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
                  .flood = 8u << 20 },
        };
        struct fakehttp *f = fakehttp_start(script, 1);
        struct barbican_client *c = fake_client(f, 3, 5000);
        char *msg, *expected = NULL;

        msg = fetch_error(c, NULL);
        cr_assert(asprintf(&expected,
                           "fetch vTPM secret 0b8e3e5c-2d7a-4a43-9d3b-6a1f0e2c4b5d: Barbican at %s: response to GET "
                           "larger than 65536 bytes: refused",
                           fakehttp_url(f)) > 0);
        cr_assert_str_eq(msg, expected);
        cr_assert_eq(fakehttp_count(f), 1, "not retried");
        free(msg);
        free(expected);
        barbican_client_free(c);
        fakehttp_stop(f);
}

Test(fake, huge_content_length_is_refused) {
        struct fakehttp_reply script[] = {
                { "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 1000000000\r\n"
                  "Connection: close\r\n\r\nAAAA" },
        };
        struct fakehttp *f = fakehttp_start(script, 1);
        struct barbican_client *c = fake_client(f, 3, 5000);
        char *msg = fetch_error(c, NULL);

        cr_assert_not_null(strstr(msg, "larger than 65536 bytes: refused"), "%s", msg);
        free(msg);
        barbican_client_free(c);
        fakehttp_stop(f);
}

Test(fake, silent_server_times_out_after_bounded_retries) {
        struct fakehttp_reply script[] = { { .hang = 1 } };
        struct fakehttp *f = fakehttp_start(script, 1);
        struct barbican_client *c = fake_client(f, 2, 300);
        double t0 = now_s(), took;
        enum vmsup_err_kind code;
        char *msg = fetch_error(c, &code), *prefix = NULL;

        took = now_s() - t0;
        cr_assert(asprintf(&prefix, "fetch vTPM secret 0b8e3e5c-2d7a-4a43-9d3b-6a1f0e2c4b5d: Barbican at %s unreachable "
                                    "after 2 attempts: ",
                           fakehttp_url(f)) > 0);
        cr_assert_eq(strncmp(msg, prefix, strlen(prefix)), 0, "%s", msg);
        cr_assert_not_null(strstr(msg, "timed out"), "%s", msg);
        cr_assert_eq(code, VMSUP_ERR_UNAVAILABLE);
        cr_assert(took >= 0.6 && took < 3, "2 x 300 ms + 50 ms backoff, took %.2f s", took);
        cr_assert_eq(fakehttp_count(f), 2);
        free(msg);
        free(prefix);
        barbican_client_free(c);
        fakehttp_stop(f);
}

Test(fake, wrong_payload_is_not_a_passphrase) {
        struct fakehttp_reply script[] = { FAKEHTTP_BYTES("200 OK", "c2hvcnQ=") };
        struct fakehttp *f = fakehttp_start(script, 1);
        struct barbican_client *c = fake_client(f, 1, 5000);
        enum vmsup_err_kind code;
        char *msg = fetch_error(c, &code);

        cr_assert_str_eq(msg, "vTPM secret 0b8e3e5c-2d7a-4a43-9d3b-6a1f0e2c4b5d in Barbican is not a vTPM passphrase "
                              "(8 bytes; expected 512 base64 characters)");
        cr_assert_eq(code, VMSUP_ERR_DATA);
        free(msg);
        barbican_client_free(c);
        fakehttp_stop(f);
}

Test(fake, unauthorized_asks_for_owner_credentials) {
        struct fakehttp_reply script[] = { FAKEHTTP_JSON("401 Unauthorized", "{\"code\": 401}") };
        struct fakehttp *f = fakehttp_start(script, 1);
        struct barbican_client *c = fake_client(f, 3, 5000);
        enum vmsup_err_kind code;
        char *msg = fetch_error(c, &code);

        cr_assert_str_eq(msg, "Barbican refused access to vTPM secret 0b8e3e5c-2d7a-4a43-9d3b-6a1f0e2c4b5d (HTTP 401): "
                              "the guest owner's credentials are required");
        cr_assert_eq(code, VMSUP_ERR_DENIED);
        cr_assert_eq(fakehttp_count(f), 1);
        free(msg);
        barbican_client_free(c);
        fakehttp_stop(f);
}

Test(fake, redirects_are_not_followed) {
        struct fakehttp_reply script[] = {
                { "HTTP/1.1 302 Found\r\nLocation: http://192.0.2.1/steal\r\nContent-Length: 0\r\n"
                  "Connection: close\r\n\r\n" },
        };
        struct fakehttp *f = fakehttp_start(script, 1);
        struct barbican_client *c = fake_client(f, 1, 5000);
        char *msg = fetch_error(c, NULL);

        cr_assert_not_null(strstr(msg, "answered HTTP 302 to the request for the vTPM secret"), "%s", msg);
        cr_assert_eq(fakehttp_count(f), 1);
        free(msg);
        barbican_client_free(c);
        fakehttp_stop(f);
}

Test(fake, server_text_is_sanitized) {
        struct fakehttp_reply script[] = {
                FAKEHTTP_JSON("400 Bad Request",
                              "{\"title\": \"Bad Request\", \"description\": \"payload "
                              "'QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFB' is wrong\\n\\u001b[31m\"}"),
        };
        struct fakehttp *f = fakehttp_start(script, 1);
        struct barbican_client *c = fake_client(f, 1, 5000);
        char *msg = create_error(c);

        cr_assert_not_null(strstr(msg, "(Bad Request: payload '[...]' is wrong??[31m)"), "%s", msg);
        free(msg);
        barbican_client_free(c);
        fakehttp_stop(f);
}

/* ---- Keystone, against the fake server ---- */

#define CATALOG                                                                                             \
        "\"catalog\": [{\"type\": \"identity\", \"endpoints\": [{\"interface\": \"public\", \"url\": "      \
        "\"http://keystone.example/\"}]}, {\"type\": \"key-manager\", \"name\": \"barbican\", \"endpoints\": "  \
        "[{\"interface\": \"public\", \"region_id\": \"RegionOne\", \"url\": \"https://kms.example:9311/\"}, " \
        "{\"interface\": \"internal\", \"region_id\": \"RegionOne\", \"url\": \"$URL\"}, "                   \
        "{\"interface\": \"internal\", \"region_id\": \"RegionTwo\", \"url\": \"http://two.example\"}]}]"

static const struct fakehttp_reply token_reply[] = {
        { "HTTP/1.1 201 Created\r\nX-Subject-Token: gAAAAA-service-token\r\nContent-Type: application/json\r\n"
          "Content-Length: $LEN\r\nConnection: close\r\n\r\n"
          "{\"token\": {\"methods\": [\"password\"], \"project\": {\"id\": \"svc-project-id\", \"name\": \"service\"}, "
          CATALOG "}}" },
};

static char *write_credentials(const char *dir, const char *text, unsigned mode) {
        return test_write_file(dir, "credentials", text, mode);
}

static struct http_options keystone_http(void) {
        return (struct http_options) { .service = "Keystone", .attempts = 1, .timeout_ms = 5000 };
}

Test(keystone, password_token_and_catalog) {
        struct fakehttp *f = fakehttp_start(token_reply, 1);
        char *dir = test_mkdtemp(), *path, *body, *req;
        struct keystone_credentials cred = { 0 };
        struct keystone_token tok = { 0 };
        struct keystone_service_filter filter = { "key-manager", "internal", "RegionOne" };
        struct http_options ho = keystone_http();
        vmsup_error *err = NULL;
        json_object *j, *v;

        path = write_credentials(dir,
                                 "auth_type = password\nusername = vmsup\nuser_domain_name = Default\n"
                                 "password = s3cret\"pw\nproject_name = service\nproject_domain_name = Default\n",
                                 0600);
        cr_assert_eq(keystone_credentials_load(path, &cred, &err), 0, "%s", err ? err->msg : "");
        cr_assert_eq(keystone_token_issue(&ho, fakehttp_url(f), &cred, &filter, &tok, &err), 0, "%s",
                     err ? err->msg : "");
        cr_assert_str_eq(tok.token, "gAAAAA-service-token");
        cr_assert_str_eq(tok.project_id, "svc-project-id");
        cr_assert_str_eq(tok.endpoint, fakehttp_url(f), "the internal key-manager endpoint of RegionOne");

        req = fakehttp_request(f, 0);
        cr_assert_eq(strncmp(req, "POST /v3/auth/tokens HTTP/1.1\r\n", 31), 0, "%s", req);
        body = fakehttp_request_body(f, 0);
        j = json_tokener_parse(body);
        cr_assert_not_null(j, "a JSON body even with a quote in the password: %s", body);
        cr_assert(json_pointer_get(j, "/auth/identity/methods/0", &v) == 0);
        cr_assert_str_eq(json_object_get_string(v), "password");
        cr_assert(json_pointer_get(j, "/auth/identity/password/user/name", &v) == 0);
        cr_assert_str_eq(json_object_get_string(v), "vmsup");
        cr_assert(json_pointer_get(j, "/auth/identity/password/user/domain/name", &v) == 0);
        cr_assert_str_eq(json_object_get_string(v), "Default");
        cr_assert(json_pointer_get(j, "/auth/identity/password/user/password", &v) == 0);
        cr_assert_str_eq(json_object_get_string(v), "s3cret\"pw");
        cr_assert(json_pointer_get(j, "/auth/scope/project/name", &v) == 0);
        cr_assert_str_eq(json_object_get_string(v), "service");
        cr_assert(json_pointer_get(j, "/auth/scope/project/domain/name", &v) == 0);
        cr_assert_str_eq(json_object_get_string(v), "Default");
        json_object_put(j);

        /* the public interface, any region */
        keystone_token_clear(&tok);
        filter = (struct keystone_service_filter) { "key-manager", "public", NULL };
        cr_assert_eq(keystone_token_issue(&ho, fakehttp_url(f), &cred, &filter, &tok, &err), 0);
        cr_assert_str_eq(tok.endpoint, "https://kms.example:9311");

        /* a client from the service token: X-Auth-Token, the catalog's endpoint */
        {
                struct barbican_options o = { .auth = BARBICAN_AUTH_KEYSTONE };
                struct barbican_client *c = NULL;

                cr_assert_eq(barbican_client_new_from_token(&o, &tok, &c, &err), 0, "%s", err ? err->msg : "");
                cr_assert_str_eq(barbican_client_endpoint(c), "https://kms.example:9311");
                barbican_client_free(c);
        }
        keystone_token_clear(&tok);
        keystone_credentials_clear(&cred);
        free(body);
        free(req);
        free(path);
        test_rmtree(dir);
        free(dir);
        fakehttp_stop(f);
}

Test(keystone, application_credential_body) {
        struct fakehttp *f = fakehttp_start(token_reply, 1);
        char *dir = test_mkdtemp(), *path, *body;
        struct keystone_credentials cred = { 0 };
        struct keystone_token tok = { 0 };
        struct http_options ho = keystone_http();
        vmsup_error *err = NULL;
        json_object *j, *v;

        path = write_credentials(dir,
                                 "auth_type = v3applicationcredential\napplication_credential_id = 21dced0f\n"
                                 "application_credential_secret = appsecret\n",
                                 0600);
        cr_assert_eq(keystone_credentials_load(path, &cred, &err), 0, "%s", err ? err->msg : "");
        cr_assert_eq(keystone_token_issue(&ho, fakehttp_url(f), &cred, NULL, &tok, &err), 0, "%s", err ? err->msg : "");
        cr_assert_str_eq(tok.token, "gAAAAA-service-token");
        cr_assert_null(tok.endpoint);
        body = fakehttp_request_body(f, 0);
        j = json_tokener_parse(body);
        cr_assert(json_pointer_get(j, "/auth/identity/methods/0", &v) == 0);
        cr_assert_str_eq(json_object_get_string(v), "application_credential");
        cr_assert(json_pointer_get(j, "/auth/identity/application_credential/id", &v) == 0);
        cr_assert_str_eq(json_object_get_string(v), "21dced0f");
        cr_assert(json_pointer_get(j, "/auth/identity/application_credential/secret", &v) == 0);
        cr_assert_str_eq(json_object_get_string(v), "appsecret");
        cr_assert(json_pointer_get(j, "/auth/scope", &v) != 0, "an application credential carries its scope");
        json_object_put(j);
        keystone_token_clear(&tok);
        keystone_credentials_clear(&cred);
        free(body);
        free(path);
        test_rmtree(dir);
        free(dir);
        fakehttp_stop(f);
}

Test(keystone, refused_credentials) {
        struct fakehttp_reply script[] = {
                FAKEHTTP_JSON("401 Unauthorized", "{\"error\": {\"code\": 401, \"message\": \"The request you have made "
                                                  "requires authentication.\", \"title\": \"Unauthorized\"}}"),
        };
        struct fakehttp *f = fakehttp_start(script, 1);
        struct keystone_credentials cred = { .auth_type = "password", .user_id = "u-1", .password = "nope",
                                             .project_id = "p-1" };
        struct keystone_token tok = { 0 };
        struct http_options ho = keystone_http();
        vmsup_error *err = NULL;
        char *expected = NULL;

        cr_assert_lt(keystone_token_issue(&ho, fakehttp_url(f), &cred, NULL, &tok, &err), 0);
        cr_assert(asprintf(&expected,
                           "Keystone at %s refused the credentials of 'u-1' (HTTP 401): The request you have made "
                           "requires authentication.",
                           fakehttp_url(f)) > 0);
        cr_assert_str_eq(err->msg, expected);
        cr_assert_eq(err->kind, VMSUP_ERR_DENIED);
        cr_assert_null(strstr(err->msg, "nope"));
        vmsup_error_free(err);
        free(expected);
        fakehttp_stop(f);
}

Test(keystone, token_without_header_or_catalog_entry) {
        struct fakehttp_reply script[] = {
                FAKEHTTP_JSON("201 Created", "{\"token\": {\"catalog\": []}}"),
                { "HTTP/1.1 201 Created\r\nX-Subject-Token: t\r\nContent-Length: $LEN\r\nConnection: close\r\n\r\n"
                  "{\"token\": {\"catalog\": [{\"type\": \"compute\", \"endpoints\": []}]}}" },
        };
        struct fakehttp *f = fakehttp_start(script, 2);
        struct keystone_credentials cred = { .auth_type = "password", .user_id = "u-1", .password = "pw",
                                             .project_id = "p-1" };
        struct keystone_service_filter filter = { "key-manager", "public", NULL };
        struct keystone_token tok = { 0 };
        struct http_options ho = keystone_http();
        vmsup_error *err = NULL;
        char *expected = NULL;

        cr_assert_lt(keystone_token_issue(&ho, fakehttp_url(f), &cred, &filter, &tok, &err), 0);
        cr_assert(asprintf(&expected, "Keystone at %s issued no token (no X-Subject-Token header)", fakehttp_url(f)) > 0);
        cr_assert_str_eq(err->msg, expected);
        err = vmsup_error_free(err);
        free(expected);
        cr_assert_lt(keystone_token_issue(&ho, fakehttp_url(f), &cred, &filter, &tok, &err), 0);
        cr_assert(asprintf(&expected,
                           "the service catalog from Keystone at %s has no key-manager endpoint for interface public: "
                           "set [barbican] endpoint, or check [barbican] interface and region_name",
                           fakehttp_url(f)) > 0);
        cr_assert_str_eq(err->msg, expected);
        cr_assert_eq(err->kind, VMSUP_ERR_CONFIG);
        vmsup_error_free(err);
        free(expected);
        fakehttp_stop(f);
}

/* User mode: the owner's token; the endpoint from GET /v3/auth/catalog; then the secret. */
Test(keystone, owner_token_finds_barbican_in_the_catalog) {
        struct fakehttp_reply script[] = {
                FAKEHTTP_JSON("200 OK", "{" CATALOG "}"),
                { passphrase_reply() },
        };
        struct fakehttp *f = fakehttp_start(script, 2);
        struct barbican_options o = { .auth = BARBICAN_AUTH_KEYSTONE, .auth_url = fakehttp_url(f),
                                      .interface = "internal", .region = "RegionOne", .attempts = 1 };
        static const char token[] = "gAAAAA-owner-token";
        struct barbican_client *c = NULL;
        char got[BARBICAN_PASSPHRASE_LEN + 1], *req;
        vmsup_error *err = NULL;

        cr_assert_eq(barbican_client_new(&o, &(struct barbican_identity) { .token = token, .token_len = strlen(token) },
                                         &c, &err),
                     0, "%s", err ? err->msg : "");
        cr_assert_str_eq(barbican_client_endpoint(c), fakehttp_url(f));
        req = fakehttp_request(f, 0);
        cr_assert_eq(strncmp(req, "GET /v3/auth/catalog HTTP/1.1\r\n", 31), 0, "%s", req);
        cr_assert_not_null(strstr(req, "\r\nX-Auth-Token: gAAAAA-owner-token\r\n"), "%s", req);
        free(req);
        cr_assert_eq(barbican_secret_fetch(c, "0b8e3e5c-2d7a-4a43-9d3b-6a1f0e2c4b5d", got, &err), 0, "%s",
                     err ? err->msg : "");
        req = fakehttp_request(f, 1);
        cr_assert_eq(strncmp(req, "GET /v1/secrets/0b8e3e5c-2d7a-4a43-9d3b-6a1f0e2c4b5d/payload HTTP/1.1\r\n", 71), 0,
                     "%s", req);
        cr_assert_not_null(strstr(req, "\r\nX-Auth-Token: gAAAAA-owner-token\r\n"), "%s", req);
        cr_assert_not_null(strstr(req, "\r\nAccept: application/octet-stream\r\n"), "%s", req);
        cr_assert_null(strstr(req, "X-Project-Id"), "%s", req);
        free(req);
        barbican_client_free(c);
        fakehttp_stop(f);
}

/* ---- the credentials file ---- */

static char *credentials_error(const char *text, unsigned mode, int uid) {
        char *dir = test_mkdtemp(), *path = write_credentials(dir, text, mode), *msg = NULL;
        struct keystone_credentials cred = { 0 };
        vmsup_error *err = NULL;

        if (uid >= 0)
                cr_assert_eq(chown(path, (uid_t) uid, (gid_t) -1), 0);
        if (keystone_credentials_load(path, &cred, &err) < 0) {
                cr_assert_eq(err->kind, VMSUP_ERR_CONFIG, "%s", err->msg);
                msg = strdup(err->msg);
                /* the message says which file, never what is in it */
                cr_assert_null(strstr(msg, "hunter2"), "%s", msg);
                vmsup_error_free(err);
                msg = strstr(msg, "': ") ? memmove(msg, strstr(msg, "': ") + 3, strlen(strstr(msg, "': ") + 3) + 1)
                                         : msg;
        } else
                keystone_credentials_clear(&cred);
        free(path);
        test_rmtree(dir);
        free(dir);
        return msg;
}

#define GOOD_PASSWORD_FILE                                                                                  \
        "auth_type = password\nuser_id = u\npassword = hunter2\nproject_id = p\n"

Test(credentials, must_be_root_only) {
        char *msg;

        cr_assert_null(credentials_error(GOOD_PASSWORD_FILE, 0600, -1));
        cr_assert_null(credentials_error(GOOD_PASSWORD_FILE, 0400, -1));
        if (geteuid() != 0)
                cr_skip_test("the ownership checks need root (the file must be owned by uid 0)");
        msg = credentials_error(GOOD_PASSWORD_FILE, 0640, -1);
        cr_assert_not_null(msg);
        cr_assert_not_null(strstr(msg, "is a file owned by uid 0 with mode 0640: it must be a regular file owned by "
                                       "root with mode 0600"),
                           "%s", msg);
        free(msg);
        msg = credentials_error(GOOD_PASSWORD_FILE, 0600, 65534);
        cr_assert_not_null(strstr(msg, "owned by uid 65534 with mode 0600"), "%s", msg);
        free(msg);
}

Test(credentials, incomplete_or_unknown) {
        static const struct {
                const char *text, *msg;
        } cases[] = {
                { "auth_type = password\nuser_id = u\nproject_id = p\n", "auth_type password needs password" },
                { "auth_type = password\nusername = u\npassword = hunter2\nproject_id = p\n",
                  "username needs user_domain_name or user_domain_id" },
                { "auth_type = password\nuser_id = u\npassword = hunter2\n",
                  "auth_type password needs project_id or project_name (Barbican needs a project-scoped token)" },
                { "auth_type = v3applicationcredential\napplication_credential_id = a\n",
                  "auth_type v3applicationcredential needs application_credential_id and "
                  "application_credential_secret" },
                { "auth_type = token\n", "auth_type must be password or v3applicationcredential" },
                { GOOD_PASSWORD_FILE "passwd = hunter2\n", "passwd: unknown key" },
                { GOOD_PASSWORD_FILE "password = hunter2\n", "password: set twice" },
                { "[service_user]\n" GOOD_PASSWORD_FILE, "[service_user]: sections are not used (key = value lines only)" },
        };

        for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
                char *msg = credentials_error(cases[i].text, 0600, -1);

                cr_assert_not_null(msg, "case %zu", i);
                cr_assert_str_eq(msg, cases[i].msg, "case %zu", i);
                free(msg);
        }
}

/* ---- small parts ---- */

Test(parts, passphrase_is_nova_format) {
        char a[BARBICAN_PASSPHRASE_LEN + 1], b[BARBICAN_PASSPHRASE_LEN + 1];

        cr_assert_eq(barbican_passphrase_generate(a, NULL), 0);
        cr_assert_eq(barbican_passphrase_generate(b, NULL), 0);
        cr_assert(is_passphrase(a), "%s", a);
        cr_assert_null(strchr(a, '='), "no padding: 384 bytes are a multiple of 3");
        cr_assert_str_neq(a, b);
}

Test(parts, sanitize) {
        char *s = http_sanitize_text("ok \x01 dGhpcyBpcyBhIHNlY3JldCBwYXNzcGhyYXNl tail", 100);

        cr_assert_str_eq(s, "ok ? [...] tail");
        free(s);
        s = http_sanitize_text("0b8e3e5c-2d7a-4a43-9d3b-6a1f0e2c4b5d", 100);
        cr_assert_str_eq(s, "0b8e3e5c-2d7a-4a43-9d3b-6a1f0e2c4b5d", "UUIDs stay readable");
        free(s);
        s = http_sanitize_text("abcdef", 3);
        cr_assert_str_eq(s, "abc");
        free(s);
}

Test(parts, origin_hides_path_and_userinfo) {
        char *o = http_url_origin("https://user:pw@kms.example:9311/key-manager/v1?x=1");

        cr_assert_str_eq(o, "https://kms.example:9311");
        free(o);
}

Test(parts, only_http_urls) {
        struct barbican_options o = noauth_options("file:///etc/shadow");
        struct barbican_client *c = NULL;
        vmsup_error *err = NULL;

        cr_assert_lt(barbican_client_new(&o, &(struct barbican_identity) { .project_id = "p" }, &c, &err), 0);
        cr_assert_str_eq(err->msg, "the Barbican endpoint is not an http:// or https:// URL");
        cr_assert_eq(err->kind, VMSUP_ERR_CONFIG);
        vmsup_error_free(err);
}
