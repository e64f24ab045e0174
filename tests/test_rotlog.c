/* common/rotlog: logs bounded by rotation (virtlogd's names), and reading their tail. */
#include "config.h"

#include <criterion/criterion.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/rotlog.h"
#include "common/util.h"
#include "tests/helpers.h"

static char *dir;

static void setup(void) {
        dir = test_mkdtemp();
}

static void teardown(void) {
        test_root_cleanup(dir);
}

TestSuite(rotlog, .init = setup, .fini = teardown, .timeout = 30);

static char *path_of(const char *name) {
        char *p;

        cr_assert(asprintf(&p, "%s/%s", dir, name) > 0);
        return p;
}

static bool put(const char *name, const void *data, size_t len) {
        _cleanup_free_ char *p = path_of(name);
        _cleanup_close_ int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

        return fd >= 0 && write(fd, data, len) == (ssize_t) len;
}

static long size_of(const char *name) {
        _cleanup_free_ char *p = path_of(name);
        struct stat st;

        return stat(p, &st) == 0 ? (long) st.st_size : -1;
}

/* Write n numbered bytes ("0123456789" repeated, from offset *pos) in chunks of chunk. */
static void write_counted(struct rotlog *l, size_t n, size_t chunk, size_t *pos, char *all) {
        vmsup_error *err = NULL;
        char buf[8192];

        cr_assert_leq(chunk, sizeof(buf));
        while (n > 0) {
                size_t k = n < chunk ? n : chunk;

                for (size_t i = 0; i < k; i++)
                        buf[i] = (char) ('a' + (*pos + i) % 26);
                memcpy(all + *pos, buf, k);
                cr_assert_eq(rotlog_write(l, buf, k, &err), 0, "%s", err ? err->msg : "");
                *pos += k;
                n -= k;
        }
}

Test(rotlog, rotates_with_virtlogd_names_and_keeps_the_bound) {
        _cleanup_free_ char *path = path_of("console.log");
        _cleanup_free_ char *all = malloc(100000);
        struct rotlog *l = NULL;
        vmsup_error *err = NULL;
        size_t pos = 0;
        long total = 0;

        cr_assert_eq(rotlog_open(path, 4096, 3, &l, &err), 0, "%s", err ? err->msg : "");
        write_counted(l, 50000, 100, &pos, all);
        l = rotlog_free(l);
        cr_assert_leq(size_of("console.log"), 4096);
        for (int k = 0; k < 3; k++) {
                char name[32];

                snprintf(name, sizeof(name), "console.log.%d", k);
                cr_assert_geq(size_of(name), 4000, "%s: %ld", name, size_of(name));
                cr_assert_leq(size_of(name), 4096, "%s: %ld", name, size_of(name));
                total += size_of(name);
        }
        total += size_of("console.log");
        cr_assert_eq(size_of("console.log.3"), -1, "a fourth backup was kept");
        cr_assert_leq(total, 4 * 4096);

        /* the newest bytes, across the files, oldest first: exactly what was written last */
        {
                char *text = NULL;
                size_t len = 0;
                size_t want = (size_t) size_of("console.log") + 1000; /* across a rotation */

                cr_assert_eq(rotlog_tail(path, want, &text, &len, &err), 0, "%s", err ? err->msg : "");
                cr_assert_eq(len, want);
                cr_assert(memcmp(text, all + pos - want, want) == 0, "not the newest bytes in order");
                free(text);
                /* more than is kept: everything kept, which ends with the newest bytes */
                cr_assert_eq(rotlog_tail(path, 1000000, &text, &len, &err), 0);
                cr_assert_eq((long) len, total);
                cr_assert(memcmp(text, all + pos - len, len) == 0);
                free(text);
        }
}

Test(rotlog, a_write_larger_than_the_size_fills_files_to_the_size) {
        _cleanup_free_ char *path = path_of("qemu.log");
        _cleanup_free_ char *all = malloc(100000);
        struct rotlog *l = NULL;
        vmsup_error *err = NULL;
        size_t pos = 0;

        cr_assert_eq(rotlog_open(path, 4096, 1, &l, &err), 0);
        /* 100 bytes, then 4596: the 100 go to the backup, the 4596 fill a file to 4096
         * (rotated away by the rest: one backup) and the next with 500 */
        write_counted(l, 100, 100, &pos, all);
        write_counted(l, 4096 + 500, 4096 + 500, &pos, all);
        l = rotlog_free(l);
        cr_assert_eq(size_of("qemu.log"), 500);
        cr_assert_eq(size_of("qemu.log.0"), 4096);
        cr_assert_eq(size_of("qemu.log.1"), -1, "one backup is kept");
        {
                char *text = NULL;
                size_t len = 0;

                cr_assert_eq(rotlog_tail(path, 4596, &text, &len, &err), 0);
                cr_assert_eq(len, 4596);
                cr_assert(memcmp(text, all + 100, len) == 0, "the large write, in order");
                free(text);
        }
}

Test(rotlog, no_backups_starts_the_file_again) {
        _cleanup_free_ char *path = path_of("swtpm.log");
        _cleanup_free_ char *all = malloc(100000);
        struct rotlog *l = NULL;
        vmsup_error *err = NULL;
        size_t pos = 0;

        cr_assert_eq(rotlog_open(path, 4096, 0, &l, &err), 0);
        write_counted(l, 10000, 1000, &pos, all);
        l = rotlog_free(l);
        cr_assert_eq(size_of("swtpm.log"), 10000 % 4000);
        cr_assert_eq(size_of("swtpm.log.0"), -1);
}

Test(rotlog, an_oversized_file_is_rotated_at_open_and_extra_backups_go) {
        _cleanup_free_ char *path = path_of("console.log");
        _cleanup_free_ char *big = calloc(1, 10000);
        struct rotlog *l = NULL;
        vmsup_error *err = NULL;

        cr_assert(put("console.log", big, 10000));
        for (int k = 0; k < 6; k++) {
                char name[32];

                snprintf(name, sizeof(name), "console.log.%d", k);
                cr_assert(put(name, "old\n", 4));
        }
        cr_assert_eq(rotlog_open(path, 4096, 2, &l, &err), 0, "%s", err ? err->msg : "");
        cr_assert_eq(rotlog_write(l, "new\n", 4, &err), 0);
        l = rotlog_free(l);
        cr_assert_eq(size_of("console.log"), 4);
        cr_assert_eq(size_of("console.log.0"), 10000, "the oversized file is the newest backup");
        cr_assert_eq(size_of("console.log.1"), 4);
        cr_assert_eq(size_of("console.log.2"), -1);
        cr_assert_eq(size_of("console.log.5"), -1, "a backup beyond the number kept stayed");
}

Test(rotlog, symlinks_and_missing_logs_are_refused_clearly) {
        _cleanup_free_ char *path = path_of("console.log");
        struct rotlog *l = NULL;
        vmsup_error *err = NULL;
        char *text = NULL;
        size_t len;

        cr_assert_lt(rotlog_tail(path, 100, &text, &len, &err), 0);
        cr_assert_eq(err->kind, VMSUP_ERR_NOT_FOUND);
        cr_assert_not_null(strstr(err->msg, "no log '"), "%s", err->msg);
        err = vmsup_error_free(err);
        cr_assert_eq(symlink("/etc/passwd", path), 0);
        cr_assert_lt(rotlog_open(path, 4096, 3, &l, &err), 0);
        cr_assert_not_null(strstr(err->msg, path), "%s", err->msg);
        err = vmsup_error_free(err);
        cr_assert_lt(rotlog_open(path, 0, 3, &l, &err), 0);
        err = vmsup_error_free(err);
}
