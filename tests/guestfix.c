#include "config.h"

#include <criterion/criterion.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/proc.h"
#include "common/util.h"
#include "supervisor/control.h"
#include "tests/guestfix.h"
#include "tests/helpers.h"

char *slurp(const char *path) {
        static char buf[1 << 20];
        FILE *f = fopen(path, "re");
        size_t n = 0;

        if (f) {
                n = fread(buf, 1, sizeof(buf) - 1, f);
                fclose(f);
        }
        buf[n] = '\0';
        return buf;
}

struct sup test_spawn(char *const *argv, char *const *envp, const char *log_path, const char *token) {
        struct proc_fd_map fds[1];
        struct proc_spawn_opts o = { .argv = argv, .envp = envp, .stdin_fd = -1, .fds = fds, .n_fds = 0 };
        vmsup_error *err = NULL;
        struct sup s;
        int log = open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600), pipefd[2] = { -1, -1 };

        cr_assert_geq(log, 0, "open %s", log_path);
        if (token) {
                /* the credential comes on fd 3: never argv, never the environment */
                cr_assert_eq(pipe2(pipefd, O_CLOEXEC), 0);
                cr_assert_eq(write(pipefd[1], token, strlen(token)), (ssize_t) strlen(token));
                close(pipefd[1]);
                fds[0] = (struct proc_fd_map) { pipefd[0], 3 };
                o.n_fds = 1;
        }
        o.stdout_fd = o.stderr_fd = log;
        cr_assert_eq(proc_spawn(&o, &s.pid, &s.pidfd, &err), 0, "%s", err ? err->msg : "");
        if (token)
                close(pipefd[0]);
        close(log);
        return s;
}

int wait_exit(struct sup *s, int timeout_ms) {
        struct pollfd p = { .fd = s->pidfd, .events = POLLIN };
        int status;

        if (poll(&p, 1, timeout_ms) != 1) {
                kill(s->pid, SIGKILL);
                waitpid(s->pid, NULL, 0);
                close(s->pidfd);
                return -1;
        }
        waitpid(s->pid, &status, 0);
        close(s->pidfd);
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

json_object *test_control(const char *sock, const char *cmd, json_object *extra, vmsup_error **err) {
        json_object *req = extra ? extra : json_object_new_object(), *ret = NULL;

        json_object_object_add(req, "cmd", json_object_new_string(cmd));
        if (control_request(sock, req, 60000, &ret, err) < 0)
                ret = NULL;
        json_object_put(req);
        return ret;
}

json_object *test_wait_running(const struct sup *s, const char *sock, const char *log_path, int timeout_ms) {
        long deadline = monotonic_ms() + timeout_ms;

        while (monotonic_ms() < deadline) {
                vmsup_error *err = NULL;
                json_object *st = test_control(sock, "status", NULL, &err), *state;
                struct pollfd p = { .fd = s->pidfd, .events = POLLIN };

                if (st && json_object_object_get_ex(st, "state", &state) &&
                    streq(json_object_get_string(state), "running"))
                        return st;
                json_object_put(st);
                vmsup_error_free(err);
                if (poll(&p, 1, 50) == 1)
                        cr_assert_fail("vmsup exited before the guest ran: %s", slurp(log_path));
        }
        cr_assert_fail("the guest did not reach running: %s", slurp(log_path));
        return NULL;
}

char *test_wait_console(const char *console_path, const char *log_path, const char *needle, int count, int timeout_ms) {
        long deadline = monotonic_ms() + timeout_ms;

        for (;;) {
                char *text = strdup(slurp(console_path));
                int n = 0;

                for (char *p = text; (p = strstr(p, needle)); p++)
                        n++;
                if (n >= count)
                        return text;
                if (monotonic_ms() > deadline)
                        cr_assert_fail("console %s lacks %d x '%s' after %d ms:\n%s\n--- vmsup:\n%s", console_path, count,
                                       needle, timeout_ms, text, slurp(log_path));
                free(text);
                usleep(50000);
        }
}

long console_value(const char *text, const char *key, int nth) {
        const char *p = text;

        for (int i = 0; i < nth; i++) {
                p = strstr(p, key);
                cr_assert_not_null(p, "no %d. %s in:\n%s", nth, key, text);
                p += strlen(key);
        }
        return strtol(p, NULL, 10);
}
