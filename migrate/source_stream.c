/* The source's side of QEMU's stream (see source.h): QEMU set up for TLS, our own
 * connection handed to it, migrate, then query-migrate until it completes. */
#include "config.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "common/util.h"
#include "migrate/proto.h"
#include "migrate/source_internal.h"

/* ---- QEMU's side: TLS, the stream, migrate ---- */

/* A dead link fails QEMU's migration by itself after [migration] answer_timeout, instead
 * of leaving QEMU (and, at the switch-over, the paused guest) waiting for the deadline:
 * unacknowledged data or unanswered keepalive probes for that long end the connection. */
static void stream_keepalive(struct migrate_source *s, int fd) {
        int one = 1, idle = s->env.answer_ms / 3000 > 0 ? s->env.answer_ms / 3000 : 1;
        unsigned user_timeout = (unsigned) s->env.answer_ms;

        if (setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one)) < 0 ||
            setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle)) < 0 ||
            setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &idle, sizeof(idle)) < 0 ||
            setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &user_timeout, sizeof(user_timeout)) < 0)
                src_note(s, LOG_LEVEL_WARNING,
                         "QEMU's migration connection: keepalive: %s (a dead link then waits for the migration timeout)",
                         strerror(errno));
}

/* QEMU 7.2 runs parts of an outgoing migration in its main loop on a blocking socket
 * (the TLS handshake; with the guest paused, the last pages and the devices' state are
 * sent holding the lock the main loop needs): a connection that dies then holds QEMU, its
 * monitor included, until the kernel gives up, if ever (a handshake waiting to read
 * waits forever; seen here). migrate_cancel waits behind it, and QMP's yank knows the
 * connection only after the handshake. So we connect the socket ourselves, hand QEMU a
 * copy and keep ours: shutting it down fails QEMU's reads and writes on it at once,
 * whatever QEMU is at. */
void src_stream_shutdown(struct migrate_source *s) {
        if (s->stream_fd < 0)
                return;
        if (shutdown(s->stream_fd, SHUT_RDWR) < 0 && errno != ENOTCONN)
                src_note(s, LOG_LEVEL_WARNING, "shut QEMU's migration connection down: %s", strerror(errno));
        else
                src_note(s, LOG_LEVEL_INFO, "QEMU's migration connection shut down");
}

static char *stream_uri(struct migrate_source *s) {
        char *uri = NULL;

        if (asprintf(&uri, strchr(s->env.host, ':') ? "tcp:[%s]:%s" : "tcp:%s:%s", s->env.host, s->port_text) < 0)
                return NULL;
        return uri;
}

static void on_ready_reply(struct migrate_source *s, json_object *ret, const vmsup_error *e) {
        vmsup_error *err = NULL;

        (void) ret;
        switch (s->ready_step) {
        case 0: /* object-del: whatever it says */
                *s->env.qemu_tls_added = false;
                break;
        case 1:
                src_note(s, LOG_LEVEL_DEBUG, "migration: QEMU loaded the TLS credentials in %ld ms",
                         monotonic_ms() - s->step_at);
                if (e) {
                        src_error_from(&err, e);
                        vmsup_error_prefix(&err, "QEMU's TLS credentials from '%s'", s->env.qemu_tls_dir);
                        src_fail(s, err);
                        return;
                }
                *s->env.qemu_tls_added = true;
                break;
        case 5:
                if (e) {
                        src_error_from(&err, e);
                        vmsup_error_prefix(&err, "hand QEMU the migration connection");
                        src_fail(s, err);
                        return;
                }
                break;
        default:
                if (e) {
                        src_error_from(&err, e);
                        src_fail(s, err);
                        return;
                }
        }
        s->ready_step++;
        src_ready_next(s);
}

void src_on_migrate_reply(struct migrate_source *s, json_object *ret, const vmsup_error *e) {
        _cleanup_free_ char *uri = stream_uri(s);
        vmsup_error *err = NULL;

        (void) ret;
        s->migrate_pending = false;
        if (e) {
                s->migrating = false;
                if (s->state != SRC_READY)
                        return; /* a rollback that began meanwhile goes on without it */
                s->qemu_status[0] = '\0';
                src_error_from(&err, e);
                vmsup_error_prefix(&err, "QEMU migrate to %s", uri ?: "?");
                src_fail(s, err);
                return;
        }
        if (s->state != SRC_READY)
                return;
        src_progress(s, "stream", "QEMU sends the guest to %s (TLS)", uri ?: "?");
        s->state = SRC_STREAMING;
        src_timer_set(s->deadline_timer, s->times.t0 + (long) s->env.timeout_s * 1000);
        src_timer_set(s->tick_timer, monotonic_ms());
}

static void on_stream(struct evloop_source *src, int fd, uint32_t revents, void *userdata);

static void stream_connect_progress(struct migrate_source *s) {
        vmsup_error *err = NULL;
        int fd = migchan_tcp_fd(s->stream_connecting), r = migchan_tcp_connect_step(s->stream_connecting, &s->stream_fd, &err);

        if (r < 0) {
                s->stream_src = evloop_source_remove(s->stream_src);
                vmsup_error_prefix(&err, "QEMU's migration stream");
                src_fail(s, err);
                return;
        }
        if (r > 0) {
                s->stream_src = evloop_source_remove(s->stream_src);
                s->stream_connecting = migchan_tcp_free(s->stream_connecting);
                src_timer_set(s->answer_timer, -1);
                s->ready_step++;
                src_ready_next(s);
                return;
        }
        if (fd != migchan_tcp_fd(s->stream_connecting) || !s->stream_src) {
                s->stream_src = evloop_source_remove(s->stream_src);
                if (evloop_add_io(s->env.loop, migchan_tcp_fd(s->stream_connecting), EPOLLOUT, on_stream, s,
                                  &s->stream_src, &err) < 0)
                        src_fail(s, err);
        }
}

static void on_stream(struct evloop_source *src, int fd, uint32_t revents, void *userdata) {
        (void) src;
        (void) fd;
        (void) revents;
        stream_connect_progress(userdata);
}

/* QEMU's tls-creds-x509 from [migration] qemu_tls_dir, return-path and TLS on, our own
 * connection for its stream (see src_stream_shutdown()), then migrate. */
void src_ready_next(struct migrate_source *s) {
        _cleanup_json_ json_object *args = json_object_new_object();
        vmsup_error *err = NULL;
        int r = 0;

        switch (s->ready_step) {
        case 0:
                if (!*s->env.qemu_tls_added) {
                        s->ready_step = 1;
                        src_ready_next(s);
                        return;
                }
                /* read the certificates afresh: they may have been renewed */
                json_object_object_add(args, "id", json_object_new_string(MIGRATE_SOURCE_QEMU_TLS_ID));
                r = src_qmp_send(s, "object-del", args, -1, false, on_ready_reply, &err);
                break;
        case 1:
                json_object_put(args);
                args = mig_qemu_tls_creds(MIGRATE_SOURCE_QEMU_TLS_ID, s->env.qemu_tls_dir, false);
                s->step_at = monotonic_ms();
                r = src_qmp_send(s, "object-add", args, -1, false, on_ready_reply, &err);
                if (r < 0)
                        vmsup_error_prefix(&err, "QEMU's TLS credentials from '%s'", s->env.qemu_tls_dir);
                break;
        case 2:
                /* return-path, and MIGRATION events: the end of a cancel */
                json_object_put(args);
                args = mig_qemu_capabilities();
                r = src_qmp_send(s, "migrate-set-capabilities", args, -1, false, on_ready_reply, &err);
                break;
        case 3:
                /* QEMU checks the destination's certificate against tls-hostname, its host */
                json_object_object_add(args, "tls-creds", json_object_new_string(MIGRATE_SOURCE_QEMU_TLS_ID));
                json_object_object_add(args, "tls-hostname", json_object_new_string(s->env.host));
                r = src_qmp_send(s, "migrate-set-parameters", args, -1, false, on_ready_reply, &err);
                break;
        case 4:
                snprintf(s->port_text, sizeof(s->port_text), "%d", s->dest_port);
                r = migchan_tcp_connect_start(s->env.host, s->port_text, &s->stream_connecting, &err);
                if (r < 0) {
                        vmsup_error_prefix(&err, "QEMU's migration stream");
                        break;
                }
                src_timer_set(s->answer_timer, monotonic_ms() + s->env.answer_ms);
                stream_connect_progress(s);
                return;
        case 5:
                stream_keepalive(s, s->stream_fd);
                json_object_object_add(args, "fdname", json_object_new_string(MIGRATE_SOURCE_STREAM_FD_NAME));
                r = src_qmp_send(s, "getfd", args, s->stream_fd, false, on_ready_reply, &err);
                if (r < 0)
                        vmsup_error_prefix(&err, "hand QEMU the migration connection");
                break;
        case 6: {
                _cleanup_free_ char *uri = stream_uri(s);

                src_note(s, LOG_LEVEL_DEBUG, "migration: QEMU set up for TLS at +%ld ms", monotonic_ms() - s->times.t0);
                json_object_object_add(args, "uri", json_object_new_string("fd:" MIGRATE_SOURCE_STREAM_FD_NAME));
                /* before the command: QEMU's MIGRATION events may come before its reply */
                snprintf(s->qemu_status, sizeof(s->qemu_status), "setup");
                r = src_qmp_send(s, "migrate", args, -1, true, src_on_migrate_reply, &err);
                if (r < 0) {
                        s->qemu_status[0] = '\0';
                        vmsup_error_prefix(&err, "QEMU migrate to %s", uri ?: "?");
                        break;
                }
                s->migrating = s->migrate_pending = true;
                return;
        }
        default:
                return;
        }
        if (r < 0)
                src_fail(s, err);
}

/* ---- streaming ---- */

bool src_qemu_ended(const char *status) {
        return streq(status, "completed") || streq(status, "failed") || streq(status, "cancelled");
}

static void transfer_progress(struct migrate_source *s, json_object *info) {
        json_object *ram = NULL, *p;
        int64_t total, transferred, remaining;

        json_object_object_get_ex(info, "ram", &ram);
        total = mig_json_int(ram, "total");
        transferred = mig_json_int(ram, "transferred");
        remaining = mig_json_int(ram, "remaining");
        p = json_object_new_object();
        json_object_object_add(p, "phase", json_object_new_string("transfer"));
        json_object_object_add(p, "status", json_object_new_string(mig_json_str(info, "status") ?: "?"));
        s->percent = total > 0 ? (int) ((total - remaining) * 100 / total) : 0;
        json_object_object_add(p, "percent", json_object_new_int64(s->percent));
        json_object_object_add(p, "transferred", json_object_new_int64(transferred));
        json_object_object_add(p, "total", json_object_new_int64(total));
        json_object_object_add(p, "remaining", json_object_new_int64(remaining));
        json_object_object_add(p, "expected_downtime_ms", json_object_new_int64(mig_json_int(info, "expected-downtime")));
        json_object_object_add(p, "elapsed_ms", json_object_new_int64(monotonic_ms() - s->times.t0));
        if (s->env.progress)
                s->env.progress(s->env.userdata, p);
        else
                json_object_put(p);
}

static void state_streaming_done(struct migrate_source *s) {
        vmsup_error *err = NULL;

        s->times.completed_at = monotonic_ms();
        src_timer_set(s->tick_timer, -1);
        src_timer_set(s->deadline_timer, -1);
        src_progress(s, "switchover", "QEMU completed; the destination checks the guest and seals its TPM state");
        if (src_send_frame(s, MIG_MIGRATED, NULL, &err) < 0) {
                src_fail(s, err);
                return;
        }
        s->state = SRC_COMPLETED;
        src_await(s, MIG_PREPARED);
}

/* query-migrate: the progress lines and the figures; QEMU's MIGRATION event ends the
 * wait at once. Asynchronous, so that a QEMU whose main loop is held (by a migration stuck
 * on a dead link) does not stop us from hearing the destination, signals and the deadline. */
static void on_query(struct migrate_source *s, json_object *info, const vmsup_error *e) {
        const char *status = mig_json_str(info, "status") ?: "";
        vmsup_error *err = NULL;
        long now = monotonic_ms();

        s->query_pending = false;
        if (s->state != SRC_STREAMING)
                return;
        if (e) {
                /* a stuck main loop, most likely; the deadline decides */
                src_note(s, LOG_LEVEL_WARNING,
                         "QEMU's monitor has not answered for %ld s (%s); waiting up to the migration timeout",
                         (now - s->query_asked) / 1000, e->msg);
        } else if (streq(status, "completed")) {
                src_figures(s, info);
                state_streaming_done(s);
                return;
        } else if (streq(status, "failed") || streq(status, "cancelled")) {
                vmsup_fail(&err, VMSUP_ERR_UNAVAILABLE, 0, "QEMU's migration %s: %s", status,
                           mig_json_str(info, "error-desc") ?: "no reason given");
                src_fail(s, err);
                return;
        } else
                transfer_progress(s, info);
        src_timer_set(s->tick_timer,
                      src_qemu_ended(s->qemu_status) ? now : s->query_asked + s->env.progress_interval_ms);
}

void src_on_tick(struct evloop_source *t, void *userdata) {
        struct migrate_source *s = userdata;
        vmsup_error *err = NULL;

        (void) t;
        if (s->state != SRC_STREAMING || s->query_pending)
                return;
        if (!src_qemu_usable(s))
                vmsup_fail(&err, VMSUP_ERR_FAILED, 0, "QEMU's monitor is gone");
        else if (src_qmp_send(s, "query-migrate", NULL, -1, false, on_query, &err) < 0)
                vmsup_error_prefix(&err, "QEMU's monitor");
        if (err) {
                src_fail(s, err);
                return;
        }
        s->query_pending = true;
        s->query_asked = monotonic_ms();
}

void src_on_deadline(struct evloop_source *t, void *userdata) {
        struct migrate_source *s = userdata;
        vmsup_error *err = NULL;

        (void) t;
        if (s->state != SRC_STREAMING)
                return;
        vmsup_fail(&err, VMSUP_ERR_BUSY, 0, "the migration did not complete within %u s%s", s->env.timeout_s,
                   s->query_pending && monotonic_ms() - s->query_asked > 1000 ? " (QEMU's monitor does not answer)"
                                                                              : "");
        src_fail(s, err);
}
