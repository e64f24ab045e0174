#include "config.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/helpers.h"

#define UUID "0b7c6e4a-3f0e-4d5c-9a1b-2c3d4e5f6a7b"

static char *dir, *conf_on, *conf_off;

static void setup(void) {
        dir = test_mkdtemp();
        conf_on = test_write_conf(dir, "on.conf",
                                  &(struct test_conf) { .root = dir, .tpm = "supported_tpm_secret_security = user, host\n",
                                                        .mode = 0644 });
        conf_off = test_write_conf(dir, "off.conf",
                                   &(struct test_conf) { .root = dir, .swtpm_off = true, .mode = 0644 });
}
static void teardown(void) {
        test_rmtree(dir);
        free(dir);
        free(conf_on);
        free(conf_off);
}
TestSuite(cli, .init = setup, .fini = teardown);

static char *spec(const char *extra_specs, const char *props) {
        return test_write_spec(dir, "guest.json",
                               &(struct test_spec) { .uuid = UUID, .flavor = "m1", .extra_specs = extra_specs,
                                                     .image = "img", .image_properties = props });
}

Test(cli, version_and_help) {
        struct test_run r;

        test_run_vmsup(&r, NULL, (const char *[]) { "--version", NULL });
        cr_assert_eq(r.exit_code, 0);
        cr_assert_str_eq(r.out, "vmsup " PACKAGE_VERSION "\n");
        test_run_clear(&r);

        test_run_vmsup(&r, NULL, (const char *[]) { "--help", NULL });
        cr_assert_eq(r.exit_code, 0);
        cr_assert(strstr(r.out, "validate") && strstr(r.out, "traits") && strstr(r.out, "--config"), "%s", r.out);
        test_run_clear(&r);

        test_run_vmsup(&r, NULL, (const char *[]) { "validate", "--help", NULL });
        cr_assert_eq(r.exit_code, 0);
        cr_assert(strstr(r.out, "Usage: vmsup validate GUEST.json"), "%s", r.out);
        test_run_clear(&r);

        test_run_vmsup(&r, NULL, (const char *[]) { "frobnicate", NULL });
        cr_assert_eq(r.exit_code, 64);
        cr_assert(strstr(r.err, "unknown verb 'frobnicate'"), "%s", r.err);
        test_run_clear(&r);

        test_run_vmsup(&r, NULL, (const char *[]) { NULL });
        cr_assert_eq(r.exit_code, 64);
        test_run_clear(&r);
}

Test(cli, validate_prints_the_resolved_tpm) {
        char *g = spec("\"hw:tpm_version\": \"2.0\", \"hw:tpm_secret_security\": \"host\"", "\"hw_tpm_model\": \"tpm-crb\"");
        struct test_run r;

        test_run_vmsup(&r, NULL, (const char *[]) { "--config", conf_on, "validate", g, NULL });
        cr_assert_eq(r.exit_code, 0, "%s", r.err);
        cr_assert_str_eq(r.out, "{ \"uuid\": \"" UUID "\", \"tpm\": { \"version\": \"2.0\", \"model\": \"tpm-crb\", "
                                "\"secret_security\": \"host\" } }\n");
        test_run_clear(&r);
        free(g);
}

Test(cli, validate_without_vtpm_prints_null_even_when_swtpm_is_off) {
        char *g = spec("\"hw:tpm_model\": \"tpm-crb\"", "");
        struct test_run r;

        test_run_vmsup(&r, NULL, (const char *[]) { "--config", conf_off, "validate", g, NULL });
        cr_assert_eq(r.exit_code, 0, "%s", r.err);
        cr_assert_str_eq(r.out, "{ \"uuid\": \"" UUID "\", \"tpm\": null }\n");
        test_run_clear(&r);
        free(g);
}

Test(cli, validate_rule_violations_exit_65_with_novas_words) {
        char *g = spec("\"hw:tpm_version\": \"3.0\"", "");
        struct test_run r;

        test_run_vmsup(&r, NULL, (const char *[]) { "--config", conf_on, "validate", g, NULL });
        cr_assert_eq(r.exit_code, 65);
        cr_assert_str_eq(r.out, "");
        cr_assert_str_eq(r.err, "vmsup: error: Invalid TPM version '3.0'. Allowed values: 1.2, 2.0.\n");
        test_run_clear(&r);
        free(g);

        g = spec("\"hw:tpm_version\": \"2.0\", \"hw:tpm_secret_security\": \"x\"", "");
        test_run_vmsup(&r, NULL, (const char *[]) { "--config", conf_on, "validate", g, NULL });
        cr_assert_eq(r.exit_code, 65);
        cr_assert(strstr(r.err, "TPM secret security 'x' is not supported."), "%s", r.err);
        test_run_clear(&r);
        free(g);
}

Test(cli, validate_host_restrictions_exit_69) {
        char *g = spec("\"hw:tpm_version\": \"2.0\"", "");
        struct test_run r;

        test_run_vmsup(&r, NULL, (const char *[]) { "--config", conf_off, "validate", g, NULL });
        cr_assert_eq(r.exit_code, 69);
        cr_assert(strstr(r.err, "swtpm_enabled is false") && strstr(r.err, conf_off), "%s", r.err);
        test_run_clear(&r);
        free(g);

        g = spec("\"hw:tpm_version\": \"2.0\", \"hw:tpm_secret_security\": \"deployment\"", "");
        test_run_vmsup(&r, NULL, (const char *[]) { "--config", conf_on, "validate", g, NULL });
        cr_assert_eq(r.exit_code, 69);
        cr_assert(strstr(r.err, "'deployment' is not enabled on this host"), "%s", r.err);
        test_run_clear(&r);
        free(g);
}

Test(cli, validate_bad_spec_and_bad_config) {
        char *g = test_write_file(dir, "broken.json", "{\"uuid\": 1}", 0644);
        char *bad = test_write_file(dir, "bad.conf", "[tpm]\nswtpm_enabled = yes please\n", 0644);
        struct test_run r;

        test_run_vmsup(&r, NULL, (const char *[]) { "--config", conf_on, "validate", g, NULL });
        cr_assert_eq(r.exit_code, 65);
        cr_assert(strstr(r.err, "key 'uuid': must be a string"), "%s", r.err);
        test_run_clear(&r);

        test_run_vmsup(&r, NULL, (const char *[]) { "--config", bad, "validate", g, NULL });
        cr_assert_eq(r.exit_code, 78);
        cr_assert(strstr(r.err, "bad.conf:2: [tpm] swtpm_enabled: 'yes please' is not a boolean"), "%s", r.err);
        test_run_clear(&r);

        test_run_vmsup(&r, NULL, (const char *[]) { "validate", NULL });
        cr_assert_eq(r.exit_code, 64);
        test_run_clear(&r);
        free(g);
        free(bad);
}

Test(cli, traits_with_the_real_programs) {
        struct test_run r;

        test_run_vmsup(&r, NULL, (const char *[]) { "--config", conf_on, "traits", NULL });
        cr_assert_eq(r.exit_code, 0, "%s", r.err);
        cr_assert_str_eq(r.out, "COMPUTE_SECURITY_TPM_1_2\nCOMPUTE_SECURITY_TPM_2_0\nCOMPUTE_SECURITY_TPM_CRB\n"
                                "COMPUTE_SECURITY_TPM_TIS\nCOMPUTE_SECURITY_TPM_SECRET_SECURITY_HOST\n"
                                "COMPUTE_SECURITY_TPM_SECRET_SECURITY_USER\n");
        test_run_clear(&r);

        test_run_vmsup(&r, NULL, (const char *[]) { "--config", conf_on, "traits", "--json", NULL });
        cr_assert_eq(r.exit_code, 0, "%s", r.err);
        cr_assert_str_eq(r.out, "[\"COMPUTE_SECURITY_TPM_1_2\",\"COMPUTE_SECURITY_TPM_2_0\",\"COMPUTE_SECURITY_TPM_CRB\","
                                "\"COMPUTE_SECURITY_TPM_TIS\",\"COMPUTE_SECURITY_TPM_SECRET_SECURITY_HOST\","
                                "\"COMPUTE_SECURITY_TPM_SECRET_SECURITY_USER\"]\n");
        test_run_clear(&r);

        test_run_vmsup(&r, NULL, (const char *[]) { "--config", conf_off, "traits", NULL });
        cr_assert_eq(r.exit_code, 0, "%s", r.err);
        cr_assert_str_eq(r.out, "");
        test_run_clear(&r);
}

Test(cli, traits_finds_programs_on_path) {
        struct test_run r;
        char *bin = NULL, *path = NULL;

        cr_assert(asprintf(&bin, "%s/bin", dir) > 0);
        cr_assert_eq(mkdir(bin, 0755), 0);
        free(test_write_file(bin, "swtpm", "#!/bin/sh\necho '{\"features\": [\"tpm-2.0\"]}'\n", 0755));
        free(test_write_file(bin, "swtpm_setup", "#!/bin/sh\necho '{\"features\": [\"tpm-2.0\"]}'\n", 0755));
        free(test_write_file(bin, "qemu-system-x86_64",
                             "#!/bin/sh\ncase \"$*\" in *tpmdev*) echo ' emulator  x' >&2;; *) echo 'name \"tpm-tis\"';; esac\n",
                             0755));
        cr_assert(asprintf(&path, "%s:/usr/bin:/bin", bin) > 0);
        test_run_vmsup(&r, path, (const char *[]) { "--config", conf_on, "traits", NULL });
        cr_assert_eq(r.exit_code, 0, "%s", r.err);
        cr_assert_str_eq(r.out, "COMPUTE_SECURITY_TPM_2_0\nCOMPUTE_SECURITY_TPM_TIS\n"
                                "COMPUTE_SECURITY_TPM_SECRET_SECURITY_HOST\nCOMPUTE_SECURITY_TPM_SECRET_SECURITY_USER\n");
        test_run_clear(&r);
        free(bin);
        free(path);
}

/* A verb that only talks to a supervisor does not load gnutls (crypto/gnutls_load.c): a
 * forced stop's time is mostly the client's start (docs/performance.md). The supervisor
 * here is a socket that answers once it has looked at the client's mappings. */
Test(cli, control_verbs_do_not_load_gnutls) {
        char *run = NULL, *sock = NULL, *maps_path = NULL, line[512];
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        const char *reply = "{\"ok\":true,\"return\":\"stopped\"}\n";
        struct pollfd p;
        int lfd, cfd, status;
        size_t maps_len = 0;
        uint8_t *maps;
        ssize_t n;
        pid_t pid;

        cr_assert(asprintf(&run, "%s/run", dir) > 0);
        cr_assert(mkdir(run, 0700) == 0 || errno == EEXIST);
        free(run);
        cr_assert(asprintf(&run, "%s/run/%s", dir, UUID) > 0);
        cr_assert(mkdir(run, 0700) == 0 || errno == EEXIST);
        cr_assert(asprintf(&sock, "%s/control.sock", run) > 0);
        snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", sock);
        lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        cr_assert(lfd >= 0 && bind(lfd, (struct sockaddr *) &sa, sizeof(sa)) == 0 && listen(lfd, 1) == 0);

        pid = fork();
        cr_assert(pid >= 0);
        if (pid == 0) {
                execl(VMSUP_BIN, VMSUP_BIN, "--config", conf_on, "stop", "--force", UUID, (char *) NULL);
                _exit(127);
        }
        p = (struct pollfd) { .fd = lfd, .events = POLLIN };
        cr_assert(poll(&p, 1, 60000) == 1, "vmsup stop did not connect");
        cfd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        cr_assert(cfd >= 0);
        n = read(cfd, line, sizeof(line) - 1);
        cr_assert(n > 0);
        line[n] = '\0';
        cr_assert(strstr(line, "\"stop\""), "request: %s", line);

        /* the client waits for the answer: everything it loaded is mapped now */
        cr_assert(asprintf(&maps_path, "/proc/%d/maps", (int) pid) > 0);
        maps = test_read_file(maps_path, &maps_len);
        cr_assert(maps && maps_len > 0);
        cr_assert(memmem(maps, maps_len, "libjson-c", 9), "the client's maps do not look like vmsup's:\n%.*s",
                  (int) maps_len, maps);
        cr_expect(!memmem(maps, maps_len, "libgnutls", 9), "vmsup stop mapped gnutls:\n%.*s", (int) maps_len, maps);

        cr_assert(write(cfd, reply, strlen(reply)) == (ssize_t) strlen(reply));
        close(cfd);
        cr_assert(waitpid(pid, &status, 0) == pid);
        cr_expect(WIFEXITED(status) && WEXITSTATUS(status) == 0, "vmsup stop: status %#x", status);
        close(lfd);
        free(maps);
        free(maps_path);
        free(sock);
        free(run);
}
