//! Output commit end to end: a real epochgate process with vhost-user ports, a virtio-user peer
//! playing the guests and the uplink, and the VMM shim (library and CLI) on the real control
//! socket. The peer sends in steps, so each test knows exactly which frames the guest had sent
//! before each fence, and checks what reaches the uplink after every step.

mod common;
use common::*;
use epochgate::tools::gen::{self, Stream};
use epochgate::wire::frame::MacAddr;
use serde_json::Value;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use vmm_shim::proto::{self, ErrorCode, Mode, Release, Reply, Request};
use vmm_shim::{Client, ShimError};

const PROT: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 0x01]);
const PASS: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 0x02]);
const OTHER: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 0x03]);
const SPARE: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 0x04]);
const GW: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0xfe]);

/// Peer port numbers.
const UPLINK: usize = 0;
const P_PROT: usize = 1;
const P_PASS: usize = 2;
const P_OTHER: usize = 3;
const P_SPARE: usize = 4;

/// How long to watch the uplink for frames that must not come.
const SETTLE: Duration = Duration::from_millis(300);

/// epochgate with an uplink and four VMs on vhost-user (`prot` and `other` protected, `pass`
/// pass-through, `spare` a standby copy), the peer attached to all four, and
/// the uplink recorded into `egress.pcap`.
struct Gate {
    eg: Running,
    peer: Option<Peer>,
    dir: PathBuf,
}

impl Gate {
    fn start(dir: &Path, prefix: &str, control_extra: &str) -> Gate {
        let d = dir.display();
        let config = format!(
            "[eal]\nlcores = \"0-1\"\nmemory_mb = 512\nhugepages = false\nfile_prefix = \"{prefix}-{pid}\"\n\n\
             [control]\nsocket = \"{d}/control.sock\"\nadmin_socket = \"{d}/admin.sock\"\n{control_extra}\n\
             [egress]\nport = \"net_vhost0,iface={d}/uplink.sock\"\n\n\
             [[vm]]\nname = \"prot\"\nport = \"net_vhost1,iface={d}/prot.sock\"\nmac = \"{PROT}\"\nmode = \"protected\"\n\n\
             [[vm]]\nname = \"pass\"\nport = \"net_vhost2,iface={d}/pass.sock\"\nmac = \"{PASS}\"\n\n\
             [[vm]]\nname = \"other\"\nport = \"net_vhost3,iface={d}/other.sock\"\nmac = \"{OTHER}\"\nmode = \"protected\"\n\n\
             [[vm]]\nname = \"spare\"\nport = \"net_vhost4,iface={d}/spare.sock\"\nmac = \"{SPARE}\"\nmode = \"standby\"\n\
             announce = [\"10.9.0.4\", \"fd00::4\"]\nannounce_count = 1\n",
            pid = std::process::id(),
        );
        let mut eg = Running::start(dir, &config);
        let socks =
            ["uplink", "prot", "pass", "other", "spare"].map(|n| dir.join(format!("{n}.sock")));
        let peer = eg.attach_peer(prefix, &socks, &dir.join("control.sock"));
        Gate {
            eg,
            peer: Some(peer),
            dir: dir.to_path_buf(),
        }
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("control.sock")
    }

    fn client(&self, vm: &str) -> Client {
        Client::connect(self.socket(), vm).unwrap_or_else(|e| panic!("session for {vm}: {e}"))
    }

    fn peer(&mut self) -> &mut Peer {
        self.peer.as_mut().expect("peer running")
    }

    /// The uplink has received exactly `n` frames, and no more come within [`SETTLE`].
    fn uplink_holds_at(&mut self, n: u64, what: &str) {
        self.peer().wait_received(UPLINK, n);
        std::thread::sleep(SETTLE);
        let got = self.peer().received()[UPLINK];
        assert_eq!(
            got, n,
            "{what}: the uplink got {got} frames, expected exactly {n}"
        );
    }

    /// Ends the peer and epochgate; returns what reached the uplink and the final counters.
    fn finish(mut self) -> (Vec<Vec<u8>>, Value) {
        self.peer.take().expect("peer").finish();
        let stats = self.eg.stop();
        assert_balanced(&stats);
        (read_pcap(&self.dir.join("egress.pcap")), stats)
    }
}

/// The frames of stream `id` in `out`, in order.
fn of_stream(out: &[Vec<u8>], id: u32) -> Vec<Vec<u8>> {
    out.iter()
        .filter(|f| gen::stamp(f).is_some_and(|(i, _)| i == id))
        .cloned()
        .collect()
}

fn refused(r: Result<impl std::fmt::Debug, ShimError>, code: ErrorCode, what: &str) -> String {
    match r {
        Err(ShimError::Refused { code: c, text }) => {
            assert_eq!(
                c, code,
                "{what}: refused with {c:?} ({text}), expected {code:?}"
            );
            assert!(!text.is_empty(), "{what}: the error has no text");
            text
        }
        other => panic!("{what}: expected a {code:?} error, got {other:?}"),
    }
}

#[test]
fn fence_then_commit_releases_exactly_the_epoch_in_order() {
    let _g = serial();
    let dir = tempdir();
    let mut g = Gate::start(dir.path(), "eg-oc-a", "");
    let mut c = g.client("prot");
    assert_eq!(c.welcome().mode, Mode::Protected);
    assert_eq!(c.welcome().epoch, 1);

    let first = stream_frames(1, PROT, 0..40);
    let rest = stream_frames(1, PROT, 40..100);
    g.peer().send(P_PROT, &first);
    let f = c.fence(1).expect("fence 1");
    assert_eq!(f.epoch, 1);
    assert_eq!(
        f.frames, 40,
        "epoch 1 is exactly what the guest sent before the fence"
    );
    assert_eq!(f.bytes, first.iter().map(|x| x.len() as u64).sum::<u64>());
    g.peer().send(P_PROT, &rest);
    g.uplink_holds_at(0, "sealed but not committed");

    assert_eq!(c.commit(1).expect("commit 1"), 40);
    g.uplink_holds_at(40, "after commit 1 (epoch 2 still open)");

    assert_eq!(c.fence(2).expect("fence 2").frames, 60);
    g.uplink_holds_at(40, "epoch 2 sealed, not committed");
    assert_eq!(c.commit(2).expect("commit 2"), 60);
    g.uplink_holds_at(100, "after commit 2");

    let st = c.stats().expect("stats");
    assert_eq!(
        (st.open_epoch, st.sealed_epoch, st.committed_epoch),
        (3, 2, 2)
    );
    assert_eq!(st.held_frames, 0);
    drop(c);
    let (out, stats) = g.finish();
    let want: Vec<Vec<u8>> = first.into_iter().chain(rest).collect();
    assert_eq!(
        out, want,
        "the uplink must carry exactly epoch 1 then epoch 2, in order"
    );
    let v = vm(&stats, "prot");
    assert_eq!(u(v, "tx_frames"), 100);
    assert_eq!(u(v, "epochs_sealed"), 2);
    assert_eq!(u(v, "epochs_committed"), 2);
    // A paused guest's vhost-user ring seen empty is final: no fence is unproven.
    assert_eq!(u(v, "fences_unproven"), 0, "{v}");
}

#[test]
fn arp_ipv6_and_vlan_frames_are_held_like_any_other() {
    let _g = serial();
    let dir = tempdir();
    let mut g = Gate::start(dir.path(), "eg-oc-b", "");
    let mut c = g.client("prot");
    let s = Stream {
        id: 1,
        src: PROT,
        dst: GW,
        vlan: None,
    };
    // Every kind the generator makes, and an explicitly VLAN-tagged stream, and broadcasts.
    let mut held = gen::frames(&s, 50);
    held.extend(gen::frames(
        &Stream {
            vlan: Some(42),
            ..s.clone()
        },
        10,
    ));
    let ethertypes: std::collections::BTreeSet<u16> = held
        .iter()
        .map(|f| u16::from_be_bytes([f[12], f[13]]))
        .collect();
    for (t, name) in [
        (0x0806, "ARP"),
        (0x86dd, "IPv6"),
        (0x8100, "802.1Q"),
        (0x0800, "IPv4"),
    ] {
        assert!(ethertypes.contains(&t), "test traffic has no {name} frame");
    }
    g.peer().send(P_PROT, &held);
    g.uplink_holds_at(0, "open epoch with ARP, IPv6 and VLAN frames");
    assert_eq!(c.fence(1).expect("fence").frames, 60);
    g.uplink_holds_at(0, "sealed epoch with ARP, IPv6 and VLAN frames");
    c.commit(1).expect("commit");
    g.uplink_holds_at(60, "committed");
    drop(c);
    let (out, _) = g.finish();
    assert_eq!(out, held);
}

#[test]
fn pipelined_epochs_are_committed_one_at_a_time() {
    let _g = serial();
    let dir = tempdir();
    let mut g = Gate::start(dir.path(), "eg-oc-c", "");
    let mut c = g.client("prot");
    let e1 = stream_frames(1, PROT, 0..30);
    let e2 = stream_frames(1, PROT, 30..50);
    let e3 = stream_frames(1, PROT, 50..55);
    g.peer().send(P_PROT, &e1);
    assert_eq!(c.fence(1).expect("fence 1").frames, 30);
    g.peer().send(P_PROT, &e2);
    assert_eq!(c.fence(2).expect("fence 2").frames, 20);
    g.peer().send(P_PROT, &e3);
    g.uplink_holds_at(0, "two sealed epochs outstanding");
    let st = c.stats().expect("stats");
    assert_eq!(
        (st.sealed_epoch, st.committed_epoch, st.held_frames),
        (2, 0, 55)
    );

    assert_eq!(c.commit(1).expect("commit 1"), 30);
    g.uplink_holds_at(30, "epoch 1 committed, epoch 2 still in transfer");
    assert_eq!(c.commit(2).expect("commit 2"), 20);
    g.uplink_holds_at(50, "epoch 2 committed, epoch 3 open");
    refused(c.commit(2), ErrorCode::WrongEpoch, "commit 2 again");
    refused(
        c.commit(3),
        ErrorCode::NotSealed,
        "commit of the open epoch",
    );
    // Stop epochgate with the session still up: the open epoch is discarded at exit, and the
    // session is told why.
    let (out, stats) = g.finish();
    // (Checkpoint requests for the open epoch may come first.)
    let end = loop {
        match c.next_event(Some(Duration::from_secs(10))) {
            Ok(Some(_)) => continue,
            other => break other,
        }
    };
    refused(end, ErrorCode::ShuttingDown, "epochgate stopping");
    let want: Vec<Vec<u8>> = e1.into_iter().chain(e2).collect();
    assert_eq!(out, want);
    // The open epoch 3 was never committed: discarded at exit, counted.
    assert_eq!(dropped(vm(&stats, "prot"), "uncommitted-at-exit"), 5);
}

/// The shim CLI as a VMM would script it.
struct ShimCli {
    child: Child,
    stdin: std::process::ChildStdin,
    out: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
}

impl ShimCli {
    fn start(socket: &Path, vm: &str) -> ShimCli {
        let mut child = Command::new(shim_bin())
            .arg("--socket")
            .arg(socket)
            .args(["--vm", vm, "session"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn epochgate-shim");
        let stdin = child.stdin.take().expect("stdin");
        let out = std::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
        ShimCli { child, stdin, out }
    }

    fn line(&mut self) -> Value {
        let l = self
            .out
            .next()
            .expect("a line from the shim")
            .expect("read");
        serde_json::from_str(&l).unwrap_or_else(|e| panic!("shim printed {l:?}: {e}"))
    }

    /// Sends one command and returns its reply line (events are skipped).
    fn say(&mut self, cmd: &str) -> Value {
        writeln!(self.stdin, "{cmd}").expect("write");
        self.stdin.flush().expect("flush");
        loop {
            let v = self.line();
            if v.get("reply").is_some() {
                return v;
            }
        }
    }
}

#[test]
fn a_vmm_killed_mid_epoch_leaks_nothing_and_its_vm_can_be_adopted_again() {
    let _g = serial();
    let dir = tempdir();
    let mut g = Gate::start(dir.path(), "eg-oc-d", "");
    let mut shim = ShimCli::start(&g.socket(), "prot");
    let w = shim.line();
    assert_eq!(w["reply"], "welcome", "{w}");
    assert_eq!(w["epoch"], 1, "{w}");

    let committed = stream_frames(1, PROT, 0..10);
    let sealed = stream_frames(1, PROT, 10..35);
    let open = stream_frames(1, PROT, 35..50);
    g.peer().send(P_PROT, &committed);
    let r = shim.say("fence 1");
    assert_eq!(
        (r["reply"].as_str(), r["frames"].as_u64()),
        (Some("fenced"), Some(10)),
        "{r}"
    );
    let r = shim.say("commit 1");
    assert_eq!(r["reply"], "committed", "{r}");
    g.peer().send(P_PROT, &sealed);
    let r = shim.say("fence 2");
    assert_eq!(r["frames"], 25, "{r}");
    g.peer().send(P_PROT, &open);
    g.uplink_holds_at(10, "epoch 1 committed, 2 sealed, 3 open");

    // The VMM dies: SIGKILL, no goodbye.
    signal(shim.child.id(), "KILL");
    let _ = shim.child.wait();
    let st =
        g.eg.wait_for("the VM to fail", |s| vm(s, "prot")["mode"] == "failed");
    let v = vm(&st, "prot");
    assert_eq!(
        dropped(v, "controller-lost"),
        40,
        "sealed and open epochs discarded: {v}"
    );
    assert_eq!(u(v, "held_frames"), 0, "{v}");
    // Output of a failed VM does not leave either.
    g.peer().send(P_PROT, &stream_frames(1, PROT, 50..53));
    g.uplink_holds_at(10, "after the controller died");
    let st = g.eg.wait_for("frames of the failed VM counted", |s| {
        dropped(vm(s, "prot"), "failed") == 3
    });
    assert_eq!(u(vm(&st, "prot"), "tx_frames"), 10);

    // A new controller adopts the VM: protected again, in a new epoch; old epochs are gone.
    let mut c = g.client("prot");
    assert_eq!(c.welcome().mode, Mode::Protected);
    let epoch = c.welcome().epoch;
    assert!(
        epoch > 3,
        "a new epoch, after every epoch the dead controller used: {epoch}"
    );
    refused(
        c.commit(2),
        ErrorCode::WrongEpoch,
        "commit of a discarded epoch",
    );
    let fresh = stream_frames(1, PROT, 53..60);
    g.peer().send(P_PROT, &fresh);
    assert_eq!(c.fence(epoch).expect("fence").frames, 7);
    c.commit(epoch).expect("commit");
    g.uplink_holds_at(17, "after the new controller's commit");
    drop(c);
    let (out, stats) = g.finish();
    let want: Vec<Vec<u8>> = committed.into_iter().chain(fresh).collect();
    assert_eq!(out, want, "only committed epochs may reach the uplink");
    let v = vm(&stats, "prot");
    assert_eq!(dropped(v, "controller-lost"), 40);
    assert_eq!(dropped(v, "failed"), 3);
}

fn exchange(s: &socket2::Socket, bytes: &[u8]) -> Reply {
    use std::io::Read;
    s.send(bytes).expect("send");
    let mut buf = vec![0u8; proto::MAX_MESSAGE + 1];
    let n = (&*s).read(&mut buf).expect("a reply");
    proto::decode_reply(&buf[..n]).expect("a well-formed reply")
}

fn assert_error(r: &Reply, code: ErrorCode, what: &str) {
    match r {
        Reply::Error { code: c, text } => {
            assert_eq!(*c, code, "{what}: {text}");
            assert!(!text.is_empty(), "{what}: no text");
        }
        other => panic!("{what}: expected {code:?}, got {other:?}"),
    }
}

#[test]
fn bad_control_input_is_refused_and_changes_nothing() {
    let _g = serial();
    let dir = tempdir();
    // Reachable by another uid (so that the uid check is what refuses it, not the file mode).
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut g = Gate::start(dir.path(), "eg-oc-e", "socket_mode = \"0666\"\n");
    let mode = std::fs::metadata(g.socket())
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o666, "control.socket_mode");

    // A healthy session on another VM, mid-epoch, that must not notice anything.
    let mut other = g.client("other");
    let o1 = stream_frames(3, OTHER, 0..20);
    g.peer().send(P_OTHER, &o1);
    assert_eq!(other.fence(1).expect("fence").frames, 20);

    let mut c = g.client("prot");
    let p1 = stream_frames(1, PROT, 0..12);
    g.peer().send(P_PROT, &p1);
    refused(c.commit(1), ErrorCode::NotSealed, "commit before fence");
    refused(c.fence(2), ErrorCode::WrongEpoch, "fence of a future epoch");
    refused(
        c.commit(7),
        ErrorCode::WrongEpoch,
        "commit of a future epoch",
    );
    refused(
        c.promote(Mode::Protected),
        ErrorCode::WrongMode,
        "promote a VM that is not standby",
    );
    let r = c.request(&Request::Hello {
        version: proto::VERSION,
        vm: "pass".into(),
    });
    assert_error(
        &r.expect("reply"),
        ErrorCode::AlreadyAdopted,
        "second Hello on a session",
    );

    // Unknown VM; a second session for an adopted VM.
    let connect = |vm: &str| Client::connect(g.socket(), vm).map(|_| ());
    refused(connect("nosuchvm"), ErrorCode::UnknownVm, "unknown VM");
    refused(connect("prot"), ErrorCode::VmBusy, "second session");
    refused(connect("other"), ErrorCode::VmBusy, "second session");

    // Garbage on a raw connection: before Hello, and after.
    let s = raw_session(&g.socket(), Duration::from_secs(10));
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    for len in [0usize, 1, 7, 8, 9, 64, 300] {
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng as u8
            })
            .collect();
        assert_error(
            &exchange(&s, &bytes),
            ErrorCode::BadMessage,
            &format!("{len} random bytes"),
        );
    }
    assert_error(
        &exchange(&s, &vec![0u8; 4000]),
        ErrorCode::BadMessage,
        "oversize",
    );
    let mut v2 = Request::Ping { token: 1 }.encode();
    v2[2] = 2;
    assert_error(&exchange(&s, &v2), ErrorCode::Version, "version 2");
    assert_error(
        &exchange(&s, &Request::Fence { epoch: 1 }.encode()),
        ErrorCode::NotAdopted,
        "fence before Hello",
    );
    // The raw session still works: a good Hello for a free VM would succeed; ping does.
    assert_eq!(
        exchange(&s, &Request::Ping { token: 9 }.encode()),
        Reply::Pong { token: 9 }
    );
    drop(s);

    // A uid that is not allowed.
    let out = Command::new(shim_bin())
        .arg("--socket")
        .arg(g.socket())
        .args(["--vm", "pass", "session"])
        .uid(65534)
        .gid(65534)
        .stdin(Stdio::null())
        .output()
        .expect("run the shim as nobody");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "a disallowed uid got a session: {text}"
    );
    let line: Value = serde_json::from_str(text.lines().next().unwrap_or("{}")).expect("JSON");
    assert_eq!(line["error"], "permission-denied", "{line}");

    // Nothing changed: epochs, held frames, and both sessions go on.
    let st = c.stats().expect("stats");
    assert_eq!(
        (st.open_epoch, st.sealed_epoch, st.committed_epoch),
        (1, 0, 0)
    );
    assert_eq!(st.held_frames, 12);
    g.uplink_holds_at(0, "after the bad input");
    assert_eq!(c.fence(1).expect("fence").frames, 12);
    c.commit(1).expect("commit");
    other.commit(1).expect("commit of the other VM");
    g.uplink_holds_at(32, "both VMs committed");
    drop((c, other));
    let (out, _) = g.finish();
    assert_eq!(of_stream(&out, 1), p1);
    assert_eq!(of_stream(&out, 3), o1);
}

use std::os::unix::process::CommandExt;

#[test]
fn passthrough_frames_flow_while_a_protected_vm_is_held() {
    let _g = serial();
    let dir = tempdir();
    let mut g = Gate::start(dir.path(), "eg-oc-f", "");
    let mut c = g.client("prot");
    let held = stream_frames(1, PROT, 0..50);
    let free = stream_frames(2, PASS, 0..200);
    g.peer().send(P_PROT, &held);
    g.peer().send(P_PASS, &free);
    g.uplink_holds_at(200, "pass-through frames only");
    assert_eq!(c.fence(1).expect("fence").frames, 50);
    g.uplink_holds_at(200, "the protected epoch is sealed, not committed");
    c.commit(1).expect("commit");
    g.uplink_holds_at(250, "committed");
    drop(c);
    let (out, stats) = g.finish();
    assert_eq!(
        of_stream(&out, 2),
        free,
        "pass-through frames altered or reordered"
    );
    assert_eq!(of_stream(&out, 1), held);
    assert_eq!(u(vm(&stats, "pass"), "tx_frames"), 200);
}

/// Random interleavings of guest sends, fences and commits (pipelined up to three deep): after
/// every step the uplink carries exactly the frames of the committed epochs, in order.
#[test]
fn random_interleavings_never_release_an_uncommitted_frame() {
    let _g = serial();
    let dir = tempdir();
    let mut g = Gate::start(dir.path(), "eg-oc-r", "");
    let mut c = g.client("prot");
    let mut rng = 0x2545_f491_4f6c_dd1du64 ^ u64::from(std::process::id());
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut seq = 0u32;
    let mut open_frames = 0u64; // sent in the open epoch
    let mut sealed: Vec<(u64, u64)> = Vec::new(); // (epoch, frames) not yet committed
    let mut released = 0u64;
    let mut epoch = 1u64;
    for _ in 0..24 {
        match next() % 4 {
            0 | 1 => {
                let n = (next() % 40) as u32 + 1;
                g.peer().send(P_PROT, &stream_frames(1, PROT, seq..seq + n));
                seq += n;
                open_frames += u64::from(n);
            }
            2 if sealed.len() < 3 => {
                let f = c.fence(epoch).expect("fence");
                assert_eq!(
                    f.frames, open_frames,
                    "epoch {epoch} is exactly what was sent"
                );
                sealed.push((epoch, open_frames));
                open_frames = 0;
                epoch += 1;
            }
            _ => {
                if sealed.is_empty() {
                    refused(
                        c.commit(epoch),
                        ErrorCode::NotSealed,
                        "commit of the open epoch",
                    );
                    continue;
                }
                // Commit one or all outstanding epochs.
                let k = (next() as usize % sealed.len()) + 1;
                let (upto, _) = sealed[k - 1];
                let n: u64 = sealed.drain(..k).map(|(_, f)| f).sum();
                assert_eq!(c.commit(upto).expect("commit"), n);
                released += n;
            }
        }
        g.uplink_holds_at(released, "after a random step");
    }
    drop(c);
    let (out, _) = g.finish();
    let want = stream_frames(1, PROT, 0..released as u32);
    assert_eq!(
        out, want,
        "the uplink must be exactly the committed prefix, in order"
    );
}

/// Unprotect (release and drop), protect again, discard, and promoting a standby copy: each
/// does what it says to the frames, counted, and nothing else.
#[test]
fn unprotect_discard_and_promote_act_on_held_frames_as_documented() {
    let _g = serial();
    let dir = tempdir();
    let mut g = Gate::start(dir.path(), "eg-oc-l", "");
    let mut c = g.client("prot");
    let a = stream_frames(1, PROT, 0..10);
    let b = stream_frames(1, PROT, 10..15);
    g.peer().send(P_PROT, &a);
    assert_eq!(c.fence(1).expect("fence").frames, 10);
    g.peer().send(P_PROT, &b);
    // The secondary is lost: the primary goes on alone, and what it held leaves.
    assert_eq!(c.unprotect(Release::Release).expect("unprotect"), (15, 0));
    g.uplink_holds_at(15, "unprotect release");
    let free = stream_frames(1, PROT, 15..20);
    g.peer().send(P_PROT, &free);
    g.uplink_holds_at(20, "pass-through after unprotect");
    refused(
        c.fence(2),
        ErrorCode::NotProtected,
        "fence while not protected",
    );

    // Protected again: a new epoch, larger than any before.
    let e = c.protect().expect("protect");
    assert!(e > 2, "epoch {e}");
    g.peer().send(P_PROT, &stream_frames(1, PROT, 20..24));
    g.uplink_holds_at(20, "held again");
    assert_eq!(c.discard().expect("discard"), 4);
    assert_eq!(
        c.fence(e).expect("fence").frames,
        0,
        "discarded frames are in no epoch"
    );
    assert_eq!(c.commit(e).expect("commit"), 0);
    g.peer().send(P_PROT, &stream_frames(1, PROT, 24..27));
    assert_eq!(c.fence(e + 1).expect("fence").frames, 3);
    assert_eq!(c.unprotect(Release::Drop).expect("unprotect"), (0, 3));
    g.uplink_holds_at(20, "discard and unprotect drop send nothing");

    // The standby copy: its output is dropped until it is promoted.
    let mut s = g.client("spare");
    assert_eq!(s.welcome().mode, Mode::Standby);
    g.peer().send(P_SPARE, &stream_frames(4, SPARE, 0..6));
    refused(s.fence(1), ErrorCode::NotProtected, "fence of a standby VM");
    refused(s.protect(), ErrorCode::WrongMode, "protect a standby VM");
    // Promotion announces the VM's addresses at once (they are epochgate's frames, not the
    // guest's output, so no epoch holds them).
    assert_eq!(
        s.promote(Mode::Protected).expect("promote"),
        2,
        "announcements"
    );
    g.uplink_holds_at(22, "gratuitous ARP and neighbour advertisement");
    let st = s.stats().expect("stats");
    assert_eq!(st.mode, Mode::Protected);
    let live = stream_frames(4, SPARE, 6..8);
    g.peer().send(P_SPARE, &live);
    g.uplink_holds_at(22, "promoted and protected: held");
    assert_eq!(s.fence(st.open_epoch).expect("fence").frames, 2);
    s.commit(st.open_epoch).expect("commit");
    g.uplink_holds_at(24, "the promoted VM's first commit");
    refused(
        s.promote(Mode::Passthrough),
        ErrorCode::WrongMode,
        "promote twice",
    );

    drop((c, s));
    let (out, stats) = g.finish();
    let want: Vec<Vec<u8>> = a.into_iter().chain(b).chain(free).collect();
    assert_eq!(of_stream(&out, 1), want);
    assert_eq!(of_stream(&out, 4), live);
    let notices = epochgate::wire::announce::frames(
        SPARE,
        None,
        &["10.9.0.4".parse().unwrap(), "fd00::4".parse().unwrap()],
    );
    let unstamped: Vec<Vec<u8>> = out
        .iter()
        .filter(|f| gen::stamp(f).is_none())
        .cloned()
        .collect();
    assert_eq!(
        unstamped, notices,
        "exactly the announcements, once, in config order"
    );
    let v = vm(&stats, "prot");
    assert_eq!(
        (dropped(v, "discarded"), dropped(v, "unprotect-drop")),
        (4, 3),
        "{v}"
    );
    assert_eq!(dropped(vm(&stats, "spare"), "standby"), 6);
}

/// The README's shell loop: a Remus-style checkpoint loop scripted with the CLI in a coproc.
#[test]
fn a_checkpoint_loop_scripted_in_shell_with_the_cli() {
    // The loop as the README has it: replies read past any event line (the 30 frames below
    // include immediate ones, whose checkpoint request may reach the session first).
    let _g = serial();
    let dir = tempdir();
    let mut g = Gate::start(dir.path(), "eg-oc-s", "");
    let sent = stream_frames(1, PROT, 0..30);
    g.peer().send(P_PROT, &sent);
    let script = r#"
set -eu
coproc SHIM { "$SHIM_BIN" --socket "$SOCKET" --vm prot session; }
reply() { local l; while read -r l <&"${SHIM[0]}"; do
    [[ $l == *'"reply"'* ]] && { printf '%s\n' "$l"; return 0; }; done; return 1; }
hello=$(reply)
n=$(sed 's/.*"epoch":\([0-9]*\).*/\1/' <<<"$hello")
for i in 1 2 3; do
    echo "fence $n" >&"${SHIM[1]}"; fenced=$(reply)
    echo "commit $n" >&"${SHIM[1]}"; committed=$(reply)
    echo "$fenced"; echo "$committed"
    n=$((n + 1))
done
"#;
    let out = Command::new("bash")
        .args(["-c", script])
        .env("SHIM_BIN", shim_bin())
        .env("SOCKET", g.socket())
        .output()
        .expect("bash");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(lines.len(), 6, "{text}");
    assert_eq!(lines[0]["reply"], "fenced", "{text}");
    assert_eq!(lines[0]["frames"], 30, "{text}");
    assert_eq!(lines[1]["reply"], "committed", "{text}");
    assert_eq!(lines[1]["frames"], 30, "{text}");
    assert_eq!(lines[4]["epoch"], 3, "{text}");
    g.uplink_holds_at(30, "after the scripted loop");
    let (out, _) = g.finish();
    assert_eq!(out, sent);
}

/// A session that goes silent past `control.liveness_timeout_ms` is a dead controller; one
/// that pings stays (here by hand, besides its shim's pinger).
#[test]
fn a_silent_session_fails_its_vm_after_the_liveness_timeout() {
    let _g = serial();
    let dir = tempdir();
    let mut g = Gate::start(dir.path(), "eg-oc-t", "liveness_timeout_ms = 400\n");
    let mut alive = g.client("other");
    // Without the shim's own pinger (which would keep it alive while it idles).
    let mut silent = Client::connect_with(g.socket(), "prot", vmm_shim::Options::without_pinger())
        .expect("session for prot");
    g.peer().send(P_PROT, &stream_frames(1, PROT, 0..8));
    g.peer().send(P_OTHER, &stream_frames(3, OTHER, 0..5));
    assert_eq!(silent.fence(1).expect("fence").frames, 8);
    // Keep the other session alive (pings) until the silent one's VM is seen failed.
    let mut st = Value::Null;
    for _ in 0..300 {
        std::thread::sleep(Duration::from_millis(100));
        alive.ping().expect("ping");
        st = g.eg.stats().unwrap_or(Value::Null);
        if st["vms"].is_array() && vm(&st, "prot")["mode"] == "failed" {
            break;
        }
    }
    assert_eq!(vm(&st, "prot")["mode"], "failed", "{st}");
    assert_eq!(dropped(vm(&st, "prot"), "controller-lost"), 8);
    assert_eq!(vm(&st, "other")["mode"], "protected", "{st}");
    assert_eq!(alive.fence(1).expect("fence").frames, 5);
    alive.commit(1).expect("commit");
    g.uplink_holds_at(5, "only the live session's commit");
    drop((alive, silent));
    g.finish();
}

fn tcp_ack(seq: u32) -> Vec<u8> {
    let mut f = Vec::new();
    etherparse::PacketBuilder::ethernet2(PROT.0, GW.0)
        .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
        .tcp(40000, 80, seq, 65535)
        .ack(1000)
        .write(&mut f, &[])
        .expect("build");
    f
}

fn udp(n: u8) -> Vec<u8> {
    let mut f = Vec::new();
    etherparse::PacketBuilder::ethernet2(PROT.0, GW.0)
        .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
        .udp(5000, 53)
        .write(&mut f, &[n; 20])
        .expect("build");
    f
}

/// Held frames are classified: pure ACKs let the checkpoint wait (a bounded deferral, then one
/// request), an immediate frame asks at once; one request per epoch; counted by reason.
#[test]
fn checkpoint_requests_reach_the_vmm_by_reason() {
    use vmm_shim::proto::{RequestReason, Urgency};
    let _g = serial();
    let dir = tempdir();
    let mut g = Gate::start(dir.path(), "eg-oc-q", "");
    let mut c = g.client("prot");
    let acks: Vec<Vec<u8>> = (0..3).map(|i| tcp_ack(i * 10)).collect();
    g.peer().send(P_PROT, &acks);
    let e = c
        .next_event(Some(Duration::from_secs(10)))
        .expect("event")
        .expect("a checkpoint request after the deferral");
    assert_eq!(
        (e.epoch, e.urgency, e.reason),
        (1, Urgency::Now, RequestReason::DeferralExpired)
    );
    assert_eq!(c.fence(1).expect("fence").frames, 3);
    c.commit(1).expect("commit");

    g.peer().send(P_PROT, &[udp(1)]);
    let e = c
        .next_event(Some(Duration::from_secs(10)))
        .expect("event")
        .expect("a request for an immediate frame");
    assert_eq!((e.epoch, e.reason), (2, RequestReason::ImmediateFrame));
    g.peer().send(P_PROT, &[udp(2), tcp_ack(99)]);
    assert_eq!(
        c.next_event(Some(Duration::from_millis(300)))
            .expect("no error"),
        None,
        "one request per epoch"
    );
    assert_eq!(c.fence(2).expect("fence").frames, 3);
    c.commit(2).expect("commit");
    g.uplink_holds_at(6, "both epochs committed");
    drop(c);
    let (_, stats) = g.finish();
    let v = vm(&stats, "prot");
    assert_eq!(v["verdicts"]["tcp-pure-ack"], 4, "{v}");
    assert_eq!(v["verdicts"]["other"], 2, "{v}");
    assert_eq!(v["checkpoint_requests"]["deferral-expired"], 1, "{v}");
    assert_eq!(v["checkpoint_requests"]["immediate-frame"], 1, "{v}");
}

/// A measurement, not a check (run it with `cargo test --release --test output_commit --
/// --ignored --nocapture request_latency`): how long an immediate frame's checkpoint request
/// takes from the guest's TX to the VMM's session, over 40 epochs of an otherwise idle VM.
#[test]
#[ignore]
fn request_latency() {
    let _g = serial();
    let dir = tempdir();
    let mut g = Gate::start(dir.path(), "eg-oc-lat", "");
    let mut c = g.client("prot");
    let mut lat = Vec::new();
    for epoch in 1..=40u64 {
        // Varied gaps, so the frames do not keep one phase with the control thread's polls.
        std::thread::sleep(Duration::from_micros(epoch * 7919 % 25_000));
        g.peer().send(P_PROT, &[udp(epoch as u8)]);
        let sent = std::time::Instant::now();
        let e = c
            .next_event(Some(Duration::from_secs(10)))
            .expect("event")
            .expect("a request for the immediate frame");
        lat.push(sent.elapsed());
        assert_eq!(e.epoch, epoch);
        c.fence(epoch).expect("fence");
        c.commit(epoch).expect("commit");
    }
    lat.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "immediate frame -> checkpoint request at the VMM: p50 {:.2} ms, p90 {:.2} ms, max {:.2} ms (n {})",
        ms(lat[lat.len() / 2]),
        ms(lat[lat.len() * 9 / 10]),
        ms(lat[lat.len() - 1]),
        lat.len()
    );
    drop(c);
    g.finish();
}
