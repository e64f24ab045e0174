/* Keeps swtpm's live state dir (plaintext, RAM-backed) and the guest's sealed state dir
 * in step (DESIGN.md "TPM state at rest"). */
#ifndef VMSUP_TPMSTATE_SYNC_H
#define VMSUP_TPMSTATE_SYNC_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "common/error.h"
#include "common/vtpm.h"

struct tpm_sync;

struct tpm_sync_opts {
        const char *live_dir;  /* <run>/<uuid>/tpm: swtpm's --tpmstate dir */
        const char *state_dir; /* <state>/<uuid>: where the .sealed files live */
        const char *uuid;
        enum tpm_version version;
        const uint8_t *key;    /* KDF_USE_STATE_SEAL key, borrowed for the sync's lifetime */
        uid_t uid;             /* owner of the live files (swtpm's user) */
        gid_t gid;
        bool uid_private;      /* no other guest's swtpm runs as uid */
};

int tpm_sync_open(const struct tpm_sync_opts *o, struct tpm_sync **ret, vmsup_error **err);

/* Before swtpm starts. First, the state files a crashed run left in the live dir must
 * provably come from this guest's own swtpm or from root: regular files with one link,
 * owned by root (vmsup's euid) or by uid when uid_private. Anything else fails with exit
 * 65, naming the file, which is neither sealed nor removed. Then those that are valid
 * and differ from what is sealed are sealed (they are newer: only swtpm writes there). Then every sealed state file is opened, checked by libtpms and written into the
 * live dir. Returns 1 when the guest has a TPM state, 0 when it has none yet (first
 * start: manufacture it, then call tpm_sync_seal_all()). Nothing sealed is changed when
 * a sealed file fails to open: the error says which file and why. */
int tpm_sync_restore(struct tpm_sync *s, vmsup_error **err);

/* Seal every state file in the live dir that differs from its sealed copy. */
int tpm_sync_seal_all(struct tpm_sync *s, vmsup_error **err);

/* Watch the live dir (inotify): swtpm writes TMP2-00.<name> and renames it over the
 * state file. tpm_sync_fd() goes into the caller's epoll; tpm_sync_dispatch() seals
 * what changed. */
int tpm_sync_watch(struct tpm_sync *s, vmsup_error **err);
int tpm_sync_fd(const struct tpm_sync *s);
int tpm_sync_dispatch(struct tpm_sync *s, vmsup_error **err);

/* After swtpm exited and its last writes are sealed: stop watching, then zero and remove
 * every file in the live dir, so no plaintext state outlives the guest's run. The fd of
 * tpm_sync_fd() stays open but silent until tpm_sync_watch() replaces it (a new fd for
 * the caller's epoll) or tpm_sync_free() closes it. */
int tpm_sync_wipe_live(struct tpm_sync *s, vmsup_error **err);

/* Whether the live dir holds a permanent state file (a crashed run's, which
 * tpm_sync_restore() seals when it is newer). */
bool tpm_sync_live_has_state(const struct tpm_sync *s);

/* The generation of the sealed state: its manifest's, which advances with every file
 * sealed (crypto/seal.h). 0 while nothing is sealed. It is what the rollback anchor
 * records (docs/vmsup.8, TPM STATE). */
uint64_t tpm_sync_generation(const struct tpm_sync *s);

/* A state that goes on from another one (a migrated guest's, an imported one): the next
 * manifest written gets a generation above min (nothing is written now). */
void tpm_sync_continue_from(struct tpm_sync *s, uint64_t min);

/* How many state files were sealed since open (for logs and tests). */
unsigned tpm_sync_sealed_count(const struct tpm_sync *s);

/* How many of those came from a crashed run's live dir (restore, step 1). */
unsigned tpm_sync_recovered_count(const struct tpm_sync *s);

struct tpm_sync *tpm_sync_free(struct tpm_sync *s);

#endif
