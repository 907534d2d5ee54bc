//! Hostile connections on the VMM control socket (issue 10, defect 4): hundreds of connections
//! that never speak, with epochgate's file-descriptor limit lowered under it (`prlimit`), must
//! neither spin the control thread nor flood its log, and a real VMM session gets in and fences
//! and commits once they are gone. Past `control.max_sessions`, connections are refused at once,
//! told the limit, and counted in `epochgate stats --json`.

mod common;
use common::*;
use serde_json::Value;
use socket2::{Domain, SockAddr, Socket, Type};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use vmm_shim::proto::{ErrorCode, Mode};
use vmm_shim::Client;

/// Frames the protected VM sends (all held until the VMM commits them).
const FRAMES: usize = 30;

/// epochgate with one protected VM `web` on a pcap port that sends [`FRAMES`] frames, egress to
/// `egress.pcap`, and `control_extra` in `[control]`.
fn start(d: &Path, prefix: &str, control_extra: &str) -> (Running, Vec<Vec<u8>>) {
    start_held_web(d, prefix, control_extra, FRAMES, "control.sock")
}

/// Opens up to `n` raw connections that never send anything. A connection is given generous
/// time to be queued (the listener's backlog may be full for a moment); if one cannot be
/// queued at all, or the socket is gone, no more are tried. Returns those opened.
fn hostile(socket: &Path, n: usize) -> Vec<Socket> {
    let addr = SockAddr::unix(socket).expect("addr");
    let mut out = Vec::with_capacity(n);
    'each: for _ in 0..n {
        let s = Socket::new(Domain::UNIX, Type::SEQPACKET, None).expect("socket");
        s.set_nonblocking(true).expect("nonblocking");
        let start = Instant::now();
        loop {
            match s.connect(&addr) {
                Ok(()) => break,
                // The backlog is full: wait for the server to take (or refuse) connections.
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if start.elapsed() > Duration::from_secs(5) {
                        break 'each;
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                // The socket is gone (epochgate died): the caller says so.
                Err(_) => break 'each,
            }
        }
        s.set_nonblocking(false).expect("blocking");
        out.push(s);
    }
    out
}

fn stderr_of(eg: &Running) -> String {
    std::fs::read_to_string(eg.dir.join("epochgate.err")).unwrap_or_default()
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// A real VMM session: adopts `web`, fences and commits what it sent; returns the frames.
fn vmm_fences_and_commits(socket: &Path) -> u64 {
    let mut c = Client::connect(socket, "web").expect("the VMM's Hello");
    assert_eq!(c.welcome().mode, Mode::Protected);
    let epoch = c.welcome().epoch;
    let f = c.fence(epoch).expect("fence");
    assert_eq!(c.commit(epoch).expect("commit"), f.frames);
    f.frames
}

#[test]
fn silent_connections_under_a_low_fd_limit_neither_spin_nor_lock_the_vmm_out() {
    let _g = serial();
    let dir = tempdir();
    let d = dir.path();
    // max_sessions above the fd limit: descriptors are what runs out. hello_timeout_ms is left
    // at its default (2000).
    let (mut eg, frames) = start(d, "eg-hostile-fd", "max_sessions = 1000\n");
    let pid = eg.child.id();
    let ok = Command::new("prlimit")
        .args(["--nofile=256:256", "--pid", &pid.to_string()])
        .status()
        .expect("run prlimit")
        .success();
    assert!(ok, "prlimit failed");
    let fds_before = open_fds(pid);
    let lines_before = stderr_of(&eg).lines().count();
    let cpu_before = thread_cpu_seconds(pid, "eg-control");
    let wall = Instant::now();

    let socket = d.join("control.sock");
    let conns = hostile(&socket, 400);
    let fds_peak = open_fds(pid);
    // Give a spinning thread time to show (an idle one stays near 0).
    std::thread::sleep(Duration::from_secs(1));
    if let Ok(Some(status)) = eg.child.try_wait() {
        panic!(
            "epochgate exited ({status}) under {} hostile connections\n{}",
            conns.len(),
            tail(&stderr_of(&eg))
        );
    }
    let cpu = thread_cpu_seconds(pid, "eg-control") - cpu_before;
    let share = cpu / wall.elapsed().as_secs_f64();
    let during = stderr_of(&eg);
    let new_lines = during.lines().count() - lines_before;
    println!(
        "opened {} of 400 connections; epochgate fds {fds_before} -> {fds_peak} (limit 256); \
         eg-control used {cpu:.3} s CPU in {:.2} s ({:.1}% of a core); {new_lines} new stderr line(s)",
        conns.len(),
        wall.elapsed().as_secs_f64(),
        share * 100.0
    );
    assert_eq!(
        conns.len(),
        400,
        "the backlog filled: connections were neither accepted nor refused\n{}",
        tail(&during)
    );
    assert!(
        new_lines <= 20,
        "{new_lines} stderr lines while connections were refused (one per episode expected)\n{}",
        tail(&during)
    );
    assert!(
        share < 0.5,
        "the control thread used {:.0}% of a core while nothing was to be done: it spins",
        share * 100.0
    );

    // Each silent connection is told why it is closed: at once when no descriptor was to be
    // spared, or after the hello timeout.
    let (mut no_fds, mut no_hello) = (0, 0);
    for s in &conns {
        match told(s) {
            Some((ErrorCode::Busy, t)) if t.contains("short of file descriptors") => no_fds += 1,
            Some((ErrorCode::NotAdopted, t)) if t.contains("control.hello_timeout_ms") => {
                no_hello += 1
            }
            other => panic!("a silent connection was told {other:?}"),
        }
    }
    drop(conns);
    println!("{no_fds} refused for want of descriptors, {no_hello} closed by the hello timeout");
    assert!(no_fds > 0, "the fd limit was never reached");
    assert!(no_hello > 0, "no connection became a session");

    // A VMM gets in and works; the data plane held and releases exactly its frames.
    assert_eq!(vmm_fences_and_commits(&socket), FRAMES as u64);
    let st = eg.wait_for("the epoch released", |s| {
        u(vm(s, "web"), "tx_frames") == FRAMES as u64
    });
    let c = &st["control"];
    assert_eq!(u(c, "refused_no_fds"), no_fds, "{c}");
    assert_eq!(u(c, "hello_timeouts"), no_hello, "{c}");
    let log = stderr_of(&eg);
    assert!(
        log.contains("short of file descriptors") && log.contains("a session was let in again"),
        "the episode's start and end are logged\n{}",
        tail(&log)
    );
    assert!(log.lines().count() - lines_before <= 20, "{}", tail(&log));
    let stats = eg.stop();
    assert_balanced(&stats);
    assert_eq!(read_pcap(&d.join("egress.pcap")), frames);
    assert!(vm(&stats, "web")["dropped"]
        .as_object()
        .is_none_or(|m| m.is_empty()));
}

#[test]
fn past_max_sessions_connections_are_refused_at_once_and_counted() {
    let _g = serial();
    let dir = tempdir();
    let d = dir.path();
    let (eg, _) = start(
        d,
        "eg-hostile-max",
        "max_sessions = 8\nhello_timeout_ms = 1500\n",
    );
    let socket = d.join("control.sock");
    let lines_before = stderr_of(&eg).lines().count();
    let conns = hostile(&socket, 100);
    assert_eq!(conns.len(), 100);
    // The first 8 are sessions; the others are refused at once, naming the limit.
    let held = &conns[..8];
    for s in &conns[8..] {
        match told(s) {
            Some((ErrorCode::Busy, t)) if t.contains("control.max_sessions") => {}
            other => panic!("an excess connection was told {other:?}"),
        }
    }
    // So is a VMM while they hold the sessions.
    match Client::connect(&socket, "web") {
        Err(vmm_shim::ShimError::Refused { code, text }) => {
            assert_eq!(code, ErrorCode::Busy);
            assert!(text.contains("control.max_sessions"), "{text}");
        }
        other => panic!("a VMM was let in past max_sessions: {other:?}"),
    }
    for s in held {
        match told(s) {
            Some((ErrorCode::NotAdopted, t)) if t.contains("1500 ms") => {}
            other => panic!("a silent session was told {other:?}"),
        }
    }
    drop(conns);
    assert_eq!(vmm_fences_and_commits(&socket), FRAMES as u64);

    let out = Command::new(EPOCHGATE)
        .args(["stats", "--json", "--config"])
        .arg(d.join("epochgate.toml"))
        .output()
        .expect("epochgate stats");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let snap: Value = serde_json::from_slice(&out.stdout).expect("stats JSON");
    let c = &snap["control"];
    println!("epochgate stats --json: control {c}");
    assert_eq!(u(c, "refused_max_sessions"), 93, "{c}");
    assert_eq!(u(c, "hello_timeouts"), 8, "{c}");
    let log = stderr_of(&eg);
    assert!(
        log.lines().count() - lines_before <= 4,
        "refusals are logged once per episode\n{}",
        tail(&log)
    );
    eg.stop();
}

/// The last lines of a log (a spinning one can be megabytes).
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    let from = lines.len().saturating_sub(10);
    format!(
        "... {} line(s), the last:\n{}",
        lines.len(),
        lines[from..].join("\n")
    )
}
