/* The rules of a migration frame (the wire format and the fields of each type are in
 * migrate/migchan.h): the same for what we send and what we accept. */
#ifndef VMSUP_MIGRATE_FRAME_H
#define VMSUP_MIGRATE_FRAME_H

#include <json-c/json.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "migrate/migchan.h"

#define MIG_WHY_MAX 256 /* the reason a frame breaks the rules */

bool mig_msg_known(unsigned type); /* a type of enum mig_msg */

/* The payload length's limits for type: 0, or -EBADMSG with the reason in out. */
int mig_frame_check_length(unsigned type, size_t len, char out[MIG_WHY_MAX]);

/* 0 when type and payload make a valid frame (*ret_json: the parsed object, when asked
 * for and the type has one); -EBADMSG with the reason in out; -ENOMEM. */
int mig_frame_check(enum mig_msg type, const uint8_t *p, size_t len, json_object **ret_json, char out[MIG_WHY_MAX]);

/* A received ABORT's "error" with its control characters replaced by '?' (it gets
 * logged): 0 or -ENOMEM. */
int mig_frame_sanitize_abort(json_object *o);

#endif
