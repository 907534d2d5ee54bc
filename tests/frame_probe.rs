//! The C ABI's frame probe (`vmm-shim/examples/c/frame_probe.c`) against a real epochgate: a
//! guest's frame sent into a protected VM's tap port makes epochgate ask for a checkpoint, the
//! fence holds it, and it reaches the egress tap only after the commit. The probe checks the
//! last part from outside, on the wire; the second test shows that check failing where output
//! bypasses the hold. Root only (tap and veth interfaces, AF_PACKET); nothing leaves the
//! machine: the interfaces are not bridged or routed anywhere.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");

/// `libvmm_shim.a` of this workspace, built now (the profile directory above the test
/// binaries' `deps`).
fn shim_lib() -> PathBuf {
    let ok = Command::new(env!("CARGO"))
        .args(["build", "-p", "vmm-shim", "--lib"])
        .status()
        .expect("cargo build")
        .success();
    assert!(ok, "cannot build libvmm_shim.a");
    shim_path().with_file_name("libvmm_shim.a")
}

fn root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("skipped: tap and veth interfaces and AF_PACKET need root");
    false
}

/// The probe's line `what n=N p50=.. p90=.. p99=.. max=..`: its sample count and p50.
fn line(out: &str, what: &str) -> (u64, f64) {
    let l = out
        .lines()
        .find(|l| l.starts_with(&format!("{what} ")))
        .unwrap_or_else(|| panic!("no {what} line in:\n{out}"));
    let field = |k: &str| {
        l.split_whitespace()
            .find_map(|f| f.strip_prefix(k))
            .unwrap_or_else(|| panic!("no {k} in {l}"))
            .to_string()
    };
    let n = field("n=").parse().expect("n");
    let p50 = field("p50=").parse().expect("p50");
    (n, p50)
}

#[test]
fn a_guests_frame_asks_for_a_checkpoint_and_leaves_only_after_its_commit() {
    if !root() {
        return;
    }
    let _g = serial();
    let lib = shim_lib();
    const N: u64 = 50;
    let out = Command::new(Path::new(MANIFEST_DIR).join("scripts/measure-frame-path.sh"))
        .arg(N.to_string())
        .env("EPOCHGATE", EPOCHGATE)
        .env("SHIM_LIB", &lib)
        .output()
        .expect("run measure-frame-path.sh");
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    println!("{stdout}");
    for what in ["request_us", "commit_first_us", "commit_us"] {
        let (n, p50) = line(&stdout, what);
        assert_eq!(n, N, "{what}: every frame is timed once");
        assert!(p50 > 0.0, "{what}: {p50}");
    }
}

#[test]
fn the_probe_catches_output_that_bypasses_the_hold_and_refuses_bad_arguments() {
    if !root() {
        return;
    }
    let _g = serial();
    let dir = tempdir();
    let d = dir.path();
    let exe = d.join("frame_probe");
    let cc = Command::new("cc")
        .args(["-O2", "-std=c11", "-Wall", "-Wextra", "-Werror", "-I"])
        .arg(Path::new(MANIFEST_DIR).join("vmm-shim/include"))
        .arg(Path::new(MANIFEST_DIR).join("vmm-shim/examples/c/frame_probe.c"))
        .arg(shim_lib())
        .args(["-lpthread", "-ldl", "-lm", "-o"])
        .arg(&exe)
        .output()
        .expect("run cc");
    assert!(cc.status.success(), "{}", text(&cc.stderr));
    for args in [&["s", "vm", "5", "in"][..], &["s", "vm", "0", "in", "out"]] {
        let out = Command::new(&exe).args(args).output().expect("run");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = text(&out.stderr);
        assert!(err.contains("usage:") || err.contains("N must be"), "{err}");
    }
    // A wire the VM's frames cross with no epochgate in the way: what the probe sends into
    // one veth end is received on the other, where epochgate also reads it (so it still asks
    // for the checkpoint and the fence holds a copy). The probe watches that far end as the
    // egress: the frame is there before any commit.
    let id = std::process::id() % 100_000;
    let (a, b) = (format!("egva{id}"), format!("egvb{id}"));
    sh(
        "ip",
        &["link", "add", &a, "type", "veth", "peer", "name", &b],
    );
    let _del = DeleteLink(a.clone());
    for i in [&a, &b] {
        std::fs::write(format!("/proc/sys/net/ipv6/conf/{i}/disable_ipv6"), "1")
            .expect("disable IPv6");
        sh("ip", &["link", "set", i, "up"]);
    }
    let cfg = format!(
        "{}[egress]\nport = \"net_null0,no-rx=1\"\n\n\
         [[vm]]\nname = \"leaky\"\nport = \"net_af_packet0,iface={b}\"\nmode = \"protected\"\n",
        eal_and_control(d, "eg-leaky")
    );
    let mut eg = Running::start(d, &cfg);
    eg.wait_for_path(&d.join("control.sock"));
    let out = Command::new(&exe)
        .arg(d.join("control.sock"))
        .args(["leaky", "5", &a, &b])
        .output()
        .expect("run frame_probe");
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("OUTPUT COMMIT VIOLATION: frame 0 was on"),
        "{stderr}"
    );
    eg.stop();
}
