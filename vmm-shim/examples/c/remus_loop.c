/*
 * remus_loop.c - a small Remus-style checkpoint loop against epochgate, through the C ABI.
 *
 *   remus_loop SOCKET VM N
 *
 * Connects to epochgate's control socket, adopts VM, starts protection unless the VM is
 * already protected, then N times: fence the open epoch (in a real VMM: pause the VM, copy
 * its dirty state, resume it), "send the checkpoint" (here: nothing) and commit the epoch,
 * which releases its held output. Checkpoint requests epochgate sends meanwhile are printed.
 * Prints one line per step; exits 0 if every step succeeded, 1 otherwise.
 *
 * Build: cc -Wall -Wextra -I vmm-shim/include remus_loop.c target/debug/libvmm_shim.a \
 *           -lpthread -ldl -lm -o remus_loop
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include "epochgate_shim.h"

static const char *reason_name(uint32_t reason)
{
    switch (reason) {
    case EG_REASON_IMMEDIATE_FRAME: return "immediate-frame";
    case EG_REASON_DEFERRAL_EXPIRED: return "deferral-expired";
    case EG_REASON_HIGH_WATER: return "high-water";
    default: return "unknown";
    }
}

/* Runs inside whichever eg_shim_* call read the event. */
static void on_event(const eg_event *ev, void *user)
{
    unsigned *count = user;
    (*count)++;
    if (ev->urgency == EG_URGENCY_NOW)
        printf("event epoch=%" PRIu64 " urgency=now reason=%s\n", ev->epoch,
               reason_name(ev->reason));
    else
        printf("event epoch=%" PRIu64 " urgency=within within_ns=%" PRIu64 " reason=%s\n",
               ev->epoch, ev->within_ns, reason_name(ev->reason));
}

static int fail(const char *what, int rc)
{
    fprintf(stderr, "remus_loop: %s failed (%d): %s\n", what, rc, eg_shim_last_error());
    return 1;
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: %s SOCKET VM N\n", argv[0]);
        return 2;
    }
    char *end = NULL;
    unsigned long rounds = strtoul(argv[3], &end, 10);
    if (*argv[3] == '\0' || *end != '\0') {
        fprintf(stderr, "remus_loop: N must be a number, not \"%s\"\n", argv[3]);
        return 2;
    }

    eg_shim *shim = eg_shim_connect(argv[1], argv[2]);
    if (shim == NULL) {
        fprintf(stderr, "remus_loop: cannot adopt VM %s: %s\n", argv[2], eg_shim_last_error());
        return 1;
    }
    printf("welcome epoch=%" PRIu64 " mode=%u version=%u\n", eg_shim_welcome_epoch(shim),
           eg_shim_welcome_mode(shim), eg_shim_version());

    unsigned events = 0;
    int rc = eg_shim_set_event_callback(shim, on_event, &events);
    if (rc != 0)
        return fail("set_event_callback", rc);

    uint64_t epoch = eg_shim_welcome_epoch(shim);
    if (eg_shim_welcome_mode(shim) != EG_MODE_PROTECTED) {
        rc = eg_shim_protect(shim, &epoch);
        if (rc != 0)
            return fail("protect", rc);
        printf("protected epoch=%" PRIu64 "\n", epoch);
    }

    for (unsigned long i = 0; i < rounds; i++) {
        eg_fenced f;
        rc = eg_shim_fence(shim, epoch, &f);
        if (rc != 0)
            return fail("fence", rc);
        printf("fenced epoch=%" PRIu64 " frames=%" PRIu64 " bytes=%" PRIu64
               " drain_ns=%" PRIu64 "\n",
               f.epoch, f.frames, f.bytes, f.drain_ns);
        /* A real VMM sends the checkpoint of f.epoch here and waits until it is durable. */
        uint64_t released = 0;
        rc = eg_shim_commit(shim, f.epoch, &released);
        if (rc != 0)
            return fail("commit", rc);
        printf("committed epoch=%" PRIu64 " frames=%" PRIu64 "\n", f.epoch, released);
        epoch = f.epoch + 1;
    }

    rc = eg_shim_ping(shim);
    if (rc != 0)
        return fail("ping", rc);
    eg_stats st;
    rc = eg_shim_stats(shim, &st);
    if (rc != 0)
        return fail("stats", rc);
    printf("stats mode=%u open=%" PRIu64 " sealed=%" PRIu64 " committed=%" PRIu64
           " held_frames=%" PRIu64 "\n",
           st.mode, st.open_epoch, st.sealed_epoch, st.committed_epoch, st.held_frames);
    printf("events=%u\n", events);
    eg_shim_close(shim);
    return 0;
}
