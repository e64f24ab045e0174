/* vmsup run confined, end to end: the seccomp filter on vmsup and its children, swtpm and
 * QEMU as their configured users, empty environments, no fd of vmsup's in a child, and a
 * marker from vmsup's environment that must not reach a child or a file. */
#include "config.h"

#include <criterion/criterion.h>
#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/proc.h"
#include "common/secmem.h"
#include "common/util.h"
#include "secrets/barbican.h"
#include "crypto/kdf.h"
#include "supervisor/control.h"
#include "tests/barbican_fixture.h"
#include "tests/guestfix.h"
#include "tests/helpers.h"
#include "tests/leakscan.h"

#define UUID "8e2b6c1d-3f4a-4b5c-9d7e-1a2b3c4d5e6f"
#define MARKER "vmsup-leak-marker-3b9d2f7a61c4e058"

static char *root, *conf, *spec_path, *console, *vmsup_log, *control_path;

/* The host config: swtpm and QEMU as nobody, vmsup's own filter in mode seccomp. */
static void write_conf(const char *seccomp) {
        char *security = NULL;

        cr_assert(asprintf(&security, "[security]\nseccomp = %s\n", seccomp) > 0);
        free(conf);
        conf = test_write_conf(root, "vmsup.conf",
                               &(struct test_conf) { .root = root, .as_nobody = true, .supervisor = "stop_timeout = 3\n",
                                                     .barbican_url = test_barbican_url(), .more = security });
        free(security);
}

static void setup(void) {
        char *guest_dir = NULL;

        root = test_mkdtemp();
        /* swtpm and QEMU run as nobody: they must be able to pass through the test's root
         * and read the guest's kernel, wherever the build tree is (a 0700 clone, say) */
        cr_assert_eq(chmod(root, 0711), 0);
        cr_assert(asprintf(&guest_dir, "%s/guest", root) > 0);
        cr_assert_eq(mkdir(guest_dir, 0755), 0);
        test_copy_file(TEST_GUEST_DIR, guest_dir, "vmlinuz");
        test_copy_file(TEST_GUEST_DIR, guest_dir, "initrd.img");
        write_conf("kill");
        spec_path = test_write_spec(root, "guest.json",
                                    &(struct test_spec) { .uuid = UUID, .name = "confined", .uefi = true,
                                                          .guest_dir = guest_dir, .hold = true });
        free(guest_dir);
        cr_assert(asprintf(&console, "%s/log/" UUID "/console.log", root) > 0);
        cr_assert(asprintf(&vmsup_log, "%s/vmsup.log", root) > 0);
        cr_assert(asprintf(&control_path, "%s/run/" UUID "/control.sock", root) > 0);
}

/* Processes whose command line names the test's root; killed when asked. */
static int count_leftovers(bool kill_them) {
        return test_count_processes(root, kill_them);
}

static void teardown(void) {
        test_root_cleanup(root);
        free(conf);
        free(spec_path);
        free(console);
        free(vmsup_log);
        free(control_path);
}

TestSuite(confine, .init = setup, .fini = teardown, .timeout = 240);

/* vmsup run with PATH and a marker in its environment. */
#define OWNER_PROJECT "confined-owner-project-5e1f"

static struct sup start(void) {
        char *argv[] = { VMSUP_BIN, "--config", conf, "run", "--token-fd", "3", spec_path, NULL };
        char *pathvar = NULL, *envp[] = { NULL, "VMSUP_TEST_SECRET=" MARKER, NULL };
        struct sup s;

        /* the owner's credential comes on fd 3: never argv, never the environment */
        cr_assert(asprintf(&pathvar, "PATH=%s", getenv("PATH")) > 0);
        envp[0] = pathvar;
        s = test_spawn(argv, envp, vmsup_log, OWNER_PROJECT);
        free(pathvar);
        return s;
}

/* The guest's real secrets: its passphrase (fetched from Barbican as the owner), the key
 * derived from it, and the owner's credential. None may be in any cmdline or environ of
 * pids, or in any file below dirs. */
static void assert_no_secret_leaks(const pid_t *pids, size_t n, const char *const *dirs, size_t n_dirs) {
        char idpath[512], id[40] = "", pass[BARBICAN_PASSPHRASE_LEN + 1];
        struct barbican_options bo = { .auth = BARBICAN_AUTH_NOAUTH, .endpoint = test_barbican_url() };
        struct barbican_identity who = { .project_id = OWNER_PROJECT };
        struct barbican_client *c = NULL;
        vmsup_error *err = NULL;
        uint8_t *key = NULL;
        char *where = NULL;

        snprintf(idpath, sizeof(idpath), "%s/state/" UUID "/vtpm_secret_uuid", root);
        test_read_line(idpath, id, sizeof(id));
        cr_assert_eq(barbican_client_new(&bo, &who, &c, &err), 0, "%s", err ? err->msg : "");
        cr_assert_eq(barbican_secret_fetch(c, id, pass, &err), 0, "%s", err ? err->msg : "");
        barbican_client_free(c);
        cr_assert_eq(kdf_derive_key(pass, strlen(pass), UUID, KDF_USE_STATE_SEAL, &key, &err), 0);

        cr_assert_eq(leakscan(pass, strlen(pass), pids, n, dirs, n_dirs, &where), 0, "the passphrase leaked to:\n%s", where);
        free(where);
        cr_assert_eq(leakscan(key, KDF_KEY_LEN, pids, n, dirs, n_dirs, &where), 0, "the derived key leaked to:\n%s", where);
        free(where);
        cr_assert_eq(leakscan(OWNER_PROJECT, strlen(OWNER_PROJECT), pids, n, dirs, n_dirs, &where), 0,
                     "the owner's credential leaked to:\n%s", where);
        free(where);
        erase(pass, sizeof(pass));
        secmem_free(key);
}

static json_object *wait_running(struct sup *s) {
        return test_wait_running(s, control_path, vmsup_log, 120000);
}

static void wait_console(const char *needle, int timeout_ms) {
        free(test_wait_console(console, vmsup_log, needle, 1, timeout_ms));
}

static pid_t json_pid(json_object *st, const char *key) {
        json_object *v;

        cr_assert(json_object_object_get_ex(st, key, &v) && json_object_get_int(v) > 0, "%s",
                  json_object_to_json_string(st));
        return json_object_get_int(v);
}

/* The value of "Key:" in /proc/PID/status, tabs made spaces. */
static char *proc_status(pid_t pid, const char *key) {
        char path[64], *text, *p, *line;

        snprintf(path, sizeof(path), "/proc/%d/status", (int) pid);
        text = strdup(slurp(path));
        p = text;
        while (*p) {
                line = p;
                p += strcspn(p, "\n");
                if (*p)
                        *p++ = '\0';
                if (strncmp(line, key, strlen(key)) == 0 && line[strlen(key)] == ':') {
                        char *v = strdup(line + strlen(key) + 1), *q;

                        for (q = v; *q; q++)
                                if (*q == '\t')
                                        *q = ' ';
                        for (q = v; *q == ' '; q++)
                                ;
                        memmove(v, q, strlen(q) + 1);
                        free(text);
                        return v;
                }
        }
        cr_assert_fail("no %s in /proc/%d/status", key, (int) pid);
        return NULL;
}

static void assert_status(pid_t pid, const char *who, const char *key, const char *want) {
        char *v = proc_status(pid, key);

        cr_assert_str_eq(v, want, "%s (pid %d): %s is '%s', expected '%s'", who, (int) pid, key, v, want);
        free(v);
}

static size_t file_size(const char *path) {
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        char buf[4096];
        size_t total = 0;
        ssize_t n;

        cr_assert_geq(fd, 0, "open %s", path);
        while ((n = read(fd, buf, sizeof(buf))) > 0)
                total += (size_t) n;
        close(fd);
        return total;
}

/* The targets of pid's fds that name a file or a socket (anonymous inodes all look alike). */
/* The access mode (O_RDONLY, O_WRONLY, O_RDWR) of pid's fd, from its fdinfo. */
static int fd_accmode(pid_t pid, const char *fd) {
        char path[320], *flags;
        unsigned long v;

        snprintf(path, sizeof(path), "/proc/%d/fdinfo/%s", (int) pid, fd);
        flags = strstr(slurp(path), "flags:");
        cr_assert_not_null(flags, "%s", path);
        v = strtoul(flags + 6, NULL, 8);
        return (int) (v & O_ACCMODE);
}

static int modes[2][128];

static size_t fd_targets(pid_t pid, char targets[][256], size_t max, int *accmodes) {
        char dirpath[64];
        DIR *d;
        struct dirent *e;
        size_t n = 0;

        snprintf(dirpath, sizeof(dirpath), "/proc/%d/fd", (int) pid);
        d = opendir(dirpath);
        cr_assert_not_null(d, "%s", dirpath);
        while ((e = readdir(d)) && n < max) {
                char link[600];
                ssize_t len;

                if (e->d_name[0] == '.')
                        continue;
                snprintf(link, sizeof(link), "%s/%s", dirpath, e->d_name);
                len = readlink(link, targets[n], 255);
                if (len <= 0)
                        continue;
                targets[n][len] = '\0';
                if (strncmp(targets[n], "anon_inode:", 11) == 0 || streq(targets[n], "/dev/null"))
                        continue;
                accmodes[n] = fd_accmode(pid, e->d_name);
                n++;
        }
        closedir(d);
        return n;
}

/* How many of the child's fds vmsup also holds; they are named in *ret_shared. A pipe
 * whose write end the child has and whose read end vmsup has is the child's log (the
 * supervisor bounds it): not shared. */
static size_t shared_fds(pid_t vmsup, pid_t child, char *ret_shared, size_t len) {
        static char mine[128][256], theirs[128][256];
        size_t nm = fd_targets(vmsup, mine, 128, modes[0]), nt = fd_targets(child, theirs, 128, modes[1]), shared = 0;

        ret_shared[0] = '\0';
        for (size_t i = 0; i < nt; i++)
                for (size_t j = 0; j < nm; j++)
                        if (streq(theirs[i], mine[j]) &&
                            !(strncmp(theirs[i], "pipe:", 5) == 0 && modes[1][i] == O_WRONLY && modes[0][j] == O_RDONLY)) {
                                shared++;
                                strncat(ret_shared, theirs[i], len - strlen(ret_shared) - 2);
                                strcat(ret_shared, " ");
                        }
        return shared;
}

Test(confine, children_run_as_their_users_under_seccomp_with_nothing_of_vmsups) {
        const char *const dirs[] = { root };
        struct sup s;
        json_object *st;
        pid_t vmsup, qemu, swtpm, children[2];
        char shared[2048], *where, path[64], *limits;
        int hits;

        s = start();
        st = wait_running(&s);
        vmsup = s.pid;
        qemu = json_pid(st, "qemu_pid");
        swtpm = json_pid(st, "swtpm_pid");
        json_object_put(st);
        wait_console("tpmprobe: done", 120000);

        /* seccomp filters (2 = filter mode) and no new privileges, on all three */
        assert_status(vmsup, "vmsup", "Seccomp", "2");
        assert_status(swtpm, "swtpm", "Seccomp", "2");
        assert_status(qemu, "QEMU", "Seccomp", "2");
        /* vmsup's filter below each child's own (swtpm --seccomp, QEMU -sandbox) */
        assert_status(swtpm, "swtpm", "Seccomp_filters", "2");
        assert_status(qemu, "QEMU", "Seccomp_filters", "2");
        assert_status(vmsup, "vmsup", "NoNewPrivs", "1");
        assert_status(swtpm, "swtpm", "NoNewPrivs", "1");
        assert_status(qemu, "QEMU", "NoNewPrivs", "1");

        /* users and groups: the guest's own ids, the first pair of the default [security]
         * guest_ids (1879048192: swtpm, 1879048193: QEMU), instead of nobody; QEMU keeps
         * [qemu] group (nogroup, 65534) as its only supplementary group; no capabilities */
        assert_status(swtpm, "swtpm", "Uid", "1879048192 1879048192 1879048192 1879048192");
        assert_status(swtpm, "swtpm", "Gid", "1879048192 1879048192 1879048192 1879048192");
        assert_status(swtpm, "swtpm", "Groups", "");
        assert_status(swtpm, "swtpm", "CapEff", "0000000000000000");
        assert_status(qemu, "QEMU", "Uid", "1879048193 1879048193 1879048193 1879048193");
        assert_status(qemu, "QEMU", "Gid", "1879048193 1879048193 1879048193 1879048193");
        assert_status(qemu, "QEMU", "Groups", "65534 "); /* /proc ends each group with a space */
        assert_status(qemu, "QEMU", "CapEff", "0000000000000000");

        /* no core dumps, for vmsup and (inherited) its children */
        for (int i = 0; i < 3; i++) {
                pid_t pid = i == 0 ? vmsup : i == 1 ? swtpm : qemu;

                snprintf(path, sizeof(path), "/proc/%d/limits", (int) pid);
                limits = strdup(slurp(path));
                cr_assert(strstr(limits, "Max core file size        0                    0"), "pid %d:\n%s", (int) pid,
                          limits);
                free(limits);
        }

        /* empty environments, and no fd that vmsup holds (its log, lock, control socket)
         * except QEMU's end of the TPM control channel, which vmsup shares on purpose */
        snprintf(path, sizeof(path), "/proc/%d/environ", (int) swtpm);
        cr_assert_eq(file_size(path), 0, "swtpm's environment is not empty");
        snprintf(path, sizeof(path), "/proc/%d/environ", (int) qemu);
        cr_assert_eq(file_size(path), 0, "QEMU's environment is not empty");
        cr_assert_eq(shared_fds(vmsup, swtpm, shared, sizeof(shared)), 0, "swtpm holds vmsup's %s", shared);
        cr_assert_leq(shared_fds(vmsup, qemu, shared, sizeof(shared)), 1, "QEMU holds vmsup's %s", shared);
        cr_assert(shared[0] == '\0' || strncmp(shared, "socket:[", 8) == 0, "QEMU holds vmsup's %s", shared);

        /* the marker in vmsup's environment: found there (the scan works), nowhere else */
        hits = leakscan(MARKER, strlen(MARKER), &vmsup, 1, NULL, 0, &where);
        cr_assert_eq(hits, 1, "marker in vmsup: %s", where);
        free(where);
        children[0] = swtpm;
        children[1] = qemu;
        hits = leakscan(MARKER, strlen(MARKER), children, 2, dirs, 1, &where);
        cr_assert_eq(hits, 0, "the marker leaked to:\n%s", where);
        free(where);
        {
                pid_t all[3] = { vmsup, swtpm, qemu };

                assert_no_secret_leaks(all, 3, dirs, 1);
        }

        kill(s.pid, SIGTERM);
        cr_assert_eq(wait_exit(&s, 60000), 0, "%s", slurp(vmsup_log));
        hits = leakscan(MARKER, strlen(MARKER), NULL, 0, dirs, 1, &where);
        cr_assert_eq(hits, 0, "the marker leaked to:\n%s", where);
        free(where);
        assert_no_secret_leaks(NULL, 0, dirs, 1);
        cr_assert_eq(count_leftovers(false), 0, "processes of the test remain");
}

Test(confine, seccomp_off_leaves_vmsup_unfiltered_and_the_children_sandboxed) {
        struct sup s;
        json_object *st;
        pid_t qemu, swtpm;

        write_conf("off");

        s = start();
        st = wait_running(&s);
        qemu = json_pid(st, "qemu_pid");
        swtpm = json_pid(st, "swtpm_pid");
        json_object_put(st);
        assert_status(s.pid, "vmsup", "Seccomp", "0");
        assert_status(swtpm, "swtpm", "Seccomp_filters", "1");
        assert_status(qemu, "QEMU", "Seccomp_filters", "1");
        kill(s.pid, SIGTERM);
        cr_assert_eq(wait_exit(&s, 60000), 0, "%s", slurp(vmsup_log));
}
