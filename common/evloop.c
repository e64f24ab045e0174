#include "config.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "common/evloop.h"
#include "common/util.h"

enum source_kind { SOURCE_IO, SOURCE_SIGNAL, SOURCE_CHILD, SOURCE_TIMER };

struct evloop_source {
        struct evloop *loop;
        enum source_kind kind;
        bool dead;            /* removed: skipped by the rest of the round, freed after it */
        bool in_epoll;
        int fd;               /* io: borrowed; signal, child: owned; timer: -1 */
        uint32_t events;      /* io: what is watched */
        void *userdata;
        union {
                evloop_io_fn io;
                evloop_signal_fn signal;
                evloop_child_fn child;
                evloop_timer_fn timer;
        } cb;
        sigset_t signals;     /* signal */
        pid_t pid;            /* child */
        long deadline;        /* timer: -1 when disarmed */
        uint64_t armed_seq;   /* timer: which arming this is; 0 when disarmed */
        struct evloop_source *tprev, *tnext; /* timer: the armed list, by (deadline, armed_seq) */
        struct evloop_source *prev, *next;   /* the loop's sources, or its garbage */
};

struct due_timer {
        struct evloop_source *s;
        uint64_t armed_seq;
};

struct evloop {
        int epfd;
        struct evloop_source *sources;
        struct evloop_source *garbage;
        struct evloop_source *timers; /* armed, earliest first */
        struct due_timer *due;        /* room for every timer, so dispatching never allocates */
        size_t due_size;              /* never shrinks: a round may be reading it */
        size_t n_timers;
        size_t n_watched;             /* sources in epoll */
        uint64_t seq;
        sigset_t signals;             /* taken by signal sources */
        bool dispatching;
        bool exit_requested;          /* until evloop_run() returns it */
        bool round_stopped;           /* evloop_exit() in this round: dispatch no more of it */
        int exit_code;
};

int evloop_new(struct evloop **ret, vmsup_error **err) {
        _cleanup_free_ struct evloop *l = calloc(1, sizeof(*l));

        if (!l)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "event loop");
        l->epfd = epoll_create1(EPOLL_CLOEXEC);
        if (l->epfd < 0)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, errno, "event loop: epoll_create1");
        sigemptyset(&l->signals);
        *ret = TAKE_PTR(l);
        return 0;
}

static void timer_unlink(struct evloop_source *s) {
        struct evloop *l = s->loop;

        if (!s->armed_seq)
                return;
        if (s->tprev)
                s->tprev->tnext = s->tnext;
        else
                l->timers = s->tnext;
        if (s->tnext)
                s->tnext->tprev = s->tprev;
        s->tprev = s->tnext = NULL;
        s->armed_seq = 0;
        s->deadline = -1;
}

static void timer_link(struct evloop_source *s, long deadline_ms) {
        struct evloop *l = s->loop;
        struct evloop_source *at, *before = NULL;

        s->deadline = deadline_ms;
        s->armed_seq = ++l->seq;
        /* after every timer due at the same time or earlier: ties fire in arming order */
        for (at = l->timers; at && at->deadline <= deadline_ms; at = at->tnext)
                before = at;
        s->tprev = before;
        s->tnext = at;
        if (before)
                before->tnext = s;
        else
                l->timers = s;
        if (at)
                at->tprev = s;
}

static void unwatch(struct evloop_source *s) {
        if (!s->in_epoll)
                return;
        /* may fail with EBADF when the caller closed a borrowed fd first; nothing to undo then */
        epoll_ctl(s->loop->epfd, EPOLL_CTL_DEL, s->fd, NULL);
        s->in_epoll = false;
        s->loop->n_watched--;
}

static int watch(struct evloop_source *s, uint32_t events) {
        struct epoll_event ev = { .events = events, .data.ptr = s };

        if (epoll_ctl(s->loop->epfd, s->in_epoll ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, s->fd, &ev) < 0)
                return -errno;
        if (!s->in_epoll)
                s->loop->n_watched++;
        s->in_epoll = true;
        return 0;
}

static void source_link(struct evloop_source **head, struct evloop_source *s) {
        s->prev = NULL;
        s->next = *head;
        if (*head)
                (*head)->prev = s;
        *head = s;
}

static void source_unlink(struct evloop_source **head, struct evloop_source *s) {
        if (s->prev)
                s->prev->next = s->next;
        else
                *head = s->next;
        if (s->next)
                s->next->prev = s->prev;
        s->prev = s->next = NULL;
}

static struct evloop_source *source_new(struct evloop *l, enum source_kind kind, void *userdata) {
        struct evloop_source *s = calloc(1, sizeof(*s));

        if (!s)
                return NULL;
        s->loop = l;
        s->kind = kind;
        s->fd = -1;
        s->deadline = -1;
        s->userdata = userdata;
        return s;
}

/* Make a new source live; with ret NULL, the loop alone holds it. */
static int source_publish(struct evloop_source *s, struct evloop_source **ret) {
        source_link(&s->loop->sources, s);
        if (ret)
                *ret = s;
        return 0;
}

static void source_free(struct evloop_source *s) {
        if (s->kind == SOURCE_SIGNAL || s->kind == SOURCE_CHILD)
                closep(&s->fd);
        free(s);
}

struct evloop_source *evloop_source_remove(struct evloop_source *s) {
        struct evloop *l;

        if (!s || s->dead)
                return NULL;
        l = s->loop;
        unwatch(s);
        if (s->kind == SOURCE_TIMER) {
                timer_unlink(s);
                l->n_timers--;
        }
        if (s->kind == SOURCE_SIGNAL)
                for (int sig = 1; sig < NSIG; sig++)
                        if (sigismember(&s->signals, sig))
                                sigdelset(&l->signals, sig);
        s->dead = true;
        source_unlink(&l->sources, s);
        if (l->dispatching)
                source_link(&l->garbage, s); /* a pending event of this round may still point here */
        else
                source_free(s);
        return NULL;
}

static void collect_garbage(struct evloop *l) {
        while (l->garbage) {
                struct evloop_source *s = l->garbage;

                source_unlink(&l->garbage, s);
                source_free(s);
        }
}

struct evloop *evloop_free(struct evloop *l) {
        if (!l)
                return NULL;
        while (l->sources)
                evloop_source_remove(l->sources);
        collect_garbage(l);
        free(l->due);
        closep(&l->epfd);
        free(l);
        return NULL;
}

int evloop_add_io(struct evloop *l, int fd, uint32_t events, evloop_io_fn cb, void *userdata,
                  struct evloop_source **ret, vmsup_error **err) {
        struct evloop_source *s;
        int r;

        if (fd < 0 || !cb)
                return vmsup_fail(err, VMSUP_ERR_INTERNAL, EINVAL, "watch fd %d: bad fd or no callback", fd);
        s = source_new(l, SOURCE_IO, userdata);
        if (!s)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "watch fd %d", fd);
        s->fd = fd;
        s->cb.io = cb;
        s->events = events;
        if (events && (r = watch(s, events)) < 0) {
                free(s);
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, -r, "watch fd %d: epoll_ctl", fd);
        }
        return source_publish(s, ret);
}

int evloop_io_set_events(struct evloop_source *s, uint32_t events, vmsup_error **err) {
        int r;

        if (s->kind != SOURCE_IO || s->dead)
                return vmsup_fail(err, VMSUP_ERR_INTERNAL, EINVAL, "change the events of a source that is no fd source");
        if (events == s->events && (s->in_epoll || !events))
                return 0;
        if (!events) {
                unwatch(s);
                s->events = 0;
                return 0;
        }
        r = watch(s, events);
        if (r < 0)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, -r, "watch fd %d for events 0x%x: epoll_ctl", s->fd, events);
        s->events = events;
        return 0;
}

int evloop_add_signal(struct evloop *l, const sigset_t *set, evloop_signal_fn cb, void *userdata,
                      struct evloop_source **ret, vmsup_error **err) {
        struct evloop_source *s;
        bool any = false;
        int r;

        if (!cb)
                return vmsup_fail(err, VMSUP_ERR_INTERNAL, EINVAL, "watch signals: no callback");
        for (int sig = 1; sig < NSIG; sig++) {
                if (!sigismember(set, sig))
                        continue;
                if (sig == SIGKILL || sig == SIGSTOP)
                        return vmsup_fail(err, VMSUP_ERR_INTERNAL, EINVAL, "watch SIG%s: it cannot be caught",
                                          sigabbrev_np(sig));
                if (sigismember(&l->signals, sig))
                        return vmsup_fail(err, VMSUP_ERR_INTERNAL, EEXIST, "watch SIG%s: another source has it",
                                          sigabbrev_np(sig) ?: "?");
                any = true;
        }
        if (!any)
                return vmsup_fail(err, VMSUP_ERR_INTERNAL, EINVAL, "watch signals: the set is empty");
        s = source_new(l, SOURCE_SIGNAL, userdata);
        if (!s)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "watch signals");
        s->signals = *set;
        s->cb.signal = cb;
        /* blocked first: one arriving between the two calls then waits in the signalfd */
        if (sigprocmask(SIG_BLOCK, set, NULL) < 0) {
                r = vmsup_fail(err, VMSUP_ERR_SYSTEM, errno, "watch signals: sigprocmask");
                goto fail;
        }
        s->fd = signalfd(-1, set, SFD_CLOEXEC | SFD_NONBLOCK);
        if (s->fd < 0) {
                r = vmsup_fail(err, VMSUP_ERR_SYSTEM, errno, "watch signals: signalfd");
                goto fail;
        }
        r = watch(s, EPOLLIN);
        if (r < 0) {
                r = vmsup_fail(err, VMSUP_ERR_SYSTEM, -r, "watch signals: epoll_ctl");
                goto fail;
        }
        for (int sig = 1; sig < NSIG; sig++)
                if (sigismember(set, sig))
                        sigaddset(&l->signals, sig);
        return source_publish(s, ret);
fail:
        source_free(s);
        return r;
}

int evloop_add_child(struct evloop *l, pid_t pid, evloop_child_fn cb, void *userdata,
                     struct evloop_source **ret, vmsup_error **err) {
        struct evloop_source *s;
        int r;

        if (pid <= 0 || !cb)
                return vmsup_fail(err, VMSUP_ERR_INTERNAL, EINVAL, "watch child %d: bad pid or no callback", (int) pid);
        s = source_new(l, SOURCE_CHILD, userdata);
        if (!s)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "watch child %d", (int) pid);
        s->pid = pid;
        s->cb.child = cb;
        s->fd = (int) syscall(SYS_pidfd_open, pid, 0); /* pidfds are always close-on-exec */
        if (s->fd < 0) {
                r = vmsup_fail(err, VMSUP_ERR_SYSTEM, errno, "watch child %d: pidfd_open", (int) pid);
                goto fail;
        }
        r = watch(s, EPOLLIN);
        if (r < 0) {
                r = vmsup_fail(err, VMSUP_ERR_SYSTEM, -r, "watch child %d: epoll_ctl", (int) pid);
                goto fail;
        }
        return source_publish(s, ret);
fail:
        source_free(s);
        return r;
}

int evloop_add_timer(struct evloop *l, long deadline_ms, evloop_timer_fn cb, void *userdata,
                     struct evloop_source **ret, vmsup_error **err) {
        struct evloop_source *s;

        if (!cb)
                return vmsup_fail(err, VMSUP_ERR_INTERNAL, EINVAL, "add a timer: no callback");
        if (l->n_timers == l->due_size) {
                struct due_timer *due = reallocarray(l->due, l->due_size + 64, sizeof(*due));

                if (!due)
                        return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "add a timer");
                l->due = due;
                l->due_size += 64;
        }
        s = source_new(l, SOURCE_TIMER, userdata);
        if (!s)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "add a timer");
        s->cb.timer = cb;
        l->n_timers++;
        if (deadline_ms >= 0)
                timer_link(s, deadline_ms);
        return source_publish(s, ret);
}

void evloop_timer_set(struct evloop_source *s, long deadline_ms) {
        if (!s || s->dead || s->kind != SOURCE_TIMER)
                return;
        timer_unlink(s);
        if (deadline_ms >= 0)
                timer_link(s, deadline_ms);
}

long evloop_timer_deadline(const struct evloop_source *s) {
        return s && !s->dead && s->kind == SOURCE_TIMER ? s->deadline : -1;
}

int evloop_source_fd(const struct evloop_source *s) {
        return s && !s->dead ? s->fd : -1;
}

struct evloop *evloop_source_loop(const struct evloop_source *s) {
        return s ? s->loop : NULL;
}

void evloop_exit(struct evloop *l, int code) {
        l->exit_requested = true;
        l->round_stopped = true;
        l->exit_code = code;
}

/* Returns how many callbacks ran. */
static int dispatch_io(struct evloop_source *s, uint32_t revents) {
        struct evloop *l = s->loop;
        int ran = 0;

        switch (s->kind) {
        case SOURCE_IO:
                /* the mask may have changed earlier in this round */
                revents &= s->events | EPOLLERR | EPOLLHUP;
                if (revents && s->in_epoll) {
                        s->cb.io(s, s->fd, revents, s->userdata);
                        ran++;
                }
                break;
        case SOURCE_SIGNAL:
                while (!s->dead && !l->round_stopped) {
                        struct signalfd_siginfo si;
                        ssize_t n = read(s->fd, &si, sizeof(si));

                        if (n < 0 && errno == EINTR)
                                continue;
                        if (n != sizeof(si))
                                break; /* EAGAIN: all read */
                        s->cb.signal(s, &si, s->userdata);
                        ran++;
                }
                break;
        case SOURCE_CHILD:
                /* a pidfd stays readable after the exit: once is all */
                unwatch(s);
                s->cb.child(s, s->pid, s->userdata);
                ran++;
                break;
        case SOURCE_TIMER:
                break;
        }
        return ran;
}

/* The timers due now, in order; each fires unless a callback before it in this phase
 * removed, disarmed or re-armed it. */
static int dispatch_timers(struct evloop *l) {
        long now = monotonic_ms();
        size_t n = 0;
        int ran = 0;

        for (struct evloop_source *s = l->timers; s && s->deadline <= now; s = s->tnext)
                l->due[n++] = (struct due_timer) { s, s->armed_seq };
        for (size_t i = 0; i < n && !l->round_stopped; i++) {
                struct evloop_source *s = l->due[i].s;

                if (s->dead || s->armed_seq != l->due[i].armed_seq)
                        continue;
                timer_unlink(s);
                s->cb.timer(s, s->userdata);
                ran++;
        }
        return ran;
}

static int wait_ms(struct evloop *l, int max_wait_ms) {
        long left;

        if (!l->timers)
                return max_wait_ms;
        left = l->timers->deadline - monotonic_ms();
        if (left <= 0)
                return 0;
        if (max_wait_ms >= 0 && left > max_wait_ms)
                return max_wait_ms;
        return left > INT32_MAX ? INT32_MAX : (int) left;
}

int evloop_iterate(struct evloop *l, int max_wait_ms, vmsup_error **err) {
        struct epoll_event evs[64];
        int n, ran = 0, timeout;

        if (l->dispatching)
                return vmsup_fail(err, VMSUP_ERR_INTERNAL, EDEADLK, "event loop: iterated from inside its own callback");
        timeout = wait_ms(l, max_wait_ms);
        if (timeout < 0 && l->n_watched == 0)
                return vmsup_fail(err, VMSUP_ERR_INTERNAL, EDEADLK,
                                  "event loop: nothing to wait for (no fd, signal or child source, no armed timer)");
        n = epoll_wait(l->epfd, evs, (int) ARRAY_SIZE(evs), timeout);
        if (n < 0) {
                if (errno != EINTR)
                        return vmsup_fail(err, VMSUP_ERR_SYSTEM, errno, "event loop: epoll_wait");
                n = 0;
        }
        l->dispatching = true;
        l->round_stopped = false;
        for (int i = 0; i < n && !l->round_stopped; i++) {
                struct evloop_source *s = evs[i].data.ptr;

                if (!s->dead)
                        ran += dispatch_io(s, evs[i].events);
        }
        if (!l->round_stopped)
                ran += dispatch_timers(l);
        l->dispatching = false;
        collect_garbage(l);
        return ran;
}

int evloop_run(struct evloop *l, int *ret_code, vmsup_error **err) {
        if (l->dispatching)
                return vmsup_fail(err, VMSUP_ERR_INTERNAL, EDEADLK, "event loop: run from inside its own callback");
        while (!l->exit_requested) {
                int r = evloop_iterate(l, -1, err);

                if (r < 0)
                        return r;
        }
        l->exit_requested = false;
        *ret_code = l->exit_code;
        return 0;
}
