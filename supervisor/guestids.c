#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/fileio.h"
#include "common/util.h"
#include "common/vtpm.h"
#include "supervisor/guestids.h"

#define REGISTRY_MAX (4u * 1024 * 1024)

struct entry {
        char uuid[37];
        uint32_t first;
};

struct registry {
        struct entry *e;
        size_t n;
};

static int parse_u32(const char *s, const char *end, uint32_t *ret) {
        unsigned long long v = 0;

        if (s == end || end - s > 10)
                return -EINVAL;
        for (const char *p = s; p < end; p++) {
                if (!isdigit((unsigned char) *p))
                        return -EINVAL;
                v = v * 10 + (unsigned) (*p - '0');
        }
        if (v > UINT32_MAX)
                return -EINVAL;
        *ret = (uint32_t) v;
        return 0;
}

int guest_ids_parse_range(const char *s, uint32_t *ret_first, uint32_t *ret_last) {
        const char *dash = strchr(s, '-');
        uint32_t first, last;

        if (streq(s, "none")) {
                *ret_first = *ret_last = 0;
                return 0;
        }
        if (!dash || parse_u32(s, dash, &first) < 0 || parse_u32(dash + 1, dash + 1 + strlen(dash + 1), &last) < 0)
                return -EINVAL;
        /* never root, never (uid_t) -1, and room for one guest's two ids */
        if (first == 0 || last == UINT32_MAX || first >= last)
                return -EINVAL;
        *ret_first = first;
        *ret_last = last;
        return 0;
}

/* The registry decides which process may read which guest's TPM: its directory must be
 * ours and writable by nobody else. */
static int open_state_dir(const char *state_dir, vmsup_error **err) {
        _cleanup_close_ int fd = -1;
        struct stat st;
        int r;

        r = mkdir_parents(state_dir, 0700, err);
        if (r < 0)
                return r;
        fd = open(state_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0 || fstat(fd, &st) < 0)
                return vmsup_fail(err, VMSUP_ERR_IO, errno, "open state directory '%s'", state_dir);
        if (st.st_uid != geteuid() || (st.st_mode & 022))
                return vmsup_fail(err, VMSUP_ERR_DENIED, 0,
                                  "state directory '%s' (uid %u, mode %04o) must belong to uid %u and be writable by "
                                  "no one else: it holds the guests' id registry",
                                  state_dir, (unsigned) st.st_uid, (unsigned) (st.st_mode & 07777), (unsigned) geteuid());
        return TAKE_FD(fd);
}

static int lock_registry(int dfd, const char *state_dir, vmsup_error **err) {
        _cleanup_close_ int fd = openat(dfd, GUEST_IDS_LOCK, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);

        if (fd < 0)
                return vmsup_fail(err, VMSUP_ERR_CANT_CREATE, errno, "open '%s/" GUEST_IDS_LOCK "'", state_dir);
        /* held for a few file operations by whoever has it: waiting is short */
        while (flock(fd, LOCK_EX) < 0)
                if (errno != EINTR)
                        return vmsup_fail(err, VMSUP_ERR_IO, errno, "lock '%s/" GUEST_IDS_LOCK "'", state_dir);
        return TAKE_FD(fd);
}

static bool overlaps(uint32_t a, uint32_t b) {
        return a <= b ? b - a <= 1 : a - b <= 1;
}

static int load_registry(int dfd, const char *state_dir, struct registry *ret, vmsup_error **err) {
        _cleanup_free_ char *data = NULL;
        struct registry reg = { 0 };
        size_t len = 0;
        int line = 0, r;
        char *p, *nl;

        r = file_read_at(dfd, state_dir, GUEST_IDS_FILE, REGISTRY_MAX, false, (void **) &data, &len, err);
        if (r == -ENOENT) {
                *err = vmsup_error_free(*err);
                *ret = reg;
                return 0;
        }
        if (r < 0)
                return r;
        for (p = data; p < data + len; p = nl + 1) {
                struct entry e = { 0 };
                char *space;

                line++;
                nl = memchr(p, '\n', (size_t) (data + len - p));
                if (!nl)
                        goto bad; /* every record ends with a newline: a torn write shows */
                *nl = '\0';
                if (!*p || *p == '#')
                        continue;
                space = strchr(p, ' ');
                if (!space || space - p != 36)
                        goto bad;
                memcpy(e.uuid, p, 36);
                if (!uuid_is_valid(e.uuid) || parse_u32(space + 1, nl, &e.first) < 0 || e.first == 0 ||
                    e.first >= UINT32_MAX - 1)
                        goto bad;
                for (size_t i = 0; i < reg.n; i++)
                        if (streq(reg.e[i].uuid, e.uuid) || overlaps(reg.e[i].first, e.first))
                                goto bad;
                if (reg.n % 64 == 0) {
                        struct entry *n = realloc(reg.e, (reg.n + 64) * sizeof(*n));

                        if (!n) {
                                free(reg.e);
                                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "read '%s/" GUEST_IDS_FILE "'", state_dir);
                        }
                        reg.e = n;
                }
                reg.e[reg.n++] = e;
        }
        *ret = reg;
        return 0;
bad:
        free(reg.e);
        return vmsup_fail(err, VMSUP_ERR_DATA, 0,
                          "'%s/" GUEST_IDS_FILE "' line %d is not 'UUID FIRST' or repeats a guest or an id: "
                          "refusing to hand out ids until it is repaired",
                          state_dir, line);
}

static int store_registry(int dfd, const char *state_dir, const struct registry *reg, vmsup_error **err) {
        static const char head[] = "# vmsup guest ids: UUID FIRST; FIRST is its swtpm's uid and gid, FIRST+1 its QEMU's\n";
        _cleanup_free_ char *text = malloc(sizeof(head) + reg->n * 48);
        size_t len = 0;

        if (!text)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "write '%s/" GUEST_IDS_FILE "'", state_dir);
        memcpy(text, head, sizeof(head) - 1);
        len = sizeof(head) - 1;
        for (size_t i = 0; i < reg->n; i++)
                len += (size_t) sprintf(text + len, "%s %u\n", reg->e[i].uuid, (unsigned) reg->e[i].first);
        return file_write_atomic_at(dfd, state_dir, GUEST_IDS_FILE, text, len, 0600, err);
}

/* An id some user or group of the host already has (in /etc/passwd, /etc/group or any
 * other NSS source). */
static bool id_taken(uint32_t id) {
        return getpwuid((uid_t) id) != NULL || getgrgid((gid_t) id) != NULL;
}

static int cmp_u32(const void *a, const void *b) {
        uint32_t x = *(const uint32_t *) a, y = *(const uint32_t *) b;

        return x < y ? -1 : x > y;
}

int guest_ids_acquire(const char *state_dir, uint32_t first, uint32_t last, const char *uuid,
                      struct guest_ids *ret, vmsup_error **err) {
        _cleanup_close_ int dfd = -1, lock = -1;
        _cleanup_free_ uint32_t *used = NULL;
        struct registry reg = { 0 };
        struct entry *e;
        uint64_t cand;
        size_t lo = 0;
        int r;

        if (first == 0 || first >= last)
                return vmsup_fail(err, VMSUP_ERR_INTERNAL, EINVAL, "guest ids: empty range");
        if ((dfd = open_state_dir(state_dir, err)) < 0)
                return dfd;
        if ((lock = lock_registry(dfd, state_dir, err)) < 0)
                return lock;
        if ((r = load_registry(dfd, state_dir, &reg, err)) < 0)
                return r;
        for (size_t i = 0; i < reg.n; i++)
                if (streq(reg.e[i].uuid, uuid)) {
                        /* a guest keeps its ids (they own its files), even when the range changed */
                        uint32_t f = reg.e[i].first;

                        free(reg.e);
                        if (id_taken(f) || id_taken(f + 1))
                                return vmsup_fail(err, VMSUP_ERR_CONFIG, 0,
                                                  "the guest's ids %u and %u ('%s/" GUEST_IDS_FILE "') now belong to "
                                                  "a user or group of the host: remove that user or group, or the "
                                                  "guest's line there (its files will be given new ids)",
                                                  (unsigned) f, (unsigned) f + 1, state_dir);
                        *ret = (struct guest_ids) { .swtpm = f, .qemu = f + 1 };
                        return 0;
                }
        used = malloc((reg.n + 1) * sizeof(*used));
        if (!used) {
                free(reg.e);
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "guest ids");
        }
        for (size_t i = 0; i < reg.n; i++)
                used[i] = reg.e[i].first;
        qsort(used, reg.n, sizeof(*used), cmp_u32);
        for (cand = first; cand + 1 <= last; cand += 2) {
                bool clash = false;

                /* used[] is sorted: skip the pairs wholly below cand */
                while (lo < reg.n && (uint64_t) used[lo] + 1 < cand)
                        lo++;
                for (size_t i = lo; i < reg.n && used[i] <= cand + 1 && !clash; i++)
                        clash = overlaps(used[i], (uint32_t) cand);
                if (!clash && !id_taken((uint32_t) cand) && !id_taken((uint32_t) cand + 1))
                        break;
        }
        if (cand + 1 > last) {
                free(reg.e);
                return vmsup_fail(err, VMSUP_ERR_BUSY, 0,
                                  "no free ids left in [security] guest_ids %u-%u (%zu guests hold ids): "
                                  "delete guests or widen the range",
                                  (unsigned) first, (unsigned) last, reg.n);
        }
        if (reg.n % 64 == 0) {
                e = realloc(reg.e, (reg.n + 64) * sizeof(*e));
                if (!e) {
                        free(reg.e);
                        return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "guest ids");
                }
                reg.e = e;
        }
        e = &reg.e[reg.n++];
        snprintf(e->uuid, sizeof(e->uuid), "%s", uuid);
        e->first = (uint32_t) cand;
        r = store_registry(dfd, state_dir, &reg, err);
        free(reg.e);
        if (r < 0)
                return vmsup_error_prefix(err, "record the guest's ids");
        *ret = (struct guest_ids) { .swtpm = (uid_t) cand, .qemu = (uid_t) cand + 1 };
        return 0;
}

int guest_ids_release(const char *state_dir, const char *uuid, vmsup_error **err) {
        _cleanup_close_ int dfd = open(state_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC), lock = -1;
        struct registry reg = { 0 };
        bool found = false;
        int r;

        if (dfd < 0)
                return errno == ENOENT ? 0 : vmsup_fail(err, VMSUP_ERR_IO, errno, "open state directory '%s'", state_dir);
        if (faccessat(dfd, GUEST_IDS_FILE, F_OK, AT_SYMLINK_NOFOLLOW) < 0 && errno == ENOENT)
                return 0;
        if ((lock = lock_registry(dfd, state_dir, err)) < 0)
                return lock;
        if ((r = load_registry(dfd, state_dir, &reg, err)) < 0)
                return r;
        for (size_t i = 0; i < reg.n && !found; i++)
                if (streq(reg.e[i].uuid, uuid)) {
                        memmove(&reg.e[i], &reg.e[i + 1], (reg.n - i - 1) * sizeof(reg.e[0]));
                        reg.n--;
                        found = true;
                }
        r = found ? store_registry(dfd, state_dir, &reg, err) : 0;
        free(reg.e);
        return r < 0 ? vmsup_error_prefix(err, "release the guest's ids") : 0;
}
