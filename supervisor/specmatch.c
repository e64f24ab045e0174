#include "config.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/util.h"
#include "supervisor/specmatch.h"
#include "nova/tpmrules.h"

/* ---- vmsup's own dirs ------------------------------------------------------------------ */

/* path with its symbolic links resolved as the kernel would follow them when QEMU opens
 * it; a part that does not exist (yet), or a link to nothing, is taken as written, '.'
 * and '..' in it as the kernel would. depth bounds the links followed (ELOOP). */
static int resolve_at_depth(const char *path, int depth, char **ret) {
        _cleanup_free_ char *copy = NULL, *parent = NULL, *joined = NULL;
        const char *parent_path, *base;
        char *r = realpath(path, NULL), *slash, target[PATH_MAX];
        ssize_t n;
        int k;

        if (r) {
                *ret = r;
                return 0;
        }
        /* EACCES: an unprivileged `vmsup validate` cannot look into vmsup's 0700 dirs;
         * the rest of the path is taken as written */
        if (errno != ENOENT && errno != ENOTDIR && errno != EACCES)
                return -errno;
        if (depth > 40)
                return -ELOOP;
        copy = strdup(path);
        if (!copy)
                return -ENOMEM;
        for (size_t len = strlen(copy); len > 1 && copy[len - 1] == '/'; len--)
                copy[len - 1] = '\0';
        slash = strrchr(copy, '/');
        if (!slash) {
                parent_path = ".";
                base = copy;
        } else if (slash == copy) {
                parent_path = "/";
                base = copy + 1;
        } else {
                *slash = '\0';
                parent_path = copy;
                base = slash + 1;
        }
        if (streq(parent_path, path)) /* "/" or "." themselves failed */
                return -ENOENT;
        k = resolve_at_depth(parent_path, depth, &parent);
        if (k < 0)
                return k;
        if (!*base || streq(base, ".")) {
                *ret = TAKE_PTR(parent);
                return 0;
        }
        if (streq(base, "..")) {
                slash = strrchr(parent, '/');
                slash[slash == parent ? 1 : 0] = '\0';
                *ret = TAKE_PTR(parent);
                return 0;
        }
        if (asprintf(&joined, "%s%s%s", parent, streq(parent, "/") ? "" : "/", base) < 0)
                return -ENOMEM;
        /* a link to something that does not exist yet: where it points is where a file
         * made through it would be */
        n = readlink(joined, target, sizeof(target) - 1);
        if (n < 0) {
                *ret = TAKE_PTR(joined);
                return 0;
        }
        target[n] = '\0';
        if (target[0] == '/')
                return resolve_at_depth(target, depth + 1, ret);
        free(joined);
        joined = NULL;
        if (asprintf(&joined, "%s/%s", parent, target) < 0)
                return -ENOMEM;
        return resolve_at_depth(joined, depth + 1, ret);
}

static int resolve(const char *path, char **ret) {
        return resolve_at_depth(path, 0, ret);
}

static bool is_under(const char *path, const char *dir) {
        size_t n = strlen(dir);

        if (streq(dir, "/"))
                return true;
        return strncmp(path, dir, n) == 0 && (path[n] == '/' || path[n] == '\0');
}

struct own_dir {
        const char *what;
        const char *path;  /* as configured */
        char *resolved;
};

static int check_path(struct own_dir *dirs, size_t n, const char *source, const char *key, const char *path,
                      vmsup_error **err) {
        _cleanup_free_ char *resolved = NULL;
        int r = resolve(path, &resolved);

        if (r < 0)
                return vmsup_fail(err, VMSUP_EX_DATAERR, -r, "guest spec '%s': key '%s': resolve '%s'", source, key,
                                  path);
        for (size_t i = 0; i < n; i++) {
                if (!is_under(resolved, dirs[i].resolved))
                        continue;
                if (streq(resolved, path))
                        return vmsup_fail(err, VMSUP_EX_DATAERR, 0,
                                          "guest spec '%s': key '%s': '%s' is inside vmsup's %s dir '%s': a guest "
                                          "never gets vmsup's own files",
                                          source, key, path, dirs[i].what, dirs[i].path);
                return vmsup_fail(err, VMSUP_EX_DATAERR, 0,
                                  "guest spec '%s': key '%s': '%s' resolves to '%s', inside vmsup's %s dir '%s': a "
                                  "guest never gets vmsup's own files",
                                  source, key, path, resolved, dirs[i].what, dirs[i].path);
        }
        return 0;
}

int spec_match_host_dirs(const struct guest_spec *spec, const struct host_config *cfg, const char *source,
                         vmsup_error **err) {
        /* the secrets dir first: it is often inside the state dir, and the more precise name */
        struct own_dir dirs[] = { { "secrets", cfg->paths.secrets_dir, NULL },
                                  { "state", cfg->paths.state_dir, NULL },
                                  { "run", cfg->paths.run_dir, NULL },
                                  { "log", cfg->paths.log_dir, NULL } };
        char key[256];
        int r = 0;

        for (size_t i = 0; i < ARRAY_SIZE(dirs) && r >= 0; i++) {
                r = resolve(dirs[i].path, &dirs[i].resolved);
                if (r < 0)
                        r = vmsup_fail(err, VMSUP_EX_CONFIG, -r, "resolve [paths] %s_dir '%s'", dirs[i].what,
                                       dirs[i].path);
        }
        if (r >= 0 && spec->kernel)
                r = check_path(dirs, ARRAY_SIZE(dirs), source, "firmware.kernel", spec->kernel, err);
        if (r >= 0 && spec->initrd)
                r = check_path(dirs, ARRAY_SIZE(dirs), source, "firmware.initrd", spec->initrd, err);
        for (size_t i = 0; i < spec->n_disks && r >= 0; i++) {
                const struct guest_disk *d = &spec->disks[i];
                int n = snprintf(key, sizeof(key), "disks[%zu]", i);

                snprintf(key + n, sizeof(key) - (size_t) n, ".path");
                r = check_path(dirs, ARRAY_SIZE(dirs), source, key, d->path, err);
                for (size_t j = 0; j < d->n_backing && r >= 0; j++) {
                        n += snprintf(key + n, sizeof(key) - (size_t) n, ".backing");
                        snprintf(key + n, sizeof(key) - (size_t) n, ".path");
                        r = check_path(dirs, ARRAY_SIZE(dirs), source, key, d->backing[j].path, err);
                }
        }
        for (size_t i = 0; i < ARRAY_SIZE(dirs); i++)
                free(dirs[i].resolved);
        return r < 0 ? r : 0;
}

/* ---- the source's spec against ours --------------------------------------------------- */

static int differ(vmsup_error **err, const char *key, const char *theirs, const char *ours, const char *why) {
        return vmsup_fail(err, VMSUP_EX_DATAERR, 0, "key '%s': %s%s%s from the source, %s%s%s here%s", key,
                          theirs ? "'" : "", theirs ? theirs : "none", theirs ? "'" : "", ours ? "'" : "",
                          ours ? ours : "none", ours ? "'" : "", why ? why : "");
}

static int same_string(vmsup_error **err, const char *key, const char *theirs, const char *ours) {
        return streq_ptr(theirs, ours) ? 0 : differ(err, key, theirs, ours, NULL);
}

static int same_uint(vmsup_error **err, const char *key, unsigned theirs, unsigned ours) {
        char t[16], o[16];

        if (theirs == ours)
                return 0;
        snprintf(t, sizeof(t), "%u", theirs);
        snprintf(o, sizeof(o), "%u", ours);
        return vmsup_fail(err, VMSUP_EX_DATAERR, 0, "key '%s': %s from the source, %s here", key, t, o);
}

/* The keys of Nova's vTPM and firmware rules (tpm_rules_resolve, parse_firmware), as
 * written: a source whose spec resolves to the same TPM by other keys is still refused. */
static int same_tpm_keys(const struct guest_spec *ours, const struct guest_spec *theirs, vmsup_error **err) {
        static const char *const flavor_keys[] = { "hw:tpm_version", "hw:tpm_model", "hw:tpm_secret_security", NULL };
        static const char *const image_keys[] = { "hw_tpm_version", "hw_tpm_model", "hw_firmware_type", NULL };
        struct vtpm_config tpm = { 0 };
        vmsup_error *ignored = NULL;
        const char *no_vtpm = NULL;
        char key[96];

        /* a spec without a vTPM is never sent by a vmsup source: say so, not just "differs" */
        if (tpm_rules_resolve(theirs, &tpm, &ignored) < 0)
                ignored = vmsup_error_free(ignored);
        else if (!tpm.present)
                no_vtpm = ": the source's spec gives the guest no vTPM, and only guests with a vTPM migrate";
        for (const char *const *k = flavor_keys; *k; k++) {
                const char *t = guest_spec_extra_spec(theirs, *k), *o = guest_spec_extra_spec(ours, *k);

                snprintf(key, sizeof(key), "flavor.extra_specs.%s", *k);
                if (!streq_ptr(t, o))
                        return differ(err, key, t, o, no_vtpm);
        }
        for (const char *const *k = image_keys; *k; k++) {
                const char *t = guest_spec_image_property(theirs, *k), *o = guest_spec_image_property(ours, *k);

                snprintf(key, sizeof(key), "image.properties.%s", *k);
                if (!streq_ptr(t, o))
                        return differ(err, key, t, o, no_vtpm);
        }
        if (no_vtpm) /* ours has none either: the caller refuses that before any source comes */
                return vmsup_fail(err, VMSUP_EX_DATAERR, 0, "the guest has no vTPM; only guests with a vTPM migrate");
        return 0;
}

static int same_disk(const struct guest_disk *t, const struct guest_disk *o, size_t i, vmsup_error **err) {
        char key[256];
        int n = snprintf(key, sizeof(key), "disks[%zu]", i), r;

        snprintf(key + n, sizeof(key) - (size_t) n, ".path");
        if ((r = same_string(err, key, t->path, o->path)) < 0)
                return r;
        snprintf(key + n, sizeof(key) - (size_t) n, ".format");
        if ((r = same_string(err, key, t->format, o->format)) < 0)
                return r;
        snprintf(key + n, sizeof(key) - (size_t) n, ".readonly");
        if ((r = same_string(err, key, t->readonly ? "true" : "false", o->readonly ? "true" : "false")) < 0)
                return r;
        for (size_t j = 0; j < t->n_backing || j < o->n_backing; j++) {
                n += snprintf(key + n, sizeof(key) - (size_t) n, ".backing");
                if (j >= t->n_backing || j >= o->n_backing)
                        return same_string(err, key, j < t->n_backing ? t->backing[j].path : NULL,
                                           j < o->n_backing ? o->backing[j].path : NULL);
                snprintf(key + n, sizeof(key) - (size_t) n, ".path");
                if ((r = same_string(err, key, t->backing[j].path, o->backing[j].path)) < 0)
                        return r;
                snprintf(key + n, sizeof(key) - (size_t) n, ".format");
                if ((r = same_string(err, key, t->backing[j].format, o->backing[j].format)) < 0)
                        return r;
        }
        return 0;
}

int spec_match_incoming(const struct guest_spec *ours, const struct guest_spec *theirs, vmsup_error **err) {
        int r;

        if ((r = same_string(err, "uuid", theirs->uuid, ours->uuid)) < 0 || (r = same_tpm_keys(ours, theirs, err)) < 0 ||
            (r = same_string(err, "firmware.type", theirs->firmware_type, ours->firmware_type)) < 0 ||
            (r = same_uint(err, "vcpus", theirs->vcpus, ours->vcpus)) < 0 ||
            (r = same_uint(err, "memory_mb", theirs->memory_mb, ours->memory_mb)) < 0 ||
            (r = same_string(err, "firmware.kernel", theirs->kernel, ours->kernel)) < 0 ||
            (r = same_string(err, "firmware.initrd", theirs->initrd, ours->initrd)) < 0 ||
            (r = same_string(err, "firmware.cmdline", theirs->cmdline, ours->cmdline)) < 0)
                return r;
        if (theirs->n_disks != ours->n_disks) {
                char t[16], o[16];

                snprintf(t, sizeof(t), "%zu", theirs->n_disks);
                snprintf(o, sizeof(o), "%zu", ours->n_disks);
                return vmsup_fail(err, VMSUP_EX_DATAERR, 0, "key 'disks': %s disks from the source, %s here", t, o);
        }
        for (size_t i = 0; i < ours->n_disks; i++)
                if ((r = same_disk(&theirs->disks[i], &ours->disks[i], i, err)) < 0)
                        return r;
        /* the Barbican secret the guest's TPM state is sealed under, once the orchestrator
         * knows it: another id here would make `vmsup delete` remove another guest's */
        if (ours->vtpm_secret_uuid && theirs->vtpm_secret_uuid &&
            (r = same_string(err, "vtpm_secret_uuid", theirs->vtpm_secret_uuid, ours->vtpm_secret_uuid)) < 0)
                return r;
        return 0;
}
