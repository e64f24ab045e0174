#include "config.h"

#include <criterion/criterion.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/proc.h"

static char *read_all(int fd) {
        static char buf[4096];
        size_t len = 0;
        ssize_t n;

        while ((n = read(fd, buf + len, sizeof(buf) - 1 - len)) > 0)
                len += (size_t) n;
        buf[len] = '\0';
        return buf;
}

Test(proc, child_gets_only_its_fds_and_an_empty_environment) {
        int out[2], sp[2], leak, pidfd = -1, status;
        char *argv[] = { "/bin/ls", "-1", "/proc/self/fd", NULL };
        struct proc_fd_map map[] = { { -1, 5 } };
        struct proc_spawn_opts o = { .argv = argv, .stdin_fd = -1, .stdout_fd = -1, .stderr_fd = -1,
                                     .fds = map, .n_fds = 1, .death_signal = SIGTERM };
        vmsup_error *err = NULL;
        struct pollfd p;
        pid_t pid;
        char *text;

        cr_assert_eq(pipe2(out, O_CLOEXEC), 0);
        cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp), 0);
        leak = open("/dev/null", O_RDONLY); /* not close-on-exec: must still not reach the child */
        cr_assert_geq(leak, 0);
        o.stdout_fd = out[1];
        map[0].parent_fd = sp[1];
        cr_assert_eq(proc_spawn(&o, &pid, &pidfd, &err), 0, "%s", err ? err->msg : "");
        close(out[1]);
        cr_assert_geq(pidfd, 0);
        p = (struct pollfd) { .fd = pidfd, .events = POLLIN };
        text = read_all(out[0]);
        cr_assert_eq(poll(&p, 1, 10000), 1, "the pidfd becomes readable when the child exits");
        cr_assert_eq(waitpid(pid, &status, 0), pid);
        cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        /* 0 1 2, our fd 5, and the one ls opens to read the directory */
        cr_assert_str_eq(text, "0\n1\n2\n3\n5\n");
        close(leak);
        close(pidfd);
        close(out[0]);
        close(sp[0]);
        close(sp[1]);
}

Test(proc, environment_is_empty) {
        char *argv[] = { "/usr/bin/env", NULL };
        struct proc_result res;
        vmsup_error *err = NULL;

        setenv("VMSUP_TEST_SECRET", "must-not-leak", 1);
        cr_assert_eq(proc_run_capture(argv, NULL, 10000, 4096, &res, &err), 0);
        cr_assert_str_eq(res.out, "");
        proc_result_clear(&res);
}

Test(proc, exec_failure_is_reported_with_errno) {
        char *argv[] = { "/nonexistent/program", NULL };
        struct proc_spawn_opts o = { .argv = argv, .stdin_fd = -1, .stdout_fd = -1, .stderr_fd = -1 };
        vmsup_error *err = NULL;
        pid_t pid;

        cr_assert_lt(proc_spawn(&o, &pid, NULL, &err), 0);
        cr_assert_str_eq(err->msg, "start '/nonexistent/program': No such file or directory");
        cr_assert_eq(err->kind, VMSUP_ERR_UNAVAILABLE);
        vmsup_error_free(err);
}

Test(proc, run_capture_times_out_and_bounds_output) {
        char *slow[] = { "/bin/sh", "-c", "sleep 5", NULL };
        char *chatty[] = { "/bin/sh", "-c", "yes", NULL };
        struct proc_result res;
        vmsup_error *err = NULL;

        cr_assert_lt(proc_run_capture(slow, NULL, 200, 1024, &res, &err), 0);
        cr_assert(strstr(err->msg, "did not finish within 200 ms"), "%s", err->msg);
        err = vmsup_error_free(err);
        cr_assert_lt(proc_run_capture(chatty, NULL, 10000, 1024, &res, &err), 0);
        cr_assert(strstr(err->msg, "printed more than 1024 bytes"), "%s", err->msg);
        vmsup_error_free(err);
}
