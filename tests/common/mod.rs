//! Shared by the integration tests: run the real `epochgate` binary on a config, wait for its
//! counters (through `--stats-file`), stop it with a signal like an operator would, and read the
//! captures it wrote. Every test makes its own directory, file prefix and sockets.
#![allow(dead_code)]

use epochgate::tools::capture::{self, Frame};
use epochgate::tools::gen::{self, Stream};
use epochgate::wire::frame::MacAddr;
use serde_json::Value;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// DPDK processes spin their cores: tests in one file run one at a time.
pub static SERIAL: Mutex<()> = Mutex::new(());

pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

pub const EPOCHGATE: &str = env!("CARGO_BIN_EXE_epochgate");
pub const PEER: &str = env!("CARGO_BIN_EXE_epochgate-peer");

/// Generous: the machines are shared and have two cores.
pub const DEADLINE: Duration = Duration::from_secs(60);

pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("eg-test-")
        .tempdir()
        .expect("tempdir")
}

/// `[eal]`, `[control]` sections for a test: --no-huge (works on every machine), unique prefix.
pub fn eal_and_control(dir: &Path, prefix: &str) -> String {
    format!(
        "[eal]\nlcores = \"0-1\"\nmemory_mb = 512\nhugepages = false\nfile_prefix = \"{prefix}-{pid}\"\n\n\
         [control]\nsocket = \"{d}/control.sock\"\nadmin_socket = \"{d}/admin.sock\"\n\n",
        pid = std::process::id(),
        d = dir.display()
    )
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The MAC of the gateway the guests send to.
pub const GATEWAY: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0xfe]);

/// Frames `seqs` of stream `id` from `src` to [`GATEWAY`], untagged (mixed kinds: IPv4, IPv6,
/// ARP, VLAN-tagged; sizes 60..=1514).
pub fn stream_frames(id: u32, src: MacAddr, seqs: std::ops::Range<u32>) -> Vec<Vec<u8>> {
    let s = Stream {
        id,
        src,
        dst: GATEWAY,
        vlan: None,
    };
    seqs.map(|q| gen::frame(&s, q)).collect()
}

/// The first `n` frames guest `id` sends: stream `id` from MAC 52:54:00:00:00:`id` to
/// [`GATEWAY`].
pub fn guest_frames(id: u8, n: u32) -> Vec<Vec<u8>> {
    stream_frames(u32::from(id), MacAddr([0x52, 0x54, 0, 0, 0, id]), 0..n)
}

pub fn frames(data: &[Vec<u8>]) -> Vec<Frame> {
    data.iter()
        .enumerate()
        .map(|(i, d)| Frame {
            ts_ns: 1_700_000_000_000_000_000 + i as u64 * 1000,
            orig_len: d.len() as u32,
            data: d.clone(),
        })
        .collect()
}

pub fn write_pcap(path: &Path, data: &[Vec<u8>]) {
    capture::write_file(path, &frames(data)).expect("write pcap");
}

pub fn read_pcap(path: &Path) -> Vec<Vec<u8>> {
    capture::read_file(path)
        .unwrap_or_else(|e| panic!("{e}"))
        .frames
        .into_iter()
        .map(|f| f.data)
        .collect()
}

/// A running epochgate process.
pub struct Running {
    pub child: Child,
    pub stats: PathBuf,
    pub dir: PathBuf,
}

impl Running {
    pub fn start(dir: &Path, config: &str) -> Running {
        Running::start_env(dir, config, &[])
    }

    /// Like [`Running::start`], with these environment variables set for epochgate.
    pub fn start_env(dir: &Path, config: &str, env: &[(&str, &Path)]) -> Running {
        let cfg = dir.join("epochgate.toml");
        std::fs::write(&cfg, config).expect("write config");
        let stats = dir.join("stats.json");
        let child = Command::new(EPOCHGATE)
            .args(["run", "--quiet", "--config"])
            .arg(&cfg)
            .arg("--stats-file")
            .arg(&stats)
            .envs(env.iter().copied())
            .stdout(std::fs::File::create(dir.join("epochgate.out")).expect("log"))
            .stderr(std::fs::File::create(dir.join("epochgate.err")).expect("log"))
            .spawn()
            .expect("spawn epochgate");
        Running {
            child,
            stats,
            dir: dir.to_path_buf(),
        }
    }

    /// The latest counters epochgate wrote, if any yet.
    pub fn stats(&self) -> Option<Value> {
        let s = std::fs::read_to_string(&self.stats).ok()?;
        serde_json::from_str(&s).ok()
    }

    /// Waits until `cond` holds on the counters; panics with the logs after the deadline or if
    /// epochgate exits.
    pub fn wait_for(&mut self, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            if let Some(s) = self.stats() {
                if cond(&s) {
                    return s;
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "epochgate exited ({status}) while waiting for {what}\n{}",
                    self.logs()
                );
            }
            if start.elapsed() > DEADLINE {
                panic!(
                    "timed out waiting for {what}; last stats {:?}\n{}",
                    self.stats(),
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for a file (e.g. a vhost-user socket) to appear.
    pub fn wait_for_path(&mut self, path: &Path) {
        let start = Instant::now();
        while !path.exists() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "epochgate exited ({status}) before creating {}\n{}",
                    path.display(),
                    self.logs()
                );
            }
            assert!(
                start.elapsed() < DEADLINE,
                "no {} after {DEADLINE:?}\n{}",
                path.display(),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn logs(&self) -> String {
        let read = |n: &str| std::fs::read_to_string(self.dir.join(n)).unwrap_or_default();
        format!(
            "--- stdout\n{}--- stderr\n{}",
            read("epochgate.out"),
            read("epochgate.err")
        )
    }

    /// Waits for epochgate's vhost-user sockets `socks` and then for `ready` (its control or admin
    /// socket), and attaches an interactive peer to them (peer port `i` on `socks[i]`), recording
    /// what port 0 (the uplink) receives into `egress.pcap` in epochgate's directory.
    pub fn attach_peer(&mut self, prefix: &str, socks: &[PathBuf], ready: &Path) -> Peer {
        for s in socks {
            self.wait_for_path(s);
        }
        self.wait_for_path(ready);
        let vdevs: Vec<String> = socks
            .iter()
            .enumerate()
            .map(|(i, s)| virtio_user(i as u32, s))
            .collect();
        let egress = self.dir.join("egress.pcap");
        Peer::start(
            &self.dir,
            &format!("{prefix}-peer"),
            &vdevs,
            &[(0, &egress)],
        )
    }

    /// SIGTERM, as an operator or systemd stops it; waits for a clean exit and returns the final
    /// counters (which epochgate writes on its way out).
    pub fn stop(mut self) -> Value {
        signal(self.child.id(), "TERM");
        let start = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                break s;
            }
            if start.elapsed() > DEADLINE {
                let _ = self.child.kill();
                panic!("epochgate did not exit after SIGTERM\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(
            status.success(),
            "epochgate exited with {status}\n{}",
            self.logs()
        );
        assert!(
            self.logs().contains("final counters"),
            "no final counters printed\n{}",
            self.logs()
        );
        self.stats().expect("final stats file")
    }
}

/// A test that fails (panics) before stopping its epochgate must not leave it spinning a core:
/// the process it started is killed.
impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Likewise for a peer left behind by a failing test.
impl Drop for Peer {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Sends a signal to a process we started (by PID), with the system's `kill`.
pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill")
        .success();
    assert!(ok, "kill -{sig} {pid} failed");
}

/// One port of an `epochgate-peer` run: the vdev it attaches, and optionally a capture to
/// send, a capture to record into, and how many frames to expect.
#[derive(Default)]
pub struct PeerPort {
    pub vdev: String,
    pub send: Option<PathBuf>,
    pub recv: Option<PathBuf>,
    pub expect: Option<usize>,
}

/// Runs epochgate-peer to completion with these ports; returns its result line (JSON).
pub fn run_peer(prefix: &str, ports: &[PeerPort]) -> Value {
    let mut cmd = Command::new(PEER);
    cmd.arg("--file-prefix")
        .arg(format!("{prefix}-{}", std::process::id()));
    for (i, p) in ports.iter().enumerate() {
        cmd.arg("--port").arg(&p.vdev);
        if let Some(f) = &p.send {
            cmd.arg("--send").arg(format!("{i}={}", f.display()));
        }
        if let Some(f) = &p.recv {
            cmd.arg("--recv").arg(format!("{i}={}", f.display()));
        }
        if let Some(n) = p.expect {
            cmd.arg("--expect").arg(format!("{i}={n}"));
        }
    }
    let out: Output = cmd
        .stdin(Stdio::null())
        .output()
        .expect("run epochgate-peer");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.contains("\"done\""))
        .unwrap_or_else(|| {
            panic!(
                "peer printed no result\n{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let v: Value = serde_json::from_str(line).expect("peer JSON");
    assert_eq!(
        v["ok"],
        true,
        "peer: {v}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    v
}

pub fn vm<'a>(stats: &'a Value, name: &str) -> &'a Value {
    stats["vms"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["name"] == name))
        .unwrap_or_else(|| panic!("no vm {name} in {stats}"))
}

pub fn port<'a>(stats: &'a Value, role: &str, idx: usize) -> &'a Value {
    stats["ports"]
        .as_array()
        .and_then(|v| v.iter().filter(|p| p["role"] == role).nth(idx))
        .unwrap_or_else(|| panic!("no {role} port {idx} in {stats}"))
}

pub fn u(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("no {key} in {v}"))
}

pub fn dropped(v: &Value, reason: &str) -> u64 {
    v["dropped"][reason].as_u64().unwrap_or(0)
}

/// Every frame received is transmitted, waiting (held, ready or staged for TX) or dropped by a
/// named reason.
pub fn assert_balanced(stats: &Value) {
    for v in stats["vms"].as_array().expect("vms") {
        let drops: u64 = v["dropped"]
            .as_object()
            .map_or(0, |d| d.values().filter_map(Value::as_u64).sum());
        assert_eq!(
            u(v, "rx_frames"),
            u(v, "tx_frames") + u(v, "waiting") + drops,
            "counters do not add up for {v}"
        );
        assert_eq!(
            u(v, "waiting"),
            u(v, "held_frames") + u(v, "ready_frames") + u(v, "staged_frames"),
            "waiting frames are not all held, ready or staged for {v}"
        );
    }
}

/// Checks that `out` is exactly an interleaving of `inputs`: every input frame appears once,
/// byte for byte, each input's frames in their original order, nothing else. Returns, per input,
/// how many of its frames were found.
pub fn assert_interleaving(out: &[Vec<u8>], inputs: &[&[Vec<u8>]]) {
    let mut next = vec![0usize; inputs.len()];
    for (i, f) in out.iter().enumerate() {
        let Some(k) = (0..inputs.len()).find(|&k| inputs[k].get(next[k]) == Some(f)) else {
            panic!(
                "egress frame {} ({} bytes) is not the next frame of any input (next indices {next:?}): \
                 reordered, altered or foreign",
                i + 1,
                f.len()
            );
        };
        next[k] += 1;
    }
    for (k, input) in inputs.iter().enumerate() {
        assert_eq!(
            next[k],
            input.len(),
            "input {k}: only {} of {} frames came out",
            next[k],
            input.len()
        );
    }
}

/// An `epochgate-peer --interactive` process: a guest (or the wire) that sends in steps the test
/// chooses, and counts and records what it receives.
pub struct Peer {
    child: Child,
    stdin: std::process::ChildStdin,
    lines: std::sync::mpsc::Receiver<String>,
    dir: PathBuf,
    err: PathBuf,
    batches: usize,
    /// Events read while waiting for another kind, oldest first.
    pending: std::collections::VecDeque<Value>,
}

impl Peer {
    /// Attaches `vdevs` (ports 0..), recording what port `i` receives into `recv` files; returns
    /// once every link is up.
    pub fn start(dir: &Path, prefix: &str, vdevs: &[String], recv: &[(usize, &Path)]) -> Peer {
        let mut cmd = Command::new(PEER);
        cmd.arg("--interactive")
            .args(["--timeout", "300"])
            .arg("--file-prefix")
            .arg(format!("{prefix}-{}", std::process::id()));
        for v in vdevs {
            cmd.arg("--port").arg(v);
        }
        for (i, p) in recv {
            cmd.arg("--recv").arg(format!("{i}={}", p.display()));
        }
        let err = dir.join(format!("{prefix}.err"));
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&err).expect("log"))
            .spawn()
            .expect("spawn epochgate-peer");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut p = Peer {
            child,
            stdin,
            lines,
            dir: dir.to_path_buf(),
            err,
            batches: 0,
            pending: std::collections::VecDeque::new(),
        };
        p.expect_event("ready");
        p
    }

    fn expect_event(&mut self, event: &str) -> Value {
        if let Some(i) = self.pending.iter().position(|v| v["event"] == event) {
            return self.pending.remove(i).expect("position is in range");
        }
        let start = Instant::now();
        loop {
            let left = DEADLINE.saturating_sub(start.elapsed());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let v: Value = serde_json::from_str(&line)
                        .unwrap_or_else(|e| panic!("peer printed {line:?}: {e}"));
                    if v["event"] == event {
                        return v;
                    }
                    self.pending.push_back(v);
                }
                Err(_) => panic!(
                    "peer: no {event:?} event; stderr:\n{}",
                    std::fs::read_to_string(&self.err).unwrap_or_default()
                ),
            }
        }
    }

    fn say(&mut self, line: &str) {
        use std::io::Write;
        writeln!(self.stdin, "{line}").expect("write to peer");
        self.stdin.flush().expect("flush to peer");
    }

    /// Transmits `frames` on port `idx` and returns once TX has taken them all: from then on
    /// they are in epochgate's ingress ring, as if the guest had sent them.
    pub fn send(&mut self, idx: usize, frames: &[Vec<u8>]) {
        self.batches += 1;
        let path = self.dir.join(format!("batch-{}.pcap", self.batches));
        write_pcap(&path, frames);
        self.say(&format!("send {idx} {}", path.display()));
        let v = self.expect_event("sent");
        assert_eq!(v["frames"], frames.len(), "{v}");
    }

    /// Queues `frames` on port `idx` without waiting for TX to take them (a guest that keeps
    /// sending while epochgate pushes back); [`Peer::wait_sent`] waits for the batch.
    pub fn send_nowait(&mut self, idx: usize, frames: &[Vec<u8>]) {
        self.batches += 1;
        let path = self.dir.join(format!("batch-{}.pcap", self.batches));
        write_pcap(&path, frames);
        self.say(&format!("send {idx} {}", path.display()));
    }

    /// Waits for the `sent` event of the oldest batch queued with [`Peer::send_nowait`]; returns
    /// its frame count.
    pub fn wait_sent(&mut self) -> u64 {
        self.expect_event("sent")["frames"]
            .as_u64()
            .expect("frames")
    }

    /// Stops reading port `idx` (a stalled receiver: its ring fills, epochgate's TX backs up).
    pub fn pause(&mut self, idx: usize) {
        self.say(&format!("pause {idx}"));
        self.expect_event("paused");
    }

    /// Reads port `idx` again.
    pub fn resume(&mut self, idx: usize) {
        self.say(&format!("resume {idx}"));
        self.expect_event("resumed");
    }

    /// Frames received so far on each port.
    pub fn received(&mut self) -> Vec<u64> {
        self.say("count");
        let v = self.expect_event("count");
        v["received"]
            .as_array()
            .expect("received")
            .iter()
            .map(|n| n.as_u64().expect("count"))
            .collect()
    }

    /// Waits until port `idx` has received `n` frames (panics after the deadline).
    pub fn wait_received(&mut self, idx: usize, n: u64) {
        let start = Instant::now();
        loop {
            let got = self.received()[idx];
            if got >= n {
                return;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "port {idx} received {got} of {n} frames"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Ends the peer; its recordings are complete when this returns.
    pub fn finish(mut self) -> Value {
        self.say("quit");
        let v = self.expect_event("done");
        let _ = self.child.wait();
        v
    }
}

/// vdev string for a virtio-user port attached to a vhost-user socket.
pub fn virtio_user(n: u32, socket: &Path) -> String {
    format!("net_virtio_user{n},path={}", socket.display())
}

/// The CPU time (user + system, in seconds) of the thread named `thread` (its `comm`, e.g.
/// "eg-control") of process `pid`, from /proc.
pub fn thread_cpu_seconds(pid: u32, thread: &str) -> f64 {
    let hz: f64 = String::from_utf8(
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .expect("getconf")
            .stdout,
    )
    .expect("utf8")
    .trim()
    .parse()
    .expect("CLK_TCK");
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks") {
        let dir = task.expect("task").path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim() != thread {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("stat")).expect("stat");
        // Fields after "(comm)": state is field 3, utime 14 and stime 15.
        let rest: Vec<&str> = stat[stat.rfind(')').expect("comm") + 2..]
            .split(' ')
            .collect();
        let ticks: f64 =
            rest[11].parse::<f64>().expect("utime") + rest[12].parse::<f64>().expect("stime");
        return ticks / hz;
    }
    panic!("no {thread} thread in process {pid}");
}

/// epochgate with one protected VM `web` on a pcap port that sends `n` frames of guest 1 (all
/// held until a VMM commits them), egress to `egress.pcap`, and `extra` after `[control]`'s
/// socket keys (more `[control]` keys, then other sections). Returns once `ready` (a socket in
/// `d`, e.g. "control.sock") exists and the frames are held, with the frames.
pub fn start_held_web(
    d: &Path,
    prefix: &str,
    extra: &str,
    n: usize,
    ready: &str,
) -> (Running, Vec<Vec<u8>>) {
    let frames = guest_frames(1, n as u32);
    let input = d.join("web.pcap");
    write_pcap(&input, &frames);
    let empty = d.join("empty.pcap");
    write_pcap(&empty, &[]);
    let cfg = format!(
        "{}{extra}\n\
         [egress]\nport = \"net_pcap0,rx_pcap={e},tx_pcap={d}/egress.pcap\"\n\n\
         [[vm]]\nname = \"web\"\nmode = \"protected\"\nport = \"net_pcap1,rx_pcap={i},tx_pcap={d}/web-in.pcap\"\n",
        eal_and_control(d, prefix),
        e = empty.display(),
        i = input.display(),
        d = d.display()
    );
    let mut eg = Running::start(d, &cfg);
    eg.wait_for_path(&d.join(ready));
    eg.wait_for("the VM's frames held", |s| {
        u(vm(s, "web"), "held_frames") == n as u64
    });
    (eg, frames)
}

/// Writes `config` to `file` and runs `epochgate run EXTRA --config FILE`, which must refuse to
/// start (exit status 1); returns what it said on stderr.
pub fn run_refused(file: &Path, config: &str, extra: &[&str]) -> String {
    std::fs::write(file, config).expect("write config");
    let out = Command::new(EPOCHGATE)
        .arg("run")
        .args(extra)
        .arg("--config")
        .arg(file)
        .output()
        .expect("run epochgate");
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    err
}

/// A raw SEQPACKET session on the control socket at `path` (for what the blocking client cannot
/// do, or input no well-behaved client would send); reads wait up to `timeout`.
pub fn raw_session(path: &Path, timeout: Duration) -> socket2::Socket {
    let s = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::SEQPACKET, None)
        .expect("socket");
    s.connect(&socket2::SockAddr::unix(path).expect("addr"))
        .expect("connect");
    s.set_read_timeout(Some(timeout)).expect("timeout");
    s
}

/// The next reply on a raw session that is not a checkpoint request (a VM sends all the time);
/// `None` if epochgate closed the session or the read failed (e.g. timed out).
pub fn hear(s: &socket2::Socket) -> Option<vmm_shim::proto::Reply> {
    use vmm_shim::proto::{self, Reply};
    let mut buf = vec![0u8; proto::MAX_MESSAGE + 1];
    loop {
        let n = (&*s).read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        match proto::decode_reply(&buf[..n]).expect("a well-formed reply") {
            Reply::CheckpointRequest { .. } => continue,
            r => return Some(r),
        }
    }
}

/// What a silent connection on the control socket was told before being closed (waits up to
/// the deadline): an error reply, or `None` if it was closed without one.
pub fn told(s: &socket2::Socket) -> Option<(vmm_shim::proto::ErrorCode, String)> {
    use vmm_shim::proto::{self, Reply};
    s.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let mut buf = vec![0u8; proto::MAX_MESSAGE + 1];
    match (&*s).read(&mut buf) {
        Ok(n) if n > 0 => match proto::decode_reply(&buf[..n]) {
            Ok(Reply::Error { code, text }) => Some((code, text)),
            other => panic!("a silent connection was sent {other:?}"),
        },
        _ => None,
    }
}

/// Where `epochgate-shim` of this workspace is (in the profile directory above the test
/// binaries' `deps`), built or not.
pub fn shim_path() -> PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    dir.join("epochgate-shim")
}

/// Builds `epochgate-shim` of this workspace now, with cargo; returns [`shim_path`].
pub fn build_shim() -> PathBuf {
    let ok = Command::new(env!("CARGO"))
        .args(["build", "-p", "vmm-shim", "--bin", "epochgate-shim"])
        .status()
        .expect("cargo build")
        .success();
    assert!(ok, "cannot build epochgate-shim");
    shim_path()
}

/// `epochgate-shim` from this workspace (built by `cargo test --workspace`; built here if not).
pub fn shim_bin() -> PathBuf {
    let bin = shim_path();
    if !bin.exists() {
        build_shim();
    }
    bin
}

/// A user who is not root, not epochgate's user and not allowed: each of `cmds`, run as
/// `nobody` (uid 65534) with `--socket SOCKET`, gets "permission denied" and exit 1. Makes
/// `dir` (the socket's) searchable by all. Needs root (to run them as `nobody`) and `setpriv`;
/// skipped, saying so, otherwise.
pub fn refused_as_nobody(dir: &Path, socket: &Path, cmds: &[&[&str]]) {
    use std::os::unix::fs::PermissionsExt;
    if !nix::unistd::geteuid().is_root() || Command::new("setpriv").arg("--help").output().is_err()
    {
        eprintln!("skipping the refused-peer check: needs root and setpriv");
        return;
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    for cmd in cmds {
        let out = Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                EPOCHGATE,
            ])
            .args(*cmd)
            .arg("--socket")
            .arg(socket)
            .output()
            .expect("run setpriv");
        let err = text(&out.stderr);
        if err.contains("setpriv:") {
            eprintln!("skipping the refused-peer check: {err}");
            return;
        }
        assert_eq!(out.status.code(), Some(1), "{cmd:?}: {err}");
        assert!(
            err.contains("permission denied: uid 65534 is not allowed"),
            "{cmd:?}: {err}"
        );
    }
}

/// Runs `cmd args` (e.g. `ip link ...`), which must succeed.
pub fn sh(cmd: &str, args: &[&str]) {
    let ok = Command::new(cmd)
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"))
        .success();
    assert!(ok, "{cmd} {args:?} failed");
}

/// Deletes the network interface a test made (a veth's peer goes with it) when dropped.
pub struct DeleteLink(pub String);

impl Drop for DeleteLink {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).status();
    }
}
