/* Live migration between two hosts on one machine: two network namespaces joined by a
 * veth pair (tests/twohosts.sh), each with its own vmsup roots, configuration and host
 * certificates; a real Barbican (in host a) for the first start; real swtpm and QEMU.
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
#include <sys/wait.h>
#include <unistd.h>

#include "common/util.h"
#include "crypto/migchan.h"
#include "tests/helpers.h"

#define UUID "6d1b8a52-8c4e-4f43-9a3e-0c1f5b7d2e90"
#define VMSUP TEST_BUILDDIR "/vmsup"
#define GUEST_BOOT_MS 120000

static char *root, prefix[24], ip[2][32], url[128];

static void sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void sh(const char *fmt, ...) {
        char *cmd = NULL;
        va_list ap;
        int r;

        va_start(ap, fmt);
        cr_assert(vasprintf(&cmd, fmt, ap) > 0);
        va_end(ap);
        r = system(cmd);
        cr_assert_eq(r, 0, "'%s' failed (%d)", cmd, r);
        free(cmd);
}

static char *path(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *path(const char *fmt, ...) {
        static char bufs[8][4096];
        static int next;
        char *b = bufs[next++ % 8];
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(b, 4096, fmt, ap);
        va_end(ap);
        return b;
}

static char *slurp(const char *p) {
        static char *buf;
        FILE *f = fopen(p, "re");
        size_t n;

        free(buf);
        buf = calloc(1, 1 << 20);
        cr_assert(buf);
        if (f) {
                n = fread(buf, 1, (1 << 20) - 1, f);
                buf[n] = '\0';
                fclose(f);
        }
        return buf;
}

static int count(const char *text, const char *needle) {
        int n = 0;

        for (const char *p = text; (p = strstr(p, needle)); p += strlen(needle))
                n++;
        return n;
}

static void write_conf(int h, const char *tls_dir) {
        char *text = NULL;

        cr_assert(asprintf(&text,
                           "[tpm]\nswtpm_enabled = true\nswtpm_user = root\nswtpm_group = root\n"
                           "[qemu]\naccelerator = tcg\n"
                           "[paths]\nstate_dir = %s/%c/state\nrun_dir = %s/%c/run\nsecrets_dir = %s/%c/state/secrets\n"
                           "log_dir = %s/%c/log\n"
                           "[barbican]\nendpoint = %s\nauth = noauth\n"
                           "[migration]\ntls_dir = %s\ntimeout = 20\nanswer_timeout = 12\n",
                           root, 'a' + h, root, 'a' + h, root, 'a' + h, root, 'a' + h, url, tls_dir) > 0);
        free(test_write_file(root, h ? "b.conf" : "a.conf", text, 0644));
        free(text);
}

static void write_spec(const char *mode) {
        char *text = NULL;

        cr_assert(asprintf(&text,
                           "{\"uuid\": \"" UUID "\", \"name\": \"demo\", \"vcpus\": 1, \"memory_mb\": 256,"
                           " \"owner\": {\"user_id\": \"u\", \"project_id\": \"p\"},"
                           " \"flavor\": {\"name\": \"m1.tpm\", \"extra_specs\": {\"hw:tpm_version\": \"2.0\","
                           " \"hw:tpm_model\": \"tpm-crb\", \"hw:tpm_secret_security\": \"%s\"}},"
                           " \"image\": {\"name\": \"demo\", \"properties\": {\"hw_firmware_type\": \"uefi\"}},"
                           " \"firmware\": {\"kernel\": \"%s/vmlinuz\", \"initrd\": \"%s/initrd.img\","
                           " \"cmdline\": \"console=ttyS0 quiet tpmprobe.hold\"},"
                           " \"disks\": [{\"path\": \"%s/top.qcow2\", \"format\": \"qcow2\","
                           " \"backing\": {\"path\": \"%s/base.raw\", \"format\": \"raw\"}}]}",
                           mode, TEST_GUEST_DIR, TEST_GUEST_DIR, root, root) > 0);
        free(test_write_file(root, "guest.json", text, 0644));
        free(text);
}

static void setup(void) {
        char *env;

        cr_assert_eq(geteuid(), 0, "the migration tests need root (network namespaces)");
        root = test_mkdtemp();
        snprintf(prefix, sizeof(prefix), "vmt%d", (int) getpid());
        sh("%s/tests/twohosts.sh up %s %s > %s/hosts.env", TEST_SRCDIR, prefix, root, root);
        env = slurp(path("%s/hosts.env", root));
        cr_assert_eq(sscanf(strstr(env, "ip_a="), "ip_a=%31s", ip[0]), 1);
        cr_assert_eq(sscanf(strstr(env, "ip_b="), "ip_b=%31s", ip[1]), 1);
        sh("mkdir -p %s/barbican && ip netns exec %s-a %s/tests/barbican/barbican.sh start %s/barbican %d > %s/url",
           root, prefix, TEST_SRCDIR, root, (int) getpid(), root);
        snprintf(url, sizeof(url), "%s", slurp(path("%s/url", root)));
        url[strcspn(url, "\n")] = '\0';
        /* a disk with a backing chain in the spec, on storage both hosts share: the
         * destination checks its headers and builds the same block graph */
        sh("cd %s && qemu-img create -q -f raw base.raw 4M && qemu-img create -q -f qcow2 -b base.raw -F raw top.qcow2 4M",
           root);
        write_conf(0, path("%s/certs/a", root));
        write_conf(1, path("%s/certs/b", root));
        write_spec("host");
}

static void teardown(void) {
        test_count_processes(root, true);
        (void) !system(path("%s/tests/twohosts.sh down %s >/dev/null 2>&1", TEST_SRCDIR, prefix));
        (void) !system(path("%s/tests/barbican/barbican.sh stop %s/barbican >/dev/null 2>&1", TEST_SRCDIR, root));
        test_rmtree(root);
        free(root);
}

/* Start `vmsup ARGS` in host h's namespace in the background; stdout and stderr go to
 * ROOT/NAME.out and .err. token: written to its fd 3 when not NULL. */
static pid_t start(int h, const char *name, const char *token, const char *const *args) {
        int tp[2] = { -1, -1 };
        pid_t pid;

        if (token)
                cr_assert_eq(pipe(tp), 0);
        /* not in the child: the caller may look for lines of the new run at once */
        unlink(path("%s/%s.out", root, name));
        unlink(path("%s/%s.err", root, name));
        pid = fork();
        cr_assert_geq(pid, 0);
        if (pid == 0) {
                const char *argv[32] = { "ip", "netns", "exec", NULL, VMSUP, "--config", NULL };
                char ns[40];
                int n = 7, o = open(path("%s/%s.out", root, name), O_WRONLY | O_CREAT | O_TRUNC, 0644),
                    e = open(path("%s/%s.err", root, name), O_WRONLY | O_CREAT | O_TRUNC, 0644);

                snprintf(ns, sizeof(ns), "%s-%c", prefix, 'a' + h);
                argv[3] = ns;
                argv[6] = strdup(path("%s/%c.conf", root, 'a' + h));
                for (int i = 0; args[i]; i++)
                        argv[n++] = args[i];
                argv[n] = NULL;
                dup2(o, 1);
                dup2(e, 2);
                if (token) {
                        dup2(tp[0], 3);
                        close(tp[1]);
                } else
                        close(3);
                execvp("ip", (char **) argv);
                _exit(127);
        }
        if (token) {
                close(tp[0]);
                cr_assert(write(tp[1], token, strlen(token)) > 0);
                close(tp[1]);
        }
        return pid;
}

/* Run `vmsup ARGS` in host h's namespace and wait; its exit code. */
static int run(int h, const char *name, const char *const *args) {
        int status;
        pid_t pid = start(h, name, NULL, args);

        cr_assert_eq(waitpid(pid, &status, 0), pid);
        return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static char *out(const char *name) {
        return slurp(path("%s/%s.out", root, name));
}

static char *err(const char *name) {
        return slurp(path("%s/%s.err", root, name));
}

/* What the test is at, for the failure messages. */
static const char *step = "setup";

/* The last lines of a file, for a failure message (a copy: slurp() reuses its buffer). */
static char *tail_of(const char *file, size_t max) {
        const char *text = slurp(file);
        size_t n = strlen(text);

        return strdup(n > max ? text + n - max : text);
}

/* The supervisors' logs and the last migrate's errors. */
static char *logs(void) {
        char *a = tail_of(path("%s/run-a.err", root), 3000), *a2 = tail_of(path("%s/run-a2.err", root), 2000),
             *b = tail_of(path("%s/in-b.err", root), 2000), *m = tail_of(path("%s/mig.err", root), 1500), *all = NULL;

        if (asprintf(&all, "--- a's supervisor:\n%s\n--- a's second supervisor (if any):\n%s\n--- b's (in-b):\n%s\n"
                     "--- migrate:\n%s", a, a2, b, m) < 0)
                all = NULL;
        free(a);
        free(a2);
        free(b);
        free(m);
        return all;
}

static void wait_text(const char *file, const char *needle, int n, int timeout_ms) {
        long deadline = monotonic_ms() + timeout_ms;

        while (count(slurp(file), needle) < n) {
                if (monotonic_ms() > deadline) {
                        char *text = tail_of(file, 3000);

                        cr_assert_fail("[%s] %s lacks %d x '%s' after %d ms:\n%s\n%s", step, file, n, needle,
                                       timeout_ms, text, logs());
                }
                poll(NULL, 0, 50);
        }
}

static char *console(int h) {
        return path("%s/%c/log/" UUID "/console.log", root, 'a' + h);
}

/* The last value of "key=" on host h's console. */
static char *console_last(int h, const char *key) {
        static char v[256];
        char *text = slurp(console(h)), *p = NULL, *q;

        for (q = text; (q = strstr(q, key)); q += strlen(key))
                p = q;
        cr_assert(p, "no '%s' on the console of host %c:\n%s", key, 'a' + h, text);
        snprintf(v, sizeof(v), "%s", p + strlen(key));
        v[strcspn(v, "\r\n")] = '\0';
        return v;
}

static bool has_any(int h) {
        struct stat st;

        return stat(path("%s/%c/state/" UUID, root, 'a' + h), &st) == 0 ||
               stat(path("%s/%c/run/" UUID, root, 'a' + h), &st) == 0 ||
               stat(path("%s/%c/log/" UUID, root, 'a' + h), &st) == 0 ||
               stat(path("%s/%c/state/secrets/" UUID, root, 'a' + h), &st) == 0;
}

static void assert_running(int h) {
        const char *args[] = { "status", UUID, NULL };

        long t0 = monotonic_ms();
        int rc = run(h, "status", args);

        cr_assert_eq(rc, 0, "[%s] status on host %c (%ld ms): %s\n%s", step, 'a' + h, monotonic_ms() - t0, err("status"),
                     logs());
        cr_assert(strstr(out("status"), "qemu status:  running"), "[%s] host %c: %s\n%s", step, 'a' + h,
                  out("status"), logs());
}

static void assert_gone(int h) {
        long deadline = monotonic_ms() + 10000;

        /* the janitor may still be at work */
        while (has_any(h) && monotonic_ms() < deadline)
                poll(NULL, 0, 50);
        cr_assert(!has_any(h), "[%s] host %c still has files of the guest\n%s", step, 'a' + h, logs());
        cr_assert_eq(test_count_processes(path("%s/%c/", root, 'a' + h), false), 0,
                     "[%s] host %c still runs processes of the guest\n%s", step, 'a' + h, logs());
}

/* Boot the guest on host a (first start: the secret is made in Barbican). */
static pid_t boot_on_a(void) {
        const char *args[] = { "run", "--token-fd", "3", strdup(path("%s/guest.json", root)), NULL };
        pid_t pid = start(0, "run-a", "p", args);

        wait_text(console(0), "tpmprobe: done", 1, GUEST_BOOT_MS);
        return pid;
}

static pid_t incoming(int h, const char *name) {
        const char *args[] = { "run", "--incoming", "49152", UUID, NULL };
        pid_t pid = start(h, name, NULL, args);

        wait_text(path("%s/%s.err", root, name), "waiting up to", 1, 10000);
        return pid;
}

static int migrate(int from, const char *name) {
        const char *args[] = { "migrate", UUID, "--to", ip[!from], NULL };

        return run(from, name, args);
}

static void reap(pid_t pid, int want) {
        int status;

        cr_assert_eq(waitpid(pid, &status, 0), pid);
        cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == want, "exit status %d, wanted %d", status, want);
}

static pid_t start_migrate(int from, const char *name);
static int wait_exit(pid_t pid);

TestSuite(migrate, .init = setup, .fini = teardown, .timeout = 600);

Test(migrate, tpm_survives_and_five_round_trips) {
        char ek[256];
        long c1;
        pid_t sup[2], src;
        const char *reboot[] = { "reboot", UUID, NULL }, *hard[] = { "reboot", "--hard", UUID, NULL };

        sup[0] = boot_on_a();
        c1 = atol(console_last(0, "nv-counter="));
        snprintf(ek, sizeof(ek), "%s", console_last(0, "ek="));

        sup[1] = incoming(1, "in-b");
        /* slowed down (QEMU's max-bandwidth), so that the supervisor is asked while QEMU
         * sends the guest: it answers status with the migration, and refuses the rest */
        {
                const char *bw[] = { "qmp", UUID, "migrate-set-parameters", "{\"max-bandwidth\": 33554432}", NULL },
                           *status[] = { "status", UUID, NULL }, *stop[] = { "stop", UUID, NULL };
                pid_t mig;

                step = "status while migrating";
                cr_assert_eq(run(0, "bw", bw), 0, "%s", err("bw"));
                mig = start_migrate(0, "mig");
                wait_text(path("%s/mig.err", root), "% ", 1, 30000);
                cr_assert_eq(run(0, "status", status), 0, "%s\n%s", err("status"), logs());
                cr_assert(strstr(out("status"), "migration:    to ") && strstr(out("status"), ":49152, active, "),
                          "%s", out("status"));
                cr_assert_eq(run(0, "stop", stop), 75, "%s", err("stop"));
                cr_assert(strstr(err("stop"), "the guest is being migrated to "), "%s", err("stop"));
                cr_assert_eq(wait_exit(mig), 0, "%s", err("mig"));
        }
        cr_assert(strstr(out("mig"), "migrated to"), "%s", out("mig"));
        cr_assert(strstr(err("mig"), "% "), "no progress shown: %s", err("mig"));
        reap(sup[0], 0);
        assert_gone(0);
        assert_running(1);

        /* the disk came along with the spec's chain */
        {
                const char *blk[] = { "qmp", UUID, "query-named-block-nodes", NULL };

                cr_assert_eq(run(1, "blk", blk), 0, "%s", err("blk"));
                cr_assert(strstr(out("blk"), "\"node-name\": \"disk0-backing1\"") &&
                                  strstr(out("blk"), "\"backing_file_depth\": 1"),
                          "%s", out("blk"));
        }
        /* the TPM came along: the counter goes on, the EK is the same */
        step = "first migration checked";
        cr_assert_eq(run(1, "reboot", reboot), 0, "%s", err("reboot"));
        wait_text(console(1), "tpmprobe: done", 1, GUEST_BOOT_MS);
        cr_assert_eq(atol(console_last(1, "nv-counter=")), c1 + 1);
        cr_assert_str_eq(console_last(1, "ek="), ek);
        /* and it was sealed on b: a hard reboot starts swtpm from b's sealed state */
        cr_assert_eq(run(1, "reboot", hard), 0, "%s", err("reboot"));
        wait_text(console(1), "tpmprobe: done", 2, GUEST_BOOT_MS); /* the console log is appended to */
        cr_assert_eq(atol(console_last(1, "nv-counter=")), c1 + 2);
        cr_assert_str_eq(console_last(1, "ek="), ek);

        /* five round trips: b -> a -> b, five times */
        step = "round trips";
        src = 1;
        for (int i = 0; i < 10; i++) {
                char name[16];

                snprintf(name, sizeof(name), "in-%d", i);
                sup[!src] = incoming(!src, name);
                cr_assert_eq(migrate(src, "mig"), 0, "trip %d: %s", i, err("mig"));
                reap(sup[src], 0);
                assert_gone(src);
                assert_running(!src);
                src = !src;
        }
        cr_assert_eq(src, 1);
        cr_assert_eq(run(1, "reboot", reboot), 0, "%s", err("reboot"));
        wait_text(console(1), "tpmprobe: done", 1, GUEST_BOOT_MS); /* b's console is new since the guest came back */
        cr_assert_eq(atol(console_last(1, "nv-counter=")), c1 + 3);
        cr_assert_str_eq(console_last(1, "ek="), ek);
}

/* ---- failures: each leaves the guest running on a and nothing of it on b ---------------- */

static pid_t pid_of(const char *pattern) {
        char cmd[512], buf[64] = "";
        FILE *p;

        snprintf(cmd, sizeof(cmd), "pgrep -f -o -- '%s'", pattern);
        p = popen(cmd, "r");
        cr_assert(p);
        if (!fgets(buf, sizeof(buf), p))
                buf[0] = '\0';
        pclose(p);
        return (pid_t) atoi(buf);
}

/* Wait until the source QEMU's stream is connected to host h's QEMU (the port its
 * supervisor announced). */
static void wait_stream(int h) {
        long deadline = monotonic_ms() + 10000;
        const char *ready = strstr(slurp(path("%s/in-b.err", root)), "QEMU receives on port ");
        int port = ready ? atoi(ready + strlen("QEMU receives on port ")) : 0;
        char cmd[256];

        cr_assert_gt(port, 0);
        snprintf(cmd, sizeof(cmd), "ip netns exec %s-%c ss -Htn state established '( sport = :%d )' | grep -q .",
                 prefix, 'a' + h, port);
        while (system(cmd) != 0) {
                cr_assert_lt(monotonic_ms(), deadline, "[%s] no QEMU stream on port %d of host %c\n%s", step, port,
                             'a' + h, logs());
                poll(NULL, 0, 5);
        }
}

static pid_t start_migrate(int from, const char *name) {
        const char *args[] = { "migrate", UUID, "--to", ip[!from], NULL };

        return start(from, name, NULL, args);
}

static int wait_exit(pid_t pid) {
        int status;

        cr_assert_eq(waitpid(pid, &status, 0), pid);
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* a fake destination in b's namespace: it takes the guest, then does what `how` says */
static pid_t fake_destination(const char *how) {
        pid_t pid = fork();

        cr_assert_geq(pid, 0);
        if (pid == 0) {
                struct migchan_tls tls = { .ca_file = path("%s/certs/b/ca-cert.pem", root),
                                           .cert_file = path("%s/certs/b/server-cert.pem", root),
                                           .key_file = path("%s/certs/b/server-key.pem", root) };
                struct migchan *ch = NULL;
                struct mig_frame f = { 0 };
                vmsup_error *e = NULL;
                json_object *hello = json_object_new_object();
                int ns = open(path("/run/netns/%s-b", prefix), O_RDONLY | O_CLOEXEC), lfd;

                if (ns < 0 || setns(ns, CLONE_NEWNET) < 0)
                        _exit(10);
                lfd = migchan_listen(NULL, "49152", &e);
                if (lfd < 0 || migchan_accept(lfd, &tls, 30000, &ch, &e) < 0)
                        _exit(11);
                json_object_object_add(hello, "protocol", json_object_new_int(1));
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

        sup = boot_on_a();
        c1 = atol(console_last(0, "nv-counter="));

        /* nobody listens on b */
        step = "nobody listens";
        cr_assert_eq(migrate(0, "mig"), 69, "%s", err("mig"));
        cr_assert(strstr(err("mig"), "10.") && strstr(err("mig"), "49152"), "%s", err("mig"));
        assert_running(0);
        assert_gone(1);

        /* b shows a certificate from another CA: the source refuses it */
        step = "foreign CA";
        write_conf(1, path("%s/certs/rogue-ca/rogue", root));
        in = incoming(1, "in-b");
        cr_assert_eq(migrate(0, "mig"), 69, "%s", err("mig"));
        cr_assert(strstr(err("mig"), "certificate") || strstr(err("mig"), "trust"), "%s", err("mig"));
        kill(in, SIGTERM);
        wait_exit(in);
        write_conf(1, path("%s/certs/b", root));
        assert_running(0);
        assert_gone(1);

        /* b's QEMU dies while it receives the guest */
        step = "b's QEMU killed";
        in = incoming(1, "in-b");
        mig = start_migrate(0, "mig");
        wait_text(path("%s/in-b.err", root), "ready: QEMU receives", 1, 30000);
        victim = pid_of(path("qemu-system.*%s/b/", root));
        cr_assert_gt(victim, 0);
        kill(victim, SIGKILL);
        cr_assert_neq(wait_exit(mig), 0);
        cr_assert_neq(wait_exit(in), 0);
        cr_assert(strstr(err("in-b"), "QEMU"), "%s", err("in-b"));
        assert_running(0);
        assert_gone(1);

        /* b's swtpm dies before the stream starts */
        step = "b's swtpm killed";
        in = incoming(1, "in-b");
        mig = start_migrate(0, "mig");
        wait_text(path("%s/in-b.err", root), "wait for the incoming migration", 1, 30000);
        victim = pid_of(path("swtpm socket.*%s/b/", root));
        cr_assert_gt(victim, 0);
        kill(victim, SIGKILL);
        cr_assert_neq(wait_exit(mig), 0);
        cr_assert_neq(wait_exit(in), 0);
        assert_running(0);
        assert_gone(1);

        /* b's disk is full */
        step = "b's disk full";
        sh("mkdir -p %s/b/state && mount -t tmpfs -o size=256k vmsup-test %s/b/state && "
           "(dd if=/dev/zero of=%s/b/state/filler bs=4k 2>/dev/null; true)", root, root, root);
        in = incoming(1, "in-b");
        rc = migrate(0, "mig");
        cr_assert_neq(rc, 0);
        cr_assert(strstr(err("mig"), "No space left"), "%s", err("mig"));
        cr_assert_neq(wait_exit(in), 0);
        sh("umount %s/b/state", root);
        assert_running(0);
        assert_gone(1);

        /* a destination that never answers: the source gives up after answer_timeout */
        step = "silent destination";
        in = fake_destination("silent");
        mig = start_migrate(0, "mig");
        /* the source's supervisor answers status while it waits (answer_timeout is longer
         * than `vmsup status` waits for an answer) */
        wait_text(path("%s/mig.err", root), "prepares swtpm and QEMU", 1, 30000);
        {
                const char *status[] = { "status", UUID, NULL };

                cr_assert_eq(run(0, "status", status), 0, "%s", err("status"));
                cr_assert(strstr(out("status"), ":49152, preparing, 0% of the memory sent"), "%s", out("status"));
        }
        cr_assert_eq(wait_exit(mig), 75, "%s", err("mig"));
        cr_assert(strstr(err("mig"), "no answer from the migration peer within 12 s (waiting for READY)"), "%s",
                  err("mig"));
        kill(in, SIGKILL);
        wait_exit(in);
        assert_running(0);

        /* a destination that answers out of turn */
        step = "destination out of turn";
        in = fake_destination("unexpected");
        cr_assert_eq(migrate(0, "mig"), 65, "%s", err("mig"));
        cr_assert(strstr(err("mig"), "unexpected RUNNING"), "%s", err("mig"));
        wait_exit(in);
        assert_running(0);

        /* the connection is lost mid-way, once QEMU's stream is connected (QEMU may be in
         * its TLS handshake, sending pages, or, with the guest paused, the last of them and
         * the devices' state; the first and last hold QEMU's main loop): the source gives
         * up after answer_timeout, the destination at [migration] timeout */
        step = "link cut";
        in = incoming(1, "in-b");
        mig = start_migrate(0, "mig");
        wait_text(path("%s/in-b.err", root), "ready: QEMU receives", 1, 30000);
        wait_stream(1);
        sh("%s/tests/twohosts.sh cut %s", TEST_SRCDIR, prefix);
        cr_assert_neq(wait_exit(mig), 0);
        cr_assert_neq(wait_exit(in), 0);
        sh("%s/tests/twohosts.sh heal %s", TEST_SRCDIR, prefix);
        assert_running(0);
        assert_gone(1);

        /* b's supervisor is killed: its janitor removes what it had received */
        step = "b's supervisor killed";
        in = incoming(1, "in-b");
        mig = start_migrate(0, "mig");
        wait_text(path("%s/in-b.err", root), "ready: QEMU receives", 1, 30000);
        kill(in, SIGKILL);
        cr_assert_neq(wait_exit(mig), 0);
        wait_exit(in);
        assert_running(0);
        assert_gone(1);

        /* the guest's TPM went through all that intact */
        step = "reboot on a";
        cr_assert_eq(run(0, "reboot", reboot), 0, "%s", err("reboot"));
        wait_text(console(0), "tpmprobe: done", 2, GUEST_BOOT_MS);
        cr_assert_eq(atol(console_last(0, "nv-counter=")), c1 + 1);

        step = "a's supervisor killed";
        /* a's supervisor is killed mid-way: the guest dies with it (as in a host crash),
         * b rolls back, and a starts the guest again from its sealed state */
        in = incoming(1, "in-b");
        mig = start_migrate(0, "mig");
        wait_text(path("%s/in-b.err", root), "ready: QEMU receives", 1, 30000);
        kill(sup, SIGKILL);
        wait_exit(sup);
        cr_assert_neq(wait_exit(mig), 0);
        cr_assert_neq(wait_exit(in), 0);
        assert_gone(1);
        /* its QEMU and swtpm end by themselves (their death signal), as they would not
         * outlive a host crash: wait for that before the start */
        {
                long deadline = monotonic_ms() + 30000;

                while (test_count_processes(path("%s/a/", root), false) > 0) {
                        if (monotonic_ms() > deadline) {
                                sh("ps -eo pid,stat,args | grep '%s/a/' | grep -v grep >&2; true", root);
                                cr_assert_fail("[%s] a's QEMU or swtpm outlived their supervisor by 30 s\n%s", step,
                                               logs());
                        }
                        poll(NULL, 0, 50);
                }
        }
        {
                const char *args[] = { "run", strdup(path("%s/guest.json", root)), NULL };

                sup = start(0, "run-a2", NULL, args);
        }
        wait_text(console(0), "tpmprobe: done", 3, GUEST_BOOT_MS);
        cr_assert_eq(atol(console_last(0, "nv-counter=")), c1 + 2);
        kill(sup, SIGTERM);
}

Test(migrate, user_mode_is_refused_with_novas_words) {
        const char *args[] = { "run", "--token-fd", "3", strdup(path("%s/guest.json", root)), NULL };
        pid_t sup;

        write_spec("user");
        sup = start(0, "run-a", "p", args);
        wait_text(path("%s/run-a.err", root), "guest running", 1, 60000);
        cr_assert_eq(migrate(0, "mig"), 69, "%s", err("mig"));
        cr_assert(strstr(err("mig"), "Operation 'live-migration' not supported for vTPM-enabled instance (" UUID ")."),
                  "%s", err("mig"));
        assert_running(0);
        kill(sup, SIGTERM);
        wait_exit(sup);
}

/* A source with another passphrase than the guest's (here: a fake source supervisor that
 * hands b a wrong secret, while the real source QEMU sends the guest): b's swtpm cannot
 * decrypt the TPM blobs, b's QEMU fails the load, b removes everything, and QEMU on a
 * resumes the guest by itself (return-path). */
Test(migrate, wrong_migration_key_rolls_back) {
        int port_pipe[2], port = 0, status = 0;
        pid_t sup, in, fake;
        char portbuf[16] = "", args[512];
        long deadline;

        sup = boot_on_a();
        in = incoming(1, "in-b");
        cr_assert_eq(pipe(port_pipe), 0);
        fake = fork();
        cr_assert_geq(fake, 0);
        if (fake == 0) {
                struct migchan_tls tls = { .ca_file = path("%s/certs/a/ca-cert.pem", root),
                                           .cert_file = path("%s/certs/a/client-cert.pem", root),
                                           .key_file = path("%s/certs/a/client-key.pem", root),
                                           .peer_name = ip[1] };
                struct migchan *ch = NULL;
                struct mig_frame f = { 0 };
                vmsup_error *e = NULL;
                json_object *hello = json_object_new_object(), *prep = json_object_new_object();
                char wrong[513];
                int ns = open(path("/run/netns/%s-a", prefix), O_RDONLY | O_CLOEXEC);

                memset(wrong, 'A', 512);
                wrong[512] = '\0';
                if (ns < 0 || setns(ns, CLONE_NEWNET) < 0 || migchan_connect(ip[1], "49152", &tls, 10000, &ch, &e) < 0)
                        _exit(10);
                json_object_object_add(hello, "protocol", json_object_new_int(1));
                json_object_object_add(hello, "uuid", json_object_new_string(UUID));
                json_object_object_add(hello, "host", json_object_new_string("fake"));
                json_object_object_add(prep, "spec", json_object_from_file(path("%s/guest.json", root)));
                json_object_object_add(prep, "secret_uuid", json_object_new_string("0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"));
                if (migchan_send_json(ch, MIG_HELLO, hello, 5000, &e) < 0 ||
                    migchan_recv_wait(ch, MIG_HELLO, 10000, &f, &e) < 0 ||
                    migchan_send_json(ch, MIG_PREPARE, prep, 5000, &e) < 0 ||
                    migchan_send(ch, MIG_SECRET, wrong, 512, 5000, &e) < 0 ||
                    migchan_recv_wait(ch, MIG_READY, 20000, &f, &e) < 0 || f.type != MIG_READY)
                        _exit(11);
                dprintf(port_pipe[1], "%d\n", json_object_get_int(json_object_object_get(f.json, "port")));
                /* b answers ABORT or hangs up once its QEMU failed */
                mig_frame_clear(&f);
                migchan_recv_wait(ch, MIG_MIGRATED, 60000, &f, &e);
                _exit(f.type == MIG_ABORT ? 0 : 12);
        }
        close(port_pipe[1]);
        cr_assert_gt(read(port_pipe[0], portbuf, sizeof(portbuf) - 1), 0, "the fake source got no READY:\n%s",
                     err("in-b"));
        port = atoi(portbuf);
        cr_assert_gt(port, 0);

        /* b takes QEMU's stream from the source's host only: a connection from elsewhere
         * (here b itself) is turned away, and b listens on */
        {
                int self = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC),
                    ns = open(path("/run/netns/%s-b", prefix), O_RDONLY | O_CLOEXEC), fd;
                struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t) port) };
                char needle[128];

                cr_assert(self >= 0 && ns >= 0 && inet_pton(AF_INET, ip[1], &sa.sin_addr) == 1);
                cr_assert_eq(setns(ns, CLONE_NEWNET), 0);
                fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
                cr_assert_eq(connect(fd, (struct sockaddr *) &sa, sizeof(sa)), 0, "%s", strerror(errno));
                cr_assert_eq(setns(self, CLONE_NEWNET), 0);
                snprintf(needle, sizeof(needle), "turned away a migration stream from %s: the source is ", ip[1]);
                wait_text(path("%s/in-b.err", root), needle, 1, 10000);
                close(fd);
                close(ns);
                close(self);
        }

        /* the real source QEMU sends the guest, with TLS and return-path, through vmsup qmp */
        {
                const char *add[] = { "qmp", UUID, "object-add", strdup(path("{\"qom-type\": \"tls-creds-x509\", \"id\": \"t\", "
                                      "\"dir\": \"%s/certs/a\", \"endpoint\": \"client\", \"verify-peer\": true}", root)), NULL };
                const char *caps[] = { "qmp", UUID, "migrate-set-capabilities", "{\"capabilities\": [{\"capability\": "
                                       "\"return-path\", \"state\": true}]}", NULL };
                const char *params[] = { "qmp", UUID, "migrate-set-parameters", strdup(path("{\"tls-creds\": \"t\", "
                                         "\"tls-hostname\": \"%s\"}", ip[1])), NULL };
                const char *mig[] = { "qmp", UUID, "migrate", args, NULL };

                snprintf(args, sizeof(args), "{\"uri\": \"tcp:%s:%d\"}", ip[1], port);
                cr_assert_eq(run(0, "qmp", add), 0, "%s", err("qmp"));
                cr_assert_eq(run(0, "qmp", caps), 0, "%s", err("qmp"));
                cr_assert_eq(run(0, "qmp", params), 0, "%s", err("qmp"));
                cr_assert_eq(run(0, "qmp", mig), 0, "%s", err("qmp"));
        }
        cr_assert_neq(wait_exit(in), 0);
        cr_assert(strstr(err("in-b"), "decryption error"), "%s", err("in-b"));
        cr_assert_eq(waitpid(fake, &status, 0), fake);
        cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "fake source: %d", status);
        assert_gone(1);
        /* QEMU on a resumes by itself when the destination fails (return-path) */
        deadline = monotonic_ms() + 20000;
        for (;;) {
                const char *st[] = { "status", UUID, NULL };

                if (run(0, "status", st) == 0 && strstr(out("status"), "qemu status:  running"))
                        break;
                cr_assert_lt(monotonic_ms(), deadline, "a's guest did not resume: %s", out("status"));
                poll(NULL, 0, 100);
        }
        kill(sup, SIGTERM);
        wait_exit(sup);
}
