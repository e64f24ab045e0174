#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <libgen.h>
#include <pwd.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/util.h"
#include "supervisor/confine.h"
#include "supervisor/guestids.h"

int confine_no_dumps(vmsup_error **err) {
        struct rlimit none = { 0, 0 };

        if (setrlimit(RLIMIT_CORE, &none) < 0)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, errno, "set RLIMIT_CORE to 0");
        if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, errno, "prctl(PR_SET_DUMPABLE, 0)");
        return 0;
}

int confine_resolve_ids(const char *what, const char *user, const char *group, uid_t *ret_uid, gid_t *ret_gid,
                        vmsup_error **err) {
        struct passwd *pw;
        struct group *gr;

        if (geteuid() != 0) {
                *ret_uid = geteuid();
                *ret_gid = getegid();
                return 0;
        }
        errno = 0;
        pw = getpwnam(user);
        if (!pw)
                return vmsup_fail(err, VMSUP_ERR_CONFIG, errno, "%s user '%s' does not exist", what, user);
        errno = 0;
        gr = getgrnam(group);
        if (!gr)
                return vmsup_fail(err, VMSUP_ERR_CONFIG, errno, "%s group '%s' does not exist", what, group);
        *ret_uid = pw->pw_uid;
        *ret_gid = gr->gr_gid;
        return 0;
}

int confine_guest_ids(const struct host_config *cfg, bool tpm, const char *uuid, struct confine_ids *ret,
                      vmsup_error **err) {
        struct confine_ids ids = { 0 };
        struct guest_ids own = { 0 };
        gid_t qemu_group;
        int r;

        if (geteuid() != 0) {
                ids.swtpm_uid = ids.qemu_uid = geteuid();
                ids.swtpm_gid = ids.qemu_gid = getegid();
                *ret = ids;
                return 0;
        }
        if (tpm && (r = confine_resolve_ids("[tpm] swtpm", cfg->tpm.swtpm_user, cfg->tpm.swtpm_group, &ids.swtpm_uid,
                                            &ids.swtpm_gid, err)) < 0)
                return r;
        if ((r = confine_resolve_ids("[qemu]", cfg->qemu.user, cfg->qemu.group, &ids.qemu_uid, &qemu_group, err)) < 0)
                return r;
        ids.qemu_gid = qemu_group;
        /* root stays root (the operator chose no drop); every other child gets its own ids */
        if (cfg->security.guest_ids[0] && ((tpm && ids.swtpm_uid != 0) || ids.qemu_uid != 0)) {
                r = guest_ids_acquire(cfg->paths.state_dir, cfg->security.guest_ids[0], cfg->security.guest_ids[1], uuid,
                                      &own, err);
                if (r < 0)
                        return r;
                if (tpm && ids.swtpm_uid != 0) {
                        ids.swtpm_uid = own.swtpm;
                        ids.swtpm_gid = (gid_t) own.swtpm;
                        ids.swtpm_private = true;
                }
                if (ids.qemu_uid != 0) {
                        ids.qemu_uid = own.qemu;
                        ids.qemu_gid = (gid_t) own.qemu;
                        if (qemu_group != 0)
                                ids.qemu_groups[ids.n_qemu_groups++] = qemu_group;
                }
        }
        *ret = ids;
        return 0;
}

/* Hand a file QEMU opens by path to uid:gid, 0600; create it if asked. */
static int give_file(const char *path, bool create, uid_t uid, gid_t gid, vmsup_error **err) {
        _cleanup_close_ int fd = open(path, (create ? O_WRONLY | O_APPEND | O_CREAT : O_RDONLY) | O_NOFOLLOW | O_CLOEXEC,
                                      0600);
        struct stat st;

        if (fd < 0)
                return vmsup_fail(err, VMSUP_ERR_CANT_CREATE, errno, "open '%s' for QEMU", path);
        if (fstat(fd, &st) < 0)
                return vmsup_fail(err, VMSUP_ERR_IO, errno, "stat '%s'", path);
        if (!S_ISREG(st.st_mode))
                return vmsup_fail(err, VMSUP_ERR_DENIED, 0, "'%s' is not a regular file: refusing to give it to QEMU", path);
        if ((st.st_uid != uid || st.st_gid != gid) && fchown(fd, uid, gid) < 0)
                return vmsup_fail(err, VMSUP_ERR_DENIED, errno, "chown '%s' to QEMU's user", path);
        if ((st.st_mode & 07777) != 0600 && fchmod(fd, 0600) < 0)
                return vmsup_fail(err, VMSUP_ERR_DENIED, errno, "chmod '%s'", path);
        return 0;
}

/* dir (one of ours, 0700 from guest_dirs_prepare) becomes root:gid 0710, and its parent,
 * if ours, gets o+x: QEMU may pass through, list nothing, and open only what is its own. */
static int open_dir_to(const char *dir, gid_t gid, vmsup_error **err) {
        _cleanup_free_ char *copy = strdup(dir);
        _cleanup_close_ int fd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC), pfd = -1;
        struct stat st;

        if (!copy)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "'%s'", dir);
        if (fd < 0)
                return vmsup_fail(err, VMSUP_ERR_IO, errno, "open directory '%s'", dir);
        if (fchown(fd, geteuid(), gid) < 0 || fchmod(fd, 0710) < 0)
                return vmsup_fail(err, VMSUP_ERR_DENIED, errno, "let QEMU's group into '%s'", dir);
        pfd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (pfd < 0 || fstat(pfd, &st) < 0)
                return vmsup_fail(err, VMSUP_ERR_IO, errno, "open directory '%s'", copy);
        if (st.st_uid == geteuid() && !(st.st_mode & S_IXOTH) && fchmod(pfd, (st.st_mode & 07777) | S_IXOTH) < 0)
                return vmsup_fail(err, VMSUP_ERR_DENIED, errno, "let QEMU pass through '%s'", copy);
        return 0;
}

int confine_qemu_files(const struct guest_dirs *d, bool uefi, uid_t uid, gid_t gid, vmsup_error **err) {
        int r;

        /* the logs are not QEMU's: the supervisor writes them (supervisor/logs.c) */
        if (uid != geteuid() && (r = open_dir_to(d->state, gid, err)) < 0)
                return r;
        return uefi ? give_file(d->vars, false, uid, gid, err) : 0;
}
