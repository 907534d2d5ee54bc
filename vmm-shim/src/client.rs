//! The blocking client a VMM uses to drive epochgate over its control socket.
//!
//! One [`Client`] is one session: [`Client::connect`] opens the `SOCK_SEQPACKET` socket and
//! adopts a VM with `Hello`; after that every call sends one request and waits for its one
//! reply. Checkpoint requests that epochgate sends on its own ([`Event`]s) can arrive at any
//! time, also while a call waits for its reply: they are queued for [`Client::next_event`], or
//! handed to the callback set with [`Client::on_event`].
//!
//! A client made by [`Client::connect`] pings epochgate by itself while the session is idle
//! (a background thread, see [`Options`]), at the interval epochgate asks for
//! (`[control] ping_interval_ms`), so a VMM that is merely idle is never taken for a dead one;
//! and when epochgate stops answering (frozen, or its host is), the next call says so
//! ([`ShimError::Unresponsive`]) within the answer timeout (`[control] liveness_timeout_ms`).
//!
//! [`pair`] gives a connected in-process transport whose [`ServerEnd`] plays epochgate, so
//! VMM code can be tested without the appliance.
//!
//! Nothing epochgate sends can make the client panic: whatever is malformed becomes
//! [`ShimError::Proto`], whatever is out of place [`ShimError::Unexpected`].

use std::collections::hash_map::RandomState;
use std::collections::VecDeque;
use std::fmt;
use std::hash::BuildHasher;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{recv, MsgFlags};
use socket2::{Domain, SockAddr, Socket, Type};

use crate::pinger::{Pinger, ANSWER_TIMEOUT_INTERVALS, DEFAULT_PING_INTERVAL};
use crate::proto::{
    decode_reply, decode_request, ErrorCode, Mode, ProtoError, Release, Reply, Request,
    RequestReason, Urgency, VmStats, MAX_MESSAGE,
};

/// How long a call whose send found epochgate gone waits for the pinger to have read what
/// epochgate said before it went (at most; it is normally there at once).
const GONE_PATIENCE: Duration = Duration::from_secs(1);

/// How long a call waits for its reply unless [`Client::set_timeout`] says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a call on the control socket failed.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    /// The socket failed (other than by the peer going away, which is [`ShimError::Closed`]).
    #[error("control socket: {0}")]
    Io(#[from] io::Error),
    /// The control socket could not be reached.
    #[error("cannot connect to {path}: {source}")]
    Connect {
        /// The socket path, as given.
        path: String,
        /// Why `connect(2)` failed.
        source: io::Error,
    },
    /// Epochgate sent a datagram that is not a well-formed message.
    #[error("epochgate sent a malformed message: {0}")]
    Proto(#[from] ProtoError),
    /// Epochgate answered with an `Error`: `text` is its message, unchanged.
    #[error("epochgate refused: {}", refused_text(text, *code))]
    Refused {
        /// What went wrong, for programs.
        code: ErrorCode,
        /// What went wrong, for people (as epochgate wrote it).
        text: String,
    },
    /// Epochgate closed the session (or had already closed it).
    #[error("epochgate closed the session")]
    Closed,
    /// Epochgate answered with a reply of another kind than the request calls for.
    #[error("expected a {expected} reply, got {got}")]
    Unexpected {
        /// The kind of reply the request calls for.
        expected: &'static str,
        /// The kind that came.
        got: &'static str,
    },
    /// No reply came within the timeout ([`Client::set_timeout`]).
    #[error("no reply within the timeout")]
    Timeout,
    /// Epochgate stopped answering: something was sent (a ping of the pinger, or a call) and
    /// nothing at all came back for the answer timeout. The session is over: every later call
    /// says this again.
    #[error(
        "epochgate stopped answering: nothing heard from it for {} ms (the answer timeout is {} ms)",
        silent.as_millis(),
        timeout.as_millis()
    )]
    Unresponsive {
        /// How long ago epochgate was last heard, when the error was returned.
        silent: Duration,
        /// The answer timeout ([`Client::answer_timeout`]).
        timeout: Duration,
    },
    /// The caller passed a value the protocol cannot carry (a bad VM name, epoch 0,
    /// promotion to standby...); nothing was sent.
    #[error("bad argument: {0}")]
    BadArgument(String),
}

fn refused_text(text: &str, code: ErrorCode) -> String {
    if text.is_empty() {
        format!("({code})")
    } else {
        format!("{text} ({code})")
    }
}

impl ShimError {
    /// The code epochgate refused with, for [`ShimError::Refused`]; `None` otherwise.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ShimError::Refused { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// What `Hello` got: the VM's open epoch (0 if none) and mode when the session adopted it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Welcome {
    /// The VM's open epoch, 0 if it is not protected.
    pub epoch: u64,
    /// The VM's mode.
    pub mode: Mode,
}

/// What `Fence` did: `epoch` is sealed with `frames` frames of `bytes` bytes, and draining
/// in-flight frames into it took `drain_ns` nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fenced {
    /// The sealed epoch.
    pub epoch: u64,
    /// Frames held in it.
    pub frames: u64,
    /// Bytes held in it.
    pub bytes: u64,
    /// Time taken to drain in-flight frames into it.
    pub drain_ns: u64,
}

/// A checkpoint request epochgate sent on its own: checkpoint `epoch`, as `urgency` says,
/// because of `reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    /// The epoch to checkpoint.
    pub epoch: u64,
    /// How soon.
    pub urgency: Urgency,
    /// Why.
    pub reason: RequestReason,
}

fn is_gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset | io::ErrorKind::NotConnected
    )
}

/// The instant `t` from now; `None` (wait forever) if `t` is `None` or too far away.
fn deadline_after(t: Option<Duration>) -> Option<Instant> {
    t.and_then(|t| Instant::now().checked_add(t))
}

/// A connected transport: one `SOCK_SEQPACKET` socket, one message per datagram.
#[derive(Debug)]
pub struct Connection {
    sock: Socket,
}

impl Connection {
    /// Connects to epochgate's control socket at `path` (no `Hello` yet: see [`Client::over`]).
    pub fn connect(path: impl AsRef<Path>) -> Result<Connection, ShimError> {
        let path = path.as_ref();
        let connect_err = |source: io::Error| ShimError::Connect {
            path: path.display().to_string(),
            source,
        };
        let addr = SockAddr::unix(path).map_err(connect_err)?;
        // socket2 sets SOCK_CLOEXEC itself.
        let sock = Socket::new(Domain::UNIX, Type::SEQPACKET, None).map_err(connect_err)?;
        sock.connect(&addr).map_err(connect_err)?;
        Ok(Connection { sock })
    }

    /// The socket.
    pub(crate) fn socket(&self) -> &Socket {
        &self.sock
    }

    /// Sends `bytes` as one datagram, without ever raising SIGPIPE.
    pub(crate) fn send(&self, bytes: &[u8]) -> io::Result<()> {
        let n = self.sock.send_with_flags(bytes, nix::libc::MSG_NOSIGNAL)?;
        if n != bytes.len() {
            // SEQPACKET sends all or nothing; this is only a guard.
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("sent {n} of {} bytes", bytes.len()),
            ));
        }
        Ok(())
    }

    /// Waits until the socket is readable (or hung up); `false` when `deadline` passed first.
    pub(crate) fn wait(&self, deadline: Option<Instant>) -> io::Result<bool> {
        loop {
            let timeout = match deadline {
                None => PollTimeout::NONE,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    // Round up so that a wake-up never comes before the deadline.
                    let ms = left.as_nanos().div_ceil(1_000_000);
                    PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
                }
            };
            let mut fds = [PollFd::new(self.sock.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, timeout) {
                Ok(0) => {
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return Ok(false);
                    }
                }
                // Readable, hung up or in error: the read that follows tells which.
                Ok(_) => return Ok(true),
                Err(Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Whether the peer has closed its end.
    fn hung_up(&self) -> io::Result<bool> {
        let mut fds = [PollFd::new(self.sock.as_fd(), PollFlags::POLLIN)];
        loop {
            match poll(&mut fds, PollTimeout::ZERO) {
                Ok(_) => {
                    let revents = fds[0].revents().unwrap_or(PollFlags::empty());
                    return Ok(revents.contains(PollFlags::POLLHUP));
                }
                Err(Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Reads the next datagram, waiting until `deadline`: `Ok(None)` when it passed first,
    /// `Err(Closed)` when the peer has closed. A datagram longer than [`MAX_MESSAGE`] comes
    /// back cut to `MAX_MESSAGE + 1` bytes, which no decoder accepts.
    pub(crate) fn recv(&self, deadline: Option<Instant>) -> Result<Option<Vec<u8>>, ShimError> {
        let mut buf = vec![0u8; MAX_MESSAGE + 1];
        loop {
            if !self.wait(deadline)? {
                return Ok(None);
            }
            match recv(self.sock.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
                // On SEQPACKET a read of 0 is the peer's end or an empty datagram: the hang-up
                // flag tells which.
                Ok(0) if self.hung_up()? => return Err(ShimError::Closed),
                Ok(n) => {
                    buf.truncate(n);
                    return Ok(Some(buf));
                }
                Err(Errno::EAGAIN | Errno::EINTR) => {}
                Err(Errno::ECONNRESET) => {
                    // The peer closed with something of ours unread. Linux reports that
                    // (once) before the datagrams the peer sent us that are still queued,
                    // such as the `Error` epochgate sends a peer it refuses right after
                    // accepting it: look again, so that it is not lost.
                    return match recv(self.sock.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
                        Ok(n) if n > 0 => {
                            buf.truncate(n);
                            Ok(Some(buf))
                        }
                        _ => Err(ShimError::Closed),
                    };
                }
                Err(Errno::EPIPE | Errno::ENOTCONN) => return Err(ShimError::Closed),
                Err(e) => return Err(ShimError::Io(e.into())),
            }
        }
    }
}

impl AsFd for Connection {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

type Callback = Box<dyn FnMut(Event) + Send + 'static>;

/// How a [`Client`] keeps its session alive. `Options::default()` is what
/// [`Client::connect`] uses: the pinger on, at the interval and timeout epochgate says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Ping epochgate from a background thread while the session is idle (default `true`).
    /// Off, nothing is sent but the caller's calls: a caller that pings itself (every
    /// `[control] ping_interval_ms`) wants this, and then notices a silent epochgate only by
    /// its calls' timeouts ([`Client::set_timeout`]).
    pub pinger: bool,
    /// How often to ping while idle. `None` (the default): what epochgate says
    /// (`[control] ping_interval_ms`, asked with a `Liveness` request right after `Hello`);
    /// an older epochgate that does not know that request: 1 s.
    pub ping_interval: Option<Duration>,
    /// How long with something sent and nothing back means epochgate stopped answering.
    /// `None` (the default): epochgate's `[control] liveness_timeout_ms`, or 4 ping intervals
    /// when it has none (0, or an older epochgate).
    pub answer_timeout: Option<Duration>,
    /// How long [`Client::reconnect`] keeps trying to reach epochgate again on the same socket
    /// path after the session ended (epochgate said it is shutting down, or the socket closed):
    /// an upgrade restarts it, and the new process takes a moment to listen. `None` (the
    /// default): one attempt.
    pub reconnect: Option<Duration>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            pinger: true,
            ping_interval: None,
            answer_timeout: None,
            reconnect: None,
        }
    }
}

impl Options {
    /// No pinger: the session is driven by the caller's calls alone.
    pub fn without_pinger() -> Options {
        Options {
            pinger: false,
            ..Options::default()
        }
    }
}

/// What the calls read and write: the socket itself, or the pinger's inbox in front of it.
#[derive(Debug)]
enum Link {
    Direct(Connection),
    Pinged(Pinger),
}

impl Link {
    fn send(&self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Link::Direct(c) => c.send(bytes),
            Link::Pinged(p) => p.send(bytes),
        }
    }

    fn recv(&self, deadline: Option<Instant>) -> Result<Option<Vec<u8>>, ShimError> {
        match self {
            Link::Direct(c) => c.recv(deadline),
            Link::Pinged(p) => p.recv(deadline),
        }
    }

    /// A message epochgate sent before it went away, without waiting for more. With the
    /// pinger, which reads the socket, that waits for it to have read up to the close (it is
    /// gone: that comes at once).
    fn recv_queued(&self) -> Result<Option<Vec<u8>>, ShimError> {
        match self {
            Link::Direct(c) => c.recv(Some(Instant::now())),
            Link::Pinged(p) => p.recv(deadline_after(Some(p.timeout().min(GONE_PATIENCE)))),
        }
    }

    fn unresponsive(&self) -> Option<ShimError> {
        match self {
            Link::Direct(_) => None,
            Link::Pinged(p) => p.unresponsive(),
        }
    }
}

impl AsFd for Link {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Link::Direct(c) => c.as_fd(),
            Link::Pinged(p) => p.as_fd(),
        }
    }
}

/// One session with epochgate, driving one VM. See the [module docs](self).
///
/// Calls are blocking and answered in order; each waits at most the timeout
/// ([`Client::set_timeout`], 30 s by default) for its reply. A reply that comes after its
/// call timed out is recognised and skipped, so the session stays in step.
pub struct Client {
    link: Link,
    vm: String,
    welcome: Welcome,
    timeout: Option<Duration>,
    queue: VecDeque<Event>,
    callback: Option<Callback>,
    /// Replies still owed to calls that timed out; they are skipped when they come.
    stale: usize,
    /// The session is over: epochgate closed it or said it is shutting down.
    closed: bool,
    /// Epochgate ended the session with this refusal (a liveness timeout): every later call
    /// returns it again rather than a bare "closed".
    over: Option<(ErrorCode, String)>,
    /// What epochgate said when it ended the session (shutting down, a liveness timeout).
    last_word: Option<(ErrorCode, String)>,
    /// The socket path [`Client::connect`] used (none over a given transport), for
    /// [`Client::reconnect`].
    socket: Option<PathBuf>,
    /// The options the session was made with, for [`Client::reconnect`].
    opts: Options,
}

/// What [`Client::reconnect`] got: a new session with a new process (or the same one), in a
/// **new epoch**.
///
/// The epochs of the old session are gone: epochgate discarded what it held of them when it
/// stopped (they could never be proven committed), so fencing or committing them again is
/// refused. Whatever the VMM's own checkpoint loop had in flight (the checkpoint of a sealed
/// epoch in transfer, the open epoch) must be redone from `welcome.epoch`: the guest output of
/// those epochs was dropped, and only a new checkpoint makes the guest's state and its output
/// agree again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reconnected {
    /// The new session's `Welcome`: the VM's open epoch (a VM that was protected comes back
    /// protected, holding its output in a new open epoch) and mode.
    pub welcome: Welcome,
    /// The old session's `Welcome`.
    pub previous: Welcome,
    /// What epochgate said when it ended the old session, if it said anything (e.g.
    /// `shutting-down` and its text); `None` if the socket just closed.
    pub why: Option<(ErrorCode, String)>,
    /// How many connection attempts it took (1: the first worked).
    pub attempts: u32,
}

/// How long [`Client::reconnect`] waits between attempts.
const RECONNECT_RETRY: Duration = Duration::from_millis(50);

/// Whether a failed reconnection attempt may work later: epochgate is not (yet) there, or is
/// still on its way out.
fn worth_retrying(e: &ShimError) -> bool {
    match e {
        ShimError::Connect { .. }
        | ShimError::Closed
        | ShimError::Io(_)
        | ShimError::Timeout
        | ShimError::Unresponsive { .. } => true,
        ShimError::Refused { code, .. } => *code == ErrorCode::ShuttingDown,
        _ => false,
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("link", &self.link)
            .field("vm", &self.vm)
            .field("welcome", &self.welcome)
            .field("timeout", &self.timeout)
            .field("queue", &self.queue)
            .field("callback", &self.callback.is_some())
            .field("stale", &self.stale)
            .field("closed", &self.closed)
            .field("over", &self.over)
            .field("last_word", &self.last_word)
            .field("socket", &self.socket)
            .field("opts", &self.opts)
            .finish()
    }
}

impl Client {
    /// Connects to epochgate's control socket and adopts VM `vm` (`Hello`).
    ///
    /// `Err(Refused)` if epochgate answers with an `Error` (no such VM, VM busy, permission
    /// denied...), with its code and text.
    ///
    /// The client pings by itself while idle ([`Options::default`]); see
    /// [`Client::connect_with`] to choose.
    pub fn connect(socket: impl AsRef<Path>, vm: &str) -> Result<Client, ShimError> {
        Client::connect_with(socket, vm, Options::default())
    }

    /// [`Client::connect`] with the pinger as `opts` say.
    pub fn connect_with(
        socket: impl AsRef<Path>,
        vm: &str,
        opts: Options,
    ) -> Result<Client, ShimError> {
        // Check the name before touching the socket: a bad one is the caller's mistake.
        Request::hello(vm).map_err(|e| ShimError::BadArgument(e.to_string()))?;
        let socket = socket.as_ref();
        let mut client = Client::over_with(Connection::connect(socket)?, vm, opts)?;
        client.socket = Some(socket.to_path_buf());
        Ok(client)
    }

    /// Adopts VM `vm` (`Hello`) over an already connected transport, e.g. one end of
    /// [`pair`]. No pinger (the peer is often a test's fake epochgate, which then sees only
    /// the calls); [`Client::over_with`] to have one.
    pub fn over(conn: Connection, vm: &str) -> Result<Client, ShimError> {
        Client::over_with(conn, vm, Options::without_pinger())
    }

    /// Adopts VM `vm` (`Hello`) over an already connected transport, with the pinger as
    /// `opts` say. With the pinger on, a `Liveness` request follows the `Hello` (unless
    /// `opts` set both the interval and the timeout) and the pinger starts after its answer.
    pub fn over_with(conn: Connection, vm: &str, opts: Options) -> Result<Client, ShimError> {
        let hello = Request::hello(vm).map_err(|e| ShimError::BadArgument(e.to_string()))?;
        let mut client = Client {
            link: Link::Direct(conn),
            vm: vm.to_string(),
            welcome: Welcome {
                epoch: 0,
                mode: Mode::Passthrough,
            },
            timeout: Some(DEFAULT_TIMEOUT),
            queue: VecDeque::new(),
            callback: None,
            stale: 0,
            closed: false,
            over: None,
            last_word: None,
            socket: None,
            opts,
        };
        match client.checked(&hello)? {
            Reply::Welcome { epoch, mode } => client.welcome = Welcome { epoch, mode },
            other => return Err(unexpected("welcome", &other)),
        }
        if opts.pinger {
            client.start_pinger(opts)?;
        }
        Ok(client)
    }

    /// Asks epochgate for its liveness settings (unless `opts` fix both) and hands the socket
    /// to a pinger.
    fn start_pinger(&mut self, opts: Options) -> Result<(), ShimError> {
        let (mut interval, mut timeout) = (opts.ping_interval, opts.answer_timeout);
        if interval.is_none() || timeout.is_none() {
            // An older epochgate answers with an Error (unknown kind) and changes nothing.
            // A session that ends here (closed, shutting down) is reported by the next call.
            if let Ok(Reply::Liveness {
                ping_interval_ms,
                timeout_ms,
            }) = self.request(&Request::Liveness)
            {
                interval = interval.or(Some(Duration::from_millis(ping_interval_ms)));
                if timeout_ms > 0 {
                    timeout = timeout.or(Some(Duration::from_millis(timeout_ms)));
                }
            }
        }
        let interval = interval
            .filter(|i| !i.is_zero())
            .unwrap_or(DEFAULT_PING_INTERVAL);
        let timeout = timeout
            .filter(|t| !t.is_zero())
            .unwrap_or(interval.saturating_mul(ANSWER_TIMEOUT_INTERVALS));
        let Link::Direct(conn) = std::mem::replace(&mut self.link, Link::Direct(placeholder()?))
        else {
            return Ok(());
        };
        self.link = Link::Pinged(Pinger::start(conn, interval, timeout)?);
        Ok(())
    }

    /// How often the pinger pings while idle; `None` without a pinger.
    pub fn ping_interval(&self) -> Option<Duration> {
        match &self.link {
            Link::Pinged(p) => Some(p.interval()),
            Link::Direct(_) => None,
        }
    }

    /// How long the pinger waits for any answer before the session counts epochgate as
    /// stopped ([`ShimError::Unresponsive`]); `None` without a pinger.
    pub fn answer_timeout(&self) -> Option<Duration> {
        match &self.link {
            Link::Pinged(p) => Some(p.timeout()),
            Link::Direct(_) => None,
        }
    }

    /// Whether the session is over (epochgate closed it, said it is shutting down, or failed
    /// it): every call but [`Client::reconnect`] fails from then on.
    pub fn is_over(&self) -> bool {
        self.closed
    }

    /// What epochgate said when it ended the session (`shutting-down` when it stops for an
    /// upgrade, `liveness-timeout`), if it has.
    pub fn ended_because(&self) -> Option<(ErrorCode, &str)> {
        self.last_word.as_ref().map(|(c, t)| (*c, t.as_str()))
    }

    /// Starts a new session for the same VM on the same socket path, retrying for up to
    /// [`Options::reconnect`] (one attempt if that is `None`): see
    /// [`Client::reconnect_within`].
    pub fn reconnect(&mut self) -> Result<Reconnected, ShimError> {
        self.reconnect_within(self.opts.reconnect.unwrap_or(Duration::ZERO))
    }

    /// Ends this session (if it is not over yet) and starts a new one for the same VM on the
    /// same socket path: connects, `Hello`, and with the pinger its `Liveness` request, with
    /// the options the client was made with. While epochgate is not there (the old process
    /// is on its way out, the new one not listening yet) or answers that it is shutting down,
    /// it tries again every 50 ms until `within` has passed; any other refusal (no such VM,
    /// the VM has another session, permission denied) is returned at once.
    ///
    /// The new session is in a **new epoch** ([`Reconnected`]): the old session's epochs are
    /// gone with what they held. Checkpoint requests of the old session still queued are
    /// dropped (they name its epochs); the callback and the call timeout are kept. On failure
    /// the client stays over, and `reconnect` may be called again.
    ///
    /// A client made over a given transport ([`Client::over`]) has no path to reconnect to:
    /// `Err(BadArgument)`.
    pub fn reconnect_within(&mut self, within: Duration) -> Result<Reconnected, ShimError> {
        let Some(path) = self.socket.clone() else {
            return Err(ShimError::BadArgument(
                "this session was made over a given transport, not a socket path: there is nothing to reconnect to".into(),
            ));
        };
        // The old session ends here: its socket (and pinger) go.
        self.link = Link::Direct(placeholder()?);
        self.closed = true;
        let deadline = deadline_after(Some(within));
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let err = match Connection::connect(&path)
                .and_then(|c| Client::over_with(c, &self.vm, self.opts))
            {
                Ok(mut fresh) => {
                    fresh.socket = Some(path);
                    fresh.timeout = self.timeout;
                    fresh.callback = self.callback.take();
                    let old = std::mem::replace(self, fresh);
                    return Ok(Reconnected {
                        welcome: self.welcome,
                        previous: old.welcome,
                        why: old.last_word,
                        attempts,
                    });
                }
                Err(e) => e,
            };
            let now = Instant::now();
            match deadline {
                Some(d) if now < d && worth_retrying(&err) => {
                    std::thread::sleep(RECONNECT_RETRY.min(d - now));
                }
                None if worth_retrying(&err) => std::thread::sleep(RECONNECT_RETRY),
                _ => return Err(err),
            }
        }
    }

    /// What `Hello` got.
    pub fn welcome(&self) -> Welcome {
        self.welcome
    }

    /// The VM this session drives.
    pub fn vm(&self) -> &str {
        &self.vm
    }

    /// How long each call waits for its reply; `None` waits forever. Default: 30 s.
    pub fn set_timeout(&mut self, t: Option<Duration>) {
        self.timeout = t;
    }

    /// Starts protection; returns the first protected (open) epoch.
    pub fn protect(&mut self) -> Result<u64, ShimError> {
        match self.call(Request::Protect)? {
            Reply::Protected { epoch } => Ok(epoch),
            other => Err(unexpected("protected", &other)),
        }
    }

    /// Seals epoch `epoch` (the open one); frames sent after this belong to the next.
    pub fn fence(&mut self, epoch: u64) -> Result<Fenced, ShimError> {
        match self.call(Request::Fence { epoch })? {
            Reply::Fenced {
                epoch,
                frames,
                bytes,
                drain_ns,
            } => Ok(Fenced {
                epoch,
                frames,
                bytes,
                drain_ns,
            }),
            other => Err(unexpected("fenced", &other)),
        }
    }

    /// Declares the checkpoint of sealed epoch `epoch` durable; returns the frames released.
    pub fn commit(&mut self, epoch: u64) -> Result<u64, ShimError> {
        match self.call(Request::Commit { epoch })? {
            Reply::Committed { frames, .. } => Ok(frames),
            other => Err(unexpected("committed", &other)),
        }
    }

    /// Stops protection; held frames are released or dropped as `how` says. Returns
    /// `(released, dropped)`.
    pub fn unprotect(&mut self, how: Release) -> Result<(u64, u64), ShimError> {
        match self.call(Request::Unprotect { how })? {
            Reply::Unprotected { released, dropped } => Ok((released, dropped)),
            other => Err(unexpected("unprotected", &other)),
        }
    }

    /// Drops every held frame (e.g. after a failed checkpoint); returns how many.
    pub fn discard(&mut self) -> Result<u64, ShimError> {
        match self.call(Request::Discard)? {
            Reply::Discarded { frames } => Ok(frames),
            other => Err(unexpected("discarded", &other)),
        }
    }

    /// Makes this (standby) VM live in `mode` (passthrough or protected); returns the number
    /// of announcements sent for it.
    pub fn promote(&mut self, mode: Mode) -> Result<u32, ShimError> {
        match self.call(Request::Promote { mode })? {
            Reply::Promoted { announced, .. } => Ok(announced),
            other => Err(unexpected("promoted", &other)),
        }
    }

    /// Returns this VM to standby (its output stops leaving this host; what it held or had
    /// waiting is dropped); returns how many frames were dropped.
    pub fn demote(&mut self) -> Result<u64, ShimError> {
        match self.call(Request::Demote)? {
            Reply::Demoted { dropped } => Ok(dropped),
            other => Err(unexpected("demoted", &other)),
        }
    }

    /// Checks that epochgate answers, with a fresh random token that the `Pong` must echo.
    pub fn ping(&mut self) -> Result<(), ShimError> {
        let token = RandomState::new().hash_one(Instant::now());
        match self.call(Request::Ping { token })? {
            Reply::Pong { token: got } if got == token => Ok(()),
            Reply::Pong { token: got } => Err(ShimError::Proto(ProtoError::Field {
                kind: "pong",
                field: "token",
                why: format!("the ping carried {token:#018x} but the pong echoes {got:#018x}"),
            })),
            other => Err(unexpected("pong", &other)),
        }
    }

    /// The VM's mode and counters.
    pub fn stats(&mut self) -> Result<VmStats, ShimError> {
        match self.call(Request::Stats)? {
            Reply::Stats(s) => Ok(s),
            other => Err(unexpected("stats", &other)),
        }
    }

    /// Sends one request and returns its reply as it came: an `Error` reply is
    /// `Ok(Reply::Error { .. })` here, not `Err`. Events that arrive meanwhile are queued (or
    /// given to the callback). The request is sent as it is, even one that fails
    /// [`Request::validate`].
    pub fn request(&mut self, req: &Request) -> Result<Reply, ShimError> {
        self.exchange(&req.encode())
    }

    /// Sends arbitrary bytes as one datagram and returns the next reply that is not an event
    /// (for tests of malformed input).
    pub fn request_raw(&mut self, bytes: &[u8]) -> Result<Reply, ShimError> {
        self.exchange(bytes)
    }

    /// The next checkpoint request: queued ones first, else waits up to `timeout` (`None` =
    /// forever, `Some(Duration::ZERO)` = just check). `Ok(None)` on timeout.
    ///
    /// With a callback set ([`Client::on_event`]), events that arrive go to it instead: this
    /// then waits (up to `timeout`) for the first, hands it and any other already readable
    /// ones to the callback, and returns `Ok(None)`; events queued before the callback was
    /// set are still returned here first.
    ///
    /// An `Error` epochgate sends on its own (it is shutting down, or gave up on a silent
    /// session) is `Err(Refused)`; the session is over after it.
    pub fn next_event(&mut self, timeout: Option<Duration>) -> Result<Option<Event>, ShimError> {
        if let Some(e) = self.queue.pop_front() {
            return Ok(Some(e));
        }
        let mut deadline = deadline_after(timeout);
        let mut delivered = false;
        loop {
            let reply = match self.read_message(deadline) {
                Ok(Some(reply)) => reply,
                Ok(None) => return Ok(None),
                // The callback got what came before the close; the next call reports it.
                Err(ShimError::Closed) if delivered => return Ok(None),
                Err(e) => return Err(e),
            };
            match reply {
                Reply::CheckpointRequest {
                    epoch,
                    urgency,
                    reason,
                } => {
                    let event = Event {
                        epoch,
                        urgency,
                        reason,
                    };
                    match &mut self.callback {
                        Some(cb) => {
                            cb(event);
                            // Hand on what else is already there, without waiting.
                            deadline = Some(Instant::now());
                            delivered = true;
                        }
                        None => return Ok(Some(event)),
                    }
                }
                Reply::Error { code, text } if ends_session(code) => {
                    return Err(ShimError::Refused { code, text });
                }
                // A late reply to a call that timed out.
                _ if self.stale > 0 => self.stale -= 1,
                Reply::Error { code, text } => {
                    self.closed = true;
                    return Err(ShimError::Refused { code, text });
                }
                other => return Err(unexpected("checkpoint-request", &other)),
            }
        }
    }

    /// From now on every event is given to `f` as soon as the client reads it (during any
    /// call, or in [`Client::next_event`]) instead of being queued. `f` runs on the thread
    /// making the call.
    pub fn on_event(&mut self, f: impl FnMut(Event) + Send + 'static) {
        self.callback = Some(Box::new(f));
    }

    /// Removes the callback set with [`Client::on_event`]: events are queued again.
    pub fn clear_on_event(&mut self) {
        self.callback = None;
    }

    // --- internals ----------------------------------------------------------------------

    /// Validates and sends `req`; an `Error` reply becomes `Err(Refused)`.
    fn call(&mut self, req: Request) -> Result<Reply, ShimError> {
        req.validate()
            .map_err(|e| ShimError::BadArgument(e.to_string()))?;
        self.checked(&req)
    }

    /// Sends `req`; an `Error` reply becomes `Err(Refused)`.
    fn checked(&mut self, req: &Request) -> Result<Reply, ShimError> {
        match self.request(req)? {
            Reply::Error { code, text } => Err(ShimError::Refused { code, text }),
            other => Ok(other),
        }
    }

    fn exchange(&mut self, bytes: &[u8]) -> Result<Reply, ShimError> {
        let deadline = deadline_after(self.timeout);
        self.send_bytes(bytes)?;
        self.await_reply(deadline)
    }

    /// The error every call returns once the session is over.
    fn ended(&self) -> ShimError {
        match &self.over {
            Some((code, text)) => ShimError::Refused {
                code: *code,
                text: text.clone(),
            },
            None => ShimError::Closed,
        }
    }

    /// Notes a refusal that ends the session (a liveness timeout), for every later call.
    fn note_end(&mut self, reply: &Reply) {
        if let Reply::Error { code, text } = reply {
            if ends_session(*code) {
                self.closed = true;
                self.last_word = Some((*code, text.clone()));
                if *code == ErrorCode::LivenessTimeout {
                    self.over = Some((*code, text.clone()));
                }
            }
        }
    }

    fn send_bytes(&mut self, bytes: &[u8]) -> Result<(), ShimError> {
        if self.closed {
            return Err(self.ended());
        }
        if let Some(e) = self.link.unresponsive() {
            return Err(e);
        }
        match self.link.send(bytes) {
            Ok(()) => Ok(()),
            Err(e) if is_gone(&e) => {
                // Epochgate is gone; what it said last may still be waiting to be read (an
                // `Error` saying why: shutting down, permission denied...).
                self.closed = true;
                loop {
                    match self.read_queued() {
                        Ok(Some(Reply::CheckpointRequest {
                            epoch,
                            urgency,
                            reason,
                        })) => self.deliver(Event {
                            epoch,
                            urgency,
                            reason,
                        }),
                        Ok(Some(Reply::Error { code, text })) => {
                            self.note_end(&Reply::Error {
                                code,
                                text: text.clone(),
                            });
                            return Err(ShimError::Refused { code, text });
                        }
                        Ok(Some(_)) => {}
                        Ok(None) | Err(ShimError::Closed) => return Err(ShimError::Closed),
                        Err(e) => return Err(e),
                    }
                }
            }
            Err(e) => Err(ShimError::Io(e)),
        }
    }

    /// A message already received, without waiting (even once the session is marked closed).
    fn read_queued(&mut self) -> Result<Option<Reply>, ShimError> {
        match self.link.recv_queued()? {
            Some(bytes) => Ok(Some(decode(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Reads one message, waiting until `deadline` (`Ok(None)` when it passed first).
    fn read_message(&mut self, deadline: Option<Instant>) -> Result<Option<Reply>, ShimError> {
        if self.closed {
            return Err(self.ended());
        }
        let bytes = match self.link.recv(deadline) {
            Ok(Some(b)) => b,
            Ok(None) => return Ok(None),
            Err(e) => {
                if matches!(e, ShimError::Closed) {
                    self.closed = true;
                }
                return Err(e);
            }
        };
        let reply = decode(&bytes)?;
        // Epochgate closes the session right after saying it is shutting down, or that the
        // session missed its pings.
        self.note_end(&reply);
        Ok(Some(reply))
    }

    /// Waits for the reply to the request just sent, handing events on as they come.
    fn await_reply(&mut self, deadline: Option<Instant>) -> Result<Reply, ShimError> {
        loop {
            let Some(reply) = self.read_message(deadline)? else {
                self.stale += 1;
                return Err(ShimError::Timeout);
            };
            match reply {
                Reply::CheckpointRequest {
                    epoch,
                    urgency,
                    reason,
                } => self.deliver(Event {
                    epoch,
                    urgency,
                    reason,
                }),
                Reply::Error { code, .. } if ends_session(code) => return Ok(reply),
                // A late reply to a call that timed out.
                _ if self.stale > 0 => self.stale -= 1,
                _ => return Ok(reply),
            }
        }
    }

    fn deliver(&mut self, event: Event) {
        match &mut self.callback {
            Some(cb) => cb(event),
            None => self.queue.push_back(event),
        }
    }
}

impl AsFd for Client {
    /// The socket, to poll for events. It turns readable when a message arrives; events read
    /// during a call are queued inside the client, so check [`Client::next_event`] with
    /// `Some(Duration::ZERO)` after each call before polling (or use [`Client::on_event`]).
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.link.as_fd()
    }
}

/// Whether epochgate closes the session right after an `Error` with this code, sent on its
/// own (not the answer to a call).
fn ends_session(code: ErrorCode) -> bool {
    matches!(code, ErrorCode::ShuttingDown | ErrorCode::LivenessTimeout)
}

/// A connected socket pair's end that stands in for a moment while the real socket moves.
fn placeholder() -> Result<Connection, ShimError> {
    let (a, _) = Socket::pair(Domain::UNIX, Type::SEQPACKET, None)?;
    Ok(Connection { sock: a })
}

fn decode(bytes: &[u8]) -> Result<Reply, ProtoError> {
    if bytes.len() > MAX_MESSAGE {
        // The read was cut at MAX_MESSAGE + 1: the real datagram was at least that long.
        return Err(ProtoError::Oversize { len: bytes.len() });
    }
    decode_reply(bytes)
}

fn unexpected(expected: &'static str, got: &Reply) -> ShimError {
    ShimError::Unexpected {
        expected,
        got: got.name(),
    }
}

/// The server side of [`pair`]: what epochgate would be, for tests of VMM code without it.
#[derive(Debug)]
pub struct ServerEnd {
    conn: Connection,
}

impl ServerEnd {
    /// The server end of an accepted connection (for tests with a real socket path).
    #[cfg(test)]
    pub(crate) fn from_socket(sock: Socket) -> ServerEnd {
        ServerEnd {
            conn: Connection { sock },
        }
    }

    /// The next request, waiting as long as it takes; `Err(Closed)` when the client closed,
    /// `Err(Proto)` for a malformed datagram.
    pub fn recv(&mut self) -> Result<Request, ShimError> {
        match self.conn.recv(None)? {
            Some(bytes) => Ok(decode_request(&bytes)?),
            None => Err(ShimError::Timeout),
        }
    }

    /// The next request, waiting at most `t`; `Ok(None)` if none came.
    pub fn recv_timeout(&mut self, t: Duration) -> Result<Option<Request>, ShimError> {
        match self.conn.recv(deadline_after(Some(t)))? {
            Some(bytes) => Ok(Some(decode_request(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Sends a reply or an event.
    pub fn send(&mut self, reply: &Reply) -> Result<(), ShimError> {
        self.send_raw(&reply.encode())
    }

    /// Sends arbitrary bytes as one datagram.
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ShimError> {
        self.conn.send(bytes).map_err(|e| {
            if is_gone(&e) {
                ShimError::Closed
            } else {
                ShimError::Io(e)
            }
        })
    }
}

impl AsFd for ServerEnd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.conn.as_fd()
    }
}

/// A connected in-process pair (`socketpair(AF_UNIX, SOCK_SEQPACKET)`): use
/// [`Client::over`] on the [`Connection`] and serve the [`ServerEnd`] from another thread.
pub fn pair() -> Result<(Connection, ServerEnd), ShimError> {
    let (a, b) = Socket::pair(Domain::UNIX, Type::SEQPACKET, None)?;
    Ok((
        Connection { sock: a },
        ServerEnd {
            conn: Connection { sock: b },
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::thread::{self, JoinHandle};

    const VM: &str = "web";

    /// A client over `pair()` whose server answers `Hello` with a welcome and then runs
    /// `serve`.
    fn session<F>(serve: F) -> (Client, JoinHandle<()>)
    where
        F: FnOnce(&mut ServerEnd) + Send + 'static,
    {
        let (conn, mut server) = pair().unwrap();
        let t = thread::spawn(move || {
            assert_eq!(server.recv().unwrap(), Request::hello(VM).unwrap());
            server
                .send(&Reply::Welcome {
                    epoch: 4,
                    mode: Mode::Protected,
                })
                .unwrap();
            serve(&mut server);
        });
        let client = Client::over(conn, VM).unwrap();
        (client, t)
    }

    fn event(epoch: u64) -> Reply {
        Reply::CheckpointRequest {
            epoch,
            urgency: Urgency::Within { ns: 1_000 * epoch },
            reason: RequestReason::HighWater,
        }
    }

    #[test]
    fn every_call_has_a_happy_path() {
        let stats = VmStats {
            mode: Mode::Protected,
            open_epoch: 5,
            sealed_epoch: 4,
            committed_epoch: 3,
            held_frames: 7,
            held_bytes: 700,
            rx_frames: 100,
            tx_frames: 90,
            dropped: 1,
        };
        let (mut c, t) = session(move |s| loop {
            let req = match s.recv() {
                Ok(r) => r,
                Err(ShimError::Closed) => return,
                Err(e) => panic!("{e}"),
            };
            let reply = match req {
                Request::Protect => Reply::Protected { epoch: 4 },
                Request::Fence { epoch } => Reply::Fenced {
                    epoch,
                    frames: 10,
                    bytes: 640,
                    drain_ns: 1234,
                },
                Request::Commit { epoch } => Reply::Committed { epoch, frames: 10 },
                Request::Unprotect { how } => Reply::Unprotected {
                    released: if how == Release::Release { 3 } else { 0 },
                    dropped: if how == Release::Drop { 3 } else { 0 },
                },
                Request::Discard => Reply::Discarded { frames: 2 },
                Request::Promote { mode } => Reply::Promoted { mode, announced: 6 },
                Request::Demote => Reply::Demoted { dropped: 5 },
                Request::Ping { token } => Reply::Pong { token },
                Request::Stats => Reply::Stats(stats),
                Request::Hello { .. } => Reply::error(ErrorCode::AlreadyAdopted, "again?"),
                Request::Liveness => Reply::Liveness {
                    ping_interval_ms: 1,
                    timeout_ms: 2,
                },
            };
            s.send(&reply).unwrap();
        });
        assert_eq!(
            c.welcome(),
            Welcome {
                epoch: 4,
                mode: Mode::Protected
            }
        );
        assert_eq!(c.vm(), VM);
        assert_eq!(c.protect().unwrap(), 4);
        assert_eq!(
            c.fence(4).unwrap(),
            Fenced {
                epoch: 4,
                frames: 10,
                bytes: 640,
                drain_ns: 1234
            }
        );
        assert_eq!(c.commit(4).unwrap(), 10);
        assert_eq!(c.unprotect(Release::Release).unwrap(), (3, 0));
        assert_eq!(c.unprotect(Release::Drop).unwrap(), (0, 3));
        assert_eq!(c.discard().unwrap(), 2);
        assert_eq!(c.promote(Mode::Passthrough).unwrap(), 6);
        assert_eq!(c.demote().unwrap(), 5);
        c.ping().unwrap();
        c.ping().unwrap();
        assert_eq!(c.stats().unwrap(), stats);
        assert_eq!(
            c.request(&Request::Stats).unwrap(),
            Reply::Stats(stats),
            "request() returns the reply as it came"
        );
        assert_eq!(
            c.request(&Request::hello(VM).unwrap()).unwrap(),
            Reply::error(ErrorCode::AlreadyAdopted, "again?"),
            "an Error reply is Ok for request()"
        );
        assert_eq!(c.next_event(Some(Duration::ZERO)).unwrap(), None);
        drop(c);
        t.join().unwrap();
    }

    #[test]
    fn error_replies_become_refused_with_code_and_text_intact() {
        let texts = [
            (
                ErrorCode::WrongEpoch,
                "fence of epoch 9, but the open epoch is 5",
            ),
            (ErrorCode::NotSealed, "épоch «5» is not sealed ✓"),
            (ErrorCode::Other(77), ""),
        ];
        let (mut c, t) = session(move |s| {
            for (code, text) in texts {
                s.recv().unwrap();
                s.send(&Reply::error(code, text)).unwrap();
            }
        });
        let e = c.fence(9).unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::WrongEpoch));
        assert!(
            matches!(&e, ShimError::Refused { text, .. } if text == texts[0].1),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "epochgate refused: fence of epoch 9, but the open epoch is 5 (wrong-epoch)"
        );
        match c.commit(5).unwrap_err() {
            ShimError::Refused { code, text } => {
                assert_eq!(code, ErrorCode::NotSealed);
                assert_eq!(text, texts[1].1);
            }
            e => panic!("{e:?}"),
        }
        let e = c.discard().unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::Other(77)));
        assert_eq!(e.to_string(), "epochgate refused: (other (77))");
        assert_eq!(ShimError::Timeout.code(), None);
        t.join().unwrap();
    }

    #[test]
    fn a_refused_hello_is_refused() {
        let (conn, mut server) = pair().unwrap();
        let t = thread::spawn(move || {
            server.recv().unwrap();
            server
                .send(&Reply::error(
                    ErrorCode::UnknownVm,
                    "no VM is named \"web\"",
                ))
                .unwrap();
        });
        let e = Client::over(conn, VM).unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::UnknownVm));
        assert!(e.to_string().contains("no VM is named \"web\""), "{e}");
        t.join().unwrap();
    }

    #[test]
    fn a_refusal_sent_before_closing_is_reported_even_if_the_send_fails() {
        // What epochgate does to a uid it does not allow: Error, then close, before Hello.
        let (conn, mut server) = pair().unwrap();
        server
            .send(&Reply::error(
                ErrorCode::PermissionDenied,
                "uid 1000 may not",
            ))
            .unwrap();
        drop(server);
        let e = Client::over(conn, VM).unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::PermissionDenied), "{e:?}");
        assert!(e.to_string().contains("uid 1000 may not"));
    }

    #[test]
    fn bad_arguments_are_refused_locally() {
        let (conn, server) = pair().unwrap();
        assert!(matches!(
            Client::over(conn, " web"),
            Err(ShimError::BadArgument(_))
        ));
        drop(server);
        let (mut c, t) = session(|s| {
            // Nothing but the close arrives.
            assert!(matches!(s.recv(), Err(ShimError::Closed)));
        });
        for e in [
            c.fence(0).unwrap_err(),
            c.commit(0).unwrap_err(),
            c.promote(Mode::Standby).map(drop).unwrap_err(),
            c.promote(Mode::Failed).map(drop).unwrap_err(),
        ] {
            assert!(matches!(e, ShimError::BadArgument(_)), "{e:?}");
        }
        drop(c);
        t.join().unwrap();
        assert!(matches!(
            Client::connect("/nonexistent/dir/control.sock", "bad\nname"),
            Err(ShimError::BadArgument(_))
        ));
        let e = Client::connect("/nonexistent/dir/control.sock", VM).unwrap_err();
        assert!(matches!(e, ShimError::Connect { .. }), "{e:?}");
        assert!(e
            .to_string()
            .starts_with("cannot connect to /nonexistent/dir/control.sock: "));
    }

    #[test]
    fn events_before_a_reply_are_queued_in_order() {
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let (mut c, t) = session(move |s| {
            assert_eq!(s.recv().unwrap(), Request::Fence { epoch: 4 });
            for epoch in [4, 5, 6] {
                s.send(&event(epoch)).unwrap();
            }
            s.send(&Reply::Fenced {
                epoch: 4,
                frames: 1,
                bytes: 2,
                drain_ns: 3,
            })
            .unwrap();
            s.send(&Reply::CheckpointRequest {
                epoch: 7,
                urgency: Urgency::Now,
                reason: RequestReason::ImmediateFrame,
            })
            .unwrap();
            done_rx.recv().unwrap();
        });
        assert_eq!(c.fence(4).unwrap().frames, 1);
        for epoch in [4, 5, 6] {
            let e = c.next_event(Some(Duration::ZERO)).unwrap().unwrap();
            assert_eq!(
                e,
                Event {
                    epoch,
                    urgency: Urgency::Within { ns: 1_000 * epoch },
                    reason: RequestReason::HighWater
                }
            );
        }
        // The last one is read from the socket (it may still be on its way).
        assert_eq!(
            c.next_event(Some(Duration::from_secs(10))).unwrap(),
            Some(Event {
                epoch: 7,
                urgency: Urgency::Now,
                reason: RequestReason::ImmediateFrame
            })
        );
        assert_eq!(c.next_event(Some(Duration::ZERO)).unwrap(), None);
        done_tx.send(()).unwrap();
        t.join().unwrap();
        assert!(matches!(
            c.next_event(Some(Duration::from_secs(10))),
            Err(ShimError::Closed)
        ));
    }

    #[test]
    fn the_callback_gets_events_instead_of_the_queue() {
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let (mut c, t) = session(move |s| {
            // One event before the callback is set: it stays queued.
            s.send(&event(1)).unwrap();
            go_rx.recv().unwrap();
            assert_eq!(s.recv().unwrap(), Request::Discard);
            s.send(&event(2)).unwrap();
            s.send(&event(3)).unwrap();
            s.send(&Reply::Discarded { frames: 0 }).unwrap();
            s.send(&event(4)).unwrap();
            s.send(&event(5)).unwrap();
        });
        let (tx, rx) = mpsc::channel();
        // Read event 1 into the queue before the callback is set.
        assert_eq!(
            c.next_event(Some(Duration::from_secs(10))).unwrap(),
            Some(Event {
                epoch: 1,
                urgency: Urgency::Within { ns: 1_000 },
                reason: RequestReason::HighWater
            })
        );
        c.on_event(move |e| tx.send(e.epoch).unwrap());
        go_tx.send(()).unwrap();
        assert_eq!(c.discard().unwrap(), 0);
        assert_eq!(rx.try_iter().collect::<Vec<_>>(), [2, 3], "during the call");
        // Pump until both later events went to the callback.
        let mut got = Vec::new();
        while got.len() < 2 {
            assert_eq!(c.next_event(Some(Duration::from_secs(10))).unwrap(), None);
            got.extend(rx.try_iter());
        }
        assert_eq!(got, [4, 5]);
        c.clear_on_event();
        t.join().unwrap();
    }

    #[test]
    fn next_event_times_out_with_none() {
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let (mut c, t) = session(move |_| done_rx.recv().unwrap());
        assert_eq!(c.next_event(Some(Duration::ZERO)).unwrap(), None);
        let start = Instant::now();
        assert_eq!(c.next_event(Some(Duration::from_millis(50))).unwrap(), None);
        assert!(start.elapsed() >= Duration::from_millis(50));
        done_tx.send(()).unwrap();
        t.join().unwrap();
    }

    #[test]
    fn a_closed_server_is_closed() {
        let (mut c, t) = session(|s| {
            s.recv().unwrap();
            // Close without answering.
        });
        assert!(matches!(c.protect(), Err(ShimError::Closed)));
        t.join().unwrap();
        assert!(
            matches!(c.protect(), Err(ShimError::Closed)),
            "and stays so"
        );
        assert!(matches!(c.next_event(None), Err(ShimError::Closed)));

        let (mut c, t) = session(|_| {});
        t.join().unwrap();
        assert!(matches!(c.next_event(None), Err(ShimError::Closed)));
    }

    #[test]
    fn shutting_down_while_waiting_is_refused_then_closed() {
        let (mut c, t) = session(|s| {
            s.recv().unwrap();
            s.send(&event(9)).unwrap();
            s.send(&Reply::error(
                ErrorCode::ShuttingDown,
                "epochgate is stopping",
            ))
            .unwrap();
        });
        let e = c.fence(9).unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::ShuttingDown));
        assert!(e.to_string().contains("epochgate is stopping"));
        t.join().unwrap();
        assert_eq!(c.next_event(None).unwrap().map(|e| e.epoch), Some(9));
        assert!(matches!(c.stats(), Err(ShimError::Closed)));

        // Shutting down while the client only waits for events.
        let (mut c, t) = session(|s| {
            s.send(&Reply::error(ErrorCode::ShuttingDown, "bye"))
                .unwrap();
        });
        let e = c.next_event(None).unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::ShuttingDown));
        t.join().unwrap();
        assert!(matches!(c.next_event(None), Err(ShimError::Closed)));
    }

    #[test]
    fn malformed_datagrams_are_proto_errors() {
        let (mut c, t) = session(|s| {
            s.recv().unwrap();
            s.send_raw(b"not a message at all").unwrap();
            s.recv().unwrap();
            s.send_raw(&[0xAB; MAX_MESSAGE + 100]).unwrap();
            s.recv().unwrap();
            s.send_raw(&[]).unwrap();
            s.recv().unwrap();
            // A request kind is not a reply.
            s.send_raw(&Request::Protect.encode()).unwrap();
            s.recv().unwrap();
            s.send(&Reply::Pong { token: 1 }).unwrap();
            s.recv().unwrap();
            s.send(&Reply::Protected { epoch: 2 }).unwrap();
        });
        let e = c.protect().unwrap_err();
        assert!(matches!(e, ShimError::Proto(ProtoError::BadMagic)), "{e:?}");
        assert!(e
            .to_string()
            .starts_with("epochgate sent a malformed message: "));
        let e = c.protect().unwrap_err();
        assert!(
            matches!(e, ShimError::Proto(ProtoError::Oversize { .. })),
            "{e:?}"
        );
        let e = c.protect().unwrap_err();
        assert!(
            matches!(e, ShimError::Proto(ProtoError::Truncated { got: 0 })),
            "{e:?}"
        );
        let e = c.protect().unwrap_err();
        assert!(
            matches!(e, ShimError::Proto(ProtoError::UnknownKind { kind: 0x02 })),
            "{e:?}"
        );
        let e = c.ping().unwrap_err();
        assert!(
            matches!(e, ShimError::Proto(ProtoError::Field { .. })),
            "{e:?}"
        );
        assert_eq!(c.protect().unwrap(), 2, "the session goes on");
        t.join().unwrap();
    }

    #[test]
    fn a_reply_of_the_wrong_kind_is_unexpected() {
        let (mut c, t) = session(|s| {
            s.recv().unwrap();
            s.send(&Reply::Committed {
                epoch: 1,
                frames: 1,
            })
            .unwrap();
            // Unasked.
            s.send(&Reply::Pong { token: 1 }).unwrap();
        });
        let e = c.fence(1).unwrap_err();
        assert!(
            matches!(
                e,
                ShimError::Unexpected {
                    expected: "fenced",
                    got: "committed"
                }
            ),
            "{e:?}"
        );
        assert_eq!(e.to_string(), "expected a fenced reply, got committed");
        assert!(matches!(
            c.next_event(Some(Duration::from_secs(10))),
            Err(ShimError::Unexpected {
                expected: "checkpoint-request",
                got: "pong"
            })
        ));
        t.join().unwrap();
    }

    #[test]
    fn a_late_reply_is_skipped_after_a_timeout() {
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let (mut c, t) = session(move |s| {
            assert_eq!(s.recv().unwrap(), Request::Protect);
            go_rx.recv().unwrap();
            s.send(&Reply::Protected { epoch: 1 }).unwrap();
            assert_eq!(s.recv().unwrap(), Request::Discard);
            s.send(&Reply::Discarded { frames: 8 }).unwrap();
        });
        c.set_timeout(Some(Duration::from_millis(50)));
        assert!(matches!(c.protect(), Err(ShimError::Timeout)));
        go_tx.send(()).unwrap();
        c.set_timeout(None);
        assert_eq!(c.discard().unwrap(), 8);
        t.join().unwrap();
    }

    #[test]
    fn request_raw_returns_the_answer_to_any_bytes() {
        let (mut c, t) = session(|s| {
            match s.recv() {
                Err(ShimError::Proto(e)) => s.send(&Reply::error(e.code(), e.to_string())),
                other => panic!("{other:?}"),
            }
            .unwrap();
        });
        let reply = c.request_raw(b"EG\x01\x02\x05\x00\x00\x00").unwrap();
        assert_eq!(
            reply,
            Reply::error(
                ErrorCode::BadMessage,
                "protect header declares a body of 5 bytes but the datagram carries 0"
            )
        );
        t.join().unwrap();
    }

    // --- the pinger ------------------------------------------------------------------

    const PATIENCE: Duration = Duration::from_secs(30);

    fn pinged(interval_ms: u64, timeout_ms: u64) -> Options {
        Options {
            pinger: true,
            ping_interval: Some(Duration::from_millis(interval_ms)),
            answer_timeout: Some(Duration::from_millis(timeout_ms)),
            ..Options::default()
        }
    }

    /// A client with a pinger over `pair()` (both settings given: no `Liveness` asked), whose
    /// server answers `Hello` and then runs `serve`.
    fn pinged_session<F>(opts: Options, serve: F) -> (Client, JoinHandle<()>)
    where
        F: FnOnce(&mut ServerEnd) + Send + 'static,
    {
        let (conn, mut server) = pair().unwrap();
        let t = thread::spawn(move || {
            assert_eq!(server.recv().unwrap(), Request::hello(VM).unwrap());
            server
                .send(&Reply::Welcome {
                    epoch: 4,
                    mode: Mode::Protected,
                })
                .unwrap();
            serve(&mut server);
        });
        let client = Client::over_with(conn, VM, opts).unwrap();
        (client, t)
    }

    /// The next request that is not a ping, answering pings (with their token) meanwhile;
    /// `None` when the client closed.
    fn next_not_ping(s: &mut ServerEnd) -> Option<Request> {
        loop {
            match s.recv() {
                Ok(Request::Ping { token }) => s.send(&Reply::Pong { token }).unwrap(),
                Ok(r) => return Some(r),
                Err(ShimError::Closed) => return None,
                Err(e) => panic!("{e}"),
            }
        }
    }

    fn readable(fd: BorrowedFd<'_>) -> bool {
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        poll(&mut fds, PollTimeout::ZERO).unwrap() > 0
    }

    #[test]
    fn the_pinger_pings_while_idle_and_its_pongs_never_reach_the_caller() {
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let (mut c, t) = pinged_session(pinged(10, 10_000), move |s| {
            // Idle: the pinger pings by itself, more than once.
            for _ in 0..3 {
                let Request::Ping { token } = s.recv().unwrap() else {
                    panic!("only pings while idle")
                };
                s.send(&Reply::Pong { token }).unwrap();
            }
            go_tx.send(()).unwrap();
            // A call, with events before its answer and pings of the pinger in between.
            assert_eq!(next_not_ping(s), Some(Request::Fence { epoch: 4 }));
            s.send(&event(4)).unwrap();
            // An unsolicited pong with a token nobody sent: not the pinger's, so the caller
            // hears of it (as an out-of-place reply).
            s.send(&event(5)).unwrap();
            s.send(&Reply::Fenced {
                epoch: 4,
                frames: 1,
                bytes: 2,
                drain_ns: 3,
            })
            .unwrap();
            s.send(&event(6)).unwrap();
            // The caller's own ping comes amid the pinger's: each gets its own pong.
            assert_eq!(next_not_ping(s), Some(Request::Stats));
            s.send(&Reply::Pong { token: 77 }).unwrap();
            // The caller may be gone already: the stray pong failed its call, and it closed.
            let _ = s.send(&Reply::Stats(VmStats {
                mode: Mode::Protected,
                open_epoch: 5,
                sealed_epoch: 4,
                committed_epoch: 3,
                held_frames: 0,
                held_bytes: 0,
                rx_frames: 0,
                tx_frames: 0,
                dropped: 0,
            }));
        });
        assert_eq!(c.ping_interval(), Some(Duration::from_millis(10)));
        assert_eq!(c.answer_timeout(), Some(Duration::from_secs(10)));
        go_rx.recv_timeout(PATIENCE).unwrap();
        assert_eq!(c.fence(4).unwrap().frames, 1);
        let mut epochs = vec![];
        while epochs.len() < 3 {
            let e = c.next_event(Some(PATIENCE)).unwrap().expect("an event");
            epochs.push(e.epoch);
        }
        assert_eq!(epochs, [4, 5, 6], "in order, none lost to the pinger");
        c.ping().unwrap();
        // The stray pong (token 77) is the caller's to see: it is not the pinger's.
        let e = c.stats().unwrap_err();
        assert!(
            matches!(
                e,
                ShimError::Unexpected {
                    expected: "stats",
                    got: "pong"
                }
            ),
            "{e:?}"
        );
        drop(c);
        t.join().unwrap();
    }

    /// Neither a call's answer nor an event sent while the caller is idle goes through the
    /// pinger thread: the caller reads both from the socket, which its descriptor watches.
    #[test]
    fn a_calls_answer_and_an_idle_event_reach_the_caller_without_the_pinger() {
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let (checked_tx, checked_rx) = mpsc::channel::<()>();
        let (mut c, t) = pinged_session(pinged(3_600_000, 10_000), move |s| {
            for epoch in 1..=50 {
                assert_eq!(next_not_ping(s), Some(Request::Fence { epoch }));
                s.send(&Reply::Fenced {
                    epoch,
                    frames: 0,
                    bytes: 0,
                    drain_ns: 0,
                })
                .unwrap();
            }
            // While no call reads, what comes waits for the caller.
            checked_rx.recv_timeout(PATIENCE).unwrap();
            s.send(&event(51)).unwrap();
            go_tx.send(()).unwrap();
            assert_eq!(next_not_ping(s), None);
        });
        for epoch in 1..=50 {
            assert_eq!(c.fence(epoch).unwrap().epoch, epoch);
        }
        let Link::Pinged(p) = &c.link else {
            panic!("the pinger is on")
        };
        assert_eq!(
            p.taken(),
            0,
            "every answer went straight to the calling thread"
        );
        checked_tx.send(()).unwrap();
        go_rx.recv_timeout(PATIENCE).unwrap();
        // The idle event makes the descriptor readable by itself (no pinger turn for an hour).
        let mut fds = [PollFd::new(c.as_fd(), PollFlags::POLLIN)];
        assert_eq!(poll(&mut fds, PollTimeout::from(30_000u16)).unwrap(), 1);
        let Link::Pinged(p) = &c.link else {
            unreachable!()
        };
        assert_eq!(p.taken(), 0, "the pinger thread was not woken for it");
        assert_eq!(
            c.next_event(Some(Duration::ZERO)).unwrap().unwrap().epoch,
            51
        );
        assert!(!readable(c.as_fd()), "nothing more waits");
        drop(c);
        t.join().unwrap();
    }

    /// A caller that never reads: at each of its turns the pinger takes what waits (so the
    /// socket never fills and epochgate never closes the session as not reading), and the
    /// caller still gets it, in order, and the descriptor says so.
    #[test]
    fn the_pinger_takes_what_an_idle_caller_leaves_unread_at_its_turns() {
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let (mut c, t) = pinged_session(pinged(20, 10_000), move |s| {
            for epoch in 1..=3 {
                s.send(&event(epoch)).unwrap();
            }
            go_rx.recv_timeout(PATIENCE).unwrap();
            // Pings every 20 ms until the client closes: a pong may meet the close.
            loop {
                match s.recv() {
                    Ok(Request::Ping { token }) => {
                        if s.send(&Reply::Pong { token }).is_err() {
                            return;
                        }
                    }
                    Ok(r) => panic!("unexpected {r:?}"),
                    Err(_) => return,
                }
            }
        });
        let until = Instant::now() + PATIENCE;
        loop {
            let Link::Pinged(p) = &c.link else {
                panic!("the pinger is on")
            };
            if p.taken() == 3 {
                break;
            }
            assert!(Instant::now() < until, "the pinger never took the events");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(
            readable(c.as_fd()),
            "the inbox makes the descriptor readable"
        );
        for epoch in 1..=3 {
            let e = c
                .next_event(Some(Duration::ZERO))
                .unwrap()
                .expect("an event");
            assert_eq!(e.epoch, epoch);
        }
        assert!(c.next_event(Some(Duration::ZERO)).unwrap().is_none());
        go_tx.send(()).unwrap();
        drop(c);
        t.join().unwrap();
    }

    #[test]
    fn a_silent_epochgate_fails_the_next_call_and_every_later_one() {
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let (mut c, t) = pinged_session(pinged(20, 200), move |s| {
            // Read everything, answer nothing: a frozen epochgate.
            while done_rx.try_recv().is_err() {
                if let Err(ShimError::Closed) = s.recv_timeout(Duration::from_millis(10)) {
                    return;
                }
            }
        });
        // Idle until the pinger gives up.
        let e = c.next_event(Some(PATIENCE)).unwrap_err();
        assert!(matches!(e, ShimError::Unresponsive { .. }), "{e:?}");
        assert!(
            e.to_string()
                .starts_with("epochgate stopped answering: nothing heard from it for "),
            "{e}"
        );
        assert!(
            e.to_string().ends_with("(the answer timeout is 200 ms)"),
            "{e}"
        );
        assert!(readable(c.as_fd()), "a poller hears of it");
        for e in [
            c.protect().unwrap_err(),
            c.ping().unwrap_err(),
            c.next_event(None).unwrap_err(),
        ] {
            assert!(matches!(e, ShimError::Unresponsive { .. }), "{e:?}");
        }
        done_tx.send(()).unwrap();
        drop(c);
        t.join().unwrap();
    }

    #[test]
    fn a_call_waiting_on_a_silent_epochgate_fails_with_the_pinger() {
        let (mut c, t) = pinged_session(pinged(20, 200), |s| {
            assert_eq!(next_not_ping(s), Some(Request::Protect));
            // Frozen from now on.
            while !matches!(
                s.recv_timeout(Duration::from_millis(10)),
                Err(ShimError::Closed)
            ) {}
        });
        c.set_timeout(None);
        let e = c.protect().unwrap_err();
        assert!(matches!(e, ShimError::Unresponsive { .. }), "{e:?}");
        drop(c);
        t.join().unwrap();
    }

    #[test]
    fn events_make_the_fd_readable_until_taken() {
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let (mut c, t) = pinged_session(pinged(3_600_000, 10_000), move |s| {
            s.send(&event(8)).unwrap();
            go_rx.recv().unwrap();
        });
        let mut fds = [PollFd::new(c.as_fd(), PollFlags::POLLIN)];
        assert_eq!(poll(&mut fds, PollTimeout::from(30_000u16)).unwrap(), 1);
        assert_eq!(
            c.next_event(Some(Duration::ZERO)).unwrap().unwrap().epoch,
            8
        );
        assert!(!readable(c.as_fd()), "nothing more waits");
        go_tx.send(()).unwrap();
        t.join().unwrap();
        // The close makes it readable for good.
        let mut fds = [PollFd::new(c.as_fd(), PollFlags::POLLIN)];
        assert_eq!(poll(&mut fds, PollTimeout::from(30_000u16)).unwrap(), 1);
        assert!(matches!(c.next_event(None), Err(ShimError::Closed)));
        assert!(readable(c.as_fd()));
    }

    #[test]
    fn without_the_pinger_nothing_is_sent_while_idle() {
        let (done_tx, done_rx) = mpsc::channel::<Option<Request>>();
        let (c, t) = session(move |s| {
            done_tx
                .send(s.recv_timeout(Duration::from_millis(200)).unwrap())
                .unwrap();
        });
        assert_eq!(c.ping_interval(), None);
        assert_eq!(c.answer_timeout(), None);
        assert_eq!(done_rx.recv().unwrap(), None);
        t.join().unwrap();
    }

    #[test]
    fn the_pinger_takes_epochgates_settings_or_falls_back_for_an_older_one() {
        // epochgate says: every 30 ms, failed after 90 ms.
        let (c, t) = session_asked(Reply::Liveness {
            ping_interval_ms: 30,
            timeout_ms: 90,
        });
        assert_eq!(c.ping_interval(), Some(Duration::from_millis(30)));
        assert_eq!(c.answer_timeout(), Some(Duration::from_millis(90)));
        drop(c);
        t.join().unwrap();
        // Liveness off: 4 intervals.
        let (c, t) = session_asked(Reply::Liveness {
            ping_interval_ms: 1000,
            timeout_ms: 0,
        });
        assert_eq!(c.answer_timeout(), Some(Duration::from_secs(4)));
        drop(c);
        t.join().unwrap();
        // An older epochgate: Liveness is an unknown kind to it.
        let (c, t) = session_asked(Reply::error(
            ErrorCode::BadMessage,
            "unknown message kind 0x0b; ignored",
        ));
        assert_eq!(c.ping_interval(), Some(DEFAULT_PING_INTERVAL));
        assert_eq!(c.answer_timeout(), Some(DEFAULT_PING_INTERVAL * 4));
        drop(c);
        t.join().unwrap();
    }

    /// A client with default options whose server answers the `Liveness` question with
    /// `answer`, then waits for the close.
    fn session_asked(answer: Reply) -> (Client, JoinHandle<()>) {
        let (conn, mut server) = pair().unwrap();
        let t = thread::spawn(move || {
            assert_eq!(server.recv().unwrap(), Request::hello(VM).unwrap());
            server
                .send(&Reply::Welcome {
                    epoch: 0,
                    mode: Mode::Passthrough,
                })
                .unwrap();
            assert_eq!(server.recv().unwrap(), Request::Liveness);
            server.send(&answer).unwrap();
            while next_not_ping(&mut server).is_some() {}
        });
        let client = Client::over_with(conn, VM, Options::default()).unwrap();
        (client, t)
    }

    #[test]
    fn a_liveness_timeout_is_the_answer_to_every_later_call() {
        let text = "liveness timeout: nothing heard from this session for 200 ms";
        for pinger in [false, true] {
            let opts = if pinger {
                pinged(3_600_000, 3_600_000)
            } else {
                Options::without_pinger()
            };
            let (mut c, t) = pinged_session(opts, move |s| {
                s.send(&Reply::error(ErrorCode::LivenessTimeout, text))
                    .unwrap();
                // And closes.
            });
            t.join().unwrap();
            for (i, e) in [
                c.fence(4).unwrap_err(),
                c.commit(4).unwrap_err(),
                c.next_event(None).unwrap_err(),
                c.ping().unwrap_err(),
            ]
            .into_iter()
            .enumerate()
            {
                assert_eq!(
                    e.code(),
                    Some(ErrorCode::LivenessTimeout),
                    "pinger {pinger}, call {i}: {e:?}"
                );
                assert!(e.to_string().contains(text), "{e}");
            }
        }
    }

    #[test]
    fn server_end_times_out_and_sees_the_close() {
        let (conn, mut server) = pair().unwrap();
        assert_eq!(
            server.recv_timeout(Duration::from_millis(10)).unwrap(),
            None
        );
        drop(conn);
        assert!(matches!(server.recv(), Err(ShimError::Closed)));
        assert!(matches!(
            server.send(&Reply::Pong { token: 0 }),
            Err(ShimError::Closed)
        ));
    }

    /// A fake epochgate on a real socket path: accepts one session, answers its `Hello` with
    /// `epoch`, then runs `serve`.
    fn listen_once<F>(path: &Path, epoch: u64, serve: F) -> JoinHandle<()>
    where
        F: FnOnce(&mut ServerEnd) + Send + 'static,
    {
        let _ = std::fs::remove_file(path);
        let l = Socket::new(Domain::UNIX, Type::SEQPACKET, None).unwrap();
        l.bind(&SockAddr::unix(path).unwrap()).unwrap();
        l.listen(4).unwrap();
        thread::spawn(move || {
            let (sock, _) = l.accept().unwrap();
            let mut s = ServerEnd {
                conn: Connection { sock },
            };
            assert_eq!(s.recv().unwrap(), Request::hello(VM).unwrap());
            s.send(&Reply::Welcome {
                epoch,
                mode: Mode::Protected,
            })
            .unwrap();
            serve(&mut s);
        })
    }

    #[test]
    fn reconnect_after_shutting_down_is_a_new_session_in_a_new_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let first = listen_once(&path, 7, |s| {
            assert_eq!(s.recv().unwrap(), Request::Fence { epoch: 7 });
            s.send(&Reply::error(
                ErrorCode::ShuttingDown,
                "stopping for an upgrade",
            ))
            .unwrap();
        });
        let opts = Options {
            reconnect: Some(Duration::from_secs(20)),
            ..Options::without_pinger()
        };
        let mut c = Client::connect_with(&path, VM, opts).unwrap();
        assert_eq!(c.welcome().epoch, 7);
        let e = c.fence(7).unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::ShuttingDown));
        first.join().unwrap();
        assert!(c.is_over());
        assert_eq!(
            c.ended_because(),
            Some((ErrorCode::ShuttingDown, "stopping for an upgrade"))
        );
        assert!(matches!(c.commit(7), Err(ShimError::Closed)));

        // The next process comes up a little later, on the same path.
        let p2 = path.clone();
        let second = thread::spawn(move || {
            thread::sleep(Duration::from_millis(200));
            listen_once(&p2, 1, |s| {
                assert_eq!(s.recv().unwrap(), Request::Fence { epoch: 1 });
                s.send(&Reply::Fenced {
                    epoch: 1,
                    frames: 0,
                    bytes: 0,
                    drain_ns: 0,
                })
                .unwrap();
            })
            .join()
            .unwrap();
        });
        std::fs::remove_file(&path).unwrap();
        let r = c.reconnect().unwrap();
        assert_eq!(r.welcome.epoch, 1);
        assert_eq!(r.previous.epoch, 7);
        assert_eq!(
            r.why,
            Some((
                ErrorCode::ShuttingDown,
                "stopping for an upgrade".to_string()
            ))
        );
        assert!(r.attempts > 1, "{r:?}");
        assert!(!c.is_over());
        assert_eq!(c.welcome(), r.welcome);
        assert_eq!(c.fence(1).unwrap().epoch, 1);
        second.join().unwrap();
    }

    #[test]
    fn reconnect_gives_up_after_its_time_or_at_a_refusal_that_will_not_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let first = listen_once(&path, 3, |_| {});
        let mut c = Client::connect_with(&path, VM, Options::without_pinger()).unwrap();
        first.join().unwrap();
        std::fs::remove_file(&path).unwrap();
        // Nobody listens: one attempt (no reconnect time configured), then the connect error.
        let e = c.reconnect().unwrap_err();
        assert!(matches!(e, ShimError::Connect { .. }), "{e:?}");
        let e = c.reconnect_within(Duration::from_millis(150)).unwrap_err();
        assert!(matches!(e, ShimError::Connect { .. }), "{e:?}");
        assert!(c.is_over());

        // A refusal of the Hello itself is final.
        let l = Socket::new(Domain::UNIX, Type::SEQPACKET, None).unwrap();
        l.bind(&SockAddr::unix(&path).unwrap()).unwrap();
        l.listen(4).unwrap();
        let t = thread::spawn(move || {
            let (sock, _) = l.accept().unwrap();
            let mut s = ServerEnd {
                conn: Connection { sock },
            };
            s.recv().unwrap();
            s.send(&Reply::error(ErrorCode::UnknownVm, "no such VM"))
                .unwrap();
        });
        let e = c.reconnect_within(Duration::from_secs(20)).unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::UnknownVm), "{e:?}");
        t.join().unwrap();

        // Over a given transport there is no path.
        let (conn, mut server) = pair().unwrap();
        let t = thread::spawn(move || {
            server.recv().unwrap();
            server
                .send(&Reply::Welcome {
                    epoch: 1,
                    mode: Mode::Protected,
                })
                .unwrap();
        });
        let mut c = Client::over(conn, VM).unwrap();
        t.join().unwrap();
        assert!(matches!(c.reconnect(), Err(ShimError::BadArgument(_))));
    }
}
