/* Opening a NIC's tap (supervisor/nics.c) on real tap devices, each test in a network
 * namespace of its own (we run as root): a tap the orchestrator made is attached, never
 * one made; a missing tap, a tap in use, a tap of the wrong kind and an MTU the tap
 * refuses are clear errors that leave the tap as it was. */
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
#include <unistd.h>

#include "common/proc.h"
#include "common/util.h"
#include "supervisor/nics.h"
#include "tests/helpers.h"

static void ip(const char *args) {
        char *argv[] = { (char *) "/bin/sh", (char *) "-c", NULL, NULL };
        char *cmd = NULL;
        struct proc_result res = { 0 };
        vmsup_error *err = NULL;

        cr_assert(asprintf(&cmd, "ip %s", args) > 0);
        argv[2] = cmd;
        cr_assert_eq(proc_run_capture(argv, (char *[]) { (char *) "PATH=/usr/sbin:/usr/bin:/sbin:/bin", NULL }, 10000,
                                      65536, &res, &err),
                     0, "%s", err ? err->msg : "");
        cr_assert(WIFEXITED(res.status) && WEXITSTATUS(res.status) == 0, "ip %s: %s%s (the Debian package iproute2)",
                  args, res.out, res.errout);
        proc_result_clear(&res);
        free(cmd);
}

static void setup(void) {
        cr_assert_eq(geteuid(), 0, "these tests make taps in a network namespace: run them as root");
        cr_assert_eq(access("/dev/net/tun", F_OK), 0, "no /dev/net/tun: the tun module is not loaded");
        cr_assert_eq(unshare(CLONE_NEWNET), 0, "unshare(CLONE_NEWNET): %s", strerror(errno));
}

TestSuite(nics, .init = setup, .timeout = 60);

static struct guest_nic nic_of(const char *ifname, unsigned mtu, unsigned queues) {
        return (struct guest_nic) { .ifname = (char *) ifname, .mac = "fa:16:3e:00:00:01", .model = (char *) "virtio",
                                    .mtu = mtu, .queues = queues };
}

Test(nics, attaches_to_the_orchestrators_tap_sets_its_mtu_vhost_off_without_vhost_net) {
        struct guest_nic nic = nic_of("tap-a", 1400, 1);
        struct nic_fds f;
        vmsup_error *err = NULL;
        struct ifreq ifr = { 0 };

        ip("tuntap add dev tap-a mode tap vnet_hdr");
        cr_assert_eq(nic_open(&nic, "nics[0]", &f, &err), 0, "%s", err ? err->msg : "");
        cr_assert_eq(f.n, 1);
        cr_assert_geq(f.tap[0], 0);
        cr_assert(fcntl(f.tap[0], F_GETFD) & FD_CLOEXEC, "the tap fd must be close-on-exec");
        cr_assert_eq(ioctl(f.tap[0], TUNGETIFF, &ifr), 0);
        cr_assert_str_eq(ifr.ifr_name, "tap-a");
        cr_assert(ifr.ifr_flags & IFF_TAP && ifr.ifr_flags & IFF_NO_PI && ifr.ifr_flags & IFF_VNET_HDR, "flags %#x",
                  ifr.ifr_flags);
        cr_assert_eq(test_mtu_of("tap-a"), 1400);
        if (access("/dev/vhost-net", F_OK) < 0) {
                cr_assert_lt(f.vhost[0], 0, "no /dev/vhost-net: vhost off");
                cr_assert_eq(f.vhost_errno, ENOENT);
        } else
                cr_assert_geq(f.vhost[0], 0);
        nic_close(&f, false);
        cr_assert_eq(test_mtu_of("tap-a"), 1400, "a guest that ran keeps the MTU it was given");
}

Test(nics, multi_queue_tap_opened_once_per_queue) {
        struct guest_nic nic = nic_of("tap-mq", 0, 4);
        struct nic_fds f;
        vmsup_error *err = NULL;

        ip("tuntap add dev tap-mq mode tap vnet_hdr multi_queue");
        cr_assert_eq(nic_open(&nic, "nics[0]", &f, &err), 0, "%s", err ? err->msg : "");
        cr_assert_eq(f.n, 4);
        for (int q = 0; q < 4; q++)
                cr_assert_geq(f.tap[q], 0, "queue %d", q);
        cr_assert_lt(f.tap[4], 0);
        nic_close(&f, false);
}

Test(nics, a_missing_tap_is_refused_and_not_made) {
        struct guest_nic nic = nic_of("tap-gone", 0, 1);
        struct nic_fds f;
        vmsup_error *err = NULL;

        cr_assert_lt(nic_open(&nic, "nics[1]", &f, &err), 0);
        cr_assert_eq(err->kind, VMSUP_ERR_UNAVAILABLE, "%s", err->msg);
        cr_assert(strstr(err->msg, "nics[1]") && strstr(err->msg, "tap 'tap-gone' does not exist"), "%s", err->msg);
        cr_assert_eq(if_nametoindex("tap-gone"), 0, "vmsup made a tap");
        vmsup_error_free(err);
}

Test(nics, a_tap_in_use_by_another_process_is_busy) {
        struct guest_nic nic = nic_of("tap-b", 0, 1);
        struct ifreq ifr = { .ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR };
        struct nic_fds f;
        vmsup_error *err = NULL;
        int other;

        ip("tuntap add dev tap-b mode tap vnet_hdr");
        other = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
        snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "tap-b");
        cr_assert_eq(ioctl(other, TUNSETIFF, &ifr), 0, "%s", strerror(errno));
        cr_assert_lt(nic_open(&nic, "nics[0]", &f, &err), 0);
        cr_assert_eq(err->kind, VMSUP_ERR_BUSY, "%s", err->msg);
        cr_assert(strstr(err->msg, "tap 'tap-b' is in use by another process"), "%s", err->msg);
        vmsup_error_free(err);
        close(other);
}

Test(nics, a_tap_of_the_wrong_kind_is_named) {
        struct guest_nic nic = nic_of("tun-c", 0, 1), mq = nic_of("tap-d", 0, 2);
        struct nic_fds f;
        vmsup_error *err = NULL;

        ip("tuntap add dev tun-c mode tun");
        cr_assert_lt(nic_open(&nic, "nics[0]", &f, &err), 0);
        cr_assert_eq(err->kind, VMSUP_ERR_DATA, "%s", err->msg);
        cr_assert(strstr(err->msg, "'tun-c' is not a single-queue tap device"), "%s", err->msg);
        err = vmsup_error_free(err);
        ip("tuntap add dev tap-d mode tap");
        cr_assert_lt(nic_open(&mq, "nics[2]", &f, &err), 0);
        cr_assert(strstr(err->msg, "nics[2]: 'tap-d' is not a multi-queue tap device"), "%s", err->msg);
        err = vmsup_error_free(err);
        nic.ifname = (char *) "lo"; /* no tap at all */
        cr_assert_lt(nic_open(&nic, "nics[0]", &f, &err), 0);
        cr_assert(strstr(err->msg, "'lo' is not a single-queue tap device"), "%s", err->msg);
        vmsup_error_free(err);
}

Test(nics, an_mtu_the_tap_refuses_is_an_error_and_leaves_it_as_it_was) {
        struct guest_nic nic = nic_of("tap-e", 65535, 1);
        struct nic_fds f;
        vmsup_error *err = NULL;

        ip("tuntap add dev tap-e mode tap vnet_hdr");
        ip("link set tap-e mtu 1500");
        cr_assert_lt(nic_open(&nic, "nics[0]", &f, &err), 0);
        cr_assert_eq(err->kind, VMSUP_ERR_DATA, "%s", err->msg);
        cr_assert(strstr(err->msg, "nics[0].mtu: tap 'tap-e' refuses MTU 65535 (it has 1500)"), "%s", err->msg);
        vmsup_error_free(err);
        cr_assert_eq(test_mtu_of("tap-e"), 1500);
        /* nothing held: the tap can be attached again */
        nic.mtu = 0;
        cr_assert_eq(nic_open(&nic, "nics[0]", &f, &err), 0, "%s", err ? err->msg : "");
        nic_close(&f, false);
}

/* A failed start puts back the MTU it set. */
Test(nics, close_restores_the_mtu_on_request) {
        struct guest_nic nic = nic_of("tap-f", 9000, 1);
        struct nic_fds f;
        vmsup_error *err = NULL;

        ip("tuntap add dev tap-f mode tap vnet_hdr");
        cr_assert_eq(nic_open(&nic, "nics[0]", &f, &err), 0, "%s", err ? err->msg : "");
        cr_assert_eq(test_mtu_of("tap-f"), 9000);
        nic_close(&f, true);
        cr_assert_eq(test_mtu_of("tap-f"), 1500);
}
