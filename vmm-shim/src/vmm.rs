//! A reference checkpoint loop for a QEMU guest: what a VMM does around epochgate, small
//! enough to read in one sitting and adapt. Each checkpoint n pauses the guest over QMP
//! (`stop`), seals epoch n (`fence n`), resumes it (`cont`), transfers the checkpoint (a
//! command of the user's, or a fixed delay standing in for one) and only then says `commit n`;
//! a frame of epoch n therefore never leaves before the transfer of checkpoint n returned.
//! When the loop is told to stop (SIGTERM in the CLI) between checkpoints or during a
//! transfer, the epochs not yet committed are discarded, never released.
//!
//! The guest's memory is not copied anywhere here: `--transfer-cmd` is where a real
//! deployment sends its dirty pages to the secondary (e.g. QMP `migrate` to a COLO/Remus
//! secondary, or a micro-checkpointing agent), and returns when they are safe there.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::proto::{Mode, Urgency};
use crate::{Client, ShimError};

/// How long one QMP command may take (TCG guests answer `stop` slowly on a busy host).
pub const QMP_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the loop stopped short.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// The QMP socket could not be reached.
    #[error("QMP socket {path}: {source} (start QEMU with -qmp unix:{path},server=on,wait=off)")]
    QmpConnect {
        /// The path given.
        path: PathBuf,
        /// Why `connect(2)` failed.
        source: io::Error,
    },
    /// QMP broke: the socket failed or said something that is not QMP.
    #[error("QMP: {0}")]
    Qmp(String),
    /// QEMU closed the QMP socket: it exited (the guest powered off, or QEMU died).
    #[error("QEMU closed the QMP socket")]
    QmpClosed,
    /// QEMU refused a command.
    #[error("QMP {command}: {class}: {desc}")]
    QmpRefused {
        /// The command sent.
        command: String,
        /// QEMU's error class.
        class: String,
        /// QEMU's error text.
        desc: String,
    },
    /// epochgate could not be reached or refused a command.
    #[error("epochgate ({what}): {source}")]
    Epochgate {
        /// What the loop was doing.
        what: String,
        /// What the shim said.
        source: ShimError,
    },
    /// The VM is in a mode the loop cannot protect.
    #[error("vm {vm:?} is {mode}: only a protected or pass-through VM can be checkpointed")]
    Mode {
        /// The VM.
        vm: String,
        /// Its mode at `Hello`.
        mode: Mode,
    },
    /// The transfer command failed; the epoch it was for is not committed.
    #[error("transfer of checkpoint {epoch}: {why}")]
    Transfer {
        /// The epoch whose checkpoint was being transferred.
        epoch: u64,
        /// What went wrong.
        why: String,
    },
    /// The commit log could not be written.
    #[error("log: {0}")]
    Log(io::Error),
}

fn shim(what: impl Into<String>) -> impl FnOnce(ShimError) -> VmmError {
    move |source| VmmError::Epochgate {
        what: what.into(),
        source,
    }
}

/// A QMP session (JSON lines over a Unix stream socket) past capability negotiation.
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    /// Connects, reads QEMU's greeting and leaves negotiation mode (`qmp_capabilities`).
    pub fn connect(path: &Path) -> Result<Qmp, VmmError> {
        let stream = UnixStream::connect(path).map_err(|source| VmmError::QmpConnect {
            path: path.to_path_buf(),
            source,
        })?;
        let io_err = |e: io::Error| VmmError::Qmp(format!("{}: {e}", path.display()));
        stream.set_read_timeout(Some(QMP_TIMEOUT)).map_err(io_err)?;
        let writer = stream.try_clone().map_err(io_err)?;
        let mut qmp = Qmp {
            reader: BufReader::new(stream),
            writer,
        };
        let greeting = qmp.read()?;
        if greeting.get("QMP").is_none() {
            return Err(VmmError::Qmp(format!(
                "{}: expected QEMU's greeting, got {greeting}",
                path.display()
            )));
        }
        qmp.execute("qmp_capabilities")?;
        Ok(qmp)
    }

    fn read(&mut self) -> Result<Value, VmmError> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => Err(VmmError::QmpClosed),
            Ok(_) => serde_json::from_str(&line)
                .map_err(|e| VmmError::Qmp(format!("not JSON ({e}): {:?}", line.trim_end()))),
            Err(e) => Err(VmmError::Qmp(format!("read: {e}"))),
        }
    }

    /// Runs `command` (no arguments) and returns its `return` value; asynchronous events
    /// that come in between are skipped.
    pub fn execute(&mut self, command: &str) -> Result<Value, VmmError> {
        let msg = json!({ "execute": command });
        writeln!(self.writer, "{msg}").map_err(|e| match e.kind() {
            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => VmmError::QmpClosed,
            _ => VmmError::Qmp(format!("{command}: {e}")),
        })?;
        loop {
            let v = self.read()?;
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                let field = |k: &str| e[k].as_str().unwrap_or("?").to_string();
                return Err(VmmError::QmpRefused {
                    command: command.to_string(),
                    class: field("class"),
                    desc: field("desc"),
                });
            }
            // {"event": ...}: STOP, RESUME and the like.
        }
    }
}

/// How a checkpoint reaches the secondary.
#[derive(Debug, Clone)]
pub enum Transfer {
    /// Stand-in for a transfer that takes this long.
    Delay(Duration),
    /// `sh -c CMD` with `EPOCHGATE_EPOCH` set; exit status 0 means the checkpoint is safe.
    Command(String),
}

/// The loop's settings.
#[derive(Debug, Clone)]
pub struct LoopConfig {
    /// No checkpoint sooner than this after the last fence.
    pub interval_min: Duration,
    /// A checkpoint at the latest this long after the last fence.
    pub interval_max: Duration,
    /// Start a checkpoint early when epochgate asks for one (its deferral classifier).
    pub follow_requests: bool,
    /// How each checkpoint is transferred.
    pub transfer: Transfer,
}

/// Nanoseconds since the Unix epoch (the clock packet captures use).
pub fn wall_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// What the loop writes per checkpoint and at its end: one JSON object per line.
pub struct Log<W: Write> {
    out: W,
}

impl<W: Write> Log<W> {
    /// Writes to `out` (flushed per line).
    pub fn new(out: W) -> Self {
        Log { out }
    }

    fn line(&mut self, v: &Value) -> Result<(), VmmError> {
        writeln!(self.out, "{v}")
            .and_then(|()| self.out.flush())
            .map_err(VmmError::Log)
    }
}

/// How the loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Checkpoints committed.
    pub committed: u64,
    /// Frames discarded at the stop (held in epochs that were never committed).
    pub discarded: u64,
    /// `"signal"` (the stop flag) or `"qemu-exited"` (QMP closed).
    pub reason: &'static str,
}

/// Waits until `child` exits or `stop` is set (then kills it); `None` if stopped.
fn wait_child(mut child: Child, stop: &AtomicBool) -> io::Result<Option<std::process::ExitStatus>> {
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if stop.load(Ordering::SeqCst) {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Sleeps `d`, or less if `stop` is set; false if stopped.
fn sleep_unless(d: Duration, stop: &AtomicBool) -> bool {
    let end = Instant::now() + d;
    loop {
        if stop.load(Ordering::SeqCst) {
            return false;
        }
        let now = Instant::now();
        if now >= end {
            return true;
        }
        std::thread::sleep((end - now).min(Duration::from_millis(5)));
    }
}

/// Checkpoints the guest behind `qmp` until `stop` is set, driving its output commit through
/// `client`; writes one `{"epoch":..}` record per committed checkpoint to `log`, and a last
/// `{"event":"stopped",..}` record. On stop the uncommitted epochs are discarded (`discard`)
/// and the guest is left running.
pub fn run<W: Write>(
    qmp: &mut Qmp,
    client: &mut Client,
    cfg: &LoopConfig,
    stop: &AtomicBool,
    log: &mut Log<W>,
) -> Result<Summary, VmmError> {
    let welcome = client.welcome();
    let mut epoch = match welcome.mode {
        Mode::Protected => welcome.epoch,
        Mode::Passthrough => client.protect().map_err(shim("protect"))?,
        mode => {
            return Err(VmmError::Mode {
                vm: client.vm().to_string(),
                mode,
            })
        }
    };
    log.line(&json!({"event": "started", "vm": client.vm(), "epoch": epoch, "t_ns": wall_ns()}))?;
    let mut committed = 0;
    let reason = match checkpoints(qmp, client, cfg, stop, log, &mut epoch, &mut committed) {
        Ok(()) => "signal",
        Err(VmmError::QmpClosed) => "qemu-exited",
        Err(e) => return Err(e),
    };
    // Stopped: nothing uncommitted may ever leave.
    let discarded = client.discard().map_err(shim("discard"))?;
    log.line(&json!({
        "event": "stopped", "reason": reason, "open_epoch": epoch, "committed": committed,
        "discarded": discarded, "t_ns": wall_ns(),
    }))?;
    Ok(Summary {
        committed,
        discarded,
        reason,
    })
}

/// The checkpoints themselves, from open epoch `*epoch` until `stop` is set (`Ok`) or
/// something fails.
fn checkpoints<W: Write>(
    qmp: &mut Qmp,
    client: &mut Client,
    cfg: &LoopConfig,
    stop: &AtomicBool,
    log: &mut Log<W>,
    epoch: &mut u64,
    committed: &mut u64,
) -> Result<(), VmmError> {
    let mut last_fence = Instant::now();
    loop {
        let n = *epoch;
        // 1. Wait for the interval, an early request, or the stop.
        let Some(trigger) = wait_for_checkpoint(client, cfg, n, last_fence, stop)? else {
            return Ok(());
        };
        // 2. Pause, fence, resume: the guest is paused only for the fence.
        let stop_ns = wall_ns();
        qmp.execute("stop")?;
        last_fence = Instant::now();
        let fence_ns = wall_ns();
        let fenced = client.fence(n);
        // Resume even when the fence failed: the guest must not stay paused.
        qmp.execute("cont")?;
        let fenced = fenced.map_err(shim(format!("fence {n}")))?;
        let cont_ns = wall_ns();
        // 3. Transfer the checkpoint; the epoch is committed only if it arrived.
        if !transfer(&cfg.transfer, n, stop)? {
            return Ok(());
        }
        // 4. Commit. The time is taken before the request: no frame of this epoch can leave
        // epochgate before it.
        let commit_ns = wall_ns();
        let released = client.commit(n).map_err(shim(format!("commit {n}")))?;
        *committed += 1;
        log.line(&json!({
            "epoch": n, "frames": fenced.frames, "bytes": fenced.bytes, "released": released,
            "trigger": trigger, "stop_ns": stop_ns, "fence_ns": fence_ns, "cont_ns": cont_ns,
            "commit_ns": commit_ns,
        }))?;
        *epoch = n + 1;
    }
}

/// Transfers checkpoint `epoch`: true once it is safe on the secondary, false if `stop` was
/// set first.
fn transfer(how: &Transfer, epoch: u64, stop: &AtomicBool) -> Result<bool, VmmError> {
    match how {
        Transfer::Delay(d) => Ok(sleep_unless(*d, stop)),
        Transfer::Command(cmd) => {
            let failed = |why: String| VmmError::Transfer { epoch, why };
            let child = Command::new("sh")
                .args(["-c", cmd])
                .env("EPOCHGATE_EPOCH", epoch.to_string())
                .spawn()
                .map_err(|e| failed(format!("sh -c {cmd:?}: {e}")))?;
            match wait_child(child, stop).map_err(|e| failed(e.to_string()))? {
                None => Ok(false),
                Some(s) if s.success() => Ok(true),
                Some(s) => Err(failed(format!("{cmd:?} exited with {s}"))),
            }
        }
    }
}

/// Waits for the next checkpoint of open epoch `epoch`: returns what triggered it
/// (`"interval"` or the request's reason), or `None` once `stop` is set.
fn wait_for_checkpoint(
    client: &mut Client,
    cfg: &LoopConfig,
    epoch: u64,
    last_fence: Instant,
    stop: &AtomicBool,
) -> Result<Option<String>, VmmError> {
    let earliest = last_fence + cfg.interval_min;
    let latest = last_fence + cfg.interval_max.max(cfg.interval_min);
    let mut requested: Option<(Instant, &'static str)> = None;
    loop {
        if stop.load(Ordering::SeqCst) {
            return Ok(None);
        }
        let now = Instant::now();
        if now >= latest {
            return Ok(Some("interval".into()));
        }
        if let Some((at, reason)) = requested {
            if now >= at.max(earliest) {
                return Ok(Some(reason.into()));
            }
        }
        let until = requested.map_or(latest, |(at, _)| at.max(earliest).min(latest));
        // Short slices: the stop flag is checked at least every 5 ms.
        let wait = until
            .saturating_duration_since(now)
            .min(Duration::from_millis(5));
        let event = client
            .next_event(Some(wait))
            .map_err(shim("waiting for checkpoint requests"))?;
        if let Some(e) = event {
            // Requests for an epoch already sealed are stale.
            if cfg.follow_requests && e.epoch == epoch {
                let at = match e.urgency {
                    Urgency::Now => Instant::now(),
                    Urgency::Within { ns } => Instant::now() + Duration::from_nanos(ns),
                };
                if requested.is_none_or(|(t, _)| at < t) {
                    requested = Some((at, e.reason.name()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Reply, Request};
    use std::os::unix::net::UnixListener;

    /// A QEMU stand-in: greets, then answers every command with an empty return, except
    /// `refuse` with an error (`close:CMD`: closes the socket at CMD); records the commands.
    fn fake_qmp(
        dir: &Path,
        refuse: &'static str,
    ) -> (PathBuf, std::thread::JoinHandle<Vec<String>>) {
        let path = dir.join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let h = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let mut w = s.try_clone().unwrap();
            writeln!(w, r#"{{"QMP": {{"version": {{}}, "capabilities": []}}}}"#).unwrap();
            let mut seen = Vec::new();
            for line in BufReader::new(s).lines() {
                let Ok(line) = line else { break };
                let v: Value = serde_json::from_str(&line).unwrap();
                let cmd = v["execute"].as_str().unwrap().to_string();
                if refuse.strip_prefix("close:") == Some(cmd.as_str()) {
                    // QEMU exits (the guest powered off).
                    seen.push(cmd);
                    break;
                }
                if cmd == refuse {
                    writeln!(
                        w,
                        r#"{{"error": {{"class": "GenericError", "desc": "no"}}}}"#
                    )
                    .unwrap();
                } else {
                    writeln!(w, r#"{{"event": "STOP", "data": {{}}}}"#).unwrap();
                    writeln!(w, r#"{{"return": {{}}}}"#).unwrap();
                }
                seen.push(cmd);
            }
            seen
        });
        (path, h)
    }

    #[test]
    fn qmp_negotiates_skips_events_and_reports_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let (path, h) = fake_qmp(dir.path(), "cont");
        let mut q = Qmp::connect(&path).unwrap();
        assert_eq!(q.execute("stop").unwrap(), json!({}));
        let e = q.execute("cont").unwrap_err();
        assert_eq!(e.to_string(), "QMP cont: GenericError: no");
        drop(q);
        assert_eq!(h.join().unwrap(), ["qmp_capabilities", "stop", "cont"]);
    }

    #[test]
    fn a_missing_qmp_socket_says_how_to_start_qemu() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("none.sock");
        let Err(e) = Qmp::connect(&path) else {
            panic!("connected to nothing")
        };
        let text = e.to_string();
        assert!(text.contains("none.sock"), "{text}");
        assert!(text.contains("-qmp unix:"), "{text}");
    }

    /// One checkpoint through a fake epochgate: stop, fence, cont, delay, commit, in that
    /// order; then a stop discards the open epoch.
    #[test]
    fn a_checkpoint_is_stop_fence_cont_transfer_commit_and_a_stop_discards() {
        let dir = tempfile::tempdir().unwrap();
        let (path, qh) = fake_qmp(dir.path(), "");
        let (conn, mut server) = crate::pair().unwrap();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let sh = std::thread::spawn(move || {
            let mut seen = Vec::new();
            loop {
                let req = server.recv().unwrap();
                let reply = match req {
                    Request::Hello { .. } => Reply::Welcome {
                        epoch: 4,
                        mode: Mode::Protected,
                    },
                    Request::Fence { epoch } => Reply::Fenced {
                        epoch,
                        frames: 3,
                        bytes: 300,
                        drain_ns: 1,
                    },
                    Request::Commit { epoch } => {
                        // Ask the loop to stop after the first commit.
                        stop2.store(true, Ordering::SeqCst);
                        Reply::Committed { epoch, frames: 3 }
                    }
                    Request::Discard => Reply::Discarded { frames: 2 },
                    other => panic!("unexpected {other:?}"),
                };
                let last = matches!(req, Request::Discard);
                seen.push(format!("{req:?}"));
                server.send(&reply).unwrap();
                if last {
                    return seen;
                }
            }
        });
        let mut client = Client::over(conn, "web").unwrap();
        let mut qmp = Qmp::connect(&path).unwrap();
        let cfg = LoopConfig {
            interval_min: Duration::ZERO,
            interval_max: Duration::from_millis(1),
            follow_requests: true,
            transfer: Transfer::Delay(Duration::from_millis(1)),
        };
        let mut out = Vec::new();
        let s = run(&mut qmp, &mut client, &cfg, &stop, &mut Log::new(&mut out)).unwrap();
        assert_eq!(
            s,
            Summary {
                committed: 1,
                discarded: 2,
                reason: "signal",
            }
        );
        drop(qmp);
        assert_eq!(qh.join().unwrap(), ["qmp_capabilities", "stop", "cont"]);
        let seen = sh.join().unwrap();
        assert!(seen[1].starts_with("Fence { epoch: 4"), "{seen:?}");
        assert!(seen[2].starts_with("Commit { epoch: 4"), "{seen:?}");
        assert_eq!(seen[3], "Discard");
        let lines: Vec<Value> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3, "{lines:?}");
        let rec = &lines[1];
        assert_eq!(rec["epoch"], 4);
        assert_eq!(rec["frames"], 3);
        let t = |k: &str| rec[k].as_u64().unwrap();
        assert!(t("stop_ns") <= t("fence_ns") && t("fence_ns") <= t("cont_ns"));
        assert!(t("cont_ns") <= t("commit_ns"));
        assert_eq!(lines[2]["event"], "stopped");
        assert_eq!(lines[2]["discarded"], 2);
    }

    /// The guest powers off (QEMU closes QMP): the loop ends cleanly and discards.
    #[test]
    fn qemu_exiting_ends_the_loop_and_discards() {
        let dir = tempfile::tempdir().unwrap();
        let (path, qh) = fake_qmp(dir.path(), "close:stop");
        let (conn, mut server) = crate::pair().unwrap();
        let sh = std::thread::spawn(move || {
            let mut seen = Vec::new();
            loop {
                let req = server.recv().unwrap();
                let reply = match req {
                    Request::Hello { .. } => Reply::Welcome {
                        epoch: 1,
                        mode: Mode::Protected,
                    },
                    Request::Discard => Reply::Discarded { frames: 5 },
                    other => panic!("unexpected {other:?}"),
                };
                let last = matches!(req, Request::Discard);
                seen.push(format!("{req:?}"));
                server.send(&reply).unwrap();
                if last {
                    return seen;
                }
            }
        });
        let mut client = Client::over(conn, "web").unwrap();
        let mut qmp = Qmp::connect(&path).unwrap();
        let cfg = LoopConfig {
            interval_min: Duration::ZERO,
            interval_max: Duration::from_millis(1),
            follow_requests: false,
            transfer: Transfer::Delay(Duration::ZERO),
        };
        let stop = AtomicBool::new(false);
        let mut out = Vec::new();
        let s = run(&mut qmp, &mut client, &cfg, &stop, &mut Log::new(&mut out)).unwrap();
        assert_eq!(
            s,
            Summary {
                committed: 0,
                discarded: 5,
                reason: "qemu-exited",
            }
        );
        assert_eq!(qh.join().unwrap(), ["qmp_capabilities", "stop"]);
        assert_eq!(sh.join().unwrap().last().unwrap(), "Discard");
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains(r#""reason":"qemu-exited""#), "{text}");
    }
}
