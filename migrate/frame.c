#include "config.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "common/vtpm.h"
#include "migrate/frame.h"

#define ABORT_ERROR_MAX 1024
#define HELLO_HOST_MAX 255

#define PROTOCOL_TEXT_(n) #n
#define PROTOCOL_TEXT_X(n) PROTOCOL_TEXT_(n)
#define PROTOCOL_TEXT PROTOCOL_TEXT_X(MIGCHAN_PROTOCOL)

static const char *const msg_names[] = {
        [MIG_HELLO] = "HELLO",       [MIG_PREPARE] = "PREPARE",   [MIG_SECRET] = "SECRET",
        [MIG_READY] = "READY",       [MIG_MIGRATED] = "MIGRATED", [MIG_PREPARED] = "PREPARED",
        [MIG_COMMIT] = "COMMIT",     [MIG_RUNNING] = "RUNNING",   [MIG_ABORT] = "ABORT",
        [MIG_DONE] = "DONE",
};

bool mig_msg_known(unsigned t) {
        return t < ARRAY_SIZE(msg_names) && msg_names[t];
}

const char *mig_msg_name(enum mig_msg t) {
        return mig_msg_known((unsigned) t) ? msg_names[t] : "unknown";
}

/* ---- frame validation: the same rules for what we send and what we accept ---- */

__attribute__((format(printf, 2, 3))) static int why(char out[MIG_WHY_MAX], const char *fmt, ...) {
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(out, MIG_WHY_MAX, fmt, ap);
        va_end(ap);
        return -EBADMSG;
}

/* A field's value for a message: JSON-escaped (no control characters), cut short. */
static void value_text(json_object *v, char *out, size_t n) {
        const char *s = json_object_to_json_string_ext(v, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
        size_t len = s ? strlen(s) : 0;

        if (len < n) {
                snprintf(out, n, "%s", s ? s : "?");
                return;
        }
        len = n - 4;
        while (len > 0 && ((unsigned char) s[len] & 0xc0) == 0x80)
                len--; /* not in the middle of a UTF-8 sequence */
        snprintf(out, n, "%.*s...", (int) len, s);
}

static int bad_field(char out[MIG_WHY_MAX], enum mig_msg type, const char *name, json_object *v, const char *rule) {
        char val[48];

        value_text(v, val, sizeof(val));
        return why(out, "bad field \"%s\" in %s: %s (must be %s)", name, mig_msg_name(type), val, rule);
}

static bool int_in(json_object *v, int64_t min, int64_t max) {
        int64_t n;

        if (!json_object_is_type(v, json_type_int))
                return false;
        n = json_object_get_int64(v);
        /* json-c clamps a value above INT64_MAX (kept as uint64) to INT64_MAX */
        if (n == INT64_MAX && json_object_get_uint64(v) != (uint64_t) INT64_MAX)
                return false;
        return n >= min && n <= max;
}

static bool printable_ascii(const char *s, size_t len) {
        for (size_t i = 0; i < len; i++)
                if (s[i] < 0x20 || s[i] > 0x7e)
                        return false;
        return true;
}

static int check_fields(enum mig_msg type, json_object *o, char out[MIG_WHY_MAX]) {
        const char *missing = NULL;
        json_object *v = NULL;

#define REQUIRE(name, ok, rule)                                            \
        do {                                                               \
                /* v is NULL for a JSON null */                            \
                if (!json_object_object_get_ex(o, name, &v)) {             \
                        missing = name;                                    \
                        goto missing;                                      \
                }                                                          \
                if (!(ok))                                                 \
                        return bad_field(out, type, name, v, rule);        \
        } while (0)
#define IS_STRING_LEN(min, max)                                                                                \
        (json_object_is_type(v, json_type_string) && json_object_get_string_len(v) >= (min) &&                  \
         json_object_get_string_len(v) <= (max))
#define IS_UUID (json_object_is_type(v, json_type_string) && uuid_is_valid(json_object_get_string(v)))

        switch (type) {
        case MIG_HELLO:
                REQUIRE("protocol", int_in(v, MIGCHAN_PROTOCOL, MIGCHAN_PROTOCOL), PROTOCOL_TEXT);
                REQUIRE("uuid", IS_UUID, "a lower-case uuid");
                REQUIRE("host", IS_STRING_LEN(1, HELLO_HOST_MAX) &&
                                        printable_ascii(json_object_get_string(v), json_object_get_string_len(v)),
                        "a host name of 1..255 printable ASCII characters");
                break;
        case MIG_PREPARE:
                REQUIRE("spec", json_object_is_type(v, json_type_object), "an object");
                REQUIRE("secret_uuid", IS_UUID, "a lower-case uuid");
                break;
        case MIG_READY:
                REQUIRE("port", int_in(v, 1, 65535), "an integer 1..65535");
                break;
        case MIG_PREPARED:
                REQUIRE("generation", int_in(v, 0, INT64_MAX), "an integer >= 0");
                break;
        case MIG_ABORT:
                REQUIRE("error", IS_STRING_LEN(1, ABORT_ERROR_MAX), "a text of 1..1024 bytes");
                break;
        default:
                break;
        }
        return 0;
missing:
        return why(out, "missing field \"%s\" in %s", missing, mig_msg_name(type));
#undef REQUIRE
#undef IS_STRING_LEN
#undef IS_UUID
}

static int parse_object(enum mig_msg type, const uint8_t *p, size_t len, json_object **ret, char out[MIG_WHY_MAX]) {
        _cleanup_json_ json_object *o = NULL;
        struct json_tokener *tok;
        enum json_tokener_error jerr;
        size_t end;

        if (memchr(p, 0, len))
                return why(out, "%s payload is not JSON: it contains a NUL byte", mig_msg_name(type));
        tok = json_tokener_new();
        if (!tok)
                return -ENOMEM;
        json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);
        o = json_tokener_parse_ex(tok, (const char *) p, (int) len);
        jerr = json_tokener_get_error(tok);
        end = json_tokener_get_parse_end(tok);
        if (jerr == json_tokener_continue) {
                /* A NUL ends the input: completes a bare number or literal at the end,
                 * and turns a truncated value into "unexpected end of data". */
                o = json_tokener_parse_ex(tok, "", 1);
                jerr = json_tokener_get_error(tok);
                end = len;
        }
        json_tokener_free(tok);
        if (jerr != json_tokener_success)
                return why(out, "%s payload is not JSON: %s", mig_msg_name(type), json_tokener_error_desc(jerr));
        for (; end < len; end++)
                if (!strchr(" \t\r\n", p[end]))
                        return why(out, "%s payload is not JSON: bytes after the value", mig_msg_name(type));
        if (!json_object_is_type(o, json_type_object))
                return why(out, "%s payload is a JSON %s, not an object", mig_msg_name(type),
                           json_type_to_name(json_object_get_type(o)));
        *ret = TAKE_PTR(o);
        return 0;
}

int mig_frame_check_length(unsigned type, size_t len, char out[MIG_WHY_MAX]) {
        if (type == MIG_SECRET && len > MIGCHAN_SECRET_MAX)
                return why(out, "SECRET payload of %zu bytes over the limit of %d bytes", len, MIGCHAN_SECRET_MAX);
        if (len > MIGCHAN_MAX_PAYLOAD)
                return why(out, "%s payload of %zu bytes over the limit of %d bytes", mig_msg_name(type), len,
                           MIGCHAN_MAX_PAYLOAD);
        if (type == MIG_SECRET && len == 0)
                return why(out, "empty SECRET payload");
        return 0;
}

/* 0 when type and payload make a valid frame (*ret_json: the parsed object, when asked
 * for and the type has one); -EBADMSG with the reason in out; -ENOMEM. */
int mig_frame_check(enum mig_msg type, const uint8_t *p, size_t len, json_object **ret_json, char out[MIG_WHY_MAX]) {
        _cleanup_json_ json_object *o = NULL;
        int r;

        if (!mig_msg_known((unsigned) type))
                return why(out, "unknown message type %u", (unsigned) type);
        r = mig_frame_check_length(type, len, out);
        if (r < 0)
                return r;
        if (type == MIG_SECRET) {
                for (size_t i = 0; i < len; i++)
                        if (p[i] < 0x20 || p[i] > 0x7e) /* the byte itself stays out of the message */
                                return why(out, "SECRET payload byte at offset %zu is not printable ASCII", i);
                return 0;
        }
        r = parse_object(type, p, len, &o, out);
        if (r < 0)
                return r;
        r = check_fields(type, o, out);
        if (r < 0)
                return r;
        if (ret_json)
                *ret_json = TAKE_PTR(o);
        return 0;
}

/* The peer's error text gets logged: no control characters from it. */
int mig_frame_sanitize_abort(json_object *o) {
        json_object *v = NULL;
        _cleanup_free_ char *copy = NULL;
        const char *s = json_object_object_get_ex(o, "error", &v) ? json_object_get_string(v) : NULL;
        bool changed = false;

        copy = strdup(s ? s : "");
        if (!copy)
                return -ENOMEM;
        for (char *q = copy; *q; q++)
                if ((unsigned char) *q < 0x20 || *q == 0x7f) {
                        *q = '?';
                        changed = true;
                }
        if (changed) {
                json_object *clean = json_object_new_string(copy);

                if (!clean || json_object_object_add(o, "error", clean) < 0) {
                        json_object_put(clean);
                        return -ENOMEM;
                }
        }
        return 0;
}
