/* HTTPS requests for the Barbican and Keystone clients (libcurl): bounded in time, size and
 * retries; TLS verified; nothing followed elsewhere; secrets wiped. */
#ifndef VMSUP_SECRETS_HTTP_H
#define VMSUP_SECRETS_HTTP_H

#include <stdbool.h>
#include <stddef.h>

#include "common/error.h"

#define HTTP_DEFAULT_MAX_RESPONSE (64 * 1024)

struct http_options {
        const char *service;         /* "Barbican", "Keystone": names the peer in errors */
        const char *ca_file;         /* CA bundle for TLS; NULL: the system's */
        unsigned connect_timeout_ms; /* per attempt; 0: 10 s */
        unsigned timeout_ms;         /* whole request, per attempt; 0: 30 s */
        unsigned attempts;           /* tries on connection errors and 5xx; 0: 3 */
        unsigned backoff_ms;         /* pause before the 2nd try, doubled after each; 0: 500 ms */
        size_t max_response;         /* body bytes; more aborts the request; 0: 64 KiB */
};

struct http_request {
        const char *method;          /* "GET", "POST", "DELETE" */
        const char *url;             /* http:// or https:// only */
        const char *const *headers;  /* "Name: value", NULL-terminated; may hold a token: wiped */
        const char *body;            /* NULL: none; may hold a secret: not copied */
        size_t body_len;
        bool idempotent;             /* false (POST that creates): retried only when nothing reached
                                      * the server (no connection) or on 502/503/504 */
};

struct http_response {
        long status;
        char *body;                  /* NUL-terminated; wiped when cleared */
        size_t body_len;
        char *content_type;          /* NULL when absent */
        char *subject_token;         /* Keystone's X-Subject-Token; wiped when cleared */
        unsigned attempts;           /* how many tries it took */
};

/* Perform the request. Returns 0 with *ret filled for any HTTP status (a 5xx only after
 * the last attempt); negative with err filled when no answer came (after the retries:
 * "<service> at <url> unreachable after N attempts: <curl error>", VMSUP_ERR_UNAVAILABLE),
 * when the answer was too large or the URL or options are bad. */
int http_request(const struct http_options *o, const struct http_request *req, struct http_response *ret,
                 vmsup_error **err);

void http_response_clear(struct http_response *r);

/* The "scheme://host[:port]" part of url, for error messages (never the path or query);
 * a new string, NULL on allocation failure. */
char *http_url_origin(const char *url);

/* Server text made fit for an error message: at most max chars, control characters
 * replaced, and anything that looks like key material (a run of 20 or more base64
 * characters) replaced by "[...]". A new string. */
char *http_sanitize_text(const char *s, size_t max);

#endif
