/* A man in the middle of the supervisors' migration channel, for the migration tests
 * (not a test itself). It terminates TLS on both sides with the test CA's certificates:
 * towards the source it is the destination (the destination's server certificate),
 * towards the destination it is the source (the source's client certificate). It
 * forwards each frame, re-framed by crypto/migchan, and carries QEMU's stream too: READY's
 * port is rewritten to a listener of its own, and what the source's QEMU sends there is
 * spliced to the destination's port, from the address the relay's channel comes from
 * (the destination takes the stream only from there).
 *
 *   migrelay --listen ADDR:PORT --to ADDR:PORT --ca F --server-cert F --server-key F
 *            --client-cert F --client-key F [--peer-name NAME] [ACTION ...]
 * ACTION, for the first frame of TYPE (HELLO, ..., RUNNING, DONE, ABORT) going DIR
 * (a2b: source to destination, b2a: back):
 *   --drop DIR:TYPE          do not forward it; close both channels
 *   --hold DIR:TYPE:FILE     keep it until FILE exists; then forward it if FILE says
 *                            "forward", else (e.g. "drop") do as --drop; SIGUSR1
 *                            releases it as "forward", SIGUSR2 as "drop". Meanwhile
 *                            the rest of its direction waits behind it; the other
 *                            direction and QEMU's stream flow on.
 *   --cut DIR:TYPE           forward it, then forward nothing more either way (both
 *                            channels stay open and silent)
 * One session; exits 0 when both channels are closed. Logs each frame on stderr
 * ("a2b HELLO", "b2a READY port 40001 -> 40002", "dropped b2a RUNNING", "holding ...",
 * "closed") so that tests can wait for a line. */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/util.h"
#include "migrate/migchan.h"

enum action_kind { ACT_DROP, ACT_HOLD, ACT_CUT };

struct action {
        enum action_kind kind;
        int dir; /* 0 a2b, 1 b2a */
        enum mig_msg type;
        const char *file;
        bool done;
};

#define MAX_ACTIONS 8
#define SPLICE_BUF (256 * 1024)

static struct action actions[MAX_ACTIONS];
static int n_actions;
static const char *dir_name[2] = { "a2b", "b2a" };

struct pipe_half {
        int from, to;
        char *buf;
        size_t len, off;
        bool eof;
};

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...) {
        va_list ap;

        fprintf(stderr, "migrelay: ");
        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
        fprintf(stderr, "\n");
        exit(1);
}

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...) {
        va_list ap;

        fprintf(stderr, "migrelay: ");
        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
        fprintf(stderr, "\n");
        fflush(stderr);
}

static enum mig_msg type_of(const char *name) {
        for (int t = MIG_HELLO; t < 32; t++)
                if (streq(mig_msg_name((enum mig_msg) t), name))
                        return (enum mig_msg) t;
        die("unknown message type '%s'", name);
}

static void parse_action(enum action_kind kind, char *arg) {
        char *dir = strtok(arg, ":"), *type = strtok(NULL, ":"), *file = strtok(NULL, "");
        struct action *a;

        if (n_actions == MAX_ACTIONS || !dir || !type || (kind == ACT_HOLD) != !!file)
                die("bad action '%s'", arg);
        a = &actions[n_actions++];
        a->kind = kind;
        a->dir = streq(dir, "a2b") ? 0 : streq(dir, "b2a") ? 1 : -1;
        if (a->dir < 0)
                die("direction '%s' is not a2b or b2a", dir);
        a->type = type_of(type);
        a->file = file;
}

static void split_host_port(char *arg, char **host, char **port) {
        char *colon = strrchr(arg, ':');

        if (!colon)
                die("'%s' is not ADDR:PORT", arg);
        *colon = '\0';
        *host = arg;
        *port = colon + 1;
}

static struct action *action_for(int dir, enum mig_msg type) {
        for (int i = 0; i < n_actions; i++)
                if (!actions[i].done && actions[i].dir == dir && actions[i].type == type)
                        return &actions[i];
        return NULL;
}

static volatile sig_atomic_t released; /* 1 SIGUSR1 (forward), 2 SIGUSR2 (drop) */

static void on_release(int sig) {
        released = sig == SIGUSR1 ? 1 : 2;
}

/* A held frame's fate: 1 "forward" (FILE says so, or SIGUSR1), -1 drop (FILE says
 * anything else, or SIGUSR2), 0 not yet. */
static int hold_decided(const char *file) {
        char text[64] = "";
        int fd;

        if (released)
                return released == 1 ? 1 : -1;
        fd = open(file, O_RDONLY | O_CLOEXEC);
        if (fd >= 0) {
                ssize_t n = read(fd, text, sizeof(text) - 1);

                close(fd);
                if (n > 0) {
                        text[n] = '\0';
                        return strncmp(text, "forward", 7) == 0 ? 1 : -1;
                }
        }
        return 0;
}

static int forward(struct migchan *to, struct mig_frame *f, vmsup_error **err) {
        if (f->type == MIG_SECRET)
                return migchan_send(to, MIG_SECRET, f->secret, f->len, 5000, err);
        return migchan_send_json(to, f->type, f->json, 5000, err);
}

/* Pass frame f on from side i to the other (READY's port rewritten to a listener of our
 * own for QEMU's stream); it is cleared. -1 when the other side is gone. */
static int deliver(struct migchan **ch, int i, struct mig_frame *f, int *stream_lfd, int *dest_stream_port,
                   const char *listen_host) {
        vmsup_error *err = NULL;

        if (f->type == MIG_READY) {
                struct sockaddr_in sa;
                socklen_t len = sizeof(sa);
                int port;

                *dest_stream_port = json_object_get_int(json_object_object_get(f->json, "port"));
                *stream_lfd = migchan_listen(listen_host, "0", &err);
                if (*stream_lfd < 0 || getsockname(*stream_lfd, (struct sockaddr *) &sa, &len) < 0)
                        die("listen for QEMU's stream: %s", err ? err->msg : strerror(errno));
                port = ntohs(sa.sin_port);
                json_object_object_add(f->json, "port", json_object_new_int(port));
                say("b2a READY port %d -> %d", *dest_stream_port, port);
        }
        if (forward(ch[!i], f, &err) < 0) {
                say("forward %s: %s; closed", mig_msg_name(f->type), err->msg);
                vmsup_error_free(err);
                mig_frame_clear(f);
                return -1;
        }
        mig_frame_clear(f);
        return 0;
}

static int stream_connect(const char *local, const char *host, int port) {
        struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t) port) },
                           me = { .sin_family = AF_INET };
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

        if (fd < 0 || inet_pton(AF_INET, host, &sa.sin_addr) != 1 || inet_pton(AF_INET, local, &me.sin_addr) != 1 ||
            bind(fd, (struct sockaddr *) &me, sizeof(me)) < 0 || connect(fd, (struct sockaddr *) &sa, sizeof(sa)) < 0)
                die("connect QEMU's stream to %s:%d from %s: %s", host, port, local, strerror(errno));
        fcntl(fd, F_SETFL, O_NONBLOCK);
        return fd;
}

/* One direction of the spliced stream: read when the buffer is empty, write what it
 * holds. */
static void half_poll(struct pipe_half *h, struct pollfd *in, struct pollfd *out) {
        *in = (struct pollfd) { .fd = !h->eof && h->len == 0 ? h->from : -1, .events = POLLIN };
        *out = (struct pollfd) { .fd = h->len > h->off ? h->to : -1, .events = POLLOUT };
}

static void half_serve(struct pipe_half *h, const struct pollfd *in, const struct pollfd *out) {
        if (in->revents) {
                ssize_t n = read(h->from, h->buf, SPLICE_BUF);

                if (n > 0) {
                        h->len = (size_t) n;
                        h->off = 0;
                } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
                        h->eof = true;
                        shutdown(h->to, SHUT_WR);
                }
        }
        if (out->revents && h->len > h->off) {
                ssize_t n = write(h->to, h->buf + h->off, h->len - h->off);

                if (n > 0) {
                        h->off += (size_t) n;
                        if (h->off == h->len)
                                h->len = h->off = 0;
                } else if (n < 0 && errno != EAGAIN && errno != EINTR) {
                        h->eof = true;
                        h->len = h->off = 0;
                }
        }
}

int main(int argc, char **argv) {
        static const struct option longopts[] = {
                { "listen", required_argument, NULL, 'l' },      { "to", required_argument, NULL, 't' },
                { "ca", required_argument, NULL, 'c' },          { "server-cert", required_argument, NULL, 's' },
                { "server-key", required_argument, NULL, 'S' },  { "client-cert", required_argument, NULL, 'k' },
                { "client-key", required_argument, NULL, 'K' },  { "peer-name", required_argument, NULL, 'p' },
                { "drop", required_argument, NULL, 'd' },        { "hold", required_argument, NULL, 'h' },
                { "cut", required_argument, NULL, 'x' },         {},
        };
        char *listen_host = NULL, *listen_port = NULL, *to_host = NULL, *to_port = NULL;
        const char *ca = NULL, *scert = NULL, *skey = NULL, *ccert = NULL, *ckey = NULL, *peer_name = NULL;
        struct migchan *ch[2] = { NULL, NULL }; /* [0] the source's side, [1] the destination's */
        struct pipe_half half[2] = { { .from = -1, .to = -1 }, { .from = -1, .to = -1 } };
        int lfd, stream_lfd = -1, dest_stream_port = 0, c, held_dir = 0;
        bool cut = false;
        struct mig_frame held = { 0 }; /* a frame --hold keeps */
        struct action *held_a = NULL;  /* its action while it is kept */
        vmsup_error *err = NULL;

        signal(SIGPIPE, SIG_IGN);
        signal(SIGUSR1, on_release);
        signal(SIGUSR2, on_release);
        while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
                switch (c) {
                case 'l': split_host_port(optarg, &listen_host, &listen_port); break;
                case 't': split_host_port(optarg, &to_host, &to_port); break;
                case 'c': ca = optarg; break;
                case 's': scert = optarg; break;
                case 'S': skey = optarg; break;
                case 'k': ccert = optarg; break;
                case 'K': ckey = optarg; break;
                case 'p': peer_name = optarg; break;
                case 'd': parse_action(ACT_DROP, optarg); break;
                case 'h': parse_action(ACT_HOLD, optarg); break;
                case 'x': parse_action(ACT_CUT, optarg); break;
                default: die("bad option");
                }
        }
        if (!listen_host || !to_host || !ca || !scert || !skey || !ccert || !ckey)
                die("usage: migrelay --listen ADDR:PORT --to ADDR:PORT --ca F --server-cert F --server-key F "
                    "--client-cert F --client-key F [--drop|--hold|--cut ...]");
        {
                struct migchan_tls server = { .ca_file = ca, .cert_file = scert, .key_file = skey },
                                   client = { .ca_file = ca, .cert_file = ccert, .key_file = ckey,
                                              .peer_name = peer_name ? peer_name : to_host };

                lfd = migchan_listen(listen_host, listen_port, &err);
                if (lfd < 0)
                        die("%s", err->msg);
                say("listening on %s:%s", listen_host, listen_port);
                if (migchan_accept(lfd, &server, 600000, &ch[0], &err) < 0)
                        die("accept the source: %s", err->msg);
                say("source %s", migchan_peer(ch[0]));
                if (migchan_connect(to_host, to_port, &client, 20000, &ch[1], &err) < 0)
                        die("connect to the destination: %s", err->msg);
                say("destination %s", migchan_peer(ch[1]));
        }
        close(lfd);

        while (ch[0] || ch[1]) {
                struct pollfd p[7];
                bool stop = false;

                /* a held frame: the rest of its direction waits behind it, the other
                 * direction and QEMU's stream flow on; its fate is looked at every 50 ms */
                for (int i = 0; i < 2; i++)
                        p[i] = (struct pollfd) { .fd = ch[i] && !(held_a && held_dir == i) ? migchan_fd(ch[i]) : -1,
                                                 .events = POLLIN };
                p[2] = (struct pollfd) { .fd = stream_lfd, .events = POLLIN };
                half_poll(&half[0], &p[3], &p[4]);
                half_poll(&half[1], &p[5], &p[6]);
                if (poll(p, 7, held_a ? 50 : -1) < 0 && errno != EINTR)
                        die("poll: %s", strerror(errno));
                if (held_a) {
                        int fate = hold_decided(held_a->file);

                        if (fate < 0) {
                                say("dropped %s %s", dir_name[held_dir], mig_msg_name(held.type));
                                mig_frame_clear(&held);
                                held_a = NULL;
                                stop = true;
                        } else if (fate > 0) {
                                say("released %s %s", dir_name[held_dir], mig_msg_name(held.type));
                                held_a = NULL;
                                if (deliver(ch, held_dir, &held, &stream_lfd, &dest_stream_port, listen_host) < 0)
                                        stop = true;
                        }
                }
                for (int i = 0; i < 2 && !stop; i++) {
                        for (;;) {
                                struct mig_frame f = { 0 };
                                struct action *a;
                                enum mig_msg type;
                                int r;

                                if (!ch[i] || (held_a && held_dir == i))
                                        break;
                                r = migchan_recv(ch[i], &f, &err);
                                if (r < 0) {
                                        say("%s side: %s; closed", i ? "destination" : "source", err->msg);
                                        err = vmsup_error_free(err);
                                        stop = true;
                                        break;
                                }
                                if (r == 0)
                                        break;
                                say("%s %s", dir_name[i], mig_msg_name(f.type));
                                if (cut) {
                                        mig_frame_clear(&f);
                                        continue;
                                }
                                a = action_for(i, f.type);
                                if (a)
                                        a->done = true;
                                if (a && a->kind == ACT_HOLD) {
                                        say("holding %s %s until %s", dir_name[i], mig_msg_name(f.type), a->file);
                                        held = f;
                                        held_dir = i;
                                        held_a = a;
                                        break;
                                }
                                if (a && a->kind == ACT_DROP) {
                                        say("dropped %s %s", dir_name[i], mig_msg_name(f.type));
                                        mig_frame_clear(&f);
                                        stop = true;
                                        break;
                                }
                                type = f.type;
                                if (deliver(ch, i, &f, &stream_lfd, &dest_stream_port, listen_host) < 0) {
                                        stop = true;
                                        break;
                                }
                                if (a && a->kind == ACT_CUT) {
                                        say("cut after %s %s", dir_name[i], mig_msg_name(type));
                                        cut = true;
                                }
                        }
                }
                if (stop) {
                        ch[0] = migchan_free(ch[0]);
                        ch[1] = migchan_free(ch[1]);
                        say("closed");
                        break;
                }
                if (p[2].revents) {
                        int a = accept4(stream_lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);

                        if (a >= 0) {
                                int b = stream_connect(migchan_local_addr(ch[1]), to_host, dest_stream_port);

                                close(stream_lfd);
                                stream_lfd = -1;
                                half[0] = (struct pipe_half) { .from = a, .to = b, .buf = malloc(SPLICE_BUF) };
                                half[1] = (struct pipe_half) { .from = b, .to = a, .buf = malloc(SPLICE_BUF) };
                                if (!half[0].buf || !half[1].buf)
                                        die("out of memory");
                                say("QEMU's stream spliced to %s:%d", to_host, dest_stream_port);
                        }
                }
                if (half[0].buf) {
                        half_serve(&half[0], &p[3], &p[4]);
                        half_serve(&half[1], &p[5], &p[6]);
                }
        }
        /* the stream, if any, ends with the relay */
        return 0;
}
