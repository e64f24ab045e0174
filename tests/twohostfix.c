/* Two hosts on one machine for the live-migration tests: two network namespaces joined
 * by a veth pair (tests/twohosts.sh), each with its own vmsup roots, configuration and
 * host certificates (tests/migcerts.sh); a real Barbican in host a for the first start;
 * the demo guest (tests/guest) with a disk on storage both share. Host 0 is a, 1 is b. */
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
#include "migrate/migchan.h"
#include "tests/helpers.h"
#include "tests/twohostfix.h"

char *th_root, th_prefix[24], th_ip[2][32], th_url[128];
const char *th_step = "setup";

void th_sh(const char *fmt, ...) {
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

char *th_path(const char *fmt, ...) {
        static char bufs[8][4096];
        static int next;
        char *b = bufs[next++ % 8];
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(b, 4096, fmt, ap);
        va_end(ap);
        return b;
}

char *th_slurp(const char *p) {
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

int th_count(const char *text, const char *needle) {
        int n = 0;

        for (const char *p = text; (p = strstr(p, needle)); p += strlen(needle))
                n++;
        return n;
}

void th_write_conf(int h, const char *tls_dir) {
        th_write_conf_tls(h, tls_dir, th_path("%s/certs/qemu-ca/%c", th_root, 'a' + h));
}

void th_write_conf_tls(int h, const char *tls_dir, const char *qemu_tls_dir) {
        char *migration = NULL;

        cr_assert(asprintf(&migration, "[migration]\ntls_dir = %s\nqemu_tls_dir = %s\ntimeout = 20\nanswer_timeout = 12\n",
                           tls_dir, qemu_tls_dir) > 0);
        free(test_write_conf(th_root, h ? "b.conf" : "a.conf",
                             &(struct test_conf) { .root = th_path("%s/%c", th_root, 'a' + h), .barbican_url = th_url,
                                                   .more = migration, .mode = 0644 }));
        free(migration);
}

void th_write_spec(const char *mode) {
        char *extra_specs = NULL, *disks = NULL;

        cr_assert(asprintf(&extra_specs,
                           "\"hw:tpm_version\": \"2.0\", \"hw:tpm_model\": \"tpm-crb\", \"hw:tpm_secret_security\": \"%s\"",
                           mode) > 0);
        cr_assert(asprintf(&disks,
                           "[{\"path\": \"%s/top.qcow2\", \"format\": \"qcow2\","
                           " \"backing\": {\"path\": \"%s/base.raw\", \"format\": \"raw\"}}]",
                           th_root, th_root) > 0);
        free(test_write_spec(th_root, "guest.json",
                             &(struct test_spec) { .uuid = UUID, .name = "demo", .user_id = "u", .project_id = "p",
                                                   .extra_specs = extra_specs, .uefi = true, .guest_dir = th_root,
                                                   .hold = true, .disks = disks }));
        free(extra_specs);
        free(disks);
}

void th_setup(void) {
        char *env;

        cr_assert_eq(geteuid(), 0, "the migration tests need root (network namespaces)");
        th_root = test_mkdtemp();
        snprintf(th_prefix, sizeof(th_prefix), "vmt%d", (int) getpid());
        th_sh("%s/tests/twohosts.sh up %s %s > %s/hosts.env", TEST_SRCDIR, th_prefix, th_root, th_root);
        env = th_slurp(th_path("%s/hosts.env", th_root));
        cr_assert_eq(sscanf(strstr(env, "ip_a="), "ip_a=%31s", th_ip[0]), 1);
        cr_assert_eq(sscanf(strstr(env, "ip_b="), "ip_b=%31s", th_ip[1]), 1);
        th_sh("mkdir -p %s/barbican && ip netns exec %s-a %s/tests/barbican/barbican.sh start %s/barbican %d > %s/url",
           th_root, th_prefix, TEST_SRCDIR, th_root, (int) getpid(), th_root);
        snprintf(th_url, sizeof(th_url), "%s", th_slurp(th_path("%s/url", th_root)));
        th_url[strcspn(th_url, "\n")] = '\0';
        /* a disk with a backing chain in the spec, on storage both hosts share: the
         * destination checks its headers and builds the same block graph */
        th_sh("cd %s && qemu-img create -q -f raw base.raw 4M && qemu-img create -q -f qcow2 -b base.raw -F raw top.qcow2 4M",
           th_root);
        /* the demo guest's kernel and initrd on that storage too, readable by everyone: a
         * test may run QEMU as its own user, which cannot reach a build tree under a 0700
         * dir (a fresh clone in mktemp -d's) */
        test_copy_file(TEST_GUEST_DIR, th_root, "vmlinuz");
        test_copy_file(TEST_GUEST_DIR, th_root, "initrd.img");
        th_write_conf(0, th_path("%s/certs/a", th_root));
        th_write_conf(1, th_path("%s/certs/b", th_root));
        th_write_spec("host");
}

void th_teardown(void) {
        test_count_processes(th_root, true);
        (void) !system(th_path("%s/tests/twohosts.sh down %s >/dev/null 2>&1", TEST_SRCDIR, th_prefix));
        (void) !system(th_path("%s/tests/barbican/barbican.sh stop %s/barbican >/dev/null 2>&1", TEST_SRCDIR, th_root));
        test_rmtree(th_root);
        free(th_root);
}

/* Start `vmsup ARGS` in host h's namespace in the background; stdout and stderr go to
 * ROOT/NAME.out and .err. token: written to its fd 3 when not NULL. */
pid_t th_start(int h, const char *name, const char *token, const char *const *args) {
        int tp[2] = { -1, -1 };
        pid_t pid;

        if (token)
                cr_assert_eq(pipe(tp), 0);
        /* not in the child: the caller may look for lines of the new run at once */
        unlink(th_path("%s/%s.out", th_root, name));
        unlink(th_path("%s/%s.err", th_root, name));
        pid = fork();
        cr_assert_geq(pid, 0);
        if (pid == 0) {
                const char *argv[32] = { "ip", "netns", "exec", NULL, VMSUP, "--config", NULL };
                char ns[40];
                int n = 7, o = open(th_path("%s/%s.out", th_root, name), O_WRONLY | O_CREAT | O_TRUNC, 0644),
                    e = open(th_path("%s/%s.err", th_root, name), O_WRONLY | O_CREAT | O_TRUNC, 0644);

                snprintf(ns, sizeof(ns), "%s-%c", th_prefix, 'a' + h);
                argv[3] = ns;
                argv[6] = strdup(th_path("%s/%c.conf", th_root, 'a' + h));
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
int th_run(int h, const char *name, const char *const *args) {
        int status;
        pid_t pid = th_start(h, name, NULL, args);

        cr_assert_eq(waitpid(pid, &status, 0), pid);
        return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

char *th_out(const char *name) {
        return th_slurp(th_path("%s/%s.out", th_root, name));
}

char *th_err(const char *name) {
        return th_slurp(th_path("%s/%s.err", th_root, name));
}


/* The last lines of a file, for a failure message (a copy: slurp() reuses its buffer). */
char *th_tail_of(const char *file, size_t max) {
        const char *text = th_slurp(file);
        size_t n = strlen(text);

        return strdup(n > max ? text + n - max : text);
}

/* The supervisors' logs and the last migrate's errors. */
char *th_logs(void) {
        char *a = th_tail_of(th_path("%s/run-a.err", th_root), 3000), *a2 = th_tail_of(th_path("%s/run-a2.err", th_root), 2000),
             *b = th_tail_of(th_path("%s/in-b.err", th_root), 2000), *m = th_tail_of(th_path("%s/mig.err", th_root), 1500), *all = NULL;

        if (asprintf(&all, "--- a's supervisor:\n%s\n--- a's second supervisor (if any):\n%s\n--- b's (in-b):\n%s\n"
                     "--- migrate:\n%s", a, a2, b, m) < 0)
                all = NULL;
        free(a);
        free(a2);
        free(b);
        free(m);
        return all;
}

void th_wait_text(const char *file, const char *needle, int n, int timeout_ms) {
        long deadline = monotonic_ms() + timeout_ms;

        while (th_count(th_slurp(file), needle) < n) {
                if (monotonic_ms() > deadline) {
                        char *text = th_tail_of(file, 3000);

                        cr_assert_fail("[%s] %s lacks %d x '%s' after %d ms:\n%s\n%s", th_step, file, n, needle,
                                       timeout_ms, text, th_logs());
                }
                poll(NULL, 0, 50);
        }
}

char *th_console(int h) {
        return th_path("%s/%c/log/" UUID "/console.log", th_root, 'a' + h);
}

/* The last value of "key=" on host h's console. */
char *th_console_last(int h, const char *key) {
        static char v[256];
        char *text = th_slurp(th_console(h)), *p = NULL, *q;

        for (q = text; (q = strstr(q, key)); q += strlen(key))
                p = q;
        cr_assert(p, "no '%s' on the console of host %c:\n%s", key, 'a' + h, text);
        snprintf(v, sizeof(v), "%s", p + strlen(key));
        v[strcspn(v, "\r\n")] = '\0';
        return v;
}

bool th_has_any(int h) {
        struct stat st;

        return stat(th_path("%s/%c/state/" UUID, th_root, 'a' + h), &st) == 0 ||
               stat(th_path("%s/%c/run/" UUID, th_root, 'a' + h), &st) == 0 ||
               stat(th_path("%s/%c/log/" UUID, th_root, 'a' + h), &st) == 0 ||
               stat(th_path("%s/%c/state/secrets/" UUID, th_root, 'a' + h), &st) == 0;
}

void th_assert_running(int h) {
        const char *args[] = { "status", UUID, NULL };

        long t0 = monotonic_ms();
        int rc = th_run(h, "status", args);

        cr_assert_eq(rc, 0, "[%s] status on host %c (%ld ms): %s\n%s", th_step, 'a' + h, monotonic_ms() - t0, th_err("status"),
                     th_logs());
        cr_assert(strstr(th_out("status"), "qemu status:  running"), "[%s] host %c: %s\n%s", th_step, 'a' + h,
                  th_out("status"), th_logs());
}

void th_assert_gone(int h) {
        long deadline = monotonic_ms() + 10000;

        /* the janitor may still be at work */
        while (th_has_any(h) && monotonic_ms() < deadline)
                poll(NULL, 0, 50);
        cr_assert(!th_has_any(h), "[%s] host %c still has files of the guest\n%s", th_step, 'a' + h, th_logs());
        cr_assert_eq(test_count_processes(th_path("%s/%c/", th_root, 'a' + h), false), 0,
                     "[%s] host %c still runs processes of the guest\n%s", th_step, 'a' + h, th_logs());
}

/* Boot the guest on host a (first start: the secret is made in Barbican). */
pid_t th_boot_on_a(void) {
        const char *args[] = { "run", "--token-fd", "3", strdup(th_path("%s/guest.json", th_root)), NULL };
        pid_t pid = th_start(0, "run-a", "p", args);

        th_wait_text(th_console(0), "tpmprobe: done", 1, GUEST_BOOT_MS);
        return pid;
}

pid_t th_incoming(int h, const char *name) {
        const char *args[] = { "run", "--incoming", "49152", "--spec", strdup(th_path("%s/guest.json", th_root)), UUID,
                               NULL };
        pid_t pid = th_start(h, name, NULL, args);

        th_wait_text(th_path("%s/%s.err", th_root, name), "waiting up to", 1, 10000);
        return pid;
}

int th_migrate(int from, const char *name) {
        const char *args[] = { "migrate", UUID, "--to", th_ip[!from], NULL };

        return th_run(from, name, args);
}

void th_reap(pid_t pid, int want) {
        int status;

        cr_assert_eq(waitpid(pid, &status, 0), pid);
        cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == want, "exit status %d, wanted %d", status, want);
}

pid_t th_pid_of(const char *pattern) {
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
void th_wait_stream(int h) {
        long deadline = monotonic_ms() + 10000;
        const char *ready = strstr(th_slurp(th_path("%s/in-b.err", th_root)), "QEMU receives on port ");
        int port = ready ? atoi(ready + strlen("QEMU receives on port ")) : 0;
        char cmd[256];

        cr_assert_gt(port, 0);
        snprintf(cmd, sizeof(cmd), "ip netns exec %s-%c ss -Htn state established '( sport = :%d )' | grep -q .",
                 th_prefix, 'a' + h, port);
        while (system(cmd) != 0) {
                cr_assert_lt(monotonic_ms(), deadline, "[%s] no QEMU stream on port %d of host %c\n%s", th_step, port,
                             'a' + h, th_logs());
                poll(NULL, 0, 5);
        }
}

pid_t th_start_migrate(int from, const char *name) {
        const char *args[] = { "migrate", UUID, "--to", th_ip[!from], NULL };

        return th_start(from, name, NULL, args);
}

int th_wait_exit(pid_t pid) {
        int status;

        cr_assert_eq(waitpid(pid, &status, 0), pid);
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* The relay in host b: the source reaches it on ip_b:49153; actions as migrelay takes
 * them. Its log is ROOT/relay.err. */
pid_t th_relay_start(const char *const *actions) {
        pid_t pid;

        unlink(th_path("%s/relay.err", th_root));
        pid = fork();
        cr_assert_geq(pid, 0);
        if (pid == 0) {
                const char *argv[40] = { "ip", "netns", "exec", NULL, TEST_BUILDDIR "/tests/migrelay", "--listen", NULL, "--to", NULL, "--ca", NULL,
                                         "--server-cert", NULL, "--server-key", NULL, "--client-cert", NULL,
                                         "--client-key", NULL };
                char ns[40];
                int n = 19, e = open(th_path("%s/relay.err", th_root), O_WRONLY | O_CREAT | O_TRUNC, 0644);

                snprintf(ns, sizeof(ns), "%s-b", th_prefix);
                argv[3] = ns;
                argv[6] = strdup(th_path("%s:49153", th_ip[1]));
                argv[8] = strdup(th_path("%s:49152", th_ip[1]));
                argv[10] = strdup(th_path("%s/certs/b/ca-cert.pem", th_root));
                argv[12] = strdup(th_path("%s/certs/b/server-cert.pem", th_root));
                argv[14] = strdup(th_path("%s/certs/b/server-key.pem", th_root));
                argv[16] = strdup(th_path("%s/certs/a/client-cert.pem", th_root));
                argv[18] = strdup(th_path("%s/certs/a/client-key.pem", th_root));
                for (int i = 0; actions[i]; i++)
                        argv[n++] = actions[i];
                argv[n] = NULL;
                dup2(e, 2);
                execvp("ip", (char **) argv);
                _exit(127);
        }
        th_wait_text(th_path("%s/relay.err", th_root), "listening on", 1, 10000);
        return pid;
}

pid_t th_migrate_via_relay(const char *name) {
        const char *args[] = { "migrate", UUID, "--to", strdup(th_path("%s:49153", th_ip[1])), NULL };

        return th_start(0, name, NULL, args);
}

struct migchan *th_source_prepare(json_object *spec) {
        struct migchan_tls tls = { .ca_file = th_path("%s/certs/a/ca-cert.pem", th_root),
                                   .cert_file = th_path("%s/certs/a/client-cert.pem", th_root),
                                   .key_file = th_path("%s/certs/a/client-key.pem", th_root),
                                   .peer_name = th_ip[1] };
        _cleanup_json_ json_object *hello = json_object_new_object(), *prep = json_object_new_object();
        struct migchan *ch = NULL;
        struct mig_frame f = { 0 };
        vmsup_error *e = NULL;
        char pass[513];
        int ns = open(th_path("/run/netns/%s-a", th_prefix), O_RDONLY | O_CLOEXEC);

        memset(pass, 'A', 512);
        pass[512] = '\0';
        json_object_object_add(hello, "protocol", json_object_new_int(MIGCHAN_PROTOCOL));
        json_object_object_add(hello, "uuid", json_object_new_string(UUID));
        json_object_object_add(hello, "host", json_object_new_string("scripted"));
        json_object_object_add(prep, "spec", spec ? spec : json_object_from_file(th_path("%s/guest.json", th_root)));
        json_object_object_add(prep, "secret_uuid", json_object_new_string("0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"));
        if (ns < 0 || setns(ns, CLONE_NEWNET) < 0 || migchan_connect(th_ip[1], "49152", &tls, 10000, &ch, &e) < 0 ||
            migchan_send_json(ch, MIG_HELLO, hello, 5000, &e) < 0 || migchan_recv_wait(ch, MIG_HELLO, 10000, &f, &e) < 0 ||
            migchan_send_json(ch, MIG_PREPARE, prep, 5000, &e) < 0 || migchan_send(ch, MIG_SECRET, pass, 512, 5000, &e) < 0)
                ch = migchan_free(ch);
        mig_frame_clear(&f);
        vmsup_error_free(e);
        if (ns >= 0)
                close(ns);
        return ch;
}
