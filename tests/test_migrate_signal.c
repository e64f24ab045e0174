/* SIGTERM (or SIGINT) to the source's supervisor during a live migration (the fixture:
 * tests/twohostfix.c). Before COMMIT it cancels at once: ABORT to the destination, which
 * keeps nothing, and the guest stays on the source, which then stops it as SIGTERM asks
 * (its TPM state sealed: it starts again with its NV counter and EK). After COMMIT the
 * migration finishes. A relay between the supervisors holds one of the destination's
 * answers, so that the signal comes while the source waits for it. */
#include "config.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/util.h"
#include "crypto/migchan.h"
#include "tests/helpers.h"
#include "tests/twohostfix.h"

TestSuite(migrate_signal, .init = th_setup, .fini = th_teardown, .timeout = 1200);

#define RELAY_PORT "49153"

struct relay {
        pid_t pid;
        int release_fd; /* a byte here lets the held frame through */
};

static void relay_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void relay_log(const char *fmt, ...) {
        FILE *f = fopen(th_path("%s/relay.log", th_root), "ae");
        va_list ap;

        if (!f)
                _exit(20);
        va_start(ap, fmt);
        vfprintf(f, fmt, ap);
        va_end(ap);
        fputc('\n', f);
        fclose(f);
}

static int forward(struct migchan *to, const struct mig_frame *f, vmsup_error **e) {
        if (f->type == MIG_SECRET)
                return migchan_send(to, f->type, f->secret, f->len, 5000, e);
        return migchan_send_json(to, f->type, f->json, 5000, e);
}

/* Every whole frame from `from` to `to`; the destination's frame of type hold is kept in
 * *held instead (once). -1 when `from` hung up. */
static int pump(struct migchan *from, struct migchan *to, const char *dir, enum mig_msg hold, struct mig_frame *held) {
        for (;;) {
                struct mig_frame f = { 0 };
                vmsup_error *e = NULL;
                int r = migchan_recv(from, &f, &e);

                if (r < 0) {
                        relay_log("%s closed: %s", dir, e->msg);
                        return -1;
                }
                if (r == 0)
                        return 0;
                if (hold && f.type == hold && !held->type) {
                        relay_log("held %s", mig_msg_name(f.type));
                        *held = f;
                        continue;
                }
                if (forward(to, &f, &e) < 0) {
                        relay_log("%s %s not forwarded: %s", dir, mig_msg_name(f.type), e->msg);
                        _exit(0);
                }
                relay_log("%s %s", dir, mig_msg_name(f.type));
                mig_frame_clear(&f);
        }
}

/* The relay: listens on b's RELAY_PORT with b's certificate (the source migrates to it),
 * connects to the real destination (`run --incoming 49152` on b) from host a with a's, so
 * that b takes QEMU's stream from a. It forwards every frame both ways, but holds the
 * destination's frame of type hold (0: none) until a byte arrives on release_fd. */
static struct relay relay_start(enum mig_msg hold) {
        int release[2];
        struct relay rl;

        cr_assert_eq(pipe2(release, O_CLOEXEC), 0);
        unlink(th_path("%s/relay.log", th_root));
        rl.pid = fork();
        cr_assert_geq(rl.pid, 0);
        if (rl.pid == 0) {
                struct migchan_tls srv = { .ca_file = strdup(th_path("%s/certs/b/ca-cert.pem", th_root)),
                                           .cert_file = strdup(th_path("%s/certs/b/server-cert.pem", th_root)),
                                           .key_file = strdup(th_path("%s/certs/b/server-key.pem", th_root)) };
                struct migchan_tls cli = { .ca_file = strdup(th_path("%s/certs/a/ca-cert.pem", th_root)),
                                           .cert_file = strdup(th_path("%s/certs/a/client-cert.pem", th_root)),
                                           .key_file = strdup(th_path("%s/certs/a/client-key.pem", th_root)),
                                           .peer_name = th_ip[1] };
                struct migchan *src = NULL, *dst = NULL;
                struct mig_frame held = { 0 };
                vmsup_error *e = NULL;
                int nsa = open(th_path("/run/netns/%s-a", th_prefix), O_RDONLY | O_CLOEXEC),
                    nsb = open(th_path("/run/netns/%s-b", th_prefix), O_RDONLY | O_CLOEXEC), lfd;
                bool released = false, dst_closed = false;

                close(release[1]);
                if (nsa < 0 || nsb < 0 || setns(nsb, CLONE_NEWNET) < 0)
                        _exit(10);
                lfd = migchan_listen(NULL, RELAY_PORT, &e);
                if (lfd < 0)
                        _exit(11);
                relay_log("listening");
                if (migchan_accept(lfd, &srv, 60000, &src, &e) < 0) {
                        relay_log("accept: %s", e->msg);
                        _exit(12);
                }
                /* a socket belongs to the namespace it was made in */
                if (setns(nsa, CLONE_NEWNET) < 0 || migchan_connect(th_ip[1], "49152", &cli, 30000, &dst, &e) < 0) {
                        relay_log("connect: %s", e ? e->msg : strerror(errno));
                        _exit(13);
                }
                for (;;) {
                        struct pollfd p[3] = { { .fd = migchan_fd(src), .events = POLLIN },
                                               { .fd = dst_closed ? -1 : migchan_fd(dst), .events = POLLIN },
                                               { .fd = released ? -1 : release[0], .events = POLLIN } };

                        if (pump(src, dst, "src->dst", 0, &held) < 0)
                                _exit(0); /* closes the other side too */
                        if (!dst_closed && pump(dst, src, "dst->src", hold, &held) < 0) {
                                /* the destination may hang up once it sent what is held */
                                if (!held.type || released)
                                        _exit(0);
                                dst_closed = true;
                                p[1].fd = -1;
                        }
                        if (poll(p, 3, -1) < 0 && errno != EINTR)
                                _exit(14);
                        if (p[2].revents) {
                                char c;

                                released = true;
                                if (read(release[0], &c, 1) < 0)
                                        _exit(15);
                                if (held.type) {
                                        if (forward(src, &held, &e) < 0) {
                                                relay_log("held %s not forwarded: %s", mig_msg_name(held.type), e->msg);
                                                _exit(0);
                                        }
                                        relay_log("released %s", mig_msg_name(held.type));
                                        mig_frame_clear(&held);
                                        if (dst_closed)
                                                _exit(0);
                                }
                        }
                }
        }
        close(release[0]);
        rl.release_fd = release[1];
        th_wait_text(th_path("%s/relay.log", th_root), "listening", 1, 10000);
        return rl;
}

static void relay_release(struct relay *rl) {
        cr_assert_eq(write(rl->release_fd, "x", 1), 1);
}

static void relay_end(struct relay *rl) {
        int status;

        close(rl->release_fd);
        kill(rl->pid, SIGKILL);
        waitpid(rl->pid, &status, 0);
}

/* `vmsup migrate UUID --to B:RELAY_PORT` on a, in the background */
static pid_t migrate_via_relay(const char *name) {
        const char *args[] = { "migrate", UUID, "--to", strdup(th_path("%s:" RELAY_PORT, th_ip[1])), NULL };

        return th_start(0, name, NULL, args);
}

/* the guest again on a from its sealed state (host mode: the local secret), the n-th
 * boot on a's console */
static pid_t restart_on_a(const char *name, int n) {
        const char *args[] = { "run", strdup(th_path("%s/guest.json", th_root)), NULL };
        pid_t pid = th_start(0, name, NULL, args);

        th_wait_text(th_console(0), "tpmprobe: done", n, GUEST_BOOT_MS);
        return pid;
}

/* sig (SIGTERM or SIGINT) to a's supervisor once `ready` shows in file; then: the
 * migration cancelled (not timed out), b rolled back and empty, a's guest stopped
 * normally with its state. */
static void signal_cancels(int sig, pid_t sup, pid_t in, pid_t mig, struct relay *rl, const char *file,
                           const char *ready) {
        char want[128];
        int rc;

        th_wait_text(file, ready, 1, 60000);
        cr_assert_eq(kill(sup, sig), 0);
        rc = th_wait_exit(mig);
        cr_assert_eq(rc, 75, "[%s] vmsup migrate: %d: %s\n%s", th_step, rc, th_err("mig"), th_logs());
        snprintf(want, sizeof(want), "cancelled: the source's supervisor got SIG%s; the guest stays on the source",
                 sigabbrev_np(sig));
        cr_assert(strstr(th_err("mig"), want), "[%s] %s\n%s", th_step, th_err("mig"), th_logs());
        cr_assert(!strstr(th_err("mig"), "no answer"), "[%s] %s", th_step, th_err("mig"));
        /* the source stops the guest as SIGTERM asks: normally, its TPM state sealed */
        rc = th_wait_exit(sup);
        cr_assert_eq(rc, 0, "[%s] a's supervisor: %d\n%s", th_step, rc, th_logs());
        cr_assert_neq(th_wait_exit(in), 0);
        cr_assert(strstr(th_slurp(th_path("%s/relay.log", th_root)), "src->dst ABORT"), "[%s] relay: %s", th_step,
                  th_slurp(th_path("%s/relay.log", th_root)));
        relay_end(rl);
        th_assert_gone(1);
        cr_assert_eq(test_count_processes(th_path("%s/a/", th_root), false), 0, "[%s] a still runs QEMU or swtpm\n%s",
                     th_step, th_logs());
}

Test(migrate_signal, sigterm_before_commit_cancels_and_the_guest_stays) {
        char ek[256];
        long c1;
        pid_t sup, in, mig;
        struct relay rl;

        sup = th_boot_on_a();
        c1 = atol(th_console_last(0, "nv-counter="));
        snprintf(ek, sizeof(ek), "%s", th_console_last(0, "ek="));

        /* while the source waits for READY (b prepared, its answer held) */
        th_step = "SIGTERM waiting for READY";
        in = th_incoming(1, "in-b");
        rl = relay_start(MIG_READY);
        mig = migrate_via_relay("mig");
        signal_cancels(SIGTERM, sup, in, mig, &rl, th_path("%s/relay.log", th_root), "held READY");
        sup = restart_on_a("run-a2", 2);
        cr_assert_eq(atol(th_console_last(0, "nv-counter=")), c1 + 1);
        cr_assert_str_eq(th_console_last(0, "ek="), ek);

        /* while QEMU streams (slowed down: the signal comes mid-way); SIGINT as SIGTERM */
        th_step = "SIGINT while QEMU streams";
        {
                const char *bw[] = { "qmp", UUID, "migrate-set-parameters", "{\"max-bandwidth\": 8388608}", NULL };

                cr_assert_eq(th_run(0, "bw", bw), 0, "%s", th_err("bw"));
        }
        in = th_incoming(1, "in-b");
        rl = relay_start(0);
        mig = migrate_via_relay("mig");
        signal_cancels(SIGINT, sup, in, mig, &rl, th_path("%s/mig.err", th_root), "% ");
        sup = restart_on_a("run-a3", 3);
        cr_assert_eq(atol(th_console_last(0, "nv-counter=")), c1 + 2);
        cr_assert_str_eq(th_console_last(0, "ek="), ek);

        /* while the source waits for PREPARED (QEMU completed: the guest is paused here,
         * b has it paused with its TPM state sealed) */
        th_step = "SIGTERM waiting for PREPARED";
        in = th_incoming(1, "in-b");
        rl = relay_start(MIG_PREPARED);
        mig = migrate_via_relay("mig");
        signal_cancels(SIGTERM, sup, in, mig, &rl, th_path("%s/relay.log", th_root), "held PREPARED");
        cr_assert(strstr(th_slurp(th_path("%s/run-a3.err", th_root)), "the guest runs here again"), "%s",
                  th_slurp(th_path("%s/run-a3.err", th_root)));
        sup = restart_on_a("run-a4", 4);
        cr_assert_eq(atol(th_console_last(0, "nv-counter=")), c1 + 3);
        cr_assert_str_eq(th_console_last(0, "ek="), ek);
        th_assert_running(0);
        th_assert_gone(1);
        kill(sup, SIGTERM);
        cr_assert_eq(th_wait_exit(sup), 0);
}

Test(migrate_signal, sigterm_after_commit_lets_the_migration_finish) {
        char ek[256];
        long c1;
        pid_t sup, in, mig;
        struct relay rl;
        int rc;

        sup = th_boot_on_a();
        c1 = atol(th_console_last(0, "nv-counter="));
        snprintf(ek, sizeof(ek), "%s", th_console_last(0, "ek="));

        /* b runs the guest; its RUNNING is held, and the source gets SIGTERM meanwhile */
        th_step = "SIGTERM after COMMIT";
        in = th_incoming(1, "in-b");
        rl = relay_start(MIG_RUNNING);
        mig = migrate_via_relay("mig");
        th_wait_text(th_path("%s/relay.log", th_root), "held RUNNING", 1, 120000);
        cr_assert_eq(kill(sup, SIGTERM), 0);
        th_wait_text(th_path("%s/run-a.err", th_root), "SIGTERM during the migration, after the destination was told "
                     "to run the guest: the migration finishes first", 1, 30000);
        relay_release(&rl);
        rc = th_wait_exit(mig);
        cr_assert_eq(rc, 0, "vmsup migrate: %d: %s\n%s", rc, th_err("mig"), th_logs());
        cr_assert(strstr(th_out("mig"), "migrated to"), "%s", th_out("mig"));
        rc = th_wait_exit(sup);
        cr_assert_eq(rc, 0, "a's supervisor: %d\n%s", rc, th_logs());
        relay_end(&rl);
        th_assert_gone(0);
        th_assert_running(1);

        /* the guest goes on on b, its TPM with it */
        {
                const char *reboot[] = { "reboot", UUID, NULL };

                cr_assert_eq(th_run(1, "reboot", reboot), 0, "%s", th_err("reboot"));
        }
        th_wait_text(th_console(1), "tpmprobe: done", 1, GUEST_BOOT_MS);
        cr_assert_eq(atol(th_console_last(1, "nv-counter=")), c1 + 1);
        cr_assert_str_eq(th_console_last(1, "ek="), ek);
        kill(in, SIGTERM);
        cr_assert_eq(th_wait_exit(in), 0);
}
