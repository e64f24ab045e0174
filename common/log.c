#include "config.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "common/log.h"

static char guest[37];
static enum log_level max_level = LOG_LEVEL_INFO;

void log_set_guest(const char *uuid) {
        snprintf(guest, sizeof(guest), "%s", uuid ? uuid : "");
}

void log_set_level(enum log_level level) {
        max_level = level;
}

void log_msg(enum log_level level, const char *fmt, ...) {
        static const char *const names[] = { "error", "warning", "info", "debug" };
        char line[4096];
        va_list ap;
        int n;

        if (level > max_level)
                return;
        if (guest[0])
                n = snprintf(line, sizeof(line), "vmsup[%s]: %s: ", guest, names[level]);
        else
                n = snprintf(line, sizeof(line), "vmsup: %s: ", names[level]);
        va_start(ap, fmt);
        vsnprintf(line + n, sizeof(line) - (size_t) n, fmt, ap);
        va_end(ap);
        /* one write per line, so lines from several processes do not interleave */
        fprintf(stderr, "%s\n", line);
}

enum vmsup_err_kind log_error_kind(const vmsup_error *err) {
        if (!err) {
                log_error("internal error: a failure without an explanation");
                return VMSUP_ERR_INTERNAL;
        }
        log_error("%s", err->msg);
        return err->kind != VMSUP_ERR_OK ? err->kind : VMSUP_ERR_INTERNAL;
}
