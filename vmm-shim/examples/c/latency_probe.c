/*
 * latency_probe.c - the control path's round trips as a VMM sees them, through the C ABI.
 *
 *   latency_probe SOCKET VM N [PING_MS [GAP_US]]
 *
 * PING_MS is eg_shim_connect_with's ping_interval_ms: 0 (the default) the background pinger at
 * the interval epochgate asks for, as eg_shim_connect does; -1 no pinger (the probe's own calls
 * keep the session alive). Adopts VM, starts protection unless it is already protected, then
 * N times: sleep GAP_US microseconds (default 0), fence the open epoch and commit it, timing
 * each call on CLOCK_MONOTONIC from before the call to its return (the request written,
 * epochgate's control thread and worker, the answer read). Then N pings, back to back.
 * A VMM checkpointing at 40 Hz fences every 25 ms: GAP_US=20000 is that, a fence after the
 * machine sat idle (on a VM, caches and TLBs go cold meanwhile, and every call costs more;
 * scripts/measure-wake-floor.sh GAP_US measures the same on a bare socket).
 * With no traffic on the VM, the fence is "the fence round trip of an idle VM" and the commit
 * is the commit's round trip with nothing to release. Prints one line per measurement:
 *
 *   fence_us n=N p50=.. p90=.. p99=.. max=..
 *   commit_us n=N p50=.. p90=.. p99=.. max=..
 *   ping_us n=N p50=.. p90=.. p99=.. max=..
 *
 * Percentiles are nearest-rank over the N samples (probe_stats.h). Exits 0 if every call
 * succeeded, 1 if one failed (with epochgate's text), 2 on bad arguments.
 * scripts/measure-c-abi.sh runs it against a real epochgate.
 *
 * Build: cc -O2 -Wall -Wextra -I vmm-shim/include latency_probe.c target/release/libvmm_shim.a \
 *           -lpthread -ldl -lm -o latency_probe
 */
#define _POSIX_C_SOURCE 200809L /* clock_gettime under -std=c11 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "epochgate_shim.h"
#include "probe_stats.h"

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int fail(const char *what, int rc)
{
    fprintf(stderr, "latency_probe: %s failed (%d): %s\n", what, rc, eg_shim_last_error());
    return 1;
}

int main(int argc, char **argv)
{
    if (argc < 4 || argc > 6) {
        fprintf(stderr, "usage: %s SOCKET VM N [PING_MS [GAP_US]]\n", argv[0]);
        return 2;
    }
    char *end = NULL;
    unsigned long n = strtoul(argv[3], &end, 10);
    if (*argv[3] == '\0' || *end != '\0' || n == 0 || n > 10000000) {
        fprintf(stderr, "latency_probe: N must be a number from 1 to 10000000, not \"%s\"\n",
                argv[3]);
        return 2;
    }
    long ping_ms = 0;
    if (argc >= 5) {
        ping_ms = strtol(argv[4], &end, 10);
        if (*argv[4] == '\0' || *end != '\0' || ping_ms < -1 || ping_ms > 3600000) {
            fprintf(stderr, "latency_probe: PING_MS must be -1, 0 or a number of ms, not \"%s\"\n",
                    argv[4]);
            return 2;
        }
    }
    long gap_us = 0;
    if (argc == 6) {
        gap_us = strtol(argv[5], &end, 10);
        if (*argv[5] == '\0' || *end != '\0' || gap_us < 0 || gap_us > 10000000) {
            fprintf(stderr,
                    "latency_probe: GAP_US must be a number of us up to 10000000, not \"%s\"\n",
                    argv[5]);
            return 2;
        }
    }
    const struct timespec gap = {gap_us / 1000000, (gap_us % 1000000) * 1000};
    uint64_t *fence = calloc(n, sizeof *fence);
    uint64_t *commit = calloc(n, sizeof *commit);
    uint64_t *ping = calloc(n, sizeof *ping);
    if (fence == NULL || commit == NULL || ping == NULL) {
        fprintf(stderr, "latency_probe: no memory for %lu samples\n", n);
        return 1;
    }

    eg_shim *shim = eg_shim_connect_with(argv[1], argv[2], (int32_t)ping_ms, 0);
    if (shim == NULL) {
        fprintf(stderr, "latency_probe: cannot adopt VM %s: %s\n", argv[2],
                eg_shim_last_error());
        return 1;
    }
    uint64_t epoch = eg_shim_welcome_epoch(shim);
    int rc;
    if (eg_shim_welcome_mode(shim) != EG_MODE_PROTECTED) {
        rc = eg_shim_protect(shim, &epoch);
        if (rc != 0)
            return fail("protect", rc);
    }

    for (unsigned long i = 0; i < n; i++) {
        if (gap_us > 0)
            nanosleep(&gap, NULL);
        eg_fenced f;
        uint64_t released = 0;
        uint64_t t0 = now_ns();
        rc = eg_shim_fence(shim, epoch, &f);
        uint64_t t1 = now_ns();
        if (rc != 0)
            return fail("fence", rc);
        rc = eg_shim_commit(shim, f.epoch, &released);
        uint64_t t2 = now_ns();
        if (rc != 0)
            return fail("commit", rc);
        fence[i] = t1 - t0;
        commit[i] = t2 - t1;
        epoch = f.epoch + 1;
    }
    for (unsigned long i = 0; i < n; i++) {
        uint64_t t0 = now_ns();
        rc = eg_shim_ping(shim);
        uint64_t t1 = now_ns();
        if (rc != 0)
            return fail("ping", rc);
        ping[i] = t1 - t0;
    }
    eg_shim_close(shim);

    report("fence_us", fence, n);
    report("commit_us", commit, n);
    report("ping_us", ping, n);
    free(fence);
    free(commit);
    free(ping);
    return 0;
}
