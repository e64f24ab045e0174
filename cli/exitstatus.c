#include "config.h"

#include "cli/exitstatus.h"

/* sysexits.h's values; a new kind needs its line here and in vmsup(8) (tests/test_manpage). */
static const int exit_status[VMSUP_ERR_KIND_MAX] = {
        [VMSUP_ERR_OK] = 0,
        [VMSUP_ERR_FAILED] = 1,
        [VMSUP_ERR_USAGE] = 64,         /* EX_USAGE */
        [VMSUP_ERR_DATA] = 65,          /* EX_DATAERR */
        [VMSUP_ERR_NOT_FOUND] = 66,     /* EX_NOINPUT */
        [VMSUP_ERR_UNAVAILABLE] = 69,   /* EX_UNAVAILABLE */
        [VMSUP_ERR_NO_SUPERVISOR] = 69, /* EX_UNAVAILABLE: the guest does not run under vmsup */
        [VMSUP_ERR_INTERNAL] = 70,      /* EX_SOFTWARE */
        [VMSUP_ERR_SYSTEM] = 71,        /* EX_OSERR */
        [VMSUP_ERR_CANT_CREATE] = 73,   /* EX_CANTCREAT */
        [VMSUP_ERR_IO] = 74,            /* EX_IOERR */
        [VMSUP_ERR_BUSY] = 75,          /* EX_TEMPFAIL */
        [VMSUP_ERR_TIMEOUT] = 75,       /* EX_TEMPFAIL: it may still happen; try again later */
        [VMSUP_ERR_DENIED] = 77,        /* EX_NOPERM */
        [VMSUP_ERR_CONFIG] = 78,        /* EX_CONFIG */
        /* not a failure to retry: the guest's own on_crash said destroy, and a service
         * manager that restarts on failure must be able to tell (vmsup@.service) */
        [VMSUP_ERR_CRASHED] = 3,
};

int cli_exit_status(enum vmsup_err_kind kind) {
        if ((unsigned) kind >= VMSUP_ERR_KIND_MAX)
                return exit_status[VMSUP_ERR_INTERNAL];
        return exit_status[kind];
}
