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
}

impl Setup {
    const SINK: &'static str = "net_null0,no-rx=1";
    fn source(&self) -> String {
        format!("net_null1,size={}", self.size)
    }
}

/// Frames per second epochgate forwarded from the null source to the null sink.
fn run_epochgate(bin: &Path, s: &Setup, dir: &Path, round: usize) -> Result<f64> {
    let cfg = dir.join("epochgate-perf.toml");
    std::fs::write(
        &cfg,
        format!(
            "[eal]\nlcores = \"0-1\"\nmemory_mb = 512\nhugepages = {huge}\nfile_prefix = \"eg-perf-{pid}\"\n\n\
             [egress]\nport = \"{sink}\"\n\n[control]\nsocket = \"{d}/c.sock\"\nadmin_socket = \"{d}/a.sock\"\n\n\
             [dataplane]\nmbufs = 16383\n\n[[vm]]\nname = \"vm1\"\nport = \"{src}\"\nmac = \"52:54:00:00:00:01\"\n",
            huge = s.huge,
            pid = std::process::id(),
            sink = Setup::SINK,
            src = s.source(),
            d = dir.display()
        ),
    )?;
    let stats = dir.join(format!("epochgate-stats-{round}.json"));
    let out = Command::new(bin)
        .args(["run", "--quiet", "--config"])
        .arg(&cfg)
        .arg("--duration")
        .arg(s.seconds.to_string())
        .arg("--stats-file")
        .arg(&stats)
        .output()
        .context("running epochgate")?;
    std::fs::write(
        dir.join(format!("epochgate-{round}.log")),
        [&out.stdout[..], &out.stderr[..]].concat(),
    )?;
    if !out.status.success() {
        bail!("epochgate failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&stats)?)?;
    let tx = v["ports"][0]["tx_frames"]
        .as_u64()
        .context("no egress tx_frames")?;
    let ms = v["uptime_ms"].as_u64().context("no uptime")?;
    Ok(tx as f64 / (ms as f64 / 1000.0))
}

/// Frames per second testpmd (io mode) forwarded between the same two vdevs.
fn run_testpmd(s: &Setup, dir: &Path, round: usize) -> Result<f64> {
    let mut args: Vec<String> = vec!["-l".into(), "0-1".into()];
    if !s.huge {
        args.push("--no-huge".into());
    }
    args.extend(["-m", "512", "--no-pci", "--file-prefix"].map(String::from));
    args.push(format!("eg-perf-testpmd-{}", std::process::id()));
    args.extend([
        "--vdev".into(),
        Setup::SINK.into(),
        "--vdev".into(),
        s.source(),
    ]);
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

pub fn run(seconds: f64, rounds: usize, size: u32, bin: Option<PathBuf>, out: &Path) -> Result<()> {
    let bin = match bin {
        Some(b) => b,
        None => sibling("epochgate")?,
    };
    std::fs::create_dir_all(out)?;
    let setup = Setup {
        huge: hugepages_free() >= 256,
        size,
        seconds,
    };
    println!(
        "pass-through: {} -> epochgate | dpdk-testpmd io -> {}, {size}-byte frames, {seconds} s x {rounds} rounds, {}",
        setup.source(),
        Setup::SINK,
        if setup.huge { "hugepages" } else { "--no-huge" }
    );
    let (mut eg, mut tp, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..rounds {
        let e = run_epochgate(&bin, &setup, out, r)?;
        let t = run_testpmd(&setup, out, r)?;
        println!(
            "  round {}: epochgate {:7.2} Mpps   testpmd {:7.2} Mpps   ratio {:.3}",
            r + 1,
            e / 1e6,
            t / 1e6,
            e / t
        );
        eg.push(e);
        tp.push(t);
        ratios.push(e / t);
    }
    let ratio = median(ratios.clone());
    println!(
        "result: epochgate / testpmd = {ratio:.3} (median of {rounds}; epochgate {:.2} Mpps, testpmd {:.2} Mpps)",
        median(eg.clone()) / 1e6,
        median(tp.clone()) / 1e6
    );
    let json = serde_json::json!({
        "benchmark": "passthrough-vs-testpmd-io",
        "topology": {"source": setup.source(), "sink": Setup::SINK, "frame_size": size, "hugepages": setup.huge},
        "seconds": seconds,
        "epochgate_pps": eg,
        "testpmd_pps": tp,
        "ratios": ratios,
        "ratio_median": ratio,
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
