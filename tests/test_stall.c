/* A stalled child under a real supervisor: real QEMU (TCG) or swtpm stopped with SIGSTOP,
 * the demo guest from tests/guest. Whatever a child does, `vmsup status` tells the truth,
 * a stop ends the guest within a bound and says how, and nothing is left running. */
#include "config.h"

#include <criterion/criterion.h>
#include <fcntl.h>
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
#include "supervisor/control.h"
#include "tests/barbican_fixture.h"
#include "tests/guestfix.h"
#include "tests/helpers.h"

#define UUID "7d1e5b3a-9c2f-4a6e-8b0d-3f5a7c9e1b2d"
/* more status calls than QEMU can answer while it is stopped, and more than 64 */
#define N_STATUS 80   /* more than the 64 late ids the QMP client used to remember */
#define STATUS_WAVE 40 /* below the supervisor's 64 control connections */

static char *root, *conf, *spec_path, *console, *vmsup_log, *control_path;

static void setup(void) {
        root = test_mkdtemp();
        conf = test_write_conf(root, "vmsup.conf",
                               &(struct test_conf) { .root = root, .supervisor = "stop_timeout = 3\n",
                                                     .barbican_url = test_barbican_url(), .barbican = "retries = 1\n" });
        cr_assert(asprintf(&console, "%s/log/" UUID "/console.log", root) > 0);
        cr_assert(asprintf(&vmsup_log, "%s/vmsup.log", root) > 0);
        cr_assert(asprintf(&control_path, "%s/run/" UUID "/control.sock", root) > 0);
}

static void teardown(void) {
        /* a stopped child of a failed test: SIGKILL works on it too */
        test_root_cleanup(root);
        free(conf);
        free(spec_path);
        free(console);
        free(vmsup_log);
        free(control_path);
}

TestSuite(stall, .init = setup, .fini = teardown, .timeout = 400);

static void write_spec(bool hold) {
        free(spec_path);
        spec_path = test_write_spec(root, "guest.json",
                                    &(struct test_spec) { .uuid = UUID, .name = "stall", .guest_dir = TEST_GUEST_DIR,
                                                          .hold = hold });
}

static struct sup start(void) {
        char *argv[] = { VMSUP_BIN, "--config", conf, "run", "--token-fd", "3", spec_path, NULL };

        return test_spawn(argv, NULL, vmsup_log, "project-of-the-owner");
}

static json_object *control(const char *cmd, vmsup_error **err) {
        return test_control(control_path, cmd, NULL, err);
}

static const char *str(json_object *o, const char *key) {
        json_object *v;

        return o && json_object_object_get_ex(o, key, &v) && v ? json_object_get_string(v) : "";
}

static void wait_running(struct sup *s) {
        json_object_put(test_wait_running(s, control_path, vmsup_log, 120000));
}

static pid_t status_pid(const char *key) {
        vmsup_error *err = NULL;
        json_object *st = control("status", &err);
        pid_t pid = (pid_t) atoi(str(st, key));

        cr_assert_not_null(st, "%s", err ? err->msg : "");
        cr_assert_gt(pid, 0);
        json_object_put(st);
        return pid;
}

/* The console once it shows `count` lines containing needle. */
static char *wait_console(const char *needle, int count, int timeout_ms) {
        return test_wait_console(console, vmsup_log, needle, count, timeout_ms);
}

/* Wait until vmsup's log holds needle. */
static void wait_log(const char *needle, int timeout_ms) {
        long deadline = monotonic_ms() + timeout_ms;

        while (!strstr(slurp(vmsup_log), needle)) {
                if (monotonic_ms() > deadline)
                        cr_assert_fail("vmsup's log lacks '%s' after %d ms:\n%s", needle, timeout_ms, slurp(vmsup_log));
                usleep(50000);
        }
}

/* Run the vmsup CLI with a bound (a CLI that waits forever fails the test, it does not hang
 * it); returns the exit code, -1 when it had to be killed. */
static int cli(struct proc_result *res, int timeout_ms, const char *const *args) {
        char *argv[16] = { VMSUP_BIN, "--config", conf };
        vmsup_error *err = NULL;
        size_t n = 3;

        for (; *args && n < 15; args++)
                argv[n++] = (char *) *args;
        argv[n] = NULL;
        memset(res, 0, sizeof(*res));
        if (proc_run_capture(argv, NULL, timeout_ms, 1 << 16, res, &err) < 0) {
                cr_log_error("vmsup %s: %s", argv[3], err->msg);
                vmsup_error_free(err);
                return -1;
        }
        return WIFEXITED(res->status) ? WEXITSTATUS(res->status) : -1;
}

/* N_STATUS status requests, in waves of STATUS_WAVE at once (within the supervisor's
 * cap on control connections); returns how many said QEMU was not answering. Each wave
 * waits out its QMP timeouts, so all N_STATUS query-status commands time out. */
static int status_storm(void) {
        char path[512];
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        int fds[STATUS_WAVE], not_answering = 0;

        snprintf(path, sizeof(path), "%s/run/" UUID "/control.sock", root);
        cr_assert_lt(strlen(path), sizeof(sa.sun_path));
        memcpy(sa.sun_path, path, strlen(path) + 1);
        for (int wave = 0; wave < N_STATUS / STATUS_WAVE; wave++) {
                for (int i = 0; i < STATUS_WAVE; i++) {
                        static const char req[] = "{\"cmd\": \"status\"}\n";

                        fds[i] = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
                        cr_assert_geq(fds[i], 0);
                        cr_assert_eq(connect(fds[i], (struct sockaddr *) &sa, sizeof(sa)), 0, "connect %s: %m", path);
                        cr_assert_eq(write(fds[i], req, sizeof(req) - 1), (ssize_t) sizeof(req) - 1);
                }
                for (int i = 0; i < STATUS_WAVE; i++) {
                        static char buf[65536];
                        size_t len = 0;
                        ssize_t n;
                        struct pollfd p = { .fd = fds[i], .events = POLLIN };

                        while (len < sizeof(buf) - 1) {
                                cr_assert_eq(poll(&p, 1, 60000), 1, "status call %d got no answer", i);
                                n = read(fds[i], buf + len, sizeof(buf) - 1 - len);
                                cr_assert_geq(n, 0, "status call %d: %m", i);
                                if (n == 0)
                                        break;
                                len += (size_t) n;
                        }
                        buf[len] = '\0';
                        if (strstr(buf, "\"qemu_status\":\"not answering\""))
                                not_answering++;
                        close(fds[i]);
                }
        }
        return not_answering;
}

static void assert_clean(void) {
        char path[512];
        struct stat st;

        cr_assert_eq(test_count_processes(root, false), 0, "vmsup, swtpm or QEMU processes of the test remain");
        cr_assert_null(strstr(slurp(vmsup_log), "Sanitizer"), "%s", slurp(vmsup_log));
        cr_assert_null(strstr(slurp(vmsup_log), "runtime error:"), "%s", slurp(vmsup_log));
        snprintf(path, sizeof(path), "%s/run/" UUID "/control.sock", root);
        cr_assert_neq(stat(path, &st), 0, "the control socket was left behind");
}

/* The demo guest booted and holding (its probe done), under a supervisor. */
static struct sup boot(void) {
        struct sup s;

        write_spec(true);
        s = start();
        wait_running(&s);
        free(wait_console("tpmprobe: done", 1, 120000));
        return s;
}

/* QEMU stops answering (SIGSTOP) while more status calls come than the QMP client used to
 * remember late ids for; when it resumes, its late replies must not cost the supervisor
 * its QMP connection. */
Test(stall, late_replies_after_a_stall_keep_qmp) {
        struct proc_result r;
        struct sup s;
        pid_t qemu;
        int code;

        s = boot();
        qemu = status_pid("qemu_pid");

        cr_assert_eq(kill(qemu, SIGSTOP), 0);
        cr_assert_eq(status_storm(), N_STATUS, "%s", slurp(vmsup_log));
        cr_assert_eq(kill(qemu, SIGCONT), 0);

        /* QMP still drives QEMU: a command after the late replies is answered */
        code = cli(&r, 60000, (const char *[]) { "qmp", UUID, "query-status", NULL });
        cr_assert_eq(code, 0, "%s\n--- vmsup:\n%s", r.errout, slurp(vmsup_log));
        cr_assert(strstr(r.out, "\"status\": \"running\""), "%s", r.out);
        proc_result_clear(&r);
        code = cli(&r, 60000, (const char *[]) { "status", UUID, NULL });
        cr_assert_eq(code, 0, "%s", r.errout);
        cr_assert(strstr(r.out, "qemu status:  running"), "%s", r.out);
        proc_result_clear(&r);
        cr_assert_null(strstr(slurp(vmsup_log), "lost QMP"), "%s", slurp(vmsup_log));

        code = cli(&r, 180000, (const char *[]) { "stop", UUID, "--force", NULL });
        cr_assert_eq(code, 0, "%s\n--- vmsup:\n%s", r.errout, slurp(vmsup_log));
        cr_assert_str_eq(r.out, "stopped\n");
        proc_result_clear(&r);
        cr_assert_eq(wait_exit(&s, 60000), 0, "%s", slurp(vmsup_log));
        assert_clean();
}

/* QEMU stays stopped: quit goes unanswered, and the forced stop ends QEMU anyway, within
 * its bound, and says how. */
Test(stall, a_forced_stop_ends_a_stopped_qemu_and_says_how) {
        struct proc_result r;
        struct sup s;
        pid_t qemu;
        int code;

        s = boot();
        qemu = status_pid("qemu_pid");

        cr_assert_eq(kill(qemu, SIGSTOP), 0);
        code = cli(&r, 60000, (const char *[]) { "status", UUID, NULL });
        cr_assert_eq(code, 0, "%s", r.errout);
        cr_assert(strstr(r.out, "qemu status:  not answering"), "%s", r.out);
        proc_result_clear(&r);

        code = cli(&r, 180000, (const char *[]) { "stop", UUID, "--force", NULL });
        cr_assert_eq(code, 0, "%s\n--- vmsup:\n%s", r.errout, slurp(vmsup_log));
        cr_assert_str_eq(r.out, "stopped: QEMU did not exit within 10 s: QEMU was killed (SIGKILL)\n", "%s",
                         slurp(vmsup_log));
        proc_result_clear(&r);
        cr_assert_eq(wait_exit(&s, 60000), 0, "%s", slurp(vmsup_log));
        cr_assert(strstr(slurp(vmsup_log), "guest stopped: on request (QEMU killed by SIGKILL)"), "%s",
                  slurp(vmsup_log));
        assert_clean();
}

/* Make the supervisor lose QMP with a QEMU that keeps running: a reply larger than the
 * client takes (QMP_MAX_MESSAGE_SIZE) is a protocol error that ends the connection. */
static void lose_qmp(void) {
        struct proc_result r;
        int code;

        code = cli(&r, 120000,
                   (const char *[]) { "qmp", UUID, "human-monitor-command", "{\"command-line\": \"xp /400000xb 0\"}",
                                      NULL });
        cr_assert_neq(code, 0, "%s", r.out);
        proc_result_clear(&r);
        wait_log("error: lost QMP with QEMU (pid ", 30000);
        cr_assert(strstr(slurp(vmsup_log), "QMP message longer than 1048576 bytes"), "%s", slurp(vmsup_log));

        code = cli(&r, 60000, (const char *[]) { "status", UUID, NULL });
        cr_assert_eq(code, 0, "%s", r.errout);
        cr_assert(strstr(r.out, "state:        running"), "%s", r.out);
        cr_assert(strstr(r.out, "qemu status:  unknown (QMP lost)"), "%s", r.out);
        cr_assert(strstr(r.out, "qmp:          lost: QMP message longer than 1048576 bytes"), "%s", r.out);
        proc_result_clear(&r);
}

/* QMP is lost and QEMU is stopped: a forced stop still ends it (SIGTERM, which a stopped
 * QEMU cannot act on, then SIGKILL after the bound) and says so. */
Test(stall, without_qmp_a_forced_stop_still_ends_qemu) {
        struct proc_result r;
        struct sup s;
        pid_t qemu;
        int code;

        s = boot();
        qemu = status_pid("qemu_pid");
        lose_qmp();

        cr_assert_eq(kill(qemu, SIGSTOP), 0);
        code = cli(&r, 180000, (const char *[]) { "stop", UUID, "--force", NULL });
        cr_assert_eq(code, 0, "%s\n--- vmsup:\n%s", r.errout, slurp(vmsup_log));
        cr_assert(strstr(r.out, "stopped: QMP was lost (QMP message longer than 1048576 bytes"), "%s", r.out);
        cr_assert(strstr(r.out, "QEMU was sent SIGTERM; QEMU did not exit within 10 s: QEMU was killed (SIGKILL)\n"),
                  "%s", r.out);
        proc_result_clear(&r);
        cr_assert_eq(wait_exit(&s, 60000), 0, "%s", slurp(vmsup_log));
        assert_clean();
}

/* QMP is lost: SIGTERM to the supervisor ends QEMU with SIGTERM; QEMU is stopped and
 * cannot act on it, and a second SIGTERM is acted on at once (SIGKILL). */
Test(stall, without_qmp_a_second_sigterm_kills_qemu) {
        struct sup s;
        pid_t qemu;
        char *log;

        s = boot();
        qemu = status_pid("qemu_pid");
        lose_qmp();

        cr_assert_eq(kill(qemu, SIGSTOP), 0);
        cr_assert_eq(kill(s.pid, SIGTERM), 0);
        wait_log("SIGTERM, SIGKILL in 10 s if it is still there", 30000);
        cr_assert_eq(kill(s.pid, SIGTERM), 0);
        cr_assert_eq(wait_exit(&s, 120000), 0, "%s", slurp(vmsup_log));
        log = slurp(vmsup_log);
        cr_assert(strstr(log, "asked again to stop; killing QEMU (pid "), "%s", log);
        cr_assert(strstr(log, "guest stopped: on request (QEMU killed by SIGKILL): QMP was lost ("), "%s", log);
        assert_clean();
}

/* swtpm stops answering (SIGSTOP) before a stop: the stop ends it within bounds, fails
 * saying so, and the TPM state kept is its last complete one: the guest's NV counter goes
 * on from it at the next start. */
Test(stall, a_hung_swtpm_is_ended_and_its_last_state_kept) {
        struct proc_result r;
        struct sup s;
        pid_t swtpm;
        char *text, want[128];
        long c1, c2;
        int code;

        s = boot();
        text = wait_console("tpmprobe: done", 1, 1000);
        c1 = console_value(text, "nv-counter=", 1);
        free(text);
        swtpm = status_pid("swtpm_pid");

        cr_assert_eq(kill(swtpm, SIGSTOP), 0);
        code = cli(&r, 240000, (const char *[]) { "stop", UUID, "--force", NULL });
        cr_assert_eq(code, 1, "exit %d: %s%s\n--- vmsup:\n%s", code, r.out, r.errout, slurp(vmsup_log));
        snprintf(want, sizeof(want), "swtpm (pid %d) did not shut down (", (int) swtpm);
        cr_assert(strstr(r.errout, want), "%s", r.errout);
        cr_assert(strstr(r.errout, "and was ended with SIGKILL; the TPM state kept is the last one it wrote whole"),
                  "%s", r.errout);
        proc_result_clear(&r);
        cr_assert_eq(wait_exit(&s, 120000), 1, "%s", slurp(vmsup_log));
        snprintf(want, sizeof(want), "error: swtpm (pid %d) did not shut down", (int) swtpm);
        cr_assert(strstr(slurp(vmsup_log), want), "%s", slurp(vmsup_log));
        cr_assert_eq(kill(swtpm, 0), -1, "swtpm (pid %d) is still there", (int) swtpm);
        assert_clean();

        /* the next start goes on from the state swtpm last wrote */
        write_spec(false);
        s = start();
        cr_assert_eq(wait_exit(&s, 180000), 0, "%s", slurp(vmsup_log));
        text = wait_console("tpmprobe: done", 2, 1000);
        c2 = console_value(text, "nv-counter=", 2);
        cr_assert_eq(c2, c1 + 1, "NV counter %ld, then %ld after swtpm was killed", c1, c2);
        free(text);
        assert_clean();
}
