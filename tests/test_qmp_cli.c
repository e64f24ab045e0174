/* 'vmsup qmp' against the fake QMP server: the exit codes and what goes to stdout/stderr. */
#include "config.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/fakeqmp.h"
#include "tests/helpers.h"

static char *dir, *sock;

static void setup(void) {
        dir = test_mkdtemp();
        cr_assert(asprintf(&sock, "%s/qmp.sock", dir) > 0);
}
static void teardown(void) {
        test_rmtree(dir);
        free(dir);
        free(sock);
}
TestSuite(qmp_cli, .init = setup, .fini = teardown, .timeout = 60);

static void run_against(const struct fakeqmp_step *script, const char *const *args, struct test_run *r) {
        struct fakeqmp *f = fakeqmp_start_unix(script, sock);
        char *failure;

        test_run_vmsup(r, NULL, args);
        failure = fakeqmp_finish(f);
        cr_assert_null(failure, "%s (vmsup said: %s)", failure, r->err);
}

Test(qmp_cli, prints_the_return_value) {
        static const struct fakeqmp_step script[] = {
                FQ_HANDSHAKE,
                { FQ_EXPECT, "query-block", "{\"flat\": true}" },
                FQ_EVENT("STOP", "{}"),
                FQ_REPLY("[{\"device\": \"/dev/disk/by-id/x\", \"locked\": false}]"),
                { FQ_END },
        };
        struct test_run r;

        run_against(script, (const char *[]) { "qmp", "--socket", sock, "query-block", "{\"flat\": true}", NULL }, &r);
        cr_assert_eq(r.exit_code, 0, "%s", r.err);
        cr_assert_str_eq(r.out, "[ { \"device\": \"/dev/disk/by-id/x\", \"locked\": false } ]\n");
        cr_assert_str_eq(r.err, "");
        test_run_clear(&r);
}

Test(qmp_cli, pretty) {
        static const struct fakeqmp_step script[] = {
                FQ_HANDSHAKE, { FQ_EXPECT, "query-kvm" }, FQ_REPLY("{\"enabled\": true}"), { FQ_END },
        };
        struct test_run r;

        run_against(script, (const char *[]) { "qmp", "--pretty", "--socket", sock, "query-kvm", NULL }, &r);
        cr_assert_eq(r.exit_code, 0, "%s", r.err);
        cr_assert_str_eq(r.out, "{\n  \"enabled\":true\n}\n");
        test_run_clear(&r);
}

Test(qmp_cli, qemu_errors_exit_1_with_class_and_desc) {
        static const struct fakeqmp_step script[] = {
                FQ_HANDSHAKE,
                { FQ_EXPECT, "cont" },
                { FQ_SEND, "{\"error\": {\"class\": \"GenericError\", \"desc\": \"Resetting the Virtual Machine is "
                           "required\"}, \"id\": $ID}\r\n" },
                { FQ_END },
        };
        struct test_run r;

        run_against(script, (const char *[]) { "qmp", "--socket", sock, "cont", NULL }, &r);
        cr_assert_eq(r.exit_code, 1);
        cr_assert_str_eq(r.out, "");
        cr_assert_str_eq(r.err, "vmsup: error: QMP command 'cont' failed: GenericError: Resetting the Virtual "
                                "Machine is required\n");
        test_run_clear(&r);
}

Test(qmp_cli, protocol_garbage_exits_65) {
        static const struct fakeqmp_step script[] = { { FQ_SEND, "220 smtp.example.org ESMTP\r\n" }, { FQ_SILENCE } };
        struct test_run r;

        run_against(script, (const char *[]) { "qmp", "--socket", sock, "query-status", NULL }, &r);
        cr_assert_eq(r.exit_code, 65);
        cr_assert_str_eq(r.err, "vmsup: error: QMP message is not a JSON object: 220\n");
        test_run_clear(&r);
}

Test(qmp_cli, silence_exits_69_after_the_timeout) {
        static const struct fakeqmp_step script[] = { FQ_HANDSHAKE, { FQ_EXPECT, "query-status" }, { FQ_SILENCE } };
        struct test_run r;

        run_against(script, (const char *[]) { "qmp", "--socket", sock, "--timeout", "0.3", "query-status", NULL }, &r);
        cr_assert_eq(r.exit_code, 69);
        cr_assert_str_eq(r.err, "vmsup: error: QMP command 'query-status' got no reply within 300 ms\n");
        test_run_clear(&r);
}

Test(qmp_cli, unreachable_socket_exits_69) {
        struct test_run r;

        test_run_vmsup(&r, NULL, (const char *[]) { "qmp", "--socket", sock, "query-status", NULL });
        cr_assert_eq(r.exit_code, 69);
        cr_assert(strstr(r.err, "vmsup: error: connect to QMP socket '") &&
                          strstr(r.err, "/qmp.sock': No such file or directory\n"),
                  "%s", r.err);
        test_run_clear(&r);
}

Test(qmp_cli, usage_errors_exit_64) {
        static const struct {
                const char *args[8];
                const char *message;
        } cases[] = {
                { { "qmp" }, "vmsup qmp: missing the guest UUID (or --socket PATH)\n" },
                { { "qmp", "query-status" },
                  "vmsup qmp: 'query-status' is not a guest UUID (give one, or --socket PATH)\n" },
                { { "qmp", "0b7c6e4a-3f0e-4d5c-9a1b-2c3d4e5f6a7b" }, "vmsup qmp: missing the QMP COMMAND\n" },
                { { "qmp", "--socket", "/x" }, "vmsup qmp: missing the QMP COMMAND\n" },
                { { "qmp", "--socket", "/x", "a", "{}", "c" }, "vmsup qmp: too many arguments: COMMAND [ARGS_JSON]\n" },
                { { "qmp", "--socket", "/x", "cont", "[1]" }, "vmsup qmp: ARGS_JSON is not a JSON object: [1]\n" },
                { { "qmp", "--socket", "/x", "cont", "{\"a\": " }, "vmsup qmp: ARGS_JSON is not a JSON object: {\"a\": \n" },
                { { "qmp", "--socket", "/x", "cont", "{} x" }, "vmsup qmp: ARGS_JSON is not a JSON object: {} x\n" },
                { { "qmp", "--socket", "/x", "--timeout", "0", "cont" }, "vmsup qmp: bad --timeout '0': seconds, more than 0\n" },
                { { "qmp", "--socket", "/x", "--timeout", "1s", "cont" }, "vmsup qmp: bad --timeout '1s': seconds, more than 0\n" },
        };

        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                struct test_run r;
                char want[256];

                test_run_vmsup(&r, NULL, cases[i].args);
                cr_assert_eq(r.exit_code, 64, "case %zu: %d %s", i, r.exit_code, r.err);
                snprintf(want, sizeof(want), "%sTry 'vmsup qmp --help'.\n", cases[i].message);
                cr_assert_str_eq(r.err, want, "case %zu", i);
                test_run_clear(&r);
        }
}

Test(qmp_cli, help) {
        struct test_run r;

        test_run_vmsup(&r, NULL, (const char *[]) { "qmp", "--help", NULL });
        cr_assert_eq(r.exit_code, 0);
        cr_assert(strstr(r.out, "vmsup qmp --socket PATH [--timeout SECONDS] [--pretty] COMMAND [ARGS_JSON]") && strstr(r.out, "Usage: vmsup qmp UUID "),
                  "%s", r.out);
        test_run_clear(&r);
        test_run_vmsup(&r, NULL, (const char *[]) { "--help", NULL });
        cr_assert(strstr(r.out, "  qmp "), "%s", r.out);
        test_run_clear(&r);
}
