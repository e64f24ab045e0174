#include "config.h"

#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "common/util.h"
#include "common/log.h"
#include "cli/verbs.h"

static void help(void) {
        printf("Usage: vmsup migrate UUID --to HOST[:PORT] [--quiet] [--json]\n"
               "\n"
               "Live-migrate a running guest to another vmsup host, as Nova does for guests in\n"
               "the host secret-security mode: the guest's supervisor connects to the\n"
               "destination's supervisor ('vmsup run --incoming PORT --spec GUEST.json' there)\n"
               "over TLS 1.3, both sides authenticated by their host certificates ([migration]\n"
               "tls_dir), and hands it the guest spec, which must match the destination's own,\n"
               "and the vTPM secret; QEMU's memory stream, with the TPM state inside it, goes\n"
               "over QEMU's own TLS ([migration] qemu_tls_dir, under a CA of its own). Only\n"
               "once the guest runs on the destination with its TPM state sealed there does\n"
               "this host stop its copy and delete the guest's secret, sealed state and files\n"
               "(the Barbican secret is the guest's and stays). Any failure before that leaves\n"
               "the guest running here.\n"
               "\n"
               "Progress (percent, transferred, expected downtime) is printed on stderr unless\n"
               "--quiet; the result on stdout (with --json also a line of figures: total_ms from\n"
               "the request until the guest runs on the destination, prepare_ms, transfer_ms,\n"
               "switchover_ms, cleanup_ms, and QEMU's qemu_total_ms and downtime_ms).\n"
               "\n"
               "user and deployment guests are refused with Nova's words: \"Operation\n"
               "'live-migration' not supported for vTPM-enabled instance (<uuid>).\"\n"
               "\n"
               "Exit status: 0 migrated; 65 bad answer from the destination; 69 refused or\n"
               "the destination unavailable; 75 timed out, or the guest is not running; see\n"
               "vmsup(8), MIGRATION, for the rare case the outcome is unknown.\n");
}

struct progress_ctx {
        bool quiet;
        long last_percent;
};

static void on_progress(void *userdata, json_object *p) {
        struct progress_ctx *ctx = userdata;
        json_object *v;
        const char *phase = json_object_object_get_ex(p, "phase", &v) ? json_object_get_string(v) : "";
        int64_t percent, transferred, total, downtime;

        if (ctx->quiet)
                return;
        if (!streq(phase, "transfer")) {
                fprintf(stderr, "vmsup migrate: %s\n",
                        json_object_object_get_ex(p, "message", &v) ? json_object_get_string(v) : phase);
                return;
        }
        if (json_object_object_get_ex(p, "total", &v) && json_object_get_int64(v) == 0) {
                fprintf(stderr, "vmsup migrate: QEMU sets up the stream\n");
                return;
        }
        percent = json_object_object_get_ex(p, "percent", &v) ? json_object_get_int64(v) : 0;
        transferred = json_object_object_get_ex(p, "transferred", &v) ? json_object_get_int64(v) : 0;
        total = json_object_object_get_ex(p, "total", &v) ? json_object_get_int64(v) : 0;
        downtime = json_object_object_get_ex(p, "expected_downtime_ms", &v) ? json_object_get_int64(v) : 0;
        fprintf(stderr, "vmsup migrate: %3" PRId64 "%%  %.1f of %.1f MiB transferred, expected downtime %" PRId64 " ms\n",
                percent, (double) transferred / 1048576.0, (double) total / 1048576.0, downtime);
}

int verb_migrate(struct vmsup_ctx *ctx, int argc, char **argv) {
        static const struct option longopts[] = { { "to", required_argument, NULL, 't' },
                                                   { "quiet", no_argument, NULL, 'q' },
                                                   { "json", no_argument, NULL, 'j' },
                                                   { "help", no_argument, NULL, 'h' }, {} };
        _cleanup_error_ vmsup_error *err = NULL;
        _cleanup_free_ char *host = NULL, *port = NULL;
        _cleanup_json_ json_object *req = NULL, *ret = NULL;
        struct progress_ctx pc = { 0 };
        bool json = false;
        const char *to = NULL, *uuid;
        json_object *v;
        int c, r;

        while ((c = getopt_long(argc, argv, "t:qjh", longopts, NULL)) != -1) {
                if (c == 'h') {
                        help();
                        return 0;
                }
                if (c == 't')
                        to = optarg;
                else if (c == 'q')
                        pc.quiet = true;
                else if (c == 'j')
                        json = true;
                else
                        return verb_usage_error("migrate", "bad option");
        }
        if (argc - optind != 1)
                return verb_usage_error("migrate", "expects a guest UUID");
        if (!to)
                return verb_usage_error("migrate", "--to HOST[:PORT] is needed");
        uuid = argv[optind];
        if (vmsup_ctx_config(ctx, &err) < 0)
                return log_error_kind(err);
        r = verb_parse_host_port("migrate", to, ctx->cfg.migration.port, &host, &port);
        if (r != 0)
                return r;
        if (!host[0])
                return verb_usage_error("migrate", "--to needs a host name or address");
        log_set_guest(uuid);
        req = json_object_new_object();
        json_object_object_add(req, "cmd", json_object_new_string("migrate"));
        json_object_object_add(req, "host", json_object_new_string(host));
        json_object_object_add(req, "port", json_object_new_string(port));
        /* the supervisor bounds the migration ([migration] timeout) */
        r = vmsup_ctx_control_progress(ctx, uuid, req, -1, on_progress, &pc, &ret, &err);
        if (r < 0)
                return log_error_kind(err);
        printf("migrated to %s:%s", host, port);
        if (json_object_object_get_ex(ret, "total_ms", &v))
                printf(" in %" PRId64 " ms", json_object_get_int64(v));
        if (json_object_object_get_ex(ret, "downtime_ms", &v))
                printf(" (downtime %" PRId64 " ms)", json_object_get_int64(v));
        printf("\n");
        if (json)
                printf("%s\n", json_object_to_json_string_ext(ret, JSON_C_TO_STRING_PLAIN));
        return 0;
}
