#include "config.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "supervisor/diskimages.h"
#include "supervisor/qcow2.h"

/* Lexical clean-up of an absolute path: the header names a file, the spec names one; they
 * are the same layer when they read the same after this (no symlinks are followed: the
 * image must not make vmsup look at other files). */
static void path_normalize(char *p) {
        char *out = p, *in = p;

        while (*in) {
                char *seg;
                size_t len;

                while (*in == '/')
                        in++;
                seg = in;
                while (*in && *in != '/')
                        in++;
                len = (size_t) (in - seg);
                if (len == 0 || (len == 1 && seg[0] == '.'))
                        continue;
                if (len == 2 && seg[0] == '.' && seg[1] == '.') {
                        while (out > p && *--out != '/')
                                ;
                        continue;
                }
                *out++ = '/';
                memmove(out, seg, len);
                out += len;
        }
        if (out == p)
                *out++ = '/';
        *out = '\0';
}

char *disk_images_backing_path(const char *image, const char *name) {
        char *s;

        if (name[0] == '/')
                s = strdup(name);
        else {
                const char *slash = strrchr(image, '/');
                int dir_len = slash ? (int) (slash - image) : 0;

                if (asprintf(&s, "%.*s/%s", dir_len, image, name) < 0)
                        s = NULL;
        }
        if (s)
                path_normalize(s);
        return s;
}

static int check_layer(size_t disk, const char *path, const char *format, const struct guest_disk_layer *next,
                       vmsup_error **err) {
        struct qcow2_header_info h = { 0 };
        _cleanup_free_ char *named = NULL, *want = NULL;
        int r;

        if (!streq(format, "qcow2"))
                return 0; /* a raw image has no header */
        r = qcow2_header_load(path, &h, err);
        if (r < 0) {
                vmsup_error_prefix(err, "disks[%zu]", disk);
                return r;
        }
        if (h.data_file) {
                r = vmsup_fail(err, VMSUP_ERR_DATA, 0,
                               "disks[%zu]: qcow2 image '%s' uses an external data file%s%s%s: refused (vmsup gives "
                               "QEMU no data file)",
                               disk, path, h.data_file_name ? " '" : "", h.data_file_name ? h.data_file_name : "",
                               h.data_file_name ? "'" : "");
                goto out;
        }
        if (h.backing_file && !next) {
                r = vmsup_fail(err, VMSUP_ERR_DATA, 0,
                               "disks[%zu]: qcow2 image '%s' names backing file '%s', which the guest spec does not "
                               "give: refused (give the chain in the spec: \"backing\": {\"path\", \"format\"})",
                               disk, path, h.backing_file);
                goto out;
        }
        if (!h.backing_file && next) {
                r = vmsup_fail(err, VMSUP_ERR_DATA, 0,
                               "disks[%zu]: qcow2 image '%s' names no backing file, but the guest spec gives '%s'",
                               disk, path, next->path);
                goto out;
        }
        if (next) {
                named = disk_images_backing_path(path, h.backing_file);
                want = strdup(next->path);
                if (!named || !want) {
                        r = vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "disks[%zu]", disk);
                        goto out;
                }
                path_normalize(want);
                if (!streq(named, want)) {
                        r = vmsup_fail(err, VMSUP_ERR_DATA, 0,
                                       "disks[%zu]: qcow2 image '%s' names backing file '%s', but the guest spec "
                                       "gives '%s'",
                                       disk, path, h.backing_file, next->path);
                        goto out;
                }
                if (h.backing_format && !streq(h.backing_format, next->format)) {
                        r = vmsup_fail(err, VMSUP_ERR_DATA, 0,
                                       "disks[%zu]: qcow2 image '%s' names backing format '%s', but the guest spec "
                                       "gives %s for '%s'",
                                       disk, path, h.backing_format, next->format, next->path);
                        goto out;
                }
        }
        r = 0;
out:
        qcow2_header_info_clear(&h);
        return r;
}

int disk_images_check(const struct guest_spec *spec, vmsup_error **err) {
        for (size_t i = 0; i < spec->n_disks; i++) {
                const struct guest_disk *d = &spec->disks[i];
                int r;

                r = check_layer(i, d->path, d->format, d->n_backing ? &d->backing[0] : NULL, err);
                for (size_t j = 0; r >= 0 && j < d->n_backing; j++)
                        r = check_layer(i, d->backing[j].path, d->backing[j].format,
                                        j + 1 < d->n_backing ? &d->backing[j + 1] : NULL, err);
                if (r < 0)
                        return r;
        }
        return 0;
}
