#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/util.h"
#include "supervisor/guestdirs.h"
#include "common/log.h"
#include "nova/tpmrules.h"
#include "cli/verbs.h"

/* How long `list` waits for all the supervisors together by default: a stuck one is
 * shown as not answering instead of holding the list. */
#define LIST_STATUS_TIMEOUT_MS 700

static void help(void) {
        printf("Usage: vmsup list [--json] [--timeout SECONDS]\n"
               "\n"
               "List every guest this host knows (each directory of [paths] state_dir): its\n"
               "state, supervisor pid, TPM version and model, secret security and uptime.\n"
               "States: running, paused, starting, stopping, rebooting, crashed (what its\n"
               "supervisor says; starting also while a 'vmsup run' holds the guest before its\n"
               "control socket listens); stopped (no supervisor); migrated-out (handed over to\n"
               "another host by a\n"
               "live migration whose outcome is unknown here: it must not run on this host\n"
               "until that is resolved, see vmsup(8), MIGRATION); incoming (being received\n"
               "from another host, or left by an incoming migration that did not complete);\n"
               "unconfirmed (received from another host, which did not confirm the\n"
               "hand-over: see vmsup(8), MIGRATION);\n"
               "not-answering (its supervisor did not answer in time: all are asked at once\n"
               "and waited for --timeout seconds in all, 0.7 by default).\n"
               "\n"
               "Exit status: 0; 66 the state dir cannot be read.\n");
}

struct row {
        char uuid[40];
        struct guest_dirs dirs;
        char *migrated_out, *incoming; /* the markers' first lines */
        struct vtpm_config tpm;
        bool tpm_known;
        char *name;
        json_object *status; /* the supervisor's answer */
        vmsup_error *why;    /* why there is none */
        pid_t starting;      /* no control socket yet, but this `vmsup run` holds the guest's lock */
};

pid_t verb_guest_starting(const struct guest_dirs *d) {
        pid_t pid = guest_dirs_lock_holder(d);
        char path[64], argv[4096];
        _cleanup_close_ int fd = -1;
        ssize_t n;

        if (pid <= 0)
                return 0;
        snprintf(path, sizeof(path), "/proc/%d/cmdline", (int) pid);
        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0 || (n = read(fd, argv, sizeof(argv) - 1)) <= 0)
                return 0;
        argv[n] = '\0';
        /* its verb among its arguments: delete and resize hold the lock of a stopped guest */
        for (ssize_t i = 0; i < n; i += (ssize_t) strlen(argv + i) + 1)
                if (streq(argv + i, "run"))
                        return pid;
        return 0;
}

static int by_uuid(const void *a, const void *b) {
        return strcmp(((const struct row *) a)->uuid, ((const struct row *) b)->uuid);
}

/* What the host's state dir holds for one guest (no supervisor asked yet). */
static void read_row(struct row *r, const struct host_config *cfg) {
        _cleanup_error_ vmsup_error *err = NULL;
        struct guest_spec spec = { 0 };

        if (guest_dirs_init(&r->dirs, cfg, r->uuid, &err) < 0)
                return;
        r->migrated_out = guest_dirs_stamp_read(r->dirs.migrated_out, &err);
        err = vmsup_error_free(err);
        r->incoming = guest_dirs_stamp_read(r->dirs.incoming, &err);
        err = vmsup_error_free(err);
        if (guest_spec_load(r->dirs.spec_copy, &spec, &err) == 0) {
                r->name = strdup(spec.name ? spec.name : "-");
                r->tpm_known = tpm_rules_resolve(&spec, &r->tpm, &err) == 0;
        }
        guest_spec_clear(&spec);
}

static const char *jstr(json_object *o, const char *key) {
        json_object *v;

        return o && json_object_object_get_ex(o, key, &v) && v ? json_object_get_string(v) : NULL;
}

static const char *state_of(const struct row *r) {
        if (r->migrated_out)
                return "migrated-out";
        if (r->incoming)
                return strncmp(r->incoming, GUEST_INCOMING_COMMITTED, strlen(GUEST_INCOMING_COMMITTED)) == 0
                               ? "unconfirmed"
                               : "incoming";
        if (r->status) {
                const char *q = jstr(r->status, "qemu_status"), *s = jstr(r->status, "state");

                /* an operator's pause shows as such */
                return s && streq(s, "running") && q && streq(q, "paused") ? "paused" : s ? s : "running";
        }
        if (r->starting)
                return "starting";
        return r->why && r->why->kind == VMSUP_ERR_NO_SUPERVISOR ? "stopped" : "not-answering";
}

/* The supervisor's pid from its answer, or its pid file when it did not answer. */
static long pid_of(const struct row *r) {
        _cleanup_error_ vmsup_error *err = NULL;
        _cleanup_free_ char *text = NULL;
        json_object *v;

        if (r->status && json_object_object_get_ex(r->status, "pid", &v))
                return json_object_get_int64(v);
        if (r->starting)
                return r->starting;
        if (r->why && r->why->kind == VMSUP_ERR_NO_SUPERVISOR)
                return 0;
        text = guest_dirs_stamp_read(r->dirs.pidfile, &err); /* its first line */
        return text ? strtol(text, NULL, 10) : 0;
}

static json_object *row_json(const struct row *r) {
        json_object *o = json_object_new_object(), *v;
        long pid = pid_of(r);

        json_object_object_add(o, "uuid", json_object_new_string(r->uuid));
        json_object_object_add(o, "name", r->name ? json_object_new_string(r->name) : NULL);
        json_object_object_add(o, "state", json_object_new_string(state_of(r)));
        json_object_object_add(o, "pid", pid > 0 ? json_object_new_int64(pid) : NULL);
        json_object_object_add(o, "tpm", r->tpm_known ? vtpm_config_to_json(&r->tpm) : NULL);
        json_object_object_add(o, "uptime_s",
                               r->status && json_object_object_get_ex(r->status, "uptime_s", &v) ? json_object_get(v) : NULL);
        json_object_object_add(o, "qemu_status",
                               jstr(r->status, "qemu_status") ? json_object_new_string(jstr(r->status, "qemu_status")) : NULL);
        json_object_object_add(o, "migrated_out", r->migrated_out ? json_object_new_string(r->migrated_out) : NULL);
        json_object_object_add(o, "incoming", r->incoming ? json_object_new_string(r->incoming) : NULL);
        if (!r->status && r->why && r->why->kind != VMSUP_ERR_NO_SUPERVISOR)
                json_object_object_add(o, "error", json_object_new_string(r->why->msg));
        return o;
}

static void print_row(const struct row *r) {
        char tpm[32] = "-", pid[24] = "-", up[48] = "-";
        json_object *v;
        long p = pid_of(r);

        if (r->tpm_known && r->tpm.present)
                snprintf(tpm, sizeof(tpm), "%s %s", tpm_version_to_string(r->tpm.version), tpm_model_to_string(r->tpm.model));
        else if (r->tpm_known)
                snprintf(tpm, sizeof(tpm), "none");
        if (p > 0)
                snprintf(pid, sizeof(pid), "%ld", p);
        if (r->status && json_object_object_get_ex(r->status, "uptime_s", &v) && v) {
                long s = (long) json_object_get_int64(v);

                snprintf(up, sizeof(up), s >= 86400 ? "%ldd%02ldh" : s >= 3600 ? "%ldh%02ldm" : "%ldm%02lds",
                         s >= 86400 ? s / 86400 : s >= 3600 ? s / 3600 : s / 60,
                         s >= 86400 ? s % 86400 / 3600 : s >= 3600 ? s % 3600 / 60 : s % 60);
        }
        printf("%-36s  %-16.16s  %-13s  %-7s  %-11s  %-10s  %s\n", r->uuid, r->name ? r->name : "-", state_of(r), pid,
               tpm, r->tpm_known && r->tpm.present ? secret_security_to_string(r->tpm.secret_security) : "-", up);
}

int verb_list(struct vmsup_ctx *ctx, int argc, char **argv) {
        static const struct option longopts[] = { { "json", no_argument, NULL, 'j' },
                                                   { "timeout", required_argument, NULL, 't' },
                                                   { "help", no_argument, NULL, 'h' }, {} };
        _cleanup_error_ vmsup_error *err = NULL;
        _cleanup_json_ json_object *req = json_object_new_object();
        int timeout_ms = LIST_STATUS_TIMEOUT_MS;
        struct row *rows = NULL;
        const char **paths = NULL;
        json_object **rets = NULL;
        vmsup_error **errs = NULL;
        size_t n = 0, cap = 0;
        bool json = false;
        DIR *dir;
        struct dirent *de;
        int c;

        while ((c = getopt_long(argc, argv, "jt:h", longopts, NULL)) != -1) {
                if (c == 'j')
                        json = true;
                else if (c == 't') {
                        char *end = NULL;
                        double s = strtod(optarg, &end);

                        if (!end || *end || end == optarg || !(s > 0 && s <= 600))
                                return verb_usage_error("list", "--timeout takes seconds (0.001 to 600), not '%s'",
                                                        optarg);
                        timeout_ms = (int) (s * 1000 + 0.5);
                        if (timeout_ms < 1)
                                timeout_ms = 1;
                } else if (c == 'h') {
                        help();
                        return 0;
                } else
                        return verb_usage_error("list", "bad option");
        }
        if (argc != optind)
                return verb_usage_error("list", "takes no arguments");
        if (vmsup_ctx_config(ctx, &err) < 0)
                return log_error_kind(err);
        dir = opendir(ctx->cfg.paths.state_dir);
        if (!dir && errno != ENOENT) {
                vmsup_fail(&err, VMSUP_ERR_NOT_FOUND, errno, "read the state dir '%s'", ctx->cfg.paths.state_dir);
                return log_error_kind(err);
        }
        while (dir && (de = readdir(dir))) {
                struct stat st;

                /* a guest is a directory named by its UUID (the state dir holds other files too) */
                if (!uuid_is_valid(de->d_name) || fstatat(dirfd(dir), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 ||
                    !S_ISDIR(st.st_mode))
                        continue;
                if (n == cap) {
                        struct row *more = realloc(rows, (cap = cap ? 2 * cap : 16) * sizeof(*rows));

                        if (!more) {
                                closedir(dir);
                                free(rows);
                                vmsup_fail(&err, VMSUP_ERR_SYSTEM, ENOMEM, "list");
                                return log_error_kind(err);
                        }
                        rows = more;
                }
                memset(&rows[n], 0, sizeof(rows[n]));
                snprintf(rows[n].uuid, sizeof(rows[n].uuid), "%.36s", de->d_name);
                n++;
        }
        if (dir)
                closedir(dir);
        if (n)
                qsort(rows, n, sizeof(*rows), by_uuid);
        paths = calloc(n + 1, sizeof(*paths));
        rets = calloc(n + 1, sizeof(*rets));
        errs = calloc(n + 1, sizeof(*errs));
        if (!paths || !rets || !errs) {
                vmsup_fail(&err, VMSUP_ERR_SYSTEM, ENOMEM, "list");
                goto out;
        }
        for (size_t i = 0; i < n; i++) {
                read_row(&rows[i], &ctx->cfg);
                paths[i] = rows[i].dirs.control ? rows[i].dirs.control : "";
        }
        /* every supervisor at once, within one bound */
        json_object_object_add(req, "cmd", json_object_new_string("status"));
        if (control_request_each(paths, n, req, timeout_ms, rets, errs) < 0) {
                vmsup_fail(&err, VMSUP_ERR_SYSTEM, ENOMEM, "list");
                goto out;
        }
        for (size_t i = 0; i < n; i++) {
                rows[i].status = rets[i];
                rows[i].why = errs[i];
                /* a supervisor still in its start (the vTPM secret, the TPM's manufacture)
                 * holds the guest's lock before its control socket listens */
                if (!rets[i] && errs[i] && errs[i]->kind == VMSUP_ERR_NO_SUPERVISOR)
                        rows[i].starting = verb_guest_starting(&rows[i].dirs);
        }
        if (json) {
                _cleanup_json_ json_object *a = json_object_new_array();

                for (size_t i = 0; i < n; i++)
                        json_object_array_add(a, row_json(&rows[i]));
                printf("%s\n", json_object_to_json_string_ext(a, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_NOSLASHESCAPE));
        } else {
                printf("%-36s  %-16s  %-13s  %-7s  %-11s  %-10s  %s\n", "UUID", "NAME", "STATE", "PID", "TPM", "SECRET",
                       "UPTIME");
                for (size_t i = 0; i < n; i++)
                        print_row(&rows[i]);
        }
out:
        for (size_t i = 0; i < n; i++) {
                guest_dirs_clear(&rows[i].dirs);
                free(rows[i].migrated_out);
                free(rows[i].incoming);
                free(rows[i].name);
                json_object_put(rows[i].status);
                vmsup_error_free(rows[i].why);
        }
        free(rows);
        free(paths);
        free(rets);
        free(errs);
        return err ? log_error_kind(err) : 0;
}
