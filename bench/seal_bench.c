/* Latency and throughput of sealing: `make bench-seal`. Timings live here only, never in
 * the tests. In-memory seal/open (no I/O) and the durable file write (fsync of the file
 * and of the directory) are measured separately; the file write lands in $TMPDIR (or
 * /tmp), so its figures are that file system's fsync. */
#include "config.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/secmem.h"
#include "crypto/kdf.h"
#include "crypto/seal.h"
#include "tpmstate/sync.h"
#include <poll.h>

#define UUID "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
#define NAME "tpm2-00.permall"

static double now_us(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static int cmp_double(const void *a, const void *b) {
        double x = *(const double *) a, y = *(const double *) b;

        return x < y ? -1 : x > y;
}

static void die(const char *what, vmsup_error *err) {
        fprintf(stderr, "seal_bench: %s: %s\n", what, err ? err->msg : "failed");
        exit(1);
}

/* Median of n runs, in microseconds. */
static double median(double *t, int n) {
        qsort(t, (size_t) n, sizeof(*t), cmp_double);
        return n % 2 ? t[n / 2] : (t[n / 2 - 1] + t[n / 2]) / 2;
}

/* What vmsup run does after each of swtpm's writes: from the rename of TMP2-00.permall
 * over tpm2-00.permall to the sealed copy being durable (inotify wake-up, read, seal,
 * fsync of the file and the directory, then the manifest likewise). */
static void rename_to_durable(const uint8_t *key) {
        static const size_t sizes[] = { 4096, 65536 };
        const char *tmpbase = getenv("TMPDIR");
        char live[4096], sealed[4096], tmp[4200], dst[4200];
        const int iters = 30;
        double t[30];

        printf("\nswtpm's rename -> sealed and durable (tpmstate/sync, medians of %d):\n", iters);
        for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
                struct tpm_sync_opts so = { 0 };
                struct tpm_sync *s = NULL;
                vmsup_error *err = NULL;
                uint8_t *data = malloc(sizes[k]);

                snprintf(live, sizeof(live), "%s/vmsup-bench-live-XXXXXX", tmpbase && *tmpbase ? tmpbase : "/tmp");
                snprintf(sealed, sizeof(sealed), "%s/vmsup-bench-sealed-XXXXXX", tmpbase && *tmpbase ? tmpbase : "/tmp");
                if (!data || !mkdtemp(live) || !mkdtemp(sealed))
                        die("mkdtemp", NULL);
                so = (struct tpm_sync_opts) { .live_dir = live, .state_dir = sealed, .uuid = UUID,
                                              .version = TPM_VERSION_2_0, .key = key, .uid = getuid(), .gid = getgid() };
                if (tpm_sync_open(&so, &s, &err) < 0 || tpm_sync_watch(s, &err) < 0)
                        die("sync", err);
                snprintf(tmp, sizeof(tmp), "%s/TMP2-00.permall", live);
                snprintf(dst, sizeof(dst), "%s/tpm2-00.permall", live);
                for (int i = 0; i < iters; i++) {
                        struct pollfd p = { .fd = tpm_sync_fd(s), .events = POLLIN };
                        int fd;
                        double t0;

                        memset(data, i + 1, sizes[k]); /* a new state each time */
                        fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
                        if (fd < 0 || write(fd, data, sizes[k]) != (ssize_t) sizes[k])
                                die("write", NULL);
                        close(fd);
                        t0 = now_us();
                        if (rename(tmp, dst) < 0 || poll(&p, 1, 10000) != 1 || tpm_sync_dispatch(s, &err) < 0)
                                die("seal after rename", err);
                        t[i] = now_us() - t0;
                }
                printf("%7zuK | %10.0f us\n", sizes[k] / 1024, median(t, iters));
                tpm_sync_wipe_live(s, &err);
                tpm_sync_free(s);
                free(data);
                {
                        char path[4300];

                        snprintf(path, sizeof(path), "%s/tpm2-00.permall" SEAL_SUFFIX, sealed);
                        unlink(path);
                        snprintf(path, sizeof(path), "%s/" SEAL_MANIFEST_NAME SEAL_SUFFIX, sealed);
                        unlink(path);
                }
                rmdir(live);
                rmdir(sealed);
        }
}

int main(int argc, char **argv) {
        static const size_t sizes[] = { 1024, 4096, 16384, 65536, 262144, 524288 };
        const char *tmpbase = getenv("TMPDIR");
        char dir[4096], passphrase[513];
        vmsup_error *err = NULL;
        uint8_t *key = NULL;
        struct seal_dir d;
        double t[400], t0;
        int iters_mem = 200, iters_file = 30;

        (void) argc;
        (void) argv;
        for (int i = 0; i < 512; i++)
                passphrase[i] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"[(i * 37 + 11) % 64];
        passphrase[512] = 0;
        for (int i = 0; i < 50; i++) {
                t0 = now_us();
                if (kdf_derive_key(passphrase, 512, UUID, KDF_USE_STATE_SEAL, &key, &err) < 0)
                        die("kdf", err);
                t[i] = now_us() - t0;
                if (i < 49)
                        key = secmem_free(key);
        }
        printf("HKDF-SHA256 key derivation (512-byte passphrase): %.1f us median of 50\n\n", median(t, 50));

        snprintf(dir, sizeof(dir), "%s/seal-bench-XXXXXX", tmpbase && *tmpbase ? tmpbase : "/tmp");
        if (!mkdtemp(dir))
                die("mkdtemp", NULL);
        d = (struct seal_dir) { .dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC), .path = dir, .key = key,
                                .uuid = UUID };

        printf("AES-256-GCM, medians; in-memory: %d runs, durable file: %d runs (dir %s)\n", iters_mem, iters_file,
               dir);
        printf("%8s | %10s %10s | %10s %10s | %12s %12s\n", "size", "seal us", "seal MB/s", "open us", "open MB/s",
               "write+fsync", "read+open us");
        printf("---------+-----------------------+-----------------------+--------------------------\n");
        for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++) {
                size_t n = sizes[s], slen = 0, plen;
                uint8_t *plain = secmem_alloc(n), *sealed = NULL, *out = NULL;
                double seal_us, open_us, write_us, read_us;
                uint64_t gen;

                for (size_t i = 0; i < n; i++)
                        plain[i] = (uint8_t) (i * 7);
                for (int i = 0; i < iters_mem; i++) {
                        free(sealed);
                        t0 = now_us();
                        if (seal_buffer(key, UUID, NAME, (uint64_t) i + 1, plain, n, &sealed, &slen, &err) < 0)
                                die("seal", err);
                        t[i] = now_us() - t0;
                }
                seal_us = median(t, iters_mem);
                for (int i = 0; i < iters_mem; i++) {
                        t0 = now_us();
                        if (seal_open_buffer(key, UUID, NAME, sealed, slen, &out, &plen, &gen, &err) < 0)
                                die("open", err);
                        t[i] = now_us() - t0;
                        out = secmem_free(out);
                }
                open_us = median(t, iters_mem);
                for (int i = 0; i < iters_file; i++) {
                        t0 = now_us();
                        if (seal_file_write(&d, NAME, (uint64_t) i + 1, plain, n, &err) < 0)
                                die("write", err);
                        t[i] = now_us() - t0;
                }
                write_us = median(t, iters_file);
                for (int i = 0; i < iters_file; i++) {
                        t0 = now_us();
                        if (seal_file_read(&d, NAME, 0, &out, &plen, &gen, &err) < 0)
                                die("read", err);
                        t[i] = now_us() - t0;
                        out = secmem_free(out);
                }
                read_us = median(t, iters_file);
                printf("%7zuK | %10.1f %10.0f | %10.1f %10.0f | %10.0f us %12.1f\n", n / 1024, seal_us,
                       n / seal_us, open_us, n / open_us, write_us, read_us);
                free(sealed);
                secmem_free(plain);
        }
        {
                char path[4200];

                snprintf(path, sizeof(path), "%s/%s" SEAL_SUFFIX, dir, NAME);
                unlink(path);
                rmdir(dir);
        }
        rename_to_durable(key);
        close(d.dirfd);
        secmem_free(key);
        return 0;
}
