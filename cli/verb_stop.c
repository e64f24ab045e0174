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

static void help(void) {
        printf("Usage: vmsup stop UUID [--timeout SECONDS | --force]\n"
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
               "Exit status: 0 stopped; 1 swtpm did not shut down and was killed (the message\n"
               "says so); 69 the guest is not running under vmsup; 75 the supervisor did not\n"
               "answer in time (the guest may still be stopping).\n", STOP_MARGIN_S);
}

int verb_stop(struct vmsup_ctx *ctx, int argc, char **argv) {
        static const struct option longopts[] = { { "timeout", required_argument, NULL, 't' },
                                                   { "force", no_argument, NULL, 'f' },
                                                   { "help", no_argument, NULL, 'h' }, {} };
        _cleanup_error_ vmsup_error *err = NULL;
        _cleanup_json_ json_object *req = json_object_new_object(), *ret = NULL;
        long timeout = -1, wait_s;
        bool force = false;
        char *end;
        int c;

        while ((c = getopt_long(argc, argv, "t:fh", longopts, NULL)) != -1) {
                switch (c) {
                case 't':
                        timeout = strtol(optarg, &end, 10);
                        if (*end || timeout < 0 || timeout > 86400)
                                return verb_usage_error("stop", "--timeout takes seconds (0 to 86400)");
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
        if (argc - optind != 1)
                return verb_usage_error("stop", "expects a guest UUID");
        if (force && timeout >= 0)
                return verb_usage_error("stop", "--force and --timeout exclude each other");
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
