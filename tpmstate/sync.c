#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/fileio.h"
#include "common/secmem.h"
#include "common/util.h"
#include "crypto/seal.h"
#include "tpmstate/blob.h"
#include "tpmstate/sync.h"

/* swtpm's state files (swtpm_nvstore.c): "<prefix><suffix>"; it writes TMP2-00.<suffix>
 * and renames it, and keeps a .lock. */
static const char *const suffixes[] = { "permall", "volatilestate", "savestate" };
#define N_FILES 3
#define STATE_FILE_MAX (4u * 1024 * 1024)

struct tracked {
        char name[32];
        bool known;        /* digest holds what is sealed */
        uint8_t digest[32];
};

struct tpm_sync {
        int live_fd, state_fd, inotify_fd;
        int watch; /* inotify watch descriptor of the live dir, -1 when none */
        char *live_path, *state_path;
        char uuid[37];
        enum tpm_version version;
        uid_t uid;
        gid_t gid;
        bool uid_private;
        struct seal_dir sd;
        struct seal_manifest m;
        struct tracked files[N_FILES];
        unsigned sealed;
        unsigned recovered; /* files sealed from a crashed run's live dir */
};

static int open_dir(const char *path, vmsup_error **err) {
        int fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);

        if (fd < 0)
                return vmsup_fail(err, VMSUP_ERR_IO, errno, "open TPM state directory '%s'", path);
        return fd;
}

int tpm_sync_open(const struct tpm_sync_opts *o, struct tpm_sync **ret, vmsup_error **err) {
        struct tpm_sync *s = calloc(1, sizeof(*s));
        const char *prefix = o->version == TPM_VERSION_1_2 ? "tpm-00." : "tpm2-00.";
        int r;

        if (!s)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "TPM state sync");
        s->live_fd = s->state_fd = s->inotify_fd = s->watch = -1;
        s->live_path = strdup(o->live_dir);
        s->state_path = strdup(o->state_dir);
        if (!s->live_path || !s->state_path) {
                tpm_sync_free(s);
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "TPM state sync");
        }
        snprintf(s->uuid, sizeof(s->uuid), "%s", o->uuid);
        s->version = o->version;
        s->uid = o->uid;
        s->gid = o->gid;
        s->uid_private = o->uid_private;
        for (size_t i = 0; i < N_FILES; i++)
                snprintf(s->files[i].name, sizeof(s->files[i].name), "%s%s", prefix, suffixes[i]);
        if ((r = s->live_fd = open_dir(o->live_dir, err)) < 0 || (r = s->state_fd = open_dir(o->state_dir, err)) < 0) {
                tpm_sync_free(s);
                return r;
        }
        s->sd = (struct seal_dir) { .dirfd = s->state_fd, .path = s->state_path, .key = o->key, .uuid = s->uuid };
        r = seal_manifest_load(&s->sd, &s->m, err);
        if (r < 0) {
                tpm_sync_free(s);
                return r;
        }
        *ret = s;
        return 0;
}

static void digest_of(const void *data, size_t len, uint8_t out[32]) {
        gnutls_hash_fast(GNUTLS_DIG_SHA256, data, len, out);
}

/* Read a live state file; 0 and *ret_data NULL when it does not exist. */
static int read_live(struct tpm_sync *s, const char *name, uint8_t **ret_data, size_t *ret_len, vmsup_error **err) {
        void *data = NULL;
        int r;

        r = file_read_at(s->live_fd, s->live_path, name, STATE_FILE_MAX, true, &data, ret_len, err);
        if (r == -ENOENT) {
                vmsup_error_free(*err);
                *err = NULL;
                *ret_data = NULL;
                return 0;
        }
        if (r < 0)
                return r;
        *ret_data = data;
        return 0;
}

static int manifest_drop(struct seal_manifest *m, const char *name) {
        for (size_t i = 0; i < m->n; i++)
                if (streq(m->entries[i].name, name)) {
                        free(m->entries[i].name);
                        memmove(&m->entries[i], &m->entries[i + 1], (m->n - i - 1) * sizeof(m->entries[0]));
                        m->n--;
                        return 1;
                }
        return 0;
}

/* Seal one live file if it differs from what is sealed; drop the sealed copy when swtpm
 * removed the file. */
static int sync_one(struct tpm_sync *s, struct tracked *t, vmsup_error **err) {
        _cleanup_secmem_ uint8_t *data = NULL;
        uint8_t digest[32];
        char sealed[64];
        size_t len = 0;
        int r;

        r = read_live(s, t->name, &data, &len, err);
        if (r < 0)
                return r;
        if (!data) {
                /* The permanent state is never dropped because its live copy is missing:
                 * only swtpm's consumed volatile and saved states are. */
                if (t == &s->files[0] || (!t->known && !seal_manifest_get(&s->m, t->name)))
                        return 0;
                /* swtpm deleted it (a volatile state it consumed): so do we, or an
                 * outdated volatile state would come back on the next start. The
                 * manifest forgets it first, so a crash in between leaves a stray
                 * sealed file that restore ignores, never a record without its file. */
                if (manifest_drop(&s->m, t->name) && (r = seal_manifest_store(&s->sd, &s->m, err)) < 0)
                        return r;
                snprintf(sealed, sizeof(sealed), "%s" SEAL_SUFFIX, t->name);
                if (unlinkat(s->state_fd, sealed, 0) < 0 && errno != ENOENT)
                        return vmsup_fail(err, VMSUP_ERR_IO, errno, "remove '%s/%s'", s->state_path, sealed);
                t->known = false;
                return 0;
        }
        digest_of(data, len, digest);
        if (t->known && memcmp(digest, t->digest, sizeof(digest)) == 0)
                return 0;
        r = seal_state_write(&s->sd, &s->m, t->name, data, len, err);
        if (r < 0)
                return r;
        memcpy(t->digest, digest, sizeof(digest));
        t->known = true;
        s->sealed++;
        return 0;
}

int tpm_sync_seal_all(struct tpm_sync *s, vmsup_error **err) {
        for (size_t i = 0; i < N_FILES; i++) {
                int r = sync_one(s, &s->files[i], err);

                if (r < 0)
                        return r;
        }
        return 0;
}

/* Written by root (vmsup, swtpm_setup) or by this guest's own swtpm: nobody else can
 * make a file owned by either. A uid other guests' swtpm share proves nothing. */
static bool owner_trusted(const struct tpm_sync *s, uid_t owner) {
        return owner == geteuid() || (owner == s->uid && s->uid_private);
}

static int refuse_leftover(const struct tpm_sync *s, const char *name, const char *why, vmsup_error **err) {
        return vmsup_fail(err, VMSUP_ERR_DATA, 0,
                          "refusing TPM state '%s/%s' that an earlier run left: %s, so nothing shows that this "
                          "guest's own swtpm wrote it; it was neither sealed nor removed: inspect it, then remove "
                          "it to start from the sealed state",
                          s->live_path, name, why);
}

/* Step 0 of restore: every leftover state file provably comes from this guest's swtpm. */
static int check_leftovers(const struct tpm_sync *s, vmsup_error **err) {
        struct stat st;
        char why[160];

        if (fstat(s->live_fd, &st) < 0)
                return vmsup_fail(err, VMSUP_ERR_IO, errno, "stat '%s'", s->live_path);
        if (!owner_trusted(s, st.st_uid) || (st.st_mode & 022)) {
                if (st.st_uid == s->uid)
                        snprintf(why, sizeof(why),
                                 "its directory belongs to uid %u, which other guests' swtpm share ([security] "
                                 "guest_ids = none)",
                                 (unsigned) st.st_uid);
                else
                        snprintf(why, sizeof(why), "its directory belongs to uid %u with mode %04o",
                                 (unsigned) st.st_uid, (unsigned) (st.st_mode & 07777));
                for (size_t i = 0; i < N_FILES; i++)
                        if (faccessat(s->live_fd, s->files[i].name, F_OK, AT_SYMLINK_NOFOLLOW) == 0)
                                return refuse_leftover(s, s->files[i].name, why, err);
        }
        for (size_t i = 0; i < N_FILES; i++) {
                const char *name = s->files[i].name;
                _cleanup_close_ int fd = openat(s->live_fd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);

                if (fd < 0 && errno == ENOENT)
                        continue;
                if (fd < 0 && errno == ELOOP)
                        return refuse_leftover(s, name, "it is a symbolic link", err);
                if (fd < 0 || fstat(fd, &st) < 0)
                        return vmsup_fail(err, VMSUP_ERR_IO, errno, "open '%s/%s'", s->live_path, name);
                if (!S_ISREG(st.st_mode))
                        return refuse_leftover(s, name, "it is not a regular file", err);
                if (st.st_nlink != 1) {
                        snprintf(why, sizeof(why), "it has %lu links", (unsigned long) st.st_nlink);
                        return refuse_leftover(s, name, why, err);
                }
                if (owner_trusted(s, st.st_uid))
                        continue;
                if (st.st_uid == s->uid)
                        snprintf(why, sizeof(why),
                                 "it belongs to uid %u, which other guests' swtpm share ([security] guest_ids = none)",
                                 (unsigned) st.st_uid);
                else
                        snprintf(why, sizeof(why), "it belongs to uid %u, not to this guest's swtpm (uid %u) or root",
                                 (unsigned) st.st_uid, (unsigned) s->uid);
                return refuse_leftover(s, name, why, err);
        }
        return 0;
}

int tpm_sync_restore(struct tpm_sync *s, vmsup_error **err) {
        uint8_t *data[N_FILES] = { NULL };
        size_t lens[N_FILES] = { 0 };
        struct tpm_blob_file files[N_FILES];
        size_t n = 0;
        vmsup_error *verr = NULL;
        int r;

        r = check_leftovers(s, err);
        if (r < 0)
                return r;
        /* 1. What a crashed run left in the live dir is newer than the sealed copy (only
         *    swtpm writes there) if libtpms takes it as a whole; else the sealed state
         *    stands and the leftovers are replaced below. */
        if (faccessat(s->live_fd, s->files[0].name, F_OK, AT_SYMLINK_NOFOLLOW) == 0) {
                if (tpm_blob_validate_dir(s->live_fd, s->live_path, s->version, &verr) == 0) {
                        for (size_t i = 0; i < N_FILES; i++) {
                                _cleanup_secmem_ uint8_t *live = NULL, *sealed = NULL;
                                size_t live_len = 0, sealed_len = 0;

                                r = read_live(s, s->files[i].name, &live, &live_len, err);
                                if (r < 0)
                                        return r;
                                if (!live)
                                        continue;
                                if (seal_manifest_get(&s->m, s->files[i].name)) {
                                        r = seal_state_read(&s->sd, &s->m, s->files[i].name, &sealed, &sealed_len, err);
                                        if (r < 0)
                                                return r;
                                        if (sealed_len == live_len && memcmp(sealed, live, live_len) == 0)
                                                continue;
                                }
                                r = seal_state_write(&s->sd, &s->m, s->files[i].name, live, live_len, err);
                                if (r < 0)
                                        return vmsup_error_prefix(err, "seal the TPM state a crashed run left in '%s'",
                                                                  s->live_path);
                                s->sealed++;
                                s->recovered++;
                        }
                } else
                        verr = vmsup_error_free(verr);
        }

        /* 2. The live dir gets exactly what is sealed, once libtpms has taken it. */
        r = 0;
        for (size_t i = 0; i < N_FILES && r >= 0; i++) {
                if (!seal_manifest_get(&s->m, s->files[i].name))
                        continue;
                r = seal_state_read(&s->sd, &s->m, s->files[i].name, &data[i], &lens[i], err);
                if (r >= 0)
                        files[n++] = (struct tpm_blob_file) { .name = s->files[i].name,
                                                              .kind = (enum tpm_blob_kind) (i + 1),
                                                              .data = data[i], .len = lens[i] };
        }
        if (r >= 0 && n > 0 && !data[0])
                r = vmsup_fail(err, VMSUP_ERR_DATA, 0, "sealed TPM state in '%s' has no %s", s->state_path,
                               s->files[0].name);
        if (r >= 0 && n > 0 && (r = tpm_blob_validate(s->version, files, n, err)) < 0)
                vmsup_error_prefix(err, "sealed TPM state in '%s' would not load; it stays sealed as it is", s->state_path);
        for (size_t i = 0; i < N_FILES && r >= 0; i++) {
                struct tracked *t = &s->files[i];

                if (!data[i]) {
                        if (unlinkat(s->live_fd, t->name, 0) < 0 && errno != ENOENT)
                                r = vmsup_fail(err, VMSUP_ERR_IO, errno, "remove '%s/%s'", s->live_path, t->name);
                        t->known = false;
                        continue;
                }
                /* the live copy: its sealed copy is the durable one */
                r = file_replace_at(s->live_fd, s->live_path, t->name, data[i], lens[i], 0600, err);
                if (r >= 0 && fchownat(s->live_fd, t->name, s->uid, s->gid, AT_SYMLINK_NOFOLLOW) < 0)
                        r = vmsup_fail(err, VMSUP_ERR_IO, errno, "chown '%s/%s'", s->live_path, t->name);
                if (r >= 0) {
                        digest_of(data[i], lens[i], t->digest);
                        t->known = true;
                }
        }
        for (size_t i = 0; i < N_FILES; i++)
                secmem_free(data[i]);
        if (r < 0)
                return r;
        return n > 0 ? 1 : 0;
}

int tpm_sync_watch(struct tpm_sync *s, vmsup_error **err) {
        if (s->watch >= 0)
                return 0;
        /* a new instance, for the caller's epoll; the one unwatch() kept goes now */
        closep(&s->inotify_fd);
        s->inotify_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
        if (s->inotify_fd < 0)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, errno, "inotify");
        /* swtpm renames a finished file over the old one (IN_MOVED_TO); a file written
         * in place or deleted shows as IN_CLOSE_WRITE or IN_DELETE. */
        s->watch = inotify_add_watch(s->inotify_fd, s->live_path, IN_MOVED_TO | IN_CLOSE_WRITE | IN_DELETE | IN_ONLYDIR);
        if (s->watch < 0)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, errno, "watch '%s'", s->live_path);
        return 0;
}

int tpm_sync_fd(const struct tpm_sync *s) {
        return s->inotify_fd;
}

int tpm_sync_dispatch(struct tpm_sync *s, vmsup_error **err) {
        char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
        bool touched[N_FILES] = { false };
        ssize_t n;

        while ((n = read(s->inotify_fd, buf, sizeof(buf))) > 0) {
                for (char *p = buf; p < buf + n;) {
                        struct inotify_event *ev = (struct inotify_event *) p;

                        for (size_t i = 0; i < N_FILES; i++)
                                if (ev->len && streq(ev->name, s->files[i].name))
                                        touched[i] = true;
                        p += sizeof(*ev) + ev->len;
                }
        }
        if (n < 0 && errno != EAGAIN && errno != EINTR)
                return vmsup_fail(err, VMSUP_ERR_IO, errno, "read inotify events of '%s'", s->live_path);
        for (size_t i = 0; i < N_FILES; i++)
                if (touched[i]) {
                        int r = sync_one(s, &s->files[i], err);

                        if (r < 0)
                                return r;
                }
        return 0;
}

/* Stop watching the live dir, but keep the inotify instance (silent now, still in the
 * caller's epoll) until the sync is watched again or freed. Closing an instance that
 * has a watch waits in the kernel until the watch is destroyed (an fsnotify SRCU grace
 * period: 5-20 ms on the benchmark's machine, most of a forced stop), whereas
 * inotify_rm_watch leaves that to a kernel worker; by the time the instance is closed,
 * there is little or nothing left to wait for, and 'vmsup stop' has been answered. */
static void unwatch(struct tpm_sync *s) {
        char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));

        if (s->watch < 0)
                return;
        (void) inotify_rm_watch(s->inotify_fd, s->watch);
        s->watch = -1;
        /* rm_watch queued IN_IGNORED: drain it (and whatever was unread), or a
         * level-triggered epoll would keep reporting the fd */
        while (read(s->inotify_fd, buf, sizeof(buf)) > 0)
                ;
}

int tpm_sync_wipe_live(struct tpm_sync *s, vmsup_error **err) {
        struct dirent *e;
        DIR *d;
        int dfd, r = 0;

        /* Our own deletions are not swtpm's: stop watching first (tpm_sync_watch
         * starts again, with a new fd for the caller's epoll). */
        unwatch(s);
        dfd = fcntl(s->live_fd, F_DUPFD_CLOEXEC, 3);
        if (dfd < 0 || !(d = fdopendir(dfd))) {
                if (dfd >= 0)
                        close(dfd);
                return vmsup_fail(err, VMSUP_ERR_IO, errno, "list '%s'", s->live_path);
        }
        rewinddir(d);
        while ((e = readdir(d))) {
                static const char zeros[4096];
                struct stat st;
                int fd;

                if (streq(e->d_name, ".") || streq(e->d_name, ".."))
                        continue;
                fd = openat(s->live_fd, e->d_name, O_WRONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
                if (fd >= 0) {
                        /* zero the pages before they go back to the page allocator */
                        if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode))
                                for (off_t off = 0; off < st.st_size; off += (off_t) sizeof(zeros))
                                        if (pwrite(fd, zeros, (size_t) (st.st_size - off < (off_t) sizeof(zeros)
                                                                                ? st.st_size - off
                                                                                : (off_t) sizeof(zeros)),
                                                   off) < 0)
                                                break;
                        close(fd);
                }
                if (unlinkat(s->live_fd, e->d_name, 0) < 0 && errno != ENOENT && r == 0)
                        r = vmsup_fail(err, VMSUP_ERR_IO, errno, "remove '%s/%s'", s->live_path, e->d_name);
        }
        closedir(d);
        return r;
}

bool tpm_sync_live_has_state(const struct tpm_sync *s) {
        return faccessat(s->live_fd, s->files[0].name, F_OK, AT_SYMLINK_NOFOLLOW) == 0;
}

uint64_t tpm_sync_generation(const struct tpm_sync *s) {
        return s->m.generation;
}

void tpm_sync_continue_from(struct tpm_sync *s, uint64_t min) {
        if (s->m.generation < min)
                s->m.generation = min;
}

unsigned tpm_sync_sealed_count(const struct tpm_sync *s) {
        return s->sealed;
}

unsigned tpm_sync_recovered_count(const struct tpm_sync *s) {
        return s->recovered;
}

struct tpm_sync *tpm_sync_free(struct tpm_sync *s) {
        if (!s)
                return NULL;
        closep(&s->live_fd);
        closep(&s->state_fd);
        unwatch(s);
        closep(&s->inotify_fd);
        seal_manifest_clear(&s->m);
        free(s->live_path);
        free(s->state_path);
        erase(s, sizeof(*s));
        free(s);
        return NULL;
}
