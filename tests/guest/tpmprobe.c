/* tpmprobe: the demo guest's proof that its vTPM works and keeps state.
 *
 * Runs as the only program of a tiny initramfs and speaks raw TPM commands to
 * /dev/tpm0 (one write of a whole command, one read of the whole response; the
 * kernel driver handles locality and the TIS/CRB interface).
 *
 * TPM 2.0: define an NV counter on first boot, increment it on every boot, read it
 * back, and read the public part of the persistent EK that swtpm_setup --createek
 * made.  TPM 1.2: read the version capability and the public EK.
 *
 * Its output lines are a contract grepped by vmsup's tests (tests/guest/README.md).
 *
 * Usage: tpmprobe [/dev/tpm0 | unix:SOCKET]   (the socket form is for host tests)
 * Build: gcc -static -O2 -Wall -Wextra -Werror -o tpmprobe tpmprobe.c
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <linux/input.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define TPM_DEVICE "/dev/tpm0"
#define TPM_MAX 4096

/* Owner range of the TCG handle registry (0x01800000-0x01BFFFFF): we define it with
 * owner authorization, and the platform hierarchy is unusable after OVMF anyway (it
 * sets a random platformAuth at ReadyToBoot). */
#define NV_COUNTER_INDEX 0x01800016u
#define EK_HANDLE 0x81010001u /* TCG EK Credential Profile: RSA 2048 EK */

/* TPM 2.0 constants (TCG TPM 2.0 Library, Part 2) */
#define TPM2_ST_NO_SESSIONS 0x8001
#define TPM2_ST_SESSIONS 0x8002
#define TPM2_CC_NV_DEFINESPACE 0x0000012Au
#define TPM2_CC_NV_INCREMENT 0x00000134u
#define TPM2_CC_STARTUP 0x00000144u
#define TPM2_CC_NV_READ 0x0000014Eu
#define TPM2_CC_NV_READPUBLIC 0x00000169u
#define TPM2_CC_READPUBLIC 0x00000173u
#define TPM2_CC_GETCAPABILITY 0x0000017Au
#define TPM2_SU_CLEAR 0x0000
#define TPM2_RH_OWNER 0x40000001u
#define TPM2_RS_PW 0x40000009u
#define TPM2_ALG_RSA 0x0001
#define TPM2_ALG_SHA256 0x000B
#define TPM2_ALG_NULL 0x0010
#define TPM2_ALG_ECC 0x0023
#define TPM2_CAP_TPM_PROPERTIES 0x00000006u
#define TPM2_PT_FAMILY_INDICATOR 0x00000100u
#define TPM2_RC_INITIALIZE 0x00000100u
#define TPM2_RC_HANDLE 0x0000000Bu /* format-one error number */

/* TPMA_NV bits */
#define TPMA_NV_AUTHWRITE (1u << 2)
#define TPMA_NV_TPM_NT_COUNTER (1u << 4)
#define TPMA_NV_TPM_NT_MASK (0xFu << 4)
#define TPMA_NV_AUTHREAD (1u << 18)
#define TPMA_NV_NO_DA (1u << 25)

/* TPM 1.2 constants (TPM Main Part 2) */
#define TPM12_TAG_RQU_COMMAND 0x00C1
#define TPM12_TAG_RSP_COMMAND 0x00C4
#define TPM12_ORD_GETCAPABILITY 0x00000065u
#define TPM12_ORD_READPUBEK 0x0000007Cu
#define TPM12_CAP_VERSION_VAL 0x0000001Au

#define EK_PRINT_BYTES 32

struct cmd {
        uint8_t b[TPM_MAX];
        size_t n;
};

struct rsp {
        uint8_t b[TPM_MAX];
        size_t n;
        size_t off; /* read cursor */
        bool short_read;
};

static void put_u8(struct cmd *c, uint8_t v) {
        if (c->n < sizeof(c->b))
                c->b[c->n++] = v;
}

static void put_u16(struct cmd *c, uint16_t v) {
        put_u8(c, (uint8_t)(v >> 8));
        put_u8(c, (uint8_t)v);
}

static void put_u32(struct cmd *c, uint32_t v) {
        put_u16(c, (uint16_t)(v >> 16));
        put_u16(c, (uint16_t)v);
}

static void cmd_begin(struct cmd *c, uint16_t tag, uint32_t code) {
        c->n = 0;
        put_u16(c, tag);
        put_u32(c, 0); /* size, patched by cmd_end() */
        put_u32(c, code);
}

static void cmd_end(struct cmd *c) {
        uint32_t n = (uint32_t)c->n;

        c->b[2] = (uint8_t)(n >> 24);
        c->b[3] = (uint8_t)(n >> 16);
        c->b[4] = (uint8_t)(n >> 8);
        c->b[5] = (uint8_t)n;
}

/* Authorization area with one empty password session (TPM_RS_PW): nonce and hmac
 * are empty TPM2B, no session attributes. */
static void put_pw_session(struct cmd *c) {
        put_u32(c, 4 + 2 + 1 + 2);
        put_u32(c, TPM2_RS_PW);
        put_u16(c, 0);
        put_u8(c, 0);
        put_u16(c, 0);
}

static uint8_t get_u8(struct rsp *r) {
        if (r->off + 1 > r->n) {
                r->short_read = true;
                return 0;
        }
        return r->b[r->off++];
}

static uint16_t get_u16(struct rsp *r) {
        uint16_t hi = get_u8(r);
        return (uint16_t)(hi << 8 | get_u8(r));
}

static uint32_t get_u32(struct rsp *r) {
        uint32_t hi = get_u16(r);
        return hi << 16 | get_u16(r);
}

/* Returns a pointer to len bytes inside the response, or NULL past the end. */
static const uint8_t *get_bytes(struct rsp *r, size_t len) {
        const uint8_t *p;

        if (len > r->n - r->off) {
                r->short_read = true;
                r->off = r->n;
                return NULL;
        }
        p = r->b + r->off;
        r->off += len;
        return p;
}

static const uint8_t *get_tpm2b(struct rsp *r, uint16_t *ret_len) {
        uint16_t len = get_u16(r);
        const uint8_t *p = get_bytes(r, len);

        if (p)
                *ret_len = len;
        return p;
}

static void print_hex_line(const char *key, const uint8_t *p, size_t len) {
        printf("tpmprobe: %s=", key);
        for (size_t i = 0; i < len; i++)
                printf("%02x", p[i]);
        printf("\n");
}

static int tpm_fd = -1;
static const char *tpm_path = TPM_DEVICE;

/* Reads exactly len bytes; /dev/tpm0 returns a whole response in one read, a stream
 * socket may not. */
static int read_full(uint8_t *p, size_t len) {
        while (len > 0) {
                ssize_t k = read(tpm_fd, p, len);
                if (k < 0 && errno == EINTR)
                        continue;
                if (k <= 0) {
                        if (k == 0)
                                errno = EPIPE;
                        return -1;
                }
                p += k;
                len -= (size_t)k;
        }
        return 0;
}

/* Sends one command; on success fills r (cursor after the 10-byte header) and
 * returns 0 with *ret_tag and *ret_rc set.  Prints and returns -1 on I/O errors or a
 * malformed response. */
static int transact(const char *name, const struct cmd *c, struct rsp *r, uint16_t *ret_tag,
                    uint32_t *ret_rc) {
        ssize_t k;

        do
                k = write(tpm_fd, c->b, c->n);
        while (k < 0 && errno == EINTR);
        if (k < 0 || (size_t)k != c->n) {
                printf("tpmprobe: error: %s: write %s: %s\n", name, tpm_path,
                       k < 0 ? strerror(errno) : "short write");
                return -1;
        }
        r->n = sizeof(r->b);
        r->off = 0;
        r->short_read = false;
        if (read_full(r->b, 10) < 0) {
                printf("tpmprobe: error: %s: read %s: %s\n", name, tpm_path, strerror(errno));
                return -1;
        }
        uint16_t tag = get_u16(r);
        uint32_t size = get_u32(r);
        uint32_t rc = get_u32(r);
        if (size < 10 || size > sizeof(r->b)) {
                printf("tpmprobe: error: %s: malformed response (size %" PRIu32 ")\n", name, size);
                return -1;
        }
        if (read_full(r->b + 10, size - 10) < 0) {
                printf("tpmprobe: error: %s: read %s: %s\n", name, tpm_path, strerror(errno));
                return -1;
        }
        r->n = size;
        *ret_tag = tag;
        *ret_rc = rc;
        return 0;
}

/* transact() for TPM 2.0 commands that must succeed: a non-zero rc is printed. */
static int tpm2_call(const char *name, const struct cmd *c, struct rsp *r) {
        uint16_t tag;
        uint32_t rc;

        if (transact(name, c, r, &tag, &rc) < 0)
                return -1;
        if (rc != 0) {
                printf("tpmprobe: error: %s rc=0x%08" PRIx32 "\n", name, rc);
                return -1;
        }
        return 0;
}

static bool tpm2_rc_is_handle(uint32_t rc) {
        return (rc & 0x80u) && (rc & 0x3Fu) == TPM2_RC_HANDLE;
}

static int tpm2_startup_clear(void) {
        struct cmd c;
        struct rsp r;

        cmd_begin(&c, TPM2_ST_NO_SESSIONS, TPM2_CC_STARTUP);
        put_u16(&c, TPM2_SU_CLEAR);
        cmd_end(&c);
        return tpm2_call("TPM2_Startup", &c, &r);
}

/* Asks a TPM 2.0 question; a TPM 1.2 answers it with its own response tag.  Sends
 * TPM2_Startup(CLEAR) if nobody did (firmware and kernel normally have). */
static int tpm_detect_version(int *ret_major) {
        struct cmd c;
        struct rsp r;
        uint16_t tag;
        uint32_t rc;

        cmd_begin(&c, TPM2_ST_NO_SESSIONS, TPM2_CC_GETCAPABILITY);
        put_u32(&c, TPM2_CAP_TPM_PROPERTIES);
        put_u32(&c, TPM2_PT_FAMILY_INDICATOR);
        put_u32(&c, 1);
        cmd_end(&c);
        for (int attempt = 0;; attempt++) {
                if (transact("TPM2_GetCapability", &c, &r, &tag, &rc) < 0)
                        return -1;
                if (tag == TPM12_TAG_RSP_COMMAND) {
                        *ret_major = 1;
                        return 0;
                }
                if (rc == TPM2_RC_INITIALIZE && attempt == 0) {
                        if (tpm2_startup_clear() < 0)
                                return -1;
                        continue;
                }
                if (rc != 0) {
                        printf("tpmprobe: error: TPM2_GetCapability rc=0x%08" PRIx32 "\n", rc);
                        return -1;
                }
                *ret_major = 2;
                return 0;
        }
}

static int tpm2_nv_define_counter(uint32_t index) {
        struct cmd c;
        struct rsp r;

        cmd_begin(&c, TPM2_ST_SESSIONS, TPM2_CC_NV_DEFINESPACE);
        put_u32(&c, TPM2_RH_OWNER);
        put_pw_session(&c);
        put_u16(&c, 0); /* auth: empty, so the index's own empty password works */
        put_u16(&c, 4 + 2 + 4 + 2 + 2); /* TPM2B_NV_PUBLIC */
        put_u32(&c, index);
        put_u16(&c, TPM2_ALG_SHA256);
        /* Not TPMA_NV_ORDERLY: an orderly counter reaches NV only at an orderly
         * shutdown, and this guest powers off without TPM2_Shutdown. */
        put_u32(&c, TPMA_NV_TPM_NT_COUNTER | TPMA_NV_AUTHWRITE | TPMA_NV_AUTHREAD | TPMA_NV_NO_DA);
        put_u16(&c, 0); /* authPolicy: none */
        put_u16(&c, 8); /* counters are 8 bytes */
        cmd_end(&c);
        return tpm2_call("TPM2_NV_DefineSpace", &c, &r);
}

/* Sets *ret_exists; an existing index that is not an 8-byte counter is an error. */
static int tpm2_nv_check_counter(uint32_t index, bool *ret_exists) {
        struct cmd c;
        struct rsp r;
        uint16_t tag, len;
        uint32_t rc;

        cmd_begin(&c, TPM2_ST_NO_SESSIONS, TPM2_CC_NV_READPUBLIC);
        put_u32(&c, index);
        cmd_end(&c);
        if (transact("TPM2_NV_ReadPublic", &c, &r, &tag, &rc) < 0)
                return -1;
        if (tpm2_rc_is_handle(rc)) {
                *ret_exists = false;
                return 0;
        }
        if (rc != 0) {
                printf("tpmprobe: error: TPM2_NV_ReadPublic rc=0x%08" PRIx32 "\n", rc);
                return -1;
        }
        (void)get_u16(&r); /* TPM2B_NV_PUBLIC size */
        uint32_t got_index = get_u32(&r);
        (void)get_u16(&r); /* nameAlg */
        uint32_t attrs = get_u32(&r);
        (void)get_tpm2b(&r, &len); /* authPolicy */
        uint16_t size = get_u16(&r);
        if (r.short_read || got_index != index) {
                printf("tpmprobe: error: TPM2_NV_ReadPublic: malformed response\n");
                return -1;
        }
        if ((attrs & TPMA_NV_TPM_NT_MASK) != TPMA_NV_TPM_NT_COUNTER || size != 8 ||
            !(attrs & TPMA_NV_AUTHWRITE) || !(attrs & TPMA_NV_AUTHREAD)) {
                printf("tpmprobe: error: NV index 0x%08" PRIx32
                       " exists but is not our counter (attributes 0x%08" PRIx32 ", size %u)\n",
                       index, attrs, size);
                return -1;
        }
        *ret_exists = true;
        return 0;
}

static int tpm2_nv_increment(uint32_t index) {
        struct cmd c;
        struct rsp r;

        cmd_begin(&c, TPM2_ST_SESSIONS, TPM2_CC_NV_INCREMENT);
        put_u32(&c, index); /* authHandle: the index itself (AUTHWRITE) */
        put_u32(&c, index);
        put_pw_session(&c);
        cmd_end(&c);
        return tpm2_call("TPM2_NV_Increment", &c, &r);
}

static int tpm2_nv_read_counter(uint32_t index, uint64_t *ret_value) {
        struct cmd c;
        struct rsp r;
        uint16_t len;

        cmd_begin(&c, TPM2_ST_SESSIONS, TPM2_CC_NV_READ);
        put_u32(&c, index); /* authHandle: the index itself (AUTHREAD) */
        put_u32(&c, index);
        put_pw_session(&c);
        put_u16(&c, 8); /* size */
        put_u16(&c, 0); /* offset */
        cmd_end(&c);
        if (tpm2_call("TPM2_NV_Read", &c, &r) < 0)
                return -1;
        (void)get_u32(&r); /* parameterSize */
        const uint8_t *p = get_tpm2b(&r, &len);
        if (!p || len != 8) {
                printf("tpmprobe: error: TPM2_NV_Read: malformed response\n");
                return -1;
        }
        uint64_t v = 0;
        for (int i = 0; i < 8; i++)
                v = v << 8 | p[i];
        *ret_value = v;
        return 0;
}

/* Skips a TPMT_SYM_DEF_OBJECT or a scheme: an algorithm, then details unless NULL. */
static void skip_alg_and_details(struct rsp *r, int detail_u16s) {
        if (get_u16(r) != TPM2_ALG_NULL)
                for (int i = 0; i < detail_u16s; i++)
                        (void)get_u16(r);
}

/* Prints ek= (the first 32 bytes of the RSA modulus, or of the ECC x coordinate) and
 * ek-name= (the Name the TPM computed: nameAlg || SHA-256 of the whole TPMT_PUBLIC). */
static int tpm2_read_ek(void) {
        struct cmd c;
        struct rsp r;
        uint16_t len, name_len;
        const uint8_t *unique;

        cmd_begin(&c, TPM2_ST_NO_SESSIONS, TPM2_CC_READPUBLIC);
        put_u32(&c, EK_HANDLE);
        cmd_end(&c);
        if (tpm2_call("TPM2_ReadPublic(EK 0x81010001)", &c, &r) < 0)
                return -1;
        uint16_t pub_size = get_u16(&r);
        size_t pub_end = r.off + pub_size;
        uint16_t type = get_u16(&r);
        (void)get_u16(&r); /* nameAlg */
        (void)get_u32(&r); /* objectAttributes */
        (void)get_tpm2b(&r, &len); /* authPolicy */
        skip_alg_and_details(&r, 2); /* symmetric: keyBits, mode */
        skip_alg_and_details(&r, 1); /* scheme: hashAlg */
        if (type == TPM2_ALG_RSA) {
                (void)get_u16(&r); /* keyBits */
                (void)get_u32(&r); /* exponent */
                unique = get_tpm2b(&r, &len); /* modulus */
        } else if (type == TPM2_ALG_ECC) {
                (void)get_u16(&r); /* curveID */
                skip_alg_and_details(&r, 1); /* kdf: hashAlg */
                unique = get_tpm2b(&r, &len); /* x */
                (void)get_tpm2b(&r, &name_len); /* y */
        } else {
                printf("tpmprobe: error: EK has unexpected type 0x%04x\n", type);
                return -1;
        }
        if (!unique || r.short_read || r.off != pub_end || len < EK_PRINT_BYTES) {
                printf("tpmprobe: error: TPM2_ReadPublic: malformed public area\n");
                return -1;
        }
        const uint8_t *name = get_tpm2b(&r, &name_len);
        if (!name) {
                printf("tpmprobe: error: TPM2_ReadPublic: malformed name\n");
                return -1;
        }
        print_hex_line("ek", unique, EK_PRINT_BYTES);
        print_hex_line("ek-name", name, name_len);
        return 0;
}

static int run_tpm2(void) {
        bool exists;
        uint64_t value;

        printf("tpmprobe: tpm-version=2.0\n");
        if (tpm2_nv_check_counter(NV_COUNTER_INDEX, &exists) < 0)
                return -1;
        if (!exists) {
                if (tpm2_nv_define_counter(NV_COUNTER_INDEX) < 0)
                        return -1;
                printf("tpmprobe: defined NV counter index 0x%08" PRIx32 "\n", NV_COUNTER_INDEX);
        }
        if (tpm2_nv_increment(NV_COUNTER_INDEX) < 0)
                return -1;
        if (tpm2_nv_read_counter(NV_COUNTER_INDEX, &value) < 0)
                return -1;
        printf("tpmprobe: nv-counter=%" PRIu64 "\n", value);
        return tpm2_read_ek();
}

/* TPM 1.2 calls: tag, size, ordinal in; tag, size, return code out (same layout). */
static int tpm12_call(const char *name, const struct cmd *c, struct rsp *r) {
        uint16_t tag;
        uint32_t rc;

        if (transact(name, c, r, &tag, &rc) < 0)
                return -1;
        if (tag != TPM12_TAG_RSP_COMMAND || rc != 0) {
                printf("tpmprobe: error: %s rc=0x%08" PRIx32 "\n", name, rc);
                return -1;
        }
        return 0;
}

static int run_tpm12(void) {
        struct cmd c;
        struct rsp r;

        printf("tpmprobe: tpm-version=1.2\n");

        cmd_begin(&c, TPM12_TAG_RQU_COMMAND, TPM12_ORD_GETCAPABILITY);
        put_u32(&c, TPM12_CAP_VERSION_VAL);
        put_u32(&c, 0); /* subCapSize */
        cmd_end(&c);
        if (tpm12_call("TPM_GetCapability", &c, &r) < 0)
                return -1;
        (void)get_u32(&r); /* respSize */
        (void)get_u16(&r); /* TPM_TAG_CAP_VERSION_INFO */
        uint8_t major = get_u8(&r), minor = get_u8(&r);
        uint8_t rev_major = get_u8(&r), rev_minor = get_u8(&r);
        if (r.short_read) {
                printf("tpmprobe: error: TPM_GetCapability: malformed response\n");
                return -1;
        }
        printf("tpmprobe: tpm12-version=%u.%u.%u.%u\n", major, minor, rev_major, rev_minor);

        /* The anti-replay nonce only binds the checksum in the response, which we
         * do not verify: a fixed value is enough here. */
        cmd_begin(&c, TPM12_TAG_RQU_COMMAND, TPM12_ORD_READPUBEK);
        for (int i = 0; i < 20; i++)
                put_u8(&c, (uint8_t)i);
        cmd_end(&c);
        if (tpm12_call("TPM_ReadPubek", &c, &r) < 0)
                return -1;
        /* TPM_PUBKEY: TPM_KEY_PARMS then TPM_STORE_PUBKEY */
        (void)get_u32(&r); /* algorithmID */
        (void)get_u16(&r); /* encScheme */
        (void)get_u16(&r); /* sigScheme */
        (void)get_bytes(&r, get_u32(&r)); /* parms */
        uint32_t key_len = get_u32(&r);
        const uint8_t *key = get_bytes(&r, key_len);
        if (!key || key_len < EK_PRINT_BYTES) {
                printf("tpmprobe: error: TPM_ReadPubek: malformed response\n");
                return -1;
        }
        print_hex_line("ek", key, EK_PRINT_BYTES);
        printf("tpmprobe: tpm12-ok\n");
        return 0;
}

/* Opens the TPM character device, or with "unix:PATH" the data socket of
 * `swtpm socket --server type=unixio,path=PATH` (to test this program on the host). */
static int tpm_open(const char *path) {
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        const char *sock = strncmp(path, "unix:", 5) == 0 ? path + 5 : NULL;
        int fd;

        if (!sock)
                return open(path, O_RDWR | O_CLOEXEC);
        if (strlen(sock) >= sizeof(sa.sun_path)) {
                errno = ENAMETOOLONG;
                return -1;
        }
        strcpy(sa.sun_path, sock);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
                int e = errno;
                close(fd);
                errno = e;
                return -1;
        }
        return fd;
}

/* --wait-power-button: block until an ACPI power-button press arrives on an evdev node,
 * so a held guest powers off when the host asks (QMP system_powerdown). */
static int wait_power_button(void) {
        struct pollfd fds[16];
        int n = 0;

        for (int tries = 0; n == 0 && tries < 50; tries++) {
                for (int i = 0; i < 16; i++) {
                        char path[32];
                        int fd;

                        snprintf(path, sizeof(path), "/dev/input/event%d", i);
                        fd = open(path, O_RDONLY | O_CLOEXEC);
                        if (fd >= 0)
                                fds[n++] = (struct pollfd) { .fd = fd, .events = POLLIN };
                }
                if (n == 0)
                        usleep(100000);
        }
        if (n == 0) {
                printf("tpmprobe: error: no /dev/input/event* to wait on\n");
                return 1;
        }
        /* only now: a press before the nodes were open would be lost, and the host
         * (tests, bench) presses it as soon as it reads this line */
        printf("init: holding until the power button\n");
        fflush(stdout);
        for (;;) {
                if (poll(fds, (nfds_t) n, -1) < 0)
                        return 1;
                for (int i = 0; i < n; i++) {
                        struct input_event ev;

                        if (!(fds[i].revents & POLLIN))
                                continue;
                        while (read(fds[i].fd, &ev, sizeof(ev)) == (ssize_t) sizeof(ev))
                                if (ev.type == EV_KEY && ev.code == KEY_POWER && ev.value == 1)
                                        return 0;
                }
        }
}

int main(int argc, char **argv) {
        int major = 0, rc;

        setvbuf(stdout, NULL, _IOLBF, 0);
        if (argc == 2 && strcmp(argv[1], "--wait-power-button") == 0)
                return wait_power_button();
        if (argc > 2) {
                fprintf(stderr, "usage: tpmprobe [/dev/tpm0 | unix:SOCKET]\n");
                return 64;
        }
        if (argc == 2)
                tpm_path = argv[1];
        tpm_fd = tpm_open(tpm_path);
        if (tpm_fd < 0) {
                printf("tpmprobe: error: open %s: %s\n", tpm_path, strerror(errno));
                rc = -1;
        } else {
                rc = tpm_detect_version(&major);
                if (rc == 0)
                        rc = major == 2 ? run_tpm2() : run_tpm12();
                close(tpm_fd);
        }
        printf(rc == 0 ? "tpmprobe: done\n" : "tpmprobe: failed\n");
        return rc == 0 ? 0 : 1;
}
