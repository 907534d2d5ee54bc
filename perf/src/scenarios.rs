//! The scenarios and the report. Each scenario is a list of measurements (`sut.rs`); every
//! throughput figure is a ratio to `dpdk-testpmd` measured in the same run on the same
//! topology; every latency comes from the traffic process's own clock or from epochgate's
//! meters, as named in the report.

use crate::plan::{Dist, SimPlan, VmResult};
use crate::sut::{self, Env, Measured, Setup, VmSpec};
use crate::svg::{Chart, Series};
use crate::wire::Profile;
use anyhow::Result;
use serde::Serialize;
use serde_json::{json, Value};
use std::fmt::Write as _;

/// How long each measurement runs.
#[derive(Debug, Clone, Copy)]
pub struct Scale {
    pub seconds: f64,
    pub quick: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub name: String,
    pub value: f64,
    pub goal: String,
    pub pass: bool,
    /// Where the value comes from.
    pub from: String,
}

/// One row of the report: a measurement, summarised.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub name: String,
    pub scenario: String,
    pub target: String,
    pub params: Value,
    pub rx_pps: f64,
    pub rx_bps: f64,
    pub tx_pps: f64,
    pub checked: u64,
    pub violations: u64,
    pub problems: Vec<String>,
    pub vms: Vec<VmResult>,
    /// epochgate's own meters per VM: hold time, commit to wire, fence drain (ns).
    pub epochgate: Vec<Value>,
    /// Per VM: frames epochgate may keep, and that as time at the VM's offered rate (ms).
    pub hold_budget: Vec<Value>,
    pub timeline: Option<crate::plan::Timeline>,
    /// Share of epochgate's worker cycles spent in rounds that moved frames (None: testpmd).
    /// Near 1: epochgate was the bottleneck; well below: the harness or the rate was.
    pub worker_busy: Option<f64>,
    /// The worker's busy-round time per frame it received, in ns (None: testpmd): what a frame
    /// costs epochgate, whoever was the bottleneck.
    pub worker_ns_per_frame: Option<f64>,
    /// The traffic loop was descheduled this long (other load on core 0), of `window_s`.
    pub stalled_ms: f64,
    pub window_s: f64,
}

impl Row {
    pub fn of(scenario: &str, name: &str, params: Value, m: &Measured) -> Row {
        let t = &m.traffic;
        let epochgate = m
            .stats
            .as_ref()
            .map(|s| {
                s.vms
                    .iter()
                    .map(|v| {
                        json!({"vm": v.name, "mode": v.mode, "hold_time": v.hold_time, "commit_to_wire": v.commit_to_wire,
                               "fence_drain": v.fence_drain, "dropped": v.dropped, "fences_cut_short": v.fences_cut_short,
                               "checkpoint_requests": v.checkpoint_requests})
                    })
                    .collect()
            })
            .unwrap_or_default();
        let hold_budget = t
            .vms
            .iter()
            .zip(&m.hold_budget_frames)
            .filter(|(v, _)| v.protected)
            .map(|(v, &f)| {
                json!({"vm": v.name, "frames": f, "ms_at_offered_rate": if v.tx_pps > 0.0 { f as f64 / v.tx_pps * 1e3 } else { 0.0 }})
            })
            .collect();
        Row {
            name: name.into(),
            scenario: scenario.into(),
            target: m.target.into(),
            params,
            rx_pps: t.vms.iter().map(|v| v.rx_pps).sum(),
            rx_bps: t.vms.iter().map(|v| v.rx_bps).sum(),
            tx_pps: t.vms.iter().map(|v| v.tx_pps).sum(),
            checked: t.checked,
            violations: t.violation_count,
            problems: m.problems(),
            vms: t.vms.clone(),
            epochgate,
            hold_budget,
            timeline: t.timeline.clone(),
            worker_busy: workers(m).and_then(|w| {
                (w.busy + w.idle > 0).then(|| w.busy as f64 / (w.busy + w.idle) as f64)
            }),
            worker_ns_per_frame: workers(m).and_then(|w| {
                (w.frames > 0 && w.hz > 0)
                    .then(|| w.busy as f64 / w.frames as f64 / w.hz as f64 * 1e9)
            }),
            stalled_ms: t.stalled_ms,
            window_s: t.window_s,
        }
    }
}

/// The poll loops' busy and idle cycles and frames received, summed over the workers: over the
/// measured window when the run sampled it, else over the whole run (an older binary, or the
/// admin socket did not answer in the window).
struct WorkerTotals {
    busy: u64,
    idle: u64,
    frames: u64,
    hz: u64,
}

fn workers(m: &Measured) -> Option<WorkerTotals> {
    let sum = |ws: &[epochgate::stats::WorkerSnapshot]| {
        ws.iter().fold(
            WorkerTotals {
                busy: 0,
                idle: 0,
                frames: 0,
                hz: 0,
            },
            |t, w| WorkerTotals {
                busy: t.busy + w.busy_cycles,
                idle: t.idle + w.idle_cycles,
                frames: t.frames + w.rx_frames,
                hz: t.hz.max(w.tsc_hz),
            },
        )
    };
    if let Some((a, b)) = &m.window_workers {
        let (a, b) = (sum(a), sum(b));
        if b.frames > a.frames {
            return Some(WorkerTotals {
                busy: b.busy.saturating_sub(a.busy),
                idle: b.idle.saturating_sub(a.idle),
                frames: b.frames - a.frames,
                hz: b.hz,
            });
        }
    }
    m.stats.as_ref().map(|s| sum(&s.workers))
}

pub struct Runner<'a> {
    pub env: Env,
    pub scale: Scale,
    pub rows: Vec<Row>,
    pub targets: Vec<Target>,
    pub extra: serde_json::Map<String, Value>,
    pub bar: &'a indicatif::ProgressBar,
}

fn interrupted() -> Result<()> {
    if crate::INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst) {
        anyhow::bail!("interrupted (Ctrl-C): the report holds the measurements made so far");
    }
    Ok(())
}

fn sim40() -> SimPlan {
    SimPlan {
        epoch_ms: 25.0,
        transfer_ms: 5.0,
        honour_requests: false,
        early_release: false,
    }
}

fn udp(size: u32) -> Profile {
    Profile::Udp { size }
}

/// Frames for a hold budget of `epochs` epochs of `epoch_ms` at `pps`, within epochgate's limits.
fn budget(epochs: f64, epoch_ms: f64, pps: f64) -> u64 {
    ((epochs * epoch_ms / 1e3 * pps).ceil() as u64).clamp(1024, 1 << 20)
}

impl Runner<'_> {
    fn eg(&mut self, scenario: &str, name: &str, setup: &Setup, vm_queue: u64) -> Result<Row> {
        interrupted()?;
        self.bar.set_message(format!("{name}: epochgate"));
        let m = sut::epochgate(&self.env, name, setup, vm_queue, &mut |_, _| {})?;
        self.bar.inc(1);
        let row = Row::of(
            scenario,
            name,
            json!({"setup": setup, "vm_queue": vm_queue}),
            &m,
        );
        for p in &row.problems {
            self.bar.println(format!("VIOLATION in {name}: {p}"));
        }
        self.rows.push(row.clone());
        Ok(row)
    }

    fn tp(&mut self, scenario: &str, name: &str, setup: &Setup) -> Result<Row> {
        interrupted()?;
        self.bar.set_message(format!("{name}: dpdk-testpmd"));
        let m = sut::testpmd(&self.env, name, setup)?;
        self.bar.inc(1);
        let row = Row::of(scenario, name, json!({"setup": setup}), &m);
        self.rows.push(row.clone());
        Ok(row)
    }

    fn target(&mut self, name: &str, value: f64, goal: &str, pass: bool, from: &str) {
        self.targets.push(Target {
            name: name.into(),
            value,
            goal: goal.into(),
            pass,
            from: from.into(),
        });
    }

    pub fn sizes(&self) -> Vec<u32> {
        if self.scale.quick {
            vec![64, 512, 1518]
        } else {
            vec![64, 128, 256, 512, 1024, 1280, 1518]
        }
    }

    /// Measurements `throughput` makes (for the progress bar).
    pub fn throughput_runs(&self) -> u64 {
        self.sizes().len() as u64 * 2 + 2 * 2
    }

    /// Unprotected at every size, epochgate beside testpmd; all protected (40 Hz, 5 ms
    /// transfer, a hold budget of two epochs at the baseline's rate) and mixed at 64 and 1518 B.
    pub fn throughput(&mut self) -> Result<()> {
        let s = self.scale.seconds;
        let mut curve = Vec::new();
        for size in self.sizes() {
            let two = |p: Profile| vec![VmSpec::new("vm0", p), VmSpec::new("vm1", p)];
            let setup = Setup::new(two(udp(size)), s);
            let tp = self.tp("throughput", &format!("testpmd-{size}"), &setup)?;
            let eg = self.eg("throughput", &format!("unprotected-{size}"), &setup, 1024)?;
            curve.push((size, eg.rx_pps, tp.rx_pps, eg.rx_bps, tp.rx_bps));
            if size == 64 || size == 1518 {
                let per_vm = tp.rx_pps / 2.0;
                let q = budget(2.0, 25.0, per_vm);
                let mut prot = two(udp(size));
                for v in &mut prot {
                    v.sim = Some(sim40());
                }
                let mut setup = Setup::new(prot.clone(), s);
                setup.timeline_vm = (size == 1518).then_some(0);
                let p = self.eg("throughput", &format!("protected-{size}"), &setup, q)?;
                let mut mixed = two(udp(size));
                mixed[0].sim = Some(sim40());
                let m = self.eg(
                    "throughput",
                    &format!("mixed-{size}"),
                    &Setup::new(mixed, s),
                    q,
                )?;
                let from = format!("protected-{size} vs testpmd-{size}");
                if size == 1518 {
                    self.target(
                        "protected (40 Hz, 5 ms transfer, 2-epoch budget) / testpmd at 1518 B",
                        p.rx_pps / tp.rx_pps,
                        ">= 0.90",
                        p.rx_pps / tp.rx_pps >= 0.90,
                        &from,
                    );
                }
                self.extra.insert(
                    format!("ratios-{size}"),
                    json!({"unprotected": eg.rx_pps / tp.rx_pps, "protected": p.rx_pps / tp.rx_pps,
                           "mixed": m.rx_pps / tp.rx_pps}),
                );
                if size == 64 {
                    self.target(
                        "unprotected / testpmd at 64 B",
                        eg.rx_pps / tp.rx_pps,
                        ">= 0.95",
                        eg.rx_pps / tp.rx_pps >= 0.95,
                        "unprotected-64 vs testpmd-64",
                    );
                }
            }
        }
        self.extra.insert("throughput_curve".into(), json!(curve));
        Ok(())
    }

    pub fn latency_runs(&self) -> u64 {
        7
    }

    /// Fence round trip of an idle VM; immediate frame -> checkpoint request at the shim;
    /// a deferral's request after its deadline; pass-through latency at a low rate, alone and
    /// while protected VMs release bursts; the idle control thread's CPU with 64 sessions.
    pub fn latency(&mut self) -> Result<()> {
        let s = self.scale.seconds;
        let idle = Setup::new(
            vec![VmSpec::new("idle", udp(64)).rate(0.0).protected(sim40())],
            s,
        );
        let r = self.eg("latency", "fence-idle", &idle, 1024)?;
        let p99 = r.vms[0].fence_rtt.p99;
        self.target(
            "fence round trip of an idle VM, p99 (us)",
            p99 as f64 / 1e3,
            "<= 20",
            r.vms[0].fences > 0 && p99 <= 20_000,
            "fence-idle",
        );
        let req = Setup::new(
            vec![VmSpec::new("req", udp(64)).rate(200.0).protected(SimPlan {
                epoch_ms: 10_000.0,
                transfer_ms: 0.5,
                honour_requests: true,
                early_release: false,
            })],
            s,
        );
        let r = self.eg("latency", "request", &req, 1024)?;
        let p99 = r.vms[0].request_latency.p99;
        self.target(
            "immediate frame -> checkpoint request at the shim, p99 (us)",
            p99 as f64 / 1e3,
            "<= 20",
            r.vms[0].request_latency.count > 0 && p99 <= 20_000,
            "request",
        );
        self.deferral(s)?;
        // Release latency where the egress is not the bottleneck (at saturation, every release
        // waits behind the ones before it and the figure is the queue, not epochgate).
        let vms = vec![
            VmSpec::new("p0", udp(1518))
                .rate(50_000.0)
                .protected(sim40()),
            VmSpec::new("p1", udp(1518))
                .rate(50_000.0)
                .protected(sim40()),
        ];
        let r = self.eg(
            "latency",
            "commit-latency",
            &Setup::new(vms, s),
            budget(2.0, 25.0, 50_000.0),
        )?;
        let first = r.vms.iter().map(|v| v.commit_first.p99).max().unwrap_or(0);
        self.target(
            "commit -> first frame of the epoch at the receiver, p99 (us)",
            first as f64 / 1e3,
            "<= 10",
            r.vms.iter().all(|v| v.commit_first.count > 0) && first <= 10_000,
            "commit-latency (2 protected VMs, 50k frames/s each, 1518 B)",
        );
        let pt = || VmSpec::new("pt", udp(64)).rate(20_000.0);
        let alone = self.eg(
            "latency",
            "passthrough-idle",
            &Setup::new(vec![pt()], s),
            1024,
        )?;
        let busy_vms = vec![
            pt(),
            VmSpec::new("p0", udp(1518)).protected(sim40()),
            VmSpec::new("p1", udp(1518)).protected(sim40()),
        ];
        let busy = self.eg(
            "latency",
            "passthrough-bursts",
            &Setup::new(busy_vms, s),
            budget(2.0, 25.0, 400_000.0),
        )?;
        let (a, b) = (alone.vms[0].latency.p99, busy.vms[0].latency.p99);
        self.target(
            "pass-through p99 while protected VMs release bursts / idle p99",
            b as f64 / a.max(1) as f64,
            "<= 2",
            a > 0 && b <= 2 * a,
            "passthrough-bursts vs passthrough-idle",
        );
        self.control_idle(64, s.max(5.0))?;
        Ok(())
    }

    /// One protected VM sending only pure ACKs (each deferrable), so rarely that every epoch
    /// holds one frame: its request comes when the deferral armed by that frame runs out,
    /// `defer_delay` after it arrived. The harness times requests from the epoch's first frame
    /// sent, so lateness = request latency - `defer_delay`. The run counts only if epochgate's
    /// requests were all deferral expiries.
    fn deferral(&mut self, s: f64) -> Result<()> {
        // epochgate's defaults, which the run's config does not change.
        let policy = epochgate::config::ClassifierConfig::default().policy;
        let (delay_ns, max_ns) = (policy.defer_delay_ns, policy.max_defer_ns);
        // A frame at most every two longest deferrals: each deferral holds one frame, and its
        // checkpoint (0.5 ms transfer) is over before the next frame.
        let rate = (1e9 / (2.0 * max_ns.max(1) as f64)).min(50.0);
        let setup = Setup::new(
            vec![VmSpec::new("defer", Profile::Ack)
                .rate(rate)
                .protected(SimPlan {
                    epoch_ms: 10_000.0,
                    transfer_ms: 0.5,
                    honour_requests: true,
                    early_release: false,
                })],
            s,
        );
        let r = self.eg("latency", "deferral", &setup, 1024)?;
        let v = &r.vms[0];
        let by_reason: std::collections::BTreeMap<String, u64> = r
            .epochgate
            .first()
            .and_then(|e| serde_json::from_value(e["checkpoint_requests"].clone()).ok())
            .unwrap_or_default();
        let expired = by_reason.get("deferral-expired").copied().unwrap_or(0);
        let others: u64 = by_reason
            .iter()
            .filter(|(k, _)| k.as_str() != "deferral-expired")
            .map(|(_, n)| n)
            .sum();
        let late = |ns: u64| (ns as f64 - delay_ns as f64) / 1e3;
        let p99 = late(v.request_latency.p99);
        let all_expiries = expired > 0 && others == 0;
        self.extra.insert(
            "deferral".into(),
            json!({"defer_delay_ns": delay_ns, "max_defer_ns": max_ns, "rate_pps": rate,
                   "requests_by_reason": by_reason, "requests_at_shim": v.requests,
                   "timed_requests": v.request_latency.count, "all_deferral_expiries": all_expiries,
                   "late_us": {"p50": late(v.request_latency.p50), "p99": p99,
                               "max": late(v.request_latency.max)}}),
        );
        self.target(
            "deferral request after its deadline, p99 (us)",
            p99,
            "<= 20",
            all_expiries && v.request_latency.count > 0 && p99 <= 20.0,
            &format!(
                "deferral (pure ACKs at {rate:.0}/s, defer_delay {} ms: request latency - defer_delay; requests by reason {}{})",
                delay_ns as f64 / 1e6,
                serde_json::to_string(&by_reason).unwrap_or_default(),
                if all_expiries { "" } else { ": NOT all deferral-expired, the figure is not a deferral's" }
            ),
        );
        Ok(())
    }

    /// The idle control thread's CPU with `sessions` idle sessions, beside no session.
    fn control_idle(&mut self, sessions: usize, seconds: f64) -> Result<()> {
        interrupted()?;
        self.bar.set_message("control-idle: epochgate");
        let dir = self.env.out.join("runs").join("control-idle");
        let m = crate::control_idle::measure(&self.env.epochgate, &dir, sessions, seconds)?;
        self.bar.inc(1);
        let (base, idle) = (&m.baseline, &m.idle_sessions);
        self.target(
            &format!("idle control thread with {sessions} idle sessions, % of one core"),
            idle.percent,
            "<= 2",
            idle.percent <= 2.0,
            &format!(
                "control-idle (eg-control utime+stime over {:.1} s{}; 0 sessions: {:.2}%{})",
                idle.seconds,
                idle.percent_schedstat
                    .map_or(String::new(), |p| format!(", schedstat {p:.3}%")),
                base.percent,
                base.percent_schedstat
                    .map_or(String::new(), |p| format!(", schedstat {p:.3}%")),
            ),
        );
        self.extra.insert("control_idle".into(), json!(m));
        Ok(())
    }

    /// Cycles of the classifier and the request policy per frame, measured in this process on
    /// the frames of the protected runs, as a share of epochgate's whole per-frame time in the
    /// protected 64 B run (the worker core spins: its time per frame is 1 / throughput).
    pub fn classify_share(&mut self) -> Result<()> {
        let frames: Vec<Vec<u8>> = Profile::Mix
            .templates(0, [0x52, 0x54, 0, 0x10, 0, 0])
            .into_iter()
            .chain(udp(64).templates(0, [0x52, 0x54, 0, 0x10, 0, 0]))
            .collect();
        let n = 2_000_000u64;
        let row = |name: &str| self.rows.iter().find(|r| r.name == name);
        // The protected run's epochs: 25 ms of its rate (at least one frame).
        let epoch_ms = sim40().epoch_ms;
        let epoch_frames = row("protected-64").map_or(1, |r| (r.rx_pps * epoch_ms / 1e3) as u64);
        let ns = crate::cost::classifier_policy_ns(&frames, n, epoch_frames);
        // A frame's cost to epochgate: the worker's busy time per frame when it reported it,
        // else (an older binary) the whole per-frame time at the measured rate.
        let cost = |name: &str| {
            row(name).and_then(|r| {
                r.worker_ns_per_frame
                    .or((r.rx_pps > 0.0).then(|| 1e9 / r.rx_pps))
            })
        };
        let (protected, unprotected) = (cost("protected-64"), cost("unprotected-64"));
        let share = protected.map(|p| ns / p);
        self.extra.insert(
            "classifier_policy".into(),
            json!({"ns_per_frame": ns, "frames": n, "epoch_frames": epoch_frames, "protected_64_ns_per_frame": protected,
                   "unprotected_64_ns_per_frame": unprotected, "share": share}),
        );
        if let Some(share) = share {
            self.target(
                "classifier + policy share of per-frame time (protected, 64 B)",
                share,
                "<= 0.10",
                share <= 0.10,
                "in-process loop over the harness's frames vs the worker's ns/frame in protected-64",
            );
        }
        if let (Some(p), Some(u)) = (protected, unprotected) {
            let ratio = p / (u + ns);
            self.target(
                "protected (40 Hz) ns/frame / (pass-through ns/frame + classifier), 64 B",
                ratio,
                "<= 1.00",
                ratio <= 1.0,
                "worker busy time per frame: protected-64 vs unprotected-64 plus the in-process classifier + policy",
            );
        }
        Ok(())
    }

    pub fn vm_counts(&self) -> (Vec<usize>, Vec<usize>) {
        if self.scale.quick {
            (vec![1, 4, 16], vec![1, 64, 256])
        } else {
            // 31: DPDK 22.11 as Debian builds it has at most 32 ports per process.
            (vec![1, 2, 4, 8, 16, 31], vec![1, 4, 16, 64, 128, 256])
        }
    }

    /// Cost per frame (1 / throughput, unprotected 64 B) over the number of VMs, on own ports
    /// and on a shared ingress by MAC.
    pub fn sweep_vms(&mut self) -> Result<()> {
        let s = self.scale.seconds;
        let (own, shared) = self.vm_counts();
        let mut out = json!({});
        for (kind, counts) in [("own-ports", own), ("shared-ingress", shared)] {
            let mut pts = Vec::new();
            for n in counts {
                let vms = (0..n)
                    .map(|i| VmSpec::new(&format!("vm{i}"), udp(64)))
                    .collect();
                let mut setup = Setup::new(vms, s);
                setup.shared_ingress = kind == "shared-ingress";
                if n > 8 {
                    setup.ring = 256;
                }
                let r = self.eg("vm-count", &format!("{kind}-{n}"), &setup, 1024)?;
                pts.push((n, 1e9 / r.rx_pps.max(1.0)));
            }
            let one = pts.first().map_or(1.0, |p| p.1);
            if kind == "shared-ingress" {
                if let Some(&(_, c64)) = pts.iter().find(|p| p.0 == 64) {
                    self.target(
                        "cost per frame at 64 VMs / at 1 VM (shared ingress, 64 B)",
                        c64 / one,
                        "<= 1.2",
                        c64 / one <= 1.2,
                        "shared-ingress-64 vs shared-ingress-1",
                    );
                }
            }
            out[kind] = json!(pts);
        }
        self.extra.insert("vm_sweep_ns_per_frame".into(), out);
        Ok(())
    }

    pub fn epoch_lengths(&self) -> Vec<f64> {
        if self.scale.quick {
            vec![5.0, 25.0, 100.0]
        } else {
            vec![5.0, 10.0, 25.0, 50.0, 100.0]
        }
    }

    /// Two protected VMs at 1518 B over the epoch length (1 ms transfer, so 5 ms epochs are
    /// possible), each with a two-epoch hold budget at the testpmd rate of this run.
    pub fn sweep_epochs(&mut self) -> Result<()> {
        let s = self.scale.seconds;
        let base = self
            .rows
            .iter()
            .find(|r| r.name == "testpmd-1518")
            .map_or(400_000.0, |r| r.rx_pps);
        let mut pts = Vec::new();
        for ms in self.epoch_lengths() {
            let sim = SimPlan {
                epoch_ms: ms,
                transfer_ms: 1.0,
                honour_requests: false,
                early_release: false,
            };
            let vms = vec![
                VmSpec::new("vm0", udp(1518)).protected(sim),
                VmSpec::new("vm1", udp(1518)).protected(sim),
            ];
            let q = budget(2.0, ms, base / 2.0);
            let r = self.eg(
                "epoch-length",
                &format!("epoch-{ms}ms"),
                &Setup::new(vms, s),
                q,
            )?;
            let last = r.vms.iter().map(|v| v.commit_last.p99).max().unwrap_or(0);
            pts.push(json!({"epoch_ms": ms, "ratio": r.rx_pps / base, "commit_last_p99_ns": last}));
        }
        self.extra.insert("epoch_sweep".into(), json!(pts));
        Ok(())
    }
}

fn us(ns: u64) -> String {
    format!("{:.1}", ns as f64 / 1e3)
}

fn dist_cell(d: &Dist) -> String {
    if d.count == 0 {
        "-".into()
    } else {
        format!("{} / {}", us(d.p50), us(d.p99))
    }
}

/// Writes report.json, report.md and the plots into `dir`; returns the Markdown.
pub fn write_report(dir: &std::path::Path, r: &Runner, meta: Value) -> Result<String> {
    std::fs::create_dir_all(dir)?;
    let json = json!({"meta": meta, "targets": r.targets, "runs": r.rows, "summary": r.extra});
    std::fs::write(dir.join("report.json"), serde_json::to_vec_pretty(&json)?)?;
    let mut md = String::new();
    let _ = writeln!(md, "# epochgate-perf report\n");
    let _ = writeln!(md, "{}\n", meta["layout"].as_str().unwrap_or(""));
    let _ = writeln!(
        md,
        "## Targets\n\n| target | value | goal | pass | from |\n|---|---|---|---|---|"
    );
    for t in &r.targets {
        let _ = writeln!(
            md,
            "| {} | {:.3} | {} | {} | {} |",
            t.name,
            t.value,
            t.goal,
            if t.pass { "PASS" } else { "MISS" },
            t.from
        );
    }
    let _ = writeln!(
        md,
        "\n## Runs\n\nLatencies are p50 / p99 in microseconds. `latency` is TX stamp to receiver; \
         `commit->first/last` are from the commit sent to the epoch's first/last frame seen; \
         `hold` is epochgate's arrival-to-transmit meter.\n\n\
         `stalled` is how long the harness's loop was descheduled by other load (over 5% of the \
         run marks the row: its numbers say more about the machine).\n\n\
         `busy` is the share of epochgate's worker cycles in rounds that moved frames, over the \
         measured window (near 1: epochgate was the bottleneck; lower: the harness or the offered \
         rate was); `ns/frame` the worker's busy time per frame received in the window (what a \
         frame costs epochgate).\n\n\
         | run | target | Mpps | Gb/s | busy | ns/frame | checked | violations | latency | fence rtt | commit->first | commit->last | request | hold (epochgate) | hold budget | stalled ms |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for row in &r.rows {
        let worst = |f: &dyn Fn(&VmResult) -> &Dist| {
            row.vms
                .iter()
                .map(f)
                .max_by_key(|d| d.p99)
                .map_or("-".into(), dist_cell)
        };
        let hold = row
            .epochgate
            .iter()
            .filter(|v| v["mode"] == "protected")
            .map(|v| {
                format!(
                    "{} / {}",
                    us(v["hold_time"]["p50_ns"].as_u64().unwrap_or(0)),
                    us(v["hold_time"]["p99_ns"].as_u64().unwrap_or(0))
                )
            })
            .next()
            .unwrap_or_else(|| "-".into());
        let budget = row
            .hold_budget
            .first()
            .map(|b| {
                format!(
                    "{} frames = {:.0} ms",
                    b["frames"],
                    b["ms_at_offered_rate"].as_f64().unwrap_or(0.0)
                )
            })
            .unwrap_or_else(|| "-".into());
        let _ =
            writeln!(
            md,
            "| {}{} | {} | {:.3} | {:.2} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} |",
            row.name,
            if row.stalled_ms > 0.05 * row.window_s * 1e3 { " (starved)" } else { "" },
            row.target,
            row.rx_pps / 1e6,
            row.rx_bps / 1e9,
            row.worker_busy.map_or("-".into(), |b| format!("{b:.2}")),
            row.worker_ns_per_frame.map_or("-".into(), |n| format!("{n:.1}")),
            row.checked,
            row.violations,
            worst(&|v| &v.latency),
            worst(&|v| &v.fence_rtt),
            worst(&|v| &v.commit_first),
            worst(&|v| &v.commit_last),
            worst(&|v| &v.request_latency),
            hold,
            budget,
            row.stalled_ms
        );
    }
    let _ = writeln!(
        md,
        "\n## Summary\n\n```json\n{}\n```",
        serde_json::to_string_pretty(&r.extra)?
    );
    std::fs::write(dir.join("report.md"), &md)?;
    plots(dir, r)?;
    Ok(md)
}

fn plots(dir: &std::path::Path, r: &Runner) -> Result<()> {
    let save = |name: &str, c: Chart| std::fs::write(dir.join(name), c.render());
    if let Some(curve) = r.extra.get("throughput_curve").and_then(|v| v.as_array()) {
        let pick = |i: usize| -> Vec<(f64, f64)> {
            curve
                .iter()
                .map(|p| {
                    (
                        p[0].as_f64().unwrap_or(0.0),
                        p[i].as_f64().unwrap_or(0.0) / 1e6,
                    )
                })
                .collect()
        };
        save(
            "throughput.svg",
            Chart {
                title: "Throughput vs frame size (2 VMs, unprotected)".into(),
                x_label: "frame size (bytes)".into(),
                y_label: "Mpps".into(),
                series: vec![
                    Series {
                        name: "epochgate".into(),
                        points: pick(1),
                        step: false,
                    },
                    Series {
                        name: "dpdk-testpmd io".into(),
                        points: pick(2),
                        step: false,
                    },
                ],
                log_x: false,
                markers: vec![],
                fit_y: false,
            },
        )?;
    }
    // Latency CDFs: TX -> receiver of the pass-through VM, idle and under bursts, and the
    // protected VM's commit -> last frame.
    let mut series = Vec::new();
    for (run, what) in [
        ("passthrough-idle", "pass-through, idle"),
        (
            "passthrough-bursts",
            "pass-through, during protected releases",
        ),
    ] {
        if let Some(row) = r.rows.iter().find(|x| x.name == run) {
            series.push(cdf(what, &row.vms[0].latency));
        }
    }
    if let Some(row) = r.rows.iter().find(|x| x.name == "protected-1518") {
        series.push(cdf(
            "protected 1518 B: commit -> last frame",
            &row.vms[0].commit_last,
        ));
        series.push(cdf(
            "protected 1518 B: commit -> first frame",
            &row.vms[0].commit_first,
        ));
    }
    if let Some(row) = r.rows.iter().find(|x| x.name == "fence-idle") {
        series.push(cdf("fence round trip, idle VM", &row.vms[0].fence_rtt));
    }
    if let Some(row) = r.rows.iter().find(|x| x.name == "request") {
        series.push(cdf(
            "immediate frame -> request at shim",
            &row.vms[0].request_latency,
        ));
    }
    save(
        "latency_cdf.svg",
        Chart {
            title: "Latency CDFs".into(),
            x_label: "microseconds (log)".into(),
            y_label: "fraction".into(),
            series,
            log_x: true,
            markers: vec![],
            fit_y: false,
        },
    )?;
    if let Some(sweep) = r.extra.get("vm_sweep_ns_per_frame") {
        let mut series = Vec::new();
        for kind in ["own-ports", "shared-ingress"] {
            if let Some(a) = sweep[kind].as_array() {
                series.push(Series {
                    name: kind.into(),
                    points: a
                        .iter()
                        .map(|p| (p[0].as_f64().unwrap_or(0.0), p[1].as_f64().unwrap_or(0.0)))
                        .collect(),
                    step: false,
                });
            }
        }
        save(
            "vm_count.svg",
            Chart {
                title: "Cost per frame over the number of VMs (unprotected, 64 B)".into(),
                x_label: "VMs".into(),
                y_label: "ns per frame".into(),
                series,
                log_x: false,
                markers: vec![],
                fit_y: false,
            },
        )?;
    }
    if let Some(a) = r.extra.get("epoch_sweep").and_then(|v| v.as_array()) {
        save(
            "epoch_length.svg",
            Chart {
                title: "Two protected VMs, 1518 B: throughput / testpmd over epoch length".into(),
                x_label: "epoch (ms)".into(),
                y_label: "ratio to testpmd".into(),
                series: vec![Series {
                    name: "protected / testpmd".into(),
                    points: a
                        .iter()
                        .map(|p| {
                            (
                                p["epoch_ms"].as_f64().unwrap_or(0.0),
                                p["ratio"].as_f64().unwrap_or(0.0),
                            )
                        })
                        .collect(),
                    step: false,
                }],
                log_x: false,
                markers: vec![],
                fit_y: false,
            },
        )?;
    }
    if let Some(tl) = r.rows.iter().find_map(|x| x.timeline.as_ref()) {
        // A window of 200 ms in the middle of the run, so the staircase is visible.
        let mid = tl.t_ms.last().copied().unwrap_or(0.0) / 2.0;
        let (a, b) = (mid - 100.0, mid + 100.0);
        let pick = |v: &Vec<u64>| -> Vec<(f64, f64)> {
            tl.t_ms
                .iter()
                .zip(v)
                .filter(|(t, _)| **t >= a && **t <= b)
                .map(|(t, &n)| (*t, n as f64))
                .collect()
        };
        save(
            "output_commit.svg",
            Chart {
                title: "Output commit: a protected VM's frames sent vs released (dashes: commits)"
                    .into(),
                x_label: "ms since start".into(),
                y_label: "frames".into(),
                series: vec![
                    Series {
                        name: "sent by the VM".into(),
                        points: pick(&tl.sent),
                        step: false,
                    },
                    Series {
                        name: "released to the wire".into(),
                        points: pick(&tl.received),
                        step: true,
                    },
                ],
                log_x: false,
                markers: tl.commits_ms.clone(),
                fit_y: true,
            },
        )?;
    }
    Ok(())
}

fn cdf(name: &str, d: &Dist) -> Series {
    Series {
        name: name.into(),
        points: d.cdf.iter().map(|&(q, ns)| (ns as f64 / 1e3, q)).collect(),
        step: false,
    }
}
