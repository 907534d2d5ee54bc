//! The control server out of file descriptors for real (accept fails with EMFILE), without
//! DPDK: this test process runs the real control thread on a real socket with a stand-in worker,
//! and lowers its own `RLIMIT_NOFILE`, which no other test shares (the work runs in a child
//! process of this test, whose stderr is the server's log).
//!
//! With the reserve descriptor usable, each waiting connection is accepted, told why and closed
//! at once; when not even the reserve helps, the listener backs off instead of spinning. Either
//! way one line is logged when the trouble starts and one when a session is let in again, and a
//! VMM gets in once descriptors are back.

mod common;
use common::{told, DEADLINE};

use epochgate::config::ControlConfig;
use epochgate::control::{Answer, ControlServer, ControlVm, Mode, Op, Reply, Rings, Workers};
use epochgate::stats::VmCounters;
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use socket2::{Domain, SockAddr, Socket, Type};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vmm_shim::proto::ErrorCode;

const CHILD: &str = "EPOCHGATE_EMFILE_CHILD";

#[test]
fn accept_out_of_descriptors_neither_spins_nor_floods_the_log() {
    if std::env::var_os(CHILD).is_some() {
        return child();
    }
    let out = Command::new(std::env::current_exe().expect("test exe"))
        .args([
            "--exact",
            "accept_out_of_descriptors_neither_spins_nor_floods_the_log",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .output()
        .expect("run the child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let log: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("epochgate:"))
        .collect();
    println!(
        "{stdout}\nserver log ({} line(s)):\n{}",
        log.len(),
        log.join("\n")
    );
    assert!(out.status.success(), "child failed:\n{stdout}\n{stderr}");
    assert_eq!(
        log.len(),
        2,
        "one line when the episode starts, one when it ends:\n{stderr}"
    );
    assert!(log[0].contains("short of file descriptors"), "{}", log[0]);
    assert!(log[1].contains("a session was let in again"), "{}", log[1]);
}

fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd").expect("fds").count() as u64
}

/// Connects `socks` (created beforehand: creating one needs a descriptor) without blocking on
/// a full backlog; returns how many could be queued before one waited more than 5 s.
fn connect_all(socks: &[Socket], path: &Path) -> usize {
    let addr = SockAddr::unix(path).expect("addr");
    for (i, s) in socks.iter().enumerate() {
        s.set_nonblocking(true).expect("nonblocking");
        let start = Instant::now();
        loop {
            match s.connect(&addr) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if start.elapsed() > Duration::from_secs(5) {
                        return i;
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(e) => panic!("connect: {e}"),
            }
        }
        s.set_nonblocking(false).expect("blocking");
    }
    socks.len()
}

fn set_fd_limit(soft: u64) {
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    setrlimit(Resource::RLIMIT_NOFILE, soft, hard).expect("setrlimit");
}

fn child() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("control.sock");
    let cfg = ControlConfig {
        socket: socket.clone(),
        max_sessions: 1000,
        hello_timeout_ms: 1000,
        ..ControlConfig::default()
    };
    let rings = Arc::new(Rings::new(1));
    let vms = vec![ControlVm {
        name: "vm".into(),
        counters: Arc::new(VmCounters::default()),
    }];
    let modes = epochgate::control::state::Tracker::new(
        dir.path().join("control.state"),
        vec![("vm".into(), epochgate::control::Mode::Passthrough)],
    );
    let workers = Workers::single(rings.clone(), 1);
    let server = ControlServer::start(&cfg, vms, workers, modes).expect("control server");
    // The stand-in worker only welcomes.
    let quit = Arc::new(AtomicBool::new(false));
    let worker = {
        let quit = quit.clone();
        std::thread::spawn(move || {
            while !quit.load(Relaxed) {
                let Some(cmd) = rings.commands.pop() else {
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                };
                if cmd.op == Op::Adopt {
                    let welcome = Reply::Welcome {
                        epoch: 1,
                        mode: Mode::Protected,
                    };
                    let _ = rings.answers.push(Answer {
                        vm: cmd.vm,
                        session: cmd.session,
                        reply: Ok(welcome),
                    });
                    rings.wake();
                }
            }
        })
    };
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    let counters = server.counters();

    // 1. Every descriptor in use but the server's reserve: each connection is refused at once.
    let socks: Vec<Socket> = (0..200)
        .map(|_| Socket::new(Domain::UNIX, Type::SEQPACKET, None).expect("socket"))
        .collect();
    // open_fds() counts the directory it reads: minus one is every descriptor in use.
    set_fd_limit(open_fds() - 1);
    let n = connect_all(&socks, &socket);
    // Up to a backlog's worth may still be waiting: the limit stays low until they are refused.
    let start = Instant::now();
    while n == socks.len() && counters.refused_no_fds.get() < 200 && start.elapsed() < DEADLINE {
        std::thread::sleep(Duration::from_millis(5));
    }
    set_fd_limit(hard);
    assert_eq!(n, socks.len(), "the backlog filled: nothing refused them");
    for s in &socks {
        match told(s) {
            Some((ErrorCode::Busy, t)) if t.contains("short of file descriptors") => {}
            other => panic!("told {other:?}"),
        }
    }
    drop(socks);
    assert_eq!(counters.refused_no_fds.get(), 200);
    println!("phase 1: 200 connections refused at once for want of descriptors");

    // 2. Not even the reserve helps (the limit is below every descriptor): the listener rests
    // between attempts; the connections wait in the backlog.
    let socks: Vec<Socket> = (0..30)
        .map(|_| Socket::new(Domain::UNIX, Type::SEQPACKET, None).expect("socket"))
        .collect();
    let cpu_before = common::thread_cpu_seconds(std::process::id(), "eg-control");
    let wall = Instant::now();
    set_fd_limit(3);
    let n = connect_all(&socks, &socket);
    std::thread::sleep(Duration::from_secs(1));
    set_fd_limit(hard);
    let cpu = common::thread_cpu_seconds(std::process::id(), "eg-control") - cpu_before;
    let share = cpu / wall.elapsed().as_secs_f64();
    let errors = counters.accept_errors.get();
    println!(
        "phase 2: {n} connections queued; {errors} accept failure(s); eg-control used {cpu:.3} s CPU in {:.2} s ({:.1}% of a core)",
        wall.elapsed().as_secs_f64(),
        share * 100.0
    );
    assert_eq!(n, socks.len());
    assert!(errors > 0, "accept never failed");
    assert!(
        share < 0.5,
        "the control thread spins: {:.0}% of a core",
        share * 100.0
    );

    // 3. Descriptors are back: the waiting connections become sessions (closed by the hello
    // timeout), and a VMM gets in.
    for s in &socks {
        match told(s) {
            Some((ErrorCode::NotAdopted, t)) if t.contains("control.hello_timeout_ms") => {}
            other => panic!("told {other:?}"),
        }
    }
    drop(socks);
    let c = vmm_shim::Client::connect(&socket, "vm").expect("the VMM's Hello");
    assert_eq!(c.welcome().epoch, 1);
    println!(
        "phase 3: 30 sessions closed by the hello timeout; the VMM got in; counters: {:?}",
        epochgate::stats::ControlSnapshot::of(&counters)
    );
    drop(c);
    server.stop();
    quit.store(true, Relaxed);
    let _ = worker.join();
}
