#include "config.h"

/* The control socket on the event loop: clients accepted (within the cap, backing off
 * when no fd is free), their request read within its deadline, and answered. */

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"
#include "common/util.h"
#include "nova/tpmrules.h"
#include "qmp/client.h"
#include "supervisor/control.h"
#include "supervisor/guestdirs.h"
#include "supervisor/qmppolicy.h"

#include "supervisor/guest_internal.h"

struct pending_reply {
        struct guest *g;
        struct control_conn *conn;
};

static void on_status_reply(void *userdata, json_object *ret, const vmsup_error *err) {
        struct pending_reply *p = userdata;
        struct guest *g = p->g;
        json_object *o = json_object_new_object(), *tpm, *st;

        json_object_object_add(o, "uuid", json_object_new_string(g->spec.uuid));
        json_object_object_add(o, "name", json_object_new_string(g->spec.name));
        json_object_object_add(o, "state", json_object_new_string(guest_state_name(g)));
        json_object_object_add(o, "pid", json_object_new_int(getpid()));
        json_object_object_add(o, "qemu_pid", g->qemu.pid ? json_object_new_int(g->qemu.pid) : NULL);
        json_object_object_add(o, "swtpm_pid", g->swtpm.pid ? json_object_new_int(g->swtpm.pid) : NULL);
        json_object_object_add(o, "uptime_s", json_object_new_int64(g->started_at ? (int64_t) (time(NULL) - g->started_at) : 0));
        tpm = vtpm_config_to_json(&g->tpm);
        json_object_object_add(o, "tpm", tpm);
        json_object_object_add(o, "console_attached", json_object_new_boolean(guest_console_attached(g)));
        /* the NICs the guest has now (hot-plugged ones included) */
        if (g->spec.n_nics)
                json_object_object_add(o, "nics", guest_spec_nics_to_json(g->spec.nics, g->spec.n_nics));
        /* the graphical console, while QEMU's monitor takes its clients (vnc.c) */
        if (g->vnc_src)
                json_object_object_add(o, "vnc_socket", json_object_new_string(g->dirs.vnc_socket));
        if (!g->qmp && g->qmp_lost[0] && g->qemu.pid && !g->qemu.exited) {
                /* QEMU runs, but nothing tells us what it does */
                json_object_object_add(o, "qemu_status", json_object_new_string("unknown (QMP lost)"));
                json_object_object_add(o, "qmp_lost", json_object_new_string(g->qmp_lost));
        } else if (ret && json_object_object_get_ex(ret, "status", &st))
                json_object_object_add(o, "qemu_status", json_object_get(st));
        else if (err && err->errnum == ETIMEDOUT)
                /* its main loop is held: a migration on a dead link, a stuck device */
                json_object_object_add(o, "qemu_status", json_object_new_string("not answering"));
        else
                json_object_object_add(o, "qemu_status", json_object_new_string(err ? "unknown" : g->qemu_status));
        {
                vmsup_error *merr = NULL;
                _cleanup_free_ char *marker = guest_dirs_stamp_read(g->dirs.migrated_out, &merr);

                if (marker)
                        json_object_object_add(o, "migrated_out", json_object_new_string(marker));
                vmsup_error_free(merr);
                merr = NULL;
                free(marker);
                marker = g->incoming ? NULL : guest_dirs_stamp_read(g->dirs.incoming, &merr);
                if (marker)
                        json_object_object_add(o, "incoming", json_object_new_string(marker));
                vmsup_error_free(merr);
        }
        json_object_object_add(o, "event_subscribers", json_object_new_int((int) events_count(g->events)));
        if (g->migration && g->migration->status)
                g->migration->status(g, o); /* its state and progress */
        control_conn_reply_ok(p->conn, o);
        control_conn_free(p->conn);
        free(p);
}

static void on_qmp_passthrough_reply(void *userdata, json_object *ret, const vmsup_error *err) {
        struct pending_reply *p = userdata;

        if (err)
                control_conn_reply_error(p->conn, err->kind ? err->kind : VMSUP_ERR_FAILED, err->msg);
        else
                control_conn_reply_ok(p->conn, json_object_get(ret));
        control_conn_free(p->conn);
        free(p);
}

static void on_reset_reply(void *userdata, json_object *ret, const vmsup_error *err) {
        struct pending_reply *p = userdata;

        (void) ret;
        if (err)
                control_conn_reply_error(p->conn, err->kind ? err->kind : VMSUP_ERR_FAILED, err->msg);
        else {
                log_info("guest rebooted (system_reset)");
                control_conn_reply_ok(p->conn, json_object_new_string("rebooted"));
        }
        control_conn_free(p->conn);
        free(p);
}

static void on_resolve_reply(void *userdata, json_object *ret, const vmsup_error *err) {
        struct pending_reply *p = userdata;

        (void) ret;
        if (err) {
                log_error("the migrated-out marker is removed, but the guest stays paused: cont: %s", err->msg);
                control_conn_reply_error(p->conn, err->kind ? err->kind : VMSUP_ERR_FAILED, err->msg);
        } else {
                log_info("an operator resolved the hand-over: this host's copy is the one; the guest runs here again");
                control_conn_reply_ok(p->conn, json_object_new_string("kept: the guest runs here again"));
        }
        control_conn_free(p->conn);
        free(p);
}

static void forward_qmp(struct guest *g, struct control_conn *c, const char *cmd, json_object *args, int timeout_ms,
                        qmp_reply_fn fn);

/* `vmsup resolve --keep` (vmsup(8), MIGRATION): an operator says this host's copy is the
 * one. A source's guest left paused by an undecided hand-over runs again; a destination's
 * unconfirmed copy becomes a plain guest of this host. */
static void resolve_keep(struct guest *g, struct control_conn *c) {
        char msg[600];

        if (access(g->dirs.migrated_out, F_OK) == 0) {
                if (unlink(g->dirs.migrated_out) < 0) {
                        snprintf(msg, sizeof(msg), "remove '%s': %s", g->dirs.migrated_out, strerror(errno));
                        control_conn_reply_error(c, VMSUP_ERR_IO, msg);
                        control_conn_free(c);
                        return;
                }
                log_info("an operator resolved the hand-over: this host's copy is the one (removed %s)",
                         g->dirs.migrated_out);
                forward_qmp(g, c, "cont", NULL, QMP_COMMAND_TIMEOUT, on_resolve_reply);
                return;
        }
        if (guest_dirs_incoming_committed(&g->dirs)) {
                if (unlink(g->dirs.incoming) < 0) {
                        snprintf(msg, sizeof(msg), "remove '%s': %s", g->dirs.incoming, strerror(errno));
                        control_conn_reply_error(c, VMSUP_ERR_IO, msg);
                } else {
                        log_info("an operator resolved the hand-over: this host's copy is the one (removed %s)",
                                 g->dirs.incoming);
                        control_conn_reply_ok(c, json_object_new_string("kept: the guest is this host's"));
                }
                control_conn_free(c);
                return;
        }
        snprintf(msg, sizeof(msg), "guest %s has no undecided live migration on this host (no %s, no committed %s): "
                 "nothing to resolve", g->spec.uuid, GUEST_MIGRATED_OUT, GUEST_INCOMING);
        control_conn_reply_error(c, VMSUP_ERR_DATA, msg);
        control_conn_free(c);
}

static bool get_bool(json_object *req, const char *key) {
        json_object *v;

        return json_object_object_get_ex(req, key, &v) && json_object_get_boolean(v);
}

/* Queue a QMP command whose reply answers the control client; takes the connection. */
static void forward_qmp(struct guest *g, struct control_conn *c, const char *cmd, json_object *args, int timeout_ms,
                        qmp_reply_fn fn) {
        struct pending_reply *p = calloc(1, sizeof(*p));
        vmsup_error *err = NULL;

        /* a crashed guest kept for its dump takes QMP commands too */
        if (!p || !g->qmp || (g->state != GUEST_RUNNING && g->state != GUEST_CRASHED)) {
                char msg[320];

                free(p);
                snprintf(msg, sizeof(msg), "%s%s%s", g->qmp ? "the guest is not running" : "QEMU is not reachable",
                         !g->qmp && g->qmp_lost[0] ? ": QMP lost: " : "", !g->qmp ? g->qmp_lost : "");
                control_conn_reply_error(c, VMSUP_ERR_BUSY, msg);
                control_conn_free(c);
                return;
        }
        p->g = g;
        p->conn = c;
        if (qmp_client_execute_async(g->qmp, cmd, args, -1, timeout_ms, fn, p, &err) < 0) {
                control_conn_reply_error(c, err->kind, err->msg);
                control_conn_free(c);
                free(p);
                vmsup_error_free(err);
                return;
        }
        guest_qmp_watch(g);
}

/* The guest's migrated-out marker: an undecided hand-over to another host. */
static bool handed_over(const struct guest *g) {
        return access(g->dirs.migrated_out, F_OK) == 0;
}

/* {"cmd": "events"}: the connection becomes a subscriber of the event stream (events.h);
 * it no longer counts as a control connection. */
static void subscribe(struct guest *g, struct control_conn *c) {
        json_object *hello = json_object_new_object(), *v;
        vmsup_error *err = NULL;
        int64_t since = -1;
        int fd = c->fd;

        /* "since": the client's connect time (ms since the epoch): what happened while its
         * request waited for the loop (a start holds it) comes first */
        if (json_object_object_get_ex(c->request, "since", &v) && json_object_is_type(v, json_type_int))
                since = json_object_get_int64(v);
        c->fd = -1;
        control_conn_free(c);
        json_object_object_add(hello, "uuid", json_object_new_string(g->spec.uuid));
        json_object_object_add(hello, "name", json_object_new_string(g->spec.name));
        json_object_object_add(hello, "state", json_object_new_string(guest_state_name(g)));
        if (events_subscribe(g->events, fd, hello, since, &err) < 0) {
                log_warning("vmsup events: %s", err->msg);
                vmsup_error_free(err);
        }
}

static void handle_request(struct guest *g, struct control_conn *c) {
        json_object *cmdv, *v;
        const char *cmd = json_object_object_get_ex(c->request, "cmd", &cmdv) ? json_object_get_string(cmdv) : "";
        enum qmp_policy verdict;
        char why[512];

        if (streq(cmd, "console")) { /* the log and the console go on through a migration */
                guest_console_attach(g, c, get_bool(c->request, "force"));
                return;
        }
        /* a migration that runs takes every request but status and events */
        if (!streq(cmd, "status") && !streq(cmd, "events") && g->migration && g->migration->request &&
            g->migration->request(g, c, cmd))
                return;
        if ((streq(cmd, "reboot") || streq(cmd, "migrate") || streq(cmd, "resume") || streq(cmd, "tpm-export")) &&
            handed_over(g)) {
                /* a hard reboot starts QEMU afresh from the sealed state, a soft one and a
                 * migration's rollback resume the guest: a second running copy */
                snprintf(why, sizeof(why),
                         "'%s' is refused: the guest was handed over to another host by a live migration whose "
                         "outcome is unknown (%s), and may run there; see vmsup(8), MIGRATION",
                         cmd, g->dirs.migrated_out);
                log_warning("%s", why);
                control_conn_reply_error(c, VMSUP_ERR_BUSY, why);
                control_conn_free(c);
                return;
        }
        if (streq(cmd, "status")) {
                if (g->qmp && (g->state == GUEST_RUNNING || g->state == GUEST_CRASHED))
                        forward_qmp(g, c, "query-status", NULL, STATUS_QMP_TIMEOUT_MS, on_status_reply);
                else {
                        struct pending_reply *p = calloc(1, sizeof(*p));

                        if (!p) {
                                control_conn_free(c);
                                return;
                        }
                        *p = (struct pending_reply) { g, c };
                        on_status_reply(p, NULL, NULL);
                }
        } else if (streq(cmd, "stop")) {
                unsigned timeout = g->cfg->supervisor.stop_timeout;

                if (json_object_object_get_ex(c->request, "timeout", &v) && json_object_is_type(v, json_type_int) &&
                    json_object_get_int(v) >= 0)
                        timeout = (unsigned) json_object_get_int(v);
                log_info("stop requested (%s)", get_bool(c->request, "force") ? "forced" : "graceful");
                c->next = g->waiters;
                g->waiters = c;
                if (g->state == GUEST_RUNNING)
                        guest_begin_stop(g, timeout, get_bool(c->request, "force"), false);
                else if (g->state == GUEST_CRASHED)
                        guest_begin_stop(g, 0, true, false); /* paused: no power button to wait for */
                else if (get_bool(c->request, "force") && g->qemu.pid)
                        guest_begin_stop(g, 0, true, g->state == GUEST_REBOOTING && false);
        } else if (streq(cmd, "reboot")) {
                if (g->state != GUEST_RUNNING && !(g->state == GUEST_CRASHED && get_bool(c->request, "hard"))) {
                        control_conn_reply_error(c, VMSUP_ERR_BUSY, "the guest is not running");
                        control_conn_free(c);
                } else if (get_bool(c->request, "hard")) {
                        log_info("hard reboot requested: QEMU is restarted, the TPM state is kept");
                        c->next = g->waiters;
                        g->waiters = c;
                        guest_begin_stop(g, 0, true, true);
                } else
                        forward_qmp(g, c, "system_reset", NULL, QMP_COMMAND_TIMEOUT, on_reset_reply);
        } else if (streq(cmd, "migrate")) {
                g->start_migration(g, c);
        } else if (streq(cmd, "tpm-export")) {
                guest_tpm_export_request(g, c);
        } else if (streq(cmd, "resume")) {
                forward_qmp(g, c, "cont", NULL, QMP_COMMAND_TIMEOUT, on_qmp_passthrough_reply);
        } else if (streq(cmd, "events")) {
                subscribe(g, c);
        } else if (streq(cmd, "resolve")) {
                resolve_keep(g, c);
        } else if (streq(cmd, "nic-add")) {
                guest_nic_add(g, c);
        } else if (streq(cmd, "nic-remove")) {
                guest_nic_remove(g, c);
        } else if (streq(cmd, "qmp")) {
                json_object *args = NULL;

                if (!json_object_object_get_ex(c->request, "command", &v) || !json_object_is_type(v, json_type_string)) {
                        control_conn_reply_error(c, VMSUP_ERR_USAGE, "qmp request without a command");
                        control_conn_free(c);
                        return;
                }
                json_object_object_get_ex(c->request, "arguments", &args);
                /* After an undecided hand-over the guest may run on the destination: two
                 * copies of one TPM must never run (docs/migration.md). */
                verdict = qmp_policy_check(json_object_get_string(v), args, handed_over(g), why, sizeof(why));
                if (verdict != QMP_POLICY_ALLOW) {
                        log_warning("%s", why);
                        control_conn_reply_error(
                                c, verdict == QMP_POLICY_REFUSED ? VMSUP_ERR_UNAVAILABLE : VMSUP_ERR_BUSY, why);
                        control_conn_free(c);
                        return;
                }
                forward_qmp(g, c, json_object_get_string(v), args, QMP_COMMAND_TIMEOUT, on_qmp_passthrough_reply);
        } else {
                control_conn_reply_error(c, VMSUP_ERR_USAGE, "unknown control request");
                control_conn_free(c);
        }
}

/* accept() failed for lack of a free fd. Level-triggered epoll would wake us again at
 * once for the same waiting client, for ever (a core spinning, a log line each time): an
 * fd from the reserve takes the waiting clients only to tell them why, then the listen
 * fd is not watched until accept_timer, CONTROL_ACCEPT_BACKOFF_MS later. One log line
 * per episode. */
static void accept_starved(struct guest *g, const vmsup_error *err) {
        vmsup_error *lerr = NULL;
        char msg[160];

        if (!g->accept_starved)
                log_warning("%s; control clients are refused until file descriptors are free again (%zu control "
                            "connections open)",
                            err->msg, control_conn_count());
        g->accept_starved = true;
        snprintf(msg, sizeof(msg), "the supervisor is out of file descriptors (%s); try again later",
                 strerror(err->errnum));
        closep(&g->fd_reserve[0]);
        g->fd_reserve[0] = -1;
        for (int i = 0; i < CONTROL_MAX_CLIENTS && control_accept_refuse(g->listen_fd, VMSUP_ERR_BUSY, msg) > 0; i++)
                ;
        guest_fd_reserve_fill(g);
        if (evloop_io_set_events(g->listen_src, 0, &lerr) < 0) {
                log_error("the control socket: %s", lerr->msg);
                vmsup_error_free(lerr);
        }
        evloop_timer_set(g->accept_timer, monotonic_ms() + CONTROL_ACCEPT_BACKOFF_MS);
}

/* The back-off is over: watch the listen fd again. */
static void accept_resume(struct guest *g) {
        vmsup_error *err = NULL;

        evloop_timer_set(g->accept_timer, -1);
        if (evloop_io_set_events(g->listen_src, EPOLLIN, &err) < 0) {
                log_error("the control socket: %s", err->msg);
                vmsup_error_free(err);
        }
}

static void on_accept_timer(struct evloop_source *s, void *userdata) {
        (void) s;
        accept_resume(userdata);
}

static void accept_conn(struct guest *g);
static void handle_conn(struct guest *g, struct control_conn *c);

static bool control_listening(const struct guest *g) {
        return g->listen_fd >= 0 && evloop_timer_deadline(g->accept_timer) < 0;
}

static void on_listen(struct evloop_source *s, int fd, uint32_t revents, void *userdata) {
        (void) s;
        (void) fd;
        (void) revents;
        accept_conn(userdata);
}

static struct control_conn *conn_of(struct guest *g, const struct evloop_source *s) {
        for (struct control_conn *c = g->conns; c; c = c->next)
                if (c->io_src == s || c->timer_src == s)
                        return c;
        return NULL;
}

static void on_conn_io(struct evloop_source *s, int fd, uint32_t revents, void *userdata) {
        struct guest *g = userdata;
        struct control_conn *c = conn_of(g, s);

        (void) fd;
        (void) revents;
        if (!c)
                return;
        handle_conn(g, c);
        guest_qmp_watch(g); /* a request may have queued a command (or, a migration, dispatched some) */
}

/* Take c off the clients reading their request, and off the loop. */
static void conn_unlink(struct guest *g, struct control_conn *c) {
        for (struct control_conn **pp = &g->conns; *pp; pp = &(*pp)->next)
                if (*pp == c) {
                        *pp = c->next;
                        break;
                }
        c->next = NULL;
        c->io_src = evloop_source_remove(c->io_src);
        c->timer_src = evloop_source_remove(c->timer_src);
}

/* A client that connects and says nothing (or half a request) holds an fd: not for long. */
static void conn_expire(struct guest *g, struct control_conn *c) {
        char msg[96];

        conn_unlink(g, c);
        snprintf(msg, sizeof(msg), "no whole request within %d s: closed", CONTROL_REQUEST_TIMEOUT_MS / 1000);
        control_conn_reply_error(c, VMSUP_ERR_BUSY, msg);
        control_conn_free(c);
}

static void on_conn_timer(struct evloop_source *s, void *userdata) {
        struct guest *g = userdata;
        struct control_conn *c = conn_of(g, s);

        if (c)
                conn_expire(g, c);
}

static void accept_conn(struct guest *g) {
        vmsup_error *err = NULL;
        struct control_conn *c;

        if (!control_listening(g))
                return;
        c = control_accept(g->listen_fd, &err);
        if (err) {
                if (err->errnum == EMFILE || err->errnum == ENFILE)
                        accept_starved(g, err);
                else
                        log_warning("%s", err->msg);
                vmsup_error_free(err);
        }
        if (!c)
                return;
        g->accept_starved = false;
        if (control_conn_count() > CONTROL_MAX_CLIENTS) {
                char msg[128];

                snprintf(msg, sizeof(msg), "too many control connections (%d open); try again later",
                         CONTROL_MAX_CLIENTS);
                control_conn_reply_error(c, VMSUP_ERR_BUSY, msg);
                control_conn_free(c);
                return;
        }
        c->deadline = monotonic_ms() + CONTROL_REQUEST_TIMEOUT_MS;
        if (evloop_add_io(g->loop, c->fd, EPOLLIN, on_conn_io, g, &c->io_src, &err) < 0 ||
            evloop_add_timer(g->loop, c->deadline, on_conn_timer, g, &c->timer_src, &err) < 0) {
                log_warning("control client: %s", err->msg);
                vmsup_error_free(err);
                control_conn_free(c);
                return;
        }
        c->next = g->conns;
        g->conns = c;
}

static void handle_conn(struct guest *g, struct control_conn *c) {
        vmsup_error *err = NULL;
        int r = control_conn_read(c, &err);

        if (r == 0)
                return;
        conn_unlink(g, c);
        if (r < 0) {
                control_conn_reply_error(c, err->kind, err->msg);
                control_conn_free(c);
                vmsup_error_free(err);
                return;
        }
        handle_request(g, c);
}

int guest_control_open(struct guest *g, vmsup_error **err) {
        int r;

        if ((r = events_new(g->loop, g->spec.uuid, g->spec.name, &g->events, err)) < 0)
                return r;
        g->listen_fd = control_listen(g->dirs.control, err);
        if (g->listen_fd < 0)
                return g->listen_fd;
        if ((r = evloop_add_io(g->loop, g->listen_fd, EPOLLIN, on_listen, g, &g->listen_src, err)) < 0 ||
            (r = evloop_add_timer(g->loop, -1, on_accept_timer, g, &g->accept_timer, err)) < 0)
                return r;
        return 0;
}
