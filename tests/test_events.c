/* `vmsup events`: the lifecycle of a guest as a stream, and a subscriber that does not
 * read. Real swtpm, QEMU (TCG), Barbican and the demo guest. */
#include "config.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "common/util.h"
#include "tests/barbican_fixture.h"
#include "tests/guestfix.h"
#include "tests/helpers.h"

#define UUID "2c9f4d7e-5a1b-4e8c-b3d6-7f0a2e4c6b81"

static char *root, *conf, *spec_path, *console, *vmsup_log, *control_path, *events_out, *all_out;

static void setup(void) {
        root = test_mkdtemp();
        conf = test_write_conf(root, "vmsup.conf",
                               &(struct test_conf) { .root = root, .supervisor = "stop_timeout = 30\n",
                                                     .barbican_url = test_barbican_url(), .barbican = "retries = 1\n" });
        cr_assert(asprintf(&console, "%s/log/" UUID "/console.log", root) > 0);
        cr_assert(asprintf(&vmsup_log, "%s/vmsup.log", root) > 0);
        cr_assert(asprintf(&control_path, "%s/run/" UUID "/control.sock", root) > 0);
        cr_assert(asprintf(&events_out, "%s/events.out", root) > 0);
        cr_assert(asprintf(&all_out, "%s/events-all.out", root) > 0);
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
        free(events_out);
        free(all_out);
}

TestSuite(events, .init = setup, .fini = teardown, .timeout = 600);

static struct sup start(void) {
        char *argv[] = { VMSUP_BIN, "--config", conf, "run", "--token-fd", "3", spec_path, NULL };

        return test_spawn(argv, NULL, vmsup_log, "project-of-the-owner");
}

static void wait_for_file(const char *path, const struct sup *s) {
        struct stat st;

        for (long deadline = monotonic_ms() + 120000; stat(path, &st) < 0; usleep(20000)) {
                struct pollfd p = { .fd = s->pidfd, .events = POLLIN };

                cr_assert(monotonic_ms() < deadline, "no %s: %s", path, slurp(vmsup_log));
                cr_assert_eq(poll(&p, 1, 0), 0, "vmsup exited: %s", slurp(vmsup_log));
        }
}

static void control_ok(const char *cmd, json_object *extra) {
        vmsup_error *err = NULL;
        json_object *ret = test_control(control_path, cmd, extra, &err);

        cr_assert(ret || !err, "%s: %s\n%s", cmd, err ? err->msg : "", slurp(vmsup_log));
        json_object_put(ret);
}

static void qmp(const char *command) {
        json_object *req = json_object_new_object();

        json_object_object_add(req, "command", json_object_new_string(command));
        control_ok("qmp", req);
}

/* "EVENT/reason" (or "EVENT") of each JSON line of the stream in file, for guest UUID,
 * joined by spaces. */
static char *sequence(const char *file) {
        char *text = strdup(slurp(file)), *save = NULL, *out = calloc(1, 8192);

        for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
                json_object *o = json_tokener_parse(line), *ev, *uuid, *reason;

                if (o && json_object_object_get_ex(o, "event", &ev) && json_object_object_get_ex(o, "uuid", &uuid) &&
                    streq(json_object_get_string(uuid), UUID)) {
                        if (out[0])
                                strcat(out, " ");
                        strcat(out, json_object_get_string(ev));
                        if (json_object_object_get_ex(o, "reason", &reason)) {
                                strcat(out, "/");
                                strcat(out, json_object_get_string(reason));
                        }
                }
                json_object_put(o);
        }
        free(text);
        return out;
}

/* A start, a pause and resume, a hard reboot and a stop, in order, for one guest and in
 * the stream of every guest (started before the guest was). */
Test(events, the_lifecycle_in_order) {
        char *argv_one[] = { VMSUP_BIN, "--config", conf, "events", UUID, "--json", NULL };
        char *argv_all[] = { VMSUP_BIN, "--config", conf, "events", "--json", NULL };
        char *argv_human[] = { VMSUP_BIN, "--config", conf, "events", UUID, NULL };
        struct sup s, one, all, human;
        char *human_out = NULL;
        json_object *req;
        char *seq, *text, *line;
        const char *want = "STARTED/boot PAUSED RESUMED TPM_STATE_SEALED STOPPED/reboot STARTED/reboot "
                           "TPM_STATE_SEALED STOPPED/shutdown";

        all = test_spawn(argv_all, NULL, all_out, NULL);
        s = start();
        wait_for_file(control_path, &s);
        one = test_spawn(argv_one, NULL, events_out, NULL);
        cr_assert(asprintf(&human_out, "%s/events-human.out", root) > 0);
        human = test_spawn(argv_human, NULL, human_out, NULL);
        json_object_put(test_wait_running(&s, control_path, vmsup_log, 180000));
        test_wait_console(console, vmsup_log, "init: holding until the power button", 1, 180000);

        qmp("stop");
        qmp("cont");

        req = json_object_new_object();
        json_object_object_add(req, "hard", json_object_new_boolean(1));
        control_ok("reboot", req);
        json_object_put(test_wait_running(&s, control_path, vmsup_log, 180000));
        test_wait_console(console, vmsup_log, "init: holding until the power button", 2, 180000);

        control_ok("stop", NULL);
        cr_assert_eq(wait_exit(&s, 120000), 0, "%s", slurp(vmsup_log));
        /* one guest: the stream ends with the guest, exit 0 after STOPPED */
        cr_assert_eq(wait_exit(&one, 30000), 0, "%s", slurp(events_out));
        seq = sequence(events_out);
        cr_assert_str_eq(seq, want, "%s", slurp(events_out));
        free(seq);

        /* every guest: the run dir's new guest was picked up (with what it did since the
         * scan before), and it goes on after the guest ended */
        for (long deadline = monotonic_ms() + 10000; monotonic_ms() < deadline; usleep(50000)) {
                seq = sequence(all_out);
                if (streq(seq, want))
                        break;
                free(seq);
                seq = NULL;
        }
        cr_assert_not_null(seq, "%s", slurp(all_out));
        free(seq);
        cr_assert_eq(kill(all.pid, 0), 0, "vmsup events without a UUID ended: %s", slurp(all_out));
        kill(all.pid, SIGTERM);
        wait_exit(&all, 10000);

        /* the guest is gone: nothing to follow */
        {
                struct test_run r;

                test_run_vmsup(&r, NULL, (const char *[]) { "--config", conf, "events", UUID, NULL });
                cr_assert_eq(r.exit_code, 69, "%s%s", r.out, r.err);
                cr_assert(strstr(r.err, "guest " UUID " is not running under vmsup"), "%s", r.err);
                test_run_clear(&r);
        }
        /* the lines people read: time, uuid, name, event, details */
        cr_assert_eq(wait_exit(&human, 30000), 0, "%s", slurp(human_out));
        text = strdup(slurp(human_out));
        line = strstr(text, " " UUID " demo STARTED reason=boot\n");
        cr_assert_not_null(line, "%s", text);
        cr_assert(line - text == 20 && text[4] == '-' && text[10] == 'T' && text[19] == 'Z', "%s", text);
        cr_assert(strstr(text, " " UUID " demo STOPPED reason=shutdown\n"), "%s", text);
        free(text);
        free(human_out);
}

/* A raw subscriber on the control socket: connected and asked, its reply unread. */
static int subscribe(void) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        static const char req[] = "{\"cmd\": \"events\"}\n";

        cr_assert_geq(fd, 0);
        snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", control_path);
        cr_assert_eq(connect(fd, (struct sockaddr *) &sa, sizeof(sa)), 0, "%s", strerror(errno));
        cr_assert_eq(write(fd, req, sizeof(req) - 1), (ssize_t) sizeof(req) - 1);
        return fd;
}

/* The next line on fd (blocking, within timeout_ms), into buf; false at the end. */
static bool read_line(int fd, char *buf, size_t size, int timeout_ms) {
        size_t n = 0;

        while (n + 1 < size) {
                struct pollfd p = { .fd = fd, .events = POLLIN };
                char c;

                cr_assert_eq(poll(&p, 1, timeout_ms), 1, "no line within %d ms (have '%.*s')", timeout_ms, (int) n, buf);
                if (read(fd, &c, 1) != 1)
                        return false;
                if (c == '\n')
                        break;
                buf[n++] = c;
        }
        buf[n] = '\0';
        return true;
}

/* A subscriber that stops reading: the supervisor goes on (status, stop/cont answer);
 * when it reads again it has the lines kept for it, then LOST with what it missed. */
Test(events, a_subscriber_that_does_not_read_never_slows_the_supervisor) {
        struct sup s;
        int slow, extra[16], n_extra = 0;
        char line[8192];
        long lost = 0, paused = 0, resumed = 0, after_lost = 0;
        bool seen_lost = false;
        vmsup_error *err = NULL;
        json_object *st;

        s = start();
        json_object_put(test_wait_running(&s, control_path, vmsup_log, 180000));
        test_wait_console(console, vmsup_log, "init: holding until the power button", 1, 180000);
        slow = subscribe();

        for (int i = 0; i < 400; i++) {
                qmp("stop");
                qmp("cont");
                if (i % 50 == 0) {
                        st = test_control(control_path, "status", NULL, &err);
                        cr_assert_not_null(st, "status with a subscriber that does not read: %s",
                                           err ? err->msg : "");
                        json_object_put(st);
                }
        }

        /* subscribers are capped (16), and do not use up the control connections */
        for (n_extra = 0; n_extra < 15; n_extra++)
                extra[n_extra] = subscribe();
        {
                int over = subscribe();

                cr_assert(read_line(over, line, sizeof(line), 30000));
                cr_assert(strstr(line, "too many event subscribers (16)"), "%s", line);
                close(over);
        }
        st = test_control(control_path, "status", NULL, &err);
        cr_assert_not_null(st, "status with 16 subscribers: %s", err ? err->msg : "");
        json_object_put(st);
        for (int i = 0; i < n_extra; i++)
                close(extra[i]);

        /* it reads again: its reply, what was kept, then LOST */
        cr_assert(read_line(slow, line, sizeof(line), 30000));
        cr_assert(strstr(line, "\"ok\":true"), "%s", line);
        while (!seen_lost) {
                json_object *o, *v;

                cr_assert(read_line(slow, line, sizeof(line), 30000), "the stream ended before LOST");
                o = json_tokener_parse(line);
                cr_assert(o && json_object_object_get_ex(o, "event", &v), "%s", line);
                if (streq(json_object_get_string(v), "LOST")) {
                        seen_lost = true;
                        cr_assert(json_object_object_get_ex(o, "count", &v));
                        lost = json_object_get_int64(v);
                } else if (streq(json_object_get_string(v), "PAUSED"))
                        paused++;
                else if (streq(json_object_get_string(v), "RESUMED"))
                        resumed++;
                json_object_put(o);
        }
        /* each of the 800 events came, or is counted in LOST */
        cr_assert_gt(lost, 0);
        cr_assert_eq(paused + resumed + lost, 800, "kept %ld + lost %ld, of 800 events", paused + resumed, lost);

        /* and it follows again */
        qmp("stop");
        qmp("cont");
        while (after_lost < 2) {
                cr_assert(read_line(slow, line, sizeof(line), 30000), "the stream ended");
                if (strstr(line, "\"event\":\"PAUSED\"") || strstr(line, "\"event\":\"RESUMED\""))
                        after_lost++;
        }
        close(slow);

        control_ok("stop", NULL);
        cr_assert_eq(wait_exit(&s, 120000), 0, "%s", slurp(vmsup_log));
}
