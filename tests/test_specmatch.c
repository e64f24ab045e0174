/* supervisor/specmatch: the host files a spec may name (never vmsup's own dirs); nova/specmatch: the
 * spec a migration source sends against the destination's own (`run --incoming --spec`). */
#include "config.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "nova/guestspec.h"
#include "supervisor/hostconfig.h"
#include "nova/specmatch.h"
#include "supervisor/specmatch.h"
#include "tests/helpers.h"

#define UUID "0b7c6e4a-3f0e-4d5c-9a1b-2c3d4e5f6a7b"
#define TPM_EXTRA_SPECS "\"hw:tpm_version\": \"2.0\", \"hw:tpm_model\": \"tpm-crb\", \"hw:tpm_secret_security\": \"host\""
#define TPM_FLAVOR "\"flavor\": {\"name\": \"m1\", \"extra_specs\": {" TPM_EXTRA_SPECS "}}"

/* ---- the source's spec against ours ------------------------------------------------------ */

/* the destination's spec, with what a test changes put in by printf-style fields */
static void parse(struct guest_spec *ret, const char *uuid, const char *name, unsigned memory, const char *flavor,
                  const char *firmware, const char *disks) {
        char *text = NULL;
        vmsup_error *err = NULL;

        cr_assert(asprintf(&text,
                           "{\"uuid\": \"%s\", \"name\": \"%s\", \"vcpus\": 2, \"memory_mb\": %u, %s,"
                           " \"owner\": {\"user_id\": \"u\", \"project_id\": \"p\"},"
                           " \"image\": {\"name\": \"img\", \"properties\": {\"hw_firmware_type\": \"uefi\","
                           " \"os_distro\": \"debian\"}},"
                           " \"firmware\": %s, \"disks\": %s}",
                           uuid, name, memory, flavor, firmware, disks) > 0);
        cr_assert_eq(guest_spec_parse(text, strlen(text), "t.json", ret, &err), 0, "%s\n%s", err ? err->msg : "", text);
        free(text);
}

#define FW "{\"kernel\": \"/srv/k\", \"initrd\": \"/srv/i\", \"cmdline\": \"console=ttyS0\"}"
#define DISKS "[{\"path\": \"/srv/top.qcow2\", \"format\": \"qcow2\", \"backing\": {\"path\": \"/srv/base.raw\", \"format\": \"raw\"}}," \
              " {\"path\": \"/srv/cd.iso\", \"readonly\": true}]"

static struct guest_spec ours;

static void ours_setup(void) {
        parse(&ours, UUID, "web-1", 512, TPM_FLAVOR, FW, DISKS);
}
static void ours_teardown(void) {
        guest_spec_clear(&ours);
}
TestSuite(specmatch, .init = ours_setup, .fini = ours_teardown);

/* the error of matching theirs against ours; NULL when it matches */
static char *mismatch(struct guest_spec *theirs) {
        vmsup_error *err = NULL;
        char *msg = NULL;
        int r = spec_match_incoming(&ours, theirs, &err);

        if (r < 0) {
                cr_assert_eq(err->kind, VMSUP_ERR_DATA, "%s", err->msg);
                msg = strdup(err->msg);
                vmsup_error_free(err);
        }
        guest_spec_clear(theirs);
        return msg;
}

static void assert_refused(struct guest_spec *theirs, const char *want) {
        char *msg = mismatch(theirs);

        cr_assert_not_null(msg, "accepted, wanted '%s'", want);
        cr_assert(strstr(msg, want), "'%s' lacks '%s'", msg, want);
        free(msg);
}

Test(specmatch, the_same_guest_matches) {
        struct guest_spec theirs;

        parse(&theirs, UUID, "web-1", 512, TPM_FLAVOR, FW, DISKS);
        cr_assert_null(mismatch(&theirs));
}

Test(specmatch, what_the_guest_does_not_see_is_ours) {
        struct guest_spec theirs;

        /* renamed, another flavor name and owner, other extra specs: ours applies */
        parse(&theirs, UUID, "renamed", 512,
              "\"flavor\": {\"name\": \"m2\", \"extra_specs\": {\"hw:tpm_version\": \"2.0\", \"hw:tpm_model\": "
              "\"tpm-crb\", \"hw:tpm_secret_security\": \"host\", \"hw:cpu_policy\": \"shared\"}}",
              FW, DISKS);
        cr_assert_null(mismatch(&theirs));
}

Test(specmatch, every_key_the_guest_sees_is_named) {
        struct guest_spec t;

        parse(&t, "0b7c6e4a-3f0e-4d5c-9a1b-2c3d4e5f6a7c", "web-1", 512, TPM_FLAVOR, FW, DISKS);
        assert_refused(&t, "key 'uuid': '0b7c6e4a-3f0e-4d5c-9a1b-2c3d4e5f6a7c' from the source, '" UUID "' here");
        parse(&t, UUID, "web-1", 1024, TPM_FLAVOR, FW, DISKS);
        assert_refused(&t, "key 'memory_mb': 1024 from the source, 512 here");
        parse(&t, UUID, "web-1", 512,
              "\"flavor\": {\"name\": \"m1\", \"extra_specs\": {\"hw:tpm_version\": \"2.0\", "
              "\"hw:tpm_model\": \"tpm-tis\", \"hw:tpm_secret_security\": \"host\"}}", FW, DISKS);
        assert_refused(&t, "key 'flavor.extra_specs.hw:tpm_model': 'tpm-tis' from the source, 'tpm-crb' here");
        parse(&t, UUID, "web-1", 512, TPM_FLAVOR, "{\"kernel\": \"/srv/k\", \"initrd\": \"/etc/shadow\", \"cmdline\": "
              "\"console=ttyS0\"}", DISKS);
        assert_refused(&t, "key 'firmware.initrd': '/etc/shadow' from the source, '/srv/i' here");
        parse(&t, UUID, "web-1", 512, TPM_FLAVOR, "{\"kernel\": \"/srv/k\", \"cmdline\": \"console=ttyS0\"}", DISKS);
        assert_refused(&t, "key 'firmware.initrd': none from the source, '/srv/i' here");
        parse(&t, UUID, "web-1", 512, TPM_FLAVOR, "{\"kernel\": \"/srv/k\", \"initrd\": \"/srv/i\", \"cmdline\": "
              "\"console=ttyS0 init=/bin/sh\"}", DISKS);
        assert_refused(&t, "key 'firmware.cmdline'");
        parse(&t, UUID, "web-1", 512, TPM_FLAVOR, "{\"kernel\": \"/var/lib/vmsup/k\", \"initrd\": \"/srv/i\", "
              "\"cmdline\": \"console=ttyS0\"}", DISKS);
        assert_refused(&t, "key 'firmware.kernel': '/var/lib/vmsup/k' from the source, '/srv/k' here");
}

/* The display adapter is part of the machine QEMU's stream carries: a source with VNC and
 * a destination without (or the other way) would fail only in the middle of the stream. */
Test(specmatch, graphics_are_part_of_the_machine) {
        struct guest_spec t;

        parse(&t, UUID, "web-1", 512, TPM_FLAVOR, FW, DISKS ", \"graphics\": {\"type\": \"vnc\"}");
        assert_refused(&t, "key 'graphics.type': 'vnc' from the source, none here");
        guest_spec_clear(&ours);
        parse(&ours, UUID, "web-1", 512, TPM_FLAVOR, FW, DISKS ", \"graphics\": {\"type\": \"vnc\"}");
        parse(&t, UUID, "web-1", 512, TPM_FLAVOR, FW, DISKS);
        assert_refused(&t, "key 'graphics.type': none from the source, 'vnc' here");
        parse(&t, UUID, "web-1", 512, TPM_FLAVOR, FW, DISKS ", \"graphics\": {\"type\": \"vnc\"}");
        cr_assert_null(mismatch(&t));
}

static void parse_text(struct guest_spec *ret, const char *text) {
        vmsup_error *err = NULL;

        cr_assert_eq(guest_spec_parse(text, strlen(text), "t.json", ret, &err), 0, "%s\n%s", err ? err->msg : "", text);
}

Test(specmatch, vcpus_and_firmware_type) {
        struct guest_spec t;

        parse_text(&t, "{\"uuid\": \"" UUID "\", \"name\": \"web-1\", \"vcpus\": 4, \"memory_mb\": 512, " TPM_FLAVOR
                       ", \"image\": {\"properties\": {\"hw_firmware_type\": \"uefi\"}}, \"firmware\": " FW
                       ", \"disks\": " DISKS "}");
        assert_refused(&t, "key 'vcpus': 4 from the source, 2 here");
        parse_text(&t, "{\"uuid\": \"" UUID "\", \"name\": \"web-1\", \"vcpus\": 2, \"memory_mb\": 512, " TPM_FLAVOR
                       ", \"image\": {\"properties\": {\"hw_firmware_type\": \"bios\"}}, \"firmware\": " FW
                       ", \"disks\": " DISKS "}");
        assert_refused(&t, "key 'image.properties.hw_firmware_type': 'bios' from the source, 'uefi' here");
        /* the same firmware by another key: still refused, as written */
        parse_text(&t, "{\"uuid\": \"" UUID "\", \"name\": \"web-1\", \"vcpus\": 2, \"memory_mb\": 512, " TPM_FLAVOR
                       ", \"firmware\": {\"type\": \"uefi\", \"kernel\": \"/srv/k\", \"initrd\": \"/srv/i\", "
                       "\"cmdline\": \"console=ttyS0\"}, \"disks\": " DISKS "}");
        assert_refused(&t, "key 'image.properties.hw_firmware_type': none from the source, 'uefi' here");
}

Test(specmatch, disks_in_number_order_path_format_and_chain) {
        struct guest_spec t;

        parse(&t, UUID, "web-1", 512, TPM_FLAVOR, FW, "[{\"path\": \"/srv/top.qcow2\", \"format\": \"qcow2\", "
              "\"backing\": {\"path\": \"/srv/base.raw\", \"format\": \"raw\"}}]");
        assert_refused(&t, "key 'disks': 1 disks from the source, 2 here");
        parse(&t, UUID, "web-1", 512, TPM_FLAVOR, FW, "[{\"path\": \"/srv/cd.iso\", \"readonly\": true}, "
              "{\"path\": \"/srv/top.qcow2\", \"format\": \"qcow2\", \"backing\": {\"path\": \"/srv/base.raw\", \"format\": \"raw\"}}]");
        assert_refused(&t, "key 'disks[0].path': '/srv/cd.iso' from the source, '/srv/top.qcow2' here");
        parse(&t, UUID, "web-1", 512, TPM_FLAVOR, FW, "[{\"path\": \"/var/lib/vmsup/secrets/" UUID "\"}, "
              "{\"path\": \"/srv/cd.iso\", \"readonly\": true}]");
        assert_refused(&t, "key 'disks[0].path': '/var/lib/vmsup/secrets/" UUID "' from the source");
        parse(&t, UUID, "web-1", 512, TPM_FLAVOR, FW, "[{\"path\": \"/srv/top.qcow2\", \"format\": \"qcow2\", "
              "\"backing\": {\"path\": \"/etc/ssh/ssh_host_ed25519_key\", \"format\": \"raw\"}}, {\"path\": \"/srv/cd.iso\", \"readonly\": true}]");
        assert_refused(&t, "key 'disks[0].backing.path': '/etc/ssh/ssh_host_ed25519_key' from the source, "
                           "'/srv/base.raw' here");
        parse(&t, UUID, "web-1", 512, TPM_FLAVOR, FW, "[{\"path\": \"/srv/top.qcow2\", \"format\": \"qcow2\", "
              "\"backing\": {\"path\": \"/srv/base.raw\", \"format\": \"qcow2\"}}, {\"path\": \"/srv/cd.iso\", \"readonly\": true}]");
        assert_refused(&t, "key 'disks[0].backing.format': 'qcow2' from the source, 'raw' here");
        parse(&t, UUID, "web-1", 512, TPM_FLAVOR, FW, "[{\"path\": \"/srv/top.qcow2\", \"format\": \"qcow2\"}, "
              "{\"path\": \"/srv/cd.iso\", \"readonly\": true}]");
        assert_refused(&t, "key 'disks[0].backing': none from the source, '/srv/base.raw' here");
        parse(&t, UUID, "web-1", 512, TPM_FLAVOR, FW, "[{\"path\": \"/srv/top.qcow2\", \"format\": \"qcow2\", "
              "\"backing\": {\"path\": \"/srv/base.raw\", \"format\": \"raw\"}}, {\"path\": \"/srv/cd.iso\"}]");
        assert_refused(&t, "key 'disks[1].readonly': 'false' from the source, 'true' here");
        parse(&t, UUID, "web-1", 512, TPM_FLAVOR, FW, "[{\"path\": \"/srv/top.qcow2\", \"format\": \"qcow2\", "
              "\"backing\": {\"path\": \"/srv/base.raw\", \"format\": \"raw\"}}, {\"path\": \"/srv/cd.iso\", \"format\": \"qcow2\", \"readonly\": true}]");
        assert_refused(&t, "key 'disks[1].format': 'qcow2' from the source, 'raw' here");
}

Test(specmatch, a_spec_without_a_vtpm_is_refused_as_such) {
        struct guest_spec t;

        parse(&t, UUID, "web-1", 512, "\"flavor\": {\"name\": \"m1\"}", FW, DISKS);
        assert_refused(&t, "key 'flavor.extra_specs.hw:tpm_version': none from the source, '2.0' here: the source's "
                           "spec gives the guest no vTPM");
}

Test(specmatch, the_secret_id_once_the_orchestrator_knows_it) {
        struct guest_spec t;
        char *text = NULL;
        vmsup_error *err = NULL;

        /* ours without one (first migration of a guest the orchestrator has no id for): any */
        parse(&t, UUID, "web-1", 512, TPM_FLAVOR, FW, DISKS);
        cr_assert_null(mismatch(&t));
        guest_spec_clear(&ours);
        cr_assert(asprintf(&text, "{\"uuid\": \"" UUID "\", \"name\": \"web-1\", \"vcpus\": 2, \"memory_mb\": 512, "
                                  TPM_FLAVOR ", \"image\": {\"properties\": {\"hw_firmware_type\": \"uefi\"}},"
                                  " \"vtpm_secret_uuid\": \"11111111-2222-4333-8444-555555555555\","
                                  " \"firmware\": " FW ", \"disks\": " DISKS "}") > 0);
        cr_assert_eq(guest_spec_parse(text, strlen(text), "t.json", &ours, &err), 0, "%s", err ? err->msg : "");
        free(text);
        cr_assert(asprintf(&text, "{\"uuid\": \"" UUID "\", \"name\": \"web-1\", \"vcpus\": 2, \"memory_mb\": 512, "
                                  TPM_FLAVOR ", \"image\": {\"properties\": {\"hw_firmware_type\": \"uefi\"}},"
                                  " \"vtpm_secret_uuid\": \"99999999-2222-4333-8444-555555555555\","
                                  " \"firmware\": " FW ", \"disks\": " DISKS "}") > 0);
        cr_assert_eq(guest_spec_parse(text, strlen(text), "t.json", &t, &err), 0, "%s", err ? err->msg : "");
        free(text);
        assert_refused(&t, "key 'vtpm_secret_uuid': '99999999-2222-4333-8444-555555555555' from the source, "
                           "'11111111-2222-4333-8444-555555555555' here");
}

/* ---- vmsup's own dirs ------------------------------------------------------------------- */

static char *root;
static struct host_config cfg;

static void dirs_setup(void) {
        root = test_mkdtemp();
        cr_assert(asprintf(&cfg.paths.state_dir, "%s/state", root) > 0);
        cr_assert(asprintf(&cfg.paths.secrets_dir, "%s/state/secrets", root) > 0);
        cr_assert(asprintf(&cfg.paths.run_dir, "%s/run-link", root) > 0); /* a symbolic link to run */
        cr_assert(asprintf(&cfg.paths.log_dir, "%s/log", root) > 0);      /* does not exist (yet) */
        {
                char cmd[1024];

                snprintf(cmd, sizeof(cmd),
                         "cd %s && mkdir -p state/secrets run srv && ln -s run run-link && echo s > state/secrets/" UUID
                         " && echo k > srv/vmlinuz && ln -s ../state/secrets/" UUID " srv/innocent.img && "
                         "ln -s ../state srv/statelink && mkdir state2 && echo x > state2/disk.raw",
                         root);
                cr_assert_eq(system(cmd), 0, "%s", cmd);
        }
}
static void dirs_teardown(void) {
        free(cfg.paths.state_dir);
        free(cfg.paths.secrets_dir);
        free(cfg.paths.run_dir);
        free(cfg.paths.log_dir);
        memset(&cfg, 0, sizeof(cfg));
        test_rmtree(root);
        free(root);
}
TestSuite(owndirs, .init = dirs_setup, .fini = dirs_teardown);

/* the error for a spec with kernel, initrd and disks as given (relative to root); NULL
 * when accepted */
static char *dirs_error(const char *kernel, const char *initrd, const char *disk, const char *backing) {
        char *text = NULL, fw[1024] = "null", disks[2048] = "[]";
        struct guest_spec spec;
        vmsup_error *err = NULL;
        char *msg = NULL;

        if (kernel && initrd)
                snprintf(fw, sizeof(fw), "{\"kernel\": \"%s/%s\", \"initrd\": \"%s/%s\"}", root, kernel, root, initrd);
        else if (kernel)
                snprintf(fw, sizeof(fw), "{\"kernel\": \"%s/%s\"}", root, kernel);
        if (disk && backing)
                snprintf(disks, sizeof(disks), "[{\"path\": \"%s/srv/top.qcow2\", \"format\": \"qcow2\"}, {\"path\": "
                         "\"%s/%s\", \"format\": \"qcow2\", \"backing\": {\"path\": \"%s/%s\", \"format\": \"raw\"}}]", root, root, disk,
                         root, backing);
        else if (disk)
                snprintf(disks, sizeof(disks), "[{\"path\": \"%s/%s\"}]", root, disk);
        cr_assert(asprintf(&text, "{\"uuid\": \"" UUID "\", \"name\": \"g\", \"vcpus\": 1, \"memory_mb\": 256, "
                                  TPM_FLAVOR ", \"firmware\": %s, \"disks\": %s}", fw, disks) > 0);
        cr_assert_eq(guest_spec_parse(text, strlen(text), "g.json", &spec, &err), 0, "%s\n%s", err ? err->msg : "", text);
        free(text);
        if (spec_match_host_dirs(&spec, &cfg, "g.json", &err) < 0) {
                cr_assert_eq(err->kind, VMSUP_ERR_DATA, "%s", err->msg);
                msg = strdup(err->msg);
                vmsup_error_free(err);
        }
        guest_spec_clear(&spec);
        return msg;
}

static void assert_dirs_refused(char *msg, const char *want_key, const char *want_dir) {
        char key[64], dir[600];

        cr_assert_not_null(msg, "accepted a path in vmsup's %s dir", want_dir);
        snprintf(key, sizeof(key), "guest spec 'g.json': key '%s': '", want_key);
        snprintf(dir, sizeof(dir), "inside vmsup's %s", want_dir);
        cr_assert(strstr(msg, key) && strstr(msg, dir), "'%s' lacks '%s' or '%s'", msg, key, dir);
        free(msg);
}

Test(owndirs, paths_elsewhere_are_fine) {
        /* state2 shares state's prefix, not its dir */
        cr_assert_null(dirs_error("srv/vmlinuz", NULL, "state2/disk.raw", NULL));
        cr_assert_null(dirs_error("srv/vmlinuz", "srv/not-yet-there", "srv/new.raw", NULL));
}

Test(owndirs, a_file_in_the_secrets_dir_is_refused) {
        char *msg = dirs_error(NULL, NULL, "state/secrets/" UUID, NULL), want[512];

        snprintf(want, sizeof(want), "guest spec 'g.json': key 'disks[0].path': '%s/state/secrets/" UUID "' is inside "
                 "vmsup's secrets dir '%s/state/secrets'", root, root);
        cr_assert(msg && strstr(msg, want), "'%s' lacks '%s'", msg, want);
        free(msg);
}

Test(owndirs, symbolic_links_are_resolved) {
        char *msg = dirs_error("srv/vmlinuz", NULL, "srv/innocent.img", NULL), want[512];

        /* a link to a secret file */
        snprintf(want, sizeof(want), "key 'disks[0].path': '%s/srv/innocent.img' resolves to '%s/state/secrets/" UUID
                 "', inside vmsup's secrets dir", root, root);
        cr_assert(msg && strstr(msg, want), "'%s' lacks '%s'", msg, want);
        free(msg);
        /* a file not there yet, through a link to the state dir */
        assert_dirs_refused(dirs_error("srv/vmlinuz", "srv/statelink/" UUID "/tpm2-00.permall.sealed", NULL, NULL),
                            "firmware.initrd", "state");
        /* '..' out of srv into the run dir, whose configured name is itself a link */
        assert_dirs_refused(dirs_error("srv/../run/" UUID "/tpm/tpm2-00.permall", NULL, NULL, NULL), "firmware.kernel",
                            "run");
        /* a dir that does not exist yet */
        assert_dirs_refused(dirs_error("srv/vmlinuz", NULL, "log/" UUID "/console.log", NULL), "disks[0].path", "log");
        /* the second disk's backing file */
        assert_dirs_refused(dirs_error("srv/vmlinuz", NULL, "srv/d.qcow2", "srv/innocent.img"), "disks[1].backing.path",
                            "secrets");
}

/* ---- the command line ------------------------------------------------------------------- */

static char *cli_root, *cli_conf;

static void cli_setup(void) {
        cli_root = test_mkdtemp();
        cli_conf = test_write_conf(cli_root, "vmsup.conf",
                                   &(struct test_conf) { .root = cli_root,
                                                         .tpm = "supported_tpm_secret_security = user, host\n",
                                                         .mode = 0644 });
}
static void cli_teardown(void) {
        test_rmtree(cli_root);
        free(cli_root);
        free(cli_conf);
}
TestSuite(specmatch_cli, .init = cli_setup, .fini = cli_teardown);

static char *cli_spec(const char *name, const char *extra_specs, const char *firmware) {
        return test_write_spec(cli_root, name,
                               &(struct test_spec) { .uuid = UUID, .flavor = "m1", .extra_specs = extra_specs,
                                                     .firmware = firmware });
}

Test(specmatch_cli, validate_and_run_refuse_vmsups_own_files) {
        char fw[1024], *spec, *link = NULL, *state = NULL, want[512];
        struct test_run r;
        struct stat st;

        /* an initrd that is a link to the guest's own sealed state in the state dir */
        cr_assert(asprintf(&state, "%s/state/" UUID, cli_root) > 0);
        cr_assert(asprintf(&link, "%s/initrd.img", cli_root) > 0);
        cr_assert_eq(symlink(state, link), 0);
        snprintf(fw, sizeof(fw), "{\"kernel\": \"/boot/vmlinuz\", \"initrd\": \"%s\"}", link);
        spec = cli_spec("g.json", TPM_EXTRA_SPECS, fw);
        snprintf(want, sizeof(want), "key 'firmware.initrd': '%s' resolves to '%s', inside vmsup's state dir", link,
                 state);

        test_run_vmsup(&r, NULL, (const char *[]) { "--config", cli_conf, "validate", spec, NULL });
        cr_assert_eq(r.exit_code, 65, "%s", r.err);
        cr_assert(strstr(r.err, want), "%s", r.err);
        test_run_clear(&r);

        test_run_vmsup(&r, NULL, (const char *[]) { "--config", cli_conf, "run", spec, NULL });
        cr_assert_eq(r.exit_code, 65, "%s", r.err);
        cr_assert(strstr(r.err, want), "%s", r.err);
        test_run_clear(&r);
        /* refused before anything was made */
        cr_assert_neq(stat(state, &st), 0, "the refused run made %s", state);
        free(spec);
        free(link);
        free(state);
}

Test(specmatch_cli, incoming_needs_the_destinations_own_spec) {
        char *spec = cli_spec("g.json", TPM_EXTRA_SPECS, "null"), *plain, *user;
        struct test_run r;

        test_run_vmsup(&r, NULL, (const char *[]) { "--config", cli_conf, "run", "--incoming", "49152", UUID, NULL });
        cr_assert_eq(r.exit_code, 64, "%s", r.err);
        cr_assert(strstr(r.err, "--incoming needs --spec GUEST.json"), "%s", r.err);
        test_run_clear(&r);

        test_run_vmsup(&r, NULL, (const char *[]) { "--config", cli_conf, "run", "--spec", spec, NULL });
        cr_assert_eq(r.exit_code, 64, "%s", r.err);
        cr_assert(strstr(r.err, "--spec goes with --incoming"), "%s", r.err);
        test_run_clear(&r);

        test_run_vmsup(&r, NULL, (const char *[]) { "--config", cli_conf, "run", "--incoming", "49152", "--spec", spec,
                                                    "6d1b8a52-8c4e-4f43-9a3e-0c1f5b7d2e90", NULL });
        cr_assert_eq(r.exit_code, 64, "%s", r.err);
        cr_assert(strstr(r.err, "guest 6d1b8a52-8c4e-4f43-9a3e-0c1f5b7d2e90 is not the one"), "%s", r.err);
        test_run_clear(&r);

        /* no source sends a guest without a vTPM: refused before listening */
        plain = cli_spec("plain.json", "", "null");
        test_run_vmsup(&r, NULL, (const char *[]) { "--config", cli_conf, "run", "--incoming", "49152", "--spec", plain,
                                                    NULL });
        cr_assert_eq(r.exit_code, 69, "%s", r.err);
        cr_assert(strstr(r.err, "has no vTPM") && strstr(r.err, "only guests with a vTPM migrate"), "%s", r.err);
        test_run_clear(&r);

        user = cli_spec("user.json", "\"hw:tpm_version\": \"2.0\"", "null");
        test_run_vmsup(&r, NULL, (const char *[]) { "--config", cli_conf, "run", "--incoming", "49152", "--spec", user,
                                                    NULL });
        cr_assert_eq(r.exit_code, 69, "%s", r.err);
        cr_assert(strstr(r.err, "Operation 'live-migration' not supported for vTPM-enabled instance (" UUID ")."), "%s",
                  r.err);
        test_run_clear(&r);
        free(spec);
        free(plain);
        free(user);
}
