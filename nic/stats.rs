//! Counters: written by the one worker that owns them, read by anyone (stats printer, stats
//! file). Every frame that enters is, at any moment, exactly one of: waiting (queued or staged
//! for TX), transmitted, or dropped under a named [`DropReason`]; `Snapshot::balanced` checks it.

use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

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
    Runt => "runt": "a frame shorter than an Ethernet header",
    VmQueueFull => "vm-queue-full": "the VM's queue was full (shared ingress cannot push back per VM)",
    Standby => "standby": "the VM is a standby copy: its output never leaves",
    NoVm => "inbound-no-vm": "a frame from the uplink addressed to no known VM",
    PortBusy => "inbound-port-busy": "a frame for a VM whose port had no room (its VMM is not draining)",
    Uncommitted => "uncommitted-at-exit": "held output of a protected VM that was never committed, discarded at exit",
    Shutdown => "shutdown": "released output that TX did not take before the exit deadline",
}

/// One counter per drop reason.
#[derive(Debug, Default)]
pub struct DropCounters([Counter; DropReason::ALL.len()]);

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
    pub fn snapshot(&self) -> BTreeMap<&'static str, u64> {
        DropReason::ALL
            .iter()
            .filter(|r| self.get(**r) > 0)
            .map(|r| (r.name(), self.get(*r)))
            .collect()
    }
}

/// Counters of one VM. Outbound = from the VM towards egress; inbound = from the uplink to it.
#[derive(Debug, Default)]
pub struct VmCounters {
    pub rx_frames: Counter,
    pub rx_bytes: Counter,
    pub tx_frames: Counter,
    pub tx_bytes: Counter,
    /// Frames received and not yet transmitted or dropped (a gauge).
    pub waiting: Counter,
    pub inbound_frames: Counter,
    pub inbound_bytes: Counter,
    /// The VM's MAC as learned or configured (0 = not known yet).
    pub mac: Counter,
    pub drops: DropCounters,
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

/// Read-only view of one VM's counters at a moment.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct VmSnapshot {
    pub name: String,
    pub mode: String,
    pub mac: Option<String>,
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    pub waiting: u64,
    pub inbound_frames: u64,
    pub inbound_bytes: u64,
    pub dropped: BTreeMap<&'static str, u64>,
}

impl VmSnapshot {
    pub fn of(name: &str, mode: &str, c: &VmCounters) -> VmSnapshot {
        let mac = c.mac.get();
        VmSnapshot {
            name: name.to_string(),
            mode: mode.to_string(),
            mac: (mac != 0).then(|| {
                let b = mac.to_be_bytes();
                crate::frame::MacAddr([b[2], b[3], b[4], b[5], b[6], b[7]]).to_string()
            }),
            rx_frames: c.rx_frames.get(),
            rx_bytes: c.rx_bytes.get(),
            tx_frames: c.tx_frames.get(),
            tx_bytes: c.tx_bytes.get(),
            waiting: c.waiting.get(),
            inbound_frames: c.inbound_frames.get(),
            inbound_bytes: c.inbound_bytes.get(),
            dropped: c.drops.snapshot(),
        }
    }

    /// Nothing lost silently: every frame received is waiting, transmitted or dropped by reason.
    pub fn balanced(&self) -> bool {
        let dropped: u64 = self.dropped.values().sum();
        self.rx_frames == self.tx_frames + self.waiting + dropped
    }
}

/// Read-only view of one port at a moment.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PortSnapshot {
    pub name: String,
    pub role: String,
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    pub dropped: BTreeMap<&'static str, u64>,
    /// The driver's own counters.
    pub driver: crate::dpdk::PortStats,
}

/// Everything the stats printer and `--stats-file` show.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Snapshot {
    pub uptime_ms: u64,
    pub vms: Vec<VmSnapshot>,
    pub ports: Vec<PortSnapshot>,
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
                "  vm {:<12} {:<11} out rx {:>10} tx {:>10} waiting {:>6} dropped {:>8} | in {:>10}",
                v.name,
                v.mode,
                v.rx_frames,
                v.tx_frames,
                v.waiting,
                v.dropped.values().sum::<u64>(),
                v.inbound_frames
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
        c.rx_frames.add(10);
        c.tx_frames.add(6);
        c.waiting.set(2);
        c.drops.add(DropReason::VmQueueFull, 2);
        let s = VmSnapshot::of("a", "passthrough", &c);
        assert!(s.balanced());
        c.rx_frames.add(1);
        assert!(!VmSnapshot::of("a", "passthrough", &c).balanced());
    }

    #[test]
    fn mac_is_shown_once_known() {
        let c = VmCounters::default();
        assert_eq!(VmSnapshot::of("a", "p", &c).mac, None);
        c.mac.set(0x5254_0000_0001);
        assert_eq!(
            VmSnapshot::of("a", "p", &c).mac.as_deref(),
            Some("52:54:00:00:00:01")
        );
    }
}
