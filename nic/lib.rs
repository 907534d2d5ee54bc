//! epochgate: the egress stage of a host adapter for VMs under checkpoint-based high availability.
//!
//! The data's way through the crate:
//!
//! ```text
//! dpdk ports -> ingress (demux) -> classify -> hold (epoch queue + policy) -> egress (scheduler,
//!                                                                               regulators, TX)
//! ```
//!
//! [`dpdk`] ports -> [`ingress`] ([`ingress::demux`]: which VM a frame belongs to) ->
//! [`classify`] -> [`hold`] (each VM's [`hold::epoch`] queue, output commit, and its
//! [`hold::policy`]) -> [`egress`] ([`egress::sched`]: scheduler, regulators, TX order), all
//! driven by [`dataplane`] (the poll loop on the worker lcore); the inbound path goes the other
//! way, unbuffered. [`wire`] holds the frame parsing helpers and the frames epochgate builds
//! itself. Beside the data path, [`control`] serves the VMMs' sessions and reaches the worker only
//! through rings, and [`stats`] / [`admin`] publish and serve the counters. [`config`] is
//! validated before anything touches DPDK. Apart from all of it, [`tools`] are offline:
//! captures, `classify`/`replay`, the traffic generator and the demo. Only [`dpdk`] contains
//! `unsafe`.

// The data path, in the data's order (one comment per module keeps rustfmt from sorting them).
// Ports, queues, mbufs: the only `unsafe`.
pub mod dpdk;
// Frame parsing helpers and the frames epochgate builds itself.
pub mod wire;
// Which VM a frame belongs to; spoof checks.
pub mod ingress;
// Immediate, housekeeping or deferrable.
pub mod classify;
// Each protected VM's epoch queue (output commit) and request policy.
pub mod hold;
// Scheduler, regulators, TX order.
pub mod egress;
// The poll loop that drives all of the above.
pub mod dataplane;

// Beside the data path.
// The VMMs' sessions.
pub mod control;
// Counters and latency histograms.
pub mod stats;
// Operator surface: admin socket, metrics, top, systemd notify.
pub mod admin;

// Validated before anything touches DPDK.
pub mod config;

// Offline: captures, classify/replay, the traffic generator, the demo.
pub mod tools;
