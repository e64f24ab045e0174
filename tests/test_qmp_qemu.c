/* The QMP client and 'vmsup qmp' against a real QEMU (qemu-system-x86_64, TCG, -S). */
#include "config.h"

#include <criterion/criterion.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/proc.h"
#include "common/util.h"
#include "qmp/client.h"
#include "tests/helpers.h"

static pid_t qemu_pid = -1;
static char *dir;

static void setup(void) {
        dir = test_mkdtemp();
}

/* No QEMU outlives its test, whatever happened in it. */
static void teardown(void) {
        if (qemu_pid > 0) {
                kill(qemu_pid, SIGKILL);
                waitpid(qemu_pid, NULL, 0);
                qemu_pid = -1;
        }
        test_rmtree(dir);
        free(dir);
}

TestSuite(qmp_qemu, .init = setup, .fini = teardown, .timeout = 60);

static char *qemu_binary(void) {
        vmsup_error *err = NULL;
        char *path = proc_find_executable("qemu-system-x86_64", &err);

        if (!path)
                cr_assert_fail("these tests need QEMU: %s (install the Debian package qemu-system-x86)", err->msg);
        return path;
}

/* Start QEMU with fd as its fd 3, the monitor's chardev (chardev_opts names it). */
static void spawn_qemu(int fd, const char *chardev_opts) {
        char *qemu = qemu_binary();
        char *const argv[] = { qemu, "-accel", "tcg", "-machine", "q35", "-nodefaults", "-display", "none", "-S",
                               "-chardev", (char *) chardev_opts, "-mon", "chardev=mon,mode=control", NULL };
        char *const envp[] = { NULL };

        qemu_pid = fork();
        cr_assert_geq(qemu_pid, 0);
        if (qemu_pid == 0) {
                int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);

                /* a crashed test process takes QEMU with it */
                prctl(PR_SET_PDEATHSIG, SIGKILL);
                if (devnull < 0 || dup2(devnull, 0) < 0 || dup2(devnull, 1) < 0 || dup2(fd, 3) < 0)
                        _exit(127);
                close_range(4, ~0U, 0);
                execve(qemu, argv, envp);
                _exit(127);
        }
        free(qemu);
}

static void wait_qemu_exit_0(void) {
        int status = 0;

        cr_assert_eq(waitpid(qemu_pid, &status, 0), qemu_pid);
        qemu_pid = -1;
        cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "QEMU status %d", status);
}

static char events_seen[1024];

static void on_event(void *userdata, const char *event, json_object *data, json_object *timestamp) {
        size_t n = strlen(events_seen);

        cr_assert_not_null(timestamp, "QEMU stamps every event");
        snprintf(events_seen + n, sizeof(events_seen) - n, "%s;", event);
}

static json_object *run(struct qmp_client *c, const char *command, const char *args_json, int pass_fd) {
        json_object *args = args_json ? json_tokener_parse(args_json) : NULL, *ret = NULL;
        vmsup_error *err = NULL;

        if (qmp_client_execute(c, command, args, pass_fd, 10000, &ret, &err) < 0)
                cr_assert_fail("%s: %s", command, err->msg);
        json_object_put(args);
        return ret;
}

/* The message of QEMU's error for a command that must fail. */
static char *run_error(struct qmp_client *c, const char *command, const char *args_json) {
        json_object *args = args_json ? json_tokener_parse(args_json) : NULL;
        vmsup_error *err = NULL;
        char *msg;

        cr_assert_lt(qmp_client_execute(c, command, args, -1, 10000, NULL, &err), 0, "%s succeeded", command);
        json_object_put(args);
        cr_assert_eq(err->kind, VMSUP_ERR_FAILED);
        msg = strdup(err->msg);
        vmsup_error_free(err);
        return msg;
}

static const char *str_at(json_object *o, const char *key) {
        json_object *v = NULL;

        cr_assert(json_object_object_get_ex(o, key, &v), "no '%s' in %s", key, json_object_to_json_string(o));
        return json_object_get_string(v);
}

Test(qmp_qemu, greeting_status_version_tpm_models_fds_events_quit) {
        char *argv[] = { NULL, "--version", NULL }, version[64], *msg;
        struct proc_result pr = { 0 };
        struct qmp_client *c = NULL;
        vmsup_error *err = NULL;
        json_object *ret, *qemu, *v;
        int sv[2], fd;

        cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
        spawn_qemu(sv[1], "socket,id=mon,fd=3");
        close(sv[1]);
        cr_assert_eq(qmp_client_new_fd(sv[0], &c, &err), 0);
        qmp_client_set_event_handler(c, on_event, NULL);
        if (qmp_client_handshake(c, 20000, &err) < 0)
                cr_assert_fail("handshake with QEMU: %s", err->msg);

        /* the greeting's version is the one the binary reports */
        argv[0] = qemu_binary();
        if (proc_run_capture(argv, NULL, 20000, 65536, &pr, &err) < 0)
                cr_assert_fail("%s", err->msg);
        snprintf(version, sizeof(version), "QEMU emulator version %s", qmp_client_qemu_version(c));
        cr_assert(strncmp(pr.out, version, strlen(version)) == 0 && strchr(" \n", pr.out[strlen(version)]),
                  "greeting says %s, --version says %s", qmp_client_qemu_version(c), pr.out);
        proc_result_clear(&pr);
        free(argv[0]);

        ret = run(c, "query-status", NULL, -1);
        cr_assert_str_eq(str_at(ret, "status"), "prelaunch");
        json_object_put(ret);

        ret = run(c, "query-version", NULL, -1);
        cr_assert(json_object_object_get_ex(ret, "qemu", &qemu));
        snprintf(version, sizeof(version), "%s.%s.%s", str_at(qemu, "major"), str_at(qemu, "minor"),
                 str_at(qemu, "micro"));
        cr_assert_str_eq(version, qmp_client_qemu_version(c));
        json_object_put(ret);

        ret = run(c, "query-tpm-models", NULL, -1);
        cr_assert(json_object_is_type(ret, json_type_array));
        {
                bool tis = false, crb = false;

                for (size_t i = 0; i < json_object_array_length(ret); i++) {
                        const char *m = json_object_get_string(json_object_array_get_idx(ret, i));

                        tis |= streq(m, "tpm-tis");
                        crb |= streq(m, "tpm-crb");
                }
                cr_assert(tis && crb, "%s", json_object_to_json_string(ret));
        }
        json_object_put(ret);

        /* QEMU's own errors */
        msg = run_error(c, "getfd", "{\"fdname\": \"tpm0\"}");
        cr_assert_str_eq(msg, "QMP command 'getfd' failed: GenericError: No file descriptor supplied via SCM_RIGHTS");
        free(msg);

        /* an fd sent with SCM_RIGHTS: QEMU holds it under the name until closefd */
        fd = memfd_create("vmsup-test", MFD_CLOEXEC);
        cr_assert_geq(fd, 0);
        json_object_put(run(c, "getfd", "{\"fdname\": \"tpm0\"}", fd));
        json_object_put(run(c, "closefd", "{\"fdname\": \"tpm0\"}", -1));
        msg = run_error(c, "closefd", "{\"fdname\": \"tpm0\"}");
        cr_assert_str_eq(msg, "QMP command 'closefd' failed: GenericError: File descriptor named 'tpm0' not found");
        free(msg);
        ret = run(c, "add-fd", "{\"fdset-id\": 7, \"opaque\": \"vmsup\"}", fd);
        cr_assert_str_eq(str_at(ret, "fdset-id"), "7");
        json_object_put(ret);
        ret = run(c, "query-fdsets", NULL, -1);
        cr_assert_eq(json_object_array_length(ret), 1, "%s", json_object_to_json_string(ret));
        v = json_object_array_get_idx(ret, 0);
        cr_assert(json_object_object_get_ex(v, "fds", &v));
        cr_assert_eq(json_object_array_length(v), 1);
        cr_assert_str_eq(str_at(json_object_array_get_idx(v, 0), "opaque"), "vmsup");
        json_object_put(ret);
        close(fd);

        /* events arrive in order, none taken for a reply */
        json_object_put(run(c, "cont", NULL, -1));
        json_object_put(run(c, "stop", NULL, -1));
        ret = run(c, "query-status", NULL, -1);
        cr_assert_str_eq(str_at(ret, "status"), "paused");
        json_object_put(ret);
        cr_assert_str_eq(events_seen, "RESUME;STOP;");

        json_object_put(run(c, "quit", NULL, -1));
        wait_qemu_exit_0();
        /* QEMU closed its end: the SHUTDOWN event comes, then the end */
        while (qmp_client_dispatch(c, &err) >= 0)
                ;
        cr_assert_str_eq(err->msg, "QEMU closed the QMP connection");
        cr_assert_str_eq(events_seen, "RESUME;STOP;SHUTDOWN;");
        vmsup_error_free(err);
        qmp_client_free(c);
}

/* QEMU's monitor on a socket path, for 'vmsup qmp --socket'. We bind and listen ourselves
 * and hand QEMU the listening fd: the path accepts connections before QEMU has even
 * started, so there is nothing to wait for. */
static char *listen_for_qemu(void) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        char *path = NULL;
        int fd;

        cr_assert(asprintf(&path, "%s/qmp.sock", dir) > 0);
        cr_assert_lt(strlen(path), sizeof(sa.sun_path));
        strcpy(sa.sun_path, path);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        cr_assert_geq(fd, 0);
        cr_assert_eq(bind(fd, (struct sockaddr *) &sa, sizeof(sa)), 0);
        cr_assert_eq(listen(fd, 8), 0);
        spawn_qemu(fd, "socket,id=mon,fd=3,server=on,wait=off");
        close(fd);
        return path;
}

Test(qmp_qemu, cli_runs_one_command) {
        char *sock = listen_for_qemu();
        struct test_run r;

        test_run_vmsup(&r, NULL, (const char *[]) { "qmp", "--socket", sock, "query-status", NULL });
        cr_assert_eq(r.exit_code, 0, "%s", r.err);
        cr_assert_str_eq(r.out, "{ \"status\": \"prelaunch\", \"singlestep\": false, \"running\": false }\n");
        cr_assert_str_eq(r.err, "");
        test_run_clear(&r);

        test_run_vmsup(&r, NULL,
                       (const char *[]) { "qmp", "--socket", sock, "--timeout", "20", "human-monitor-command",
                                          "{\"command-line\": \"info status\"}", NULL });
        cr_assert_eq(r.exit_code, 0, "%s", r.err);
        cr_assert_str_eq(r.out, "\"VM status: paused (prelaunch)\\r\\n\"\n");
        test_run_clear(&r);

        test_run_vmsup(&r, NULL, (const char *[]) { "qmp", "--socket", sock, "no-such-command", NULL });
        cr_assert_eq(r.exit_code, 1);
        cr_assert_str_eq(r.out, "");
        cr_assert_str_eq(r.err, "vmsup: error: QMP command 'no-such-command' failed: CommandNotFound: "
                                "The command no-such-command has not been found\n");
        test_run_clear(&r);

        test_run_vmsup(&r, NULL, (const char *[]) { "qmp", "--socket", sock, "quit", NULL });
        cr_assert_eq(r.exit_code, 0, "%s", r.err);
        cr_assert_str_eq(r.out, "{ }\n");
        test_run_clear(&r);
        wait_qemu_exit_0();
        free(sock);
}
