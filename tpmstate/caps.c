#include "config.h"

#include <errno.h>
#include <json-c/json.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "common/proc.h"
#include "common/util.h"
#include "tpmstate/caps.h"

int swtpm_caps_parse(const char *text, const char *source, struct swtpm_caps *ret, vmsup_error **err) {
        json_object *root, *features, *version;
        struct swtpm_caps caps = { 0 };
        size_t n;
        int r = 0;

        root = json_tokener_parse(text);
        if (!root || !json_object_is_type(root, json_type_object)) {
                json_object_put(root);
                return vmsup_fail(err, VMSUP_ERR_UNAVAILABLE, 0, "%s --print-capabilities: output is not a JSON object",
                                  source);
        }
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
        json_object_put(root);
        return r;
}

int swtpm_caps_probe(const char *program, bool is_setup, struct swtpm_caps *ret, vmsup_error **err) {
        _cleanup_free_ char *path = proc_find_executable(program, err);
        struct proc_result res = { 0 };
        int r;

        if (!path)
                return -ENOENT;
        {
                char *argv_swtpm[] = { path, (char *) "socket", (char *) "--print-capabilities", NULL };
                char *argv_setup[] = { path, (char *) "--print-capabilities", NULL };

                r = proc_run_capture(is_setup ? argv_setup : argv_swtpm, NULL, 10000, 64 * 1024, &res, err);
        }
        if (r < 0)
                return vmsup_error_prefix(err, "probe %s", path);
        if (!WIFEXITED(res.status) || WEXITSTATUS(res.status) != 0) {
                proc_result_clear(&res);
                *ret = (struct swtpm_caps) { .features = calloc(1, sizeof(char *)) };
                return ret->features ? 0 : vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "probe %s", path);
        }
        r = swtpm_caps_parse(res.out, path, ret, err);
        proc_result_clear(&res);
        return r;
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
