#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/fileio.h"
#include "common/proc.h"
#include "common/util.h"
#include "tpmstate/ctrl.h"
#include "tpmstate/swtpm.h"

/* The fds swtpm gets, fixed so that its argv can name them. */
enum { CHILD_CTRL_FD = 3, CHILD_LOG_FD = 4, CHILD_KEY_FD = 5, CHILD_MIGRATION_KEY_FD = 6 };

const char *swtpm_permall_name(enum tpm_version version) {
        return version == TPM_VERSION_1_2 ? "tpm-00.permall" : "tpm2-00.permall";
}

static int open_dir(const char *what, const char *dir, vmsup_error **err) {
        int fd;

        if (!dir || dir[0] != '/')
                return vmsup_fail(err, VMSUP_ERR_CONFIG, 0, "%s '%s' is not an absolute path", what, dir ? dir : "");
        fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0)
                return vmsup_fail(err, errno == ENOENT ? VMSUP_ERR_NOT_FOUND : VMSUP_ERR_SYSTEM, errno, "%s '%s'", what, dir);
        return fd;
}

int swtpm_state_exists(const char *dir, enum tpm_version version, vmsup_error **err) {
        _cleanup_close_ int dfd = open_dir("TPM state dir", dir, err);
        const char *name = swtpm_permall_name(version);
        struct stat st;

        if (dfd < 0)
                return dfd;
        if (fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
                if (errno == ENOENT)
                        return 0;
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, errno, "TPM state '%s/%s'", dir, name);
        }
        if (!S_ISREG(st.st_mode))
                return vmsup_fail(err, VMSUP_ERR_DATA, 0, "TPM state '%s/%s' is not a regular file", dir, name);
        return 1;
}

/* The last few non-empty lines of path from byte offset start on, joined with "; ".
 * Used to put what swtpm or swtpm_setup said into an error. Never fails: "" at worst. */
static char *log_tail(const char *path, off_t start) {
        _cleanup_close_ int fd = path ? open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW) : -1;
        char buf[2048], *lines[4] = { NULL }, *save = NULL, *line, *out;
        size_t nlines = 0, len = 0;
        struct stat st;
        off_t from;
        ssize_t n;

        if (fd < 0 || fstat(fd, &st) < 0 || st.st_size <= start)
                return strdup("");
        from = st.st_size - start > (off_t) sizeof(buf) - 1 ? st.st_size - (off_t) sizeof(buf) + 1 : start;
        n = pread(fd, buf, sizeof(buf) - 1, from);
        if (n <= 0)
                return strdup("");
        buf[n] = '\0';
        for (line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
                while (*line == ' ' || *line == '\t')
                        line++;
                if (!*line)
                        continue;
                if (nlines == ARRAY_SIZE(lines)) {
                        memmove(lines, lines + 1, sizeof(lines) - sizeof(lines[0]));
                        nlines--;
                }
                lines[nlines++] = line;
        }
        out = calloc(1, sizeof(buf) + 4 * ARRAY_SIZE(lines));
        if (!out)
                return NULL;
        for (size_t i = 0; i < nlines; i++)
                len += (size_t) sprintf(out + len, "%s%s", i ? "; " : "", lines[i]);
        return out;
}

static off_t file_size(const char *path) {
        struct stat st;

        return path && stat(path, &st) == 0 ? st.st_size : 0;
}

/* Values go into swtpm's "key = value" files (where '#' starts a comment and swtpm_localca
 * expands ${VAR}) and into swtpm's comma-separated option syntax. */
static int check_path(const char *what, const char *path, const char *forbidden, vmsup_error **err) {
        if (!path || path[0] != '/')
                return vmsup_fail(err, VMSUP_ERR_CONFIG, 0, "%s '%s' is not an absolute path", what, path ? path : "");
        for (const char *c = forbidden; *c; c++)
                if (strchr(path, *c))
                        return vmsup_fail(err, VMSUP_ERR_CONFIG, 0, "%s '%s' contains '%s', which swtpm cannot take",
                                          what, path, *c == '\n' ? "\\n" : (char[]) { *c, 0 });
        return 0;
}

/* The local CA dir is shared by every guest of the host, and guests start at the same
 * time: a file is replaced only when its content differs (normally never after the first
 * start), through a temp file of its own, so that concurrent preparers neither clobber
 * each other's temp files nor let swtpm_setup read a half-written config. */
static int write_file_at(int dfd, const char *dir, const char *name, const char *content, vmsup_error **err) {
        _cleanup_free_ void *old = NULL;
        vmsup_error *rerr = NULL;
        size_t len = strlen(content), old_len = 0;

        if (file_read_at(dfd, dir, name, len, false, &old, &old_len, &rerr) == 0 && old_len == len &&
            memcmp(old, content, len) == 0)
                return 0;
        vmsup_error_free(rerr);
        return file_write_atomic_at(dfd, dir, name, content, len, 0600, err);
}

int swtpm_localca_prepare(const char *dir, const char *localca_tool, char **ret_setup_conf, vmsup_error **err) {
        _cleanup_free_ char *setup_conf = NULL, *localca_conf = NULL, *setup_path = NULL;
        _cleanup_close_ int dfd = -1;
        struct stat st;
        int r;

        r = check_path("local CA dir", dir, "\n#$,", err);
        if (r < 0)
                return r;
        r = check_path("swtpm_localca", localca_tool, "\n#$", err);
        if (r < 0)
                return r;
        if (mkdir(dir, 0700) < 0 && errno != EEXIST)
                return vmsup_fail(err, VMSUP_ERR_CANT_CREATE, errno, "create local CA dir '%s'", dir);
        dfd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (dfd < 0)
                return vmsup_fail(err, VMSUP_ERR_CANT_CREATE, errno, "local CA dir '%s'", dir);
        if (fstat(dfd, &st) < 0)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, errno, "local CA dir '%s'", dir);
        /* the CA's private keys live here */
        if (st.st_uid != geteuid() || (st.st_mode & 077))
                return vmsup_fail(err, VMSUP_ERR_DENIED, 0,
                                  "local CA dir '%s' must belong to uid %u with no access for group or others "
                                  "(it has uid %u, mode %04o)",
                                  dir, (unsigned) geteuid(), (unsigned) st.st_uid, (unsigned) (st.st_mode & 07777));

        if (asprintf(&setup_conf,
                     "# Written by vmsup: EK and platform certificates come from vmsup's own local CA.\n"
                     "create_certs_tool = %s\n"
                     "create_certs_tool_config = %s/swtpm-localca.conf\n"
                     "create_certs_tool_options = %s/swtpm-localca.options\n"
                     "active_pcr_banks = sha256\n",
                     localca_tool, dir, dir) < 0 ||
            asprintf(&localca_conf,
                     "# Written by vmsup. swtpm_localca creates the CA here on first use.\n"
                     "statedir = %s\n"
                     "signingkey = %s/signkey.pem\n"
                     "issuercert = %s/issuercert.pem\n"
                     "certserial = %s/certserial\n",
                     dir, dir, dir, dir) < 0 ||
            asprintf(&setup_path, "%s/swtpm_setup.conf", dir) < 0)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "local CA config");
        if ((r = write_file_at(dfd, dir, "swtpm_setup.conf", setup_conf, err)) < 0 ||
            (r = write_file_at(dfd, dir, "swtpm-localca.conf", localca_conf, err)) < 0 ||
            (r = write_file_at(dfd, dir, "swtpm-localca.options",
                               "--platform-manufacturer vmsup\n--platform-version 2.1\n--platform-model QEMU\n",
                               err)) < 0)
                return r;
        *ret_setup_conf = TAKE_PTR(setup_path);
        return 0;
}

int swtpm_manufacture(const struct swtpm_setup_opts *o, vmsup_error **err) {
        _cleanup_free_ char *tpm_arg = NULL, *tmpenv = NULL, *tail = NULL;
        _cleanup_close_ int dfd = -1;
        struct proc_result res = { 0 };
        char *argv[32], *envp[2] = { NULL, NULL }, status[64];
        size_t n = 0;
        off_t log_start;
        int r;

        if ((r = check_path("swtpm_setup", o->swtpm_setup, "", err)) < 0 ||
            /* swtpm_setup splits --tpm at spaces */
            (r = check_path("swtpm", o->swtpm, " \t\n", err)) < 0 ||
            (r = check_path("swtpm_setup config", o->config, "", err)) < 0 ||
            (r = check_path("swtpm_setup log", o->log_path, "", err)) < 0)
                return r;
        if (!o->vmid || !*o->vmid)
                return vmsup_fail(err, VMSUP_ERR_INTERNAL, EINVAL, "manufacture TPM: no VM id");
        dfd = open_dir("TPM state dir", o->state_dir, err);
        if (dfd < 0)
                return vmsup_error_prefix(err, "manufacture TPM %s", tpm_version_to_string(o->version));
        if (asprintf(&tpm_arg, "%s socket", o->swtpm) < 0 ||
            (o->tmp_dir && asprintf(&tmpenv, "TMPDIR=%s", o->tmp_dir) < 0))
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "manufacture TPM");
        envp[0] = tmpenv;

        argv[n++] = (char *) o->swtpm_setup;
        if (o->version == TPM_VERSION_2_0)
                argv[n++] = (char *) "--tpm2";
        argv[n++] = (char *) "--tpm";
        argv[n++] = tpm_arg;
        argv[n++] = (char *) "--tpmstate";
        argv[n++] = (char *) o->state_dir;
        argv[n++] = (char *) "--vmid";
        argv[n++] = (char *) o->vmid;
        argv[n++] = (char *) "--createek";
        argv[n++] = (char *) "--create-ek-cert";
        argv[n++] = (char *) "--create-platform-cert";
        argv[n++] = (char *) "--lock-nvram";
        argv[n++] = (char *) "--not-overwrite";
        argv[n++] = (char *) "--config";
        argv[n++] = (char *) o->config;
        argv[n++] = (char *) "--logfile";
        argv[n++] = (char *) o->log_path;
        argv[n] = NULL;

        log_start = file_size(o->log_path);
        r = proc_run_capture_cancel(argv, envp, o->timeout_ms > 0 ? o->timeout_ms : 60000, 64 * 1024, o->cancel_fd,
                                    &res, err);
        if (r < 0)
                return vmsup_error_prefix(err, "manufacture TPM %s in '%s'", tpm_version_to_string(o->version),
                                          o->state_dir);
        if (!WIFEXITED(res.status) || WEXITSTATUS(res.status) != 0) {
                tail = log_tail(o->log_path, log_start);
                r = vmsup_fail(err, VMSUP_ERR_UNAVAILABLE, 0, "manufacture TPM %s in '%s': swtpm_setup %s: %s",
                               tpm_version_to_string(o->version), o->state_dir,
                               proc_describe_status(res.status, status, sizeof(status)),
                               tail && *tail ? tail : (*res.errout ? res.errout : "(no log)"));
                proc_result_clear(&res);
                return r;
        }
        proc_result_clear(&res);
        r = swtpm_state_exists(o->state_dir, o->version, err);
        if (r < 0)
                return r;
        if (r == 0)
                return vmsup_fail(err, VMSUP_ERR_UNAVAILABLE, 0, "manufacture TPM %s in '%s': swtpm_setup left no %s",
                                  tpm_version_to_string(o->version), o->state_dir, swtpm_permall_name(o->version));
        return 0;
}

/* Wait for the pidfd until the deadline: 1 exited, 0 still running. */
static int wait_exit(int pidfd, long deadline) {
        for (;;) {
                struct pollfd p = { .fd = pidfd, .events = POLLIN };
                long left = deadline - monotonic_ms();
                int n = poll(&p, 1, left > 0 ? (int) left : 0);

                if (n < 0 && errno == EINTR)
                        continue;
                return n > 0;
        }
}

/* Reap through the pidfd (no pid reuse race). -1 when someone else already reaped it. */
static int reap(int pidfd) {
        siginfo_t si = { 0 };

        while (waitid(P_PIDFD, (id_t) pidfd, &si, WEXITED) < 0)
                if (errno != EINTR)
                        return -1;
        if (si.si_code == CLD_EXITED)
                return W_EXITCODE(si.si_status, 0);
        return (si.si_status & 0x7f) | (si.si_code == CLD_DUMPED ? 0x80 : 0); /* as waitpid() says "killed" */
}

void swtpm_proc_release(struct swtpm_proc *p) {
        if (!p)
                return;
        closep(&p->pidfd);
        closep(&p->ctrl_fd);
        p->pidfd = p->ctrl_fd = -1;
}

int swtpm_stop_via_ctrl(struct swtpm_proc *p, int timeout_ms, int *ret_status, vmsup_error **err) {
        _cleanup_error_ vmsup_error *ctrl_err = NULL;
        long deadline = monotonic_ms() + timeout_ms;
        int r, status;

        r = swtpm_ctrl_shutdown(p->ctrl_fd, timeout_ms, &ctrl_err);
        /* An error other than a closed channel (-EPIPE) means swtpm is there and did not agree. */
        if (r < 0 && r != -EPIPE) {
                *err = TAKE_PTR(ctrl_err);
                return vmsup_error_prefix(err, "stop swtpm (pid %d)", (int) p->pid);
        }
        if (!wait_exit(p->pidfd, deadline))
                return vmsup_fail(err, VMSUP_ERR_BUSY, 0, "stop swtpm (pid %d): still running %d ms after %s",
                                  (int) p->pid, timeout_ms,
                                  r < 0 ? "it closed its control channel" : "CMD_SHUTDOWN");
        status = reap(p->pidfd);
        if (ret_status)
                *ret_status = status;
        return 0;
}

/* Make sure the swtpm a failed launch started is gone: CMD_SHUTDOWN if it still listens,
 * else SIGTERM (swtpm stores its state and exits on it). Never SIGKILL. Returns false if
 * it is still running. */
static bool launch_undo(struct swtpm_proc *p, int timeout_ms) {
        _cleanup_error_ vmsup_error *ignored = NULL;

        if (swtpm_stop_via_ctrl(p, timeout_ms, NULL, &ignored) == 0)
                return true;
        if (syscall(SYS_pidfd_send_signal, p->pidfd, SIGTERM, NULL, 0) < 0 && errno != ESRCH)
                return false;
        if (!wait_exit(p->pidfd, monotonic_ms() + timeout_ms))
                return false;
        (void) reap(p->pidfd);
        return true;
}

static int add_key_arg(char **argv, size_t *n, char **storage, const char *option, int child_fd) {
        if (asprintf(storage, "fd=%d,mode=aes-256-cbc,format=binary", child_fd) < 0)
                return -ENOMEM;
        argv[(*n)++] = (char *) option;
        argv[(*n)++] = *storage;
        return 0;
}

/* swtpm_setup (run as root) and whoever else filled the state dir leave root's files:
 * swtpm running as another user must be able to read and replace them. */
static int give_state_files(int dfd, const char *dir, uid_t uid, gid_t gid, vmsup_error **err) {
        _cleanup_close_ int scan = openat(dfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        DIR *d = scan >= 0 ? fdopendir(scan) : NULL;
        struct dirent *e;
        int r = 0;

        if (!d)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, errno, "start swtpm: read TPM state dir '%s'", dir);
        scan = -1; /* closedir closes it */
        while ((e = readdir(d))) {
                struct stat st;

                if (streq(e->d_name, ".") || streq(e->d_name, ".."))
                        continue;
                if (fstatat(dfd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISREG(st.st_mode) ||
                    (st.st_uid == uid && st.st_gid == gid))
                        continue;
                if (fchownat(dfd, e->d_name, uid, gid, AT_SYMLINK_NOFOLLOW) < 0) {
                        r = vmsup_fail(err, VMSUP_ERR_DENIED, errno, "start swtpm: chown '%s/%s' to swtpm's user", dir,
                                       e->d_name);
                        break;
                }
        }
        closedir(d);
        return r;
}

int swtpm_launch(const struct swtpm_launch_opts *o, struct swtpm_proc *ret, vmsup_error **err) {
        _cleanup_free_ char *tpmstate = NULL, *log = NULL, *key = NULL, *mkey = NULL, *tail = NULL;
        _cleanup_close_ int dfd = -1, log_fd = -1, peer = -1;
        struct swtpm_proc p = { .pid = -1, .pidfd = -1, .ctrl_fd = -1 };
        struct proc_fd_map fds[4];
        size_t n = 0, nfds = 0;
        char *argv[24], ctrl[40];
        int sp[2], r, timeout_ms = o->timeout_ms > 0 ? o->timeout_ms : 10000;
        off_t log_start = 0;

        if ((r = check_path("swtpm", o->swtpm, "", err)) < 0 ||
            (r = check_path("TPM state dir", o->state_dir, ",\n", err)) < 0)
                return r;
        if (o->death_signal == SIGKILL)
                return vmsup_fail(err, VMSUP_ERR_INTERNAL, EINVAL,
                                  "start swtpm: SIGKILL as its death signal would skip the TPM's shutdown");
        /* swtpm 0.7.1 only looks at the state dir on CMD_INIT, which QEMU sends: check it now */
        dfd = open_dir("TPM state dir", o->state_dir, err);
        if (dfd < 0)
                return vmsup_error_prefix(err, "start swtpm");
        if (o->set_ids && (r = give_state_files(dfd, o->state_dir, o->uid, o->gid, err)) < 0)
                return r;
        if (o->log_fd > 2) {
                log_fd = fcntl(o->log_fd, F_DUPFD_CLOEXEC, 3);
                if (log_fd < 0)
                        return vmsup_fail(err, VMSUP_ERR_SYSTEM, errno, "start swtpm: its log fd");
        } else if (o->log_path) {
                log_fd = open(o->log_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
                if (log_fd < 0)
                        return vmsup_fail(err, VMSUP_ERR_CANT_CREATE, errno, "start swtpm: open log '%s'", o->log_path);
                log_start = lseek(log_fd, 0, SEEK_END);
        }
        if (o->ctrl_peer_fd > 2) {
                peer = fcntl(o->ctrl_peer_fd, F_DUPFD_CLOEXEC, 3);
                if (peer < 0)
                        return vmsup_fail(err, VMSUP_ERR_SYSTEM, errno, "start swtpm: its control channel");
        } else {
                if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp) < 0)
                        return vmsup_fail(err, VMSUP_ERR_SYSTEM, errno, "start swtpm: socketpair");
                p.ctrl_fd = sp[0];
                peer = sp[1];
        }

        argv[n++] = (char *) o->swtpm;
        argv[n++] = (char *) "socket";
        if (o->version == TPM_VERSION_2_0)
                argv[n++] = (char *) "--tpm2";
        if (asprintf(&tpmstate, "dir=%s,mode=0600", o->state_dir) < 0)
                goto nomem;
        argv[n++] = (char *) "--tpmstate";
        argv[n++] = tpmstate;
        snprintf(ctrl, sizeof(ctrl), "type=unixio,clientfd=%d", CHILD_CTRL_FD);
        argv[n++] = (char *) "--ctrl";
        argv[n++] = ctrl;
        fds[nfds++] = (struct proc_fd_map) { peer, CHILD_CTRL_FD };
        if (log_fd >= 0) {
                if (o->log_level > 0 ? asprintf(&log, "fd=%d,level=%d", CHILD_LOG_FD, o->log_level) < 0
                                     : asprintf(&log, "fd=%d", CHILD_LOG_FD) < 0)
                        goto nomem;
                argv[n++] = (char *) "--log";
                argv[n++] = log;
                fds[nfds++] = (struct proc_fd_map) { log_fd, CHILD_LOG_FD };
        }
        if (o->key_fd >= 0) {
                if (add_key_arg(argv, &n, &key, "--key", CHILD_KEY_FD) < 0)
                        goto nomem;
                fds[nfds++] = (struct proc_fd_map) { o->key_fd, CHILD_KEY_FD };
        }
        if (o->migration_key_fd >= 0) {
                if (add_key_arg(argv, &n, &mkey, "--migration-key", CHILD_MIGRATION_KEY_FD) < 0)
                        goto nomem;
                fds[nfds++] = (struct proc_fd_map) { o->migration_key_fd, CHILD_MIGRATION_KEY_FD };
        }
        if (o->seccomp) {
                argv[n++] = (char *) "--seccomp";
                argv[n++] = (char *) "action=kill";
        }
        argv[n] = NULL;

        {
                struct proc_spawn_opts so = {
                        .argv = argv,
                        .stdin_fd = -1,
                        /* what swtpm prints before its log is set up goes to the log too */
                        .stdout_fd = log_fd,
                        .stderr_fd = log_fd,
                        .fds = fds,
                        .n_fds = nfds,
                        .death_signal = o->death_signal ? o->death_signal : SIGTERM,
                        .set_ids = o->set_ids,
                        .uid = o->uid,
                        .gid = o->gid,
                        /* ^C on vmsup's terminal must not reach swtpm: vmsup shuts it down */
                        .new_session = true,
                };

                r = proc_spawn(&so, &p.pid, &p.pidfd, err);
                if (r < 0) {
                        closep(&p.ctrl_fd);
                        return r;
                }
        }
        closep(&peer);
        if (o->ctrl_peer_fd > 2) {
                *ret = p; /* QEMU, on the other end, asks and checks */
                return 0;
        }

        r = swtpm_ctrl_get_capability(p.ctrl_fd, timeout_ms, &p.caps, err);
        if (r < 0) {
                if (wait_exit(p.pidfd, monotonic_ms())) {
                        char status[64];
                        int st = reap(p.pidfd);

                        tail = o->log_fd > 2 ? (o->log_tail ? o->log_tail(o->log_userdata) : NULL)
                                             : log_tail(o->log_path, log_start);
                        vmsup_error_free(*err);
                        *err = NULL;
                        r = vmsup_fail(err, VMSUP_ERR_UNAVAILABLE, 0, "start swtpm: it %s: %s",
                                       st < 0 ? "exited" : proc_describe_status(st, status, sizeof(status)),
                                       tail && *tail ? tail : "(no log)");
                        swtpm_proc_release(&p);
                        return r;
                }
                goto fail;
        }
        r = swtpm_ctrl_caps_check(p.caps, o->version, err);
        if (r < 0)
                goto fail;
        *ret = p;
        return 0;

nomem:
        closep(&p.ctrl_fd);
        return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "start swtpm");
fail:
        if (!launch_undo(&p, timeout_ms))
                vmsup_error_prefix(err, "swtpm (pid %d) is still running after a failed start", (int) p.pid);
        vmsup_error_prefix(err, "start swtpm");
        swtpm_proc_release(&p);
        return r;
}
