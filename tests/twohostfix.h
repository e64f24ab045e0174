/* The two-host fixture of the live-migration tests (tests/twohostfix.c). */
#ifndef VMSUP_TESTS_TWOHOSTFIX_H
#define VMSUP_TESTS_TWOHOSTFIX_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#define UUID "6d1b8a52-8c4e-4f43-9a3e-0c1f5b7d2e90"
#define VMSUP TEST_BUILDDIR "/vmsup"
#define GUEST_BOOT_MS 120000

/* the test's root dir; the namespaces' prefix; the hosts' addresses; Barbican's URL */
extern char *th_root, th_prefix[24], th_ip[2][32], th_url[128];
/* what the test is at, for the failure messages */
extern const char *th_step;

/* TestSuite .init and .fini: both hosts up with configs (a.conf, b.conf: [migration]
 * tls_dir = ROOT/certs/a or b, qemu_tls_dir = ROOT/certs/qemu-ca/a or b), Barbican, the shared disk, ROOT/guest.json (host mode). */
void th_setup(void);
void th_teardown(void);
/* host h's config with another tls_dir; the spec with another secret security */
void th_write_conf(int h, const char *tls_dir);
/* the same with another qemu_tls_dir too */
void th_write_conf_tls(int h, const char *tls_dir, const char *qemu_tls_dir);
void th_write_spec(const char *mode);

/* a shell command that must succeed */
void th_sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* a formatted path in one of 8 rotating buffers */
char *th_path(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* a file's text ("" when missing) in a buffer the next call reuses */
char *th_slurp(const char *p);
int th_count(const char *text, const char *needle);
/* the last max bytes of a file (a new string) */
char *th_tail_of(const char *file, size_t max);
/* the supervisors' logs (run-a, run-a2, in-b) and the last migrate's (mig), for messages */
char *th_logs(void);

/* `vmsup --config ROOT/{a,b}.conf ARGS` in host h's namespace, in the background; stdout
 * and stderr to ROOT/NAME.out and .err; token (when not NULL) on its fd 3 */
pid_t th_start(int h, const char *name, const char *token, const char *const *args);
/* the same, waited for: its exit code */
int th_run(int h, const char *name, const char *const *args);
char *th_out(const char *name);
char *th_err(const char *name);
int th_wait_exit(pid_t pid);
void th_reap(pid_t pid, int want);
/* the oldest process whose command line matches (pgrep -f); 0 if none */
pid_t th_pid_of(const char *pattern);

/* wait until file has n x needle (fails the test after timeout_ms) */
void th_wait_text(const char *file, const char *needle, int n, int timeout_ms);
char *th_console(int h);
/* the last value of "key=" on host h's console */
char *th_console_last(int h, const char *key);
bool th_has_any(int h);
void th_assert_running(int h);
void th_assert_gone(int h);

/* boot the guest on host a (run-a) until its TPM probe is done */
pid_t th_boot_on_a(void);
/* `run --incoming 49152 --spec ROOT/guest.json UUID` on host h (both hosts share the
 * test's storage: the same spec is right for both), waiting until it listens */
pid_t th_incoming(int h, const char *name);
int th_migrate(int from, const char *name);
pid_t th_start_migrate(int from, const char *name);
/* until the source QEMU's stream reaches host h's QEMU (in-b's announced port) */
void th_wait_stream(int h);

/* tests/migrelay, the man in the middle of the supervisors' channel, in host b: the
 * source reaches it on ip_b:49153 (th_migrate_via_relay), it reaches the destination on
 * ip_b:49152; actions (NULL-terminated) as migrelay takes them (--drop, --hold, --cut;
 * SIGUSR1 releases a hold). Its log, one line per frame, is ROOT/relay.err; returns its
 * pid once it listens. The test program must depend on tests/migrelay. */
pid_t th_relay_start(const char *const *actions);
/* `vmsup migrate UUID --to ip_b:49153` on host a, in the background */
pid_t th_migrate_via_relay(const char *name);

/* In a forked child: a source supervisor played by the test, in host a's namespace with
 * a's client credentials: HELLO to ip_b:49152, PREPARE with spec (taken; NULL: the
 * fixture's guest.json), then a SECRET that is not the guest's (512 x 'A'). The channel,
 * or NULL when any of that failed (the child then _exits with a code of its own). */
struct json_object;
struct migchan;
struct migchan *th_source_prepare(struct json_object *spec);

#endif
