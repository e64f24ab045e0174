#include "config.h"

#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cli/exitstatus.h"
#include "common/fileio.h"
#include "common/secmem.h"
#include "crypto/kdf.h"
#include "crypto/seal.h"
#include "tests/helpers.h"

#define UUID_A "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
#define UUID_B "11111111-2222-3333-4444-555555555555"

/* Nova's format: 384 random bytes, base64, 512 characters. */
static char passphrase[513];

static void make_passphrase(void) {
        static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        uint8_t rnd[512];

        cr_assert_eq(getrandom(rnd, sizeof(rnd), 0), (ssize_t) sizeof(rnd));
        for (size_t i = 0; i < 512; i++)
                passphrase[i] = b64[rnd[i] % 64];
        passphrase[512] = 0;
}

static uint8_t *derive(const char *uuid, enum kdf_use use) {
        vmsup_error *err = NULL;
        uint8_t *key = NULL;

        cr_assert_eq(kdf_derive_key(passphrase, strlen(passphrase), uuid, use, &key, &err), 0, "%s",
                     err ? err->msg : "");
        cr_assert_eq(secmem_size(key), KDF_KEY_LEN);
        return key;
}

/* A macro: err must be read after the call has filled it. */
#define expect_fail(call, err, exit_code, needle) expect_fail_((call), &(err), (exit_code), (needle))
static void expect_fail_(int r, vmsup_error **errp, int exit_code, const char *needle) {
        vmsup_error *err = *errp;

        cr_assert_lt(r, 0, "expected a failure mentioning '%s'", needle);
        cr_assert_not_null(err);
        cr_assert_eq(cli_exit_status(err->kind), exit_code, "exit %d for: %s", cli_exit_status(err->kind), err->msg);
        cr_assert_not_null(strstr(err->msg, needle), "'%s' not in: %s", needle, err->msg);
}

/* ---- secmem ---- */

Test(secmem, zeroed_sized_and_wiped) {
        uint8_t *p = secmem_alloc(100), *z = secmem_alloc(0);

        cr_assert_not_null(p);
        cr_assert_not_null(z);
        cr_assert_eq(secmem_size(p), 100);
        cr_assert_eq(secmem_size(z), 0);
        for (size_t i = 0; i < 100; i++)
                cr_assert_eq(p[i], 0);
        memset(p, 0xa5, 100);
        secmem_wipe(p);
        for (size_t i = 0; i < 100; i++)
                cr_assert_eq(p[i], 0, "byte %zu survived the wipe", i);
        cr_assert_null(secmem_free(p));
        cr_assert_null(secmem_free(z));
        cr_assert_null(secmem_free(NULL));
}

Test(secmem, locked_when_the_limit_allows) {
        uint8_t *p = secmem_alloc(32);

        /* Root or an ordinary 8 MiB RLIMIT_MEMLOCK: a page must fit. A tiny limit still
         * gives a buffer, just an unlocked one (not testable here without privileges
         * to lower and restore it in-process, so only the common case is asserted). */
        cr_assert(secmem_locked(p), "32 bytes could not be mlock()ed");
        secmem_free(p);
}

Test(secmem, erase_and_cleanup_macros) {
        uint8_t buf[64];

        memset(buf, 0x5a, sizeof(buf));
        erase(buf, sizeof(buf));
        for (size_t i = 0; i < sizeof(buf); i++)
                cr_assert_eq(buf[i], 0);
        {
                _cleanup_erase_ char *heap = strdup("a secret on the heap");
                _cleanup_secmem_ char *locked = secmem_alloc(16);

                cr_assert_not_null(heap);
                cr_assert_not_null(locked);
        }
        cr_assert_null(erase_and_free(NULL));
}

/* ---- kdf ---- */

Test(kdf, passphrase_checks) {
        vmsup_error *err = NULL;
        char big[KDF_PASSPHRASE_MAX + 1];

        make_passphrase();
        cr_assert_eq(kdf_check_passphrase(passphrase, 512, &err), 0);
        expect_fail(kdf_check_passphrase("", 0, &err), err, 65, "vTPM passphrase: 0 bytes long, expected 1 to 4096");
        err = vmsup_error_free(err);
        memset(big, 'A', sizeof(big));
        expect_fail(kdf_check_passphrase(big, sizeof(big), &err), err, 65, "4097 bytes long");
        err = vmsup_error_free(err);
        cr_assert_eq(kdf_check_passphrase(big, KDF_PASSPHRASE_MAX, &err), 0);
        expect_fail(kdf_check_passphrase("abc\ndef", 7, &err), err, 65,
                    "vTPM passphrase: the byte at offset 3 is not printable ASCII");
        err = vmsup_error_free(err);
        expect_fail(kdf_check_passphrase("Zq\xc3\xa9", 4, &err), err, 65, "offset 2");
        cr_assert_null(strstr(err->msg, "Zq"), "the message shows part of the passphrase: %s", err->msg);
        vmsup_error_free(err);
}

Test(kdf, one_key_per_use_and_guest_deterministic) {
        uint8_t *seal_a, *seal_a2, *mig_a, *seal_b;

        make_passphrase();
        seal_a = derive(UUID_A, KDF_USE_STATE_SEAL);
        seal_a2 = derive(UUID_A, KDF_USE_STATE_SEAL);
        mig_a = derive(UUID_A, KDF_USE_SWTPM_MIGRATION);
        seal_b = derive(UUID_B, KDF_USE_STATE_SEAL);
        cr_assert_eq(memcmp(seal_a, seal_a2, KDF_KEY_LEN), 0);
        cr_assert_neq(memcmp(seal_a, mig_a, KDF_KEY_LEN), 0);
        cr_assert_neq(memcmp(seal_a, seal_b, KDF_KEY_LEN), 0);
        cr_assert_str_eq(kdf_use_label(KDF_USE_STATE_SEAL), "vmsup state-seal v1");
        cr_assert_str_eq(kdf_use_label(KDF_USE_SWTPM_MIGRATION), "vmsup swtpm-migration-key v1");
        secmem_free(seal_a);
        secmem_free(seal_a2);
        secmem_free(mig_a);
        secmem_free(seal_b);
}

Test(kdf, known_answer) {
        /* RFC 5869 HKDF-SHA256 with an empty salt and info "vmsup state-seal v1" 0x00 uuid,
         * computed independently (python3 hmac/hashlib) for the passphrase "passphrase". */
        static const uint8_t expect[KDF_KEY_LEN] = {
                0x3e, 0x39, 0xa2, 0xcb, 0x78, 0xcf, 0x52, 0x8d, 0x52, 0x9a, 0xba, 0x06, 0x3b, 0xac, 0x8a, 0x28, 0x7c, 0x14, 0x0c, 0xda, 0x1c, 0x41, 0x42, 0x60, 0xf8, 0xaf, 0x80, 0xcf, 0x4a, 0x11, 0x3c, 0xdf
        };
        vmsup_error *err = NULL;
        uint8_t *key = NULL;

        cr_assert_eq(kdf_derive_key("passphrase", 10, UUID_A, KDF_USE_STATE_SEAL, &key, &err), 0);
        cr_assert_eq(memcmp(key, expect, KDF_KEY_LEN), 0);
        secmem_free(key);
}

/* ---- buffers ---- */

static uint8_t *seal_small(const uint8_t *key, const char *uuid, const char *name, uint64_t gen, const char *text,
                           size_t *ret_len) {
        vmsup_error *err = NULL;
        uint8_t *out = NULL;

        cr_assert_eq(seal_buffer(key, uuid, name, gen, text, strlen(text), &out, ret_len, &err), 0, "%s",
                     err ? err->msg : "");
        return out;
}

Test(seal, round_trip) {
        static const char text[] = "the TPM's permanent state";
        uint8_t *key, *out, *plain = NULL;
        vmsup_error *err = NULL;
        size_t len, plen;
        uint64_t gen;

        make_passphrase();
        key = derive(UUID_A, KDF_USE_STATE_SEAL);
        out = seal_small(key, UUID_A, "tpm2-00.permall", 42, text, &len);
        cr_assert_eq(len, strlen(text) + seal_overhead("tpm2-00.permall"));
        cr_assert_eq(memcmp(out, "VMSUPSL1", 8), 0);
        cr_assert_null(memmem(out, len, "permanent", 9), "plaintext visible in the sealed file");
        cr_assert_eq(seal_open_buffer(key, UUID_A, "tpm2-00.permall", out, len, &plain, &plen, &gen, &err), 0, "%s",
                     err ? err->msg : "");
        cr_assert_eq(plen, strlen(text));
        cr_assert_eq(memcmp(plain, text, plen), 0);
        cr_assert_eq(gen, 42);
        secmem_free(plain);
        free(out);

        /* Empty plaintext, and the same plaintext twice gives different files (nonce). */
        {
                uint8_t *a, *b;
                size_t la, lb;

                a = seal_small(key, UUID_A, "x", 1, "", &la);
                cr_assert_eq(seal_open_buffer(key, UUID_A, "x", a, la, &plain, &plen, &gen, &err), 0);
                cr_assert_eq(plen, 0);
                secmem_free(plain);
                b = seal_small(key, UUID_A, "x", 1, "", &lb);
                cr_assert_neq(memcmp(a, b, la), 0);
                free(a);
                free(b);
        }
        secmem_free(key);
}

Test(seal, wrong_key) {
        uint8_t *key, *out, *plain = NULL;
        vmsup_error *err = NULL;
        size_t len, plen;
        uint64_t gen;

        make_passphrase();
        key = derive(UUID_A, KDF_USE_STATE_SEAL);
        out = seal_small(key, UUID_A, "tpm2-00.permall", 1, "state", &len);
        secmem_free(key);
        make_passphrase(); /* another passphrase */
        key = derive(UUID_A, KDF_USE_STATE_SEAL);
        expect_fail(seal_open_buffer(key, UUID_A, "tpm2-00.permall", out, len, &plain, &plen, &gen, &err), err, 65,
                    "open sealed state 'tpm2-00.permall': authentication failed (wrong key or altered file)");
        cr_assert_null(plain);
        vmsup_error_free(err);
        secmem_free(key);
        free(out);
}

Test(seal, every_flipped_bit_position_fails) {
        uint8_t *key, *out;
        size_t len;

        make_passphrase();
        key = derive(UUID_A, KDF_USE_STATE_SEAL);
        out = seal_small(key, UUID_A, "tpm2-00.permall", 7, "a small TPM state of a few bytes", &len);
        for (size_t i = 0; i < len; i++)
                for (int bit = 0; bit < 8; bit++) {
                        vmsup_error *err = NULL;
                        uint8_t *plain = NULL;
                        size_t plen;
                        uint64_t gen;
                        int r;

                        out[i] ^= (uint8_t) (1 << bit);
                        r = seal_open_buffer(key, UUID_A, "tpm2-00.permall", out, len, &plain, &plen, &gen, &err);
                        cr_assert_lt(r, 0, "flipping bit %d of byte %zu went unnoticed", bit, i);
                        cr_assert_eq(err->kind, VMSUP_ERR_DATA, "byte %zu: %s", i, err->msg);
                        cr_assert_null(plain);
                        vmsup_error_free(err);
                        out[i] ^= (uint8_t) (1 << bit);
                }
        secmem_free(key);
        free(out);
}

Test(seal, truncated_at_every_length) {
        uint8_t *key, *out;
        size_t len;

        make_passphrase();
        key = derive(UUID_A, KDF_USE_STATE_SEAL);
        out = seal_small(key, UUID_A, "tpm2-00.permall", 7, "some state", &len);
        for (size_t cut = 0; cut < len; cut++) {
                vmsup_error *err = NULL;
                uint8_t *plain = NULL;
                size_t plen;
                uint64_t gen;
                char want[64];
                int r;

                r = seal_open_buffer(key, UUID_A, "tpm2-00.permall", out, cut, &plain, &plen, &gen, &err);
                cr_assert_lt(r, 0, "a file cut to %zu of %zu bytes opened", cut, len);
                cr_assert_eq(err->kind, VMSUP_ERR_DATA);
                if (cut < seal_overhead("tpm2-00.permall")) {
                        snprintf(want, sizeof(want), "truncated (%zu bytes)", cut);
                        cr_assert_not_null(strstr(err->msg, want), "%s", err->msg);
                }
                vmsup_error_free(err);
        }
        secmem_free(key);
        free(out);
}

Test(seal, bad_magic_and_unknown_version) {
        uint8_t *key, *out, *plain = NULL;
        vmsup_error *err = NULL;
        size_t len, plen;
        uint64_t gen;

        make_passphrase();
        key = derive(UUID_A, KDF_USE_STATE_SEAL);
        out = seal_small(key, UUID_A, "n", 1, "x", &len);
        out[9] = 2;
        expect_fail(seal_open_buffer(key, UUID_A, "n", out, len, &plain, &plen, &gen, &err), err, 65,
                    "open sealed state 'n': format version 2 is not supported");
        err = vmsup_error_free(err);
        expect_fail(seal_open_buffer(key, UUID_A, "n", "\x02\x01\x00\x0a", 4, &plain, &plen, &gen, &err), err, 65,
                    "not a vmsup sealed file (bad magic)");
        vmsup_error_free(err);
        secmem_free(key);
        free(out);
}

Test(seal, same_key_other_guest_or_name_is_a_fact) {
        uint8_t *key, *out, *plain = NULL;
        vmsup_error *err = NULL;
        size_t len, plen;
        uint64_t gen;

        make_passphrase();
        key = derive(UUID_A, KDF_USE_STATE_SEAL);
        out = seal_small(key, UUID_B, "tpm2-00.permall", 1, "x", &len);
        expect_fail(seal_open_buffer(key, UUID_A, "tpm2-00.permall", out, len, &plain, &plen, &gen, &err), err, 65,
                    "sealed for guest " UUID_B ", not " UUID_A);
        cr_assert_null(strstr(err->msg, "authentication"), "%s", err->msg);
        err = vmsup_error_free(err);
        free(out);
        out = seal_small(key, UUID_A, "tpm2-00.volatilestate", 1, "x", &len);
        expect_fail(seal_open_buffer(key, UUID_A, "tpm2-00.permall", out, len, &plain, &plen, &gen, &err), err, 65,
                    "sealed as 'tpm2-00.volatilestate', not 'tpm2-00.permall'");
        vmsup_error_free(err);
        free(out);
        secmem_free(key);
}

/* ---- files ---- */

struct fixture {
        char *dir;
        uint8_t *key;
        struct seal_dir d;
};

static void fixture_open(struct fixture *f, const char *uuid) {
        make_passphrase();
        f->dir = test_mkdtemp();
        f->key = derive(uuid, KDF_USE_STATE_SEAL);
        f->d.dirfd = open(f->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        cr_assert_geq(f->d.dirfd, 0);
        f->d.path = f->dir;
        f->d.key = f->key;
        f->d.uuid = uuid;
}

static void fixture_close(struct fixture *f) {
        close(f->d.dirfd);
        secmem_free(f->key);
        test_rmtree(f->dir);
        free(f->dir);
}

static char *path_in(const char *dir, const char *name) {
        char *p = NULL;

        cr_assert(asprintf(&p, "%s/%s", dir, name) > 0);
        return p;
}

static void copy_file(const char *from, const char *to) {
        char cmd[4096];

        snprintf(cmd, sizeof(cmd), "cp '%s' '%s'", from, to);
        cr_assert_eq(system(cmd), 0, "%s", cmd);
}

Test(seal_file, write_read_mode_and_errors_name_the_path) {
        struct fixture f;
        vmsup_error *err = NULL;
        uint8_t *plain = NULL;
        size_t plen;
        uint64_t gen;
        struct stat st;
        char *p, want[4200];

        fixture_open(&f, UUID_A);
        cr_assert_eq(seal_file_write(&f.d, "tpm2-00.permall", 3, "state", 5, &err), 0, "%s", err ? err->msg : "");
        p = path_in(f.dir, "tpm2-00.permall.sealed");
        cr_assert_eq(stat(p, &st), 0);
        cr_assert_eq(st.st_mode & 07777, 0600);
        cr_assert_eq(seal_file_read(&f.d, "tpm2-00.permall", 3, &plain, &plen, &gen, &err), 0, "%s",
                     err ? err->msg : "");
        cr_assert_eq(plen, 5);
        cr_assert_eq(gen, 3);
        secmem_free(plain);

        /* a missing file: ENOENT, exit 66 */
        cr_assert_eq(seal_file_read(&f.d, "tpm2-00.volatilestate", 0, &plain, &plen, &gen, &err), -ENOENT);
        cr_assert_eq(err->kind, VMSUP_ERR_NOT_FOUND);
        err = vmsup_error_free(err);

        /* altered on disk */
        {
                int fd = open(p, O_RDWR | O_CLOEXEC);
                uint8_t b;

                cr_assert(pread(fd, &b, 1, 80) == 1);
                b ^= 0x80;
                cr_assert(pwrite(fd, &b, 1, 80) == 1);
                close(fd);
        }
        snprintf(want, sizeof(want), "open sealed state '%s': authentication failed (wrong key or altered file)", p);
        expect_fail(seal_file_read(&f.d, "tpm2-00.permall", 0, &plain, &plen, &gen, &err), err, 65, want);
        vmsup_error_free(err);
        free(p);
        fixture_close(&f);
}

Test(seal_file, copied_from_another_guest) {
        struct fixture a, b;
        vmsup_error *err = NULL;
        uint8_t *plain = NULL;
        size_t plen;
        uint64_t gen;
        char *from, *to;

        fixture_open(&b, UUID_B);
        cr_assert_eq(seal_file_write(&b.d, "tpm2-00.permall", 1, "b's state", 9, &err), 0);
        fixture_open(&a, UUID_A);
        from = path_in(b.dir, "tpm2-00.permall.sealed");
        to = path_in(a.dir, "tpm2-00.permall.sealed");
        copy_file(from, to);
        expect_fail(seal_file_read(&a.d, "tpm2-00.permall", 0, &plain, &plen, &gen, &err), err, 65,
                    "': sealed for guest " UUID_B ", not " UUID_A " (so says its header, which failed authentication)");
        vmsup_error_free(err);
        free(from);
        free(to);
        fixture_close(&a);
        fixture_close(&b);
}

Test(seal_file, renamed) {
        struct fixture f;
        vmsup_error *err = NULL;
        uint8_t *plain = NULL;
        size_t plen;
        uint64_t gen;
        char *from, *to;

        fixture_open(&f, UUID_A);
        cr_assert_eq(seal_file_write(&f.d, "tpm2-00.volatilestate", 1, "volatile", 8, &err), 0);
        from = path_in(f.dir, "tpm2-00.volatilestate.sealed");
        to = path_in(f.dir, "tpm2-00.permall.sealed");
        cr_assert_eq(rename(from, to), 0);
        expect_fail(seal_file_read(&f.d, "tpm2-00.permall", 0, &plain, &plen, &gen, &err), err, 65,
                    "tpm2-00.permall.sealed': sealed as 'tpm2-00.volatilestate', not 'tpm2-00.permall'");
        vmsup_error_free(err);
        free(from);
        free(to);
        fixture_close(&f);
}

Test(seal_file, older_generation_put_back) {
        struct fixture f;
        struct seal_manifest m = { 0 }, m2 = { 0 };
        vmsup_error *err = NULL;
        uint8_t *plain = NULL;
        size_t plen;
        char *p, *saved;

        fixture_open(&f, UUID_A);
        cr_assert_eq(seal_manifest_load(&f.d, &m, &err), 0, "%s", err ? err->msg : "");
        cr_assert_eq(m.n, 0);
        cr_assert_eq(seal_state_write(&f.d, &m, "tpm2-00.permall", "one", 3, &err), 0, "%s", err ? err->msg : "");
        p = path_in(f.dir, "tpm2-00.permall.sealed");
        saved = path_in(f.dir, "saved");
        copy_file(p, saved);
        cr_assert_eq(seal_state_write(&f.d, &m, "tpm2-00.permall", "two", 3, &err), 0);
        cr_assert_eq(seal_manifest_get(&m, "tpm2-00.permall"), 2);
        cr_assert_eq(m.generation, 3, "an empty manifest before the first file, then one per write");
        seal_manifest_clear(&m);

        /* the newest opens */
        cr_assert_eq(seal_manifest_load(&f.d, &m2, &err), 0, "%s", err ? err->msg : "");
        cr_assert_eq(seal_manifest_get(&m2, "tpm2-00.permall"), 2);
        cr_assert_eq(seal_state_read(&f.d, &m2, "tpm2-00.permall", &plain, &plen, &err), 0);
        cr_assert_eq(memcmp(plain, "two", 3), 0);
        plain = secmem_free(plain);

        /* the older one put back is refused, with the manifest's record as the minimum */
        cr_assert_eq(rename(saved, p), 0);
        expect_fail(seal_state_read(&f.d, &m2, "tpm2-00.permall", &plain, &plen, &err), err, 65,
                    "tpm2-00.permall.sealed': older generation 1 put back (expected at least 2)");
        vmsup_error_free(err);
        seal_manifest_clear(&m2);
        free(p);
        free(saved);
        fixture_close(&f);
}

Test(seal_file, crash_between_file_and_manifest) {
        struct fixture f;
        struct seal_manifest m = { 0 };
        vmsup_error *err = NULL;
        uint8_t *plain = NULL;
        size_t plen;

        fixture_open(&f, UUID_A);
        cr_assert_eq(seal_manifest_load(&f.d, &m, &err), 0);
        cr_assert_eq(seal_state_write(&f.d, &m, "tpm2-00.permall", "one", 3, &err), 0);
        /* the file was written (generation 2), the manifest was not */
        cr_assert_eq(seal_file_write(&f.d, "tpm2-00.permall", 2, "two", 3, &err), 0);
        seal_manifest_clear(&m);
        cr_assert_eq(seal_manifest_load(&f.d, &m, &err), 0);
        cr_assert_eq(seal_manifest_get(&m, "tpm2-00.permall"), 1);
        cr_assert_eq(seal_state_read(&f.d, &m, "tpm2-00.permall", &plain, &plen, &err), 0, "%s", err ? err->msg : "");
        cr_assert_eq(memcmp(plain, "two", 3), 0);
        secmem_free(plain);
        /* the record follows the file, so the next write does not reuse generation 2 */
        cr_assert_eq(seal_manifest_get(&m, "tpm2-00.permall"), 2);
        cr_assert_eq(seal_state_write(&f.d, &m, "tpm2-00.permall", "three", 5, &err), 0);
        cr_assert_eq(seal_manifest_get(&m, "tpm2-00.permall"), 3);
        seal_manifest_clear(&m);
        fixture_close(&f);
}

Test(seal_file, corrupt_or_missing_manifest) {
        struct fixture f;
        struct seal_manifest m = { 0 };
        vmsup_error *err = NULL;
        char *p, want[4200];
        int fd;
        uint8_t b;

        fixture_open(&f, UUID_A);
        cr_assert_eq(seal_manifest_load(&f.d, &m, &err), 0);
        cr_assert_eq(seal_state_write(&f.d, &m, "tpm2-00.permall", "one", 3, &err), 0);
        seal_manifest_clear(&m);
        p = path_in(f.dir, "state.manifest.sealed");

        fd = open(p, O_RDWR | O_CLOEXEC);
        cr_assert(pread(fd, &b, 1, 90) == 1);
        b ^= 1;
        cr_assert(pwrite(fd, &b, 1, 90) == 1);
        close(fd);
        snprintf(want, sizeof(want), "open sealed state '%s': authentication failed", p);
        expect_fail(seal_manifest_load(&f.d, &m, &err), err, 65, want);
        err = vmsup_error_free(err);

        cr_assert_eq(unlink(p), 0);
        snprintf(want, sizeof(want), "open sealed state '%s': missing, but '%s' holds sealed state files", p, f.dir);
        expect_fail(seal_manifest_load(&f.d, &m, &err), err, 65, want);
        vmsup_error_free(err);
        free(p);
        fixture_close(&f);
}

/* Kill a writer at random instants: the file is always one complete version. */
#define TORTURE_ROUNDS 60
#define TORTURE_SIZE (16 * 1024)

static void version_text(uint8_t *buf, uint64_t v) {
        for (size_t i = 0; i < TORTURE_SIZE; i += 8)
                memcpy(buf + i, &v, 8);
}

Test(seal_file, killed_writer_never_leaves_a_torn_file, .timeout = 60) {
        static uint8_t buf[TORTURE_SIZE], want[TORTURE_SIZE];
        struct fixture f;
        vmsup_error *err = NULL;
        uint64_t last_seen = 1;

        fixture_open(&f, UUID_A);
        version_text(buf, 1);
        cr_assert_eq(seal_file_write(&f.d, "tpm2-00.permall", 1, buf, sizeof(buf), &err), 0);
        srand((unsigned) time(NULL));
        for (int round = 0; round < TORTURE_ROUNDS; round++) {
                struct timespec ts = { 0, (long) (rand() % 3000) * 1000 };
                uint8_t *plain = NULL;
                size_t plen;
                uint64_t gen;
                int status, started[2];
                pid_t pid;
                char c;

                cr_assert_eq(pipe2(started, O_CLOEXEC), 0);
                pid = fork();
                cr_assert_geq(pid, 0);
                if (pid == 0) {
                        for (uint64_t v = last_seen + 1;; v++) {
                                version_text(buf, v);
                                if (seal_file_write(&f.d, "tpm2-00.permall", v, buf, sizeof(buf), NULL) < 0)
                                        _exit(1);
                                if (v == last_seen + 1 && write(started[1], "", 1) != 1)
                                        _exit(1);
                        }
                }
                close(started[1]);
                /* Kill at a random instant after the first write has landed, so that the
                 * check below does not depend on how busy the machine is. */
                cr_assert_eq(read(started[0], &c, 1), 1, "the writer failed before its first write");
                close(started[0]);
                nanosleep(&ts, NULL);
                kill(pid, SIGKILL);
                cr_assert_eq(waitpid(pid, &status, 0), pid);
                cr_assert(WIFSIGNALED(status), "the writer failed on its own");

                cr_assert_eq(seal_file_read(&f.d, "tpm2-00.permall", last_seen + 1, &plain, &plen, &gen, &err), 0,
                             "round %d: %s", round, err ? err->msg : "");
                cr_assert_eq(plen, TORTURE_SIZE);
                version_text(want, gen);
                cr_assert_eq(memcmp(plain, want, plen), 0, "round %d: generation %" PRIu64 " holds another version",
                             round, gen);
                last_seen = gen;
                secmem_free(plain);
        }
        fixture_close(&f);
}

/* file_replace_at(): the same atomic replacement as file_write_atomic_at(), without the
 * fsyncs: the new content under the name, the mode asked for (whatever the umask), no
 * temp file left, and a name that is a directory refused with the path named. */
Test(fileio, replace_is_atomic_and_leaves_no_temp) {
        char *dir = test_mkdtemp();
        vmsup_error *err = NULL;
        int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        char path[512], *text;
        size_t len = 0;
        struct stat st;
        mode_t old = umask(077);
        DIR *d;
        struct dirent *e;
        int n = 0;

        cr_assert_geq(dfd, 0);
        cr_assert_eq(file_replace_at(dfd, dir, "pid", "1\n", 2, 0644, &err), 0, "%s", err ? err->msg : "");
        cr_assert_eq(file_replace_at(dfd, dir, "pid", "22\n", 3, 0644, &err), 0, "%s", err ? err->msg : "");
        umask(old);
        snprintf(path, sizeof(path), "%s/pid", dir);
        text = (char *) test_read_file(path, &len);
        cr_assert_eq(len, 3);
        cr_assert_eq(memcmp(text, "22\n", 3), 0);
        free(text);
        cr_assert_eq(stat(path, &st), 0);
        cr_assert_eq(st.st_mode & 07777, 0644, "mode %o", st.st_mode & 07777);
        d = opendir(dir);
        while ((e = readdir(d)))
                n += e->d_name[0] != '.' || (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."));
        closedir(d);
        cr_assert_eq(n, 1, "only the file itself is left");

        snprintf(path, sizeof(path), "%s/sub", dir);
        cr_assert_eq(mkdir(path, 0700), 0);
        cr_assert_lt(replace_file(path, "x", 1, 0600, &err), 0);
        cr_assert_not_null(strstr(err->msg, "sub"), "%s", err->msg);
        vmsup_error_free(err);
        close(dfd);
        test_rmtree(dir);
        free(dir);
}
