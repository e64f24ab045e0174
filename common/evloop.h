/* The one event loop of a process: fd, signal, child and timer sources with callbacks, on epoll.
 *
 * Why ours and not sd-event or libevent. sd-event (libsystemd) would do the job and is well
 * kept, but: vmsup reaps every exited descendant itself (it is a child subreaper, see
 * DESIGN.md "Children"), while sd-event's child sources reap their child and want to own
 * SIGCHLD; libsystemd brings libgcrypt, liblzma, liblz4, libzstd and libcap into a
 * supervisor whose memory budget is already missed (docs/performance.md); and its timers
 * add a timerfd per clock to the seccomp allow-list. libevent has no pidfd sources (it
 * catches signals with a handler and a socketpair) and carries buffers and DNS we do not
 * need. What we need is small: a handful of sources, pidfds, one signalfd, deadlines in
 * ms; this is 500 lines on syscalls the seccomp filter already allows.
 *
 * Rules:
 * - One loop per process, used from one thread. Callbacks run from evloop_iterate() or
 *   evloop_run(), never nested: iterating from inside a callback is refused.
 * - Any source can be removed or changed from any callback, itself or another one whose
 *   event is already pending in the same round: a removed source's pending events are not
 *   dispatched; its memory goes at the end of the round.
 * - Within a round: fd, signal and child sources first (in epoll's order), then the timers
 *   that are due, by deadline, then by the order they were armed. So an answer that
 *   arrived in time wins against its deadline: its callback can disarm the timer.
 * - A timer armed (or re-armed) in a round fires at the earliest in the timer phase of the
 *   same round when its deadline has passed and it was armed before that phase started,
 *   so a timer that re-arms itself to "now" fires once per round, never in a tight loop.
 * - Once evloop_exit() is called, nothing more of the round is dispatched; the events not
 *   dispatched stay pending (epoll is level-triggered, timers stay armed).
 * - Nothing here logs: failures come back as vmsup_error. */
#ifndef VMSUP_COMMON_EVLOOP_H
#define VMSUP_COMMON_EVLOOP_H

#include <signal.h>
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/types.h>

#include "common/error.h"

struct evloop;
struct evloop_source;

/* revents: the epoll events that occurred, limited to those asked for plus EPOLLERR and
 * EPOLLHUP. */
typedef void (*evloop_io_fn)(struct evloop_source *s, int fd, uint32_t revents, void *userdata);
/* Called once per signal received. */
typedef void (*evloop_signal_fn)(struct evloop_source *s, const struct signalfd_siginfo *si, void *userdata);
/* Called once, when the child has exited. */
typedef void (*evloop_child_fn)(struct evloop_source *s, pid_t pid, void *userdata);
typedef void (*evloop_timer_fn)(struct evloop_source *s, void *userdata);

int evloop_new(struct evloop **ret, vmsup_error **err);
/* Removes every source (closing the fds the loop owns) and the loop. Not from a callback.
 * The signals the loop blocked stay blocked. */
struct evloop *evloop_free(struct evloop *l);

/* For each add function: ret may be NULL, the source then lives as long as the loop. */

/* Watch fd (borrowed: remove the source BEFORE closing the fd, or epoll may still report
 * it) for events (EPOLLIN, EPOLLOUT, ...; 0: not watched until evloop_io_set_events()). */
int evloop_add_io(struct evloop *l, int fd, uint32_t events, evloop_io_fn cb, void *userdata,
                  struct evloop_source **ret, vmsup_error **err);
/* Change what an fd source waits for (e.g. to qmp_client_epoll_events()); 0 stops
 * watching it. A change made inside a round also filters that round's pending events. */
int evloop_io_set_events(struct evloop_source *s, uint32_t events, vmsup_error **err);

/* Receive the signals of set through a signalfd. The loop blocks them (for the whole
 * process, and for good: a signal arriving after the source is gone must not meet its
 * default action). A signal may belong to only one source of a loop. */
int evloop_add_signal(struct evloop *l, const sigset_t *set, evloop_signal_fn cb, void *userdata,
                      struct evloop_source **ret, vmsup_error **err);

/* Call cb once when child pid (one of ours, not yet reaped) exits, through a pidfd the
 * source opens and owns (evloop_source_fd()). The loop never reaps: vmsup reaps every
 * descendant with waitpid(-1) as a subreaper must, and a second reaper would race with it.
 * The callback reaps as it likes: waitpid(pid) or waitid(P_PIDFD, evloop_source_fd(s)). A
 * child reaped elsewhere before its round still gets its callback. */
int evloop_add_child(struct evloop *l, pid_t pid, evloop_child_fn cb, void *userdata,
                     struct evloop_source **ret, vmsup_error **err);

/* A one-shot timer at deadline_ms on the monotonic_ms() clock (common/util.h); a deadline
 * < 0 adds it disarmed. */
int evloop_add_timer(struct evloop *l, long deadline_ms, evloop_timer_fn cb, void *userdata,
                     struct evloop_source **ret, vmsup_error **err);
/* Re-arm a timer (also after it fired, also from its own callback); < 0 disarms it. */
void evloop_timer_set(struct evloop_source *s, long deadline_ms);
/* The deadline a timer is armed for, or -1. */
long evloop_timer_deadline(const struct evloop_source *s);

/* Remove a source (any kind; NULL is fine); returns NULL. Safe from any callback. */
struct evloop_source *evloop_source_remove(struct evloop_source *s);
static inline void evloop_source_removep(struct evloop_source **s) {
        evloop_source_remove(*s);
}
#define _cleanup_evloop_source_ __attribute__((cleanup(evloop_source_removep)))

/* The fd of an fd source, the signalfd or the pidfd; -1 for a timer. */
int evloop_source_fd(const struct evloop_source *s);
struct evloop *evloop_source_loop(const struct evloop_source *s);

/* One round: wait at most max_wait_ms (0: do not wait; -1: until a source or a timer is
 * ready), then dispatch. Returns how many callbacks ran, or <0: epoll failed, the loop is
 * waited on from its own callback, or it has nothing to wait for and max_wait_ms is -1. */
int evloop_iterate(struct evloop *l, int max_wait_ms, vmsup_error **err);
/* Iterate until evloop_exit() (also one called before); then 0 and *ret_code is its code,
 * and the loop can be run again. <0 as evloop_iterate(). */
int evloop_run(struct evloop *l, int *ret_code, vmsup_error **err);
/* Make evloop_run() return code once the callback that calls this returns. */
void evloop_exit(struct evloop *l, int code);

static inline void evloop_freep(struct evloop **l) {
        evloop_free(*l);
}
#define _cleanup_evloop_ __attribute__((cleanup(evloop_freep)))

#endif
