#include "config.h"

#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "common/log.h"
#include "cli/verbs.h"

/* How long the supervisor may take beyond the guest's grace time: QEMU's quit (or
 * SIGTERM) grace of 10 s, SIGKILL, then swtpm's CMD_SHUTDOWN, SIGTERM and SIGKILL bounds
 * (25 s) and the last seal, with room for a loaded host. */
#define STOP_MARGIN_S 120
/* stop --all: guests stopped at once by default (each takes a core or so while it shuts down) */
#define STOP_ALL_PARALLEL 4

static void help(void) {
        printf("Usage: vmsup stop UUID [--timeout SECONDS | --force]\n"
               "       vmsup stop --all [--timeout SECONDS | --force] [--parallel N]\n"
               "\n"
               "Stop a supervised guest and wait until it is down. Graceful by default: the\n"
               "guest gets an ACPI power-button press and SECONDS (default [supervisor]\n"
               "stop_timeout) to power off, then QEMU is told to quit. --force quits QEMU at\n"
               "once (as 'virsh destroy'). swtpm is always shut down through its control\n"
               "channel, so the TPM state is kept.\n"
               "\n"
               "Prints how the stop went: 'stopped', or what had to be done (QEMU killed, QMP\n"
               "lost). Waits at most the grace time plus %d s.\n"
               "\n"
               "--all stops every guest that runs under vmsup on this host (a host's shutdown;\n"
               "the guests 'vmsup list' shows, and a supervisor still starting is sent SIGTERM),\n"
               "N at a time (--parallel, default %d), each as above, and returns when all are\n"
               "down (their supervisors have exited, the TPM state sealed). It prints a line per\n"
               "guest and a summary: how many stopped gracefully, how many had to be forced\n"
               "(QEMU told to quit or killed), and which failed and why.\n"
               "\n"
               "Exit status: 0 stopped; 1 swtpm did not shut down and was killed (the message\n"
               "says so), or with --all: a guest failed to stop; 69 the guest is not running\n"
               "under vmsup; 75 the supervisor did not answer in time (the guest may still be\n"
               "stopping).\n", STOP_MARGIN_S, STOP_ALL_PARALLEL);
}

int verb_stop(struct vmsup_ctx *ctx, int argc, char **argv) {
        static const struct option longopts[] = { { "timeout", required_argument, NULL, 't' },
                                                   { "force", no_argument, NULL, 'f' },
                                                   { "all", no_argument, NULL, 'a' },
                                                   { "parallel", required_argument, NULL, 'p' },
                                                   { "help", no_argument, NULL, 'h' }, {} };
        _cleanup_error_ vmsup_error *err = NULL;
        _cleanup_json_ json_object *req = json_object_new_object(), *ret = NULL;
        long timeout = -1, wait_s, parallel = -1;
        bool force = false, all = false;
        char *end;
        int c;

        while ((c = getopt_long(argc, argv, "t:fh", longopts, NULL)) != -1) {
                switch (c) {
                case 'a':
                        all = true;
                        break;
                case 'p':
                        parallel = strtol(optarg, &end, 10);
                        if (!optarg[0] || *end || parallel < 1 || parallel > 1024)
                                return verb_usage_error("stop", "--parallel takes a number of guests (1 to 1024), not "
                                                                "'%s'", optarg);
                        break;
                case 't':
                        timeout = strtol(optarg, &end, 10);
                        if (!optarg[0] || *end || timeout < 0 || timeout > 86400)
                                return verb_usage_error("stop", "--timeout takes seconds (0 to 86400), not '%s'", optarg);
                        break;
                case 'f':
                        force = true;
                        break;
                case 'h':
                        help();
                        return 0;
                default:
                        return verb_usage_error("stop", "bad option");
                }
        }
        if (force && timeout >= 0)
                return verb_usage_error("stop", "--force and --timeout exclude each other");
        if (all && argc != optind)
                return verb_usage_error("stop", "--all takes no guest UUID");
        if (!all && parallel >= 0)
                return verb_usage_error("stop", "--parallel goes with --all");
        if (all)
                return verb_stop_all(ctx, timeout, force, parallel > 0 ? (unsigned) parallel : STOP_ALL_PARALLEL,
                                     STOP_MARGIN_S);
        if (argc - optind != 1)
                return verb_usage_error("stop", "expects a guest UUID (or --all)");
        json_object_object_add(req, "cmd", json_object_new_string("stop"));
        json_object_object_add(req, "force", json_object_new_boolean(force));
        if (timeout >= 0)
                json_object_object_add(req, "timeout", json_object_new_int((int) timeout));
        if (timeout < 0 && !force) {
                if (vmsup_ctx_config(ctx, &err) < 0)
                        return log_error_kind(err);
                timeout = ctx->cfg.supervisor.stop_timeout;
        }
        wait_s = (force ? 0 : timeout) + STOP_MARGIN_S;
        if (vmsup_ctx_control(ctx, argv[optind], req, (int) wait_s * 1000, &ret, &err) < 0) {
                if (err->kind == VMSUP_ERR_TIMEOUT)
                        vmsup_error_prefix(&err, "guest %s did not stop within %ld s (it may still be stopping: see "
                                           "its supervisor's log)", argv[optind], wait_s);
                return log_error_kind(err);
        }
        printf("%s\n", ret && json_object_is_type(ret, json_type_string) ? json_object_get_string(ret) : "stopped");
        return 0;
}
