//! What a fence's drain proves depends on the port. On a tap port (a kernel interface) a frame
//! the guest sent just before it was paused may still be in the kernel when the port is seen
//! empty: such a fence waits for the port to stay empty a little, seals, and is counted as
//! `fences_unproven`; a frame that missed its epoch goes to the next one (safe) and is never
//! lost or reordered. Root only (tap interfaces); the "guest" is an `epochgate-peer` on an
//! af_packet port bound to the tap's kernel side.

mod common;
use common::*;
use epochgate::tools::gen::{self, Stream};
use epochgate::wire::frame::MacAddr;
use vmm_shim::Client;

const VM: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 0x31]);
const GW: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0xfe]);

#[test]
fn fences_on_a_tap_port_are_counted_unproven_and_lose_nothing() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: tap ports need root");
        return;
    }
    let _g = serial();
    let dir = tempdir();
    let d = dir.path();
    let tap = format!("egtap{}", std::process::id() % 100_000);
    // The tap exists before epochgate attaches to it (as multi-queue, like DPDK's tap driver
    // makes it), with IPv6 off, so the kernel never sends its own frames (router solicitations,
    // MLD reports) into the port when it comes up.
    sh(
        "ip",
        &["tuntap", "add", "dev", &tap, "mode", "tap", "multi_queue"],
    );
    let _del = DeleteLink(tap.clone());
    std::fs::write(format!("/proc/sys/net/ipv6/conf/{tap}/disable_ipv6"), "1")
        .expect("disable IPv6 on the tap");
    write_pcap(&d.join("empty.pcap"), &[]);
    let cfg = format!(
        "{}[egress]\nport = \"net_pcap0,rx_pcap={d}/empty.pcap,tx_pcap={d}/egress.pcap\"\n\n\
         [[vm]]\nname = \"t\"\nport = \"net_tap0,iface={tap}\"\nmac = \"{VM}\"\nmode = \"protected\"\n",
        eal_and_control(d, "eg-tapfence"),
        d = d.display()
    );
    let mut eg = Running::start(d, &cfg);
    eg.wait_for_path(&d.join("control.sock"));
    sh("ip", &["link", "set", &tap, "up"]);
    let mut guest = Peer::start(
        d,
        "eg-tapfence-peer",
        &[format!("net_af_packet0,iface={tap}")],
        &[],
    );
    let mut vmm = Client::connect(d.join("control.sock"), "t").expect("hello");
    let mut epoch = vmm.welcome().epoch;
    let stream = Stream {
        id: 3,
        src: VM,
        dst: GW,
        vlan: None,
    };
    const FENCES: u32 = 60;
    let (mut sealed_in_own_epoch, mut sealed) = (0u32, 0u64);
    let mut sent = Vec::new();
    for q in 0..FENCES {
        // The guest sends one frame, is paused, and the VMM fences at once.
        let f = gen::frame(&stream, q);
        guest.send(0, std::slice::from_ref(&f));
        sent.push(f);
        let fenced = vmm.fence(epoch).expect("fence");
        sealed += fenced.frames;
        // The frame is in this epoch, or (delayed in the kernel) in the next: never lost.
        assert!(
            sealed <= sent.len() as u64,
            "more sealed than sent ({sealed} > {})",
            sent.len()
        );
        if fenced.frames >= 1 && sealed == sent.len() as u64 {
            sealed_in_own_epoch += 1;
        }
        vmm.commit(epoch).expect("commit");
        epoch += 1;
    }
    // The last stragglers go into one more epoch.
    let mut stats = eg.wait_for("every frame received", |s| {
        u(vm(s, "t"), "rx_frames") >= u64::from(FENCES)
    });
    if sealed < u64::from(FENCES) {
        let f = vmm.fence(epoch).expect("fence");
        sealed += f.frames;
        vmm.commit(epoch).expect("commit");
        stats = eg.wait_for("the last epoch sent", |s| {
            u(vm(s, "t"), "tx_frames") == u64::from(FENCES)
        });
    }
    assert_eq!(sealed, u64::from(FENCES), "every frame sealed once");
    let v = vm(&stats, "t");
    assert_eq!(
        u(v, "fences_unproven") + u(v, "fences_cut_short"),
        u(v, "epochs_sealed"),
        "every fence on a tap port is either cut short or unproven: {v}"
    );
    assert!(u(v, "fences_unproven") > 0, "{v}");
    println!(
        "tap port: {sealed_in_own_epoch} of {FENCES} frames sent just before a fence were sealed in that fence's epoch; {} fences counted unproven",
        u(v, "fences_unproven")
    );
    drop(vmm);
    guest.finish();
    let stats = eg.stop();
    assert_balanced(&stats);
    // Every frame left once, in the order sent.
    assert_interleaving(&read_pcap(&d.join("egress.pcap")), &[&sent]);
}
