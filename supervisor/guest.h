/* One guest under supervision: start swtpm and QEMU, watch them in one epoll loop, stop
 * and reboot on request, and clean up whatever happens. */
#ifndef VMSUP_SUPERVISOR_GUEST_H
#define VMSUP_SUPERVISOR_GUEST_H

#include "common/error.h"
#include "nova/guestspec.h"
#include "supervisor/hostconfig.h"

struct guest_run_opts {
        const struct host_config *cfg;
        const char *spec_path;
        int token_fd; /* the owner's credential for Barbican (user mode); -1: none. guest_run
                       * takes it: closed once the vTPM secret is read */
        bool new_tpm;  /* a guest whose TPM state is gone gets a new TPM (else refused) */
        bool new_vars; /* a guest whose OVMF VARS are gone gets the template's (else refused) */
        /* `run --incoming`: the destination of a live migration. spec_path is this host's
         * view of the guest (--spec); the spec the source sends must match it. */
        const char *incoming_addr; /* address to listen on; NULL or "": any */
        const char *incoming_port;
        const char *incoming_uuid; /* the guest expected */
        int ready_fd; /* `--ready-fd`: a newline once the guest runs (s6); -1: none. guest_run takes it */
};

/* Run the guest until it ends. Returns VMSUP_ERR_OK when the guest powered off or was
 * stopped on request, VMSUP_ERR_FAILED when QEMU or swtpm died, the error's kind when it
 * cannot start (the error is logged); the command line maps it to the exit status. */
int guest_run(const struct guest_run_opts *opts);

#endif
