#include "config.h"

#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tests/leakscan.h"

struct scan {
        const void *needle;
        size_t len;
        int hits;
        char *where;
        size_t where_len;
};

static struct scan *current; /* nftw has no user pointer */

static void note(struct scan *s, const char *place) {
        size_t n = strlen(place);
        char *w = realloc(s->where, s->where_len + n + 2);

        if (!w)
                abort();
        memcpy(w + s->where_len, place, n);
        w[s->where_len + n] = '\n';
        w[s->where_len + n + 1] = '\0';
        s->where = w;
        s->where_len += n + 1;
        s->hits++;
}

static void scan_file(struct scan *s, const char *path) {
        int fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
        size_t cap = 1 << 16, len = 0;
        char *buf;
        ssize_t n;

        if (fd < 0)
                return;
        buf = malloc(cap);
        while (buf && (n = read(fd, buf + len, cap - len)) > 0) {
                len += (size_t) n;
                if (len == cap) {
                        char *b = realloc(buf, cap *= 2);

                        if (!b)
                                break;
                        buf = b;
                }
        }
        close(fd);
        if (buf && s->len && len >= s->len && memmem(buf, len, s->needle, s->len))
                note(s, path);
        free(buf);
}

static int visit(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
        (void) ftw;
        if (flag == FTW_F && S_ISREG(st->st_mode))
                scan_file(current, path);
        return 0;
}

int leakscan(const void *needle, size_t len, const pid_t *pids, size_t n_pids, const char *const *dirs,
             size_t n_dirs, char **ret_where) {
        struct scan s = { .needle = needle, .len = len };

        for (size_t i = 0; i < n_pids; i++) {
                char path[64];

                snprintf(path, sizeof(path), "/proc/%d/cmdline", (int) pids[i]);
                scan_file(&s, path);
                snprintf(path, sizeof(path), "/proc/%d/environ", (int) pids[i]);
                scan_file(&s, path);
        }
        current = &s;
        for (size_t i = 0; i < n_dirs; i++)
                nftw(dirs[i], visit, 16, FTW_PHYS);
        current = NULL;
        *ret_where = s.where ? s.where : strdup("");
        return s.hits;
}
