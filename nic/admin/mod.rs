//! The operator socket (`control.admin_socket`): `epochgate stats` and `epochgate vms` read the
//! running process's counters through it.
//!
//! # Server
//! [`AdminServer`] runs one thread ("eg-admin") serving a `SOCK_STREAM` Unix socket, bound with
//! the control socket's rules (its directory is created, a stale socket file is replaced, one a
//! live process serves is refused, the file gets `control.socket_mode`) and the same peer check
//! (root, the user epochgate runs as, `control.allowed_uids`, `control.allowed_gids`).
//!
//! # Protocol
//! The client sends one request line, `stats` or `vms` (at most [`MAX_REQUEST`] bytes with its
//! newline; surrounding whitespace and a `\r` are ignored). The server answers exactly one line
//! of JSON and closes the connection: the [`Snapshot`] its source produces now, or, for anything
//! else, `{"error":"..."}` naming what was wrong and what is accepted. A peer that is not allowed
//! gets `{"error":"permission denied: uid N is not allowed ..."}` whatever it sends.
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

use crate::config::ControlConfig;
use crate::control::server::{bind, Access};
use crate::stats::{Latency, Snapshot, VmSnapshot};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use socket2::{Socket, Type};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

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

/// How long [`query`] waits for the answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest answer [`query`] reads (a snapshot of many VMs is a few hundred kB).
const MAX_REPLY: u64 = 64 << 20;

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

/// The running admin thread; stopped by [`AdminServer::stop`] or when dropped.
pub struct AdminServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl AdminServer {
    /// Binds `cfg.admin_socket` (see the module docs for the rules), sets its mode to
    /// `cfg.mode_bits()` and starts the "eg-admin" thread, which answers each request with
    /// what `source` returns at that moment.
    pub fn start(cfg: &ControlConfig, source: SnapshotFn) -> Result<AdminServer, AdminError> {
        start_with(cfg, source, Access::of(cfg))
    }

    /// Stops the thread (within one poll tick) and removes the socket file.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.halt();
    }
}

fn start_with(
    cfg: &ControlConfig,
    source: SnapshotFn,
    access: Access,
) -> Result<AdminServer, AdminError> {
    use std::os::unix::fs::MetadataExt;
    let path = cfg.admin_socket.clone();
    let err = |why: String| AdminError::Socket {
        path: path.display().to_string(),
        why,
    };
    let listener = bind(&path, Type::STREAM, cfg.mode_bits()).map_err(err)?;
    let identity = std::fs::symlink_metadata(&path)
        .map(|m| (m.dev(), m.ino()))
        .ok();
    let stop = Arc::new(AtomicBool::new(false));
    let server = Server {
        listener,
        path: path.clone(),
        identity,
        source,
        access,
        clients: Vec::new(),
        accept_paused_until: None,
        accept_failures: 0,
        stop: stop.clone(),
    };
    // If the spawn fails the server is dropped here, which removes the socket file.
    let thread = std::thread::Builder::new()
        .name("eg-admin".into())
        .spawn(move || server.run())
        .map_err(|e| err(format!("cannot start the admin thread: {e}")))?;
    Ok(AdminServer {
        stop,
        thread: Some(thread),
    })
}

/// Where a connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for the request line.
    Reading,
    /// Sending the answer.
    Writing,
    /// Finished or failed: to be closed.
    Done,
}

struct Client {
    sock: Socket,
    state: State,
    input: Vec<u8>,
    output: Vec<u8>,
    sent: usize,
    deadline: Instant,
    /// Why the peer is refused: sent instead of the answer once its request line is read (so
    /// that a client is never cut off while it sends).
    refused: Option<String>,
}

struct Server {
    listener: Socket,
    path: PathBuf,
    /// Device and inode of the socket file this server bound: only that file is removed.
    identity: Option<(u64, u64)>,
    source: SnapshotFn,
    access: Access,
    clients: Vec<Client>,
    /// Set after an accept error other than "nothing to accept" (say, out of file
    /// descriptors): the listener is left alone for a moment instead of spinning on it.
    accept_paused_until: Option<Instant>,
    /// Accept failures in the current episode (0: none).
    accept_failures: u64,
    stop: Arc<AtomicBool>,
}

impl Server {
    fn run(mut self) {
        while !self.stop.load(Relaxed) {
            let (listener_ready, ready) = self.wait();
            if listener_ready {
                self.accept_all();
            }
            for i in ready {
                match self.clients[i].state {
                    State::Reading => self.read(i),
                    State::Writing => self.clients[i].flush(),
                    State::Done => {}
                }
            }
            self.expire();
            self.clients.retain(|c| c.state != State::Done);
        }
        // `Drop` closes the clients and removes the socket file.
    }

    /// Polls the listener (when there is room for a client) and every client; returns whether
    /// the listener is readable and which clients have something to do.
    fn wait(&mut self) -> (bool, Vec<usize>) {
        let now = Instant::now();
        if self.accept_paused_until.is_some_and(|t| now >= t) {
            self.accept_paused_until = None;
        }
        let listen = self.clients.len() < MAX_CLIENTS && self.accept_paused_until.is_none();
        let mut fds = Vec::with_capacity(self.clients.len() + 1);
        fds.push(PollFd::new(
            self.listener.as_fd(),
            if listen {
                PollFlags::POLLIN
            } else {
                PollFlags::empty()
            },
        ));
        for c in &self.clients {
            let events = match c.state {
                State::Reading => PollFlags::POLLIN,
                State::Writing => PollFlags::POLLOUT,
                State::Done => PollFlags::empty(),
            };
            fds.push(PollFd::new(c.sock.as_fd(), events));
        }
        // Sleep no longer than the nearest client deadline.
        let timeout = self
            .clients
            .iter()
            .map(|c| c.deadline.saturating_duration_since(now))
            .fold(POLL_TICK, Duration::min);
        let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        if poll(&mut fds, PollTimeout::from(ms)).is_err() {
            return (false, Vec::new());
        }
        let revents = |fd: &PollFd| fd.revents().unwrap_or(PollFlags::empty());
        let ready = fds[1..]
            .iter()
            .enumerate()
            .filter(|(_, fd)| !revents(fd).is_empty())
            .map(|(i, _)| i)
            .collect();
        (listen && !revents(&fds[0]).is_empty(), ready)
    }

    fn accept_all(&mut self) {
        while self.clients.len() < MAX_CLIENTS {
            let sock = match self.listener.accept() {
                Ok((sock, _)) => sock,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Logged once per episode (out of descriptors under attack would otherwise
                    // be a line every pause); the episode ends at the next accepted client.
                    if self.accept_failures == 0 {
                        eprintln!(
                            "epochgate: control.admin_socket {}: accept failed: {e}; pausing the listener, said once until a client is accepted again",
                            self.path.display()
                        );
                    }
                    self.accept_failures += 1;
                    self.accept_paused_until = Some(Instant::now() + Duration::from_millis(100));
                    return;
                }
            };
            if self.accept_failures > 0 {
                eprintln!(
                    "epochgate: control.admin_socket {}: accepting again after {} failed attempt(s)",
                    self.path.display(),
                    self.accept_failures
                );
                self.accept_failures = 0;
            }
            if sock.set_nonblocking(true).is_err() {
                continue; // dropped: the client sees its connection closed.
            }
            let mut client = Client {
                sock,
                state: State::Reading,
                input: Vec::new(),
                output: Vec::new(),
                sent: 0,
                deadline: Instant::now() + READ_TIMEOUT,
                refused: None,
            };
            let verdict = match getsockopt(&client.sock, PeerCredentials) {
                Ok(c) => admit(&self.access, c.uid(), c.gid(), c.pid()),
                Err(e) => Err(format!(
                    "permission denied: the peer's credentials cannot be read: {e}"
                )),
            };
            client.refused = verdict.err();
            self.clients.push(client);
        }
    }

    /// Reads what client `i` sent; answers once its request line is complete.
    fn read(&mut self, i: usize) {
        let c = &mut self.clients[i];
        let mut buf = [0u8; 256];
        let eof = loop {
            match (&c.sock).read(&mut buf) {
                Ok(0) => break true,
                Ok(n) => {
                    c.input.extend_from_slice(&buf[..n]);
                    if c.input.len() >= MAX_REQUEST || c.input.contains(&b'\n') {
                        break false;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break false,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    c.state = State::Done;
                    return;
                }
            }
        };
        let within = &c.input[..c.input.len().min(MAX_REQUEST)];
        let line = match within.iter().position(|b| *b == b'\n') {
            Some(n) => within[..n].to_vec(),
            None if c.input.len() >= MAX_REQUEST => {
                let why = format!(
                    "request longer than {MAX_REQUEST} bytes: send one of {} and a newline",
                    accepted()
                );
                return c.fail(&why);
            }
            // The client shut down its side after an unterminated request: take it as is.
            None if eof && !c.input.is_empty() => c.input.clone(),
            None if eof => {
                match c.refused.take() {
                    Some(why) => c.answer(error_line(&why)),
                    None => c.state = State::Done,
                }
                return;
            }
            None => return, // more to come
        };
        let reply = match c.refused.take() {
            Some(why) => error_line(&why),
            None => respond(&line, &self.source),
        };
        self.clients[i].answer(reply);
    }

    /// Answers clients that said nothing in time, and closes those that did not take their
    /// answer in time.
    fn expire(&mut self) {
        let now = Instant::now();
        for c in &mut self.clients {
            if now < c.deadline {
                continue;
            }
            match c.state {
                State::Reading => {
                    let why = format!(
                        "no request within {} ms: send one of {} and a newline",
                        READ_TIMEOUT.as_millis(),
                        accepted()
                    );
                    c.fail(&why);
                    // One try only: a client that is not reading is not waited for again.
                    if c.state == State::Writing {
                        c.state = State::Done;
                    }
                }
                State::Writing => c.state = State::Done,
                State::Done => {}
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.clients.clear();
        if let Some(id) = self.identity {
            use std::os::unix::fs::MetadataExt;
            let ours =
                std::fs::symlink_metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == id);
            if ours {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

impl Client {
    /// Answers with the error `why`, or with the refusal if the peer is not allowed.
    fn fail(&mut self, why: &str) {
        let line = error_line(self.refused.as_deref().unwrap_or(why));
        self.answer(line);
    }

    /// Queues `line` as the answer and starts sending it.
    fn answer(&mut self, line: String) {
        self.output = line.into_bytes();
        self.output.push(b'\n');
        self.sent = 0;
        self.state = State::Writing;
        self.deadline = Instant::now() + WRITE_TIMEOUT;
        self.flush();
    }

    /// Sends what the socket takes of the answer; done once all of it went.
    fn flush(&mut self) {
        while self.sent < self.output.len() {
            match self
                .sock
                .send_with_flags(&self.output[self.sent..], nix::libc::MSG_NOSIGNAL)
            {
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    self.state = State::Done;
                    return;
                }
            }
        }
        self.state = State::Done;
    }
}

impl Drop for Client {
    /// Reads what the client sent beyond its request before closing: closing a Unix socket with
    /// unread data makes the peer's next read fail with ECONNRESET instead of seeing the end.
    fn drop(&mut self) {
        let _ = self.sock.shutdown(std::net::Shutdown::Write);
        let mut buf = [0u8; 512];
        for _ in 0..16 {
            match (&self.sock).read(&mut buf) {
                Ok(n) if n > 0 => {}
                _ => break,
            }
        }
    }
}

/// Whether a peer may use the admin socket; the refusal is the error text it is sent.
fn admit(access: &Access, uid: u32, gid: u32, pid: i32) -> Result<(), String> {
    if access.allows(uid, gid) {
        return Ok(());
    }
    Err(format!(
        "permission denied: uid {uid} is not allowed (gid {gid}, pid {pid}): allow it in control.allowed_uids or control.allowed_gids"
    ))
}

/// The answer to one request line (without its newline).
fn respond(line: &[u8], source: &SnapshotFn) -> String {
    let text = String::from_utf8_lossy(line);
    let request = text.trim();
    if !REQUESTS.contains(&request) {
        return error_line(&format!(
            "unknown request {request:?}: this socket accepts {}, one per connection, ending with a newline",
            accepted()
        ));
    }
    let snap = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| source())) {
        Ok(s) => s,
        Err(_) => {
            return error_line("internal error: taking the snapshot failed (see epochgate's log)")
        }
    };
    serde_json::to_string(&snap).unwrap_or_else(|e| {
        error_line(&format!(
            "internal error: the snapshot cannot be encoded: {e}"
        ))
    })
}

fn accepted() -> String {
    REQUESTS.map(|r| format!("{r:?}")).join(" or ")
}

/// `{"error":"..."}`.
fn error_line(why: &str) -> String {
    serde_json::json!({ "error": why }).to_string()
}

/// Why [`query`] returned no snapshot.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// Nothing accepts connections at the socket path.
    #[error("cannot reach epochgate at {path} (is it running? its config's control.admin_socket): {why}")]
    Connect {
        /// The socket path tried.
        path: String,
        /// The connection error.
        why: String,
    },
    /// The request is not one line the server could accept.
    #[error("request {request:?} cannot be sent: {why}")]
    Request {
        /// The request as given.
        request: String,
        /// What is wrong with it.
        why: String,
    },
    /// Sending the request or reading the answer failed.
    #[error("epochgate at {path}: {why}")]
    Io {
        /// The socket path.
        path: String,
        /// What failed.
        why: String,
    },
    /// The server answered with an error line.
    #[error("epochgate at {path} refused the request: {message}")]
    Server {
        /// The socket path.
        path: String,
        /// The server's error text.
        message: String,
    },
    /// The answer is not a snapshot.
    #[error("epochgate at {path} sent an answer that is not a snapshot: {why}")]
    BadReply {
        /// The socket path.
        path: String,
        /// Why it did not decode.
        why: String,
    },
}

/// Sends `request` (`"stats"` or `"vms"`) to the admin socket at `path` and returns the
/// snapshot it answers with.
pub fn query(path: &Path, request: &str) -> Result<Snapshot, QueryError> {
    let p = || path.display().to_string();
    let request = request.trim();
    if request.contains('\n') || request.len() + 1 > MAX_REQUEST {
        return Err(QueryError::Request {
            request: request.to_string(),
            why: format!("a request is one line of at most {MAX_REQUEST} bytes"),
        });
    }
    let mut sock = UnixStream::connect(path).map_err(|e| QueryError::Connect {
        path: p(),
        why: e.to_string(),
    })?;
    let io = |what: &str, e: std::io::Error| QueryError::Io {
        path: p(),
        why: format!("{what}: {e}"),
    };
    sock.set_read_timeout(Some(CLIENT_TIMEOUT))
        .and_then(|()| sock.set_write_timeout(Some(CLIENT_TIMEOUT)))
        .map_err(|e| io("cannot set a timeout", e))?;
    // A server that answered before reading (and closed) may still have left its answer: on a
    // failed send, the answer is looked for before the send's error is reported.
    let sent = sock.write_all(format!("{request}\n").as_bytes());
    // Read up to the newline: the end of the answer (the connection's end may come as an error).
    let mut reply = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    let mut limited = (&sock).take(MAX_REPLY);
    while !reply.contains(&b'\n') {
        match limited.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => reply.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) if sent.is_err() => break,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(QueryError::Io {
                    path: p(),
                    why: format!("no answer within {} s", CLIENT_TIMEOUT.as_secs()),
                })
            }
            Err(e) => return Err(io("reading the answer failed", e)),
        }
    }
    let Some(end) = reply.iter().position(|b| *b == b'\n') else {
        if let Err(e) = sent {
            return Err(io("cannot send the request", e));
        }
        return Err(QueryError::Io {
            path: p(),
            why: if reply.is_empty() {
                "the connection closed without an answer".into()
            } else {
                format!(
                    "the answer ended after {} bytes without its newline",
                    reply.len()
                )
            },
        });
    };
    decode(&reply[..end]).map_err(|e| match e {
        Decoded::Error(message) => QueryError::Server { path: p(), message },
        Decoded::Bad(why) => QueryError::BadReply { path: p(), why },
    })
}

enum Decoded {
    Error(String),
    Bad(String),
}

fn decode(line: &[u8]) -> Result<Snapshot, Decoded> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct ErrorLine {
        error: String,
    }
    if let Ok(e) = serde_json::from_slice::<ErrorLine>(line) {
        return Err(Decoded::Error(e.error));
    }
    serde_json::from_slice(line).map_err(|e| Decoded::Bad(e.to_string()))
}

/// `epochgate stats`: every counter of every VM and port.
pub fn render_stats(snap: &Snapshot) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "epochgate up {}: {} VM(s), {} port(s)",
        duration_text(snap.uptime_ms),
        snap.vms.len(),
        snap.ports.len()
    );
    for v in &snap.vms {
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "vm {} ({}), mac {}",
            v.name,
            v.mode,
            v.mac.as_deref().unwrap_or("not known yet")
        );
        fb(&mut s, "rx", v.rx_frames, v.rx_bytes);
        fb(&mut s, "released", v.released_frames, v.released_bytes);
        fb(&mut s, "tx", v.tx_frames, v.tx_bytes);
        fb(&mut s, "held", v.held_frames, v.held_bytes);
        fb(&mut s, "ready", v.ready_frames, v.ready_bytes);
        fb(&mut s, "inbound", v.inbound_frames, v.inbound_bytes);
        let _ = writeln!(
            s,
            "  {:<20} {:>12} frames",
            "staged for tx", v.staged_frames
        );
        let _ = writeln!(s, "  {:<20} {:>12} frames", "waiting", v.waiting);
        let _ = writeln!(
            s,
            "  {:<20} {:>12} frames{}",
            "dropped",
            v.dropped.values().sum::<u64>(),
            by_reason(&v.dropped)
        );
        let _ = writeln!(
            s,
            "  {:<20} open {} sealed {} committed {}",
            "epoch", v.open_epoch, v.sealed_epoch, v.committed_epoch
        );
        let _ = writeln!(
            s,
            "  {:<20} sealed {} committed {} discarded {}; fences cut short {}, unproven {}",
            "epochs",
            v.epochs_sealed,
            v.epochs_committed,
            v.epochs_discarded,
            v.fences_cut_short,
            v.fences_unproven
        );
        let _ = writeln!(
            s,
            "  {:<20} {} time(s) the buffer filled and the port was not read",
            "backpressure", v.backpressure
        );
        let _ = writeln!(
            s,
            "  {:<20} {}{}",
            "checkpoint requests",
            v.checkpoint_requests.values().sum::<u64>(),
            by_reason(&v.checkpoint_requests)
        );
        let _ = writeln!(
            s,
            "  {:<20} {}{}",
            "held by verdict",
            v.verdicts.values().sum::<u64>(),
            by_reason(&v.verdicts)
        );
        for (what, l) in [
            ("hold time", &v.hold_time),
            ("commit to wire", &v.commit_to_wire),
            ("fence drain", &v.fence_drain),
        ] {
            let _ = writeln!(s, "  {what:<20} {}", latency_text(l));
        }
    }
    let e = &snap.egress;
    let _ = writeln!(s);
    let _ = writeln!(s, "egress scheduler");
    fb(&mut s, "released", e.released_frames, e.released_bytes);
    fb(
        &mut s,
        "pass-through",
        e.passthrough_frames,
        e.passthrough_bytes,
    );
    let _ = writeln!(
        s,
        "  {:<20} {:>12} frames sent while both classes waited, {} of them pass-through by the starvation guard",
        "contended", e.contended_frames, e.guarded_frames
    );
    let c = &snap.control;
    let _ = writeln!(s);
    let _ = writeln!(s, "control socket");
    let _ = writeln!(
        s,
        "  {:<20} {} open; refused {} at control.max_sessions, {} short of file descriptors; {} accept error(s)",
        "sessions", c.sessions, c.refused_max_sessions, c.refused_no_fds, c.accept_errors
    );
    let _ = writeln!(
        s,
        "  {:<20} {} without Hello (control.hello_timeout_ms), {} silent (control.liveness_timeout_ms)",
        "closed", c.hello_timeouts, c.liveness_timeouts
    );
    for p in &snap.ports {
        let _ = writeln!(s);
        let _ = writeln!(s, "port {} ({})", p.name, p.role);
        fb(&mut s, "rx", p.rx_frames, p.rx_bytes);
        fb(&mut s, "tx", p.tx_frames, p.tx_bytes);
        let _ = writeln!(
            s,
            "  {:<20} {:>12} frames{}",
            "dropped",
            p.dropped.values().sum::<u64>(),
            by_reason(&p.dropped)
        );
        let d = &p.driver;
        let _ = writeln!(
            s,
            "  {:<20} imissed {} rx_nombuf {} oerrors {} ierrors {} (ipackets {} opackets {})",
            "driver", d.imissed, d.rx_nombuf, d.oerrors, d.ierrors, d.ipackets, d.opackets
        );
    }
    s
}

/// One "what: frames, bytes" line of `render_stats`.
fn fb(s: &mut String, what: &str, frames: u64, bytes: u64) {
    let _ = writeln!(s, "  {what:<20} {frames:>12} frames {bytes:>16} bytes");
}

/// `epochgate vms`: one aligned row per VM.
pub fn render_vms(snap: &Snapshot) -> String {
    let header = [
        "NAME", "MODE", "MAC", "PORT", "EPOCH", "HELD", "LIMIT", "RATE",
    ]
    .map(String::from);
    let rows: Vec<[String; 8]> = snap.vms.iter().map(vm_row).collect();
    let mut widths = header.clone().map(|h| h.len());
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut s = String::new();
    for r in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (i, (cell, w)) in r.iter().zip(widths).enumerate() {
            if i + 1 == r.len() {
                line.push_str(cell);
            } else {
                let pad = w - cell.chars().count();
                let _ = write!(line, "{cell}{}  ", " ".repeat(pad));
            }
        }
        let _ = writeln!(s, "{}", line.trim_end());
    }
    if snap.vms.is_empty() {
        s.push_str("(no VMs configured)\n");
    }
    s
}

fn vm_row(v: &VmSnapshot) -> [String; 8] {
    let u = &v.setup;
    let port = match (u.port.as_str(), u.vlan) {
        ("", _) => "-".to_string(),
        (p, None) => p.to_string(),
        (p, Some(vlan)) => format!("{p} vlan {vlan}"),
    };
    let limit = if u.max_held_frames == 0 && u.max_held_bytes == 0 && u.on_full.is_empty() {
        "-".to_string()
    } else {
        let bytes = if u.max_held_bytes == 0 {
            "-".to_string()
        } else {
            u.max_held_bytes.to_string()
        };
        let on_full = if u.on_full.is_empty() {
            "-"
        } else {
            &u.on_full
        };
        format!("{}/{bytes} {on_full}", u.max_held_frames)
    };
    let mut rate = Vec::new();
    if u.rate_bytes_per_s > 0 {
        rate.push(format!("{} Mbit/s", mbit(u.rate_bytes_per_s)));
    }
    if u.rate_pps > 0 {
        rate.push(format!("{} pps", u.rate_pps));
    }
    [
        v.name.clone(),
        v.mode.clone(),
        v.mac.clone().unwrap_or_else(|| "-".into()),
        port,
        format!("{}/{}/{}", v.open_epoch, v.sealed_epoch, v.committed_epoch),
        format!("{}/{}", v.held_frames, v.held_bytes),
        limit,
        if rate.is_empty() {
            "-".to_string()
        } else {
            rate.join(", ")
        },
    ]
}

/// Bytes per second as Mbit/s, without trailing zeros: 12_500_000 -> "100", 1_000 -> "0.008".
fn mbit(bytes_per_s: u64) -> String {
    let text = format!("{:.3}", bytes_per_s as f64 * 8.0 / 1e6);
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// `: a 1, b 2` for the non-zero entries, or nothing.
fn by_reason(m: &BTreeMap<String, u64>) -> String {
    let parts: Vec<String> = m
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!(" ({})", parts.join(", "))
    }
}

/// A latency summary on one line: "count N p50 X p99 Y max Z" (or "none recorded").
pub fn latency_text(l: &Latency) -> String {
    if l.count == 0 {
        return "none recorded".into();
    }
    format!(
        "count {} p50 {} p99 {} max {}",
        l.count,
        ns_text(l.p50_ns),
        ns_text(l.p99_ns),
        ns_text(l.max_ns)
    )
}

/// Nanoseconds in µs below a millisecond, else ms below a second, else s.
fn ns_text(ns: u64) -> String {
    if ns < 1_000_000 {
        format!("{:.1} µs", ns as f64 / 1e3)
    } else if ns < 1_000_000_000 {
        format!("{:.2} ms", ns as f64 / 1e6)
    } else {
        format!("{:.2} s", ns as f64 / 1e9)
    }
}

fn duration_text(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{:.1} s", ms as f64 / 1000.0),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m{:02}s", s / 3600, s / 60 % 60, s % 60),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::dpdk::PortStats;
    use crate::stats::{ControlSnapshot, EgressSnapshot, PortSnapshot, VmSetup};
    use std::sync::atomic::AtomicU64;

    /// A snapshot with something in every field (other modules' tests use it too).
    pub(crate) fn sample() -> Snapshot {
        let lat = |base: u64| Latency {
            count: 1000 + base,
            min_ns: 500,
            p50_ns: 12_300 + base,
            p90_ns: 30_000,
            p99_ns: 45_600,
            p999_ns: 900_000,
            max_ns: 2_500_000,
            mean_ns: 15_000,
        };
        let map = |kv: &[(&str, u64)]| -> BTreeMap<String, u64> {
            kv.iter().map(|(k, v)| (k.to_string(), *v)).collect()
        };
        Snapshot {
            uptime_ms: 125_500,
            vms: vec![
                VmSnapshot {
                    name: "web".into(),
                    mode: "passthrough".into(),
                    mac: Some("52:54:00:00:00:01".into()),
                    rx_frames: 1_234_567,
                    rx_bytes: 987_654_321,
                    released_frames: 1_234_560,
                    released_bytes: 987_654_000,
                    tx_frames: 1_234_000,
                    tx_bytes: 987_000_000,
                    waiting: 7,
                    ready_frames: 5,
                    ready_bytes: 7_500,
                    staged_frames: 2,
                    backpressure: 3,
                    inbound_frames: 4242,
                    inbound_bytes: 424_242,
                    dropped: map(&[("buffer-full", 11), ("runt", 2)]),
                    open_epoch: 0,
                    sealed_epoch: 0,
                    committed_epoch: 0,
                    held_frames: 0,
                    held_bytes: 0,
                    epochs_sealed: 0,
                    epochs_committed: 0,
                    epochs_discarded: 0,
                    fences_cut_short: 0,
                    fences_unproven: 0,
                    verdicts: BTreeMap::new(),
                    checkpoint_requests: BTreeMap::new(),
                    hold_time: lat(0),
                    commit_to_wire: Latency::default(),
                    fence_drain: Latency::default(),
                    epoch_age_ns: 0,
                    controller: false,
                    histograms: Default::default(),
                    setup: VmSetup {
                        port: "net_pcap1".into(),
                        vlan: None,
                        max_held_frames: 4096,
                        max_held_bytes: 0,
                        high_water_frames: 0,
                        high_water_bytes: 0,
                        on_full: "backpressure".into(),
                        rate_bytes_per_s: 12_500_000,
                        rate_pps: 0,
                        burst_bytes: 0,
                        burst_frames: 0,
                    },
                },
                VmSnapshot {
                    name: "ledger-primary".into(),
                    mode: "protected".into(),
                    mac: None,
                    rx_frames: 500,
                    rx_bytes: 64_000,
                    released_frames: 300,
                    released_bytes: 38_400,
                    tx_frames: 290,
                    tx_bytes: 37_120,
                    waiting: 210,
                    ready_frames: 10,
                    ready_bytes: 1280,
                    staged_frames: 0,
                    backpressure: 0,
                    inbound_frames: 0,
                    inbound_bytes: 0,
                    dropped: BTreeMap::new(),
                    open_epoch: 17,
                    sealed_epoch: 16,
                    committed_epoch: 15,
                    held_frames: 200,
                    held_bytes: 25_600,
                    epochs_sealed: 16,
                    epochs_committed: 15,
                    epochs_discarded: 1,
                    fences_cut_short: 4,
                    fences_unproven: 0,
                    verdicts: map(&[("tcp-pure-ack", 9)]),
                    checkpoint_requests: map(&[("immediate-frame", 13), ("high-water", 2)]),
                    hold_time: lat(1),
                    commit_to_wire: lat(2),
                    fence_drain: lat(3),
                    epoch_age_ns: 2_500_000,
                    controller: true,
                    histograms: crate::stats::VmHistogramBuckets {
                        hold_time: crate::stats::Buckets {
                            le_ns: vec![1_000, 50_000],
                            cumulative: vec![3, 7],
                            count: 9,
                            sum_ns: 2_000_000_000,
                        },
                        ..Default::default()
                    },
                    setup: VmSetup {
                        port: "shared ingress".into(),
                        vlan: Some(10),
                        max_held_frames: 8192,
                        max_held_bytes: 1_048_576,
                        high_water_frames: 4096,
                        high_water_bytes: 0,
                        on_full: "drop".into(),
                        rate_bytes_per_s: 1_000,
                        rate_pps: 20_000,
                        burst_bytes: 0,
                        burst_frames: 0,
                    },
                },
            ],
            ports: vec![PortSnapshot {
                name: "net_pcap0".into(),
                role: "egress".into(),
                rx_frames: 0,
                rx_bytes: 0,
                tx_frames: 1_234_290,
                tx_bytes: 987_037_120,
                dropped: map(&[("shutdown", 8)]),
                driver: PortStats {
                    ipackets: 0,
                    opackets: 1_234_290,
                    ibytes: 0,
                    obytes: 987_037_120,
                    imissed: 77,
                    ierrors: 0,
                    oerrors: 66,
                    rx_nombuf: 55,
                },
            }],
            egress: EgressSnapshot {
                released_frames: 4100,
                released_bytes: 410_000,
                passthrough_frames: 1_230_190,
                passthrough_bytes: 986_627_120,
                contended_frames: 5000,
                guarded_frames: 900,
            },
            control: ControlSnapshot {
                sessions: 2,
                refused_max_sessions: 31,
                refused_no_fds: 7,
                accept_errors: 3,
                hello_timeouts: 40,
                liveness_timeouts: 1,
            },
            workers: vec![crate::stats::WorkerSnapshot {
                lcore: 1,
                rounds: 1000,
                busy_rounds: 250,
                rx_frames: 4000,
                tx_frames: 3000,
                busy_cycles: 600,
                idle_cycles: 1400,
                tsc_hz: 2_000_000_000,
            }],
        }
    }

    struct Fixture {
        dir: tempfile::TempDir,
        cfg: ControlConfig,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::Builder::new()
                .prefix("eg-admin-")
                .tempdir()
                .expect("tempdir");
            let cfg = ControlConfig {
                socket: dir.path().join("control.sock"),
                admin_socket: dir.path().join("run/admin.sock"),
                ..ControlConfig::default()
            };
            Fixture { dir, cfg }
        }

        fn path(&self) -> &Path {
            &self.cfg.admin_socket
        }

        fn start(&self) -> AdminServer {
            let snap = sample();
            AdminServer::start(&self.cfg, Arc::new(move || snap.clone())).expect("start")
        }
    }

    /// Sends raw bytes and reads the answer line.
    fn raw(path: &Path, bytes: &[u8]) -> String {
        let mut s = UnixStream::connect(path).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(bytes).expect("send");
        line_of(&mut s)
    }

    fn line_of(s: &mut UnixStream) -> String {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while !out.contains(&b'\n') {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) => panic!("reading the answer: {e} (have {out:?})"),
            }
        }
        String::from_utf8(out).expect("utf-8")
    }

    fn error_of(line: &str) -> String {
        let v: serde_json::Value = serde_json::from_str(line.trim_end()).expect("json");
        v["error"]
            .as_str()
            .unwrap_or_else(|| panic!("not an error line: {line}"))
            .to_string()
    }

    #[test]
    fn stats_and_vms_round_trip_the_snapshot_exactly() {
        let f = Fixture::new();
        let calls = Arc::new(AtomicU64::new(0));
        let server = {
            let (snap, calls) = (sample(), calls.clone());
            AdminServer::start(
                &f.cfg,
                Arc::new(move || {
                    calls.fetch_add(1, Relaxed);
                    snap.clone()
                }),
            )
            .expect("start")
        };
        assert_eq!(query(f.path(), "stats").expect("stats"), sample());
        assert_eq!(query(f.path(), "vms").expect("vms"), sample());
        // Whitespace around the request and CRLF are fine; one line of JSON comes back.
        let line = raw(f.path(), b" stats \r\n");
        assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
        let back: Snapshot = serde_json::from_str(line.trim_end()).expect("snapshot");
        assert_eq!(back, sample());
        assert_eq!(
            calls.load(Relaxed),
            3,
            "the source is asked once per request"
        );
        server.stop();
    }

    #[test]
    fn an_unknown_request_gets_an_error_line_and_the_next_client_is_served() {
        let f = Fixture::new();
        let _server = f.start();
        let e = error_of(&raw(f.path(), b"shutdown now\n"));
        assert!(e.contains("unknown request \"shutdown now\""), "{e}");
        assert!(e.contains("\"stats\" or \"vms\""), "{e}");
        match query(f.path(), "reboot") {
            Err(err @ QueryError::Server { .. }) => {
                let text = err.to_string();
                assert!(text.contains("refused the request"), "{text}");
                assert!(text.contains("unknown request \"reboot\""), "{text}");
            }
            other => panic!("expected a server error, got {other:?}"),
        }
        // Too long, with or without a newline after it.
        let e = error_of(&raw(f.path(), &[b'x'; 200]));
        assert!(e.contains("longer than 64 bytes"), "{e}");
        let mut long = vec![b's'; 70];
        long.push(b'\n');
        assert!(error_of(&raw(f.path(), &long)).contains("longer than 64 bytes"));
        // An unterminated request from a client that shut down its side is still answered.
        let mut s = UnixStream::connect(f.path()).unwrap();
        s.write_all(b"vms").unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let back: Snapshot = serde_json::from_str(line_of(&mut s).trim_end()).unwrap();
        assert_eq!(back, sample());
        assert_eq!(
            query(f.path(), "stats").expect("served after bad clients"),
            sample()
        );
    }

    #[test]
    fn a_silent_client_does_not_block_another_and_is_answered_when_its_time_is_up() {
        let f = Fixture::new();
        let _server = f.start();
        let mut silent: Vec<UnixStream> = (0..3)
            .map(|_| UnixStream::connect(f.path()).expect("connect"))
            .collect();
        // A client that has not even finished its line.
        silent[2].write_all(b"sta").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let t = Instant::now();
        assert_eq!(query(f.path(), "vms").expect("vms"), sample());
        assert!(
            t.elapsed() < READ_TIMEOUT,
            "served after {:?}: the silent clients held it up",
            t.elapsed()
        );
        for s in &mut silent {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let e = error_of(&line_of(s));
            assert!(e.contains("no request within 1000 ms"), "{e}");
        }
    }

    #[test]
    fn a_stale_socket_file_is_replaced() {
        let f = Fixture::new();
        std::fs::create_dir_all(f.path().parent().unwrap()).unwrap();
        drop(std::os::unix::net::UnixListener::bind(f.path()).expect("bind"));
        assert!(f.path().exists(), "the dead listener left its file");
        let _server = f.start();
        assert_eq!(query(f.path(), "stats").expect("stats"), sample());
    }

    #[test]
    fn a_socket_a_live_server_holds_is_refused() {
        let f = Fixture::new();
        let _first = f.start();
        let snap = sample();
        let err = AdminServer::start(&f.cfg, Arc::new(move || snap.clone()))
            .err()
            .expect("a second server on the same socket must not start");
        let text = err.to_string();
        assert!(
            text.starts_with(&format!("control.admin_socket {}: ", f.path().display())),
            "{text}"
        );
        assert!(
            text.contains("another process is serving this socket"),
            "{text}"
        );
        // The first is untouched.
        assert_eq!(query(f.path(), "stats").expect("stats"), sample());
        // Something that is not a socket is not removed either.
        let mut cfg = f.cfg.clone();
        cfg.admin_socket = f.dir.path().join("notes.txt");
        std::fs::write(&cfg.admin_socket, "keep me").unwrap();
        let snap = sample();
        let text = AdminServer::start(&cfg, Arc::new(move || snap.clone()))
            .err()
            .expect("not a socket")
            .to_string();
        assert!(text.contains("is not a socket"), "{text}");
        assert_eq!(
            std::fs::read_to_string(&cfg.admin_socket).unwrap(),
            "keep me"
        );
    }

    #[test]
    fn the_socket_file_gets_socket_mode() {
        use std::os::unix::fs::{FileTypeExt, PermissionsExt};
        let mut f = Fixture::new();
        f.cfg.socket_mode = "0640".into();
        let _server = f.start();
        let meta = std::fs::metadata(f.path()).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o640);
    }

    #[test]
    fn stop_and_drop_remove_the_socket_file_promptly() {
        let f = Fixture::new();
        let server = f.start();
        assert!(f.path().exists());
        // A client mid-request does not delay the stop.
        let _idle = UnixStream::connect(f.path()).unwrap();
        let t = Instant::now();
        server.stop();
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "{:?}",
            t.elapsed()
        );
        assert!(!f.path().exists(), "stop left the socket file");
        let err = query(f.path(), "stats").unwrap_err().to_string();
        assert!(
            err.starts_with(&format!(
                "cannot reach epochgate at {} (is it running? its config's control.admin_socket): ",
                f.path().display()
            )),
            "{err}"
        );
        {
            let _server = f.start();
            assert!(f.path().exists());
        }
        assert!(!f.path().exists(), "drop left the socket file");
    }

    #[test]
    fn a_panicking_source_is_an_error_line_and_the_server_lives_on() {
        let f = Fixture::new();
        let n = Arc::new(AtomicU64::new(0));
        let _server = {
            let n = n.clone();
            let snap = sample();
            AdminServer::start(
                &f.cfg,
                Arc::new(move || {
                    if n.fetch_add(1, Relaxed) == 0 {
                        panic!("test: the source fails once");
                    }
                    snap.clone()
                }),
            )
            .expect("start")
        };
        let err = query(f.path(), "stats").unwrap_err().to_string();
        assert!(err.contains("internal error"), "{err}");
        assert_eq!(query(f.path(), "stats").expect("stats"), sample());
    }

    #[test]
    fn refused_peers_are_told_why() {
        let access = Access {
            owner: 1000,
            uids: vec![2000],
            gids: vec![300],
        };
        assert!(admit(&access, 0, 0, 1).is_ok(), "root");
        assert!(admit(&access, 1000, 1000, 1).is_ok(), "the owner");
        assert!(admit(&access, 2000, 2000, 1).is_ok(), "allowed_uids");
        assert!(admit(&access, 3000, 300, 1).is_ok(), "allowed_gids");
        let why = admit(&access, 3000, 3000, 42).unwrap_err();
        assert!(
            why.starts_with("permission denied: uid 3000 is not allowed"),
            "{why}"
        );
        assert!(why.contains("control.allowed_uids"), "{why}");
        // Over the socket, when the tests do not run as root (root is always allowed).
        let me = nix::unistd::geteuid().as_raw();
        if me != 0 {
            let f = Fixture::new();
            let snap = sample();
            let access = Access {
                owner: me.wrapping_add(1),
                uids: Vec::new(),
                gids: Vec::new(),
            };
            let _server =
                start_with(&f.cfg, Arc::new(move || snap.clone()), access).expect("start");
            let e = error_of(&raw(f.path(), b"stats\n"));
            assert!(
                e.starts_with(&format!("permission denied: uid {me} is not allowed")),
                "{e}"
            );
        }
    }

    #[test]
    fn a_bad_answer_is_named() {
        assert!(matches!(decode(b"{\"error\":\"nope\"}"), Err(Decoded::Error(m)) if m == "nope"));
        assert!(matches!(decode(b"{\"uptime_ms\":1}"), Err(Decoded::Bad(_))));
        assert!(matches!(decode(b"not json"), Err(Decoded::Bad(_))));
        let line = serde_json::to_vec(&sample()).unwrap();
        assert_eq!(decode(&line).ok(), Some(sample()));
        let err = query(Path::new("/x"), "a\nb").unwrap_err().to_string();
        assert!(err.contains("one line"), "{err}");
    }

    #[test]
    fn render_stats_shows_the_numbers() {
        let text = render_stats(&sample());
        for want in [
            "4100 frames           410000 bytes",
            "5000 frames sent while both classes waited, 900 of them pass-through by the starvation guard",
            "epochgate up 2m05s: 2 VM(s), 1 port(s)",
            "vm web (passthrough), mac 52:54:00:00:00:01",
            "vm ledger-primary (protected), mac not known yet",
            "1234567 frames        987654321 bytes",
            "1234560 frames",
            "987000000 bytes",
            "13 frames (buffer-full 11, runt 2)",
            "backpressure",
            " 3 time(s)",
            "open 17 sealed 16 committed 15",
            "sealed 16 committed 15 discarded 1; fences cut short 4, unproven 0",
            "15 (high-water 2, immediate-frame 13)",
            "tcp-pure-ack 9",
            "count 1000 p50 12.3 µs p99 45.6 µs max 2.50 ms",
            "count 1003 p50 12.3 µs",
            "none recorded",
            "port net_pcap0 (egress)",
            "1234290 frames",
            "8 frames (shutdown 8)",
            "imissed 77 rx_nombuf 55 oerrors 66",
            "2 open; refused 31 at control.max_sessions, 7 short of file descriptors; 3 accept error(s)",
            "40 without Hello (control.hello_timeout_ms), 1 silent",
        ] {
            assert!(text.contains(want), "no {want:?} in\n{text}");
        }
        // held (frames, bytes) and ready of the protected VM.
        let ledger = &text[text.find("vm ledger-primary").unwrap()..];
        let held = ledger
            .lines()
            .find(|l| l.trim_start().starts_with("held "))
            .unwrap();
        assert!(
            held.contains(" 200 frames") && held.contains(" 25600 bytes"),
            "{held}"
        );
        let ready = ledger
            .lines()
            .find(|l| l.trim_start().starts_with("ready"))
            .unwrap();
        assert!(
            ready.contains(" 10 frames") && ready.contains(" 1280 bytes"),
            "{ready}"
        );
    }

    #[test]
    fn render_vms_is_one_aligned_row_per_vm() {
        let text = render_vms(&sample());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("NAME "), "{text}");
        for (i, col) in ["MODE", "MAC", "PORT", "EPOCH", "HELD", "LIMIT", "RATE"]
            .iter()
            .enumerate()
        {
            let at = lines[0].find(col).unwrap_or_else(|| panic!("no {col}"));
            // Every row has a cell starting in that column.
            for row in &lines[1..] {
                let before = &row[..row.char_indices().nth(at).map_or(row.len(), |(b, _)| b)];
                assert!(
                    before.ends_with("  "),
                    "column {i} {col} misaligned in {row:?}"
                );
            }
        }
        let web = lines[1];
        for want in [
            "web",
            "passthrough",
            "52:54:00:00:00:01",
            "net_pcap1",
            "0/0/0",
            "4096/- backpressure",
            "100 Mbit/s",
        ] {
            assert!(web.contains(want), "no {want:?} in {web:?}");
        }
        let ledger = lines[2];
        for want in [
            "ledger-primary",
            "protected",
            "shared ingress vlan 10",
            "17/16/15",
            "200/25600",
            "8192/1048576 drop",
            "0.008 Mbit/s, 20000 pps",
        ] {
            assert!(ledger.contains(want), "no {want:?} in {ledger:?}");
        }
        let mut none = sample();
        none.vms[0].setup = VmSetup::default();
        let row = render_vms(&none).lines().nth(1).unwrap().to_string();
        assert!(row.ends_with("  -"), "no rate is \"-\": {row:?}");
        assert!(render_vms(&Snapshot {
            uptime_ms: 0,
            vms: vec![],
            ports: vec![],
            egress: EgressSnapshot::default(),
            control: ControlSnapshot::default(),
            workers: vec![],
        })
        .contains("no VMs"));
    }
}
