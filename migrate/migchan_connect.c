/* The migration channel's set-up (migrate/migchan.h): listen, accept, TCP connect, the
 * TLS handshake, each whole (blocking with a deadline) or one step at a time for a caller
 * on an event loop. The frames on the open channel are migchan.c; what both use is
 * migchan_internal.h. */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/util.h"
#include "crypto/tls.h"
#include "migrate/migchan.h"
#include "migrate/migchan_internal.h"

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

/* ---- the connection ---- */

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
                left = chan_left_ms(deadline);
                if (left > 0 &&
                    (n = chan_poll_cancel(c->fd, migchan_handshake_events(c), c->cancel_fd, left)) == -EINTR)
                        continue;
                if (left == 0 || n == 0) {
                        c->broken = true;
                        return vmsup_fail(err, VMSUP_ERR_BUSY, 0, "TLS handshake with %s: no answer within %g s",
                                          c->addr, chan_seconds(timeout_ms));
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
                                int left = chan_left_ms(deadline);
                                int n = left == 0 ? 0 : chan_poll_cancel(fd, POLLOUT, cancel_fd, left);

                                if (n == -EINTR)
                                        continue;
                                if (n > 0)
                                        break;
                                freeaddrinfo(res);
                                if (n == 0)
                                        return vmsup_fail(err, VMSUP_ERR_BUSY, 0,
                                                          "connect to %s: no answer within %g s", where,
                                                          chan_seconds(timeout_ms));
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

int migchan_tcp_connect(const char *host, const char *port, int timeout_ms, int *ret_fd, vmsup_error **err) {
        if (!host || !*host || !port || !*port)
                return vmsup_fail(err, VMSUP_ERR_INTERNAL, 0, "connect: no host or port");
        return tcp_connect(host, port, chan_deadline_of(timeout_ms), timeout_ms, -1, ret_fd, err);
}

int migchan_connect(const char *host, const char *port, const struct migchan_tls *tls, int timeout_ms,
                    struct migchan **ret, vmsup_error **err) {
        return migchan_connect_cancel(host, port, tls, timeout_ms, -1, ret, err);
}

int migchan_connect_cancel(const char *host, const char *port, const struct migchan_tls *tls, int timeout_ms,
                           int cancel_fd, struct migchan **ret, vmsup_error **err) {
        _cleanup_migchan_ struct migchan *c = NULL;
        long deadline = chan_deadline_of(timeout_ms);
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
                          chan_seconds(timeout_ms));
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
                          chan_seconds(timeout_ms));
}

/* ---- the server side ---- */

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
        long deadline = chan_deadline_of(timeout_ms);
        int r;

        for (;;) {
                struct pollfd p = { .fd = listen_fd, .events = POLLIN };
                int n = poll(&p, 1, chan_left_ms(deadline));

                if (n == 0)
                        return vmsup_fail(err, VMSUP_ERR_BUSY, 0, "no migration connection within %g s",
                                          chan_seconds(timeout_ms));
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
        r = chan_handshake(c, chan_deadline_of(timeout_ms), timeout_ms, err);
        if (r < 0)
                return r;
        *ret = TAKE_PTR(c);
        return 0;
}

