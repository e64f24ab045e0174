#include "config.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/evloop.h"
#include "common/util.h"

/* Nothing here should take long; a loop that waits forever fails its test instead of hanging. */
TestSuite(evloop, .timeout = 120);

/* What the callbacks saw, in order: one letter or number per call. */
static char trail[4096];

static void note(const char *what) {
        cr_assert_lt(strlen(trail) + strlen(what), sizeof(trail) - 1);
        strcat(trail, what);
}

static struct evloop *new_loop(void) {
        struct evloop *l = NULL;
        vmsup_error *err = NULL;

        cr_assert_eq(evloop_new(&l, &err), 0, "%s", err ? err->msg : "");
        return l;
}

static int iterate(struct evloop *l, int max_wait_ms) {
        vmsup_error *err = NULL;
        int r = evloop_iterate(l, max_wait_ms, &err);

        cr_assert_geq(r, 0, "%s", err ? err->msg : "");
        return r;
}

/* A pipe whose read end is readable. */
static void ready_pipe(int p[2]) {
        cr_assert_eq(pipe2(p, O_CLOEXEC | O_NONBLOCK), 0);
        cr_assert_eq(write(p[1], "x", 1), 1);
}

/* ---- fd sources -------------------------------------------------------------------- */

struct io_seen {
        int calls;
        int fd;
        uint32_t revents;
};

static void on_io(struct evloop_source *s, int fd, uint32_t revents, void *userdata) {
        struct io_seen *seen = userdata;

        (void) s;
        seen->calls++;
        seen->fd = fd;
        seen->revents = revents;
}

Test(evloop, fd_source_reports_readable_and_writable_as_its_mask_changes) {
        _cleanup_evloop_ struct evloop *l = new_loop();
        struct evloop_source *s = NULL;
        struct io_seen seen = { 0 };
        vmsup_error *err = NULL;
        int sp[2];
        char c;

        cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sp), 0);
        cr_assert_eq(evloop_add_io(l, sp[0], EPOLLIN, on_io, &seen, &s, &err), 0, "%s", err ? err->msg : "");
        cr_assert_eq(evloop_source_fd(s), sp[0]);
        cr_assert_eq(iterate(l, 0), 0, "nothing to read yet");

        cr_assert_eq(write(sp[1], "a", 1), 1);
        cr_assert_eq(iterate(l, 10000), 1);
        cr_assert_eq(seen.calls, 1);
        cr_assert_eq(seen.fd, sp[0]);
        cr_assert_eq(seen.revents, EPOLLIN);

        /* as QMP does with qmp_client_epoll_events(): now it also has something to write */
        cr_assert_eq(evloop_io_set_events(s, EPOLLIN | EPOLLOUT, &err), 0, "%s", err ? err->msg : "");
        cr_assert_eq(iterate(l, 10000), 1);
        cr_assert_eq(seen.revents, EPOLLIN | EPOLLOUT);
        cr_assert_eq(read(sp[0], &c, 1), 1);
        cr_assert_eq(iterate(l, 10000), 1);
        cr_assert_eq(seen.revents, EPOLLOUT);

        /* 0: not watched at all, not even for a hang-up */
        cr_assert_eq(evloop_io_set_events(s, 0, &err), 0);
        close(sp[1]);
        cr_assert_eq(iterate(l, 0), 0);
        cr_assert_eq(seen.calls, 3);
        cr_assert_eq(evloop_io_set_events(s, EPOLLIN, &err), 0, "%s", err ? err->msg : "");
        cr_assert_eq(iterate(l, 10000), 1);
        cr_assert(seen.revents & EPOLLHUP, "a hang-up is reported though only EPOLLIN was asked for");

        evloop_source_remove(s);
        close(sp[0]);
}

Test(evloop, a_bad_fd_is_refused_with_its_number) {
        _cleanup_evloop_ struct evloop *l = new_loop();
        struct io_seen seen = { 0 };
        vmsup_error *err = NULL;
        char want[64];
        int fd;

        fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
        close(fd);
        cr_assert_lt(evloop_add_io(l, fd, EPOLLIN, on_io, &seen, NULL, &err), 0);
        snprintf(want, sizeof(want), "watch fd %d: epoll_ctl: Bad file descriptor", fd);
        cr_assert_str_eq(err->msg, want);
        cr_assert_eq(err->kind, VMSUP_ERR_SYSTEM);
        vmsup_error_free(err);
}

/* Two sources ready in the same round; the callback that runs first removes (or mutes)
 * the other, whose pending event must then not be dispatched. */
struct pair {
        struct evloop_source *src[2];
        int calls[2];
        bool mute; /* set its events to 0 rather than remove it */
};

static void on_pair(struct evloop_source *s, int fd, uint32_t revents, void *userdata) {
        struct pair *p = userdata;
        int me = s == p->src[0] ? 0 : 1;

        (void) fd;
        (void) revents;
        p->calls[me]++;
        if (p->mute)
                cr_assert_eq(evloop_io_set_events(p->src[1 - me], 0, NULL), 0);
        else
                p->src[1 - me] = evloop_source_remove(p->src[1 - me]);
}

static void run_pair(bool mute) {
        _cleanup_evloop_ struct evloop *l = new_loop();
        struct pair p = { .mute = mute };
        int a[2], b[2];

        ready_pipe(a);
        ready_pipe(b);
        /* hung up too: EPOLLHUP is reported even to a source that asked for nothing */
        close(a[1]);
        close(b[1]);
        a[1] = b[1] = -1;
        cr_assert_eq(evloop_add_io(l, a[0], EPOLLIN, on_pair, &p, &p.src[0], NULL), 0);
        cr_assert_eq(evloop_add_io(l, b[0], EPOLLIN, on_pair, &p, &p.src[1], NULL), 0);
        /* both are ready before the round starts: epoll reports both in one go */
        cr_assert_eq(iterate(l, 10000), 1);
        cr_assert_eq(p.calls[0] + p.calls[1], 1, "a=%d b=%d", p.calls[0], p.calls[1]);
        cr_assert_eq(iterate(l, 0), 1, "the survivor is still ready");
        cr_assert_eq(p.calls[0] + p.calls[1], 2);
        cr_assert(p.calls[0] == 2 || p.calls[1] == 2, "only the survivor ran again");
        evloop_source_remove(p.src[0]);
        evloop_source_remove(p.src[1]);
        close(a[0]);
        close(b[0]);
}

Test(evloop, removing_another_ready_source_in_a_callback_drops_its_pending_event) {
        run_pair(false);
}

Test(evloop, muting_another_ready_source_in_a_callback_drops_its_pending_event) {
        run_pair(true);
}

/* Both ends of a socketpair are readable and writable; the callback that runs first stops
 * the other from waiting for EPOLLOUT, which then must not get its pending EPOLLOUT. */
struct narrow {
        struct evloop_source *src[2];
        uint32_t revents[2];
        int calls[2];
};

static void on_narrow(struct evloop_source *s, int fd, uint32_t revents, void *userdata) {
        struct narrow *nw = userdata;
        int me = s == nw->src[0] ? 0 : 1;

        (void) fd;
        nw->calls[me]++;
        nw->revents[me] = revents;
        if (nw->calls[1 - me] == 0)
                cr_assert_eq(evloop_io_set_events(nw->src[1 - me], EPOLLIN, NULL), 0);
}

Test(evloop, narrowing_another_sources_events_in_a_callback_filters_its_pending_event) {
        _cleanup_evloop_ struct evloop *l = new_loop();
        struct narrow nw = { 0 };
        int sp[2];

        cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sp), 0);
        cr_assert_eq(write(sp[0], "a", 1), 1);
        cr_assert_eq(write(sp[1], "b", 1), 1);
        cr_assert_eq(evloop_add_io(l, sp[0], EPOLLIN | EPOLLOUT, on_narrow, &nw, &nw.src[0], NULL), 0);
        cr_assert_eq(evloop_add_io(l, sp[1], EPOLLIN | EPOLLOUT, on_narrow, &nw, &nw.src[1], NULL), 0);
        cr_assert_eq(iterate(l, 10000), 2);
        cr_assert_eq(nw.calls[0], 1);
        cr_assert_eq(nw.calls[1], 1);
        /* whichever ran first saw both; the other only what it still waits for */
        cr_assert((nw.revents[0] == (EPOLLIN | EPOLLOUT) && nw.revents[1] == EPOLLIN) ||
                          (nw.revents[1] == (EPOLLIN | EPOLLOUT) && nw.revents[0] == EPOLLIN),
                  "revents 0x%x and 0x%x", nw.revents[0], nw.revents[1]);
        evloop_source_remove(nw.src[0]);
        evloop_source_remove(nw.src[1]);
        close(sp[0]);
        close(sp[1]);
}

static void on_io_remove_self(struct evloop_source *s, int fd, uint32_t revents, void *userdata) {
        int *calls = userdata;

        (void) revents;
        (*calls)++;
        cr_assert_eq(evloop_source_remove(s), NULL);
        /* the fd is ours again: closing it now must not trouble the loop */
        close(fd);
}

Test(evloop, a_source_removes_itself_and_closes_its_fd_in_its_callback) {
        _cleanup_evloop_ struct evloop *l = new_loop();
        int p[2], calls = 0;

        ready_pipe(p);
        cr_assert_eq(evloop_add_io(l, p[0], EPOLLIN, on_io_remove_self, &calls, NULL, NULL), 0);
        cr_assert_eq(iterate(l, 10000), 1);
        cr_assert_eq(calls, 1);
        close(p[1]);
        /* no source left */
        vmsup_error *err = NULL;
        cr_assert_lt(evloop_iterate(l, -1, &err), 0);
        cr_assert_eq(err->errnum, EDEADLK);
        vmsup_error_free(err);
}

/* Remove a ready source and add a new one on the same fd within the round: the stale event
 * is not given to the new source, whose callback differs. */
struct replace {
        struct evloop_source *victim;
        int fd;
        int new_calls, old_calls;
};

static void on_replaced(struct evloop_source *s, int fd, uint32_t revents, void *userdata) {
        struct replace *r = userdata;

        (void) s;
        (void) fd;
        (void) revents;
        r->old_calls++;
}

static void on_replacement(struct evloop_source *s, int fd, uint32_t revents, void *userdata) {
        struct replace *r = userdata;

        (void) s;
        (void) fd;
        (void) revents;
        r->new_calls++;
}

static void on_replacer(struct evloop_source *s, int fd, uint32_t revents, void *userdata) {
        struct replace *r = userdata;

        (void) fd;
        (void) revents;
        if (r->victim) {
                r->victim = evloop_source_remove(r->victim);
                cr_assert_eq(evloop_add_io(evloop_source_loop(s), r->fd, EPOLLIN, on_replacement, r, NULL, NULL), 0);
        }
}

Test(evloop, a_source_replaced_within_a_round_does_not_inherit_its_pending_event) {
        _cleanup_evloop_ struct evloop *l = new_loop();
        struct replace r = { 0 };
        struct evloop_source *replacer = NULL;
        int a[2], b[2];

        ready_pipe(a);
        ready_pipe(b);
        r.fd = b[0];
        cr_assert_eq(evloop_add_io(l, a[0], EPOLLIN, on_replacer, &r, &replacer, NULL), 0);
        cr_assert_eq(evloop_add_io(l, b[0], EPOLLIN, on_replaced, &r, &r.victim, NULL), 0);
        iterate(l, 10000);
        /* epoll may have reported b before a: then the old one ran first, legitimately */
        cr_assert_leq(r.old_calls, 1);
        cr_assert_eq(r.new_calls, 0, "the new source got the old one's event of this round");
        cr_assert_null(r.victim);
        iterate(l, 10000);
        cr_assert_eq(r.new_calls, 1);
        evloop_source_remove(replacer);
}

/* ---- signal sources ---------------------------------------------------------------- */

struct sig_seen {
        int calls;
        uint32_t signo;
        uint32_t pid;
        int32_t code;
};

static void on_signal(struct evloop_source *s, const struct signalfd_siginfo *si, void *userdata) {
        struct sig_seen *seen = userdata;

        (void) s;
        seen->calls++;
        seen->signo = si->ssi_signo;
        seen->pid = si->ssi_pid;
        seen->code = si->ssi_code;
}

Test(evloop, sigusr1_to_self_arrives_through_the_signal_source_with_its_siginfo) {
        _cleanup_evloop_ struct evloop *l = new_loop();
        struct sig_seen seen = { 0 };
        vmsup_error *err = NULL;
        sigset_t set, blocked;

        sigemptyset(&set);
        sigaddset(&set, SIGUSR1);
        sigaddset(&set, SIGUSR2);
        cr_assert_eq(evloop_add_signal(l, &set, on_signal, &seen, NULL, &err), 0, "%s", err ? err->msg : "");
        cr_assert_eq(sigprocmask(SIG_BLOCK, NULL, &blocked), 0);
        cr_assert(sigismember(&blocked, SIGUSR1) && sigismember(&blocked, SIGUSR2), "the loop blocks its signals");

        /* the default action would end this process if the signal were not blocked */
        cr_assert_eq(kill(getpid(), SIGUSR1), 0);
        cr_assert_eq(iterate(l, 10000), 1);
        cr_assert_eq(seen.calls, 1);
        cr_assert_eq(seen.signo, SIGUSR1);
        cr_assert_eq(seen.pid, (uint32_t) getpid());
        cr_assert_eq(seen.code, SI_USER);

        /* two different signals pending: both delivered in one round */
        cr_assert_eq(kill(getpid(), SIGUSR2), 0);
        cr_assert_eq(kill(getpid(), SIGUSR1), 0);
        cr_assert_eq(iterate(l, 10000), 2);
        cr_assert_eq(seen.calls, 3);
}

Test(evloop, a_signal_taken_by_another_source_or_uncatchable_is_refused) {
        _cleanup_evloop_ struct evloop *l = new_loop();
        struct sig_seen seen = { 0 };
        struct evloop_source *s = NULL;
        vmsup_error *err = NULL;
        sigset_t set;

        sigemptyset(&set);
        sigaddset(&set, SIGTERM);
        cr_assert_eq(evloop_add_signal(l, &set, on_signal, &seen, &s, &err), 0, "%s", err ? err->msg : "");
        sigaddset(&set, SIGINT);
        cr_assert_lt(evloop_add_signal(l, &set, on_signal, &seen, NULL, &err), 0);
        cr_assert_str_eq(err->msg, "watch SIGTERM: another source has it: File exists", "%s", err->msg);
        err = vmsup_error_free(err);

        /* once its source is gone, the signal can be taken again */
        evloop_source_remove(s);
        cr_assert_eq(evloop_add_signal(l, &set, on_signal, &seen, NULL, &err), 0, "%s", err ? err->msg : "");

        sigemptyset(&set);
        sigaddset(&set, SIGKILL);
        cr_assert_lt(evloop_add_signal(l, &set, on_signal, &seen, NULL, &err), 0);
        cr_assert_str_eq(err->msg, "watch SIGKILL: it cannot be caught: Invalid argument", "%s", err->msg);
        err = vmsup_error_free(err);

        sigemptyset(&set);
        cr_assert_lt(evloop_add_signal(l, &set, on_signal, &seen, NULL, &err), 0);
        cr_assert_str_eq(err->msg, "watch signals: the set is empty: Invalid argument", "%s", err->msg);
        vmsup_error_free(err);
}

static volatile sig_atomic_t alarm_seen;

static void on_alarm(int sig) {
        (void) sig;
        alarm_seen = 1;
}

Test(evloop, an_interrupted_wait_is_a_round_without_events_not_an_error) {
        _cleanup_evloop_ struct evloop *l = new_loop();
        struct sigaction sa = { .sa_handler = on_alarm }; /* no SA_RESTART: epoll_wait never restarts anyway */
        struct itimerval it = { .it_value = { .tv_usec = 20000 } };
        struct io_seen seen = { 0 };
        int p[2];

        cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
        cr_assert_eq(sigaction(SIGALRM, &sa, NULL), 0);
        cr_assert_eq(evloop_add_io(l, p[0], EPOLLIN, on_io, &seen, NULL, NULL), 0);
        cr_assert_eq(setitimer(ITIMER_REAL, &it, NULL), 0);
        /* nothing will ever be ready: only the signal ends this wait */
        cr_assert_eq(iterate(l, -1), 0);
        cr_assert_eq(alarm_seen, 1);
        cr_assert_eq(seen.calls, 0);
}

/* ---- child sources ----------------------------------------------------------------- */

struct child_seen {
        int calls;
        pid_t pid;
        siginfo_t info;
        bool reap;
};

static void on_child(struct evloop_source *s, pid_t pid, void *userdata) {
        struct child_seen *seen = userdata;

        seen->calls++;
        seen->pid = pid;
        if (seen->reap)
                cr_assert_eq(waitid(P_PIDFD, (id_t) evloop_source_fd(s), &seen->info, WEXITED | WNOHANG), 0,
                             "%s", strerror(errno));
}

/* A child that exits with status; with hold, once the parent closes hold[1]. */
static pid_t fork_exit(int status, const int *hold) {
        pid_t pid = fork();

        cr_assert_geq(pid, 0);
        if (pid == 0) {
                char c;

                if (hold) {
                        close(hold[1]);
                        (void) !read(hold[0], &c, 1);
                }
                _exit(status);
        }
        return pid;
}

Test(evloop, a_child_that_exits_is_reported_once_and_reaped_by_the_callback_through_its_pidfd) {
        _cleanup_evloop_ struct evloop *l = new_loop();
        struct child_seen seen = { .reap = true };
        struct evloop_source *s = NULL;
        vmsup_error *err = NULL;
        int hold[2];
        pid_t pid;

        cr_assert_eq(pipe2(hold, O_CLOEXEC), 0);
        pid = fork_exit(7, hold);
        close(hold[0]);
        cr_assert_eq(evloop_add_child(l, pid, on_child, &seen, &s, &err), 0, "%s", err ? err->msg : "");
        cr_assert_eq(iterate(l, 0), 0, "the child still runs");
        close(hold[1]);
        cr_assert_eq(iterate(l, 30000), 1);
        cr_assert_eq(seen.calls, 1);
        cr_assert_eq(seen.pid, pid);
        cr_assert_eq(seen.info.si_pid, pid, "the callback reaped it");
        cr_assert_eq(seen.info.si_code, CLD_EXITED);
        cr_assert_eq(seen.info.si_status, 7);
        cr_assert_eq(waitpid(pid, NULL, WNOHANG), -1, "already reaped");

        /* a pidfd stays readable: the source must not fire again */
        cr_assert_eq(iterate(l, 50), 0);
        cr_assert_eq(seen.calls, 1);
        cr_assert_geq(evloop_source_fd(s), 0, "the pidfd stays until the source is removed");
        evloop_source_remove(s);
}

Test(evloop, a_child_reaped_elsewhere_before_its_round_still_gets_its_callback) {
        _cleanup_evloop_ struct evloop *l = new_loop();
        struct child_seen seen = { 0 };
        pid_t pid = fork_exit(0, NULL);

        cr_assert_eq(evloop_add_child(l, pid, on_child, &seen, NULL, NULL), 0);
        /* as the supervisor's waitpid(-1) reaping every descendant does */
        cr_assert_eq(waitpid(pid, NULL, 0), pid);
        cr_assert_eq(iterate(l, 30000), 1);
        cr_assert_eq(seen.calls, 1);
        cr_assert_eq(seen.pid, pid);
}

/* Two children exited; the callback that runs first removes the other's source. */
struct twins {
        struct evloop_source *src[2];
        int calls[2];
};

static void on_twin(struct evloop_source *s, pid_t pid, void *userdata) {
        struct twins *t = userdata;
        int me = s == t->src[0] ? 0 : 1;

        (void) pid;
        t->calls[me]++;
        t->src[1 - me] = evloop_source_remove(t->src[1 - me]);
}

Test(evloop, removing_another_exited_child_in_a_callback_drops_its_pending_event) {
        _cleanup_evloop_ struct evloop *l = new_loop();
        struct twins t = { 0 };
        pid_t pid[2];
        int hold[2];

        cr_assert_eq(pipe2(hold, O_CLOEXEC), 0);
        for (int i = 0; i < 2; i++) {
                pid[i] = fork_exit(0, hold);
                cr_assert_eq(evloop_add_child(l, pid[i], on_twin, &t, &t.src[i], NULL), 0);
        }
        close(hold[0]);
        close(hold[1]); /* both exit now */
        for (int i = 0; i < 2; i++)
                cr_assert_eq(waitpid(pid[i], NULL, 0), pid[i]);
        /* both pidfds are readable before the round */
        cr_assert_eq(iterate(l, 10000), 1);
        cr_assert_eq(t.calls[0] + t.calls[1], 1, "a=%d b=%d", t.calls[0], t.calls[1]);
        cr_assert_eq(iterate(l, 50), 0);
        evloop_source_remove(t.src[0]);
        evloop_source_remove(t.src[1]);
}

Test(evloop, a_pid_that_is_no_child_is_refused) {
        _cleanup_evloop_ struct evloop *l = new_loop();
        struct child_seen seen = { 0 };
        vmsup_error *err = NULL;
        pid_t pid = fork_exit(0, NULL);

        cr_assert_eq(waitpid(pid, NULL, 0), pid); /* gone: its pid names nothing now */
        cr_assert_lt(evloop_add_child(l, pid, on_child, &seen, NULL, &err), 0);
        char want[128];
        snprintf(want, sizeof(want), "watch child %d: pidfd_open: No such process", (int) pid);
        cr_assert_str_eq(err->msg, want);
        err = vmsup_error_free(err);
        cr_assert_lt(evloop_add_child(l, 0, on_child, &seen, NULL, &err), 0);
        cr_assert_str_eq(err->msg, "watch child 0: bad pid or no callback: Invalid argument");
        vmsup_error_free(err);
}

/* ---- timers ------------------------------------------------------------------------ */

static void on_timer_note(struct evloop_source *s, void *userdata) {
        (void) s;
        note(userdata);
}

Test(evloop, due_timers_fire_by_deadline_then_in_arming_order) {
        _cleanup_evloop_ struct evloop *l = new_loop();
        long now = monotonic_ms();

        trail[0] = '\0';
        /* all already due, so one round fires them all */
        cr_assert_eq(evloop_add_timer(l, now - 10, on_timer_note, "C", NULL, NULL), 0);
        cr_assert_eq(evloop_add_timer(l, now - 30, on_timer_note, "A", NULL, NULL), 0);
        cr_assert_eq(evloop_add_timer(l, now - 10, on_timer_note, "D", NULL, NULL), 0);
        cr_assert_eq(evloop_add_timer(l, now - 20, on_timer_note, "B", NULL, NULL), 0);
        cr_assert_eq(evloop_add_timer(l, now - 10, on_timer_note, "E", NULL, NULL), 0);
        cr_assert_eq(iterate(l, 0), 5);
        cr_assert_str_eq(trail, "ABCDE");
        /* one-shot: all disarmed now */
        cr_assert_eq(iterate(l, 0), 0);
}

struct timed {
        struct evloop_source *s;
        long deadline;
        long fired_at;
        const char *name;
};

static void on_timed(struct evloop_source *s, void *userdata) {
        struct timed *t = userdata;

        (void) s;
        t->fired_at = monotonic_ms();
        note(t->name);
        cr_assert_eq(evloop_timer_deadline(s), -1, "a timer that fired is disarmed");
}

static void on_exit_timer(struct evloop_source *s, void *userdata) {
        (void) userdata;
        evloop_exit(evloop_source_loop(s), 42);
}

Test(evloop, future_timers_fire_in_order_never_before_their_deadline) {
        _cleanup_evloop_ struct evloop *l = new_loop();
        long now = monotonic_ms();
        struct timed t[] = { { .deadline = now + 60, .name = "3" },
                             { .deadline = now + 20, .name = "1" },
                             { .deadline = now + 40, .name = "2" } };
        vmsup_error *err = NULL;
        int code = -1;

        trail[0] = '\0';
        for (size_t i = 0; i < ARRAY_SIZE(t); i++)
                cr_assert_eq(evloop_add_timer(l, t[i].deadline, on_timed, &t[i], &t[i].s, NULL), 0);
        cr_assert_eq(evloop_add_timer(l, now + 80, on_exit_timer, NULL, NULL, NULL), 0);
        cr_assert_eq(evloop_timer_deadline(t[1].s), now + 20);
        cr_assert_eq(evloop_run(l, &code, &err), 0, "%s", err ? err->msg : "");
        cr_assert_eq(code, 42);
        cr_assert_str_eq(trail, "123");
        for (size_t i = 0; i < ARRAY_SIZE(t); i++)
                cr_assert_geq(t[i].fired_at, t[i].deadline, "timer %s fired early", t[i].name);
}

struct rearm {
        int calls;
        int max;
};

static void on_rearm_now(struct evloop_source *s, void *userdata) {
        struct rearm *r = userdata;

        r->calls++;
        if (r->calls < r->max)
                evloop_timer_set(s, monotonic_ms()); /* due at once: but not again in this round */
}

Test(evloop, a_timer_that_rearms_itself_fires_once_per_round) {
        _cleanup_evloop_ struct evloop *l = new_loop();
        struct rearm r = { .max = 3 };
        struct evloop_source *s = NULL;

        cr_assert_eq(evloop_add_timer(l, monotonic_ms(), on_rearm_now, &r, &s, NULL), 0);
        cr_assert_eq(iterate(l, 0), 1);
        cr_assert_eq(r.calls, 1);
        cr_assert_eq(iterate(l, 0), 1);
        cr_assert_eq(iterate(l, 0), 1);
        cr_assert_eq(r.calls, 3);
        cr_assert_eq(evloop_timer_deadline(s), -1);
        cr_assert_eq(iterate(l, 0), 0);
}

Test(evloop, timers_can_be_disarmed_rearmed_later_and_added_disarmed) {
        _cleanup_evloop_ struct evloop *l = new_loop();
        struct evloop_source *a = NULL, *b = NULL, *c = NULL;
        long now = monotonic_ms();

        trail[0] = '\0';
        cr_assert_eq(evloop_add_timer(l, now - 1, on_timer_note, "a", &a, NULL), 0);
        cr_assert_eq(evloop_add_timer(l, now - 1, on_timer_note, "b", &b, NULL), 0);
        cr_assert_eq(evloop_add_timer(l, -1, on_timer_note, "c", &c, NULL), 0);
        cr_assert_eq(evloop_timer_deadline(c), -1);
        evloop_timer_set(a, -1);
        evloop_timer_set(b, now + 3600 * 1000L); /* an hour away */
        cr_assert_eq(iterate(l, 0), 0);
        cr_assert_str_eq(trail, "");

        /* re-armed after firing, and the earliest decides how long a round waits */
        evloop_timer_set(c, now - 5);
        evloop_timer_set(a, now - 2);
        cr_assert_eq(iterate(l, 0), 2);
        cr_assert_str_eq(trail, "ca");
        evloop_timer_set(c, monotonic_ms() + 10);
        cr_assert_eq(iterate(l, -1), 1, "waits for c, not for b an hour away");
        cr_assert_str_eq(trail, "cac");
        evloop_source_remove(b);
        cr_assert_eq(evloop_timer_deadline(a), -1);
}

/* A timer's callback removes or disarms others that are due in the same round. */
struct killer {
        struct evloop_source *removed, *disarmed, *moved;
};

static void on_killer(struct evloop_source *s, void *userdata) {
        struct killer *k = userdata;

        (void) s;
        note("K");
        k->removed = evloop_source_remove(k->removed);
        evloop_timer_set(k->disarmed, -1);
        evloop_timer_set(k->moved, monotonic_ms() + 3600 * 1000L);
}

static void on_remove_self_timer(struct evloop_source *s, void *userdata) {
        note(userdata);
        evloop_source_remove(s);
        /* removing twice in the same round is harmless */
        evloop_source_remove(s);
}

Test(evloop, a_timer_removes_itself_and_other_due_timers_in_its_callback) {
        _cleanup_evloop_ struct evloop *l = new_loop();
        struct killer k = { 0 };
        long now = monotonic_ms();

        trail[0] = '\0';
        cr_assert_eq(evloop_add_timer(l, now - 10, on_remove_self_timer, "S", NULL, NULL), 0);
        cr_assert_eq(evloop_add_timer(l, now - 5, on_killer, &k, NULL, NULL), 0);
        cr_assert_eq(evloop_add_timer(l, now - 4, on_timer_note, "r", &k.removed, NULL), 0);
        cr_assert_eq(evloop_add_timer(l, now - 3, on_timer_note, "d", &k.disarmed, NULL), 0);
        cr_assert_eq(evloop_add_timer(l, now - 2, on_timer_note, "m", &k.moved, NULL), 0);
        cr_assert_eq(evloop_add_timer(l, now - 1, on_timer_note, "z", NULL, NULL), 0);
        cr_assert_eq(iterate(l, 0), 3);
        cr_assert_str_eq(trail, "SKz");
        cr_assert_null(k.removed);
        cr_assert_eq(evloop_timer_deadline(k.disarmed), -1);
        cr_assert_gt(evloop_timer_deadline(k.moved), now + 1000);
}

/* ---- a timer due with a ready fd --------------------------------------------------- */

struct answer {
        struct evloop_source *deadline;
        bool disarm;
};

static void on_answer(struct evloop_source *s, int fd, uint32_t revents, void *userdata) {
        struct answer *a = userdata;
        char c;

        (void) s;
        (void) revents;
        note("F");
        cr_assert_eq(read(fd, &c, 1), 1);
        if (a->disarm)
                evloop_timer_set(a->deadline, -1);
}

static void run_answer_and_deadline(bool disarm, const char *want) {
        _cleanup_evloop_ struct evloop *l = new_loop();
        struct answer a = { .disarm = disarm };
        struct evloop_source *io = NULL;
        int p[2];

        trail[0] = '\0';
        /* the deadline is armed first and already due when the answer is there */
        cr_assert_eq(evloop_add_timer(l, monotonic_ms() - 1, on_timer_note, "T", &a.deadline, NULL), 0);
        ready_pipe(p);
        cr_assert_eq(evloop_add_io(l, p[0], EPOLLIN, on_answer, &a, &io, NULL), 0);
        cr_assert_eq(iterate(l, 0), (int) strlen(want));
        cr_assert_str_eq(trail, want);
        evloop_source_remove(io);
        close(p[0]);
        close(p[1]);
}

Test(evloop, a_ready_fd_is_dispatched_before_a_timer_due_in_the_same_round) {
        run_answer_and_deadline(false, "FT");
}

Test(evloop, an_answer_that_arrived_in_time_disarms_its_due_deadline) {
        run_answer_and_deadline(true, "F");
}

/* ---- exit and re-entry ------------------------------------------------------------- */

static void on_io_exit(struct evloop_source *s, int fd, uint32_t revents, void *userdata) {
        int *calls = userdata;
        char c;

        (void) revents;
        (*calls)++;
        cr_assert_eq(read(fd, &c, 1), 1);
        evloop_exit(evloop_source_loop(s), 3);
}

Test(evloop, exit_from_a_callback_ends_run_with_its_code_and_leaves_the_rest_pending) {
        _cleanup_evloop_ struct evloop *l = new_loop();
        vmsup_error *err = NULL;
        int a[2], b[2], calls = 0, code = -1;

        ready_pipe(a);
        ready_pipe(b);
        cr_assert_eq(evloop_add_io(l, a[0], EPOLLIN, on_io_exit, &calls, NULL, NULL), 0);
        cr_assert_eq(evloop_add_io(l, b[0], EPOLLIN, on_io_exit, &calls, NULL, NULL), 0);
        cr_assert_eq(evloop_add_timer(l, monotonic_ms() - 1, on_timer_note, "T", NULL, NULL), 0);
        trail[0] = '\0';
        cr_assert_eq(evloop_run(l, &code, &err), 0, "%s", err ? err->msg : "");
        cr_assert_eq(code, 3);
        cr_assert_eq(calls, 1, "nothing more of the round after evloop_exit()");
        cr_assert_str_eq(trail, "", "the due timer waits too");

        /* run again: the other fd is still ready, the timer still due */
        code = -1;
        cr_assert_eq(evloop_run(l, &code, &err), 0, "%s", err ? err->msg : "");
        cr_assert_eq(code, 3);
        cr_assert_eq(calls, 2);
        cr_assert_eq(iterate(l, 0), 1);
        cr_assert_str_eq(trail, "T");
}

Test(evloop, exit_before_run_returns_at_once) {
        _cleanup_evloop_ struct evloop *l = new_loop();
        vmsup_error *err = NULL;
        int code = -1;

        /* nothing to wait for: run would fail if it waited */
        evloop_exit(l, 0);
        cr_assert_eq(evloop_run(l, &code, &err), 0, "%s", err ? err->msg : "");
        cr_assert_eq(code, 0);
}

static void on_reenter(struct evloop_source *s, void *userdata) {
        int *calls = userdata;
        vmsup_error *err = NULL;
        int code;

        (*calls)++;
        cr_assert_lt(evloop_iterate(evloop_source_loop(s), 0, &err), 0);
        cr_assert_str_eq(err->msg, "event loop: iterated from inside its own callback: Resource deadlock avoided");
        err = vmsup_error_free(err);
        cr_assert_lt(evloop_run(evloop_source_loop(s), &code, &err), 0);
        cr_assert_str_eq(err->msg, "event loop: run from inside its own callback: Resource deadlock avoided");
        vmsup_error_free(err);
}

Test(evloop, iterating_from_inside_a_callback_is_refused) {
        _cleanup_evloop_ struct evloop *l = new_loop();
        int calls = 0;

        cr_assert_eq(evloop_add_timer(l, monotonic_ms() - 1, on_reenter, &calls, NULL, NULL), 0);
        cr_assert_eq(iterate(l, 0), 1);
        cr_assert_eq(calls, 1);
}

Test(evloop, waiting_forever_on_nothing_is_an_error) {
        _cleanup_evloop_ struct evloop *l = new_loop();
        vmsup_error *err = NULL;
        int code;

        cr_assert_eq(evloop_add_timer(l, -1, on_timer_note, "x", NULL, NULL), 0);
        cr_assert_lt(evloop_run(l, &code, &err), 0);
        cr_assert_str_eq(err->msg,
                         "event loop: nothing to wait for (no fd, signal or child source, no armed timer): "
                         "Resource deadlock avoided");
        cr_assert_eq(err->kind, VMSUP_ERR_INTERNAL);
        vmsup_error_free(err);
        cr_assert_eq(iterate(l, 0), 0, "not waiting at all is fine");
}

/* ---- many sources ------------------------------------------------------------------ */

#define MANY 1000

struct many {
        int io_calls[MANY];
        int timer_calls[MANY];
        int left;
};

static struct many many;

static void on_many_io(struct evloop_source *s, int fd, uint32_t revents, void *userdata) {
        int i = (int) (intptr_t) userdata;

        (void) revents;
        many.io_calls[i]++;
        many.left--;
        evloop_source_remove(s);
        close(fd);
}

static void on_many_timer(struct evloop_source *s, void *userdata) {
        int i = (int) (intptr_t) userdata;

        many.timer_calls[i]++;
        many.left--;
        evloop_source_remove(s);
}

Test(evloop, a_thousand_fd_sources_and_a_thousand_timers_each_fire_once) {
        _cleanup_evloop_ struct evloop *l = new_loop();
        struct rlimit rl;
        long now = monotonic_ms();
        vmsup_error *err = NULL;
        int rounds = 0;

        cr_assert_eq(getrlimit(RLIMIT_NOFILE, &rl), 0);
        if (rl.rlim_cur < MANY + 64) {
                rl.rlim_cur = MANY + 64;
                cr_assert_eq(setrlimit(RLIMIT_NOFILE, &rl), 0, "RLIMIT_NOFILE: %s", strerror(errno));
        }
        many.left = 2 * MANY;
        for (int i = 0; i < MANY; i++) {
                int fd = eventfd(1, EFD_CLOEXEC | EFD_NONBLOCK); /* readable from the start */

                cr_assert_geq(fd, 0, "eventfd %d: %s", i, strerror(errno));
                cr_assert_eq(evloop_add_io(l, fd, EPOLLIN, on_many_io, (void *) (intptr_t) i, NULL, &err), 0,
                             "%s", err ? err->msg : "");
                /* deadlines spread over the past and the next 50 ms, in a scrambled order */
                cr_assert_eq(evloop_add_timer(l, now - 25 + (i * 7919) % 75, on_many_timer, (void *) (intptr_t) i,
                                              NULL, &err),
                             0, "%s", err ? err->msg : "");
        }
        while (many.left > 0) {
                cr_assert_lt(rounds++, 10 * MANY, "the sources did not all fire");
                iterate(l, -1);
        }
        for (int i = 0; i < MANY; i++) {
                cr_assert_eq(many.io_calls[i], 1, "fd source %d ran %d times", i, many.io_calls[i]);
                cr_assert_eq(many.timer_calls[i], 1, "timer %d ran %d times", i, many.timer_calls[i]);
        }
        cr_assert_lt(evloop_iterate(l, -1, &err), 0, "every source removed itself");
        vmsup_error_free(err);
}
