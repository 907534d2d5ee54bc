//! Liveness against long fences (issue 10, defect 5), with a real epochgate: a protected VM on a
//! pcap port that never runs dry (`infinite_rx=1`, `on_full = "drop"`), so that every fence
//! drains for the whole of `control.fence_drain_ms`, and a VMM that pings every 20 ms while its
//! fence is with the worker. The VMM is never declared dead, its pings are all answered, and
//! nothing it sealed is discarded. `check-config` refuses a liveness timeout that does not exceed
//! the fence drain, and blames `control.socket` (not a key the user never wrote) when the control
//! socket sits where the admin socket goes by default.
//!
//! The runtime half of the defect (time with the worker counted as silence) is reproduced
//! exactly, with liveness 200 ms and a 500 ms fence, by the unit tests in
//! `nic/control/server.rs`: a config that shows it is now refused before EAL starts.

mod common;
use common::*;
use epochgate::tools::gen::{self, Stream};
use epochgate::wire::frame::MacAddr;
use std::io::Read;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use vmm_shim::proto::{self, Reply, Request};

fn check(d: &Path, text: &str) -> (bool, String) {
    let f = d.join("check.toml");
    std::fs::write(&f, text).unwrap();
    let out = Command::new(EPOCHGATE)
        .arg("check-config")
        .arg(&f)
        .output()
        .expect("epochgate check-config");
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), all)
}

const VMS: &str = "[egress]\nport = \"net_null0\"\n\
                   [[vm]]\nname = \"a\"\nport = \"net_tap0\"\n\
                   [[vm]]\nname = \"b\"\nport = \"net_tap1\"\n";

#[test]
fn check_config_refuses_a_liveness_timeout_within_the_fence_drain_and_names_the_right_keys() {
    let dir = tempdir();
    let d = dir.path();
    let (ok, text) = check(
        d,
        &format!("[control]\nliveness_timeout_ms = 200\nfence_drain_ms = 500\n{VMS}"),
    );
    assert!(!ok, "accepted: {text}");
    assert!(
        text.contains(
            "control.liveness_timeout_ms: 200 does not exceed control.fence_drain_ms (500)"
        ),
        "{text}"
    );
    let (ok, text) = check(
        d,
        &format!("[control]\nliveness_timeout_ms = 501\nfence_drain_ms = 500\n{VMS}"),
    );
    assert!(ok, "refused: {text}");
    assert!(
        text.contains("liveness 501 ms, Hello within 2000 ms, at most 64 sessions"),
        "{text}"
    );

    let (ok, text) = check(d, &format!("[control]\nmax_sessions = 1\n{VMS}"));
    assert!(!ok, "accepted: {text}");
    assert!(
        text.contains("control.max_sessions: 1 is fewer than the 2 [[vm]] entries"),
        "{text}"
    );

    // The control socket named admin.sock, admin_socket not written: the user's key is blamed.
    let (ok, text) = check(
        d,
        &format!("[control]\nsocket = \"{}/admin.sock\"\n{VMS}", d.display()),
    );
    assert!(!ok, "accepted: {text}");
    assert!(text.contains("control.socket: "), "{text}");
    assert!(!text.contains("control.admin_socket: "), "{text}");
    assert!(
        text.contains("set control.admin_socket elsewhere"),
        "{text}"
    );
    // Written by the user: then it is that key's fault.
    let (ok, text) = check(
        d,
        &format!("[control]\nsocket = \"/x/a.sock\"\nadmin_socket = \"/x/a.sock\"\n{VMS}"),
    );
    assert!(!ok, "accepted: {text}");
    assert!(text.contains("control.admin_socket: "), "{text}");
}

/// A raw session: the test sends pings while a fence is in flight, which the blocking client
/// cannot.
struct Raw(socket2::Socket);

impl Raw {
    fn connect(path: &Path) -> Raw {
        let s = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::SEQPACKET, None)
            .expect("socket");
        s.connect(&socket2::SockAddr::unix(path).expect("addr"))
            .expect("connect");
        s.set_read_timeout(Some(DEADLINE)).expect("timeout");
        Raw(s)
    }

    fn say(&self, r: &Request) {
        self.0.send(&r.encode()).expect("send");
    }

    /// The next reply that is not a checkpoint request (the VM sends all the time).
    fn hear(&self) -> Reply {
        let mut buf = vec![0u8; proto::MAX_MESSAGE + 1];
        loop {
            let n = (&self.0).read(&mut buf).expect("a reply");
            assert!(n > 0, "epochgate closed the session");
            match proto::decode_reply(&buf[..n]).expect("a well-formed reply") {
                Reply::CheckpointRequest { .. } => continue,
                r => return r,
            }
        }
    }
}

#[test]
fn a_vmm_pinging_through_full_length_fences_stays_alive() {
    let _g = serial();
    let dir = tempdir();
    let d = dir.path();
    let frames = gen::frames(
        &Stream {
            id: 1,
            src: MacAddr([0x52, 0x54, 0, 0, 0, 1]),
            dst: MacAddr([0x02, 0, 0, 0, 0, 0xfe]),
            vlan: None,
        },
        64,
    );
    let input = d.join("web.pcap");
    write_pcap(&input, &frames);
    let empty = d.join("empty.pcap");
    write_pcap(&empty, &[]);
    let cfg = format!(
        "{}liveness_timeout_ms = 600\nfence_drain_ms = 500\n\n\
         [egress]\nport = \"net_pcap0,rx_pcap={e},tx_pcap={d}/egress.pcap\"\n\n\
         [[vm]]\nname = \"web\"\nmode = \"protected\"\non_full = \"drop\"\nmax_held_frames = 256\n\
         port = \"net_pcap1,rx_pcap={i},infinite_rx=1\"\n",
        eal_and_control(d, "eg-liveness"),
        e = empty.display(),
        i = input.display(),
        d = d.display()
    );
    let mut eg = Running::start(d, &cfg);
    let socket = d.join("control.sock");
    eg.wait_for_path(&socket);
    let s = Raw::connect(&socket);
    s.say(&Request::hello("web").unwrap());
    let Reply::Welcome { epoch: first, .. } = s.hear() else {
        panic!("no welcome")
    };
    let mut token = 0u64;
    for epoch in first..first + 3 {
        s.say(&Request::Fence { epoch });
        // Pings every 20 ms for longer than the fence drains: they wait in the socket while
        // the fence is with the worker.
        let from = token + 1;
        for _ in 0..35 {
            std::thread::sleep(Duration::from_millis(20));
            token += 1;
            s.say(&Request::Ping { token });
        }
        match s.hear() {
            Reply::Fenced {
                epoch: e,
                frames,
                drain_ns,
                ..
            } => {
                assert_eq!(e, epoch);
                println!(
                    "fence {epoch}: {frames} frames, drained {:.1} ms",
                    drain_ns as f64 / 1e6
                );
                // The port never ran dry: the fence took the whole of fence_drain_ms.
                assert!(
                    drain_ns >= 500_000_000,
                    "the fence ended early: {drain_ns} ns"
                );
            }
            other => panic!("fence {epoch}: {other:?}"),
        }
        for t in from..=token {
            assert_eq!(s.hear(), Reply::Pong { token: t }, "fence {epoch}");
        }
        s.say(&Request::Commit { epoch });
        assert!(
            matches!(s.hear(), Reply::Committed { epoch: e, .. } if e == epoch),
            "commit {epoch}"
        );
    }
    // The VMM goes on pinging while the counters are read (a silent one would be failed).
    let start = std::time::Instant::now();
    let st = loop {
        token += 1;
        s.say(&Request::Ping { token });
        assert_eq!(s.hear(), Reply::Pong { token });
        if let Some(st) = eg.stats() {
            if u(vm(&st, "web"), "epochs_committed") == 3 {
                break st;
            }
        }
        assert!(
            start.elapsed() < DEADLINE,
            "no stats with 3 epochs committed"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let v = vm(&st, "web");
    assert_eq!(v["mode"], "protected", "{v}");
    assert_eq!(dropped(v, "controller-lost"), 0, "{v}");
    assert_eq!(u(&st["control"], "liveness_timeouts"), 0);
    assert_eq!(u(v, "fences_cut_short"), 3, "{v}");
    drop(s);
    eg.stop();
}
