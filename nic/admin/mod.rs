//! The operator socket (`control.admin_socket`): `epochgate stats` and `epochgate vms` read the
//! running process's counters through it; `epochgate fail VM` writes, when allowed.
//!
//! # Server
//! [`AdminServer`] runs one thread ("eg-admin") serving a `SOCK_STREAM` Unix socket, bound with
//! the control socket's rules (its directory is created, a stale socket file is replaced, one a
//! live process serves is refused, the file gets `control.admin_socket_mode`, else
//! `control.socket_mode`, and `control.socket_owner` / `socket_group`) and the same peer check
//! (root, the user epochgate runs as, `control.allowed_uids`, `control.allowed_gids`).
//!
//! # Protocol
//! The client sends one request line, `stats` or `vms` (at most [`MAX_REQUEST`] bytes with its
//! newline; surrounding whitespace and a `\r` are ignored). The server answers exactly one line
//! of JSON and closes the connection: the [`Snapshot`] its source produces now, or, for anything
//! else, `{"error":"..."}` naming what was wrong and what is accepted. A peer that is not allowed
//! gets `{"error":"permission denied: uid N is not allowed ..."}` whatever it sends.
//!
//! The socket is read-only unless `[admin] writable = true`. Then it also takes the operator's
//! write `fail VM` (from root, the user epochgate runs as, `admin.write_uids` and
//! `admin.write_gids`; these may connect even if they are not among the readers): the VM is
//! fenced off as if its controller were lost, by the control thread, which owns the sessions
//! (the request is handed to it, never to the worker), and the answer is
//! `{"failed":VM,"was":MODE,"now":MODE,"session":"closed"|"none"}`. On a read-only socket, or
//! from a peer that may not write, a write gets `{"error":...}` saying why and naming the key,
//! counted as `admin_writes_refused`; a refused peer is counted as `admin_refused_peer`.
//!
//! # Guarantees
//! - No client can hold the thread up: every connection is non-blocking and served by the same
//!   poll loop, a request must arrive within [`READ_TIMEOUT`] and the answer be taken within
//!   [`WRITE_TIMEOUT`], after which the connection is closed. At most [`MAX_CLIENTS`]
//!   connections are open at once; further ones wait in the listen backlog.
//! - [`AdminServer::stop`] (or dropping the server) returns within one poll tick
//!   ([`POLL_TICK`]) plus the snapshot in progress, and removes the socket file if it is still
//!   the one this server bound.
//! - A panic in the snapshot source is answered with an error line; the server keeps serving.
//!
//! # Client
//! [`query`] sends a request and returns the snapshot or a [`QueryError`] that says what failed;
//! [`render_stats`] and [`render_vms`] turn a snapshot into the text `epochgate stats` and
//! `epochgate vms` print.

pub mod metrics;
pub mod notify;
pub mod top;

mod client;
mod render;
mod server;

#[cfg(test)]
pub(crate) mod tests;

pub use client::{command, query, QueryError};
pub use render::{latency_text, render_stats, render_vms};
pub use server::{frame_request, parse_request, write_request, AdminServer, Framed, Write, WRITES};

use crate::stats::Snapshot;
use std::sync::Arc;
use std::time::Duration;

/// Produces the counters now; called on the admin thread.
pub type SnapshotFn = Arc<dyn Fn() -> Snapshot + Send + Sync>;

/// The longest request line, its newline included.
pub const MAX_REQUEST: usize = 64;
/// How long a client has, from its connection, to send its request line.
pub const READ_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a client has to take the answer once it is ready.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections open at once; more wait in the listen backlog.
pub const MAX_CLIENTS: usize = 32;
/// The longest the thread sleeps in `poll`, hence how long `stop` can wait for it.
pub const POLL_TICK: Duration = Duration::from_millis(25);
/// The requests the server accepts.
pub const REQUESTS: [&str; 2] = ["stats", "vms"];

/// Why the admin server could not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// `control.admin_socket` could not be bound (or its thread not started).
    #[error("control.admin_socket {path}: {why}")]
    Socket {
        /// The socket path, as configured.
        path: String,
        /// What went wrong.
        why: String,
    },
}
