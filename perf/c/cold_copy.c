/* What one core can copy out of a hold larger than its caches: 1518-byte frames read from a
 * 512 MB buffer in order (as a released epoch is), each copied into a small, cache-resident
 * ring of destination buffers (as vhost-user copies into the guest's buffers). Prints frames
 * per second and GB/s read, next to the same copy from a 1 MB source that stays in the cache.
 * Build and run: gcc -O2 perf/c/cold_copy.c -o /tmp/cold_copy && /tmp/cold_copy */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define FRAME 1518
#define STRIDE 2432 /* an mbuf's size in a DPDK pool with 2 MB pages */

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static double run(const uint8_t *src, size_t frames, uint8_t *dst, size_t ring, int passes) {
    volatile uint8_t sink = 0;
    double t = now();
    for (int p = 0; p < passes; p++)
        for (size_t i = 0; i < frames; i++) {
            uint8_t *d = dst + (i % ring) * STRIDE;
            memcpy(d, src + i * STRIDE, FRAME);
            sink ^= d[FRAME - 1];
        }
    (void)sink;
    return (double)frames * passes / (now() - t);
}

int main(void) {
    size_t cold = (512u << 20) / STRIDE, warm = (1u << 20) / STRIDE, ring = 1024;
    uint8_t *src = malloc(cold * STRIDE), *dst = malloc(ring * STRIDE);
    if (!src || !dst)
        return 1;
    memset(src, 1, cold * STRIDE);
    memset(dst, 2, ring * STRIDE);
    double c = run(src, cold, dst, ring, 3);
    double w = run(src, warm, dst, ring, 3 * (int)(cold / warm));
    printf("cold (512 MB source): %.2f Mframes/s, %.2f GB/s read\n", c / 1e6, c * FRAME / 1e9);
    printf("warm (1 MB source):   %.2f Mframes/s, %.2f GB/s read\n", w / 1e6, w * FRAME / 1e9);
    return 0;
}
