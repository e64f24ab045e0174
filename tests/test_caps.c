#include "config.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tpmstate/caps.h"
#include "tests/helpers.h"

static char *dir, *state, *swtpm, *cache, *count;

/* A stand-in swtpm that counts its runs in dir/count. */
static char *fake_swtpm(const char *name, const char *features, int status) {
        char *text = NULL;

        cr_assert_geq(asprintf(&text,
                               "#!/bin/sh\necho run >>'%s'\n"
                               "echo '{ \"type\": \"swtpm\", \"features\": [ %s ], \"version\": \"0.7.1\" }'\nexit %d\n",
                               count, features, status),
                      0);
        char *path = test_write_file(dir, name, text, 0755);
        free(text);
        return path;
}

static void setup(void) {
        dir = test_mkdtemp();
        cr_assert_geq(asprintf(&state, "%s/state", dir), 0);
        cr_assert_geq(asprintf(&cache, "%s/swtpm-caps.cache", state), 0);
        cr_assert_geq(asprintf(&count, "%s/count", dir), 0);
        cr_assert_eq(mkdir(state, 0700), 0);
        swtpm = fake_swtpm("swtpm", "\"tpm-2.0\", \"cmdarg-seccomp\"", 0);
}
static void teardown(void) {
        test_rmtree(dir);
        free(dir);
        free(state);
        free(cache);
        free(count);
        free(swtpm);
}
TestSuite(caps, .init = setup, .fini = teardown);

static unsigned runs(void) {
        FILE *f = fopen(count, "re");
        unsigned n = 0;
        int c;

        if (!f)
                return 0;
        while ((c = fgetc(f)) != EOF)
                n += c == '\n';
        fclose(f);
        return n;
}

/* Probe through the cache; the capabilities must be swtpm's either way. */
static void probe(const char *program) {
        struct swtpm_caps caps = { 0 };
        vmsup_error *err = NULL;

        cr_assert_eq(swtpm_caps_probe_cached(program, state, &caps, &err), 0, "%s", err ? err->msg : "");
        cr_assert(swtpm_caps_has(&caps, "cmdarg-seccomp"));
        cr_assert(swtpm_caps_has(&caps, "tpm-2.0"));
        cr_assert_str_eq(caps.version, "0.7.1");
        swtpm_caps_clear(&caps);
}

static char *cache_text(void) {
        size_t len;
        uint8_t *data = test_read_file(cache, &len);
        char *text = calloc(1, len + 1);

        memcpy(text, data, len);
        free(data);
        return text;
}

Test(caps, probed_twice_runs_once) {
        struct stat st;

        probe(swtpm);
        probe(swtpm);
        cr_assert_eq(runs(), 1);
        cr_assert_eq(stat(cache, &st), 0);
        cr_assert_eq(st.st_mode & 07777, 0600);
        cr_assert_eq(st.st_uid, geteuid());
}

Test(caps, new_mtime_probes_again) {
        struct timespec ts[2] = { { .tv_nsec = UTIME_OMIT }, { 0 } };
        struct stat st;

        probe(swtpm);
        cr_assert_eq(stat(swtpm, &st), 0);
        ts[1] = st.st_mtim;
        ts[1].tv_sec += 10;
        cr_assert_eq(utimensat(AT_FDCWD, swtpm, ts, 0), 0);
        probe(swtpm);
        cr_assert_eq(runs(), 2);
        probe(swtpm);
        cr_assert_eq(runs(), 2);
}

Test(caps, another_binary_probes_again) {
        char *other = fake_swtpm("swtpm-other", "\"tpm-2.0\", \"cmdarg-seccomp\"", 0);

        probe(swtpm);
        probe(other);
        cr_assert_eq(runs(), 2);
        probe(other);
        cr_assert_eq(runs(), 2);
        free(other);
}

Test(caps, corrupt_cache_probes_again_and_is_rewritten) {
        char *text;

        probe(swtpm);
        free(test_write_file(state, "swtpm-caps.cache", "{ \"identity\": {", 0600));
        probe(swtpm);
        cr_assert_eq(runs(), 2);
        text = cache_text();
        cr_assert(strstr(text, "\"capabilities\""), "the cache was not rewritten: %s", text);
        free(text);
        probe(swtpm);
        cr_assert_eq(runs(), 2);
}

Test(caps, cache_with_other_capabilities_shape_probes_again) {
        char *text, *p;

        /* the identity matches, but "features" is not an array: not trusted */
        probe(swtpm);
        text = cache_text();
        p = strstr(text, "\"features\":[");
        cr_assert(p, "%s", text);
        memcpy(p, "\"featurez\"", strlen("\"featurez\""));
        free(test_write_file(state, "swtpm-caps.cache", text, 0600));
        free(text);
        probe(swtpm);
        cr_assert_eq(runs(), 2);
}

Test(caps, cache_of_another_uid_is_not_trusted) {
        struct stat st;

        probe(swtpm);
        cr_assert_eq(chown(cache, 65534, 65534), 0);
        probe(swtpm);
        cr_assert_eq(runs(), 2);
        cr_assert_eq(stat(cache, &st), 0);
        cr_assert_eq(st.st_uid, geteuid(), "the cache was not rewritten");
}

Test(caps, cache_writable_by_others_is_not_trusted) {
        struct stat st;

        probe(swtpm);
        cr_assert_eq(chmod(cache, 0666), 0);
        probe(swtpm);
        cr_assert_eq(runs(), 2);
        cr_assert_eq(stat(cache, &st), 0);
        cr_assert_eq(st.st_mode & 07777, 0600, "the cache was not rewritten");
        probe(swtpm);
        cr_assert_eq(runs(), 2);
}

Test(caps, symlinked_cache_is_not_followed) {
        char *target = test_write_file(dir, "elsewhere", "", 0600);

        probe(swtpm);
        cr_assert_eq(rename(cache, target), 0);
        cr_assert_eq(symlink(target, cache), 0);
        probe(swtpm);
        cr_assert_eq(runs(), 2);
        free(target);
}

Test(caps, no_cache_dir_still_probes) {
        struct swtpm_caps caps = { 0 };
        vmsup_error *err = NULL;

        cr_assert_eq(rmdir(state), 0);
        probe(swtpm);
        probe(swtpm);
        cr_assert_eq(runs(), 2);
        cr_assert_eq(swtpm_caps_probe_cached("/nonexistent/swtpm", dir, &caps, &err), -ENOENT);
        cr_assert(err && strstr(err->msg, "/nonexistent/swtpm"), "%s", err ? err->msg : "");
        vmsup_error_free(err);
}

Test(caps, old_binary_has_no_features_and_is_not_cached) {
        char *old = fake_swtpm("swtpm-old", "\"tpm-2.0\"", 1);
        struct swtpm_caps caps = { 0 };
        vmsup_error *err = NULL;

        for (int i = 0; i < 2; i++) {
                cr_assert_eq(swtpm_caps_probe_cached(old, state, &caps, &err), 0, "%s", err ? err->msg : "");
                cr_assert(!swtpm_caps_has(&caps, "tpm-2.0"));
                swtpm_caps_clear(&caps);
        }
        cr_assert_eq(runs(), 2);
        free(old);
}

Test(caps, bad_output_is_an_error_and_not_cached) {
        char *bad = test_write_file(dir, "swtpm-bad", "#!/bin/sh\necho run >>\"$0.count\"\necho 'not json'\n", 0755);
        struct swtpm_caps caps = { 0 };
        vmsup_error *err = NULL;
        struct stat st;

        cr_assert_lt(swtpm_caps_probe_cached(bad, state, &caps, &err), 0);
        cr_assert(err && strstr(err->msg, "not a JSON object"), "%s", err ? err->msg : "");
        vmsup_error_free(err);
        cr_assert_eq(stat(cache, &st), -1);
        free(bad);
}
