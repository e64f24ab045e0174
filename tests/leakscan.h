/* Look for a byte string (a secret, or a marker standing in for one) wherever it must
 * never end up: other processes' command lines and environments, and files on disk. */
#ifndef VMSUP_TESTS_LEAKSCAN_H
#define VMSUP_TESTS_LEAKSCAN_H

#include <stddef.h>
#include <sys/types.h>

/* Search /proc/PID/cmdline and /proc/PID/environ of each of pids, and every regular file
 * under each of dirs (recursively, symlinks not followed), for needle. Returns the number
 * of places it occurs in; *ret_where (malloc'd, one place a line) names them. */
int leakscan(const void *needle, size_t len, const pid_t *pids, size_t n_pids, const char *const *dirs,
             size_t n_dirs, char **ret_where);

#endif
