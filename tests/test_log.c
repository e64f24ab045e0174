/* common/log.c: the lines vmsup writes on stderr, plain or, when stderr is the journal's
 * stream (JOURNAL_STREAM, sd-daemon's convention), with syslog priority prefixes. Each
 * test logs from a child whose stderr is a file, and reads the file back. */
#include "config.h"

#include <criterion/criterion.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/log.h"
#include "tests/helpers.h"

static char *root;

static void setup(void) {
        root = test_mkdtemp();
}

static void teardown(void) {
        test_rmtree(root);
        free(root);
}

TestSuite(log, .init = setup, .fini = teardown, .timeout = 30);

enum stream { STREAM_UNSET, STREAM_MATCHES, STREAM_OTHER_INODE, STREAM_GARBAGE };

/* A child logs one line of each level with stderr on a fresh file and JOURNAL_STREAM as
 * asked; returns the file's text. */
static char *log_lines(enum stream how, const char *guest) {
        char path[512], value[64], *text;
        uint8_t *bytes;
        size_t len;
        pid_t pid;
        int status;

        snprintf(path, sizeof(path), "%s/stderr-%d-%s", root, (int) how, guest ? "guest" : "none");
        pid = fork();
        cr_assert_geq(pid, 0);
        if (pid == 0) {
                int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
                struct stat st;

                if (fd < 0 || dup2(fd, STDERR_FILENO) < 0 || fstat(STDERR_FILENO, &st) < 0)
                        _exit(2);
                if (how == STREAM_MATCHES)
                        snprintf(value, sizeof(value), "%llu:%llu", (unsigned long long) st.st_dev,
                                 (unsigned long long) st.st_ino);
                else if (how == STREAM_OTHER_INODE) /* what systemd gave, before stderr was redirected */
                        snprintf(value, sizeof(value), "%llu:%llu", (unsigned long long) st.st_dev,
                                 (unsigned long long) st.st_ino + 1);
                else
                        snprintf(value, sizeof(value), "%llu:%llujunk", (unsigned long long) st.st_dev,
                                 (unsigned long long) st.st_ino);
                if (how == STREAM_UNSET)
                        unsetenv("JOURNAL_STREAM");
                else
                        setenv("JOURNAL_STREAM", value, 1);
                log_set_guest(guest);
                log_set_level(LOG_LEVEL_DEBUG);
                log_error("disk %d is gone", 1);
                log_warning("swtpm said %s", "nothing");
                log_info("guest running");
                log_debug("QMP ready");
                fflush(stderr);
                _exit(0);
        }
        cr_assert_eq(waitpid(pid, &status, 0), pid);
        cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the child failed: %d", status);
        bytes = test_read_file(path, &len);
        text = strndup((char *) bytes, len);
        free(bytes);
        return text;
}

#define GUEST "5f0c3a2e-1b7d-4c8e-9f6a-0d2b4e6a8c1f"

Test(log, the_journal_gets_a_priority_prefix_on_every_line) {
        char *text = log_lines(STREAM_MATCHES, GUEST);

        cr_assert_str_eq(text,
                         "<3>vmsup[" GUEST "]: error: disk 1 is gone\n"
                         "<4>vmsup[" GUEST "]: warning: swtpm said nothing\n"
                         "<6>vmsup[" GUEST "]: info: guest running\n"
                         "<7>vmsup[" GUEST "]: debug: QMP ready\n");
        free(text);
        text = log_lines(STREAM_MATCHES, NULL);
        cr_assert_str_eq(text,
                         "<3>vmsup: error: disk 1 is gone\n"
                         "<4>vmsup: warning: swtpm said nothing\n"
                         "<6>vmsup: info: guest running\n"
                         "<7>vmsup: debug: QMP ready\n");
        free(text);
}

static const char plain[] = "vmsup[" GUEST "]: error: disk 1 is gone\n"
                            "vmsup[" GUEST "]: warning: swtpm said nothing\n"
                            "vmsup[" GUEST "]: info: guest running\n"
                            "vmsup[" GUEST "]: debug: QMP ready\n";

Test(log, stderr_that_is_not_the_journal_gets_plain_lines) {
        char *text = log_lines(STREAM_UNSET, GUEST);

        cr_assert_str_eq(text, plain);
        free(text);
        /* JOURNAL_STREAM names another stream: stderr was redirected after systemd set it */
        text = log_lines(STREAM_OTHER_INODE, GUEST);
        cr_assert_str_eq(text, plain);
        free(text);
        text = log_lines(STREAM_GARBAGE, GUEST);
        cr_assert_str_eq(text, plain);
        free(text);
}
