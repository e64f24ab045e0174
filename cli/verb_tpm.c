#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/fileio.h"
#include "common/log.h"
#include "common/secmem.h"
#include "common/util.h"
#include "cli/verbs.h"
#include "crypto/kdf.h"
#include "nova/guestspec.h"
#include "nova/tpmrules.h"
#include "secrets/vtpmsecret.h"
#include "supervisor/guestdirs.h"
#include "supervisor/tpmexport.h"

#define IMPORT_FILE_MAX (16u * 1024 * 1024)

static void help(void) {
        printf("Usage: vmsup tpm export UUID FILE [--keep-paused] [--token-fd N]\n"
               "       vmsup tpm import UUID FILE [--allow-rollback] [--token-fd N]\n"
               "\n"
               "export: write the guest's TPM state to FILE: one file, sealed under the guest's\n"
               "key and bound to its UUID, with the sealed state files, their manifest and\n"
               "generation, the guest spec copy and the OVMF VARS. A running guest is paused,\n"
               "its TPM state sealed and copied, and resumed; --keep-paused leaves it paused\n"
               "(snapshot the disks in the same pause, then 'vmsup resume UUID').\n"
               "import: put an export back into a stopped guest. An export older than the\n"
               "newest state the guest has had (its rollback anchor) rolls the TPM back and\n"
               "is refused without --allow-rollback.\n"
               "A stopped guest's key comes as at its start: host mode from the local store,\n"
               "user mode from Barbican with the owner's token read from fd N.\n"
               "\n"
               "Exit status: 0 done; 65 the file is not this guest's export, is altered, or\n"
               "is older than the anchor; 66 no such guest or state; 69 Barbican unreachable;\n"
               "75 the guest is running (import) or busy; 77 credentials missing or refused.\n");
}

/* FILE as an absolute path (the supervisor writes it, from its own working dir). */
static char *absolute(const char *file) {
        char cwd[PATH_MAX], *p = NULL;

        if (file[0] == '/')
                return strdup(file);
        if (!getcwd(cwd, sizeof(cwd)) || asprintf(&p, "%s/%s", cwd, file) < 0)
                return NULL;
        return p;
}

/* The key of a stopped guest (the lock is held), its rollback anchor, and the secret's
 * id, as a start gets them. */
static int stopped_guest_key(struct vmsup_ctx *ctx, const struct guest_dirs *d, struct guest_spec *spec,
                             struct vtpm_config *tpm, int token_fd, char **ret_token, size_t *ret_token_len,
                             uint8_t **ret_key, struct vtpm_secret *ret_secret, vmsup_error **err) {
        struct vtpm_secret_opts sopts;
        struct vtpm_secret_request req = { .opts = &sopts, .state_dir = d->state, .token_fd = token_fd,
                                           .cancel_fd = -1 };
        int r;

        r = guest_spec_load(d->spec_copy, spec, err);
        if (r < 0)
                return vmsup_error_prefix(err, "the guest's spec copy");
        if ((r = tpm_rules_resolve(spec, tpm, err)) < 0)
                return r;
        if (!tpm->present)
                return vmsup_fail(err, VMSUP_ERR_DATA, 0, "guest %s has no vTPM", spec->uuid);
        if (token_fd >= 0 && (r = vtpm_read_token(token_fd, ret_token, ret_token_len, err)) < 0)
                return r;
        host_config_vtpm_secret_opts(&ctx->cfg, &sopts);
        req.spec = spec;
        req.tpm = tpm;
        req.token = *ret_token;
        req.token_len = *ret_token_len;
        r = vtpm_secret_obtain(&req, ret_secret, err);
        if (r < 0)
                return r;
        r = kdf_derive_key(ret_secret->passphrase, strlen(ret_secret->passphrase), spec->uuid, KDF_USE_STATE_SEAL,
                           ret_key, err);
        return r < 0 ? vmsup_error_prefix(err, "vTPM secret") : 0;
}

static int tpm_export(struct vmsup_ctx *ctx, const char *uuid, const char *file, bool keep_paused, int token_fd) {
        _cleanup_error_ vmsup_error *err = NULL;
        _cleanup_json_ json_object *req = json_object_new_object(), *ret = NULL;
        _cleanup_free_ char *path = absolute(file);
        _cleanup_secmem_ char *token = NULL;
        _cleanup_secmem_ uint8_t *key = NULL;
        _cleanup_close_ int lock = -1;
        struct guest_spec spec = { 0 };
        struct vtpm_config tpm = { 0 };
        struct vtpm_secret secret = { 0 };
        struct guest_dirs d = { 0 };
        json_object *v;
        uint64_t gen = 0;
        size_t token_len = 0;
        int r;

        if (!path) {
                vmsup_fail(&err, VMSUP_ERR_SYSTEM, errno, "export: '%s'", file);
                return log_error_kind(err);
        }
        /* a running guest: its supervisor pauses it and writes the export */
        json_object_object_add(req, "cmd", json_object_new_string("tpm-export"));
        json_object_object_add(req, "path", json_object_new_string(path));
        json_object_object_add(req, "keep_paused", json_object_new_boolean(keep_paused));
        r = vmsup_ctx_control(ctx, uuid, req, -1, &ret, &err);
        if (r >= 0) {
                gen = json_object_object_get_ex(ret, "generation", &v) ? (uint64_t) json_object_get_int64(v) : 0;
                printf("exported generation %" PRIu64 " of the TPM state of guest %s to %s%s\n", gen, uuid, path,
                       json_object_object_get_ex(ret, "paused", &v) && json_object_get_boolean(v)
                               ? "; the guest is paused: 'vmsup resume' when done"
                               : "");
                return 0;
        }
        if (err->kind != VMSUP_ERR_NO_SUPERVISOR)
                return log_error_kind(err);
        err = vmsup_error_free(err);

        /* a stopped guest: as a start would open its state */
        if ((r = guest_dirs_init(&d, &ctx->cfg, uuid, &err)) < 0 || (r = guest_dirs_lock_stopped(&d, false, &lock, &err)) < 0 ||
            (r = tpm_import_finish(&d, &err)) < 0 ||
            (r = stopped_guest_key(ctx, &d, &spec, &tpm, token_fd, &token, &token_len, &key, &secret, &err)) < 0 ||
            (r = tpm_export_write(&d, uuid, key, path, &gen, &err)) < 0)
                goto out;
        if (keep_paused)
                log_info("--keep-paused: the guest is not running; nothing to pause");
        printf("exported generation %" PRIu64 " of the TPM state of guest %s to %s\n", gen, uuid, path);
out:
        vtpm_secret_clear(&secret);
        guest_spec_clear(&spec);
        guest_dirs_clear(&d);
        return r < 0 ? log_error_kind(err) : 0;
}

static int tpm_import_verb(struct vmsup_ctx *ctx, const char *uuid, const char *file, bool allow_rollback,
                           int token_fd) {
        _cleanup_error_ vmsup_error *err = NULL;
        _cleanup_secmem_ char *token = NULL;
        _cleanup_secmem_ uint8_t *key = NULL;
        _cleanup_free_ void *data = NULL;
        _cleanup_close_ int lock = -1;
        struct guest_spec spec = { 0 };
        struct vtpm_config tpm = { 0 };
        struct vtpm_secret secret = { 0 };
        struct guest_dirs d = { 0 };
        struct tpm_import_result res = { 0 };
        size_t len = 0, token_len = 0;
        int r;

        r = file_read_at(AT_FDCWD, ".", file, IMPORT_FILE_MAX, false, &data, &len, &err);
        if (r < 0)
                return log_error_kind(err);
        if ((r = guest_dirs_init(&d, &ctx->cfg, uuid, &err)) < 0 || (r = guest_dirs_lock_stopped(&d, false, &lock, &err)) < 0 ||
            (r = stopped_guest_key(ctx, &d, &spec, &tpm, token_fd, &token, &token_len, &key, &secret, &err)) < 0)
                goto out;
        r = tpm_import(&d, uuid, key, tpm.version, data, len, secret.anchored ? secret.anchor : 0, allow_rollback, &res,
                       &err);
        if (r < 0) {
                vmsup_error_prefix(&err, "import '%s'", file);
                goto out;
        }
        if (res.rollback)
                log_warning("--allow-rollback: the TPM state of guest %s went back from generation %" PRIu64
                            " to the export's generation %" PRIu64 " (sealed again as generation %" PRIu64 ")",
                            uuid, res.current, res.export_generation, res.generation);
        /* the state is in place and durable: the anchor follows */
        {
                struct vtpm_secret_opts sopts;
                struct vtpm_anchor_request areq = { .opts = &sopts, .spec = &spec, .tpm = &tpm, .secret_id = secret.id,
                                                    .token = token, .token_len = token_len };
                vmsup_error *aerr = NULL;

                host_config_vtpm_secret_opts(&ctx->cfg, &sopts);
                if (vtpm_anchor_store(&areq, res.generation, &aerr) < 0) {
                        log_warning("the TPM state's rollback anchor stays behind the imported state (generation %" PRIu64
                                    "); the next start records it: %s", res.generation, aerr->msg);
                        vmsup_error_free(aerr);
                }
        }
        printf("imported generation %" PRIu64 " of the TPM state of guest %s from %s (now generation %" PRIu64 ")\n",
               res.export_generation, uuid, file, res.generation);
out:
        vtpm_secret_clear(&secret);
        guest_spec_clear(&spec);
        guest_dirs_clear(&d);
        return r < 0 ? log_error_kind(err) : 0;
}

int verb_tpm(struct vmsup_ctx *ctx, int argc, char **argv) {
        static const struct option longopts[] = { { "keep-paused", no_argument, NULL, 'k' },
                                                   { "allow-rollback", no_argument, NULL, 'a' },
                                                   { "token-fd", required_argument, NULL, 't' },
                                                   { "help", no_argument, NULL, 'h' }, {} };
        _cleanup_close_ int token_fd = -1;
        _cleanup_error_ vmsup_error *err = NULL;
        bool keep_paused = false, allow_rollback = false, export;
        const char *sub, *uuid, *file;
        int c;

        while ((c = getopt_long(argc, argv, "kat:h", longopts, NULL)) != -1) {
                if (c == 'h') {
                        help();
                        return 0;
                } else if (c == 'k')
                        keep_paused = true;
                else if (c == 'a')
                        allow_rollback = true;
                else if (c == 't') {
                        if (verb_parse_token_fd("tpm", optarg, &token_fd) != 0)
                                return VMSUP_ERR_USAGE;
                } else
                        return verb_usage_error("tpm", "bad option");
        }
        if (argc - optind != 3)
                return verb_usage_error("tpm", "expects export|import, a guest UUID and a FILE");
        sub = argv[optind];
        uuid = argv[optind + 1];
        file = argv[optind + 2];
        if (!streq(sub, "export") && !streq(sub, "import"))
                return verb_usage_error("tpm", "'%s': expects export or import", sub);
        export = streq(sub, "export");
        if (!uuid_is_valid(uuid))
                return verb_usage_error("tpm", "'%s' is not a guest UUID", uuid);
        if (export && allow_rollback)
                return verb_usage_error("tpm", "--allow-rollback goes with import");
        if (!export && keep_paused)
                return verb_usage_error("tpm", "--keep-paused goes with export");
        if (vmsup_ctx_config(ctx, &err) < 0)
                return log_error_kind(err);
        log_set_guest(uuid);
        return export ? tpm_export(ctx, uuid, file, keep_paused, token_fd)
                      : tpm_import_verb(ctx, uuid, file, allow_rollback, token_fd);
}
