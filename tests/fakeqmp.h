/* A fake QMP server for tests: serves one connection (a socketpair or a unix socket) from a
 * thread and plays a script: the greeting, the commands it expects, replies, events at
 * chosen points, bytes split where the test pauses it, garbage, hang-ups, silence. */
#ifndef VMSUP_TESTS_FAKEQMP_H
#define VMSUP_TESTS_FAKEQMP_H

#include <stddef.h>

enum fakeqmp_op {
        FQ_END = 0,  /* end of script: wait for the client to hang up; anything it sends is a failure */
        FQ_SEND,     /* write text (len bytes when len > 0); "$ID" becomes the last command's id */
        FQ_EXPECT,   /* read one command named text, with arguments equal to the JSON args (NULL: none);
                      * fd_content set: an fd must come with it, holding exactly that */
        FQ_PAUSE,    /* stop until the test calls fakeqmp_resume() */
        FQ_HANGUP,   /* close the connection, then end */
        FQ_SILENCE,  /* answer nothing more; swallow what comes until the client hangs up */
        FQ_FLOOD,    /* write text again and again until the client hangs up */
};

struct fakeqmp_step {
        enum fakeqmp_op op;
        const char *text;
        const char *args;
        const char *fd_content;
        size_t len;
};

#define FAKEQMP_GREETING                                                                                    \
        "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 22, \"minor\": 2, \"major\": 7}, \"package\": "    \
        "\"Debian 1:7.2+dfsg-7+deb12u18+b3\"}, \"capabilities\": [\"oob\"]}}\r\n"
#define FQ_REPLY(json) { FQ_SEND, "{\"return\": " json ", \"id\": $ID}\r\n" }
#define FQ_EVENT(name, data)                                                                                \
        { FQ_SEND, "{\"timestamp\": {\"seconds\": 1700000000, \"microseconds\": 123456}, \"event\": \"" name \
                   "\", \"data\": " data "}\r\n" }
/* greeting, qmp_capabilities, its reply */
#define FQ_HANDSHAKE { FQ_SEND, FAKEQMP_GREETING }, { FQ_EXPECT, "qmp_capabilities" }, FQ_REPLY("{}")

struct fakeqmp;

/* Serve one end of a new socketpair; *ret_client_fd is the other (O_CLOEXEC). */
struct fakeqmp *fakeqmp_start(const struct fakeqmp_step *script, int *ret_client_fd);
/* Listen on path (ready when this returns) and serve the first connection. */
struct fakeqmp *fakeqmp_start_unix(const struct fakeqmp_step *script, const char *path);

/* Block until the script stands at a FQ_PAUSE (all before it written) or has ended. */
void fakeqmp_wait_paused(struct fakeqmp *f);
void fakeqmp_resume(struct fakeqmp *f);

/* Wait for the script to end (10 s at most, then cut it short) and free f. Returns NULL, or
 * what went wrong on the server's side (a surprise command, a missing fd ...): free it. */
char *fakeqmp_finish(struct fakeqmp *f);

#endif
