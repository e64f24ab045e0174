#include "config.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/util.h"
#include "supervisor/guestdirs.h"
#include "common/log.h"
#include "cli/verbs.h"

static void help(void) {
        printf("Usage: vmsup status UUID [--json]\n"
               "\n"
               "Show the state of a supervised guest: supervisor state, pids, uptime, TPM\n"
               "version and model, QEMU's run state ('not answering' when QEMU's monitor\n"
               "does not answer within 5 s; 'unknown (QMP lost)' and why, when the supervisor\n"
               "lost its QMP connection to a QEMU that still runs), and a live migration's\n"
               "progress while one runs (on the destination of an incoming one: state\n"
               "'incoming', its phase and the source), and the marker of a live migration whose outcome is\n"
               "unknown (migrated out, or incoming and unconfirmed: see vmsup resolve), and\n"
               "the path of its VNC socket when the guest has a graphical console.\n"
               "\n"
               "Without a supervisor, it still prints those markers of the guest's copy here.\n"
               "\n"
               "Exit status: 0; 69 the guest is not running under vmsup.\n");
}

static const char *str(json_object *o, const char *key) {
        json_object *v;

        return json_object_object_get_ex(o, key, &v) && v ? json_object_get_string(v) : "-";
}

/* No supervisor runs the guest: the migration markers of its copy here, if any, for
 * the recovery procedure (vmsup(8), MIGRATION). */
static void print_markers(struct vmsup_ctx *ctx, const char *uuid) {
        struct guest_dirs d = { 0 };
        vmsup_error *err = NULL;
        char *out, *in;

        if (!uuid_is_valid(uuid) || vmsup_ctx_config(ctx, &err) < 0 || guest_dirs_init(&d, &ctx->cfg, uuid, &err) < 0) {
                vmsup_error_free(err);
                return;
        }
        out = guest_dirs_stamp_read(d.migrated_out, &err);
        err = vmsup_error_free(err);
        in = guest_dirs_stamp_read(d.incoming, &err);
        err = vmsup_error_free(err);
        if (out)
                printf("migrated out: %s (not running here; outcome unknown: see vmsup(8), MIGRATION)\n", out);
        if (in)
                printf("incoming:     %s (not running here%s)\n", in,
                       guest_dirs_incoming_committed(&d) ? "; unconfirmed: see vmsup(8), MIGRATION"
                                                         : "; never committed: 'vmsup delete' removes it");
        free(out);
        free(in);
        guest_dirs_clear(&d);
}

int verb_status(struct vmsup_ctx *ctx, int argc, char **argv) {
        static const struct option longopts[] = { { "json", no_argument, NULL, 'j' },
                                                   { "help", no_argument, NULL, 'h' }, {} };
        _cleanup_error_ vmsup_error *err = NULL;
        _cleanup_json_ json_object *req = json_object_new_object(), *ret = NULL;
        json_object *tpm, *mig, *lost;
        bool json = false;
        int c;

        while ((c = getopt_long(argc, argv, "jh", longopts, NULL)) != -1) {
                if (c == 'j')
                        json = true;
                else if (c == 'h') {
                        help();
                        return 0;
                } else
                        return verb_usage_error("status", "bad option");
        }
        if (argc - optind != 1)
                return verb_usage_error("status", "expects a guest UUID");
        json_object_object_add(req, "cmd", json_object_new_string("status"));
        if (vmsup_ctx_control(ctx, argv[optind], req, 10000, &ret, &err) < 0) {
                if (err->kind == VMSUP_ERR_NO_SUPERVISOR)
                        print_markers(ctx, argv[optind]);
                return log_error_kind(err);
        }
        if (json) {
                printf("%s\n", json_object_to_json_string_ext(ret, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_NOSLASHESCAPE));
                return 0;
        }
        printf("guest:        %s (%s)\n", str(ret, "uuid"), str(ret, "name"));
        printf("state:        %s\n", str(ret, "state"));
        printf("qemu status:  %s\n", str(ret, "qemu_status"));
        if (json_object_object_get_ex(ret, "qmp_lost", &lost) && lost)
                printf("qmp:          lost: %s\n", json_object_get_string(lost));
        if (json_object_object_get_ex(ret, "migrated_out", &lost) && lost)
                printf("migrated out: %s (outcome unknown: the guest may run there; see vmsup(8), MIGRATION)\n",
                       json_object_get_string(lost));
        if (json_object_object_get_ex(ret, "incoming", &lost) && lost)
                printf("incoming:     %s (the source did not confirm the hand-over: it may run there too; see "
                       "vmsup(8), MIGRATION)\n", json_object_get_string(lost));
        printf("uptime:       %s s\n", str(ret, "uptime_s"));
        if (json_object_object_get_ex(ret, "console_attached", &lost) && json_object_get_boolean(lost))
                printf("console:      a client is attached (vmsup console)\n");
        if (json_object_object_get_ex(ret, "migration", &mig) && mig && json_object_object_get_ex(mig, "phase", &lost)) {
                /* the destination of an incoming migration */
                if (json_object_object_get_ex(mig, "from", &lost) && lost)
                        printf("migration:    incoming from %s, %s\n", str(mig, "from"), str(mig, "phase"));
                else
                        printf("migration:    incoming, %s\n", str(mig, "phase"));
        } else if (mig)
                printf("migration:    to %s, %s, %s%% of the memory sent\n", str(mig, "to"), str(mig, "status"),
                       str(mig, "percent"));
        printf("pids:         vmsup %s, qemu %s, swtpm %s\n", str(ret, "pid"), str(ret, "qemu_pid"), str(ret, "swtpm_pid"));
        if (json_object_object_get_ex(ret, "tpm", &tpm) && tpm)
                printf("tpm:          %s %s, secret security %s\n", str(tpm, "version"), str(tpm, "model"),
                       str(tpm, "secret_security"));
        else
                printf("tpm:          none\n");
        if (json_object_object_get_ex(ret, "nics", &lost) && json_object_is_type(lost, json_type_array))
                for (size_t i = 0; i < json_object_array_length(lost); i++) {
                        json_object *nic = json_object_array_get_idx(lost, i);

                        printf("nic:          %s on tap %s (%s, slot %s, %s queue(s))\n", str(nic, "mac"),
                               str(nic, "ifname"), str(nic, "model"), str(nic, "slot"), str(nic, "queues"));
                }
        if (json_object_object_get_ex(ret, "vnc_socket", &lost) && lost)
                printf("vnc socket:   %s\n", json_object_get_string(lost));
        return 0;
}
