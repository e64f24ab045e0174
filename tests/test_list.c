/* `vmsup list`: the guests of a host's state dir and their states, asked of their
 * supervisors all at once. Here the supervisors are stand-ins on the control socket (one
 * that answers a status, one that never does); test_run's handed-over guest checks the
 * list against a real supervisor. */
#include "config.h"

#include <criterion/criterion.h>
#include <fcntl.h>
#include <signal.h>
#include <json-c/json.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/util.h"
#include "tests/guestfix.h"
#include "tests/helpers.h"

#define GUESTS 50

static char *root, *conf;

static void setup(void) {
        root = test_mkdtemp();
        conf = test_write_conf(root, "vmsup.conf",
                               &(struct test_conf) { .root = root, .supervisor = "stop_timeout = 3\n",
                                                     .barbican_url = "http://127.0.0.1:1", .barbican = "retries = 1\n" });
}

static void teardown(void) {
        free(conf);
        test_root_cleanup(root);
}

TestSuite(list, .init = setup, .fini = teardown, .timeout = 60);

static int mkdir_p_test(const char *dir) {
        char cmd[1024];

        snprintf(cmd, sizeof(cmd), "mkdir -p '%s'", dir);
        return system(cmd);
}

static int count_lines(const char *s) {
        int n = 0;

        for (; *s; s++)
                n += *s == '\n';
        return n;
}

static void uuid_of(int i, char *buf, size_t size) {
        snprintf(buf, size, "00000000-0000-4000-8000-%012d", i);
}

/* A guest's state dir with its spec copy; marker (or NULL) written as a marker file. */
static void make_guest(int i, const char *marker, const char *text) {
        char uuid[40], dir[512], *spec;
        struct test_spec s = { .uuid = uuid, .name = "g", .guest_dir = "/nonexistent" };

        uuid_of(i, uuid, sizeof(uuid));
        snprintf(dir, sizeof(dir), "%s/state/%s", root, uuid);
        cr_assert_eq(mkdir_p_test(dir), 0);
        s.extra_specs = i % 2 ? "\"hw:tpm_version\": \"1.2\", \"hw:tpm_model\": \"tpm-tis\"" : NULL;
        spec = test_write_spec(dir, "guest.json", &s);
        free(spec);
        if (marker)
                free(test_write_file(dir, marker, text, 0600));
}

struct fake {
        int fd;
        bool answer;
        bool refuse; /* answers a refusal at once, unread, and closes (as a supervisor with too many clients) */
        char uuid[40];
};

/* A supervisor stand-in: answers one status (or holds the connection without a word). */
static void *serve(void *arg) {
        struct fake *f = arg;

        for (;;) {
                int c = accept4(f->fd, NULL, NULL, SOCK_CLOEXEC);
                char buf[4096], reply[512];
                ssize_t n;

                if (c < 0)
                        return NULL;
                if (f->refuse) {
                        static const char no[] = "{\"ok\": false, \"error\": \"too many control connections\", "
                                                 "\"kind\": \"busy\"}\n";

                        (void) !write(c, no, strlen(no));
                        close(c);
                        continue;
                }
                n = read(c, buf, sizeof(buf));
                if (!f->answer || n <= 0)
                        continue; /* leaks c on purpose: a stuck supervisor keeps it open */
                snprintf(reply, sizeof(reply),
                         "{\"ok\": true, \"return\": {\"uuid\": \"%s\", \"state\": \"running\", \"qemu_status\": "
                         "\"running\", \"pid\": 4242, \"uptime_s\": 3725}}\n",
                         f->uuid);
                (void) !write(c, reply, strlen(reply));
                close(c);
        }
}

static void fake_supervisor(int i, bool answer, struct fake *f, pthread_t *t) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        char dir[512];

        uuid_of(i, f->uuid, sizeof(f->uuid));
        f->answer = answer;
        f->refuse = i == 6;
        snprintf(dir, sizeof(dir), "%s/run/%s", root, f->uuid);
        cr_assert_eq(mkdir_p_test(dir), 0);
        cr_assert_lt(strlen(dir) + sizeof("/control.sock"), sizeof(sa.sun_path));
        memcpy(sa.sun_path, dir, strlen(dir));
        strcat(sa.sun_path, "/control.sock");
        f->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        cr_assert(f->fd >= 0);
        cr_assert_eq(bind(f->fd, (struct sockaddr *) &sa, sizeof(sa)), 0);
        cr_assert_eq(listen(f->fd, 64), 0);
        if (answer)
                cr_assert_eq(pthread_create(t, NULL, serve, f), 0);
}

static json_object *find(json_object *a, int i) {
        char uuid[40];

        uuid_of(i, uuid, sizeof(uuid));
        for (size_t k = 0; k < json_object_array_length(a); k++) {
                json_object *o = json_object_array_get_idx(a, k), *u;

                if (json_object_object_get_ex(o, "uuid", &u) && streq(json_object_get_string(u), uuid))
                        return o;
        }
        cr_assert_fail("guest %s is not in the list", uuid);
        return NULL;
}

static const char *get(json_object *o, const char *key) {
        json_object *v;

        return json_object_object_get_ex(o, key, &v) && v ? json_object_get_string(v) : "(null)";
}

Test(list, every_guest_with_its_state_and_a_stuck_supervisor_holds_nobody) {
        struct fake running, stuck[3], refusing;
        pthread_t t, t2;
        struct test_run r;
        json_object *a, *o;

        for (int i = 0; i < GUESTS; i++)
                make_guest(i, i == 2 ? "migrated-out" : i == 3 || i == 5 ? "incoming" : NULL,
                           i == 2   ? "to 10.0.0.2:49152 at 2026-12-07 04:00:00 UTC\n"
                           : i == 5 ? "committed from 10.0.0.1 at 2026-12-07 04:00:00 UTC, unconfirmed\n"
                                    : "from 10.0.0.1\n");
        /* files in the state dir that are no guest */
        free(test_write_file(root, "state/guest-ids", "x\n", 0600));
        {
                char d[512];

                snprintf(d, sizeof(d), "%s/state/not-a-uuid", root);
                cr_assert_eq(mkdir_p_test(d), 0);
        }
        fake_supervisor(1, true, &running, &t);
        fake_supervisor(6, true, &refusing, &t2);
        for (int k = 0; k < 3; k++)
                fake_supervisor(10 + k, false, &stuck[k], NULL);

        /* the supervisor that answers is given time to, on a loaded machine too */
        test_run_vmsup(&r, NULL, (const char *[]) { "--config", conf, "list", "--json", "--timeout", "3", NULL });
        cr_assert_eq(r.exit_code, 0, "%s", r.err);
        a = json_tokener_parse(r.out);
        cr_assert(a && json_object_is_type(a, json_type_array), "%s", r.out);
        cr_assert_eq(json_object_array_length(a), GUESTS, "%s", r.out);
        o = find(a, 1);
        cr_assert(streq(get(o, "state"), "running") && streq(get(o, "pid"), "4242") && streq(get(o, "uptime_s"), "3725"),
                  "%s", json_object_to_json_string(o));
        cr_assert(strstr(get(o, "tpm"), "\"1.2\"") && strstr(get(o, "tpm"), "tpm-tis"), "%s", get(o, "tpm"));
        o = find(a, 2);
        cr_assert(streq(get(o, "state"), "migrated-out") && strstr(get(o, "migrated_out"), "to 10.0.0.2:49152"), "%s",
                  json_object_to_json_string(o));
        cr_assert(streq(get(find(a, 3), "state"), "incoming"));
        cr_assert(streq(get(find(a, 5), "state"), "unconfirmed"), "%s", json_object_to_json_string(find(a, 5)));
        o = find(a, 4);
        cr_assert(streq(get(o, "state"), "stopped") && streq(get(o, "pid"), "(null)"), "%s", json_object_to_json_string(o));
        cr_assert(strstr(get(o, "tpm"), "\"2.0\"") && strstr(get(o, "tpm"), "tpm-crb"), "%s", get(o, "tpm"));
        for (int k = 0; k < 3; k++)
                cr_assert(streq(get(find(a, 10 + k), "state"), "not-answering"), "%s",
                          json_object_to_json_string(find(a, 10 + k)));
        /* its refusal is read even though it did not read our request */
        o = find(a, 6);
        cr_assert(streq(get(o, "state"), "not-answering") && strstr(get(o, "error"), "too many control connections"),
                  "%s", json_object_to_json_string(o));
        json_object_put(a);
        test_run_clear(&r);

        /* the table says the same */
        test_run_vmsup(&r, NULL, (const char *[]) { "--config", conf, "list", "--timeout", "3", NULL });
        cr_assert_eq(r.exit_code, 0, "%s", r.err);
        cr_assert(strstr(r.out, "UUID ") && strstr(r.out, "STATE"), "%s", r.out);
        cr_assert(strstr(r.out, "00000000-0000-4000-8000-000000000001  g                 running        4242     1.2 tpm-tis"),
                  "%s", r.out);
        cr_assert(strstr(r.out, "1h02m"), "%s", r.out);
        cr_assert(strstr(r.out, "000000000002  g                 migrated-out"), "%s", r.out);
        cr_assert_eq(count_lines(r.out), GUESTS + 1, "%s", r.out);
        test_run_clear(&r);
}

Test(list, a_bad_timeout_is_a_usage_error) {
        struct test_run r;

        test_run_vmsup(&r, NULL, (const char *[]) { "--config", conf, "list", "--timeout", "0", NULL });
        cr_assert_eq(r.exit_code, 64, "%s", r.err);
        cr_assert(strstr(r.err, "--timeout takes seconds"), "%s", r.err);
        test_run_clear(&r);
}

Test(list, a_host_without_guests) {
        struct test_run r;

        test_run_vmsup(&r, NULL, (const char *[]) { "--config", conf, "list", "--json", NULL });
        cr_assert_eq(r.exit_code, 0, "%s", r.err);
        cr_assert(strstr(r.out, "[") && strstr(r.out, "]") && !strstr(r.out, "uuid"), "%s", r.out);
        test_run_clear(&r);
}

/* A `vmsup run` stand-in: holds the state dir's lock (flock, as guest_dirs_lock()) with
 * "run" among its arguments, and no control socket: a supervisor in its start. */
static pid_t hold_lock_as_run(int i, int *ret_hold) {
        char dir[512], uuid[40];

        uuid_of(i, uuid, sizeof(uuid));
        snprintf(dir, sizeof(dir), "%s/state/%s", root, uuid);
        return test_hold_lock_as_run(dir, ret_hold);
}

Test(list, a_supervisor_still_starting_is_starting_with_its_pid) {
        char uuid[40], dir[512], pidtext[32];
        struct test_run r;
        json_object *a, *o;
        pid_t starting;
        int fd, hold;

        make_guest(1, NULL, NULL);
        make_guest(2, NULL, NULL);
        starting = hold_lock_as_run(1, &hold);
        /* another vmsup verb (delete, resize) holds guest 2's lock: it is stopped all the same */
        uuid_of(2, uuid, sizeof(uuid));
        snprintf(dir, sizeof(dir), "%s/state/%s", root, uuid);
        fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        cr_assert_geq(fd, 0);
        cr_assert_eq(flock(fd, LOCK_EX), 0);
        /* the child has its lock once /proc/locks says so */
        for (long deadline = monotonic_ms() + 30000;;) {
                size_t len;
                char *locks = (char *) test_read_file("/proc/locks", &len);
                char needle[32];

                locks[len < (1 << 20) ? len : len - 1] = '\0';
                snprintf(needle, sizeof(needle), " %d ", (int) starting);
                if (strstr(locks, needle)) {
                        free(locks);
                        break;
                }
                free(locks);
                cr_assert_lt(monotonic_ms(), deadline, "the stand-in did not take the lock");
                usleep(20000);
        }

        test_run_vmsup(&r, NULL, (const char *[]) { "--config", conf, "list", "--json", NULL });
        kill(starting, SIGKILL);
        waitpid(starting, NULL, 0);
        close(hold);
        close(fd);
        cr_assert_eq(r.exit_code, 0, "%s", r.err);
        a = json_tokener_parse(r.out);
        cr_assert(a && json_object_array_length(a) == 2, "%s", r.out);
        o = find(a, 1);
        snprintf(pidtext, sizeof(pidtext), "%d", (int) starting);
        cr_assert(streq(get(o, "state"), "starting") && streq(get(o, "pid"), pidtext), "%s (the stand-in is %s)",
                  json_object_to_json_string(o), pidtext);
        o = find(a, 2);
        cr_assert(streq(get(o, "state"), "stopped") && streq(get(o, "pid"), "(null)"), "%s", json_object_to_json_string(o));
        json_object_put(a);
        test_run_clear(&r);
}
