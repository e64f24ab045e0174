/* The guest's network end to end (issue 17): real QEMU (TCG) and the demo guest, in a
 * network namespace each test makes (we run as root), with the taps the orchestrator
 * would plug made there first. The host end of the tap pings the guest (busybox ping:
 * the package busybox-static); NICs are hot-plugged and removed, a hard reboot keeps
 * them, and a start with a missing or busy tap is refused before QEMU runs. */
#include "config.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/proc.h"
#include "common/util.h"
#include "tests/guestfix.h"
#include "tests/helpers.h"

#define UUID "5a0c2e1d-8b7f-4c3a-9e2d-6f1a0b9c8d7e"
#define BUSYBOX "/bin/busybox"

static char *root, *guest_dir, *conf, *spec_path, *console, *vmsup_log, *control_path, *spec_copy, *qemu_log;

static void sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void sh(const char *fmt, ...) {
        char *argv[] = { (char *) "/bin/sh", (char *) "-c", NULL, NULL };
        struct proc_result res = { 0 };
        vmsup_error *err = NULL;
        va_list ap;

        va_start(ap, fmt);
        cr_assert(vasprintf(&argv[2], fmt, ap) > 0);
        va_end(ap);
        cr_assert_eq(proc_run_capture(argv, (char *[]) { (char *) "PATH=/usr/sbin:/usr/bin:/sbin:/bin", NULL }, 60000,
                                      65536, &res, &err),
                     0, "%s", err ? err->msg : "");
        cr_assert(WIFEXITED(res.status) && WEXITSTATUS(res.status) == 0, "%s: %s%s", argv[2], res.out, res.errout);
        proc_result_clear(&res);
        free(argv[2]);
}

/* The guest answers ping from the host end of its tap (the first replies may wait for
 * ARP under TCG: any reply of several will do). */
static void assert_ping(const char *addr) {
        char *argv[] = { (char *) BUSYBOX, (char *) "ping", (char *) "-c", (char *) "10", (char *) "-W", (char *) "30",
                         (char *) "-w", (char *) "120", (char *) addr, NULL };
        struct proc_result res = { 0 };
        vmsup_error *err = NULL;

        cr_assert_eq(access(BUSYBOX, X_OK), 0, BUSYBOX " is missing: install the Debian package busybox-static");
        cr_assert_eq(proc_run_capture(argv, NULL, 180000, 65536, &res, &err), 0, "%s", err ? err->msg : "");
        cr_assert(WIFEXITED(res.status) && WEXITSTATUS(res.status) == 0 && strstr(res.out, "bytes from"),
                  "the guest does not answer ping on %s: %s%s\n--- console:\n%s", addr, res.out, res.errout,
                  slurp(console));
        proc_result_clear(&res);
}

static void setup(void) {
        cr_assert_eq(geteuid(), 0, "these tests make taps in a network namespace: run them as root");
        cr_assert_eq(unshare(CLONE_NEWNET), 0, "unshare(CLONE_NEWNET): %s", strerror(errno));
        /* the taps the orchestrator plugs, with the host's end of the guest's network */
        sh("ip link set lo up && ip tuntap add dev vm-t0 mode tap vnet_hdr && ip tuntap add dev vm-t1 mode tap vnet_hdr"
           " && ip tuntap add dev vm-mq mode tap vnet_hdr multi_queue && ip link set vm-mq up"
           " && ip addr add 10.17.0.1/24 dev vm-t0 && ip link set vm-t0 up && ip link set vm-t1 up");
        root = test_mkdtemp();
        conf = test_write_conf(root, "vmsup.conf",
                               &(struct test_conf) { .root = root, .as_nobody = true,
                                                     .supervisor = "stop_timeout = 10\n" });
        cr_assert(asprintf(&console, "%s/log/" UUID "/console.log", root) > 0);
        cr_assert(asprintf(&qemu_log, "%s/log/" UUID "/qemu.log", root) > 0);
        cr_assert(asprintf(&vmsup_log, "%s/vmsup.log", root) > 0);
        cr_assert(asprintf(&control_path, "%s/run/" UUID "/control.sock", root) > 0);
        cr_assert(asprintf(&spec_copy, "%s/state/" UUID "/guest.json", root) > 0);
        cr_assert_eq(chmod(root, 0711), 0);
        cr_assert(asprintf(&guest_dir, "%s/guest", root) > 0);
        cr_assert_eq(mkdir(guest_dir, 0755), 0);
        test_copy_file(TEST_GUEST_DIR, guest_dir, "vmlinuz");
        test_copy_file(TEST_GUEST_DIR, guest_dir, "initrd.img");
}

static void teardown(void) {
        test_root_cleanup(root);
        free(guest_dir);
        free(conf);
        free(spec_path);
        free(console);
        free(qemu_log);
        free(vmsup_log);
        free(control_path);
        free(spec_copy);
}

TestSuite(net, .init = setup, .fini = teardown, .timeout = 900);

/* The demo guest without a vTPM (nothing here needs one), up until the power button. */
static void write_spec(const char *nics) {
        free(spec_path);
        spec_path = test_write_spec(root, "guest.json",
                                    &(struct test_spec) { .uuid = UUID, .name = "net", .extra_specs = "",
                                                          .guest_dir = guest_dir, .hold = true,
                                                          .cmdline = "vmsup.net=10.17.0.2/24", .nics = nics });
}

static char *vmsup_nic(int want_exit, const char *const *args) {
        struct test_run r = { 0 };
        const char *argv[16] = { "--config", conf, "nic" };
        char *out;
        size_t n = 3;

        for (const char *const *a = args; *a; a++)
                argv[n++] = *a;
        argv[n] = NULL;
        test_run_vmsup(&r, NULL, argv);
        cr_assert_eq(r.exit_code, want_exit, "vmsup nic %s %s: exit %d: %s%s\n--- vmsup:\n%s", args[0], args[1],
                     r.exit_code, r.out, r.err, slurp(vmsup_log));
        out = strdup(want_exit ? r.err : r.out);
        test_run_clear(&r);
        return out;
}

Test(net, a_nic_answers_ping_a_second_is_hot_plugged_kept_by_a_hard_reboot_and_removed) {
        char *argv[] = { VMSUP_BIN, "--config", conf, "run", NULL, NULL };
        json_object *req, *ret, *added;
        vmsup_error *err = NULL;
        struct sup s;
        char *out, mac1[18];

        write_spec("[{\"ifname\": \"vm-t0\", \"mac\": \"fa:16:3e:17:00:01\", \"mtu\": 1400}]");
        argv[4] = spec_path;
        s = test_spawn(argv, NULL, vmsup_log, NULL);
        json_object_put(test_wait_running(&s, control_path, vmsup_log, 180000));
        free(test_wait_console(console, vmsup_log, "net: eth0 10.17.0.2/24 up", 1, 180000));
        free(test_wait_console(console, vmsup_log, "net: booted with eth0", 1, 60000));
        cr_assert_eq(test_mtu_of("vm-t0"), 1400, "the spec's MTU is the tap's");
        cr_assert(strstr(slurp(vmsup_log), "vhost-net is off") || access("/dev/vhost-net", F_OK) == 0,
                  "no /dev/vhost-net here, and nothing said so: %s", slurp(vmsup_log));
        assert_ping("10.17.0.2");

        /* a second NIC, hot-plugged: the guest sees it, the spec copy keeps it */
        out = vmsup_nic(0, (const char *[]) { "add", UUID, "--ifname", "vm-t1", "--model", "e1000", NULL });
        added = json_tokener_parse(out);
        cr_assert_not_null(added, "%s", out);
        cr_assert(json_object_object_get_ex(added, "mac", &ret), "%s", out);
        snprintf(mac1, sizeof(mac1), "%s", json_object_get_string(ret));
        cr_assert_eq(strncmp(mac1, "fa:16:3e:", 9), 0, "a MAC of Nova's prefix: %s", out);
        json_object_put(added);
        free(out);
        free(test_wait_console(console, vmsup_log, "net: eth1 appeared", 1, 180000));
        cr_assert(strstr(slurp(spec_copy), "vm-t1") && strstr(slurp(spec_copy), mac1), "%s", slurp(spec_copy));
        /* and status lists it */
        {
                json_object *st = test_control(control_path, "status", NULL, &err), *nics, *n1, *v;

                cr_assert_not_null(st, "%s", err ? err->msg : "");
                cr_assert(json_object_object_get_ex(st, "nics", &nics) && json_object_array_length(nics) == 2, "%s",
                          json_object_to_json_string(st));
                n1 = json_object_array_get_idx(nics, 1);
                cr_assert(json_object_object_get_ex(n1, "mac", &v) && streq(json_object_get_string(v), mac1), "%s",
                          json_object_to_json_string(st));
                cr_assert(json_object_object_get_ex(n1, "ifname", &v) && streq(json_object_get_string(v), "vm-t1"));
                json_object_put(st);
        }
        /* the tap is taken: the same again is refused, naming it */
        out = vmsup_nic(65, (const char *[]) { "add", UUID, "--ifname", "vm-t1", NULL });
        cr_assert(strstr(out, "a NIC on tap 'vm-t1' already"), "%s", out);
        free(out);
        out = vmsup_nic(69, (const char *[]) { "add", UUID, "--ifname", "vm-nope", NULL });
        cr_assert(strstr(out, "tap 'vm-nope' does not exist"), "%s", out);
        free(out);

        /* a hard reboot: a new QEMU with both NICs, in their slots */
        req = json_object_new_object();
        json_object_object_add(req, "hard", json_object_new_boolean(1));
        ret = test_control(control_path, "reboot", req, &err);
        cr_assert_not_null(ret, "%s", err ? err->msg : "");
        json_object_put(ret);
        json_object_put(test_wait_running(&s, control_path, vmsup_log, 180000));
        free(test_wait_console(console, vmsup_log, "net: booted with eth0 eth1", 1, 180000));
        assert_ping("10.17.0.2");
        /* a third, on a multi-queue tap, one fd per queue */
        out = vmsup_nic(0, (const char *[]) { "add", UUID, "--ifname", "vm-mq", "--queues", "2", NULL });
        cr_assert(strstr(out, "\"slot\": 2"), "the first free slot: %s", out);
        free(out);
        free(test_wait_console(console, vmsup_log, "net: eth2 appeared", 1, 180000));

        /* removed: gone from the guest, and from the spec copy */
        out = vmsup_nic(66, (const char *[]) { "remove", UUID, "--mac", "fa:16:3e:ff:ff:ff", NULL });
        cr_assert(strstr(out, "no NIC with MAC fa:16:3e:ff:ff:ff"), "%s", out);
        free(out);
        free(vmsup_nic(0, (const char *[]) { "remove", UUID, "--mac", mac1, NULL }));
        free(test_wait_console(console, vmsup_log, "net: eth1 gone", 1, 60000));
        cr_assert_null(strstr(slurp(spec_copy), "vm-t1"), "%s", slurp(spec_copy));
        cr_assert(strstr(slurp(spec_copy), "vm-t0"), "%s", slurp(spec_copy));
        /* its tap is free again: another process can attach to it */
        {
                struct ifreq ifr = { .ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR };
                int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);

                snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "vm-t1");
                cr_assert_eq(ioctl(fd, TUNSETIFF, &ifr), 0, "vm-t1 is still held after the removal: %s",
                             strerror(errno));
                close(fd);
        }
        assert_ping("10.17.0.2");

        ret = test_control(control_path, "stop", NULL, &err);
        cr_assert_not_null(ret, "%s", err ? err->msg : "");
        json_object_put(ret);
        cr_assert_eq(wait_exit(&s, 120000), 0, "%s", slurp(vmsup_log));
}

/* Nothing runs, nothing changes: no QEMU (no log of its own, no console), the first
 * NIC's MTU as it was, and no tap made under the missing name. */
Test(net, a_missing_or_busy_tap_is_refused_before_qemu_starts) {
        struct test_run r = { 0 };
        struct ifreq ifr = { .ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR };
        int held;

        write_spec("[{\"ifname\": \"vm-t0\", \"mtu\": 1400}, {\"ifname\": \"vm-gone\"}]");
        test_run_vmsup(&r, NULL, (const char *[]) { "--config", conf, "run", spec_path, NULL });
        cr_assert_eq(r.exit_code, 69, "exit %d: %s%s", r.exit_code, r.out, r.err);
        cr_assert(strstr(r.err, "nics[1]: tap 'vm-gone' does not exist"), "%s", r.err);
        test_run_clear(&r);
        cr_assert_eq(if_nametoindex("vm-gone"), 0, "vmsup made the missing tap");
        cr_assert_eq(test_mtu_of("vm-t0"), 1500, "the MTU set for nics[0] was not put back");
        cr_assert_neq(access(qemu_log, F_OK), 0, "QEMU ran: %s", slurp(qemu_log));
        cr_assert_neq(access(console, F_OK), 0, "QEMU ran: %s", slurp(console));

        /* a tap another process holds (another guest's QEMU) */
        write_spec("[{\"ifname\": \"vm-t0\"}]");
        held = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
        snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "vm-t0");
        cr_assert_eq(ioctl(held, TUNSETIFF, &ifr), 0, "%s", strerror(errno));
        test_run_vmsup(&r, NULL, (const char *[]) { "--config", conf, "run", spec_path, NULL });
        cr_assert_eq(r.exit_code, 75, "exit %d: %s%s", r.exit_code, r.out, r.err);
        cr_assert(strstr(r.err, "nics[0]: tap 'vm-t0' is in use by another process"), "%s", r.err);
        test_run_clear(&r);
        cr_assert_neq(access(qemu_log, F_OK), 0, "QEMU ran: %s", slurp(qemu_log));
        close(held);
}
