/* Readiness for service managers, end to end on the demo guest: systemd's notify protocol
 * ($NOTIFY_SOCKET: READY=1, STATUS=, STOPPING=1) and s6's --ready-fd. The listener is
 * the test's own datagram socket, as systemd's would be.
 *
 * "Ready only once the guest runs": when READY=1 arrives the test freezes vmsup
 * (SIGSTOP), finds QEMU and swtpm, and watches QEMU's vCPU thread: it must go on burning
 * CPU time with vmsup frozen, which it does only after vmsup's `cont` (QEMU starts with
 * -S). A READY=1 sent earlier in the start (before the children, or before vmsup has
 * checked QEMU's TPM) fails here; one sent between that check and `cont`, an instant,
 * cannot be told from outside from one sent after. */
#include "config.h"

#include <criterion/criterion.h>
#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "common/proc.h"
#include "common/util.h"
#include "tests/barbican_fixture.h"
#include "tests/guestfix.h"
#include "tests/helpers.h"

#define UUID "3e7a9c1b-5d2f-4a8e-9b6c-1f0d2e4a6c8b"

static char *root, *conf, *spec_path, *vmsup_log, *control_path;

static void setup(void) {
        root = test_mkdtemp();
        conf = test_write_conf(root, "vmsup.conf",
                               &(struct test_conf) { .root = root, .supervisor = "stop_timeout = 30\n",
                                                     .barbican_url = test_barbican_url(), .barbican = "retries = 1\n" });
        cr_assert(asprintf(&vmsup_log, "%s/vmsup.log", root) > 0);
        cr_assert(asprintf(&control_path, "%s/run/" UUID "/control.sock", root) > 0);
}

static void teardown(void) {
        test_root_cleanup(root);
        free(conf);
        free(spec_path);
        free(vmsup_log);
        free(control_path);
}

TestSuite(notify, .init = setup, .fini = teardown, .timeout = 300);

static void write_spec(bool hold) {
        free(spec_path);
        spec_path = test_write_spec(root, "guest.json",
                                    &(struct test_spec) { .uuid = UUID, .name = "notified", .guest_dir = TEST_GUEST_DIR,
                                                          .hold = hold });
}

/* The service manager's end: a datagram socket at addr ("/path" or "@abstract"). */
static int listen_notify(const char *addr) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        size_t l = strlen(addr);
        int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);

        cr_assert_geq(fd, 0);
        cr_assert_lt(l, sizeof(sa.sun_path));
        memcpy(sa.sun_path, addr, l);
        if (addr[0] == '@')
                sa.sun_path[0] = '\0';
        cr_assert_eq(bind(fd, (struct sockaddr *) &sa, (socklen_t) (offsetof(struct sockaddr_un, sun_path) + l)), 0,
                     "bind %s: %m", addr);
        return fd;
}

/* vmsup run with NOTIFY_SOCKET=notify_addr (NULL: unset), the owner's credential on fd 3
 * and, with ready_w >= 0, --ready-fd 4. */
static struct sup start(const char *notify_addr, int ready_w) {
        char *argv[] = { VMSUP_BIN, "--config", conf, "run", "--token-fd", "3", spec_path, NULL, NULL, NULL };
        char *pathvar = NULL, *notifyvar = NULL, *envp[] = { NULL, NULL, NULL };
        struct proc_fd_map fds[2];
        struct proc_spawn_opts o = { .argv = argv, .envp = envp, .stdin_fd = -1, .fds = fds, .n_fds = 1 };
        vmsup_error *err = NULL;
        int log = open(vmsup_log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600), token[2];
        struct sup s;

        cr_assert(asprintf(&pathvar, "PATH=%s", getenv("PATH")) > 0);
        envp[0] = pathvar;
        if (notify_addr) {
                cr_assert(asprintf(&notifyvar, "NOTIFY_SOCKET=%s", notify_addr) > 0);
                envp[1] = notifyvar;
        }
        cr_assert_eq(pipe2(token, O_CLOEXEC), 0);
        cr_assert_eq(write(token[1], "owner-project", 13), 13);
        close(token[1]);
        fds[0] = (struct proc_fd_map) { token[0], 3 };
        if (ready_w >= 0) {
                fds[1] = (struct proc_fd_map) { ready_w, 4 };
                o.n_fds = 2;
                argv[6] = "--ready-fd";
                argv[7] = "4";
                argv[8] = spec_path;
        }
        o.stdout_fd = o.stderr_fd = log;
        cr_assert_eq(proc_spawn(&o, &s.pid, &s.pidfd, &err), 0, "%s", err ? err->msg : "");
        close(token[0]);
        close(log);
        free(pathvar);
        free(notifyvar);
        return s;
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

/* A child of pid whose name starts with prefix; 0 when none. */
static pid_t child_named(pid_t pid, const char *prefix) {
        DIR *d = opendir("/proc");
        struct dirent *de;
        pid_t found = 0;

        cr_assert(d);
        while (!found && (de = readdir(d))) {
                char path[300], stat[1024];
                FILE *f;
                int ppid;
                char comm[64];

                if (de->d_name[0] < '1' || de->d_name[0] > '9')
                        continue;
                snprintf(path, sizeof(path), "/proc/%s/stat", de->d_name);
                f = fopen(path, "re");
                if (!f)
                        continue;
                /* pid (comm) state ppid: comm has no ')' in our children's names */
                if (fgets(stat, sizeof(stat), f) && sscanf(stat, "%*d (%63[^)]) %*c %d", comm, &ppid) == 2 &&
                    ppid == pid && strncmp(comm, prefix, strlen(prefix)) == 0)
                        found = atoi(de->d_name);
                fclose(f);
        }
        closedir(d);
        return found;
}

/* CPU time (clock ticks) of QEMU's first vCPU thread ("CPU 0/TCG": -name debug-threads=on). */
static long vcpu_ticks(pid_t qemu) {
        char dir[64];
        DIR *d;
        struct dirent *de;
        long ticks = -1;

        snprintf(dir, sizeof(dir), "/proc/%d/task", (int) qemu);
        d = opendir(dir);
        cr_assert(d, "QEMU (pid %d) is gone", (int) qemu);
        while (ticks < 0 && (de = readdir(d))) {
                char path[600], text[1024], *p;
                unsigned long ut, st;
                FILE *f;

                snprintf(path, sizeof(path), "%s/%s/stat", dir, de->d_name);
                f = fopen(path, "re");
                if (!f)
                        continue;
                if (fgets(text, sizeof(text), f) && strstr(text, "(CPU 0/") && (p = strrchr(text, ')')) &&
                    sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) == 2)
                        ticks = (long) (ut + st);
                fclose(f);
        }
        closedir(d);
        cr_assert_geq(ticks, 0, "QEMU (pid %d) has no vCPU thread named 'CPU 0/...'", (int) qemu);
        return ticks;
}

static bool environ_has(pid_t pid, const char *name) {
        char path[64], buf[65536];
        ssize_t n;
        int fd;

        snprintf(path, sizeof(path), "/proc/%d/environ", (int) pid);
        fd = open(path, O_RDONLY | O_CLOEXEC);
        cr_assert_geq(fd, 0, "%s: %m", path);
        n = read(fd, buf, sizeof(buf) - 1);
        close(fd);
        for (ssize_t i = 0; i < n; i += (ssize_t) strlen(buf + i) + 1)
                if (strncmp(buf + i, name, strlen(name)) == 0 && buf[i + strlen(name)] == '=')
                        return true;
        return false;
}

Test(notify, ready_only_once_the_guest_runs_then_stopping_on_sigterm) {
        char addr[512], msgs[16384] = "", before_ready[16384] = "", ready_line[2] = "";
        int nfd, ready[2];
        struct sup s;
        pid_t qemu, swtpm;
        long deadline, t0;
        json_object *st;
        ssize_t n;

        write_spec(true);
        snprintf(addr, sizeof(addr), "%s/notify.sock", root);
        nfd = listen_notify(addr);
        cr_assert_eq(pipe2(ready, O_CLOEXEC), 0);
        s = start(addr, ready[1]);
        close(ready[1]);

        /* until READY=1: nothing on the ready pipe, nothing that says READY */
        deadline = monotonic_ms() + 180000;
        while (!strstr(msgs, "READY=1")) {
                struct pollfd p[3] = { { .fd = nfd, .events = POLLIN }, { .fd = ready[0], .events = POLLIN },
                                       { .fd = s.pidfd, .events = POLLIN } };

                cr_assert_lt(monotonic_ms(), deadline, "no READY=1 (got: %s): %s", msgs, slurp(vmsup_log));
                cr_assert_geq(poll(p, 3, 1000), 0);
                drain(nfd, msgs, sizeof(msgs));
                if (strstr(msgs, "READY=1"))
                        break;
                cr_assert(!(p[1].revents & (POLLIN | POLLHUP)), "the ready fd spoke before READY=1 (got: %s)", msgs);
                cr_assert(!(p[2].revents & POLLIN), "vmsup exited before READY=1 (got: %s): %s", msgs, slurp(vmsup_log));
        }
        /* freeze vmsup where it said READY=1: the guest must run without it from here */
        cr_assert_eq(kill(s.pid, SIGSTOP), 0);
        qemu = child_named(s.pid, "qemu-system");
        swtpm = child_named(s.pid, "swtpm");
        cr_assert(qemu > 0 && swtpm > 0, "READY=1 with QEMU %d and swtpm %d (got: %s)", (int) qemu, (int) swtpm, msgs);
        t0 = vcpu_ticks(qemu);
        deadline = monotonic_ms() + 120000;
        while (vcpu_ticks(qemu) < t0 + 20) {
                cr_assert_lt(monotonic_ms(), deadline,
                             "READY=1 came, but QEMU's vCPU does not run (still paused, no cont?): got %s", msgs);
                usleep(100000);
        }
        /* QEMU and swtpm start with an empty environment: no NOTIFY_SOCKET of ours */
        cr_assert(!environ_has(qemu, "NOTIFY_SOCKET") && !environ_has(swtpm, "NOTIFY_SOCKET"));
        cr_assert_eq(kill(s.pid, SIGCONT), 0);

        snprintf(before_ready, sizeof(before_ready), "%.*s", (int) (strstr(msgs, "READY=1") - msgs), msgs);
        cr_assert(!strstr(before_ready, "READY"), "%s", msgs);
        cr_assert(strstr(before_ready, "STATUS=starting guest 'notified'"), "%s", msgs);
        cr_assert(strstr(msgs, "READY=1\nSTATUS=running|"), "%s", msgs);
        st = test_wait_running(&s, control_path, vmsup_log, 120000);
        json_object_put(st);
        /* the ready fd: one newline, then closed */
        n = read(ready[0], ready_line, 1);
        cr_assert_eq(n, 1, "the ready fd gave %zd bytes: %s", n, slurp(vmsup_log));
        cr_assert_eq(ready_line[0], '\n');
        cr_assert_eq(read(ready[0], ready_line, 1), 0, "the ready fd is not closed after its newline");
        close(ready[0]);

        /* systemd stops a unit with SIGTERM */
        msgs[0] = '\0';
        cr_assert_eq(kill(s.pid, SIGTERM), 0);
        cr_assert_eq(wait_exit(&s, 180000), 0, "%s", slurp(vmsup_log));
        drain(nfd, msgs, sizeof(msgs));
        cr_assert(strstr(msgs, "STOPPING=1\nSTATUS=stopping|"), "%s", msgs);
        cr_assert(!strstr(msgs, "READY"), "%s", msgs);
        close(nfd);
}

Test(notify, an_abstract_address_and_a_guest_that_powers_off) {
        char addr[128], msgs[16384] = "";
        int nfd;
        struct sup s;

        write_spec(false);
        snprintf(addr, sizeof(addr), "@vmsup-test-notify-%d-%ld", (int) getpid(), monotonic_ms());
        nfd = listen_notify(addr);
        s = start(addr, -1);
        cr_assert_eq(wait_exit(&s, 240000), 0, "%s", slurp(vmsup_log));
        drain(nfd, msgs, sizeof(msgs));
        /* in order: starting, ready, the guest's own power-off */
        cr_assert(strstr(msgs, "STATUS=starting guest 'notified'|"), "%s", msgs);
        cr_assert(strstr(msgs, "READY=1\nSTATUS=running|"), "%s", msgs);
        cr_assert(strstr(msgs, "STOPPING=1\nSTATUS=stopping (the guest powered off)|"), "%s", msgs);
        cr_assert(strstr(msgs, "STATUS=starting") < strstr(msgs, "READY=1") &&
                          strstr(msgs, "READY=1") < strstr(msgs, "STOPPING=1"),
                  "%s", msgs);
        close(nfd);
}

static void run_expect(const char *const *args, int code, const char *needle) {
        struct test_run r;

        test_run_vmsup(&r, NULL, args);
        cr_assert_eq(r.exit_code, code, "%s%s", r.out, r.err);
        cr_assert(strstr(r.err, needle), "wanted '%s' in: %s", needle, r.err);
        test_run_clear(&r);
}

Test(notify, a_bad_ready_fd_is_a_usage_error_naming_it) {
        write_spec(true);
        run_expect((const char *[]) { "--config", conf, "run", "--ready-fd", "x", spec_path, NULL }, 64,
                   "--ready-fd takes a file descriptor number, not 'x'");
        run_expect((const char *[]) { "--config", conf, "run", "--ready-fd", "4x", spec_path, NULL }, 64,
                   "--ready-fd takes a file descriptor number, not '4x'");
        run_expect((const char *[]) { "--config", conf, "run", "--ready-fd", "917", spec_path, NULL }, 64,
                   "--ready-fd 917: no such open file descriptor");
        run_expect((const char *[]) { "--config", conf, "run", "--ready-fd", "1", spec_path, NULL }, 64,
                   "--ready-fd 1: not stdin, stdout or stderr");
}

/* vmsup run with the environment NOTIFY_SOCKET=value: refused before anything starts. */
static void run_with_notify_socket(const char *value) {
        char *argv[] = { VMSUP_BIN, "--config", conf, "run", spec_path, NULL };
        char *var = NULL, *envp[] = { NULL, NULL };
        struct sup s;

        cr_assert(asprintf(&var, "NOTIFY_SOCKET=%s", value) > 0);
        envp[0] = var;
        s = test_spawn(argv, envp, vmsup_log, NULL);
        cr_assert_eq(wait_exit(&s, 60000), 78, "%s", slurp(vmsup_log));
        free(var);
}

Test(notify, a_notify_socket_that_is_no_unix_address_is_refused) {
        write_spec(true);
        run_with_notify_socket("vsock:2:1234");
        cr_assert(strstr(slurp(vmsup_log), "NOTIFY_SOCKET='vsock:2:1234' is not an AF_UNIX socket path"), "%s",
                  slurp(vmsup_log));
        cr_assert_eq(test_count_processes(root, false), 0);
        cr_assert(access(control_path, F_OK) < 0, "the guest was started");
}
