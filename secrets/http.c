#include "config.h"

#include <ctype.h>
#include <curl/curl.h>
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "common/secmem.h"
#include "common/util.h"
#include "secrets/http.h"

/* libcurl is loaded on first use (dlopen), not linked. A supervisor asks Barbican from
 * a short-lived child (secrets/vtpmsecret.c) and vmsup's other verbs at most once, so
 * no long-lived process maps libcurl, its TLS library and the thirty-odd libraries they
 * pull in (Kerberos, LDAP, SSH, OpenSSL ...), nor keeps the state they set up. */
#define CURL_FUNCTIONS(X)                                                                         \
        X(global_init) X(easy_strerror) X(easy_init) X(easy_setopt) X(easy_perform) X(easy_getinfo) \
        X(easy_cleanup) X(slist_append) X(slist_free_all) X(url) X(url_set) X(url_get) X(url_cleanup) X(free)

static struct {
#define X(f) __typeof__(curl_##f) *f;
        CURL_FUNCTIONS(X)
#undef X
} lc;
static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static bool curl_ready;
static char curl_why[300];

static void curl_init_once(void) {
        void *h = dlopen(CURL_SONAME, RTLD_NOW | RTLD_LOCAL);
        CURLcode rc;

        if (!h) {
                snprintf(curl_why, sizeof(curl_why), "cannot load libcurl: %s", dlerror());
                return;
        }
#define X(f)                                                                                              \
        if (!(lc.f = (__typeof__(lc.f)) dlsym(h, "curl_" #f))) {                                        \
                snprintf(curl_why, sizeof(curl_why), "cannot load libcurl: %s", dlerror());             \
                return;                                                                                   \
        }
        CURL_FUNCTIONS(X)
#undef X
        rc = lc.global_init(CURL_GLOBAL_DEFAULT);
        if (rc != CURLE_OK) {
                snprintf(curl_why, sizeof(curl_why), "initialise libcurl: %s", lc.easy_strerror(rc));
                return;
        }
        curl_ready = true;
}

static bool curl_load(void) {
        pthread_once(&curl_once, curl_init_once);
        return curl_ready;
}

struct sink {
        char *buf;            /* max + 1 bytes, allocated once: no realloc leaves copies behind */
        size_t len, max;
        bool overflow;
        char *subject_token;
};

static void sink_reset(struct sink *s) {
        if (s->buf)
                explicit_bzero(s->buf, s->len);
        s->len = 0;
        s->overflow = false;
        s->subject_token = erase_and_free(s->subject_token);
}

static size_t write_cb(char *data, size_t size, size_t nmemb, void *user) {
        struct sink *s = user;
        size_t n = size * nmemb;

        if (n > s->max - s->len) {
                s->overflow = true;
                return 0; /* CURLE_WRITE_ERROR: stop reading */
        }
        if (!s->buf) {
                s->buf = malloc(s->max + 1);
                if (!s->buf)
                        return 0;
        }
        memcpy(s->buf + s->len, data, n);
        s->len += n;
        return n;
}

static size_t header_cb(char *data, size_t size, size_t nmemb, void *user) {
        static const char name[] = "X-Subject-Token:";
        struct sink *s = user;
        size_t n = size * nmemb, start = sizeof(name) - 1, end = n;

        if (n < start || strncasecmp(data, name, start) != 0)
                return n;
        while (start < end && (data[start] == ' ' || data[start] == '\t'))
                start++;
        while (end > start && isspace((unsigned char) data[end - 1]))
                end--;
        s->subject_token = erase_and_free(s->subject_token);
        s->subject_token = strndup(data + start, end - start);
        return s->subject_token ? n : 0;
}

/* curl_slist_append copies each header: wipe the copies (tokens) before freeing them. */
static void slist_erase_free(struct curl_slist *l) {
        for (struct curl_slist *i = l; i; i = i->next)
                explicit_bzero(i->data, strlen(i->data));
        lc.slist_free_all(l);
}

char *http_url_origin(const char *url) {
        char *scheme = NULL, *host = NULL, *port = NULL, *origin = NULL;
        CURLU *u;

        /* Only for messages: without libcurl, the request that follows says why. */
        if (!curl_load())
                return strdup("(libcurl unavailable)");
        u = lc.url();
        if (!u)
                return NULL;
        if (lc.url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK && lc.url_get(u, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK &&
            lc.url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK) {
                if (lc.url_get(u, CURLUPART_PORT, &port, 0) != CURLUE_OK)
                        port = NULL;
                if (asprintf(&origin, "%s://%s%s%s", scheme, host, port ? ":" : "", port ? port : "") < 0)
                        origin = NULL;
        } else
                origin = strdup("(invalid URL)");
        lc.free(scheme);
        lc.free(host);
        lc.free(port);
        lc.url_cleanup(u);
        return origin;
}

static bool is_b64_char(char c) {
        return isalnum((unsigned char) c) || c == '+' || c == '/' || c == '=';
}

char *http_sanitize_text(const char *s, size_t max) {
        size_t n = strnlen(s, max), i = 0, o = 0;
        char *out = malloc(n + 1);

        if (!out)
                return NULL;
        while (i < n) {
                size_t run = 0;

                while (i + run < n && is_b64_char(s[i + run]))
                        run++;
                if (run >= 20) {
                        /* "[...]" (5 chars) is shorter than the run it replaces */
                        memcpy(out + o, "[...]", 5);
                        o += 5;
                        i += run;
                        continue;
                }
                for (size_t k = 0; k < (run ? run : 1); k++, i++)
                        out[o++] = isprint((unsigned char) s[i]) ? s[i] : '?';
        }
        out[o] = '\0';
        return out;
}

static bool transport_retryable(CURLcode rc, bool idempotent) {
        switch (rc) {
        case CURLE_COULDNT_RESOLVE_HOST:
        case CURLE_COULDNT_CONNECT:
                return true; /* nothing reached the server */
        case CURLE_OPERATION_TIMEDOUT:
        case CURLE_SEND_ERROR:
        case CURLE_RECV_ERROR:
        case CURLE_GOT_NOTHING:
        case CURLE_PARTIAL_FILE:
                return idempotent;
        default:
                return false;
        }
}

static bool status_retryable(long status, bool idempotent) {
        if (status >= 500 && status <= 599)
                return idempotent || status == 502 || status == 503 || status == 504;
        return false;
}

static void pause_ms(unsigned ms) {
        struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (long) (ms % 1000) * 1000000L };

        while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
                ;
}

int http_request(const struct http_options *o, const struct http_request *req, struct http_response *ret,
                 vmsup_error **err) {
        const char *service = o->service ? o->service : "server";
        unsigned attempts = o->attempts ? o->attempts : 3;
        unsigned backoff = o->backoff_ms ? o->backoff_ms : 500;
        struct sink sink = { .max = o->max_response ? o->max_response : HTTP_DEFAULT_MAX_RESPONSE };
        _cleanup_free_ char *origin = http_url_origin(req->url);
        char errbuf[CURL_ERROR_SIZE];
        struct curl_slist *headers = NULL;
        CURL *curl = NULL;
        CURLcode rc = CURLE_OK;
        long status = 0;
        unsigned attempt;
        int r;

        if (!origin)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "%s request", service);
        if (!curl_load())
                return vmsup_fail(err, VMSUP_ERR_UNAVAILABLE, 0, "%s request: %s", service, curl_why);
        if (strncmp(req->url, "http://", 7) != 0 && strncmp(req->url, "https://", 8) != 0)
                return vmsup_fail(err, VMSUP_ERR_CONFIG, 0, "%s URL %s: only http:// and https:// are allowed",
                                  service, origin);

        curl = lc.easy_init();
        if (!curl) {
                r = vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "%s request: create a libcurl handle", service);
                goto out;
        }
        /* "Expect:" off: no 100-continue round trip for small bodies. */
        headers = lc.slist_append(NULL, "Expect:");
        for (const char *const *h = req->headers; headers && h && *h; h++) {
                struct curl_slist *n = lc.slist_append(headers, *h);

                if (!n) {
                        slist_erase_free(headers);
                        headers = NULL;
                        break;
                }
                headers = n;
        }
        if (!headers) {
                r = vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "%s request headers", service);
                goto out;
        }

        errbuf[0] = '\0';
#define SETOPT(opt, val)                                                                                     \
        do {                                                                                                 \
                rc = lc.easy_setopt(curl, opt, val);                                                       \
                if (rc != CURLE_OK) {                                                                        \
                        r = vmsup_fail(err, VMSUP_ERR_INTERNAL, 0, "%s request: libcurl option %s: %s",      \
                                       service, #opt, lc.easy_strerror(rc));                               \
                        goto out;                                                                            \
                }                                                                                            \
        } while (0)
        SETOPT(CURLOPT_URL, req->url);
#if LIBCURL_VERSION_NUM >= 0x075500
        SETOPT(CURLOPT_PROTOCOLS_STR, "http,https");
        SETOPT(CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
#else
        SETOPT(CURLOPT_PROTOCOLS, (long) (CURLPROTO_HTTP | CURLPROTO_HTTPS));
        SETOPT(CURLOPT_REDIR_PROTOCOLS, (long) (CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
        /* A redirect is reported as the 3xx it is, never followed (to another host or not). */
        SETOPT(CURLOPT_FOLLOWLOCATION, 0L);
        SETOPT(CURLOPT_NOSIGNAL, 1L);
        /* No proxy from the environment: credentials go only where the config says. */
        SETOPT(CURLOPT_PROXY, "");
        SETOPT(CURLOPT_NETRC, (long) CURL_NETRC_IGNORED);
        SETOPT(CURLOPT_SSL_VERIFYPEER, 1L);
        SETOPT(CURLOPT_SSL_VERIFYHOST, 2L);
        if (o->ca_file)
                SETOPT(CURLOPT_CAINFO, o->ca_file);
        SETOPT(CURLOPT_CONNECTTIMEOUT_MS, (long) (o->connect_timeout_ms ? o->connect_timeout_ms : 10000));
        SETOPT(CURLOPT_TIMEOUT_MS, (long) (o->timeout_ms ? o->timeout_ms : 30000));
        SETOPT(CURLOPT_MAXFILESIZE_LARGE, (curl_off_t) sink.max);
        SETOPT(CURLOPT_HTTPHEADER, headers);
        SETOPT(CURLOPT_WRITEFUNCTION, write_cb);
        SETOPT(CURLOPT_WRITEDATA, &sink);
        SETOPT(CURLOPT_HEADERFUNCTION, header_cb);
        SETOPT(CURLOPT_HEADERDATA, &sink);
        SETOPT(CURLOPT_ERRORBUFFER, errbuf);
        if (streq(req->method, "POST") || streq(req->method, "PUT")) {
                /* POSTFIELDS is not copied: the caller's buffer (and its wiping) stays the only one.
                 * PUT: the same body, sent with PUT (Barbican's metadata). */
                SETOPT(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t) req->body_len);
                SETOPT(CURLOPT_POSTFIELDS, req->body ? req->body : "");
                if (streq(req->method, "PUT"))
                        SETOPT(CURLOPT_CUSTOMREQUEST, "PUT");
        } else if (streq(req->method, "DELETE"))
                SETOPT(CURLOPT_CUSTOMREQUEST, "DELETE");
        else if (!streq(req->method, "GET")) {
                r = vmsup_fail(err, VMSUP_ERR_INTERNAL, 0, "%s request: unsupported method %s", service,
                               req->method);
                goto out;
        }
#undef SETOPT

        for (attempt = 1;; attempt++) {
                sink_reset(&sink);
                errbuf[0] = '\0';
                status = 0;
                rc = lc.easy_perform(curl);
                if (rc == CURLE_OK)
                        lc.easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
                if (sink.overflow || rc == CURLE_FILESIZE_EXCEEDED) {
                        r = vmsup_fail(err, VMSUP_ERR_UNAVAILABLE, 0,
                                       "%s at %s: response to %s larger than %zu bytes: refused", service, origin,
                                       req->method, sink.max);
                        goto out;
                }
                if (rc == CURLE_WRITE_ERROR && !sink.buf) {
                        r = vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "%s at %s: response", service, origin);
                        goto out;
                }
                if (rc == CURLE_OK && !status_retryable(status, req->idempotent))
                        break;
                if (rc != CURLE_OK && !transport_retryable(rc, req->idempotent)) {
                        r = vmsup_fail(err, VMSUP_ERR_UNAVAILABLE, 0, "%s at %s: %s %s failed: %s", service,
                                       origin, req->method, attempt > 1 ? "retry" : "request",
                                       errbuf[0] ? errbuf : lc.easy_strerror(rc));
                        goto out;
                }
                if (attempt >= attempts) {
                        if (rc == CURLE_OK)
                                break; /* the last 5xx is the answer */
                        r = vmsup_fail(err, VMSUP_ERR_UNAVAILABLE, 0, "%s at %s unreachable after %u attempt%s: %s",
                                       service, origin, attempt, attempt == 1 ? "" : "s",
                                       errbuf[0] ? errbuf : lc.easy_strerror(rc));
                        goto out;
                }
                pause_ms(backoff);
                backoff = backoff > 60000 ? 120000 : backoff * 2;
        }

        {
                char *ct = NULL;
                struct http_response resp = { .status = status, .attempts = attempt };

                if (lc.easy_getinfo(curl, CURLINFO_CONTENT_TYPE, &ct) == CURLE_OK && ct) {
                        resp.content_type = strdup(ct);
                        if (!resp.content_type) {
                                r = vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "%s response", service);
                                goto out;
                        }
                }
                if (!sink.buf)
                        sink.buf = malloc(1);
                if (!sink.buf) {
                        free(resp.content_type);
                        r = vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "%s response", service);
                        goto out;
                }
                sink.buf[sink.len] = '\0';
                resp.body = TAKE_PTR(sink.buf);
                resp.body_len = sink.len;
                resp.subject_token = TAKE_PTR(sink.subject_token);
                *ret = resp;
        }
        r = 0;
out:
        if (curl)
                lc.easy_cleanup(curl);
        slist_erase_free(headers);
        sink_reset(&sink);
        erase_and_free(sink.buf);
        return r;
}

void http_response_clear(struct http_response *r) {
        if (!r)
                return;
        if (r->body)
                explicit_bzero(r->body, r->body_len);
        erase_and_free(r->body);
        erase_and_free(r->subject_token);
        free(r->content_type);
        memset(r, 0, sizeof(*r));
}
