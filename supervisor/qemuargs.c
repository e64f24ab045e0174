#include "config.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "supervisor/qemuargs.h"

char *qemu_escape_value(const char *s) {
        size_t n = 0;
        char *out, *o;

        for (const char *p = s; *p; p++)
                n += *p == ',' ? 2 : 1;
        out = malloc(n + 1);
        if (!out)
                return NULL;
        for (o = out; *s; s++) {
                *o++ = *s;
                if (*s == ',')
                        *o++ = ',';
        }
        *o = '\0';
        return out;
}

struct argv_builder {
        char **v;
        size_t n, cap;
        bool oom;
};

static void add(struct argv_builder *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void add(struct argv_builder *b, const char *fmt, ...) {
        char *s = NULL;
        va_list ap;

        if (b->oom)
                return;
        if (b->n + 2 > b->cap) {
                size_t cap = b->cap ? b->cap * 2 : 64;
                char **v = realloc(b->v, cap * sizeof(char *));

                if (!v) {
                        b->oom = true;
                        return;
                }
                b->v = v;
                b->cap = cap;
        }
        va_start(ap, fmt);
        if (vasprintf(&s, fmt, ap) < 0) {
                b->oom = true;
                s = NULL;
        }
        va_end(ap);
        if (s) {
                b->v[b->n++] = s;
                b->v[b->n] = NULL;
        }
}

/* Add "-opt" "prefix<escaped value>suffix". */
static void add_escaped(struct argv_builder *b, const char *opt, const char *prefix, const char *value,
                        const char *suffix) {
        _cleanup_free_ char *esc = qemu_escape_value(value);

        if (!esc) {
                b->oom = true;
                return;
        }
        add(b, "%s", opt);
        add(b, "%s%s%s", prefix, esc, suffix);
}

static void put(struct argv_builder *b, json_object *o, const char *key, json_object *v) {
        if (!o || !v || json_object_object_add(o, key, v) < 0) {
                json_object_put(v);
                b->oom = true;
        }
}

/* Layer depth of disk i (0: the top) as two nodes, file and format, in QEMU's JSON form:
 * the dotted form cannot say "backing": null. A qcow2 node always gets a backing, the
 * next layer's node or null: without it QEMU would open what the image's header names. */
static void add_layer(struct argv_builder *b, size_t i, size_t depth, const char *path, const char *format,
                      bool has_next, bool readonly) {
        _cleanup_json_ json_object *file = json_object_new_object(), *fmt = json_object_new_object();
        char file_node[48], node[48], next[48];
        const int flags = JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE;

        if (depth) {
                snprintf(file_node, sizeof(file_node), "file%zu-backing%zu", i, depth);
                snprintf(node, sizeof(node), "disk%zu-backing%zu", i, depth);
        } else {
                snprintf(file_node, sizeof(file_node), "file%zu", i);
                snprintf(node, sizeof(node), "disk%zu", i);
        }
        snprintf(next, sizeof(next), "disk%zu-backing%zu", i, depth + 1);
        put(b, file, "driver", json_object_new_string("file"));
        put(b, file, "node-name", json_object_new_string(file_node));
        put(b, file, "filename", json_object_new_string(path));
        put(b, fmt, "driver", json_object_new_string(format));
        put(b, fmt, "node-name", json_object_new_string(node));
        put(b, fmt, "file", json_object_new_string(file_node));
        if (streq(format, "qcow2")) {
                if (has_next)
                        put(b, fmt, "backing", json_object_new_string(next));
                else if (fmt && json_object_object_add(fmt, "backing", NULL) < 0)
                        b->oom = true;
        }
        if (readonly) {
                put(b, file, "read-only", json_object_new_boolean(true));
                put(b, fmt, "read-only", json_object_new_boolean(true));
        }
        if (b->oom)
                return;
        add(b, "-blockdev");
        add(b, "%s", json_object_to_json_string_ext(file, flags));
        add(b, "-blockdev");
        add(b, "%s", json_object_to_json_string_ext(fmt, flags));
}

/* Where the NICs go. q35 (PCIe): one pcie-root-port per slot, the 8 functions of
 * 00:1c (as libvirt makes them: port, chassis), present whether a NIC is in it or not,
 * so that a hot-plug has a port and a migration's destination the same topology. The
 * i440fx pc: slots 0x18 to 0x1f of pci.0, clear of the devices QEMU places itself. */
static bool machine_is_pcie(const struct host_config *cfg) {
        return strstr(cfg->qemu.machine, "q35") != NULL;
}

static const char *nic_driver(const struct guest_nic *nic) {
        return streq(nic->model, "e1000") ? "e1000" : "virtio-net-pci";
}

static void add_nic_ports(struct argv_builder *b, const struct host_config *cfg) {
        if (!machine_is_pcie(cfg))
                return;
        for (unsigned i = 0; i < GUEST_NIC_MAX; i++) {
                add(b, "-device");
                add(b, "pcie-root-port,id=nicport%u,port=0x%x,chassis=%u,bus=pcie.0,addr=0x1c.0x%x%s", i, 0x10 + i,
                    i + 1, i, i == 0 ? ",multifunction=on" : "");
        }
}

static void add_nic(struct argv_builder *b, const struct host_config *cfg, const struct guest_nic *nic,
                    const struct qemu_nic_fds *fds) {
        char taps[GUEST_NIC_MAX_QUEUES * 6] = "", vhosts[GUEST_NIC_MAX_QUEUES * 6] = "", extra[64] = "";
        size_t tl = 0, vl = 0;

        for (unsigned q = 0; q < nic->queues; q++) {
                tl += (size_t) snprintf(taps + tl, sizeof(taps) - tl, "%s%d", q ? ":" : "", fds->tap[q]);
                if (fds->vhost[0] >= 0)
                        vl += (size_t) snprintf(vhosts + vl, sizeof(vhosts) - vl, "%s%d", q ? ":" : "", fds->vhost[q]);
        }
        add(b, "-netdev");
        if (fds->vhost[0] >= 0)
                add(b, "tap,id=" QEMU_NIC_NETDEV_ID ",fds=%s,vhost=on,vhostfds=%s", nic->slot, taps, vhosts);
        else
                add(b, "tap,id=" QEMU_NIC_NETDEV_ID ",fds=%s,vhost=off", nic->slot, taps);
        /* Nova's libvirt driver: <mtu size=.../> is virtio-net's host_mtu; multiqueue
         * needs a vector per queue pair, two more for config and control */
        if (streq(nic->model, "virtio") && nic->mtu)
                snprintf(extra, sizeof(extra), ",host_mtu=%u", nic->mtu);
        if (nic->queues > 1)
                snprintf(extra + strlen(extra), sizeof(extra) - strlen(extra), ",mq=on,vectors=%u",
                         2 * nic->queues + 2);
        add(b, "-device");
        if (machine_is_pcie(cfg))
                add(b, "%s,id=" QEMU_NIC_DEVICE_ID ",netdev=" QEMU_NIC_NETDEV_ID ",mac=%s,bus=nicport%u,addr=0x0%s",
                    nic_driver(nic), nic->slot, nic->slot, nic->mac, nic->slot, extra);
        else
                add(b, "%s,id=" QEMU_NIC_DEVICE_ID ",netdev=" QEMU_NIC_NETDEV_ID ",mac=%s,bus=pci.0,addr=0x%x%s",
                    nic_driver(nic), nic->slot, nic->slot, nic->mac, 0x18 + nic->slot, extra);
}

json_object *qemu_nic_netdev_json(const struct guest_nic *nic, char *const *fdnames, char *const *vhostfdnames) {
        json_object *o = json_object_new_object();
        char id[32], *fds = NULL, *vfds = NULL;
        size_t fl = 0, vl = 0;

        if (!o)
                return NULL;
        for (unsigned q = 0; q < nic->queues; q++) {
                fl += strlen(fdnames[q]) + 1;
                if (vhostfdnames)
                        vl += strlen(vhostfdnames[q]) + 1;
        }
        fds = calloc(1, fl + 1);
        vfds = calloc(1, vl + 1);
        if (!fds || !vfds) {
                free(fds);
                free(vfds);
                json_object_put(o);
                return NULL;
        }
        for (unsigned q = 0; q < nic->queues; q++) {
                if (q)
                        strcat(fds, ":");
                strcat(fds, fdnames[q]);
                if (vhostfdnames) {
                        if (q)
                                strcat(vfds, ":");
                        strcat(vfds, vhostfdnames[q]);
                }
        }
        snprintf(id, sizeof(id), QEMU_NIC_NETDEV_ID, nic->slot);
        json_object_object_add(o, "type", json_object_new_string("tap"));
        json_object_object_add(o, "id", json_object_new_string(id));
        json_object_object_add(o, "fds", json_object_new_string(fds));
        json_object_object_add(o, "vhost", json_object_new_boolean(vhostfdnames != NULL));
        if (vhostfdnames)
                json_object_object_add(o, "vhostfds", json_object_new_string(vfds));
        free(fds);
        free(vfds);
        return o;
}

json_object *qemu_nic_device_json(const struct host_config *cfg, const struct guest_nic *nic) {
        json_object *o = json_object_new_object();
        char id[32], netdev[32], bus[32], addr[16];

        if (!o)
                return NULL;
        snprintf(id, sizeof(id), QEMU_NIC_DEVICE_ID, nic->slot);
        snprintf(netdev, sizeof(netdev), QEMU_NIC_NETDEV_ID, nic->slot);
        if (machine_is_pcie(cfg)) {
                snprintf(bus, sizeof(bus), "nicport%u", nic->slot);
                snprintf(addr, sizeof(addr), "0x0");
        } else {
                snprintf(bus, sizeof(bus), "pci.0");
                snprintf(addr, sizeof(addr), "0x%x", 0x18 + nic->slot);
        }
        json_object_object_add(o, "driver", json_object_new_string(nic_driver(nic)));
        json_object_object_add(o, "id", json_object_new_string(id));
        json_object_object_add(o, "netdev", json_object_new_string(netdev));
        json_object_object_add(o, "mac", json_object_new_string(nic->mac));
        json_object_object_add(o, "bus", json_object_new_string(bus));
        json_object_object_add(o, "addr", json_object_new_string(addr));
        if (streq(nic->model, "virtio") && nic->mtu)
                json_object_object_add(o, "host_mtu", json_object_new_int((int) nic->mtu));
        if (nic->queues > 1) {
                json_object_object_add(o, "mq", json_object_new_boolean(true));
                json_object_object_add(o, "vectors", json_object_new_int((int) (2 * nic->queues + 2)));
        }
        return o;
}

int qemu_args_build(const struct qemu_args_in *in, char ***ret_argv, vmsup_error **err) {
        const struct guest_spec *spec = in->spec;
        const struct host_config *cfg = in->cfg;
        struct argv_builder b = { 0 };

        if (streq(spec->firmware_type, "uefi") && !in->vars_path)
                return vmsup_fail(err, VMSUP_ERR_INTERNAL, EINVAL, "UEFI guest without a VARS file");

        add(&b, "%s", in->qemu);
        add_escaped(&b, "-name", "guest=", spec->name, ",debug-threads=on");
        add(&b, "-uuid");
        add(&b, "%s", spec->uuid);
        /* Nothing from the host's QEMU config or defaults: every device is ours. */
        add(&b, "-no-user-config");
        add(&b, "-nodefaults");
        add(&b, "-display");
        add(&b, "none");
        if (spec->graphics && streq(spec->graphics, "vnc")) {
                /* A VNC server that listens nowhere: the supervisor owns the guest's
                 * socket (supervisor/vnc.c) and hands each client it accepts to QEMU
                 * (getfd, add_client). -nodefaults left no display adapter: the
                 * standard VGA (Windows and Linux drive it without a driver of their own). */
                add(&b, "-vnc");
                add(&b, "none");
                add(&b, "-device");
                add(&b, "VGA,id=video0");
        }
        add(&b, "-accel");
        add(&b, "%s", cfg->qemu.accelerator);
        add(&b, "-machine");
        add(&b, "%s", cfg->qemu.machine);
        add(&b, "-m");
        add(&b, "%u", spec->memory_mb);
        add(&b, "-smp");
        add(&b, "%u", spec->vcpus);
        add(&b, "-msg");
        add(&b, "timestamp=on");
        if (in->paused)
                add(&b, "-S");

        /* QMP on an inherited socketpair end: no path to race on. */
        add(&b, "-chardev");
        add(&b, "socket,id=qmp,fd=%d", in->qmp_fd);
        add(&b, "-mon");
        add(&b, "chardev=qmp,mode=control");

        if (streq(spec->firmware_type, "uefi")) {
                add_escaped(&b, "-drive", "if=pflash,format=raw,unit=0,readonly=on,file=", cfg->qemu.ovmf_code, "");
                add_escaped(&b, "-drive", "if=pflash,format=raw,unit=1,file=", in->vars_path, "");
        }
        if (spec->kernel) {
                add(&b, "-kernel");
                add(&b, "%s", spec->kernel);
                if (spec->initrd) {
                        add(&b, "-initrd");
                        add(&b, "%s", spec->initrd);
                }
                if (spec->cmdline) {
                        add(&b, "-append");
                        add(&b, "%s", spec->cmdline);
                }
        }

        if (in->tpm && in->tpm->present) {
                if (in->tpm_ctrl_fd < 0) {
                        free(b.v);
                        return vmsup_fail(err, VMSUP_ERR_INTERNAL, EINVAL, "vTPM guest without a TPM control fd");
                }
                add(&b, "-chardev");
                add(&b, "socket,id=chrtpm,fd=%d", in->tpm_ctrl_fd);
                add(&b, "-tpmdev");
                add(&b, "emulator,id=tpm-tpm0,chardev=chrtpm");
                add(&b, "-device");
                add(&b, "%s,tpmdev=tpm-tpm0,id=tpm0", tpm_model_to_string(in->tpm->model));
        }

        /* A kernel panic reaches us as GUEST_PANICKED: QEMU only pauses the guest, and the
         * supervisor applies the spec's on_crash (QEMU's own default would power it off). */
        add(&b, "-device");
        add(&b, "pvpanic");
        add(&b, "-action");
        add(&b, "panic=pause");

        for (size_t i = 0; i < spec->n_disks; i++) {
                const struct guest_disk *d = &spec->disks[i];

                /* The bottom layer first: a node's backing names a node already defined. */
                for (size_t j = d->n_backing; j > 0; j--)
                        add_layer(&b, i, j, d->backing[j - 1].path, d->backing[j - 1].format, j < d->n_backing, true);
                add_layer(&b, i, 0, d->path, d->format, d->n_backing > 0, d->readonly);
                add(&b, "-device");
                add(&b, "virtio-blk-pci,drive=disk%zu,id=virtio-disk%zu", i, i);
        }

        add_nic_ports(&b, cfg);
        if (spec->n_nics && !in->nic_fds) {
                char **v = b.v;

                strv_freep(&v);
                return vmsup_fail(err, VMSUP_ERR_INTERNAL, EINVAL, "a guest with NICs, but no tap fds");
        }
        for (size_t i = 0; i < spec->n_nics; i++)
                add_nic(&b, cfg, &spec->nics[i], &in->nic_fds[i]);

        /* the serial port is a socket whose other end the supervisor reads: it bounds the
         * console log and serves `vmsup console` (supervisor/logs.c) */
        add(&b, "-chardev");
        add(&b, "socket,id=serial0,fd=%d", in->serial_fd);
        add(&b, "-serial");
        add(&b, "chardev:serial0");

        /* QEMU's own seccomp sandbox (what libvirt enables by default). */
        add(&b, "-sandbox");
        add(&b, "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny");
        if (in->incoming) {
                add(&b, "-incoming");
                add(&b, "%s", in->incoming);
        }

        if (b.oom) {
                char **v = b.v;

                strv_freep(&v);
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "build QEMU command line");
        }
        *ret_argv = b.v;
        return 0;
}
