/* vmsup run end to end: real swtpm, real QEMU (TCG), the demo guest from tests/guest. */
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
#include <stdint.h>
#include <unistd.h>

#include "common/proc.h"
#include "common/util.h"
#include "supervisor/control.h"
#include "secrets/barbican.h"
#include "tests/barbican_fixture.h"
#include "tests/guestfix.h"
#include "tests/helpers.h"

#define UUID "5f0c3a2e-1b7d-4c8e-9f6a-0d2b4e6a8c1f"

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

/* Whatever of ours is left (killed only after a failed test). */
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

TestSuite(run, .init = setup, .fini = teardown, .timeout = 240);

/* Nova's hw:tpm_secret_security of the next write_spec(); NULL: unset (user). */
static const char *secret_security;

static void write_spec(const char *version, const char *model, bool uefi, bool hold) {
        char extra[256] = "";

        if (version)
                snprintf(extra, sizeof(extra), "\"hw:tpm_version\": \"%s\", \"hw:tpm_model\": \"%s\"%s%s%s", version,
                         model, secret_security ? ", \"hw:tpm_secret_security\": \"" : "",
                         secret_security ? secret_security : "", secret_security ? "\"" : "");
        free(spec_path);
        spec_path = test_write_spec(root, "guest.json",
                                    &(struct test_spec) { .uuid = UUID, .name = "demo", .extra_specs = extra,
                                                          .uefi = uefi, .guest_dir = TEST_GUEST_DIR, .hold = hold });
}

/* The owner's credential on fd 3: in Barbican's unauthenticated pipeline, the project. */
static const char *project = "project-of-the-owner";

/* An option for the next start()s ("--new-tpm", "--new-vars"); NULL: none. */
static const char *run_option;

static struct sup start_as(const char *credential) {
        char *argv[] = { VMSUP_BIN, "--config", conf, "run", "--token-fd", "3", spec_path, NULL, NULL };

        if (run_option) {
                argv[6] = (char *) run_option;
                argv[7] = spec_path;
        }
        return test_spawn(argv, NULL, vmsup_log, credential);
}

static struct sup start(void) {
        return start_as(project);
}

/* vmsup -v run: debug lines, the start's and the stop's steps among them. */
static struct sup start_verbose(void) {
        char *argv[] = { VMSUP_BIN, "-v", "--config", conf, "run", "--token-fd", "3", spec_path, NULL };

        return test_spawn(argv, NULL, vmsup_log, project);
}

/* vmsup delete UUID with the owner's credential on fd 3. */
static int run_delete(const char *credential) {
        char *argv[] = { VMSUP_BIN, "--config", conf, "delete", "--token-fd", "3", UUID, NULL };
        struct sup s = test_spawn(argv, NULL, vmsup_log, credential);

        return wait_exit(&s, 60000);
}

/* vmsup run without any credential. */
static struct sup start_without_token(void) {
        char *argv[] = { VMSUP_BIN, "--config", conf, "run", spec_path, NULL };

        return test_spawn(argv, NULL, vmsup_log, NULL);
}

/* Point the config's Barbican at a port nobody listens on. */
static void barbican_goes_away(void) {
        char *text = strdup(slurp(conf)), *p = strstr(text, "endpoint = ");
        FILE *f = fopen(conf, "we");

        cr_assert_not_null(p);
        fwrite(text, 1, (size_t) (p - text), f);
        fputs("endpoint = http://127.0.0.1:9\nauth = noauth\nretries = 1\n", f);
        fclose(f);
        free(text);
}

static json_object *control(const char *cmd, json_object *extra_args, vmsup_error **err) {
        return test_control(control_path, cmd, extra_args, err);
}

/* Wait until status says running; returns the status object. */
static json_object *wait_running(struct sup *s) {
        return test_wait_running(s, control_path, vmsup_log, 120000);
}

/* Wait until the console shows `count` lines containing needle; return the console. */
static char *wait_console(const char *needle, int count, int timeout_ms) {
        return test_wait_console(console, vmsup_log, needle, count, timeout_ms);
}

static char *console_word(const char *text, const char *key, int nth) {
        const char *p = text;

        for (int i = 0; i < nth; i++) {
                p = strstr(p, key);
                cr_assert_not_null(p, "no %d. %s in:\n%s", nth, key, text);
                p += strlen(key);
        }
        return strndup(p, strcspn(p, "\r\n "));
}

static void assert_clean(void) {
        char path[512];
        struct stat st;

        cr_assert_eq(count_leftovers(false), 0, "vmsup, swtpm or QEMU processes of the test remain");
        /* in a sanitizer build, vmsup's reports end up in its log, whatever its exit code */
        cr_assert_null(strstr(slurp(vmsup_log), "Sanitizer"), "%s", slurp(vmsup_log));
        cr_assert_null(strstr(slurp(vmsup_log), "runtime error:"), "%s", slurp(vmsup_log));
        snprintf(path, sizeof(path), "%s/run/" UUID "/control.sock", root);
        cr_assert_neq(stat(path, &st), 0, "the control socket was left behind");
        snprintf(path, sizeof(path), "%s/run/" UUID "/vmsup.pid", root);
        cr_assert_neq(stat(path, &st), 0, "the pid file was left behind");
}

Test(run, guest_powers_off_by_itself_and_tpm_state_survives_a_restart) {
        struct sup s;
        char *text, *ek1, *ek2;
        long c1, c2;
        int code;

        write_spec("2.0", "tpm-crb", false, false);
        s = start();
        code = wait_exit(&s, 180000);
        cr_assert_eq(code, 0, "vmsup exit %d: %s", code, slurp(vmsup_log));
        text = wait_console("tpmprobe: done", 1, 1000);
        cr_assert(strstr(text, "tpmprobe: tpm-version=2.0"), "%s", text);
        c1 = console_value(text, "nv-counter=", 1);
        ek1 = console_word(text, "ek=", 1);
        free(text);
        assert_clean();

        s = start();
        code = wait_exit(&s, 180000);
        cr_assert_eq(code, 0, "vmsup exit %d: %s", code, slurp(vmsup_log));
        text = wait_console("tpmprobe: done", 2, 1000);
        c2 = console_value(text, "nv-counter=", 2);
        ek2 = console_word(text, "ek=", 2);
        cr_assert_eq(c2, c1 + 1, "NV counter %ld then %ld", c1, c2);
        cr_assert_str_eq(ek1, ek2, "the EK changed across a restart");
        cr_assert(strstr(slurp(vmsup_log), "guest stopped: it powered off"), "%s", slurp(vmsup_log));
        free(text);
        free(ek1);
        free(ek2);
        assert_clean();
}

Test(run, status_then_graceful_stop) {
        struct sup s;
        json_object *st, *v, *tpm;
        vmsup_error *err = NULL;
        json_object *ret;

        write_spec("2.0", "tpm-crb", true, true);
        s = start();
        st = wait_running(&s);
        cr_assert(json_object_object_get_ex(st, "tpm", &tpm) && tpm);
        cr_assert(json_object_object_get_ex(tpm, "version", &v) && streq(json_object_get_string(v), "2.0"));
        cr_assert(json_object_object_get_ex(tpm, "model", &v) && streq(json_object_get_string(v), "tpm-crb"));
        cr_assert(json_object_object_get_ex(st, "qemu_status", &v) && streq(json_object_get_string(v), "running"),
                  "%s", json_object_to_json_string(st));
        cr_assert(json_object_object_get_ex(st, "swtpm_pid", &v) && json_object_get_int(v) > 0);
        json_object_put(st);
        wait_console("tpmprobe: done", 1, 120000);

        ret = control("stop", NULL, &err);
        cr_assert_not_null(ret, "%s", err ? err->msg : "");
        json_object_put(ret);
        cr_assert_eq(wait_exit(&s, 60000), 0, "%s", slurp(vmsup_log));
        cr_assert(strstr(slurp(vmsup_log), "guest stopped: on request"), "%s", slurp(vmsup_log));
        assert_clean();
}

Test(run, soft_and_hard_reboot_keep_the_tpm) {
        struct sup s;
        json_object *req, *ret;
        vmsup_error *err = NULL;
        char *text;
        long c1, c2, c3;

        write_spec("2.0", "tpm-tis", false, true);
        s = start();
        json_object_put(wait_running(&s));
        text = wait_console("tpmprobe: done", 1, 120000);
        c1 = console_value(text, "nv-counter=", 1);
        free(text);

        /* soft: the machine resets under the same QEMU and swtpm */
        ret = control("reboot", NULL, &err);
        cr_assert_not_null(ret, "%s", err ? err->msg : "");
        json_object_put(ret);
        text = wait_console("tpmprobe: done", 2, 120000);
        c2 = console_value(text, "nv-counter=", 2);
        cr_assert_eq(c2, c1 + 1, "NV counter %ld then %ld after a reset", c1, c2);
        free(text);
        cr_assert(strstr(slurp(vmsup_log), "QEMU: guest reset"), "%s", slurp(vmsup_log));

        /* hard: QEMU and swtpm are restarted on the kept state */
        req = json_object_new_object();
        json_object_object_add(req, "hard", json_object_new_boolean(1));
        ret = control("reboot", req, &err);
        cr_assert_not_null(ret, "%s", err ? err->msg : "");
        json_object_put(ret);
        json_object_put(wait_running(&s));
        text = wait_console("tpmprobe: done", 3, 120000);
        c3 = console_value(text, "nv-counter=", 3);
        cr_assert_eq(c3, c2 + 1, "NV counter %ld then %ld after a hard reboot", c2, c3);
        free(text);

        kill(s.pid, SIGTERM);
        cr_assert_eq(wait_exit(&s, 60000), 0, "%s", slurp(vmsup_log));
        assert_clean();
}

static pid_t status_pid(const char *key) {
        vmsup_error *err = NULL;
        json_object *st = control("status", NULL, &err), *v;
        pid_t pid;

        cr_assert_not_null(st, "%s", err ? err->msg : "");
        cr_assert(json_object_object_get_ex(st, key, &v));
        pid = json_object_get_int(v);
        json_object_put(st);
        return pid;
}

Test(run, qemu_killed_stops_swtpm_cleanly) {
        struct sup s;
        pid_t qemu;
        char *log;

        write_spec("2.0", "tpm-crb", false, true);
        s = start();
        json_object_put(wait_running(&s));
        qemu = status_pid("qemu_pid");
        cr_assert_eq(kill(qemu, SIGKILL), 0);
        cr_assert_eq(wait_exit(&s, 60000), 1);
        log = strdup(slurp(vmsup_log));
        cr_assert(strstr(log, "QEMU killed by SIGKILL unexpectedly"), "%s", log);
        cr_assert_null(strstr(log, "did not exit"), "swtpm must stop through its control channel: %s", log);
        free(log);
        assert_clean();
}

Test(run, swtpm_killed_stops_qemu) {
        struct sup s;
        pid_t swtpm;
        char *log;

        write_spec("2.0", "tpm-crb", false, true);
        s = start();
        json_object_put(wait_running(&s));
        swtpm = status_pid("swtpm_pid");
        cr_assert_eq(kill(swtpm, SIGKILL), 0);
        cr_assert_eq(wait_exit(&s, 60000), 1);
        log = strdup(slurp(vmsup_log));
        cr_assert(strstr(log, "swtpm killed by SIGKILL while the guest was running; stopping QEMU"), "%s", log);
        cr_assert(strstr(log, "swtpm's last log lines"), "%s", log);
        free(log);
        assert_clean();
}

Test(run, a_second_supervisor_is_refused) {
        struct sup s, s2;
        char *log;

        write_spec("2.0", "tpm-crb", false, true);
        s = start();
        json_object_put(wait_running(&s));
        s2 = start();
        cr_assert_eq(wait_exit(&s2, 30000), 75);
        log = strdup(slurp(vmsup_log));
        cr_assert(strstr(log, "guest is already supervised by another vmsup (pid "), "%s", log);
        free(log);
        json_object_put(wait_running(&s)); /* the first one is untouched */
        kill(s.pid, SIGTERM);
        cr_assert_eq(wait_exit(&s, 60000), 0, "%s", slurp(vmsup_log));
        assert_clean();
}

Test(run, tpm_1_2_with_tis) {
        struct sup s;
        char *text;

        write_spec("1.2", "tpm-tis", false, false);
        s = start();
        cr_assert_eq(wait_exit(&s, 180000), 0, "%s", slurp(vmsup_log));
        text = wait_console("tpmprobe: done", 1, 1000);
        cr_assert(strstr(text, "tpmprobe: tpm-version=1.2"), "%s", text);
        free(text);
        assert_clean();
}

/* The raw bytes of a hex string (the EK modulus prefix the guest prints). */
static size_t unhex(const char *hex, uint8_t *out, size_t max) {
        size_t n = 0;

        while (n < max && hex[2 * n] && hex[2 * n + 1]) {
                unsigned v;

                cr_assert_eq(sscanf(hex + 2 * n, "%2x", &v), 1);
                out[n++] = (uint8_t) v;
        }
        return n;
}

/* Does any file below dir hold needle? */
static bool tree_holds(const char *dir, const uint8_t *needle, size_t len, char *where, size_t wlen) {
        DIR *d = opendir(dir);
        struct dirent *e;
        bool found = false;

        if (!d)
                return false;
        while (!found && (e = readdir(d))) {
                char path[1024];
                struct stat st;

                if (streq(e->d_name, ".") || streq(e->d_name, ".."))
                        continue;
                snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
                if (lstat(path, &st) < 0)
                        continue;
                if (S_ISDIR(st.st_mode))
                        found = tree_holds(path, needle, len, where, wlen);
                else if (S_ISREG(st.st_mode)) {
                        FILE *f = fopen(path, "re");
                        static uint8_t buf[1 << 20];
                        size_t n = f ? fread(buf, 1, sizeof(buf), f) : 0;

                        if (f)
                                fclose(f);
                        for (size_t i = 0; n >= len && i <= n - len && !found; i++)
                                if (memcmp(buf + i, needle, len) == 0) {
                                        snprintf(where, wlen, "%s", path);
                                        found = true;
                                }
                }
        }
        closedir(d);
        return found;
}

Test(run, tpm_state_is_sealed_at_rest_and_refused_when_altered) {
        char path[512], statedir[512], where[1024] = "", *text, *ek;
        uint8_t modulus[32], *before, *after;
        size_t len, len2;
        struct sup s;
        FILE *f;

        write_spec("2.0", "tpm-crb", false, false);
        s = start();
        cr_assert_eq(wait_exit(&s, 180000), 0, "%s", slurp(vmsup_log));
        cr_assert(strstr(slurp(vmsup_log), "created vTPM secret"), "%s", slurp(vmsup_log));
        text = wait_console("tpmprobe: done", 1, 1000);
        ek = console_word(text, "ek=", 1);
        cr_assert_eq(unhex(ek, modulus, sizeof(modulus)), 32);

        /* the EK is in the TPM's permanent state: its bytes must be nowhere in the clear */
        snprintf(statedir, sizeof(statedir), "%s/state", root);
        cr_assert_not(tree_holds(statedir, modulus, sizeof(modulus), where, sizeof(where)),
                      "TPM plaintext (the EK modulus) in %s", where);
        snprintf(path, sizeof(path), "%s/run", root);
        cr_assert_not(tree_holds(path, modulus, sizeof(modulus), where, sizeof(where)),
                      "TPM plaintext (the EK modulus) left in %s", where);
        snprintf(path, sizeof(path), "%s/state/" UUID "/tpm2-00.permall.sealed", root);
        f = fopen(path, "r+e");
        cr_assert_not_null(f, "no sealed permall");
        before = malloc(1 << 20);
        len = fread(before, 1, 1 << 20, f);
        cr_assert_gt(len, 100);

        /* one flipped byte: refused with exit 65, and the file stays as it was */
        fseek(f, 150, SEEK_SET);
        fputc(before[150] ^ 0x01, f);
        fclose(f);
        s = start();
        cr_assert_eq(wait_exit(&s, 60000), 65, "%s", slurp(vmsup_log));
        cr_assert(strstr(slurp(vmsup_log), "tpm2-00.permall.sealed': authentication failed"), "%s", slurp(vmsup_log));
        f = fopen(path, "re");
        after = malloc(1 << 20);
        len2 = fread(after, 1, 1 << 20, f);
        fclose(f);
        cr_assert(len2 == len && after[150] == (before[150] ^ 0x01) && memcmp(after, before, 150) == 0,
                  "the refused sealed file was changed");

        /* put it back: the guest starts on its state again */
        f = fopen(path, "we");
        cr_assert_eq(fwrite(before, 1, len, f), len);
        fclose(f);
        s = start();
        cr_assert_eq(wait_exit(&s, 180000), 0, "%s", slurp(vmsup_log));
        free(text);
        text = wait_console("tpmprobe: done", 2, 1000);
        cr_assert_eq(console_value(text, "nv-counter=", 2), console_value(text, "nv-counter=", 1) + 1);
        free(text);
        free(ek);
        free(before);
        free(after);
        assert_clean();
}

/* The names in dir that end in suffix, removed; returns how many. */
static int remove_suffixed(const char *dir, const char *suffix) {
        DIR *d = opendir(dir);
        struct dirent *e;
        int n = 0;

        cr_assert_not_null(d, "opendir %s", dir);
        while ((e = readdir(d))) {
                size_t l = strlen(e->d_name), sl = strlen(suffix);

                if (l > sl && streq(e->d_name + l - sl, suffix)) {
                        cr_assert_eq(unlinkat(dirfd(d), e->d_name, 0), 0, "remove %s/%s", dir, e->d_name);
                        n++;
                }
        }
        closedir(d);
        return n;
}

static int count_suffixed(const char *dir, const char *suffix) {
        DIR *d = opendir(dir);
        struct dirent *e;
        int n = 0;

        cr_assert_not_null(d, "opendir %s", dir);
        while ((e = readdir(d))) {
                size_t l = strlen(e->d_name), sl = strlen(suffix);

                n += l > sl && streq(e->d_name + l - sl, suffix);
        }
        closedir(d);
        return n;
}

Test(run, lost_tpm_state_is_refused_and_a_new_tpm_only_on_request) {
        char statedir[512], *text, *ek1, *ek3;
        size_t mark;
        struct sup s;

        snprintf(statedir, sizeof(statedir), "%s/state/" UUID, root);
        write_spec("2.0", "tpm-crb", false, false);
        s = start();
        cr_assert_eq(wait_exit(&s, 180000), 0, "%s", slurp(vmsup_log));
        text = wait_console("tpmprobe: done", 1, 1000);
        ek1 = console_word(text, "ek=", 1);
        free(text);

        /* every sealed file gone; the secret id, spec copy and stamp stay */
        cr_assert_gt(remove_suffixed(statedir, ".sealed"), 1);
        mark = strlen(slurp(vmsup_log));
        s = start();
        cr_assert_eq(wait_exit(&s, 60000), 65, "%s", slurp(vmsup_log));
        cr_assert(strstr(slurp(vmsup_log), "the guest's TPM state is gone"), "%s", slurp(vmsup_log));
        cr_assert(strstr(slurp(vmsup_log), "--new-tpm"), "%s", slurp(vmsup_log));
        cr_assert_eq(count_suffixed(statedir, ".sealed"), 0, "a refused start sealed something");
        cr_assert_null(strstr(slurp(vmsup_log) + mark, "manufacturing a"), "%s", slurp(vmsup_log));
        assert_clean();

        /* the operator asks for a new TPM: it is manufactured, and says so */
        run_option = "--new-tpm";
        s = start();
        cr_assert_eq(wait_exit(&s, 180000), 0, "%s", slurp(vmsup_log));
        cr_assert(strstr(slurp(vmsup_log), "--new-tpm: the guest's TPM state is gone"), "%s", slurp(vmsup_log));
        text = wait_console("tpmprobe: done", 2, 1000);
        ek3 = console_word(text, "ek=", 2);
        cr_assert_str_neq(ek1, ek3, "a new TPM kept the old EK");
        cr_assert_eq(console_value(text, "nv-counter=", 2), 1, "%s", text);
        free(text);

        /* --new-tpm never replaces a TPM that has its state */
        s = start();
        cr_assert_eq(wait_exit(&s, 60000), 65, "%s", slurp(vmsup_log));
        cr_assert(strstr(slurp(vmsup_log), "--new-tpm: the guest has sealed TPM state"), "%s", slurp(vmsup_log));
        run_option = NULL;
        s = start();
        cr_assert_eq(wait_exit(&s, 180000), 0, "%s", slurp(vmsup_log));
        text = wait_console("tpmprobe: done", 3, 1000);
        cr_assert_eq(console_value(text, "nv-counter=", 3), 2, "%s", text);
        cr_assert_str_eq(console_word(text, "ek=", 3), ek3);
        free(text);
        free(ek1);
        free(ek3);
        assert_clean();
}

Test(run, damaged_or_lost_ovmf_vars_are_refused) {
        char vars[512], *text;
        struct stat st;
        struct sup s;
        int fd;

        snprintf(vars, sizeof(vars), "%s/state/" UUID "/OVMF_VARS.fd", root);
        write_spec(NULL, NULL, true, false);
        s = start();
        cr_assert_eq(wait_exit(&s, 240000), 0, "%s", slurp(vmsup_log));
        cr_assert(strstr(slurp(vmsup_log), "OVMF VARS"), "the VARS copy was made without a log line: %s",
                  slurp(vmsup_log));
        cr_assert_eq(stat(vars, &st), 0);
        cr_assert_gt(st.st_size, 4096);

        /* truncated: refused and left as it is */
        fd = open(vars, O_WRONLY | O_CLOEXEC);
        cr_assert_geq(fd, 0);
        cr_assert_eq(ftruncate(fd, 4096), 0);
        close(fd);
        s = start();
        cr_assert_eq(wait_exit(&s, 60000), 65, "%s", slurp(vmsup_log));
        cr_assert(strstr(slurp(vmsup_log), "OVMF_VARS.fd' is damaged: 4096 bytes"), "%s", slurp(vmsup_log));
        cr_assert_eq(stat(vars, &st), 0);
        cr_assert_eq(st.st_size, 4096, "the refused VARS were changed");

        /* gone: refused too, not recreated behind the operator's back */
        cr_assert_eq(unlink(vars), 0);
        s = start();
        cr_assert_eq(wait_exit(&s, 60000), 65, "%s", slurp(vmsup_log));
        cr_assert(strstr(slurp(vmsup_log), "OVMF_VARS.fd' is missing, but the guest has run with its own"), "%s",
                  slurp(vmsup_log));
        cr_assert_neq(stat(vars, &st), 0, "a refused start recreated the VARS");

        /* on request: a fresh copy of the template, logged */
        run_option = "--new-vars";
        s = start();
        cr_assert_eq(wait_exit(&s, 240000), 0, "%s", slurp(vmsup_log));
        run_option = NULL;
        cr_assert(strstr(slurp(vmsup_log), "from the template") && strstr(slurp(vmsup_log), "(--new-vars)"), "%s",
                  slurp(vmsup_log));
        cr_assert_eq(stat(vars, &st), 0);
        cr_assert_gt(st.st_size, 4096);
        text = wait_console("tpmprobe:", 1, 1000);
        free(text);
        assert_clean();
}

Test(run, wrong_secret_or_no_barbican_is_refused_and_the_state_kept) {
        char path[512], other[40], pass[BARBICAN_PASSPHRASE_LEN + 1], *text;
        struct barbican_options bo = { .auth = BARBICAN_AUTH_NOAUTH, .endpoint = test_barbican_url(), .attempts = 1 };
        struct barbican_identity who = { .project_id = project };
        struct barbican_client *c = NULL;
        vmsup_error *err = NULL;
        uint8_t *before;
        size_t len, len2;
        struct sup s;
        FILE *f;

        write_spec("2.0", "tpm-crb", false, false);
        s = start();
        cr_assert_eq(wait_exit(&s, 180000), 0, "%s", slurp(vmsup_log));
        snprintf(path, sizeof(path), "%s/state/" UUID "/tpm2-00.permall.sealed", root);
        f = fopen(path, "re");
        before = malloc(1 << 20);
        len = fread(before, 1, 1 << 20, f);
        fclose(f);

        /* another secret of the same owner recorded as the guest's: the key is wrong */
        cr_assert_eq(barbican_client_new(&bo, &who, &c, &err), 0, "%s", err ? err->msg : "");
        cr_assert_eq(barbican_secret_create(c, UUID, pass, other, &err), 0, "%s", err ? err->msg : "");
        barbican_client_free(c);
        snprintf(path, sizeof(path), "%s/state/" UUID "/vtpm_secret_uuid", root);
        text = strdup(slurp(path));
        f = fopen(path, "we");
        fprintf(f, "%s\n", other);
        fclose(f);
        s = start();
        cr_assert_eq(wait_exit(&s, 60000), 65, "%s", slurp(vmsup_log));
        cr_assert(strstr(slurp(vmsup_log), ".sealed': authentication failed (wrong key or altered file)"),
                  "%s", slurp(vmsup_log));
        f = fopen(path, "we");
        fputs(text, f);
        fclose(f);
        free(text);

        /* Barbican unreachable: exit 69 after its bounded retries */
        text = strdup(slurp(conf));
        {
                char *p = strstr(text, "endpoint = ");
                FILE *c2 = fopen(conf, "we");

                cr_assert_not_null(p);
                fwrite(text, 1, (size_t) (p - text), c2);
                fputs("endpoint = http://127.0.0.1:9\nauth = noauth\nretries = 1\n", c2);
                fclose(c2);
        }
        s = start();
        cr_assert_eq(wait_exit(&s, 60000), 69, "%s", slurp(vmsup_log));
        cr_assert(strstr(slurp(vmsup_log), "unreachable after 2 attempts"), "%s", slurp(vmsup_log));
        free(text);

        /* the sealed state is what it was */
        snprintf(path, sizeof(path), "%s/state/" UUID "/tpm2-00.permall.sealed", root);
        text = (char *) test_read_file(path, &len2);
        cr_assert(len2 == len && memcmp(text, before, len) == 0, "a refused start changed the sealed state");
        free(text);
        free(before);
        assert_clean();
}

Test(run, supervisor_killed_then_restarted_keeps_the_tpm) {
        struct sup s;
        char *text;
        long c1, c2;
        int code;

        write_spec("2.0", "tpm-crb", false, true);
        s = start();
        json_object_put(wait_running(&s));
        text = wait_console("tpmprobe: done", 1, 120000);
        c1 = console_value(text, "nv-counter=", 1);
        free(text);

        /* no clean stop: QEMU and swtpm die with vmsup (PDEATHSIG), the live dir stays */
        kill(s.pid, SIGKILL);
        cr_assert_eq(wait_exit(&s, 30000), 128 + SIGKILL);
        for (int i = 0; i < 100 && count_leftovers(false) > 0; i++)
                usleep(100000);
        cr_assert_eq(count_leftovers(false), 0, "QEMU or swtpm outlived their supervisor");

        /* the next supervisor takes over the state: the counter goes on */
        write_spec("2.0", "tpm-crb", false, false);
        s = start();
        code = wait_exit(&s, 180000);
        cr_assert_eq(code, 0, "vmsup exit %d: %s", code, slurp(vmsup_log));
        text = wait_console("tpmprobe: done", 2, 1000);
        c2 = console_value(text, "nv-counter=", 2);
        cr_assert_eq(c2, c1 + 1, "NV counter %ld, then %ld after the supervisor was killed", c1, c2);
        free(text);
        assert_clean();
}

Test(run, host_mode_restarts_without_credentials_while_barbican_is_down) {
        char path[512], *text;
        struct stat st;
        struct sup s;
        long c1, c2;

        secret_security = "host";
        write_spec("2.0", "tpm-crb", false, false);
        s = start(); /* first start: Barbican, with the owner's credential; then kept on the host */
        cr_assert_eq(wait_exit(&s, 180000), 0, "%s", slurp(vmsup_log));
        snprintf(path, sizeof(path), "%s/state/secrets/" UUID, root);
        cr_assert_eq(stat(path, &st), 0, "no local copy of the secret");
        cr_assert_eq(st.st_mode & 07777, 0600);

        barbican_goes_away();
        s = start_without_token();
        cr_assert_eq(wait_exit(&s, 180000), 0, "host mode needs neither credentials nor Barbican: %s", slurp(vmsup_log));
        text = wait_console("tpmprobe: done", 2, 1000);
        c1 = console_value(text, "nv-counter=", 1);
        c2 = console_value(text, "nv-counter=", 2);
        cr_assert_eq(c2, c1 + 1);
        free(text);

        /* delete needs Barbican: while it is down, nothing is removed, the local copy included */
        cr_assert_eq(run_delete(project), 69, "%s", slurp(vmsup_log));
        cr_assert_eq(stat(path, &st), 0, "a failed delete removed the host's copy of the secret");

        /* user mode, the same guest otherwise: without credentials it cannot start */
        secret_security = "user";
        write_spec("2.0", "tpm-crb", false, false);
        s = start_without_token();
        cr_assert_eq(wait_exit(&s, 60000), 77, "%s", slurp(vmsup_log));
        cr_assert(strstr(slurp(vmsup_log), "the guest owner's credentials are required"), "%s", slurp(vmsup_log));
        secret_security = NULL;
        assert_clean();
}

static int resize_to(const char *mode, const char *version, const char *model, bool confirm, char **ret_out) {
        char *text = NULL, *flavor, uuid[] = UUID;
        struct test_run r;
        int code;

        cr_assert(asprintf(&text, "{\"name\": \"m1.%s\", \"extra_specs\": {\"hw:tpm_version\": \"%s\", "
                                  "\"hw:tpm_model\": \"%s\", \"hw:tpm_secret_security\": \"%s\"}}",
                           mode, version, model, mode) > 0);
        flavor = test_write_file(root, "flavor.json", text, 0644);
        test_run_vmsup(&r, NULL, confirm ? (const char *[]) { "--config", conf, "resize", uuid, "--flavor", flavor,
                                                              "--confirm-reset", NULL }
                                         : (const char *[]) { "--config", conf, "resize", uuid, "--flavor", flavor, NULL });
        code = r.exit_code;
        if (ret_out)
                cr_assert(asprintf(ret_out, "%s%s", r.out, r.err) > 0);
        test_run_clear(&r);
        free(text);
        free(flavor);
        return code;
}

Test(run, resize_between_user_and_host_keeps_the_tpm) {
        char path[512], *out = NULL, *text;
        struct stat st;
        struct sup s;

        secret_security = "user";
        write_spec("2.0", "tpm-crb", false, false);
        s = start();
        cr_assert_eq(wait_exit(&s, 180000), 0, "%s", slurp(vmsup_log));

        /* user -> host: allowed; the next start (with the owner's token) keeps a copy */
        cr_assert_eq(resize_to("host", "2.0", "tpm-crb", false, &out), 0, "%s", out);
        cr_assert(strstr(out, "\"secret_security\": \"host\""), "%s", out);
        free(out);
        secret_security = "host";
        write_spec("2.0", "tpm-crb", false, false);
        s = start();
        cr_assert_eq(wait_exit(&s, 180000), 0, "%s", slurp(vmsup_log));
        s = start_without_token();
        cr_assert_eq(wait_exit(&s, 180000), 0, "%s", slurp(vmsup_log));
        snprintf(path, sizeof(path), "%s/state/secrets/" UUID, root);
        cr_assert_eq(stat(path, &st), 0);

        /* host -> user: the host's copy goes; the owner's token is needed again */
        cr_assert_eq(resize_to("user", "2.0", "tpm-crb", false, &out), 0, "%s", out);
        free(out);
        cr_assert_neq(stat(path, &st), 0, "the host still keeps the secret of a user-mode guest");
        secret_security = "user";
        write_spec("2.0", "tpm-crb", false, false);
        s = start();
        cr_assert_eq(wait_exit(&s, 180000), 0, "%s", slurp(vmsup_log));

        /* four boots on one TPM: the counter went up by one each time */
        text = wait_console("tpmprobe: done", 4, 1000);
        for (int i = 2; i <= 4; i++)
                cr_assert_eq(console_value(text, "nv-counter=", i), console_value(text, "nv-counter=", 1) + i - 1);
        free(text);

        /* Nova's refusals: deployment, and a new TPM without --confirm-reset */
        cr_assert_eq(resize_to("deployment", "2.0", "tpm-crb", false, &out), 65, "%s", out);
        cr_assert(strstr(out, "Resize between 'deployment' TPM secret security and other TPM secret security modes "
                              "is not supported."), "%s", out);
        free(out);
        cr_assert_eq(resize_to("user", "1.2", "tpm-tis", false, &out), 65, "%s", out);
        cr_assert(strstr(out, "resizing from TPM 2.0 tpm-crb to TPM 1.2 tpm-tis replaces the guest's TPM"), "%s", out);
        free(out);
        snprintf(path, sizeof(path), "%s/state/" UUID "/tpm2-00.permall.sealed", root);
        cr_assert_eq(stat(path, &st), 0, "a refused resize removed the TPM state");
        cr_assert_eq(resize_to("user", "1.2", "tpm-tis", true, &out), 0, "%s", out);
        free(out);
        cr_assert_neq(stat(path, &st), 0, "a confirmed reset kept the old TPM state");
        /* a confirmed reset is the operator's request: the next start manufactures the new TPM */
        secret_security = "user";
        write_spec("1.2", "tpm-tis", false, false);
        s = start();
        cr_assert_eq(wait_exit(&s, 180000), 0, "%s", slurp(vmsup_log));
        text = wait_console("tpmprobe: done", 5, 1000);
        cr_assert(strstr(text, "tpmprobe: tpm-version=1.2"), "%s", text);
        cr_assert(strstr(slurp(vmsup_log), "manufacturing a TPM 1.2"), "%s", slurp(vmsup_log));
        free(text);
        secret_security = NULL;
        assert_clean();
}

Test(run, deployment_mode_uses_the_services_credentials_and_keeps_nothing_on_the_host) {
        char path[512], *creds, *text;
        struct stat st;
        struct sup s;
        FILE *f;

        /* the service's credentials: root-only (with this test Barbican, its project acts) */
        creds = test_write_file(root, "service-credentials",
                                "auth_type = password\nusername = vmsup\nuser_domain_name = Default\npassword = not-a-real-one\n"
                                "project_id = service-project\n",
                                0600);
        f = fopen(conf, "ae");
        fprintf(f, "[keystone]\ncredentials_file = %s\n", creds);
        fclose(f);
        secret_security = "deployment";
        write_spec("2.0", "tpm-crb", false, false);
        for (int i = 0; i < 2; i++) {
                s = start_without_token();
                cr_assert_eq(wait_exit(&s, 180000), 0, "start %d: %s", i + 1, slurp(vmsup_log));
        }
        text = wait_console("tpmprobe: done", 2, 1000);
        cr_assert_eq(console_value(text, "nv-counter=", 2), console_value(text, "nv-counter=", 1) + 1);
        free(text);
        snprintf(path, sizeof(path), "%s/state/secrets/" UUID, root);
        cr_assert_neq(stat(path, &st), 0, "deployment mode kept the secret on the host");
        /* an owner token given anyway is not used: the service reads its own secret */
        s = start();
        cr_assert_eq(wait_exit(&s, 180000), 0, "a token given in deployment mode is not used: %s", slurp(vmsup_log));
        secret_security = NULL;
        free(creds);
        assert_clean();
}

Test(run, owner_credentials_are_required) {
        struct sup s;

        write_spec("2.0", "tpm-crb", false, false);
        s = start();
        cr_assert_eq(wait_exit(&s, 180000), 0, "%s", slurp(vmsup_log));

        /* another project's credential: Barbican refuses, vmsup exits 77 */
        s = start_as("someone-elses-project");
        cr_assert_eq(wait_exit(&s, 60000), 77, "%s", slurp(vmsup_log));
        cr_assert(strstr(slurp(vmsup_log), "(HTTP 403): the guest owner's credentials are required"), "%s",
                  slurp(vmsup_log));
        assert_clean();
}

Test(run, delete_removes_the_secret_and_every_file_and_is_idempotent) {
        char path[512], id[40] = "", pass[BARBICAN_PASSPHRASE_LEN + 1];
        struct barbican_options bo = { .auth = BARBICAN_AUTH_NOAUTH, .endpoint = test_barbican_url(), .attempts = 1 };
        struct barbican_identity who = { .project_id = project };
        struct barbican_client *c = NULL;
        vmsup_error *err = NULL;
        struct stat st;
        struct sup s;

        write_spec("2.0", "tpm-crb", false, true);
        s = start();
        json_object_put(wait_running(&s));
        cr_assert_eq(run_delete(project), 75, "delete must refuse a running guest: %s", slurp(vmsup_log));
        cr_assert(strstr(slurp(vmsup_log), "the guest is running under vmsup: stop it first"), "%s", slurp(vmsup_log));
        kill(s.pid, SIGTERM);
        cr_assert_eq(wait_exit(&s, 60000), 0, "%s", slurp(vmsup_log));

        snprintf(path, sizeof(path), "%s/state/" UUID "/vtpm_secret_uuid", root);
        test_read_line(path, id, sizeof(id));

        cr_assert_eq(run_delete(project), 0, "%s", slurp(vmsup_log));
        cr_assert(strstr(slurp(vmsup_log), "guest deleted, and its vTPM secret in Barbican"), "%s", slurp(vmsup_log));
        for (int i = 0; i < 3; i++) {
                snprintf(path, sizeof(path), "%s/%s/" UUID, root, i == 0 ? "state" : i == 1 ? "run" : "log");
                cr_assert_neq(stat(path, &st), 0, "%s is still there", path);
        }
        cr_assert_eq(barbican_client_new(&bo, &who, &c, &err), 0, "%s", err ? err->msg : "");
        cr_assert_lt(barbican_secret_fetch(c, id, pass, &err), 0, "the secret is still in Barbican");
        cr_assert(strstr(err->msg, "not found in Barbican"), "%s", err->msg);
        vmsup_error_free(err);
        barbican_client_free(c);

        cr_assert_eq(run_delete(project), 0, "a second delete: %s", slurp(vmsup_log));
        cr_assert(strstr(slurp(vmsup_log), "guest deleted (nothing was left)"), "%s", slurp(vmsup_log));
        assert_clean();
}

Test(run, cli_status_qmp_and_forced_stop) {
        char uuid[] = UUID;
        struct test_run r;
        struct sup s;

        write_spec("2.0", "tpm-crb", false, true);
        s = start_verbose();
        json_object_put(wait_running(&s));
        /* -v: each step of the start with its time */
        cr_assert(strstr(slurp(vmsup_log), "start: QEMU started (+") && strstr(slurp(vmsup_log), "start: cont (+"),
                  "%s", slurp(vmsup_log));

        test_run_vmsup(&r, NULL, (const char *[]) { "--config", conf, "status", uuid, NULL });
        cr_assert_eq(r.exit_code, 0, "%s", r.err);
        cr_assert(strstr(r.out, "state:        running") && strstr(r.out, "tpm:          2.0 tpm-crb"), "%s", r.out);
        test_run_clear(&r);

        test_run_vmsup(&r, NULL, (const char *[]) { "--config", conf, "qmp", uuid, "query-tpm-models", NULL });
        cr_assert_eq(r.exit_code, 0, "%s", r.err);
        cr_assert(strstr(r.out, "tpm-crb"), "%s", r.out);
        test_run_clear(&r);

        test_run_vmsup(&r, NULL, (const char *[]) { "--config", conf, "rebuild", uuid, NULL });
        cr_assert_eq(r.exit_code, 69);
        cr_assert(strstr(r.err, "Operation 'rebuild' not supported for vTPM-enabled instance (" UUID ")."), "%s", r.err);
        test_run_clear(&r);

        test_run_vmsup(&r, NULL, (const char *[]) { "--config", conf, "stop", uuid, "--force", NULL });
        cr_assert_eq(r.exit_code, 0, "%s", r.err);
        test_run_clear(&r);
        cr_assert_eq(wait_exit(&s, 30000), 0, "%s", slurp(vmsup_log));
        assert_clean();
        /* and of the stop, up to the answer */
        cr_assert(strstr(slurp(vmsup_log), "stop: QEMU exited (+") && strstr(slurp(vmsup_log), "stop: swtpm exited (+") &&
                          strstr(slurp(vmsup_log), "stop: live TPM state wiped (+") &&
                          strstr(slurp(vmsup_log), "stop: answered (+"),
                  "%s", slurp(vmsup_log));

        test_run_vmsup(&r, NULL, (const char *[]) { "--config", conf, "status", uuid, NULL });
        cr_assert_eq(r.exit_code, 69);
        cr_assert(strstr(r.err, "is not running under vmsup"), "%s", r.err);
        test_run_clear(&r);
}

/* Whether the process's writable memory holds needle (read through /proc/PID/mem). */
/* vmsup --config conf ARGS... ; returns the exit code, r filled. */
static int cli(struct test_run *r, const char *const *args) {
        const char *argv[16] = { "--config", conf };
        size_t n = 2;

        for (size_t i = 0; args[i]; i++) {
                cr_assert_lt(n, ARRAY_SIZE(argv) - 1);
                argv[n++] = args[i];
        }
        argv[n] = NULL;
        test_run_vmsup(r, NULL, argv);
        return r->exit_code;
}

static void assert_qemu_status(const char *want) {
        struct test_run r;

        cr_assert_eq(cli(&r, (const char *[]) { "qmp", UUID, "query-status", NULL }), 0, "%s", r.err);
        cr_assert(strstr(r.out, want), "QEMU should be %s: %s", want, r.out);
        test_run_clear(&r);
}

/* The passthrough never snapshots the guest's state nor takes its TPM away, and a
 * guest handed over to another host (its migrated-out marker: the outcome of a migration
 * was unknown) takes only read-only commands: nothing on this host can resume it. A
 * failed migration resumes only a guest that ran: an operator's pause stays a pause. */
Test(run, qmp_passthrough_and_a_handed_over_guest_cannot_make_a_second_copy) {
        char marker[512];
        struct test_run r;
        struct sup s;
        FILE *f;

        secret_security = "host";
        write_spec("2.0", "tpm-crb", false, true);
        s = start();
        json_object_put(wait_running(&s));

        cr_assert_eq(cli(&r, (const char *[]) { "qmp", UUID, "snapshot-save",
                                                "{\"job-id\": \"j\", \"tag\": \"s\", \"vmstate\": \"disk0\", "
                                                "\"devices\": [\"disk0\"]}", NULL }),
                     69, "%s", r.err);
        cr_assert(strstr(r.err, "QMP command 'snapshot-save' is refused") && strstr(r.err, "older copy back"), "%s",
                  r.err);
        test_run_clear(&r);
        cr_assert_eq(cli(&r, (const char *[]) { "qmp", UUID, "human-monitor-command",
                                                "{\"command-line\": \"  savevm s1\"}", NULL }),
                     69, "%s", r.err);
        test_run_clear(&r);
        cr_assert_eq(cli(&r, (const char *[]) { "qmp", UUID, "device_del", "{\"id\": \"tpm0\"}", NULL }), 69, "%s",
                     r.err);
        cr_assert(strstr(r.err, "vTPM cannot be removed"), "%s", r.err);
        test_run_clear(&r);
        /* a migration behind vmsup's back: a second copy anywhere, in the clear */
        snprintf(marker, sizeof(marker), "{\"uri\": \"exec:cat > %s/copy\"}", root);
        cr_assert_eq(cli(&r, (const char *[]) { "qmp", UUID, "migrate", marker, NULL }), 69, "%s", r.err);
        cr_assert(strstr(r.err, "QMP command 'migrate' is refused") && strstr(r.err, "vmsup migrate"), "%s", r.err);
        test_run_clear(&r);
        cr_assert_eq(cli(&r, (const char *[]) { "qmp", UUID, "human-monitor-command",
                                                "{\"command-line\": \"migrate -d tcp:127.0.0.1:9\"}", NULL }),
                     69, "%s", r.err);
        test_run_clear(&r);
        cr_assert_eq(cli(&r, (const char *[]) { "qmp", UUID, "query-migrate", NULL }), 0, "%s", r.err);
        cr_assert(!strstr(r.out, "\"status\""), "a migration was started: %s", r.out);
        test_run_clear(&r);
        cr_assert_eq(cli(&r, (const char *[]) { "qmp", UUID, "query-tpm", NULL }), 0, "%s", r.err);
        cr_assert(strstr(r.out, "tpm0"), "the TPM went away: %s", r.out);
        test_run_clear(&r);

        /* paused by the operator; a migration that fails leaves it paused */
        cr_assert_eq(cli(&r, (const char *[]) { "qmp", UUID, "stop", NULL }), 0, "%s", r.err);
        test_run_clear(&r);
        cr_assert_neq(cli(&r, (const char *[]) { "migrate", UUID, "--to", "127.0.0.1:9", "--quiet", NULL }), 0);
        test_run_clear(&r);
        assert_qemu_status("\"status\": \"paused\"");

        /* an unknown outcome: the marker a committed migration leaves */
        snprintf(marker, sizeof(marker), "%s/state/" UUID "/migrated-out", root);
        f = fopen(marker, "we");
        cr_assert_not_null(f);
        fputs("to 192.0.2.1:49152 at 2026-12-07T00:00:00Z (outcome unknown)\n", f);
        fclose(f);
        cr_assert_eq(cli(&r, (const char *[]) { "qmp", UUID, "cont", NULL }), 75, "%s", r.err);
        cr_assert(strstr(r.err, "handed over to another host"), "%s", r.err);
        test_run_clear(&r);
        cr_assert_eq(cli(&r, (const char *[]) { "qmp", UUID, "human-monitor-command", "{\"command-line\": \"c\"}",
                                                NULL }),
                     75, "%s", r.err);
        test_run_clear(&r);
        cr_assert_eq(cli(&r, (const char *[]) { "qmp", UUID, "human-monitor-command",
                                                "{\"command-line\": \"system_reset\"}", NULL }),
                     75, "%s", r.err);
        test_run_clear(&r);
        cr_assert_eq(cli(&r, (const char *[]) { "qmp", UUID, "human-monitor-command",
                                                "{\"command-line\": \"info status\"}", NULL }),
                     0, "%s", r.err);
        cr_assert(strstr(r.out, "paused"), "%s", r.out);
        test_run_clear(&r);
        cr_assert_eq(cli(&r, (const char *[]) { "reboot", UUID, "--hard", NULL }), 75, "%s", r.err);
        test_run_clear(&r);
        cr_assert_eq(cli(&r, (const char *[]) { "reboot", UUID, NULL }), 75, "%s", r.err);
        test_run_clear(&r);
        cr_assert_eq(cli(&r, (const char *[]) { "migrate", UUID, "--to", "127.0.0.1:9", "--quiet", NULL }), 75,
                     "%s", r.err);
        test_run_clear(&r);
        assert_qemu_status("\"status\": \"paused\"");
        cr_assert_eq(cli(&r, (const char *[]) { "status", UUID, NULL }), 0, "%s", r.err);
        cr_assert(strstr(r.out, "migrated out: to 192.0.2.1:49152"), "%s", r.out);
        test_run_clear(&r);
        cr_assert_eq(cli(&r, (const char *[]) { "list", NULL }), 0, "%s", r.err);
        cr_assert(strstr(r.out, UUID) && strstr(r.out, " migrated-out "), "%s", r.out);
        test_run_clear(&r);
        cr_assert_eq(cli(&r, (const char *[]) { "list", "--json", NULL }), 0, "%s", r.err);
        cr_assert(strstr(r.out, "\"migrated_out\":\"to 192.0.2.1:49152") && strstr(r.out, "\"state\":\"migrated-out\""), "%s",
                  r.out);
        test_run_clear(&r);

        /* the recovery for a guest that runs on the other host: stop it here */
        cr_assert_eq(cli(&r, (const char *[]) { "stop", UUID, "--force", NULL }), 0, "%s", r.err);
        test_run_clear(&r);
        cr_assert_eq(wait_exit(&s, 60000), 0, "%s", slurp(vmsup_log));
        secret_security = NULL;
        assert_clean();
}

static bool memory_holds(pid_t pid, const void *needle, size_t len, char *where, size_t wlen) {
        char path[64], line[512];
        bool found = false;
        FILE *maps;
        int mem;

        snprintf(path, sizeof(path), "/proc/%d/maps", (int) pid);
        maps = fopen(path, "re");
        cr_assert_not_null(maps);
        snprintf(path, sizeof(path), "/proc/%d/mem", (int) pid);
        mem = open(path, O_RDONLY | O_CLOEXEC);
        cr_assert_geq(mem, 0, "open %s", path);
        while (!found && fgets(line, sizeof(line), maps)) {
                unsigned long start, end;
                char perms[5];
                uint8_t *buf;
                ssize_t n;

                if (sscanf(line, "%lx-%lx %4s", &start, &end, perms) != 3 || perms[0] != 'r' || perms[1] != 'w')
                        continue;
                buf = malloc(end - start);
                cr_assert_not_null(buf);
                n = pread(mem, buf, end - start, (off_t) start);
                if (n > 0 && memmem(buf, (size_t) n, needle, len)) {
                        snprintf(where, wlen, "%s", line);
                        found = true;
                }
                free(buf);
        }
        close(mem);
        fclose(maps);
        return found;
}

/* Issue #9: the supervisor, which runs as long as its guest, maps no HTTP or libtpms code
 * (the Barbican exchange and libtpms' check run in children that load them; gnutls, its
 * crypto and migration TLS library, stays), and neither the owner's credential nor the
 * vTPM passphrase is anywhere in its memory. */
/* Whether one of pid's children holds target (a "pipe:[N]" of the supervisor's). */
static bool child_holds(pid_t pid, const char *target) {
        char path[96], *kids;
        bool found = false;

        snprintf(path, sizeof(path), "/proc/%d/task/%d/children", (int) pid, (int) pid);
        kids = strdup(slurp(path));
        for (char *k = strtok(kids, " \n"); k && !found; k = strtok(NULL, " \n")) {
                char dirpath[64], link[384], t[256];
                struct dirent *de;
                DIR *d;

                snprintf(dirpath, sizeof(dirpath), "/proc/%s/fd", k);
                if (!(d = opendir(dirpath)))
                        continue;
                while (!found && (de = readdir(d))) {
                        ssize_t n;

                        snprintf(link, sizeof(link), "%s/%s", dirpath, de->d_name);
                        n = readlink(link, t, sizeof(t) - 1);
                        if (n > 0) {
                                t[n] = '\0';
                                found = streq(t, target);
                        }
                }
                closedir(d);
        }
        free(kids);
        return found;
}

/* The credential came on a pipe (fd 3, test_spawn()): guest_run took that fd and closes it
 * once the secret is read. The supervisor holds no pipe while the guest runs but the read
 * ends of its children's logs (a child holds the other end). */
static void assert_no_pipe_held(pid_t pid) {
        char dirpath[64], link[384], target[256];
        struct dirent *de;
        DIR *d;

        snprintf(dirpath, sizeof(dirpath), "/proc/%d/fd", (int) pid);
        d = opendir(dirpath);
        cr_assert_not_null(d, "open %s", dirpath);
        while ((de = readdir(d))) {
                ssize_t n;

                if (de->d_name[0] == '.')
                        continue;
                snprintf(link, sizeof(link), "%s/%s", dirpath, de->d_name);
                n = readlink(link, target, sizeof(target) - 1);
                if (n < 0)
                        continue;
                target[n] = '\0';
                cr_assert(strncmp(target, "pipe:", 5) != 0 || child_holds(pid, target),
                          "the supervisor still holds fd %s: %s (the token's?)", de->d_name, target);
        }
        closedir(d);
}

Test(run, the_supervisor_maps_no_http_or_libtpms_and_holds_no_credential_or_passphrase) {
        static const char credential[] = "owner-credential-5d2c61e0a9b84f3e";
        static const char *const libs[] = { "libcurl", "libtpms", "libcrypto.so", "libssl.so" };
        struct barbican_options bo = { .auth = BARBICAN_AUTH_NOAUTH, .endpoint = test_barbican_url(), .attempts = 1 };
        struct barbican_identity who = { .project_id = credential };
        char path[512], id[40] = "", pass[BARBICAN_PASSPHRASE_LEN + 1], where[512] = "";
        struct barbican_client *c = NULL;
        vmsup_error *err = NULL;
        const char *maps;
        struct sup s;

        write_spec("2.0", "tpm-crb", false, true);
        s = start_as(credential);
        json_object_put(wait_running(&s));

        snprintf(path, sizeof(path), "/proc/%d/maps", (int) s.pid);
        maps = slurp(path);
        cr_assert(strstr(maps, "libgnutls"), "not the supervisor's maps? %s", maps);
        for (size_t i = 0; i < ARRAY_SIZE(libs); i++)
                cr_assert_null(strstr(maps, libs[i]), "the supervisor maps %s:\n%s", libs[i], maps);

        snprintf(path, sizeof(path), "%s/state/" UUID "/vtpm_secret_uuid", root);
        test_read_line(path, id, sizeof(id));
        cr_assert_eq(barbican_client_new(&bo, &who, &c, &err), 0, "%s", err ? err->msg : "");
        cr_assert_eq(barbican_secret_fetch(c, id, pass, &err), 0, "%s", err ? err->msg : "");
        /* the start's anchor is recorded by the keeper on the loop: once Barbican has it, the
         * keeper has done its request */
        for (uint64_t gen = 0; gen == 0;) {
                int got = barbican_secret_anchor_get(c, id, &gen, &err);

                cr_assert_geq(got, 0, "%s", err ? err->msg : "");
                if (got == 0 || gen == 0) {
                        cr_assert_eq(kill(s.pid, 0), 0, "the supervisor ended: %s", slurp(vmsup_log));
                        usleep(100 * 1000);
                        gen = 0;
                }
        }
        barbican_client_free(c);
        cr_assert_not(memory_holds(s.pid, credential, strlen(credential), where, sizeof(where)),
                      "the credential is in the supervisor's memory at %s", where);
        assert_no_pipe_held(s.pid);
        cr_assert_not(memory_holds(s.pid, pass, BARBICAN_PASSPHRASE_LEN, where, sizeof(where)),
                      "the passphrase is in the supervisor's memory at %s", where);
        /* the child that keeps the credential for the stop's rollback anchor (a fork of the
         * supervisor, no exec) holds it, and nothing else of the guest's secrets */
        {
                char kids_path[96], exe[PATH_MAX], self[PATH_MAX], *kids;
                int keepers = 0;
                ssize_t n;

                snprintf(kids_path, sizeof(kids_path), "/proc/%d/exe", (int) s.pid);
                n = readlink(kids_path, self, sizeof(self) - 1);
                cr_assert_gt(n, 0);
                self[n] = '\0';
                snprintf(kids_path, sizeof(kids_path), "/proc/%d/task/%d/children", (int) s.pid, (int) s.pid);
                kids = strdup(slurp(kids_path));
                for (char *k = strtok(kids, " \n"); k; k = strtok(NULL, " \n")) {
                        char link[64];

                        snprintf(link, sizeof(link), "/proc/%s/exe", k);
                        n = readlink(link, exe, sizeof(exe) - 1);
                        if (n <= 0)
                                continue;
                        exe[n] = '\0';
                        if (!streq(exe, self))
                                continue; /* QEMU, swtpm */
                        keepers++;
                        /* the keeper lives as long as the guest: each request to Barbican
                         * runs in a child of its own, so libcurl and its TLS and
                         * Kerberos libraries (1.6 MiB of PSS) come and go with it */
                        snprintf(link, sizeof(link), "/proc/%s/maps", k);
                        maps = slurp(link);
                        for (size_t i = 0; i < ARRAY_SIZE(libs); i++)
                                cr_assert_null(strstr(maps, libs[i]), "the keeper maps %s:\n%s", libs[i], maps);
                        cr_assert(memory_holds(atoi(k), credential, strlen(credential), where, sizeof(where)),
                                  "the keeper %s does not hold the credential", k);
                        cr_assert_not(memory_holds(atoi(k), pass, BARBICAN_PASSPHRASE_LEN, where, sizeof(where)),
                                      "the passphrase is in the keeper's memory (%s) at %s", k, where);
                }
                free(kids);
                cr_assert_eq(keepers, 1, "one child keeps the credential");
        }
        explicit_bzero(pass, sizeof(pass));

        kill(s.pid, SIGTERM);
        cr_assert_eq(wait_exit(&s, 60000), 0, "%s", slurp(vmsup_log));
        assert_clean();
}
