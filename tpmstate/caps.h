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

/* swtpm_caps_probe(program, false, ...) once per installed binary: the JSON swtpm printed
 * is kept in cache_dir/swtpm-caps.cache with the identity of the binary and of the
 * libtpms the loader would give it, and taken from there while both stay the same. A
 * cache that is missing, stale, malformed, not owned by us or writable by others is
 * probed again and rewritten (0600, atomically); a cache that cannot be read or written
 * is never an error. cache_dir NULL: probe. */
int swtpm_caps_probe_cached(const char *program, const char *cache_dir, struct swtpm_caps *ret, vmsup_error **err);

/* Parse the JSON text that --print-capabilities prints. */
int swtpm_caps_parse(const char *text, const char *source, struct swtpm_caps *ret, vmsup_error **err);

bool swtpm_caps_has(const struct swtpm_caps *caps, const char *feature);
void swtpm_caps_clear(struct swtpm_caps *caps);

#endif
