/* A guest's directories and files on the host (DESIGN.md "Paths and permissions"). */
#ifndef VMSUP_SUPERVISOR_GUESTDIRS_H
#define VMSUP_SUPERVISOR_GUESTDIRS_H

#include <stdbool.h>
#include <sys/types.h>

#include "common/error.h"
#include "common/fileio.h" /* write_file_atomic() */
#include "nova/guestspec.h"
#include "supervisor/hostconfig.h"

struct guest_dirs {
        char *state;       /* <state_dir>/<uuid>: 0700, persistent */
        char *run;         /* <run_dir>/<uuid>: 0711 (swtpm's user must reach tpm/), tmpfs */
        char *live_tpm;    /* <run>/tpm: 0700, owned by the swtpm user: plaintext TPM state */
        char *logs;        /* <log_dir>/<uuid>: 0700 */
        char *control;     /* <run>/control.sock */
        char *vnc_socket;  /* <run>/vnc.sock: the graphical console ("graphics" in the spec) */
        char *pidfile;     /* <run>/vmsup.pid */
        char *vars;        /* <state>/OVMF_VARS.fd */
        char *spec_copy;   /* <state>/guest.json */
        char *console_log; /* <logs>/console.log */
        char *swtpm_log;   /* <logs>/swtpm.log */
        char *qemu_log;    /* <logs>/qemu.log */
        char *swtpm_setup_log;
        char *migrated_out; /* <state>/migrated-out: handed over to another host (migration) */
        char *incoming;     /* <state>/incoming: being received from another host */
        char *tpm_stamp;    /* <state>/tpm-manufactured: the guest has a TPM whose state is sealed here */
        char *vars_stamp;   /* <state>/vars-in-use: the guest has run with its own UEFI variables */
};

#define GUEST_MIGRATED_OUT "migrated-out"
#define GUEST_INCOMING "incoming"
/* The incoming marker's first word once the source's COMMIT arrived ("committed from
 * SOURCE at TIME"): from then on this copy may be the only one, and it stays until the
 * source confirms the hand-over (DONE) or an operator resolves it (vmsup resolve). */
#define GUEST_INCOMING_COMMITTED "committed"
/* Stamps: one line each (what and when), written the first time the guest's TPM state is
 * sealed or its UEFI variables are used. They let a start tell a guest that never had a
 * TPM or VARS from one whose TPM state or VARS were lost, which is refused instead of
 * silently replaced (vmsup run --new-tpm, --new-vars). */
#define GUEST_STAMP_TPM "tpm-manufactured"
#define GUEST_STAMP_VARS "vars-in-use"

/* Compute the paths only (no file system access). */
int guest_dirs_init(struct guest_dirs *d, const struct host_config *cfg, const char *uuid, vmsup_error **err);
void guest_dirs_clear(struct guest_dirs *d);

/* Create what is missing with the right modes; refuse existing directories that another
 * user owns or that others can write. The live TPM dir is given to uid:gid; one that
 * another uid owns (before the guest had its own ids) is taken back when empty, and
 * refused (exit 65, its files left in place) when not. */
int guest_dirs_prepare(const struct guest_dirs *d, uid_t tpm_uid, gid_t tpm_gid, vmsup_error **err);

/* Take the guest's lock (flock on its state dir) for the caller's lifetime, before
 * anything of the guest is made or changed. create: a missing state dir is made (0700,
 * and nothing else: guest_dirs_prepare() follows once the guest is ours), and
 * *ret_created (when not NULL) says whether it was; else a missing one is exit 66.
 * Another supervisor holding it gives exit 75 and names its pid; a symbolic link or
 * not a directory, 73. Returns the fd to keep. */
int guest_dirs_lock(const struct guest_dirs *d, bool create, bool *ret_created, vmsup_error **err);

/* Who holds the guest's lock, without touching it (taking it, even shared and for an
 * instant, could make a supervisor that starts then fail): the pid /proc/locks names for
 * an flock on the state dir; 0 when nobody holds it, or the state dir or /proc/locks
 * cannot be read. */
pid_t guest_dirs_lock_holder(const struct guest_dirs *d);

/* Our pid in <run>/vmsup.pid (after guest_dirs_prepare(): the run dir exists), named
 * by the message of a second supervisor's guest_dirs_lock(). */
int guest_dirs_write_pid(const struct guest_dirs *d, vmsup_error **err);

/* For verbs on a stopped guest (delete, resize): take the guest's lock without waiting.
 * A supervisor holding it gives exit 75 ("stop it first"). A guest with no state dir
 * gives *ret_fd = -1 and 0 when missing_ok, else exit 66. */
int guest_dirs_lock_stopped(const struct guest_dirs *d, bool missing_ok, int *ret_fd, vmsup_error **err);

/* Write the stamp at path ("<what> since <UTC time>") unless it is there already. */
int guest_dirs_stamp(const char *path, const char *what, vmsup_error **err);

/* The first line (a new string) of a stamp or marker file when it exists (a regular
 * file, not a symlink); NULL with *err unset when it does not. */
char *guest_dirs_stamp_read(const char *path, vmsup_error **err);

/* The guest's OVMF VARS copy: checked against the template (a regular file of the
 * template's size; else exit 65, left as it is), or made from the template. A missing
 * copy of a guest that has used its own VARS (GUEST_STAMP_VARS) is refused (exit 65)
 * unless recreate is set. *ret_created says whether a copy was made. */
int guest_dirs_ensure_vars(const struct guest_dirs *d, const char *template_path, bool recreate, bool *ret_created,
                           vmsup_error **err);

/* Remove dir and everything below it, never following a symlink; a missing dir is fine. */
int remove_tree(const char *dir, vmsup_error **err);

/* Remove the guest's run, log and state dirs (the state dir last), then release its
 * ids (guest_ids_release). */
int guest_dirs_remove(const struct guest_dirs *d, vmsup_error **err);

/* The same, after the host's local copy of the guest's vTPM secret in secrets_dir (host
 * mode; nothing to do when the store does not exist). */
int guest_dirs_remove_all(const struct guest_dirs *d, const char *secrets_dir, const char *uuid, vmsup_error **err);

/* Refuse (exit 65, saying why and what to do) a guest whose state dir holds a migration
 * marker: handed over to another host, or an incomplete incoming migration. */
int guest_dirs_check_markers(const struct guest_dirs *d, vmsup_error **err);

/* The guest's incoming marker says COMMIT arrived (or cannot be read). */
bool guest_dirs_incoming_committed(const struct guest_dirs *d);

#endif
