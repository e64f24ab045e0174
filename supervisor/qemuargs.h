/* QEMU's command line for a guest, built from the spec, the resolved TPM and the config. */
#ifndef VMSUP_SUPERVISOR_QEMUARGS_H
#define VMSUP_SUPERVISOR_QEMUARGS_H

#include "common/error.h"
#include "nova/guestspec.h"
#include "supervisor/hostconfig.h"
#include "nova/tpmrules.h"

struct qemu_args_in {
        const char *qemu;          /* absolute path of the binary */
        const struct guest_spec *spec;
        const struct vtpm_config *tpm;
        const struct host_config *cfg;
        const char *vars_path;     /* the guest's OVMF VARS copy (uefi) */
        int serial_fd;             /* the serial port: a connected socket QEMU inherits */
        int qmp_fd;                /* fd number QEMU gets its QMP socket on */
        int tpm_ctrl_fd;           /* fd number of swtpm's control channel, -1 without vTPM */
        bool paused;               /* -S */
        const char *incoming;      /* -incoming URI, or NULL */
};

/* A NULL-terminated argv (strv_freep frees it). */
int qemu_args_build(const struct qemu_args_in *in, char ***ret_argv, vmsup_error **err);

/* QEMU option values separate keys with ',': a literal ',' is written ",,". */
char *qemu_escape_value(const char *s);

#endif
