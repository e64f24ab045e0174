#include "config.h"

/* What the service manager hears of the guest: READY=1 (and --ready-fd's newline) once
 * the guest runs, STATUS= lines as it goes, STOPPING=1 when it stops (common/notify.h).
 * A message that cannot be sent is logged and the guest goes on: a service manager that
 * does not listen is no reason to stop a guest. */

#include <malloc.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "common/log.h"
#include "common/notify.h"
#include "common/util.h"

#include "supervisor/guest_internal.h"

int guest_notify_open(struct guest *g, int ready_fd, vmsup_error **err) {
        g->ready_fd = ready_fd;
        return notify_socket_from_env(&g->notify, err);
}

static void send_line(struct guest *g, const char *text) {
        vmsup_error *err = NULL;

        if (notify_socket_send(g->notify, text, &err) < 0) {
                log_warning("%s", err->msg);
                vmsup_error_free(err);
        }
}

void guest_notify_status(struct guest *g, const char *fmt, ...) {
        char text[512] = "STATUS=";
        va_list ap;

        if (!g->notify)
                return;
        va_start(ap, fmt);
        vsnprintf(text + strlen(text), sizeof(text) - strlen(text), fmt, ap);
        va_end(ap);
        send_line(g, text);
}

void guest_notify_ready(struct guest *g) {
        vmsup_error *err = NULL;

        if (g->notified_ready) {
                guest_notify_status(g, "running");
                return;
        }
        g->notified_ready = true;
        /* what the start freed (the spec's and config's parse, QMP's capabilities, the
         * unseal's buffers) goes back to the kernel, also from the middle of the heap:
         * 50 KiB of a supervisor's 420 KiB of private memory */
        (void) malloc_trim(0);
        send_line(g, "READY=1\nSTATUS=running");
        if (g->ready_fd >= 0) {
                int fd = g->ready_fd;

                g->ready_fd = -1;
                if (notify_ready_fd_signal(fd, &err) < 0) {
                        log_warning("%s", err->msg);
                        vmsup_error_free(err);
                }
        }
}

void guest_notify_stopping(struct guest *g, const char *status) {
        char text[512];

        if (!g->notify)
                return;
        snprintf(text, sizeof(text), "%sSTATUS=%s", g->notified_stopping ? "" : "STOPPING=1\n", status);
        g->notified_stopping = true;
        send_line(g, text);
}

void guest_notify_close(struct guest *g) {
        g->notify = notify_socket_free(g->notify);
        /* never ready: the reader sees the end of the pipe without a newline */
        closep(&g->ready_fd);
}
