/* The CLI verbs: one function each, in cli/verb_<name>.c. main() turns what they return
 * (a kind, common/error.h) into the exit status (cli/exitstatus.h). */
#ifndef VMSUP_CLI_VERBS_H
#define VMSUP_CLI_VERBS_H

#include <json-c/json.h>
#include <stdbool.h>

#include "supervisor/control.h"
#include "supervisor/guestdirs.h"
#include "supervisor/hostconfig.h"

struct vmsup_ctx {
        const char *config_path; /* from --config, NULL for the default */
        struct host_config cfg;
        bool cfg_loaded;
};

/* Load the host config once (the default path may be missing; an explicit one may not). */
int vmsup_ctx_config(struct vmsup_ctx *ctx, vmsup_error **err);

/* Send a request to the supervisor of guest uuid over its control socket. */
int vmsup_ctx_control(struct vmsup_ctx *ctx, const char *uuid, json_object *req, int timeout_ms, json_object **ret,
                      vmsup_error **err);

/* The same, passing the progress lines of a long request (migrate) to fn. */
int vmsup_ctx_control_progress(struct vmsup_ctx *ctx, const char *uuid, json_object *req, int timeout_ms,
                               control_progress_fn fn, void *userdata, json_object **ret, vmsup_error **err);

struct verb {
        const char *name;
        int (*run)(struct vmsup_ctx *ctx, int argc, char **argv); /* VMSUP_ERR_OK or its failure's kind */
        const char *summary;
};

int verb_validate(struct vmsup_ctx *ctx, int argc, char **argv);
int verb_traits(struct vmsup_ctx *ctx, int argc, char **argv);
int verb_qmp(struct vmsup_ctx *ctx, int argc, char **argv);
int verb_run(struct vmsup_ctx *ctx, int argc, char **argv);
int verb_delete(struct vmsup_ctx *ctx, int argc, char **argv);
int verb_tpm(struct vmsup_ctx *ctx, int argc, char **argv);
int verb_resume(struct vmsup_ctx *ctx, int argc, char **argv);
int verb_resize(struct vmsup_ctx *ctx, int argc, char **argv);
int verb_status(struct vmsup_ctx *ctx, int argc, char **argv);
int verb_list(struct vmsup_ctx *ctx, int argc, char **argv);
int verb_events(struct vmsup_ctx *ctx, int argc, char **argv);
int verb_stop(struct vmsup_ctx *ctx, int argc, char **argv);
int verb_console(struct vmsup_ctx *ctx, int argc, char **argv);
/* stop --all: timeout -1 for [supervisor] stop_timeout; each stop is waited for its
 * grace time plus margin_s (cli/verb_stop_all.c) */
/* The pid of a `vmsup run` that holds the guest's lock (/proc/locks) but may not listen
 * on its control socket yet (it is starting); 0 when none. */
pid_t verb_guest_starting(const struct guest_dirs *d);
int verb_stop_all(struct vmsup_ctx *ctx, long timeout, bool force, unsigned parallel, long margin_s);
int verb_reboot(struct vmsup_ctx *ctx, int argc, char **argv);
int verb_nic(struct vmsup_ctx *ctx, int argc, char **argv); /* nic add | nic remove */
int verb_secret(struct vmsup_ctx *ctx, int argc, char **argv); /* secret list */
int verb_seccomp(struct vmsup_ctx *ctx, int argc, char **argv);
int verb_migrate(struct vmsup_ctx *ctx, int argc, char **argv);
int verb_resolve(struct vmsup_ctx *ctx, int argc, char **argv); /* resolve --keep */
int verb_refused(struct vmsup_ctx *ctx, int argc, char **argv); /* rebuild, rescue, shelve, evacuate */

/* "HOST:PORT", "[V6ADDR]:PORT", "HOST", ":PORT" or "PORT" (a number alone) into a host
 * ("" when none) and a port (default_port when none). 0, or the kind of its failure. */
int verb_parse_host_port(const char *verb, const char *arg, const char *default_port, char **ret_host, char **ret_port);

/* Parse --token-fd's argument: an open file descriptor. 0, or VMSUP_ERR_USAGE. */
int verb_parse_token_fd(const char *verb, const char *arg, int *ret_fd);

/* Print "Try 'vmsup VERB --help'." and return VMSUP_ERR_USAGE. */
int verb_usage_error(const char *verb, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
