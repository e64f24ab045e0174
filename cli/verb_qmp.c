#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "qmp/client.h"
#include "nova/guestspec.h"
#include "common/log.h"
#include "cli/verbs.h"

#define DEFAULT_TIMEOUT_S 30

static void help(void) {
        printf("Usage: vmsup qmp UUID [--timeout SECONDS] [--pretty] COMMAND [ARGS_JSON]\n"
               "       vmsup qmp --socket PATH [--timeout SECONDS] [--pretty] COMMAND [ARGS_JSON]\n"
               "\n"
               "Run one QMP command on a supervised guest's QEMU (through its supervisor) or\n"
               "on a QEMU monitor socket, and print its \"return\" value as\n"
               "JSON, like 'virsh qemu-monitor-command'. ARGS_JSON is a JSON object with the\n"
               "command's arguments, for example '{\"command-line\": \"info status\"}'.\n"
               "\n"
               "  -s, --socket PATH      a QMP unix socket instead of a supervised guest\n"
               "  -t, --timeout SECONDS  wait at most this long for the greeting and for the\n"
               "                         reply, each (default %d)\n"
               "  -p, --pretty           indent the JSON\n"
               "\n"
               "Exit status: 0; 1 QEMU refused the command (its error class and description go\n"
               "to stderr); 64 bad command line or ARGS_JSON; 65 the peer is not QMP or sent a\n"
               "malformed message; 69 the socket is unreachable, QEMU hung up or did not answer\n"
               "in time.\n",
               DEFAULT_TIMEOUT_S);
}

static int parse_timeout(const char *s, int *ret_ms) {
        char *end = NULL;
        double v;

        errno = 0;
        v = strtod(s, &end);
        if (errno != 0 || end == s || *end != '\0' || !(v > 0 && v <= 86400))
                return -EINVAL;
        *ret_ms = (int) (v * 1000 + 0.999);
        return 0;
}

static json_object *parse_args(const char *text) {
        json_tokener *tok = json_tokener_new();
        json_object *o;

        if (!tok)
                return NULL;
        json_tokener_set_flags(tok, JSON_TOKENER_STRICT);
        o = json_tokener_parse_ex(tok, text, (int) strlen(text));
        if (json_tokener_get_error(tok) != json_tokener_success || !json_object_is_type(o, json_type_object)) {
                json_object_put(o);
                o = NULL;
        }
        json_tokener_free(tok);
        return o;
}

int verb_qmp(struct vmsup_ctx *ctx, int argc, char **argv) {
        static const struct option longopts[] = {
                { "socket", required_argument, NULL, 's' }, { "timeout", required_argument, NULL, 't' },
                { "pretty", no_argument, NULL, 'p' },       { "help", no_argument, NULL, 'h' },
                {},
        };
        _cleanup_qmp_client_ struct qmp_client *c = NULL;
        _cleanup_error_ vmsup_error *err = NULL;
        json_object *args = NULL, *ret = NULL;
        const char *socket_path = NULL, *uuid = NULL, *command;
        int timeout_ms = DEFAULT_TIMEOUT_S * 1000, flags = JSON_C_TO_STRING_SPACED, ch, r;

        while ((ch = getopt_long(argc, argv, "s:t:ph", longopts, NULL)) != -1) {
                switch (ch) {
                case 's':
                        socket_path = optarg;
                        break;
                case 't':
                        if (parse_timeout(optarg, &timeout_ms) < 0)
                                return verb_usage_error("qmp", "bad --timeout '%s': seconds, more than 0", optarg);
                        break;
                case 'p':
                        flags = JSON_C_TO_STRING_PRETTY;
                        break;
                case 'h':
                        help();
                        return 0;
                default:
                        return verb_usage_error("qmp", "bad option");
                }
        }
        /* Without --socket: 'vmsup qmp UUID COMMAND', through the guest's supervisor, which
         * owns QEMU's only monitor. */
        if (!socket_path) {
                if (optind >= argc)
                        return verb_usage_error("qmp", "missing the guest UUID (or --socket PATH)");
                uuid = argv[optind++];
                if (!uuid_is_valid(uuid))
                        return verb_usage_error("qmp", "'%s' is not a guest UUID (give one, or --socket PATH)", uuid);
        }
        if (optind >= argc)
                return verb_usage_error("qmp", "missing the QMP COMMAND");
        if (argc - optind > 2)
                return verb_usage_error("qmp", "too many arguments: COMMAND [ARGS_JSON]");
        command = argv[optind];
        if (!*command)
                return verb_usage_error("qmp", "empty QMP COMMAND");
        if (optind + 1 < argc) {
                args = parse_args(argv[optind + 1]);
                if (!args)
                        return verb_usage_error("qmp", "ARGS_JSON is not a JSON object: %s", argv[optind + 1]);
        }

        if (uuid) {
                _cleanup_json_ json_object *req = json_object_new_object();

                json_object_object_add(req, "cmd", json_object_new_string("qmp"));
                json_object_object_add(req, "command", json_object_new_string(command));
                if (args)
                        json_object_object_add(req, "arguments", args);
                r = vmsup_ctx_control(ctx, uuid, req, timeout_ms + 5000, &ret, &err);
                if (r < 0)
                        return log_error_kind(err);
                printf("%s\n", json_object_to_json_string_ext(ret, flags | JSON_C_TO_STRING_NOSLASHESCAPE));
                json_object_put(ret);
                return fflush(stdout) != 0 ? VMSUP_ERR_IO : 0;
        }
        r = qmp_client_connect(socket_path, &c, &err);
        if (r >= 0)
                r = qmp_client_handshake(c, timeout_ms, &err);
        if (r >= 0)
                r = qmp_client_execute(c, command, args, -1, timeout_ms, &ret, &err);
        json_object_put(args);
        if (r < 0)
                return log_error_kind(err);
        printf("%s\n", json_object_to_json_string_ext(ret, flags | JSON_C_TO_STRING_NOSLASHESCAPE));
        json_object_put(ret);
        if (fflush(stdout) != 0)
                return VMSUP_ERR_IO;
        return 0;
}
