#include "config.h"

/* What the guest and its children write, on the loop: the serial console (QEMU's serial
 * port is one end of a socketpair, ours the other), QEMU's and swtpm's output (pipes),
 * each into a log bounded by rotation (common/rotlog.h, [logs] in vmsup.conf(5)); and the
 * one console client (`vmsup console`) attached to the serial port.
 *
 * A guest can write to its serial port as fast as QEMU emulates it, one byte per send()
 * on QEMU's side: reading each byte as it comes would cost us a wake-up per byte. After
 * each read the serial port is left alone for CONSOLE_BATCH_MS, during which the socket
 * buffer collects what the guest writes; a guest that fills it waits (QEMU's serial
 * device retries), the log loses nothing, and our cost is a few wake-ups per second. */

#include <errno.h>
#include <stdint.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/log.h"
#include "common/rotlog.h"
#include "common/util.h"
#include "supervisor/control.h"

#include "supervisor/guest_internal.h"

/* the serial port is read at most this often (ms); an interactive echo waits as long */
#define CONSOLE_BATCH_MS 10
#define READ_CHUNK 65536
/* a serial read takes at most this much at once: the loop has other sources */
#define SERIAL_READ_MAX (4 * READ_CHUNK)
/* what the client has not read yet: beyond it, its output is dropped (the log keeps it) */
#define CLIENT_OUT_MAX 65536
/* what the client typed that QEMU has not taken yet: beyond it, we stop reading the client */
#define CLIENT_IN_MAX 4096
#define SERIAL_SNDBUF (4 * 1024 * 1024)
/* A client that attaches first gets what the guest wrote since its QEMU started, up to
 * this much of its end: one attached as the guest starts sees it from its first line,
 * one attached later sees the prompt it would otherwise wait for. */
#define CONSOLE_REPLAY_MAX 16384
/* guest_logs_drain() reads at most this much of the serial port (a guest may write on) */
#define SERIAL_DRAIN_MAX (16 * READ_CHUNK)

struct log_pipe {
        int fd; /* our read end; -1 */
        struct evloop_source *src;
};

struct guest_logs {
        struct rotlog *log[GUEST_LOG_N];
        bool write_failed[GUEST_LOG_N]; /* logged once per episode */
        struct log_pipe pipe[GUEST_LOG_N]; /* QEMU's and swtpm's output; console unused */

        int serial_fd; /* our end of QEMU's serial port; -1 */
        struct evloop_source *serial_src, *serial_timer;
        bool serial_paused; /* between reads (CONSOLE_BATCH_MS) */
        char recent[CONSOLE_REPLAY_MAX]; /* the end of what this QEMU's guest wrote */
        size_t recent_len;

        int client_fd; /* the attached `vmsup console`; -1 */
        struct evloop_source *client_src;
        char out[CLIENT_OUT_MAX];
        size_t out_len;
        size_t dropped; /* output the client missed since its last note */
        char in[CLIENT_IN_MAX];
        size_t in_len;
};

static const char *log_path(const struct guest *g, enum guest_log which) {
        switch (which) {
        case GUEST_LOG_CONSOLE:
                return g->dirs.console_log;
        case GUEST_LOG_QEMU:
                return g->dirs.qemu_log;
        case GUEST_LOG_SWTPM:
                return g->dirs.swtpm_log;
        default:
                return NULL;
        }
}

static const char *log_what[GUEST_LOG_N] = { "the console log", "QEMU's log", "swtpm's log" };

static int logs_get(struct guest *g, vmsup_error **err) {
        struct guest_logs *l;

        if (g->logs)
                return 0;
        l = calloc(1, sizeof(*l));
        if (!l)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "logs");
        l->serial_fd = l->client_fd = -1;
        for (int i = 0; i < GUEST_LOG_N; i++)
                l->pipe[i].fd = -1;
        g->logs = l;
        return 0;
}

/* A log, opened (and rotated if too large) the first time a child needs it. */
static int log_open(struct guest *g, enum guest_log which, vmsup_error **err) {
        int r = logs_get(g, err);

        if (r < 0 || g->logs->log[which])
                return r;
        return rotlog_open(log_path(g, which), g->cfg->logs.console_max_size, g->cfg->logs.console_max_backups,
                           &g->logs->log[which], err);
}

static void log_append(struct guest *g, enum guest_log which, const char *buf, size_t n) {
        struct guest_logs *l = g->logs;
        vmsup_error *err = NULL;

        if (rotlog_write(l->log[which], buf, n, &err) < 0) {
                if (!l->write_failed[which])
                        log_warning("%s: %s; what cannot be written is lost until it works again", log_what[which],
                                    err->msg);
                l->write_failed[which] = true;
                vmsup_error_free(err);
        } else if (l->write_failed[which]) {
                log_info("%s is written again", log_what[which]);
                l->write_failed[which] = false;
        }
}

/* ---- the attached client ---- */

static void client_update(struct guest *g);

static void client_close(struct guest *g, const char *note) {
        struct guest_logs *l = g->logs;

        if (l->client_fd < 0)
                return;
        if (note) /* best effort: the client may not read any more */
                (void) !send(l->client_fd, note, strlen(note), MSG_NOSIGNAL | MSG_DONTWAIT);
        l->client_src = evloop_source_remove(l->client_src);
        closep(&l->client_fd);
        l->client_fd = -1;
        l->out_len = l->in_len = 0;
        l->dropped = 0;
}

static void client_queue(struct guest_logs *l, const char *buf, size_t n) {
        size_t room = CLIENT_OUT_MAX - l->out_len;

        if (l->client_fd < 0)
                return;
        if (n > room) {
                l->dropped += n - room;
                n = room;
        }
        memcpy(l->out + l->out_len, buf, n);
        l->out_len += n;
}

static void serial_update(struct guest *g);

/* Hand what the client typed to QEMU, as much as it takes. */
static void serial_flush_input(struct guest *g) {
        struct guest_logs *l = g->logs;

        if (l->serial_fd < 0)
                l->in_len = 0; /* no QEMU (between two, on a hard reboot): typed into nothing */
        while (l->in_len > 0 && l->serial_fd >= 0) {
                ssize_t n = send(l->serial_fd, l->in, l->in_len, MSG_NOSIGNAL | MSG_DONTWAIT);

                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0) {
                        if (errno != EAGAIN)
                                l->in_len = 0; /* QEMU is gone: what was typed goes nowhere */
                        break;
                }
                memmove(l->in, l->in + n, l->in_len - (size_t) n);
                l->in_len -= (size_t) n;
        }
}

static void client_write(struct guest *g) {
        struct guest_logs *l = g->logs;

        while (l->out_len > 0) {
                ssize_t n = send(l->client_fd, l->out, l->out_len, MSG_NOSIGNAL | MSG_DONTWAIT);

                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0 && errno == EAGAIN)
                        return;
                if (n < 0) {
                        client_close(g, NULL);
                        return;
                }
                memmove(l->out, l->out + n, l->out_len - (size_t) n);
                l->out_len -= (size_t) n;
        }
        if (l->dropped) {
                char note[160];

                snprintf(note, sizeof(note),
                         "\r\n[vmsup: %zu bytes of the guest's output were not shown here: this client read too slowly; "
                         "the console log has them]\r\n", l->dropped);
                l->dropped = 0;
                client_queue(l, note, strlen(note));
                client_write(g);
        }
}

static void on_client(struct evloop_source *s, int fd, uint32_t revents, void *userdata) {
        struct guest *g = userdata;
        struct guest_logs *l = g->logs;

        (void) s;
        if (revents & EPOLLOUT)
                client_write(g);
        if (l->client_fd < 0)
                return;
        if ((revents & (EPOLLHUP | EPOLLERR)) && l->in_len == CLIENT_IN_MAX) {
                client_close(g, NULL); /* gone, and nothing more can be read from it */
                return;
        }
        if (revents & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
                while (l->in_len < CLIENT_IN_MAX) {
                        ssize_t n = recv(fd, l->in + l->in_len, CLIENT_IN_MAX - l->in_len, MSG_DONTWAIT);

                        if (n < 0 && errno == EINTR)
                                continue;
                        if (n < 0 && errno == EAGAIN)
                                break;
                        if (n <= 0) { /* detached (Ctrl-] or gone) */
                                log_info("the console client detached");
                                client_close(g, NULL);
                                return;
                        }
                        l->in_len += (size_t) n;
                }
                serial_flush_input(g);
        }
        client_update(g);
        serial_update(g);
}

static void client_update(struct guest *g) {
        struct guest_logs *l = g->logs;
        vmsup_error *err = NULL;

        if (l->client_fd < 0)
                return;
        if (evloop_io_set_events(l->client_src, (l->in_len < CLIENT_IN_MAX ? EPOLLIN : 0) | (l->out_len ? EPOLLOUT : 0),
                                 &err) < 0) {
                log_warning("the console client: %s", err->msg);
                vmsup_error_free(err);
                client_close(g, NULL);
        }
}

/* ---- the serial port ---- */

static void serial_close(struct guest *g) {
        struct guest_logs *l = g->logs;

        l->serial_src = evloop_source_remove(l->serial_src);
        closep(&l->serial_fd);
        l->serial_fd = -1;
        l->serial_paused = false;
        evloop_timer_set(l->serial_timer, -1);
}

static void recent_add(struct guest_logs *l, const char *buf, size_t n) {
        if (n >= CONSOLE_REPLAY_MAX) {
                memcpy(l->recent, buf + n - CONSOLE_REPLAY_MAX, CONSOLE_REPLAY_MAX);
                l->recent_len = CONSOLE_REPLAY_MAX;
                return;
        }
        if (l->recent_len + n > CONSOLE_REPLAY_MAX) {
                size_t drop = l->recent_len + n - CONSOLE_REPLAY_MAX;

                memmove(l->recent, l->recent + drop, l->recent_len - drop);
                l->recent_len -= drop;
        }
        memcpy(l->recent + l->recent_len, buf, n);
        l->recent_len += n;
}

/* Read what is there (at most max bytes) into the log and the client. false: QEMU's end
 * is closed. */
static bool serial_read(struct guest *g, size_t max) {
        struct guest_logs *l = g->logs;
        char buf[READ_CHUNK];
        size_t done = 0;

        while (done < max && l->serial_fd >= 0) {
                ssize_t n = recv(l->serial_fd, buf, sizeof(buf), MSG_DONTWAIT);

                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0 && errno == EAGAIN)
                        break;
                if (n <= 0)
                        return false;
                log_append(g, GUEST_LOG_CONSOLE, buf, (size_t) n);
                client_queue(l, buf, (size_t) n);
                recent_add(l, buf, (size_t) n);
                done += (size_t) n;
        }
        if (done && l->client_fd >= 0) {
                client_write(g);
                client_update(g);
        }
        return true;
}

static void serial_update(struct guest *g) {
        struct guest_logs *l = g->logs;
        vmsup_error *err = NULL;

        if (l->serial_fd < 0)
                return;
        if (evloop_io_set_events(l->serial_src, (l->serial_paused ? 0 : EPOLLIN) | (l->in_len ? EPOLLOUT : 0), &err) < 0) {
                log_warning("the serial console: %s", err->msg);
                vmsup_error_free(err);
        }
}

static void on_serial(struct evloop_source *s, int fd, uint32_t revents, void *userdata) {
        struct guest *g = userdata;
        struct guest_logs *l = g->logs;

        (void) s;
        (void) fd;
        if (revents & EPOLLOUT)
                serial_flush_input(g);
        if (revents & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
                if (!serial_read(g, SERIAL_READ_MAX)) {
                        serial_close(g); /* QEMU exited: the next one gets a new pair */
                        client_update(g);
                        return;
                }
                l->serial_paused = true;
                evloop_timer_set(l->serial_timer, monotonic_ms() + CONSOLE_BATCH_MS);
        }
        serial_update(g);
        client_update(g);
}

static void on_serial_timer(struct evloop_source *s, void *userdata) {
        struct guest *g = userdata;

        (void) s;
        g->logs->serial_paused = false;
        serial_update(g);
}

int guest_serial_open(struct guest *g, int *ret_qemu_end, vmsup_error **err) {
        struct guest_logs *l;
        int sv[2], r;

        if ((r = log_open(g, GUEST_LOG_CONSOLE, err)) < 0)
                return r;
        l = g->logs;
        if (l->serial_fd >= 0) { /* the last QEMU's: what it left, then it goes */
                serial_read(g, SERIAL_DRAIN_MAX);
                serial_close(g);
        }
        l->in_len = 0; /* keys typed for the last QEMU are not for this one's firmware */
        l->recent_len = 0;
        if (!l->serial_timer && (r = evloop_add_timer(g->loop, -1, on_serial_timer, g, &l->serial_timer, err)) < 0)
                return r;
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, errno, "serial console socketpair");
        if ((r = evloop_add_io(g->loop, sv[0], EPOLLIN, on_serial, g, &l->serial_src, err)) < 0) {
                close(sv[0]);
                close(sv[1]);
                return r;
        }
        {
                int sz = SERIAL_SNDBUF;

                if (setsockopt(sv[1], SOL_SOCKET, SO_SNDBUFFORCE, &sz, sizeof(sz)) < 0)
                        (void) setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz));
        }
        l->serial_fd = sv[0];
        *ret_qemu_end = sv[1];
        return 0;
}

/* ---- QEMU's and swtpm's output ---- */

static void pipe_close(struct log_pipe *p) {
        p->src = evloop_source_remove(p->src);
        closep(&p->fd);
        p->fd = -1;
}

/* Everything the pipe holds into the log; false at its end (the child is gone). */
static bool pipe_drain(struct guest *g, enum guest_log which) {
        struct log_pipe *p = &g->logs->pipe[which];
        char buf[READ_CHUNK];

        while (p->fd >= 0) {
                ssize_t n = read(p->fd, buf, sizeof(buf));

                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0 && errno == EAGAIN)
                        return true;
                if (n <= 0)
                        return false;
                log_append(g, which, buf, (size_t) n);
        }
        return false;
}

static void on_pipe(struct evloop_source *s, int fd, uint32_t revents, void *userdata) {
        struct guest *g = userdata;

        (void) fd;
        (void) revents;
        for (int i = 0; i < GUEST_LOG_N; i++)
                if (g->logs->pipe[i].src == s) {
                        if (!pipe_drain(g, i))
                                pipe_close(&g->logs->pipe[i]);
                        return;
                }
}

int guest_log_pipe(struct guest *g, enum guest_log which, int *ret_write_end, vmsup_error **err) {
        struct log_pipe *p;
        int fds[2], r;

        if ((r = log_open(g, which, err)) < 0)
                return r;
        p = &g->logs->pipe[which];
        if (p->fd >= 0) { /* the last child's: what it left, then it goes */
                pipe_drain(g, which);
                pipe_close(p);
        }
        if (pipe2(fds, O_CLOEXEC) < 0)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, errno, "pipe for %s", log_what[which]);
        if (fcntl(fds[0], F_SETFL, O_NONBLOCK) < 0)
                r = vmsup_fail(err, VMSUP_ERR_SYSTEM, errno, "pipe for %s", log_what[which]);
        else
                r = evloop_add_io(g->loop, fds[0], EPOLLIN, on_pipe, g, &p->src, err);
        if (r < 0) {
                close(fds[0]);
                close(fds[1]);
                return r;
        }
        p->fd = fds[0];
        *ret_write_end = fds[1];
        return 0;
}

void guest_logs_drain(struct guest *g) {
        if (!g->logs)
                return;
        for (int i = 0; i < GUEST_LOG_N; i++)
                if (g->logs->pipe[i].fd >= 0 && !pipe_drain(g, i))
                        pipe_close(&g->logs->pipe[i]);
        if (g->logs->serial_fd >= 0 && !serial_read(g, SERIAL_DRAIN_MAX))
                serial_close(g);
}

char *guest_log_tail(struct guest *g, enum guest_log which, int lines) {
        guest_logs_drain(g);
        return rotlog_tail_lines(log_path(g, which), lines);
}

/* ---- `vmsup console` ---- */

void guest_console_attach(struct guest *g, struct control_conn *c, bool force) {
        struct guest_logs *l;
        vmsup_error *err = NULL;
        int fd;

        if (logs_get(g, &err) < 0) {
                control_conn_reply_error(c, err->kind, err->msg);
                control_conn_free(c);
                vmsup_error_free(err);
                return;
        }
        l = g->logs;
        if (l->client_fd >= 0 && !force) {
                char msg[256];

                snprintf(msg, sizeof(msg),
                         "the console of guest %s is in use by another client; 'vmsup console --force' takes it over",
                         g->spec.uuid);
                control_conn_reply_error(c, VMSUP_ERR_BUSY, msg);
                control_conn_free(c);
                return;
        }
        if (l->client_fd >= 0) {
                log_info("a console client takes the console over from another");
                client_close(g, "\r\n[vmsup: another client took the console over]\r\n");
        }
        fd = control_conn_reply_stream(c, json_object_new_string("attached"));
        control_conn_free(c);
        if (fd < 0)
                return;
        if (evloop_add_io(g->loop, fd, EPOLLIN, on_client, g, &l->client_src, &err) < 0) {
                log_warning("the console client: %s", err->msg);
                vmsup_error_free(err);
                close(fd);
                return;
        }
        guest_logs_drain(g); /* what came before it: into the log and the replay, not twice */
        l->client_fd = fd;
        log_info("a console client attached");
        client_queue(l, l->recent, l->recent_len);
        client_write(g);
        client_update(g);
}

bool guest_console_attached(const struct guest *g) {
        return g->logs && g->logs->client_fd >= 0;
}

void guest_logs_free(struct guest *g) {
        if (!g->logs)
                return;
        guest_logs_drain(g);
        if (g->logs->client_fd >= 0)
                client_write(g); /* what is left for it, as far as it takes it now */
        client_close(g, "\r\n[vmsup: the console is closed: the guest's supervisor exits]\r\n");
        serial_close(g);
        g->logs->serial_timer = evloop_source_remove(g->logs->serial_timer);
        for (int i = 0; i < GUEST_LOG_N; i++) {
                pipe_close(&g->logs->pipe[i]);
                rotlog_free(g->logs->log[i]);
        }
        free(g->logs);
        g->logs = NULL;
}
