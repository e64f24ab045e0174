/* The host configuration, /etc/vmsup/vmsup.conf (INI, Nova's option names where one exists). */
#ifndef VMSUP_SUPERVISOR_HOSTCONFIG_H
#define VMSUP_SUPERVISOR_HOSTCONFIG_H

#include <stdbool.h>
#include <stdint.h>

#include "common/error.h"
#include "seccomp/filter.h"
#include "nova/tpmrules.h"
#include "secrets/barbican.h"
#include "secrets/vtpmsecret.h"

#define VMSUP_DEFAULT_CONFIG "/etc/vmsup/vmsup.conf"


struct host_config {
        char *path; /* the file that was read; NULL when the defaults apply */
        struct {
                bool swtpm_enabled;
                char *swtpm_user;
                char *swtpm_group;
                unsigned supported_secret_security;
                char *swtpm;       /* program name or path */
                char *swtpm_setup;
        } tpm;
        struct {
                char *binary;
                char *accelerator;
                char *machine;
                char *ovmf_code;
                char *ovmf_vars;
                char *user;  /* QEMU runs as user:group when vmsup runs as root */
                char *group;
        } qemu;
        struct {
                char *state_dir;
                char *run_dir;
                char *secrets_dir;
                char *log_dir;
        } paths;
        struct {
                unsigned stop_timeout; /* seconds a graceful stop waits for the guest */
        } supervisor;
        struct {
                /* console.log, and QEMU's and swtpm's logs, are rotated at this size, keeping
                 * this many old files (common/rotlog.h) */
                uint64_t console_max_size;
                unsigned console_max_backups;
        } logs;
        struct {
                enum seccomp_filter_mode seccomp; /* the supervisor's filter, inherited by its children */
                /* each guest's swtpm and QEMU get their own uid and gid from this range
                 * (supervisor/guestids.h): first, last; both 0: none (then they run as
                 * [tpm] swtpm_user and [qemu] user) */
                uint32_t guest_ids[2];
        } security;
        struct {
                char *endpoint;           /* key-manager URL; NULL: from Keystone's catalog */
                enum barbican_auth auth;  /* keystone (default) or noauth (tests, demo) */
                char *interface;          /* catalog interface: public, internal, admin */
                char *region_name;        /* catalog region; NULL: any */
                char *ca_file;            /* NULL: the system's CA store */
                unsigned connect_timeout; /* seconds, per attempt */
                unsigned timeout;         /* seconds, per attempt */
                unsigned retries;         /* further attempts after the first */
        } barbican;
        struct {
                char *auth_url;         /* NULL: none (then [barbican] endpoint is needed) */
                char *credentials_file; /* the service's credentials (deployment mode); NULL: none */
        } keystone;
        struct {
                char *tls_dir;          /* the supervisors' channel: ca-cert.pem, server-cert.pem,
                                         * server-key.pem, client-cert.pem, client-key.pem; root only */
                char *qemu_tls_dir;     /* QEMU's tls-creds-x509 (the same names, dh-params.pem), readable
                                         * by QEMU, under a CA of its own that tls_dir does not trust */
                char *port;             /* default port of `vmsup run --incoming` and `migrate --to` */
                unsigned timeout;       /* seconds: a whole migration; how long --incoming waits for the source */
                unsigned answer_timeout; /* seconds the other supervisor has for each answer */
                unsigned handshake_timeout; /* seconds each connection to --incoming has for its TLS handshake */
        } migration;
};

/* Load the defaults, then the file at path. A missing file is fine when the path is the
 * default one (missing_ok); otherwise it is an error. Errors name file, line and key. */
int host_config_load(const char *path, bool missing_ok, struct host_config *ret, vmsup_error **err);

void host_config_clear(struct host_config *cfg);

/* The supervisors' channel's TLS files for one end (server: the destination), from
 * [migration] tls_dir, once checked: tls_dir and the files owned by root (vmsup's user)
 * and not writable by others, the key readable by no one else (exit 77 otherwise); and
 * [migration] qemu_tls_dir, which QEMU's user can read, holding a CA certificate and
 * this end's certificate that the channel does not accept (exit 78 otherwise). */
struct migration_tls_files {
        char *ca, *cert, *key;
};
int host_config_migration_tls(const struct host_config *cfg, bool server, struct migration_tls_files *ret,
                              vmsup_error **err);
void migration_tls_files_clear(struct migration_tls_files *f);
static inline void migration_tls_files_clearp(struct migration_tls_files *f) {
        migration_tls_files_clear(f);
}
#define _cleanup_migration_tls_files_ __attribute__((cleanup(migration_tls_files_clearp)))

/* What the host offers guests' vTPMs, for tpm_rules_check_host() (pointers into cfg). */
void host_config_tpm_offer(const struct host_config *cfg, struct tpm_host_offer *ret);

/* The Barbican client options the config gives (pointers into cfg). */
void host_config_barbican_options(const struct host_config *cfg, struct barbican_options *ret);

/* Where vTPM secrets come from (Barbican, Keystone, the local store), for
 * vtpm_secret_obtain() and vtpm_secret_delete() (pointers into cfg). */
void host_config_vtpm_secret_opts(const struct host_config *cfg, struct vtpm_secret_opts *ret);

#endif
