//! The systems under test and one measurement: start epochgate (or `dpdk-testpmd` in io mode)
//! with `net_vhost` ports, run the traffic process against them, stop them, collect what both
//! sides counted.
//!
//! Lcore layout, the same for both: the system under test gets `-l 0-1` (its main thread on
//! core 0; epochgate's worker, or testpmd's forwarding core, on core 1); the traffic process
//! runs on core 0 (`-l 0`), and so do the VMM simulators (its threads) and epochgate's control
//! thread. Everything runs with `--no-huge`, which works on every machine.

use crate::plan::{Plan, SimPlan, TrafficResult, VmPlan};
use crate::wire::Profile;
use anyhow::{bail, Context, Result};
use epochgate::stats::{Snapshot, WorkerSnapshot};
use serde::Serialize;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Where the binaries are and where results go.
#[derive(Debug, Clone)]
pub struct Env {
    pub epochgate: PathBuf,
    /// This binary (it runs the traffic process as `traffic PLAN`).
    pub me: PathBuf,
    pub out: PathBuf,
    /// The harness's generator thread runs SCHED_IDLE (default), so that epochgate's control
    /// thread and the simulated VMMs on its core preempt it; `--harness-priority normal` for a
    /// machine with other load on core 0 (then latencies include the harness's time slices).
    pub idle_priority: bool,
}

/// A simulated VM of a measurement.
#[derive(Debug, Clone, Serialize)]
pub struct VmSpec {
    pub name: String,
    pub profile: Profile,
    pub rate_pps: Option<f64>,
    /// Checkpointed by a simulated VMM (epochgate mode `protected`).
    pub sim: Option<SimPlan>,
    /// epochgate's regulator for it, if any.
    pub rate_mbps: Option<f64>,
    /// epochgate's `max_held_frames` for it (default: `dataplane.vm_queue`).
    pub max_held_frames: Option<u64>,
}

impl VmSpec {
    pub fn new(name: &str, profile: Profile) -> VmSpec {
        VmSpec {
            name: name.into(),
            profile,
            rate_pps: None,
            sim: None,
            rate_mbps: None,
            max_held_frames: None,
        }
    }
    pub fn protected(mut self, sim: SimPlan) -> VmSpec {
        self.sim = Some(sim);
        self
    }
    pub fn rate(mut self, pps: f64) -> VmSpec {
        self.rate_pps = Some(pps);
        self
    }
}

/// One measurement's set-up.
#[derive(Debug, Clone, Serialize)]
pub struct Setup {
    pub vms: Vec<VmSpec>,
    /// VMs share one ingress port and are told apart by MAC (else each has its own port).
    pub shared_ingress: bool,
    pub seconds: f64,
    pub warmup: f64,
    pub timeline_vm: Option<usize>,
    /// Ring sizes of epochgate's and testpmd's ports and of the virtio-user queues.
    pub ring: u16,
}

impl Setup {
    pub fn new(vms: Vec<VmSpec>, seconds: f64) -> Setup {
        Setup {
            vms,
            shared_ingress: false,
            seconds,
            warmup: (seconds * 0.15).min(1.0),
            timeline_vm: None,
            ring: 1024,
        }
    }
}

/// What a measurement found.
#[derive(Debug, Clone, Serialize)]
pub struct Measured {
    pub target: &'static str,
    pub traffic: TrafficResult,
    /// epochgate's final counters (None for testpmd).
    #[serde(skip)]
    pub stats: Option<Snapshot>,
    /// Its poll loops' counters at the first and the last progress report inside the measured
    /// window (None for testpmd, or if the admin socket did not answer): the worker's busy
    /// share over the whole run would count the start-up and the drain as idle.
    #[serde(skip)]
    pub window_workers: Option<(Vec<WorkerSnapshot>, Vec<WorkerSnapshot>)>,
    /// Per VM: frames the harness lost minus the drops epochgate counted for it (0 = every
    /// loss is accounted for).
    pub unaccounted: Vec<i64>,
    /// Held-frame budget per VM as configured.
    pub hold_budget_frames: Vec<u64>,
    pub dir: PathBuf,
}

impl Measured {
    /// Every frame checked, no violation, every loss counted by epochgate, no simulator error.
    pub fn problems(&self) -> Vec<String> {
        let mut p: Vec<String> = self.traffic.violations.clone();
        if self.traffic.violation_count > self.traffic.violations.len() as u64 {
            p.push(format!(
                "... {} violations in all",
                self.traffic.violation_count
            ));
        }
        for (v, &u) in self.traffic.vms.iter().zip(&self.unaccounted) {
            if u != 0 {
                p.push(format!(
                    "vm {}: {} frames lost but epochgate counted {} drops",
                    v.name,
                    v.lost,
                    v.lost as i64 - u
                ));
            }
            if let Some(e) = &v.sim_error {
                p.push(format!("vm {}: simulated VMM failed: {e}", v.name));
            }
        }
        p
    }
}

static RUN_NO: AtomicU64 = AtomicU64::new(0);

/// A short directory for sockets (a Unix socket path has at most 107 bytes).
fn sock_dir() -> Result<PathBuf> {
    let n = RUN_NO.fetch_add(1, Ordering::Relaxed);
    let d = std::env::temp_dir().join(format!("egp-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    Ok(d)
}

fn mac(i: usize) -> [u8; 6] {
    [0x52, 0x54, 0x00, 0x10, (i >> 8) as u8, i as u8]
}

/// A child process killed (by PID) if still running when dropped.
struct Kid(Child, &'static str);

impl Drop for Kid {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn wait_for_files(paths: &[PathBuf], kid: &mut Kid, log: &Path) -> Result<()> {
    let t = Instant::now();
    while !paths.iter().all(|p| p.exists()) {
        if let Some(st) = kid.0.try_wait()? {
            bail!(
                "{} exited ({st}) before its ports were up; its log ({}):\n{}",
                kid.1,
                log.display(),
                tail(log)
            );
        }
        if t.elapsed() > Duration::from_secs(30) {
            bail!("{} did not create {:?} within 30 s", kid.1, paths);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

fn tail(p: &Path) -> String {
    let s = std::fs::read_to_string(p).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Frames epochgate must be able to keep for one VM, and the pool that covers it all.
fn pool_for(setup: &Setup, vm_queue: u64, ports: usize) -> (u64, u64) {
    let held: u64 = setup
        .vms
        .iter()
        .map(|v| v.max_held_frames.unwrap_or(vm_queue))
        .sum();
    let ring = u64::from(setup.ring);
    let mbufs = held + ports as u64 * 2 * ring + 2 * 384 + 4096;
    // 2^n - 1 suits DPDK's ring-backed pools.
    let mbufs = (mbufs + 1).next_power_of_two() - 1;
    let memory_mb = mbufs * 4096 / (1 << 20) + 16 + 128;
    (mbufs, memory_mb)
}

/// Runs the traffic process with `plan`, calling `progress` with each progress line.
fn traffic(
    env: &Env,
    plan: &Plan,
    dir: &Path,
    progress: &mut dyn FnMut(&serde_json::Value),
) -> Result<TrafficResult> {
    let plan_path = dir.join("plan.json");
    std::fs::write(&plan_path, serde_json::to_vec_pretty(plan)?)?;
    let log = dir.join("traffic.log");
    let mut kid = Kid(
        Command::new(&env.me)
            .arg("traffic")
            .arg(&plan_path)
            .process_group(0)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting the traffic process")?,
        "the traffic process",
    );
    let stdout = kid.0.stdout.take().context("traffic stdout")?;
    let mut result = None;
    let mut told = false;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        if !told && crate::INTERRUPTED.load(Ordering::SeqCst) {
            told = true;
            let pid = nix::unistd::Pid::from_raw(kid.0.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        }
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        match v["event"].as_str() {
            Some("progress") => progress(&v),
            Some("result") => result = Some(serde_json::from_value(v["result"].clone())?),
            _ => {}
        }
    }
    let st = kid.0.wait()?;
    match result {
        Some(r) if st.success() => Ok(r),
        _ => bail!(
            "the traffic process failed ({st}); its log ({}):\n{}",
            log.display(),
            tail(&log)
        ),
    }
}

fn vm_plans(setup: &Setup) -> Vec<VmPlan> {
    setup
        .vms
        .iter()
        .enumerate()
        .map(|(i, v)| VmPlan {
            name: v.name.clone(),
            port: if setup.shared_ingress { 0 } else { i },
            mac: mac(i),
            profile: v.profile,
            rate_pps: v.rate_pps,
            sim: v.sim,
        })
        .collect()
}

fn virtio(i: usize, sock: &Path, ring: u16) -> String {
    format!(
        "net_virtio_user{i},path={},queue_size={ring}",
        sock.display()
    )
}

/// epochgate with one `net_vhost` port per VM (or one shared ingress) and a `net_vhost` egress.
pub fn epochgate(
    env: &Env,
    name: &str,
    setup: &Setup,
    vm_queue: u64,
    progress: &mut dyn FnMut(&serde_json::Value, Option<&Path>),
) -> Result<Measured> {
    let dir = env.out.join("runs").join(name);
    std::fs::create_dir_all(&dir)?;
    let s = sock_dir()?;
    let nports = if setup.shared_ingress {
        2
    } else {
        setup.vms.len() + 1
    };
    let (mbufs, memory_mb) = pool_for(setup, vm_queue, nports);
    let egress_sock = s.join("eg.sock");
    let mut cfg = format!(
        "[eal]\nlcores = \"0-1\"\nmemory_mb = {memory_mb}\nhugepages = false\nfile_prefix = \"egp-eg-{pid}-{name}\"\n\n\
         [egress]\nport = \"net_vhost0,iface={eg}\"\n\n\
         [control]\nsocket = \"{s}/c.sock\"\nadmin_socket = \"{s}/a.sock\"\nmax_sessions = {sessions}\n\n\
         [dataplane]\nmbufs = {mbufs}\nvm_queue = {vm_queue}\nrx_ring = {ring}\ntx_ring = {ring}\nstats_interval_ms = 250\n\n",
        pid = std::process::id(),
        eg = egress_sock.display(),
        s = s.display(),
        ring = setup.ring,
        sessions = setup.vms.len().max(64),
    );
    let mut socks = vec![egress_sock.clone()];
    if setup.shared_ingress {
        let p = s.join("in.sock");
        cfg += &format!("[ingress]\nport = \"net_vhost1,iface={}\"\n\n", p.display());
        socks.push(p);
    }
    for (i, v) in setup.vms.iter().enumerate() {
        cfg += &format!(
            "[[vm]]\nname = \"{}\"\nmac = \"{}\"\n",
            v.name,
            epochgate::wire::frame::MacAddr(mac(i))
        );
        if !setup.shared_ingress {
            let p = s.join(format!("vm{i}.sock"));
            cfg += &format!("port = \"net_vhost{},iface={}\"\n", i + 1, p.display());
            socks.push(p);
        }
        cfg += if v.sim.is_some() {
            "mode = \"protected\"\n"
        } else {
            "mode = \"passthrough\"\n"
        };
        if let Some(r) = v.rate_mbps {
            cfg += &format!("rate_mbps = {r}\n");
        }
        if let Some(h) = v.max_held_frames {
            cfg += &format!("max_held_frames = {h}\n");
        }
        if setup.shared_ingress {
            // What a shared ingress cannot take is dropped and counted (never pushed back: that
            // would stall every VM on the port).
            cfg += "on_full = \"drop\"\n";
        }
        cfg += "\n";
    }
    let cfg_path = dir.join("epochgate.toml");
    std::fs::write(&cfg_path, &cfg)?;
    let log = dir.join("epochgate.log");
    let stats_path = dir.join("stats.json");
    let _ = std::fs::remove_file(&stats_path);
    let mut kid = Kid(
        Command::new(&env.epochgate)
            .args(["run", "--quiet", "--config"])
            .process_group(0)
            .arg(&cfg_path)
            .arg("--stats-file")
            .arg(&stats_path)
            .stdout(std::fs::File::create(&log)?)
            .stderr(std::fs::File::create(dir.join("epochgate.err"))?)
            .spawn()
            .context("starting epochgate")?,
        "epochgate",
    );
    socks.push(s.join("c.sock"));
    let err_log = dir.join("epochgate.err");
    wait_for_files(&socks, &mut kid, &err_log)?;
    let tx_ports: Vec<String> = if setup.shared_ingress {
        vec![virtio(0, &s.join("in.sock"), setup.ring)]
    } else {
        (0..setup.vms.len())
            .map(|i| virtio(i, &s.join(format!("vm{i}.sock")), setup.ring))
            .collect()
    };
    let n = tx_ports.len();
    let plan = Plan {
        file_prefix: format!("egp-tr-{}-{name}", std::process::id()),
        tx_ports,
        rx_ports: vec![virtio(n, &egress_sock, setup.ring)],
        vms: vm_plans(setup),
        seconds: setup.seconds,
        warmup: setup.warmup,
        control: Some(s.join("c.sock")),
        timeline_vm: setup.timeline_vm,
        progress_ms: 250,
        mbufs: 16383,
        idle_priority: env.idle_priority,
    };
    let admin = s.join("a.sock");
    let (from, to) = (setup.warmup, setup.warmup + setup.seconds);
    let (mut first, mut last) = (None, None);
    let r = traffic(env, &plan, &dir, &mut |v| {
        progress(v, Some(&admin));
        let t = v["t_s"].as_f64().unwrap_or(0.0);
        if (from..=to).contains(&t) {
            let w = epochgate::admin::query(&admin, "stats")
                .ok()
                .map(|s| s.workers);
            if first.is_none() {
                first = w;
            } else if w.is_some() {
                last = w;
            }
        }
    });
    let window_workers = first.zip(last);
    // Stop epochgate the way an operator does (SIGTERM), and read its final counters.
    let pid = nix::unistd::Pid::from_raw(kid.0.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let t = Instant::now();
    while kid.0.try_wait()?.is_none() && t.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(kid);
    let _ = std::fs::remove_dir_all(&s);
    let traffic = r?;
    let stats: Option<Snapshot> = std::fs::read(&stats_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let Some(stats) = stats else {
        bail!(
            "epochgate left no final counters in {}; its log:\n{}",
            stats_path.display(),
            tail(&err_log)
        );
    };
    let unaccounted = traffic
        .vms
        .iter()
        .map(|v| {
            let drops: u64 = stats
                .vms
                .iter()
                .find(|s| s.name == v.name)
                .map_or(0, |s| s.dropped.values().sum());
            v.lost as i64 - drops as i64
        })
        .collect();
    Ok(Measured {
        target: "epochgate",
        hold_budget_frames: setup
            .vms
            .iter()
            .map(|v| v.max_held_frames.unwrap_or(vm_queue))
            .collect(),
        traffic,
        stats: Some(stats),
        window_workers,
        unaccounted,
        dir,
    })
}

/// `dpdk-testpmd --forward-mode=io` on the same vhost/virtio-user topology. testpmd pairs
/// ports (0<->1, 2<->3, ...), so each VM port gets its own egress port.
pub fn testpmd(env: &Env, name: &str, setup: &Setup) -> Result<Measured> {
    if setup.shared_ingress {
        bail!("testpmd baseline: no shared ingress (io mode forwards port to port)");
    }
    let dir = env.out.join("runs").join(name);
    std::fs::create_dir_all(&dir)?;
    let s = sock_dir()?;
    let n = setup.vms.len();
    let mut args: Vec<String> = ["-l", "0-1", "--no-huge", "-m", "1024", "--no-pci"]
        .map(String::from)
        .to_vec();
    args.push("--file-prefix".into());
    args.push(format!("egp-tp-{}-{name}", std::process::id()));
    let mut socks = Vec::new();
    for i in 0..n {
        for (k, what) in ["vm", "eg"].iter().enumerate() {
            let p = s.join(format!("{what}{i}.sock"));
            args.push("--vdev".into());
            args.push(format!("net_vhost{},iface={}", 2 * i + k, p.display()));
            socks.push(p);
        }
    }
    args.extend(
        [
            // Not interactive: testpmd's prompt spins its main thread on core 0, which would
            // starve the harness there (measured: ~50% of the core). Non-interactive it blocks
            // on stdin ("Press enter to exit") while the forwarding core runs.
            "--",
            "--auto-start",
            // The start-up link check busy-waits on core 0 until the harness attaches.
            "--disable-link-check",
            "--forward-mode=io",
            "--nb-cores=1",
            "--total-num-mbufs=32768",
        ]
        .map(String::from),
    );
    args.push(format!("--rxd={}", setup.ring));
    args.push(format!("--txd={}", setup.ring));
    let log = dir.join("testpmd.log");
    let mut kid = Kid(
        Command::new("dpdk-testpmd")
            .args(&args)
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(std::fs::File::create(&log)?)
            .stderr(Stdio::null())
            .spawn()
            .context("starting dpdk-testpmd (Debian package dpdk)")?,
        "dpdk-testpmd",
    );
    wait_for_files(&socks, &mut kid, &log)?;
    let mut stdin = kid.0.stdin.take().context("testpmd stdin")?;
    let plan = Plan {
        file_prefix: format!("egp-trt-{}-{name}", std::process::id()),
        tx_ports: (0..n)
            .map(|i| virtio(i, &s.join(format!("vm{i}.sock")), setup.ring))
            .collect(),
        rx_ports: (0..n)
            .map(|i| virtio(n + i, &s.join(format!("eg{i}.sock")), setup.ring))
            .collect(),
        vms: vm_plans(setup)
            .into_iter()
            .map(|mut v| {
                v.sim = None;
                v
            })
            .collect(),
        seconds: setup.seconds,
        warmup: setup.warmup,
        control: None,
        timeline_vm: None,
        progress_ms: 250,
        mbufs: 16383,
        idle_priority: env.idle_priority,
    };
    let r = traffic(env, &plan, &dir, &mut |_| {});
    let _ = stdin.write_all(b"\n");
    drop(stdin);
    let t = Instant::now();
    while kid.0.try_wait()?.is_none() && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(kid);
    let _ = std::fs::remove_dir_all(&s);
    let traffic = r?;
    Ok(Measured {
        target: "testpmd",
        window_workers: None,
        unaccounted: vec![0; traffic.vms.len()],
        hold_budget_frames: vec![0; n],
        traffic,
        stats: None,
        dir,
    })
}
