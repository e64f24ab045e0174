/* The destination decides which of its files the guest gets (issue 14, item 3 and the
 * vTPM part of item 8): `vmsup run --incoming --spec FILE` runs the guest from this
 * host's own spec, and a source with a valid host certificate that sends another one,
 * naming another guest's secret as a disk, a host-only file as initrd, more memory, or
 * no vTPM, is refused naming the key, with nothing of the guest left on the destination
 * and the file it named untouched. Two hosts in network namespaces (tests/twohostfix.c);
 * the source is scripted, with a's client certificate. */
#include "config.h"

#include <criterion/criterion.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/util.h"
#include "secrets/localstore.h"
#include "migrate/migchan.h"
#include "tests/helpers.h"
#include "tests/twohostfix.h"

#define OTHER "3f2a9c10-5b7d-4e8f-a1c2-d3e4f5a6b7c8"
#define OTHER_SECRET_ID "7e6d5c4b-3a29-4180-9f7e-6d5c4b3a2918"

TestSuite(migrate_spec, .init = th_setup, .fini = th_teardown, .timeout = 900);

/* The source, scripted: HELLO, PREPARE with spec, SECRET (not the guest's: it never gets
 * that far), then whatever b answers into ROOT/fake.out ("ABORT <error>" or the type). */
static pid_t malicious_source(json_object *spec) {
        pid_t pid = fork();

        cr_assert_geq(pid, 0);
        if (pid == 0) {
                struct migchan *ch = th_source_prepare(json_object_get(spec));
                struct mig_frame f = { 0 };
                vmsup_error *e = NULL;
                int out;
                FILE *o;

                if (!ch)
                        _exit(11);
                out = open(th_path("%s/fake.out", th_root), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
                o = fdopen(out, "w");
                if (!o)
                        _exit(13);
                if (migchan_recv_wait(ch, 0, 60000, &f, &e) < 0)
                        fprintf(o, "error %s\n", e->msg);
                else if (f.type == MIG_ABORT)
                        fprintf(o, "ABORT %s\n", json_object_get_string(json_object_object_get(f.json, "error")));
                else
                        fprintf(o, "%s\n", mig_msg_name(f.type));
                fclose(o);
                _exit(0);
        }
        return pid;
}

/* ROOT/guest.json with one change */
static json_object *spec_with(const char *what, const char *value) {
        json_object *spec = json_object_from_file(th_path("%s/guest.json", th_root)), *o;

        cr_assert_not_null(spec);
        if (streq(what, "disk")) {
                json_object *disks = json_object_new_array(), *d = json_object_new_object();

                json_object_object_add(d, "path", json_object_new_string(value));
                json_object_object_add(d, "format", json_object_new_string("raw"));
                json_object_array_add(disks, d);
                json_object_object_add(spec, "disks", disks);
        } else if (streq(what, "initrd")) {
                cr_assert(json_object_object_get_ex(spec, "firmware", &o));
                json_object_object_add(o, "initrd", json_object_new_string(value));
        } else if (streq(what, "memory_mb"))
                json_object_object_add(spec, "memory_mb", json_object_new_int(atoi(value)));
        else if (streq(what, "no vtpm")) {
                cr_assert(json_object_object_get_ex(spec, "flavor", &o));
                json_object_object_add(o, "extra_specs", json_object_new_object());
        } else
                cr_assert_fail("spec_with(%s)", what);
        return spec;
}

struct file_state {
        char *text;
        struct timespec mtime, ctime;
};

static void file_state(const char *path, struct file_state *ret) {
        struct stat st;

        cr_assert_eq(stat(path, &st), 0, "%s", path);
        ret->text = strdup(th_slurp(path));
        ret->mtime = st.st_mtim;
        ret->ctime = st.st_ctim;
}

static void assert_untouched(const char *path, const struct file_state *before) {
        struct file_state now;

        file_state(path, &now);
        cr_assert_str_eq(now.text, before->text, "[%s] %s was changed", th_step, path);
        cr_assert(now.mtime.tv_sec == before->mtime.tv_sec && now.mtime.tv_nsec == before->mtime.tv_nsec &&
                          now.ctime.tv_sec == before->ctime.tv_sec && now.ctime.tv_nsec == before->ctime.tv_nsec,
                  "[%s] %s was written to or had its mode or owner changed", th_step, path);
        free(now.text);
}

/* b waits with its own spec; the scripted source sends spec; b must refuse it naming key */
static void refused(const char *step, json_object *spec, const char *key) {
        pid_t in, fake;
        int rc;

        th_step = step;
        in = th_incoming(1, "in-b");
        fake = malicious_source(spec);
        rc = th_wait_exit(in);
        cr_assert_eq(th_wait_exit(fake), 0, "[%s] the scripted source failed\n%s", step, th_logs());
        cr_assert_eq(rc, 65, "[%s] b exited %d\n%s\n--- the source got: %s", step, rc, th_logs(),
                     th_slurp(th_path("%s/fake.out", th_root)));
        cr_assert(strstr(th_err("in-b"), "the source's guest spec differs from this host's") &&
                          strstr(th_err("in-b"), key),
                  "[%s] b's error does not name '%s':\n%s", step, key, th_err("in-b"));
        cr_assert(strncmp(th_slurp(th_path("%s/fake.out", th_root)), "ABORT ", 6) == 0 &&
                          strstr(th_slurp(th_path("%s/fake.out", th_root)), key),
                  "[%s] the source was not told: %s", step, th_slurp(th_path("%s/fake.out", th_root)));
        th_assert_gone(1);
        th_assert_running(0);
        json_object_put(spec);
}

Test(migrate_spec, the_destination_runs_only_what_it_declared) {
        char ek[256], *secret_file, *hostonly;
        const char *reboot[] = { "reboot", UUID, NULL };
        struct file_state secret_before, hostonly_before;
        struct localstore *store = NULL;
        vmsup_error *e = NULL;
        char pass[513];
        pid_t sup[2];
        long c1;

        /* on b: another guest's secret in the local store, and a file only b has */
        memset(pass, 'Q', 512);
        pass[512] = '\0';
        cr_assert_eq(localstore_open(th_path("%s/b/state/secrets", th_root), true, &store, &e), 0, "%s", e ? e->msg : "");
        cr_assert_eq(localstore_put(store, OTHER, pass, OTHER_SECRET_ID, &e), 0, "%s", e ? e->msg : "");
        localstore_free(store);
        secret_file = strdup(th_path("%s/b/state/secrets/" OTHER, th_root));
        hostonly = strdup(th_path("%s/b-host-key", th_root));
        th_sh("umask 077 && echo 'b only: host key' > %s", hostonly);
        file_state(secret_file, &secret_before);
        file_state(hostonly, &hostonly_before);

        /* b's own spec may not name vmsup's files either: refused before it listens */
        {
                json_object *spec = spec_with("disk", secret_file);
                const char *args[] = { "run", "--incoming", "49152", "--spec", strdup(th_path("%s/b-bad.json", th_root)),
                                       NULL };

                th_step = "b's own spec names its secrets";
                cr_assert_eq(json_object_to_file(th_path("%s/b-bad.json", th_root), spec), 0);
                json_object_put(spec);
                cr_assert_eq(th_run(1, "in-bad", args), 65, "%s", th_err("in-bad"));
                cr_assert(strstr(th_err("in-bad"), "key 'disks[0].path'") && strstr(th_err("in-bad"), secret_file) &&
                                  strstr(th_err("in-bad"), "inside vmsup's secrets dir"),
                          "%s", th_err("in-bad"));
                cr_assert_null(strstr(th_err("in-bad"), "waiting up to"), "%s", th_err("in-bad"));
                th_assert_gone(1);
                assert_untouched(secret_file, &secret_before);
        }

        sup[0] = th_boot_on_a();
        c1 = atol(th_console_last(0, "nv-counter="));
        snprintf(ek, sizeof(ek), "%s", th_console_last(0, "ek="));

        refused("disk: another guest's secret", spec_with("disk", secret_file), "key 'disks[0].path'");
        assert_untouched(secret_file, &secret_before);
        refused("initrd: a host-only file", spec_with("initrd", hostonly), "key 'firmware.initrd'");
        assert_untouched(hostonly, &hostonly_before);
        refused("more memory than declared", spec_with("memory_mb", "512"), "key 'memory_mb': 512 from the source, 256 here");
        refused("no vTPM", spec_with("no vtpm", NULL), "key 'flavor.extra_specs.hw:tpm_version': none from the source, "
                                                       "'2.0' here: the source's spec gives the guest no vTPM");
        assert_untouched(secret_file, &secret_before);
        assert_untouched(hostonly, &hostonly_before);

        /* the real source, with the spec b declared: the guest moves, its TPM with it */
        th_step = "the declared guest";
        sup[1] = th_incoming(1, "in-b");
        cr_assert_eq(th_migrate(0, "mig"), 0, "%s\n%s", th_err("mig"), th_logs());
        th_reap(sup[0], 0);
        th_assert_gone(0);
        th_assert_running(1);
        cr_assert_eq(th_run(1, "reboot", reboot), 0, "%s", th_err("reboot"));
        th_wait_text(th_console(1), "tpmprobe: done", 1, GUEST_BOOT_MS);
        cr_assert_eq(atol(th_console_last(1, "nv-counter=")), c1 + 1);
        cr_assert_str_eq(th_console_last(1, "ek="), ek);
        assert_untouched(secret_file, &secret_before);
        kill(sup[1], SIGTERM);
        th_wait_exit(sup[1]);
        free(secret_before.text);
        free(hostonly_before.text);
        free(secret_file);
        free(hostonly);
}
