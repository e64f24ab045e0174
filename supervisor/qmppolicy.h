/* What `vmsup qmp UUID ...` may pass to a supervised guest's QEMU. The supervisor owns
 * the guest's TPM and its one running copy: commands that snapshot the guest's state
 * or take its TPM away are refused, and a guest that was handed over to another
 * host (its migrated-out marker) takes read-only commands only. Decided by what a command
 * can do, HMP's command lines included. No I/O. */
#ifndef VMSUP_SUPERVISOR_QMPPOLICY_H
#define VMSUP_SUPERVISOR_QMPPOLICY_H

#include <json-c/json.h>
#include <stdbool.h>
#include <stddef.h>

enum qmp_policy {
        QMP_POLICY_ALLOW,
        QMP_POLICY_REFUSED,     /* never through the passthrough (exit 69) */
        QMP_POLICY_HANDED_OVER, /* not while the migrated-out marker exists (exit 75) */
};

/* The verdict for command with args (NULL: none); on a refusal, why (NUL-terminated,
 * cut to why_len) says what and what to do instead. */
enum qmp_policy qmp_policy_check(const char *command, json_object *args, bool handed_over, char *why, size_t why_len);

#endif
