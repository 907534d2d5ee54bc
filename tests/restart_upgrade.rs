//! Restart for upgrade under traffic: epochgate is stopped by SIGTERM while two protected VMs
//! send and checkpoint (an epoch committed but perhaps not yet on the wire, one sealed and not
//! committed, one open with frames), a new epochgate starts on the same config, state file and
//! sockets, and the VMMs' shims reconnect by themselves (`Options::reconnect`) and go on
//! checkpointing in a new epoch. No frame of an epoch that was never committed may reach the
//! uplink, before or after the restart; every committed frame reaches it exactly once, in
//! order; traffic resumes.
//!
//! The guests' virtio-user ports are not expected to survive their vhost-user server going
//! away (DPDK's virtio-user reconnects only in its own server mode, against a vhost-user
//! client; epochgate's `net_vhost` ports are servers), so the peer playing the guests and the
//! uplink is restarted with epochgate; it records the uplink of each run into its own
//! capture.

mod common;
use common::*;
use epochgate::tools::gen::{self, Stream};
use epochgate::wire::frame::MacAddr;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;
use vmm_shim::proto::{ErrorCode, Mode};
use vmm_shim::{Client, Options, Reconnected, ShimError};

const MAC_A: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 0x31]);
const MAC_B: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 0x32]);
const GW: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0xfe]);

/// Peer port numbers: the uplink, then the two guests.
const UPLINK: usize = 0;

/// How long the shims keep trying to reach the new process.
const RECONNECT: Duration = Duration::from_secs(120);

fn config(d: &Path) -> String {
    let d = d.display();
    format!(
        "[eal]\nlcores = \"0-1\"\nmemory_mb = 512\nhugepages = false\nfile_prefix = \"eg-ru-{pid}\"\n\n\
         [control]\nsocket = \"{d}/control.sock\"\nadmin_socket = \"{d}/admin.sock\"\n\n\
         [egress]\nport = \"net_vhost0,iface={d}/uplink.sock\"\n\n\
         [[vm]]\nname = \"a\"\nport = \"net_vhost1,iface={d}/a.sock\"\nmac = \"{MAC_A}\"\nmode = \"protected\"\n\n\
         [[vm]]\nname = \"b\"\nport = \"net_vhost2,iface={d}/b.sock\"\nmac = \"{MAC_B}\"\nmode = \"protected\"\n",
        pid = std::process::id(),
    )
}

const PORTS: [&str; 3] = ["uplink", "a", "b"];

/// Starts epochgate (run `run`) and, once its vhost-user ports listen, the peer, recording
/// the uplink into `egress-<run>.pcap`.
fn start(dir: &Path, run: u32) -> (Running, Peer) {
    let mut eg = Running::start(dir, &config(dir));
    let socks = PORTS.map(|n| dir.join(format!("{n}.sock")));
    for s in &socks {
        eg.wait_for_path(s);
    }
    let vdevs: Vec<String> = socks
        .iter()
        .enumerate()
        .map(|(i, s)| virtio_user(i as u32, s))
        .collect();
    let egress = egress(dir, run);
    let peer = Peer::start(
        dir,
        &format!("eg-ru-peer{run}"),
        &vdevs,
        &[(UPLINK, &egress)],
    );
    (eg, peer)
}

fn egress(dir: &Path, run: u32) -> PathBuf {
    dir.join(format!("egress-{run}.pcap"))
}

/// One guest and its VMM: the peer port it sends on, its stamped stream, the shim session,
/// the epoch it is in, and which sequence numbers the test sent in committed and in
/// never-committed epochs.
struct Guest {
    name: &'static str,
    port: usize,
    stream: Stream,
    next_seq: u32,
    shim: Client,
    /// The open epoch.
    epoch: u64,
    /// Sequence numbers of frames sent in each epoch not committed yet: (epoch, seqs).
    pending: Vec<(u64, Vec<u32>)>,
    committed: Vec<u32>,
    /// Frames of epochs that can never be committed (epochgate stopped first).
    lost: Vec<u32>,
    /// Committed frames per run.
    committed_in_run: [u64; 2],
    /// Frames sent per run.
    sent_in_run: [u64; 2],
    /// The run the guest is in (0, 1).
    run: usize,
}

impl Guest {
    fn new(name: &'static str, port: usize, id: u32, mac: MacAddr, socket: &Path) -> Guest {
        let opts = Options {
            reconnect: Some(RECONNECT),
            ..Options::default()
        };
        let shim = Client::connect_with(socket, name, opts)
            .unwrap_or_else(|e| panic!("session for {name}: {e}"));
        assert_eq!(shim.welcome().mode, Mode::Protected, "{name}");
        let epoch = shim.welcome().epoch;
        Guest {
            name,
            port,
            stream: Stream {
                id,
                src: mac,
                dst: GW,
                vlan: None,
            },
            next_seq: 0,
            shim,
            epoch,
            pending: vec![(epoch, Vec::new())],
            committed: Vec::new(),
            lost: Vec::new(),
            committed_in_run: [0; 2],
            sent_in_run: [0; 2],
            run: 0,
        }
    }

    /// The guest sends `n` frames (in the open epoch): they are in epochgate's ingress ring
    /// when this returns.
    fn send(&mut self, peer: &mut Peer, n: u32) {
        let seqs: Vec<u32> = (self.next_seq..self.next_seq + n).collect();
        self.next_seq += n;
        self.sent_in_run[self.run] += u64::from(n);
        let frames: Vec<Vec<u8>> = seqs.iter().map(|&q| gen::frame(&self.stream, q)).collect();
        peer.send(self.port, &frames);
        self.pending
            .last_mut()
            .expect("an open epoch")
            .1
            .extend(seqs);
    }

    /// Pause (the peer sends nothing for this guest meanwhile), fence the open epoch, resume.
    fn fence(&mut self) {
        let n = self.epoch;
        let f = self
            .shim
            .fence(n)
            .unwrap_or_else(|e| panic!("{}: fence {n}: {e}", self.name));
        let sent = self.pending.last().expect("open").1.len() as u64;
        assert_eq!(
            f.frames, sent,
            "{}: epoch {n} holds exactly what the guest sent in it",
            self.name
        );
        self.epoch += 1;
        self.pending.push((self.epoch, Vec::new()));
    }

    /// The oldest sealed epoch's checkpoint is safe on the secondary: commit it.
    fn commit_oldest(&mut self, run: usize) {
        let (n, seqs) = self.pending.remove(0);
        assert!(n < self.epoch, "{}: epoch {n} is not sealed", self.name);
        let released = self
            .shim
            .commit(n)
            .unwrap_or_else(|e| panic!("{}: commit {n}: {e}", self.name));
        assert_eq!(released, seqs.len() as u64, "{}: commit {n}", self.name);
        self.committed_in_run[run] += released;
        self.committed.extend(seqs);
    }

    /// One checkpoint: send, fence, commit.
    fn round(&mut self, peer: &mut Peer, n: u32, run: usize) {
        self.send(peer, n);
        self.fence();
        self.commit_oldest(run);
    }

    /// Epochgate stopped: what was not committed is gone.
    fn lose_pending(&mut self) {
        for (_, seqs) in self.pending.drain(..) {
            self.lost.extend(seqs);
        }
    }

    fn held_at_stop(&self) -> u64 {
        self.pending.iter().map(|(_, s)| s.len() as u64).sum()
    }
}

/// The sequence numbers of stream `id` on `out`, in order.
fn seqs_of(out: &[Vec<u8>], id: u32) -> Vec<u32> {
    out.iter()
        .filter_map(|f| gen::stamp(f))
        .filter(|(i, _)| *i == id)
        .map(|(_, q)| q)
        .collect()
}

fn assert_vm_counters(stats: &Value, g: &Guest, run: usize, lost: u64) {
    let v = vm(stats, g.name);
    assert_eq!(
        u(v, "tx_frames"),
        g.committed_in_run[run],
        "run {}: {} transmitted exactly its committed frames: {v}",
        run + 1,
        g.name
    );
    assert_eq!(
        dropped(v, "uncommitted-at-exit"),
        lost,
        "run {}: {}'s uncommitted frames were discarded at exit: {v}",
        run + 1,
        g.name
    );
    assert_eq!(u(v, "waiting"), 0, "run {}: {v}", run + 1);
}

/// Waits until epochgate has taken in every frame the guests sent in run `run` (the open
/// epoch's last frames may still be in the guest's ring when the peer returns).
fn wait_received_all(eg: &mut Running, guests: &[Guest], run: usize) {
    eg.wait_for("every frame sent received", |s| {
        guests.iter().all(|g| {
            s["vms"]
                .as_array()
                .is_some_and(|_| vm(s, g.name)["rx_frames"].as_u64() == Some(g.sent_in_run[run]))
        })
    });
}

#[test]
fn a_restart_under_traffic_leaks_no_uncommitted_frame_and_traffic_resumes() {
    let _g = serial();
    let dir = tempdir();
    let d = dir.path();
    let socket = d.join("control.sock");

    // --- run 1 ---------------------------------------------------------------------------
    let (eg, mut peer) = start(d, 1);
    let mut guests = [
        Guest::new("a", 1, 1, MAC_A, &socket),
        Guest::new("b", 2, 2, MAC_B, &socket),
    ];
    for i in 0..6u32 {
        for g in &mut guests {
            g.round(&mut peer, 10 + i, 0);
        }
    }
    // The moment of the stop: for each VM an epoch committed a moment ago (released, perhaps
    // still on its way to the wire), one sealed with its checkpoint in transfer (never
    // committed), and an open one with frames.
    for g in &mut guests {
        g.send(&mut peer, 17);
        g.fence();
        g.send(&mut peer, 13);
        g.fence();
        g.send(&mut peer, 11);
        g.commit_oldest(0);
    }
    let lost_run1: Vec<u64> = guests.iter().map(Guest::held_at_stop).collect();
    assert!(lost_run1.iter().all(|&n| n == 24), "{lost_run1:?}");
    let mut eg = eg;
    wait_received_all(&mut eg, &guests, 0);
    let stats1 = eg.stop(); // SIGTERM by PID; waits for exit status 0
    assert_balanced(&stats1);
    for (g, &lost) in guests.iter().zip(&lost_run1) {
        assert_vm_counters(&stats1, g, 0, lost);
    }
    let _ = std::fs::rename(d.join("epochgate.out"), d.join("epochgate-1.out"));
    let _ = std::fs::rename(d.join("epochgate.err"), d.join("epochgate-1.err"));
    let done1 = peer.finish();
    for g in &mut guests {
        g.lose_pending();
    }

    // Every session was told why epochgate stopped.
    for g in &mut guests {
        // Checkpoint requests of run 1 may come first (the test does not honour them).
        let e = loop {
            match g.shim.next_event(Some(Duration::from_secs(30))) {
                Ok(Some(_)) => continue,
                other => break other,
            }
        };
        match e {
            Err(ShimError::Refused {
                code: ErrorCode::ShuttingDown,
                ref text,
            }) => assert!(text.contains("stopping"), "{}: {text}", g.name),
            other => panic!("{}: expected shutting-down, got {other:?}", g.name),
        }
        assert!(g.shim.is_over(), "{}", g.name);
        let (code, _) = g.shim.ended_because().expect("a reason");
        assert_eq!(code, ErrorCode::ShuttingDown);
        // The old epochs are gone: a call on the old session fails.
        assert!(g.shim.commit(g.epoch - 1).is_err(), "{}", g.name);
    }

    // --- restart -------------------------------------------------------------------------
    // The vhost-user socket files nobody serves: removed, so the test sees when the new
    // process listens (epochgate would replace them itself).
    for n in PORTS {
        let _ = std::fs::remove_file(d.join(format!("{n}.sock")));
    }
    // The new process starts on its own thread while the shims reconnect: they begin before
    // it is there (the control socket file of the stopped one is left behind, so connecting
    // is refused until the new one listens) and keep trying (`Options::reconnect`).
    let starting = {
        let d = d.to_path_buf();
        std::thread::spawn(move || start(&d, 2))
    };
    let renewed: Vec<_> = guests.iter_mut().map(|g| g.shim.reconnect()).collect();
    let (eg, mut peer) = starting.join().expect("second start");
    for (g, r) in guests.iter_mut().zip(renewed) {
        let r: Reconnected =
            r.unwrap_or_else(|e| panic!("{}: reconnect: {e}\n{}", g.name, eg.logs()));
        assert_eq!(
            r.welcome.mode,
            Mode::Protected,
            "{}: a VM protected at the stop comes back protected",
            g.name
        );
        assert!(r.welcome.epoch >= 1, "{}: {r:?}", g.name);
        assert_eq!(
            r.previous.epoch, 1,
            "{}: the old session's welcome: {r:?}",
            g.name
        );
        assert!(r.attempts >= 1, "{}: {r:?}", g.name);
        assert_eq!(
            r.why.as_ref().map(|w| w.0),
            Some(ErrorCode::ShuttingDown),
            "{}: {r:?}",
            g.name
        );
        assert!(!g.shim.is_over(), "{}", g.name);
        assert_eq!(g.shim.welcome(), r.welcome, "{}", g.name);
        g.run = 1;
        g.epoch = r.welcome.epoch;
        g.pending = vec![(g.epoch, Vec::new())];
    }

    // --- run 2: checkpointing goes on in the new epochs -----------------------------------
    for i in 0..4u32 {
        for g in &mut guests {
            g.round(&mut peer, 8 + i, 1);
        }
    }
    // And once more an epoch left open at the stop.
    for g in &mut guests {
        g.send(&mut peer, 5);
    }
    let want: u64 = guests.iter().map(|g| g.committed_in_run[1]).sum();
    peer.wait_received(UPLINK, want);
    let mut eg = eg;
    wait_received_all(&mut eg, &guests, 1);
    for g in &mut guests {
        let st = g.shim.stats().expect("stats");
        assert_eq!(st.held_frames, 5, "{}: {st:?}", g.name);
    }
    let stats2 = eg.stop();
    assert_balanced(&stats2);
    for g in &guests {
        assert_vm_counters(&stats2, g, 1, 5);
    }
    let done2 = peer.finish();
    for g in &mut guests {
        g.lose_pending();
    }

    // --- what reached the uplink ---------------------------------------------------------
    let out1 = read_pcap(&egress(d, 1));
    let out2 = read_pcap(&egress(d, 2));
    for (run, (done, out)) in [(&done1, &out1), (&done2, &out2)].into_iter().enumerate() {
        assert_eq!(
            done["ports"][UPLINK]["received"].as_u64(),
            Some(out.len() as u64),
            "run {}: the peer's count and its capture agree: {done}",
            run + 1
        );
        for g in &guests {
            assert_eq!(
                done["ports"][g.port]["sent"].as_u64(),
                Some(g.sent_in_run[run]),
                "run {}: {done}",
                run + 1
            );
        }
    }
    let all: Vec<Vec<u8>> = out1.iter().chain(&out2).cloned().collect();
    for f in &all {
        let (id, _) = gen::stamp(f).expect("only the guests' stamped frames reach the uplink");
        assert!(id == 1 || id == 2, "a frame of unknown stream {id}");
    }
    for g in &guests {
        let got = seqs_of(&all, g.stream.id);
        let leaked: Vec<u32> = got.iter().copied().filter(|q| g.lost.contains(q)).collect();
        assert!(
            leaked.is_empty(),
            "{}: frames of epochs never committed reached the uplink: {leaked:?}",
            g.name
        );
        assert_eq!(
            got, g.committed,
            "{}: every committed frame reaches the uplink exactly once, in order",
            g.name
        );
        let after = seqs_of(&out2, g.stream.id);
        assert_eq!(
            after.len() as u64,
            g.committed_in_run[1],
            "{}: traffic resumed after the restart",
            g.name
        );
        assert!(!after.is_empty(), "{}", g.name);
        assert!(
            !g.lost.is_empty(),
            "{}: the test left epochs uncommitted",
            g.name
        );
    }
}
