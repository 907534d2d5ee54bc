//! `epochgate-perf faults`: seeded fault campaigns against the real process.
//!
//! Each run starts epochgate on three protected VMs whose ports are `net_af_packet` on veth
//! pairs in a network namespace the campaign creates (so epochgate can be killed and started
//! again under traffic without its guests going away), with one long-lived `epochgate-peer`
//! playing the guests and recording the uplink, and one `epochgate-shim session` process per
//! VM as its VMM. A seeded sequence of operations then interleaves traffic (UDP, non-IP,
//! frames with another VM's source MAC), fences, commits, discards, mode changes, SIGKILL and
//! SIGSTOP of the shims, SIGTERM and SIGKILL of epochgate with a restart on the same state,
//! buffer exhaustion, malformed and hostile control messages and refused commits. The run ends
//! with SIGTERM; its egress capture is then checked against what the campaign did (see
//! [`model`]): zero frames of uncommitted or discarded epochs, every VM's order kept, no
//! duplicates, every answered commit on the wire; and each process that ended by SIGTERM must
//! balance: every frame sent to it counted, received = transmitted + dropped by reason, what
//! it transmitted is what the capture has, what it held uncommitted is what it says it
//! discarded at exit.
//!
//! The operation sequence of run `r` depends only on `--seed` and `r`, so
//! `--first r --runs 1` replays it (timing is the machine's own).

pub mod model;

use anyhow::{bail, Context, Result};
use model::{Checked, Mode, VmModel};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// The campaign's options (see `epochgate-perf faults --help`).
pub struct Options {
    pub runs: u32,
    pub seed: u64,
    pub first: u32,
    pub ops: u32,
    pub max_minutes: Option<f64>,
    pub out: PathBuf,
    pub epochgate: PathBuf,
    pub keep: bool,
}

const VMS: [&str; 3] = ["a", "b", "c"];
const MACS: [[u8; 6]; 3] = [
    [0x52, 0x54, 0, 0, 0x0f, 0x01],
    [0x52, 0x54, 0, 0, 0x0f, 0x02],
    [0x52, 0x54, 0, 0, 0x0f, 0x03],
];
const GW: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];
/// VM c holds at most this many frames and drops the rest (buffer exhaustion).
const C_BUDGET: u64 = 32;
const LIVENESS_MS: u64 = 400;
/// The longest any single wait of the campaign may take before the run is called stuck.
const DEADLINE: Duration = Duration::from_secs(20);

/// The operations a run draws from, with their weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Op {
    Send,
    Spoof,
    Fence,
    Commit,
    BadCommit,
    Discard,
    UnprotectRelease,
    UnprotectDrop,
    Protect,
    Adopt,
    KillShim,
    StopShim,
    Exhaust,
    Hostile,
    Pause,
    TermEpochgate,
    KillEpochgate,
}

const WEIGHTS: [(Op, u32); 17] = [
    (Op::Send, 30),
    (Op::Spoof, 3),
    (Op::Fence, 18),
    (Op::Commit, 18),
    (Op::BadCommit, 3),
    (Op::Discard, 2),
    (Op::UnprotectRelease, 2),
    (Op::UnprotectDrop, 2),
    (Op::Protect, 4),
    (Op::Adopt, 3),
    (Op::KillShim, 3),
    (Op::StopShim, 2),
    (Op::Exhaust, 2),
    (Op::Hostile, 4),
    (Op::Pause, 2),
    (Op::TermEpochgate, 1),
    (Op::KillEpochgate, 1),
];

/// SplitMix64: small, seedable, good enough to pick operations.
struct Rng(u64);

impl Rng {
    /// Run `run`'s stream: the seed and the run mixed, so that runs are not shifted copies.
    fn new(seed: u64, run: u32) -> Rng {
        let mut r = Rng(seed);
        let s = r.next();
        let mut q = Rng(u64::from(run));
        Rng(s ^ q.next())
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn op(&mut self) -> Op {
        let total: u32 = WEIGHTS.iter().map(|(_, w)| w).sum();
        let mut x = self.below(u64::from(total)) as u32;
        for (op, w) in WEIGHTS {
            if x < w {
                return op;
            }
            x -= w;
        }
        Op::Send
    }
}

/// The network namespace and veth pairs of the campaign: `egup`/`egupp` (epochgate's uplink,
/// the peer's end), `vmN`/`vmNp` (VM N's port, the guest's end).
struct Netns {
    name: String,
}

impl Netns {
    fn create(name: &str) -> Result<Netns> {
        let _ = Command::new("ip")
            .args(["netns", "del", name])
            .stderr(Stdio::null())
            .status();
        sh(&["ip", "netns", "add", name])?;
        let ns = Netns { name: name.into() };
        let mut pairs = vec![("egup".to_string(), "egupp".to_string())];
        pairs.extend((0..VMS.len()).map(|i| (format!("vm{i}"), format!("vm{i}p"))));
        for (a, b) in &pairs {
            ns.exec(&["ip", "link", "add", a, "type", "veth", "peer", "name", b])?;
            for i in [a, b] {
                // No IPv6 (the kernel's own solicitations would enter the ports) and no
                // checksum offload (frames would reach af_packet with partial checksums).
                ns.exec(&[
                    "sysctl",
                    "-qw",
                    &format!("net.ipv6.conf.{i}.disable_ipv6=1"),
                ])?;
                let _ = ns.cmd(&["ethtool", "-K", i, "tx", "off"]).output();
                ns.exec(&["ip", "link", "set", i, "up"])?;
            }
        }
        Ok(ns)
    }

    fn cmd(&self, argv: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).args(argv);
        c
    }

    fn exec(&self, argv: &[&str]) -> Result<()> {
        let out = self
            .cmd(argv)
            .output()
            .with_context(|| format!("{argv:?}"))?;
        if !out.status.success() {
            bail!(
                "{argv:?} in netns {}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn sh(argv: &[&str]) -> Result<()> {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .with_context(|| format!("{argv:?}"))?;
    if !out.status.success() {
        bail!("{argv:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
}

/// Lines a child prints, read on their own thread.
fn lines_of(out: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// The long-lived `epochgate-peer`: port 0 is the uplink (recorded), port 1 + i is VM i's guest.
struct Peer {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    dir: PathBuf,
    batches: u64,
}

impl Peer {
    fn start(ns: &Netns, dir: &Path, first_capture: &Path) -> Result<Peer> {
        let peer = crate::passthrough::sibling("epochgate-peer")?;
        let mut argv: Vec<String> = vec![
            peer.display().to_string(),
            "--interactive".into(),
            "--timeout".into(),
            "1000000".into(),
            "--file-prefix".into(),
            format!("egf-peer-{}", std::process::id()),
            "--port".into(),
            "net_af_packet0,iface=egupp".into(),
        ];
        for i in 0..VMS.len() {
            argv.push("--port".into());
            argv.push(format!("net_af_packet{},iface=vm{i}p", i + 1));
        }
        argv.push("--recv".into());
        argv.push(format!("0={}", first_capture.display()));
        let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
        let mut child = ns
            .cmd(&refs)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.join("peer.err"))?)
            .spawn()
            .context("spawning epochgate-peer")?;
        let stdin = child.stdin.take().context("peer stdin")?;
        let lines = lines_of(child.stdout.take().context("peer stdout")?);
        let mut p = Peer {
            child,
            stdin,
            lines,
            dir: dir.to_path_buf(),
            batches: 0,
        };
        p.event("ready")?;
        Ok(p)
    }

    fn event(&mut self, what: &str) -> Result<Value> {
        loop {
            match self.lines.recv_timeout(DEADLINE) {
                Ok(l) => {
                    let v: Value =
                        serde_json::from_str(&l).with_context(|| format!("peer said {l:?}"))?;
                    if v["event"] == what {
                        return Ok(v);
                    }
                }
                Err(_) => bail!(
                    "epochgate-peer: no {what:?} event; stderr:\n{}",
                    std::fs::read_to_string(self.dir.join("peer.err")).unwrap_or_default()
                ),
            }
        }
    }

    fn say(&mut self, line: &str) -> Result<()> {
        writeln!(self.stdin, "{line}")?;
        self.stdin.flush()?;
        Ok(())
    }

    /// Sends `frames` on VM `vm`'s guest port; returns once TX has taken them all.
    fn send(&mut self, vm: usize, frames: &[Vec<u8>]) -> Result<()> {
        self.batches += 1;
        let path = self.dir.join("batch.pcap");
        let fs: Vec<_> = frames
            .iter()
            .map(|d| epochgate::tools::capture::Frame {
                ts_ns: 0,
                orig_len: d.len() as u32,
                data: d.clone(),
            })
            .collect();
        epochgate::tools::capture::write_file(&path, &fs)?;
        self.say(&format!("send {} {}", vm + 1, path.display()))?;
        let v = self.event("sent")?;
        if v["frames"] != frames.len() {
            bail!("peer sent {v} for a batch of {}", frames.len());
        }
        Ok(())
    }

    fn uplink_received(&mut self) -> Result<u64> {
        self.say("count")?;
        let v = self.event("count")?;
        v["received"][0].as_u64().context("peer count")
    }

    /// Closes the uplink capture (returning its path's frames) and records into `next`.
    fn rotate(&mut self, next: &Path) -> Result<u64> {
        self.say(&format!("rotate 0 {}", next.display()))?;
        let v = self.event("rotated")?;
        v["frames"].as_u64().context("rotated frames")
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.say("quit");
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(5) {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One epochgate process.
struct Epochgate {
    child: Child,
    admin: PathBuf,
    stats: PathBuf,
    log: PathBuf,
}

impl Epochgate {
    fn start(ns: &Netns, bin: &Path, dir: &Path, incarnation: u32) -> Result<Epochgate> {
        let cfg = dir.join("epochgate.toml");
        let stats = dir.join(format!("stats-{incarnation}.json"));
        let log = dir.join(format!("epochgate-{incarnation}.log"));
        let out = std::fs::File::create(&log)?;
        let child = ns
            .cmd(&[&bin.display().to_string(), "run", "--quiet", "--config"])
            .arg(&cfg)
            .arg("--stats-file")
            .arg(&stats)
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("spawning epochgate")?;
        let mut eg = Epochgate {
            child,
            admin: dir.join("admin.sock"),
            stats,
            log,
        };
        let t = Instant::now();
        while eg.snapshot().is_err() {
            if let Some(s) = eg.child.try_wait()? {
                bail!("epochgate exited ({s}) at start:\n{}", eg.log_text());
            }
            if t.elapsed() > DEADLINE {
                bail!(
                    "epochgate's admin socket did not answer:\n{}",
                    eg.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(eg)
    }

    fn snapshot(&self) -> Result<epochgate::stats::Snapshot> {
        Ok(epochgate::admin::query(&self.admin, "stats")?)
    }

    fn log_text(&self) -> String {
        let t = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = t.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM; the exit status and the final counters.
    fn term(mut self) -> Result<(std::process::ExitStatus, Option<Value>)> {
        signal(self.pid(), nix::sys::signal::Signal::SIGTERM);
        let t = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait()? {
                break s;
            }
            if t.elapsed() > DEADLINE {
                let _ = self.child.kill();
                bail!(
                    "epochgate did not exit within {DEADLINE:?} of SIGTERM:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let stats = std::fs::read_to_string(&self.stats)
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok());
        Ok((status, stats))
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Epochgate {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One `epochgate-shim session` process: a VM's VMM.
struct Shim {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    /// The session ended (epochgate closed it, or the process is gone).
    closed: bool,
    requests: u64,
}

/// What a shim command came back with.
enum Answer {
    Reply(Value),
    /// The session ended before a reply.
    Closed,
}

impl Shim {
    /// Starts the shim and waits for its welcome: `Ok(Err(reply))` if epochgate refused it.
    fn start(socket: &Path, vm: &str) -> Result<std::result::Result<(Shim, Value), Value>> {
        let bin = crate::passthrough::sibling("epochgate-shim")?;
        let mut child = Command::new(bin)
            .arg("--socket")
            .arg(socket)
            .args(["--vm", vm, "session"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("spawning epochgate-shim")?;
        let stdin = child.stdin.take().context("shim stdin")?;
        let lines = lines_of(child.stdout.take().context("shim stdout")?);
        let mut s = Shim {
            child,
            stdin,
            lines,
            closed: false,
            requests: 0,
        };
        match s.answer()? {
            Answer::Reply(v) if v["reply"] == "welcome" => Ok(Ok((s, v))),
            Answer::Reply(v) => {
                s.kill();
                Ok(Err(v))
            }
            Answer::Closed => {
                s.kill();
                Ok(Err(json!({"reply": "closed"})))
            }
        }
    }

    fn answer(&mut self) -> Result<Answer> {
        loop {
            let line = match self.lines.recv_timeout(DEADLINE) {
                Ok(l) => l,
                Err(RecvTimeoutError::Disconnected) => {
                    self.closed = true;
                    return Ok(Answer::Closed);
                }
                Err(RecvTimeoutError::Timeout) => {
                    bail!("the shim gave no answer within {DEADLINE:?}")
                }
            };
            let v: Value =
                serde_json::from_str(&line).with_context(|| format!("shim said {line:?}"))?;
            if v["event"] == "checkpoint-request" {
                self.requests += 1;
            } else if v["event"] == "closed" {
                self.closed = true;
                return Ok(Answer::Closed);
            } else if v.get("reply").is_some() {
                return Ok(Answer::Reply(v));
            }
        }
    }

    fn command(&mut self, line: &str) -> Result<Answer> {
        if self.closed {
            return Ok(Answer::Closed);
        }
        if writeln!(self.stdin, "{line}")
            .and_then(|_| self.stdin.flush())
            .is_err()
        {
            self.closed = true;
            return Ok(Answer::Closed);
        }
        self.answer()
    }

    /// Whether the session has ended (a `closed` line, or the process exited), without waiting.
    fn ended(&mut self) -> bool {
        while let Ok(l) = self.lines.try_recv() {
            if l.contains("\"event\":\"closed\"") {
                self.closed = true;
            }
        }
        self.closed || matches!(self.child.try_wait(), Ok(Some(_)))
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.closed = true;
    }
}

impl Drop for Shim {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What one run did and found.
#[derive(Debug, Default, serde::Serialize)]
pub struct RunReport {
    pub run: u32,
    pub ops: BTreeMap<String, u64>,
    pub frames_sent: u64,
    pub frames_on_egress: u64,
    pub processes: u32,
    /// Starts retried because DPDK's af_packet fanout group id was taken (see
    /// `start_epochgate`).
    pub fanout_retries: u32,
    pub violations: Vec<String>,
    pub seconds: f64,
}

/// A graceful end of one epochgate process, kept for the checks after the capture is read.
struct Ended {
    incarnation: u32,
    stats: Value,
    /// Per VM: frames the campaign sent to it, and frames it held uncommitted at SIGTERM.
    sent: Vec<u64>,
    pending: Vec<u64>,
}

struct Run<'a> {
    o: &'a Options,
    run: u32,
    dir: PathBuf,
    ns: &'a Netns,
    rng: Rng,
    vms: Vec<VmModel>,
    shims: Vec<Option<Shim>>,
    /// Per VM, the open epoch epochgate told the shim of.
    epoch: Vec<u64>,
    eg: Option<Epochgate>,
    incarnation: u32,
    /// Per VM, frames sent to the current process.
    sent_now: Vec<u64>,
    ended: Vec<Ended>,
    report: RunReport,
}

fn config(dir: &Path, prefix: &str) -> String {
    let d = dir.display();
    let mut s = format!(
        "[eal]\nlcores = \"0-1\"\nmemory_mb = 256\nhugepages = false\nfile_prefix = \"{prefix}\"\n\n\
         [control]\nsocket = \"{d}/control.sock\"\nadmin_socket = \"{d}/admin.sock\"\nliveness_timeout_ms = {LIVENESS_MS}\n\n\
         [dataplane]\nstats_interval_ms = 200\n\n\
         [egress]\nport = \"net_af_packet0,iface=egup\"\n"
    );
    for (i, name) in VMS.iter().enumerate() {
        let m = MACS[i];
        s += &format!(
            "\n[[vm]]\nname = \"{name}\"\nport = \"net_af_packet{},iface=vm{i}\"\nmac = \"{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}\"\nmode = \"protected\"\n",
            i + 1, m[0], m[1], m[2], m[3], m[4], m[5]
        );
        if i == 2 {
            s += &format!("max_held_frames = {C_BUDGET}\non_full = \"drop\"\n");
        }
    }
    s
}

/// A frame from VM `vm` (source MAC `src`): UDP over IPv4, or a non-IP frame, of `len` bytes
/// with the campaign's stamp at its end.
fn frame(src: [u8; 6], ip: bool, len: usize, run: u32, vm: u32, seq: u64) -> Vec<u8> {
    let len = len.max(14 + 28 + model::STAMP_LEN);
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&GW);
    f.extend_from_slice(&src);
    if ip {
        f.extend_from_slice(&[0x08, 0x00]);
        let ip_len = (len - 14) as u16;
        let mut h = [0u8; 20];
        h[0] = 0x45;
        h[2..4].copy_from_slice(&ip_len.to_be_bytes());
        h[8] = 64;
        h[9] = 17;
        h[12..16].copy_from_slice(&[10, 15, 0, vm as u8 + 1]);
        h[16..20].copy_from_slice(&[10, 15, 1, 1]);
        let mut sum: u32 = h
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        h[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
        f.extend_from_slice(&h);
        let udp_len = ip_len - 20;
        f.extend_from_slice(&4000u16.to_be_bytes());
        f.extend_from_slice(&5000u16.to_be_bytes());
        f.extend_from_slice(&udp_len.to_be_bytes());
        f.extend_from_slice(&[0, 0]);
    } else {
        f.extend_from_slice(&[0x88, 0xb5]);
    }
    f.resize(len - model::STAMP_LEN, 0x5a);
    f.extend_from_slice(&model::stamp(run, vm, seq));
    f
}

impl Run<'_> {
    fn violation(&mut self, what: String) {
        self.trace(&format!("VIOLATION: {what}"));
        if self.report.violations.len() < 40 {
            self.report.violations.push(what);
        }
    }

    fn eg(&self) -> Result<&Epochgate> {
        self.eg.as_ref().context("epochgate is not running")
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("control.sock")
    }

    /// Waits until epochgate has counted every frame sent to VM `vm` (so that what follows
    /// happens after they arrived). A frame it never counts is lost uncounted: a violation.
    fn settle(&mut self, vm: usize) -> Result<()> {
        let t = Instant::now();
        loop {
            let snap = self.eg()?.snapshot()?;
            let got = snap.vms[vm].rx_frames;
            if got == self.sent_now[vm] {
                return Ok(());
            }
            if got > self.sent_now[vm] || t.elapsed() > DEADLINE {
                self.violation(format!(
                    "{}: epochgate counted {got} frames received, the campaign sent {}",
                    VMS[vm], self.sent_now[vm]
                ));
                self.sent_now[vm] = got;
                return Ok(());
            }
            std::thread::sleep(Duration::from_micros(300));
        }
    }

    fn mode_now(&self, vm: usize) -> Result<String> {
        Ok(self.eg()?.snapshot()?.vms[vm].mode.clone())
    }

    fn send(&mut self, vm: usize, n: usize, spoof: bool) -> Result<()> {
        let src = if spoof {
            MACS[(vm + 1) % VMS.len()]
        } else {
            MACS[vm]
        };
        let mut frames = Vec::with_capacity(n);
        for _ in 0..n {
            let seq = self.vms[vm].send(self.incarnation);
            let ip = self.rng.below(4) != 0;
            let len = 64 + self.rng.below(300) as usize;
            frames.push(frame(src, ip, len, self.run, vm as u32, seq));
        }
        self.peer_send(vm, &frames)?;
        self.sent_now[vm] += n as u64;
        self.report.frames_sent += n as u64;
        self.settle(vm)
    }

    fn peer_send(&mut self, vm: usize, frames: &[Vec<u8>]) -> Result<()> {
        PEER.with(|p| p.borrow_mut().as_mut().context("no peer")?.send(vm, frames))
    }

    /// The shim of `vm`, started (adopting the VM) if it has none; `None` if epochgate refused.
    fn shim(&mut self, vm: usize) -> Result<Option<&mut Shim>> {
        if self.shims[vm].as_mut().is_some_and(|s| s.ended()) {
            self.shims[vm] = None;
        }
        if self.shims[vm].is_none() {
            let t = Instant::now();
            loop {
                match Shim::start(&self.socket(), VMS[vm])? {
                    Ok((s, welcome)) => {
                        self.adopted(vm, &welcome);
                        self.shims[vm] = Some(s);
                        break;
                    }
                    // The old session may not be reaped yet.
                    Err(v) if v["error"] == "vm-busy" && t.elapsed() < DEADLINE => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(v) => {
                        self.violation(format!("{}: Hello refused: {v}", VMS[vm]));
                        return Ok(None);
                    }
                }
            }
        }
        Ok(self.shims[vm].as_mut())
    }

    /// A welcome: the mode must be the one the campaign expects (a failed VM is adopted
    /// protected, in a new epoch).
    fn adopted(&mut self, vm: usize, welcome: &Value) {
        let expect = match self.vms[vm].mode {
            Mode::Passthrough => "passthrough",
            Mode::Protected | Mode::Failed => "protected",
        };
        if welcome["mode"] != expect {
            let v = format!(
                "{}: welcomed in mode {}, expected {expect}",
                VMS[vm], welcome["mode"]
            );
            self.violation(v);
        }
        if self.vms[vm].mode == Mode::Failed {
            self.vms[vm].mode = Mode::Protected;
        }
        self.epoch[vm] = welcome["epoch"].as_u64().unwrap_or(0);
    }

    /// Sends `line` through VM `vm`'s shim: `None` if there is no session or it ended.
    fn command(&mut self, vm: usize, line: &str) -> Result<Option<Value>> {
        let Some(s) = self.shim(vm)? else {
            return Ok(None);
        };
        match s.command(line)? {
            Answer::Reply(v) => Ok(Some(v)),
            Answer::Closed => {
                self.shims[vm] = None;
                Ok(None)
            }
        }
    }

    fn expect_reply(&mut self, vm: usize, line: &str, v: &Value, kind: &str) -> bool {
        if v["reply"] == kind {
            return true;
        }
        let what = format!("{}: {line:?} answered {v}, expected {kind}", VMS[vm]);
        self.violation(what);
        false
    }

    /// Appends a line to the run's operation log (`ops.log` in its directory).
    fn trace(&mut self, line: &str) {
        use std::fs::OpenOptions;
        if let Ok(mut f) = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("ops.log"))
        {
            let _ = writeln!(f, "{line}");
        }
    }

    fn op(&mut self, op: Op) -> Result<()> {
        let vm = self.rng.below(VMS.len() as u64) as usize;
        // A commit goes to a VM with a sealed epoch when there is one (most epochs of a real
        // VMM are committed).
        let sealed: Vec<usize> = (0..VMS.len())
            .filter(|&v| self.vms[v].sealed_frames().is_some())
            .collect();
        let vm = if op == Op::Commit && !sealed.is_empty() {
            sealed[vm % sealed.len()]
        } else {
            vm
        };
        // Only VM c has a buffer small enough to exhaust.
        let vm = if op == Op::Exhaust { 2 } else { vm };
        *self.report.ops.entry(format!("{op:?}")).or_default() += 1;
        let modes: Vec<String> = self.vms.iter().map(|m| format!("{:?}", m.mode)).collect();
        self.trace(&format!(
            "{op:?} vm={} (process {}, modes {modes:?}, epochs {:?}, held {:?})",
            VMS[vm],
            self.incarnation,
            self.epoch,
            self.vms.iter().map(VmModel::pending).collect::<Vec<_>>()
        ));
        match op {
            Op::Send => {
                let n = 1 + self.rng.below(20) as usize;
                self.send(vm, n, false)?;
            }
            Op::Spoof => {
                let n = 1 + self.rng.below(4) as usize;
                self.send(vm, n, true)?;
            }
            Op::Exhaust => {
                let n = C_BUDGET as usize + 1 + self.rng.below(16) as usize;
                self.send(vm, n, false)?;
            }
            Op::Fence => {
                if self.vms[vm].mode != Mode::Protected || self.shim(vm)?.is_none() {
                    return Ok(());
                }
                self.settle(vm)?;
                let e = self.epoch[vm];
                let line = format!("fence {e}");
                let want = self.vms[vm].open_frames();
                if let Some(v) = self.command(vm, &line)? {
                    if self.expect_reply(vm, &line, &v, "fenced") {
                        let frames = v["frames"].as_u64().unwrap_or(u64::MAX);
                        // Only VM c may have dropped frames of the epoch (its buffer is small).
                        if frames > want || (vm != 2 && frames != want) {
                            let what = format!("{}: fence {e} sealed {frames} frames, the campaign sent {want} into the epoch", VMS[vm]);
                            self.violation(what);
                        }
                        self.vms[vm].fenced(e);
                        self.epoch[vm] = e + 1;
                    }
                }
            }
            Op::Commit => {
                if self.shim(vm)?.is_none()
                    || self.vms[vm].mode != Mode::Protected
                    || self.epoch[vm] <= 1
                {
                    return Ok(());
                }
                // The newest sealed epoch, or sometimes an older one (covered already: refused
                // or answered for nothing, both fine).
                let e = self.epoch[vm] - 1 - self.rng.below(2).min(self.epoch[vm] - 2);
                let line = format!("commit {e}");
                match self.command(vm, &line)? {
                    Some(v) if v["reply"] == "committed" => self.vms[vm].commit(e, true),
                    Some(v) if v["reply"] == "error" => {}
                    Some(v) => {
                        self.violation(format!("{}: {line:?} answered {v}", VMS[vm]));
                    }
                    // Sent, no answer: it may have been applied.
                    None => self.vms[vm].commit(e, false),
                }
            }
            Op::BadCommit => {
                // The open epoch, or one not yet begun: must be refused.
                if self.shim(vm)?.is_none() {
                    return Ok(());
                }
                let e = self.epoch[vm] + self.rng.below(3);
                let line = format!("commit {e}");
                if let Some(v) = self.command(vm, &line)? {
                    if v["reply"] != "error" {
                        self.violation(format!("{}: {line:?} (not sealed) answered {v}", VMS[vm]));
                    }
                }
            }
            Op::Discard => {
                if self.vms[vm].mode != Mode::Protected {
                    return Ok(());
                }
                self.settle(vm)?;
                if let Some(v) = self.command(vm, "discard")? {
                    if self.expect_reply(vm, "discard", &v, "discarded") {
                        let n = self.vms[vm].discard("Discard");
                        self.check_count(vm, "discard", &v["frames"], n);
                    }
                }
            }
            Op::UnprotectRelease | Op::UnprotectDrop => {
                if self.vms[vm].mode != Mode::Protected {
                    return Ok(());
                }
                self.settle(vm)?;
                let how = if op == Op::UnprotectRelease {
                    "release"
                } else {
                    "drop"
                };
                let line = format!("unprotect {how}");
                if let Some(v) = self.command(vm, &line)? {
                    if self.expect_reply(vm, &line, &v, "unprotected") {
                        if how == "release" {
                            let n = self.vms[vm].pending();
                            self.vms[vm].release_all();
                            self.check_count(vm, &line, &v["released"], n);
                        } else {
                            let n = self.vms[vm].discard("Unprotect{drop}");
                            self.vms[vm].mode = Mode::Passthrough;
                            self.check_count(vm, &line, &v["dropped"], n);
                        }
                    }
                }
            }
            Op::Protect => {
                if self.vms[vm].mode != Mode::Passthrough {
                    return Ok(());
                }
                self.settle(vm)?;
                if let Some(v) = self.command(vm, "protect")? {
                    if self.expect_reply(vm, "protect", &v, "protected") {
                        self.vms[vm].mode = Mode::Protected;
                        self.epoch[vm] = v["epoch"].as_u64().unwrap_or(0);
                    }
                }
            }
            Op::Adopt => {
                self.shim(vm)?;
            }
            Op::KillShim => {
                let Some(mut s) = self.shims[vm].take() else {
                    return Ok(());
                };
                self.settle(vm)?;
                s.kill();
                self.lost_controller(vm, "its VMM was killed")?;
            }
            Op::StopShim => {
                if self.shim(vm)?.is_none() {
                    return Ok(());
                }
                self.settle(vm)?;
                let long = self.rng.below(2) == 0;
                let pid = self.shims[vm].as_ref().map_or(0, |s| s.child.id());
                signal(pid, nix::sys::signal::Signal::SIGSTOP);
                let n = 1 + self.rng.below(5) as usize;
                self.send(vm, n, false)?;
                let ms = if long {
                    3 * LIVENESS_MS
                } else {
                    LIVENESS_MS / 4
                };
                std::thread::sleep(Duration::from_millis(ms));
                if long {
                    self.lost_controller(vm, "its VMM froze past the liveness timeout")?;
                }
                signal(pid, nix::sys::signal::Signal::SIGCONT);
                if !long && self.vms[vm].mode == Mode::Protected && self.mode_now(vm)? == "failed" {
                    // A loaded machine may stretch a short freeze past the timeout: allowed.
                    self.vms[vm].discard("its VMM froze past the liveness timeout");
                    self.vms[vm].mode = Mode::Failed;
                }
            }
            Op::Hostile => self.hostile()?,
            Op::Pause => {
                std::thread::sleep(Duration::from_millis(1 + self.rng.below(30)));
            }
            Op::TermEpochgate | Op::KillEpochgate => {
                self.stop_epochgate(op == Op::TermEpochgate)?;
                self.start_epochgate()?;
            }
        }
        Ok(())
    }

    /// Compares a count epochgate answered with the campaign's (exact for VMs a and b; VM c
    /// may have dropped frames at its small buffer, so at most).
    fn check_count(&mut self, vm: usize, what: &str, got: &Value, want: u64) {
        let got = got.as_u64().unwrap_or(u64::MAX);
        if got > want || (vm != 2 && got != want) {
            self.violation(format!(
                "{}: {what:?} counted {got} frames, the campaign held {want}",
                VMS[vm]
            ));
        }
    }

    /// The VM's controller is gone (killed, or frozen past the timeout): a protected VM must
    /// fail (everything held discarded) within the deadline; a pass-through one stays so.
    fn lost_controller(&mut self, vm: usize, why: &'static str) -> Result<()> {
        if self.vms[vm].mode == Mode::Protected {
            let t = Instant::now();
            while self.mode_now(vm)? != "failed" {
                if t.elapsed() > DEADLINE {
                    self.violation(format!("{}: {why}, but it did not fail", VMS[vm]));
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            self.vms[vm].discard(why);
            self.vms[vm].mode = Mode::Failed;
        }
        self.shims[vm] = None;
        Ok(())
    }

    /// A malformed or out-of-place message on a connection of its own: epochgate must answer
    /// it with an error (or a pong) and change nothing.
    fn hostile(&mut self) -> Result<()> {
        use socket2::{Domain, SockAddr, Socket, Type};
        use vmm_shim::proto::{self, Reply, Request};
        let kind = self.rng.below(6);
        let msg: Vec<u8> = match kind {
            0 => (0..1 + self.rng.below(64))
                .map(|_| self.rng.next() as u8)
                .collect(),
            1 => Request::Hello {
                version: 99,
                vm: "a".into(),
            }
            .encode(),
            2 => Request::Commit {
                epoch: 1 + self.rng.below(5),
            }
            .encode(),
            3 => Request::Hello {
                version: proto::VERSION,
                vm: "nobody".into(),
            }
            .encode(),
            4 => {
                let mut m = Request::Fence { epoch: 3 }.encode();
                m.truncate(m.len() - 1);
                m
            }
            _ => vec![0xff; proto::MAX_MESSAGE + 100],
        };
        let s = Socket::new(Domain::UNIX, Type::SEQPACKET, None)?;
        s.connect(&SockAddr::unix(self.socket())?)?;
        s.set_read_timeout(Some(DEADLINE))?;
        let _ = s.send(&msg);
        let mut buf = vec![0u8; 4096];
        match (&s).read(&mut buf) {
            Ok(n) if n > 0 => match proto::decode_reply(&buf[..n]) {
                Ok(Reply::Error { .. } | Reply::Pong { .. }) => {}
                other => self.violation(format!("hostile message {kind} answered {other:?}")),
            },
            Ok(_) => self.violation(format!("hostile message {kind}: closed without an error")),
            Err(e) => self.violation(format!("hostile message {kind}: no answer ({e})")),
        }
        Ok(())
    }

    fn start_epochgate(&mut self) -> Result<()> {
        self.incarnation = self.report.processes;
        self.report.processes += 1;
        self.sent_now = vec![0; VMS.len()];
        // DPDK 22.11's af_packet PMD names its PACKET_FANOUT group (pid ^ ifindex) & 0xffff:
        // an epochgate whose pid lands next to the peer's can take a group id the peer's
        // sockets hold, and its port fails to start (EINVAL). That is the harness's
        // set-up, not epochgate: such a start is retried (a new process, a new pid) and
        // counted.
        let mut tries = 0;
        loop {
            match Epochgate::start(self.ns, &self.o.epochgate, &self.dir, self.incarnation) {
                Ok(eg) => {
                    self.eg = Some(eg);
                    return Ok(());
                }
                Err(e) if tries < 8 && format!("{e:#}").contains("PACKET_FANOUT") => {
                    tries += 1;
                    self.report.fanout_retries += 1;
                    self.trace(&format!(
                        "epochgate did not start (af_packet fanout id taken), retry {tries}"
                    ));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Ends the current epochgate process, by SIGTERM (checked later against the capture) or
    /// SIGKILL. Either way what it held uncommitted is gone.
    fn stop_epochgate(&mut self, graceful: bool) -> Result<()> {
        for vm in 0..VMS.len() {
            self.settle(vm)?;
        }
        let eg = self.eg.take().context("no epochgate")?;
        let pending: Vec<u64> = self.vms.iter().map(VmModel::pending).collect();
        if graceful {
            let (status, stats) = eg.term()?;
            if !status.success() {
                self.violation(format!("epochgate exited with {status} after SIGTERM"));
            }
            match stats {
                Some(stats) => self.ended.push(Ended {
                    incarnation: self.incarnation,
                    stats,
                    sent: self.sent_now.clone(),
                    pending,
                }),
                None => self.violation("epochgate left no final counters after SIGTERM".into()),
            }
        } else {
            eg.kill();
            for m in &mut self.vms {
                m.killed(self.incarnation);
            }
        }
        let why = if graceful {
            "epochgate stopped (SIGTERM)"
        } else {
            "epochgate killed"
        };
        for m in &mut self.vms {
            m.discard(why);
            // Every VM comes back protected (a failed or protected one because it was, a
            // pass-through one because that is its configured mode), holding until adopted.
            m.mode = Mode::Protected;
        }
        for s in &mut self.shims {
            *s = None;
        }
        Ok(())
    }

    fn execute(&mut self) -> Result<()> {
        std::fs::write(
            self.dir.join("epochgate.toml"),
            config(&self.dir, &format!("egf-eg-{}", std::process::id())),
        )?;
        self.start_epochgate()?;
        for vm in 0..VMS.len() {
            self.shim(vm)?;
        }
        for _ in 0..self.o.ops {
            if crate::INTERRUPTED.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
            let op = self.rng.op();
            self.op(op)?;
        }
        self.stop_epochgate(true)
    }

    /// Per process that ended by SIGTERM: every frame counted, counters balanced, what it
    /// transmitted is what reached the capture, what it held is what it discarded at exit.
    fn check_ended(&mut self, checked: &Checked) {
        let ended = std::mem::take(&mut self.ended);
        for e in &ended {
            let Some(vms) = e.stats["vms"].as_array() else {
                self.violation(format!(
                    "process {}: final counters have no vms",
                    e.incarnation
                ));
                continue;
            };
            for (i, v) in vms.iter().enumerate().take(VMS.len()) {
                let n = |k: &str| v[k].as_u64().unwrap_or(0);
                let drops: u64 = v["dropped"]
                    .as_object()
                    .map_or(0, |d| d.values().filter_map(Value::as_u64).sum());
                let dropped = |r: &str| v["dropped"][r].as_u64().unwrap_or(0);
                let name = VMS[i];
                let inc = e.incarnation;
                if n("rx_frames") != e.sent[i] {
                    self.violation(format!(
                        "{name}, process {inc}: received {} frames, the campaign sent {}",
                        n("rx_frames"),
                        e.sent[i]
                    ));
                }
                if n("rx_frames") != n("tx_frames") + drops + n("waiting") || n("waiting") != 0 {
                    self.violation(format!(
                        "{name}, process {inc}: counters do not balance at exit: {v}"
                    ));
                }
                let on_wire = checked.per_incarnation.get(&(i, inc)).copied().unwrap_or(0);
                if on_wire != n("tx_frames") {
                    self.violation(format!(
                        "{name}, process {inc}: transmitted {} frames, the uplink got {on_wire}",
                        n("tx_frames")
                    ));
                }
                let unc = dropped("uncommitted-at-exit");
                if unc > e.pending[i] || (i != 2 && unc != e.pending[i]) {
                    self.violation(format!("{name}, process {inc}: {unc} frames discarded at exit, the campaign had {} held", e.pending[i]));
                }
            }
        }
        self.ended = ended;
    }

    /// Drops that explain a required frame's absence, per VM, over the processes that ended
    /// by SIGTERM.
    fn explained(&self) -> Vec<u64> {
        let mut x = vec![0; VMS.len()];
        for e in &self.ended {
            for (i, v) in e.stats["vms"]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
                .take(VMS.len())
            {
                for r in ["buffer-full", "shutdown"] {
                    x[i] += v["dropped"][r].as_u64().unwrap_or(0);
                }
            }
        }
        x
    }
}

thread_local! {
    static PEER: std::cell::RefCell<Option<Peer>> = const { std::cell::RefCell::new(None) };
}

/// Reads the frames of a pcap file the peer closed.
fn read_capture(path: &Path) -> Result<Vec<Vec<u8>>> {
    Ok(epochgate::tools::capture::read_file(path)?
        .frames
        .into_iter()
        .map(|f| f.data)
        .collect())
}

/// Runs the campaign; returns whether every run passed. Writes `faults.json` and `faults.md`.
pub fn campaign(o: &Options) -> Result<bool> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the fault campaign creates a network namespace and veth pairs: run it as root");
    }
    std::fs::create_dir_all(&o.out)?;
    let out = std::fs::canonicalize(&o.out)?;
    let runs_dir = out.join("fault-runs");
    std::fs::create_dir_all(&runs_dir)?;
    let ns = Netns::create(&format!("egf-{}", std::process::id()))?;
    let mut capture = runs_dir.join(format!("uplink-{}.pcap", o.first));
    PEER.with(|p| -> Result<()> {
        *p.borrow_mut() = Some(Peer::start(&ns, &runs_dir, &capture)?);
        Ok(())
    })?;
    let started = Instant::now();
    let mut reports: Vec<RunReport> = Vec::new();
    for run in o.first..o.first + o.runs {
        if crate::INTERRUPTED.load(std::sync::atomic::Ordering::Relaxed) {
            break;
        }
        if o.max_minutes
            .is_some_and(|m| started.elapsed().as_secs_f64() > m * 60.0)
        {
            eprintln!(
                "faults: stopping after {:.1} min (--max-minutes)",
                started.elapsed().as_secs_f64() / 60.0
            );
            break;
        }
        let t = Instant::now();
        let dir = runs_dir.join(format!("run-{run}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let mut r = Run {
            o,
            run,
            dir: dir.clone(),
            ns: &ns,
            rng: Rng::new(o.seed, run),
            vms: (0..VMS.len())
                .map(|_| VmModel::new(Mode::Protected))
                .collect(),
            shims: (0..VMS.len()).map(|_| None).collect(),
            epoch: vec![0; VMS.len()],
            eg: None,
            incarnation: 0,
            sent_now: vec![0; VMS.len()],
            ended: Vec::new(),
            report: RunReport {
                run,
                ..RunReport::default()
            },
        };
        let done = r.execute();
        if let Err(e) = &done {
            r.violation(format!("the run could not go on: {e:#}"));
            if let Some(eg) = r.eg.take() {
                eg.kill();
            }
        }
        r.shims.clear();
        // Everything epochgate transmitted is in the peer's ring by now; wait until the
        // peer's count stands still, then close the run's capture.
        let mut last = u64::MAX;
        loop {
            let n = PEER.with(|p| {
                p.borrow_mut()
                    .as_mut()
                    .context("no peer")?
                    .uplink_received()
            })?;
            if n == last {
                break;
            }
            last = n;
            std::thread::sleep(Duration::from_millis(60));
        }
        let next = runs_dir.join(format!("uplink-{}.pcap", run + 1));
        PEER.with(|p| p.borrow_mut().as_mut().context("no peer")?.rotate(&next))?;
        let egress = read_capture(&capture)?;
        let explained = r.explained();
        let named: Vec<(&str, &VmModel)> = VMS.iter().copied().zip(r.vms.iter()).collect();
        let checked = model::check(run, &named, &egress, &explained);
        r.report.frames_on_egress = checked.frames;
        for v in checked.violations.clone() {
            r.violation(v);
        }
        r.check_ended(&checked);
        r.report.seconds = t.elapsed().as_secs_f64();
        let ok = r.report.violations.is_empty();
        let ops: u64 = r.report.ops.values().sum();
        eprintln!(
            "faults: run {run}: {ops} ops, {} frames sent, {} on egress, {} process(es), {} ({:.1} s)",
            r.report.frames_sent,
            r.report.frames_on_egress,
            r.report.processes,
            if ok { "ok".to_string() } else { format!("{} VIOLATION(S)", r.report.violations.len()) },
            r.report.seconds
        );
        for v in &r.report.violations {
            eprintln!("faults:   {v}");
        }
        if ok && !o.keep {
            let _ = std::fs::remove_dir_all(&dir);
            let _ = std::fs::remove_file(&capture);
        } else {
            let _ = std::fs::rename(&capture, dir.join("uplink.pcap"));
        }
        capture = next;
        reports.push(r.report);
    }
    PEER.with(|p| *p.borrow_mut() = None);
    let _ = std::fs::remove_file(&capture);
    let _ = std::fs::remove_file(runs_dir.join("batch.pcap"));
    write_report(o, &out, &reports, started.elapsed())
}

fn write_report(o: &Options, out: &Path, reports: &[RunReport], took: Duration) -> Result<bool> {
    let mut ops: BTreeMap<String, u64> = BTreeMap::new();
    for r in reports {
        for (k, n) in &r.ops {
            *ops.entry(k.clone()).or_default() += n;
        }
    }
    let total_ops: u64 = ops.values().sum();
    let failed: Vec<&RunReport> = reports
        .iter()
        .filter(|r| !r.violations.is_empty())
        .collect();
    let sent: u64 = reports.iter().map(|r| r.frames_sent).sum();
    let egress: u64 = reports.iter().map(|r| r.frames_on_egress).sum();
    let processes: u64 = reports.iter().map(|r| u64::from(r.processes)).sum();
    let retries: u64 = reports.iter().map(|r| u64::from(r.fanout_retries)).sum();
    let json = json!({
        "seed": o.seed,
        "first_run": o.first,
        "runs": reports.len(),
        "ops_per_run": o.ops,
        "operations": total_ops,
        "operations_by_kind": ops,
        "epochgate_processes": processes,
        "start_retries_af_packet_fanout": retries,
        "frames_sent": sent,
        "frames_checked_on_egress": egress,
        "failed_runs": failed.len(),
        "seconds": took.as_secs_f64(),
        "violations": failed.iter().map(|r| json!({"run": r.run, "violations": r.violations})).collect::<Vec<_>>(),
    });
    std::fs::write(
        out.join("faults.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    let mut md = format!(
        "# Fault campaign\n\n`epochgate-perf faults --runs {} --seed {} --first {} --ops {}`: {} run(s), {} operations, {} epochgate processes, {} frames sent, {} checked on the uplink, {:.1} min; {} start(s) retried because DPDK's af_packet fanout group id (pid ^ ifindex) was the peer's.\n\n**{}**\n\n| operation | count |\n|---|---|\n",
        o.runs, o.seed, o.first, o.ops, reports.len(), total_ops, processes, sent, egress, took.as_secs_f64() / 60.0, retries,
        if failed.is_empty() { "0 violations".to_string() } else { format!("{} run(s) with violations", failed.len()) },
    );
    for (k, n) in &ops {
        md += &format!("| {k} | {n} |\n");
    }
    for r in &failed {
        md += &format!(
            "\n## Run {} (replay: `epochgate-perf faults --seed {} --first {} --runs 1 --ops {}`)\n\n",
            r.run, o.seed, r.run, o.ops
        );
        for v in &r.violations {
            md += &format!("- {v}\n");
        }
    }
    std::fs::write(out.join("faults.md"), &md)?;
    println!(
        "faults: {} run(s), {} operations ({} epochgate processes, {} frames sent, {} checked on the uplink): {}; report {}",
        reports.len(),
        total_ops,
        processes,
        sent,
        egress,
        if failed.is_empty() { "0 violations".to_string() } else { format!("{} run(s) with violations", failed.len()) },
        out.join("faults.md").display()
    );
    Ok(failed.is_empty())
}
