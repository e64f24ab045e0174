#include "config.h"

/* `vmsup tpm export` and `import`: see tpmexport.h for the file and the import's steps. */

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/fileio.h"
#include "common/secmem.h"
#include "common/util.h"
#include "crypto/seal.h"
#include "supervisor/tpmexport.h"
#include "tpmstate/blob.h"

#define EXPORT_FIRST_LINE "vmsup-tpm-export 1\n"
#define STAGE_NEW ".import.new"
#define STAGE_READY ".import.ready"
#define STAGE_LIST "files" /* in the stage: the names the import puts in place */
#define EXPORT_FILE_MAX (8u * 1024 * 1024) /* a VARS file is 128 KiB to 4 MiB */

static const char *base_name(const char *path) {
        const char *s = strrchr(path, '/');

        return s ? s + 1 : path;
}

static int open_dir(const char *path, vmsup_error **err) {
        int fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);

        if (fd < 0)
                return vmsup_fail(err, errno == ENOENT ? VMSUP_ERR_NOT_FOUND : VMSUP_ERR_IO, errno, "open '%s'", path);
        return fd;
}

/* Append "file <name> <len>\n<bytes>" of dirfd/name; a missing optional file is skipped. */
static int add_file(FILE *f, int dirfd, const char *dir, const char *name, bool optional, vmsup_error **err) {
        _cleanup_free_ void *data = NULL;
        size_t len = 0;
        int r;

        r = file_read_at(dirfd, dir, name, EXPORT_FILE_MAX, false, &data, &len, err);
        if (r == -ENOENT && optional) {
                *err = vmsup_error_free(*err);
                return 0;
        }
        if (r < 0)
                return r;
        fprintf(f, "file %s %zu\n", name, len);
        fwrite(data, 1, len, f);
        return 0;
}

int tpm_export_write(const struct guest_dirs *d, const char *uuid, const uint8_t *key, const char *path,
                     uint64_t *ret_generation, vmsup_error **err) {
        _cleanup_close_ int dfd = -1;
        _cleanup_free_ char *text = NULL;
        _cleanup_free_ uint8_t *sealed = NULL;
        struct seal_manifest m = { 0 };
        struct seal_dir sd;
        size_t size = 0, slen = 0;
        FILE *f;
        int r;

        dfd = open_dir(d->state, err);
        if (dfd < 0)
                return dfd;
        sd = (struct seal_dir) { .dirfd = dfd, .path = d->state, .key = key, .uuid = uuid };
        /* authenticated: the export says which generation it is, and it is this one */
        r = seal_manifest_load(&sd, &m, err);
        if (r < 0)
                return vmsup_error_prefix(err, "export the TPM state");
        if (m.generation == 0) {
                seal_manifest_clear(&m);
                return vmsup_fail(err, VMSUP_ERR_NOT_FOUND, ENOENT, "export the TPM state: '%s' holds no sealed TPM state",
                                  d->state);
        }
        f = open_memstream(&text, &size);
        if (!f) {
                seal_manifest_clear(&m);
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, errno, "export the TPM state");
        }
        fputs(EXPORT_FIRST_LINE, f);
        r = add_file(f, dfd, d->state, SEAL_MANIFEST_NAME SEAL_SUFFIX, false, err);
        for (size_t i = 0; r >= 0 && i < m.n; i++) {
                char name[SEAL_NAME_MAX + sizeof(SEAL_SUFFIX)];

                snprintf(name, sizeof(name), "%s" SEAL_SUFFIX, m.entries[i].name);
                r = add_file(f, dfd, d->state, name, false, err);
        }
        if (r >= 0)
                r = add_file(f, dfd, d->state, base_name(d->spec_copy), true, err);
        if (r >= 0)
                r = add_file(f, dfd, d->state, base_name(d->vars), true, err);
        if (fclose(f) != 0 && r >= 0)
                r = vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "export the TPM state");
        if (r >= 0)
                r = seal_buffer(key, uuid, TPM_EXPORT_NAME, m.generation, text, size, &sealed, &slen, err);
        if (r >= 0 && (r = write_file_atomic(path, sealed, slen, 0600, err)) < 0)
                vmsup_error_prefix(err, "export the TPM state");
        if (r >= 0)
                *ret_generation = m.generation;
        seal_manifest_clear(&m);
        return r;
}

struct entry {
        char name[SEAL_NAME_MAX + sizeof(SEAL_SUFFIX)];
        const uint8_t *data;
        size_t len;
};

/* The names an export may carry: sealed files, the spec copy, the VARS. */
static bool entry_name_ok(const struct guest_dirs *d, const char *name) {
        size_t n = strlen(name), s = strlen(SEAL_SUFFIX);

        if (streq(name, base_name(d->spec_copy)) || streq(name, base_name(d->vars)))
                return true;
        if (n <= s || !streq(name + n - s, SEAL_SUFFIX))
                return false;
        {
                char bare[SEAL_NAME_MAX + 1];

                if (n - s > SEAL_NAME_MAX)
                        return false;
                memcpy(bare, name, n - s);
                bare[n - s] = '\0';
                return seal_name_is_valid(bare);
        }
}

/* Authenticated plaintext: strict all the same. */
static int parse_export(const struct guest_dirs *d, const uint8_t *p, size_t len, struct entry *v, size_t max,
                        size_t *ret_n, vmsup_error **err) {
        size_t pos = strlen(EXPORT_FIRST_LINE), n = 0;

        if (len < pos || memcmp(p, EXPORT_FIRST_LINE, pos) != 0)
                return vmsup_fail(err, VMSUP_ERR_DATA, 0, "not a vmsup TPM export of version 1");
        while (pos < len) {
                const uint8_t *nl = memchr(p + pos, '\n', len - pos);
                char line[SEAL_NAME_MAX + 64], name[sizeof(line)];
                size_t ll = nl ? (size_t) (nl - (p + pos)) : 0, flen;
                int used = 0;

                if (!nl || ll >= sizeof(line) || n == max)
                        return vmsup_fail(err, VMSUP_ERR_DATA, 0, "TPM export: entry %zu is malformed", n + 1);
                memcpy(line, p + pos, ll);
                line[ll] = '\0';
                pos += ll + 1;
                if (sscanf(line, "file %s %zu%n", name, &flen, &used) != 2 || (size_t) used != ll ||
                    strlen(name) >= sizeof(v[n].name) || !entry_name_ok(d, name) || flen > len - pos)
                        return vmsup_fail(err, VMSUP_ERR_DATA, 0, "TPM export: entry %zu is malformed", n + 1);
                for (size_t i = 0; i < n; i++)
                        if (streq(v[i].name, name))
                                return vmsup_fail(err, VMSUP_ERR_DATA, 0, "TPM export: '%s' twice", name);
                snprintf(v[n].name, sizeof(v[n].name), "%s", name);
                v[n].data = p + pos;
                v[n].len = flen;
                pos += flen;
                n++;
        }
        *ret_n = n;
        return 0;
}

static int fsync_fd(int fd, const char *what, vmsup_error **err) {
        if (fsync(fd) < 0)
                return vmsup_fail(err, VMSUP_ERR_IO, errno, "sync '%s'", what);
        return 0;
}

/* Whether name is a line of list. */
static bool listed(const char *list, const char *name) {
        size_t n = strlen(name);

        for (const char *p = list; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL)
                if (strncmp(p, name, n) == 0 && p[n] == '\n')
                        return true;
        return false;
}

int tpm_import_finish(const struct guest_dirs *d, vmsup_error **err) {
        _cleanup_free_ char *new_path = NULL, *ready_path = NULL;
        _cleanup_free_ void *raw = NULL;
        _cleanup_free_ char *list = NULL;
        _cleanup_close_ int sfd = -1, rfd = -1;
        const char *manifest = SEAL_MANIFEST_NAME SEAL_SUFFIX;
        size_t len = 0;
        DIR *dir;
        struct dirent *de;
        int r;

        if (asprintf(&new_path, "%s/" STAGE_NEW, d->state) < 0 || asprintf(&ready_path, "%s/" STAGE_READY, d->state) < 0)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "import");
        if ((r = remove_tree(new_path, err)) < 0) /* never committed: as if it had not begun */
                return r;
        rfd = open(ready_path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (rfd < 0 && errno == ENOENT)
                return 0;
        if (rfd < 0)
                return vmsup_fail(err, VMSUP_ERR_IO, errno, "open '%s'", ready_path);
        sfd = open_dir(d->state, err);
        if (sfd < 0)
                return sfd;
        r = file_read_at(rfd, ready_path, STAGE_LIST, 64 * 1024, false, &raw, &len, err);
        if (r < 0)
                return vmsup_error_prefix(err, "complete the TPM state import in '%s'", ready_path);
        list = strndup(raw, len); /* lines, each ending in a newline (written so) */
        if (!list)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "import");
        /* the state files and the rest first, the manifest (the new generation) last */
        for (int pass = 0; pass < 2; pass++) {
                const char *p = list;

                while (p && *p) {
                        const char *nl = strchr(p, '\n');
                        char name[SEAL_NAME_MAX + sizeof(SEAL_SUFFIX)];
                        size_t n = nl ? (size_t) (nl - p) : strlen(p);

                        if (n > 0 && n < sizeof(name)) {
                                memcpy(name, p, n);
                                name[n] = '\0';
                                if ((pass == 1) == streq(name, manifest) &&
                                    renameat(rfd, name, sfd, name) < 0 && errno != ENOENT)
                                        return vmsup_fail(err, VMSUP_ERR_IO, errno, "complete the TPM state import: "
                                                          "move '%s/%s'", ready_path, name);
                        }
                        p = nl ? nl + 1 : NULL;
                }
                if ((r = fsync_fd(sfd, d->state, err)) < 0)
                        return r;
        }
        /* sealed files of the replaced state that the import does not have (a volatile
         * state): the manifest no longer records them; they go */
        dir = fdopendir(fcntl(sfd, F_DUPFD_CLOEXEC, 3));
        if (!dir)
                return vmsup_fail(err, VMSUP_ERR_IO, errno, "list '%s'", d->state);
        rewinddir(dir);
        while ((de = readdir(dir))) {
                size_t n = strlen(de->d_name), s = strlen(SEAL_SUFFIX);

                if (de->d_name[0] != '.' && n > s && streq(de->d_name + n - s, SEAL_SUFFIX) && !listed(list, de->d_name))
                        (void) unlinkat(sfd, de->d_name, 0);
        }
        closedir(dir);
        (void) unlinkat(rfd, STAGE_LIST, 0);
        closep(&rfd);
        if (rmdir(ready_path) < 0 && errno != ENOENT)
                return vmsup_fail(err, VMSUP_ERR_IO, errno, "remove '%s'", ready_path);
        return fsync_fd(sfd, d->state, err);
}

int tpm_import(const struct guest_dirs *d, const char *uuid, const uint8_t *key, enum tpm_version version,
               const void *data, size_t len, uint64_t anchor, bool allow_rollback, struct tpm_import_result *ret,
               vmsup_error **err) {
        _cleanup_secmem_ uint8_t *plain = NULL;
        _cleanup_free_ char *new_path = NULL, *ready_path = NULL, *list = NULL;
        _cleanup_close_ int sfd = -1, nfd = -1;
        struct entry v[8];
        struct tpm_blob_file blobs[3];
        uint8_t *state_plain[3] = { NULL };
        struct seal_manifest m = { 0 }, cur = { 0 };
        struct tpm_import_result res = { 0 };
        size_t plen = 0, n = 0, nblobs = 0, list_size = 0;
        vmsup_error *cerr = NULL;
        FILE *lf;
        int r;

        r = seal_open_buffer(key, uuid, TPM_EXPORT_NAME, data, len, &plain, &plen, &res.export_generation, err);
        if (r < 0)
                return vmsup_error_prefix(err, "import the TPM state");
        r = parse_export(d, plain, plen, v, ARRAY_SIZE(v), &n, err);
        if (r < 0)
                return r;

        if (asprintf(&new_path, "%s/" STAGE_NEW, d->state) < 0 || asprintf(&ready_path, "%s/" STAGE_READY, d->state) < 0)
                return vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "import");
        /* an earlier import a crash interrupted comes first */
        if ((r = tpm_import_finish(d, err)) < 0)
                return r;
        sfd = open_dir(d->state, err);
        if (sfd < 0)
                return sfd;
        if (mkdirat(sfd, STAGE_NEW, 0700) < 0)
                return vmsup_fail(err, VMSUP_ERR_IO, errno, "create '%s'", new_path);
        nfd = open_dir(new_path, err);
        if (nfd < 0)
                goto fail;
        lf = open_memstream(&list, &list_size);
        if (!lf) {
                r = vmsup_fail(err, VMSUP_ERR_SYSTEM, errno, "import");
                goto fail;
        }
        for (size_t i = 0; i < n && r >= 0; i++) {
                r = file_write_atomic_at(nfd, new_path, v[i].name, v[i].data, v[i].len, 0600, err);
                fprintf(lf, "%s\n", v[i].name);
        }
        fclose(lf);
        if (r < 0 || !list)
                goto fail;

        /* the export's own state, checked as a start checks it: its manifest, every file
         * it records, and libtpms taking them */
        {
                struct seal_dir nd = { .dirfd = nfd, .path = new_path, .key = key, .uuid = uuid };

                r = seal_manifest_load(&nd, &m, err);
                if (r >= 0 && m.generation != res.export_generation)
                        r = vmsup_fail(err, VMSUP_ERR_DATA, 0,
                                       "import the TPM state: the export says generation %" PRIu64
                                       " but holds a manifest of generation %" PRIu64,
                                       res.export_generation, m.generation);
                for (size_t i = 0; r >= 0 && i < m.n; i++) {
                        int kind = tpm_blob_kind_of(version, m.entries[i].name);
                        size_t slen = 0;

                        if (kind <= 0 || nblobs == ARRAY_SIZE(blobs)) {
                                r = vmsup_fail(err, VMSUP_ERR_DATA, 0,
                                               "import the TPM state: '%s' is not a state file of a TPM %s",
                                               m.entries[i].name, tpm_version_to_string(version));
                                break;
                        }
                        r = seal_state_read(&nd, &m, m.entries[i].name, &state_plain[nblobs], &slen, err);
                        if (r >= 0) {
                                blobs[nblobs] = (struct tpm_blob_file) { .name = m.entries[i].name,
                                                                         .kind = (enum tpm_blob_kind) kind,
                                                                         .data = state_plain[nblobs], .len = slen };
                                nblobs++;
                        }
                }
                if (r >= 0 && nblobs == 0)
                        r = vmsup_fail(err, VMSUP_ERR_DATA, 0, "import the TPM state: the export holds no TPM state");
                if (r >= 0 && (r = tpm_blob_validate(version, blobs, nblobs, err)) < 0)
                        vmsup_error_prefix(err, "import the TPM state: the exported state would not load");
                for (size_t i = 0; i < ARRAY_SIZE(state_plain); i++)
                        state_plain[i] = secmem_free(state_plain[i]);
                if (r < 0)
                        goto fail;

                /* The newest the guest had: its state's (when it opens) or the anchor's. */
                {
                        struct seal_dir cd = { .dirfd = sfd, .path = d->state, .key = key, .uuid = uuid };

                        if (seal_manifest_load(&cd, &cur, &cerr) < 0)
                                cerr = vmsup_error_free(cerr);
                }
                res.current = cur.generation > anchor ? cur.generation : anchor;
                res.rollback = res.export_generation < res.current;
                if (res.rollback && !allow_rollback) {
                        r = vmsup_fail(err, VMSUP_ERR_DATA, 0,
                                       "the export is generation %" PRIu64 " of the TPM state, older than generation %" PRIu64
                                       " the guest has had: importing it rolls its TPM back (NV counters go back); "
                                       "nothing was changed; to do so on purpose: --allow-rollback",
                                       res.export_generation, res.current);
                        goto fail;
                }
                /* sealed again above everything before: the anchor goes up, never back */
                if (m.generation < res.current)
                        m.generation = res.current;
                r = seal_manifest_store(&nd, &m, err);
                if (r < 0)
                        goto fail;
                res.generation = m.generation;
        }
        r = file_write_atomic_at(nfd, new_path, STAGE_LIST, list, list_size, 0600, err);
        if (r < 0 || (r = fsync_fd(nfd, new_path, err)) < 0)
                goto fail;
        /* the commit */
        if (renameat(sfd, STAGE_NEW, sfd, STAGE_READY) < 0) {
                r = vmsup_fail(err, VMSUP_ERR_IO, errno, "rename '%s' to '%s'", new_path, ready_path);
                goto fail;
        }
        if ((r = fsync_fd(sfd, d->state, err)) < 0)
                return r; /* committed: the next start or import completes it */
        seal_manifest_clear(&m);
        seal_manifest_clear(&cur);
        r = tpm_import_finish(d, err);
        if (r < 0)
                return r;
        *ret = res;
        return 0;
fail:
        seal_manifest_clear(&m);
        seal_manifest_clear(&cur);
        for (size_t i = 0; i < ARRAY_SIZE(state_plain); i++)
                secmem_free(state_plain[i]);
        {
                vmsup_error *rerr = NULL;

                if (remove_tree(new_path, &rerr) < 0)
                        vmsup_error_free(rerr);
        }
        return r < 0 ? r : -EIO;
}

/* ---- the export of a running guest, on the supervisor's loop ---- */

#include "common/log.h"
#include "supervisor/guest_internal.h"

struct export_req {
        struct guest *g;
        struct control_conn *c;
        char *path;
        bool keep_paused;
        uint64_t generation;
};

static void export_req_end(struct export_req *x, const vmsup_error *err, bool paused) {
        if (x->g->export_req == x)
                x->g->export_req = NULL;
        if (err)
                control_conn_reply_error(x->c, err->kind ? err->kind : VMSUP_ERR_FAILED, err->msg);
        else {
                json_object *o = json_object_new_object();

                json_object_object_add(o, "generation", json_object_new_int64((int64_t) x->generation));
                json_object_object_add(o, "paused", json_object_new_boolean(paused));
                control_conn_reply_ok(x->c, o);
        }
        control_conn_free(x->c);
        free(x->path);
        free(x);
}

static void on_export_resumed(void *userdata, json_object *ret, const vmsup_error *qerr) {
        struct export_req *x = userdata;
        vmsup_error *err = NULL;

        (void) ret;
        if (qerr) {
                vmsup_fail(&err, qerr->kind ? qerr->kind : VMSUP_ERR_FAILED, 0,
                           "TPM state exported to '%s' (generation %" PRIu64 "), but the guest stays paused: cont: %s",
                           x->path, x->generation, qerr->msg);
                log_error("%s", err->msg);
        } else
                log_info("TPM state exported to %s (generation %" PRIu64 "); the guest runs again", x->path,
                         x->generation);
        export_req_end(x, err, qerr != NULL);
        vmsup_error_free(err);
}

static void on_resumed_after_failure(void *userdata, json_object *ret, const vmsup_error *qerr) {
        (void) userdata;
        (void) ret;
        if (qerr)
                log_error("the guest stays paused: cont: %s", qerr->msg);
}

static void on_export_paused(void *userdata, json_object *ret, const vmsup_error *qerr) {
        struct export_req *x = userdata;
        struct guest *g = x->g;
        vmsup_error *err = NULL;
        int r;

        (void) ret;
        if (qerr) {
                export_req_end(x, qerr, false);
                return;
        }
        /* paused: the TPM takes no command, so what swtpm wrote last is its state; seal
         * what is not sealed yet, then the anchor follows as after any seal */
        guest_fd_reserve_release(g);
        r = tpm_sync_seal_all(g->sync, &err);
        guest_fd_reserve_fill(g);
        if (r >= 0) {
                guest_anchor_catch_up(g, GUEST_ANCHOR_SEAL);
                r = tpm_export_write(&g->dirs, g->spec.uuid, g->seal_key, x->path, &x->generation, &err);
        }
        if (r >= 0 && x->keep_paused) {
                log_info("TPM state exported to %s (generation %" PRIu64 "); the guest stays paused (--keep-paused) "
                         "until 'vmsup resume'", x->path, x->generation);
                export_req_end(x, NULL, true);
                return;
        }
        if (r < 0) {
                /* no export: the guest goes on at once all the same */
                log_error("%s", err->msg);
                export_req_end(x, err, false);
                vmsup_error_free(err);
                err = NULL;
                if (qmp_client_execute_async(g->qmp, "cont", NULL, -1, QMP_COMMAND_TIMEOUT, on_resumed_after_failure,
                                             NULL, &err) < 0) {
                        log_error("the guest stays paused: cont: %s", err->msg);
                        vmsup_error_free(err);
                }
                guest_qmp_watch(g);
                return;
        }
        if (qmp_client_execute_async(g->qmp, "cont", NULL, -1, QMP_COMMAND_TIMEOUT, on_export_resumed, x, &err) < 0) {
                on_export_resumed(x, NULL, err);
                vmsup_error_free(err);
                return;
        }
        guest_qmp_watch(g);
}

void guest_tpm_export_request(struct guest *g, struct control_conn *c) {
        struct export_req *x;
        vmsup_error *err = NULL;
        json_object *v;
        const char *path = json_object_object_get_ex(c->request, "path", &v) ? json_object_get_string(v) : NULL;

        if (!path || path[0] != '/') {
                control_conn_reply_error(c, VMSUP_ERR_USAGE, "tpm-export: 'path' must be an absolute path");
                control_conn_free(c);
                return;
        }
        if (!g->sync || !g->seal_key) {
                control_conn_reply_error(c, VMSUP_ERR_DATA, "tpm-export: the guest has no vTPM");
                control_conn_free(c);
                return;
        }
        if (!g->qmp || g->state != GUEST_RUNNING) {
                control_conn_reply_error(c, VMSUP_ERR_BUSY, "tpm-export: the guest is not running (a stopped guest's "
                                                            "state is exported without its supervisor)");
                control_conn_free(c);
                return;
        }
        if (g->export_req) {
                control_conn_reply_error(c, VMSUP_ERR_BUSY, "tpm-export: another export of this guest is under way");
                control_conn_free(c);
                return;
        }
        x = calloc(1, sizeof(*x));
        if (!x || !(x->path = strdup(path))) {
                free(x);
                control_conn_reply_error(c, VMSUP_ERR_SYSTEM, "tpm-export: out of memory");
                control_conn_free(c);
                return;
        }
        x->g = g;
        x->c = c;
        x->keep_paused = json_object_object_get_ex(c->request, "keep_paused", &v) && json_object_get_boolean(v);
        log_info("TPM state export to %s: pausing the guest", path);
        g->export_req = x;
        if (qmp_client_execute_async(g->qmp, "stop", NULL, -1, QMP_COMMAND_TIMEOUT, on_export_paused, x, &err) < 0) {
                export_req_end(x, err, false);
                vmsup_error_free(err);
                return;
        }
        guest_qmp_watch(g);
}

void guest_tpm_export_qmp_dropped(struct guest *g) {
        vmsup_error *err = NULL;

        if (!g->export_req)
                return;
        /* its pending QMP command goes with the connection, never to call back */
        vmsup_fail(&err, VMSUP_ERR_FAILED, 0, "tpm-export: QEMU's monitor closed during the export (to '%s')",
                   g->export_req->path);
        log_error("%s", err->msg);
        export_req_end(g->export_req, err, false);
        vmsup_error_free(err);
}
