#include "config.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <endian.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tpmstate/ctrl.h"

/* A fake swtpm on the other end of a socketpair: a child process that reads one request,
 * checks it is the expected bytes, writes the scripted reply in up to two writes, then
 * closes (hang_up) or waits until vmsup closes. Its exit status says whether the request
 * matched. */
struct script {
        const void *expect;
        size_t expect_len;
        const void *reply;
        size_t reply_len;
        bool hang_up;
};

static int fds[2] = { -1, -1 };
static pid_t peer = -1;

static void setup(void) {
        cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
}

static void teardown(void) {
        if (fds[0] >= 0)
                close(fds[0]);
        if (fds[1] >= 0)
                close(fds[1]);
        if (peer > 0) {
                kill(peer, SIGKILL);
                waitpid(peer, NULL, 0);
        }
}

TestSuite(tpm_ctrl, .init = setup, .fini = teardown, .timeout = 20);

static void start_peer(const struct script *s) {
        peer = fork();
        cr_assert_geq(peer, 0);
        if (peer == 0) {
                unsigned char buf[256];
                size_t got = 0;
                ssize_t n;

                close(fds[0]);
                while (got < s->expect_len && (n = read(fds[1], buf + got, sizeof(buf) - got)) > 0)
                        got += (size_t) n;
                if (got != s->expect_len || memcmp(buf, s->expect, got) != 0)
                        _exit(3);
                if (s->reply_len && write(fds[1], s->reply, s->reply_len) != (ssize_t) s->reply_len)
                        _exit(4);
                if (!s->hang_up)
                        while (read(fds[1], buf, sizeof(buf)) > 0)
                                ;
                _exit(0);
        }
        close(fds[1]);
        fds[1] = -1;
}

static void peer_done(void) {
        int status;

        close(fds[0]);
        fds[0] = -1;
        cr_assert_eq(waitpid(peer, &status, 0), peer);
        peer = -1;
        cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the fake swtpm saw the wrong request (%d)",
                  WEXITSTATUS(status));
}

static const unsigned char req_get_cap[] = { 0, 0, 0, 1 };
static const unsigned char req_shutdown[] = { 0, 0, 0, 3 };
static const unsigned char req_get_config[] = { 0, 0, 0, 0x0f };

Test(tpm_ctrl, get_capability_reads_the_bitmask) {
        static const unsigned char reply[] = { 0, 0, 0, 0, 0, 0, 0xff, 0xff };
        struct script s = { req_get_cap, 4, reply, sizeof(reply), false };
        vmsup_error *err = NULL;
        uint32_t caps = 0;

        start_peer(&s);
        cr_assert_eq(swtpm_ctrl_get_capability(fds[0], 2000, &caps, &err), 0, "%s", err ? err->msg : "");
        cr_assert_eq(caps, 0xffff);
        peer_done();
}

Test(tpm_ctrl, init_sends_its_flags_big_endian) {
        static const unsigned char req[] = { 0, 0, 0, 2, 0, 0, 0, 1 };
        static const unsigned char reply[] = { 0, 0, 0, 0 };
        struct script s = { req, sizeof(req), reply, sizeof(reply), false };
        vmsup_error *err = NULL;

        start_peer(&s);
        cr_assert_eq(swtpm_ctrl_init(fds[0], 2000, SWTPM_INIT_DELETE_VOLATILE, &err), 0, "%s", err ? err->msg : "");
        peer_done();
}

Test(tpm_ctrl, error_reply_of_only_the_result) {
        static const unsigned char reply[] = { 0, 0, 0, 9 };
        struct script s = { req_shutdown, 4, reply, sizeof(reply), false };
        vmsup_error *err = NULL;

        start_peer(&s);
        cr_assert_lt(swtpm_ctrl_shutdown(fds[0], 2000, &err), 0);
        cr_assert_str_eq(err->msg, "swtpm control: CMD_SHUTDOWN: TPM result 0x9 (TPM_FAIL)");
        cr_assert_eq(err->kind, VMSUP_ERR_UNAVAILABLE);
        vmsup_error_free(err);
        peer_done();
}

Test(tpm_ctrl, error_result_for_a_command_with_a_body_does_not_wait_for_the_body) {
        static const unsigned char reply[] = { 0, 0, 0x12, 0x34 };
        struct script s = { req_get_config, 4, reply, sizeof(reply), false };
        vmsup_error *err = NULL;
        uint32_t flags = 77;

        start_peer(&s);
        cr_assert_lt(swtpm_ctrl_get_config(fds[0], 2000, &flags, &err), 0);
        cr_assert_str_eq(err->msg, "swtpm control: CMD_GET_CONFIG: TPM result 0x1234");
        cr_assert_eq(flags, 77, "output parameters are written only on success");
        vmsup_error_free(err);
        peer_done();
}

Test(tpm_ctrl, short_reply_then_hang_up) {
        static const unsigned char reply[] = { 0, 0, 0, 0, 0, 0 };
        struct script s = { req_get_cap, 4, reply, sizeof(reply), true };
        vmsup_error *err = NULL;
        uint32_t caps;

        start_peer(&s);
        /* -EPIPE: the channel closed (not swtpm refusing), told without reading the message */
        cr_assert_eq(swtpm_ctrl_get_capability(fds[0], 2000, &caps, &err), -EPIPE);
        cr_assert_str_eq(err->msg,
                         "swtpm control: CMD_GET_CAPABILITY: swtpm closed its control channel after 6 of 8 reply bytes");
        vmsup_error_free(err);
        peer_done();
}

Test(tpm_ctrl, eof_before_any_reply) {
        struct script s = { req_get_config, 4, NULL, 0, true };
        vmsup_error *err = NULL;
        uint32_t flags;

        start_peer(&s);
        cr_assert_eq(swtpm_ctrl_get_config(fds[0], 2000, &flags, &err), -EPIPE);
        cr_assert_str_eq(err->msg, "swtpm control: CMD_GET_CONFIG: swtpm closed its control channel");
        vmsup_error_free(err);
        peer_done();
}

Test(tpm_ctrl, peer_gone_before_the_request) {
        vmsup_error *err = NULL;

        close(fds[1]);
        fds[1] = -1;
        cr_assert_eq(swtpm_ctrl_shutdown(fds[0], 2000, &err), -EPIPE);
        cr_assert_str_eq(err->msg, "swtpm control: CMD_SHUTDOWN: swtpm closed its control channel");
        vmsup_error_free(err);
}

Test(tpm_ctrl, garbage_longer_than_the_reply) {
        static const unsigned char reply[] = { 0, 0, 0, 0, 0, 0, 0, 1, 'g', 'a', 'r', 'b', 'a', 'g', 'e' };
        struct script s = { req_get_config, 4, reply, sizeof(reply), false };
        vmsup_error *err = NULL;
        uint32_t flags;

        start_peer(&s);
        cr_assert_lt(swtpm_ctrl_get_config(fds[0], 2000, &flags, &err), 0);
        cr_assert_str_eq(err->msg, "swtpm control: CMD_GET_CONFIG: reply longer than expected");
        vmsup_error_free(err);
        peer_done();
}

Test(tpm_ctrl, silence_times_out) {
        struct script s = { req_shutdown, 4, NULL, 0, false };
        vmsup_error *err = NULL;
        struct timespec t0, t1;
        long ms;

        start_peer(&s);
        clock_gettime(CLOCK_MONOTONIC, &t0);
        cr_assert_lt(swtpm_ctrl_shutdown(fds[0], 150, &err), 0);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        ms = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
        cr_assert_str_eq(err->msg, "swtpm control: CMD_SHUTDOWN: no reply within 150 ms");
        cr_assert(ms >= 140 && ms < 5000, "gave up after %ld ms", ms);
        vmsup_error_free(err);
        peer_done();
}

Test(tpm_ctrl, stale_reply_left_by_a_killed_client_is_dropped) {
        static const unsigned char stale[] = { 0, 0, 0, 0, 0, 0, 0, 7 };
        static const unsigned char reply[] = { 0, 0, 0, 0 };
        struct script s = { req_shutdown, 4, reply, sizeof(reply), false };
        vmsup_error *err = NULL;

        /* what swtpm answered QEMU just before QEMU died, never read */
        cr_assert_eq(write(fds[1], stale, sizeof(stale)), (ssize_t) sizeof(stale));
        start_peer(&s);
        cr_assert_eq(swtpm_ctrl_shutdown(fds[0], 2000, &err), 0, "%s", err ? err->msg : "");
        peer_done();
}

Test(tpm_ctrl, get_info_pages_through_the_json) {
        /* one request per chunk; the fake answers the first request with the whole text
         * minus its tail, so the client must ask again at the right offset */
        static const char json[] = "{\"TPMSpecification\":{\"family\":\"2.0\"}}";
        unsigned char req1[20] = { 0, 0, 0, 0x12, 0, 0, 0, 0, 0, 0, 0, 1 }, req2[20]; /* code, u64 flags, u32 offset, u32 pad */
        unsigned char rep1[64], rep2[64];
        uint32_t tot = htobe32(sizeof(json)), len1 = htobe32(10), len2 = htobe32(sizeof(json) - 10), off = htobe32(10);
        vmsup_error *err = NULL;
        char *out = NULL;

        memcpy(req2, req1, sizeof(req2));
        memcpy(req2 + 12, &off, 4);
        memset(rep1, 0, 4);
        memcpy(rep1 + 4, &tot, 4);
        memcpy(rep1 + 8, &len1, 4);
        memcpy(rep1 + 12, json, 10);
        memset(rep2, 0, 4);
        memcpy(rep2 + 4, &tot, 4);
        memcpy(rep2 + 8, &len2, 4);
        memcpy(rep2 + 12, json + 10, sizeof(json) - 10);
        peer = fork();
        cr_assert_geq(peer, 0);
        if (peer == 0) {
                unsigned char buf[20];
                size_t got;
                ssize_t n;

                close(fds[0]);
                for (int i = 0; i < 2; i++) {
                        for (got = 0; got < 20 && (n = read(fds[1], buf + got, 20 - got)) > 0;)
                                got += (size_t) n;
                        if (got != 20 || memcmp(buf, i ? req2 : req1, 20))
                                _exit(3);
                        if (write(fds[1], i ? rep2 : rep1, 12 + (i ? sizeof(json) - 10 : 10)) < 0)
                                _exit(4);
                }
                while (read(fds[1], buf, sizeof(buf)) > 0)
                        ;
                _exit(0);
        }
        close(fds[1]);
        fds[1] = -1;
        cr_assert_eq(swtpm_ctrl_get_info(fds[0], 2000, SWTPM_INFO_TPMSPECIFICATION, &out, &err), 0, "%s",
                     err ? err->msg : "");
        cr_assert_str_eq(out, json);
        free(out);
        peer_done();
}

Test(tpm_ctrl, caps_check_names_what_qemu_misses) {
        vmsup_error *err = NULL;

        cr_assert_eq(swtpm_ctrl_caps_check(0xffff, TPM_VERSION_2_0, &err), 0);
        cr_assert_eq(swtpm_ctrl_caps_check(0xffff & ~SWTPM_CAP_RESET_TPMESTABLISHED, TPM_VERSION_1_2, &err), 0,
                     "TPM 1.2 does not need RESET_TPMESTABLISHED");
        cr_assert_lt(swtpm_ctrl_caps_check(0xffff & ~(SWTPM_CAP_SET_DATAFD | SWTPM_CAP_STOP |
                                                     SWTPM_CAP_RESET_TPMESTABLISHED),
                                           TPM_VERSION_2_0, &err),
                     0);
        cr_assert_str_eq(err->msg, "swtpm lacks control-channel capabilities QEMU needs for TPM 2.0: "
                                   "RESET_TPMESTABLISHED, STOP, SET_DATAFD (capabilities 0xeb7f)");
        cr_assert_eq(err->kind, VMSUP_ERR_UNAVAILABLE);
        vmsup_error_free(err);
        cr_assert_str_eq(swtpm_ctrl_cmd_name(SWTPM_CMD_SHUTDOWN), "CMD_SHUTDOWN");
        cr_assert_str_eq(swtpm_ctrl_cmd_name(0x99), "CMD_0x99");
}
