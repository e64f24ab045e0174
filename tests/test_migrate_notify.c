/* Readiness across a live migration (docs/systemd.md): the destination's supervisor
 * (`run --incoming`, as a Type=notify unit would start it) says READY=1 only once the
 * received guest runs there, never while it waits for the source; the source's says how
 * far the migration is (STATUS=migrating ... N%) and STOPPING=1 when the guest has gone.
 * The listeners are the test's datagram sockets, reached by path across the hosts'
 * network namespaces. */
#include "config.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "common/util.h"
#include "tests/helpers.h"
#include "tests/twohostfix.h"

TestSuite(migrate_notify, .init = th_setup, .fini = th_teardown, .timeout = 600);

static int listen_notify(const char *path) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);

        cr_assert_geq(fd, 0);
        cr_assert_lt(strlen(path), sizeof(sa.sun_path));
        strcpy(sa.sun_path, path);
        cr_assert_eq(bind(fd, (struct sockaddr *) &sa, sizeof(sa)), 0, "bind %s: %m", path);
        return fd;
}

/* Every datagram waiting on fd, appended to log (each followed by "|"). */
static void drain(int fd, char *log, size_t size) {
        char buf[4096];
        ssize_t n;

        while ((n = recv(fd, buf, sizeof(buf) - 1, 0)) > 0) {
                buf[n] = '\0';
                snprintf(log + strlen(log), size - strlen(log), "%s|", buf);
        }
}

Test(migrate_notify, the_destination_is_ready_once_the_guest_runs_there) {
        char a_path[512], b_path[512], a_msgs[65536] = "", b_msgs[16384] = "";
        int a_fd, b_fd;
        pid_t sup[2];

        snprintf(a_path, sizeof(a_path), "%s/notify-a.sock", th_root);
        snprintf(b_path, sizeof(b_path), "%s/notify-b.sock", th_root);
        a_fd = listen_notify(a_path);
        b_fd = listen_notify(b_path);

        /* th_start()'s children inherit the test's environment */
        setenv("NOTIFY_SOCKET", a_path, 1);
        sup[0] = th_boot_on_a();
        setenv("NOTIFY_SOCKET", b_path, 1);
        sup[1] = th_incoming(1, "in-b");
        unsetenv("NOTIFY_SOCKET");

        drain(a_fd, a_msgs, sizeof(a_msgs));
        cr_assert(strstr(a_msgs, "READY=1\nSTATUS=running|"), "%s", a_msgs);
        /* waiting for the source is not ready */
        drain(b_fd, b_msgs, sizeof(b_msgs));
        cr_assert(strstr(b_msgs, "STATUS=incoming: waiting for guest 'demo' from the source on port 49152|"), "%s\n%s",
                  b_msgs, th_logs());
        cr_assert(!strstr(b_msgs, "READY"), "%s", b_msgs);

        th_step = "migrate";
        cr_assert_eq(th_migrate(0, "mig"), 0, "%s\n%s", th_err("mig"), th_logs());
        th_reap(sup[0], 0);
        th_assert_running(1);

        drain(b_fd, b_msgs, sizeof(b_msgs));
        cr_assert(strstr(b_msgs, "READY=1\nSTATUS=running|"), "%s\n%s", b_msgs, th_logs());
        cr_assert_eq(th_count(b_msgs, "READY=1"), 1, "%s", b_msgs);
        drain(a_fd, a_msgs, sizeof(a_msgs));
        cr_assert(strstr(a_msgs, "STATUS=migrating to ") && strstr(a_msgs, "%|"), "%s", a_msgs);
        cr_assert(strstr(a_msgs, "STOPPING=1\nSTATUS=migrated: the guest runs on the destination|"), "%s", a_msgs);

        /* a stop of the received guest: STOPPING=1 from b */
        {
                const char *stop[] = { "stop", UUID, NULL };

                th_step = "stop on b";
                cr_assert_eq(th_run(1, "stop", stop), 0, "%s", th_err("stop"));
                th_reap(sup[1], 0);
        }
        drain(b_fd, b_msgs, sizeof(b_msgs));
        cr_assert(strstr(b_msgs, "STOPPING=1\nSTATUS=stopping|"), "%s", b_msgs);
        close(a_fd);
        close(b_fd);
}
