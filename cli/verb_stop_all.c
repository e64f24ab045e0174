#include "config.h"

/* `vmsup stop --all`: every guest that runs under vmsup on this host stopped as `vmsup
 * stop UUID` does, a few at a time, for a host's shutdown (what libvirt-guests does for
 * libvirt). One poll loop over the control sockets (control_request_window()): no
 * threads, no child per guest. A guest counts as down once its supervisor has answered
 * the stop and exited (its pidfd), the TPM state sealed by then. */

#include <dirent.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "common/log.h"
#include "common/util.h"
#include "supervisor/guestdirs.h"
#include "cli/verbs.h"

/* the supervisors' answers to status, all at once */
#define STATUS_TIMEOUT_MS 5000
/* between a supervisor's answer to stop and its exit: the teardown, no guest left */
#define EXIT_TIMEOUT_MS 60000

struct target {
        char uuid[40];
        char *name;
        struct guest_dirs dirs;
        pid_t pid;    /* the supervisor's (from its status); 0: unknown */
        int pidfd;    /* -1: none */
        bool starting; /* its supervisor was still starting (no control socket): sent SIGTERM */
        bool forced;  /* the reply says what had to be done beyond the power button */
        bool stopped; /* the reply said stopped */
        vmsup_error *why;
};

struct run {
        struct target *t;
        size_t n;
        size_t *asked; /* the targets asked over their control sockets, in the window's order */
        size_t graceful, forced, failed;
        bool force;
        long wait_s; /* how long each stop is waited for */
};

static void on_stopped(void *userdata, size_t k, json_object *ret, vmsup_error *err) {
        struct run *r = userdata;
        struct target *t = &r->t[r->asked[k]];
        const char *text = ret && json_object_is_type(ret, json_type_string) ? json_object_get_string(ret) : "stopped";

        if (err && err->kind == VMSUP_ERR_TIMEOUT)
                vmsup_error_prefix(&err, "the guest did not stop within %ld s (it may still be stopping: see its "
                                         "supervisor's log)", r->wait_s);
        if (err) {
                /* no supervisor by now: the guest ended between our status and our stop */
                if (err->kind == VMSUP_ERR_NO_SUPERVISOR) {
                        t->stopped = true;
                        printf("%s (%s): stopped (its supervisor was gone already)\n", t->uuid, t->name);
                } else
                        printf("%s (%s): failed: %s\n", t->uuid, t->name, err->msg);
                fflush(stdout);
                return;
        }
        t->stopped = true;
        t->forced = r->force || !streq(text, "stopped");
        printf("%s (%s): %s\n", t->uuid, t->name, text);
        fflush(stdout);
}

/* The supervisors that answered the stop (or were sent SIGTERM) are waited for until they
 * have exited, up to timeout_ms. */
static void wait_exits(struct run *r, long timeout_ms) {
        _cleanup_free_ struct pollfd *p = calloc(r->n ? r->n : 1, sizeof(*p));
        long deadline = monotonic_ms() + timeout_ms;
        size_t left;

        if (!p)
                return;
        for (;;) {
                long now = monotonic_ms();

                left = 0;
                for (size_t i = 0; i < r->n; i++)
                        p[i] = (struct pollfd) { .fd = r->t[i].stopped ? r->t[i].pidfd : -1, .events = POLLIN };
                for (size_t i = 0; i < r->n; i++)
                        left += p[i].fd >= 0;
                if (!left || now >= deadline)
                        break;
                if (poll(p, r->n, (int) (deadline - now)) < 0 && errno != EINTR)
                        break;
                for (size_t i = 0; i < r->n; i++)
                        if (p[i].fd >= 0 && p[i].revents)
                                closep(&r->t[i].pidfd);
        }
        for (size_t i = 0; i < r->n; i++)
                if (r->t[i].stopped && r->t[i].pidfd >= 0) {
                        r->t[i].stopped = false;
                        vmsup_fail(&r->t[i].why, VMSUP_ERR_TIMEOUT, 0,
                                   r->t[i].starting ? "its supervisor (pid %d) was sent SIGTERM while it started, "
                                                      "and had not exited %ld s later"
                                                    : "its supervisor (pid %d) answered that the guest stopped but "
                                                      "had not exited %ld s later",
                                   (int) r->t[i].pid, timeout_ms / 1000);
                }
}

/* The guests this host knows (as `vmsup list`: a directory of the state dir named by
 * its UUID; the guest's lock is on it). */
static int find_guests(const struct host_config *cfg, struct run *r, vmsup_error **err) {
        DIR *dir = opendir(cfg->paths.state_dir);
        struct dirent *de;
        size_t cap = 0;

        if (!dir)
                return errno == ENOENT ? 0 : vmsup_fail(err, VMSUP_ERR_NOT_FOUND, errno, "read the state dir '%s'",
                                                        cfg->paths.state_dir);
        while ((de = readdir(dir))) {
                struct target *t;
                struct stat st;

                if (!uuid_is_valid(de->d_name) || fstatat(dirfd(dir), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 ||
                    !S_ISDIR(st.st_mode))
                        continue;
                if (r->n == cap) {
                        struct target *more = realloc(r->t, (cap = cap ? 2 * cap : 16) * sizeof(*r->t));

                        if (!more) {
                                closedir(dir);
                                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "stop --all");
                        }
                        r->t = more;
                }
                t = &r->t[r->n++];
                *t = (struct target) { .pidfd = -1 };
                snprintf(t->uuid, sizeof(t->uuid), "%.36s", de->d_name);
                if (guest_dirs_init(&t->dirs, cfg, t->uuid, err) < 0) {
                        closedir(dir);
                        return -ENOMEM;
                }
        }
        closedir(dir);
        return 0;
}

static int by_uuid(const void *a, const void *b) {
        return strcmp(((const struct target *) a)->uuid, ((const struct target *) b)->uuid);
}

static void clear(struct run *r) {
        for (size_t i = 0; i < r->n; i++) {
                guest_dirs_clear(&r->t[i].dirs);
                free(r->t[i].name);
                closep(&r->t[i].pidfd);
                vmsup_error_free(r->t[i].why);
        }
        free(r->t);
        free(r->asked);
}

int verb_stop_all(struct vmsup_ctx *ctx, long timeout, bool force, unsigned parallel, long margin_s) {
        _cleanup_error_ vmsup_error *err = NULL;
        _cleanup_json_ json_object *status = json_object_new_object(), *stop = json_object_new_object();
        struct run r = { .force = force };
        const char **paths = NULL;
        json_object **rets = NULL;
        vmsup_error **errs = NULL;
        size_t m = 0, k = 0;

        if (vmsup_ctx_config(ctx, &err) < 0)
                return log_error_kind(err);
        if (timeout < 0 && !force)
                timeout = ctx->cfg.supervisor.stop_timeout;
        if (find_guests(&ctx->cfg, &r, &err) < 0)
                goto out;
        if (r.n)
                qsort(r.t, r.n, sizeof(*r.t), by_uuid);
        paths = calloc(r.n + 1, sizeof(*paths));
        rets = calloc(r.n + 1, sizeof(*rets));
        errs = calloc(r.n + 1, sizeof(*errs));
        r.asked = calloc(r.n + 1, sizeof(*r.asked));
        if (!paths || !rets || !errs || !r.asked) {
                vmsup_fail(&err, VMSUP_ERR_SYSTEM, ENOMEM, "stop --all");
                goto out;
        }
        /* which guests run: their supervisors say so, and who they are (their pids) */
        for (size_t i = 0; i < r.n; i++)
                paths[i] = r.t[i].dirs.control;
        json_object_object_add(status, "cmd", json_object_new_string("status"));
        if (control_request_each(paths, r.n, status, STATUS_TIMEOUT_MS, rets, errs) < 0) {
                vmsup_fail(&err, VMSUP_ERR_SYSTEM, ENOMEM, "stop --all");
                goto out;
        }
        for (size_t i = 0; i < r.n; i++) {
                json_object *v;
                struct target t = r.t[i];

                if (errs[i] && errs[i]->kind == VMSUP_ERR_NO_SUPERVISOR) {
                        /* not running: nothing to stop; or still starting (fetching its
                         * secret, making its TPM): SIGTERM abandons the start, as
                         * systemd's stop would */
                        t.pid = verb_guest_starting(&t.dirs);
                        t.pidfd = t.pid > 0 ? (int) syscall(SYS_pidfd_open, t.pid, 0) : -1;
                        if (t.pidfd < 0) {
                                guest_dirs_clear(&r.t[i].dirs);
                                errs[i] = vmsup_error_free(errs[i]);
                                continue;
                        }
                        t.starting = true;
                }
                /* one that does not answer its status is asked to stop all the same */
                t.name = strdup(rets[i] && json_object_object_get_ex(rets[i], "name", &v) && v ? json_object_get_string(v)
                                                                                             : "?");
                if (rets[i] && json_object_object_get_ex(rets[i], "pid", &v))
                        t.pid = (pid_t) json_object_get_int(v);
                if (t.pid > 0 && !t.starting)
                        t.pidfd = (int) syscall(SYS_pidfd_open, t.pid, 0); /* close-on-exec */
                json_object_put(rets[i]);
                rets[i] = NULL;
                errs[i] = vmsup_error_free(errs[i]);
                r.t[m++] = t;
        }
        r.n = m;
        if (r.n == 0) {
                printf("no guest runs under vmsup on this host\n");
                goto out;
        }
        if (force)
                printf("stopping %zu guest%s at once (forced: QEMU is told to quit), %u at a time\n", r.n,
                       r.n == 1 ? "" : "s", parallel);
        else
                printf("stopping %zu guest%s, %u at a time: each gets %ld s to power off, then QEMU is told to quit\n",
                       r.n, r.n == 1 ? "" : "s", parallel, timeout);
        fflush(stdout);
        for (size_t i = 0; i < r.n; i++) {
                struct target *t = &r.t[i];

                /* no control socket to ask: the signal, through its pidfd (no pid reuse) */
                if (t->starting) {
                        if (syscall(SYS_pidfd_send_signal, t->pidfd, SIGTERM, NULL, 0) < 0 && errno != ESRCH)
                                vmsup_fail(&t->why, VMSUP_ERR_SYSTEM, errno, "send its starting supervisor (pid %d) SIGTERM",
                                           (int) t->pid);
                        else {
                                t->stopped = true;
                                printf("%s (%s): starting: its supervisor (pid %d) was sent SIGTERM to abandon the start\n",
                                       t->uuid, t->name, (int) t->pid);
                        }
                        continue;
                }
                r.asked[k] = i;
                paths[k++] = t->dirs.control;
        }
        fflush(stdout);
        json_object_object_add(stop, "cmd", json_object_new_string("stop"));
        json_object_object_add(stop, "force", json_object_new_boolean(force));
        if (!force)
                json_object_object_add(stop, "timeout", json_object_new_int((int) timeout));
        r.wait_s = (force ? 0 : timeout) + margin_s;
        if (control_request_window(paths, k, stop, parallel, (int) r.wait_s * 1000, on_stopped, &r, rets, errs) < 0) {
                vmsup_fail(&err, VMSUP_ERR_SYSTEM, ENOMEM, "stop --all");
                goto out;
        }
        for (size_t j = 0; j < k; j++) {
                if (errs[j] && errs[j]->kind != VMSUP_ERR_NO_SUPERVISOR)
                        r.t[r.asked[j]].why = TAKE_PTR(errs[j]);
                vmsup_error_free(errs[j]);
                json_object_put(rets[j]);
        }
        /* a starting supervisor that got past its start before our SIGTERM stops its guest
         * with [supervisor] stop_timeout */
        wait_exits(&r, EXIT_TIMEOUT_MS + (k < r.n ? (long) (ctx->cfg.supervisor.stop_timeout + margin_s) * 1000 : 0));
        for (size_t i = 0; i < r.n; i++) {
                if (r.t[i].why)
                        r.failed++;
                else if (r.t[i].forced)
                        r.forced++;
                else
                        r.graceful++;
        }
        printf("stopped %zu guest%s: %zu gracefully, %zu forced, %zu failed\n", r.graceful + r.forced,
               r.graceful + r.forced == 1 ? "" : "s", r.graceful, r.forced, r.failed);
        for (size_t i = 0; i < r.n; i++)
                if (r.t[i].why)
                        printf("failed: %s (%s): %s\n", r.t[i].uuid, r.t[i].name, r.t[i].why->msg);
out:
        clear(&r);
        free(paths);
        free(rets);
        free(errs);
        if (err)
                return log_error_kind(err);
        return r.failed ? VMSUP_ERR_FAILED : 0;
}
