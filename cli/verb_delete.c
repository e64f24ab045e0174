#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "common/util.h"
#include "supervisor/guestdirs.h"
#include "common/log.h"
#include "cli/verbs.h"
#include "secrets/vtpmsecret.h"

static void help(void) {
        printf("Usage: vmsup delete UUID [--token-fd N]\n"
               "\n"
               "Delete a stopped guest: its vTPM secret in Barbican (as the owner: the token is\n"
               "read from file descriptor N), then its sealed TPM state, UEFI variables, live\n"
               "dir and logs, and last the ids its swtpm and QEMU ran as. Like Nova's\n"
               "delete_vtpm_secret it is idempotent: a secret or a guest already gone is\n"
               "not an error. If Barbican cannot delete the secret, nothing is removed, so\n"
               "the command can be run again.\n"
               "\n"
               "Exit status: 0 deleted or nothing to delete; 69 Barbican unreachable;\n"
               "75 the guest is running (stop it first); 77 the owner's credentials are\n"
               "missing or refused.\n");
}

int verb_delete(struct vmsup_ctx *ctx, int argc, char **argv) {
        static const struct option longopts[] = { { "token-fd", required_argument, NULL, 't' },
                                                   { "help", no_argument, NULL, 'h' }, {} };
        _cleanup_error_ vmsup_error *err = NULL;
        _cleanup_close_ int lock = -1;
        struct guest_spec spec = { 0 };
        struct guest_dirs d = { 0 };
        const char *uuid;
        bool deleted = false, have_spec, elsewhere = false;
        _cleanup_close_ int token_fd = -1; /* ours; vtpm_secret_delete() borrows it */
        struct vtpm_secret_opts sopts;
        int c, r;

        while ((c = getopt_long(argc, argv, "t:h", longopts, NULL)) != -1) {
                if (c == 'h') {
                        help();
                        return 0;
                }
                if (c == 't') {
                        if (verb_parse_token_fd("delete", optarg, &token_fd) != 0)
                                return VMSUP_ERR_USAGE;
                        continue;
                }
                return verb_usage_error("delete", "bad option");
        }
        if (argc - optind != 1)
                return verb_usage_error("delete", "expects a guest UUID");
        uuid = argv[optind];
        if (!uuid_is_valid(uuid))
                return verb_usage_error("delete", "'%s' is not a guest UUID", uuid);
        if (vmsup_ctx_config(ctx, &err) < 0 || guest_dirs_init(&d, &ctx->cfg, uuid, &err) < 0)
                return log_error_kind(err);
        log_set_guest(uuid);

        if (guest_dirs_lock_stopped(&d, true, &lock, &err) < 0)
                goto fail;
        have_spec = lock >= 0 && guest_spec_load(d.spec_copy, &spec, &err) == 0;
        err = vmsup_error_free(err); /* without a spec copy there is no owner user id: fine */
        /* A guest handed over to another host by a live migration, or half received from
         * one, lives on there: its Barbican secret is its own, only our copy goes. */
        if (lock >= 0)
                elsewhere = access(d.migrated_out, F_OK) == 0 || access(d.incoming, F_OK) == 0;
        if (lock >= 0 && !elsewhere) {
                host_config_vtpm_secret_opts(&ctx->cfg, &sopts);
                r = vtpm_secret_delete(&sopts, d.state, have_spec ? spec.owner_user_id : NULL, token_fd, &deleted, &err);
                if (r < 0)
                        goto fail;
        }
        /* host mode: the host's own copy of the secret goes too (Nova's _cleanup with
         * cleanup_instance_disks) */
        if (guest_dirs_remove_all(&d, ctx->cfg.paths.secrets_dir, uuid, &err) < 0)
                goto fail;
        log_info("guest deleted%s", elsewhere   ? " from this host (it lives on another host: its Barbican secret is kept)"
                                    : deleted ? ", and its vTPM secret in Barbican"
                                    : lock < 0  ? " (nothing was left)"
                                                : "");
        guest_spec_clear(&spec);
        guest_dirs_clear(&d);
        return 0;
fail:
        guest_spec_clear(&spec);
        guest_dirs_clear(&d);
        return log_error_kind(err);
}
