/* Errors that carry their own explanation up the call chain (crun's model). */
#ifndef VMSUP_COMMON_ERROR_H
#define VMSUP_COMMON_ERROR_H

#include <stdarg.h>

/* Exit codes (sysexits.h values) that the CLI documents in vmsup(8). */
enum {
        VMSUP_EX_OK = 0,
        VMSUP_EX_FAILURE = 1,      /* the guest or an operation failed */
        VMSUP_EX_USAGE = 64,       /* bad command line */
        VMSUP_EX_DATAERR = 65,     /* bad guest spec, sealed file, message */
        VMSUP_EX_NOINPUT = 66,     /* a file or guest that does not exist */
        VMSUP_EX_UNAVAILABLE = 69, /* a service or host feature is not there */
        VMSUP_EX_SOFTWARE = 70,    /* internal error */
        VMSUP_EX_OSERR = 71,       /* the system refused (fork, exec, memory) */
        VMSUP_EX_CANTCREAT = 73,   /* cannot create an output file */
        VMSUP_EX_IOERR = 74,       /* read or write failed */
        VMSUP_EX_TEMPFAIL = 75,    /* try again later (busy, locked) */
        VMSUP_EX_NOPERM = 77,      /* permission denied */
        VMSUP_EX_CONFIG = 78,      /* bad host configuration */
};

typedef struct vmsup_error {
        int errnum;    /* errno-style cause, 0 when none */
        int exit_code; /* one of VMSUP_EX_* */
        char *msg;
} vmsup_error;

/* Fill *err (if err is not NULL and *err is empty) and return -errnum, or -EINVAL when
 * errnum is 0. When errnum is not 0 the message ends with ": strerror(errnum)". */
int vmsup_fail(vmsup_error **err, int exit_code, int errnum, const char *fmt, ...)
        __attribute__((format(printf, 4, 5)));

/* Same, from a va_list. */
int vmsup_vfail(vmsup_error **err, int exit_code, int errnum, const char *fmt, va_list ap)
        __attribute__((format(printf, 4, 0)));

/* Put "context: " in front of the message already in *err; returns -(*err)->errnum or -EINVAL. */
int vmsup_error_prefix(vmsup_error **err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Change the exit code of the error already in *err. */
void vmsup_error_set_exit(vmsup_error **err, int exit_code);

vmsup_error *vmsup_error_free(vmsup_error *err);

static inline void vmsup_error_freep(vmsup_error **e) {
        vmsup_error_free(*e);
}
#define _cleanup_error_ __attribute__((cleanup(vmsup_error_freep)))

#endif
