/* A guest whose kernel panics (the demo guest's vmsup.panic): the pvpanic device tells
 * QEMU, QEMU pauses it and reports GUEST_PANICKED, and the supervisor applies the spec's
 * on_crash: destroy, restart or preserve. Real swtpm, QEMU (TCG) and Barbican. */
#include "config.h"

#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/util.h"
#include "tests/barbican_fixture.h"
#include "tests/guestfix.h"
#include "tests/helpers.h"

#define UUID "8d3e5b1a-7c2f-4e9d-a6b0-1f4c8e2d9a73"

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

static void teardown(void) {
        test_root_cleanup(root);
        free(conf);
        free(spec_path);
        free(console);
        free(vmsup_log);
        free(control_path);
}

TestSuite(oncrash, .init = setup, .fini = teardown, .timeout = 400);

/* The demo guest, panicking after tpmprobe when panic is true; on_crash NULL: not in the spec. */
static void write_spec(const char *on_crash, bool panic) {
        char firmware[1024];

        snprintf(firmware, sizeof(firmware),
                 "{\"kernel\": \"%s/vmlinuz\", \"initrd\": \"%s/initrd.img\", \"cmdline\": \"console=ttyS0 quiet%s\"}",
                 TEST_GUEST_DIR, TEST_GUEST_DIR, panic ? " vmsup.panic" : "");
        free(spec_path);
        spec_path = test_write_spec(root, "guest.json",
                                    &(struct test_spec) { .uuid = UUID, .name = "demo", .firmware = firmware,
                                                          .on_crash = on_crash });
}

static struct sup start(void) {
        char *argv[] = { VMSUP_BIN, "--config", conf, "run", "--token-fd", "3", spec_path, NULL };

        return test_spawn(argv, NULL, vmsup_log, "project-of-the-owner");
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

static void assert_no_leftovers(void) {
        cr_assert_eq(test_count_processes(root, false), 0, "vmsup, swtpm or QEMU processes of the test remain");
}

Test(oncrash, a_bad_value_is_refused_naming_the_key) {
        struct test_run r;

        write_spec("reboot", false);
        test_run_vmsup(&r, NULL, (const char *[]) { "--config", conf, "validate", spec_path, NULL });
        cr_assert_eq(r.exit_code, 65, "%s%s", r.out, r.err);
        cr_assert(strstr(r.err, "key 'on_crash': must be destroy, restart or preserve"), "%s", r.err);
        test_run_clear(&r);
}

/* The default: the supervisor ends (exit 1), the TPM state sealed; the next start sees it. */
Test(oncrash, destroy_ends_the_guest_and_keeps_its_tpm_state) {
        char *events_out = NULL;
        char *argv_events[] = { VMSUP_BIN, "--config", conf, "events", UUID, "--json", NULL };
        struct sup s, events;
        char *text, *ek1, *ek2;
        long c1, c2;
        int code;

        cr_assert(asprintf(&events_out, "%s/events.out", root) > 0);
        write_spec(NULL, true);
        s = start();
        /* its event stream, from before the guest runs */
        for (long deadline = monotonic_ms() + 120000; access(control_path, F_OK) < 0; usleep(20000))
                cr_assert(monotonic_ms() < deadline, "no control socket: %s", slurp(vmsup_log));
        events = test_spawn(argv_events, NULL, events_out, NULL);
        code = wait_exit(&s, 300000);
        cr_assert_eq(code, 3, "vmsup exit %d: %s", code, slurp(vmsup_log));
        cr_assert_eq(wait_exit(&events, 30000), 0, "%s", slurp(events_out));
        cr_assert(strstr(slurp(events_out), "\"event\":\"STARTED\",") &&
                          strstr(strstr(slurp(events_out), "\"event\":\"STARTED\","),
                                 "\"event\":\"CRASHED\",\"time\"") &&
                          strstr(strstr(slurp(events_out), "\"event\":\"CRASHED\","),
                                 "\"event\":\"STOPPED\",\"time\""),
                  "%s", slurp(events_out));
        cr_assert(strstr(slurp(events_out), "\"on_crash\":\"destroy\""), "%s", slurp(events_out));
        cr_assert(strstr(slurp(events_out), "\"reason\":\"crashed\""), "%s", slurp(events_out));
        cr_assert(strstr(slurp(vmsup_log), "the guest crashed (kernel panic); on_crash destroy"), "%s",
                  slurp(vmsup_log));
        cr_assert_null(strstr(slurp(vmsup_log), "sealing the TPM state failed"), "%s", slurp(vmsup_log));
        text = test_wait_console(console, vmsup_log, "init: panicking", 1, 1000);
        c1 = console_value(text, "nv-counter=", 1);
        ek1 = console_word(text, "ek=", 1);
        free(text);
        assert_no_leftovers();

        write_spec("destroy", false);
        s = start();
        code = wait_exit(&s, 300000);
        cr_assert_eq(code, 0, "vmsup exit %d: %s", code, slurp(vmsup_log));
        text = test_wait_console(console, vmsup_log, "tpmprobe: done", 2, 1000);
        c2 = console_value(text, "nv-counter=", 2);
        ek2 = console_word(text, "ek=", 2);
        cr_assert_eq(c2, c1 + 1, "NV counter %ld then %ld", c1, c2);
        cr_assert_str_eq(ek1, ek2, "the EK changed after the crash");
        free(text);
        free(ek1);
        free(ek2);
        free(events_out);
        assert_no_leftovers();
}

/* A hard reboot: the guest boots again on its TPM state (NV counter + 1, the same EK). */
Test(oncrash, restart_boots_the_guest_again_with_its_tpm) {
        struct test_run r;
        struct sup s;
        char *text, *ek1, *ek2;
        long c1, c2;

        write_spec("restart", true);
        s = start();
        text = test_wait_console(console, vmsup_log, "tpmprobe: done", 2, 300000);
        c1 = console_value(text, "nv-counter=", 1);
        c2 = console_value(text, "nv-counter=", 2);
        ek1 = console_word(text, "ek=", 1);
        ek2 = console_word(text, "ek=", 2);
        cr_assert_eq(c2, c1 + 1, "NV counter %ld then %ld", c1, c2);
        cr_assert_str_eq(ek1, ek2, "the EK changed across the restart");
        cr_assert(strstr(slurp(vmsup_log), "the guest crashed (kernel panic); on_crash restart"), "%s",
                  slurp(vmsup_log));
        free(text);
        free(ek1);
        free(ek2);

        test_run_vmsup(&r, NULL, (const char *[]) { "--config", conf, "stop", "--force", UUID, NULL });
        cr_assert_eq(r.exit_code, 0, "%s%s", r.out, r.err);
        test_run_clear(&r);
        cr_assert_eq(wait_exit(&s, 120000), 0, "%s", slurp(vmsup_log));
        assert_no_leftovers();
}

/* QEMU keeps the paused guest for a dump; status says crashed; stop --force ends it. */
Test(oncrash, preserve_keeps_the_guest_paused_until_a_forced_stop) {
        struct test_run r;
        struct sup s;
        json_object *st = NULL, *v;
        long deadline;

        write_spec("preserve", true);
        s = start();
        json_object_put(test_wait_running(&s, control_path, vmsup_log, 300000));
        test_wait_console(console, vmsup_log, "init: panicking", 1, 300000);
        for (deadline = monotonic_ms() + 120000; monotonic_ms() < deadline; usleep(100000)) {
                vmsup_error *err = NULL;

                json_object_put(st);
                st = test_control(control_path, "status", NULL, &err);
                cr_assert_not_null(st, "%s: %s", err ? err->msg : "", slurp(vmsup_log));
                /* QEMU's runstate follows its GUEST_PANICKED event by a moment */
                if (json_object_object_get_ex(st, "state", &v) && streq(json_object_get_string(v), "crashed") &&
                    json_object_object_get_ex(st, "qemu_status", &v) &&
                    streq(json_object_get_string(v), "guest-panicked"))
                        break;
        }
        cr_assert(json_object_object_get_ex(st, "state", &v) && streq(json_object_get_string(v), "crashed"), "%s\n%s",
                  json_object_to_json_string(st), slurp(vmsup_log));
        cr_assert(json_object_object_get_ex(st, "qemu_status", &v) && streq(json_object_get_string(v), "guest-panicked"),
                  "%s", json_object_to_json_string(st));
        json_object_put(st);
        cr_assert(strstr(slurp(vmsup_log), "on_crash preserve"), "%s", slurp(vmsup_log));

        /* QMP still answers, for the dump */
        test_run_vmsup(&r, NULL, (const char *[]) { "--config", conf, "qmp", UUID, "query-status", NULL });
        cr_assert_eq(r.exit_code, 0, "%s%s", r.out, r.err);
        cr_assert(strstr(r.out, "guest-panicked"), "%s", r.out);
        test_run_clear(&r);

        test_run_vmsup(&r, NULL, (const char *[]) { "--config", conf, "stop", "--force", UUID, NULL });
        cr_assert_eq(r.exit_code, 0, "%s%s", r.out, r.err);
        test_run_clear(&r);
        cr_assert_eq(wait_exit(&s, 120000), 0, "%s", slurp(vmsup_log));
        assert_no_leftovers();
}
