/* Shared by the Criterion tests: temporary dirs, files, and running the vmsup binary. */
#ifndef VMSUP_TESTS_HELPERS_H
#define VMSUP_TESTS_HELPERS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A fresh directory under $TMPDIR (or /tmp), removed by test_rmtree(). */
char *test_mkdtemp(void);
void test_rmtree(const char *dir);

/* Write content to dir/name with the given mode; returns the new path. */
char *test_write_file(const char *dir, const char *name, const char *content, unsigned mode);

struct test_run {
        int exit_code; /* -1 when killed by a signal */
        char *out;
        char *err;
};

/* Run the vmsup binary with args (NULL-terminated) and the environment PATH=path (NULL:
 * the test's own PATH); capture stdout and stderr. */
void test_run_vmsup(struct test_run *ret, const char *path, const char *const *args);
void test_run_clear(struct test_run *r);

/* Processes whose command line contains needle (a test's temporary root); with
 * kill_them, each gets SIGKILL. Returns how many there were. */
int test_count_processes(const char *needle, bool kill_them);

/* Copy src_dir/name to dst_dir/name, readable by everyone (0644). */
void test_copy_file(const char *src_dir, const char *dst_dir, const char *name);

/* The end of a test's root dir: whatever of the test still runs there (after a failed test)
 * gets SIGKILL, then the tree is removed and root freed. */
void test_root_cleanup(char *root);

/* All of a file (at most 1 MiB) in a new buffer; fails the test when it cannot be read. */
uint8_t *test_read_file(const char *path, size_t *ret_len);
/* The first line of a file, without its newline, into buf; fails the test when the file
 * cannot be read or has no line. */
void test_read_line(const char *path, char *buf, size_t size);

#endif
