//! Pass-through with real DPDK pcap ports: three VMs, each on its own port, one egress port.
//! Every frame comes out byte-identical, each VM's frames in their original order, nothing else,
//! and the counters say the same.
//!
//! The inputs are generated mixed traffic (IPv4, IPv6, ARP, 802.1Q, 60..1514 bytes), or, with
//! `EPOCHGATE_PASSTHROUGH_CAPTURES=a.pcap,b.pcap,...`, any Ethernet captures you supply (one VM
//! per capture).

mod common;
use common::*;
use epochgate::tools::gen::{self, Stream};
use epochgate::wire::frame::MacAddr;
use std::path::Path;

fn inputs(dir: &Path) -> Vec<Vec<Vec<u8>>> {
    if let Ok(list) = std::env::var("EPOCHGATE_PASSTHROUGH_CAPTURES") {
        return list
            .split(',')
            .map(|p| read_pcap(Path::new(p.trim())))
            .collect();
    }
    let _ = dir;
    (1..=3u32)
        .map(|id| {
            let s = Stream {
                id,
                src: MacAddr([0x52, 0x54, 0, 0, 0, id as u8]),
                dst: MacAddr([0x02, 0, 0, 0, 0, 0xfe]),
                vlan: None,
            };
            // Different lengths per VM so the round robin interleaves unevenly.
            gen::frames(&s, 1500 + 700 * id)
        })
        .collect()
}

#[test]
fn three_vms_frames_arrive_byte_identical_and_in_order() {
    let _g = serial();
    let dir = tempdir();
    let d = dir.path();
    let vms = inputs(d);
    assert!(!vms.is_empty(), "no input captures");
    let empty = d.join("empty.pcap");
    write_pcap(&empty, &[]);
    let mut cfg = eal_and_control(d, "eg-pt");
    cfg += &format!(
        "[egress]\nport = \"net_pcap0,rx_pcap={},tx_pcap={}\"\n\n",
        empty.display(),
        d.join("egress.pcap").display()
    );
    for (i, frames) in vms.iter().enumerate() {
        let input = d.join(format!("vm{i}.pcap"));
        write_pcap(&input, frames);
        cfg += &format!(
            "[[vm]]\nname = \"vm{i}\"\nport = \"net_pcap{p},rx_pcap={},tx_pcap={}\"\n\n",
            input.display(),
            d.join(format!("vm{i}-in.pcap")).display(),
            p = i + 1
        );
    }
    let total: u64 = vms.iter().map(|v| v.len() as u64).sum();

    let mut eg = Running::start(d, &cfg);
    eg.wait_for("every frame on egress", |s| {
        u(port(s, "egress", 0), "tx_frames") == total
    });
    let stats = eg.stop();

    let out = read_pcap(&d.join("egress.pcap"));
    assert_eq!(
        out.len() as u64,
        total,
        "egress capture has {} frames, {} went in",
        out.len(),
        total
    );
    let refs: Vec<&[Vec<u8>]> = vms.iter().map(Vec::as_slice).collect();
    assert_interleaving(&out, &refs);

    assert_balanced(&stats);
    for (i, frames) in vms.iter().enumerate() {
        let v = vm(&stats, &format!("vm{i}"));
        let bytes: u64 = frames.iter().map(|f| f.len() as u64).sum();
        assert_eq!(u(v, "rx_frames"), frames.len() as u64, "{v}");
        assert_eq!(u(v, "tx_frames"), frames.len() as u64, "{v}");
        assert_eq!(u(v, "rx_bytes"), bytes, "{v}");
        assert_eq!(u(v, "tx_bytes"), bytes, "{v}");
        assert_eq!(u(v, "waiting"), 0, "{v}");
        assert!(v["dropped"].as_object().is_none_or(|d| d.is_empty()), "{v}");
        let p = port(&stats, "vm", i);
        assert_eq!(u(p, "rx_frames"), frames.len() as u64, "{p}");
    }
    let egress = port(&stats, "egress", 0);
    assert_eq!(u(egress, "tx_frames"), total);
    assert_eq!(
        u(&egress["driver"], "opackets"),
        total,
        "the driver agrees: {egress}"
    );
}

#[test]
fn a_protected_vm_leaks_nothing_while_a_passthrough_vm_flows() {
    // Output commit arrives with the control plane; until a commit, a protected VM's frames are
    // held and never reach egress, whatever their EtherType; at exit they are discarded and counted.
    let _g = serial();
    let dir = tempdir();
    let d = dir.path();
    let vms = inputs(d);
    let empty = d.join("empty.pcap");
    write_pcap(&empty, &[]);
    let (a, b) = (d.join("a.pcap"), d.join("b.pcap"));
    write_pcap(&a, &vms[0]);
    let held: Vec<Vec<u8>> = vms[1].iter().take(500).cloned().collect();
    write_pcap(&b, &held);
    let cfg = format!(
        "{}[egress]\nport = \"net_pcap0,rx_pcap={e},tx_pcap={out}\"\n\n\
         [[vm]]\nname = \"free\"\nport = \"net_pcap1,rx_pcap={a},tx_pcap={d}/a-in.pcap\"\n\n\
         [[vm]]\nname = \"held\"\nport = \"net_pcap2,rx_pcap={b},tx_pcap={d}/b-in.pcap\"\nmode = \"protected\"\n",
        eal_and_control(d, "eg-pt2"),
        e = empty.display(),
        out = d.join("egress.pcap").display(),
        a = a.display(),
        b = b.display(),
        d = d.display()
    );
    let mut eg = Running::start(d, &cfg);
    eg.wait_for("both VMs' frames received", |s| {
        u(vm(s, "free"), "tx_frames") == vms[0].len() as u64 && u(vm(s, "held"), "rx_frames") == 500
    });
    let stats = eg.stop();
    let out = read_pcap(&d.join("egress.pcap"));
    assert_interleaving(&out, &[&vms[0]]);
    let h = vm(&stats, "held");
    assert_eq!(u(h, "tx_frames"), 0, "{h}");
    assert_eq!(dropped(h, "uncommitted-at-exit"), 500, "{h}");
    assert_balanced(&stats);
}
