/* The guest spec: one JSON file per guest, written by the orchestrator. */
#ifndef VMSUP_NOVA_GUESTSPEC_H
#define VMSUP_NOVA_GUESTSPEC_H

#include <json-c/json.h>
#include <stdbool.h>
#include <stddef.h>

#include "common/error.h"
#include "common/vtpm.h" /* uuid_is_valid(): the uuid becomes a path component */

/* One backing layer of a disk: QEMU opens it read-only. */
struct guest_disk_layer {
        char *path;
        char *format; /* raw, qcow2 */
};

/* The spec alone gives the block graph: a qcow2 image's own backing file or data file
 * name is never followed (QEMU gets backing=null, or the next layer of the spec). */
struct guest_disk {
        char *path;
        char *format; /* raw, qcow2 */
        bool readonly;
        struct guest_disk_layer *backing; /* the backing chain, the top's backing first */
        size_t n_backing;
};

#define GUEST_DISK_MAX_BACKING 15

/* What the supervisor does when the guest's kernel panics (QEMU's GUEST_PANICKED, from
 * the pvpanic device): libvirt's <on_crash>, without the coredump variants. */
enum guest_on_crash {
        GUEST_ON_CRASH_DESTROY = 0, /* QEMU goes, the supervisor ends (the default) */
        GUEST_ON_CRASH_RESTART,     /* a hard reboot: QEMU and swtpm afresh, the TPM state kept */
        GUEST_ON_CRASH_PRESERVE,    /* QEMU stays paused, for a memory dump; stop --force ends it */
};

const char *guest_on_crash_to_string(enum guest_on_crash v);

struct guest_spec {
        char uuid[37]; /* canonical lower-case 8-4-4-4-12 */
        char *name;
        unsigned vcpus;
        unsigned memory_mb;
        char *owner_user_id;
        char *owner_project_id;
        char *flavor_name;
        json_object *extra_specs; /* owned; string values only */
        char *image_id;
        char *image_name;
        json_object *image_properties; /* owned */
        char *vtpm_secret_uuid; /* NULL until the secret exists */
        char *firmware_type;    /* "uefi" or "bios", after defaults */
        char *kernel;           /* direct kernel boot, optional */
        char *initrd;
        char *cmdline;
        struct guest_disk *disks;
        size_t n_disks;
        char *graphics; /* "graphics": {"type": ...}: "vnc", or NULL for no graphical console */
        enum guest_on_crash on_crash;
};

/* Parse and check a guest spec. Errors are VMSUP_ERR_DATA and name the key. */
int guest_spec_parse(const char *text, size_t len, const char *source, struct guest_spec *ret, vmsup_error **err);
int guest_spec_load(const char *path, struct guest_spec *ret, vmsup_error **err);
void guest_spec_clear(struct guest_spec *spec);

/* A flavor extra spec or image property as a string, or NULL when absent. */
const char *guest_spec_extra_spec(const struct guest_spec *spec, const char *key);
const char *guest_spec_image_property(const struct guest_spec *spec, const char *key);

#endif
