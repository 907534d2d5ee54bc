//! Failing closed: a worker whose poll loop panics (or returns while nobody told it to stop)
//! sends nothing it held, the process stops with a message naming the worker and the reason,
//! every session is told why, and the exit status is non-zero.
//!
//! A real epochgate (the debug binary, whose fault hook `EPOCHGATE_FAULT` makes the worker fail
//! after a number of received frames) with a protected VM on a vhost-user port, a virtio-user
//! peer playing the guest, the VMM shim on the real control socket, and the egress written by
//! DPDK's pcap driver. The guest's epochs 1 and 2 are committed and sent; epoch 3 is sealed but
//! not committed and epoch 4 is open when the fault fires: none of their frames may leave.

mod common;
use common::*;
use epochgate::tools::gen::{self, Stream};
use epochgate::wire::frame::MacAddr;
use serde_json::Value;
use std::path::Path;
use std::process::{Command, ExitStatus};
use std::time::Instant;
use vmm_shim::proto::{ErrorCode, Mode};
use vmm_shim::{Client, ShimError};

const PROT: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 0x41]);
const GW: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0xfe]);

/// Frames per epoch: 1 and 2 are committed, 3 sealed only, 4 open when the worker fails.
const EPOCHS: [u32; 4] = [30, 20, 20, 10];
const COMMITTED: u32 = EPOCHS[0] + EPOCHS[1];
const ALL: u32 = EPOCHS[0] + EPOCHS[1] + EPOCHS[2] + EPOCHS[3];

fn frames(seqs: std::ops::Range<u32>) -> Vec<Vec<u8>> {
    let s = Stream {
        id: 7,
        src: PROT,
        dst: GW,
        vlan: None,
    };
    seqs.map(|q| gen::frame(&s, q)).collect()
}

/// epochgate on `dir` with `EPOCHGATE_FAULT=fault` in its environment.
fn start(dir: &Path, prefix: &str, fault: &str) -> Running {
    let d = dir.display();
    write_pcap(&dir.join("empty.pcap"), &[]);
    let config = format!(
        "{}[egress]\nport = \"net_pcap0,rx_pcap={d}/empty.pcap,tx_pcap={d}/egress.pcap\"\n\n\
         [[vm]]\nname = \"prot\"\nport = \"net_vhost1,iface={d}/prot.sock\"\nmac = \"{PROT}\"\nmode = \"protected\"\n",
        eal_and_control(dir, prefix),
    );
    let cfg = dir.join("epochgate.toml");
    std::fs::write(&cfg, config).expect("write config");
    let stats = dir.join("stats.json");
    let child = Command::new(EPOCHGATE)
        .args(["run", "--quiet", "--config"])
        .arg(&cfg)
        .arg("--stats-file")
        .arg(&stats)
        .env("EPOCHGATE_FAULT", fault)
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

/// The VM's counters as the admin socket gives them now.
fn prot_now(dir: &Path) -> epochgate::stats::VmSnapshot {
    let s = epochgate::admin::query(&dir.join("admin.sock"), "stats").expect("admin stats");
    s.vms
        .into_iter()
        .find(|v| v.name == "prot")
        .expect("vm prot")
}

/// What a failed run left: its exit status, stderr, what the session was told, the egress
/// capture and the final counters.
struct Failed {
    status: ExitStatus,
    stderr: String,
    told: (ErrorCode, String),
    egress: Vec<Vec<u8>>,
    stats: Value,
}

/// Epochs 1 and 2 committed and on the wire, epoch 3 sealed, epoch 4 open; the fault fires once
/// the worker has received every frame of epoch 4.
fn run_until_the_worker_fails(prefix: &str, fault: &str) -> Option<Failed> {
    if !cfg!(debug_assertions) {
        eprintln!("skipped: the fault hook exists only in builds with debug assertions");
        return None;
    }
    let dir = tempdir();
    let d = dir.path();
    let mut eg = start(d, prefix, &format!("{fault}:{ALL}"));
    eg.wait_for_path(&d.join("prot.sock"));
    eg.wait_for_path(&d.join("control.sock"));
    let mut guest = Peer::start(
        d,
        &format!("{prefix}-peer"),
        &[virtio_user(0, &d.join("prot.sock"))],
        &[],
    );
    let mut c = Client::connect(d.join("control.sock"), "prot").expect("hello");
    assert_eq!(c.welcome().mode, Mode::Protected);
    let mut seq = 0;
    for (i, (epoch, &n)) in (c.welcome().epoch..).zip(&EPOCHS).enumerate() {
        guest.send(0, &frames(seq..seq + n));
        seq += n;
        if i == EPOCHS.len() - 1 {
            break; // epoch 4 stays open: the worker fails holding it
        }
        assert_eq!(c.fence(epoch).expect("fence").frames, u64::from(n));
        if i < 2 {
            assert_eq!(c.commit(epoch).expect("commit"), u64::from(n));
            // On the wire before anything later is sent.
            let start = Instant::now();
            while prot_now(d).tx_frames < u64::from(seq) {
                assert!(start.elapsed() < DEADLINE, "epoch {epoch} never left");
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
    }

    // The worker fails now: the session is told why (events that came before are skipped).
    let told = loop {
        match c.next_event(Some(DEADLINE)) {
            Ok(Some(_request)) => continue,
            Ok(None) => panic!("the session was told nothing\n{}", eg.logs()),
            Err(ShimError::Refused { code, text }) => break (code, text),
            Err(e) => panic!("the session ended without a reason: {e}\n{}", eg.logs()),
        }
    };
    let start = Instant::now();
    let status = loop {
        if let Some(s) = eg.child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "epochgate did not exit after its worker failed\n{}",
            eg.logs()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    drop(guest);
    let stderr = std::fs::read_to_string(d.join("epochgate.err")).unwrap_or_default();
    let stats = eg.stats().expect("final stats file");
    Some(Failed {
        status,
        stderr,
        told,
        egress: read_pcap(&d.join("egress.pcap")),
        stats,
    })
}

/// What must hold whichever way the worker failed: `reason` is what stderr and the session say.
fn assert_failed_closed(f: &Failed, reason: &str) {
    let what = format!("stderr:\n{}\nfinal stats: {}", f.stderr, f.stats);
    assert!(!f.status.success(), "exit status {}; {what}", f.status);
    assert_eq!(f.status.code(), Some(1), "{what}");
    // The worker is lcore 1 (eal.lcores = "0-1": lcore 0 is the main one).
    let named = format!("worker lcore 1 failed: {reason}");
    let last = f.stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("epochgate: ") && last.contains(&named),
        "the last line of stderr must name the worker and why ({named:?}); {what}"
    );
    assert!(
        last.contains("stopped without sending anything it held"),
        "{what}"
    );

    let (code, text) = &f.told;
    assert_eq!(*code, ErrorCode::ShuttingDown, "{text}");
    assert!(text.contains(&named), "the session was told {text:?}");
    assert!(text.contains("nothing it held was sent"), "{text}");

    // Exactly epochs 1 and 2, in order: no frame of the sealed or the open epoch left.
    let committed = frames(0..COMMITTED);
    let foreign: Vec<_> = f
        .egress
        .iter()
        .filter_map(|x| gen::stamp(x))
        .filter(|&(_, seq)| seq >= COMMITTED)
        .collect();
    assert!(
        foreign.is_empty(),
        "uncommitted frames left: {foreign:?}; {what}"
    );
    assert_eq!(
        f.egress, committed,
        "the egress must carry exactly the committed epochs, in order"
    );

    // The final counters balance: what the worker still had is counted, never sent.
    assert_balanced(&f.stats);
    let v = vm(&f.stats, "prot");
    assert_eq!(u(v, "rx_frames"), u64::from(ALL), "{v}");
    assert_eq!(u(v, "tx_frames"), u64::from(COMMITTED), "{v}");
    assert_eq!(u(v, "epochs_committed"), 2, "{v}");
    assert_eq!(
        dropped(v, "worker-failed"),
        u64::from(ALL - COMMITTED),
        "{v}"
    );
    assert_eq!(u(v, "held_frames"), 0, "{v}");
    let eg = port(&f.stats, "egress", 0);
    assert_eq!(u(eg, "tx_frames"), u64::from(COMMITTED), "{eg}");
    assert!(
        f.stderr.contains(&format!(
            "{} frame(s) it had not sent were discarded",
            ALL - COMMITTED
        )),
        "{what}"
    );
}

#[test]
fn a_panicking_worker_sends_nothing_it_held_and_the_process_fails() {
    let _g = serial();
    let Some(f) = run_until_the_worker_fails("eg-fc-panic", "worker-panic-after-frames") else {
        return;
    };
    assert_failed_closed(
        &f,
        "panicked: fault hook EPOCHGATE_FAULT: injected worker panic",
    );
}

#[test]
fn a_worker_loop_that_returns_by_itself_fails_closed_too() {
    let _g = serial();
    let Some(f) = run_until_the_worker_fails("eg-fc-return", "worker-return-after-frames") else {
        return;
    };
    assert_failed_closed(&f, "its poll loop returned (-1) before it was told to stop");
}
