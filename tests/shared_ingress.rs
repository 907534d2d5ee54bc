//! A shared ingress port demultiplexed by source MAC (and VLAN), and the inbound path from the
//! uplink to each VM, with real DPDK pcap ports.

mod common;
use common::*;
use epochgate::tools::gen::{self, Stream};
use epochgate::wire::frame::MacAddr;

const A: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 0x0a]);
const B: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 0x0b]);
const C: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 0x0c]);
const P: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 0x0d]);
const S: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 0x0e]);
const GW: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0xfe]);

fn stream(id: u32, src: MacAddr, dst: MacAddr, vlan: Option<u16>) -> Stream {
    Stream { id, src, dst, vlan }
}

#[test]
fn shared_ingress_is_demultiplexed_by_mac_and_vlan_and_unknown_sources_are_counted() {
    let _g = serial();
    let dir = tempdir();
    let d = dir.path();
    // a: untagged; b: VLAN 20 only; c: no VM. b's untagged frames belong to nobody.
    let a = gen::frames(&stream(1, A, GW, None), 1200);
    let b = gen::frames(&stream(2, B, GW, Some(20)), 900);
    let mut shared = Vec::new();
    let (mut unknown, mut runts) = (0u64, 0u64);
    for q in 0..1200u32 {
        shared.push(a[q as usize].clone());
        if let Some(f) = b.get(q as usize) {
            shared.push(f.clone());
        }
        if q % 10 == 0 {
            shared.push(gen::frame(&stream(3, C, GW, None), q));
            unknown += 1;
        }
        if q % 100 == 0 {
            shared.push(gen::frame(&stream(4, B, GW, Some(21)), q)); // b's MAC, wrong VLAN
            unknown += 1;
        }
        if q % 400 == 0 {
            shared.push(vec![0x52; 10]); // runt: no Ethernet header
            runts += 1;
        }
    }
    let (empty, input, out) = (
        d.join("empty.pcap"),
        d.join("shared.pcap"),
        d.join("egress.pcap"),
    );
    write_pcap(&empty, &[]);
    write_pcap(&input, &shared);
    let cfg = format!(
        "{}[egress]\nport = \"net_pcap0,rx_pcap={},tx_pcap={}\"\n\n[ingress]\nport = \"net_pcap1,rx_pcap={},tx_pcap={}/shared-in.pcap\"\n\n\
         [[vm]]\nname = \"a\"\nmac = \"{A}\"\n\n[[vm]]\nname = \"b\"\nmac = \"{B}\"\nvlan = 20\n",
        eal_and_control(d, "eg-shared"),
        empty.display(),
        out.display(),
        input.display(),
        d.display()
    );
    let mut eg = Running::start(d, &cfg);
    let n = shared.len() as u64;
    eg.wait_for("the whole shared capture read", |s| {
        u(port(s, "ingress", 0), "rx_frames") == n
    });
    eg.wait_for("a and b transmitted", |s| {
        u(vm(s, "a"), "tx_frames") == a.len() as u64 && u(vm(s, "b"), "tx_frames") == b.len() as u64
    });
    let stats = eg.stop();

    assert_interleaving(&read_pcap(&out), &[&a, &b]);
    let ing = port(&stats, "ingress", 0);
    assert_eq!(dropped(ing, "unknown-source-mac"), unknown, "{ing}");
    assert_eq!(dropped(ing, "runt"), runts, "{ing}");
    assert_eq!(u(vm(&stats, "a"), "rx_frames"), a.len() as u64);
    assert_eq!(u(vm(&stats, "b"), "rx_frames"), b.len() as u64);
    assert_eq!(
        u(ing, "rx_frames"),
        u(vm(&stats, "a"), "rx_frames") + u(vm(&stats, "b"), "rx_frames") + unknown + runts,
        "every frame on the shared port is a VM's or counted: {ing}"
    );
    assert_balanced(&stats);
}

#[test]
fn inbound_frames_reach_the_vm_they_are_addressed_to() {
    let _g = serial();
    let dir = tempdir();
    let d = dir.path();
    // Port VM "p" has no configured MAC: it is learned from its first frame.
    let p_out = gen::frames(&stream(5, P, GW, None), 50);
    let s_out = gen::frames(&stream(6, S, GW, None), 30);
    let mcast: MacAddr = "01:00:5e:00:00:fb".parse().unwrap();
    let other: MacAddr = "52:54:00:00:00:77".parse().unwrap();
    let mut uplink = Vec::new();
    let mut expect: std::collections::BTreeMap<&str, Vec<Vec<u8>>> = Default::default();
    for q in 0..700u32 {
        let (dst, vlan, to): (MacAddr, Option<u16>, &[&str]) = match q % 7 {
            0 => (A, None, &["shared"]),
            1 => (B, Some(20), &["shared"]),
            2 => (P, None, &["p"]),
            3 => (MacAddr::BROADCAST, None, &["shared", "p"]),
            4 => (mcast, None, &["shared", "p"]),
            5 => (other, None, &[]),
            _ => (S, None, &[]), // standby VM: nothing reaches it
        };
        let f = gen::frame(&stream(100, GW, dst, vlan), q);
        for t in to {
            expect.entry(t).or_default().push(f.clone());
        }
        uplink.push(f);
    }
    let path = |n: &str| d.join(n).display().to_string();
    write_pcap(&d.join("uplink.pcap"), &uplink);
    write_pcap(&d.join("p.pcap"), &p_out);
    write_pcap(&d.join("s.pcap"), &s_out);
    write_pcap(&d.join("empty.pcap"), &[]);
    let cfg = format!(
        "{}[egress]\nport = \"net_pcap0,rx_pcap={},tx_pcap={}\"\n\n[ingress]\nport = \"net_pcap1,rx_pcap={},tx_pcap={}\"\n\n\
         [[vm]]\nname = \"a\"\nmac = \"{A}\"\n\n[[vm]]\nname = \"b\"\nmac = \"{B}\"\nvlan = 20\n\n\
         [[vm]]\nname = \"p\"\nport = \"net_pcap2,rx_pcap={},tx_pcap={}\"\n\n\
         [[vm]]\nname = \"s\"\nport = \"net_pcap3,rx_pcap={},tx_pcap={}\"\nmac = \"{S}\"\nmode = \"standby\"\n",
        eal_and_control(d, "eg-inbound"),
        path("uplink.pcap"),
        path("egress.pcap"),
        path("empty.pcap"),
        path("shared-in.pcap"),
        path("p.pcap"),
        path("p-in.pcap"),
        path("s.pcap"),
        path("s-in.pcap"),
    );
    let mut eg = Running::start(d, &cfg);
    let n = uplink.len() as u64;
    eg.wait_for("the uplink capture read and delivered", |s| {
        u(port(s, "egress", 0), "rx_frames") == n
            && u(port(s, "ingress", 0), "tx_frames") == expect["shared"].len() as u64
            && u(port(s, "vm", 0), "tx_frames") == expect["p"].len() as u64
            && u(vm(s, "s"), "rx_frames") == s_out.len() as u64
    });
    let stats = eg.stop();

    assert_eq!(
        read_pcap(&d.join("shared-in.pcap")),
        expect["shared"],
        "shared ingress got the wrong frames"
    );
    assert_eq!(
        read_pcap(&d.join("p-in.pcap")),
        expect["p"],
        "port VM p got the wrong frames"
    );
    assert!(
        read_pcap(&d.join("s-in.pcap")).is_empty(),
        "a standby VM must receive nothing"
    );
    assert_eq!(
        vm(&stats, "p")["mac"],
        P.to_string(),
        "p's MAC is learned from its first frame"
    );
    let eg_port = port(&stats, "egress", 0);
    assert_eq!(dropped(eg_port, "inbound-no-vm"), 100, "{eg_port}");
    assert_eq!(dropped(eg_port, "standby"), 100, "{eg_port}");
    // Outbound: p's frames leave; the standby VM's are dropped and counted, none leave.
    assert_interleaving(&read_pcap(&d.join("egress.pcap")), &[&p_out]);
    assert_eq!(dropped(vm(&stats, "s"), "standby"), s_out.len() as u64);
    assert_eq!(
        u(vm(&stats, "a"), "inbound_frames"),
        300,
        "100 unicast + 100 broadcast + 100 multicast"
    );
    assert_balanced(&stats);
}

/// A sender on the shared ingress cannot put frames into another VM's output: frames carrying
/// the MAC of a VM with its own port (configured, or learned from its first frame) are spoofs,
/// dropped and counted on the ingress port, and never held, counted or sent as that VM's.
#[test]
fn shared_ingress_frames_with_the_mac_of_a_vm_on_its_own_port_are_spoofs() {
    let _g = serial();
    let dir = tempdir();
    let d = dir.path();
    const L: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 0x1f]);
    // p: its own port, MAC configured, protected (a spoof would be held in its epoch);
    // l: its own port, MAC learned; a: on the shared ingress.
    let a = gen::frames(&stream(1, A, GW, None), 10);
    let p_own = gen::frames(&stream(2, P, GW, None), 5);
    let l_own = gen::frames(&stream(3, L, GW, None), 5);
    let mut shared = a.clone();
    let mut spoofs = 0u64;
    for q in 0..10u32 {
        shared.push(gen::frame(&stream(20, P, GW, None), q));
        shared.push(gen::frame(&stream(21, L, GW, None), q));
        shared.push(gen::frame(&stream(22, P, GW, Some(7)), q)); // P's MAC on any VLAN
        spoofs += 3;
    }
    let path = |n: &str| d.join(n).display().to_string();
    write_pcap(&d.join("empty.pcap"), &[]);
    write_pcap(&d.join("shared.pcap"), &shared);
    write_pcap(&d.join("p.pcap"), &p_own);
    write_pcap(&d.join("l.pcap"), &l_own);
    // The VM ports are read before the shared ingress in every poll round, so l's MAC is
    // learned from its own first frame before the shared capture is read.
    let cfg = format!(
        "{}[egress]\nport = \"net_pcap0,rx_pcap={},tx_pcap={}\"\n\n[ingress]\nport = \"net_pcap1,rx_pcap={},tx_pcap={}\"\n\n\
         [[vm]]\nname = \"a\"\nmac = \"{A}\"\n\n\
         [[vm]]\nname = \"p\"\nport = \"net_pcap2,rx_pcap={},tx_pcap={}\"\nmac = \"{P}\"\nmode = \"protected\"\n\n\
         [[vm]]\nname = \"l\"\nport = \"net_pcap3,rx_pcap={},tx_pcap={}\"\n",
        eal_and_control(d, "eg-spoof"),
        path("empty.pcap"),
        path("egress.pcap"),
        path("shared.pcap"),
        path("shared-in.pcap"),
        path("p.pcap"),
        path("p-in.pcap"),
        path("l.pcap"),
        path("l-in.pcap"),
    );
    let mut eg = Running::start(d, &cfg);
    let n = shared.len() as u64;
    eg.wait_for("the shared capture read and the VM ports read", |s| {
        u(port(s, "ingress", 0), "rx_frames") == n
            && u(vm(s, "a"), "tx_frames") == a.len() as u64
            && u(vm(s, "l"), "tx_frames") >= l_own.len() as u64
            && u(vm(s, "p"), "rx_frames") >= p_own.len() as u64
    });
    let stats = eg.stop();

    let ing = port(&stats, "ingress", 0);
    assert_eq!(dropped(ing, "spoofed-source-mac"), spoofs, "{ing}");
    assert_eq!(dropped(ing, "unknown-source-mac"), 0, "{ing}");
    assert_eq!(
        u(vm(&stats, "p"), "rx_frames"),
        p_own.len() as u64,
        "only p's own port counts as p's output"
    );
    assert_eq!(
        u(vm(&stats, "l"), "rx_frames"),
        l_own.len() as u64,
        "only l's own port counts as l's output"
    );
    assert_eq!(vm(&stats, "l")["mac"], L.to_string());
    // Nothing spoofed left: a's and l's own frames only (p is protected and never committed).
    assert_interleaving(&read_pcap(&d.join("egress.pcap")), &[&a, &l_own]);
    assert_balanced(&stats);
}
