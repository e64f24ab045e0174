/* Crash safety of the sealed TPM state: a supervisor's sealing loop (tpmstate/sync) is
 * killed with SIGKILL at random moments while swtpm-style writes (a TMP2-00 file renamed
 * over the state file) land in the live dir. After every round the sealed state must
 * open, pass libtpms, and be exactly one of the states that were written: never torn,
 * never lost, never older than what was sealed before.
 *
 * The states are real: swtpm_setup manufactures a TPM 2.0 and swtpm, driven by the demo
 * guest's tpmprobe over swtpm's data socket, bumps an NV counter in it; each permall
 * swtpm writes is kept. Booting a guest per round would make 100 rounds take a quarter
 * of an hour; the supervisor's own crash recovery on restart is covered in test_run. */
#include "config.h"

#include <criterion/criterion.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/fileio.h"
#include "common/proc.h"
#include "common/secmem.h"
#include "common/util.h"
#include "crypto/seal.h"
#include "tests/helpers.h"
#include "tpmstate/blob.h"
#include "tpmstate/sync.h"

#define UUID "0c5e1f2a-7b3d-4e9f-8a6c-2d4b6f8e0a1c"
#define N_STATES 8
#define ROUNDS 120

static char *root;
static uint8_t *states[N_STATES];
static size_t state_lens[N_STATES];
static const uint8_t key[KDF_KEY_LEN] = { 0x5a, 0x17, 0x42 }; /* a fixed test key */

static void run_ok(char **argv) {
        struct proc_result res = { 0 };
        vmsup_error *err = NULL;

        if (proc_run_capture(argv, NULL, 60000, 1 << 20, &res, &err) < 0)
                cr_assert_fail("%s: %s", argv[0], err->msg);
        cr_assert(WIFEXITED(res.status) && WEXITSTATUS(res.status) == 0, "%s failed: %s%s", argv[0], res.out,
                  res.errout);
        proc_result_clear(&res);
}

/* N_STATES real, distinct TPM 2.0 states, each one NV increment after the other. */
static void make_states(void) {
        char tpmdir[512], sock[512], ctrl[512], permall[600], tpmstate[600], server[600], ctrlarg[600], unix_arg[600];
        char *setup[] = { "/usr/bin/swtpm_setup", "--tpm2", "--tpmstate", tpmdir, "--createek", "--tpm",
                          "/usr/bin/swtpm socket", NULL };
        char *swtpm[] = { "/usr/bin/swtpm", "socket", "--tpm2", "--tpmstate", tpmstate, "--server", server, "--ctrl",
                          ctrlarg, "--flags", "not-need-init,startup-clear", NULL };
        char *probe[] = { TEST_GUEST_DIR "/tpmprobe", unix_arg, NULL };
        struct proc_spawn_opts o = { .argv = swtpm, .stdin_fd = -1, .stdout_fd = -1, .stderr_fd = -1,
                                     .death_signal = SIGTERM };
        vmsup_error *err = NULL;
        int pidfd;
        pid_t pid;

        snprintf(tpmdir, sizeof(tpmdir), "%s/tpm", root);
        snprintf(sock, sizeof(sock), "%s/data.sock", root);
        snprintf(ctrl, sizeof(ctrl), "%s/ctrl.sock", root);
        snprintf(permall, sizeof(permall), "%s/tpm2-00.permall", tpmdir);
        snprintf(tpmstate, sizeof(tpmstate), "dir=%s", tpmdir);
        snprintf(server, sizeof(server), "type=unixio,path=%s", sock);
        snprintf(ctrlarg, sizeof(ctrlarg), "type=unixio,path=%s", ctrl);
        snprintf(unix_arg, sizeof(unix_arg), "unix:%s", sock);
        cr_assert_eq(mkdir(tpmdir, 0700), 0);
        /* swtpm_setup orphans a swtpm and waits for it to be reaped */
        prctl(PR_SET_CHILD_SUBREAPER, 1);
        run_ok(setup);
        while (waitpid(-1, NULL, WNOHANG) > 0)
                ;
        states[0] = test_read_file(permall, &state_lens[0]);

        cr_assert_eq(proc_spawn(&o, &pid, &pidfd, &err), 0, "%s", err ? err->msg : "");
        for (int i = 0; i < 100 && access(sock, F_OK) < 0; i++)
                usleep(20000);
        for (int i = 1; i < N_STATES; i++) {
                run_ok(probe); /* defines (once) and increments the NV counter: swtpm rewrites permall */
                states[i] = test_read_file(permall, &state_lens[i]);
                cr_assert(state_lens[i] != state_lens[i - 1] || memcmp(states[i], states[i - 1], state_lens[i]) != 0,
                          "state %d is the same as %d", i, i - 1);
        }
        kill(pid, SIGTERM);
        waitpid(pid, NULL, 0);
        close(pidfd);
}

static void setup(void) {
        root = test_mkdtemp();
        make_states();
}

static void teardown(void) {
        for (int i = 0; i < N_STATES; i++)
                free(states[i]);
        test_rmtree(root);
        free(root);
}

TestSuite(crash, .init = setup, .fini = teardown, .timeout = 300);

/* Write state i into the live dir as swtpm does: TMP2-00.permall, then rename. */
static void swtpm_style_write(const char *live, int i) {
        char tmp[600], dst[600];
        int fd;

        snprintf(tmp, sizeof(tmp), "%s/TMP2-00.permall", live);
        snprintf(dst, sizeof(dst), "%s/tpm2-00.permall", live);
        fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        cr_assert_geq(fd, 0);
        cr_assert_eq(write(fd, states[i], state_lens[i]), (ssize_t) state_lens[i]);
        close(fd);
        cr_assert_eq(rename(tmp, dst), 0);
}

/* The child: what vmsup run does with the state while the guest runs. */
_Noreturn static void sealing_loop(const char *live, const char *sealed) {
        struct tpm_sync_opts so = { .live_dir = live, .state_dir = sealed, .uuid = UUID, .version = TPM_VERSION_2_0,
                                    .key = key, .uid = getuid(), .gid = getgid() };
        struct tpm_sync *s = NULL;
        vmsup_error *err = NULL;

        if (tpm_sync_open(&so, &s, &err) < 0 || tpm_sync_watch(s, &err) < 0 || tpm_sync_seal_all(s, &err) < 0)
                _exit(2);
        for (;;) {
                struct pollfd p = { .fd = tpm_sync_fd(s), .events = POLLIN };

                if (poll(&p, 1, -1) > 0 && tpm_sync_dispatch(s, &err) < 0)
                        _exit(3);
        }
}

/* Which state the sealed permall is (-1: none sealed yet). Fails on anything else. */
static int sealed_state(const char *sealed) {
        struct seal_manifest m = { 0 };
        uint8_t *plain = NULL;
        size_t len = 0;
        vmsup_error *err = NULL;
        int dfd = open(sealed, O_RDONLY | O_DIRECTORY | O_CLOEXEC), which = -2;
        struct seal_dir d = { .dirfd = dfd, .path = sealed, .key = key, .uuid = UUID };

        cr_assert_geq(dfd, 0);
        cr_assert_eq(seal_manifest_load(&d, &m, &err), 0, "%s", err ? err->msg : "");
        if (!seal_manifest_get(&m, "tpm2-00.permall")) {
                seal_manifest_clear(&m);
                close(dfd);
                return -1;
        }
        cr_assert_eq(seal_state_read(&d, &m, "tpm2-00.permall", &plain, &len, &err), 0, "%s", err ? err->msg : "");
        for (int i = 0; i < N_STATES && which < 0; i++)
                if (len == state_lens[i] && memcmp(plain, states[i], len) == 0)
                        which = i;
        cr_assert_geq(which, 0, "the sealed state (%zu bytes) is none of the states written", len);
        {
                struct tpm_blob_file f = { "tpm2-00.permall", TPM_BLOB_PERMANENT, plain, len };

                cr_assert_eq(tpm_blob_validate(TPM_VERSION_2_0, &f, 1, &err), 0, "%s", err ? err->msg : "");
        }
        secmem_free(plain);
        seal_manifest_clear(&m);
        close(dfd);
        return which;
}

Test(crash, sigkill_while_sealing_never_tears_or_loses_the_state) {
        char live[512], sealed[512];
        int last = -1, written = -1, seen[N_STATES] = { 0 }, mid_write_kills = 0;

        snprintf(live, sizeof(live), "%s/live", root);
        snprintf(sealed, sizeof(sealed), "%s/sealed", root);
        cr_assert_eq(mkdir(live, 0700), 0);
        cr_assert_eq(mkdir(sealed, 0700), 0);
        srandom((unsigned) time(NULL));

        for (int round = 0; round < ROUNDS; round++) {
                int next = (last + 1 + round) % N_STATES, now, status;
                pid_t pid = fork();

                cr_assert_geq(pid, 0);
                if (pid == 0)
                        sealing_loop(live, sealed);
                /* a write lands; the supervisor dies: at once (before it can seal), after
                 * the seal (every fourth round waits for it, up to 10 s), or 0-3 ms later,
                 * often mid-seal */
                swtpm_style_write(live, next);
                if (round % 4 == 0) {
                        for (int i = 0; i < 1000 && sealed_state(sealed) != next; i++)
                                usleep(10000);
                } else if (round % 4 != 1)
                        usleep((useconds_t) (random() % 3000));
                kill(pid, SIGKILL);
                cr_assert_eq(waitpid(pid, &status, 0), pid);
                cr_assert(WIFSIGNALED(status), "the sealing loop ended by itself (status %d)", status);

                now = sealed_state(sealed);
                /* what is sealed is a whole state that was written, and no older than what
                 * was sealed: the same as before the kill, the previous round's write (the
                 * new loop seals what it finds in the live dir first), or this round's */
                cr_assert(now == last || now == written || now == next,
                          "round %d: sealed state %d, expected %d, %d or %d", round, now, last, written, next);
                if (now != next)
                        mid_write_kills++;
                last = now;
                written = next;
                if (now >= 0)
                        seen[now]++;
        }
        cr_log_info("%d rounds: %d kills landed before the new state was sealed", ROUNDS, mid_write_kills);
        /* the kills hit both before and after the seal finished, or the test proves nothing */
        cr_assert_gt(mid_write_kills, 0, "no kill landed before a seal finished");
        cr_assert_lt(mid_write_kills, ROUNDS, "no seal ever finished");

        /* the next supervisor's restore seals what the last one missed, and the live dir
         * then holds exactly the newest state */
        {
                struct tpm_sync_opts so = { .live_dir = live, .state_dir = sealed, .uuid = UUID,
                                            .version = TPM_VERSION_2_0, .key = key, .uid = getuid(), .gid = getgid() };
                struct tpm_sync *s = NULL;
                vmsup_error *err = NULL;
                size_t len;
                uint8_t *now;
                char path[600];

                snprintf(path, sizeof(path), "%s/tpm2-00.permall", live);
                now = test_read_file(path, &len);
                cr_assert_eq(tpm_sync_open(&so, &s, &err), 0, "%s", err ? err->msg : "");
                cr_assert_eq(tpm_sync_restore(s, &err), 1, "%s", err ? err->msg : "");
                tpm_sync_free(s);
                last = sealed_state(sealed);
                cr_assert(len == state_lens[last] && memcmp(now, states[last], len) == 0,
                          "restore did not seal the newest live state");
                free(now);
        }
}

/* A hard reboot's cycle: watch, seal what swtpm writes, wipe at the stop (the fd falls
 * silent; the kernel's watch is removed without waiting), watch again with a new fd
 * that reports the next run's writes. */
Test(crash, watch_wipe_and_watch_again) {
        struct tpm_sync_opts so = { .key = key, .uuid = UUID, .version = TPM_VERSION_2_0, .uid = getuid(), .gid = getgid() };
        char live[512], sealed[512];
        struct tpm_sync *s = NULL;
        vmsup_error *err = NULL;
        struct pollfd p;

        snprintf(live, sizeof(live), "%s/live", root);
        snprintf(sealed, sizeof(sealed), "%s/sealed", root);
        cr_assert_eq(mkdir(live, 0700), 0);
        cr_assert_eq(mkdir(sealed, 0700), 0);
        so.live_dir = live;
        so.state_dir = sealed;
        cr_assert_eq(tpm_sync_open(&so, &s, &err), 0, "%s", err ? err->msg : "");

        for (int run = 0; run < 2; run++) {
                cr_assert_eq(tpm_sync_watch(s, &err), 0, "%s", err ? err->msg : "");
                swtpm_style_write(live, run);
                p = (struct pollfd) { .fd = tpm_sync_fd(s), .events = POLLIN };
                cr_assert_eq(poll(&p, 1, 5000), 1, "run %d: no event for swtpm's write", run);
                cr_assert_eq(tpm_sync_dispatch(s, &err), 0, "%s", err ? err->msg : "");
                cr_assert_eq(sealed_state(sealed), run);
                cr_assert_eq(tpm_sync_seal_all(s, &err), 0);
                cr_assert_eq(tpm_sync_wipe_live(s, &err), 0, "%s", err ? err->msg : "");
                p = (struct pollfd) { .fd = tpm_sync_fd(s), .events = POLLIN };
                cr_assert_eq(poll(&p, 1, 100), 0, "run %d: the fd still reports after the wipe", run);
        }
        tpm_sync_free(s);
}
