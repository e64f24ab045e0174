/* Client for swtpm's control channel (tpm_ioctl framing) on a connected stream socket. */
#ifndef VMSUP_TPMSTATE_CTRL_H
#define VMSUP_TPMSTATE_CTRL_H

#include <stdint.h>

#include "common/error.h"
#include "common/vtpm.h"

/* Command codes (tpm_ioctl.h). */
enum swtpm_ctrl_cmd {
        SWTPM_CMD_GET_CAPABILITY = 0x01,
        SWTPM_CMD_INIT = 0x02,
        SWTPM_CMD_SHUTDOWN = 0x03,
        SWTPM_CMD_GET_TPMESTABLISHED = 0x04,
        SWTPM_CMD_SET_LOCALITY = 0x05,
        SWTPM_CMD_RESET_TPMESTABLISHED = 0x0b,
        SWTPM_CMD_STOP = 0x0e,
        SWTPM_CMD_GET_CONFIG = 0x0f,
        SWTPM_CMD_SET_DATAFD = 0x10,
        SWTPM_CMD_SET_BUFFERSIZE = 0x11,
        SWTPM_CMD_GET_INFO = 0x12,
};

/* Capability bits of CMD_GET_CAPABILITY. */
enum {
        SWTPM_CAP_INIT = 1u << 0,
        SWTPM_CAP_SHUTDOWN = 1u << 1,
        SWTPM_CAP_GET_TPMESTABLISHED = 1u << 2,
        SWTPM_CAP_SET_LOCALITY = 1u << 3,
        SWTPM_CAP_HASHING = 1u << 4,
        SWTPM_CAP_CANCEL_TPM_CMD = 1u << 5,
        SWTPM_CAP_STORE_VOLATILE = 1u << 6,
        SWTPM_CAP_RESET_TPMESTABLISHED = 1u << 7,
        SWTPM_CAP_GET_STATEBLOB = 1u << 8,
        SWTPM_CAP_SET_STATEBLOB = 1u << 9,
        SWTPM_CAP_STOP = 1u << 10,
        SWTPM_CAP_GET_CONFIG = 1u << 11,
        SWTPM_CAP_SET_DATAFD = 1u << 12,
        SWTPM_CAP_SET_BUFFERSIZE = 1u << 13,
        SWTPM_CAP_GET_INFO = 1u << 14,
        SWTPM_CAP_SEND_COMMAND_HEADER = 1u << 15,
        SWTPM_CAP_LOCK_STORAGE = 1u << 16,
};

/* CMD_GET_CONFIG flags. */
enum {
        SWTPM_CONFIG_FILE_KEY = 1u << 0,
        SWTPM_CONFIG_MIGRATION_KEY = 1u << 1,
};

/* CMD_INIT flag: drop the volatile state instead of resuming from it. */
#define SWTPM_INIT_DELETE_VOLATILE 1u

/* CMD_GET_INFO flags. */
#define SWTPM_INFO_TPMSPECIFICATION (1ull << 0)
#define SWTPM_INFO_TPMATTRIBUTES (1ull << 1)

/* "CMD_SHUTDOWN", or "CMD_0x99" for a code without a name (static or thread-local buffer). */
const char *swtpm_ctrl_cmd_name(uint32_t code);

/* The capabilities QEMU's tpm_emulator_check_caps() insists on for this TPM version. */
uint32_t swtpm_ctrl_caps_needed(enum tpm_version version);

/* Fail (exit 69) naming every capability QEMU needs that caps lacks:
 * "swtpm lacks control-channel capabilities QEMU needs: SET_DATAFD, STOP". */
int swtpm_ctrl_caps_check(uint32_t caps, enum tpm_version version, vmsup_error **err);

/* Every call below sends one request on fd and reads its reply within timeout_ms
 * (one deadline for the whole exchange). The fd must be vmsup's alone while the call
 * runs: never while QEMU holds the same connection and is alive. Bytes already waiting
 * on fd before the request (a reply a killed QEMU never read) are discarded first.
 * Errors: "swtpm control: CMD_X: TPM result 0x9 (TPM_FAIL)", "...: swtpm closed its
 * control channel" (that one returns -EPIPE), "...: no reply within N ms", "...: reply
 * longer than expected". */

int swtpm_ctrl_get_capability(int fd, int timeout_ms, uint32_t *ret_caps, vmsup_error **err);

/* CMD_INIT: start the TPM (it loads its state now: a missing state dir or a wrong key
 * shows here, not at swtpm's start). flags: 0 or SWTPM_INIT_DELETE_VOLATILE. */
int swtpm_ctrl_init(int fd, int timeout_ms, uint32_t flags, vmsup_error **err);

/* CMD_SHUTDOWN: swtpm stores its state and exits. */
int swtpm_ctrl_shutdown(int fd, int timeout_ms, vmsup_error **err);

/* CMD_STOP: stop the TPM, swtpm keeps running. */
int swtpm_ctrl_stop(int fd, int timeout_ms, vmsup_error **err);

/* CMD_GET_CONFIG: SWTPM_CONFIG_* flags saying which keys swtpm was given. */
int swtpm_ctrl_get_config(int fd, int timeout_ms, uint32_t *ret_flags, vmsup_error **err);

/* CMD_GET_INFO: the JSON text for SWTPM_INFO_* flags (NUL-terminated, at most 64 KiB). */
int swtpm_ctrl_get_info(int fd, int timeout_ms, uint64_t flags, char **ret_json, vmsup_error **err);

#endif
