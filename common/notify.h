/* Telling the service manager how the supervisor is doing: systemd's notify protocol
 * (sd_notify(3): "READY=1", "STATUS=...", "STOPPING=1") on the datagram socket that
 * $NOTIFY_SOCKET names, and s6's readiness fd (a newline on an fd, then close). */
#ifndef VMSUP_COMMON_NOTIFY_H
#define VMSUP_COMMON_NOTIFY_H

#include "common/error.h"

struct notify_socket;

/* The socket $NOTIFY_SOCKET names: an AF_UNIX path ("/...") or an abstract address
 * ("@..."). The variable is removed from the environment either way, so that no child
 * inherits it. *ret is NULL when it is not set (no service manager listens). A value that
 * is no such address is VMSUP_ERR_CONFIG, naming it. */
int notify_socket_from_env(struct notify_socket **ret, vmsup_error **err);

/* One datagram of newline-separated assignments ("READY=1\nSTATUS=running"); NULL n: 0. */
int notify_socket_send(struct notify_socket *n, const char *assignments, vmsup_error **err);

/* The address, as given, for messages. */
const char *notify_socket_address(const struct notify_socket *n);

struct notify_socket *notify_socket_free(struct notify_socket *n);

/* --ready-fd: fd must be open for writing. Returns 0, or -EBADF (not open) / -EACCES (not
 * writable) for the caller to name the option. */
int notify_ready_fd_check(int fd);

/* s6's convention: one newline on fd, then close it. */
int notify_ready_fd_signal(int fd, vmsup_error **err);

#endif
