#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/fileio.h"
#include "common/secmem.h"
#include "common/util.h"
#include "common/vtpm.h"
#include "crypto/seal.h"

#define OFF_VERSION 8
#define OFF_UUID 10
#define OFF_NAMELEN 46
#define OFF_NAME 48
#define UUID_LEN 36
#define HDR_LEN(n) ((size_t) OFF_NAME + (n) + 8 + SEAL_NONCE_LEN)

static void put_be16(uint8_t *p, uint16_t v) {
        p[0] = (uint8_t) (v >> 8);
        p[1] = (uint8_t) v;
}
static uint16_t get_be16(const uint8_t *p) {
        return (uint16_t) (p[0] << 8 | p[1]);
}
static void put_be64(uint8_t *p, uint64_t v) {
        for (int i = 7; i >= 0; i--, v >>= 8)
                p[i] = (uint8_t) v;
}
static uint64_t get_be64(const uint8_t *p) {
        uint64_t v = 0;

        for (int i = 0; i < 8; i++)
                v = v << 8 | p[i];
        return v;
}

bool seal_name_is_valid(const char *name) {
        size_t n = name ? strlen(name) : 0;

        if (n == 0 || n > SEAL_NAME_MAX || name[0] == '.')
                return false;
        for (size_t i = 0; i < n; i++)
                if (!strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-", name[i]))
                        return false;
        return true;
}

size_t seal_overhead(const char *name) {
        return HDR_LEN(strlen(name)) + SEAL_TAG_LEN;
}

static int check_args(const uint8_t *key, const char *uuid, const char *name, vmsup_error **err) {
        if (!key)
                return vmsup_fail(err, VMSUP_ERR_INTERNAL, 0, "seal '%s': no key", name ? name : "");
        if (!uuid_is_valid(uuid))
                return vmsup_fail(err, VMSUP_ERR_INTERNAL, 0, "seal '%s': '%s' is not a lower-case uuid", name ? name : "",
                                  uuid ? uuid : "");
        if (!seal_name_is_valid(name))
                return vmsup_fail(err, VMSUP_ERR_INTERNAL, 0, "seal: '%s' is not a valid sealed file name",
                                  name ? name : "");
        return 0;
}

static int aead_init(gnutls_aead_cipher_hd_t *h, const uint8_t *key) {
        gnutls_datum_t k = { .data = (unsigned char *) key, .size = KDF_KEY_LEN };

        return gnutls_aead_cipher_init(h, GNUTLS_CIPHER_AES_256_GCM, &k);
}

int seal_buffer(const uint8_t *key, const char *uuid, const char *name, uint64_t generation, const void *plaintext,
                size_t len, uint8_t **ret_sealed, size_t *ret_len, vmsup_error **err) {
        _cleanup_free_ uint8_t *out = NULL;
        gnutls_aead_cipher_hd_t h = NULL;
        size_t nlen, hdr, ctext_len;
        int r;

        r = check_args(key, uuid, name, err);
        if (r < 0)
                return r;
        nlen = strlen(name);
        hdr = HDR_LEN(nlen);
        if (len > SEAL_FILE_MAX - hdr - SEAL_TAG_LEN)
                return vmsup_fail(err, VMSUP_ERR_INTERNAL, EFBIG, "seal '%s' (%zu bytes)", name, len);
        out = malloc(hdr + len + SEAL_TAG_LEN);
        if (!out)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "seal '%s'", name);

        memcpy(out, SEAL_MAGIC, 8);
        put_be16(out + OFF_VERSION, SEAL_FORMAT_VERSION);
        memcpy(out + OFF_UUID, uuid, UUID_LEN);
        put_be16(out + OFF_NAMELEN, (uint16_t) nlen);
        memcpy(out + OFF_NAME, name, nlen);
        put_be64(out + OFF_NAME + nlen, generation);
        /* A fresh random nonce for every write: GCM under one key breaks if a nonce is
         * ever reused, and 96 random bits stay safe far beyond the writes a TPM makes. */
        r = gnutls_rnd(GNUTLS_RND_NONCE, out + OFF_NAME + nlen + 8, SEAL_NONCE_LEN);
        if (r < 0)
                return vmsup_fail(err, VMSUP_ERR_INTERNAL, 0, "seal '%s': random nonce: %s", name, gnutls_strerror(r));

        r = aead_init(&h, key);
        if (r < 0)
                return vmsup_fail(err, VMSUP_ERR_INTERNAL, 0, "seal '%s': AES-256-GCM: %s", name, gnutls_strerror(r));
        ctext_len = len + SEAL_TAG_LEN;
        r = gnutls_aead_cipher_encrypt(h, out + OFF_NAME + nlen + 8, SEAL_NONCE_LEN, out, hdr, SEAL_TAG_LEN,
                                       plaintext, len, out + hdr, &ctext_len);
        gnutls_aead_cipher_deinit(h);
        if (r < 0)
                return vmsup_fail(err, VMSUP_ERR_INTERNAL, 0, "seal '%s': encrypt: %s", name, gnutls_strerror(r));

        *ret_len = hdr + ctext_len;
        *ret_sealed = TAKE_PTR(out);
        return 0;
}

/* Header text from an unauthenticated file goes into messages only when it looks like
 * what it claims to be: no control characters or escapes from an attacker's file. */
static const char *printable_uuid(const uint8_t *p, char buf[UUID_LEN + 1]) {
        memcpy(buf, p, UUID_LEN);
        buf[UUID_LEN] = 0;
        return uuid_is_valid(buf) ? buf : "(not a uuid)";
}
static const char *printable_name(const uint8_t *p, size_t n, char buf[SEAL_NAME_MAX + 1]) {
        if (n > SEAL_NAME_MAX)
                return "(too long a name)";
        memcpy(buf, p, n);
        buf[n] = 0;
        return seal_name_is_valid(buf) ? buf : "(not a valid name)";
}

static int open_buffer(const uint8_t *key, const char *uuid, const char *name, const char *what, const uint8_t *data,
                       size_t len, uint8_t **ret_plaintext, size_t *ret_len, uint64_t *ret_generation,
                       vmsup_error **err) {
        _cleanup_secmem_ uint8_t *plain = NULL;
        gnutls_aead_cipher_hd_t h = NULL;
        char got_uuid[UUID_LEN + 1], got_name[SEAL_NAME_MAX + 1];
        size_t nlen, hdr, plen;
        bool uuid_differs, name_differs;
        int r;

        r = check_args(key, uuid, name, err);
        if (r < 0)
                return r;

        if (len > 0 && memcmp(data, SEAL_MAGIC, len < 8 ? len : 8) != 0)
                return vmsup_fail(err, VMSUP_ERR_DATA, 0, "open sealed state '%s': not a vmsup sealed file (bad magic)",
                                  what);
        if (len < OFF_NAME)
                return vmsup_fail(err, VMSUP_ERR_DATA, 0, "open sealed state '%s': truncated (%zu bytes)", what, len);
        if (get_be16(data + OFF_VERSION) != SEAL_FORMAT_VERSION)
                return vmsup_fail(err, VMSUP_ERR_DATA, 0, "open sealed state '%s': format version %u is not supported",
                                  what, get_be16(data + OFF_VERSION));
        nlen = get_be16(data + OFF_NAMELEN);
        hdr = HDR_LEN(nlen);
        if (len < hdr + SEAL_TAG_LEN)
                return vmsup_fail(err, VMSUP_ERR_DATA, 0, "open sealed state '%s': truncated (%zu bytes)", what, len);

        uuid_differs = memcmp(data + OFF_UUID, uuid, UUID_LEN) != 0;
        name_differs = nlen != strlen(name) || memcmp(data + OFF_NAME, name, nlen) != 0;

        plen = len - hdr - SEAL_TAG_LEN;
        plain = secmem_alloc(plen);
        if (!plain)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "open sealed state '%s'", what);
        r = aead_init(&h, key);
        if (r < 0)
                return vmsup_fail(err, VMSUP_ERR_INTERNAL, 0, "open sealed state '%s': AES-256-GCM: %s", what,
                                  gnutls_strerror(r));
        r = gnutls_aead_cipher_decrypt(h, data + OFF_NAME + nlen + 8, SEAL_NONCE_LEN, data, hdr, SEAL_TAG_LEN,
                                       data + hdr, len - hdr, plain, &plen);
        gnutls_aead_cipher_deinit(h);

        if (r == GNUTLS_E_DECRYPTION_FAILED) {
                /* Nothing in the header can be believed now. Still, a uuid or name that
                 * differs from the expected one is the likeliest story (a file copied from
                 * another guest, whose key differs, or renamed), so say so, as a claim. */
                if (uuid_differs)
                        return vmsup_fail(err, VMSUP_ERR_DATA, 0,
                                          "open sealed state '%s': sealed for guest %s, not %s (so says its header, "
                                          "which failed authentication)",
                                          what, printable_uuid(data + OFF_UUID, got_uuid), uuid);
                if (name_differs)
                        return vmsup_fail(err, VMSUP_ERR_DATA, 0,
                                          "open sealed state '%s': sealed as '%s', not '%s' (so says its header, "
                                          "which failed authentication)",
                                          what, printable_name(data + OFF_NAME, nlen, got_name), name);
                return vmsup_fail(err, VMSUP_ERR_DATA, 0,
                                  "open sealed state '%s': authentication failed (wrong key or altered file)", what);
        }
        if (r < 0)
                return vmsup_fail(err, VMSUP_ERR_DATA, 0, "open sealed state '%s': decrypt: %s", what,
                                  gnutls_strerror(r));
        /* Authenticated: the header is what our key sealed. A differing uuid or name is
         * then a fact (two guests sharing a passphrase, or a file renamed). */
        if (uuid_differs)
                return vmsup_fail(err, VMSUP_ERR_DATA, 0, "open sealed state '%s': sealed for guest %s, not %s", what,
                                  printable_uuid(data + OFF_UUID, got_uuid), uuid);
        if (name_differs)
                return vmsup_fail(err, VMSUP_ERR_DATA, 0, "open sealed state '%s': sealed as '%s', not '%s'", what,
                                  printable_name(data + OFF_NAME, nlen, got_name), name);

        *ret_generation = get_be64(data + OFF_NAME + nlen);
        *ret_len = plen;
        *ret_plaintext = TAKE_PTR(plain);
        return 0;
}

int seal_open_buffer(const uint8_t *key, const char *uuid, const char *name, const void *data, size_t len,
                     uint8_t **ret_plaintext, size_t *ret_len, uint64_t *ret_generation, vmsup_error **err) {
        return open_buffer(key, uuid, name, name ? name : "", data, len, ret_plaintext, ret_len, ret_generation, err);
}

int seal_file_write(const struct seal_dir *d, const char *name, uint64_t generation, const void *plaintext,
                    size_t len, vmsup_error **err) {
        _cleanup_free_ uint8_t *sealed = NULL;
        char fname[SEAL_NAME_MAX + sizeof(SEAL_SUFFIX)];
        size_t slen;
        int r;

        r = seal_buffer(d->key, d->uuid, name, generation, plaintext, len, &sealed, &slen, err);
        if (r < 0)
                return r;
        snprintf(fname, sizeof(fname), "%s" SEAL_SUFFIX, name);
        r = file_write_atomic_at(d->dirfd, d->path, fname, sealed, slen, 0600, err);
        if (r < 0)
                return vmsup_error_prefix(err, "seal state '%s/%s'", d->path, fname);
        return 0;
}

int seal_file_read(const struct seal_dir *d, const char *name, uint64_t min_generation, uint8_t **ret_plaintext,
                   size_t *ret_len, uint64_t *ret_generation, vmsup_error **err) {
        _cleanup_secmem_ uint8_t *plain = NULL;
        _cleanup_free_ uint8_t *data = NULL;
        _cleanup_free_ char *path = NULL;
        char fname[SEAL_NAME_MAX + sizeof(SEAL_SUFFIX)];
        size_t len, plen;
        uint64_t gen;
        int r;

        r = check_args(d->key, d->uuid, name, err);
        if (r < 0)
                return r;
        snprintf(fname, sizeof(fname), "%s" SEAL_SUFFIX, name);
        if (asprintf(&path, "%s/%s", d->path, fname) < 0)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "open sealed state '%s'", fname);
        r = file_read_at(d->dirfd, d->path, fname, SEAL_FILE_MAX, false, (void **) &data, &len, err);
        if (r < 0)
                return r;
        r = open_buffer(d->key, d->uuid, name, path, data, len, &plain, &plen, &gen, err);
        if (r < 0)
                return r;
        if (gen < min_generation)
                return vmsup_fail(err, VMSUP_ERR_DATA, 0,
                                  "open sealed state '%s': older generation %" PRIu64
                                  " put back (expected at least %" PRIu64 ")",
                                  path, gen, min_generation);
        *ret_plaintext = TAKE_PTR(plain);
        *ret_len = plen;
        *ret_generation = gen;
        return 0;
}

/* The manifest's plaintext: "vmsup-manifest 1\n", then "<generation> <name>\n" per file.
 * It is authenticated before it is parsed, so the parser only has to be correct, not
 * hardened; it is strict all the same. */
#define MANIFEST_FIRST_LINE "vmsup-manifest 1\n"

void seal_manifest_clear(struct seal_manifest *m) {
        if (!m)
                return;
        for (size_t i = 0; i < m->n; i++)
                free(m->entries[i].name);
        free(m->entries);
        *m = (struct seal_manifest) { 0 };
}

static struct seal_manifest_entry *manifest_find(const struct seal_manifest *m, const char *name) {
        for (size_t i = 0; i < m->n; i++)
                if (streq(m->entries[i].name, name))
                        return &m->entries[i];
        return NULL;
}

uint64_t seal_manifest_get(const struct seal_manifest *m, const char *name) {
        struct seal_manifest_entry *e = manifest_find(m, name);

        return e ? e->generation : 0;
}

int seal_manifest_raise(struct seal_manifest *m, const char *name, uint64_t generation, vmsup_error **err) {
        struct seal_manifest_entry *e = manifest_find(m, name), *grown;
        char *copy;

        if (!seal_name_is_valid(name) || streq(name, SEAL_MANIFEST_NAME))
                return vmsup_fail(err, VMSUP_ERR_INTERNAL, 0, "manifest: '%s' is not a sealed state file name",
                                  name ? name : "");
        if (e) {
                if (generation > e->generation)
                        e->generation = generation;
                return 0;
        }
        copy = strdup(name);
        grown = copy ? realloc(m->entries, (m->n + 1) * sizeof(*grown)) : NULL;
        if (!grown) {
                free(copy);
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "manifest: record '%s'", name);
        }
        m->entries = grown;
        m->entries[m->n++] = (struct seal_manifest_entry) { .name = copy, .generation = generation };
        return 0;
}

static int manifest_parse(const char *what, const uint8_t *p, size_t len, struct seal_manifest *m,
                          vmsup_error **err) {
        size_t pos = strlen(MANIFEST_FIRST_LINE), line = 1;

        if (len < pos || memcmp(p, MANIFEST_FIRST_LINE, pos) != 0)
                return vmsup_fail(err, VMSUP_ERR_DATA, 0, "manifest '%s': not a vmsup manifest of version 1", what);
        while (pos < len) {
                const uint8_t *nl = memchr(p + pos, '\n', len - pos);
                char buf[24 + SEAL_NAME_MAX + 2], *sp, *end;
                size_t ll;
                uint64_t gen;
                int r;

                line++;
                ll = nl ? (size_t) (nl - (p + pos)) : 0;
                if (!nl || ll >= sizeof(buf))
                        return vmsup_fail(err, VMSUP_ERR_DATA, 0, "manifest '%s': line %zu is malformed", what, line);
                memcpy(buf, p + pos, ll);
                buf[ll] = 0;
                pos += ll + 1;
                sp = strchr(buf, ' ');
                if (!sp || sp == buf || buf[0] < '0' || buf[0] > '9')
                        return vmsup_fail(err, VMSUP_ERR_DATA, 0, "manifest '%s': line %zu is malformed", what, line);
                *sp = 0;
                errno = 0;
                gen = strtoull(buf, &end, 10);
                if (errno || *end || !seal_name_is_valid(sp + 1) || manifest_find(m, sp + 1))
                        return vmsup_fail(err, VMSUP_ERR_DATA, 0, "manifest '%s': line %zu is malformed", what, line);
                r = seal_manifest_raise(m, sp + 1, gen, err);
                if (r < 0)
                        return r;
        }
        return 0;
}

/* Whether the dir holds a sealed file other than the manifest. */
static int has_sealed_files(const struct seal_dir *d, vmsup_error **err) {
        DIR *dir;
        struct dirent *de;
        int fd, found = 0;

        fd = openat(d->dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0)
                return vmsup_fail(err, VMSUP_ERR_IO, errno, "list '%s'", d->path);
        dir = fdopendir(fd);
        if (!dir) {
                close(fd);
                return vmsup_fail(err, VMSUP_ERR_IO, errno, "list '%s'", d->path);
        }
        while (!found && (de = readdir(dir))) {
                size_t n = strlen(de->d_name), s = strlen(SEAL_SUFFIX);

                found = de->d_name[0] != '.' && n > s && streq(de->d_name + n - s, SEAL_SUFFIX) &&
                        !streq(de->d_name, SEAL_MANIFEST_NAME SEAL_SUFFIX);
        }
        closedir(dir);
        return found;
}

int seal_manifest_load(const struct seal_dir *d, struct seal_manifest *ret, vmsup_error **err) {
        _cleanup_secmem_ uint8_t *plain = NULL;
        _cleanup_free_ char *what = NULL;
        struct seal_manifest m = { 0 };
        size_t len;
        int r;

        if (asprintf(&what, "%s/%s" SEAL_SUFFIX, d->path, SEAL_MANIFEST_NAME) < 0)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "load the manifest of '%s'", d->path);
        r = seal_file_read(d, SEAL_MANIFEST_NAME, 0, &plain, &len, &m.generation, err);
        if (r == -ENOENT) {
                if (err) /* not an error yet: only if sealed files remain */
                        *err = vmsup_error_free(*err);
                r = has_sealed_files(d, err);
                if (r < 0)
                        return r;
                if (r > 0)
                        /* Deleting the manifest must not be a way to lift the rollback check. */
                        return vmsup_fail(err, VMSUP_ERR_DATA, 0,
                                          "open sealed state '%s': missing, but '%s' holds sealed state files",
                                          what, d->path);
                *ret = m;
                return 0;
        }
        if (r < 0)
                return r;
        r = manifest_parse(what, plain, len, &m, err);
        if (r < 0) {
                seal_manifest_clear(&m);
                return r;
        }
        *ret = m;
        return 0;
}

int seal_manifest_store(const struct seal_dir *d, struct seal_manifest *m, vmsup_error **err) {
        _cleanup_free_ char *text = NULL;
        size_t size = 0;
        FILE *f;
        int r;

        f = open_memstream(&text, &size);
        if (!f)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, errno, "store the manifest of '%s'", d->path);
        fputs(MANIFEST_FIRST_LINE, f);
        for (size_t i = 0; i < m->n; i++)
                fprintf(f, "%" PRIu64 " %s\n", m->entries[i].generation, m->entries[i].name);
        if (fclose(f) != 0)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "store the manifest of '%s'", d->path);
        r = seal_file_write(d, SEAL_MANIFEST_NAME, m->generation + 1, text, size, err);
        if (r < 0)
                return r;
        m->generation++;
        return 0;
}

int seal_state_write(const struct seal_dir *d, struct seal_manifest *m, const char *name, const void *plaintext,
                     size_t len, vmsup_error **err) {
        uint64_t gen = seal_manifest_get(m, name) + 1;
        int r;

        if (streq(name, SEAL_MANIFEST_NAME))
                return vmsup_fail(err, VMSUP_ERR_INTERNAL, 0, "seal state: '%s' is the manifest's name", name);
        /* A manifest must exist before the first sealed file does: a crash right after
         * that file would otherwise leave sealed state without a manifest, which
         * seal_manifest_load() refuses (it is what a deleted manifest looks like). No
         * file recorded yet is that case too when the generations go on from elsewhere
         * (a migration's, an anchor's: tpm_sync_continue_from()). */
        if ((m->generation == 0 || m->n == 0) && (r = seal_manifest_store(d, m, err)) < 0)
                return r;
        r = seal_file_write(d, name, gen, plaintext, len, err);
        if (r < 0)
                return r;
        r = seal_manifest_raise(m, name, gen, err);
        if (r < 0)
                return r;
        return seal_manifest_store(d, m, err);
}

int seal_state_read(const struct seal_dir *d, struct seal_manifest *m, const char *name, uint8_t **ret_plaintext,
                    size_t *ret_len, vmsup_error **err) {
        _cleanup_secmem_ uint8_t *plain = NULL;
        uint64_t gen;
        size_t len;
        int r;

        if (streq(name, SEAL_MANIFEST_NAME))
                return vmsup_fail(err, VMSUP_ERR_INTERNAL, 0, "open sealed state: '%s' is the manifest's name", name);
        r = seal_file_read(d, name, seal_manifest_get(m, name), &plain, &len, &gen, err);
        if (r < 0)
                return r;
        r = seal_manifest_raise(m, name, gen, err);
        if (r < 0)
                return r;
        *ret_plaintext = TAKE_PTR(plain);
        *ret_len = len;
        return 0;
}
