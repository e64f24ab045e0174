/* The supervisor's control socket under a flood of clients, the client's bounded connect,
 * and SIGTERM while a guest starts: real vmsup, swtpm, QEMU (TCG) and Barbican. */
#include "config.h"

#include <criterion/criterion.h>
#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/proc.h"
#include "common/util.h"
#include "supervisor/control.h"
#include "tests/barbican_fixture.h"
#include "tests/fakehttp.h"
#include "tests/guestfix.h"
#include "tests/helpers.h"

#define UUID "7c1e5a3b-2d4f-4e6a-8b0c-1f3e5a7c9d2b"
#define FLOOD 100

static char *root, *conf, *spec_path, *console, *vmsup_log, *control_path;

/* The host config; tpm_extra goes into its [tpm] section, more_sections at its end. */
static void write_conf(const char *barbican_url, const char *tpm_extra, const char *more_sections) {
        free(conf);
        conf = test_write_conf(root, "vmsup.conf",
                               &(struct test_conf) { .root = root, .tpm = tpm_extra, .supervisor = "stop_timeout = 3\n",
                                                     .barbican_url = barbican_url, .barbican = "retries = 1\n",
                                                     .more = more_sections });
}

static void setup(void) {
        root = test_mkdtemp();
        cr_assert(asprintf(&console, "%s/log/" UUID "/console.log", root) > 0);
        cr_assert(asprintf(&vmsup_log, "%s/vmsup.log", root) > 0);
        cr_assert(asprintf(&control_path, "%s/run/" UUID "/control.sock", root) > 0);
        spec_path = test_write_spec(root, "guest.json",
                                    &(struct test_spec) { .uuid = UUID, .name = "demo", .guest_dir = TEST_GUEST_DIR,
                                                          .hold = true });
}

static void teardown(void) {
        test_root_cleanup(root);
        free(conf);
        free(spec_path);
        free(console);
        free(vmsup_log);
        free(control_path);
        conf = NULL;
}

TestSuite(control, .init = setup, .fini = teardown, .timeout = 300);

static struct sup start(void) {
        char *argv[] = { VMSUP_BIN, "--config", conf, "run", "--token-fd", "3", spec_path, NULL };

        return test_spawn(argv, NULL, vmsup_log, "project-of-the-owner");
}

static void wait_running(struct sup *s) {
        json_object_put(test_wait_running(s, control_path, vmsup_log, 120000));
}

static void assert_clean(void) {
        struct stat st;


        cr_assert_eq(test_count_processes(root, false), 0, "vmsup, swtpm or QEMU processes of the test remain");
        cr_assert_neq(stat(control_path, &st), 0, "the control socket was left behind");
}

/* A client that connects and sends nothing; -1 when connect fails. */
static int connect_idle(void) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);

        cr_assert_geq(fd, 0);
        snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", control_path);
        if (connect(fd, (struct sockaddr *) &sa, sizeof(sa)) < 0) {
                close(fd);
                return -1;
        }
        return fd;
}

/* What a client got: 0 nothing yet, 1 a line (in buf) then the end, -1 the end only. */
static int client_answer(int fd, char *buf, size_t size) {
        size_t len = 0;

        for (;;) {
                ssize_t n = recv(fd, buf + len, size - 1 - len, MSG_DONTWAIT);

                if (n > 0) {
                        len += (size_t) n;
                        if (len < size - 1)
                                continue;
                }
                buf[len] = '\0';
                if (n < 0 && errno == EAGAIN)
                        return 0; /* our clients are answered in one go: a partial line is not there yet */
                return len ? 1 : -1;
        }
}

/* The supervisor's CPU time (user + system) in clock ticks. */
static long cpu_ticks(pid_t pid) {
        char path[64], *p;
        long utime = 0, stime = 0;

        snprintf(path, sizeof(path), "/proc/%d/stat", (int) pid);
        p = strrchr(slurp(path), ')');
        cr_assert_not_null(p);
        /* after "pid (comm)": state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime */
        cr_assert_eq(sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %ld %ld", &utime, &stime), 2);
        return utime + stime;
}

/* The CPU the supervisor used over 2 s, in percent of one core. */
static long cpu_percent_over_2s(pid_t pid) {
        long t0 = cpu_ticks(pid), m0 = monotonic_ms(), t1, m1;

        usleep(2000000);
        t1 = cpu_ticks(pid);
        m1 = monotonic_ms();
        return (t1 - t0) * 1000 * 100 / sysconf(_SC_CLK_TCK) / (m1 - m0);
}

static int count_in(const char *text, const char *needle) {
        int n = 0;

        for (const char *p = text; (p = strstr(p, needle)); p++)
                n++;
        return n;
}

/* `vmsup status` as an operator runs it: its exit code and how long it took. */
static int cli_status(long *ret_ms, char **ret_err) {
        const char *args[] = { "--config", conf, "status", UUID, NULL };
        struct test_run r;
        long t0 = monotonic_ms();
        int code;

        test_run_vmsup(&r, NULL, args);
        *ret_ms = monotonic_ms() - t0;
        code = r.exit_code;
        *ret_err = strdup(r.err);
        test_run_clear(&r);
        return code;
}

Test(control, clients_beyond_the_cap_are_refused_and_idle_ones_closed) {
        int fds[FLOOD], refused = 0, held = 0, code;
        char buf[512], *errtext;
        long ms, deadline;
        struct sup s;

        write_conf(test_barbican_url(), NULL, NULL);
        s = start();
        wait_running(&s);

        for (int i = 0; i < FLOOD; i++) {
                fds[i] = connect_idle();
                cr_assert_geq(fds[i], 0, "connect %d: %s", i, strerror(errno));
        }
        /* the supervisor accepts them all at once: those beyond the cap hear why */
        deadline = monotonic_ms() + 3000;
        while (monotonic_ms() < deadline && refused < FLOOD - CONTROL_MAX_CLIENTS) {
                refused = 0;
                for (int i = 0; i < FLOOD; i++) {
                        struct pollfd p = { .fd = fds[i], .events = POLLIN };

                        if (poll(&p, 1, 0) == 1 && client_answer(fds[i], buf, sizeof(buf)) == 1) {
                                cr_assert(strstr(buf, "too many control connections") && strstr(buf, "\"exit_code\":75"),
                                          "%s", buf);
                                close(fds[i]);
                                fds[i] = -1;
                        }
                        refused += fds[i] < 0;
                }
                usleep(20000);
        }
        cr_assert_eq(refused, FLOOD - CONTROL_MAX_CLIENTS, "%d of %d clients refused (cap %d)", refused, FLOOD,
                     CONTROL_MAX_CLIENTS);

        /* with the cap held, an operator still gets an answer, in time */
        code = cli_status(&ms, &errtext);
        cr_assert_eq(code, 75, "vmsup status exited %d after %ld ms: %s", code, ms, errtext);
        cr_assert(strstr(errtext, "too many control connections"), "%s", errtext);
        cr_assert_lt(ms, 10000 + 5000, "vmsup status took %ld ms", ms);
        free(errtext);
        cr_assert_lt(cpu_percent_over_2s(s.pid), 20, "the supervisor is busy with idle clients");

        /* idle clients are closed after CONTROL_REQUEST_TIMEOUT_MS, with a word */
        deadline = monotonic_ms() + CONTROL_REQUEST_TIMEOUT_MS + 15000;
        do {
                held = 0;
                for (int i = 0; i < FLOOD; i++) {
                        if (fds[i] < 0)
                                continue;
                        code = client_answer(fds[i], buf, sizeof(buf));
                        if (code == 1)
                                cr_assert(strstr(buf, "no whole request within"), "%s", buf);
                        if (code != 0) {
                                close(fds[i]);
                                fds[i] = -1;
                        } else
                                held++;
                }
                usleep(100000);
        } while (held && monotonic_ms() < deadline);
        cr_assert_eq(held, 0, "%d idle clients still open %d ms after they connected", held,
                     CONTROL_REQUEST_TIMEOUT_MS + 15000);

        code = cli_status(&ms, &errtext);
        cr_assert_eq(code, 0, "vmsup status exited %d: %s", code, errtext);
        free(errtext);

        kill(s.pid, SIGTERM);
        cr_assert_eq(wait_exit(&s, 60000), 0, "%s", slurp(vmsup_log));
        assert_clean();
}

/* The sealed TPM state files' bytes, one after the other (to see that they changed). */
static char *sealed_state(size_t *ret_len) {
        char dir[512], *all = NULL;
        size_t len = 0;
        FILE *mem = open_memstream(&all, &len);
        struct dirent *e;
        DIR *d;

        snprintf(dir, sizeof(dir), "%s/state/" UUID, root);
        d = opendir(dir);
        cr_assert_not_null(d, "%s", dir);
        while ((e = readdir(d))) {
                char path[1024];
                uint8_t *data;
                size_t n;

                if (!strstr(e->d_name, ".sealed") || strstr(e->d_name, ".tmp"))
                        continue;
                snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
                data = test_read_file(path, &n);
                fwrite(data, 1, n, mem);
                free(data);
        }
        closedir(d);
        fclose(mem);
        *ret_len = len;
        return all;
}

static int count_open_fds(pid_t pid) {
        char path[64];
        struct dirent *e;
        DIR *d;
        int n = 0;

        snprintf(path, sizeof(path), "/proc/%d/fd", (int) pid);
        d = opendir(path);
        cr_assert_not_null(d);
        while ((e = readdir(d)))
                n += e->d_name[0] != '.';
        closedir(d);
        return n;
}

/* Keep FLOOD idle clients connected (replacing those the supervisor answered or closed);
 * counts the answers that say the supervisor is out of fds. */
static void flood_step(int *fds, int *out_of_fds) {
        char buf[512];

        for (int i = 0; i < FLOOD; i++) {
                if (fds[i] >= 0 && client_answer(fds[i], buf, sizeof(buf)) != 0) {
                        if (strstr(buf, "out of file descriptors"))
                                (*out_of_fds)++;
                        close(fds[i]);
                        fds[i] = -1;
                }
                if (fds[i] < 0)
                        fds[i] = connect_idle();
        }
}

Test(control, out_of_fds_backs_off_and_still_seals_the_tpm) {
        int fds[FLOOD], out_of_fds = 0, code;
        struct rlimit lim;
        char *before, *after = NULL, *log;
        size_t before_len, after_len = 0;
        long deadline, cpu;
        struct sup s;

        write_conf(test_barbican_url(), NULL, NULL);
        s = start();
        wait_running(&s);
        cr_assert_null(strstr(slurp(console), "tpmprobe: done"), "the guest ran its TPM writes before the test could");
        before = sealed_state(&before_len);

        /* leave the supervisor a few fds beyond what it holds: clients run out of them long
         * before the cap (its children keep their own limit) */
        cr_assert_eq(prlimit(s.pid, RLIMIT_NOFILE, NULL, &lim), 0);
        lim.rlim_cur = (rlim_t) count_open_fds(s.pid) + 6;
        cr_assert_eq(prlimit(s.pid, RLIMIT_NOFILE, &lim, NULL), 0);
        for (int i = 0; i < FLOOD; i++)
                fds[i] = -1;
        flood_step(fds, &out_of_fds);
        usleep(500000);
        flood_step(fds, &out_of_fds);
        cr_assert_gt(out_of_fds, 0, "no client was told the supervisor is out of fds");
        cpu = cpu_percent_over_2s(s.pid);
        flood_step(fds, &out_of_fds);
        /* spinning on accept() took a whole core, or what the other processes left of it */
        cr_assert_lt(cpu, 20, "the supervisor used %ld%% of a core while out of fds", cpu);

        /* the guest writes its TPM (tpmprobe) while the clients keep coming: sealed at once */
        deadline = monotonic_ms() + 180000;
        while (!strstr(slurp(console), "tpmprobe: done") && monotonic_ms() < deadline) {
                flood_step(fds, &out_of_fds);
                usleep(100000);
        }
        cr_assert(strstr(slurp(console), "tpmprobe: done"), "%s", slurp(console));
        deadline = monotonic_ms() + 20000;
        do {
                free(after);
                flood_step(fds, &out_of_fds);
                usleep(200000);
                after = sealed_state(&after_len);
        } while (after_len == before_len && memcmp(after, before, before_len) == 0 && monotonic_ms() < deadline);
        cr_assert(after_len != before_len || memcmp(after, before, before_len) != 0,
                  "the guest's TPM writes were not sealed while it ran: %s", slurp(vmsup_log));
        free(before);
        free(after);

        for (int i = 0; i < FLOOD; i++)
                if (fds[i] >= 0)
                        close(fds[i]);
        log = strdup(slurp(vmsup_log));
        cr_assert_null(strstr(log, "sealing the TPM state failed"), "%s", log);
        /* one line per episode of running out, not one per wake-up */
        cr_assert_leq(count_in(log, "Too many open files"), 20, "%d lines", count_in(log, "Too many open files"));
        free(log);

        lim.rlim_cur = 1024;
        prlimit(s.pid, RLIMIT_NOFILE, &lim, NULL);
        kill(s.pid, SIGTERM);
        code = wait_exit(&s, 60000);
        cr_assert_eq(code, 0, "%s", slurp(vmsup_log));
        assert_clean();
}

/* The back-off after accept() ran out of fds ends by itself: with no client knocking and
 * nothing else happening, the control socket is watched again, and the next operator is
 * served. The clients the supervisor took meanwhile are closed at their request deadline. */
Test(control, the_accept_back_off_ends_and_the_next_client_is_served) {
        int fds[FLOOD], out_of_fds = 0, code, held;
        struct rlimit lim;
        char buf[512], *errtext, *log;
        long ms, deadline;
        struct sup s;

        write_conf(test_barbican_url(), NULL, NULL);
        s = start();
        wait_running(&s);

        cr_assert_eq(prlimit(s.pid, RLIMIT_NOFILE, NULL, &lim), 0);
        lim.rlim_cur = (rlim_t) count_open_fds(s.pid) + 6;
        cr_assert_eq(prlimit(s.pid, RLIMIT_NOFILE, &lim, NULL), 0);
        for (int i = 0; i < FLOOD; i++)
                fds[i] = -1;
        deadline = monotonic_ms() + 30000;
        while (!out_of_fds && monotonic_ms() < deadline) {
                flood_step(fds, &out_of_fds);
                usleep(100000);
        }
        cr_assert_gt(out_of_fds, 0, "no client was told the supervisor is out of fds: %s", slurp(vmsup_log));

        /* the clients it took say nothing: each is closed at its request deadline, with a word */
        deadline = monotonic_ms() + CONTROL_REQUEST_TIMEOUT_MS + 30000;
        do {
                held = 0;
                for (int i = 0; i < FLOOD; i++) {
                        if (fds[i] < 0)
                                continue;
                        code = client_answer(fds[i], buf, sizeof(buf));
                        if (code == 1)
                                cr_assert(strstr(buf, "no whole request within") ||
                                                  strstr(buf, "out of file descriptors"),
                                          "%s", buf);
                        if (code != 0) {
                                close(fds[i]);
                                fds[i] = -1;
                        } else
                                held++;
                }
                usleep(100000);
        } while (held && monotonic_ms() < deadline);
        /* those still waiting in the backlog were never accepted: they go now */
        for (int i = 0; i < FLOOD; i++)
                if (fds[i] >= 0)
                        close(fds[i]);

        /* fds free again, and nobody knocking since: the next client is accepted and served */
        lim.rlim_cur = 1024;
        cr_assert_eq(prlimit(s.pid, RLIMIT_NOFILE, &lim, NULL), 0);
        usleep(1000000); /* several times the back-off (250 ms) */
        code = cli_status(&ms, &errtext);
        cr_assert_eq(code, 0, "vmsup status after the back-off exited %d after %ld ms: %s\n%s", code, ms, errtext,
                     slurp(vmsup_log));
        free(errtext);
        log = strdup(slurp(vmsup_log));
        cr_assert_geq(count_in(log, "control clients are refused until file descriptors are free again"), 1, "%s",
                      log);
        free(log);

        kill(s.pid, SIGTERM);
        cr_assert_eq(wait_exit(&s, 60000), 0, "%s", slurp(vmsup_log));
        assert_clean();
}

/* A supervisor that accepts nobody (stopped, or its backlog full): control_request gives
 * up within its timeout instead of waiting in connect() for ever. */
Test(control, connect_is_bounded_by_the_client_timeout) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        int lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0), status;
        struct pollfd p;
        pid_t pid;

        free(control_path);
        cr_assert(asprintf(&control_path, "%s/full.sock", root) > 0);
        snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", control_path);
        cr_assert_eq(bind(lfd, (struct sockaddr *) &sa, sizeof(sa)), 0);
        cr_assert_eq(listen(lfd, 0), 0);
        for (int i = 0; i < 64 && connect_idle() >= 0; i++)
                ; /* fill the backlog */
        pid = fork();
        cr_assert_geq(pid, 0);
        if (pid == 0) {
                json_object *req = json_object_new_object();
                vmsup_error *err = NULL;
                long t0 = monotonic_ms();
                int r;

                json_object_object_add(req, "cmd", json_object_new_string("status"));
                r = control_request(control_path, req, 1000, NULL, &err);
                if (r < 0 && err->exit_code == 75 && monotonic_ms() - t0 < 5000)
                        _exit(0);
                fprintf(stderr, "control_request: %d after %ld ms: %s\n", r, monotonic_ms() - t0,
                        err ? err->msg : "");
                _exit(1);
        }
        p = (struct pollfd) { .fd = (int) syscall(SYS_pidfd_open, pid, 0), .events = POLLIN };
        if (poll(&p, 1, 15000) != 1) {
                kill(pid, SIGKILL);
                waitpid(pid, NULL, 0);
                cr_assert_fail("control_request still in connect() 15 s after its 1 s timeout");
        }
        waitpid(pid, &status, 0);
        cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "control_request did not time out as it should");
        close(lfd);
}

/* Nothing of a start that was abandoned: no process, no sealed state, no live TPM file. */
static void assert_nothing_started(void) {
        char path[512];
        struct stat st;
        DIR *d;
        struct dirent *e;

        assert_clean();
        cr_assert(stat(console, &st) != 0 || st.st_size == 0, "QEMU ran: %s", slurp(console));
        snprintf(path, sizeof(path), "%s/state/" UUID, root);
        d = opendir(path);
        while (d && (e = readdir(d)))
                cr_assert_null(strstr(e->d_name, ".sealed"), "sealed state was written: %s", e->d_name);
        if (d)
                closedir(d);
        snprintf(path, sizeof(path), "%s/run/" UUID "/tpm/tpm2-00.permall", root);
        cr_assert_neq(stat(path, &st), 0, "a half-manufactured TPM state stays in the live dir");
}

Test(control, sigterm_while_the_secret_is_fetched_abandons_the_start) {
        struct fakehttp_reply hang[] = { { .raw = "HTTP/1.1 500 never sent\r\n\r\n", .hang = 1 } };
        struct fakehttp *barbican = fakehttp_start(hang, 1);
        long deadline = monotonic_ms() + 60000, t0;
        struct sup s;
        int code;

        write_conf(fakehttp_url(barbican), NULL, NULL);
        s = start();
        while (fakehttp_count(barbican) == 0 && monotonic_ms() < deadline)
                usleep(20000);
        cr_assert_gt(fakehttp_count(barbican), 0, "vmsup never asked Barbican: %s", slurp(vmsup_log));
        t0 = monotonic_ms();
        kill(s.pid, SIGTERM);
        code = wait_exit(&s, 10000);
        cr_assert_eq(code, 75, "exit %d %ld ms after SIGTERM: %s", code, monotonic_ms() - t0, slurp(vmsup_log));
        cr_assert(strstr(slurp(vmsup_log), "start abandoned: SIGTERM"), "%s", slurp(vmsup_log));
        assert_nothing_started();
        fakehttp_stop(barbican);
}

Test(control, sigterm_while_the_tpm_is_manufactured_abandons_the_start) {
        char *script = NULL, *extra = NULL, *marker = NULL, *path;
        long deadline = monotonic_ms() + 120000;
        struct stat st;
        struct sup s;
        int code;

        /* swtpm_setup that leaves a half-made state and hangs, with a child of its own (as
         * swtpm_setup has its swtpm) */
        cr_assert(asprintf(&marker, "%s/manufacturing", root) > 0);
        cr_assert(asprintf(&script,
                           "#!/bin/sh\n"
                           "case \"$*\" in *--print-capabilities*) exec swtpm_setup \"$@\";; esac\n"
                           "if [ \"$1\" = --child ]; then while :; do sleep 1; done; fi\n"
                           "while [ $# -gt 0 ]; do [ \"$1\" = --tpmstate ] && dir=$2; shift; done\n"
                           "echo half-made > \"$dir/tpm2-00.permall\"\n"
                           "\"$0\" --child &\n"
                           ": > %s\n"
                           "wait\n",
                           marker) > 0);
        path = test_write_file(root, "slow_swtpm_setup", script, 0755);
        cr_assert(asprintf(&extra, "swtpm_setup = %s\n", path) > 0);
        /* seccomp = log: the shell's job control (vfork, rt_sigsuspend) is not what vmsup's
         * filter is made for */
        write_conf(test_barbican_url(), extra, "[security]\nseccomp = log\n");
        s = start();
        while (stat(marker, &st) != 0 && monotonic_ms() < deadline)
                usleep(20000);
        cr_assert_eq(stat(marker, &st), 0, "swtpm_setup never ran: %s", slurp(vmsup_log));
        kill(s.pid, SIGTERM);
        code = wait_exit(&s, 10000);
        cr_assert_eq(code, 75, "exit %d: %s", code, slurp(vmsup_log));
        cr_assert(strstr(slurp(vmsup_log), "start abandoned: SIGTERM"), "%s", slurp(vmsup_log));
        assert_nothing_started();
        free(script);
        free(extra);
        free(marker);
        free(path);
}

Test(control, sigterm_while_qemu_comes_up_abandons_the_start) {
        char *script = NULL, *extra = NULL, *marker = NULL, *sleeper = NULL, *path;
        long deadline = monotonic_ms() + 120000, t0;
        struct stat st;
        struct sup s;
        int code;

        /* a QEMU whose monitor never greets (a copy of sleep, so that it is found if left) */
        cr_assert(asprintf(&sleeper, "%s/qemu-that-sleeps", root) > 0);
        {
                char *argv[] = { "/bin/cp", "/bin/sleep", sleeper, NULL };
                vmsup_error *err = NULL;
                struct proc_result res = { 0 };

                cr_assert_eq(proc_run_capture(argv, NULL, 10000, 4096, &res, &err), 0);
                cr_assert_eq(res.status, 0);
                proc_result_clear(&res);
        }
        cr_assert(asprintf(&marker, "%s/qemu-started", root) > 0);
        cr_assert(asprintf(&script,
                           "#!/bin/sh\n"
                           "case \"$*\" in *id=qmp,fd=3*) : > %s; exec %s 1000;; esac\n"
                           "exec qemu-system-x86_64 \"$@\"\n",
                           marker, sleeper) > 0);
        path = test_write_file(root, "slow_qemu", script, 0755);
        cr_assert(asprintf(&extra, "[qemu]\nbinary = %s\n", path) > 0);
        write_conf(test_barbican_url(), NULL, NULL);
        /* [qemu] accelerator is set already: put binary into that section */
        {
                char *text = strdup(slurp(conf)), *p = strstr(text, "[qemu]\n");
                FILE *f = fopen(conf, "we");

                cr_assert_not_null(p);
                fwrite(text, 1, (size_t) (p - text), f);
                fputs(extra, f);
                fputs(p + strlen("[qemu]\n"), f);
                fclose(f);
                free(text);
        }
        s = start();
        while (stat(marker, &st) != 0 && monotonic_ms() < deadline)
                usleep(20000);
        cr_assert_eq(stat(marker, &st), 0, "QEMU never started: %s", slurp(vmsup_log));
        t0 = monotonic_ms();
        kill(s.pid, SIGTERM);
        code = wait_exit(&s, 60000);
        cr_assert_eq(code, 75, "exit %d: %s", code, slurp(vmsup_log));
        /* not after QEMU's 30 s to greet: at once, then the stop of a QEMU that does not answer */
        cr_assert_lt(monotonic_ms() - t0, 25000, "%ld ms after SIGTERM", monotonic_ms() - t0);
        cr_assert(strstr(slurp(vmsup_log), "start abandoned: SIGTERM"), "%s", slurp(vmsup_log));
        assert_clean();
        free(script);
        free(extra);
        free(marker);
        free(sleeper);
        free(path);
}
