//! The `epochgate` command: run the appliance, check a config, or run the built-in demo.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use epochgate::config::Config;
use epochgate::dataplane::Appliance;
use epochgate::dpdk;
use epochgate::stats::Snapshot;
use epochgate::tools::demo;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    name = "epochgate",
    version,
    about = "Output-commit egress stage for checkpoint-protected VMs (DPDK)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the appliance until Ctrl-C / SIGTERM (or --duration).
    Run {
        /// The configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// Stop by itself after this many seconds.
        #[arg(long)]
        duration: Option<f64>,
        /// Keep a JSON snapshot of the counters here (rewritten every stats interval and at exit).
        #[arg(long)]
        stats_file: Option<PathBuf>,
        /// Do not print live counters (final counters are always printed).
        #[arg(long)]
        quiet: bool,
    },
    /// Validate a configuration and print the resolved topology; exit 1 naming the bad key.
    CheckConfig { file: PathBuf },
    /// The built-in default: three VMs from generated captures, egress to a pcap file.
    Demo {
        /// Seconds to run.
        #[arg(long, default_value_t = 4.0)]
        duration: f64,
        /// Where captures, config and output go.
        #[arg(long, default_value = "demo-out")]
        out: PathBuf,
    },
    /// Classify every frame of a capture (pcap/pcapng, Ethernet): defer or immediate, and why.
    #[command(after_help = epochgate::tools::CLASSIFY_HELP)]
    Classify(epochgate::tools::ClassifyArgs),
    /// Replay a capture through the checkpoint request policy: checkpoints and hold times, with
    /// and without deferral.
    #[command(after_help = epochgate::tools::REPLAY_HELP)]
    Replay(epochgate::tools::ReplayArgs),
    /// Print a running epochgate's counters, per VM and per port (through its admin socket).
    Stats(AdminArgs),
    /// List a running epochgate's VMs: mode, MAC, port, epochs, what is held, limits, rate.
    Vms(AdminArgs),
    /// Print a running epochgate's counters once in the Prometheus text format (what
    /// `[admin] metrics_listen` serves at /metrics).
    Metrics(Target),
    /// A live view of a running epochgate: per VM and per worker, refreshing in place (keys
    /// sort and quit); plain snapshots when not on a terminal.
    Top(TopArgs),
    /// Fence a VM off now, as if its controller were lost: its session (if any) is told why and
    /// closed, a protected VM's held output is discarded and it goes to `failed` until a new
    /// session adopts it. Needs `[admin] writable = true`.
    Fail {
        /// The VM's name.
        vm: String,
        /// Print the answer as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: Target,
    },
}

/// Which running epochgate to ask.
#[derive(clap::Args)]
struct Target {
    /// Use this configuration's control.admin_socket.
    #[arg(long, short, conflicts_with = "socket")]
    config: Option<PathBuf>,
    /// The admin socket itself [default: /run/epochgate/admin.sock].
    #[arg(long)]
    socket: Option<PathBuf>,
}

impl Target {
    fn socket(&self) -> Result<PathBuf> {
        Ok(match (&self.socket, &self.config) {
            (Some(socket), _) => socket.clone(),
            (None, Some(config)) => Config::load(config)?.control.admin_socket,
            (None, None) => epochgate::config::ControlConfig::default().admin_socket,
        })
    }
}

#[derive(clap::Args)]
struct TopArgs {
    #[command(flatten)]
    target: Target,
    /// Seconds between refreshes.
    #[arg(long, short = 'd', default_value_t = 1.0, value_parser = parse_interval)]
    interval: f64,
    /// Stop after this many refreshes.
    #[arg(long, short = 'n')]
    iterations: Option<u64>,
    /// Plain snapshots one after another, even on a terminal (as when piped).
    #[arg(long, short)]
    batch: bool,
    /// The VM rows' order at start (keys change it).
    #[arg(long, value_enum, default_value_t = epochgate::admin::top::Sort::Name)]
    sort: epochgate::admin::top::Sort,
}

fn parse_interval(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.1..=3600.0).contains(&v) => Ok(v),
        Ok(v) => Err(format!("{v} is out of range 0.1..=3600 seconds")),
        Err(_) => Err(format!("{s:?} is not a number of seconds")),
    }
}

/// How `stats` and `vms` find the running epochgate, and how they print.
#[derive(clap::Args)]
struct AdminArgs {
    /// Print the whole snapshot as JSON instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    target: Target,
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Run {
            config,
            duration,
            stats_file,
            quiet,
        } => Config::load(&config)
            .map_err(anyhow::Error::from)
            .and_then(|cfg| run(&cfg, duration, stats_file.as_deref(), quiet).map(|_| ())),
        Cmd::CheckConfig { file } => {
            Config::load(&file)
                .map_err(anyhow::Error::from)
                .and_then(|cfg| {
                    println!("{}: ok", file.display());
                    print!("{}", cfg.topology());
                    // How a run would start now: the state a previous run left decides too.
                    let resumed = epochgate::control::state::resume(&cfg)?;
                    for n in &resumed.notes {
                        println!("state:     {n}");
                    }
                    Ok(())
                })
        }
        Cmd::Demo { duration, out } => run_demo(duration, &out),
        Cmd::Classify(args) => {
            epochgate::tools::to_stdout(|out| epochgate::tools::classify_command(&args, out))
        }
        Cmd::Replay(args) => {
            epochgate::tools::to_stdout(|out| epochgate::tools::replay_command(&args, out))
        }
        Cmd::Stats(args) => admin(&args, "stats"),
        Cmd::Vms(args) => admin(&args, "vms"),
        Cmd::Metrics(target) => target.socket().and_then(|socket| {
            let snap = epochgate::admin::query(&socket, "stats")?;
            print!("{}", epochgate::admin::metrics::render(&snap));
            Ok(())
        }),
        Cmd::Fail { vm, json, target } => target.socket().and_then(|socket| {
            let answer = epochgate::admin::command(&socket, &format!("fail {vm}"))?;
            if json {
                println!("{answer}");
            } else {
                let s = |k: &str| answer[k].as_str().unwrap_or("?").to_string();
                println!(
                    "VM {}: was {}, now {}; {}",
                    s("failed"),
                    s("was"),
                    s("now"),
                    if s("session") == "closed" {
                        "its session was told why and closed"
                    } else {
                        "no session drove it"
                    }
                );
            }
            Ok(())
        }),
        Cmd::Top(args) => args.target.socket().and_then(|socket| {
            epochgate::admin::top::run(
                &socket,
                &epochgate::admin::top::TopOptions {
                    interval: Duration::from_secs_f64(args.interval),
                    iterations: args.iterations,
                    batch: args.batch,
                    sort: args.sort,
                },
            )
        }),
    };
    if let Err(e) = result {
        eprintln!("epochgate: {e:#}");
        std::process::exit(1);
    }
}

/// `epochgate stats` / `epochgate vms`: asks the running process and prints its answer.
fn admin(args: &AdminArgs, request: &str) -> Result<()> {
    let socket = args.target.socket()?;
    let snap = epochgate::admin::query(&socket, request)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&snap)?);
    } else if request == "vms" {
        print!("{}", epochgate::admin::render_vms(&snap));
    } else {
        print!("{}", epochgate::admin::render_stats(&snap));
    }
    Ok(())
}

/// Runs the appliance until a signal, the duration or a worker's failure, printing counters;
/// returns the final ones. A failed worker (it panicked or stopped by itself) stops the process:
/// sessions are told why, nothing it held is sent, the final counters are written and the
/// error names the worker and the reason (exit status 1).
fn run(
    cfg: &Config,
    duration: Option<f64>,
    stats_file: Option<&Path>,
    quiet: bool,
) -> Result<Snapshot> {
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.store(true, Ordering::Relaxed))
            .context("installing the SIGINT/SIGTERM handler")?;
    }
    for w in cfg.warnings() {
        eprintln!("epochgate: warning: {w}");
    }
    let app = Appliance::start(cfg).context("starting the data plane")?;
    println!(
        "epochgate: running (pid {}): {} VM(s), egress {}; Ctrl-C to stop",
        std::process::id(),
        cfg.vms.len(),
        cfg.egress
    );
    if let Some(addr) = app.metrics_addr() {
        println!("epochgate: metrics at http://{addr}/metrics");
    }
    // Ports, the control and admin sockets and the metrics endpoint are up: tell systemd
    // (Type=notify). A failure is said but stops nothing: systemd then decides by its timeout.
    if let Err(e) =
        epochgate::admin::notify::notify(&format!("READY=1\nMAINPID={}", std::process::id()))
    {
        eprintln!("epochgate: {e}");
    }
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    let started = Instant::now();
    let interval = Duration::from_millis(cfg.dataplane.stats_interval_ms.max(50));
    let mut next_stats = started + interval;
    let deadline = duration.map(|d| started + Duration::from_secs_f64(d.max(0.0)));
    let mut stats_failing = false;
    while !stop.load(Ordering::Relaxed)
        && deadline.is_none_or(|d| Instant::now() < d)
        && app.failure().is_none()
    {
        std::thread::sleep(Duration::from_millis(20));
        if Instant::now() >= next_stats {
            next_stats += interval;
            let snap = app.snapshot();
            if !quiet {
                print!("{}", snap.render());
            }
            // A stats file that cannot be written (disk full, out of descriptors) never stops
            // the appliance: said once, retried every interval.
            if let Some(path) = stats_file {
                match write_stats(path, &snap) {
                    Ok(()) if stats_failing => {
                        eprintln!("epochgate: stats file {} written again", path.display());
                        stats_failing = false;
                    }
                    Ok(()) => {}
                    Err(e) if !stats_failing => {
                        eprintln!(
                            "epochgate: {e:#}; the data plane goes on, retrying every {} ms",
                            interval.as_millis()
                        );
                        stats_failing = true;
                    }
                    Err(_) => {}
                }
            }
        }
    }
    // The clean stop ("Restart for upgrade") begins, or a failed worker's: systemd shows the
    // unit as deactivating.
    let status = match app.failure() {
        Some(why) => format!("STOPPING=1\nSTATUS={why}"),
        None => "STOPPING=1".to_string(),
    };
    if let Err(e) = epochgate::admin::notify::notify(&status) {
        eprintln!("epochgate: {e}");
    }
    let eal = app.eal();
    let stopped = app.stop();
    let snap = stopped.snapshot;
    match &stopped.failure {
        None => println!("epochgate: stopped; final counters:"),
        Some(_) => println!("epochgate: stopped after a worker failed; final counters:"),
    }
    print!("{}", snap.render());
    if let Some(path) = stats_file {
        match write_stats(path, &snap) {
            // After a failure, the error that ends the process is the worker's.
            Err(e) if stopped.failure.is_some() => eprintln!("epochgate: {e:#}"),
            written => written?,
        }
    }
    dpdk::cleanup(eal);
    if let Some(why) = stopped.failure {
        anyhow::bail!(
            "{why}; stopped without sending anything it held: {} frame(s) it had not sent were discarded (counted as worker-failed)",
            stopped.discarded
        );
    }
    Ok(snap)
}

/// Writes the snapshot atomically (temp file + rename), so a reader never sees half of it.
fn write_stats(path: &Path, snap: &Snapshot) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(snap)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    Ok(())
}

fn run_demo(duration: f64, out: &Path) -> Result<()> {
    // 512 MB of EAL memory = 256 pages; otherwise --no-huge.
    let hugepages = epochgate::dataplane::free_hugepages() >= 256;
    let d = demo::prepare(out, hugepages)
        .with_context(|| format!("preparing the demo in {}", out.display()))?;
    println!(
        "epochgate demo: 3 VMs (web on its own port; db and ledger on a shared ingress), egress to {}",
        d.egress_out.display()
    );
    println!(
        "  memory: {}",
        if hugepages {
            "hugepages"
        } else {
            "--no-huge (no free hugepages)"
        }
    );
    let cfg = Config::load(&d.config)?;
    let stats = d.dir.join("stats.json");
    let (epoch, transfer) = (Duration::from_millis(20), Duration::from_millis(5));
    println!(
        "  ledger is protected: a stand-in VMM fences it every {} ms and commits {} ms later",
        epoch.as_millis(),
        transfer.as_millis()
    );
    let stop_vmm = Arc::new(AtomicBool::new(false));
    let vmm = {
        let (socket, stop) = (cfg.control.socket.clone(), stop_vmm.clone());
        std::thread::spawn(move || demo::vmm(&socket, "ledger", epoch, transfer, &stop))
    };
    let snap = run(&cfg, Some(duration), Some(&stats), false);
    stop_vmm.store(true, Ordering::Relaxed);
    let log = vmm.join().unwrap_or_default();
    let snap = snap?;
    println!();
    print!("{}", demo::report(&d)?);
    if let Some(v) = snap.vms.iter().find(|v| v.name == "ledger") {
        println!(
            "  ledger's frames left only when their epoch was committed: {} epochs committed by the VMM ({} frames); held at exit and discarded: {}",
            log.epochs_committed,
            log.frames_committed,
            v.dropped.get("uncommitted-at-exit").copied().unwrap_or(0)
        );
    }
    if let Some(e) = log.error {
        println!("  the stand-in VMM stopped early: {e}");
    }
    println!(
        "\nlatency through epochgate (the demo plays its captures as fast as the pcap ports read, so"
    );
    println!("frames queue behind the egress capture writer; live, all of it: epochgate stats --config FILE):");
    for v in &snap.vms {
        println!(
            "  {:<7} hold time (arrival to transmit): {}",
            v.name,
            epochgate::admin::latency_text(&v.hold_time)
        );
        if v.epochs_committed > 0 {
            println!(
                "  {:<7} commit to wire: {}; fence drain: {}",
                "",
                epochgate::admin::latency_text(&v.commit_to_wire),
                epochgate::admin::latency_text(&v.fence_drain)
            );
        }
    }
    println!("\noutput in {}:", d.dir.display());
    println!(
        "  egress.pcap (what left), web-in.pcap and shared-in.pcap (inbound delivered to VMs),"
    );
    println!(
        "  stats.json (final counters), demo.toml (the config: epochgate run --config {})",
        d.config.display()
    );
    Ok(())
}
