#include "config.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/fileio.h"
#include "tpmstate/blob.h"
#include "tests/helpers.h"

static void expect_msg(int r, vmsup_error **err, const char *needle, const char *also) {
        cr_assert_lt(r, 0, "expected a refusal mentioning '%s'", needle);
        cr_assert_not_null(*err);
        cr_assert_eq((*err)->kind, VMSUP_ERR_DATA, "kind %s: %s", vmsup_err_kind_to_string((*err)->kind), (*err)->msg);
        cr_assert_not_null(strstr((*err)->msg, needle), "'%s' not in: %s", needle, (*err)->msg);
        if (also)
                cr_assert_not_null(strstr((*err)->msg, also), "'%s' not in: %s", also, (*err)->msg);
        *err = vmsup_error_free(*err);
}

/* A real TPM: swtpm_setup manufactures it (EK), then a swtpm run stores its volatile
 * state, so both kinds of file come from the component vmsup will hand them to. */
static char *manufacture(enum tpm_version v) {
        char *dir = test_mkdtemp(), cmd[8192];
        const char *t2 = v == TPM_VERSION_2_0 ? "--tpm2" : "";

        if (system("command -v swtpm_setup >/dev/null && command -v swtpm >/dev/null && "
                   "command -v swtpm_ioctl >/dev/null") != 0)
                cr_assert_fail("swtpm, swtpm_setup and swtpm_ioctl are needed (apt-get install swtpm swtpm-tools)");
        /* --daemon chdirs to /: every path is absolute. */
        snprintf(cmd, sizeof(cmd),
                 "set -e; d='%s'; swtpm_setup %s --tpmstate \"$d\" --createek >\"$d/setup.log\" 2>&1; "
                 "swtpm socket %s --tpmstate dir=\"$d\" --ctrl type=unixio,path=\"$d/ctrl\" "
                 "--server type=unixio,path=\"$d/srv\" --flags not-need-init,startup-clear --daemon; "
                 "swtpm_ioctl --unix \"$d/ctrl\" -v; swtpm_ioctl --unix \"$d/ctrl\" -s; "
                 "rm -f \"$d/setup.log\" \"$d/ctrl\" \"$d/srv\"",
                 dir, t2, t2);
        cr_assert_eq(system(cmd), 0, "manufacturing a TPM %s state in %s failed", tpm_version_to_string(v), dir);
        return dir;
}

static void rewrite(const char *dir, const char *name, const uint8_t *data, size_t len) {
        char *p = NULL;
        vmsup_error *err = NULL;

        cr_assert(asprintf(&p, "%s/%s", dir, name) > 0);
        cr_assert_eq(write_file_atomic(p, data, len, 0600, &err), 0);
        free(p);
}

static uint8_t *slurp(int dfd, const char *dir, const char *name, size_t *len) {
        vmsup_error *err = NULL;
        void *d = NULL;

        cr_assert_eq(file_read_at(dfd, dir, name, 1 << 24, false, &d, len, &err), 0, "%s", err ? err->msg : "");
        return d;
}

Test(tpmblob, kind_of) {
        cr_assert_eq(tpm_blob_kind_of(TPM_VERSION_2_0, "tpm2-00.permall"), TPM_BLOB_PERMANENT);
        cr_assert_eq(tpm_blob_kind_of(TPM_VERSION_2_0, "tpm2-00.volatilestate"), TPM_BLOB_VOLATILE);
        cr_assert_eq(tpm_blob_kind_of(TPM_VERSION_1_2, "tpm-00.savestate"), TPM_BLOB_SAVESTATE);
        cr_assert_eq(tpm_blob_kind_of(TPM_VERSION_1_2, "tpm2-00.permall"), 0);
        cr_assert_eq(tpm_blob_kind_of(TPM_VERSION_2_0, "TMP2-00.permall"), 0, "swtpm's temp file");
        cr_assert_eq(tpm_blob_kind_of(TPM_VERSION_2_0, "tpm2-00.permall.bak"), 0);
}

Test(tpmblob, framing) {
        /* version 2, min 1, hdrsize 10, flags, totlen 19; DATA TLV of 3 bytes */
        uint8_t f[19] = { 2, 1, 0, 10, 0, 0, 0, 0, 0, 19, 0, 1, 0, 0, 0, 3, 'a', 'b', 'c' }, g[19];
        vmsup_error *err = NULL;
        const uint8_t *payload;
        size_t plen;

        cr_assert_eq(tpm_blob_unwrap("f", f, sizeof(f), &payload, &plen, &err), 0, "%s", err ? err->msg : "");
        cr_assert_eq(plen, 3);
        cr_assert_eq(payload, f + 16);

        expect_msg(tpm_blob_unwrap("x/tpm2-00.permall", f, 9, &payload, &plen, &err), &err,
                   "TPM state 'x/tpm2-00.permall': truncated (9 bytes", NULL);
        expect_msg(tpm_blob_unwrap("f", f, 18, &payload, &plen, &err), &err,
                   "the header says 19 bytes, the file has 18", NULL);
        memcpy(g, f, sizeof(g));
        g[5] = 0x01;
        expect_msg(tpm_blob_unwrap("f", g, sizeof(g), &payload, &plen, &err), &err,
                   "encrypted by swtpm's own key (--key), which vmsup does not use", NULL);
        g[5] = 0x04;
        expect_msg(tpm_blob_unwrap("f", g, sizeof(g), &payload, &plen, &err), &err, "a migration blob", NULL);
        memcpy(g, f, sizeof(g));
        g[11] = 2;
        expect_msg(tpm_blob_unwrap("f", g, sizeof(g), &payload, &plen, &err), &err, "encrypted by swtpm's own key",
                   NULL);
        g[11] = 4;
        expect_msg(tpm_blob_unwrap("f", g, sizeof(g), &payload, &plen, &err), &err,
                   "TLV tag 4 where DATA (1) was expected", NULL);
        memcpy(g, f, sizeof(g));
        g[15] = 4;
        expect_msg(tpm_blob_unwrap("f", g, sizeof(g), &payload, &plen, &err), &err,
                   "the DATA TLV says 4 bytes, 3 follow it", NULL);
        memcpy(g, f, sizeof(g));
        g[0] = 1;
        expect_msg(tpm_blob_unwrap("f", g, sizeof(g), &payload, &plen, &err), &err, "legacy header version 1", NULL);
        memcpy(g, f, sizeof(g));
        g[3] = 12;
        expect_msg(tpm_blob_unwrap("f", g, sizeof(g), &payload, &plen, &err), &err, "not a swtpm state file", NULL);
}

static void real_state(enum tpm_version v, const char *perm, const char *vol) {
        char *dir = manufacture(v);
        vmsup_error *err = NULL;
        uint8_t *p, *q;
        size_t len, qlen;
        int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

        cr_assert_geq(dfd, 0);
        cr_assert_eq(tpm_blob_validate_dir(dfd, dir, v, &err), 0, "%s", err ? err->msg : "");

        p = slurp(dfd, dir, perm, &len);
        q = slurp(dfd, dir, vol, &qlen);
        {
                struct tpm_blob_file files[] = {
                        { "volatile", TPM_BLOB_VOLATILE, q, qlen },
                        { "permanent", TPM_BLOB_PERMANENT, p, len },
                };

                cr_assert_eq(tpm_blob_validate(v, files, 2, &err), 0, "%s", err ? err->msg : "");
                expect_msg(tpm_blob_validate(v, files, 1, &err), &err, "no permanent state", NULL);
                /* the other TPM version does not take it */
                expect_msg(tpm_blob_validate(v == TPM_VERSION_2_0 ? TPM_VERSION_1_2 : TPM_VERSION_2_0, files + 1, 1,
                                             &err),
                           &err, "'permanent': libtpms refuses it as a TPM", NULL);
        }

        /* a flipped byte in the DATA payload (its structure: libtpms has no checksum
         * over a TPM 2 permall, so not every flip is visible to it; the seal is) */
        p[16 + 4] ^= 0x55;
        rewrite(dir, perm, p, len);
        expect_msg(tpm_blob_validate_dir(dfd, dir, v, &err), &err, perm, "libtpms refuses it as a TPM");
        p[16 + 4] ^= 0x55;

        /* truncated */
        rewrite(dir, perm, p, len - 100);
        expect_msg(tpm_blob_validate_dir(dfd, dir, v, &err), &err, perm, "the header says");
        /* a header with a wrong totlen */
        p[9] ^= 1;
        rewrite(dir, perm, p, len);
        expect_msg(tpm_blob_validate_dir(dfd, dir, v, &err), &err, perm, "the header says");
        p[9] ^= 1;
        rewrite(dir, perm, p, len);
        cr_assert_eq(tpm_blob_validate_dir(dfd, dir, v, &err), 0, "%s", err ? err->msg : "");

        /* the volatile state broken, the permanent one fine: the message names the
         * volatile file */
        q[16 + 4] ^= 0x55;
        rewrite(dir, vol, q, qlen);
        expect_msg(tpm_blob_validate_dir(dfd, dir, v, &err), &err, vol, "libtpms refuses it as a TPM");

        /* no permanent state at all */
        {
                char *pp = NULL;

                cr_assert(asprintf(&pp, "%s/%s", dir, perm) > 0);
                cr_assert_eq(unlink(pp), 0);
                cr_assert_lt(tpm_blob_validate_dir(dfd, dir, v, &err), 0);
                cr_assert_eq(err->kind, VMSUP_ERR_NOT_FOUND, "%s", err->msg);
                err = vmsup_error_free(err);
                free(pp);
        }
        free(p);
        free(q);
        close(dfd);
        test_rmtree(dir);
        free(dir);
}

Test(tpmblob, tpm2_state_from_swtpm, .timeout = 60) {
        real_state(TPM_VERSION_2_0, "tpm2-00.permall", "tpm2-00.volatilestate");
}

Test(tpmblob, tpm12_state_from_swtpm, .timeout = 60) {
        real_state(TPM_VERSION_1_2, "tpm-00.permall", "tpm-00.volatilestate");
}

Test(tpmblob, tpm12_permall_flips_all_refused, .timeout = 60) {
        /* TPM 1.2's permanent state carries a digest over itself: every flipped payload
         * byte is refused (a sample of them, to stay light). */
        char *dir = manufacture(TPM_VERSION_1_2);
        int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        size_t len;
        uint8_t *p = slurp(dfd, dir, "tpm-00.permall", &len);

        for (size_t i = 16; i < len; i += len / 24) {
                struct tpm_blob_file f = { "tpm-00.permall", TPM_BLOB_PERMANENT, p, len };
                vmsup_error *err = NULL;

                p[i] ^= 0x01;
                cr_assert_lt(tpm_blob_validate(TPM_VERSION_1_2, &f, 1, &err), 0, "flip at %zu unnoticed", i);
                vmsup_error_free(err);
                p[i] ^= 0x01;
        }
        free(p);
        close(dfd);
        test_rmtree(dir);
        free(dir);
}
