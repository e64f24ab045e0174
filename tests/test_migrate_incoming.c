/* `vmsup run --incoming` against what else reaches it (issue 14, items 5, 6 and 8): TCP
 * connections that never start TLS or send garbage, a second --incoming for a guest that
 * already runs on the host, a refused PREPARE, and a hung swtpm when an incoming
 * migration is aborted. Two hosts in network namespaces (tests/twohostfix.c). After each
 * scenario exactly one host runs the guest, and its NV counter and EK go on there. */
#include "config.h"

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/util.h"
#include "secrets/localstore.h"
#include "migrate/migchan.h"
#include "tests/helpers.h"
#include "tests/twohostfix.h"

TestSuite(migrate_incoming, .init = th_setup, .fini = th_teardown, .timeout = 900);

/* A TCP connection from host a to b's --incoming port (made in a's namespace). */
static int connect_from_a(void) {
        int self = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC),
            ns = open(th_path("/run/netns/%s-a", th_prefix), O_RDONLY | O_CLOEXEC), fd;
        struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(49152) };

        cr_assert(self >= 0 && ns >= 0 && inet_pton(AF_INET, th_ip[1], &sa.sin_addr) == 1);
        cr_assert_eq(setns(ns, CLONE_NEWNET), 0);
        fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        cr_assert_geq(fd, 0);
        cr_assert_eq(connect(fd, (struct sockaddr *) &sa, sizeof(sa)), 0, "%s", strerror(errno));
        cr_assert_eq(setns(self, CLONE_NEWNET), 0);
        close(ns);
        close(self);
        return fd;
}

/* The guest's NV counter and EK on host h's console after a reboot there: the counter one
 * up from before, the same EK. */
static void assert_tpm_goes_on(int h, long counter, const char *ek, int probes) {
        const char *reboot[] = { "reboot", UUID, NULL };

        cr_assert_eq(th_run(h, "reboot", reboot), 0, "[%s] %s", th_step, th_err("reboot"));
        th_wait_text(th_console(h), "tpmprobe: done", probes, GUEST_BOOT_MS);
        cr_assert_eq(atol(th_console_last(h, "nv-counter=")), counter + 1, "[%s]", th_step);
        cr_assert_str_eq(th_console_last(h, "ek="), ek, "[%s]", th_step);
}

/* Item 5: connections that never start TLS, more of them than b waits for at once, and
 * one that sends garbage, all before the real source: the real source gets through,
 * long before the silent handshakes could time out (handshake_timeout is longer than the
 * whole [migration] timeout here). */
Test(migrate_incoming, silent_connections_do_not_keep_the_source_out) {
        int silent[10], garbage;
        char ek[256];
        long c1;
        pid_t sup[2];

        /* [migration] is the last section of b.conf */
        th_sh("echo 'handshake_timeout = 300' >> %s/b.conf", th_root);
        sup[0] = th_boot_on_a();
        c1 = atol(th_console_last(0, "nv-counter="));
        snprintf(ek, sizeof(ek), "%s", th_console_last(0, "ek="));

        th_step = "silent connections";
        sup[1] = th_incoming(1, "in-b");
        for (size_t i = 0; i < ARRAY_SIZE(silent); i++)
                silent[i] = connect_from_a();
        garbage = connect_from_a();
        cr_assert_eq(write(garbage, "GET / HTTP/1.1\r\n\r\n", 18), 18);
        /* b logs each connection it turns away: the garbage, and the oldest silent ones
         * beyond 8 at once (2, or 3 when the garbage was still among the 8 then) */
        th_wait_text(th_path("%s/in-b.err", th_root), "turned a connection away: ", 3, 10000);
        th_wait_text(th_path("%s/in-b.err", th_root), "failed: ", 1, 10000);
        {
                int room = th_count(th_err("in-b"), "the most this host waits for at once; the oldest makes room");

                cr_assert(room == 2 || room == 3, "%s", th_err("in-b"));
        }

        th_step = "the real source";
        cr_assert_eq(th_migrate(0, "mig"), 0, "%s\n%s", th_err("mig"), th_logs());
        th_reap(sup[0], 0);
        cr_assert_eq(th_count(th_err("in-b"), "no answer within"), 0, "%s", th_err("in-b"));
        th_assert_gone(0);
        th_assert_running(1);
        for (size_t i = 0; i < ARRAY_SIZE(silent); i++)
                close(silent[i]);
        close(garbage);
        assert_tpm_goes_on(1, c1, ek, 1);
        kill(sup[1], SIGTERM);
        th_reap(sup[1], 0);
}

/* A source supervisor played by the test (in a's namespace): HELLO, PREPARE with the
 * guest's spec, SECRET; then it waits for b's answer. Exits 0 when b answered ABORT, and
 * writes b's reason to ROOT/NAME.abort. */
static pid_t scripted_source(const char *name) {
        pid_t pid = fork();

        cr_assert_geq(pid, 0);
        if (pid == 0) {
                struct migchan *ch = th_source_prepare(NULL);
                struct mig_frame f = { 0 };
                vmsup_error *e = NULL;
                FILE *out;

                if (!ch)
                        _exit(11);
                if (migchan_recv_wait(ch, 0, 60000, &f, &e) < 0 || f.type != MIG_ABORT)
                        _exit(13);
                out = fopen(th_path("%s/%s.abort", th_root, name), "we");
                if (!out)
                        _exit(14);
                fprintf(out, "%s\n", json_object_get_string(json_object_object_get(f.json, "error")));
                fclose(out);
                _exit(0);
        }
        return pid;
}

/* pid runs (or is stopped): not gone, not a zombie waiting for its reaper */
static bool alive(pid_t pid) {
        char state = 0, *text = th_slurp(th_path("/proc/%d/stat", (int) pid)), *p = strrchr(text, ')');

        if (p)
                state = p[2];
        return p && state != 'Z' && state != 'X';
}

/* owner, group and mode of one of b's guest dirs */
static void dir_stat(const char *which, struct stat *st) {
        cr_assert_eq(lstat(th_path("%s/b/%s/" UUID, th_root, which), st), 0, "%s: %s", which, strerror(errno));
}

static void assert_no_dir(int h, const char *which) {
        struct stat st;
        const char *p = th_path("%s/%c/%s/" UUID, th_root, 'a' + h, which);

        cr_assert(lstat(p, &st) < 0 && errno == ENOENT, "[%s] %s is there", th_step, p);
}

/* Item 6: a refused PREPARE makes nothing (here: b keeps a secret of the guest); and a
 * second --incoming for a guest that runs on b (QEMU as the guest's own user) is refused
 * without touching its dirs: its next hard reboot works. */
Test(migrate_incoming, a_refused_incoming_changes_nothing) {
        const char *hard[] = { "reboot", "--hard", UUID, NULL }, *stop[] = { "stop", UUID, NULL };
        const char *dirs[] = { "state", "log", "run" };
        struct stat before[3], after[3];
        char ek[256];
        long c1;
        pid_t sup[2], in, src;
        int status;

        sup[0] = th_boot_on_a();
        c1 = atol(th_console_last(0, "nv-counter="));
        snprintf(ek, sizeof(ek), "%s", th_console_last(0, "ek="));

        /* b has a secret of the guest and nothing else: PREPARE is refused, and leaves no
         * dir of the guest behind */
        th_step = "refused PREPARE";
        {
                struct localstore *s = NULL;
                vmsup_error *e = NULL;
                char pass[513];

                memset(pass, 'B', 512);
                pass[512] = '\0';
                cr_assert_eq(localstore_open(th_path("%s/b/state/secrets", th_root), true, &s, &e), 0, "%s",
                             e ? e->msg : "");
                cr_assert_eq(localstore_put(s, UUID, pass, "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d", &e), 0, "%s",
                             e ? e->msg : "");
                in = th_incoming(1, "in-b0");
                src = scripted_source("src0");
                cr_assert_eq(th_wait_exit(in), 73, "%s", th_err("in-b0"));
                cr_assert_eq(waitpid(src, &status, 0), src);
                cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "scripted source: %d", status);
                cr_assert(strstr(th_slurp(th_path("%s/src0.abort", th_root)), "already keeps a vTPM secret"), "%s",
                          th_slurp(th_path("%s/src0.abort", th_root)));
                for (size_t i = 0; i < ARRAY_SIZE(dirs); i++)
                        assert_no_dir(1, dirs[i]);
                cr_assert_eq(localstore_delete(s, UUID, &e), 1, "%s", e ? e->msg : "");
                localstore_free(s);
        }

        /* the guest goes to b, then runs there with QEMU as its own user */
        th_step = "to b";
        sup[1] = th_incoming(1, "in-b");
        cr_assert_eq(th_migrate(0, "mig"), 0, "%s\n%s", th_err("mig"), th_logs());
        th_reap(sup[0], 0);
        th_assert_gone(0);
        cr_assert_eq(th_run(1, "stop", stop), 0, "%s", th_err("stop"));
        th_reap(sup[1], 0);
        /* QEMU's own uid passes through to its files (the guest's dirs let it in) */
        th_sh("chmod 0711 %s %s/b && chmod 0666 %s/top.qcow2 %s/base.raw && printf '[qemu]\\nuser = nobody\\n"
              "group = nogroup\\n' >> %s/b.conf",
              th_root, th_root, th_root, th_root, th_root);
        {
                const char *args[] = { "run", strdup(th_path("%s/guest.json", th_root)), NULL };

                sup[1] = th_start(1, "run-b", NULL, args);
        }
        th_wait_text(th_console(1), "tpmprobe: done", 1, GUEST_BOOT_MS);
        cr_assert_eq(atol(th_console_last(1, "nv-counter=")), c1 + 1);
        cr_assert_str_eq(th_console_last(1, "ek="), ek);
        c1++;
        for (size_t i = 0; i < ARRAY_SIZE(dirs); i++)
                dir_stat(dirs[i], &before[i]);
        cr_assert_neq(before[0].st_gid, 0, "QEMU does not run as its own user: the state dir is root:root");

        /* a second --incoming for it on b, and a source trying: refused, nothing changed */
        th_step = "second incoming";
        in = th_incoming(1, "in-b2");
        src = scripted_source("src2");
        cr_assert_eq(th_wait_exit(in), 75, "%s", th_err("in-b2"));
        cr_assert(strstr(th_err("in-b2"), "guest is already supervised by another vmsup"), "%s", th_err("in-b2"));
        cr_assert_eq(waitpid(src, &status, 0), src);
        cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "scripted source: %d", status);
        for (size_t i = 0; i < ARRAY_SIZE(dirs); i++) {
                dir_stat(dirs[i], &after[i]);
                cr_assert(after[i].st_uid == before[i].st_uid && after[i].st_gid == before[i].st_gid &&
                                  after[i].st_mode == before[i].st_mode,
                          "b's %s dir changed: %u:%u %04o, was %u:%u %04o", dirs[i], (unsigned) after[i].st_uid,
                          (unsigned) after[i].st_gid, (unsigned) (after[i].st_mode & 07777),
                          (unsigned) before[i].st_uid, (unsigned) before[i].st_gid,
                          (unsigned) (before[i].st_mode & 07777));
        }
        th_assert_running(1);

        /* its next hard reboot works, from b's sealed state */
        th_step = "hard reboot on b";
        cr_assert_eq(th_run(1, "reboot", hard), 0, "%s\n%s", th_err("reboot"), th_tail_of(th_path("%s/run-b.err", th_root), 3000));
        th_wait_text(th_console(1), "tpmprobe: done", 2, GUEST_BOOT_MS);
        cr_assert_eq(atol(th_console_last(1, "nv-counter=")), c1 + 1);
        cr_assert_str_eq(th_console_last(1, "ek="), ek);
        th_assert_running(1);
        cr_assert(!th_has_any(0));
        kill(sup[1], SIGTERM);
        th_reap(sup[1], 0);
}

/* Item 8 (part): b's swtpm hangs (SIGSTOP) while b receives the guest; the incoming
 * migration is aborted: b ends its swtpm all the same (CMD_SHUTDOWN, SIGTERM, SIGKILL),
 * says so, and leaves nothing running or on disk; a keeps the guest. */
Test(migrate_incoming, a_hung_swtpm_is_stopped_when_incoming_aborts) {
        char ek[256];
        long c1;
        pid_t sup, in, mig, tpm;

        sup = th_boot_on_a();
        c1 = atol(th_console_last(0, "nv-counter="));
        snprintf(ek, sizeof(ek), "%s", th_console_last(0, "ek="));

        th_step = "b's swtpm stopped";
        in = th_incoming(1, "in-b");
        mig = th_start_migrate(0, "mig");
        th_wait_text(th_path("%s/in-b.err", th_root), "ready: QEMU receives", 1, 30000);
        tpm = th_pid_of(th_path("swtpm socket.*%s/b/", th_root));
        cr_assert_gt(tpm, 0);
        cr_assert_eq(kill(tpm, SIGSTOP), 0);
        cr_assert_neq(th_wait_exit(mig), 0, "%s", th_err("mig"));
        cr_assert_neq(th_wait_exit(in), 0, "%s", th_err("in-b"));
        cr_assert(!alive(tpm), "b's swtpm (pid %d) still runs:\n%s", (int) tpm, th_err("in-b"));
        /* what b says is what happened: swtpm was killed, its state here discarded */
        cr_assert(strstr(th_err("in-b"), th_path("swtpm (pid %d) did not shut down (", (int) tpm)), "%s",
                  th_err("in-b"));
        cr_assert(strstr(th_err("in-b"), "and was ended with SIGKILL; its TPM state here is discarded (it lives on "
                                         "another host)"),
                  "%s", th_err("in-b"));
        cr_assert(!strstr(th_err("in-b"), "the TPM state kept is"), "%s", th_err("in-b"));
        cr_assert(strstr(th_err("in-b"), "QEMU and swtpm ended (swtpm had to be killed, see above); removed everything "
                                         "the incoming migration had made here"),
                  "%s", th_err("in-b"));
        th_assert_gone(1);
        th_assert_running(0);

        /* the same with b's supervisor killed: its janitor ends the hung swtpm (SIGTERM
         * from the supervisor's death is not enough for a stopped process) */
        th_step = "b's swtpm stopped, b's supervisor killed";
        in = th_incoming(1, "in-b");
        mig = th_start_migrate(0, "mig");
        th_wait_text(th_path("%s/in-b.err", th_root), "ready: QEMU receives", 1, 30000);
        tpm = th_pid_of(th_path("swtpm socket.*%s/b/", th_root));
        cr_assert_gt(tpm, 0);
        cr_assert_eq(kill(tpm, SIGSTOP), 0);
        cr_assert_eq(kill(in, SIGKILL), 0);
        th_wait_exit(in);
        cr_assert_neq(th_wait_exit(mig), 0, "%s", th_err("mig"));
        {
                long deadline = monotonic_ms() + 120000;

                while (alive(tpm) || th_has_any(1)) {
                        cr_assert_lt(monotonic_ms(), deadline, "[%s] b's swtpm (pid %d) %s, b %s files of the guest",
                                     th_step, (int) tpm, alive(tpm) ? "still runs" : "ended",
                                     th_has_any(1) ? "still has" : "has no");
                        poll(NULL, 0, 200);
                }
        }
        th_assert_gone(1);
        th_assert_running(0);
        assert_tpm_goes_on(0, c1, ek, 2);
        kill(sup, SIGTERM);
        th_reap(sup, 0);
}
