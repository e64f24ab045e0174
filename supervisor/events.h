/* The guest's event stream for `vmsup events`: control clients that asked {"cmd": "events"}
 * become subscribers, and each event goes to each of them as one JSON line
 * {"event": NAME, "time": ISO 8601 UTC, "uuid", "name", details...}.
 *
 * A subscriber never slows the supervisor: its lines wait in a bounded queue of its own
 * (EVENTS_QUEUE_LINES lines, EVENTS_QUEUE_BYTES bytes) and go out with non-blocking
 * writes, from the loop while the queue is not empty. What does not fit is dropped and
 * counted; once there is room again the subscriber gets {"event": "LOST", "count": N}
 * in place of what it missed. Subscribers are capped (EVENTS_MAX_SUBSCRIBERS) and do not
 * count against the control connections that read a request. The last EVENTS_HISTORY
 * events are kept, for a subscriber whose request waited while the loop was held.
 *
 * Below the supervisor's other files: it knows the loop and fds, nothing of the guest. */
#ifndef VMSUP_SUPERVISOR_EVENTS_H
#define VMSUP_SUPERVISOR_EVENTS_H

#include <json-c/json.h>
#include <stddef.h>
#include <stdint.h>

#include "common/error.h"
#include "common/evloop.h"

#define EVENTS_MAX_SUBSCRIBERS 16
#define EVENTS_QUEUE_LINES 256
#define EVENTS_QUEUE_BYTES (64 * 1024)
/* The last events kept for subscribers that ask for those since they connected. */
#define EVENTS_HISTORY 32

struct events;

/* The stream of guest uuid (named name) on loop; strings are copied. */
int events_new(struct evloop *loop, const char *uuid, const char *name, struct events **ret, vmsup_error **err);
/* Each subscriber gets what fits in its socket now, then is closed. NULL is fine. */
struct events *events_free(struct events *ev);

/* Take fd (a connected, non-blocking client: closed on every path) as a subscriber; its
 * first line is {"ok": true, "return": hello} (hello taken), then the kept events emitted
 * at or after since_ms (ms since the epoch; < 0: none): the client connected then, and
 * the supervisor may have been busy starting the guest before it took the request. Over
 * the cap: -EBUSY, with fd answered {"ok": false, ...} and closed. */
int events_subscribe(struct events *ev, int fd, json_object *hello, int64_t since_ms, vmsup_error **err);

/* One event to every subscriber: details (taken; NULL: none) are added to the line. ev
 * NULL: nobody listens. */
void events_emit(struct events *ev, const char *event, json_object *details);
/* The same with {"reason": reason} (NULL: no details). */
void events_emit_reason(struct events *ev, const char *event, const char *reason);

size_t events_count(const struct events *ev);

#endif
