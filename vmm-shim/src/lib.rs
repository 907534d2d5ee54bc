//! vmm-shim: what a VMM links (or scripts) to drive epochgate's output commit. No DPDK.
//!
//! This crate grows the control protocol, the blocking client, the C ABI and the
//! `epochgate-shim` CLI (DESIGN.md, "Control plane and the VMM shim"). For now it fixes the
//! protocol's version and the default socket path that both sides agree on.

pub mod proto;

/// Version carried in every control message; a peer with another version is refused.
pub const PROTOCOL_VERSION: u8 = proto::VERSION;

/// Where epochgate listens for VMM sessions unless `[control] socket` says otherwise.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/epochgate/control.sock";
