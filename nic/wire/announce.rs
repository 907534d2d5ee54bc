//! Announcing a VM's new place: when a standby copy is promoted, the switches must learn that
//! its addresses now live behind this host. For each configured IPv4 address a gratuitous ARP
//! (an ARP announcement, RFC 5227: a request whose sender and target are the address), for each
//! IPv6 address an unsolicited neighbour advertisement (RFC 4861 7.2.6: to all-nodes, Override
//! set, with the target link-layer address option). Built once from the config, as bytes; the
//! worker copies them into mbufs on `Promote`.

use crate::wire::frame::MacAddr;
use etherparse::PacketBuilder;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The frames that announce `addrs` at `mac` (tagged with `vlan` if the VM has one).
pub fn frames(mac: MacAddr, vlan: Option<u16>, addrs: &[IpAddr]) -> Vec<Vec<u8>> {
    addrs
        .iter()
        .map(|a| {
            let mut f = match a {
                IpAddr::V4(ip) => arp_announcement(mac, *ip),
                IpAddr::V6(ip) => neighbour_advertisement(mac, *ip),
            };
            if let Some(v) = vlan {
                crate::wire::frame::insert_vlan(&mut f, v);
            }
            // The minimum Ethernet frame (without FCS), so every driver sends it as is.
            if f.len() < 60 {
                f.resize(60, 0);
            }
            f
        })
        .collect()
}

fn arp_announcement(mac: MacAddr, ip: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(&MacAddr::BROADCAST.0);
    f.extend_from_slice(&mac.0);
    f.extend_from_slice(&0x0806u16.to_be_bytes());
    // Ethernet, IPv4, 6-byte and 4-byte addresses, request.
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&mac.0);
    f.extend_from_slice(&ip.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&ip.octets());
    f
}

/// ICMPv6 type of a neighbour advertisement, and its Override flag (first byte of the 4 bytes
/// after the checksum).
const NEIGHBOR_ADVERTISEMENT: u8 = 136;
const OVERRIDE: u8 = 0x20;
/// Option: target link-layer address, length 1 (in units of 8 bytes).
const TARGET_LINK_LAYER: [u8; 2] = [2, 1];

fn neighbour_advertisement(mac: MacAddr, ip: Ipv6Addr) -> Vec<u8> {
    let all_nodes = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
    let mut body = Vec::with_capacity(24);
    body.extend_from_slice(&ip.octets());
    body.extend_from_slice(&TARGET_LINK_LAYER);
    body.extend_from_slice(&mac.0);
    let mut f = Vec::with_capacity(86);
    // Hop limit 255: receivers drop neighbour discovery that has crossed a router.
    PacketBuilder::ethernet2(mac.0, [0x33, 0x33, 0, 0, 0, 1])
        .ipv6(ip.octets(), all_nodes.octets(), 255)
        .icmpv6_raw(NEIGHBOR_ADVERTISEMENT, 0, [OVERRIDE, 0, 0, 0])
        .write(&mut f, &body)
        .expect("writing to a Vec cannot fail and the body is 24 bytes");
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};

    const MAC: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 4]);

    /// A gratuitous ARP for 10.9.0.4 from 52:54:00:00:00:04, padded to 60 bytes.
    static GARP: [u8; 60] = {
        let mut f = [0u8; 60];
        let head: [u8; 42] = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x52, 0x54, 0, 0, 0, 4, 0x08,
            0x06, // Ethernet
            0, 1, 8, 0, 6, 4, 0, 1, // ARP request
            0x52, 0x54, 0, 0, 0, 4, 10, 9, 0, 4, // sender: the VM
            0, 0, 0, 0, 0, 0, 10, 9, 0, 4, // target: its own address
        ];
        let mut i = 0;
        while i < head.len() {
            f[i] = head[i];
            i += 1;
        }
        f
    };

    #[test]
    fn an_ipv4_address_is_announced_by_gratuitous_arp() {
        let f = frames(MAC, None, &["10.9.0.4".parse().unwrap()]);
        assert_eq!(f, vec![GARP.to_vec()]);
    }

    #[test]
    fn an_ipv6_address_is_announced_by_an_unsolicited_neighbour_advertisement() {
        let ip: Ipv6Addr = "fd00::4".parse().unwrap();
        let f = frames(MAC, None, &[IpAddr::V6(ip)]);
        assert_eq!(f.len(), 1);
        let p = SlicedPacket::from_ethernet(&f[0]).expect("parses");
        let eth = p.link.as_ref().and_then(|l| l.to_header()).expect("eth");
        let eth = match eth {
            etherparse::LinkHeader::Ethernet2(e) => e,
            other => panic!("{other:?}"),
        };
        assert_eq!(eth.destination, [0x33, 0x33, 0, 0, 0, 1]);
        assert_eq!(eth.source, MAC.0);
        let Some(NetSlice::Ipv6(ip6)) = &p.net else {
            panic!("not IPv6")
        };
        assert_eq!(ip6.header().source_addr(), ip);
        assert_eq!(ip6.header().destination_addr().to_string(), "ff02::1");
        assert_eq!(ip6.header().hop_limit(), 255);
        let Some(TransportSlice::Icmpv6(icmp)) = &p.transport else {
            panic!("not ICMPv6")
        };
        assert_eq!(icmp.type_u8(), 136);
        assert_eq!(icmp.code_u8(), 0);
        assert_eq!(
            icmp.bytes5to8(),
            [0x20, 0, 0, 0],
            "Override, not Solicited, not Router"
        );
        let body = icmp.payload();
        assert_eq!(&body[..16], &ip.octets());
        assert_eq!(&body[16..], &[2, 1, 0x52, 0x54, 0, 0, 0, 4]);
        // The checksum covers the IPv6 pseudo header: recompute it independently.
        let header = icmp.header();
        let expect = header
            .icmp_type
            .calc_checksum(
                ip.octets(),
                [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                body,
            )
            .expect("checksum");
        assert_eq!(icmp.checksum(), expect);
    }

    #[test]
    fn a_vlan_vm_announces_on_its_vlan_and_order_follows_the_config() {
        let f = frames(
            MAC,
            Some(10),
            &["fd00::4".parse().unwrap(), "10.9.0.4".parse().unwrap()],
        );
        assert_eq!(f.len(), 2);
        for x in &f {
            assert_eq!(&x[12..16], &[0x81, 0x00, 0, 10]);
        }
        assert_eq!(&f[0][16..18], &[0x86, 0xdd]);
        let mut untagged = f[1].clone();
        untagged.drain(12..16);
        assert_eq!(untagged[..42], GARP[..42]);
    }

    #[test]
    fn no_addresses_no_frames() {
        assert!(frames(MAC, None, &[]).is_empty());
    }
}
