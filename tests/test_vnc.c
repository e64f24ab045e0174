/* The graphical console ("graphics": {"type": "vnc"}) end to end: real QEMU (TCG), the
 * demo guest, and a real VNC client from Debian (gvnccapture, package gvncviewer) that
 * captures the guest's screen to a PNG. gvnccapture speaks TCP only: the test relays one
 * loopback connection to the guest's unix socket itself. */
#include "config.h"

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/proc.h"
#include "common/util.h"
#include "tests/guestfix.h"
#include "tests/helpers.h"

#define UUID "7d3e9c1a-4b2f-4e8d-a6c5-1f0b9e8d7c6a"
#define GVNCCAPTURE "/usr/bin/gvnccapture"
#define PYTHON "/usr/bin/python3"

/* QEMU runs as a uid of its own (as_nobody: the guest's own ids), which has no access to
 * the run dir: it gets every client as an fd. */
static char *root, *guest_dir, *conf, *spec_path, *console, *vmsup_log, *control_path, *vnc_path, *png;

static void setup(void) {
        root = test_mkdtemp();
        conf = test_write_conf(root, "vmsup.conf",
                               &(struct test_conf) { .root = root, .as_nobody = true,
                                                     .supervisor = "stop_timeout = 10\n" });
        cr_assert(asprintf(&console, "%s/log/" UUID "/console.log", root) > 0);
        cr_assert(asprintf(&vmsup_log, "%s/vmsup.log", root) > 0);
        cr_assert(asprintf(&control_path, "%s/run/" UUID "/control.sock", root) > 0);
        cr_assert(asprintf(&vnc_path, "%s/run/" UUID "/vnc.sock", root) > 0);
        cr_assert(asprintf(&png, "%s/screen.png", root) > 0);
        /* QEMU runs as its own uid: it must pass through the test's root to the log dir and
         * read the guest's kernel, wherever the build tree is (a 0700 clone, say) */
        cr_assert_eq(chmod(root, 0711), 0);
        cr_assert(asprintf(&guest_dir, "%s/guest", root) > 0);
        cr_assert_eq(mkdir(guest_dir, 0755), 0);
        test_copy_file(TEST_GUEST_DIR, guest_dir, "vmlinuz");
        test_copy_file(TEST_GUEST_DIR, guest_dir, "initrd.img");
}

static void teardown(void) {
        test_root_cleanup(root);
        free(guest_dir);
        free(conf);
        free(spec_path);
        free(console);
        free(vmsup_log);
        free(control_path);
        free(vnc_path);
        free(png);
}

TestSuite(vnc, .init = setup, .fini = teardown, .timeout = 400);

/* The demo guest without a vTPM (nothing here needs one), up until the power button;
 * the kernel writes to the screen (tty0) too, its last console (ttyS0) stays /dev/console. */
static void write_spec(const char *graphics) {
        char *firmware = NULL;

        cr_assert(asprintf(&firmware,
                           "{\"kernel\": \"%s/vmlinuz\", \"initrd\": \"%s/initrd.img\","
                           " \"cmdline\": \"console=tty0 console=ttyS0 tpmprobe.hold\"}",
                           guest_dir, guest_dir) > 0);
        free(spec_path);
        spec_path = test_write_spec(root, "guest.json",
                                    &(struct test_spec) { .uuid = UUID, .name = "vnc", .extra_specs = "",
                                                          .firmware = firmware, .graphics = graphics });
        free(firmware);
}

/* The first 12 bytes a client reads on the VNC socket: the server's protocol version. */
static void assert_rfb_greeting(void) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        char buf[13] = "";
        size_t got = 0;

        strcpy(sa.sun_path, vnc_path);
        cr_assert_eq(connect(fd, (struct sockaddr *) &sa, sizeof(sa)), 0, "connect %s: %m", vnc_path);
        while (got < 12) {
                struct pollfd p = { .fd = fd, .events = POLLIN };
                ssize_t n;

                cr_assert_eq(poll(&p, 1, 60000), 1, "no greeting on %s within 60 s (%zu bytes: '%s'):\n%s", vnc_path,
                             got, buf, slurp(vmsup_log));
                n = read(fd, buf + got, 12 - got);
                cr_assert_gt(n, 0, "the VNC socket closed after %zu bytes ('%s'):\n%s", got, buf, slurp(vmsup_log));
                got += (size_t) n;
        }
        cr_assert_str_eq(buf, "RFB 003.008\n");
        close(fd);
}

/* The socket: there, a socket, ours, 0600. Returns when it was made (its ctime: tmpfs
 * reuses the inode number of a socket removed just before). */
static struct timespec assert_socket(void) {
        struct stat st;

        cr_assert_eq(lstat(vnc_path, &st), 0, "%s: %m", vnc_path);
        cr_assert(S_ISSOCK(st.st_mode), "%s is not a socket", vnc_path);
        cr_assert_eq(st.st_mode & 07777, 0600, "%s has mode %o", vnc_path, st.st_mode & 07777);
        cr_assert_eq(st.st_uid, geteuid());
        return st.st_ctim;
}

/* Relay one connection on a loopback port (returned) to the VNC socket, in a child. */
static pid_t relay_start(int *ret_port) {
        struct sockaddr_in in = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        socklen_t len = sizeof(in);
        int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        pid_t pid;

        cr_assert_geq(lfd, 0);
        cr_assert_eq(bind(lfd, (struct sockaddr *) &in, sizeof(in)), 0, "%m");
        cr_assert_eq(listen(lfd, 1), 0);
        cr_assert_eq(getsockname(lfd, (struct sockaddr *) &in, &len), 0);
        *ret_port = ntohs(in.sin_port);
        pid = fork();
        cr_assert_geq(pid, 0);
        if (pid == 0) {
                struct sockaddr_un sa = { .sun_family = AF_UNIX };
                int tcp = accept4(lfd, NULL, NULL, SOCK_CLOEXEC), ux = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
                char buf[65536];

                strcpy(sa.sun_path, vnc_path);
                if (tcp < 0 || ux < 0 || connect(ux, (struct sockaddr *) &sa, sizeof(sa)) < 0)
                        _exit(1);
                for (;;) {
                        struct pollfd p[2] = { { tcp, POLLIN, 0 }, { ux, POLLIN, 0 } };

                        if (poll(p, 2, 120000) <= 0)
                                _exit(2);
                        for (int i = 0; i < 2; i++) {
                                ssize_t n;

                                if (!p[i].revents)
                                        continue;
                                n = read(p[i].fd, buf, sizeof(buf));
                                if (n <= 0)
                                        _exit(0);
                                for (ssize_t off = 0; off < n;) {
                                        ssize_t w = write(p[1 - i].fd, buf + off, (size_t) (n - off));

                                        if (w <= 0)
                                                _exit(0);
                                        off += w;
                                }
                        }
                }
        }
        close(lfd);
        return pid;
}

static void run_tool(char **argv, struct proc_result *res) {
        char *envp[] = { "PATH=/usr/bin:/bin", "HOME=/", NULL };
        vmsup_error *err = NULL;

        if (proc_run_capture(argv, envp, 120000, 1 << 20, res, &err) < 0)
                cr_assert_fail("%s: %s", argv[0], err->msg);
}

/* gvnccapture saves the guest's screen as a PNG; Pillow counts its colours. */
static void assert_screen_not_blank(void) {
        char addr[64], port_s[16];
        char *capture[] = { GVNCCAPTURE, "--quiet", addr, png, NULL };
        char *count[] = { PYTHON, "-c",
                          "import sys; from PIL import Image; im = Image.open(sys.argv[1]).convert('RGB');"
                          " print(im.size[0], im.size[1], len(im.getcolors(1 << 24)))",
                          png, NULL };
        struct proc_result res = { 0 };
        unsigned w = 0, h = 0, colours = 0;
        int port, status;
        pid_t relay;

        cr_assert_eq(access(GVNCCAPTURE, X_OK), 0, GVNCCAPTURE " is missing: install the Debian package gvncviewer");
        cr_assert_eq(access(PYTHON, X_OK), 0, PYTHON " is missing: install the Debian package python3-pil");
        relay = relay_start(&port);
        snprintf(port_s, sizeof(port_s), "%d", port);
        /* gvnccapture's HOST:DISPLAY is port 5900 + DISPLAY */
        snprintf(addr, sizeof(addr), "127.0.0.1:%d", port - 5900);
        run_tool(capture, &res);
        cr_assert(WIFEXITED(res.status) && WEXITSTATUS(res.status) == 0, "gvnccapture failed: %s%s\n--- vmsup:\n%s",
                  res.out, res.errout, slurp(vmsup_log));
        proc_result_clear(&res);
        waitpid(relay, &status, 0);

        run_tool(count, &res);
        cr_assert(WIFEXITED(res.status) && WEXITSTATUS(res.status) == 0,
                  "reading %s failed (the Debian package python3-pil?): %s%s", png, res.out, res.errout);
        cr_assert_eq(sscanf(res.out, "%u %u %u", &w, &h, &colours), 3, "%s", res.out);
        proc_result_clear(&res);
        cr_assert(w >= 640 && h >= 400, "a %ux%u screen", w, h);
        cr_assert_gt(colours, 1, "the captured screen (%s, %ux%u) is blank: one colour", png, w, h);
}

Test(vnc, the_socket_answers_rfb_shows_the_screen_and_lives_as_long_as_qemu) {
        char *argv[] = { VMSUP_BIN, "--config", conf, "run", spec_path, NULL };
        json_object *st, *v, *req, *ret;
        vmsup_error *err = NULL;
        struct test_run r = { 0 };
        struct sup s;
        struct timespec made, remade;

        write_spec("{\"type\": \"vnc\"}");
        argv[4] = spec_path;
        s = test_spawn(argv, NULL, vmsup_log, NULL);
        st = test_wait_running(&s, control_path, vmsup_log, 120000);
        cr_assert(json_object_object_get_ex(st, "vnc_socket", &v) && v, "no vnc_socket: %s",
                  json_object_to_json_string(st));
        cr_assert_str_eq(json_object_get_string(v), vnc_path);
        json_object_put(st);
        made = assert_socket();

        /* the plain status shows it too */
        test_run_vmsup(&r, NULL, (const char *[]) { "--config", conf, "status", UUID, NULL });
        cr_assert_eq(r.exit_code, 0, "%s%s", r.out, r.err);
        cr_assert(strstr(r.out, "vnc socket:") && strstr(r.out, vnc_path), "%s", r.out);
        test_run_clear(&r);

        /* QEMU's VNC server listens nowhere itself: no TCP port, ever */
        req = json_object_new_object();
        json_object_object_add(req, "command", json_object_new_string("query-vnc"));
        ret = test_control(control_path, "qmp", req, &err);
        cr_assert_not_null(ret, "%s", err ? err->msg : "");
        cr_assert(json_object_object_get_ex(ret, "enabled", &v) && !json_object_get_boolean(v), "query-vnc: %s",
                  json_object_to_json_string(ret));
        cr_assert_null(strstr(json_object_to_json_string(ret), "service"), "%s", json_object_to_json_string(ret));
        json_object_put(ret);

        assert_rfb_greeting();
        free(test_wait_console(console, vmsup_log, "init: holding until the power button", 1, 120000));
        assert_screen_not_blank();

        /* a hard reboot: QEMU anew, and a socket of its own */
        req = json_object_new_object();
        json_object_object_add(req, "hard", json_object_new_boolean(1));
        ret = test_control(control_path, "reboot", req, &err);
        cr_assert_not_null(ret, "%s", err ? err->msg : "");
        json_object_put(ret);
        json_object_put(test_wait_running(&s, control_path, vmsup_log, 120000));
        remade = assert_socket();
        cr_assert(remade.tv_sec != made.tv_sec || remade.tv_nsec != made.tv_nsec,
                  "the socket was not made again for the new QEMU");
        assert_rfb_greeting();

        /* the socket does not outlive the guest */
        ret = test_control(control_path, "stop", NULL, &err);
        cr_assert_not_null(ret, "%s", err ? err->msg : "");
        json_object_put(ret);
        cr_assert_eq(wait_exit(&s, 120000), 0, "%s", slurp(vmsup_log));
        cr_assert_neq(access(vnc_path, F_OK), 0, "%s is still there after the stop", vnc_path);
}

Test(vnc, without_graphics_there_is_no_socket) {
        char *argv[] = { VMSUP_BIN, "--config", conf, "run", NULL, NULL };
        json_object *st, *v;
        vmsup_error *err = NULL;
        json_object *ret;
        struct sup s;

        write_spec(NULL);
        argv[4] = spec_path;
        s = test_spawn(argv, NULL, vmsup_log, NULL);
        st = test_wait_running(&s, control_path, vmsup_log, 120000);
        cr_assert(!json_object_object_get_ex(st, "vnc_socket", &v), "%s", json_object_to_json_string(st));
        json_object_put(st);
        cr_assert_neq(access(vnc_path, F_OK), 0, "%s exists for a guest without graphics", vnc_path);
        free(test_wait_console(console, vmsup_log, "init: holding until the power button", 1, 120000));
        ret = test_control(control_path, "stop", NULL, &err);
        cr_assert_not_null(ret, "%s", err ? err->msg : "");
        json_object_put(ret);
        cr_assert_eq(wait_exit(&s, 120000), 0, "%s", slurp(vmsup_log));
}

Test(vnc, a_bad_graphics_key_is_refused_with_65_naming_it) {
        static const struct {
                const char *graphics, *want;
        } cases[] = {
                { "{\"type\": \"spice\"}", "key 'graphics.type': must be vnc" },
                { "{\"type\": \"vnc\", \"listen\": \"0.0.0.0\"}", "key 'graphics.listen': unknown key" },
                { "\"vnc\"", "key 'graphics': must be an object" },
        };
        struct test_run r = { 0 };
        char run_dir[600];

        snprintf(run_dir, sizeof(run_dir), "%s/run/" UUID, root);
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                write_spec(cases[i].graphics);
                test_run_vmsup(&r, NULL, (const char *[]) { "--config", conf, "run", spec_path, NULL });
                cr_assert_eq(r.exit_code, 65, "%s: exit %d: %s", cases[i].graphics, r.exit_code, r.err);
                cr_assert(strstr(r.err, cases[i].want), "%s: '%s' lacks '%s'", cases[i].graphics, r.err, cases[i].want);
                test_run_clear(&r);
                cr_assert_neq(access(run_dir, F_OK), 0, "a refused spec made %s", run_dir);
                test_run_vmsup(&r, NULL, (const char *[]) { "--config", conf, "validate", spec_path, NULL });
                cr_assert_eq(r.exit_code, 65, "validate %s: exit %d: %s", cases[i].graphics, r.exit_code, r.err);
                cr_assert(strstr(r.err, cases[i].want), "validate: '%s' lacks '%s'", r.err, cases[i].want);
                test_run_clear(&r);
        }
}
