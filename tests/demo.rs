//! The README's first command runs `epochgate demo`: it must work on any machine (hugepages or
//! not), end by itself, and show what it promises: the pass-through VMs' frames all left in
//! order, the protected VM's left only as its stand-in VMM committed epochs, the stray sender was
//! dropped and counted.

mod common;
use common::*;
use std::process::Command;

#[test]
fn the_demo_runs_ends_by_itself_and_reports_what_left() {
    let _g = serial();
    let dir = tempdir();
    let out_dir = dir.path().join("demo");
    let out = Command::new(EPOCHGATE)
        .args(["demo", "--duration", "1.5", "--out"])
        .arg(&out_dir)
        .output()
        .expect("run epochgate demo");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("-- epochgate at"),
        "no live counters on screen:\n{text}"
    );
    assert!(
        text.contains("web     (passthrough, own port): 20000 of 20000 frames, in order"),
        "{text}"
    );
    assert!(
        text.contains("db      (passthrough, shared ingress): 20000 of 20000 frames, in order"),
        "{text}"
    );
    // The demo's VMM commits every 25 ms or so: in 1.5 s every frame of ledger is committed.
    assert!(
        text.contains("ledger  (protected, shared ingress): 20000 of 20000 frames, in order"),
        "{text}"
    );
    assert!(
        text.contains("epochs committed by the VMM (20000 frames)"),
        "{text}"
    );
    assert!(!text.contains("stopped early"), "{text}");
    assert!(
        text.contains(&format!(
            "output in {}",
            out_dir.canonicalize().unwrap().display()
        )),
        "{text}"
    );

    // The files it names exist, and the counters it saved add up.
    let egress = read_pcap(&out_dir.join("egress.pcap"));
    assert_eq!(egress.len(), 60_000);
    let stats: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("stats.json")).unwrap())
            .unwrap();
    assert_balanced(&stats);
    let ledger = vm(&stats, "ledger");
    assert!(u(ledger, "epochs_committed") > 1, "{ledger}");
    assert_eq!(u(ledger, "tx_frames"), 20_000, "{ledger}");
    // The meter: one hold time per frame sent, one drain time per fence, commit-to-wire times.
    for name in ["web", "db", "ledger"] {
        let v = vm(&stats, name);
        assert_eq!(u(&v["hold_time"], "count"), u(v, "tx_frames"), "{v}");
    }
    assert_eq!(
        u(&ledger["fence_drain"], "count"),
        u(ledger, "epochs_sealed"),
        "{ledger}"
    );
    assert!(u(&ledger["commit_to_wire"], "count") >= 1, "{ledger}");
    assert!(
        text.contains("web     hold time (arrival to transmit): count 20000"),
        "{text}"
    );
    assert_eq!(
        dropped(port(&stats, "ingress", 0), "unknown-source-mac"),
        500
    );
    assert!(
        !read_pcap(&out_dir.join("web-in.pcap")).is_empty(),
        "inbound traffic reached web"
    );
}
