//! Cost per frame of a VM's pure core (`hold::vm::VmCore`) on the worker's two paths, next to
//! a baseline in the same run (pushing the same frames into one queue and popping them), so
//! results read as ratios:
//!
//! - **pass-through, direct**: what the poll loop does for a pass-through burst when nothing
//!   waits (count it in, count it out; the frames never enter the queue);
//! - **protected**: every frame received (classified immediate), the epoch fenced, sealed and
//!   committed, and the released frames taken in runs of 32 and counted out, as the worker does
//!   around its TX; frame by frame, and a burst of 32 at a time (`VmCore::receive_burst`).
//!
//! Each iteration moves one epoch of 8192 64-byte frames in bursts of 32; throughput is in
//! frames, so ns/frame is 1000 / (Melem/s). The frames are plain values: this measures the
//! state machine, not the mbufs (`epochgate-perf passthrough --protected` measures those).
//! Run: `cargo bench --bench vm_core` (add `-- --quick` for a short run).

use std::collections::VecDeque;
use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use epochgate::config::{BufferLimits, Mode};
use epochgate::control::Op;
use epochgate::hold::epoch::{Count, Weighed};
use epochgate::hold::policy::{FrameKind, PolicyConfig};
use epochgate::hold::vm::{DrainProof, Outcome, Sink, VmCore, VmSettings};

const EPOCH: u64 = 8192;
const BURST: u64 = 32;
const LEN: u64 = 64;

struct Frame(u64);

impl Weighed for Frame {
    fn bytes(&self) -> u64 {
        LEN
    }
}

/// Takes what the core says and keeps none of it (the worker forwards it to the control
/// thread through a ring).
#[derive(Default)]
struct Discard {
    told: u64,
}

impl Sink for Discard {
    fn tell(&mut self, _session: u64, outcome: Outcome) {
        self.told += u64::from(outcome.is_ok());
    }
    fn fence_drained(&mut self, _ns: u64) {}
    fn commit_on_wire(&mut self, _ns: u64) {}
}

fn core(mode: Mode) -> VmCore<Frame> {
    let mut limits = BufferLimits::default_for(EPOCH as u32, true);
    limits.max_frames = 2 * EPOCH;
    VmCore::new(
        VmSettings {
            mode,
            limits,
            drain: DrainProof::Final,
            policy: PolicyConfig::default(),
            fence_drain_ticks: 1_000_000,
            tsc_hz: 1_000_000_000,
        },
        1,
    )
}

fn baseline(q: &mut VecDeque<Frame>) -> u64 {
    for i in 0..EPOCH {
        q.push_back(Frame(i));
    }
    let mut bytes = 0;
    while let Some(f) = q.pop_front() {
        bytes += black_box(f).bytes();
    }
    bytes
}

fn direct(c: &mut VmCore<Frame>, sink: &mut Discard, now: &mut u64) {
    for _ in 0..EPOCH / BURST {
        *now += 100;
        c.received_direct(BURST, BURST * LEN);
        c.transmitted_direct(BURST, BURST * LEN, *now, sink);
    }
}

/// One epoch through the protected path; its frames are received one by one, or a burst at a
/// time (`VmCore::receive_burst`, what the worker does for a VM's own port).
fn protected(c: &mut VmCore<Frame>, sink: &mut Discard, now: &mut u64, bursts: bool) -> u64 {
    let epoch = c
        .queue()
        .open_epoch()
        .expect("a protected core has an open epoch");
    for b in 0..EPOCH / BURST {
        *now += 100;
        let frames = (0..BURST).map(|i| Frame(b * BURST + i));
        if bursts {
            let whole = Count {
                frames: BURST,
                bytes: BURST * LEN,
            };
            c.receive_burst(frames, whole, LEN, *now, |_| FrameKind::Immediate, sink);
        } else {
            for f in frames {
                c.receive(f, *now, |_| FrameKind::Immediate, sink);
            }
        }
    }
    c.execute(Op::Fence(epoch), 7, *now, sink);
    c.seen_empty(*now, sink);
    c.execute(Op::Commit(epoch), 7, *now, sink);
    let mut sent = 0;
    loop {
        let (run, n) = c.take_run(BURST as usize, u64::MAX);
        let mut frames = 0u64;
        for h in run {
            black_box(h.frame.0);
            frames += 1;
        }
        if frames == 0 {
            break;
        }
        *now += 100;
        c.transmitted(n.frames, n.bytes, *now, sink);
        sent += frames;
    }
    sent
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("vm_core");
    g.throughput(Throughput::Elements(EPOCH));
    g.measurement_time(Duration::from_secs(3));
    let mut q = VecDeque::with_capacity(EPOCH as usize);
    g.bench_function("baseline: push and pop one queue", |b| {
        b.iter(|| baseline(&mut q))
    });
    let (mut pass, mut prot) = (core(Mode::Passthrough), core(Mode::Protected));
    let (mut sink, mut now) = (Discard::default(), 1u64);
    g.bench_function("pass-through, direct path", |b| {
        b.iter(|| direct(&mut pass, &mut sink, &mut now))
    });
    for (name, bursts) in [
        ("protected: receive, fence, commit, release", false),
        ("protected: receive bursts, fence, commit, release", true),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let sent = protected(&mut prot, &mut sink, &mut now, bursts);
                assert_eq!(sent, EPOCH, "every frame of the epoch is released");
            })
        });
    }
    g.finish();
    assert!(prot.agrees(), "the ledger balances after the runs");
}

criterion_group!(benches, bench);
criterion_main!(benches);
