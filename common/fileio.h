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
