/* TLS 1.3 sessions authenticated by x509 certificates on both ends (gnutls), over a
 * non-blocking socket the caller owns and waits on, and the check that keeps another CA
 * apart from a session's trust. The migration channel (migrate/migchan.h) runs on it.
 *
 * Exit codes: 78 for a CA, certificate or key that cannot be loaded, 69 for a failed
 * handshake (untrusted or missing certificate, a TLS alert, an I/O error), 70 for a
 * caller's mistake. */
#ifndef VMSUP_CRYPTO_TLS_H
#define VMSUP_CRYPTO_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "common/error.h"

struct tls_setup {
        const char *what; /* whose TLS, for messages: "migration" gives "load the migration CA certificate ..." */
        const char *ca_file, *cert_file, *key_file; /* PEM paths */
        const char *peer_name; /* client side: the name (DNS or IP) the server's certificate must carry; server side: NULL */
};

struct tls_session;

/* Credentials and session, before any network traffic: a bad CA, certificate or key
 * fails here (78). A server REQUIRES a client certificate that chains to ca_file and is
 * meant for a TLS client (any host name); a client requires the server's to chain to
 * ca_file, carry peer_name and be meant for a TLS server. No session tickets. */
int tls_session_new(const struct tls_setup *setup, bool server, struct tls_session **ret, vmsup_error **err);
/* The socket the session runs on (borrowed: the caller closes it after
 * tls_session_free()); non-blocking. */
void tls_session_set_fd(struct tls_session *t, int fd);

/* Advance the handshake without blocking: 1 when it is complete (TLS 1.3 and the peer's
 * certificate verified), 0 when it waits for the peer (poll the fd for
 * tls_session_events()), negative when it failed (69; the session is then only good for
 * tls_session_free()). addr names the peer in messages. */
int tls_session_handshake_step(struct tls_session *t, const char *addr, vmsup_error **err);
short tls_session_events(const struct tls_session *t); /* POLLIN or POLLOUT: what gnutls waits for */
/* The CN of the peer's (verified) certificate, printable characters only; "" when none. */
void tls_session_peer_cn(struct tls_session *t, char *out, size_t n);

/* Records, after the handshake. recv: > 0 bytes read, 0 the peer ended the session
 * (close_notify); send: >= 0 bytes sent. Both: a negative code otherwise, which
 * tls_again() tells apart (nothing possible yet: wait for tls_session_events(); a send
 * must then be repeated with the same arguments) from errors. */
ssize_t tls_session_recv(struct tls_session *t, void *buf, size_t len);
ssize_t tls_session_send(struct tls_session *t, const void *buf, size_t len);
bool tls_again(ssize_t code);
/* Whether the code of a failed recv (or send) means the peer went away without TLS
 * close_notify: a truncated session or a reset (or a broken pipe) connection. */
bool tls_session_recv_closed(const struct tls_session *t, ssize_t code);
bool tls_session_send_closed(const struct tls_session *t, ssize_t code);
/* gnutls' text for a code, with the alert the peer sent when that is the error; and the
 * errno behind an I/O error code (0 for others). */
void tls_session_error_text(struct tls_session *t, int code, char *out, size_t n);
int tls_session_errno(const struct tls_session *t, int code);

/* One try at close_notify (the socket is non-blocking, the peer may be gone). */
void tls_session_bye(struct tls_session *t);
/* Accepts NULL, returns NULL. Does not close the fd. */
struct tls_session *tls_session_free(struct tls_session *t);

/* Refuse (exit 78) another TLS identity a session trusting ca_file must not accept: when
 * other_ca_file and ca_file share a CA certificate, when a CA of other_ca_file chains to
 * ca_file, or when a certificate file of certs (NULL-terminated; missing ones are
 * skipped), with other_ca_file's CAs as its chain, does. Validity times are ignored. The
 * message names the certificate and the files. */
int tls_check_apart(const char *ca_file, const char *other_ca_file, const char *const *certs, vmsup_error **err);

#endif
