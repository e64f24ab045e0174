#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/fileio.h"
#include "common/secmem.h"
#include "common/util.h"

int fd_write_all(int fd, const void *data, size_t len) {
        const uint8_t *p = data;

        while (len > 0) {
                ssize_t n = write(fd, p, len);

                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0)
                        return -errno;
                p += n;
                len -= (size_t) n;
        }
        return 0;
}

/* Create a fresh temp file next to name. O_EXCL: never write through a file or symlink
 * someone planted under a guessable name. */
static int create_temp(int dirfd, const char *name, mode_t mode, char *ret_tmp, size_t tmp_size) {
        for (int attempt = 0; attempt < 16; attempt++) {
                uint32_t rnd;
                int fd;

                if (getrandom(&rnd, sizeof(rnd), GRND_NONBLOCK) != sizeof(rnd))
                        rnd = (uint32_t) getpid() * 2654435761u + (uint32_t) attempt;
                if (snprintf(ret_tmp, tmp_size, ".%s.tmp-%08x", name, rnd) >= (int) tmp_size)
                        return -ENAMETOOLONG;
                fd = openat(dirfd, ret_tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
                if (fd >= 0 || errno != EEXIST)
                        return fd >= 0 ? fd : -errno;
        }
        return -EEXIST;
}

static int write_atomic(int dirfd, const char *dir, const char *name, const void *data, size_t len, mode_t mode,
                        bool durable, vmsup_error **err) {
        _cleanup_close_ int fd = -1;
        char tmp[256];
        int r;

        fd = create_temp(dirfd, name, mode, tmp, sizeof(tmp));
        if (fd < 0)
                return vmsup_fail(err, VMSUP_ERR_CANT_CREATE, -fd, "create a temp file for '%s/%s'", dir, name);
        r = fd_write_all(fd, data, len);
        if (r < 0) {
                unlinkat(dirfd, tmp, 0);
                return vmsup_fail(err, VMSUP_ERR_IO, -r, "write '%s/%s'", dir, tmp);
        }
        /* fchmod: the umask may have narrowed mode; fsync before the rename, or a crash
         * could leave the new name pointing at an empty or partial file. */
        if (fchmod(fd, mode) < 0 || (durable && fsync(fd) < 0)) {
                r = errno;
                unlinkat(dirfd, tmp, 0);
                return vmsup_fail(err, VMSUP_ERR_IO, r, "sync '%s/%s'", dir, tmp);
        }
        if (renameat(dirfd, tmp, dirfd, name) < 0) {
                r = errno;
                unlinkat(dirfd, tmp, 0);
                return vmsup_fail(err, VMSUP_ERR_IO, r, "rename '%s/%s' to '%s'", dir, tmp, name);
        }
        /* The rename itself is durable only once the directory is. */
        if (durable && fsync(dirfd) < 0)
                return vmsup_fail(err, VMSUP_ERR_IO, errno, "sync the directory '%s'", dir);
        return 0;
}

int file_write_atomic_at(int dirfd, const char *dir, const char *name, const void *data, size_t len, mode_t mode,
                         vmsup_error **err) {
        return write_atomic(dirfd, dir, name, data, len, mode, true, err);
}

int file_replace_at(int dirfd, const char *dir, const char *name, const void *data, size_t len, mode_t mode,
                    vmsup_error **err) {
        return write_atomic(dirfd, dir, name, data, len, mode, false, err);
}

static int write_path(const char *path, const void *data, size_t len, mode_t mode, bool durable, vmsup_error **err) {
        _cleanup_free_ char *dircopy = strdup(path), *basecopy = strdup(path);
        _cleanup_close_ int dfd = -1;
        const char *dir;

        if (!dircopy || !basecopy)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "write '%s'", path);
        dir = dirname(dircopy);
        dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd < 0)
                return vmsup_fail(err, VMSUP_ERR_CANT_CREATE, errno, "open the directory of '%s'", path);
        return write_atomic(dfd, dir, basename(basecopy), data, len, mode, durable, err);
}

int write_file_atomic(const char *path, const void *data, size_t len, mode_t mode, vmsup_error **err) {
        return write_path(path, data, len, mode, true, err);
}

int replace_file(const char *path, const void *data, size_t len, mode_t mode, vmsup_error **err) {
        return write_path(path, data, len, mode, false, err);
}

int file_read_at(int dirfd, const char *dir, const char *name, size_t max, bool secret, void **ret_data,
                 size_t *ret_len, vmsup_error **err) {
        _cleanup_close_ int fd = -1;
        struct stat st;
        uint8_t *buf;
        size_t len, done = 0;

        fd = openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0)
                return vmsup_fail(err, errno == ENOENT ? VMSUP_ERR_NOT_FOUND : VMSUP_ERR_IO, errno, "open '%s/%s'", dir,
                                  name);
        if (fstat(fd, &st) < 0)
                return vmsup_fail(err, VMSUP_ERR_IO, errno, "stat '%s/%s'", dir, name);
        if (!S_ISREG(st.st_mode))
                return vmsup_fail(err, VMSUP_ERR_DATA, 0, "'%s/%s' is not a regular file", dir, name);
        if ((uintmax_t) st.st_size > max)
                return vmsup_fail(err, VMSUP_ERR_DATA, 0, "'%s/%s' is %jd bytes, more than the %zu expected at most",
                                  dir, name, (intmax_t) st.st_size, max);
        len = (size_t) st.st_size;
        buf = secret ? secmem_alloc(len) : malloc(len ? len : 1);
        if (!buf)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "read '%s/%s'", dir, name);
        while (done < len) {
                ssize_t n = read(fd, buf + done, len - done);

                if (n < 0 && errno == EINTR)
                        continue;
                if (n <= 0) {
                        int e = n < 0 ? errno : EIO; /* shrank under us */

                        if (secret)
                                secmem_free(buf);
                        else
                                free(buf);
                        return vmsup_fail(err, VMSUP_ERR_IO, e, "read '%s/%s'", dir, name);
                }
                done += (size_t) n;
        }
        *ret_data = buf;
        *ret_len = len;
        return 0;
}

int mkdir_parents(const char *path, mode_t mode, vmsup_error **err) {
        _cleanup_free_ char *copy = strdup(path);

        if (!copy)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "mkdir '%s'", path);
        for (char *p = copy + 1; *p; p++) {
                if (*p != '/')
                        continue;
                *p = '\0';
                if (mkdir(copy, mode) < 0 && errno != EEXIST)
                        return vmsup_fail(err, VMSUP_ERR_CANT_CREATE, errno, "create directory '%s'", copy);
                *p = '/';
        }
        if (mkdir(copy, mode) < 0 && errno != EEXIST)
                return vmsup_fail(err, VMSUP_ERR_CANT_CREATE, errno, "create directory '%s'", copy);
        return 0;
}
