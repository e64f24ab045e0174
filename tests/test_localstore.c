#include "config.h"

#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/secmem.h"
#include "common/util.h"
#include "secrets/localstore.h"
#include "tests/helpers.h"

#define GUEST "0b7c6e4a-3f0e-4d5c-9a1b-2c3d4e5f6a7b"
#define GUEST2 "1b7c6e4a-3f0e-4d5c-9a1b-2c3d4e5f6a7b"
#define SECRET_ID "5a1d2c3b-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
#define NOBODY 65534

static char *tmp, *store;
static char pass[513];

static void setup(void) {
        static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

        tmp = test_mkdtemp();
        cr_assert(asprintf(&store, "%s/secrets", tmp) > 0);
        /* not periodic in a short window, so that a leak of any slice is recognisable */
        for (int i = 0; i < 512; i++)
                pass[i] = b64[(i * 7 + i / 64) % 64];
        pass[512] = '\0';
}
static void teardown(void) {
        test_rmtree(tmp);
        free(tmp);
        free(store);
}
TestSuite(localstore, .init = setup, .fini = teardown);

static struct localstore *open_ok(void) {
        struct localstore *s = NULL;
        vmsup_error *err = NULL;

        cr_assert_eq(localstore_open(store, true, &s, &err), 0, "%s", err ? err->msg : "");
        return s;
}

static struct localstore *open_with_secret(void) {
        struct localstore *s = open_ok();
        vmsup_error *err = NULL;

        cr_assert_eq(localstore_put(s, GUEST, pass, SECRET_ID, &err), 0, "%s", err ? err->msg : "");
        return s;
}

static char *file_path(const char *dir, const char *name) {
        char *p;

        cr_assert(asprintf(&p, "%s/%s", dir, name) > 0);
        return p;
}

static char *slurp(const char *path) {
        FILE *f = fopen(path, "re");
        char *buf = calloc(1, 8192);

        cr_assert(f, "open %s", path);
        cr_assert(fread(buf, 1, 8191, f) < 8191);
        fclose(f);
        return buf;
}

static size_t count_entries(const char *dir) {
        DIR *d = opendir(dir);
        struct dirent *de;
        size_t n = 0;

        cr_assert(d);
        while ((de = readdir(d)))
                if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
                        n++;
        closedir(d);
        return n;
}

/* What a refused operation must leave alone: the file's bytes, inode, mtime, and the
 * directory's entries. */
struct snapshot {
        char *content;
        struct stat st;
        size_t entries;
};
static void snap(struct snapshot *sn, const char *dir, const char *file) {
        cr_assert_eq(lstat(file, &sn->st), 0);
        sn->content = S_ISREG(sn->st.st_mode) ? slurp(file) : NULL;
        sn->entries = count_entries(dir);
}
static void snap_unchanged(struct snapshot *sn, const char *dir, const char *file) {
        struct stat st;

        cr_assert_eq(lstat(file, &st), 0);
        cr_assert_eq(st.st_ino, sn->st.st_ino);
        cr_assert_eq(st.st_mtim.tv_sec, sn->st.st_mtim.tv_sec);
        cr_assert_eq(st.st_mtim.tv_nsec, sn->st.st_mtim.tv_nsec);
        cr_assert_eq(st.st_mode, sn->st.st_mode);
        if (sn->content) {
                char *now = slurp(file);

                cr_assert_str_eq(now, sn->content);
                free(now);
                free(sn->content);
        }
        cr_assert_eq(count_entries(dir), sn->entries);
}

/* A get that must be refused with exit code ex and a message containing want, and no
 * passphrase handed out or mentioned. */
static void get_refused(struct localstore *s, int ex, const char *want) {
        vmsup_error *err = NULL;
        char *p = NULL, id[37] = "";

        cr_assert_lt(localstore_get(s, GUEST, &p, id, &err), 0);
        cr_assert_not_null(err);
        cr_assert(strstr(err->msg, want), "expected '%s' in: %s", want, err->msg);
        cr_assert_eq(err->exit_code, ex, "exit %d: %s", err->exit_code, err->msg);
        cr_assert(!strstr(err->msg, "ABCD") && !strstr(err->msg, "passphrase="), "%s", err->msg);
        cr_assert_null(p);
        cr_assert_str_eq(id, "");
        vmsup_error_free(err);
}

static void open_refused(bool create, int ex, const char *want) {
        struct localstore *s = NULL;
        vmsup_error *err = NULL;

        cr_assert_lt(localstore_open(store, create, &s, &err), 0);
        cr_assert_null(s);
        cr_assert(strstr(err->msg, want), "expected '%s' in: %s", want, err->msg);
        cr_assert_eq(err->exit_code, ex, "exit %d: %s", err->exit_code, err->msg);
        vmsup_error_free(err);
}

Test(localstore, put_get_round_trip) {
        struct localstore *s = open_with_secret();
        vmsup_error *err = NULL;
        char *p = NULL, id[37], *f = file_path(store, GUEST), *content, *want;
        struct stat st;

        cr_assert_eq(stat(store, &st), 0);
        cr_assert_eq(st.st_mode & 07777, 0700);
        cr_assert_eq(stat(f, &st), 0);
        cr_assert_eq(st.st_mode & 07777, 0600);
        content = slurp(f);
        cr_assert(asprintf(&want, "secret_id=%s\npassphrase=%s\n", SECRET_ID, pass) > 0);
        cr_assert_str_eq(content, want);

        cr_assert_eq(localstore_get(s, GUEST, &p, id, &err), 1, "%s", err ? err->msg : "");
        cr_assert_str_eq(p, pass);
        cr_assert_str_eq(id, SECRET_ID);
        cr_assert_eq(secmem_size(p), 513);
        secmem_free(p);

        /* replace */
        pass[0] = 'z';
        cr_assert_eq(localstore_put(s, GUEST, pass, SECRET_ID, &err), 0);
        cr_assert_eq(localstore_get(s, GUEST, &p, id, &err), 1);
        cr_assert_str_eq(p, pass);
        secmem_free(p);
        cr_assert_eq(count_entries(store), 1, "no temp file left");
        free(content);
        free(want);
        free(f);
        localstore_free(s);
}

Test(localstore, get_missing_guest) {
        struct localstore *s = open_ok();
        vmsup_error *err = NULL;
        char *p = NULL, id[37] = "";

        cr_assert_eq(localstore_get(s, GUEST, &p, id, &err), 0);
        cr_assert_null(p);
        cr_assert_null(err);
        localstore_free(s);
}

Test(localstore, delete_is_idempotent) {
        struct localstore *s = open_with_secret();
        vmsup_error *err = NULL;
        char *p = NULL, id[37];

        cr_assert_eq(localstore_delete(s, GUEST, &err), 1);
        cr_assert_eq(localstore_delete(s, GUEST, &err), 0);
        cr_assert_null(err);
        cr_assert_eq(localstore_get(s, GUEST, &p, id, &err), 0);
        cr_assert_eq(count_entries(store), 0);
        localstore_free(s);
}

Test(localstore, create_makes_parents) {
        struct localstore *s = NULL;
        vmsup_error *err = NULL;
        char *deep = file_path(tmp, "a/b/secrets");
        struct stat st;

        cr_assert_eq(localstore_open(deep, true, &s, &err), 0, "%s", err ? err->msg : "");
        cr_assert_eq(stat(deep, &st), 0);
        cr_assert_eq(st.st_mode & 07777, 0700);
        cr_assert_eq(stat(tmp, &st), 0);
        free(deep);
        deep = file_path(tmp, "a/b");
        cr_assert_eq(stat(deep, &st), 0);
        cr_assert_eq(st.st_mode & 07777, 0755);
        free(deep);
        deep = file_path(tmp, "a/b/secrets");
        cr_assert_str_eq(localstore_path(s), deep);
        localstore_free(s);

        /* a trailing slash still makes the store itself 0700 */
        free(deep);
        deep = file_path(tmp, "c/secrets/");
        cr_assert_eq(localstore_open(deep, true, &s, &err), 0, "%s", err ? err->msg : "");
        cr_assert_eq(stat(deep, &st), 0);
        cr_assert_eq(st.st_mode & 07777, 0700);
        free(deep);
        localstore_free(s);
}

Test(localstore, missing_store_without_create) {
        struct localstore *s = NULL;
        vmsup_error *err = NULL;

        cr_assert_eq(localstore_open(store, false, &s, &err), -ENOENT);
        cr_assert_eq(err->exit_code, 66);
        cr_assert_eq(access(store, F_OK), -1, "not created");
        vmsup_error_free(err);
}

Test(localstore, refuses_dir_of_another_owner) {
        char *f;
        struct snapshot sn;

        localstore_free(open_with_secret());
        f = file_path(store, GUEST);
        cr_assert_eq(chown(store, NOBODY, NOBODY), 0);
        snap(&sn, store, f);
        open_refused(false, 77, "local secret store '");
        open_refused(true, 77, "': owned by uid 65534, not root");
        snap_unchanged(&sn, store, f);
        free(f);
}

Test(localstore, refuses_group_or_world_accessible_dir) {
        char *msg;

        cr_assert_eq(mkdir(store, 0700), 0);
        cr_assert_eq(chmod(store, 0750), 0);
        cr_assert(asprintf(&msg, "local secret store '%s': mode 0750 gives the group access; it must be 0700", store) > 0);
        open_refused(true, 77, msg);
        free(msg);
        cr_assert_eq(chmod(store, 0701), 0);
        open_refused(true, 77, "mode 0701 gives other users access; it must be 0700");
        cr_assert_eq(count_entries(store), 0);
}

Test(localstore, refuses_symlinked_dir) {
        char *real = file_path(tmp, "real"), *msg;
        struct snapshot sn;

        cr_assert_eq(mkdir(real, 0700), 0);
        cr_assert_eq(symlink(real, store), 0);
        snap(&sn, tmp, store);
        cr_assert(asprintf(&msg, "local secret store '%s': is a symbolic link", store) > 0);
        open_refused(false, 77, msg);
        open_refused(true, 77, msg);
        snap_unchanged(&sn, tmp, store);
        cr_assert_eq(count_entries(real), 0);
        free(msg);
        free(real);
}

Test(localstore, refuses_world_readable_file) {
        struct localstore *s = open_with_secret();
        char *f = file_path(store, GUEST), *msg;
        struct snapshot sn;

        cr_assert_eq(chmod(f, 0644), 0);
        snap(&sn, store, f);
        cr_assert(asprintf(&msg, "'%s': mode 0644 gives the group and other users access; it must be 0600", f) > 0);
        get_refused(s, 77, msg);
        snap_unchanged(&sn, store, f);
        cr_assert_eq(chmod(f, 0640), 0);
        snap(&sn, store, f);
        get_refused(s, 77, "mode 0640 gives the group access; it must be 0600");
        snap_unchanged(&sn, store, f);
        free(msg);
        free(f);
        localstore_free(s);
}

Test(localstore, refuses_file_of_another_owner) {
        struct localstore *s = open_with_secret();
        char *f = file_path(store, GUEST);
        struct snapshot sn;

        cr_assert_eq(chown(f, NOBODY, NOBODY), 0);
        snap(&sn, store, f);
        get_refused(s, 77, "': owned by uid 65534, not root");
        snap_unchanged(&sn, store, f);
        free(f);
        localstore_free(s);
}

Test(localstore, refuses_symlinked_file) {
        struct localstore *s = open_ok();
        char *elsewhere = file_path(tmp, "elsewhere"), *f = file_path(store, GUEST), *content, *msg;
        struct snapshot sn, target;

        cr_assert(asprintf(&content, "secret_id=%s\npassphrase=%s\n", SECRET_ID, pass) > 0);
        free(test_write_file(tmp, "elsewhere", content, 0600));
        cr_assert_eq(symlink(elsewhere, f), 0);
        snap(&sn, store, f);
        snap(&target, tmp, elsewhere);
        cr_assert(asprintf(&msg, "local secret store: '%s': is a symbolic link", f) > 0);
        get_refused(s, 77, msg);
        snap_unchanged(&sn, store, f);
        snap_unchanged(&target, tmp, elsewhere);
        free(msg);
        free(content);
        free(elsewhere);
        free(f);
        localstore_free(s);
}

/* The store renamed away after open and something else put at its path: every operation
 * is refused, and neither directory gains or loses a file. */
static void swapped(bool with_symlink) {
        struct localstore *s = open_with_secret();
        char *moved = file_path(tmp, "moved"), *content, *f = file_path(store, GUEST), *g2 = file_path(store, GUEST2);
        vmsup_error *err = NULL;
        struct snapshot sn_new, sn_old;

        cr_assert_eq(rename(store, moved), 0);
        if (with_symlink) {
                cr_assert_eq(symlink(moved, store), 0);
        } else {
                cr_assert_eq(mkdir(store, 0700), 0);
                cr_assert(asprintf(&content, "secret_id=%s\npassphrase=%s\n", SECRET_ID, pass) > 0);
                free(test_write_file(store, GUEST, content, 0600));
                free(content);
        }
        snap(&sn_new, store, f);
        {
                char *old_f = file_path(moved, GUEST);

                snap(&sn_old, moved, old_f);
                get_refused(s, 77, with_symlink ? "is a symbolic link" : "replaced by another directory since it was opened");
                cr_assert_lt(localstore_put(s, GUEST2, pass, SECRET_ID, &err), 0);
                cr_assert_eq(err->exit_code, 77);
                vmsup_error_free(err);
                err = NULL;
                cr_assert_lt(localstore_delete(s, GUEST, &err), 0);
                vmsup_error_free(err);
                snap_unchanged(&sn_old, moved, old_f);
                free(old_f);
        }
        snap_unchanged(&sn_new, store, f);
        free(moved);
        free(f);
        free(g2);
        localstore_free(s);
}

Test(localstore, refuses_dir_swapped_for_another_dir) {
        swapped(false);
}

Test(localstore, refuses_dir_swapped_for_symlink) {
        swapped(true);
}

Test(localstore, refuses_dir_moved_away) {
        struct localstore *s = open_with_secret();
        char *moved = file_path(tmp, "moved");

        cr_assert_eq(rename(store, moved), 0);
        get_refused(s, 77, "moved or removed since it was opened");
        free(moved);
        localstore_free(s);
}

Test(localstore, refuses_dir_chmod_after_open) {
        struct localstore *s = open_with_secret();

        cr_assert_eq(chmod(store, 0755), 0);
        get_refused(s, 77, "mode 0755 gives the group and other users access; it must be 0700");
        localstore_free(s);
}

Test(localstore, refuses_fifo_and_directory_without_hanging) {
        struct localstore *s = open_ok();
        char *f = file_path(store, GUEST), *msg;

        cr_assert(asprintf(&msg, "local secret store: '%s': is not a regular file", f) > 0);
        cr_assert_eq(mkfifo(f, 0600), 0);
        get_refused(s, 77, msg);
        cr_assert_eq(unlink(f), 0);
        cr_assert_eq(mkdir(f, 0700), 0);
        get_refused(s, 77, msg);
        free(msg);
        free(f);
        localstore_free(s);
}

static void bad_value(const char *content) {
        struct localstore *s = open_ok();
        char *f = test_write_file(store, GUEST, content, 0600), *msg;
        struct snapshot sn;

        snap(&sn, store, f);
        cr_assert(asprintf(&msg, "local secret store: '%s': not a vTPM passphrase", f) > 0);
        get_refused(s, 65, msg);
        snap_unchanged(&sn, store, f);
        free(msg);
        free(f);
        localstore_free(s);
}

Test(localstore, refuses_short_passphrase) {
        char *c;

        cr_assert(asprintf(&c, "secret_id=%s\npassphrase=%.511s\n", SECRET_ID, pass) > 0);
        bad_value(c);
        free(c);
}

Test(localstore, refuses_long_passphrase) {
        char *c;

        cr_assert(asprintf(&c, "secret_id=%s\npassphrase=%sA\n", SECRET_ID, pass) > 0);
        bad_value(c);
        free(c);
}

Test(localstore, refuses_bad_alphabet) {
        char *c;

        pass[100] = '-';
        cr_assert(asprintf(&c, "secret_id=%s\npassphrase=%s\n", SECRET_ID, pass) > 0);
        bad_value(c);
        free(c);
}

Test(localstore, refuses_bad_secret_id) {
        char *c;

        cr_assert(asprintf(&c, "secret_id=%s\npassphrase=%s\n", "5a1d2c3b-4e5f-4a6b-8c7d-9e0f1a2b3cXY", pass) > 0);
        bad_value(c);
        free(c);
}

Test(localstore, refuses_oversized_file) {
        struct localstore *s = open_ok();
        char *big = malloc(5001);

        memset(big, 'A', 5000);
        big[5000] = '\0';
        free(test_write_file(store, GUEST, big, 0600));
        get_refused(s, 65, "5000 bytes, more than the 4096");
        free(big);
        localstore_free(s);
}

Test(localstore, put_checks_its_input) {
        struct localstore *s = open_ok();
        vmsup_error *err = NULL;

        pass[5] = '=';
        cr_assert_lt(localstore_put(s, GUEST, pass, SECRET_ID, &err), 0);
        cr_assert(strstr(err->msg, "not a vTPM passphrase"), "%s", err->msg);
        cr_assert(!strstr(err->msg, "ABC"), "%s", err->msg);
        vmsup_error_free(err);
        err = NULL;
        pass[5] = 'A';
        cr_assert_lt(localstore_put(s, GUEST, pass, "nope", &err), 0);
        cr_assert(strstr(err->msg, "'nope' is not a Barbican secret id"), "%s", err->msg);
        vmsup_error_free(err);
        err = NULL;
        cr_assert_lt(localstore_put(s, "../escape", pass, SECRET_ID, &err), 0);
        cr_assert(strstr(err->msg, "'../escape' is not a guest UUID"), "%s", err->msg);
        vmsup_error_free(err);
        cr_assert_eq(count_entries(store), 0);
        cr_assert_eq(count_entries(tmp), 1);
        localstore_free(s);
}

Test(localstore, list_shows_ids_only) {
        struct localstore *s = open_with_secret();
        struct localstore_entry *v = NULL;
        vmsup_error *err = NULL;
        size_t n = 0;

        cr_assert_eq(localstore_put(s, GUEST2, pass, "6a1d2c3b-4e5f-4a6b-8c7d-9e0f1a2b3c4d", &err), 0);
        free(test_write_file(store, ".x.tmp-1234", "junk", 0600));
        cr_assert_eq(localstore_list(s, &v, &n, &err), 0, "%s", err ? err->msg : "");
        cr_assert_eq(n, 2);
        cr_assert_str_eq(v[0].uuid, GUEST);
        cr_assert_str_eq(v[0].secret_id, SECRET_ID);
        cr_assert_str_eq(v[1].uuid, GUEST2);
        cr_assert_str_eq(v[1].secret_id, "6a1d2c3b-4e5f-4a6b-8c7d-9e0f1a2b3c4d");
        free(v);

        /* an insecure file fails the whole list */
        cr_assert_eq(chmod(store, 0700), 0);
        {
                char *f = file_path(store, GUEST2);

                cr_assert_eq(chmod(f, 0604), 0);
                cr_assert_lt(localstore_list(s, &v, &n, &err), 0);
                cr_assert(strstr(err->msg, "mode 0604 gives other users access"), "%s", err->msg);
                vmsup_error_free(err);
                free(f);
        }
        localstore_free(s);
}

static char *write_conf(const char *secrets_dir) {
        return test_write_conf(tmp, "vmsup.conf",
                               &(struct test_conf) { .secrets_dir = secrets_dir, .swtpm_off = true, .mode = 0644 });
}

Test(localstore, cli_secret_list) {
        struct localstore *s = open_with_secret();
        char *conf = write_conf(store), *want;
        struct test_run r;

        localstore_free(s);
        test_run_vmsup(&r, NULL, (const char *[]) { "--config", conf, "secret", "list", NULL });
        cr_assert_eq(r.exit_code, 0, "%s", r.err);
        cr_assert(asprintf(&want, "%s  %s\n", GUEST, SECRET_ID) > 0);
        cr_assert_str_eq(r.out, want);
        cr_assert(!strstr(r.out, "ABCD") && !strstr(r.err, "ABCD") && !memmem(r.out, strlen(r.out), pass, 16));
        test_run_clear(&r);

        test_run_vmsup(&r, NULL, (const char *[]) { "--config", conf, "secret", "list", "--json", NULL });
        cr_assert_eq(r.exit_code, 0, "%s", r.err);
        {
                json_object *a = json_tokener_parse(r.out), *o, *v;

                cr_assert(a && json_object_is_type(a, json_type_array) && json_object_array_length(a) == 1, "%s", r.out);
                o = json_object_array_get_idx(a, 0);
                cr_assert(json_object_object_get_ex(o, "uuid", &v) && streq(json_object_get_string(v), GUEST));
                cr_assert(json_object_object_get_ex(o, "secret_id", &v) && streq(json_object_get_string(v), SECRET_ID));
                cr_assert_eq(json_object_object_length(o), 2);
                json_object_put(a);
        }
        cr_assert(!strstr(r.out, "passphrase") && !memmem(r.out, strlen(r.out), pass, 16));
        test_run_clear(&r);

        cr_assert_eq(chmod(store, 0755), 0);
        test_run_vmsup(&r, NULL, (const char *[]) { "--config", conf, "secret", "list", NULL });
        cr_assert_eq(r.exit_code, 77);
        cr_assert(strstr(r.err, "mode 0755 gives the group and other users access; it must be 0700"), "%s", r.err);
        cr_assert_str_eq(r.out, "");
        test_run_clear(&r);

        test_run_vmsup(&r, NULL, (const char *[]) { "--config", conf, "secret", "show", NULL });
        cr_assert_eq(r.exit_code, 64);
        test_run_clear(&r);
        free(want);
        free(conf);
}

Test(localstore, cli_secret_list_empty_store) {
        char *conf = write_conf(store);
        struct test_run r;

        test_run_vmsup(&r, NULL, (const char *[]) { "--config", conf, "secret", "list", NULL });
        cr_assert_eq(r.exit_code, 0, "%s", r.err);
        cr_assert_str_eq(r.out, "");
        cr_assert_eq(access(store, F_OK), -1, "listing creates nothing");
        test_run_clear(&r);
        free(conf);
}
