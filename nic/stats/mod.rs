//! Counters: written by the one worker that owns them, read by anyone (stats printer, stats
//! file, admin socket). Every frame a VM sent is, at any moment, exactly one of: held (in an
//! epoch not yet committed), ready (released, waiting for egress or its rate), staged (in the
//! egress TX burst), transmitted, or dropped under a named [`DropReason`]. The worker keeps
//! that ledger in its VM cores' [`Ledger`] and publishes it with the queue's gauges as one unit
//! ([`VmCounters::publish`], a sequence lock), so every reader sees it balance
//! ([`VmSnapshot::balanced`]), even in the middle of a burst or with TX stalled.

pub mod meter;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{
    fence, AtomicU64, Ordering::Acquire, Ordering::Relaxed, Ordering::Release,
};

/// A monotonically updated value with a single writer. `add` is a plain load + store (no locked
/// read-modify-write): correct because only the owning worker writes it.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }

    #[inline]
    pub fn sub(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_sub(n), Relaxed);
    }

    #[inline]
    pub fn set(&self, v: u64) {
        self.0.store(v, Relaxed);
    }

    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

macro_rules! drop_reasons {
    ($($variant:ident => $name:literal: $doc:literal,)*) => {
        /// Why a frame was dropped. Every drop is counted under exactly one of these.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum DropReason { $(#[doc = $doc] $variant,)* }

        impl DropReason {
            pub const ALL: &'static [DropReason] = &[$(DropReason::$variant,)*];
            /// The reason's name in stats output.
            pub fn name(self) -> &'static str {
                match self { $(DropReason::$variant => $name,)* }
            }
        }
    };
}

drop_reasons! {
    UnknownSource => "unknown-source-mac": "a frame on the shared ingress whose source MAC/VLAN belongs to no VM",
    SpoofedSource => "spoofed-source-mac": "a frame on the shared ingress carrying the source MAC/VLAN of a VM that has its own port (only VMs attached to the shared ingress may send there)",
    Runt => "runt": "a frame shorter than an Ethernet header",
    BufferFull => "buffer-full": "the VM's buffer (max_held_frames / max_held_bytes) was full and its on_full is drop (always so on the shared ingress, which cannot push back on one VM)",
    Standby => "standby": "the VM is a standby copy: its output never leaves",
    NoVm => "inbound-no-vm": "a frame from the uplink addressed to no known VM",
    PortBusy => "inbound-port-busy": "a frame for a VM whose port had no room (its VMM is not draining)",
    Uncommitted => "uncommitted-at-exit": "held output of a protected VM that was never committed, discarded at exit",
    Shutdown => "shutdown": "released output that TX did not take before the exit deadline",
    Discarded => "discarded": "held output dropped by the VMM's Discard",
    UnprotectDrop => "unprotect-drop": "held output dropped by the VMM's Unprotect{drop}",
    ControllerLost => "controller-lost": "held output of a VM whose controller session went away (the VM failed)",
    Failed => "failed": "output of a failed VM (no controller), which may not leave until a session adopts it",
    Demoted => "demoted": "held or waiting output of a VM returned to standby (Demote): its output now leaves from another host",
    NoticeLost => "announcement-lost": "an announcement of a promoted VM that found no mbuf or no room in the egress stage",
    WorkerFailed => "worker-failed": "output (held, released or staged) in the queues of a worker that failed (panicked or stopped by itself): freed with the worker, never sent; counted as of its last published counters",
}

/// One counter per drop reason.
#[derive(Debug, Default)]
pub struct DropCounters([Counter; DropReason::ALL.len()]);

pub use crate::hold::ledger::{Ledger, Place};

/// Where a VM's frames that are neither transmitted nor dropped are, as gauges.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Waiting {
    /// In epochs not yet committed.
    pub held_frames: u64,
    pub held_bytes: u64,
    /// Released, waiting for egress or the VM's rate.
    pub ready_frames: u64,
    pub ready_bytes: u64,
    /// In the egress TX burst (TX has not taken them yet).
    pub staged_frames: u64,
}

impl DropCounters {
    #[inline]
    pub fn add(&self, reason: DropReason, n: u64) {
        self.0[reason as usize].add(n);
    }

    pub fn get(&self, reason: DropReason) -> u64 {
        self.0[reason as usize].get()
    }

    pub fn total(&self) -> u64 {
        self.0.iter().map(Counter::get).sum()
    }

    /// Non-zero reasons by name.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        DropReason::ALL
            .iter()
            .filter(|r| self.get(**r) > 0)
            .map(|r| (r.name().to_string(), self.get(*r)))
            .collect()
    }
}

/// Held frames by the classifier's reason (all `rule:N` together as `rule`).
#[derive(Debug, Default)]
pub struct VerdictCounters([Counter; VerdictCounters::NAMES.len()]);

impl VerdictCounters {
    pub const NAMES: [&'static str; 10] = [
        "tcp-pure-ack",
        "tcp-ack-no-psh",
        "ipv4-more-fragments",
        "ipv6-more-fragments",
        "window-update",
        "rule",
        "malformed",
        "other",
        "vm-all",
        "vm-never",
    ];

    #[inline]
    pub fn add(&self, reason: crate::classify::Reason) {
        use crate::classify::Reason as R;
        let i = match reason {
            R::TcpPureAck => 0,
            R::TcpAckNoPsh => 1,
            R::Ipv4MoreFragments => 2,
            R::Ipv6MoreFragments => 3,
            R::WindowUpdate => 4,
            R::Rule(_) => 5,
            R::Malformed => 6,
            R::Other => 7,
            R::VmAll => 8,
            R::VmNever => 9,
        };
        self.0[i].add(1);
    }

    /// Non-zero reasons by name.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        named(&Self::NAMES, &self.0)
    }
}

/// Checkpoint requests sent to the VMM, by reason.
#[derive(Debug, Default)]
pub struct RequestCounters([Counter; 3]);

impl RequestCounters {
    pub const NAMES: [&'static str; 3] = ["immediate-frame", "deferral-expired", "high-water"];

    #[inline]
    pub fn add(&self, why: crate::hold::policy::Why) {
        use crate::hold::policy::Why;
        let i = match why {
            Why::ImmediateFrame => 0,
            Why::DeferralExpired => 1,
            Why::HighWater => 2,
        };
        self.0[i].add(1);
    }

    /// Sets every count at once (the worker publishes its VM cores' plain counts).
    #[inline]
    pub fn set_all(&self, counts: [u64; 3]) {
        for (c, n) in self.0.iter().zip(counts) {
            c.set(n);
        }
    }

    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        named(&Self::NAMES, &self.0)
    }
}

fn named(names: &[&'static str], counters: &[Counter]) -> BTreeMap<String, u64> {
    names
        .iter()
        .zip(counters)
        .filter(|(_, c)| c.get() > 0)
        .map(|(n, c)| (n.to_string(), c.get()))
        .collect()
}

/// Counters of one VM. Outbound = from the VM towards egress; inbound = from the uplink to it.
#[derive(Debug, Default)]
pub struct VmCounters {
    pub rx_frames: Counter,
    pub rx_bytes: Counter,
    /// Frames (bytes) that became releasable: a pass-through VM's on arrival, a protected VM's
    /// when their epoch committed (or protection ended with release). Published by the worker
    /// from its queue's own count.
    pub released_frames: Counter,
    pub released_bytes: Counter,
    pub tx_frames: Counter,
    pub tx_bytes: Counter,
    /// Frames received and not yet transmitted or dropped (a gauge): held + ready + staged.
    pub waiting: Counter,
    /// Frames in the egress TX burst, not yet taken by TX (a gauge).
    pub staged_frames: Counter,
    /// The sequence lock of [`VmCounters::publish`]: odd while the worker writes.
    seq: AtomicU64,
    /// Released frames (bytes) not yet transmitted: waiting for egress or for the VM's rate
    /// (gauges).
    pub ready_frames: Counter,
    pub ready_bytes: Counter,
    /// Times the VM's buffer filled up and its port stopped being read (backpressure).
    pub backpressure: Counter,
    pub inbound_frames: Counter,
    pub inbound_bytes: Counter,
    /// The VM's MAC as learned or configured (0 = not known yet).
    pub mac: Counter,
    pub drops: DropCounters,
    /// The VM's mode now, as `vmm_shim::proto::Mode`'s code.
    pub mode: Counter,
    /// Output commit, as gauges: the open epoch (0 when not protected), the highest sealed and
    /// committed ones, and what is held (not yet releasable).
    pub open_epoch: Counter,
    pub sealed_epoch: Counter,
    pub committed_epoch: Counter,
    pub held_frames: Counter,
    pub held_bytes: Counter,
    /// Epochs sealed, committed and discarded (counters).
    pub epochs_sealed: Counter,
    pub epochs_committed: Counter,
    pub epochs_discarded: Counter,
    /// Fences that sealed before the VM's ingress was seen empty: the drain hit
    /// `control.fence_drain_ms`, or the VM's buffer was full (frames left in the guest go to
    /// the next epoch, which is safe).
    pub fences_cut_short: Counter,
    /// Fences that sealed once the VM's port was seen empty, on a port where that proves
    /// nothing (a kernel or hardware port: a frame the guest sent just before it was paused
    /// may still have been on its way; it goes to the next epoch, which is safe).
    pub fences_unproven: Counter,
    /// What the classifier said of the protected VM's held frames, and the requests sent.
    pub verdicts: VerdictCounters,
    pub requests: RequestCounters,
    /// How long the open epoch has been open, in nanoseconds (a gauge the worker sets every
    /// `meter::PUBLISH_MS`, so to within that; 0 when no epoch is open).
    pub epoch_age_ns: Counter,
    /// 1 while a controller session has adopted the VM, else 0 (a gauge; its only writer is
    /// the control thread, not the worker).
    pub controller: Counter,
}

impl VmCounters {
    /// Publishes the ledger and where the waiting frames are, plus whatever `more` sets, as one
    /// unit: a reader ([`VmSnapshot::of`]) sees all of it from one moment or retries. Only the
    /// VM's worker calls this.
    #[inline]
    pub fn publish(&self, l: &Ledger, w: Waiting, more: impl FnOnce(&VmCounters)) {
        let s = self.seq.load(Relaxed);
        self.seq.store(s.wrapping_add(1), Relaxed);
        fence(Release);
        self.rx_frames.set(l.rx_frames);
        self.rx_bytes.set(l.rx_bytes);
        self.tx_frames.set(l.tx_frames);
        self.tx_bytes.set(l.tx_bytes);
        for (c, n) in self.drops.0.iter().zip(&l.drops) {
            c.set(*n);
        }
        self.held_frames.set(w.held_frames);
        self.held_bytes.set(w.held_bytes);
        self.ready_frames.set(w.ready_frames);
        self.ready_bytes.set(w.ready_bytes);
        self.staged_frames.set(w.staged_frames);
        self.waiting
            .set(w.held_frames + w.ready_frames + w.staged_frames);
        more(self);
        self.seq.store(s.wrapping_add(2), Release);
    }

    /// Once the VM's worker is gone (failed and joined), the caller is the only writer left:
    /// the frames still waiting as of the worker's last publish (held, ready, staged) were
    /// freed with it and never sent, so they move to the drop reason `why`, keeping the ledger
    /// balanced. Returns how many frames moved.
    pub fn discard_waiting(&self, why: DropReason) -> u64 {
        let s = self.seq.load(Relaxed);
        self.seq.store(s.wrapping_add(1), Relaxed);
        fence(Release);
        let n = self.waiting.get();
        self.drops.add(why, n);
        for c in [
            &self.waiting,
            &self.held_frames,
            &self.held_bytes,
            &self.ready_frames,
            &self.ready_bytes,
            &self.staged_frames,
        ] {
            c.set(0);
        }
        self.seq.store(s.wrapping_add(2), Release);
        n
    }

    /// `read` of the counters as of one [`VmCounters::publish`] (retried while one is under way).
    pub fn read<T>(&self, read: impl Fn(&VmCounters) -> T) -> T {
        loop {
            let s1 = self.seq.load(Acquire);
            if s1 % 2 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let v = read(self);
            fence(Acquire);
            if self.seq.load(Relaxed) == s1 {
                return v;
            }
        }
    }
}

/// Counters of one port as the data plane sees it (the driver's own are in `PortStats`).
#[derive(Debug, Default)]
pub struct PortCounters {
    pub rx_frames: Counter,
    pub rx_bytes: Counter,
    pub tx_frames: Counter,
    pub tx_bytes: Counter,
    pub drops: DropCounters,
}

/// A latency distribution (from an hdrhistogram), in nanoseconds; all 0 when nothing was
/// recorded.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Latency {
    pub count: u64,
    pub min_ns: u64,
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p99_ns: u64,
    pub p999_ns: u64,
    pub max_ns: u64,
    pub mean_ns: u64,
}

impl Latency {
    pub fn of(h: &hdrhistogram::Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            count: h.len(),
            min_ns: h.min(),
            p50_ns: h.value_at_quantile(0.5),
            p90_ns: h.value_at_quantile(0.9),
            p99_ns: h.value_at_quantile(0.99),
            p999_ns: h.value_at_quantile(0.999),
            max_ns: h.max(),
            mean_ns: h.mean().round() as u64,
        }
    }
}

/// Read-only view of one VM's counters at a moment.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VmSnapshot {
    pub name: String,
    pub mode: String,
    pub mac: Option<String>,
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub released_frames: u64,
    pub released_bytes: u64,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    pub waiting: u64,
    pub ready_frames: u64,
    pub ready_bytes: u64,
    /// In the egress TX burst, not yet taken by TX.
    #[serde(default)]
    pub staged_frames: u64,
    pub backpressure: u64,
    pub inbound_frames: u64,
    pub inbound_bytes: u64,
    pub dropped: BTreeMap<String, u64>,
    pub open_epoch: u64,
    pub sealed_epoch: u64,
    pub committed_epoch: u64,
    pub held_frames: u64,
    pub held_bytes: u64,
    pub epochs_sealed: u64,
    pub epochs_committed: u64,
    pub epochs_discarded: u64,
    pub fences_cut_short: u64,
    #[serde(default)]
    pub fences_unproven: u64,
    pub verdicts: BTreeMap<String, u64>,
    pub checkpoint_requests: BTreeMap<String, u64>,
    /// Arrival to transmit, per frame.
    #[serde(default)]
    pub hold_time: Latency,
    /// Commit received to the last frame of the epoch transmitted, per commit.
    #[serde(default)]
    pub commit_to_wire: Latency,
    /// Fence received to epoch sealed (the drain of the paused VM's ingress), per fence.
    #[serde(default)]
    pub fence_drain: Latency,
    /// How it is configured (port, limits, rate).
    #[serde(default)]
    pub setup: VmSetup,
    /// How long the open epoch has been open (0: none open), to within `meter::PUBLISH_MS`.
    #[serde(default)]
    pub epoch_age_ns: u64,
    /// Whether a controller session (a VMM) has adopted the VM now.
    #[serde(default)]
    pub controller: bool,
    /// The three latencies as cumulative histograms (for the Prometheus metrics).
    #[serde(default)]
    pub histograms: VmHistogramBuckets,
}

/// A latency distribution as cumulative buckets: `cumulative[i]` samples were at most
/// `le_ns[i]` (to the hdrhistogram's precision, two significant digits), `count` in all,
/// whose sum is `sum_ns` (the histogram's mean times its count).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Buckets {
    pub le_ns: Vec<u64>,
    pub cumulative: Vec<u64>,
    pub count: u64,
    pub sum_ns: u64,
}

impl Buckets {
    /// The upper bounds every histogram is cut at: 1 µs to 10 s, 1-2.5-5 per decade.
    pub const BOUNDS_NS: [u64; 22] = [
        1_000,
        2_500,
        5_000,
        10_000,
        25_000,
        50_000,
        100_000,
        250_000,
        500_000,
        1_000_000,
        2_500_000,
        5_000_000,
        10_000_000,
        25_000_000,
        50_000_000,
        100_000_000,
        250_000_000,
        500_000_000,
        1_000_000_000,
        2_500_000_000,
        5_000_000_000,
        10_000_000_000,
    ];

    pub fn of(h: &hdrhistogram::Histogram<u64>) -> Buckets {
        let count = h.len();
        Buckets {
            le_ns: Self::BOUNDS_NS.to_vec(),
            cumulative: Self::BOUNDS_NS
                .iter()
                .map(|&le| {
                    if count == 0 {
                        0
                    } else {
                        h.count_between(0, le)
                    }
                })
                .collect(),
            count,
            sum_ns: if count == 0 {
                0
            } else {
                (h.mean() * count as f64).round() as u64
            },
        }
    }
}

/// Hold time, commit-to-wire and fence drain of one VM, as buckets.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct VmHistogramBuckets {
    pub hold_time: Buckets,
    pub commit_to_wire: Buckets,
    pub fence_drain: Buckets,
}

/// A VM's configuration as `epochgate vms` shows it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct VmSetup {
    /// Its own port's device name, or "shared ingress".
    pub port: String,
    pub vlan: Option<u16>,
    pub max_held_frames: u64,
    /// 0: no byte limit.
    pub max_held_bytes: u64,
    /// Checkpoint requested at this many frames / bytes buffered (0: off).
    pub high_water_frames: u64,
    pub high_water_bytes: u64,
    /// "backpressure" or "drop".
    pub on_full: String,
    /// Regulator: bytes per second and frames per second (0: unlimited), bucket depths.
    pub rate_bytes_per_s: u64,
    pub rate_pps: u64,
    pub burst_bytes: u64,
    pub burst_frames: u64,
}

impl VmSnapshot {
    /// The counters of VM `name` as the worker last published them, all from one moment.
    pub fn of(name: &str, c: &VmCounters) -> VmSnapshot {
        c.read(|c| VmSnapshot::now(name, c))
    }

    fn now(name: &str, c: &VmCounters) -> VmSnapshot {
        let mode =
            vmm_shim::proto::Mode::from_u8(c.mode.get() as u8).map_or("unknown", |m| m.name());
        let mac = c.mac.get();
        VmSnapshot {
            name: name.to_string(),
            mode: mode.to_string(),
            mac: (mac != 0).then(|| {
                let b = mac.to_be_bytes();
                crate::wire::frame::MacAddr([b[2], b[3], b[4], b[5], b[6], b[7]]).to_string()
            }),
            rx_frames: c.rx_frames.get(),
            rx_bytes: c.rx_bytes.get(),
            released_frames: c.released_frames.get(),
            released_bytes: c.released_bytes.get(),
            tx_frames: c.tx_frames.get(),
            tx_bytes: c.tx_bytes.get(),
            waiting: c.waiting.get(),
            ready_frames: c.ready_frames.get(),
            ready_bytes: c.ready_bytes.get(),
            staged_frames: c.staged_frames.get(),
            backpressure: c.backpressure.get(),
            inbound_frames: c.inbound_frames.get(),
            inbound_bytes: c.inbound_bytes.get(),
            dropped: c.drops.snapshot(),
            open_epoch: c.open_epoch.get(),
            sealed_epoch: c.sealed_epoch.get(),
            committed_epoch: c.committed_epoch.get(),
            held_frames: c.held_frames.get(),
            held_bytes: c.held_bytes.get(),
            epochs_sealed: c.epochs_sealed.get(),
            epochs_committed: c.epochs_committed.get(),
            epochs_discarded: c.epochs_discarded.get(),
            fences_cut_short: c.fences_cut_short.get(),
            fences_unproven: c.fences_unproven.get(),
            verdicts: c.verdicts.snapshot(),
            checkpoint_requests: c.requests.snapshot(),
            hold_time: Latency::default(),
            commit_to_wire: Latency::default(),
            fence_drain: Latency::default(),
            setup: VmSetup::default(),
            epoch_age_ns: c.epoch_age_ns.get(),
            controller: c.controller.get() != 0,
            histograms: VmHistogramBuckets::default(),
        }
    }

    /// Nothing lost silently: every frame received is held, ready, staged, transmitted or
    /// dropped by reason.
    pub fn balanced(&self) -> bool {
        let dropped: u64 = self.dropped.values().sum();
        self.waiting == self.held_frames + self.ready_frames + self.staged_frames
            && self.rx_frames == self.tx_frames + self.waiting + dropped
    }
}

/// Read-only view of one port at a moment.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PortSnapshot {
    pub name: String,
    pub role: String,
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    pub dropped: BTreeMap<String, u64>,
    /// The driver's own counters.
    pub driver: crate::dpdk::PortStats,
}

/// Everything the stats printer and `--stats-file` show.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Snapshot {
    pub uptime_ms: u64,
    pub vms: Vec<VmSnapshot>,
    pub ports: Vec<PortSnapshot>,
    /// What the egress scheduler sent, by class, and how often the starvation guard acted.
    #[serde(default)]
    pub egress: EgressSnapshot,
    /// The VMM control socket's sessions and refusals.
    #[serde(default)]
    pub control: ControlSnapshot,
    /// The poll loops, one per worker lcore.
    #[serde(default)]
    pub workers: Vec<WorkerSnapshot>,
    /// The packet mbuf pool (`dataplane.mbufs`), read on the stats thread.
    #[serde(default)]
    pub mbufs: MbufSnapshot,
}

/// The mbuf pool at a moment: its size, the mbufs free in it (per-lcore caches included) and
/// those taken (held frames, driver rings, frames in flight): `in_use + available == size`,
/// both from one reading of the pool's free count.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct MbufSnapshot {
    pub size: u64,
    pub available: u64,
    pub in_use: u64,
}

impl MbufSnapshot {
    pub fn of(size: u32, available: u32) -> MbufSnapshot {
        MbufSnapshot {
            size: size.into(),
            available: available.into(),
            in_use: size.saturating_sub(available).into(),
        }
    }
}

/// A worker's poll loop, counted in the worker's own variables (no atomics per frame or per
/// round) and published every `meter::PUBLISH_MS`, like `ovs-appctl dpif-netdev/pmd-stats-show`.
#[derive(Debug, Default)]
pub struct WorkerCounters {
    /// The EAL lcore it runs on.
    pub lcore: Counter,
    /// Rounds of the poll loop, and those that moved at least one frame.
    pub rounds: Counter,
    pub busy_rounds: Counter,
    /// Frames read from every port (VM ports, shared ingress, uplink), and sent on every port.
    pub rx_frames: Counter,
    pub tx_frames: Counter,
    /// TSC cycles spent in busy and in idle rounds, and the TSC's rate.
    pub busy_cycles: Counter,
    pub idle_cycles: Counter,
    pub tsc_hz: Counter,
}

/// [`WorkerCounters`] at a moment.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct WorkerSnapshot {
    pub lcore: u64,
    pub rounds: u64,
    pub busy_rounds: u64,
    pub rx_frames: u64,
    pub tx_frames: u64,
    pub busy_cycles: u64,
    pub idle_cycles: u64,
    pub tsc_hz: u64,
}

impl WorkerSnapshot {
    pub fn of(c: &WorkerCounters) -> WorkerSnapshot {
        WorkerSnapshot {
            lcore: c.lcore.get(),
            rounds: c.rounds.get(),
            busy_rounds: c.busy_rounds.get(),
            rx_frames: c.rx_frames.get(),
            tx_frames: c.tx_frames.get(),
            busy_cycles: c.busy_cycles.get(),
            idle_cycles: c.idle_cycles.get(),
            tsc_hz: c.tsc_hz.get(),
        }
    }

    /// Rounds that moved no frame.
    pub fn idle_rounds(&self) -> u64 {
        self.rounds.saturating_sub(self.busy_rounds)
    }

    /// Frames (received and sent) per busy round.
    pub fn frames_per_busy_round(&self) -> f64 {
        if self.busy_rounds == 0 {
            0.0
        } else {
            (self.rx_frames + self.tx_frames) as f64 / self.busy_rounds as f64
        }
    }
}

/// The control thread's counters (it is their only writer, but for the `admin_*` ones, whose
/// only writer is the admin thread).
#[derive(Debug, Default)]
pub struct ControlCounters {
    /// Sessions open now (a gauge).
    pub sessions: Counter,
    /// Connections refused because `control.max_sessions` sessions were open.
    pub refused_max_sessions: Counter,
    /// Connections refused because epochgate was (nearly) out of file descriptors.
    pub refused_no_fds: Counter,
    /// `accept` failures other than "nothing to accept" (each one starts or extends a pause).
    pub accept_errors: Counter,
    /// Sessions closed for saying no `Hello` within `control.hello_timeout_ms`, or for
    /// silence past `control.liveness_timeout_ms`.
    pub hello_timeouts: Counter,
    pub liveness_timeouts: Counter,
    /// Connections refused because the peer's credentials (SO_PEERCRED) are not allowed
    /// (`control.allowed_uids`, `control.allowed_gids`).
    pub refused_peer: Counter,
    /// Sessions closed because they did not read what epochgate sent them (their socket's
    /// send buffer, the per-session bound on unread replies and events, was full).
    pub closed_not_reading: Counter,
    /// Commands refused because the session had not adopted a VM (`Hello`) yet.
    pub refused_before_hello: Counter,
    /// `Hello`s refused because they asked for a VM the session may not take: a second VM, a
    /// VM another session drives, or no such VM.
    pub refused_other_vm: Counter,
    /// Messages refused as malformed (truncated, oversize, wrong version, unknown type).
    pub bad_messages: Counter,
    /// VMs failed by an operator (`epochgate fail VM` on a writable admin socket).
    pub operator_failed: Counter,
    /// Admin socket connections refused for their peer's credentials (written by the admin
    /// thread).
    pub admin_refused_peer: Counter,
    /// Write requests refused on the admin socket: it is read-only (`admin.writable`), or
    /// the peer may not write (`admin.write_uids`, `admin.write_gids`) (the admin thread).
    pub admin_writes_refused: Counter,
}

/// [`ControlCounters`] at a moment.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct ControlSnapshot {
    pub sessions: u64,
    pub refused_max_sessions: u64,
    pub refused_no_fds: u64,
    pub accept_errors: u64,
    pub hello_timeouts: u64,
    pub liveness_timeouts: u64,
    pub refused_peer: u64,
    pub closed_not_reading: u64,
    pub refused_before_hello: u64,
    pub refused_other_vm: u64,
    pub bad_messages: u64,
    pub operator_failed: u64,
    pub admin_refused_peer: u64,
    pub admin_writes_refused: u64,
}

impl ControlSnapshot {
    pub fn of(c: &ControlCounters) -> ControlSnapshot {
        ControlSnapshot {
            sessions: c.sessions.get(),
            refused_max_sessions: c.refused_max_sessions.get(),
            refused_no_fds: c.refused_no_fds.get(),
            accept_errors: c.accept_errors.get(),
            hello_timeouts: c.hello_timeouts.get(),
            liveness_timeouts: c.liveness_timeouts.get(),
            refused_peer: c.refused_peer.get(),
            closed_not_reading: c.closed_not_reading.get(),
            refused_before_hello: c.refused_before_hello.get(),
            refused_other_vm: c.refused_other_vm.get(),
            bad_messages: c.bad_messages.get(),
            operator_failed: c.operator_failed.get(),
            admin_refused_peer: c.admin_refused_peer.get(),
            admin_writes_refused: c.admin_writes_refused.get(),
        }
    }
}

/// The egress scheduler's counters (published by the worker every few milliseconds).
#[derive(Debug, Default)]
pub struct EgressCounters {
    pub released_frames: Counter,
    pub released_bytes: Counter,
    pub passthrough_frames: Counter,
    pub passthrough_bytes: Counter,
    /// Frames sent while both classes were waiting, and of those the pass-through frames the
    /// starvation guard let ahead of released ones.
    pub contended_frames: Counter,
    pub guarded_frames: Counter,
}

/// [`EgressCounters`] at a moment.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct EgressSnapshot {
    pub released_frames: u64,
    pub released_bytes: u64,
    pub passthrough_frames: u64,
    pub passthrough_bytes: u64,
    pub contended_frames: u64,
    pub guarded_frames: u64,
}

impl EgressSnapshot {
    pub fn of(c: &EgressCounters) -> EgressSnapshot {
        EgressSnapshot {
            released_frames: c.released_frames.get(),
            released_bytes: c.released_bytes.get(),
            passthrough_frames: c.passthrough_frames.get(),
            passthrough_bytes: c.passthrough_bytes.get(),
            contended_frames: c.contended_frames.get(),
            guarded_frames: c.guarded_frames.get(),
        }
    }

    /// The egress stage of every worker together.
    pub fn sum(workers: &[std::sync::Arc<EgressCounters>]) -> EgressSnapshot {
        workers
            .iter()
            .map(|c| EgressSnapshot::of(c))
            .fold(EgressSnapshot::default(), |a, b| EgressSnapshot {
                released_frames: a.released_frames + b.released_frames,
                released_bytes: a.released_bytes + b.released_bytes,
                passthrough_frames: a.passthrough_frames + b.passthrough_frames,
                passthrough_bytes: a.passthrough_bytes + b.passthrough_bytes,
                contended_frames: a.contended_frames + b.contended_frames,
                guarded_frames: a.guarded_frames + b.guarded_frames,
            })
    }
}

impl Snapshot {
    /// The table printed on screen: one line per VM and per port.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(s, "-- epochgate at {:.1} s", self.uptime_ms as f64 / 1000.0);
        for v in &self.vms {
            let _ = writeln!(
                s,
                "  vm {:<12} {:<11} out rx {:>10} tx {:>10} held {:>6} waiting {:>6} dropped {:>8} | in {:>10}{}",
                v.name,
                v.mode,
                v.rx_frames,
                v.tx_frames,
                v.held_frames,
                v.waiting,
                v.dropped.values().sum::<u64>(),
                v.inbound_frames,
                if v.open_epoch > 0 {
                    format!(" | epoch {} sealed {} committed {}", v.open_epoch, v.sealed_epoch, v.committed_epoch)
                } else {
                    String::new()
                }
            );
        }
        for p in &self.ports {
            let _ = writeln!(
                s,
                "  port {:<14} {:<8} rx {:>10} tx {:>10} dropped {:>8} (driver missed {})",
                p.name,
                p.role,
                p.rx_frames,
                p.tx_frames,
                p.dropped.values().sum::<u64>(),
                p.driver.imissed
            );
        }
        let c = &self.control;
        let _ = writeln!(
            s,
            "  control  {} session(s), refused {} (max_sessions) {} (no fds), accept errors {}, timeouts {} hello {} liveness",
            c.sessions, c.refused_max_sessions, c.refused_no_fds, c.accept_errors, c.hello_timeouts, c.liveness_timeouts
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_reason_names_are_unique_and_kebab_case() {
        let mut names: Vec<_> = DropReason::ALL.iter().map(|r| r.name()).collect();
        assert!(names
            .iter()
            .all(|n| n.chars().all(|c| c.is_ascii_lowercase() || c == '-')));
        names.sort();
        names.dedup();
        assert_eq!(names.len(), DropReason::ALL.len());
    }

    #[test]
    fn snapshot_balance_detects_a_lost_frame() {
        let c = VmCounters::default();
        let mut l = Ledger::default();
        l.received(10, 640, Place::Held);
        l.moved(Place::Held, Place::Transmitted, 6, 384);
        l.moved(Place::Held, Place::Dropped(DropReason::BufferFull), 1, 0);
        l.moved(Place::Held, Place::Ready, 1, 0);
        l.moved(Place::Held, Place::Staged, 1, 0);
        let w = Waiting {
            held_frames: 1,
            ready_frames: 1,
            staged_frames: 1,
            ..Waiting::default()
        };
        c.publish(&l, w, |_| {});
        assert_eq!(l.waiting(), 3);
        let s = VmSnapshot::of("a", &c);
        assert!(s.balanced(), "{s:?}");
        assert_eq!((s.waiting, s.staged_frames), (3, 1));
        // A frame nowhere: received, but neither waiting, transmitted nor dropped.
        l.received(1, 64, Place::Held);
        c.publish(&l, w, |_| {});
        assert!(!VmSnapshot::of("a", &c).balanced());
        // A staged frame not counted as waiting.
        c.waiting.set(2);
        assert!(!VmSnapshot::of("a", &c).balanced());
    }

    #[test]
    fn a_failed_workers_waiting_frames_are_counted_discarded() {
        let c = VmCounters::default();
        let mut l = Ledger::default();
        l.received(10, 640, Place::Held);
        l.moved(Place::Held, Place::Transmitted, 6, 384);
        l.moved(Place::Held, Place::Ready, 1, 64);
        l.moved(Place::Held, Place::Staged, 1, 64);
        let w = Waiting {
            held_frames: 2,
            held_bytes: 128,
            ready_frames: 1,
            ready_bytes: 64,
            staged_frames: 1,
        };
        c.publish(&l, w, |_| {});
        assert_eq!(c.discard_waiting(DropReason::WorkerFailed), 4);
        let s = VmSnapshot::of("a", &c);
        assert!(s.balanced(), "{s:?}");
        assert_eq!((s.waiting, s.held_frames, s.tx_frames), (0, 0, 6));
        assert_eq!(s.dropped.get("worker-failed"), Some(&4));
    }

    /// The worker moves frames through the ledger while readers snapshot it: every snapshot
    /// balances, even though a frame's move touches several counters.
    #[test]
    fn readers_never_see_a_ledger_in_the_middle_of_a_publish() {
        use std::sync::atomic::AtomicBool;
        use std::sync::Arc;
        let c = Arc::new(VmCounters::default());
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (c, stop) = (c.clone(), stop.clone());
            std::thread::spawn(move || {
                let (mut l, mut w) = (Ledger::default(), Waiting::default());
                let mut x = 1u64;
                while !stop.load(Relaxed) {
                    // A cheap pseudo-random walk: receive, hold, release, stage, send, drop.
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    match x % 6 {
                        0 => {
                            l.received(3, 192, Place::Held);
                            w.held_frames += 3;
                        }
                        1 if w.held_frames > 0 => {
                            w.held_frames -= 1;
                            w.ready_frames += 1;
                            l.moved(Place::Held, Place::Ready, 1, 0);
                        }
                        2 if w.ready_frames > 0 => {
                            w.ready_frames -= 1;
                            w.staged_frames += 1;
                            l.moved(Place::Ready, Place::Staged, 1, 0);
                        }
                        3 if w.staged_frames > 0 => {
                            w.staged_frames -= 1;
                            l.moved(Place::Staged, Place::Transmitted, 1, 64);
                        }
                        4 if w.held_frames > 0 => {
                            w.held_frames -= 1;
                            l.moved(Place::Held, Place::Dropped(DropReason::Discarded), 1, 0);
                        }
                        _ => {}
                    }
                    c.publish(&l, w, |_| {});
                }
                l
            })
        };
        let mut seen = 0u64;
        let start = std::time::Instant::now();
        while seen < 20_000 && start.elapsed() < std::time::Duration::from_secs(20) {
            let s = VmSnapshot::of("a", &c);
            assert!(s.balanced(), "a reader saw an unbalanced ledger: {s:?}");
            seen += 1;
        }
        stop.store(true, Relaxed);
        let l = writer.join().unwrap();
        assert!(seen >= 1000, "only {seen} snapshots");
        assert!(l.rx_frames > 0);
    }

    #[test]
    fn mac_is_shown_once_known() {
        let c = VmCounters::default();
        assert_eq!(VmSnapshot::of("a", &c).mac, None);
        c.mac.set(0x5254_0000_0001);
        assert_eq!(
            VmSnapshot::of("a", &c).mac.as_deref(),
            Some("52:54:00:00:00:01")
        );
    }
}
