#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/rotlog.h"
#include "common/util.h"

/* the backups are "<name>.<k>": k has at most 10 digits */
#define NAME_SUFFIX_MAX 12

struct rotlog {
        char *path;
        int dirfd; /* the file's directory: every rename and unlink is relative to it */
        char *name;
        int fd;
        uint64_t size, max_size;
        unsigned backups;
};

static int open_current(struct rotlog *l, bool truncate, vmsup_error **err) {
        struct stat st;
        int fd = openat(l->dirfd, l->name,
                        O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY | (truncate ? O_TRUNC : 0), 0600);

        if (fd < 0)
                return vmsup_fail(err, VMSUP_ERR_CANT_CREATE, errno, "open log '%s'", l->path);
        if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
                int e = errno;

                close(fd);
                return vmsup_fail(err, VMSUP_ERR_CANT_CREATE, S_ISREG(st.st_mode) ? e : EINVAL,
                                  "log '%s' is not a regular file", l->path);
        }
        closep(&l->fd);
        l->fd = fd;
        l->size = (uint64_t) st.st_size;
        return 0;
}

static void backup_name(const struct rotlog *l, unsigned k, char *buf, size_t len) {
        snprintf(buf, len, "%s.%u", l->name, k);
}

/* PATH.(b-2) -> PATH.(b-1), ..., PATH -> PATH.0; with no backups, PATH starts empty. */
static int rotate(struct rotlog *l, vmsup_error **err) {
        size_t len = strlen(l->name) + NAME_SUFFIX_MAX;
        char from[len], to[len];

        if (l->backups == 0)
                return open_current(l, true, err);
        backup_name(l, l->backups - 1, to, len);
        if (unlinkat(l->dirfd, to, 0) < 0 && errno != ENOENT)
                return vmsup_fail(err, VMSUP_ERR_IO, errno, "rotate log '%s': remove its oldest backup", l->path);
        for (unsigned k = l->backups - 1; k > 0; k--) {
                backup_name(l, k - 1, from, len);
                backup_name(l, k, to, len);
                if (renameat(l->dirfd, from, l->dirfd, to) < 0 && errno != ENOENT)
                        return vmsup_fail(err, VMSUP_ERR_IO, errno, "rotate log '%s': rename %s to %s", l->path, from, to);
        }
        backup_name(l, 0, to, len);
        if (renameat(l->dirfd, l->name, l->dirfd, to) < 0)
                return vmsup_fail(err, VMSUP_ERR_IO, errno, "rotate log '%s'", l->path);
        return open_current(l, true, err);
}

/* Backups beyond the number kept (the setting was lowered) would never be rotated away. */
static void remove_extra_backups(struct rotlog *l) {
        size_t len = strlen(l->name) + NAME_SUFFIX_MAX;
        char name[len];

        for (unsigned k = l->backups; k < l->backups + 1000; k++) {
                backup_name(l, k, name, len);
                if (unlinkat(l->dirfd, name, 0) < 0 && errno == ENOENT)
                        break;
        }
}

int rotlog_open(const char *path, uint64_t max_size, unsigned backups, struct rotlog **ret, vmsup_error **err) {
        struct rotlog *l;
        char *copy;
        int r;

        if (max_size == 0)
                return vmsup_fail(err, VMSUP_ERR_CONFIG, EINVAL, "log '%s': a maximum size of 0", path);
        l = calloc(1, sizeof(*l));
        if (l)
                l->fd = l->dirfd = -1;
        copy = strdup(path);
        if (!l || !copy || !(l->path = strdup(path)) || !(l->name = strdup(basename(copy)))) {
                free(copy);
                rotlog_free(l);
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "log '%s'", path);
        }
        strcpy(copy, path);
        l->max_size = max_size;
        l->backups = backups;
        l->dirfd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        free(copy);
        if (l->dirfd < 0) {
                r = vmsup_fail(err, VMSUP_ERR_CANT_CREATE, errno, "open the directory of log '%s'", path);
                rotlog_free(l);
                return r;
        }
        remove_extra_backups(l);
        if ((r = open_current(l, false, err)) < 0 || (l->size > max_size && (r = rotate(l, err)) < 0)) {
                rotlog_free(l);
                return r;
        }
        *ret = l;
        return 0;
}

struct rotlog *rotlog_free(struct rotlog *l) {
        if (!l)
                return NULL;
        closep(&l->fd);
        closep(&l->dirfd);
        free(l->path);
        free(l->name);
        free(l);
        return NULL;
}

const char *rotlog_path(const struct rotlog *l) {
        return l->path;
}

int rotlog_write(struct rotlog *l, const void *buf, size_t n, vmsup_error **err) {
        const char *p = buf;
        int r = 0;

        /* a write that fits a file goes whole into one; a larger one fills files to the
         * size: no file is ever larger */
        if (l->size > 0 && l->size + n > l->max_size)
                r = rotate(l, err);
        while (n > 0) {
                size_t room = l->size < l->max_size ? (size_t) (l->max_size - l->size) : 0;
                ssize_t w;

                if (room == 0 && r == 0) {
                        r = rotate(l, err);
                        continue;
                }
                w = write(l->fd, p, room && room < n ? room : n);

                if (w < 0 && errno == EINTR)
                        continue;
                if (w < 0)
                        return r < 0 ? r : vmsup_fail(err, VMSUP_ERR_IO, errno, "write log '%s'", l->path);
                p += w;
                n -= (size_t) w;
                l->size += (uint64_t) w;
        }
        return r;
}

/* Read the last want bytes of fd (size bytes long) into dst. */
static int read_tail(int fd, off_t size, size_t want, char *dst, const char *path, vmsup_error **err) {
        size_t got = 0;

        while (got < want) {
                ssize_t n = pread(fd, dst + got, want - got, size - (off_t) want + (off_t) got);

                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0)
                        return vmsup_fail(err, VMSUP_ERR_IO, errno, "read log '%s'", path);
                if (n == 0) /* truncated meanwhile: what is there */
                        break;
                got += (size_t) n;
        }
        return (int) got;
}

int rotlog_tail(const char *path, size_t nbytes, char **ret, size_t *ret_len, vmsup_error **err) {
        enum { MAX_FILES = 1000 };
        size_t plen = strlen(path) + NAME_SUFFIX_MAX, n_files = 0, covered = 0, need = nbytes, len = 0;
        char name[plen];
        struct piece {
                int fd;
                off_t size;
                char *data;
                size_t len;
        } *p = calloc(MAX_FILES, sizeof(*p));
        char *out = NULL;
        int r = 0;

        if (!p)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "read log '%s'", path);
        /* newest first, as Nova's _get_console_output_file reads: path, path.0, path.1, ...
         * up to the first missing one, until enough bytes are covered; all opened before
         * any is read */
        for (size_t i = 0; i < MAX_FILES && covered < nbytes; i++) {
                struct stat st;
                int fd;

                if (i == 0)
                        snprintf(name, plen, "%s", path);
                else
                        snprintf(name, plen, "%s.%zu", path, i - 1);
                fd = open(name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY);
                if (fd < 0 && errno == ENOENT)
                        break;
                if (fd < 0) {
                        r = vmsup_fail(err, VMSUP_ERR_IO, errno, "open log '%s'", name);
                        goto out;
                }
                p[n_files++].fd = fd;
                if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
                        r = vmsup_fail(err, VMSUP_ERR_DATA, 0, "log '%s' is not a regular file", name);
                        goto out;
                }
                p[n_files - 1].size = st.st_size;
                covered += (size_t) st.st_size;
        }
        if (n_files == 0) {
                r = vmsup_fail(err, VMSUP_ERR_NOT_FOUND, ENOENT, "no log '%s'", path);
                goto out;
        }
        for (size_t i = 0; i < n_files && need > 0; i++) {
                size_t want = (size_t) p[i].size < need ? (size_t) p[i].size : need;
                int got;

                if (want == 0)
                        continue;
                if (!(p[i].data = malloc(want))) {
                        r = vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "read log '%s'", path);
                        goto out;
                }
                if ((got = read_tail(p[i].fd, p[i].size, want, p[i].data, path, err)) < 0) {
                        r = got;
                        goto out;
                }
                p[i].len = (size_t) got;
                need -= (size_t) got;
                len += (size_t) got;
        }
        if (!(out = malloc(len + 1))) {
                r = vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "read log '%s'", path);
                goto out;
        }
        len = 0;
        for (size_t i = n_files; i > 0; i--)
                if (p[i - 1].len) {
                        memcpy(out + len, p[i - 1].data, p[i - 1].len);
                        len += p[i - 1].len;
                }
        out[len] = '\0';
        *ret = TAKE_PTR(out);
        *ret_len = len;
out:
        for (size_t i = 0; i < n_files; i++) {
                close(p[i].fd);
                free(p[i].data);
        }
        free(p);
        free(out);
        return r;
}

char *rotlog_tail_lines(const char *path, int lines) {
        _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY);
        char buf[2048];
        off_t size;
        ssize_t n;
        char *p;
        int seen = 0;

        if (fd < 0)
                return strdup("(no log)");
        size = lseek(fd, 0, SEEK_END);
        if (size < 0 || lseek(fd, size > (off_t) sizeof(buf) - 1 ? size - (off_t) sizeof(buf) + 1 : 0, SEEK_SET) < 0)
                return strdup("(unreadable log)");
        n = read(fd, buf, sizeof(buf) - 1);
        if (n <= 0)
                return strdup("(empty log)");
        buf[n] = '\0';
        while (n > 0 && buf[n - 1] == '\n')
                buf[--n] = '\0';
        for (p = buf + n; p > buf; p--)
                if (p[-1] == '\n' && ++seen == lines)
                        break;
        for (char *q = p; *q; q++)
                if (*q == '\n')
                        *q = '|';
        return strdup(p);
}
