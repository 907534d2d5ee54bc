//! Offline operator tools over capture files, behind `epochgate classify` and
//! `epochgate replay`:
//!
//! - [`Setup`]: the classifier, VM and policy settings taken from a configuration (or the
//!   defaults), and [`Setup::classify`], the verdict of every frame of a capture in order, with
//!   the window-update table as the data path keeps it;
//! - [`Summary`]: counts by verdict and by reason;
//! - [`simulate`] / [`replay`]: the checkpoint request policy replayed over a capture's own
//!   timestamps with a simple VMM model, with and without deferral ([`ReplayReport`]).
//!
//! Everything but [`classify_command`], [`replay_command`] and [`to_stdout`] is pure: no clock,
//! no files, no DPDK; those three read the capture and configuration and write to the writer
//! they are given.

pub mod capture;
pub mod demo;
pub mod gen;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;

use anyhow::Context;
use serde_json::{json, Value};

use self::capture::Frame;
use crate::classify::{Classified, Classifier, Reason, Verdict, VmDefer, WindowTable};
use crate::config::{BufferLimits, ClassifierConfig, Config, DataplaneConfig, Mode};
use crate::hold::policy::{FrameKind, PolicyConfig, RequestPolicy, Why};

const NS_PER_MS: f64 = 1e6;
const NS_PER_S: f64 = 1e9;

/// The long help of `epochgate classify`: the output formats.
pub const CLASSIFY_HELP: &str = "\
Output (text): one line per frame, five space-separated columns:
  FRAME TIME LEN VERDICT REASON
  e.g. `1 0.000000000 66 defer tcp-pure-ack`
  FRAME    frame number, 1-based and contiguous (as Wireshark numbers frames)
  TIME     seconds since the first frame, 9 decimals (negative if the capture goes back)
  LEN      length of the frame on the wire, bytes
  VERDICT  defer | immediate
  REASON   tcp-pure-ack, tcp-ack-no-psh, ipv4-more-fragments, ipv6-more-fragments,
           window-update, rule:N (N = 0-based [[classifier.rule]] index), vm-all, vm-never,
           malformed, other
Window updates ([classifier] window_updates, on by default): a segment that would be
tcp-pure-ack or tcp-ack-no-psh is immediate `window-update` instead when it raises its flow
direction's advertised window from below window_update_threshold (default 1460) to at least
it. The threshold is in bytes, after window scaling (RFC 7323): each direction's shift is
learnt from the connection's SYN and SYN-ACK in the capture; for a connection whose
handshake the capture lacks, the raw 16-bit header value is used (as Wireshark does).
Output (--json): one object per line (keys in alphabetical order):
  {\"frame\":1,\"len\":66,\"reason\":\"tcp-pure-ack\",\"ts_ns\":1700000000000000000,\"verdict\":\"defer\"}
  (ts_ns: capture timestamp, nanoseconds since the Unix epoch)
--summary prints only the counts by verdict and by reason; with --frames as well, the
per-frame lines come first and the summary last. In JSON the summary is one object:
  {\"summary\":{\"by_reason\":{\"other\":K,...},\"by_verdict\":{\"defer\":D,\"immediate\":I},\"frames\":N}}
Text summary: `frames: N`, then `by verdict:` and `by reason:` tables of NAME COUNT SHARE%.
Exit status: 0 (also when the reader goes away, as with `| head`); 1 with a message naming
the file (unreadable, truncated or damaged capture, link type other than Ethernet, bad
configuration, unknown --vm); 2 for a usage error.";

/// The long help of `epochgate replay`: the model and the output.
pub const REPLAY_HELP: &str = "\
Model: the capture is one protected VM's egress, replayed over its own timestamps (a
timestamp that goes back is taken as the previous one). When the request policy asks for a
checkpoint at time t, the VMM fences at t (the open epoch is sealed and a new one opens) and
commits at t + --commit-delay-ms; the frames of the sealed epoch are released at the commit.
Hold time of a frame = release time - arrival time. A deadline that falls exactly on a frame's
timestamp is seen by that frame (which then belongs to the sealed epoch). Frames still held
when the capture ends are released by one final checkpoint at the last timestamp; it is counted
in the checkpoints (final_checkpoint_* says whether there was one) but not in the requests.
Two runs: with the policy (the classifier's verdicts: defer -> deferrable, immediate ->
immediate; the [classifier] timings) and without deferral (every frame immediate, same minimum
interval and high-water mark). The high-water mark is the VM's ([[vm]] high_water of its
max_held_frames / max_held_bytes; with no VM, the defaults: 0.75 of dataplane.vm_queue frames
and of 1518 bytes per frame), checked against the frames and bytes (as captured) of the open epoch.
Output (text): a short report. Output (--json): one object with frames, duration_ns,
duration_s, commit_delay_ms, vm, defer_frames, immediate_frames, checkpoints_with_policy,
checkpoints_without_deferral, checkpoints_per_s_with_policy, checkpoints_per_s_without_deferral
(null when the capture lasts 0 s), saved (without - with), saved_pct (null without
checkpoints), requests_by_reason and requests_by_reason_without_deferral
({\"immediate-frame\":N,\"deferral-expired\":N,\"high-water\":N}), final_checkpoint_with_policy,
final_checkpoint_without_deferral, hold_ms_p50, hold_ms_p99, hold_ms_max (with the policy),
hold_ms_p50_without_deferral, hold_ms_p99_without_deferral, hold_ms_max_without_deferral
(nearest-rank percentiles, exact) and policy (the timings and the high-water marks used:
high_water_frames, high_water_bytes; 0 = off); keys in alphabetical order.
Exit status: 0; 1 with a message naming the file (as for classify); 2 for a usage error.";

/// `epochgate classify` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct ClassifyArgs {
    /// The capture: pcap (either byte order, µs or ns timestamps) or pcapng, link type Ethernet.
    pub file: PathBuf,
    /// One JSON object per line instead of text.
    #[arg(long)]
    pub json: bool,
    /// Print the counts by verdict and by reason instead of the per-frame lines.
    #[arg(long)]
    pub summary: bool,
    /// With --summary: print the per-frame lines too, before the summary.
    #[arg(long, requires = "summary")]
    pub frames: bool,
    /// Take the rules, window-update settings and VMs from this configuration's [classifier]
    /// and [[vm]] (default: no rules, the default settings, no VM).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Classify as this VM of the configuration (its `defer` setting and vm-specific rules);
    /// default: the first protected VM, or none.
    #[arg(long, requires = "config")]
    pub vm: Option<String>,
}

/// `epochgate replay` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct ReplayArgs {
    /// The capture: pcap (either byte order, µs or ns timestamps) or pcapng, link type Ethernet.
    pub file: PathBuf,
    /// One JSON object instead of the text report.
    #[arg(long)]
    pub json: bool,
    /// Take the policy timings, rules and VMs from this configuration (default: the defaults).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Replay as this VM of the configuration; default: the first protected VM, or none.
    #[arg(long, requires = "config")]
    pub vm: Option<String>,
    /// Time from a fence to its commit, in milliseconds.
    #[arg(long, default_value_t = 0.0)]
    pub commit_delay_ms: f64,
}

/// Everything that decides a frame's verdict and the policy's timing (and high-water mark),
/// for one VM.
#[derive(Debug, Clone)]
pub struct Setup {
    /// The operator rules.
    pub classifier: Classifier,
    /// The VM's name ("" for none: rules with a `vm` key never match).
    pub vm: String,
    /// The VM's `defer` setting.
    pub defer: VmDefer,
    /// Whether the window-update table is kept.
    pub window_updates: bool,
    /// Its threshold, in bytes after window scaling.
    pub window_update_threshold: u32,
    /// Its capacity (flows).
    pub flow_table: usize,
    /// The request policy's timings and the VM's high-water marks.
    pub policy: PolicyConfig,
}

impl Default for Setup {
    /// No rules, no VM ("" with `builtin`), the default `[classifier]` settings and the
    /// default VM limits (high water at 0.75 of the default `vm_queue`).
    fn default() -> Self {
        Setup::new(&ClassifierConfig::default(), "", VmDefer::Builtin)
            .with_limits(&default_limits(&DataplaneConfig::default()))
    }
}

/// The limits of a VM that sets none of its own: what a replay without a VM uses.
fn default_limits(d: &DataplaneConfig) -> BufferLimits {
    BufferLimits::default_for(d.vm_queue, true)
}

impl Setup {
    /// The settings of `cls` for VM `vm` whose `defer` setting is `defer`, with the high-water
    /// marks of `cls.policy` (none: see [`Setup::with_limits`]).
    pub fn new(cls: &ClassifierConfig, vm: &str, defer: VmDefer) -> Setup {
        Setup {
            classifier: Classifier::new(cls.rules.clone()),
            vm: vm.to_string(),
            defer,
            window_updates: cls.window_updates,
            window_update_threshold: cls.window_update_threshold,
            flow_table: cls.flow_table,
            policy: cls.policy,
        }
    }

    /// The policy's high-water marks set to those of `limits`.
    pub fn with_limits(mut self, limits: &BufferLimits) -> Setup {
        self.policy.high_water_frames = limits.high_water_frames;
        self.policy.high_water_bytes = limits.high_water_bytes;
        self
    }

    /// From a configuration, as VM `vm` (which must be one of its `[[vm]]`), or by default
    /// its first protected VM, or no VM ("" with `builtin`) if none is protected; the VM's
    /// high-water marks, or with no VM those of the default limits. Without a configuration:
    /// [`Setup::default`], and `vm` must be `None`.
    pub fn from_config(cfg: Option<&Config>, vm: Option<&str>) -> Result<Setup, String> {
        let Some(cfg) = cfg else {
            return match vm {
                None => Ok(Setup::default()),
                Some(name) => Err(format!(
                    "--vm {name:?} needs --config: without one there are no VMs"
                )),
            };
        };
        let chosen = match vm {
            Some(name) => Some(cfg.vms.iter().find(|v| v.name == name).ok_or_else(|| {
                let names: Vec<&str> = cfg.vms.iter().map(|v| v.name.as_str()).collect();
                format!(
                    "no [[vm]] is named {name:?} (the configuration has: {})",
                    names.join(", ")
                )
            })?),
            None => cfg.vms.iter().find(|v| v.mode == Mode::Protected),
        };
        Ok(match chosen {
            Some(v) => Setup::new(&cfg.classifier, &v.name, v.defer).with_limits(&v.limits),
            None => Setup::new(&cfg.classifier, "", VmDefer::Builtin)
                .with_limits(&default_limits(&cfg.dataplane)),
        })
    }

    /// A fresh window-update table, if the setup keeps one.
    fn window_table(&self) -> Option<WindowTable> {
        self.window_updates
            .then(|| WindowTable::new(self.flow_table, self.window_update_threshold))
    }

    /// The verdict of every frame, in order, as the data path would give them to this VM's
    /// egress (one window-update table over the whole capture, fresh for each call).
    pub fn classify(&self, frames: &[Frame]) -> Vec<Classified> {
        let mut table = self.window_table();
        frames
            .iter()
            .map(|f| {
                self.classifier
                    .classify_with(&self.vm, self.defer, table.as_mut(), &f.data)
            })
            .collect()
    }
}

/// The name of a verdict: `defer` or `immediate`.
pub fn verdict_name(v: Verdict) -> &'static str {
    match v {
        Verdict::Defer => "defer",
        Verdict::Immediate => "immediate",
    }
}

/// Frame counts by verdict and by reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Frames counted.
    pub frames: u64,
    /// Of which deferrable.
    pub defer: u64,
    /// Of which immediate.
    pub immediate: u64,
    /// By reason (only reasons that occurred), in [`Reason`]'s order.
    pub by_reason: BTreeMap<Reason, u64>,
}

impl Summary {
    /// The counts of these verdicts.
    pub fn of<'a>(verdicts: impl IntoIterator<Item = &'a Classified>) -> Summary {
        let mut s = Summary::default();
        for c in verdicts {
            s.add(c);
        }
        s
    }

    /// Counts one more frame.
    pub fn add(&mut self, c: &Classified) {
        self.frames += 1;
        match c.verdict {
            Verdict::Defer => self.defer += 1,
            Verdict::Immediate => self.immediate += 1,
        }
        *self.by_reason.entry(c.reason).or_default() += 1;
    }

    /// `{"summary": {"frames", "by_verdict": {"defer", "immediate"}, "by_reason": {...}}}`.
    pub fn to_json(&self) -> Value {
        let by_reason: serde_json::Map<String, Value> = self
            .by_reason
            .iter()
            .map(|(r, n)| (r.to_string(), json!(n)))
            .collect();
        json!({
            "summary": {
                "frames": self.frames,
                "by_verdict": { "defer": self.defer, "immediate": self.immediate },
                "by_reason": by_reason,
            }
        })
    }

    /// The readable table: total, then each verdict and each reason with count and share.
    pub fn to_text(&self) -> String {
        let pct = |n: u64| {
            if self.frames == 0 {
                0.0
            } else {
                n as f64 * 100.0 / self.frames as f64
            }
        };
        let mut s = String::new();
        let _ = writeln!(s, "frames: {}", self.frames);
        let _ = writeln!(s, "by verdict:");
        for (name, n) in [("defer", self.defer), ("immediate", self.immediate)] {
            let _ = writeln!(s, "  {name:<22}{n:>10}  {:>5.1}%", pct(n));
        }
        let _ = writeln!(s, "by reason:");
        for (r, &n) in &self.by_reason {
            let _ = writeln!(s, "  {:<22}{n:>10}  {:>5.1}%", r.to_string(), pct(n));
        }
        s
    }
}

/// Seconds `ns` (may be negative) with 9 decimals.
fn seconds(ns: i128) -> String {
    let sign = if ns < 0 { "-" } else { "" };
    let a = ns.unsigned_abs();
    format!("{sign}{}.{:09}", a / 1_000_000_000, a % 1_000_000_000)
}

/// The text line of frame `number` (1-based): `FRAME TIME LEN VERDICT REASON`, TIME in seconds
/// since `first_ts_ns`.
pub fn frame_line(number: usize, frame: &Frame, first_ts_ns: u64, c: &Classified) -> String {
    let rel = i128::from(frame.ts_ns) - i128::from(first_ts_ns);
    format!(
        "{number} {} {} {} {}",
        seconds(rel),
        frame.orig_len,
        verdict_name(c.verdict),
        c.reason
    )
}

/// The JSON object of frame `number` (1-based): `frame`, `ts_ns`, `len`, `verdict`, `reason`.
pub fn frame_json(number: usize, frame: &Frame, c: &Classified) -> Value {
    json!({
        "frame": number,
        "ts_ns": frame.ts_ns,
        "len": frame.orig_len,
        "verdict": verdict_name(c.verdict),
        "reason": c.reason.to_string(),
    })
}

/// What one [`simulate`] run ended a checkpoint for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The policy requested it.
    Request(Why),
    /// Frames were still held when the capture ended.
    EndOfCapture,
}

/// One checkpoint of a [`simulate`] run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    /// When the VMM fenced (ns).
    pub at_ns: u64,
    /// When it committed: `at_ns + commit delay` (ns).
    pub commit_ns: u64,
    /// Frames released by its commit.
    pub frames: u64,
    /// Why it was taken.
    pub cause: Cause,
}

/// The outcome of one [`simulate`] run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Run {
    /// Every checkpoint, in order.
    pub checkpoints: Vec<Checkpoint>,
    /// Hold time of each frame (ns), in input order.
    pub holds_ns: Vec<u64>,
}

impl Run {
    /// Checkpoints taken, the final one included.
    pub fn count(&self) -> u64 {
        self.checkpoints.len() as u64
    }

    /// Requests by reason: immediate-frame, deferral-expired, high-water.
    pub fn requests(&self, why: Why) -> u64 {
        self.checkpoints
            .iter()
            .filter(|c| c.cause == Cause::Request(why))
            .count() as u64
    }

    /// Whether a final checkpoint released frames held at the end.
    pub fn final_checkpoint(&self) -> bool {
        self.checkpoints
            .last()
            .is_some_and(|c| c.cause == Cause::EndOfCapture)
    }

    /// The nearest-rank percentile `p` (1..=100) of the hold times, ns (0 with no frames).
    pub fn hold_percentile_ns(&self, p: u64) -> u64 {
        let mut sorted = self.holds_ns.clone();
        sorted.sort_unstable();
        percentile(&sorted, p)
    }

    /// The longest hold time, ns (0 with no frames).
    pub fn hold_max_ns(&self) -> u64 {
        self.holds_ns.iter().copied().max().unwrap_or(0)
    }

    /// `{"immediate-frame": n, "deferral-expired": n, "high-water": n}`.
    fn requests_json(&self) -> Value {
        let mut m = serde_json::Map::new();
        for why in WHYS {
            m.insert(why_name(why).to_string(), json!(self.requests(why)));
        }
        Value::Object(m)
    }
}

const WHYS: [Why; 3] = [Why::ImmediateFrame, Why::DeferralExpired, Why::HighWater];

/// The stable name of a request reason (as in the stats and on the wire).
pub fn why_name(why: Why) -> &'static str {
    vmm_shim::proto::RequestReason::from(why).name()
}

/// Nearest rank: the smallest value with at least p% of `sorted` at or below it.
fn percentile(sorted: &[u64], p: u64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (sorted.len() as u64 * p.min(100)).div_ceil(100).max(1);
    sorted[(rank - 1) as usize]
}

/// Replays frames arriving at the given times (ns) with the given kinds through a
/// [`RequestPolicy`] with `cfg`, created at the first frame's time, and the VMM model of
/// `epochgate replay`: a request at t fences at t (`on_fence(t)`; the open epoch is sealed) and
/// commits at `t + commit_delay_ns`, releasing the sealed epoch's frames. Timers (deferral
/// deadlines, postponed requests) due strictly before a frame are run before it; one due at the
/// frame's own time is seen by the frame's `on_frame` call, after the frame joined the open
/// epoch. A time below the previous one counts as the previous one. Frames held after the last
/// frame are released by a final checkpoint at the last time ([`Cause::EndOfCapture`]).
pub fn simulate(events: &[(u64, FrameKind)], cfg: PolicyConfig, commit_delay_ns: u64) -> Run {
    let sized: Vec<(u64, FrameKind, u64)> = events.iter().map(|&(t, k)| (t, k, 0)).collect();
    simulate_sized(&sized, cfg, commit_delay_ns)
}

/// [`simulate`] with each frame's length in bytes (time, kind, bytes), for a high-water mark
/// in bytes: the policy sees the frames and the bytes of the open epoch.
pub fn simulate_sized(
    events: &[(u64, FrameKind, u64)],
    cfg: PolicyConfig,
    commit_delay_ns: u64,
) -> Run {
    let mut run = Run {
        checkpoints: Vec::new(),
        holds_ns: vec![0; events.len()],
    };
    let Some(&(t0, _, _)) = events.first() else {
        return run;
    };
    let mut policy = RequestPolicy::new(cfg, t0);
    let mut arrival = vec![0u64; events.len()];
    let mut open: Vec<usize> = Vec::new();
    let mut open_bytes = 0u64;
    let seal = |run: &mut Run, open: &mut Vec<usize>, arrival: &[u64], at: u64, cause| {
        let commit = at.saturating_add(commit_delay_ns);
        for &i in open.iter() {
            run.holds_ns[i] = commit.saturating_sub(arrival[i]);
        }
        run.checkpoints.push(Checkpoint {
            at_ns: at,
            commit_ns: commit,
            frames: open.len() as u64,
            cause,
        });
        open.clear();
    };
    let mut now = t0;
    for (i, &(ts, kind, bytes)) in events.iter().enumerate() {
        now = now.max(ts);
        while let Some(wake) = policy.next_wakeup().filter(|&w| w < now) {
            let Some(r) = policy.poll(wake) else { break };
            seal(&mut run, &mut open, &arrival, r.at, Cause::Request(r.why));
            open_bytes = 0;
            policy.on_fence(r.at);
        }
        arrival[i] = now;
        open.push(i);
        open_bytes = open_bytes.saturating_add(bytes);
        if let Some(r) = policy.on_frame_sized(now, kind, open.len() as u64, open_bytes) {
            seal(&mut run, &mut open, &arrival, r.at, Cause::Request(r.why));
            open_bytes = 0;
            policy.on_fence(r.at);
        }
    }
    if !open.is_empty() {
        seal(&mut run, &mut open, &arrival, now, Cause::EndOfCapture);
    }
    run
}

/// What `epochgate replay` reports.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayReport {
    /// Frames in the capture.
    pub frames: u64,
    /// From the first to the last timestamp (ns; 0 if a timestamp goes back below the first).
    pub duration_ns: u64,
    /// Fence to commit (ns).
    pub commit_delay_ns: u64,
    /// The VM replayed as ("" for none).
    pub vm: String,
    /// The policy timings used.
    pub policy: PolicyConfig,
    /// Frames classified deferrable.
    pub defer_frames: u64,
    /// Frames classified immediate.
    pub immediate_frames: u64,
    /// With the policy and the classifier's verdicts.
    pub with_policy: Run,
    /// Every frame immediate, same minimum interval and high-water mark.
    pub without_deferral: Run,
}

/// Classifies `frames` with `setup` and replays them through [`simulate`] twice: with the
/// verdicts and `setup.policy`, and with every frame immediate.
pub fn replay(frames: &[Frame], setup: &Setup, commit_delay_ns: u64) -> ReplayReport {
    let verdicts = setup.classify(frames);
    let kinds: Vec<(u64, FrameKind, u64)> = frames
        .iter()
        .zip(&verdicts)
        .map(|(f, c)| {
            let kind = match c.verdict {
                Verdict::Defer => FrameKind::Deferrable,
                Verdict::Immediate => FrameKind::Immediate,
            };
            (f.ts_ns, kind, u64::from(f.orig_len))
        })
        .collect();
    let all_immediate: Vec<(u64, FrameKind, u64)> = kinds
        .iter()
        .map(|&(t, _, b)| (t, FrameKind::Immediate, b))
        .collect();
    let defer_frames = verdicts.iter().filter(|c| c.is_deferrable()).count() as u64;
    let duration_ns = match (frames.first(), frames.last()) {
        (Some(a), Some(b)) => b.ts_ns.saturating_sub(a.ts_ns),
        _ => 0,
    };
    ReplayReport {
        frames: frames.len() as u64,
        duration_ns,
        commit_delay_ns,
        vm: setup.vm.clone(),
        policy: setup.policy,
        defer_frames,
        immediate_frames: frames.len() as u64 - defer_frames,
        with_policy: simulate_sized(&kinds, setup.policy, commit_delay_ns),
        without_deferral: simulate_sized(&all_immediate, setup.policy, commit_delay_ns),
    }
}

fn ms(ns: u64) -> f64 {
    ns as f64 / NS_PER_MS
}

impl ReplayReport {
    /// Checkpoints saved by deferral: without minus with (negative if the policy took more).
    pub fn saved(&self) -> i64 {
        self.without_deferral.count() as i64 - self.with_policy.count() as i64
    }

    /// [`ReplayReport::saved`] as a percentage of the checkpoints without deferral.
    pub fn saved_pct(&self) -> Option<f64> {
        let without = self.without_deferral.count();
        (without > 0).then(|| self.saved() as f64 * 100.0 / without as f64)
    }

    /// Checkpoints per second of capture (None if the capture lasts 0 ns).
    pub fn per_s(&self, run: &Run) -> Option<f64> {
        (self.duration_ns > 0).then(|| run.count() as f64 * NS_PER_S / self.duration_ns as f64)
    }

    /// The `--json` object.
    pub fn to_json(&self) -> Value {
        let (w, wo) = (&self.with_policy, &self.without_deferral);
        json!({
            "frames": self.frames,
            "duration_ns": self.duration_ns,
            "duration_s": self.duration_ns as f64 / NS_PER_S,
            "commit_delay_ms": ms(self.commit_delay_ns),
            "vm": self.vm,
            "defer_frames": self.defer_frames,
            "immediate_frames": self.immediate_frames,
            "checkpoints_with_policy": w.count(),
            "checkpoints_without_deferral": wo.count(),
            "checkpoints_per_s_with_policy": self.per_s(w),
            "checkpoints_per_s_without_deferral": self.per_s(wo),
            "saved": self.saved(),
            "saved_pct": self.saved_pct(),
            "requests_by_reason": w.requests_json(),
            "requests_by_reason_without_deferral": wo.requests_json(),
            "final_checkpoint_with_policy": w.final_checkpoint(),
            "final_checkpoint_without_deferral": wo.final_checkpoint(),
            "hold_ms_p50": ms(w.hold_percentile_ns(50)),
            "hold_ms_p99": ms(w.hold_percentile_ns(99)),
            "hold_ms_max": ms(w.hold_max_ns()),
            "hold_ms_p50_without_deferral": ms(wo.hold_percentile_ns(50)),
            "hold_ms_p99_without_deferral": ms(wo.hold_percentile_ns(99)),
            "hold_ms_max_without_deferral": ms(wo.hold_max_ns()),
            "policy": {
                "defer_delay_ms": ms(self.policy.defer_delay_ns),
                "max_defer_ms": ms(self.policy.max_defer_ns),
                "min_checkpoint_interval_ms": ms(self.policy.min_interval_ns),
                "high_water_frames": self.policy.high_water_frames,
                "high_water_bytes": self.policy.high_water_bytes,
            },
        })
    }

    /// The text report; `name` is the capture's name.
    pub fn to_text(&self, name: &str) -> String {
        let (w, wo) = (&self.with_policy, &self.without_deferral);
        let p = &self.policy;
        let vm = if self.vm.is_empty() {
            "no VM".to_string()
        } else {
            format!("VM {:?}", self.vm)
        };
        let rate = |r: Option<f64>| r.map_or("-".to_string(), |r| format!("{r:.1}"));
        let mut s = String::new();
        let _ = writeln!(
            s,
            "replay of {name}: {} frames over {:.6} s ({vm}; defer {} ms, max {} ms, min interval {} ms, high water {}; commit delay {} ms)",
            self.frames,
            self.duration_ns as f64 / NS_PER_S,
            ms(p.defer_delay_ns),
            ms(p.max_defer_ns),
            ms(p.min_interval_ns),
            match (p.high_water_frames, p.high_water_bytes) {
                (0, 0) => "off".to_string(),
                (f, 0) => format!("{f} frames"),
                (0, b) => format!("{b} bytes"),
                (f, b) => format!("{f} frames or {b} bytes"),
            },
            ms(self.commit_delay_ns),
        );
        let _ = writeln!(
            s,
            "  verdicts: {} defer, {} immediate",
            self.defer_frames, self.immediate_frames
        );
        let _ = writeln!(
            s,
            "  {:<22}{:>16}{:>20}",
            "", "with policy", "without deferral"
        );
        let mut row = |label: &str, a: String, b: String| {
            let _ = writeln!(s, "  {label:<22}{a:>16}{b:>20}");
        };
        row("checkpoints", w.count().to_string(), wo.count().to_string());
        row("checkpoints/s", rate(self.per_s(w)), rate(self.per_s(wo)));
        for (label, pct) in [("hold p50 (ms)", 50), ("hold p99 (ms)", 99)] {
            row(
                label,
                format!("{:.3}", ms(w.hold_percentile_ns(pct))),
                format!("{:.3}", ms(wo.hold_percentile_ns(pct))),
            );
        }
        row(
            "hold max (ms)",
            format!("{:.3}", ms(w.hold_max_ns())),
            format!("{:.3}", ms(wo.hold_max_ns())),
        );
        let yes_no = |b: bool| if b { "yes" } else { "no" };
        row(
            "final checkpoint",
            yes_no(w.final_checkpoint()).to_string(),
            yes_no(wo.final_checkpoint()).to_string(),
        );
        let _ = writeln!(
            s,
            "  saved: {} checkpoints ({})",
            self.saved(),
            self.saved_pct()
                .map_or("-".to_string(), |p| format!("{p:.1}%"))
        );
        let reqs: Vec<String> = WHYS
            .iter()
            .map(|&why| format!("{} {}", why_name(why), w.requests(why)))
            .collect();
        let _ = writeln!(s, "  requests with policy: {}", reqs.join(", "));
        s
    }
}

/// Loads the optional configuration and makes the [`Setup`].
fn load_setup(config: Option<&std::path::Path>, vm: Option<&str>) -> anyhow::Result<Setup> {
    let cfg = config
        .map(|path| Config::load(path).with_context(|| format!("{}", path.display())))
        .transpose()?;
    let setup = Setup::from_config(cfg.as_ref(), vm).map_err(anyhow::Error::msg);
    match config {
        Some(path) => setup.with_context(|| format!("{}", path.display())),
        None => setup,
    }
}

/// `epochgate classify`: writes the verdicts (and/or the summary) to `out`.
pub fn classify_command(args: &ClassifyArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let setup = load_setup(args.config.as_deref(), args.vm.as_deref())?;
    let cap = capture::read_file(&args.file)?;
    let verdicts = setup.classify(&cap.frames);
    let first_ts = cap.frames.first().map_or(0, |f| f.ts_ns);
    if !args.summary || args.frames {
        for (i, (frame, c)) in cap.frames.iter().zip(&verdicts).enumerate() {
            if args.json {
                serde_json::to_writer(&mut *out, &frame_json(i + 1, frame, c))?;
                out.write_all(b"\n")?;
            } else {
                writeln!(out, "{}", frame_line(i + 1, frame, first_ts, c))?;
            }
        }
    }
    if args.summary {
        let summary = Summary::of(&verdicts);
        if args.json {
            serde_json::to_writer(&mut *out, &summary.to_json())?;
            out.write_all(b"\n")?;
        } else {
            out.write_all(summary.to_text().as_bytes())?;
        }
    }
    Ok(())
}

/// `epochgate replay`: writes the report to `out`.
pub fn replay_command(args: &ReplayArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let delay = args.commit_delay_ms;
    if !(delay.is_finite() && (0.0..=3_600_000.0).contains(&delay)) {
        anyhow::bail!("--commit-delay-ms {delay} is out of range 0..=3600000");
    }
    let setup = load_setup(args.config.as_deref(), args.vm.as_deref())?;
    let cap = capture::read_file(&args.file)?;
    let report = replay(&cap.frames, &setup, (delay * NS_PER_MS).round() as u64);
    if args.json {
        serde_json::to_writer(&mut *out, &report.to_json())?;
        out.write_all(b"\n")?;
    } else {
        out.write_all(report.to_text(&args.file.display().to_string()).as_bytes())?;
    }
    Ok(())
}

/// Whether `e` is (or wraps) a broken pipe: the reader went away (`| head`).
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
            || cause
                .downcast_ref::<serde_json::Error>()
                .and_then(|j| j.io_error_kind())
                .is_some_and(|k| k == io::ErrorKind::BrokenPipe)
    })
}

/// Runs `f` on a buffered stdout and flushes it; a broken pipe (the reader exited, as with
/// `| head`) ends quietly with `Ok`.
pub fn to_stdout(f: impl FnOnce(&mut dyn Write) -> anyhow::Result<()>) -> anyhow::Result<()> {
    let stdout = io::stdout();
    let mut out = BufWriter::with_capacity(64 * 1024, stdout.lock());
    let result = f(&mut out).and_then(|()| out.flush().map_err(anyhow::Error::from));
    match result {
        Err(e) if is_broken_pipe(&e) => {
            // Drop what is left in the buffer without another failing write.
            let (_, _) = out.into_parts();
            Ok(())
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const T0: u64 = 1_700_000_000_000_000_000;

    /// An untagged IPv4/TCP frame 10.0.0.1:port -> 10.0.0.2:80 with these flags, window and
    /// payload length.
    fn tcp(sport: u16, flags: u8, window: u16, payload: usize) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, 0x08, 0x00];
        let total = 20 + 20 + payload;
        f.extend_from_slice(&[0x45, 0, (total >> 8) as u8, total as u8, 0, 0, 0x40, 0]);
        f.extend_from_slice(&[64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
        f.extend_from_slice(&sport.to_be_bytes());
        f.extend_from_slice(&80u16.to_be_bytes());
        f.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1, 0x50, flags]);
        f.extend_from_slice(&window.to_be_bytes());
        f.extend_from_slice(&[0, 0, 0, 0]);
        f.extend(std::iter::repeat_n(0xab, payload));
        f
    }

    const ACK: u8 = 0x10;
    const PSH_ACK: u8 = 0x18;

    fn frame(ts_ns: u64, data: Vec<u8>) -> Frame {
        Frame {
            ts_ns,
            orig_len: data.len() as u32,
            data,
        }
    }

    fn req(at: u64, frames: u64, why: Why) -> Checkpoint {
        Checkpoint {
            at_ns: at,
            commit_ns: at,
            frames,
            cause: Cause::Request(why),
        }
    }

    /// The brief's example: 3 pure ACKs 1 ms apart, then a PSH at 20 ms, default 5/10 ms.
    #[test]
    fn three_acks_then_psh() {
        let frames = vec![
            frame(T0, tcp(1000, ACK, 500, 0)),
            frame(T0 + MS, tcp(1000, ACK, 500, 0)),
            frame(T0 + 2 * MS, tcp(1000, ACK, 500, 0)),
            frame(T0 + 20 * MS, tcp(1000, PSH_ACK, 500, 100)),
        ];
        let r = replay(&frames, &Setup::default(), 0);
        assert_eq!(r.frames, 4);
        assert_eq!(r.duration_ns, 20 * MS);
        assert_eq!((r.defer_frames, r.immediate_frames), (3, 1));
        assert_eq!(
            r.with_policy.checkpoints,
            vec![
                req(T0 + 7 * MS, 3, Why::DeferralExpired),
                req(T0 + 20 * MS, 1, Why::ImmediateFrame)
            ]
        );
        assert_eq!(r.with_policy.holds_ns, vec![7 * MS, 6 * MS, 5 * MS, 0]);
        assert_eq!(r.without_deferral.count(), 4);
        assert!(r
            .without_deferral
            .checkpoints
            .iter()
            .all(|c| c.cause == Cause::Request(Why::ImmediateFrame) && c.frames == 1));
        assert_eq!(r.without_deferral.holds_ns, vec![0; 4]);
        assert_eq!(r.saved(), 2);
        assert_eq!(r.saved_pct(), Some(50.0));
        assert_eq!(r.per_s(&r.with_policy), Some(100.0));
        assert_eq!(r.per_s(&r.without_deferral), Some(200.0));
        // Nearest rank over [0, 5, 6, 7] ms.
        assert_eq!(r.with_policy.hold_percentile_ns(50), 5 * MS);
        assert_eq!(r.with_policy.hold_percentile_ns(99), 7 * MS);
        assert_eq!(r.with_policy.hold_max_ns(), 7 * MS);
        assert!(!r.with_policy.final_checkpoint());

        let j = r.to_json();
        assert_eq!(j["frames"], 4);
        assert_eq!(j["checkpoints_with_policy"], 2);
        assert_eq!(j["checkpoints_without_deferral"], 4);
        assert_eq!(j["saved"], 2);
        assert_eq!(j["saved_pct"], 50.0);
        assert_eq!(j["hold_ms_p50"], 5.0);
        assert_eq!(j["hold_ms_p99"], 7.0);
        assert_eq!(j["hold_ms_max"], 7.0);
        assert_eq!(j["hold_ms_p99_without_deferral"], 0.0);
        assert_eq!(j["checkpoints_per_s_with_policy"], 100.0);
        assert_eq!(j["requests_by_reason"]["deferral-expired"], 1);
        assert_eq!(j["requests_by_reason"]["immediate-frame"], 1);
        assert_eq!(j["requests_by_reason"]["high-water"], 0);
        assert_eq!(
            j["requests_by_reason_without_deferral"]["immediate-frame"],
            4
        );
        let text = r.to_text("x.pcap");
        assert!(text.contains("saved: 2 checkpoints (50.0%)"), "{text}");
    }

    #[test]
    fn commit_delay_holds_and_overlapping_epochs() {
        let events = [
            (0, FrameKind::Deferrable),
            (MS, FrameKind::Immediate),
            (2 * MS, FrameKind::Immediate),
            (3 * MS, FrameKind::Deferrable),
        ];
        let run = simulate(&events, PolicyConfig::default(), 4 * MS);
        // The immediate frame at 1 ms seals frames 0 and 1 (commit at 5 ms); the one at 2 ms
        // seals itself (commit 6 ms); the deferrable at 3 ms is held to the end: a final
        // checkpoint at 3 ms, committed at 7 ms.
        assert_eq!(
            run.checkpoints,
            vec![
                Checkpoint {
                    at_ns: MS,
                    commit_ns: 5 * MS,
                    frames: 2,
                    cause: Cause::Request(Why::ImmediateFrame)
                },
                Checkpoint {
                    at_ns: 2 * MS,
                    commit_ns: 6 * MS,
                    frames: 1,
                    cause: Cause::Request(Why::ImmediateFrame)
                },
                Checkpoint {
                    at_ns: 3 * MS,
                    commit_ns: 7 * MS,
                    frames: 1,
                    cause: Cause::EndOfCapture
                },
            ]
        );
        assert_eq!(run.holds_ns, vec![5 * MS, 4 * MS, 4 * MS, 4 * MS]);
        assert!(run.final_checkpoint());
        assert_eq!(run.requests(Why::ImmediateFrame), 2);
        assert_eq!(run.count(), 3);
    }

    #[test]
    fn min_interval_postpones_and_high_water_requests() {
        let cfg = PolicyConfig {
            min_interval_ns: 10 * MS,
            high_water_frames: 3,
            ..PolicyConfig::default()
        };
        // Immediate at 2 ms is postponed to 10 ms (policy created at 0 ms); then three
        // deferrables at 11, 12, 13 ms reach high water 3 -- but the minimum interval from the
        // fence at 10 ms postpones that to 20 ms, which the frame at 25 ms finds.
        let events = [
            (0, FrameKind::Deferrable),
            (2 * MS, FrameKind::Immediate),
            (11 * MS, FrameKind::Deferrable),
            (12 * MS, FrameKind::Deferrable),
            (13 * MS, FrameKind::Deferrable),
            (25 * MS, FrameKind::Deferrable),
        ];
        let run = simulate(&events, cfg, 0);
        assert_eq!(
            run.checkpoints,
            vec![
                req(10 * MS, 2, Why::ImmediateFrame),
                req(20 * MS, 3, Why::HighWater),
                Checkpoint {
                    at_ns: 25 * MS,
                    commit_ns: 25 * MS,
                    frames: 1,
                    cause: Cause::EndOfCapture
                },
            ]
        );
        assert_eq!(
            run.holds_ns,
            vec![10 * MS, 8 * MS, 9 * MS, 8 * MS, 7 * MS, 0]
        );
        // Without deferral: the same minimum interval bounds the checkpoints.
        let all: Vec<_> = events
            .iter()
            .map(|&(t, _)| (t, FrameKind::Immediate))
            .collect();
        let run = simulate(&all, cfg, 0);
        assert_eq!(
            run.checkpoints,
            vec![
                req(10 * MS, 2, Why::ImmediateFrame),
                req(20 * MS, 3, Why::ImmediateFrame),
                Checkpoint {
                    at_ns: 25 * MS,
                    commit_ns: 25 * MS,
                    frames: 1,
                    cause: Cause::EndOfCapture
                },
            ]
        );
    }

    #[test]
    fn deadline_on_a_frame_is_seen_by_that_frame() {
        // Deadline at 5 ms; an immediate frame exactly at 5 ms joins the sealed epoch.
        let events = [(0, FrameKind::Deferrable), (5 * MS, FrameKind::Immediate)];
        let run = simulate(&events, PolicyConfig::default(), 0);
        assert_eq!(run.checkpoints, vec![req(5 * MS, 2, Why::DeferralExpired)]);
        assert_eq!(run.holds_ns, vec![5 * MS, 0]);
        // One nanosecond later, it is a checkpoint of its own.
        let events = [
            (0, FrameKind::Deferrable),
            (5 * MS + 1, FrameKind::Immediate),
        ];
        let run = simulate(&events, PolicyConfig::default(), 0);
        assert_eq!(
            run.checkpoints,
            vec![
                req(5 * MS, 1, Why::DeferralExpired),
                req(5 * MS + 1, 1, Why::ImmediateFrame)
            ]
        );
    }

    #[test]
    fn deferral_capped_by_max_defer_and_time_going_back() {
        // ACKs every 4 ms keep extending the deadline until the 10 ms cap.
        let events: Vec<_> = (0..5)
            .map(|k| (k * 4 * MS, FrameKind::Deferrable))
            .collect();
        let run = simulate(&events, PolicyConfig::default(), 0);
        // 0,4,8 -> deadline min(13, 10) = 10: sealed at 10 ms with 3 frames; 12, 16 -> deadline
        // 21 (after the end): a final checkpoint at 16 ms.
        assert_eq!(run.checkpoints[0], req(10 * MS, 3, Why::DeferralExpired));
        assert_eq!(run.checkpoints[1].cause, Cause::EndOfCapture);
        assert_eq!(run.checkpoints[1].at_ns, 16 * MS);
        assert_eq!(run.holds_ns, vec![10 * MS, 6 * MS, 2 * MS, 4 * MS, 0]);

        // A timestamp below the previous one counts as the previous one.
        let events = [
            (10 * MS, FrameKind::Deferrable),
            (9 * MS, FrameKind::Immediate),
        ];
        let run = simulate(&events, PolicyConfig::default(), 0);
        assert_eq!(run.checkpoints, vec![req(10 * MS, 2, Why::ImmediateFrame)]);
        assert_eq!(run.holds_ns, vec![0, 0]);
    }

    #[test]
    fn empty_and_single_frame() {
        let r = replay(&[], &Setup::default(), 0);
        assert_eq!(r.frames, 0);
        assert_eq!(r.with_policy.count(), 0);
        assert_eq!(r.per_s(&r.with_policy), None);
        assert_eq!(r.saved_pct(), None);
        assert_eq!(r.to_json()["hold_ms_p99"], 0.0);
        assert_eq!(r.to_json()["checkpoints_per_s_with_policy"], Value::Null);

        let r = replay(&[frame(T0, tcp(1, ACK, 9, 0))], &Setup::default(), 0);
        assert_eq!(r.with_policy.checkpoints[0].cause, Cause::EndOfCapture);
        assert_eq!(
            r.without_deferral.checkpoints[0].cause,
            Cause::Request(Why::ImmediateFrame)
        );
        assert_eq!(r.saved(), 0);
    }

    #[test]
    fn percentile_is_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50), 50);
        assert_eq!(percentile(&v, 99), 99);
        assert_eq!(percentile(&v, 100), 100);
        assert_eq!(percentile(&[7], 50), 7);
        assert_eq!(percentile(&[], 50), 0);
        assert_eq!(percentile(&[1, 2], 50), 1);
        assert_eq!(percentile(&[1, 2], 51), 2);
    }

    #[test]
    fn classify_lines_and_summary() {
        let frames = vec![
            frame(T0, tcp(1000, ACK, 0, 0)),
            frame(T0 + 1500, tcp(1000, ACK, 2000, 0)),
            frame(T0 + 2 * MS, tcp(1000, ACK, 2000, 10)),
            frame(T0 + 3 * MS, tcp(1000, PSH_ACK, 2000, 10)),
            frame(T0 + 4 * MS, vec![0; 10]),
        ];
        let v = Setup::default().classify(&frames);
        let lines: Vec<String> = frames
            .iter()
            .zip(&v)
            .enumerate()
            .map(|(i, (f, c))| frame_line(i + 1, f, T0, c))
            .collect();
        assert_eq!(
            lines,
            vec![
                "1 0.000000000 54 defer tcp-pure-ack",
                "2 0.000001500 54 immediate window-update",
                "3 0.002000000 64 defer tcp-ack-no-psh",
                "4 0.003000000 64 immediate other",
                "5 0.004000000 10 immediate malformed",
            ]
        );
        assert_eq!(
            frame_json(1, &frames[0], &v[0]).to_string(),
            format!(
                r#"{{"frame":1,"len":54,"reason":"tcp-pure-ack","ts_ns":{T0},"verdict":"defer"}}"#
            )
        );
        assert_eq!(
            frame_line(1, &frames[0], T0 + 1, &v[0]),
            "1 -0.000000001 54 defer tcp-pure-ack"
        );
        let s = Summary::of(&v);
        assert_eq!((s.frames, s.defer, s.immediate), (5, 2, 3));
        assert_eq!(s.by_reason.values().sum::<u64>(), 5);
        assert_eq!(s.by_reason[&Reason::WindowUpdate], 1);
        let j = s.to_json();
        assert_eq!(j["summary"]["by_verdict"]["defer"], 2);
        assert_eq!(j["summary"]["by_reason"]["malformed"], 1);
        let t = s.to_text();
        assert!(t.starts_with("frames: 5\n"), "{t}");
        assert!(
            t.contains("  defer                          2   40.0%"),
            "{t}"
        );

        // Without the window table, the opening ACK is an ordinary pure ACK.
        let setup = Setup {
            window_updates: false,
            ..Setup::default()
        };
        assert_eq!(setup.classify(&frames)[1].reason, Reason::TcpPureAck);
    }

    #[test]
    fn setup_from_config_picks_the_vm() {
        let text = r#"
[egress]
port = "net_pcap0,tx_pcap=/tmp/out.pcap"
[classifier]
defer_delay_ms = 2
max_defer_ms = 3
window_updates = false
[[classifier.rule]]
vm = "b"
protocol = "udp"
verdict = "defer"
[[vm]]
name = "a"
port = "net_tap0"
[[vm]]
name = "b"
port = "net_tap1"
mode = "protected"
defer = "never"
[[vm]]
name = "c"
port = "net_tap2"
mode = "protected"
defer = "all"
"#;
        let cfg = Config::from_toml_str(text).unwrap();
        let s = Setup::from_config(Some(&cfg), None).unwrap();
        assert_eq!((s.vm.as_str(), s.defer), ("b", VmDefer::Never));
        assert_eq!(s.policy.defer_delay_ns, 2 * MS);
        assert!(!s.window_updates);
        assert_eq!(s.classifier.rules().len(), 1);
        let s = Setup::from_config(Some(&cfg), Some("c")).unwrap();
        assert_eq!((s.vm.as_str(), s.defer), ("c", VmDefer::All));
        let s = Setup::from_config(Some(&cfg), Some("a")).unwrap();
        assert_eq!((s.vm.as_str(), s.defer), ("a", VmDefer::Builtin));
        let e = Setup::from_config(Some(&cfg), Some("zz")).unwrap_err();
        assert_eq!(
            e,
            "no [[vm]] is named \"zz\" (the configuration has: a, b, c)"
        );
        assert!(Setup::from_config(None, Some("a")).is_err());

        let no_protected = Config::from_toml_str(
            "[egress]\nport = \"net_pcap0,tx_pcap=/tmp/o.pcap\"\n[[vm]]\nname = \"a\"\nport = \"net_tap0\"\ndefer = \"all\"\n",
        )
        .unwrap();
        let s = Setup::from_config(Some(&no_protected), None).unwrap();
        assert_eq!((s.vm.as_str(), s.defer), ("", VmDefer::Builtin));
    }

    #[test]
    fn setup_takes_the_vms_high_water_marks() {
        let text = r#"
[egress]
port = "net_pcap0,tx_pcap=/tmp/out.pcap"
[dataplane]
vm_queue = 200
[[vm]]
name = "a"
port = "net_tap0"
[[vm]]
name = "b"
port = "net_tap1"
mode = "protected"
max_held_frames = 100
max_held_bytes = 20000
high_water = 0.5
[[vm]]
name = "c"
port = "net_tap2"
high_water = 0
"#;
        let cfg = Config::from_toml_str(text).unwrap();
        let hw = |s: &Setup| (s.policy.high_water_frames, s.policy.high_water_bytes);
        // The default VM is the first protected one: its own marks.
        assert_eq!(
            hw(&Setup::from_config(Some(&cfg), None).unwrap()),
            (50, 10_000)
        );
        assert_eq!(
            hw(&Setup::from_config(Some(&cfg), Some("b")).unwrap()),
            (50, 10_000)
        );
        // "a" sets nothing: 0.75 of vm_queue (and of its 1518 bytes per frame).
        assert_eq!(
            hw(&Setup::from_config(Some(&cfg), Some("a")).unwrap()),
            (150, 227_700)
        );
        assert_eq!(
            hw(&Setup::from_config(Some(&cfg), Some("c")).unwrap()),
            (0, 0)
        );
        // No VM at all: the default limits of this configuration (0.75 of vm_queue).
        let no_protected = Config::from_toml_str(
            "[egress]\nport = \"net_null0\"\n[dataplane]\nvm_queue = 64\n[[vm]]\nname = \"a\"\nport = \"net_tap0\"\nhigh_water = 0.25\n",
        )
        .unwrap();
        assert_eq!(
            hw(&Setup::from_config(Some(&no_protected), None).unwrap()),
            (48, 72_864)
        );
        // No configuration: the default budget of one VM, 8192 frames of 1518 bytes.
        assert_eq!(hw(&Setup::default()), (6144, 9_326_592));
        assert_eq!(
            hw(&Setup::from_config(None, None).unwrap()),
            (6144, 9_326_592)
        );
        // The timings stay the classifier's.
        let s = Setup::from_config(Some(&cfg), Some("b")).unwrap();
        assert_eq!(s.policy.defer_delay_ns, 5 * MS);
        assert_eq!(s.policy.max_defer_ns, 10 * MS);
    }

    #[test]
    fn high_water_in_bytes_counts_the_open_epoch() {
        let cfg = PolicyConfig {
            high_water_bytes: 3000,
            ..PolicyConfig::default()
        };
        // 1000-byte deferrables every ms: the third reaches 3000 bytes; after that fence the
        // count starts again, so the sixth does too.
        let events: Vec<_> = (0..7)
            .map(|k| (k * MS, FrameKind::Deferrable, 1000))
            .collect();
        let run = simulate_sized(&events, cfg, 0);
        assert_eq!(
            run.checkpoints,
            vec![
                req(2 * MS, 3, Why::HighWater),
                req(5 * MS, 3, Why::HighWater),
                Checkpoint {
                    at_ns: 6 * MS,
                    commit_ns: 6 * MS,
                    frames: 1,
                    cause: Cause::EndOfCapture
                },
            ]
        );
        // Without sizes the byte mark never trips: each frame extends the deferral (capped at
        // 10 ms), so only the final checkpoint releases them.
        let no_sizes: Vec<_> = events.iter().map(|&(t, k, _)| (t, k)).collect();
        let run = simulate(&no_sizes, cfg, 0);
        assert_eq!(
            run.checkpoints,
            vec![Checkpoint {
                at_ns: 6 * MS,
                commit_ns: 6 * MS,
                frames: 7,
                cause: Cause::EndOfCapture
            }]
        );
    }

    #[test]
    fn replay_reports_and_uses_the_marks() {
        // Six 54-byte pure ACKs 1 ms apart, as VM "b" with a mark of 3 frames (max 32,
        // high_water 0.08 -> ceil(2.56) = 3).
        let frames: Vec<Frame> = (0..6)
            .map(|k| frame(T0 + k * MS, tcp(1000, ACK, 500, 0)))
            .collect();
        let cfg = Config::from_toml_str(
            "[egress]\nport = \"net_null0\"\n[[vm]]\nname = \"b\"\nport = \"net_tap0\"\nmode = \"protected\"\nmax_held_frames = 32\nmax_held_bytes = 16384\nhigh_water = 0.08\n",
        )
        .unwrap();
        let setup = Setup::from_config(Some(&cfg), None).unwrap();
        assert_eq!(
            (
                setup.policy.high_water_frames,
                setup.policy.high_water_bytes
            ),
            (3, 1311)
        );
        let r = replay(&frames, &setup, 0);
        assert_eq!(
            r.with_policy.checkpoints,
            vec![
                req(T0 + 2 * MS, 3, Why::HighWater),
                req(T0 + 5 * MS, 3, Why::HighWater)
            ]
        );
        let j = r.to_json();
        assert_eq!(j["policy"]["high_water_frames"], 3);
        assert_eq!(j["policy"]["high_water_bytes"], 1311);
        let text = r.to_text("x.pcap");
        assert!(
            text.contains("high water 3 frames or 1311 bytes;"),
            "{text}"
        );
        // The byte mark alone: 25 x 54 = 1350 >= 1311 bytes, at the 25th frame.
        let setup = Setup {
            policy: PolicyConfig {
                high_water_frames: 0,
                ..setup.policy
            },
            ..setup
        };
        let frames: Vec<Frame> = (0..30)
            .map(|k| frame(T0 + k * 10_000, tcp(1000, ACK, 500, 0)))
            .collect();
        let r = replay(&frames, &setup, 0);
        assert_eq!(
            r.with_policy.checkpoints[0],
            req(T0 + 24 * 10_000, 25, Why::HighWater)
        );
        let j = r.to_json();
        assert_eq!(j["policy"]["high_water_frames"], 0);
        assert!(r.to_text("x").contains("high water 1311 bytes;"));
        let r = replay(&frames, &Setup::default(), 0);
        assert!(r
            .to_text("x")
            .contains("high water 6144 frames or 9326592 bytes;"));
        assert_eq!(r.to_json()["policy"]["high_water_bytes"], 9_326_592);
    }

    #[test]
    fn broken_pipe_is_recognised_through_layers() {
        let e = anyhow::Error::from(io::Error::from(io::ErrorKind::BrokenPipe));
        assert!(is_broken_pipe(&e));
        assert!(is_broken_pipe(&e.context("writing")));
        let j = serde_json::Error::io(io::Error::from(io::ErrorKind::BrokenPipe));
        assert!(is_broken_pipe(&anyhow::Error::from(j)));
        assert!(!is_broken_pipe(&anyhow::anyhow!("other")));
    }
}
