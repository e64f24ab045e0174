#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"

static const char *const kind_names[VMSUP_ERR_KIND_MAX] = {
        [VMSUP_ERR_OK] = "ok",
        [VMSUP_ERR_FAILED] = "failed",
        [VMSUP_ERR_USAGE] = "usage",
        [VMSUP_ERR_DATA] = "bad-data",
        [VMSUP_ERR_NOT_FOUND] = "not-found",
        [VMSUP_ERR_UNAVAILABLE] = "unavailable",
        [VMSUP_ERR_NO_SUPERVISOR] = "no-supervisor",
        [VMSUP_ERR_INTERNAL] = "internal",
        [VMSUP_ERR_SYSTEM] = "system",
        [VMSUP_ERR_CANT_CREATE] = "cannot-create",
        [VMSUP_ERR_IO] = "io",
        [VMSUP_ERR_BUSY] = "busy",
        [VMSUP_ERR_TIMEOUT] = "timeout",
        [VMSUP_ERR_DENIED] = "denied",
        [VMSUP_ERR_CONFIG] = "config",
        [VMSUP_ERR_CRASHED] = "crashed",
};

const char *vmsup_err_kind_to_string(enum vmsup_err_kind kind) {
        return (unsigned) kind < VMSUP_ERR_KIND_MAX && kind_names[kind] ? kind_names[kind] : "failed";
}

enum vmsup_err_kind vmsup_err_kind_from_string(const char *name) {
        for (unsigned k = VMSUP_ERR_OK + 1; name && k < VMSUP_ERR_KIND_MAX; k++)
                if (kind_names[k] && strcmp(kind_names[k], name) == 0)
                        return (enum vmsup_err_kind) k;
        return VMSUP_ERR_FAILED;
}

int vmsup_vfail(vmsup_error **err, enum vmsup_err_kind kind, int errnum, const char *fmt, va_list ap) {
        int ret = errnum > 0 ? -errnum : -EINVAL;
        char *base = NULL, *msg = NULL;
        vmsup_error *e;

        if (!err || *err)
                return ret; /* keep the first, innermost explanation */

        if (vasprintf(&base, fmt, ap) < 0)
                base = NULL;
        if (base && errnum > 0) {
                if (asprintf(&msg, "%s: %s", base, strerror(errnum)) < 0)
                        msg = NULL;
                free(base);
        } else
                msg = base;

        e = calloc(1, sizeof(*e));
        if (!e) {
                free(msg);
                return ret;
        }
        e->errnum = errnum > 0 ? errnum : 0;
        e->kind = kind;
        e->msg = msg ? msg : strdup("out of memory while describing an error");
        *err = e;
        return ret;
}

int vmsup_fail(vmsup_error **err, enum vmsup_err_kind kind, int errnum, const char *fmt, ...) {
        va_list ap;
        int r;

        va_start(ap, fmt);
        r = vmsup_vfail(err, kind, errnum, fmt, ap);
        va_end(ap);
        return r;
}

int vmsup_error_prefix(vmsup_error **err, const char *fmt, ...) {
        char *prefix = NULL, *msg = NULL;
        va_list ap;

        if (!err || !*err)
                return -EINVAL;
        va_start(ap, fmt);
        if (vasprintf(&prefix, fmt, ap) < 0)
                prefix = NULL;
        va_end(ap);
        if (prefix && asprintf(&msg, "%s: %s", prefix, (*err)->msg) >= 0) {
                free((*err)->msg);
                (*err)->msg = msg;
        }
        free(prefix);
        return (*err)->errnum > 0 ? -(*err)->errnum : -EINVAL;
}

void vmsup_error_set_kind(vmsup_error **err, enum vmsup_err_kind kind) {
        if (err && *err)
                (*err)->kind = kind;
}

vmsup_error *vmsup_error_free(vmsup_error *err) {
        if (err) {
                free(err->msg);
                free(err);
        }
        return NULL;
}
