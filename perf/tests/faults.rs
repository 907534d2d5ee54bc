//! A short seeded fault campaign against the real process (`epochgate-perf faults`): the suite's
//! share of issue 13's campaigns. It must find zero violations, and it must really have done
//! what a campaign is for: restarts of epochgate, frames checked on the uplink. The checker's
//! own rules (an uncommitted or discarded frame on egress is a violation, order, duplicates,
//! missing committed frames) are unit-tested in `perf/src/faults/model.rs`.

use std::path::PathBuf;
use std::process::Command;

fn perf() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_epochgate-perf"))
}

#[test]
fn a_seeded_campaign_of_kills_restarts_and_hostile_messages_leaks_nothing() {
    let out = tempfile::tempdir().expect("tempdir");
    let (runs, ops) = (4u64, 50u64);
    let o = Command::new(perf())
        .args([
            "faults",
            "--seed",
            "1",
            "--runs",
            &runs.to_string(),
            "--ops",
            &ops.to_string(),
        ])
        .arg("--out")
        .arg(out.path())
        .arg("--epochgate")
        .arg(perf().with_file_name("epochgate"))
        .output()
        .expect("running epochgate-perf faults");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let md = std::fs::read_to_string(out.path().join("faults.md")).unwrap_or_default();
    assert!(o.status.success(), "the campaign failed:\n{text}\n{md}");
    let j: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("faults.json")).expect("faults.json"),
    )
    .expect("faults.json is JSON");
    assert_eq!(j["runs"], runs, "{j}");
    assert_eq!(j["operations"], runs * ops, "{j}");
    assert_eq!(j["failed_runs"], 0, "{j}");
    assert_eq!(j["violations"].as_array().map(Vec::len), Some(0), "{j}");
    // Seed 1 kills or stops epochgate mid-run several times: more processes than runs.
    assert!(j["epochgate_processes"].as_u64() > Some(runs), "{j}");
    assert!(j["frames_checked_on_egress"].as_u64() > Some(0), "{j}");
    for kind in ["Send", "Fence", "Commit", "KillShim", "Hostile"] {
        assert!(
            j["operations_by_kind"][kind].as_u64() > Some(0),
            "no {kind}: {j}"
        );
    }
    // The suite prints what the campaign did (scripts/test.sh shows this file at the end).
    let line = text
        .lines()
        .find(|l| l.starts_with("faults: ") && l.contains("operations"))
        .expect("a summary line");
    let summary = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("faults-summary.txt");
    std::fs::write(&summary, format!("{line}\n")).expect("write the summary");
    eprintln!("{line}");
}
