#include "config.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "crypto/secretbuf.h"

char *secretbuf_printf(const char *fmt, ...) {
        va_list ap;
        char *buf;
        int n;

        va_start(ap, fmt);
        n = vsnprintf(NULL, 0, fmt, ap);
        va_end(ap);
        if (n < 0)
                return NULL;
        buf = malloc((size_t) n + 1);
        if (!buf)
                return NULL;
        va_start(ap, fmt);
        vsnprintf(buf, (size_t) n + 1, fmt, ap);
        va_end(ap);
        return buf;
}

void secretbuf_base64(const unsigned char *in, size_t len, char *out) {
        static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        size_t i = 0;

        for (; i + 2 < len; i += 3) {
                unsigned v = (unsigned) in[i] << 16 | (unsigned) in[i + 1] << 8 | in[i + 2];

                *out++ = alphabet[v >> 18 & 63];
                *out++ = alphabet[v >> 12 & 63];
                *out++ = alphabet[v >> 6 & 63];
                *out++ = alphabet[v & 63];
        }
        if (i < len) {
                unsigned v = (unsigned) in[i] << 16 | (i + 1 < len ? (unsigned) in[i + 1] << 8 : 0);

                *out++ = alphabet[v >> 18 & 63];
                *out++ = alphabet[v >> 12 & 63];
                *out++ = i + 1 < len ? alphabet[v >> 6 & 63] : '=';
                *out++ = '=';
        }
        *out = '\0';
}
