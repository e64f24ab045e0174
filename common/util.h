/* Ownership helpers in the style of systemd and crun. */
#ifndef VMSUP_COMMON_UTIL_H
#define VMSUP_COMMON_UTIL_H

#include <errno.h>
#include <json-c/json.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

static inline void freep(void *p) {
        free(*(void **) p);
}
/* Close *fd if open and leave it -1, so that a second closep() of the same variable is
 * harmless; errno is kept. */
static inline void closep(int *fd) {
        if (*fd >= 0) {
                int saved = errno;
                close(*fd);
                errno = saved;
                *fd = -1;
        }
}
static inline void fclosep(FILE **f) {
        if (*f)
                fclose(*f);
}
static inline void strv_freep(char ***v) {
        if (*v) {
                for (char **s = *v; *s; s++)
                        free(*s);
                free(*v);
        }
}

static inline void json_putp(json_object **o) {
        json_object_put(*o);
}

#define _cleanup_json_ __attribute__((cleanup(json_putp)))
#define _cleanup_free_ __attribute__((cleanup(freep)))
#define _cleanup_close_ __attribute__((cleanup(closep)))
#define _cleanup_fclose_ __attribute__((cleanup(fclosep)))
#define _cleanup_strv_ __attribute__((cleanup(strv_freep)))

/* Hand ownership on: return the value and leave the variable empty. */
#define TAKE_PTR(p)                                 \
        ({                                          \
                __typeof__(p) _took_ = (p);         \
                (p) = NULL;                         \
                _took_;                             \
        })
#define TAKE_FD(fd)                                 \
        ({                                          \
                int _took_fd_ = (fd);               \
                (fd) = -1;                          \
                _took_fd_;                          \
        })

/* Milliseconds on the monotonic clock: for deadlines and durations, never for dates. */
static inline long monotonic_ms(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

/* Microseconds on the same clock, for the finer durations that -v shows. */
static inline long long monotonic_us(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return ts.tv_sec * 1000000LL + ts.tv_nsec / 1000;
}

static inline bool streq(const char *a, const char *b) {
        return a && b && strcmp(a, b) == 0;
}
static inline bool streq_ptr(const char *a, const char *b) {
        return (!a && !b) || streq(a, b);
}

#endif
