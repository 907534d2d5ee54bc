//! Latency histograms (hdrhistogram): hold time, commit-to-wire and fence drain, per VM.
//!
//! The worker records into histograms of its own, with no lock and no allocation. Every
//! [`PUBLISH_MS`] it hands the ones that have something to the [`MeterHub`] through a lock-free
//! ring and takes empty ones back from another ring (allocated once, at start). The stats side
//! merges what arrived into running totals whenever it reads them. When the hub has no empty
//! histogram to give (nobody read the stats for a while), the worker keeps recording into its
//! own: nothing is lost, it is only published later.

use crate::stats::{Buckets, Latency, VmHistogramBuckets};
use crossbeam::queue::ArrayQueue;
use hdrhistogram::Histogram;
use std::sync::{Arc, Mutex};

/// How often the worker hands its histograms over.
pub const PUBLISH_MS: u64 = 10;
/// Largest value kept exactly (longer ones are recorded as this): one hour in nanoseconds.
const HIGHEST_NS: u64 = 3_600_000_000_000;

/// The three distributions of one VM, in nanoseconds.
#[derive(Debug, Clone)]
pub struct VmHistograms {
    /// Arrival to transmit, per frame.
    pub hold: Histogram<u64>,
    /// Commit received to the epoch's last frame transmitted, per commit.
    pub commit_to_wire: Histogram<u64>,
    /// Fence received to epoch sealed, per fence.
    pub fence_drain: Histogram<u64>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIGHEST_NS, 2).expect("static bounds are valid")
}

/// Records `n` samples of `ns` (clamped to the histogram's range).
#[inline]
pub fn record(h: &mut Histogram<u64>, ns: u64, n: u64) {
    // Cannot fail: the value is clamped into the histogram's range and counts saturate.
    let _ = h.record_n(ns.clamp(1, HIGHEST_NS), n);
}

impl Default for VmHistograms {
    fn default() -> Self {
        VmHistograms {
            hold: histogram(),
            commit_to_wire: histogram(),
            fence_drain: histogram(),
        }
    }
}

impl VmHistograms {
    fn is_empty(&self) -> bool {
        self.hold.is_empty() && self.commit_to_wire.is_empty() && self.fence_drain.is_empty()
    }

    fn reset(&mut self) {
        self.hold.reset();
        self.commit_to_wire.reset();
        self.fence_drain.reset();
    }

    fn merge(&mut self, other: &VmHistograms) {
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.hold.add(&other.hold);
        let _ = self.commit_to_wire.add(&other.commit_to_wire);
        let _ = self.fence_drain.add(&other.fence_drain);
    }

    /// Hold time, commit-to-wire and fence drain, summarised.
    pub fn latency(&self) -> [Latency; 3] {
        [
            Latency::of(&self.hold),
            Latency::of(&self.commit_to_wire),
            Latency::of(&self.fence_drain),
        ]
    }
}

/// Where the worker's histograms meet the stats readers.
pub struct MeterHub {
    filled: ArrayQueue<(usize, Box<VmHistograms>)>,
    spare: ArrayQueue<Box<VmHistograms>>,
    totals: Mutex<Vec<VmHistograms>>,
}

impl MeterHub {
    /// A hub for `vms` VMs, with its empty histograms allocated now.
    pub fn new(vms: usize) -> Arc<MeterHub> {
        let slots = 2 * vms + 2;
        let spare = ArrayQueue::new(slots);
        for _ in 0..slots {
            let _ = spare.push(Box::default());
        }
        Arc::new(MeterHub {
            // Room for every set in circulation (the spares and the worker's own), so a hand-over
            // never fails for want of room, the last one included.
            filled: ArrayQueue::new(slots + vms.max(1)),
            spare,
            totals: Mutex::new(vec![VmHistograms::default(); vms]),
        })
    }

    /// Merges what the worker handed over into the totals and gives the histograms back.
    pub fn collect(&self) {
        let mut totals = self.totals.lock().unwrap_or_else(|e| e.into_inner());
        while let Some((vm, mut h)) = self.filled.pop() {
            if let Some(t) = totals.get_mut(vm) {
                t.merge(&h);
            }
            h.reset();
            let _ = self.spare.push(h);
        }
    }

    /// VM `vm`'s distributions so far (what the worker handed over up to now).
    pub fn latency(&self, vm: usize) -> [Latency; 3] {
        self.summary(vm).0
    }

    /// VM `vm`'s distributions so far, summarised and as cumulative buckets.
    pub fn summary(&self, vm: usize) -> ([Latency; 3], VmHistogramBuckets) {
        self.collect();
        let totals = self.totals.lock().unwrap_or_else(|e| e.into_inner());
        totals.get(vm).map_or_else(
            || ([Latency::default(); 3], VmHistogramBuckets::default()),
            |h| {
                (
                    h.latency(),
                    VmHistogramBuckets {
                        hold_time: Buckets::of(&h.hold),
                        commit_to_wire: Buckets::of(&h.commit_to_wire),
                        fence_drain: Buckets::of(&h.fence_drain),
                    },
                )
            },
        )
    }
}

/// The worker's side: one set of histograms per VM.
pub struct WorkerMeter {
    hub: Arc<MeterHub>,
    // Boxed because the sets travel through the hub's rings: handing one over moves a pointer.
    #[allow(clippy::vec_box)]
    local: Vec<Box<VmHistograms>>,
    /// Each local set's VM in the hub (its index in the configuration).
    ids: Vec<usize>,
}

impl WorkerMeter {
    /// The sets of one worker's VMs; `ids[i]` is its VM `i`'s index in the hub.
    pub fn new(hub: Arc<MeterHub>, ids: Vec<usize>) -> WorkerMeter {
        WorkerMeter {
            hub,
            local: ids.iter().map(|_| Box::default()).collect(),
            ids,
        }
    }

    /// VM `vm`'s histograms, to record into.
    #[inline]
    pub fn vm(&mut self, vm: usize) -> &mut VmHistograms {
        &mut self.local[vm]
    }

    /// Hands every non-empty set to the hub, taking an empty one in its place (lock-free, no
    /// allocation). A set the hub cannot take now stays here and keeps recording.
    pub fn publish(&mut self) {
        for (vm, h) in self.local.iter_mut().enumerate() {
            if h.is_empty() {
                continue;
            }
            let Some(fresh) = self.hub.spare.pop() else {
                return;
            };
            let full = std::mem::replace(h, fresh);
            if let Err((_, full)) = self.hub.filled.push((self.ids[vm], full)) {
                let fresh = std::mem::replace(h, full);
                let _ = self.hub.spare.push(fresh);
                return;
            }
        }
    }
}

impl WorkerMeter {
    /// The last hand-over (the worker is stopping): every non-empty set goes to the hub, spare or
    /// not (a fresh set is allocated in its place), so the final counters have every sample.
    pub fn finish(&mut self) {
        for (vm, h) in self.local.iter_mut().enumerate() {
            if h.is_empty() {
                continue;
            }
            let fresh = self.hub.spare.pop().unwrap_or_default();
            let full = std::mem::replace(h, fresh);
            if let Err((_, full)) = self.hub.filled.push((self.ids[vm], full)) {
                // Unreachable: `filled` has room for every set there is.
                *h = full;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_values_reach_the_totals_once() {
        let hub = MeterHub::new(2);
        let mut w = WorkerMeter::new(hub.clone(), vec![0, 1]);
        record(&mut w.vm(1).hold, 1_000, 3);
        record(&mut w.vm(1).fence_drain, 50_000, 1);
        w.publish();
        record(&mut w.vm(1).hold, 2_000, 1);
        w.publish();
        let [hold, c2w, drain] = hub.latency(1);
        assert_eq!(hold.count, 4);
        assert_eq!(c2w.count, 0);
        assert_eq!(drain.count, 1);
        assert_eq!(hub.latency(0)[0].count, 0);
        // Reading again adds nothing twice.
        assert_eq!(hub.latency(1)[0].count, 4);
        assert!((1_990..=2_010).contains(&hold.max_ns));
    }

    #[test]
    fn buckets_are_cumulative_and_add_up_to_the_count() {
        let hub = MeterHub::new(1);
        let mut w = WorkerMeter::new(hub.clone(), vec![0]);
        record(&mut w.vm(0).hold, 800, 2); // <= 1 µs
        record(&mut w.vm(0).hold, 40_000, 3); // <= 50 µs
        record(&mut w.vm(0).hold, 20_000_000_000, 1); // beyond the last bound (10 s)
        w.publish();
        let (_, b) = hub.summary(0);
        let h = &b.hold_time;
        assert_eq!(h.le_ns, Buckets::BOUNDS_NS.to_vec());
        assert_eq!(h.count, 6);
        let at = |le: u64| h.cumulative[h.le_ns.iter().position(|x| *x == le).unwrap()];
        assert_eq!(at(1_000), 2);
        assert_eq!(at(25_000), 2);
        assert_eq!(at(50_000), 5);
        assert_eq!(at(10_000_000_000), 5, "the 20 s sample is only in +Inf");
        assert!(h.cumulative.windows(2).all(|w| w[0] <= w[1]));
        // The sum is the mean times the count, to the histogram's precision (1%).
        let exact = 2 * 800 + 3 * 40_000 + 20_000_000_000u64;
        assert!(
            h.sum_ns.abs_diff(exact) <= exact / 100,
            "{} vs {exact}",
            h.sum_ns
        );
        assert_eq!(b.fence_drain.count, 0);
        assert!(b.fence_drain.cumulative.iter().all(|c| *c == 0));
    }

    #[test]
    fn nothing_is_lost_when_the_hub_has_no_spare() {
        let hub = MeterHub::new(1);
        let mut w = WorkerMeter::new(hub.clone(), vec![0]);
        // Nobody collects: the 4 spares run out, then the worker keeps its own.
        for _ in 0..10 {
            record(&mut w.vm(0).hold, 10, 1);
            w.publish();
        }
        assert_eq!(hub.latency(0)[0].count, 4);
        w.publish();
        assert_eq!(hub.latency(0)[0].count, 10);
    }

    #[test]
    fn the_last_hand_over_needs_no_spare() {
        let hub = MeterHub::new(2);
        let mut w = WorkerMeter::new(hub.clone(), vec![0, 1]);
        for i in 0..20 {
            record(&mut w.vm(i % 2).fence_drain, 100, 1);
            w.publish();
        }
        // Nobody collected: the spares ran out long ago; samples wait in the worker.
        w.finish();
        assert_eq!(hub.latency(0)[2].count, 10);
        assert_eq!(hub.latency(1)[2].count, 10);
    }

    #[test]
    fn out_of_range_values_are_clamped_not_lost() {
        let hub = MeterHub::new(1);
        let mut w = WorkerMeter::new(hub.clone(), vec![0]);
        record(&mut w.vm(0).commit_to_wire, u64::MAX, 1);
        record(&mut w.vm(0).commit_to_wire, 0, 1);
        w.publish();
        assert_eq!(hub.latency(0)[1].count, 2);
    }
}
