/* The migration's two sets of TLS credentials (issue 14, item 4): the supervisors'
 * channel ([migration] tls_dir, root's alone) and QEMU's stream ([migration]
 * qemu_tls_dir, readable by QEMU's user, under a CA of its own). QEMU's user must not be
 * able to authenticate as a vmsup host.
 *
 * Suite migtls: the checks vmsup makes before it uses them (certificates from
 * tests/migcerts.sh). Suite migrate_tls: two hosts (tests/twohostfix.c), a client with
 * only what QEMU's user can read against a real `vmsup run --incoming`. */
#include "config.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli/exitstatus.h"
#include "common/util.h"
#include "migrate/migchan.h"
#include "supervisor/hostconfig.h"
#include "tests/helpers.h"
#include "tests/twohostfix.h"

/* ---- the checks ------------------------------------------------------------------------ */

static char *certs;

static void sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void sh(const char *fmt, ...) {
        char *cmd = NULL;
        va_list ap;
        int st;

        va_start(ap, fmt);
        cr_assert(vasprintf(&cmd, fmt, ap) > 0);
        va_end(ap);
        st = system(cmd);
        cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "'%s' failed (%d)", cmd, st);
        free(cmd);
}

static void certs_setup(void) {
        certs = test_mkdtemp();
        sh("sh '%s/tests/migcerts.sh' '%s' a:127.0.0.1 b:127.0.0.2 || "
           "{ echo 'tests/migcerts.sh failed: it needs certtool, Debian package gnutls-bin' >&2; exit 1; }",
           TEST_SRCDIR, certs);
}

static void certs_teardown(void) {
        test_rmtree(certs);
        free(certs);
}

TestSuite(migtls, .init = certs_setup, .fini = certs_teardown, .timeout = 120);

/* A config with these dirs (qemu_dir NULL: none given, the default applies), checked
 * for one end: 0, or the error's exit code with its message in *ret_msg. */
static int check(const char *tls_dir, const char *qemu_dir, bool server, char **ret_msg) {
        struct host_config cfg;
        struct migration_tls_files files = { 0 };
        vmsup_error *err = NULL;
        char *text = NULL, *path;
        int r;

        cr_assert(asprintf(&text, "[migration]\ntls_dir = %s\n%s%s%s", tls_dir, qemu_dir ? "qemu_tls_dir = " : "",
                           qemu_dir ? qemu_dir : "", qemu_dir ? "\n" : "") > 0);
        path = test_write_file(certs, "vmsup.conf", text, 0644);
        cr_assert_eq(host_config_load(path, false, &cfg, &err), 0, "%s", err ? err->msg : "");
        r = host_config_migration_tls(&cfg, server, &files, &err);
        *ret_msg = NULL;
        if (r < 0) {
                cr_assert_not_null(err);
                *ret_msg = strdup(err->msg);
                r = cli_exit_status(err->kind);
                vmsup_error_free(err);
        } else {
                char want[3][1024];

                snprintf(want[0], sizeof(want[0]), "%s/ca-cert.pem", tls_dir);
                snprintf(want[1], sizeof(want[1]), "%s/%s-cert.pem", tls_dir, server ? "server" : "client");
                snprintf(want[2], sizeof(want[2]), "%s/%s-key.pem", tls_dir, server ? "server" : "client");
                cr_assert_str_eq(files.ca, want[0]);
                cr_assert_str_eq(files.cert, want[1]);
                cr_assert_str_eq(files.key, want[2]);
        }
        migration_tls_files_clear(&files);
        host_config_clear(&cfg);
        free(path);
        free(text);
        return r;
}

static const char *cdir(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static const char *cdir(const char *fmt, ...) {
        static char bufs[16][1024];
        static int next;
        char rel[512], *b = bufs[next++ % 16];
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(rel, sizeof(rel), fmt, ap);
        va_end(ap);
        snprintf(b, 1024, "%s/%s", certs, rel);
        return b;
}

/* check() must refuse with want_rc and a message holding each of needles. */
static void refused(const char *tls_dir, const char *qemu_dir, bool server, int want_rc, const char *const *needles) {
        char *msg;
        int rc = check(tls_dir, qemu_dir, server, &msg);

        cr_assert_eq(rc, want_rc, "exit %d, not %d: %s", rc, want_rc, msg ? msg : "(accepted)");
        for (size_t i = 0; needles[i]; i++)
                cr_assert(strstr(msg, needles[i]), "'%s' not in: %s", needles[i], msg);
        free(msg);
}

Test(migtls, separate_cas_are_accepted_for_both_ends) {
        char *msg;

        cr_assert_eq(check(cdir("a"), cdir("qemu-ca/a"), true, &msg), 0, "%s", msg);
        cr_assert_eq(check(cdir("a"), cdir("qemu-ca/a"), false, &msg), 0, "%s", msg);
}

Test(migtls, a_config_with_only_tls_dir_is_told_what_to_add) {
        struct host_config cfg;
        vmsup_error *err = NULL;

        cr_assert_eq(host_config_load(cdir("absent.conf"), true, &cfg, &err), 0);
        cr_assert_str_eq(cfg.migration.qemu_tls_dir, "/etc/pki/vmsup-qemu");
        host_config_clear(&cfg);
        cr_assert_eq(access("/etc/pki/vmsup-qemu", F_OK), -1, "this test expects no /etc/pki/vmsup-qemu on the machine");
        refused(cdir("a"), NULL, false, 78,
                       (const char *[]) { "[migration] qemu_tls_dir: '/etc/pki/vmsup-qemu/ca-cert.pem': No such file",
                                          "credentials of its own, readable by QEMU, under a CA that tls_dir's "
                                          "ca-cert.pem does not trust",
                                          "set [migration] qemu_tls_dir", NULL });
        /* a QEMU dir without this end's certificate */
        sh("mkdir %s && cp %s/ca-cert.pem %s/", cdir("half"), cdir("qemu-ca/a"), cdir("half"));
        refused(cdir("a"), cdir("half"), true, 78,
                       (const char *[]) { "server-cert.pem': No such file", NULL });
}

Test(migtls, the_same_dir_for_both_is_refused) {

        refused(cdir("a"), cdir("a"), true, 78,
                       (const char *[]) { "[migration] qemu_tls_dir is tls_dir", NULL });
        /* the same by another name */
        sh("ln -s a %s", cdir("a-link"));
        refused(cdir("a"), cdir("a-link/"), false, 78,
                       (const char *[]) { "[migration] qemu_tls_dir is tls_dir", NULL });
}

Test(migtls, a_copy_of_the_channels_ca_is_refused) {

        /* the channel's own files, copied: the same CA */
        sh("cp -a %s %s", cdir("a"), cdir("qemu-copy"));
        refused(cdir("a"), cdir("qemu-copy"), true, 78,
                       (const char *[]) { "must hold QEMU's credentials under a CA of its own",
                                          "the CA certificate CN=vmsup test migration CA is in both",
                                          "QEMU's user could authenticate as a vmsup host", NULL });
        /* QEMU's CA file that also lists the channel's CA */
        sh("cp -a %s %s && cat %s >> %s/ca-cert.pem", cdir("qemu-ca/a"), cdir("qemu-bundle"), cdir("ca-cert.pem"),
           cdir("qemu-bundle"));
        refused(cdir("a"), cdir("qemu-bundle"), false, 78,
                       (const char *[]) { "is in both", NULL });
}

Test(migtls, a_qemu_certificate_the_channel_accepts_is_refused) {

        /* QEMU's own CA file, but a client certificate of the channel's CA */
        sh("cp -a %s %s && cp %s/client-cert.pem %s/client-key.pem %s/", cdir("qemu-ca/a"), cdir("qemu-mixed"),
           cdir("a"), cdir("a"), cdir("qemu-mixed"));
        refused(cdir("a"), cdir("qemu-mixed"), false, 78,
                       (const char *[]) { "the certificate CN=a in '", "qemu-mixed/client-cert.pem' is accepted by the CAs of '",
                                          NULL });
        /* the server end checks the other certificate too: QEMU's user reads both */
        refused(cdir("a"), cdir("qemu-mixed"), true, 78,
                       (const char *[]) { "qemu-mixed/client-cert.pem' is accepted", NULL });
}

Test(migtls, a_qemu_ca_issued_by_the_channels_ca_is_refused) {

        /* an intermediate CA under the channel's CA, issuing QEMU's certificates: QEMU
         * would send it along and the channel would accept the chain */
        sh("cd %s && mkdir sub && cd sub && "
           "certtool --generate-privkey --key-type=ecdsa --curve=secp256r1 --outfile ca-key.pem 2>/dev/null && "
           "printf 'cn = vmsup test sub CA\\nca\\ncert_signing_key\\nexpiration_days = 30\\n' > ca.info && "
           "certtool --generate-certificate --load-privkey ca-key.pem --load-ca-certificate ../ca-cert.pem "
           "--load-ca-privkey ../ca-key.pem --template ca.info --outfile ca-cert.pem 2>/dev/null && "
           "certtool --generate-privkey --key-type=ecdsa --curve=secp256r1 --outfile client-key.pem 2>/dev/null && "
           "printf 'cn = a\\nip_address = 127.0.0.1\\ntls_www_client\\nsigning_key\\nexpiration_days = 30\\n' > c.info && "
           "certtool --generate-certificate --load-privkey client-key.pem --load-ca-certificate ca-cert.pem "
           "--load-ca-privkey ca-key.pem --template c.info --outfile client-cert.pem 2>/dev/null",
           certs);
        refused(cdir("a"), cdir("sub"), false, 78,
                       (const char *[]) { "the CA certificate CN=vmsup test sub CA of '", "' is issued by a CA of '",
                                          NULL });
}

Test(migtls, channel_files_others_can_read_or_change_are_refused) {
        static const struct {
                const char *file;
                unsigned mode;
                const char *said;
        } cases[] = {
                { "a/server-key.pem", 0640, "has mode 0640: its group can read it" },
                { "a/server-key.pem", 0604, "has mode 0604: other users can read it" },
                { "a/server-key.pem", 0660, "has mode 0660: its group can read it" },
                { "a/ca-cert.pem", 0664, "has mode 0664: its group can change it" },
                { "a/server-cert.pem", 0646, "has mode 0646: other users can change it" },
                { "a", 0777, "has mode 0777: its group and other users can change it" },
        };
        char *msg;

        for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
                struct stat st;
                const char *p = cdir("%s", cases[i].file);
                char name[1100];

                cr_assert_eq(stat(p, &st), 0);
                cr_assert_eq(chmod(p, cases[i].mode), 0);
                snprintf(name, sizeof(name), "[migration] tls_dir: '%s' %s", p, cases[i].said);
                refused(cdir("a"), cdir("qemu-ca/a"), true, 77,
                               (const char *[]) { name, NULL });
                cr_assert_eq(chmod(p, st.st_mode & 07777), 0);
        }
        /* the key's message says why */
        cr_assert_eq(chmod(cdir("a/client-key.pem"), 0640), 0);
        refused(cdir("a"), cdir("qemu-ca/a"), false, 77,
                       (const char *[]) { "client-key.pem' has mode 0640",
                                          "QEMU's user would authenticate as a vmsup host with it; chmod 0600", NULL });
        cr_assert_eq(chmod(cdir("a/client-key.pem"), 0600), 0);
        /* QEMU's key may be read by QEMU's group: that is what it is for */
        cr_assert_eq(check(cdir("a"), cdir("qemu-ca/a"), false, &msg), 0, "%s", msg);
}

Test(migtls, channel_files_owned_by_another_user_are_refused) {
        char want[1100];

        cr_assert_eq(geteuid(), 0, "this test needs root (it gives a file to another user)");
        cr_assert_eq(chown(cdir("a/client-key.pem"), 65534, 0), 0);
        snprintf(want, sizeof(want), "'%s' is owned by uid 65534, not root", cdir("a/client-key.pem"));
        refused(cdir("a"), cdir("qemu-ca/a"), false, 77, (const char *[]) { want, NULL });
        cr_assert_eq(chown(cdir("a/client-key.pem"), 0, 0), 0);
        cr_assert_eq(chown(cdir("a"), 65534, 0), 0);
        refused(cdir("a"), cdir("qemu-ca/a"), false, 77,
                       (const char *[]) { "is owned by uid 65534, not root", NULL });
        cr_assert_eq(chown(cdir("a"), 0, 0), 0);
        /* a FIFO in the key's place is refused, not waited on */
        cr_assert_eq(rename(cdir("a/client-key.pem"), cdir("a/client-key.real")), 0);
        cr_assert_eq(mkfifo(cdir("a/client-key.pem"), 0600), 0);
        refused(cdir("a"), cdir("qemu-ca/a"), false, 77, (const char *[]) { "client-key.pem' is not a regular file", NULL });
        cr_assert_eq(unlink(cdir("a/client-key.pem")), 0);
        cr_assert_eq(rename(cdir("a/client-key.real"), cdir("a/client-key.pem")), 0);
        /* a missing key is a configuration error that names it */
        cr_assert_eq(unlink(cdir("a/client-key.pem")), 0);
        refused(cdir("a"), cdir("qemu-ca/a"), false, 78,
                       (const char *[]) { "client-key.pem': No such file", NULL });
}

/* ---- two hosts ------------------------------------------------------------------------- */

TestSuite(migrate_tls, .init = th_setup, .fini = th_teardown, .timeout = 900);

/* QEMU's uid and group in this test: the first QEMU id of the default [security]
 * guest_ids range; the group owns QEMU's TLS dir as a deployment's [qemu] group would. */
#define QEMU_UID 1879048193u
#define QEMU_GID 1879048193u

/* The dir of host h's config whose key is key ("" when not set). */
static const char *conf_value(int h, const char *key) {
        static char v[1024];
        char needle[64];
        const char *text = th_slurp(th_path("%s/%c.conf", th_root, 'a' + h)), *p;

        snprintf(needle, sizeof(needle), "\n%s = ", key);
        p = strstr(text, needle);
        v[0] = '\0';
        if (p)
                snprintf(v, sizeof(v), "%.*s", (int) strcspn(p + strlen(needle), "\n"), p + strlen(needle));
        return v;
}

/* In host a's namespace, as QEMU's uid and group and nothing else: try to read the
 * channel's key, then connect to b's `run --incoming` with the client certificate and key
 * QEMU can read, say HELLO and wait for the answer. Exit 0: refused; 1: refused, but the
 * channel's key was readable; 2: b answered HELLO (QEMU's user passed as a vmsup host);
 * 3: setup. What happened is in why_file. */
static pid_t qemu_user_as_a_supervisor(const char *qemu_dir, const char *why_file) {
        char *cert = NULL, *key = NULL, *chan_key = NULL, *ca = NULL;
        pid_t pid;

        cr_assert(asprintf(&cert, "%s/client-cert.pem", qemu_dir) > 0 &&
                  asprintf(&key, "%s/client-key.pem", qemu_dir) > 0 &&
                  asprintf(&chan_key, "%s/client-key.pem", conf_value(0, "tls_dir")) > 0 &&
                  /* the channel's CA certificate is public: anyone may have a copy */
                  asprintf(&ca, "%s/public-ca-cert.pem", th_root) > 0);
        th_sh("cp %s/certs/ca-cert.pem %s && chmod 0644 %s", th_root, ca, ca);
        pid = fork();
        cr_assert_geq(pid, 0);
        if (pid == 0) {
                struct migchan_tls tls = { .ca_file = ca, .cert_file = cert, .key_file = key, .peer_name = th_ip[1] };
                _cleanup_json_ json_object *hello = json_object_new_object();
                struct migchan *ch = NULL;
                struct mig_frame f = { 0 };
                vmsup_error *e = NULL;
                FILE *why = fopen(why_file, "we");
                int ns = open(th_path("/run/netns/%s-a", th_prefix), O_RDONLY | O_CLOEXEC), fd;
                gid_t gid = QEMU_GID;

                if (!why || ns < 0 || setns(ns, CLONE_NEWNET) < 0 || setgroups(1, &gid) < 0 || setgid(QEMU_GID) < 0 ||
                    setuid(QEMU_UID) < 0)
                        _exit(3);
                setvbuf(why, NULL, _IONBF, 0); /* we leave by _exit */
                fd = open(chan_key, O_RDONLY | O_CLOEXEC);
                if (fd >= 0)
                        fprintf(why, "QEMU's user can read the channel's key %s\n", chan_key);
                if (access(key, R_OK) < 0) {
                        fprintf(why, "QEMU's user cannot read QEMU's key %s: %s\n", key, strerror(errno));
                        _exit(3);
                }
                json_object_object_add(hello, "protocol", json_object_new_int(MIGCHAN_PROTOCOL));
                json_object_object_add(hello, "uuid", json_object_new_string(UUID));
                json_object_object_add(hello, "host", json_object_new_string("a"));
                /* TLS 1.3: the server judges our certificate after our side of the handshake */
                if (migchan_connect(th_ip[1], "49152", &tls, 20000, &ch, &e) < 0 ||
                    migchan_send_json(ch, MIG_HELLO, hello, 20000, &e) < 0 ||
                    migchan_recv_wait(ch, MIG_HELLO, 20000, &f, &e) < 0) {
                        fprintf(why, "refused: %s\n", e ? e->msg : "?");
                        _exit(fd >= 0 ? 1 : 0);
                }
                fprintf(why, "b answered HELLO: %s\n", json_object_to_json_string(f.json));
                _exit(2);
        }
        free(cert);
        free(key);
        free(chan_key);
        free(ca);
        return pid;
}

Test(migrate_tls, qemus_credentials_do_not_open_the_supervisors_channel) {
        const char *reboot[] = { "reboot", UUID, NULL },
                   *incoming[] = { "run", "--incoming", "49152", "--spec", strdup(th_path("%s/guest.json", th_root)), UUID,
                                   NULL };
        char ek[256], qemu_dir[1024], why[1024];
        pid_t sup, in, attacker;
        long c1;
        int rc;

        /* QEMU's TLS dir on host a, given to QEMU's group as a deployment does (before
         * [migration] qemu_tls_dir, QEMU read tls_dir, so that was the one to give) */
        snprintf(qemu_dir, sizeof(qemu_dir), "%s",
                 conf_value(0, "qemu_tls_dir")[0] ? conf_value(0, "qemu_tls_dir") : conf_value(0, "tls_dir"));
        snprintf(why, sizeof(why), "%s/attacker.txt", th_root);
        th_sh("chmod 0711 %s && chgrp -R %u %s && chmod -R g+rX %s", th_root, QEMU_GID, qemu_dir, qemu_dir);

        sup = th_boot_on_a();
        c1 = atol(th_console_last(0, "nv-counter="));
        snprintf(ek, sizeof(ek), "%s", th_console_last(0, "ek="));

        /* QEMU's user on a tries b's supervisor with what it can read */
        th_step = "QEMU's user as a supervisor";
        in = th_incoming(1, "in-b");
        attacker = qemu_user_as_a_supervisor(qemu_dir, why);
        rc = th_wait_exit(attacker);
        cr_assert_eq(rc, 0, "the client with QEMU's credentials (exit %d): %s\n%s", rc, th_slurp(why), th_logs());
        th_wait_text(th_path("%s/in-b.err", th_root), "turned a connection away", 1, 30000);
        cr_assert(strstr(th_err("in-b"), "turned a connection away: the certificate of ") &&
                          strstr(th_err("in-b"), " is not trusted: "),
                  "%s", th_err("in-b"));
        cr_assert_null(strstr(th_err("in-b"), "sends guest"), "%s", th_err("in-b"));

        /* the real source still gets through to the same supervisor: the guest moves to b
         * with its TPM, over QEMU's stream with QEMU's credentials */
        th_step = "the real migration";
        cr_assert_eq(th_migrate(0, "mig"), 0, "%s\n%s", th_err("mig"), th_logs());
        th_reap(sup, 0);
        th_assert_gone(0);
        th_assert_running(1);
        cr_assert_eq(th_run(1, "reboot", reboot), 0, "%s", th_err("reboot"));
        th_wait_text(th_console(1), "tpmprobe: done", 1, GUEST_BOOT_MS);
        cr_assert_eq(atol(th_console_last(1, "nv-counter=")), c1 + 1);
        cr_assert_str_eq(th_console_last(1, "ek="), ek);

        /* b's channel key readable by a group: b, now the source, refuses to use it */
        th_step = "channel key readable by the group";
        th_sh("chmod 0640 %s/certs/b/client-key.pem", th_root);
        cr_assert_eq(th_migrate(1, "mig"), 77, "%s", th_err("mig"));
        cr_assert(strstr(th_err("mig"), th_path("[migration] tls_dir: '%s/certs/b/client-key.pem' has mode 0640: its "
                                                "group can read it", th_root)),
                  "%s", th_err("mig"));
        th_sh("chmod 0600 %s/certs/b/client-key.pem", th_root);
        th_assert_running(1);
        th_assert_gone(0);

        /* a config without QEMU's credentials: --incoming says what to add, before it listens */
        th_step = "no qemu_tls_dir on a";
        th_write_conf_tls(0, th_path("%s/certs/a", th_root), th_path("%s/nowhere", th_root));
        cr_assert_eq(th_run(0, "in-bad", incoming), 78, "%s", th_err("in-bad"));
        cr_assert(strstr(th_err("in-bad"), "[migration] qemu_tls_dir: '") &&
                          strstr(th_err("in-bad"), "/nowhere/ca-cert.pem': No such file or directory. QEMU's migration "
                                                   "stream needs credentials of its own"),
                  "%s", th_err("in-bad"));
        th_write_conf(0, th_path("%s/certs/a", th_root));
        th_assert_running(1);
        th_assert_gone(0);
        (void) in; /* b's supervisor now runs the guest; the teardown ends it */
}
