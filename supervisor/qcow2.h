/* The parts of a qcow2 image header that make QEMU open other files (QEMU's
 * docs/interop/qcow2.txt): the backing file name and format, and the external data file. */
#ifndef VMSUP_SUPERVISOR_QCOW2_H
#define VMSUP_SUPERVISOR_QCOW2_H

#include <stdbool.h>

#include "common/error.h"

struct qcow2_header_info {
        unsigned version;     /* 2 or 3 */
        char *backing_file;   /* as written in the header; NULL when it names none */
        char *backing_format; /* from the backing format extension; NULL when absent */
        bool data_file;       /* incompatible feature "external data file", or a data file name */
        char *data_file_name; /* from the data file name extension; NULL when absent */
};

/* Read and check the header of the qcow2 image open on fd (a regular file); path only
 * names it in errors. Every offset and length is checked against the file's size: a
 * header QEMU would refuse, or that runs past the end of the file, is refused (65). */
int qcow2_header_read(int fd, const char *path, struct qcow2_header_info *ret, vmsup_error **err);

/* Open path the way QEMU's file driver does (following symlinks), and read its header. */
int qcow2_header_load(const char *path, struct qcow2_header_info *ret, vmsup_error **err);

void qcow2_header_info_clear(struct qcow2_header_info *info);

#endif
