#include "config.h"

#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <signal.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
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

char *test_write_conf(const char *dir, const char *name, const struct test_conf *c) {
        const char *user = c->as_nobody ? "nobody" : "root", *group = c->as_nobody ? "nogroup" : "root";
        char *tpm = NULL, *paths = NULL, *secrets = NULL, *supervisor = NULL, *barbican = NULL, *text = NULL, *path;

        if (c->swtpm_off)
                cr_assert(asprintf(&tpm, "[tpm]\nswtpm_enabled = false\n%s", c->tpm ? c->tpm : "") > 0);
        else
                cr_assert(asprintf(&tpm, "[tpm]\nswtpm_enabled = true\nswtpm_user = %s\nswtpm_group = %s\n%s", user,
                                   group, c->tpm ? c->tpm : "") > 0);
        if (c->secrets_dir)
                cr_assert(asprintf(&secrets, "secrets_dir = %s\n", c->secrets_dir) > 0);
        else if (c->root)
                cr_assert(asprintf(&secrets, "secrets_dir = %s/state/secrets\n", c->root) > 0);
        if (c->root)
                cr_assert(asprintf(&paths, "[paths]\nstate_dir = %s/state\nrun_dir = %s/run\n%slog_dir = %s/log\n",
                                   c->root, c->root, secrets, c->root) > 0);
        else if (secrets)
                cr_assert(asprintf(&paths, "[paths]\n%s", secrets) > 0);
        if (c->supervisor)
                cr_assert(asprintf(&supervisor, "[supervisor]\n%s", c->supervisor) > 0);
        if (c->barbican_url)
                cr_assert(asprintf(&barbican, "[barbican]\nendpoint = %s\nauth = noauth\n%s", c->barbican_url,
                                   c->barbican ? c->barbican : "") > 0);
        cr_assert(asprintf(&text, "%s[qemu]\naccelerator = tcg\n%s%s%s%s%s%s", tpm,
                           c->as_nobody ? "user = nobody\ngroup = nogroup\n" : "", c->qemu ? c->qemu : "",
                           paths ? paths : "", supervisor ? supervisor : "", barbican ? barbican : "",
                           c->more ? c->more : "") > 0);
        path = test_write_file(dir, name, text, c->mode ? c->mode : 0600);
        free(tpm);
        free(paths);
        free(secrets);
        free(supervisor);
        free(barbican);
        free(text);
        return path;
}

#define TEST_SPEC_TPM "\"hw:tpm_version\": \"2.0\", \"hw:tpm_model\": \"tpm-crb\""

char *test_write_spec(const char *dir, const char *file, const struct test_spec *s) {
        char *owner = NULL, *firmware = NULL, *disks = NULL, *graphics = NULL, *props = NULL, *text = NULL, *path;
        char *on_crash = NULL, *nics = NULL;

        if (s->user_id || s->project_id)
                cr_assert(asprintf(&owner, " \"owner\": {\"user_id\": \"%s\", \"project_id\": \"%s\"},",
                                   s->user_id ? s->user_id : "", s->project_id ? s->project_id : "") > 0);
        if (s->image_properties)
                props = strdup(s->image_properties);
        else
                cr_assert(asprintf(&props, "\"hw_firmware_type\": \"%s\"", s->uefi ? "uefi" : "bios") > 0);
        if (s->firmware)
                cr_assert(asprintf(&firmware, ", \"firmware\": %s", s->firmware) > 0);
        else if (s->guest_dir)
                cr_assert(asprintf(&firmware,
                                   ", \"firmware\": {\"kernel\": \"%s/vmlinuz\", \"initrd\": \"%s/initrd.img\","
                                   " \"cmdline\": \"console=ttyS0 quiet%s%s%s\"}",
                                   s->guest_dir, s->guest_dir, s->hold ? " tpmprobe.hold" : "", s->cmdline ? " " : "",
                                   s->cmdline ? s->cmdline : "") > 0);
        if (s->disks)
                cr_assert(asprintf(&disks, ", \"disks\": %s", s->disks) > 0);
        if (s->graphics)
                cr_assert(asprintf(&graphics, ", \"graphics\": %s", s->graphics) > 0);
        if (s->on_crash)
                cr_assert(asprintf(&on_crash, ", \"on_crash\": \"%s\"", s->on_crash) > 0);
        if (s->nics)
                cr_assert(asprintf(&nics, ", \"nics\": %s", s->nics) > 0);
        cr_assert(props);
        cr_assert(asprintf(&text,
                           "{\"uuid\": \"%s\", \"name\": \"%s\", \"vcpus\": 1, \"memory_mb\": 256,%s"
                           " \"flavor\": {\"name\": \"%s\", \"extra_specs\": {%s}},"
                           " \"image\": {\"name\": \"%s\", \"properties\": {%s}}%s%s%s%s%s}",
                           s->uuid, s->name ? s->name : "g", owner ? owner : "", s->flavor ? s->flavor : "m1.tpm",
                           s->extra_specs ? s->extra_specs : TEST_SPEC_TPM,
                           s->image ? s->image : "demo", props, firmware ? firmware : "", disks ? disks : "",
                           graphics ? graphics : "", on_crash ? on_crash : "", nics ? nics : "") > 0);
        path = test_write_file(dir, file, text, s->mode ? s->mode : 0644);
        free(owner);
        free(firmware);
        free(disks);
        free(graphics);
        free(nics);
        free(on_crash);
        free(props);
        free(text);
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

pid_t test_hold_lock_as_run(const char *state_dir, int *ret_hold) {
        int p[2];
        pid_t pid;

        cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
        pid = fork();
        cr_assert_geq(pid, 0);
        if (pid == 0) {
                int fd = open(state_dir, O_RDONLY | O_DIRECTORY);

                if (fd < 0 || flock(fd, LOCK_EX) < 0 || dup2(p[0], 0) < 0)
                        _exit(1);
                /* waits on a pipe nobody writes to, alone (no child left when it is killed);
                 * the dir in its arguments: test_root_cleanup() finds it after a failed test */
                execl("/bin/sh", "/bin/sh", "-c", "read x", "run", state_dir, (char *) NULL);
                _exit(1);
        }
        close(p[0]);
        *ret_hold = p[1];
        return pid;
}

unsigned test_mtu_of(const char *ifname) {
        int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        struct ifreq ifr = { 0 };

        snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", ifname);
        cr_assert_eq(ioctl(s, SIOCGIFMTU, &ifr), 0, "SIOCGIFMTU %s: %s", ifname, strerror(errno));
        close(s);
        return (unsigned) ifr.ifr_mtu;
}
