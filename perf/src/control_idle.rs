//! `epochgate-perf control-idle`: the CPU epochgate's control thread (`eg-control`) uses while
//! nothing happens, with no sessions and with N idle sessions (default 64), in one run.
//!
//! epochgate runs for real (`run --quiet --duration ...`) with N protected VMs on a shared
//! `net_null` ingress (`no-rx=1`: nothing ever arrives) and a `net_null` egress, so the worker
//! spins on core 1 and the control thread has nothing to do but wait. The figure is the thread's
//! `utime + stime` (fields 14 and 15 of `/proc/PID/task/TID/stat`, in clock ticks) over the
//! sampling window, as a share of one core. The kernel's `schedstat` run time (nanoseconds, when
//! the kernel has it) is reported beside it: ticks are 10 ms each at 100 Hz, too coarse for a
//! thread that should be nearly idle.
//!
//! First the baseline: epochgate up, no session, `seconds` of sampling. Then N sessions connect
//! with the shim library (`Client::connect`, each adopting its VM; a VM the welcome does not
//! report protected is protected), stay idle for another `seconds` of sampling, unprotect
//! (releasing nothing: nothing arrived) and close. Idle as a real VMM's shim is: its pinger
//! pings at epochgate's `[control] ping_interval_ms` (1 s here, liveness being off), so the
//! figure includes answering 64 pings a second.

use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One sampling window of the control thread.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Sessions open (and idle) during the window.
    pub sessions: usize,
    /// Length of the window, seconds (measured).
    pub seconds: f64,
    /// utime + stime of `eg-control` over the window, clock ticks.
    pub ticks: u64,
    pub clk_tck: u64,
    /// `ticks` as percent of one core.
    pub percent: f64,
    /// Run time from `/proc/.../schedstat` over the window, ns (None: the kernel has none).
    pub run_ns: Option<u64>,
    /// `run_ns` as percent of one core.
    pub percent_schedstat: Option<f64>,
}

impl Sample {
    pub fn line(&self) -> String {
        format!(
            "eg-control with {:>3} idle session(s): {} ticks of 1/{} s in {:.1} s = {:.2}% of one core{}",
            self.sessions,
            self.ticks,
            self.clk_tck,
            self.seconds,
            self.percent,
            self.percent_schedstat
                .map_or(String::new(), |p| format!(" (schedstat run time: {p:.3}%)"))
        )
    }
}

/// The baseline (0 sessions) and the loaded window (N sessions) of one run.
#[derive(Debug, Clone, Serialize)]
pub struct ControlIdle {
    pub baseline: Sample,
    pub idle_sessions: Sample,
    /// Where the config and logs are.
    pub dir: PathBuf,
}

/// utime + stime (fields 14 and 15, clock ticks) of a `/proc/.../stat` line. The command name
/// (field 2) is in parentheses and may hold spaces and parentheses: fields are counted after
/// its last `)`.
pub fn stat_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): field n is f[n - 3].
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// The first field of `/proc/.../schedstat`: time spent running, ns.
fn schedstat_ns(text: &str) -> Option<u64> {
    text.split_whitespace().next()?.parse().ok()
}

fn clk_tck() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(100)
}

/// The task directory of the thread of `pid` named `comm`.
fn find_thread(pid: u32, comm: &str) -> Result<PathBuf> {
    let tasks = PathBuf::from(format!("/proc/{pid}/task"));
    for e in std::fs::read_dir(&tasks).with_context(|| format!("reading {}", tasks.display()))? {
        let dir = e?.path();
        if std::fs::read_to_string(dir.join("comm")).is_ok_and(|c| c.trim_end() == comm) {
            return Ok(dir);
        }
    }
    bail!("epochgate (pid {pid}) has no thread named {comm:?}")
}

/// (ticks, schedstat ns) of the thread now.
fn read_thread(task: &Path) -> Result<(u64, Option<u64>)> {
    let stat = std::fs::read_to_string(task.join("stat"))
        .with_context(|| format!("reading {}/stat", task.display()))?;
    let ticks = stat_ticks(&stat).with_context(|| format!("cannot parse {stat:?}"))?;
    let ns = std::fs::read_to_string(task.join("schedstat"))
        .ok()
        .and_then(|s| schedstat_ns(&s));
    Ok((ticks, ns))
}

fn sample(task: &Path, sessions: usize, seconds: f64, hz: u64) -> Result<Sample> {
    let (t0, n0) = read_thread(task)?;
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    let (t1, n1) = read_thread(task)?;
    let secs = start.elapsed().as_secs_f64();
    let ticks = t1.saturating_sub(t0);
    let run_ns = n0.zip(n1).map(|(a, b)| b.saturating_sub(a));
    Ok(Sample {
        sessions,
        seconds: secs,
        ticks,
        clk_tck: hz,
        percent: ticks as f64 / (hz as f64 * secs) * 100.0,
        run_ns,
        percent_schedstat: run_ns.map(|ns| ns as f64 / (secs * 1e9) * 100.0),
    })
}

/// `control.sessions` of a running epochgate, from `epochgate stats --json`.
fn open_sessions(epochgate: &Path, admin: &Path) -> Result<u64> {
    let out = Command::new(epochgate)
        .args(["stats", "--json", "--socket"])
        .arg(admin)
        .output()
        .context("running epochgate stats")?;
    if !out.status.success() {
        bail!(
            "epochgate stats failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("epochgate stats --json")?;
    v["control"]["sessions"]
        .as_u64()
        .context("no control.sessions in epochgate stats --json")
}

/// epochgate, killed (by PID) if still running when dropped.
struct Kid(Child);

impl Drop for Kid {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn mac(i: usize) -> String {
    format!("52:54:00:20:{:02x}:{:02x}", (i >> 8) as u8, i as u8)
}

fn config(sessions: usize, sock: &Path) -> String {
    let mut cfg = format!(
        "[eal]\nlcores = \"0-1\"\nmemory_mb = 256\nhugepages = false\nfile_prefix = \"egp-idle-{pid}\"\n\n\
         [egress]\nport = \"net_null0,no-rx=1\"\n\n[ingress]\nport = \"net_null1,no-rx=1\"\n\n\
         [control]\nsocket = \"{s}/c.sock\"\nadmin_socket = \"{s}/a.sock\"\nmax_sessions = {max}\n\n",
        pid = std::process::id(),
        s = sock.display(),
        max = sessions.max(64),
    );
    for i in 0..sessions.max(1) {
        cfg += &format!(
            "[[vm]]\nname = \"vm{i}\"\nmac = \"{}\"\nmode = \"protected\"\non_full = \"drop\"\n\n",
            mac(i)
        );
    }
    cfg
}

/// Runs epochgate with `sessions` protected VMs and samples its control thread for `seconds`
/// with no session, then for `seconds` with `sessions` idle ones. Config and logs go to `dir`.
pub fn measure(epochgate: &Path, dir: &Path, sessions: usize, seconds: f64) -> Result<ControlIdle> {
    std::fs::create_dir_all(dir)?;
    // Unix socket paths are short: the sockets live in /tmp.
    let sock = std::env::temp_dir().join(format!("egp-idle-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&sock);
    std::fs::create_dir_all(&sock)?;
    let r = measure_in(epochgate, dir, &sock, sessions, seconds);
    let _ = std::fs::remove_dir_all(&sock);
    r
}

fn measure_in(
    epochgate: &Path,
    dir: &Path,
    sock: &Path,
    sessions: usize,
    seconds: f64,
) -> Result<ControlIdle> {
    let cfg = dir.join("epochgate.toml");
    std::fs::write(&cfg, config(sessions, sock))?;
    let stats = dir.join("stats.json");
    let _ = std::fs::remove_file(&stats);
    let err_log = dir.join("epochgate.err");
    // Long enough for both windows and the connects; stopped with SIGTERM once measured.
    let duration = 2.0 * seconds + 60.0;
    let mut kid = Kid(Command::new(epochgate)
        .args(["run", "--quiet", "--config"])
        .arg(&cfg)
        .arg("--duration")
        .arg(duration.to_string())
        .arg("--stats-file")
        .arg(&stats)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join("epochgate.log"))?)
        .stderr(std::fs::File::create(&err_log)?)
        .spawn()
        .context("starting epochgate")?);
    let log = || std::fs::read_to_string(&err_log).unwrap_or_default();
    let control = sock.join("c.sock");
    let t = Instant::now();
    while !control.exists() {
        if let Some(st) = kid.0.try_wait()? {
            bail!(
                "epochgate exited ({st}) before its control socket was up:\n{}",
                log()
            );
        }
        if t.elapsed() > Duration::from_secs(30) {
            bail!("epochgate did not create {} within 30 s", control.display());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let pid = kid.0.id();
    // The socket can be there a moment before the thread is started and named.
    let task = loop {
        match find_thread(pid, "eg-control") {
            Ok(t) => break t,
            Err(e) if t.elapsed() > Duration::from_secs(30) => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    };
    let hz = clk_tck();
    // Let start-up settle (the first stats round, the worker's first rounds).
    std::thread::sleep(Duration::from_secs(1));
    let baseline = sample(&task, 0, seconds, hz)?;
    let mut clients = Vec::with_capacity(sessions);
    for i in 0..sessions {
        let name = format!("vm{i}");
        let mut c = vmm_shim::client::Client::connect(&control, &name)
            .with_context(|| format!("session {i}: connecting to {}", control.display()))?;
        let w = c.welcome();
        if !(w.mode == vmm_shim::proto::Mode::Protected && w.epoch > 0) {
            c.protect()
                .with_context(|| format!("session {i}: protect"))?;
        }
        clients.push(c);
    }
    std::thread::sleep(Duration::from_secs(1));
    let loaded = sample(&task, sessions, seconds, hz)?;
    if let Some(st) = kid.0.try_wait()? {
        bail!("epochgate exited ({st}) during the measurement:\n{}", log());
    }
    // epochgate's own count at the end of the window: the sessions were open all along.
    let open = open_sessions(epochgate, &sock.join("a.sock"))?;
    if open != sessions as u64 {
        bail!("epochgate counted {open} open sessions at the end of the window, not {sessions}");
    }
    // End protection the way a VMM does when it stops checkpointing (nothing is held), so the
    // VMs go on unprotected rather than failed when the sessions close.
    for (i, c) in clients.iter_mut().enumerate() {
        c.unprotect(vmm_shim::proto::Release::Release)
            .with_context(|| format!("session {i}: unprotect"))?;
    }
    drop(clients);
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let t = Instant::now();
    let st = loop {
        if let Some(st) = kid.0.try_wait()? {
            break Some(st);
        }
        if t.elapsed() > Duration::from_secs(15) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    match st {
        Some(st) if st.success() => {}
        Some(st) => bail!(
            "epochgate exited with {st} after the measurement:\n{}",
            log()
        ),
        None => bail!("epochgate did not stop within 15 s of SIGTERM"),
    }
    Ok(ControlIdle {
        baseline,
        idle_sessions: loaded,
        dir: dir.to_path_buf(),
    })
}

/// The subcommand: prints both windows and writes DIR/control-idle.json.
pub fn run(epochgate: Option<PathBuf>, out: &Path, sessions: usize, seconds: f64) -> Result<()> {
    let bin = match epochgate {
        Some(b) => b,
        None => crate::passthrough::sibling("epochgate")?,
    };
    std::fs::create_dir_all(out)?;
    let dir = std::fs::canonicalize(out)?
        .join("runs")
        .join("control-idle");
    println!(
        "control-idle: epochgate with {} protected VMs on a net_null shared ingress; eg-control's CPU over {seconds} s with 0, then {sessions} idle sessions",
        sessions.max(1)
    );
    let m = measure(&bin, &dir, sessions, seconds)?;
    println!("{}", m.baseline.line());
    println!("{}", m.idle_sessions.line());
    let path = out.join("control-idle.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&m)?)?;
    println!(
        "details: {} (config and logs in {})",
        path.display(),
        dir.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_utime_and_stime_after_the_command_name() {
        // A comm with a space and a parenthesis, fields 14 and 15 = 7 and 5.
        let line = "1234 (eg (x) y) S 1 1234 1234 0 -1 4194368 100 0 0 0 7 5 0 0 20 0 3 0 99 \
                    1000 10 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0";
        assert_eq!(stat_ticks(line), Some(12));
        assert_eq!(stat_ticks("1234 (eg) S 1 2"), None);
        assert_eq!(stat_ticks("garbage"), None);
        assert_eq!(schedstat_ns("123456 789 10\n"), Some(123_456));
    }

    #[test]
    fn the_config_has_a_session_and_a_mac_per_vm() {
        let c = config(64, Path::new("/tmp/x"));
        assert_eq!(c.matches("[[vm]]").count(), 64);
        assert!(c.contains("max_sessions = 64"));
        assert!(c.contains("mac = \"52:54:00:20:00:3f\""));
        assert!(!c.contains("\nport = \"net_vhost"));
        let c = config(100, Path::new("/tmp/x"));
        assert!(c.contains("max_sessions = 100"));
    }
}
