//! Cost per frame of building egress bursts with the scheduler, next to a baseline in the same
//! run (popping the same frames from one queue with no scheduling) so results read as ratios.
//!
//! Each iteration builds bursts of 32 until 4096 frames have been taken; throughput is in
//! frames, so ns/frame is 1000 / (Melem/s). Run: `cargo bench --bench sched` (add
//! `-- --quick` for a short run).

use std::collections::VecDeque;
use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use epochgate::egress::sched::{Backlog, Bucket, Class, Regulator, SchedConfig, Scheduler};

const FRAMES: usize = 4096;
const BURST: usize = 32;
const HZ: u64 = 2_000_000_000;

struct Queues(Vec<VecDeque<u32>>);

impl Backlog for Queues {
    fn head(&self, vm: usize) -> Option<u32> {
        self.0[vm].front().copied()
    }
}

/// `vms` queues of `FRAMES / vms` frames each, sizes spread over 64..=1518.
fn queues(vms: usize) -> Queues {
    let mut seed = 0x9e37_79b9_u32;
    Queues(
        (0..vms)
            .map(|_| {
                (0..FRAMES / vms)
                    .map(|_| {
                        seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                        64 + (seed >> 8) % 1455
                    })
                    .collect()
            })
            .collect(),
    )
}

/// Builds bursts of 32 with grants, the clock advancing 1 µs per burst, until every queue is
/// empty; returns the frames taken.
fn drain(s: &mut Scheduler, q: &mut Queues, mut now: u64) -> usize {
    let mut taken = 0;
    for _ in 0..FRAMES {
        s.begin(now);
        let mut room = BURST;
        while room > 0 {
            let Some(g) = s.grant(q) else { break };
            let (mut frames, mut bytes) = (0u64, 0u64);
            while (frames as usize) < room && frames < g.frames && bytes < g.bytes {
                let Some(l) = q.0[g.vm].pop_front() else {
                    break;
                };
                frames += 1;
                bytes += u64::from(l);
            }
            s.sent_run(g.vm, frames, bytes);
            room -= frames as usize;
            taken += frames as usize;
        }
        if taken == FRAMES {
            break;
        }
        now += HZ / 1_000_000;
    }
    taken
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("egress burst");
    g.throughput(Throughput::Elements(FRAMES as u64));
    g.measurement_time(Duration::from_secs(3));

    g.bench_function("baseline: pop one queue", |b| {
        b.iter_batched_ref(
            || queues(1),
            |q| {
                let mut n = 0;
                while let Some(l) = q.0[0].pop_front() {
                    n += l as usize;
                }
                black_box(n)
            },
            criterion::BatchSize::SmallInput,
        )
    });

    let cfg = SchedConfig {
        share_ppm: 100_000,
        quantum: 16384,
    };
    g.bench_function("1 pass-through VM, quantum 16384", |b| {
        b.iter_batched_ref(
            || (Scheduler::new(cfg, 1), queues(1)),
            |(s, q)| black_box(drain(s, q, 0)),
            criterion::BatchSize::SmallInput,
        )
    });
    let small = SchedConfig {
        quantum: 1536,
        ..cfg
    };
    g.bench_function("1 pass-through VM, quantum 1536", |b| {
        b.iter_batched_ref(
            || (Scheduler::new(small, 1), queues(1)),
            |(s, q)| black_box(drain(s, q, 0)),
            criterion::BatchSize::SmallInput,
        )
    });
    g.bench_function("8 VMs, both classes, guard active", |b| {
        b.iter_batched_ref(
            || {
                let mut s = Scheduler::new(cfg, 8);
                for vm in 0..4 {
                    s.set_class(vm, Class::Released);
                }
                (s, queues(8))
            },
            |(s, q)| black_box(drain(s, q, 0)),
            criterion::BatchSize::SmallInput,
        )
    });
    g.bench_function("8 VMs, each with a byte and a frame bucket", |b| {
        b.iter_batched_ref(
            || {
                let mut s = Scheduler::new(cfg, 8);
                for vm in 0..8 {
                    // Generous rates: the buckets are consulted, never the bottleneck.
                    s.set_regulator(
                        vm,
                        Some(Regulator {
                            bytes: Some(Bucket::new(10_000_000_000, 1 << 30, HZ, 0)),
                            frames: Some(Bucket::new(100_000_000, 1 << 20, HZ, 0)),
                        }),
                    );
                }
                (s, queues(8))
            },
            |(s, q)| black_box(drain(s, q, 0)),
            criterion::BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
