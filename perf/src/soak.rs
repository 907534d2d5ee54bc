//! `epochgate-perf soak`: one long measurement of epochgate under steady 40 Hz checkpointing,
//! sampling its memory (RSS, the mbuf pool) and the frames it holds once a second, to show
//! that nothing grows; at the end the checker's verdict on every frame and epochgate's counter
//! balance. Writes soak.csv, soak.json, soak.md and soak.svg into --out.
//!
//! The flatness rule (stated in the report): samples of the first 10% of the run are warm-up;
//! the mean of the next 20% ("early") is compared with the mean of the last 20% ("late").
//! RSS passes if late - early <= max(1% of early, 1 MiB); mbufs in use pass if
//! late - early <= max(10% of early, 64 mbufs). Growth is also reported per minute (between the
//! windows' midpoints).

use crate::plan::SimPlan;
use crate::sut::{self, Setup, VmSpec};
use crate::svg::{Chart, Series};
use crate::wire::Profile;
use anyhow::{bail, Context, Result};
use epochgate::stats::Snapshot;
use serde::Serialize;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(clap::Args, Clone)]
pub struct Args {
    /// Length of the measurement, minutes (fractions allowed).
    #[arg(long, default_value_t = 10.0)]
    minutes: f64,
    /// Simulated VMs, each on its own port.
    #[arg(long, default_value_t = 4)]
    vms: usize,
    /// How many of them are protected (the first ones); the others pass through.
    #[arg(long, default_value_t = 3)]
    protected: usize,
    /// Epoch length of the simulated VMMs (25 ms: 40 Hz).
    #[arg(long, default_value_t = 25.0)]
    epoch_ms: f64,
    /// Checkpoint transfer time of the simulated VMMs (fence to commit).
    #[arg(long, default_value_t = 5.0)]
    transfer_ms: f64,
    /// Frames per second offered per VM (imix for protected VMs, mix for pass-through).
    #[arg(long, default_value_t = 20_000.0)]
    rate_pps: f64,
    /// Where soak.csv, soak.json, soak.md, soak.svg and the run's config and logs go.
    #[arg(long, default_value = "perf-out")]
    out: PathBuf,
    /// Sampling interval (the harness reports progress every 250 ms, the finest step).
    #[arg(long, default_value_t = 1000)]
    sample_ms: u64,
    #[arg(long)]
    epochgate: Option<PathBuf>,
    /// As for the other scenarios: `idle` (default) or `normal`.
    #[arg(long, default_value = "idle", value_parser = ["idle", "normal"])]
    harness_priority: String,
}

/// One sample.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub t_s: f64,
    pub rss_kib: u64,
    pub hwm_kib: u64,
    pub mbufs_in_use: u64,
    pub mbufs_available: u64,
    pub mbufs_size: u64,
    pub held_total: u64,
    pub held: Vec<u64>,
    pub sent: u64,
    pub received: u64,
    pub checkpoints: u64,
    pub checked: u64,
    pub violations: u64,
    /// Every VM's ledger balanced in this snapshot.
    pub balanced: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Flatness {
    pub what: &'static str,
    pub unit: &'static str,
    pub early_mean: f64,
    pub late_mean: f64,
    pub growth: f64,
    pub growth_pct: f64,
    pub growth_per_min: f64,
    pub tolerance: f64,
    pub pass: bool,
}

/// The flatness verdict of `values` (one per sample at `t`), see the module's doc.
pub fn flatness(
    what: &'static str,
    unit: &'static str,
    t: &[f64],
    values: &[f64],
    (pct, floor): (f64, f64),
) -> Option<Flatness> {
    let n = values.len();
    let warm = n / 10;
    let w = ((n - warm) / 5).max(1);
    if n < warm + 2 * w || n < 3 {
        return None;
    }
    let mean = |r: std::ops::Range<usize>| {
        let k = r.len() as f64;
        let m = values[r.clone()].iter().sum::<f64>() / k;
        let tm = t[r].iter().sum::<f64>() / k;
        (m, tm)
    };
    let (early, te) = mean(warm..warm + w);
    let (late, tl) = mean(n - w..n);
    let growth = late - early;
    let tolerance = (early * pct / 100.0).max(floor);
    Some(Flatness {
        what,
        unit,
        early_mean: early,
        late_mean: late,
        growth,
        growth_pct: if early > 0.0 {
            growth / early * 100.0
        } else {
            0.0
        },
        growth_per_min: if tl > te {
            growth / ((tl - te) / 60.0)
        } else {
            0.0
        },
        tolerance,
        pass: growth <= tolerance,
    })
}

/// VmRSS and VmHWM of `pid`, KiB.
fn rss(pid: u32) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |k: &str| {
        s.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// The epochgate process run with `cfg` (its command line names the run's own config file).
fn find_pid(cfg: &Path) -> Option<u32> {
    let want = cfg.as_os_str().as_encoded_bytes();
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        if cmd.split(|&b| b == 0).any(|a| a == want) {
            return Some(pid);
        }
    }
    None
}

fn setup(a: &Args) -> Setup {
    let sim = SimPlan {
        epoch_ms: a.epoch_ms,
        transfer_ms: a.transfer_ms,
        honour_requests: false,
        early_release: false,
    };
    let vms = (0..a.vms)
        .map(|i| {
            if i < a.protected {
                VmSpec::new(&format!("prot{i}"), Profile::Imix)
                    .rate(a.rate_pps)
                    .protected(sim)
            } else {
                VmSpec::new(&format!("pass{i}"), Profile::Mix).rate(a.rate_pps)
            }
        })
        .collect();
    let mut s = Setup::new(vms, a.minutes * 60.0);
    s.warmup = 1.0_f64.min(s.seconds * 0.1);
    s
}

fn csv(names: &[String], samples: &[Sample]) -> String {
    let mut s =
        String::from("t_s,rss_kib,hwm_kib,mbufs_in_use,mbufs_available,mbufs_size,held_total");
    for n in names {
        let _ = write!(s, ",held_{n}");
    }
    s += ",sent,received,checkpoints,checked,violations,balanced\n";
    for x in samples {
        let _ = write!(
            s,
            "{:.3},{},{},{},{},{},{}",
            x.t_s,
            x.rss_kib,
            x.hwm_kib,
            x.mbufs_in_use,
            x.mbufs_available,
            x.mbufs_size,
            x.held_total
        );
        for h in &x.held {
            let _ = write!(s, ",{h}");
        }
        let _ = writeln!(
            s,
            ",{},{},{},{},{},{}",
            x.sent, x.received, x.checkpoints, x.checked, x.violations, x.balanced
        );
    }
    s
}

fn chart(title: &str, y: &str, series: Vec<(String, Vec<(f64, f64)>)>) -> String {
    Chart {
        title: title.into(),
        x_label: "time (s)".into(),
        y_label: y.into(),
        series: series
            .into_iter()
            .map(|(name, points)| Series {
                name,
                points,
                step: false,
            })
            .collect(),
        log_x: false,
        markers: vec![],
        fit_y: false,
    }
    .render()
}

fn plot(names: &[String], samples: &[Sample]) -> String {
    let pts = |f: &dyn Fn(&Sample) -> f64| -> Vec<(f64, f64)> {
        samples.iter().map(|s| (s.t_s, f(s))).collect()
    };
    let mut held = vec![("total".to_string(), pts(&|s| s.held_total as f64))];
    for (i, n) in names.iter().enumerate() {
        held.push((
            n.clone(),
            pts(&|s| s.held.get(i).copied().unwrap_or(0) as f64),
        ));
    }
    let charts = [
        chart(
            "epochgate RSS",
            "MiB",
            vec![
                ("VmRSS".into(), pts(&|s| s.rss_kib as f64 / 1024.0)),
                ("VmHWM".into(), pts(&|s| s.hwm_kib as f64 / 1024.0)),
            ],
        ),
        chart(
            "mbufs in use (epochgate's pool)",
            "mbufs",
            vec![("in use".into(), pts(&|s| s.mbufs_in_use as f64))],
        ),
        chart("held frames", "frames", held),
    ];
    // Three charts stacked: each is a complete <svg>, nested at its offset.
    let h = 440;
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"760\" height=\"{}\">\n",
        h * charts.len()
    );
    for (i, c) in charts.iter().enumerate() {
        out += &c.replacen("<svg ", &format!("<svg y=\"{}\" ", i * h), 1);
    }
    out += "</svg>\n";
    out
}

pub fn run(a: &Args) -> Result<bool> {
    if !(a.minutes > 0.0 && a.minutes.is_finite()) {
        bail!("--minutes {}: must be a positive number", a.minutes);
    }
    if a.vms == 0 || a.vms > 15 {
        bail!("--vms {}: 1..=15", a.vms);
    }
    if a.protected > a.vms {
        bail!("--protected {}: more than --vms {}", a.protected, a.vms);
    }
    if a.sample_ms == 0 {
        bail!("--sample-ms 0: must be at least 1 (samples are taken at most every 250 ms)");
    }
    let env = crate::env(&crate::Common {
        out: a.out.clone(),
        seconds: None,
        epochgate: a.epochgate.clone(),
        harness_priority: a.harness_priority.clone(),
    })?;
    let setup = setup(a);
    let names: Vec<String> = setup.vms.iter().map(|v| v.name.clone()).collect();
    let cfg = env.out.join("runs").join("soak").join("epochgate.toml");
    println!(
        "epochgate-perf soak: {} min, {} VMs ({} protected at {} ms epochs, {} ms transfer), {} pps each; sampling every {} ms into {}",
        a.minutes,
        a.vms,
        a.protected,
        a.epoch_ms,
        a.transfer_ms,
        a.rate_pps,
        a.sample_ms,
        env.out.display()
    );
    let started = Instant::now();
    let every = Duration::from_millis(a.sample_ms);
    let mut next = Instant::now();
    let mut last_print = Instant::now();
    let mut pid = None;
    let mut samples: Vec<Sample> = Vec::new();
    let mut sample_errors = 0u64;
    let m = sut::epochgate(&env, "soak", &setup, 4096, &mut |p, admin| {
        let now = Instant::now();
        if now < next {
            return;
        }
        while next <= now {
            next += every;
        }
        if pid.is_none() {
            pid = find_pid(&cfg);
        }
        let snap: Option<Snapshot> = admin.and_then(|a| epochgate::admin::query(a, "stats").ok());
        let (Some(pid), Some(snap)) = (pid, snap) else {
            sample_errors += 1;
            return;
        };
        let Some((rss_kib, hwm_kib)) = rss(pid) else {
            sample_errors += 1;
            return;
        };
        let held: Vec<u64> = names
            .iter()
            .map(|n| {
                snap.vms
                    .iter()
                    .find(|v| &v.name == n)
                    .map_or(0, |v| v.held_frames)
            })
            .collect();
        let per_vm = p["vms"].as_array().cloned().unwrap_or_default();
        let col = |k: usize| -> u64 { per_vm.iter().map(|v| v[k].as_u64().unwrap_or(0)).sum() };
        let s = Sample {
            t_s: started.elapsed().as_secs_f64(),
            rss_kib,
            hwm_kib,
            mbufs_in_use: snap.mbufs.in_use,
            mbufs_available: snap.mbufs.available,
            mbufs_size: snap.mbufs.size,
            held_total: held.iter().sum(),
            held,
            sent: col(0),
            received: col(1),
            checkpoints: snap.vms.iter().map(|v| v.epochs_committed).sum(),
            checked: p["checked"].as_u64().unwrap_or(0),
            violations: p["violations"].as_u64().unwrap_or(0),
            balanced: snap.vms.iter().all(|v| v.balanced()),
        };
        if last_print.elapsed() >= Duration::from_secs(10) {
            last_print = Instant::now();
            println!(
                "  t = {:5.0} s  RSS {:7} KiB  mbufs in use {:6}  held {:5}  sent {:10}  checkpoints {:7}  violations {}",
                s.t_s, s.rss_kib, s.mbufs_in_use, s.held_total, s.sent, s.checkpoints, s.violations
            );
        }
        samples.push(s);
    })?;
    let interrupted = crate::INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst);
    let t: Vec<f64> = samples.iter().map(|s| s.t_s).collect();
    let rss_v: Vec<f64> = samples.iter().map(|s| s.rss_kib as f64).collect();
    let mb_v: Vec<f64> = samples.iter().map(|s| s.mbufs_in_use as f64).collect();
    let flat: Vec<Flatness> = [
        flatness("RSS", "KiB", &t, &rss_v, (1.0, 1024.0)),
        flatness("mbufs in use", "mbufs", &t, &mb_v, (10.0, 64.0)),
    ]
    .into_iter()
    .flatten()
    .collect();
    let stats = m.stats.as_ref().context("epochgate's final counters")?;
    let balance: Vec<(String, bool, i64)> = m
        .traffic
        .vms
        .iter()
        .zip(&m.unaccounted)
        .map(|(v, &u)| {
            let ok = stats
                .vms
                .iter()
                .find(|s| s.name == v.name)
                .is_some_and(|s| s.balanced());
            (v.name.clone(), ok, u)
        })
        .collect();
    let unbalanced_samples = samples.iter().filter(|s| !s.balanced).count();
    let balance_ok = balance.iter().all(|(_, ok, u)| *ok && *u == 0) && unbalanced_samples == 0;
    let problems = m.problems();
    let tr = &m.traffic;
    let starved = tr.stalled_ms > 0.05 * tr.window_s * 1e3;
    let flat_ok = flat.len() == 2 && flat.iter().all(|f| f.pass);

    let mut md = String::new();
    let _ = writeln!(md, "## Soak\n");
    let _ = writeln!(
        md,
        "`{}`{}\n",
        std::env::args().collect::<Vec<_>>().join(" "),
        if interrupted {
            " (interrupted by Ctrl-C)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        md,
        "{} VMs: {} protected (imix, checkpointed every {} ms with a {} ms transfer, not on request), {} pass-through (mix); {} pps offered each. \
         {:.0} s measured, {} samples every {} ms ({} missed).\n",
        a.vms,
        a.protected,
        a.epoch_ms,
        a.transfer_ms,
        a.vms - a.protected,
        a.rate_pps,
        tr.window_s,
        samples.len(),
        a.sample_ms,
        sample_errors
    );
    let _ = writeln!(md, "| VM | role | sent | received | lost | epochs committed | dropped (epochgate) | ledger balanced | loss unaccounted |");
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|");
    for (v, (_, ok, u)) in tr.vms.iter().zip(&balance) {
        let s = stats.vms.iter().find(|s| s.name == v.name);
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            v.name,
            if v.protected {
                "protected"
            } else {
                "pass-through"
            },
            v.sent,
            v.received,
            v.lost,
            s.map_or(0, |s| s.epochs_committed),
            s.map_or(0, |s| s.dropped.values().sum::<u64>()),
            if *ok { "yes" } else { "NO" },
            u
        );
    }
    let _ = writeln!(
        md,
        "\nFrames checked against their commits, order and duplicates: {}; violations: {}. \
         Snapshots with an unbalanced ledger: {unbalanced_samples} of {}. \
         Harness stalled {:.0} ms in all (longest {:.1} ms){}.\n",
        tr.checked,
        tr.violation_count,
        samples.len(),
        tr.stalled_ms,
        tr.max_stall_ms,
        if starved {
            ": STARVED (over 5% of the window)"
        } else {
            ""
        }
    );
    let first = samples.first();
    let last = samples.last();
    let _ = writeln!(
        md,
        "| quantity | first sample | last sample | early mean | late mean | growth | growth/min | tolerance | verdict |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|");
    for f in &flat {
        let (a0, a1) = match f.what {
            "RSS" => (first.map(|s| s.rss_kib), last.map(|s| s.rss_kib)),
            _ => (first.map(|s| s.mbufs_in_use), last.map(|s| s.mbufs_in_use)),
        };
        let _ = writeln!(
            md,
            "| {} ({}) | {} | {} | {:.0} | {:.0} | {:+.0} ({:+.2}%) | {:+.1} | {:.0} | {} |",
            f.what,
            f.unit,
            a0.unwrap_or(0),
            a1.unwrap_or(0),
            f.early_mean,
            f.late_mean,
            f.growth,
            f.growth_pct,
            f.growth_per_min,
            f.tolerance,
            if f.pass { "flat" } else { "GROWS" }
        );
    }
    if let Some(l) = last {
        let _ = writeln!(
            md,
            "\nVmHWM at the end: {} KiB; mbuf pool: {} mbufs; held frames at the last sample: {}.",
            l.hwm_kib, l.mbufs_size, l.held_total
        );
    }
    let _ = writeln!(
        md,
        "\nFlatness rule: the first 10% of the samples are warm-up; the mean of the next 20% (early) is compared with \
         the mean of the last 20% (late). RSS is flat if late - early <= max(1% of early, 1024 KiB); mbufs in use if \
         late - early <= max(10% of early, 64). Growth per minute is between the windows' midpoints. Plot: soak.svg \
         (RSS, mbufs in use, held frames over time); every sample: soak.csv."
    );
    if flat.len() < 2 {
        let _ = writeln!(
            md,
            "\nToo few samples ({}) for a flatness verdict.",
            samples.len()
        );
    }
    for p in &problems {
        let _ = writeln!(md, "\nVIOLATION: {p}");
    }
    let verdict = problems.is_empty() && balance_ok && flat_ok;
    let _ = writeln!(
        md,
        "\nResult: {} (violations {}, balance {}, RSS and mbufs {}).",
        if verdict { "PASS" } else { "FAIL" },
        tr.violation_count,
        if balance_ok { "ok" } else { "NOT ok" },
        if flat_ok { "flat" } else { "not shown flat" }
    );

    let out = &env.out;
    std::fs::write(out.join("soak.csv"), csv(&names, &samples))?;
    std::fs::write(out.join("soak.svg"), plot(&names, &samples))?;
    std::fs::write(out.join("soak.md"), &md)?;
    let json = serde_json::json!({
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "unix_time": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        "layout": crate::LAYOUT,
        "interrupted": interrupted,
        "setup": setup,
        "vms": names,
        "samples": samples,
        "sample_errors": sample_errors,
        "flatness": flat,
        "flat": flat_ok,
        "checked": tr.checked,
        "violations": tr.violation_count,
        "problems": problems,
        "balance": balance.iter().map(|(n, ok, u)| serde_json::json!({"vm": n, "balanced": ok, "unaccounted": u})).collect::<Vec<_>>(),
        "unbalanced_samples": unbalanced_samples,
        "balance_ok": balance_ok,
        "stalled_ms": tr.stalled_ms,
        "max_stall_ms": tr.max_stall_ms,
        "window_s": tr.window_s,
        "starved": starved,
        "traffic": tr,
        "final_stats": stats,
        "pass": verdict,
    });
    std::fs::write(out.join("soak.json"), serde_json::to_vec_pretty(&json)?)?;
    println!("\n{md}");
    println!(
        "soak: {} (soak.json, soak.csv, soak.svg); epochgate's config and logs: {}",
        out.join("soak.md").display(),
        m.dir.display()
    );
    Ok(verdict)
}

#[cfg(test)]
mod tests {
    use super::flatness;

    #[test]
    fn a_flat_series_passes_and_a_growing_one_fails() {
        let t: Vec<f64> = (0..100).map(f64::from).collect();
        let flat: Vec<f64> = (0..100).map(|i| 1000.0 + f64::from(i % 3)).collect();
        let f = flatness("x", "u", &t, &flat, (1.0, 5.0)).unwrap();
        assert!(f.pass, "{f:?}");
        let grows: Vec<f64> = (0..100).map(|i| 1000.0 + f64::from(i)).collect();
        let g = flatness("x", "u", &t, &grows, (1.0, 5.0)).unwrap();
        assert!(!g.pass, "{g:?}");
        // Early window: samples 10..28 (mean 1018.5), late: 82..100 (mean 1090.5), 72 s apart.
        assert!((g.growth - 72.0).abs() < 1e-9, "{g:?}");
        assert!((g.growth_per_min - 60.0).abs() < 1e-9, "{g:?}");
        assert!(flatness("x", "u", &t[..2], &flat[..2], (1.0, 5.0)).is_none());
    }
}
