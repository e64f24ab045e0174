/* The source side of a live migration (docs/migration.md): hand the guest to the
 * destination's supervisor, let QEMU carry memory and TPM state over its own TLS, and
 * delete our copy only once the guest runs there with its TPM state sealed. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "common/fileio.h"
#include "common/secmem.h"
#include "common/util.h"
#include "secrets/localstore.h"
#include "migrate/migchan.h"
#include "migrate/proto.h"
#include "supervisor/guest_internal.h"
#include "common/log.h"

#define PROGRESS_INTERVAL_MS 500
#define CANCEL_TIMEOUT_MS 10000
#define CONTROL_POLL_MAX 16 /* control clients served at once during a migration; more wait */

struct out {
        struct guest *g;
        struct control_conn *conn; /* the `vmsup migrate` client: progress lines, then the answer */
        struct migchan *ch;
        const char *host, *port;
        long t0, deadline;
        int answer_ms;
        bool migrating;   /* QEMU's migrate was issued */
        bool committed;   /* COMMIT sent: the destination may run the guest */
        bool marker;      /* our migrated-out marker is on disk */
        bool was_running; /* QEMU ran the guest when the migration began (a rollback resumes only then) */
        int stream_fd;    /* our copy of QEMU's migration socket, or -1 */
        int cancel_fd;    /* a signalfd for SIGTERM and SIGINT: readable ends a connect or a send before COMMIT */
        int64_t total_ms, downtime_ms; /* QEMU's */
        long ready_at, completed_at, running_at; /* monotonic ms */
};

static void progress(struct out *o, const char *phase, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void progress(struct out *o, const char *phase, const char *fmt, ...) {
        json_object *p = json_object_new_object();
        char msg[512];
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        json_object_object_add(p, "phase", json_object_new_string(phase));
        json_object_object_add(p, "message", json_object_new_string(msg));
        log_info("migration: %s", msg);
        control_conn_progress(o->conn, p);
}

int migrate_qmp(struct guest *g, const char *cmd, json_object *args, json_object **ret, vmsup_error **err) {
        if (!g->qmp)
                return vmsup_fail(err, VMSUP_EX_FAILURE, 0, "QEMU's monitor is gone");
        return qmp_client_execute(g->qmp, cmd, args, -1, QMP_COMMAND_TIMEOUT, ret, err);
}

/* QEMU's tls-creds-x509 from [migration] qemu_tls_dir, then return-path and TLS on. */
int migrate_qemu_setup(struct guest *g, bool server, const char *tls_hostname, vmsup_error **err) {
        _cleanup_json_ json_object *creds = json_object_new_object(), *caps = json_object_new_object(),
                                   *params = json_object_new_object();
        json_object *list = json_object_new_array(), *cap = json_object_new_object();
        int r;

        if (g->migrate_tls_added) {
                _cleanup_json_ json_object *del = json_object_new_object();
                vmsup_error *ignored = NULL;

                /* read the certificates afresh: they may have been renewed */
                json_object_object_add(del, "id", json_object_new_string(MIGRATE_QEMU_TLS_ID));
                if (migrate_qmp(g, "object-del", del, NULL, &ignored) < 0)
                        vmsup_error_free(ignored);
                g->migrate_tls_added = false;
        }
        json_object_object_add(creds, "qom-type", json_object_new_string("tls-creds-x509"));
        json_object_object_add(creds, "id", json_object_new_string(MIGRATE_QEMU_TLS_ID));
        json_object_object_add(creds, "dir", json_object_new_string(g->cfg->migration.qemu_tls_dir));
        json_object_object_add(creds, "endpoint", json_object_new_string(server ? "server" : "client"));
        json_object_object_add(creds, "verify-peer", json_object_new_boolean(1));
        {
                long t = monotonic_ms();

                r = migrate_qmp(g, "object-add", creds, NULL, err);
                log_debug("migration: QEMU loaded the TLS credentials in %ld ms", monotonic_ms() - t);
        }
        if (r < 0)
                return vmsup_error_prefix(err, "QEMU's TLS credentials from '%s'", g->cfg->migration.qemu_tls_dir);
        g->migrate_tls_added = true;
        /* Without return-path on both sides the source reports success even when the
         * destination failed to load the guest (platform.md). */
        json_object_object_add(cap, "capability", json_object_new_string("return-path"));
        json_object_object_add(cap, "state", json_object_new_boolean(1));
        json_object_array_add(list, cap);
        /* MIGRATION events: the end of a cancel, the end of an incoming migration */
        cap = json_object_new_object();
        json_object_object_add(cap, "capability", json_object_new_string("events"));
        json_object_object_add(cap, "state", json_object_new_boolean(1));
        json_object_array_add(list, cap);
        json_object_object_add(caps, "capabilities", list);
        r = migrate_qmp(g, "migrate-set-capabilities", caps, NULL, err);
        if (r < 0)
                return r;
        json_object_object_add(params, "tls-creds", json_object_new_string(MIGRATE_QEMU_TLS_ID));
        if (tls_hostname)
                json_object_object_add(params, "tls-hostname", json_object_new_string(tls_hostname));
        return migrate_qmp(g, "migrate-set-parameters", params, NULL, err);
}

int migrate_wait_status(struct guest *g, const char *const *states, int timeout_ms, vmsup_error **err) {
        long deadline = monotonic_ms() + timeout_ms;

        for (;;) {
                struct pollfd p = { .fd = g->qmp ? qmp_client_fd(g->qmp) : -1, .events = POLLIN };
                long left = deadline - monotonic_ms();

                for (const char *const *s = states; *s; s++)
                        if (streq(g->migration_status, *s))
                                return 0;
                if (!g->qmp)
                        return vmsup_fail(err, VMSUP_EX_FAILURE, 0, "QEMU's monitor is gone");
                if (left <= 0)
                        return vmsup_fail(err, VMSUP_EX_TEMPFAIL, 0, "QEMU's migration is still '%s' after %d s",
                                          g->migration_status, timeout_ms / 1000);
                if (poll(&p, 1, (int) left) < 0 && errno != EINTR)
                        return vmsup_fail(err, VMSUP_EX_OSERR, errno, "poll");
                if (p.revents && qmp_client_dispatch(g->qmp, err) < 0)
                        return vmsup_error_prefix(err, "QEMU's monitor");
        }
}

/* "tcp:HOST:PORT", with brackets around an IPv6 address. */
char *migrate_tcp_uri(const char *host, const char *port) {
        char *uri = NULL;

        if (asprintf(&uri, strchr(host, ':') ? "tcp:[%s]:%s" : "tcp:%s:%s", host, port) < 0)
                return NULL;
        return uri;
}

/* A SIGTERM or SIGINT before COMMIT cancels the migration (its supervisor then stops the
 * guest here, as a signal asks: migrate_out()). */
static int cancelled(struct out *o, vmsup_error **err) {
        return vmsup_fail(err, VMSUP_EX_TEMPFAIL, 0,
                          "cancelled: the source's supervisor got SIG%s; the guest stays on the source, which stops it",
                          sigabbrev_np(o->g->interrupt_signo ?: SIGTERM));
}

/* A wait inside the channel that a signal ended (errno ECANCELED: o->cancel_fd) is the
 * signal's cancel; other errors pass as they are. Returns the error's code, -ECANCELED for
 * a cancel. */
static int signal_cancelled(struct out *o, vmsup_error **err) {
        if (!*err || (*err)->errnum != ECANCELED)
                return *err ? -((*err)->errnum ? (*err)->errnum : EINVAL) : -EINVAL;
        *err = vmsup_error_free(*err);
        guest_drain_signals(o->g);
        cancelled(o, err);
        return -ECANCELED;
}

/* The control socket while the migration waits: its listener and clients are added to a
 * poll set, then served (guest.c answers status and refuses the rest while
 * g->migrating_to is set). */
struct control_poll {
        nfds_t first, n;
        struct control_conn *conns[CONTROL_POLL_MAX];
};

static void control_poll_add(struct guest *g, struct pollfd *p, nfds_t *n, struct control_poll *cp) {
        cp->first = *n;
        /* not while accept() backs off for lack of fds: it would wake us again at once */
        p[(*n)++] = (struct pollfd) { .fd = guest_control_listening(g) ? g->listen_fd : -1, .events = POLLIN };
        cp->n = 0;
        for (struct control_conn *c = g->conns; c && cp->n < CONTROL_POLL_MAX; c = c->next) {
                cp->conns[cp->n++] = c;
                p[(*n)++] = (struct pollfd) { .fd = c->fd, .events = POLLIN };
        }
}

static void control_poll_serve(struct guest *g, const struct pollfd *p, const struct control_poll *cp) {
        for (nfds_t i = 0; i < cp->n; i++)
                if (p[cp->first + 1 + i].revents)
                        guest_handle_conn(g, cp->conns[i]); /* may free it: cp is not used again */
        if (p[cp->first].revents)
                guest_accept_conn(g);
        guest_control_expire(g);
}

/* QEMU's monitor in a migration's poll set: what it waits for, and its due time. */
static void qmp_poll_add(struct guest *g, struct pollfd *p, long *wake) {
        int qmp_wait;

        *p = (struct pollfd) { .fd = -1 };
        if (!g->qmp)
                return;
        p->fd = qmp_client_fd(g->qmp);
        p->events = (short) ((qmp_client_epoll_events(g->qmp) & EPOLLOUT ? POLLOUT : 0) | POLLIN);
        qmp_wait = qmp_client_next_timeout_ms(g->qmp);
        if (qmp_wait >= 0 && qmp_wait < *wake)
                *wake = qmp_wait;
}

/* Dispatch what QEMU sent (replies to the control clients' queries, events). */
static int qmp_poll_serve(struct guest *g, const struct pollfd *p, vmsup_error **err) {
        if (!g->qmp)
                return 0;
        if (p->revents && qmp_client_dispatch(g->qmp, err) < 0)
                return vmsup_error_prefix(err, "QEMU's monitor");
        qmp_client_expire(g->qmp);
        return 0;
}

/* The destination's next message, which must be of type (or its ABORT), within
 * answer_timeout; control clients are served meanwhile. A signal cancels the wait before
 * COMMIT; after it, the wait goes on (the destination may run the guest already). */
static int expect(struct out *o, enum mig_msg type, struct mig_frame *f, vmsup_error **err) {
        long deadline = monotonic_ms() + o->answer_ms;

        for (;;) {
                struct pollfd p[3 + 1 + CONTROL_POLL_MAX];
                struct control_poll cp;
                nfds_t n = 3;
                long left;
                int r;

                if (o->g->interrupted && !o->committed)
                        return cancelled(o, err);
                r = migchan_recv(o->ch, f, err);
                if (r < 0)
                        return vmsup_error_prefix(err, "the destination");
                if (r > 0)
                        break;
                left = deadline - monotonic_ms();
                if (left <= 0)
                        return vmsup_fail(err, VMSUP_EX_TEMPFAIL, 0,
                                          "the destination: %s: no answer from the migration peer within %d s "
                                          "(waiting for %s)",
                                          migchan_peer(o->ch), o->answer_ms / 1000, mig_msg_name(type));
                p[0] = (struct pollfd) { .fd = migchan_fd(o->ch), .events = POLLIN };
                qmp_poll_add(o->g, &p[1], &left);
                p[2] = (struct pollfd) { .fd = o->g->sigfd, .events = POLLIN };
                control_poll_add(o->g, p, &n, &cp);
                if (poll(p, n, left > 1 ? (int) left : 1) < 0 && errno != EINTR)
                        return vmsup_fail(err, VMSUP_EX_OSERR, errno, "poll");
                if (p[2].revents)
                        guest_drain_signals(o->g);
                if (qmp_poll_serve(o->g, &p[1], err) < 0)
                        return -1;
                control_poll_serve(o->g, p, &cp);
        }
        return mig_frame_expect(f, type, MIG_PEER_DESTINATION, err);
}

static int send_json(struct out *o, enum mig_msg type, json_object *obj, vmsup_error **err) {
        _cleanup_json_ json_object *empty = obj ? NULL : json_object_new_object();
        int r = migchan_send_json(o->ch, type, obj ? obj : empty, o->answer_ms, err);

        if (r < 0 && (*err)->errnum == ECANCELED)
                return signal_cancelled(o, err);
        return r < 0 ? vmsup_error_prefix(err, "send %s to the destination", mig_msg_name(type)) : 0;
}

/* Hello, then the spec and the secret (host mode: from the local store, as Nova's
 * _add_vtpm_secret_to_live_migrate_data), then the destination's READY. */
static int handover(struct out *o, int *ret_port, vmsup_error **err) {
        struct guest *g = o->g;
        _cleanup_json_ json_object *hello = NULL, *prepare = json_object_new_object();
        struct migchan_tls tls = { 0 };
        _cleanup_migration_tls_files_ struct migration_tls_files files = { 0 };
        struct localstore *store = NULL;
        _cleanup_secmem_ char *pass = NULL; /* the vTPM passphrase, wiped however we leave */
        char secret_id[LOCALSTORE_UUID_LEN + 1];
        struct mig_frame f = { 0 };
        json_object *spec;
        int r;

        r = host_config_migration_tls(g->cfg, false, &files, err);
        if (r < 0)
                return r;
        r = localstore_open(g->cfg->paths.secrets_dir, false, &store, err);
        if (r >= 0)
                r = localstore_get(store, g->spec.uuid, &pass, secret_id, err);
        localstore_free(store);
        if (r == 0 || (r < 0 && (*err)->errnum == ENOENT)) {
                if (r < 0)
                        *err = vmsup_error_free(*err);
                return vmsup_fail(err, VMSUP_EX_UNAVAILABLE, 0,
                                  "TPM secret was not found. Try hard-rebooting the instance to recover.");
        }
        if (r < 0)
                return r;
        spec = json_object_from_file(g->dirs.spec_copy);
        if (!spec)
                return vmsup_fail(err, VMSUP_EX_DATAERR, 0, "read the guest spec '%s'", g->dirs.spec_copy);
        json_object_object_add(prepare, "spec", spec);
        json_object_object_add(prepare, "secret_uuid", json_object_new_string(secret_id));

        tls = (struct migchan_tls) { .ca_file = files.ca, .cert_file = files.cert, .key_file = files.key,
                                     .peer_name = o->host };
        progress(o, "connect", "connecting to %s:%s", o->host, o->port);
        r = migchan_connect_cancel(o->host, o->port, &tls, o->answer_ms, o->cancel_fd, &o->ch, err);
        if (r < 0)
                return signal_cancelled(o, err);
        hello = mig_hello_new(g->spec.uuid);
        r = hello ? send_json(o, MIG_HELLO, hello, err) : vmsup_fail(err, VMSUP_EX_OSERR, ENOMEM, "HELLO");
        if (r >= 0)
                r = expect(o, MIG_HELLO, &f, err);
        if (r >= 0)
                r = mig_hello_check(&f, g->spec.uuid, MIG_PEER_DESTINATION, err);
        mig_frame_clear(&f);
        if (r >= 0)
                r = send_json(o, MIG_PREPARE, prepare, err);
        if (r >= 0 && (r = migchan_send(o->ch, MIG_SECRET, pass, strlen(pass), o->answer_ms, err)) < 0)
                vmsup_error_prefix(err, "send the vTPM secret to the destination");
        pass = secmem_free(pass); /* not needed any more: gone before the long wait */
        if (r < 0)
                return signal_cancelled(o, err);
        progress(o, "prepare", "%s prepares swtpm and QEMU (connected in %ld ms)", migchan_peer(o->ch),
                 monotonic_ms() - o->t0);
        r = expect(o, MIG_READY, &f, err);
        if (r >= 0)
                *ret_port = (int) mig_json_int(f.json, "port");
        mig_frame_clear(&f);
        return r;
}

static void send_transfer_progress(struct out *o, json_object *info) {
        json_object *ram = NULL, *p;
        int64_t total, transferred, remaining;

        json_object_object_get_ex(info, "ram", &ram);
        total = mig_json_int(ram, "total");
        transferred = mig_json_int(ram, "transferred");
        remaining = mig_json_int(ram, "remaining");
        p = json_object_new_object();
        json_object_object_add(p, "phase", json_object_new_string("transfer"));
        json_object_object_add(p, "status", json_object_new_string(mig_json_str(info, "status") ?: "?"));
        o->g->migration_percent = total > 0 ? (int) ((total - remaining) * 100 / total) : 0;
        json_object_object_add(p, "percent", json_object_new_int64(o->g->migration_percent));
        json_object_object_add(p, "transferred", json_object_new_int64(transferred));
        json_object_object_add(p, "total", json_object_new_int64(total));
        json_object_object_add(p, "remaining", json_object_new_int64(remaining));
        json_object_object_add(p, "expected_downtime_ms", json_object_new_int64(mig_json_int(info, "expected-downtime")));
        json_object_object_add(p, "elapsed_ms", json_object_new_int64(monotonic_ms() - o->t0));
        control_conn_progress(o->conn, p);
}

/* QEMU 7.2 runs parts of an outgoing migration in its main loop on a blocking socket
 * (the TLS handshake; with the guest paused, the last pages and the devices' state are
 * sent holding the lock the main loop needs): a connection that dies then holds QEMU, its
 * monitor included, until the kernel gives up, if ever (a handshake waiting to read
 * waits forever; seen here). migrate_cancel waits behind it, and QMP's yank knows the
 * connection only after the handshake. So we connect the socket ourselves, hand QEMU a
 * copy and keep ours: shutting it down fails QEMU's reads and writes on it at once,
 * whatever QEMU is at. */
static void stream_shutdown(struct out *o) {
        if (o->stream_fd < 0)
                return;
        if (shutdown(o->stream_fd, SHUT_RDWR) < 0 && errno != ENOTCONN)
                log_warning("shut QEMU's migration connection down: %s", strerror(errno));
        else
                log_info("QEMU's migration connection shut down");
}

/* A dead link fails QEMU's migration by itself after [migration] answer_timeout, instead
 * of leaving QEMU (and, at the switch-over, the paused guest) waiting for the deadline:
 * unacknowledged data or unanswered keepalive probes for that long end the connection. */
static void stream_keepalive(int fd, int answer_ms) {
        int one = 1, idle = answer_ms / 3000 > 0 ? answer_ms / 3000 : 1;
        unsigned user_timeout = (unsigned) answer_ms;

        if (setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one)) < 0 ||
            setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle)) < 0 ||
            setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &idle, sizeof(idle)) < 0 ||
            setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &user_timeout, sizeof(user_timeout)) < 0)
                log_warning("QEMU's migration connection: keepalive: %s (a dead link then waits for the "
                            "migration timeout)", strerror(errno));
}

int migrate_stream_give(struct guest *g, int fd, int answer_ms, vmsup_error **err) {
        _cleanup_json_ json_object *args = json_object_new_object();

        stream_keepalive(fd, answer_ms);
        json_object_object_add(args, "fdname", json_object_new_string(MIGRATE_STREAM_FD_NAME));
        if (!g->qmp)
                return vmsup_fail(err, VMSUP_EX_FAILURE, 0, "QEMU's monitor is gone");
        if (qmp_client_execute(g->qmp, "getfd", args, fd, QMP_COMMAND_TIMEOUT, NULL, err) < 0)
                return vmsup_error_prefix(err, "hand QEMU the migration connection");
        return 0;
}

/* One query-migrate in flight. Asynchronous, so that a QEMU whose main loop is held
 * (by a migration stuck on a dead link) does not stop us from hearing the destination,
 * signals and the deadline. Left behind when the wait ends early: the reply frees it. */
struct query {
        bool pending, abandoned;
        json_object *info;
        vmsup_error *err;
};

static void query_done(void *userdata, json_object *ret, const vmsup_error *err) {
        struct query *q = userdata;

        if (q->abandoned) {
                free(q);
                return;
        }
        q->pending = false;
        json_object_put(q->info);
        q->info = json_object_get(ret);
        q->err = vmsup_error_free(q->err);
        if (err)
                vmsup_fail(&q->err, err->exit_code, err->errnum, "%s", err->msg);
}

static void query_free(struct query *q) {
        if (!q)
                return;
        json_object_put(q->info);
        vmsup_error_free(q->err);
        q->info = NULL;
        q->err = NULL;
        if (q->pending)
                q->abandoned = true;
        else
                free(q);
}

/* QEMU's figures, which it computes a moment after it says it completed: 0 until then
 * (run() asks again once the destination has answered). */
static void figures(struct out *o, json_object *info) {
        o->total_ms = mig_json_int(info, "total-time");
        o->downtime_ms = mig_json_int(info, "downtime");
}

/* QEMU's migrate, watched until it completes: the destination's supervisor, QEMU and
 * swtpm, signals, the deadline; progress to the client every PROGRESS_INTERVAL_MS. */
static int watch(struct out *o, struct query *q, vmsup_error **err) {
        struct guest *g = o->g;
        long next = 0, asked = 0;
        int r;

        for (;;) {
                /* Not the TPM state's sync: what swtpm writes at the switch-over (its
                 * volatile state) is sealed after the migration if it fails, and not at
                 * all if it succeeds, instead of competing with QEMU for the CPU during
                 * the downtime. */
                struct pollfd p[4 + 1 + CONTROL_POLL_MAX] = {
                        { .fd = migchan_fd(o->ch), .events = POLLIN },
                        { .fd = g->sigfd, .events = POLLIN },
                        { .fd = g->qemu.pidfd, .events = POLLIN },
                };
                struct control_poll cp;
                nfds_t n = 4;
                long now = monotonic_ms(), wake;
                /* QEMU's MIGRATION event ends the wait at once; query-migrate is for the
                 * progress lines and the figures */
                bool ended = streq(g->migration_status, "completed") || streq(g->migration_status, "failed") ||
                             streq(g->migration_status, "cancelled");

                if (g->interrupted)
                        return cancelled(o, err);
                if (!g->qmp)
                        return vmsup_fail(err, VMSUP_EX_FAILURE, 0, "QEMU's monitor is gone");
                if (q->info) {
                        _cleanup_json_ json_object *info = q->info;
                        const char *status = mig_json_str(info, "status") ?: "";

                        q->info = NULL;
                        if (streq(status, "completed")) {
                                figures(o, info);
                                return 0;
                        }
                        if (streq(status, "failed") || streq(status, "cancelled"))
                                return vmsup_fail(err, VMSUP_EX_UNAVAILABLE, 0, "QEMU's migration %s: %s", status,
                                                  mig_json_str(info, "error-desc") ?: "no reason given");
                        send_transfer_progress(o, info);
                }
                if (q->err) {
                        /* a stuck main loop, most likely; the deadline decides */
                        log_warning("QEMU's monitor has not answered for %ld s (%s); waiting up to the migration "
                                    "timeout", (now - asked) / 1000, q->err->msg);
                        q->err = vmsup_error_free(q->err);
                }
                if (!q->pending && (now >= next || ended)) {
                        r = qmp_client_execute_async(g->qmp, "query-migrate", NULL, -1, QMP_COMMAND_TIMEOUT,
                                                     query_done, q, err);
                        if (r < 0)
                                return vmsup_error_prefix(err, "QEMU's monitor");
                        q->pending = true;
                        asked = now;
                        next = now + PROGRESS_INTERVAL_MS;
                }
                if (now >= o->deadline)
                        return vmsup_fail(err, VMSUP_EX_TEMPFAIL, 0, "the migration did not complete within %u s%s",
                                          g->cfg->migration.timeout,
                                          q->pending && now - asked > 1000 ? " (QEMU's monitor does not answer)" : "");
                wake = (next < o->deadline ? next : o->deadline) - now;
                if (q->pending)
                        wake = o->deadline - now;
                qmp_poll_add(g, &p[3], &wake);
                control_poll_add(g, p, &n, &cp);
                if (poll(p, n, wake > 1 ? (int) wake : 1) < 0 && errno != EINTR)
                        return vmsup_fail(err, VMSUP_EX_OSERR, errno, "poll");
                if (p[0].revents) {
                        struct mig_frame f = { 0 };

                        r = migchan_recv(o->ch, &f, err);
                        if (r < 0)
                                return vmsup_error_prefix(err, "the destination");
                        if (r > 0) {
                                r = mig_frame_unexpected(&f, MIG_PEER_DESTINATION, err);
                                mig_frame_clear(&f);
                                return r;
                        }
                }
                if (p[1].revents) {
                        guest_drain_signals(g);
                        if (g->interrupted)
                                return cancelled(o, err);
                }
                if (p[2].revents) {
                        guest_reap_all(g);
                        if (g->qemu.exited)
                                return vmsup_fail(err, VMSUP_EX_FAILURE, 0, "QEMU ended during the migration");
                }
                if (qmp_poll_serve(g, &p[3], err) < 0)
                        return -1;
                control_poll_serve(g, p, &cp);
        }
}

static int transfer(struct out *o, int dest_port, vmsup_error **err) {
        struct guest *g = o->g;
        _cleanup_free_ char *uri = NULL;
        _cleanup_json_ json_object *args = json_object_new_object();
        struct query *q;
        char port[8];
        int r;

        snprintf(port, sizeof(port), "%d", dest_port);
        uri = migrate_tcp_uri(o->host, port);
        if (!uri)
                return vmsup_fail(err, VMSUP_EX_OSERR, ENOMEM, "migration URI");
        r = migrate_qemu_setup(g, false, o->host, err);
        if (r < 0)
                return r;
        /* QEMU's stream on a socket of ours (see stream_shutdown()); QEMU checks the
         * destination's certificate against tls-hostname, our host */
        r = migchan_tcp_connect_cancel(o->host, port, o->answer_ms, o->cancel_fd, &o->stream_fd, err);
        if (r < 0)
                return signal_cancelled(o, err) == -ECANCELED ? -ECANCELED
                                                              : vmsup_error_prefix(err, "QEMU's migration stream");
        r = migrate_stream_give(g, o->stream_fd, o->answer_ms, err);
        if (r < 0)
                return r;
        json_object_object_add(args, "uri", json_object_new_string("fd:" MIGRATE_STREAM_FD_NAME));
        log_debug("migration: QEMU set up for TLS at +%ld ms", monotonic_ms() - o->t0);
        /* before the command: QEMU's MIGRATION events may come before its reply */
        snprintf(g->migration_status, sizeof(g->migration_status), "setup");
        r = migrate_qmp(g, "migrate", args, NULL, err);
        if (r < 0) {
                g->migration_status[0] = '\0';
                return vmsup_error_prefix(err, "QEMU migrate to %s", uri);
        }
        o->migrating = true;
        progress(o, "stream", "QEMU sends the guest to %s (TLS)", uri);
        q = calloc(1, sizeof(*q));
        if (!q)
                return vmsup_fail(err, VMSUP_EX_OSERR, ENOMEM, "migration");
        r = watch(o, q, err);
        query_free(q);
        return r;
}

static int write_marker(struct out *o, vmsup_error **err) {
        char text[512], when[64];
        time_t now = time(NULL);
        struct tm tm;

        strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&now, &tm));
        snprintf(text, sizeof(text), "to %s:%s at %s\n", o->host, o->port, when);
        if (write_file_atomic(o->g->dirs.migrated_out, text, strlen(text), 0600, err) < 0)
                return vmsup_error_prefix(err, "record the hand-over");
        o->marker = true;
        return 0;
}

/* The guest runs on the destination: stop ours without keeping its TPM state, and
 * delete the guest's secret, sealed state and files here (Nova's post_live_migration
 * and cleanup; the Barbican secret belongs to the guest and stays). */
static void finish_source(struct out *o) {
        struct guest *g = o->g;
        struct localstore *store = NULL;
        vmsup_error *err = NULL;

        g->tpm_discard = true;
        guest_stop_children(g);
        if (localstore_open(g->cfg->paths.secrets_dir, false, &store, &err) < 0 ||
            localstore_delete(store, g->spec.uuid, &err) < 0) {
                log_error("delete the local copy of the vTPM secret: %s", err->msg);
                err = vmsup_error_free(err);
        }
        localstore_free(store);
        /* the migrated-out marker goes last, with the state dir */
        if (guest_dirs_remove(&g->dirs, &err) < 0) {
                log_error("remove the guest's files here: %s (the migrated-out marker keeps it from starting)",
                          err->msg);
                vmsup_error_free(err);
        }
}

/* After a completed QEMU migration the destination's QEMU has the guest's disks open and
 * locked (shared storage): `cont` here fails ("Failed to get "write" lock") until it is
 * gone. The destination hangs up once it has removed it, on our ABORT: wait for that,
 * within answer_timeout, or until another signal. */
static void wait_destination_gone(struct out *o) {
        long deadline = monotonic_ms() + o->answer_ms;

        for (;;) {
                struct pollfd p[2] = { { .fd = migchan_fd(o->ch), .events = POLLIN },
                                       { .fd = o->g->sigfd, .events = POLLIN } };
                struct mig_frame f = { 0 };
                vmsup_error *err = NULL;
                long left;
                int r = migchan_recv(o->ch, &f, &err);

                mig_frame_clear(&f);
                if (r < 0) {
                        vmsup_error_free(err);
                        return;
                }
                if (r > 0)
                        continue;
                left = deadline - monotonic_ms();
                if (left <= 0) {
                        log_warning("the destination did not hang up within %d s of the ABORT; its QEMU may still "
                                    "hold the guest's disks", o->answer_ms / 1000);
                        return;
                }
                if (poll(p, 2, (int) left) < 0 && errno != EINTR)
                        return;
                if (p[1].revents) {
                        bool before = o->g->interrupted;

                        guest_drain_signals(o->g);
                        if (before)
                                return; /* a second signal: no more waiting */
                }
        }
}

/* Undo: cancel QEMU's migration if it runs, and let the guest run here again. */
static void roll_back(struct out *o, const vmsup_error *why) {
        struct guest *g = o->g;
        vmsup_error *err = NULL;
        bool completed = false;

        if (o->ch) {
                _cleanup_json_ json_object *a = json_object_new_object();

                json_object_object_add(a, "error", json_object_new_string(why ? why->msg : "cancelled"));
                migchan_set_cancel_fd(o->ch, -1); /* a second signal must not cut the ABORT */
                if (migchan_send_json(o->ch, MIG_ABORT, a, 2000, &err) < 0)
                        err = vmsup_error_free(err);
        }
        if (o->migrating && g->qmp && !g->qemu.exited) {
                static const char *const ended[] = { "completed", "failed", "cancelled", NULL };
                _cleanup_json_ json_object *info = NULL;

                stream_shutdown(o);

                if (migrate_qmp(g, "query-migrate", NULL, &info, &err) < 0)
                        err = vmsup_error_free(err);
                snprintf(g->migration_status, sizeof(g->migration_status), "%s", mig_json_str(info, "status") ?: "");
                completed = streq(g->migration_status, "completed");
                if (migrate_wait_status(g, ended, 0, NULL) < 0) { /* still going */
                        if (migrate_qmp(g, "migrate_cancel", NULL, NULL, &err) < 0)
                                err = vmsup_error_free(err);
                        if (migrate_wait_status(g, ended, CANCEL_TIMEOUT_MS, &err) < 0) {
                                log_error("cancelling QEMU's migration: %s", err->msg);
                                err = vmsup_error_free(err);
                        }
                }
        }
        if (completed && o->ch && o->was_running)
                wait_destination_gone(o);
        if (g->qmp && !g->qemu.exited && o->was_running) {
                _cleanup_json_ json_object *st = NULL;
                const char *status;

                if (migrate_qmp(g, "query-status", NULL, &st, &err) < 0)
                        err = vmsup_error_free(err);
                status = mig_json_str(st, "status");
                if (status && !streq(status, "running")) {
                        if (migrate_qmp(g, "cont", NULL, NULL, &err) < 0) {
                                log_error("the guest stays %s here: cont failed: %s", status, err->msg);
                                err = vmsup_error_free(err);
                        } else
                                log_info("the guest runs here again (it was %s)", status);
                }
        }
        if (o->marker) {
                if (unlink(g->dirs.migrated_out) < 0 && errno != ENOENT)
                        log_error("remove '%s': %s; remove it by hand before the next start", g->dirs.migrated_out,
                                  strerror(errno));
                o->marker = false;
        }
}

static int run(struct out *o, vmsup_error **err) {
        struct guest *g = o->g;
        struct mig_frame f = { 0 };
        int port = 0, r;

        if (!g->tpm.present)
                return vmsup_fail(err, VMSUP_EX_UNAVAILABLE, 0,
                                  "guest %s has no vTPM: vmsup live-migrates vTPM guests in host mode only",
                                  g->spec.uuid);
        /* Nova's compute API (reject_legacy_vtpm_live_migration): host mode only */
        if (g->tpm.secret_security != SECRET_SECURITY_HOST)
                return vmsup_fail(err, VMSUP_EX_UNAVAILABLE, 0,
                                  "Operation 'live-migration' not supported for vTPM-enabled instance (%s).",
                                  g->spec.uuid);
        if (g->state != GUEST_RUNNING || !g->qmp)
                return vmsup_fail(err, VMSUP_EX_TEMPFAIL, 0, "the guest is not running (%s)", guest_state_name(g));
        /* A rollback resumes only a guest that ran: an operator's pause stays a pause. */
        {
                _cleanup_json_ json_object *st = NULL;

                r = migrate_qmp(g, "query-status", NULL, &st, err);
                if (r < 0)
                        return r;
                o->was_running = streq(mig_json_str(st, "status") ?: "", "running");
        }

        r = handover(o, &port, err);
        if (r < 0)
                return r;
        o->ready_at = monotonic_ms();
        r = transfer(o, port, err);
        if (r < 0)
                return r;
        o->completed_at = monotonic_ms();
        progress(o, "switchover", "QEMU completed; the destination checks the guest and seals its TPM state");
        r = send_json(o, MIG_MIGRATED, NULL, err);
        if (r >= 0)
                r = expect(o, MIG_PREPARED, &f, err);
        mig_frame_clear(&f);
        if (r < 0)
                return r;
        if (!o->total_ms) {
                _cleanup_json_ json_object *info = NULL;
                vmsup_error *ignored = NULL;

                if (migrate_qmp(g, "query-migrate", NULL, &info, &ignored) < 0)
                        vmsup_error_free(ignored);
                figures(o, info);
        }
        log_info("migration: QEMU took %" PRId64 " ms (downtime %" PRId64 " ms); the destination has the guest paused",
                 o->total_ms, o->downtime_ms);
        /* The last moment a signal cancels: one that came while we did not wait (a QMP
         * command, a send) is still on the signal fd. */
        guest_drain_signals(g);
        if (g->interrupted)
                return cancelled(o, err);
        /* The point of no return for the destination: once it has COMMIT it may run the
         * guest. From here a lost answer leaves the outcome unknown, and the guest must
         * not run here too: the marker keeps it from starting here again. */
        r = write_marker(o, err);
        if (r < 0)
                return r;
        /* from COMMIT on a signal is logged and the migration finishes: it must not cut a
         * send in half */
        migchan_set_cancel_fd(o->ch, -1);
        r = send_json(o, MIG_COMMIT, NULL, err);
        if (r < 0)
                return r;
        o->committed = g->migration_committed = true;
        r = expect(o, MIG_RUNNING, &f, err);
        mig_frame_clear(&f);
        if (r == -ECONNABORTED)
                o->committed = g->migration_committed = false; /* an explicit ABORT: the destination did not run it */
        o->running_at = monotonic_ms();
        if (r < 0)
                return r;
        /* the destination keeps its copy marked until it hears that we hold our marker;
         * without DONE it runs on, unconfirmed, and our copy goes all the same */
        {
                vmsup_error *derr = NULL;

                if (send_json(o, MIG_DONE, NULL, &derr) < 0) {
                        log_warning("%s; the guest runs there, but its hand-over stays unconfirmed there (see "
                                    "vmsup(8), MIGRATION)", derr->msg);
                        vmsup_error_free(derr);
                }
        }
        return 0;
}

void migrate_out(struct guest *g, struct control_conn *c) {
        struct out o = { .g = g, .conn = c, .stream_fd = -1, .cancel_fd = -1 };
        char to[300];
        vmsup_error *err = NULL;
        json_object *v;
        int r;

        o.host = json_object_object_get_ex(c->request, "host", &v) ? json_object_get_string(v) : NULL;
        o.port = json_object_object_get_ex(c->request, "port", &v) ? json_object_get_string(v) : NULL;
        if (!o.host || !o.host[0] || !o.port) {
                control_conn_reply_error(c, VMSUP_EX_USAGE, "migrate request without host and port");
                control_conn_free(c);
                return;
        }
        snprintf(to, sizeof(to), strchr(o.host, ':') ? "[%s]:%s" : "%s:%s", o.host, o.port);
        g->migrating_to = to;
        g->migration_status[0] = '\0';
        g->migration_percent = 0;
        o.t0 = monotonic_ms();
        o.deadline = o.t0 + (long) g->cfg->migration.timeout * 1000;
        o.answer_ms = (int) g->cfg->migration.answer_timeout * 1000;
        log_info("live migration to %s:%s requested", o.host, o.port);
        {
                sigset_t stop;

                /* readable while SIGTERM or SIGINT is pending: the waits inside the channel
                 * (connect, handshake, sends) end at once; guest.c's signalfd still reads it */
                sigemptyset(&stop);
                sigaddset(&stop, SIGTERM);
                sigaddset(&stop, SIGINT);
                o.cancel_fd = signalfd(-1, &stop, SFD_CLOEXEC | SFD_NONBLOCK);
                if (o.cancel_fd < 0)
                        log_warning("signalfd: %s; a signal is seen at the migration's next wait only", strerror(errno));
        }
        r = run(&o, &err);
        if (r >= 0) {
                json_object *ret = json_object_new_object();
                long cleanup_at = monotonic_ms();

                finish_source(&o);
                log_info("guest migrated to %s:%s: running there %ld ms after the request (destination ready in "
                         "%ld ms, QEMU %" PRId64 " ms with %" PRId64 " ms downtime, switch-over %ld ms); our copy "
                         "removed in %ld ms", o.host, o.port, o.running_at - o.t0, o.ready_at - o.t0, o.total_ms,
                         o.downtime_ms, o.running_at - o.completed_at, monotonic_ms() - cleanup_at);
                json_object_object_add(ret, "host", json_object_new_string(o.host));
                json_object_object_add(ret, "total_ms", json_object_new_int64(o.running_at - o.t0));
                json_object_object_add(ret, "prepare_ms", json_object_new_int64(o.ready_at - o.t0));
                json_object_object_add(ret, "transfer_ms", json_object_new_int64(o.completed_at - o.ready_at));
                json_object_object_add(ret, "switchover_ms", json_object_new_int64(o.running_at - o.completed_at));
                json_object_object_add(ret, "cleanup_ms", json_object_new_int64(monotonic_ms() - cleanup_at));
                json_object_object_add(ret, "qemu_total_ms", json_object_new_int64(o.total_ms));
                json_object_object_add(ret, "downtime_ms", json_object_new_int64(o.downtime_ms));
                control_conn_reply_ok(c, ret);
                guest_finish(g, 0);
        } else if (o.committed) {
                /* Nobody can tell here whether the destination runs the guest. */
                log_error("live migration to %s:%s: %s. The destination had the order to run the guest; whether it "
                          "does is unknown. The guest stays paused here and cannot start here again (%s). See "
                          "vmsup(8), MIGRATION.", o.host, o.port, err->msg, g->dirs.migrated_out);
                vmsup_error_prefix(&err, "outcome unknown (the guest stays paused here; see vmsup(8), MIGRATION)");
                control_conn_reply_error(c, VMSUP_EX_TEMPFAIL, err->msg);
        } else {
                roll_back(&o, err);
                log_error("live migration to %s:%s failed: %s; the guest runs here, with its TPM state", o.host,
                          o.port, err->msg);
                control_conn_reply_error(c, err->exit_code ? err->exit_code : VMSUP_EX_FAILURE, err->msg);
        }
        vmsup_error_free(err);
        control_conn_free(c);
        o.ch = migchan_free(o.ch);
        closep(&o.cancel_fd);
        if (o.stream_fd >= 0)
                close(o.stream_fd);
        g->migrating_to = NULL;
        g->migration_committed = false;
        if (g->interrupted && !g->done)
                guest_begin_stop(g, g->cfg->supervisor.stop_timeout, false, false);
}
