#include "config.h"

/* The guest's graphical console ("graphics": {"type": "vnc"}): a unix socket in its run
 * dir, <run>/vnc.sock, that the supervisor listens on; each client it accepts goes to
 * QEMU's VNC server (QMP getfd, then add_client), which itself listens nowhere
 * (-vnc none, supervisor/qemuargs.c).
 *
 * Why not QEMU's own -vnc unix:PATH: QEMU would create the socket as QEMU's user, so the
 * run dir (ours, 0711) would have to become writable by that user, and the socket's mode
 * would come from QEMU's umask and need a chmod after QEMU bound it (a window with wider
 * access); QEMU killed with SIGKILL leaves its socket file behind. Here the socket is born
 * 0600 and ours (umask at bind, as the control socket), QEMU gets no new file access, its
 * -sandbox needs nothing new (it receives fds on its monitor already: spawn=deny stays),
 * no TCP listener can exist (query-vnc says "enabled": false), and the socket lives
 * exactly as long as QEMU's monitor: made at each launch (a hard reboot's too, and a
 * migration's destination makes its own), removed when QEMU goes. */

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "common/log.h"
#include "common/util.h"
#include "qmp/client.h"

#include "supervisor/guest_internal.h"

/* Clients accepted in one wake-up of the loop; more wait for the next round. */
#define VNC_ACCEPT_BATCH 8

static int vnc_listen(const char *path, vmsup_error **err) {
        _cleanup_close_ int fd = -1;
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        mode_t old;
        int r;

        if (strlen(path) >= sizeof(sa.sun_path))
                return vmsup_fail(err, VMSUP_ERR_CONFIG, ENAMETOOLONG,
                                  "VNC socket path '%s' is longer than %zu bytes: choose a shorter [paths] run_dir",
                                  path, sizeof(sa.sun_path) - 1);
        strcpy(sa.sun_path, path);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, errno, "VNC socket");
        /* we hold the guest's lock: a socket file there is a leftover of a dead supervisor */
        if (unlink(path) < 0 && errno != ENOENT)
                return vmsup_fail(err, VMSUP_ERR_IO, errno, "remove stale VNC socket '%s'", path);
        old = umask(0177); /* born 0600: no window with wider access */
        r = bind(fd, (struct sockaddr *) &sa, sizeof(sa));
        umask(old);
        if (r < 0)
                return vmsup_fail(err, VMSUP_ERR_CANT_CREATE, errno, "bind VNC socket '%s'", path);
        if (listen(fd, 16) < 0)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, errno, "listen on '%s'", path);
        return TAKE_FD(fd);
}

/* One name for every client: commands run in the order they were queued, so each
 * add_client takes the fd the getfd just before it gave; an fd a failed add_client left
 * is closed by QEMU when the next getfd replaces it, or by our closefd. */
#define VNC_FDNAME "vmsup-vnc"

static void on_getfd_reply(void *userdata, json_object *ret, const vmsup_error *err) {
        (void) userdata;
        (void) ret;
        if (err) /* add_client fails next and says so */
                log_debug("VNC client: getfd: %s", err->msg);
}

static void on_closefd_reply(void *userdata, json_object *ret, const vmsup_error *err) {
        (void) userdata;
        (void) ret;
        (void) err; /* taken already, or QEMU is going: nothing more to do */
}

static void on_add_client_reply(void *userdata, json_object *ret, const vmsup_error *err) {
        struct guest *g = userdata;
        vmsup_error *e = NULL;
        json_object *args;

        (void) ret;
        if (!err) {
                log_debug("a VNC client was handed to QEMU");
                return;
        }
        log_warning("a VNC client could not be handed to QEMU: %s", err->msg);
        /* QEMU keeps the fd getfd gave it until something takes it: the client would wait
         * for a greeting until the next client came */
        if (!g->qmp)
                return;
        args = json_object_new_object();
        json_object_object_add(args, "fdname", json_object_new_string(VNC_FDNAME));
        if (qmp_client_execute_async(g->qmp, "closefd", args, -1, QMP_COMMAND_TIMEOUT, on_closefd_reply, NULL, &e) < 0)
                vmsup_error_free(e);
        json_object_put(args);
}

/* Give QEMU the client's fd and tell its VNC server to serve it. Takes fd. The socket's
 * mode (0600: root or our user) is the client's authentication: skipauth. */
static void hand_to_qemu(struct guest *g, int fd) {
        _cleanup_close_ int cfd = fd;
        json_object *args;
        vmsup_error *err = NULL;
        int r;

        if (!g->qmp)
                return;
        args = json_object_new_object();
        json_object_object_add(args, "fdname", json_object_new_string(VNC_FDNAME));
        /* the QMP client queues a copy of the fd with the command: ours closes here */
        r = qmp_client_execute_async(g->qmp, "getfd", args, cfd, QMP_COMMAND_TIMEOUT, on_getfd_reply, NULL, &err);
        json_object_put(args);
        if (r < 0) {
                log_warning("a VNC client could not be handed to QEMU: getfd: %s", err->msg);
                vmsup_error_free(err);
                return;
        }
        args = json_object_new_object();
        json_object_object_add(args, "protocol", json_object_new_string("vnc"));
        json_object_object_add(args, "fdname", json_object_new_string(VNC_FDNAME));
        json_object_object_add(args, "skipauth", json_object_new_boolean(1));
        r = qmp_client_execute_async(g->qmp, "add_client", args, -1, QMP_COMMAND_TIMEOUT, on_add_client_reply, g,
                                     &err);
        json_object_put(args);
        if (r < 0) {
                log_warning("a VNC client could not be handed to QEMU: add_client: %s", err->msg);
                vmsup_error_free(err);
        }
}

/* Only root or our own user: the socket is 0600 already; this is the second lock. */
static bool peer_allowed(int fd) {
        struct ucred cred;
        socklen_t len = sizeof(cred);

        return getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0 && (cred.uid == 0 || cred.uid == geteuid());
}

static void on_vnc_listen(struct evloop_source *s, int fd, uint32_t revents, void *userdata) {
        struct guest *g = userdata;

        (void) s;
        (void) revents;
        for (int i = 0; i < VNC_ACCEPT_BATCH; i++) {
                int cfd = accept4(fd, NULL, NULL, SOCK_CLOEXEC);

                if (cfd < 0 && (errno == EMFILE || errno == ENFILE)) {
                        /* the listen fd stays readable (level-triggered): take the client
                         * with an fd from the reserve and let it go, or the loop would spin */
                        log_warning("a VNC client was refused: no file descriptor free (%s)", strerror(errno));
                        guest_fd_reserve_release(g);
                        cfd = accept4(fd, NULL, NULL, SOCK_CLOEXEC);
                        if (cfd >= 0)
                                close(cfd);
                        guest_fd_reserve_fill(g);
                        break;
                }
                if (cfd < 0)
                        break; /* EAGAIN: no more; ECONNABORTED and the like: the client left */
                if (!peer_allowed(cfd)) {
                        close(cfd);
                        continue;
                }
                hand_to_qemu(g, cfd);
        }
        guest_qmp_watch(g); /* what hand_to_qemu() queued goes out */
}

int guest_vnc_open(struct guest *g, vmsup_error **err) {
        int fd, r;

        if (!g->spec.graphics || !streq(g->spec.graphics, "vnc") || g->vnc_src)
                return 0;
        fd = vnc_listen(g->dirs.vnc_socket, err);
        if (fd < 0)
                return fd;
        r = evloop_add_io(g->loop, fd, EPOLLIN, on_vnc_listen, g, &g->vnc_src, err);
        if (r < 0) {
                close(fd);
                unlink(g->dirs.vnc_socket);
                return vmsup_error_prefix(err, "watch the VNC socket");
        }
        g->vnc_fd = fd;
        log_debug("graphical console: VNC on %s", g->dirs.vnc_socket);
        return 0;
}

void guest_vnc_close(struct guest *g) {
        if (!g->vnc_src)
                return;
        g->vnc_src = evloop_source_remove(g->vnc_src);
        close(g->vnc_fd);
        g->vnc_fd = -1;
        if (unlink(g->dirs.vnc_socket) < 0 && errno != ENOENT)
                log_warning("remove VNC socket '%s': %s", g->dirs.vnc_socket, strerror(errno));
}
