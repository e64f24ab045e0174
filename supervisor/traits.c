#include "config.h"

#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <string.h>
#include <sys/wait.h>

#include "common/proc.h"
#include "common/util.h"
#include "supervisor/traits.h"
#include "tpmstate/caps.h"

/* Does `qemu -machine none -nodefaults -display none OPT help` list NAME as a whole word
 * in quotes (devices: name "tpm-crb") or at the start of a line (tpmdev backends)? */
static int qemu_help_lists(const char *qemu, const char *opt, const char *name, bool *ret, vmsup_error **err) {
        char *argv[] = { (char *) qemu, (char *) "-machine", (char *) "none", (char *) "-nodefaults",
                         (char *) "-display", (char *) "none", (char *) opt, (char *) "help", NULL };
        struct proc_result res = { 0 };
        char quoted[64];
        const char *text;
        int r;

        r = proc_run_capture(argv, NULL, 20000, 1024 * 1024, &res, err);
        if (r < 0)
                return vmsup_error_prefix(err, "probe QEMU");
        /* QEMU 7.2 lists -tpmdev backends on stderr and exits 1: judge by what it printed. */
        text = streq(opt, "-tpmdev") ? res.errout : res.out;
        if (!WIFEXITED(res.status) ||
            (WEXITSTATUS(res.status) != 0 && !strstr(res.errout, "Supported TPM types"))) {
                char why[64];

                r = vmsup_fail(err, VMSUP_ERR_UNAVAILABLE, 0, "probe QEMU: '%s %s help' %s", qemu, opt,
                               proc_describe_status(res.status, why, sizeof(why)));
                proc_result_clear(&res);
                return r;
        }
        snprintf(quoted, sizeof(quoted), "\"%s\"", name);
        *ret = false;
        if (streq(opt, "-device"))
                *ret = strstr(text, quoted) != NULL;
        else
                for (const char *line = text; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
                        size_t n = strlen(name);

                        while (*line == ' ')
                                line++;
                        if (strncmp(line, name, n) == 0 && (line[n] == ' ' || line[n] == '\n' || !line[n]))
                                *ret = true;
                }
        proc_result_clear(&res);
        return 0;
}

int host_traits_probe_facts(const struct host_config *cfg, struct host_tpm_facts *ret, vmsup_error **err) {
        struct host_tpm_facts f = { .swtpm_enabled = cfg->tpm.swtpm_enabled };
        struct swtpm_caps swtpm = { 0 }, setup = { 0 };
        _cleanup_free_ char *qemu = NULL;
        bool emulator = false;
        int r;

        if (!f.swtpm_enabled) {
                *ret = f;
                return 0;
        }
        if (!getpwnam(cfg->tpm.swtpm_user))
                return vmsup_fail(err, VMSUP_ERR_CONFIG, 0, "[tpm] swtpm_user '%s' does not exist on this host",
                                  cfg->tpm.swtpm_user);
        if (!getgrnam(cfg->tpm.swtpm_group))
                return vmsup_fail(err, VMSUP_ERR_CONFIG, 0, "[tpm] swtpm_group '%s' does not exist on this host",
                                  cfg->tpm.swtpm_group);

        qemu = proc_find_executable(cfg->qemu.binary, err);
        if (!qemu)
                return vmsup_error_prefix(err, "[tpm] swtpm_enabled is true but QEMU cannot be used");
        r = qemu_help_lists(qemu, "-tpmdev", "emulator", &emulator, err);
        if (r < 0)
                return r;
        if (!emulator)
                return vmsup_fail(err, VMSUP_ERR_UNAVAILABLE, 0,
                                  "[tpm] swtpm_enabled is true but QEMU '%s' has no TPM emulator backend", qemu);
        if ((r = qemu_help_lists(qemu, "-device", "tpm-tis", &f.qemu_tpm_tis, err)) < 0 ||
            (r = qemu_help_lists(qemu, "-device", "tpm-crb", &f.qemu_tpm_crb, err)) < 0)
                return r;

        r = swtpm_caps_probe_cached(cfg->tpm.swtpm, cfg->paths.state_dir, &swtpm, err);
        if (r < 0)
                return vmsup_error_prefix(err, "[tpm] swtpm_enabled is true but swtpm cannot be used");
        r = swtpm_caps_probe(cfg->tpm.swtpm_setup, true, &setup, err);
        if (r < 0) {
                swtpm_caps_clear(&swtpm);
                return vmsup_error_prefix(err, "[tpm] swtpm_enabled is true but swtpm_setup cannot be used");
        }
        f.swtpm_tpm_1_2 = swtpm_caps_has(&swtpm, "tpm-1.2");
        f.swtpm_tpm_2_0 = swtpm_caps_has(&swtpm, "tpm-2.0");
        f.setup_tpm_1_2 = swtpm_caps_has(&setup, "tpm-1.2");
        f.setup_tpm_2_0 = swtpm_caps_has(&setup, "tpm-2.0");
        swtpm_caps_clear(&swtpm);
        swtpm_caps_clear(&setup);

        f.secret_security = cfg->tpm.supported_secret_security;
        *ret = f;
        return 0;
}

int host_traits_probe(const struct host_config *cfg, struct host_traits *ret, vmsup_error **err) {
        struct host_tpm_facts f;
        int r = host_traits_probe_facts(cfg, &f, err);

        if (r < 0)
                return r;
        host_traits_decide(&f, ret);
        return 0;
}
