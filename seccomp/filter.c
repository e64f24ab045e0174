#include "config.h"

#include <errno.h>
#include <sched.h>
#include <seccomp.h>
#include <stdbool.h>
#include <sys/socket.h>

#include "common/util.h"
#include "seccomp/filter.h"

/*
 * Why the supervisor keeps clone and execve (option (a) of issue 8).
 *
 * vmsup run must start children again long after start-up: swtpm and QEMU on a hard
 * reboot, swtpm --print-capabilities before every swtpm launch, swtpm_setup (which runs
 * swtpm_localca and its own swtpm) when a TPM is manufactured, and later the destination
 * side of a live migration. A process that forbids itself execve can no longer do any of
 * that. The alternative, a "spawner" helper forked before the filter is loaded that
 * launches children on request (clone(CLONE_PARENT) would even keep them vmsup's
 * children), moves the launch into a second, unfiltered root process that does whatever
 * the supervisor asks; it is left for later.
 *
 * A seccomp filter is inherited across fork and execve and cannot be removed, so every
 * child vmsup starts after loading it (swtpm_setup, swtpm_localca, swtpm, QEMU) runs under
 * it too, below its own sandbox. The filter is loaded before the first child starts, so a
 * call missing here fails on the first start, not on a hard reboot months later. The
 * allowlist is therefore the union of what those programs need (measured with strace -f
 * over start, manufacture, QMP, hard reboot and stop; see docs/security.md), plus what
 * QEMU needs with KVM and disks, and what the planned sealing, Barbican (libcurl) and
 * migration code need. It keeps every one of these processes away from the kernel's
 * administrative and debugging interfaces: no ptrace, process_vm_*, mount, namespaces,
 * module loading, kexec, bpf, perf, keyrings, io_uring, userfaultfd, raw or packet
 * sockets, and whatever is not listed.
 */

/* Allowed without conditions. */
static const char *const allowed[] = {
        /* files and directories: logs, the guest's dirs, sealed state (write a temp file,
         * fsync, rename, fsync the dir), swtpm's TPM state files */
        "read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev", "preadv2", "pwritev2",
        "lseek", "close", "close_range", "dup", "dup2", "dup3", "fcntl", "openat", "newfstatat", "fstat", "stat",
        "lstat", "statx", "statfs", "fstatfs", "access", "faccessat", "faccessat2", "readlink", "readlinkat",
        "getdents64", "getcwd", "chdir", "fchdir", "umask", "mkdir", "mkdirat", "rmdir", "unlink", "unlinkat",
        "rename", "renameat", "renameat2", "linkat", "chmod", "fchmod", "fchmodat", "ftruncate", "fallocate",
        "fsync", "fdatasync", "sync_file_range", "fadvise64", "flock",
        /* the live TPM state files go to swtpm's user before every swtpm launch */
        "fchown", "fchownat",
        /* memory; mlock and madvise(MADV_DONTDUMP) for secrets, mbind and friends for QEMU */
        "brk", "mmap", "munmap", "mprotect", "mremap", "madvise", "mlock", "mlock2", "munlock", "membarrier",
        "get_mempolicy", "set_mempolicy", "mbind", "memfd_create", "memfd_secret",
        /* threads and time */
        "futex", "set_robust_list", "set_tid_address", "rseq", "arch_prctl", "sched_getaffinity",
        "sched_setaffinity", "sched_yield", "clock_gettime", "clock_getres", "clock_nanosleep", "nanosleep",
        "gettimeofday", "timerfd_create", "timerfd_settime", "timerfd_gettime",
        /* identity and limits; set*id and setgroups run in a child between fork and exec */
        "getpid", "getppid", "gettid", "getuid", "geteuid", "getgid", "getegid", "getresuid", "getresgid",
        "getgroups", "setresuid", "setresgid", "setgroups", "setsid", "uname", "sysinfo", "getrusage",
        "prlimit64", "prctl",
        /* stacking a further filter only restricts: swtpm --seccomp and QEMU -sandbox use it */
        "seccomp",
        /* signals */
        "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "rt_sigtimedwait", "rt_sigpending", "sigaltstack",
        "restart_syscall", "kill", "tgkill", "tkill", "signalfd4",
        /* children: the supervisor starts swtpm_setup, swtpm and QEMU (see above) */
        "execve", "wait4", "waitid", "exit", "exit_group", "pidfd_open", "pidfd_send_signal",
        /* the event loop */
        "epoll_create1", "epoll_ctl", "epoll_wait", "epoll_pwait", "epoll_pwait2", "poll", "ppoll", "select",
        "pselect6", "eventfd2", "pipe2", "inotify_init1", "inotify_add_watch", "inotify_rm_watch",
        /* sockets (socket() and socketpair() themselves are filtered on the domain below):
         * QMP, the control socket, libcurl to Barbican, TLS between supervisors */
        "bind", "listen", "accept4", "connect", "getsockname", "getpeername", "getsockopt", "setsockopt",
        "sendto", "recvfrom", "sendmsg", "recvmsg", "sendmmsg", "recvmmsg", "shutdown",
        /* QEMU: KVM, terminals, tap devices (the taps and vhost-nets QEMU is given); the
         * supervisor: TUNSETIFF, SIOCSIFMTU on a NIC's tap (supervisor/nics.c). ioctl
         * numbers are not filtered: KVM's are many. */
        "ioctl",
        /* QEMU with aio=native disks */
        "io_setup", "io_destroy", "io_submit", "io_getevents", "io_cancel",
        /* random bytes for keys, nonces, TLS */
        "getrandom",
};

/* Namespaces are no business of vmsup or its children: clone() must not create any. */
#define CLONE_NAMESPACE_FLAGS \
        (CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET)

static const char *const mode_names[] = {
        [SECCOMP_FILTER_KILL] = "kill",
        [SECCOMP_FILTER_LOG] = "log",
        [SECCOMP_FILTER_OFF] = "off",
};

int seccomp_filter_mode_from_string(const char *s, enum seccomp_filter_mode *ret) {
        for (size_t i = 0; i < ARRAY_SIZE(mode_names); i++)
                if (streq(s, mode_names[i])) {
                        *ret = (enum seccomp_filter_mode) i;
                        return 0;
                }
        return -EINVAL;
}

const char *seccomp_filter_mode_to_string(enum seccomp_filter_mode mode) {
        return (size_t) mode < ARRAY_SIZE(mode_names) ? mode_names[mode] : NULL;
}

static void ctx_releasep(scmp_filter_ctx *ctx) {
        if (*ctx)
                seccomp_release(*ctx);
}
#define _cleanup_seccomp_ __attribute__((cleanup(ctx_releasep)))

/* libseccomp returns negative errno values. */
static int add_rule(scmp_filter_ctx ctx, uint32_t action, const char *name, unsigned n_args,
                    const struct scmp_arg_cmp *args, vmsup_error **err) {
        int nr = seccomp_syscall_resolve_name(name);
        int r;

        if (nr == __NR_SCMP_ERROR)
                return vmsup_fail(err, VMSUP_ERR_INTERNAL, 0, "seccomp filter: libseccomp does not know the system call '%s'",
                                  name);
        r = seccomp_rule_add_array(ctx, action, nr, n_args, args);
        if (r < 0)
                return vmsup_fail(err, VMSUP_ERR_INTERNAL, -r, "seccomp filter: rule for '%s'", name);
        return 0;
}

static int build(enum seccomp_filter_mode mode, scmp_filter_ctx *ret, vmsup_error **err) {
        _cleanup_seccomp_ scmp_filter_ctx ctx = NULL;
        uint32_t deny;
        int r;

        if (mode != SECCOMP_FILTER_KILL && mode != SECCOMP_FILTER_LOG)
                return vmsup_fail(err, VMSUP_ERR_INTERNAL, EINVAL, "seccomp filter: no filter for mode '%s'",
                                  seccomp_filter_mode_to_string(mode) ?: "?");
        /* KILL_PROCESS (API level 3, Linux 4.14) rather than KILL_THREAD: a supervisor with
         * one thread gone would be in an undefined state. LOG needs the same level. */
        if (seccomp_api_get() < 3)
                return vmsup_fail(err, VMSUP_ERR_UNAVAILABLE, 0,
                                  "seccomp filter: the kernel or libseccomp lacks SECCOMP_RET_KILL_PROCESS and "
                                  "SECCOMP_RET_LOG (API level %u, 3 needed)", seccomp_api_get());
        deny = mode == SECCOMP_FILTER_KILL ? SCMP_ACT_KILL_PROCESS : SCMP_ACT_LOG;
        ctx = seccomp_init(deny);
        if (!ctx)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "seccomp filter: seccomp_init");
        /* Calls from another ABI (i386 int 0x80, x32) are not in the allowlist: kill. */
        if ((r = seccomp_attr_set(ctx, SCMP_FLTATR_ACT_BADARCH, SCMP_ACT_KILL_PROCESS)) < 0 ||
            (r = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_NNP, 1)) < 0 ||
            (r = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_TSYNC, 1)) < 0)
                return vmsup_fail(err, VMSUP_ERR_INTERNAL, -r, "seccomp filter: set attributes");

        for (size_t i = 0; i < ARRAY_SIZE(allowed); i++)
                if ((r = add_rule(ctx, SCMP_ACT_ALLOW, allowed[i], 0, NULL, err)) < 0)
                        return r;

        /* socket(): local and IP only. AF_NETLINK fails softly because glibc's getaddrinfo
         * asks the kernel for the host's addresses over it and carries on without; every
         * other family (AF_PACKET, AF_KEY, AF_ALG, AF_VSOCK ...) is refused. */
        static const int domains[] = { AF_UNIX, AF_INET, AF_INET6 };
        for (size_t i = 0; i < ARRAY_SIZE(domains); i++) {
                struct scmp_arg_cmp a = SCMP_A0(SCMP_CMP_EQ, (scmp_datum_t) domains[i]);

                if ((r = add_rule(ctx, SCMP_ACT_ALLOW, "socket", 1, &a, err)) < 0)
                        return r;
        }
        {
                struct scmp_arg_cmp a = SCMP_A0(SCMP_CMP_EQ, AF_NETLINK);

                if ((r = add_rule(ctx, SCMP_ACT_ERRNO(EAFNOSUPPORT), "socket", 1, &a, err)) < 0)
                        return r;
        }
        {
                struct scmp_arg_cmp a = SCMP_A0(SCMP_CMP_EQ, AF_UNIX);

                if ((r = add_rule(ctx, SCMP_ACT_ALLOW, "socketpair", 1, &a, err)) < 0)
                        return r;
        }
        /* fork() and threads are clone() without namespace flags. clone3() keeps its flags
         * in memory that a filter cannot read: ENOSYS makes glibc fall back to clone(). */
        {
                struct scmp_arg_cmp a = SCMP_A0(SCMP_CMP_MASKED_EQ, CLONE_NAMESPACE_FLAGS, 0);

                if ((r = add_rule(ctx, SCMP_ACT_ALLOW, "clone", 1, &a, err)) < 0 ||
                    (r = add_rule(ctx, SCMP_ACT_ERRNO(ENOSYS), "clone3", 0, NULL, err)) < 0)
                        return r;
        }
        /* io_uring has been a steady source of kernel holes; QEMU falls back to ppoll and
         * thread-pool I/O when it is missing. */
        {
                static const char *const missing[] = { "io_uring_setup", "io_uring_enter", "io_uring_register" };

                for (size_t i = 0; i < ARRAY_SIZE(missing); i++)
                        if ((r = add_rule(ctx, SCMP_ACT_ERRNO(ENOSYS), missing[i], 0, NULL, err)) < 0)
                                return r;
        }
        *ret = TAKE_PTR(ctx);
        return 0;
}

int seccomp_filter_load(enum seccomp_filter_mode mode, vmsup_error **err) {
        _cleanup_seccomp_ scmp_filter_ctx ctx = NULL;
        int r;

        if (mode == SECCOMP_FILTER_OFF)
                return 0;
        r = build(mode, &ctx, err);
        if (r < 0)
                return r;
        r = seccomp_load(ctx);
        if (r < 0)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, -r, "load the seccomp filter (mode %s)",
                                  seccomp_filter_mode_to_string(mode));
        return 0;
}

int seccomp_filter_export(enum seccomp_filter_mode mode, int fd, vmsup_error **err) {
        _cleanup_seccomp_ scmp_filter_ctx ctx = NULL;
        int r;

        r = build(mode, &ctx, err);
        if (r < 0)
                return r;
        r = seccomp_export_pfc(ctx, fd);
        if (r < 0)
                return vmsup_fail(err, VMSUP_ERR_IO, -r, "write the seccomp filter");
        return 0;
}
