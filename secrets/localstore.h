/* The root-only local secret store of Nova's "host" secret-security mode: one file per
 * guest in [paths] secrets_dir, holding the guest's vTPM passphrase and its Barbican id.
 *
 * The directory is 0700 and owned by vmsup's effective uid; each file is named by the
 * guest's UUID, 0600, owned by the same uid, and reads exactly (571 bytes):
 *
 *     secret_id=<Barbican secret UUID, 36 characters>\n
 *     passphrase=<Nova's passphrase: 512 characters of base64, no padding>\n
 *
 * Every file is opened relative to the directory fd verified at open, with O_NOFOLLOW,
 * and checked through the opened fd. Insecure owners, modes, symlinks, non-regular files
 * and a directory swapped since open are refused (VMSUP_ERR_DENIED) before anything is
 * read or written; content not in the format above is VMSUP_ERR_DATA. Messages name
 * the path and the problem, never the passphrase. */
#ifndef VMSUP_SECRETS_LOCALSTORE_H
#define VMSUP_SECRETS_LOCALSTORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/error.h"

#define LOCALSTORE_UUID_LEN 36

struct localstore;

struct localstore_entry {
        char uuid[LOCALSTORE_UUID_LEN + 1];      /* the guest */
        char secret_id[LOCALSTORE_UUID_LEN + 1]; /* its Barbican secret */
};

/* Open and verify dir. With create, a missing dir is made 0700 (missing parents 0755). A
 * missing dir without create fails with errno ENOENT (VMSUP_ERR_NOT_FOUND). */
int localstore_open(const char *dir, bool create, struct localstore **ret, vmsup_error **err);

struct localstore *localstore_free(struct localstore *s);

/* The store's path, as given to localstore_open. */
const char *localstore_path(const struct localstore *s);

/* Read the secret of guest uuid: 1 found (*ret_passphrase: 512 characters and a NUL in
 * secmem_alloc()'d memory, free it with secmem_free; ret_secret_id filled), 0 no file. */
int localstore_get(struct localstore *s, const char *uuid, char **ret_passphrase,
                   char ret_secret_id[LOCALSTORE_UUID_LEN + 1], vmsup_error **err);

/* Store (or replace) the secret of guest uuid, atomically and durably. */
int localstore_put(struct localstore *s, const char *uuid, const char *passphrase, const char *secret_id,
                   vmsup_error **err);

/* The rollback anchor of guest uuid (docs/vmsup.8, TPM STATE): the newest generation of
 * its sealed TPM state, in <dir>/<uuid>.anchor ("generation=<n>\n", 0600), checked as the
 * secret's file is. Outside the guest's state dir, so that a restored copy of that dir
 * does not bring an older anchor along. get: 1 found (*ret_generation), 0 none. put:
 * atomically and durably. */
#define LOCALSTORE_ANCHOR_SUFFIX ".anchor"
int localstore_anchor_get(struct localstore *s, const char *uuid, uint64_t *ret_generation, vmsup_error **err);
int localstore_anchor_put(struct localstore *s, const char *uuid, uint64_t generation, vmsup_error **err);

/* Remove the secret of guest uuid and its anchor, durably: 1 removed, 0 it was not there. */
int localstore_delete(struct localstore *s, const char *uuid, vmsup_error **err);

/* The guests in the store and their secret ids (never the passphrases), sorted by guest
 * uuid, in a malloc'd array. Every file is checked as localstore_get does; files whose
 * name is not a guest UUID (temp files of an interrupted put) are skipped. */
int localstore_list(struct localstore *s, struct localstore_entry **ret, size_t *ret_n, vmsup_error **err);

#endif
