//! The C ABI as a C program sees it: `examples/c/remus_loop.c`, `examples/c/latency_probe.c`
//! and a layout probe are compiled with `cc` against `include/epochgate_shim.h` and `libvmm_shim.a`, and run against
//! a fake epochgate on a real socket.

mod common;

use std::fs::File;
use std::mem::{offset_of, size_of};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use common::{wait_for, FakeServer, Model};
use vmm_shim::ffi::{EgEvent, EgFenced, EgStats};
use vmm_shim::proto::{ErrorCode, Reply, Request, RequestReason, Urgency};

const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");

/// The static library of this very build, built by cargo first if it is not there.
///
/// `cargo test` compiles the library with all its crate types (staticlib included) before it
/// runs this test, but leaves the archive in `target/<profile>/deps/` (next to this test's
/// executable); only `cargo build` copies it up to `target/<profile>/`. The newer of the two
/// is the one that matches the code under test. Cargo is only run when neither exists (a
/// test binary started some other way).
fn static_lib() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // The test executable is target/<profile>/deps/c_abi-<hash>.
    let deps_dir = exe.parent().unwrap();
    let profile_dir = deps_dir.parent().unwrap();
    let lib = profile_dir.join("libvmm_shim.a");
    let newest = [deps_dir.join("libvmm_shim.a"), lib.clone()]
        .into_iter()
        .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
        .max();
    if let Some((_, path)) = newest {
        return path;
    }
    let profile = profile_dir.file_name().unwrap().to_str().unwrap();
    let mut cargo = Command::new(option_env!("CARGO").unwrap_or("cargo"));
    cargo.args(["build", "-p", "vmm-shim", "--lib"]);
    match profile {
        "debug" => {}
        "release" => {
            cargo.arg("--release");
        }
        other => {
            cargo.args(["--profile", other]);
        }
    }
    let status = cargo.current_dir(MANIFEST_DIR).status().expect("run cargo");
    assert!(status.success(), "cargo build -p vmm-shim failed");
    assert!(lib.exists(), "{} is still missing", lib.display());
    lib
}

/// Compiles the C file `source` against the header and the static library into `name`.
fn compile(source: &Path, name: &str) -> PathBuf {
    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("c_abi");
    std::fs::create_dir_all(&out_dir).unwrap();
    let exe = out_dir.join(name);
    let output = Command::new("cc")
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-I"])
        .arg(Path::new(MANIFEST_DIR).join("include"))
        .arg(source)
        .arg(static_lib())
        .args(["-lpthread", "-ldl", "-lm", "-o"])
        .arg(&exe)
        .output()
        .expect("run cc");
    assert!(
        output.status.success(),
        "cc failed for {}:\n{}",
        source.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    exe
}

fn remus_loop() -> &'static Path {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| {
        compile(
            &Path::new(MANIFEST_DIR).join("examples/c/remus_loop.c"),
            "remus_loop",
        )
    })
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn latency_probe() -> &'static Path {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| {
        compile(
            &Path::new(MANIFEST_DIR).join("examples/c/latency_probe.c"),
            "latency_probe",
        )
    })
}

fn run_remus_loop(socket: &Path, vm: &str, rounds: u32) -> Run {
    run_example(remus_loop(), socket, vm, rounds, &[])
}

/// Runs one of the C examples as `EXE SOCKET VM ROUNDS EXTRA...`.
fn run_example(exe: &Path, socket: &Path, vm: &str, rounds: u32, extra: &[&str]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let (out, err) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut child = Command::new(exe)
        .arg(socket)
        .arg(vm)
        .arg(rounds.to_string())
        .args(extra)
        .stdin(Stdio::null())
        .stdout(File::create(&out).unwrap())
        .stderr(File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let status = wait_for(&mut child);
    Run {
        code: status.code(),
        stdout: std::fs::read_to_string(out).unwrap(),
        stderr: std::fs::read_to_string(err).unwrap(),
    }
}

#[test]
fn remus_loop_fences_and_commits_through_the_c_abi() {
    let server = FakeServer::start(|s| {
        s.serve_with(|s, req| {
            // An event that arrives while the C program waits for the first Fenced.
            if *req == (Request::Fence { epoch: 1 }) {
                s.send(&Reply::CheckpointRequest {
                    epoch: 1,
                    urgency: Urgency::Within { ns: 5_000_000 },
                    reason: RequestReason::HighWater,
                });
            }
        })
    });
    let run = run_remus_loop(server.path(), "web", 3);
    let requests = server.finish();
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    assert_eq!(run.stderr, "");
    let expected = "\
welcome epoch=0 mode=0 version=1
protected epoch=1
event epoch=1 urgency=within within_ns=5000000 reason=high-water
fenced epoch=1 frames=10 bytes=640 drain_ns=1001
committed epoch=1 frames=10
fenced epoch=2 frames=20 bytes=1280 drain_ns=1002
committed epoch=2 frames=20
fenced epoch=3 frames=30 bytes=1920 drain_ns=1003
committed epoch=3 frames=30
stats mode=1 open=4 sealed=3 committed=3 held_frames=0
events=1
";
    assert_eq!(run.stdout, expected);

    assert_eq!(requests.len(), 10, "{requests:?}");
    assert_eq!(requests[0], Request::hello("web").unwrap());
    assert_eq!(
        requests[1..8],
        [
            Request::Protect,
            Request::Fence { epoch: 1 },
            Request::Commit { epoch: 1 },
            Request::Fence { epoch: 2 },
            Request::Commit { epoch: 2 },
            Request::Fence { epoch: 3 },
            Request::Commit { epoch: 3 },
        ]
    );
    assert!(matches!(requests[8], Request::Ping { .. }));
    assert_eq!(requests[9], Request::Stats);
}

/// The probe's figures are round trips: the time the server takes before it answers is in them,
/// with the shim's pinger (`PING_MS` 0, as `eg_shim_connect`) and without it (-1).
#[test]
fn the_latency_probe_times_each_call_from_request_to_answer() {
    for ping_ms in ["0", "-1"] {
        probe_times_each_call(ping_ms);
    }
}

fn probe_times_each_call(ping_ms: &str) {
    const ROUNDS: u32 = 20;
    const FENCE_DELAY: std::time::Duration = std::time::Duration::from_millis(3);
    let server = FakeServer::start(|s| {
        s.serve_with(|_, req| {
            if matches!(req, Request::Fence { .. }) {
                std::thread::sleep(FENCE_DELAY);
            }
        })
    });
    let run = run_example(latency_probe(), server.path(), "web", ROUNDS, &[ping_ms]);
    let requests = server.finish();
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    assert_eq!(run.stderr, "");
    // hello, protect, then (fence, commit) and pings in their order, each epoch once.
    let mut expected = vec![Request::hello("web").unwrap(), Request::Protect];
    for e in 1..=u64::from(ROUNDS) {
        expected.push(Request::Fence { epoch: e });
        expected.push(Request::Commit { epoch: e });
    }
    let n = expected.len();
    assert_eq!(requests[..n], expected[..], "{requests:?}");
    let pings = &requests[n..];
    assert_eq!(pings.len(), ROUNDS as usize, "{requests:?}");
    assert!(pings.iter().all(|r| matches!(r, Request::Ping { .. })));

    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", run.stdout);
    let figures = |line: &str, name: &str| -> Vec<f64> {
        let mut words = line.split(' ');
        assert_eq!(words.next(), Some(name), "{line}");
        assert_eq!(words.next(), Some(format!("n={ROUNDS}").as_str()), "{line}");
        words
            .zip(["p50=", "p90=", "p99=", "max="])
            .map(|(w, key)| {
                let v = w
                    .strip_prefix(key)
                    .unwrap_or_else(|| panic!("{line}: {key}"));
                v.parse().unwrap_or_else(|_| panic!("{line}: {v}"))
            })
            .collect()
    };
    let fence = figures(lines[0], "fence_us");
    let commit = figures(lines[1], "commit_us");
    let ping = figures(lines[2], "ping_us");
    for f in [&fence, &commit, &ping] {
        assert_eq!(f.len(), 4, "{}", run.stdout);
        assert!(
            f.windows(2).all(|w| w[0] <= w[1]),
            "ordered: {}",
            run.stdout
        );
        assert!(f[0] > 0.0, "{}", run.stdout);
    }
    // Every fence waited for the server's 3 ms; the commits and pings did not.
    let delay_us = FENCE_DELAY.as_micros() as f64;
    assert!(fence[0] >= delay_us, "{}", run.stdout);
    assert!(commit[0] < fence[0] && ping[0] < fence[0], "{}", run.stdout);
}

#[test]
fn the_latency_probe_refuses_a_bad_count_or_ping_interval() {
    let run = run_example(latency_probe(), Path::new("/nonexistent"), "web", 0, &[]);
    assert_eq!(run.code, Some(2));
    assert_eq!(
        run.stderr,
        "latency_probe: N must be a number from 1 to 10000000, not \"0\"\n"
    );
    let run = run_example(
        latency_probe(),
        Path::new("/nonexistent"),
        "web",
        1,
        &["-2"],
    );
    assert_eq!(run.code, Some(2));
    assert_eq!(
        run.stderr,
        "latency_probe: PING_MS must be -1, 0 or a number of ms, not \"-2\"\n"
    );
}

/// `GAP_US` puts that pause before every fence (a VMM checkpointing at 40 Hz fences every
/// 25 ms): the run takes at least ROUNDS gaps, and the calls are the same.
#[test]
fn the_latency_probe_pauses_before_each_fence_and_refuses_a_bad_gap() {
    const ROUNDS: u32 = 5;
    let server = FakeServer::start(|s| s.serve());
    let started = std::time::Instant::now();
    let run = run_example(
        latency_probe(),
        server.path(),
        "web",
        ROUNDS,
        &["-1", "20000"],
    );
    let took = started.elapsed();
    let requests = server.finish();
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    let fences = requests
        .iter()
        .filter(|r| matches!(r, Request::Fence { .. }))
        .count();
    assert_eq!(fences, ROUNDS as usize, "{requests:?}");
    assert!(
        took >= std::time::Duration::from_millis(20 * u64::from(ROUNDS)),
        "{took:?}"
    );
    let run = run_example(
        latency_probe(),
        Path::new("/nonexistent"),
        "web",
        1,
        &["0", "soon"],
    );
    assert_eq!(run.code, Some(2));
    assert_eq!(
        run.stderr,
        "latency_probe: GAP_US must be a number of us up to 10000000, not \"soon\"\n"
    );
}

#[test]
fn an_already_protected_vm_is_not_protected_again() {
    let server = FakeServer::with_model(Model::new("web").protected(7), |s| s.serve());
    let run = run_remus_loop(server.path(), "web", 1);
    let requests = server.finish();
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    assert!(
        run.stdout.starts_with(
            "welcome epoch=7 mode=1 version=1\n\
             fenced epoch=7 frames=70 bytes=4480 drain_ns=1007\n\
             committed epoch=7 frames=70\n"
        ),
        "{}",
        run.stdout
    );
    assert!(!requests.contains(&Request::Protect), "{requests:?}");
}

#[test]
fn a_refused_commit_returns_the_error_code() {
    let server = FakeServer::start(|s| {
        s.serve_with(|s, req| {
            if let Request::Commit { epoch } = req {
                // Make the model refuse: pretend the epoch is already committed.
                s.model.committed = *epoch;
            }
        })
    });
    let run = run_remus_loop(server.path(), "web", 2);
    let requests = server.finish();
    assert_eq!(run.code, Some(1));
    let code = ErrorCode::NotSealed.code();
    assert_eq!(
        run.stderr,
        format!(
            "remus_loop: commit failed ({code}): epochgate refused: epoch 1 is not sealed and uncommitted (not-sealed)\n"
        )
    );
    assert_eq!(requests.last(), Some(&Request::Commit { epoch: 1 }));
}

#[test]
fn a_refused_vm_gives_null_and_the_servers_text() {
    let server = FakeServer::start(|s| s.serve());
    let run = run_remus_loop(server.path(), "db", 1);
    let requests = server.finish();
    assert_eq!(run.code, Some(1));
    assert_eq!(run.stdout, "");
    assert!(
        run.stderr
            .contains(r#"cannot adopt VM db: epochgate refused: no VM is named "db" (configured: ["web"]) (unknown-vm)"#),
        "{}",
        run.stderr
    );
    assert_eq!(requests, [Request::hello("db").unwrap()]);
}

#[test]
fn a_peer_refused_at_accept_gets_the_servers_text() {
    // What epochgate does to a uid it does not allow: Error right after accept, then close,
    // without reading anything.
    let server = FakeServer::start(|s| {
        s.send(&Reply::error(
            ErrorCode::PermissionDenied,
            "uid 1000 (gid 1000, pid 1) may not drive VMs",
        ));
    });
    let run = run_remus_loop(server.path(), "web", 1);
    server.finish();
    assert_eq!(run.code, Some(1));
    assert!(
        run.stderr
            .contains("uid 1000 (gid 1000, pid 1) may not drive VMs (permission-denied)"),
        "{}",
        run.stderr
    );
}

#[test]
fn an_unreachable_socket_gives_null() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nobody.sock");
    let run = run_remus_loop(&path, "web", 1);
    assert_eq!(run.code, Some(1));
    assert!(
        run.stderr.contains(&format!(
            "cannot adopt VM web: cannot connect to {}",
            path.display()
        )),
        "{}",
        run.stderr
    );
}

/// A C program that prints what the header says about layouts and constants.
const PROBE: &str = r#"
#include <stddef.h>
#include <stdio.h>
#include "epochgate_shim.h"
#define FIELD(T, f) printf(#T "." #f " %zu\n", offsetof(T, f))
#define CONST(c) printf(#c " %d\n", (int)(c))
int main(void)
{
    printf("sizeof(eg_fenced) %zu\n", sizeof(eg_fenced));
    FIELD(eg_fenced, epoch); FIELD(eg_fenced, frames); FIELD(eg_fenced, bytes);
    FIELD(eg_fenced, drain_ns);
    printf("sizeof(eg_stats) %zu\n", sizeof(eg_stats));
    FIELD(eg_stats, mode); FIELD(eg_stats, open_epoch); FIELD(eg_stats, sealed_epoch);
    FIELD(eg_stats, committed_epoch); FIELD(eg_stats, held_frames);
    FIELD(eg_stats, held_bytes); FIELD(eg_stats, rx_frames); FIELD(eg_stats, tx_frames);
    FIELD(eg_stats, dropped);
    printf("sizeof(eg_event) %zu\n", sizeof(eg_event));
    FIELD(eg_event, epoch); FIELD(eg_event, urgency); FIELD(eg_event, within_ns);
    FIELD(eg_event, reason);
    CONST(EG_ERR_WRONG_EPOCH); CONST(EG_ERR_SHUTTING_DOWN); CONST(EG_MODE_STANDBY);
    printf("version %u\n", eg_shim_version());
    printf("last_error \"%s\"\n", eg_shim_last_error());
    printf("null_fd %d\n", eg_shim_fd(NULL));
    int rc = eg_shim_ping(NULL);
    printf("null_ping %d %s\n", rc, eg_shim_last_error());
    eg_shim_close(NULL);
    return 0;
}
"#;

#[test]
fn the_header_agrees_with_the_rust_definitions() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("c_abi");
    std::fs::create_dir_all(&dir).unwrap();
    let source = dir.join("layout_probe.c");
    std::fs::write(&source, PROBE).unwrap();
    let exe = compile(&source, "layout_probe");
    let output = Command::new(exe).output().unwrap();
    assert!(output.status.success());
    let got = String::from_utf8(output.stdout).unwrap();

    let mut want = String::new();
    let mut line = |name: &str, v: usize| want.push_str(&format!("{name} {v}\n"));
    line("sizeof(eg_fenced)", size_of::<EgFenced>());
    line("eg_fenced.epoch", offset_of!(EgFenced, epoch));
    line("eg_fenced.frames", offset_of!(EgFenced, frames));
    line("eg_fenced.bytes", offset_of!(EgFenced, bytes));
    line("eg_fenced.drain_ns", offset_of!(EgFenced, drain_ns));
    line("sizeof(eg_stats)", size_of::<EgStats>());
    line("eg_stats.mode", offset_of!(EgStats, mode));
    line("eg_stats.open_epoch", offset_of!(EgStats, open_epoch));
    line("eg_stats.sealed_epoch", offset_of!(EgStats, sealed_epoch));
    line(
        "eg_stats.committed_epoch",
        offset_of!(EgStats, committed_epoch),
    );
    line("eg_stats.held_frames", offset_of!(EgStats, held_frames));
    line("eg_stats.held_bytes", offset_of!(EgStats, held_bytes));
    line("eg_stats.rx_frames", offset_of!(EgStats, rx_frames));
    line("eg_stats.tx_frames", offset_of!(EgStats, tx_frames));
    line("eg_stats.dropped", offset_of!(EgStats, dropped));
    line("sizeof(eg_event)", size_of::<EgEvent>());
    line("eg_event.epoch", offset_of!(EgEvent, epoch));
    line("eg_event.urgency", offset_of!(EgEvent, urgency));
    line("eg_event.within_ns", offset_of!(EgEvent, within_ns));
    line("eg_event.reason", offset_of!(EgEvent, reason));
    line("EG_ERR_WRONG_EPOCH", ErrorCode::WrongEpoch.code().into());
    line(
        "EG_ERR_SHUTTING_DOWN",
        ErrorCode::ShuttingDown.code().into(),
    );
    line("EG_MODE_STANDBY", vmm_shim::proto::Mode::Standby as usize);
    line("version", vmm_shim::PROTOCOL_VERSION.into());
    want.push_str("last_error \"\"\n");
    want.push_str("null_fd -1\n");
    want.push_str("null_ping -1 bad argument: the eg_shim handle is NULL\n");
    assert_eq!(got, want);
}
