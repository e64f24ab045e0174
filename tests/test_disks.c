/* Disks end to end: vmsup run with real QEMU (TCG) and the demo guest, qcow2 images made
 * by qemu-img. The block graph QEMU builds must be the spec's, whatever the images'
 * headers name. */
#include "config.h"

#include <criterion/criterion.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/proc.h"
#include "common/util.h"
#include "supervisor/control.h"
#include "tests/guestfix.h"
#include "tests/helpers.h"

#define UUID "3e9d7c1a-5b2f-4a6e-8c0d-1f2a3b4c5d6e"

static char *root, *conf, *spec_path, *vmsup_log;

static void setup(void) {
        root = test_mkdtemp();
        conf = test_write_conf(root, "vmsup.conf",
                               &(struct test_conf) { .root = root, .swtpm_off = true, .supervisor = "stop_timeout = 3\n" });
        cr_assert(asprintf(&vmsup_log, "%s/vmsup.log", root) > 0);
}

static void teardown(void) {
        test_root_cleanup(root);
        free(conf);
        free(spec_path);
        free(vmsup_log);
}

TestSuite(disks, .init = setup, .fini = teardown, .timeout = 240);

static void qemu_img(const char *args) {
        char cmd[2048];
        int rc;

        cr_assert_eq(access("/usr/bin/qemu-img", X_OK), 0, "qemu-img is missing (apt-get install qemu-utils)");
        snprintf(cmd, sizeof(cmd), "cd '%s' && /usr/bin/qemu-img %s >/dev/null", root, args);
        rc = system(cmd);
        cr_assert_eq(rc, 0, "qemu-img %s: exit %d", args, rc);
}

/* A guest without a vTPM: the demo guest's tpmprobe finds no TPM; with hold, it stays up
 * until the power button, else it powers off. */
static void write_spec(const char *disks_json, bool hold) {
        free(spec_path);
        spec_path = test_write_spec(root, "guest.json",
                                    &(struct test_spec) { .uuid = UUID, .name = "disks", .flavor = "m1.small",
                                                          .extra_specs = "", .guest_dir = TEST_GUEST_DIR, .hold = hold,
                                                          .disks = disks_json });
}

static char *path(const char *name) {
        static char buf[4][512];
        static int i;

        i = (i + 1) % 4;
        snprintf(buf[i], sizeof(buf[i]), "%s/%s", root, name);
        return buf[i];
}

static void wait_running(struct sup *s) {
        json_object_put(test_wait_running(s, path("run/" UUID "/control.sock"), vmsup_log, 120000));
}

static json_object *find_node(json_object *nodes, const char *name) {
        for (size_t i = 0; i < json_object_array_length(nodes); i++) {
                json_object *n = json_object_array_get_idx(nodes, i), *v;

                if (json_object_object_get_ex(n, "node-name", &v) && streq(json_object_get_string(v), name))
                        return n;
        }
        cr_assert_fail("QEMU has no block node '%s': %s", name, json_object_to_json_string(nodes));
        return NULL;
}

static const char *str_at(json_object *o, const char *key) {
        json_object *v;

        return o && json_object_object_get_ex(o, key, &v) ? json_object_get_string(v) : NULL;
}

static json_object *obj_at(json_object *o, const char *key) {
        json_object *v;

        return o && json_object_object_get_ex(o, key, &v) ? v : NULL;
}

/* An uploaded image naming a host file as its backing file is refused before anything
 * starts: QEMU never opens it. */
Test(disks, image_naming_a_host_file_is_refused_and_qemu_never_starts) {
        struct test_run r;
        char *disks = NULL, want[1024];
        struct stat st;

        free(test_write_file(root, "host-secret", "the host's secret", 0600));
        qemu_img("create -q -f qcow2 -u -b host-secret -F raw top.qcow2 1M");
        cr_assert(asprintf(&disks, "[{\"path\": \"%s\", \"format\": \"qcow2\"}]", path("top.qcow2")) > 0);
        write_spec(disks, false);
        free(disks);

        test_run_vmsup(&r, NULL, (const char *[]) { "--config", conf, "run", spec_path, NULL });
        cr_assert_eq(r.exit_code, 65, "exit %d: %s%s", r.exit_code, r.out, r.err);
        snprintf(want, sizeof(want), "disks[0]: qcow2 image '%s' names backing file 'host-secret', which the guest "
                                     "spec does not give", path("top.qcow2"));
        cr_assert(strstr(r.err, want), "%s", r.err);
        cr_assert_neq(stat(path("log/" UUID "/qemu.log"), &st), 0, "QEMU was started: %s",
                      slurp(path("log/" UUID "/qemu.log")));
        cr_assert_neq(stat(path("run/" UUID), &st), 0, "the guest's run dir was made");
        cr_assert_eq(test_count_processes(root, false), 0);
        test_run_clear(&r);

        /* the same for an external data file */
        qemu_img("create -q -f qcow2 -o data_file=host-secret data.qcow2 1M");
        cr_assert(asprintf(&disks, "[{\"path\": \"%s\", \"format\": \"qcow2\"}]", path("data.qcow2")) > 0);
        write_spec(disks, false);
        free(disks);
        test_run_vmsup(&r, NULL, (const char *[]) { "--config", conf, "run", spec_path, NULL });
        cr_assert_eq(r.exit_code, 65, "exit %d: %s%s", r.exit_code, r.out, r.err);
        cr_assert(strstr(r.err, "uses an external data file 'host-secret': refused"), "%s", r.err);
        cr_assert_neq(stat(path("log/" UUID "/qemu.log"), &st), 0, "QEMU was started");
        test_run_clear(&r);
}

/* The chain the spec gives is the chain QEMU has; an image without one gets backing=null. */
Test(disks, explicit_chain_boots_and_qemu_shows_it) {
        char *argv[] = { VMSUP_BIN, "--config", conf, "run", NULL, NULL };
        struct test_run q;
        struct sup s;
        json_object *nodes, *top, *graph, *b1, *b2;
        char *disks = NULL;
        int status;

        qemu_img("create -q -f raw base.raw 4M");
        qemu_img("create -q -f qcow2 -b base.raw -F raw mid.qcow2 4M");
        qemu_img("create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2 4M");
        qemu_img("create -q -f qcow2 lone.qcow2 1M");
        cr_assert(asprintf(&disks,
                           "[{\"path\": \"%s\", \"format\": \"qcow2\", \"backing\": {\"path\": \"%s\", \"format\": "
                           "\"qcow2\", \"backing\": {\"path\": \"%s\", \"format\": \"raw\", \"backing\": null}}},"
                           " {\"path\": \"%s\", \"format\": \"qcow2\", \"readonly\": true}]",
                           path("top.qcow2"), path("mid.qcow2"), path("base.raw"), path("lone.qcow2")) > 0);
        write_spec(disks, true);
        free(disks);

        argv[4] = spec_path;
        s = test_spawn(argv, NULL, vmsup_log, NULL);
        wait_running(&s);
        /* the demo kernel boots with the disks attached, up to its init */
        for (long deadline = monotonic_ms() + 180000; !strstr(slurp(path("log/" UUID "/console.log")), "init: holding");) {
                cr_assert_lt(monotonic_ms(), deadline, "the guest did not boot: %s", slurp(path("log/" UUID "/console.log")));
                usleep(100000);
        }

        test_run_vmsup(&q, NULL, (const char *[]) { "--config", conf, "qmp", UUID, "query-named-block-nodes", NULL });
        cr_assert_eq(q.exit_code, 0, "%s%s", q.out, q.err);
        nodes = json_tokener_parse(q.out);
        cr_assert(nodes && json_object_is_type(nodes, json_type_array), "%s", q.out);

        /* QEMU names a node whose backing is not its header's with a json: filename, the
         * graph itself: top.qcow2 over mid.qcow2 over base.raw */
        top = find_node(nodes, "disk0");
        cr_assert_eq(json_object_get_int(obj_at(top, "backing_file_depth")), 2, "%s", json_object_to_json_string(top));
        cr_assert(str_at(top, "file") && !strncmp(str_at(top, "file"), "json:", 5), "%s", json_object_to_json_string(top));
        graph = json_tokener_parse(str_at(top, "file") + 5);
        cr_assert_not_null(graph, "%s", str_at(top, "file"));
        cr_assert_str_eq(str_at(obj_at(graph, "file"), "filename"), path("top.qcow2"));
        b1 = obj_at(graph, "backing");
        cr_assert_str_eq(str_at(b1, "driver"), "qcow2", "%s", str_at(top, "file"));
        cr_assert_str_eq(str_at(obj_at(b1, "file"), "filename"), path("mid.qcow2"));
        b2 = obj_at(b1, "backing");
        cr_assert_str_eq(str_at(b2, "driver"), "raw", "%s", str_at(top, "file"));
        cr_assert_str_eq(str_at(obj_at(b2, "file"), "filename"), path("base.raw"));
        cr_assert_null(obj_at(b2, "backing"));
        json_object_put(graph);
        cr_assert_str_eq(str_at(find_node(nodes, "file0-backing1"), "file"), path("mid.qcow2"));
        cr_assert_str_eq(str_at(find_node(nodes, "file0-backing2"), "file"), path("base.raw"));
        cr_assert(json_object_get_boolean(obj_at(find_node(nodes, "disk0-backing1"), "ro")));
        cr_assert(json_object_get_boolean(obj_at(find_node(nodes, "disk0-backing2"), "ro")));
        cr_assert_eq(json_object_get_int(obj_at(find_node(nodes, "disk1"), "backing_file_depth")), 0);
        cr_assert_null(obj_at(obj_at(find_node(nodes, "disk1"), "image"), "backing-image"));
        cr_assert_str_eq(str_at(find_node(nodes, "disk1"), "file"), path("lone.qcow2"));
        json_object_put(nodes);
        test_run_clear(&q);

        test_run_vmsup(&q, NULL, (const char *[]) { "--config", conf, "stop", UUID, NULL });
        cr_assert_eq(q.exit_code, 0, "%s%s", q.out, q.err);
        test_run_clear(&q);
        cr_assert_eq(waitpid(s.pid, &status, 0), s.pid);
        close(s.pidfd);
        cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "vmsup run: status %d: %s", status, slurp(vmsup_log));
}

/* The headers are read again before every QEMU launch: one rewritten while the guest ran
 * (QEMU's user can write its images) stops a hard reboot. */
Test(disks, hard_reboot_reads_the_headers_again) {
        char *argv[] = { VMSUP_BIN, "--config", conf, "run", NULL, NULL };
        struct test_run q;
        struct sup s;
        char *disks = NULL;
        uint8_t incompat;
        int status, fd;

        qemu_img("create -q -f qcow2 lone.qcow2 1M");
        cr_assert(asprintf(&disks, "[{\"path\": \"%s\", \"format\": \"qcow2\"}]", path("lone.qcow2")) > 0);
        write_spec(disks, true);
        free(disks);
        argv[4] = spec_path;
        s = test_spawn(argv, NULL, vmsup_log, NULL);
        wait_running(&s);

        /* incompatible feature bit 2: an external data file */
        fd = open(path("lone.qcow2"), O_RDWR | O_CLOEXEC);
        cr_assert_geq(fd, 0);
        cr_assert_eq(pread(fd, &incompat, 1, 79), 1);
        incompat |= 4;
        cr_assert_eq(pwrite(fd, &incompat, 1, 79), 1);
        close(fd);

        test_run_vmsup(&q, NULL, (const char *[]) { "--config", conf, "reboot", "--hard", UUID, NULL });
        cr_assert_eq(q.exit_code, 65, "exit %d: %s%s", q.exit_code, q.out, q.err);
        cr_assert(strstr(q.err, "uses an external data file: refused"), "%s", q.err);
        test_run_clear(&q);
        cr_assert_eq(waitpid(s.pid, &status, 0), s.pid);
        close(s.pidfd);
        cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 1, "vmsup run: status %d: %s", status, slurp(vmsup_log));
        cr_assert(strstr(slurp(vmsup_log), "hard reboot failed: disks[0]: qcow2 image"), "%s", slurp(vmsup_log));
        cr_assert_eq(test_count_processes(root, false), 0);
}
