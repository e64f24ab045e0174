#include "config.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/util.h"
#include "supervisor/specmatch.h"

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
                return vmsup_fail(err, VMSUP_ERR_DATA, -r, "guest spec '%s': key '%s': resolve '%s'", source, key,
                                  path);
        for (size_t i = 0; i < n; i++) {
                if (!is_under(resolved, dirs[i].resolved))
                        continue;
                if (streq(resolved, path))
                        return vmsup_fail(err, VMSUP_ERR_DATA, 0,
                                          "guest spec '%s': key '%s': '%s' is inside vmsup's %s dir '%s': a guest "
                                          "never gets vmsup's own files",
                                          source, key, path, dirs[i].what, dirs[i].path);
                return vmsup_fail(err, VMSUP_ERR_DATA, 0,
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
                        r = vmsup_fail(err, VMSUP_ERR_CONFIG, -r, "resolve [paths] %s_dir '%s'", dirs[i].what,
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
