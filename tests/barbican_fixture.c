/* One real Barbican (Debian's barbican-api on loopback, tests/barbican/barbican.sh) per
 * test program that links this file: started in Criterion's runner before the first test,
 * stopped after the last; the workers find it in VMSUP_TEST_BARBICAN_URL. */
#include "config.h"

#include <criterion/criterion.h>
#include <criterion/hooks.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/proc.h"
#include "common/util.h"
#include "tests/barbican_fixture.h"
#include "tests/helpers.h"

#define HARNESS TEST_SRCDIR "/tests/barbican/barbican.sh"

/* ---- the shared Barbican: started before the first test, stopped after the last ---- */

static char barbican_dir[] = "/tmp/vmsup-barbican-XXXXXX";

static int run_harness(const char *verb, const char *arg, char **ret_out, char **ret_err) {
        char *argv[] = { "/bin/sh", HARNESS, (char *) verb, barbican_dir, (char *) arg, NULL };
        char *envp[] = { "PATH=/usr/sbin:/usr/bin:/sbin:/bin", NULL };
        struct proc_result res = { 0 };
        vmsup_error *err = NULL;
        int status;

        if (proc_run_capture(argv, envp, 120000, 1 << 20, &res, &err) < 0) {
                *ret_err = strdup(err->msg);
                vmsup_error_free(err);
                return -1;
        }
        status = res.status;
        if (ret_out)
                *ret_out = TAKE_PTR(res.out);
        *ret_err = TAKE_PTR(res.errout);
        proc_result_clear(&res);
        return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

ReportHook(PRE_ALL)(struct criterion_test_set *set) {
        char pid[16], *out = NULL, *errout = NULL;

        (void) set;
        if (!mkdtemp(barbican_dir)) {
                setenv("VMSUP_TEST_BARBICAN_ERROR", "mkdtemp failed", 1);
                return;
        }
        /* The runner's pid: the server exits with it even if we never get to stop it. */
        snprintf(pid, sizeof(pid), "%d", (int) getpid());
        if (run_harness("start", pid, &out, &errout) == 0 && out && strncmp(out, "http://127.0.0.1:", 17) == 0) {
                out[strcspn(out, "\n")] = '\0';
                setenv("VMSUP_TEST_BARBICAN_URL", out, 1);
        } else {
                char *msg = NULL;

                if (asprintf(&msg, "%s start %s failed: %s", HARNESS, barbican_dir, errout ? errout : "?") > 0)
                        setenv("VMSUP_TEST_BARBICAN_ERROR", msg, 1);
                free(msg);
        }
        free(out);
        free(errout);
}

ReportHook(POST_ALL)(struct criterion_global_stats *stats) {
        char *errout = NULL;

        (void) stats;
        if (run_harness("stop", NULL, NULL, &errout) != 0)
                fprintf(stderr, "stopping the test Barbican: %s\n", errout ? errout : "?");
        free(errout);
        test_rmtree(barbican_dir);
}

const char *test_barbican_url(void) {
        const char *url = getenv("VMSUP_TEST_BARBICAN_URL");

        if (!url)
                cr_assert_fail("no Barbican for this test: %s (install it: apt-get install "
                               "--no-install-recommends barbican-api, or ./dev deps)",
                               getenv("VMSUP_TEST_BARBICAN_ERROR") ?: "not started");
        return url;
}

