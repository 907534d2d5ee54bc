/* The machine's floor for epochgate's control-path latencies: what one thread waking another
 * costs here, on the same core and across cores, beside a cross-core hand-over through shared
 * memory (what a polling thread pays) and the lateness of a timed wake-up.
 *
 * A checkpoint request travels worker (its own core) -> control thread -> VMM; every wake-up
 * of a sleeping thread on another core costs at least the cross-core figure below. Built and
 * run by scripts/measure-wake-floor.sh.
 *
 * `wake-floor GAP_US` measures only the socket round trips, GAP_US microseconds apart (500
 * samples): what the same exchange costs after the machine sat idle that long, as a VMM's
 * fence does at 40 Hz (GAP_US 20000). On a VM, caches and TLBs go cold meanwhile. */
#define _GNU_SOURCE
#include <pthread.h>
#include <poll.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define N 20000

static double now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e9 + t.tv_nsec;
}

static void pin(int cpu) {
    cpu_set_t s;
    CPU_ZERO(&s);
    CPU_SET(cpu, &s);
    if (pthread_setaffinity_np(pthread_self(), sizeof s, &s) != 0) {
        fprintf(stderr, "wake_floor: cannot pin to cpu %d\n", cpu);
        exit(2);
    }
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void report(const char *what, double *v, int n, double scale) {
    qsort(v, n, sizeof *v, cmp);
    printf("%-52s p50 %8.2f us   p99 %8.2f us   max %9.2f us\n", what, v[n / 2] * scale / 1e3,
           v[n * 99 / 100] * scale / 1e3, v[n - 1] * scale / 1e3);
}

static int efa, efb, echo_cpu;
static volatile int flag_a, flag_b;

static void *echo_eventfd(void *x) {
    (void)x;
    pin(echo_cpu);
    uint64_t v;
    for (;;) {
        if (read(efa, &v, 8) != 8 || write(efb, &v, 8) != 8)
            return NULL;
    }
}

static void *echo_spin(void *x) {
    (void)x;
    pin(echo_cpu);
    for (;;) {
        while (!flag_a)
            ;
        flag_a = 0;
        flag_b = 1;
    }
    return NULL;
}

static int sv[2];

static void *echo_socket(void *x) {
    (void)x;
    pin(echo_cpu);
    char b[64];
    for (;;) {
        ssize_t n = recv(sv[1], b, sizeof b, 0);
        if (n <= 0 || send(sv[1], b, (size_t)n, 0) != n)
            return NULL;
    }
}

static double v[N];
/* The pause between socket round trips, and how many are taken. */
static long gap_us = 50;
static int samples = N;

/* A 16-byte message and its answer over a SEQPACKET socket pair, as a VMM's call and
 * epochgate's control thread exchange them: the least a call through the shim can take. */
static void socket_rtt(int cpu_a, int cpu_b, const char *what) {
    if (socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv) != 0)
        exit(1);
    echo_cpu = cpu_b;
    pthread_t t;
    pthread_create(&t, NULL, echo_socket, NULL);
    pin(cpu_a);
    char b[64] = {0};
    for (int i = 0; i < samples; i++) {
        double a = now_ns();
        if (send(sv[0], b, 16, 0) != 16 || recv(sv[0], b, sizeof b, 0) != 16)
            exit(1);
        v[i] = now_ns() - a;
        usleep((useconds_t)gap_us);
    }
    report(what, v, samples, 1.0);
    close(sv[0]);
    pthread_join(t, NULL);
    close(sv[1]);
}

static void eventfd_rtt(int cpu_a, int cpu_b, const char *what) {
    efa = eventfd(0, 0);
    efb = eventfd(0, 0);
    echo_cpu = cpu_b;
    pthread_t t;
    pthread_create(&t, NULL, echo_eventfd, NULL);
    pin(cpu_a);
    uint64_t one = 1;
    for (int i = 0; i < N; i++) {
        double a = now_ns();
        if (write(efa, &one, 8) != 8 || read(efb, &one, 8) != 8)
            exit(1);
        v[i] = now_ns() - a;
        usleep(50); /* let both threads go back to sleep, as a control path does */
    }
    /* One wake-up is half a round trip. */
    report(what, v, N, 0.5);
    pthread_cancel(t);
    pthread_join(t, NULL);
    close(efa);
    close(efb);
}

int main(int argc, char **argv) {
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    if (argc > 1) {
        char *end = NULL;
        gap_us = strtol(argv[1], &end, 10);
        if (*argv[1] == '\0' || *end != '\0' || gap_us < 0 || gap_us > 1000000) {
            fprintf(stderr,
                    "wake-floor: GAP_US must be a number of us up to 1000000, not \"%s\"\n",
                    argv[1]);
            return 2;
        }
        samples = 500;
        printf("cpus online: %ld; %d samples each, %ld us apart\n", cpus, samples, gap_us);
        socket_rtt(0, 0, "socket message and answer (round trip), same core");
        if (cpus > 1)
            socket_rtt(0, 1, "socket message and answer (round trip), other core");
        return 0;
    }
    printf("cpus online: %ld; %d samples each\n", cpus, N);
    eventfd_rtt(0, 0, "wake-up of a sleeping thread, same core");
    socket_rtt(0, 0, "socket message and answer (round trip), same core");
    if (cpus > 1) {
        eventfd_rtt(0, 1, "wake-up of a sleeping thread, other core");
        socket_rtt(0, 1, "socket message and answer (round trip), other core");
        echo_cpu = 1;
        pthread_t t;
        pthread_create(&t, NULL, echo_spin, NULL);
        pin(0);
        for (int i = 0; i < N; i++) {
            double a = now_ns();
            flag_a = 1;
            while (!flag_b)
                ;
            flag_b = 0;
            v[i] = now_ns() - a;
        }
        report("hand-over to a polling thread, other core", v, N, 0.5);
        /* The spinner is left to exit with the process. */
    }
    prctl(PR_SET_TIMERSLACK, 1000UL);
    for (int i = 0; i < 2000; i++) {
        struct timespec ts = {0, 1000000};
        double a = now_ns();
        ppoll(NULL, 0, &ts, NULL);
        v[i] = now_ns() - a - 1e6;
    }
    report("lateness of a timed wake-up (1 ms, 1 us slack)", v, 2000, 1.0);
    return 0;
}
