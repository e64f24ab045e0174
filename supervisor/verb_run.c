#include "config.h"

#include <fcntl.h>
#include <getopt.h>
#include <stdlib.h>
#include <stdio.h>

#include "supervisor/confine.h"
#include "common/util.h"
#include "supervisor/guest.h"
#include "supervisor/guestspec.h"
#include "supervisor/log.h"
#include "supervisor/verbs.h"

static void help(void) {
        printf("Usage: vmsup run [--token-fd N] [--new-tpm] [--new-vars] GUEST.json\n"
               "       vmsup run --incoming [ADDR:]PORT UUID\n"
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
               "SIGTERM or SIGINT stops the guest gracefully (ACPI power button, then quit\n"
               "after [supervisor] stop_timeout); a second one stops it at once. 'vmsup\n"
               "status|stop|reboot|qmp UUID' talk to the running supervisor.\n"
               "\n"
               "--incoming makes this supervisor the destination of a live migration of guest\n"
               "UUID (host secret-security mode only): it listens on ADDR:PORT (any address\n"
               "when ADDR is left out; PORT 0 or empty: [migration] port) for the source's\n"
               "supervisor ('vmsup migrate UUID --to THIS-HOST'), authenticated by TLS with\n"
               "the host certificates in [migration] tls_dir, receives the guest's spec and\n"
               "vTPM secret, starts swtpm and QEMU to receive it, and goes on supervising the\n"
               "guest once it runs here. If the migration fails nothing of the guest is left\n"
               "on this host (exit status as below).\n"
               "\n"
               "Exit status: 0 the guest powered off or was stopped; 1 QEMU or swtpm died;\n"
               "65 bad guest spec or sealed state; 69 vTPM, Barbican or a program unavailable;\n"
               "75 the guest is already supervised; 77 the owner's credentials are missing or\n"
               "refused; 78 bad host configuration; see vmsup(8).\n");
}

int verb_run(struct vmsup_ctx *ctx, int argc, char **argv) {
        static const struct option longopts[] = { { "token-fd", required_argument, NULL, 't' },
                                                   { "incoming", required_argument, NULL, 'i' },
                                                   { "new-tpm", no_argument, NULL, 'T' },
                                                   { "new-vars", no_argument, NULL, 'N' },
                                                   { "help", no_argument, NULL, 'h' }, {} };
        _cleanup_error_ vmsup_error *err = NULL;
        _cleanup_free_ char *addr = NULL, *port = NULL;
        struct guest_run_opts opts = { .token_fd = -1 };
        const char *incoming = NULL;
        int c, r;

        while ((c = getopt_long(argc, argv, "t:h", longopts, NULL)) != -1) {
                if (c == 'i') {
                        incoming = optarg;
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
                                return VMSUP_EX_USAGE;
                        continue;
                }
                return verb_usage_error("run", "bad option");
        }
        if (argc - optind != 1)
                return verb_usage_error("run", incoming ? "--incoming expects the UUID of the guest to receive"
                                                        : "expects one guest spec file");
        if (incoming && (opts.new_tpm || opts.new_vars))
                return verb_usage_error("run", "--incoming takes no --new-tpm or --new-vars: the guest's TPM state and "
                                               "VARS come from the source");
        if (incoming && opts.token_fd >= 0)
                return verb_usage_error("run", "--incoming takes no --token-fd: the source sends the vTPM secret");
        if (incoming && !uuid_is_valid(argv[optind]))
                return verb_usage_error("run", "'%s' is not a guest UUID", argv[optind]);
        /* before anything could hold a secret */
        if (confine_no_dumps(&err) < 0 || vmsup_ctx_config(ctx, &err) < 0)
                return log_error_exit(err);
        opts.cfg = &ctx->cfg;
        if (incoming) {
                r = verb_parse_host_port("run", incoming, ctx->cfg.migration.port, &addr, &port);
                if (r != 0)
                        return r;
                opts.incoming_addr = addr;
                opts.incoming_port = port;
                opts.incoming_uuid = argv[optind];
        } else
                opts.spec_path = argv[optind];
        return guest_run(&opts);
}
