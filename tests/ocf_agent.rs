//! `ocf/epochgate-vm`, the Pacemaker resource agent, against a real running epochgate (pcap
//! ports, a VM configured `standby` as on a secondary host): Debian's `ocf-tester` runs its whole
//! promotable-resource sequence and passes; then the agent is driven as Pacemaker would: promote
//! makes the VM's output live (passthrough; its frames leave), a demote while the VM's VMM holds
//! its session is refused and says why (the agent never claims the output moved when it did
//! not), demote returns it to standby (nothing more leaves), a VM epochgate does not know and a
//! bad name are configuration errors, and an epochgate that went away is a failure of a started
//! instance but simply "not running" for a stopped one. And the control protocol's `demote`
//! under it: what a protected VM held is dropped and counted, nothing leaves, and a restart
//! keeps the VM standby.

mod common;
use common::*;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const AGENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/ocf/epochgate-vm");

struct Agent {
    path: PathBuf,
    rsctmp: PathBuf,
    params: Vec<(String, String)>,
}

impl Agent {
    fn run(&self, action: &str, extra: &[(&str, &str)]) -> Output {
        let mut c = Command::new(&self.path);
        c.arg(action)
            .env("OCF_ROOT", "/usr/lib/ocf")
            .env("HA_RSCTMP", &self.rsctmp)
            .env("OCF_RESOURCE_INSTANCE", "eg-web")
            .env("__OCF_ACTION", action);
        for (k, v) in &self.params {
            c.env(format!("OCF_RESKEY_{k}"), v);
        }
        for (k, v) in extra {
            c.env(format!("OCF_RESKEY_{k}"), v);
        }
        c.output().expect("run the agent")
    }

    fn rc(&self, action: &str) -> i32 {
        self.run(action, &[]).status.code().unwrap_or(-1)
    }
}

fn metrics(admin: &Path) -> String {
    let out = Command::new(EPOCHGATE)
        .args(["metrics", "--socket"])
        .arg(admin)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
}

fn mode_of(admin: &Path) -> String {
    let m = metrics(admin);
    m.lines()
        .find_map(|l| {
            l.strip_prefix("epochgate_vm_mode{vm=\"web\",mode=\"")?
                .strip_suffix("\"} 1")
                .map(str::to_string)
        })
        .unwrap_or_else(|| panic!("no mode for web in\n{m}"))
}

const OCF_SUCCESS: i32 = 0;
const OCF_ERR_GENERIC: i32 = 1;
const OCF_ERR_CONFIGURED: i32 = 6;
const OCF_NOT_RUNNING: i32 = 7;
const OCF_RUNNING_MASTER: i32 = 8;

#[test]
fn ocf_tester_passes_and_the_agent_moves_the_output_as_pacemaker_would() {
    use std::os::unix::fs::PermissionsExt;
    let _g = serial();
    let dir = tempdir();
    let d = dir.path();
    // ocf-tester runs meta-data as `nobody`: the agent's directory must be readable.
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    let frames = guest_frames(1, 50);
    write_pcap(&d.join("web.pcap"), &frames);
    write_pcap(&d.join("uplink.pcap"), &[]);
    let cfg = format!(
        "{}[egress]\nport = \"net_pcap0,rx_pcap={d}/uplink.pcap,tx_pcap={d}/egress.pcap\"\n\n\
         [[vm]]\nname = \"web\"\nmode = \"standby\"\nmac = \"52:54:00:00:00:01\"\n\
         port = \"net_pcap1,rx_pcap={d}/web.pcap,tx_pcap={d}/web-in.pcap\"\n",
        eal_and_control(d, "eg-ocf"),
        d = d.display()
    );
    let mut eg = Running::start(d, &cfg);
    let admin = d.join("admin.sock");
    let control = d.join("control.sock");
    eg.wait_for("web's frames dropped in standby", |s| {
        dropped(vm(s, "web"), "standby") == frames.len() as u64
    });

    let agent_path = d.join("epochgate-vm");
    std::fs::copy(AGENT, &agent_path).unwrap();
    std::fs::set_permissions(&agent_path, std::fs::Permissions::from_mode(0o755)).unwrap();
    let rsctmp = d.join("rsctmp");
    std::fs::create_dir(&rsctmp).unwrap();
    // Built now, so that it knows `demote`.
    let shim = build_shim();
    let params = vec![
        ("vm".to_string(), "web".to_string()),
        ("control_socket".to_string(), control.display().to_string()),
        ("admin_socket".to_string(), admin.display().to_string()),
        ("epochgate".to_string(), EPOCHGATE.to_string()),
        ("shim".to_string(), shim.display().to_string()),
    ];

    // Debian's ocf-tester: meta-data against ra-api-1.dtd, validate-all, probes, start/stop,
    // promote/demote (of started, promoted and demoted instances), idempotence.
    let mut t = Command::new("ocf-tester");
    t.args(["-n", "eg-web"]).env("HA_RSCTMP", &rsctmp);
    for (k, v) in &params {
        t.args(["-o", &format!("{k}={v}")]);
    }
    let out = t
        .arg(&agent_path)
        .output()
        .expect("ocf-tester (Debian package resource-agents)");
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success(),
        "ocf-tester: {}\n{said}\n{}",
        out.status,
        eg.logs()
    );
    assert!(said.contains("passed all tests"), "{said}");
    assert_eq!(mode_of(&admin), "standby", "ocf-tester ends stopped");

    let agent = Agent {
        path: agent_path,
        rsctmp,
        params,
    };
    // start (unpromoted), then promote: the VM is live; monitor says promoted.
    assert_eq!(agent.rc("start"), OCF_SUCCESS);
    assert_eq!(agent.rc("monitor"), OCF_SUCCESS);
    assert_eq!(agent.rc("promote"), OCF_SUCCESS);
    assert_eq!(mode_of(&admin), "passthrough");
    assert_eq!(agent.rc("monitor"), OCF_RUNNING_MASTER);

    // The VM's VMM adopts it (a session of its own): demote cannot take the session, is
    // refused with the reason, and the VM stays live (monitor still says promoted).
    let mut vmm = Command::new(&shim)
        .args(["--socket"])
        .arg(&control)
        .args(["--vm", "web", "session"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(vmm.stdout.take().unwrap()).lines();
    let welcome = lines.next().unwrap().unwrap();
    assert!(welcome.contains("\"reply\":\"welcome\""), "{welcome}");
    let start = Instant::now();
    while !metrics(&admin).contains("epochgate_vm_controller_attached{vm=\"web\"} 1") {
        assert!(start.elapsed() < DEADLINE, "the VMM's session never showed");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = agent.run("demote", &[]);
    assert_eq!(
        out.status.code(),
        Some(OCF_ERR_GENERIC),
        "{}",
        text(&out.stderr)
    );
    let why = text(&out.stderr);
    assert!(why.contains("demote refused"), "{why}");
    assert!(why.contains("already driven by another session"), "{why}");
    assert_eq!(agent.rc("monitor"), OCF_RUNNING_MASTER);
    // The VMM goes; demote now returns the VM to standby.
    drop(vmm.stdin.take());
    assert!(vmm.wait().unwrap().success());
    assert_eq!(agent.rc("demote"), OCF_SUCCESS);
    assert_eq!(mode_of(&admin), "standby");
    assert_eq!(agent.rc("monitor"), OCF_SUCCESS);

    // Configuration errors say what and why.
    let out = agent.run("validate-all", &[("vm", "no such vm")]);
    assert_eq!(out.status.code(), Some(OCF_ERR_CONFIGURED));
    assert!(
        text(&out.stderr).contains("is not a VM name"),
        "{}",
        text(&out.stderr)
    );
    let out = agent.run("monitor", &[("vm", "db")]);
    assert_eq!(out.status.code(), Some(OCF_ERR_CONFIGURED));
    assert!(
        text(&out.stderr).contains("has no VM named db"),
        "{}",
        text(&out.stderr)
    );
    let out = agent.run("start", &[("shim", "/nonexistent/epochgate-shim")]);
    assert_eq!(out.status.code(), Some(5), "OCF_ERR_INSTALLED");

    // epochgate goes away: a started instance has failed, a stopped one is just not running;
    // stopping it succeeds (nothing can leave through an epochgate that is not running).
    let _ = eg.stop();
    let out = agent.run("monitor", &[]);
    assert_eq!(out.status.code(), Some(OCF_ERR_GENERIC));
    assert!(
        text(&out.stderr).contains("epochgate cannot be reached"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(agent.rc("stop"), OCF_SUCCESS);
    assert_eq!(agent.rc("monitor"), OCF_NOT_RUNNING);
    let out = agent.run("promote", &[]);
    assert_eq!(out.status.code(), Some(OCF_ERR_GENERIC));
    // Its own frames left only while it was promoted, never while it was a standby copy: all
    // 50 were dropped in standby before any promotion, so none is on the egress.
    let egress = read_pcap(&d.join("egress.pcap"));
    assert!(
        egress.iter().all(|f| !frames.contains(f)),
        "a standby VM's frame left"
    );
    let _ = std::io::stdout().flush();
}

/// `demote` itself, on the data plane: a protected VM holding frames goes to standby, what it
/// held is dropped and counted (`demoted`), nothing of it leaves, and a restart keeps it a
/// standby copy although its config says protected.
#[test]
fn demote_drops_what_was_held_and_is_remembered_across_a_restart() {
    let _g = serial();
    let dir = tempdir();
    let d = dir.path();
    let frames = guest_frames(4, 30);
    let n = frames.len() as u64;
    write_pcap(&d.join("ledger.pcap"), &frames);
    write_pcap(&d.join("empty.pcap"), &[]);
    let cfg = format!(
        "{}[egress]\nport = \"net_pcap0,rx_pcap={d}/empty.pcap,tx_pcap={d}/egress.pcap\"\n\n\
         [[vm]]\nname = \"ledger\"\nmode = \"protected\"\n\
         port = \"net_pcap1,rx_pcap={d}/ledger.pcap,tx_pcap={d}/ledger-in.pcap\"\n",
        eal_and_control(d, "eg-demote"),
        d = d.display()
    );
    // Built now, so that it knows `demote`.
    let shim = build_shim();
    let session = |commands: &str| -> Vec<String> {
        let mut c = Command::new(&shim)
            .arg("--socket")
            .arg(d.join("control.sock"))
            .args(["--vm", "ledger", "session"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin
            .take()
            .unwrap()
            .write_all(commands.as_bytes())
            .unwrap();
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", text(&out.stdout));
        text(&out.stdout).lines().map(str::to_string).collect()
    };

    let mut eg = Running::start(d, &cfg);
    eg.wait_for("ledger's frames held", |s| {
        u(vm(s, "ledger"), "held_frames") == n
    });
    let lines = session("demote\ndemote\n");
    assert!(lines[0].contains("\"mode\":\"protected\""), "{lines:?}");
    assert_eq!(
        lines[1],
        format!("{{\"reply\":\"demoted\",\"dropped\":{n}}}")
    );
    assert_eq!(
        lines[2], "{\"reply\":\"demoted\",\"dropped\":0}",
        "a standby VM"
    );
    let s = eg.wait_for("ledger in standby", |s| {
        vm(s, "ledger")["mode"] == "standby"
    });
    let v = vm(&s, "ledger");
    assert_eq!(dropped(v, "demoted"), n, "{v}");
    assert_eq!(u(v, "held_frames"), 0, "{v}");
    assert_eq!(u(v, "open_epoch"), 0, "{v}");
    assert_balanced(&s);
    let last = eg.stop();
    assert_eq!(dropped(vm(&last, "ledger"), "uncommitted-at-exit"), 0);
    assert!(
        read_pcap(&d.join("egress.pcap")).is_empty(),
        "a demoted VM's frame left"
    );

    // The restart keeps it standby (the config says protected): its frames are dropped as a
    // standby copy's, and promote is what makes it live again.
    let mut eg = Running::start(d, &cfg);
    let s = eg.wait_for("ledger's frames dropped in standby", |s| {
        dropped(vm(s, "ledger"), "standby") == n
    });
    assert_eq!(vm(&s, "ledger")["mode"], "standby", "{s}");
    let lines = session("promote passthrough\n");
    assert!(lines[0].contains("\"mode\":\"standby\""), "{lines:?}");
    assert!(lines[1].contains("\"reply\":\"promoted\""), "{lines:?}");
    let _ = eg.stop();
    assert!(read_pcap(&d.join("egress.pcap")).is_empty());
}
