/* secrets/vtpmsecret: where a guest's vTPM passphrase comes from, per mode, with its own
 * options (no host config), against the real Barbican. The owner's token fd is the
 * caller's: whatever the outcome, it is read and still open afterwards. */
#include "config.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/secmem.h"
#include "common/util.h"
#include "secrets/localstore.h"
#include "secrets/vtpmsecret.h"
#include "tests/barbican_fixture.h"
#include "tests/helpers.h"

#define GUEST "6f1c1b8e-0d6a-4c55-8a3e-2b9d7c4e5f60"

static char *root, *state_dir, *secrets_dir, project[64];

static void setup(void) {
        root = test_mkdtemp();
        cr_assert(asprintf(&state_dir, "%s/state", root) > 0);
        cr_assert(asprintf(&secrets_dir, "%s/secrets", root) > 0);
        cr_assert_eq(mkdir(state_dir, 0700), 0);
        snprintf(project, sizeof(project), "project-vtpmsecret-%d-%ld", (int) getpid(), (long) time(NULL));
}

static void teardown(void) {
        free(state_dir);
        free(secrets_dir);
        test_rmtree(root);
        free(root);
}

TestSuite(vtpmsecret, .init = setup, .fini = teardown, .timeout = 120);

static struct vtpm_secret_opts opts_for(const char *barbican_url) {
        return (struct vtpm_secret_opts) {
                .barbican = { .auth = BARBICAN_AUTH_NOAUTH, .endpoint = barbican_url, .connect_timeout_ms = 2000,
                              .timeout_ms = 20000, .attempts = 1 },
                .secrets_dir = secrets_dir,
        };
}

/* The read end of a pipe that holds text and is closed for writing. */
static int token_pipe(const char *text) {
        int p[2];

        cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
        cr_assert_eq(write(p[1], text, strlen(text)), (ssize_t) strlen(text));
        close(p[1]);
        return p[0];
}

static void assert_open(int fd, const char *after) {
        cr_assert_geq(fcntl(fd, F_GETFD), 0, "the caller's token fd %d was closed %s", fd, after);
}

static struct guest_spec spec_of(void) {
        struct guest_spec s = { .uuid = GUEST, .owner_user_id = (char *) "owner" };

        return s;
}

static int obtain(unsigned mode, int token_fd, bool first_start, int cancel_fd, struct vtpm_secret *ret,
                  vmsup_error **err) {
        struct vtpm_secret_opts o = opts_for(test_barbican_url());
        struct guest_spec spec = spec_of();
        struct vtpm_config tpm = { .present = true, .version = TPM_VERSION_2_0, .model = TPM_MODEL_CRB,
                                   .secret_security = mode };
        struct vtpm_secret_request req = { .opts = &o, .spec = &spec, .tpm = &tpm, .state_dir = state_dir,
                                           .token_fd = token_fd, .first_start = first_start, .cancel_fd = cancel_fd };

        return vtpm_secret_obtain(&req, ret, err);
}

Test(vtpmsecret, read_token_leaves_the_fd_open) {
        char *tok = NULL, *big = malloc(64 * 1024 + 2);
        size_t len = 0;
        vmsup_error *err = NULL;
        int fd;

        fd = token_pipe("gAAAA-token\n");
        cr_assert_eq(vtpm_read_token(fd, &tok, &len, &err), 0, "%s", err ? err->msg : "");
        cr_assert_str_eq(tok, "gAAAA-token");
        cr_assert_eq(len, strlen("gAAAA-token"));
        assert_open(fd, "after a read");
        close(fd);
        secmem_free(tok);

        fd = token_pipe("\n");
        cr_assert_lt(vtpm_read_token(fd, &tok, &len, &err), 0);
        cr_assert_eq(err->kind, VMSUP_ERR_DENIED, "%s", err->msg);
        cr_assert(strstr(err->msg, "is empty"), "%s", err->msg);
        err = vmsup_error_free(err);
        assert_open(fd, "after an empty credential");
        close(fd);

        memset(big, 'x', 64 * 1024 + 1);
        big[64 * 1024 + 1] = '\0';
        fd = open(test_write_file(root, "big", big, 0600), O_RDONLY | O_CLOEXEC);
        cr_assert_geq(fd, 0);
        cr_assert_lt(vtpm_read_token(fd, &tok, &len, &err), 0);
        cr_assert_eq(err->kind, VMSUP_ERR_DATA, "%s", err->msg);
        err = vmsup_error_free(err);
        assert_open(fd, "after a credential too long");
        close(fd);
        free(big);

        fd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC); /* read() fails: EISDIR */
        cr_assert_lt(vtpm_read_token(fd, &tok, &len, &err), 0);
        cr_assert_eq(err->errnum, EISDIR, "%s", err->msg);
        err = vmsup_error_free(err);
        assert_open(fd, "after a failed read");
        close(fd);
}

Test(vtpmsecret, user_mode_creates_then_fetches_and_delete_removes_it) {
        struct vtpm_secret first = { 0 }, again = { 0 };
        struct vtpm_secret_opts o = opts_for(test_barbican_url());
        vmsup_error *err = NULL;
        bool deleted = false;
        int fd = token_pipe(project);

        cr_assert_eq(obtain(SECRET_SECURITY_USER, fd, true, -1, &first, &err), 0, "%s", err ? err->msg : "");
        cr_assert(first.created);
        cr_assert_eq(strlen(first.passphrase), BARBICAN_PASSPHRASE_LEN);
        assert_open(fd, "after creating the secret");
        close(fd);

        /* a second start reads the id it recorded and fetches the same passphrase */
        fd = token_pipe(project);
        cr_assert_eq(obtain(SECRET_SECURITY_USER, fd, false, -1, &again, &err), 0, "%s", err ? err->msg : "");
        cr_assert_not(again.created);
        cr_assert_str_eq(again.id, first.id);
        cr_assert_str_eq(again.passphrase, first.passphrase);
        assert_open(fd, "after fetching the secret");
        close(fd);

        fd = token_pipe(project);
        cr_assert_eq(vtpm_secret_delete(&o, state_dir, "owner", fd, &deleted, &err), 0, "%s", err ? err->msg : "");
        cr_assert(deleted);
        assert_open(fd, "after deleting the secret");
        close(fd);
        vtpm_secret_clear(&first);
        vtpm_secret_clear(&again);
}

Test(vtpmsecret, delete_with_nothing_recorded_leaves_the_fd_open) {
        struct vtpm_secret_opts o = opts_for("http://127.0.0.1:1");
        vmsup_error *err = NULL;
        bool deleted = true;
        int fd = token_pipe(project);

        cr_assert_eq(vtpm_secret_delete(&o, state_dir, "owner", fd, &deleted, &err), 0, "%s", err ? err->msg : "");
        cr_assert_not(deleted);
        assert_open(fd, "when there was nothing to delete");
        close(fd);
}

Test(vtpmsecret, host_mode_with_the_hosts_copy_leaves_the_fd_open) {
        char pass[BARBICAN_PASSPHRASE_LEN + 1];
        struct localstore *store = NULL;
        struct vtpm_secret s = { 0 };
        vmsup_error *err = NULL;
        int fd = token_pipe(project);

        for (size_t i = 0; i < BARBICAN_PASSPHRASE_LEN; i++)
                pass[i] = "QUJDRA=="[i % 4]; /* base64, as Nova's */
        pass[BARBICAN_PASSPHRASE_LEN] = '\0';
        cr_assert_eq(localstore_open(secrets_dir, true, &store, &err), 0, "%s", err ? err->msg : "");
        cr_assert_eq(localstore_put(store, GUEST, pass, "0a0b0c0d-0000-4000-8000-000000000001", &err), 0, "%s",
                     err ? err->msg : "");
        localstore_free(store);

        cr_assert_eq(obtain(SECRET_SECURITY_HOST, fd, false, -1, &s, &err), 0, "%s", err ? err->msg : "");
        cr_assert_str_eq(s.passphrase, pass);
        cr_assert_str_eq(s.id, "0a0b0c0d-0000-4000-8000-000000000001");
        assert_open(fd, "when the host had the secret");
        close(fd);
        vtpm_secret_clear(&s);
}

Test(vtpmsecret, deployment_mode_without_credentials_leaves_the_fd_open) {
        struct vtpm_secret s = { 0 };
        vmsup_error *err = NULL;
        int fd = token_pipe(project);

        cr_assert_lt(obtain(SECRET_SECURITY_DEPLOYMENT, fd, true, -1, &s, &err), 0);
        cr_assert_eq(err->kind, VMSUP_ERR_CONFIG, "%s", err->msg);
        cr_assert(strstr(err->msg, "set [keystone] credentials_file"), "%s", err->msg);
        vmsup_error_free(err);
        assert_open(fd, "in deployment mode");
        close(fd);
}

Test(vtpmsecret, user_mode_failures_leave_the_fd_open) {
        struct vtpm_secret s = { 0 };
        vmsup_error *err = NULL;
        int fd = token_pipe(project), cancel = token_pipe("x");

        /* sealed state but no secret id: refused, nothing created */
        cr_assert_lt(obtain(SECRET_SECURITY_USER, fd, false, -1, &s, &err), 0);
        cr_assert_eq(err->kind, VMSUP_ERR_DATA, "%s", err->msg);
        cr_assert(strstr(err->msg, "refusing to create a new secret"), "%s", err->msg);
        err = vmsup_error_free(err);
        assert_open(fd, "after a refusal");

        /* a stop request while Barbican is being asked */
        cr_assert_lt(obtain(SECRET_SECURITY_USER, fd, true, cancel, &s, &err), 0);
        cr_assert_eq(err->errnum, ECANCELED, "%s", err->msg);
        cr_assert_eq(err->kind, VMSUP_ERR_BUSY, "%s", err->msg);
        err = vmsup_error_free(err);
        assert_open(fd, "after an abandoned request");
        close(cancel);
        close(fd);
}
