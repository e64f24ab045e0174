/* `vmsup stop --all`: every guest of the host stopped, N at a time, with a summary. Five
 * real guests (the demo guest held up until its power button) for the whole path; fake
 * supervisors on control sockets for the window, the counting and the failures. */
#include "config.h"

#include <criterion/criterion.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/proc.h"
#include "common/util.h"
#include "tests/barbican_fixture.h"
#include "tests/guestfix.h"
#include "tests/helpers.h"

#define GUESTS 5

static char *root, *conf;

static void setup(void) {
        root = test_mkdtemp();
}

static void teardown(void) {
        test_root_cleanup(root);
        free(conf);
}

TestSuite(stop_all, .init = setup, .fini = teardown, .timeout = 900);

static void uuid_of(int i, char *buf, size_t size) {
        snprintf(buf, size, "7a1c0000-0000-4000-8000-%012d", i);
}

/* vmsup with args, waited for up to timeout_ms; its exit status, its stdout and stderr in r. */
static void run_vmsup(struct test_run *r, const char *const *args, int timeout_ms) {
        char *argv[32], *envp[2] = { NULL, NULL };
        struct proc_result res = { 0 };
        vmsup_error *err = NULL;
        size_t n = 0;

        argv[n++] = VMSUP_BIN;
        for (; *args && n < 31; args++)
                argv[n++] = (char *) *args;
        argv[n] = NULL;
        cr_assert(asprintf(&envp[0], "PATH=%s", getenv("PATH")) > 0);
        cr_assert_eq(proc_run_capture(argv, envp, timeout_ms, 1 << 20, &res, &err), 0, "%s", err ? err->msg : "");
        free(envp[0]);
        r->exit_code = WIFEXITED(res.status) ? WEXITSTATUS(res.status) : -1;
        r->out = res.out;
        r->err = res.errout;
}

/* root/state/uuid and root/run/uuid: a guest the host knows */
static void mkdir_run(const char *uuid) {
        char cmd[1400];

        snprintf(cmd, sizeof(cmd), "mkdir -p '%s/run/%s' '%s/state/%s'", root, uuid, root, uuid);
        cr_assert_eq(system(cmd), 0);
}

Test(stop_all, five_guests_all_down_with_their_tpm_state_sealed) {
        struct sup s[GUESTS];
        char uuid[GUESTS][40], *spec[GUESTS], log[GUESTS][600], sock[600], name[16], path[700];
        struct test_run r;

        conf = test_write_conf(root, "vmsup.conf",
                               &(struct test_conf) { .root = root, .supervisor = "stop_timeout = 120\n",
                                                     .barbican_url = test_barbican_url(), .barbican = "retries = 1\n" });
        for (int i = 0; i < GUESTS; i++) {
                char *argv[] = { VMSUP_BIN, "--config", conf, "run", "--token-fd", "3", NULL, NULL };
                char file[32], *envp[] = { NULL, NULL };

                uuid_of(i, uuid[i], sizeof(uuid[i]));
                snprintf(name, sizeof(name), "g%d", i);
                snprintf(file, sizeof(file), "guest%d.json", i);
                spec[i] = test_write_spec(root, file,
                                          &(struct test_spec) { .uuid = uuid[i], .name = name,
                                                                .guest_dir = TEST_GUEST_DIR, .hold = true });
                argv[6] = spec[i];
                snprintf(log[i], sizeof(log[i]), "%s/vmsup%d.log", root, i);
                cr_assert(asprintf(&envp[0], "PATH=%s", getenv("PATH")) > 0);
                s[i] = test_spawn(argv, envp, log[i], "owner-project");
                free(envp[0]);
        }
        /* a run dir whose supervisor is gone: no guest to stop */
        mkdir_run("7a1c0000-0000-4000-8000-000000000099");
        for (int i = 0; i < GUESTS; i++) {
                char console[600];

                snprintf(sock, sizeof(sock), "%s/run/%s/control.sock", root, uuid[i]);
                json_object_put(test_wait_running(&s[i], sock, log[i], 300000));
                /* the guest watches its power button: a graceful stop can work */
                snprintf(console, sizeof(console), "%s/log/%s/console.log", root, uuid[i]);
                free(test_wait_console(console, log[i], "init: holding", 1, 300000));
        }

        run_vmsup(&r, (const char *[]) { "--config", conf, "stop", "--all", "--parallel", "2", NULL }, 600000);
        cr_assert_eq(r.exit_code, 0, "%s%s", r.out, r.err);
        cr_assert(strstr(r.out, "stopping 5 guests, 2 at a time: each gets 120 s to power off"), "%s", r.out);
        cr_assert(strstr(r.out, "stopped 5 guests: 5 gracefully, 0 forced, 0 failed"), "%s%s", r.out, r.err);
        for (int i = 0; i < GUESTS; i++) {
                struct pollfd p = { .fd = s[i].pidfd, .events = POLLIN };
                char line[128];

                snprintf(line, sizeof(line), "%s (g%d): stopped\n", uuid[i], i);
                cr_assert(strstr(r.out, line), "no '%s' in: %s", line, r.out);
                /* down when stop --all returned: the supervisor has exited */
                cr_assert_eq(poll(&p, 1, 0), 1, "guest %d's supervisor still runs after stop --all: %s", i, r.out);
                cr_assert_eq(wait_exit(&s[i], 10000), 0, "%s", slurp(log[i]));
                /* its TPM state sealed, the plaintext gone */
                snprintf(path, sizeof(path), "%s/state/%s/tpm2-00.permall.sealed", root, uuid[i]);
                cr_assert_eq(access(path, F_OK), 0, "%s: %s", path, slurp(log[i]));
                snprintf(path, sizeof(path), "%s/run/%s/tpm/tpm2-00.permall", root, uuid[i]);
                cr_assert(access(path, F_OK) < 0, "the live TPM state is still there: %s", path);
                free(spec[i]);
        }
        cr_assert_eq(test_count_processes(root, false), 0, "processes of the test are left");
        test_run_clear(&r);

        /* none left: nothing to do */
        run_vmsup(&r, (const char *[]) { "--config", conf, "stop", "--all", NULL }, 60000);
        cr_assert_eq(r.exit_code, 0, "%s%s", r.out, r.err);
        cr_assert(strstr(r.out, "no guest runs under vmsup on this host"), "%s", r.out);
        test_run_clear(&r);
}

/* ---- fake supervisors: the window and the summary ---------------------------------- */

#define FAKES 6

static atomic_int in_flight, most_in_flight;

struct fake {
        int fd;
        int i;
        const char *stop_reply; /* the whole reply line to stop */
};

static void *serve(void *arg) {
        struct fake *f = arg;

        for (;;) {
                int c = accept4(f->fd, NULL, NULL, SOCK_CLOEXEC);
                char buf[4096];
                ssize_t n;

                if (c < 0)
                        return NULL;
                n = read(c, buf, sizeof(buf) - 1);
                if (n <= 0) {
                        close(c);
                        continue;
                }
                buf[n] = '\0';
                if (strstr(buf, "\"status\"")) {
                        char reply[256];

                        /* no pid: nothing for stop --all to wait for after the stop */
                        snprintf(reply, sizeof(reply),
                                 "{\"ok\": true, \"return\": {\"name\": \"fake%d\", \"state\": \"running\"}}\n", f->i);
                        (void) !write(c, reply, strlen(reply));
                } else {
                        int now = atomic_fetch_add(&in_flight, 1) + 1, seen = atomic_load(&most_in_flight);

                        while (now > seen && !atomic_compare_exchange_weak(&most_in_flight, &seen, now))
                                ;
                        /* a stop takes a while: the window has to hold the next ones back */
                        usleep(300000);
                        atomic_fetch_sub(&in_flight, 1);
                        (void) !write(c, f->stop_reply, strlen(f->stop_reply));
                }
                close(c);
        }
}

static void fake_supervisor(int i, const char *stop_reply, struct fake *f, pthread_t *t) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        char uuid[40];

        uuid_of(i, uuid, sizeof(uuid));
        mkdir_run(uuid);
        snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/run/%s/control.sock", root, uuid);
        f->i = i;
        f->stop_reply = stop_reply;
        f->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        cr_assert(f->fd >= 0);
        cr_assert_eq(bind(f->fd, (struct sockaddr *) &sa, sizeof(sa)), 0);
        cr_assert_eq(listen(f->fd, 16), 0);
        cr_assert_eq(pthread_create(t, NULL, serve, f), 0);
}

/* A `vmsup run` still in its start: holds the guest's lock (flock on its state dir, as
 * guest_dirs_lock()) with "run" among its arguments, and no control socket yet. */
static pid_t starting_supervisor(const char *uuid, int *ret_hold) {
        char dir[512];
        pid_t pid;

        mkdir_run(uuid);
        snprintf(dir, sizeof(dir), "%s/state/%s", root, uuid);
        pid = test_hold_lock_as_run(dir, ret_hold);
        /* it holds the lock once /proc/locks says so */
        for (long deadline = monotonic_ms() + 30000;;) {
                size_t len;
                char *locks = (char *) test_read_file("/proc/locks", &len), needle[32];
                bool there;

                locks[len < (1 << 20) ? len : len - 1] = '\0';
                snprintf(needle, sizeof(needle), " %d ", (int) pid);
                there = strstr(locks, needle) != NULL;
                free(locks);
                if (there)
                        return pid;
                cr_assert_lt(monotonic_ms(), deadline, "the stand-in did not take the lock");
                usleep(20000);
        }
}

Test(stop_all, n_at_a_time_with_a_summary_of_graceful_forced_and_failed) {
        static const char ok[] = "{\"ok\": true, \"return\": \"stopped\"}\n",
                          forced[] = "{\"ok\": true, \"return\": \"stopped: the guest did not power off within the "
                                     "stop timeout: QEMU was told to quit\"}\n",
                          failed[] = "{\"ok\": false, \"error\": \"the guest is wedged\", \"kind\": \"failed\"}\n";
        struct fake f[FAKES];
        pthread_t t[FAKES];
        struct test_run r;
        char uuid[40], want[256];
        int hold, status;
        pid_t starting;

        conf = test_write_conf(root, "vmsup.conf", &(struct test_conf) { .root = root, .supervisor = "stop_timeout = 7\n" });
        for (int i = 0; i < FAKES; i++)
                fake_supervisor(i, i == 2 ? forced : i == 4 ? failed : ok, &f[i], &t[i]);
        /* one whose supervisor is gone */
        mkdir_run("7a1c0000-0000-4000-8000-000000000077");
        /* one whose supervisor is still starting: SIGTERM abandons its start */
        starting = starting_supervisor("7a1c0000-0000-4000-8000-000000000088", &hold);

        run_vmsup(&r, (const char *[]) { "--config", conf, "stop", "--all", "--parallel", "2", NULL }, 120000);
        cr_assert_eq(waitpid(starting, &status, WNOHANG), starting, "the starting supervisor still runs: %s", r.out);
        cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGTERM, "%s", r.out);
        close(hold);
        cr_assert_eq(r.exit_code, 1, "%s%s", r.out, r.err);
        cr_assert(strstr(r.out, "stopping 7 guests, 2 at a time: each gets 7 s to power off"), "%s", r.out);
        snprintf(want, sizeof(want), "7a1c0000-0000-4000-8000-000000000088 (?): starting: its supervisor (pid %d) was sent "
                 "SIGTERM", (int) starting);
        cr_assert(strstr(r.out, want), "no '%s' in: %s", want, r.out);
        cr_assert(strstr(r.out, "stopped 6 guests: 5 gracefully, 1 forced, 1 failed"), "%s", r.out);
        uuid_of(4, uuid, sizeof(uuid));
        snprintf(want, sizeof(want), "failed: %s (fake4): the guest is wedged", uuid);
        cr_assert(strstr(r.out, want), "no '%s' in: %s", want, r.out);
        uuid_of(2, uuid, sizeof(uuid));
        snprintf(want, sizeof(want), "%s (fake2): stopped: the guest did not power off", uuid);
        cr_assert(strstr(r.out, want), "no '%s' in: %s", want, r.out);
        cr_assert(!strstr(r.out, "000000000077"), "%s", r.out);
        cr_assert_eq(atomic_load(&most_in_flight), 2, "%d stops at once with --parallel 2",
                     atomic_load(&most_in_flight));
        test_run_clear(&r);
}

Test(stop_all, bad_options_are_usage_errors) {
        struct test_run r;

        conf = test_write_conf(root, "vmsup.conf", &(struct test_conf) { .root = root });
        run_vmsup(&r, (const char *[]) { "--config", conf, "stop", "--all", "--parallel", "0", NULL }, 60000);
        cr_assert_eq(r.exit_code, 64, "%s", r.err);
        cr_assert(strstr(r.err, "--parallel takes a number of guests (1 to 1024), not '0'"), "%s", r.err);
        test_run_clear(&r);
        run_vmsup(&r, (const char *[]) { "--config", conf, "stop", "--all", "7a1c0000-0000-4000-8000-000000000001", NULL },
                  60000);
        cr_assert_eq(r.exit_code, 64, "%s", r.err);
        cr_assert(strstr(r.err, "--all takes no guest UUID"), "%s", r.err);
        test_run_clear(&r);
        run_vmsup(&r, (const char *[]) { "--config", conf, "stop", "--parallel", "2", "7a1c0000-0000-4000-8000-000000000001",
                                         NULL },
                  60000);
        cr_assert_eq(r.exit_code, 64, "%s", r.err);
        cr_assert(strstr(r.err, "--parallel goes with --all"), "%s", r.err);
        test_run_clear(&r);
}
