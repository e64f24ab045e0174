#include "config.h"

#include <endian.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "common/util.h"
#include "tpmstate/ctrl.h"

/* Replies are small fixed structs, except GET_INFO's JSON, which swtpm pages in chunks
 * of a few KiB; nothing legitimate comes near this. */
#define CTRL_MAX_INFO (64 * 1024)

static const struct {
        uint32_t code;
        const char *name;
} cmd_names[] = {
        { SWTPM_CMD_GET_CAPABILITY, "CMD_GET_CAPABILITY" },
        { SWTPM_CMD_INIT, "CMD_INIT" },
        { SWTPM_CMD_SHUTDOWN, "CMD_SHUTDOWN" },
        { SWTPM_CMD_GET_TPMESTABLISHED, "CMD_GET_TPMESTABLISHED" },
        { SWTPM_CMD_SET_LOCALITY, "CMD_SET_LOCALITY" },
        { SWTPM_CMD_RESET_TPMESTABLISHED, "CMD_RESET_TPMESTABLISHED" },
        { SWTPM_CMD_STOP, "CMD_STOP" },
        { SWTPM_CMD_GET_CONFIG, "CMD_GET_CONFIG" },
        { SWTPM_CMD_SET_DATAFD, "CMD_SET_DATAFD" },
        { SWTPM_CMD_SET_BUFFERSIZE, "CMD_SET_BUFFERSIZE" },
        { SWTPM_CMD_GET_INFO, "CMD_GET_INFO" },
};

static const struct {
        uint32_t bit;
        const char *name;
} cap_names[] = {
        { SWTPM_CAP_INIT, "INIT" },
        { SWTPM_CAP_SHUTDOWN, "SHUTDOWN" },
        { SWTPM_CAP_GET_TPMESTABLISHED, "GET_TPMESTABLISHED" },
        { SWTPM_CAP_SET_LOCALITY, "SET_LOCALITY" },
        { SWTPM_CAP_RESET_TPMESTABLISHED, "RESET_TPMESTABLISHED" },
        { SWTPM_CAP_STOP, "STOP" },
        { SWTPM_CAP_SET_DATAFD, "SET_DATAFD" },
        { SWTPM_CAP_SET_BUFFERSIZE, "SET_BUFFERSIZE" },
};

/* TPM 1.2 / TPM 2.0 result codes swtpm's control channel answers with. */
static const struct {
        uint32_t rc;
        const char *name;
} result_names[] = {
        { 0x03, "TPM_BAD_PARAMETER" },  { 0x09, "TPM_FAIL" },           { 0x0a, "TPM_BAD_ORDINAL" },
        { 0x0d, "TPM_KEYNOTFOUND" },    { 0x1f, "TPM_IOERROR" },        { 0x21, "TPM_DECRYPT_ERROR" },
        { 0x26, "TPM_INVALID_POSTINIT" }, { 0x28, "TPM_BAD_KEY_PROPERTY" }, { 0x101, "TPM_RC_FAILURE" },
};

const char *swtpm_ctrl_cmd_name(uint32_t code) {
        static __thread char buf[24];

        for (size_t i = 0; i < ARRAY_SIZE(cmd_names); i++)
                if (cmd_names[i].code == code)
                        return cmd_names[i].name;
        snprintf(buf, sizeof(buf), "CMD_0x%x", code);
        return buf;
}

uint32_t swtpm_ctrl_caps_needed(enum tpm_version version) {
        uint32_t caps = SWTPM_CAP_INIT | SWTPM_CAP_SHUTDOWN | SWTPM_CAP_GET_TPMESTABLISHED | SWTPM_CAP_SET_LOCALITY |
                        SWTPM_CAP_SET_DATAFD | SWTPM_CAP_STOP | SWTPM_CAP_SET_BUFFERSIZE;

        if (version == TPM_VERSION_2_0)
                caps |= SWTPM_CAP_RESET_TPMESTABLISHED;
        return caps;
}

int swtpm_ctrl_caps_check(uint32_t caps, enum tpm_version version, vmsup_error **err) {
        uint32_t missing = swtpm_ctrl_caps_needed(version) & ~caps;
        char names[256] = "";
        size_t len = 0;

        if (!missing)
                return 0;
        for (size_t i = 0; i < ARRAY_SIZE(cap_names); i++) {
                if (!(missing & cap_names[i].bit))
                        continue;
                len += (size_t) snprintf(names + len, sizeof(names) - len, "%s%s", len ? ", " : "", cap_names[i].name);
        }
        return vmsup_fail(err, VMSUP_ERR_UNAVAILABLE, 0,
                          "swtpm lacks control-channel capabilities QEMU needs for TPM %s: %s (capabilities 0x%x)",
                          tpm_version_to_string(version), names, caps);
}

static long now_ms(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

struct exchange {
        int fd;
        uint32_t code;
        int timeout_ms;
        long deadline;
        vmsup_error **err;
};

static int xfail(const struct exchange *x, int errnum, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int xfail(const struct exchange *x, int errnum, const char *fmt, ...) {
        char *what = NULL;
        va_list ap;
        int r;

        va_start(ap, fmt);
        if (vasprintf(&what, fmt, ap) < 0)
                what = NULL;
        va_end(ap);
        r = vmsup_fail(x->err, VMSUP_ERR_UNAVAILABLE, errnum, "swtpm control: %s: %s", swtpm_ctrl_cmd_name(x->code),
                       what ? what : "out of memory");
        free(what);
        return r;
}

/* swtpm closed the channel under us: the error, and -EPIPE whatever errno said, so that a
 * caller tells a gone swtpm from one that refused (swtpm_stop_via_ctrl()). */
#define xfail_closed(x, errnum, ...) (xfail((x), (errnum), __VA_ARGS__), -EPIPE)

/* Wait until fd is ready for events or the deadline passes. */
static int wait_ready(const struct exchange *x, short events) {
        for (;;) {
                struct pollfd p = { .fd = x->fd, .events = events };
                long left = x->deadline - now_ms();
                int n;

                if (left <= 0)
                        return xfail(x, 0, "no reply within %d ms", x->timeout_ms);
                n = poll(&p, 1, (int) left);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0)
                        return xfail(x, errno, "poll");
                if (n > 0)
                        return 0; /* POLLHUP/POLLERR: the next read or write says what happened */
        }
}

static int send_all(const struct exchange *x, const void *buf, size_t len) {
        const char *p = buf;

        while (len > 0) {
                ssize_t n;
                int r = wait_ready(x, POLLOUT);

                if (r < 0)
                        return r;
                n = send(x->fd, p, len, MSG_DONTWAIT | MSG_NOSIGNAL);
                if (n < 0 && (errno == EINTR || errno == EAGAIN))
                        continue;
                if (n < 0 && (errno == EPIPE || errno == ECONNRESET))
                        return xfail_closed(x, errno == EPIPE ? 0 : errno, "swtpm closed its control channel");
                if (n < 0)
                        return xfail(x, errno, "send");
                p += n;
                len -= (size_t) n;
        }
        return 0;
}

static int recv_all(const struct exchange *x, void *buf, size_t len, size_t done_before, size_t total) {
        char *p = buf;
        size_t got = 0;

        while (got < len) {
                ssize_t n;
                int r = wait_ready(x, POLLIN);

                if (r < 0)
                        return r;
                n = recv(x->fd, p + got, len - got, MSG_DONTWAIT);
                if (n < 0 && (errno == EINTR || errno == EAGAIN))
                        continue;
                if (n < 0 && errno == ECONNRESET)
                        n = 0;
                if (n < 0)
                        return xfail(x, errno, "recv");
                if (n == 0) {
                        if (done_before + got == 0)
                                return xfail_closed(x, 0, "swtpm closed its control channel");
                        return xfail_closed(x, 0, "swtpm closed its control channel after %zu of %zu reply bytes",
                                     done_before + got, total);
                }
                got += (size_t) n;
        }
        return 0;
}

/* Throw away whatever is already waiting: with no request of ours in flight it can only be
 * a reply to the previous user of the connection. Returns the number of bytes dropped. */
static ssize_t drain(int fd) {
        char buf[512];
        ssize_t n, total = 0;

        while ((n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT)) > 0 || (n < 0 && errno == EINTR))
                if (n > 0)
                        total += n;
        return total;
}

/* A well-formed reply ends where its struct does. swtpm writes each reply with a single
 * write, so more bytes already queued behind it mean the peer is not speaking the protocol. */
static int check_no_trailing(const struct exchange *x) {
        char c;
        ssize_t n = recv(x->fd, &c, 1, MSG_DONTWAIT | MSG_PEEK);

        if (n > 0) {
                drain(x->fd);
                return xfail(x, 0, "reply longer than expected");
        }
        return 0;
}

static const char *result_name(uint32_t rc) {
        for (size_t i = 0; i < ARRAY_SIZE(result_names); i++)
                if (result_names[i].rc == rc)
                        return result_names[i].name;
        return NULL;
}

/* One request/reply: send code + req, read the u32 result, and when it is 0 the
 * resp_len bytes that follow. A non-zero result may come alone (swtpm sends only the
 * result on most errors), so nothing more is read then. */
static int exchange(struct exchange *x, const void *req, size_t req_len, void *resp, size_t resp_len) {
        unsigned char hdr[4 + 32];
        uint32_t be, result;
        int r;

        if (x->fd < 0)
                return xfail(x, EBADF, "no control channel");
        if (req_len > sizeof(hdr) - 4)
                return xfail(x, EINVAL, "request too long");
        drain(x->fd);
        be = htobe32(x->code);
        memcpy(hdr, &be, 4);
        if (req_len)
                memcpy(hdr + 4, req, req_len);
        r = send_all(x, hdr, 4 + req_len);
        if (r < 0)
                return r;
        r = recv_all(x, &be, 4, 0, 4 + resp_len);
        if (r < 0)
                return r;
        result = be32toh(be);
        if (result != 0) {
                const char *name = result_name(result);

                drain(x->fd);
                if (name)
                        return xfail(x, 0, "TPM result 0x%x (%s)", result, name);
                return xfail(x, 0, "TPM result 0x%x", result);
        }
        if (resp_len) {
                r = recv_all(x, resp, resp_len, 4, 4 + resp_len);
                if (r < 0)
                        return r;
        }
        return 0;
}

static void exchange_init(struct exchange *x, int fd, uint32_t code, int timeout_ms, vmsup_error **err) {
        *x = (struct exchange) {
                .fd = fd, .code = code, .timeout_ms = timeout_ms, .deadline = now_ms() + timeout_ms, .err = err
        };
}

static int simple_command(int fd, uint32_t code, int timeout_ms, const void *req, size_t req_len, void *resp,
                          size_t resp_len, vmsup_error **err) {
        struct exchange x;
        int r;

        exchange_init(&x, fd, code, timeout_ms, err);
        r = exchange(&x, req, req_len, resp, resp_len);
        if (r < 0)
                return r;
        return check_no_trailing(&x);
}

int swtpm_ctrl_get_capability(int fd, int timeout_ms, uint32_t *ret_caps, vmsup_error **err) {
        uint32_t caps;
        int r = simple_command(fd, SWTPM_CMD_GET_CAPABILITY, timeout_ms, NULL, 0, &caps, sizeof(caps), err);

        if (r < 0)
                return r;
        *ret_caps = be32toh(caps);
        return 0;
}

int swtpm_ctrl_init(int fd, int timeout_ms, uint32_t flags, vmsup_error **err) {
        uint32_t be = htobe32(flags);

        return simple_command(fd, SWTPM_CMD_INIT, timeout_ms, &be, sizeof(be), NULL, 0, err);
}

int swtpm_ctrl_shutdown(int fd, int timeout_ms, vmsup_error **err) {
        return simple_command(fd, SWTPM_CMD_SHUTDOWN, timeout_ms, NULL, 0, NULL, 0, err);
}

int swtpm_ctrl_stop(int fd, int timeout_ms, vmsup_error **err) {
        return simple_command(fd, SWTPM_CMD_STOP, timeout_ms, NULL, 0, NULL, 0, err);
}

int swtpm_ctrl_get_config(int fd, int timeout_ms, uint32_t *ret_flags, vmsup_error **err) {
        uint32_t flags;
        int r = simple_command(fd, SWTPM_CMD_GET_CONFIG, timeout_ms, NULL, 0, &flags, sizeof(flags), err);

        if (r < 0)
                return r;
        *ret_flags = be32toh(flags);
        return 0;
}

int swtpm_ctrl_get_info(int fd, int timeout_ms, uint64_t flags, char **ret_json, vmsup_error **err) {
        _cleanup_free_ char *json = NULL;
        uint32_t total = 0, have = 0;
        struct exchange x;

        exchange_init(&x, fd, SWTPM_CMD_GET_INFO, timeout_ms, err);
        /* swtpm answers with at most a few KiB per request: page with the offset */
        do {
                struct {
                        uint64_t flags;
                        uint32_t offset, pad;
                } __attribute__((packed)) req = { htobe64(flags), htobe32(have), 0 };
                uint32_t lens[2], tot, len;
                int r = exchange(&x, &req, sizeof(req), lens, sizeof(lens));

                if (r < 0)
                        return r;
                tot = be32toh(lens[0]);
                len = be32toh(lens[1]);
                if (!json) {
                        if (tot == 0 || tot > CTRL_MAX_INFO)
                                return xfail(&x, 0, "bad total length %u", tot);
                        total = tot;
                        json = malloc(total + 1);
                        if (!json)
                                return xfail(&x, ENOMEM, "reply");
                }
                if (tot != total || len == 0 || len > total - have)
                        return xfail(&x, 0, "bad chunk of %u bytes at %u of %u", len, have, tot);
                r = recv_all(&x, json + have, len, 12, 12 + len);
                if (r < 0)
                        return r;
                have += len;
                r = check_no_trailing(&x);
                if (r < 0)
                        return r;
        } while (have < total);
        json[total] = '\0'; /* swtpm counts the NUL in; add one in case a peer did not */
        if (strlen(json) + 1 < total)
                return xfail(&x, 0, "NUL byte inside the JSON text");
        *ret_json = TAKE_PTR(json);
        return 0;
}
