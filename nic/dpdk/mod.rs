//! The safe face of DPDK: EAL start, mempools, owned mbufs, ports with exclusively owned queues,
//! and launching work on pinned lcores. This is the only module of the project with `unsafe`;
//! every block says which invariant makes it sound.
//!
//! Ownership rules that the types enforce:
//! - an [`Mbuf`] owns one reference to an `rte_mbuf`; dropping it frees that reference, and handing
//!   it to TX gives the reference to the driver without a copy;
//! - an [`RxQueue`] / [`TxQueue`] is `Send` but not `Sync` or `Clone`, so exactly one thread bursts
//!   on a queue (DPDK queues are not thread-safe);
//! - a [`Port`] is stopped only after all its queues are gone.
#![allow(unsafe_code)]

mod eal;
mod mbuf;
mod mempool;
mod port;

#[allow(
    non_upper_case_globals,
    non_camel_case_types,
    non_snake_case,
    dead_code,
    clippy::all,
    clippy::undocumented_unsafe_blocks,
    unsafe_op_in_unsafe_fn
)]
mod ffi {
    include!(concat!(env!("OUT_DIR"), "/dpdk_bindings.rs"));
}

pub use eal::{cleanup, init, launch_on, tsc, tsc_hz, worker_lcores, Eal, LaunchHandle};
pub use mbuf::{free_all, Burst, Mbuf, BURST};
pub use mempool::Mempool;
pub use port::{Port, PortConf, PortStats, RxQueue, StatsReader, TxQueue};

/// What went wrong in a DPDK call: the operation, the object, and DPDK's own reason.
#[derive(Debug, thiserror::Error)]
pub enum DpdkError {
    #[error("EAL initialisation failed: {0}")]
    Eal(String),
    #[error("port {port}: {op} failed: {reason}")]
    Port {
        port: String,
        op: &'static str,
        reason: String,
    },
    #[error("mempool {name}: {reason}")]
    Mempool { name: String, reason: String },
    #[error("lcore {lcore}: {reason}")]
    Lcore { lcore: u32, reason: String },
}

/// DPDK's text for an error number (a positive errno or `rte_errno`).
fn strerror(code: i32) -> String {
    // SAFETY: rte_strerror returns a pointer to a static or thread-local NUL-terminated string
    // that stays valid at least until the next call on this thread; we copy it out at once.
    let s = unsafe { std::ffi::CStr::from_ptr(ffi::rte_strerror(code.abs())) };
    format!("{} (errno {})", s.to_string_lossy(), code.abs())
}

/// `rte_errno` of the calling thread (it is a thread-local macro in C).
fn last_errno() -> i32 {
    // SAFETY: eg_errno only reads the calling thread's rte_errno.
    unsafe { ffi::eg_errno() }
}
