/* The qcow2 header reader and the disk images check, on images made by qemu-img and on
 * hand-made bytes. */
#include "config.h"

#include <criterion/criterion.h>
#include <endian.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli/exitstatus.h"
#include "supervisor/diskimages.h"
#include "nova/guestspec.h"
#include "supervisor/qcow2.h"
#include "tests/helpers.h"

static char *dir;

static void setup(void) {
        dir = test_mkdtemp();
}

static void teardown(void) {
        test_rmtree(dir);
        free(dir);
}

TestSuite(qcow2, .init = setup, .fini = teardown);

static char *path_in(const char *name) {
        char *p;

        cr_assert_neq(asprintf(&p, "%s/%s", dir, name), -1);
        return p;
}

/* qemu-img, in the test dir; the test fails (not skips) without it. */
static void qemu_img(const char *args) {
        char cmd[2048];
        int rc;

        cr_assert_eq(access("/usr/bin/qemu-img", X_OK), 0, "qemu-img is missing (apt-get install qemu-utils)");
        snprintf(cmd, sizeof(cmd), "cd '%s' && /usr/bin/qemu-img %s >/dev/null", dir, args);
        rc = system(cmd);
        cr_assert_eq(rc, 0, "qemu-img %s: exit %d", args, rc);
}

static int load(const char *name, struct qcow2_header_info *h, vmsup_error **err) {
        char *p = path_in(name);
        int r = qcow2_header_load(p, h, err);

        free(p);
        return r;
}

static struct qcow2_header_info load_ok(const char *name) {
        struct qcow2_header_info h;
        vmsup_error *err = NULL;

        cr_assert_eq(load(name, &h, &err), 0, "%s: %s", name, err ? err->msg : "");
        return h;
}

/* The error text for an image that must be refused with exit 65. */
static char *load_refused(const char *name) {
        struct qcow2_header_info h;
        vmsup_error *err = NULL;
        char *msg;

        cr_assert_lt(load(name, &h, &err), 0, "%s was accepted", name);
        cr_assert_eq(err->kind, VMSUP_ERR_DATA, "%s: kind %s (%s)", name, vmsup_err_kind_to_string(err->kind), err->msg);
        cr_assert(strstr(err->msg, name), "the error names the image: %s", err->msg);
        msg = strdup(err->msg);
        vmsup_error_free(err);
        return msg;
}

#define assert_refused(name, text)                                                                 \
        do {                                                                                       \
                char *m_ = load_refused(name);                                                     \
                cr_assert(strstr(m_, text), "%s: message '%s' lacks '%s'", name, m_, text);         \
                free(m_);                                                                          \
        } while (0)

Test(qcow2, plain_image_names_nothing) {
        qemu_img("create -q -f qcow2 top.qcow2 1M");
        struct qcow2_header_info h = load_ok("top.qcow2");

        cr_assert_eq(h.version, 3);
        cr_assert_null(h.backing_file);
        cr_assert_null(h.backing_format);
        cr_assert_not(h.data_file);
        qcow2_header_info_clear(&h);
}

Test(qcow2, backing_file_and_format_v3_and_v2) {
        qemu_img("create -q -f qcow2 -u -b /etc/passwd -F raw top.qcow2 1M");
        struct qcow2_header_info h = load_ok("top.qcow2");

        cr_assert_eq(h.version, 3);
        cr_assert_str_eq(h.backing_file, "/etc/passwd");
        cr_assert_str_eq(h.backing_format, "raw");
        cr_assert_not(h.data_file);
        qcow2_header_info_clear(&h);

        qemu_img("create -q -f qcow2 -o compat=0.10 -u -b base.qcow2 -F qcow2 old.qcow2 1M");
        h = load_ok("old.qcow2");
        cr_assert_eq(h.version, 2);
        cr_assert_str_eq(h.backing_file, "base.qcow2");
        cr_assert_str_eq(h.backing_format, "qcow2");
        qcow2_header_info_clear(&h);
}

Test(qcow2, external_data_file) {
        qemu_img("create -q -f qcow2 -o data_file=data.raw top.qcow2 1M");
        struct qcow2_header_info h = load_ok("top.qcow2");

        cr_assert(h.data_file);
        cr_assert_str_eq(h.data_file_name, "data.raw");
        qcow2_header_info_clear(&h);
}

/* ---- hand-made headers -------------------------------------------------------------- */

struct craft {
        uint32_t magic, version, cluster_bits, backing_size, header_len;
        uint64_t backing_off, incompat;
        const void *tail; /* bytes written right after the 104-byte header */
        size_t tail_len;
        size_t file_len; /* 0: the header and the tail */
};

static void put32(uint8_t *p, uint32_t v) {
        v = htobe32(v);
        memcpy(p, &v, 4);
}

static void put64(uint8_t *p, uint64_t v) {
        v = htobe64(v);
        memcpy(p, &v, 8);
}

static void craft(const char *name, const struct craft *c) {
        static uint8_t buf[1 << 17];
        size_t len = c->file_len ? c->file_len : 104 + c->tail_len;
        char *p = path_in(name);
        int fd;

        cr_assert_leq(104 + c->tail_len, sizeof(buf));
        cr_assert_leq(len, sizeof(buf));
        memset(buf, 0, sizeof(buf));
        put32(buf, c->magic ? c->magic : 0x514649fb);
        put32(buf + 4, c->version ? c->version : 3);
        put64(buf + 8, c->backing_off);
        put32(buf + 16, c->backing_size);
        put32(buf + 20, c->cluster_bits ? c->cluster_bits : 16);
        put64(buf + 72, c->incompat);
        put32(buf + 96, 4);
        put32(buf + 100, c->header_len ? c->header_len : 104);
        if (c->tail_len)
                memcpy(buf + 104, c->tail, c->tail_len);
        fd = open(p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        cr_assert_geq(fd, 0);
        cr_assert_eq(write(fd, buf, len), (ssize_t) len);
        close(fd);
        free(p);
}

/* An extension header (type, len) and its data, padded to 8 bytes. */
static size_t ext(uint8_t *p, uint32_t type, uint32_t len, const char *data) {
        put32(p, type);
        put32(p + 4, len);
        if (data)
                memcpy(p + 8, data, strlen(data));
        return 8 + ((data ? strlen(data) : 0) + 7) / 8 * 8;
}

Test(qcow2, crafted_good_header) {
        uint8_t tail[64] = { 0 };
        size_t n = ext(tail, 0xe2792aca, 3, "raw");

        n += ext(tail + n, 0, 0, NULL);
        memcpy(tail + n, "/srv/base.img", 13);
        craft("good.qcow2", &(struct craft) { .backing_off = 104 + n, .backing_size = 13, .tail = tail,
                                              .tail_len = n + 13 });
        struct qcow2_header_info h = load_ok("good.qcow2");

        cr_assert_str_eq(h.backing_file, "/srv/base.img");
        cr_assert_str_eq(h.backing_format, "raw");
        qcow2_header_info_clear(&h);
}

Test(qcow2, bad_magic_and_short_files) {
        uint8_t end[8] = { 0 };

        craft("magic.qcow2", &(struct craft) { .magic = 0x514649fa, .tail = end, .tail_len = 8 });
        assert_refused("magic.qcow2", "not a qcow2 image");
        free(test_write_file(dir, "empty.qcow2", "", 0600));
        assert_refused("empty.qcow2", "not a qcow2 image");
        craft("short.qcow2", &(struct craft) { .file_len = 50 });
        assert_refused("short.qcow2", "the header (72 bytes at offset 0) runs past the end of the file (50 bytes)");
        craft("short3.qcow2", &(struct craft) { .file_len = 90 });
        assert_refused("short3.qcow2", "the version 3 header (104 bytes at offset 0) runs past the end of the file");
        craft("noend.qcow2", &(struct craft) { .file_len = 104 });
        assert_refused("noend.qcow2", "a header extension (8 bytes at offset 104) runs past the end of the file");
}

Test(qcow2, bad_header_fields) {
        uint8_t end[8] = { 0 };

        craft("v4.qcow2", &(struct craft) { .version = 4, .tail = end, .tail_len = 8 });
        assert_refused("v4.qcow2", "unsupported qcow2 version 4");
        craft("cb.qcow2", &(struct craft) { .cluster_bits = 40, .tail = end, .tail_len = 8 });
        assert_refused("cb.qcow2", "cluster_bits 40 is out of range");
        craft("hl.qcow2", &(struct craft) { .header_len = 0xffffffff, .tail = end, .tail_len = 8 });
        assert_refused("hl.qcow2", "header_length 4294967295 is out of range");
        craft("hl2.qcow2", &(struct craft) { .header_len = 72, .tail = end, .tail_len = 8 });
        assert_refused("hl2.qcow2", "header_length 72 is out of range");
}

Test(qcow2, backing_name_offsets_and_sizes) {
        uint8_t tail[16] = { 0 };

        /* offset inside the first cluster but past the end of the file */
        craft("eof.qcow2", &(struct craft) { .backing_off = 200, .backing_size = 10, .tail = tail, .tail_len = 8 });
        assert_refused("eof.qcow2", "the backing file name (10 bytes at offset 200) runs past the end of the file (112 bytes)");
        craft("huge.qcow2", &(struct craft) { .backing_off = 112, .backing_size = 0xffffffff, .tail = tail, .tail_len = 8 });
        assert_refused("huge.qcow2", "backing file name (4294967295 bytes at offset 112) is too long");
        craft("far.qcow2", &(struct craft) { .backing_off = UINT64_C(0xfffffffffffffff0), .backing_size = 8,
                                             .tail = tail, .tail_len = 8 });
        assert_refused("far.qcow2", "outside the first cluster");
        craft("long.qcow2", &(struct craft) { .backing_off = 112, .backing_size = 1024, .tail = tail, .tail_len = 8,
                                              .file_len = 4096 });
        assert_refused("long.qcow2", "backing file name (1024 bytes at offset 112) is too long");
        craft("overlap.qcow2", &(struct craft) { .backing_off = 20, .backing_size = 4, .tail = tail, .tail_len = 8 });
        assert_refused("overlap.qcow2", "overlaps the header");
        memcpy(tail + 8, "/etc\0x", 6);
        craft("nul.qcow2", &(struct craft) { .backing_off = 112, .backing_size = 6, .tail = tail, .tail_len = 14 });
        assert_refused("nul.qcow2", "the backing file name contains a NUL byte");
}

Test(qcow2, extension_sizes) {
        uint8_t tail[64] = { 0 };

        ext(tail, 0x12345678, 0xffffffff, NULL);
        craft("extlen.qcow2", &(struct craft) { .tail = tail, .tail_len = 64 });
        assert_refused("extlen.qcow2", "header extension 0x12345678 of 4294967295 bytes at offset 112 is too large");
        /* the extension area ends at the backing file name */
        memset(tail, 0, sizeof(tail));
        ext(tail, 0xe2792aca, 16, NULL);
        craft("extname.qcow2", &(struct craft) { .backing_off = 120, .backing_size = 4, .tail = tail, .tail_len = 64 });
        assert_refused("extname.qcow2", "is too large");
        memset(tail, 0, sizeof(tail));
        ext(tail, 0xe2792aca, 20, "qcow2qcow2qcow2qcow2");
        craft("fmtlen.qcow2", &(struct craft) { .tail = tail, .tail_len = 64 });
        assert_refused("fmtlen.qcow2", "backing format extension of 20 bytes is too long");
        /* an extension whose data is past the end of a short file */
        memset(tail, 0, sizeof(tail));
        ext(tail, 0x44415441, 40, NULL);
        craft("extdata.qcow2", &(struct craft) { .tail = tail, .tail_len = 8 });
        assert_refused("extdata.qcow2", "the data file name (40 bytes at offset 112) runs past the end of the file");
}

Test(qcow2, data_file_bit_without_a_name) {
        uint8_t end[8] = { 0 };

        craft("bit.qcow2", &(struct craft) { .incompat = 1 << 2, .tail = end, .tail_len = 8 });
        struct qcow2_header_info h = load_ok("bit.qcow2");

        cr_assert(h.data_file, "incompatible feature bit 2 is an external data file");
        cr_assert_null(h.data_file_name);
        qcow2_header_info_clear(&h);
}

Test(qcow2, not_a_regular_file) {
        char *p = path_in("fifo.qcow2");

        cr_assert_eq(mkfifo(p, 0600), 0);
        free(p);
        assert_refused("fifo.qcow2", "not a regular file");
}

/* ---- the disks of a spec against their headers --------------------------------------- */

static char *check_spec(const char *disks_json, int want_exit) {
        char *json, *msg = NULL;
        struct guest_spec spec;
        vmsup_error *err = NULL;
        int r;

        cr_assert_neq(asprintf(&json,
                               "{\"uuid\": \"0b7c6e4a-3f0e-4d5c-9a1b-2c3d4e5f6a7b\", \"name\": \"g\", \"vcpus\": 1,"
                               " \"memory_mb\": 256, \"flavor\": {\"name\": \"f\"}, \"disks\": %s}",
                               disks_json),
                      -1);
        cr_assert_eq(guest_spec_parse(json, strlen(json), "g.json", &spec, &err), 0, "%s", err ? err->msg : "");
        r = disk_images_check(&spec, &err);
        if (want_exit == 0)
                cr_assert_eq(r, 0, "%s: %s", disks_json, err ? err->msg : "");
        else {
                cr_assert_lt(r, 0, "accepted: %s", disks_json);
                cr_assert_eq(cli_exit_status(err->kind), want_exit, "%s: exit %d (%s)", disks_json, cli_exit_status(err->kind),
                             err->msg);
                msg = strdup(err->msg);
                vmsup_error_free(err);
        }
        guest_spec_clear(&spec);
        free(json);
        return msg;
}

static char *disks(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *disks(const char *fmt, ...) {
        static char buf[4096];
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(buf, sizeof(buf), fmt, ap);
        va_end(ap);
        return buf;
}

#define assert_check_refused(json, want_exit, text)                                              \
        do {                                                                                     \
                char *m_ = check_spec(json, want_exit);                                          \
                cr_assert(strstr(m_, text), "message '%s' lacks '%s'", m_, text);                \
                free(m_);                                                                        \
        } while (0)

Test(qcow2, header_naming_a_host_file_is_refused) {
        qemu_img("create -q -f qcow2 -u -b /etc/shadow -F raw top.qcow2 1M");
        assert_check_refused(disks("[{\"path\": \"%s/top.qcow2\", \"format\": \"qcow2\"}]", dir), 65, "");
        char *m = check_spec(disks("[{\"path\": \"/dev/null\"}, {\"path\": \"%s/top.qcow2\", \"format\": \"qcow2\"}]", dir),
                             65);
        char want[512];

        snprintf(want, sizeof(want), "disks[1]: qcow2 image '%s/top.qcow2' names backing file '/etc/shadow', which the "
                                     "guest spec does not give", dir);
        cr_assert(strstr(m, want), "%s", m);
        free(m);
        /* given as raw, the image is served as it is: no header is followed, none read */
        free(check_spec(disks("[{\"path\": \"%s/top.qcow2\", \"format\": \"raw\"}]", dir), 0));
}

Test(qcow2, chain_given_in_the_spec) {
        qemu_img("create -q -f raw base.raw 1M");
        qemu_img("create -q -f qcow2 -b base.raw -F raw mid.qcow2 1M");
        qemu_img("create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2 1M");
        free(check_spec(disks("[{\"path\": \"%s/top.qcow2\", \"format\": \"qcow2\", \"backing\": {\"path\": \"%s/mid.qcow2\","
                              " \"format\": \"qcow2\", \"backing\": {\"path\": \"%s//./base.raw\", \"format\": \"raw\"}}}]",
                              dir, dir, dir),
                        0));
        /* the chain stops early: mid's header names base.raw */
        assert_check_refused(disks("[{\"path\": \"%s/top.qcow2\", \"format\": \"qcow2\", \"backing\": {\"path\": "
                                   "\"%s/mid.qcow2\", \"format\": \"qcow2\"}}]",
                                   dir, dir),
                             65, "names backing file 'base.raw', which the guest spec does not give");
        /* another file than the header's */
        assert_check_refused(disks("[{\"path\": \"%s/top.qcow2\", \"format\": \"qcow2\", \"backing\": {\"path\": "
                                   "\"%s/base.raw\", \"format\": \"raw\"}}]",
                                   dir, dir),
                             65, "names backing file 'mid.qcow2', but the guest spec gives");
        /* another format than the header's */
        assert_check_refused(disks("[{\"path\": \"%s/top.qcow2\", \"format\": \"qcow2\", \"backing\": {\"path\": "
                                   "\"%s/mid.qcow2\", \"format\": \"raw\"}}]",
                                   dir, dir),
                             65, "names backing format 'qcow2', but the guest spec gives raw");
        /* a chain the header does not have */
        qemu_img("create -q -f qcow2 lone.qcow2 1M");
        assert_check_refused(disks("[{\"path\": \"%s/lone.qcow2\", \"format\": \"qcow2\", \"backing\": {\"path\": "
                                   "\"%s/base.raw\", \"format\": \"raw\"}}]",
                                   dir, dir),
                             65, "names no backing file, but the guest spec gives");
}

Test(qcow2, data_file_is_refused) {
        qemu_img("create -q -f qcow2 -o data_file=data.raw top.qcow2 1M");
        assert_check_refused(disks("[{\"path\": \"%s/top.qcow2\", \"format\": \"qcow2\"}]", dir), 65,
                             "uses an external data file 'data.raw': refused");
}

Test(qcow2, missing_image_exits_66) {
        assert_check_refused(disks("[{\"path\": \"%s/none.qcow2\", \"format\": \"qcow2\"}]", dir), 66, "disks[0]: open qcow2 image");
}

Test(qcow2, backing_path_resolution) {
        struct {
                const char *image, *name, *want;
        } cases[] = {
                { "/srv/i/top.qcow2", "base.qcow2", "/srv/i/base.qcow2" },
                { "/srv/i/top.qcow2", "../_base/b", "/srv/_base/b" },
                { "/srv/i/top.qcow2", "/abs//x/./y", "/abs/x/y" },
                { "/top.qcow2", "../../b", "/b" },
                { "/srv/i/top.qcow2", "./", "/srv/i" },
        };

        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                char *s = disk_images_backing_path(cases[i].image, cases[i].name);

                cr_assert_str_eq(s, cases[i].want, "%s + %s", cases[i].image, cases[i].name);
                free(s);
        }
}
