/* What both halves of a live migration say and check the same way (docs/migration.md):
 * the HELLO both send first, a peer's ABORT or a frame out of turn, QEMU's TLS object and
 * migration capabilities, and the small JSON reads of the frames. */
#ifndef VMSUP_MIGRATE_PROTO_H
#define VMSUP_MIGRATE_PROTO_H

#include <stdbool.h>
#include <stdint.h>

#include <json-c/json.h>

#include "common/error.h"
#include "migrate/migchan.h"

/* Which end we speak of in messages: "the source" or "the destination". */
enum mig_peer { MIG_PEER_SOURCE, MIG_PEER_DESTINATION };
const char *mig_peer_name(enum mig_peer p);

/* {"protocol": MIGCHAN_PROTOCOL, "uuid": uuid, "host": this host's name}; NULL on ENOMEM. */
json_object *mig_hello_new(const char *uuid);

/* A received frame that must be of type: 0 when it is. The peer's ABORT: -ECONNABORTED,
 * "<peer> gave up: <its error>" (exit 69); another type: "<peer> sent an unexpected TYPE
 * message (expected TYPE)" (exit 65). */
int mig_frame_expect(const struct mig_frame *f, enum mig_msg type, enum mig_peer from, vmsup_error **err);

/* A frame that came when none was expected: the peer's ABORT (-ECONNABORTED, as above)
 * or "<peer> sent an unexpected TYPE message" (exit 65). */
int mig_frame_unexpected(const struct mig_frame *f, enum mig_peer from, vmsup_error **err);

/* A peer's HELLO for guest uuid: 0, or "<peer> answered for guest X, not Y" (exit 65). */
int mig_hello_check(const struct mig_frame *f, const char *uuid, enum mig_peer from, vmsup_error **err);

/* QEMU's migration set-up, alike on both ends. The arguments of object-add for its
 * tls-creds-x509 object id from dir (the server end on the destination, the client end
 * on the source; both verify the peer), and of migrate-set-capabilities: return-path
 * (without it on both sides the source reports success even when the destination failed
 * to load the guest, platform.md) and events (QEMU's MIGRATION events). NULL on ENOMEM. */
json_object *mig_qemu_tls_creds(const char *id, const char *dir, bool server);
json_object *mig_qemu_capabilities(void);

/* The string at key of a JSON object; NULL when missing or not a string. */
const char *mig_json_str(json_object *o, const char *key);
/* The integer at key; 0 when missing or not an integer. */
int64_t mig_json_int(json_object *o, const char *key);

#endif
