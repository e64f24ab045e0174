#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/fileio.h"
#include "common/proc.h"
#include "common/secmem.h"
#include "common/util.h"
#include "secrets/barbican.h"
#include "secrets/http.h"
#include "crypto/kdf.h"
#include "secrets/keystone.h"
#include "secrets/localstore.h"
#include "secrets/vtpmsecret.h"

#define TOKEN_MAX (64 * 1024)

int vtpm_read_token(int fd, char **ret_token, size_t *ret_len, vmsup_error **err) {
        _cleanup_secmem_ char *buf = secmem_alloc(TOKEN_MAX + 1);
        size_t len = 0;

        if (!buf)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "read the credential");
        for (;;) {
                ssize_t n = read(fd, buf + len, TOKEN_MAX + 1 - len);

                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0)
                        return vmsup_fail(err, VMSUP_ERR_NOT_FOUND, errno, "read the credential from fd %d", fd);
                if (n == 0)
                        break;
                len += (size_t) n;
                if (len > TOKEN_MAX)
                        return vmsup_fail(err, VMSUP_ERR_DATA, 0, "the credential on fd %d is longer than %d bytes", fd,
                                          TOKEN_MAX);
        }
        while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == '\r'))
                buf[--len] = '\0';
        if (len == 0)
                return vmsup_fail(err, VMSUP_ERR_DENIED, 0, "the credential on fd %d is empty", fd);
        buf[len] = '\0';
        *ret_token = TAKE_PTR(buf);
        *ret_len = len;
        return 0;
}

/* The id recorded in the state dir by an earlier start; "" when none. */
static int read_recorded_id(const char *state_dir, char ret[37], vmsup_error **err) {
        _cleanup_close_ int dfd = open(state_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        _cleanup_free_ void *data = NULL;
        size_t len = 0;
        int r;

        ret[0] = '\0';
        if (dfd < 0)
                return vmsup_fail(err, VMSUP_ERR_IO, errno, "open '%s'", state_dir);
        r = file_read_at(dfd, state_dir, VTPM_SECRET_ID_FILE, 64, false, &data, &len, err);
        if (r == -ENOENT) {
                *err = vmsup_error_free(*err);
                return 0;
        }
        if (r < 0)
                return r;
        while (len > 0 && ((char *) data)[len - 1] == '\n')
                len--;
        if (len != 36 || (memcpy(ret, data, 36), ret[36] = '\0', !uuid_is_valid(ret))) {
                ret[0] = '\0';
                return vmsup_fail(err, VMSUP_ERR_DATA, 0, "'%s/%s' does not hold a secret UUID", state_dir,
                                  VTPM_SECRET_ID_FILE);
        }
        return 0;
}

static int record_id(const char *state_dir, const char *id, vmsup_error **err) {
        _cleanup_free_ char *path = NULL;
        char text[40];

        if (asprintf(&path, "%s/%s", state_dir, VTPM_SECRET_ID_FILE) < 0)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "record the secret id");
        snprintf(text, sizeof(text), "%s\n", id);
        return write_file_atomic(path, text, strlen(text), 0600, err);
}

/* A Barbican client acting for the owner whose credential is token. */
static int owner_client(const struct vtpm_secret_opts *opts, const char *owner_user_id, const char *token,
                        size_t token_len, struct barbican_client **ret, vmsup_error **err) {
        struct barbican_identity ident = { 0 };

        if (opts->barbican.auth == BARBICAN_AUTH_NOAUTH) {
                /* Barbican's unauthenticated pipeline (tests, demo): the credential is the
                 * project the owner acts in. */
                ident.project_id = token;
                ident.user_id = owner_user_id;
        } else {
                ident.token = token;
                ident.token_len = token_len;
        }
        return barbican_client_new(&opts->barbican, &ident, ret, err);
}

int vtpm_secret_delete(const struct vtpm_secret_opts *opts, const char *state_dir, const char *owner_user_id,
                       int token_fd, bool *ret_deleted, vmsup_error **err) {
        _cleanup_secmem_ char *token = NULL;
        struct barbican_client *client = NULL;
        char id[37];
        size_t token_len = 0;
        int r;

        *ret_deleted = false;
        r = read_recorded_id(state_dir, id, err);
        if (r < 0)
                return r;
        if (!id[0])
                return 0;
        if (token_fd < 0)
                return vmsup_fail(err, VMSUP_ERR_DENIED, 0,
                                  "the guest owner's credentials are required to delete its vTPM secret %s from "
                                  "Barbican: pass a token with --token-fd N",
                                  id);
        r = vtpm_read_token(token_fd, &token, &token_len, err);
        if (r < 0)
                return r;
        r = owner_client(opts, owner_user_id, token, token_len, &client, err);
        if (r < 0)
                return r;
        r = barbican_secret_delete(client, id, err);
        barbican_client_free(client);
        if (r < 0)
                return r;
        *ret_deleted = r > 0;
        return 0;
}

/* In the asking child (user and deployment mode): the passphrase goes back to the parent
 * as soon as Barbican gave it, the anchor after it (sent: the first answer went). */
struct early_reply {
        int fd;
        bool sent;
};
static int barbican_obtain(const struct vtpm_secret_request *req, struct vtpm_secret *ret,
                           struct early_reply *early, vmsup_error **err);

/* Nova's deployment mode (vtpm.py get_request_context): a Barbican client acting as the
 * service, from the root-only [keystone] credentials_file. With [barbican] auth = noauth
 * (tests) the service acts in the credentials' project_id. */
static int service_client(const struct vtpm_secret_opts *opts, struct barbican_client **ret, vmsup_error **err) {
        const struct barbican_options *bo = &opts->barbican;
        struct keystone_credentials creds = { 0 };
        struct keystone_token tok = { 0 };
        int r;

        if (!opts->keystone_credentials_file)
                return vmsup_fail(err, VMSUP_ERR_CONFIG, 0,
                                  "TPM secret security 'deployment' needs the service's credentials: set [keystone] "
                                  "credentials_file");
        r = keystone_credentials_load(opts->keystone_credentials_file, &creds, err);
        if (r < 0)
                return r;
        if (bo->auth == BARBICAN_AUTH_NOAUTH) {
                struct barbican_identity ident = { .project_id = creds.project_id, .user_id = creds.user_id };

                r = creds.project_id ? barbican_client_new(bo, &ident, ret, err)
                                     : vmsup_fail(err, VMSUP_ERR_CONFIG, 0, "'%s': noauth needs a project_id",
                                                  opts->keystone_credentials_file);
        } else {
                struct http_options ho = { .service = "Keystone", .ca_file = bo->ca_file,
                                           .connect_timeout_ms = bo->connect_timeout_ms, .timeout_ms = bo->timeout_ms,
                                           .attempts = bo->attempts };
                struct keystone_service_filter f = { .type = "key-manager",
                                                     .interface = bo->interface ? bo->interface : "public",
                                                     .region = bo->region };

                r = opts->keystone_auth_url
                            ? keystone_token_issue(&ho, opts->keystone_auth_url, &creds, &f, &tok, err)
                            : vmsup_fail(err, VMSUP_ERR_CONFIG, 0, "deployment mode needs [keystone] auth_url");
                if (r >= 0)
                        r = barbican_client_new_from_token(bo, &tok, ret, err);
                keystone_token_clear(&tok);
        }
        keystone_credentials_clear(&creds);
        return r;
}

/* Nova's host mode (driver.py _get_or_create_secret_for_vtpm): the host's own copy
 * first, so that hard reboot, start and migration need nobody's credentials; Barbican
 * (with the caller's credentials) only when the host has none, then kept locally. */
static int host_obtain(const struct vtpm_secret_request *req, struct vtpm_secret *ret, vmsup_error **err) {
        struct localstore *store = NULL;
        struct vtpm_secret s = { 0 };
        char *pass = NULL;
        int r;

        r = localstore_open(req->opts->secrets_dir, true, &store, err);
        if (r < 0)
                return r;
        r = localstore_get(store, req->spec->uuid, &pass, s.id, err);
        if (r < 0)
                goto out;
        if (r == 1) {
                if (req->spec->vtpm_secret_uuid && !streq(req->spec->vtpm_secret_uuid, s.id)) {
                        secmem_free(pass);
                        r = vmsup_fail(err, VMSUP_ERR_DATA, 0,
                                       "the guest spec names vTPM secret %s, but this host keeps secret %s for it",
                                       req->spec->vtpm_secret_uuid, s.id);
                        goto out;
                }
                s.passphrase = pass; /* the host has it: the owner's credential is not needed */
                r = localstore_anchor_get(store, req->spec->uuid, &s.anchor, err);
                if (r < 0) {
                        vtpm_secret_clear(&s);
                        goto out;
                }
                s.anchored = r > 0;
                *ret = s;
                r = 0;
                goto out;
        }
        r = barbican_obtain(req, &s, NULL, err);
        if (r < 0)
                goto out;
        /* Barbican's copy of the anchor came with the secret (host mode keeps it here
         * from now on); one of this host's own, left from an earlier time here, counts
         * too: the higher one stands */
        {
                uint64_t local = 0;

                r = localstore_anchor_get(store, req->spec->uuid, &local, err);
                if (r < 0) {
                        vtpm_secret_clear(&s);
                        goto out;
                }
                if (r > 0 && (!s.anchored || local > s.anchor))
                        s.anchor = local;
                s.anchored = s.anchored || r > 0;
        }
        r = localstore_put(store, req->spec->uuid, s.passphrase, s.id, err);
        if (r < 0) {
                vtpm_secret_clear(&s);
                goto out;
        }
        *ret = s;
out:
        localstore_free(store);
        return r;
}

static int obtain(const struct vtpm_secret_request *req, struct vtpm_secret *ret, struct early_reply *early,
                  vmsup_error **err) {
        /* user and deployment: Barbican at every start, never kept on the host */
        if (req->tpm->secret_security == SECRET_SECURITY_HOST)
                return host_obtain(req, ret, err);
        return barbican_obtain(req, ret, early, err);
}

/* ---- the exchange in a child ----
 *
 * Keystone and Barbican are asked from a forked child, which sends back only the result:
 * the passphrase, or the error. libcurl is loaded in the child only (secrets/http.c), so
 * its TLS library, the CA bundle it parses, the owner's or the service's token and the
 * HTTP buffers that held the passphrase all end with the child, and the supervisor that
 * then runs for months holds none of it (nor the memory: issue #9). What the child
 * writes to the guest's state dir and the local store (the secret's id, host mode's
 * copy) it writes as before. */

struct obtain_reply {
        int32_t r;         /* 0, or the failure's negative errno-style value */
        int32_t kind;      /* of the failure */
        int32_t errnum;
        uint32_t msg_len;  /* the failure's message follows */
        uint32_t pass_len; /* the passphrase follows */
        char id[37];
        uint8_t created;
        uint8_t anchored;
        uint8_t anchor_follows; /* a second reply (the anchor, or the failure) follows */
        uint64_t anchor;
};
#define OBTAIN_MSG_MAX (64 * 1024)

static bool write_all(int fd, const void *data, size_t len) {
        const uint8_t *p = data;

        while (len > 0) {
                ssize_t n = write(fd, p, len);

                if (n < 0 && errno == EINTR)
                        continue;
                if (n <= 0)
                        return false;
                p += n;
                len -= (size_t) n;
        }
        return true;
}

/* len bytes, or fewer at EOF: how many came. */
static size_t read_all(int fd, void *buf, size_t len) {
        uint8_t *p = buf;
        size_t got = 0;

        while (got < len) {
                ssize_t n = read(fd, p + got, len - got);

                if (n < 0 && errno == EINTR)
                        continue;
                if (n <= 0)
                        break;
                got += (size_t) n;
        }
        return got;
}

/* Until fd has something to read (or its writer is gone): 0, or -ECANCELED when cancel_fd
 * became readable first. */
static int wait_readable(int fd, int cancel_fd) {
        for (;;) {
                struct pollfd p[2] = { { fd, POLLIN, 0 }, { cancel_fd > 0 ? cancel_fd : -1, POLLIN, 0 } };

                if (poll(p, 2, -1) < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (p[1].revents)
                        return -ECANCELED;
                if (p[0].revents)
                        return 0;
        }
}

/* A child's answer: rep (its r set by the caller), then the failure's message. */
static bool reply_send(int fd, struct obtain_reply *rep, const vmsup_error *e) {
        if (rep->r < 0) {
                rep->kind = e && e->kind != VMSUP_ERR_OK ? e->kind : VMSUP_ERR_INTERNAL;
                rep->errnum = e ? e->errnum : 0;
                rep->msg_len = e && e->msg ? (uint32_t) strnlen(e->msg, OBTAIN_MSG_MAX) : 0;
        }
        return write_all(fd, rep, sizeof(*rep)) && (!rep->msg_len || write_all(fd, e->msg, rep->msg_len));
}

/* Read a child's answer: false when it did not come whole. A failure's message, when it
 * came, into *ret_msg. */
static bool reply_recv(int fd, struct obtain_reply *rep, char **ret_msg) {
        if (read_all(fd, rep, sizeof(*rep)) != sizeof(*rep))
                return false;
        if (rep->msg_len > 0 && rep->msg_len <= OBTAIN_MSG_MAX) {
                char *msg = calloc(1, rep->msg_len + 1);

                if (msg && read_all(fd, msg, rep->msg_len) != rep->msg_len) {
                        free(msg);
                        msg = NULL;
                }
                *ret_msg = msg;
        }
        return true;
}

/* The failure a child answered, as ours. */
static int reply_error(const struct obtain_reply *rep, const char *msg, const char *what, vmsup_error **err) {
        if (msg)
                vmsup_fail(err, (enum vmsup_err_kind) rep->kind, 0, "%s", msg);
        else
                vmsup_fail(err, (enum vmsup_err_kind) rep->kind, 0, "%s: failed (no message)", what);
        if (err && *err)
                (*err)->errnum = rep->errnum;
        return rep->r;
}

/* The first answer of an early reply: the passphrase and the secret's id. */
static void early_send(struct early_reply *early, const char *id, const char *pass) {
        struct obtain_reply rep = { .pass_len = (uint32_t) strlen(pass), .anchor_follows = 1 };

        memcpy(rep.id, id, sizeof(rep.id));
        early->sent = reply_send(early->fd, &rep, NULL) && write_all(early->fd, pass, rep.pass_len);
}

static _Noreturn void obtain_child(const struct vtpm_secret_request *req, int fd) {
        struct obtain_reply rep = { 0 };
        struct vtpm_secret s = { 0 };
        struct early_reply early = { .fd = fd };
        vmsup_error *e = NULL;
        bool ok;

        rep.r = obtain(req, &s, &early, &e);
        if (early.sent) {
                /* the second answer: the anchor, or why there is none */
                if (rep.r >= 0) {
                        rep.anchored = s.anchored;
                        rep.anchor = s.anchor;
                }
                ok = reply_send(fd, &rep, e);
                vtpm_secret_clear(&s);
                _exit(ok ? 0 : 1);
        }
        if (rep.r >= 0) {
                rep.pass_len = (uint32_t) strlen(s.passphrase);
                memcpy(rep.id, s.id, sizeof(rep.id));
                rep.created = s.created;
                rep.anchored = s.anchored;
                rep.anchor = s.anchor;
        }
        ok = reply_send(fd, &rep, e) && (!rep.pass_len || write_all(fd, s.passphrase, rep.pass_len));
        vtpm_secret_clear(&s);
        _exit(ok ? 0 : 1);
}

struct vtpm_secret_pending {
        pid_t pid;
        int rd;        /* the child's answer */
        int cancel_fd;
        const char *asked; /* for messages: whom the child asks */
};

int vtpm_secret_obtain_start(const struct vtpm_secret_request *req, struct vtpm_secret_pending **ret,
                             vmsup_error **err) {
        struct vtpm_secret_pending *p = calloc(1, sizeof(*p));
        pid_t parent = getpid();
        int fds[2];

        if (!p)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "vTPM secret");
        if (pipe2(fds, O_CLOEXEC) < 0) {
                free(p);
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, errno, "vTPM secret: pipe");
        }
        p->rd = fds[0];
        p->cancel_fd = req->cancel_fd;
        p->asked = req->tpm->secret_security == SECRET_SECURITY_DEPLOYMENT ? "Keystone and Barbican" : "Barbican";
        p->pid = fork();
        if (p->pid < 0) {
                int e = errno;

                close(fds[0]);
                close(fds[1]);
                free(p);
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, e, "vTPM secret: fork");
        }
        if (p->pid == 0) {
                close(fds[0]);
                /* no orphan keeps asking Barbican for a supervisor that is gone */
                if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != parent)
                        _exit(1);
                obtain_child(req, fds[1]);
        }
        close(fds[1]); /* the child reads token_fd through its own copy; ours stays the caller's */
        *ret = p;
        return 0;
}

struct vtpm_secret_pending *vtpm_secret_pending_free(struct vtpm_secret_pending *p) {
        int status;

        if (!p)
                return NULL;
        if (p->pid > 0) {
                kill(p->pid, SIGKILL);
                while (waitpid(p->pid, &status, 0) < 0 && errno == EINTR)
                        ;
        }
        closep(&p->rd);
        free(p);
        return NULL;
}

/* The child is done: reaped; false (why set) when it did not end well. */
static bool pending_reap(struct vtpm_secret_pending *p, char *why, size_t size) {
        int status;

        while (waitpid(p->pid, &status, 0) < 0 && errno == EINTR)
                ;
        p->pid = 0;
        proc_describe_status(status, why, size);
        return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

/* The child's next reply. It answers each request all at once when it is done: until
 * then, a stop request (SIGTERM on cancel_fd) abandons it, whatever Keystone or Barbican
 * are doing, and *pp with it. 1: a reply; 0: none (the child ended); < 0: abandoned. */
static int pending_recv(struct vtpm_secret_pending **pp, struct obtain_reply *rep, char **msg, vmsup_error **err) {
        struct vtpm_secret_pending *p = *pp;
        int r;

        if (wait_readable(p->rd, p->cancel_fd) == -ECANCELED) {
                r = vmsup_fail(err, VMSUP_ERR_BUSY, ECANCELED, "vTPM secret: the request to %s abandoned", p->asked);
                *pp = vtpm_secret_pending_free(p);
                return r;
        }
        return reply_recv(p->rd, rep, msg) ? 1 : 0;
}

int vtpm_secret_obtain_finish(struct vtpm_secret_pending **pp, struct vtpm_secret *ret, vmsup_error **err) {
        struct vtpm_secret_pending *p = *pp;
        _cleanup_secmem_ char *pass = NULL;
        _cleanup_free_ char *msg = NULL;
        struct obtain_reply rep;
        int r;
        bool got, ended = true;
        char why[64] = "";

        if ((r = pending_recv(pp, &rep, &msg, err)) < 0)
                return r;
        got = r > 0;
        if (got && rep.r >= 0 && rep.pass_len > 0 && rep.pass_len <= KDF_PASSPHRASE_MAX) {
                /* straight from the pipe into locked memory: no other copy */
                pass = secmem_alloc(rep.pass_len + 1);
                if (pass && read_all(p->rd, pass, rep.pass_len) != rep.pass_len)
                        pass = secmem_free(pass);
        }
        /* with the anchor still to come the child goes on, and *pp stays for _anchor_finish */
        if (!(got && rep.r >= 0 && rep.anchor_follows && pass)) {
                ended = pending_reap(p, why, sizeof(why));
                *pp = vtpm_secret_pending_free(p);
        }
        if (!got || !ended)
                return vmsup_fail(err, VMSUP_ERR_INTERNAL, 0, "vTPM secret: the process asking Barbican %s",
                                  got ? why : "ended without an answer");
        if (rep.r < 0)
                return reply_error(&rep, msg, "vTPM secret", err);
        if (!pass)
                return vmsup_fail(err, VMSUP_ERR_INTERNAL, 0, "vTPM secret: the passphrase did not arrive (%u bytes)",
                                  rep.pass_len);
        rep.id[sizeof(rep.id) - 1] = '\0';
        *ret = (struct vtpm_secret) { .passphrase = TAKE_PTR(pass), .created = rep.created,
                                      .anchored = rep.anchored, .anchor = rep.anchor,
                                      .anchor_follows = rep.anchor_follows };
        memcpy(ret->id, rep.id, sizeof(ret->id));
        return 0;
}

int vtpm_secret_anchor_finish(struct vtpm_secret_pending **pp, bool *ret_anchored, uint64_t *ret_anchor,
                              vmsup_error **err) {
        struct vtpm_secret_pending *p = *pp;
        _cleanup_free_ char *msg = NULL;
        struct obtain_reply rep;
        char why[64] = "";
        bool got, ended;
        int r;

        if ((r = pending_recv(pp, &rep, &msg, err)) < 0)
                return r;
        got = r > 0;
        ended = pending_reap(p, why, sizeof(why));
        *pp = vtpm_secret_pending_free(p);
        if (!got || !ended)
                return vmsup_fail(err, VMSUP_ERR_INTERNAL, 0, "TPM state anchor: the process asking Barbican %s",
                                  got ? why : "ended without an answer");
        if (rep.r < 0)
                return reply_error(&rep, msg, "TPM state anchor", err);
        *ret_anchored = rep.anchored;
        *ret_anchor = rep.anchor;
        return 0;
}

int vtpm_secret_obtain(const struct vtpm_secret_request *req, struct vtpm_secret *ret, vmsup_error **err) {
        struct vtpm_secret_pending *p = NULL;
        int r = vtpm_secret_obtain_start(req, &p, err);

        if (r >= 0)
                r = vtpm_secret_obtain_finish(&p, ret, err);
        if (r >= 0 && p) {
                r = vtpm_secret_anchor_finish(&p, &ret->anchored, &ret->anchor, err);
                ret->anchor_follows = false;
                if (r < 0)
                        vtpm_secret_clear(ret);
        }
        return r;
}

static int barbican_obtain(const struct vtpm_secret_request *req, struct vtpm_secret *ret,
                           struct early_reply *early, vmsup_error **err) {
        struct barbican_client *client = NULL;
        _cleanup_secmem_ char *token = NULL;
        _cleanup_secmem_ char *pass = NULL;
        struct vtpm_secret s = { 0 };
        char recorded[37];
        size_t token_len = 0;
        int r;

        bool service = req->tpm->secret_security == SECRET_SECURITY_DEPLOYMENT;

        /* deployment mode: the service's own credentials; a caller's token is not used */
        if (!service) {
                if (req->token_fd < 0 && !req->token)
                        return vmsup_fail(err, VMSUP_ERR_DENIED, 0,
                                          "the guest owner's credentials are required to open its vTPM secret (%s): "
                                          "pass a token with --token-fd N",
                                          req->tpm->secret_security == SECRET_SECURITY_HOST
                                                  ? "host mode, and this host keeps no copy of it"
                                                  : "user mode");
                if (req->token) {
                        token = secmem_alloc(req->token_len + 1);
                        if (!token)
                                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "vTPM secret");
                        memcpy(token, req->token, req->token_len);
                        token_len = req->token_len;
                } else if ((r = vtpm_read_token(req->token_fd, &token, &token_len, err)) < 0)
                        return r;
        }

        r = read_recorded_id(req->state_dir, recorded, err);
        if (r < 0)
                return r;
        if (req->spec->vtpm_secret_uuid && recorded[0] && !streq(req->spec->vtpm_secret_uuid, recorded))
                return vmsup_fail(err, VMSUP_ERR_DATA, 0,
                                  "the guest spec names vTPM secret %s, but the TPM state is sealed under secret %s",
                                  req->spec->vtpm_secret_uuid, recorded);
        snprintf(s.id, sizeof(s.id), "%s", req->spec->vtpm_secret_uuid ? req->spec->vtpm_secret_uuid : recorded);

        r = service ? service_client(req->opts, &client, err)
                    : owner_client(req->opts, req->spec->owner_user_id, token, token_len, &client, err);
        if (r < 0)
                return r;
        pass = secmem_alloc(BARBICAN_PASSPHRASE_LEN + 1);
        if (!pass) {
                barbican_client_free(client);
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "vTPM secret");
        }
        if (s.id[0]) {
                r = barbican_secret_fetch(client, s.id, pass, err);
                /* the parent goes on with the passphrase while the anchor is asked for */
                if (r >= 0 && early)
                        early_send(early, s.id, pass);
                if (r >= 0) {
                        r = barbican_secret_anchor_get(client, s.id, &s.anchor, err);
                        s.anchored = r > 0;
                }
        } else if (req->first_start) {
                r = barbican_secret_create(client, req->spec->uuid, pass, s.id, err);
                if (r >= 0) {
                        s.created = true;
                        r = record_id(req->state_dir, s.id, err);
                        if (r < 0) {
                                /* Nova's order too: a secret nobody knows about is deleted */
                                vmsup_error *derr = NULL;

                                barbican_secret_delete(client, s.id, &derr);
                                vmsup_error_free(derr);
                        }
                }
        } else
                r = vmsup_fail(err, VMSUP_ERR_DATA, 0,
                               "the guest has sealed TPM state but no vTPM secret id (vtpm_secret_uuid): refusing to "
                               "create a new secret, which could never open that state");
        barbican_client_free(client);
        if (r < 0)
                return r;
        s.passphrase = TAKE_PTR(pass);
        *ret = s;
        return 0;
}

void vtpm_secret_clear(struct vtpm_secret *s) {
        s->passphrase = secmem_free(s->passphrase);
        memset(s, 0, sizeof(*s));
}

/* ---- the anchor ---- */

static int anchor_store_barbican(const struct vtpm_anchor_request *req, uint64_t generation, vmsup_error **err) {
        struct barbican_client *client = NULL;
        int r;

        if (req->tpm->secret_security == SECRET_SECURITY_DEPLOYMENT)
                r = service_client(req->opts, &client, err);
        else if (!req->token)
                return vmsup_fail(err, VMSUP_ERR_DENIED, 0,
                                  "the guest owner's credentials are required to record the TPM state's anchor in "
                                  "Barbican (user mode)");
        else
                r = owner_client(req->opts, req->spec->owner_user_id, req->token, req->token_len, &client, err);
        if (r < 0)
                return r;
        r = barbican_secret_anchor_put(client, req->secret_id, generation, err);
        barbican_client_free(client);
        return r;
}

int vtpm_anchor_store(const struct vtpm_anchor_request *req, uint64_t generation, vmsup_error **err) {
        struct vtpm_anchor_keeper *k = NULL;
        int r;

        if (req->tpm->secret_security == SECRET_SECURITY_HOST) {
                struct localstore *store = NULL;

                r = localstore_open(req->opts->secrets_dir, false, &store, err);
                if (r >= 0)
                        r = localstore_anchor_put(store, req->spec->uuid, generation, err);
                localstore_free(store);
                return r;
        }
        /* libcurl only in a child, as for the secret (above): a keeper for one request */
        r = vtpm_anchor_keeper_start(req, &k, err);
        if (r >= 0)
                r = vtpm_anchor_keeper_store(k, req->secret_id, generation, err);
        vtpm_anchor_keeper_free(k);
        return r;
}

/* ---- the keeper ---- */

struct vtpm_anchor_keeper {
        pid_t pid;
        int to, from; /* requests to it, replies from it */
};

/* What the keeper is asked: record generation for secret id. */
struct keeper_req {
        uint64_t generation;
        char secret_id[37];
};

static int keeper_reply(int fd, vmsup_error **err) {
        struct obtain_reply rep = { 0 };
        _cleanup_free_ char *msg = NULL;

        if (!reply_recv(fd, &rep, &msg))
                return vmsup_fail(err, VMSUP_ERR_INTERNAL, 0,
                                  "TPM state anchor: the process asking Barbican did not answer");
        return rep.r < 0 ? reply_error(&rep, msg, "TPM state anchor", err) : 0;
}

/* In the keeper: one request to Barbican in a child of its own, which loads libcurl (and,
 * through it, its TLS, SSH, LDAP and Kerberos libraries: 8 MiB of RSS, 1.6 MiB of PSS)
 * and takes them along when it exits. The keeper lives as long as the guest and keeps
 * only the token. */
static int keeper_ask_barbican(const struct vtpm_anchor_request *req, uint64_t generation, vmsup_error **err) {
        struct obtain_reply rep = { 0 };
        _cleanup_free_ char *msg = NULL;
        pid_t keeper = getpid(), pid;
        int p[2], status;
        bool answered;

        if (pipe2(p, O_CLOEXEC) < 0)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, errno, "TPM state anchor: pipe");
        pid = fork();
        if (pid < 0) {
                int e = errno;

                close(p[0]);
                close(p[1]);
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, e, "TPM state anchor: fork");
        }
        if (pid == 0) {
                vmsup_error *e = NULL;

                /* not the keeper's pipes to the supervisor (3 and 4): only its answer */
                close(p[0]);
                if (close_range(3, 4, 0) < 0 || prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != keeper)
                        _exit(1);
                rep.r = anchor_store_barbican(req, generation, &e);
                _exit(reply_send(p[1], &rep, e) ? 0 : 1);
        }
        close(p[1]);
        answered = reply_recv(p[0], &rep, &msg);
        close(p[0]);
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
                ;
        if (!answered)
                return vmsup_fail(err, VMSUP_ERR_INTERNAL, 0,
                                  "TPM state anchor: the process asking Barbican ended without an answer");
        return rep.r < 0 ? reply_error(&rep, msg, "TPM state anchor", err) : 0;
}

int vtpm_anchor_keeper_start(const struct vtpm_anchor_request *req, struct vtpm_anchor_keeper **ret,
                             vmsup_error **err) {
        struct vtpm_anchor_keeper *k;
        pid_t parent = getpid();
        int down[2], up[2];

        if (!req->token && req->tpm->secret_security != SECRET_SECURITY_DEPLOYMENT)
                return vmsup_fail(err, VMSUP_ERR_DENIED, 0,
                                  "the guest owner's credentials are required to record the TPM state's anchor in "
                                  "Barbican (user mode)");
        k = calloc(1, sizeof(*k));
        if (!k)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "TPM state anchor");
        if (pipe2(down, O_CLOEXEC) < 0) {
                free(k);
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, errno, "TPM state anchor: pipe");
        }
        if (pipe2(up, O_CLOEXEC) < 0) {
                int e = errno;

                close(down[0]);
                close(down[1]);
                free(k);
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, e, "TPM state anchor: pipe");
        }
        k->pid = fork();
        if (k->pid < 0) {
                int e = errno;

                close(down[0]);
                close(down[1]);
                close(up[0]);
                close(up[1]);
                free(k);
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, e, "TPM state anchor: fork");
        }
        if (k->pid == 0) {
                struct vtpm_anchor_request mine = *req;
                struct keeper_req kr;
                char *token = NULL;

                /* only its two pipes: not the guest's lock, sockets or anything else */
                int a = fcntl(down[0], F_DUPFD, 10), b = fcntl(up[1], F_DUPFD, 10);

                /* above 3 and 4 first: dup2() onto them must not close the other pipe */
                if (a < 0 || b < 0 || dup2(a, 3) < 0 || dup2(b, 4) < 0 || close_range(5, ~0U, 0) < 0 ||
                    prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != parent)
                        _exit(1);
                (void) prctl(PR_SET_DUMPABLE, 0);
                /* the token into memory of its own, locked here (a lock is not inherited),
                 * and the copy of the parent's page it shares wiped */
                if (req->token) {
                        if (!(token = secmem_alloc(req->token_len + 1)))
                                _exit(1);
                        memcpy(token, req->token, req->token_len);
                        erase((char *) req->token, req->token_len);
                        mine.token = token;
                }
                while (read_all(3, &kr, sizeof(kr)) == sizeof(kr)) {
                        vmsup_error *e = NULL;
                        struct obtain_reply rep = { 0 };

                        kr.secret_id[sizeof(kr.secret_id) - 1] = '\0';
                        mine.secret_id = kr.secret_id;
                        rep.r = keeper_ask_barbican(&mine, kr.generation, &e);
                        if (!reply_send(4, &rep, e))
                                _exit(1);
                        vmsup_error_free(e);
                }
                secmem_free(token);
                _exit(0);
        }
        close(down[0]);
        close(up[1]);
        k->to = down[1];
        k->from = up[0];
        *ret = k;
        return 0;
}

int vtpm_anchor_keeper_send(struct vtpm_anchor_keeper *k, const char *secret_id, uint64_t generation,
                            vmsup_error **err) {
        struct keeper_req kr = { .generation = generation };

        if (!secret_id || !barbican_is_uuid(secret_id))
                return vmsup_fail(err, VMSUP_ERR_INTERNAL, 0, "TPM state anchor: no vTPM secret id");
        memcpy(kr.secret_id, secret_id, sizeof(kr.secret_id) - 1);
        if (!write_all(k->to, &kr, sizeof(kr)))
                return vmsup_fail(err, VMSUP_ERR_INTERNAL, errno, "TPM state anchor: the process keeping the owner's "
                                                                  "token is gone");
        return 0;
}

int vtpm_anchor_keeper_fd(const struct vtpm_anchor_keeper *k) {
        return k->from;
}

int vtpm_anchor_keeper_recv(struct vtpm_anchor_keeper *k, vmsup_error **err) {
        return keeper_reply(k->from, err);
}

int vtpm_anchor_keeper_store(struct vtpm_anchor_keeper *k, const char *secret_id, uint64_t generation,
                             vmsup_error **err) {
        int r = vtpm_anchor_keeper_send(k, secret_id, generation, err);

        return r < 0 ? r : vtpm_anchor_keeper_recv(k, err);
}

struct vtpm_anchor_keeper *vtpm_anchor_keeper_free(struct vtpm_anchor_keeper *k) {
        int status;

        if (!k)
                return NULL;
        closep(&k->to); /* EOF: it exits */
        closep(&k->from);
        kill(k->pid, SIGKILL);
        while (waitpid(k->pid, &status, 0) < 0 && errno == EINTR)
                ;
        free(k);
        return NULL;
}
