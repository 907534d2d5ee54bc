//! The background pinger of a [`Client`](crate::Client): one thread per session that pings
//! epochgate while the session is idle, reads what epochgate says while nobody else does, and
//! notices when epochgate stops answering.
//!
//! One thread at a time reads the socket (the *reader*, a flag in the shared state). A call of
//! the caller's reads it itself: its answer wakes the caller directly, with no hand-over through
//! this thread (on a machine where every wake-up costs microseconds, that hand-over was half of
//! a fence's round trip). This thread never waits on the socket either: if it did, every answer
//! would wake it too, and on a small machine that second wake-up, and the lock it then takes,
//! doubled a call's round trip (a fence of an idle VM through the C ABI: 22.8-23.5 us p50
//! then, 10.2-11.2 us now, `scripts/measure-c-abi.sh`). It sleeps until its next ping or
//! silence deadline, and then, if no call reads, takes what is there into an inbox, which the
//! caller's next call or [`Client::next_event`](crate::Client::next_event) reads first, so
//! messages keep the order epochgate sent them in. Between its turns, what epochgate sends
//! while the caller is idle waits in the socket, which the caller's descriptor watches.
//! Whoever reads consumes the `Pong`s that answer the pinger's own
//! pings (each carries a token only the pinger knows): a pong of the pinger is never taken for
//! the answer to one of the caller's calls. Both threads send on the socket under one mutex,
//! which also keeps the "something is unanswered since" clock.
//!
//! Epochgate has stopped answering when something sent (a ping or a call) has had no datagram
//! at all back for the answer timeout; whoever notices first ends the session with that, and
//! every later call says so. A thread that was itself frozen (its process stopped) does not
//! blame epochgate for the time it did not run.
//!
//! The descriptor [`Client`](crate::Client)'s `AsFd` gives is an epoll instance over the socket
//! and an eventfd that is readable while the inbox holds something (or the session is over):
//! it is readable whenever something waits, wherever it waits, so callers that poll hear of an
//! event as soon as epochgate sends it, with no hand-over through this thread.

use std::collections::hash_map::RandomState;
use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::io;
use std::net::Shutdown;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use nix::sys::eventfd::{EfdFlags, EventFd};

use crate::client::{Connection, ShimError};
use crate::proto::{decode_reply, Reply, Request, MAX_MESSAGE};

/// How often the pinger pings when epochgate does not say (an older epochgate, which does not
/// know `Liveness`) and the caller did not choose.
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(1);

/// The answer timeout when epochgate times no sessions out (`liveness_timeout_ms = 0`) and
/// the caller did not choose: this many ping intervals.
pub const ANSWER_TIMEOUT_INTERVALS: u32 = 4;

/// Pinger tokens still unanswered that are remembered (older ones are forgotten: their
/// pongs, should they ever come, then reach the caller as unexpected replies).
const MAX_TOKENS: usize = 64;

/// Why the session ended, as the inbox reports it once it is empty.
#[derive(Debug, Clone)]
enum End {
    /// Epochgate closed the socket.
    Closed,
    /// Nothing came back for `timeout` after something was sent; last heard at `since`.
    Silent { since: Instant, timeout: Duration },
    /// The socket failed.
    Io(io::ErrorKind, String),
}

impl End {
    fn error(&self) -> ShimError {
        match self {
            End::Closed => ShimError::Closed,
            End::Silent { since, timeout } => ShimError::Unresponsive {
                silent: since.elapsed(),
                timeout: *timeout,
            },
            End::Io(kind, text) => ShimError::Io(io::Error::new(*kind, text.clone())),
        }
    }
}

struct State {
    inbox: VecDeque<Vec<u8>>,
    end: Option<End>,
    /// When the last datagram was sent (by either thread).
    last_sent: Instant,
    /// When the last datagram was received.
    last_heard: Instant,
    /// The oldest send not followed by any datagram back.
    unanswered_since: Option<Instant>,
    /// Tokens of the pinger's pings whose pongs have not come yet.
    tokens: VecDeque<u64>,
    /// A call holds the reader role: from its send (so that the pinger cannot take the answer
    /// before the call reads it) to the end of its read. The pinger only reads while it is
    /// clear, under the lock.
    reading: bool,
    /// Datagrams the pinger thread took into the inbox (a call's answer should never be one).
    taken: u64,
    /// The client is being dropped.
    stop: bool,
}

struct Shared {
    conn: Connection,
    bell: EventFd,
    /// The socket and the bell: the caller's descriptor.
    watch: Epoll,
    state: Mutex<State>,
    cond: Condvar,
    interval: Duration,
    timeout: Duration,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends under the lock, so that the clocks stay in step with the socket.
    fn send_locked(&self, st: &mut State, bytes: &[u8]) -> io::Result<()> {
        self.conn.send(bytes)?;
        let now = Instant::now();
        st.last_sent = now;
        st.unanswered_since.get_or_insert(now);
        Ok(())
    }

    fn ring(&self) {
        // Counter overflow is the only failure of a write of 1: it stays readable anyway.
        let _ = self.bell.write(1);
        self.cond.notify_all();
    }

    /// Takes a datagram just read: the clocks learn that epochgate answered, and a pong to
    /// the pinger is consumed (`None`).
    fn heard(&self, st: &mut State, bytes: Vec<u8>, now: Instant) -> Option<Vec<u8>> {
        st.last_heard = now;
        st.unanswered_since = None;
        (!is_pinger_pong(&mut st.tokens, &bytes)).then_some(bytes)
    }

    /// When silence would end the session (something sent, nothing back since).
    fn silent_at(&self, st: &State) -> Option<Instant> {
        st.unanswered_since.map(|u| u + self.timeout)
    }

    /// After a wait that was to end at `asked`: a thread woken far later than that was frozen
    /// (SIGSTOP, a debugger, a host that stopped the VM), and that time is not epochgate's
    /// silence: its clock starts again. Then ends the session if epochgate has been silent
    /// for the timeout; true if it has.
    fn check_silence(&self, st: &mut State, asked: Option<Instant>, now: Instant) -> bool {
        let frozen = asked.is_some_and(|a| now.saturating_duration_since(a) > self.timeout / 2);
        if frozen && st.unanswered_since.is_some() {
            st.unanswered_since = Some(now);
        }
        if st.end.is_none() && self.silent_at(st).is_some_and(|t| now >= t) {
            st.end = Some(End::Silent {
                since: st.last_heard,
                timeout: self.timeout,
            });
            self.ring();
        }
        matches!(st.end, Some(End::Silent { .. }))
    }

    /// Ends the session with a failed read.
    fn failed(&self, st: &mut State, e: ShimError) {
        if st.end.is_none() {
            st.end = Some(match e {
                ShimError::Io(e) => End::Io(e.kind(), e.to_string()),
                _ => End::Closed,
            });
        }
        self.ring();
    }

    fn wait_cond<'a>(
        &self,
        st: MutexGuard<'a, State>,
        until: Option<Instant>,
    ) -> MutexGuard<'a, State> {
        match until {
            None => self.cond.wait(st).unwrap_or_else(PoisonError::into_inner),
            Some(t) => {
                let left = t.saturating_duration_since(Instant::now());
                self.cond
                    .wait_timeout(st, left)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0
            }
        }
    }

    fn quiet(&self) {
        // Non-blocking: EAGAIN when it was not readable.
        let _ = self.bell.read();
    }
}

/// The pinger of one session: owns the socket and the pinger thread, stopped on drop.
pub(crate) struct Pinger {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Pinger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pinger")
            .field("conn", &self.shared.conn)
            .field("interval", &self.shared.interval)
            .field("timeout", &self.shared.timeout)
            .finish()
    }
}

impl Pinger {
    /// Starts pinging over `conn` every `interval` of idleness; epochgate has stopped
    /// answering after `timeout` without a datagram back.
    pub(crate) fn start(
        conn: Connection,
        interval: Duration,
        timeout: Duration,
    ) -> Result<Pinger, ShimError> {
        let bell = EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
            .map_err(io::Error::from)?;
        let watch = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(io::Error::from)?;
        for (i, fd) in [conn.as_fd(), bell.as_fd()].into_iter().enumerate() {
            watch
                .add(fd, EpollEvent::new(EpollFlags::EPOLLIN, i as u64))
                .map_err(io::Error::from)?;
        }
        let now = Instant::now();
        let shared = Arc::new(Shared {
            conn,
            bell,
            watch,
            state: Mutex::new(State {
                inbox: VecDeque::new(),
                end: None,
                last_sent: now,
                last_heard: now,
                unanswered_since: None,
                tokens: VecDeque::new(),
                reading: false,
                taken: 0,
                stop: false,
            }),
            cond: Condvar::new(),
            interval,
            timeout,
        });
        let run = shared.clone();
        let thread = std::thread::Builder::new()
            .name("eg-shim-ping".into())
            .spawn(move || run_pinger(&run))?;
        Ok(Pinger {
            shared,
            thread: Some(thread),
        })
    }

    /// The ping interval.
    pub(crate) fn interval(&self) -> Duration {
        self.shared.interval
    }

    /// The answer timeout.
    pub(crate) fn timeout(&self) -> Duration {
        self.shared.timeout
    }

    /// How many datagrams the pinger thread took into the inbox (read while no call read).
    #[cfg(test)]
    pub(crate) fn taken(&self) -> u64 {
        self.shared.lock().taken
    }

    /// Sends one datagram (a call of the caller's), which then reads the answer
    /// ([`Pinger::recv`]) holding the reader role from the send on.
    pub(crate) fn send(&self, bytes: &[u8]) -> io::Result<()> {
        let mut st = self.shared.lock();
        self.shared.send_locked(&mut st, bytes)?;
        st.reading = true;
        Ok(())
    }

    /// The silence that ended the session, if that is how it ended (the socket may still be
    /// open, but epochgate does not answer on it).
    pub(crate) fn unresponsive(&self) -> Option<ShimError> {
        let st = self.shared.lock();
        match &st.end {
            Some(e @ End::Silent { .. }) if st.inbox.is_empty() => Some(e.error()),
            _ => None,
        }
    }

    /// The next datagram epochgate sent (other than pongs to the pinger), waiting until
    /// `deadline`: like [`Connection::recv`]. What the pinger took into the inbox comes first;
    /// then the caller reads the socket itself, holding the reader role until it returns
    /// (calls take `&mut Client`, so no other call reads meanwhile).
    pub(crate) fn recv(&self, deadline: Option<Instant>) -> Result<Option<Vec<u8>>, ShimError> {
        let sh = &*self.shared;
        let mut st = sh.lock();
        st.reading = true;
        // The socket is looked at once even with a deadline already past: what waits there is
        // what the caller's descriptor said is readable.
        let mut looked = false;
        let got = loop {
            if let Some(bytes) = st.inbox.pop_front() {
                if st.inbox.is_empty() && st.end.is_none() {
                    sh.quiet();
                }
                break Ok(Some(bytes));
            }
            if let Some(end) = &st.end {
                break Err(end.error());
            }
            if looked && deadline.is_some_and(|d| Instant::now() >= d) {
                break Ok(None);
            }
            looked = true;
            // Read until the caller's deadline, or until silence would end the session.
            let until = match (deadline, sh.silent_at(&st)) {
                (Some(d), Some(s)) => Some(d.min(s)),
                (d, s) => d.or(s),
            };
            drop(st);
            let got = sh.conn.recv(until);
            let now = Instant::now();
            st = sh.lock();
            match got {
                Ok(Some(bytes)) => {
                    if let Some(bytes) = sh.heard(&mut st, bytes, now) {
                        break Ok(Some(bytes));
                    }
                }
                Ok(None) => {
                    sh.check_silence(&mut st, until, now);
                }
                Err(e) => sh.failed(&mut st, e),
            }
        };
        // Nobody is woken: the pinger takes its turn at its own deadline.
        st.reading = false;
        got
    }
}

impl AsFd for Pinger {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.shared.watch.0.as_fd()
    }
}

impl Drop for Pinger {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.cond.notify_all();
        // The session is over, as it is when a Client without pinger is dropped.
        let _ = self.shared.conn.socket().shutdown(Shutdown::Both);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run_pinger(sh: &Shared) {
    let tokens = RandomState::new();
    let mut n: u64 = 0;
    loop {
        let mut st = sh.lock();
        if st.stop || st.end.is_some() {
            return;
        }
        let ping_at = st.last_sent + sh.interval;
        let wake = sh.silent_at(&st).map_or(ping_at, |t| t.min(ping_at));
        // Until the next ping or silence deadline (or a stop), never on the socket: an
        // answer to a call wakes only the call.
        st = sh.wait_cond(st, Some(wake));
        if !st.reading && !st.stop && st.end.is_none() {
            // What came while nobody read (events, pongs, a close) is taken now, before the
            // silence is judged: a pong waiting here is an answer. While a call reads, what
            // comes is the call's to read.
            drain(sh, &mut st);
        }
        let now = Instant::now();
        if st.stop || st.end.is_some() {
            return;
        }
        if sh.check_silence(&mut st, Some(wake), now) {
            return;
        }
        if now >= st.last_sent + sh.interval {
            n = n.wrapping_add(1);
            let token = tokens.hash_one(n);
            let ping = Request::Ping { token }.encode();
            // A send that fails (epochgate gone) shows as the close the next read reports;
            // the token is not kept.
            if sh.send_locked(&mut st, &ping).is_ok() {
                if st.tokens.len() == MAX_TOKENS {
                    st.tokens.pop_front();
                }
                st.tokens.push_back(token);
            } else {
                st.last_sent = now;
            }
        }
    }
}

/// Takes everything readable now into the inbox, ringing the bell when the inbox turns
/// non-empty. Under the lock, and never waiting: no call can send (and so expect an answer)
/// meanwhile, so a call's answer is always read by the call.
fn drain(sh: &Shared, st: &mut State) {
    loop {
        let got = sh.conn.recv(Some(Instant::now()));
        let now = Instant::now();
        match got {
            Ok(Some(bytes)) => {
                if let Some(bytes) = sh.heard(st, bytes, now) {
                    st.taken += 1;
                    st.inbox.push_back(bytes);
                    if st.inbox.len() == 1 {
                        sh.ring();
                    }
                }
            }
            Ok(None) => break,
            Err(e) => {
                sh.failed(st, e);
                break;
            }
        }
    }
}

/// Whether `bytes` is a `Pong` answering one of the pinger's pings (then forgotten, with
/// any older token: epochgate answers in order, so their pongs are not coming).
fn is_pinger_pong(tokens: &mut VecDeque<u64>, bytes: &[u8]) -> bool {
    if bytes.len() > MAX_MESSAGE {
        return false;
    }
    let Ok(Reply::Pong { token }) = decode_reply(bytes) else {
        return false;
    };
    match tokens.iter().position(|&t| t == token) {
        Some(i) => {
            tokens.drain(..=i);
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_known_tokens_are_the_pingers_and_older_ones_are_forgotten() {
        let mut tokens: VecDeque<u64> = [1, 2, 3].into();
        let pong = |token| Reply::Pong { token }.encode();
        assert!(
            !is_pinger_pong(&mut tokens, &pong(9)),
            "the caller's own ping"
        );
        assert_eq!(tokens, [1, 2, 3]);
        assert!(is_pinger_pong(&mut tokens, &pong(2)));
        assert_eq!(tokens, [3], "1 was answered before 2, or never will be");
        assert!(!is_pinger_pong(
            &mut tokens,
            &Reply::Protected { epoch: 3 }.encode()
        ));
        assert!(!is_pinger_pong(&mut tokens, b"not a message"));
        assert!(is_pinger_pong(&mut tokens, &pong(3)));
        assert!(tokens.is_empty());
        assert!(!is_pinger_pong(&mut tokens, &pong(3)), "only once");
    }
}
