//! epochgate: the egress stage of a host adapter for VMs under checkpoint-based high availability.
//!
//! The data's way through the crate: [`dpdk`] ports -> [`dataplane`] (demultiplex by VM, queue,
//! transmit) -> egress; the inbound path goes the other way, unbuffered. [`config`] is validated
//! before anything touches DPDK. Only [`dpdk`] contains `unsafe`.

pub mod capture;
pub mod config;
pub mod dataplane;
pub mod demo;
pub mod dpdk;
pub mod frame;
pub mod gen;
pub mod stats;
