/* The live-migration channel between the supervisors of the source and the destination
 * host: TCP, TLS 1.3 only, both ends authenticated by x509 host certificates issued by the
 * migration CA (as libvirt's migration TLS), carrying small framed messages.
 *
 * Wire format of a frame (integers big-endian):
 *   0  1  protocol version, MIGCHAN_PROTOCOL
 *   1  1  type, enum mig_msg
 *   2  2  flags, 0 (any other value is refused)
 *   4  4  payload length n
 *   8  n  payload: a JSON object (UTF-8, nothing after it but white space), or for
 *         MIG_SECRET the raw passphrase (1..MIGCHAN_SECRET_MAX printable ASCII bytes)
 * Every received frame is validated before the caller sees it: header, limits, JSON and
 * the fields each type requires (listed with the types). A bad frame is exit code 65 and
 * leaves the channel unusable.
 *
 * Exit codes: 69 for an unreachable or refusing peer and every TLS failure (handshake,
 * untrusted certificate), 65 for a bad frame, 75 for a timeout, 78 for our own CA,
 * certificate or key that cannot be loaded, 70 for a frame we were asked to send that
 * breaks the rules. A timeout_ms below 0 means no limit.
 *
 * The TLS itself is crypto/tls.h (the channel's "migration" session); the frame rules
 * are migrate/frame.c. */
#ifndef VMSUP_MIGRATE_MIGCHAN_H
#define VMSUP_MIGRATE_MIGCHAN_H

#include <json-c/json.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/error.h"

#define MIGCHAN_PROTOCOL 2                 /* the version every frame carries (2: DONE) */
#define MIGCHAN_MAX_PAYLOAD (1024 * 1024)  /* any frame */
#define MIGCHAN_SECRET_MAX 4096            /* MIG_SECRET payload */
#define MIGCHAN_HEADER_LEN 8

enum mig_msg {      /* frame types; payload JSON object unless noted */
        MIG_HELLO = 1,    /* both ways first: {"protocol":2,"uuid":"<guest uuid>","host":"<sender hostname>"} */
        MIG_PREPARE = 2,  /* src->dst: {"spec":{...guest spec object...},"secret_uuid":"<uuid>"} */
        MIG_SECRET = 3,   /* src->dst: raw passphrase bytes (1..MIGCHAN_SECRET_MAX, printable ASCII); received into secmem */
        MIG_READY = 4,    /* dst->src: {"port":N}  (1..65535: where the destination QEMU listens for the TLS migration stream) */
        MIG_MIGRATED = 5, /* src->dst: {} QEMU on the source reports the migration completed */
        MIG_PREPARED = 6, /* dst->src: {"generation":N} (N >= 0 integer) destination paused, TPM state received and sealed */
        MIG_COMMIT = 7,   /* src->dst: {} run the guest */
        MIG_RUNNING = 8,  /* dst->src: {} the guest runs on the destination */
        MIG_ABORT = 9,    /* either way: {"error":"<text, 1..1024 bytes>"} */
        MIG_DONE = 10,    /* src->dst: {} after RUNNING: the source holds its migrated-out marker and deletes its copy */
};
/* Field rules on receipt: uuids are canonical lower-case (8-4-4-4-12 hex); HELLO's host
 * is 1..255 printable ASCII; generation is 0..INT64_MAX; extra fields are ignored. In a
 * received ABORT, control characters of "error" are replaced by '?' (it gets logged). */

const char *mig_msg_name(enum mig_msg t); /* "HELLO", ... ; "unknown" otherwise */

struct migchan_tls {
        const char *ca_file, *cert_file, *key_file; /* PEM paths */
        const char *peer_name; /* client side: the name (DNS or IP) the server's certificate must carry; server side: NULL */
};

struct migchan;

/* A plain TCP connection to host:port (as migchan_connect() makes, without TLS; for
 * QEMU's own stream): a non-blocking, close-on-exec socket in *ret_fd. */
int migchan_tcp_connect(const char *host, const char *port, int timeout_ms, int *ret_fd, vmsup_error **err);

/* TCP connect to host:port (numeric IPv4/IPv6 or a name; getaddrinfo), then the TLS 1.3
 * handshake as client with our certificate; the server's certificate must chain to
 * ca_file, carry peer_name and be meant for a TLS server. All within timeout_ms (but
 * for name resolution, which getaddrinfo does not bound).
 * Note: in TLS 1.3 the server judges our certificate after our side of the handshake
 * has completed; a refusal shows as a TLS alert at the first receive. */
int migchan_connect(const char *host, const char *port, const struct migchan_tls *tls, int timeout_ms,
                    struct migchan **ret, vmsup_error **err);
/* The same, and every wait of the channel (the connect, the handshake, sends, and
 * migchan_recv_wait()) ends early (errno ECANCELED, exit 75) once cancel_fd (-1: none; a
 * signalfd, say) is readable. cancel_fd is borrowed for the channel's life. */
int migchan_connect_cancel(const char *host, const char *port, const struct migchan_tls *tls, int timeout_ms,
                           int cancel_fd, struct migchan **ret, vmsup_error **err);

/* The same two connects one step at a time, for a caller on an event loop (name resolution
 * still blocks: getaddrinfo). migchan_tcp_connect_start() starts a non-blocking connect
 * (QEMU's stream); migchan_tcp_connect_step(), once migchan_tcp_fd() is writable: 1 with
 * the connected socket in *ret_fd, 0 when it waits (on another fd, maybe: the host's next
 * address), negative when every address failed. migchan_connect_start() does the same and
 * then the TLS handshake of migchan_connect(): migchan_connect_step() returns 1 once the
 * channel carries frames, 0 when it waits for migchan_fd() (which changes while TCP tries
 * the addresses) to be ready for migchan_connect_events() (POLLIN or POLLOUT), negative
 * when it failed. Deadlines are the caller's; when one passes, the *_timeout() functions
 * give migchan_connect()'s error for where it stood. */
struct migchan_tcp;
int migchan_tcp_connect_start(const char *host, const char *port, struct migchan_tcp **ret, vmsup_error **err);
int migchan_tcp_connect_step(struct migchan_tcp *t, int *ret_fd, vmsup_error **err);
int migchan_tcp_fd(const struct migchan_tcp *t);
int migchan_tcp_connect_timeout(struct migchan_tcp *t, int timeout_ms, vmsup_error **err);
struct migchan_tcp *migchan_tcp_free(struct migchan_tcp *t);
int migchan_connect_start(const char *host, const char *port, const struct migchan_tls *tls, struct migchan **ret,
                          vmsup_error **err);
int migchan_connect_step(struct migchan *c, vmsup_error **err);
short migchan_connect_events(const struct migchan *c);
int migchan_connect_timeout(struct migchan *c, int timeout_ms, vmsup_error **err);

/* A listening TCP socket (SO_REUSEADDR, CLOEXEC, non-blocking) on addr:port; addr NULL or
 * "" = any (IPv6 dual-stack, or IPv4 any when the host has no IPv6). Returns the fd. */
int migchan_listen(const char *addr, const char *port, vmsup_error **err);

/* Wait up to timeout_ms for one connection on listen_fd, then up to timeout_ms more for
 * the TLS 1.3 handshake as server, REQUIRING a client certificate that chains to ca_file
 * and is meant for a TLS client (any host name). A failed handshake is an error, not a
 * wait for the next connection. */
int migchan_accept(int listen_fd, const struct migchan_tls *tls, int timeout_ms, struct migchan **ret,
                   vmsup_error **err);

/* The same, one step at a time, for a server that waits on several connections at once
 * (a silent one must not hold a real peer up):
 * migchan_tls_check() loads the CA, certificate and key as a connection would (78 when
 * they cannot be), to fail before any wait. migchan_accept_start() takes one pending
 * connection from listen_fd without waiting and sets up its server session (the same
 * certificate rules as migchan_accept): 1 with *ret, 0 when none is pending, negative on
 * error. migchan_handshake_step() advances the handshake without blocking: 1 when it is
 * complete (the channel carries frames), 0 when it waits for the peer (poll migchan_fd()
 * for migchan_handshake_events()), negative when it failed (69, as migchan_accept; the
 * channel is then only good for migchan_free()). Deadlines are the caller's. */
int migchan_tls_check(const struct migchan_tls *tls, bool server, vmsup_error **err);
int migchan_accept_start(int listen_fd, const struct migchan_tls *tls, struct migchan **ret, vmsup_error **err);
int migchan_handshake_step(struct migchan *c, vmsup_error **err);
short migchan_handshake_events(const struct migchan *c); /* POLLIN or POLLOUT */

int migchan_fd(const struct migchan *c);                 /* for epoll (EPOLLIN); the fd is non-blocking */
const char *migchan_peer(const struct migchan *c);       /* "ADDR:PORT (CN=...)" for logs */
const char *migchan_local_addr(const struct migchan *c); /* numeric address of our end, e.g. "10.77.0.2" */

/* Send one frame; blocking with poll up to timeout_ms (frames are small). The frame is
 * checked by the same rules as on receipt first (exit 70 when it breaks them). */
int migchan_send(struct migchan *c, enum mig_msg type, const void *payload, size_t len, int timeout_ms,
                 vmsup_error **err);
/* o NULL sends {} (MIGRATED, COMMIT, RUNNING). */
int migchan_send_json(struct migchan *c, enum mig_msg type, json_object *o, int timeout_ms, vmsup_error **err);

struct mig_frame {
        enum mig_msg type;
        json_object *json; /* parsed payload for JSON types; NULL for MIG_SECRET */
        uint8_t *secret;   /* MIG_SECRET only: secmem, NUL-terminated, len bytes */
        size_t len;
};

/* Non-blocking receive: 1 with *ret filled when a whole, valid frame arrived; 0 when more
 * bytes are needed (wait for EPOLLIN; call again until 0, because gnutls may hold buffered
 * records); negative on error: the peer closed the connection, a TLS error, or an invalid
 * frame (exit 65). Messages start "<peer>: ". After an error the channel is unusable. */
int migchan_recv(struct migchan *c, struct mig_frame *ret, vmsup_error **err);

/* Blocking receive with a deadline: 0 with *ret filled, or negative. A timeout is exit 75
 * "no answer from the migration peer within N s (waiting for TYPE)" and leaves the
 * channel usable (a frame in progress is kept). If expect != 0 and another type than
 * expect or MIG_ABORT arrives, that is an error "unexpected TYPE message (expected TYPE)"
 * (65); MIG_ABORT is returned as a frame (the caller reads its error). */
int migchan_recv_wait(struct migchan *c, enum mig_msg expect, int timeout_ms, struct mig_frame *ret,
                      vmsup_error **err);

void mig_frame_clear(struct mig_frame *f); /* wipes and frees the secret; puts the json */

/* gnutls_bye (non-blocking, best effort), close; accepts NULL, returns NULL. */
struct migchan *migchan_free(struct migchan *c);

static inline void migchan_freep(struct migchan **c) {
        migchan_free(*c);
}
static inline void mig_frame_clearp(struct mig_frame *f) {
        mig_frame_clear(f);
}
#define _cleanup_migchan_ __attribute__((cleanup(migchan_freep)))
#define _cleanup_mig_frame_ __attribute__((cleanup(mig_frame_clearp)))

#endif
