#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/util.h"
#include "crypto/tls.h"

/* TLS 1.3 only: no renegotiation, no static RSA, every cipher suite AEAD with forward
 * secrecy, and the client's certificate travels encrypted. */
#define TLS_PRIORITY "NORMAL:-VERS-ALL:+VERS-TLS1.3"

struct tls_session {
        int fd;
        int io_errno; /* errno of the last failed recv/send under gnutls */
        gnutls_certificate_credentials_t cred;
        gnutls_session_t session;
        /* gnutls keeps a pointer to these for the session's lifetime */
        gnutls_typed_vdata_st vdata[2];
        char *peer_name;
        bool handshake_done;
};

static bool is_ip_literal(const char *s) {
        unsigned char buf[sizeof(struct in6_addr)];

        return inet_pton(AF_INET, s, buf) == 1 || inet_pton(AF_INET6, s, buf) == 1;
}

/* ---- the transport: the caller's socket ---- */

static ssize_t session_pull(gnutls_transport_ptr_t p, void *data, size_t len) {
        struct tls_session *t = p;
        ssize_t n = recv(t->fd, data, len, 0);

        if (n < 0)
                t->io_errno = errno;
        return n;
}

static ssize_t session_vec_push(gnutls_transport_ptr_t p, const giovec_t *iov, int iovcnt) {
        struct tls_session *t = p;
        struct msghdr m = { .msg_iov = (struct iovec *) iov, .msg_iovlen = (size_t) iovcnt };
        /* MSG_NOSIGNAL: a peer that went away is an error to report, not a SIGPIPE */
        ssize_t n = sendmsg(t->fd, &m, MSG_NOSIGNAL);

        if (n < 0)
                t->io_errno = errno;
        return n;
}

static int session_pull_timeout(gnutls_transport_ptr_t p, unsigned int ms) {
        struct tls_session *t = p;
        struct pollfd pfd = { .fd = t->fd, .events = POLLIN };
        int n;

        n = poll(&pfd, 1, ms == GNUTLS_INDEFINITE_TIMEOUT ? -1 : ms > INT_MAX ? INT_MAX : (int) ms);
        if (n < 0)
                t->io_errno = errno;
        return n;
}

/* ---- the session ---- */

struct tls_session *tls_session_free(struct tls_session *t) {
        if (!t)
                return NULL;
        if (t->session)
                gnutls_deinit(t->session);
        if (t->cred)
                gnutls_certificate_free_credentials(t->cred);
        free(t->peer_name);
        free(t);
        return NULL;
}

static inline void tls_session_freep(struct tls_session **t) {
        tls_session_free(*t);
}

void tls_session_bye(struct tls_session *t) {
        if (t && t->session && t->handshake_done)
                (void) gnutls_bye(t->session, GNUTLS_SHUT_WR);
}

int tls_session_new(const struct tls_setup *setup, bool server, struct tls_session **ret, vmsup_error **err) {
        __attribute__((cleanup(tls_session_freep))) struct tls_session *t = NULL;
        const char *side = server ? "server" : "client";
        const char *what = setup && setup->what ? setup->what : "TLS";
        int r;

        if (!setup || !setup->ca_file || !setup->cert_file || !setup->key_file)
                return vmsup_fail(err, VMSUP_ERR_INTERNAL, 0, "%s TLS %s: CA, certificate and key are required", what,
                                  side);
        if (!server && (!setup->peer_name || !*setup->peer_name))
                return vmsup_fail(err, VMSUP_ERR_INTERNAL, 0,
                                  "%s TLS client: the name the server's certificate must carry is required", what);
        t = calloc(1, sizeof(*t));
        if (!t)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "%s channel", what);
        t->fd = -1;
        if (!server && !(t->peer_name = strdup(setup->peer_name)))
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "%s channel", what);

        r = gnutls_certificate_allocate_credentials(&t->cred);
        if (r < 0)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, 0, "%s TLS credentials: %s", what, gnutls_strerror(r));
        r = gnutls_certificate_set_x509_trust_file(t->cred, setup->ca_file, GNUTLS_X509_FMT_PEM);
        if (r < 0)
                return vmsup_fail(err, VMSUP_ERR_CONFIG, 0, "load the %s CA certificate '%s': %s", what,
                                  setup->ca_file, gnutls_strerror(r));
        if (r == 0)
                return vmsup_fail(err, VMSUP_ERR_CONFIG, 0, "load the %s CA certificate '%s': no certificate in it",
                                  what, setup->ca_file);
        r = gnutls_certificate_set_x509_key_file(t->cred, setup->cert_file, setup->key_file, GNUTLS_X509_FMT_PEM);
        if (r < 0)
                return vmsup_fail(err, VMSUP_ERR_CONFIG, 0, "load the %s %s certificate '%s' and key '%s': %s", what,
                                  side, setup->cert_file, setup->key_file, gnutls_strerror(r));

        /* No session tickets: every connection authenticates both hosts in full. */
        r = gnutls_init(&t->session, (server ? GNUTLS_SERVER : GNUTLS_CLIENT) | GNUTLS_NONBLOCK | GNUTLS_NO_TICKETS);
        if (r < 0)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, 0, "%s TLS session: %s", what, gnutls_strerror(r));
        r = gnutls_priority_set_direct(t->session, TLS_PRIORITY, NULL);
        if (r < 0)
                return vmsup_fail(err, VMSUP_ERR_INTERNAL, 0, "%s TLS priority '%s': %s", what, TLS_PRIORITY,
                                  gnutls_strerror(r));
        r = gnutls_credentials_set(t->session, GNUTLS_CRD_CERTIFICATE, t->cred);
        if (r < 0)
                return vmsup_fail(err, VMSUP_ERR_INTERNAL, 0, "%s TLS credentials: %s", what, gnutls_strerror(r));
        if (server) {
                gnutls_certificate_server_set_request(t->session, GNUTLS_CERT_REQUIRE);
                /* Without our CA's name in the request, a client with a certificate from
                 * another CA sends it (and is told "issuer unknown") instead of sending
                 * none; our clients have one certificate each, nothing to choose. */
                gnutls_certificate_send_x509_rdn_sequence(t->session, 1);
                t->vdata[0] = (gnutls_typed_vdata_st) { GNUTLS_DT_KEY_PURPOSE_OID,
                                                        (unsigned char *) GNUTLS_KP_TLS_WWW_CLIENT, 0 };
                gnutls_session_set_verify_cert2(t->session, t->vdata, 1, 0);
        } else {
                /* SNI carries DNS names only, never an address (RFC 6066) */
                if (!is_ip_literal(t->peer_name)) {
                        r = gnutls_server_name_set(t->session, GNUTLS_NAME_DNS, t->peer_name, strlen(t->peer_name));
                        if (r < 0)
                                return vmsup_fail(err, VMSUP_ERR_CONFIG, 0, "%s peer name '%s': %s", what,
                                                  t->peer_name, gnutls_strerror(r));
                }
                /* a DNS_HOSTNAME that is an address is matched against the IP SANs */
                t->vdata[0] = (gnutls_typed_vdata_st) { GNUTLS_DT_DNS_HOSTNAME, (unsigned char *) t->peer_name, 0 };
                t->vdata[1] = (gnutls_typed_vdata_st) { GNUTLS_DT_KEY_PURPOSE_OID,
                                                        (unsigned char *) GNUTLS_KP_TLS_WWW_SERVER, 0 };
                gnutls_session_set_verify_cert2(t->session, t->vdata, 2, 0);
        }
        /* the caller's deadline, not gnutls' own */
        gnutls_handshake_set_timeout(t->session, 0);
        gnutls_transport_set_ptr(t->session, t);
        gnutls_transport_set_pull_function(t->session, session_pull);
        gnutls_transport_set_vec_push_function(t->session, session_vec_push);
        gnutls_transport_set_pull_timeout_function(t->session, session_pull_timeout);
        *ret = TAKE_PTR(t);
        return 0;
}

void tls_session_set_fd(struct tls_session *t, int fd) {
        t->fd = fd;
}

/* ---- errors ---- */

void tls_session_error_text(struct tls_session *t, int code, char *out, size_t n) {
        const char *alert;

        switch (code) {
        case GNUTLS_E_FATAL_ALERT_RECEIVED:
                alert = gnutls_alert_get_name(gnutls_alert_get(t->session));
                snprintf(out, n, "fatal alert from the peer: %s", alert ? alert : "(unknown alert)");
                break;
        case GNUTLS_E_UNSUPPORTED_VERSION_PACKET:
        case GNUTLS_E_NO_CIPHER_SUITES:
                /* what a TLS 1.2 peer gets: gnutls names the symptom, not the cause */
                snprintf(out, n, "%s (this host speaks only TLS 1.3)", gnutls_strerror(code));
                break;
        default:
                snprintf(out, n, "%s", gnutls_strerror(code));
        }
}

int tls_session_errno(const struct tls_session *t, int code) {
        return (code == GNUTLS_E_PULL_ERROR || code == GNUTLS_E_PUSH_ERROR) ? t->io_errno : 0;
}

/* ---- the handshake ---- */

void tls_session_peer_cn(struct tls_session *t, char *out, size_t n) {
        const gnutls_datum_t *certs;
        unsigned count = 0;
        gnutls_x509_crt_t crt;
        char cn[128];
        size_t len = sizeof(cn);

        out[0] = 0;
        certs = gnutls_certificate_get_peers(t->session, &count);
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

static int handshake_failed(struct tls_session *t, int r, const char *addr, vmsup_error **err) {
        char text[512];
        int ret;

        if (r == GNUTLS_E_CERTIFICATE_VERIFICATION_ERROR) {
                unsigned status = gnutls_session_get_verify_cert_status(t->session);
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
                if ((status & GNUTLS_CERT_UNEXPECTED_OWNER) && t->peer_name)
                        snprintf(text + len, sizeof(text) - len, " (expected '%s')", t->peer_name);
                ret = vmsup_fail(err, VMSUP_ERR_UNAVAILABLE, 0, "the certificate of %s is not trusted: %s", addr, text);
        } else if (r == GNUTLS_E_NO_CERTIFICATE_FOUND || r == GNUTLS_E_CERTIFICATE_REQUIRED)
                ret = vmsup_fail(err, VMSUP_ERR_UNAVAILABLE, 0,
                                 "TLS handshake with %s failed: the peer presented no certificate", addr);
        else {
                tls_session_error_text(t, r, text, sizeof(text));
                ret = vmsup_fail(err, VMSUP_ERR_UNAVAILABLE, tls_session_errno(t, r), "TLS handshake with %s failed: %s",
                                 addr, text);
        }
        /* tell the peer why (gnutls does not on its own); best effort, non-blocking */
        (void) gnutls_alert_send_appropriate(t->session, r);
        return ret;
}

/* The handshake went through: check what it agreed on. */
static int handshake_done(struct tls_session *t, const char *addr, vmsup_error **err) {
        /* The priority string allows nothing else; this is the check that it did. */
        if (gnutls_protocol_get_version(t->session) != GNUTLS_TLS1_3)
                return vmsup_fail(err, VMSUP_ERR_UNAVAILABLE, 0, "TLS handshake with %s: negotiated %s, not TLS 1.3",
                                  addr, gnutls_protocol_get_name(gnutls_protocol_get_version(t->session)));
        /* Likewise: the peer's certificate was verified (status 0), not skipped (status -1). */
        if (gnutls_session_get_verify_cert_status(t->session) != 0)
                return vmsup_fail(err, VMSUP_ERR_UNAVAILABLE, 0,
                                  "TLS handshake with %s: the peer's certificate was not verified", addr);
        t->handshake_done = true;
        return 0;
}

int tls_session_handshake_step(struct tls_session *t, const char *addr, vmsup_error **err) {
        int r;

        if (t->handshake_done)
                return 1;
        for (;;) {
                r = gnutls_handshake(t->session);
                if (r == 0)
                        return handshake_done(t, addr, err) < 0 ? -EPROTO : 1;
                if (r == GNUTLS_E_AGAIN)
                        return 0;
                if (r == GNUTLS_E_INTERRUPTED || !gnutls_error_is_fatal(r))
                        continue;
                return handshake_failed(t, r, addr, err);
        }
}

short tls_session_events(const struct tls_session *t) {
        return gnutls_record_get_direction(t->session) ? POLLOUT : POLLIN;
}

/* ---- records ---- */

ssize_t tls_session_recv(struct tls_session *t, void *buf, size_t len) {
        ssize_t n;

        do
                n = gnutls_record_recv(t->session, buf, len);
        while (n == GNUTLS_E_INTERRUPTED || (n < 0 && n != GNUTLS_E_AGAIN && !gnutls_error_is_fatal((int) n)));
        return n;
}

ssize_t tls_session_send(struct tls_session *t, const void *buf, size_t len) {
        return gnutls_record_send(t->session, buf, len);
}

bool tls_again(ssize_t code) {
        return code == GNUTLS_E_AGAIN || code == GNUTLS_E_INTERRUPTED;
}

bool tls_session_recv_closed(const struct tls_session *t, ssize_t code) {
        return code == GNUTLS_E_PREMATURE_TERMINATION || (code == GNUTLS_E_PULL_ERROR && t->io_errno == ECONNRESET);
}

bool tls_session_send_closed(const struct tls_session *t, ssize_t code) {
        return code == GNUTLS_E_PUSH_ERROR && (t->io_errno == EPIPE || t->io_errno == ECONNRESET);
}

/* ---- keeping another CA apart from a session's trust ---- */

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
                return vmsup_fail(err, VMSUP_ERR_CONFIG, 0, "load '%s': %s", file, gnutls_strerror(r));
        r = gnutls_x509_crt_list_import2(&ret->crts, &ret->n, &data, GNUTLS_X509_FMT_PEM, 0);
        gnutls_free(data.data);
        if (r < 0 || ret->n == 0) {
                *ret = (struct crt_list) { 0 };
                return vmsup_fail(err, VMSUP_ERR_CONFIG, 0, "load '%s': %s", file,
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
 * not valid yet is one an operator may renew, and a session would then accept it. */
static bool trusted(gnutls_x509_trust_list_t tl, gnutls_x509_crt_t *chain, unsigned n) {
        unsigned status = 1;
        int r = gnutls_x509_trust_list_verify_crt2(tl, chain, n, NULL, 0,
                                                   GNUTLS_VERIFY_DISABLE_TIME_CHECKS |
                                                           GNUTLS_VERIFY_DISABLE_TRUSTED_TIME_CHECKS,
                                                   &status, NULL);

        return r == 0 && status == 0;
}

int tls_check_apart(const char *ca_file, const char *other_ca_file, const char *const *certs, vmsup_error **err) {
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
                                r = vmsup_fail(err, VMSUP_ERR_CONFIG, 0, "the CA certificate %s is in both '%s' and '%s'",
                                               name, ca_file, other_ca_file);
                                goto out;
                        }
        r = gnutls_x509_trust_list_init(&tl, 0);
        if (r < 0) {
                r = vmsup_fail(err, VMSUP_ERR_SYSTEM, 0, "trust list: %s", gnutls_strerror(r));
                goto out;
        }
        /* the list owns the certificates from here (deinit with all = 1 frees them) */
        r = gnutls_x509_trust_list_add_cas(tl, ours.crts, ours.n, 0);
        gnutls_free(ours.crts);
        ours = (struct crt_list) { 0 };
        if (r < 0) {
                r = vmsup_fail(err, VMSUP_ERR_SYSTEM, 0, "trust list of '%s': %s", ca_file, gnutls_strerror(r));
                goto out;
        }
        for (unsigned i = 0; i < theirs.n; i++)
                if (trusted(tl, &theirs.crts[i], 1)) {
                        crt_name(theirs.crts[i], name, sizeof(name));
                        r = vmsup_fail(err, VMSUP_ERR_CONFIG, 0, "the CA certificate %s of '%s' is issued by a CA of '%s'",
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
                        r = vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "certificate chain");
                        goto out;
                }
                memcpy(chain, leaf.crts, leaf.n * sizeof(*chain));
                memcpy(chain + leaf.n, theirs.crts, theirs.n * sizeof(*chain));
                if (trusted(tl, chain, n)) {
                        crt_name(leaf.crts[0], name, sizeof(name));
                        r = vmsup_fail(err, VMSUP_ERR_CONFIG, 0, "the certificate %s in '%s' is accepted by the CAs of '%s'",
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
