/*
 * frame_probe.c - a guest's frame through epochgate as a VMM sees it, through the C ABI:
 * how soon the checkpoint request comes, and how soon after the commit the frame is on the
 * wire. It also checks output commit from outside: no frame is on the wire before its commit.
 *
 *   frame_probe SOCKET VM N IN_IF OUT_IF [GAP_US]
 *
 * IN_IF is the kernel side of the VM's port (a tap epochgate reads as `net_tap0,iface=IN_IF`)
 * and OUT_IF the kernel side of its egress; root only (AF_PACKET). Adopts VM, starts protection
 * unless it is already protected, then N times:
 *
 *   0. sleeps GAP_US microseconds (default 0; 20000 is a guest that sends once per 40 Hz epoch,
 *      to a machine that sat idle meanwhile);
 *   1. sends one UDP frame into IN_IF (it is "the guest's") and waits for the checkpoint
 *      request it causes: request_us, from before the send to eg_shim_next_event's return
 *      (the kernel's tap, epochgate's worker and control thread, the shim);
 *   2. fences the epoch (it must hold the frame), checks the frame is not on OUT_IF;
 *   3. commits, and waits for the frame on OUT_IF: commit_first_us, from before the
 *      eg_shim_commit call to the kernel's receive timestamp of the frame on OUT_IF
 *      (SO_TIMESTAMPNS), and commit_us, the commit's round trip.
 *
 * Prints `request_us`, `commit_first_us` and `commit_us` lines like latency_probe.c
 * (probe_stats.h). Exits 0 if every step succeeded, 1 on a failure or an output commit
 * violation (a frame seen on OUT_IF before its commit), 2 on bad arguments.
 * scripts/measure-frame-path.sh makes the taps and runs it against a real epochgate.
 *
 * Build: cc -O2 -Wall -Wextra -I vmm-shim/include frame_probe.c target/release/libvmm_shim.a \
 *           -lpthread -ldl -lm -o frame_probe
 */
#define _GNU_SOURCE /* struct timespec in SCM_TIMESTAMPNS, AF_PACKET */
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "epochgate_shim.h"
#include "probe_stats.h"

/* What marks the probe's frames (in the UDP payload), so nothing else on OUT_IF counts. */
static const char MAGIC[8] = {'E', 'G', 'P', 'R', 'O', 'B', 'E', '1'};
enum { FRAME_LEN = 60, PAYLOAD = 42, WAIT_MS = 2000 };

static uint64_t ns_of(const struct timespec *ts)
{
    return (uint64_t)ts->tv_sec * 1000000000u + (uint64_t)ts->tv_nsec;
}

static uint64_t now_ns(clockid_t clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return ns_of(&ts);
}

static int fail(const char *what, int rc)
{
    fprintf(stderr, "frame_probe: %s failed (%d): %s\n", what, rc, eg_shim_last_error());
    return 1;
}

static int fail_errno(const char *what)
{
    fprintf(stderr, "frame_probe: %s: %s\n", what, strerror(errno));
    return 1;
}

static uint16_t ip_checksum(const uint8_t *h, size_t len)
{
    uint32_t sum = 0;
    for (size_t i = 0; i < len; i += 2)
        sum += (uint32_t)(h[i] << 8 | h[i + 1]);
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)~sum;
}

/* A 60-byte UDP frame from 52:54:00:00:00:42 (10.99.0.2) to 02:00:00:00:00:fe (10.99.0.1),
 * payload MAGIC + seq. The destination MAC is nobody's on this host, so the kernel on OUT_IF
 * takes it for another host's and does not answer it. */
static void make_frame(uint8_t *f, uint64_t seq)
{
    static const uint8_t dst[6] = {0x02, 0, 0, 0, 0, 0xfe};
    static const uint8_t src[6] = {0x52, 0x54, 0, 0, 0, 0x42};
    memset(f, 0, FRAME_LEN);
    memcpy(f, dst, 6);
    memcpy(f + 6, src, 6);
    f[12] = 0x08; /* IPv4 */
    uint8_t *ip = f + 14;
    ip[0] = 0x45;
    uint16_t tot = 20 + 8 + 18;
    ip[2] = (uint8_t)(tot >> 8);
    ip[3] = (uint8_t)tot;
    ip[8] = 64;
    ip[9] = 17; /* UDP */
    const uint8_t a[4] = {10, 99, 0, 2}, b[4] = {10, 99, 0, 1};
    memcpy(ip + 12, a, 4);
    memcpy(ip + 16, b, 4);
    uint16_t c = ip_checksum(ip, 20);
    ip[10] = (uint8_t)(c >> 8);
    ip[11] = (uint8_t)c;
    uint8_t *udp = ip + 20;
    udp[0] = 0x9c; /* ports 40000 -> 40001 */
    udp[1] = 0x40;
    udp[2] = 0x9c;
    udp[3] = 0x41;
    udp[5] = 8 + 18; /* length; checksum 0: none */
    memcpy(udp + 8, MAGIC, sizeof MAGIC);
    memcpy(udp + 16, &seq, sizeof seq);
}

/* The probe frame's sequence number, or -1 if `f` is not one of the probe's frames. */
static int64_t probe_seq(const uint8_t *f, ssize_t len)
{
    if (len < 14 + 20 + 8 + 16 || f[12] != 0x08 || f[13] != 0 || f[14 + 9] != 17)
        return -1;
    const uint8_t *pl = f + 14 + 20 + 8;
    if (memcmp(pl, MAGIC, sizeof MAGIC) != 0)
        return -1;
    uint64_t seq;
    memcpy(&seq, pl + 8, sizeof seq);
    return (int64_t)seq;
}

static int packet_socket(const char *ifname, int proto, int *ifindex)
{
    int fd = socket(AF_PACKET, SOCK_RAW, htons((uint16_t)proto));
    if (fd < 0)
        return -1;
    struct sockaddr_ll sll = {0};
    sll.sll_family = AF_PACKET;
    sll.sll_protocol = htons((uint16_t)proto);
    sll.sll_ifindex = (int)if_nametoindex(ifname);
    if (sll.sll_ifindex == 0 || bind(fd, (struct sockaddr *)&sll, sizeof sll) != 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    *ifindex = sll.sll_ifindex;
    return fd;
}

/* Reads the next probe frame from `rx` within `wait_ms` (0: only what is there now): its
 * sequence number (-1: none) and the kernel's receive time (CLOCK_REALTIME) in *at. */
static int64_t next_probe_frame(int rx, int wait_ms, uint64_t *at)
{
    uint8_t buf[2048];
    char ctl[256];
    uint64_t until = now_ns(CLOCK_MONOTONIC) + (uint64_t)wait_ms * 1000000u;
    for (;;) {
        struct iovec iov = {buf, sizeof buf};
        struct sockaddr_ll from;
        struct msghdr m = {0};
        m.msg_name = &from;
        m.msg_namelen = sizeof from;
        m.msg_iov = &iov;
        m.msg_iovlen = 1;
        m.msg_control = ctl;
        m.msg_controllen = sizeof ctl;
        ssize_t n = recvmsg(rx, &m, MSG_DONTWAIT);
        if (n < 0) {
            if (errno != EAGAIN && errno != EINTR)
                return -1;
            uint64_t t = now_ns(CLOCK_MONOTONIC);
            if (t >= until)
                return -1;
            struct pollfd p = {rx, POLLIN, 0};
            poll(&p, 1, (int)((until - t + 999999) / 1000000));
            continue;
        }
        /* Only what arrived on OUT_IF from epochgate, not what the kernel sent out of it. */
        if (from.sll_pkttype == PACKET_OUTGOING)
            continue;
        int64_t seq = probe_seq(buf, n);
        if (seq < 0)
            continue;
        *at = 0;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c != NULL; c = CMSG_NXTHDR(&m, c)) {
            if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPNS) {
                struct timespec ts;
                memcpy(&ts, CMSG_DATA(c), sizeof ts);
                *at = ns_of(&ts);
            }
        }
        if (*at == 0)
            *at = now_ns(CLOCK_REALTIME);
        return seq;
    }
}

int main(int argc, char **argv)
{
    if (argc != 6 && argc != 7) {
        fprintf(stderr, "usage: %s SOCKET VM N IN_IF OUT_IF [GAP_US]\n", argv[0]);
        return 2;
    }
    char *end = NULL;
    unsigned long n = strtoul(argv[3], &end, 10);
    if (*argv[3] == '\0' || *end != '\0' || n == 0 || n > 10000000) {
        fprintf(stderr, "frame_probe: N must be a number from 1 to 10000000, not \"%s\"\n",
                argv[3]);
        return 2;
    }
    long gap_us = 0;
    if (argc == 7) {
        gap_us = strtol(argv[6], &end, 10);
        if (*argv[6] == '\0' || *end != '\0' || gap_us < 0 || gap_us > 10000000) {
            fprintf(stderr,
                    "frame_probe: GAP_US must be a number of us up to 10000000, not \"%s\"\n",
                    argv[6]);
            return 2;
        }
    }
    const struct timespec gap = {gap_us / 1000000, (gap_us % 1000000) * 1000};
    int in_index, out_index;
    int tx = packet_socket(argv[4], 0, &in_index);
    if (tx < 0)
        return fail_errno(argv[4]);
    int rx = packet_socket(argv[5], ETH_P_ALL, &out_index);
    if (rx < 0)
        return fail_errno(argv[5]);
    int on = 1;
    if (setsockopt(rx, SOL_SOCKET, SO_TIMESTAMPNS, &on, sizeof on) != 0)
        return fail_errno("SO_TIMESTAMPNS");

    uint64_t *request = calloc(n, sizeof *request);
    uint64_t *first = calloc(n, sizeof *first);
    uint64_t *commit = calloc(n, sizeof *commit);
    if (request == NULL || first == NULL || commit == NULL) {
        fprintf(stderr, "frame_probe: no memory for %lu samples\n", n);
        return 1;
    }
    eg_shim *shim = eg_shim_connect(argv[1], argv[2]);
    if (shim == NULL) {
        fprintf(stderr, "frame_probe: cannot adopt VM %s: %s\n", argv[2], eg_shim_last_error());
        return 1;
    }
    uint64_t epoch = eg_shim_welcome_epoch(shim);
    int rc;
    if (eg_shim_welcome_mode(shim) != EG_MODE_PROTECTED) {
        rc = eg_shim_protect(shim, &epoch);
        if (rc != 0)
            return fail("protect", rc);
    }
    struct sockaddr_ll to = {0};
    to.sll_family = AF_PACKET;
    to.sll_ifindex = in_index;
    to.sll_halen = 6;
    uint64_t at;
    /* Nothing of an earlier run is counted. */
    while (next_probe_frame(rx, 0, &at) >= 0) {
    }

    for (unsigned long i = 0; i < n; i++) {
        if (gap_us > 0)
            nanosleep(&gap, NULL);
        uint8_t f[FRAME_LEN];
        make_frame(f, i);
        memcpy(to.sll_addr, f, 6);
        uint64_t t0 = now_ns(CLOCK_MONOTONIC);
        if (sendto(tx, f, sizeof f, 0, (struct sockaddr *)&to, sizeof to) != (ssize_t)sizeof f)
            return fail_errno("sending into IN_IF");
        eg_event ev;
        for (;;) {
            rc = eg_shim_next_event(shim, WAIT_MS, &ev);
            if (rc < 0)
                return fail("next_event", rc);
            if (rc == 0) {
                fprintf(stderr, "frame_probe: frame %lu: no checkpoint request within %d ms\n",
                        i, WAIT_MS);
                return 1;
            }
            if (ev.epoch == epoch)
                break; /* an older epoch's request is stale: its checkpoint happened */
        }
        request[i] = now_ns(CLOCK_MONOTONIC) - t0;
        if (ev.reason != EG_REASON_IMMEDIATE_FRAME) {
            fprintf(stderr, "frame_probe: frame %lu: the request's reason is %u, not an "
                            "immediate frame\n", i, ev.reason);
            return 1;
        }
        eg_fenced fenced;
        rc = eg_shim_fence(shim, epoch, &fenced);
        if (rc != 0)
            return fail("fence", rc);
        if (fenced.frames < 1) {
            fprintf(stderr, "frame_probe: frame %lu caused the request of epoch %" PRIu64
                            " but the fence sealed no frame\n", i, epoch);
            return 1;
        }
        int64_t early = next_probe_frame(rx, 0, &at);
        if (early >= 0) {
            fprintf(stderr, "frame_probe: OUTPUT COMMIT VIOLATION: frame %" PRId64
                            " was on %s before epoch %" PRIu64 " committed\n",
                    early, argv[5], epoch);
            return 1;
        }
        uint64_t c0 = now_ns(CLOCK_REALTIME), m0 = now_ns(CLOCK_MONOTONIC);
        uint64_t released = 0;
        rc = eg_shim_commit(shim, epoch, &released);
        commit[i] = now_ns(CLOCK_MONOTONIC) - m0;
        if (rc != 0)
            return fail("commit", rc);
        int64_t seq = next_probe_frame(rx, WAIT_MS, &at);
        if (seq != (int64_t)i) {
            fprintf(stderr, "frame_probe: after the commit of epoch %" PRIu64 " (%" PRIu64
                            " frames released) %s got %s %" PRId64 ", not frame %lu\n",
                    epoch, released, argv[5], seq < 0 ? "nothing, seq" : "frame", seq, i);
            return 1;
        }
        if (at < c0) {
            fprintf(stderr, "frame_probe: OUTPUT COMMIT VIOLATION: frame %lu reached %s %" PRIu64
                            " ns before the commit of epoch %" PRIu64 " was sent\n",
                    i, argv[5], c0 - at, epoch);
            return 1;
        }
        first[i] = at - c0;
        epoch = fenced.epoch + 1;
    }
    eg_shim_close(shim);
    close(tx);
    close(rx);

    report("request_us", request, n);
    report("commit_first_us", first, n);
    report("commit_us", commit, n);
    free(request);
    free(first);
    free(commit);
    return 0;
}
