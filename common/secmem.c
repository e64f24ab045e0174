#include "config.h"

#include <errno.h>
#include <malloc.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "common/secmem.h"

/* Each buffer is its own anonymous mapping: a page-aligned region that mlock() and
 * madvise() can act on without touching the neighbours of a malloc chunk. The header
 * sits in the first bytes of the mapping, the caller's bytes after it. */
struct secmem_hdr {
        size_t map_len;
        size_t len;
        bool locked;
};
#define SECMEM_HDR_SIZE 64 /* keeps the caller's bytes aligned for any type */
_Static_assert(sizeof(struct secmem_hdr) <= SECMEM_HDR_SIZE, "secmem header too large");

static struct secmem_hdr *hdr_of(const void *p) {
        return (struct secmem_hdr *) ((uint8_t *) p - SECMEM_HDR_SIZE);
}

void *secmem_alloc(size_t len) {
        size_t page = (size_t) sysconf(_SC_PAGESIZE), map_len;
        struct secmem_hdr *h;
        void *m;

        if (len > SIZE_MAX - SECMEM_HDR_SIZE - page) {
                errno = ENOMEM;
                return NULL;
        }
        map_len = (len + SECMEM_HDR_SIZE + page - 1) / page * page;
        m = mmap(NULL, map_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED) {
                errno = ENOMEM;
                return NULL;
        }
        /* Best effort both: a core dump or swap holding a key is what they prevent, and
         * neither failing (old kernel, small RLIMIT_MEMLOCK for an unprivileged user)
         * is a reason to refuse to run. */
        (void) madvise(m, map_len, MADV_DONTDUMP);
        h = m;
        h->map_len = map_len;
        h->len = len;
        h->locked = mlock(m, map_len) == 0;
        return (uint8_t *) m + SECMEM_HDR_SIZE;
}

void erase(void *p, size_t len) {
        if (p && len)
                explicit_bzero(p, len);
}

void secmem_wipe(void *p) {
        if (p)
                erase(p, hdr_of(p)->len);
}

void *secmem_free(void *p) {
        struct secmem_hdr *h;
        size_t map_len;
        bool locked;

        if (!p)
                return NULL;
        h = hdr_of(p);
        map_len = h->map_len;
        locked = h->locked;
        /* The whole mapping, slack included: a caller may have written past len into
         * the page's tail only by mistake, but wiping it costs nothing. */
        erase(h, map_len);
        if (locked)
                (void) munlock(h, map_len);
        (void) munmap(h, map_len);
        return NULL;
}

size_t secmem_size(const void *p) {
        return p ? hdr_of(p)->len : 0;
}

bool secmem_locked(const void *p) {
        return p && hdr_of(p)->locked;
}

void *erase_and_free(void *p) {
        if (p) {
                erase(p, malloc_usable_size(p));
                free(p);
        }
        return NULL;
}
