/* swtpm itself: manufacture (swtpm_setup with vmsup's own local CA), launch, stop. */
#ifndef VMSUP_TPMSTATE_SWTPM_H
#define VMSUP_TPMSTATE_SWTPM_H

#include <stdbool.h>
#include <sys/types.h>

#include "common/error.h"
#include "common/vtpm.h"

/* "tpm2-00.permall" or "tpm-00.permall". */
const char *swtpm_permall_name(enum tpm_version version);

/* 1 when dir holds a manufactured state (its permall file), 0 when not, negative on
 * error (dir missing, unreadable, or the permall is not a regular file). */
int swtpm_state_exists(const char *dir, enum tpm_version version, vmsup_error **err);

/* Make dir (created 0700 if missing; refused unless it is a directory of ours that no one
 * else can write) the home of vmsup's local CA for EK and platform certificates:
 * swtpm_setup.conf, swtpm-localca.conf and swtpm-localca.options are (re)written there,
 * and swtpm_localca creates the CA key and certificate there on first use. Returns the
 * path of swtpm_setup.conf for swtpm_setup_opts.config. localca_tool: absolute path of
 * swtpm_localca (swtpm-tools). */
int swtpm_localca_prepare(const char *dir, const char *localca_tool, char **ret_setup_conf, vmsup_error **err);

struct swtpm_setup_opts {
        const char *swtpm_setup; /* absolute path of swtpm_setup */
        const char *swtpm;       /* absolute path of swtpm (given as --tpm "PATH socket") */
        const char *config;      /* swtpm_setup.conf from swtpm_localca_prepare() */
        const char *state_dir;   /* existing directory, absolute */
        const char *log_path;    /* --logfile (appended to); its new lines go into errors */
        const char *tmp_dir;     /* TMPDIR for its temporary cert files; NULL: /tmp */
        const char *vmid;        /* "name:uuid", written into the certificates */
        enum tpm_version version;
        int timeout_ms;
        int cancel_fd;           /* > 0: readable means give up at once (swtpm_setup and what it
                                  * started are killed; error with errnum ECANCELED). 0, -1: none */
};

/* Manufacture a TPM in state_dir: EK, EK and platform certificates from vmsup's local CA,
 * NVRAM locked; an existing state is left alone (--not-overwrite). swtpm_setup orphans a
 * swtpm of its own and waits for it to be reaped: the caller should be a child subreaper
 * that reaps promptly, or every call costs about half a second more. */
int swtpm_manufacture(const struct swtpm_setup_opts *o, vmsup_error **err);

struct swtpm_launch_opts {
        const char *swtpm;     /* absolute path of swtpm */
        const char *state_dir; /* existing directory, absolute */
        const char *log_path;  /* opened (appended, 0600) by vmsup: swtpm's log and stderr; NULL: none */
        /* Instead of log_path: swtpm's log and stderr go to log_fd when it is above 2 (a
         * pipe the caller reads, to bound the log), and a failed start asks log_tail for
         * the lines that say why (a new string, freed here). */
        int log_fd;
        char *(*log_tail)(void *userdata);
        void *log_userdata;
        int log_level;         /* --log level; 0: swtpm's default */
        enum tpm_version version;
        bool seccomp;          /* --seccomp action=kill; set when the caps list cmdarg-seccomp */
        int key_fd;            /* -1: none; else a 32-byte AES-256 key is read from it (state encryption) */
        int migration_key_fd;  /* -1: none; likewise, for the blobs in QEMU's migration stream */
        int death_signal;      /* PR_SET_PDEATHSIG; 0: SIGTERM. SIGKILL is refused */
        bool set_ids;          /* run as uid/gid (proc_spawn) */
        uid_t uid;
        gid_t gid;
        int timeout_ms;        /* for the capability check that ends the launch */
        /* > 2: swtpm's end of a control socketpair whose other end QEMU has already (a
         * start that brings QEMU up while the TPM state is prepared): swtpm gets a dup of
         * it, and the launch returns once swtpm runs, without the capability check, which
         * would take QEMU's replies; QEMU checks the capabilities itself as it comes up
         * and stops with an error naming what is missing. ctrl_fd is then -1. 0: none, as
         * described below. */
        int ctrl_peer_fd;
};

struct swtpm_proc {
        pid_t pid;
        int pidfd;    /* readable when swtpm has exited */
        int ctrl_fd;  /* vmsup's end of the control socketpair: give QEMU a dup of it */
        uint32_t caps; /* CMD_GET_CAPABILITY */
};

/* Start `swtpm socket` with its control channel on a socketpair (`--ctrl
 * type=unixio,clientfd=3`) and check, on vmsup's end, that it answers and has every
 * control-channel capability QEMU needs. On failure no swtpm is left running.
 *
 * swtpm 0.7.1 serves exactly one control connection here, so vmsup and QEMU share it:
 * QEMU gets a dup of ctrl_fd (`-chardev socket,id=chrtpm,fd=M`) and vmsup keeps its
 * own. vmsup must not use ctrl_fd while QEMU is alive (it would steal QEMU's replies);
 * once QEMU is gone, swtpm_stop_via_ctrl() on ctrl_fd still reaches swtpm. Closing every end does
 * not make swtpm exit, and a listening socket (`path=`) would serve only one client at
 * a time, so this fd is the only way to stop swtpm cleanly after a SIGKILLed QEMU. */
int swtpm_launch(const struct swtpm_launch_opts *o, struct swtpm_proc *ret, vmsup_error **err);

/* CMD_SHUTDOWN on p->ctrl_fd, then wait for swtpm to exit (pidfd), all within
 * timeout_ms. Never SIGKILL: a TPM that never saw a shutdown can enter dictionary-attack
 * lockout. If swtpm has already closed the channel, only the wait remains. Reaps swtpm
 * and sets *ret_status (waitpid status; -1 when someone else reaped it). If it does not
 * exit in time, an error says so (exit 75) and the caller decides. */
int swtpm_stop_via_ctrl(struct swtpm_proc *p, int timeout_ms, int *ret_status, vmsup_error **err);

/* Close the fds (not the process). Accepts NULL. */
void swtpm_proc_release(struct swtpm_proc *p);

#endif
