/* What the installed swtpm and swtpm_setup can do (their --print-capabilities). */
#ifndef VMSUP_TPMSTATE_CAPS_H
#define VMSUP_TPMSTATE_CAPS_H

#include <stdbool.h>

#include "common/error.h"

struct swtpm_caps {
        char *version;   /* "0.7.1", or NULL when not reported */
        char **features; /* NULL-terminated */
};

/* Run `PROGRAM [socket] --print-capabilities` and parse its JSON. As libvirt does, a
 * program that exits non-zero is an old binary with no features (not an error); one that
 * cannot be run, or prints something that is not the expected JSON, is. */
int swtpm_caps_probe(const char *program, bool is_setup, struct swtpm_caps *ret, vmsup_error **err);

/* Parse the JSON text that --print-capabilities prints. */
int swtpm_caps_parse(const char *text, const char *source, struct swtpm_caps *ret, vmsup_error **err);

bool swtpm_caps_has(const struct swtpm_caps *caps, const char *feature);
void swtpm_caps_clear(struct swtpm_caps *caps);

#endif
