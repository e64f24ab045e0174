#include "config.h"

#include <criterion/criterion.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "cli/exitstatus.h"
#include "common/util.h"
#include "qmp/client.h"
#include "tests/fakeqmp.h"
#include "tests/helpers.h"

TestSuite(qmp_client, .timeout = 30);

/* What the callbacks saw, in order: "E:NAME:data;" for an event, "R:return;" for a reply,
 * "X:message;" for a failed command. */
static char seen[1 << 16];

static void record(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void record(const char *fmt, ...) {
        size_t n = strlen(seen);
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(seen + n, sizeof(seen) - n, fmt, ap);
        va_end(ap);
}

static const char *plain(json_object *o) {
        return o ? json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE) : "-";
}

static void on_event(void *userdata, const char *event, json_object *data, json_object *timestamp) {
        json_object *sec = NULL;

        record("E:%s:%s", event, plain(data));
        if (timestamp && json_object_object_get_ex(timestamp, "seconds", &sec))
                record("@%s%s", json_object_get_string(sec), "");
        record(";%s%s", "", "");
        (*(int *) userdata)++;
}

static void on_reply(void *userdata, json_object *ret, const vmsup_error *err) {
        if (err)
                record("X:%s%s;", err->msg, "");
        else
                record("R:%s%s;", plain(ret), "");
        (*(int *) userdata)++;
}

static int events;

static struct qmp_client *client_on(const struct fakeqmp_step *script, struct fakeqmp **ret_f) {
        struct qmp_client *c = NULL;
        vmsup_error *err = NULL;
        int fd;

        seen[0] = '\0';
        events = 0;
        *ret_f = fakeqmp_start(script, &fd);
        if (qmp_client_new_fd(fd, &c, &err) < 0)
                cr_assert_fail("qmp_client_new_fd: %s", err->msg);
        qmp_client_set_event_handler(c, on_event, &events);
        return c;
}

/* Free the client (the server sees the hang-up) and check the server saw what it expected. */
static void finish(struct qmp_client *c, struct fakeqmp *f) {
        char *failure;

        qmp_client_free(c);
        failure = fakeqmp_finish(f);
        cr_assert_null(failure, "%s", failure);
}

/* Drive the async API as the supervisor's loop would, until *count reaches want. */
static void pump(struct qmp_client *c, int *count, int want) {
        vmsup_error *err = NULL;

        while (*count < want) {
                uint32_t ev = qmp_client_epoll_events(c);
                struct pollfd pfd = { qmp_client_fd(c), (short) ((ev & EPOLLIN ? POLLIN : 0) | (ev & EPOLLOUT ? POLLOUT : 0)), 0 };
                int n = poll(&pfd, 1, qmp_client_next_timeout_ms(c) < 0 ? 10000 : qmp_client_next_timeout_ms(c));

                cr_assert_geq(n, 0);
                if (n == 0 && qmp_client_next_timeout_ms(c) < 0)
                        cr_assert_fail("nothing happened for 10 s; seen so far: %s", seen);
                if (n == 0)
                        qmp_client_expire(c);
                else if (qmp_client_dispatch(c, &err) < 0) {
                        record("D:%s%s;", err->msg, "");
                        err = vmsup_error_free(err);
                        return;
                }
        }
}

static const char *execute_error(struct qmp_client *c, const char *command, const char *args_json, int timeout_ms,
                                 int *ret_exit) {
        static char msg[4096];
        json_object *args = args_json ? json_tokener_parse(args_json) : NULL, *ret = NULL;
        vmsup_error *err = NULL;
        int r;

        r = qmp_client_execute(c, command, args, -1, timeout_ms, &ret, &err);
        json_object_put(args);
        cr_assert_lt(r, 0, "'%s' succeeded: %s", command, plain(ret));
        cr_assert_not_null(err);
        snprintf(msg, sizeof(msg), "%s", err->msg);
        if (ret_exit)
                *ret_exit = cli_exit_status(err->kind);
        vmsup_error_free(err);
        return msg;
}

static char *execute_ok(struct qmp_client *c, const char *command, const char *args_json) {
        json_object *args = args_json ? json_tokener_parse(args_json) : NULL, *ret = NULL;
        vmsup_error *err = NULL;
        char *text;

        if (qmp_client_execute(c, command, args, -1, 5000, &ret, &err) < 0)
                cr_assert_fail("'%s' failed: %s", command, err->msg);
        json_object_put(args);
        text = strdup(plain(ret));
        json_object_put(ret);
        return text;
}

static void handshake(struct qmp_client *c) {
        vmsup_error *err = NULL;

        if (qmp_client_handshake(c, 5000, &err) < 0)
                cr_assert_fail("handshake: %s", err->msg);
}

Test(qmp_client, handshake_keeps_the_version_and_negotiates) {
        static const struct fakeqmp_step script[] = { FQ_HANDSHAKE, { FQ_END } };
        struct fakeqmp *f;
        struct qmp_client *c = client_on(script, &f);

        cr_assert_null(qmp_client_qemu_version(c));
        handshake(c);
        cr_assert_str_eq(qmp_client_qemu_version(c), "7.2.22");
        handshake(c); /* done already: returns at once, sends nothing */
        finish(c, f);
}

Test(qmp_client, execute_returns_the_return_value) {
        static const struct fakeqmp_step script[] = {
                FQ_HANDSHAKE,
                { FQ_EXPECT, "query-status" },
                FQ_REPLY("{\"status\": \"prelaunch\", \"singlestep\": false, \"running\": false}"),
                { FQ_EXPECT, "human-monitor-command", "{\"command-line\": \"info version\"}" },
                FQ_REPLY("\"7.2.22\\r\\n\""),
                { FQ_END },
        };
        struct fakeqmp *f;
        struct qmp_client *c = client_on(script, &f);
        char *r;

        handshake(c);
        r = execute_ok(c, "query-status", NULL);
        cr_assert_str_eq(r, "{\"status\":\"prelaunch\",\"singlestep\":false,\"running\":false}");
        free(r);
        r = execute_ok(c, "human-monitor-command", "{\"command-line\": \"info version\"}");
        cr_assert_str_eq(r, "\"7.2.22\\r\\n\"");
        free(r);
        finish(c, f);
}

Test(qmp_client, qemu_errors_carry_class_and_desc_with_exit_1) {
        static const struct fakeqmp_step script[] = {
                FQ_HANDSHAKE,
                { FQ_EXPECT, "cont" },
                { FQ_SEND, "{\"id\": $ID, \"error\": {\"class\": \"GenericError\", \"desc\": "
                           "\"Resetting the Virtual Machine is required\"}}\r\n" },
                { FQ_EXPECT, "query-status" },
                FQ_REPLY("{\"status\": \"paused\"}"),
                { FQ_END },
        };
        struct fakeqmp *f;
        struct qmp_client *c = client_on(script, &f);
        int code = 0;
        char *r;

        handshake(c);
        cr_assert_str_eq(execute_error(c, "cont", NULL, 5000, &code),
                         "QMP command 'cont' failed: GenericError: Resetting the Virtual Machine is required");
        cr_assert_eq(code, 1);
        /* a failed command leaves the connection usable */
        r = execute_ok(c, "query-status", NULL);
        cr_assert_str_eq(r, "{\"status\":\"paused\"}");
        free(r);
        finish(c, f);
}

Test(qmp_client, events_before_a_reply_go_to_the_handler_in_order) {
        static const struct fakeqmp_step script[] = {
                FQ_HANDSHAKE,
                FQ_EVENT("RESET", "{\"guest\": true, \"reason\": \"guest-reset\"}"),
                { FQ_EXPECT, "stop" },
                FQ_EVENT("STOP", "{}"),
                { FQ_SEND, "{\"timestamp\": {\"seconds\": 1700000001, \"microseconds\": 5}, \"event\": \"RESUME\"}\r\n" },
                FQ_EVENT("MIGRATION", "{\"status\": \"setup\"}"),
                FQ_REPLY("{}"),
                FQ_EVENT("SHUTDOWN", "{\"guest\": false, \"reason\": \"host-qmp-quit\"}"),
                { FQ_PAUSE },
                { FQ_END },
        };
        struct fakeqmp *f;
        struct qmp_client *c = client_on(script, &f);
        int replies = 0;
        vmsup_error *err = NULL;

        handshake(c);
        cr_assert_eq(qmp_client_execute_async(c, "stop", NULL, -1, 5000, on_reply, &replies, &err), 0);
        pump(c, &replies, 1);
        fakeqmp_wait_paused(f);
        pump(c, &events, 5);
        cr_assert_str_eq(seen, "E:RESET:{\"guest\":true,\"reason\":\"guest-reset\"}@1700000000;"
                               "E:STOP:{}@1700000000;"
                               "E:RESUME:-@1700000001;"
                               "E:MIGRATION:{\"status\":\"setup\"}@1700000000;"
                               "R:{};"
                               "E:SHUTDOWN:{\"guest\":false,\"reason\":\"host-qmp-quit\"}@1700000000;");
        fakeqmp_resume(f);
        finish(c, f);
}

Test(qmp_client, several_messages_in_one_read_and_crlf_or_lf_or_pretty) {
        static const struct fakeqmp_step script[] = {
                FQ_HANDSHAKE,
                { FQ_EXPECT, "query-status" },
                { FQ_SEND, "{\"event\": \"STOP\"}\r\n{\"event\": \"MIGRATION_PASS\", \"data\": {\"pass\": 2}}\n"
                           "{\"return\": {\n    \"status\": \"paused\",\n    \"running\": false\n},\n \"id\": $ID\n}\r\n"
                           "{\"event\":\"RESUME\"}{\"event\":\"POWERDOWN\"}\r\n" },
                { FQ_PAUSE },
                { FQ_END },
        };
        struct fakeqmp *f;
        struct qmp_client *c = client_on(script, &f);
        int replies = 0;
        vmsup_error *err = NULL;

        handshake(c);
        cr_assert_eq(qmp_client_execute_async(c, "query-status", NULL, -1, 5000, on_reply, &replies, &err), 0);
        pump(c, &replies, 1);
        fakeqmp_wait_paused(f);
        pump(c, &events, 4);
        cr_assert_str_eq(seen, "E:STOP:-;E:MIGRATION_PASS:{\"pass\":2};R:{\"status\":\"paused\",\"running\":false};"
                               "E:RESUME:-;E:POWERDOWN:-;");
        fakeqmp_resume(f);
        finish(c, f);
}

Test(qmp_client, messages_split_across_reads) {
        /* the greeting and an event cut inside a key, a string, a number and the CRLF */
        static const struct fakeqmp_step script[] = {
                { FQ_SEND, "{\"QM" }, { FQ_PAUSE },
                { FQ_SEND, "P\": {\"version\": {\"qemu\": {\"micro\": 2" }, { FQ_PAUSE },
                { FQ_SEND, "2, \"minor\": 2, \"major\": 7}, \"package\": \"\"}, \"capabilities\": []}}\r" }, { FQ_PAUSE },
                { FQ_SEND, "\n" },
                { FQ_EXPECT, "qmp_capabilities" },
                FQ_REPLY("{}"),
                { FQ_SEND, "{\"event\": \"SHUT" }, { FQ_PAUSE },
                { FQ_SEND, "DOWN\", \"data\": {\"guest\": true}}\r\n" }, { FQ_PAUSE },
                { FQ_END },
        };
        struct fakeqmp *f;
        struct qmp_client *c = client_on(script, &f);
        vmsup_error *err = NULL;

        for (int i = 0; i < 2; i++) {
                fakeqmp_wait_paused(f);
                cr_assert_eq(qmp_client_dispatch(c, &err), 0);
                cr_assert_null(qmp_client_qemu_version(c));
                fakeqmp_resume(f);
        }
        fakeqmp_wait_paused(f);
        cr_assert_eq(qmp_client_dispatch(c, &err), 0);
        /* complete at the closing brace; the trailing "\r" and "\n" are only separators */
        cr_assert_str_eq(qmp_client_qemu_version(c), "7.2.22");
        fakeqmp_resume(f);
        handshake(c);
        fakeqmp_wait_paused(f);
        cr_assert_eq(qmp_client_dispatch(c, &err), 0);
        cr_assert_eq(events, 0);
        fakeqmp_resume(f);
        fakeqmp_wait_paused(f);
        cr_assert_eq(qmp_client_dispatch(c, &err), 0);
        cr_assert_str_eq(seen, "E:SHUTDOWN:{\"guest\":true};");
        fakeqmp_resume(f);
        finish(c, f);
}

/* Every way of cutting a stream in two gives the same messages. */
Test(qmp_client, split_at_every_offset) {
        static const char stream[] = FAKEQMP_GREETING
                "{\"event\": \"STOP\", \"data\": {\"a\": \"x\\u00e9\\\"}\"}}\r\n"
                "{\"return\": {}, \"id\": 0}\r\n"
                "{\"event\": \"RESUME\", \"timestamp\": {\"seconds\": 7, \"microseconds\": 0}}\r\n";
        size_t len = strlen(stream);

        for (size_t cut = 0; cut <= len; cut++) {
                struct qmp_client *c = NULL;
                vmsup_error *err = NULL;
                int sv[2];

                seen[0] = '\0';
                cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
                cr_assert_eq(qmp_client_new_fd(sv[0], &c, &err), 0);
                qmp_client_set_event_handler(c, on_event, &events);
                cr_assert_eq(qmp_client_feed(c, stream, cut, &err), 0, "cut %zu: %s", cut, err ? err->msg : "");
                cr_assert_eq(qmp_client_feed(c, stream + cut, len - cut, &err), 0, "cut %zu: %s", cut,
                             err ? err->msg : "");
                cr_assert_str_eq(qmp_client_qemu_version(c), "7.2.22");
                cr_assert_str_eq(seen, "E:STOP:{\"a\":\"xé\\\"}\"};E:RESUME:-@7;", "cut %zu", cut);
                qmp_client_free(c);
                close(sv[1]);
        }
}

struct broken_case {
        const char *bytes;
        size_t len;
        const char *message;
        int exit_code;
};

/* After the handshake and one command, the server sends bytes and hangs up. */
static void check_broken(const struct broken_case *bc) {
        const struct fakeqmp_step script[] = {
                FQ_HANDSHAKE,
                { FQ_EXPECT, "query-status" },
                { FQ_SEND, bc->bytes, .len = bc->len },
                { FQ_HANGUP },
        };
        struct fakeqmp *f;
        struct qmp_client *c = client_on(script, &f);
        vmsup_error *err = NULL;
        char want[2048];
        int code = 0;

        handshake(c);
        snprintf(want, sizeof(want), "QMP command 'query-status' got no reply: %s", bc->message);
        cr_assert_str_eq(execute_error(c, "query-status", NULL, 5000, &code), want);
        cr_assert_eq(code, bc->exit_code, "exit code %d for %s", code, bc->message);
        /* broken for good: the same explanation from dispatch and for new commands */
        cr_assert_lt(qmp_client_dispatch(c, &err), 0);
        cr_assert_str_eq(err->msg, bc->message);
        err = vmsup_error_free(err);
        cr_assert_lt(qmp_client_execute_async(c, "cont", NULL, -1, 1000, on_reply, &events, &err), 0);
        snprintf(want, sizeof(want), "QMP command 'cont': the connection is unusable: %s", bc->message);
        cr_assert_str_eq(err->msg, want);
        cr_assert_eq(qmp_client_epoll_events(c), 0);
        vmsup_error_free(err);
        finish(c, f);
}

Test(qmp_client, malformed_json_is_an_error) {
        check_broken(&(struct broken_case) { "{\"return\": }\r\n", 0,
                                             "malformed JSON in QMP message at byte 11: unexpected character", 65 });
}

Test(qmp_client, garbage_is_an_error) {
        check_broken(&(struct broken_case) { "SSH-2.0-OpenSSH_9.2p1\r\n", 0,
                                             "malformed JSON in QMP message at byte 0: unexpected character", 65 });
}

Test(qmp_client, nul_byte_is_an_error) {
        check_broken(&(struct broken_case) { "{\"return\": \"a\0b\"}\r\n", 19,
                                             "malformed QMP message: it contains a NUL byte", 65 });
}

Test(qmp_client, invalid_utf8_is_an_error) {
        check_broken(&(struct broken_case) { "{\"return\": \"\xff\"}\r\n", 0,
                                             "malformed JSON in QMP message at byte 12: invalid utf-8 string", 65 });
}

Test(qmp_client, a_message_that_is_not_an_object_is_an_error) {
        check_broken(&(struct broken_case) { "[1, 2]\r\n", 0, "QMP message is not a JSON object: [1,2]", 65 });
}

Test(qmp_client, eof_in_the_middle_of_a_message_is_an_error) {
        check_broken(&(struct broken_case) { "{\"return\": {\"sta", 0,
                                             "QEMU closed the QMP connection in the middle of a message", 69 });
}

Test(qmp_client, eof_between_messages_is_an_error) {
        check_broken(&(struct broken_case) { "{\"event\": \"SHUTDOWN\"}\r\n", 0, "QEMU closed the QMP connection", 69 });
}

Test(qmp_client, a_reply_with_an_unknown_id_is_an_error) {
        check_broken(&(struct broken_case) { "{\"return\": {}, \"id\": 99}\r\n", 0,
                                             "QMP reply with an unknown id 99: {\"return\":{},\"id\":99}", 65 });
        check_broken(&(struct broken_case) { "{\"return\": {}, \"id\": \"1\"}\r\n", 0,
                                             "QMP reply with an unknown id \"1\": {\"return\":{},\"id\":\"1\"}", 65 });
}

Test(qmp_client, a_reply_without_return_or_error_is_an_error) {
        check_broken(&(struct broken_case) {
                "{\"id\": 1, \"retrun\": {}}\r\n", 0,
                "QMP reply to command 'query-status' has neither \"return\" nor \"error\": {\"id\":1,\"retrun\":{}}", 65 });
}

Test(qmp_client, a_reply_without_an_id_is_an_error) {
        check_broken(&(struct broken_case) { "{\"return\": {}}\r\n", 0, "QMP reply without an id: {\"return\":{}}", 65 });
        check_broken(&(struct broken_case) {
                "{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, missing value\"}}\r\n", 0,
                "QMP error without an id: GenericError: JSON parse error, missing value", 65 });
}

Test(qmp_client, a_malformed_error_reply_is_an_error) {
        check_broken(&(struct broken_case) {
                "{\"error\": {\"class\": \"GenericError\"}, \"id\": 1}\r\n", 0,
                "malformed QMP error reply (no \"class\" and \"desc\" strings): "
                "{\"error\":{\"class\":\"GenericError\"},\"id\":1}", 65 });
}

Test(qmp_client, an_event_without_a_name_or_a_second_greeting_is_an_error) {
        check_broken(&(struct broken_case) { "{\"event\": 5}\r\n", 0, "QMP event without a name: {\"event\":5}", 65 });
        check_broken(&(struct broken_case) { FAKEQMP_GREETING, 0,
                                             "unexpected second QMP greeting: {\"QMP\":{\"version\":{\"qemu\":"
                                             "{\"micro\":22,\"minor\":2,\"major\":7},\"package\":\"Debian "
                                             "1:7.2+dfsg-7+deb12u18+b3\"},\"capabilities\":[\"oob\"]}}", 65 });
        check_broken(&(struct broken_case) { "{\"hello\": 1}\r\n", 0,
                                             "QMP message is neither a reply nor an event: {\"hello\":1}", 65 });
}

Test(qmp_client, an_oversized_message_is_an_error) {
        size_t n = 2 * QMP_MAX_MESSAGE_SIZE;
        char *big = malloc(n + 32);

        strcpy(big, "{\"return\": \"");
        memset(big + 12, 'a', n);
        strcpy(big + 12 + n, "\", \"id\": 1}\r\n");
        check_broken(&(struct broken_case) { big, 0, "QMP message longer than 1048576 bytes (endless or oversized)", 65 });
        free(big);
}

Test(qmp_client, an_endless_message_is_an_error) {
        static const struct fakeqmp_step script[] = {
                FQ_HANDSHAKE,
                { FQ_EXPECT, "query-status" },
                { FQ_SEND, "{\"return\": [\"" },
                { FQ_FLOOD, "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef" },
        };
        struct fakeqmp *f;
        struct qmp_client *c = client_on(script, &f);

        handshake(c);
        cr_assert_str_eq(execute_error(c, "query-status", NULL, 20000, NULL),
                         "QMP command 'query-status' got no reply: QMP message longer than 1048576 bytes "
                         "(endless or oversized)");
        finish(c, f);
}

Test(qmp_client, a_peer_that_is_not_qmp_is_refused) {
        static const struct fakeqmp_step script[] = {
                { FQ_SEND, "{\"QMP\": {\"version\": \"7.2\", \"capabilities\": []}}\r\n" },
                { FQ_SILENCE },
        };
        struct fakeqmp *f;
        struct qmp_client *c = client_on(script, &f);
        vmsup_error *err = NULL;

        cr_assert_lt(qmp_client_handshake(c, 5000, &err), 0);
        cr_assert_str_eq(err->msg, "the peer is not a QMP server: expected a greeting {\"QMP\": {\"version\": "
                                   "{\"qemu\": {...}}, \"capabilities\": [...]}}, got {\"QMP\":{\"version\":\"7.2\","
                                   "\"capabilities\":[]}}");
        cr_assert_eq(err->kind, VMSUP_ERR_DATA);
        cr_assert_null(qmp_client_qemu_version(c));
        vmsup_error_free(err);
        finish(c, f);
}

Test(qmp_client, an_event_instead_of_the_greeting_is_refused) {
        static const struct fakeqmp_step script[] = { FQ_EVENT("STOP", "{}"), { FQ_SILENCE } };
        struct fakeqmp *f;
        struct qmp_client *c = client_on(script, &f);
        vmsup_error *err = NULL;

        cr_assert_lt(qmp_client_handshake(c, 5000, &err), 0);
        cr_assert(strstr(err->msg, "the peer is not a QMP server: expected a greeting") &&
                          strstr(err->msg, "got {\"timestamp\":"),
                  "%s", err->msg);
        cr_assert_eq(events, 0);
        vmsup_error_free(err);
        finish(c, f);
}

Test(qmp_client, a_hang_up_before_the_greeting_is_an_error) {
        static const struct fakeqmp_step script[] = { { FQ_HANGUP } };
        struct fakeqmp *f;
        struct qmp_client *c = client_on(script, &f);
        vmsup_error *err = NULL;

        cr_assert_lt(qmp_client_handshake(c, 5000, &err), 0);
        cr_assert_str_eq(err->msg, "QEMU closed the QMP connection before its greeting");
        cr_assert_eq(err->kind, VMSUP_ERR_UNAVAILABLE);
        vmsup_error_free(err);
        finish(c, f);
}

Test(qmp_client, a_failed_negotiation_is_an_error) {
        static const struct fakeqmp_step script[] = {
                { FQ_SEND, FAKEQMP_GREETING },
                { FQ_EXPECT, "qmp_capabilities" },
                { FQ_SEND, "{\"error\": {\"class\": \"CommandNotFound\", \"desc\": \"Capabilities negotiation is "
                           "already complete, command ignored\"}, \"id\": $ID}\r\n" },
                { FQ_SILENCE },
        };
        struct fakeqmp *f;
        struct qmp_client *c = client_on(script, &f);
        vmsup_error *err = NULL;

        cr_assert_lt(qmp_client_handshake(c, 5000, &err), 0);
        cr_assert_str_eq(err->msg, "QMP capabilities negotiation failed: QMP command 'qmp_capabilities' failed: "
                                   "CommandNotFound: Capabilities negotiation is already complete, command ignored");
        vmsup_error_free(err);
        finish(c, f);
}

Test(qmp_client, silence_before_the_greeting_times_out) {
        static const struct fakeqmp_step script[] = { { FQ_SILENCE } };
        struct fakeqmp *f;
        struct qmp_client *c = client_on(script, &f);
        vmsup_error *err = NULL;

        cr_assert_lt(qmp_client_handshake(c, 200, &err), 0);
        cr_assert_str_eq(err->msg, "no QMP greeting within 200 ms (is another client connected to this QEMU?)");
        cr_assert_eq(err->kind, VMSUP_ERR_UNAVAILABLE);
        vmsup_error_free(err);
        finish(c, f);
}

Test(qmp_client, silence_after_a_command_times_out_and_a_late_reply_is_dropped) {
        static const struct fakeqmp_step script[] = {
                FQ_HANDSHAKE,
                { FQ_EXPECT, "query-status" },
                { FQ_PAUSE },
                FQ_REPLY("{\"status\": \"late\"}"),
                FQ_EVENT("STOP", "{}"),
                { FQ_EXPECT, "query-version" },
                FQ_REPLY("{\"qemu\": {\"major\": 7}}"),
                { FQ_END },
        };
        struct fakeqmp *f;
        struct qmp_client *c = client_on(script, &f);
        int code = 0;
        char *r;

        handshake(c);
        cr_assert_str_eq(execute_error(c, "query-status", NULL, 150, &code),
                         "QMP command 'query-status' got no reply within 150 ms");
        cr_assert_eq(code, 69);
        fakeqmp_resume(f);
        r = execute_ok(c, "query-version", NULL);
        cr_assert_str_eq(r, "{\"qemu\":{\"major\":7}}");
        cr_assert_str_eq(seen, "E:STOP:{}@1700000000;");
        free(r);
        finish(c, f);
}

/* QEMU stalled (SIGSTOP, a blocked main loop) while the supervisor kept asking for its
 * status: every command timed out. When QEMU resumes, all the late replies come, more of
 * them than any fixed list of late ids holds; each is dropped and the connection goes on.
 * A reply to an id that was never issued is still a protocol error. */
Test(qmp_client, any_number_of_late_replies_is_dropped) {
        enum { LATE = 100 };
        struct fakeqmp_step script[3 + LATE + 7] = {
                FQ_HANDSHAKE,
        };
        static char replies[LATE * 48];
        size_t n = 3, len = 0;
        struct fakeqmp *f;
        struct qmp_client *c;
        vmsup_error *err = NULL;
        int failed = 0;
        char *r;

        for (int i = 0; i < LATE; i++)
                script[n++] = (struct fakeqmp_step) { FQ_EXPECT, "query-status" };
        script[n++] = (struct fakeqmp_step) { FQ_PAUSE };
        /* newest first, then the oldest: the order QEMU answers in does not matter */
        for (int id = LATE; id >= 1; id--)
                len += (size_t) snprintf(replies + len, sizeof(replies) - len,
                                         "{\"return\": {\"status\": \"running\"}, \"id\": %d}\r\n", id);
        script[n++] = (struct fakeqmp_step) { FQ_SEND, replies };
        script[n++] = (struct fakeqmp_step) { FQ_EXPECT, "query-version" };
        script[n++] = (struct fakeqmp_step) FQ_REPLY("{\"qemu\": {\"major\": 7}}");
        /* ids 1..LATE+1 were issued; LATE+2 never was */
        script[n++] = (struct fakeqmp_step) { FQ_PAUSE };
        script[n++] = (struct fakeqmp_step) { FQ_SEND, "{\"return\": {}, \"id\": 102}\r\n" };
        script[n++] = (struct fakeqmp_step) { FQ_END };
        cr_assert_eq(LATE + 2, 102);
        c = client_on(script, &f);

        handshake(c);
        for (int i = 0; i < LATE; i++)
                cr_assert_eq(qmp_client_execute_async(c, "query-status", NULL, -1, 300, on_reply, &failed, &err), 0);
        pump(c, &failed, LATE);
        for (int i = 0; i < LATE; i++)
                cr_assert_eq(strncmp(seen + i * strlen("X:QMP command 'query-status' got no reply within 300 ms;"),
                                     "X:QMP command 'query-status' got no reply within 300 ms;",
                                     strlen("X:QMP command 'query-status' got no reply within 300 ms;")),
                             0, "%s", seen);
        fakeqmp_wait_paused(f);
        fakeqmp_resume(f);
        r = execute_ok(c, "query-version", NULL);
        cr_assert_str_eq(r, "{\"qemu\":{\"major\":7}}");
        free(r);
        cr_assert_eq(qmp_client_epoll_events(c), EPOLLIN);

        /* an id this client never issued */
        seen[0] = '\0';
        fakeqmp_resume(f);
        pump(c, &events, 1);
        cr_assert_str_eq(seen, "D:QMP reply with an unknown id 102: {\"return\":{},\"id\":102};");
        finish(c, f);
}

Test(qmp_client, async_timeouts_and_epoll_events) {
        static const struct fakeqmp_step script[] = {
                FQ_HANDSHAKE,
                { FQ_EXPECT, "query-status" },
                { FQ_EXPECT, "query-kvm" },
                FQ_REPLY("{\"enabled\": false, \"present\": false}"),
                { FQ_END },
        };
        struct fakeqmp *f;
        struct qmp_client *c = client_on(script, &f);
        vmsup_error *err = NULL;
        int replies = 0, t;

        /* query-kvm is answered at once, query-status never */

        cr_assert_eq(qmp_client_next_timeout_ms(c), -1);
        /* queued before the handshake: waits for it, so nothing to write yet */
        cr_assert_eq(qmp_client_execute_async(c, "query-status", NULL, -1, 300, on_reply, &replies, &err), 0);
        cr_assert_eq(qmp_client_epoll_events(c), EPOLLIN);
        t = qmp_client_next_timeout_ms(c);
        cr_assert(t > 0 && t <= 300, "%d", t);
        cr_assert_eq(qmp_client_execute_async(c, "query-kvm", NULL, -1, 10000, on_reply, &replies, &err), 0);
        cr_assert_leq(qmp_client_next_timeout_ms(c), 300);
        pump(c, &replies, 2);
        cr_assert_str_eq(seen, "R:{\"enabled\":false,\"present\":false};"
                               "X:QMP command 'query-status' got no reply within 300 ms;");
        cr_assert_eq(qmp_client_next_timeout_ms(c), -1);
        cr_assert_eq(qmp_client_epoll_events(c), EPOLLIN);
        finish(c, f);
}

Test(qmp_client, a_command_that_times_out_before_the_greeting_is_never_sent) {
        static const struct fakeqmp_step script[] = {
                { FQ_PAUSE },
                FQ_HANDSHAKE,
                { FQ_EXPECT, "query-kvm" },
                FQ_REPLY("{}"),
                { FQ_END },
        };
        struct fakeqmp *f;
        struct qmp_client *c = client_on(script, &f);
        vmsup_error *err = NULL;
        int replies = 0;

        cr_assert_eq(qmp_client_execute_async(c, "system_reset", NULL, -1, 50, on_reply, &replies, &err), 0);
        pump(c, &replies, 1);
        cr_assert_str_eq(seen, "X:QMP command 'system_reset' got no reply within 50 ms (no QMP greeting yet);");
        fakeqmp_resume(f);
        cr_assert_eq(qmp_client_execute_async(c, "query-kvm", NULL, -1, 5000, on_reply, &replies, &err), 0);
        pump(c, &replies, 2);
        cr_assert_str_eq(seen, "X:QMP command 'system_reset' got no reply within 50 ms (no QMP greeting yet);R:{};");
        finish(c, f);
}

static void issue_cont(void *userdata, const char *event, json_object *data, json_object *timestamp) {
        struct qmp_client *c = userdata;
        char *r;

        record("E:%s%s;", event, "");
        r = execute_ok(c, "cont", NULL);
        record("cont:%s%s;", r, "");
        free(r);
}

/* A handler may run a blocking command: the bytes already read are not lost or reordered. */
Test(qmp_client, an_event_handler_may_run_a_command) {
        static const struct fakeqmp_step script[] = {
                FQ_HANDSHAKE,
                { FQ_EXPECT, "stop" },
                { FQ_SEND, "{\"event\": \"STOP\"}\r\n{\"return\": {\"first\": 1}, \"id\": $ID}\r\n" },
                { FQ_EXPECT, "cont" },
                FQ_REPLY("{}"),
                { FQ_END },
        };
        struct fakeqmp *f;
        struct qmp_client *c = client_on(script, &f);
        int replies = 0;
        vmsup_error *err = NULL;

        qmp_client_set_event_handler(c, issue_cont, c);
        handshake(c);
        cr_assert_eq(qmp_client_execute_async(c, "stop", NULL, -1, 5000, on_reply, &replies, &err), 0);
        pump(c, &replies, 1);
        cr_assert_str_eq(seen, "E:STOP;R:{\"first\":1};cont:{};");
        finish(c, f);
}

Test(qmp_client, an_fd_goes_along_with_its_command) {
        static const struct fakeqmp_step script[] = {
                FQ_HANDSHAKE,
                { FQ_EXPECT, "getfd", "{\"fdname\": \"tpm0\"}", "swtpm control channel" },
                FQ_REPLY("{}"),
                { FQ_EXPECT, "query-status" },
                FQ_REPLY("{}"),
                { FQ_END },
        };
        struct fakeqmp *f;
        struct qmp_client *c = client_on(script, &f);
        json_object *args = json_tokener_parse("{\"fdname\": \"tpm0\"}");
        vmsup_error *err = NULL;
        int fd = memfd_create("payload", MFD_CLOEXEC);
        char *r;

        cr_assert_geq(fd, 0);
        cr_assert_eq(write(fd, "swtpm control channel", 21), 21);
        handshake(c);
        if (qmp_client_execute(c, "getfd", args, fd, 5000, NULL, &err) < 0)
                cr_assert_fail("getfd: %s", err->msg);
        /* the caller keeps its fd; the next command goes without one */
        cr_assert_eq(fcntl(fd, F_GETFD), FD_CLOEXEC);
        r = execute_ok(c, "query-status", NULL);
        free(r);
        json_object_put(args);
        close(fd);
        finish(c, f);
}

Test(qmp_client, bad_calls_are_refused) {
        static const struct fakeqmp_step script[] = { FQ_HANDSHAKE, { FQ_END } };
        struct fakeqmp *f;
        struct qmp_client *c = client_on(script, &f);
        json_object *arr = json_object_new_array();
        vmsup_error *err = NULL;
        int replies = 0, sv[2];

        handshake(c);
        cr_assert_lt(qmp_client_execute_async(c, "cont", arr, -1, 1000, on_reply, &replies, &err), 0);
        cr_assert_str_eq(err->msg, "QMP command 'cont': the arguments must be a JSON object");
        err = vmsup_error_free(err);
        cr_assert_lt(qmp_client_execute_async(c, "getfd", NULL, 999, 1000, on_reply, &replies, &err), 0);
        cr_assert_str_eq(err->msg, "QMP command 'getfd': duplicate fd 999: Bad file descriptor");
        err = vmsup_error_free(err);
        cr_assert_lt(qmp_client_execute_async(c, "cont", NULL, -1, 0, on_reply, &replies, &err), 0);
        err = vmsup_error_free(err);
        cr_assert_eq(qmp_client_next_timeout_ms(c), -1);
        cr_assert_eq(qmp_client_epoll_events(c), EPOLLIN);
        json_object_put(arr);
        finish(c, f);

        cr_assert_eq(socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, sv), 0);
        cr_assert_lt(qmp_client_new_fd(sv[0], &c, &err), 0);
        cr_assert(strstr(err->msg, "not a stream socket"), "%s", err->msg);
        cr_assert_eq(fcntl(sv[0], F_GETFD), -1, "the fd was taken over: closed on failure too");
        vmsup_error_free(err);
        close(sv[1]);
}

Test(qmp_client, connect_by_path) {
        static const struct fakeqmp_step script[] = {
                FQ_HANDSHAKE,
                { FQ_EXPECT, "query-status" },
                FQ_REPLY("{\"status\": \"running\"}"),
                { FQ_END },
        };
        char *dir = test_mkdtemp(), *path = NULL, *r;
        struct qmp_client *c = NULL;
        vmsup_error *err = NULL;
        struct fakeqmp *f;

        cr_assert(asprintf(&path, "%s/qmp.sock", dir) > 0);
        f = fakeqmp_start_unix(script, path);
        if (qmp_client_connect(path, &c, &err) < 0)
                cr_assert_fail("connect: %s", err->msg);
        cr_assert(fcntl(qmp_client_fd(c), F_GETFD) & FD_CLOEXEC);
        cr_assert(fcntl(qmp_client_fd(c), F_GETFL) & O_NONBLOCK);
        handshake(c);
        r = execute_ok(c, "query-status", NULL);
        cr_assert_str_eq(r, "{\"status\":\"running\"}");
        free(r);
        finish(c, f);
        test_rmtree(dir);
        free(path);
        free(dir);
}

Test(qmp_client, connect_failures_name_the_socket) {
        struct qmp_client *c = NULL;
        vmsup_error *err = NULL;
        char *dir = test_mkdtemp(), *path = NULL, longpath[200];

        cr_assert(asprintf(&path, "%s/none.sock", dir) > 0);
        cr_assert_lt(qmp_client_connect(path, &c, &err), 0);
        cr_assert(strstr(err->msg, "connect to QMP socket '") && strstr(err->msg, "none.sock': No such file or directory"),
                  "%s", err->msg);
        cr_assert_eq(err->kind, VMSUP_ERR_UNAVAILABLE);
        err = vmsup_error_free(err);

        memset(longpath, 'x', sizeof(longpath) - 1);
        longpath[sizeof(longpath) - 1] = '\0';
        cr_assert_lt(qmp_client_connect(longpath, &c, &err), 0);
        cr_assert(strstr(err->msg, "(at most 107 bytes): File name too long"), "%s", err->msg);
        vmsup_error_free(err);
        cr_assert_null(c);
        test_rmtree(dir);
        free(path);
        free(dir);
}
