/* The exit status of vmsup: the one place that turns an error's kind into a number
 * (sysexits values, documented in vmsup(8) EXIT STATUS). */
#ifndef VMSUP_CLI_EXITSTATUS_H
#define VMSUP_CLI_EXITSTATUS_H

#include "common/error.h"

/* 0 for VMSUP_ERR_OK; a kind out of range is an internal error's 70. */
int cli_exit_status(enum vmsup_err_kind kind);

#endif
