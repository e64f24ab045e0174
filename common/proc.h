/* Running short-lived helper programs (probes, swtpm_setup) with nothing inherited. */
#ifndef VMSUP_COMMON_PROC_H
#define VMSUP_COMMON_PROC_H

#include <stdbool.h>
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

/* The same, giving up as soon as cancel_fd (> 0; 0 and -1: none) is readable: the child
 * and what it started (its process group) are killed, and the error's errnum is ECANCELED.
 * A timeout kills the process group too. */
int proc_run_capture_cancel(char *const argv[], char *const envp[], int timeout_ms, size_t max_output, int cancel_fd,
                            struct proc_result *ret, vmsup_error **err);

void proc_result_clear(struct proc_result *r);

/* One fd the child gets: parent_fd becomes child_fd (no longer close-on-exec). */
struct proc_fd_map {
        int parent_fd;
        int child_fd;
};

struct proc_spawn_opts {
        char *const *argv;   /* argv[0] is an absolute path */
        char *const *envp;   /* NULL: an empty environment */
        int stdin_fd;        /* -1: /dev/null */
        int stdout_fd;       /* -1: /dev/null */
        int stderr_fd;       /* -1: /dev/null */
        const struct proc_fd_map *fds; /* further fds, e.g. socketpair ends; all others are closed */
        size_t n_fds;
        int death_signal;    /* PR_SET_PDEATHSIG: sent when vmsup dies; 0 for none */
        bool set_ids;        /* run as uid/gid, with the supplementary groups below (or none) */
        uid_t uid;
        gid_t gid;
        const gid_t *groups;
        size_t n_groups;
        bool new_session;    /* setsid(): keep the terminal's signals (^C) for vmsup to handle */
};

/* Start a child as the options say. On success *ret_pid is its pid and, if ret_pidfd is
 * not NULL, *ret_pidfd a pidfd (O_CLOEXEC) to wait on with epoll. A failed exec is
 * reported here, with its errno, not as an exit status later. */
int proc_spawn(const struct proc_spawn_opts *o, pid_t *ret_pid, int *ret_pidfd, vmsup_error **err);

/* A human description of a waitpid() status: "exited with status 3", "killed by SIGKILL". */
const char *proc_describe_status(int status, char *buf, size_t len);

#endif
