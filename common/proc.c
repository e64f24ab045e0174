#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <grp.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/syscall.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/proc.h"
#include "common/util.h"

char *proc_find_executable(const char *name, vmsup_error **err) {
        _cleanup_free_ char *path = NULL;
        const char *search;
        char *saveptr = NULL, *dir;

        if (!name || !*name) {
                vmsup_fail(err, VMSUP_ERR_CONFIG, 0, "empty program name");
                return NULL;
        }
        if (strchr(name, '/')) {
                if (access(name, X_OK) < 0) {
                        vmsup_fail(err, VMSUP_ERR_UNAVAILABLE, errno, "program '%s' is not executable", name);
                        return NULL;
                }
                return strdup(name);
        }
        search = getenv("PATH");
        path = strdup(search && *search ? search : "/usr/sbin:/usr/bin:/sbin:/bin");
        if (!path) {
                vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "find '%s'", name);
                return NULL;
        }
        for (dir = strtok_r(path, ":", &saveptr); dir; dir = strtok_r(NULL, ":", &saveptr)) {
                char *candidate = NULL;

                if (asprintf(&candidate, "%s/%s", *dir ? dir : ".", name) < 0)
                        break;
                if (access(candidate, X_OK) == 0)
                        return candidate;
                free(candidate);
        }
        vmsup_fail(err, VMSUP_ERR_UNAVAILABLE, 0, "program '%s' was not found in PATH", name);
        return NULL;
}

static int append(char **buf, size_t *len, size_t max, const char *data, size_t n) {
        char *nbuf;

        if (*len + n > max)
                return -EFBIG;
        nbuf = realloc(*buf, *len + n + 1);
        if (!nbuf)
                return -ENOMEM;
        memcpy(nbuf + *len, data, n);
        *len += n;
        nbuf[*len] = '\0';
        *buf = nbuf;
        return 0;
}

/* A child subreaper that blocks SIGCHLD (vmsup run) inherits the orphans of the programs
 * it runs (swtpm_setup leaves a swtpm behind and waits until it is reaped). Such a caller
 * gets a signalfd here so orphans are reaped at once while we wait. */
static int orphan_signalfd(void) {
        sigset_t blocked, chld;
        int is_subreaper = 0;

        if (prctl(PR_GET_CHILD_SUBREAPER, &is_subreaper) < 0 || !is_subreaper)
                return -1;
        if (sigprocmask(SIG_BLOCK, NULL, &blocked) < 0 || !sigismember(&blocked, SIGCHLD))
                return -1;
        sigemptyset(&chld);
        sigaddset(&chld, SIGCHLD);
        return signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
}

/* Reap every exited child; true when pid was among them (its status in *status). */
static bool reap_including(pid_t pid, int *status) {
        bool found = false;
        int st;
        pid_t p;

        while ((p = waitpid(-1, &st, WNOHANG)) > 0)
                if (p == pid) {
                        *status = st;
                        found = true;
                }
        return found;
}

int proc_run_capture(char *const argv[], char *const envp[], int timeout_ms, size_t max_output,
                     struct proc_result *ret, vmsup_error **err) {
        return proc_run_capture_cancel(argv, envp, timeout_ms, max_output, -1, ret, err);
}

/* The child and every process it started that is still in its group (swtpm_setup's swtpm). */
static void kill_group(pid_t pid) {
        if (kill(-pid, SIGKILL) < 0)
                kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
}

int proc_run_capture_cancel(char *const argv[], char *const envp[], int timeout_ms, size_t max_output, int cancel_fd,
                            struct proc_result *ret, vmsup_error **err) {
        static char *const empty_env[] = { NULL };
        int outp[2] = { -1, -1 }, errp[2] = { -1, -1 };
        _cleanup_close_ int sigfd = orphan_signalfd();
        struct proc_result res = { 0 };
        bool reaped = false;
        long deadline;
        pid_t pid;
        int r = 0, status = 0;

        if (pipe2(outp, O_CLOEXEC) < 0 || pipe2(errp, O_CLOEXEC) < 0) {
                r = vmsup_fail(err, VMSUP_ERR_SYSTEM, errno, "run '%s': pipe", argv[0]);
                goto out_close;
        }
        pid = fork();
        if (pid < 0) {
                r = vmsup_fail(err, VMSUP_ERR_SYSTEM, errno, "run '%s': fork", argv[0]);
                goto out_close;
        }
        if (pid == 0) {
                int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);

                /* a process group of its own (setsid: allowed by vmsup's seccomp filter, setpgid is
                 * not), so that what it starts can be killed with it */
                if (setsid() < 0 || devnull < 0 || dup2(devnull, 0) < 0 || dup2(outp[1], 1) < 0 ||
                    dup2(errp[1], 2) < 0)
                        _exit(127);
                close_range(3, ~0U, 0);
                execve(argv[0], argv, envp ? envp : empty_env);
                _exit(127);
        }
        close(outp[1]);
        close(errp[1]);
        outp[1] = errp[1] = -1;

        deadline = monotonic_ms() + timeout_ms;
        while (outp[0] >= 0 || errp[0] >= 0 || (sigfd >= 0 && !reaped)) {
                struct pollfd pfd[4] = { { outp[0], POLLIN, 0 }, { errp[0], POLLIN, 0 }, { sigfd, POLLIN, 0 },
                                         { cancel_fd > 0 ? cancel_fd : -1, POLLIN, 0 } };
                long left = deadline - monotonic_ms();
                int n;

                if (left <= 0) {
                        kill_group(pid);
                        r = vmsup_fail(err, VMSUP_ERR_UNAVAILABLE, 0, "'%s' did not finish within %d ms",
                                       argv[0], timeout_ms);
                        goto out_close;
                }
                n = poll(pfd, 4, (int) left);
                if (n > 0 && pfd[3].revents) {
                        kill_group(pid);
                        r = vmsup_fail(err, VMSUP_ERR_BUSY, ECANCELED, "'%s' abandoned", argv[0]);
                        goto out_close;
                }
                if (n < 0 && errno != EINTR) {
                        r = vmsup_fail(err, VMSUP_ERR_SYSTEM, errno, "run '%s': poll", argv[0]);
                        kill(pid, SIGKILL);
                        waitpid(pid, NULL, 0);
                        goto out_close;
                }
                if (sigfd >= 0 && n > 0 && pfd[2].revents) {
                        struct signalfd_siginfo si;

                        while (read(sigfd, &si, sizeof(si)) == sizeof(si))
                                ;
                        reaped |= reap_including(pid, &status);
                }
                for (int i = 0; i < 2 && n > 0; i++) {
                        int *fd = i == 0 ? &outp[0] : &errp[0];
                        char buf[4096];
                        ssize_t got;

                        if (*fd < 0 || !pfd[i].revents)
                                continue;
                        got = read(*fd, buf, sizeof(buf));
                        if (got < 0 && errno == EINTR)
                                continue;
                        if (got <= 0) {
                                close(*fd);
                                *fd = -1;
                                continue;
                        }
                        if (append(i == 0 ? &res.out : &res.errout, i == 0 ? &res.out_len : &res.errout_len,
                                   max_output, buf, (size_t) got) < 0) {
                                kill(pid, SIGKILL);
                                waitpid(pid, NULL, 0);
                                r = vmsup_fail(err, VMSUP_ERR_UNAVAILABLE, 0,
                                               "'%s' printed more than %zu bytes", argv[0], max_output);
                                goto out_close;
                        }
                }
        }
        while (!reaped && waitpid(pid, &status, 0) < 0) {
                if (errno != EINTR) {
                        r = vmsup_fail(err, VMSUP_ERR_SYSTEM, errno, "wait for '%s'", argv[0]);
                        goto out_close;
                }
        }
        res.status = status;
        if (!res.out)
                res.out = strdup("");
        if (!res.errout)
                res.errout = strdup("");
        *ret = res;
        memset(&res, 0, sizeof(res));

out_close:
        for (int i = 0; i < 2; i++) {
                closep(&outp[i]);
                closep(&errp[i]);
        }
        proc_result_clear(&res);
        return r;
}

void proc_result_clear(struct proc_result *r) {
        free(r->out);
        free(r->errout);
        memset(r, 0, sizeof(*r));
}

const char *proc_describe_status(int status, char *buf, size_t len) {
        if (WIFEXITED(status))
                snprintf(buf, len, "exited with status %d", WEXITSTATUS(status));
        else if (WIFSIGNALED(status))
                snprintf(buf, len, "killed by SIG%s", sigabbrev_np(WTERMSIG(status)) ?: "?");
        else
                snprintf(buf, len, "ended with wait status 0x%x", status);
        return buf;
}

static int pidfd_open_(pid_t pid) {
        return (int) syscall(SYS_pidfd_open, pid, 0); /* pidfds are always close-on-exec */
}

/* In the child: report errno on the pipe and exit. Only async-signal-safe calls here. */
_Noreturn static void child_fail(int report_fd) {
        int e = errno;

        (void) !write(report_fd, &e, sizeof(e));
        _exit(127);
}

int proc_spawn(const struct proc_spawn_opts *o, pid_t *ret_pid, int *ret_pidfd, vmsup_error **err) {
        static char *const empty_env[] = { NULL };
        _cleanup_close_ int devnull = -1;
        int report[2] = { -1, -1 }, child_errno = 0, max_child_fd = 2;
        pid_t parent = getpid(), pid;
        ssize_t n;

        for (size_t i = 0; i < o->n_fds; i++) {
                if (o->fds[i].child_fd <= 2 || o->fds[i].child_fd > 1000)
                        return vmsup_fail(err, VMSUP_ERR_INTERNAL, EINVAL, "spawn '%s': bad child fd %d", o->argv[0],
                                          o->fds[i].child_fd);
                if (o->fds[i].child_fd > max_child_fd)
                        max_child_fd = o->fds[i].child_fd;
        }
        devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
        if (devnull < 0)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, errno, "spawn '%s': open /dev/null", o->argv[0]);
        if (pipe2(report, O_CLOEXEC) < 0)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, errno, "spawn '%s': pipe", o->argv[0]);

        pid = fork();
        if (pid < 0) {
                int e = errno;

                close(report[0]);
                close(report[1]);
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, e, "spawn '%s': fork", o->argv[0]);
        }
        if (pid == 0) {
                int std[3] = { o->stdin_fd, o->stdout_fd, o->stderr_fd };
                int moved[3 + 64], rep;
                size_t nmoved = 3 + o->n_fds;
                sigset_t all;

                /* The report pipe first, then every source fd, go above the highest target,
                 * so that placing one fd cannot overwrite another still to be placed. */
                rep = fcntl(report[1], F_DUPFD_CLOEXEC, max_child_fd + 1);
                if (rep < 0)
                        _exit(127);
                report[1] = rep;
                if (nmoved > ARRAY_SIZE(moved)) {
                        errno = E2BIG;
                        child_fail(rep);
                }
                for (size_t i = 0; i < nmoved; i++) {
                        int src = i < 3 ? (std[i] >= 0 ? std[i] : devnull) : o->fds[i - 3].parent_fd;

                        moved[i] = fcntl(src, F_DUPFD_CLOEXEC, rep + 1);
                        if (moved[i] < 0)
                                child_fail(rep);
                }
                for (size_t i = 0; i < nmoved; i++) {
                        int target = i < 3 ? (int) i : o->fds[i - 3].child_fd;

                        if (dup2(moved[i], target) < 0) /* dup2 clears close-on-exec */
                                child_fail(rep);
                }
                /* every other fd goes: the gaps between targets, then all above them except
                 * the report pipe (close-on-exec) */
                for (int fd = 3; fd <= max_child_fd; fd++) {
                        bool target = false;

                        for (size_t i = 0; i < o->n_fds; i++)
                                target |= o->fds[i].child_fd == fd;
                        if (!target)
                                close(fd);
                }
                if ((rep > max_child_fd + 1 && close_range((unsigned) max_child_fd + 1, (unsigned) rep - 1, 0) < 0) ||
                    close_range((unsigned) rep + 1, ~0U, 0) < 0)
                        child_fail(rep);

                sigfillset(&all);
                sigprocmask(SIG_UNBLOCK, &all, NULL);
                for (int sig = 1; sig < NSIG; sig++)
                        signal(sig, SIG_DFL);
                if (o->new_session && setsid() < 0)
                        child_fail(report[1]);
                /* before PR_SET_PDEATHSIG: a change of credentials clears it */
                if (o->set_ids) {
                        if (setgroups(o->n_groups, o->groups) < 0 || setresgid(o->gid, o->gid, o->gid) < 0 ||
                            setresuid(o->uid, o->uid, o->uid) < 0)
                                child_fail(report[1]);
                }
                if (o->death_signal) {
                        if (prctl(PR_SET_PDEATHSIG, o->death_signal) < 0)
                                child_fail(report[1]);
                        if (getppid() != parent) /* vmsup died before prctl took effect */
                                _exit(127);
                }
                if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
                        child_fail(report[1]);
                execve(o->argv[0], o->argv, o->envp ? o->envp : empty_env);
                child_fail(report[1]);
        }

        close(report[1]);
        do
                n = read(report[0], &child_errno, sizeof(child_errno));
        while (n < 0 && errno == EINTR);
        close(report[0]);
        if (n > 0) {
                waitpid(pid, NULL, 0);
                return vmsup_fail(err, child_errno == ENOENT ? VMSUP_ERR_UNAVAILABLE : VMSUP_ERR_SYSTEM, child_errno,
                                  "start '%s'", o->argv[0]);
        }
        if (ret_pidfd) {
                /* The child cannot be reaped before we wait for it, so its pid is still ours. */
                int pidfd = pidfd_open_(pid);

                if (pidfd < 0) {
                        int e = errno;

                        kill(pid, SIGKILL);
                        waitpid(pid, NULL, 0);
                        return vmsup_fail(err, VMSUP_ERR_SYSTEM, e, "pidfd_open for '%s'", o->argv[0]);
                }
                *ret_pidfd = pidfd;
        }
        *ret_pid = pid;
        return 0;
}
