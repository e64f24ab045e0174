/* Live migration between two hosts on one machine (the fixture: tests/twohostfix.c): two
 * network namespaces joined by a veth pair (tests/twohosts.sh), each with its own vmsup
 * roots, configuration and host certificates; a real Barbican (in host a) for the first start; real swtpm and QEMU.
 * The demo guest (tests/guest) holds after its first TPM probe; a reboot runs the probe
 * again, which bumps its NV counter and prints its EK. */
#include "config.h"

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/secmem.h"
#include "common/util.h"
#include "secrets/localstore.h"
#include "migrate/migchan.h"
#include "tests/helpers.h"
#include "tests/twohostfix.h"

TestSuite(migrate, .init = th_setup, .fini = th_teardown, .timeout = 600);

/* The generation in host h's rollback anchor (its local store); 0 when there is none. */
static unsigned long long anchor_of(char h) {
        FILE *f = fopen(th_path("%s/%c/state/secrets/" UUID ".anchor", th_root, h), "re");
        unsigned long long g = 0;

        if (!f)
                return 0;
        cr_assert_eq(fscanf(f, "generation=%llu", &g), 1);
        fclose(f);
        return g;
}

Test(migrate, tpm_survives_and_five_round_trips) {
        unsigned long long anchor_a;
        char ek[256];
        long c1;
        pid_t sup[2], src;
        const char *reboot[] = { "reboot", UUID, NULL }, *hard[] = { "reboot", "--hard", UUID, NULL };
        const char *events[] = { "events", UUID, "--json", NULL };
        pid_t ev[2];

        sup[0] = th_boot_on_a();
        c1 = atol(th_console_last(0, "nv-counter="));
        snprintf(ek, sizeof(ek), "%s", th_console_last(0, "ek="));
        anchor_a = anchor_of('a');
        cr_assert_gt(anchor_a, 0, "no TPM state anchor on the source");

        sup[1] = th_incoming(1, "in-b");
        /* both supervisors' event streams, from before the migration */
        ev[0] = th_start(0, "ev-a", NULL, events);
        ev[1] = th_start(1, "ev-b", NULL, events);
        for (int h = 0; h < 2; h++) {
                const char *st[] = { "status", UUID, "--json", NULL };
                long deadline = monotonic_ms() + 30000;

                while (th_run(h, "st", st), !strstr(th_out("st"), "\"event_subscribers\":1")) {
                        cr_assert(monotonic_ms() < deadline, "no subscriber on host %c: %s%s", 'a' + h, th_out("st"),
                                  th_err("ev-a"));
                        poll(NULL, 0, 50);
                }
        }
        /* slowed down (QEMU's max-bandwidth), so that the supervisor is asked while QEMU
         * sends the guest: it answers status with the migration, and refuses the rest */
        {
                const char *bw[] = { "qmp", UUID, "migrate-set-parameters", "{\"max-bandwidth\": 33554432}", NULL },
                           *status[] = { "status", UUID, NULL }, *stop[] = { "stop", UUID, NULL };
                pid_t mig;

                th_step = "status while migrating";
                cr_assert_eq(th_run(0, "bw", bw), 0, "%s", th_err("bw"));
                mig = th_start_migrate(0, "mig");
                th_wait_text(th_path("%s/mig.err", th_root), "% ", 1, 30000);
                cr_assert_eq(th_run(0, "status", status), 0, "%s\n%s", th_err("status"), th_logs());
                cr_assert(strstr(th_out("status"), "migration:    to ") && strstr(th_out("status"), ":49152, active, "),
                          "%s", th_out("status"));
                cr_assert_eq(th_run(0, "stop", stop), 75, "%s", th_err("stop"));
                cr_assert(strstr(th_err("stop"), "the guest is being migrated to "), "%s", th_err("stop"));
                cr_assert_eq(th_wait_exit(mig), 0, "%s", th_err("mig"));
        }
        cr_assert(strstr(th_out("mig"), "migrated to"), "%s", th_out("mig"));
        cr_assert(strstr(th_err("mig"), "% "), "no progress shown: %s", th_err("mig"));
        th_reap(sup[0], 0);
        th_assert_gone(0);
        th_assert_running(1);
        /* the source's stream: the migration, then the end of the guest here (exit 0) */
        cr_assert_eq(th_wait_exit(ev[0]), 0, "%s%s", th_out("ev-a"), th_err("ev-a"));
        {
                const char *out = th_out("ev-a"), *started = strstr(out, "\"event\":\"MIGRATION_STARTED\""),
                           *completed = strstr(out, "\"event\":\"MIGRATION_COMPLETED\""),
                           *stopped = strstr(out, "\"event\":\"STOPPED\",");

                cr_assert(started && completed && stopped && started < completed && completed < stopped, "%s", out);
                cr_assert(strstr(started, "\"direction\":\"out\"") && strstr(stopped, "\"reason\":\"migrated\""),
                          "%s", out);
                cr_assert_null(strstr(out, "MIGRATION_FAILED"), "%s", out);
        }
        /* the destination's: received, then running here */
        th_wait_text(th_path("%s/ev-b.out", th_root), "\"event\":\"STARTED\"", 1, 30000);
        {
                const char *out = th_out("ev-b"), *started = strstr(out, "\"event\":\"MIGRATION_STARTED\""),
                           *completed = strstr(out, "\"event\":\"MIGRATION_COMPLETED\""),
                           *running = strstr(out, "\"event\":\"STARTED\",");

                cr_assert(started && completed && running && started < completed && completed < running, "%s", out);
                cr_assert(strstr(started, "\"direction\":\"in\"") && strstr(running, "\"reason\":\"migrated\""),
                          "%s", out);
        }
        kill(ev[1], SIGTERM);
        th_wait_exit(ev[1]);
        /* the anchor moved with the guest: gone from a, and b's goes on from a's */
        cr_assert_eq(anchor_of('a'), 0, "the source kept its anchor");
        cr_assert_gt(anchor_of('b'), anchor_a, "the destination's anchor does not go on from the source's");

        /* the disk came along with the spec's chain */
        {
                const char *blk[] = { "qmp", UUID, "query-named-block-nodes", NULL };

                cr_assert_eq(th_run(1, "blk", blk), 0, "%s", th_err("blk"));
                cr_assert(strstr(th_out("blk"), "\"node-name\": \"disk0-backing1\"") &&
                                  strstr(th_out("blk"), "\"backing_file_depth\": 1"),
                          "%s", th_out("blk"));
        }
        /* the TPM came along: the counter goes on, the EK is the same */
        th_step = "first migration checked";
        cr_assert_eq(th_run(1, "reboot", reboot), 0, "%s", th_err("reboot"));
        th_wait_text(th_console(1), "tpmprobe: done", 1, GUEST_BOOT_MS);
        cr_assert_eq(atol(th_console_last(1, "nv-counter=")), c1 + 1);
        cr_assert_str_eq(th_console_last(1, "ek="), ek);
        /* and it was sealed on b: a hard reboot starts swtpm from b's sealed state */
        cr_assert_eq(th_run(1, "reboot", hard), 0, "%s", th_err("reboot"));
        th_wait_text(th_console(1), "tpmprobe: done", 2, GUEST_BOOT_MS); /* the console log is appended to */
        cr_assert_eq(atol(th_console_last(1, "nv-counter=")), c1 + 2);
        cr_assert_str_eq(th_console_last(1, "ek="), ek);

        /* five round trips: b -> a -> b, five times */
        th_step = "round trips";
        src = 1;
        for (int i = 0; i < 10; i++) {
                char name[16];

                snprintf(name, sizeof(name), "in-%d", i);
                sup[!src] = th_incoming(!src, name);
                cr_assert_eq(th_migrate(src, "mig"), 0, "trip %d: %s", i, th_err("mig"));
                th_reap(sup[src], 0);
                th_assert_gone(src);
                th_assert_running(!src);
                src = !src;
        }
        cr_assert_eq(src, 1);
        cr_assert_eq(th_run(1, "reboot", reboot), 0, "%s", th_err("reboot"));
        th_wait_text(th_console(1), "tpmprobe: done", 1, GUEST_BOOT_MS); /* b's console is new since the guest came back */
        cr_assert_eq(atol(th_console_last(1, "nv-counter=")), c1 + 3);
        cr_assert_str_eq(th_console_last(1, "ek="), ek);
}

/* ---- failures: each leaves the guest running on a and nothing of it on b ---------------- */

/* a fake destination in b's namespace: it takes the guest, then does what `how` says */
static pid_t fake_destination(const char *how) {
        pid_t pid = fork();

        cr_assert_geq(pid, 0);
        if (pid == 0) {
                struct migchan_tls tls = { .ca_file = th_path("%s/certs/b/ca-cert.pem", th_root),
                                           .cert_file = th_path("%s/certs/b/server-cert.pem", th_root),
                                           .key_file = th_path("%s/certs/b/server-key.pem", th_root) };
                struct migchan *ch = NULL;
                struct mig_frame f = { 0 };
                vmsup_error *e = NULL;
                json_object *hello = json_object_new_object();
                int ns = open(th_path("/run/netns/%s-b", th_prefix), O_RDONLY | O_CLOEXEC), lfd;

                if (ns < 0 || setns(ns, CLONE_NEWNET) < 0)
                        _exit(10);
                lfd = migchan_listen(NULL, "49152", &e);
                if (lfd < 0 || migchan_accept(lfd, &tls, 30000, &ch, &e) < 0)
                        _exit(11);
                json_object_object_add(hello, "protocol", json_object_new_int(MIGCHAN_PROTOCOL));
                json_object_object_add(hello, "uuid", json_object_new_string(UUID));
                json_object_object_add(hello, "host", json_object_new_string("fake"));
                if (migchan_recv_wait(ch, MIG_HELLO, 10000, &f, &e) < 0 || migchan_send_json(ch, MIG_HELLO, hello, 5000, &e) < 0)
                        _exit(12);
                mig_frame_clear(&f);
                if (migchan_recv_wait(ch, MIG_PREPARE, 10000, &f, &e) < 0)
                        _exit(13);
                mig_frame_clear(&f);
                if (migchan_recv_wait(ch, MIG_SECRET, 10000, &f, &e) < 0)
                        _exit(14);
                mig_frame_clear(&f);
                if (streq(how, "silent"))
                        pause(); /* never answers: the source must time out */
                if (streq(how, "unexpected") && migchan_send_json(ch, MIG_RUNNING, hello, 5000, &e) < 0)
                        _exit(15);
                /* wait for the source to hang up */
                migchan_recv_wait(ch, 0, 30000, &f, &e);
                _exit(0);
        }
        return pid;
}

Test(migrate, failures_leave_the_guest_on_the_source) {
        const char *reboot[] = { "reboot", UUID, NULL };
        pid_t sup, in, mig, victim;
        long c1;
        int rc;

        sup = th_boot_on_a();
        c1 = atol(th_console_last(0, "nv-counter="));

        /* nobody listens on b */
        th_step = "nobody listens";
        cr_assert_eq(th_migrate(0, "mig"), 69, "%s", th_err("mig"));
        cr_assert(strstr(th_err("mig"), "10.") && strstr(th_err("mig"), "49152"), "%s", th_err("mig"));
        th_assert_running(0);
        th_assert_gone(1);

        /* b shows a certificate from another CA: the source refuses it */
        th_step = "foreign CA";
        th_write_conf(1, th_path("%s/certs/rogue-ca/rogue", th_root));
        in = th_incoming(1, "in-b");
        cr_assert_eq(th_migrate(0, "mig"), 69, "%s", th_err("mig"));
        cr_assert(strstr(th_err("mig"), "certificate") || strstr(th_err("mig"), "trust"), "%s", th_err("mig"));
        kill(in, SIGTERM);
        th_wait_exit(in);
        th_write_conf(1, th_path("%s/certs/b", th_root));
        th_assert_running(0);
        th_assert_gone(1);

        /* b's QEMU dies while it receives the guest */
        th_step = "b's QEMU killed";
        in = th_incoming(1, "in-b");
        mig = th_start_migrate(0, "mig");
        th_wait_text(th_path("%s/in-b.err", th_root), "ready: QEMU receives", 1, 30000);
        victim = th_pid_of(th_path("qemu-system.*%s/b/", th_root));
        cr_assert_gt(victim, 0);
        kill(victim, SIGKILL);
        cr_assert_neq(th_wait_exit(mig), 0);
        cr_assert_neq(th_wait_exit(in), 0);
        cr_assert(strstr(th_err("in-b"), "QEMU"), "%s", th_err("in-b"));
        th_assert_running(0);
        th_assert_gone(1);

        /* b's swtpm dies before the stream starts */
        th_step = "b's swtpm killed";
        in = th_incoming(1, "in-b");
        mig = th_start_migrate(0, "mig");
        th_wait_text(th_path("%s/in-b.err", th_root), "wait for the incoming migration", 1, 30000);
        victim = th_pid_of(th_path("swtpm socket.*%s/b/", th_root));
        cr_assert_gt(victim, 0);
        kill(victim, SIGKILL);
        cr_assert_neq(th_wait_exit(mig), 0);
        cr_assert_neq(th_wait_exit(in), 0);
        th_assert_running(0);
        th_assert_gone(1);

        /* b's disk is full */
        th_step = "b's disk full";
        th_sh("mkdir -p %s/b/state && mount -t tmpfs -o size=256k vmsup-test %s/b/state && "
           "(dd if=/dev/zero of=%s/b/state/filler bs=4k 2>/dev/null; true)", th_root, th_root, th_root);
        in = th_incoming(1, "in-b");
        rc = th_migrate(0, "mig");
        cr_assert_neq(rc, 0);
        cr_assert(strstr(th_err("mig"), "No space left"), "%s", th_err("mig"));
        cr_assert_neq(th_wait_exit(in), 0);
        th_sh("umount %s/b/state", th_root);
        th_assert_running(0);
        th_assert_gone(1);

        /* a destination that never answers: the source gives up after answer_timeout */
        th_step = "silent destination";
        in = fake_destination("silent");
        mig = th_start_migrate(0, "mig");
        /* the source's supervisor answers status while it waits (answer_timeout is longer
         * than `vmsup status` waits for an answer) */
        th_wait_text(th_path("%s/mig.err", th_root), "prepares swtpm and QEMU", 1, 30000);
        {
                const char *status[] = { "status", UUID, NULL };

                cr_assert_eq(th_run(0, "status", status), 0, "%s", th_err("status"));
                cr_assert(strstr(th_out("status"), ":49152, preparing, 0% of the memory sent"), "%s", th_out("status"));
        }
        cr_assert_eq(th_wait_exit(mig), 75, "%s", th_err("mig"));
        cr_assert(strstr(th_err("mig"), "no answer from the migration peer within 12 s (waiting for READY)"), "%s",
                  th_err("mig"));
        kill(in, SIGKILL);
        th_wait_exit(in);
        th_assert_running(0);

        /* a destination that answers out of turn */
        th_step = "destination out of turn";
        in = fake_destination("unexpected");
        cr_assert_eq(th_migrate(0, "mig"), 65, "%s", th_err("mig"));
        cr_assert(strstr(th_err("mig"), "unexpected RUNNING"), "%s", th_err("mig"));
        th_wait_exit(in);
        th_assert_running(0);

        /* the connection is lost mid-way, once QEMU's stream is connected (QEMU may be in
         * its TLS handshake, sending pages, or, with the guest paused, the last of them and
         * the devices' state; the first and last hold QEMU's main loop): the source gives
         * up after answer_timeout, the destination at [migration] timeout */
        th_step = "link cut";
        in = th_incoming(1, "in-b");
        mig = th_start_migrate(0, "mig");
        th_wait_text(th_path("%s/in-b.err", th_root), "ready: QEMU receives", 1, 30000);
        th_wait_stream(1);
        th_sh("%s/tests/twohosts.sh cut %s", TEST_SRCDIR, th_prefix);
        cr_assert_neq(th_wait_exit(mig), 0);
        cr_assert_neq(th_wait_exit(in), 0);
        th_sh("%s/tests/twohosts.sh heal %s", TEST_SRCDIR, th_prefix);
        th_assert_running(0);
        th_assert_gone(1);

        /* b's supervisor is killed: its janitor removes what it had received */
        th_step = "b's supervisor killed";
        in = th_incoming(1, "in-b");
        mig = th_start_migrate(0, "mig");
        th_wait_text(th_path("%s/in-b.err", th_root), "ready: QEMU receives", 1, 30000);
        kill(in, SIGKILL);
        cr_assert_neq(th_wait_exit(mig), 0);
        th_wait_exit(in);
        th_assert_running(0);
        th_assert_gone(1);

        /* the guest's TPM went through all that intact */
        th_step = "reboot on a";
        cr_assert_eq(th_run(0, "reboot", reboot), 0, "%s", th_err("reboot"));
        th_wait_text(th_console(0), "tpmprobe: done", 2, GUEST_BOOT_MS);
        cr_assert_eq(atol(th_console_last(0, "nv-counter=")), c1 + 1);

        th_step = "a's supervisor killed";
        /* a's supervisor is killed mid-way: the guest dies with it (as in a host crash),
         * b rolls back, and a starts the guest again from its sealed state */
        in = th_incoming(1, "in-b");
        mig = th_start_migrate(0, "mig");
        th_wait_text(th_path("%s/in-b.err", th_root), "ready: QEMU receives", 1, 30000);
        kill(sup, SIGKILL);
        th_wait_exit(sup);
        cr_assert_neq(th_wait_exit(mig), 0);
        cr_assert_neq(th_wait_exit(in), 0);
        th_assert_gone(1);
        /* its QEMU and swtpm end by themselves (their death signal), as they would not
         * outlive a host crash: wait for that before the start */
        {
                long deadline = monotonic_ms() + 30000;

                while (test_count_processes(th_path("%s/a/", th_root), false) > 0) {
                        if (monotonic_ms() > deadline) {
                                th_sh("ps -eo pid,stat,args | grep '%s/a/' | grep -v grep >&2; true", th_root);
                                cr_assert_fail("[%s] a's QEMU or swtpm outlived their supervisor by 30 s\n%s", th_step,
                                               th_logs());
                        }
                        poll(NULL, 0, 50);
                }
        }
        {
                const char *args[] = { "run", strdup(th_path("%s/guest.json", th_root)), NULL };

                sup = th_start(0, "run-a2", NULL, args);
        }
        th_wait_text(th_console(0), "tpmprobe: done", 3, GUEST_BOOT_MS);
        cr_assert_eq(atol(th_console_last(0, "nv-counter=")), c1 + 2);
        kill(sup, SIGTERM);
}

Test(migrate, user_mode_is_refused_with_novas_words) {
        const char *args[] = { "run", "--token-fd", "3", strdup(th_path("%s/guest.json", th_root)), NULL };
        pid_t sup;

        th_write_spec("user");
        sup = th_start(0, "run-a", "p", args);
        th_wait_text(th_path("%s/run-a.err", th_root), "guest running", 1, 60000);
        cr_assert_eq(th_migrate(0, "mig"), 69, "%s", th_err("mig"));
        cr_assert(strstr(th_err("mig"), "Operation 'live-migration' not supported for vTPM-enabled instance (" UUID ")."),
                  "%s", th_err("mig"));
        th_assert_running(0);
        kill(sup, SIGTERM);
        th_wait_exit(sup);
}

/* A source with another passphrase than the guest's (here: a fake source supervisor that
 * hands b a wrong secret, while the real source QEMU sends the guest): b's swtpm cannot
 * decrypt the TPM blobs, b's QEMU fails the load, b removes everything, and QEMU on a
 * resumes the guest by itself (return-path). */
Test(migrate, wrong_migration_key_rolls_back) {
        int port_pipe[2], done_pipe[2], port = 0, status = 0;
        pid_t sup, in, fake;
        char portbuf[16] = "";

        sup = th_boot_on_a();
        in = th_incoming(1, "in-b");
        cr_assert_eq(pipe(port_pipe), 0);
        cr_assert_eq(pipe(done_pipe), 0);
        fake = fork();
        cr_assert_geq(fake, 0);
        if (fake == 0) {
                /* a SECRET that is not the guest's: b's swtpm gets another key */
                struct migchan *ch = th_source_prepare(NULL);
                struct mig_frame f = { 0 };
                vmsup_error *e = NULL;
                char c;

                close(done_pipe[1]);
                if (!ch || migchan_recv_wait(ch, MIG_READY, 20000, &f, &e) < 0 || f.type != MIG_READY)
                        _exit(11);
                dprintf(port_pipe[1], "%d\n", json_object_get_int(json_object_object_get(f.json, "port")));
                /* until the test has tried the stream from elsewhere; then it hangs up */
                mig_frame_clear(&f);
                (void) !read(done_pipe[0], &c, 1);
                _exit(0);
        }
        close(port_pipe[1]);
        close(done_pipe[0]);
        cr_assert_gt(read(port_pipe[0], portbuf, sizeof(portbuf) - 1), 0, "the fake source got no READY:\n%s",
                     th_err("in-b"));
        port = atoi(portbuf);
        cr_assert_gt(port, 0);

        /* b takes QEMU's stream from the source's host only: a connection from elsewhere
         * (here b itself) is turned away, and b listens on */
        {
                int self = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC),
                    ns = open(th_path("/run/netns/%s-b", th_prefix), O_RDONLY | O_CLOEXEC), fd;
                struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t) port) };
                char needle[128];

                cr_assert(self >= 0 && ns >= 0 && inet_pton(AF_INET, th_ip[1], &sa.sin_addr) == 1);
                cr_assert_eq(setns(ns, CLONE_NEWNET), 0);
                fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
                cr_assert_eq(connect(fd, (struct sockaddr *) &sa, sizeof(sa)), 0, "%s", strerror(errno));
                cr_assert_eq(setns(self, CLONE_NEWNET), 0);
                snprintf(needle, sizeof(needle), "turned away a migration stream from %s: the source is ", th_ip[1]);
                th_wait_text(th_path("%s/in-b.err", th_root), needle, 1, 10000);
                close(fd);
                close(ns);
                close(self);
        }
        close(done_pipe[1]);

        cr_assert_eq(waitpid(fake, &status, 0), fake);
        cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "fake source: %d", status);
        cr_assert_neq(th_wait_exit(in), 0);
        th_assert_gone(1);

        /* the real source, whose local store now holds another passphrase than the one
         * its swtpm's migration key came from: b's swtpm cannot decrypt the TPM state,
         * b gives up, and the guest runs on a as before */
        {
                struct localstore *store = NULL;
                vmsup_error *e = NULL;
                char *pass = NULL, id[LOCALSTORE_UUID_LEN + 1], wrong[513];

                memset(wrong, 'A', 512);
                wrong[512] = '\0';
                cr_assert_eq(localstore_open(th_path("%s/a/state/secrets", th_root), false, &store, &e), 0);
                cr_assert_eq(localstore_get(store, UUID, &pass, id, &e), 1);
                cr_assert_eq(localstore_put(store, UUID, wrong, id, &e), 0);
                in = th_incoming(1, "in-b");
                cr_assert_eq(th_migrate(0, "mig"), 69, "%s", th_err("mig"));
                cr_assert(strstr(th_err("mig"), "the destination gave up: QEMU failed to load the guest"), "%s", th_err("mig"));
                cr_assert_neq(th_wait_exit(in), 0);
                cr_assert(strstr(th_err("in-b"), "decryption error"), "%s", th_err("in-b"));
                th_assert_gone(1);
                th_assert_running(0);
                cr_assert_eq(localstore_put(store, UUID, pass, id, &e), 0);
                secmem_free(pass);
                localstore_free(store);
        }
        kill(sup, SIGTERM);
        th_wait_exit(sup);
}

/* The first 12 bytes on a VNC socket: "RFB 003.008\n" once QEMU's VNC server has the client. */
static void assert_rfb_greeting(const char *path) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        char buf[13] = "";
        size_t got = 0;

        snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
        cr_assert_eq(connect(fd, (struct sockaddr *) &sa, sizeof(sa)), 0, "[%s] connect %s: %s", th_step, path,
                     strerror(errno));
        while (got < 12) {
                struct pollfd p = { .fd = fd, .events = POLLIN };
                ssize_t n;

                cr_assert_eq(poll(&p, 1, 60000), 1, "[%s] no VNC greeting on %s\n%s", th_step, path, th_logs());
                n = read(fd, buf + got, 12 - got);
                cr_assert_gt(n, 0, "[%s] %s closed after '%s'\n%s", th_step, path, buf, th_logs());
                got += (size_t) n;
        }
        cr_assert_str_eq(buf, "RFB 003.008\n");
        close(fd);
}

/* A guest with a graphical console: each host's supervisor makes the VNC socket of its
 * own QEMU (the destination's while it waits for the stream too), and the source's goes
 * with the source's copy. */
Test(migrate, the_destination_makes_its_own_vnc_socket) {
        const char *status[] = { "status", "--json", UUID, NULL };
        json_object *spec = json_object_from_file(th_path("%s/guest.json", th_root)), *gr = json_object_new_object();
        char *vnc_a = strdup(th_path("%s/a/run/" UUID "/vnc.sock", th_root)),
             *vnc_b = strdup(th_path("%s/b/run/" UUID "/vnc.sock", th_root));
        pid_t sup, in;

        cr_assert_not_null(spec);
        json_object_object_add(gr, "type", json_object_new_string("vnc"));
        json_object_object_add(spec, "graphics", gr);
        cr_assert_eq(json_object_to_file(th_path("%s/guest.json", th_root), spec), 0);
        json_object_put(spec);

        th_step = "the source";
        sup = th_boot_on_a();
        cr_assert_eq(th_run(0, "status", status), 0, "%s", th_err("status"));
        cr_assert(strstr(th_out("status"), vnc_a), "%s", th_out("status"));
        assert_rfb_greeting(vnc_a);

        th_step = "the destination waits";
        in = th_incoming(1, "in-b");
        cr_assert_eq(th_migrate(0, "mig"), 0, "%s\n%s", th_err("mig"), th_logs());
        th_reap(sup, 0);
        th_assert_gone(0);
        cr_assert_neq(access(vnc_a, F_OK), 0, "%s outlived the source's guest", vnc_a);

        th_step = "the destination runs it";
        th_assert_running(1);
        cr_assert_eq(th_run(1, "status", status), 0, "%s", th_err("status"));
        cr_assert(strstr(th_out("status"), vnc_b), "%s", th_out("status"));
        assert_rfb_greeting(vnc_b);
        kill(in, SIGTERM);
        th_wait_exit(in);
        cr_assert_neq(access(vnc_b, F_OK), 0, "%s outlived the guest", vnc_b);
        free(vnc_a);
        free(vnc_b);
}
