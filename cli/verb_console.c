#include "config.h"

/* `vmsup console UUID`: the guest's serial console on this terminal, through the
 * supervisor's control socket (supervisor/logs.c holds the other end); `--log`: the
 * newest bytes of its console log, read from the files, for a running or a stopped guest. */

#include <errno.h>
#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <termios.h>
#include <unistd.h>

#include "cli/verbs.h"
#include "common/fileio.h"
#include "common/log.h"
#include "common/rotlog.h"
#include "common/util.h"
#include "common/vtpm.h"

/* Nova's MAX_CONSOLE_BYTES: what get_console_output returns at most */
#define CONSOLE_LOG_DEFAULT_BYTES 102400
#define CONSOLE_LOG_MAX_BYTES (1024L * 1024 * 1024)
/* Ctrl-]: detaches, as virsh console; never sent to the guest */
#define ESCAPE_BYTE 0x1d

static void help(void) {
        printf("Usage: vmsup console UUID [--force]\n"
               "       vmsup console UUID --log [--bytes N]\n"
               "\n"
               "Attach this terminal to the guest's serial console (as virsh console): what\n"
               "the guest writes appears here, what you type goes to the guest. Ctrl-] detaches.\n"
               "The console log keeps recording while you are attached. One client at a time:\n"
               "another is refused unless it gives --force, which takes the console over.\n"
               "\n"
               "--log prints the newest N bytes of the guest's console log instead (default\n"
               "102400, as Nova's get_console_output), across its rotated files (console.log,\n"
               "console.log.0, ...), oldest first; the guest may be running or stopped.\n"
               "\n"
               "Exit status: 0 detached, or the console closed (the guest stopped); 64 bad\n"
               "arguments; 66 no console log; 69 the guest is not running under vmsup; 75\n"
               "another client is attached.\n");
}

static int print_log(struct vmsup_ctx *ctx, const char *uuid, long bytes) {
        _cleanup_error_ vmsup_error *err = NULL;
        _cleanup_free_ char *path = NULL, *text = NULL;
        size_t len = 0;

        if (vmsup_ctx_config(ctx, &err) < 0)
                return log_error_kind(err);
        if (asprintf(&path, "%s/%s/console.log", ctx->cfg.paths.log_dir, uuid) < 0)
                return VMSUP_ERR_SYSTEM;
        if (rotlog_tail(path, (size_t) bytes, &text, &len, &err) < 0) {
                if (err->kind == VMSUP_ERR_NOT_FOUND)
                        vmsup_error_prefix(&err, "guest %s has no console log", uuid);
                return log_error_kind(err);
        }
        if (fwrite(text, 1, len, stdout) != len || fflush(stdout) != 0) {
                log_error("write the console log to standard output: %s", strerror(errno));
                return VMSUP_ERR_IO;
        }
        return 0;
}

static struct termios saved_tio;
static bool tio_saved;

static void terminal_restore(void) {
        if (tio_saved)
                tcsetattr(STDIN_FILENO, TCSADRAIN, &saved_tio);
        tio_saved = false;
}

/* Raw mode: every key goes to the guest (Ctrl-C too), nothing echoed here. TCSADRAIN, not
 * TCSAFLUSH: what was typed already is for the guest, not to be thrown away. */
static int terminal_raw(void) {
        struct termios tio;

        if (tcgetattr(STDIN_FILENO, &saved_tio) < 0)
                return -errno;
        tio = saved_tio;
        cfmakeraw(&tio);
        tio.c_cc[VMIN] = 1;
        tio.c_cc[VTIME] = 0;
        if (tcsetattr(STDIN_FILENO, TCSADRAIN, &tio) < 0)
                return -errno;
        tio_saved = true;
        return 0;
}

/* Copy between the terminal and the console until Ctrl-], the end of the connection or
 * a signal. */
static int relay(int sock, int sigfd, bool tty) {
        bool stdin_open = true;
        char buf[16384];

        for (;;) {
                struct pollfd p[3] = { { sock, POLLIN, 0 }, { sigfd, POLLIN, 0 }, { stdin_open ? STDIN_FILENO : -1, POLLIN, 0 } };
                ssize_t n;

                if (poll(p, 3, -1) < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (p[1].revents)
                        return 0;
                if (p[0].revents) {
                        n = read(sock, buf, sizeof(buf));
                        if (n < 0 && errno == EINTR)
                                continue;
                        if (n <= 0)
                                return 1; /* the supervisor closed it */
                        if (fd_write_all(STDOUT_FILENO, buf, (size_t) n) < 0)
                                return 0;
                }
                if (p[2].revents) {
                        char *esc;

                        n = read(STDIN_FILENO, buf, sizeof(buf));
                        if (n < 0 && errno == EINTR)
                                continue;
                        if (n <= 0) {
                                /* not a terminal: input ended, the output goes on until the
                                 * console closes or a signal */
                                stdin_open = false;
                                if (tty)
                                        return 0;
                                continue;
                        }
                        esc = tty ? memchr(buf, ESCAPE_BYTE, (size_t) n) : NULL;
                        if (esc)
                                n = esc - buf;
                        if (n > 0 && fd_write_all(sock, buf, (size_t) n) < 0)
                                return 1;
                        if (esc)
                                return 0;
                }
        }
}

static int attach(struct vmsup_ctx *ctx, const char *uuid, bool force) {
        _cleanup_error_ vmsup_error *err = NULL;
        _cleanup_json_ json_object *req = json_object_new_object(), *ret = NULL;
        _cleanup_free_ char *path = NULL;
        _cleanup_close_ int sock = -1, sigfd = -1;
        bool tty = isatty(STDIN_FILENO);
        sigset_t mask, old;
        int r;

        if (vmsup_ctx_config(ctx, &err) < 0)
                return log_error_kind(err);
        if (asprintf(&path, "%s/%s/control.sock", ctx->cfg.paths.run_dir, uuid) < 0)
                return VMSUP_ERR_SYSTEM;
        json_object_object_add(req, "cmd", json_object_new_string("console"));
        json_object_object_add(req, "force", json_object_new_boolean(force));
        sock = control_stream_open(path, req, 10000, &ret, &err);
        if (sock < 0) {
                if (err->kind == VMSUP_ERR_NO_SUPERVISOR)
                        vmsup_error_prefix(&err, "guest %s is not running under vmsup", uuid);
                return log_error_kind(err);
        }
        sigemptyset(&mask);
        sigaddset(&mask, SIGTERM);
        sigaddset(&mask, SIGHUP);
        sigaddset(&mask, SIGINT);
        sigaddset(&mask, SIGQUIT);
        sigprocmask(SIG_BLOCK, &mask, &old);
        sigfd = signalfd(-1, &mask, SFD_CLOEXEC);
        if (sigfd < 0) {
                log_error("signalfd: %s", strerror(errno));
                return VMSUP_ERR_SYSTEM;
        }
        /* raw before the line that says we are connected: a key typed after it must not
         * meet the terminal's own line editing (echoed here, held until Enter) */
        if (tty && (r = terminal_raw()) < 0) {
                log_error("put the terminal in raw mode: %s", strerror(-r));
                return VMSUP_ERR_SYSTEM;
        }
        fprintf(stderr, "Connected to the console of guest %s%sEscape character is ^] (Ctrl + ])%s", uuid,
                tty ? "\r\n" : "\n", tty ? "\r\n" : "\n");
        r = relay(sock, sigfd, tty);
        terminal_restore();
        sigprocmask(SIG_SETMASK, &old, NULL);
        if (r < 0) {
                log_error("the console: %s", strerror(-r));
                return VMSUP_ERR_IO;
        }
        fprintf(stderr, r == 1 ? "\nThe console closed.\n" : "\n");
        return 0;
}

int verb_console(struct vmsup_ctx *ctx, int argc, char **argv) {
        static const struct option longopts[] = { { "force", no_argument, NULL, 'f' },
                                                   { "log", no_argument, NULL, 'l' },
                                                   { "bytes", required_argument, NULL, 'b' },
                                                   { "help", no_argument, NULL, 'h' }, {} };
        bool force = false, log = false;
        long bytes = -1;
        int c;

        while ((c = getopt_long(argc, argv, "flb:h", longopts, NULL)) != -1) {
                switch (c) {
                case 'f':
                        force = true;
                        break;
                case 'l':
                        log = true;
                        break;
                case 'b': {
                        char *end;

                        errno = 0;
                        bytes = strtol(optarg, &end, 10);
                        if (!*optarg || *end || errno || bytes < 1 || bytes > CONSOLE_LOG_MAX_BYTES)
                                return verb_usage_error("console", "--bytes: '%s' is not a number of bytes from 1 to %ld",
                                                        optarg, CONSOLE_LOG_MAX_BYTES);
                        break;
                }
                case 'h':
                        help();
                        return 0;
                default:
                        return verb_usage_error("console", "bad option");
                }
        }
        if (argc - optind != 1)
                return verb_usage_error("console", "expects a guest UUID");
        if (!uuid_is_valid(argv[optind]))
                return verb_usage_error("console", "'%s' is not a guest UUID", argv[optind]);
        if (bytes > 0 && !log)
                return verb_usage_error("console", "--bytes goes with --log");
        if (force && log)
                return verb_usage_error("console", "--force attaches; --log only reads the log");
        if (log)
                return print_log(ctx, argv[optind], bytes > 0 ? bytes : CONSOLE_LOG_DEFAULT_BYTES);
        return attach(ctx, argv[optind], force);
}
