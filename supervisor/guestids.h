/* Per-guest uids and gids for swtpm and QEMU, from the host-wide range [security]
 * guest_ids, recorded in <state_dir>/guest-ids (docs/security.md, "One uid per guest"). */
#ifndef VMSUP_SUPERVISOR_GUESTIDS_H
#define VMSUP_SUPERVISOR_GUESTIDS_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "common/error.h"

#define GUEST_IDS_FILE "guest-ids"
#define GUEST_IDS_LOCK "guest-ids.lock"
/* 0x70000000-0x7000ffff: above systemd's container range (524288-1879048191) and its
 * DynamicUser= range, below 2^31 (tools that keep ids in a signed int). */
#define GUEST_IDS_DEFAULT "1879048192-1879113727"

/* "FIRST-LAST" (decimal, 1 <= FIRST < LAST <= 4294967294, room for one guest at least) or
 * "none" (*ret_first = *ret_last = 0). -EINVAL on anything else. */
int guest_ids_parse_range(const char *s, uint32_t *ret_first, uint32_t *ret_last);

/* A guest's two ids; each is both a uid and a gid. */
struct guest_ids {
        uid_t swtpm; /* first: its swtpm */
        uid_t qemu;  /* first + 1: its QEMU */
};

/* The ids of guest uuid: those recorded for it, else the lowest free pair of the range
 * first-last (pairs start at first, first + 2, ...) whose ids are no user's and no
 * group's (getpwuid, getgrgid), recorded durably. Under an exclusive lock of
 * <state_dir>/guest-ids.lock, so two guests never get the same ids. A full range fails
 * with exit 75; a damaged registry with exit 65 (naming file and line). */
int guest_ids_acquire(const char *state_dir, uint32_t first, uint32_t last, const char *uuid,
                      struct guest_ids *ret, vmsup_error **err);

/* Forget guest uuid's ids (vmsup delete); nothing recorded is fine. */
int guest_ids_release(const char *state_dir, const char *uuid, vmsup_error **err);

#endif
