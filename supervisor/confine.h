/* Least privilege for vmsup run and the children it starts (issue 8; docs/security.md). */
#ifndef VMSUP_SUPERVISOR_CONFINE_H
#define VMSUP_SUPERVISOR_CONFINE_H

#include <stdbool.h>
#include <sys/types.h>

#include "common/error.h"
#include "supervisor/guestdirs.h"
#include "supervisor/hostconfig.h"

/* No core dumps and no ptrace by other processes of the same user: PR_SET_DUMPABLE 0 and
 * RLIMIT_CORE 0 (inherited by the children: QEMU's memory is the guest's, swtpm's holds
 * the plaintext TPM state). For every verb that may hold a secret. */
int confine_no_dumps(vmsup_error **err);

/* The uid and gid of user and group (what names the setting, e.g. "[qemu] user"). When
 * vmsup does not run as root it cannot switch: its own ids are returned. */
int confine_resolve_ids(const char *what, const char *user, const char *group, uid_t *ret_uid, gid_t *ret_gid,
                        vmsup_error **err);

/* Who a guest's swtpm and QEMU run as (docs/security.md, "One uid per guest"). */
struct confine_ids {
        uid_t swtpm_uid;
        gid_t swtpm_gid;
        bool swtpm_private; /* swtpm_uid is this guest's alone: a file it owns is its swtpm's */
        uid_t qemu_uid;
        gid_t qemu_gid;
        gid_t qemu_groups[1]; /* supplementary: [qemu] group, for disks and /dev/kvm */
        size_t n_qemu_groups;
};

/* As root, swtpm (when tpm) runs as [tpm] swtpm_user and QEMU as [qemu] user, except that
 * a child whose user is not root gets the guest's own uid and gid from [security]
 * guest_ids instead (guest_ids_acquire), unless that is none; QEMU then keeps [qemu]
 * group (when not root's) as a supplementary group. Not as root: vmsup's own ids. */
int confine_guest_ids(const struct host_config *cfg, bool tpm, const char *uuid, struct confine_ids *ret,
                      vmsup_error **err);

/* Give QEMU running as uid:gid what it opens by path: its VARS copy (uefi) becomes
 * uid:gid 0600; when uid is not vmsup's, the guest's state dir becomes root:gid 0710 and
 * its parent traversable (o+x). The logs stay the supervisor's. */
int confine_qemu_files(const struct guest_dirs *d, bool uefi, uid_t uid, gid_t gid, vmsup_error **err);

#endif
