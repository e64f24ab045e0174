/* The migration channel inside (migrate/migchan.h is its API): what its two files share.
 * migchan_connect.c sets a channel up (listen, accept, connect, the TLS handshake, each
 * whole or one step at a time); migchan.c carries the frames on an open channel (send,
 * receive) and closes it. Only these two files include this header. */
#ifndef VMSUP_MIGRATE_MIGCHAN_INTERNAL_H
#define VMSUP_MIGRATE_MIGCHAN_INTERNAL_H

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <netdb.h>
#include <poll.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/util.h"
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

static inline long chan_deadline_of(int timeout_ms) {
        return timeout_ms < 0 ? -1 : monotonic_ms() + timeout_ms;
}

/* Milliseconds left for poll(): -1 without a deadline, 0 once it passed. */
static inline int chan_left_ms(long deadline) {
        long left;

        if (deadline < 0)
                return -1;
        left = deadline - monotonic_ms();
        return left <= 0 ? 0 : left > INT_MAX ? INT_MAX : (int) left;
}

/* poll() on fd for events and on cancel_fd (-1: none) for input: > 0 fd is ready, 0 the
 * time is up, -ECANCELED cancel_fd is readable, -errno on failure (-EINTR: try again). */
static inline int chan_poll_cancel(int fd, short events, int cancel_fd, int ms) {
        struct pollfd p[2] = { { .fd = fd, .events = events }, { .fd = cancel_fd, .events = POLLIN } };
        int n = poll(p, cancel_fd >= 0 ? 2 : 1, ms);

        if (n < 0)
                return -errno;
        if (n > 0 && cancel_fd >= 0 && p[1].revents)
                return -ECANCELED;
        return n;
}

static inline double chan_seconds(int timeout_ms) {
        return timeout_ms / 1000.0;
}

#endif
