//! `epochgate-perf hold-floor` (internal, run by `passthrough --protected`): the least work any
//! output-commit buffer must do per frame on the same `net_null` ports, as a baseline measured
//! in the same run as epochgate's protected VM.
//!
//! The loop is a delay line on the worker lcore: receive a burst, read each frame's first byte
//! (what any classifier reads), append the burst to a FIFO, and transmit from the FIFO's head
//! whatever is more than `depth` frames deep, prefetching the headers of the mbufs it sends as
//! epochgate's release does. Every frame therefore waits behind `depth` others, so the mbufs in
//! flight, the pool's cycling and the cache misses are those of a hold of `depth` frames, with
//! no epochs, no policy, no ledger and no scheduler. At depth 0 it forwards what it receives
//! (testpmd's io loop plus the FIFO).
//!
//! With epochs (`--epoch-ms E --transfer-ms T`, what `passthrough --protected` passes), a line
//! of nonzero depth holds frames as the protected VM's hold does instead: it takes frames while
//! it holds fewer than `depth`, seals what it took every E ms, and sends each sealed batch T ms
//! after its seal. Its frames are then held as long as the VM's are: a frame held 30 ms comes
//! back from memory colder than one held the 3 ms a steady FIFO of 32768 frames holds it at
//! the null source's rate. Its time per frame counts only rounds that moved a frame, as the
//! worker's busy time does.
//!
//! It runs in its own process (one EAL per process) and prints one JSON line.

use anyhow::{anyhow, Context, Result};
use epochgate::dpdk::{self, Mbuf, Mempool, PortConf};
use std::collections::VecDeque;
use std::time::Duration;

/// What the floor loop measured at one depth.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct Floor {
    pub depth: u64,
    /// TSC time per frame received over the measured window (the loop never idles: the null
    /// source always has frames).
    pub ns_per_frame: f64,
    pub frames: u64,
}

/// The parameters of one floor process.
#[derive(Debug, Clone)]
pub struct Args {
    pub depths: Vec<u64>,
    /// Epochs and transfer (ms) for the nonzero depths; `None`: steady FIFOs.
    pub epochs: Option<(f64, f64)>,
    pub seconds: f64,
    pub size: u32,
    pub huge: bool,
    pub mbufs: u32,
}

const WARMUP: Duration = Duration::from_millis(300);
const CACHE: u32 = 256; // epochgate's default `dataplane.mbuf_cache`
const RING: u16 = 1024; // and its default rx_ring / tx_ring

/// Runs the floor loop at each depth in this process and returns what it measured.
pub fn measure(a: &Args) -> Result<Vec<Floor>> {
    let prefix = format!("eg-perf-floor-{}", std::process::id());
    let mut eal_args = vec!["epochgate-perf-floor".to_string()];
    eal_args.extend(crate::passthrough::null_eal_args(a.huge, &prefix, a.size));
    let eal = dpdk::init(&eal_args).context("EAL init for the floor loop")?;
    let lcore = *dpdk::worker_lcores(eal)
        .first()
        .context("no worker lcore for the floor loop")?;
    let pool = Mempool::create(
        eal,
        &format!("floor_{}", std::process::id()),
        a.mbufs,
        CACHE,
    )?;
    let conf = PortConf {
        rx_queues: 1,
        tx_queues: 1,
        rx_ring: RING,
        tx_ring: RING,
    };
    let (_sink, _, mut txs) = dpdk::Port::start(eal, "net_null0", &pool, conf)?;
    let (_src, mut rxs, _) = dpdk::Port::start(eal, "net_null1", &pool, conf)?;
    let (mut tx, mut rx) = (
        txs.pop().context("sink has no TX queue")?,
        rxs.pop().context("source has no RX queue")?,
    );
    let hz = dpdk::tsc_hz(eal);
    let (depths, seconds) = (a.depths.clone(), a.seconds);
    let epochs = a.epochs.map(|(e, t)| Epochs {
        every: ((e / 1e3 * hz as f64) as u64).max(1),
        transfer: (t / 1e3 * hz as f64) as u64,
    });
    let capacity = depths.iter().copied().max().unwrap_or(0) as usize + 2 * dpdk::BURST;
    let (done, result) = std::sync::mpsc::channel();
    let handle = dpdk::launch_on(eal, lcore, move || {
        let mut out = Vec::new();
        let mut line: VecDeque<Mbuf> = VecDeque::with_capacity(capacity);
        for depth in depths {
            let (frames, ticks) = match epochs.filter(|_| depth > 0) {
                Some(e) => epoch_line(&mut rx, &mut tx, &mut line, depth, e, hz, seconds),
                None => delay_line(&mut rx, &mut tx, &mut line, depth, hz, seconds),
            };
            line.clear(); // frees what the line still holds
            out.push(Floor {
                depth,
                ns_per_frame: ticks as f64 / frames.max(1) as f64 / hz as f64 * 1e9,
                frames,
            });
        }
        i32::from(done.send(out).is_err())
    })?;
    if handle.wait() != 0 {
        return Err(anyhow!("the floor loop failed on lcore {lcore}"));
    }
    result
        .recv()
        .context("the floor loop ended without a result")
}

/// Runs the delay line at `depth` for the warm-up and then `seconds`; returns the frames
/// received and the TSC ticks of the measured part.
fn delay_line(
    rx: &mut dpdk::RxQueue,
    tx: &mut dpdk::TxQueue,
    line: &mut VecDeque<Mbuf>,
    depth: u64,
    hz: u64,
    seconds: f64,
) -> (u64, u64) {
    let depth = depth as usize;
    let start = dpdk::tsc();
    let from = start + (WARMUP.as_secs_f64() * hz as f64) as u64;
    let end = from + (seconds * hz as f64) as u64;
    let (mut frames, mut counting) = (0u64, false);
    loop {
        let now = dpdk::tsc();
        if now >= end {
            return (frames, now - from);
        }
        if !counting && now >= from {
            counting = true;
            frames = 0;
        }
        frames += take_in(rx, line, dpdk::BURST) as u64;
        if line.len() > depth {
            send_head(tx, line, line.len() - depth);
        }
    }
}

/// Receives at most `max` frames onto the line's tail, reading each one's first byte (what
/// any classifier reads). Returns how many.
fn take_in(rx: &mut dpdk::RxQueue, line: &mut VecDeque<Mbuf>, max: usize) -> usize {
    let mut burst = dpdk::Burst::new();
    let n = rx.rx_burst_upto(&mut burst, max);
    for m in &burst {
        std::hint::black_box(m.data().first().copied());
    }
    line.extend(burst.drain(..));
    n
}

/// Sends at most `n` frames from the line's head, prefetching their headers as epochgate's
/// release does; what the sink did not take goes back to the head, in order. Returns how many
/// were sent.
fn send_head(tx: &mut dpdk::TxQueue, line: &mut VecDeque<Mbuf>, n: usize) -> usize {
    let mut out = dpdk::Burst::new();
    while out.len() < n && !out.is_full() {
        let m = line.pop_front().expect("the line holds the frames to send");
        m.prefetch_header();
        out.push(m);
    }
    let sent = tx.tx_burst(&mut out);
    while let Some(m) = out.pop() {
        line.push_front(m);
    }
    sent
}

/// The floor's epochs, in TSC ticks.
#[derive(Debug, Clone, Copy)]
struct Epochs {
    every: u64,
    transfer: u64,
}

/// Holds at most `depth` frames in epochs (see the module documentation) for the warm-up and
/// then `seconds`; returns the frames received and the TSC ticks of the rounds that moved one.
fn epoch_line(
    rx: &mut dpdk::RxQueue,
    tx: &mut dpdk::TxQueue,
    line: &mut VecDeque<Mbuf>,
    depth: u64,
    e: Epochs,
    hz: u64,
    seconds: f64,
) -> (u64, u64) {
    let depth = depth as usize;
    let start = dpdk::tsc();
    let from = start + (WARMUP.as_secs_f64() * hz as f64) as u64;
    let end = from + (seconds * hz as f64) as u64;
    let (mut frames, mut busy, mut counting) = (0u64, 0u64, false);
    // Frames that may go (at the head of the line), those of the open epoch (at its tail), and
    // the sealed batches in between: (when it may go, how many).
    let (mut releasable, mut open) = (0usize, 0usize);
    let mut sealed: VecDeque<(u64, usize)> = VecDeque::with_capacity(64);
    let (mut next_seal, mut last, mut last_busy) = (start + e.every, start, false);
    loop {
        let now = dpdk::tsc();
        if counting && last_busy {
            busy += now - last;
        }
        last = now;
        if now >= end {
            return (frames, busy);
        }
        if !counting && now >= from {
            (counting, frames, busy) = (true, 0, 0);
        }
        if now >= next_seal {
            sealed.push_back((now + e.transfer, open));
            open = 0;
            next_seal = now + e.every;
        }
        while let Some(&(_, n)) = sealed.front().filter(|s| s.0 <= now) {
            releasable += n;
            sealed.pop_front();
        }
        let mut moved = 0;
        let room = depth.saturating_sub(line.len());
        if room > 0 {
            let n = take_in(rx, line, room);
            frames += n as u64;
            open += n;
            moved += n;
        }
        if releasable > 0 {
            let sent = send_head(tx, line, releasable);
            releasable -= sent;
            moved += sent;
        }
        last_busy = moved > 0;
    }
}

/// Runs `epochgate-perf hold-floor` as a child process and parses its result line.
pub fn run_child(a: &Args, log: &std::path::Path) -> Result<Vec<Floor>> {
    let me = std::env::current_exe()?;
    let mut cmd = std::process::Command::new(me);
    cmd.arg("hold-floor")
        .arg("--seconds")
        .arg(a.seconds.to_string())
        .arg("--size")
        .arg(a.size.to_string())
        .arg("--mbufs")
        .arg(a.mbufs.to_string());
    if let Some((e, t)) = a.epochs {
        cmd.arg("--epoch-ms")
            .arg(e.to_string())
            .arg("--transfer-ms")
            .arg(t.to_string());
    }
    if !a.huge {
        cmd.arg("--no-huge");
    }
    for d in &a.depths {
        cmd.arg("--depth").arg(d.to_string());
    }
    let out = cmd.output().context("running epochgate-perf hold-floor")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    std::fs::write(
        log,
        format!(
            "{stdout}\n--- stderr ---\n{}",
            String::from_utf8_lossy(&out.stderr)
        ),
    )?;
    if !out.status.success() {
        return Err(anyhow!(
            "hold-floor failed ({}): see {}",
            out.status,
            log.display()
        ));
    }
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('['))
        .with_context(|| format!("no result line from hold-floor: see {}", log.display()))?;
    let floors: Vec<Floor> =
        serde_json::from_str(line).with_context(|| format!("hold-floor's result line {line:?}"))?;
    if floors.len() != a.depths.len() || floors.iter().any(|f| f.frames == 0) {
        return Err(anyhow!(
            "hold-floor measured no frames at some depth: {line} (see {})",
            log.display()
        ));
    }
    Ok(floors)
}
