/* A fake HTTP server for tests: a thread on 127.0.0.1 (a free port) that answers each
 * request, one per connection, with the next canned reply of a script (the last one
 * repeats), and records what it was sent. */
#ifndef VMSUP_TESTS_FAKEHTTP_H
#define VMSUP_TESTS_FAKEHTTP_H

#include <stddef.h>

struct fakehttp_reply {
        const char *raw;   /* the whole response; "$URL" becomes the server's URL and
                            * "$LEN" the length of what follows the blank line */
        size_t flood;      /* then this many more body bytes ('A'), or until the client hangs up */
        int hang;          /* read the request, then answer nothing until the client hangs up */
};

/* Reply helpers: status line, headers, body (Content-Length computed). */
#define FAKEHTTP_JSON(status, body)                                                                         \
        { "HTTP/1.1 " status "\r\nContent-Type: application/json\r\nContent-Length: $LEN\r\n"               \
          "Connection: close\r\n\r\n" body }
#define FAKEHTTP_BYTES(status, body)                                                                        \
        { "HTTP/1.1 " status "\r\nContent-Type: application/octet-stream\r\nContent-Length: $LEN\r\n"       \
          "Connection: close\r\n\r\n" body }

struct fakehttp;

struct fakehttp *fakehttp_start(const struct fakehttp_reply *script, size_t n);
const char *fakehttp_url(const struct fakehttp *f); /* "http://127.0.0.1:PORT" */
/* How many requests arrived so far, and the raw text (head and body) of request i. */
size_t fakehttp_count(struct fakehttp *f);
char *fakehttp_request(struct fakehttp *f, size_t i); /* a copy: free it; NULL if none */
/* The body of request i (after the blank line); a copy: free it. */
char *fakehttp_request_body(struct fakehttp *f, size_t i);
void fakehttp_stop(struct fakehttp *f);

#endif
