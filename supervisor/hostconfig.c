#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <ini.h>
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/util.h"
#include "crypto/tls.h"
#include "supervisor/guestids.h"
#include "supervisor/hostconfig.h"

enum opt_type {
        OPT_BOOL,
        OPT_STRING,
        OPT_PATH,
        OPT_URL,       /* http:// or https:// */
        OPT_INTERFACE, /* a Keystone catalog interface */
        OPT_SECRET_SECURITY_LIST,
        OPT_SECONDS,
        OPT_COUNT,     /* 0 to 10 */
        OPT_BARBICAN_AUTH,
        OPT_SECCOMP,
        OPT_ID_RANGE, /* FIRST-LAST or none, into two uint32_t */
        OPT_SIZE,     /* bytes, or with a binary suffix K, M, G: 4K to 1G, into a uint64_t */
};

struct option_def {
        const char *section;
        const char *key;
        enum opt_type type;
        size_t offset;
        const char *def; /* NULL: unset (strings stay NULL) */
};

#define OPT(sec, k, t, field, d) { sec, k, t, offsetof(struct host_config, field), d }
static const struct option_def options[] = {
        OPT("tpm", "swtpm_enabled", OPT_BOOL, tpm.swtpm_enabled, "false"),
        OPT("tpm", "swtpm_user", OPT_STRING, tpm.swtpm_user, "tss"),
        OPT("tpm", "swtpm_group", OPT_STRING, tpm.swtpm_group, "tss"),
        OPT("tpm", "supported_tpm_secret_security", OPT_SECRET_SECURITY_LIST, tpm.supported_secret_security,
            "user, host, deployment"),
        OPT("tpm", "swtpm", OPT_STRING, tpm.swtpm, "swtpm"),
        OPT("tpm", "swtpm_setup", OPT_STRING, tpm.swtpm_setup, "swtpm_setup"),
        OPT("qemu", "binary", OPT_STRING, qemu.binary, "qemu-system-x86_64"),
        OPT("qemu", "accelerator", OPT_STRING, qemu.accelerator, "kvm"),
        OPT("qemu", "machine", OPT_STRING, qemu.machine, "q35"),
        OPT("qemu", "ovmf_code", OPT_PATH, qemu.ovmf_code, "/usr/share/OVMF/OVMF_CODE_4M.fd"),
        OPT("qemu", "ovmf_vars", OPT_PATH, qemu.ovmf_vars, "/usr/share/OVMF/OVMF_VARS_4M.fd"),
        OPT("qemu", "user", OPT_STRING, qemu.user, "root"),
        OPT("qemu", "group", OPT_STRING, qemu.group, "root"),
        OPT("paths", "state_dir", OPT_PATH, paths.state_dir, "/var/lib/vmsup"),
        OPT("paths", "run_dir", OPT_PATH, paths.run_dir, "/run/vmsup"),
        OPT("paths", "secrets_dir", OPT_PATH, paths.secrets_dir, "/var/lib/vmsup/secrets"),
        OPT("paths", "log_dir", OPT_PATH, paths.log_dir, "/var/log/vmsup"),
        OPT("supervisor", "stop_timeout", OPT_SECONDS, supervisor.stop_timeout, "60"),
        OPT("logs", "console_max_size", OPT_SIZE, logs.console_max_size, "2M"),
        OPT("logs", "console_max_backups", OPT_COUNT, logs.console_max_backups, "3"),
        OPT("security", "seccomp", OPT_SECCOMP, security.seccomp, "kill"),
        OPT("security", "guest_ids", OPT_ID_RANGE, security.guest_ids, GUEST_IDS_DEFAULT),
        OPT("barbican", "endpoint", OPT_URL, barbican.endpoint, NULL),
        OPT("barbican", "auth", OPT_BARBICAN_AUTH, barbican.auth, "keystone"),
        OPT("barbican", "interface", OPT_INTERFACE, barbican.interface, "public"),
        OPT("barbican", "region_name", OPT_STRING, barbican.region_name, NULL),
        OPT("barbican", "ca_file", OPT_PATH, barbican.ca_file, NULL),
        OPT("barbican", "connect_timeout", OPT_SECONDS, barbican.connect_timeout, "10"),
        OPT("barbican", "timeout", OPT_SECONDS, barbican.timeout, "30"),
        OPT("barbican", "retries", OPT_COUNT, barbican.retries, "2"),
        OPT("keystone", "auth_url", OPT_URL, keystone.auth_url, NULL),
        OPT("keystone", "credentials_file", OPT_PATH, keystone.credentials_file, NULL),
        OPT("migration", "tls_dir", OPT_PATH, migration.tls_dir, "/etc/pki/vmsup"),
        OPT("migration", "qemu_tls_dir", OPT_PATH, migration.qemu_tls_dir, "/etc/pki/vmsup-qemu"),
        OPT("migration", "port", OPT_STRING, migration.port, "49152"),
        OPT("migration", "timeout", OPT_SECONDS, migration.timeout, "600"),
        OPT("migration", "answer_timeout", OPT_SECONDS, migration.answer_timeout, "30"),
        OPT("migration", "handshake_timeout", OPT_SECONDS, migration.handshake_timeout, "10"),
};
#undef OPT

struct parse_ctx {
        struct host_config *cfg;
        const char *file;
        FILE *stream;
        int line;
        bool seen[ARRAY_SIZE(options)];
        vmsup_error **err;
        int r;
};

/* oslo.config's BoolOpt spellings. */
static int parse_bool(const char *v, bool *ret) {
        static const char *const yes[] = { "true", "yes", "on", "1" };
        static const char *const no[] = { "false", "no", "off", "0" };

        for (size_t i = 0; i < ARRAY_SIZE(yes); i++) {
                if (strcasecmp(v, yes[i]) == 0) {
                        *ret = true;
                        return 0;
                }
                if (strcasecmp(v, no[i]) == 0) {
                        *ret = false;
                        return 0;
                }
        }
        return -EINVAL;
}

/* A comma-separated list, as oslo.config's ListOpt reads it. */
static int parse_secret_security_list(const char *v, unsigned *ret, char **ret_bad) {
        _cleanup_free_ char *copy = strdup(v);
        char *saveptr = NULL, *item;
        unsigned set = 0;

        if (!copy)
                return -ENOMEM;
        for (item = strtok_r(copy, ",", &saveptr); item; item = strtok_r(NULL, ",", &saveptr)) {
                char *end;
                unsigned m;

                while (isspace((unsigned char) *item))
                        item++;
                end = item + strlen(item);
                while (end > item && isspace((unsigned char) end[-1]))
                        *--end = '\0';
                if (!*item)
                        continue;
                m = secret_security_from_string(item);
                if (!m) {
                        *ret_bad = strdup(item);
                        return -EINVAL;
                }
                set |= m;
        }
        *ret = set;
        return 0;
}

static int set_option(struct parse_ctx *c, const struct option_def *o, const char *value) {
        void *field = (char *) c->cfg + o->offset;
        const char *where = c->file ? c->file : "built-in defaults";

        switch (o->type) {
        case OPT_BOOL:
                if (parse_bool(value, field) < 0)
                        return vmsup_fail(c->err, VMSUP_ERR_CONFIG, 0,
                                          "%s:%d: [%s] %s: '%s' is not a boolean (true or false)", where,
                                          c->line, o->section, o->key, value);
                return 0;
        case OPT_PATH:
                if (value[0] != '/')
                        return vmsup_fail(c->err, VMSUP_ERR_CONFIG, 0,
                                          "%s:%d: [%s] %s: '%s' is not an absolute path", where, c->line,
                                          o->section, o->key, value);
                goto string;
        case OPT_URL:
                if (strncmp(value, "http://", 7) != 0 && strncmp(value, "https://", 8) != 0)
                        return vmsup_fail(c->err, VMSUP_ERR_CONFIG, 0,
                                          "%s:%d: [%s] %s: '%s' is not an http:// or https:// URL", where, c->line,
                                          o->section, o->key, value);
                goto string;
        case OPT_INTERFACE:
                if (!streq(value, "public") && !streq(value, "internal") && !streq(value, "admin"))
                        return vmsup_fail(c->err, VMSUP_ERR_CONFIG, 0,
                                          "%s:%d: [%s] %s: '%s' is not a catalog interface (public, internal, admin)",
                                          where, c->line, o->section, o->key, value);
                goto string;
        case OPT_BARBICAN_AUTH:
                if (streq(value, "keystone"))
                        *(enum barbican_auth *) field = BARBICAN_AUTH_KEYSTONE;
                else if (streq(value, "noauth"))
                        *(enum barbican_auth *) field = BARBICAN_AUTH_NOAUTH;
                else
                        return vmsup_fail(c->err, VMSUP_ERR_CONFIG, 0,
                                          "%s:%d: [%s] %s: '%s' is not keystone or noauth", where, c->line,
                                          o->section, o->key, value);
                return 0;
        string:
        case OPT_STRING: {
                char **s = field, *dup;

                if (!*value)
                        return vmsup_fail(c->err, VMSUP_ERR_CONFIG, 0, "%s:%d: [%s] %s: empty value", where,
                                          c->line, o->section, o->key);
                dup = strdup(value);
                if (!dup)
                        return vmsup_fail(c->err, VMSUP_ERR_SYSTEM, ENOMEM, "%s:%d: [%s] %s", where, c->line,
                                          o->section, o->key);
                free(*s);
                *s = dup;
                return 0;
        }
        case OPT_SECRET_SECURITY_LIST: {
                _cleanup_free_ char *bad = NULL;

                if (parse_secret_security_list(value, field, &bad) < 0)
                        return vmsup_fail(c->err, VMSUP_ERR_CONFIG, 0,
                                          "%s:%d: [%s] %s: '%s' is not a TPM secret security mode "
                                          "(user, host, deployment)",
                                          where, c->line, o->section, o->key, bad ? bad : value);
                return 0;
        }
        case OPT_SECONDS: {
                char *end;
                unsigned long n;

                errno = 0;
                n = strtoul(value, &end, 10);
                if (!isdigit((unsigned char) value[0]) || *end || errno || n > 86400)
                        return vmsup_fail(c->err, VMSUP_ERR_CONFIG, 0,
                                          "%s:%d: [%s] %s: '%s' is not a number of seconds (0 to 86400)",
                                          where, c->line, o->section, o->key, value);
                *(unsigned *) field = (unsigned) n;
                return 0;
        }
        case OPT_SECCOMP:
                if (seccomp_filter_mode_from_string(value, field) < 0)
                        return vmsup_fail(c->err, VMSUP_ERR_CONFIG, 0, "%s:%d: [%s] %s: '%s' is not kill, log or off",
                                          where, c->line, o->section, o->key, value);
                return 0;
        case OPT_ID_RANGE: {
                uint32_t *range = field;

                if (guest_ids_parse_range(value, &range[0], &range[1]) < 0)
                        return vmsup_fail(c->err, VMSUP_ERR_CONFIG, 0,
                                          "%s:%d: [%s] %s: '%s' is not FIRST-LAST (1 <= FIRST < LAST <= 4294967294) "
                                          "or none", where, c->line, o->section, o->key, value);
                return 0;
        }
        case OPT_SIZE: {
                char *end;
                unsigned long long n;
                unsigned shift = 0;

                errno = 0;
                n = strtoull(value, &end, 10);
                if (*end == 'K' || *end == 'k')
                        shift = 10;
                else if (*end == 'M')
                        shift = 20;
                else if (*end == 'G')
                        shift = 30;
                if (shift)
                        end++;
                if (!isdigit((unsigned char) value[0]) || *end || errno || n > (1ULL << 30) >> shift ||
                    n << shift < 4096)
                        return vmsup_fail(c->err, VMSUP_ERR_CONFIG, 0,
                                          "%s:%d: [%s] %s: '%s' is not a size from 4K to 1G (bytes, or a number "
                                          "with K, M or G)",
                                          where, c->line, o->section, o->key, value);
                *(uint64_t *) field = (uint64_t) n << shift;
                return 0;
        }
        case OPT_COUNT: {
                char *end;
                unsigned long n;

                errno = 0;
                n = strtoul(value, &end, 10);
                if (!isdigit((unsigned char) value[0]) || *end || errno || n > 10)
                        return vmsup_fail(c->err, VMSUP_ERR_CONFIG, 0, "%s:%d: [%s] %s: '%s' is not a number from 0 to 10",
                                          where, c->line, o->section, o->key, value);
                *(unsigned *) field = (unsigned) n;
                return 0;
        }
        }
        return -EINVAL;
}

static int handler(void *user, const char *section, const char *name, const char *value) {
        struct parse_ctx *c = user;
        bool section_known = false;

        if (c->r < 0)
                return 1; /* report only the first problem */
        for (size_t i = 0; i < ARRAY_SIZE(options); i++) {
                if (!streq(options[i].section, section))
                        continue;
                section_known = true;
                if (!streq(options[i].key, name))
                        continue;
                if (c->seen[i]) {
                        c->r = vmsup_fail(c->err, VMSUP_ERR_CONFIG, 0, "%s:%d: [%s] %s: set twice", c->file,
                                          c->line, section, name);
                        return 1;
                }
                c->seen[i] = true;
                c->r = set_option(c, &options[i], value);
                return 1;
        }
        if (section_known)
                c->r = vmsup_fail(c->err, VMSUP_ERR_CONFIG, 0, "%s:%d: [%s] %s: unknown key", c->file, c->line,
                                  section, name);
        else
                c->r = vmsup_fail(c->err, VMSUP_ERR_CONFIG, 0, "%s:%d: [%s]: unknown section (key %s)",
                                  c->file, c->line, section, name);
        return 1;
}

/* inih reads one line per call: counting calls gives the line the handler sees. */
static char *counting_reader(char *str, int num, void *stream) {
        struct parse_ctx *c = stream;
        char *s = fgets(str, num, c->stream);

        if (s)
                c->line++;
        return s;
}

int host_config_load(const char *path, bool missing_ok, struct host_config *ret, vmsup_error **err) {
        struct host_config cfg = { 0 };
        struct parse_ctx c = { .cfg = &cfg, .err = err };
        _cleanup_fclose_ FILE *f = NULL;
        int r;

        for (size_t i = 0; i < ARRAY_SIZE(options); i++) {
                if (!options[i].def)
                        continue;
                r = set_option(&c, &options[i], options[i].def);
                if (r < 0)
                        goto fail;
        }
        if (!path)
                path = VMSUP_DEFAULT_CONFIG;
        f = fopen(path, "re");
        if (!f) {
                if (errno == ENOENT && missing_ok) {
                        *ret = cfg;
                        return 0;
                }
                r = vmsup_fail(err, errno == ENOENT ? VMSUP_ERR_NOT_FOUND : VMSUP_ERR_CONFIG, errno,
                               "open host config '%s'", path);
                goto fail;
        }
        c.file = path;
        c.stream = f;
        r = ini_parse_stream(counting_reader, &c, handler, &c);
        if (c.r < 0) {
                r = c.r;
                goto fail;
        }
        if (r > 0) {
                r = vmsup_fail(err, VMSUP_ERR_CONFIG, 0, "%s:%d: not an INI line (expected [section] or key = value)",
                               path, r);
                goto fail;
        }
        if (r < 0) {
                r = vmsup_fail(err, VMSUP_ERR_CONFIG, r == -2 ? ENOMEM : EIO, "read host config '%s'", path);
                goto fail;
        }
        if (cfg.barbican.connect_timeout == 0 || cfg.barbican.timeout == 0) {
                r = vmsup_fail(err, VMSUP_ERR_CONFIG, 0, "%s: [barbican] %s: must be at least 1 second", path,
                               cfg.barbican.timeout == 0 ? "timeout" : "connect_timeout");
                goto fail;
        }
        if (cfg.migration.handshake_timeout == 0) {
                r = vmsup_fail(err, VMSUP_ERR_CONFIG, 0, "%s: [migration] handshake_timeout: must be at least 1 second",
                               path);
                goto fail;
        }
        cfg.path = strdup(path);
        *ret = cfg;
        return 0;
fail:
        host_config_clear(&cfg);
        return r;
}

void host_config_clear(struct host_config *cfg) {
        for (size_t i = 0; i < ARRAY_SIZE(options); i++)
                if (options[i].type == OPT_STRING || options[i].type == OPT_PATH || options[i].type == OPT_URL ||
                    options[i].type == OPT_INTERFACE)
                        free(*(char **) ((char *) cfg + options[i].offset));
        free(cfg->path);
        memset(cfg, 0, sizeof(*cfg));
}

void host_config_barbican_options(const struct host_config *cfg, struct barbican_options *ret) {
        *ret = (struct barbican_options) {
                .auth = cfg->barbican.auth,
                .endpoint = cfg->barbican.endpoint,
                .auth_url = cfg->keystone.auth_url,
                .interface = cfg->barbican.interface,
                .region = cfg->barbican.region_name,
                .ca_file = cfg->barbican.ca_file,
                .connect_timeout_ms = cfg->barbican.connect_timeout * 1000,
                .timeout_ms = cfg->barbican.timeout * 1000,
                .attempts = cfg->barbican.retries + 1,
        };
}

void host_config_vtpm_secret_opts(const struct host_config *cfg, struct vtpm_secret_opts *ret) {
        *ret = (struct vtpm_secret_opts) {
                .keystone_auth_url = cfg->keystone.auth_url,
                .keystone_credentials_file = cfg->keystone.credentials_file,
                .secrets_dir = cfg->paths.secrets_dir,
        };
        host_config_barbican_options(cfg, &ret->barbican);
}

/* ---- the migration's TLS files -------------------------------------------------------- */

/* Owned by vmsup's user (root), not writable by anyone else; for a key (secret) not
 * readable either. O_NONBLOCK: a FIFO put in a file's place must not hang us. */
static int check_channel_file(const char *path, bool dir, bool secret, vmsup_error **err) {
        _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK | (dir ? O_DIRECTORY : 0));
        uid_t euid = geteuid();
        struct stat st;
        unsigned mode, bad;

        if (fd < 0 || fstat(fd, &st) < 0)
                return vmsup_fail(err, errno == ENOENT || errno == ENOTDIR ? VMSUP_ERR_CONFIG : VMSUP_ERR_DENIED, errno,
                                  "[migration] tls_dir: '%s'", path);
        if (!dir && !S_ISREG(st.st_mode))
                return vmsup_fail(err, VMSUP_ERR_DENIED, 0, "[migration] tls_dir: '%s' is not a regular file", path);
        if (st.st_uid != euid)
                return vmsup_fail(err, VMSUP_ERR_DENIED, 0,
                                  "[migration] tls_dir: '%s' is owned by uid %u, not %s%.0u: the supervisors' "
                                  "channel trusts only files no one else can change",
                                  path, (unsigned) st.st_uid, euid == 0 ? "root" : "uid ", (unsigned) euid);
        mode = st.st_mode & 07777;
        bad = mode & (secret ? 077 : 022);
        if (bad)
                return vmsup_fail(err, VMSUP_ERR_DENIED, 0,
                                  "[migration] tls_dir: '%s' has mode %04o: %s %s it%s", path, mode,
                                  (bad & 070) && (bad & 07) ? "its group and other users" : (bad & 070) ? "its group"
                                                                                                      : "other users",
                                  secret && (bad & 044) ? "can read" : "can change",
                                  secret ? " (the supervisors' key must be root's alone: QEMU's user would "
                                           "authenticate as a vmsup host with it; chmod 0600)"
                                         : "");
        return 0;
}

void migration_tls_files_clear(struct migration_tls_files *f) {
        free(f->ca);
        free(f->cert);
        free(f->key);
        *f = (struct migration_tls_files) { 0 };
}

int host_config_migration_tls(const struct host_config *cfg, bool server, struct migration_tls_files *ret,
                              vmsup_error **err) {
        const char *dir = cfg->migration.tls_dir, *qdir = cfg->migration.qemu_tls_dir, *end = server ? "server" : "client";
        _cleanup_free_ char *real = NULL, *qreal = NULL, *qca = NULL, *qcert = NULL, *qother = NULL;
        struct migration_tls_files f = { 0 };
        struct stat st;
        int r;

        if (asprintf(&f.ca, "%s/ca-cert.pem", dir) < 0 || asprintf(&f.cert, "%s/%s-cert.pem", dir, end) < 0 ||
            asprintf(&f.key, "%s/%s-key.pem", dir, end) < 0 || asprintf(&qca, "%s/ca-cert.pem", qdir) < 0 ||
            asprintf(&qcert, "%s/%s-cert.pem", qdir, end) < 0 ||
            asprintf(&qother, "%s/%s-cert.pem", qdir, server ? "client" : "server") < 0) {
                r = vmsup_fail(err, VMSUP_ERR_SYSTEM, ENOMEM, "TLS file names");
                goto fail;
        }
        if ((r = check_channel_file(dir, true, false, err)) < 0 || (r = check_channel_file(f.ca, false, false, err)) < 0 ||
            (r = check_channel_file(f.cert, false, false, err)) < 0 || (r = check_channel_file(f.key, false, true, err)) < 0)
                goto fail;

        /* QEMU's stream needs credentials QEMU's user can read. Issued by the channel's CA
         * (or the same files), they would let that user authenticate as a vmsup host. */
        real = realpath(dir, NULL);
        qreal = realpath(qdir, NULL);
        if (real && qreal && streq(real, qreal)) {
                r = vmsup_fail(err, VMSUP_ERR_CONFIG, 0,
                               "[migration] qemu_tls_dir is tls_dir ('%s'): QEMU's migration stream needs "
                               "credentials of its own, under a CA of its own (vmsup.conf(5))",
                               dir);
                goto fail;
        }
        for (const char *const *p = (const char *const[]) { qca, qcert, NULL }; *p; p++)
                if (stat(*p, &st) < 0) {
                        r = vmsup_fail(err, VMSUP_ERR_CONFIG, 0,
                                       "[migration] qemu_tls_dir: '%s': %s. QEMU's migration stream needs "
                                       "credentials of its own, readable by QEMU, under a CA that tls_dir's "
                                       "ca-cert.pem does not trust: put ca-cert.pem, server-cert.pem, server-key.pem, "
                                       "client-cert.pem, client-key.pem and dh-params.pem in '%s' or set "
                                       "[migration] qemu_tls_dir (vmsup.conf(5))",
                                       *p, strerror(errno), qdir);
                        goto fail;
                }
        r = tls_check_apart(f.ca, qca, (const char *const[]) { qcert, qother, NULL }, err);
        if (r < 0) {
                vmsup_error_prefix(err,
                                   "[migration] qemu_tls_dir '%s' must hold QEMU's credentials under a CA of its own, "
                                   "which the supervisors' channel ([migration] tls_dir '%s') does not trust, or "
                                   "QEMU's user could authenticate as a vmsup host",
                                   qdir, dir);
                goto fail;
        }
        *ret = f;
        return 0;
fail:
        migration_tls_files_clear(&f);
        return r;
}

void host_config_tpm_offer(const struct host_config *cfg, struct tpm_host_offer *ret) {
        *ret = (struct tpm_host_offer) { .swtpm_enabled = cfg->tpm.swtpm_enabled,
                                         .supported_secret_security = cfg->tpm.supported_secret_security,
                                         .where = cfg->path };
}
