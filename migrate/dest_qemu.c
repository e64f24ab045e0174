/* QEMU's side of a live migration's destination (migrate/dest.c is the state machine):
 * the QMP commands, each asynchronous with its reply as the next step; QEMU's TLS for
 * the stream, the stream accepted from the source's host and handed to QEMU, its load,
 * and `cont` once the source commits. */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/util.h"
#include "migrate/dest.h"
#include "migrate/dest_internal.h"
#include "migrate/proto.h"

/* after QEMU reported its load failed: how long it has to end (and say why in its log) */
#define QEMU_FAILED_EXIT_MS 2000

/* ---- QMP ------------------------------------------------------------------------------ */

static void cmd_reply(void *userdata, json_object *ret, const vmsup_error *err) {
        struct dst_cmd *c = userdata;
        struct migrate_dest *d = c->d;

        if (d) {
                struct dst_cmd **pp = &d->cmds;

                while (*pp != c)
                        pp = &(*pp)->next;
                *pp = c->next;
                if (d->state != MIGRATE_DEST_FINISHED)
                        c->done(d, ret, err);
        }
        free(c);
}

static int qemu_cmd(struct migrate_dest *d, const char *command, json_object *args, int pass_fd,
               void (*done)(struct migrate_dest *d, json_object *ret, const vmsup_error *err), vmsup_error **err) {
        struct dst_cmd *c;
        int r;

        if (!d->qmp)
                return vmsup_fail(err, VMSUP_ERR_FAILED, 0, "QEMU's monitor is gone");
        c = calloc(1, sizeof(*c));
        if (!c)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "QMP command '%s'", command);
        *c = (struct dst_cmd) { .d = d, .done = done, .next = d->cmds };
        r = qmp_client_execute_async(d->qmp, command, args, pass_fd,
                                     d->env.qmp_timeout_ms > 0 ? d->env.qmp_timeout_ms : 30000, cmd_reply, c, err);
        if (r < 0) {
                free(c);
                return r;
        }
        d->cmds = c;
        if (d->env.qmp_queued)
                d->env.qmp_queued(d->env.userdata);
        return 0;
}

static void fail_reply(struct migrate_dest *d, const vmsup_error *err, const char *prefix) {
        dst_fail(d, dst_copy_error(err, prefix));
}

/* ---- QEMU receives the guest ------------------------------------------------------------ */

static void tls_added(struct migrate_dest *d, json_object *ret, const vmsup_error *err);
static void caps_set(struct migrate_dest *d, json_object *ret, const vmsup_error *err);
static void params_set(struct migrate_dest *d, json_object *ret, const vmsup_error *err);

void dst_qemu_setup(struct migrate_dest *d) {
        _cleanup_json_ json_object *creds = mig_qemu_tls_creds(MIGRATE_DEST_TLS_ID, d->env.qemu_tls_dir, true);
        vmsup_error *err = NULL;

        d->tls_t0 = monotonic_ms();
        if (qemu_cmd(d, "object-add", creds, -1, tls_added, &err) < 0)
                dst_fail(d, err);
}

static void tls_added(struct migrate_dest *d, json_object *ret, const vmsup_error *qerr) {
        _cleanup_json_ json_object *caps = NULL;
        vmsup_error *err = NULL;
        char prefix[600];

        (void) ret;
        dst_note(d, LOG_LEVEL_DEBUG, "migration: QEMU loaded the TLS credentials in %ld ms",
                 monotonic_ms() - d->tls_t0);
        if (qerr) {
                snprintf(prefix, sizeof(prefix), "QEMU's TLS credentials from '%s'", d->env.qemu_tls_dir);
                fail_reply(d, qerr, prefix);
                return;
        }
        /* return-path, and MIGRATION events: the end of an incoming migration */
        caps = mig_qemu_capabilities();
        if (qemu_cmd(d, "migrate-set-capabilities", caps, -1, caps_set, &err) < 0)
                dst_fail(d, err);
}

static void caps_set(struct migrate_dest *d, json_object *ret, const vmsup_error *qerr) {
        _cleanup_json_ json_object *params = json_object_new_object();
        vmsup_error *err = NULL;

        (void) ret;
        if (qerr) {
                fail_reply(d, qerr, NULL);
                return;
        }
        json_object_object_add(params, "tls-creds", json_object_new_string(MIGRATE_DEST_TLS_ID));
        if (qemu_cmd(d, "migrate-set-parameters", params, -1, params_set, &err) < 0)
                dst_fail(d, err);
}

static void on_stream(struct evloop_source *s, int fd, uint32_t revents, void *userdata);

/* We listen for QEMU's stream on the address the source reached us at, on a port the
 * kernel picks; the source learns it from READY. The connection is accepted by us (from
 * the source's address only) and handed to QEMU (on_stream()). */
static void params_set(struct migrate_dest *d, json_object *ret, const vmsup_error *qerr) {
        _cleanup_json_ json_object *ready = json_object_new_object();
        struct sockaddr_storage sa;
        socklen_t len = sizeof(sa);
        vmsup_error *err = NULL;
        int port;

        (void) ret;
        if (qerr) {
                fail_reply(d, qerr, NULL);
                return;
        }
        dst_mark(d, "QEMU's TLS set up");
        d->stream_listen_fd = migchan_listen(migchan_local_addr(d->ch), "0", &err);
        if (d->stream_listen_fd < 0) {
                vmsup_error_prefix(&err, "listen for QEMU's migration stream");
                dst_fail(d, err);
                return;
        }
        if (getsockname(d->stream_listen_fd, (struct sockaddr *) &sa, &len) < 0) {
                DST_FAIL(d, VMSUP_ERR_SYSTEM, errno, "listen for QEMU's migration stream");
                return;
        }
        port = ntohs(sa.ss_family == AF_INET6 ? ((struct sockaddr_in6 *) &sa)->sin6_port
                                              : ((struct sockaddr_in *) &sa)->sin_port);
        if (evloop_add_io(d->env.loop, d->stream_listen_fd, EPOLLIN, on_stream, d, &d->stream_io, &err) < 0) {
                dst_fail(d, err);
                return;
        }
        json_object_object_add(ready, "port", json_object_new_int(port));
        if (dst_send_json(d, MIG_READY, ready, &err) < 0) {
                dst_fail(d, err);
                return;
        }
        d->state = MIGRATE_DEST_READY_SENT;
        dst_note(d, LOG_LEVEL_INFO, "ready: QEMU receives on port %d (TLS)", port);
        dst_mark(d, "READY sent");
        dst_wait_for(d, DST_WAIT_SOURCE, MIG_MIGRATED, d->deadline);
}

/* The address of a peer as 16 bytes, an IPv4 one as IPv6 maps it (the source may reach
 * our dual-stack channel as ::ffff:a.b.c.d and the stream's listener as a.b.c.d). */
static bool address_of(const struct sockaddr_storage *sa, struct in6_addr *ret) {
        if (sa->ss_family == AF_INET6) {
                *ret = ((const struct sockaddr_in6 *) sa)->sin6_addr;
                return true;
        }
        if (sa->ss_family == AF_INET) {
                memset(ret, 0, sizeof(*ret));
                ret->s6_addr[10] = ret->s6_addr[11] = 0xff;
                memcpy(&ret->s6_addr[12], &((const struct sockaddr_in *) sa)->sin_addr, 4);
                return true;
        }
        return false;
}

static bool same_host(const struct sockaddr_storage *a, const struct sockaddr_storage *b) {
        struct in6_addr x, y;

        return address_of(a, &x) && address_of(b, &y) && memcmp(&x, &y, sizeof(x)) == 0;
}

/* A dead link fails QEMU's migration by itself after [migration] answer_timeout:
 * unacknowledged data or unanswered keepalive probes for that long end the connection. */
static void stream_keepalive(struct migrate_dest *d, int fd) {
        int one = 1, idle = d->answer_ms / 3000 > 0 ? d->answer_ms / 3000 : 1;
        unsigned user_timeout = (unsigned) d->answer_ms;

        if (setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one)) < 0 ||
            setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle)) < 0 ||
            setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &idle, sizeof(idle)) < 0 ||
            setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &user_timeout, sizeof(user_timeout)) < 0)
                dst_note(d, LOG_LEVEL_WARNING,
                         "QEMU's migration connection: keepalive: %s "
                         "(a dead link then waits for the migration timeout)",
                         strerror(errno));
}

static void stream_given(struct migrate_dest *d, json_object *ret, const vmsup_error *err);
static void incoming_started(struct migrate_dest *d, json_object *ret, const vmsup_error *err);

/* QEMU's stream connects: from the source supervisor's host, it goes to QEMU
 * (migrate-incoming fd:); from anywhere else it is turned away and we listen on. */
static void on_stream(struct evloop_source *s, int lfd, uint32_t revents, void *userdata) {
        struct migrate_dest *d = userdata;
        _cleanup_json_ json_object *args = json_object_new_object();
        struct sockaddr_storage peer, source;
        socklen_t plen = sizeof(peer), slen = sizeof(source);
        char addr[INET6_ADDRSTRLEN] = "?";
        vmsup_error *err = NULL;
        int fd;

        (void) s, (void) revents;
        fd = accept4(lfd, (struct sockaddr *) &peer, &plen, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
                if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
                        DST_FAIL(d, VMSUP_ERR_SYSTEM, errno, "accept QEMU's migration stream");
                return;
        }
        if (getpeername(migchan_fd(d->ch), (struct sockaddr *) &source, &slen) < 0 || !same_host(&peer, &source)) {
                inet_ntop(peer.ss_family,
                          peer.ss_family == AF_INET6 ? (void *) &((struct sockaddr_in6 *) &peer)->sin6_addr
                                                     : (void *) &((struct sockaddr_in *) &peer)->sin_addr,
                          addr, sizeof(addr));
                dst_note(d, LOG_LEVEL_WARNING, "turned away a migration stream from %s: the source is %s", addr,
                         d->source);
                close(fd);
                return;
        }
        dst_close_stream_listener(d);
        d->stream_fd = fd;
        stream_keepalive(d, fd);
        json_object_object_add(args, "fdname", json_object_new_string(MIGRATE_DEST_STREAM_FD_NAME));
        if (qemu_cmd(d, "getfd", args, fd, stream_given, &err) < 0) {
                vmsup_error_prefix(&err, "hand QEMU the migration connection");
                dst_fail(d, err);
        }
}

static void stream_given(struct migrate_dest *d, json_object *ret, const vmsup_error *qerr) {
        _cleanup_json_ json_object *args = json_object_new_object();
        vmsup_error *err = NULL;

        (void) ret;
        if (qerr) {
                fail_reply(d, qerr, "hand QEMU the migration connection");
                return;
        }
        json_object_object_add(args, "uri", json_object_new_string("fd:" MIGRATE_DEST_STREAM_FD_NAME));
        if (qemu_cmd(d, "migrate-incoming", args, -1, incoming_started, &err) < 0) {
                vmsup_error_prefix(&err, "QEMU migrate-incoming");
                dst_fail(d, err);
        }
}

static void incoming_started(struct migrate_dest *d, json_object *ret, const vmsup_error *qerr) {
        (void) ret;
        if (qerr) {
                fail_reply(d, qerr, "QEMU migrate-incoming");
                return;
        }
        if (d->state == MIGRATE_DEST_READY_SENT)
                d->state = MIGRATE_DEST_LOADING;
        dst_mark(d, "stream accepted, migrate-incoming");
}

/* QEMU said its load failed: it exits after saying why; a moment for that, then fail with
 * its log. */
static void on_qemu_failed_wait(struct evloop_source *s, void *userdata) {
        struct migrate_dest *d = userdata;

        (void) s;
        dst_child_failed(d, true, "QEMU failed to load the guest");
}

void dst_qemu_load_failed(struct migrate_dest *d) {
        vmsup_error *err = NULL;

        if (d->qemu_failed)
                return;
        d->qemu_failed = true;
        /* a MIGRATED still on its way is no surprise: only the timer stops */
        evloop_timer_set(d->wait_timer, -1);
        d->wait_timeout_fmt = NULL;
        if (d->qemu_gone ||
            evloop_add_timer(d->env.loop, monotonic_ms() + QEMU_FAILED_EXIT_MS, on_qemu_failed_wait, d,
                             &d->qemu_exit_timer, &err) < 0) {
                vmsup_error_free(err);
                dst_child_failed(d, true, "QEMU failed to load the guest");
        }
}

static void status_before_commit(struct migrate_dest *d, json_object *ret, const vmsup_error *err);

void dst_qemu_loaded(struct migrate_dest *d) {
        vmsup_error *err = NULL;

        if (d->checking)
                return;
        d->checking = true;
        dst_stop_waiting(d);
        d->state = MIGRATE_DEST_LOADING;
        if (qemu_cmd(d, "query-status", NULL, -1, status_before_commit, &err) < 0)
                dst_fail(d, err);
}

static void status_before_commit(struct migrate_dest *d, json_object *ret, const vmsup_error *qerr) {
        _cleanup_json_ json_object *prepared = json_object_new_object();
        vmsup_error *err = NULL;
        int64_t generation = 0;

        if (qerr) {
                fail_reply(d, qerr, NULL);
                return;
        }
        if (streq(mig_json_str(ret, "status"), "running")) {
                DST_FAIL(d, VMSUP_ERR_INTERNAL, 0, "QEMU runs the guest before the source said so");
                return;
        }
        /* The TPM state must be here, and sealed, before the source lets go. */
        if (d->env.seal(d->env.userdata, &generation, &err) < 0) {
                dst_fail(d, err);
                return;
        }
        d->state = MIGRATE_DEST_SEALED;
        json_object_object_add(prepared, "generation", json_object_new_int64(generation));
        if (dst_send_json(d, MIG_PREPARED, prepared, &err) < 0) {
                dst_fail(d, err);
                return;
        }
        d->state = MIGRATE_DEST_PREPARED_SENT;
        dst_note(d, LOG_LEVEL_INFO, "guest received in %ld ms; TPM state sealed; waiting for the source's go",
                 monotonic_ms() - d->t_up);
        dst_wait_for(d, DST_WAIT_SOURCE, MIG_COMMIT, monotonic_ms() + d->answer_ms);
}

/* ---- running the guest ------------------------------------------------------------------- */

static void contd(struct migrate_dest *d, json_object *ret, const vmsup_error *err);
static void status_after_cont(struct migrate_dest *d, json_object *ret, const vmsup_error *err);

int dst_qemu_cont(struct migrate_dest *d, vmsup_error **err) {
        return qemu_cmd(d, "cont", NULL, -1, contd, err);
}

static void contd(struct migrate_dest *d, json_object *ret, const vmsup_error *qerr) {
        vmsup_error *err = NULL;

        (void) ret;
        if (qerr) {
                fail_reply(d, qerr, "run the received guest");
                return;
        }
        if (qemu_cmd(d, "query-status", NULL, -1, status_after_cont, &err) < 0)
                dst_fail(d, err);
}

static void status_after_cont(struct migrate_dest *d, json_object *ret, const vmsup_error *qerr) {
        vmsup_error *err = NULL;

        if (qerr) {
                fail_reply(d, qerr, NULL);
                return;
        }
        if (!streq(mig_json_str(ret, "status"), "running")) {
                DST_FAIL(d, VMSUP_ERR_FAILED, 0, "the received guest does not run after cont (QEMU: %s)",
                         mig_json_str(ret, "status") ?: "?");
                return;
        }
        d->state = MIGRATE_DEST_RUNNING;
        d->env.started(d->env.userdata);
        /* The marker goes only when the source says it holds its migrated-out marker:
         * until then the source may not know, and an operator may take it back there. */
        if (dst_send_json(d, MIG_RUNNING, NULL, &err) < 0) {
                dst_finish(d, MIGRATE_DEST_RAN, err);
                return;
        }
        dst_wait_for(d, DST_WAIT_SOURCE, MIG_DONE, monotonic_ms() + d->answer_ms);
        if (evloop_io_set_events(d->ch_io, EPOLLIN, &err) < 0)
                dst_finish(d, MIGRATE_DEST_RAN, err);
}

