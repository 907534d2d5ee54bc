//! A restart is never less safe than the run before it: a VM its VMM protected at run time
//! (configured `passthrough`) comes back holding its output after SIGTERM or SIGKILL and a
//! restart on the same config, until a controller adopts it; a state file that cannot be
//! trusted stops epochgate with an error naming it.

mod common;
use common::*;
use epochgate::wire::frame::MacAddr;
use std::path::Path;
use std::time::Duration;
use vmm_shim::proto::Mode;
use vmm_shim::Client;

const VM: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 0x21]);

/// One pass-through VM on a pcap port whose capture the test rewrites between runs (the guest
/// goes on sending while epochgate restarts); the egress is recorded into `egress-N.pcap`.
fn config(d: &Path, prefix: &str, run: u32) -> String {
    format!(
        "{}[egress]\nport = \"net_pcap0,rx_pcap={d}/empty.pcap,tx_pcap={d}/egress-{run}.pcap\"\n\n\
         [[vm]]\nname = \"vm\"\nport = \"net_pcap1,rx_pcap={d}/guest.pcap,tx_pcap={d}/guest-in.pcap\"\nmac = \"{VM}\"\n",
        eal_and_control(d, prefix),
        d = d.display()
    )
}

fn guest(n: u32) -> Vec<Vec<u8>> {
    stream_frames(7, VM, 0..n)
}

/// Run 1: the VMM protects the pass-through VM and fences epoch 1; then epochgate stops by
/// `sig`. Run 2 on the same config: the guest's 10 new frames are held (none leaves) until a
/// VMM adopts the VM, fences and commits.
fn protection_survives(sig: &str, prefix: &str) {
    let _g = serial();
    let dir = tempdir();
    let d = dir.path();
    write_pcap(&d.join("empty.pcap"), &[]);
    write_pcap(&d.join("guest.pcap"), &[]);

    let mut first = Running::start(d, &config(d, &format!("{prefix}1"), 1));
    first.wait_for_path(&d.join("control.sock"));
    {
        let mut vmm = Client::connect(d.join("control.sock"), "vm").expect("hello");
        assert_eq!(vmm.welcome().mode, Mode::Passthrough);
        let epoch = vmm.protect().expect("protect");
        let f = vmm.fence(epoch).expect("fence");
        assert_eq!(f.frames, 0);
        if sig == "KILL" {
            signal(first.child.id(), "KILL");
            let _ = first.child.wait();
        } else {
            first.stop();
        }
    }
    let state = std::fs::read_to_string(d.join("control.sock.state")).unwrap_or_default();

    // check-config says how the next run will start.
    let out = std::process::Command::new(EPOCHGATE)
        .arg("check-config")
        .arg(d.join("epochgate.toml"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("state:") && text.contains("\"vm\" was protected"),
        "{text}"
    );

    // The guest goes on sending while epochgate is away.
    let frames = guest(10);
    write_pcap(&d.join("guest.pcap"), &frames);
    let mut second = Running::start(d, &config(d, &format!("{prefix}2"), 2));
    let s = second.wait_for("the guest's frames read", |s| {
        u(vm(s, "vm"), "rx_frames") == 10
    });
    assert_eq!(vm(&s, "vm")["mode"], "protected", "{s}");
    // Nothing may leave before a controller commits: watch for a while.
    for _ in 0..6 {
        std::thread::sleep(Duration::from_millis(50));
        let s = second.stats().expect("stats");
        let v = vm(&s, "vm");
        assert_eq!(u(v, "tx_frames"), 0, "output left with no controller: {v}");
        assert_eq!(u(v, "held_frames"), 10, "{v}");
        assert_eq!(u(port(&s, "egress", 0), "tx_frames"), 0, "{s}");
    }
    assert!(
        state.contains("vm = \"protected\""),
        "state file: {state:?}"
    );
    assert!(
        second
            .logs()
            .contains("was protected when epochgate last stopped"),
        "{}",
        second.logs()
    );

    // The VMM comes back: it adopts the protected VM in a new open epoch and commits it.
    let mut vmm = Client::connect(d.join("control.sock"), "vm").expect("hello again");
    let w = vmm.welcome();
    assert_eq!(w.mode, Mode::Protected);
    let f = vmm.fence(w.epoch).expect("fence");
    assert_eq!(f.frames, 10, "the held frames are the new epoch's");
    vmm.commit(w.epoch).expect("commit");
    second.wait_for("the committed frames transmitted", |s| {
        u(vm(s, "vm"), "tx_frames") == 10
    });
    drop(vmm);
    let stats = second.stop();
    assert_balanced(&stats);
    assert_eq!(read_pcap(&d.join("egress-2.pcap")), frames);
    // (A killed run never flushed its capture: an empty file.)
    let first_out = d.join("egress-1.pcap");
    assert!(
        std::fs::metadata(&first_out).unwrap().len() == 0 || read_pcap(&first_out).is_empty(),
        "nothing left in the first run"
    );
}

#[test]
fn protection_given_at_run_time_survives_sigterm_and_a_restart() {
    protection_survives("TERM", "eg-state-term");
}

#[test]
fn protection_given_at_run_time_survives_sigkill_and_a_restart() {
    protection_survives("KILL", "eg-state-kill");
}

/// After unprotect the VM is pass-through again, and a restart keeps it so (the file follows
/// every change, not only the safer ones).
#[test]
fn unprotect_is_remembered_too() {
    let _g = serial();
    let dir = tempdir();
    let d = dir.path();
    write_pcap(&d.join("empty.pcap"), &[]);
    write_pcap(&d.join("guest.pcap"), &[]);
    let first = Running::start(d, &config(d, "eg-state-unp1", 1));
    {
        let mut eg = first;
        eg.wait_for_path(&d.join("control.sock"));
        let mut vmm = Client::connect(d.join("control.sock"), "vm").expect("hello");
        vmm.protect().expect("protect");
        let state = std::fs::read_to_string(d.join("control.sock.state")).unwrap();
        assert!(state.contains("vm = \"protected\""), "{state}");
        vmm.unprotect(vmm_shim::proto::Release::Release)
            .expect("unprotect");
        let state = std::fs::read_to_string(d.join("control.sock.state")).unwrap();
        assert!(state.contains("vm = \"passthrough\""), "{state}");
        drop(vmm);
        eg.stop();
    }
    write_pcap(&d.join("guest.pcap"), &guest(5));
    let mut second = Running::start(d, &config(d, "eg-state-unp2", 2));
    second.wait_for("pass-through frames sent", |s| {
        u(vm(s, "vm"), "tx_frames") == 5
    });
    second.stop();
}

/// A state file that cannot be trusted is an error naming it; so is a missing one when a
/// crashed run left its control socket. epochgate does not start (nothing can leak).
#[test]
fn an_untrustworthy_state_file_stops_epochgate_naming_it() {
    let _g = serial();
    let dir = tempdir();
    let d = dir.path();
    write_pcap(&d.join("empty.pcap"), &[]);
    write_pcap(&d.join("guest.pcap"), &[]);
    let cfg = d.join("c.toml");
    std::fs::write(&cfg, config(d, "eg-state-bad", 1)).unwrap();
    let run = || {
        let out = std::process::Command::new(EPOCHGATE)
            .args(["run", "--duration", "1", "--config"])
            .arg(&cfg)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let state = d.join("control.sock.state");
    std::fs::write(&state, "version = 1\n[vms]\nvm = \"maybe\"\n").unwrap();
    let (code, err) = run();
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("control.sock.state") && err.contains("corrupt") && err.contains("maybe"),
        "{err}"
    );
    std::fs::write(&state, "").unwrap();
    let (code, err) = run();
    assert_eq!(code, Some(1), "an empty file is corrupt too: {err}");
    assert!(err.contains("control.sock.state"), "{err}");

    // No state file, but a control socket left by a process that was killed.
    std::fs::remove_file(&state).unwrap();
    let stale = std::os::unix::net::UnixListener::bind(d.join("control.sock")).unwrap();
    drop(stale);
    let (code, err) = run();
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("control.sock.state")
            && err.contains("missing")
            && err.contains("control.sock"),
        "{err}"
    );
    // A first start (no state, no socket) runs, and leaves a state file for the next one.
    std::fs::remove_file(d.join("control.sock")).unwrap();
    let (code, err) = run();
    assert_eq!(code, Some(0), "{err}");
    let text = std::fs::read_to_string(&state).unwrap();
    assert!(text.contains("vm = \"passthrough\""), "{text}");
}

/// A state file deleted after a clean stop is not a first start: the control socket file the
/// run left says a run was there, so epochgate refuses to guess (the VM was protected).
#[test]
fn a_state_file_deleted_after_a_clean_stop_stops_epochgate() {
    let _g = serial();
    let dir = tempdir();
    let d = dir.path();
    write_pcap(&d.join("empty.pcap"), &[]);
    write_pcap(&d.join("guest.pcap"), &[]);
    let mut eg = Running::start(d, &config(d, "eg-state-del1", 1));
    eg.wait_for_path(&d.join("control.sock"));
    {
        let mut vmm = Client::connect(d.join("control.sock"), "vm").expect("hello");
        vmm.protect().expect("protect");
    }
    eg.stop();
    std::fs::remove_file(d.join("control.sock.state")).expect("the state file was there");
    write_pcap(&d.join("guest.pcap"), &guest(5));
    let err = run_refused(
        &d.join("again.toml"),
        &config(d, "eg-state-del2", 2),
        &["--duration", "1"],
    );
    assert!(
        err.contains("missing") && err.contains("control.sock"),
        "{err}"
    );
    let sent = d.join("egress-2.pcap");
    assert!(
        !sent.exists()
            || std::fs::metadata(&sent).unwrap().len() == 0
            || read_pcap(&sent).is_empty(),
        "nothing may leave"
    );
}
