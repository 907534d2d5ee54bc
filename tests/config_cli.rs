//! `epochgate check-config` and `epochgate run` on good and bad configuration files: every
//! example in config/ is valid; every mistake is refused before EAL starts, naming the key and why.

mod common;
use common::*;
use std::process::Command;

fn check(text: &str) -> (bool, String) {
    let dir = tempdir();
    let f = dir.path().join("c.toml");
    std::fs::write(&f, text).unwrap();
    let out = Command::new(EPOCHGATE)
        .arg("check-config")
        .arg(&f)
        .output()
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), all)
}

const GOOD: &str = r#"
[egress]
port = "net_pcap0,tx_pcap=/tmp/out.pcap"
[ingress]
port = "net_pcap1,rx_pcap=/tmp/in.pcap"
[[vm]]
name = "a"
mac = "52:54:00:00:00:01"
[[vm]]
name = "b"
port = "net_vhost0,iface=/tmp/b.sock"
"#;

#[test]
fn every_example_config_is_valid_and_prints_its_topology() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/config");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let out = Command::new(EPOCHGATE)
                .arg("check-config")
                .arg(&path)
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(text.contains("EAL:") && text.contains("egress:"), "{text}");
            n += 1;
        }
    }
    assert!(
        n >= 3,
        "config/ should hold the demo, QEMU and physical NIC examples"
    );
}

#[test]
fn the_resolved_topology_shows_eal_arguments_and_each_vm() {
    let (ok, out) = check(GOOD);
    assert!(ok, "{out}");
    assert!(
        out.contains("--no-pci"),
        "only vdevs: EAL must not probe PCI\n{out}"
    );
    assert!(out.contains("--vdev net_vhost0,iface=/tmp/b.sock"), "{out}");
    assert!(
        out.contains("vm \"a\"") && out.contains("52:54:00:00:00:01"),
        "{out}"
    );
    assert!(out.contains("learned from its first frame"), "{out}");
}

#[test]
fn mistakes_are_refused_naming_the_key_and_why() {
    let cases: &[(&str, String, &[&str])] = &[
        (
            "missing egress",
            GOOD.replace("[egress]\nport = \"net_pcap0,tx_pcap=/tmp/out.pcap\"\n", ""),
            &["egress"],
        ),
        (
            "duplicate VM name",
            GOOD.replace("name = \"b\"", "name = \"a\""),
            &["vm[1]", "name", "duplicate"],
        ),
        (
            "duplicate MAC",
            format!("{GOOD}[[vm]]\nname = \"c\"\nmac = \"52:54:00:00:00:01\"\n"),
            &["vm[2]", "mac", "duplicate"],
        ),
        (
            "unknown mode",
            format!("{GOOD}mode = \"protectd\"\n"),
            &["vm[1]", "mode", "protectd"],
        ),
        (
            "malformed MAC",
            GOOD.replace("52:54:00:00:00:01", "52:54:00:zz:00:01"),
            &["vm[0]", "mac", "not a MAC"],
        ),
        (
            "VM with neither port nor shared-ingress MAC",
            format!("{GOOD}[[vm]]\nname = \"c\"\n"),
            &["vm[2]", "port", "mac"],
        ),
        (
            "MAC VM without a shared ingress",
            GOOD.replace("[ingress]\nport = \"net_pcap1,rx_pcap=/tmp/in.pcap\"\n", ""),
            &["vm[0]", "ingress"],
        ),
        (
            "typo in a key",
            GOOD.replace("[[vm]]\nname = \"a\"", "[[vm]]\nnmae = \"a\""),
            &["nmae"],
        ),
        (
            "unknown section key",
            format!("[eal]\nlcore = \"0-1\"\n{GOOD}"),
            &["lcore"],
        ),
        (
            "bad port",
            GOOD.replace("net_pcap0,tx_pcap=/tmp/out.pcap", "eth0"),
            &["egress.port", "eth0"],
        ),
        (
            "same device twice",
            GOOD.replace("net_pcap1", "net_pcap0"),
            &["net_pcap0"],
        ),
        (
            "vlan out of range",
            format!("{GOOD}[[vm]]\nname = \"c\"\nmac = \"52:54:00:00:00:09\"\nvlan = 5000\n"),
            &["vm[2]", "vlan"],
        ),
        (
            "no VMs",
            "[egress]\nport = \"net_null0\"\n".to_string(),
            &["vm"],
        ),
    ];
    for (what, text, needles) in cases {
        let (ok, out) = check(text);
        assert!(!ok, "{what}: accepted\n{text}");
        for n in *needles {
            assert!(
                out.contains(n),
                "{what}: error does not mention {n:?}: {out}"
            );
        }
        assert!(
            !out.contains("EAL: Detected"),
            "{what}: EAL must not start on a bad config: {out}"
        );
    }
}

#[test]
fn run_refuses_a_bad_config_before_eal_starts() {
    let dir = tempdir();
    let f = dir.path().join("bad.toml");
    std::fs::write(&f, GOOD.replace("name = \"b\"", "name = \"a\"")).unwrap();
    let out = Command::new(EPOCHGATE)
        .args(["run", "--config"])
        .arg(&f)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("vm[1]") && err.contains("duplicate"), "{err}");
    assert!(!err.contains("EAL: Detected"), "{err}");
}

#[test]
fn the_topology_shows_the_egress_share_and_each_vms_limits_and_rate() {
    let text = format!(
        "{}max_held_frames = 2048\nmax_held_bytes = 1048576\nhigh_water = 0.5\nrate_mbps = 50\nrate_pps = 10000\n",
        GOOD.replace(
            "port = \"net_pcap0,tx_pcap=/tmp/out.pcap\"\n",
            "port = \"net_pcap0,tx_pcap=/tmp/out.pcap\"\npassthrough_min_share = 0.2\n",
        )
    );
    let (ok, out) = check(&text);
    assert!(ok, "{out}");
    for want in [
        "egress:    net_pcap0,tx_pcap=/tmp/out.pcap (vdev net_pcap0), pass-through min share 20% (while released frames wait)\n",
        // "a" is on the shared ingress and sets nothing: the defaults, and drop when full.
        "vm \"a\": passthrough, shared ingress, mac 52:54:00:00:00:01\n  \
         buffer:  at most 8192 frames and 12435456 bytes, high water 6144 frames or 9326592 bytes, when full: drop\n  \
         budget:  8192 frames / 11.9 MiB = 100.8 ms at 1 Gb/s of 1500-byte frames (no rate limit); frames: the pool's share, bytes: 1518 per frame\n  \
         rate:    unlimited\n",
        // "b" has its own port: backpressure; its rate's bursts are 1 ms of it. Its byte limit
        // binds first: 692 frames of 1514 bytes, at 50 Mbit/s (4128 of them a second).
        "  buffer:  at most 2048 frames and 1048576 bytes, high water 1024 frames or 524288 bytes, when full: backpressure\n  \
         budget:  2048 frames / 1.0 MiB = 167.6 ms (the byte limit holds 692 1500-byte frames) at its rate limit 50 Mbit/s and 10000 pps (of 1500-byte frames); frames: max_held_frames, bytes: max_held_bytes\n  \
         rate:    50 Mbit/s (burst 6250 bytes), 10000 pps (burst 10 frames)\n",
    ] {
        assert!(out.contains(want), "missing {want:?} in\n{out}");
    }
}

#[test]
fn check_config_shows_each_vms_hold_budget_and_warns_when_the_pool_is_short() {
    // The defaults, without hugepages: 512 MB hold (512 - 16) x 256 = 126976 mbufs; the rings of
    // 3 ports and the caches of 2 lcores take 3 x 2048 + 2 x 384 + 32 = 6944; each VM gets the
    // cap, 8192 frames: two 25 ms epochs at 1 Gb/s need 4064.
    let text = "[eal]\nhugepages = false\n[egress]\nport = \"net_pcap0,tx_pcap=/tmp/out.pcap\"\n\
                [[vm]]\nname = \"web\"\nport = \"net_vhost0,iface=/tmp/web.sock\"\nmode = \"protected\"\n\
                [[vm]]\nname = \"batch\"\nport = \"net_vhost1,iface=/tmp/batch.sock\"\nrate_mbps = 500\n";
    let (ok, out) = check(text);
    assert!(ok, "{out}");
    for want in [
        "vm \"web\": protected, port net_vhost0,iface=/tmp/web.sock (vdev net_vhost0), mac learned from its first frame\n  \
         buffer:  at most 8192 frames and 12435456 bytes, high water 6144 frames or 9326592 bytes, when full: backpressure\n  \
         budget:  8192 frames / 11.9 MiB = 100.8 ms at 1 Gb/s of 1500-byte frames (no rate limit); frames: the pool's share, bytes: 1518 per frame\n",
        // At its own rate: 500 Mbit/s is 41 282 frames/s of 1514 bytes.
        "  budget:  8192 frames / 11.9 MiB = 198.4 ms at its rate limit 500 Mbit/s (of 1500-byte frames); frames: the pool's share, bytes: 1518 per frame\n",
        "dataplane: 126976 mbufs (cache 256), rx ring 1024, tx ring 1024, vm queue 8192 frames (the pool's share, at most 8192), stats every 1000 ms\n",
        "pool:      126976 mbufs (from eal.memory_mb = 512; 4096 bytes each without hugepages, 16 MB more for EAL): 6944 for 3 port(s)' rings and 2 lcores' caches, 16384 for 2 VM(s)' hold budgets, 103648 spare\n",
    ] {
        assert!(out.contains(want), "missing {want:?} in\n{out}");
    }
    assert!(!out.contains("warning:"), "{out}");

    // Written budgets beyond the pool: accepted, with a warning naming the keys and numbers.
    let text = format!(
        "[dataplane]\nmbufs = 16383\nvm_queue = 4000\n{}",
        text.replace(
            "mode = \"protected\"\n",
            "mode = \"protected\"\nmax_held_frames = 8000\n"
        )
    );
    let (ok, out) = check(&text);
    assert!(ok, "{out}");
    for want in [
        "  budget:  8000 frames / 11.6 MiB = 98.4 ms at 1 Gb/s of 1500-byte frames (no rate limit); frames: max_held_frames, bytes: 1518 per frame\n",
        "  budget:  4000 frames / 5.8 MiB = 96.9 ms at its rate limit 500 Mbit/s (of 1500-byte frames); frames: dataplane.vm_queue, bytes: 1518 per frame\n",
        "pool:      16383 mbufs (dataplane.mbufs; 4096 bytes each without hugepages, 16 MB more for EAL): 6944 for 3 port(s)' rings and 2 lcores' caches, 12000 for 2 VM(s)' hold budgets, 2561 more than the pool has (see the warning)\n",
        // 16383 - 6944 = 9439 left for 8000 + 4000.
        "warning:   dataplane.mbufs: the VMs' hold budgets add up to 12000 frames (dataplane.vm_queue = 4000 for 1 VM(s) (vm[1] (\"batch\")) + vm[0] (\"web\").max_held_frames = 8000), more than the 9439 mbufs the pool (dataplane.mbufs = 16383) has left after the rings and caches take 6944: if they all fill, the ports run out of mbufs and drop what they receive, even for VMs on backpressure; lower them, or raise dataplane.mbufs to 18944 (eal.memory_mb to at least 90 without hugepages)\n",
    ] {
        assert!(out.contains(want), "missing {want:?} in\n{out}");
    }
}

#[test]
fn a_bad_limit_key_exits_1_with_its_message() {
    let cases: &[(String, &str)] = &[
        (
            format!("{GOOD}[[vm]]\nname = \"c\"\nmac = \"52:54:00:00:00:09\"\non_full = \"backpressure\"\n"),
            "vm[2] (\"c\").on_full: backpressure stops reading the VM's port, and on the shared ingress that would stall every VM on it; use \"drop\"",
        ),
        (
            format!("[classifier]\nhigh_water_frames = 512\n{GOOD}"),
            "classifier.high_water_frames: replaced by [[vm]] high_water (a fraction of max_held_frames / max_held_bytes)",
        ),
        (
            GOOD.replace(
                "port = \"net_pcap1,rx_pcap=/tmp/in.pcap\"\n",
                "port = \"net_pcap1,rx_pcap=/tmp/in.pcap\"\npassthrough_min_share = 0.2\n",
            ),
            "ingress.passthrough_min_share: is an [egress] key",
        ),
        (
            format!("{GOOD}rate_pps = 1000\nburst = 3000\n"),
            "vm[1] (\"b\").burst: needs rate_mbps: burst is the depth of the byte bucket that rate_mbps fills (the depth of rate_pps's bucket is burst_frames)",
        ),
    ];
    for (text, want) in cases {
        let dir = tempdir();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, text).unwrap();
        let out = Command::new(EPOCHGATE)
            .arg("check-config")
            .arg(&f)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{want}: {err}");
        assert!(err.contains(want), "{err:?} does not contain {want:?}");
        assert!(
            out.stdout.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

/// Issue 10: ports sharing one device, and limits that EAL used to report only at run time
/// ("cannot create 4000000 mbufs", "rx queue setup failed", "no such device", NoWorker), are
/// refused by check-config with the key and the reason.
#[test]
fn shared_devices_and_run_time_limits_are_refused_by_check_config() {
    const E: &str = "[egress]\nport = \"net_pcap0,tx_pcap=/tmp/out.pcap\"\n";
    const V: &str = "[[vm]]\nname = \"a\"\nport = \"net_null0\"\n";
    const SHARED: &str =
        "two ports on one device would let one VM's output leave through the other";
    let cases: Vec<(String, String)> = vec![
        (
            format!("{E}[[vm]]\nname = \"prot\"\nport = \"net_tap1,iface=X\"\nmode = \"protected\"\n[[vm]]\nname = \"pt\"\nport = \"net_tap2,iface=X\"\n"),
            format!("vm[1] (\"pt\").port: interface \"X\" is already used by vm[0] (\"prot\").port (net_tap1): {SHARED}"),
        ),
        (
            format!("{E}[[vm]]\nname = \"a\"\nport = \"net_vhost0,iface=/tmp/a.sock\"\n[[vm]]\nname = \"b\"\nport = \"net_vhost1,iface=/tmp//a.sock\"\n"),
            format!("vm[1] (\"b\").port: socket \"/tmp//a.sock\" is already used by vm[0] (\"a\").port (net_vhost0, as \"/tmp/a.sock\"): {SHARED}"),
        ),
        (
            format!("{E}[[vm]]\nname = \"a\"\nport = \"net_tap0,iface=a,iface=b\"\n"),
            "vm[0] (\"a\").port: \"net_tap0,iface=a,iface=b\" is not a valid vdev spec: parameter \"iface\" is given twice".to_string(),
        ),
        (
            format!("{E}[[vm]]\nname = \"a\"\nport = \"net_pcap1,rx_pcap=/tmp/out.pcap\"\n"),
            format!("vm[0] (\"a\").port: file \"/tmp/out.pcap\" is already used by egress.port (net_pcap0): {SHARED}"),
        ),
        (
            format!("[eal]\nlcores = \"0\"\n{E}{V}"),
            "eal.lcores: \"0\" is one lcore: epochgate needs at least two".to_string(),
        ),
        (
            format!("[dataplane]\nmbufs = 4000000\n{E}{V}"),
            "dataplane.mbufs: 4000000 mbufs do not fit in eal.memory_mb = 512".to_string(),
        ),
        (
            format!("[dataplane]\nmbufs = 1023\nrx_ring = 4096\nvm_queue = 512\n{E}{V}"),
            "dataplane.mbufs: 1023 cannot fill the rings: 2 port(s) x (dataplane.rx_ring 4096 + dataplane.tx_ring 1024)".to_string(),
        ),
        (
            format!("{E}[[vm]]\nname = \"a\"\nport = \"net_af_packet0,iface=a-very-long-name0\"\n"),
            "vm[0] (\"a\").port: \"net_af_packet0,iface=a-very-long-name0\" is not a valid vdev spec: iface=\"a-very-long-name0\" is 17 characters long: Linux interface names have at most 15".to_string(),
        ),
        (
            format!("[eal]\nfile_prefix = \"{}\"\n{E}{V}", "p".repeat(300)),
            "eal.file_prefix: is 300 characters long (at most 64): EAL binds the unix socket".to_string(),
        ),
        (
            format!("{E}[[vm]]\nname = \"a\"\nport = \"net_null0\"\nmac = \"52:54:00:00:00:01\"\nmode = \"standby\"\nannounce = [\"10.0.0.1\"]\n[[vm]]\nname = \"b\"\nport = \"net_null1\"\nmac = \"52:54:00:00:00:02\"\nmode = \"standby\"\nannounce = [\"10.0.0.1\"]\n"),
            "vm[1] (\"b\").announce[0]: 10.0.0.1 is also vm[0] (\"a\").announce[0]".to_string(),
        ),
    ];
    for (text, want) in &cases {
        let (ok, out) = check(text);
        assert!(!ok, "accepted\n{text}");
        assert!(
            out.contains(want.as_str()),
            "{out:?} does not contain {want:?}"
        );
        assert!(!out.contains("EAL: Detected"), "EAL started: {out}");
    }
}

/// One device reached two ways is still one device: a symlinked or hard-linked capture file, a
/// bond whose member is another VM's port, pcap's "any" interface beside a tap, a tap's remote=.
#[test]
fn one_device_spelled_two_ways_is_refused() {
    let dir = tempdir();
    let d = dir.path();
    std::fs::create_dir(d.join("real")).unwrap();
    std::fs::write(d.join("real/a.pcap"), b"").unwrap();
    std::os::unix::fs::symlink(d.join("real"), d.join("link")).unwrap();
    std::fs::hard_link(d.join("real/a.pcap"), d.join("real/hard.pcap")).unwrap();
    let cfg = |a: &str, b: &str| {
        format!(
            "[egress]\nport = \"net_pcap0,tx_pcap={d}/out.pcap\"\n\
             [[vm]]\nname = \"v0\"\nport = \"{a}\"\nmode = \"protected\"\n\
             [[vm]]\nname = \"v1\"\nport = \"{b}\"\n",
            d = d.display()
        )
    };
    let p = |rel: &str| d.join(rel).display().to_string();
    for (a, b) in [
        (
            format!("net_pcap1,rx_pcap={}", p("real/a.pcap")),
            format!("net_pcap2,rx_pcap={}", p("link/a.pcap")),
        ),
        (
            format!("net_pcap1,rx_pcap={}", p("real/a.pcap")),
            format!("net_pcap2,rx_pcap={}", p("real/hard.pcap")),
        ),
        (
            "net_tap1,iface=rvb0".to_string(),
            "net_bonding0,mode=0,slave=net_tap1".to_string(),
        ),
        (
            "net_tap1,iface=rvz".to_string(),
            "net_pcap2,rx_iface=any".to_string(),
        ),
        (
            "net_tap1,iface=rvz".to_string(),
            "net_tap2,iface=rvy,remote=rvz".to_string(),
        ),
    ] {
        let (ok, out) = check(&cfg(&a, &b));
        assert!(!ok, "accepted {a} beside {b}\n{out}");
        assert!(
            out.contains("vm[1] (\"v1\").port") && out.contains("vm[0] (\"v0\").port"),
            "{a} / {b}: {out}"
        );
    }
}
