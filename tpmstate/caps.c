#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <json-c/json.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "common/fileio.h"
#include "common/proc.h"
#include "common/util.h"
#include "tpmstate/caps.h"

static int caps_from_json(json_object *root, const char *source, struct swtpm_caps *ret, vmsup_error **err) {
        json_object *features, *version;
        struct swtpm_caps caps = { 0 };
        size_t n;
        int r = 0;

        if (!root || !json_object_is_type(root, json_type_object))
                return vmsup_fail(err, VMSUP_ERR_UNAVAILABLE, 0, "%s --print-capabilities: output is not a JSON object",
                                  source);
        if (!json_object_object_get_ex(root, "features", &features) ||
            !json_object_is_type(features, json_type_array)) {
                r = vmsup_fail(err, VMSUP_ERR_UNAVAILABLE, 0, "%s --print-capabilities: no \"features\" array", source);
                goto out;
        }
        n = json_object_array_length(features);
        caps.features = calloc(n + 1, sizeof(char *));
        if (!caps.features) {
                r = vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "%s", source);
                goto out;
        }
        for (size_t i = 0; i < n; i++) {
                json_object *f = json_object_array_get_idx(features, i);

                if (!json_object_is_type(f, json_type_string)) {
                        r = vmsup_fail(err, VMSUP_ERR_UNAVAILABLE, 0,
                                       "%s --print-capabilities: feature %zu is not a string", source, i);
                        goto out;
                }
                caps.features[i] = strdup(json_object_get_string(f));
                if (!caps.features[i]) {
                        r = vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "%s", source);
                        goto out;
                }
        }
        if (json_object_object_get_ex(root, "version", &version) && json_object_is_type(version, json_type_string))
                caps.version = strdup(json_object_get_string(version));
        *ret = caps;
        memset(&caps, 0, sizeof(caps));
out:
        swtpm_caps_clear(&caps);
        return r;
}

int swtpm_caps_parse(const char *text, const char *source, struct swtpm_caps *ret, vmsup_error **err) {
        _cleanup_json_ json_object *root = json_tokener_parse(text);

        return caps_from_json(root, source, ret, err);
}

static int caps_none(struct swtpm_caps *ret, const char *path, vmsup_error **err) {
        *ret = (struct swtpm_caps) { .features = calloc(1, sizeof(char *)) };
        return ret->features ? 0 : vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "probe %s", path);
}

/* Run path's --print-capabilities: 1 and its output in *ret_out when it exited 0, 0 when
 * it did not (an old binary). */
static int caps_run(const char *path, bool is_setup, char **ret_out, vmsup_error **err) {
        char *argv_swtpm[] = { (char *) path, (char *) "socket", (char *) "--print-capabilities", NULL };
        char *argv_setup[] = { (char *) path, (char *) "--print-capabilities", NULL };
        struct proc_result res = { 0 };
        int r;

        r = proc_run_capture(is_setup ? argv_setup : argv_swtpm, NULL, 10000, 64 * 1024, &res, err);
        if (r < 0)
                return vmsup_error_prefix(err, "probe %s", path);
        if (!WIFEXITED(res.status) || WEXITSTATUS(res.status) != 0) {
                proc_result_clear(&res);
                return 0;
        }
        *ret_out = TAKE_PTR(res.out);
        proc_result_clear(&res);
        return 1;
}

int swtpm_caps_probe(const char *program, bool is_setup, struct swtpm_caps *ret, vmsup_error **err) {
        _cleanup_free_ char *path = proc_find_executable(program, err), *out = NULL;
        int r;

        if (!path)
                return -ENOENT;
        r = caps_run(path, is_setup, &out, err);
        if (r < 0)
                return r;
        if (r == 0)
                return caps_none(ret, path, err);
        return swtpm_caps_parse(out, path, ret, err);
}

#define CAPS_CACHE_NAME "swtpm-caps.cache"
#define CAPS_CACHE_FORMAT 1
#define CAPS_CACHE_MAX (64 * 1024)

static json_object *stat_to_json(const char *path, const struct stat *st) {
        json_object *o = json_object_new_object();

        if (!o)
                return NULL;
        if (json_object_object_add(o, "path", json_object_new_string(path)) < 0 ||
            json_object_object_add(o, "dev", json_object_new_uint64(st->st_dev)) < 0 ||
            json_object_object_add(o, "ino", json_object_new_uint64(st->st_ino)) < 0 ||
            json_object_object_add(o, "size", json_object_new_int64(st->st_size)) < 0 ||
            json_object_object_add(o, "mtime_sec", json_object_new_int64(st->st_mtim.tv_sec)) < 0 ||
            json_object_object_add(o, "mtime_nsec", json_object_new_int64(st->st_mtim.tv_nsec)) < 0 ||
            json_object_object_add(o, "ctime_sec", json_object_new_int64(st->st_ctim.tv_sec)) < 0 ||
            json_object_object_add(o, "ctime_nsec", json_object_new_int64(st->st_ctim.tv_nsec)) < 0) {
                json_object_put(o);
                return NULL;
        }
        return o;
}

/* The identity of a file: its real path and stat, or null when it is not there. */
static json_object *file_identity(const char *path) {
        _cleanup_free_ char *real = realpath(path, NULL);
        struct stat st;

        if (!real || stat(real, &st) < 0)
                return NULL;
        return stat_to_json(real, &st);
}

/* The library directories named in a ld.so.conf file, in order, following its includes. */
static void ld_conf_dirs(const char *file, unsigned depth, char ***dirs, size_t *n) {
        _cleanup_fclose_ FILE *f = NULL;
        _cleanup_free_ char *line = NULL;
        size_t cap = 0;

        if (depth > 4 || !(f = fopen(file, "re")))
                return;
        while (getline(&line, &cap, f) > 0) {
                char *p = line, *end;

                if ((end = strchr(p, '#')))
                        *end = '\0';
                p += strspn(p, " \t");
                end = p + strlen(p);
                while (end > p && strchr(" \t\r\n", end[-1]))
                        *--end = '\0';
                if (!*p)
                        continue;
                if (strncmp(p, "include", 7) == 0 && (p[7] == ' ' || p[7] == '\t')) {
                        glob_t g;

                        p += 7 + strspn(p + 7, " \t");
                        if (glob(p, 0, NULL, &g) == 0)
                                for (size_t i = 0; i < g.gl_pathc; i++)
                                        ld_conf_dirs(g.gl_pathv[i], depth + 1, dirs, n);
                        globfree(&g);
                        continue;
                }
                if (*p != '/')
                        continue; /* hwcap lines and the like */
                {
                        char **more = realloc(*dirs, (*n + 2) * sizeof(char *));

                        if (!more)
                                return;
                        *dirs = more;
                        if (((*dirs)[*n] = strdup(p)))
                                (*n)++;
                        (*dirs)[*n] = NULL;
                }
        }
}

/* libtpms as the dynamic loader would find it for swtpm: the first directory holding
 * LIBTPMS_SONAME among those of /etc/ld.so.conf (on Debian its ld.so.conf.d lists the
 * multiarch dirs, which ldconfig puts in /etc/ld.so.cache), then the loader's default
 * dirs. swtpm runs with an empty environment (no LD_LIBRARY_PATH); its RUNPATH (Debian:
 * /usr/lib/<triplet>/swtpm) holds libswtpm_libtpms, which comes with the swtpm binary
 * and changes with it. Stat'ing these few paths costs microseconds against the probe's
 * 15-18 ms; the loader's cache file is part of the identity too, so that an ldconfig run
 * (what installing a library does) probes again. */
static json_object *libtpms_identity(void) {
        static const char *const defaults[] = { "/lib64", "/usr/lib64", "/lib", "/usr/lib" };
        _cleanup_strv_ char **dirs = NULL;
        size_t n = 0;

        ld_conf_dirs("/etc/ld.so.conf", 0, &dirs, &n);
        for (size_t i = 0; i < n + ARRAY_SIZE(defaults); i++) {
                const char *dir = i < n ? dirs[i] : defaults[i - n];
                _cleanup_free_ char *path = NULL;
                json_object *o;

                if (asprintf(&path, "%s/%s", dir, LIBTPMS_SONAME) < 0)
                        return NULL;
                if ((o = file_identity(path)))
                        return o;
        }
        return NULL;
}

/* What produced the capabilities: the swtpm binary and the libtpms it loads. NULL when
 * the binary cannot be stat'ed (then nothing is cached). */
static json_object *caps_identity(const char *path) {
        _cleanup_json_ json_object *id = json_object_new_object();
        json_object *bin = file_identity(path);

        if (!id || !bin) {
                json_object_put(bin);
                return NULL;
        }
        if (json_object_object_add(id, "format", json_object_new_int(CAPS_CACHE_FORMAT)) < 0 ||
            json_object_object_add(id, "swtpm", bin) < 0 ||
            json_object_object_add(id, "libtpms", libtpms_identity()) < 0 ||
            json_object_object_add(id, "ld.so.cache", file_identity("/etc/ld.so.cache")) < 0)
                return NULL;
        return TAKE_PTR(id);
}

/* The cached capabilities when the cache is ours, not writable by others, well formed and
 * made by what identity describes; NULL otherwise. */
static json_object *caps_cache_read(int dirfd, json_object *identity) {
        _cleanup_close_ int fd = openat(dirfd, CAPS_CACHE_NAME, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
        _cleanup_free_ char *text = NULL;
        _cleanup_json_ json_object *root = NULL;
        json_object *id, *caps;
        struct stat st;
        size_t done = 0;

        if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_uid != geteuid() ||
            (st.st_mode & (S_IWGRP | S_IWOTH)) || st.st_size <= 0 || st.st_size > CAPS_CACHE_MAX)
                return NULL;
        if (!(text = malloc((size_t) st.st_size + 1)))
                return NULL;
        while (done < (size_t) st.st_size) {
                ssize_t k = read(fd, text + done, (size_t) st.st_size - done);

                if (k < 0 && errno == EINTR)
                        continue;
                if (k <= 0)
                        return NULL;
                done += (size_t) k;
        }
        text[done] = '\0';
        root = json_tokener_parse(text);
        if (!root || !json_object_is_type(root, json_type_object) ||
            !json_object_object_get_ex(root, "identity", &id) || !json_object_equal(id, identity) ||
            !json_object_object_get_ex(root, "capabilities", &caps) || !json_object_is_type(caps, json_type_object))
                return NULL;
        return json_object_get(caps);
}

/* Best effort: a cache that cannot be written is probed again next time. */
static void caps_cache_write(int dirfd, const char *cache_dir, json_object *identity, json_object *caps) {
        _cleanup_json_ json_object *root = json_object_new_object();
        vmsup_error *ignored = NULL;
        const char *text;

        if (!root || json_object_object_add(root, "identity", json_object_get(identity)) < 0 ||
            json_object_object_add(root, "capabilities", json_object_get(caps)) < 0)
                return;
        text = json_object_to_json_string_ext(root, JSON_C_TO_STRING_PLAIN);
        if (file_write_atomic_at(dirfd, cache_dir, CAPS_CACHE_NAME, text, strlen(text), 0600, &ignored) < 0)
                vmsup_error_free(ignored);
}

int swtpm_caps_probe_cached(const char *program, const char *cache_dir, struct swtpm_caps *ret, vmsup_error **err) {
        _cleanup_free_ char *path = NULL, *out = NULL;
        _cleanup_json_ json_object *identity = NULL, *caps = NULL;
        _cleanup_close_ int dirfd = -1;
        int r;

        if (!cache_dir)
                return swtpm_caps_probe(program, false, ret, err);
        if (!(path = proc_find_executable(program, err)))
                return -ENOENT;
        /* the identity before the probe: a binary replaced while it runs is probed again */
        dirfd = open(cache_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dirfd >= 0 && (identity = caps_identity(path)) && (caps = caps_cache_read(dirfd, identity)) &&
            caps_from_json(caps, path, ret, NULL) == 0)
                return 0;
        json_object_put(TAKE_PTR(caps));

        r = caps_run(path, false, &out, err);
        if (r < 0)
                return r;
        if (r == 0)
                return caps_none(ret, path, err); /* not cached: rare, and maybe passing */
        caps = json_tokener_parse(out);
        r = caps_from_json(caps, path, ret, err);
        if (r < 0)
                return r;
        if (identity)
                caps_cache_write(dirfd, cache_dir, identity, caps);
        return 0;
}

bool swtpm_caps_has(const struct swtpm_caps *caps, const char *feature) {
        for (char **f = caps->features; f && *f; f++)
                if (streq(*f, feature))
                        return true;
        return false;
}

void swtpm_caps_clear(struct swtpm_caps *caps) {
        for (char **f = caps->features; f && *f; f++)
                free(*f);
        free(caps->features);
        free(caps->version);
        memset(caps, 0, sizeof(*caps));
}
