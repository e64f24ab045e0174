#include "config.h"

#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/proc.h"
#include "tests/helpers.h"
#include "tpmstate/ctrl.h"
#include "tpmstate/swtpm.h"

#define SWTPM "/usr/bin/swtpm"
#define SWTPM_SETUP "/usr/bin/swtpm_setup"
#define SWTPM_LOCALCA "/usr/bin/swtpm_localca"
#define QEMU "/usr/bin/qemu-system-x86_64"

static char *dir;
static struct swtpm_proc tpm = { .pid = -1, .pidfd = -1, .ctrl_fd = -1 };

/* swtpm_setup orphans its own swtpm and waits until that process is gone. As vmsup will,
 * the test process is a child subreaper and reaps such orphans at once; it leaves its
 * direct children (swtpm_setup itself, swtpm launched by the test) to their waiters. */
static void reap_orphans(int sig) {
        int saved = errno;

        (void) sig;
        for (;;) {
                siginfo_t si = { 0 };
                char path[64], comm[32] = "";
                ssize_t n;
                int fd;

                if (waitid(P_ALL, 0, &si, WEXITED | WNOHANG | WNOWAIT) < 0 || si.si_pid == 0)
                        break;
                snprintf(path, sizeof(path), "/proc/%d/comm", (int) si.si_pid);
                fd = open(path, O_RDONLY | O_CLOEXEC);
                if (fd < 0)
                        break;
                n = read(fd, comm, sizeof(comm) - 1);
                close(fd);
                if (n <= 0 || strcmp(comm, "swtpm\n") != 0 || si.si_pid == tpm.pid)
                        break;
                waitpid(si.si_pid, NULL, 0);
        }
        errno = saved;
}

static void need(const char *path, const char *package) {
        cr_assert_eq(access(path, X_OK), 0, "%s is missing: install the Debian package %s", path, package);
}

static void setup(void) {
        struct sigaction sa = { .sa_handler = reap_orphans, .sa_flags = SA_RESTART | SA_NOCLDSTOP };

        need(SWTPM, "swtpm");
        need(SWTPM_SETUP, "swtpm-tools");
        cr_assert_eq(prctl(PR_SET_CHILD_SUBREAPER, 1), 0);
        cr_assert_eq(sigaction(SIGCHLD, &sa, NULL), 0);
        dir = test_mkdtemp();
}

/* No swtpm outlives a test, failed or not: CMD_SHUTDOWN, else SIGTERM (never SIGKILL). */
static void teardown(void) {
        if (tpm.pidfd >= 0) {
                vmsup_error *err = NULL;

                if (swtpm_stop_via_ctrl(&tpm, 5000, NULL, &err) < 0) {
                        kill(tpm.pid, SIGTERM);
                        waitpid(tpm.pid, NULL, 0);
                }
                vmsup_error_free(err);
        }
        swtpm_proc_release(&tpm);
        tpm.pid = -1;
        test_rmtree(dir);
        free(dir);
}

TestSuite(swtpm, .init = setup, .fini = teardown, .timeout = 60);

static char *path_in(const char *name) {
        char *p = NULL;

        cr_assert(asprintf(&p, "%s/%s", dir, name) > 0);
        return p;
}

static char *make_dir(const char *name) {
        char *p = path_in(name);

        cr_assert_eq(mkdir(p, 0700), 0, "mkdir %s", p);
        return p;
}

static char *slurp(const char *path, size_t *ret_len) {
        FILE *f = fopen(path, "re");
        char *buf = NULL;
        size_t len = 0;

        cr_assert_not_null(f, "open %s", path);
        buf = calloc(1, 1 << 20);
        len = fread(buf, 1, (1 << 20) - 1, f);
        fclose(f);
        if (ret_len)
                *ret_len = len;
        return buf;
}

static void manufacture(const char *state, enum tpm_version v, const char *log) {
        char *ca = path_in("ca"), *conf = NULL;
        vmsup_error *err = NULL;
        struct swtpm_setup_opts o = {
                .swtpm_setup = SWTPM_SETUP, .swtpm = SWTPM, .state_dir = state, .log_path = log, .tmp_dir = ca,
                .vmid = "guest1:6f1d2c1e-8d1c-4d0b-9a57-0c3a44b9f3a1", .version = v, .timeout_ms = 60000,
        };

        cr_assert_eq(swtpm_localca_prepare(ca, SWTPM_LOCALCA, &conf, &err), 0, "%s", err ? err->msg : "");
        o.config = conf;
        cr_assert_eq(swtpm_manufacture(&o, &err), 0, "%s", err ? err->msg : "");
        free(conf);
        free(ca);
}

static void check_manufactured(enum tpm_version v) {
        char *state = make_dir("state"), *log = path_in("setup.log"), *text, *ca_cert = path_in("ca/issuercert.pem");
        vmsup_error *err = NULL;
        struct stat st;

        cr_assert_eq(swtpm_state_exists(state, v, &err), 0);
        manufacture(state, v, log);
        cr_assert_eq(swtpm_state_exists(state, v, &err), 1, "%s", err ? err->msg : "");
        text = slurp(log, NULL);
        cr_assert(strstr(text, "Successfully created EK certificate locally."), "%s", text);
        cr_assert(strstr(text, "Successfully created platform certificate locally."), "%s", text);
        cr_assert(strstr(text, "Successfully authored TPM state."), "%s", text);
        cr_assert(strstr(text, "--configfile"), "%s", text);
        cr_assert_eq(stat(ca_cert, &st), 0, "the CA is vmsup's own, in its dir");
        cr_assert_eq(stat(dir, &st), 0);
        free(text);
        free(state);
        free(log);
        free(ca_cert);
}

Test(swtpm, manufacture_tpm2_with_certificates_from_our_ca) {
        check_manufactured(TPM_VERSION_2_0);
}

Test(swtpm, manufacture_tpm12_with_certificates_from_our_ca) {
        check_manufactured(TPM_VERSION_1_2);
}

Test(swtpm, second_manufacture_keeps_the_state) {
        char *state = make_dir("state"), *log = path_in("setup.log"), *permall = path_in("state/tpm2-00.permall");
        char *before, *after;
        size_t len1, len2;

        manufacture(state, TPM_VERSION_2_0, log);
        before = slurp(permall, &len1);
        manufacture(state, TPM_VERSION_2_0, log);
        after = slurp(permall, &len2);
        cr_assert_eq(len1, len2);
        cr_assert(len1 > 1000 && memcmp(before, after, len1) == 0, "the permall was rewritten");
        free(before);
        free(after);
        free(state);
        free(log);
        free(permall);
}

Test(swtpm, manufacture_into_a_missing_dir_says_so) {
        char *ca = path_in("ca"), *conf = NULL, *log = path_in("setup.log");
        vmsup_error *err = NULL;
        struct swtpm_setup_opts o = { .swtpm_setup = SWTPM_SETUP, .swtpm = SWTPM, .state_dir = "/nonexistent/state",
                                      .log_path = log, .vmid = "g:u", .version = TPM_VERSION_2_0 };

        cr_assert_eq(swtpm_localca_prepare(ca, SWTPM_LOCALCA, &conf, &err), 0);
        o.config = conf;
        cr_assert_lt(swtpm_manufacture(&o, &err), 0);
        cr_assert_str_eq(err->msg, "manufacture TPM 2.0: TPM state dir '/nonexistent/state': No such file or directory");
        vmsup_error_free(err);
        free(ca);
        free(conf);
        free(log);
}

Test(swtpm, swtpm_setup_failure_carries_its_log) {
        char *ca = path_in("ca"), *conf = NULL, *log = path_in("setup.log"), *state = make_dir("state");
        vmsup_error *err = NULL;
        /* a swtpm that is not one: swtpm_setup cannot start its TPM */
        struct swtpm_setup_opts o = { .swtpm_setup = SWTPM_SETUP, .swtpm = "/bin/false", .state_dir = state,
                                      .log_path = log, .vmid = "g:u", .version = TPM_VERSION_2_0 };

        cr_assert_eq(swtpm_localca_prepare(ca, SWTPM_LOCALCA, &conf, &err), 0);
        o.config = conf;
        cr_assert_lt(swtpm_manufacture(&o, &err), 0);
        cr_assert(strncmp(err->msg, "manufacture TPM 2.0 in '", 24) == 0, "%s", err->msg);
        cr_assert(strstr(err->msg, "swtpm_setup exited with status 1: "), "%s", err->msg);
        cr_assert(strstr(err->msg, "swtpm at /bin/false does not support TPM 2"), "the log tail is in the error: %s",
                  err->msg);
        vmsup_error_free(err);
        free(ca);
        free(conf);
        free(log);
        free(state);
}

Test(swtpm, local_ca_dir_must_be_private) {
        char *ca = path_in("ca"), *conf = NULL;
        vmsup_error *err = NULL;
        struct stat st;

        cr_assert_eq(swtpm_localca_prepare(ca, SWTPM_LOCALCA, &conf, &err), 0);
        cr_assert_eq(stat(ca, &st), 0);
        cr_assert_eq(st.st_mode & 0777, 0700);
        free(conf);
        cr_assert_eq(chmod(ca, 0755), 0);
        cr_assert_lt(swtpm_localca_prepare(ca, SWTPM_LOCALCA, &conf, &err), 0);
        cr_assert(strstr(err->msg, "with no access for group or others (it has uid 0, mode 0755)"), "%s", err->msg);
        cr_assert_eq(err->kind, VMSUP_ERR_DENIED);
        vmsup_error_free(err);
        free(ca);
}

/* Guests started at the same moment (the benchmark's first density run: 50 `vmsup run`
 * at once, one failed) all prepare the one local CA dir: none may fail or see another's
 * half-written config, and no temp file is left behind. */
Test(swtpm, local_ca_prepared_by_many_at_once) {
        enum { N = 40 };
        char *ca = path_in("ca"), *conf = NULL, *text;
        vmsup_error *err = NULL;
        struct dirent *e;
        pid_t pids[N];
        int gate[2], failed = 0;
        DIR *d;

        cr_assert_eq(pipe(gate), 0);
        for (int i = 0; i < N; i++) {
                pids[i] = fork();
                cr_assert_geq(pids[i], 0);
                if (pids[i] == 0) {
                        char c;

                        close(gate[1]);
                        if (read(gate[0], &c, 1) != 0) /* EOF: all go when the gate closes */
                                _exit(2);
                        if (swtpm_localca_prepare(ca, SWTPM_LOCALCA, &conf, &err) < 0) {
                                fprintf(stderr, "%s\n", err->msg);
                                _exit(1);
                        }
                        _exit(0);
                }
        }
        close(gate[0]);
        close(gate[1]);
        for (int i = 0; i < N; i++) {
                int status;

                cr_assert_eq(waitpid(pids[i], &status, 0), pids[i]);
                failed += !(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        }
        cr_assert_eq(failed, 0, "%d of %d failed", failed, N);
        cr_assert_eq(swtpm_localca_prepare(ca, SWTPM_LOCALCA, &conf, &err), 0);
        text = slurp(conf, NULL);
        cr_assert(strstr(text, "create_certs_tool = " SWTPM_LOCALCA "\n") && strstr(text, "active_pcr_banks = sha256\n"),
                  "%s", text);
        free(text);
        d = opendir(ca);
        cr_assert_not_null(d);
        while ((e = readdir(d)))
                cr_assert(!strstr(e->d_name, ".tmp"), "left behind: %s", e->d_name);
        closedir(d);
        free(conf);
        free(ca);
}

static void launch(const char *state, enum tpm_version v, int key_fd) {
        char *log = path_in("swtpm.log");
        vmsup_error *err = NULL;
        struct swtpm_launch_opts o = { .swtpm = SWTPM, .state_dir = state, .log_path = log, .log_level = 2,
                                       .version = v, .seccomp = true, .key_fd = key_fd, .migration_key_fd = -1,
                                       .timeout_ms = 5000 };

        cr_assert_eq(swtpm_launch(&o, &tpm, &err), 0, "%s", err ? err->msg : "");
        free(log);
}

static void stop_ok(void) {
        vmsup_error *err = NULL;
        int status = -2;

        cr_assert_eq(swtpm_stop_via_ctrl(&tpm, 5000, &status, &err), 0, "%s", err ? err->msg : "");
        cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "swtpm ended with status 0x%x", status);
        swtpm_proc_release(&tpm);
        tpm.pid = -1;
}

Test(swtpm, launch_answers_with_what_qemu_needs_and_shuts_down) {
        char *state = make_dir("state"), *log = path_in("setup.log"), *info = NULL;
        vmsup_error *err = NULL;
        uint32_t flags = 99;

        manufacture(state, TPM_VERSION_2_0, log);
        launch(state, TPM_VERSION_2_0, -1);
        cr_assert_eq(swtpm_ctrl_caps_check(tpm.caps, TPM_VERSION_2_0, &err), 0);
        cr_assert_eq(swtpm_ctrl_get_config(tpm.ctrl_fd, 2000, &flags, &err), 0, "%s", err ? err->msg : "");
        cr_assert_eq(flags, 0, "no key given");
        cr_assert_eq(swtpm_ctrl_get_info(tpm.ctrl_fd, 2000, SWTPM_INFO_TPMSPECIFICATION, &info, &err), 0, "%s",
                     err ? err->msg : "");
        cr_assert(strstr(info, "\"family\":\"2.0\""), "%s", info);
        cr_assert_eq(swtpm_ctrl_init(tpm.ctrl_fd, 5000, 0, &err), 0, "%s", err ? err->msg : "");
        stop_ok();
        free(info);
        free(state);
        free(log);
}

Test(swtpm, launch_of_a_missing_binary_says_so) {
        char *state = make_dir("state");
        vmsup_error *err = NULL;
        struct swtpm_launch_opts o = { .swtpm = "/nonexistent/swtpm", .state_dir = state, .version = TPM_VERSION_2_0,
                                       .key_fd = -1, .migration_key_fd = -1 };

        cr_assert_lt(swtpm_launch(&o, &tpm, &err), 0);
        cr_assert_str_eq(err->msg, "start '/nonexistent/swtpm': No such file or directory");
        cr_assert_eq(err->kind, VMSUP_ERR_UNAVAILABLE);
        vmsup_error_free(err);
        free(state);
}

Test(swtpm, launch_with_a_bad_state_dir_says_so) {
        char *file = test_write_file(dir, "not-a-dir", "", 0600);
        vmsup_error *err = NULL;
        struct swtpm_launch_opts o = { .swtpm = SWTPM, .state_dir = "/nonexistent/state", .version = TPM_VERSION_2_0,
                                       .key_fd = -1, .migration_key_fd = -1 };

        cr_assert_lt(swtpm_launch(&o, &tpm, &err), 0);
        cr_assert_str_eq(err->msg, "start swtpm: TPM state dir '/nonexistent/state': No such file or directory");
        err = vmsup_error_free(err);
        o.state_dir = file;
        cr_assert_lt(swtpm_launch(&o, &tpm, &err), 0);
        cr_assert(strstr(err->msg, "Not a directory"), "%s", err->msg);
        err = vmsup_error_free(err);
        o.state_dir = "/tmp/a,b";
        cr_assert_lt(swtpm_launch(&o, &tpm, &err), 0);
        cr_assert_str_eq(err->msg, "TPM state dir '/tmp/a,b' contains ',', which swtpm cannot take");
        err = vmsup_error_free(err);
        o.state_dir = dir;
        o.death_signal = SIGKILL;
        cr_assert_lt(swtpm_launch(&o, &tpm, &err), 0);
        cr_assert(strstr(err->msg, "SIGKILL"), "%s", err->msg);
        vmsup_error_free(err);
        free(file);
}

static int key_pipe(const unsigned char key[32]) {
        int p[2];

        cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
        cr_assert_eq(write(p[1], key, 32), 32);
        close(p[1]);
        return p[0];
}

Test(swtpm, state_key_right_and_wrong) {
        char *state = make_dir("state"), *log = path_in("swtpm.log"), *text;
        unsigned char key[32], wrong[32];
        vmsup_error *err = NULL;
        uint32_t flags = 0;
        int kfd;

        for (int i = 0; i < 32; i++) {
                key[i] = (unsigned char) random();
                wrong[i] = key[i] ^ 0x5a;
        }
        /* first start: the TPM manufactures itself on INIT and writes its state encrypted */
        kfd = key_pipe(key);
        launch(state, TPM_VERSION_2_0, kfd);
        close(kfd);
        cr_assert_eq(swtpm_ctrl_get_config(tpm.ctrl_fd, 2000, &flags, &err), 0);
        cr_assert_eq(flags, SWTPM_CONFIG_FILE_KEY);
        cr_assert_eq(swtpm_ctrl_init(tpm.ctrl_fd, 5000, 0, &err), 0, "%s", err ? err->msg : "");
        stop_ok();
        cr_assert_eq(swtpm_state_exists(state, TPM_VERSION_2_0, &err), 1);

        kfd = key_pipe(key);
        launch(state, TPM_VERSION_2_0, kfd);
        close(kfd);
        cr_assert_eq(swtpm_ctrl_init(tpm.ctrl_fd, 5000, 0, &err), 0, "same key: %s", err ? err->msg : "");
        stop_ok();

        kfd = key_pipe(wrong);
        launch(state, TPM_VERSION_2_0, kfd);
        close(kfd);
        cr_assert_lt(swtpm_ctrl_init(tpm.ctrl_fd, 5000, 0, &err), 0, "a wrong key must not open the state");
        cr_assert_str_eq(err->msg, "swtpm control: CMD_INIT: TPM result 0x101 (TPM_RC_FAILURE)");
        vmsup_error_free(err);
        stop_ok();
        text = slurp(log, NULL);
        cr_assert(strstr(text, "Verification of HMAC failed"), "%s", text);
        free(text);
        free(state);
        free(log);
}

/* QMP on a socketpair: send one command, return the first line holding a reply. */
static char *qmp(int fd, const char *cmd) {
        static char buf[65536];
        size_t len = 0;

        if (cmd)
                cr_assert_eq(write(fd, cmd, strlen(cmd)), (ssize_t) strlen(cmd));
        for (;;) {
                struct pollfd p = { .fd = fd, .events = POLLIN };
                char *nl;
                ssize_t n;

                while ((nl = memchr(buf, '\n', len))) {
                        size_t l = (size_t) (nl - buf) + 1;
                        char *line = strndup(buf, l);

                        memmove(buf, buf + l, len - l);
                        len -= l;
                        if (!cmd || strstr(line, "\"return\"") || strstr(line, "\"error\""))
                                return line;
                        free(line);
                }
                cr_assert_eq(poll(&p, 1, 20000), 1, "QEMU did not answer %s", cmd ? cmd : "(greeting)");
                n = read(fd, buf + len, sizeof(buf) - 1 - len);
                cr_assert_gt(n, 0, "QEMU closed QMP");
                len += (size_t) n;
        }
}

/* The design point of swtpm_launch(): QEMU and vmsup share swtpm's one control
 * connection. QEMU gets a dup of vmsup's end; after QEMU is SIGKILLed (swtpm keeps
 * running then), vmsup still shuts swtpm down through its own copy. */
Test(swtpm, qemu_uses_the_shared_ctrl_channel_and_vmsup_stops_swtpm_after_qemu_is_killed) {
        char *state = make_dir("state"), *log = path_in("setup.log"), *line;
        char *argv[] = { QEMU, "-accel", "tcg", "-machine", "q35", "-nodefaults", "-display", "none",
                         "-chardev", "socket,id=chrtpm,fd=3", "-tpmdev", "emulator,id=tpm0,chardev=chrtpm",
                         "-device", "tpm-crb,tpmdev=tpm0", "-S", "-qmp", "stdio", NULL };
        int q[2], qpidfd = -1, status;
        vmsup_error *err = NULL;
        pid_t qpid;

        need(QEMU, "qemu-system-x86");
        manufacture(state, TPM_VERSION_2_0, log);
        launch(state, TPM_VERSION_2_0, -1);
        cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, q), 0);
        {
                struct proc_fd_map map[] = { { tpm.ctrl_fd, 3 } };
                struct proc_spawn_opts so = { .argv = argv, .stdin_fd = q[1], .stdout_fd = q[1], .stderr_fd = -1,
                                              .fds = map, .n_fds = 1, .death_signal = SIGKILL };

                cr_assert_eq(proc_spawn(&so, &qpid, &qpidfd, &err), 0, "%s", err ? err->msg : "");
        }
        close(q[1]);
        free(qmp(q[0], NULL));
        free(qmp(q[0], "{\"execute\":\"qmp_capabilities\"}\n"));
        line = qmp(q[0], "{\"execute\":\"query-tpm\"}\n");
        cr_assert(strstr(line, "\"type\": \"emulator\"") && strstr(line, "\"chardev\": \"chrtpm\""), "%s", line);
        free(line);

        kill(qpid, SIGKILL);
        cr_assert_eq(waitpid(qpid, &status, 0), qpid);
        close(qpidfd);
        close(q[0]);
        {
                struct pollfd p = { .fd = tpm.pidfd, .events = POLLIN };

                cr_assert_eq(poll(&p, 1, 0), 0, "swtpm keeps running after QEMU's SIGKILL");
        }
        stop_ok();
        free(state);
        free(log);
}
