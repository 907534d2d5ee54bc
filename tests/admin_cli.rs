//! `epochgate stats` and `epochgate vms` against a real running epochgate: a pass-through VM fed
//! from a generated capture on a pcap port, read back through `control.admin_socket` as an
//! operator would (by config file or by socket path, as JSON or text). A socket nobody serves is
//! a clear error with exit status 1; a peer that is not allowed is told so.

mod common;
use common::*;
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn epochgate(args: &[&str], paths: &[&Path]) -> Output {
    Command::new(EPOCHGATE)
        .args(args)
        .args(paths)
        .output()
        .expect("run epochgate")
}

#[test]
fn stats_and_vms_read_a_running_epochgate() {
    let _g = serial();
    let dir = tempdir();
    let d = dir.path();
    let frames = guest_frames(1, 1200);
    let n = frames.len() as u64;
    let input = d.join("web.pcap");
    write_pcap(&input, &frames);
    let empty = d.join("empty.pcap");
    write_pcap(&empty, &[]);
    // 0666 so that the refused-peer check below reaches the credentials check.
    let cfg = format!(
        "{}socket_mode = \"0666\"\n\n\
         [egress]\nport = \"net_pcap0,rx_pcap={e},tx_pcap={d}/egress.pcap\"\n\n\
         [[vm]]\nname = \"web\"\nport = \"net_pcap1,rx_pcap={i},tx_pcap={d}/web-in.pcap\"\n",
        eal_and_control(d, "eg-admin-cli"),
        e = empty.display(),
        i = input.display(),
        d = d.display()
    );
    let mut eg = Running::start(d, &cfg);
    let config = d.join("epochgate.toml");
    let socket = d.join("admin.sock");

    // Poll `stats --json --config` until the VM has read its whole capture.
    let start = Instant::now();
    let snap: Value = loop {
        let out = epochgate(&["stats", "--json", "--config"], &[&config]);
        if out.status.success() {
            let v: Value = serde_json::from_slice(&out.stdout)
                .unwrap_or_else(|e| panic!("stats --json: {e}\n{}", text(&out.stdout)));
            if u(vm(&v, "web"), "rx_frames") == n {
                break v;
            }
        }
        if let Ok(Some(status)) = eg.child.try_wait() {
            panic!("epochgate exited ({status})\n{}", eg.logs());
        }
        assert!(
            start.elapsed() < DEADLINE,
            "no snapshot with rx_frames {n} after {DEADLINE:?}; last: status {} stdout {} stderr {}\n{}",
            out.status,
            text(&out.stdout),
            text(&out.stderr),
            eg.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let web = vm(&snap, "web");
    assert_eq!(web["mode"], "passthrough", "{web}");
    assert_eq!(
        u(web, "rx_bytes"),
        frames.iter().map(|f| f.len() as u64).sum::<u64>(),
        "{web}"
    );
    assert_eq!(snap["vms"].as_array().map(Vec::len), Some(1), "{snap}");
    let egress = port(&snap, "egress", 0);
    assert_eq!(egress["name"], "net_pcap0", "{egress}");
    let vm_port = port(&snap, "vm", 0);
    assert_eq!(vm_port["name"], "net_pcap1", "{vm_port}");
    assert!(vm_port["driver"].is_object(), "{vm_port}");

    // `vms` (text, by config): a header and the VM's row with its name and mode.
    let out = epochgate(&["vms", "--config"], &[&config]);
    let vms = text(&out.stdout);
    assert!(out.status.success(), "{vms}{}", text(&out.stderr));
    let mut lines = vms.lines();
    let header = lines.next().unwrap_or_default();
    for col in [
        "NAME", "MODE", "MAC", "PORT", "EPOCH", "HELD", "LIMIT", "RATE",
    ] {
        assert!(header.contains(col), "no {col} in {header:?}");
    }
    let row = lines
        .find(|l| l.starts_with("web "))
        .unwrap_or_else(|| panic!("no row for web in\n{vms}"));
    assert!(row.contains(" passthrough "), "{row}");

    // `stats` (text, by socket path): the VM, its count and the ports.
    let out = epochgate(&["stats", "--socket"], &[&socket]);
    let stats = text(&out.stdout);
    assert!(out.status.success(), "{stats}{}", text(&out.stderr));
    assert!(stats.contains("vm web (passthrough)"), "{stats}");
    assert!(stats.contains(&format!(" {n} frames")), "{stats}");
    assert!(stats.contains("port net_pcap0 (egress)"), "{stats}");
    assert!(stats.contains("port net_pcap1 (vm)"), "{stats}");
    assert!(stats.contains("imissed "), "{stats}");

    // `vms --json` is the same snapshot, as JSON.
    let out = epochgate(&["vms", "--json", "--socket"], &[&socket]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).expect("vms --json");
    assert_eq!(u(vm(&v, "web"), "rx_frames"), n, "{v}");

    // A user who is not root, not epochgate's user and not allowed gets "permission denied".
    refused_as_nobody(d, &socket, &[&["stats"]]);

    let pid = eg.child.id();
    let _ = eg.stop(); // SIGTERM to the PID we started, then waits for a clean exit.
    assert!(
        !socket.exists(),
        "epochgate (pid {pid}) exited and left {}",
        socket.display()
    );
}

#[test]
fn an_unreachable_socket_exits_1_and_says_so() {
    for args in [
        &["stats", "--socket", "/nonexistent/admin.sock"][..],
        &["vms", "--json", "--socket", "/nonexistent/admin.sock"][..],
    ] {
        let out = epochgate(args, &[]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains(
                "cannot reach epochgate at /nonexistent/admin.sock (is it running? its config's control.admin_socket)"
            ),
            "{args:?}: {err}"
        );
        assert!(
            out.stdout.is_empty(),
            "{args:?} printed {:?}",
            text(&out.stdout)
        );
    }
    // A config that cannot be read is named; --config and --socket exclude each other.
    let out = epochgate(&["stats", "--config", "/nonexistent/epochgate.toml"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("/nonexistent/epochgate.toml"),
        "{}",
        text(&out.stderr)
    );
    let out = epochgate(&["stats", "--config", "a.toml", "--socket", "b.sock"], &[]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("cannot be used with"),
        "{}",
        text(&out.stderr)
    );
}

/// A stats file that cannot be written (here: its directory is a regular file) never stops the
/// appliance: the error is said once, the VM's frames all leave, and the run ends cleanly.
#[test]
fn an_unwritable_stats_file_does_not_stop_the_data_plane() {
    let _g = serial();
    let dir = tempdir();
    let d = dir.path();
    let frames = guest_frames(2, 50);
    write_pcap(&d.join("web.pcap"), &frames);
    write_pcap(&d.join("empty.pcap"), &[]);
    let cfg = format!(
        "{}[dataplane]\nstats_interval_ms = 100\n\n\
         [egress]\nport = \"net_pcap0,rx_pcap={d}/empty.pcap,tx_pcap={d}/egress.pcap\"\n\n\
         [[vm]]\nname = \"web\"\nport = \"net_pcap1,rx_pcap={d}/web.pcap,tx_pcap={d}/web-in.pcap\"\n",
        eal_and_control(d, "eg-statsfail"),
        d = d.display()
    );
    let config = d.join("c.toml");
    std::fs::write(&config, cfg).unwrap();
    std::fs::write(d.join("not-a-dir"), b"").unwrap();
    let out = Command::new(EPOCHGATE)
        .args(["run", "--quiet", "--duration", "1.5", "--stats-file"])
        .arg(d.join("not-a-dir/stats.json"))
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        stdout.contains("stopped; final counters"),
        "the run must end by itself, cleanly: {stdout}\n{stderr}"
    );
    let said = stderr.matches("the data plane goes on").count();
    assert_eq!(said, 1, "said once, not every interval: {stderr}");
    // The final write fails too: reported, after a clean stop.
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(read_pcap(&d.join("egress.pcap")), frames);
}
