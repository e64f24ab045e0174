#include "config.h"

/* The guest's NICs (the spec's "nics"). The orchestrator creates and plugs each tap
 * before the guest starts, as os-vif does for Nova's libvirt driver (an "ethernet"
 * interface, managed=no); vmsup only attaches to it, as Incus does: TUNSETIFF once per
 * queue and one /dev/vhost-net per queue, handed to QEMU as inherited fds at launch
 * (children.c) or with getfd at a hot-plug (here), so that QEMU needs no network
 * privilege (no CAP_NET_ADMIN, -sandbox spawn=deny: no helper script).
 *
 * Hot-plug (`vmsup nic add`, `vmsup nic remove`) runs on the loop: getfd, netdev_add,
 * device_add; device_del, then QEMU's DEVICE_DELETED (once the guest let go of the
 * device) within a deadline, then netdev_del. Each change is written into the guest's
 * spec copy, which a hard reboot, an on_crash restart and a migration start from. */

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/fileio.h"
#include "common/log.h"
#include "common/proc.h"
#include "common/util.h"
#include "qmp/client.h"
#include "supervisor/nics.h"
#include "supervisor/qemuargs.h"

#include "supervisor/guest_internal.h"

void nic_fds_init(struct nic_fds *f) {
        memset(f, 0, sizeof(*f));
        for (int q = 0; q < GUEST_NIC_MAX_QUEUES; q++)
                f->tap[q] = f->vhost[q] = -1;
}

static int mtu_ioctl(const char *ifname, unsigned long req, unsigned *mtu) {
        _cleanup_close_ int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        struct ifreq ifr = { 0 };

        if (s < 0)
                return -errno;
        snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", ifname);
        ifr.ifr_mtu = (int) *mtu;
        if (ioctl(s, req, &ifr) < 0)
                return -errno;
        *mtu = (unsigned) ifr.ifr_mtu;
        return 0;
}

void nic_close(struct nic_fds *f, bool restore_mtu) {
        for (int q = 0; q < GUEST_NIC_MAX_QUEUES; q++) {
                closep(&f->tap[q]);
                closep(&f->vhost[q]);
                f->tap[q] = f->vhost[q] = -1;
        }
        if (restore_mtu && f->old_mtu) {
                unsigned m = f->old_mtu;

                (void) mtu_ioctl(f->ifname, SIOCSIFMTU, &m);
        }
        f->old_mtu = 0;
        f->n = 0;
}

static int tap_attach(const struct guest_nic *nic, const char *key, int *ret_fd, vmsup_error **err) {
        _cleanup_close_ int fd = -1;
        struct ifreq ifr = { 0 };

        fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
        if (fd < 0)
                return vmsup_fail(err, errno == ENOENT ? VMSUP_ERR_UNAVAILABLE : VMSUP_ERR_SYSTEM, errno,
                                  "open /dev/net/tun for %s tap '%s'", key, nic->ifname);
        snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", nic->ifname);
        ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | (nic->queues > 1 ? IFF_MULTI_QUEUE : 0);
        if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
                int e = errno;

                if (e == EBUSY)
                        return vmsup_fail(err, VMSUP_ERR_BUSY, 0,
                                          "%s: tap '%s' is in use by another process (another guest?)", key,
                                          nic->ifname);
                if (e == EINVAL)
                        return vmsup_fail(err, VMSUP_ERR_DATA, 0,
                                          "%s: '%s' is not a %s tap device (made with 'ip tuntap add dev %s mode tap%s')",
                                          key, nic->ifname, nic->queues > 1 ? "multi-queue" : "single-queue",
                                          nic->ifname, nic->queues > 1 ? " multi_queue" : "");
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, e, "%s: attach to tap '%s' (TUNSETIFF)", key, nic->ifname);
        }
        /* TUNSETIFF makes a tap that does not exist: one that vanished since the check
         * would be ours, and go with our fd. The orchestrator's taps are persistent. */
        if (ioctl(fd, TUNGETIFF, &ifr) < 0)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, errno, "%s: tap '%s' (TUNGETIFF)", key, nic->ifname);
        if (!(ifr.ifr_flags & IFF_PERSIST))
                return vmsup_fail(err, VMSUP_ERR_UNAVAILABLE, 0,
                                  "%s: tap '%s' does not exist (or is not persistent): the orchestrator plugs it "
                                  "before the guest starts; vmsup never creates one", key, nic->ifname);
        *ret_fd = TAKE_FD(fd);
        return 0;
}

int nic_open(const struct guest_nic *nic, const char *key, struct nic_fds *ret, vmsup_error **err) {
        struct nic_fds f;
        int r;

        nic_fds_init(&f);
        snprintf(f.ifname, sizeof(f.ifname), "%s", nic->ifname);
        if (if_nametoindex(nic->ifname) == 0)
                return vmsup_fail(err, VMSUP_ERR_UNAVAILABLE, 0,
                                  "%s: tap '%s' does not exist on this host: the orchestrator plugs it before the "
                                  "guest starts (or migrates here); vmsup never creates one", key, nic->ifname);
        for (unsigned q = 0; q < nic->queues; q++) {
                if ((r = tap_attach(nic, key, &f.tap[q], err)) < 0)
                        goto fail;
                f.n = q + 1;
        }
        if (nic->mtu) {
                unsigned cur = 0, want = nic->mtu;

                if ((r = mtu_ioctl(nic->ifname, SIOCGIFMTU, &cur)) < 0) {
                        r = vmsup_fail(err, VMSUP_ERR_SYSTEM, -r, "%s: MTU of tap '%s'", key, nic->ifname);
                        goto fail;
                }
                if (cur != want) {
                        if ((r = mtu_ioctl(nic->ifname, SIOCSIFMTU, &want)) < 0) {
                                r = vmsup_fail(err, -r == EINVAL ? VMSUP_ERR_DATA : VMSUP_ERR_SYSTEM, -r,
                                               "%s.mtu: tap '%s' refuses MTU %u (it has %u)", key, nic->ifname,
                                               nic->mtu, cur);
                                goto fail;
                        }
                        f.old_mtu = cur;
                }
        }
        for (unsigned q = 0; q < nic->queues; q++) {
                f.vhost[q] = open("/dev/vhost-net", O_RDWR | O_CLOEXEC);
                if (f.vhost[q] < 0) {
                        /* no vhost-net on this host (or not for us): QEMU moves the packets itself */
                        f.vhost_errno = errno;
                        for (unsigned k = 0; k < q; k++) {
                                closep(&f.vhost[k]);
                                f.vhost[k] = -1;
                        }
                        break;
                }
        }
        *ret = f;
        return 0;
fail:
        nic_close(&f, true);
        return r;
}

/* Guest side ------------------------------------------------------------------------ */

/* How long the guest has to let go of a NIC after device_del: a PCIe hot-unplug waits
 * 5 s for the attention button to be cancelled before the guest's driver even starts. */
#define NIC_REMOVE_TIMEOUT_MS 60000

static void log_vhost(struct guest *g, const struct nic_fds *f) {
        if (f->vhost[0] >= 0 || g->vhost_off_logged)
                return;
        g->vhost_off_logged = true;
        log_info("vhost-net is off for the guest's NICs: /dev/vhost-net: %s (QEMU moves the packets itself)",
                 strerror(f->vhost_errno));
}

int guest_nics_open(struct guest *g, vmsup_error **err) {
        if (g->nics_open)
                return 0;
        for (size_t i = 0; i < g->spec.n_nics; i++) {
                char key[16];
                int r;

                snprintf(key, sizeof(key), "nics[%zu]", i);
                r = nic_open(&g->spec.nics[i], key, &g->nic_fds[i], err);
                if (r < 0) {
                        for (size_t j = 0; j < i; j++)
                                nic_close(&g->nic_fds[j], true);
                        return vmsup_error_prefix(err, "the guest's NICs");
                }
                log_vhost(g, &g->nic_fds[i]);
        }
        g->nics_open = true;
        return 0;
}

void guest_nics_close(struct guest *g, bool restore_mtu) {
        if (!g->nics_open)
                return;
        for (size_t i = 0; i < g->spec.n_nics; i++)
                nic_close(&g->nic_fds[i], restore_mtu);
        g->nics_open = false;
}

size_t guest_nics_fd_count(const struct guest *g) {
        size_t n = 0;

        for (size_t i = 0; g->nics_open && i < g->spec.n_nics; i++)
                n += g->nic_fds[i].n * (g->nic_fds[i].vhost[0] >= 0 ? 2 : 1);
        return n;
}

size_t guest_nics_map_fds(struct guest *g, int first_child_fd, struct proc_fd_map *map, struct qemu_nic_fds *ret) {
        int child = first_child_fd;
        size_t n = 0;

        for (size_t i = 0; g->nics_open && i < g->spec.n_nics; i++) {
                const struct nic_fds *f = &g->nic_fds[i];

                for (int q = 0; q < GUEST_NIC_MAX_QUEUES; q++)
                        ret[i].tap[q] = ret[i].vhost[q] = -1;
                for (unsigned q = 0; q < f->n; q++) {
                        map[n++] = (struct proc_fd_map) { f->tap[q], child };
                        ret[i].tap[q] = child++;
                }
                for (unsigned q = 0; q < f->n && f->vhost[0] >= 0; q++) {
                        map[n++] = (struct proc_fd_map) { f->vhost[q], child };
                        ret[i].vhost[q] = child++;
                }
        }
        return n;
}

/* The guest's NICs into its spec copy (atomically): what a hard reboot, a restart of
 * the guest and a migration start from. */
static int nics_persist(struct guest *g, vmsup_error **err) {
        _cleanup_json_ json_object *copy = json_object_from_file(g->dirs.spec_copy);
        json_object *nics;
        const char *text;

        if (!copy || !json_object_is_type(copy, json_type_object))
                return vmsup_fail(err, VMSUP_ERR_IO, 0, "read the guest's spec copy '%s'", g->dirs.spec_copy);
        nics = guest_spec_nics_to_json(g->spec.nics, g->spec.n_nics);
        if (!nics)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "the guest's NICs");
        json_object_object_add(copy, "nics", nics);
        text = json_object_to_json_string_ext(copy, JSON_C_TO_STRING_PRETTY);
        return write_file_atomic(g->dirs.spec_copy, text, strlen(text), 0600, err);
}

int guest_nics_spec_copy(const struct guest *g, json_object *copy) {
        json_object *nics = guest_spec_nics_to_json(g->spec.nics, g->spec.n_nics);

        if (!nics)
                return -ENOMEM;
        if (g->spec.n_nics)
                json_object_object_add(copy, "nics", nics);
        else {
                json_object_put(nics);
                json_object_object_del(copy, "nics");
        }
        return 0;
}

/* One hot-plug or removal that a client waits for (at most one at a time). */
struct nic_op {
        struct guest *g;
        struct control_conn *conn; /* NULL once answered (a removal that timed out) */
        bool add;
        struct guest_nic nic;      /* add: the new NIC (owned) */
        unsigned slot;             /* remove: the NIC's slot */
        struct nic_fds fds;        /* add: ours until getfd queued copies */
        bool vhost;                /* add: QEMU gets vhost-net fds too */
        struct evloop_source *timer; /* remove: DEVICE_DELETED's deadline */
};

static void op_free(struct guest *g, struct nic_op *op) {
        if (!op)
                return;
        if (g->nic_op == op)
                g->nic_op = NULL;
        op->timer = evloop_source_remove(op->timer);
        nic_close(&op->fds, false);
        guest_nic_clear(&op->nic);
        control_conn_free(op->conn);
        free(op);
}

static void op_reply_error(struct nic_op *op, enum vmsup_err_kind kind, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));
static void op_reply_error(struct nic_op *op, enum vmsup_err_kind kind, const char *fmt, ...) {
        char msg[640];
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        log_error("%s", msg);
        if (op->conn) {
                control_conn_reply_error(op->conn, kind, msg);
                op->conn = control_conn_free(op->conn);
        }
}

static json_object *nic_reply(const struct guest_nic *nic) {
        json_object *o = json_object_new_object();

        json_object_object_add(o, "ifname", json_object_new_string(nic->ifname));
        json_object_object_add(o, "mac", json_object_new_string(nic->mac));
        json_object_object_add(o, "model", json_object_new_string(nic->model));
        json_object_object_add(o, "slot", json_object_new_int((int) nic->slot));
        return o;
}

static int queue(struct guest *g, const char *cmd, json_object *args, int fd, qmp_reply_fn fn, void *userdata,
                 vmsup_error **err) {
        int r = qmp_client_execute_async(g->qmp, cmd, args, fd, QMP_COMMAND_TIMEOUT, fn, userdata, err);

        json_object_put(args);
        return r;
}

static json_object *args1(const char *key, const char *value) {
        json_object *o = json_object_new_object();

        json_object_object_add(o, key, json_object_new_string(value));
        return o;
}

static void on_ignore(void *userdata, json_object *ret, const vmsup_error *err) {
        (void) userdata;
        (void) ret;
        if (err)
                log_debug("NIC: %s", err->msg);
}

static void fdname(char *buf, size_t len, unsigned slot, const char *what, unsigned q) {
        snprintf(buf, len, "vmsup-nic%u-%s%u", slot, what, q);
}

/* After a failed netdev_add: QEMU keeps what getfd gave it until something takes it. */
static void close_fdnames(struct guest *g, const struct nic_op *op) {
        vmsup_error *err = NULL;

        for (unsigned q = 0; g->qmp && q < op->nic.queues; q++) {
                char name[48];

                fdname(name, sizeof(name), op->nic.slot, "tap", q);
                if (queue(g, "closefd", args1("fdname", name), -1, on_ignore, NULL, &err) < 0)
                        err = vmsup_error_free(err);
                if (!op->vhost)
                        continue;
                fdname(name, sizeof(name), op->nic.slot, "vhost", q);
                if (queue(g, "closefd", args1("fdname", name), -1, on_ignore, NULL, &err) < 0)
                        err = vmsup_error_free(err);
        }
}

static void on_add_device(void *userdata, json_object *ret, const vmsup_error *err) {
        struct nic_op *op = userdata;
        struct guest *g = op->g;
        struct guest_nic *nics;
        vmsup_error *perr = NULL;
        char id[32];

        (void) ret;
        if (err) {
                snprintf(id, sizeof(id), QEMU_NIC_NETDEV_ID, op->nic.slot);
                if (g->qmp && queue(g, "netdev_del", args1("id", id), -1, on_ignore, NULL, &perr) < 0)
                        perr = vmsup_error_free(perr);
                op_reply_error(op, err->kind ? err->kind : VMSUP_ERR_FAILED, "NIC on tap '%s': device_add: %s",
                               op->nic.ifname, err->msg);
                op_free(g, op);
                return;
        }
        nics = realloc(g->spec.nics, (g->spec.n_nics + 1) * sizeof(*nics));
        if (!nics) {
                op_reply_error(op, VMSUP_ERR_SYSTEM, "NIC on tap '%s' is in the guest, but out of memory to record it",
                               op->nic.ifname);
                op_free(g, op);
                return;
        }
        g->spec.nics = nics;
        nics[g->spec.n_nics++] = op->nic;
        memset(&op->nic, 0, sizeof(op->nic));
        if (nics_persist(g, &perr) < 0) {
                /* the guest has it, and this supervisor's hard reboots keep it */
                op_reply_error(op, perr->kind, "NIC %s on tap '%s' is in the guest, but the spec copy was not "
                               "updated: %s", nics[g->spec.n_nics - 1].mac, nics[g->spec.n_nics - 1].ifname,
                               perr->msg);
                vmsup_error_free(perr);
                op_free(g, op);
                return;
        }
        log_info("NIC %s on tap '%s' (%s, slot %u) hot-plugged", nics[g->spec.n_nics - 1].mac,
                 nics[g->spec.n_nics - 1].ifname, nics[g->spec.n_nics - 1].model, nics[g->spec.n_nics - 1].slot);
        control_conn_reply_ok(op->conn, nic_reply(&nics[g->spec.n_nics - 1]));
        op_free(g, op);
}

static void on_add_netdev(void *userdata, json_object *ret, const vmsup_error *err) {
        struct nic_op *op = userdata;
        struct guest *g = op->g;
        vmsup_error *qerr = NULL;

        (void) ret;
        if (err) {
                close_fdnames(g, op);
                nic_close(&op->fds, true);
                op_reply_error(op, err->kind ? err->kind : VMSUP_ERR_FAILED, "NIC on tap '%s': netdev_add: %s",
                               op->nic.ifname, err->msg);
                op_free(g, op);
                return;
        }
        if (queue(g, "device_add", qemu_nic_device_json(g->cfg, &op->nic), -1, on_add_device, op, &qerr) < 0) {
                op_reply_error(op, qerr->kind, "NIC on tap '%s': device_add: %s", op->nic.ifname, qerr->msg);
                vmsup_error_free(qerr);
                op_free(g, op);
        }
}

static bool nic_op_refused(struct guest *g, struct control_conn *c) {
        const char *why = NULL;

        if (g->state != GUEST_RUNNING || !g->qmp)
                why = "the guest is not running";
        else if (g->nic_op)
                why = "another NIC hot-plug or removal is under way";
        if (!why)
                return false;
        control_conn_reply_error(c, VMSUP_ERR_BUSY, why);
        control_conn_free(c);
        return true;
}

static bool refuse(struct control_conn *c, enum vmsup_err_kind kind, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));
static bool refuse(struct control_conn *c, enum vmsup_err_kind kind, const char *fmt, ...) {
        char msg[512];
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        control_conn_reply_error(c, kind, msg);
        control_conn_free(c);
        return true;
}

static const char *req_string(json_object *req, const char *key) {
        json_object *v;

        return json_object_object_get_ex(req, key, &v) && json_object_is_type(v, json_type_string)
                       ? json_object_get_string(v)
                       : NULL;
}

static unsigned req_uint(json_object *req, const char *key, unsigned dflt) {
        json_object *v;

        if (!json_object_object_get_ex(req, key, &v) || !json_object_is_type(v, json_type_int))
                return dflt;
        return json_object_get_int64(v) < 0 || json_object_get_int64(v) > 65535 ? 0
                                                                               : (unsigned) json_object_get_int64(v);
}

void guest_nic_add(struct guest *g, struct control_conn *c) {
        const char *ifname = req_string(c->request, "ifname"), *mac = req_string(c->request, "mac"),
                   *model = req_string(c->request, "model");
        unsigned queues = req_uint(c->request, "queues", 1), mtu = req_uint(c->request, "mtu", 0), used = 0, slot;
        vmsup_error *err = NULL;
        struct nic_op *op;
        char lmac[18] = "";

        if (nic_op_refused(g, c))
                return;
        if (!ifname) {
                refuse(c, VMSUP_ERR_USAGE, "nic add without an ifname");
                return;
        }
        model = model ? model : "virtio";
        if (mac) {
                snprintf(lmac, sizeof(lmac), "%s", mac);
                for (char *p = lmac; *p; p++)
                        *p = (char) tolower((unsigned char) *p);
        }
        /* (a MAC too long for lmac is checked as given, and refused) */
        if (guest_nic_check("nic", ifname, !mac ? NULL : strlen(mac) == 17 ? lmac : mac, model, mtu, queues, &err) < 0) {
                control_conn_reply_error(c, err->kind, err->msg);
                control_conn_free(c);
                vmsup_error_free(err);
                return;
        }
        for (size_t i = 0; i < g->spec.n_nics; i++) {
                used |= 1u << g->spec.nics[i].slot;
                if (streq(g->spec.nics[i].ifname, ifname)) {
                        refuse(c, VMSUP_ERR_DATA, "the guest has a NIC on tap '%s' already (%s)", ifname,
                               g->spec.nics[i].mac);
                        return;
                }
                if (mac && streq(g->spec.nics[i].mac, lmac)) {
                        refuse(c, VMSUP_ERR_DATA, "the guest has a NIC with MAC %s already (on tap '%s')", lmac,
                               g->spec.nics[i].ifname);
                        return;
                }
        }
        used |= g->nic_unplugging; /* a slot whose device QEMU still has */
        for (slot = 0; slot < GUEST_NIC_MAX && (used & (1u << slot)); slot++)
                ;
        if (slot == GUEST_NIC_MAX) {
                refuse(c, VMSUP_ERR_DATA, "the guest has %d NICs already, the most it can have", GUEST_NIC_MAX);
                return;
        }
        op = calloc(1, sizeof(*op));
        if (!op || !(op->nic.ifname = strdup(ifname)) || !(op->nic.model = strdup(model))) {
                if (op)
                        guest_nic_clear(&op->nic);
                free(op);
                refuse(c, VMSUP_ERR_SYSTEM, "out of memory");
                return;
        }
        op->g = g;
        op->conn = c;
        op->add = true;
        op->nic.mtu = mtu;
        op->nic.queues = queues;
        op->nic.slot = slot;
        nic_fds_init(&op->fds);
        if (mac)
                snprintf(op->nic.mac, sizeof(op->nic.mac), "%s", lmac);
        else
                guest_nic_derive_mac(g->spec.uuid, slot, op->nic.mac);
        for (size_t i = 0; !mac && i < g->spec.n_nics; i++)
                if (streq(g->spec.nics[i].mac, op->nic.mac)) {
                        op_reply_error(op, VMSUP_ERR_DATA, "the MAC derived for slot %u, %s, is NIC '%s''s: give "
                                       "--mac", slot, op->nic.mac, g->spec.nics[i].ifname);
                        op_free(g, op);
                        return;
                }
        g->nic_op = op;
        if (nic_open(&op->nic, "nic add", &op->fds, &err) < 0) {
                op_reply_error(op, err->kind, "%s", err->msg);
                vmsup_error_free(err);
                op_free(g, op);
                return;
        }
        log_vhost(g, &op->fds);
        op->vhost = op->fds.vhost[0] >= 0;
        {
                char taps[GUEST_NIC_MAX_QUEUES][48], vhosts[GUEST_NIC_MAX_QUEUES][48];
                char *tapv[GUEST_NIC_MAX_QUEUES], *vhostv[GUEST_NIC_MAX_QUEUES];
                bool vhost = op->vhost;

                /* the QMP client sends a copy of each fd with its getfd; ours close after */
                for (unsigned q = 0; q < queues; q++) {
                        fdname(taps[q], sizeof(taps[q]), slot, "tap", q);
                        fdname(vhosts[q], sizeof(vhosts[q]), slot, "vhost", q);
                        tapv[q] = taps[q];
                        vhostv[q] = vhosts[q];
                        if (queue(g, "getfd", args1("fdname", taps[q]), op->fds.tap[q], on_ignore, NULL, &err) < 0 ||
                            (vhost &&
                             queue(g, "getfd", args1("fdname", vhosts[q]), op->fds.vhost[q], on_ignore, NULL, &err) < 0))
                                goto qfail;
                }
                if (queue(g, "netdev_add", qemu_nic_netdev_json(&op->nic, tapv, vhost ? vhostv : NULL), -1,
                          on_add_netdev, op, &err) < 0)
                        goto qfail;
                /* our copies go; the tap's MTU stays set unless netdev_add fails */
                for (int q = 0; q < GUEST_NIC_MAX_QUEUES; q++) {
                        closep(&op->fds.tap[q]);
                        closep(&op->fds.vhost[q]);
                        op->fds.tap[q] = op->fds.vhost[q] = -1;
                }
                guest_qmp_watch(g);
                return;
qfail:
                nic_close(&op->fds, true);
                op_reply_error(op, err->kind, "nic add: %s", err->msg);
                vmsup_error_free(err);
                close_fdnames(g, op);
                op_free(g, op);
                guest_qmp_watch(g);
        }
}

/* The device is gone from the guest: its netdev goes, and the NIC from the spec. */
static void nic_removed(struct guest *g, unsigned slot) {
        vmsup_error *err = NULL;
        struct nic_op *op = g->nic_op && !g->nic_op->add && g->nic_op->slot == slot ? g->nic_op : NULL;
        char id[32], mac[18] = "?";
        size_t i;

        g->nic_unplugging &= ~(1u << slot);
        snprintf(id, sizeof(id), QEMU_NIC_NETDEV_ID, slot);
        if (g->qmp && queue(g, "netdev_del", args1("id", id), -1, on_ignore, NULL, &err) < 0)
                err = vmsup_error_free(err);
        for (i = 0; i < g->spec.n_nics && g->spec.nics[i].slot != slot; i++)
                ;
        if (i < g->spec.n_nics) {
                snprintf(mac, sizeof(mac), "%s", g->spec.nics[i].mac);
                guest_nic_clear(&g->spec.nics[i]);
                memmove(&g->spec.nics[i], &g->spec.nics[i + 1], (g->spec.n_nics - i - 1) * sizeof(g->spec.nics[0]));
                g->spec.n_nics--;
        }
        if (nics_persist(g, &err) < 0) {
                if (op)
                        op_reply_error(op, err->kind, "NIC %s is gone from the guest, but the spec copy was not "
                                       "updated: %s", mac, err->msg);
                else
                        log_error("NIC %s is gone from the guest, but the spec copy was not updated: %s", mac,
                                  err->msg);
                vmsup_error_free(err);
        } else {
                log_info("NIC %s removed (slot %u)", mac, slot);
                if (op && op->conn) {
                        control_conn_reply_ok(op->conn, json_object_new_string("removed"));
                        op->conn = control_conn_free(op->conn);
                }
        }
        op_free(g, op);
        guest_qmp_watch(g);
}

static void on_remove_timer(struct evloop_source *s, void *userdata) {
        struct nic_op *op = userdata;
        struct guest *g = op->g;

        (void) s;
        /* the device may still go later (DEVICE_DELETED then completes the removal) */
        op_reply_error(op, VMSUP_ERR_TIMEOUT,
                       "NIC in slot %u: the guest did not release the device within %d s of device_del (its "
                       "driver or the PCIe hot-plug in its kernel did not answer); it stays in the guest and "
                       "its spec until it does",
                       op->slot, NIC_REMOVE_TIMEOUT_MS / 1000);
        op_free(g, op);
}

static void on_device_del(void *userdata, json_object *ret, const vmsup_error *err) {
        struct nic_op *op = userdata;
        struct guest *g = op->g;
        vmsup_error *e = NULL;

        (void) ret;
        if (err) {
                g->nic_unplugging &= ~(1u << op->slot);
                op_reply_error(op, err->kind ? err->kind : VMSUP_ERR_FAILED, "NIC in slot %u: device_del: %s",
                               op->slot, err->msg);
                op_free(g, op);
                return;
        }
        if (evloop_add_timer(g->loop, monotonic_ms() + NIC_REMOVE_TIMEOUT_MS, on_remove_timer, op, &op->timer, &e) <
            0) {
                op_reply_error(op, e->kind, "NIC in slot %u: %s", op->slot, e->msg);
                vmsup_error_free(e);
                op_free(g, op);
        }
}

void guest_nic_remove(struct guest *g, struct control_conn *c) {
        const char *mac = req_string(c->request, "mac");
        vmsup_error *err = NULL;
        struct nic_op *op;
        char lmac[18] = "", id[32];
        size_t i;

        if (nic_op_refused(g, c))
                return;
        if (!mac) {
                refuse(c, VMSUP_ERR_USAGE, "nic remove without a mac");
                return;
        }
        snprintf(lmac, sizeof(lmac), "%s", mac);
        for (char *p = lmac; *p; p++)
                *p = (char) tolower((unsigned char) *p);
        for (i = 0; i < g->spec.n_nics && !streq(g->spec.nics[i].mac, lmac); i++)
                ;
        if (i == g->spec.n_nics) {
                refuse(c, VMSUP_ERR_NOT_FOUND, "the guest has no NIC with MAC %s", mac);
                return;
        }
        if (g->nic_unplugging & (1u << g->spec.nics[i].slot)) {
                refuse(c, VMSUP_ERR_BUSY, "NIC %s: a removal is under way already; the guest has not released it",
                       lmac);
                return;
        }
        op = calloc(1, sizeof(*op));
        if (!op) {
                refuse(c, VMSUP_ERR_SYSTEM, "out of memory");
                return;
        }
        op->g = g;
        op->conn = c;
        op->slot = g->spec.nics[i].slot;
        nic_fds_init(&op->fds);
        g->nic_op = op;
        g->nic_unplugging |= 1u << op->slot;
        snprintf(id, sizeof(id), QEMU_NIC_DEVICE_ID, op->slot);
        if (queue(g, "device_del", args1("id", id), -1, on_device_del, op, &err) < 0) {
                g->nic_unplugging &= ~(1u << op->slot);
                op_reply_error(op, err->kind, "nic remove: %s", err->msg);
                vmsup_error_free(err);
                op_free(g, op);
        }
        guest_qmp_watch(g);
}

void guest_nics_qemu_event(struct guest *g, const char *event, json_object *data) {
        json_object *dev;
        unsigned slot;
        char tail;

        if (!streq(event, "DEVICE_DELETED") || !data || !json_object_object_get_ex(data, "device", &dev) ||
            sscanf(json_object_get_string(dev), "net%u%c", &slot, &tail) != 1 || slot >= GUEST_NIC_MAX ||
            !(g->nic_unplugging & (1u << slot)))
                return;
        nic_removed(g, slot);
}

void guest_nics_qmp_dropped(struct guest *g) {
        struct nic_op *op = g->nic_op;

        /* QEMU is gone: the next one is started from the spec, unplugs included */
        g->nic_unplugging = 0;
        if (!op)
                return;
        op_reply_error(op, VMSUP_ERR_FAILED, "the NIC %s was interrupted: QEMU's monitor is gone",
                       op->add ? "hot-plug" : "removal");
        op_free(g, op);
}
