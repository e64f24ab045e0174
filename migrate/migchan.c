#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
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
#include "crypto/tls.h"
#include "migrate/frame.h"
#include "migrate/migchan.h"

#define ADDR_MAX (INET6_ADDRSTRLEN + 16)

struct migchan {
        int fd;
        struct migchan_tcp *tcp;  /* migchan_connect_start(): the TCP connect still under way */
        struct tls_session *tls;
        bool handshake_done, broken;
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

/* ---- errors ---- */

/* "<peer>: <message>"; the channel cannot be used after it. */
__attribute__((format(printf, 5, 6))) static int chan_fail(struct migchan *c, vmsup_error **err, enum vmsup_err_kind kind,
                                                           int errnum, const char *fmt, ...) {
        _cleanup_free_ char *msg = NULL;
        va_list ap;

        c->broken = true;
        va_start(ap, fmt);
        if (vasprintf(&msg, fmt, ap) < 0)
                msg = NULL;
        va_end(ap);
        return vmsup_fail(err, kind, errnum, "%s: %s", c->peer, msg ? msg : "out of memory");
}

/* ---- the connection ---- */

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
        if (c->tls) {
                if (c->handshake_done && !c->broken)
                        tls_session_bye(c->tls);
                tls_session_free(c->tls);
        }
        if (c->fd >= 0)
                close(c->fd);
        migchan_tcp_free(c->tcp);
        frame_reset(c);
        free(c);
        return NULL;
}

/* Credentials and session, before any network traffic: a bad CA, certificate or key
 * fails here, as a configuration error. */
static int chan_new(const struct migchan_tls *tls, bool server, struct migchan **ret, vmsup_error **err) {
        _cleanup_migchan_ struct migchan *c = NULL;
        struct tls_setup setup = { .what = "migration" };
        int r;

        c = calloc(1, sizeof(*c));
        if (!c)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "migration channel");
        c->fd = -1;
        c->cancel_fd = -1;
        if (tls)
                setup = (struct tls_setup) { .what = "migration",
                                             .ca_file = tls->ca_file,
                                             .cert_file = tls->cert_file,
                                             .key_file = tls->key_file,
                                             .peer_name = tls->peer_name };
        r = tls_session_new(&setup, server, &c->tls, err);
        if (r < 0)
                return r;
        *ret = TAKE_PTR(c);
        return 0;
}

static void chan_attach(struct migchan *c, int fd) {
        int one = 1;

        c->fd = fd;
        tls_session_set_fd(c->tls, fd);
        /* small request/answer frames: Nagle would only add delay */
        (void) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        sockaddr_format(fd, true, NULL, 0, c->addr, sizeof(c->addr));
        sockaddr_format(fd, false, c->local_addr, sizeof(c->local_addr), NULL, 0);
        snprintf(c->peer, sizeof(c->peer), "%s", c->addr);
}

int migchan_handshake_step(struct migchan *c, vmsup_error **err) {
        char cn[65];
        int r;

        if (c->handshake_done)
                return 1;
        if (c->broken)
                return vmsup_fail(err, VMSUP_ERR_INTERNAL, 0, "TLS handshake with %s: the channel failed earlier",
                                  c->addr);
        r = tls_session_handshake_step(c->tls, c->addr, err);
        if (r < 0)
                c->broken = true;
        if (r <= 0)
                return r;
        c->handshake_done = true;
        tls_session_peer_cn(c->tls, cn, sizeof(cn));
        if (cn[0])
                snprintf(c->peer, sizeof(c->peer), "%s (CN=%s)", c->addr, cn);
        return 1;
}

short migchan_handshake_events(const struct migchan *c) {
        return tls_session_events(c->tls);
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
                        return vmsup_fail(err, VMSUP_ERR_BUSY, 0, "TLS handshake with %s: no answer within %g s",
                                          c->addr, seconds(timeout_ms));
                }
                if (n == -ECANCELED) {
                        c->broken = true;
                        return vmsup_fail(err, VMSUP_ERR_BUSY, ECANCELED, "TLS handshake with %s", c->addr);
                }
                if (n < 0) {
                        c->broken = true;
                        return vmsup_fail(err, VMSUP_ERR_SYSTEM, -n, "TLS handshake with %s: poll", c->addr);
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
                return vmsup_fail(err, r == EAI_AGAIN ? VMSUP_ERR_BUSY : VMSUP_ERR_UNAVAILABLE,
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
                                        return vmsup_fail(err, VMSUP_ERR_BUSY, 0,
                                                          "connect to %s: no answer within %g s", where,
                                                          seconds(timeout_ms));
                                return vmsup_fail(err, n == -ECANCELED ? VMSUP_ERR_BUSY : VMSUP_ERR_SYSTEM, -n,
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
        return vmsup_fail(err, VMSUP_ERR_UNAVAILABLE, last, "connect to %s", where);
}

int migchan_tcp_connect_cancel(const char *host, const char *port, int timeout_ms, int cancel_fd, int *ret_fd,
                               vmsup_error **err) {
        if (!host || !*host || !port || !*port)
                return vmsup_fail(err, VMSUP_ERR_INTERNAL, 0, "connect: no host or port");
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
                return vmsup_fail(err, VMSUP_ERR_INTERNAL, 0, "migration channel: no host or port to connect to");
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
        return vmsup_fail(err, VMSUP_ERR_UNAVAILABLE, t->last, "connect to %s", t->where);
}

int migchan_tcp_connect_start(const char *host, const char *port, struct migchan_tcp **ret, vmsup_error **err) {
        struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM };
        struct migchan_tcp *t;
        int r;

        if (!host || !*host || !port || !*port)
                return vmsup_fail(err, VMSUP_ERR_INTERNAL, 0, "connect: no host or port");
        t = calloc(1, sizeof(*t));
        if (!t)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "connect");
        t->fd = -1;
        t->last = ECONNREFUSED;
        format_host_port(t->where, sizeof(t->where), host, port);
        r = getaddrinfo(host, port, &hints, &t->res);
        if (r != 0) {
                vmsup_fail(err, r == EAI_AGAIN ? VMSUP_ERR_BUSY : VMSUP_ERR_UNAVAILABLE, r == EAI_SYSTEM ? errno : 0,
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
        return vmsup_fail(err, VMSUP_ERR_BUSY, 0, "connect to %s: no answer within %g s", t->where,
                          seconds(timeout_ms));
}

int migchan_connect_start(const char *host, const char *port, const struct migchan_tls *tls, struct migchan **ret,
                          vmsup_error **err) {
        _cleanup_migchan_ struct migchan *c = NULL;
        int r;

        if (!host || !*host || !port || !*port)
                return vmsup_fail(err, VMSUP_ERR_INTERNAL, 0, "migration channel: no host or port to connect to");
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
        return vmsup_fail(err, VMSUP_ERR_BUSY, 0, "TLS handshake with %s: no answer within %g s", c->addr,
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
                return vmsup_fail(err, VMSUP_ERR_INTERNAL, 0, "listen for migration connections: no port");
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
                        return vmsup_fail(err, VMSUP_ERR_CONFIG, g == EAI_SYSTEM ? errno : 0,
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
        return vmsup_fail(err, VMSUP_ERR_UNAVAILABLE, -r, "listen for migration connections on %s", where);
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
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, errno, "accept a migration connection");
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
                        return vmsup_fail(err, VMSUP_ERR_BUSY, 0, "no migration connection within %g s",
                                          seconds(timeout_ms));
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return vmsup_fail(err, VMSUP_ERR_SYSTEM, errno, "wait for a migration connection");
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
        n = poll_cancel(c->fd, tls_session_events(c->tls), c->cancel_fd, left);
        return n == -EINTR ? 1 : n;
}

int migchan_send(struct migchan *c, enum mig_msg type, const void *payload, size_t len, int timeout_ms,
                 vmsup_error **err) {
        long deadline = deadline_of(timeout_ms);
        char reason[MIG_WHY_MAX];
        uint8_t *frame;
        size_t total, off = 0;
        int r;

        if (c->broken)
                return vmsup_fail(err, VMSUP_ERR_INTERNAL, 0, "%s: send %s: the migration channel failed earlier",
                                  c->peer, mig_msg_name(type));
        if (!payload && len > 0)
                return vmsup_fail(err, VMSUP_ERR_INTERNAL, 0, "%s: send %s: no payload", c->peer, mig_msg_name(type));
        r = mig_frame_check(type, payload ? payload : (const void *) "", len, NULL, reason);
        if (r == -ENOMEM)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "%s: send %s", c->peer, mig_msg_name(type));
        if (r < 0)
                return vmsup_fail(err, VMSUP_ERR_INTERNAL, 0, "%s: send %s: a frame the peer would refuse: %s", c->peer,
                                  mig_msg_name(type), reason);

        total = MIGCHAN_HEADER_LEN + len;
        frame = type == MIG_SECRET ? secmem_alloc(total) : malloc(total);
        if (!frame)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "%s: send %s", c->peer, mig_msg_name(type));
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
                /* after tls_again() the session wants the very same arguments again */
                ssize_t n = tls_session_send(c->tls, frame + off, total - off);

                if (n >= 0) {
                        off += (size_t) n;
                        continue;
                }
                if (tls_again(n)) {
                        int w = wait_io(c, deadline);

                        if (w == 0) {
                                r = chan_fail(c, err, VMSUP_ERR_BUSY, 0,
                                              "send %s: the migration peer took nothing within %g s",
                                              mig_msg_name(type), seconds(timeout_ms));
                                break;
                        }
                        if (w < 0) {
                                r = chan_fail(c, err, w == -ECANCELED ? VMSUP_ERR_BUSY : VMSUP_ERR_SYSTEM, -w, "send %s",
                                              mig_msg_name(type));
                                break;
                        }
                        continue;
                }
                if (tls_session_send_closed(c->tls, n))
                        r = chan_fail(c, err, VMSUP_ERR_UNAVAILABLE, 0,
                                      "send %s: the migration peer closed the connection", mig_msg_name(type));
                else {
                        char text[256];

                        tls_session_error_text(c->tls, (int) n, text, sizeof(text));
                        r = chan_fail(c, err, VMSUP_ERR_UNAVAILABLE, tls_session_errno(c->tls, (int) n),
                                      "send %s: TLS error: %s",
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
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "%s: send %s", c->peer, mig_msg_name(type));
        if (type == MIG_SECRET)
                return vmsup_fail(err, VMSUP_ERR_INTERNAL, 0, "%s: send SECRET: its payload is not JSON", c->peer);
        return migchan_send(c, type, s, strlen(s), timeout_ms, err);
}

/* Some bytes of the frame in progress: > 0 read, 0 nothing available yet, < 0 error. */
static int read_some(struct migchan *c, uint8_t *dst, size_t want, vmsup_error **err) {
        char where[64] = "", text[256];
        ssize_t n;

        n = tls_session_recv(c->tls, dst, want);
        if (n > 0)
                return (int) n;
        if (tls_again(n))
                return 0;

        if (c->hdr_got == MIGCHAN_HEADER_LEN)
                snprintf(where, sizeof(where), " in the middle of a %s message", mig_msg_name(c->hdr[1]));
        else if (c->hdr_got > 0)
                snprintf(where, sizeof(where), " in the middle of a frame header");
        if (n == 0)
                return chan_fail(c, err, VMSUP_ERR_UNAVAILABLE, 0, "the migration peer closed the connection%s", where);
        if (tls_session_recv_closed(c->tls, n))
                return chan_fail(c, err, VMSUP_ERR_UNAVAILABLE, 0,
                                 "the migration peer closed the connection%s (without TLS close_notify)", where);
        tls_session_error_text(c->tls, (int) n, text, sizeof(text));
        return chan_fail(c, err, VMSUP_ERR_UNAVAILABLE, tls_session_errno(c->tls, (int) n), "TLS error: %s", text);
}

/* The header is complete: check it before a byte of the payload is read. */
static int start_payload(struct migchan *c, vmsup_error **err) {
        const uint8_t *h = c->hdr;
        unsigned flags = (unsigned) h[2] << 8 | h[3];
        size_t len = (size_t) h[4] << 24 | (size_t) h[5] << 16 | (size_t) h[6] << 8 | h[7];
        char reason[MIG_WHY_MAX];

        if (h[0] != MIGCHAN_PROTOCOL)
                return chan_fail(c, err, VMSUP_ERR_DATA, 0,
                                 "invalid migration message: wrong protocol version %u (this host speaks %d: "
                                 "run the same vmsup release on both hosts)", h[0], MIGCHAN_PROTOCOL);
        if (!mig_msg_known(h[1]))
                return chan_fail(c, err, VMSUP_ERR_DATA, 0, "invalid migration message: unknown message type %u",
                                 h[1]);
        if (flags != 0)
                return chan_fail(c, err, VMSUP_ERR_DATA, 0,
                                 "invalid migration message: %s with flags 0x%04x (must be 0)", mig_msg_name(h[1]),
                                 flags);
        if (mig_frame_check_length(h[1], len, reason) < 0)
                return chan_fail(c, err, VMSUP_ERR_DATA, 0, "invalid migration message: %s", reason);

        /* A passphrase lands only in locked, undumpable memory. */
        c->buf_secmem = h[1] == MIG_SECRET;
        c->buf = c->buf_secmem ? secmem_alloc(len + 1) : calloc(1, len + 1);
        if (!c->buf)
                return chan_fail(c, err, VMSUP_ERR_SYSTEM, ENOMEM, "receive a %s message", mig_msg_name(h[1]));
        c->len = len;
        c->got = 0;
        return 0;
}

static int finish_frame(struct migchan *c, struct mig_frame *ret, vmsup_error **err) {
        enum mig_msg type = c->hdr[1];
        json_object *o = NULL;
        char reason[MIG_WHY_MAX];
        int r;

        c->buf[c->len] = 0;
        r = mig_frame_check(type, c->buf, c->len, &o, reason);
        if (r == -ENOMEM)
                return chan_fail(c, err, VMSUP_ERR_SYSTEM, ENOMEM, "receive a %s message", mig_msg_name(type));
        if (r < 0)
                return chan_fail(c, err, VMSUP_ERR_DATA, 0, "invalid migration message: %s", reason);
        if (type == MIG_ABORT && mig_frame_sanitize_abort(o) < 0) {
                json_object_put(o);
                return chan_fail(c, err, VMSUP_ERR_SYSTEM, ENOMEM, "receive a %s message", mig_msg_name(type));
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
                return vmsup_fail(err, VMSUP_ERR_INTERNAL, 0, "%s: receive: the migration channel failed earlier",
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
                        return vmsup_fail(err, VMSUP_ERR_BUSY, 0,
                                          "%s: no answer from the migration peer within %g s (waiting for %s)", c->peer,
                                          seconds(timeout_ms), expect ? mig_msg_name(expect) : "a message");
                if (r < 0)
                        return chan_fail(c, err, r == -ECANCELED ? VMSUP_ERR_BUSY : VMSUP_ERR_SYSTEM, -r, "receive");
        }
        if (expect && f.type != expect && f.type != MIG_ABORT) {
                r = chan_fail(c, err, VMSUP_ERR_DATA, 0, "unexpected %s message (expected %s)", mig_msg_name(f.type),
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
