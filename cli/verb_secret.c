#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/util.h"
#include "secrets/localstore.h"
#include "common/log.h"
#include "cli/verbs.h"

static void help(void) {
        printf("Usage: vmsup secret list [--json]\n"
               "\n"
               "List the guests whose vTPM secret is in the local secret store of the host\n"
               "secret-security mode ([paths] secrets_dir) with their Barbican secret ids,\n"
               "one \"GUEST_UUID  SECRET_ID\" line each. The passphrases are never shown.\n"
               "\n"
               "Exit status: 0; 65 a store file is not a vTPM secret; 77 the store or a file\n"
               "in it has an insecure owner, mode or type.\n");
}

static int secret_list(struct vmsup_ctx *ctx, bool json) {
        _cleanup_error_ vmsup_error *err = NULL;
        _cleanup_free_ struct localstore_entry *v = NULL;
        struct localstore *s = NULL;
        size_t n = 0;
        int r;

        if (vmsup_ctx_config(ctx, &err) < 0)
                return log_error_kind(err);
        r = localstore_open(ctx->cfg.paths.secrets_dir, false, &s, &err);
        if (r == -ENOENT)
                n = 0; /* no host-mode guest yet: an empty store */
        else if (r < 0)
                return log_error_kind(err);
        else {
                r = localstore_list(s, &v, &n, &err);
                localstore_free(s);
                if (r < 0)
                        return log_error_kind(err);
        }
        if (json) {
                _cleanup_json_ json_object *a = json_object_new_array();

                for (size_t i = 0; i < n; i++) {
                        json_object *o = json_object_new_object();

                        json_object_object_add(o, "uuid", json_object_new_string(v[i].uuid));
                        json_object_object_add(o, "secret_id", json_object_new_string(v[i].secret_id));
                        json_object_array_add(a, o);
                }
                printf("%s\n", json_object_to_json_string_ext(a, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_NOSLASHESCAPE));
                return 0;
        }
        for (size_t i = 0; i < n; i++)
                printf("%s  %s\n", v[i].uuid, v[i].secret_id);
        return 0;
}

int verb_secret(struct vmsup_ctx *ctx, int argc, char **argv) {
        static const struct option longopts[] = { { "json", no_argument, NULL, 'j' },
                                                   { "help", no_argument, NULL, 'h' }, {} };
        bool json = false;
        int c;

        while ((c = getopt_long(argc, argv, "jh", longopts, NULL)) != -1) {
                if (c == 'j')
                        json = true;
                else if (c == 'h') {
                        help();
                        return 0;
                } else
                        return verb_usage_error("secret", "bad option");
        }
        if (argc - optind != 1)
                return verb_usage_error("secret", "expects a subcommand: list");
        if (!streq(argv[optind], "list"))
                return verb_usage_error("secret", "unknown subcommand '%s'", argv[optind]);
        return secret_list(ctx, json);
}
