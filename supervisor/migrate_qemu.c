/* QEMU's side of an incoming migration, blocking, for migrate_in.c (the destination's
 * supervisor, which does not run on the event loop yet): its TLS credentials, the stream
 * socket handed over, QMP commands and the wait for a MIGRATION status. The source's half
 * does all of this asynchronously on the loop (migrate/source.c). */
#include "config.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "common/log.h"
#include "common/util.h"
#include "supervisor/guest_internal.h"

int migrate_qmp(struct guest *g, const char *cmd, json_object *args, json_object **ret, vmsup_error **err) {
        if (!g->qmp)
                return vmsup_fail(err, VMSUP_ERR_FAILED, 0, "QEMU's monitor is gone");
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
                        return vmsup_fail(err, VMSUP_ERR_FAILED, 0, "QEMU's monitor is gone");
                if (left <= 0)
                        return vmsup_fail(err, VMSUP_ERR_BUSY, 0, "QEMU's migration is still '%s' after %d s",
                                          g->migration_status, timeout_ms / 1000);
                if (poll(&p, 1, (int) left) < 0 && errno != EINTR)
                        return vmsup_fail(err, VMSUP_ERR_SYSTEM, errno, "poll");
                if (p.revents && qmp_client_dispatch(g->qmp, err) < 0)
                        return vmsup_error_prefix(err, "QEMU's monitor");
        }
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
                return vmsup_fail(err, VMSUP_ERR_FAILED, 0, "QEMU's monitor is gone");
        if (qmp_client_execute(g->qmp, "getfd", args, fd, QMP_COMMAND_TIMEOUT, NULL, err) < 0)
                return vmsup_error_prefix(err, "hand QEMU the migration connection");
        return 0;
}

