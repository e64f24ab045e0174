#include "config.h"

/* systemd's notify protocol, implemented here rather than by linking libsystemd: it is
 * sd_notify(3)'s documented wire format (systemd's "Reimplementable" interfaces, and the
 * reference code in sd_notify(3) itself): one AF_UNIX datagram of newline-separated
 * VAR=VALUE assignments to the path or abstract address in $NOTIFY_SOCKET. That is about
 * 60 lines, against a new run-time and build dependency on a library of a much larger
 * project for one call, in a supervisor whose every loaded library is part of the
 * attack surface under its seccomp filter. The kernel attaches our credentials: systemd's
 * end sets SO_PASSCRED itself. vsock addresses (a guest's service manager talking to its
 * host) are not ours to need and are refused. */

#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "common/notify.h"
#include "common/util.h"

struct notify_socket {
        int fd;
        struct sockaddr_un sa;
        socklen_t len;
        char address[sizeof(((struct sockaddr_un *) 0)->sun_path) + 1];
};

int notify_socket_from_env(struct notify_socket **ret, vmsup_error **err) {
        const char *e = getenv("NOTIFY_SOCKET");
        _cleanup_free_ char *value = e ? strdup(e) : NULL;
        _cleanup_free_ struct notify_socket *n = NULL;
        size_t l;

        *ret = NULL;
        if (!e)
                return 0;
        /* QEMU and swtpm start with an empty environment; any other child must not be
         * able to tell our service manager it is ready either */
        unsetenv("NOTIFY_SOCKET");
        if (!value)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "NOTIFY_SOCKET");
        l = strlen(value);
        if ((value[0] != '/' && value[0] != '@') || l < 2 || l > sizeof(n->sa.sun_path))
                return vmsup_fail(err, VMSUP_ERR_CONFIG, 0,
                                  "NOTIFY_SOCKET='%s' is not an AF_UNIX socket path ('/...') or abstract address "
                                  "('@...') of at most %zu bytes",
                                  value, sizeof(n->sa.sun_path));
        n = calloc(1, sizeof(*n));
        if (!n)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "NOTIFY_SOCKET");
        n->sa.sun_family = AF_UNIX;
        memcpy(n->sa.sun_path, value, l);
        if (value[0] == '@')
                n->sa.sun_path[0] = '\0';
        /* an abstract address is exactly its bytes (no NUL at its end) */
        n->len = (socklen_t) (offsetof(struct sockaddr_un, sun_path) + l);
        memcpy(n->address, value, l + 1);
        /* non-blocking: a service manager that does not read never holds the loop */
        n->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (n->fd < 0)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, errno, "NOTIFY_SOCKET: socket");
        *ret = TAKE_PTR(n);
        return 0;
}

int notify_socket_send(struct notify_socket *n, const char *assignments, vmsup_error **err) {
        ssize_t r;

        if (!n)
                return 0;
        do
                r = sendto(n->fd, assignments, strlen(assignments), MSG_NOSIGNAL, (struct sockaddr *) &n->sa, n->len);
        while (r < 0 && errno == EINTR);
        if (r < 0)
                return vmsup_fail(err, errno == EAGAIN ? VMSUP_ERR_BUSY : VMSUP_ERR_IO, errno,
                                  "tell the service manager at NOTIFY_SOCKET='%s' '%s'", n->address, assignments);
        return 0;
}

const char *notify_socket_address(const struct notify_socket *n) {
        return n ? n->address : "";
}

struct notify_socket *notify_socket_free(struct notify_socket *n) {
        if (n) {
                closep(&n->fd);
                free(n);
        }
        return NULL;
}

int notify_ready_fd_check(int fd) {
        int fl = fd >= 0 ? fcntl(fd, F_GETFL) : -1;

        if (fl < 0)
                return -EBADF;
        if ((fl & O_ACCMODE) == O_RDONLY)
                return -EACCES;
        return 0;
}

int notify_ready_fd_signal(int fd, vmsup_error **err) {
        ssize_t r;

        do
                r = write(fd, "\n", 1);
        while (r < 0 && errno == EINTR);
        if (r != 1) {
                int e = r < 0 ? errno : EIO;

                close(fd);
                return vmsup_fail(err, VMSUP_ERR_IO, e, "write the readiness newline to --ready-fd %d", fd);
        }
        close(fd);
        return 0;
}
