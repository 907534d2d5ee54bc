//! epochgate's performance harness (see perf/README.md).
//!
//! `epochgate-perf <scenario>` runs measurements, each one epochgate (or `dpdk-testpmd` in io
//! mode, the baseline) with `net_vhost` ports and a traffic process (`epochgate-perf traffic`,
//! one DPDK process on core 0) that generates every simulated VM's frames on virtio-user ports,
//! checkpoints the protected ones through the real shim library, receives the egress and checks
//! every frame against its epoch's commit. A run with any violation exits non-zero.

mod check;
mod control_idle;
mod cost;
mod demo;
mod faults;
mod floor;
mod passthrough;
mod plan;
mod scenarios;
mod sim;
mod soak;
mod sut;
mod svg;
mod traffic;
mod wire;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use scenarios::{write_report, Runner, Scale};
use std::path::PathBuf;

/// Ctrl-C was pressed: the measurement running ends early and cleanly, no other starts.
pub static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The lcore layout, as the report states it.
pub const LAYOUT: &str = "Layout: the system under test (epochgate or dpdk-testpmd) runs with -l 0-1: its main \
thread on core 0, its worker (epochgate) or forwarding core (testpmd) on core 1. The traffic process (generator, \
receiver and checker) runs on core 0 (-l 0) with the simulated VMMs as its threads; epochgate's control thread \
is on core 0 too. The generator/receiver thread runs SCHED_IDLE (unless --harness-priority normal), so the control \
thread and the VMMs preempt it as if they had cores of their own; each run reports how long the harness was \
descheduled (stalled ms). All DPDK processes use --no-huge; VM ports and egress are net_vhost (system under test) <- \
net_virtio_user (harness), queue size 1024. testpmd pairs ports, so in the baseline each VM port has its own egress port.";

#[derive(Parser)]
#[command(name = "epochgate-perf", about = "epochgate performance harness")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Clone)]
struct Common {
    /// Where the report, plots and per-run configs and logs go.
    #[arg(long, default_value = "perf-out")]
    out: PathBuf,
    /// Seconds per measurement.
    #[arg(long)]
    seconds: Option<f64>,
    /// The epochgate binary (default: next to this one).
    #[arg(long)]
    epochgate: Option<PathBuf>,
    /// `idle`: the harness's generator runs SCHED_IDLE so epochgate's control thread and the
    /// simulated VMMs preempt it (faithful latencies; starves under other load on core 0);
    /// `normal`: robust under load, but latencies include the generator's time slices.
    #[arg(long, default_value = "idle", value_parser = ["idle", "normal"])]
    harness_priority: String,
}

#[derive(Subcommand)]
enum Cmd {
    /// Every scenario, briefly (a few minutes in all): DIR/report.json, report.md and plots.
    Quick(Common),
    /// Every scenario at full length and with the full sweeps (about 15 minutes).
    Full(Common),
    /// Throughput unprotected / protected at 40 Hz / mixed, against testpmd, over frame sizes.
    Throughput(Common),
    /// Fence round trip, checkpoint request latency (immediate frame, deferral), pass-through
    /// latency idle and under bursts, the idle control thread's CPU with 64 sessions.
    Latency(Common),
    /// Cost per frame over the number of VMs (own ports and shared ingress).
    SweepVms(Common),
    /// Protected throughput and release latency over the epoch length.
    SweepEpochs(Common),
    /// The live demo: epochgate with 4 VMs fed by the harness (about 20 s; Ctrl-C ends it).
    Demo {
        #[command(flatten)]
        common: Common,
        /// Inject a fault: the VMM of `db` sends each commit 2 ms before it records it, so the
        /// checker must report frames released before their commit (and the run must fail).
        #[arg(long)]
        inject_early_release: bool,
    },
    /// One measurement of your own: N VMs of one profile, some protected, against testpmd.
    Custom {
        #[command(flatten)]
        common: Common,
        /// Simulated VMs, each on its own port.
        #[arg(long, default_value_t = 2)]
        vms: usize,
        /// udpN (N = 64..1518), imix, acks, ack (pure ACKs only), fragN or mix.
        #[arg(long, default_value = "udp64", value_parser = wire::Profile::parse)]
        profile: wire::Profile,
        /// How many of the VMs are protected (the first ones).
        #[arg(long, default_value_t = 0)]
        protected: usize,
        #[arg(long, default_value_t = 25.0)]
        epoch_ms: f64,
        #[arg(long, default_value_t = 5.0)]
        transfer_ms: f64,
        /// Frames per second per VM (default: as fast as possible).
        #[arg(long)]
        rate_pps: Option<f64>,
        /// dataplane.vm_queue of epochgate (frames held per VM).
        #[arg(long, default_value_t = 4096)]
        vm_queue: u64,
    },
    /// epochgate's pass-through loop vs testpmd on net_null ports (no harness traffic).
    Passthrough {
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Rounds of (epochgate, testpmd); the median ratio is reported.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        #[arg(long, default_value_t = 64)]
        size: u32,
        /// Also measure the same VM protected (40 Hz, 5 ms transfer, checkpointed by an
        /// in-process VMM through the shim), holding at most this many frames
        /// (`dataplane.vm_queue`; the source fills it in every epoch), and report its per-frame
        /// cost against the pass-through VM's plus the classifier's.
        #[arg(long, num_args = 0..=1, default_missing_value = "32768", value_name = "HOLD")]
        protected: Option<u64>,
        /// The protected VM's checkpoint period (ms).
        #[arg(long, default_value_t = 25.0)]
        epoch_ms: f64,
        /// The checkpoint transfer before each commit (ms).
        #[arg(long, default_value_t = 5.0)]
        transfer_ms: f64,
        #[arg(long)]
        epochgate: Option<PathBuf>,
        #[arg(long, default_value = "perf-out")]
        out: PathBuf,
    },
    /// CPU of epochgate's idle control thread (eg-control), with no session and then with N
    /// idle sessions (N protected VMs on a net_null shared ingress), as % of one core.
    ControlIdle {
        /// Idle sessions (one protected VM each) in the second window.
        #[arg(long, default_value_t = 64)]
        sessions: usize,
        /// Seconds of each sampling window.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        #[arg(long)]
        epochgate: Option<PathBuf>,
        #[arg(long, default_value = "perf-out")]
        out: PathBuf,
    },
    /// Seeded fault campaign against the real process (root: it makes a network namespace):
    /// traffic, fences, commits, discards, mode changes, shim SIGKILL/SIGSTOP, epochgate
    /// SIGTERM/SIGKILL and restart, buffer exhaustion, hostile control messages; each run's
    /// uplink capture is checked against the commits. Writes DIR/faults.md and faults.json.
    Faults {
        /// Runs to make.
        #[arg(long, default_value_t = 20)]
        runs: u32,
        /// The campaign's seed: run r's operations depend only on it and r.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// The first run's number (`--first R --runs 1` replays run R).
        #[arg(long, default_value_t = 0)]
        first: u32,
        /// Operations per run.
        #[arg(long, default_value_t = 40)]
        ops: u32,
        /// Stop starting runs after this many minutes (the report covers the runs made).
        #[arg(long)]
        max_minutes: Option<f64>,
        /// Keep every run's directory (config, logs, capture), not only failing ones.
        #[arg(long)]
        keep: bool,
        #[arg(long)]
        epochgate: Option<PathBuf>,
        #[arg(long, default_value = "perf-out")]
        out: PathBuf,
    },
    /// A long measurement (default 10 min, 4 VMs, 3 protected at 40 Hz) sampling epochgate's
    /// RSS, mbufs in use and held frames: DIR/soak.{csv,json,md,svg}; fails on a violation, an
    /// unbalanced counter or growth.
    Soak(soak::Args),
    /// (internal) The traffic process of one measurement: reads PLAN, prints progress lines and
    /// one result line as JSON.
    #[command(hide = true)]
    Traffic { plan: PathBuf },
    /// (internal) The hold floor of `passthrough --protected`: a delay line of each depth on
    /// the net_null ports; prints one result line as JSON.
    #[command(hide = true)]
    HoldFloor {
        #[arg(long, required = true)]
        depth: Vec<u64>,
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        #[arg(long, default_value_t = 64)]
        size: u32,
        #[arg(long)]
        no_huge: bool,
        #[arg(long, default_value_t = 16383)]
        mbufs: u32,
        /// Hold the nonzero depths in epochs of this many ms (with `--transfer-ms`).
        #[arg(long, requires = "transfer_ms")]
        epoch_ms: Option<f64>,
        #[arg(long, requires = "epoch_ms")]
        transfer_ms: Option<f64>,
    },
}

fn env(c: &Common) -> Result<sut::Env> {
    let epochgate = match &c.epochgate {
        Some(p) => p.clone(),
        None => passthrough::sibling("epochgate")?,
    };
    std::fs::create_dir_all(&c.out).with_context(|| format!("creating {}", c.out.display()))?;
    Ok(sut::Env {
        epochgate,
        me: std::env::current_exe()?,
        out: std::fs::canonicalize(&c.out)?,
        idle_priority: c.harness_priority == "idle",
    })
}

#[derive(Clone, Copy, PartialEq)]
enum Which {
    Throughput,
    Latency,
    Vms,
    Epochs,
}

fn scenarios(c: &Common, which: &[Which], quick: bool) -> Result<bool> {
    let env = env(c)?;
    let scale = Scale {
        seconds: c.seconds.unwrap_or(if quick { 2.0 } else { 8.0 }),
        quick,
    };
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("[{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut r = Runner {
        env,
        scale,
        rows: Vec::new(),
        targets: Vec::new(),
        extra: serde_json::Map::new(),
        bar: &bar,
    };
    let mut total = 0;
    for w in which {
        total += match w {
            Which::Throughput => r.throughput_runs(),
            Which::Latency => r.latency_runs(),
            Which::Vms => {
                let (a, b) = r.vm_counts();
                (a.len() + b.len()) as u64
            }
            Which::Epochs => r.epoch_lengths().len() as u64,
        };
    }
    bar.set_length(total);
    let eta = total as f64 * (scale.seconds + 3.0);
    bar.println(format!(
        "epochgate-perf: {total} measurements of {} s each (about {:.0} min); results in {}",
        scale.seconds,
        eta / 60.0,
        c.out.display()
    ));
    let started = std::time::Instant::now();
    let mut failed = None;
    for w in which {
        let res = match w {
            Which::Throughput => r.throughput(),
            Which::Latency => r.latency(),
            Which::Vms => r.sweep_vms(),
            Which::Epochs => r.sweep_epochs(),
        };
        if let Err(e) = res {
            failed = Some(e);
            break;
        }
        if *w == Which::Throughput {
            r.classify_share()?;
        }
    }
    bar.finish_and_clear();
    let meta = serde_json::json!({
        "layout": LAYOUT,
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "seconds_per_measurement": scale.seconds,
        "harness_priority": c.harness_priority,
        "elapsed_s": started.elapsed().as_secs_f64(),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "dpdk": std::process::Command::new("pkg-config").args(["--modversion", "libdpdk"]).output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default(),
    });
    let md = write_report(&r.env.out, &r, meta)?;
    println!("{md}");
    println!(
        "report: {}/report.json, report.md and *.svg",
        r.env.out.display()
    );
    if let Some(e) = failed {
        return Err(e);
    }
    let bad: Vec<String> = r
        .rows
        .iter()
        .flat_map(|row| {
            row.problems
                .iter()
                .map(move |p| format!("{}: {p}", row.name))
        })
        .collect();
    if !bad.is_empty() {
        eprintln!("epochgate-perf: VIOLATIONS ({}):", bad.len());
        for b in &bad {
            eprintln!("  {b}");
        }
        return Ok(false);
    }
    let checked: u64 = r.rows.iter().map(|x| x.checked).sum();
    println!("every frame checked: {checked} frames, 0 violations, every loss accounted for");
    Ok(true)
}

fn main() {
    let Cli { cmd } = Cli::parse();
    use Which::*;
    // The children run in their own process groups, so a terminal's Ctrl-C reaches only this
    // process, which ends the running measurement through its traffic process.
    let flag: &'static std::sync::atomic::AtomicBool = match cmd {
        Cmd::Traffic { .. } => &traffic::EARLY_STOP,
        _ => &INTERRUPTED,
    };
    if let Err(e) =
        ctrlc::set_handler(move || flag.store(true, std::sync::atomic::Ordering::SeqCst))
    {
        eprintln!("epochgate-perf: cannot handle Ctrl-C: {e}");
    }
    let r = match cmd {
        Cmd::Quick(c) => scenarios(&c, &[Throughput, Latency, Vms, Epochs], true),
        Cmd::Full(c) => scenarios(&c, &[Throughput, Latency, Vms, Epochs], false),
        Cmd::Throughput(c) => scenarios(&c, &[Throughput], false),
        Cmd::Latency(c) => scenarios(&c, &[Latency], false),
        Cmd::SweepVms(c) => scenarios(&c, &[Vms], false),
        Cmd::SweepEpochs(c) => scenarios(&c, &[Throughput, Epochs], false),
        Cmd::Demo {
            common,
            inject_early_release,
        } => {
            let secs = common.seconds.unwrap_or(20.0);
            env(&common).and_then(|e| demo::run(&e, secs, inject_early_release))
        }
        Cmd::Custom {
            common,
            vms,
            profile,
            protected,
            epoch_ms,
            transfer_ms,
            rate_pps,
            vm_queue,
        } => custom(
            &common,
            vms,
            profile,
            protected,
            (epoch_ms, transfer_ms),
            rate_pps,
            vm_queue,
        ),
        Cmd::Passthrough {
            seconds,
            rounds,
            size,
            protected,
            epoch_ms,
            transfer_ms,
            epochgate,
            out,
        } => passthrough::run(
            seconds,
            rounds.max(1),
            size,
            protected,
            (epoch_ms, transfer_ms),
            epochgate,
            &out,
        )
        .map(|()| true),
        Cmd::ControlIdle {
            sessions,
            seconds,
            epochgate,
            out,
        } => control_idle::run(epochgate, &out, sessions, seconds.max(0.1)).map(|()| true),
        Cmd::Faults {
            runs,
            seed,
            first,
            ops,
            max_minutes,
            keep,
            epochgate,
            out,
        } => (|| {
            let epochgate = match epochgate {
                Some(p) => p,
                None => passthrough::sibling("epochgate")?,
            };
            faults::campaign(&faults::Options {
                runs,
                seed,
                first,
                ops,
                max_minutes,
                out,
                epochgate,
                keep,
            })
        })(),
        Cmd::Soak(a) => soak::run(&a),
        Cmd::Traffic { plan } => traffic_main(&plan).map(|()| true),
        Cmd::HoldFloor {
            depth,
            seconds,
            size,
            no_huge,
            mbufs,
            epoch_ms,
            transfer_ms,
        } => floor::measure(&floor::Args {
            depths: depth,
            epochs: epoch_ms.zip(transfer_ms),
            seconds,
            size,
            huge: !no_huge,
            mbufs,
        })
        .and_then(|f| {
            println!("{}", serde_json::to_string(&f)?);
            Ok(true)
        }),
    };
    match r {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("epochgate-perf: {e:#}");
            std::process::exit(2);
        }
    }
}

fn custom(
    c: &Common,
    n: usize,
    profile: wire::Profile,
    protected: usize,
    (epoch_ms, transfer_ms): (f64, f64),
    rate_pps: Option<f64>,
    vm_queue: u64,
) -> Result<bool> {
    if n == 0 || n > 15 {
        bail!("--vms {n}: 1..=15 (testpmd needs two ports per VM, DPDK allows 32)");
    }
    if protected > n {
        bail!("--protected {protected}: more than --vms {n}");
    }
    let env = env(c)?;
    let seconds = c.seconds.unwrap_or(5.0);
    let vms = (0..n)
        .map(|i| {
            let mut v = sut::VmSpec::new(&format!("vm{i}"), profile);
            v.rate_pps = rate_pps;
            if i < protected {
                v.sim = Some(plan::SimPlan {
                    epoch_ms,
                    transfer_ms,
                    honour_requests: false,
                    early_release: false,
                });
            }
            v
        })
        .collect();
    let setup = sut::Setup::new(vms, seconds);
    let tp = sut::testpmd(&env, "custom-testpmd", &setup)?;
    let eg = sut::epochgate(&env, "custom-epochgate", &setup, vm_queue, &mut |_, _| {})?;
    let pps = |m: &sut::Measured| m.traffic.vms.iter().map(|v| v.rx_pps).sum::<f64>();
    println!(
        "{n} VMs ({protected} protected), {}: epochgate {:.3} Mpps, testpmd {:.3} Mpps, ratio {:.3}; {} frames checked, {} violations",
        profile.name(),
        pps(&eg) / 1e6,
        pps(&tp) / 1e6,
        pps(&eg) / pps(&tp).max(1.0),
        eg.traffic.checked,
        eg.traffic.violation_count
    );
    for p in eg.problems() {
        println!("  VIOLATION: {p}");
    }
    std::fs::write(
        env.out.join("custom.json"),
        serde_json::to_vec_pretty(&serde_json::json!({"epochgate": eg, "testpmd": tp}))?,
    )?;
    Ok(eg.problems().is_empty())
}

fn traffic_main(plan: &std::path::Path) -> Result<()> {
    let text = std::fs::read(plan).with_context(|| format!("reading {}", plan.display()))?;
    let plan: plan::Plan = serde_json::from_slice(&text)
        .with_context(|| format!("{}: not a traffic plan", plan.display()))?;
    if plan.vms.is_empty() {
        bail!("the plan has no VMs");
    }
    let result = traffic::run(&plan)?;
    println!(
        "{}",
        serde_json::json!({"event": "result", "result": result})
    );
    Ok(())
}
