/* libFuzzer target for the QMP message parser: framing, greeting, replies, events.
 * The first byte picks the read size, the rest is what "QEMU" sends. Build and run with
 * 'make fuzz-run' (clang: -fsanitize=fuzzer,address,undefined). */
#include "config.h"

#include <stdint.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include "qmp/client.h"

static size_t events, replies;

static void on_event(void *userdata, const char *event, json_object *data, json_object *timestamp) {
        /* touch what a handler would */
        events += event[0] == 'S';
        if (data)
                events += json_object_object_length(data) > 0;
        if (timestamp)
                events += json_object_object_length(timestamp) > 0;
}

static void on_reply(void *userdata, json_object *ret, const vmsup_error *err) {
        replies += ret ? 1 : err->msg[0] != '\0';
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        struct qmp_client *c = NULL;
        vmsup_error *err = NULL;
        size_t chunk;
        int sv[2];

        if (size < 1 || socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
                return 0;
        if (qmp_client_new_fd(sv[0], &c, &err) < 0)
                abort();
        qmp_client_set_event_handler(c, on_event, NULL);
        /* ids 1 and 2, queued before the greeting as the supervisor may do */
        if (qmp_client_execute_async(c, "query-status", NULL, -1, 60000, on_reply, NULL, &err) < 0 ||
            qmp_client_execute_async(c, "cont", NULL, -1, 60000, on_reply, NULL, &err) < 0)
                abort();
        chunk = data[0] ? data[0] : size;
        data++;
        size--;
        while (size > 0) {
                size_t n = size < chunk ? size : chunk;

                if (qmp_client_feed(c, data, n, &err) < 0) {
                        if (!err || !err->msg || err->kind == VMSUP_ERR_OK)
                                abort(); /* every failure explains itself */
                        break;
                }
                data += n;
                size -= n;
        }
        vmsup_error_free(err);
        qmp_client_free(c);
        close(sv[1]);
        return 0;
}
