//! The traffic process (`epochgate-perf traffic PLAN`): one DPDK process, one lcore, that
//! generates every simulated VM's frames on virtio-user ports, receives what comes out of the
//! system under test on other virtio-user ports, and checks every frame it receives
//! (`check.rs`). The VMM simulators (`sim.rs`) run as threads of this process, so the frames'
//! TSC stamps, the fence boundaries and the commit times all come from one clock.
//!
//! One loop iteration: carry out pause / resume requests of the simulators; top each TX port's
//! burst up with new frames (round robin over the port's VMs, within each VM's rate) and
//! transmit; receive on every RX port, read the TSC, take the simulators' records, check each
//! frame. Frames the TX ring did not take stay staged; when a VM is paused, its staged frames
//! are freed and its sequence number rolled back, so "sent before the fence" is exact.

use crate::check::{Checker, Seen};
use crate::plan::{Dist, Plan, Timeline, TrafficResult, VmResult};
use crate::sim::{Sim, SimEvent, VmShared};
use crate::wire::Stamp;
use anyhow::{bail, Context, Result};
use arrayvec::ArrayVec;
use crossbeam::channel::{Receiver, TryRecvError};
use epochgate::dpdk::{self, tsc, Burst, Mbuf, Mempool, Port, PortConf, RxQueue, TxQueue, BURST};
use hdrhistogram::Histogram;
use std::sync::atomic::{fence, AtomicBool, Ordering::*};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Set on SIGINT/SIGTERM: stop generating now, finish the run as at its planned end.
pub static EARLY_STOP: AtomicBool = AtomicBool::new(false);

struct TxPort {
    q: TxQueue,
    staged: Burst,
    /// (vm, seq) of each staged frame, in the same order.
    tags: ArrayVec<(u16, u32), BURST>,
    vms: Vec<u16>,
    rr: usize,
}

struct GenVm {
    templates: Vec<Vec<u8>>,
    /// Next sequence number to assign (from 1).
    next_seq: u32,
    /// Last sequence number the TX ring took.
    acked: u32,
    acked_bytes: u64,
    /// Ticks per frame at the planned rate.
    ticks_per_frame: Option<f64>,
    /// Frames of the rate the VM did not send (it was paused or its port full).
    rate_skip: u64,
    shared: Option<Arc<VmShared>>,
    /// The pause ticket carried out last (0: running).
    paused: u64,
    lat: Histogram<u64>,
    rx_bytes: u64,
    // The measured window.
    win_tx0: u32,
    win_tx1: u32,
    win_rx: u64,
    win_rx_bytes: u64,
    // From the simulator.
    fences: u64,
    fence_rtt: Histogram<u64>,
    paused_ns: u64,
    requests: u64,
    request_lat: Histogram<u64>,
    sim_error: Option<String>,
    sim_done: bool,
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000_000, 3).expect("valid histogram bounds")
}

fn start_port(eal: &dpdk::Eal, spec: &str, pool: &Mempool) -> Result<(Port, RxQueue, TxQueue)> {
    let name = spec.split(',').next().unwrap_or(spec);
    let conf = PortConf {
        rx_queues: 1,
        tx_queues: 1,
        rx_ring: 1024,
        tx_ring: 1024,
    };
    let (port, mut rx, mut tx) = Port::start(eal, name, pool, conf)?;
    Ok((
        port,
        rx.pop().context("no rx queue")?,
        tx.pop().context("no tx queue")?,
    ))
}

pub fn run(plan: &Plan) -> Result<TrafficResult> {
    if plan.vms.len() > usize::from(u16::MAX) {
        bail!("at most {} VMs", u16::MAX);
    }
    let mem_mb = 256 + u64::from(plan.mbufs) * 3 / 1024;
    let mut args: Vec<String> = [
        "epochgate-perf",
        "-l",
        "0",
        "--no-huge",
        "-m",
        &mem_mb.to_string(),
        "--no-pci",
        "--file-prefix",
        &plan.file_prefix,
        "--log-level",
        "lib.eal:error",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for p in plan.tx_ports.iter().chain(&plan.rx_ports) {
        args.push("--vdev".into());
        args.push(p.clone());
    }
    let eal = dpdk::init(&args).context("starting the traffic process's EAL")?;
    let hz = dpdk::tsc_hz(eal);
    let pool = Mempool::create(eal, "perf_pool", plan.mbufs, 256)?;
    let mut ports = Vec::new();
    let mut tx_ports = Vec::new();
    for spec in &plan.tx_ports {
        let (p, _rx, q) = start_port(eal, spec, &pool)?;
        ports.push(p);
        tx_ports.push(TxPort {
            q,
            staged: Burst::new(),
            tags: ArrayVec::new(),
            vms: Vec::new(),
            rr: 0,
        });
    }
    let mut rx_queues = Vec::new();
    for spec in &plan.rx_ports {
        let (p, q, _tx) = start_port(eal, spec, &pool)?;
        ports.push(p);
        rx_queues.push(q);
    }
    let t_link = Instant::now();
    while !ports.iter().all(|p| p.link_up()) {
        if t_link.elapsed() > Duration::from_secs(20) {
            let down: Vec<&str> = ports
                .iter()
                .filter(|p| !p.link_up())
                .map(|p| p.name())
                .collect();
            bail!("links still down after 20 s: {down:?} (is the system under test serving them?)");
        }
        std::thread::sleep(Duration::from_millis(5));
    }

    let stop = Arc::new(AtomicBool::new(false));
    let (ev_tx, ev_rx) = crossbeam::channel::unbounded();
    let mut vms = Vec::new();
    let mut sims = Vec::new();
    for (i, v) in plan.vms.iter().enumerate() {
        let i16 = i as u16;
        let port = tx_ports
            .get_mut(v.port)
            .with_context(|| format!("vm {}: no tx port {}", v.name, v.port))?;
        port.vms.push(i16);
        let shared = v.sim.map(|_| Arc::new(VmShared::default()));
        if let (Some(sp), Some(sh)) = (v.sim, &shared) {
            let control = plan
                .control
                .clone()
                .context("protected VMs need the control socket")?;
            sims.push(
                Sim {
                    vm: i16,
                    name: v.name.clone(),
                    plan: sp,
                    control,
                    shared: sh.clone(),
                    stop: stop.clone(),
                    events: ev_tx.clone(),
                    tsc_hz: hz,
                }
                .spawn(),
            );
        }
        vms.push(GenVm {
            templates: v.profile.templates(i16, v.mac),
            next_seq: 1,
            acked: 0,
            acked_bytes: 0,
            ticks_per_frame: v.rate_pps.map(|r| {
                if r > 0.0 {
                    hz as f64 / r
                } else {
                    f64::INFINITY
                }
            }),
            rate_skip: 0,
            shared,
            paused: 0,
            lat: hist(),
            rx_bytes: 0,
            win_tx0: 0,
            win_tx1: 0,
            win_rx: 0,
            win_rx_bytes: 0,
            fences: 0,
            fence_rtt: hist(),
            paused_ns: 0,
            requests: 0,
            request_lat: hist(),
            sim_error: None,
            sim_done: v.sim.is_none(),
        });
    }
    drop(ev_tx);
    // The generator spins; on a machine where it shares core 0 with epochgate's control thread
    // and the simulated VMMs, it must not delay them: this thread (only) runs SCHED_IDLE, so
    // every other thread on the core preempts it at once.
    if plan.idle_priority {
        lower_priority();
    }
    let protected: Vec<bool> = plan.vms.iter().map(|v| v.sim.is_some()).collect();
    let mut checker = Checker::new(&protected);
    let mut commit_lists: Vec<Vec<u64>> = vec![Vec::new(); plan.vms.len()];
    let mut foreign = 0u64;

    let ns_per_tick = 1e9 / hz as f64;
    let t0 = tsc();
    let secs = |s: f64| (s * hz as f64) as u64;
    let warm_end = t0 + secs(plan.warmup);
    let gen_end = t0 + secs(plan.seconds);
    let mut in_window = false;
    let mut generating = true;
    let mut gen_stopped = gen_end;
    let mut last_rx_progress = t0;
    // Sampled every 0.5 ms: reserved for the whole run (and its drain), never grown in the loop.
    let mut timeline = plan.timeline_vm.map(|_| {
        let n = ((plan.seconds + 20.0) * 2000.0) as usize;
        Timeline {
            t_ms: Vec::with_capacity(n),
            sent: Vec::with_capacity(n),
            received: Vec::with_capacity(n),
            commits_ms: Vec::new(),
        }
    });
    let sample_every = secs(0.0005);
    let mut next_sample = t0;
    let progress_every = secs(plan.progress_ms as f64 / 1e3);
    let mut next_progress = t0 + progress_every;
    let mut rx_burst = Burst::new();
    // Time this thread did not run (gaps between iterations over 1 ms): the machine's other
    // load taking core 0. Reported, so a starved measurement is seen as one.
    let (mut stalled, mut max_gap, mut prev_iter) = (0u64, 0u64, t0);
    let gap_floor = secs(0.001);
    let mut polls_since_rx = 0u64;

    loop {
        let now = tsc();
        let gap = now.saturating_sub(prev_iter);
        prev_iter = now;
        if gap > gap_floor {
            stalled += gap;
            max_gap = max_gap.max(gap);
        }
        polls_since_rx += 1;
        // The measured window opens and closes on the TX side by the clock.
        if !in_window && now >= warm_end && generating {
            in_window = true;
            for v in &mut vms {
                v.win_tx0 = v.acked;
            }
        }
        if generating && (now >= gen_end || EARLY_STOP.load(Relaxed)) {
            generating = false;
            gen_stopped = now;
            in_window = false;
            for v in &mut vms {
                v.win_tx1 = v.acked;
            }
            stop.store(true, SeqCst);
        }

        // Pauses and resumes asked for by the simulators.
        for (i, v) in vms.iter_mut().enumerate() {
            let Some(sh) = &v.shared else { continue };
            let want = sh.want_pause.load(Acquire);
            if want != 0 && want != v.paused {
                if v.paused == 0 {
                    let port = &mut tx_ports[plan.vms[i].port];
                    unstage(port, i as u16, &mut v.next_seq);
                }
                v.paused = want;
                // The next epoch's first frame is the first sent after this pause: a frame
                // that went out between the simulator's decision and the pause belongs to the
                // epoch being fenced, and must not start the next epoch's request clock.
                sh.first_tx_tsc.store(0, SeqCst);
                sh.paused_at.store(u64::from(v.acked), SeqCst);
                sh.paused_ticket.store(want, SeqCst);
            } else if want == 0 && v.paused != 0 {
                v.paused = 0;
            }
        }

        // Generate and transmit.
        if generating {
            for port in &mut tx_ports {
                fill(port, &mut vms, &pool, now, t0);
                if port.staged.is_empty() {
                    continue;
                }
                let n = port.q.tx_burst(&mut port.staged);
                if n > 0 {
                    let stamp_tsc = now;
                    for &(vm, seq) in &port.tags[..n] {
                        let v = &mut vms[usize::from(vm)];
                        v.acked = seq;
                        let len = v.templates[(seq as usize - 1) % v.templates.len()].len();
                        v.acked_bytes += len as u64;
                        if let Some(sh) = &v.shared {
                            if sh.first_tx_tsc.load(Relaxed) == 0 {
                                sh.first_tx_tsc.store(stamp_tsc, SeqCst);
                            }
                        }
                    }
                    port.tags.drain(..n);
                }
            }
        }

        // Receive, then take the simulators' records, then check.
        for q in &mut rx_queues {
            if q.rx_burst(&mut rx_burst) == 0 {
                continue;
            }
            let seen = tsc();
            last_rx_progress = seen;
            polls_since_rx = 0;
            drain_events(&ev_rx, &mut checker, &mut vms, &mut commit_lists);
            for m in rx_burst.drain(..) {
                let Some(s) = Stamp::read(m.data()) else {
                    foreign += 1;
                    continue;
                };
                let vi = usize::from(s.vm);
                match checker.frame(s.vm, s.seq, seen) {
                    Seen::Uncommitted { epoch } => resolve(
                        &ev_rx,
                        &mut checker,
                        &mut vms,
                        &mut commit_lists,
                        s,
                        epoch,
                        seen,
                    ),
                    Seen::Ok | Seen::Violation => {}
                }
                if let Some(v) = vms.get_mut(vi) {
                    let _ = v
                        .lat
                        .record(((seen.saturating_sub(s.tsc)) as f64 * ns_per_tick) as u64);
                    v.rx_bytes += m.len() as u64;
                    if in_window {
                        v.win_rx += 1;
                        v.win_rx_bytes += m.len() as u64;
                    }
                }
            }
        }
        drain_events(&ev_rx, &mut checker, &mut vms, &mut commit_lists);

        if let (Some(tl), Some(vi)) = (&mut timeline, plan.timeline_vm) {
            if now >= next_sample {
                next_sample = now + sample_every;
                tl.t_ms.push((now - t0) as f64 * ns_per_tick / 1e6);
                tl.sent.push(u64::from(vms[vi].acked));
                tl.received.push(checker.vms[vi].received);
            }
        }
        if progress_every > 0 && now >= next_progress {
            next_progress = now + progress_every;
            let per_vm: Vec<[u64; 2]> = vms
                .iter()
                .zip(&checker.vms)
                .map(|(v, c)| [u64::from(v.acked), c.received])
                .collect();
            println!(
                "{}",
                serde_json::json!({"event": "progress", "t_s": (now - t0) as f64 / hz as f64,
                    "vms": per_vm, "checked": checker.checked, "violations": checker.violation_count})
            );
        }

        if !generating && vms.iter().all(|v| v.sim_done) {
            let all_in = vms
                .iter()
                .zip(&checker.vms)
                .all(|(v, c)| c.received + c.gaps >= u64::from(v.acked));
            // Quiet: nothing arrived for a second although this loop kept polling (a starved
            // loop polls little and waits longer).
            let quiet =
                now.saturating_sub(last_rx_progress) > secs(1.0) && polls_since_rx > 100_000;
            let too_long = now > gen_stopped + secs(15.0);
            if all_in || quiet || too_long {
                break;
            }
        }
    }
    checker.finish();

    let window_s = (gen_stopped.saturating_sub(warm_end) as f64 / hz as f64).max(1e-3);
    let mut out = Vec::new();
    for (i, v) in vms.iter().enumerate() {
        let c = &checker.vms[i];
        let sent = u64::from(v.acked);
        let to_dist = |samples: &mut dyn Iterator<Item = u64>| {
            let mut h = hist();
            for s in samples {
                let _ = h.record(((s as f64) * ns_per_tick) as u64);
            }
            Dist::of(&h)
        };
        out.push(VmResult {
            name: plan.vms[i].name.clone(),
            protected: c.protected,
            sent,
            sent_bytes: v.acked_bytes,
            received: c.received,
            received_bytes: v.rx_bytes,
            lost: sent.saturating_sub(c.received),
            rx_pps: v.win_rx as f64 / window_s,
            rx_bps: (v.win_rx_bytes as f64 + 24.0 * v.win_rx as f64) * 8.0 / window_s,
            tx_pps: f64::from(v.win_tx1.saturating_sub(v.win_tx0)) / window_s,
            latency: Dist::of(&v.lat),
            fences: v.fences,
            short_fences: c.short_fences,
            fence_rtt: Dist::of(&v.fence_rtt),
            commit_first: to_dist(&mut c.release.iter().map(|r| r.0)),
            commit_last: to_dist(&mut c.release.iter().map(|r| r.1)),
            requests: v.requests,
            request_latency: Dist::of(&v.request_lat),
            paused_ms: v.paused_ns as f64 / 1e6,
            sim_error: v.sim_error.clone(),
        });
    }
    if let (Some(tl), Some(vi)) = (&mut timeline, plan.timeline_vm) {
        tl.commits_ms = commit_lists[vi]
            .iter()
            .map(|&c| c.saturating_sub(t0) as f64 * ns_per_tick / 1e6)
            .collect();
    }
    for s in sims {
        let _ = s.join();
    }
    drop(tx_ports);
    drop(rx_queues);
    for p in ports {
        let _ = p.close();
    }
    Ok(TrafficResult {
        tsc_hz: hz,
        window_s,
        vms: out,
        checked: checker.checked,
        violation_count: checker.violation_count,
        violations: checker.violations.iter().map(|v| v.to_string()).collect(),
        foreign,
        timeline,
        stalled_ms: stalled as f64 * ns_per_tick / 1e6,
        max_stall_ms: max_gap as f64 * ns_per_tick / 1e6,
    })
}

fn lower_priority() {
    let tid = nix::unistd::gettid().to_string();
    match std::process::Command::new("chrt")
        .args(["--idle", "-p", "0", &tid])
        .status()
    {
        Ok(s) if s.success() => {}
        other => eprintln!(
            "epochgate-perf: cannot make the generator thread SCHED_IDLE (chrt: {other:?}); \
             latencies may include its time slices"
        ),
    }
}

/// Tops `port`'s burst up with new frames of its running VMs, within their rates.
fn fill(port: &mut TxPort, vms: &mut [GenVm], pool: &Mempool, now: u64, t0: u64) {
    let n = port.vms.len();
    let mut idle = 0;
    while !port.staged.is_full() && idle < n {
        let vm = port.vms[port.rr % n];
        port.rr = port.rr.wrapping_add(1);
        let v = &mut vms[usize::from(vm)];
        if v.paused != 0 {
            idle += 1;
            continue;
        }
        if let Some(tpf) = v.ticks_per_frame {
            if tpf.is_infinite() {
                idle += 1; // rate 0: an idle VM
                continue;
            }
            // Frames due since the run started; a VM that fell behind (paused, or the port was
            // full) catches up by at most one burst, as a guest does not send what it missed.
            let due = (((now - t0) as f64 / tpf) as u64 + 1).saturating_sub(v.rate_skip);
            let assigned = u64::from(v.next_seq - 1);
            if due > assigned + BURST as u64 {
                v.rate_skip += due - assigned - BURST as u64;
            }
            if assigned >= due {
                idle += 1;
                continue;
            }
        }
        let seq = v.next_seq;
        let t = &v.templates[(seq as usize - 1) % v.templates.len()];
        let Some(m) = Mbuf::from_fn(pool, t.len(), |b| {
            b.copy_from_slice(t);
            Stamp { vm, seq, tsc: now }.write(b);
        }) else {
            return; // pool empty: try again next round
        };
        idle = 0;
        v.next_seq += 1;
        port.staged.push(m);
        port.tags.push((vm, seq));
    }
}

/// Frees `vm`'s staged frames and rolls its sequence number back to the first of them.
fn unstage(port: &mut TxPort, vm: u16, next_seq: &mut u32) {
    if !port.tags.iter().any(|&(v, _)| v == vm) {
        return;
    }
    let staged = std::mem::take(&mut port.staged);
    let tags = std::mem::take(&mut port.tags);
    for (m, (v, seq)) in staged.into_iter().zip(tags) {
        if v == vm {
            *next_seq = (*next_seq).min(seq);
            drop(m);
        } else {
            port.staged.push(m);
            port.tags.push((v, seq));
        }
    }
}

fn drain_events(
    rx: &Receiver<SimEvent>,
    checker: &mut Checker,
    vms: &mut [GenVm],
    commits: &mut [Vec<u64>],
) {
    loop {
        match rx.try_recv() {
            Ok(ev) => apply(ev, checker, vms, commits),
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => return,
        }
    }
}

fn apply(ev: SimEvent, checker: &mut Checker, vms: &mut [GenVm], commits: &mut [Vec<u64>]) {
    match ev {
        SimEvent::Fence {
            vm,
            last_sent,
            sealed,
            rtt_ns,
            paused_ns,
        } => {
            checker.fence(vm, last_sent, sealed);
            let v = &mut vms[usize::from(vm)];
            v.fences += 1;
            let _ = v.fence_rtt.record(rtt_ns.max(1));
            v.paused_ns += paused_ns;
        }
        SimEvent::Commit { vm, epoch, tsc } => {
            checker.commit(vm, epoch, tsc);
            commits[usize::from(vm)].push(tsc);
        }
        SimEvent::Request { vm, latency_ns } => {
            let v = &mut vms[usize::from(vm)];
            v.requests += 1;
            if let Some(l) = latency_ns {
                let _ = v.request_lat.record(l.max(1));
            }
        }
        SimEvent::Done { vm, error } => {
            let v = &mut vms[usize::from(vm)];
            v.sim_done = true;
            v.sim_error = error;
        }
    }
}

/// A frame whose epoch has no commit on record: if the simulator had announced that commit
/// when we look (after the frame was seen), its record is on the way: wait for it and check
/// again. If not, the commit had not been sent when the frame was seen: a leak.
fn resolve(
    rx: &Receiver<SimEvent>,
    checker: &mut Checker,
    vms: &mut [GenVm],
    commits: &mut [Vec<u64>],
    s: Stamp,
    epoch: usize,
    seen: u64,
) {
    let vi = usize::from(s.vm);
    fence(SeqCst);
    let announced = vms[vi]
        .shared
        .as_ref()
        .map_or(0, |sh| sh.pending_commit.load(SeqCst));
    if announced > epoch as u64 {
        let deadline = Instant::now() + Duration::from_secs(5);
        while checker.commits(s.vm) <= epoch && Instant::now() < deadline {
            match rx.recv_timeout(Duration::from_millis(10)) {
                Ok(ev) => apply(ev, checker, vms, commits),
                Err(_) => continue,
            }
        }
        if checker.frame(s.vm, s.seq, seen) != (Seen::Uncommitted { epoch }) {
            return;
        }
    }
    checker.early(s.vm, s.seq, epoch, seen);
}
