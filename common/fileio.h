/* Whole-file reads and durable atomic replacement, relative to a directory fd. */
#ifndef VMSUP_COMMON_FILEIO_H
#define VMSUP_COMMON_FILEIO_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "common/error.h"

/* Replace dirfd/name with data, durably and atomically: a new temp file in the same
 * directory (O_EXCL, mode), write, fsync, rename over name, fsync the directory. A crash
 * at any instant leaves the old or the new content under name, never a mix; a temp file
 * (".<name>.tmp-XXXXXXXX") may be left behind. dir is for messages only. */
int file_write_atomic_at(int dirfd, const char *dir, const char *name, const void *data, size_t len, mode_t mode,
                         vmsup_error **err);

/* The same for a path (its directory is opened here). */
int write_file_atomic(const char *path, const void *data, size_t len, mode_t mode, vmsup_error **err);

/* Atomic but not durable: as above without either fsync, so readers see the old or the
 * new content, never a mix, but a crash of the host may lose the new one (or leave an
 * empty file). For files that are rewritten at every start or live on tmpfs (a pid file,
 * the spec copy, swtpm's live state next to its sealed copy), where two fsyncs (a few ms
 * each on a disk) would be spent on the start for nothing. */
int file_replace_at(int dirfd, const char *dir, const char *name, const void *data, size_t len, mode_t mode,
                    vmsup_error **err);
int replace_file(const char *path, const void *data, size_t len, mode_t mode, vmsup_error **err);

/* Read all of dirfd/name (a regular file, not a symlink, at most max bytes) into a new
 * buffer: secmem_alloc()'d when secret (free it with secmem_free), malloc'd otherwise.
 * A missing file fails with errno ENOENT (VMSUP_ERR_NOT_FOUND). */
int file_read_at(int dirfd, const char *dir, const char *name, size_t max, bool secret, void **ret_data,
                 size_t *ret_len, vmsup_error **err);

/* Write all of data to fd (retrying short writes and EINTR); 0 or -errno. */
int fd_write_all(int fd, const void *data, size_t len);

/* Create each missing component of path with mode (mkdir -p). */
int mkdir_parents(const char *path, mode_t mode, vmsup_error **err);

#endif
