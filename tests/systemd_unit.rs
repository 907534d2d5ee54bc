//! The systemd units in `dist/`: `systemd-analyze verify` accepts them (with the installed paths
//! pointed at this build), they say what the README promises (Type=notify, Restart=on-failure,
//! SIGTERM, a kept runtime directory), their hugepage set-up script refuses nonsense, and their
//! own ExecStartPre/ExecStart lines, run as systemd would (NOTIFY_SOCKET, then KillSignal, then
//! start again), give READY=1 once the sockets are up, a clean exit 0 at SIGTERM (so
//! Restart=on-failure does not fire on a stop), and a restart that lets nothing uncommitted out.

mod common;
use common::*;
use std::collections::BTreeMap;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const DIST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/dist");

/// The `[Service]` keys of a unit (a key given twice keeps every value, in order).
fn service(unit: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut section = "";
    for l in unit.lines().map(str::trim) {
        if l.starts_with('[') {
            section = l;
        } else if section == "[Service]" && !l.starts_with('#') {
            if let Some((k, v)) = l.split_once('=') {
                out.entry(k.to_string()).or_default().push(v.to_string());
            }
        }
    }
    out
}

/// The unit with its installed paths replaced by this build's.
fn localised(unit: &str) -> String {
    unit.replace("/usr/local/bin/epochgate", EPOCHGATE).replace(
        "/usr/local/libexec/epochgate-prepare",
        &format!("{DIST}/epochgate-prepare"),
    )
}

#[test]
fn the_units_verify_and_say_what_the_readme_promises() {
    let dir = tempdir();
    for (file, as_name) in [
        ("epochgate.service", "epochgate.service"),
        ("epochgate@.service", "epochgate@.service"),
        ("epochgate@.service", "epochgate@demo.service"),
    ] {
        let unit = std::fs::read_to_string(Path::new(DIST).join(file)).unwrap();
        let path = dir.path().join(as_name);
        std::fs::write(&path, localised(&unit)).unwrap();
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&path)
            .output()
            .expect("systemd-analyze (Debian package systemd)");
        assert!(
            out.status.success() && out.stderr.is_empty() && out.stdout.is_empty(),
            "{as_name}: {}\n{}{}",
            out.status,
            text(&out.stdout),
            text(&out.stderr)
        );
        let s = service(&unit);
        for (key, want) in [
            ("Type", "notify"),
            ("NotifyAccess", "main"),
            ("Restart", "on-failure"),
            ("KillSignal", "SIGTERM"),
            ("KillMode", "mixed"),
            ("RuntimeDirectory", "epochgate"),
            ("RuntimeDirectoryPreserve", "yes"),
        ] {
            assert_eq!(
                s.get(key).map(|v| v[0].as_str()),
                Some(want),
                "{file}: {key}"
            );
        }
        assert!(s.contains_key("TimeoutStopSec"), "{file}");
        let pre = &s["ExecStartPre"];
        assert!(
            pre[0].starts_with("+/usr/local/libexec/epochgate-prepare"),
            "{pre:?}"
        );
        assert!(pre[1].contains("epochgate check-config"), "{pre:?}");
        assert!(
            s["ExecStart"][0].contains("epochgate run --quiet --config"),
            "{s:?}"
        );
    }
    // A break in the unit is caught by the same check (the check can fail).
    let broken = dir.path().join("epochgate.service");
    let unit = std::fs::read_to_string(Path::new(DIST).join("epochgate.service")).unwrap();
    std::fs::write(
        &broken,
        localised(&unit).replace(EPOCHGATE, "/nonexistent/epochgate"),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&broken)
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", text(&out.stderr));

    // The set-up script: a count that is not a number is refused, naming it; 0 does nothing.
    let prepare = format!("{DIST}/epochgate-prepare");
    let out = Command::new("sh")
        .args([&prepare, "lots"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("hugepage count \"lots\" is not a number"),
        "{}",
        text(&out.stderr)
    );
    let out = Command::new("sh").args([&prepare, "0"]).output().unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}",
        text(&out.stderr)
    );
}

/// A command line of the unit, with the paths of this build and of the test's config.
fn command(line: &str, config: &Path, stats: &Path) -> Vec<String> {
    localised(line)
        .trim_start_matches('+')
        .replace("/etc/epochgate/%i.toml", &config.display().to_string())
        .replace("/run/epochgate/%i.stats.json", &stats.display().to_string())
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

fn wait_ready(sock: &UnixDatagram, eg: &mut Running) -> String {
    let start = Instant::now();
    let mut buf = [0u8; 256];
    loop {
        if let Ok(n) = sock.recv(&mut buf) {
            return text(&buf[..n]);
        }
        if let Ok(Some(status)) = eg.child.try_wait() {
            panic!("epochgate exited ({status})\n{}", eg.logs());
        }
        assert!(start.elapsed() < DEADLINE, "no notification\n{}", eg.logs());
    }
}

#[test]
fn the_units_commands_start_notify_stop_and_restart_as_systemd_would() {
    let _g = serial();
    let dir = tempdir();
    let d = dir.path();
    let held = guest_frames(3, 30);
    write_pcap(&d.join("ledger.pcap"), &held);
    write_pcap(&d.join("empty.pcap"), &[]);
    let config = d.join("demo.toml");
    std::fs::write(
        &config,
        format!(
            "{}[egress]\nport = \"net_pcap0,rx_pcap={d}/empty.pcap,tx_pcap={d}/egress.pcap\"\n\n\
             [[vm]]\nname = \"ledger\"\nmode = \"protected\"\n\
             port = \"net_pcap1,rx_pcap={d}/ledger.pcap,tx_pcap={d}/ledger-in.pcap\"\n",
            eal_and_control(d, "eg-systemd"),
            d = d.display()
        ),
    )
    .unwrap();
    let unit = std::fs::read_to_string(Path::new(DIST).join("epochgate@.service")).unwrap();
    let s = service(&unit);
    let stats = d.join("demo.stats.json");
    // ExecStartPre (the config check) passes.
    let check = command(&s["ExecStartPre"][1], &config, &stats);
    let out = Command::new(&check[0]).args(&check[1..]).output().unwrap();
    assert!(out.status.success(), "{check:?}: {}", text(&out.stderr));
    let start = command(&s["ExecStart"][0], &config, &stats);
    assert_eq!(start[0], EPOCHGATE);
    let signal_name = s["KillSignal"][0].trim_start_matches("SIG").to_string();
    let notify_path = d.join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();

    for run in 1..=2 {
        let child = Command::new(&start[0])
            .args(&start[1..])
            .env("NOTIFY_SOCKET", &notify_path)
            .stdout(std::fs::File::create(d.join("epochgate.out")).unwrap())
            .stderr(std::fs::File::create(d.join("epochgate.err")).unwrap())
            .spawn()
            .unwrap();
        let mut eg = Running {
            child,
            stats: stats.clone(),
            dir: PathBuf::from(d),
        };
        let ready = wait_ready(&notify, &mut eg);
        assert!(
            ready.lines().any(|l| l == "READY=1"),
            "run {run}: {ready:?}"
        );
        assert!(d.join("admin.sock").exists() && d.join("control.sock").exists());
        eg.wait_for("the protected VM's frames held", |v| {
            u(vm(v, "ledger"), "held_frames") == held.len() as u64
        });
        // systemctl stop / restart: KillSignal to the main process.
        signal(eg.child.id(), &signal_name);
        assert_eq!(wait_ready(&notify, &mut eg), "STOPPING=1", "run {run}");
        let t = Instant::now();
        let status = loop {
            if let Some(st) = eg.child.try_wait().unwrap() {
                break st;
            }
            assert!(t.elapsed() < DEADLINE, "no exit\n{}", eg.logs());
            std::thread::sleep(Duration::from_millis(50));
        };
        // Exit 0: a stop, not a failure (Restart=on-failure does not restart it).
        assert!(status.success(), "run {run}: {status}\n{}", eg.logs());
        let last: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
        assert_eq!(
            dropped(vm(&last, "ledger"), "uncommitted-at-exit"),
            held.len() as u64,
            "run {run}: {last}"
        );
        assert!(
            read_pcap(&d.join("egress.pcap")).is_empty(),
            "run {run}: uncommitted output left"
        );
    }
}
