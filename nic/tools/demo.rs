//! The built-in default: a topology that needs no hardware and no VM. `epochgate demo` writes
//! small captures (three VMs' output, and inbound traffic on the uplink), a config that wires them
//! to pcap vdevs, runs the appliance on it with a stand-in VMM ([`vmm`]) that checkpoints the
//! protected VM through the shim library, and then reads the egress capture back to show what
//! left and what did not.

use crate::tools::capture::{self, Frame};
use crate::tools::gen::{self, Stream};
use crate::wire::frame::MacAddr;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Frames each demo VM sends.
pub const FRAMES_PER_VM: u32 = 20_000;

/// One of the demo's VMs.
pub struct DemoVm {
    pub name: &'static str,
    /// Stream id in the generated frames.
    pub id: u32,
    pub mac: [u8; 6],
    pub vlan: Option<u16>,
    /// Where it sits, for the report.
    pub place: &'static str,
    pub mode: &'static str,
}

const fn demo_vm(
    name: &'static str,
    id: u32,
    vlan: Option<u16>,
    place: &'static str,
    mode: &'static str,
) -> DemoVm {
    DemoVm {
        name,
        id,
        mac: [0x52, 0x54, 0, 0, 0, id as u8],
        vlan,
        place,
        mode,
    }
}

pub const VMS: [DemoVm; 3] = [
    demo_vm("web", 1, None, "own port", "passthrough"),
    demo_vm("db", 2, None, "shared ingress", "passthrough"),
    demo_vm("ledger", 3, Some(10), "shared ingress", "protected"),
];

/// A sender on the shared ingress that is no configured VM (its frames are dropped, counted).
pub const STRAY: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0x99];
pub const STRAY_FRAMES: u32 = 500;
const UPLINK_FRAMES: u32 = 3_000;

/// Paths of a prepared demo.
pub struct Demo {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub egress_out: PathBuf,
}

fn ts(i: u32) -> u64 {
    1_700_000_000_000_000_000 + u64::from(i) * 1_000
}

/// Writes the demo's captures and config into `dir`. `hugepages` picks EAL memory.
pub fn prepare(dir: &Path, hugepages: bool) -> io::Result<Demo> {
    std::fs::create_dir_all(dir)?;
    let dir = dir.canonicalize()?;
    let gw = MacAddr([0x02, 0, 0, 0, 0, 0xfe]);
    let stream = |id: u32, mac: [u8; 6], vlan: Option<u16>| Stream {
        id,
        src: MacAddr(mac),
        dst: gw,
        vlan,
    };

    // web: its own port.
    let w = &VMS[0];
    let web: Vec<Frame> = (0..FRAMES_PER_VM)
        .map(|q| to_frame(q, gen::frame(&stream(w.id, w.mac, w.vlan), q)))
        .collect();
    capture::write_file(&dir.join("web-out.pcap"), &web)?;

    // db, ledger and a stray sender interleaved on the shared ingress.
    let mut shared = Vec::new();
    for q in 0..FRAMES_PER_VM {
        for v in &VMS[1..] {
            shared.push(gen::frame(&stream(v.id, v.mac, v.vlan), q));
        }
        if q < STRAY_FRAMES {
            shared.push(gen::frame(&stream(99, STRAY, None), q));
        }
    }
    let shared: Vec<Frame> = shared
        .into_iter()
        .enumerate()
        .map(|(i, f)| to_frame(i as u32, f))
        .collect();
    capture::write_file(&dir.join("shared-out.pcap"), &shared)?;

    // The uplink: frames to each VM's MAC, broadcasts and frames for nobody.
    let mut inbound = Vec::new();
    for q in 0..UPLINK_FRAMES {
        let dst = match q % 5 {
            0..=2 => MacAddr(VMS[(q % 5) as usize].mac),
            3 => MacAddr::BROADCAST,
            _ => MacAddr([0x52, 0x54, 0, 0, 0, 0x77]),
        };
        let s = Stream {
            id: 200,
            src: gw,
            dst,
            vlan: (dst.0 == VMS[2].mac).then_some(10),
        };
        inbound.push(to_frame(q, gen::frame(&s, q)));
    }
    capture::write_file(&dir.join("uplink-in.pcap"), &inbound)?;

    let p = |name: &str| dir.join(name).display().to_string();
    let config = format!(
        r#"# epochgate demo: written by `epochgate demo`; run it again with
#   epochgate run --config {cfg}
# Three VMs, no hardware: pcap vdevs stand in for the VMs' vhost-user ports and the uplink.

[eal]
lcores = "0-1"
memory_mb = 512
hugepages = {hugepages}
file_prefix = "epochgate-demo"

[egress]
# TX: everything the VMs send, to a capture. RX: inbound traffic from the "network".
port = "net_pcap0,rx_pcap={uplink},tx_pcap={egress}"

[ingress]
# One port shared by two VMs, told apart by source MAC (and VLAN).
port = "net_pcap1,rx_pcap={shared},tx_pcap={shared_in}"

[control]
socket = "{dir}/control.sock"
admin_socket = "{dir}/admin.sock"

# [dataplane] is left out: the mbuf pool comes from memory_mb, and each VM that does not set
# max_held_frames gets a share of it (`epochgate check-config` shows every VM's hold budget).

[[vm]]
name = "web"
port = "net_pcap2,rx_pcap={web},tx_pcap={web_in}"
mode = "passthrough"

[[vm]]
name = "db"
mac = "{db_mac}"
mode = "passthrough"
# The shared ingress is a capture read at full speed: room for its frames while ledger's
# released ones go first.
max_held_frames = 32768

[[vm]]
# Protected: its output is held until the demo's stand-in VMM commits the epoch that covers it
# (over the control socket, with the vmm-shim library); what is uncommitted at exit is
# discarded and counted.
name = "ledger"
mac = "{ledger_mac}"
vlan = 10
mode = "protected"
# Room for all of its held output (the capture is read at full speed).
max_held_frames = 32768
"#,
        cfg = p("demo.toml"),
        uplink = p("uplink-in.pcap"),
        egress = p("egress.pcap"),
        shared = p("shared-out.pcap"),
        shared_in = p("shared-in.pcap"),
        web = p("web-out.pcap"),
        web_in = p("web-in.pcap"),
        dir = dir.display(),
        db_mac = MacAddr(VMS[1].mac),
        ledger_mac = MacAddr(VMS[2].mac),
    );
    let config_path = dir.join("demo.toml");
    std::fs::write(&config_path, config)?;
    Ok(Demo {
        egress_out: dir.join("egress.pcap"),
        config: config_path,
        dir,
    })
}

fn to_frame(i: u32, data: Vec<u8>) -> Frame {
    Frame {
        ts_ns: ts(i),
        orig_len: data.len() as u32,
        data,
    }
}

/// Reads the demo's egress capture back: frames per source MAC, whether each VM's frames kept
/// their order, and whether anything of the protected VM leaked.
pub fn report(demo: &Demo) -> Result<String, capture::CaptureError> {
    let cap = capture::read_file(&demo.egress_out)?;
    let mut per_src: BTreeMap<MacAddr, (u64, bool, Option<u32>)> = BTreeMap::new();
    for f in &cap.frames {
        let src = crate::wire::frame::src_mac(&f.data).unwrap_or_default();
        let e = per_src.entry(src).or_insert((0, true, None));
        e.0 += 1;
        if let Some((_, seq)) = gen::stamp(&f.data) {
            if e.2.is_some_and(|last| seq <= last) {
                e.1 = false;
            }
            e.2 = Some(seq);
        }
    }
    let mut s = String::new();
    let _ = writeln!(
        s,
        "egress capture {} holds {} frames:",
        demo.egress_out.display(),
        cap.frames.len()
    );
    for DemoVm {
        name,
        mac,
        place,
        mode,
        ..
    } in VMS
    {
        let (n, ordered, _) = per_src
            .get(&MacAddr(mac))
            .copied()
            .unwrap_or((0, true, None));
        let _ = writeln!(
            s,
            "  {name:<7} ({mode}, {place}): {n} of {FRAMES_PER_VM} frames{}",
            if n == 0 {
                ""
            } else if ordered {
                ", in order"
            } else {
                ", OUT OF ORDER"
            }
        );
    }
    let stray = per_src.get(&MacAddr(STRAY)).map_or(0, |e| e.0);
    let _ = writeln!(
        s,
        "  stray sender {}: {stray} frames (unknown source MACs are dropped)",
        MacAddr(STRAY)
    );
    Ok(s)
}

/// What the demo's stand-in VMM did.
#[derive(Debug, Default, Clone)]
pub struct VmmLog {
    pub epochs_committed: u64,
    pub frames_committed: u64,
    /// Why it stopped early, if it did (not counting epochgate shutting down).
    pub error: Option<String>,
}

/// A checkpointing VMM in miniature, for the demo: every `epoch` it fences `vm`'s open epoch
/// (a real VMM pauses the guest first), waits `transfer` (the checkpoint on its way to the
/// secondary) and commits it; until `stop` is set or epochgate goes away.
pub fn vmm(
    socket: &Path,
    vm: &str,
    epoch: Duration,
    transfer: Duration,
    stop: &Arc<AtomicBool>,
) -> VmmLog {
    use vmm_shim::{proto::ErrorCode, Client, ShimError};
    let mut log = VmmLog::default();
    let started = Instant::now();
    let mut client = loop {
        match Client::connect(socket, vm) {
            Ok(c) => break c,
            Err(e) if started.elapsed() > Duration::from_secs(10) || stop.load(Relaxed) => {
                log.error = Some(e.to_string());
                return log;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    };
    let mut n = client.welcome().epoch;
    let stopping =
        |e: &ShimError| matches!(e, ShimError::Closed) || e.code() == Some(ErrorCode::ShuttingDown);
    while !stop.load(Relaxed) {
        std::thread::sleep(epoch);
        let step = client.fence(n).and_then(|_| {
            std::thread::sleep(transfer);
            client.commit(n)
        });
        match step {
            Ok(frames) => {
                log.epochs_committed += 1;
                log.frames_committed += frames;
                n += 1;
            }
            Err(e) if stopping(&e) => break,
            Err(e) => {
                log.error = Some(e.to_string());
                break;
            }
        }
    }
    log
}
