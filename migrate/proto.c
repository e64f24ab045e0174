#include "config.h"

#include <errno.h>
#include <unistd.h>

#include "common/util.h"
#include "migrate/proto.h"

const char *mig_peer_name(enum mig_peer p) {
        return p == MIG_PEER_SOURCE ? "the source" : "the destination";
}

json_object *mig_hello_new(const char *uuid) {
        char hostname[256] = "";
        json_object *hello = json_object_new_object();

        if (!hello)
                return NULL;
        gethostname(hostname, sizeof(hostname) - 1);
        json_object_object_add(hello, "protocol", json_object_new_int(MIGCHAN_PROTOCOL));
        json_object_object_add(hello, "uuid", json_object_new_string(uuid));
        json_object_object_add(hello, "host", json_object_new_string(hostname[0] ? hostname : "unknown"));
        return hello;
}

json_object *mig_qemu_tls_creds(const char *id, const char *dir, bool server) {
        json_object *o = json_object_new_object();

        if (!o)
                return NULL;
        json_object_object_add(o, "qom-type", json_object_new_string("tls-creds-x509"));
        json_object_object_add(o, "id", json_object_new_string(id));
        json_object_object_add(o, "dir", json_object_new_string(dir));
        json_object_object_add(o, "endpoint", json_object_new_string(server ? "server" : "client"));
        json_object_object_add(o, "verify-peer", json_object_new_boolean(1));
        return o;
}

static json_object *capability(const char *name) {
        json_object *cap = json_object_new_object();

        json_object_object_add(cap, "capability", json_object_new_string(name));
        json_object_object_add(cap, "state", json_object_new_boolean(1));
        return cap;
}

json_object *mig_qemu_capabilities(void) {
        json_object *o = json_object_new_object(), *list = json_object_new_array();

        if (!o || !list) {
                json_object_put(o);
                json_object_put(list);
                return NULL;
        }
        json_object_array_add(list, capability("return-path"));
        json_object_array_add(list, capability("events"));
        json_object_object_add(o, "capabilities", list);
        return o;
}

int mig_frame_unexpected(const struct mig_frame *f, enum mig_peer from, vmsup_error **err) {
        if (f->type == MIG_ABORT) {
                vmsup_fail(err, VMSUP_ERR_UNAVAILABLE, 0, "%s gave up: %s", mig_peer_name(from),
                           mig_json_str(f->json, "error"));
                return -ECONNABORTED;
        }
        return vmsup_fail(err, VMSUP_ERR_DATA, 0, "%s sent an unexpected %s message", mig_peer_name(from),
                          mig_msg_name(f->type));
}

int mig_frame_expect(const struct mig_frame *f, enum mig_msg type, enum mig_peer from, vmsup_error **err) {
        int r;

        if (f->type == type)
                return 0;
        r = mig_frame_unexpected(f, from, err);
        if (r != -ECONNABORTED)
                vmsup_error_prefix(err, "expecting %s", mig_msg_name(type));
        return r;
}

int mig_hello_check(const struct mig_frame *f, const char *uuid, enum mig_peer from, vmsup_error **err) {
        const char *theirs = mig_json_str(f->json, "uuid");

        if (theirs && streq(theirs, uuid))
                return 0;
        return vmsup_fail(err, VMSUP_ERR_DATA, 0, "%s answered for guest %s, not %s", mig_peer_name(from),
                          theirs ?: "(none)", uuid);
}

const char *mig_json_str(json_object *o, const char *key) {
        json_object *v;

        return o && json_object_object_get_ex(o, key, &v) && json_object_is_type(v, json_type_string)
                       ? json_object_get_string(v)
                       : NULL;
}

int64_t mig_json_int(json_object *o, const char *key) {
        json_object *v;

        return o && json_object_object_get_ex(o, key, &v) && json_object_is_type(v, json_type_int)
                       ? json_object_get_int64(v)
                       : 0;
}
