/* The source's rollback (see source.h): QEMU's stream shut down, its migration
 * cancelled, the destination's hang-up awaited, the guest resumed if it ran, the marker
 * removed. */
#include "config.h"

#include <stdio.h>

#include "common/util.h"
#include "migrate/proto.h"
#include "migrate/source_internal.h"

void src_rb_advance(struct migrate_source *s, enum rb_step next) {
        s->rb = next;
        src_roll_back_next(s);
}

static void on_rb_status(struct migrate_source *s, json_object *info, const vmsup_error *e) {
        (void) e;
        snprintf(s->qemu_status, sizeof(s->qemu_status), "%s", mig_json_str(info, "status") ?: "");
        s->rb_completed = s->migrating && streq(s->qemu_status, "completed");
        src_rb_advance(s, s->migrating && !src_qemu_ended(s->qemu_status) ? RB_CANCEL : RB_GONE_WAIT);
}

static void on_rb_cancel(struct migrate_source *s, json_object *ret, const vmsup_error *e) {
        (void) ret;
        (void) e;
        src_rb_advance(s, RB_CANCEL_WAIT);
}

static void on_rb_run_state(struct migrate_source *s, json_object *ret, const vmsup_error *e) {
        const char *status = mig_json_str(ret, "status");

        (void) e;
        if (status && !streq(status, "running")) {
                snprintf(s->qemu_status, sizeof(s->qemu_status), "%s", status); /* for cont's messages */
                src_rb_advance(s, RB_CONT);
        } else
                src_rb_advance(s, RB_END);
}

static void on_rb_cont(struct migrate_source *s, json_object *ret, const vmsup_error *e) {
        (void) ret;
        if (e)
                src_note(s, LOG_LEVEL_ERROR, "the guest stays %s here: cont failed: %s", s->qemu_status, e->msg);
        else
                src_note(s, LOG_LEVEL_INFO, "the guest runs here again (it was %s)", s->qemu_status);
        src_rb_advance(s, RB_END);
}

void src_on_wait_timer(struct evloop_source *t, void *userdata) {
        struct migrate_source *s = userdata;

        (void) t;
        if (s->state != SRC_ROLLING_BACK)
                return;
        if (s->rb == RB_CANCEL_WAIT) {
                src_note(s, LOG_LEVEL_ERROR, "cancelling QEMU's migration: QEMU's migration is still '%s' after %d s",
                         s->qemu_status, s->env.cancel_timeout_ms / 1000);
                src_rb_advance(s, RB_GONE_WAIT);
        } else if (s->rb == RB_GONE_WAIT) {
                src_note(s, LOG_LEVEL_WARNING,
                         "the destination did not hang up within %d s of the ABORT; its QEMU may still hold the guest's disks",
                         s->env.answer_ms / 1000);
                src_rb_advance(s, RB_RUN_STATE);
        }
}

/* Undo: cancel QEMU's migration if it runs, and let the guest run here again. */
void src_roll_back_next(struct migrate_source *s) {
        vmsup_error *err = NULL;

        switch (s->rb) {
        case RB_STATUS:
                if (!(s->migrating || s->migrate_pending) || !src_qemu_usable(s)) {
                        src_rb_advance(s, RB_GONE_WAIT);
                        return;
                }
                src_stream_shutdown(s);
                /* after migrate's own reply (QMP answers in order): s->migrating is known then */
                if (src_qmp_send(s, "query-migrate", NULL, -1, false, on_rb_status, &err) < 0) {
                        vmsup_error_free(err);
                        src_rb_advance(s, RB_GONE_WAIT);
                }
                return;
        case RB_CANCEL:
                if (src_qmp_send(s, "migrate_cancel", NULL, -1, false, on_rb_cancel, &err) < 0) {
                        vmsup_error_free(err);
                        src_rb_advance(s, RB_CANCEL_WAIT);
                }
                return;
        case RB_CANCEL_WAIT:
                if (src_qemu_ended(s->qemu_status)) {
                        src_rb_advance(s, RB_GONE_WAIT);
                        return;
                }
                if (!src_qemu_usable(s)) {
                        src_note(s, LOG_LEVEL_ERROR, "cancelling QEMU's migration: QEMU's monitor is gone");
                        src_rb_advance(s, RB_GONE_WAIT);
                        return;
                }
                src_timer_set(s->wait_timer, monotonic_ms() + s->env.cancel_timeout_ms);
                return;
        case RB_GONE_WAIT:
                /* After a completed QEMU migration the destination's QEMU has the guest's
                 * disks open and locked (shared storage): `cont` here fails ("Failed to get
                 * "write" lock") until it is gone. The destination hangs up once it has
                 * removed it, on our ABORT: wait for that, within answer_timeout, or until
                 * another signal. */
                if (s->rb_completed && s->ch && s->was_running && !src_drain_channel(s)) {
                        src_timer_set(s->wait_timer, monotonic_ms() + s->env.answer_ms);
                        return;
                }
                src_rb_advance(s, RB_RUN_STATE);
                return;
        case RB_RUN_STATE:
                src_timer_set(s->wait_timer, -1);
                if (!src_qemu_usable(s) || !s->was_running ||
                    src_qmp_send(s, "query-status", NULL, -1, false, on_rb_run_state, &err) < 0) {
                        vmsup_error_free(err);
                        src_rb_advance(s, RB_END);
                }
                return;
        case RB_CONT:
                if (src_qmp_send(s, "cont", NULL, -1, false, on_rb_cont, &err) < 0) {
                        src_note(s, LOG_LEVEL_ERROR, "the guest stays %s here: cont failed: %s", s->qemu_status,
                                 err->msg);
                        vmsup_error_free(err);
                        src_rb_advance(s, RB_END);
                }
                return;
        case RB_END:
                if (s->marker) {
                        s->env.remove_marker(s->env.userdata);
                        s->marker = false;
                }
                s->state = SRC_ROLLED_BACK;
                src_finish(s, MIGRATE_ROLLED_BACK);
                return;
        }
}
