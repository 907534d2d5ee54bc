//! Promotion announces a VM's addresses: ahead of its output, `announce_count` rounds
//! `announce_interval_ms` apart, from the VM's MAC and on its VLAN; a demotion stops the rest.
//! The egress capture is read back and every field of every announcement is checked by hand
//! (not with the builder that made them).

mod common;

use common::*;
use epochgate::tools::capture;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;
use vmm_shim::client::Client;
use vmm_shim::proto::Mode;

const A: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0x0a];
const B: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0x0b];
const C: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0x0c];
const ROUNDS: usize = 4;
const INTERVAL_MS: u64 = 60;

fn mac_text(m: [u8; 6]) -> String {
    m.map(|b| format!("{b:02x}")).join(":")
}

/// What one announcement must be, field by field: a gratuitous ARP request (sender = target =
/// the address, target MAC zero) or an unsolicited neighbour advertisement (to all nodes, hop
/// limit 255, override set, solicited not, the target link-layer address option), from `mac`,
/// tagged with `vlan` if any, padded to 60 bytes.
fn check(f: &[u8], mac: [u8; 6], vlan: Option<u16>, ip: std::net::IpAddr) {
    let mut p = 12;
    if let Some(v) = vlan {
        assert_eq!(&f[12..14], &[0x81, 0x00], "802.1Q tag");
        assert_eq!(u16::from_be_bytes([f[14], f[15]]) & 0x0fff, v, "VLAN id");
        p = 16;
    }
    assert_eq!(&f[6..12], &mac, "source MAC is the VM's");
    assert!(f.len() >= 60, "padded to the Ethernet minimum: {}", f.len());
    match ip {
        std::net::IpAddr::V4(ip) => {
            assert_eq!(&f[0..6], &[0xff; 6], "ARP to broadcast");
            assert_eq!(&f[p..p + 2], &[0x08, 0x06], "EtherType ARP");
            let a = &f[p + 2..];
            assert_eq!(&a[0..2], &[0, 1], "hardware type Ethernet");
            assert_eq!(&a[2..4], &[0x08, 0x00], "protocol type IPv4");
            assert_eq!((a[4], a[5]), (6, 4), "address lengths");
            assert_eq!(&a[6..8], &[0, 1], "operation: request (gratuitous)");
            assert_eq!(&a[8..14], &mac, "sender MAC");
            assert_eq!(Ipv4Addr::new(a[14], a[15], a[16], a[17]), ip, "sender IP");
            assert_eq!(&a[18..24], &[0; 6], "target MAC unknown");
            assert_eq!(
                Ipv4Addr::new(a[24], a[25], a[26], a[27]),
                ip,
                "target IP = sender IP"
            );
        }
        std::net::IpAddr::V6(ip) => {
            assert_eq!(
                &f[0..6],
                &[0x33, 0x33, 0, 0, 0, 1],
                "to the all-nodes group"
            );
            assert_eq!(&f[p..p + 2], &[0x86, 0xdd], "EtherType IPv6");
            let h = &f[p + 2..];
            assert_eq!(h[0] >> 4, 6, "IPv6");
            assert_eq!(
                u16::from_be_bytes([h[4], h[5]]),
                32,
                "payload: NA + one option"
            );
            assert_eq!((h[6], h[7]), (58, 255), "ICMPv6, hop limit 255");
            let src = Ipv6Addr::from(<[u8; 16]>::try_from(&h[8..24]).unwrap());
            let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&h[24..40]).unwrap());
            assert_eq!(src, ip, "from the address itself");
            assert_eq!(dst, "ff02::1".parse::<Ipv6Addr>().unwrap(), "to all nodes");
            let icmp = &h[40..72];
            assert_eq!((icmp[0], icmp[1]), (136, 0), "neighbour advertisement");
            assert_eq!(icmp[4], 0x20, "override set, router and solicited not");
            assert_eq!(&icmp[5..8], &[0, 0, 0], "reserved");
            let target = Ipv6Addr::from(<[u8; 16]>::try_from(&icmp[8..24]).unwrap());
            assert_eq!(target, ip, "target address");
            assert_eq!(
                (icmp[24], icmp[25]),
                (2, 1),
                "target link-layer address option"
            );
            assert_eq!(&icmp[26..32], &mac, "its MAC");
            // The ICMPv6 checksum over the pseudo-header.
            let mut sum = 0u32;
            let mut add = |b: &[u8]| {
                for c in b.chunks(2) {
                    sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
                }
            };
            add(&h[8..40]);
            add(&32u32.to_be_bytes());
            add(&[0, 0, 0, 58]);
            add(icmp);
            while sum > 0xffff {
                sum = (sum & 0xffff) + (sum >> 16);
            }
            assert_eq!(sum, 0xffff, "ICMPv6 checksum");
        }
    }
}

#[test]
fn promotion_announces_every_address_in_rounds_and_demotion_stops_them() {
    let _g = serial();
    let dir = tempdir();
    let d = dir.path();
    write_pcap(&d.join("none.pcap"), &[]);
    let vm = |name: &str, n: u32, mac: [u8; 6], extra: &str| {
        format!(
            "[[vm]]\nname = \"{name}\"\nport = \"net_null{n},no-rx=1\"\nmac = \"{}\"\nmode = \"standby\"\n{extra}\n",
            mac_text(mac)
        )
    };
    let config = format!(
        "{}[egress]\nport = \"net_pcap0,rx_pcap={d}/none.pcap,tx_pcap={d}/out.pcap\"\n\n{}{}{}",
        eal_and_control(d, "eg-promo"),
        vm(
            "a",
            1,
            A,
            &format!("vlan = 7\nannounce = [\"10.9.0.10\", \"fd00::a\"]\nannounce_count = {ROUNDS}\nannounce_interval_ms = {INTERVAL_MS}")
        ),
        vm("b", 2, B, &format!("announce = [\"10.9.0.11\"]\nannounce_count = {ROUNDS}\nannounce_interval_ms = {INTERVAL_MS}")),
        vm("c", 3, C, "announce = [\"10.9.0.12\"]\nannounce_count = 3\nannounce_interval_ms = 2000"),
        d = d.display(),
    );
    let mut eg = Running::start(d, &config);
    eg.wait_for_path(&d.join("control.sock"));
    let connect = |name: &str| Client::connect(d.join("control.sock"), name).expect("connect");
    let (mut a, mut b, mut c) = (connect("a"), connect("b"), connect("c"));
    assert_eq!(
        a.promote(Mode::Protected).expect("promote a"),
        2,
        "a's first round: 2 frames"
    );
    assert_eq!(b.promote(Mode::Passthrough).expect("promote b"), 1);
    // c is demoted right after: its first round went out at once, the next two never do.
    assert_eq!(c.promote(Mode::Passthrough).expect("promote c"), 1);
    c.demote().expect("demote c");
    // Past the last round of a and b, and past c's second (2 s).
    std::thread::sleep(Duration::from_millis(INTERVAL_MS * ROUNDS as u64 + 2500));
    for s in [&mut a, &mut b] {
        s.unprotect(vmm_shim::proto::Release::Release).ok();
    }
    drop((a, b, c));
    let stats = eg.stop();
    assert_balanced(&stats);

    let out = capture::read_file(&d.join("out.pcap"))
        .expect("egress capture")
        .frames;
    let from = |mac: [u8; 6]| -> Vec<&capture::Frame> {
        out.iter().filter(|f| f.data[6..12] == mac).collect()
    };
    let ips =
        |v: &[&str]| -> Vec<std::net::IpAddr> { v.iter().map(|s| s.parse().unwrap()).collect() };
    for (mac, vlan, addrs, rounds) in [
        (A, Some(7), ips(&["10.9.0.10", "fd00::a"]), ROUNDS),
        (B, None, ips(&["10.9.0.11"]), ROUNDS),
        (C, None, ips(&["10.9.0.12"]), 1),
    ] {
        let frames = from(mac);
        assert_eq!(
            frames.len(),
            addrs.len() * rounds,
            "{}: {rounds} round(s) of {} address(es)",
            mac_text(mac),
            addrs.len()
        );
        for (i, f) in frames.iter().enumerate() {
            // Each round has every address, in config order.
            check(&f.data, mac, vlan, addrs[i % addrs.len()]);
        }
        // Rounds are at least the interval apart (a little under for the capture's clock).
        let starts: Vec<u64> = frames
            .iter()
            .step_by(addrs.len())
            .map(|f| f.ts_ns)
            .collect();
        for w in starts.windows(2) {
            let gap_ms = (w[1] - w[0]) as f64 / 1e6;
            assert!(
                gap_ms >= INTERVAL_MS as f64 * 0.9,
                "{}: rounds {gap_ms:.1} ms apart, configured {INTERVAL_MS} ms",
                mac_text(mac)
            );
        }
    }
    assert_eq!(
        out.len(),
        2 * ROUNDS + ROUNDS + 1,
        "nothing but the announcements"
    );
}
