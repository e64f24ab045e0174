/* systemd/vmsup@.service.in: systemd's own checker accepts it (systemd-analyze verify, no
 * running systemd needed), and what it says about vmsup agrees with vmsup: the exit
 * statuses where a restart cannot help, and a stop timeout above vmsup's own. */
#include "config.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "cli/exitstatus.h"
#include "common/proc.h"
#include "common/util.h"
#include "supervisor/hostconfig.h"
#include "tests/helpers.h"

#define TEMPLATE TEST_SRCDIR "/systemd/vmsup@.service.in"
#define INSTANCE "vmsup@0c5e1f2a-7b3d-4e9f-8a6c-2d4b6f8e0a1c.service"

static char *root;

static void setup(void) {
        root = test_mkdtemp();
}

static void teardown(void) {
        test_rmtree(root);
        free(root);
}

TestSuite(systemd, .init = setup, .fini = teardown, .timeout = 120);

/* The template with ExecStart on the vmsup just built (verify checks that it exists),
 * edited by replacing from with to (NULL: as is), written to root/vmsup@.service. */
static char *unit_copy(const char *from, const char *to) {
        size_t len;
        char *text = (char *) test_read_file(TEMPLATE, &len), *out = NULL, *at, *p;

        text = realloc(text, len + 1);
        text[len] = '\0';
        at = strstr(text, "@sbindir@/vmsup");
        cr_assert(at, "the template's ExecStart does not run @sbindir@/vmsup");
        *at = '\0';
        cr_assert(asprintf(&out, "%s%s%s", text, VMSUP_BIN, at + strlen("@sbindir@/vmsup")) > 0);
        free(text);
        if (from) {
                cr_assert((p = strstr(out, from)), "the unit has no '%s'", from);
                *p = '\0';
                cr_assert(asprintf(&text, "%s%s%s", out, to, p + strlen(from)) > 0);
                free(out);
                out = text;
        }
        free(test_write_file(root, "vmsup@.service", out, 0644));
        return out;
}

/* systemd-analyze verify of root/name: its exit status, its output in *ret_out. */
static int verify(const char *name, char **ret_out) {
        vmsup_error *err = NULL;
        char *exe = proc_find_executable("systemd-analyze", &err), *unit = NULL, *out = NULL;
        char *argv[] = { exe, "verify", "--man=no", NULL, NULL };
        char *envp[] = { NULL, NULL };
        struct proc_result res = { 0 };

        cr_assert(exe, "systemd-analyze is missing (Debian's package systemd: ./dev deps installs it): %s",
                  err ? err->msg : "");
        cr_assert(asprintf(&unit, "%s/%s", root, name) > 0);
        argv[3] = unit;
        cr_assert(asprintf(&envp[0], "PATH=%s", getenv("PATH")) > 0);
        cr_assert_eq(proc_run_capture(argv, envp, 60000, 1 << 20, &res, &err), 0, "%s", err ? err->msg : "");
        cr_assert(asprintf(&out, "%s%s", res.out, res.errout) >= 0);
        *ret_out = out;
        proc_result_clear(&res);
        free(envp[0]);
        free(unit);
        free(exe);
        return WIFEXITED(res.status) ? WEXITSTATUS(res.status) : -1;
}

/* The value of key= in the unit text (up to the end of its line), in buf. */
static const char *value_of(const char *text, const char *key, char *buf, size_t size) {
        char want[128];
        const char *p;

        snprintf(want, sizeof(want), "\n%s=", key);
        p = strstr(text, want);
        cr_assert(p, "the unit sets no %s=", key);
        p += strlen(want);
        snprintf(buf, size, "%.*s", (int) strcspn(p, "\n"), p);
        return buf;
}

Test(systemd, systemd_analyze_verify_accepts_the_template_and_an_instance) {
        char *text = unit_copy(NULL, NULL), *out = NULL;

        cr_assert_eq(verify("vmsup@.service", &out), 0, "%s", out);
        cr_assert_str_empty(out, "systemd-analyze verify vmsup@.service: %s", out);
        free(out);
        /* what `systemctl start vmsup@UUID` loads */
        cr_assert_eq(verify(INSTANCE, &out), 0, "%s", out);
        cr_assert_str_empty(out, "systemd-analyze verify " INSTANCE ": %s", out);
        free(out);
        free(text);
}

/* The check above can fail: a misspelt setting is reported. */
Test(systemd, systemd_analyze_verify_reports_a_bad_setting) {
        char *text = unit_copy("\nKillMode=mixed", "\nKillMode=mixd"), *out = NULL;

        verify("vmsup@.service", &out);
        cr_assert(strstr(out, "kill mode"), "%s", out);
        free(out);
        free(text);
}

Test(systemd, the_unit_matches_what_vmsup_does) {
        char *text = unit_copy(NULL, NULL), buf[256], want[64], *conf;
        struct host_config cfg = { 0 };
        vmsup_error *err = NULL;

        cr_assert_str_eq(value_of(text, "Type", buf, sizeof(buf)), "notify");
        cr_assert_str_eq(value_of(text, "KillMode", buf, sizeof(buf)), "mixed");
        cr_assert_str_eq(value_of(text, "Restart", buf, sizeof(buf)), "on-failure");
        cr_assert_str_eq(value_of(text, "Slice", buf, sizeof(buf)), "machine.slice");
        cr_assert(strstr(value_of(text, "ExecStart", buf, sizeof(buf)), " run /etc/vmsup/guests/%i.json"), "%s", buf);
        /* no restart where one cannot help (bad command line, spec, credentials, config) or
         * where the guest's on_crash destroy says it stays down */
        snprintf(want, sizeof(want), "%d %d %d %d %d", cli_exit_status(VMSUP_ERR_CRASHED),
                 cli_exit_status(VMSUP_ERR_USAGE), cli_exit_status(VMSUP_ERR_DATA), cli_exit_status(VMSUP_ERR_DENIED),
                 cli_exit_status(VMSUP_ERR_CONFIG));
        cr_assert_str_eq(value_of(text, "RestartPreventExitStatus", buf, sizeof(buf)), want);
        /* systemd's SIGKILL only after vmsup's own stop: the default stop_timeout, QEMU's
         * quit grace, swtpm's shutdown and the last seal */
        conf = test_write_conf(root, "vmsup.conf", &(struct test_conf) { .root = root });
        cr_assert_eq(host_config_load(conf, false, &cfg, &err), 0, "%s", err ? err->msg : "");
        cr_assert_gt(atol(value_of(text, "TimeoutStopSec", buf, sizeof(buf))), (long) cfg.supervisor.stop_timeout + 60,
                     "TimeoutStopSec=%s against stop_timeout %u", buf, cfg.supervisor.stop_timeout);
        host_config_clear(&cfg);
        free(conf);
        free(text);
}
