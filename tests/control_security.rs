//! Security of the two sockets, with a real epochgate (issue 13, item 6): socket files get the
//! owner, group and modes the config names; a uid that is not allowed (a real process running
//! as `nobody`, 65534) is refused on the control socket and on the admin socket, counted, and let
//! in once its group is listed; the admin socket is read-only unless `[admin] writable = true`,
//! and then `epochgate fail VM` fences a VM off like a lost controller (its session told why and
//! closed, its held frames discarded as `controller-lost`, none on the egress). Needs root.

mod common;
use common::*;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

const FRAMES: usize = 20;
const NOBODY: u32 = 65534;

/// epochgate with one protected VM `web` holding [`FRAMES`] frames; `extra` goes after
/// `[control]`'s socket keys (more `[control]` keys, then other sections).
fn start(d: &Path, prefix: &str, extra: &str) -> Running {
    start_held_web(d, prefix, extra, FRAMES, "admin.sock").0
}

/// `epochgate ARGS` as root, or as nobody.
fn epochgate(args: &[&str], as_nobody: bool) -> (bool, String, String) {
    let mut cmd = Command::new(EPOCHGATE);
    cmd.args(args);
    if as_nobody {
        cmd.uid(NOBODY).gid(NOBODY);
    }
    let out = cmd.output().expect("run epochgate");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn control_stats(admin: &Path) -> Value {
    let (ok, out, err) = epochgate(
        &["stats", "--json", "--socket", &admin.to_string_lossy()],
        false,
    );
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).expect("stats JSON");
    v["control"].clone()
}

/// The shim CLI as nobody: its first line (the welcome or the refusal) and the process.
fn shim_as_nobody(
    socket: &Path,
) -> (
    std::process::Child,
    BufReader<std::process::ChildStdout>,
    Value,
) {
    let mut child = Command::new(shim_path())
        .arg("--socket")
        .arg(socket)
        .args(["--vm", "web", "session"])
        .uid(NOBODY)
        .gid(NOBODY)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run the shim as nobody");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("a line");
    let v: Value = serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("{line:?}: {e}"));
    (child, out, v)
}

#[test]
fn sockets_owners_modes_peer_credentials_and_operator_writes() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipping: needs root (to run peers as nobody and chown the sockets)");
        return;
    }
    let _g = serial();
    let dir = tempdir();
    let d = dir.path();
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let (control, admin) = (d.join("control.sock"), d.join("admin.sock"));
    let admin_s = admin.to_string_lossy().into_owned();

    // Run 1: the sockets belong to group nogroup (nobody may open them: mode 0660), but the
    // peer check does not allow nobody; the admin socket is read-only.
    let eg = start(
        d,
        "eg-sec-1",
        "socket_group = \"nogroup\"\nsocket_owner = 0\nsocket_mode = \"0670\"\nadmin_socket_mode = \"0660\"\n",
    );
    let (c, a) = (
        std::fs::metadata(&control).unwrap(),
        std::fs::metadata(&admin).unwrap(),
    );
    assert_eq!((c.uid(), c.gid(), c.mode() & 0o7777), (0, NOBODY, 0o670));
    assert_eq!((a.uid(), a.gid(), a.mode() & 0o7777), (0, NOBODY, 0o660));

    let (mut child, _, refused) = shim_as_nobody(&control);
    let _ = child.wait();
    assert_eq!(refused["error"], "permission-denied", "{refused}");
    let text = refused["text"].as_str().unwrap_or_default();
    assert!(
        text.contains("uid 65534") && text.contains("control.allowed_uids"),
        "{refused}"
    );
    let (ok, _, err) = epochgate(&["stats", "--socket", &admin_s], true);
    assert!(
        !ok && err.contains("permission denied: uid 65534 is not allowed"),
        "{err}"
    );
    // A write on the read-only socket, even from root.
    let (ok, _, err) = epochgate(&["fail", "web", "--socket", &admin_s], false);
    assert!(!ok, "a write on a read-only admin socket: {err}");
    assert!(
        err.contains("the admin socket is read-only") && err.contains("[admin] writable = true"),
        "{err}"
    );
    let c = control_stats(&admin);
    assert_eq!(u(&c, "refused_peer"), 1, "{c}");
    assert_eq!(u(&c, "admin_refused_peer"), 1, "{c}");
    assert_eq!(u(&c, "admin_writes_refused"), 1, "{c}");
    let st = eg.stop();
    assert_eq!(u(vm(&st, "web"), "tx_frames"), 0, "nothing was committed");

    // Run 2: nogroup is allowed, and the admin socket is writable (by root only).
    let eg = start(
        d,
        "eg-sec-2",
        &format!(
            "socket_group = {NOBODY}\nallowed_gids = [{NOBODY}]\n\n[admin]\nwritable = true\n"
        ),
    );
    let (ok, out, err) = epochgate(&["vms", "--socket", &admin_s], true);
    assert!(ok, "nobody, now allowed, reads: {err}");
    assert!(out.contains("web"), "{out}");
    let (mut child, mut out, welcome) = shim_as_nobody(&control);
    assert_eq!(welcome["reply"], "welcome", "{welcome}");
    // nobody may read but not write.
    let (ok, _, err) = epochgate(&["fail", "web", "--socket", &admin_s], true);
    assert!(
        !ok && err.contains("may read but not write") && err.contains("admin.write_uids"),
        "{err}"
    );
    // The operator fails web: its session is told why and closed, what it held discarded.
    let (ok, said, err) = epochgate(&["fail", "web", "--json", "--socket", &admin_s], false);
    assert!(ok, "{err}");
    let answer: Value = serde_json::from_str(said.trim()).expect("JSON");
    assert_eq!(answer["was"], "protected", "{answer}");
    assert_eq!(answer["now"], "failed", "{answer}");
    assert_eq!(answer["session"], "closed", "{answer}");
    let mut rest = String::new();
    for line in (&mut out).lines() {
        let line = line.expect("line");
        rest.push_str(&line);
        rest.push('\n');
    }
    assert!(
        rest.contains("the operator failed VM") && rest.contains("controller-lost"),
        "the session was not told why: {rest}"
    );
    drop(child.stdin.take());
    let _ = child.wait();
    let mut eg = eg;
    let st = eg.wait_for("web failed", |s| vm(s, "web")["mode"] == "failed");
    assert_eq!(dropped(vm(&st, "web"), "controller-lost"), FRAMES as u64);
    let c = control_stats(&admin);
    assert_eq!(u(&c, "operator_failed"), 1, "{c}");
    assert_eq!(u(&c, "admin_writes_refused"), 1, "{c}");
    assert_eq!(u(&c, "refused_peer"), 0, "{c}");
    // Failing it again: no session and no longer protected, so nothing to fail.
    let (ok, _, err) = epochgate(&["fail", "web", "--socket", &admin_s], false);
    assert!(!ok && err.contains("nothing to fail"), "{err}");
    let st = eg.stop();
    assert_balanced(&st);
    assert_eq!(u(vm(&st, "web"), "tx_frames"), 0);
    assert!(read_pcap(&d.join("egress.pcap")).is_empty());
}
