/* The serial console end to end (real swtpm, QEMU under TCG, the demo guest): the console
 * log bounded by rotation under a flood, `vmsup console` on a pseudo-terminal (attach,
 * type, a second client, --force, Ctrl-], a hard reboot, the guest's stop), and
 * `vmsup console --log --bytes` across a rotation. */
#include "config.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/util.h"
#include "supervisor/control.h"
#include "tests/guestfix.h"
#include "tests/helpers.h"

#define UUID "7d3e9b21-4f6a-4c1e-8a2b-5e0f1c9d3a47"

static char *root, *conf, *spec_path, *console, *vmsup_log, *control_path;

static void make_conf(const char *logs) {
        free(conf);
        conf = test_write_conf(root, "vmsup.conf",
                               &(struct test_conf) { .root = root, .swtpm_off = true,
                                                     .supervisor = "stop_timeout = 20\n", .more = logs });
}

static void setup(void) {
        root = test_mkdtemp();
        cr_assert(asprintf(&console, "%s/log/" UUID "/console.log", root) > 0);
        cr_assert(asprintf(&vmsup_log, "%s/vmsup.log", root) > 0);
        cr_assert(asprintf(&control_path, "%s/run/" UUID "/control.sock", root) > 0);
}

static void teardown(void) {
        test_root_cleanup(root);
        free(conf);
        free(spec_path);
        free(console);
        free(vmsup_log);
        free(control_path);
        conf = spec_path = NULL;
}

TestSuite(console, .init = setup, .fini = teardown, .timeout = 400);

/* A guest without a vTPM (the console does not need one; the suite stays fast). */
static void write_spec(const char *cmdline) {
        free(spec_path);
        spec_path = test_write_spec(root, "guest.json",
                                    &(struct test_spec) { .uuid = UUID, .extra_specs = "", .guest_dir = TEST_GUEST_DIR,
                                                          .hold = true, .cmdline = cmdline });
}

static struct sup start(void) {
        char *argv[] = { VMSUP_BIN, "--config", conf, "run", spec_path, NULL };

        return test_spawn(argv, NULL, vmsup_log, NULL);
}

static int stop_guest(struct sup *s) {
        vmsup_error *err = NULL;
        json_object *ret = test_control(control_path, "stop", NULL, &err);

        cr_assert_not_null(ret, "stop: %s", err ? err->msg : "");
        json_object_put(ret);
        return wait_exit(s, 120000);
}

static long file_size(const char *path) {
        struct stat st;

        return stat(path, &st) == 0 ? (long) st.st_size : -1;
}

static char *log_file(int k) {
        static char path[600];

        if (k < 0)
                snprintf(path, sizeof(path), "%s", console);
        else
                snprintf(path, sizeof(path), "%s.%d", console, k);
        return path;
}

/* The bytes of every kept console log, oldest first (a new buffer, *len bytes). */
static char *all_logs(size_t *len) {
        char *all = NULL;
        size_t n = 0;

        for (int k = 20; k >= -1; k--) {
                FILE *f = fopen(log_file(k), "re");
                char buf[65536];
                size_t r;

                if (!f)
                        continue;
                while ((r = fread(buf, 1, sizeof(buf), f)) > 0) {
                        all = realloc(all, n + r + 1);
                        memcpy(all + n, buf, r);
                        n += r;
                }
                fclose(f);
        }
        if (!all)
                all = calloc(1, 1);
        all[n] = '\0';
        *len = n;
        return all;
}

Test(console, a_flood_is_bounded_by_rotation_and_status_answers_throughout) {
        const long max_size = 65536, backups = 3;
        long worst_ms = 0, n_status = 0, over_100 = 0, total = 0;
        struct sup s;

        make_conf("[logs]\nconsole_max_size = 64K\nconsole_max_backups = 3\n");
        write_spec("vmsup.flood=60");
        s = start();
        json_object_put(test_wait_running(&s, control_path, vmsup_log, 120000));
        free(test_wait_console(console, vmsup_log, "init: flooding the console", 1, 120000));
        /* the flood: status every 100 ms, each answer timed */
        for (long end = monotonic_ms() + 60000; monotonic_ms() < end;) {
                vmsup_error *err = NULL;
                long t0 = monotonic_ms(), dt;
                json_object *st = test_control(control_path, "status", NULL, &err);

                dt = monotonic_ms() - t0;
                cr_assert_not_null(st, "status during the flood: %s", err ? err->msg : "");
                json_object_put(st);
                n_status++;
                worst_ms = dt > worst_ms ? dt : worst_ms;
                over_100 += dt > 100;
                for (int k = -1; k < 20; k++)
                        if (file_size(log_file(k)) > max_size)
                                cr_assert_fail("%s is %ld bytes (max %ld)", log_file(k), file_size(log_file(k)), max_size);
                if (strstr(slurp(console), "init: flood done"))
                        break;
                usleep(100000);
        }
        cr_log_info("status during the flood: %ld answers, the slowest in %ld ms, %ld over 100 ms", n_status, worst_ms,
                    over_100);
        /* 100 ms is the promise; the bound a test can hold on a loaded host is wider (a
         * blocked supervisor would show seconds): bench/console.py measures it */
        cr_assert_lt(worst_ms, 1000, "status took %ld ms during the flood", worst_ms);
        cr_assert_eq(stop_guest(&s), 0, "%s", slurp(vmsup_log));

        for (int k = -1; k < 20; k++) {
                long sz = file_size(log_file(k));

                if (sz < 0)
                        continue;
                cr_assert_leq(sz, max_size, "%s: %ld bytes", log_file(k), sz);
                cr_assert_lt(k, backups, "%s is kept beyond %ld backups", log_file(k), backups);
                total += sz;
        }
        cr_assert_leq(total, (backups + 1) * max_size);
        cr_assert_gt(file_size(log_file(backups - 1)), 0, "the flood did not rotate the log %ld times", backups);
        /* what is kept is the end of the stream, in order: the guest's last lines last */
        {
                size_t len;
                _cleanup_free_ char *text = all_logs(&len);

                cr_assert_not_null(strstr(text, "init: flood done"), "the flood's end is not in the log");
                cr_assert_not_null(strstr(text, "vmsup.flood: the quick brown fox"));
        }
        /* QEMU's log is bounded the same way and the supervisor's own lines say nothing failed */
        cr_assert_null(strstr(slurp(vmsup_log), "is lost until"), "%s", slurp(vmsup_log));
}

/* ---- `vmsup console` on a pseudo-terminal ---- */

struct term {
        pid_t pid;
        int master;
        char *seen; /* everything it showed so far */
        size_t len;
};

static struct term term_open(bool force) {
        struct term t = { 0 };

        t.pid = forkpty(&t.master, NULL, NULL, NULL);
        cr_assert_geq(t.pid, 0, "forkpty: %s", strerror(errno));
        if (t.pid == 0) {
                execl(VMSUP_BIN, VMSUP_BIN, "--config", conf, "console", UUID, force ? "--force" : NULL, (char *) NULL);
                _exit(127);
        }
        fcntl(t.master, F_SETFD, FD_CLOEXEC);
        t.seen = calloc(1, 1);
        return t;
}

/* Read what the terminal shows for up to ms; true when needle appeared (after from). */
static bool term_wait(struct term *t, const char *needle, size_t from, int ms) {
        long end = monotonic_ms() + ms;

        for (;;) {
                struct pollfd p = { .fd = t->master, .events = POLLIN };
                char buf[4096];
                long left = end - monotonic_ms();
                ssize_t n;

                if (t->len >= from && memmem(t->seen + from, t->len - from, needle, strlen(needle)))
                        return true;
                if (left <= 0 || poll(&p, 1, (int) left) <= 0)
                        return false;
                n = read(t->master, buf, sizeof(buf));
                if (n <= 0) /* the client ended (EIO on a pty whose slave is closed) */
                        return t->len >= from && memmem(t->seen + from, t->len - from, needle, strlen(needle));
                t->seen = realloc(t->seen, t->len + (size_t) n + 1);
                memcpy(t->seen + t->len, buf, (size_t) n);
                t->len += (size_t) n;
                t->seen[t->len] = '\0';
        }
}

static void term_type(struct term *t, const char *keys) {
        cr_assert_eq(write(t->master, keys, strlen(keys)), (ssize_t) strlen(keys));
}

/* The client's exit code (waits up to ms; -1 if it did not end). */
static int term_close(struct term *t, int ms) {
        int status = 0;
        long end = monotonic_ms() + ms;
        pid_t r;

        while ((r = waitpid(t->pid, &status, WNOHANG)) == 0 && monotonic_ms() < end) {
                term_wait(t, "\x01\x02\x03", t->len, 100); /* keep the pty drained */
        }
        if (r == 0) {
                kill(t->pid, SIGKILL);
                waitpid(t->pid, &status, 0);
        }
        close(t->master);
        free(t->seen);
        t->seen = NULL;
        return r == 0 ? -1 : WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static void run_cli(struct test_run *r, const char *const *args) {
        test_run_vmsup(r, NULL, args);
}

Test(console, attach_type_refuse_take_over_detach_and_survive_a_hard_reboot) {
        struct test_run r;
        struct term a, b, c;
        struct sup s;
        size_t mark;

        make_conf(NULL);
        write_spec("vmsup.shell");
        s = start();
        /* attached as soon as the supervisor listens: the guest's output from its start */
        for (long end = monotonic_ms() + 60000; access(control_path, F_OK) != 0; usleep(20000))
                cr_assert_lt(monotonic_ms(), end, "no control socket: %s", slurp(vmsup_log));
        a = term_open(false);
        cr_assert(term_wait(&a, "Escape character is ^]", 0, 30000), "%s", a.seen);
        cr_assert(term_wait(&a, "init: shell on the console", 0, 180000), "the guest's output did not reach the console:"
                  "\n%s\nvmsup: %s", a.seen, slurp(vmsup_log));
        cr_assert(memmem(a.seen, a.len, "tpmprobe:", 9), "the guest's first lines are missing:\n%s", a.seen);

        /* typed into the guest's shell, answered on the terminal and kept in the log */
        mark = a.len;
        term_type(&a, "echo console-$((6*7))\r");
        cr_assert(term_wait(&a, "console-42", mark, 30000), "no answer from the guest's shell:\n%s", a.seen + mark);
        free(test_wait_console(console, vmsup_log, "console-42", 1, 10000));
        {
                vmsup_error *err = NULL;
                json_object *st = test_control(control_path, "status", NULL, &err), *v;

                cr_assert_not_null(st);
                cr_assert(json_object_object_get_ex(st, "console_attached", &v));
                cr_assert(json_object_get_boolean(v), "status does not show the attached client");
                json_object_put(st);
        }

        /* a second client is refused, clearly */
        run_cli(&r, (const char *[]) { "--config", conf, "console", UUID, NULL });
        cr_assert_eq(r.exit_code, 75, "%d: %s", r.exit_code, r.err);
        cr_assert_not_null(strstr(r.err, "in use by another client"), "%s", r.err);
        cr_assert_not_null(strstr(r.err, "--force"), "%s", r.err);
        test_run_clear(&r);

        /* --force takes it over: the first is told and ends */
        b = term_open(true);
        cr_assert(term_wait(&a, "another client took the console over", 0, 30000), "%s", a.seen);
        cr_assert_eq(term_close(&a, 10000), 0);
        cr_assert(term_wait(&b, "Escape character is ^]", 0, 30000), "%s", b.seen);
        mark = b.len;
        term_type(&b, "echo forced-$((7*6))\r");
        cr_assert(term_wait(&b, "forced-42", mark, 30000), "%s", b.seen + mark);

        /* Ctrl-] detaches; the guest runs on */
        term_type(&b, "\x1d");
        cr_assert_eq(term_close(&b, 10000), 0);
        {
                vmsup_error *err = NULL;
                json_object *st = test_control(control_path, "status", NULL, &err), *v;

                cr_assert_not_null(st);
                cr_assert(json_object_object_get_ex(st, "state", &v));
                cr_assert_str_eq(json_object_get_string(v), "running");
                cr_assert(json_object_object_get_ex(st, "console_attached", &v));
                cr_assert_not(json_object_get_boolean(v), "status says a client is attached after the detach");
                json_object_put(st);
        }

        /* attached across a hard reboot: the new QEMU's output reaches the same client */
        c = term_open(false);
        cr_assert(term_wait(&c, "Escape character is ^]", 0, 30000), "%s", c.seen);
        /* the replay of this boot's output (its "shell on the console" line among it) follows
         * the line above: an answer typed after it marks where the replay has ended */
        term_type(&c, "echo attached-$((4*4))\r");
        cr_assert(term_wait(&c, "attached-16", 0, 30000), "%s", c.seen);
        mark = c.len;
        run_cli(&r, (const char *[]) { "--config", conf, "reboot", "--hard", UUID, NULL });
        cr_assert_eq(r.exit_code, 0, "%s", r.err);
        test_run_clear(&r);
        cr_assert(term_wait(&c, "init: shell on the console", mark, 180000), "%s", c.seen + mark);
        mark = c.len;
        term_type(&c, "echo rebooted-$((5*5))\r");
        cr_assert(term_wait(&c, "rebooted-25", mark, 30000), "%s", c.seen + mark);

        /* the guest stops: the client is told and ends with 0 */
        cr_assert_eq(stop_guest(&s), 0, "%s", slurp(vmsup_log));
        cr_assert(term_wait(&c, "the console is closed", 0, 30000), "%s", c.seen);
        cr_assert_eq(term_close(&c, 10000), 0);

        /* a guest that is not running has no console to attach to */
        run_cli(&r, (const char *[]) { "--config", conf, "console", UUID, NULL });
        cr_assert_eq(r.exit_code, 69, "%d: %s", r.exit_code, r.err);
        cr_assert_not_null(strstr(r.err, "not running under vmsup"), "%s", r.err);
        test_run_clear(&r);
}

Test(console, log_bytes_reads_the_newest_bytes_across_a_rotation) {
        struct test_run r;
        struct sup s;
        char arg[32];

        make_conf("[logs]\nconsole_max_size = 4K\nconsole_max_backups = 2\n");
        write_spec("vmsup.flood=2");
        s = start();
        free(test_wait_console(console, vmsup_log, "init: holding until the power button", 1, 180000));
        cr_assert_gt(file_size(log_file(0)), 0, "the log was not rotated");

        /* running: the newest N bytes, N reaching into the backup (compared when the guest
         * wrote nothing meanwhile: it is idle, but its kernel may say something) */
        for (int attempt = 0;; attempt++) {
                size_t len, len_after;
                _cleanup_free_ char *all = all_logs(&len), *after = NULL;
                long n = file_size(console) + 1000;

                cr_assert_leq((size_t) n, len);
                snprintf(arg, sizeof(arg), "%ld", n);
                run_cli(&r, (const char *[]) { "--config", conf, "console", UUID, "--log", "--bytes", arg, NULL });
                cr_assert_eq(r.exit_code, 0, "%s", r.err);
                after = all_logs(&len_after);
                if ((len != len_after || memcmp(all, after, len) != 0) && attempt < 5) {
                        test_run_clear(&r);
                        continue;
                }
                cr_assert_eq((long) strlen(r.out), n, "%zu bytes instead of %ld", strlen(r.out), n);
                cr_assert(memcmp(r.out, all + len - (size_t) n, (size_t) n) == 0, "not the newest bytes in order");
                test_run_clear(&r);
                break;
        }
        cr_assert_eq(stop_guest(&s), 0, "%s", slurp(vmsup_log));

        /* stopped: the default (Nova's 100 KiB) is more than is kept: all of it, oldest first */
        {
                size_t len;
                _cleanup_free_ char *all = all_logs(&len);

                cr_assert_leq(len, 3 * 4096);
                run_cli(&r, (const char *[]) { "--config", conf, "console", UUID, "--log", NULL });
                cr_assert_eq(r.exit_code, 0, "%s", r.err);
                cr_assert_eq(strlen(r.out), len);
                cr_assert_str_eq(r.out, all);
                cr_assert_not_null(strstr(r.out, "init: holding"), "%s", r.out);
                test_run_clear(&r);
        }

        /* bad input: named, 64; a guest without a log: 66 */
        run_cli(&r, (const char *[]) { "--config", conf, "console", UUID, "--log", "--bytes", "0", NULL });
        cr_assert_eq(r.exit_code, 64);
        cr_assert_not_null(strstr(r.err, "--bytes: '0'"), "%s", r.err);
        test_run_clear(&r);
        run_cli(&r, (const char *[]) { "--config", conf, "console", UUID, "--bytes", "10", NULL });
        cr_assert_eq(r.exit_code, 64);
        cr_assert_not_null(strstr(r.err, "--bytes goes with --log"), "%s", r.err);
        test_run_clear(&r);
        run_cli(&r, (const char *[]) { "--config", conf, "console", "0b7d3e92-14f6-4c1e-8a2b-5e0f1c9d3a47", "--log", NULL });
        cr_assert_eq(r.exit_code, 66, "%d: %s", r.exit_code, r.err);
        cr_assert_not_null(strstr(r.err, "has no console log"), "%s", r.err);
        test_run_clear(&r);
}

/* QEMU's own output goes through the supervisor too: TCG's translation log (HMP `log
 * in_asm`, written to QEMU's stderr) floods it, and qemu.log stays within its bound. */
Test(console, qemu_log_is_bounded_the_same_way) {
        _cleanup_free_ char *qemu_log = NULL, *qemu_log0 = NULL;
        struct test_run r;
        struct sup s;
        long total = 0;

        cr_assert(asprintf(&qemu_log, "%s/log/" UUID "/qemu.log", root) > 0);
        cr_assert(asprintf(&qemu_log0, "%s.0", qemu_log) > 0);
        make_conf("[logs]\nconsole_max_size = 8K\nconsole_max_backups = 1\n");
        write_spec(NULL);
        s = start();
        json_object_put(test_wait_running(&s, control_path, vmsup_log, 120000));
        run_cli(&r, (const char *[]) { "--config", conf, "qmp", UUID, "human-monitor-command",
                                       "{\"command-line\": \"log in_asm\"}", NULL });
        cr_assert_eq(r.exit_code, 0, "%s", r.err);
        test_run_clear(&r);
        for (long end = monotonic_ms() + 60000; file_size(qemu_log0) < 0; usleep(100000))
                cr_assert_lt(monotonic_ms(), end, "QEMU's log was not rotated: %ld bytes", file_size(qemu_log));
        run_cli(&r, (const char *[]) { "--config", conf, "qmp", UUID, "human-monitor-command",
                                       "{\"command-line\": \"log none\"}", NULL });
        cr_assert_eq(r.exit_code, 0, "%s", r.err);
        test_run_clear(&r);
        cr_assert_eq(stop_guest(&s), 0, "%s", slurp(vmsup_log));
        for (int k = -1; k < 5; k++) {
                char path[620];
                long sz;

                snprintf(path, sizeof(path), k < 0 ? "%s" : "%s.%d", qemu_log, k);
                sz = file_size(path);
                if (sz < 0)
                        continue;
                cr_assert_leq(sz, 8192, "%s: %ld bytes", path, sz);
                cr_assert_lt(k, 1, "%s: more backups than kept", path);
                total += sz;
        }
        cr_assert_leq(total, 2 * 8192);
        cr_assert_not_null(strstr(slurp(qemu_log), "IN:"), "%s", slurp(qemu_log));
}
