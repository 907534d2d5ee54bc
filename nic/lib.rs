//! epochgate: the egress stage of a host adapter for VMs under checkpoint-based high availability.
//!
//! The data's way through the crate: [`dpdk`] ports -> [`dataplane`] (demultiplex by VM) ->
//! [`epoch`] (each VM's queue: output commit) -> egress; the inbound path goes the other way,
//! unbuffered. Beside it, [`control`] serves the VMMs' sessions and reaches the worker only
//! through rings. [`config`] is validated before anything touches DPDK. Only [`dpdk`] contains
//! `unsafe`.

pub mod admin;
pub mod announce;
pub mod capture;
pub mod classify;
pub mod config;
pub mod control;
pub mod dataplane;
pub mod demo;
pub mod dpdk;
pub mod epoch;
pub mod frame;
pub mod gen;
pub mod meter;
pub mod metrics;
pub mod notify;
pub mod policy;
pub mod sched;
pub mod stats;
pub mod tools;
pub mod top;
