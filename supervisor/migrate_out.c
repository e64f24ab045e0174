/* The source side of a live migration, the supervisor's part (docs/migration.md): the
 * `migrate` control request starts migrate/source.c's state machine on the supervisor's
 * loop and returns; this file gives it what it needs of the guest (its monitor, the
 * hand-over's secret and spec, the migrated-out marker, the client's progress lines) and
 * acts on its end: done (our copy goes, the supervisor ends), rolled back (the guest runs
 * on here), or unknown (it stays paused here with the marker). */
#include "config.h"

#include <errno.h>
#include <signal.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/fileio.h"
#include "common/log.h"
#include "common/secmem.h"
#include "common/util.h"
#include "migrate/source.h"
#include "secrets/localstore.h"
#include "supervisor/guest_internal.h"

#define PROGRESS_INTERVAL_MS 500
#define CANCEL_TIMEOUT_MS 10000

struct migrate_out {
        struct guest *g;
        struct control_conn *conn; /* the `vmsup migrate` client: progress lines, then the answer */
        struct migrate_source *src;
        char *host, *port;
        char to[300];              /* "HOST:PORT", for messages and status */
        int percent;               /* of the guest's memory sent, for `vmsup status` */
        struct migration_tls_files tls;
        long t0;
};

static struct migrate_out *out_free(struct migrate_out *o) {
        if (!o)
                return NULL;
        migrate_source_free(o->src);
        if (o->conn)
                control_conn_free(o->conn);
        migration_tls_files_clear(&o->tls);
        free(o->host);
        free(o->port);
        free(o);
        return NULL;
}

static void cb_qmp_queued(void *userdata) {
        struct migrate_out *o = userdata;

        guest_qmp_watch(o->g);
}

/* The secret (host mode: from the local store, as Nova's _add_vtpm_secret_to_live_migrate_data)
 * and the guest spec. */
static int cb_handover(void *userdata, char **ret_pass, char ret_id[MIGRATE_SOURCE_SECRET_ID_LEN + 1],
                       json_object **ret_spec, vmsup_error **err) {
        struct migrate_out *o = userdata;
        struct guest *g = o->g;
        struct localstore *store = NULL;
        _cleanup_secmem_ char *pass = NULL;
        char secret_id[LOCALSTORE_UUID_LEN + 1];
        json_object *spec;
        int r;

        r = localstore_open(g->cfg->paths.secrets_dir, false, &store, err);
        if (r >= 0)
                r = localstore_get(store, g->spec.uuid, &pass, secret_id, err);
        localstore_free(store);
        if (r == 0 || (r < 0 && (*err)->errnum == ENOENT)) {
                if (r < 0)
                        *err = vmsup_error_free(*err);
                return vmsup_fail(err, VMSUP_ERR_UNAVAILABLE, 0,
                                  "TPM secret was not found. Try hard-rebooting the instance to recover.");
        }
        if (r < 0)
                return r;
        spec = json_object_from_file(g->dirs.spec_copy);
        if (!spec)
                return vmsup_fail(err, VMSUP_ERR_DATA, 0, "read the guest spec '%s'", g->dirs.spec_copy);
        *ret_pass = TAKE_PTR(pass);
        snprintf(ret_id, MIGRATE_SOURCE_SECRET_ID_LEN + 1, "%s", secret_id);
        *ret_spec = spec;
        return 0;
}

static uint64_t cb_tpm_generation(void *userdata) {
        struct migrate_out *o = userdata;

        return o->g->sync ? tpm_sync_generation(o->g->sync) : 0;
}

static void cb_progress(void *userdata, json_object *p) {
        struct migrate_out *o = userdata;
        json_object *v;

        if (json_object_object_get_ex(p, "percent", &v))
                o->percent = json_object_get_int(v);
        guest_notify_status(o->g, "migrating to %s: %d%%", o->to, o->percent);
        control_conn_progress(o->conn, p);
}

static void cb_note(void *userdata, enum log_level level, const char *text) {
        (void) userdata;
        log_msg(level, "%s", text);
}

static int cb_write_marker(void *userdata, vmsup_error **err) {
        struct migrate_out *o = userdata;
        char text[512], when[64];
        time_t now = time(NULL);
        struct tm tm;

        strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&now, &tm));
        snprintf(text, sizeof(text), "to %s:%s at %s\n", o->host, o->port, when);
        if (write_file_atomic(o->g->dirs.migrated_out, text, strlen(text), 0600, err) < 0)
                return vmsup_error_prefix(err, "record the hand-over");
        return 0;
}

static void cb_remove_marker(void *userdata) {
        struct migrate_out *o = userdata;

        if (unlink(o->g->dirs.migrated_out) < 0 && errno != ENOENT)
                log_error("remove '%s': %s; remove it by hand before the next start", o->g->dirs.migrated_out,
                          strerror(errno));
}

/* MIGRATION_* (and STOPPED) with the destination as the peer; reason may be NULL */
static void migration_event(struct migrate_out *o, const char *event, const char *reason) {
        json_object *d = json_object_new_object();

        json_object_object_add(d, "direction", json_object_new_string("out"));
        json_object_object_add(d, "peer", json_object_new_string(o->to));
        if (reason)
                json_object_object_add(d, "reason", json_object_new_string(reason));
        events_emit(o->g->events, event, d);
}

/* The guest runs on the destination: stop ours without keeping its TPM state, and
 * delete the guest's secret, sealed state and files here (Nova's post_live_migration
 * and cleanup; the Barbican secret belongs to the guest and stays). */
static void finish_source(struct guest *g) {
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

/* The migration is over: the supervisor goes on as the outcome left the guest (or ends:
 * done). What came meanwhile is dealt with now: QEMU or swtpm gone, a signal's stop. */
static void ended(struct migrate_out *o) {
        struct guest *g = o->g;
        vmsup_error *err = NULL;

        g->out = NULL;
        g->migration = NULL;
        out_free(o);
        if (g->done)
                return;
        if (g->sync_src && evloop_io_set_events(g->sync_src, EPOLLIN, &err) < 0) {
                log_error("the live TPM state: %s", err->msg);
                vmsup_error_free(err);
        }
        guest_check_children(g);
        if (g->interrupted && !g->done)
                guest_begin_stop(g, g->cfg->supervisor.stop_timeout, false, false);
}

static void done(struct migrate_out *o, const struct migrate_source_times *t) {
        struct guest *g = o->g;
        json_object *ret = json_object_new_object();
        long cleanup_at = monotonic_ms();

        migration_event(o, "MIGRATION_COMPLETED", NULL);
        finish_source(g);
        migration_event(o, "STOPPED", "migrated");
        log_info("guest migrated to %s:%s: running there %ld ms after the request (destination ready in "
                 "%ld ms, QEMU %" PRId64 " ms with %" PRId64 " ms downtime, switch-over %ld ms); our copy "
                 "removed in %ld ms", o->host, o->port, t->running_at - t->t0, t->ready_at - t->t0, t->qemu_total_ms,
                 t->downtime_ms, t->running_at - t->completed_at, monotonic_ms() - cleanup_at);
        json_object_object_add(ret, "host", json_object_new_string(o->host));
        json_object_object_add(ret, "total_ms", json_object_new_int64(t->running_at - t->t0));
        json_object_object_add(ret, "prepare_ms", json_object_new_int64(t->ready_at - t->t0));
        json_object_object_add(ret, "transfer_ms", json_object_new_int64(t->completed_at - t->ready_at));
        json_object_object_add(ret, "switchover_ms", json_object_new_int64(t->running_at - t->completed_at));
        json_object_object_add(ret, "cleanup_ms", json_object_new_int64(monotonic_ms() - cleanup_at));
        json_object_object_add(ret, "qemu_total_ms", json_object_new_int64(t->qemu_total_ms));
        json_object_object_add(ret, "downtime_ms", json_object_new_int64(t->downtime_ms));
        control_conn_reply_ok(o->conn, ret);
        guest_finish(g, 0);
}

/* The migration has ended (from its own timer: o may go). */
static void cb_finished(void *userdata, enum migrate_outcome outcome, const vmsup_error *why,
                        const struct migrate_source_times *times) {
        struct migrate_out *o = userdata;
        struct guest *g = o->g;

        switch (outcome) {
        case MIGRATE_DONE:
                guest_notify_stopping(g, "migrated: the guest runs on the destination");
                done(o, times);
                break;
        case MIGRATE_OUTCOME_UNKNOWN: {
                vmsup_error *err = NULL;

                /* Nobody can tell here whether the destination runs the guest. */
                log_error("live migration to %s:%s: %s. The destination had the order to run the guest; whether it "
                          "does is unknown. The guest stays paused here and cannot start here again (%s). See "
                          "vmsup(8), MIGRATION.", o->host, o->port, why->msg, g->dirs.migrated_out);
                vmsup_fail(&err, VMSUP_ERR_BUSY, 0,
                           "outcome unknown (the guest stays paused here; see vmsup(8), MIGRATION): %s", why->msg);
                migration_event(o, "MIGRATION_FAILED", err->msg);
                control_conn_reply_error(o->conn, VMSUP_ERR_BUSY, err->msg);
                vmsup_error_free(err);
                guest_notify_status(g, "paused: migration outcome unknown (see vmsup(8), MIGRATION)");
                break;
        }
        case MIGRATE_ROLLED_BACK:
                log_error("live migration to %s:%s failed: %s; the guest runs here, with its TPM state", o->host,
                          o->port, why->msg);
                migration_event(o, "MIGRATION_FAILED", why->msg);
                control_conn_reply_error(o->conn, why->kind ? why->kind : VMSUP_ERR_FAILED, why->msg);
                guest_notify_status(g, "running (the migration failed and was rolled back)");
                break;
        }
        ended(o);
}

/* ---- the guest's events while the migration runs (g->migration) ------------------------- */

static void hook_qemu_event(struct guest *g, const char *event, json_object *data) {
        if (g->out && g->out->src && streq(event, "MIGRATION"))
                migrate_source_qemu_event(g->out->src, event, data);
}

/* QEMU exited (reaped): the migration fails, if it still can; the guest's end waits for
 * the migration's (ended()). */
static bool hook_child_exited(struct guest *g, bool qemu) {
        if (!g->out)
                return false;
        if (qemu && g->out->src)
                migrate_source_qemu_exited(g->out->src);
        return true;
}

/* SIGTERM or SIGINT: cancels before COMMIT; the guest is stopped once it has ended. */
static bool hook_signal(struct guest *g, int signo) {
        if (!g->out)
                return false;
        if (migrate_source_committed(g->out->src))
                log_info("SIG%s during the migration, after the destination was told to run the guest: the "
                         "migration finishes first", sigabbrev_np(signo));
        else
                log_info("SIG%s during the migration: it is cancelled, then the guest stops", sigabbrev_np(signo));
        g->interrupted = true;
        migrate_source_interrupt(g->out->src, signo);
        return true;
}

/* Every request but status waits for the migration's end. */
static bool hook_request(struct guest *g, struct control_conn *c, const char *cmd) {
        char msg[400];

        if (!g->out)
                return false;
        snprintf(msg, sizeof(msg), "the guest is being migrated to %s; '%s' must wait until that ends", g->out->to,
                 cmd);
        control_conn_reply_error(c, VMSUP_ERR_BUSY, msg);
        control_conn_free(c);
        return true;
}

/* status: "migration": {"to", "status", "percent"} */
static void hook_status(struct guest *g, json_object *o) {
        json_object *m;

        if (!g->out)
                return;
        m = json_object_new_object();
        json_object_object_add(m, "to", json_object_new_string(g->out->to));
        json_object_object_add(m, "status",
                               json_object_new_string(g->migration_status[0] ? g->migration_status : "preparing"));
        json_object_object_add(m, "percent", json_object_new_int(g->out->percent));
        json_object_object_add(o, "migration", m);
}

static const struct guest_migration outgoing_hooks = {
        .qemu_event = hook_qemu_event,
        .child_exited = hook_child_exited,
        .signal = hook_signal,
        .request = hook_request,
        .status = hook_status,
};

/* Before anything goes to the destination: a guest vmsup migrates, and one that runs. */
static int check_guest(struct guest *g, vmsup_error **err) {
        if (!g->tpm.present)
                return vmsup_fail(err, VMSUP_ERR_UNAVAILABLE, 0,
                                  "guest %s has no vTPM: vmsup live-migrates vTPM guests in host mode only",
                                  g->spec.uuid);
        /* Nova's compute API (reject_legacy_vtpm_live_migration): host mode only */
        if (g->tpm.secret_security != SECRET_SECURITY_HOST)
                return vmsup_fail(err, VMSUP_ERR_UNAVAILABLE, 0,
                                  "Operation 'live-migration' not supported for vTPM-enabled instance (%s).",
                                  g->spec.uuid);
        if (g->migration)
                return vmsup_fail(err, VMSUP_ERR_BUSY, 0, "the guest's incoming migration has not ended yet");
        if (g->state != GUEST_RUNNING || !g->qmp)
                return vmsup_fail(err, VMSUP_ERR_BUSY, 0, "the guest is not running (%s)", guest_state_name(g));
        return 0;
}

void migrate_out(struct guest *g, struct control_conn *c) {
        struct migrate_out *o;
        struct migrate_source_env env;
        vmsup_error *err = NULL;
        json_object *v;
        const char *host = json_object_object_get_ex(c->request, "host", &v) ? json_object_get_string(v) : NULL;
        const char *port = json_object_object_get_ex(c->request, "port", &v) ? json_object_get_string(v) : NULL;
        int r;

        if (!host || !host[0] || !port) {
                control_conn_reply_error(c, VMSUP_ERR_USAGE, "migrate request without host and port");
                control_conn_free(c);
                return;
        }
        o = calloc(1, sizeof(*o));
        if (!o || !(o->host = strdup(host)) || !(o->port = strdup(port))) {
                control_conn_reply_error(c, VMSUP_ERR_SYSTEM, "out of memory");
                control_conn_free(c);
                out_free(o);
                return;
        }
        o->g = g;
        o->conn = c;
        snprintf(o->to, sizeof(o->to), strchr(host, ':') ? "[%s]:%s" : "%s:%s", host, port);
        g->migration_status[0] = '\0';
        log_info("live migration to %s:%s requested", o->host, o->port);

        r = check_guest(g, &err);
        if (r >= 0)
                r = host_config_migration_tls(g->cfg, false, &o->tls, &err);
        if (r >= 0) {
                env = (struct migrate_source_env) {
                        .loop = g->loop,
                        .qmp = &g->qmp,
                        .qemu_tls_added = &g->migrate_tls_added,
                        .uuid = g->spec.uuid,
                        .host = o->host,
                        .port = o->port,
                        .tls = { .ca_file = o->tls.ca, .cert_file = o->tls.cert, .key_file = o->tls.key },
                        .qemu_tls_dir = g->cfg->migration.qemu_tls_dir,
                        .timeout_s = g->cfg->migration.timeout,
                        .answer_ms = (int) g->cfg->migration.answer_timeout * 1000,
                        .qmp_timeout_ms = QMP_COMMAND_TIMEOUT,
                        .cancel_timeout_ms = CANCEL_TIMEOUT_MS,
                        .progress_interval_ms = PROGRESS_INTERVAL_MS,
                        .qmp_queued = cb_qmp_queued,
                        .handover = cb_handover, .tpm_generation = cb_tpm_generation,
                        .progress = cb_progress,
                        .note = cb_note,
                        .write_marker = cb_write_marker,
                        .remove_marker = cb_remove_marker,
                        .finished = cb_finished,
                        .userdata = o,
                };
                r = migrate_source_start(&env, &o->src, &err);
        }
        if (r < 0) {
                log_error("live migration to %s:%s failed: %s; the guest runs here, with its TPM state", o->host,
                          o->port, err->msg);
                control_conn_reply_error(c, err->kind ? err->kind : VMSUP_ERR_FAILED, err->msg);
                vmsup_error_free(err);
                out_free(o);
                return;
        }
        g->out = o;
        g->migration = &outgoing_hooks;
        migration_event(o, "MIGRATION_STARTED", NULL);
        /* Not the TPM state's sync meanwhile: what swtpm writes at the switch-over (its
         * volatile state) is sealed after the migration if it fails, and not at all if it
         * succeeds, instead of competing with QEMU for the CPU during the downtime. */
        if (g->sync_src && evloop_io_set_events(g->sync_src, 0, &err) < 0) {
                log_warning("the live TPM state: %s", err->msg);
                err = vmsup_error_free(err);
        }
}

void migrate_out_free(struct guest *g) {
        if (g->out)
                g->migration = NULL;
        g->out = out_free(g->out);
}
