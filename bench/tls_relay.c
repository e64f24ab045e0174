/* A TLS 1.3 tunnel for one plain TCP connection, for bench/migrate_qemu.sh --tunnel: it
 * plays the part of the two supervisors carrying QEMU's migration stream over their own
 * TLS channel. Not part of vmsup.
 *
 *   tls_relay client LISTEN_ADDR:PORT REMOTE:PORT CERTDIR
 *       connects to REMOTE:PORT and completes a TLS 1.3 handshake with it as the client
 *       (CERTDIR/client-cert.pem, client-key.pem; the server's certificate must chain to
 *       CERTDIR/ca-cert.pem and name REMOTE), then listens on LISTEN_ADDR:PORT (PORT 0:
 *       any), accepts one plain connection and relays it both ways over the TLS session.
 *   tls_relay server LISTEN_ADDR:PORT FORWARD_ADDR:PORT CERTDIR
 *       listens on LISTEN_ADDR:PORT, accepts one TLS 1.3 connection (CERTDIR/server-cert.pem,
 *       server-key.pem; a client certificate that chains to CERTDIR/ca-cert.pem is
 *       required), connects to FORWARD_ADDR:PORT in plain TCP and relays both ways.
 *
 * Once it listens for what it waits for (the server: the TLS peer; the client: the plain
 * connection, after its handshake), it prints "ready PORT" on stdout. An end of stream on
 * one side is passed on to the other (close_notify / shutdown(SHUT_WR)); it exits 0 when
 * both directions are closed, 1 on any error. Last line on stderr: bytes each way, the
 * cipher, and its own CPU time (getrusage: user + system), e.g.
 *   tls_relay client: done plain->tls 268435456 tls->plain 53 cipher AES-256-GCM cpu_ms 812 (user 601 sys 211)
 *
 * Build: gcc -O2 -o tls_relay tls_relay.c $(pkg-config --cflags --libs gnutls)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#define PRIORITY "NORMAL:-VERS-ALL:+VERS-TLS1.3" /* as vmsup's migration channel */
#define BUFSZ (256 * 1024)
#define TIMEOUT_MS (60 * 1000) /* handshake, connect and accept */

static const char *role = "?";

static void die(const char *fmt, ...) {
        va_list ap;

        fprintf(stderr, "tls_relay %s: error: ", role);
        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
        fputc('\n', stderr);
        exit(1);
}

static void split(const char *arg, char *host, size_t hn, char *port, size_t pn) {
        const char *colon = strrchr(arg, ':');
        size_t len;

        if (!colon || colon == arg || !colon[1])
                die("'%s' is not ADDR:PORT", arg);
        len = (size_t) (colon - arg);
        if (arg[0] == '[' && colon[-1] == ']') { /* [v6]:port */
                arg++;
                len -= 2;
        }
        if (len >= hn || strlen(colon + 1) >= pn)
                die("'%s' is too long", arg);
        memcpy(host, arg, len);
        host[len] = 0;
        strcpy(port, colon + 1);
}

static void nodelay(int fd) {
        int one = 1;

        (void) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

static void nonblock(int fd) {
        int fl = fcntl(fd, F_GETFL);

        if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
                die("fcntl: %s", strerror(errno));
}

static int tcp_listen(const char *arg, int *port_out) {
        char host[256], port[32];
        struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE },
                        *res;
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        int fd, one = 1, r;

        split(arg, host, sizeof(host), port, sizeof(port));
        r = getaddrinfo(host, port, &hints, &res);
        if (r != 0)
                die("%s: %s", arg, gai_strerror(r));
        fd = socket(res->ai_family, res->ai_socktype | SOCK_CLOEXEC, 0);
        if (fd < 0)
                die("socket: %s", strerror(errno));
        (void) setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (bind(fd, res->ai_addr, res->ai_addrlen) < 0)
                die("bind %s: %s", arg, strerror(errno));
        freeaddrinfo(res);
        if (listen(fd, 1) < 0)
                die("listen %s: %s", arg, strerror(errno));
        if (getsockname(fd, (struct sockaddr *) &ss, &sl) < 0)
                die("getsockname: %s", strerror(errno));
        *port_out = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *) &ss)->sin6_port
                                                   : ((struct sockaddr_in *) &ss)->sin_port);
        return fd;
}

static int tcp_accept(int lfd) {
        struct pollfd p = { .fd = lfd, .events = POLLIN };
        int r, fd;

        r = poll(&p, 1, TIMEOUT_MS);
        if (r == 0)
                die("nobody connected within %d s", TIMEOUT_MS / 1000);
        if (r < 0)
                die("poll: %s", strerror(errno));
        fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0)
                die("accept: %s", strerror(errno));
        close(lfd);
        nodelay(fd);
        return fd;
}

static int tcp_connect(const char *arg, char *host, size_t hn) {
        char port[32];
        struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM }, *res, *ai;
        int fd = -1, r, err = 0;

        split(arg, host, hn, port, sizeof(port));
        r = getaddrinfo(host, port, &hints, &res);
        if (r != 0)
                die("%s: %s", arg, gai_strerror(r));
        for (ai = res; ai; ai = ai->ai_next) {
                fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, 0);
                if (fd < 0)
                        die("socket: %s", strerror(errno));
                if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
                        break;
                err = errno;
                close(fd);
                fd = -1;
        }
        freeaddrinfo(res);
        if (fd < 0)
                die("connect to %s: %s", arg, strerror(err));
        nodelay(fd);
        return fd;
}

static gnutls_certificate_credentials_t cred;
static gnutls_session_t session;
static gnutls_typed_vdata_st vdata[2];

static void tls_setup(bool server, const char *certdir, const char *peer_name) {
        char ca[4096], cert[4096], key[4096];
        int r;

        snprintf(ca, sizeof(ca), "%s/ca-cert.pem", certdir);
        snprintf(cert, sizeof(cert), "%s/%s-cert.pem", certdir, server ? "server" : "client");
        snprintf(key, sizeof(key), "%s/%s-key.pem", certdir, server ? "server" : "client");
        if ((r = gnutls_certificate_allocate_credentials(&cred)) < 0)
                die("credentials: %s", gnutls_strerror(r));
        if ((r = gnutls_certificate_set_x509_trust_file(cred, ca, GNUTLS_X509_FMT_PEM)) <= 0)
                die("%s: %s", ca, r < 0 ? gnutls_strerror(r) : "no certificate");
        if ((r = gnutls_certificate_set_x509_key_file(cred, cert, key, GNUTLS_X509_FMT_PEM)) < 0)
                die("%s, %s: %s", cert, key, gnutls_strerror(r));
        if ((r = gnutls_init(&session, (server ? GNUTLS_SERVER : GNUTLS_CLIENT) | GNUTLS_NO_TICKETS)) < 0)
                die("session: %s", gnutls_strerror(r));
        if ((r = gnutls_priority_set_direct(session, PRIORITY, NULL)) < 0)
                die("priority: %s", gnutls_strerror(r));
        if ((r = gnutls_credentials_set(session, GNUTLS_CRD_CERTIFICATE, cred)) < 0)
                die("credentials: %s", gnutls_strerror(r));
        if (server) {
                gnutls_certificate_server_set_request(session, GNUTLS_CERT_REQUIRE);
                vdata[0] = (gnutls_typed_vdata_st) { GNUTLS_DT_KEY_PURPOSE_OID,
                                                     (unsigned char *) GNUTLS_KP_TLS_WWW_CLIENT, 0 };
                gnutls_session_set_verify_cert2(session, vdata, 1, 0);
        } else {
                vdata[0] = (gnutls_typed_vdata_st) { GNUTLS_DT_DNS_HOSTNAME, (unsigned char *) peer_name, 0 };
                vdata[1] = (gnutls_typed_vdata_st) { GNUTLS_DT_KEY_PURPOSE_OID,
                                                     (unsigned char *) GNUTLS_KP_TLS_WWW_SERVER, 0 };
                gnutls_session_set_verify_cert2(session, vdata, 2, 0);
        }
        gnutls_handshake_set_timeout(session, TIMEOUT_MS);
}

/* Blocking handshake on fd (made non-blocking afterwards, for the relay loop). */
static void tls_handshake(int fd) {
        int r;

        gnutls_transport_set_int(session, fd);
        do
                r = gnutls_handshake(session);
        while (r < 0 && !gnutls_error_is_fatal(r));
        if (r < 0) {
                if (r == GNUTLS_E_CERTIFICATE_VERIFICATION_ERROR) {
                        gnutls_datum_t out = { 0 };

                        gnutls_certificate_verification_status_print(gnutls_session_get_verify_cert_status(session),
                                                                     GNUTLS_CRT_X509, &out, 0);
                        die("handshake: %s", out.data ? (char *) out.data : "certificate not trusted");
                }
                die("handshake: %s", gnutls_strerror(r));
        }
        if (gnutls_protocol_get_version(session) != GNUTLS_TLS1_3)
                die("handshake: negotiated %s, not TLS 1.3",
                    gnutls_protocol_get_name(gnutls_protocol_get_version(session)));
        if (gnutls_session_get_verify_cert_status(session) != 0)
                die("handshake: the peer's certificate was not verified");
}

static void ready(int port) {
        printf("ready %d\n", port);
        fflush(stdout);
}

/* One direction's buffer: bytes [off, len) are still to be written. */
struct pipe_buf {
        char *data;
        size_t off, len;
        unsigned long long total;
        bool eof;  /* the reading side ended */
        bool done; /* ...and the end was passed on (or the writing side is gone) */
};

static long ms(struct timeval tv) {
        return tv.tv_sec * 1000L + tv.tv_usec / 1000;
}

int main(int argc, char **argv) {
        struct pipe_buf up = { 0 }, down = { 0 }; /* up: plain -> tls, down: tls -> plain */
        char host[256];
        int plain, tfd, port, r;
        bool server;
        struct rusage ru;

        if (argc != 5 || (strcmp(argv[1], "client") && strcmp(argv[1], "server"))) {
                fprintf(stderr, "usage: %s client LISTEN_ADDR:PORT REMOTE:PORT CERTDIR\n"
                                "       %s server LISTEN_ADDR:PORT FORWARD_ADDR:PORT CERTDIR\n",
                        argv[0], argv[0]);
                return 64;
        }
        role = argv[1];
        server = !strcmp(role, "server");
        signal(SIGPIPE, SIG_IGN);
        if ((r = gnutls_global_init()) < 0)
                die("gnutls_global_init: %s", gnutls_strerror(r));

        if (server) {
                int lfd = tcp_listen(argv[2], &port);

                tls_setup(true, argv[4], NULL);
                ready(port);
                tfd = tcp_accept(lfd);
                tls_handshake(tfd);
                plain = tcp_connect(argv[3], host, sizeof(host));
        } else {
                int lfd;

                tfd = tcp_connect(argv[3], host, sizeof(host));
                tls_setup(false, argv[4], host);
                tls_handshake(tfd);
                lfd = tcp_listen(argv[2], &port);
                ready(port);
                plain = tcp_accept(lfd);
        }
        nonblock(tfd);
        nonblock(plain);
        up.data = malloc(BUFSZ);
        down.data = malloc(BUFSZ);
        if (!up.data || !down.data)
                die("out of memory");

        while (!up.done || !down.done) {
                struct pollfd p[2] = { { .fd = plain }, { .fd = tfd } };
                bool pending = !down.eof && down.len == 0 && gnutls_record_check_pending(session) > 0;
                ssize_t n;

                /* plain -> tls */
                if (!up.eof && up.len == 0)
                        p[0].events |= POLLIN;
                if (up.len > 0 || (up.eof && !up.done))
                        p[1].events |= POLLOUT;
                /* tls -> plain */
                if (!down.eof && down.len == 0 && !pending)
                        p[1].events |= POLLIN;
                if (down.len > 0)
                        p[0].events |= POLLOUT;
                /* a hung-up socket polls ready for everything: leave out what we wait for nothing on */
                for (int i = 0; i < 2; i++)
                        if (!p[i].events)
                                p[i].fd = -1;
                if (!pending && poll(p, 2, -1) < 0) {
                        if (errno == EINTR)
                                continue;
                        die("poll: %s", strerror(errno));
                }

                /* plain -> tls: read, then send as records (at most 16 KiB each) */
                if (!up.eof && up.len == 0 && (p[0].revents & (POLLIN | POLLHUP | POLLERR))) {
                        n = read(plain, up.data, BUFSZ);
                        if (n > 0) {
                                up.off = 0;
                                up.len = (size_t) n;
                                up.total += (unsigned long long) n;
                        } else if (n == 0)
                                up.eof = true;
                        else if (errno != EAGAIN && errno != EINTR)
                                die("read from the plain connection: %s", strerror(errno));
                }
                while (up.len > up.off) {
                        n = gnutls_record_send(session, up.data + up.off, up.len - up.off);
                        if (n == GNUTLS_E_AGAIN || n == GNUTLS_E_INTERRUPTED)
                                break;
                        if (n < 0)
                                die("TLS send: %s", gnutls_strerror((int) n));
                        up.off += (size_t) n;
                }
                if (up.len > 0 && up.off == up.len)
                        up.len = up.off = 0;
                if (up.eof && up.len == 0 && !up.done) {
                        r = gnutls_bye(session, GNUTLS_SHUT_WR); /* close_notify */
                        if (r == 0)
                                up.done = true;
                        else if (r != GNUTLS_E_AGAIN && r != GNUTLS_E_INTERRUPTED)
                                die("TLS close_notify: %s", gnutls_strerror(r));
                }

                /* tls -> plain: one record at a time, written out before the next */
                if (!down.eof && down.len == 0 && (pending || (p[1].revents & (POLLIN | POLLHUP | POLLERR)))) {
                        n = gnutls_record_recv(session, down.data, BUFSZ);
                        if (n > 0) {
                                down.off = 0;
                                down.len = (size_t) n;
                                down.total += (unsigned long long) n;
                        } else if (n == 0)
                                down.eof = true;
                        else if (n == GNUTLS_E_PREMATURE_TERMINATION) {
                                fprintf(stderr, "tls_relay %s: the peer closed without close_notify\n", role);
                                down.eof = true;
                        } else if (n != GNUTLS_E_AGAIN && n != GNUTLS_E_INTERRUPTED)
                                die("TLS receive: %s", gnutls_strerror((int) n));
                }
                while (down.len > down.off) {
                        n = write(plain, down.data + down.off, down.len - down.off);
                        if (n < 0 && (errno == EAGAIN || errno == EINTR))
                                break;
                        if (n < 0) { /* the plain peer is gone: drop what it would have read */
                                fprintf(stderr, "tls_relay %s: write to the plain connection: %s\n", role,
                                        strerror(errno));
                                down.off = down.len;
                                break;
                        }
                        down.off += (size_t) n;
                }
                if (down.len > 0 && down.off == down.len)
                        down.len = down.off = 0;
                if (down.eof && down.len == 0 && !down.done) {
                        (void) shutdown(plain, SHUT_WR);
                        down.done = true;
                }
        }

        if (getrusage(RUSAGE_SELF, &ru) < 0)
                die("getrusage: %s", strerror(errno));
        fprintf(stderr,
                "tls_relay %s: done plain->tls %llu tls->plain %llu cipher %s cpu_ms %ld (user %ld sys %ld)\n", role,
                up.total, down.total, gnutls_cipher_get_name(gnutls_cipher_get(session)),
                ms(ru.ru_utime) + ms(ru.ru_stime), ms(ru.ru_utime), ms(ru.ru_stime));
        close(plain);
        close(tfd);
        gnutls_deinit(session);
        gnutls_certificate_free_credentials(cred);
        gnutls_global_deinit();
        return 0;
}
