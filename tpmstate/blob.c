#include "config.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <libtpms/tpm_error.h>
#include <libtpms/tpm_library.h>
#include <libtpms/tpm_nvfilename.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/fileio.h"
#include "common/secmem.h"
#include "common/util.h"
#include "tpmstate/blob.h"
#include "tpmstate/swtpm.h"

/* vtpm-facts.md D: swtpm's blob header and TLVs. */
#define HDR_LEN 10
#define HDR_VERSION 2
#define FLAG_ENCRYPTED 0x01
#define FLAG_MIGRATION_ENCRYPTED 0x02
#define FLAG_MIGRATION_DATA 0x04
#define TLV_HDR_LEN 6
#define TAG_DATA 1
#define TAG_ENCRYPTED_DATA 2
#define VALIDATE_TIMEOUT_MS 10000
#define STATE_FILE_MAX (16u * 1024 * 1024)

static uint16_t be16(const uint8_t *p) {
        return (uint16_t) (p[0] << 8 | p[1]);
}
static uint32_t be32(const uint8_t *p) {
        return (uint32_t) p[0] << 24 | (uint32_t) p[1] << 16 | (uint32_t) p[2] << 8 | p[3];
}

static const char *const suffixes[] = {
        [TPM_BLOB_PERMANENT] = TPM_PERMANENT_ALL_NAME,
        [TPM_BLOB_VOLATILE] = TPM_VOLATILESTATE_NAME,
        [TPM_BLOB_SAVESTATE] = TPM_SAVESTATE_NAME,
};

int tpm_blob_kind_of(enum tpm_version version, const char *name) {
        const char *prefix = version == TPM_VERSION_2_0 ? "tpm2-00." : "tpm-00.";
        size_t pl = strlen(prefix);

        if (!name || strncmp(name, prefix, pl) != 0)
                return 0;
        for (int k = TPM_BLOB_PERMANENT; k <= TPM_BLOB_SAVESTATE; k++)
                if (streq(name + pl, suffixes[k]))
                        return k;
        return 0;
}

int tpm_blob_unwrap(const char *name, const uint8_t *data, size_t len, const uint8_t **ret_payload,
                    size_t *ret_len, vmsup_error **err) {
        uint16_t flags, tag;
        uint32_t totlen, vlen;

        if (len < HDR_LEN)
                return vmsup_fail(err, VMSUP_ERR_DATA, 0, "TPM state '%s': truncated (%zu bytes; swtpm's header is %d)",
                                  name, len, HDR_LEN);
        if (data[1] > HDR_VERSION || be16(data + 2) != HDR_LEN)
                return vmsup_fail(err, VMSUP_ERR_DATA, 0,
                                  "TPM state '%s': not a swtpm state file (header version %u, minimum %u, size %u)", name,
                                  data[0], data[1], be16(data + 2));
        if (data[0] < HDR_VERSION)
                return vmsup_fail(err, VMSUP_ERR_DATA, 0,
                                  "TPM state '%s': swtpm's legacy header version %u (no TLVs) is not supported", name,
                                  data[0]);
        totlen = be32(data + 6);
        if (totlen != len)
                return vmsup_fail(err, VMSUP_ERR_DATA, 0,
                                  "TPM state '%s': the header says %u bytes, the file has %zu (truncated or extended)",
                                  name, totlen, len);
        flags = be16(data + 4);
        if (flags & FLAG_ENCRYPTED)
                return vmsup_fail(err, VMSUP_ERR_DATA, 0,
                                  "TPM state '%s': encrypted by swtpm's own key (--key), which vmsup does not use", name);
        if (flags & (FLAG_MIGRATION_ENCRYPTED | FLAG_MIGRATION_DATA))
                return vmsup_fail(err, VMSUP_ERR_DATA, 0, "TPM state '%s': a migration blob, not a state file", name);
        if (flags)
                return vmsup_fail(err, VMSUP_ERR_DATA, 0, "TPM state '%s': unknown header flags 0x%04x", name, flags);
        /* A plain file is exactly [DATA] (SWTPM_NVRAM_StoreData_Intern). */
        if (len < HDR_LEN + TLV_HDR_LEN)
                return vmsup_fail(err, VMSUP_ERR_DATA, 0, "TPM state '%s': truncated (%zu bytes, no TLV)", name, len);
        tag = be16(data + HDR_LEN);
        vlen = be32(data + HDR_LEN + 2);
        if (tag == TAG_ENCRYPTED_DATA)
                return vmsup_fail(err, VMSUP_ERR_DATA, 0,
                                  "TPM state '%s': encrypted by swtpm's own key (--key), which vmsup does not use", name);
        if (tag != TAG_DATA)
                return vmsup_fail(err, VMSUP_ERR_DATA, 0, "TPM state '%s': TLV tag %u where DATA (1) was expected", name,
                                  tag);
        if (vlen != len - HDR_LEN - TLV_HDR_LEN)
                return vmsup_fail(err, VMSUP_ERR_DATA, 0,
                                  "TPM state '%s': the DATA TLV says %u bytes, %zu follow it", name, vlen,
                                  len - HDR_LEN - TLV_HDR_LEN);
        if (vlen == 0)
                return vmsup_fail(err, VMSUP_ERR_DATA, 0, "TPM state '%s': empty", name);
        *ret_payload = data + HDR_LEN + TLV_HDR_LEN;
        *ret_len = vlen;
        return 0;
}

/* ---- the child ----
 *
 * Why a child: libtpms is one TPM per process, and its state is global.
 * - TPMLIB_ChooseTPMVersion() picks the TPM for the whole process (refused after
 *   TPMLIB_MainInit() until TPMLIB_Terminate()).
 * - TPMLIB_SetState() keeps a copy of each blob in a global cache for the next
 *   TPMLIB_MainInit() to start from.
 * - TPM2's ValidateState (libtpms 0.9.2, tpm_tpm2_interface.c) unmarshals the permanent
 *   state into the TPM's global NV image (s_NV; it copies a backup that it never puts
 *   back) and loads the volatile state into the TPM's globals; TPM 1.2's builds a whole
 *   tpm_state_t.
 * - TPMLIB_RegisterCallbacks() is global, and without callbacks libtpms reads and writes
 *   files under $TPM_PATH itself.
 * None of this is heavy (a few ms), but all of it is state a supervisor must not carry
 * around, and a malformed blob from disk is exactly what a parser's bugs feed on. A
 * forked child (no exec: the blobs are already in its memory) runs the checks and dies;
 * only a result crosses back, through a pipe.
 *
 * The child is also the only process that loads libtpms: vmsup does not link it, so the
 * supervisor never maps libtpms and the libcrypto it pulls in (about 3 MiB of RSS in
 * every supervisor, against about 1 ms to dlopen them here for each check). */

struct child_result {
        int32_t stage; /* index into files of the SetState that failed; -1 ValidateState; -2 setup;
                        * -3 libtpms could not be loaded (why says why) */
        uint32_t rc;   /* TPM_RESULT */
        char why[240];
};

static struct {
        __typeof__(TPMLIB_ChooseTPMVersion) *choose_version;
        __typeof__(TPMLIB_RegisterCallbacks) *register_callbacks;
        __typeof__(TPMLIB_SetState) *set_state;
        __typeof__(TPMLIB_ValidateState) *validate_state;
} libtpms;

static int libtpms_load(char *why, size_t why_len) {
        void *h = dlopen(LIBTPMS_SONAME, RTLD_NOW | RTLD_LOCAL);

        if (!h) {
                snprintf(why, why_len, "%s", dlerror());
                return -1;
        }
#define LOAD(field, symbol)                                                         \
        if (!(libtpms.field = (__typeof__(libtpms.field)) dlsym(h, #symbol))) {     \
                snprintf(why, why_len, "%s", dlerror());                            \
                return -1;                                                          \
        }
        LOAD(choose_version, TPMLIB_ChooseTPMVersion);
        LOAD(register_callbacks, TPMLIB_RegisterCallbacks);
        LOAD(set_state, TPMLIB_SetState);
        LOAD(validate_state, TPMLIB_ValidateState);
#undef LOAD
        return 0;
}

static const uint8_t *child_payload[3 + 1];
static size_t child_payload_len[3 + 1];

static TPM_RESULT cb_nvram_init(void) {
        return TPM_SUCCESS;
}

/* libtpms asks for blobs by name ("permall"...); it frees what it gets. */
static TPM_RESULT cb_nvram_loaddata(unsigned char **data, uint32_t *length, uint32_t tpm_number, const char *name) {
        for (int k = TPM_BLOB_PERMANENT; k <= TPM_BLOB_SAVESTATE; k++) {
                if (!streq(name, suffixes[k]))
                        continue;
                if (!child_payload[k])
                        return TPM_RETRY; /* "no such file": libtpms' word for a first start */
                *data = malloc(child_payload_len[k]);
                if (!*data)
                        return TPM_SIZE;
                memcpy(*data, child_payload[k], child_payload_len[k]);
                *length = (uint32_t) child_payload_len[k];
                return TPM_SUCCESS;
        }
        return TPM_RETRY;
}

/* Validation must not write anything: refuse, so that a libtpms that tried would say. */
static TPM_RESULT cb_nvram_storedata(const unsigned char *data, uint32_t length, uint32_t tpm_number,
                                     const char *name) {
        return TPM_FAIL;
}

static TPM_RESULT cb_nvram_deletename(uint32_t tpm_number, const char *name, TPM_BOOL must_exist) {
        return TPM_SUCCESS;
}

static enum TPMLIB_StateType state_type(enum tpm_blob_kind k) {
        return k == TPM_BLOB_PERMANENT ? TPMLIB_STATE_PERMANENT
               : k == TPM_BLOB_VOLATILE ? TPMLIB_STATE_VOLATILE
                                        : TPMLIB_STATE_SAVE_STATE;
}

static struct child_result child_validate(enum tpm_version version, const struct tpm_blob_file *files, size_t n) {
        struct libtpms_callbacks cbs = {
                .sizeOfStruct = sizeof(cbs),
                .tpm_nvram_init = cb_nvram_init,
                .tpm_nvram_loaddata = cb_nvram_loaddata,
                .tpm_nvram_storedata = cb_nvram_storedata,
                .tpm_nvram_deletename = cb_nvram_deletename,
        };
        struct child_result res = { .stage = -3 };
        unsigned types = 0;
        TPM_RESULT rc;

        if (libtpms_load(res.why, sizeof(res.why)) < 0)
                return res;
        rc = libtpms.choose_version(version == TPM_VERSION_2_0 ? TPMLIB_TPM_VERSION_2 : TPMLIB_TPM_VERSION_1_2);
        if (rc == TPM_SUCCESS)
                rc = libtpms.register_callbacks(&cbs);
        if (rc != TPM_SUCCESS)
                return (struct child_result) { .stage = -2, .rc = rc };
        /* The permanent state first: the volatile state is loaded on top of it. */
        for (int k = TPM_BLOB_PERMANENT; k <= TPM_BLOB_SAVESTATE; k++)
                for (size_t i = 0; i < n; i++) {
                        if ((int) files[i].kind != k || !child_payload[k])
                                continue;
                        /* TPM 2 has no separate save state (TPM2_Shutdown(STATE) keeps it in
                         * NV): libtpms refuses any, so only swtpm's framing was checked. */
                        if (version == TPM_VERSION_2_0 && k == TPM_BLOB_SAVESTATE)
                                continue;
                        rc = libtpms.set_state(state_type(k), child_payload[k], (uint32_t) child_payload_len[k]);
                        if (rc != TPM_SUCCESS)
                                return (struct child_result) { .stage = (int32_t) i, .rc = rc };
                        types |= state_type(k);
                }
        rc = libtpms.validate_state((enum TPMLIB_StateType) types, 0);
        if (rc != TPM_SUCCESS)
                return (struct child_result) { .stage = -1, .rc = rc };
        return (struct child_result) { .stage = 0, .rc = TPM_SUCCESS };
}

int tpm_blob_validate(enum tpm_version version, const struct tpm_blob_file *files, size_t n, vmsup_error **err) {
        struct child_result res = { .stage = -2, .rc = TPM_FAIL };
        _cleanup_close_ int rd = -1;
        int fds[2], status, have_permanent = 0, r;
        struct pollfd p;
        ssize_t got;
        pid_t pid;

        for (int k = 0; k <= TPM_BLOB_SAVESTATE; k++)
                child_payload[k] = NULL;
        for (size_t i = 0; i < n; i++) {
                int k = files[i].kind;

                if (k < TPM_BLOB_PERMANENT || k > TPM_BLOB_SAVESTATE)
                        return vmsup_fail(err, VMSUP_ERR_INTERNAL, 0, "TPM state '%s': unknown kind %d", files[i].name, k);
                if (child_payload[k])
                        return vmsup_fail(err, VMSUP_ERR_INTERNAL, 0, "TPM state '%s': a second %s", files[i].name,
                                          suffixes[k]);
                r = tpm_blob_unwrap(files[i].name, files[i].data, files[i].len, &child_payload[k],
                                    &child_payload_len[k], err);
                if (r < 0)
                        return r;
                have_permanent |= k == TPM_BLOB_PERMANENT;
        }
        if (!have_permanent)
                return vmsup_fail(err, VMSUP_ERR_DATA, 0, "TPM state: no permanent state (%s) among the files",
                                  swtpm_permall_name(version));

        if (pipe2(fds, O_CLOEXEC) < 0)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, errno, "validate the TPM state: pipe");
        rd = fds[0];
        pid = fork();
        if (pid < 0) {
                close(fds[1]);
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, errno, "validate the TPM state: fork");
        }
        if (pid == 0) {
                int null = open("/dev/null", O_WRONLY | O_CLOEXEC);

                /* libtpms may print debug text; it has nothing to say to our stdout. */
                if (null >= 0) {
                        dup2(null, STDOUT_FILENO);
                        dup2(null, STDERR_FILENO);
                }
                res = child_validate(version, files, n);
                _exit(write(fds[1], &res, sizeof(res)) == (ssize_t) sizeof(res) ? 0 : 1);
        }
        close(fds[1]);

        p = (struct pollfd) { .fd = rd, .events = POLLIN };
        do
                r = poll(&p, 1, VALIDATE_TIMEOUT_MS);
        while (r < 0 && errno == EINTR);
        got = r > 0 ? read(rd, &res, sizeof(res)) : -1;
        if (r == 0)
                kill(pid, SIGKILL);
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
                ;
        if (r == 0)
                return vmsup_fail(err, VMSUP_ERR_INTERNAL, 0, "validate the TPM state: libtpms did not finish in %d ms",
                                  VALIDATE_TIMEOUT_MS);
        if (got != (ssize_t) sizeof(res) || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
                /* A crash on a blob is a refusal of that blob set, not a vmsup bug to hide. */
                return vmsup_fail(err, VMSUP_ERR_DATA, 0,
                                  "TPM state '%s': libtpms' check did not complete (%s %d)", files[0].name,
                                  WIFSIGNALED(status) ? "signal" : "exit",
                                  WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
        if (res.stage == -3)
                return vmsup_fail(err, VMSUP_ERR_UNAVAILABLE, 0, "validate the TPM state: cannot load libtpms: %.*s",
                                  (int) sizeof(res.why), res.why);
        if (res.rc == TPM_SUCCESS)
                return 0;
        if (res.stage >= 0 && (size_t) res.stage < n)
                return vmsup_fail(err, VMSUP_ERR_DATA, 0,
                                  "TPM state '%s': libtpms refuses it as a TPM %s %s state (TPM_RESULT 0x%x)",
                                  files[res.stage].name, tpm_version_to_string(version),
                                  state_type(files[res.stage].kind) == TPMLIB_STATE_PERMANENT  ? "permanent"
                                  : state_type(files[res.stage].kind) == TPMLIB_STATE_VOLATILE ? "volatile"
                                                                                               : "saved",
                                  res.rc);
        if (res.stage == -1)
                return vmsup_fail(err, VMSUP_ERR_DATA, 0,
                                  "TPM state '%s'%s: libtpms' TPMLIB_ValidateState refuses the set (TPM_RESULT 0x%x)",
                                  files[0].name, n > 1 ? " and the rest" : "", res.rc);
        return vmsup_fail(err, VMSUP_ERR_INTERNAL, 0, "validate the TPM state: libtpms setup failed (TPM_RESULT 0x%x)",
                          res.rc);
}

int tpm_blob_validate_dir(int dirfd, const char *dir, enum tpm_version version, vmsup_error **err) {
        const char *prefix = version == TPM_VERSION_2_0 ? "tpm2-00" : "tpm-00";
        struct tpm_blob_file files[3] = { 0 };
        char names[3][64], paths[3][4096];
        void *data[3] = { NULL, NULL, NULL };
        size_t n = 0;
        int r = 0;

        for (int k = TPM_BLOB_PERMANENT; k <= TPM_BLOB_SAVESTATE; k++) {
                vmsup_error *e = NULL;
                size_t len;

                snprintf(names[n], sizeof(names[n]), "%s.%s", prefix, suffixes[k]);
                snprintf(paths[n], sizeof(paths[n]), "%s/%s", dir, names[n]);
                r = file_read_at(dirfd, dir, names[n], STATE_FILE_MAX, true, &data[n], &len, &e);
                if (r == -ENOENT && k != TPM_BLOB_PERMANENT) {
                        vmsup_error_free(e);
                        r = 0;
                        continue;
                }
                if (r < 0) {
                        if (err && !*err)
                                *err = e;
                        else
                                vmsup_error_free(e);
                        goto out;
                }
                files[n] = (struct tpm_blob_file) { .name = paths[n], .kind = k, .data = data[n], .len = len };
                n++;
        }
        r = tpm_blob_validate(version, files, n, err);
out:
        for (size_t i = 0; i < 3; i++)
                secmem_free(data[i]);
        return r;
}
