#include "config.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>

#include "crypto/gnutls_load.h"

/* libgnutls is loaded on first use (dlopen), not linked. Linked, every vmsup process paid
 * for it at exec: ten libraries mapped and relocated, and gnutls' global initialisation
 * in its constructor (the ASN.1 trees of PKIX, the system's priority config): about 2.7 ms
 * of the 4.8 ms `vmsup stop` took from its fork to its exit on the benchmark's machine
 * (docs/performance.md), for verbs that only talk to a supervisor over its control
 * socket. The functions below have gnutls' own names and prototypes (the headers check
 * them), so their callers are as if linked: each resolves its symbol once, then calls it. */

static pthread_once_t once = PTHREAD_ONCE_INIT;
static void *lib;
static char why[300];

static void lazy_free(void *p);

/* gnutls' own deallocator, for what it allocates for us (gnutls_free() in gnutls.h) */
gnutls_free_function gnutls_free = lazy_free;

static void load_once(void) {
        gnutls_free_function *f;

        lib = dlopen(GNUTLS_SONAME, RTLD_NOW | RTLD_LOCAL);
        if (!lib) {
                snprintf(why, sizeof(why), "cannot load %s: %s", GNUTLS_SONAME, dlerror());
                return;
        }
        f = (gnutls_free_function *) dlsym(lib, "gnutls_free");
        gnutls_free = f && *f ? *f : free;
}

int crypto_gnutls_load(vmsup_error **err) {
        pthread_once(&once, load_once);
        if (!lib)
                return vmsup_fail(err, VMSUP_ERR_UNAVAILABLE, 0, "%s", why);
        return 0;
}

static void *resolve(const char *name) {
        void *p = NULL;

        pthread_once(&once, load_once);
        if (lib)
                p = dlsym(lib, name);
        if (!p) {
                /* no error to return through gnutls' own API: the installation is broken */
                fprintf(stderr, "vmsup: %s\n", lib ? dlerror() : why);
                abort();
        }
        return p;
}

static void lazy_free(void *p) {
        pthread_once(&once, load_once);
        if (gnutls_free == lazy_free)
                resolve("gnutls_free"); /* does not return */
        gnutls_free(p);
}

#define RESOLVED(name)                                                                             \
        __typeof__(&name) f = __atomic_load_n(&f_##name, __ATOMIC_ACQUIRE);                        \
        if (!f) {                                                                                  \
                f = (__typeof__(&name)) resolve(#name);                                            \
                __atomic_store_n(&f_##name, f, __ATOMIC_RELEASE);                                  \
        }
#define LAZY(ret, name, params, args)                                                              \
        static __typeof__(&name) f_##name;                                                         \
        ret name params {                                                                          \
                RESOLVED(name)                                                                     \
                return f args;                                                                     \
        }
#define LAZY_VOID(name, params, args)                                                              \
        static __typeof__(&name) f_##name;                                                         \
        void name params {                                                                         \
                RESOLVED(name)                                                                     \
                f args;                                                                            \
        }

/* every gnutls function vmsup calls (`nm -u vmsup` lists them when linked) */
LAZY(int, gnutls_aead_cipher_decrypt, (gnutls_aead_cipher_hd_t handle, const void *nonce, size_t nonce_len, const void *auth, size_t auth_len, size_t tag_size, const void *ctext, size_t ctext_len, void *ptext, size_t *ptext_len), (handle, nonce, nonce_len, auth, auth_len, tag_size, ctext, ctext_len, ptext, ptext_len))
LAZY_VOID(gnutls_aead_cipher_deinit, (gnutls_aead_cipher_hd_t handle), (handle))
LAZY(int, gnutls_aead_cipher_encrypt, (gnutls_aead_cipher_hd_t handle, const void *nonce, size_t nonce_len, const void *auth, size_t auth_len, size_t tag_size, const void *ptext, size_t ptext_len, void *ctext, size_t *ctext_len), (handle, nonce, nonce_len, auth, auth_len, tag_size, ptext, ptext_len, ctext, ctext_len))
LAZY(int, gnutls_aead_cipher_init, (gnutls_aead_cipher_hd_t *handle, gnutls_cipher_algorithm_t cipher, const gnutls_datum_t *key), (handle, cipher, key))
LAZY(gnutls_alert_description_t, gnutls_alert_get, (gnutls_session_t session), (session))
LAZY(const char *, gnutls_alert_get_name, (gnutls_alert_description_t alert), (alert))
LAZY(int, gnutls_alert_send_appropriate, (gnutls_session_t session, int err), (session, err))
LAZY(int, gnutls_bye, (gnutls_session_t session, gnutls_close_request_t how), (session, how))
LAZY(int, gnutls_certificate_allocate_credentials, (gnutls_certificate_credentials_t *res), (res))
LAZY_VOID(gnutls_certificate_free_credentials, (gnutls_certificate_credentials_t sc), (sc))
LAZY(const gnutls_datum_t *, gnutls_certificate_get_peers, (gnutls_session_t session, unsigned int *list_size), (session, list_size))
LAZY_VOID(gnutls_certificate_send_x509_rdn_sequence, (gnutls_session_t session, int status), (session, status))
LAZY_VOID(gnutls_certificate_server_set_request, (gnutls_session_t session, gnutls_certificate_request_t req), (session, req))
LAZY(int, gnutls_certificate_set_x509_key_file, (gnutls_certificate_credentials_t res, const char *certfile, const char *keyfile, gnutls_x509_crt_fmt_t type), (res, certfile, keyfile, type))
LAZY(int, gnutls_certificate_set_x509_trust_file, (gnutls_certificate_credentials_t cred, const char *cafile, gnutls_x509_crt_fmt_t type), (cred, cafile, type))
LAZY(int, gnutls_certificate_verification_status_print, (unsigned int status, gnutls_certificate_type_t type, gnutls_datum_t *out, unsigned int flags), (status, type, out, flags))
LAZY(int, gnutls_credentials_set, (gnutls_session_t session, gnutls_credentials_type_t type, void *cred), (session, type, cred))
LAZY_VOID(gnutls_deinit, (gnutls_session_t session), (session))
LAZY(int, gnutls_error_is_fatal, (int error), (error))
LAZY(int, gnutls_handshake, (gnutls_session_t session), (session))
LAZY_VOID(gnutls_handshake_set_timeout, (gnutls_session_t session, unsigned int ms), (session, ms))
LAZY(int, gnutls_hash_fast, (gnutls_digest_algorithm_t algorithm, const void *text, size_t textlen, void *digest), (algorithm, text, textlen, digest))
LAZY(int, gnutls_hkdf_expand, (gnutls_mac_algorithm_t mac, const gnutls_datum_t *key, const gnutls_datum_t *info, void *output, size_t length), (mac, key, info, output, length))
LAZY(int, gnutls_hkdf_extract, (gnutls_mac_algorithm_t mac, const gnutls_datum_t *key, const gnutls_datum_t *salt, void *output), (mac, key, salt, output))
LAZY(int, gnutls_init, (gnutls_session_t *session, unsigned int flags), (session, flags))
LAZY(int, gnutls_load_file, (const char *filename, gnutls_datum_t *data), (filename, data))
LAZY_VOID(gnutls_memset, (void *data, int c, size_t size), (data, c, size))
LAZY(int, gnutls_priority_set_direct, (gnutls_session_t session, const char *priorities, const char **err_pos), (session, priorities, err_pos))
LAZY(const char *, gnutls_protocol_get_name, (gnutls_protocol_t version), (version))
LAZY(gnutls_protocol_t, gnutls_protocol_get_version, (gnutls_session_t session), (session))
LAZY(int, gnutls_record_get_direction, (gnutls_session_t session), (session))
LAZY(ssize_t, gnutls_record_recv, (gnutls_session_t session, void *data, size_t data_size), (session, data, data_size))
LAZY(ssize_t, gnutls_record_send, (gnutls_session_t session, const void *data, size_t data_size), (session, data, data_size))
LAZY(int, gnutls_rnd, (gnutls_rnd_level_t level, void *data, size_t len), (level, data, len))
LAZY(int, gnutls_server_name_set, (gnutls_session_t session, gnutls_server_name_type_t type, const void *name, size_t name_length), (session, type, name, name_length))
LAZY(unsigned int, gnutls_session_get_verify_cert_status, (gnutls_session_t a0), (a0))
LAZY_VOID(gnutls_session_set_verify_cert2, (gnutls_session_t session, gnutls_typed_vdata_st *data, unsigned elements, unsigned flags), (session, data, elements, flags))
LAZY(const char *, gnutls_strerror, (int error), (error))
LAZY_VOID(gnutls_transport_set_ptr, (gnutls_session_t session, gnutls_transport_ptr_t ptr), (session, ptr))
LAZY_VOID(gnutls_transport_set_pull_function, (gnutls_session_t session, gnutls_pull_func pull_func), (session, pull_func))
LAZY_VOID(gnutls_transport_set_pull_timeout_function, (gnutls_session_t session, gnutls_pull_timeout_func func), (session, func))
LAZY_VOID(gnutls_transport_set_vec_push_function, (gnutls_session_t session, gnutls_vec_push_func vec_func), (session, vec_func))
LAZY_VOID(gnutls_x509_crt_deinit, (gnutls_x509_crt_t cert), (cert))
LAZY(unsigned, gnutls_x509_crt_equals, (gnutls_x509_crt_t cert1, gnutls_x509_crt_t cert2), (cert1, cert2))
LAZY(int, gnutls_x509_crt_get_dn, (gnutls_x509_crt_t cert, char *buf, size_t *buf_size), (cert, buf, buf_size))
LAZY(int, gnutls_x509_crt_get_dn_by_oid, (gnutls_x509_crt_t cert, const char *oid, unsigned indx, unsigned int raw_flag, void *buf, size_t *buf_size), (cert, oid, indx, raw_flag, buf, buf_size))
LAZY(int, gnutls_x509_crt_import, (gnutls_x509_crt_t cert, const gnutls_datum_t *data, gnutls_x509_crt_fmt_t format), (cert, data, format))
LAZY(int, gnutls_x509_crt_init, (gnutls_x509_crt_t *cert), (cert))
LAZY(int, gnutls_x509_crt_list_import2, (gnutls_x509_crt_t **certs, unsigned int *size, const gnutls_datum_t *data, gnutls_x509_crt_fmt_t format, unsigned int flags), (certs, size, data, format, flags))
LAZY(int, gnutls_x509_trust_list_add_cas, (gnutls_x509_trust_list_t list, const gnutls_x509_crt_t *clist, unsigned clist_size, unsigned int flags), (list, clist, clist_size, flags))
LAZY_VOID(gnutls_x509_trust_list_deinit, (gnutls_x509_trust_list_t list, unsigned int all), (list, all))
LAZY(int, gnutls_x509_trust_list_init, (gnutls_x509_trust_list_t *list, unsigned int size), (list, size))
LAZY(int, gnutls_x509_trust_list_verify_crt2, (gnutls_x509_trust_list_t list, gnutls_x509_crt_t *cert_list, unsigned int cert_list_size, gnutls_typed_vdata_st *data, unsigned int elements, unsigned int flags, unsigned int *voutput, gnutls_verify_output_function func), (list, cert_list, cert_list_size, data, elements, flags, voutput, func))
