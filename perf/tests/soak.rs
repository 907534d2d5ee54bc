//! `epochgate-perf soak`, briefly: the report and its samples exist, every frame was checked
//! without a violation, and epochgate's counters balance. (Flatness over 15 s says little: a
//! run that fails only on it must say so, nothing else is asserted about it.)

use std::path::PathBuf;
use std::process::Command;

fn perf() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_epochgate-perf"))
}

#[test]
fn a_short_soak_samples_memory_and_finds_nothing_wrong() {
    let epochgate = perf().with_file_name("epochgate");
    assert!(
        epochgate.exists(),
        "{} is missing: build the workspace (cargo build --workspace) first",
        epochgate.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let o = Command::new(perf())
        .args([
            "soak",
            "--minutes",
            "0.25",
            "--vms",
            "2",
            "--protected",
            "1",
            "--rate-pps",
            "5000",
        ])
        .arg("--out")
        .arg(dir.path())
        .arg("--epochgate")
        .arg(&epochgate)
        .output()
        .expect("running epochgate-perf soak");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("soak.json"))
            .unwrap_or_else(|e| panic!("no soak.json ({e}):\n{text}")),
    )
    .expect("soak.json is JSON");
    assert_eq!(report["violations"].as_u64(), Some(0), "{text}");
    assert!(report["checked"].as_u64().unwrap_or(0) > 0, "{text}");
    assert_eq!(report["balance_ok"], true, "{text}");
    let samples = report["samples"].as_array().expect("samples");
    assert!(samples.len() >= 5, "{} samples:\n{text}", samples.len());
    for s in samples {
        assert!(s["rss_kib"].as_u64().unwrap_or(0) > 0, "{s}");
        let (used, avail, size) = (
            s["mbufs_in_use"].as_u64().unwrap(),
            s["mbufs_available"].as_u64().unwrap(),
            s["mbufs_size"].as_u64().unwrap(),
        );
        assert!(size > 0 && used + avail == size, "{s}");
    }
    assert!(
        samples.iter().any(|s| s["held_total"].as_u64() > Some(0)),
        "the protected VM never held a frame:\n{text}"
    );
    match o.status.code() {
        Some(0) => assert_eq!(report["pass"], true),
        Some(1) => assert_eq!(
            report["flat"], false,
            "failed, but not on flatness:\n{text}"
        ),
        c => panic!("epochgate-perf soak exited {c:?}:\n{text}"),
    }
    let csv = std::fs::read_to_string(dir.path().join("soak.csv")).expect("soak.csv");
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some(
            "t_s,rss_kib,hwm_kib,mbufs_in_use,mbufs_available,mbufs_size,held_total,\
             held_prot0,held_pass1,sent,received,checkpoints,checked,violations,balanced"
        )
    );
    assert_eq!(lines.count(), samples.len());
    for f in ["soak.md", "soak.svg"] {
        assert!(dir.path().join(f).exists(), "{f} missing");
    }
    let md = std::fs::read_to_string(dir.path().join("soak.md")).unwrap();
    assert!(md.contains("Flatness rule"), "{md}");
}
