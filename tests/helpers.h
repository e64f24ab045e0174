/* Shared by the Criterion tests: temporary dirs, files, the host config and the guest spec
 * a test writes (the one way to write them), and running the vmsup binary. */
#ifndef VMSUP_TESTS_HELPERS_H
#define VMSUP_TESTS_HELPERS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* A fresh directory under $TMPDIR (or /tmp), removed by test_rmtree(). */
char *test_mkdtemp(void);
void test_rmtree(const char *dir);

/* Write content to dir/name with the given mode; returns the new path. */
char *test_write_file(const char *dir, const char *name, const char *content, unsigned mode);

/* A host config (vmsup.conf) for a test: what every test's has, and the sections and lines
 * that differ. The text: [tpm] swtpm_enabled, swtpm_user and swtpm_group, tpm; [qemu]
 * accelerator = tcg (user and group nobody:nogroup with as_nobody), qemu; [paths] (with
 * root or secrets_dir); [supervisor] (with supervisor); [barbican] endpoint and
 * auth = noauth (with barbican_url), barbican; more. Lines end in "\n". */
struct test_conf {
        const char *root;         /* [paths]: state_dir root/state, run_dir root/run, log_dir root/log */
        const char *secrets_dir;  /* NULL: root/state/secrets (or none without root) */
        bool swtpm_off;           /* swtpm_enabled = false; else true, swtpm as root or as nobody */
        bool as_nobody;           /* swtpm and QEMU as nobody:nogroup; else swtpm as root, QEMU as its own user */
        const char *tpm;          /* more [tpm] lines */
        const char *qemu;         /* more [qemu] lines */
        const char *supervisor;   /* the [supervisor] lines; NULL: no such section */
        const char *barbican_url; /* NULL: no [barbican] section */
        const char *barbican;     /* more [barbican] lines */
        const char *more;         /* whole sections at the end ([security], [migration] ...) */
        unsigned mode;            /* 0: 0600 */
};

/* Write the host config c to dir/name; returns its path. */
char *test_write_conf(const char *dir, const char *name, const struct test_conf *c);

/* A guest spec for a test: what every test's has ("vcpus": 1, "memory_mb": 256) and the
 * keys that differ. */
struct test_spec {
        const char *uuid;
        const char *name;             /* the guest's name; NULL: "g" */
        const char *user_id, *project_id; /* the owner; NULL: no "owner" */
        const char *flavor;           /* the flavor's name; NULL: "m1.tpm" */
        const char *extra_specs;      /* the flavor's extra_specs members; NULL: TPM 2.0, tpm-crb; "": none */
        const char *image;            /* the image's name; NULL: "demo" */
        const char *image_properties; /* its properties' members; NULL: hw_firmware_type uefi or bios */
        bool uefi;                    /* the image's hw_firmware_type: uefi, else bios */
        const char *guest_dir;        /* firmware: the demo guest's vmlinuz and initrd.img there */
        bool hold;                    /* the demo guest stays up until the power button */
        const char *cmdline;          /* more kernel arguments for the demo guest (tests/guest/README.md) */
        const char *firmware;         /* the "firmware" object as JSON, instead of guest_dir's; NULL
                                       * and no guest_dir: no "firmware" */
        const char *disks;            /* the "disks" array as JSON; NULL: no "disks" */
        const char *graphics;         /* the "graphics" object as JSON; NULL: no "graphics" */
        const char *on_crash;         /* the "on_crash" value; NULL: no "on_crash" */
        const char *nics;             /* the "nics" array as JSON; NULL: no "nics" */
        unsigned mode;                /* 0: 0644 */
};

/* Write the guest spec s to dir/file; returns its path. */
char *test_write_spec(const char *dir, const char *file, const struct test_spec *s);

struct test_run {
        int exit_code; /* -1 when killed by a signal */
        char *out;
        char *err;
};

/* Run the vmsup binary with args (NULL-terminated) and the environment PATH=path (NULL:
 * the test's own PATH); capture stdout and stderr. */
void test_run_vmsup(struct test_run *ret, const char *path, const char *const *args);
void test_run_clear(struct test_run *r);

/* A stand-in for a `vmsup run` still in its start: a process that holds state_dir's lock
 * (flock, as guest_dirs_lock()) with "run" and state_dir among its arguments, until
 * *ret_hold (a pipe's write end) is closed or it is killed. Returns its pid, maybe before
 * it has the lock. */
pid_t test_hold_lock_as_run(const char *state_dir, int *ret_hold);

/* Processes whose command line contains needle (a test's temporary root); with
 * kill_them, each gets SIGKILL. Returns how many there were. */
int test_count_processes(const char *needle, bool kill_them);

/* Copy src_dir/name to dst_dir/name, readable by everyone (0644). */
void test_copy_file(const char *src_dir, const char *dst_dir, const char *name);

/* The end of a test's root dir: whatever of the test still runs there (after a failed test)
 * gets SIGKILL, then the tree is removed and root freed. */
void test_root_cleanup(char *root);

/* All of a file (at most 1 MiB) in a new buffer; fails the test when it cannot be read. */
uint8_t *test_read_file(const char *path, size_t *ret_len);
/* The first line of a file, without its newline, into buf; fails the test when the file
 * cannot be read or has no line. */
void test_read_line(const char *path, char *buf, size_t size);

/* The MTU of network interface ifname (of the test's network namespace). */
unsigned test_mtu_of(const char *ifname);

#endif
