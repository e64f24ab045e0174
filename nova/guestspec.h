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

/* A NIC on a tap the orchestrator plugged (Nova's libvirt driver: an "ethernet"
 * interface, managed=no): vmsup opens the tap, never creates or configures it. */
struct guest_nic {
        char *ifname;   /* the tap on this host */
        char mac[18];   /* lower-case aa:bb:cc:dd:ee:ff */
        char *model;    /* "virtio" (the default) or "e1000" */
        unsigned mtu;   /* 0: the tap's as it is */
        unsigned queues; /* taps opened (IFF_MULTI_QUEUE when > 1); e1000: 1 */
        unsigned slot;  /* its PCI(e) slot among the NICs': the guest's name for it stays */
};

#define GUEST_NIC_MAX 8 /* slots 0 to 7 */
#define GUEST_NIC_MAX_QUEUES 16
/* Nova's MAC prefix (neutron's base_mac fa:16:3e:00:00:00) */
#define GUEST_NIC_MAC_PREFIX "fa:16:3e"

/* The MAC of a NIC the spec gives none: Nova's prefix and 24 bits from the guest's
 * UUID and the NIC's slot, the same at every start and on every host. */
void guest_nic_derive_mac(const char *uuid, unsigned slot, char ret[static 18]);
/* Check one NIC's values (a hot-plug's as a spec's). key: the NIC's in the error ("key
 * 'nics[2].mac': ..."); errors are VMSUP_ERR_DATA. mac: NULL when it is derived. */
int guest_nic_check(const char *key, const char *ifname, const char *mac, const char *model, unsigned mtu,
                    unsigned queues, vmsup_error **err);
/* The spec's NICs as its "nics" key says them, every MAC and slot written out. */
json_object *guest_spec_nics_to_json(const struct guest_nic *nics, size_t n);
void guest_nic_clear(struct guest_nic *nic);


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
        struct guest_nic *nics; /* in the spec's order */
        size_t n_nics;
};

/* Parse and check a guest spec. Errors are VMSUP_ERR_DATA and name the key. */
int guest_spec_parse(const char *text, size_t len, const char *source, struct guest_spec *ret, vmsup_error **err);
int guest_spec_load(const char *path, struct guest_spec *ret, vmsup_error **err);
void guest_spec_clear(struct guest_spec *spec);

/* A flavor extra spec or image property as a string, or NULL when absent. */
const char *guest_spec_extra_spec(const struct guest_spec *spec, const char *key);
const char *guest_spec_image_property(const struct guest_spec *spec, const char *key);

/* Replace spec's NICs with a copy of nics[n]. */
int guest_spec_set_nics(struct guest_spec *spec, const struct guest_nic *nics, size_t n, vmsup_error **err);

#endif
