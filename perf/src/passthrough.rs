//! `epochgate-perf passthrough`: epochgate's pass-through poll loop against
//! `dpdk-testpmd --forward-mode=io` on `net_null` vdevs, back to back in one run, as a ratio.
//!
//! Topology for both: a `net_null` source port (the VM side) forwarded to a `net_null` sink with
//! `no-rx=1` (the egress side), one worker lcore. The null PMD costs almost nothing, so this
//! measures the forwarding loop itself. The VM's MAC is configured, as operators do: the null
//! PMD's frames have an all-zero source MAC, from which epochgate would otherwise try to learn
//! on every frame (a real VM is learned from its first frame).

use anyhow::{bail, Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn hugepages_free() -> u64 {
    std::fs::read_to_string("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

pub fn sibling(name: &str) -> Result<PathBuf> {
    let me = std::env::current_exe()?;
    let p = me.with_file_name(name);
    if !p.exists() {
        bail!(
            "{} not found: build the workspace first (cargo build --release --workspace)",
            p.display()
        );
    }
    Ok(p)
}

struct Setup {
    huge: bool,
    size: u32,
    seconds: f64,
    /// Frames the protected VM may hold (`dataplane.vm_queue`): the source offers far more
    /// than any hold budget takes in one epoch, so this is how many frames each epoch carries.
    hold: u64,
    /// The protected VM's checkpoint period, and the transfer before each commit.
    epoch: Duration,
    transfer: Duration,
}

/// The EAL arguments of a DPDK process (testpmd, the hold floor) on the null topology: two
/// lcores, no PCI, the sink and a source of `size`-byte frames. With hugepages, their files
/// are unlinked once mapped, so the memory goes back to the system when the process exits
/// instead of staying allocated until the next DPDK process starts.
pub fn null_eal_args(huge: bool, prefix: &str, size: u32) -> Vec<String> {
    let mut args: Vec<String> = vec!["-l".into(), "0-1".into()];
    args.push(if huge { "--huge-unlink" } else { "--no-huge" }.into());
    args.extend(["-m", "512", "--no-pci", "--file-prefix", prefix].map(String::from));
    args.extend([
        "--vdev".into(),
        Setup::SINK.into(),
        "--vdev".into(),
        null_source(size),
    ]);
    args
}

fn null_source(size: u32) -> String {
    format!("net_null1,size={size}")
}

impl Setup {
    const SINK: &'static str = "net_null0,no-rx=1";
    fn source(&self) -> String {
        null_source(self.size)
    }
    /// The protected run's pool: the hold budget plus what the pass-through run has for the
    /// rings and caches, rounded to 2^n - 1 as DPDK prefers.
    fn protected_mbufs(&self) -> u64 {
        (self.hold + 16384).next_power_of_two() - 1
    }
}

/// How the null source's VM runs in an epochgate measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum VmMode {
    /// Pass-through: RX to TX, no hold.
    Passthrough,
    /// Protected, checkpointed by an in-process VMM through the shim every `Setup::epoch`
    /// with a `Setup::transfer` before each commit (by default the harness's 40 Hz scenario).
    Protected,
}
/// Measured after this much steady state (the VMM has committed at least a few epochs).
const WARMUP: Duration = Duration::from_millis(600);

/// What one epochgate measurement saw between two snapshots of its counters.
#[derive(Debug, Clone, Copy)]
struct EgRun {
    /// Frames per second out of the egress port.
    pps: f64,
    /// The worker's busy TSC time per frame received, ns (busy rounds are rounds that moved a
    /// frame: the work a frame costs, whatever the source's rate or the hold's fill).
    ns_per_frame: f64,
    /// Share of the worker's time in busy rounds.
    busy: f64,
    /// Epochs committed in the window (0 for pass-through).
    epochs: u64,
    /// Frames epochgate dropped in the window, for any reason (the source only offers what
    /// the VM may read, so this stays 0).
    dropped: u64,
    /// Frames received and sent per busy round (a pass-through round moves a burst in and the
    /// same burst out; a protected VM's frames go in and out in different rounds).
    per_busy_round: f64,
    /// What a round that moved nothing costs, ns: the fixed cost a busy round also pays.
    idle_round_ns: f64,
}

fn delta(a: &epochgate::stats::Snapshot, b: &epochgate::stats::Snapshot) -> Result<EgRun> {
    let egress = |s: &epochgate::stats::Snapshot| {
        s.ports
            .iter()
            .find(|p| p.role == "egress")
            .map(|p| p.tx_frames)
            .context("no egress port in the snapshot")
    };
    let (wa, wb) = (
        a.workers.first().context("no worker in the snapshot")?,
        b.workers.first().context("no worker in the snapshot")?,
    );
    let secs = (b.uptime_ms.saturating_sub(a.uptime_ms)) as f64 / 1e3;
    let frames = wb.rx_frames.saturating_sub(wa.rx_frames);
    let busy = wb.busy_cycles.saturating_sub(wa.busy_cycles);
    let idle = wb.idle_cycles.saturating_sub(wa.idle_cycles);
    if secs <= 0.0 || frames == 0 || wb.tsc_hz == 0 {
        bail!("no frames forwarded in the measured window ({secs} s, {frames} frames)");
    }
    let epochs = |s: &epochgate::stats::Snapshot| s.vms.first().map_or(0, |v| v.epochs_committed);
    let dropped = |s: &epochgate::stats::Snapshot| -> u64 {
        let vms: u64 = s.vms.iter().flat_map(|v| v.dropped.values()).sum();
        let ports: u64 = s.ports.iter().flat_map(|p| p.dropped.values()).sum();
        vms + ports
    };
    Ok(EgRun {
        pps: (egress(b)?.saturating_sub(egress(a)?)) as f64 / secs,
        ns_per_frame: busy as f64 / frames as f64 / wb.tsc_hz as f64 * 1e9,
        busy: busy as f64 / (busy + idle).max(1) as f64,
        epochs: epochs(b).saturating_sub(epochs(a)),
        dropped: dropped(b).saturating_sub(dropped(a)),
        per_busy_round: {
            let moved = (wb.rx_frames + wb.tx_frames).saturating_sub(wa.rx_frames + wa.tx_frames);
            moved as f64 / wb.busy_rounds.saturating_sub(wa.busy_rounds).max(1) as f64
        },
        idle_round_ns: {
            let rounds = wb.idle_rounds().saturating_sub(wa.idle_rounds()).max(1);
            idle as f64 / rounds as f64 / wb.tsc_hz as f64 * 1e9
        },
    })
}

/// The in-process VMM of a protected measurement: protect, then fence every `epoch` and
/// commit `transfer` later, until `stop`; then release what is held and unprotect. Returns the
/// epochs it committed.
fn checkpoint_loop(
    control: &Path,
    (epoch_len, transfer): (Duration, Duration),
    stop: &std::sync::atomic::AtomicBool,
) -> Result<u64> {
    use std::sync::atomic::Ordering::Relaxed;
    use vmm_shim::client::Client;
    let mut c = Client::connect(control, "vm1").context("the VMM connecting to epochgate")?;
    c.set_timeout(Some(Duration::from_secs(10)));
    let mut epoch = c.protect().context("protect")?;
    let mut committed = 0;
    let wait = |c: &mut Client, until: Instant| -> Result<()> {
        // Waiting on the session also takes its checkpoint requests, so none pile up.
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            c.next_event(Some(left)).context("waiting for events")?;
        }
        Ok(())
    };
    let mut next = Instant::now() + epoch_len;
    while !stop.load(Relaxed) {
        wait(&mut c, next)?;
        next += epoch_len;
        let fenced = c.fence(epoch).context("fence")?;
        wait(&mut c, Instant::now() + transfer)?;
        c.commit(epoch).context("commit")?;
        committed += 1;
        epoch = fenced.epoch + 1;
    }
    c.unprotect(vmm_shim::proto::Release::Release)
        .context("unprotect")?;
    Ok(committed)
}

/// epochgate forwarding from the null source to the null sink, measured between two snapshots
/// of its counters taken over the admin socket after `WARMUP`.
fn run_epochgate(bin: &Path, s: &Setup, dir: &Path, mode: VmMode, round: usize) -> Result<EgRun> {
    let tag = match mode {
        VmMode::Passthrough => "passthrough",
        VmMode::Protected => "protected",
    };
    let cfg = dir.join(format!("epochgate-{tag}.toml"));
    let (mbufs, hold) = match mode {
        VmMode::Passthrough => (16383, String::new()),
        VmMode::Protected => (s.protected_mbufs(), format!("vm_queue = {}\n", s.hold)),
    };
    let control = dir.join("c.sock");
    let admin = dir.join("a.sock");
    for p in [&control, &admin] {
        let _ = std::fs::remove_file(p);
    }
    std::fs::write(
        &cfg,
        format!(
            "[eal]\nlcores = \"0-1\"\nmemory_mb = 512\nhugepages = {huge}\nfile_prefix = \"eg-perf-{pid}\"\n\n\
             [egress]\nport = \"{sink}\"\n\n[control]\nsocket = \"{c}\"\nadmin_socket = \"{a}\"\n\n\
             [dataplane]\nmbufs = {mbufs}\n{hold}\n[[vm]]\nname = \"vm1\"\nport = \"{src}\"\nmac = \"52:54:00:00:00:01\"\n",
            huge = s.huge,
            pid = std::process::id(),
            sink = Setup::SINK,
            src = s.source(),
            c = control.display(),
            a = admin.display(),
        ),
    )?;
    let log = std::fs::File::create(dir.join(format!("epochgate-{tag}-{round}.log")))?;
    let total = WARMUP.as_secs_f64() + s.seconds + 2.0;
    let mut child = Command::new(bin)
        .args(["run", "--quiet", "--config"])
        .arg(&cfg)
        .arg("--duration")
        .arg(total.to_string())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("running epochgate")?;
    let measured = (|| -> Result<EgRun> {
        let up = Instant::now();
        while epochgate::admin::query(&admin, "stats").is_err() {
            if let Some(st) = child.try_wait()? {
                bail!(
                    "epochgate exited ({st}) before it answered on {}",
                    admin.display()
                );
            }
            if up.elapsed() > Duration::from_secs(30) {
                bail!(
                    "epochgate did not answer on {} within 30 s",
                    admin.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| -> Result<EgRun> {
            let vmm = (mode == VmMode::Protected)
                .then(|| scope.spawn(|| checkpoint_loop(&control, (s.epoch, s.transfer), &stop)));
            let window = (|| -> Result<EgRun> {
                std::thread::sleep(WARMUP);
                let a = epochgate::admin::query(&admin, "stats")?;
                std::thread::sleep(Duration::from_secs_f64(s.seconds));
                let b = epochgate::admin::query(&admin, "stats")?;
                delta(&a, &b)
            })();
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            if let Some(v) = vmm {
                v.join()
                    .map_err(|_| anyhow::anyhow!("the VMM thread panicked"))?
                    .context("the in-process VMM")?;
            }
            let w = window?;
            if mode == VmMode::Protected && w.epochs == 0 {
                bail!("no epoch was committed in the measured window");
            }
            if w.dropped > 0 {
                println!(
                    "  epochgate ({tag}) dropped {} frames in the window: see its stats",
                    w.dropped
                );
            }
            Ok(w)
        })
    })();
    let status = child.wait()?;
    let w = measured?;
    if !status.success() {
        bail!(
            "epochgate failed ({status}): see {}",
            dir.join(format!("epochgate-{tag}-{round}.log")).display()
        );
    }
    Ok(w)
}

/// Frames per second testpmd (io mode) forwarded between the same two vdevs.
fn run_testpmd(s: &Setup, dir: &Path, round: usize) -> Result<f64> {
    let prefix = format!("eg-perf-testpmd-{}", std::process::id());
    let mut args = null_eal_args(s.huge, &prefix, s.size);
    args.extend(["--", "-i", "--forward-mode=io", "--total-num-mbufs=16384"].map(String::from));
    let mut child = Command::new("dpdk-testpmd")
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running dpdk-testpmd (apt-get install dpdk)")?;
    let mut stdin = child.stdin.take().context("testpmd stdin")?;
    stdin.write_all(b"start\n")?;
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(s.seconds));
    stdin.write_all(b"stop\n")?;
    let elapsed = t.elapsed().as_secs_f64();
    stdin.write_all(b"quit\n")?;
    drop(stdin);
    let out = child.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    std::fs::write(dir.join(format!("testpmd-{round}.log")), &text)?;
    let tx = accumulated_tx(&text)
        .with_context(|| format!("no forward statistics in testpmd output:\n{text}"))?;
    Ok(tx as f64 / elapsed)
}

/// TX-packets of testpmd's "Accumulated forward statistics for all ports" block.
fn accumulated_tx(text: &str) -> Option<u64> {
    let block = &text[text.find("Accumulated forward statistics for all ports")?..];
    let at = block.find("TX-packets:")? + "TX-packets:".len();
    block[at..].split_whitespace().next()?.parse().ok()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn run(
    seconds: f64,
    rounds: usize,
    size: u32,
    protected: Option<u64>,
    (epoch_ms, transfer_ms): (f64, f64),
    bin: Option<PathBuf>,
    out: &Path,
) -> Result<()> {
    let bin = match bin {
        Some(b) => b,
        None => sibling("epochgate")?,
    };
    std::fs::create_dir_all(out)?;
    let setup = Setup {
        huge: hugepages_free() >= 256,
        size,
        seconds,
        hold: protected.unwrap_or(0),
        epoch: Duration::from_secs_f64(epoch_ms.max(0.1) / 1e3),
        transfer: Duration::from_secs_f64(transfer_ms.max(0.0) / 1e3),
    };
    println!(
        "pass-through: {} -> epochgate | dpdk-testpmd io -> {}, {size}-byte frames, {seconds} s x {rounds} rounds, {}",
        setup.source(),
        Setup::SINK,
        if setup.huge { "hugepages" } else { "--no-huge" }
    );
    // What the null source delivers: `size` zero bytes (the null PMD leaves the data as the
    // pool has it, and nothing writes to it), so the classifier's term is measured on that,
    // with an epoch of the hold (the source fills it in every epoch).
    let classifier_ns = crate::cost::classifier_policy_ns(
        &[vec![0u8; size as usize]],
        2_000_000,
        protected.unwrap_or(1024),
    );
    let (mut eg, mut tp, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let (mut prot, mut cost_ratios) = (Vec::new(), Vec::new());
    let (mut floors, mut floor_ratios) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        let e = run_epochgate(&bin, &setup, out, VmMode::Passthrough, r)?;
        let p = protected
            .is_some()
            .then(|| run_epochgate(&bin, &setup, out, VmMode::Protected, r))
            .transpose()?;
        // The least any buffer holding that many frames does, on the same ports and pool.
        let floor = protected
            .map(|hold| {
                let args = crate::floor::Args {
                    depths: vec![0, hold],
                    epochs: Some((
                        setup.epoch.as_secs_f64() * 1e3,
                        setup.transfer.as_secs_f64() * 1e3,
                    )),
                    seconds: setup.seconds,
                    size,
                    huge: setup.huge,
                    mbufs: setup.protected_mbufs() as u32,
                };
                crate::floor::run_child(&args, &out.join(format!("hold-floor-{r}.log")))
            })
            .transpose()?;
        let t = run_testpmd(&setup, out, r)?;
        println!(
            "  round {}: epochgate {:7.2} Mpps   testpmd {:7.2} Mpps   ratio {:.3}",
            r + 1,
            e.pps / 1e6,
            t / 1e6,
            e.pps / t
        );
        if let Some(p) = p {
            let cost = p.ns_per_frame / (e.ns_per_frame + classifier_ns);
            println!(
                "           protected {:7.2} Mpps, {} epochs: {:.2} ns/frame (busy {:.0}%) vs pass-through {:.2} ns/frame (busy {:.0}%) + classifier {:.2}: ratio {cost:.3}",
                p.pps / 1e6,
                p.epochs,
                p.ns_per_frame,
                p.busy * 100.0,
                e.ns_per_frame,
                e.busy * 100.0,
                classifier_ns,
            );
            println!(
                "           frames in+out per busy round: protected {:.1}, pass-through {:.1}; a round that moves nothing costs {:.0} ns",
                p.per_busy_round, e.per_busy_round, p.idle_round_ns,
            );
            if let Some([f0, fh]) = floor.as_deref() {
                let over = p.ns_per_frame / (fh.ns_per_frame + classifier_ns);
                println!(
                    "           hold floor (at most {} frames held in the same epochs, no classifier, policy, ledger or scheduler): {:.2} ns/frame ({:.2} forwarding); protected / (floor + classifier) = {over:.3}",
                    fh.depth, fh.ns_per_frame, f0.ns_per_frame,
                );
                floor_ratios.push(over);
                floors.push([*f0, *fh]);
            }
            prot.push(p);
            cost_ratios.push(cost);
        }
        eg.push(e);
        tp.push(t);
        ratios.push(e.pps / t);
    }
    let ratio = median(ratios.clone());
    println!(
        "result: epochgate / testpmd = {ratio:.3} (median of {rounds}; epochgate {:.2} Mpps, testpmd {:.2} Mpps)",
        median(eg.iter().map(|e| e.pps).collect()) / 1e6,
        median(tp.clone()) / 1e6
    );
    let cost_median = (!cost_ratios.is_empty()).then(|| median(cost_ratios.clone()));
    if let Some(c) = cost_median {
        println!(
            "result: protected ns/frame / (pass-through ns/frame + classifier) = {c:.3} (median of {rounds}; goal <= 1.00: {})",
            if c <= 1.0 { "PASS" } else { "MISS" }
        );
    }
    let over_floor_median = (!floor_ratios.is_empty()).then(|| median(floor_ratios.clone()));
    if let Some(m) = over_floor_median {
        println!(
            "result: protected ns/frame / (hold floor at depth {} + classifier) = {m:.3} (median of {rounds}: what epochgate's epochs, policy, ledger and scheduler add to the least work of holding)",
            setup.hold,
        );
    }
    let runs = |v: &[EgRun]| {
        v.iter()
            .map(|e| {
                serde_json::json!({"pps": e.pps, "ns_per_frame": e.ns_per_frame,
                                   "busy": e.busy, "epochs_committed": e.epochs,
                                   "dropped": e.dropped,
                                   "frames_per_busy_round": e.per_busy_round,
                                   "idle_round_ns": e.idle_round_ns})
            })
            .collect::<Vec<_>>()
    };
    let json = serde_json::json!({
        "benchmark": "passthrough-vs-testpmd-io",
        "topology": {"source": setup.source(), "sink": Setup::SINK, "frame_size": size, "hugepages": setup.huge},
        "seconds": seconds,
        "epochgate_pps": eg.iter().map(|e| e.pps).collect::<Vec<_>>(),
        "epochgate": runs(&eg),
        "testpmd_pps": tp,
        "ratios": ratios,
        "ratio_median": ratio,
        "protected": protected.is_some().then(|| serde_json::json!({
            "epoch_ms": setup.epoch.as_secs_f64() * 1e3,
            "transfer_ms": setup.transfer.as_secs_f64() * 1e3,
            "vm_queue": setup.hold,
            "mbufs": setup.protected_mbufs(),
            "classifier_policy_ns_per_frame": classifier_ns,
            "runs": runs(&prot),
            "cost_ratios": cost_ratios,
            "cost_ratio_median": cost_median,
            "hold_floor": floors,
            "over_floor_ratios": floor_ratios,
            "over_floor_median": over_floor_median,
        })),
    });
    let path = out.join("passthrough.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&json)?)?;
    println!("details: {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_testpmd_accumulated_statistics() {
        let text = "  ---------------------- Forward statistics for port 0  ----------------------\n  \
            RX-packets: 0              RX-dropped: 0             RX-total: 0\n  TX-packets: 999  TX-dropped: 0 TX-total: 999\n\
            +++++++++++++++ Accumulated forward statistics for all ports+++++++++++++++\n  \
            RX-packets: 123456789      RX-dropped: 0             RX-total: 123456789\n  \
            TX-packets: 123450000      TX-dropped: 6789          TX-total: 123456789\n";
        assert_eq!(accumulated_tx(text), Some(123_450_000));
        assert_eq!(accumulated_tx("no stats"), None);
    }
}
