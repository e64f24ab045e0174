/* The TPM state's rollback anchor (docs/vmsup.8, TPM STATE), end to end on real swtpm,
 * QEMU (TCG), the demo guest and a real Barbican, in host mode (the anchor in the local
 * store) and in user mode (the anchor in the vTPM secret's Barbican metadata): a complete
 * older copy of the state dir is refused and nothing is changed; a supervisor killed
 * (SIGKILL, VMSUP_TEST_KILL_AT) at each step of a start and a stop never leaves a good
 * state refused, and the NV counter the guest prints never goes back. */
#include "config.h"

#include <criterion/criterion.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/util.h"
#include "tests/barbican_fixture.h"
#include "tests/guestfix.h"
#include "tests/helpers.h"

#define UUID "7d3e9b10-2c4a-4f6e-8b1d-5a9c0e2f4b6d"

static char *root, *conf, *spec, *console, *vmsup_log, *state_dir;

static void setup(void) {
        root = test_mkdtemp();
        conf = test_write_conf(root, "vmsup.conf",
                               &(struct test_conf) { .root = root, .supervisor = "stop_timeout = 3\n",
                                                     .barbican_url = test_barbican_url(), .barbican = "retries = 1\n" });
        cr_assert(asprintf(&console, "%s/log/" UUID "/console.log", root) > 0);
        cr_assert(asprintf(&vmsup_log, "%s/vmsup.log", root) > 0);
        cr_assert(asprintf(&state_dir, "%s/state/" UUID, root) > 0);
}

static void teardown(void) {
        test_root_cleanup(root);
        free(conf);
        free(spec);
        free(console);
        free(vmsup_log);
        free(state_dir);
}

TestSuite(anchor, .init = setup, .fini = teardown, .timeout = 1800);

static void write_spec(const char *secret_security, bool hold) {
        char extra[256];

        snprintf(extra, sizeof(extra),
                 "\"hw:tpm_version\": \"2.0\", \"hw:tpm_model\": \"tpm-crb\", \"hw:tpm_secret_security\": \"%s\"",
                 secret_security);
        free(spec);
        spec = test_write_spec(root, "guest.json",
                               &(struct test_spec) { .uuid = UUID, .name = "anchored", .extra_specs = extra,
                                                     .guest_dir = TEST_GUEST_DIR, .hold = hold });
}

/* vmsup run with the owner's credential (Barbican's noauth project) on fd 3; kill_at:
 * VMSUP_TEST_KILL_AT, or NULL. */
static struct sup start(const char *kill_at) {
        char *argv[] = { VMSUP_BIN, "--config", conf, "run", "--token-fd", "3", spec, NULL };
        char env[128];
        char *envp[] = { env, NULL };

        snprintf(env, sizeof(env), "VMSUP_TEST_KILL_AT=%s", kill_at ? kill_at : "");
        return test_spawn(argv, kill_at ? envp : NULL, vmsup_log, "project-of-the-owner");
}

static void sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void sh(const char *fmt, ...) {
        char cmd[2048];
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(cmd, sizeof(cmd), fmt, ap);
        va_end(ap);
        cr_assert_eq(system(cmd), 0, "%s failed", cmd);
}

/* How many "tpmprobe: done" lines the console has. */
static int boots(void) {
        int n = 0;

        for (const char *p = slurp(console); (p = strstr(p, "tpmprobe: done")); p++)
                n++;
        return n;
}

/* One start until the guest powers off; the NV counter it printed. */
static long boot_once(void) {
        struct sup s = start(NULL);
        int code = wait_exit(&s, 240000), n;
        char *text;
        long c;

        cr_assert_eq(code, 0, "vmsup exit %d: %s", code, slurp(vmsup_log));
        n = boots();
        text = test_wait_console(console, vmsup_log, "tpmprobe: done", n, 1000);
        c = console_value(text, "nv-counter=", n);
        free(text);
        return c;
}

static off_t size_of(const char *path) {
        struct stat st;

        return stat(path, &st) == 0 ? st.st_size : -1;
}

/* "... is generation A, older than generation B ..." in the log: A and B. */
static void refused_generations(uint64_t *a, uint64_t *b) {
        const char *p = strstr(slurp(vmsup_log), "is generation ");

        cr_assert_not_null(p, "no refusal naming the generations: %s", slurp(vmsup_log));
        cr_assert_eq(sscanf(p, "is generation %" SCNu64 ", older than generation %" SCNu64, a, b), 2, "%s", p);
}

static void rollback_is_refused(const char *mode) {
        char backup[600], before[600], anchor[600];
        uint64_t a, b;
        long c1, c3;
        off_t console_size;
        struct sup s;
        int code;

        write_spec(mode, false);
        c1 = boot_once();
        snprintf(backup, sizeof(backup), "%s/backup", root);
        sh("cp -a '%s' '%s'", state_dir, backup);
        boot_once();
        c3 = boot_once();
        cr_assert_eq(c3, c1 + 2);

        /* the operator puts the copy of boot 1 back */
        sh("rm -rf '%s' && cp -a '%s' '%s'", state_dir, backup, state_dir);
        snprintf(before, sizeof(before), "%s/before", root);
        sh("cp -a '%s' '%s'", state_dir, before);
        console_size = size_of(console);

        s = start(NULL);
        code = wait_exit(&s, 240000);
        cr_assert_eq(code, 65, "vmsup exit %d: %s", code, slurp(vmsup_log));
        refused_generations(&a, &b);
        cr_assert_lt(a, b, "%s", slurp(vmsup_log));
        cr_assert(strstr(slurp(vmsup_log), "rollback anchor"), "%s", slurp(vmsup_log));
        /* nothing changed: no file of the state dir, no boot; and no plaintext left (user
         * mode refuses once swtpm runs: the anchor comes while QEMU sets itself up) */
        sh("diff -r '%s' '%s'", before, state_dir);
        sh("test -z \"$(ls -A '%s/run/" UUID "/tpm' 2>/dev/null)\"", root);
        cr_assert_eq(size_of(console), console_size, "the guest booted: %s", slurp(console));
        if (streq(mode, "host")) {
                snprintf(anchor, sizeof(anchor), "%s/state/secrets/" UUID ".anchor", root);
                cr_assert_gt(size_of(anchor), 0, "no anchor in the local store");
        }
}

Test(anchor, host_mode_refuses_a_restored_older_state_dir) {
        rollback_is_refused("host");
}

Test(anchor, user_mode_refuses_a_restored_older_state_dir) {
        rollback_is_refused("user");
}

/* Every kill point in turn: the supervisor dies there (or the run ends without reaching
 * it); the next start must never be refused, and every counter the guest prints is
 * above the ones before (no state it saw is lost; a line may be missing when the
 * supervisor, which writes console.log, died before it read it). */
static void kill_at_every_step(const char *mode, const char *const *points, size_t n, size_t must_reach) {
        long last = -1;
        int seen = 0;

        write_spec(mode, false);
        for (size_t i = 0; i <= n; i++) {
                struct sup s = start(i < n ? points[i] : NULL);
                int code = wait_exit(&s, 240000);

                if (i < n && i < must_reach)
                        cr_assert_eq(code, 128 + SIGKILL, "%s: not killed at %s (exit %d): %s", mode, points[i], code,
                                     slurp(vmsup_log));
                else
                        cr_assert(code == 0 || code == 128 + SIGKILL, "%s: after %s, exit %d: %s", mode,
                                  i < n ? points[i] : "the last kill", code, slurp(vmsup_log));
                for (int k = 0; k < 100 && test_count_processes(root, false) > 0; k++)
                        usleep(100000);
                cr_assert_eq(test_count_processes(root, false), 0, "QEMU or swtpm outlived their supervisor");
                /* the counters printed so far go up */
                while (seen < boots()) {
                        char *text = test_wait_console(console, vmsup_log, "tpmprobe: done", seen + 1, 1000);
                        long c = console_value(text, "nv-counter=", seen + 1);

                        free(text);
                        cr_assert(c > last, "%s: NV counter %ld after %ld (kill at %s)", mode, c,
                                  last, i < n ? points[i] : "-");
                        last = c;
                        seen++;
                }
                cr_assert_null(strstr(slurp(vmsup_log), "older than generation"), "%s: a good state was refused: %s",
                               mode, slurp(vmsup_log));
        }
        cr_assert_gt(seen, 0, "the guest never booted");
}

Test(anchor, host_mode_anchor_survives_sigkill_at_every_step) {
        /* host mode: the anchor follows every seal (the start's, the running guest's, the stop's) */
        static const char *const points[] = { "start-checked:1", "anchor-before:1", "anchor-after:1",
                                              "anchor-before:2", "anchor-after:2",  "anchor-before:3",
                                              "anchor-after:3",  "anchor-before:4" };

        kill_at_every_step("host", points, ARRAY_SIZE(points), 3);
}

Test(anchor, user_mode_anchor_survives_sigkill_at_every_step) {
        /* user mode: at the start (after its seals) and at the stop (after the last seal) */
        static const char *const points[] = { "start-checked:1", "anchor-before:1", "anchor-after:1",
                                              "anchor-before:2", "anchor-after:2" };

        kill_at_every_step("user", points, ARRAY_SIZE(points), 3);
}

/* vmsup tpm ARGS... (and resume), with the owner's credential on fd 3; its exit. */
static int run_vmsup(const char *verb, const char *a1, const char *a2, const char *a3, const char *a4) {
        char *argv[] = { VMSUP_BIN, "--config", conf, (char *) verb, "--token-fd", "3", (char *) a1, (char *) a2,
                         (char *) a3, (char *) a4, NULL };
        struct sup s;

        if (streq(verb, "resume")) { /* no credential option */
                argv[4] = (char *) a1;
                argv[5] = NULL;
        }
        s = test_spawn(argv, NULL, vmsup_log, "project-of-the-owner");
        return wait_exit(&s, 240000);
}

static void export_and_import(const char *mode) {
        char file[600], control[600], before[600], bad[600];
        json_object *ret;
        vmsup_error *err = NULL;
        struct sup s;
        char *text;
        long c1, c2, c3, c4;
        int code, n;

        snprintf(file, sizeof(file), "%s/tpm.export", root);
        snprintf(control, sizeof(control), "%s/run/" UUID "/control.sock", root);
        write_spec(mode, false);
        c1 = boot_once();

        /* a running guest, which bumped its counter: exported in a pause */
        write_spec(mode, true);
        s = start(NULL);
        json_object_put(test_wait_running(&s, control, vmsup_log, 120000));
        n = boots() + 1;
        text = test_wait_console(console, vmsup_log, "tpmprobe: done", n, 120000);
        c2 = console_value(text, "nv-counter=", n);
        free(text);
        cr_assert_eq(c2, c1 + 1);
        code = run_vmsup("tpm", "export", UUID, file, "--keep-paused");
        cr_assert_eq(code, 0, "export exit %d: %s", code, slurp(vmsup_log));
        cr_assert(strstr(slurp(vmsup_log), "the guest stays paused"), "%s", slurp(vmsup_log));
        ret = test_control(control, "status", NULL, &err);
        cr_assert_not_null(ret, "%s", err ? err->msg : "");
        cr_assert(strstr(json_object_to_json_string(ret), "paused"), "not paused: %s", json_object_to_json_string(ret));
        json_object_put(ret);
        code = run_vmsup("resume", UUID, NULL, NULL, NULL);
        cr_assert_eq(code, 0, "resume exit %d: %s", code, slurp(vmsup_log));
        /* no plaintext: neither the probe's output nor swtpm's header */
        cr_assert_eq(memcmp(slurp(file), "VMSUPSL1", 8), 0);
        ret = test_control(control, "stop", NULL, &err);
        cr_assert_not_null(ret, "%s", err ? err->msg : "");
        json_object_put(ret);
        cr_assert_eq(wait_exit(&s, 120000), 0, "%s", slurp(vmsup_log));

        write_spec(mode, false);
        c3 = boot_once();
        cr_assert_eq(c3, c2 + 1);

        /* older than the anchor: refused, nothing changed */
        snprintf(before, sizeof(before), "%s/before", root);
        sh("cp -a '%s' '%s'", state_dir, before);
        code = run_vmsup("tpm", "import", UUID, file, NULL);
        cr_assert_eq(code, 65, "import exit %d: %s", code, slurp(vmsup_log));
        cr_assert(strstr(slurp(vmsup_log), "--allow-rollback"), "%s", slurp(vmsup_log));
        {
                const char *p = strstr(slurp(vmsup_log), "the export is generation ");
                uint64_t a, b;

                cr_assert_not_null(p, "%s", slurp(vmsup_log));
                cr_assert_eq(sscanf(p, "the export is generation %" SCNu64 " of the TPM state, older than generation %" SCNu64,
                                    &a, &b), 2, "%s", p);
                cr_assert_lt(a, b);
        }
        sh("diff -r '%s' '%s'", before, state_dir);

        /* altered: refused, nothing changed */
        snprintf(bad, sizeof(bad), "%s/bad.export", root);
        sh("cp '%s' '%s' && printf 'x' | dd of='%s' bs=1 seek=200 conv=notrunc 2>/dev/null", file, bad, bad);
        code = run_vmsup("tpm", "import", UUID, bad, "--allow-rollback");
        cr_assert_eq(code, 65, "import exit %d: %s", code, slurp(vmsup_log));
        cr_assert(strstr(slurp(vmsup_log), "authentication failed"), "%s", slurp(vmsup_log));
        sh("diff -r '%s' '%s'", before, state_dir);

        /* on purpose: the guest boots with the exported counter */
        code = run_vmsup("tpm", "import", UUID, file, "--allow-rollback");
        cr_assert_eq(code, 0, "import exit %d: %s", code, slurp(vmsup_log));
        cr_assert(strstr(slurp(vmsup_log), "warning: --allow-rollback"), "%s", slurp(vmsup_log));
        c4 = boot_once();
        cr_assert_eq(c4, c2 + 1, "after importing the export of counter %ld the guest counted %ld", c2, c4);
        /* and the state it replaced cannot come back */
        sh("rm -rf '%s' && cp -a '%s' '%s'", state_dir, before, state_dir);
        s = start(NULL);
        code = wait_exit(&s, 240000);
        cr_assert_eq(code, 65, "the state the import replaced started again (exit %d): %s", code, slurp(vmsup_log));
}

Test(anchor, host_mode_export_of_a_running_guest_and_import_with_rollback) {
        export_and_import("host");
}

Test(anchor, user_mode_export_of_a_running_guest_and_import_with_rollback) {
        export_and_import("user");
}
