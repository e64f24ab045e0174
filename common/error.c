#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"

int vmsup_vfail(vmsup_error **err, int exit_code, int errnum, const char *fmt, va_list ap) {
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
        e->exit_code = exit_code;
        e->msg = msg ? msg : strdup("out of memory while describing an error");
        *err = e;
        return ret;
}

int vmsup_fail(vmsup_error **err, int exit_code, int errnum, const char *fmt, ...) {
        va_list ap;
        int r;

        va_start(ap, fmt);
        r = vmsup_vfail(err, exit_code, errnum, fmt, ap);
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

void vmsup_error_set_exit(vmsup_error **err, int exit_code) {
        if (err && *err)
                (*err)->exit_code = exit_code;
}

vmsup_error *vmsup_error_free(vmsup_error *err) {
        if (err) {
                free(err->msg);
                free(err);
        }
        return NULL;
}
