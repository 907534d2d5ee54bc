//! The VMM socket: a `SOCK_SEQPACKET` server on `control.socket` run by one control thread.
//!
//! Isolation lives here: a session must say `Hello` for one VM before anything else, a VM has at
//! most one session, commands carry no VM name (a session can only ever act on the VM it
//! adopted), and every malformed or refused message is answered with an `Error` and changes no
//! state. Each session has at most one command with the worker at a time; its next message is
//! read only once the answer went back. A session that closes (or goes silent past the liveness
//! timeout) fails its VM: the worker discards what it held.
//!
//! Hostile connections cannot lock VMMs out: a session that adopts no VM within
//! `control.hello_timeout_ms` is closed, at most `control.max_sessions` are open, a connection
//! beyond that (or one that would leave epochgate short of file descriptors) is told why and
//! closed at once, and accept errors pause the listener instead of spinning on it; each such
//! episode is logged once when it starts and once when it ends.

use super::state::{self, Tracker};
#[cfg(test)]
use super::Rings;
use super::{Answer, Command, Op, VmIdx, Workers, EVENT};
use crate::config::{ControlConfig, SocketPerms};
use crate::stats::{ControlCounters, ControlSnapshot, VmCounters};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{getsockopt, recv, sockopt::PeerCredentials, MsgFlags};
use socket2::{Domain, SockAddr, Socket, Type};
use std::collections::VecDeque;
use std::fs::File;
use std::io::{ErrorKind, Read};
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::Acquire, Ordering::Relaxed, Ordering::Release};
use std::sync::{mpsc, Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use vmm_shim::proto::{self, ErrorCode, Reply, Request, VmStats, MAX_MESSAGE};

/// The longest the control thread sleeps in `poll`: it wakes earlier for a socket, the
/// worker's bell (answers, checkpoint requests), a stop (which rings the bell) and the next
/// hello or liveness deadline; this only bounds how stale the session count can get.
const MAX_SLEEP: Duration = Duration::from_millis(100);
/// How long the control thread polls without sleeping after it handed a command to a worker.
/// Bounded, so a fence that drains for milliseconds costs at most this much spinning; idle, it
/// never spins.
const SPIN: Duration = Duration::from_micros(200);
const BACKLOG: i32 = 64;
/// File descriptors a new session must leave free for the rest of epochgate (stats file,
/// admin socket, vhost-user reconnections): beyond, the connection is refused.
const FD_HEADROOM: u64 = 32;
/// After an accept error the listener rests this long, doubling up to [`BACKOFF_MAX`]; a
/// successful accept resets it.
const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// The send buffer each session's socket asks for (`SO_SNDBUF`; Linux doubles it for its own
/// bookkeeping): the bound on what epochgate keeps for a session that does not read its replies
/// and events, a few hundred messages. A VMM has at most one reply, its pongs and one
/// checkpoint request per epoch unread; a session whose buffer is full when epochgate must
/// send is closed as not reading (`closed_not_reading`), and its VM fails like any lost
/// controller's.
pub const SESSION_SEND_BUFFER: usize = 64 * 1024;
/// Messages read from one session per round of the control thread: a session that floods is
/// served at the same pace as every other, whatever it sends.
pub const READS_PER_ROUND: usize = 1;
/// Sessions closed for not reading are logged at most this often (the rest are counted in the
/// next line and in `closed_not_reading`).
const NOT_READING_LOG_EVERY: Duration = Duration::from_secs(10);
/// How long an operator request waits for the control thread's answer.
const OPERATOR_TIMEOUT: Duration = Duration::from_secs(5);
/// Operator requests waiting for the control thread at once; more are refused as busy.
const OPERATOR_QUEUE: usize = 16;

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
        Reply::Demoted { .. } => Some(proto::Mode::Standby),
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

/// Why a session was closed, when epochgate closed it for something it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closed {
    /// It did not read: a reply or event found its send buffer full.
    NotReading,
}

struct Session {
    id: u64,
    sock: Socket,
    vm: Option<VmIdx>,
    /// Set when epochgate closed it for a reason that is counted when it is reaped.
    why_closed: Option<Closed>,
    /// A command of this session is with the worker.
    waiting: bool,
    /// When it connected: it has `control.hello_timeout_ms` from here to adopt a VM.
    opened: Instant,
    /// Its last message, or the last answer to one (time with the worker is not silence).
    last_heard: Instant,
    closed: bool,
}

/// What an operator asks of the control thread through the admin socket.
struct OperatorRequest {
    /// The VM to fail.
    vm: String,
    /// Who asks (uid and pid), for the session's error text and the log.
    by: String,
    reply: mpsc::SyncSender<Result<serde_json::Value, String>>,
}

/// The admin thread's way to the control thread for operator writes: the control thread owns
/// the sessions, so a request is queued and the control thread is woken (the workers' bell);
/// it acts on the request in its next round, exactly as it would on a lost controller, and
/// answers.
#[derive(Clone)]
pub struct Operator {
    tx: mpsc::SyncSender<OperatorRequest>,
    bell: Arc<Workers>,
}

impl Operator {
    /// Fails VM `vm` as if its controller were lost: its session (if any) is told why and
    /// closed, a protected VM goes to `failed` and what it holds is discarded
    /// (`controller-lost`). `by` says who asked. The answer is the JSON the admin socket sends:
    /// `{"failed":VM,"was":MODE,"now":MODE,"session":"closed"|"none"}`.
    pub fn fail(&self, vm: &str, by: &str) -> Result<serde_json::Value, String> {
        let (tx, rx) = mpsc::sync_channel(1);
        let req = OperatorRequest {
            vm: vm.to_string(),
            by: by.to_string(),
            reply: tx,
        };
        self.tx.try_send(req).map_err(|e| match e {
            mpsc::TrySendError::Full(_) => format!(
                "busy: {OPERATOR_QUEUE} operator requests are already waiting for the control thread; try again"
            ),
            mpsc::TrySendError::Disconnected(_) => {
                "epochgate is stopping: its control thread takes no more requests".to_string()
            }
        })?;
        self.bell.wake();
        match rx.recv_timeout(OPERATOR_TIMEOUT) {
            Ok(answer) => answer,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                Err("epochgate is stopping: the request was not carried out".to_string())
            }
            Err(mpsc::RecvTimeoutError::Timeout) => Err(format!(
                "the control thread did not answer within {} s; whether VM {vm:?} was failed is unknown: see `epochgate vms`",
                OPERATOR_TIMEOUT.as_secs()
            )),
        }
    }
}

/// The running control thread.
pub struct ControlServer {
    stop: Arc<AtomicBool>,
    /// What sessions are told when the control thread stops, if not the clean stop's text.
    why: Arc<OnceLock<String>>,
    /// The workers, whose bell a stop rings (the thread may be asleep in `poll`).
    bell: Arc<Workers>,
    thread: Option<JoinHandle<()>>,
    counters: Arc<ControlCounters>,
    operator: Operator,
}

impl ControlServer {
    /// Binds `cfg.socket` (a stale socket file left by a dead process is replaced; one that a
    /// live process serves is refused), sets its mode and starts the control thread.
    pub fn start(
        cfg: &ControlConfig,
        vms: Vec<ControlVm>,
        workers: Workers,
        modes: Tracker,
    ) -> Result<ControlServer, ControlError> {
        let workers = Arc::new(workers);
        let path = cfg.socket.clone();
        let err = |why: String| ControlError::Socket {
            path: path.display().to_string(),
            why,
        };
        let listener = bind(&path, Type::SEQPACKET, cfg.control_perms()).map_err(err)?;
        // Only now is this process the one whose state the file records.
        modes.write()?;
        let stop = Arc::new(AtomicBool::new(false));
        let why = Arc::new(OnceLock::new());
        let owners = vec![None; vms.len()];
        let counters = Arc::new(ControlCounters::default());
        let (operator_tx, operator_rx) = mpsc::sync_channel(OPERATOR_QUEUE);
        let server = Server {
            listener,
            path: path.clone(),
            sessions: Vec::new(),
            vms,
            owners,
            workers,
            modes,
            outbox: VecDeque::new(),
            access: Access {
                owner: nix::unistd::geteuid().as_raw(),
                uids: cfg.allowed_uids.clone(),
                gids: cfg.allowed_gids.clone(),
            },
            liveness: (cfg.liveness_timeout_ms > 0)
                .then(|| Duration::from_millis(cfg.liveness_timeout_ms)),
            ping_interval_ms: cfg.ping_interval_ms(),
            hello_timeout: Duration::from_millis(cfg.hello_timeout_ms),
            max_sessions: cfg.max_sessions,
            reserve: reserve_fd(),
            backoff: Backoff::default(),
            trouble: None,
            counters: counters.clone(),
            next_id: EVENT + 1,
            spin_until: None,
            stop: stop.clone(),
            why: why.clone(),
            operator: operator_rx,
            not_reading_log: None,
        };
        let bell = server.workers.clone();
        let operator = Operator {
            tx: operator_tx,
            bell: bell.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("eg-control".into())
            .spawn(move || server.run())
            .map_err(|e| err(format!("cannot start the control thread: {e}")))?;
        Ok(ControlServer {
            stop,
            why,
            bell,
            thread: Some(thread),
            counters,
            operator,
        })
    }

    /// The control thread's counters (sessions, refusals, timeouts), for the stats.
    pub fn counters(&self) -> Arc<ControlCounters> {
        self.counters.clone()
    }

    /// The handle through which the admin thread hands operator writes to the control thread.
    pub fn operator(&self) -> Operator {
        self.operator.clone()
    }

    /// Tells every session that epochgate is stopping and closes them. The socket file is left
    /// (see [`state`]): a start that finds it but no state file refuses to guess.
    /// Commands still queued for the worker are processed by it before it stops.
    pub fn stop(mut self) {
        self.stop.store(true, Release);
        self.bell.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Like [`ControlServer::stop`], after a failure: every session is told `why` (with the
    /// same error code, so a shim knows the session ends and reconnects) instead of the clean
    /// stop's text.
    pub fn fail(self, why: String) {
        let _ = self.why.set(why);
        self.stop()
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        self.bell.wake();
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
pub(crate) fn bind(path: &Path, ty: Type, perms: SocketPerms) -> Result<Socket, String> {
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
    // Owner first, then mode: the file never has the configured mode with the wrong owner.
    if perms.uid.is_some() || perms.gid.is_some() {
        let key = match (perms.uid, perms.gid) {
            (Some(_), Some(_)) => "control.socket_owner / control.socket_group",
            (Some(_), None) => "control.socket_owner",
            _ => "control.socket_group",
        };
        let show = |id: Option<u32>| id.map_or_else(|| "unchanged".to_string(), |i| i.to_string());
        std::os::unix::fs::chown(path, perms.uid, perms.gid).map_err(|e| {
            format!(
                "cannot give it owner {} group {} ({key}): {e}",
                show(perms.uid),
                show(perms.gid)
            )
        })?;
    }
    let mode = perms.mode;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|e| {
        format!(
            "cannot set its mode to {mode:04o} ({}): {e}",
            perms.mode_key
        )
    })?;
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
    workers: Arc<Workers>,
    /// Every VM's mode, persisted beside the socket for the next run.
    modes: Tracker,
    /// Commands not yet taken by the command ring, in order: none is ever lost (a lost `Fail`
    /// would let a new controller commit the dead one's epochs).
    outbox: VecDeque<Command>,
    access: Access,
    liveness: Option<Duration>,
    /// `control.ping_interval_ms` (or its default): told to each session that asks.
    ping_interval_ms: u64,
    hello_timeout: Duration,
    max_sessions: usize,
    /// An open `/dev/null` held in reserve: when accept fails for want of a descriptor, it is
    /// closed to accept the waiting connection, tell it why and close it, then reopened; so the
    /// backlog is refused promptly instead of filling up.
    reserve: Option<File>,
    backoff: Backoff,
    /// An episode of refused connections or accept failures, logged once when it starts and
    /// once when it ends (at the next session let in).
    trouble: Option<Trouble>,
    counters: Arc<ControlCounters>,
    next_id: u64,
    /// Until when the thread polls without sleeping (a command was just handed to a worker).
    spin_until: Option<Instant>,
    stop: Arc<AtomicBool>,
    why: Arc<OnceLock<String>>,
    /// Operator writes from the admin thread.
    operator: mpsc::Receiver<OperatorRequest>,
    /// When a session closed for not reading was last logged, and how many more since.
    not_reading_log: Option<(Instant, u64)>,
}

/// How long the listener rests after an accept error.
struct Backoff {
    until: Option<Instant>,
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            until: None,
            next: BACKOFF_MIN,
        }
    }
}

impl Backoff {
    fn pause(&mut self, now: Instant) {
        self.until = Some(now + self.next);
        self.next = (self.next * 2).min(BACKOFF_MAX);
    }

    fn reset(&mut self) {
        *self = Backoff::default();
    }

    /// How long the listener still rests (zero: it is polled).
    fn left(&self, now: Instant) -> Duration {
        self.until
            .map_or(Duration::ZERO, |t| t.saturating_duration_since(now))
    }
}

/// Since when connections are refused or accept fails, and the counters then.
struct Trouble {
    since: Instant,
    at_start: ControlSnapshot,
}

/// Why a connection is refused right after accept.
enum Refusal {
    Full,
    NoFds,
}

fn reserve_fd() -> Option<File> {
    File::open("/dev/null").ok()
}

impl Server {
    fn run(mut self) {
        let mut buf = vec![0u8; MAX_MESSAGE + 1];
        // Acquire: a stop that was told why (ControlServer::fail) set it before the flag.
        while !self.stop.load(Acquire) {
            self.flush_outbox();
            // Commands the ring had no room for are retried at once; answers ring the bell;
            // otherwise the thread sleeps until a socket, the bell or the next timer
            // (hello or liveness deadline, a resting listener's pause).
            let now = Instant::now();
            let rest = self.backoff.left(now);
            // Just after a command went to a worker the answer is usually microseconds away
            // (an idle VM's fence, a commit): the thread polls without sleeping for up to
            // `SPIN` rather than pay a wake-up, then sleeps on the bell.
            let spinning = self
                .spin_until
                .is_some_and(|t| now < t && self.sessions.iter().any(|s| s.waiting));
            if !spinning {
                self.spin_until = None;
            }
            let timeout = if self.outbox.is_empty() && !spinning {
                let mut t = self.next_deadline(now).unwrap_or(MAX_SLEEP).min(MAX_SLEEP);
                if !rest.is_zero() {
                    t = t.min(rest);
                }
                t
            } else {
                Duration::ZERO
            };
            let ready = self.wait(timeout, rest.is_zero());
            if ready.bell {
                self.workers.hush();
            }
            self.take_answers();
            if ready.listener {
                self.accept_all();
            }
            for (i, revents) in ready.sessions {
                self.serve(i, revents, &mut buf);
            }
            let operated = self.operator_requests();
            self.check_hello();
            self.check_liveness();
            self.reap();
            // Answered once the sessions they closed are reaped: their VMs' failure is on its
            // way to the worker and persisted.
            for (reply, answer) in operated {
                let _ = reply.send(answer);
            }
            self.counters.sessions.set(self.sessions.len() as u64);
            if !self.outbox.is_empty() || spinning {
                std::thread::yield_now();
            }
        }
        self.shutdown();
    }

    /// The earliest hello or liveness deadline of an open session.
    fn next_deadline(&self, now: Instant) -> Option<Duration> {
        self.sessions
            .iter()
            .filter(|s| !s.closed && !s.waiting)
            .flat_map(|s| {
                let hello = s.vm.is_none().then(|| s.opened + self.hello_timeout);
                let live = self.liveness.map(|l| s.last_heard + l);
                [hello, live]
            })
            .flatten()
            .min()
            // Checked just after the deadline (the checks compare with `>`).
            .map(|t| t.saturating_duration_since(now) + Duration::from_millis(1))
    }

    /// Polls the bell, the listener (unless it rests after an accept error) and every session;
    /// sessions with a command in flight are watched for hang-up only.
    fn wait(&self, timeout: Duration, listen: bool) -> Ready {
        let bells = self.workers.count();
        let mut fds = Vec::with_capacity(self.sessions.len() + bells + 1);
        fds.extend(
            self.workers
                .bells()
                .map(|b| PollFd::new(b, PollFlags::POLLIN)),
        );
        let events = if listen {
            PollFlags::POLLIN
        } else {
            PollFlags::empty()
        };
        fds.push(PollFd::new(self.listener.as_fd(), events));
        for s in &self.sessions {
            let events = if s.waiting {
                PollFlags::empty()
            } else {
                PollFlags::POLLIN
            };
            fds.push(PollFd::new(s.sock.as_fd(), events));
        }
        // Rounded up: a deadline 0.3 ms away is not polled with a zero timeout in a loop.
        let ms = timeout.as_micros().div_ceil(1000);
        let ms = u16::try_from(ms).unwrap_or(u16::MAX);
        if poll(&mut fds, PollTimeout::from(ms)).is_err() {
            return Ready::default();
        }
        let revents = |fd: &PollFd| fd.revents().unwrap_or(PollFlags::empty());
        Ready {
            bell: fds[..bells].iter().any(|fd| !revents(fd).is_empty()),
            listener: listen && !revents(&fds[bells]).is_empty(),
            sessions: fds[bells + 1..]
                .iter()
                .enumerate()
                .filter(|(_, fd)| !revents(fd).is_empty())
                .map(|(i, fd)| (i, revents(fd)))
                .collect(),
        }
    }

    fn flush_outbox(&mut self) {
        while let Some(cmd) = self.outbox.pop_front() {
            if let Err(cmd) = self.workers.push(cmd) {
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
        while let Some(Answer { vm, session, reply }) = self.workers.pop() {
            let reply = reply.unwrap_or_else(|refused| refused.reply());
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
                s.last_heard = Instant::now();
            }
            let reply = persist(&mut self.modes, vm, reply);
            send(s, &reply);
        }
    }

    /// Accepts every waiting connection: each becomes a session or is told why not and closed.
    /// Never loops without taking a connection: out of descriptors, the reserve takes the
    /// connection (to refuse it); any other failure rests the listener.
    fn accept_all(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((sock, _)) => {
                    self.backoff.reset();
                    if self.reserve.is_none() {
                        self.reserve = reserve_fd();
                    }
                    self.admit(sock);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                // The peer gave up before it was accepted: nothing to do.
                Err(e) if e.kind() == ErrorKind::ConnectionAborted => continue,
                Err(e) => {
                    let no_fds = matches!(
                        e.raw_os_error().map(Errno::from_raw),
                        Some(Errno::EMFILE | Errno::ENFILE)
                    );
                    if no_fds {
                        match self.shed() {
                            Some(true) => continue,
                            // Nothing was waiting after all.
                            Some(false) => return,
                            None => {}
                        }
                    }
                    self.trouble(&format!("accept failed: {e}"));
                    self.counters.accept_errors.add(1);
                    self.backoff.pause(Instant::now());
                    return;
                }
            }
        }
    }

    /// Out of descriptors: closes the reserve to accept one waiting connection, refuses it and
    /// takes the reserve again. `Some(true)`: one was refused; `Some(false)`: none was waiting;
    /// `None`: the reserve could not help (gone, or taken by another thread meanwhile).
    fn shed(&mut self) -> Option<bool> {
        drop(self.reserve.take()?);
        let got = loop {
            match self.listener.accept() {
                Ok((sock, _)) => break Some(sock),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break None,
                Err(_) => {
                    self.reserve = reserve_fd();
                    return None;
                }
            }
        };
        let refused = got.map(|sock| self.refuse(sock, Refusal::NoFds)).is_some();
        self.reserve = reserve_fd();
        Some(refused)
    }

    /// A new connection: refused if the sessions are at `control.max_sessions` or epochgate is
    /// short of descriptors, then checked against the allowed peers.
    fn admit(&mut self, sock: Socket) {
        if self.sessions.len() >= self.max_sessions {
            return self.refuse(sock, Refusal::Full);
        }
        if fds_short(&sock) {
            return self.refuse(sock, Refusal::NoFds);
        }
        let _ = sock.set_nonblocking(true);
        // The bound on unread replies and events (see SESSION_SEND_BUFFER); if the kernel
        // refuses, its default (about 208 KiB) bounds it instead.
        let _ = sock.set_send_buffer_size(SESSION_SEND_BUFFER);
        let now = Instant::now();
        let mut session = Session {
            id: self.next_id,
            sock,
            vm: None,
            why_closed: None,
            waiting: false,
            opened: now,
            last_heard: now,
            closed: false,
        };
        self.next_id += 1;
        match getsockopt(&session.sock, PeerCredentials) {
            Ok(c) if self.access.allows(c.uid(), c.gid()) => {
                self.sessions.push(session);
                self.settle();
            }
            Ok(c) => {
                self.counters.refused_peer.add(1);
                send(
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
                )
            }
            Err(e) => {
                self.counters.refused_peer.add(1);
                send(
                    &mut session,
                    &Reply::error(
                        ErrorCode::PermissionDenied,
                        format!("the peer's credentials cannot be read: {e}"),
                    ),
                )
            }
        }
    }

    /// Tells a connection why it is not served (if it can take it now) and closes it.
    fn refuse(&mut self, sock: Socket, why: Refusal) {
        let text = match why {
            Refusal::Full => format!(
                "epochgate already serves {} sessions, the most control.max_sessions allows; try again once one has ended",
                self.sessions.len()
            ),
            Refusal::NoFds => format!(
                "epochgate is short of file descriptors (limit {}); try again once sessions have ended",
                fd_limit().map_or_else(|| "unknown".to_string(), |l| l.to_string())
            ),
        };
        // The episode starts before this refusal is counted, so its end line counts it.
        self.trouble(&format!("refusing connections: {text}"));
        match why {
            Refusal::Full => self.counters.refused_max_sessions.add(1),
            Refusal::NoFds => self.counters.refused_no_fds.add(1),
        }
        let _ = sock.send_with_flags(
            &Reply::error(ErrorCode::Busy, text).encode(),
            nix::libc::MSG_NOSIGNAL | nix::libc::MSG_DONTWAIT,
        );
    }

    /// Logs the start of an episode of refusals or accept failures (once).
    fn trouble(&mut self, what: &str) {
        if self.trouble.is_none() {
            eprintln!(
                "epochgate: control socket {}: {what} (logged once until a session is let in again)",
                self.path.display()
            );
            self.trouble = Some(Trouble {
                since: Instant::now(),
                at_start: ControlSnapshot::of(&self.counters),
            });
        }
    }

    /// A session was let in: an episode of refusals is over; says how it went.
    fn settle(&mut self) {
        let Some(t) = self.trouble.take() else { return };
        let now = ControlSnapshot::of(&self.counters);
        eprintln!(
            "epochgate: control socket {}: a session was let in again after {:.1} s: meanwhile {} connection(s) refused at control.max_sessions, {} for want of file descriptors, {} accept failure(s)",
            self.path.display(),
            t.since.elapsed().as_secs_f64(),
            now.refused_max_sessions - t.at_start.refused_max_sessions,
            now.refused_no_fds - t.at_start.refused_no_fds,
            now.accept_errors - t.at_start.accept_errors,
        );
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
                self.counters.bad_messages.add(1);
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
            (Request::Liveness, _) => {
                let reply = Reply::Liveness {
                    ping_interval_ms: self.ping_interval_ms,
                    timeout_ms: self
                        .liveness
                        .map_or(0, |l| u64::try_from(l.as_millis()).unwrap_or(u64::MAX)),
                };
                return send(&mut self.sessions[i], &reply);
            }
            (Request::Hello { vm: name, .. }, Some(have)) => {
                let text = format!(
                    "this session already drives VM {:?}; open another session for {name:?}",
                    self.vms[have].name
                );
                self.counters.refused_other_vm.add(1);
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
                    self.counters.bad_messages.add(1);
                    return send(
                        &mut self.sessions[i],
                        &Reply::error(ErrorCode::Version, text),
                    );
                }
                let Some(vi) = self.vms.iter().position(|v| v.name == name) else {
                    let known: Vec<&str> = self.vms.iter().map(|v| v.name.as_str()).collect();
                    let text = format!("no VM is named {name:?} (configured: {known:?})");
                    self.counters.refused_other_vm.add(1);
                    return send(
                        &mut self.sessions[i],
                        &Reply::error(ErrorCode::UnknownVm, text),
                    );
                };
                if self.owners[vi].is_some() {
                    let text = format!("VM {name:?} is already driven by another session");
                    self.counters.refused_other_vm.add(1);
                    return send(
                        &mut self.sessions[i],
                        &Reply::error(ErrorCode::VmBusy, text),
                    );
                }
                self.owners[vi] = Some(id);
                self.vms[vi].counters.controller.set(1);
                self.sessions[i].vm = Some(vi);
                Op::Adopt
            }
            (req, None) => {
                let text = format!(
                    "{} before Hello: say which VM this session drives first",
                    req.name()
                );
                self.counters.refused_before_hello.add(1);
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
            (Request::Demote, Some(_)) => Op::Demote,
        };
        let vm = self.sessions[i].vm.unwrap_or_default();
        self.sessions[i].waiting = true;
        self.spin_until = Some(Instant::now() + SPIN);
        self.command(Command {
            vm,
            session: id,
            op,
        });
    }

    /// Closes sessions that adopted no VM within `control.hello_timeout_ms` of connecting.
    fn check_hello(&mut self) {
        let limit = self.hello_timeout;
        for s in &mut self.sessions {
            if !s.closed && s.vm.is_none() && !s.waiting && s.opened.elapsed() > limit {
                let text = format!(
                    "no VM adopted within {} ms of connecting (control.hello_timeout_ms): say Hello first; closing",
                    limit.as_millis()
                );
                send(s, &Reply::error(ErrorCode::NotAdopted, text));
                s.closed = true;
                self.counters.hello_timeouts.add(1);
            }
        }
    }

    /// Fails sessions silent past `control.liveness_timeout_ms`. Silence counts from the last
    /// message or answer; a message already waiting in the socket (a ping sent while a command
    /// was with the worker) is heard, and is read in the next round.
    fn check_liveness(&mut self) {
        let Some(limit) = self.liveness else { return };
        for s in &mut self.sessions {
            if !s.closed && !s.waiting && s.last_heard.elapsed() > limit && !message_waiting(s) {
                // The reason stays queued for the VMM, which reads it (after the close) at its
                // next call, also if it was stopped meanwhile.
                let vm =
                    s.vm.map_or_else(String::new, |v| format!("VM {:?} ", self.vms[v].name));
                let text = format!(
                    "liveness timeout: nothing heard from this session (no command, no ping) for {} ms \
                     (control.liveness_timeout_ms), so its controller is taken for dead: {vm}is failed, \
                     its held output discarded (controller-lost); the session is over, connect again and \
                     adopt the VM in a new epoch",
                    limit.as_millis()
                );
                send(s, &Reply::error(ErrorCode::LivenessTimeout, text));
                s.closed = true;
                self.counters.liveness_timeouts.add(1);
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
            if s.why_closed == Some(Closed::NotReading) {
                self.counters.closed_not_reading.add(1);
                self.log_not_reading(&s);
            }
            if let Some(vm) = s.vm {
                self.owners[vm] = None;
                self.vms[vm].counters.controller.set(0);
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

    /// Logs a session closed for not reading: the first at once, then at most one line per
    /// [`NOT_READING_LOG_EVERY`], which counts the others.
    fn log_not_reading(&mut self, s: &Session) {
        let now = Instant::now();
        if let Some((at, more)) = &mut self.not_reading_log {
            if now.duration_since(*at) < NOT_READING_LOG_EVERY {
                *more += 1;
                return;
            }
        }
        let more = self.not_reading_log.map_or(0, |(_, n)| n);
        let vm = s.vm.map_or_else(
            || "no VM".to_string(),
            |v| format!("VM {:?}", self.vms[v].name),
        );
        let also = if more > 0 {
            format!(
                " ({more} more since the last such line, {} in all: closed_not_reading)",
                self.counters.closed_not_reading.get()
            )
        } else {
            String::new()
        };
        eprintln!(
            "epochgate: control socket {}: closed a session ({vm}) that did not read what it was sent: its socket's send buffer ({SESSION_SEND_BUFFER} bytes asked) was full; its VM fails as if its controller were lost{also}",
            self.path.display()
        );
        self.not_reading_log = Some((now, 0));
    }

    /// Carries out the operator requests the admin thread queued; returns their answers, to
    /// be sent once this round has reaped the sessions they closed.
    #[allow(clippy::type_complexity)]
    fn operator_requests(
        &mut self,
    ) -> Vec<(
        mpsc::SyncSender<Result<serde_json::Value, String>>,
        Result<serde_json::Value, String>,
    )> {
        let mut out = Vec::new();
        while let Ok(req) = self.operator.try_recv() {
            let answer = self.operator_fail(&req.vm, &req.by);
            out.push((req.reply, answer));
        }
        out
    }

    /// The operator fails VM `name`: exactly what a lost controller does (the session, if any,
    /// is told why and closed; [`Server::reap`] then fails the VM), or, with no session, what
    /// the loss of one would have done.
    fn operator_fail(&mut self, name: &str, by: &str) -> Result<serde_json::Value, String> {
        let Some(vi) = self.vms.iter().position(|v| v.name == name) else {
            let known: Vec<&str> = self.vms.iter().map(|v| v.name.as_str()).collect();
            return Err(format!("no VM is named {name:?} (configured: {known:?})"));
        };
        let was = self.modes.mode(vi);
        let session = self.owners[vi].and_then(|id| self.sessions.iter_mut().find(|s| s.id == id));
        let now = if was == proto::Mode::Protected {
            proto::Mode::Failed
        } else {
            was
        };
        let closed = match session {
            Some(s) if !s.closed => {
                let text = format!(
                    "the operator failed VM {name:?} through the admin socket ({by}): its controller is taken for dead,                      its held output discarded (controller-lost); the session is over, connect again and adopt the VM in a new epoch"
                );
                // The same code as a liveness timeout: the session is over and the shim does
                // not reconnect by itself.
                send(s, &Reply::error(ErrorCode::LivenessTimeout, text));
                s.closed = true;
                true
            }
            // Closed already this round: reap fails the VM.
            Some(_) => true,
            None if was != proto::Mode::Protected => {
                return Err(format!(
                    "VM {name:?} is {was} and no session drives it: nothing to fail (fail ends a VM's session and discards what a protected VM holds)"
                ));
            }
            None => {
                // A protected VM nobody drives (after a restart): what the loss of its
                // controller would do. Persisted before the answer, as reap does.
                if let Err(e) = self.modes.set(vi, proto::Mode::Failed) {
                    eprintln!("epochgate: {e}");
                }
                self.command(Command {
                    vm: vi,
                    session: EVENT,
                    op: Op::Fail,
                });
                false
            }
        };
        self.counters.operator_failed.add(1);
        eprintln!(
            "epochgate: the operator ({by}) failed VM {name:?} through the admin socket: it was {was}, {}",
            if closed { "its session was told why and closed" } else { "no session drove it" }
        );
        // A session closed here is reaped at the end of this round (its VM fails then), before
        // the answer goes out and before any later message is read.
        Ok(serde_json::json!({
            "failed": name,
            "was": was.to_string(),
            "now": now.to_string(),
            "session": if closed { "closed" } else { "none" },
        }))
    }

    fn shutdown(&mut self) {
        self.flush_outbox();
        let text = self.why.get().map_or(
            "epochgate is stopping: released output is sent, held output is discarded (it can never be proven committed); reconnect to the new process and start a new epoch",
            String::as_str,
        );
        for s in &mut self.sessions {
            send(s, &Reply::error(ErrorCode::ShuttingDown, text));
        }
        self.sessions.clear();
        // The socket file stays (nobody serves it; the next start replaces it): with it, a
        // later start can tell a state file that was deleted from a first start.
    }
}

#[derive(Default)]
struct Ready {
    bell: bool,
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
        // A change to a safer mode that a restart would not know is refused: held output, or
        // a standby copy (demoted: its output is another host's now).
        Err(e)
            if (state::holds(mode) && !state::holds(was))
                || (mode == proto::Mode::Standby && was != proto::Mode::Standby) =>
        {
            Reply::error(
                ErrorCode::Internal,
                format!("{e}: the VM is {mode} now, but a restart of epochgate would not know it"),
            )
        }
        Err(e) => {
            eprintln!("epochgate: {e}");
            reply
        }
    }
}

/// Sends a reply; a peer that cannot take it (gone, or not reading: its send buffer is full)
/// is closed.
fn send(s: &mut Session, reply: &Reply) {
    if s.closed {
        return;
    }
    match s.sock.send_with_flags(
        &reply.encode(),
        nix::libc::MSG_NOSIGNAL | nix::libc::MSG_DONTWAIT,
    ) {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::WouldBlock => {
            s.why_closed = Some(Closed::NotReading);
            s.closed = true;
        }
        Err(_) => s.closed = true,
    }
}

/// Whether a message from the peer is waiting to be read (peeked, left in place).
fn message_waiting(s: &Session) -> bool {
    let mut b = [0u8; 1];
    let flags = MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT;
    matches!(recv(s.sock.as_raw_fd(), &mut b, flags), Ok(n) if n > 0)
}

/// The soft limit on open file descriptors.
fn fd_limit() -> Option<u64> {
    use nix::sys::resource::{getrlimit, Resource};
    getrlimit(Resource::RLIMIT_NOFILE)
        .ok()
        .map(|(soft, _)| soft)
}

/// Whether `sock` (just accepted) leaves fewer than [`FD_HEADROOM`] descriptors free. The
/// kernel hands out the lowest free number, so every number below `sock`'s is in use.
fn fds_short(sock: &Socket) -> bool {
    let fd = u64::try_from(sock.as_raw_fd()).unwrap_or(0);
    fd_limit().is_some_and(|limit| fd + FD_HEADROOM >= limit)
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

#[cfg(test)]
mod tests {
    //! The server's session rules against a real socket and a stand-in worker (no DPDK): the
    //! worker answers when the test says, so time with the worker is exact.
    use super::*;
    use crate::control::Mode;
    use std::sync::Mutex;

    /// A stand-in worker: welcomes, holds every fence for `fence`, commits; records `Fail`s.
    struct FakeWorker {
        quit: Arc<AtomicBool>,
        failed: Arc<Mutex<Vec<VmIdx>>>,
        thread: Option<JoinHandle<()>>,
    }

    impl FakeWorker {
        fn start(rings: Arc<Rings>, fence: Duration) -> FakeWorker {
            let quit = Arc::new(AtomicBool::new(false));
            let failed = Arc::new(Mutex::new(Vec::new()));
            let (q, f) = (quit.clone(), failed.clone());
            let thread = std::thread::spawn(move || {
                while !q.load(Relaxed) {
                    let Some(cmd) = rings.commands.pop() else {
                        std::thread::sleep(Duration::from_millis(1));
                        continue;
                    };
                    let reply = match cmd.op {
                        Op::Adopt => Reply::Welcome {
                            epoch: 1,
                            mode: Mode::Protected,
                        },
                        Op::Fence(epoch) => {
                            std::thread::sleep(fence);
                            Reply::Fenced {
                                epoch,
                                frames: 0,
                                bytes: 0,
                                drain_ns: fence.as_nanos() as u64,
                            }
                        }
                        Op::Commit(epoch) => Reply::Committed { epoch, frames: 0 },
                        Op::Fail => {
                            f.lock().unwrap().push(cmd.vm);
                            continue;
                        }
                        _ => Reply::error(ErrorCode::Internal, "not in this test"),
                    };
                    let answer = Answer {
                        vm: cmd.vm,
                        session: cmd.session,
                        reply: Ok(reply),
                    };
                    assert!(rings.answers.push(answer).is_ok(), "answer ring full");
                    rings.wake();
                }
            });
            FakeWorker {
                quit,
                failed,
                thread: Some(thread),
            }
        }
    }

    impl Drop for FakeWorker {
        fn drop(&mut self) {
            self.quit.store(true, Relaxed);
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    fn start(dir: &Path, cfg: ControlConfig, fence: Duration) -> (ControlServer, FakeWorker) {
        let cfg = ControlConfig {
            socket: dir.join("control.sock"),
            ..cfg
        };
        let rings = Arc::new(Rings::new(1));
        let vms = vec![ControlVm {
            name: "vm".into(),
            counters: Arc::new(VmCounters::default()),
        }];
        let modes = state::Tracker::new(
            dir.join("control.state"),
            vec![("vm".into(), Mode::Passthrough)],
        );
        let workers = Workers::single(rings.clone(), 1);
        let server = ControlServer::start(&cfg, vms, workers, modes).expect("control server");
        (server, FakeWorker::start(rings, fence))
    }

    fn connect(dir: &Path) -> Socket {
        let s = Socket::new(Domain::UNIX, Type::SEQPACKET, None).expect("socket");
        s.connect(&SockAddr::unix(dir.join("control.sock")).expect("addr"))
            .expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        s
    }

    fn say(s: &Socket, req: &Request) {
        s.send(&req.encode()).expect("send");
    }

    fn hear(s: &Socket) -> Reply {
        let mut buf = vec![0u8; MAX_MESSAGE + 1];
        let n = (&*s).read(&mut buf).expect("a reply");
        proto::decode_reply(&buf[..n]).expect("a well-formed reply")
    }

    /// Issue 10, defect 5, as reported: liveness 200 ms, a fence that takes 500 ms, a VMM
    /// pinging every 20 ms meanwhile. The fence's time is not the controller's silence, and the
    /// pings it sent meanwhile are answered once the fence is.
    #[test]
    fn a_long_fence_is_not_silence_and_pings_sent_meanwhile_count() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = ControlConfig {
            liveness_timeout_ms: 200,
            fence_drain_ms: 500,
            ..ControlConfig::default()
        };
        let (server, worker) = start(dir.path(), cfg, Duration::from_millis(500));
        let s = connect(dir.path());
        say(&s, &Request::hello("vm").unwrap());
        assert!(matches!(hear(&s), Reply::Welcome { epoch: 1, .. }));
        say(&s, &Request::Fence { epoch: 1 });
        let pings = 30u64;
        for token in 1..=pings {
            std::thread::sleep(Duration::from_millis(20));
            say(&s, &Request::Ping { token });
        }
        let fenced = hear(&s);
        assert!(
            matches!(fenced, Reply::Fenced { epoch: 1, .. }),
            "{fenced:?}"
        );
        for token in 1..=pings {
            assert_eq!(hear(&s), Reply::Pong { token }, "pong {token} of {pings}");
        }
        say(&s, &Request::Commit { epoch: 1 });
        assert_eq!(
            hear(&s),
            Reply::Committed {
                epoch: 1,
                frames: 0
            }
        );
        assert!(
            worker.failed.lock().unwrap().is_empty(),
            "the VM was failed"
        );
        assert_eq!(server.counters().liveness_timeouts.get(), 0);
        drop(s);
        server.stop();
    }

    /// A session that really is silent still fails its VM.
    #[test]
    fn a_silent_session_is_still_failed() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = ControlConfig {
            liveness_timeout_ms: 200,
            ..ControlConfig::default()
        };
        let (server, worker) = start(dir.path(), cfg, Duration::ZERO);
        let s = connect(dir.path());
        say(&s, &Request::hello("vm").unwrap());
        assert!(matches!(hear(&s), Reply::Welcome { .. }));
        // The settings a shim's pinger follows: a quarter of the timeout by default.
        say(&s, &Request::Liveness);
        assert_eq!(
            hear(&s),
            Reply::Liveness {
                ping_interval_ms: 50,
                timeout_ms: 200
            }
        );
        match hear(&s) {
            Reply::Error { code, text } => {
                assert_eq!(code, ErrorCode::LivenessTimeout);
                assert!(text.contains("control.liveness_timeout_ms"), "{text}");
                assert!(text.contains("VM \"vm\" is failed"), "{text}");
            }
            other => panic!("expected the liveness error, got {other:?}"),
        }
        let start = Instant::now();
        while worker.failed.lock().unwrap().is_empty() {
            assert!(start.elapsed() < Duration::from_secs(30), "VM never failed");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(server.counters().liveness_timeouts.get(), 1);
        server.stop();
    }

    /// A connection that never says Hello is told why and closed after the hello timeout; one
    /// beyond `max_sessions` is refused at once, naming the limit.
    #[test]
    fn silent_and_excess_connections_are_closed_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = ControlConfig {
            hello_timeout_ms: 300,
            max_sessions: 2,
            ..ControlConfig::default()
        };
        let (server, _worker) = start(dir.path(), cfg, Duration::ZERO);
        let quiet = [connect(dir.path()), connect(dir.path())];
        let excess = connect(dir.path());
        match hear(&excess) {
            Reply::Error { code, text } => {
                assert_eq!(code, ErrorCode::Busy);
                assert!(text.contains("control.max_sessions"), "{text}");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        for s in &quiet {
            match hear(s) {
                Reply::Error { code, text } => {
                    assert_eq!(code, ErrorCode::NotAdopted);
                    assert!(text.contains("control.hello_timeout_ms"), "{text}");
                }
                other => panic!("expected the hello timeout, got {other:?}"),
            }
        }
        let c = server.counters();
        assert_eq!(c.refused_max_sessions.get(), 1);
        // Counted just after the error went out.
        let start = Instant::now();
        while c.hello_timeouts.get() < 2 {
            assert!(start.elapsed() < Duration::from_secs(30), "not counted");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(c.hello_timeouts.get(), 2);
        // Room again: a VMM gets in.
        let s = connect(dir.path());
        say(&s, &Request::hello("vm").unwrap());
        assert!(matches!(hear(&s), Reply::Welcome { .. }));
        server.stop();
    }

    /// A session that sends pings and never reads is closed once its send buffer is full,
    /// counted as `closed_not_reading`, and its VM is failed like a lost controller's; another
    /// session goes on meanwhile.
    #[test]
    fn a_session_that_never_reads_is_closed_counted_and_its_vm_failed() {
        let dir = tempfile::tempdir().unwrap();
        let (server, worker) = start(dir.path(), ControlConfig::default(), Duration::ZERO);
        let s = connect(dir.path());
        say(&s, &Request::hello("vm").unwrap());
        // The Welcome stays unread, like everything after it.
        s.set_nonblocking(true).unwrap();
        let c = server.counters();
        let started = Instant::now();
        let mut sent = 0u64;
        while c.closed_not_reading.get() == 0 {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "never closed after {sent} pings"
            );
            match s.send(&Request::Ping { token: sent }.encode()) {
                Ok(_) => sent += 1,
                Err(_) => std::thread::sleep(Duration::from_millis(1)),
            }
        }
        println!("closed after {sent} unread pings");
        while worker.failed.lock().unwrap().is_empty() {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "VM never failed"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(c.closed_not_reading.get(), 1);
        // The VM is free again: a new session adopts it.
        let t = connect(dir.path());
        say(&t, &Request::hello("vm").unwrap());
        assert!(matches!(hear(&t), Reply::Welcome { .. }));
        server.stop();
    }

    /// Commands before Hello, a second Hello and a Hello for a VM another session drives are
    /// refused, counted, and change nothing.
    #[test]
    fn a_session_acts_only_on_its_own_vm_and_refusals_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let (server, worker) = start(dir.path(), ControlConfig::default(), Duration::ZERO);
        let a = connect(dir.path());
        let b = connect(dir.path());
        for req in [
            Request::Fence { epoch: 1 },
            Request::Commit { epoch: 1 },
            Request::Discard,
            Request::Protect,
            Request::Demote,
            Request::Stats,
        ] {
            say(&b, &req);
            assert!(
                matches!(
                    hear(&b),
                    Reply::Error {
                        code: ErrorCode::NotAdopted,
                        ..
                    }
                ),
                "{req:?} before Hello"
            );
        }
        say(&a, &Request::hello("vm").unwrap());
        assert!(matches!(hear(&a), Reply::Welcome { .. }));
        say(&b, &Request::hello("vm").unwrap());
        assert!(matches!(
            hear(&b),
            Reply::Error {
                code: ErrorCode::VmBusy,
                ..
            }
        ));
        say(&a, &Request::hello("vm").unwrap());
        assert!(matches!(
            hear(&a),
            Reply::Error {
                code: ErrorCode::AlreadyAdopted,
                ..
            }
        ));
        say(&b, &Request::hello("nope").unwrap());
        assert!(matches!(
            hear(&b),
            Reply::Error {
                code: ErrorCode::UnknownVm,
                ..
            }
        ));
        let c = server.counters();
        assert_eq!(c.refused_before_hello.get(), 6);
        assert_eq!(c.refused_other_vm.get(), 3);
        // b never adopted: closing it fails nothing; a's VM is untouched by all of it.
        drop(b);
        say(&a, &Request::Fence { epoch: 1 });
        assert!(matches!(hear(&a), Reply::Fenced { epoch: 1, .. }));
        assert!(worker.failed.lock().unwrap().is_empty());
        server.stop();
    }
}
