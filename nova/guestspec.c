#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/util.h"
#include "nova/guestspec.h"

#define GUEST_SPEC_MAX_SIZE (1024 * 1024)

struct walker {
        const char *source;
        vmsup_error **err;
};

static int bad(struct walker *w, const char *key, const char *why) {
        return vmsup_fail(w->err, VMSUP_ERR_DATA, 0, "guest spec '%s': key '%s': %s", w->source, key, why);
}

/* Refuse keys we do not know: a misspelt key would otherwise be silently ignored. */
static int check_keys(struct walker *w, json_object *obj, const char *prefix, const char *const *allowed) {
        json_object_object_foreach(obj, key, val) {
                bool ok = false;

                (void) val;
                for (const char *const *a = allowed; *a; a++)
                        if (streq(*a, key))
                                ok = true;
                if (!ok) {
                        char full[256];

                        snprintf(full, sizeof(full), "%s%s", prefix, key);
                        return bad(w, full, "unknown key");
                }
        }
        return 0;
}

static int get_string(struct walker *w, json_object *obj, const char *key, const char *full, bool required,
                      bool nullable, char **ret) {
        json_object *v;
        const char *s;

        if (!json_object_object_get_ex(obj, key, &v) || (nullable && json_object_is_type(v, json_type_null))) {
                if (required)
                        return bad(w, full, "missing");
                *ret = NULL;
                return 0;
        }
        if (!json_object_is_type(v, json_type_string))
                return bad(w, full, "must be a string");
        s = json_object_get_string(v);
        if (required && !*s)
                return bad(w, full, "must not be empty");
        if (strlen(s) != (size_t) json_object_get_string_len(v))
                return bad(w, full, "contains a NUL byte");
        *ret = strdup(s);
        if (!*ret)
                return vmsup_fail(w->err, VMSUP_ERR_SYSTEM, ENOMEM, "guest spec '%s'", w->source);
        return 0;
}

static int get_uint(struct walker *w, json_object *obj, const char *key, unsigned min, unsigned max, unsigned *ret) {
        json_object *v;
        int64_t n;

        if (!json_object_object_get_ex(obj, key, &v))
                return bad(w, key, "missing");
        if (!json_object_is_type(v, json_type_int))
                return bad(w, key, "must be an integer");
        n = json_object_get_int64(v);
        if (n < min || n > max) {
                char why[96];

                snprintf(why, sizeof(why), "%lld is out of range (%u to %u)", (long long) n, min, max);
                return bad(w, key, why);
        }
        *ret = (unsigned) n;
        return 0;
}

static int get_object(struct walker *w, json_object *obj, const char *key, bool required, json_object **ret) {
        json_object *v;

        if (!json_object_object_get_ex(obj, key, &v) || json_object_is_type(v, json_type_null)) {
                if (required)
                        return bad(w, key, "missing");
                *ret = NULL;
                return 0;
        }
        if (!json_object_is_type(v, json_type_object))
                return bad(w, key, "must be an object");
        *ret = v;
        return 0;
}

/* extra_specs and properties: any key (Nova has many), but the values we read must be
 * strings; a non-string hw_tpm_* value is refused here. */
static int get_string_map(struct walker *w, json_object *parent, const char *key, const char *full,
                          const char *const *string_keys, json_object **ret) {
        json_object *m;

        if (!json_object_object_get_ex(parent, key, &m) || json_object_is_type(m, json_type_null)) {
                *ret = json_object_new_object();
                return *ret ? 0 : vmsup_fail(w->err, VMSUP_ERR_SYSTEM, ENOMEM, "guest spec");
        }
        if (!json_object_is_type(m, json_type_object))
                return bad(w, full, "must be an object");
        for (const char *const *k = string_keys; *k; k++) {
                json_object *v;

                if (json_object_object_get_ex(m, *k, &v) && !json_object_is_type(v, json_type_string)) {
                        char f[256];

                        snprintf(f, sizeof(f), "%s.%s", full, *k);
                        return bad(w, f, "must be a string");
                }
        }
        *ret = json_object_get(m);
        return 0;
}

static int check_disk_path(struct walker *w, const char *key, const char *path) {
        if (path[0] != '/' || strchr(path, ','))
                return bad(w, key, "must be an absolute path without ','");
        return 0;
}

/* "backing": {"path", "format", "backing": {...} or null}, nested as QEMU's own -blockdev
 * JSON nests it. Absent or null: the layer has no backing file. */
static int parse_backing(struct walker *w, json_object *top, const char *prefix, struct guest_disk *disk) {
        static const char *const layer_keys[] = { "path", "format", "backing", NULL };
        const char *above_format = disk->format;
        json_object *cur = top, *b;
        char base[192], k[256];

        snprintf(base, sizeof(base), "%s", prefix);
        while (json_object_object_get_ex(cur, "backing", &b) && !json_object_is_type(b, json_type_null)) {
                struct guest_disk_layer *layer;
                int r;

                /* at most "disks[15]" and 16 ".backing" (the 16th is refused): base has room */
                strcat(base, ".backing");
                snprintf(k, sizeof(k), "%s", base);
                if (!json_object_is_type(b, json_type_object))
                        return bad(w, k, "must be an object (path, format, backing) or null");
                if (streq(above_format, "raw"))
                        return bad(w, k, "a raw image has no backing file");
                if (disk->n_backing == GUEST_DISK_MAX_BACKING)
                        return bad(w, k, "a backing chain longer than 15 layers");
                snprintf(k, sizeof(k), "%s.", base);
                r = check_keys(w, b, k, layer_keys);
                if (r < 0)
                        return r;
                layer = &disk->backing[disk->n_backing++];
                snprintf(k, sizeof(k), "%s.path", base);
                r = get_string(w, b, "path", k, true, false, &layer->path);
                if (r < 0 || (r = check_disk_path(w, k, layer->path)) < 0)
                        return r;
                if (streq(layer->path, disk->path))
                        return bad(w, k, "names the disk's own image");
                for (size_t j = 0; j + 1 < disk->n_backing; j++)
                        if (streq(layer->path, disk->backing[j].path))
                                return bad(w, k, "names an image already in the chain");
                snprintf(k, sizeof(k), "%s.format", base);
                r = get_string(w, b, "format", k, true, false, &layer->format);
                if (r < 0)
                        return r;
                if (!streq(layer->format, "raw") && !streq(layer->format, "qcow2"))
                        return bad(w, k, "must be raw or qcow2");
                above_format = layer->format;
                cur = b;
        }
        return 0;
}

static int parse_disks(struct walker *w, json_object *root, struct guest_spec *spec) {
        static const char *const disk_keys[] = { "path", "format", "readonly", "backing", NULL };
        json_object *arr;
        size_t n;

        if (!json_object_object_get_ex(root, "disks", &arr) || json_object_is_type(arr, json_type_null))
                return 0;
        if (!json_object_is_type(arr, json_type_array))
                return bad(w, "disks", "must be an array");
        n = json_object_array_length(arr);
        if (n > 16)
                return bad(w, "disks", "more than 16 disks");
        spec->disks = calloc(n ? n : 1, sizeof(*spec->disks));
        if (!spec->disks)
                return vmsup_fail(w->err, VMSUP_ERR_SYSTEM, ENOMEM, "guest spec");
        for (size_t i = 0; i < n; i++) {
                json_object *d = json_object_array_get_idx(arr, i), *ro;
                struct guest_disk *disk = &spec->disks[i];
                char k[64];
                int r;

                spec->n_disks = i + 1;
                snprintf(k, sizeof(k), "disks[%zu]", i);
                if (!json_object_is_type(d, json_type_object))
                        return bad(w, k, "must be an object");
                snprintf(k, sizeof(k), "disks[%zu].", i);
                r = check_keys(w, d, k, disk_keys);
                if (r < 0)
                        return r;
                snprintf(k, sizeof(k), "disks[%zu].path", i);
                r = get_string(w, d, "path", k, true, false, &disk->path);
                if (r < 0)
                        return r;
                if ((r = check_disk_path(w, k, disk->path)) < 0)
                        return r;
                snprintf(k, sizeof(k), "disks[%zu].format", i);
                r = get_string(w, d, "format", k, false, false, &disk->format);
                if (r < 0)
                        return r;
                if (!disk->format && !(disk->format = strdup("raw")))
                        return vmsup_fail(w->err, VMSUP_ERR_SYSTEM, ENOMEM, "guest spec");
                if (!streq(disk->format, "raw") && !streq(disk->format, "qcow2"))
                        return bad(w, k, "must be raw or qcow2");
                if (json_object_object_get_ex(d, "readonly", &ro)) {
                        snprintf(k, sizeof(k), "disks[%zu].readonly", i);
                        if (!json_object_is_type(ro, json_type_boolean))
                                return bad(w, k, "must be true or false");
                        disk->readonly = json_object_get_boolean(ro);
                }
                disk->backing = calloc(GUEST_DISK_MAX_BACKING, sizeof(*disk->backing));
                if (!disk->backing)
                        return vmsup_fail(w->err, VMSUP_ERR_SYSTEM, ENOMEM, "guest spec");
                snprintf(k, sizeof(k), "disks[%zu]", i);
                r = parse_backing(w, d, k, disk);
                if (r < 0)
                        return r;
        }
        return 0;
}

static int parse_firmware(struct walker *w, json_object *root, struct guest_spec *spec) {
        static const char *const fw_keys[] = { "type", "kernel", "initrd", "cmdline", NULL };
        const char *image_fw = guest_spec_image_property(spec, "hw_firmware_type");
        json_object *fw;
        int r;

        r = get_object(w, root, "firmware", false, &fw);
        if (r < 0)
                return r;
        if (fw) {
                r = check_keys(w, fw, "firmware.", fw_keys);
                if (r < 0)
                        return r;
                r = get_string(w, fw, "type", "firmware.type", false, false, &spec->firmware_type);
                if (r < 0)
                        return r;
                r = get_string(w, fw, "kernel", "firmware.kernel", false, false, &spec->kernel);
                if (r < 0)
                        return r;
                r = get_string(w, fw, "initrd", "firmware.initrd", false, false, &spec->initrd);
                if (r < 0)
                        return r;
                r = get_string(w, fw, "cmdline", "firmware.cmdline", false, false, &spec->cmdline);
                if (r < 0)
                        return r;
                if (spec->kernel && spec->kernel[0] != '/')
                        return bad(w, "firmware.kernel", "must be an absolute path");
                if (spec->initrd && spec->initrd[0] != '/')
                        return bad(w, "firmware.initrd", "must be an absolute path");
                if ((spec->initrd || spec->cmdline) && !spec->kernel)
                        return bad(w, "firmware.kernel", "missing (initrd and cmdline need a kernel)");
        }
        if (image_fw && !streq(image_fw, "uefi") && !streq(image_fw, "bios"))
                return bad(w, "image.properties.hw_firmware_type", "must be uefi or bios");
        if (spec->firmware_type) {
                if (!streq(spec->firmware_type, "uefi") && !streq(spec->firmware_type, "bios"))
                        return bad(w, "firmware.type", "must be uefi or bios");
                if (image_fw && !streq(image_fw, spec->firmware_type))
                        return bad(w, "firmware.type", "conflicts with image property hw_firmware_type");
        } else {
                spec->firmware_type = strdup(image_fw ? image_fw : "bios");
                if (!spec->firmware_type)
                        return vmsup_fail(w->err, VMSUP_ERR_SYSTEM, ENOMEM, "guest spec");
        }
        return 0;
}

/* "graphics": {"type": "vnc"}; absent or null: no graphical console. */
static int parse_graphics(struct walker *w, json_object *root, struct guest_spec *spec) {
        static const char *const graphics_keys[] = { "type", NULL };
        json_object *gr;
        int r;

        if ((r = get_object(w, root, "graphics", false, &gr)) < 0 || !gr)
                return r;
        if ((r = check_keys(w, gr, "graphics.", graphics_keys)) < 0 ||
            (r = get_string(w, gr, "type", "graphics.type", true, false, &spec->graphics)) < 0)
                return r;
        if (!streq(spec->graphics, "vnc"))
                return bad(w, "graphics.type", "must be vnc (the only graphical console vmsup offers)");
        return 0;
}

/* NICs ------------------------------------------------------------------------- */

void guest_nic_derive_mac(const char *uuid, unsigned slot, char ret[static 18]) {
        uint32_t h = 2166136261u; /* FNV-1a: stable, no I/O, no library */
        char buf[64];

        snprintf(buf, sizeof(buf), "%s/nic%u", uuid, slot);
        for (const char *p = buf; *p; p++)
                h = (h ^ (uint8_t) *p) * 16777619u;
        snprintf(ret, 18, GUEST_NIC_MAC_PREFIX ":%02x:%02x:%02x", (h >> 16) & 0xff, (h >> 8) & 0xff, h & 0xff);
}

static bool mac_is_valid(const char *mac) {
        unsigned first;

        if (strlen(mac) != 17)
                return false;
        for (int i = 0; i < 17; i++)
                if (i % 3 == 2 ? mac[i] != ':' : !isxdigit((unsigned char) mac[i]))
                        return false;
        if (sscanf(mac, "%2x", &first) != 1 || (first & 1)) /* a multicast address is no NIC's */
                return false;
        return strcmp(mac, "00:00:00:00:00:00") != 0;
}

/* A tap's name as the kernel takes it (dev_valid_name()), and nothing QEMU or a log
 * line could misread. */
static bool ifname_is_valid(const char *n) {
        size_t len = strlen(n);

        if (len == 0 || len > 15 || streq(n, ".") || streq(n, ".."))
                return false;
        for (const char *p = n; *p; p++)
                if (!isalnum((unsigned char) *p) && *p != '-' && *p != '_' && *p != '.')
                        return false;
        return true;
}

int guest_nic_check(const char *key, const char *ifname, const char *mac, const char *model, unsigned mtu,
                    unsigned queues, vmsup_error **err) {
        if (!ifname_is_valid(ifname))
                return vmsup_fail(err, VMSUP_ERR_DATA, 0, "key '%s.ifname': '%s' is not a network interface name (1 to 15 "
                                  "letters, digits, '-', '_', '.')", key, ifname);
        if (mac && !mac_is_valid(mac))
                return vmsup_fail(err, VMSUP_ERR_DATA, 0, "key '%s.mac': '%s' is not a unicast MAC address "
                                  "(aa:bb:cc:dd:ee:ff)", key, mac);
        if (!streq(model, "virtio") && !streq(model, "e1000"))
                return vmsup_fail(err, VMSUP_ERR_DATA, 0, "key '%s.model': '%s' must be virtio or e1000", key, model);
        if (mtu && (mtu < 68 || mtu > 65535))
                return vmsup_fail(err, VMSUP_ERR_DATA, 0, "key '%s.mtu': %u is out of range (68 to 65535)", key, mtu);
        if (queues < 1 || queues > GUEST_NIC_MAX_QUEUES)
                return vmsup_fail(err, VMSUP_ERR_DATA, 0, "key '%s.queues': %u is out of range (1 to %d)", key, queues,
                                  GUEST_NIC_MAX_QUEUES);
        if (queues > 1 && !streq(model, "virtio"))
                return vmsup_fail(err, VMSUP_ERR_DATA, 0, "key '%s.queues': %u queues need model virtio (e1000 has one)",
                                  key, queues);
        return 0;
}

static int get_nic_uint(struct walker *w, json_object *obj, const char *key, const char *full, unsigned dflt,
                        unsigned *ret) {
        json_object *v;
        int64_t n;

        if (!json_object_object_get_ex(obj, key, &v) || json_object_is_type(v, json_type_null)) {
                *ret = dflt;
                return 0;
        }
        if (!json_object_is_type(v, json_type_int))
                return bad(w, full, "must be an integer");
        n = json_object_get_int64(v);
        if (n < 0 || n > 65535)
                return bad(w, full, "out of range");
        *ret = (unsigned) n;
        return 0;
}

/* "nics": [{"ifname", "mac", "model", "mtu", "queues", "slot"}], in the order of their
 * PCI slots (a NIC without "slot" takes its index). */
static int parse_nics(struct walker *w, json_object *root, struct guest_spec *spec) {
        static const char *const nic_keys[] = { "ifname", "mac", "model", "mtu", "queues", "slot", NULL };
        json_object *arr;
        size_t n;

        if (!json_object_object_get_ex(root, "nics", &arr) || json_object_is_type(arr, json_type_null))
                return 0;
        if (!json_object_is_type(arr, json_type_array))
                return bad(w, "nics", "must be an array");
        n = json_object_array_length(arr);
        if (n > GUEST_NIC_MAX)
                return bad(w, "nics", "more than 8 NICs");
        spec->nics = calloc(n ? n : 1, sizeof(*spec->nics));
        if (!spec->nics)
                return vmsup_fail(w->err, VMSUP_ERR_SYSTEM, ENOMEM, "guest spec");
        for (size_t i = 0; i < n; i++) {
                json_object *d = json_object_array_get_idx(arr, i);
                struct guest_nic *nic = &spec->nics[i];
                _cleanup_free_ char *mac = NULL;
                char k[64], base[16];
                int r;

                spec->n_nics = i + 1;
                snprintf(base, sizeof(base), "nics[%zu]", i);
                if (!json_object_is_type(d, json_type_object))
                        return bad(w, base, "must be an object");
                snprintf(k, sizeof(k), "%s.", base);
                if ((r = check_keys(w, d, k, nic_keys)) < 0)
                        return r;
                snprintf(k, sizeof(k), "%s.ifname", base);
                if ((r = get_string(w, d, "ifname", k, true, false, &nic->ifname)) < 0)
                        return r;
                snprintf(k, sizeof(k), "%s.mac", base);
                if ((r = get_string(w, d, "mac", k, false, true, &mac)) < 0)
                        return r;
                snprintf(k, sizeof(k), "%s.model", base);
                if ((r = get_string(w, d, "model", k, false, true, &nic->model)) < 0)
                        return r;
                if (!nic->model && !(nic->model = strdup("virtio")))
                        return vmsup_fail(w->err, VMSUP_ERR_SYSTEM, ENOMEM, "guest spec");
                snprintf(k, sizeof(k), "%s.mtu", base);
                if ((r = get_nic_uint(w, d, "mtu", k, 0, &nic->mtu)) < 0)
                        return r;
                snprintf(k, sizeof(k), "%s.queues", base);
                if ((r = get_nic_uint(w, d, "queues", k, 1, &nic->queues)) < 0)
                        return r;
                snprintf(k, sizeof(k), "%s.slot", base);
                if ((r = get_nic_uint(w, d, "slot", k, (unsigned) i, &nic->slot)) < 0)
                        return r;
                if (nic->slot >= GUEST_NIC_MAX)
                        return bad(w, k, "out of range (0 to 7)");
                if (mac)
                        for (char *p = mac; *p; p++)
                                *p = (char) tolower((unsigned char) *p);
                if ((r = guest_nic_check(base, nic->ifname, mac, nic->model, nic->mtu, nic->queues, w->err)) < 0)
                        return vmsup_error_prefix(w->err, "guest spec '%s'", w->source);
                if (mac)
                        snprintf(nic->mac, sizeof(nic->mac), "%s", mac);
                else
                        guest_nic_derive_mac(spec->uuid, nic->slot, nic->mac);
                for (size_t j = 0; j < i; j++) {
                        const char *what = NULL, *field = NULL;

                        if (spec->nics[j].slot == nic->slot)
                                what = "the same slot as an earlier NIC", field = "slot";
                        else if (streq(spec->nics[j].ifname, nic->ifname))
                                what = "the same tap as an earlier NIC", field = "ifname";
                        else if (streq(spec->nics[j].mac, nic->mac))
                                what = "the same MAC address as an earlier NIC", field = "mac";
                        if (what) {
                                snprintf(k, sizeof(k), "%s.%s", base, field);
                                return bad(w, k, what);
                        }
                }
        }
        return 0;
}

json_object *guest_spec_nics_to_json(const struct guest_nic *nics, size_t n) {
        json_object *arr = json_object_new_array();

        for (size_t i = 0; arr && i < n; i++) {
                json_object *o = json_object_new_object();

                if (!o) {
                        json_object_put(arr);
                        return NULL;
                }
                json_object_object_add(o, "ifname", json_object_new_string(nics[i].ifname));
                json_object_object_add(o, "mac", json_object_new_string(nics[i].mac));
                json_object_object_add(o, "model", json_object_new_string(nics[i].model));
                if (nics[i].mtu)
                        json_object_object_add(o, "mtu", json_object_new_int((int) nics[i].mtu));
                json_object_object_add(o, "queues", json_object_new_int((int) nics[i].queues));
                json_object_object_add(o, "slot", json_object_new_int((int) nics[i].slot));
                json_object_array_add(arr, o);
        }
        return arr;
}

int guest_spec_set_nics(struct guest_spec *spec, const struct guest_nic *nics, size_t n, vmsup_error **err) {
        struct guest_nic *copy = calloc(n ? n : 1, sizeof(*copy));

        for (size_t i = 0; copy && i < n; i++) {
                copy[i] = nics[i];
                copy[i].ifname = strdup(nics[i].ifname);
                copy[i].model = strdup(nics[i].model);
                if (!copy[i].ifname || !copy[i].model) {
                        for (size_t j = 0; j <= i; j++)
                                guest_nic_clear(&copy[j]);
                        free(copy);
                        copy = NULL;
                }
        }
        if (!copy)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "the guest's NICs");
        for (size_t i = 0; i < spec->n_nics; i++)
                guest_nic_clear(&spec->nics[i]);
        free(spec->nics);
        spec->nics = copy;
        spec->n_nics = n;
        return 0;
}

void guest_nic_clear(struct guest_nic *nic) {
        free(nic->ifname);
        free(nic->model);
        memset(nic, 0, sizeof(*nic));
}

static const char *const on_crash_names[] = {
        [GUEST_ON_CRASH_DESTROY] = "destroy",
        [GUEST_ON_CRASH_RESTART] = "restart",
        [GUEST_ON_CRASH_PRESERVE] = "preserve",
};

/* "on_crash": libvirt's values for a panicked guest, less the coredump ones (a dump is
 * taken from a preserved guest with `vmsup qmp UUID dump-guest-memory`). */
static int parse_on_crash(struct walker *w, json_object *root, struct guest_spec *spec) {
        _cleanup_free_ char *v = NULL;
        int r;

        spec->on_crash = GUEST_ON_CRASH_DESTROY;
        if ((r = get_string(w, root, "on_crash", "on_crash", false, true, &v)) < 0 || !v)
                return r;
        for (size_t i = 0; i < sizeof(on_crash_names) / sizeof(on_crash_names[0]); i++)
                if (streq(v, on_crash_names[i])) {
                        spec->on_crash = (enum guest_on_crash) i;
                        return 0;
                }
        return bad(w, "on_crash", "must be destroy, restart or preserve");
}

int guest_spec_parse(const char *text, size_t len, const char *source, struct guest_spec *ret, vmsup_error **err) {
        static const char *const top_keys[] = { "uuid", "name", "vcpus", "memory_mb", "owner", "flavor", "image",
                                                "vtpm_secret_uuid", "firmware", "disks", "graphics", "on_crash",
                                                "nics", NULL };
        static const char *const owner_keys[] = { "user_id", "project_id", NULL };
        static const char *const flavor_keys[] = { "name", "extra_specs", NULL };
        static const char *const image_keys[] = { "id", "name", "properties", NULL };
        static const char *const flavor_strings[] = { "hw:tpm_version", "hw:tpm_model", "hw:tpm_secret_security",
                                                      NULL };
        static const char *const image_strings[] = { "hw_tpm_version", "hw_tpm_model", "hw_firmware_type", NULL };
        struct walker w = { .source = source, .err = err };
        struct guest_spec spec = { 0 };
        _cleanup_free_ char *uuid = NULL;
        json_tokener *tok;
        json_object *root, *owner, *flavor, *image;
        enum json_tokener_error jerr;
        int r;

        if (len > GUEST_SPEC_MAX_SIZE)
                return vmsup_fail(err, VMSUP_ERR_DATA, 0, "guest spec '%s': larger than %d bytes", source,
                                  GUEST_SPEC_MAX_SIZE);
        tok = json_tokener_new();
        if (!tok)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "guest spec '%s'", source);
        json_tokener_set_flags(tok, JSON_TOKENER_STRICT);
        root = json_tokener_parse_ex(tok, text, (int) len);
        jerr = json_tokener_get_error(tok);
        if (root && (size_t) json_tokener_get_parse_end(tok) < len) {
                /* trailing bytes after the object: only white space is fine */
                for (size_t i = json_tokener_get_parse_end(tok); i < len; i++)
                        if (!isspace((unsigned char) text[i])) {
                                json_object_put(root);
                                root = NULL;
                                jerr = json_tokener_error_parse_unexpected;
                                break;
                        }
        }
        if (!root) {
                if (jerr == json_tokener_continue)
                        jerr = json_tokener_error_parse_eof;
                r = vmsup_fail(err, VMSUP_ERR_DATA, 0, "guest spec '%s': not valid JSON: %s (at byte %zu)",
                               source, json_tokener_error_desc(jerr), json_tokener_get_parse_end(tok));
                json_tokener_free(tok);
                return r;
        }
        json_tokener_free(tok);

        if (!json_object_is_type(root, json_type_object)) {
                r = vmsup_fail(err, VMSUP_ERR_DATA, 0, "guest spec '%s': must be a JSON object", source);
                goto out;
        }
        if ((r = check_keys(&w, root, "", top_keys)) < 0 ||
            (r = get_string(&w, root, "uuid", "uuid", true, false, &uuid)) < 0)
                goto out;
        if (!uuid_is_valid(uuid)) {
                r = bad(&w, "uuid", "not a lower-case UUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)");
                goto out;
        }
        memcpy(spec.uuid, uuid, sizeof(spec.uuid));
        if ((r = get_string(&w, root, "name", "name", true, false, &spec.name)) < 0 ||
            (r = get_uint(&w, root, "vcpus", 1, 255, &spec.vcpus)) < 0 ||
            (r = get_uint(&w, root, "memory_mb", 16, 16 * 1024 * 1024, &spec.memory_mb)) < 0)
                goto out;
        for (const char *p = spec.name; *p; p++)
                if (!isprint((unsigned char) *p)) {
                        r = bad(&w, "name", "must be printable characters");
                        goto out;
                }

        if ((r = get_object(&w, root, "owner", false, &owner)) < 0)
                goto out;
        if (owner && ((r = check_keys(&w, owner, "owner.", owner_keys)) < 0 ||
                      (r = get_string(&w, owner, "user_id", "owner.user_id", false, false, &spec.owner_user_id)) < 0 ||
                      (r = get_string(&w, owner, "project_id", "owner.project_id", false, false,
                                      &spec.owner_project_id)) < 0))
                goto out;

        if ((r = get_object(&w, root, "flavor", true, &flavor)) < 0 ||
            (r = check_keys(&w, flavor, "flavor.", flavor_keys)) < 0 ||
            (r = get_string(&w, flavor, "name", "flavor.name", true, false, &spec.flavor_name)) < 0 ||
            (r = get_string_map(&w, flavor, "extra_specs", "flavor.extra_specs", flavor_strings,
                                &spec.extra_specs)) < 0)
                goto out;

        if ((r = get_object(&w, root, "image", false, &image)) < 0)
                goto out;
        if (image) {
                if ((r = check_keys(&w, image, "image.", image_keys)) < 0 ||
                    (r = get_string(&w, image, "id", "image.id", false, false, &spec.image_id)) < 0 ||
                    (r = get_string(&w, image, "name", "image.name", false, false, &spec.image_name)) < 0 ||
                    (r = get_string_map(&w, image, "properties", "image.properties", image_strings,
                                        &spec.image_properties)) < 0)
                        goto out;
        } else if (!(spec.image_properties = json_object_new_object())) {
                r = vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "guest spec");
                goto out;
        }

        if ((r = get_string(&w, root, "vtpm_secret_uuid", "vtpm_secret_uuid", false, true, &spec.vtpm_secret_uuid)) < 0)
                goto out;
        if (spec.vtpm_secret_uuid && !uuid_is_valid(spec.vtpm_secret_uuid)) {
                r = bad(&w, "vtpm_secret_uuid", "not a lower-case UUID");
                goto out;
        }
        if ((r = parse_firmware(&w, root, &spec)) < 0 || (r = parse_disks(&w, root, &spec)) < 0 ||
            (r = parse_graphics(&w, root, &spec)) < 0 || (r = parse_on_crash(&w, root, &spec)) < 0 ||
            (r = parse_nics(&w, root, &spec)) < 0)
                goto out;

        *ret = spec;
        memset(&spec, 0, sizeof(spec));
        r = 0;
out:
        guest_spec_clear(&spec);
        json_object_put(root);
        return r;
}

int guest_spec_load(const char *path, struct guest_spec *ret, vmsup_error **err) {
        _cleanup_close_ int fd = -1;
        _cleanup_free_ char *buf = NULL;
        size_t len = 0;
        struct stat st;

        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0)
                return vmsup_fail(err, errno == ENOENT ? VMSUP_ERR_NOT_FOUND : VMSUP_ERR_DATA, errno,
                                  "open guest spec '%s'", path);
        if (fstat(fd, &st) < 0)
                return vmsup_fail(err, VMSUP_ERR_IO, errno, "stat guest spec '%s'", path);
        if (!S_ISREG(st.st_mode))
                return vmsup_fail(err, VMSUP_ERR_DATA, 0, "guest spec '%s': not a regular file", path);
        if (st.st_size > GUEST_SPEC_MAX_SIZE)
                return vmsup_fail(err, VMSUP_ERR_DATA, 0, "guest spec '%s': larger than %d bytes", path,
                                  GUEST_SPEC_MAX_SIZE);
        buf = malloc((size_t) st.st_size + 1);
        if (!buf)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "read guest spec '%s'", path);
        while (len < (size_t) st.st_size) {
                ssize_t n = read(fd, buf + len, (size_t) st.st_size - len);

                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0)
                        return vmsup_fail(err, VMSUP_ERR_IO, errno, "read guest spec '%s'", path);
                if (n == 0)
                        break;
                len += (size_t) n;
        }
        buf[len] = '\0';
        return guest_spec_parse(buf, len, path, ret, err);
}

const char *guest_on_crash_to_string(enum guest_on_crash v) {
        return (unsigned) v < sizeof(on_crash_names) / sizeof(on_crash_names[0]) ? on_crash_names[v] : "?";
}

void guest_spec_clear(struct guest_spec *spec) {
        free(spec->name);
        free(spec->owner_user_id);
        free(spec->owner_project_id);
        free(spec->flavor_name);
        json_object_put(spec->extra_specs);
        free(spec->image_id);
        free(spec->image_name);
        json_object_put(spec->image_properties);
        free(spec->vtpm_secret_uuid);
        free(spec->firmware_type);
        free(spec->kernel);
        free(spec->initrd);
        free(spec->cmdline);
        for (size_t i = 0; i < spec->n_disks; i++) {
                free(spec->disks[i].path);
                free(spec->disks[i].format);
                for (size_t j = 0; j < spec->disks[i].n_backing; j++) {
                        free(spec->disks[i].backing[j].path);
                        free(spec->disks[i].backing[j].format);
                }
                free(spec->disks[i].backing);
        }
        free(spec->disks);
        free(spec->graphics);
        for (size_t i = 0; i < spec->n_nics; i++)
                guest_nic_clear(&spec->nics[i]);
        free(spec->nics);
        memset(spec, 0, sizeof(*spec));
}

static const char *map_string(json_object *map, const char *key) {
        json_object *v;

        if (!map || !json_object_object_get_ex(map, key, &v) || !json_object_is_type(v, json_type_string))
                return NULL;
        return json_object_get_string(v);
}

const char *guest_spec_extra_spec(const struct guest_spec *spec, const char *key) {
        return map_string(spec->extra_specs, key);
}

const char *guest_spec_image_property(const struct guest_spec *spec, const char *key) {
        return map_string(spec->image_properties, key);
}
