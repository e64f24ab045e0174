/* Running short-lived helper programs (probes, swtpm_setup) with nothing inherited. */
#ifndef VMSUP_COMMON_PROC_H
#define VMSUP_COMMON_PROC_H

#include <stddef.h>
#include <sys/types.h>

#include "common/error.h"

/* Find an executable: a name with a '/' is taken as is, otherwise it is searched in
 * $PATH (or /usr/sbin:/usr/bin:/sbin:/bin when PATH is unset). Returns a new string. */
char *proc_find_executable(const char *name, vmsup_error **err);

struct proc_result {
        int status;      /* as from waitpid() */
        char *out;       /* NUL-terminated stdout, at most max_output bytes */
        size_t out_len;
        char *errout;    /* NUL-terminated stderr, at most max_output bytes */
        size_t errout_len;
};

/* Run argv[0] (an absolute path) with argv, an environment of envp (NULL = empty), stdin
 * from /dev/null and no other fd, wait at most timeout_ms; capture stdout and stderr.
 * Output beyond max_output is an error, as is a timeout (the child is killed). */
int proc_run_capture(char *const argv[], char *const envp[], int timeout_ms, size_t max_output,
                     struct proc_result *ret, vmsup_error **err);

void proc_result_clear(struct proc_result *r);

/* A human description of a waitpid() status: "exited with status 3", "killed by SIGKILL". */
const char *proc_describe_status(int status, char *buf, size_t len);

#endif
