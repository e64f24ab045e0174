#include "config.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/log.h"

static char guest[37];
static enum log_level max_level = LOG_LEVEL_INFO;
static int to_journal = -1; /* -1: not looked at yet */

/* sd-daemon's convention (systemd.exec(5), JOURNAL_STREAM): systemd sets
 * JOURNAL_STREAM=DEV:INODE for a service whose stderr is a stream to the journal; only
 * when our stderr is still that very stream (not redirected since, nor inherited by a
 * program run from a shell in the unit) does a "<N>" prefix reach journald as the line's
 * priority instead of landing in a file as text. */
static bool stderr_is_journal(void) {
        const char *e = getenv("JOURNAL_STREAM");
        unsigned long long dev, ino;
        struct stat st;
        int n = 0;

        if (!e || sscanf(e, "%llu:%llu%n", &dev, &ino, &n) != 2 || e[n] != '\0')
                return false;
        if (fstat(STDERR_FILENO, &st) < 0)
                return false;
        return (unsigned long long) st.st_dev == dev && (unsigned long long) st.st_ino == ino;
}

void log_set_guest(const char *uuid) {
        snprintf(guest, sizeof(guest), "%s", uuid ? uuid : "");
}

void log_set_level(enum log_level level) {
        max_level = level;
}

void log_msg(enum log_level level, const char *fmt, ...) {
        static const char *const names[] = { "error", "warning", "info", "debug" };
        /* syslog's LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG */
        static const char *const priorities[] = { "<3>", "<4>", "<6>", "<7>" };
        char line[4096];
        va_list ap;
        int n;

        if (level > max_level)
                return;
        if (to_journal < 0)
                to_journal = stderr_is_journal();
        /* journald stamps each line itself; we add no time of our own either way */
        if (guest[0])
                n = snprintf(line, sizeof(line), "%svmsup[%s]: %s: ", to_journal ? priorities[level] : "", guest,
                             names[level]);
        else
                n = snprintf(line, sizeof(line), "%svmsup: %s: ", to_journal ? priorities[level] : "", names[level]);
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
