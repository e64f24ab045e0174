/* A guest's vTPM passphrase: where it comes from, per Nova's secret-security mode. */
#ifndef VMSUP_SECRETS_VTPMSECRET_H
#define VMSUP_SECRETS_VTPMSECRET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/error.h"
#include "nova/guestspec.h"
#include "nova/tpmrules.h"
#include "secrets/barbican.h"

#define VTPM_SECRET_ID_FILE "vtpm_secret_uuid" /* in the guest's state dir: the id, not the secret */

/* Where the secrets are, filled from the host config by the caller
 * (host_config_vtpm_secret_opts()); the pointers are borrowed. */
struct vtpm_secret_opts {
        struct barbican_options barbican;
        const char *keystone_auth_url;         /* deployment mode: Keystone, for the service's token */
        const char *keystone_credentials_file; /* deployment mode: the service's root-only credentials */
        const char *secrets_dir;               /* host mode: the root-only local store */
};

struct vtpm_secret_request {
        const struct vtpm_secret_opts *opts;
        const struct guest_spec *spec;
        const struct vtpm_config *tpm;
        const char *state_dir; /* the guest's: the secret's id is recorded there */
        int token_fd;          /* the owner's credential (user mode), -1 when none was given;
                                * borrowed: read, never closed */
        const char *token;     /* or the credential already read (vtpm_read_token()): then
                                * token_fd is not read; borrowed */
        size_t token_len;
        bool first_start;      /* no sealed TPM state yet: a missing secret may be created */
        int cancel_fd;         /* > 0: readable means give up at once (the asking process is
                                * killed; error with errnum ECANCELED). 0, -1: none */
};

struct vtpm_secret {
        char *passphrase; /* secmem, NUL-terminated */
        char id[37];      /* the Barbican secret's UUID */
        bool created;     /* made on this start: the orchestrator must keep id */
        bool anchored;    /* the rollback anchor was found (host: local store; user and */
        uint64_t anchor;  /* deployment: the secret's Barbican metadata): the newest
                           * generation the guest's sealed state has had */
        bool anchor_follows; /* vtpm_secret_obtain_finish(): anchored and anchor are not
                              * known yet: vtpm_secret_anchor_finish() reads them */
};

/* Get the passphrase: from Barbican with the owner's credential read from token_fd (user
 * mode); on a first start with no secret id known, create the secret as Nova does and
 * record its id. Never creates a secret for a guest that has sealed state. The exchange
 * runs in a forked child (libcurl is loaded there only); the passphrase comes back into
 * secmem. token_fd stays the caller's: it is read (in the child), never closed.
 * Abandoned (cancel_fd), a secret being created may stay in Barbican unrecorded; nothing
 * half-written stays on this host. */
int vtpm_secret_obtain(const struct vtpm_secret_request *req, struct vtpm_secret *ret, vmsup_error **err);

/* vtpm_secret_obtain() in parts, so that the start goes on while the child asks: _start
 * forks the child and returns at once (req and what it points to may go then: the child
 * has its copy); _finish waits for the passphrase (or for req->cancel_fd). In user and
 * deployment mode the child sends the passphrase as soon as Barbican gave it, then asks
 * for the rollback anchor (a second request): _finish then sets ret->anchor_follows and
 * leaves *p for _anchor_finish, which waits for the anchor. Otherwise, and on any failure,
 * they free *p and set it to NULL. A pending request dropped unanswered: _free kills and
 * reaps the child. */
struct vtpm_secret_pending;
int vtpm_secret_obtain_start(const struct vtpm_secret_request *req, struct vtpm_secret_pending **ret,
                             vmsup_error **err);
int vtpm_secret_obtain_finish(struct vtpm_secret_pending **p, struct vtpm_secret *ret, vmsup_error **err);
int vtpm_secret_anchor_finish(struct vtpm_secret_pending **p, bool *ret_anchored, uint64_t *ret_anchor,
                              vmsup_error **err);
struct vtpm_secret_pending *vtpm_secret_pending_free(struct vtpm_secret_pending *p);

void vtpm_secret_clear(struct vtpm_secret *s);

/* Record generation as the guest's rollback anchor (docs/vmsup.8, TPM STATE): in host
 * mode in the local store (durably, no network); in user and deployment mode as the
 * metadata of its vTPM secret id in Barbican, as the owner (token) or the service, from
 * a forked child as vtpm_secret_obtain(). Only ever after the sealed state of that
 * generation is durable. */
struct vtpm_anchor_request {
        const struct vtpm_secret_opts *opts;
        const struct guest_spec *spec;
        const struct vtpm_config *tpm;
        const char *secret_id; /* user and deployment mode */
        const char *token;     /* user mode: the owner's credential; borrowed */
        size_t token_len;
};
int vtpm_anchor_store(const struct vtpm_anchor_request *req, uint64_t generation, vmsup_error **err);

/* User mode while the guest runs: the owner's token must be there at the stop, but not in
 * the long-lived supervisor's memory (docs/security.md). A keeper is a forked child that
 * holds it (it closes every other fd, and dies with its parent) and records a generation
 * in Barbican when asked (libcurl is loaded there, then). req->token is copied into it;
 * the caller wipes its own copy. In deployment mode it has no token (the service's
 * credentials); vtpm_anchor_store() starts one for a single request. */
struct vtpm_anchor_keeper;
int vtpm_anchor_keeper_start(const struct vtpm_anchor_request *req, struct vtpm_anchor_keeper **ret,
                             vmsup_error **err);
/* As vtpm_anchor_store() for the secret secret_id, done by the keeper (blocking until it
 * answered). req->secret_id is not used by a keeper: started before the secret's id is
 * known, it holds nothing else of the supervisor's secrets. */
int vtpm_anchor_keeper_store(struct vtpm_anchor_keeper *k, const char *secret_id, uint64_t generation,
                             vmsup_error **err);
/* The same in two halves, for an event loop: send the request; once fd (readable) has the
 * answer, recv it. One request at a time. */
int vtpm_anchor_keeper_send(struct vtpm_anchor_keeper *k, const char *secret_id, uint64_t generation,
                            vmsup_error **err);
int vtpm_anchor_keeper_fd(const struct vtpm_anchor_keeper *k);
int vtpm_anchor_keeper_recv(struct vtpm_anchor_keeper *k, vmsup_error **err);
struct vtpm_anchor_keeper *vtpm_anchor_keeper_free(struct vtpm_anchor_keeper *k);

/* Delete the guest's recorded vTPM secret from Barbican as the owner (credential read
 * from token_fd, which stays the caller's), as Nova's delete_vtpm_secret: a secret
 * already gone is fine. Nothing recorded: nothing to do. *ret_deleted says whether
 * Barbican had it. */
int vtpm_secret_delete(const struct vtpm_secret_opts *opts, const char *state_dir, const char *owner_user_id,
                       int token_fd, bool *ret_deleted, vmsup_error **err);

/* Read a credential from fd (at most 64 KiB; a trailing newline is dropped) into secmem.
 * fd stays the caller's (not closed). */
int vtpm_read_token(int fd, char **ret_token, size_t *ret_len, vmsup_error **err);

#endif
