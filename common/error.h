/* Errors that carry their own explanation up the call chain (crun's model). */
#ifndef VMSUP_COMMON_ERROR_H
#define VMSUP_COMMON_ERROR_H

#include <stdarg.h>

/* What kind of failure an error is: its cause, for the caller to act on and for the
 * command line to turn into an exit status (cli/exitstatus.c, the only place that knows
 * exit numbers). Nothing tells errors apart by their message text. */
enum vmsup_err_kind {
        VMSUP_ERR_OK = 0,         /* no failure */
        VMSUP_ERR_FAILED,         /* the guest or an operation failed */
        VMSUP_ERR_USAGE,          /* bad command line */
        VMSUP_ERR_DATA,           /* bad input: guest spec, sealed file, message */
        VMSUP_ERR_NOT_FOUND,      /* a file or guest that does not exist */
        VMSUP_ERR_UNAVAILABLE,    /* a service or host feature is not there */
        VMSUP_ERR_NO_SUPERVISOR,  /* no supervisor listens on the guest's control socket */
        VMSUP_ERR_INTERNAL,       /* a bug of ours */
        VMSUP_ERR_SYSTEM,         /* the system refused (fork, exec, memory) */
        VMSUP_ERR_CANT_CREATE,    /* cannot create an output file */
        VMSUP_ERR_IO,             /* read or write failed */
        VMSUP_ERR_BUSY,           /* try again later (busy, locked) */
        VMSUP_ERR_TIMEOUT,        /* an answer did not come within its deadline */
        VMSUP_ERR_DENIED,         /* permission denied */
        VMSUP_ERR_CONFIG,         /* bad host configuration */
        VMSUP_ERR_CRASHED,        /* the guest crashed and its on_crash destroyed it */
        VMSUP_ERR_KIND_MAX,
};

typedef struct vmsup_error {
        int errnum; /* errno-style cause, 0 when none */
        enum vmsup_err_kind kind;
        char *msg;
} vmsup_error;

/* The kind's name on the wire and in messages ("busy", "no-supervisor"), and back:
 * VMSUP_ERR_FAILED for a name nobody knows, or "ok" (an error is never a success). */
const char *vmsup_err_kind_to_string(enum vmsup_err_kind kind);
enum vmsup_err_kind vmsup_err_kind_from_string(const char *name);

/* Fill *err (if err is not NULL and *err is empty) and return -errnum, or -EINVAL when
 * errnum is 0. When errnum is not 0 the message ends with ": strerror(errnum)". */
int vmsup_fail(vmsup_error **err, enum vmsup_err_kind kind, int errnum, const char *fmt, ...)
        __attribute__((format(printf, 4, 5)));

/* Same, from a va_list. */
int vmsup_vfail(vmsup_error **err, enum vmsup_err_kind kind, int errnum, const char *fmt, va_list ap)
        __attribute__((format(printf, 4, 0)));

/* Put "context: " in front of the message already in *err; returns -(*err)->errnum or -EINVAL. */
int vmsup_error_prefix(vmsup_error **err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Change the kind of the error already in *err. */
void vmsup_error_set_kind(vmsup_error **err, enum vmsup_err_kind kind);

vmsup_error *vmsup_error_free(vmsup_error *err);

static inline void vmsup_error_freep(vmsup_error **e) {
        vmsup_error_free(*e);
}
#define _cleanup_error_ __attribute__((cleanup(vmsup_error_freep)))

#endif
