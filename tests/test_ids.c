/* One uid per guest (supervisor/guestids.c, supervisor/confine.c, tpmstate/sync.c): the id
 * allocator, then real guests (swtpm, QEMU under TCG, the demo guest) whose swtpm and QEMU
 * must not reach each other's files, and the start-up recovery that seals only what the
 * guest's own swtpm left. */
#include "config.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/proc.h"
#include "common/util.h"
#include "supervisor/control.h"
#include "supervisor/guestids.h"
#include "supervisor/hostconfig.h"
#include "tests/barbican_fixture.h"
#include "tests/guestfix.h"
#include "tests/helpers.h"

#define UUID_A "3a0e6c1d-5b2f-4e7a-9c8d-1f2e3a4b5c6d"
#define UUID_B "7d1c2b3a-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
#define UUID_C "0b9a8c7d-6e5f-4d3c-9b2a-1c0d9e8f7a6b"
#define NOBODY 65534

static char *root;

/* ---- the allocator ----------------------------------------------------------------- */

static void unit_setup(void) {
        root = test_mkdtemp();
}

static void unit_teardown(void) {
        test_rmtree(root);
        free(root);
}

TestSuite(ids, .init = unit_setup, .fini = unit_teardown, .timeout = 60);

static bool id_taken(uint32_t id) {
        return getpwuid(id) || getgrgid(id);
}

static char *registry(void) {
        static char buf[8192];
        char path[512];
        FILE *f;
        size_t n;

        snprintf(path, sizeof(path), "%s/" GUEST_IDS_FILE, root);
        f = fopen(path, "re");
        cr_assert_not_null(f, "no %s", path);
        n = fread(buf, 1, sizeof(buf) - 1, f);
        buf[n] = '\0';
        fclose(f);
        return buf;
}

Test(ids, ranges_parse_and_bad_ones_are_refused) {
        static const char *const bad[] = { "", "5", "0-10", "7-7", "10-5", "1-4294967295", "1-", "-9", "a-b",
                                           "1-2x", "12345678901-12345678902", " 1-9" };
        uint32_t first = 9, last = 9;
        struct host_config cfg = { 0 };
        vmsup_error *err = NULL;
        char *conf;

        cr_assert_eq(guest_ids_parse_range("1000-1001", &first, &last), 0);
        cr_assert(first == 1000 && last == 1001);
        cr_assert_eq(guest_ids_parse_range("none", &first, &last), 0);
        cr_assert(first == 0 && last == 0);
        for (size_t i = 0; i < ARRAY_SIZE(bad); i++)
                cr_assert_eq(guest_ids_parse_range(bad[i], &first, &last), -EINVAL, "'%s' was taken", bad[i]);

        /* the default, and what a bad setting says */
        cr_assert_eq(host_config_load("/nonexistent/vmsup.conf", true, &cfg, &err), 0);
        cr_assert(cfg.security.guest_ids[0] == 1879048192u && cfg.security.guest_ids[1] == 1879113727u);
        host_config_clear(&cfg);
        conf = test_write_file(root, "bad.conf", "[security]\nguest_ids = 20-10\n", 0600);
        cr_assert_lt(host_config_load(conf, false, &cfg, &err), 0);
        cr_assert(strstr(err->msg, ":2: [security] guest_ids: '20-10' is not FIRST-LAST"), "%s", err->msg);
        cr_assert_eq(err->kind, VMSUP_ERR_CONFIG);
        vmsup_error_free(err);
        free(conf);
}

Test(ids, guests_get_distinct_pairs_and_keep_them) {
        struct guest_ids a, b, c, again;
        vmsup_error *err = NULL;
        uint32_t first = 1879048192u;

        cr_assert_eq(guest_ids_acquire(root, first, first + 99, UUID_A, &a, &err), 0, "%s", err ? err->msg : "");
        cr_assert_eq(guest_ids_acquire(root, first, first + 99, UUID_B, &b, &err), 0, "%s", err ? err->msg : "");
        cr_assert_eq(guest_ids_acquire(root, first, first + 99, UUID_C, &c, &err), 0, "%s", err ? err->msg : "");
        cr_assert(a.qemu == a.swtpm + 1 && b.qemu == b.swtpm + 1 && c.qemu == c.swtpm + 1);
        cr_assert(a.swtpm >= first && c.qemu <= first + 99);
        cr_assert(a.qemu < b.swtpm && b.qemu < c.swtpm, "pairs overlap: %u %u %u", a.swtpm, b.swtpm, c.swtpm);
        /* across restarts (a new call reads the registry): the same ids */
        cr_assert_eq(guest_ids_acquire(root, first, first + 99, UUID_B, &again, &err), 0);
        cr_assert(again.swtpm == b.swtpm && again.qemu == b.qemu);
        cr_assert(strstr(registry(), UUID_B " "), "%s", registry());
        /* even when the range changed since */
        cr_assert_eq(guest_ids_acquire(root, 2000000000u, 2000000099u, UUID_A, &again, &err), 0);
        cr_assert(again.swtpm == a.swtpm);
}

Test(ids, ids_of_users_and_groups_are_skipped) {
        struct guest_ids a, b;
        vmsup_error *err = NULL;

        /* nobody and nogroup are 65534 on Debian: the pair 65533-65534 must be skipped */
        cr_assert(id_taken(NOBODY), "this test needs a user or group with id 65534");
        cr_assert_eq(guest_ids_acquire(root, 65533, 65600, UUID_A, &a, &err), 0, "%s", err ? err->msg : "");
        cr_assert_eq(guest_ids_acquire(root, 65533, 65600, UUID_B, &b, &err), 0, "%s", err ? err->msg : "");
        cr_assert(a.swtpm != NOBODY && a.qemu != NOBODY && a.swtpm >= 65535, "got %u-%u", a.swtpm, a.qemu);
        cr_assert(!id_taken(a.swtpm) && !id_taken(a.qemu) && !id_taken(b.swtpm) && !id_taken(b.qemu));
        cr_assert_neq(a.swtpm, b.swtpm);
}

Test(ids, a_full_range_is_refused_and_a_release_makes_room) {
        struct guest_ids a, b;
        vmsup_error *err = NULL;

        cr_assert_eq(guest_ids_acquire(root, 1879048192u, 1879048194u, UUID_A, &a, &err), 0);
        /* 3 ids: room for one pair only */
        cr_assert_lt(guest_ids_acquire(root, 1879048192u, 1879048194u, UUID_B, &b, &err), 0);
        cr_assert_eq(err->kind, VMSUP_ERR_BUSY);
        cr_assert(strstr(err->msg, "no free ids left in [security] guest_ids 1879048192-1879048194"), "%s", err->msg);
        err = vmsup_error_free(err);
        cr_assert_eq(guest_ids_release(root, UUID_A, &err), 0, "%s", err ? err->msg : "");
        cr_assert_null(strstr(registry(), UUID_A), "%s", registry());
        cr_assert_eq(guest_ids_release(root, UUID_A, &err), 0, "releasing twice is fine");
        cr_assert_eq(guest_ids_acquire(root, 1879048192u, 1879048194u, UUID_B, &b, &err), 0);
        cr_assert_eq(b.swtpm, a.swtpm);
}

Test(ids, a_damaged_registry_is_refused) {
        struct guest_ids a;
        vmsup_error *err = NULL;
        char *path;

        path = test_write_file(root, GUEST_IDS_FILE, "# comment\n" UUID_A " 1879048192\n" UUID_B " 1879048193\n", 0600);
        cr_assert_lt(guest_ids_acquire(root, 1879048192u, 1879113727u, UUID_C, &a, &err), 0);
        cr_assert_eq(err->kind, VMSUP_ERR_DATA);
        cr_assert(strstr(err->msg, "line 3 is not 'UUID FIRST' or repeats a guest or an id"), "%s", err->msg);
        err = vmsup_error_free(err);
        free(path);
        path = test_write_file(root, GUEST_IDS_FILE, UUID_A " 1879048192", 0600); /* torn: no newline */
        cr_assert_lt(guest_ids_acquire(root, 1879048192u, 1879113727u, UUID_C, &a, &err), 0);
        cr_assert(strstr(err->msg, "line 1 is not"), "%s", err->msg);
        vmsup_error_free(err);
        free(path);
}

Test(ids, guests_starting_at_once_never_share_ids) {
        enum { N = 12 };
        int pipes[N][2];
        pid_t pids[N];
        uint32_t got[N];

        for (int i = 0; i < N; i++) {
                cr_assert_eq(pipe2(pipes[i], O_CLOEXEC), 0);
                pids[i] = fork();
                cr_assert_geq(pids[i], 0);
                if (pids[i] == 0) {
                        char uuid[37];
                        struct guest_ids ids;
                        vmsup_error *err = NULL;

                        snprintf(uuid, sizeof(uuid), "00000000-0000-4000-8000-%012d", i);
                        if (guest_ids_acquire(root, 1879048192u, 1879113727u, uuid, &ids, &err) < 0)
                                _exit(1);
                        _exit(write(pipes[i][1], &ids.swtpm, sizeof(uint32_t)) == sizeof(uint32_t) ? 0 : 2);
                }
                close(pipes[i][1]);
        }
        for (int i = 0; i < N; i++) {
                int status;

                cr_assert_eq(waitpid(pids[i], &status, 0), pids[i]);
                cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child %d failed", i);
                cr_assert_eq(read(pipes[i][0], &got[i], sizeof(got[i])), (ssize_t) sizeof(got[i]));
                close(pipes[i][0]);
                for (int j = 0; j < i; j++)
                        cr_assert(got[i] + 1 < got[j] || got[j] + 1 < got[i], "guests %d and %d share ids %u/%u", i,
                                  j, got[i], got[j]);
        }
}

/* ---- real guests ------------------------------------------------------------------- */

static char *guest_dir, *vmsup_log;

/* swtpm and QEMU "as nobody" (not root): each guest gets its own ids from the default
 * range. extra goes at the end of the config. */
static char *write_conf(const char *name, const char *extra) {
        return test_write_conf(root, name,
                               &(struct test_conf) { .root = root, .as_nobody = true, .supervisor = "stop_timeout = 3\n",
                                                     .barbican_url = test_barbican_url(), .barbican = "retries = 1\n",
                                                     .more = extra });
}

static char *write_spec(const char *uuid, bool uefi, bool hold) {
        char name[64];

        snprintf(name, sizeof(name), "%s.json", uuid);
        return test_write_spec(root, name,
                               &(struct test_spec) { .uuid = uuid, .name = "g", .uefi = uefi, .guest_dir = guest_dir,
                                                     .hold = hold });
}

static void run_setup(void) {
        root = test_mkdtemp();
        /* the guests' QEMU (not root) must pass through the test's root to the kernel */
        cr_assert_eq(chmod(root, 0711), 0);
        cr_assert(asprintf(&guest_dir, "%s/guest", root) > 0);
        cr_assert_eq(mkdir(guest_dir, 0755), 0);
        test_copy_file(TEST_GUEST_DIR, guest_dir, "vmlinuz");
        test_copy_file(TEST_GUEST_DIR, guest_dir, "initrd.img");
        cr_assert(asprintf(&vmsup_log, "%s/vmsup.log", root) > 0);
}

static void run_teardown(void) {
        test_root_cleanup(root);
        free(guest_dir);
        free(vmsup_log);
}

TestSuite(idsrun, .init = run_setup, .fini = run_teardown, .timeout = 400);

static struct sup start(const char *conf, const char *spec) {
        char *argv[] = { VMSUP_BIN, "--config", (char *) conf, "run", "--token-fd", "3", (char *) spec, NULL };

        return test_spawn(argv, NULL, vmsup_log, "project-of-the-owner");
}

/* Wait until the guest runs; its swtpm and QEMU pids. */
static void wait_running(struct sup *s, const char *uuid, pid_t *ret_swtpm, pid_t *ret_qemu) {
        char path[512];
        json_object *st, *v;

        snprintf(path, sizeof(path), "%s/run/%s/control.sock", root, uuid);
        st = test_wait_running(s, path, vmsup_log, 180000);
        cr_assert(json_object_object_get_ex(st, "swtpm_pid", &v));
        *ret_swtpm = json_object_get_int(v);
        cr_assert(json_object_object_get_ex(st, "qemu_pid", &v));
        *ret_qemu = json_object_get_int(v);
        json_object_put(st);
}

static char *wait_console(const char *uuid, const char *needle, int count, int timeout_ms) {
        char path[512];

        snprintf(path, sizeof(path), "%s/log/%s/console.log", root, uuid);
        return test_wait_console(path, vmsup_log, needle, count, timeout_ms);
}

static void stop(struct sup *s) {
        int code;

        kill(s->pid, SIGTERM);
        code = wait_exit(s, 120000);
        cr_assert_eq(code, 0, "vmsup exit %d: %s", code, slurp(vmsup_log));
}

static char *registry_of(const char *top) {
        char path[512];

        snprintf(path, sizeof(path), "%s/%s/" GUEST_IDS_FILE, root, top);
        return slurp(path);
}

static int run_delete(const char *conf, const char *uuid) {
        char *argv[] = { VMSUP_BIN, "--config", (char *) conf, "delete", "--token-fd", "3", (char *) uuid, NULL };
        struct sup s = test_spawn(argv, NULL, vmsup_log, "project-of-the-owner");

        return wait_exit(&s, 60000);
}

/* The first number of "Key:" in /proc/PID/status (the real uid or gid). */
static unsigned long status_id(pid_t pid, const char *key) {
        char path[64], *p;

        snprintf(path, sizeof(path), "/proc/%d/status", (int) pid);
        p = strstr(slurp(path), key);
        cr_assert_not_null(p, "no %s in %s", key, path);
        return strtoul(p + strlen(key), NULL, 10);
}

/* errno of open(path, flags) by a process of uid:gid with no groups (0: it opened). */
static int open_as(uid_t uid, const char *path, int flags) {
        pid_t pid = fork();
        int status;

        cr_assert_geq(pid, 0);
        if (pid == 0) {
                int fd;

                if (setgroups(0, NULL) < 0 || setresgid(uid, uid, uid) < 0 || setresuid(uid, uid, uid) < 0)
                        _exit(255);
                fd = open(path, flags | O_CLOEXEC | O_NOFOLLOW, 0600);
                _exit(fd >= 0 ? 0 : errno);
        }
        cr_assert_eq(waitpid(pid, &status, 0), pid);
        cr_assert(WIFEXITED(status) && WEXITSTATUS(status) != 255, "could not become uid %u", (unsigned) uid);
        return WEXITSTATUS(status);
}

static char *guest_path(const char *top, const char *uuid, const char *name) {
        char *p = NULL;

        cr_assert(asprintf(&p, "%s/%s/%s/%s", root, top, uuid, name) > 0);
        return p;
}

Test(idsrun, each_guest_has_its_own_ids_and_no_child_reaches_another_guests_files) {
        _cleanup_free_ char *conf = write_conf("vmsup.conf", ""), *spec_a = write_spec(UUID_A, false, true),
                           *spec_b = write_spec(UUID_B, true, true);
        _cleanup_free_ char *live_a = guest_path("run", UUID_A, "tpm/tpm2-00.permall"),
                           *live_b = guest_path("run", UUID_B, "tpm/tpm2-00.permall"),
                           *new_b = guest_path("run", UUID_B, "tpm/tpm2-00.volatilestate"),
                           *vars_b = guest_path("state", UUID_B, "OVMF_VARS.fd"),
                           *console_a = guest_path("log", UUID_A, "console.log"),
                           *console_b = guest_path("log", UUID_B, "console.log");
        unsigned long ids[4];
        pid_t swtpm_a, qemu_a, swtpm_b, qemu_b;
        struct sup a, b;
        struct stat st;

        a = start(conf, spec_a);
        b = start(conf, spec_b);
        wait_running(&a, UUID_A, &swtpm_a, &qemu_a);
        wait_running(&b, UUID_B, &swtpm_b, &qemu_b);
        free(wait_console(UUID_A, "tpmprobe: done", 1, 180000));
        free(wait_console(UUID_B, "tpmprobe: done", 1, 180000));

        /* four distinct ids from the range, none of them nobody's; gid = uid */
        ids[0] = status_id(swtpm_a, "Uid:");
        ids[1] = status_id(qemu_a, "Uid:");
        ids[2] = status_id(swtpm_b, "Uid:");
        ids[3] = status_id(qemu_b, "Uid:");
        for (int i = 0; i < 4; i++) {
                cr_assert(ids[i] >= 1879048192ul && ids[i] <= 1879113727ul, "id %lu is not from the range", ids[i]);
                for (int j = 0; j < i; j++)
                        cr_assert_neq(ids[i], ids[j], "two children share uid %lu", ids[i]);
        }
        cr_assert_eq(status_id(swtpm_a, "Gid:"), ids[0]);
        cr_assert_eq(status_id(qemu_b, "Gid:"), ids[3]);

        /* each guest's files are its own child's */
        cr_assert_eq(stat(live_b, &st), 0);
        cr_assert_eq(st.st_uid, ids[2], "B's live state belongs to uid %u", (unsigned) st.st_uid);
        cr_assert_eq(stat(vars_b, &st), 0);
        cr_assert_eq(st.st_uid, ids[3], "B's VARS belong to uid %u", (unsigned) st.st_uid);

        /* A's swtpm reads its own state, and neither reads nor writes B's */
        cr_assert_eq(open_as(ids[0], live_a, O_RDONLY), 0, "A's swtpm cannot read its own state");
        cr_assert_eq(open_as(ids[0], live_b, O_RDONLY), EACCES);
        cr_assert_eq(open_as(ids[0], live_b, O_WRONLY), EACCES);
        cr_assert_eq(open_as(ids[0], new_b, O_WRONLY | O_CREAT), EACCES);
        /* QEMU writes no log itself (the supervisor bounds them): A's QEMU reads neither
         * console log, nor B's VARS (its Secure Boot keys), nor even its own swtpm's
         * plaintext state */
        cr_assert_eq(open_as(ids[1], console_a, O_RDONLY), EACCES, "A's QEMU can read the console log");
        cr_assert_eq(open_as(ids[1], console_b, O_RDONLY), EACCES);
        cr_assert_eq(open_as(ids[1], vars_b, O_RDWR), EACCES);
        cr_assert_eq(open_as(ids[1], live_a, O_RDONLY), EACCES);

        stop(&a);
        stop(&b);
        cr_assert_eq(test_count_processes(root, false), 0);

        /* the ids are recorded for each guest, and vmsup delete releases them */
        cr_assert(strstr(registry_of("state"), UUID_A " "), "%s", registry_of("state"));
        cr_assert_eq(run_delete(conf, UUID_A), 0, "%s", slurp(vmsup_log));
        cr_assert_null(strstr(registry_of("state"), UUID_A), "%s", registry_of("state"));
        cr_assert(strstr(registry_of("state"), UUID_B " "), "%s", registry_of("state"));
}

/* The attack, with every guest's swtpm as one user (guest_ids = none): that user
 * copies running guest A's live state into stopped guest B's live dir. B's next start
 * must refuse it, and leave it and B's sealed state as they are. */
Test(idsrun, a_transplanted_tpm_state_is_refused_and_left_in_place) {
        _cleanup_free_ char *conf = write_conf("shared.conf", "[security]\nguest_ids = none\n"),
                           *spec_a = write_spec(UUID_A, false, true), *spec_b = write_spec(UUID_B, false, false);
        _cleanup_free_ char *live_a = guest_path("run", UUID_A, "tpm/tpm2-00.permall"),
                           *live_b = guest_path("run", UUID_B, "tpm/tpm2-00.permall"),
                           *sealed_b = guest_path("state", UUID_B, "tpm2-00.permall.sealed");
        uint8_t *stolen, *left, *sealed_before, *sealed_after;
        size_t stolen_len, left_len, before_len, after_len;
        pid_t swtpm_a, qemu_a, pid;
        struct sup a, b;
        int status, code;

        /* B has run once: it has a sealed TPM, and an empty live dir of the shared user */
        b = start(conf, spec_b);
        code = wait_exit(&b, 240000);
        cr_assert_eq(code, 0, "vmsup exit %d: %s", code, slurp(vmsup_log));
        sealed_before = test_read_file(sealed_b, &before_len);

        a = start(conf, spec_a);
        wait_running(&a, UUID_A, &swtpm_a, &qemu_a);
        free(wait_console(UUID_A, "tpmprobe: done", 1, 180000));
        cr_assert_eq(status_id(swtpm_a, "Uid:"), NOBODY, "with guest_ids = none swtpm runs as swtpm_user");

        /* the attacker: code running as the shared swtpm user */
        pid = fork();
        cr_assert_geq(pid, 0);
        if (pid == 0) {
                char buf[65536];
                ssize_t n;
                int in, out;

                if (setgroups(0, NULL) < 0 || setresgid(NOBODY, NOBODY, NOBODY) < 0 ||
                    setresuid(NOBODY, NOBODY, NOBODY) < 0)
                        _exit(10);
                in = open(live_a, O_RDONLY | O_CLOEXEC);
                out = open(live_b, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
                if (in < 0 || out < 0)
                        _exit(11);
                while ((n = read(in, buf, sizeof(buf))) > 0)
                        if (write(out, buf, (size_t) n) != n)
                                _exit(12);
                _exit(n == 0 && close(out) == 0 ? 0 : 13);
        }
        cr_assert_eq(waitpid(pid, &status, 0), pid);
        cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the shared user could not copy A's state (%d)",
                  WEXITSTATUS(status));
        stolen = test_read_file(live_b, &stolen_len);
        stop(&a);

        b = start(conf, spec_b);
        code = wait_exit(&b, 240000);
        cr_assert_eq(code, 65, "B started with another guest's TPM state (exit %d): %s", code, slurp(vmsup_log));
        cr_assert(strstr(slurp(vmsup_log), "refusing TPM state '"), "%s", slurp(vmsup_log));
        cr_assert(strstr(slurp(vmsup_log), live_b), "the error does not name %s: %s", live_b, slurp(vmsup_log));
        cr_assert(strstr(slurp(vmsup_log), "which other guests' swtpm share ([security] guest_ids = none)"), "%s",
                  slurp(vmsup_log));
        cr_assert_null(strstr(slurp(vmsup_log), "earlier run left unsealed"), "%s", slurp(vmsup_log));
        left = test_read_file(live_b, &left_len);
        cr_assert(left_len == stolen_len && memcmp(left, stolen, left_len) == 0, "the refused file was changed");
        sealed_after = test_read_file(sealed_b, &after_len);
        cr_assert(after_len == before_len && memcmp(sealed_after, sealed_before, after_len) == 0,
                  "B's sealed state was changed");
        free(stolen);
        free(left);
        free(sealed_before);
        free(sealed_after);
}

/* With each guest's own ids, a leftover B's swtpm did not write (say, from the days all
 * swtpm shared a user) is refused too: it belongs to neither B's swtpm nor root. */
Test(idsrun, a_leftover_of_another_uid_is_refused) {
        _cleanup_free_ char *conf = write_conf("vmsup.conf", ""), *spec_b = write_spec(UUID_B, false, false);
        _cleanup_free_ char *live_b = guest_path("run", UUID_B, "tpm/tpm2-00.permall");
        static uint8_t state[4096] = { 0x5a };
        struct sup b;
        struct stat st;
        int code, fd;

        b = start(conf, spec_b);
        code = wait_exit(&b, 240000);
        cr_assert_eq(code, 0, "vmsup exit %d: %s", code, slurp(vmsup_log));
        fd = open(live_b, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        cr_assert_geq(fd, 0);
        cr_assert_eq(write(fd, state, 4096), 4096);
        cr_assert_eq(fchown(fd, NOBODY, NOBODY), 0);
        close(fd);

        b = start(conf, spec_b);
        code = wait_exit(&b, 240000);
        cr_assert_eq(code, 65, "exit %d: %s", code, slurp(vmsup_log));
        cr_assert(strstr(slurp(vmsup_log), "it belongs to uid 65534, not to this guest's swtpm (uid 18790481"), "%s",
                  slurp(vmsup_log));
        cr_assert_eq(stat(live_b, &st), 0, "the refused file was removed");
        cr_assert(st.st_uid == NOBODY && st.st_size == 4096, "the refused file was changed");
}

/* A host where every swtpm shared one user (guest_ids = none) switches to per-guest ids:
 * an empty live dir of the shared user is taken back; one holding files is refused. */
Test(idsrun, a_live_dir_of_the_shared_user_is_taken_back_only_when_empty) {
        _cleanup_free_ char *shared = write_conf("shared.conf", "[security]\nguest_ids = none\n"),
                           *conf = write_conf("vmsup.conf", ""), *spec_b = write_spec(UUID_B, false, false),
                           *dir_b = guest_path("run", UUID_B, "tpm"), *file_b = guest_path("run", UUID_B, "tpm/x");
        struct sup b;
        struct stat st;
        int code, fd;

        b = start(shared, spec_b);
        code = wait_exit(&b, 240000);
        cr_assert_eq(code, 0, "vmsup exit %d: %s", code, slurp(vmsup_log));
        cr_assert_eq(stat(dir_b, &st), 0);
        cr_assert_eq(st.st_uid, NOBODY);

        /* files in it: refused, left */
        fd = open(file_b, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        cr_assert_geq(fd, 0);
        cr_assert_eq(fchown(fd, NOBODY, NOBODY), 0);
        close(fd);
        b = start(conf, spec_b);
        code = wait_exit(&b, 240000);
        cr_assert_eq(code, 65, "exit %d: %s", code, slurp(vmsup_log));
        cr_assert(strstr(slurp(vmsup_log), "belongs to uid 65534, not to this guest's swtpm (uid 18790481"), "%s",
                  slurp(vmsup_log));
        cr_assert(strstr(slurp(vmsup_log), "holds files ('x' ...)"), "%s", slurp(vmsup_log));
        cr_assert_eq(stat(file_b, &st), 0, "the refused file was removed");

        /* empty: taken back for the guest's own swtpm */
        cr_assert_eq(unlink(file_b), 0);
        b = start(conf, spec_b);
        code = wait_exit(&b, 240000);
        cr_assert_eq(code, 0, "vmsup exit %d: %s", code, slurp(vmsup_log));
        cr_assert_eq(stat(dir_b, &st), 0);
        cr_assert(st.st_uid >= 1879048192u && st.st_uid <= 1879113727u, "live dir of uid %u", (unsigned) st.st_uid);
        cr_assert_eq(st.st_mode & 07777, 0700);
}

/* A crashed run's leftovers, written by the guest's own swtpm, are still taken: the NV
 * counter goes on after the supervisor was killed. */
Test(idsrun, a_crashed_runs_own_state_is_still_sealed) {
        _cleanup_free_ char *conf = write_conf("vmsup.conf", ""), *spec_hold = write_spec(UUID_A, false, true),
                           *live = guest_path("run", UUID_A, "tpm/tpm2-00.permall");
        pid_t swtpm, qemu;
        struct sup s;
        struct stat st;
        unsigned long swtpm_uid;
        char *text, *spec;
        long c1, c2;
        int code;

        s = start(conf, spec_hold);
        wait_running(&s, UUID_A, &swtpm, &qemu);
        text = wait_console(UUID_A, "tpmprobe: done", 1, 180000);
        c1 = console_value(text, "nv-counter=", 1);
        free(text);
        swtpm_uid = status_id(swtpm, "Uid:");
        cr_assert_neq(swtpm_uid, 0ul);

        kill(s.pid, SIGKILL);
        cr_assert_eq(wait_exit(&s, 30000), 128 + SIGKILL);
        for (int i = 0; i < 100 && test_count_processes(root, false) > 0; i++)
                usleep(100000);
        cr_assert_eq(test_count_processes(root, false), 0, "QEMU or swtpm outlived their supervisor");
        /* the leftover is there, and its owner is the guest's swtpm */
        cr_assert_eq(stat(live, &st), 0);
        cr_assert_eq(st.st_uid, swtpm_uid);

        spec = write_spec(UUID_A, false, false);
        s = start(conf, spec);
        code = wait_exit(&s, 240000);
        cr_assert_eq(code, 0, "vmsup exit %d: %s", code, slurp(vmsup_log));
        text = wait_console(UUID_A, "tpmprobe: done", 2, 1000);
        c2 = console_value(text, "nv-counter=", 2);
        cr_assert_eq(c2, c1 + 1, "NV counter %ld, then %ld after the supervisor was killed", c1, c2);
        free(text);
        free(spec);
}
