/* A log file bounded by rotation, as libvirt's virtlogd keeps a guest's console log:
 * PATH is written until the next write would take it over max_size, then PATH.(n-2) is
 * renamed PATH.(n-1), ..., PATH becomes PATH.0 and a new PATH is started, keeping at
 * most `backups` old files. PATH.0 is the newest backup: the order Nova's
 * get_console_output walks (console.log, console.log.0, console.log.1, ...). A write
 * that fits in a file is not split; one larger than max_size fills files to max_size. No
 * file is larger than max_size, so at most (backups + 1) x max_size bytes are kept. */
#ifndef VMSUP_COMMON_ROTLOG_H
#define VMSUP_COMMON_ROTLOG_H

#include <stddef.h>
#include <stdint.h>

#include "common/error.h"

struct rotlog;

/* Open (append to) path, mode 0600, not through a symlink; a file already larger than
 * max_size is rotated first. max_size 0 is refused. */
int rotlog_open(const char *path, uint64_t max_size, unsigned backups, struct rotlog **ret, vmsup_error **err);
struct rotlog *rotlog_free(struct rotlog *l);

/* Append all of buf, rotating before it when it would not fit. A failed rotation keeps
 * writing to the current file rather than lose what the guest wrote (the error says
 * why; the next write tries again): only then may the file grow beyond max_size. */
int rotlog_write(struct rotlog *l, const void *buf, size_t n, vmsup_error **err);

const char *rotlog_path(const struct rotlog *l);

/* The newest min(nbytes, all kept) bytes across path and its backups, oldest first, in a
 * new buffer (*ret_len bytes, NUL-terminated for convenience). The files are opened
 * newest first before any is read, so a rotation that happens meanwhile does not make
 * the result skip bytes. No file at all: VMSUP_ERR_NOT_FOUND. */
int rotlog_tail(const char *path, size_t nbytes, char **ret, size_t *ret_len, vmsup_error **err);

/* The last `lines` lines of path (backups not read), newlines shown as '|': for error
 * messages ("(no log)" and "(empty log)" when there is nothing). Never NULL but on ENOMEM. */
char *rotlog_tail_lines(const char *path, int lines);

#endif
