#include "config.h"

#include <criterion/criterion.h>
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/proc.h"
#include "tests/helpers.h"

char *test_mkdtemp(void) {
        const char *base = getenv("TMPDIR");
        char *dir = NULL;

        cr_assert(asprintf(&dir, "%s/vmsup-test-XXXXXX", base && *base ? base : "/tmp") > 0);
        cr_assert_not_null(mkdtemp(dir), "mkdtemp %s", dir);
        return dir;
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
        (void) st;
        (void) flag;
        (void) ftw;
        return remove(path);
}

void test_rmtree(const char *dir) {
        if (dir)
                nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

char *test_write_file(const char *dir, const char *name, const char *content, unsigned mode) {
        char *path = NULL;
        FILE *f;

        cr_assert(asprintf(&path, "%s/%s", dir, name) > 0);
        f = fopen(path, "w");
        cr_assert_not_null(f, "create %s", path);
        fputs(content, f);
        cr_assert_eq(fclose(f), 0);
        cr_assert_eq(chmod(path, mode), 0);
        return path;
}

void test_run_vmsup(struct test_run *ret, const char *path, const char *const *args) {
        char *argv[64], *envp[2] = { NULL, NULL }, *pathvar = NULL;
        struct proc_result res = { 0 };
        vmsup_error *err = NULL;
        size_t n = 0;

        argv[n++] = (char *) VMSUP_BIN;
        for (; *args && n < 63; args++)
                argv[n++] = (char *) *args;
        argv[n] = NULL;
        cr_assert(asprintf(&pathvar, "PATH=%s", path ? path : getenv("PATH")) > 0);
        envp[0] = pathvar;
        if (proc_run_capture(argv, envp, 120000, 4 * 1024 * 1024, &res, &err) < 0)
                cr_assert_fail("running %s: %s", VMSUP_BIN, err->msg);
        free(pathvar);
        ret->exit_code = WIFEXITED(res.status) ? WEXITSTATUS(res.status) : -1;
        ret->out = res.out;
        ret->err = res.errout;
}

void test_run_clear(struct test_run *r) {
        free(r->out);
        free(r->err);
        r->out = r->err = NULL;
}

int test_count_processes(const char *needle, bool kill_them) {
        DIR *d = opendir("/proc");
        struct dirent *e;
        int n = 0;

        cr_assert_not_null(d);
        while ((e = readdir(d))) {
                char path[300], buf[4096];
                ssize_t len;
                int fd;

                if (e->d_name[0] < '0' || e->d_name[0] > '9')
                        continue;
                snprintf(path, sizeof(path), "/proc/%s/cmdline", e->d_name);
                fd = open(path, O_RDONLY | O_CLOEXEC);
                if (fd < 0)
                        continue;
                len = read(fd, buf, sizeof(buf) - 1);
                close(fd);
                if (len <= 0)
                        continue;
                for (ssize_t i = 0; i < len; i++)
                        if (!buf[i])
                                buf[i] = ' ';
                buf[len] = '\0';
                if (strstr(buf, needle)) {
                        n++;
                        if (kill_them)
                                kill(atoi(e->d_name), SIGKILL);
                }
        }
        closedir(d);
        return n;
}

void test_read_line(const char *path, char *buf, size_t size) {
        FILE *f = fopen(path, "re");

        cr_assert_not_null(f, "open %s", path);
        cr_assert_not_null(fgets(buf, (int) size, f), "no line in %s", path);
        fclose(f);
        buf[strcspn(buf, "\n")] = '\0';
}

void test_copy_file(const char *src_dir, const char *dst_dir, const char *name) {
        char src[512], dst[512], buf[65536];
        FILE *in, *out;
        size_t n;

        snprintf(src, sizeof(src), "%s/%s", src_dir, name);
        snprintf(dst, sizeof(dst), "%s/%s", dst_dir, name);
        in = fopen(src, "re");
        cr_assert_not_null(in, "open %s", src);
        out = fopen(dst, "we");
        cr_assert_not_null(out, "create %s", dst);
        while ((n = fread(buf, 1, sizeof(buf), in)) > 0)
                cr_assert_eq(fwrite(buf, 1, n, out), n);
        fclose(in);
        cr_assert_eq(fclose(out), 0);
        cr_assert_eq(chmod(dst, 0644), 0);
}

void test_root_cleanup(char *root) {
        if (test_count_processes(root, false))
                test_count_processes(root, true);
        test_rmtree(root);
        free(root);
}

uint8_t *test_read_file(const char *path, size_t *ret_len) {
        FILE *f = fopen(path, "re");
        uint8_t *buf = malloc(1 << 20);

        cr_assert_not_null(f, "open %s", path);
        cr_assert_not_null(buf);
        *ret_len = fread(buf, 1, 1 << 20, f);
        fclose(f);
        return buf;
}
