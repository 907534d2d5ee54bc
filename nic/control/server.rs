//! The VMM socket: a `SOCK_SEQPACKET` server on `control.socket` run by one control thread.
//!
//! Isolation lives here: a session must say `Hello` for one VM before anything else, a VM has at
//! most one session, commands carry no VM name (a session can only ever act on the VM it
//! adopted), and every malformed or refused message is answered with an `Error` and changes no
//! state. Each session has at most one command with the worker at a time; its next message is
//! read only once the answer went back. A session that closes (or goes silent past the liveness
//! timeout) fails its VM: the worker discards what it held.

use super::state::{self, Tracker};
use super::{Answer, Command, Op, Rings, VmIdx, EVENT};
use crate::config::ControlConfig;
use crate::stats::VmCounters;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use socket2::{Domain, SockAddr, Socket, Type};
use std::collections::VecDeque;
use std::io::{ErrorKind, Read};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use vmm_shim::proto::{self, ErrorCode, Reply, Request, VmStats, MAX_MESSAGE};

/// How long the control thread sleeps in `poll` when nothing is in flight. Answers from the
/// worker are picked up without sleeping while a command is outstanding.
const IDLE_POLL: Duration = Duration::from_millis(20);
const BACKLOG: i32 = 64;

/// Why the control server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control.socket {path}: {why}")]
    Socket { path: String, why: String },
    #[error(transparent)]
    State(#[from] state::StateError),
}

/// What the control thread knows of a VM: its name and the counters its worker publishes.
pub struct ControlVm {
    pub name: String,
    pub counters: Arc<VmCounters>,
}

/// Whether a reply says its VM changed mode, and to which.
fn mode_after(reply: &Reply) -> Option<proto::Mode> {
    match reply {
        Reply::Welcome { mode, .. } | Reply::Promoted { mode, .. } => Some(*mode),
        Reply::Protected { .. } => Some(proto::Mode::Protected),
        Reply::Unprotected { .. } => Some(proto::Mode::Passthrough),
        _ => None,
    }
}

/// Who may open a session on the control or admin socket: root, the user epochgate runs as,
/// and the users and (primary) groups the config adds.
pub(crate) struct Access {
    /// The effective uid epochgate runs as.
    pub(crate) owner: u32,
    /// `control.allowed_uids`.
    pub(crate) uids: Vec<u32>,
    /// `control.allowed_gids`, checked against the peer's primary gid.
    pub(crate) gids: Vec<u32>,
}

impl Access {
    /// The rules of `cfg` for a process running as the current effective uid.
    pub(crate) fn of(cfg: &ControlConfig) -> Access {
        Access {
            owner: nix::unistd::geteuid().as_raw(),
            uids: cfg.allowed_uids.clone(),
            gids: cfg.allowed_gids.clone(),
        }
    }

    /// Whether a peer with these credentials is let in.
    pub(crate) fn allows(&self, uid: u32, gid: u32) -> bool {
        uid == 0 || uid == self.owner || self.uids.contains(&uid) || self.gids.contains(&gid)
    }
}

struct Session {
    id: u64,
    sock: Socket,
    vm: Option<VmIdx>,
    /// A command of this session is with the worker.
    waiting: bool,
    last_heard: Instant,
    closed: bool,
}

/// The running control thread.
pub struct ControlServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ControlServer {
    /// Binds `cfg.socket` (a stale socket file left by a dead process is replaced; one that a
    /// live process serves is refused), sets its mode and starts the control thread.
    pub fn start(
        cfg: &ControlConfig,
        vms: Vec<ControlVm>,
        rings: Arc<Rings>,
        modes: Tracker,
    ) -> Result<ControlServer, ControlError> {
        let path = cfg.socket.clone();
        let err = |why: String| ControlError::Socket {
            path: path.display().to_string(),
            why,
        };
        let listener = bind(&path, Type::SEQPACKET, cfg.mode_bits()).map_err(err)?;
        // Only now is this process the one whose state the file records.
        modes.write()?;
        let stop = Arc::new(AtomicBool::new(false));
        let owners = vec![None; vms.len()];
        let server = Server {
            listener,
            path: path.clone(),
            sessions: Vec::new(),
            vms,
            owners,
            rings,
            modes,
            outbox: VecDeque::new(),
            access: Access {
                owner: nix::unistd::geteuid().as_raw(),
                uids: cfg.allowed_uids.clone(),
                gids: cfg.allowed_gids.clone(),
            },
            liveness: (cfg.liveness_timeout_ms > 0)
                .then(|| Duration::from_millis(cfg.liveness_timeout_ms)),
            next_id: EVENT + 1,
            stop: stop.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("eg-control".into())
            .spawn(move || server.run())
            .map_err(|e| err(format!("cannot start the control thread: {e}")))?;
        Ok(ControlServer {
            stop,
            thread: Some(thread),
        })
    }

    /// Tells every session that epochgate is stopping, closes them and removes the socket.
    /// Commands still queued for the worker are processed by it before it stops.
    pub fn stop(mut self) {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Binds and listens on a non-blocking Unix socket of type `ty` (`Type::SEQPACKET`,
/// `Type::STREAM`) at `path`, with file mode `mode`. Creates the directory; replaces a stale
/// socket file (one that refuses connections: its process is gone); refuses a socket that a
/// live process serves (or that cannot be probed), and anything at `path` that is not a socket.
/// The error says what and why, without the path (the caller names the setting and path).
pub(crate) fn bind(path: &Path, ty: Type, mode: u32) -> Result<Socket, String> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create its directory: {e}"))?;
    }
    let addr = SockAddr::unix(path).map_err(|e| format!("not a usable socket path: {e}"))?;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err("exists and is not a socket; refusing to replace it".into());
        }
        let probe = Socket::new(Domain::UNIX, ty.cloexec(), None)
            .map_err(|e| format!("cannot create a {ty:?} socket: {e}"))?;
        match probe.connect(&addr) {
            Ok(()) => return Err("another process is serving this socket".into()),
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => {}
            Err(e) => {
                return Err(format!(
                    "a socket is there and cannot be probed ({e}); another process may serve it"
                ))
            }
        }
        std::fs::remove_file(path)
            .map_err(|e| format!("stale socket file cannot be removed: {e}"))?;
    }
    let sock = Socket::new(Domain::UNIX, ty.cloexec(), None)
        .map_err(|e| format!("cannot create a {ty:?} socket: {e}"))?;
    sock.bind(&addr).map_err(|e| format!("cannot bind: {e}"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("cannot set its mode to {mode:o}: {e}"))?;
    sock.listen(BACKLOG)
        .map_err(|e| format!("cannot listen: {e}"))?;
    sock.set_nonblocking(true)
        .map_err(|e| format!("cannot make it non-blocking: {e}"))?;
    Ok(sock)
}

struct Server {
    listener: Socket,
    path: PathBuf,
    sessions: Vec<Session>,
    vms: Vec<ControlVm>,
    /// The session that adopted each VM.
    owners: Vec<Option<u64>>,
    rings: Arc<Rings>,
    /// Every VM's mode, persisted beside the socket for the next run.
    modes: Tracker,
    /// Commands not yet taken by the command ring, in order: none is ever lost (a lost `Fail`
    /// would let a new controller commit the dead one's epochs).
    outbox: VecDeque<Command>,
    access: Access,
    liveness: Option<Duration>,
    next_id: u64,
    stop: Arc<AtomicBool>,
}

impl Server {
    fn run(mut self) {
        let mut buf = vec![0u8; MAX_MESSAGE + 1];
        while !self.stop.load(Relaxed) {
            self.flush_outbox();
            let busy = !self.outbox.is_empty() || self.sessions.iter().any(|s| s.waiting);
            let ready = self.wait(if busy { Duration::ZERO } else { IDLE_POLL });
            self.take_answers();
            if ready.listener {
                self.accept_all();
            }
            for (i, revents) in ready.sessions {
                self.serve(i, revents, &mut buf);
            }
            self.check_liveness();
            self.reap();
            if busy {
                std::thread::yield_now();
            }
        }
        self.shutdown();
    }

    /// Polls the listener and every session; sessions with a command in flight are watched for
    /// hang-up only.
    fn wait(&self, timeout: Duration) -> Ready {
        let mut fds = Vec::with_capacity(self.sessions.len() + 1);
        fds.push(PollFd::new(self.listener.as_fd(), PollFlags::POLLIN));
        for s in &self.sessions {
            let events = if s.waiting {
                PollFlags::empty()
            } else {
                PollFlags::POLLIN
            };
            fds.push(PollFd::new(s.sock.as_fd(), events));
        }
        let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        if poll(&mut fds, PollTimeout::from(ms)).is_err() {
            return Ready::default();
        }
        let revents = |fd: &PollFd| fd.revents().unwrap_or(PollFlags::empty());
        Ready {
            listener: !revents(&fds[0]).is_empty(),
            sessions: fds[1..]
                .iter()
                .enumerate()
                .filter(|(_, fd)| !revents(fd).is_empty())
                .map(|(i, fd)| (i, revents(fd)))
                .collect(),
        }
    }

    fn flush_outbox(&mut self) {
        while let Some(cmd) = self.outbox.pop_front() {
            if let Err(cmd) = self.rings.commands.push(cmd) {
                self.outbox.push_front(cmd);
                break;
            }
        }
    }

    fn command(&mut self, cmd: Command) {
        self.outbox.push_back(cmd);
        self.flush_outbox();
    }

    fn take_answers(&mut self) {
        while let Some(Answer { vm, session, reply }) = self.rings.answers.pop() {
            let target = if session == EVENT {
                self.owners.get(vm).copied().flatten()
            } else {
                Some(session)
            };
            let Some(s) = target.and_then(|id| self.sessions.iter_mut().find(|s| s.id == id))
            else {
                continue; // the session has gone since; its VM was failed.
            };
            if session != EVENT {
                s.waiting = false;
            }
            let reply = persist(&mut self.modes, vm, reply);
            send(s, &reply);
        }
    }

    fn accept_all(&mut self) {
        loop {
            let sock = match self.listener.accept() {
                Ok((sock, _)) => sock,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    eprintln!("epochgate: control socket: accept failed: {e}");
                    return;
                }
            };
            let _ = sock.set_nonblocking(true);
            let mut session = Session {
                id: self.next_id,
                sock,
                vm: None,
                waiting: false,
                last_heard: Instant::now(),
                closed: false,
            };
            self.next_id += 1;
            match getsockopt(&session.sock, PeerCredentials) {
                Ok(c) if self.access.allows(c.uid(), c.gid()) => self.sessions.push(session),
                Ok(c) => send(
                    &mut session,
                    &Reply::error(
                        ErrorCode::PermissionDenied,
                    format!(
                        "uid {} (gid {}, pid {}) may not drive VMs: allow it in control.allowed_uids or control.allowed_gids",
                        c.uid(),
                        c.gid(),
                        c.pid()
                    ),
                    ),
                ),
                Err(e) => send(
                    &mut session,
                    &Reply::error(
                        ErrorCode::PermissionDenied,
                        format!("the peer's credentials cannot be read: {e}"),
                    ),
                ),
            }
        }
    }

    /// Reads what session `i` sent (one message: it has nothing in flight) or notices it closed.
    fn serve(&mut self, i: usize, revents: PollFlags, buf: &mut [u8]) {
        let s = &mut self.sessions[i];
        if s.closed {
            return;
        }
        if revents.contains(PollFlags::POLLIN) && !s.waiting {
            match (&s.sock).read(buf) {
                // On a SEQPACKET socket a read of 0 is either the peer's end or an empty
                // message; the hang-up flag tells which.
                Ok(0) if revents.intersects(PollFlags::POLLHUP) => {
                    s.closed = true;
                }
                Ok(n) => {
                    s.last_heard = Instant::now();
                    self.message(i, &buf[..n]);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => s.closed = true,
            }
            return;
        }
        if revents.intersects(PollFlags::POLLHUP | PollFlags::POLLERR | PollFlags::POLLNVAL) {
            s.closed = true;
        }
    }

    fn message(&mut self, i: usize, bytes: &[u8]) {
        let req = match proto::decode_request(bytes) {
            Ok(r) => r,
            Err(e) => {
                // A longer datagram was cut at MAX_MESSAGE + 1 by the read: its size is unknown.
                let text = match e {
                    proto::ProtoError::Oversize { .. } => {
                        format!("message longer than the maximum of {MAX_MESSAGE} bytes; ignored")
                    }
                    _ => format!("{e}; ignored"),
                };
                return send(&mut self.sessions[i], &Reply::error(e.code(), text));
            }
        };
        let s = &self.sessions[i];
        let id = s.id;
        let vm = s.vm;
        let op = match (req, vm) {
            (Request::Ping { token }, _) => {
                return send(&mut self.sessions[i], &Reply::Pong { token });
            }
            (Request::Hello { vm: name, .. }, Some(have)) => {
                let text = format!(
                    "this session already drives VM {:?}; open another session for {name:?}",
                    self.vms[have].name
                );
                return send(
                    &mut self.sessions[i],
                    &Reply::error(ErrorCode::AlreadyAdopted, text),
                );
            }
            (Request::Hello { version, vm: name }, None) => {
                if version != proto::VERSION {
                    let text = format!(
                        "Hello asks for protocol version {version}; this epochgate speaks {}",
                        proto::VERSION
                    );
                    return send(
                        &mut self.sessions[i],
                        &Reply::error(ErrorCode::Version, text),
                    );
                }
                let Some(vi) = self.vms.iter().position(|v| v.name == name) else {
                    let known: Vec<&str> = self.vms.iter().map(|v| v.name.as_str()).collect();
                    let text = format!("no VM is named {name:?} (configured: {known:?})");
                    return send(
                        &mut self.sessions[i],
                        &Reply::error(ErrorCode::UnknownVm, text),
                    );
                };
                if self.owners[vi].is_some() {
                    let text = format!("VM {name:?} is already driven by another session");
                    return send(
                        &mut self.sessions[i],
                        &Reply::error(ErrorCode::VmBusy, text),
                    );
                }
                self.owners[vi] = Some(id);
                self.sessions[i].vm = Some(vi);
                Op::Adopt
            }
            (req, None) => {
                let text = format!(
                    "{} before Hello: say which VM this session drives first",
                    req.name()
                );
                return send(
                    &mut self.sessions[i],
                    &Reply::error(ErrorCode::NotAdopted, text),
                );
            }
            (Request::Stats, Some(vi)) => {
                let reply = Reply::Stats(stats_of(&self.vms[vi].counters));
                return send(&mut self.sessions[i], &reply);
            }
            (Request::Protect, Some(_)) => Op::Protect,
            (Request::Fence { epoch }, Some(_)) => Op::Fence(epoch),
            (Request::Commit { epoch }, Some(_)) => Op::Commit(epoch),
            (Request::Unprotect { how }, Some(_)) => Op::Unprotect(how),
            (Request::Discard, Some(_)) => Op::Discard,
            (Request::Promote { mode }, Some(_)) => Op::Promote(mode),
        };
        let vm = self.sessions[i].vm.unwrap_or_default();
        self.sessions[i].waiting = true;
        self.command(Command {
            vm,
            session: id,
            op,
        });
    }

    fn check_liveness(&mut self) {
        let Some(limit) = self.liveness else { return };
        for s in &mut self.sessions {
            if !s.closed && !s.waiting && s.last_heard.elapsed() > limit {
                let text = format!(
                    "nothing heard for {} ms (control.liveness_timeout_ms): the VM is failed",
                    limit.as_millis()
                );
                send(s, &Reply::error(ErrorCode::Internal, text));
                s.closed = true;
            }
        }
    }

    /// Drops closed sessions; the VM of each goes to `failed` on its worker.
    fn reap(&mut self) {
        let mut i = 0;
        while i < self.sessions.len() {
            if !self.sessions[i].closed {
                i += 1;
                continue;
            }
            let s = self.sessions.swap_remove(i);
            if let Some(vm) = s.vm {
                self.owners[vm] = None;
                // The worker fails a protected VM when its controller goes (Op::Fail).
                if self.modes.mode(vm) == proto::Mode::Protected {
                    if let Err(e) = self.modes.set(vm, proto::Mode::Failed) {
                        eprintln!("epochgate: {e}");
                    }
                }
                self.command(Command {
                    vm,
                    session: s.id,
                    op: Op::Fail,
                });
            }
        }
    }

    fn shutdown(&mut self) {
        self.flush_outbox();
        for s in &mut self.sessions {
            let text = "epochgate is stopping: released output is sent, held output is discarded (it can never be proven committed); reconnect to the new process and start a new epoch";
            send(s, &Reply::error(ErrorCode::ShuttingDown, text));
        }
        self.sessions.clear();
        let _ = std::fs::remove_file(&self.path);
    }
}

#[derive(Default)]
struct Ready {
    listener: bool,
    sessions: Vec<(usize, PollFlags)>,
}

/// Records the mode a reply reveals before the VMM hears of it. If a change that makes the VM
/// hold its output cannot be persisted, the VMM is told (a restart would not know it); a
/// change the other way only logs (the next run would hold its output until adopted: safe).
fn persist(modes: &mut Tracker, vm: VmIdx, reply: Reply) -> Reply {
    let Some(mode) = mode_after(&reply) else {
        return reply;
    };
    let was = modes.mode(vm);
    match modes.set(vm, mode) {
        Ok(()) => reply,
        Err(e) if state::holds(mode) && !state::holds(was) => Reply::error(
            ErrorCode::Internal,
            format!("{e}: the VM is {mode} now, but a restart of epochgate would not know it"),
        ),
        Err(e) => {
            eprintln!("epochgate: {e}");
            reply
        }
    }
}

/// Sends a reply; a peer that cannot take it (gone, or not reading) is closed.
fn send(s: &mut Session, reply: &Reply) {
    if s.closed {
        return;
    }
    if s.sock
        .send_with_flags(&reply.encode(), nix::libc::MSG_NOSIGNAL)
        .is_err()
    {
        s.closed = true;
    }
}

/// A session's view of its VM, from the counters its worker publishes.
pub fn stats_of(c: &VmCounters) -> VmStats {
    VmStats {
        mode: proto::Mode::from_u8(c.mode.get() as u8).unwrap_or(proto::Mode::Failed),
        open_epoch: c.open_epoch.get(),
        sealed_epoch: c.sealed_epoch.get(),
        committed_epoch: c.committed_epoch.get(),
        held_frames: c.held_frames.get(),
        held_bytes: c.held_bytes.get(),
        rx_frames: c.rx_frames.get(),
        tx_frames: c.tx_frames.get(),
        dropped: c.drops.total(),
    }
}
