#include "config.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/fileio.h"
#include "common/secmem.h"
#include "common/util.h"
#include "common/vtpm.h"
#include "secrets/barbican.h"
#include "secrets/localstore.h"

#define KEY_SECRET_ID "secret_id="
#define KEY_PASSPHRASE "passphrase="
/* The one valid size: both lines with their newlines. */
#define FILE_LEN (strlen(KEY_SECRET_ID) + LOCALSTORE_UUID_LEN + 1 + strlen(KEY_PASSPHRASE) + BARBICAN_PASSPHRASE_LEN + 1)
#define FILE_MAX 4096 /* anything bigger is not ours: refused before a byte is read */

struct localstore {
        char *path;
        int dirfd;
        dev_t dev;
        ino_t ino;
};

static void closedirp(DIR **d) {
        if (*d)
                closedir(*d);
}

static bool is_passphrase(const char *s, size_t len) {
        if (len != BARBICAN_PASSPHRASE_LEN)
                return false;
        for (size_t i = 0; i < len; i++)
                if (!isalnum((unsigned char) s[i]) && s[i] != '+' && s[i] != '/')
                        return false;
        return true;
}

/* An insecure store: VMSUP_ERR_DENIED with the message as given (no strerror: the
 * message is the whole story), returning -errnum. */
static int refuse(vmsup_error **err, int errnum, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int refuse(vmsup_error **err, int errnum, const char *fmt, ...) {
        va_list ap;

        va_start(ap, fmt);
        vmsup_vfail(err, VMSUP_ERR_DENIED, 0, fmt, ap);
        va_end(ap);
        return -errnum;
}

/* The owner and mode rules shared by the directory and its files. */
static int check_owner_mode(const char *what, const char *path, const struct stat *st, unsigned want,
                            vmsup_error **err) {
        uid_t euid = geteuid();
        unsigned mode = st->st_mode & 07777;

        if (st->st_uid != euid && euid == 0)
                return refuse(err, EPERM, "%s '%s': owned by uid %u, not root", what, path, (unsigned) st->st_uid);
        if (st->st_uid != euid)
                return refuse(err, EPERM, "%s '%s': owned by uid %u, not uid %u (vmsup's)", what, path,
                              (unsigned) st->st_uid, (unsigned) euid);
        if (mode & 077)
                return refuse(err, EPERM, "%s '%s': mode %04o gives %s access; it must be %04o", what, path, mode,
                              (mode & 070) && (mode & 07) ? "the group and other users"
                              : (mode & 070)              ? "the group"
                                                          : "other users",
                              want);
        return 0;
}

static int check_dir_stat(const char *path, const struct stat *st, vmsup_error **err) {
        if (S_ISLNK(st->st_mode))
                return refuse(err, ELOOP, "local secret store '%s': is a symbolic link", path);
        if (!S_ISDIR(st->st_mode))
                return refuse(err, ENOTDIR, "local secret store '%s': is not a directory", path);
        return check_owner_mode("local secret store", path, st, 0700, err);
}

/* mkdir -p, the last component 0700 and its missing parents 0755. */
static int make_dirs(const char *dir, vmsup_error **err) {
        _cleanup_free_ char *p = strdup(dir);
        size_t len;

        if (!p)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "create local secret store '%s'", dir);
        /* "dir/": the last mkdir must be the one with 0700 */
        for (len = strlen(p); len > 1 && p[len - 1] == '/'; len--)
                p[len - 1] = '\0';
        for (char *slash = strchr(p + 1, '/'); slash; slash = strchr(slash + 1, '/')) {
                *slash = '\0';
                if (mkdir(p, 0755) < 0 && errno != EEXIST)
                        return vmsup_fail(err, VMSUP_ERR_CANT_CREATE, errno, "create '%s' for local secret store '%s'", p,
                                          dir);
                *slash = '/';
        }
        /* A component that exists may be a file or a symlink: open() below judges that. */
        if (mkdir(p, 0700) < 0 && errno != EEXIST)
                return vmsup_fail(err, VMSUP_ERR_CANT_CREATE, errno, "create local secret store '%s'", dir);
        return 0;
}

int localstore_open(const char *dir, bool create, struct localstore **ret, vmsup_error **err) {
        _cleanup_close_ int fd = -1;
        struct localstore *s;
        struct stat st;
        int r;

        if (!dir || dir[0] == '\0')
                return vmsup_fail(err, VMSUP_ERR_CONFIG, EINVAL, "local secret store: no directory configured");
        if (create && (r = make_dirs(dir, err)) < 0)
                return r;
        fd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0) {
                int e = errno;

                if (e == ENOENT)
                        return vmsup_fail(err, VMSUP_ERR_NOT_FOUND, e, "local secret store '%s'", dir);
                /* ELOOP or ENOTDIR: say which, from the entry itself */
                if (lstat(dir, &st) == 0)
                        return check_dir_stat(dir, &st, err);
                return vmsup_fail(err, VMSUP_ERR_IO, e, "open local secret store '%s'", dir);
        }
        if (fstat(fd, &st) < 0)
                return vmsup_fail(err, VMSUP_ERR_IO, errno, "stat local secret store '%s'", dir);
        if ((r = check_dir_stat(dir, &st, err)) < 0)
                return r;
        s = calloc(1, sizeof(*s));
        if (!s || !(s->path = strdup(dir))) {
                free(s);
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "open local secret store '%s'", dir);
        }
        s->dev = st.st_dev;
        s->ino = st.st_ino;
        s->dirfd = TAKE_FD(fd);
        *ret = s;
        return 0;
}

struct localstore *localstore_free(struct localstore *s) {
        if (!s)
                return NULL;
        if (s->dirfd >= 0)
                close(s->dirfd);
        free(s->path);
        free(s);
        return NULL;
}

const char *localstore_path(const struct localstore *s) {
        return s->path;
}

/* Before each use: the fd still passes the checks (no chmod/chown since open), and the
 * path still names this very directory (not renamed away with another dir or a symlink
 * put in its place), so what we touch is what an admin looking at the path sees. */
static int verify_dir(struct localstore *s, vmsup_error **err) {
        struct stat st, at;
        int r;

        if (fstat(s->dirfd, &st) < 0)
                return vmsup_fail(err, VMSUP_ERR_IO, errno, "stat local secret store '%s'", s->path);
        if ((r = check_dir_stat(s->path, &st, err)) < 0)
                return r;
        if (fstatat(AT_FDCWD, s->path, &at, AT_SYMLINK_NOFOLLOW) < 0)
                return vmsup_fail(err, VMSUP_ERR_DENIED, errno,
                                  "local secret store '%s': moved or removed since it was opened", s->path);
        if (S_ISLNK(at.st_mode))
                return check_dir_stat(s->path, &at, err);
        if (st.st_dev != s->dev || st.st_ino != s->ino || at.st_dev != s->dev || at.st_ino != s->ino)
                return refuse(err, ESTALE, "local secret store '%s': replaced by another directory since it was opened",
                              s->path);
        return 0;
}

static int check_uuid(const struct localstore *s, const char *uuid, vmsup_error **err) {
        /* Also what keeps the name a single path component ("..", "/" are not UUIDs). */
        if (!uuid_is_valid(uuid))
                return vmsup_fail(err, VMSUP_ERR_DATA, EINVAL, "local secret store '%s': '%s' is not a guest UUID",
                                  s->path, uuid ? uuid : "(null)");
        return 0;
}

static int read_fd(int fd, char *buf, size_t len) {
        size_t done = 0;

        while (done < len) {
                ssize_t n = read(fd, buf + done, len - done);

                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0)
                        return -errno;
                if (n == 0)
                        return -EIO; /* shrank under us */
                done += (size_t) n;
        }
        return 0;
}

/* Open one of the store's files (name in it; file, its path, for messages) and check what
 * was opened: a regular file, root's, 0600. Open first, then judge what was opened: never
 * check a path and open it after. O_NONBLOCK: a FIFO planted here must not block the open
 * or the read. Returns the fd, 0 when there is no such file, or a negative error. */
static int open_checked(struct localstore *s, const char *name, const char *file, struct stat *st,
                        vmsup_error **err) {
        _cleanup_close_ int fd = openat(s->dirfd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
        int r;

        if (fd < 0) {
                if (errno == ENOENT)
                        return 0;
                if (errno == ELOOP)
                        return refuse(err, ELOOP, "local secret store: '%s': is a symbolic link", file);
                return vmsup_fail(err, VMSUP_ERR_IO, errno, "local secret store: open '%s'", file);
        }
        if (fstat(fd, st) < 0)
                return vmsup_fail(err, VMSUP_ERR_IO, errno, "local secret store: stat '%s'", file);
        if (!S_ISREG(st->st_mode))
                return refuse(err, EPERM, "local secret store: '%s': is not a regular file", file);
        if ((r = check_owner_mode("local secret store: file", file, st, 0600, err)) < 0)
                return r;
        return TAKE_FD(fd);
}

int localstore_get(struct localstore *s, const char *uuid, char **ret_passphrase,
                   char ret_secret_id[LOCALSTORE_UUID_LEN + 1], vmsup_error **err) {
        _cleanup_close_ int fd = -1;
        _cleanup_secmem_ char *buf = NULL;
        char file[PATH_MAX], *pass, *id, *p;
        struct stat st;
        int r;

        if ((r = check_uuid(s, uuid, err)) < 0 || (r = verify_dir(s, err)) < 0)
                return r;
        snprintf(file, sizeof(file), "%s/%s", s->path, uuid);
        if ((r = open_checked(s, uuid, file, &st, err)) <= 0)
                return r; /* none (0), or refused */
        fd = r;
        if (st.st_size > FILE_MAX)
                return vmsup_fail(err, VMSUP_ERR_DATA, 0,
                                  "local secret store: '%s': %jd bytes, more than the %d a store file has at most", file,
                                  (intmax_t) st.st_size, FILE_MAX);
        if ((size_t) st.st_size != FILE_LEN)
                goto bad;
        buf = secmem_alloc(FILE_LEN + 1);
        if (!buf)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "local secret store: read '%s'", file);
        if ((r = read_fd(fd, buf, FILE_LEN)) < 0)
                return vmsup_fail(err, VMSUP_ERR_IO, -r, "local secret store: read '%s'", file);

        p = buf;
        if (strncmp(p, KEY_SECRET_ID, strlen(KEY_SECRET_ID)) != 0)
                goto bad;
        id = p += strlen(KEY_SECRET_ID);
        p += LOCALSTORE_UUID_LEN;
        if (*p != '\n')
                goto bad;
        *p++ = '\0';
        if (!barbican_is_uuid(id) || strncmp(p, KEY_PASSPHRASE, strlen(KEY_PASSPHRASE)) != 0)
                goto bad;
        pass = p += strlen(KEY_PASSPHRASE);
        p += BARBICAN_PASSPHRASE_LEN;
        if (*p != '\n' || !is_passphrase(pass, BARBICAN_PASSPHRASE_LEN))
                goto bad;

        *ret_passphrase = secmem_alloc(BARBICAN_PASSPHRASE_LEN + 1);
        if (!*ret_passphrase)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "local secret store: read '%s'", file);
        memcpy(*ret_passphrase, pass, BARBICAN_PASSPHRASE_LEN);
        memcpy(ret_secret_id, id, LOCALSTORE_UUID_LEN + 1);
        return 1;
bad:
        /* Say nothing of the content: it may be most of a passphrase. */
        return vmsup_fail(err, VMSUP_ERR_DATA, 0, "local secret store: '%s': not a vTPM passphrase", file);
}

int localstore_put(struct localstore *s, const char *uuid, const char *passphrase, const char *secret_id,
                   vmsup_error **err) {
        _cleanup_secmem_ char *buf = NULL;
        int r;

        if ((r = check_uuid(s, uuid, err)) < 0)
                return r;
        if (!passphrase || !is_passphrase(passphrase, strnlen(passphrase, BARBICAN_PASSPHRASE_LEN + 1)))
                return vmsup_fail(err, VMSUP_ERR_DATA, EINVAL, "local secret store: secret of guest %s: not a vTPM passphrase",
                                  uuid);
        if (!barbican_is_uuid(secret_id))
                return vmsup_fail(err, VMSUP_ERR_DATA, EINVAL,
                                  "local secret store: secret of guest %s: '%s' is not a Barbican secret id", uuid,
                                  secret_id ? secret_id : "(null)");
        if ((r = verify_dir(s, err)) < 0)
                return r;
        buf = secmem_alloc(FILE_LEN + 1);
        if (!buf)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "local secret store: write '%s/%s'", s->path, uuid);
        snprintf(buf, FILE_LEN + 1, KEY_SECRET_ID "%s\n" KEY_PASSPHRASE "%.*s\n", secret_id,
                 BARBICAN_PASSPHRASE_LEN, passphrase);
        r = file_write_atomic_at(s->dirfd, s->path, uuid, buf, FILE_LEN, 0600, err);
        if (r < 0)
                return vmsup_error_prefix(err, "local secret store");
        return 0;
}

int localstore_delete(struct localstore *s, const char *uuid, vmsup_error **err) {
        char anchor[LOCALSTORE_UUID_LEN + sizeof(LOCALSTORE_ANCHOR_SUFFIX)];
        int r;

        if ((r = check_uuid(s, uuid, err)) < 0 || (r = verify_dir(s, err)) < 0)
                return r;
        /* the anchor goes with the secret: a guest deleted here is gone, and one that
         * migrated away has its anchor on the destination now */
        snprintf(anchor, sizeof(anchor), "%s" LOCALSTORE_ANCHOR_SUFFIX, uuid);
        if (unlinkat(s->dirfd, anchor, 0) < 0 && errno != ENOENT)
                return vmsup_fail(err, VMSUP_ERR_IO, errno, "local secret store: remove '%s/%s'", s->path, anchor);
        if (unlinkat(s->dirfd, uuid, 0) < 0) {
                if (errno == ENOENT) {
                        if (fsync(s->dirfd) < 0)
                                return vmsup_fail(err, VMSUP_ERR_IO, errno, "local secret store: sync '%s'", s->path);
                        return 0;
                }
                return vmsup_fail(err, VMSUP_ERR_IO, errno, "local secret store: remove '%s/%s'", s->path, uuid);
        }
        if (fsync(s->dirfd) < 0)
                return vmsup_fail(err, VMSUP_ERR_IO, errno, "local secret store: sync '%s'", s->path);
        return 1;
}

#define ANCHOR_KEY "generation="
#define ANCHOR_MAX 64

int localstore_anchor_get(struct localstore *s, const char *uuid, uint64_t *ret_generation, vmsup_error **err) {
        char name[LOCALSTORE_UUID_LEN + sizeof(LOCALSTORE_ANCHOR_SUFFIX)], file[PATH_MAX], buf[ANCHOR_MAX + 1], *end;
        _cleanup_close_ int fd = -1;
        unsigned long long v;
        struct stat st;
        int r;

        if ((r = check_uuid(s, uuid, err)) < 0 || (r = verify_dir(s, err)) < 0)
                return r;
        snprintf(name, sizeof(name), "%s" LOCALSTORE_ANCHOR_SUFFIX, uuid);
        snprintf(file, sizeof(file), "%s/%s", s->path, name);
        if ((r = open_checked(s, name, file, &st, err)) <= 0)
                return r; /* none (0), or refused */
        fd = r;
        if (st.st_size < (off_t) strlen(ANCHOR_KEY) + 2 || st.st_size > ANCHOR_MAX)
                goto bad;
        if ((r = read_fd(fd, buf, (size_t) st.st_size)) < 0)
                return vmsup_fail(err, VMSUP_ERR_IO, -r, "local secret store: read '%s'", file);
        buf[st.st_size] = '\0';
        if (strncmp(buf, ANCHOR_KEY, strlen(ANCHOR_KEY)) != 0 || !isdigit((unsigned char) buf[strlen(ANCHOR_KEY)]))
                goto bad;
        errno = 0;
        v = strtoull(buf + strlen(ANCHOR_KEY), &end, 10);
        if (errno || !streq(end, "\n"))
                goto bad;
        *ret_generation = v;
        return 1;
bad:
        return vmsup_fail(err, VMSUP_ERR_DATA, 0, "local secret store: '%s': not a TPM state generation (%s<number>)",
                          file, ANCHOR_KEY);
}

int localstore_anchor_put(struct localstore *s, const char *uuid, uint64_t generation, vmsup_error **err) {
        char name[LOCALSTORE_UUID_LEN + sizeof(LOCALSTORE_ANCHOR_SUFFIX)], text[ANCHOR_MAX];
        int r;

        if ((r = check_uuid(s, uuid, err)) < 0 || (r = verify_dir(s, err)) < 0)
                return r;
        snprintf(name, sizeof(name), "%s" LOCALSTORE_ANCHOR_SUFFIX, uuid);
        snprintf(text, sizeof(text), ANCHOR_KEY "%" PRIu64 "\n", generation);
        r = file_write_atomic_at(s->dirfd, s->path, name, text, strlen(text), 0600, err);
        if (r < 0)
                return vmsup_error_prefix(err, "local secret store: TPM state anchor of guest %s", uuid);
        return 0;
}

static int entry_cmp(const void *a, const void *b) {
        return strcmp(((const struct localstore_entry *) a)->uuid, ((const struct localstore_entry *) b)->uuid);
}

int localstore_list(struct localstore *s, struct localstore_entry **ret, size_t *ret_n, vmsup_error **err) {
        _cleanup_free_ struct localstore_entry *v = NULL;
        __attribute__((cleanup(closedirp))) DIR *d = NULL;
        size_t n = 0, cap = 0;
        struct dirent *de;
        int fd, r;

        if ((r = verify_dir(s, err)) < 0)
                return r;
        fd = openat(s->dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0 || !(d = fdopendir(fd))) {
                r = errno;
                if (fd >= 0)
                        close(fd);
                return vmsup_fail(err, VMSUP_ERR_IO, r, "local secret store: list '%s'", s->path);
        }
        while ((errno = 0, de = readdir(d))) {
                _cleanup_secmem_ char *pass = NULL;
                char id[LOCALSTORE_UUID_LEN + 1];

                if (!uuid_is_valid(de->d_name))
                        continue;
                r = localstore_get(s, de->d_name, &pass, id, err);
                if (r < 0)
                        return r;
                if (r == 0)
                        continue; /* removed meanwhile */
                if (n == cap) {
                        struct localstore_entry *nv = reallocarray(v, cap ? cap * 2 : 8, sizeof(*v));

                        if (!nv)
                                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "local secret store: list '%s'", s->path);
                        v = nv;
                        cap = cap ? cap * 2 : 8;
                }
                memcpy(v[n].uuid, de->d_name, LOCALSTORE_UUID_LEN + 1);
                memcpy(v[n].secret_id, id, LOCALSTORE_UUID_LEN + 1);
                n++;
        }
        if (errno != 0)
                return vmsup_fail(err, VMSUP_ERR_IO, errno, "local secret store: list '%s'", s->path);
        if (n > 0)
                qsort(v, n, sizeof(*v), entry_cmp);
        *ret = TAKE_PTR(v);
        *ret_n = n;
        return 0;
}
