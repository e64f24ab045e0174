/* The destination side of a live migration (`vmsup run --incoming`, docs/migration.md):
 * receive the guest from the source's supervisor, let QEMU receive memory and TPM state,
 * seal that state, and run the guest only when the source says so. Until then, whatever
 * goes wrong, nothing of the guest stays on this host; a janitor process removes it
 * even if this supervisor is killed. */
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
#include "common/util.h"
#include "crypto/localstore.h"
#include "crypto/migchan.h"
#include "crypto/secmem.h"
#include "seccomp/filter.h"
#include "supervisor/guest_internal.h"
#include "supervisor/log.h"
#include "supervisor/vtpmsecret.h"
#include "tpmstate/swtpm.h"

#define JANITOR_WAIT_MS 30000

struct migrate_in {
        struct migchan *ch;
        char source[320];    /* the peer, for messages */
        json_object *spec;   /* as the source sent it */
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
        if (f->type == MIG_ABORT) {
                r = vmsup_fail(err, VMSUP_EX_UNAVAILABLE, 0, "the source gave up: %s", migrate_json_str(f->json, "error"));
                mig_frame_clear(f);
                return r;
        }
        return 0;
}

static int send_json(struct migrate_in *in, enum mig_msg type, json_object *obj, vmsup_error **err) {
        _cleanup_json_ json_object *empty = obj ? NULL : json_object_new_object();
        int r = migchan_send_json(in->ch, type, obj ? obj : empty, in->answer_ms, err);

        return r < 0 ? vmsup_error_prefix(err, "send %s to the source", mig_msg_name(type)) : 0;
}

/* ---- receiving the guest ------------------------------------------------------------ */

int migrate_in_receive(struct guest *g, const struct guest_run_opts *opts, vmsup_error **err) {
        _cleanup_migration_tls_files_ struct migration_tls_files files = { 0 };
        _cleanup_json_ json_object *hello = json_object_new_object();
        _cleanup_close_ int listen_fd = -1;
        struct migchan_tls tls;
        struct migrate_in *in;
        struct mig_frame f = { 0 };
        char hostname[256] = "";
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
        /* A peer that fails TLS (wrong CA, no certificate, not TLS at all) is turned away;
         * the real source may still come. */
        for (;;) {
                long left = in->deadline - monotonic_ms();

                if (left <= 0)
                        return vmsup_fail(err, VMSUP_EX_TEMPFAIL, 0, "no source supervisor came within %u s",
                                          g->cfg->migration.timeout);
                r = migchan_accept(listen_fd, &tls, (int) left, &in->ch, err);
                if (r >= 0)
                        break;
                if ((*err)->exit_code == VMSUP_EX_TEMPFAIL)
                        return vmsup_error_prefix(err, "wait for the source");
                log_warning("turned a connection away: %s", (*err)->msg);
                *err = vmsup_error_free(*err);
        }
        snprintf(in->source, sizeof(in->source), "%s", migchan_peer(in->ch));
        in->t0 = monotonic_ms();

        r = expect(in, MIG_HELLO, &f, err);
        if (r < 0)
                return r;
        if (!streq(migrate_json_str(f.json, "uuid"), opts->incoming_uuid)) {
                r = vmsup_fail(err, VMSUP_EX_DATAERR, 0, "%s offers guest %s; this host expects %s", in->source,
                               migrate_json_str(f.json, "uuid"), opts->incoming_uuid);
                mig_frame_clear(&f);
                return r;
        }
        log_info("source %s (host %s) sends guest %s", in->source, migrate_json_str(f.json, "host") ?: "?",
                 opts->incoming_uuid);
        mig_frame_clear(&f);
        gethostname(hostname, sizeof(hostname) - 1);
        json_object_object_add(hello, "protocol", json_object_new_int(MIGCHAN_PROTOCOL));
        json_object_object_add(hello, "uuid", json_object_new_string(opts->incoming_uuid));
        json_object_object_add(hello, "host", json_object_new_string(hostname[0] ? hostname : "unknown"));
        r = send_json(in, MIG_HELLO, hello, err);
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
        json_object_object_get_ex(f.json, "spec", &in->spec);
        json_object_get(in->spec);
        snprintf(in->secret_id, sizeof(in->secret_id), "%s", migrate_json_str(f.json, "secret_uuid") ?: "");
        mig_frame_clear(&f);
        text = json_object_to_json_string_ext(in->spec, JSON_C_TO_STRING_PLAIN);
        r = guest_spec_parse(text, strlen(text), "the source's guest spec", &g->spec, err);
        if (r < 0)
                return r;
        if (!streq(g->spec.uuid, opts->incoming_uuid))
                return vmsup_fail(err, VMSUP_EX_DATAERR, 0, "the source's guest spec is for guest %s, not %s",
                                  g->spec.uuid, opts->incoming_uuid);

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
        sigprocmask(SIG_BLOCK, &stop, NULL);
        return 0;
}

json_object *migrate_in_spec_json(struct guest *g) {
        return json_object_get(g->in->spec);
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
        /* The supervisor is gone; its children get SIGTERM (PR_SET_PDEATHSIG). */
        deadline = monotonic_ms() + JANITOR_WAIT_MS;
        for (int i = 0; i < n; i++) {
                struct pollfd p = { .fd = pidfds[i], .events = POLLIN };
                long left = deadline - monotonic_ms();

                if (left > 0)
                        poll(&p, 1, (int) left);
        }
        lock = guest_dirs_lock(&g->dirs, &err);
        if (lock < 0) {
                fprintf(stderr, "vmsup janitor: guest %s: %s; not removing anything\n", g->spec.uuid, err->msg);
                return VMSUP_EX_TEMPFAIL;
        }
        if (access(g->dirs.incoming, F_OK) < 0) {
                close(lock);
                return 0; /* the guest was committed after all, or someone removed it */
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

        if (access(g->dirs.incoming, F_OK) == 0) {
                log_warning("removing what an earlier, incomplete incoming migration of this guest left");
                r = guest_dirs_remove_all(&g->dirs, g->cfg->paths.secrets_dir, g->spec.uuid, err);
                if (r < 0)
                        return r;
                r = guest_dirs_prepare(&g->dirs, g->tpm_uid, g->tpm_gid, err);
                if (r < 0)
                        return r;
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
                                               migrate_json_str(f->json, "error"));
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
        if (streq(migrate_json_str(st, "status"), "running"))
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
        r = migrate_qmp(g, "cont", NULL, NULL, err);
        if (r < 0)
                return vmsup_error_prefix(err, "run the received guest");
        json_object_put(st);
        st = NULL;
        r = migrate_qmp(g, "query-status", NULL, &st, err);
        if (r < 0)
                return r;
        if (!streq(migrate_json_str(st, "status"), "running"))
                return vmsup_fail(err, VMSUP_EX_FAILURE, 0, "the received guest does not run after cont (QEMU: %s)",
                                  migrate_json_str(st, "status") ?: "?");
        /* From here the guest is this host's: no janitor, no marker. */
        if (unlink(g->dirs.incoming) < 0)
                log_error("remove '%s': %s (remove it by hand: the guest is this host's now)", g->dirs.incoming,
                          strerror(errno));
        in->claimed = false;
        janitor_say(g, "K\n");
        g->incoming = false;
        g->state = GUEST_RUNNING;
        g->started_at = time(NULL);
        guest_record_history(g);
        if (send_json(in, MIG_RUNNING, NULL, err) < 0) {
                log_warning("%s; the guest runs here, the source cannot know it yet", (*err)->msg);
                *err = vmsup_error_free(*err);
        }
        log_info("guest running here, received from %s: QEMU pid %d, swtpm pid %d", in->source, (int) g->qemu.pid,
                 (int) g->swtpm.pid);
        migrate_in_free(g);
        return 0;
}

void migrate_in_abort(struct guest *g, const vmsup_error *why) {
        struct migrate_in *in = g->in;
        vmsup_error *err = NULL;

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
        g->tpm_discard = true;
        guest_stop_children(g);
        if (in->claimed) {
                if (guest_dirs_remove_all(&g->dirs, g->cfg->paths.secrets_dir, g->spec.uuid, &err) < 0) {
                        log_error("%s; the janitor tries again", err->msg);
                        err = vmsup_error_free(err);
                        return; /* EOF on its pipe at our exit makes the janitor try */
                }
                log_info("removed everything the incoming migration had made here");
        }
        janitor_say(g, "K\n");
}

void migrate_in_free(struct guest *g) {
        struct migrate_in *in = g->in;

        if (!in)
                return;
        in->ch = migchan_free(in->ch);
        json_object_put(in->spec);
        secmem_free(in->secret);
        closep(&in->janitor_fd);
        closep(&in->stream_listen_fd);
        closep(&in->stream_fd);
        free(in);
        g->in = NULL;
}
