#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <malloc.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include "supervisor/confine.h"
#include "common/notify.h"
#include "common/util.h"
#include "crypto/gnutls_load.h"
#include "supervisor/guest.h"
#include "nova/guestspec.h"
#include "common/log.h"
#include "nova/tpmrules.h"
#include "cli/verbs.h"

static void help(void) {
        printf("Usage: vmsup run [--token-fd N] [--ready-fd N] [--new-tpm] [--new-vars] GUEST.json\n"
               "       vmsup run --incoming [ADDR:]PORT --spec GUEST.json [--ready-fd N] [UUID]\n"
               "\n"
               "Boot the guest the spec describes, with the vTPM Nova's rules give it, and\n"
               "supervise it in the foreground until it ends: swtpm and QEMU are started as\n"
               "children, checked over QMP (query-tpm), and watched in one event loop.\n"
               "\n"
               "The TPM state is kept sealed (AES-256-GCM) in the guest's state dir under a key\n"
               "derived from its vTPM passphrase, which Barbican holds. In Nova's user mode\n"
               "the guest owner's token is read from file descriptor N (--token-fd N; 0 for\n"
               "stdin), never from the command line or the environment. On the first start\n"
               "vmsup creates the secret and prints 'vtpm_secret_uuid=<id>' on stdout for the\n"
               "orchestrator to keep in the guest spec.\n"
               "\n"
               "vmsup never replaces a guest's TPM or UEFI variables by itself: a guest that\n"
               "has had a TPM (or has run with its own OVMF VARS) and whose sealed TPM state\n"
               "(or VARS file) is gone is refused with exit 65. --new-tpm manufactures a new TPM\n"
               "for such a guest (a new EK; its NV counters start again), --new-vars gives it a\n"
               "fresh copy of the VARS template; both are logged.\n"
               "\n"
               "Readiness: once the guest runs (QEMU continued, its TPM checked; for --incoming,\n"
               "once the received guest runs here), vmsup sends READY=1 to systemd when\n"
               "NOTIFY_SOCKET is set (Type=notify; also STATUS= lines and STOPPING=1), and\n"
               "writes one newline to file descriptor N and closes it with --ready-fd N (s6's\n"
               "notification-fd). See docs/systemd.md.\n"
               "\n"
               "SIGTERM or SIGINT stops the guest gracefully (ACPI power button, then quit\n"
               "after [supervisor] stop_timeout); a second one stops it at once. 'vmsup\n"
               "status|stop|reboot|qmp UUID' talk to the running supervisor.\n"
               "\n"
               "--incoming makes this supervisor the destination of a live migration of the\n"
               "guest GUEST.json describes as this host sees it (its disks, kernel and initrd\n"
               "here: what Nova's pre_live_migration gives the destination); a UUID, if given,\n"
               "must be the spec's. Only guests with a vTPM in host secret-security mode. It\n"
               "listens on ADDR:PORT (any address when ADDR is left out; PORT 0 or empty:\n"
               "[migration] port) for the source's supervisor ('vmsup migrate UUID --to\n"
               "THIS-HOST'), authenticated by TLS with the host certificates in [migration]\n"
               "tls_dir, receives the guest's spec and vTPM secret, and refuses (exit 65) a\n"
               "spec that differs from GUEST.json in what the guest sees or in any host path\n"
               "(docs/migration.md lists the keys). It runs the guest from GUEST.json: swtpm\n"
               "and QEMU receive it, and it goes on supervising the guest once it runs here.\n"
               "If the migration fails nothing of the guest is left on this host (exit status\n"
               "as below).\n"
               "\n"
               "A spec whose disk, backing file, kernel or initrd lies in vmsup's own state,\n"
               "run, log or secrets dir (after resolving symbolic links) is refused, exit 65.\n"
               "\n"
               "Exit status: 0 the guest powered off or was stopped; 1 QEMU or swtpm died;\n"
               "65 bad guest spec or sealed state; 69 vTPM, Barbican or a program unavailable;\n"
               "75 the guest is already supervised; 77 the owner's credentials are missing or\n"
               "refused; 78 bad host configuration; see vmsup(8).\n");
}

/* Before listening: the destination's own spec must be one a source can send (a vTPM in
 * host mode: `vmsup migrate` refuses the rest) and, if a UUID was given, this guest's.
 * Returns 0 or the exit code (the error logged). */
static int incoming_spec_check(const char *path, const char *uuid, char ret_uuid[static 37], vmsup_error **err) {
        struct guest_spec spec = { 0 };
        struct vtpm_config tpm = { 0 };
        int r;

        if (guest_spec_load(path, &spec, err) < 0 || tpm_rules_resolve(&spec, &tpm, err) < 0)
                goto out;
        if (uuid && !streq(uuid, spec.uuid)) {
                r = verb_usage_error("run", "guest %s is not the one '%s' describes (%s)", uuid, path, spec.uuid);
                guest_spec_clear(&spec);
                return r;
        }
        if (!tpm.present)
                vmsup_fail(err, VMSUP_ERR_UNAVAILABLE, 0,
                           "guest spec '%s': guest %s has no vTPM (flavor.extra_specs.hw:tpm_version and "
                           "image.properties.hw_tpm_version ask for none): only guests with a vTPM migrate",
                           path, spec.uuid);
        else if (tpm.secret_security != SECRET_SECURITY_HOST)
                vmsup_fail(err, VMSUP_ERR_UNAVAILABLE, 0,
                           "Operation 'live-migration' not supported for vTPM-enabled instance (%s).", spec.uuid);
        else
                memcpy(ret_uuid, spec.uuid, 37);
out:
        guest_spec_clear(&spec);
        return *err ? log_error_kind(*err) : 0;
}

/* --ready-fd N: an fd open for writing, not one of the standard three; kept from children. */
static int parse_ready_fd(const char *arg, int *ret_fd) {
        char *end;
        long fd;
        int r;

        errno = 0;
        fd = strtol(arg, &end, 10);
        if (errno || end == arg || *end || fd < 0 || fd > INT_MAX)
                return verb_usage_error("run", "--ready-fd takes a file descriptor number, not '%s'", arg);
        if (fd <= 2)
                return verb_usage_error("run", "--ready-fd %ld: not stdin, stdout or stderr (give the readiness pipe "
                                               "its own descriptor, 3 or above)", fd);
        r = notify_ready_fd_check((int) fd);
        if (r == -EBADF)
                return verb_usage_error("run", "--ready-fd %ld: no such open file descriptor", fd);
        if (r < 0)
                return verb_usage_error("run", "--ready-fd %ld: not open for writing", fd);
        (void) fcntl((int) fd, F_SETFD, FD_CLOEXEC);
        *ret_fd = (int) fd;
        return 0;
}

int verb_run(struct vmsup_ctx *ctx, int argc, char **argv) {
        static const struct option longopts[] = { { "token-fd", required_argument, NULL, 't' },
                                                   { "incoming", required_argument, NULL, 'i' },
                                                   { "spec", required_argument, NULL, 's' },
                                                   { "new-tpm", no_argument, NULL, 'T' },
                                                   { "new-vars", no_argument, NULL, 'N' },
                                                   { "ready-fd", required_argument, NULL, 'R' },
                                                   { "help", no_argument, NULL, 'h' }, {} };
        _cleanup_error_ vmsup_error *err = NULL;
        _cleanup_free_ char *addr = NULL, *port = NULL;
        struct guest_run_opts opts = { .token_fd = -1, .ready_fd = -1 };
        const char *incoming = NULL, *spec_path = NULL, *uuid = NULL;
        char spec_uuid[37];
        int c, r;

        while ((c = getopt_long(argc, argv, "t:h", longopts, NULL)) != -1) {
                if (c == 'i') {
                        incoming = optarg;
                        continue;
                }
                if (c == 's') {
                        spec_path = optarg;
                        continue;
                }
                if (c == 'T' || c == 'N') {
                        *(c == 'T' ? &opts.new_tpm : &opts.new_vars) = true;
                        continue;
                }
                if (c == 'h') {
                        help();
                        return 0;
                }
                if (c == 't') {
                        if (verb_parse_token_fd("run", optarg, &opts.token_fd) != 0)
                                return VMSUP_ERR_USAGE;
                        continue;
                }
                if (c == 'R') {
                        if (parse_ready_fd(optarg, &opts.ready_fd) != 0)
                                return VMSUP_ERR_USAGE;
                        continue;
                }
                return verb_usage_error("run", "bad option");
        }
        if (spec_path && !incoming)
                return verb_usage_error("run", "--spec goes with --incoming; a plain run takes the guest spec as its "
                                               "argument");
        if (incoming && !spec_path)
                return verb_usage_error("run", "--incoming needs --spec GUEST.json: the guest as this host's "
                                               "orchestrator declares it (its disks, kernel and initrd here)");
        if (incoming ? argc - optind > 1 : argc - optind != 1)
                return verb_usage_error("run", incoming ? "--incoming takes at most the guest's UUID after its options"
                                                        : "expects one guest spec file");
        if (incoming && (opts.new_tpm || opts.new_vars))
                return verb_usage_error("run", "--incoming takes no --new-tpm or --new-vars: the guest's TPM state and "
                                               "VARS come from the source");
        if (incoming && opts.token_fd >= 0)
                return verb_usage_error("run", "--incoming takes no --token-fd: the source sends the vTPM secret");
        if (incoming && optind < argc) {
                uuid = argv[optind];
                if (!uuid_is_valid(uuid))
                        return verb_usage_error("run", "'%s' is not a guest UUID", uuid);
        }
        /* before anything could hold a secret. gnutls: an incoming guest's TLS needs it at
         * once; a start loads it once QEMU is on its way (guest_start_children()), so
         * that its loading is not on the start's path */
        if (confine_no_dumps(&err) < 0 || (incoming && crypto_gnutls_load(&err) < 0) ||
            vmsup_ctx_config(ctx, &err) < 0)
                return log_error_kind(err);
        opts.cfg = &ctx->cfg;
        if (incoming) {
                r = verb_parse_host_port("run", incoming, ctx->cfg.migration.port, &addr, &port);
                if (r != 0)
                        return r;
                r = incoming_spec_check(spec_path, uuid, spec_uuid, &err);
                if (r != 0)
                        return r;
                opts.incoming_addr = addr;
                opts.incoming_port = port;
                opts.incoming_uuid = spec_uuid;
                opts.spec_path = spec_path;
        } else
                opts.spec_path = argv[optind];
        /* The supervisor lives as long as its guest: a large buffer (a state file, a VARS
         * export) gets a mapping of its own and goes back to the kernel when freed, instead
         * of raising glibc's mmap and trim thresholds (up to 32 and 64 MiB) and staying in
         * the heap; the heap's top is given back above 128 KiB, as glibc's default. */
        (void) mallopt(M_MMAP_THRESHOLD, 128 * 1024);
        (void) mallopt(M_TRIM_THRESHOLD, 128 * 1024);
        return guest_run(&opts);
}
