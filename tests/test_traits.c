#include "config.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>

#include "supervisor/traits.h"
#include "tests/helpers.h"

static char *dir;

static void setup(void) {
        dir = test_mkdtemp();
}
static void teardown(void) {
        test_rmtree(dir);
        free(dir);
}
TestSuite(traits, .init = setup, .fini = teardown);

#define QEMU_BOTH                                                                                   \
        "#!/bin/sh\ncase \"$*\" in\n"                                                               \
        "*'-tpmdev help'*) printf 'Supported TPM types (choose only one):\\n passthrough   "        \
        "Passthrough TPM backend driver\\n    emulator   TPM emulator backend driver\\n' >&2; exit 1;;\n"      \
        "*'-device help'*) printf 'name \"tpm-crb\"\\nname \"tpm-tis\", bus ISA\\nname \"tpm-tis-device\"\\n';;\n" \
        "*) exit 1;;\nesac\n"
#define QEMU_TIS_ONLY                                                                               \
        "#!/bin/sh\ncase \"$*\" in\n*'-tpmdev help'*) printf '    emulator   TPM emulator\\n' >&2;;\n"   \
        "*'-device help'*) printf 'name \"tpm-tis\", bus ISA\\nname \"tpm-crb-x\"\\n';;\nesac\n"
#define QEMU_NO_EMULATOR                                                                            \
        "#!/bin/sh\ncase \"$*\" in\n*'-tpmdev help'*) printf ' passthrough   Passthrough\\n' >&2;;\n"    \
        "*'-device help'*) printf 'name \"tpm-crb\"\\n';;\nesac\n"
#define CAPS(features) "#!/bin/sh\necho '{ \"type\": \"swtpm\", \"features\": [ " features " ], \"version\": \"0.9.0\" }'\n"

/* A host config whose programs are the given stand-in scripts. */
static struct host_config stand_ins(const char *qemu, const char *swtpm, const char *setup_script) {
        struct host_config cfg;
        vmsup_error *err = NULL;

        cr_assert_eq(host_config_load("/nonexistent", true, &cfg, &err), 0);
        cfg.tpm.swtpm_enabled = true;
        cfg.tpm.swtpm_user = strdup("root");
        cfg.tpm.swtpm_group = strdup("root");
        free(cfg.qemu.binary);
        free(cfg.tpm.swtpm);
        free(cfg.tpm.swtpm_setup);
        cfg.qemu.binary = test_write_file(dir, "qemu", qemu, 0755);
        cfg.tpm.swtpm = test_write_file(dir, "swtpm", swtpm, 0755);
        cfg.tpm.swtpm_setup = test_write_file(dir, "swtpm_setup", setup_script, 0755);
        free(cfg.paths.state_dir); /* swtpm's capabilities are cached there */
        cfg.paths.state_dir = strdup(dir);
        return cfg;
}

static char *names(struct host_traits *t) {
        const char *n[8];
        char buf[512] = "";

        host_traits_names(t, n);
        for (const char **p = n; *p; p++) {
                strcat(buf, *p + strlen("COMPUTE_SECURITY_TPM_"));
                strcat(buf, " ");
        }
        return strdup(buf);
}

static char *probe(struct host_config *cfg, char **ret_err) {
        struct host_traits t;
        vmsup_error *err = NULL;

        *ret_err = NULL;
        if (host_traits_probe(cfg, &t, &err) < 0) {
                *ret_err = strdup(err->msg);
                vmsup_error_free(err);
                return NULL;
        }
        return names(&t);
}

Test(traits, both_versions_both_models) {
        struct host_config cfg = stand_ins(QEMU_BOTH, CAPS("\"tpm-1.2\", \"tpm-2.0\""), CAPS("\"tpm-1.2\", \"tpm-2.0\""));
        char *err, *got = probe(&cfg, &err);

        cr_assert_null(err, "%s", err);
        cr_assert_str_eq(got, "1_2 2_0 CRB TIS SECRET_SECURITY_DEPLOYMENT SECRET_SECURITY_HOST SECRET_SECURITY_USER ");
        free(got);
        host_config_clear(&cfg);
}

Test(traits, version_needs_both_programs_and_model_needs_the_device) {
        struct host_config cfg = stand_ins(QEMU_TIS_ONLY, CAPS("\"tpm-1.2\", \"tpm-2.0\""), CAPS("\"tpm-2.0\""));
        char *err, *got;

        cfg.tpm.supported_secret_security = SECRET_SECURITY_HOST;
        got = probe(&cfg, &err);
        cr_assert_null(err, "%s", err);
        cr_assert_str_eq(got, "2_0 TIS SECRET_SECURITY_HOST ", "tpm-crb-x is not tpm-crb");
        free(got);
        host_config_clear(&cfg);
}

Test(traits, old_swtpm_without_features_means_both_versions) {
        struct host_config cfg = stand_ins(QEMU_BOTH, "#!/bin/sh\nexit 1\n", "#!/bin/sh\nexit 1\n");
        char *err, *got;

        cfg.tpm.supported_secret_security = 0;
        got = probe(&cfg, &err);
        cr_assert_null(err, "%s", err);
        cr_assert_str_eq(got, "1_2 2_0 CRB TIS ");
        free(got);
        host_config_clear(&cfg);
}

Test(traits, disabled_swtpm_probes_nothing_and_reports_nothing) {
        struct host_config cfg = stand_ins("#!/bin/sh\ntouch ran\nexit 1\n", "#!/bin/sh\nexit 1\n", "#!/bin/sh\nexit 1\n");
        char *err, *got;

        cfg.tpm.swtpm_enabled = false;
        got = probe(&cfg, &err);
        cr_assert_null(err, "%s", err);
        cr_assert_str_eq(got, "");
        free(got);
        host_config_clear(&cfg);
}

Test(traits, host_that_cannot_run_vtpms_is_an_error) {
        struct host_config cfg = stand_ins(QEMU_NO_EMULATOR, CAPS("\"tpm-2.0\""), CAPS("\"tpm-2.0\""));
        char *err, *got = probe(&cfg, &err);

        cr_assert_null(got);
        cr_assert(strstr(err, "has no TPM emulator backend"), "%s", err);
        free(err);
        host_config_clear(&cfg);

        cfg = stand_ins(QEMU_BOTH, "#!/bin/sh\necho '{ not json'\n", CAPS("\"tpm-2.0\""));
        got = probe(&cfg, &err);
        cr_assert_null(got);
        cr_assert(strstr(err, "swtpm cannot be used") && strstr(err, "not a JSON object"), "%s", err);
        free(err);
        host_config_clear(&cfg);

        cfg = stand_ins(QEMU_BOTH, CAPS("\"tpm-2.0\""), CAPS("\"tpm-2.0\""));
        free(cfg.tpm.swtpm_setup);
        cfg.tpm.swtpm_setup = strdup("/nonexistent/swtpm_setup");
        got = probe(&cfg, &err);
        cr_assert_null(got);
        cr_assert(strstr(err, "swtpm_setup cannot be used") && strstr(err, "/nonexistent/swtpm_setup"), "%s", err);
        free(err);
        host_config_clear(&cfg);

        cfg = stand_ins(QEMU_BOTH, CAPS("\"tpm-2.0\""), CAPS("\"tpm-2.0\""));
        free(cfg.tpm.swtpm_user);
        cfg.tpm.swtpm_user = strdup("no-such-user-vmsup");
        got = probe(&cfg, &err);
        cr_assert_null(got);
        cr_assert(strstr(err, "swtpm_user 'no-such-user-vmsup' does not exist"), "%s", err);
        free(err);
        host_config_clear(&cfg);
}

/* The installed swtpm 0.7.1 and QEMU 7.2 (Debian 12) offer everything. */
Test(traits, real_swtpm_and_qemu) {
        struct host_config cfg;
        vmsup_error *verr = NULL;
        char *err, *got;

        cr_assert_eq(host_config_load("/nonexistent", true, &cfg, &verr), 0);
        cfg.tpm.swtpm_enabled = true;
        got = probe(&cfg, &err);
        cr_assert_null(err, "the real swtpm/swtpm_setup/qemu-system-x86_64 must be installed: %s", err);
        cr_assert_str_eq(got, "1_2 2_0 CRB TIS SECRET_SECURITY_DEPLOYMENT SECRET_SECURITY_HOST SECRET_SECURITY_USER ");
        free(got);
        host_config_clear(&cfg);
}

/* ---- the decision alone (nova/traits.c): facts in, traits out, no program run ---- */

static char *decided(const struct host_tpm_facts *f) {
        struct host_traits t;

        host_traits_decide(f, &t);
        return names(&t);
}

Test(traits_facts, nothing_when_swtpm_is_disabled_whatever_the_host_has) {
        struct host_tpm_facts f = { .swtpm_enabled = false, .qemu_tpm_tis = true, .qemu_tpm_crb = true,
                                    .swtpm_tpm_1_2 = true, .swtpm_tpm_2_0 = true, .setup_tpm_1_2 = true,
                                    .setup_tpm_2_0 = true, .secret_security = SECRET_SECURITY_ALL };

        cr_assert_str_eq(decided(&f), "");
}

Test(traits_facts, everything_in_nova_order) {
        struct host_tpm_facts f = { .swtpm_enabled = true, .qemu_tpm_tis = true, .qemu_tpm_crb = true,
                                    .swtpm_tpm_1_2 = true, .swtpm_tpm_2_0 = true, .setup_tpm_1_2 = true,
                                    .setup_tpm_2_0 = true, .secret_security = SECRET_SECURITY_ALL };

        cr_assert_str_eq(decided(&f), "1_2 2_0 CRB TIS SECRET_SECURITY_DEPLOYMENT SECRET_SECURITY_HOST "
                                      "SECRET_SECURITY_USER ");
}

Test(traits_facts, a_version_needs_both_programs) {
        struct host_tpm_facts f = { .swtpm_enabled = true, .qemu_tpm_crb = true, .swtpm_tpm_1_2 = true,
                                    .swtpm_tpm_2_0 = true, .setup_tpm_2_0 = true,
                                    .secret_security = SECRET_SECURITY_USER };

        cr_assert_str_eq(decided(&f), "2_0 CRB SECRET_SECURITY_USER ");
        f.setup_tpm_2_0 = false;
        f.setup_tpm_1_2 = true;
        cr_assert_str_eq(decided(&f), "1_2 CRB SECRET_SECURITY_USER ");
}

Test(traits_facts, no_features_reported_at_all_means_both_versions) {
        struct host_tpm_facts f = { .swtpm_enabled = true, .qemu_tpm_tis = true,
                                    .secret_security = SECRET_SECURITY_HOST };

        cr_assert_str_eq(decided(&f), "1_2 2_0 TIS SECRET_SECURITY_HOST ");
        /* one program reporting its versions is no old swtpm: no version both support */
        f.swtpm_tpm_2_0 = true;
        cr_assert_str_eq(decided(&f), "TIS SECRET_SECURITY_HOST ");
}

Test(traits_facts, models_come_from_qemus_devices_only) {
        struct host_tpm_facts f = { .swtpm_enabled = true, .swtpm_tpm_2_0 = true, .setup_tpm_2_0 = true,
                                    .secret_security = SECRET_SECURITY_USER | SECRET_SECURITY_HOST };

        cr_assert_str_eq(decided(&f), "2_0 SECRET_SECURITY_HOST SECRET_SECURITY_USER ");
        f.qemu_tpm_crb = true;
        cr_assert_str_eq(decided(&f), "2_0 CRB SECRET_SECURITY_HOST SECRET_SECURITY_USER ");
}
