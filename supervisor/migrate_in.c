/* The destination side of a live migration (`vmsup run --incoming`, docs/migration.md):
 * receive the guest from the source's supervisor, let QEMU receive memory and TPM state,
 * seal that state, and run the guest only when the source says so. Until then, whatever
 * goes wrong, nothing of the guest stays on this host; a janitor process removes it
 * even if this supervisor is killed. From the source's COMMIT on, our copy may be the
 * only one: it stays, marked "committed", until the source's DONE or an operator's
 * `vmsup resolve --keep` (vmsup(8), MIGRATION). */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/fileio.h"
#include "common/secmem.h"
#include "common/util.h"
#include "secrets/localstore.h"
#include "migrate/migchan.h"
#include "migrate/proto.h"
#include "seccomp/filter.h"
#include "supervisor/guest_internal.h"
#include "common/log.h"
#include "nova/specmatch.h"
#include "secrets/vtpmsecret.h"
#include "tpmstate/swtpm.h"

#define JANITOR_WAIT_MS 30000
/* connections in their TLS handshake at once while --incoming waits for the source */
#define MIGRATE_IN_PENDING_MAX 8

struct migrate_in {
        struct migchan *ch;
        char source[320];    /* the peer, for messages */
        char secret_id[37];
        char *secret;        /* secmem */
        bool claimed;        /* our incoming marker is on disk: what is here is ours to remove */
        int janitor_fd;      /* write end of the janitor's pipe; -1 when none */
        pid_t janitor_pid;
        int answer_ms;
        long deadline;
        long t0; /* the source connected */
        int stream_listen_fd; /* where QEMU's stream from the source arrives (READY's port); -1 */
        int stream_fd;        /* our copy of it, once QEMU has it; -1 */
};

void migrate_in_mark(struct guest *g, const char *what) {
        if (g->in && g->in->t0)
                log_debug("incoming: %s at +%ld ms", what, monotonic_ms() - g->in->t0);
}

/* Wait for one frame of type from the source (or its ABORT, which becomes the error). */
static int expect(struct migrate_in *in, enum mig_msg type, struct mig_frame *f, vmsup_error **err) {
        int r = migchan_recv_wait(in->ch, type, in->answer_ms, f, err);

        if (r < 0)
                return vmsup_error_prefix(err, "the source");
        r = mig_frame_expect(f, type, MIG_PEER_SOURCE, err);
        if (r < 0)
                mig_frame_clear(f);
        return r;
}

static int send_json(struct migrate_in *in, enum mig_msg type, json_object *obj, vmsup_error **err) {
        _cleanup_json_ json_object *empty = obj ? NULL : json_object_new_object();
        int r = migchan_send_json(in->ch, type, obj ? obj : empty, in->answer_ms, err);

        return r < 0 ? vmsup_error_prefix(err, "send %s to the source", mig_msg_name(type)) : 0;
}

/* ---- receiving the guest ------------------------------------------------------------ */

/* A connection in its TLS handshake, and when it must have completed it. */
struct pending {
        struct migchan *c;
        long deadline;
};

static void pending_drop(struct pending *p, size_t *n, size_t i) {
        migchan_free(p[i].c);
        memmove(p + i, p + i + 1, (*n - i - 1) * sizeof(*p));
        (*n)--;
}

/* Take every connection waiting on listen_fd and start its handshake; beyond
 * MIGRATE_IN_PENDING_MAX the oldest is turned away (a host that keeps that many silent
 * connections open must not keep the source out). */
static int take_connections(struct guest *g, int listen_fd, const struct migchan_tls *tls, struct pending *p,
                            size_t *n, vmsup_error **err) {
        unsigned hs = g->cfg->migration.handshake_timeout;

        for (;;) {
                struct migchan *c = NULL;
                int r = migchan_accept_start(listen_fd, tls, &c, err);

                if (r <= 0)
                        return r;
                if (*n == MIGRATE_IN_PENDING_MAX) {
                        log_warning("turned a connection away: %s: %d connections are in their TLS handshake, "
                                    "the most this host waits for at once; the oldest makes room",
                                    migchan_peer(p[0].c), MIGRATE_IN_PENDING_MAX);
                        pending_drop(p, n, 0);
                }
                p[(*n)++] = (struct pending) { .c = c, .deadline = monotonic_ms() + (long) hs * 1000 };
        }
}

/* Wait for the source supervisor: the first connection that completes its TLS handshake
 * with a host certificate of the migration CA. Up to MIGRATE_IN_PENDING_MAX handshakes
 * run at once, each within [migration] handshake_timeout; one that fails (wrong CA, no
 * certificate, not TLS at all) or takes too long is logged and turned away, and the wait
 * goes on until [migration] timeout. */
static int wait_for_source(struct guest *g, int listen_fd, const struct migchan_tls *tls, struct migchan **ret,
                           vmsup_error **err) {
        struct migrate_in *in = g->in;
        struct pending p[MIGRATE_IN_PENDING_MAX];
        size_t n = 0;
        int r;

        r = migchan_tls_check(tls, true, err);
        if (r < 0)
                return r;
        for (;;) {
                struct pollfd pfd[MIGRATE_IN_PENDING_MAX + 1];
                long now = monotonic_ms(), wake = in->deadline;

                for (size_t i = 0; i < n;) {
                        if (p[i].deadline > now) {
                                wake = p[i].deadline < wake ? p[i].deadline : wake;
                                i++;
                                continue;
                        }
                        log_warning("turned a connection away: TLS handshake with %s: no answer within %u s "
                                    "([migration] handshake_timeout)",
                                    migchan_peer(p[i].c), g->cfg->migration.handshake_timeout);
                        pending_drop(p, &n, i);
                }
                if (now >= in->deadline) {
                        r = vmsup_fail(err, VMSUP_EX_TEMPFAIL, 0,
                                       "wait for the source: no source supervisor came within %u s",
                                       g->cfg->migration.timeout);
                        goto out;
                }
                pfd[0] = (struct pollfd) { .fd = listen_fd, .events = POLLIN };
                for (size_t i = 0; i < n; i++)
                        pfd[i + 1] = (struct pollfd) { .fd = migchan_fd(p[i].c),
                                                       .events = migchan_handshake_events(p[i].c) };
                if (poll(pfd, n + 1, (int) (wake - now)) < 0 && errno != EINTR) {
                        r = vmsup_fail(err, VMSUP_EX_OSERR, errno, "wait for the source");
                        goto out;
                }
                if (pfd[0].revents) {
                        r = take_connections(g, listen_fd, tls, p, &n, err);
                        if (r < 0)
                                goto out;
                }
                /* a step on each: a new one's hello may be there already, and a step
                 * without data to read costs one recv() */
                for (size_t i = 0; i < n;) {
                        r = migchan_handshake_step(p[i].c, err);
                        if (r > 0) {
                                *ret = TAKE_PTR(p[i].c);
                                pending_drop(p, &n, i);
                                r = 0;
                                goto out;
                        }
                        if (r < 0) {
                                log_warning("turned a connection away: %s", (*err)->msg);
                                *err = vmsup_error_free(*err);
                                pending_drop(p, &n, i);
                                continue;
                        }
                        i++;
                }
        }
out:
        while (n > 0)
                pending_drop(p, &n, n - 1);
        return r;
}

int migrate_in_receive(struct guest *g, const struct guest_run_opts *opts, vmsup_error **err) {
        _cleanup_migration_tls_files_ struct migration_tls_files files = { 0 };
        _cleanup_json_ json_object *hello = NULL;
        _cleanup_close_ int listen_fd = -1;
        struct migchan_tls tls;
        struct migrate_in *in;
        struct mig_frame f = { 0 };
        __attribute__((cleanup(guest_spec_clear))) struct guest_spec theirs = { 0 };
        json_object *spec = NULL;
        const char *text;
        sigset_t stop;
        int r;

        in = calloc(1, sizeof(*in));
        if (!in)
                return vmsup_fail(err, VMSUP_EX_OSERR, ENOMEM, "incoming migration");
        in->janitor_fd = -1;
        in->stream_listen_fd = in->stream_fd = -1;
        /* Nothing is ours yet: until the guest arrives, SIGTERM and SIGINT just end us. */
        sigemptyset(&stop);
        sigaddset(&stop, SIGTERM);
        sigaddset(&stop, SIGINT);
        sigprocmask(SIG_UNBLOCK, &stop, NULL);
        in->answer_ms = (int) g->cfg->migration.answer_timeout * 1000;
        in->deadline = monotonic_ms() + (long) g->cfg->migration.timeout * 1000;
        g->in = in;
        r = host_config_migration_tls(g->cfg, true, &files, err);
        if (r < 0)
                return r;
        tls = (struct migchan_tls) { .ca_file = files.ca, .cert_file = files.cert, .key_file = files.key };
        listen_fd = migchan_listen(opts->incoming_addr, opts->incoming_port, err);
        if (listen_fd < 0)
                return listen_fd;
        log_info("waiting up to %u s for guest %s from a source supervisor on %s%s%s:%s",
                 g->cfg->migration.timeout, opts->incoming_uuid,
                 opts->incoming_addr && strchr(opts->incoming_addr, ':') ? "[" : "",
                 opts->incoming_addr && opts->incoming_addr[0] ? opts->incoming_addr : "*",
                 opts->incoming_addr && strchr(opts->incoming_addr, ':') ? "]" : "", opts->incoming_port);
        r = wait_for_source(g, listen_fd, &tls, &in->ch, err);
        if (r < 0)
                return r;
        snprintf(in->source, sizeof(in->source), "%s", migchan_peer(in->ch));
        in->t0 = monotonic_ms();

        r = expect(in, MIG_HELLO, &f, err);
        if (r < 0)
                return r;
        if (!streq(mig_json_str(f.json, "uuid"), opts->incoming_uuid)) {
                r = vmsup_fail(err, VMSUP_EX_DATAERR, 0, "%s offers guest %s; this host expects %s", in->source,
                               mig_json_str(f.json, "uuid"), opts->incoming_uuid);
                mig_frame_clear(&f);
                return r;
        }
        log_info("source %s (host %s) sends guest %s", in->source, mig_json_str(f.json, "host") ?: "?",
                 opts->incoming_uuid);
        mig_frame_clear(&f);
        hello = mig_hello_new(opts->incoming_uuid);
        r = hello ? send_json(in, MIG_HELLO, hello, err) : vmsup_fail(err, VMSUP_EX_OSERR, ENOMEM, "HELLO");
        if (r < 0)
                return r;

        r = expect(in, MIG_PREPARE, &f, err);
        if (r < 0)
                return r;
        if (f.type != MIG_PREPARE) {
                mig_frame_clear(&f);
                return vmsup_fail(err, VMSUP_EX_DATAERR, 0, "the source sent %s instead of PREPARE",
                                  mig_msg_name(f.type));
        }
        json_object_object_get_ex(f.json, "spec", &spec);
        text = json_object_to_json_string_ext(spec, JSON_C_TO_STRING_PLAIN);
        r = guest_spec_parse(text, strlen(text), "the source's guest spec", &theirs, err);
        snprintf(in->secret_id, sizeof(in->secret_id), "%s", mig_json_str(f.json, "secret_uuid") ?: "");
        mig_frame_clear(&f);
        if (r < 0)
                return r;

        /* the secret first, then judge: a source told off with its SECRET unread could
         * lose our ABORT to the reset of the connection */
        r = expect(in, MIG_SECRET, &f, err);
        if (r < 0)
                return r;
        if (f.type != MIG_SECRET) {
                mig_frame_clear(&f);
                return vmsup_fail(err, VMSUP_EX_DATAERR, 0, "the source sent %s instead of the vTPM secret",
                                  mig_msg_name(f.type));
        }
        in->secret = (char *) TAKE_PTR(f.secret);
        mig_frame_clear(&f);

        /* The source decides nothing about this host: its spec must be the one this
         * host's orchestrator declared (--spec), which the guest runs from. */
        r = spec_match_incoming(&g->spec, &theirs, err);
        if (r < 0)
                return vmsup_error_prefix(err, "the source's guest spec differs from this host's '%s'", opts->spec_path);
        if (g->spec.vtpm_secret_uuid && !streq(in->secret_id, g->spec.vtpm_secret_uuid))
                return vmsup_fail(err, VMSUP_EX_DATAERR, 0,
                                  "the source's vTPM secret is %s; this host's '%s' has key 'vtpm_secret_uuid' %s",
                                  in->secret_id, opts->spec_path, g->spec.vtpm_secret_uuid);
        sigprocmask(SIG_BLOCK, &stop, NULL);
        return 0;
}

/* ---- the janitor --------------------------------------------------------------------- */

/* The janitor's life: read "P <pid>" lines (our QEMU and swtpm) until "K" (nothing to
 * do: the guest runs here, or the supervisor cleaned up itself) or EOF (the supervisor
 * died): then wait for those processes to end, take the guest's lock and remove what
 * the incoming migration made. */
static int janitor_main(int fd, struct guest *g) {
        int pidfds[4], n = 0, lock;
        char buf[256];
        size_t len = 0;
        vmsup_error *err = NULL;
        long deadline;

        for (;;) {
                ssize_t k = read(fd, buf + len, sizeof(buf) - 1 - len);
                char *nl;

                if (k < 0 && errno == EINTR)
                        continue;
                if (k <= 0)
                        break;
                len += (size_t) k;
                buf[len] = '\0';
                while ((nl = strchr(buf, '\n'))) {
                        *nl = '\0';
                        if (buf[0] == 'K')
                                return 0;
                        if (buf[0] == 'P' && n < 4) {
                                int pfd = (int) syscall(SYS_pidfd_open, (pid_t) atoi(buf + 2), 0);

                                if (pfd >= 0)
                                        pidfds[n++] = pfd;
                        }
                        len -= (size_t) (nl + 1 - buf);
                        memmove(buf, nl + 1, len + 1);
                }
        }
        /* The supervisor is gone; its children get SIGTERM (PR_SET_PDEATHSIG). One that
         * does not end by then (stopped, hung) gets SIGKILL; one that outlives that keeps
         * its files. */
        for (int round = 0; round < 2; round++) {
                deadline = monotonic_ms() + JANITOR_WAIT_MS;
                for (int i = 0; i < n; i++) {
                        struct pollfd p = { .fd = pidfds[i], .events = POLLIN };
                        long left = deadline - monotonic_ms();

                        if (left > 0)
                                poll(&p, 1, (int) left);
                }
                for (int i = 0; i < n; i++) {
                        struct pollfd p = { .fd = pidfds[i], .events = POLLIN };

                        if (poll(&p, 1, 0) != 0)
                                continue;
                        if (round == 1) {
                                fprintf(stderr, "vmsup janitor: guest %s: a process of the incoming migration is "
                                                "still running after SIGKILL; not removing anything\n", g->spec.uuid);
                                return VMSUP_EX_TEMPFAIL;
                        }
                        (void) syscall(SYS_pidfd_send_signal, pidfds[i], SIGKILL, NULL, 0);
                }
        }
        lock = guest_dirs_lock(&g->dirs, false, NULL, &err);
        if (lock < 0) {
                fprintf(stderr, "vmsup janitor: guest %s: %s; not removing anything\n", g->spec.uuid, err->msg);
                return VMSUP_EX_TEMPFAIL;
        }
        if (access(g->dirs.incoming, F_OK) < 0 || guest_dirs_incoming_committed(&g->dirs)) {
                close(lock);
                return 0; /* the source ordered the guest to run here, or someone removed it */
        }
        if (guest_dirs_remove_all(&g->dirs, g->cfg->paths.secrets_dir, g->spec.uuid, &err) < 0) {
                fprintf(stderr, "vmsup janitor: guest %s: %s\n", g->spec.uuid, err->msg);
                return VMSUP_EX_IOERR;
        }
        fprintf(stderr, "vmsup janitor: guest %s: the incoming migration's supervisor died; removed what it had "
                        "received\n", g->spec.uuid);
        close(lock);
        return 0;
}

static int janitor_start(struct guest *g, vmsup_error **err) {
        struct migrate_in *in = g->in;
        int p[2];
        pid_t pid;

        if (pipe2(p, O_CLOEXEC) < 0)
                return vmsup_fail(err, VMSUP_EX_OSERR, errno, "janitor pipe");
        pid = fork();
        if (pid < 0) {
                close(p[0]);
                close(p[1]);
                return vmsup_fail(err, VMSUP_EX_OSERR, errno, "fork the janitor");
        }
        if (pid == 0) {
                vmsup_error *ferr = NULL;

                /* Only the pipe: an inherited copy of the guest's lock or of the source's
                 * connection would keep both alive after the supervisor's death. */
                if (dup2(p[0], 3) < 0)
                        _exit(VMSUP_EX_OSERR);
                close_range(4, ~0U, 0);
                prctl(PR_SET_NAME, "vmsup-janitor");
                /* it must outlive the supervisor: no death signal; it keeps SIGTERM and
                 * SIGINT blocked (inherited), so only the supervisor's end matters */
                if (seccomp_filter_load(g->cfg->security.seccomp, &ferr) < 0)
                        _exit(VMSUP_EX_SOFTWARE);
                _exit(janitor_main(3, g));
        }
        close(p[0]);
        in->janitor_fd = p[1];
        in->janitor_pid = pid;
        return 0;
}

static void janitor_say(struct guest *g, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void janitor_say(struct guest *g, const char *fmt, ...) {
        char line[64];
        va_list ap;
        int n;

        if (!g->in || g->in->janitor_fd < 0)
                return;
        va_start(ap, fmt);
        n = vsnprintf(line, sizeof(line), fmt, ap);
        va_end(ap);
        if (n > 0 && write(g->in->janitor_fd, line, (size_t) n) != n)
                log_warning("the janitor did not take '%.*s': %s", n - 1, line, strerror(errno));
}

/* ---- claiming the guest on this host --------------------------------------------------- */

int migrate_in_claim(struct guest *g, vmsup_error **err) {
        struct migrate_in *in = g->in;
        struct localstore *store = NULL;
        char marker[512], when[64], *pass = NULL, id[LOCALSTORE_UUID_LEN + 1];
        time_t now = time(NULL);
        struct tm tm;
        int r;

        /* a copy the source ordered to run here may be the only one: never removed here */
        if (guest_dirs_incoming_committed(&g->dirs))
                return guest_dirs_check_markers(&g->dirs, err);
        if (access(g->dirs.incoming, F_OK) == 0) {
                log_warning("removing what an earlier, incomplete incoming migration of this guest left");
                int fd;

                r = guest_dirs_remove_all(&g->dirs, g->cfg->paths.secrets_dir, g->spec.uuid, err);
                if (r < 0)
                        return r;
                /* that took the locked state dir too: lock its successor */
                fd = guest_dirs_lock(&g->dirs, true, NULL, err);
                if (fd < 0)
                        return fd;
                close(g->lock_fd);
                g->lock_fd = fd;
        }
        if (access(g->dirs.migrated_out, F_OK) == 0)
                return vmsup_fail(err, VMSUP_EX_CANTCREAT, 0,
                                  "guest %s was migrated away from this host and its copy here was never removed "
                                  "(%s): not receiving it again before 'vmsup delete %s' here",
                                  g->spec.uuid, g->dirs.migrated_out, g->spec.uuid);
        if (access(g->dirs.spec_copy, F_OK) == 0)
                return vmsup_fail(err, VMSUP_EX_CANTCREAT, 0, "guest %s already exists on this host (%s)", g->spec.uuid,
                                  g->dirs.state);
        if (access(g->cfg->paths.secrets_dir, F_OK) == 0) {
                r = localstore_open(g->cfg->paths.secrets_dir, false, &store, err);
                if (r >= 0)
                        r = localstore_get(store, g->spec.uuid, &pass, id, err);
                localstore_free(store);
                pass = secmem_free(pass);
                if (r < 0)
                        return r;
                if (r > 0)
                        return vmsup_fail(err, VMSUP_EX_CANTCREAT, 0,
                                          "this host already keeps a vTPM secret for guest %s (%s)", g->spec.uuid,
                                          g->cfg->paths.secrets_dir);
        }
        strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&now, &tm));
        snprintf(marker, sizeof(marker), "from %s at %s\n", in->source, when);
        in->claimed = true; /* the guest is new here: from now on whatever is here is ours */
        r = write_file_atomic(g->dirs.incoming, marker, strlen(marker), 0600, err);
        if (r < 0)
                return r;
        return janitor_start(g, err);
}

int migrate_in_secret(struct guest *g, vmsup_error **err) {
        struct migrate_in *in = g->in;
        struct localstore *store = NULL;
        _cleanup_free_ char *id_path = NULL;
        char id_line[64];
        int r;

        /* Nova's pre_live_migration: the host keeps the secret under the same id */
        if (g->tpm.secret_security != SECRET_SECURITY_HOST)
                return vmsup_fail(err, VMSUP_EX_UNAVAILABLE, 0,
                                  "Operation 'live-migration' not supported for vTPM-enabled instance (%s).",
                                  g->spec.uuid);
        r = localstore_open(g->cfg->paths.secrets_dir, true, &store, err);
        if (r >= 0)
                r = localstore_put(store, g->spec.uuid, in->secret, in->secret_id, err);
        localstore_free(store);
        if (r < 0)
                return vmsup_error_prefix(err, "keep the vTPM secret");
        if (asprintf(&id_path, "%s/%s", g->dirs.state, VTPM_SECRET_ID_FILE) < 0)
                return vmsup_fail(err, VMSUP_EX_OSERR, ENOMEM, "secret id path");
        snprintf(id_line, sizeof(id_line), "%s\n", in->secret_id);
        r = write_file_atomic(id_path, id_line, strlen(id_line), 0600, err);
        if (r < 0)
                return r;
        r = guest_derive_keys(g, in->secret, err);
        in->secret = secmem_free(in->secret);
        if (r < 0)
                return r;
        return guest_open_sync(g, err);
}

/* COMMIT arrived: the incoming marker says so, durably, before the guest runs. */
static int mark_committed(struct guest *g, vmsup_error **err) {
        char marker[512], when[64];
        time_t now = time(NULL);
        struct tm tm;

        strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&now, &tm));
        snprintf(marker, sizeof(marker), GUEST_INCOMING_COMMITTED " from %s at %s, unconfirmed\n", g->in->source, when);
        if (write_file_atomic(g->dirs.incoming, marker, strlen(marker), 0600, err) < 0)
                return vmsup_error_prefix(err, "record the source's order to run the guest");
        return 0;
}

/* ---- receiving memory and TPM state ----------------------------------------------------- */

/* what, with the last lines of QEMU's log (a wrong migration key shows there as swtpm's
 * "decryption error") */
static int qemu_failed(struct guest *g, const char *what, vmsup_error **err) {
        _cleanup_free_ char *qlog = NULL, *tail = NULL;

        if (asprintf(&qlog, "%s/qemu.log", g->dirs.logs) >= 0)
                tail = guest_log_tail(qlog, 3);
        return vmsup_fail(err, VMSUP_EX_FAILURE, 0, "%s (its log: %s)", what, tail ? tail : "?");
}

/* Wait for the source's next frame while watching QEMU, swtpm, signals and the deadline. */
static int accept_stream(struct guest *g, vmsup_error **err);

static int wait_source(struct guest *g, enum mig_msg type, long deadline, struct mig_frame *f, vmsup_error **err) {
        struct migrate_in *in = g->in;

        for (;;) {
                struct pollfd p[6] = {
                        { .fd = migchan_fd(in->ch), .events = POLLIN },
                        { .fd = g->sigfd, .events = POLLIN },
                        { .fd = g->qemu.pidfd, .events = POLLIN },
                        { .fd = g->swtpm.pidfd, .events = POLLIN },
                        { .fd = g->qmp ? qmp_client_fd(g->qmp) : -1, .events = POLLIN },
                        { .fd = in->stream_listen_fd, .events = POLLIN },
                };
                long left = deadline - monotonic_ms();
                int r;

                /* gnutls may hold a whole record already */
                r = migchan_recv(in->ch, f, err);
                if (r < 0)
                        return vmsup_error_prefix(err, "the source");
                if (r > 0) {
                        if (f->type == MIG_ABORT) {
                                r = vmsup_fail(err, VMSUP_EX_UNAVAILABLE, 0, "the source gave up: %s",
                                               mig_json_str(f->json, "error"));
                                mig_frame_clear(f);
                                return r;
                        }
                        if (f->type != type) {
                                r = vmsup_fail(err, VMSUP_EX_DATAERR, 0, "the source sent an unexpected %s message "
                                               "(expected %s)", mig_msg_name(f->type), mig_msg_name(type));
                                mig_frame_clear(f);
                                return r;
                        }
                        return 0;
                }
                if (left <= 0)
                        return vmsup_fail(err, VMSUP_EX_TEMPFAIL, 0, "no %s from the source in time",
                                          mig_msg_name(type));
                if (poll(p, 6, (int) left) < 0 && errno != EINTR)
                        return vmsup_fail(err, VMSUP_EX_OSERR, errno, "poll");
                if (p[1].revents) {
                        guest_drain_signals(g);
                        if (g->interrupted)
                                return vmsup_fail(err, VMSUP_EX_TEMPFAIL, 0, "interrupted by a signal");
                }
                if (p[2].revents || p[3].revents) {
                        guest_reap_all(g);
                        if (g->qemu.exited)
                                return qemu_failed(g, "QEMU ended while receiving the guest", err);
                        if (g->swtpm.exited) {
                                _cleanup_free_ char *tail = guest_log_tail(g->dirs.swtpm_log, 3);

                                return vmsup_fail(err, VMSUP_EX_FAILURE, 0, "swtpm ended while receiving the guest "
                                                  "(its log: %s)", tail ? tail : "?");
                        }
                }
                if (p[4].revents && g->qmp && qmp_client_dispatch(g->qmp, err) < 0)
                        return vmsup_error_prefix(err, "QEMU's monitor");
                if (p[5].revents && accept_stream(g, err) < 0)
                        return -1;
                if (streq(g->migration_status, "failed")) {
                        /* it exits after saying why */
                        guest_child_wait(g, &g->qemu, 2000);
                        return qemu_failed(g, "QEMU failed to load the guest", err);
                }
        }
}

/* We listen for QEMU's stream on the address the source reached us at, on a port the
 * kernel picks; the source learns it from READY. The connection is accepted by us (from
 * the source's address only) and handed to QEMU (accept_stream()). */
static int listen_incoming(struct guest *g, int *ret_port, vmsup_error **err) {
        struct migrate_in *in = g->in;
        struct sockaddr_storage sa;
        socklen_t len = sizeof(sa);
        int r;

        r = migrate_qemu_setup(g, true, NULL, err);
        if (r < 0)
                return r;
        migrate_in_mark(g, "QEMU's TLS set up");
        in->stream_listen_fd = migchan_listen(migchan_local_addr(in->ch), "0", err);
        if (in->stream_listen_fd < 0)
                return vmsup_error_prefix(err, "listen for QEMU's migration stream");
        if (getsockname(in->stream_listen_fd, (struct sockaddr *) &sa, &len) < 0)
                return vmsup_fail(err, VMSUP_EX_OSERR, errno, "listen for QEMU's migration stream");
        *ret_port = ntohs(sa.ss_family == AF_INET6 ? ((struct sockaddr_in6 *) &sa)->sin6_port
                                                   : ((struct sockaddr_in *) &sa)->sin_port);
        return 0;
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

/* QEMU's stream connects: from the source supervisor's host, it goes to QEMU
 * (migrate-incoming fd:); from anywhere else it is turned away and we listen on. */
static int accept_stream(struct guest *g, vmsup_error **err) {
        struct migrate_in *in = g->in;
        _cleanup_json_ json_object *args = json_object_new_object();
        struct sockaddr_storage peer, source;
        socklen_t plen = sizeof(peer), slen = sizeof(source);
        char addr[INET6_ADDRSTRLEN] = "?";
        int fd = accept4(in->stream_listen_fd, (struct sockaddr *) &peer, &plen, SOCK_NONBLOCK | SOCK_CLOEXEC), r;

        if (fd < 0)
                return errno == EAGAIN || errno == EINTR || errno == ECONNABORTED
                               ? 0
                               : vmsup_fail(err, VMSUP_EX_OSERR, errno, "accept QEMU's migration stream");
        if (getpeername(migchan_fd(in->ch), (struct sockaddr *) &source, &slen) < 0 || !same_host(&peer, &source)) {
                inet_ntop(peer.ss_family, peer.ss_family == AF_INET6 ? (void *) &((struct sockaddr_in6 *) &peer)->sin6_addr
                                                                     : (void *) &((struct sockaddr_in *) &peer)->sin_addr,
                          addr, sizeof(addr));
                log_warning("turned away a migration stream from %s: the source is %s", addr, in->source);
                close(fd);
                return 0;
        }
        close(in->stream_listen_fd);
        in->stream_listen_fd = -1;
        in->stream_fd = fd;
        r = migrate_stream_give(g, fd, in->answer_ms, err);
        if (r < 0)
                return r;
        json_object_object_add(args, "uri", json_object_new_string("fd:" MIGRATE_STREAM_FD_NAME));
        r = migrate_qmp(g, "migrate-incoming", args, NULL, err);
        if (r < 0)
                return vmsup_error_prefix(err, "QEMU migrate-incoming");
        migrate_in_mark(g, "stream accepted, migrate-incoming");
        return 0;
}

int migrate_in_complete(struct guest *g, vmsup_error **err) {
        static const char *const loaded[] = { "completed", "failed", NULL };
        struct migrate_in *in = g->in;
        _cleanup_json_ json_object *ready = json_object_new_object(), *prepared = json_object_new_object(),
                                   *st = NULL;
        struct mig_frame f = { 0 };
        int port = 0, r;
        long t0 = monotonic_ms();

        janitor_say(g, "P %d\nP %d\n", (int) g->qemu.pid, (int) g->swtpm.pid);
        migrate_in_mark(g, "swtpm and QEMU up");
        r = listen_incoming(g, &port, err);
        if (r < 0)
                return r;
        json_object_object_add(ready, "port", json_object_new_int(port));
        r = send_json(in, MIG_READY, ready, err);
        if (r < 0)
                return r;
        log_info("ready: QEMU receives on port %d (TLS)", port);
        migrate_in_mark(g, "READY sent");

        r = wait_source(g, MIG_MIGRATED, in->deadline, &f, err);
        mig_frame_clear(&f);
        if (r < 0)
                return r;
        migrate_in_mark(g, "MIGRATED received");
        /* the source completes only once we loaded everything (return path); our own
         * MIGRATION event may come a moment later */
        r = migrate_wait_status(g, loaded, in->answer_ms, err);
        if (r < 0)
                return r;
        if (!streq(g->migration_status, "completed")) {
                guest_child_wait(g, &g->qemu, 2000);
                return qemu_failed(g, "QEMU failed to load the guest", err);
        }
        r = migrate_qmp(g, "query-status", NULL, &st, err);
        if (r < 0)
                return r;
        if (streq(mig_json_str(st, "status"), "running"))
                return vmsup_fail(err, VMSUP_EX_SOFTWARE, 0, "QEMU runs the guest before the source said so");
        /* The TPM state must be here, and sealed, before the source lets go. */
        r = swtpm_state_exists(g->dirs.live_tpm, g->tpm.version, err);
        if (r == 0)
                return vmsup_fail(err, VMSUP_EX_FAILURE, 0, "the TPM state did not arrive (no %s in %s)",
                                  swtpm_permall_name(g->tpm.version), g->dirs.live_tpm);
        if (r < 0)
                return r;
        r = tpm_sync_seal_all(g->sync, err);
        if (r < 0)
                return vmsup_error_prefix(err, "seal the received TPM state");
        json_object_object_add(prepared, "generation", json_object_new_int64(tpm_sync_sealed_count(g->sync)));
        r = send_json(in, MIG_PREPARED, prepared, err);
        if (r < 0)
                return r;
        log_info("guest received in %ld ms; TPM state sealed; waiting for the source's go", monotonic_ms() - t0);

        r = wait_source(g, MIG_COMMIT, monotonic_ms() + in->answer_ms, &f, err);
        mig_frame_clear(&f);
        if (r < 0)
                return r;
        /* From COMMIT on, the source holds no copy that may run: whatever happens here,
         * ours stays (sealed state, secret, spec, live dir), and its marker keeps it from
         * starting again until the source confirms (DONE) or an operator resolves it. A
         * marker that cannot be written is a plain failure: the source rolls back. */
        r = mark_committed(g, err);
        if (r < 0)
                return r;
        in->claimed = false;
        janitor_say(g, "K\n");
        r = migrate_qmp(g, "cont", NULL, NULL, err);
        if (r < 0)
                return vmsup_error_prefix(err, "run the received guest");
        json_object_put(st);
        st = NULL;
        r = migrate_qmp(g, "query-status", NULL, &st, err);
        if (r < 0)
                return r;
        if (!streq(mig_json_str(st, "status"), "running"))
                return vmsup_fail(err, VMSUP_EX_FAILURE, 0, "the received guest does not run after cont (QEMU: %s)",
                                  mig_json_str(st, "status") ?: "?");
        g->incoming = false;
        g->state = GUEST_RUNNING;
        g->started_at = time(NULL);
        guest_record_history(g);
        log_info("guest running here, received from %s: QEMU pid %d, swtpm pid %d", in->source, (int) g->qemu.pid,
                 (int) g->swtpm.pid);
        /* The marker goes only when the source says it holds its migrated-out marker:
         * until then the source may not know, and an operator may take it back there. */
        r = send_json(in, MIG_RUNNING, NULL, err);
        if (r >= 0)
                r = wait_source(g, MIG_DONE, monotonic_ms() + in->answer_ms, &f, err);
        mig_frame_clear(&f);
        if (r < 0) {
                log_warning("the hand-over is unconfirmed: %s. The guest runs on here, but its copy stays marked "
                            "(%s): 'vmsup run' here refuses it until an operator resolves it; see vmsup(8), "
                            "MIGRATION", (*err)->msg, g->dirs.incoming);
                *err = vmsup_error_free(*err);
        } else if (unlink(g->dirs.incoming) < 0)
                log_error("remove '%s': %s (remove it with 'vmsup resolve --keep': the guest is this host's)",
                          g->dirs.incoming, strerror(errno));
        else
                log_info("the source confirmed the hand-over: the guest is this host's");
        if (g->interrupted) {
                /* a stop asked for while we waited: the event loop's to carry out */
                g->interrupted = false;
                raise(SIGTERM);
        }
        migrate_in_free(g);
        return 0;
}

/* A process (by a pidfd) that has not ended. */
static bool still_running(int pidfd) {
        struct pollfd p = { .fd = pidfd, .events = POLLIN };
        bool alive;

        if (pidfd < 0)
                return false;
        alive = poll(&p, 1, 0) == 0;
        return alive;
}

void migrate_in_abort(struct guest *g, const vmsup_error *why) {
        struct migrate_in *in = g->in;
        vmsup_error *err = NULL;
        _cleanup_close_ int qemu = -1, tpm = -1;
        pid_t qemu_pid, tpm_pid;
        const char *still;

        if (!in)
                return;
        if (in->ch) {
                _cleanup_json_ json_object *a = json_object_new_object();

                json_object_object_add(a, "error", json_object_new_string(why ? why->msg : "failed"));
                if (migchan_send_json(in->ch, MIG_ABORT, a, 2000, &err) < 0)
                        err = vmsup_error_free(err);
        }
        /* a QEMU held by a dead stream (its TLS handshake blocks its main loop) would
         * ignore quit and SIGTERM */
        if (in->stream_fd >= 0)
                shutdown(in->stream_fd, SHUT_RDWR);
        /* a committed copy keeps its last TPM writes */
        g->tpm_discard = in->claimed;
        /* our own handles on them: guest_stop_children() forgets even a child that
         * outlived SIGKILL (tpm_stop: CMD_SHUTDOWN, then SIGTERM, then SIGKILL) */
        qemu = g->qemu.pidfd >= 0 && !g->qemu.exited ? fcntl(g->qemu.pidfd, F_DUPFD_CLOEXEC, 3) : -1;
        tpm = g->swtpm.pidfd >= 0 && !g->swtpm.exited ? fcntl(g->swtpm.pidfd, F_DUPFD_CLOEXEC, 3) : -1;
        qemu_pid = g->qemu.pid;
        tpm_pid = g->swtpm.pid;
        guest_stop_children(g);
        still = still_running(qemu) ? "QEMU" : still_running(tpm) ? "swtpm" : NULL;
        if (still) {
                /* its files stay while it runs; the janitor, at our exit, waits for it */
                log_error("%s (pid %d) is still running after SIGKILL: the incoming migration's files stay here "
                          "for the janitor to remove once it has ended", still,
                          (int) (streq(still, "QEMU") ? qemu_pid : tpm_pid));
                return;
        }
        if (in->claimed) {
                if (guest_dirs_remove_all(&g->dirs, g->cfg->paths.secrets_dir, g->spec.uuid, &err) < 0) {
                        log_error("%s; the janitor tries again", err->msg);
                        err = vmsup_error_free(err);
                        return; /* EOF on its pipe at our exit makes the janitor try */
                }
                log_info("%s removed everything the incoming migration had made here",
                         !qemu_pid && !tpm_pid ? "nothing was started;"
                         : g->tpm_stop_err     ? "QEMU and swtpm ended (swtpm had to be killed, see above);"
                                               : "QEMU and swtpm ended;");
        } else if (guest_dirs_incoming_committed(&g->dirs))
                log_warning("the source ordered the guest to run here: its copy stays, marked (%s); see vmsup(8), "
                            "MIGRATION", g->dirs.incoming);
        janitor_say(g, "K\n");
}

void migrate_in_free(struct guest *g) {
        struct migrate_in *in = g->in;

        if (!in)
                return;
        in->ch = migchan_free(in->ch);
        secmem_free(in->secret);
        closep(&in->janitor_fd);
        closep(&in->stream_listen_fd);
        closep(&in->stream_fd);
        free(in);
        g->in = NULL;
}
