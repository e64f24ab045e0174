#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

#include "common/util.h"
#include "secrets/localstore.h"
#include "supervisor/guestdirs.h"
#include "supervisor/guestids.h"

int guest_dirs_init(struct guest_dirs *d, const struct host_config *cfg, const char *uuid, vmsup_error **err) {
        struct guest_dirs g = { 0 };
        bool ok = true;

        ok &= asprintf(&g.state, "%s/%s", cfg->paths.state_dir, uuid) > 0;
        ok &= asprintf(&g.run, "%s/%s", cfg->paths.run_dir, uuid) > 0;
        ok &= asprintf(&g.logs, "%s/%s", cfg->paths.log_dir, uuid) > 0;
        if (ok) {
                ok &= asprintf(&g.live_tpm, "%s/tpm", g.run) > 0;
                ok &= asprintf(&g.control, "%s/control.sock", g.run) > 0;
                ok &= asprintf(&g.vnc_socket, "%s/vnc.sock", g.run) > 0;
                ok &= asprintf(&g.pidfile, "%s/vmsup.pid", g.run) > 0;
                ok &= asprintf(&g.vars, "%s/OVMF_VARS.fd", g.state) > 0;
                ok &= asprintf(&g.spec_copy, "%s/guest.json", g.state) > 0;
                ok &= asprintf(&g.console_log, "%s/console.log", g.logs) > 0;
                ok &= asprintf(&g.swtpm_log, "%s/swtpm.log", g.logs) > 0;
                ok &= asprintf(&g.qemu_log, "%s/qemu.log", g.logs) > 0;
                ok &= asprintf(&g.swtpm_setup_log, "%s/swtpm_setup.log", g.logs) > 0;
                ok &= asprintf(&g.migrated_out, "%s/" GUEST_MIGRATED_OUT, g.state) > 0;
                ok &= asprintf(&g.incoming, "%s/" GUEST_INCOMING, g.state) > 0;
                ok &= asprintf(&g.tpm_stamp, "%s/" GUEST_STAMP_TPM, g.state) > 0;
                ok &= asprintf(&g.vars_stamp, "%s/" GUEST_STAMP_VARS, g.state) > 0;
        }
        if (!ok) {
                guest_dirs_clear(&g);
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "guest paths");
        }
        if (strlen(g.control) >= 108) {
                int r = vmsup_fail(err, VMSUP_ERR_CONFIG, 0, "control socket path '%s' is longer than 107 bytes: "
                                                            "choose a shorter [paths] run_dir", g.control);
                guest_dirs_clear(&g);
                return r;
        }
        *d = g;
        return 0;
}

void guest_dirs_clear(struct guest_dirs *d) {
        free(d->state);
        free(d->run);
        free(d->live_tpm);
        free(d->logs);
        free(d->control);
        free(d->vnc_socket);
        free(d->pidfile);
        free(d->vars);
        free(d->spec_copy);
        free(d->console_log);
        free(d->swtpm_log);
        free(d->qemu_log);
        free(d->swtpm_setup_log);
        free(d->migrated_out);
        free(d->incoming);
        free(d->tpm_stamp);
        free(d->vars_stamp);
        memset(d, 0, sizeof(*d));
}

/* Create dir (and its parents) if missing, then make sure it is ours, a real directory,
 * not writable by others, and has exactly mode. */
static int ensure_dir(const char *path, mode_t mode, uid_t uid, gid_t gid, vmsup_error **err) {
        _cleanup_close_ int fd = -1;
        struct stat st;
        int r;

        r = mkdir_parents(path, mode, err);
        if (r < 0)
                return r;
        fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0)
                return vmsup_fail(err, VMSUP_ERR_CANT_CREATE, errno, "open directory '%s'", path);
        if (fstat(fd, &st) < 0)
                return vmsup_fail(err, VMSUP_ERR_IO, errno, "stat '%s'", path);
        if (st.st_uid != geteuid() && st.st_uid != uid)
                return vmsup_fail(err, VMSUP_ERR_DENIED, 0, "directory '%s' is owned by uid %u, not by uid %u: refusing to use it",
                                  path, (unsigned) st.st_uid, (unsigned) geteuid());
        if (st.st_mode & S_IWOTH)
                return vmsup_fail(err, VMSUP_ERR_DENIED, 0, "directory '%s' is writable by others (mode %04o): refusing to use it",
                                  path, (unsigned) (st.st_mode & 07777));
        if ((st.st_uid != uid || st.st_gid != gid) && fchown(fd, uid, gid) < 0)
                return vmsup_fail(err, VMSUP_ERR_DENIED, errno, "chown '%s'", path);
        if ((st.st_mode & 07777) != mode && fchmod(fd, mode) < 0)
                return vmsup_fail(err, VMSUP_ERR_DENIED, errno, "chmod '%s'", path);
        return 0;
}

/* A live TPM dir of another uid (swtpm's before the guest had its own ids, or one it
 * shared with other guests): taken back when empty, else refused with its files left
 * as they are (nothing shows whose swtpm wrote them). */
static int reclaim_live_dir(const char *path, uid_t tpm_uid, vmsup_error **err) {
        _cleanup_close_ int fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        struct dirent *e;
        struct stat st;
        char first[256] = "";
        DIR *dir;
        int dfd, r;

        if (fd < 0)
                return 0; /* missing, or not a directory: ensure_dir says so */
        if (fstat(fd, &st) < 0)
                return vmsup_fail(err, VMSUP_ERR_IO, errno, "stat '%s'", path);
        if (st.st_uid == geteuid() || st.st_uid == tpm_uid)
                return 0;
        dfd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
        if (dfd < 0 || !(dir = fdopendir(dfd))) {
                r = vmsup_fail(err, VMSUP_ERR_IO, errno, "list '%s'", path);
                if (dfd >= 0)
                        close(dfd);
                return r;
        }
        while ((e = readdir(dir)))
                if (!streq(e->d_name, ".") && !streq(e->d_name, "..")) {
                        snprintf(first, sizeof(first), "%s", e->d_name);
                        break;
                }
        closedir(dir);
        if (first[0])
                return vmsup_fail(err, VMSUP_ERR_DATA, 0,
                                  "live TPM dir '%s' belongs to uid %u, not to this guest's swtpm (uid %u), and holds "
                                  "files ('%s' ...) that nothing shows this guest's swtpm wrote; they were neither "
                                  "sealed nor removed: inspect them, then remove the directory to start from the "
                                  "sealed state",
                                  path, (unsigned) st.st_uid, (unsigned) tpm_uid, first);
        if (fchown(fd, geteuid(), getegid()) < 0 || fchmod(fd, 0700) < 0)
                return vmsup_fail(err, VMSUP_ERR_DENIED, errno, "take back '%s'", path);
        return 0;
}

int guest_dirs_prepare(const struct guest_dirs *d, uid_t tpm_uid, gid_t tpm_gid, vmsup_error **err) {
        uid_t me = geteuid();
        gid_t mygid = getegid();
        int r;

        if ((r = ensure_dir(d->state, 0700, me, mygid, err)) < 0 || (r = ensure_dir(d->run, 0711, me, mygid, err)) < 0 ||
            (r = ensure_dir(d->logs, 0700, me, mygid, err)) < 0 || (r = reclaim_live_dir(d->live_tpm, tpm_uid, err)) < 0 ||
            (r = ensure_dir(d->live_tpm, 0700, tpm_uid, tpm_gid, err)) < 0)
                return r;
        return 0;
}

/* "guest is already supervised by another vmsup (pid N)" */
static int lock_busy(const struct guest_dirs *d, vmsup_error **err) {
        _cleanup_close_ int pfd = open(d->pidfile, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
        char pidbuf[32] = "";

        if (pfd >= 0) {
                ssize_t n = read(pfd, pidbuf, sizeof(pidbuf) - 1);

                pidbuf[n > 0 ? n : 0] = '\0';
                pidbuf[strcspn(pidbuf, "\n")] = '\0';
        }
        return vmsup_fail(err, VMSUP_ERR_BUSY, 0, "guest is already supervised by another vmsup%s%s%s",
                          pidbuf[0] ? " (pid " : "", pidbuf, pidbuf[0] ? ")" : "");
}

int guest_dirs_lock(const struct guest_dirs *d, bool create, bool *ret_created, vmsup_error **err) {
        _cleanup_free_ char *parent = strdup(d->state);
        bool made = false;
        int r;

        if (!parent)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "lock '%s'", d->state);
        if (create && (r = mkdir_parents(dirname(parent), 0700, err)) < 0)
                return r;
        /* the lock is the directory's inode: one removed (vmsup delete, the janitor) or
         * replaced between our open and our flock is not the guest's any more */
        for (int tries = 0; tries < 8; tries++) {
                _cleanup_close_ int fd = -1;
                struct stat st, now;

                if (create) {
                        if (mkdir(d->state, 0700) == 0)
                                made = true;
                        else if (errno != EEXIST)
                                return vmsup_fail(err, VMSUP_ERR_CANT_CREATE, errno, "create directory '%s'", d->state);
                }
                fd = open(d->state, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
                if (fd < 0) {
                        if (errno == ENOENT && create)
                                continue;
                        return vmsup_fail(err,
                                          errno == ENOENT  ? VMSUP_ERR_NOT_FOUND
                                          : errno == ELOOP || errno == ENOTDIR ? VMSUP_ERR_CANT_CREATE
                                                                              : VMSUP_ERR_IO,
                                          errno, "open directory '%s'", d->state);
                }
                if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
                        if (errno != EWOULDBLOCK)
                                return vmsup_fail(err, VMSUP_ERR_IO, errno, "lock '%s'", d->state);
                        return lock_busy(d, err);
                }
                if (fstat(fd, &st) < 0)
                        return vmsup_fail(err, VMSUP_ERR_IO, errno, "stat '%s'", d->state);
                /* as guest_dirs_prepare() would: nothing in it is read (markers) or removed
                 * (leftovers) before it is known to be ours */
                if (st.st_uid != geteuid())
                        return vmsup_fail(err, VMSUP_ERR_DENIED, 0,
                                          "directory '%s' is owned by uid %u, not by uid %u: refusing to use it",
                                          d->state, (unsigned) st.st_uid, (unsigned) geteuid());
                if (st.st_mode & S_IWOTH)
                        return vmsup_fail(err, VMSUP_ERR_DENIED, 0,
                                          "directory '%s' is writable by others (mode %04o): refusing to use it",
                                          d->state, (unsigned) (st.st_mode & 07777));
                if (lstat(d->state, &now) == 0 && now.st_dev == st.st_dev && now.st_ino == st.st_ino) {
                        if (ret_created)
                                *ret_created = made;
                        return TAKE_FD(fd);
                }
                if (!create)
                        return vmsup_fail(err, VMSUP_ERR_NOT_FOUND, 0, "guest state '%s': removed while it was locked",
                                          d->state);
        }
        return vmsup_fail(err, VMSUP_ERR_BUSY, 0, "lock '%s': it was removed and made again each time", d->state);
}

int guest_dirs_write_pid(const struct guest_dirs *d, vmsup_error **err) {
        char pidtext[64];

        snprintf(pidtext, sizeof(pidtext), "%d\n", (int) getpid());
        return replace_file(d->pidfile, pidtext, strlen(pidtext), 0644, err); /* gone with the run dir */
}

pid_t guest_dirs_lock_holder(const struct guest_dirs *d) {
        _cleanup_fclose_ FILE *f = NULL;
        char line[256];
        struct stat st;

        if (stat(d->state, &st) < 0 || !(f = fopen("/proc/locks", "re")))
                return 0;
        /* "1: FLOCK  ADVISORY  WRITE 4619 fe:00:10994226 0 EOF"; a waiter's line has "->" */
        while (fgets(line, sizeof(line), f)) {
                unsigned maj, min;
                unsigned long long ino;
                char type[16], mode[16];
                int pid;

                if (strstr(line, "->") ||
                    sscanf(line, "%*d: %15s %*s %15s %d %x:%x:%llu", type, mode, &pid, &maj, &min, &ino) != 6)
                        continue;
                if (streq(type, "FLOCK") && streq(mode, "WRITE") && pid > 0 && ino == (unsigned long long) st.st_ino &&
                    maj == major(st.st_dev) && min == minor(st.st_dev))
                        return (pid_t) pid;
        }
        return 0;
}

int guest_dirs_lock_stopped(const struct guest_dirs *d, bool missing_ok, int *ret_fd, vmsup_error **err) {
        _cleanup_close_ int fd = open(d->state, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

        if (fd < 0) {
                if (errno == ENOENT && missing_ok) {
                        *ret_fd = -1;
                        return 0;
                }
                return vmsup_fail(err, errno == ENOENT ? VMSUP_ERR_NOT_FOUND : VMSUP_ERR_IO, errno, "guest state '%s'",
                                  d->state);
        }
        if (flock(fd, LOCK_EX | LOCK_NB) < 0)
                return vmsup_fail(err, VMSUP_ERR_BUSY, 0, "the guest is running under vmsup: stop it first");
        *ret_fd = TAKE_FD(fd);
        return 0;
}

int guest_dirs_stamp(const char *path, const char *what, vmsup_error **err) {
        char line[160], when[32];
        time_t now = time(NULL);
        struct tm tm;

        if (access(path, F_OK) == 0)
                return 0;
        if (!gmtime_r(&now, &tm) || strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
                snprintf(when, sizeof(when), "%lld", (long long) now);
        snprintf(line, sizeof(line), "%s since %s\n", what, when);
        return write_file_atomic(path, line, strlen(line), 0600, err);
}

char *guest_dirs_stamp_read(const char *path, vmsup_error **err) {
        _cleanup_free_ char *dir = strdup(path), *base = strdup(path);
        _cleanup_close_ int dfd = -1;
        _cleanup_free_ void *data = NULL;
        size_t len = 0;
        char *line;
        int r;

        if (!dir || !base) {
                vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "read '%s'", path);
                return NULL;
        }
        dfd = open(dirname(dir), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd < 0) {
                if (errno != ENOENT)
                        vmsup_fail(err, VMSUP_ERR_IO, errno, "open '%s'", dir);
                return NULL;
        }
        r = file_read_at(dfd, dir, basename(base), 4096, false, &data, &len, err);
        if (r == -ENOENT) {
                *err = vmsup_error_free(*err);
                return NULL;
        }
        if (r < 0)
                return NULL;
        line = strndup(data, len);
        if (!line) {
                vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "read '%s'", path);
                return NULL;
        }
        line[strcspn(line, "\n")] = '\0';
        return line;
}

/* A regular file (not a symlink) of the template's size: OVMF reads the whole variable
 * store at a fixed size, and anything else is a damaged or foreign copy. */
static int check_vars(const struct guest_dirs *d, const char *template_path, off_t template_size, vmsup_error **err) {
        _cleanup_close_ int fd = open(d->vars, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
        struct stat st;

        if (fd < 0)
                return vmsup_fail(err, errno == ELOOP ? VMSUP_ERR_DATA : VMSUP_ERR_IO, errno,
                                  "the guest's OVMF VARS '%s'%s", d->vars, errno == ELOOP ? " is a symbolic link" : "");
        if (fstat(fd, &st) < 0)
                return vmsup_fail(err, VMSUP_ERR_IO, errno, "stat '%s'", d->vars);
        if (!S_ISREG(st.st_mode))
                return vmsup_fail(err, VMSUP_ERR_DATA, 0, "the guest's OVMF VARS '%s' is not a regular file", d->vars);
        if (st.st_size != template_size)
                return vmsup_fail(err, VMSUP_ERR_DATA, 0,
                                  "the guest's OVMF VARS '%s' is damaged: %lld bytes, where its template '%s' has %lld; "
                                  "it is left as it is: restore it from a backup, or remove it and start with "
                                  "--new-vars to begin again from the template (its Secure Boot settings and boot "
                                  "entries are then lost)",
                                  d->vars, (long long) st.st_size, template_path, (long long) template_size);
        return 0;
}

int guest_dirs_ensure_vars(const struct guest_dirs *d, const char *template_path, bool recreate, bool *ret_created,
                           vmsup_error **err) {
        _cleanup_close_ int in = -1;
        _cleanup_free_ char *buf = NULL, *stamp = NULL;
        struct stat st;
        size_t done = 0;
        int r;

        *ret_created = false;
        in = open(template_path, O_RDONLY | O_CLOEXEC);
        if (in < 0)
                return vmsup_fail(err, VMSUP_ERR_UNAVAILABLE, errno, "open OVMF VARS template '%s' ([qemu] ovmf_vars)",
                                  template_path);
        if (fstat(in, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size == 0 || st.st_size > 64 * 1024 * 1024)
                return vmsup_fail(err, VMSUP_ERR_UNAVAILABLE, 0,
                                  "OVMF VARS template '%s' is not a regular file of 1 byte to 64 MiB", template_path);
        if (faccessat(AT_FDCWD, d->vars, F_OK, AT_SYMLINK_NOFOLLOW) == 0)
                return check_vars(d, template_path, st.st_size, err);
        if (errno != ENOENT)
                return vmsup_fail(err, VMSUP_ERR_IO, errno, "the guest's OVMF VARS '%s'", d->vars);
        stamp = guest_dirs_stamp_read(d->vars_stamp, err);
        if (!stamp && *err)
                return -EIO;
        if (stamp && !recreate)
                return vmsup_fail(err, VMSUP_ERR_DATA, 0,
                                  "the guest's OVMF VARS '%s' is missing, but the guest has run with its own (%s: %s): "
                                  "refusing to start it on a fresh copy of the template, which would lose its Secure "
                                  "Boot settings and boot entries; restore the file from a backup, or start with "
                                  "--new-vars to begin again from the template",
                                  d->vars, GUEST_STAMP_VARS, stamp);
        buf = malloc((size_t) st.st_size);
        if (!buf)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "copy '%s'", template_path);
        while (done < (size_t) st.st_size) {
                ssize_t n = read(in, buf + done, (size_t) st.st_size - done);

                if (n < 0 && errno == EINTR)
                        continue;
                if (n <= 0)
                        return vmsup_fail(err, VMSUP_ERR_IO, n < 0 ? errno : EIO, "read '%s'", template_path);
                done += (size_t) n;
        }
        r = write_file_atomic(d->vars, buf, done, 0600, err);
        if (r < 0)
                return r;
        *ret_created = true;
        return 0;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
        (void) st;
        (void) ftw;
        if (flag == FTW_DP)
                return rmdir(path) < 0 && errno != ENOENT ? -1 : 0;
        return unlink(path) < 0 && errno != ENOENT ? -1 : 0;
}

int remove_tree(const char *dir, vmsup_error **err) {
        if (access(dir, F_OK) < 0 && errno == ENOENT)
                return 0;
        if (nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS) < 0)
                return vmsup_fail(err, VMSUP_ERR_IO, errno, "remove '%s'", dir);
        return 0;
}

int guest_dirs_remove(const struct guest_dirs *d, vmsup_error **err) {
        int r;

        _cleanup_free_ char *copy = strdup(d->state);
        const char *uuid = strrchr(d->state, '/');

        if (!copy || !uuid)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "remove '%s'", d->state);
        /* the state dir last: while it holds a marker, what is left is recognisable */
        if ((r = remove_tree(d->run, err)) < 0 || (r = remove_tree(d->logs, err)) < 0 ||
            (r = remove_tree(d->state, err)) < 0)
                return r;
        /* no file of the guest's ids is left: another guest may have them */
        return guest_ids_release(dirname(copy), uuid + 1, err);
}

int guest_dirs_remove_all(const struct guest_dirs *d, const char *secrets_dir, const char *uuid, vmsup_error **err) {
        struct localstore *store = NULL;
        int r;

        if (access(secrets_dir, F_OK) == 0) {
                r = localstore_open(secrets_dir, false, &store, err);
                if (r >= 0)
                        r = localstore_delete(store, uuid, err);
                localstore_free(store);
                if (r < 0)
                        return r;
        }
        return guest_dirs_remove(d, err);
}

/* The first line of a marker file, for messages; NULL when there is none. A marker that
 * cannot be read still counts as there. */
static char *marker_text(const char *path) {
        vmsup_error *err = NULL;
        char *line = guest_dirs_stamp_read(path, &err), *r = NULL;

        if (err) {
                if (asprintf(&r, "unreadable: %s", err->msg) < 0)
                        r = NULL;
                vmsup_error_free(err);
                return r ? r : strdup("(unreadable)");
        }
        if (line && !line[0]) {
                free(line);
                return strdup("(empty)");
        }
        return line;
}

int guest_dirs_check_markers(const struct guest_dirs *d, vmsup_error **err) {
        _cleanup_free_ char *out = marker_text(d->migrated_out), *in = marker_text(d->incoming);

        if (out)
                return vmsup_fail(err, VMSUP_ERR_DATA, 0,
                                  "this guest was handed over to another host by a live migration (%s) and must not "
                                  "start here; if it does not run there, see vmsup(8), MIGRATION, to take it back "
                                  "('vmsup resolve --keep'); else remove what is left here with 'vmsup delete'", out);
        if (in && strncmp(in, GUEST_INCOMING_COMMITTED " ", strlen(GUEST_INCOMING_COMMITTED " ")) == 0)
                return vmsup_fail(err, VMSUP_ERR_DATA, 0,
                                  "the source of an incoming live migration ordered this guest to run here, but never "
                                  "confirmed that it let go of its copy (%s); the guest may run on the source host: "
                                  "see vmsup(8), MIGRATION: 'vmsup resolve --keep' if this host's copy is the one, "
                                  "else 'vmsup delete'", in);
        if (in)
                return vmsup_fail(err, VMSUP_ERR_DATA, 0,
                                  "an incoming live migration of this guest did not complete (%s); it runs on the "
                                  "source host: remove what is left here with 'vmsup delete'", in);
        return 0;
}

bool guest_dirs_incoming_committed(const struct guest_dirs *d) {
        _cleanup_free_ char *in = d->incoming ? marker_text(d->incoming) : NULL; /* NULL: paths not made yet */

        /* an unreadable marker counts as committed: it may guard the only copy */
        return in && (strncmp(in, GUEST_INCOMING_COMMITTED " ", strlen(GUEST_INCOMING_COMMITTED " ")) == 0 ||
                      strncmp(in, "unreadable", 10) == 0 || streq(in, "(unreadable)"));
}
