/* migrate/dest: the destination of a live migration as a state machine on one evloop. The
 * fake QMP server plays QEMU, a scripted source (a thread) plays the peer over a real
 * migchan with the test CA (tests/migcerts.sh); the destination and the supervisor's
 * callbacks run on the test's loop. One test per transition and per abort decision. */
#include "config.h"

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/evloop.h"
#include "common/util.h"
#include "migrate/dest.h"
#include "migrate/migchan.h"
#include "migrate/proto.h"
#include "qmp/client.h"
#include "nova/specmatch.h"
#include "supervisor/specmatch.h"
#include "tests/fakeqmp.h"
#include "tests/helpers.h"

#define UUID "0b7c6e4a-3f0e-4d5c-9a1b-2c3d4e5f6a7b"
#define SECRET_UUID "11111111-2222-3333-4444-555555555555"
#define LONG_MS 20000 /* generous: only a hang reaches it */
#define SPEC(vcpus)                                                                                              \
        "{\"uuid\": \"" UUID "\", \"name\": \"web-1\", \"vcpus\": " vcpus ", \"memory_mb\": 512, "              \
        "\"flavor\": {\"name\": \"m1\", \"extra_specs\": {\"hw:tpm_version\": \"2.0\", \"hw:tpm_model\": "      \
        "\"tpm-crb\", \"hw:tpm_secret_security\": \"host\"}}, \"owner\": {\"user_id\": \"u\", \"project_id\": " \
        "\"p\"}, \"firmware\": {\"kernel\": \"/srv/k\", \"initrd\": \"/srv/i\"}, \"disks\": []}"

static char *certs;
static char *paths[16];
static size_t npaths;

static const char *path(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static const char *path(const char *fmt, ...) {
        va_list ap;
        char *p = NULL;

        cr_assert_lt(npaths, ARRAY_SIZE(paths));
        va_start(ap, fmt);
        cr_assert(vasprintf(&p, fmt, ap) > 0);
        va_end(ap);
        return paths[npaths++] = p;
}

static void setup(void) {
        char *cmd = NULL;
        int st;

        certs = test_mkdtemp();
        cr_assert(asprintf(&cmd, "sh '%s/tests/migcerts.sh' '%s' a:127.0.0.1 b:127.0.0.2", TEST_SRCDIR, certs) > 0);
        st = system(cmd);
        free(cmd);
        cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0,
                  "tests/migcerts.sh failed (exit %d): it needs certtool, Debian package gnutls-bin",
                  WIFEXITED(st) ? WEXITSTATUS(st) : -1);
}

static void teardown(void) {
        test_rmtree(certs);
        free(certs);
        for (size_t i = 0; i < npaths; i++)
                free(paths[i]);
        npaths = 0;
}

TestSuite(migdest, .init = setup, .fini = teardown, .timeout = 60);

/* ---- the source, scripted ------------------------------------------------------------------ */

enum step { S_HELLO, S_PREPARE, S_SECRET, S_STREAM, S_MIGRATED, S_COMMIT, S_DONE, S_NONE };

struct peer {
        pthread_t thread;
        int port;
        enum step abort_at;  /* ABORT instead of this step */
        enum step silent_at; /* say nothing from this step on; read until the destination hangs up */
        const char *spec;    /* PREPARE's spec */
        bool stray_stream;   /* first a stream connection from another address (127.0.0.2) */
        /* what it got: frame names, "ABORT(reason)" for an ABORT, "EOF" at the end */
        char got[2048];
};

static void got(struct peer *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void got(struct peer *p, const char *fmt, ...) {
        size_t n = strlen(p->got);
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(p->got + n, sizeof(p->got) - n, fmt, ap);
        va_end(ap);
}

/* The next frame; false when the channel ended (noted) */
static bool peer_recv(struct peer *p, struct migchan *ch) {
        struct mig_frame f = { 0 };
        vmsup_error *err = NULL;

        if (migchan_recv_wait(ch, 0, LONG_MS, &f, &err) < 0) {
                got(p, "EOF ");
                vmsup_error_free(err);
                return false;
        }
        if (f.type == MIG_ABORT)
                got(p, "ABORT(%s) ", mig_json_str(f.json, "error"));
        else
                got(p, "%s ", mig_msg_name(f.type));
        mig_frame_clear(&f);
        return true;
}

/* until the destination hangs up */
static void peer_drain(struct peer *p, struct migchan *ch) {
        while (peer_recv(p, ch))
                ;
}

/* send step's frame, an ABORT, or nothing from silent_at on: false when the script ends */
static bool peer_send(struct peer *p, struct migchan *ch, enum step s, enum mig_msg type, json_object *o) {
        _cleanup_json_ json_object *owned = o;
        vmsup_error *err = NULL;

        if (s == p->silent_at) {
                peer_drain(p, ch);
                return false;
        }
        if (s == p->abort_at) {
                _cleanup_json_ json_object *a = json_object_new_object();

                json_object_object_add(a, "error", json_object_new_string("the test gives up"));
                migchan_send_json(ch, MIG_ABORT, a, LONG_MS, &err);
                vmsup_error_free(err);
                peer_drain(p, ch);
                return false;
        }
        if (migchan_send_json(ch, type, o, LONG_MS, &err) < 0) {
                got(p, "SEND-FAILED(%s) ", err->msg);
                vmsup_error_free(err);
                return false;
        }
        return true;
}

static void *peer_main(void *arg) {
        struct peer *p = arg;
        struct migchan_tls tls = { .ca_file = path("%s/ca-cert.pem", certs),
                                   .cert_file = path("%s/b/client-cert.pem", certs),
                                   .key_file = path("%s/b/client-key.pem", certs),
                                   .peer_name = "127.0.0.1" };
        struct migchan *ch = NULL;
        struct mig_frame f = { 0 };
        vmsup_error *err = NULL;
        json_object *prepare;
        char port[8];
        int stream = -1;

        snprintf(port, sizeof(port), "%d", p->port);
        if (migchan_connect("127.0.0.1", port, &tls, LONG_MS, &ch, &err) < 0) {
                got(p, "CONNECT-FAILED(%s) ", err->msg);
                vmsup_error_free(err);
                return NULL;
        }
        if (!peer_send(p, ch, S_HELLO, MIG_HELLO, mig_hello_new(UUID)) || !peer_recv(p, ch))
                goto out;
        prepare = json_object_new_object();
        json_object_object_add(prepare, "spec", json_tokener_parse(p->spec ? p->spec : SPEC("2")));
        json_object_object_add(prepare, "secret_uuid", json_object_new_string(SECRET_UUID));
        if (!peer_send(p, ch, S_PREPARE, MIG_PREPARE, prepare))
                goto out;
        if (p->silent_at == S_SECRET) {
                peer_drain(p, ch);
                goto out;
        }
        if (p->abort_at == S_SECRET) {
                peer_send(p, ch, S_SECRET, MIG_ABORT, NULL);
                goto out;
        }
        if (migchan_send(ch, MIG_SECRET, "s3cret-passphrase", 17, LONG_MS, &err) < 0) {
                got(p, "SEND-FAILED(%s) ", err->msg);
                vmsup_error_free(err);
                goto out;
        }
        /* READY, or an ABORT */
        if (migchan_recv_wait(ch, 0, LONG_MS, &f, &err) < 0) {
                got(p, "EOF ");
                vmsup_error_free(err);
                goto out;
        }
        if (f.type != MIG_READY) {
                got(p, f.type == MIG_ABORT ? "ABORT(%s) " : "%s ",
                    f.type == MIG_ABORT ? mig_json_str(f.json, "error") : mig_msg_name(f.type));
                mig_frame_clear(&f);
                goto out;
        }
        got(p, "READY ");
        snprintf(port, sizeof(port), "%d", (int) mig_json_int(f.json, "port"));
        mig_frame_clear(&f);
        if (p->abort_at == S_STREAM || p->silent_at == S_STREAM) {
                peer_send(p, ch, S_STREAM, MIG_ABORT, NULL);
                goto out;
        }
        if (p->stray_stream) {
                /* from another host than the source's: turned away (closed) */
                struct sockaddr_in from = { .sin_family = AF_INET }, to = { .sin_family = AF_INET };
                int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
                char c;

                inet_pton(AF_INET, "127.0.0.2", &from.sin_addr);
                inet_pton(AF_INET, "127.0.0.1", &to.sin_addr);
                to.sin_port = htons((uint16_t) atoi(port));
                if (fd < 0 || bind(fd, (struct sockaddr *) &from, sizeof(from)) < 0 ||
                    connect(fd, (struct sockaddr *) &to, sizeof(to)) < 0)
                        got(p, "STRAY-FAILED(%s) ", strerror(errno));
                else if (read(fd, &c, 1) == 0)
                        got(p, "STRAY-CLOSED ");
                if (fd >= 0)
                        close(fd);
        }
        /* QEMU's stream: what the fake QEMU finds in the fd it is given */
        if (migchan_tcp_connect("127.0.0.1", port, LONG_MS, &stream, &err) < 0) {
                got(p, "STREAM-FAILED(%s) ", err->msg);
                vmsup_error_free(err);
                goto out;
        }
        if (write(stream, "stream", 6) != 6)
                got(p, "STREAM-WRITE-FAILED ");
        if (!peer_send(p, ch, S_MIGRATED, MIG_MIGRATED, NULL) || !peer_recv(p, ch))
                goto out;
        if (!peer_send(p, ch, S_COMMIT, MIG_COMMIT, NULL) || !peer_recv(p, ch))
                goto out;
        if (peer_send(p, ch, S_DONE, MIG_DONE, NULL))
                peer_drain(p, ch);
out:
        if (stream >= 0)
                close(stream);
        migchan_free(ch);
        return NULL;
}

/* ---- the supervisor's side ------------------------------------------------------------------ */

struct sup {
        struct evloop *loop;
        struct migrate_dest *d;
        struct fakeqmp *fq;
        struct qmp_client *qmp;
        struct evloop_source *qmp_io;
        struct guest_spec ours;
        int qmp_fd;              /* our end of the fake QEMU's monitor */
        const char *mark_fails;  /* mark_committed() fails with this */
        bool received, sealed, marked, started;
        bool finished;
        enum migrate_dest_outcome outcome;
        char why[2048];
        enum vmsup_err_kind why_kind;
        char notes[8192];
};

static void sup_note(void *ud, enum log_level level, const char *text) {
        struct sup *s = ud;
        size_t n = strlen(s->notes);

        snprintf(s->notes + n, sizeof(s->notes) - n, "%d %s\n", (int) level, text);
}

static void qmp_events(struct sup *s) {
        vmsup_error *err = NULL;

        if (s->qmp_io)
                cr_assert_eq(evloop_io_set_events(s->qmp_io, qmp_client_epoll_events(s->qmp), &err), 0);
}

static void sup_qmp_queued(void *ud) {
        qmp_events(ud);
}

static void on_qmp(struct evloop_source *src, int fd, uint32_t revents, void *ud) {
        struct sup *s = ud;
        vmsup_error *err = NULL;

        (void) src, (void) fd, (void) revents;
        if (qmp_client_dispatch(s->qmp, &err) < 0) {
                /* as the supervisor does: the client goes, the destination is told */
                s->qmp_io = evloop_source_remove(s->qmp_io);
                s->qmp = qmp_client_free(s->qmp);
                if (s->d)
                        migrate_dest_qmp_lost(s->d, err);
                vmsup_error_free(err);
                return;
        }
        qmp_events(s);
}

static void on_qemu_event(void *ud, const char *event, json_object *data, json_object *ts) {
        struct sup *s = ud;

        (void) ts;
        migrate_dest_qemu_event(s->d, event, data);
}

static int sup_received(void *ud, const struct guest_spec *spec, const char *secret_uuid, const char *secret,
                        vmsup_error **err) {
        struct sup *s = ud;
        int r;

        s->received = true;
        cr_assert_str_eq(secret_uuid, SECRET_UUID);
        cr_assert_str_eq(secret, "s3cret-passphrase");
        /* what the supervisor checks: the source's spec against this host's */
        r = spec_match_incoming(&s->ours, spec, err);
        if (r < 0)
                return vmsup_error_prefix(err, "the source's guest spec differs from this host's 'guest.json'");
        if (!s->fq)
                return vmsup_fail(err, VMSUP_ERR_FAILED, 0, "the test starts no QEMU here");
        /* the children start: QEMU's monitor */
        cr_assert_eq(qmp_client_new_fd(TAKE_FD(s->qmp_fd), &s->qmp, err), 0);
        qmp_client_set_event_handler(s->qmp, on_qemu_event, s);
        cr_assert_eq(qmp_client_handshake(s->qmp, LONG_MS, err), 0, "%s", (*err)->msg);
        cr_assert_eq(evloop_add_io(s->loop, qmp_client_fd(s->qmp), qmp_client_epoll_events(s->qmp), on_qmp, s,
                                   &s->qmp_io, err),
                     0);
        migrate_dest_children_up(s->d, s->qmp);
        return 0;
}

static int sup_seal(void *ud, int64_t *ret_generation, vmsup_error **err) {
        struct sup *s = ud;

        (void) err;
        s->sealed = true;
        *ret_generation = 7;
        return 0;
}

static int sup_mark_committed(void *ud, const char *source, vmsup_error **err) {
        struct sup *s = ud;

        cr_assert_not_null(strstr(source, "127.0.0.1"), "%s", source);
        if (s->mark_fails)
                return vmsup_fail(err, VMSUP_ERR_IO, 0, "record the source's order to run the guest: %s",
                                  s->mark_fails);
        s->marked = true;
        return 0;
}

static void sup_started(void *ud) {
        struct sup *s = ud;

        s->started = true;
}

static char *sup_log_tail(void *ud, bool qemu) {
        (void) ud;
        return strdup(qemu ? "qemu: load of migration failed: Input/output error" : "swtpm: gone");
}

static void sup_finished(void *ud, enum migrate_dest_outcome o, const vmsup_error *why) {
        struct sup *s = ud;

        cr_assert(!s->finished, "finished() twice");
        s->finished = true;
        s->outcome = o;
        snprintf(s->why, sizeof(s->why), "%s", why ? why->msg : "");
        s->why_kind = why ? why->kind : VMSUP_ERR_OK;
}

/* ---- a test's run ----------------------------------------------------------------------------- */

struct run {
        struct sup s;
        struct peer p;
        bool peer_started;
};

/* Start the destination (answer_timeout answer_s, the whole timeout timeout_s) with QEMU
 * playing script (NULL: no QEMU) and the source playing p. */
static void start(struct run *r, const struct fakeqmp_step *script, unsigned answer_s, unsigned timeout_s,
                  bool with_peer) {
        vmsup_error *err = NULL;
        struct migrate_dest_env env = {
                .uuid = UUID,
                .listen_addr = "127.0.0.1",
                .listen_port = "0",
                .tls = { .ca_file = path("%s/ca-cert.pem", certs),
                         .cert_file = path("%s/a/server-cert.pem", certs),
                         .key_file = path("%s/a/server-key.pem", certs) },
                .qemu_tls_dir = "/etc/pki/vmsup-qemu",
                .timeout_s = timeout_s,
                .answer_timeout_s = answer_s,
                .handshake_timeout_s = 5,
                .qmp_timeout_ms = LONG_MS,
                .userdata = &r->s,
                .note = sup_note,
                .received = sup_received,
                .qmp_queued = sup_qmp_queued,
                .seal = sup_seal,
                .mark_committed = sup_mark_committed,
                .started = sup_started,
                .log_tail = sup_log_tail,
                .finished = sup_finished,
        };
        const char *ours = SPEC("2");

        r->s.qmp_fd = -1;

        cr_assert_eq(guest_spec_parse(ours, strlen(ours), "guest.json", &r->s.ours, &err), 0, "%s",
                     err ? err->msg : "");
        cr_assert_eq(evloop_new(&r->s.loop, &err), 0);
        env.loop = r->s.loop;
        if (script)
                r->s.fq = fakeqmp_start(script, &r->s.qmp_fd);
        cr_assert_eq(migrate_dest_new(&env, &r->s.d, &err), 0, "%s", err ? err->msg : "");
        cr_assert_eq(migrate_dest_state(r->s.d), MIGRATE_DEST_WAITING);
        r->p.port = migrate_dest_port(r->s.d);
        cr_assert_gt(r->p.port, 0);
        if (with_peer) {
                cr_assert_eq(pthread_create(&r->p.thread, NULL, peer_main, &r->p), 0);
                r->peer_started = true;
        }
}

/* Run the loop until finished(); then end it all: the destination freed (its channel
 * closes, the source's script ends), QEMU's script checked. */
static void finish_run(struct run *r) {
        vmsup_error *err = NULL;
        long deadline = monotonic_ms() + LONG_MS;

        while (!r->s.finished) {
                cr_assert_lt(monotonic_ms(), deadline, "no finished() within %d ms; state %s; notes:\n%s", LONG_MS,
                             migrate_dest_phase(r->s.d), r->s.notes);
                cr_assert_geq(evloop_iterate(r->s.loop, 100, &err), 0, "%s", err ? err->msg : "");
        }
        r->s.d = migrate_dest_free(r->s.d);
        if (r->peer_started)
                pthread_join(r->p.thread, NULL);
        r->s.qmp_io = evloop_source_remove(r->s.qmp_io);
        r->s.qmp = qmp_client_free(r->s.qmp);
        closep(&r->s.qmp_fd);
        if (r->s.fq) {
                char *fail = fakeqmp_finish(r->s.fq);

                cr_assert_null(fail, "fake QEMU: %s", fail);
        }
        evloop_free(r->s.loop);
        guest_spec_clear(&r->s.ours);
}

static void assert_outcome(struct run *r, enum migrate_dest_outcome o, const char *why, enum vmsup_err_kind kind) {
        cr_assert_eq(r->s.outcome, o, "outcome %d, not %d (%s)", r->s.outcome, o, r->s.why);
        if (!why) {
                cr_assert_str_empty(r->s.why);
                return;
        }
        cr_assert_not_null(strstr(r->s.why, why), "'%s' not in: %s", why, r->s.why);
        cr_assert_eq(r->s.why_kind, kind, "kind %s, not %s: %s", vmsup_err_kind_to_string(r->s.why_kind),
                     vmsup_err_kind_to_string(kind), r->s.why);
}

static void assert_peer_got(struct run *r, const char *frames) {
        cr_assert_str_eq(r->p.got, frames, "the source got: %s", r->p.got);
}

/* QEMU's side of a whole migration, to the point given */
#define QEMU_SETUP                                                                                                    \
        FQ_HANDSHAKE,                                                                                                 \
        { FQ_EXPECT, "object-add",                                                                                    \
          "{\"qom-type\": \"tls-creds-x509\", \"id\": \"vmsup-migration-tls\", \"dir\": \"/etc/pki/vmsup-qemu\", "    \
          "\"endpoint\": \"server\", \"verify-peer\": true}" },                                                      \
        FQ_REPLY("{}"),                                                                                               \
        { FQ_EXPECT, "migrate-set-capabilities",                                                                      \
          "{\"capabilities\": [{\"capability\": \"return-path\", \"state\": true}, "                                 \
          "{\"capability\": \"events\", \"state\": true}]}" },                                                        \
        FQ_REPLY("{}"), { FQ_EXPECT, "migrate-set-parameters", "{\"tls-creds\": \"vmsup-migration-tls\"}" },          \
        FQ_REPLY("{}")
#define QEMU_LOAD                                                                                                     \
        { FQ_EXPECT, "getfd", "{\"fdname\": \"vmsup-migration\"}", "stream" }, FQ_REPLY("{}"),                         \
        { FQ_EXPECT, "migrate-incoming", "{\"uri\": \"fd:vmsup-migration\"}" }, FQ_REPLY("{}"),                      \
        FQ_EVENT("MIGRATION", "{\"status\": \"active\"}")
#define QEMU_LOADED                                                                                                   \
        FQ_EVENT("MIGRATION", "{\"status\": \"completed\"}"), { FQ_EXPECT, "query-status" },                          \
        FQ_REPLY("{\"status\": \"inmigrate\", \"singlestep\": false, \"running\": false}")
#define QEMU_CONT                                                                                                     \
        { FQ_EXPECT, "cont" }, FQ_REPLY("{}"), { FQ_EXPECT, "query-status" },                                         \
        FQ_REPLY("{\"status\": \"running\", \"singlestep\": false, \"running\": true}")

/* ---- the transitions ---------------------------------------------------------------------------- */

Test(migdest, a_whole_migration_runs_the_guest_and_done_confirms_it) {
        static const struct fakeqmp_step script[] = { QEMU_SETUP, QEMU_LOAD, QEMU_LOADED, QEMU_CONT, { FQ_END } };
        struct run r = { .p = { .abort_at = S_NONE, .silent_at = S_NONE } };

        start(&r, script, 5, 30, true);
        finish_run(&r);
        assert_outcome(&r, MIGRATE_DEST_RAN, NULL, VMSUP_ERR_OK);
        assert_peer_got(&r, "HELLO READY PREPARED RUNNING EOF ");
        cr_assert(r.s.received && r.s.sealed && r.s.marked && r.s.started);
        cr_assert_not_null(strstr(r.s.notes, "ready: QEMU receives on port"), "%s", r.s.notes);
        cr_assert_not_null(strstr(r.s.notes, "sends guest " UUID), "%s", r.s.notes);
        cr_assert_not_null(strstr(r.s.notes, "TPM state sealed; waiting for the source's go"), "%s", r.s.notes);
}

/* the state names `vmsup status` shows */
Test(migdest, the_phases_are_named) {
        cr_assert_str_eq(migrate_dest_state_name(MIGRATE_DEST_WAITING), "waiting for the source");
        cr_assert_str_eq(migrate_dest_state_name(MIGRATE_DEST_PREPARED_SENT), "prepared sent");
        cr_assert_str_eq(migrate_dest_state_name(MIGRATE_DEST_RUNNING), "running");
}

/* ---- the source gives up ---------------------------------------------------------------------- */

static void source_aborts_at(enum step s, const struct fakeqmp_step *script, const char *frames) {
        struct run r = { .p = { .abort_at = s, .silent_at = S_NONE } };

        start(&r, script, 5, 30, true);
        finish_run(&r);
        assert_outcome(&r, MIGRATE_DEST_ABORTED, "the source gave up: the test gives up", VMSUP_ERR_UNAVAILABLE);
        assert_peer_got(&r, frames);
        cr_assert(!r.s.marked && !r.s.started);
}

Test(migdest, source_abort_instead_of_hello) {
        source_aborts_at(S_HELLO, NULL, "ABORT(the source gave up: the test gives up) EOF ");
}

Test(migdest, source_abort_instead_of_prepare) {
        source_aborts_at(S_PREPARE, NULL, "HELLO ABORT(the source gave up: the test gives up) EOF ");
}

Test(migdest, source_abort_instead_of_secret) {
        source_aborts_at(S_SECRET, NULL, "HELLO ABORT(the source gave up: the test gives up) EOF ");
}

Test(migdest, source_abort_after_ready) {
        static const struct fakeqmp_step script[] = { QEMU_SETUP, { FQ_END } };

        source_aborts_at(S_STREAM, script, "HELLO READY ABORT(the source gave up: the test gives up) EOF ");
}

Test(migdest, source_abort_instead_of_migrated) {
        /* the ABORT may come before or after the stream reached QEMU */
        static const struct fakeqmp_step script[] = { QEMU_SETUP, { FQ_SILENCE } };

        source_aborts_at(S_MIGRATED, script, "HELLO READY ABORT(the source gave up: the test gives up) EOF ");
}

Test(migdest, source_abort_instead_of_commit) {
        static const struct fakeqmp_step script[] = { QEMU_SETUP, QEMU_LOAD, QEMU_LOADED, { FQ_END } };

        source_aborts_at(S_COMMIT, script, "HELLO READY PREPARED ABORT(the source gave up: the test gives up) EOF ");
}

/* after RUNNING an ABORT is only an unconfirmed hand-over: the guest runs on here */
Test(migdest, source_abort_instead_of_done_leaves_the_guest_running_unconfirmed) {
        static const struct fakeqmp_step script[] = { QEMU_SETUP, QEMU_LOAD, QEMU_LOADED, QEMU_CONT, { FQ_END } };
        struct run r = { .p = { .abort_at = S_DONE, .silent_at = S_NONE } };

        start(&r, script, 5, 30, true);
        finish_run(&r);
        assert_outcome(&r, MIGRATE_DEST_RAN, "the source gave up: the test gives up", VMSUP_ERR_UNAVAILABLE);
        assert_peer_got(&r, "HELLO READY PREPARED RUNNING EOF ");
        cr_assert(r.s.marked && r.s.started);
}

/* ---- nobody answers ------------------------------------------------------------------------------ */

Test(migdest, no_source_at_all_times_out) {
        struct run r = { .p = { .abort_at = S_NONE, .silent_at = S_NONE } };

        start(&r, NULL, 1, 1, false);
        finish_run(&r);
        assert_outcome(&r, MIGRATE_DEST_ABORTED, "wait for the source: no source supervisor came within 1 s", VMSUP_ERR_BUSY);
}

Test(migdest, a_silent_source_times_out_waiting_for_hello) {
        struct run r = { .p = { .abort_at = S_NONE, .silent_at = S_HELLO } };

        start(&r, NULL, 1, 30, true);
        finish_run(&r);
        assert_outcome(&r, MIGRATE_DEST_ABORTED, "no answer from the migration peer within 1 s (waiting for HELLO)",
                       VMSUP_ERR_BUSY);
        cr_assert(strstr(r.p.got, "ABORT(the source: "), "%s", r.p.got);
}

Test(migdest, a_silent_source_times_out_waiting_for_secret) {
        struct run r = { .p = { .abort_at = S_NONE, .silent_at = S_SECRET } };

        start(&r, NULL, 1, 30, true);
        finish_run(&r);
        assert_outcome(&r, MIGRATE_DEST_ABORTED, "(waiting for SECRET)", VMSUP_ERR_BUSY);
        cr_assert(!r.s.received);
}

/* MIGRATED has the whole migration's timeout, not one answer's */
Test(migdest, no_migrated_within_the_migration_timeout) {
        static const struct fakeqmp_step script[] = { QEMU_SETUP, QEMU_LOAD, { FQ_END } };
        struct run r = { .p = { .abort_at = S_NONE, .silent_at = S_MIGRATED } };

        start(&r, script, 1, 3, true);
        finish_run(&r);
        assert_outcome(&r, MIGRATE_DEST_ABORTED, "no MIGRATED from the source in time", VMSUP_ERR_BUSY);
        assert_peer_got(&r, "HELLO READY ABORT(no MIGRATED from the source in time) EOF ");
}

Test(migdest, no_commit_in_time_aborts) {
        static const struct fakeqmp_step script[] = { QEMU_SETUP, QEMU_LOAD, QEMU_LOADED, { FQ_END } };
        struct run r = { .p = { .abort_at = S_NONE, .silent_at = S_COMMIT } };

        start(&r, script, 1, 30, true);
        finish_run(&r);
        assert_outcome(&r, MIGRATE_DEST_ABORTED, "no COMMIT from the source in time", VMSUP_ERR_BUSY);
        assert_peer_got(&r, "HELLO READY PREPARED ABORT(no COMMIT from the source in time) EOF ");
        cr_assert(r.s.sealed && !r.s.marked);
}

/* the committed marker stays (it is the supervisor's to remove on a confirmed outcome
 * only), and the guest runs on */
Test(migdest, a_missing_done_leaves_the_marker_and_runs_on) {
        static const struct fakeqmp_step script[] = { QEMU_SETUP, QEMU_LOAD, QEMU_LOADED, QEMU_CONT, { FQ_END } };
        struct run r = { .p = { .abort_at = S_NONE, .silent_at = S_DONE } };

        start(&r, script, 1, 30, true);
        finish_run(&r);
        assert_outcome(&r, MIGRATE_DEST_RAN, "no DONE from the source in time", VMSUP_ERR_BUSY);
        assert_peer_got(&r, "HELLO READY PREPARED RUNNING EOF ");
        cr_assert(r.s.marked && r.s.started);
}

/* ---- this host refuses or fails ---------------------------------------------------------------- */

Test(migdest, a_spec_that_differs_is_refused_with_abort) {
        struct run r = { .p = { .abort_at = S_NONE, .silent_at = S_NONE, .spec = SPEC("4") } };

        start(&r, NULL, 5, 30, true);
        finish_run(&r);
        assert_outcome(&r, MIGRATE_DEST_ABORTED, "the source's guest spec differs from this host's 'guest.json'", VMSUP_ERR_DATA);
        cr_assert(strstr(r.s.why, "vcpus"), "%s", r.s.why);
        cr_assert(strstr(r.p.got, "HELLO ABORT(the source's guest spec differs") == r.p.got, "%s", r.p.got);
        cr_assert(strstr(r.p.got, "vcpus"), "%s", r.p.got);
}

Test(migdest, qemu_failing_to_load_aborts_with_its_log) {
        static const struct fakeqmp_step script[] = {
                /* QEMU exits after it said why: its monitor goes first */
                QEMU_SETUP, QEMU_LOAD, FQ_EVENT("MIGRATION", "{\"status\": \"failed\"}"), { FQ_HANGUP }
        };
        struct run r = { .p = { .abort_at = S_NONE, .silent_at = S_NONE } };

        start(&r, script, 5, 30, true);
        finish_run(&r);
        assert_outcome(&r, MIGRATE_DEST_ABORTED,
                       "QEMU failed to load the guest (its log: qemu: load of migration failed: Input/output error)",
                       VMSUP_ERR_FAILED);
        cr_assert(strstr(r.p.got, "ABORT(QEMU failed to load the guest"), "%s", r.p.got);
        cr_assert(!r.s.sealed);
}

Test(migdest, qemu_ending_while_receiving_aborts) {
        static const struct fakeqmp_step script[] = { QEMU_SETUP, QEMU_LOAD, { FQ_END } };
        struct run r = { .p = { .abort_at = S_NONE, .silent_at = S_MIGRATED } };
        vmsup_error *err = NULL;
        long deadline = monotonic_ms() + LONG_MS;

        start(&r, script, 5, 30, true);
        while (migrate_dest_state(r.s.d) != MIGRATE_DEST_LOADING) {
                cr_assert_lt(monotonic_ms(), deadline, "state %s", migrate_dest_phase(r.s.d));
                cr_assert_geq(evloop_iterate(r.s.loop, 100, &err), 0);
        }
        migrate_dest_child_exited(r.s.d, true);
        finish_run(&r);
        assert_outcome(&r, MIGRATE_DEST_ABORTED, "QEMU ended while receiving the guest (its log: qemu: ", VMSUP_ERR_FAILED);
        cr_assert(strstr(r.p.got, "ABORT(QEMU ended while receiving the guest"), "%s", r.p.got);
}

Test(migdest, a_marker_that_cannot_be_written_aborts) {
        static const struct fakeqmp_step script[] = { QEMU_SETUP, QEMU_LOAD, QEMU_LOADED, { FQ_END } };
        struct run r = { .p = { .abort_at = S_NONE, .silent_at = S_NONE } };

        r.s.mark_fails = "disk full";
        start(&r, script, 5, 30, true);
        finish_run(&r);
        assert_outcome(&r, MIGRATE_DEST_ABORTED, "record the source's order to run the guest: disk full", VMSUP_ERR_IO);
        assert_peer_got(&r, "HELLO READY PREPARED ABORT(record the source's order to run the guest: disk full) EOF ");
        cr_assert(!r.s.started);
}

/* Once cont is issued the source must not roll back: no ABORT, whatever fails. */
Test(migdest, no_abort_after_cont_when_cont_fails) {
        static const struct fakeqmp_step script[] = {
                QEMU_SETUP, QEMU_LOAD, QEMU_LOADED, { FQ_EXPECT, "cont" },
                { FQ_SEND, "{\"error\": {\"class\": \"GenericError\", \"desc\": \"Failed to get \\\"write\\\" lock\"}, "
                           "\"id\": $ID}\r\n" },
                { FQ_END }
        };
        struct run r = { .p = { .abort_at = S_NONE, .silent_at = S_NONE } };

        start(&r, script, 5, 30, true);
        finish_run(&r);
        assert_outcome(&r, MIGRATE_DEST_FAILED_COMMITTED, "run the received guest: ", VMSUP_ERR_FAILED);
        cr_assert(strstr(r.s.why, "write\" lock"), "%s", r.s.why);
        assert_peer_got(&r, "HELLO READY PREPARED EOF ");
        cr_assert(r.s.marked && !r.s.started);
}

Test(migdest, no_abort_after_cont_when_the_guest_does_not_run) {
        static const struct fakeqmp_step script[] = {
                QEMU_SETUP, QEMU_LOAD, QEMU_LOADED, { FQ_EXPECT, "cont" }, FQ_REPLY("{}"), { FQ_EXPECT, "query-status" },
                FQ_REPLY("{\"status\": \"internal-error\", \"singlestep\": false, \"running\": false}"), { FQ_END }
        };
        struct run r = { .p = { .abort_at = S_NONE, .silent_at = S_NONE } };

        start(&r, script, 5, 30, true);
        finish_run(&r);
        assert_outcome(&r, MIGRATE_DEST_FAILED_COMMITTED,
                       "the received guest does not run after cont (QEMU: internal-error)", VMSUP_ERR_FAILED);
        assert_peer_got(&r, "HELLO READY PREPARED EOF ");
}

/* ---- a stop request or a signal ------------------------------------------------------------------ */

static void run_until(struct run *r, enum migrate_dest_state s) {
        vmsup_error *err = NULL;
        long deadline = monotonic_ms() + LONG_MS;

        while (migrate_dest_state(r->s.d) != s) {
                cr_assert_lt(monotonic_ms(), deadline, "state %s, not %s", migrate_dest_phase(r->s.d),
                             migrate_dest_state_name(s));
                cr_assert_geq(evloop_iterate(r->s.loop, 100, &err), 0);
        }
}

Test(migdest, a_stop_before_commit_aborts) {
        static const struct fakeqmp_step script[] = { QEMU_SETUP, QEMU_LOAD, QEMU_LOADED, { FQ_END } };
        struct run r = { .p = { .abort_at = S_NONE, .silent_at = S_COMMIT } };
        vmsup_error *why = NULL;

        start(&r, script, 5, 30, true);
        run_until(&r, MIGRATE_DEST_PREPARED_SENT);
        vmsup_fail(&why, VMSUP_ERR_BUSY, 0, "interrupted by a signal");
        cr_assert_eq(migrate_dest_cancel(r.s.d, why), 1);
        vmsup_error_free(why);
        finish_run(&r);
        assert_outcome(&r, MIGRATE_DEST_ABORTED, "interrupted by a signal", VMSUP_ERR_BUSY);
        assert_peer_got(&r, "HELLO READY PREPARED ABORT(interrupted by a signal) EOF ");
}

Test(migdest, a_stop_while_waiting_for_the_source_ends_it) {
        struct run r = { .p = { .abort_at = S_NONE, .silent_at = S_NONE } };
        vmsup_error *why = NULL;

        start(&r, NULL, 5, 30, false);
        vmsup_fail(&why, VMSUP_ERR_BUSY, 0, "interrupted by a signal");
        cr_assert_eq(migrate_dest_cancel(r.s.d, why), 1);
        vmsup_error_free(why);
        finish_run(&r);
        assert_outcome(&r, MIGRATE_DEST_ABORTED, "interrupted by a signal", VMSUP_ERR_BUSY);
}

Test(migdest, a_stop_after_commit_does_not_cancel) {
        static const struct fakeqmp_step script[] = { QEMU_SETUP, QEMU_LOAD, QEMU_LOADED, QEMU_CONT, { FQ_END } };
        struct run r = { .p = { .abort_at = S_NONE, .silent_at = S_NONE } };
        vmsup_error *why = NULL;

        start(&r, script, 5, 30, true);
        run_until(&r, MIGRATE_DEST_RUNNING);
        vmsup_fail(&why, VMSUP_ERR_BUSY, 0, "interrupted by a signal");
        cr_assert_eq(migrate_dest_cancel(r.s.d, why), 0);
        vmsup_error_free(why);
        finish_run(&r);
        assert_outcome(&r, MIGRATE_DEST_RAN, NULL, VMSUP_ERR_OK);
        assert_peer_got(&r, "HELLO READY PREPARED RUNNING EOF ");
}

/* ---- who may connect --------------------------------------------------------------------------- */

/* connections that never start TLS, more than the destination waits for at once: the
 * real source gets through */
Test(migdest, silent_connections_do_not_keep_the_source_out) {
        static const struct fakeqmp_step script[] = { QEMU_SETUP, QEMU_LOAD, QEMU_LOADED, QEMU_CONT, { FQ_END } };
        struct run r = { .p = { .abort_at = S_NONE, .silent_at = S_NONE } };
        int silent[MIGRATE_DEST_PENDING_MAX + 2];
        char port[8];

        start(&r, script, 5, 30, false);
        snprintf(port, sizeof(port), "%d", r.p.port);
        for (size_t i = 0; i < ARRAY_SIZE(silent); i++) {
                vmsup_error *err = NULL;

                cr_assert_eq(migchan_tcp_connect("127.0.0.1", port, LONG_MS, &silent[i], &err), 0);
                cr_assert_geq(evloop_iterate(r.s.loop, 50, &err), 0);
        }
        cr_assert_eq(pthread_create(&r.p.thread, NULL, peer_main, &r.p), 0);
        r.peer_started = true;
        finish_run(&r);
        assert_outcome(&r, MIGRATE_DEST_RAN, NULL, VMSUP_ERR_OK);
        cr_assert(strstr(r.s.notes, "connections are in their TLS handshake, the most this host waits for at once"),
                  "%s", r.s.notes);
        for (size_t i = 0; i < ARRAY_SIZE(silent); i++)
                close(silent[i]);
}

/* QEMU's stream from another host than the source supervisor's is turned away; the
 * source's own then goes through */
Test(migdest, a_stream_from_another_host_is_turned_away) {
        static const struct fakeqmp_step script[] = { QEMU_SETUP, QEMU_LOAD, QEMU_LOADED, QEMU_CONT, { FQ_END } };
        struct run r = { .p = { .abort_at = S_NONE, .silent_at = S_NONE, .stray_stream = true } };

        start(&r, script, 5, 30, true);
        finish_run(&r);
        assert_outcome(&r, MIGRATE_DEST_RAN, NULL, VMSUP_ERR_OK);
        assert_peer_got(&r, "HELLO READY STRAY-CLOSED PREPARED RUNNING EOF ");
        cr_assert(strstr(r.s.notes, "turned away a migration stream from 127.0.0.2: the source is 127.0.0.1"), "%s",
                  r.s.notes);
}

Test(migdest, qemus_monitor_lost_while_loading_aborts) {
        static const struct fakeqmp_step script[] = { QEMU_SETUP, QEMU_LOAD, { FQ_HANGUP } };
        struct run r = { .p = { .abort_at = S_NONE, .silent_at = S_MIGRATED } };

        start(&r, script, 5, 30, true);
        finish_run(&r);
        assert_outcome(&r, MIGRATE_DEST_ABORTED, "QEMU's monitor: QEMU closed the QMP connection", VMSUP_ERR_UNAVAILABLE);
        cr_assert(strstr(r.p.got, "ABORT(QEMU's monitor: "), "%s", r.p.got);
}
