/* The supervisor's seccomp filter, loaded in forked children: what it kills, what it refuses
 * softly, what still works under it; and vmsup seccomp --print. */
#include "config.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/personality.h>
#include <sys/ptrace.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/util.h"
#include "seccomp/filter.h"
#include "tests/helpers.h"

enum call {
        CALL_PTRACE, CALL_MOUNT, CALL_PACKET_SOCKET, CALL_INIT_MODULE, CALL_BPF, CALL_UNSHARE_USER,
        CALL_CLONE_NEWNS, CALL_PERSONALITY, CALL_KEYCTL, CALL_PROCESS_VM_READV, CALL_I386_ABI,
};

static const char *const call_names[] = {
        "ptrace", "mount", "socket(AF_PACKET)", "init_module", "bpf", "unshare(CLONE_NEWUSER)",
        "clone(CLONE_NEWNS)", "personality", "keyctl", "process_vm_readv", "int 0x80 (i386 ABI)",
};

static void do_call(enum call c) {
        union bpf_attr attr = { 0 };
        char buf[8];
        struct iovec local = { buf, sizeof(buf) }, remote = { buf, sizeof(buf) };

        switch (c) {
        case CALL_PTRACE:
                ptrace(PTRACE_TRACEME, 0, NULL, NULL);
                break;
        case CALL_MOUNT:
                mount("none", "/nonexistent", "tmpfs", 0, NULL);
                break;
        case CALL_PACKET_SOCKET:
                socket(AF_PACKET, SOCK_RAW, 0);
                break;
        case CALL_INIT_MODULE:
                syscall(SYS_init_module, NULL, 0, "");
                break;
        case CALL_BPF:
                syscall(SYS_bpf, BPF_PROG_LOAD, &attr, sizeof(attr));
                break;
        case CALL_UNSHARE_USER:
                unshare(CLONE_NEWUSER);
                break;
        case CALL_CLONE_NEWNS:
                syscall(SYS_clone, CLONE_NEWNS | SIGCHLD, NULL, NULL, NULL, 0);
                break;
        case CALL_PERSONALITY:
                personality(0xffffffff);
                break;
        case CALL_KEYCTL:
                syscall(SYS_keyctl, 0, 0, 0, 0, 0);
                break;
        case CALL_PROCESS_VM_READV:
                syscall(SYS_process_vm_readv, getppid(), &local, 1, &remote, 1, 0);
                break;
        case CALL_I386_ABI: {
                long ret = 20; /* getpid on i386 */

                __asm__ volatile("int $0x80" : "+a"(ret) : : "memory");
                break;
        }
        }
}

/* Fork; the child loads the filter in mode and runs fn; returns the wait status. */
static int in_child(enum seccomp_filter_mode mode, int (*fn)(void *), void *arg) {
        pid_t pid = fork();
        int status;

        cr_assert_geq(pid, 0);
        if (pid == 0) {
                vmsup_error *err = NULL;

                if (seccomp_filter_load(mode, &err) < 0) {
                        fprintf(stderr, "load: %s\n", err->msg);
                        _exit(100);
                }
                _exit(fn(arg));
        }
        cr_assert_eq(waitpid(pid, &status, 0), pid);
        return status;
}

static int run_call(void *arg) {
        do_call(*(enum call *) arg);
        return 0;
}

Test(seccomp, forbidden_calls_kill_the_process_with_sigsys) {
        for (enum call c = CALL_PTRACE; c <= CALL_I386_ABI; c++) {
                int status = in_child(SECCOMP_FILTER_KILL, run_call, &c);

                cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGSYS, "%s: wait status 0x%x, not SIGSYS",
                          call_names[c], status);
        }
}

Test(seccomp, log_mode_lets_forbidden_calls_through) {
        enum call c = CALL_PERSONALITY; /* harmless: a query */
        int status = in_child(SECCOMP_FILTER_LOG, run_call, &c);

        cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "wait status 0x%x", status);
}

static int soft_refusals(void *arg) {
        (void) arg;
        /* glibc's getaddrinfo falls back when netlink is missing */
        if (socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, 0) >= 0 || errno != EAFNOSUPPORT)
                return 1;
        /* clone3's flags cannot be inspected: glibc falls back to clone */
        if (syscall(SYS_clone3, NULL, 0) >= 0 || errno != ENOSYS)
                return 2;
        if (syscall(SYS_io_uring_setup, 1, NULL) >= 0 || errno != ENOSYS)
                return 3;
        return 0;
}

Test(seccomp, netlink_clone3_and_io_uring_fail_softly) {
        int status = in_child(SECCOMP_FILTER_KILL, soft_refusals, NULL);

        cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "wait status 0x%x", status);
}

/* What the supervisor does all day, under the filter. */
static int allowed_work(void *arg) {
        const char *dir = arg;
        char path[512], tmp[512], buf[256], rnd[32];
        const char *greeting = "{\"QMP\": {\"version\": {}, \"capabilities\": []}}\r\n";
        int sv[2], fd, dfd, ufd;
        pid_t pid;
        int status;
        void *page;

        /* a QMP-like round trip on a socketpair, and a unix and an IP socket */
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
                return 10;
        if (write(sv[1], greeting, strlen(greeting)) != (ssize_t) strlen(greeting) ||
            read(sv[0], buf, sizeof(buf)) != (ssize_t) strlen(greeting) || memcmp(buf, greeting, strlen(greeting)))
                return 11;
        ufd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (ufd < 0 || close(ufd) < 0)
                return 12;
        ufd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (ufd < 0 || close(ufd) < 0)
                return 13;
        /* a durable write: temp file, fsync, rename, fsync the dir */
        snprintf(tmp, sizeof(tmp), "%s/sealed.tmp", dir);
        snprintf(path, sizeof(path), "%s/sealed", dir);
        fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (fd < 0 || write(fd, "data", 4) != 4 || fsync(fd) < 0 || close(fd) < 0)
                return 20;
        if (rename(tmp, path) < 0)
                return 21;
        dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd < 0 || fsync(dfd) < 0 || close(dfd) < 0)
                return 22;
        /* key material: random bytes, locked memory kept out of core dumps */
        if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t) sizeof(rnd))
                return 30;
        page = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (page == MAP_FAILED || mlock(page, 4096) < 0 || madvise(page, 4096, MADV_DONTDUMP) < 0 ||
            munlock(page, 4096) < 0 || munmap(page, 4096) < 0)
                return 31;
        /* children: fork and exec stay allowed (docs/security.md, option (a)) */
        pid = fork();
        if (pid == 0) {
                execl("/bin/true", "true", (char *) NULL);
                _exit(127);
        }
        if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
                return 40;
        return 0;
}

Test(seccomp, the_supervisors_work_still_runs_under_the_filter) {
        char *dir = test_mkdtemp();
        int status = in_child(SECCOMP_FILTER_KILL, allowed_work, dir);

        cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "wait status 0x%x (exit code = failing step)",
                  status);
        test_rmtree(dir);
        free(dir);
}

Test(seccomp, mode_names) {
        enum seccomp_filter_mode m;

        cr_assert_eq(seccomp_filter_mode_from_string("kill", &m), 0);
        cr_assert_eq(m, SECCOMP_FILTER_KILL);
        cr_assert_eq(seccomp_filter_mode_from_string("log", &m), 0);
        cr_assert_eq(m, SECCOMP_FILTER_LOG);
        cr_assert_eq(seccomp_filter_mode_from_string("off", &m), 0);
        cr_assert_eq(m, SECCOMP_FILTER_OFF);
        cr_assert_eq(seccomp_filter_mode_from_string("trap", &m), -EINVAL);
        cr_assert_str_eq(seccomp_filter_mode_to_string(SECCOMP_FILTER_LOG), "log");
}

Test(seccomp, print_shows_the_allowlist) {
        char *dir = test_mkdtemp(), *conf = test_write_file(dir, "vmsup.conf", "", 0600);
        struct test_run r;

        test_run_vmsup(&r, NULL, (const char *[]) { "--config", conf, "seccomp", "--print", NULL });
        cr_assert_eq(r.exit_code, 0, "%s", r.err);
        cr_assert(strstr(r.out, "# filter for syscall \"execve\""), "%s", r.out);
        cr_assert(strstr(r.out, "# filter for syscall \"getrandom\""), "%s", r.out);
        cr_assert(strstr(r.out, "# filter for syscall \"clone3\" (435) [priority: 65535]\n  if ($syscall == 435)\n"
                                "    action ERRNO(38);"), "%s", r.out);
        /* socket(): AF_NETLINK (16) refused softly, AF_UNIX, AF_INET, AF_INET6 allowed */
        cr_assert(strstr(r.out, "if ($a0.lo32 == 16)\n        action ERRNO(97);"), "%s", r.out);
        cr_assert(strstr(r.out, "if ($a0.lo32 == 10)\n        action ALLOW;"), "%s", r.out);
        cr_assert(strstr(r.out, "  # default action\n  action KILL_PROCESS;"), "%s", r.out);
        cr_assert(strstr(r.out, "# invalid architecture action\naction KILL_PROCESS;"), "%s", r.out);
        cr_assert_null(strstr(r.out, "\"ptrace\""), "%s", r.out);
        cr_assert_null(strstr(r.out, "\"mount\""), "%s", r.out);
        cr_assert_null(strstr(r.out, "\"bpf\""), "%s", r.out);
        test_run_clear(&r);
        free(conf);

        conf = test_write_file(dir, "log.conf", "[security]\nseccomp = log\n", 0600);
        test_run_vmsup(&r, NULL, (const char *[]) { "--config", conf, "seccomp", "--print", NULL });
        cr_assert_eq(r.exit_code, 0, "%s", r.err);
        cr_assert(strstr(r.out, "  # default action\n  action LOG;"), "%s", r.out);
        test_run_clear(&r);
        free(conf);

        conf = test_write_file(dir, "bad.conf", "[security]\nseccomp = trap\n", 0600);
        test_run_vmsup(&r, NULL, (const char *[]) { "--config", conf, "seccomp", "--print", NULL });
        cr_assert_eq(r.exit_code, 78);
        cr_assert(strstr(r.err, "bad.conf:2: [security] seccomp: 'trap' is not kill, log or off"), "%s", r.err);
        test_run_clear(&r);
        free(conf);

        test_run_vmsup(&r, NULL, (const char *[]) { "seccomp", NULL });
        cr_assert_eq(r.exit_code, 64);
        test_run_clear(&r);
        test_rmtree(dir);
        free(dir);
}
