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
#include "tests/helpers.h"

#define UUID "7d1e5b3a-9c2f-4a6e-8b0d-3f5a7c9e1b2d"
/* more status calls than QEMU can answer while it is stopped, and more than 64 */
#define N_STATUS 80   /* more than the 64 late ids the QMP client used to remember */
#define STATUS_WAVE 40 /* below the supervisor's 64 control connections */

static char *root, *conf, *spec_path, *console, *vmsup_log;

struct sup {
        pid_t pid;
        int pidfd;
};

static char *slurp(const char *path) {
        static char buf[1 << 20];
        FILE *f = fopen(path, "r");
        size_t n = 0;

        if (f) {
                n = fread(buf, 1, (1 << 20) - 1, f);
                fclose(f);
        }
        buf[n] = '\0';
        return buf;
}

static void setup(void) {
        char *text = NULL;

        root = test_mkdtemp();
        cr_assert(asprintf(&text,
                           "[tpm]\nswtpm_enabled = true\nswtpm_user = root\nswtpm_group = root\n"
                           "[qemu]\naccelerator = tcg\n"
                           "[paths]\nstate_dir = %s/state\nrun_dir = %s/run\nsecrets_dir = %s/state/secrets\n"
                           "log_dir = %s/log\n[supervisor]\nstop_timeout = 3\n"
                           "[barbican]\nendpoint = %s\nauth = noauth\nretries = 1\n",
                           root, root, root, root, test_barbican_url()) > 0);
        conf = test_write_file(root, "vmsup.conf", text, 0600);
        free(text);
        cr_assert(asprintf(&console, "%s/log/" UUID "/console.log", root) > 0);
        cr_assert(asprintf(&vmsup_log, "%s/vmsup.log", root) > 0);
}

static void teardown(void) {
        /* a stopped child of a failed test: SIGKILL works on it too */
        if (test_count_processes(root, false))
                test_count_processes(root, true);
        test_rmtree(root);
        free(root);
        free(conf);
        free(spec_path);
        free(console);
        free(vmsup_log);
}

TestSuite(stall, .init = setup, .fini = teardown, .timeout = 400);

static void write_spec(bool hold) {
        char *text = NULL;

        cr_assert(asprintf(&text,
                           "{\"uuid\": \"" UUID "\", \"name\": \"stall\", \"vcpus\": 1, \"memory_mb\": 256,"
                           " \"flavor\": {\"name\": \"m1.tpm\", \"extra_specs\": {\"hw:tpm_version\": \"2.0\","
                           " \"hw:tpm_model\": \"tpm-crb\"}},"
                           " \"image\": {\"name\": \"demo\", \"properties\": {\"hw_firmware_type\": \"bios\"}},"
                           " \"firmware\": {\"kernel\": \"%s/vmlinuz\", \"initrd\": \"%s/initrd.img\","
                           " \"cmdline\": \"console=ttyS0 quiet%s\"}}",
                           TEST_GUEST_DIR, TEST_GUEST_DIR, hold ? " tpmprobe.hold" : "") > 0);
        free(spec_path);
        spec_path = test_write_file(root, "guest.json", text, 0644);
        free(text);
}

static struct sup start(void) {
        char *argv[] = { VMSUP_BIN, "--config", conf, "run", "--token-fd", "3", spec_path, NULL };
        const char *credential = "project-of-the-owner";
        struct proc_fd_map fds[1];
        struct proc_spawn_opts o = { .argv = argv, .stdin_fd = -1, .fds = fds, .n_fds = 1 };
        vmsup_error *err = NULL;
        struct sup s;
        int log = open(vmsup_log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600), token[2];

        cr_assert_geq(log, 0);
        cr_assert_eq(pipe2(token, O_CLOEXEC), 0);
        cr_assert_eq(write(token[1], credential, strlen(credential)), (ssize_t) strlen(credential));
        close(token[1]);
        fds[0] = (struct proc_fd_map) { token[0], 3 };
        o.stdout_fd = o.stderr_fd = log;
        cr_assert_eq(proc_spawn(&o, &s.pid, &s.pidfd, &err), 0, "%s", err ? err->msg : "");
        close(token[0]);
        close(log);
        return s;
}

/* vmsup's exit code, or -1 if it did not exit within timeout_ms (then it is killed). */
static int wait_exit(struct sup *s, int timeout_ms) {
        struct pollfd p = { .fd = s->pidfd, .events = POLLIN };
        int status;

        if (poll(&p, 1, timeout_ms) != 1) {
                kill(s->pid, SIGKILL);
                waitpid(s->pid, NULL, 0);
                close(s->pidfd);
                return -1;
        }
        waitpid(s->pid, &status, 0);
        close(s->pidfd);
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static json_object *control(const char *cmd, vmsup_error **err) {
        json_object *req = json_object_new_object(), *ret = NULL;
        char path[512];

        snprintf(path, sizeof(path), "%s/run/" UUID "/control.sock", root);
        json_object_object_add(req, "cmd", json_object_new_string(cmd));
        if (control_request(path, req, 60000, &ret, err) < 0)
                ret = NULL;
        json_object_put(req);
        return ret;
}

static const char *str(json_object *o, const char *key) {
        json_object *v;

        return o && json_object_object_get_ex(o, key, &v) && v ? json_object_get_string(v) : "";
}

static void wait_running(struct sup *s) {
        long deadline = monotonic_ms() + 120000;

        while (monotonic_ms() < deadline) {
                vmsup_error *err = NULL;
                json_object *st = control("status", &err);
                struct pollfd p = { .fd = s->pidfd, .events = POLLIN };
                bool running = streq(str(st, "state"), "running");

                json_object_put(st);
                vmsup_error_free(err);
                if (running)
                        return;
                if (poll(&p, 1, 50) == 1)
                        cr_assert_fail("vmsup exited before the guest ran: %s", slurp(vmsup_log));
        }
        cr_assert_fail("the guest did not reach running: %s", slurp(vmsup_log));
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
        long deadline = monotonic_ms() + timeout_ms;

        for (;;) {
                char *text = strdup(slurp(console));
                int n = 0;

                for (char *p = text; (p = strstr(p, needle)); p++)
                        n++;
                if (n >= count)
                        return text;
                if (monotonic_ms() > deadline)
                        cr_assert_fail("console lacks %d x '%s' after %d ms:\n%s\n--- vmsup:\n%s", count, needle,
                                       timeout_ms, text, slurp(vmsup_log));
                free(text);
                usleep(50000);
        }
}

static long console_value(const char *text, const char *key, int nth) {
        const char *p = text;

        for (int i = 0; i < nth; i++) {
                p = strstr(p, key);
                cr_assert_not_null(p, "no %d. %s in:\n%s", nth, key, text);
                p += strlen(key);
        }
        return strtol(p, NULL, 10);
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

/* QEMU stops answering (SIGSTOP) while more status calls come than the QMP client used to
 * remember late ids for; when it resumes, its late replies must not cost the supervisor
 * its QMP connection. */
Test(stall, late_replies_after_a_stall_keep_qmp) {
        struct proc_result r;
        struct sup s;
        pid_t qemu;
        int code;

        write_spec(true);
        s = start();
        wait_running(&s);
        free(wait_console("tpmprobe: done", 1, 120000));
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

        write_spec(true);
        s = start();
        wait_running(&s);
        free(wait_console("tpmprobe: done", 1, 120000));
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

        write_spec(true);
        s = start();
        wait_running(&s);
        free(wait_console("tpmprobe: done", 1, 120000));
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

        write_spec(true);
        s = start();
        wait_running(&s);
        free(wait_console("tpmprobe: done", 1, 120000));
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

        write_spec(true);
        s = start();
        wait_running(&s);
        text = wait_console("tpmprobe: done", 1, 120000);
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
