/* The guest's disk images against its spec: the block graph comes from the spec alone. */
#ifndef VMSUP_SUPERVISOR_DISKIMAGES_H
#define VMSUP_SUPERVISOR_DISKIMAGES_H

#include "common/error.h"
#include "nova/guestspec.h"

/* Read the header of every qcow2 layer of every disk and refuse (65) an image that names
 * a backing file other than the spec's next layer (or any, at the end of the chain), a
 * backing format other than that layer's, or an external data file. */
int disk_images_check(const struct guest_spec *spec, vmsup_error **err);

/* The absolute path QEMU resolves a backing file name written in image's header to
 * (relative names are taken from image's directory), without '.', '..' or repeated '/'. */
char *disk_images_backing_path(const char *image, const char *name);

#endif
