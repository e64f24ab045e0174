/* The control protocol's errors: the kind travels by name, the client tells "no supervisor"
 * and "no answer in time" apart by kind (never by the message), and the CLI turns them
 * into its sentences and exit statuses. The supervisors here are stand-ins on the
 * control socket; test_control and test_run talk to real ones. */
#include "config.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <json-c/json.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "cli/exitstatus.h"
#include "common/util.h"
#include "supervisor/control.h"
#include "tests/guestfix.h"
#include "tests/helpers.h"

#define UUID "0b7c6e4a-3f0e-4d5c-9a1b-2c3d4e5f6a7b"

static char *root, *conf, sock[sizeof(((struct sockaddr_un *) 0)->sun_path)];

static void setup(void) {
        char cmd[1024];

        root = test_mkdtemp();
        conf = test_write_conf(root, "vmsup.conf",
                               &(struct test_conf) { .root = root, .barbican_url = "http://127.0.0.1:1",
                                                     .supervisor = "stop_timeout = 3\n", .barbican = "retries = 1\n" });
        snprintf(cmd, sizeof(cmd), "mkdir -p '%s/run/%s'", root, UUID);
        cr_assert_eq(system(cmd), 0);
        cr_assert_lt(snprintf(sock, sizeof(sock), "%s/run/%s/control.sock", root, UUID), (int) sizeof(sock));
}

static void teardown(void) {
        free(conf);
        test_root_cleanup(root);
}

TestSuite(control_client, .init = setup, .fini = teardown, .timeout = 60);

/* A socket at sock: bound, and listening when listening (else connect is refused). */
static int stand_in(bool listening) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

        cr_assert_geq(fd, 0);
        memcpy(sa.sun_path, sock, strlen(sock) + 1);
        cr_assert_eq(bind(fd, (struct sockaddr *) &sa, sizeof(sa)), 0, "bind %s: %s", sock, strerror(errno));
        if (listening)
                cr_assert_eq(listen(fd, 16), 0);
        return fd;
}

static vmsup_error *request_error(int timeout_ms) {
        json_object *req = json_object_new_object(), *ret = NULL;
        vmsup_error *err = NULL;

        json_object_object_add(req, "cmd", json_object_new_string("status"));
        cr_assert_lt(control_request(sock, req, timeout_ms, &ret, &err), 0, "succeeded: %s",
                     ret ? json_object_to_json_string(ret) : "null");
        cr_assert_not_null(err);
        json_object_put(req);
        return err;
}

Test(control_client, no_supervisor_is_its_own_kind) {
        vmsup_error *err;
        int fd;

        err = request_error(2000); /* no socket file */
        cr_assert_eq(err->kind, VMSUP_ERR_NO_SUPERVISOR, "%s: %s", vmsup_err_kind_to_string(err->kind), err->msg);
        cr_assert_eq(cli_exit_status(err->kind), 69);
        vmsup_error_free(err);

        fd = stand_in(false); /* a dead supervisor's socket file: connect is refused */
        err = request_error(2000);
        cr_assert_eq(err->kind, VMSUP_ERR_NO_SUPERVISOR, "%s: %s", vmsup_err_kind_to_string(err->kind), err->msg);
        vmsup_error_free(err);
        close(fd);
}

Test(control_client, a_silent_supervisor_is_a_timeout) {
        const char *paths[1] = { sock };
        json_object *req = json_object_new_object(), *rets[1] = { NULL };
        vmsup_error *errs[1] = { NULL }, *err;
        int fd = stand_in(true); /* the kernel takes the connection; nobody answers */

        err = request_error(300);
        cr_assert_eq(err->kind, VMSUP_ERR_TIMEOUT, "%s: %s", vmsup_err_kind_to_string(err->kind), err->msg);
        cr_assert_eq(cli_exit_status(err->kind), 75);
        cr_assert_str_eq(err->msg, "the supervisor did not answer within 300 ms");
        vmsup_error_free(err);

        json_object_object_add(req, "cmd", json_object_new_string("status"));
        cr_assert_eq(control_request_each(paths, 1, req, 300, rets, errs), 0);
        cr_assert_null(rets[0]);
        cr_assert_not_null(errs[0]);
        cr_assert_eq(errs[0]->kind, VMSUP_ERR_TIMEOUT, "%s: %s", vmsup_err_kind_to_string(errs[0]->kind), errs[0]->msg);
        vmsup_error_free(errs[0]);
        json_object_put(req);
        close(fd);
}

struct replier {
        int listen_fd;
        enum vmsup_err_kind kind;
        const char *raw; /* a reply line to send as it is, instead of control_conn_reply_error() */
};

/* One connection, answered with the supervisor's own control_conn_reply_error(). */
static void *reply_once(void *arg) {
        struct replier *p = arg;
        struct pollfd pfd = { .fd = p->listen_fd, .events = POLLIN };
        struct control_conn *c = NULL;
        vmsup_error *err = NULL;

        while (!c) {
                cr_assert_eq(poll(&pfd, 1, 10000), 1, "no client came");
                c = control_accept(p->listen_fd, &err);
                cr_assert_null(err, "%s", err ? err->msg : "");
        }
        for (;;) {
                struct pollfd cp = { .fd = c->fd, .events = POLLIN };
                int r;

                cr_assert_eq(poll(&cp, 1, 10000), 1, "no request came");
                r = control_conn_read(c, &err);
                cr_assert_geq(r, 0, "%s", err ? err->msg : "");
                if (r == 1)
                        break;
        }
        if (p->raw)
                cr_assert_eq(write(c->fd, p->raw, strlen(p->raw)), (ssize_t) strlen(p->raw));
        else
                control_conn_reply_error(c, p->kind, "it went wrong");
        control_conn_free(c);
        return NULL;
}

static vmsup_error *answered(struct replier *p) {
        vmsup_error *err, *lerr = NULL;
        pthread_t t;

        p->listen_fd = control_listen(sock, &lerr);
        cr_assert_geq(p->listen_fd, 0, "%s", lerr ? lerr->msg : "");
        cr_assert_eq(pthread_create(&t, NULL, reply_once, p), 0);
        err = request_error(10000);
        cr_assert_eq(pthread_join(t, NULL), 0);
        close(p->listen_fd);
        unlink(sock);
        return err;
}

Test(control_client, the_kind_travels_by_name) {
        for (int k = VMSUP_ERR_OK + 1; k < VMSUP_ERR_KIND_MAX; k++) {
                struct replier p = { .kind = (enum vmsup_err_kind) k };
                vmsup_error *err = answered(&p);

                cr_assert_eq(err->kind, k, "sent %s, got %s", vmsup_err_kind_to_string((enum vmsup_err_kind) k),
                             vmsup_err_kind_to_string(err->kind));
                cr_assert_str_eq(err->msg, "it went wrong");
                vmsup_error_free(err);
        }
}

Test(control_client, a_reply_without_a_known_kind_is_a_failure) {
        static const char *const lines[] = {
                "{\"ok\": false, \"error\": \"it went wrong\", \"kind\": \"bad-data\"}\n",
                "{\"ok\": false, \"error\": \"it went wrong\", \"kind\": \"something-new\"}\n",
                "{\"ok\": false, \"error\": \"it went wrong\", \"kind\": \"ok\"}\n",
                "{\"ok\": false, \"error\": \"it went wrong\"}\n",
                "{\"ok\": false, \"error\": \"it went wrong\", \"exit_code\": 75}\n",
        };
        static const enum vmsup_err_kind want[] = { VMSUP_ERR_DATA, VMSUP_ERR_FAILED, VMSUP_ERR_FAILED,
                                                    VMSUP_ERR_FAILED, VMSUP_ERR_FAILED };

        for (size_t i = 0; i < ARRAY_SIZE(lines); i++) {
                struct replier p = { .raw = lines[i] };
                vmsup_error *err = answered(&p);

                cr_assert_eq(err->kind, want[i], "%s: got %s", lines[i], vmsup_err_kind_to_string(err->kind));
                cr_assert_str_eq(err->msg, "it went wrong");
                vmsup_error_free(err);
        }
}

Test(control_client, the_cli_says_a_guest_is_not_running_under_vmsup) {
        const char *verbs[] = { "status", "stop", "reboot", "qmp" };

        for (size_t i = 0; i < ARRAY_SIZE(verbs); i++) {
                const char *args[] = { "--config", conf, verbs[i], UUID, streq(verbs[i], "qmp") ? "query-status" : NULL,
                                       NULL };
                struct test_run r;

                test_run_vmsup(&r, NULL, args);
                cr_assert_eq(r.exit_code, 69, "%s: %s", verbs[i], r.err);
                cr_assert(strstr(r.err, "guest " UUID " is not running under vmsup: connect to the guest's supervisor"),
                          "%s: %s", verbs[i], r.err);
                test_run_clear(&r);
        }
}
