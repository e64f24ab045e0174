#include "config.h"

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <gnutls/gnutls.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli/exitstatus.h"
#include "common/secmem.h"
#include "common/util.h"
#include "migrate/migchan.h"
#include "tests/helpers.h"

#define GUEST "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
#define SECRET_UUID "11111111-2222-3333-4444-555555555555"
#define LONG_MS 20000 /* generous: only a hang would reach it */
#define TLS12_ONLY "NORMAL:-VERS-ALL:+VERS-TLS1.2"
#define TLS13_ONLY "NORMAL:-VERS-ALL:+VERS-TLS1.3"

/* Certificates from tests/migcerts.sh: hosts "a" (127.0.0.1) and "b" (127.0.0.2) of the
 * test CA, and "rogue" of a foreign CA. */
static char *certs;
static char *paths[64];
static size_t npaths;

static const char *path(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static const char *path(const char *fmt, ...) {
        va_list ap;
        char *p = NULL;

        cr_assert_lt(npaths, ARRAY_SIZE(paths));
        va_start(ap, fmt);
        cr_assert(vasprintf(&p, fmt, ap) > 0);
        va_end(ap);
        return paths[npaths++] = p;
}

static void setup(void) {
        char *cmd = NULL;
        int st;

        certs = test_mkdtemp();
        cr_assert(asprintf(&cmd, "sh '%s/tests/migcerts.sh' '%s' a:127.0.0.1 b:127.0.0.2", TEST_SRCDIR, certs) > 0);
        st = system(cmd);
        free(cmd);
        cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0,
                  "tests/migcerts.sh failed (exit %d): it needs certtool, Debian package gnutls-bin",
                  WIFEXITED(st) ? WEXITSTATUS(st) : -1);
}

static void teardown(void) {
        test_rmtree(certs);
        free(certs);
        for (size_t i = 0; i < npaths; i++)
                free(paths[i]);
        npaths = 0;
}

TestSuite(migchan, .init = setup, .fini = teardown, .timeout = 120);

/* host "a", "b" or "rogue"; everyone trusts the test CA */
static const char *host_dir(const char *host) {
        return streq(host, "rogue") ? path("%s/rogue-ca/rogue", certs) : path("%s/%s", certs, host);
}

static struct migchan_tls server_tls(const char *host) {
        const char *d = host_dir(host);

        return (struct migchan_tls) { .ca_file = path("%s/ca-cert.pem", certs),
                                      .cert_file = path("%s/server-cert.pem", d),
                                      .key_file = path("%s/server-key.pem", d) };
}

static struct migchan_tls client_tls(const char *host, const char *peer_name) {
        const char *d = host_dir(host);

        return (struct migchan_tls) { .ca_file = path("%s/ca-cert.pem", certs),
                                      .cert_file = path("%s/client-cert.pem", d),
                                      .key_file = path("%s/client-key.pem", d),
                                      .peer_name = peer_name };
}

/* A struct migchan_tls that lives as long as the test. */
static const struct migchan_tls *ptr(struct migchan_tls t) {
        static struct migchan_tls slots[16];
        static size_t n;

        cr_assert_lt(n, ARRAY_SIZE(slots));
        slots[n] = t;
        return &slots[n++];
}

static const char *msg_of(const vmsup_error *err) {
        return err && err->msg ? err->msg : "(no error)";
}

static void expect_error(int r, const vmsup_error *err, int exit_code, const char *needle) {
        cr_assert_lt(r, 0, "expected a failure mentioning '%s'", needle);
        cr_assert_not_null(err);
        cr_assert_not_null(strstr(err->msg, needle), "'%s' not in: %s", needle, err->msg);
        cr_assert_eq(cli_exit_status(err->kind), exit_code, "exit %d, not %d, for: %s", cli_exit_status(err->kind), exit_code,
                     err->msg);
}

static char *fmt(const char *f, ...) __attribute__((format(printf, 1, 2)));
static char *fmt(const char *f, ...) {
        va_list ap;
        char *s = NULL;

        va_start(ap, f);
        cr_assert(vasprintf(&s, f, ap) > 0);
        va_end(ap);
        return s;
}

/* A listener on 127.0.0.1 with a port the kernel picked. */
static int listen_local(char port[8]) {
        struct sockaddr_in sa;
        socklen_t len = sizeof(sa);
        vmsup_error *err = NULL;
        int fd = migchan_listen("127.0.0.1", "0", &err);

        cr_assert_geq(fd, 0, "%s", msg_of(err));
        cr_assert_eq(getsockname(fd, (struct sockaddr *) &sa, &len), 0);
        snprintf(port, 8, "%u", ntohs(sa.sin_port));
        return fd;
}

/* migchan_accept() in a thread, while the test plays the client. */
struct acceptor {
        pthread_t thread;
        int listen_fd, timeout_ms, r;
        struct migchan_tls tls;
        struct migchan *c;
        vmsup_error *err;
};

static void *accept_main(void *p) {
        struct acceptor *a = p;

        a->r = migchan_accept(a->listen_fd, &a->tls, a->timeout_ms, &a->c, &a->err);
        return NULL;
}

static void acceptor_start(struct acceptor *a, int listen_fd, struct migchan_tls tls, int timeout_ms) {
        *a = (struct acceptor) { .listen_fd = listen_fd, .tls = tls, .timeout_ms = timeout_ms };
        cr_assert_eq(pthread_create(&a->thread, NULL, accept_main, a), 0);
}

static void acceptor_join(struct acceptor *a) {
        cr_assert_eq(pthread_join(a->thread, NULL), 0);
}

/* A good connection: server "a", client "b". */
static void pair(struct migchan **ret_client, struct migchan **ret_server) {
        struct acceptor a;
        vmsup_error *err = NULL;
        char port[8];
        int lfd = listen_local(port), r;

        acceptor_start(&a, lfd, server_tls("a"), LONG_MS);
        r = migchan_connect("127.0.0.1", port, ptr(client_tls("b", "a")), LONG_MS, ret_client,
                            &err);
        acceptor_join(&a);
        close(lfd);
        cr_assert_eq(r, 0, "client: %s", msg_of(err));
        cr_assert_eq(a.r, 0, "server: %s", msg_of(a.err));
        *ret_server = a.c;
}

/* A client that is gnutls itself: it sends whatever bytes a test wants, with any
 * priority or certificate, and does not check the server. */
struct raw {
        int fd;
        gnutls_session_t s;
        gnutls_certificate_credentials_t cred;
        int handshake;
};

static void raw_open(struct raw *r, const char *port, const char *priority, const char *host) {
        struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t) atoi(port)) };

        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        r->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        cr_assert_geq(r->fd, 0);
        cr_assert_eq(connect(r->fd, (struct sockaddr *) &sa, sizeof(sa)), 0, "connect: %s", strerror(errno));
        cr_assert_eq(gnutls_certificate_allocate_credentials(&r->cred), 0);
        if (host) {
                struct migchan_tls t = client_tls(host, NULL);

                cr_assert_eq(gnutls_certificate_set_x509_key_file(r->cred, t.cert_file, t.key_file, GNUTLS_X509_FMT_PEM),
                             0);
        }
        cr_assert_eq(gnutls_init(&r->s, GNUTLS_CLIENT), 0);
        cr_assert_eq(gnutls_priority_set_direct(r->s, priority, NULL), 0);
        cr_assert_eq(gnutls_credentials_set(r->s, GNUTLS_CRD_CERTIFICATE, r->cred), 0);
        gnutls_transport_set_int(r->s, r->fd);
        gnutls_handshake_set_timeout(r->s, LONG_MS);
        do
                r->handshake = gnutls_handshake(r->s);
        while (r->handshake < 0 && !gnutls_error_is_fatal(r->handshake));
}

static void raw_send(struct raw *r, const void *data, size_t len) {
        const uint8_t *p = data;

        while (len > 0) {
                ssize_t n = gnutls_record_send(r->s, p, len);

                if (n == GNUTLS_E_AGAIN || n == GNUTLS_E_INTERRUPTED)
                        continue;
                cr_assert_gt(n, 0, "raw send: %s", gnutls_strerror((int) n));
                p += n;
                len -= (size_t) n;
        }
}

static void raw_close(struct raw *r, bool bye) {
        if (bye)
                gnutls_bye(r->s, GNUTLS_SHUT_WR);
        gnutls_deinit(r->s);
        gnutls_certificate_free_credentials(r->cred);
        close(r->fd);
}

/* A raw client with b's certificate, TLS 1.3, and the server's channel. */
static struct migchan *raw_pair(struct raw *r) {
        struct acceptor a;
        char port[8];
        int lfd = listen_local(port);

        acceptor_start(&a, lfd, server_tls("a"), LONG_MS);
        raw_open(r, port, TLS13_ONLY, "b");
        acceptor_join(&a);
        close(lfd);
        cr_assert_eq(r->handshake, 0, "raw client: %s", gnutls_strerror(r->handshake));
        cr_assert_eq(a.r, 0, "server: %s", msg_of(a.err));
        return a.c;
}

static size_t frame(uint8_t *out, uint8_t version, uint8_t type, uint16_t flags, uint32_t len, const void *payload,
                    size_t plen) {
        out[0] = version;
        out[1] = type;
        out[2] = (uint8_t) (flags >> 8);
        out[3] = (uint8_t) flags;
        out[4] = (uint8_t) (len >> 24);
        out[5] = (uint8_t) (len >> 16);
        out[6] = (uint8_t) (len >> 8);
        out[7] = (uint8_t) len;
        memcpy(out + 8, payload, plen);
        return 8 + plen;
}

static json_object *parse(const char *s) {
        json_object *o = json_tokener_parse(s);

        cr_assert_not_null(o, "test JSON: %s", s);
        return o;
}

/* ---- the good path ---- */

Test(migchan, msg_names) {
        cr_assert_str_eq(mig_msg_name(MIG_HELLO), "HELLO");
        cr_assert_str_eq(mig_msg_name(MIG_PREPARED), "PREPARED");
        cr_assert_str_eq(mig_msg_name(MIG_ABORT), "ABORT");
        cr_assert_str_eq(mig_msg_name(0), "unknown");
        cr_assert_str_eq(mig_msg_name(MIG_DONE), "DONE");
        cr_assert_str_eq(mig_msg_name(11), "unknown");
        cr_assert_null(migchan_free(NULL));
        mig_frame_clear(NULL);
}

static void send_json_ok(struct migchan *c, enum mig_msg type, const char *json) {
        _cleanup_json_ json_object *o = json ? parse(json) : NULL;
        vmsup_error *err = NULL;

        cr_assert_eq(migchan_send_json(c, type, o, LONG_MS, &err), 0, "send %s: %s", mig_msg_name(type), msg_of(err));
}

static void recv_ok(struct migchan *c, enum mig_msg type, struct mig_frame *f) {
        vmsup_error *err = NULL;

        cr_assert_eq(migchan_recv_wait(c, type, LONG_MS, f, &err), 0, "receive %s: %s", mig_msg_name(type),
                     msg_of(err));
        cr_assert_eq(f->type, type, "got %s, not %s", mig_msg_name(f->type), mig_msg_name(type));
}

static const char *str_field(const struct mig_frame *f, const char *name) {
        json_object *v = NULL;

        cr_assert(json_object_object_get_ex(f->json, name, &v), "no \"%s\" in %s", name, mig_msg_name(f->type));
        return json_object_get_string(v);
}

static int64_t int_field(const struct mig_frame *f, const char *name) {
        json_object *v = NULL;

        cr_assert(json_object_object_get_ex(f->json, name, &v), "no \"%s\" in %s", name, mig_msg_name(f->type));
        return json_object_get_int64(v);
}

Test(migchan, handshake_and_every_message_both_ways) {
        _cleanup_migchan_ struct migchan *src = NULL, *dst = NULL;
        struct mig_frame f = { 0 };
        char pass[513];
        vmsup_error *err = NULL;
        int flags;

        pair(&src, &dst);
        /* who is on the other end, by address and certificate */
        cr_assert(strncmp(migchan_peer(src), "127.0.0.1:", 10) == 0, "%s", migchan_peer(src));
        cr_assert(strstr(migchan_peer(src), " (CN=a)"), "%s", migchan_peer(src));
        cr_assert(strncmp(migchan_peer(dst), "127.0.0.1:", 10) == 0, "%s", migchan_peer(dst));
        cr_assert(strstr(migchan_peer(dst), " (CN=b)"), "%s", migchan_peer(dst));
        cr_assert_str_eq(migchan_local_addr(src), "127.0.0.1");
        cr_assert_str_eq(migchan_local_addr(dst), "127.0.0.1");
        flags = fcntl(migchan_fd(src), F_GETFL);
        cr_assert(flags & O_NONBLOCK);
        cr_assert(fcntl(migchan_fd(src), F_GETFD) & FD_CLOEXEC);
        cr_assert(fcntl(migchan_fd(dst), F_GETFD) & FD_CLOEXEC);

        send_json_ok(src, MIG_HELLO, "{\"protocol\":2,\"uuid\":\"" GUEST "\",\"host\":\"hostb\"}");
        recv_ok(dst, MIG_HELLO, &f);
        cr_assert_str_eq(str_field(&f, "uuid"), GUEST);
        cr_assert_str_eq(str_field(&f, "host"), "hostb");
        mig_frame_clear(&f);
        send_json_ok(dst, MIG_HELLO, "{\"protocol\":2,\"uuid\":\"" GUEST "\",\"host\":\"hosta\"}");
        recv_ok(src, MIG_HELLO, &f);
        cr_assert_str_eq(str_field(&f, "host"), "hosta");
        mig_frame_clear(&f);

        send_json_ok(src, MIG_PREPARE,
                     "{\"spec\":{\"uuid\":\"" GUEST "\",\"vcpus\":2},\"secret_uuid\":\"" SECRET_UUID "\"}");
        recv_ok(dst, MIG_PREPARE, &f);
        cr_assert_str_eq(str_field(&f, "secret_uuid"), SECRET_UUID);
        mig_frame_clear(&f);

        /* Nova's passphrase: 512 base64 characters */
        for (int i = 0; i < 512; i++)
                pass[i] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"[(i * 7 + i / 64) % 64];
        pass[512] = 0;
        cr_assert_eq(migchan_send(src, MIG_SECRET, pass, 512, LONG_MS, &err), 0, "%s", msg_of(err));
        recv_ok(dst, MIG_SECRET, &f);
        cr_assert_null(f.json);
        cr_assert_eq(f.len, 512);
        cr_assert_not_null(f.secret);
        cr_assert_eq(secmem_size(f.secret), 513, "the secret is not in a secmem buffer of its size + NUL");
        cr_assert_eq(f.secret[512], 0);
        cr_assert_eq(memcmp(f.secret, pass, 512), 0);
        mig_frame_clear(&f);
        cr_assert_null(f.secret);

        send_json_ok(dst, MIG_READY, "{\"port\":49152}");
        recv_ok(src, MIG_READY, &f);
        cr_assert_eq(int_field(&f, "port"), 49152);
        mig_frame_clear(&f);

        send_json_ok(src, MIG_MIGRATED, NULL);
        recv_ok(dst, MIG_MIGRATED, &f);
        mig_frame_clear(&f);

        send_json_ok(dst, MIG_PREPARED, "{\"generation\":9007199254740993}");
        recv_ok(src, MIG_PREPARED, &f);
        cr_assert_eq(int_field(&f, "generation"), 9007199254740993LL);
        mig_frame_clear(&f);

        send_json_ok(src, MIG_COMMIT, "{\"extra\":\"ignored\"}");
        recv_ok(dst, MIG_COMMIT, &f);
        mig_frame_clear(&f);

        send_json_ok(dst, MIG_RUNNING, "{}");
        recv_ok(src, MIG_RUNNING, &f);
        mig_frame_clear(&f);

        /* either way; control characters of the peer's text do not reach our log */
        send_json_ok(src, MIG_ABORT, "{\"error\":\"disk full\\non dst\\u001b[31m\"}");
        recv_ok(dst, MIG_ABORT, &f);
        cr_assert_str_eq(str_field(&f, "error"), "disk full?on dst?[31m");
        mig_frame_clear(&f);
        send_json_ok(dst, MIG_ABORT, "{\"error\":\"QEMU on the destination exited\"}");
        recv_ok(src, MIG_ABORT, &f);
        cr_assert_str_eq(str_field(&f, "error"), "QEMU on the destination exited");
        mig_frame_clear(&f);
}

Test(migchan, the_server_name_may_be_its_address) {
        _cleanup_migchan_ struct migchan *c = NULL;
        struct acceptor a;
        vmsup_error *err = NULL;
        char port[8];
        int lfd = listen_local(port), r;

        acceptor_start(&a, lfd, server_tls("a"), LONG_MS);
        r = migchan_connect("127.0.0.1", port, ptr(client_tls("b", "127.0.0.1")), LONG_MS, &c,
                            &err);
        acceptor_join(&a);
        close(lfd);
        cr_assert_eq(r, 0, "%s", msg_of(err));
        cr_assert_eq(a.r, 0, "%s", msg_of(a.err));
        migchan_free(a.c);
}

Test(migchan, listen_on_any_address) {
        _cleanup_migchan_ struct migchan *c = NULL;
        struct sockaddr_storage ss;
        socklen_t len = sizeof(ss);
        struct acceptor a;
        vmsup_error *err = NULL;
        char port[8];
        int lfd = migchan_listen(NULL, "0", &err), r;

        cr_assert_geq(lfd, 0, "%s", msg_of(err));
        cr_assert(fcntl(lfd, F_GETFD) & FD_CLOEXEC);
        cr_assert(fcntl(lfd, F_GETFL) & O_NONBLOCK);
        cr_assert_eq(getsockname(lfd, (struct sockaddr *) &ss, &len), 0);
        snprintf(port, sizeof(port), "%u",
                 ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *) &ss)->sin6_port
                                                : ((struct sockaddr_in *) &ss)->sin_port));
        acceptor_start(&a, lfd, server_tls("a"), LONG_MS);
        r = migchan_connect("127.0.0.1", port, ptr(client_tls("b", "a")), LONG_MS, &c, &err);
        acceptor_join(&a);
        close(lfd);
        cr_assert_eq(r, 0, "%s", msg_of(err));
        cr_assert_eq(a.r, 0, "%s", msg_of(a.err));
        /* a dual-stack listener sees ::ffff:127.0.0.1; QEMU must be told 127.0.0.1 */
        cr_assert_str_eq(migchan_local_addr(a.c), "127.0.0.1");
        cr_assert(strncmp(migchan_peer(a.c), "127.0.0.1:", 10) == 0, "%s", migchan_peer(a.c));
        migchan_free(a.c);
}

/* ---- who may connect ---- */

Test(migchan, a_server_of_a_foreign_ca_is_refused) {
        struct migchan *c = NULL;
        struct acceptor a;
        vmsup_error *err = NULL;
        char port[8];
        int lfd = listen_local(port), r;

        acceptor_start(&a, lfd, server_tls("rogue"), LONG_MS);
        r = migchan_connect("127.0.0.1", port, ptr(client_tls("b", "rogue")), LONG_MS, &c, &err);
        acceptor_join(&a);
        close(lfd);
        expect_error(r, err, 69, fmt("the certificate of 127.0.0.1:%s is not trusted: ", port));
        expect_error(r, err, 69, "The certificate issuer is unknown.");
        cr_assert_null(c);
        cr_assert_lt(a.r, 0, "the rogue server got a channel");
        migchan_free(a.c);
}

Test(migchan, a_client_of_a_foreign_ca_is_refused) {
        struct migchan *c = NULL;
        struct mig_frame f = { 0 };
        struct acceptor a;
        vmsup_error *err = NULL;
        char port[8];
        int lfd = listen_local(port), r;

        acceptor_start(&a, lfd, server_tls("a"), LONG_MS);
        r = migchan_connect("127.0.0.1", port, ptr(client_tls("rogue", "a")), LONG_MS, &c, &err);
        acceptor_join(&a);
        close(lfd);
        expect_error(a.r, a.err, 69, "the certificate of 127.0.0.1:");
        expect_error(a.r, a.err, 69, "is not trusted: The certificate is NOT trusted. The certificate issuer is unknown.");
        cr_assert_null(a.c);
        /* TLS 1.3: the client's part of the handshake ends before the server judges its
         * certificate; the refusal reaches it as an alert at the first receive. */
        if (r == 0)
                r = migchan_recv_wait(c, MIG_HELLO, LONG_MS, &f, &err);
        expect_error(r, err, 69, "fatal alert from the peer: Certificate is bad");
        migchan_free(c);
}

Test(migchan, a_client_without_a_certificate_is_refused) {
        struct acceptor a;
        struct raw raw;
        char port[8];
        int lfd = listen_local(port);

        acceptor_start(&a, lfd, server_tls("a"), LONG_MS);
        raw_open(&raw, port, TLS13_ONLY, NULL);
        acceptor_join(&a);
        close(lfd);
        expect_error(a.r, a.err, 69, "TLS handshake with 127.0.0.1:");
        expect_error(a.r, a.err, 69, " failed: the peer presented no certificate");
        cr_assert_null(a.c);
        raw_close(&raw, false);
}

Test(migchan, a_server_with_another_name_is_refused) {
        struct migchan *c = NULL;
        struct acceptor a;
        vmsup_error *err = NULL;
        char port[8];
        int lfd = listen_local(port), r;

        acceptor_start(&a, lfd, server_tls("a"), LONG_MS);
        r = migchan_connect("127.0.0.1", port, ptr(client_tls("b", "b")), LONG_MS, &c, &err);
        acceptor_join(&a);
        close(lfd);
        expect_error(r, err, 69,
                     fmt("the certificate of 127.0.0.1:%s is not trusted: The certificate is NOT trusted. The name in "
                         "the certificate does not match the expected. (expected 'b')",
                         port));
        cr_assert_null(c);
        migchan_free(a.c);
}

Test(migchan, a_tls12_client_is_refused) {
        struct acceptor a;
        struct raw raw;
        char port[8];
        int lfd = listen_local(port);

        acceptor_start(&a, lfd, server_tls("a"), LONG_MS);
        raw_open(&raw, port, TLS12_ONLY, "b");
        acceptor_join(&a);
        close(lfd);
        expect_error(a.r, a.err, 69, "TLS handshake with 127.0.0.1:");
        expect_error(a.r, a.err, 69, "(this host speaks only TLS 1.3)");
        cr_assert_null(a.c);
        cr_assert_lt(raw.handshake, 0, "the TLS 1.2 client completed a handshake");
        raw_close(&raw, false);
}

Test(migchan, garbage_instead_of_tls_fails_the_handshake) {
        static const char junk[] = "GET / HTTP/1.1\r\nHost: migration\r\n\r\n";
        struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        struct acceptor a;
        char port[8];
        int lfd = listen_local(port), fd;

        sa.sin_port = htons((uint16_t) atoi(port));
        acceptor_start(&a, lfd, server_tls("a"), LONG_MS);
        fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        cr_assert_eq(connect(fd, (struct sockaddr *) &sa, sizeof(sa)), 0);
        cr_assert_eq(write(fd, junk, sizeof(junk) - 1), (ssize_t) sizeof(junk) - 1);
        /* the connection stays open: only the bytes can end the handshake, not a close */
        acceptor_join(&a);
        close(fd);
        close(lfd);
        expect_error(a.r, a.err, 69, "TLS handshake with 127.0.0.1:");
        expect_error(a.r, a.err, 69, " failed: ");
}

Test(migchan, a_server_that_speaks_no_tls_fails_the_handshake) {
        _cleanup_close_ int lfd = -1, fd = -1;
        struct migchan *c = NULL;
        vmsup_error *err = NULL;
        char port[8];
        int r;

        lfd = listen_local(port);
        /* the kernel completes the TCP handshake; the "server" answers junk once the
         * client's hello arrived */
        if (fork() == 0) {
                struct pollfd p = { .fd = lfd, .events = POLLIN };
                char buf[512];
                int cfd;

                if (poll(&p, 1, LONG_MS) != 1 || (cfd = accept(lfd, NULL, NULL)) < 0)
                        _exit(1);
                if (read(cfd, buf, sizeof(buf)) <= 0 || write(cfd, "SSH-2.0-OpenSSH_9.2\r\n", 21) != 21)
                        _exit(1);
                p = (struct pollfd) { .fd = cfd, .events = POLLIN };
                poll(&p, 1, LONG_MS); /* until the client hangs up */
                _exit(0);
        }
        r = migchan_connect("127.0.0.1", port, ptr(client_tls("b", "a")), LONG_MS, &c, &err);
        expect_error(r, err, 69, fmt("TLS handshake with 127.0.0.1:%s failed: ", port));
        wait(NULL);
}

Test(migchan, nothing_listening_is_connection_refused) {
        struct migchan *c = NULL;
        vmsup_error *err = NULL;
        char port[8];
        int lfd = listen_local(port), r;

        close(lfd);
        r = migchan_connect("127.0.0.1", port, ptr(client_tls("b", "a")), LONG_MS, &c, &err);
        cr_assert_lt(r, 0);
        cr_assert_str_eq(msg_of(err), fmt("connect to 127.0.0.1:%s: Connection refused", port));
        cr_assert_eq(err->kind, VMSUP_ERR_UNAVAILABLE);
}

Test(migchan, no_connection_in_time_is_a_timeout) {
        struct migchan *c = NULL;
        vmsup_error *err = NULL;
        char port[8];
        int lfd = listen_local(port), r;

        r = migchan_accept(lfd, ptr(server_tls("a")), 200, &c, &err);
        close(lfd);
        cr_assert_lt(r, 0);
        cr_assert_str_eq(msg_of(err), "no migration connection within 0.2 s");
        cr_assert_eq(err->kind, VMSUP_ERR_BUSY);
}

Test(migchan, a_silent_client_is_a_handshake_timeout) {
        struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        struct migchan *c = NULL;
        vmsup_error *err = NULL;
        char port[8];
        int lfd = listen_local(port), fd, r;

        sa.sin_port = htons((uint16_t) atoi(port));
        fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        cr_assert_eq(connect(fd, (struct sockaddr *) &sa, sizeof(sa)), 0);
        r = migchan_accept(lfd, ptr(server_tls("a")), 300, &c, &err);
        close(fd);
        close(lfd);
        expect_error(r, err, 75, "TLS handshake with 127.0.0.1:");
        expect_error(r, err, 75, ": no answer within 0.3 s");
}

/* migchan_connect() in a thread: the real client of the step-by-step server. */
struct connector {
        pthread_t thread;
        char port[8];
        int r;
        struct migchan *c;
        vmsup_error *err;
};

static void *connect_main(void *p) {
        struct connector *k = p;

        k->r = migchan_connect("127.0.0.1", k->port, ptr(client_tls("b", "a")), LONG_MS, &k->c, &k->err);
        return NULL;
}

static int tcp_to(const char *port) {
        struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

        sa.sin_port = htons((uint16_t) atoi(port));
        cr_assert_geq(fd, 0);
        cr_assert_eq(connect(fd, (struct sockaddr *) &sa, sizeof(sa)), 0, "connect: %s", strerror(errno));
        return fd;
}

/* The server's step-by-step handshake (what `vmsup run --incoming` waits with): two
 * silent connections and one that sends garbage come first; the real client still gets
 * through, the garbage fails on its own, and the silent ones just wait. */
Test(migchan, step_by_step_handshakes_a_real_client_passes_silent_ones) {
        static const char junk[] = "GET / HTTP/1.1\r\nHost: migration\r\n\r\n";
        const struct migchan_tls *tls = ptr(server_tls("a"));
        struct migchan *pend[8] = { 0 }, *done = NULL;
        int result[8] = { 0 }, silent[2], garbage, lfd;
        struct connector k = { 0 };
        struct mig_frame f = { 0 };
        vmsup_error *err = NULL;
        char port[8];
        size_t n = 0;
        long deadline;
        int r;

        lfd = listen_local(port);
        cr_assert_eq(migchan_tls_check(tls, true, &err), 0, "%s", msg_of(err));
        /* nothing pending: no wait, no error */
        cr_assert_eq(migchan_accept_start(lfd, tls, &pend[0], &err), 0, "%s", msg_of(err));
        silent[0] = tcp_to(port);
        silent[1] = tcp_to(port);
        garbage = tcp_to(port);
        cr_assert_eq(write(garbage, junk, sizeof(junk) - 1), (ssize_t) sizeof(junk) - 1);
        snprintf(k.port, sizeof(k.port), "%s", port);
        cr_assert_eq(pthread_create(&k.thread, NULL, connect_main, &k), 0);

        deadline = monotonic_ms() + LONG_MS;
        while (!done) {
                struct pollfd p[9] = { { .fd = lfd, .events = POLLIN } };

                cr_assert_lt(monotonic_ms(), deadline, "the real client did not get through");
                for (size_t i = 0; i < n; i++)
                        p[i + 1] = (struct pollfd) { .fd = result[i] == 0 ? migchan_fd(pend[i]) : -1,
                                                     .events = result[i] == 0 ? migchan_handshake_events(pend[i]) : 0 };
                cr_assert_geq(poll(p, n + 1, 1000), 0);
                while (n < ARRAY_SIZE(pend) && (r = migchan_accept_start(lfd, tls, &pend[n], &err)) != 0) {
                        cr_assert_eq(r, 1, "%s", msg_of(err));
                        cr_assert(fcntl(migchan_fd(pend[n]), F_GETFD) & FD_CLOEXEC);
                        cr_assert(fcntl(migchan_fd(pend[n]), F_GETFL) & O_NONBLOCK);
                        n++;
                }
                for (size_t i = 0; i < n && !done; i++) {
                        if (result[i] != 0)
                                continue;
                        r = migchan_handshake_step(pend[i], &err);
                        if (r > 0) {
                                result[i] = 1;
                                done = pend[i];
                        } else if (r < 0) {
                                result[i] = -1;
                                /* the garbage, third in the queue: fails on its own */
                                cr_assert_eq(i, 2, "connection %zu failed: %s", i, msg_of(err));
                                expect_error(r, err, 69, "TLS handshake with 127.0.0.1:");
                                expect_error(r, err, 69, " failed: ");
                                vmsup_error_free(err);
                                err = NULL;
                        }
                }
        }
        cr_assert_eq(pthread_join(k.thread, NULL), 0);
        cr_assert_eq(k.r, 0, "client: %s", msg_of(k.err));
        cr_assert_eq(n, 4, "%zu connections taken", n);
        cr_assert_eq(result[3], 1, "the real client was not the one that got through");
        cr_assert(strstr(migchan_peer(done), " (CN=b)"), "%s", migchan_peer(done));
        /* the silent ones are still in their handshake, waiting for their hello */
        cr_assert_eq(result[0], 0);
        cr_assert_eq(result[1], 0);
        cr_assert_eq(migchan_handshake_step(pend[0], &err), 0, "%s", msg_of(err));
        cr_assert_eq(migchan_handshake_events(pend[0]), POLLIN);
        /* the channel carries frames both ways, and a step on it says it is done */
        cr_assert_eq(migchan_handshake_step(done, &err), 1, "%s", msg_of(err));
        send_json_ok(k.c, MIG_HELLO, "{\"protocol\":2,\"uuid\":\"" GUEST "\",\"host\":\"hostb\"}");
        recv_ok(done, MIG_HELLO, &f);
        mig_frame_clear(&f);
        send_json_ok(done, MIG_HELLO, "{\"protocol\":2,\"uuid\":\"" GUEST "\",\"host\":\"hosta\"}");
        recv_ok(k.c, MIG_HELLO, &f);
        mig_frame_clear(&f);
        for (size_t i = 0; i < n; i++)
                migchan_free(pend[i]);
        migchan_free(k.c);
        close(silent[0]);
        close(silent[1]);
        close(garbage);
        close(lfd);
}

/* A server whose own files cannot be loaded fails before it takes a connection. */
Test(migchan, step_by_step_server_checks_its_files_first) {
        struct migchan_tls t = server_tls("a");
        struct migchan *c = NULL;
        vmsup_error *err = NULL;
        char port[8];
        int lfd = listen_local(port), fd = tcp_to(port), r;

        t.cert_file = path("%s/nonexistent.pem", certs);
        r = migchan_tls_check(&t, true, &err);
        expect_error(r, err, 78, "load the migration server certificate '");
        vmsup_error_free(err);
        err = NULL;
        r = migchan_accept_start(lfd, &t, &c, &err);
        expect_error(r, err, 78, "load the migration server certificate '");
        cr_assert_null(c);
        close(fd);
        close(lfd);
}

Test(migchan, our_own_files_missing_is_a_configuration_error) {
        struct migchan *c = NULL;
        struct migchan_tls t = client_tls("b", "a");
        vmsup_error *err = NULL;
        int r;

        t.ca_file = path("%s/nonexistent.pem", certs);
        r = migchan_connect("127.0.0.1", "1", &t, LONG_MS, &c, &err);
        expect_error(r, err, 78, fmt("load the migration CA certificate '%s/nonexistent.pem': ", certs));
        vmsup_error_free(err);
        err = NULL;

        t = client_tls("b", "a");
        t.key_file = server_tls("a").key_file; /* not the key of this certificate */
        r = migchan_connect("127.0.0.1", "1", &t, LONG_MS, &c, &err);
        expect_error(r, err, 78, "load the migration client certificate '");
}

/* ---- frames ---- */

/* Send these bytes from a raw client; the server's receive fails with exactly this text
 * after "<peer>: ". */
static void expect_invalid(const void *bytes, size_t len, const char *expected) {
        _cleanup_migchan_ struct migchan *srv = NULL;
        _cleanup_free_ char *full = NULL;
        struct mig_frame f = { 0 };
        vmsup_error *err = NULL;
        struct raw raw;
        int r;

        srv = raw_pair(&raw);
        raw_send(&raw, bytes, len);
        r = migchan_recv_wait(srv, 0, LONG_MS, &f, &err);
        full = fmt("%s: %s", migchan_peer(srv), expected);
        cr_assert_lt(r, 0, "accepted a frame that should fail with: %s", expected);
        cr_assert_str_eq(msg_of(err), full);
        cr_assert_eq(err->kind, VMSUP_ERR_DATA, "kind %s for: %s", vmsup_err_kind_to_string(err->kind), err->msg);
        /* and the channel stays failed */
        vmsup_error_free(err);
        err = NULL;
        cr_assert_lt(migchan_recv(srv, &f, &err), 0);
        raw_close(&raw, true);
}

static void expect_invalid_json(enum mig_msg type, const char *json, const char *expected) {
        uint8_t buf[1024];

        expect_invalid(buf, frame(buf, MIGCHAN_PROTOCOL, (uint8_t) type, 0, (uint32_t) strlen(json), json, strlen(json)), expected);
}

Test(migchan, frame_wrong_protocol_version) {
        uint8_t buf[16];

        /* the first protocol had no DONE: its peers are refused at their first frame */
        expect_invalid(buf, frame(buf, 1, MIG_COMMIT, 0, 2, "{}", 2),
                       "invalid migration message: wrong protocol version 1 (this host speaks 2: run the same "
                       "vmsup release on both hosts)");
        expect_invalid(buf, frame(buf, 3, MIG_COMMIT, 0, 2, "{}", 2),
                       "invalid migration message: wrong protocol version 3 (this host speaks 2: run the same "
                       "vmsup release on both hosts)");
}

Test(migchan, frame_unknown_type) {
        uint8_t buf[16];

        expect_invalid(buf, frame(buf, MIGCHAN_PROTOCOL, 42, 0, 2, "{}", 2), "invalid migration message: unknown message type 42");
        expect_invalid(buf, frame(buf, MIGCHAN_PROTOCOL, 0, 0, 2, "{}", 2), "invalid migration message: unknown message type 0");
}

Test(migchan, frame_flags_set) {
        uint8_t buf[16];

        expect_invalid(buf, frame(buf, MIGCHAN_PROTOCOL, MIG_READY, 0x0100, 2, "{}", 2),
                       "invalid migration message: READY with flags 0x0100 (must be 0)");
}

Test(migchan, frame_oversized_length_refused_before_the_payload) {
        uint8_t buf[16];

        /* only the header is ever sent: the size alone is enough to refuse */
        expect_invalid(buf, frame(buf, MIGCHAN_PROTOCOL, MIG_PREPARE, 0, MIGCHAN_MAX_PAYLOAD + 1, "", 0),
                       "invalid migration message: PREPARE payload of 1048577 bytes over the limit of 1048576 bytes");
        expect_invalid(buf, frame(buf, MIGCHAN_PROTOCOL, MIG_READY, 0, 0xffffffffu, "", 0),
                       "invalid migration message: READY payload of 4294967295 bytes over the limit of 1048576 bytes");
        expect_invalid(buf, frame(buf, MIGCHAN_PROTOCOL, MIG_SECRET, 0, MIGCHAN_SECRET_MAX + 1, "", 0),
                       "invalid migration message: SECRET payload of 4097 bytes over the limit of 4096 bytes");
}

Test(migchan, frame_json_that_is_not_an_object) {
        expect_invalid_json(MIG_READY, "{\"port\":", "invalid migration message: READY payload is not JSON: unexpected end of data");
        expect_invalid_json(MIG_READY, "[1,2]", "invalid migration message: READY payload is a JSON array, not an object");
        expect_invalid_json(MIG_COMMIT, "null", "invalid migration message: COMMIT payload is a JSON null, not an object");
        expect_invalid_json(MIG_COMMIT, "7", "invalid migration message: COMMIT payload is a JSON int, not an object");
        expect_invalid_json(MIG_COMMIT, "", "invalid migration message: COMMIT payload is not JSON: unexpected end of data");
        expect_invalid_json(MIG_COMMIT, "{} {}",
                            "invalid migration message: COMMIT payload is not JSON: unexpected character");
        expect_invalid_json(MIG_COMMIT, "{\"a\":\"\xc3\"}",
                            "invalid migration message: COMMIT payload is not JSON: invalid utf-8 string");
        expect_invalid(
                (const uint8_t[]) { MIGCHAN_PROTOCOL, MIG_COMMIT, 0, 0, 0, 0, 0, 4, '{', '}', 0, ' ' }, 12,
                "invalid migration message: COMMIT payload is not JSON: it contains a NUL byte");
}

Test(migchan, frame_ready_port) {
        expect_invalid_json(MIG_READY, "{\"port\":0}",
                            "invalid migration message: bad field \"port\" in READY: 0 (must be an integer 1..65535)");
        expect_invalid_json(MIG_READY, "{\"port\":70000}",
                            "invalid migration message: bad field \"port\" in READY: 70000 (must be an integer 1..65535)");
        expect_invalid_json(MIG_READY, "{\"port\":\"4444\"}",
                            "invalid migration message: bad field \"port\" in READY: \"4444\" (must be an integer 1..65535)");
        expect_invalid_json(MIG_READY, "{\"port\":4444.0}",
                            "invalid migration message: bad field \"port\" in READY: 4444.0 (must be an integer 1..65535)");
        expect_invalid_json(MIG_READY, "{\"prot\":4444}", "invalid migration message: missing field \"port\" in READY");
}

Test(migchan, frame_hello_fields) {
        expect_invalid_json(MIG_HELLO, "{\"protocol\":2,\"uuid\":\"0F1E2D3C-4B5A-6978-8796-A5B4C3D2E1F0\",\"host\":\"a\"}",
                            "invalid migration message: bad field \"uuid\" in HELLO: \"0F1E2D3C-4B5A-6978-8796-A5B4C3D2E1F0\" "
                            "(must be a lower-case uuid)");
        expect_invalid_json(MIG_HELLO, "{\"protocol\":2,\"uuid\":\"0f1e2d3c4b5a69788796a5b4c3d2e1f0\",\"host\":\"a\"}",
                            "invalid migration message: bad field \"uuid\" in HELLO: \"0f1e2d3c4b5a69788796a5b4c3d2e1f0\" "
                            "(must be a lower-case uuid)");
        expect_invalid_json(MIG_HELLO, "{\"protocol\":1,\"uuid\":\"" GUEST "\",\"host\":\"a\"}",
                            "invalid migration message: bad field \"protocol\" in HELLO: 1 (must be 2)");
        expect_invalid_json(MIG_HELLO, "{\"protocol\":2,\"uuid\":\"" GUEST "\",\"host\":\"\"}",
                            "invalid migration message: bad field \"host\" in HELLO: \"\" (must be a host name of "
                            "1..255 printable ASCII characters)");
        expect_invalid_json(MIG_HELLO, "{\"protocol\":2,\"uuid\":\"" GUEST "\",\"host\":\"a\\nb\"}",
                            "invalid migration message: bad field \"host\" in HELLO: \"a\\nb\" (must be a host name of "
                            "1..255 printable ASCII characters)");
        expect_invalid_json(MIG_HELLO, "{\"protocol\":2,\"host\":\"a\"}",
                            "invalid migration message: missing field \"uuid\" in HELLO");
}

Test(migchan, frame_other_fields) {
        expect_invalid_json(MIG_PREPARE, "{\"spec\":[],\"secret_uuid\":\"" SECRET_UUID "\"}",
                            "invalid migration message: bad field \"spec\" in PREPARE: [] (must be an object)");
        expect_invalid_json(MIG_PREPARE, "{\"spec\":{}}",
                            "invalid migration message: missing field \"secret_uuid\" in PREPARE");
        expect_invalid_json(MIG_PREPARED, "{\"generation\":-1}",
                            "invalid migration message: bad field \"generation\" in PREPARED: -1 (must be an integer >= 0)");
        expect_invalid_json(MIG_PREPARED, "{\"generation\":18446744073709551615}",
                            "invalid migration message: bad field \"generation\" in PREPARED: 18446744073709551615 (must "
                            "be an integer >= 0)");
        expect_invalid_json(MIG_ABORT, "{\"error\":\"\"}",
                            "invalid migration message: bad field \"error\" in ABORT: \"\" (must be a text of 1..1024 bytes)");
        expect_invalid_json(MIG_ABORT, "{\"error\":null}",
                            "invalid migration message: bad field \"error\" in ABORT: null (must be a text of 1..1024 bytes)");
}

Test(migchan, frame_secret) {
        uint8_t buf[64];

        expect_invalid(buf, frame(buf, MIGCHAN_PROTOCOL, MIG_SECRET, 0, 7, "abc\0def", 7),
                       "invalid migration message: SECRET payload byte at offset 3 is not printable ASCII");
        expect_invalid(buf, frame(buf, MIGCHAN_PROTOCOL, MIG_SECRET, 0, 8, "abcdefg\n", 8),
                       "invalid migration message: SECRET payload byte at offset 7 is not printable ASCII");
        expect_invalid(buf, frame(buf, MIGCHAN_PROTOCOL, MIG_SECRET, 0, 0, "", 0), "invalid migration message: empty SECRET payload");
}

Test(migchan, the_peer_closing_mid_frame) {
        _cleanup_migchan_ struct migchan *srv = NULL, *srv2 = NULL;
        struct mig_frame f = { 0 };
        vmsup_error *err = NULL;
        uint8_t buf[64];
        struct raw raw;
        int r;

        srv = raw_pair(&raw);
        raw_send(&raw, buf, frame(buf, MIGCHAN_PROTOCOL, MIG_READY, 0, 20, "{\"port\":", 8));
        raw_close(&raw, true);
        r = migchan_recv_wait(srv, MIG_READY, LONG_MS, &f, &err);
        cr_assert_lt(r, 0);
        cr_assert_str_eq(msg_of(err),
                         fmt("%s: the migration peer closed the connection in the middle of a READY message",
                             migchan_peer(srv)));
        cr_assert_eq(err->kind, VMSUP_ERR_UNAVAILABLE);
        vmsup_error_free(err);
        err = NULL;

        /* a crash: no close_notify, in the middle of the header */
        srv2 = raw_pair(&raw);
        raw_send(&raw, buf, 3);
        raw_close(&raw, false);
        r = migchan_recv_wait(srv2, MIG_READY, LONG_MS, &f, &err);
        cr_assert_lt(r, 0);
        cr_assert_str_eq(msg_of(err),
                         fmt("%s: the migration peer closed the connection in the middle of a frame header (without "
                             "TLS close_notify)",
                             migchan_peer(srv2)));
}

Test(migchan, the_peer_closing_between_frames) {
        _cleanup_migchan_ struct migchan *src = NULL, *dst = NULL;
        struct mig_frame f = { 0 };
        vmsup_error *err = NULL;
        int r;

        pair(&src, &dst);
        dst = migchan_free(dst);
        r = migchan_recv_wait(src, MIG_READY, LONG_MS, &f, &err);
        expect_error(r, err, 69, "the migration peer closed the connection");
}

Test(migchan, recv_wait_timeout_leaves_the_channel_usable) {
        _cleanup_migchan_ struct migchan *src = NULL, *dst = NULL;
        struct mig_frame f = { 0 };
        vmsup_error *err = NULL;
        int r;

        pair(&src, &dst);
        r = migchan_recv_wait(src, MIG_READY, 200, &f, &err);
        cr_assert_lt(r, 0);
        cr_assert_str_eq(msg_of(err), fmt("%s: no answer from the migration peer within 0.2 s (waiting for READY)",
                                          migchan_peer(src)));
        cr_assert_eq(err->kind, VMSUP_ERR_BUSY);
        send_json_ok(dst, MIG_READY, "{\"port\":5555}");
        recv_ok(src, MIG_READY, &f);
        mig_frame_clear(&f);
}

Test(migchan, an_unexpected_type_is_an_error_but_abort_is_returned) {
        _cleanup_migchan_ struct migchan *src = NULL, *dst = NULL, *src2 = NULL, *dst2 = NULL;
        struct mig_frame f = { 0 };
        vmsup_error *err = NULL;
        int r;

        pair(&src, &dst);
        send_json_ok(dst, MIG_ABORT, "{\"error\":\"no room for the guest\"}");
        r = migchan_recv_wait(src, MIG_READY, LONG_MS, &f, &err);
        cr_assert_eq(r, 0, "%s", msg_of(err));
        cr_assert_eq(f.type, MIG_ABORT);
        cr_assert_str_eq(str_field(&f, "error"), "no room for the guest");
        mig_frame_clear(&f);

        pair(&src2, &dst2);
        send_json_ok(dst2, MIG_RUNNING, "{}");
        r = migchan_recv_wait(src2, MIG_READY, LONG_MS, &f, &err);
        cr_assert_lt(r, 0);
        cr_assert_str_eq(msg_of(err), fmt("%s: unexpected RUNNING message (expected READY)", migchan_peer(src2)));
        cr_assert_eq(err->kind, VMSUP_ERR_DATA);
}

/* migchan_recv_wait() in a thread, for frames larger than the socket buffers. */
struct receiver {
        pthread_t thread;
        struct migchan *c;
        enum mig_msg expect;
        struct mig_frame f;
        vmsup_error *err;
        int r;
};

static void *receive_main(void *p) {
        struct receiver *rc = p;

        rc->r = migchan_recv_wait(rc->c, rc->expect, LONG_MS, &rc->f, &rc->err);
        return NULL;
}

Test(migchan, a_prepare_near_the_size_limit) {
        _cleanup_migchan_ struct migchan *src = NULL, *dst = NULL;
        _cleanup_json_ json_object *o = NULL, *spec = NULL;
        _cleanup_free_ char *big = malloc(MIGCHAN_MAX_PAYLOAD + 1);
        struct receiver rc;
        vmsup_error *err = NULL;
        json_object *v = NULL;
        int r;

        pair(&src, &dst);
        cr_assert_not_null(big);
        memset(big, 'x', MIGCHAN_MAX_PAYLOAD);
        big[1000000] = 0;
        spec = json_object_new_object();
        json_object_object_add(spec, "uuid", json_object_new_string(GUEST));
        json_object_object_add(spec, "filler", json_object_new_string(big));
        o = json_object_new_object();
        json_object_object_add(o, "spec", json_object_get(spec));
        json_object_object_add(o, "secret_uuid", json_object_new_string(SECRET_UUID));

        rc = (struct receiver) { .c = dst, .expect = MIG_PREPARE };
        cr_assert_eq(pthread_create(&rc.thread, NULL, receive_main, &rc), 0);
        r = migchan_send_json(src, MIG_PREPARE, o, LONG_MS, &err);
        cr_assert_eq(pthread_join(rc.thread, NULL), 0);
        cr_assert_eq(r, 0, "%s", msg_of(err));
        cr_assert_eq(rc.r, 0, "%s", msg_of(rc.err));
        cr_assert_gt(rc.f.len, 1000000);
        cr_assert(json_object_object_get_ex(rc.f.json, "spec", &v));
        cr_assert(json_object_object_get_ex(v, "filler", &v));
        cr_assert_eq(json_object_get_string_len(v), 1000000);
        mig_frame_clear(&rc.f);

        /* one byte more than a frame may carry is refused before it is sent */
        big[1000000] = 'x';
        big[MIGCHAN_MAX_PAYLOAD - 40] = 0;
        json_object_object_add(spec, "filler", json_object_new_string(big));
        r = migchan_send_json(src, MIG_PREPARE, o, LONG_MS, &err);
        expect_error(r, err, 70, "PREPARE payload of 1048");
        expect_error(r, err, 70, " bytes over the limit of 1048576 bytes");
}

static bool wait_readable(int fd) {
        struct pollfd p = { .fd = fd, .events = POLLIN };

        return poll(&p, 1, LONG_MS) == 1;
}

Test(migchan, a_frame_split_over_several_writes) {
        _cleanup_migchan_ struct migchan *srv = NULL;
        static const char json[] = "{\"port\":12345}";
        struct mig_frame f = { 0 };
        vmsup_error *err = NULL;
        uint8_t buf[64];
        size_t len = frame(buf, MIGCHAN_PROTOCOL, MIG_READY, 0, sizeof(json) - 1, json, sizeof(json) - 1);
        struct raw raw;
        int r;

        srv = raw_pair(&raw);
        /* three TLS records: part of the header, the rest of it and a part of the JSON,
         * the rest; each piece sent only after the receiver saw the previous one */
        raw_send(&raw, buf, 3);
        cr_assert(wait_readable(migchan_fd(srv)));
        cr_assert_eq(migchan_recv(srv, &f, &err), 0, "%s", msg_of(err));
        raw_send(&raw, buf + 3, 10);
        cr_assert(wait_readable(migchan_fd(srv)));
        cr_assert_eq(migchan_recv(srv, &f, &err), 0, "%s", msg_of(err));
        raw_send(&raw, buf + 13, len - 13);
        do {
                cr_assert(wait_readable(migchan_fd(srv)));
                r = migchan_recv(srv, &f, &err);
        } while (r == 0);
        cr_assert_eq(r, 1, "%s", msg_of(err));
        cr_assert_eq(f.type, MIG_READY);
        cr_assert_eq(int_field(&f, "port"), 12345);
        mig_frame_clear(&f);
        cr_assert_eq(migchan_recv(srv, &f, &err), 0, "%s", msg_of(err));
        raw_close(&raw, true);
}

Test(migchan, several_frames_in_one_write) {
        static const char hello[] = "{\"protocol\":2,\"uuid\":\"" GUEST "\",\"host\":\"b\"}";
        _cleanup_migchan_ struct migchan *srv = NULL;
        struct mig_frame f = { 0 };
        struct pollfd p;
        vmsup_error *err = NULL;
        uint8_t buf[256];
        size_t len = 0;
        struct raw raw;
        int r;

        srv = raw_pair(&raw);
        len += frame(buf + len, MIGCHAN_PROTOCOL, MIG_HELLO, 0, (uint32_t) strlen(hello), hello, strlen(hello));
        len += frame(buf + len, MIGCHAN_PROTOCOL, MIG_SECRET, 0, 6, "s3cr3t", 6);
        len += frame(buf + len, MIGCHAN_PROTOCOL, MIG_MIGRATED, 0, 2, "{}", 2);
        raw_send(&raw, buf, len); /* one TLS record */
        do {
                cr_assert(wait_readable(migchan_fd(srv)));
                r = migchan_recv(srv, &f, &err);
        } while (r == 0);
        cr_assert_eq(r, 1, "%s", msg_of(err));
        cr_assert_eq(f.type, MIG_HELLO);
        mig_frame_clear(&f);
        /* the socket is drained: the rest waits in gnutls, and only calling again finds it */
        p = (struct pollfd) { .fd = migchan_fd(srv), .events = POLLIN };
        cr_assert_eq(poll(&p, 1, 0), 0);
        cr_assert_eq(migchan_recv(srv, &f, &err), 1, "%s", msg_of(err));
        cr_assert_eq(f.type, MIG_SECRET);
        cr_assert_str_eq((char *) f.secret, "s3cr3t");
        mig_frame_clear(&f);
        cr_assert_eq(migchan_recv(srv, &f, &err), 1, "%s", msg_of(err));
        cr_assert_eq(f.type, MIG_MIGRATED);
        mig_frame_clear(&f);
        cr_assert_eq(migchan_recv(srv, &f, &err), 0, "%s", msg_of(err));
        raw_close(&raw, true);
}

Test(migchan, we_never_send_what_the_peer_would_refuse) {
        _cleanup_migchan_ struct migchan *src = NULL, *dst = NULL;
        _cleanup_json_ json_object *bad = parse("{\"port\":0}");
        vmsup_error *err = NULL;
        int r;

        pair(&src, &dst);
        r = migchan_send_json(dst, MIG_READY, bad, LONG_MS, &err);
        expect_error(r, err, 70, "send READY: a frame the peer would refuse: bad field \"port\" in READY: 0");
        vmsup_error_free(err);
        err = NULL;
        r = migchan_send(src, MIG_SECRET, "pass\n", 5, LONG_MS, &err);
        expect_error(r, err, 70, "send SECRET: a frame the peer would refuse: SECRET payload byte at offset 4");
        vmsup_error_free(err);
        err = NULL;
        r = migchan_send(src, 12, "{}", 2, LONG_MS, &err);
        expect_error(r, err, 70, "unknown message type 12");
        vmsup_error_free(err);
        err = NULL;
        /* nothing of it went out, and the channel still works */
        send_json_ok(dst, MIG_READY, "{\"port\":1}");
        {
                struct mig_frame f = { 0 };

                recv_ok(src, MIG_READY, &f);
                mig_frame_clear(&f);
        }
}

/* A server that takes the connection and never speaks: the client's handshake waits,
 * until its cancel fd (a signalfd in the supervisor; a pipe here) is readable. */
Test(migchan, a_readable_cancel_fd_ends_the_handshake) {
        char port[8];
        int lfd = listen_local(port), p[2];
        struct migchan *c = NULL;
        vmsup_error *err = NULL;
        int r;

        cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
        cr_assert_eq(write(p[1], "x", 1), 1);
        /* 60 s of handshake: ended by the cancel (ECANCELED), not by its deadline */
        r = migchan_connect_cancel("127.0.0.1", port, ptr(client_tls("b", "a")), 60000, p[0], &c, &err);
        cr_assert_lt(r, 0);
        cr_assert_null(c);
        cr_assert(err && err->errnum == ECANCELED && err->kind == VMSUP_ERR_BUSY, "%s", msg_of(err));
        vmsup_error_free(err);
        err = NULL;

        /* without one the same connection waits for its deadline */
        r = migchan_connect("127.0.0.1", port, ptr(client_tls("b", "a")), 300, &c, &err);
        cr_assert_lt(r, 0);
        cr_assert(err && err->errnum != ECANCELED && strstr(err->msg, "no answer within"), "%s", msg_of(err));
        vmsup_error_free(err);
        close(p[0]);
        close(p[1]);
        close(lfd);
}
