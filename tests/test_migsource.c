/* The source's half of a live migration (migrate/source.c) on one evloop: the fake QMP
 * server plays QEMU, a scripted destination (a thread) answers over a real migchan with
 * the test CA's certificates. One test per transition and per rollback decision; the QMP
 * scripts are strict, so a command the rule forbids (a cancel, a cont) fails the test. */
#include "config.h"

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/evloop.h"
#include "common/secmem.h"
#include "common/util.h"
#include "migrate/migchan.h"
#include "migrate/source.h"
#include "qmp/client.h"
#include "tests/fakeqmp.h"
#include "tests/helpers.h"

#define GUEST "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
#define SECRET_UUID "11111111-2222-3333-4444-555555555555"
#define PASSPHRASE "c2VjcmV0LXBhc3NwaHJhc2UtZm9yLXRoZS12dHBt"
#define DEST "127.0.0.2" /* host "b" of tests/migcerts.sh */
#define LONG_MS 20000    /* generous: only a hang would reach it */

/* ---- the scripted destination ---- */

enum peer_op {
        PE_END = 0,
        PE_EXPECT,     /* the next frame must be of type (SECRET: the passphrase) */
        PE_SEND,       /* type with json (NULL: {}) */
        PE_READY,      /* listen for QEMU's stream, send READY, accept it and write "stream" on it */
        PE_GO,         /* wait for the test's go */
        PE_NOTIFY,     /* tell the test */
        PE_RESET,      /* close the channel with a TCP reset, at once */
        PE_HANGUP,     /* close the channel */
        PE_DRAIN,      /* read until the source hangs up (an ABORT is recorded) */
        PE_STREAM_EOF, /* QEMU's stream must end (the source shut it down) */
};

struct peer_step {
        enum peer_op op;
        enum mig_msg type;
        const char *json;
};

struct t {
        char *certs;
        struct evloop *loop;
        struct fakeqmp *fq;
        struct qmp_client *qmp;
        struct evloop_source *qmp_src, *qmp_timer;
        struct migrate_source *s;
        struct migrate_source_env env;
        bool tls_added;

        /* what the callbacks saw */
        bool finished;
        enum migrate_outcome outcome;
        char why[1024];
        enum vmsup_err_kind why_kind;
        struct migrate_source_times times;
        int markers_written, markers_removed;
        char notes[16384];
        int n_progress, n_transfer;
        char phases[512];

        /* test knobs */
        bool fail_marker;
        unsigned timeout_s;
        void (*between)(struct t *t); /* before each round of the loop */
        int step;                     /* the between hook's own progress */

        /* the destination */
        const struct peer_step *peer;
        pthread_t thread;
        bool thread_started;
        int listen_fd;
        char port[8];
        sem_t go, notify;
        char peer_fail[1024];
        char abort_text[1024];
        char received[512];

        /* the source's view at the end */
        int percent;
        char qemu_status[32];
        bool committed;
};

static struct t T;

static void peer_failed(struct t *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void peer_failed(struct t *t, const char *fmt, ...) {
        va_list ap;

        if (t->peer_fail[0])
                return;
        va_start(ap, fmt);
        vsnprintf(t->peer_fail, sizeof(t->peer_fail), fmt, ap);
        va_end(ap);
}

/* host "a" (the source) and "b" (the destination) of the test CA */
static char ca_file[512], a_cert[512], a_key[512], b_cert[512], b_key[512];

static int listen_on(const char *addr, char port[8]) {
        struct sockaddr_in sa;
        socklen_t len = sizeof(sa);
        vmsup_error *err = NULL;
        int fd = migchan_listen(addr, "0", &err);

        if (fd < 0 || getsockname(fd, (struct sockaddr *) &sa, &len) < 0)
                return -1;
        snprintf(port, 8, "%u", ntohs(sa.sin_port));
        return fd;
}

static bool sem_wait_long(sem_t *s) {
        struct timespec ts;

        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += LONG_MS / 1000;
        while (sem_timedwait(s, &ts) < 0)
                if (errno != EINTR)
                        return false;
        return true;
}

static void *peer_main(void *arg) {
        struct t *t = arg;
        struct migchan_tls tls = { .ca_file = ca_file, .cert_file = b_cert, .key_file = b_key };
        struct migchan *ch = NULL;
        vmsup_error *err = NULL;
        int stream = -1;

        if (migchan_accept(t->listen_fd, &tls, LONG_MS, &ch, &err) < 0) {
                peer_failed(t, "accept: %s", err->msg);
                goto out;
        }
        for (const struct peer_step *p = t->peer; p->op != PE_END; p++) {
                switch (p->op) {
                case PE_EXPECT: {
                        struct mig_frame f = { 0 };

                        if (migchan_recv_wait(ch, 0, LONG_MS, &f, &err) < 0) {
                                peer_failed(t, "waiting for %s: %s", mig_msg_name(p->type), err->msg);
                                goto out;
                        }
                        snprintf(t->received + strlen(t->received), sizeof(t->received) - strlen(t->received), "%s ",
                                 mig_msg_name(f.type));
                        if (f.type == MIG_ABORT)
                                snprintf(t->abort_text, sizeof(t->abort_text), "%s",
                                         json_object_get_string(json_object_object_get(f.json, "error")));
                        if (f.type != p->type)
                                peer_failed(t, "expected %s, got %s", mig_msg_name(p->type), mig_msg_name(f.type));
                        else if (f.type == MIG_SECRET && (f.len != strlen(PASSPHRASE) ||
                                                          memcmp(f.secret, PASSPHRASE, f.len) != 0))
                                peer_failed(t, "SECRET is not the passphrase");
                        mig_frame_clear(&f);
                        if (t->peer_fail[0])
                                goto out;
                        break;
                }
                case PE_SEND: {
                        json_object *o = p->json ? json_tokener_parse(p->json) : NULL;
                        int r = migchan_send_json(ch, p->type, o, LONG_MS, &err);

                        json_object_put(o);
                        if (r < 0) {
                                peer_failed(t, "send %s: %s", mig_msg_name(p->type), err->msg);
                                goto out;
                        }
                        break;
                }
                case PE_READY: {
                        char port[8], ready[64];
                        int l = listen_on(DEST, port);
                        struct pollfd pfd = { .fd = l, .events = POLLIN };
                        json_object *o;
                        int r;

                        if (l < 0) {
                                peer_failed(t, "listen for the stream");
                                goto out;
                        }
                        snprintf(ready, sizeof(ready), "{\"port\": %s}", port);
                        o = json_tokener_parse(ready);
                        r = migchan_send_json(ch, MIG_READY, o, LONG_MS, &err);
                        json_object_put(o);
                        if (r < 0 || poll(&pfd, 1, LONG_MS) != 1 || (stream = accept4(l, NULL, NULL, SOCK_CLOEXEC)) < 0 ||
                            write(stream, "stream", 6) != 6) {
                                peer_failed(t, "READY and the stream: %s", err ? err->msg : strerror(errno));
                                close(l);
                                goto out;
                        }
                        close(l);
                        break;
                }
                case PE_GO:
                        if (!sem_wait_long(&t->go)) {
                                peer_failed(t, "no go from the test");
                                goto out;
                        }
                        break;
                case PE_NOTIFY:
                        sem_post(&t->notify);
                        break;
                case PE_RESET: {
                        struct linger lg = { 1, 0 };

                        setsockopt(migchan_fd(ch), SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
                        ch = migchan_free(ch);
                        break;
                }
                case PE_HANGUP:
                        ch = migchan_free(ch);
                        break;
                case PE_DRAIN:
                        for (;;) {
                                struct mig_frame f = { 0 };

                                if (migchan_recv_wait(ch, 0, LONG_MS, &f, &err) < 0)
                                        break;
                                snprintf(t->received + strlen(t->received), sizeof(t->received) - strlen(t->received),
                                         "%s ", mig_msg_name(f.type));
                                if (f.type == MIG_ABORT)
                                        snprintf(t->abort_text, sizeof(t->abort_text), "%s",
                                                 json_object_get_string(json_object_object_get(f.json, "error")));
                                mig_frame_clear(&f);
                        }
                        err = vmsup_error_free(err);
                        break;
                case PE_STREAM_EOF: {
                        struct pollfd pfd = { .fd = stream, .events = POLLIN };
                        char c;

                        if (poll(&pfd, 1, 5000) != 1 || read(stream, &c, 1) > 0)
                                peer_failed(t, "QEMU's stream was not shut down");
                        break;
                }
                default:
                        break;
                }
        }
out:
        vmsup_error_free(err);
        migchan_free(ch);
        if (stream >= 0)
                close(stream);
        return NULL;
}

/* ---- QEMU's monitor on the loop ---- */

static void qmp_update(struct t *t) {
        int ms;

        if (!t->qmp)
                return;
        evloop_io_set_events(t->qmp_src, qmp_client_epoll_events(t->qmp), NULL);
        ms = qmp_client_next_timeout_ms(t->qmp);
        evloop_timer_set(t->qmp_timer, ms < 0 ? -1 : monotonic_ms() + ms);
}

static void qmp_gone(struct t *t) {
        t->qmp_src = evloop_source_remove(t->qmp_src);
        if (t->s)
                migrate_source_qemu_exited(t->s);
        t->qmp = qmp_client_free(t->qmp);
}

static void on_qmp(struct evloop_source *s, int fd, uint32_t revents, void *userdata) {
        struct t *t = userdata;
        vmsup_error *err = NULL;

        (void) s;
        (void) fd;
        (void) revents;
        if (qmp_client_dispatch(t->qmp, &err) < 0) {
                vmsup_error_free(err);
                qmp_gone(t);
                return;
        }
        qmp_update(t);
}

static void on_qmp_timer(struct evloop_source *s, void *userdata) {
        struct t *t = userdata;

        (void) s;
        qmp_client_expire(t->qmp);
        qmp_update(t);
}

static void on_qmp_event(void *userdata, const char *event, json_object *data, json_object *timestamp) {
        struct t *t = userdata;

        (void) timestamp;
        if (t->s)
                migrate_source_qemu_event(t->s, event, data);
}

/* ---- the source's callbacks ---- */

static void cb_qmp_queued(void *userdata) {
        qmp_update(userdata);
}

static int cb_handover(void *userdata, char **ret_pass, char ret_id[MIGRATE_SOURCE_SECRET_ID_LEN + 1],
                       json_object **ret_spec, vmsup_error **err) {
        char *p = secmem_alloc(sizeof(PASSPHRASE));

        (void) userdata;
        if (!p)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "secmem");
        memcpy(p, PASSPHRASE, sizeof(PASSPHRASE));
        *ret_pass = p;
        snprintf(ret_id, MIGRATE_SOURCE_SECRET_ID_LEN + 1, "%s", SECRET_UUID);
        *ret_spec = json_tokener_parse("{\"uuid\": \"" GUEST "\"}");
        return 0;
}

static void cb_progress(void *userdata, json_object *p) {
        struct t *t = userdata;
        const char *phase = json_object_get_string(json_object_object_get(p, "phase"));

        t->n_progress++;
        if (streq(phase, "transfer"))
                t->n_transfer++;
        snprintf(t->phases + strlen(t->phases), sizeof(t->phases) - strlen(t->phases), "%s ", phase);
        json_object_put(p);
}

static void cb_note(void *userdata, enum log_level level, const char *text) {
        struct t *t = userdata;

        (void) level;
        snprintf(t->notes + strlen(t->notes), sizeof(t->notes) - strlen(t->notes), "%s\n", text);
}

static int cb_write_marker(void *userdata, vmsup_error **err) {
        struct t *t = userdata;

        if (t->fail_marker)
                return vmsup_fail(err, VMSUP_ERR_CANT_CREATE, ENOSPC, "record the hand-over");
        t->markers_written++;
        return 0;
}

static void cb_remove_marker(void *userdata) {
        struct t *t = userdata;

        t->markers_removed++;
}

static void cb_finished(void *userdata, enum migrate_outcome o, const vmsup_error *why,
                        const struct migrate_source_times *times) {
        struct t *t = userdata;

        cr_assert(!t->finished, "finished() twice");
        t->finished = true;
        t->outcome = o;
        t->times = *times;
        if (why) {
                snprintf(t->why, sizeof(t->why), "%s", why->msg);
                t->why_kind = why->kind;
        }
}

/* ---- set-up ---- */

static void setup(void) {
        char *cmd = NULL;
        int st;

        memset(&T, 0, sizeof(T));
        T.listen_fd = -1;
        T.certs = test_mkdtemp();
        cr_assert(asprintf(&cmd, "sh '%s/tests/migcerts.sh' '%s' a:127.0.0.1 b:127.0.0.2 >/dev/null", TEST_SRCDIR,
                           T.certs) > 0);
        st = system(cmd);
        free(cmd);
        cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0,
                  "tests/migcerts.sh failed (exit %d): it needs certtool, Debian package gnutls-bin",
                  WIFEXITED(st) ? WEXITSTATUS(st) : -1);
        snprintf(ca_file, sizeof(ca_file), "%s/ca-cert.pem", T.certs);
        snprintf(a_cert, sizeof(a_cert), "%s/a/client-cert.pem", T.certs);
        snprintf(a_key, sizeof(a_key), "%s/a/client-key.pem", T.certs);
        snprintf(b_cert, sizeof(b_cert), "%s/b/server-cert.pem", T.certs);
        snprintf(b_key, sizeof(b_key), "%s/b/server-key.pem", T.certs);
        T.timeout_s = 60;
        cr_assert_eq(evloop_new(&T.loop, NULL), 0);
        sem_init(&T.go, 0, 0);
        sem_init(&T.notify, 0, 0);
}

static void teardown(void) {
        if (T.thread_started) {
                sem_post(&T.go);
                pthread_join(T.thread, NULL);
        }
        migrate_source_free(T.s);
        T.qmp_src = evloop_source_remove(T.qmp_src);
        T.qmp_timer = evloop_source_remove(T.qmp_timer);
        qmp_client_free(T.qmp);
        if (T.fq)
                free(fakeqmp_finish(T.fq));
        evloop_free(T.loop);
        if (T.listen_fd >= 0)
                close(T.listen_fd);
        test_rmtree(T.certs);
        free(T.certs);
}

TestSuite(migsource, .init = setup, .fini = teardown, .timeout = 90);

/* QEMU (the script), the destination (peer: NULL for one that never accepts) and the
 * source, started. */
static void start(const struct fakeqmp_step *qemu, const struct peer_step *peer, int answer_ms) {
        vmsup_error *err = NULL;
        int fd = -1;

        T.fq = fakeqmp_start(qemu, &fd);
        cr_assert_not_null(T.fq);
        cr_assert_eq(qmp_client_new_fd(fd, &T.qmp, NULL), 0);
        qmp_client_set_event_handler(T.qmp, on_qmp_event, &T);
        cr_assert_eq(evloop_add_io(T.loop, qmp_client_fd(T.qmp), qmp_client_epoll_events(T.qmp), on_qmp, &T,
                                   &T.qmp_src, NULL), 0);
        cr_assert_eq(evloop_add_timer(T.loop, -1, on_qmp_timer, &T, &T.qmp_timer, NULL), 0);

        T.listen_fd = listen_on(DEST, T.port);
        cr_assert_geq(T.listen_fd, 0);
        T.peer = peer;
        if (peer) {
                cr_assert_eq(pthread_create(&T.thread, NULL, peer_main, &T), 0);
                T.thread_started = true;
        }
        T.env = (struct migrate_source_env) {
                .loop = T.loop,
                .qmp = &T.qmp,
                .qemu_tls_added = &T.tls_added,
                .uuid = GUEST,
                .host = DEST,
                .port = T.port,
                .tls = { .ca_file = ca_file, .cert_file = a_cert, .key_file = a_key },
                .qemu_tls_dir = "/etc/pki/vmsup-qemu",
                .timeout_s = T.timeout_s,
                .answer_ms = answer_ms,
                .qmp_timeout_ms = LONG_MS,
                .cancel_timeout_ms = 5000,
                .progress_interval_ms = 60000, /* one query-migrate, then only on QEMU's event */
                .qmp_queued = cb_qmp_queued,
                .handover = cb_handover,
                .progress = cb_progress,
                .note = cb_note,
                .write_marker = cb_write_marker,
                .remove_marker = cb_remove_marker,
                .finished = cb_finished,
                .userdata = &T,
        };
        cr_assert_eq(migrate_source_start(&T.env, &T.s, &err), 0, "%s", err ? err->msg : "");
}

/* Run the loop until finished(), then check QEMU's script and the destination's. */
static void run(void) {
        long deadline = monotonic_ms() + 60000;
        bool drains = false;
        char *qemu_fail;

        while (!T.finished && monotonic_ms() < deadline) {
                vmsup_error *err = NULL;

                if (T.between)
                        T.between(&T);
                cr_assert_geq(evloop_iterate(T.loop, 200, &err), 0, "%s", err ? err->msg : "");
        }
        cr_assert(T.finished, "the migration did not end (state %s)", migrate_source_state_name(T.s));
        T.percent = migrate_source_percent(T.s);
        snprintf(T.qemu_status, sizeof(T.qemu_status), "%s", migrate_source_qemu_status(T.s));
        T.committed = migrate_source_committed(T.s);
        /* a destination that reads on (PE_DRAIN) sees the end when the source goes; the
         * others must have seen everything while it is still there (PE_STREAM_EOF) */
        for (const struct peer_step *p = T.peer; p && p->op != PE_END; p++)
                drains |= p->op == PE_DRAIN;
        if (drains)
                T.s = migrate_source_free(T.s);
        if (T.thread_started) {
                pthread_join(T.thread, NULL);
                T.thread_started = false;
        }
        T.s = migrate_source_free(T.s);
        cr_assert_str_empty(T.peer_fail, "the destination: %s (the source: %s)", T.peer_fail, T.why);
        /* QEMU's script must have ended: the source hangs up on it */
        T.qmp_src = evloop_source_remove(T.qmp_src);
        T.qmp = qmp_client_free(T.qmp);
        qemu_fail = fakeqmp_finish(T.fq);
        T.fq = NULL;
        cr_assert_null(qemu_fail, "QEMU's script: %s (the source: %s)", qemu_fail, T.why);
}

static void expect_outcome(enum migrate_outcome o, enum vmsup_err_kind kind, const char *needle) {
        static const char *const names[] = { "DONE", "ROLLED_BACK", "UNKNOWN" };

        cr_assert_eq(T.outcome, o, "outcome %s, not %s (%s)", names[T.outcome], names[o], T.why);
        if (needle) {
                cr_assert_not_null(strstr(T.why, needle), "'%s' not in: %s", needle, T.why);
                cr_assert_eq(T.why_kind, kind, "kind %s, not %s, for: %s", vmsup_err_kind_to_string(T.why_kind),
                             vmsup_err_kind_to_string(kind), T.why);
        }
}

/* ---- the scripts ---- */

#define Q_STATUS(st) { FQ_EXPECT, "query-status" }, FQ_REPLY("{\"status\": \"" st "\", \"running\": false}")
#define Q_SETUP                                                                                                   \
        { FQ_EXPECT, "object-add",                                                                                \
          "{\"qom-type\": \"tls-creds-x509\", \"id\": \"vmsup-migration-tls\", \"dir\": \"/etc/pki/vmsup-qemu\", " \
          "\"endpoint\": \"client\", \"verify-peer\": true}" },                                                    \
                FQ_REPLY("{}"),                                                                                    \
                { FQ_EXPECT, "migrate-set-capabilities",                                                          \
                  "{\"capabilities\": [{\"capability\": \"return-path\", \"state\": true}, "                     \
                  "{\"capability\": \"events\", \"state\": true}]}" },                                            \
                FQ_REPLY("{}"),                                                                                    \
                { FQ_EXPECT, "migrate-set-parameters",                                                            \
                  "{\"tls-creds\": \"vmsup-migration-tls\", \"tls-hostname\": \"" DEST "\"}" },                   \
                FQ_REPLY("{}"), { FQ_EXPECT, "getfd", "{\"fdname\": \"vmsup-migration\"}", "stream" },            \
                FQ_REPLY("{}"), { FQ_EXPECT, "migrate", "{\"uri\": \"fd:vmsup-migration\"}" },                   \
                FQ_EVENT("MIGRATION", "{\"status\": \"setup\"}"), FQ_REPLY("{}")
#define ACTIVE                                                                                                    \
        "{\"status\": \"active\", \"expected-downtime\": 300, \"ram\": {\"total\": 1000, \"transferred\": 400, " \
        "\"remaining\": 600}}"
#define COMPLETED "{\"status\": \"completed\", \"total-time\": 1234, \"downtime\": 56}"
/* QEMU streams (one progress line), then completes */
#define Q_STREAM_COMPLETES                                                                                        \
        { FQ_EXPECT, "query-migrate" }, FQ_REPLY(ACTIVE), FQ_EVENT("MIGRATION", "{\"status\": \"completed\"}"),   \
                { FQ_EXPECT, "query-migrate" }, FQ_REPLY(COMPLETED)
#define Q_STREAM_ACTIVE { FQ_EXPECT, "query-migrate" }, FQ_REPLY(ACTIVE)
/* a rollback that finds QEMU's migration running and cancels it */
#define Q_RB_CANCEL                                                                                               \
        { FQ_EXPECT, "query-migrate" }, FQ_REPLY(ACTIVE), { FQ_EXPECT, "migrate_cancel" }, FQ_REPLY("{}"),        \
                FQ_EVENT("MIGRATION", "{\"status\": \"cancelled\"}")
/* a rollback that finds QEMU's migration completed: nothing to cancel */
#define Q_RB_COMPLETED { FQ_EXPECT, "query-migrate" }, FQ_REPLY(COMPLETED)
#define Q_RESUME Q_STATUS("postmigrate"), { FQ_EXPECT, "cont" }, FQ_REPLY("{}")

#define P_HELLO_BACK                                                                                              \
        { PE_EXPECT, MIG_HELLO }, { PE_SEND, MIG_HELLO, "{\"protocol\": 2, \"uuid\": \"" GUEST "\", \"host\": \"b\"}" }
#define P_HANDOVER P_HELLO_BACK, { PE_EXPECT, MIG_PREPARE }, { PE_EXPECT, MIG_SECRET }
#define P_PREPARED { PE_EXPECT, MIG_MIGRATED }, { PE_SEND, MIG_PREPARED, "{\"generation\": 3}" }
#define P_ABORT(text) { PE_SEND, MIG_ABORT, "{\"error\": \"" text "\"}" }

/* ---- the way through ---- */

Test(migsource, success_to_done) {
        static const struct fakeqmp_step qemu[] = { FQ_HANDSHAKE, Q_STATUS("running"), Q_SETUP, Q_STREAM_COMPLETES,
                                                    { FQ_END } };
        static const struct peer_step peer[] = { P_HANDOVER, { PE_READY }, P_PREPARED, { PE_EXPECT, MIG_COMMIT },
                                                 { PE_SEND, MIG_RUNNING }, { PE_EXPECT, MIG_DONE }, { PE_END } };

        start(qemu, peer, LONG_MS);
        run();
        expect_outcome(MIGRATE_DONE, VMSUP_ERR_OK, NULL);
        cr_assert_str_empty(T.why);
        cr_assert_eq(T.markers_written, 1);
        cr_assert_eq(T.markers_removed, 0);
        cr_assert_str_eq(T.received, "HELLO PREPARE SECRET MIGRATED COMMIT DONE ");
        cr_assert_str_eq(T.phases, "connect prepare stream transfer switchover ");
        cr_assert(T.tls_added);
        cr_assert_eq(T.times.qemu_total_ms, 1234);
        cr_assert_eq(T.times.downtime_ms, 56);
        cr_assert(T.times.t0 <= T.times.ready_at && T.times.ready_at <= T.times.completed_at &&
                  T.times.completed_at <= T.times.running_at);
        cr_assert_eq(T.percent, 40);
        cr_assert_str_eq(T.qemu_status, "completed");
        cr_assert_not_null(strstr(T.notes, "QEMU took 1234 ms (downtime 56 ms)"), "%s", T.notes);
}

/* QEMU's tls-creds-x509 of an earlier migration is replaced: certificates may be renewed */
Test(migsource, replaces_qemu_tls_object) {
        static const struct fakeqmp_step qemu2[] = {
                FQ_HANDSHAKE, Q_STATUS("running"), { FQ_EXPECT, "object-del", "{\"id\": \"vmsup-migration-tls\"}" },
                { FQ_SEND, "{\"error\": {\"class\": \"GenericError\", \"desc\": \"not found\"}, \"id\": $ID}\r\n" },
                Q_SETUP, Q_STREAM_COMPLETES, { FQ_END } };
        static const struct peer_step peer[] = { P_HANDOVER, { PE_READY }, P_PREPARED, { PE_EXPECT, MIG_COMMIT },
                                                 { PE_SEND, MIG_RUNNING }, { PE_EXPECT, MIG_DONE }, { PE_END } };

        T.tls_added = true;
        start(qemu2, peer, LONG_MS);
        run();
        expect_outcome(MIGRATE_DONE, VMSUP_ERR_OK, NULL);
        cr_assert(T.tls_added);
}

/* ---- the destination gives up: ABORT at each step ---- */

Test(migsource, abort_instead_of_hello) {
        static const struct fakeqmp_step qemu[] = { FQ_HANDSHAKE, Q_STATUS("running"), Q_STATUS("running"),
                                                    { FQ_END } };
        static const struct peer_step peer[] = { { PE_EXPECT, MIG_HELLO }, P_ABORT("not expecting this guest"),
                                                 { PE_EXPECT, MIG_ABORT }, { PE_END } };

        start(qemu, peer, LONG_MS);
        run();
        expect_outcome(MIGRATE_ROLLED_BACK, VMSUP_ERR_UNAVAILABLE, "the destination gave up: not expecting this guest");
        cr_assert_eq(T.markers_written, 0);
        cr_assert_str_eq(T.abort_text, "the destination gave up: not expecting this guest");
}

Test(migsource, abort_instead_of_ready) {
        static const struct fakeqmp_step qemu[] = { FQ_HANDSHAKE, Q_STATUS("running"), Q_STATUS("running"),
                                                    { FQ_END } };
        static const struct peer_step peer[] = { P_HANDOVER, P_ABORT("disk full"), { PE_EXPECT, MIG_ABORT },
                                                 { PE_END } };

        start(qemu, peer, LONG_MS);
        run();
        expect_outcome(MIGRATE_ROLLED_BACK, VMSUP_ERR_UNAVAILABLE, "the destination gave up: disk full");
        cr_assert_str_eq(T.received, "HELLO PREPARE SECRET ABORT ");
}

/* while QEMU streams: its migration is cancelled, the stream shut down, the guest resumed */
static void go_after_first_progress(struct t *t) {
        if (t->step == 0 && t->n_transfer >= 1) {
                t->step = 1;
                sem_post(&t->go);
        }
}

Test(migsource, abort_while_streaming_resumes_running_guest) {
        static const struct fakeqmp_step qemu[] = { FQ_HANDSHAKE, Q_STATUS("running"), Q_SETUP, Q_STREAM_ACTIVE,
                                                    Q_RB_CANCEL, Q_RESUME, { FQ_END } };
        static const struct peer_step peer[] = { P_HANDOVER, { PE_READY }, { PE_GO }, P_ABORT("QEMU died here"),
                                                 { PE_EXPECT, MIG_ABORT }, { PE_STREAM_EOF }, { PE_END } };

        T.between = go_after_first_progress;
        start(qemu, peer, LONG_MS);
        run();
        expect_outcome(MIGRATE_ROLLED_BACK, VMSUP_ERR_UNAVAILABLE, "the destination gave up: QEMU died here");
        cr_assert_not_null(strstr(T.notes, "QEMU's migration connection shut down"), "%s", T.notes);
        cr_assert_not_null(strstr(T.notes, "the guest runs here again (it was postmigrate)"), "%s", T.notes);
}

/* an operator's pause stays a pause: no query-status, no cont at the end */
Test(migsource, abort_while_streaming_keeps_paused_guest_paused) {
        static const struct fakeqmp_step qemu[] = { FQ_HANDSHAKE, Q_STATUS("paused"), Q_SETUP, Q_STREAM_ACTIVE,
                                                    Q_RB_CANCEL, { FQ_END } };
        static const struct peer_step peer[] = { P_HANDOVER, { PE_READY }, { PE_GO }, P_ABORT("no"),
                                                 { PE_EXPECT, MIG_ABORT }, { PE_END } };

        T.between = go_after_first_progress;
        start(qemu, peer, LONG_MS);
        run();
        expect_outcome(MIGRATE_ROLLED_BACK, VMSUP_ERR_UNAVAILABLE, "the destination gave up: no");
}

/* QEMU completed: nothing to cancel; the destination's QEMU holds the disks until it is
 * gone, so the source waits for the hang-up (answer_timeout at most) before cont */
Test(migsource, abort_instead_of_prepared_resumes_after_hangup) {
        static const struct fakeqmp_step qemu[] = { FQ_HANDSHAKE, Q_STATUS("running"), Q_SETUP, Q_STREAM_COMPLETES,
                                                    Q_RB_COMPLETED, Q_RESUME, { FQ_END } };
        static const struct peer_step peer[] = { P_HANDOVER, { PE_READY }, { PE_EXPECT, MIG_MIGRATED },
                                                 P_ABORT("could not load the guest"), { PE_EXPECT, MIG_ABORT },
                                                 { PE_HANGUP }, { PE_END } };

        start(qemu, peer, LONG_MS);
        run();
        expect_outcome(MIGRATE_ROLLED_BACK, VMSUP_ERR_UNAVAILABLE, "the destination gave up: could not load the guest");
        cr_assert_not_null(strstr(T.notes, "the guest runs here again"), "%s", T.notes);
        cr_assert_null(strstr(T.notes, "did not hang up"), "%s", T.notes);
}

Test(migsource, abort_instead_of_prepared_waits_for_hangup) {
        static const struct fakeqmp_step qemu[] = { FQ_HANDSHAKE, Q_STATUS("running"), Q_SETUP, Q_STREAM_COMPLETES,
                                                    Q_RB_COMPLETED, Q_RESUME, { FQ_END } };
        static const struct peer_step peer[] = { P_HANDOVER, { PE_READY }, { PE_EXPECT, MIG_MIGRATED },
                                                 P_ABORT("could not load the guest"), { PE_EXPECT, MIG_ABORT },
                                                 { PE_DRAIN }, { PE_END } };

        start(qemu, peer, 1000);
        run();
        expect_outcome(MIGRATE_ROLLED_BACK, VMSUP_ERR_UNAVAILABLE, "the destination gave up: could not load the guest");
        cr_assert_not_null(strstr(T.notes, "the destination did not hang up within 1 s of the ABORT"), "%s", T.notes);
}

Test(migsource, abort_instead_of_prepared_keeps_paused_guest_paused) {
        static const struct fakeqmp_step qemu[] = { FQ_HANDSHAKE, Q_STATUS("paused"), Q_SETUP, Q_STREAM_COMPLETES,
                                                    Q_RB_COMPLETED, { FQ_END } };
        static const struct peer_step peer[] = { P_HANDOVER, { PE_READY }, { PE_EXPECT, MIG_MIGRATED },
                                                 P_ABORT("could not load the guest"), { PE_EXPECT, MIG_ABORT },
                                                 { PE_DRAIN }, { PE_END } };

        start(qemu, peer, LONG_MS);
        run();
        expect_outcome(MIGRATE_ROLLED_BACK, VMSUP_ERR_UNAVAILABLE, "the destination gave up: could not load the guest");
}

/* ---- answer timeouts ---- */

Test(migsource, no_hello_within_answer_timeout) {
        static const struct fakeqmp_step qemu[] = { FQ_HANDSHAKE, Q_STATUS("running"), Q_STATUS("running"),
                                                    { FQ_END } };
        static const struct peer_step peer[] = { { PE_EXPECT, MIG_HELLO }, { PE_DRAIN }, { PE_END } };

        start(qemu, peer, 1000);
        run();
        expect_outcome(MIGRATE_ROLLED_BACK, VMSUP_ERR_BUSY, "no answer from the migration peer within 1 s (waiting for HELLO)");
        cr_assert_str_eq(T.received, "HELLO ABORT ");
}

Test(migsource, no_ready_within_answer_timeout) {
        static const struct fakeqmp_step qemu[] = { FQ_HANDSHAKE, Q_STATUS("running"), Q_STATUS("running"),
                                                    { FQ_END } };
        static const struct peer_step peer[] = { P_HANDOVER, { PE_DRAIN }, { PE_END } };

        start(qemu, peer, 1000);
        run();
        expect_outcome(MIGRATE_ROLLED_BACK, VMSUP_ERR_BUSY, "(waiting for READY)");
        cr_assert_not_null(strstr(T.abort_text, "(waiting for READY)"), "%s", T.abort_text);
}

Test(migsource, no_prepared_within_answer_timeout) {
        static const struct fakeqmp_step qemu[] = { FQ_HANDSHAKE, Q_STATUS("running"), Q_SETUP, Q_STREAM_COMPLETES,
                                                    Q_RB_COMPLETED, Q_RESUME, { FQ_END } };
        static const struct peer_step peer[] = { P_HANDOVER, { PE_READY }, { PE_EXPECT, MIG_MIGRATED },
                                                 { PE_EXPECT, MIG_ABORT }, { PE_HANGUP }, { PE_END } };

        start(qemu, peer, 1000);
        run();
        expect_outcome(MIGRATE_ROLLED_BACK, VMSUP_ERR_BUSY, "(waiting for PREPARED)");
        cr_assert_eq(T.markers_written, 0);
}

/* the destination's handshake never comes: the connect's own timeout */
Test(migsource, silent_destination_times_out_in_handshake) {
        static const struct fakeqmp_step qemu[] = { FQ_HANDSHAKE, Q_STATUS("running"), Q_STATUS("running"),
                                                    { FQ_END } };

        start(qemu, NULL, 1000);
        run();
        expect_outcome(MIGRATE_ROLLED_BACK, VMSUP_ERR_BUSY, "TLS handshake with " DEST);
        cr_assert_not_null(strstr(T.why, "no answer within 1 s"), "%s", T.why);
}

/* ---- QEMU's migration fails ---- */

Test(migsource, qemu_migration_failed) {
        static const struct fakeqmp_step qemu[] = {
                FQ_HANDSHAKE, Q_STATUS("running"), Q_SETUP,
                { FQ_EXPECT, "query-migrate" }, FQ_REPLY("{\"status\": \"failed\", \"error-desc\": \"Unable to write to socket\"}"),
                { FQ_EXPECT, "query-migrate" }, FQ_REPLY("{\"status\": \"failed\"}"),
                Q_STATUS("running"), { FQ_END } };
        static const struct peer_step peer[] = { P_HANDOVER, { PE_READY }, { PE_EXPECT, MIG_ABORT }, { PE_END } };

        start(qemu, peer, LONG_MS);
        run();
        expect_outcome(MIGRATE_ROLLED_BACK, VMSUP_ERR_UNAVAILABLE, "QEMU's migration failed: Unable to write to socket");
        cr_assert_str_eq(T.abort_text, "QEMU's migration failed: Unable to write to socket");
}

Test(migsource, qemu_migration_cancelled_resumes_paused_guest) {
        static const struct fakeqmp_step qemu[] = {
                FQ_HANDSHAKE, Q_STATUS("running"), Q_SETUP, Q_STREAM_ACTIVE,
                FQ_EVENT("MIGRATION", "{\"status\": \"cancelled\"}"),
                { FQ_EXPECT, "query-migrate" }, FQ_REPLY("{\"status\": \"cancelled\"}"),
                { FQ_EXPECT, "query-migrate" }, FQ_REPLY("{\"status\": \"cancelled\"}"),
                Q_RESUME, { FQ_END } };
        static const struct peer_step peer[] = { P_HANDOVER, { PE_READY }, { PE_EXPECT, MIG_ABORT }, { PE_END } };

        start(qemu, peer, LONG_MS);
        run();
        expect_outcome(MIGRATE_ROLLED_BACK, VMSUP_ERR_UNAVAILABLE, "QEMU's migration cancelled: no reason given");
}

Test(migsource, qemu_exits_while_streaming) {
        static const struct fakeqmp_step qemu[] = { FQ_HANDSHAKE, Q_STATUS("running"), Q_SETUP, Q_STREAM_ACTIVE,
                                                    { FQ_HANGUP } };
        static const struct peer_step peer[] = { P_HANDOVER, { PE_READY }, { PE_EXPECT, MIG_ABORT }, { PE_END } };

        start(qemu, peer, LONG_MS);
        run();
        expect_outcome(MIGRATE_ROLLED_BACK, VMSUP_ERR_FAILED, "QEMU ended during the migration");
}

Test(migsource, whole_migration_timeout) {
        static const struct fakeqmp_step qemu[] = { FQ_HANDSHAKE, Q_STATUS("running"), Q_SETUP, Q_STREAM_ACTIVE,
                                                    Q_RB_CANCEL, Q_STATUS("running"), { FQ_END } };
        static const struct peer_step peer[] = { P_HANDOVER, { PE_READY }, { PE_EXPECT, MIG_ABORT }, { PE_END } };

        T.timeout_s = 1;
        start(qemu, peer, LONG_MS);
        run();
        expect_outcome(MIGRATE_ROLLED_BACK, VMSUP_ERR_BUSY, "the migration did not complete within 1 s");
}

/* ---- signals ---- */

static void interrupt_while_streaming(struct t *t) {
        if (t->step == 0 && t->n_transfer >= 1) {
                t->step = 1;
                cr_assert(migrate_source_interrupt(t->s, SIGTERM), "a signal before COMMIT must cancel");
        }
}

Test(migsource, signal_before_commit_cancels) {
        static const struct fakeqmp_step qemu[] = { FQ_HANDSHAKE, Q_STATUS("running"), Q_SETUP, Q_STREAM_ACTIVE,
                                                    Q_RB_CANCEL, Q_STATUS("running"), { FQ_END } };
        static const struct peer_step peer[] = { P_HANDOVER, { PE_READY }, { PE_EXPECT, MIG_ABORT },
                                                 { PE_STREAM_EOF }, { PE_END } };

        T.between = interrupt_while_streaming;
        start(qemu, peer, LONG_MS);
        run();
        expect_outcome(MIGRATE_ROLLED_BACK, VMSUP_ERR_BUSY,
                       "cancelled: the source's supervisor got SIGTERM; the guest stays on the source, which stops it");
        cr_assert_eq(T.markers_written, 0);
}

static void interrupt_while_connecting(struct t *t) {
        if (t->step == 0 && t->n_progress >= 1) {
                t->step = 1;
                cr_assert(migrate_source_interrupt(t->s, SIGINT));
        }
}

/* a destination that never answers the handshake: the signal ends the wait at once */
Test(migsource, signal_in_handshake_cancels) {
        static const struct fakeqmp_step qemu[] = { FQ_HANDSHAKE, Q_STATUS("running"), Q_STATUS("running"),
                                                    { FQ_END } };

        T.between = interrupt_while_connecting;
        start(qemu, NULL, LONG_MS);
        run();
        expect_outcome(MIGRATE_ROLLED_BACK, VMSUP_ERR_BUSY, "cancelled: the source's supervisor got SIGINT");
}

static void interrupt_after_commit(struct t *t) {
        if (t->step == 0 && streq(migrate_source_state_name(t->s), "committed")) {
                t->step = 1;
                cr_assert(!migrate_source_interrupt(t->s, SIGTERM), "a signal after COMMIT must not cancel");
                sem_post(&t->go);
        }
}

Test(migsource, signal_after_commit_does_not_cancel) {
        static const struct fakeqmp_step qemu[] = { FQ_HANDSHAKE, Q_STATUS("running"), Q_SETUP, Q_STREAM_COMPLETES,
                                                    { FQ_END } };
        static const struct peer_step peer[] = { P_HANDOVER, { PE_READY }, P_PREPARED, { PE_EXPECT, MIG_COMMIT },
                                                 { PE_GO }, { PE_SEND, MIG_RUNNING }, { PE_EXPECT, MIG_DONE },
                                                 { PE_END } };

        T.between = interrupt_after_commit;
        start(qemu, peer, LONG_MS);
        run();
        cr_assert_eq(T.step, 1);
        expect_outcome(MIGRATE_DONE, VMSUP_ERR_OK, NULL);
        cr_assert(T.committed);
}

/* ---- after COMMIT ---- */

/* the answer is lost: nobody knows whether the guest runs there. Nothing is undone: no
 * query-status, no cont (QEMU's script ends), the marker stays. */
Test(migsource, lost_running_is_unknown) {
        static const struct fakeqmp_step qemu[] = { FQ_HANDSHAKE, Q_STATUS("running"), Q_SETUP, Q_STREAM_COMPLETES,
                                                    { FQ_END } };
        static const struct peer_step peer[] = { P_HANDOVER, { PE_READY }, P_PREPARED, { PE_EXPECT, MIG_COMMIT },
                                                 { PE_HANGUP }, { PE_END } };

        start(qemu, peer, LONG_MS);
        run();
        cr_assert_eq(T.outcome, MIGRATE_OUTCOME_UNKNOWN, "%s", T.why);
        cr_assert_not_null(strstr(T.why, "the destination: "), "%s", T.why);
        cr_assert_eq(T.markers_written, 1);
        cr_assert_eq(T.markers_removed, 0);
}

Test(migsource, no_running_within_answer_timeout_is_unknown) {
        static const struct fakeqmp_step qemu[] = { FQ_HANDSHAKE, Q_STATUS("running"), Q_SETUP, Q_STREAM_COMPLETES,
                                                    { FQ_END } };
        static const struct peer_step peer[] = { P_HANDOVER, { PE_READY }, P_PREPARED, { PE_EXPECT, MIG_COMMIT },
                                                 { PE_DRAIN }, { PE_END } };

        start(qemu, peer, 2000);
        run();
        cr_assert_eq(T.outcome, MIGRATE_OUTCOME_UNKNOWN, "%s", T.why);
        cr_assert_not_null(strstr(T.why, "(waiting for RUNNING)"), "%s", T.why);
        cr_assert_eq(T.markers_removed, 0);
        /* no ABORT: the destination may run the guest */
        cr_assert_str_eq(T.received, "HELLO PREPARE SECRET MIGRATED COMMIT ");
}

/* the destination says it did not run the guest: the source takes it back */
Test(migsource, abort_after_commit_rolls_back) {
        static const struct fakeqmp_step qemu[] = { FQ_HANDSHAKE, Q_STATUS("running"), Q_SETUP, Q_STREAM_COMPLETES,
                                                    Q_RB_COMPLETED, Q_RESUME, { FQ_END } };
        static const struct peer_step peer[] = { P_HANDOVER, { PE_READY }, P_PREPARED, { PE_EXPECT, MIG_COMMIT },
                                                 P_ABORT("cont failed"), { PE_EXPECT, MIG_ABORT }, { PE_HANGUP },
                                                 { PE_END } };

        start(qemu, peer, LONG_MS);
        run();
        expect_outcome(MIGRATE_ROLLED_BACK, VMSUP_ERR_UNAVAILABLE, "the destination gave up: cont failed");
        cr_assert_eq(T.markers_written, 1);
        cr_assert_eq(T.markers_removed, 1);
        cr_assert(!T.committed);
}

/* the marker cannot be written: no COMMIT, rolled back */
Test(migsource, marker_failure_rolls_back_before_commit) {
        static const struct fakeqmp_step qemu[] = { FQ_HANDSHAKE, Q_STATUS("running"), Q_SETUP, Q_STREAM_COMPLETES,
                                                    Q_RB_COMPLETED, Q_RESUME, { FQ_END } };
        static const struct peer_step peer[] = { P_HANDOVER, { PE_READY }, P_PREPARED, { PE_EXPECT, MIG_ABORT },
                                                 { PE_HANGUP }, { PE_END } };

        T.fail_marker = true;
        start(qemu, peer, LONG_MS);
        run();
        expect_outcome(MIGRATE_ROLLED_BACK, VMSUP_ERR_CANT_CREATE, "record the hand-over");
        cr_assert_eq(T.markers_removed, 0);
}

/* The source's end of its channel to the destination (the socket whose peer is DEST's
 * T.port), or -1. */
static int source_channel_fd(void) {
        for (int fd = 3; fd < 1024; fd++) {
                struct sockaddr_in sa;
                socklen_t len = sizeof(sa);

                if (getpeername(fd, (struct sockaddr *) &sa, &len) == 0 && sa.sin_family == AF_INET &&
                    ntohs(sa.sin_port) == (unsigned) atoi(T.port))
                        return fd;
        }
        return -1;
}

/* RUNNING came, DONE cannot go: the guest runs there all the same */
static void reset_after_commit(struct t *t) {
        static int channel_fd = -1; /* found while it is connected: a reset one has no peer */

        if (channel_fd < 0)
                channel_fd = source_channel_fd();
        if (t->step == 0 && streq(migrate_source_state_name(t->s), "committed")) {
                struct pollfd p = { .fd = channel_fd };

                t->step = 1;
                cr_assert_geq(p.fd, 0, "the source's channel to the destination was not seen open");
                /* RUNNING and the reset are both on their way before the source reads again */
                cr_assert(sem_wait_long(&t->notify));
                /* and the reset has reached the source's socket: loopback delivers it in a
                 * softirq, which a busy machine may defer past the source's DONE */
                cr_assert_eq(poll(&p, 1, LONG_MS), 1, "the destination's reset did not reach the source");
                cr_assert(p.revents & (POLLERR | POLLHUP), "revents 0x%x", (unsigned) p.revents);
        }
}

Test(migsource, done_send_failure_is_still_done) {
        static const struct fakeqmp_step qemu[] = { FQ_HANDSHAKE, Q_STATUS("running"), Q_SETUP, Q_STREAM_COMPLETES,
                                                    { FQ_END } };
        static const struct peer_step peer[] = { P_HANDOVER, { PE_READY }, P_PREPARED, { PE_EXPECT, MIG_COMMIT },
                                                 { PE_SEND, MIG_RUNNING }, { PE_RESET }, { PE_NOTIFY }, { PE_END } };

        T.between = reset_after_commit;
        start(qemu, peer, LONG_MS);
        run();
        expect_outcome(MIGRATE_DONE, VMSUP_ERR_OK, NULL);
        cr_assert_not_null(strstr(T.notes, "send DONE to the destination"), "%s", T.notes);
        cr_assert_not_null(strstr(T.notes, "its hand-over stays unconfirmed there"), "%s", T.notes);
        cr_assert_eq(T.markers_removed, 0);
}

/* a signal while the destination checks the guest cancels; QEMU completed, so the
 * rollback waits for the destination to hang up; a second signal ends that wait */
static void two_signals(struct t *t) {
        if (t->step == 0 && streq(migrate_source_state_name(t->s), "completed")) {
                t->step = 1;
                cr_assert(migrate_source_interrupt(t->s, SIGTERM));
        } else if (t->step == 1 && migrate_source_interrupt(t->s, SIGTERM))
                t->step = 2;
}

Test(migsource, second_signal_ends_the_wait_for_the_hangup) {
        static const struct fakeqmp_step qemu[] = { FQ_HANDSHAKE, Q_STATUS("running"), Q_SETUP, Q_STREAM_COMPLETES,
                                                    Q_RB_COMPLETED, Q_RESUME, { FQ_END } };
        static const struct peer_step peer[] = { P_HANDOVER, { PE_READY }, { PE_EXPECT, MIG_MIGRATED },
                                                 { PE_EXPECT, MIG_ABORT }, { PE_DRAIN }, { PE_END } };

        T.between = two_signals;
        start(qemu, peer, LONG_MS);
        run();
        cr_assert_eq(T.step, 2);
        expect_outcome(MIGRATE_ROLLED_BACK, VMSUP_ERR_BUSY, "cancelled: the source's supervisor got SIGTERM");
        cr_assert_null(strstr(T.notes, "did not hang up"), "%s", T.notes);
}
