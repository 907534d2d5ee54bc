//! vmm-shim: what a VMM links (or scripts) to drive epochgate's output commit. No DPDK.
//!
//! Epochgate holds a checkpoint-protected VM's egress per epoch and releases an epoch's frames
//! only once the VMM says that epoch's checkpoint is durable (DESIGN.md, "Control plane and
//! the VMM shim"). The VMM talks to it over a Unix `SOCK_SEQPACKET` control socket
//! ([`DEFAULT_CONTROL_SOCKET`] unless configured otherwise). This crate is that VMM side:
//!
//! - [`proto`]: the binary control protocol (requests, replies, events), pure encode/decode,
//!   shared with epochgate itself.
//! - [`client`]: a blocking Rust client, one [`Client`] per session (`Hello`, then `protect`,
//!   `fence`, `commit`, ... one request at a time), with checkpoint-request [`Event`]s queued
//!   or handed to a callback; [`pair`] and [`ServerEnd`] let VMM code be tested without
//!   epochgate.
//! - [`ffi`]: the same client as a C ABI (`include/epochgate_shim.h`; the crate also builds
//!   as `libvmm_shim.a` / `libvmm_shim.so`), for VMMs written in C. It holds the crate's only
//!   `unsafe` code.
//! - the `epochgate-shim` binary: a line-oriented CLI (`epochgate-shim --vm NAME session`)
//!   that reads commands on stdin and prints every reply and event as one JSON line, for
//!   scripts, and `epochgate-shim vmm`, a reference checkpoint loop for a QEMU guest over QMP
//!   ([`vmm`]) to adapt.

pub mod client;
pub mod ffi;
mod pinger;
pub mod proto;
pub mod vmm;

pub use client::{
    pair, Client, Connection, Event, Fenced, Options, Reconnected, ServerEnd, ShimError, Welcome,
};
pub use pinger::{ANSWER_TIMEOUT_INTERVALS, DEFAULT_PING_INTERVAL};

/// Version carried in every control message; a peer with another version is refused.
pub const PROTOCOL_VERSION: u8 = proto::VERSION;

/// Where epochgate listens for VMM sessions unless `[control] socket` says otherwise.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/epochgate/control.sock";
