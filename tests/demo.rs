//! The README's first command runs `epochgate demo`: it must work on any machine (hugepages or
//! not), end by itself, and show what it promises: the pass-through VMs' frames all left in
//! order, the protected VM's never did, the stray sender was dropped and counted.

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
    assert!(
        text.contains("ledger  (protected, shared ingress): 0 of 20000 frames"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "output in {}",
            out_dir.canonicalize().unwrap().display()
        )),
        "{text}"
    );

    // The files it names exist, and the counters it saved add up.
    let egress = read_pcap(&out_dir.join("egress.pcap"));
    assert_eq!(egress.len(), 40_000);
    let stats: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("stats.json")).unwrap())
            .unwrap();
    assert_balanced(&stats);
    assert_eq!(
        dropped(port(&stats, "ingress", 0), "unknown-source-mac"),
        500
    );
    assert!(
        !read_pcap(&out_dir.join("web-in.pcap")).is_empty(),
        "inbound traffic reached web"
    );
}
