//! What one measurement runs (the orchestrator writes it, the traffic process reads it) and what
//! it found (the other way round). Plain serde structs: the two sides are separate processes.

use crate::wire::Profile;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    /// EAL --file-prefix of the traffic process.
    pub file_prefix: String,
    /// Transmit ports: virtio-user vdev specs (to the VM ports of epochgate or testpmd).
    pub tx_ports: Vec<String>,
    /// Receive ports: virtio-user vdev specs (epochgate's egress, or testpmd's paired ports).
    pub rx_ports: Vec<String>,
    pub vms: Vec<VmPlan>,
    /// Seconds of generation.
    pub seconds: f64,
    /// Seconds at the start not counted in rates.
    pub warmup: f64,
    /// The control socket the simulated VMMs connect to (protected VMs only).
    pub control: Option<PathBuf>,
    /// Record sent vs released over time for this VM (index).
    pub timeline_vm: Option<usize>,
    /// Print a progress line every this many ms (0: none).
    pub progress_ms: u64,
    /// mbufs of the traffic process's pool.
    pub mbufs: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmPlan {
    pub name: String,
    /// Index into `tx_ports`.
    pub port: usize,
    pub mac: [u8; 6],
    pub profile: Profile,
    /// Frames per second; None: as fast as the port takes them.
    pub rate_pps: Option<f64>,
    /// A simulated VMM checkpoints this VM (it is protected).
    pub sim: Option<SimPlan>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct SimPlan {
    /// Time from one fence to the next when nothing asks for an earlier one.
    pub epoch_ms: f64,
    /// Checkpoint transfer: from `Fenced` to sending the commit.
    pub transfer_ms: f64,
    /// Take the next checkpoint at once when epochgate asks for one.
    pub honour_requests: bool,
    /// Fault injection, to prove the checker catches a broken release end to end: the VMM
    /// sends each commit 2 ms before it tells the checker, so frames released by that commit
    /// look released before it (`epochgate-perf demo --inject-early-release`).
    #[serde(default)]
    pub early_release: bool,
}

/// Latency percentiles in nanoseconds, plus points of the distribution for CDF plots.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Dist {
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
    /// (quantile, ns) from 0.01 to 0.999.
    pub cdf: Vec<(f64, u64)>,
}

impl Dist {
    pub fn of(h: &hdrhistogram::Histogram<u64>) -> Dist {
        if h.is_empty() {
            return Dist::default();
        }
        let qs = [
            0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999,
        ];
        Dist {
            count: h.len(),
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: h.mean(),
            cdf: qs.iter().map(|&q| (q, h.value_at_quantile(q))).collect(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct VmResult {
    pub name: String,
    pub protected: bool,
    pub sent: u64,
    pub sent_bytes: u64,
    pub received: u64,
    pub received_bytes: u64,
    /// Sent but never received (gaps in the sequence plus the tail that never came).
    pub lost: u64,
    /// Frames per second received in the measured window.
    pub rx_pps: f64,
    /// Bits per second received in the measured window (frame bytes + 24 of preamble, FCS, gap).
    pub rx_bps: f64,
    /// Frames per second sent in the measured window (the offered rate).
    pub tx_pps: f64,
    /// TX stamp to receiver, every frame.
    pub latency: Dist,
    pub fences: u64,
    pub short_fences: u64,
    pub fence_rtt: Dist,
    /// Commit sent -> first / last frame of the epoch seen.
    pub commit_first: Dist,
    pub commit_last: Dist,
    pub requests: u64,
    /// First frame of the epoch sent -> checkpoint request at the shim.
    pub request_latency: Dist,
    /// Time the VM's generation was paused for fences, in ms.
    pub paused_ms: f64,
    /// Errors of the simulated VMM, if it failed.
    pub sim_error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Timeline {
    /// Samples: ms since start, frames sent, frames received.
    pub t_ms: Vec<f64>,
    pub sent: Vec<u64>,
    pub received: Vec<u64>,
    /// When each commit was sent, ms since start.
    pub commits_ms: Vec<f64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TrafficResult {
    pub tsc_hz: u64,
    /// Length of the measured window, seconds.
    pub window_s: f64,
    pub vms: Vec<VmResult>,
    /// Frames checked against their commits, order and duplicates.
    pub checked: u64,
    pub violation_count: u64,
    /// The first violations, as text.
    pub violations: Vec<String>,
    /// Frames received without a harness stamp.
    pub foreign: u64,
    pub timeline: Option<Timeline>,
    /// Time the traffic loop did not run (descheduled for more than 1 ms at a time), and the
    /// longest such gap: other load on core 0. Over a few % of the window, the run's rates and
    /// latencies say more about the machine than about the system under test.
    pub stalled_ms: f64,
    pub max_stall_ms: f64,
}
