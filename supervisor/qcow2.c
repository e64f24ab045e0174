#include "config.h"

#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/util.h"
#include "supervisor/qcow2.h"

#define QCOW2_MAGIC 0x514649fbU /* "QFI\xfb" */
#define QCOW2_V2_HEADER_LEN 72
#define QCOW2_V3_HEADER_MIN 104
/* QEMU's MIN_CLUSTER_BITS and MAX_CLUSTER_BITS */
#define QCOW2_MIN_CLUSTER_BITS 9
#define QCOW2_MAX_CLUSTER_BITS 21
/* QEMU refuses a longer backing file name; its backing_format buffer is 16 bytes */
#define QCOW2_MAX_BACKING_NAME 1023
#define QCOW2_MAX_BACKING_FORMAT 15
#define QCOW2_INCOMPAT_DATA_FILE (UINT64_C(1) << 2)

enum {
        QCOW2_EXT_END = 0,
        QCOW2_EXT_BACKING_FORMAT = 0xe2792acaU,
        QCOW2_EXT_DATA_FILE = 0x44415441U,
};

struct reader {
        int fd;
        const char *path;
        uint64_t size;
        vmsup_error **err;
};

static int bad(struct reader *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int bad(struct reader *r, const char *fmt, ...) {
        _cleanup_free_ char *why = NULL;
        va_list ap;
        int n;

        va_start(ap, fmt);
        n = vasprintf(&why, fmt, ap);
        va_end(ap);
        if (n < 0)
                return vmsup_fail(r->err, VMSUP_ERR_SYSTEM, ENOMEM, "qcow2 image '%s'", r->path);
        return vmsup_fail(r->err, VMSUP_ERR_DATA, 0, "qcow2 image '%s': %s", r->path, why);
}

/* len bytes at off, all inside the file: QEMU reads zeros past the end, we refuse. */
static int read_at(struct reader *r, uint64_t off, size_t len, void *buf, const char *what) {
        size_t done = 0;

        if (off > r->size || len > r->size - off)
                return bad(r, "%s (%zu bytes at offset %llu) runs past the end of the file (%llu bytes)", what, len,
                           (unsigned long long) off, (unsigned long long) r->size);
        while (done < len) {
                ssize_t n = pread(r->fd, (char *) buf + done, len - done, (off_t) (off + done));

                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0)
                        return vmsup_fail(r->err, VMSUP_ERR_IO, errno, "read qcow2 image '%s'", r->path);
                if (n == 0)
                        return bad(r, "%s: the file shrank while being read", what);
                done += (size_t) n;
        }
        return 0;
}

/* A string field: len bytes at off, no NUL inside (QEMU would cut it there). */
static int read_string(struct reader *r, uint64_t off, size_t len, const char *what, char **ret) {
        _cleanup_free_ char *s = malloc(len + 1);
        int k;

        if (!s)
                return vmsup_fail(r->err, VMSUP_ERR_SYSTEM, ENOMEM, "qcow2 image '%s'", r->path);
        k = read_at(r, off, len, s, what);
        if (k < 0)
                return k;
        s[len] = '\0';
        if (strlen(s) != len)
                return bad(r, "%s contains a NUL byte", what);
        free(*ret); /* QEMU keeps the last of repeated extensions */
        *ret = TAKE_PTR(s);
        return 0;
}

static uint32_t be32_at(const uint8_t *p) {
        uint32_t v;

        memcpy(&v, p, sizeof(v));
        return be32toh(v);
}

static uint64_t be64_at(const uint8_t *p) {
        uint64_t v;

        memcpy(&v, p, sizeof(v));
        return be64toh(v);
}

/* Header extensions, as QEMU's qcow2_read_extensions walks them: from the end of the
 * header to the backing file name (or the end of the first cluster), each 8-byte aligned,
 * until an end marker. */
static int read_extensions(struct reader *r, uint64_t off, uint64_t end, struct qcow2_header_info *info) {
        while (off < end) {
                uint8_t h[8];
                uint32_t type, len;
                int k;

                if (end - off < sizeof(h))
                        return bad(r, "header extension at offset %llu is cut by the end of the header area (%llu)",
                                   (unsigned long long) off, (unsigned long long) end);
                k = read_at(r, off, sizeof(h), h, "a header extension");
                if (k < 0)
                        return k;
                type = be32_at(h);
                len = be32_at(h + 4);
                off += sizeof(h);
                if (type == QCOW2_EXT_END)
                        return 0;
                if (len > end - off)
                        return bad(r, "header extension 0x%08x of %u bytes at offset %llu is too large", type, len,
                                   (unsigned long long) off);
                switch (type) {
                case QCOW2_EXT_BACKING_FORMAT:
                        if (len > QCOW2_MAX_BACKING_FORMAT)
                                return bad(r, "backing format extension of %u bytes is too long", len);
                        k = read_string(r, off, len, "the backing format", &info->backing_format);
                        break;
                case QCOW2_EXT_DATA_FILE:
                        info->data_file = true;
                        k = read_string(r, off, len, "the data file name", &info->data_file_name);
                        break;
                default:
                        k = 0;
                }
                if (k < 0)
                        return k;
                off += ((uint64_t) len + 7) & ~UINT64_C(7);
        }
        return 0;
}

int qcow2_header_read(int fd, const char *path, struct qcow2_header_info *ret, vmsup_error **err) {
        struct qcow2_header_info info = { 0 };
        struct reader r = { .fd = fd, .path = path, .err = err };
        uint8_t h[QCOW2_V3_HEADER_MIN];
        uint64_t cluster_size, backing_off, header_len, ext_end;
        uint32_t backing_size, cluster_bits;
        struct stat st;
        int k;

        if (fstat(fd, &st) < 0)
                return vmsup_fail(err, VMSUP_ERR_IO, errno, "stat qcow2 image '%s'", path);
        if (!S_ISREG(st.st_mode))
                return vmsup_fail(err, VMSUP_ERR_DATA, 0, "qcow2 image '%s': not a regular file", path);
        r.size = (uint64_t) st.st_size;

        if (r.size < 4 || (k = read_at(&r, 0, 4, h, "the magic")) < 0 || be32_at(h) != QCOW2_MAGIC)
                return vmsup_fail(err, VMSUP_ERR_DATA, 0, "qcow2 image '%s': not a qcow2 image (no QFI\\xfb magic)",
                                  path);
        if ((k = read_at(&r, 0, QCOW2_V2_HEADER_LEN, h, "the header")) < 0)
                return k;
        info.version = be32_at(h + 4);
        if (info.version != 2 && info.version != 3)
                return bad(&r, "unsupported qcow2 version %u", info.version);
        backing_off = be64_at(h + 8);
        backing_size = be32_at(h + 16);
        cluster_bits = be32_at(h + 20);
        if (cluster_bits < QCOW2_MIN_CLUSTER_BITS || cluster_bits > QCOW2_MAX_CLUSTER_BITS)
                return bad(&r, "cluster_bits %u is out of range (%d to %d)", cluster_bits, QCOW2_MIN_CLUSTER_BITS,
                           QCOW2_MAX_CLUSTER_BITS);
        cluster_size = UINT64_C(1) << cluster_bits;

        header_len = QCOW2_V2_HEADER_LEN;
        if (info.version == 3) {
                uint64_t incompat;

                if ((k = read_at(&r, 0, QCOW2_V3_HEADER_MIN, h, "the version 3 header")) < 0)
                        return k;
                incompat = be64_at(h + 72);
                header_len = be32_at(h + 100);
                if (header_len < QCOW2_V3_HEADER_MIN || header_len > cluster_size)
                        return bad(&r, "header_length %llu is out of range (%d to the cluster size %llu)",
                                   (unsigned long long) header_len, QCOW2_V3_HEADER_MIN,
                                   (unsigned long long) cluster_size);
                if (incompat & QCOW2_INCOMPAT_DATA_FILE)
                        info.data_file = true;
        }

        if (backing_off) {
                if (backing_off > cluster_size || backing_size > QCOW2_MAX_BACKING_NAME ||
                    backing_size > cluster_size - backing_off) {
                        k = bad(&r, "backing file name (%u bytes at offset %llu) is too long or outside the first cluster",
                                backing_size, (unsigned long long) backing_off);
                        goto fail;
                }
                if (backing_off < header_len) {
                        k = bad(&r, "backing file name at offset %llu overlaps the header (%llu bytes)",
                                (unsigned long long) backing_off, (unsigned long long) header_len);
                        goto fail;
                }
        }
        ext_end = backing_off ? backing_off : cluster_size;
        if ((k = read_extensions(&r, header_len, ext_end, &info)) < 0)
                goto fail;
        /* QEMU takes an empty name as no backing file */
        if (backing_off && backing_size > 0 &&
            (k = read_string(&r, backing_off, backing_size, "the backing file name", &info.backing_file)) < 0)
                goto fail;

        *ret = info;
        return 0;
fail:
        qcow2_header_info_clear(&info);
        return k;
}

int qcow2_header_load(const char *path, struct qcow2_header_info *ret, vmsup_error **err) {
        _cleanup_close_ int fd = -1;

        /* QEMU's file driver follows symlinks; O_NONBLOCK: a FIFO must not hang us, it is
         * refused as not a regular file */
        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
        if (fd < 0)
                return vmsup_fail(err, errno == ENOENT ? VMSUP_ERR_NOT_FOUND : VMSUP_ERR_DATA, errno,
                                  "open qcow2 image '%s'", path);
        return qcow2_header_read(fd, path, ret, err);
}

void qcow2_header_info_clear(struct qcow2_header_info *info) {
        free(info->backing_file);
        free(info->backing_format);
        free(info->data_file_name);
        memset(info, 0, sizeof(*info));
}
