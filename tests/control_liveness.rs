//! Liveness against long fences (issue 10, defect 5), with a real epochgate: a protected VM on a
//! pcap port that never runs dry (`infinite_rx=1`, `on_full = "drop"`), so that every fence
//! drains for the whole of `control.fence_drain_ms`, and a VMM that pings every 20 ms while its
//! fence is with the worker. The VMM is never declared dead, its pings are all answered, and
//! nothing it sealed is discarded. `check-config` refuses a liveness timeout that does not exceed
//! the fence drain, and blames `control.socket` (not a key the user never wrote) when the control
//! socket sits where the admin socket goes by default.
//!
//! The runtime half of the defect (time with the worker counted as silence) is reproduced
//! exactly, with liveness 200 ms and a 500 ms fence, by the unit tests in
//! `nic/control/server.rs`: a config that shows it is now refused before EAL starts.

mod common;
use common::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use vmm_shim::proto::{Reply, Request};

fn check(d: &Path, text: &str) -> (bool, String) {
    let f = d.join("check.toml");
    std::fs::write(&f, text).unwrap();
    let out = Command::new(EPOCHGATE)
        .arg("check-config")
        .arg(&f)
        .output()
        .expect("epochgate check-config");
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), all)
}

const VMS: &str = "[egress]\nport = \"net_null0\"\n\
                   [[vm]]\nname = \"a\"\nport = \"net_tap0\"\n\
                   [[vm]]\nname = \"b\"\nport = \"net_tap1\"\n";

#[test]
fn check_config_refuses_a_liveness_timeout_within_the_fence_drain_and_names_the_right_keys() {
    let dir = tempdir();
    let d = dir.path();
    let (ok, text) = check(
        d,
        &format!("[control]\nliveness_timeout_ms = 200\nfence_drain_ms = 500\n{VMS}"),
    );
    assert!(!ok, "accepted: {text}");
    assert!(
        text.contains(
            "control.liveness_timeout_ms: 200 does not exceed control.fence_drain_ms (500)"
        ),
        "{text}"
    );
    let (ok, text) = check(
        d,
        &format!("[control]\nliveness_timeout_ms = 501\nfence_drain_ms = 500\n{VMS}"),
    );
    assert!(ok, "refused: {text}");
    assert!(
        text.contains(
            "liveness 501 ms, pings every 125 ms, Hello within 2000 ms, at most 64 sessions"
        ),
        "{text}"
    );

    let (ok, text) = check(d, &format!("[control]\nmax_sessions = 1\n{VMS}"));
    assert!(!ok, "accepted: {text}");
    assert!(
        text.contains("control.max_sessions: 1 is fewer than the 2 [[vm]] entries"),
        "{text}"
    );

    // The control socket named admin.sock, admin_socket not written: the user's key is blamed.
    let (ok, text) = check(
        d,
        &format!("[control]\nsocket = \"{}/admin.sock\"\n{VMS}", d.display()),
    );
    assert!(!ok, "accepted: {text}");
    assert!(text.contains("control.socket: "), "{text}");
    assert!(!text.contains("control.admin_socket: "), "{text}");
    assert!(
        text.contains("set control.admin_socket elsewhere"),
        "{text}"
    );
    // Written by the user: then it is that key's fault.
    let (ok, text) = check(
        d,
        &format!("[control]\nsocket = \"/x/a.sock\"\nadmin_socket = \"/x/a.sock\"\n{VMS}"),
    );
    assert!(!ok, "accepted: {text}");
    assert!(text.contains("control.admin_socket: "), "{text}");
}

/// A raw session: the test sends pings while a fence is in flight, which the blocking client
/// cannot.
struct Raw(socket2::Socket);

impl Raw {
    fn connect(path: &Path) -> Raw {
        Raw(raw_session(path, DEADLINE))
    }

    fn say(&self, r: &Request) {
        self.0.send(&r.encode()).expect("send");
    }

    /// The next reply that is not a checkpoint request (the VM sends all the time).
    fn hear(&self) -> Reply {
        hear(&self.0).expect("a reply (epochgate closed the session or did not answer)")
    }
}

#[test]
fn a_vmm_pinging_through_full_length_fences_stays_alive() {
    let _g = serial();
    let dir = tempdir();
    let d = dir.path();
    let frames = guest_frames(1, 64);
    let input = d.join("web.pcap");
    write_pcap(&input, &frames);
    let empty = d.join("empty.pcap");
    write_pcap(&empty, &[]);
    let cfg = format!(
        "{}liveness_timeout_ms = 600\nfence_drain_ms = 500\n\n\
         [egress]\nport = \"net_pcap0,rx_pcap={e},tx_pcap={d}/egress.pcap\"\n\n\
         [[vm]]\nname = \"web\"\nmode = \"protected\"\non_full = \"drop\"\nmax_held_frames = 256\n\
         port = \"net_pcap1,rx_pcap={i},infinite_rx=1\"\n",
        eal_and_control(d, "eg-liveness"),
        e = empty.display(),
        i = input.display(),
        d = d.display()
    );
    let mut eg = Running::start(d, &cfg);
    let socket = d.join("control.sock");
    eg.wait_for_path(&socket);
    let s = Raw::connect(&socket);
    s.say(&Request::hello("web").unwrap());
    let Reply::Welcome { epoch: first, .. } = s.hear() else {
        panic!("no welcome")
    };
    let mut token = 0u64;
    for epoch in first..first + 3 {
        s.say(&Request::Fence { epoch });
        // Pings every 20 ms for longer than the fence drains: they wait in the socket while
        // the fence is with the worker.
        let from = token + 1;
        for _ in 0..35 {
            std::thread::sleep(Duration::from_millis(20));
            token += 1;
            s.say(&Request::Ping { token });
        }
        match s.hear() {
            Reply::Fenced {
                epoch: e,
                frames,
                drain_ns,
                ..
            } => {
                assert_eq!(e, epoch);
                println!(
                    "fence {epoch}: {frames} frames, drained {:.1} ms",
                    drain_ns as f64 / 1e6
                );
                // The port never ran dry: the fence took the whole of fence_drain_ms.
                assert!(
                    drain_ns >= 500_000_000,
                    "the fence ended early: {drain_ns} ns"
                );
            }
            other => panic!("fence {epoch}: {other:?}"),
        }
        for t in from..=token {
            assert_eq!(s.hear(), Reply::Pong { token: t }, "fence {epoch}");
        }
        s.say(&Request::Commit { epoch });
        assert!(
            matches!(s.hear(), Reply::Committed { epoch: e, .. } if e == epoch),
            "commit {epoch}"
        );
    }
    // The VMM goes on pinging while the counters are read (a silent one would be failed).
    let start = std::time::Instant::now();
    let st = loop {
        token += 1;
        s.say(&Request::Ping { token });
        assert_eq!(s.hear(), Reply::Pong { token });
        if let Some(st) = eg.stats() {
            if u(vm(&st, "web"), "epochs_committed") == 3 {
                break st;
            }
        }
        assert!(
            start.elapsed() < DEADLINE,
            "no stats with 3 epochs committed"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let v = vm(&st, "web");
    assert_eq!(v["mode"], "protected", "{v}");
    assert_eq!(dropped(v, "controller-lost"), 0, "{v}");
    assert_eq!(u(&st["control"], "liveness_timeouts"), 0);
    assert_eq!(u(v, "fences_cut_short"), 3, "{v}");
    drop(s);
    eg.stop();
}

// --- Liveness both ways (issue 13, item 1): the shim's own pinger -------------------------

/// A VMM process: the shim CLI (`epochgate-shim session`), which pings by itself while idle.
/// Its lines are read by a thread, so that a wait for one has a deadline.
struct Vmm {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    lines: std::sync::mpsc::Receiver<serde_json::Value>,
}

impl Vmm {
    fn start(socket: &Path, vm: &str) -> Vmm {
        let mut child = Command::new(shim_bin())
            .arg("--socket")
            .arg(socket)
            .args(["--vm", vm, "session"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn epochgate-shim");
        let stdin = child.stdin.take();
        let out = child.stdout.take().expect("stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for l in std::io::BufReader::new(out).lines() {
                let Ok(l) = l else { return };
                let v =
                    serde_json::from_str(&l).unwrap_or_else(|e| panic!("shim printed {l:?}: {e}"));
                if tx.send(v).is_err() {
                    return;
                }
            }
        });
        Vmm {
            child,
            stdin,
            lines,
        }
    }

    /// The next line, or `None` at the end of the shim's output.
    fn line(&mut self) -> Option<serde_json::Value> {
        match self.lines.recv_timeout(DEADLINE) {
            Ok(v) => Some(v),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => None,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                panic!("the shim printed nothing for {DEADLINE:?}")
            }
        }
    }

    fn send(&mut self, cmd: &str) {
        use std::io::Write;
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{cmd}").expect("write");
        stdin.flush().expect("flush");
    }

    /// Like `send`, for a shim that may have ended already: a closed stdin is not an error.
    fn send_if_open(&mut self, cmd: &str) {
        use std::io::Write;
        let stdin = self.stdin.as_mut().expect("stdin open");
        match writeln!(stdin, "{cmd}").and_then(|()| stdin.flush()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
            Err(e) => panic!("write: {e}"),
        }
    }

    /// Sends one command and returns its reply line (events are skipped).
    fn say(&mut self, cmd: &str) -> serde_json::Value {
        self.send(cmd);
        loop {
            let v = self.line().expect("a reply");
            if v.get("reply").is_some() {
                return v;
            }
        }
    }

    /// Every line up to the end of its output, and its exit code.
    fn finish(mut self) -> (Vec<serde_json::Value>, Option<i32>) {
        drop(self.stdin.take());
        let mut rest = vec![];
        while let Some(v) = self.line() {
            rest.push(v);
        }
        let status = self.child.wait().expect("wait for the shim");
        (rest, status.code())
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            signal(self.child.id(), "CONT");
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// How many frames the protected VM sends (all of them before the VMM adopts it: they are
/// held in its first epoch).
const HELD: u32 = 40;
const LIVENESS_MS: u64 = 1500;

/// A real epochgate with one protected VM `web` on a pcap port that sent [`HELD`] frames,
/// all held, and a liveness timeout of [`LIVENESS_MS`] (pings every quarter of it, the
/// default); the egress is a pcap capture.
fn held_vm(d: &Path, prefix: &str) -> (Running, Vec<Vec<u8>>) {
    let frames = guest_frames(1, HELD);
    let input = d.join("web.pcap");
    write_pcap(&input, &frames);
    let empty = d.join("empty.pcap");
    write_pcap(&empty, &[]);
    let cfg = format!(
        "{}liveness_timeout_ms = {LIVENESS_MS}\n\n\
         [egress]\nport = \"net_pcap0,rx_pcap={e},tx_pcap={d}/egress.pcap\"\n\n\
         [[vm]]\nname = \"web\"\nmode = \"protected\"\nport = \"net_pcap1,rx_pcap={i}\"\n",
        eal_and_control(d, prefix),
        e = empty.display(),
        i = input.display(),
        d = d.display()
    );
    let mut eg = Running::start(d, &cfg);
    eg.wait_for_path(&d.join("control.sock"));
    eg.wait_for("the VM's frames held", |s| {
        u(vm(s, "web"), "held_frames") == u64::from(HELD)
    });
    (eg, frames)
}

#[test]
fn check_config_names_both_keys_for_a_ping_interval_too_close_to_the_timeout() {
    let dir = tempdir();
    let d = dir.path();
    let (ok, text) = check(
        d,
        &format!("[control]\nliveness_timeout_ms = 900\nping_interval_ms = 400\n{VMS}"),
    );
    assert!(!ok, "accepted: {text}");
    assert!(
        text.contains("control.ping_interval_ms: 400 is more than a third of control.liveness_timeout_ms (900)"),
        "{text}"
    );
    let (ok, text) = check(d, &format!("[control]\nping_interval_ms = 0\n{VMS}"));
    assert!(!ok, "accepted: {text}");
    assert!(
        text.contains("control.ping_interval_ms: 0 is out of range"),
        "{text}"
    );
    let (ok, text) = check(
        d,
        &format!("[control]\nliveness_timeout_ms = 900\nping_interval_ms = 300\n{VMS}"),
    );
    assert!(ok, "refused: {text}");
    assert!(
        text.contains("liveness 900 ms, pings every 300 ms"),
        "{text}"
    );
    let (ok, text) = check(d, &format!("[control]\nliveness_timeout_ms = 2000\n{VMS}"));
    assert!(ok, "refused: {text}");
    assert!(
        text.contains("liveness 2000 ms, pings every 500 ms"),
        "the default: {text}"
    );
}

/// The VMM adopts its protected VM and then does nothing for several liveness timeouts: its
/// shim pings by itself, so the VM stays protected and nothing it holds is discarded; the
/// session then goes on as if no time had passed.
#[test]
fn an_idle_vmm_is_kept_alive_by_its_shims_pinger() {
    let _g = serial();
    let dir = tempdir();
    let d = dir.path();
    let (eg, frames) = held_vm(d, "eg-live-idle");
    let mut vmm = Vmm::start(&d.join("control.sock"), "web");
    let w = vmm.line().expect("welcome");
    assert_eq!(w["reply"], "welcome", "{w}");
    assert_eq!(w["epoch"], 1, "{w}");

    // Idle (no command at all) for three liveness timeouts.
    std::thread::sleep(Duration::from_millis(3 * LIVENESS_MS));
    let st = eg.stats().expect("stats");
    let v = vm(&st, "web");
    assert_eq!(v["mode"], "protected", "{v}");
    assert_eq!(u(v, "held_frames"), u64::from(HELD), "{v}");
    assert_eq!(dropped(v, "controller-lost"), 0, "{v}");
    assert_eq!(u(&st["control"], "liveness_timeouts"), 0, "{st}");

    // The same session, same epoch.
    let r = vmm.say("fence 1");
    assert_eq!(
        (r["reply"].as_str(), r["frames"].as_u64()),
        (Some("fenced"), Some(u64::from(HELD))),
        "{r}"
    );
    let r = vmm.say("commit 1");
    assert_eq!(r["reply"], "committed", "{r}");
    assert_eq!(r["frames"], HELD, "{r}");
    let (rest, code) = vmm.finish();
    assert_eq!(code, Some(0), "{rest:?}");
    assert!(
        rest.iter()
            .all(|l| l.get("event") != Some(&"closed".into())),
        "{rest:?}"
    );
    let st = eg.stop();
    assert_eq!(u(&st["control"], "liveness_timeouts"), 0, "{st}");
    assert_eq!(
        read_pcap(&d.join("egress.pcap")),
        frames,
        "every frame, once committed"
    );
}

/// The VMM freezes (SIGSTOP): its pinger is frozen with it, so after the liveness timeout its
/// VM is failed and what it held is discarded (controller-lost), none of it on the egress.
/// Woken (SIGCONT), the VMM's next command is refused, saying why.
#[test]
fn a_frozen_vmm_fails_its_vm_and_hears_why_when_it_wakes() {
    let _g = serial();
    let dir = tempdir();
    let d = dir.path();
    let (mut eg, _) = held_vm(d, "eg-live-stop");
    let mut vmm = Vmm::start(&d.join("control.sock"), "web");
    assert_eq!(vmm.line().expect("welcome")["reply"], "welcome");
    signal(vmm.child.id(), "STOP");
    let st = eg.wait_for("the frozen VMM's VM to fail", |s| {
        vm(s, "web")["mode"] == "failed"
    });
    let v = vm(&st, "web");
    assert_eq!(dropped(v, "controller-lost"), u64::from(HELD), "{v}");
    assert_eq!(u(v, "held_frames"), 0, "{v}");
    assert_eq!(u(&st["control"], "liveness_timeouts"), 1, "{st}");

    signal(vmm.child.id(), "CONT");
    // The woken shim may read the refusal and exit before this command reaches it: then its
    // stdin is closed (a broken pipe), which is the outcome asserted below.
    vmm.send_if_open("fence 1");
    let (lines, code) = vmm.finish();
    assert_eq!(code, Some(1), "the session is over: {lines:?}");
    let closed = lines
        .iter()
        .find(|l| l.get("event") == Some(&"closed".into()))
        .unwrap_or_else(|| panic!("no closed line: {lines:?}"));
    let text = closed["text"].as_str().expect("text");
    assert!(text.starts_with("liveness timeout: "), "{text}");
    assert!(text.contains("control.liveness_timeout_ms"), "{text}");
    assert!(text.contains("VM \"web\" is failed"), "{text}");
    assert!(
        !lines
            .iter()
            .any(|l| l.to_string().contains("stopped answering")),
        "the shim's own freeze is not epochgate's silence: {lines:?}"
    );
    assert!(
        !lines
            .iter()
            .any(|l| l.get("reply") == Some(&"fenced".into())),
        "{lines:?}"
    );

    let st = eg.stop();
    assert_eq!(dropped(vm(&st, "web"), "controller-lost"), u64::from(HELD));
    assert!(
        read_pcap(&d.join("egress.pcap")).is_empty(),
        "nothing the failed VM held may leave"
    );
}

/// Epochgate freezes (SIGSTOP) while VMMs idle: the shim notices within about the liveness
/// timeout and says epochgate stopped answering, both the library (the next call) and the
/// CLI (on its own, ending the session).
#[test]
fn a_frozen_epochgate_is_reported_by_the_shim() {
    let _g = serial();
    let dir = tempdir();
    let d = dir.path();
    let (ea, eb) = (d.join("a.pcap"), d.join("b.pcap"));
    write_pcap(&ea, &[]);
    write_pcap(&eb, &[]);
    let cfg = format!(
        "{}liveness_timeout_ms = {LIVENESS_MS}\n\n\
         [egress]\nport = \"net_null0\"\n\n\
         [[vm]]\nname = \"a\"\nmode = \"protected\"\nport = \"net_pcap1,rx_pcap={a}\"\n\
         [[vm]]\nname = \"b\"\nmode = \"protected\"\nport = \"net_pcap2,rx_pcap={b}\"\n",
        eal_and_control(d, "eg-live-egstop"),
        a = ea.display(),
        b = eb.display(),
    );
    let mut eg = Running::start(d, &cfg);
    let socket = d.join("control.sock");
    eg.wait_for_path(&socket);
    let mut client = vmm_shim::Client::connect(&socket, "a").expect("the VMM's Hello");
    assert_eq!(
        client.ping_interval(),
        Some(Duration::from_millis(LIVENESS_MS / 4)),
        "epochgate's default interval"
    );
    assert_eq!(
        client.answer_timeout(),
        Some(Duration::from_millis(LIVENESS_MS))
    );
    let mut cli = Vmm::start(&socket, "b");
    assert_eq!(cli.line().expect("welcome")["reply"], "welcome");
    client.stats().expect("epochgate answers");

    signal(eg.child.id(), "STOP");
    // The CLI ends the session on its own.
    let closed = cli.line().expect("a line");
    assert_eq!(closed["event"], "closed", "{closed}");
    let text = closed["text"].as_str().expect("text");
    assert!(text.starts_with("epochgate stopped answering: "), "{text}");
    // The library: the next call (it waits no longer than the answer timeout).
    client.set_timeout(None);
    let e = client.stats().unwrap_err();
    assert!(
        matches!(e, vmm_shim::ShimError::Unresponsive { .. }),
        "{e:?}"
    );
    assert!(
        e.to_string().starts_with("epochgate stopped answering: "),
        "{e}"
    );
    let e = client.fence(1).unwrap_err();
    assert!(
        matches!(e, vmm_shim::ShimError::Unresponsive { .. }),
        "and stays so: {e:?}"
    );
    let (_, code) = cli.finish();
    assert_eq!(code, Some(1));

    signal(eg.child.id(), "CONT");
    drop(client);
    eg.stop();
}
