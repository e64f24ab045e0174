/* The guest's NICs on this host: the taps the orchestrator plugged, opened for QEMU. */
#ifndef VMSUP_SUPERVISOR_NICS_H
#define VMSUP_SUPERVISOR_NICS_H

#include <stdbool.h>

#include "common/error.h"
#include "nova/guestspec.h"

/* One NIC's fds: a tap per queue and, where /dev/vhost-net exists, a vhost-net per queue. */
struct nic_fds {
        int tap[GUEST_NIC_MAX_QUEUES];
        int vhost[GUEST_NIC_MAX_QUEUES]; /* vhost[0] < 0: vhost off */
        unsigned n;                      /* queues opened */
        char ifname[16];
        unsigned old_mtu;                /* the tap's MTU before we set nic->mtu; 0: not changed */
        int vhost_errno;                 /* why vhost is off (ENOENT: no /dev/vhost-net); 0 when on */
};

void nic_fds_init(struct nic_fds *f);

/* Attach to the existing tap nic->ifname, once per queue (TUNSETIFF: IFF_TAP, IFF_NO_PI,
 * IFF_VNET_HDR, and IFF_MULTI_QUEUE for more than one queue), set its MTU when the spec
 * gives one, and open /dev/vhost-net per queue where it exists. Never creates a device:
 * a missing tap is VMSUP_ERR_UNAVAILABLE, a tap another process holds VMSUP_ERR_BUSY,
 * an MTU the tap refuses VMSUP_ERR_DATA; key ("nics[0]") is named in the error. On
 * failure nothing stays open and the MTU is as it was. */
int nic_open(const struct guest_nic *nic, const char *key, struct nic_fds *ret, vmsup_error **err);

/* Close our fds (QEMU has its own by then); restore_mtu: put the tap's MTU back (a
 * start or hot-plug that failed). */
void nic_close(struct nic_fds *f, bool restore_mtu);

#endif
