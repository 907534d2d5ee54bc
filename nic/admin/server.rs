//! The admin socket's server: [`AdminServer`], its thread's poll loop over non-blocking
//! connections, the peer check and the answer to one request line (the rules are in the
//! [`crate::admin`] module docs).

use super::{
    AdminError, SnapshotFn, MAX_CLIENTS, MAX_REQUEST, POLL_TICK, READ_TIMEOUT, REQUESTS,
    WRITE_TIMEOUT,
};
use crate::config::{AdminConfig, ControlConfig};
use crate::control::server::{bind, Access, Operator};
use crate::stats::ControlCounters;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use socket2::{Socket, Type};
use std::io::{ErrorKind, Read};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

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
        start_with(cfg, source, Access::of(cfg), Ops::default())
    }

    /// Like [`AdminServer::start`], counting its refusals in `counters` and, when
    /// `admin.writable`, taking operator writes (`fail VM`) to the control thread through
    /// `operator`.
    pub fn start_for(
        cfg: &ControlConfig,
        admin: &AdminConfig,
        source: SnapshotFn,
        counters: Arc<ControlCounters>,
        operator: Operator,
    ) -> Result<AdminServer, AdminError> {
        let writes = admin.writable.then(|| Writes {
            access: Access {
                owner: nix::unistd::geteuid().as_raw(),
                uids: admin.write_uids.clone(),
                gids: admin.write_gids.clone(),
            },
            operator,
        });
        start_with(cfg, source, Access::of(cfg), Ops { counters, writes })
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

/// Who may write on a writable admin socket, and where writes go.
pub(super) struct Writes {
    pub(super) access: Access,
    pub(super) operator: Operator,
}

/// What the admin server counts into and whether it takes writes (`None`: read-only).
#[derive(Default)]
pub(super) struct Ops {
    pub(super) counters: Arc<ControlCounters>,
    pub(super) writes: Option<Writes>,
}

pub(super) fn start_with(
    cfg: &ControlConfig,
    source: SnapshotFn,
    access: Access,
    ops: Ops,
) -> Result<AdminServer, AdminError> {
    use std::os::unix::fs::MetadataExt;
    let path = cfg.admin_socket.clone();
    let err = |why: String| AdminError::Socket {
        path: path.display().to_string(),
        why,
    };
    let listener = bind(&path, Type::STREAM, cfg.admin_perms()).map_err(err)?;
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
        ops,
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
    /// The peer's uid, gid and pid (for write permission and the operator's log line).
    peer: Option<(u32, u32, i32)>,
}

struct Server {
    listener: Socket,
    path: PathBuf,
    /// Device and inode of the socket file this server bound: only that file is removed.
    identity: Option<(u64, u64)>,
    source: SnapshotFn,
    access: Access,
    ops: Ops,
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
                peer: None,
            };
            let verdict = match getsockopt(&client.sock, PeerCredentials) {
                Ok(c) => {
                    client.peer = Some((c.uid(), c.gid(), c.pid()));
                    // A writer may connect even when it is not among the readers.
                    let writer = self
                        .ops
                        .writes
                        .as_ref()
                        .is_some_and(|w| w.access.allows(c.uid(), c.gid()));
                    if writer {
                        Ok(())
                    } else {
                        admit(&self.access, c.uid(), c.gid(), c.pid())
                    }
                }
                Err(e) => Err(format!(
                    "permission denied: the peer's credentials cannot be read: {e}"
                )),
            };
            if verdict.is_err() {
                self.ops.counters.admin_refused_peer.add(1);
            }
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
        let line = match frame_request(&c.input, eof) {
            Framed::Line(line) => line,
            Framed::TooLong => {
                let why = format!(
                    "request longer than {MAX_REQUEST} bytes: send one of {} and a newline",
                    accepted()
                );
                return c.fail(&why);
            }
            Framed::Closed => {
                match c.refused.take() {
                    Some(why) => c.answer(error_line(&why)),
                    None => c.state = State::Done,
                }
                return;
            }
            Framed::More => return,
        };
        let peer = c.peer;
        let reply = match c.refused.take() {
            Some(why) => error_line(&why),
            None => match write_request(&line) {
                Some(write) => self.write(write, peer),
                None => respond(&line, &self.source),
            },
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

impl Server {
    /// Carries out a write request (or says why not, counted as `admin_writes_refused`).
    fn write(&self, write: Result<Write, String>, peer: Option<(u32, u32, i32)>) -> String {
        let refuse = |why: String| {
            self.ops.counters.admin_writes_refused.add(1);
            error_line(&why)
        };
        let Some(writes) = &self.ops.writes else {
            return refuse(format!(
                "the admin socket is read-only: {} changes a VM, and only an admin socket with [admin] writable = true takes it \
                 (then root, epochgate's own user and admin.write_uids / admin.write_gids may); it accepts {}",
                WRITES.map(|w| format!("{w:?}")).join(", "),
                accepted()
            ));
        };
        let (uid, gid, pid) = peer.unwrap_or((u32::MAX, u32::MAX, 0));
        if !writes.access.allows(uid, gid) {
            return refuse(format!(
                "permission denied: uid {uid} (gid {gid}, pid {pid}) may read but not write on the admin socket: allow it in admin.write_uids or admin.write_gids"
            ));
        }
        let write = match write {
            Ok(w) => w,
            Err(why) => return refuse(why),
        };
        let by = format!("uid {uid}, pid {pid}");
        match write {
            Write::Fail(vm) => match writes.operator.fail(&vm, &by) {
                Ok(answer) => answer.to_string(),
                Err(why) => error_line(&why),
            },
        }
    }
}

/// The write requests a writable admin socket takes.
pub const WRITES: [&str; 1] = ["fail VM"];

/// A write request, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// `fail VM`: fence the VM off as if its controller were lost.
    Fail(String),
}

/// Whether a request line (without its newline) is a write request: `None` if it is not one
/// (a read request, or something unknown), else the write or why it is malformed.
pub fn write_request(line: &[u8]) -> Option<Result<Write, String>> {
    let text = String::from_utf8_lossy(line);
    let mut words = text.split_whitespace();
    if words.next() != Some("fail") {
        return None;
    }
    let args: Vec<&str> = words.collect();
    Some(match args.as_slice() {
        [vm] => Ok(Write::Fail((*vm).to_string())),
        _ => Err(format!(
            "fail takes one VM name: \"fail VM\" (got {:?})",
            text.trim()
        )),
    })
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
pub(super) fn admit(access: &Access, uid: u32, gid: u32, pid: i32) -> Result<(), String> {
    if access.allows(uid, gid) {
        return Ok(());
    }
    Err(format!(
        "permission denied: uid {uid} is not allowed (gid {gid}, pid {pid}): allow it in control.allowed_uids or control.allowed_gids"
    ))
}

/// What a connection's input so far amounts to, by [`frame_request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Framed {
    /// A request line, without its newline: the bytes before the first newline within the first
    /// [`MAX_REQUEST`] bytes, or, once the client shut down its side, an unterminated request.
    Line(Vec<u8>),
    /// [`MAX_REQUEST`] bytes or more and no newline among the first [`MAX_REQUEST`].
    TooLong,
    /// The client shut down its side without sending anything.
    Closed,
    /// No line yet: more may come.
    More,
}

/// The admin socket's request framing: what the `input` a client sent so far (and whether it
/// shut down its side, `eof`) amounts to. Pure; the server's poll loop and the fuzz target
/// (`nic-fuzz`, target `admin`) use it.
pub fn frame_request(input: &[u8], eof: bool) -> Framed {
    let within = &input[..input.len().min(MAX_REQUEST)];
    match within.iter().position(|b| *b == b'\n') {
        Some(n) => Framed::Line(within[..n].to_vec()),
        None if input.len() >= MAX_REQUEST => Framed::TooLong,
        // The client shut down its side after an unterminated request: take it as is.
        None if eof && !input.is_empty() => Framed::Line(input.to_vec()),
        None if eof => Framed::Closed,
        None => Framed::More,
    }
}

/// The request a line (without its newline) asks for: one of [`REQUESTS`] (surrounding
/// whitespace and a `\r` ignored), or the error text the client is sent, naming what it sent and
/// what is accepted. Pure; used by the server and the fuzz target (`nic-fuzz`, target `admin`).
pub fn parse_request(line: &[u8]) -> Result<&'static str, String> {
    let text = String::from_utf8_lossy(line);
    let request = text.trim();
    match REQUESTS.iter().find(|r| **r == request) {
        Some(r) => Ok(r),
        None => Err(format!(
            "unknown request {request:?}: this socket accepts {}, one per connection, ending with a newline \
             (and \"fail VM\" when [admin] writable = true)",
            accepted()
        )),
    }
}

/// The answer to one request line (without its newline).
fn respond(line: &[u8], source: &SnapshotFn) -> String {
    if let Err(why) = parse_request(line) {
        return error_line(&why);
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
