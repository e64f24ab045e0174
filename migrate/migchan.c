#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/secmem.h"
#include "common/util.h"
#include "common/vtpm.h"
#include "migrate/migchan.h"

/* TLS 1.3 only: no renegotiation, no static RSA, every cipher suite AEAD with forward
 * secrecy, and the client's certificate travels encrypted. */
#define MIGCHAN_PRIORITY "NORMAL:-VERS-ALL:+VERS-TLS1.3"
#define ABORT_ERROR_MAX 1024
#define HELLO_HOST_MAX 255
#define WHY_MAX 256
#define ADDR_MAX (INET6_ADDRSTRLEN + 16)

struct migchan {
        int fd;
        struct migchan_tcp *tcp;  /* migchan_connect_start(): the TCP connect still under way */
        gnutls_certificate_credentials_t cred;
        gnutls_session_t session;
        /* gnutls keeps a pointer to these for the session's lifetime */
        gnutls_typed_vdata_st vdata[2];
        char *peer_name;
        bool handshake_done, broken;
        int io_errno;             /* errno of the last failed recv/send under gnutls */
        int cancel_fd;            /* readable: every wait ends with ECANCELED; -1 none */
        char addr[ADDR_MAX];      /* the peer: "ADDR:PORT", "[ADDR]:PORT" */
        char peer[ADDR_MAX + 80]; /* addr and " (CN=...)" once the handshake is done */
        char local_addr[NI_MAXHOST];

        /* the frame being received */
        uint8_t hdr[MIGCHAN_HEADER_LEN];
        size_t hdr_got;
        uint8_t *buf; /* len + 1 bytes: secmem for MIG_SECRET, else malloc'd and wiped before free */
        bool buf_secmem;
        size_t len, got;
};

#define PROTOCOL_TEXT_(n) #n
#define PROTOCOL_TEXT_X(n) PROTOCOL_TEXT_(n)
#define PROTOCOL_TEXT PROTOCOL_TEXT_X(MIGCHAN_PROTOCOL)

static const char *const msg_names[] = {
        [MIG_HELLO] = "HELLO",       [MIG_PREPARE] = "PREPARE",   [MIG_SECRET] = "SECRET",
        [MIG_READY] = "READY",       [MIG_MIGRATED] = "MIGRATED", [MIG_PREPARED] = "PREPARED",
        [MIG_COMMIT] = "COMMIT",     [MIG_RUNNING] = "RUNNING",   [MIG_ABORT] = "ABORT",
        [MIG_DONE] = "DONE",
};

static bool msg_known(unsigned t) {
        return t < ARRAY_SIZE(msg_names) && msg_names[t];
}

const char *mig_msg_name(enum mig_msg t) {
        return msg_known((unsigned) t) ? msg_names[t] : "unknown";
}

/* ---- time ---- */

static long deadline_of(int timeout_ms) {
        return timeout_ms < 0 ? -1 : monotonic_ms() + timeout_ms;
}

/* Milliseconds left for poll(): -1 without a deadline, 0 once it passed. */
static int left_ms(long deadline) {
        long left;

        if (deadline < 0)
                return -1;
        left = deadline - monotonic_ms();
        return left <= 0 ? 0 : left > INT_MAX ? INT_MAX : (int) left;
}

/* poll() on fd for events and on cancel_fd (-1: none) for input: > 0 fd is ready, 0 the
 * time is up, -ECANCELED cancel_fd is readable, -errno on failure (-EINTR: try again). */
static int poll_cancel(int fd, short events, int cancel_fd, int ms) {
        struct pollfd p[2] = { { .fd = fd, .events = events }, { .fd = cancel_fd, .events = POLLIN } };
        int n = poll(p, cancel_fd >= 0 ? 2 : 1, ms);

        if (n < 0)
                return -errno;
        if (n > 0 && cancel_fd >= 0 && p[1].revents)
                return -ECANCELED;
        return n;
}

static double seconds(int timeout_ms) {
        return timeout_ms / 1000.0;
}

/* ---- addresses ---- */

/* A v4-mapped IPv6 address (a dual-stack listener's view of an IPv4 peer) as the IPv4
 * address it is: what QEMU must bind to and what an operator recognises. */
static void sockaddr_unmap(struct sockaddr_storage *ss, socklen_t *len) {
        struct sockaddr_in6 s6;
        struct sockaddr_in s4 = { .sin_family = AF_INET };

        if (ss->ss_family != AF_INET6)
                return;
        memcpy(&s6, ss, sizeof(s6));
        if (!IN6_IS_ADDR_V4MAPPED(&s6.sin6_addr))
                return;
        s4.sin_port = s6.sin6_port;
        memcpy(&s4.sin_addr, &s6.sin6_addr.s6_addr[12], 4);
        memset(ss, 0, sizeof(*ss));
        memcpy(ss, &s4, sizeof(s4));
        *len = sizeof(s4);
}

static void format_host_port(char *out, size_t n, const char *host, const char *port) {
        snprintf(out, n, strchr(host, ':') ? "[%s]:%s" : "%s:%s", host, port);
}

/* Numeric host (and "HOST:PORT" when hostport is not NULL) of a socket's end. */
static void sockaddr_format(int fd, bool peer, char *host, size_t hostlen, char *hostport, size_t hplen) {
        struct sockaddr_storage ss;
        socklen_t len = sizeof(ss);
        char h[NI_MAXHOST] = "(unknown address)", p[NI_MAXSERV] = "?";
        int r;

        r = peer ? getpeername(fd, (struct sockaddr *) &ss, &len) : getsockname(fd, (struct sockaddr *) &ss, &len);
        if (r == 0) {
                sockaddr_unmap(&ss, &len);
                if (getnameinfo((struct sockaddr *) &ss, len, h, sizeof(h), p, sizeof(p),
                                NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
                        snprintf(h, sizeof(h), "(unknown address)");
                        snprintf(p, sizeof(p), "?");
                }
        }
        if (host)
                snprintf(host, hostlen, "%s", h);
        if (hostport)
                format_host_port(hostport, hplen, h, p);
}

static bool is_ip_literal(const char *s) {
        unsigned char buf[sizeof(struct in6_addr)];

        return inet_pton(AF_INET, s, buf) == 1 || inet_pton(AF_INET6, s, buf) == 1;
}

/* ---- errors ---- */

/* "<peer>: <message>"; the channel cannot be used after it. */
__attribute__((format(printf, 5, 6))) static int chan_fail(struct migchan *c, vmsup_error **err, int exit_code,
                                                           int errnum, const char *fmt, ...) {
        _cleanup_free_ char *msg = NULL;
        va_list ap;

        c->broken = true;
        va_start(ap, fmt);
        if (vasprintf(&msg, fmt, ap) < 0)
                msg = NULL;
        va_end(ap);
        return vmsup_fail(err, exit_code, errnum, "%s: %s", c->peer, msg ? msg : "out of memory");
}

/* gnutls' text, with the alert the peer sent when that is the error. */
static void tls_error_text(struct migchan *c, int r, char *out, size_t n) {
        const char *alert;

        switch (r) {
        case GNUTLS_E_FATAL_ALERT_RECEIVED:
                alert = gnutls_alert_get_name(gnutls_alert_get(c->session));
                snprintf(out, n, "fatal alert from the peer: %s", alert ? alert : "(unknown alert)");
                break;
        case GNUTLS_E_UNSUPPORTED_VERSION_PACKET:
        case GNUTLS_E_NO_CIPHER_SUITES:
                /* what a TLS 1.2 peer gets: gnutls names the symptom, not the cause */
                snprintf(out, n, "%s (this host speaks only TLS 1.3)", gnutls_strerror(r));
                break;
        default:
                snprintf(out, n, "%s", gnutls_strerror(r));
        }
}

static int io_errnum(struct migchan *c, int r) {
        return (r == GNUTLS_E_PULL_ERROR || r == GNUTLS_E_PUSH_ERROR) ? c->io_errno : 0;
}

/* ---- frame validation: the same rules for what we send and what we accept ---- */

__attribute__((format(printf, 2, 3))) static int why(char out[WHY_MAX], const char *fmt, ...) {
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(out, WHY_MAX, fmt, ap);
        va_end(ap);
        return -EBADMSG;
}

/* A field's value for a message: JSON-escaped (no control characters), cut short. */
static void value_text(json_object *v, char *out, size_t n) {
        const char *s = json_object_to_json_string_ext(v, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
        size_t len = s ? strlen(s) : 0;

        if (len < n) {
                snprintf(out, n, "%s", s ? s : "?");
                return;
        }
        len = n - 4;
        while (len > 0 && ((unsigned char) s[len] & 0xc0) == 0x80)
                len--; /* not in the middle of a UTF-8 sequence */
        snprintf(out, n, "%.*s...", (int) len, s);
}

static int bad_field(char out[WHY_MAX], enum mig_msg type, const char *name, json_object *v, const char *rule) {
        char val[48];

        value_text(v, val, sizeof(val));
        return why(out, "bad field \"%s\" in %s: %s (must be %s)", name, mig_msg_name(type), val, rule);
}

static bool int_in(json_object *v, int64_t min, int64_t max) {
        int64_t n;

        if (!json_object_is_type(v, json_type_int))
                return false;
        n = json_object_get_int64(v);
        /* json-c clamps a value above INT64_MAX (kept as uint64) to INT64_MAX */
        if (n == INT64_MAX && json_object_get_uint64(v) != (uint64_t) INT64_MAX)
                return false;
        return n >= min && n <= max;
}

static bool printable_ascii(const char *s, size_t len) {
        for (size_t i = 0; i < len; i++)
                if (s[i] < 0x20 || s[i] > 0x7e)
                        return false;
        return true;
}

static int check_fields(enum mig_msg type, json_object *o, char out[WHY_MAX]) {
        const char *missing = NULL;
        json_object *v = NULL;

#define REQUIRE(name, ok, rule)                                            \
        do {                                                               \
                /* v is NULL for a JSON null */                            \
                if (!json_object_object_get_ex(o, name, &v)) {             \
                        missing = name;                                    \
                        goto missing;                                      \
                }                                                          \
                if (!(ok))                                                 \
                        return bad_field(out, type, name, v, rule);        \
        } while (0)
#define IS_STRING_LEN(min, max)                                                                                \
        (json_object_is_type(v, json_type_string) && json_object_get_string_len(v) >= (min) &&                  \
         json_object_get_string_len(v) <= (max))
#define IS_UUID (json_object_is_type(v, json_type_string) && uuid_is_valid(json_object_get_string(v)))

        switch (type) {
        case MIG_HELLO:
                REQUIRE("protocol", int_in(v, MIGCHAN_PROTOCOL, MIGCHAN_PROTOCOL), PROTOCOL_TEXT);
                REQUIRE("uuid", IS_UUID, "a lower-case uuid");
                REQUIRE("host", IS_STRING_LEN(1, HELLO_HOST_MAX) &&
                                        printable_ascii(json_object_get_string(v), json_object_get_string_len(v)),
                        "a host name of 1..255 printable ASCII characters");
                break;
        case MIG_PREPARE:
                REQUIRE("spec", json_object_is_type(v, json_type_object), "an object");
                REQUIRE("secret_uuid", IS_UUID, "a lower-case uuid");
                break;
        case MIG_READY:
                REQUIRE("port", int_in(v, 1, 65535), "an integer 1..65535");
                break;
        case MIG_PREPARED:
                REQUIRE("generation", int_in(v, 0, INT64_MAX), "an integer >= 0");
                break;
        case MIG_ABORT:
                REQUIRE("error", IS_STRING_LEN(1, ABORT_ERROR_MAX), "a text of 1..1024 bytes");
                break;
        default:
                break;
        }
        return 0;
missing:
        return why(out, "missing field \"%s\" in %s", missing, mig_msg_name(type));
#undef REQUIRE
#undef IS_STRING_LEN
#undef IS_UUID
}

static int parse_object(enum mig_msg type, const uint8_t *p, size_t len, json_object **ret, char out[WHY_MAX]) {
        _cleanup_json_ json_object *o = NULL;
        struct json_tokener *tok;
        enum json_tokener_error jerr;
        size_t end;

        if (memchr(p, 0, len))
                return why(out, "%s payload is not JSON: it contains a NUL byte", mig_msg_name(type));
        tok = json_tokener_new();
        if (!tok)
                return -ENOMEM;
        json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);
        o = json_tokener_parse_ex(tok, (const char *) p, (int) len);
        jerr = json_tokener_get_error(tok);
        end = json_tokener_get_parse_end(tok);
        if (jerr == json_tokener_continue) {
                /* A NUL ends the input: completes a bare number or literal at the end,
                 * and turns a truncated value into "unexpected end of data". */
                o = json_tokener_parse_ex(tok, "", 1);
                jerr = json_tokener_get_error(tok);
                end = len;
        }
        json_tokener_free(tok);
        if (jerr != json_tokener_success)
                return why(out, "%s payload is not JSON: %s", mig_msg_name(type), json_tokener_error_desc(jerr));
        for (; end < len; end++)
                if (!strchr(" \t\r\n", p[end]))
                        return why(out, "%s payload is not JSON: bytes after the value", mig_msg_name(type));
        if (!json_object_is_type(o, json_type_object))
                return why(out, "%s payload is a JSON %s, not an object", mig_msg_name(type),
                           json_type_to_name(json_object_get_type(o)));
        *ret = TAKE_PTR(o);
        return 0;
}

static int check_length(unsigned type, size_t len, char out[WHY_MAX]) {
        if (type == MIG_SECRET && len > MIGCHAN_SECRET_MAX)
                return why(out, "SECRET payload of %zu bytes over the limit of %d bytes", len, MIGCHAN_SECRET_MAX);
        if (len > MIGCHAN_MAX_PAYLOAD)
                return why(out, "%s payload of %zu bytes over the limit of %d bytes", mig_msg_name(type), len,
                           MIGCHAN_MAX_PAYLOAD);
        if (type == MIG_SECRET && len == 0)
                return why(out, "empty SECRET payload");
        return 0;
}

/* 0 when type and payload make a valid frame (*ret_json: the parsed object, when asked
 * for and the type has one); -EBADMSG with the reason in out; -ENOMEM. */
static int frame_check(enum mig_msg type, const uint8_t *p, size_t len, json_object **ret_json, char out[WHY_MAX]) {
        _cleanup_json_ json_object *o = NULL;
        int r;

        if (!msg_known((unsigned) type))
                return why(out, "unknown message type %u", (unsigned) type);
        r = check_length(type, len, out);
        if (r < 0)
                return r;
        if (type == MIG_SECRET) {
                for (size_t i = 0; i < len; i++)
                        if (p[i] < 0x20 || p[i] > 0x7e) /* the byte itself stays out of the message */
                                return why(out, "SECRET payload byte at offset %zu is not printable ASCII", i);
                return 0;
        }
        r = parse_object(type, p, len, &o, out);
        if (r < 0)
                return r;
        r = check_fields(type, o, out);
        if (r < 0)
                return r;
        if (ret_json)
                *ret_json = TAKE_PTR(o);
        return 0;
}

/* The peer's error text gets logged: no control characters from it. */
static int sanitize_abort(json_object *o) {
        json_object *v = NULL;
        _cleanup_free_ char *copy = NULL;
        const char *s = json_object_object_get_ex(o, "error", &v) ? json_object_get_string(v) : NULL;
        bool changed = false;

        copy = strdup(s ? s : "");
        if (!copy)
                return -ENOMEM;
        for (char *q = copy; *q; q++)
                if ((unsigned char) *q < 0x20 || *q == 0x7f) {
                        *q = '?';
                        changed = true;
                }
        if (changed) {
                json_object *clean = json_object_new_string(copy);

                if (!clean || json_object_object_add(o, "error", clean) < 0) {
                        json_object_put(clean);
                        return -ENOMEM;
                }
        }
        return 0;
}

/* ---- the connection ---- */

static ssize_t chan_pull(gnutls_transport_ptr_t p, void *data, size_t len) {
        struct migchan *c = p;
        ssize_t n = recv(c->fd, data, len, 0);

        if (n < 0)
                c->io_errno = errno;
        return n;
}

static ssize_t chan_vec_push(gnutls_transport_ptr_t p, const giovec_t *iov, int iovcnt) {
        struct migchan *c = p;
        struct msghdr m = { .msg_iov = (struct iovec *) iov, .msg_iovlen = (size_t) iovcnt };
        /* MSG_NOSIGNAL: a peer that went away is an error to report, not a SIGPIPE */
        ssize_t n = sendmsg(c->fd, &m, MSG_NOSIGNAL);

        if (n < 0)
                c->io_errno = errno;
        return n;
}

static int chan_pull_timeout(gnutls_transport_ptr_t p, unsigned int ms) {
        struct migchan *c = p;
        struct pollfd pfd = { .fd = c->fd, .events = POLLIN };
        int n;

        n = poll(&pfd, 1, ms == GNUTLS_INDEFINITE_TIMEOUT ? -1 : ms > INT_MAX ? INT_MAX : (int) ms);
        if (n < 0)
                c->io_errno = errno;
        return n;
}

static void frame_reset(struct migchan *c) {
        if (c->buf) {
                if (c->buf_secmem)
                        secmem_free(c->buf);
                else {
                        erase(c->buf, c->len + 1);
                        free(c->buf);
                }
        }
        c->buf = NULL;
        c->buf_secmem = false;
        c->len = c->got = c->hdr_got = 0;
        erase(c->hdr, sizeof(c->hdr));
}

struct migchan *migchan_free(struct migchan *c) {
        if (!c)
                return NULL;
        if (c->session) {
                /* one try at close_notify: the socket is non-blocking, the peer may be gone */
                if (c->handshake_done && !c->broken)
                        (void) gnutls_bye(c->session, GNUTLS_SHUT_WR);
                gnutls_deinit(c->session);
        }
        if (c->cred)
                gnutls_certificate_free_credentials(c->cred);
        if (c->fd >= 0)
                close(c->fd);
        migchan_tcp_free(c->tcp);
        frame_reset(c);
        free(c->peer_name);
        free(c);
        return NULL;
}

/* Credentials and session, before any network traffic: a bad CA, certificate or key
 * fails here, as a configuration error. */
static int chan_new(const struct migchan_tls *tls, bool server, struct migchan **ret, vmsup_error **err) {
        _cleanup_migchan_ struct migchan *c = NULL;
        const char *side = server ? "server" : "client";
        int r;

        if (!tls || !tls->ca_file || !tls->cert_file || !tls->key_file)
                return vmsup_fail(err, VMSUP_EX_SOFTWARE, 0, "migration TLS %s: CA, certificate and key are required",
                                  side);
        if (!server && (!tls->peer_name || !*tls->peer_name))
                return vmsup_fail(err, VMSUP_EX_SOFTWARE, 0,
                                  "migration TLS client: the name the server's certificate must carry is required");
        c = calloc(1, sizeof(*c));
        if (!c)
                return vmsup_fail(err, VMSUP_EX_OSERR, ENOMEM, "migration channel");
        c->fd = -1;
        c->cancel_fd = -1;
        if (!server && !(c->peer_name = strdup(tls->peer_name)))
                return vmsup_fail(err, VMSUP_EX_OSERR, ENOMEM, "migration channel");

        r = gnutls_certificate_allocate_credentials(&c->cred);
        if (r < 0)
                return vmsup_fail(err, VMSUP_EX_OSERR, 0, "migration TLS credentials: %s", gnutls_strerror(r));
        r = gnutls_certificate_set_x509_trust_file(c->cred, tls->ca_file, GNUTLS_X509_FMT_PEM);
        if (r < 0)
                return vmsup_fail(err, VMSUP_EX_CONFIG, 0, "load the migration CA certificate '%s': %s", tls->ca_file,
                                  gnutls_strerror(r));
        if (r == 0)
                return vmsup_fail(err, VMSUP_EX_CONFIG, 0,
                                  "load the migration CA certificate '%s': no certificate in it", tls->ca_file);
        r = gnutls_certificate_set_x509_key_file(c->cred, tls->cert_file, tls->key_file, GNUTLS_X509_FMT_PEM);
        if (r < 0)
                return vmsup_fail(err, VMSUP_EX_CONFIG, 0, "load the migration %s certificate '%s' and key '%s': %s",
                                  side, tls->cert_file, tls->key_file, gnutls_strerror(r));

        /* No session tickets: every connection authenticates both hosts in full. */
        r = gnutls_init(&c->session, (server ? GNUTLS_SERVER : GNUTLS_CLIENT) | GNUTLS_NONBLOCK | GNUTLS_NO_TICKETS);
        if (r < 0)
                return vmsup_fail(err, VMSUP_EX_OSERR, 0, "migration TLS session: %s", gnutls_strerror(r));
        r = gnutls_priority_set_direct(c->session, MIGCHAN_PRIORITY, NULL);
        if (r < 0)
                return vmsup_fail(err, VMSUP_EX_SOFTWARE, 0, "migration TLS priority '%s': %s", MIGCHAN_PRIORITY,
                                  gnutls_strerror(r));
        r = gnutls_credentials_set(c->session, GNUTLS_CRD_CERTIFICATE, c->cred);
        if (r < 0)
                return vmsup_fail(err, VMSUP_EX_SOFTWARE, 0, "migration TLS credentials: %s", gnutls_strerror(r));
        if (server) {
                gnutls_certificate_server_set_request(c->session, GNUTLS_CERT_REQUIRE);
                /* Without our CA's name in the request, a client with a certificate from
                 * another CA sends it (and is told "issuer unknown") instead of sending
                 * none; our clients have one certificate each, nothing to choose. */
                gnutls_certificate_send_x509_rdn_sequence(c->session, 1);
                c->vdata[0] = (gnutls_typed_vdata_st) { GNUTLS_DT_KEY_PURPOSE_OID,
                                                        (unsigned char *) GNUTLS_KP_TLS_WWW_CLIENT, 0 };
                gnutls_session_set_verify_cert2(c->session, c->vdata, 1, 0);
        } else {
                /* SNI carries DNS names only, never an address (RFC 6066) */
                if (!is_ip_literal(c->peer_name)) {
                        r = gnutls_server_name_set(c->session, GNUTLS_NAME_DNS, c->peer_name, strlen(c->peer_name));
                        if (r < 0)
                                return vmsup_fail(err, VMSUP_EX_CONFIG, 0, "migration peer name '%s': %s",
                                                  c->peer_name, gnutls_strerror(r));
                }
                /* a DNS_HOSTNAME that is an address is matched against the IP SANs */
                c->vdata[0] = (gnutls_typed_vdata_st) { GNUTLS_DT_DNS_HOSTNAME, (unsigned char *) c->peer_name, 0 };
                c->vdata[1] = (gnutls_typed_vdata_st) { GNUTLS_DT_KEY_PURPOSE_OID,
                                                        (unsigned char *) GNUTLS_KP_TLS_WWW_SERVER, 0 };
                gnutls_session_set_verify_cert2(c->session, c->vdata, 2, 0);
        }
        /* our deadline, not gnutls' own */
        gnutls_handshake_set_timeout(c->session, 0);
        gnutls_transport_set_ptr(c->session, c);
        gnutls_transport_set_pull_function(c->session, chan_pull);
        gnutls_transport_set_vec_push_function(c->session, chan_vec_push);
        gnutls_transport_set_pull_timeout_function(c->session, chan_pull_timeout);
        *ret = TAKE_PTR(c);
        return 0;
}

static void chan_attach(struct migchan *c, int fd) {
        int one = 1;

        c->fd = fd;
        /* small request/answer frames: Nagle would only add delay */
        (void) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        sockaddr_format(fd, true, NULL, 0, c->addr, sizeof(c->addr));
        sockaddr_format(fd, false, c->local_addr, sizeof(c->local_addr), NULL, 0);
        snprintf(c->peer, sizeof(c->peer), "%s", c->addr);
}

/* The CN of the peer's (verified) certificate, printable characters only. */
static void peer_cn(struct migchan *c, char *out, size_t n) {
        const gnutls_datum_t *certs;
        unsigned count = 0;
        gnutls_x509_crt_t crt;
        char cn[128];
        size_t len = sizeof(cn);

        out[0] = 0;
        certs = gnutls_certificate_get_peers(c->session, &count);
        if (!certs || count == 0 || gnutls_x509_crt_init(&crt) < 0)
                return;
        if (gnutls_x509_crt_import(crt, &certs[0], GNUTLS_X509_FMT_DER) == 0 &&
            gnutls_x509_crt_get_dn_by_oid(crt, GNUTLS_OID_X520_COMMON_NAME, 0, 0, cn, &len) == 0) {
                for (size_t i = 0; i < len && cn[i]; i++)
                        if ((unsigned char) cn[i] < 0x20 || (unsigned char) cn[i] > 0x7e)
                                cn[i] = '?';
                snprintf(out, n, "%.64s", cn); /* ub-common-name */
        }
        gnutls_x509_crt_deinit(crt);
}

static int handshake_failed(struct migchan *c, int r, vmsup_error **err) {
        char text[512];
        int ret;

        if (r == GNUTLS_E_CERTIFICATE_VERIFICATION_ERROR) {
                unsigned status = gnutls_session_get_verify_cert_status(c->session);
                gnutls_datum_t out = { NULL, 0 };
                size_t len;

                if (gnutls_certificate_verification_status_print(status, GNUTLS_CRT_X509, &out, 0) < 0 || !out.data)
                        snprintf(text, sizeof(text), "verification status 0x%x", status);
                else {
                        snprintf(text, sizeof(text), "%s", (char *) out.data);
                        gnutls_free(out.data);
                }
                len = strlen(text);
                while (len > 0 && text[len - 1] == ' ')
                        text[--len] = 0;
                if ((status & GNUTLS_CERT_UNEXPECTED_OWNER) && c->peer_name)
                        snprintf(text + len, sizeof(text) - len, " (expected '%s')", c->peer_name);
                ret = vmsup_fail(err, VMSUP_EX_UNAVAILABLE, 0, "the certificate of %s is not trusted: %s", c->addr,
                                 text);
        } else if (r == GNUTLS_E_NO_CERTIFICATE_FOUND || r == GNUTLS_E_CERTIFICATE_REQUIRED)
                ret = vmsup_fail(err, VMSUP_EX_UNAVAILABLE, 0,
                                 "TLS handshake with %s failed: the peer presented no certificate", c->addr);
        else {
                tls_error_text(c, r, text, sizeof(text));
                ret = vmsup_fail(err, VMSUP_EX_UNAVAILABLE, io_errnum(c, r), "TLS handshake with %s failed: %s",
                                 c->addr, text);
        }
        /* tell the peer why (gnutls does not on its own); best effort, non-blocking */
        (void) gnutls_alert_send_appropriate(c->session, r);
        c->broken = true;
        return ret;
}

/* The handshake went through: check what it agreed on, name the peer. */
static int handshake_done(struct migchan *c, vmsup_error **err) {
        char cn[65];

        /* The priority string allows nothing else; this is the check that it did. */
        if (gnutls_protocol_get_version(c->session) != GNUTLS_TLS1_3) {
                c->broken = true;
                return vmsup_fail(err, VMSUP_EX_UNAVAILABLE, 0, "TLS handshake with %s: negotiated %s, not TLS 1.3",
                                  c->addr, gnutls_protocol_get_name(gnutls_protocol_get_version(c->session)));
        }
        /* Likewise: the peer's certificate was verified (status 0), not skipped (status -1). */
        if (gnutls_session_get_verify_cert_status(c->session) != 0) {
                c->broken = true;
                return vmsup_fail(err, VMSUP_EX_UNAVAILABLE, 0,
                                  "TLS handshake with %s: the peer's certificate was not verified", c->addr);
        }
        c->handshake_done = true;
        peer_cn(c, cn, sizeof(cn));
        if (cn[0])
                snprintf(c->peer, sizeof(c->peer), "%s (CN=%s)", c->addr, cn);
        return 0;
}

int migchan_handshake_step(struct migchan *c, vmsup_error **err) {
        int r;

        if (c->handshake_done)
                return 1;
        if (c->broken)
                return vmsup_fail(err, VMSUP_EX_SOFTWARE, 0, "TLS handshake with %s: the channel failed earlier",
                                  c->addr);
        for (;;) {
                r = gnutls_handshake(c->session);
                if (r == 0)
                        return handshake_done(c, err) < 0 ? -EPROTO : 1;
                if (r == GNUTLS_E_AGAIN)
                        return 0;
                if (r == GNUTLS_E_INTERRUPTED || !gnutls_error_is_fatal(r))
                        continue;
                return handshake_failed(c, r, err);
        }
}

short migchan_handshake_events(const struct migchan *c) {
        return gnutls_record_get_direction(c->session) ? POLLOUT : POLLIN;
}

static int chan_handshake(struct migchan *c, long deadline, int timeout_ms, vmsup_error **err) {
        for (;;) {
                int left, n = 0, r = migchan_handshake_step(c, err);

                if (r != 0)
                        return r < 0 ? r : 0;
                left = left_ms(deadline);
                if (left > 0 && (n = poll_cancel(c->fd, migchan_handshake_events(c), c->cancel_fd, left)) == -EINTR)
                        continue;
                if (left == 0 || n == 0) {
                        c->broken = true;
                        return vmsup_fail(err, VMSUP_EX_TEMPFAIL, 0, "TLS handshake with %s: no answer within %g s",
                                          c->addr, seconds(timeout_ms));
                }
                if (n == -ECANCELED) {
                        c->broken = true;
                        return vmsup_fail(err, VMSUP_EX_TEMPFAIL, ECANCELED, "TLS handshake with %s", c->addr);
                }
                if (n < 0) {
                        c->broken = true;
                        return vmsup_fail(err, VMSUP_EX_OSERR, -n, "TLS handshake with %s: poll", c->addr);
                }
        }
}

static int tcp_connect(const char *host, const char *port, long deadline, int timeout_ms, int cancel_fd,
                       int *ret_fd, vmsup_error **err) {
        struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM }, *res = NULL;
        char where[NI_MAXHOST + NI_MAXSERV + 4];
        int r, last = ECONNREFUSED;

        format_host_port(where, sizeof(where), host, port);
        r = getaddrinfo(host, port, &hints, &res);
        if (r != 0)
                return vmsup_fail(err, r == EAI_AGAIN ? VMSUP_EX_TEMPFAIL : VMSUP_EX_UNAVAILABLE,
                                  r == EAI_SYSTEM ? errno : 0, "connect to %s: %s", where,
                                  r == EAI_SYSTEM ? "resolve" : gai_strerror(r));

        for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
                _cleanup_close_ int fd = -1;
                int soerr = 0;
                socklen_t sl = sizeof(soerr);

                fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, ai->ai_protocol);
                if (fd < 0) {
                        last = errno;
                        continue;
                }
                if (connect(fd, ai->ai_addr, ai->ai_addrlen) < 0) {
                        if (errno != EINPROGRESS) {
                                last = errno;
                                continue;
                        }
                        for (;;) {
                                int left = left_ms(deadline), n = left == 0 ? 0 : poll_cancel(fd, POLLOUT, cancel_fd, left);

                                if (n == -EINTR)
                                        continue;
                                if (n > 0)
                                        break;
                                freeaddrinfo(res);
                                if (n == 0)
                                        return vmsup_fail(err, VMSUP_EX_TEMPFAIL, 0,
                                                          "connect to %s: no answer within %g s", where,
                                                          seconds(timeout_ms));
                                return vmsup_fail(err, n == -ECANCELED ? VMSUP_EX_TEMPFAIL : VMSUP_EX_OSERR, -n,
                                                  "connect to %s", where);
                        }
                        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0)
                                soerr = errno;
                        if (soerr != 0) {
                                last = soerr;
                                continue;
                        }
                }
                freeaddrinfo(res);
                *ret_fd = TAKE_FD(fd);
                return 0;
        }
        freeaddrinfo(res);
        return vmsup_fail(err, VMSUP_EX_UNAVAILABLE, last, "connect to %s", where);
}

int migchan_tcp_connect_cancel(const char *host, const char *port, int timeout_ms, int cancel_fd, int *ret_fd,
                               vmsup_error **err) {
        if (!host || !*host || !port || !*port)
                return vmsup_fail(err, VMSUP_EX_SOFTWARE, 0, "connect: no host or port");
        return tcp_connect(host, port, deadline_of(timeout_ms), timeout_ms, cancel_fd, ret_fd, err);
}

int migchan_tcp_connect(const char *host, const char *port, int timeout_ms, int *ret_fd, vmsup_error **err) {
        return migchan_tcp_connect_cancel(host, port, timeout_ms, -1, ret_fd, err);
}

int migchan_connect(const char *host, const char *port, const struct migchan_tls *tls, int timeout_ms,
                    struct migchan **ret, vmsup_error **err) {
        return migchan_connect_cancel(host, port, tls, timeout_ms, -1, ret, err);
}

int migchan_connect_cancel(const char *host, const char *port, const struct migchan_tls *tls, int timeout_ms,
                           int cancel_fd, struct migchan **ret, vmsup_error **err) {
        _cleanup_migchan_ struct migchan *c = NULL;
        long deadline = deadline_of(timeout_ms);
        int fd = -1, r;

        if (!host || !*host || !port || !*port)
                return vmsup_fail(err, VMSUP_EX_SOFTWARE, 0, "migration channel: no host or port to connect to");
        r = chan_new(tls, false, &c, err);
        if (r < 0)
                return r;
        c->cancel_fd = cancel_fd;
        r = tcp_connect(host, port, deadline, timeout_ms, cancel_fd, &fd, err);
        if (r < 0)
                return r;
        chan_attach(c, fd);
        r = chan_handshake(c, deadline, timeout_ms, err);
        if (r < 0)
                return r;
        *ret = TAKE_PTR(c);
        return 0;
}

/* ---- the client side one step at a time (a caller on an event loop) ---- */

struct migchan_tcp {
        struct addrinfo *res, *next; /* the addresses, and the next one to try */
        int fd;                      /* connecting, or -1 */
        int last;                    /* errno of the last address that failed */
        char where[NI_MAXHOST + NI_MAXSERV + 4];
};

struct migchan_tcp *migchan_tcp_free(struct migchan_tcp *t) {
        if (!t)
                return NULL;
        if (t->fd >= 0)
                close(t->fd);
        if (t->res)
                freeaddrinfo(t->res);
        free(t);
        return NULL;
}

/* A connect on the next address: 0 under way (or through), <0 none left. */
static int tcp_try_next(struct migchan_tcp *t, vmsup_error **err) {
        while (t->next) {
                struct addrinfo *ai = t->next;

                t->next = ai->ai_next;
                t->fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, ai->ai_protocol);
                if (t->fd < 0) {
                        t->last = errno;
                        continue;
                }
                if (connect(t->fd, ai->ai_addr, ai->ai_addrlen) == 0 || errno == EINPROGRESS)
                        return 0;
                t->last = errno;
                closep(&t->fd);
        }
        return vmsup_fail(err, VMSUP_EX_UNAVAILABLE, t->last, "connect to %s", t->where);
}

int migchan_tcp_connect_start(const char *host, const char *port, struct migchan_tcp **ret, vmsup_error **err) {
        struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM };
        struct migchan_tcp *t;
        int r;

        if (!host || !*host || !port || !*port)
                return vmsup_fail(err, VMSUP_EX_SOFTWARE, 0, "connect: no host or port");
        t = calloc(1, sizeof(*t));
        if (!t)
                return vmsup_fail(err, VMSUP_EX_OSERR, ENOMEM, "connect");
        t->fd = -1;
        t->last = ECONNREFUSED;
        format_host_port(t->where, sizeof(t->where), host, port);
        r = getaddrinfo(host, port, &hints, &t->res);
        if (r != 0) {
                vmsup_fail(err, r == EAI_AGAIN ? VMSUP_EX_TEMPFAIL : VMSUP_EX_UNAVAILABLE, r == EAI_SYSTEM ? errno : 0,
                           "connect to %s: %s", t->where, r == EAI_SYSTEM ? "resolve" : gai_strerror(r));
                t->res = NULL;
                migchan_tcp_free(t);
                return -EHOSTUNREACH;
        }
        t->next = t->res;
        r = tcp_try_next(t, err);
        if (r < 0) {
                migchan_tcp_free(t);
                return r;
        }
        *ret = t;
        return 0;
}

int migchan_tcp_connect_step(struct migchan_tcp *t, int *ret_fd, vmsup_error **err) {
        for (;;) {
                struct pollfd p = { .fd = t->fd, .events = POLLOUT };
                int soerr = 0;
                socklen_t sl = sizeof(soerr);

                /* not a wait: is this connect through? */
                if (poll(&p, 1, 0) == 0)
                        return 0;
                if (getsockopt(t->fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0)
                        soerr = errno;
                if (soerr == 0) {
                        *ret_fd = TAKE_FD(t->fd);
                        return 1;
                }
                t->last = soerr;
                closep(&t->fd);
                if (tcp_try_next(t, err) < 0)
                        return -t->last;
        }
}

int migchan_tcp_fd(const struct migchan_tcp *t) {
        return t->fd;
}

int migchan_tcp_connect_timeout(struct migchan_tcp *t, int timeout_ms, vmsup_error **err) {
        return vmsup_fail(err, VMSUP_EX_TEMPFAIL, 0, "connect to %s: no answer within %g s", t->where,
                          seconds(timeout_ms));
}

int migchan_connect_start(const char *host, const char *port, const struct migchan_tls *tls, struct migchan **ret,
                          vmsup_error **err) {
        _cleanup_migchan_ struct migchan *c = NULL;
        int r;

        if (!host || !*host || !port || !*port)
                return vmsup_fail(err, VMSUP_EX_SOFTWARE, 0, "migration channel: no host or port to connect to");
        r = chan_new(tls, false, &c, err);
        if (r < 0)
                return r;
        r = migchan_tcp_connect_start(host, port, &c->tcp, err);
        if (r < 0)
                return r;
        *ret = TAKE_PTR(c);
        return 0;
}

int migchan_connect_step(struct migchan *c, vmsup_error **err) {
        if (c->tcp) {
                int fd = -1, r = migchan_tcp_connect_step(c->tcp, &fd, err);

                if (r <= 0) {
                        if (r < 0)
                                c->broken = true;
                        return r;
                }
                c->tcp = migchan_tcp_free(c->tcp);
                chan_attach(c, fd);
        }
        return migchan_handshake_step(c, err);
}

short migchan_connect_events(const struct migchan *c) {
        return c->tcp ? POLLOUT : migchan_handshake_events(c);
}

int migchan_connect_timeout(struct migchan *c, int timeout_ms, vmsup_error **err) {
        c->broken = true;
        if (c->tcp)
                return migchan_tcp_connect_timeout(c->tcp, timeout_ms, err);
        return vmsup_fail(err, VMSUP_EX_TEMPFAIL, 0, "TLS handshake with %s: no answer within %g s", c->addr,
                          seconds(timeout_ms));
}

static int listen_on(const struct addrinfo *ai, bool dual_stack, int *ret_fd) {
        _cleanup_close_ int fd = -1;
        int one = 1, zero = 0;

        fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0)
                return -errno;
        if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0)
                return -errno;
        if (dual_stack && setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero)) < 0)
                return -errno;
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, 16) < 0)
                return -errno;
        *ret_fd = TAKE_FD(fd);
        return 0;
}

int migchan_listen(const char *addr, const char *port, vmsup_error **err) {
        bool any = !addr || !*addr;
        /* any: IPv6 dual-stack first, IPv4 when the host has no IPv6 */
        static const int any_families[] = { AF_INET6, AF_INET };
        char where[NI_MAXHOST + NI_MAXSERV + 4];
        int r = -EADDRNOTAVAIL, fd = -1;

        if (!port || !*port)
                return vmsup_fail(err, VMSUP_EX_SOFTWARE, 0, "listen for migration connections: no port");
        format_host_port(where, sizeof(where), any ? "*" : addr, port);
        for (size_t i = 0; i < (any ? ARRAY_SIZE(any_families) : 1); i++) {
                struct addrinfo hints = { .ai_family = any ? any_families[i] : AF_UNSPEC,
                                          .ai_socktype = SOCK_STREAM,
                                          .ai_flags = AI_PASSIVE },
                                *res = NULL;
                int g = getaddrinfo(any ? NULL : addr, port, &hints, &res);

                if (g != 0) {
                        if (any && (g == EAI_FAMILY || g == EAI_ADDRFAMILY || g == EAI_NONAME))
                                continue;
                        return vmsup_fail(err, VMSUP_EX_CONFIG, g == EAI_SYSTEM ? errno : 0,
                                          "listen for migration connections on %s: %s", where,
                                          g == EAI_SYSTEM ? "resolve" : gai_strerror(g));
                }
                for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
                        r = listen_on(ai, any && ai->ai_family == AF_INET6, &fd);
                        if (r == 0)
                                break;
                }
                freeaddrinfo(res);
                if (r == 0)
                        return fd;
                if (!(any && (r == -EAFNOSUPPORT || r == -EADDRNOTAVAIL)))
                        break;
        }
        return vmsup_fail(err, VMSUP_EX_UNAVAILABLE, -r, "listen for migration connections on %s", where);
}

int migchan_tls_check(const struct migchan_tls *tls, bool server, vmsup_error **err) {
        _cleanup_migchan_ struct migchan *c = NULL;

        return chan_new(tls, server, &c, err);
}

int migchan_accept_start(int listen_fd, const struct migchan_tls *tls, struct migchan **ret, vmsup_error **err) {
        _cleanup_migchan_ struct migchan *c = NULL;
        int fd, r;

        r = chan_new(tls, true, &c, err);
        if (r < 0)
                return r;
        for (;;) {
                fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
                if (fd >= 0)
                        break;
                if (errno == EINTR || errno == ECONNABORTED)
                        continue; /* gone before we took it: the next one */
                if (errno == EAGAIN || errno == EWOULDBLOCK)
                        return 0; /* none pending, or another process took it */
                return vmsup_fail(err, VMSUP_EX_OSERR, errno, "accept a migration connection");
        }
        chan_attach(c, fd);
        *ret = TAKE_PTR(c);
        return 1;
}

int migchan_accept(int listen_fd, const struct migchan_tls *tls, int timeout_ms, struct migchan **ret,
                   vmsup_error **err) {
        _cleanup_migchan_ struct migchan *c = NULL;
        long deadline = deadline_of(timeout_ms);
        int r;

        for (;;) {
                struct pollfd p = { .fd = listen_fd, .events = POLLIN };
                int n = poll(&p, 1, left_ms(deadline));

                if (n == 0)
                        return vmsup_fail(err, VMSUP_EX_TEMPFAIL, 0, "no migration connection within %g s",
                                          seconds(timeout_ms));
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return vmsup_fail(err, VMSUP_EX_OSERR, errno, "wait for a migration connection");
                }
                r = migchan_accept_start(listen_fd, tls, &c, err);
                if (r < 0)
                        return r;
                if (r > 0)
                        break;
        }
        /* a fresh budget: a source that connects late still gets a whole handshake */
        r = chan_handshake(c, deadline_of(timeout_ms), timeout_ms, err);
        if (r < 0)
                return r;
        *ret = TAKE_PTR(c);
        return 0;
}

void migchan_set_cancel_fd(struct migchan *c, int cancel_fd) {
        c->cancel_fd = cancel_fd;
}

int migchan_fd(const struct migchan *c) {
        return c->tcp ? migchan_tcp_fd(c->tcp) : c->fd;
}

const char *migchan_peer(const struct migchan *c) {
        return c->peer;
}

const char *migchan_local_addr(const struct migchan *c) {
        return c->local_addr;
}

/* > 0 try again (ready, or EINTR: the deadline still holds), 0 the time is up, -errno
 * (-ECANCELED: the channel's cancel fd is readable). */
static int wait_io(struct migchan *c, long deadline) {
        int left = left_ms(deadline), n;

        if (left == 0)
                return 0;
        n = poll_cancel(c->fd, gnutls_record_get_direction(c->session) ? POLLOUT : POLLIN, c->cancel_fd, left);
        return n == -EINTR ? 1 : n;
}

int migchan_send(struct migchan *c, enum mig_msg type, const void *payload, size_t len, int timeout_ms,
                 vmsup_error **err) {
        long deadline = deadline_of(timeout_ms);
        char reason[WHY_MAX];
        uint8_t *frame;
        size_t total, off = 0;
        int r;

        if (c->broken)
                return vmsup_fail(err, VMSUP_EX_SOFTWARE, 0, "%s: send %s: the migration channel failed earlier",
                                  c->peer, mig_msg_name(type));
        if (!payload && len > 0)
                return vmsup_fail(err, VMSUP_EX_SOFTWARE, 0, "%s: send %s: no payload", c->peer, mig_msg_name(type));
        r = frame_check(type, payload ? payload : (const void *) "", len, NULL, reason);
        if (r == -ENOMEM)
                return vmsup_fail(err, VMSUP_EX_OSERR, ENOMEM, "%s: send %s", c->peer, mig_msg_name(type));
        if (r < 0)
                return vmsup_fail(err, VMSUP_EX_SOFTWARE, 0, "%s: send %s: a frame the peer would refuse: %s", c->peer,
                                  mig_msg_name(type), reason);

        total = MIGCHAN_HEADER_LEN + len;
        frame = type == MIG_SECRET ? secmem_alloc(total) : malloc(total);
        if (!frame)
                return vmsup_fail(err, VMSUP_EX_OSERR, ENOMEM, "%s: send %s", c->peer, mig_msg_name(type));
        frame[0] = MIGCHAN_PROTOCOL;
        frame[1] = (uint8_t) type;
        frame[2] = frame[3] = 0;
        frame[4] = (uint8_t) (len >> 24);
        frame[5] = (uint8_t) (len >> 16);
        frame[6] = (uint8_t) (len >> 8);
        frame[7] = (uint8_t) len;
        if (len)
                memcpy(frame + MIGCHAN_HEADER_LEN, payload, len);

        r = 0;
        while (off < total) {
                /* after GNUTLS_E_AGAIN gnutls wants the very same arguments again */
                ssize_t n = gnutls_record_send(c->session, frame + off, total - off);

                if (n >= 0) {
                        off += (size_t) n;
                        continue;
                }
                if (n == GNUTLS_E_AGAIN || n == GNUTLS_E_INTERRUPTED) {
                        int w = wait_io(c, deadline);

                        if (w == 0) {
                                r = chan_fail(c, err, VMSUP_EX_TEMPFAIL, 0,
                                              "send %s: the migration peer took nothing within %g s",
                                              mig_msg_name(type), seconds(timeout_ms));
                                break;
                        }
                        if (w < 0) {
                                r = chan_fail(c, err, w == -ECANCELED ? VMSUP_EX_TEMPFAIL : VMSUP_EX_OSERR, -w, "send %s",
                                              mig_msg_name(type));
                                break;
                        }
                        continue;
                }
                if (n == GNUTLS_E_PUSH_ERROR && (c->io_errno == EPIPE || c->io_errno == ECONNRESET))
                        r = chan_fail(c, err, VMSUP_EX_UNAVAILABLE, 0,
                                      "send %s: the migration peer closed the connection", mig_msg_name(type));
                else {
                        char text[256];

                        tls_error_text(c, (int) n, text, sizeof(text));
                        r = chan_fail(c, err, VMSUP_EX_UNAVAILABLE, io_errnum(c, (int) n), "send %s: TLS error: %s",
                                      mig_msg_name(type), text);
                }
                break;
        }
        if (type == MIG_SECRET)
                secmem_free(frame);
        else {
                erase(frame, total);
                free(frame);
        }
        return r;
}

int migchan_send_json(struct migchan *c, enum mig_msg type, json_object *o, int timeout_ms, vmsup_error **err) {
        const char *s = o ? json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN) : "{}";

        if (!s)
                return vmsup_fail(err, VMSUP_EX_OSERR, ENOMEM, "%s: send %s", c->peer, mig_msg_name(type));
        if (type == MIG_SECRET)
                return vmsup_fail(err, VMSUP_EX_SOFTWARE, 0, "%s: send SECRET: its payload is not JSON", c->peer);
        return migchan_send(c, type, s, strlen(s), timeout_ms, err);
}

/* Some bytes of the frame in progress: > 0 read, 0 nothing available yet, < 0 error. */
/* Some bytes of the frame in progress: > 0 read, 0 nothing available yet, < 0 error. */
static int read_some(struct migchan *c, uint8_t *dst, size_t want, vmsup_error **err) {
        char where[64] = "", text[256];
        ssize_t n;

        do
                n = gnutls_record_recv(c->session, dst, want);
        while (n == GNUTLS_E_INTERRUPTED || (n < 0 && n != GNUTLS_E_AGAIN && !gnutls_error_is_fatal((int) n)));
        if (n > 0)
                return (int) n;
        if (n == GNUTLS_E_AGAIN)
                return 0;

        if (c->hdr_got == MIGCHAN_HEADER_LEN)
                snprintf(where, sizeof(where), " in the middle of a %s message", mig_msg_name(c->hdr[1]));
        else if (c->hdr_got > 0)
                snprintf(where, sizeof(where), " in the middle of a frame header");
        if (n == 0)
                return chan_fail(c, err, VMSUP_EX_UNAVAILABLE, 0, "the migration peer closed the connection%s", where);
        if (n == GNUTLS_E_PREMATURE_TERMINATION || (n == GNUTLS_E_PULL_ERROR && c->io_errno == ECONNRESET))
                return chan_fail(c, err, VMSUP_EX_UNAVAILABLE, 0,
                                 "the migration peer closed the connection%s (without TLS close_notify)", where);
        tls_error_text(c, (int) n, text, sizeof(text));
        return chan_fail(c, err, VMSUP_EX_UNAVAILABLE, io_errnum(c, (int) n), "TLS error: %s", text);
}

/* The header is complete: check it before a byte of the payload is read. */
static int start_payload(struct migchan *c, vmsup_error **err) {
        const uint8_t *h = c->hdr;
        unsigned flags = (unsigned) h[2] << 8 | h[3];
        size_t len = (size_t) h[4] << 24 | (size_t) h[5] << 16 | (size_t) h[6] << 8 | h[7];
        char reason[WHY_MAX];

        if (h[0] != MIGCHAN_PROTOCOL)
                return chan_fail(c, err, VMSUP_EX_DATAERR, 0,
                                 "invalid migration message: wrong protocol version %u (this host speaks %d: "
                                 "run the same vmsup release on both hosts)", h[0], MIGCHAN_PROTOCOL);
        if (!msg_known(h[1]))
                return chan_fail(c, err, VMSUP_EX_DATAERR, 0, "invalid migration message: unknown message type %u",
                                 h[1]);
        if (flags != 0)
                return chan_fail(c, err, VMSUP_EX_DATAERR, 0,
                                 "invalid migration message: %s with flags 0x%04x (must be 0)", mig_msg_name(h[1]),
                                 flags);
        if (check_length(h[1], len, reason) < 0)
                return chan_fail(c, err, VMSUP_EX_DATAERR, 0, "invalid migration message: %s", reason);

        /* A passphrase lands only in locked, undumpable memory. */
        c->buf_secmem = h[1] == MIG_SECRET;
        c->buf = c->buf_secmem ? secmem_alloc(len + 1) : calloc(1, len + 1);
        if (!c->buf)
                return chan_fail(c, err, VMSUP_EX_OSERR, ENOMEM, "receive a %s message", mig_msg_name(h[1]));
        c->len = len;
        c->got = 0;
        return 0;
}

static int finish_frame(struct migchan *c, struct mig_frame *ret, vmsup_error **err) {
        enum mig_msg type = c->hdr[1];
        json_object *o = NULL;
        char reason[WHY_MAX];
        int r;

        c->buf[c->len] = 0;
        r = frame_check(type, c->buf, c->len, &o, reason);
        if (r == -ENOMEM)
                return chan_fail(c, err, VMSUP_EX_OSERR, ENOMEM, "receive a %s message", mig_msg_name(type));
        if (r < 0)
                return chan_fail(c, err, VMSUP_EX_DATAERR, 0, "invalid migration message: %s", reason);
        if (type == MIG_ABORT && sanitize_abort(o) < 0) {
                json_object_put(o);
                return chan_fail(c, err, VMSUP_EX_OSERR, ENOMEM, "receive a %s message", mig_msg_name(type));
        }
        *ret = (struct mig_frame) { .type = type, .json = o, .len = c->len };
        if (type == MIG_SECRET) {
                ret->secret = TAKE_PTR(c->buf);
                c->buf_secmem = false;
        }
        frame_reset(c);
        return 1;
}

int migchan_recv(struct migchan *c, struct mig_frame *ret, vmsup_error **err) {
        int n, r;

        if (c->broken)
                return vmsup_fail(err, VMSUP_EX_SOFTWARE, 0, "%s: receive: the migration channel failed earlier",
                                  c->peer);
        for (;;) {
                if (c->hdr_got < MIGCHAN_HEADER_LEN) {
                        n = read_some(c, c->hdr + c->hdr_got, MIGCHAN_HEADER_LEN - c->hdr_got, err);
                        if (n <= 0)
                                return n;
                        c->hdr_got += (size_t) n;
                        if (c->hdr_got < MIGCHAN_HEADER_LEN)
                                continue;
                        r = start_payload(c, err);
                        if (r < 0)
                                return r;
                }
                if (c->got < c->len) {
                        n = read_some(c, c->buf + c->got, c->len - c->got, err);
                        if (n <= 0)
                                return n;
                        c->got += (size_t) n;
                        if (c->got < c->len)
                                continue;
                }
                return finish_frame(c, ret, err);
        }
}

int migchan_recv_wait(struct migchan *c, enum mig_msg expect, int timeout_ms, struct mig_frame *ret,
                      vmsup_error **err) {
        long deadline = deadline_of(timeout_ms);
        struct mig_frame f = { 0 };
        int r;

        for (;;) {
                r = migchan_recv(c, &f, err);
                if (r < 0)
                        return r;
                if (r > 0)
                        break;
                r = wait_io(c, deadline);
                if (r == 0)
                        return vmsup_fail(err, VMSUP_EX_TEMPFAIL, 0,
                                          "%s: no answer from the migration peer within %g s (waiting for %s)", c->peer,
                                          seconds(timeout_ms), expect ? mig_msg_name(expect) : "a message");
                if (r < 0)
                        return chan_fail(c, err, r == -ECANCELED ? VMSUP_EX_TEMPFAIL : VMSUP_EX_OSERR, -r, "receive");
        }
        if (expect && f.type != expect && f.type != MIG_ABORT) {
                r = chan_fail(c, err, VMSUP_EX_DATAERR, 0, "unexpected %s message (expected %s)", mig_msg_name(f.type),
                              mig_msg_name(expect));
                mig_frame_clear(&f);
                return r;
        }
        *ret = f;
        return 0;
}

void mig_frame_clear(struct mig_frame *f) {
        if (!f)
                return;
        secmem_free(f->secret);
        json_object_put(f->json);
        *f = (struct mig_frame) { 0 };
}

/* ---- keeping another CA apart from the channel's ---------------------------------- */

struct crt_list {
        gnutls_x509_crt_t *crts;
        unsigned n;
};

static void crt_list_clear(struct crt_list *l) {
        for (unsigned i = 0; i < l->n; i++)
                gnutls_x509_crt_deinit(l->crts[i]);
        gnutls_free(l->crts);
        *l = (struct crt_list) { 0 };
}

/* Every certificate of a PEM file; none is an error. */
static int crt_list_load(const char *file, struct crt_list *ret, vmsup_error **err) {
        gnutls_datum_t data = { 0 };
        int r = gnutls_load_file(file, &data);

        if (r < 0)
                return vmsup_fail(err, VMSUP_EX_CONFIG, 0, "load '%s': %s", file, gnutls_strerror(r));
        r = gnutls_x509_crt_list_import2(&ret->crts, &ret->n, &data, GNUTLS_X509_FMT_PEM, 0);
        gnutls_free(data.data);
        if (r < 0 || ret->n == 0) {
                *ret = (struct crt_list) { 0 };
                return vmsup_fail(err, VMSUP_EX_CONFIG, 0, "load '%s': %s", file,
                                  r < 0 ? gnutls_strerror(r) : "no certificate in it");
        }
        return 0;
}

/* "CN=..." of a certificate, for messages (its whole DN when it has no CN). */
static void crt_name(gnutls_x509_crt_t crt, char *out, size_t n) {
        char buf[256];
        size_t len = sizeof(buf);

        if (gnutls_x509_crt_get_dn_by_oid(crt, GNUTLS_OID_X520_COMMON_NAME, 0, 0, buf, &len) == 0)
                snprintf(out, n, "CN=%.64s", buf);
        else if (len = sizeof(buf), gnutls_x509_crt_get_dn(crt, buf, &len) == 0)
                snprintf(out, n, "%.128s", buf);
        else
                snprintf(out, n, "(no name)");
        for (char *p = out; *p; p++)
                if ((unsigned char) *p < 0x20 || (unsigned char) *p > 0x7e)
                        *p = '?';
}

/* Whether chain[0], with the rest of chain as the certificates that may lead to a trust
 * anchor, verifies against tl. Times are not checked: a certificate that expired or is
 * not valid yet is one an operator may renew, and the channel would then accept it. */
static bool trusted(gnutls_x509_trust_list_t tl, gnutls_x509_crt_t *chain, unsigned n) {
        unsigned status = 1;
        int r = gnutls_x509_trust_list_verify_crt2(tl, chain, n, NULL, 0,
                                                   GNUTLS_VERIFY_DISABLE_TIME_CHECKS |
                                                           GNUTLS_VERIFY_DISABLE_TRUSTED_TIME_CHECKS,
                                                   &status, NULL);

        return r == 0 && status == 0;
}

int migchan_tls_check_apart(const char *ca_file, const char *other_ca_file, const char *const *certs,
                            vmsup_error **err) {
        struct crt_list ours = { 0 }, theirs = { 0 }, leaf = { 0 };
        gnutls_x509_trust_list_t tl = NULL;
        gnutls_x509_crt_t *chain = NULL;
        char name[160];
        int r;

        if ((r = crt_list_load(ca_file, &ours, err)) < 0 || (r = crt_list_load(other_ca_file, &theirs, err)) < 0)
                goto out;
        for (unsigned i = 0; i < theirs.n; i++)
                for (unsigned j = 0; j < ours.n; j++)
                        if (gnutls_x509_crt_equals(theirs.crts[i], ours.crts[j])) {
                                crt_name(theirs.crts[i], name, sizeof(name));
                                r = vmsup_fail(err, VMSUP_EX_CONFIG, 0, "the CA certificate %s is in both '%s' and '%s'",
                                               name, ca_file, other_ca_file);
                                goto out;
                        }
        r = gnutls_x509_trust_list_init(&tl, 0);
        if (r < 0) {
                r = vmsup_fail(err, VMSUP_EX_OSERR, 0, "trust list: %s", gnutls_strerror(r));
                goto out;
        }
        /* the list owns the certificates from here (deinit with all = 1 frees them) */
        r = gnutls_x509_trust_list_add_cas(tl, ours.crts, ours.n, 0);
        gnutls_free(ours.crts);
        ours = (struct crt_list) { 0 };
        if (r < 0) {
                r = vmsup_fail(err, VMSUP_EX_OSERR, 0, "trust list of '%s': %s", ca_file, gnutls_strerror(r));
                goto out;
        }
        for (unsigned i = 0; i < theirs.n; i++)
                if (trusted(tl, &theirs.crts[i], 1)) {
                        crt_name(theirs.crts[i], name, sizeof(name));
                        r = vmsup_fail(err, VMSUP_EX_CONFIG, 0, "the CA certificate %s of '%s' is issued by a CA of '%s'",
                                       name, other_ca_file, ca_file);
                        goto out;
                }
        for (size_t k = 0; certs && certs[k]; k++) {
                unsigned n;

                if (access(certs[k], F_OK) < 0 && errno == ENOENT)
                        continue;
                if ((r = crt_list_load(certs[k], &leaf, err)) < 0)
                        goto out;
                n = leaf.n + theirs.n;
                chain = calloc(n, sizeof(*chain));
                if (!chain) {
                        r = vmsup_fail(err, VMSUP_EX_OSERR, ENOMEM, "certificate chain");
                        goto out;
                }
                memcpy(chain, leaf.crts, leaf.n * sizeof(*chain));
                memcpy(chain + leaf.n, theirs.crts, theirs.n * sizeof(*chain));
                if (trusted(tl, chain, n)) {
                        crt_name(leaf.crts[0], name, sizeof(name));
                        r = vmsup_fail(err, VMSUP_EX_CONFIG, 0, "the certificate %s in '%s' is accepted by the CAs of '%s'",
                                       name, certs[k], ca_file);
                        goto out;
                }
                free(chain);
                chain = NULL;
                crt_list_clear(&leaf);
        }
        r = 0;
out:
        free(chain);
        crt_list_clear(&leaf);
        crt_list_clear(&theirs);
        crt_list_clear(&ours);
        if (tl)
                gnutls_x509_trust_list_deinit(tl, 1);
        return r;
}
