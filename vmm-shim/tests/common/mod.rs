//! A fake epochgate for the integration tests: one thread serving one connection on a real
//! `SOCK_SEQPACKET` socket in a temporary directory, speaking `vmm_shim::proto`, and
//! recording every request it got.
//!
//! Nothing here waits forever: every wait gives up (and panics, which fails the test at
//! [`FakeServer::finish`]) after [`PATIENCE`].

#![allow(dead_code)] // each test file uses a part

use std::io::Read;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use socket2::{Domain, SockAddr, Socket, Type};
use tempfile::TempDir;
use vmm_shim::proto::{
    decode_request, ErrorCode, Mode, Release, Reply, Request, VmStats, MAX_MESSAGE,
};

/// How long the fake server or a test waits for anything before giving up.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// What the fake epochgate knows about its one VM, and how it answers (like epochgate, with
/// deterministic numbers: epoch `e` holds `10 e` frames of `640 e` bytes, drained in
/// `1000 + e` ns).
#[derive(Debug, Clone)]
pub struct Model {
    /// The one configured VM.
    pub name: String,
    pub mode: Mode,
    /// The open epoch (0 when not protected).
    pub open: u64,
    pub sealed: u64,
    pub committed: u64,
    adopted: bool,
}

impl Model {
    /// An unprotected VM named `name`.
    pub fn new(name: &str) -> Model {
        Model {
            name: name.to_string(),
            mode: Mode::Passthrough,
            open: 0,
            sealed: 0,
            committed: 0,
            adopted: false,
        }
    }

    /// The same VM, already protected with `open` as its open epoch.
    pub fn protected(mut self, open: u64) -> Model {
        self.mode = Mode::Protected;
        self.open = open;
        self.sealed = open - 1;
        self.committed = open - 1;
        self
    }

    fn held(&self) -> u64 {
        (self.committed + 1..=self.sealed).map(|e| 10 * e).sum()
    }

    /// The reply epochgate would send to `req`.
    pub fn answer(&mut self, req: &Request) -> Reply {
        let err = |code, text: String| Reply::error(code, text);
        match req {
            Request::Hello { vm, .. } if self.adopted => err(
                ErrorCode::AlreadyAdopted,
                format!(
                    "this session already drives VM {:?}; open another session for {vm:?}",
                    self.name
                ),
            ),
            Request::Hello { vm, .. } if *vm != self.name => err(
                ErrorCode::UnknownVm,
                format!("no VM is named {vm:?} (configured: [{:?}])", self.name),
            ),
            Request::Hello { .. } => {
                self.adopted = true;
                Reply::Welcome {
                    epoch: self.open,
                    mode: self.mode,
                }
            }
            Request::Ping { token } => Reply::Pong { token: *token },
            // An hour: the shim's pinger stays quiet for as long as any test runs, so the
            // requests a test sees are its own.
            Request::Liveness => Reply::Liveness {
                ping_interval_ms: 3_600_000,
                timeout_ms: 0,
            },
            _ if !self.adopted => err(ErrorCode::NotAdopted, "Hello first".into()),
            Request::Stats => Reply::Stats(VmStats {
                mode: self.mode,
                open_epoch: self.open,
                sealed_epoch: self.sealed,
                committed_epoch: self.committed,
                held_frames: self.held(),
                held_bytes: 64 * self.held(),
                rx_frames: 100,
                tx_frames: 90,
                dropped: 0,
            }),
            Request::Protect if self.mode == Mode::Protected => {
                err(ErrorCode::WrongMode, "the VM is already protected".into())
            }
            Request::Protect => {
                self.mode = Mode::Protected;
                self.open = self.sealed.max(self.committed) + 1;
                Reply::Protected { epoch: self.open }
            }
            Request::Promote { mode } if self.mode == Mode::Standby => {
                self.mode = *mode;
                Reply::Promoted {
                    mode: *mode,
                    announced: 2,
                }
            }
            Request::Demote => {
                self.mode = Mode::Standby;
                Reply::Demoted { dropped: 0 }
            }
            Request::Promote { .. } => err(
                ErrorCode::WrongMode,
                format!(
                    "only a standby VM can be promoted; this one is {}",
                    self.mode
                ),
            ),
            _ if self.mode != Mode::Protected => err(
                ErrorCode::NotProtected,
                format!("{} needs a protected VM", req.name()),
            ),
            Request::Fence { epoch } if *epoch != self.open => err(
                ErrorCode::WrongEpoch,
                format!(
                    "fence of epoch {epoch}, but the open epoch is {}",
                    self.open
                ),
            ),
            Request::Fence { epoch } => {
                self.sealed = *epoch;
                self.open = epoch + 1;
                Reply::Fenced {
                    epoch: *epoch,
                    frames: 10 * epoch,
                    bytes: 640 * epoch,
                    drain_ns: 1000 + epoch,
                }
            }
            Request::Commit { epoch } if *epoch > self.sealed || *epoch <= self.committed => err(
                ErrorCode::NotSealed,
                format!("epoch {epoch} is not sealed and uncommitted"),
            ),
            Request::Commit { epoch } => {
                let frames = (self.committed + 1..=*epoch).map(|e| 10 * e).sum();
                self.committed = *epoch;
                Reply::Committed {
                    epoch: *epoch,
                    frames,
                }
            }
            Request::Unprotect { how } => {
                let held = self.held() + 3;
                self.mode = Mode::Passthrough;
                self.open = 0;
                self.committed = self.sealed;
                match how {
                    Release::Release => Reply::Unprotected {
                        released: held,
                        dropped: 0,
                    },
                    Release::Drop => Reply::Unprotected {
                        released: 0,
                        dropped: held,
                    },
                }
            }
            Request::Discard => Reply::Discarded { frames: 3 },
        }
    }
}

/// The server's side of one session.
pub struct Session {
    sock: Socket,
    log: Arc<Mutex<Vec<Request>>>,
    pub model: Model,
}

impl Session {
    /// The next request (logged); `None` once the client closed. Panics on a malformed
    /// datagram or after [`PATIENCE`] of silence.
    ///
    /// The shim's own question after Hello (`Liveness`: its pinger's settings) is answered
    /// here, as the model says, and neither logged nor returned: it is not the test's.
    pub fn recv(&mut self) -> Option<Request> {
        loop {
            let req = self.recv_any()?;
            if req != Request::Liveness {
                self.log.lock().unwrap().push(req.clone());
                return Some(req);
            }
            self.answer(&req);
        }
    }

    fn recv_any(&mut self) -> Option<Request> {
        let mut fds = [PollFd::new(self.sock.as_fd(), PollFlags::POLLIN)];
        let ms = u32::try_from(PATIENCE.as_millis()).unwrap();
        let n = poll(&mut fds, PollTimeout::try_from(ms).unwrap()).expect("poll");
        assert!(n > 0, "fake epochgate: no request within {PATIENCE:?}");
        let mut buf = vec![0u8; MAX_MESSAGE + 1];
        let n = match (&self.sock).read(&mut buf) {
            Ok(0) => return None,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
            Err(e) => panic!("fake epochgate: read: {e}"),
        };
        let req = decode_request(&buf[..n]).expect("fake epochgate: a malformed request");
        Some(req)
    }

    /// Sends a reply or an event; `false` if the client is gone.
    pub fn send(&mut self, reply: &Reply) -> bool {
        self.sock
            .send_with_flags(&reply.encode(), nix::libc::MSG_NOSIGNAL)
            .is_ok()
    }

    /// Answers `req` as the model says, and sends the answer.
    pub fn answer(&mut self, req: &Request) -> bool {
        let reply = self.model.answer(req);
        self.send(&reply)
    }

    /// Answers every request as the model says until the client closes.
    pub fn serve(&mut self) {
        self.serve_with(|_, _| {});
    }

    /// Like [`Session::serve`], calling `before(session, request)` before each answer (to send
    /// events, sleep...).
    pub fn serve_with(&mut self, mut before: impl FnMut(&mut Session, &Request)) {
        while let Some(req) = self.recv() {
            before(self, &req);
            self.answer(&req);
        }
    }

    /// Waits until the client has closed its end (without reading what it sent).
    pub fn wait_for_close(&mut self) {
        while self.recv().is_some() {}
    }
}

/// What serves one session of a [`FakeServer`].
pub type Handler = Box<dyn FnOnce(&mut Session) + Send + 'static>;

/// A fake epochgate listening on a socket in a temporary directory.
pub struct FakeServer {
    _dir: TempDir,
    path: PathBuf,
    thread: Option<JoinHandle<()>>,
    log: Arc<Mutex<Vec<Request>>>,
}

impl FakeServer {
    /// Serves one connection: accepts it and runs `handler` on it, for a VM named `web`.
    pub fn start(handler: impl FnOnce(&mut Session) + Send + 'static) -> FakeServer {
        FakeServer::with_model(Model::new("web"), handler)
    }

    /// Like [`FakeServer::start`], with `model` as the VM.
    pub fn with_model(
        model: Model,
        handler: impl FnOnce(&mut Session) + Send + 'static,
    ) -> FakeServer {
        FakeServer::sessions(model, vec![Box::new(handler)])
    }

    /// Serves one connection after another on the same socket, each with its handler (a new
    /// process after a restart, as the shim sees it), for a VM named `web`.
    pub fn one_after_another(handlers: Vec<Handler>) -> FakeServer {
        FakeServer::sessions(Model::new("web"), handlers)
    }

    fn sessions(model: Model, handlers: Vec<Handler>) -> FakeServer {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let listener = Socket::new(Domain::UNIX, Type::SEQPACKET, None).unwrap();
        listener.bind(&SockAddr::unix(&path).unwrap()).unwrap();
        listener.listen(4).unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let session_log = Arc::clone(&log);
        let thread = thread::spawn(move || {
            for handler in handlers {
                let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
                let ms = u32::try_from(PATIENCE.as_millis()).unwrap();
                let n = poll(&mut fds, PollTimeout::try_from(ms).unwrap()).expect("poll");
                assert!(
                    n > 0,
                    "fake epochgate: nobody connected within {PATIENCE:?}"
                );
                let (sock, _) = listener.accept().expect("accept");
                let mut session = Session {
                    sock,
                    log: Arc::clone(&session_log),
                    model: model.clone(),
                };
                handler(&mut session);
            }
        });
        FakeServer {
            _dir: dir,
            path,
            thread: Some(thread),
            log,
        }
    }

    /// The socket to connect to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits for the server thread (failing the test if it panicked) and returns every
    /// request it received, in order.
    pub fn finish(mut self) -> Vec<Request> {
        if let Some(t) = self.thread.take() {
            if let Err(panic) = t.join() {
                std::panic::resume_unwind(panic);
            }
        }
        std::mem::take(&mut *self.log.lock().unwrap())
    }
}

/// Waits for `child` at most [`PATIENCE`]; kills it and panics if it takes longer.
pub fn wait_for(child: &mut Child) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > PATIENCE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the child process did not finish within {PATIENCE:?}");
        }
        thread::sleep(Duration::from_millis(10));
    }
}
