#include "config.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "supervisor/qemuargs.h"

#define UUID "0b7c6e4a-3f0e-4d5c-9a1b-2c3d4e5f6a7b"

/* q35: the NICs' eight root ports, there for a hot-plug whether a NIC is in them or not */
#define NIC_PORTS                                                                                          \
        " -device pcie-root-port,id=nicport0,port=0x10,chassis=1,bus=pcie.0,addr=0x1c.0x0,multifunction=on" \
        " -device pcie-root-port,id=nicport1,port=0x11,chassis=2,bus=pcie.0,addr=0x1c.0x1"                  \
        " -device pcie-root-port,id=nicport2,port=0x12,chassis=3,bus=pcie.0,addr=0x1c.0x2"                  \
        " -device pcie-root-port,id=nicport3,port=0x13,chassis=4,bus=pcie.0,addr=0x1c.0x3"                  \
        " -device pcie-root-port,id=nicport4,port=0x14,chassis=5,bus=pcie.0,addr=0x1c.0x4"                  \
        " -device pcie-root-port,id=nicport5,port=0x15,chassis=6,bus=pcie.0,addr=0x1c.0x5"                  \
        " -device pcie-root-port,id=nicport6,port=0x16,chassis=7,bus=pcie.0,addr=0x1c.0x6"                  \
        " -device pcie-root-port,id=nicport7,port=0x17,chassis=8,bus=pcie.0,addr=0x1c.0x7"

static char *joined(char **argv) {
        static char buf[8192];

        buf[0] = '\0';
        for (char **a = argv; *a; a++) {
                strcat(buf, *a);
                strcat(buf, a[1] ? " " : "");
        }
        return buf;
}

static char **build_nics(const char *spec_json, const struct vtpm_config *tpm, const char *accel, const char *machine,
                         const struct qemu_nic_fds *nic_fds) {
        struct guest_spec spec;
        struct host_config cfg;
        vmsup_error *err = NULL;
        char **argv = NULL;

        cr_assert_eq(guest_spec_parse(spec_json, strlen(spec_json), "t.json", &spec, &err), 0, "%s",
                     err ? err->msg : "");
        cr_assert_eq(host_config_load("/nonexistent", true, &cfg, &err), 0);
        free(cfg.qemu.accelerator);
        cfg.qemu.accelerator = strdup(accel);
        if (machine) {
                free(cfg.qemu.machine);
                cfg.qemu.machine = strdup(machine);
        }
        struct qemu_args_in in = { .qemu = "/usr/bin/qemu-system-x86_64", .spec = &spec, .tpm = tpm, .cfg = &cfg,
                                   .vars_path = "/var/lib/vmsup/" UUID "/OVMF_VARS.fd",
                                   .serial_fd = 5, .qmp_fd = 3,
                                   .tpm_ctrl_fd = tpm && tpm->present ? 4 : -1, .paused = true, .nic_fds = nic_fds };
        cr_assert_eq(qemu_args_build(&in, &argv, &err), 0, "%s", err ? err->msg : "");
        guest_spec_clear(&spec);
        host_config_clear(&cfg);
        return argv;
}

static char **build(const char *spec_json, const struct vtpm_config *tpm, const char *accel) {
        return build_nics(spec_json, tpm, accel, NULL, NULL);
}

Test(qemuargs, uefi_guest_with_tpm2_crb) {
        struct vtpm_config tpm = { .present = true, .version = TPM_VERSION_2_0, .model = TPM_MODEL_CRB,
                                   .secret_security = SECRET_SECURITY_USER };
        char **argv = build("{\"uuid\": \"" UUID "\", \"name\": \"web,1\", \"vcpus\": 2, \"memory_mb\": 512,"
                            " \"flavor\": {\"name\": \"f\"}, \"image\": {\"properties\": {\"hw_firmware_type\": \"uefi\"}},"
                            " \"firmware\": {\"kernel\": \"/k\", \"initrd\": \"/i\", \"cmdline\": \"console=ttyS0 quiet\"}}",
                            &tpm, "tcg");

        cr_assert_str_eq(joined(argv),
                         "/usr/bin/qemu-system-x86_64 -name guest=web,,1,debug-threads=on -uuid " UUID
                         " -no-user-config -nodefaults -display none -accel tcg -machine q35 -m 512 -smp 2"
                         " -msg timestamp=on -S -chardev socket,id=qmp,fd=3 -mon chardev=qmp,mode=control"
                         " -drive if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd"
                         " -drive if=pflash,format=raw,unit=1,file=/var/lib/vmsup/" UUID "/OVMF_VARS.fd"
                         " -kernel /k -initrd /i -append console=ttyS0 quiet"
                         " -chardev socket,id=chrtpm,fd=4 -tpmdev emulator,id=tpm-tpm0,chardev=chrtpm"
                         " -device tpm-crb,tpmdev=tpm-tpm0,id=tpm0"
                         " -device pvpanic -action panic=pause"
                         NIC_PORTS
                         " -chardev socket,id=serial0,fd=5 -serial chardev:serial0"
                         " -sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny");
        strv_freep(&argv);
}

Test(qemuargs, bios_guest_tis_and_disks) {
        struct vtpm_config tpm = { .present = true, .version = TPM_VERSION_1_2, .model = TPM_MODEL_TIS };
        char **argv = build("{\"uuid\": \"" UUID "\", \"name\": \"g\", \"vcpus\": 1, \"memory_mb\": 256,"
                            " \"flavor\": {\"name\": \"f\"}, \"disks\": [{\"path\": \"/d.qcow2\", \"format\": \"qcow2\"},"
                            " {\"path\": \"/cd.iso\", \"readonly\": true}]}",
                            &tpm, "kvm");
        char *s = joined(argv);

        cr_assert(strstr(s, " -accel kvm "), "%s", s);
        cr_assert_null(strstr(s, "pflash"), "no UEFI firmware for a BIOS guest: %s", s);
        cr_assert(strstr(s, " -device tpm-tis,tpmdev=tpm-tpm0,id=tpm0 "), "%s", s);
        cr_assert(strstr(s, " -blockdev {\"driver\":\"file\",\"node-name\":\"file0\",\"filename\":\"/d.qcow2\"}"
                            " -blockdev {\"driver\":\"qcow2\",\"node-name\":\"disk0\",\"file\":\"file0\",\"backing\":null}"
                            " -device virtio-blk-pci,drive=disk0,id=virtio-disk0 "),
                  "without a chain in the spec QEMU must not open what the qcow2 header names: %s", s);
        cr_assert(strstr(s, " -blockdev {\"driver\":\"file\",\"node-name\":\"file1\",\"filename\":\"/cd.iso\",\"read-only\":true}"
                            " -blockdev {\"driver\":\"raw\",\"node-name\":\"disk1\",\"file\":\"file1\",\"read-only\":true}"
                            " -device virtio-blk-pci,drive=disk1,id=virtio-disk1 "),
                  "%s", s);
        strv_freep(&argv);
}

/* The spec's chain, bottom first, each node naming the next: nothing left to the headers. */
Test(qemuargs, explicit_backing_chain) {
        struct vtpm_config none = { 0 };
        char **argv = build("{\"uuid\": \"" UUID "\", \"name\": \"g\", \"vcpus\": 1, \"memory_mb\": 256,"
                            " \"flavor\": {\"name\": \"f\"}, \"disks\": [{\"path\": \"/raw.img\"},"
                            " {\"path\": \"/top.qcow2\", \"format\": \"qcow2\", \"backing\": {\"path\": \"/mid.qcow2\","
                            " \"format\": \"qcow2\", \"backing\": {\"path\": \"/base.raw\", \"format\": \"raw\"}}},"
                            " {\"path\": \"/b.qcow2\", \"format\": \"qcow2\", \"readonly\": true,"
                            " \"backing\": {\"path\": \"/c.qcow2\", \"format\": \"qcow2\", \"backing\": null}}]}",
                            &none, "tcg");
        char *s = joined(argv);

        cr_assert(strstr(s, " -blockdev {\"driver\":\"file\",\"node-name\":\"file0\",\"filename\":\"/raw.img\"}"
                            " -blockdev {\"driver\":\"raw\",\"node-name\":\"disk0\",\"file\":\"file0\"} -device"),
                  "a raw node takes no backing option: %s", s);
        cr_assert(strstr(s, " -blockdev {\"driver\":\"file\",\"node-name\":\"file1-backing2\",\"filename\":\"/base.raw\",\"read-only\":true}"
                            " -blockdev {\"driver\":\"raw\",\"node-name\":\"disk1-backing2\",\"file\":\"file1-backing2\",\"read-only\":true}"
                            " -blockdev {\"driver\":\"file\",\"node-name\":\"file1-backing1\",\"filename\":\"/mid.qcow2\",\"read-only\":true}"
                            " -blockdev {\"driver\":\"qcow2\",\"node-name\":\"disk1-backing1\",\"file\":\"file1-backing1\","
                            "\"backing\":\"disk1-backing2\",\"read-only\":true}"
                            " -blockdev {\"driver\":\"file\",\"node-name\":\"file1\",\"filename\":\"/top.qcow2\"}"
                            " -blockdev {\"driver\":\"qcow2\",\"node-name\":\"disk1\",\"file\":\"file1\",\"backing\":\"disk1-backing1\"}"
                            " -device virtio-blk-pci,drive=disk1,id=virtio-disk1 "),
                  "%s", s);
        cr_assert(strstr(s, " -blockdev {\"driver\":\"file\",\"node-name\":\"file2-backing1\",\"filename\":\"/c.qcow2\",\"read-only\":true}"
                            " -blockdev {\"driver\":\"qcow2\",\"node-name\":\"disk2-backing1\",\"file\":\"file2-backing1\","
                            "\"backing\":null,\"read-only\":true}"
                            " -blockdev {\"driver\":\"file\",\"node-name\":\"file2\",\"filename\":\"/b.qcow2\",\"read-only\":true}"
                            " -blockdev {\"driver\":\"qcow2\",\"node-name\":\"disk2\",\"file\":\"file2\",\"backing\":\"disk2-backing1\","
                            "\"read-only\":true}"
                            " -device virtio-blk-pci,drive=disk2,id=virtio-disk2 "),
                  "%s", s);
        strv_freep(&argv);
}

Test(qemuargs, no_tpm_no_tpm_devices) {
        struct vtpm_config none = { 0 };
        char **argv = build("{\"uuid\": \"" UUID "\", \"name\": \"g\", \"vcpus\": 1, \"memory_mb\": 256,"
                            " \"flavor\": {\"name\": \"f\"}}",
                            &none, "tcg");

        cr_assert_null(strstr(joined(argv), "tpm"), "%s", joined(argv));
        strv_freep(&argv);
}

/* a panic pauses, and the supervisor decides (the spec's on_crash) */
Test(qemuargs, pvpanic_device_and_panic_pauses) {
        struct vtpm_config none = { 0 };
        char **argv = build("{\"uuid\": \"" UUID "\", \"name\": \"g\", \"vcpus\": 1, \"memory_mb\": 256,"
                            " \"flavor\": {\"name\": \"f\"}, \"on_crash\": \"restart\"}",
                            &none, "tcg");

        cr_assert(strstr(joined(argv), " -device pvpanic -action panic=pause "), "%s", joined(argv));
        strv_freep(&argv);
}

Test(qemuargs, escape) {
        char *s = qemu_escape_value("a,b,,c");

        cr_assert_str_eq(s, "a,,b,,,,c");
        free(s);
}

Test(qemuargs, vnc_graphics_listen_nowhere_and_get_a_vga) {
        char **argv = build("{\"uuid\": \"" UUID "\", \"name\": \"g\", \"vcpus\": 1, \"memory_mb\": 256,"
                            " \"flavor\": {\"name\": \"f\"}, \"graphics\": {\"type\": \"vnc\"}}",
                            NULL, "tcg");
        char *s = joined(argv);

        /* no listener of QEMU's own, TCP or unix: vmsup hands it each client */
        cr_assert(strstr(s, " -display none -vnc none -device VGA,id=video0 "), "%s", s);
        cr_assert_null(strstr(strstr(s, "-vnc") + 1, "-vnc"), "one VNC server: %s", s);
        strv_freep(&argv);
        argv = build("{\"uuid\": \"" UUID "\", \"name\": \"g\", \"vcpus\": 1, \"memory_mb\": 256,"
                     " \"flavor\": {\"name\": \"f\"}}",
                     NULL, "tcg");
        s = joined(argv);
        cr_assert(strstr(s, " -display none "), "%s", s);
        cr_assert_null(strstr(s, "-vnc"), "no graphics: no VNC server: %s", s);
        cr_assert_null(strstr(s, "VGA"), "no graphics: no display adapter: %s", s);
        strv_freep(&argv);
}

#define NICS_SPEC(nics) \
        "{\"uuid\": \"" UUID "\", \"name\": \"g\", \"vcpus\": 4, \"memory_mb\": 256, \"flavor\": {\"name\": \"f\"}, \"nics\": " nics "}"

/* Each NIC: the tap fds QEMU inherits (and vhost-net's, or vhost=off), on its own root
 * port in the spec's order, its MAC, virtio's MTU and multiqueue vectors. */
Test(qemuargs, nics_from_inherited_tap_fds) {
        struct qemu_nic_fds fds[3] = {
                { .tap = { 6 }, .vhost = { 7 } },
                { .tap = { 8, 9, 10, 11 }, .vhost = { -1 } },
                { .tap = { 12 }, .vhost = { -1 } },
        };
        char **argv = build_nics(NICS_SPEC("[{\"ifname\": \"tap0\", \"mac\": \"fa:16:3e:00:00:01\", \"mtu\": 1450},"
                                           " {\"ifname\": \"tap1\", \"mac\": \"fa:16:3e:00:00:02\", \"queues\": 4, \"slot\": 3},"
                                           " {\"ifname\": \"tap2\", \"mac\": \"fa:16:3e:00:00:03\", \"model\": \"e1000\", \"mtu\": 9000}]"),
                                 NULL, "tcg", NULL, fds);
        char *s = joined(argv);

        cr_assert(strstr(s, NIC_PORTS), "%s", s);
        cr_assert(strstr(s, " -netdev tap,id=hostnet0,fds=6,vhost=on,vhostfds=7"
                            " -device virtio-net-pci,id=net0,netdev=hostnet0,mac=fa:16:3e:00:00:01,bus=nicport0,addr=0x0,host_mtu=1450"
                            " -netdev tap,id=hostnet3,fds=8:9:10:11,vhost=off"
                            " -device virtio-net-pci,id=net3,netdev=hostnet3,mac=fa:16:3e:00:00:02,bus=nicport3,addr=0x0,mq=on,vectors=10"
                            " -netdev tap,id=hostnet2,fds=12,vhost=off"
                            " -device e1000,id=net2,netdev=hostnet2,mac=fa:16:3e:00:00:03,bus=nicport2,addr=0x0 "),
                  "%s", s);
        cr_assert_null(strstr(s, "ifname"), "QEMU opens no tap itself: %s", s);
        cr_assert_null(strstr(s, "script"), "%s", s);
        cr_assert(strstr(s, "spawn=deny"), "%s", s);
        strv_freep(&argv);

        /* i440fx: fixed slots of pci.0, no root ports */
        argv = build_nics(NICS_SPEC("[{\"ifname\": \"tap0\", \"mac\": \"fa:16:3e:00:00:01\", \"slot\": 2}]"), NULL, "tcg",
                          "pc", fds);
        s = joined(argv);
        cr_assert(strstr(s, " -device virtio-net-pci,id=net2,netdev=hostnet2,mac=fa:16:3e:00:00:01,bus=pci.0,addr=0x1a "),
                  "%s", s);
        cr_assert_null(strstr(s, "pcie-root-port"), "%s", s);
        strv_freep(&argv);
}

/* A hot-plug says the same to QEMU as the command line, with getfd's names. */
Test(qemuargs, nic_hotplug_arguments) {
        struct host_config cfg;
        vmsup_error *err = NULL;
        struct guest_nic nic = { .ifname = (char *) "tap1", .mac = "fa:16:3e:00:00:09", .model = (char *) "virtio",
                                 .mtu = 1400, .queues = 2, .slot = 1 };
        char *taps[] = { (char *) "nic1-tap0", (char *) "nic1-tap1" }, *vhosts[] = { (char *) "nic1-vhost0",
                                                                                     (char *) "nic1-vhost1" };
        _cleanup_json_ json_object *nd = NULL, *nd2 = NULL, *dev = NULL;

        cr_assert_eq(host_config_load("/nonexistent", true, &cfg, &err), 0);
        nd = qemu_nic_netdev_json(&nic, taps, vhosts);
        cr_assert_str_eq(json_object_to_json_string_ext(nd, JSON_C_TO_STRING_PLAIN),
                         "{\"type\":\"tap\",\"id\":\"hostnet1\",\"fds\":\"nic1-tap0:nic1-tap1\",\"vhost\":true,"
                         "\"vhostfds\":\"nic1-vhost0:nic1-vhost1\"}");
        nd2 = qemu_nic_netdev_json(&nic, taps, NULL);
        cr_assert_str_eq(json_object_to_json_string_ext(nd2, JSON_C_TO_STRING_PLAIN),
                         "{\"type\":\"tap\",\"id\":\"hostnet1\",\"fds\":\"nic1-tap0:nic1-tap1\",\"vhost\":false}");
        dev = qemu_nic_device_json(&cfg, &nic);
        cr_assert_str_eq(json_object_to_json_string_ext(dev, JSON_C_TO_STRING_PLAIN),
                         "{\"driver\":\"virtio-net-pci\",\"id\":\"net1\",\"netdev\":\"hostnet1\",\"mac\":\"fa:16:3e:00:00:09\","
                         "\"bus\":\"nicport1\",\"addr\":\"0x0\",\"host_mtu\":1400,\"mq\":true,\"vectors\":6}");
        host_config_clear(&cfg);
}
