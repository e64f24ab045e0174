#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdbool.h>
#include <string.h>

#include "common/util.h"
#include "supervisor/control.h"
#include "nova/guestspec.h"
#include "common/log.h"
#include "cli/exitstatus.h"
#include "cli/verbs.h"

static const struct verb verbs[] = {
        { "validate", verb_validate, "apply Nova's vTPM rules to a guest spec and print the result" },
        { "traits", verb_traits, "print this host's COMPUTE_SECURITY_TPM_* traits" },
        { "qmp", verb_qmp, "run one QMP command on a supervised guest or a monitor socket" },
        { "run", verb_run, "boot a guest with its vTPM and supervise it until it ends" },
        { "status", verb_status, "show a supervised guest's state" },
        { "list", verb_list, "list the guests this host knows, with their states" },
        { "events", verb_events, "print the lifecycle events of one guest or of every running guest" },
        { "stop", verb_stop, "stop a supervised guest (graceful, or --force)" },
        { "console", verb_console, "attach to a guest's serial console, or print its log (--log)" },
        { "reboot", verb_reboot, "reboot a guest (--hard restarts QEMU, keeps the TPM state)" },
        { "nic", verb_nic, "hot-plug a NIC on a tap into a running guest, or remove one" },
        { "seccomp", verb_seccomp, "print the seccomp filter vmsup run loads (--print)" },
        { "secret", verb_secret, "list the local vTPM secret store (host mode): guests and secret ids" },
        { "migrate", verb_migrate, "live-migrate a running guest to another vmsup host (host mode)" },
        { "resolve", verb_resolve, "settle a live migration of unknown outcome: --keep this host's copy" },
        { "resize", verb_resize, "move a stopped guest to another flavor with Nova's vTPM rules" },
        { "delete", verb_delete, "delete a stopped guest: its vTPM secret, sealed state and files" },
        { "tpm", verb_tpm, "export a guest's TPM state to one sealed file, or import one (--allow-rollback)" },
        { "resume", verb_resume, "let a paused guest run again (after tpm export --keep-paused)" },
        { "rebuild", verb_refused, "refused for vTPM guests, as Nova does" },
        { "rescue", verb_refused, "refused for vTPM guests, as Nova does" },
        { "shelve", verb_refused, "refused for vTPM guests, as Nova does" },
        { "evacuate", verb_refused, "refused for vTPM guests, as Nova does" },
};

static void usage(FILE *f) {
        fprintf(f,
                "Usage: vmsup [--config FILE] VERB [OPTIONS] [ARGS]\n"
                "\n"
                "Per-guest supervisor for QEMU guests with an swtpm vTPM.\n"
                "\n"
                "Verbs:\n");
        for (size_t i = 0; i < ARRAY_SIZE(verbs); i++)
                fprintf(f, "  %-10s %s\n", verbs[i].name, verbs[i].summary);
        fprintf(f,
                "\n"
                "Options:\n"
                "  -c, --config FILE  host configuration (default " VMSUP_DEFAULT_CONFIG ")\n"
                "  -v, --verbose      log more (debug lines)\n"
                "  -h, --help         show this help\n"
                "  -V, --version      show the version\n"
                "\n"
                "'vmsup VERB --help' describes a verb. See vmsup(8) and vmsup.conf(5).\n");
}

int verb_usage_error(const char *verb, const char *fmt, ...) {
        va_list ap;

        fprintf(stderr, "vmsup%s%s: ", verb ? " " : "", verb ? verb : "");
        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
        fprintf(stderr, "\nTry 'vmsup%s%s --help'.\n", verb ? " " : "", verb ? verb : "");
        return VMSUP_ERR_USAGE;
}

int verb_parse_token_fd(const char *verb, const char *arg, int *ret_fd) {
        char *end;
        long fd;

        errno = 0;
        fd = strtol(arg, &end, 10);
        if (errno || end == arg || *end || fd < 0 || fd > 1023 || fcntl((int) fd, F_GETFD) < 0)
                return verb_usage_error(verb, "--token-fd takes an open file descriptor, not '%s'", arg);
        *ret_fd = (int) fd;
        return 0;
}

static bool valid_port(const char *s) {
        char *end;
        long n;

        errno = 0;
        n = strtol(s, &end, 10);
        return s[0] && !errno && !*end && n >= 1 && n <= 65535;
}

int verb_parse_host_port(const char *verb, const char *arg, const char *default_port, char **ret_host, char **ret_port) {
        _cleanup_free_ char *host = NULL, *port = NULL;
        const char *colon;

        if (arg[0] == '[') {
                const char *close = strchr(arg, ']');

                if (!close || (close[1] && close[1] != ':'))
                        return verb_usage_error(verb, "'%s': an IPv6 address is written [ADDR] or [ADDR]:PORT", arg);
                host = strndup(arg + 1, (size_t) (close - arg - 1));
                port = strdup(close[1] ? close + 2 : "");
        } else if ((colon = strchr(arg, ':')) && !strchr(colon + 1, ':')) {
                host = strndup(arg, (size_t) (colon - arg));
                port = strdup(colon + 1);
        } else if (!colon && valid_port(arg)) {
                host = strdup("");
                port = strdup(arg);
        } else {
                host = strdup(arg);
                port = strdup("");
        }
        if (!host || !port)
                return VMSUP_ERR_SYSTEM;
        if (!port[0]) {
                free(port);
                port = strdup(default_port);
                if (!port)
                        return VMSUP_ERR_SYSTEM;
        }
        if (!valid_port(port))
                return verb_usage_error(verb, "'%s' is not a TCP port (1 to 65535)", port);
        if (strlen(host) > 253 || strpbrk(host, " /\\,@"))
                return verb_usage_error(verb, "'%s' is not a host name or address", host);
        *ret_host = TAKE_PTR(host);
        *ret_port = TAKE_PTR(port);
        return 0;
}

int vmsup_ctx_config(struct vmsup_ctx *ctx, vmsup_error **err) {
        int r;

        if (ctx->cfg_loaded)
                return 0;
        r = host_config_load(ctx->config_path, ctx->config_path == NULL, &ctx->cfg, err);
        if (r < 0)
                return r;
        ctx->cfg_loaded = true;
        return 0;
}

int vmsup_ctx_control(struct vmsup_ctx *ctx, const char *uuid, json_object *req, int timeout_ms, json_object **ret,
                      vmsup_error **err) {
        return vmsup_ctx_control_progress(ctx, uuid, req, timeout_ms, NULL, NULL, ret, err);
}

int vmsup_ctx_control_progress(struct vmsup_ctx *ctx, const char *uuid, json_object *req, int timeout_ms,
                               control_progress_fn fn, void *userdata, json_object **ret, vmsup_error **err) {
        _cleanup_free_ char *path = NULL;
        int r;

        if (!uuid_is_valid(uuid))
                return vmsup_fail(err, VMSUP_ERR_USAGE, 0, "'%s' is not a guest UUID", uuid);
        r = vmsup_ctx_config(ctx, err);
        if (r < 0)
                return r;
        if (asprintf(&path, "%s/%s/control.sock", ctx->cfg.paths.run_dir, uuid) < 0)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "control path");
        r = control_request_progress(path, req, timeout_ms, fn, userdata, ret, err);
        if (r < 0 && (*err)->kind == VMSUP_ERR_NO_SUPERVISOR)
                return vmsup_error_prefix(err, "guest %s is not running under vmsup", uuid);
        return r;
}

int main(int argc, char **argv) {
        static const struct option longopts[] = {
                { "config", required_argument, NULL, 'c' },
                { "verbose", no_argument, NULL, 'v' },
                { "help", no_argument, NULL, 'h' },
                { "version", no_argument, NULL, 'V' },
                {},
        };
        struct vmsup_ctx ctx = { 0 };
        int c, r;

        /* '+': stop at the verb, whose own options come after it */
        while ((c = getopt_long(argc, argv, "+c:vhV", longopts, NULL)) != -1) {
                switch (c) {
                case 'c':
                        ctx.config_path = optarg;
                        break;
                case 'v':
                        log_set_level(LOG_LEVEL_DEBUG);
                        break;
                case 'h':
                        usage(stdout);
                        return 0;
                case 'V':
                        printf("vmsup %s\n", PACKAGE_VERSION);
                        return 0;
                default:
                        fprintf(stderr, "Try 'vmsup --help'.\n");
                        return cli_exit_status(VMSUP_ERR_USAGE);
                }
        }
        if (optind >= argc) {
                usage(stderr);
                return cli_exit_status(VMSUP_ERR_USAGE);
        }
        for (size_t i = 0; i < ARRAY_SIZE(verbs); i++) {
                if (streq(argv[optind], verbs[i].name)) {
                        int vargc = argc - optind;
                        char **vargv = argv + optind;

                        optind = 0; /* let the verb run getopt_long afresh */
                        r = verbs[i].run(&ctx, vargc, vargv);
                        if (ctx.cfg_loaded)
                                host_config_clear(&ctx.cfg);
                        return cli_exit_status(r);
                }
        }
        return cli_exit_status(verb_usage_error(NULL, "unknown verb '%s'", argv[optind]));
}
