/* QEMU's command line for a guest, built from the spec, the resolved TPM and the config. */
#ifndef VMSUP_SUPERVISOR_QEMUARGS_H
#define VMSUP_SUPERVISOR_QEMUARGS_H

#include "common/error.h"
#include "nova/guestspec.h"
#include "supervisor/hostconfig.h"
#include "nova/tpmrules.h"

/* The fd numbers QEMU gets for one NIC: a tap per queue, and a /dev/vhost-net per queue
 * or none (vhost[0] < 0: vhost off). */
struct qemu_nic_fds {
        int tap[GUEST_NIC_MAX_QUEUES];
        int vhost[GUEST_NIC_MAX_QUEUES];
};

struct qemu_args_in {
        const char *qemu;          /* absolute path of the binary */
        const struct guest_spec *spec;
        const struct vtpm_config *tpm;
        const struct host_config *cfg;
        const char *vars_path;     /* the guest's OVMF VARS copy (uefi) */
        int serial_fd;             /* the serial port: a connected socket QEMU inherits */
        int qmp_fd;                /* fd number QEMU gets its QMP socket on */
        int tpm_ctrl_fd;           /* fd number of swtpm's control channel, -1 without vTPM */
        bool paused;               /* -S */
        const char *incoming;      /* -incoming URI, or NULL */
        const struct qemu_nic_fds *nic_fds; /* one per spec->nics; NULL without NICs */
};

/* A NULL-terminated argv (strv_freep frees it). */
int qemu_args_build(const struct qemu_args_in *in, char ***ret_argv, vmsup_error **err);

/* The ids of NIC slot's devices: its -netdev (hostnetN), its device (netN), its port. */
#define QEMU_NIC_NETDEV_ID "hostnet%u"
#define QEMU_NIC_DEVICE_ID "net%u"

/* A NIC's netdev_add and device_add arguments for a hot-plug: fdnames[q] and
 * vhostfdnames[q] (NULL: vhost off) are names given to QEMU by getfd. */
json_object *qemu_nic_netdev_json(const struct guest_nic *nic, char *const *fdnames, char *const *vhostfdnames);
json_object *qemu_nic_device_json(const struct host_config *cfg, const struct guest_nic *nic);

/* QEMU option values separate keys with ',': a literal ',' is written ",,". */
char *qemu_escape_value(const char *s);

#endif
