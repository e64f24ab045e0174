#include "config.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>

#include "supervisor/hostconfig.h"
#include "cli/exitstatus.h"
#include "tests/helpers.h"

static char *dir;

static void setup(void) {
        dir = test_mkdtemp();
}
static void teardown(void) {
        test_rmtree(dir);
        free(dir);
}

TestSuite(config, .init = setup, .fini = teardown);

/* Load text as a config file; return the error message or NULL. */
static char *load(const char *text, struct host_config *cfg, int *exit_code) {
        char *path = test_write_file(dir, "vmsup.conf", text, 0644);
        vmsup_error *err = NULL;
        char *msg = NULL;

        if (host_config_load(path, false, cfg, &err) < 0) {
                msg = strdup(err->msg);
                if (exit_code)
                        *exit_code = cli_exit_status(err->kind);
                vmsup_error_free(err);
        }
        free(path);
        return msg;
}

Test(config, missing_default_file_means_defaults) {
        struct host_config cfg;
        vmsup_error *err = NULL;
        char *path = NULL;

        cr_assert(asprintf(&path, "%s/absent.conf", dir) > 0);
        cr_assert_eq(host_config_load(path, true, &cfg, &err), 0);
        cr_assert_null(cfg.path);
        cr_assert_eq(cfg.tpm.swtpm_enabled, false, "Nova's default is swtpm_enabled = False");
        cr_assert_str_eq(cfg.tpm.swtpm_user, "tss");
        cr_assert_str_eq(cfg.tpm.swtpm_group, "tss");
        cr_assert_eq(cfg.tpm.supported_secret_security, SECRET_SECURITY_ALL);
        cr_assert_str_eq(cfg.paths.state_dir, "/var/lib/vmsup");
        cr_assert_str_eq(cfg.paths.run_dir, "/run/vmsup");
        cr_assert_str_eq(cfg.paths.secrets_dir, "/var/lib/vmsup/secrets");
        cr_assert_eq(cfg.migration.handshake_timeout, 10);
        host_config_clear(&cfg);
        free(path);
}

Test(config, migration_handshake_timeout) {
        struct host_config cfg;
        char *msg = load("[migration]\ntimeout = 60\nhandshake_timeout = 3\n", &cfg, NULL);

        cr_assert_null(msg, "%s", msg);
        cr_assert_eq(cfg.migration.timeout, 60);
        cr_assert_eq(cfg.migration.handshake_timeout, 3);
        host_config_clear(&cfg);
}

Test(config, logs_sizes_and_backups) {
        struct host_config cfg;
        char *msg = load("[paths]\nlog_dir = /l\n", &cfg, NULL);

        cr_assert_null(msg, "%s", msg);
        cr_assert_eq(cfg.logs.console_max_size, 2 * 1024 * 1024, "libvirt's virtlogd default: 2 MiB");
        cr_assert_eq(cfg.logs.console_max_backups, 3);
        host_config_clear(&cfg);
        msg = load("[logs]\nconsole_max_size = 64K\nconsole_max_backups = 0\n", &cfg, NULL);
        cr_assert_null(msg, "%s", msg);
        cr_assert_eq(cfg.logs.console_max_size, 65536);
        cr_assert_eq(cfg.logs.console_max_backups, 0);
        host_config_clear(&cfg);
        msg = load("[logs]\nconsole_max_size = 1G\n", &cfg, NULL);
        cr_assert_null(msg, "%s", msg);
        cr_assert_eq(cfg.logs.console_max_size, 1024 * 1024 * 1024);
        host_config_clear(&cfg);
        msg = load("[logs]\nconsole_max_size = 4096\n", &cfg, NULL);
        cr_assert_null(msg, "%s", msg);
        cr_assert_eq(cfg.logs.console_max_size, 4096);
        host_config_clear(&cfg);
}

Test(config, explicit_missing_file_is_an_error) {
        struct host_config cfg;
        vmsup_error *err = NULL;
        char *path = NULL;

        cr_assert(asprintf(&path, "%s/absent.conf", dir) > 0);
        cr_assert_lt(host_config_load(path, false, &cfg, &err), 0);
        cr_assert_eq(err->kind, VMSUP_ERR_NOT_FOUND);
        cr_assert(strstr(err->msg, path), "%s", err->msg);
        vmsup_error_free(err);
        free(path);
}

Test(config, reads_nova_options) {
        struct host_config cfg;
        char *msg = load("# comment\n[tpm]\nswtpm_enabled = True\nswtpm_user = swtpm\nswtpm_group = kvm\n"
                         "supported_tpm_secret_security = host ,deployment\n"
                         "[qemu]\naccelerator = tcg\n[paths]\nstate_dir = /srv/vmsup\n"
                         "[supervisor]\nstop_timeout = 5\n",
                         &cfg, NULL);

        cr_assert_null(msg, "%s", msg);
        cr_assert(cfg.tpm.swtpm_enabled);
        cr_assert_str_eq(cfg.tpm.swtpm_user, "swtpm");
        cr_assert_str_eq(cfg.tpm.swtpm_group, "kvm");
        cr_assert_eq(cfg.tpm.supported_secret_security, SECRET_SECURITY_HOST | SECRET_SECURITY_DEPLOYMENT);
        cr_assert_str_eq(cfg.qemu.accelerator, "tcg");
        cr_assert_str_eq(cfg.paths.state_dir, "/srv/vmsup");
        cr_assert_str_eq(cfg.paths.run_dir, "/run/vmsup", "unset keys keep their defaults");
        cr_assert_eq(cfg.supervisor.stop_timeout, 5);
        host_config_clear(&cfg);
}

Test(config, barbican_and_keystone) {
        struct host_config cfg;
        struct barbican_options o;
        char *msg = load("[barbican]\nendpoint = https://kms.example:9311\nauth = noauth\ninterface = internal\n"
                         "region_name = RegionTwo\nca_file = /etc/ssl/kms.pem\nconnect_timeout = 2\ntimeout = 7\n"
                         "retries = 0\n[keystone]\nauth_url = https://keystone.example:5000/v3\n"
                         "credentials_file = /etc/vmsup/keystone.conf\n",
                         &cfg, NULL);

        cr_assert_null(msg, "%s", msg);
        host_config_barbican_options(&cfg, &o);
        cr_assert_eq(o.auth, BARBICAN_AUTH_NOAUTH);
        cr_assert_str_eq(o.endpoint, "https://kms.example:9311");
        cr_assert_str_eq(o.interface, "internal");
        cr_assert_str_eq(o.region, "RegionTwo");
        cr_assert_str_eq(o.ca_file, "/etc/ssl/kms.pem");
        cr_assert_eq(o.connect_timeout_ms, 2000);
        cr_assert_eq(o.timeout_ms, 7000);
        cr_assert_eq(o.attempts, 1, "retries = 0: one attempt");
        cr_assert_str_eq(o.auth_url, "https://keystone.example:5000/v3");
        cr_assert_str_eq(cfg.keystone.credentials_file, "/etc/vmsup/keystone.conf");
        host_config_clear(&cfg);
}

Test(config, barbican_defaults) {
        struct host_config cfg;
        struct barbican_options o;
        char *msg = load("", &cfg, NULL);

        cr_assert_null(msg, "%s", msg);
        host_config_barbican_options(&cfg, &o);
        cr_assert_eq(o.auth, BARBICAN_AUTH_KEYSTONE);
        cr_assert_null(o.endpoint, "from Keystone's catalog");
        cr_assert_str_eq(o.interface, "public");
        cr_assert_null(o.region);
        cr_assert_null(o.ca_file);
        cr_assert_eq(o.connect_timeout_ms, 10000);
        cr_assert_eq(o.timeout_ms, 30000);
        cr_assert_eq(o.attempts, 3);
        cr_assert_null(o.auth_url);
        cr_assert_null(cfg.keystone.credentials_file);
        host_config_clear(&cfg);
}

Test(config, empty_secret_security_list_supports_nothing) {
        struct host_config cfg;
        char *msg = load("[tpm]\nsupported_tpm_secret_security =\n", &cfg, NULL);

        cr_assert_null(msg, "%s", msg);
        cr_assert_eq(cfg.tpm.supported_secret_security, 0);
        host_config_clear(&cfg);
}

struct bad_case {
        const char *text;
        const char *expect;
};

static void check_bad_input(const struct bad_case *c);

static const struct bad_case bad_input_cases[] = {
                { "[tpm]\nswtpm_enabled = maybe\n", ":2: [tpm] swtpm_enabled: 'maybe' is not a boolean" },
                { "[tpm]\n\nswtpm_enable = true\n", ":3: [tpm] swtpm_enable: unknown key" },
                { "[tmp]\nswtpm_enabled = true\n", ":2: [tmp]: unknown section (key swtpm_enabled)" },
                { "[tpm]\nsupported_tpm_secret_security = user, root\n",
                  ":2: [tpm] supported_tpm_secret_security: 'root' is not a TPM secret security mode" },
                { "[paths]\nstate_dir = var/lib\n", ":2: [paths] state_dir: 'var/lib' is not an absolute path" },
                { "[supervisor]\nstop_timeout = -1\n", ":2: [supervisor] stop_timeout: '-1' is not a number" },
                { "[supervisor]\nstop_timeout = 10s\n", ":2: [supervisor] stop_timeout: '10s' is not a number" },
                { "[tpm]\nswtpm_user =\n", ":2: [tpm] swtpm_user: empty value" },
                { "[tpm]\nswtpm_enabled = true\nswtpm_enabled = false\n", ":3: [tpm] swtpm_enabled: set twice" },
                { "[tpm]\nthis is not ini\n", ":2: not an INI line" },
                { "[barbican]\nauth = none\n", ":2: [barbican] auth: 'none' is not keystone or noauth" },
                { "[barbican]\nendpoint = ftp://kms\n", ":2: [barbican] endpoint: 'ftp://kms' is not an http:// or https:// URL" },
                { "[barbican]\ninterface = private\n",
                  ":2: [barbican] interface: 'private' is not a catalog interface (public, internal, admin)" },
                { "[barbican]\nretries = 11\n", ":2: [barbican] retries: '11' is not a number from 0 to 10" },
                { "[barbican]\nca_file = ca.pem\n", ":2: [barbican] ca_file: 'ca.pem' is not an absolute path" },
                { "[barbican]\ntimeout = 0\n", ": [barbican] timeout: must be at least 1 second" },
                { "[migration]\nhandshake_timeout = 0\n", ": [migration] handshake_timeout: must be at least 1 second" },
                { "[migration]\nhandshake_timeout = 5s\n",
                  ":2: [migration] handshake_timeout: '5s' is not a number of seconds" },
                { "[keystone]\nauth_url = keystone:5000\n",
                  ":2: [keystone] auth_url: 'keystone:5000' is not an http:// or https:// URL" },
                { "[logs]\nconsole_max_size = 2MB\n", ":2: [logs] console_max_size: '2MB' is not a size from 4K to 1G" },
                { "[logs]\nconsole_max_size = 100\n", ":2: [logs] console_max_size: '100' is not a size from 4K to 1G" },
                { "[logs]\nconsole_max_size = 2G\n", ":2: [logs] console_max_size: '2G' is not a size from 4K to 1G" },
                { "[logs]\nconsole_max_size = -1M\n", ":2: [logs] console_max_size: '-1M' is not a size" },
                { "[logs]\nconsole_max_backups = 11\n", ":2: [logs] console_max_backups: '11' is not a number from 0 to 10" },
                { "[keystone]\ncredentials_file = creds\n",
                  ":2: [keystone] credentials_file: 'creds' is not an absolute path" },
};

static void check_bad_input(const struct bad_case *c) {
        struct host_config cfg;
        int code = 0;
        char *msg = load(c->text, &cfg, &code);

        cr_assert_not_null(msg, "accepted: %s", c->text);
        cr_assert(strstr(msg, c->expect), "message '%s' lacks '%s'", msg, c->expect);
        cr_assert(strstr(msg, "/vmsup.conf:"), "message '%s' does not name the file", msg);
        cr_assert_eq(code, 78);
        free(msg);
}

Test(config, bad_input) {
        for (size_t i = 0; i < sizeof(bad_input_cases) / sizeof(bad_input_cases[0]); i++)
                check_bad_input(&bad_input_cases[i]);
}

/* The tests' own config writer (tests/helpers.c): every option lands where vmsup reads it. */
Test(config, the_tests_config_writer_writes_what_vmsup_reads) {
        struct host_config cfg;
        vmsup_error *err = NULL;
        char *path, want[512];

        path = test_write_conf(dir, "all.conf",
                               &(struct test_conf) { .root = dir, .as_nobody = true,
                                                     .tpm = "supported_tpm_secret_security = host\n",
                                                     .qemu = "binary = /opt/qemu\n", .supervisor = "stop_timeout = 3\n",
                                                     .barbican_url = "http://127.0.0.1:9311", .barbican = "retries = 1\n",
                                                     .more = "[security]\nseccomp = log\n" });
        cr_assert_eq(host_config_load(path, false, &cfg, &err), 0, "%s", err ? err->msg : "");
        cr_assert(cfg.tpm.swtpm_enabled);
        cr_assert_str_eq(cfg.tpm.swtpm_user, "nobody");
        cr_assert_str_eq(cfg.tpm.swtpm_group, "nogroup");
        cr_assert_eq(cfg.tpm.supported_secret_security, SECRET_SECURITY_HOST);
        cr_assert_str_eq(cfg.qemu.accelerator, "tcg");
        cr_assert_str_eq(cfg.qemu.binary, "/opt/qemu");
        cr_assert_str_eq(cfg.qemu.user, "nobody");
        cr_assert_str_eq(cfg.qemu.group, "nogroup");
        snprintf(want, sizeof(want), "%s/state", dir);
        cr_assert_str_eq(cfg.paths.state_dir, want);
        snprintf(want, sizeof(want), "%s/run", dir);
        cr_assert_str_eq(cfg.paths.run_dir, want);
        snprintf(want, sizeof(want), "%s/state/secrets", dir);
        cr_assert_str_eq(cfg.paths.secrets_dir, want);
        snprintf(want, sizeof(want), "%s/log", dir);
        cr_assert_str_eq(cfg.paths.log_dir, want);
        cr_assert_eq(cfg.supervisor.stop_timeout, 3);
        cr_assert_str_eq(cfg.barbican.endpoint, "http://127.0.0.1:9311");
        cr_assert_eq(cfg.barbican.auth, BARBICAN_AUTH_NOAUTH);
        cr_assert_eq(cfg.barbican.retries, 1);
        cr_assert_eq(cfg.security.seccomp, SECCOMP_FILTER_LOG);
        host_config_clear(&cfg);
        free(path);

        /* the least: swtpm off, a secrets dir alone, no Barbican; swtpm as root otherwise */
        path = test_write_conf(dir, "least.conf", &(struct test_conf) { .secrets_dir = "/srv/secrets", .swtpm_off = true });
        cr_assert_eq(host_config_load(path, false, &cfg, &err), 0, "%s", err ? err->msg : "");
        cr_assert_not(cfg.tpm.swtpm_enabled);
        cr_assert_str_eq(cfg.paths.secrets_dir, "/srv/secrets");
        cr_assert_str_eq(cfg.paths.state_dir, "/var/lib/vmsup");
        cr_assert_null(cfg.barbican.endpoint);
        host_config_clear(&cfg);
        free(path);
        path = test_write_conf(dir, "root.conf", &(struct test_conf) { .root = dir });
        cr_assert_eq(host_config_load(path, false, &cfg, &err), 0, "%s", err ? err->msg : "");
        cr_assert(cfg.tpm.swtpm_enabled);
        cr_assert_str_eq(cfg.tpm.swtpm_user, "root");
        cr_assert_str_eq(cfg.tpm.swtpm_group, "root");
        host_config_clear(&cfg);
        free(path);
}
