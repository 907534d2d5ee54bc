use super::server::{admit, start_with};
use super::*;
use crate::config::ControlConfig;
use crate::control::server::Access;
use crate::dpdk::PortStats;
use crate::stats::{ControlSnapshot, EgressSnapshot, Latency, PortSnapshot, VmSetup, VmSnapshot};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

/// A snapshot with something in every field (other modules' tests use it too).
pub(crate) fn sample() -> Snapshot {
    let lat = |base: u64| Latency {
        count: 1000 + base,
        min_ns: 500,
        p50_ns: 12_300 + base,
        p90_ns: 30_000,
        p99_ns: 45_600,
        p999_ns: 900_000,
        max_ns: 2_500_000,
        mean_ns: 15_000,
    };
    let map = |kv: &[(&str, u64)]| -> BTreeMap<String, u64> {
        kv.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    };
    Snapshot {
        uptime_ms: 125_500,
        vms: vec![
            VmSnapshot {
                name: "web".into(),
                mode: "passthrough".into(),
                mac: Some("52:54:00:00:00:01".into()),
                rx_frames: 1_234_567,
                rx_bytes: 987_654_321,
                released_frames: 1_234_560,
                released_bytes: 987_654_000,
                tx_frames: 1_234_000,
                tx_bytes: 987_000_000,
                waiting: 7,
                ready_frames: 5,
                ready_bytes: 7_500,
                staged_frames: 2,
                backpressure: 3,
                inbound_frames: 4242,
                inbound_bytes: 424_242,
                dropped: map(&[("buffer-full", 11), ("runt", 2)]),
                open_epoch: 0,
                sealed_epoch: 0,
                committed_epoch: 0,
                held_frames: 0,
                held_bytes: 0,
                epochs_sealed: 0,
                epochs_committed: 0,
                epochs_discarded: 0,
                fences_cut_short: 0,
                fences_unproven: 0,
                verdicts: BTreeMap::new(),
                checkpoint_requests: BTreeMap::new(),
                hold_time: lat(0),
                commit_to_wire: Latency::default(),
                fence_drain: Latency::default(),
                epoch_age_ns: 0,
                controller: false,
                histograms: Default::default(),
                setup: VmSetup {
                    port: "net_pcap1".into(),
                    vlan: None,
                    max_held_frames: 4096,
                    max_held_bytes: 0,
                    high_water_frames: 0,
                    high_water_bytes: 0,
                    on_full: "backpressure".into(),
                    rate_bytes_per_s: 12_500_000,
                    rate_pps: 0,
                    burst_bytes: 0,
                    burst_frames: 0,
                },
            },
            VmSnapshot {
                name: "ledger-primary".into(),
                mode: "protected".into(),
                mac: None,
                rx_frames: 500,
                rx_bytes: 64_000,
                released_frames: 300,
                released_bytes: 38_400,
                tx_frames: 290,
                tx_bytes: 37_120,
                waiting: 210,
                ready_frames: 10,
                ready_bytes: 1280,
                staged_frames: 0,
                backpressure: 0,
                inbound_frames: 0,
                inbound_bytes: 0,
                dropped: BTreeMap::new(),
                open_epoch: 17,
                sealed_epoch: 16,
                committed_epoch: 15,
                held_frames: 200,
                held_bytes: 25_600,
                epochs_sealed: 16,
                epochs_committed: 15,
                epochs_discarded: 1,
                fences_cut_short: 4,
                fences_unproven: 0,
                verdicts: map(&[("tcp-pure-ack", 9)]),
                checkpoint_requests: map(&[("immediate-frame", 13), ("high-water", 2)]),
                hold_time: lat(1),
                commit_to_wire: lat(2),
                fence_drain: lat(3),
                epoch_age_ns: 2_500_000,
                controller: true,
                histograms: crate::stats::VmHistogramBuckets {
                    hold_time: crate::stats::Buckets {
                        le_ns: vec![1_000, 50_000],
                        cumulative: vec![3, 7],
                        count: 9,
                        sum_ns: 2_000_000_000,
                    },
                    ..Default::default()
                },
                setup: VmSetup {
                    port: "shared ingress".into(),
                    vlan: Some(10),
                    max_held_frames: 8192,
                    max_held_bytes: 1_048_576,
                    high_water_frames: 4096,
                    high_water_bytes: 0,
                    on_full: "drop".into(),
                    rate_bytes_per_s: 1_000,
                    rate_pps: 20_000,
                    burst_bytes: 0,
                    burst_frames: 0,
                },
            },
        ],
        ports: vec![PortSnapshot {
            name: "net_pcap0".into(),
            role: "egress".into(),
            rx_frames: 0,
            rx_bytes: 0,
            tx_frames: 1_234_290,
            tx_bytes: 987_037_120,
            dropped: map(&[("shutdown", 8)]),
            driver: PortStats {
                ipackets: 0,
                opackets: 1_234_290,
                ibytes: 0,
                obytes: 987_037_120,
                imissed: 77,
                ierrors: 0,
                oerrors: 66,
                rx_nombuf: 55,
            },
        }],
        egress: EgressSnapshot {
            released_frames: 4100,
            released_bytes: 410_000,
            passthrough_frames: 1_230_190,
            passthrough_bytes: 986_627_120,
            contended_frames: 5000,
            guarded_frames: 900,
        },
        control: ControlSnapshot {
            sessions: 2,
            refused_max_sessions: 31,
            refused_no_fds: 7,
            accept_errors: 3,
            hello_timeouts: 40,
            liveness_timeouts: 1,
            refused_peer: 5,
            closed_not_reading: 2,
            refused_before_hello: 6,
            refused_other_vm: 4,
            bad_messages: 9,
            operator_failed: 1,
            admin_refused_peer: 3,
            admin_writes_refused: 8,
        },
        workers: vec![crate::stats::WorkerSnapshot {
            lcore: 1,
            rounds: 1000,
            busy_rounds: 250,
            rx_frames: 4000,
            tx_frames: 3000,
            busy_cycles: 600,
            idle_cycles: 1400,
            tsc_hz: 2_000_000_000,
        }],
        mbufs: crate::stats::MbufSnapshot {
            size: 8191,
            available: 6000,
            in_use: 2191,
        },
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    cfg: ControlConfig,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::Builder::new()
            .prefix("eg-admin-")
            .tempdir()
            .expect("tempdir");
        let cfg = ControlConfig {
            socket: dir.path().join("control.sock"),
            admin_socket: dir.path().join("run/admin.sock"),
            ..ControlConfig::default()
        };
        Fixture { dir, cfg }
    }

    fn path(&self) -> &Path {
        &self.cfg.admin_socket
    }

    fn start(&self) -> AdminServer {
        let snap = sample();
        AdminServer::start(&self.cfg, Arc::new(move || snap.clone())).expect("start")
    }
}

/// Sends raw bytes and reads the answer line.
fn raw(path: &Path, bytes: &[u8]) -> String {
    let mut s = UnixStream::connect(path).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(bytes).expect("send");
    line_of(&mut s)
}

fn line_of(s: &mut UnixStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while !out.contains(&b'\n') {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) => panic!("reading the answer: {e} (have {out:?})"),
        }
    }
    String::from_utf8(out).expect("utf-8")
}

fn error_of(line: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(line.trim_end()).expect("json");
    v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("not an error line: {line}"))
        .to_string()
}

#[test]
fn stats_and_vms_round_trip_the_snapshot_exactly() {
    let f = Fixture::new();
    let calls = Arc::new(AtomicU64::new(0));
    let server = {
        let (snap, calls) = (sample(), calls.clone());
        AdminServer::start(
            &f.cfg,
            Arc::new(move || {
                calls.fetch_add(1, Relaxed);
                snap.clone()
            }),
        )
        .expect("start")
    };
    assert_eq!(query(f.path(), "stats").expect("stats"), sample());
    assert_eq!(query(f.path(), "vms").expect("vms"), sample());
    // Whitespace around the request and CRLF are fine; one line of JSON comes back.
    let line = raw(f.path(), b" stats \r\n");
    assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
    let back: Snapshot = serde_json::from_str(line.trim_end()).expect("snapshot");
    assert_eq!(back, sample());
    assert_eq!(
        calls.load(Relaxed),
        3,
        "the source is asked once per request"
    );
    server.stop();
}

#[test]
fn an_unknown_request_gets_an_error_line_and_the_next_client_is_served() {
    let f = Fixture::new();
    let _server = f.start();
    let e = error_of(&raw(f.path(), b"shutdown now\n"));
    assert!(e.contains("unknown request \"shutdown now\""), "{e}");
    assert!(e.contains("\"stats\" or \"vms\""), "{e}");
    match query(f.path(), "reboot") {
        Err(err @ QueryError::Server { .. }) => {
            let text = err.to_string();
            assert!(text.contains("refused the request"), "{text}");
            assert!(text.contains("unknown request \"reboot\""), "{text}");
        }
        other => panic!("expected a server error, got {other:?}"),
    }
    // Too long, with or without a newline after it.
    let e = error_of(&raw(f.path(), &[b'x'; 200]));
    assert!(e.contains("longer than 64 bytes"), "{e}");
    let mut long = vec![b's'; 70];
    long.push(b'\n');
    assert!(error_of(&raw(f.path(), &long)).contains("longer than 64 bytes"));
    // An unterminated request from a client that shut down its side is still answered.
    let mut s = UnixStream::connect(f.path()).unwrap();
    s.write_all(b"vms").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let back: Snapshot = serde_json::from_str(line_of(&mut s).trim_end()).unwrap();
    assert_eq!(back, sample());
    assert_eq!(
        query(f.path(), "stats").expect("served after bad clients"),
        sample()
    );
}

#[test]
fn a_silent_client_does_not_block_another_and_is_answered_when_its_time_is_up() {
    let f = Fixture::new();
    let _server = f.start();
    let mut silent: Vec<UnixStream> = (0..3)
        .map(|_| UnixStream::connect(f.path()).expect("connect"))
        .collect();
    // A client that has not even finished its line.
    silent[2].write_all(b"sta").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let t = Instant::now();
    assert_eq!(query(f.path(), "vms").expect("vms"), sample());
    assert!(
        t.elapsed() < READ_TIMEOUT,
        "served after {:?}: the silent clients held it up",
        t.elapsed()
    );
    for s in &mut silent {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let e = error_of(&line_of(s));
        assert!(e.contains("no request within 1000 ms"), "{e}");
    }
}

#[test]
fn a_stale_socket_file_is_replaced() {
    let f = Fixture::new();
    std::fs::create_dir_all(f.path().parent().unwrap()).unwrap();
    drop(std::os::unix::net::UnixListener::bind(f.path()).expect("bind"));
    assert!(f.path().exists(), "the dead listener left its file");
    let _server = f.start();
    assert_eq!(query(f.path(), "stats").expect("stats"), sample());
}

#[test]
fn a_socket_a_live_server_holds_is_refused() {
    let f = Fixture::new();
    let _first = f.start();
    let snap = sample();
    let err = AdminServer::start(&f.cfg, Arc::new(move || snap.clone()))
        .err()
        .expect("a second server on the same socket must not start");
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("control.admin_socket {}: ", f.path().display())),
        "{text}"
    );
    assert!(
        text.contains("another process is serving this socket"),
        "{text}"
    );
    // The first is untouched.
    assert_eq!(query(f.path(), "stats").expect("stats"), sample());
    // Something that is not a socket is not removed either.
    let mut cfg = f.cfg.clone();
    cfg.admin_socket = f.dir.path().join("notes.txt");
    std::fs::write(&cfg.admin_socket, "keep me").unwrap();
    let snap = sample();
    let text = AdminServer::start(&cfg, Arc::new(move || snap.clone()))
        .err()
        .expect("not a socket")
        .to_string();
    assert!(text.contains("is not a socket"), "{text}");
    assert_eq!(
        std::fs::read_to_string(&cfg.admin_socket).unwrap(),
        "keep me"
    );
}

#[test]
fn the_socket_file_gets_socket_mode() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let mut f = Fixture::new();
    f.cfg.socket_mode = "0640".into();
    let _server = f.start();
    let meta = std::fs::metadata(f.path()).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o640);
}

#[test]
fn stop_and_drop_remove_the_socket_file_promptly() {
    let f = Fixture::new();
    let server = f.start();
    assert!(f.path().exists());
    // A client mid-request does not delay the stop.
    let _idle = UnixStream::connect(f.path()).unwrap();
    let t = Instant::now();
    server.stop();
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    assert!(!f.path().exists(), "stop left the socket file");
    let err = query(f.path(), "stats").unwrap_err().to_string();
    assert!(
        err.starts_with(&format!(
            "cannot reach epochgate at {} (is it running? its config's control.admin_socket): ",
            f.path().display()
        )),
        "{err}"
    );
    {
        let _server = f.start();
        assert!(f.path().exists());
    }
    assert!(!f.path().exists(), "drop left the socket file");
}

#[test]
fn a_panicking_source_is_an_error_line_and_the_server_lives_on() {
    let f = Fixture::new();
    let n = Arc::new(AtomicU64::new(0));
    let _server = {
        let n = n.clone();
        let snap = sample();
        AdminServer::start(
            &f.cfg,
            Arc::new(move || {
                if n.fetch_add(1, Relaxed) == 0 {
                    panic!("test: the source fails once");
                }
                snap.clone()
            }),
        )
        .expect("start")
    };
    let err = query(f.path(), "stats").unwrap_err().to_string();
    assert!(err.contains("internal error"), "{err}");
    assert_eq!(query(f.path(), "stats").expect("stats"), sample());
}

#[test]
fn refused_peers_are_told_why() {
    let access = Access {
        owner: 1000,
        uids: vec![2000],
        gids: vec![300],
    };
    assert!(admit(&access, 0, 0, 1).is_ok(), "root");
    assert!(admit(&access, 1000, 1000, 1).is_ok(), "the owner");
    assert!(admit(&access, 2000, 2000, 1).is_ok(), "allowed_uids");
    assert!(admit(&access, 3000, 300, 1).is_ok(), "allowed_gids");
    let why = admit(&access, 3000, 3000, 42).unwrap_err();
    assert!(
        why.starts_with("permission denied: uid 3000 is not allowed"),
        "{why}"
    );
    assert!(why.contains("control.allowed_uids"), "{why}");
    // Over the socket, when the tests do not run as root (root is always allowed).
    let me = nix::unistd::geteuid().as_raw();
    if me != 0 {
        let f = Fixture::new();
        let snap = sample();
        let access = Access {
            owner: me.wrapping_add(1),
            uids: Vec::new(),
            gids: Vec::new(),
        };
        let _server = start_with(
            &f.cfg,
            Arc::new(move || snap.clone()),
            access,
            Default::default(),
        )
        .expect("start");
        let e = error_of(&raw(f.path(), b"stats\n"));
        assert!(
            e.starts_with(&format!("permission denied: uid {me} is not allowed")),
            "{e}"
        );
    }
}

#[test]
fn request_framing_and_parsing_are_pure_and_exact() {
    let line = |b: &[u8]| Framed::Line(b.to_vec());
    assert_eq!(frame_request(b"", false), Framed::More);
    assert_eq!(frame_request(b"", true), Framed::Closed);
    assert_eq!(frame_request(b"sta", false), Framed::More);
    assert_eq!(frame_request(b"sta", true), line(b"sta"));
    assert_eq!(frame_request(b"stats\nvms\n", false), line(b"stats"));
    let long = [b'x'; MAX_REQUEST];
    assert_eq!(frame_request(&long, false), Framed::TooLong);
    assert_eq!(frame_request(&long, true), Framed::TooLong);
    // A newline just past the first MAX_REQUEST bytes does not make a line.
    assert_eq!(
        frame_request(&[&long[..], b"\n"].concat(), false),
        Framed::TooLong
    );
    let mut last = long;
    last[MAX_REQUEST - 1] = b'\n';
    assert_eq!(frame_request(&last, false), line(&long[..MAX_REQUEST - 1]));

    assert_eq!(parse_request(b" stats\r"), Ok("stats"));
    assert_eq!(parse_request(b"vms"), Ok("vms"));
    let why = parse_request(b"\xffstat").unwrap_err();
    assert!(
        why.starts_with(
            "unknown request \"\u{fffd}stat\": this socket accepts \"stats\" or \"vms\""
        ),
        "{why}"
    );
}
