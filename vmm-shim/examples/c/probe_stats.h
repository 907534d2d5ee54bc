/*
 * probe_stats.h - the percentiles the C probes print (latency_probe.c, frame_probe.c).
 *
 * report() sorts the samples (nanoseconds) and prints one line,
 *   WHAT n=N p50=.. p90=.. p99=.. max=..
 * in microseconds. Percentiles are nearest-rank: the smallest sample with at least p% of the
 * samples at or below it.
 */
#ifndef EG_PROBE_STATS_H
#define EG_PROBE_STATS_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

static int probe_cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

static uint64_t probe_rank(const uint64_t *sorted, unsigned long n, unsigned p)
{
    unsigned long k = (n * p + 99) / 100;
    return sorted[k == 0 ? 0 : k - 1];
}

static void report(const char *what, uint64_t *ns, unsigned long n)
{
    qsort(ns, n, sizeof ns[0], probe_cmp_u64);
    printf("%s n=%lu p50=%.1f p90=%.1f p99=%.1f max=%.1f\n", what, n, probe_rank(ns, n, 50) / 1e3,
           probe_rank(ns, n, 90) / 1e3, probe_rank(ns, n, 99) / 1e3, ns[n - 1] / 1e3);
}

#endif
