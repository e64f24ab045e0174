/* The only place vmsup writes log lines: stderr, with a prefix naming the guest. */
#ifndef VMSUP_COMMON_LOG_H
#define VMSUP_COMMON_LOG_H

#include "common/error.h"

enum log_level { LOG_LEVEL_ERROR, LOG_LEVEL_WARNING, LOG_LEVEL_INFO, LOG_LEVEL_DEBUG };

/* Lines read "vmsup: error: ..." or, once a guest is known, "vmsup[<uuid>]: error: ...".
 * When stderr is the journal's stream (JOURNAL_STREAM names its device and inode), each
 * line starts with its syslog priority for journald: <3> error, <4> warning, <6> info,
 * <7> debug. */
void log_set_guest(const char *uuid);
void log_set_level(enum log_level level);
void log_msg(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_error(...) log_msg(LOG_LEVEL_ERROR, __VA_ARGS__)
#define log_warning(...) log_msg(LOG_LEVEL_WARNING, __VA_ARGS__)
#define log_info(...) log_msg(LOG_LEVEL_INFO, __VA_ARGS__)
#define log_debug(...) log_msg(LOG_LEVEL_DEBUG, __VA_ARGS__)

/* Log the error where it ends and return its kind (VMSUP_ERR_INTERNAL when it has none),
 * which the command line turns into the exit status. */
enum vmsup_err_kind log_error_kind(const vmsup_error *err);
#define log_error_exit log_error_kind /* TEMPORARY alias (issue 15): use log_error_kind */

#endif
