/* A guest fixture for the integration tests that run a real vmsup (swtpm, QEMU under TCG,
 * the demo guest): vmsup started with a credential on fd 3, its exit awaited within a bound, control-socket requests,
 * waiting until the guest runs, and a file's text for messages. */
#ifndef VMSUP_TESTS_GUESTFIX_H
#define VMSUP_TESTS_GUESTFIX_H

#include <json-c/json.h>
#include <stdbool.h>
#include <sys/types.h>

#include "common/error.h"

/* A vmsup process started by test_spawn(). (sup, slurp and wait_exit keep the names the
 * tests have always called them by.) */
struct sup {
        pid_t pid;
        int pidfd;
};

/* The file's text (at most 1 MiB - 1) in a buffer that the next call reuses; "" when it
 * cannot be read. For messages and searches. */
char *slurp(const char *path);

/* Start argv[0] (an absolute path) with the environment envp (NULL: empty), stdin from
 * /dev/null, stdout and stderr appended to log_path and, unless token is NULL, token on
 * fd 3 (a pipe). Fails the test when it cannot. */
struct sup test_spawn(char *const *argv, char *const *envp, const char *log_path, const char *token);

/* The exit code of s (128 + signal when killed by one), or -1 when it did not exit within
 * timeout_ms (then it is killed). Closes its pidfd. */
int wait_exit(struct sup *s, int timeout_ms);

/* One request {"cmd": cmd} (plus the members of extra, which it takes) on the control
 * socket sock, waiting at most 60 s; the answer, or NULL with *err. */
json_object *test_control(const char *sock, const char *cmd, json_object *extra, vmsup_error **err);

/* Ask sock for the status until the state is running (within timeout_ms) and return that
 * status; fail the test, with log_path's text, when s exits first or the time is up. */
json_object *test_wait_running(const struct sup *s, const char *sock, const char *log_path, int timeout_ms);

/* The text of the console log console_path (a new string) once it holds count lines
 * containing needle; fail the test, with it and log_path's text, after timeout_ms. */
char *test_wait_console(const char *console_path, const char *log_path, const char *needle, int count, int timeout_ms);

/* The number after the nth (1-based) key (e.g. "nv-counter=") in text; fails the test when
 * there are fewer. */
long console_value(const char *text, const char *key, int nth);

#endif
