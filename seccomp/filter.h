/* The supervisor's seccomp filter (libseccomp, x86_64): an allowlist, loaded on vmsup run
 * before the first child starts. Children inherit it (see docs/security.md). */
#ifndef VMSUP_SECCOMP_FILTER_H
#define VMSUP_SECCOMP_FILTER_H

#include "common/error.h"

/* [security] seccomp: what a call outside the allowlist does. */
enum seccomp_filter_mode {
        SECCOMP_FILTER_KILL, /* the process dies of SIGSYS (SCMP_ACT_KILL_PROCESS) */
        SECCOMP_FILTER_LOG,  /* allowed, logged by the kernel's audit (development) */
        SECCOMP_FILTER_OFF,  /* no filter */
};

/* "kill", "log", "off"; -EINVAL for anything else. */
int seccomp_filter_mode_from_string(const char *s, enum seccomp_filter_mode *ret);
const char *seccomp_filter_mode_to_string(enum seccomp_filter_mode mode);

/* Build the filter and load it on the calling process (all its threads); sets
 * PR_SET_NO_NEW_PRIVS. SECCOMP_FILTER_OFF loads nothing and returns 0. Irreversible. */
int seccomp_filter_load(enum seccomp_filter_mode mode, vmsup_error **err);

/* Write the filter as libseccomp's pseudo filter code (seccomp_export_pfc) to fd. */
int seccomp_filter_export(enum seccomp_filter_mode mode, int fd, vmsup_error **err);

#endif
