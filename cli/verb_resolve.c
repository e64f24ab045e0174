#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "common/util.h"
#include "supervisor/guestdirs.h"
#include "common/log.h"
#include "cli/verbs.h"

static void help(void) {
        printf("Usage: vmsup resolve UUID --keep\n"
               "\n"
               "Settle a live migration whose outcome is unknown (vmsup(8), MIGRATION): this\n"
               "host's copy of the guest is the one. On a source (marker migrated-out) whose\n"
               "supervisor still runs, the paused guest runs again; without a supervisor,\n"
               "'vmsup run' may start it again. On a destination (an incoming marker that says\n"
               "'committed'), the guest becomes this host's: a running one runs on, a stopped\n"
               "one may be started. Run it on ONE host only, after making sure the other\n"
               "host's copy is discarded ('vmsup stop --force' and 'vmsup delete' there).\n"
               "\n"
               "Exit status: 0 resolved; 64 usage; 65 the guest has no undecided migration\n"
               "here (nothing to resolve), or its incoming migration was never committed\n"
               "(remove it with 'vmsup delete'); 66 no such guest on this host; 74 the marker\n"
               "cannot be removed.\n");
}

/* The marker goes durably: a crash right after must not bring it back. */
static int remove_marker(const struct guest_dirs *d, const char *path, vmsup_error **err) {
        _cleanup_close_ int dfd = -1;

        if (unlink(path) < 0)
                return vmsup_fail(err, VMSUP_ERR_IO, errno, "remove '%s'", path);
        dfd = open(d->state, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd < 0 || fsync(dfd) < 0)
                return vmsup_fail(err, VMSUP_ERR_IO, errno, "sync '%s'", d->state);
        return 0;
}

int verb_resolve(struct vmsup_ctx *ctx, int argc, char **argv) {
        static const struct option longopts[] = { { "keep", no_argument, NULL, 'k' },
                                                   { "help", no_argument, NULL, 'h' }, {} };
        _cleanup_error_ vmsup_error *err = NULL;
        _cleanup_close_ int lock = -1;
        struct guest_dirs d = { 0 };
        const char *uuid;
        bool keep = false;
        int c, r;

        while ((c = getopt_long(argc, argv, "kh", longopts, NULL)) != -1) {
                if (c == 'h') {
                        help();
                        return 0;
                }
                if (c == 'k') {
                        keep = true;
                        continue;
                }
                return verb_usage_error("resolve", "bad option");
        }
        if (argc - optind != 1)
                return verb_usage_error("resolve", "expects a guest UUID");
        uuid = argv[optind];
        if (!uuid_is_valid(uuid))
                return verb_usage_error("resolve", "'%s' is not a guest UUID", uuid);
        if (!keep)
                return verb_usage_error("resolve", "says which copy survives: --keep keeps this host's (to discard "
                                        "this host's copy instead: 'vmsup stop --force' and 'vmsup delete')");
        if (vmsup_ctx_config(ctx, &err) < 0 || guest_dirs_init(&d, &ctx->cfg, uuid, &err) < 0)
                return log_error_kind(err);
        log_set_guest(uuid);

        r = guest_dirs_lock_stopped(&d, false, &lock, &err);
        if (r < 0 && err->kind == VMSUP_ERR_BUSY) {
                /* a supervisor runs the guest: it removes the marker (and resumes a paused source) */
                _cleanup_json_ json_object *req = json_object_new_object(), *ret = NULL;

                err = vmsup_error_free(err);
                json_object_object_add(req, "cmd", json_object_new_string("resolve"));
                if (vmsup_ctx_control(ctx, uuid, req, 30000, &ret, &err) < 0)
                        goto fail;
                printf("%s\n", ret && json_object_is_type(ret, json_type_string) ? json_object_get_string(ret) : "kept");
                guest_dirs_clear(&d);
                return 0;
        }
        if (r < 0)
                goto fail;
        if (access(d.migrated_out, F_OK) == 0) {
                if (remove_marker(&d, d.migrated_out, &err) < 0)
                        goto fail;
                log_info("an operator resolved the hand-over: this host's copy is the one (removed %s)", d.migrated_out);
                printf("kept: 'vmsup run' may start the guest here again\n");
        } else if (guest_dirs_incoming_committed(&d)) {
                if (remove_marker(&d, d.incoming, &err) < 0)
                        goto fail;
                log_info("an operator resolved the hand-over: this host's copy is the one (removed %s)", d.incoming);
                printf("kept: 'vmsup run' may start the guest here again\n");
        } else if (access(d.incoming, F_OK) == 0) {
                vmsup_fail(&err, VMSUP_ERR_DATA, 0,
                           "the incoming live migration of guest %s was never committed (%s): this copy is not the "
                           "guest's; remove it with 'vmsup delete %s'", uuid, d.incoming, uuid);
                goto fail;
        } else {
                vmsup_fail(&err, VMSUP_ERR_DATA, 0,
                           "guest %s has no undecided live migration on this host (no %s, no committed %s marker in "
                           "%s): nothing to resolve", uuid, GUEST_MIGRATED_OUT, GUEST_INCOMING, d.state);
                goto fail;
        }
        guest_dirs_clear(&d);
        return 0;
fail:
        guest_dirs_clear(&d);
        return log_error_kind(err);
}
