//! Tests of the classifier: frames built with etherparse's `PacketBuilder`, or by hand for the
//! odd and malformed ones.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use etherparse::{
    IpFragOffset, IpHeaders, IpNumber, Ipv4Extensions, Ipv4Header, Ipv4Options, Ipv6Header,
    PacketBuilder, PacketBuilderStep, TcpHeader, VlanId,
};
use proptest::prelude::*;

use super::*;

const SRC_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x00, 0x00, 0x01];
const DST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x00, 0x00, 0x02];
const SRC4: [u8; 4] = [10, 0, 0, 1];
const DST4: [u8; 4] = [192, 168, 1, 2];
const SRC6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const DST6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
const VM: &str = "vm1";

const PURE_ACK: Classified = Classified {
    verdict: Verdict::Defer,
    reason: Reason::TcpPureAck,
};
const ACK_NO_PSH: Classified = Classified {
    verdict: Verdict::Defer,
    reason: Reason::TcpAckNoPsh,
};
const OTHER: Classified = Classified {
    verdict: Verdict::Immediate,
    reason: Reason::Other,
};
const MALFORMED: Classified = Classified {
    verdict: Verdict::Immediate,
    reason: Reason::Malformed,
};
const V4_MF: Classified = Classified {
    verdict: Verdict::Defer,
    reason: Reason::Ipv4MoreFragments,
};
const V6_MF: Classified = Classified {
    verdict: Verdict::Defer,
    reason: Reason::Ipv6MoreFragments,
};

// ---- frame builders ----

fn write_tcp(b: PacketBuilderStep<TcpHeader>, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut out, payload).expect("build tcp frame");
    out
}

fn tcp4() -> PacketBuilderStep<TcpHeader> {
    PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
        .ipv4(SRC4, DST4, 64)
        .tcp(40000, 80, 1000, 29200)
}

fn tcp6() -> PacketBuilderStep<TcpHeader> {
    PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
        .ipv6(SRC6, DST6, 64)
        .tcp(40000, 443, 1000, 29200)
}

fn pure_ack4() -> Vec<u8> {
    write_tcp(tcp4().ack(1), &[])
}

fn pure_ack4_window(sport: u16, window: u16) -> Vec<u8> {
    write_tcp(
        PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
            .ipv4(SRC4, DST4, 64)
            .tcp(sport, 80, 1000, window)
            .ack(1),
        &[],
    )
}

fn pure_ack6_window(sport: u16, window: u16) -> Vec<u8> {
    write_tcp(
        PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
            .ipv6(SRC6, DST6, 64)
            .tcp(sport, 443, 1000, window)
            .ack(1),
        &[],
    )
}

fn eth(ether_type: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(128);
    f.extend_from_slice(&DST_MAC);
    f.extend_from_slice(&SRC_MAC);
    f.extend_from_slice(&ether_type.to_be_bytes());
    f
}

/// A TCP header (20 bytes) with only ACK set.
fn ack_header(sport: u16, dport: u16) -> Vec<u8> {
    let mut t = TcpHeader::new(sport, dport, 1000, 29200);
    t.ack = true;
    t.acknowledgment_number = 1;
    t.to_bytes().to_vec()
}

/// An IPv4 frame with the given fragment fields and raw payload.
fn ipv4_raw(protocol: u8, more: bool, offset: u16, payload: &[u8]) -> Vec<u8> {
    let mut ip = Ipv4Header::new(payload.len() as u16, 64, IpNumber(protocol), SRC4, DST4).unwrap();
    ip.more_fragments = more;
    ip.fragment_offset = IpFragOffset::try_new(offset).unwrap();
    ip.header_checksum = ip.calc_header_checksum();
    let mut f = eth(ETHERTYPE_IPV4);
    f.extend_from_slice(&ip.to_bytes());
    f.extend_from_slice(payload);
    f
}

/// An IPv6 frame whose payload (extension headers + upper layer) is `body`.
fn ipv6_raw(next: u8, body: &[u8]) -> Vec<u8> {
    let ip = Ipv6Header {
        traffic_class: 0,
        flow_label: Default::default(),
        payload_length: body.len() as u16,
        next_header: IpNumber(next),
        hop_limit: 64,
        source: SRC6,
        destination: DST6,
    };
    let mut f = eth(ETHERTYPE_IPV6);
    f.extend_from_slice(&ip.to_bytes());
    f.extend_from_slice(body);
    f
}

/// A generic 8-byte extension header (hop-by-hop / destination options) holding one PadN.
fn ext8(next: u8) -> [u8; 8] {
    [next, 0, 1, 4, 0, 0, 0, 0]
}

fn frag6(next: u8, offset: u16, more: bool) -> [u8; 8] {
    let off = (offset << 3) | u16::from(more);
    let [a, b] = off.to_be_bytes();
    [next, 0, a, b, 0xde, 0xad, 0xbe, 0xef]
}

fn concat(parts: &[&[u8]]) -> Vec<u8> {
    parts.iter().flat_map(|p| p.iter().copied()).collect()
}

fn classify(frame: &[u8]) -> Classified {
    Classifier::default().classify(VM, VmDefer::Builtin, frame)
}

fn check(frame: &[u8], want: Classified) {
    let got = classify(frame);
    assert_eq!(got, want, "frame {frame:02x?} -> {:?}", parse(frame));
    assert_eq!(builtin(&parse(frame)), want);
}

// ---- TCP flags ----

#[test]
fn tcp_pure_ack_is_deferrable() {
    let f = pure_ack4();
    check(&f, PURE_ACK);
    let info = parse(&f);
    assert!(!info.malformed);
    assert_eq!(info.payload_len, 0);
    assert_eq!(
        info.ports,
        Some(Ports {
            src: 40000,
            dst: 80
        })
    );
    let tcp = info.tcp.unwrap();
    assert_eq!(
        (tcp.flags, tcp.window, tcp.seq, tcp.ack),
        (TcpInfo::ACK, 29200, 1000, 1)
    );
    let ip = info.ip.unwrap();
    assert_eq!(ip.src, IpAddr::V4(Ipv4Addr::from(SRC4)));
    assert_eq!(ip.dst, IpAddr::V4(Ipv4Addr::from(DST4)));
    assert_eq!((ip.protocol, ip.fragment), (6, None));
    assert_eq!((info.src_mac, info.dst_mac), (SRC_MAC, DST_MAC));
    assert_eq!(
        (info.ether_type, info.vlan, info.vlan_tags),
        (ETHERTYPE_IPV4, None, 0)
    );
}

#[test]
fn tcp_ack_with_data_without_psh_is_deferrable() {
    let f = write_tcp(tcp4().ack(1), &[0xab; 100]);
    check(&f, ACK_NO_PSH);
    assert_eq!(parse(&f).payload_len, 100);
}

#[test]
fn tcp_psh_ack_with_data_is_immediate() {
    check(&write_tcp(tcp4().ack(1).psh(), &[1, 2, 3]), OTHER);
}

#[test]
fn tcp_syn_is_immediate() {
    check(&write_tcp(tcp4().syn(), &[]), OTHER);
}

#[test]
fn tcp_syn_ack_is_immediate() {
    check(&write_tcp(tcp4().syn().ack(1), &[]), OTHER);
}

#[test]
fn tcp_fin_ack_is_immediate() {
    check(&write_tcp(tcp4().fin().ack(1), &[]), OTHER);
}

#[test]
fn tcp_rst_is_immediate() {
    check(&write_tcp(tcp4().rst(), &[]), OTHER);
}

#[test]
fn tcp_rst_ack_is_immediate() {
    check(&write_tcp(tcp4().rst().ack(1), &[]), OTHER);
}

#[test]
fn tcp_ack_ece_is_immediate() {
    check(&write_tcp(tcp4().ack(1).ece(), &[]), OTHER);
}

#[test]
fn tcp_ack_cwr_is_immediate() {
    check(&write_tcp(tcp4().ack(1).cwr(), &[]), OTHER);
}

#[test]
fn tcp_ack_urg_is_immediate() {
    check(&write_tcp(tcp4().ack(1).urg(5), &[9; 10]), OTHER);
}

#[test]
fn tcp_ack_with_ns_is_still_a_pure_ack() {
    check(&write_tcp(tcp4().ack(1).ns(), &[]), PURE_ACK);
}

#[test]
fn tcp_without_any_flag_is_immediate() {
    check(&write_tcp(tcp4(), &[]), OTHER);
}

#[test]
fn tcp_pure_ack_padded_to_60_bytes_is_still_pure() {
    let mut f = pure_ack4();
    assert_eq!(f.len(), 54);
    f.resize(60, 0);
    check(&f, PURE_ACK);
    assert_eq!(parse(&f).payload_len, 0);
    // Padding that is not zero is not payload either.
    f[54..].fill(0xee);
    check(&f, PURE_ACK);
}

#[test]
fn tcp_with_options_pure_ack() {
    let f = write_tcp(
        tcp4()
            .ack(1)
            .options(&[etherparse::TcpOptionElement::Timestamp(1, 2)])
            .unwrap(),
        &[],
    );
    check(&f, PURE_ACK);
}

#[test]
fn tcp_v6_pure_ack_and_data() {
    check(&write_tcp(tcp6().ack(1), &[]), PURE_ACK);
    check(&write_tcp(tcp6().ack(1), &[7; 1000]), ACK_NO_PSH);
    check(&write_tcp(tcp6().ack(1).psh(), &[7; 1000]), OTHER);
}

// ---- IPv4 fragments ----

#[test]
fn ipv4_first_fragment_is_deferrable() {
    let payload = concat(&[&ack_header(40000, 80), &[0x55; 1000]]);
    let f = ipv4_raw(6, true, 0, &payload);
    check(&f, V4_MF);
    let info = parse(&f);
    assert_eq!(
        info.ip.unwrap().fragment,
        Some(IpFragment {
            more: true,
            offset: 0
        })
    );
    assert_eq!(
        info.ports,
        Some(Ports {
            src: 40000,
            dst: 80
        })
    );
    assert_eq!(info.tcp, None, "fragments do not carry a TCP verdict");
}

#[test]
fn ipv4_first_fragment_with_psh_is_still_a_fragment() {
    let mut tcp = TcpHeader::new(1, 2, 3, 4);
    tcp.psh = true;
    tcp.syn = true;
    let f = ipv4_raw(6, true, 0, &concat(&[&tcp.to_bytes(), &[1; 64]]));
    check(&f, V4_MF);
}

#[test]
fn ipv4_tiny_first_fragment_is_a_fragment_not_malformed() {
    // Only 8 bytes of the TCP header are in the first fragment.
    let f = ipv4_raw(6, true, 0, &ack_header(40000, 80)[..8]);
    check(&f, V4_MF);
    assert_eq!(
        parse(&f).ports,
        Some(Ports {
            src: 40000,
            dst: 80
        })
    );
}

#[test]
fn ipv4_middle_fragment_is_deferrable() {
    let f = ipv4_raw(6, true, 185, &[0x11; 1480]);
    check(&f, V4_MF);
    let info = parse(&f);
    assert_eq!((info.ports, info.tcp, info.payload_len), (None, None, 1480));
}

#[test]
fn ipv4_last_fragment_is_immediate() {
    // The payload would be a malformed TCP header if anyone read it: nobody must.
    let f = ipv4_raw(6, false, 370, &[0xff; 3]);
    check(&f, OTHER);
    assert!(!parse(&f).malformed);
}

#[test]
fn ipv4_udp_fragments() {
    let udp = concat(&[&[0x13, 0x89, 0x00, 0x35, 0x05, 0xdc, 0, 0], &[0; 100]]);
    check(&ipv4_raw(17, true, 0, &udp), V4_MF);
    check(&ipv4_raw(17, true, 13, &[0; 104]), V4_MF);
    check(&ipv4_raw(17, false, 26, &[0; 104]), OTHER);
}

#[test]
fn ipv4_with_options_pure_ack() {
    let mut ip = Ipv4Header::new(0, 64, IpNumber::TCP, SRC4, DST4).unwrap();
    ip.options = Ipv4Options::from([1, 1, 1, 0, 7, 3, 4, 0]); // NOPs, EOL, padding
    let b = PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
        .ip(IpHeaders::Ipv4(ip, Ipv4Extensions::default()))
        .tcp(40000, 80, 1, 100)
        .ack(1);
    let f = write_tcp(b, &[]);
    assert_eq!(f[14], 0x47, "IHL 7");
    check(&f, PURE_ACK);
    let mut padded = f.clone();
    padded.resize(80, 0);
    check(&padded, PURE_ACK);
}

// ---- IPv6 extension headers and fragments ----

#[test]
fn ipv6_fragment_with_m_set_is_deferrable() {
    let f = ipv6_raw(
        44,
        &concat(&[&frag6(6, 0, true), &ack_header(1, 2), &[0; 500]]),
    );
    check(&f, V6_MF);
    assert_eq!(parse(&f).ports, Some(Ports { src: 1, dst: 2 }));
    // A middle fragment too.
    check(
        &ipv6_raw(44, &concat(&[&frag6(6, 100, true), &[0; 504]])),
        V6_MF,
    );
}

#[test]
fn ipv6_last_fragment_is_immediate() {
    let f = ipv6_raw(44, &concat(&[&frag6(6, 100, false), &[0xff; 3]]));
    check(&f, OTHER);
    let info = parse(&f);
    assert!(!info.malformed);
    assert_eq!(
        info.ip.unwrap().fragment,
        Some(IpFragment {
            more: false,
            offset: 100
        })
    );
    assert_eq!(info.ip.unwrap().protocol, 6);
}

#[test]
fn ipv6_atomic_fragment_is_judged_by_its_transport() {
    // M=0, offset 0: a fragment header that fragments nothing.
    let f = ipv6_raw(44, &concat(&[&frag6(6, 0, false), &ack_header(1, 2)]));
    check(&f, PURE_ACK);
    assert_eq!(parse(&f).ip.unwrap().fragment, None);
}

#[test]
fn ipv6_hop_by_hop_before_fragment() {
    let f = ipv6_raw(
        0,
        &concat(&[
            &ext8(44),
            &frag6(17, 0, true),
            &[0, 53, 0, 53, 0, 100, 0, 0],
            &[0; 92],
        ]),
    );
    check(&f, V6_MF);
    let info = parse(&f);
    assert_eq!(info.ip.unwrap().protocol, 17);
    assert_eq!(info.ports, Some(Ports { src: 53, dst: 53 }));
}

#[test]
fn ipv6_hop_by_hop_and_destination_options_before_tcp_pure_ack() {
    let f = ipv6_raw(0, &concat(&[&ext8(60), &ext8(6), &ack_header(1, 2)]));
    check(&f, PURE_ACK);
    let mut padded = f.clone();
    padded.resize(f.len() + 17, 0xaa);
    check(&padded, PURE_ACK);
    // Routing header and AH in the chain as well.
    let routing = [60, 0, 0, 0, 0, 0, 0, 0];
    let ah = [6, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 2]; // payload len 1 -> 12 bytes
    let f = ipv6_raw(
        0,
        &concat(&[
            &ext8(43),
            &routing,
            &ext8(51),
            &ah,
            &ack_header(1, 2),
            &[1; 10],
        ]),
    );
    check(&f, ACK_NO_PSH);
    assert_eq!(parse(&f).payload_len, 10);
}

#[test]
fn ipv6_longer_extension_header_is_skipped_by_its_length() {
    // hdr ext len 1: 16 bytes.
    let mut hbh = [0u8; 16];
    hbh[0] = 6;
    hbh[1] = 1;
    hbh[2] = 1;
    hbh[3] = 12;
    check(&ipv6_raw(0, &concat(&[&hbh, &ack_header(1, 2)])), PURE_ACK);
}

#[test]
fn ipv6_hop_by_hop_not_first_is_malformed() {
    let f = ipv6_raw(60, &concat(&[&ext8(0), &ext8(6), &ack_header(1, 2)]));
    check(&f, MALFORMED);
}

#[test]
fn ipv6_truncated_extension_chain_is_malformed() {
    // The payload length covers only 4 bytes of the hop-by-hop header.
    let mut f = ipv6_raw(0, &ext8(6)[..4]);
    check(&f, MALFORMED);
    // A header whose length field runs past the payload.
    let mut hbh = ext8(6);
    hbh[1] = 2; // 24 bytes
    f = ipv6_raw(0, &concat(&[&hbh, &[0; 8]]));
    check(&f, MALFORMED);
    // A destination options header cut short after a hop-by-hop one.
    f = ipv6_raw(0, &concat(&[&ext8(60), &[6, 0, 1]]));
    check(&f, MALFORMED);
    // A fragment header cut short.
    f = ipv6_raw(44, &[6, 0, 0]);
    check(&f, MALFORMED);
    // Padding after the truncated header must not be taken for its missing bytes.
    let mut padded = ipv6_raw(0, &ext8(6)[..4]);
    padded.resize(padded.len() + 30, 0);
    check(&padded, MALFORMED);
}

#[test]
fn ipv6_bad_payload_length_is_malformed() {
    let mut f = write_tcp(tcp6().ack(1), &[]);
    let pl = u16::from_be_bytes([f[18], f[19]]);
    f[18..20].copy_from_slice(&(pl + 1).to_be_bytes());
    check(&f, MALFORMED);
    // Zero payload length with a TCP next header (no jumbograms on Ethernet).
    f[18..20].copy_from_slice(&0u16.to_be_bytes());
    check(&f, MALFORMED);
    // Payload length shorter than the TCP header.
    f[18..20].copy_from_slice(&12u16.to_be_bytes());
    check(&f, MALFORMED);
}

#[test]
fn ipv6_truncated_header_and_wrong_version_are_malformed() {
    let f = write_tcp(tcp6().ack(1), &[]);
    check(&f[..14 + 39], MALFORMED);
    let mut v = f.clone();
    v[14] = 0x40; // version 4 under EtherType IPv6
    check(&v, MALFORMED);
}

#[test]
fn ipv6_no_next_header_is_other() {
    check(&ipv6_raw(59, &[]), OTHER);
    let mut f = ipv6_raw(59, &[]);
    f.resize(60, 0);
    check(&f, OTHER);
}

#[test]
fn fragment_bits_are_read_as_on_the_wire() {
    // IPv6 (RFC 8200 4.5): bytes 2..4 are offset << 3 | M. etherparse 0.16 reads them with the
    // wrong bit positions (etherparse#150), so these bytes are spelt out rather than built.
    let first = [0x3a, 0x00, 0x00, 0x01, 0x59, 0xad, 0x9b, 0x98]; // offset 0, M=1
    let info = parse(&ipv6_raw(
        44,
        &concat(&[&first, &[0x80, 0, 0, 0, 0, 1, 0, 1]]),
    ));
    let ip = info.ip.unwrap();
    assert_eq!(
        ip.fragment,
        Some(IpFragment {
            more: true,
            offset: 0
        })
    );
    assert_eq!(ip.protocol, 58);
    assert_eq!(builtin(&info), V6_MF);
    let last = [0x11, 0x00, 0x05, 0xa8, 0x59, 0xad, 0x9b, 0x98]; // offset 181 (1448 bytes), M=0
    let info = parse(&ipv6_raw(44, &concat(&[&last, &[0; 16]])));
    assert_eq!(
        info.ip.unwrap().fragment,
        Some(IpFragment {
            more: false,
            offset: 181
        })
    );
    assert_eq!(builtin(&info), OTHER);
    let middle = [0x11, 0x00, 0x05, 0xa9, 0, 0, 0, 1]; // offset 181, M=1
    check(&ipv6_raw(44, &concat(&[&middle, &[0; 16]])), V6_MF);
    // IPv4: flags+offset word 0x2000 is MF at offset 0; 0x00b9 is offset 185 without MF.
    let mut f = pure_ack4();
    f[20..22].copy_from_slice(&[0x20, 0x00]);
    check(&f, V4_MF);
    f[20..22].copy_from_slice(&[0x00, 0xb9]);
    check(&f, OTHER);
    assert_eq!(
        parse(&f).ip.unwrap().fragment,
        Some(IpFragment {
            more: false,
            offset: 185
        })
    );
    f[20..22].copy_from_slice(&[0x40, 0x00]); // DF only: not a fragment
    check(&f, PURE_ACK);
}

// ---- VLAN tags ----

#[test]
fn single_vlan_pure_ack() {
    let f = write_tcp(
        PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
            .single_vlan(VlanId::try_new(100).unwrap())
            .ipv4(SRC4, DST4, 64)
            .tcp(1, 2, 3, 4)
            .ack(5),
        &[],
    );
    assert_eq!(&f[12..14], &[0x81, 0x00]);
    check(&f, PURE_ACK);
    let info = parse(&f);
    assert_eq!(
        (info.vlan, info.vlan_tags, info.ether_type),
        (Some(100), 1, ETHERTYPE_IPV4)
    );
}

#[test]
fn qinq_pure_ack() {
    let f = write_tcp(
        PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
            .double_vlan(VlanId::try_new(200).unwrap(), VlanId::try_new(100).unwrap())
            .ipv6(SRC6, DST6, 64)
            .tcp(1, 2, 3, 4)
            .ack(5),
        &[],
    );
    assert_eq!(&f[12..14], &[0x88, 0xa8]);
    assert_eq!(&f[16..18], &[0x81, 0x00]);
    check(&f, PURE_ACK);
    let info = parse(&f);
    assert_eq!((info.vlan, info.vlan_tags), (Some(200), 2));
}

#[test]
fn three_tags_with_0x9100_pure_ack() {
    let inner = pure_ack4();
    let mut f = eth(ETHERTYPE_QINQ_OLD);
    f.extend_from_slice(&[0x00, 0x07, 0x81, 0x00]); // vid 7, next 802.1Q
    f.extend_from_slice(&[0x00, 0x08, 0x81, 0x00]); // vid 8, next 802.1Q
    f.extend_from_slice(&[0x00, 0x09, 0x08, 0x00]); // vid 9, next IPv4
    f.extend_from_slice(&inner[14..]);
    check(&f, PURE_ACK);
    let info = parse(&f);
    assert_eq!((info.vlan, info.vlan_tags), (Some(7), 3));
}

#[test]
fn truncated_vlan_tag_is_malformed() {
    let mut f = eth(ETHERTYPE_VLAN);
    f.extend_from_slice(&[0x00, 0x07]);
    check(&f, MALFORMED);
    let mut f = eth(ETHERTYPE_VLAN);
    f.extend_from_slice(&[0x00, 0x07, 0x08, 0x00]); // a tag, then no IPv4 header
    check(&f, MALFORMED);
}

// ---- other protocols ----

#[test]
fn arp_is_immediate() {
    let mut f = eth(ETHERTYPE_ARP);
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&SRC_MAC);
    f.extend_from_slice(&SRC4);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&DST4);
    check(&f, OTHER);
    assert_eq!(parse(&f).ip, None);
}

#[test]
fn icmpv4_is_immediate() {
    let b = PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
        .ipv4(SRC4, DST4, 64)
        .icmpv4_echo_request(1, 2);
    let mut f = Vec::new();
    b.write(&mut f, &[0; 32]).unwrap();
    check(&f, OTHER);
    assert_eq!(parse(&f).ip.unwrap().protocol, 1);
}

#[test]
fn icmpv6_is_immediate() {
    let b = PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
        .ipv6(SRC6, DST6, 64)
        .icmpv6_echo_request(1, 2);
    let mut f = Vec::new();
    b.write(&mut f, &[0; 32]).unwrap();
    check(&f, OTHER);
    assert_eq!(parse(&f).ip.unwrap().protocol, 58);
}

#[test]
fn udp_is_immediate() {
    let b = PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
        .ipv4(SRC4, DST4, 64)
        .udp(5353, 53);
    let mut f = Vec::new();
    b.write(&mut f, &[0; 20]).unwrap();
    check(&f, OTHER);
    let info = parse(&f);
    assert_eq!(info.ports, Some(Ports { src: 5353, dst: 53 }));
    assert_eq!(info.payload_len, 20);
}

#[test]
fn udp_length_beyond_its_packet_is_malformed() {
    let b = PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
        .ipv4(SRC4, DST4, 64)
        .udp(5353, 53);
    let mut f = Vec::new();
    b.write(&mut f, &[0; 4]).unwrap();
    f[38..40].copy_from_slice(&13u16.to_be_bytes());
    check(&f, MALFORMED);
    f[38..40].copy_from_slice(&7u16.to_be_bytes());
    check(&f, MALFORMED);
    check(&ipv4_raw(17, false, 0, &[0, 1, 0, 2, 0]), MALFORMED);
}

#[test]
fn unknown_ether_type_is_immediate() {
    let mut f = eth(0x88b5);
    f.extend_from_slice(&[0; 46]);
    check(&f, OTHER);
    let info = parse(&f);
    assert!(!info.malformed);
    assert_eq!(info.ether_type, 0x88b5);
    // An 802.3 length field is not an EtherType we know either.
    let mut f = eth(46);
    f.extend_from_slice(&[0; 46]);
    check(&f, OTHER);
    // A bare Ethernet header of an unknown type has nothing missing.
    check(&eth(0x88b5), OTHER);
}

// ---- malformed ----

#[test]
fn runt_frames_are_malformed() {
    let f = pure_ack4();
    for n in 0..14 {
        check(&f[..n], MALFORMED);
    }
    // A 20-byte "IPv4" frame: 6 bytes of an IP header.
    check(&f[..20], MALFORMED);
    check(&f[..14], MALFORMED);
    check(&f[..14 + 19], MALFORMED);
}

#[test]
fn ipv4_ihl_below_5_is_malformed() {
    for ihl in 0..5u8 {
        let mut f = pure_ack4();
        f[14] = 0x40 | ihl;
        check(&f, MALFORMED);
    }
}

#[test]
fn ipv4_options_beyond_the_frame_are_malformed() {
    let mut f = pure_ack4();
    f[14] = 0x4f; // IHL 15: 60 bytes of header in a 40-byte packet
    f.truncate(14 + 40);
    check(&f, MALFORMED);
}

#[test]
fn ipv4_total_length_beyond_the_frame_is_malformed() {
    let mut f = pure_ack4();
    f[16..18].copy_from_slice(&41u16.to_be_bytes());
    check(&f, MALFORMED);
    f[16..18].copy_from_slice(&u16::MAX.to_be_bytes());
    check(&f, MALFORMED);
}

#[test]
fn ipv4_total_length_below_the_header_is_malformed() {
    let mut f = pure_ack4();
    f[16..18].copy_from_slice(&19u16.to_be_bytes());
    check(&f, MALFORMED);
    f[16..18].copy_from_slice(&0u16.to_be_bytes());
    check(&f, MALFORMED);
}

#[test]
fn ipv4_wrong_version_is_malformed() {
    let mut f = pure_ack4();
    f[14] = 0x65;
    check(&f, MALFORMED);
}

#[test]
fn truncated_tcp_header_is_malformed() {
    let mut f = pure_ack4();
    f.truncate(14 + 20 + 10);
    f[16..18].copy_from_slice(&30u16.to_be_bytes());
    check(&f, MALFORMED);
    // The same bytes padded to 60: the IP length bounds the TCP header, not the padding.
    f.resize(60, 0);
    check(&f, MALFORMED);
    // Options announced by the data offset but missing.
    let mut f = pure_ack4();
    f[14 + 20 + 12] = 0x60;
    check(&f, MALFORMED);
}

#[test]
fn tcp_data_offset_below_5_is_malformed() {
    for off in 0..5u8 {
        let mut f = pure_ack4();
        f[14 + 20 + 12] = off << 4;
        check(&f, MALFORMED);
    }
}

#[test]
fn ipv4_ah_is_walked() {
    let ah = [6, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 2];
    check(
        &ipv4_raw(51, false, 0, &concat(&[&ah, &ack_header(1, 2)])),
        PURE_ACK,
    );
    check(&ipv4_raw(51, false, 0, &ah[..6]), MALFORMED);
    // A non-first fragment of an AH packet has no AH to read.
    check(&ipv4_raw(51, false, 10, &[0xff; 3]), OTHER);
}

// ---- reasons ----

#[test]
fn reason_names_and_builtin_verdicts() {
    let all = [
        (Reason::TcpPureAck, "tcp-pure-ack", Verdict::Defer),
        (Reason::TcpAckNoPsh, "tcp-ack-no-psh", Verdict::Defer),
        (
            Reason::Ipv4MoreFragments,
            "ipv4-more-fragments",
            Verdict::Defer,
        ),
        (
            Reason::Ipv6MoreFragments,
            "ipv6-more-fragments",
            Verdict::Defer,
        ),
        (Reason::WindowUpdate, "window-update", Verdict::Immediate),
        (Reason::Rule(7), "rule:7", Verdict::Immediate),
        (Reason::VmAll, "vm-all", Verdict::Defer),
        (Reason::VmNever, "vm-never", Verdict::Immediate),
        (Reason::Malformed, "malformed", Verdict::Immediate),
        (Reason::Other, "other", Verdict::Immediate),
    ];
    for (reason, name, verdict) in all {
        assert_eq!(reason.name(), name);
        assert_eq!(reason.to_string(), name);
        assert_eq!(reason.verdict_of_builtin(), verdict, "{name}");
        if !matches!(reason, Reason::Rule(_)) {
            assert_eq!(Classified::builtin(reason).verdict, verdict);
        }
    }
}

// ---- rules ----

fn raw(verdict: &str) -> RawRule {
    RawRule {
        verdict: Some(verdict.into()),
        ..RawRule::default()
    }
}

fn rule(i: usize, r: RawRule) -> Rule {
    Rule::from_raw(i, r).unwrap()
}

fn classifier(rules: Vec<RawRule>) -> Classifier {
    Classifier::from_raw(rules).unwrap()
}

fn rule_hit(i: u16, verdict: Verdict) -> Classified {
    Classified {
        verdict,
        reason: Reason::Rule(i),
    }
}

fn udp4(dport: u16) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
        .ipv4(SRC4, DST4, 64)
        .udp(5000, dport);
    let mut f = Vec::new();
    b.write(&mut f, &[0; 8]).unwrap();
    f
}

#[test]
fn rules_first_match_wins() {
    let c = classifier(vec![
        RawRule {
            protocol: Some("tcp".into()),
            dst_port: Some(80.into()),
            ..raw("immediate")
        },
        RawRule {
            protocol: Some("tcp".into()),
            ..raw("defer")
        },
        raw("immediate"),
    ]);
    let b = VmDefer::Builtin;
    assert_eq!(
        c.classify(VM, b, &pure_ack4()),
        rule_hit(0, Verdict::Immediate)
    );
    let psh443 = write_tcp(tcp6().ack(1).psh(), &[1]);
    assert_eq!(c.classify(VM, b, &psh443), rule_hit(1, Verdict::Defer));
    assert_eq!(
        c.classify(VM, b, &udp4(53)),
        rule_hit(2, Verdict::Immediate)
    );
    assert_eq!(c.rules().len(), 3);
}

#[test]
fn rules_vm_specific() {
    let c = classifier(vec![RawRule {
        vm: Some("db".into()),
        ..raw("defer")
    }]);
    let syn = write_tcp(tcp4().syn(), &[]);
    assert_eq!(
        c.classify("db", VmDefer::Builtin, &syn),
        rule_hit(0, Verdict::Defer)
    );
    assert_eq!(c.classify("web", VmDefer::Builtin, &syn), OTHER);
    assert_eq!(c.classify("db2", VmDefer::Builtin, &syn), OTHER);
}

#[test]
fn rules_match_macs() {
    let mac = |m: [u8; 6]| {
        Some(format!(
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        ))
    };
    let syn = write_tcp(tcp4().syn(), &[]);
    let info = parse(&syn);
    let src = rule(
        0,
        RawRule {
            src_mac: mac(SRC_MAC),
            ..raw("defer")
        },
    );
    let dst = rule(
        0,
        RawRule {
            dst_mac: mac(DST_MAC),
            ..raw("defer")
        },
    );
    let swapped = rule(
        0,
        RawRule {
            src_mac: mac(DST_MAC),
            ..raw("defer")
        },
    );
    assert!(src.matches(VM, &info));
    assert!(dst.matches(VM, &info));
    assert!(!swapped.matches(VM, &info));
    assert_eq!(src.src_mac, Some(SRC_MAC));
}

#[test]
fn rules_match_prefixes_v4_and_v6() {
    let syn4 = parse(&write_tcp(tcp4().syn(), &[])); // 10.0.0.1 -> 192.168.1.2
    let syn6 = parse(&write_tcp(tcp6().syn(), &[])); // fd00::1 -> 2001:db8::2
    let arp = parse(&eth(ETHERTYPE_ARP));
    let r = |src: Option<&str>, dst: Option<&str>| {
        rule(
            0,
            RawRule {
                src_ip: src.map(Into::into),
                dst_ip: dst.map(Into::into),
                ..raw("defer")
            },
        )
    };
    assert!(r(Some("10.0.0.0/8"), None).matches(VM, &syn4));
    assert!(r(Some("10.0.0.1"), Some("192.168.0.0/16")).matches(VM, &syn4));
    assert!(r(Some("0.0.0.0/0"), None).matches(VM, &syn4));
    assert!(!r(Some("10.0.0.2"), None).matches(VM, &syn4));
    assert!(!r(None, Some("192.168.2.0/24")).matches(VM, &syn4));
    assert!(!r(Some("10.0.0.0/8"), None).matches(VM, &syn6));
    assert!(!r(Some("10.0.0.0/8"), None).matches(VM, &arp));
    assert!(r(Some("fd00::/16"), None).matches(VM, &syn6));
    assert!(r(Some("fd00::1"), Some("2001:db8::/32")).matches(VM, &syn6));
    assert!(r(Some("::/0"), None).matches(VM, &syn6));
    assert!(!r(Some("fd01::/16"), None).matches(VM, &syn6));
    assert!(!r(Some("::/0"), None).matches(VM, &syn4));
    assert!(!r(None, Some("2001:db8::3")).matches(VM, &syn6));
    let net: IpNet = "fd00::/16".parse().unwrap();
    assert_eq!(net.to_string(), "fd00::/16");
    assert!(net.contains(IpAddr::V6(Ipv6Addr::from(SRC6))));
}

#[test]
fn rules_match_protocols() {
    let r = |p: IntOrString| {
        rule(
            0,
            RawRule {
                protocol: Some(p),
                ..raw("defer")
            },
        )
    };
    let tcp = parse(&pure_ack4());
    let udp = parse(&udp4(53));
    let icmp6 = {
        let b = PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
            .ipv6(SRC6, DST6, 64)
            .icmpv6_echo_request(1, 2);
        let mut f = Vec::new();
        b.write(&mut f, &[]).unwrap();
        parse(&f)
    };
    assert!(r("tcp".into()).matches(VM, &tcp));
    assert!(!r("tcp".into()).matches(VM, &udp));
    assert!(r("udp".into()).matches(VM, &udp));
    assert!(r(17.into()).matches(VM, &udp));
    assert!(r("17".into()).matches(VM, &udp));
    assert!(r("icmpv6".into()).matches(VM, &icmp6));
    assert!(!r("icmp".into()).matches(VM, &icmp6));
    assert!(!r("tcp".into()).matches(VM, &parse(&eth(ETHERTYPE_ARP))));
    // The protocol is the one after the IPv6 extension headers.
    let ext = parse(&ipv6_raw(
        0,
        &concat(&[&ext8(60), &ext8(6), &ack_header(1, 2)]),
    ));
    assert!(r("tcp".into()).matches(VM, &ext));
}

#[test]
fn rules_match_port_ranges() {
    let r = rule(
        0,
        RawRule {
            protocol: Some("tcp".into()),
            src_port: Some("1000-2000".into()),
            ..raw("defer")
        },
    );
    assert_eq!(r.src_ports, Some(1000..=2000));
    for (port, hit) in [
        (999, false),
        (1000, true),
        (1500, true),
        (2000, true),
        (2001, false),
    ] {
        let f = write_tcp(
            PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
                .ipv4(SRC4, DST4, 64)
                .tcp(port, 80, 1, 1)
                .syn(),
            &[],
        );
        assert_eq!(r.matches(VM, &parse(&f)), hit, "port {port}");
    }
    let d = rule(
        0,
        RawRule {
            protocol: Some("udp".into()),
            dst_port: Some("53".into()),
            ..raw("defer")
        },
    );
    assert!(d.matches(VM, &parse(&udp4(53))));
    assert!(!d.matches(VM, &parse(&udp4(54))));
    // A non-first fragment has no ports, so a port rule does not match it.
    let frag = parse(&ipv4_raw(17, true, 10, &[0; 80]));
    assert!(!d.matches(VM, &frag));
    // A first fragment has them.
    let first = parse(&ipv4_raw(17, true, 0, &[0, 1, 0, 53, 0, 80, 0, 0, 0, 0]));
    assert!(d.matches(VM, &first));
}

#[test]
fn rules_builtin_verdict_falls_through_to_builtin() {
    let c = classifier(vec![
        RawRule {
            protocol: Some("tcp".into()),
            ..raw("builtin")
        },
        raw("defer"),
    ]);
    let b = VmDefer::Builtin;
    assert_eq!(c.classify(VM, b, &pure_ack4()), PURE_ACK);
    assert_eq!(c.classify(VM, b, &write_tcp(tcp4().syn(), &[])), OTHER);
    assert_eq!(c.classify(VM, b, &udp4(53)), rule_hit(1, Verdict::Defer));
}

#[test]
fn per_vm_all_and_never() {
    let c = classifier(vec![raw("immediate")]);
    let syn = write_tcp(tcp4().syn(), &[]);
    let all = Classified {
        verdict: Verdict::Defer,
        reason: Reason::VmAll,
    };
    let never = Classified {
        verdict: Verdict::Immediate,
        reason: Reason::VmNever,
    };
    assert_eq!(c.classify(VM, VmDefer::All, &syn), all);
    assert_eq!(c.classify(VM, VmDefer::All, &pure_ack4()), all);
    assert_eq!(c.classify(VM, VmDefer::Never, &pure_ack4()), never);
    assert_eq!(c.classify(VM, VmDefer::Never, &udp4(1)), never);
    assert_eq!(Reason::VmAll.name(), "vm-all");
    assert_eq!(Reason::VmNever.name(), "vm-never");
    assert_eq!(VmDefer::default(), VmDefer::Builtin);
}

#[test]
fn malformed_stays_immediate_under_a_defer_rule_and_vm_all() {
    let c = classifier(vec![raw("defer")]);
    let mut f = pure_ack4();
    f[14] = 0x44;
    assert_eq!(c.classify(VM, VmDefer::Builtin, &f), MALFORMED);
    assert_eq!(c.classify(VM, VmDefer::All, &f), MALFORMED);
    assert_eq!(c.classify(VM, VmDefer::Never, &f), MALFORMED);
    assert_eq!(c.classify(VM, VmDefer::Builtin, &[]), MALFORMED);
}

#[test]
fn rule_errors_name_the_rule_and_key() {
    let cases: Vec<(RawRule, &str, &str)> = vec![
        (
            RawRule {
                vm: Some(String::new()),
                ..raw("defer")
            },
            "vm",
            "empty",
        ),
        (
            RawRule {
                src_mac: Some("52:54:00".into()),
                ..raw("defer")
            },
            "src_mac",
            "MAC",
        ),
        (
            RawRule {
                dst_mac: Some("zz:54:00:00:00:01".into()),
                ..raw("defer")
            },
            "dst_mac",
            "MAC",
        ),
        (
            RawRule {
                src_ip: Some("10.0.0.0/33".into()),
                ..raw("defer")
            },
            "src_ip",
            "out of range",
        ),
        (
            RawRule {
                dst_ip: Some("fd00::/129".into()),
                ..raw("defer")
            },
            "dst_ip",
            "out of range",
        ),
        (
            RawRule {
                dst_ip: Some("10.0.0.1/8".into()),
                ..raw("defer")
            },
            "dst_ip",
            "host bits",
        ),
        (
            RawRule {
                dst_ip: Some("fd00::1/16".into()),
                ..raw("defer")
            },
            "dst_ip",
            "fd00::/16",
        ),
        (
            RawRule {
                src_ip: Some("10.0.0/8".into()),
                ..raw("defer")
            },
            "src_ip",
            "not an IP",
        ),
        (
            RawRule {
                src_ip: Some("10.0.0.0/-1".into()),
                ..raw("defer")
            },
            "src_ip",
            "out of range",
        ),
        (
            RawRule {
                protocol: Some("sctpx".into()),
                ..raw("defer")
            },
            "protocol",
            "not a known",
        ),
        (
            RawRule {
                protocol: Some("TCP".into()),
                ..raw("defer")
            },
            "protocol",
            "not a known",
        ),
        (
            RawRule {
                protocol: Some(256.into()),
                ..raw("defer")
            },
            "protocol",
            "out of range",
        ),
        (
            RawRule {
                protocol: Some((-1).into()),
                ..raw("defer")
            },
            "protocol",
            "out of range",
        ),
        (
            RawRule {
                protocol: Some("tcp".into()),
                dst_port: Some(70000.into()),
                ..raw("defer")
            },
            "dst_port",
            "out of range",
        ),
        (
            RawRule {
                protocol: Some("tcp".into()),
                src_port: Some("2000-1000".into()),
                ..raw("defer")
            },
            "src_port",
            "start 2000 is above its end 1000",
        ),
        (
            RawRule {
                protocol: Some("udp".into()),
                src_port: Some("1-70000".into()),
                ..raw("defer")
            },
            "src_port",
            "out of range",
        ),
        (
            RawRule {
                protocol: Some("udp".into()),
                dst_port: Some("http".into()),
                ..raw("defer")
            },
            "dst_port",
            "not a port",
        ),
        (
            RawRule {
                protocol: Some("icmp".into()),
                dst_port: Some(80.into()),
                ..raw("defer")
            },
            "dst_port",
            "tcp",
        ),
        (
            RawRule {
                src_port: Some(80.into()),
                ..raw("defer")
            },
            "src_port",
            "protocol",
        ),
        (RawRule::default(), "verdict", "missing"),
        (raw("later"), "verdict", "\"later\" is not one of"),
        (raw("Defer"), "verdict", "is not one of"),
    ];
    for (i, (r, key, why)) in cases.into_iter().enumerate() {
        let e = Rule::from_raw(i, r.clone()).expect_err(&format!("{r:?} should be refused"));
        assert_eq!(e.key, format!("classifier.rule[{i}].{key}"), "{e}");
        assert!(e.why.contains(why), "{e} should contain {why:?}");
        assert_eq!(
            e.to_string(),
            format!("classifier.rule[{i}].{key}: {}", e.why)
        );
    }
    let e = Rule::from_raw(70000, raw("defer")).unwrap_err();
    assert_eq!(e.key, "classifier.rule[70000]");
    // The first bad rule is the one reported.
    let e = Classifier::from_raw(vec![raw("defer"), raw("nope"), RawRule::default()]).unwrap_err();
    assert_eq!(e.key, "classifier.rule[1].verdict");
}

#[test]
fn rules_accept_every_valid_form() {
    let r = rule(
        3,
        RawRule {
            vm: Some("db".into()),
            src_mac: Some("52:54:00:00:00:01".into()),
            dst_mac: Some("ff:ff:ff:ff:ff:ff".into()),
            src_ip: Some("10.0.0.0/8".into()),
            dst_ip: Some("192.0.2.1".into()),
            protocol: Some("udp".into()),
            src_port: Some(0.into()),
            dst_port: Some(" 1000 - 2000 ".into()),
            verdict: Some("builtin".into()),
        },
    );
    assert_eq!(r.src_net, Some("10.0.0.0/8".parse().unwrap()));
    assert_eq!(
        r.dst_net,
        Some(IpNet::V4 {
            addr: Ipv4Addr::new(192, 0, 2, 1),
            len: 32
        })
    );
    assert_eq!(
        (r.protocol, r.src_ports, r.dst_ports),
        (Some(17), Some(0..=0), Some(1000..=2000))
    );
    assert_eq!(r.verdict, RuleVerdict::Builtin);
    let any = rule(0, raw("immediate"));
    assert_eq!(any, Rule::any(RuleVerdict::Immediate));
    assert_eq!(
        rule(
            0,
            RawRule {
                dst_ip: Some("fd00::1".into()),
                ..raw("defer")
            }
        )
        .dst_net,
        Some(IpNet::V6 {
            addr: Ipv6Addr::from(SRC6),
            len: 128
        })
    );
}

#[derive(Debug, serde::Deserialize)]
struct TomlRoot {
    classifier: TomlClassifier,
}

#[derive(Debug, serde::Deserialize)]
struct TomlClassifier {
    rule: Vec<RawRule>,
}

#[test]
fn raw_rules_deserialize_from_toml() {
    let text = r#"
        [[classifier.rule]]
        vm = "db"
        protocol = "tcp"
        dst_port = "5432"
        verdict = "immediate"

        [[classifier.rule]]
        protocol = 17
        src_port = 53
        dst_port = "1024-65535"
        src_ip = "fd00::/16"
        verdict = "defer"

        [[classifier.rule]]
        dst_mac = "33:33:00:00:00:01"
        verdict = "builtin"
    "#;
    let root: TomlRoot = toml::from_str(text).unwrap();
    assert_eq!(root.classifier.rule[1].protocol, Some(IntOrString::Int(17)));
    let c = Classifier::from_raw(root.classifier.rule).unwrap();
    assert_eq!(c.rules().len(), 3);
    assert_eq!(c.rules()[0].dst_ports, Some(5432..=5432));
    assert_eq!(c.rules()[1].src_ports, Some(53..=53));
    assert_eq!(c.rules()[1].dst_ports, Some(1024..=65535));

    let unknown = "[[classifier.rule]]\nverdict = \"defer\"\ndst_prot = 80\n";
    let e = toml::from_str::<TomlRoot>(unknown).unwrap_err().to_string();
    assert!(e.contains("dst_prot"), "{e}");
    let wrong_type = "[[classifier.rule]]\nverdict = \"defer\"\nprotocol = true\n";
    let e = toml::from_str::<TomlRoot>(wrong_type)
        .unwrap_err()
        .to_string();
    assert!(e.contains("an integer or a string"), "{e}");

    #[derive(serde::Deserialize)]
    struct Vm {
        defer: VmDefer,
    }
    for (t, want) in [
        ("all", VmDefer::All),
        ("never", VmDefer::Never),
        ("builtin", VmDefer::Builtin),
    ] {
        let vm: Vm = toml::from_str(&format!("defer = \"{t}\"")).unwrap();
        assert_eq!(vm.defer, want);
    }
}

// ---- window table ----

const WINDOW_UPDATE: Classified = Classified {
    verdict: Verdict::Immediate,
    reason: Reason::WindowUpdate,
};

fn observe(t: &mut WindowTable, frame: &[u8]) -> bool {
    t.observe(&parse(frame))
}

#[test]
fn window_zero_then_open_is_an_update() {
    let mut t = WindowTable::new(64, 1024);
    assert!(!observe(&mut t, &pure_ack4_window(1, 0)), "first sight");
    assert!(!observe(&mut t, &pure_ack4_window(1, 0)));
    assert!(observe(&mut t, &pure_ack4_window(1, 4096)));
    assert!(!observe(&mut t, &pure_ack4_window(1, 4096)), "already open");
    assert_eq!(t.len(), 1);

    let c = Classifier::default();
    let mut t = WindowTable::new(64, 1024);
    let b = VmDefer::Builtin;
    assert_eq!(
        c.classify_with(VM, b, Some(&mut t), &pure_ack4_window(1, 0)),
        PURE_ACK
    );
    assert_eq!(
        c.classify_with(VM, b, Some(&mut t), &pure_ack4_window(1, 2048)),
        WINDOW_UPDATE
    );
    assert_eq!(
        c.classify_with(VM, b, Some(&mut t), &pure_ack4_window(1, 2048)),
        PURE_ACK
    );
    assert_eq!(
        c.classify_with(VM, b, None, &pure_ack4_window(1, 0)),
        PURE_ACK
    );
}

#[test]
fn window_below_threshold_to_above_is_an_update() {
    let mut t = WindowTable::new(64, 1024);
    assert!(!observe(&mut t, &pure_ack4_window(1, 1023)));
    assert!(
        observe(&mut t, &pure_ack4_window(1, 1024)),
        "reaching the threshold counts"
    );
    assert!(
        !observe(&mut t, &pure_ack4_window(1, 100)),
        "closing is not an update"
    );
    assert!(observe(&mut t, &pure_ack4_window(1, 60000)));
}

#[test]
fn window_above_to_above_is_not_an_update() {
    let mut t = WindowTable::new(64, 1024);
    assert!(!observe(&mut t, &pure_ack4_window(1, 2000)));
    assert!(!observe(&mut t, &pure_ack4_window(1, 60000)));
    assert!(!observe(&mut t, &pure_ack4_window(1, 1024)));
}

#[test]
fn window_first_sight_is_not_an_update() {
    let mut t = WindowTable::new(64, 1024);
    for port in 1..=20 {
        assert!(!observe(&mut t, &pure_ack4_window(port, 65535)));
    }
    assert_eq!(t.len(), 20);
    assert!(!t.is_empty());
    t.clear();
    assert!(t.is_empty());
    assert!(
        !observe(&mut t, &pure_ack4_window(1, 65535)),
        "first sight after clear"
    );
}

#[test]
fn window_v6_flows_are_tracked_apart_from_v4() {
    let mut t = WindowTable::new(64, 1024);
    assert!(!observe(&mut t, &pure_ack6_window(1, 0)));
    assert!(!observe(&mut t, &pure_ack4_window(1, 0)));
    assert!(observe(&mut t, &pure_ack6_window(1, 5000)));
    assert!(!observe(&mut t, &pure_ack6_window(2, 5000)), "another flow");
    assert!(observe(&mut t, &pure_ack4_window(1, 5000)));
    assert_eq!(t.len(), 3);
}

#[test]
fn window_table_ignores_what_is_not_an_unfragmented_tcp_ack() {
    let mut t = WindowTable::new(8, 1);
    assert!(!observe(&mut t, &udp4(53)));
    assert!(!observe(&mut t, &ipv4_raw(6, true, 0, &ack_header(1, 2))));
    assert!(!observe(&mut t, &[0u8; 10]));
    assert!(!observe(&mut t, &write_tcp(tcp4(), &[])), "no flag");
    assert!(
        !observe(&mut t, &write_tcp(tcp4().rst(), &[])),
        "RST without ACK"
    );
    assert!(t.is_empty());
    // A SYN is recorded (for its window scale) but never an update.
    assert!(!observe(&mut t, &write_tcp(tcp4().syn(), &[])));
    assert_eq!(t.len(), 1);
    assert_eq!((t.capacity(), t.threshold()), (8, 1));
    assert_eq!(WindowTable::new(0, 1).capacity(), 4);
    assert_eq!(WindowTable::new(5, 1).capacity(), 8);
}

#[test]
fn window_check_applies_only_to_builtin_verdicts() {
    let b = VmDefer::Builtin;
    // A Defer rule decides: no window check.
    let c = classifier(vec![raw("defer")]);
    let mut t = WindowTable::new(64, 1024);
    c.classify_with(VM, b, Some(&mut t), &pure_ack4_window(1, 0));
    assert_eq!(
        c.classify_with(VM, b, Some(&mut t), &pure_ack4_window(1, 4096)),
        rule_hit(0, Verdict::Defer)
    );
    assert!(t.is_empty());
    // A Builtin rule hands over to the built-in classifier: checked.
    let c = classifier(vec![raw("builtin")]);
    c.classify_with(VM, b, Some(&mut t), &pure_ack4_window(1, 0));
    assert_eq!(
        c.classify_with(VM, b, Some(&mut t), &pure_ack4_window(1, 4096)),
        WINDOW_UPDATE
    );
    // VmAll decides before anything.
    let mut t = WindowTable::new(64, 1024);
    c.classify_with(VM, VmDefer::All, Some(&mut t), &pure_ack4_window(1, 0));
    assert!(t.is_empty());
}

#[test]
fn window_opened_by_a_psh_segment_is_remembered() {
    let c = Classifier::default();
    let b = VmDefer::Builtin;
    let mut t = WindowTable::new(64, 1024);
    c.classify_with(VM, b, Some(&mut t), &pure_ack4_window(1, 0));
    let psh = write_tcp(
        PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
            .ipv4(SRC4, DST4, 64)
            .tcp(1, 80, 1000, 8192)
            .ack(1)
            .psh(),
        &[1, 2, 3],
    );
    assert_eq!(c.classify_with(VM, b, Some(&mut t), &psh), OTHER);
    // The peer already learnt of the open window from the PSH segment.
    assert_eq!(
        c.classify_with(VM, b, Some(&mut t), &pure_ack4_window(1, 8192)),
        PURE_ACK
    );
}

// ---- window scaling ----

use etherparse::TcpOptionElement as Opt;

/// The options Linux puts in a SYN (MSS, SACK permitted, timestamps, NOP, window scale), the
/// last one only with `Some`.
fn linux_syn_options(wscale: Option<u8>) -> Vec<Opt> {
    let mut o = vec![
        Opt::MaximumSegmentSize(1460),
        Opt::SelectiveAcknowledgementPermitted,
        Opt::Timestamp(7, 0),
    ];
    if let Some(s) = wscale {
        o.extend([Opt::Noop, Opt::WindowScale(s)]);
    }
    o
}

/// A TCP segment of the test connection: from the client SRC4:40000 to the server DST4:80
/// (`client`), or back; `flags` among SYN, ACK, PSH; raw option bytes if `raw` is given.
fn conn4(client: bool, flags: u8, window: u16, options: &[Opt], raw: Option<&[u8]>) -> Vec<u8> {
    let (src, dst, sport, dport) = if client {
        (SRC4, DST4, 40000, 80)
    } else {
        (DST4, SRC4, 80, 40000)
    };
    let mut b = PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
        .ipv4(src, dst, 64)
        .tcp(sport, dport, 1000, window);
    if flags & TcpInfo::SYN != 0 {
        b = b.syn();
    }
    if flags & TcpInfo::ACK != 0 {
        b = b.ack(1);
    }
    if flags & TcpInfo::PSH != 0 {
        b = b.psh();
    }
    if !options.is_empty() {
        b = b.options(options).expect("options");
    }
    if let Some(raw) = raw {
        b = b.options_raw(raw).expect("raw options");
    }
    write_tcp(b, &[])
}

/// The client's SYN, with Linux's options.
fn syn_of_client(window: u16, wscale: Option<u8>) -> Vec<u8> {
    conn4(true, TcpInfo::SYN, window, &linux_syn_options(wscale), None)
}

/// The server's SYN-ACK, with Linux's options.
fn syn_ack_of_server(window: u16, wscale: Option<u8>) -> Vec<u8> {
    let flags = TcpInfo::SYN | TcpInfo::ACK;
    conn4(false, flags, window, &linux_syn_options(wscale), None)
}

/// A pure ACK of the test connection.
fn ack_of(client: bool, window: u16) -> Vec<u8> {
    conn4(client, TcpInfo::ACK, window, &[], None)
}

fn wscale_of(frame: &[u8]) -> Option<u8> {
    let info = parse(frame);
    assert!(!info.malformed, "{frame:02x?}");
    info.tcp.expect("tcp").wscale
}

/// Observes the handshake (neither segment is an update) with these offers.
fn handshake(t: &mut WindowTable, client: Option<u8>, server: Option<u8>) {
    assert!(!observe(t, &syn_of_client(64240, client)));
    assert!(!observe(t, &syn_ack_of_server(65160, server)));
}

#[test]
fn wscale_is_read_from_syn_and_syn_ack_options() {
    let f = syn_of_client(64240, Some(7));
    check(&f, OTHER);
    let tcp = parse(&f).tcp.unwrap();
    assert_eq!((tcp.wscale, tcp.window), (Some(7), 64240));
    assert_eq!(wscale_of(&syn_ack_of_server(65160, Some(2))), Some(2));
    assert_eq!(wscale_of(&syn_ack_of_server(65160, Some(0))), Some(0));
    check(&syn_ack_of_server(65160, Some(2)), OTHER);
    // Absent: other options only, or no options at all.
    assert_eq!(wscale_of(&syn_of_client(64240, None)), None);
    assert_eq!(wscale_of(&write_tcp(tcp4().syn(), &[])), None);
    // NOP padding before it; first of the options; between others.
    let nops = [Opt::Noop, Opt::Noop, Opt::Noop, Opt::Noop, Opt::Noop];
    let padded = [&nops[..], &[Opt::WindowScale(9)]].concat();
    assert_eq!(
        wscale_of(&conn4(true, TcpInfo::SYN, 1, &padded, None)),
        Some(9)
    );
    let first = [
        Opt::WindowScale(3),
        Opt::Noop,
        Opt::MaximumSegmentSize(1400),
        Opt::Timestamp(1, 2),
    ];
    assert_eq!(
        wscale_of(&conn4(true, TcpInfo::SYN, 1, &first, None)),
        Some(3)
    );
    let middle = [
        Opt::MaximumSegmentSize(1400),
        Opt::WindowScale(4),
        Opt::SelectiveAcknowledgementPermitted,
        Opt::Timestamp(1, 2),
    ];
    assert_eq!(
        wscale_of(&conn4(true, TcpInfo::SYN, 1, &middle, None)),
        Some(4)
    );
    // The parser gives the shift as on the wire; the window table clamps it.
    assert_eq!(wscale_of(&syn_of_client(1, Some(15))), Some(15));
    assert_eq!(wscale_of(&syn_of_client(1, Some(255))), Some(255));
    // Only a SYN's option counts (RFC 7323 §2.2): an ACK carrying one has none.
    let ack = conn4(true, TcpInfo::ACK, 1, &linux_syn_options(Some(7)), None);
    check(&ack, PURE_ACK);
    assert_eq!(wscale_of(&ack), None);
    // IPv6 too.
    let v6 = write_tcp(tcp6().syn().options(&[Opt::WindowScale(6)]).unwrap(), &[]);
    assert_eq!(wscale_of(&v6), Some(6));
}

#[test]
fn wscale_malformed_options_are_no_option_not_a_malformed_frame() {
    let raw_syn = |opts: &[u8]| conn4(true, TcpInfo::SYN, 100, &[], Some(opts));
    for (opts, want) in [
        // Truncated: kind 3 without its length byte / without its shift byte.
        (&[1, 1, 1, 1, 1, 1, 1, 3][..], None),
        (&[1, 1, 1, 1, 1, 1, 3, 3], None),
        // A length past the options area, before the option.
        (&[2, 9, 5, 0xb4, 3, 3, 7, 1], None),
        // A length below 2 stops the walk.
        (&[2, 0, 3, 3, 7, 1, 1, 1], None),
        (&[8, 1, 3, 3, 7, 1, 1, 1], None),
        // What came before a malformed option stands (as in Linux).
        (&[3, 3, 7, 2, 1, 0, 0, 0], Some(7)),
        // End of Option List ends the walk.
        (&[1, 0, 3, 3, 7, 1, 1, 1], None),
        // A Window Scale option of the wrong length is skipped; a later valid one counts.
        (&[3, 4, 7, 0, 1, 1, 1, 1], None),
        (&[3, 4, 7, 0, 1, 3, 3, 5], Some(5)),
        // The last valid one wins (as in Linux).
        (&[3, 3, 1, 1, 3, 3, 2, 0], Some(2)),
        // An unknown option is skipped by its length.
        (&[99, 5, 3, 3, 7, 3, 3, 8], Some(8)),
    ] {
        let f = raw_syn(opts);
        assert_eq!(wscale_of(&f), want, "{opts:?}");
        check(&f, OTHER);
        assert_eq!(parse::window_scale(opts), want, "{opts:?}");
    }
    assert_eq!(parse::window_scale(&[]), None);
    assert_eq!(parse::window_scale(&[3]), None);
    assert_eq!(parse::window_scale(&[3, 3]), None);
    assert_eq!(parse::window_scale(&[3, 3, 14]), Some(14));
    assert_eq!(parse::window_scale(&[1, 1, 1, 3, 3, 0]), Some(0));
}

#[test]
fn window_scaling_agreed_by_both_sides_counts_bytes() {
    // Server shift 7, client shift 2; threshold 1460 bytes.
    let mut t = WindowTable::new(64, 1460);
    handshake(&mut t, Some(2), Some(7));
    assert_eq!(t.len(), 2);
    assert!(!observe(&mut t, &ack_of(false, 0)));
    assert!(
        !observe(&mut t, &ack_of(false, 11)),
        "11 << 7 = 1408 < 1460"
    );
    assert!(
        observe(&mut t, &ack_of(false, 12)),
        "12 << 7 = 1536 >= 1460"
    );
    assert!(!observe(&mut t, &ack_of(false, 12)), "already open");
    assert!(!observe(&mut t, &ack_of(false, 0)));
    assert!(observe(&mut t, &ack_of(false, 12)), "0 -> 1536");
    // The client's own shift, 2.
    assert!(!observe(&mut t, &ack_of(true, 0)));
    assert!(!observe(&mut t, &ack_of(true, 364)), "364 << 2 = 1456");
    assert!(observe(&mut t, &ack_of(true, 365)), "365 << 2 = 1460");

    // Without the table's knowledge of scaling, raw 12 would not be an update.
    let c = Classifier::default();
    let b = VmDefer::Builtin;
    let mut t = WindowTable::new(64, 1460);
    let mut run = |f: &[u8]| c.classify_with(VM, b, Some(&mut t), f);
    assert_eq!(run(&syn_of_client(64240, Some(7))), OTHER);
    assert_eq!(run(&syn_ack_of_server(65160, Some(7))), OTHER);
    assert_eq!(run(&ack_of(true, 502)), PURE_ACK);
    assert_eq!(run(&ack_of(false, 0)), PURE_ACK);
    assert_eq!(run(&ack_of(false, 12)), WINDOW_UPDATE);
    assert_eq!(run(&ack_of(false, 13)), PURE_ACK);
}

#[test]
fn window_scaling_needs_both_offers() {
    for (client, server) in [(Some(7), None), (None, Some(7)), (None, None)] {
        let mut t = WindowTable::new(64, 1460);
        handshake(&mut t, client, server);
        for side in [true, false] {
            assert!(!observe(&mut t, &ack_of(side, 0)));
            assert!(
                !observe(&mut t, &ack_of(side, 12)),
                "{client:?}/{server:?}: 12 bytes, not scaled"
            );
            assert!(!observe(&mut t, &ack_of(side, 1459)));
            assert!(observe(&mut t, &ack_of(side, 1460)));
        }
    }
    // Shift 0 offered by one side: that side's window is not scaled, the other's is.
    let mut t = WindowTable::new(64, 1460);
    handshake(&mut t, Some(0), Some(7));
    assert!(!observe(&mut t, &ack_of(true, 0)));
    assert!(!observe(&mut t, &ack_of(true, 12)));
    assert!(!observe(&mut t, &ack_of(false, 0)));
    assert!(observe(&mut t, &ack_of(false, 12)));
}

#[test]
fn window_of_an_unseen_handshake_is_the_raw_value() {
    let mut t = WindowTable::new(64, 1460);
    assert!(!observe(&mut t, &ack_of(false, 0)));
    assert!(!observe(&mut t, &ack_of(false, 12)), "12: shift unknown, 0");
    assert!(observe(&mut t, &ack_of(false, 1460)));
    // Only the client's SYN seen (as on the egress of a VM that opens the connection): the
    // server's answer is not known, neither is the client's scale.
    let mut t = WindowTable::new(64, 1460);
    assert!(!observe(&mut t, &syn_of_client(64240, Some(7))));
    assert!(!observe(&mut t, &ack_of(true, 0)));
    assert!(!observe(&mut t, &ack_of(true, 12)));
    assert!(observe(&mut t, &ack_of(true, 1460)));
}

#[test]
fn window_scale_of_a_syn_ack_whose_syn_was_not_seen() {
    // As on the egress of a VM that accepts the connection: only its SYN-ACK is seen. RFC 7323
    // §2.2: it carries the option only if the SYN did, so scaling is on with its shift.
    let mut t = WindowTable::new(64, 1460);
    assert!(!observe(&mut t, &syn_ack_of_server(65160, Some(7))));
    assert_eq!(t.len(), 1, "the other direction is not created");
    assert!(!observe(&mut t, &ack_of(false, 0)));
    assert!(observe(&mut t, &ack_of(false, 12)), "12 << 7");
    // The other direction, seen later: its scale is unknown.
    assert!(!observe(&mut t, &ack_of(true, 0)));
    assert!(!observe(&mut t, &ack_of(true, 12)));
    // Without the option: no scaling.
    let mut t = WindowTable::new(64, 1460);
    assert!(!observe(&mut t, &syn_ack_of_server(65160, None)));
    assert!(!observe(&mut t, &ack_of(false, 0)));
    assert!(!observe(&mut t, &ack_of(false, 12)));
    assert!(observe(&mut t, &ack_of(false, 1460)));
}

#[test]
fn window_of_syn_and_syn_ack_is_not_scaled() {
    // The SYN-ACK's window 1000 is 1000 bytes (not 1000 << 7): the next ACK, 12 << 7 = 1536,
    // raises it past 1460.
    let mut t = WindowTable::new(64, 1460);
    assert!(!observe(&mut t, &syn_of_client(1000, Some(7))));
    assert!(!observe(&mut t, &syn_ack_of_server(1000, Some(7))));
    assert!(observe(&mut t, &ack_of(false, 12)));
    assert!(observe(&mut t, &ack_of(true, 12)), "the client's SYN too");
    // A SYN or SYN-ACK is never an update itself, even one opening the window.
    let mut t = WindowTable::new(64, 1460);
    assert!(!observe(&mut t, &syn_of_client(0, Some(7))));
    assert!(!observe(&mut t, &syn_of_client(65535, Some(7))));
    assert!(!observe(&mut t, &syn_ack_of_server(0, Some(7))));
    assert!(!observe(&mut t, &syn_ack_of_server(65535, Some(7))));
    // And classify_with keeps them Immediate `other`.
    let c = Classifier::default();
    let mut t = WindowTable::new(64, 1460);
    for f in [
        syn_of_client(0, Some(7)),
        syn_of_client(65535, Some(7)),
        syn_ack_of_server(0, Some(7)),
        syn_ack_of_server(65535, Some(7)),
    ] {
        assert_eq!(
            c.classify_with(VM, VmDefer::Builtin, Some(&mut t), &f),
            OTHER
        );
    }
}

#[test]
fn window_shift_above_14_counts_as_14() {
    for offer in [15, 200, 255] {
        let mut t = WindowTable::new(64, 20_000);
        handshake(&mut t, Some(offer), Some(offer));
        assert!(!observe(&mut t, &ack_of(false, 0)));
        assert!(!observe(&mut t, &ack_of(false, 1)), "1 << 14 = 16384");
        assert!(observe(&mut t, &ack_of(false, 2)), "2 << 14 = 32768");
        // The largest window in bytes: 65535 << 14, no overflow.
        let mut t = WindowTable::new(64, (65535 << 14) - 1);
        handshake(&mut t, Some(offer), Some(offer));
        assert!(!observe(&mut t, &ack_of(true, 0)));
        assert!(observe(&mut t, &ack_of(true, 65535)));
    }
    let mut t = WindowTable::new(64, u32::MAX);
    handshake(&mut t, Some(14), Some(14));
    assert!(!observe(&mut t, &ack_of(true, 0)));
    assert!(!observe(&mut t, &ack_of(true, 65535)));
}

#[test]
fn window_scale_of_a_new_connection_on_the_same_ports_replaces_the_old() {
    let mut t = WindowTable::new(64, 1460);
    handshake(&mut t, Some(7), Some(7));
    assert!(!observe(&mut t, &ack_of(false, 0)));
    assert!(observe(&mut t, &ack_of(false, 12)));
    handshake(&mut t, None, None);
    assert!(!observe(&mut t, &ack_of(false, 0)));
    assert!(!observe(&mut t, &ack_of(false, 12)), "no scaling now");
    handshake(&mut t, Some(3), Some(3));
    assert!(!observe(&mut t, &ack_of(false, 0)));
    assert!(!observe(&mut t, &ack_of(false, 12)), "12 << 3 = 96");
    assert!(observe(&mut t, &ack_of(false, 183)), "183 << 3 = 1464");
    // A retransmitted SYN-ACK keeps the agreement.
    assert!(!observe(&mut t, &syn_ack_of_server(65160, Some(3))));
    assert!(!observe(&mut t, &ack_of(false, 0)));
    assert!(observe(&mut t, &ack_of(false, 183)));
    assert_eq!(t.len(), 2);
}

#[test]
fn window_scaling_on_ipv6() {
    let syn = write_tcp(
        tcp6().syn().options(&linux_syn_options(Some(7))).unwrap(),
        &[],
    );
    let server = |flags: u8, window: u16, options: &[Opt]| {
        let mut b = PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
            .ipv6(DST6, SRC6, 64)
            .tcp(443, 40000, 1, window)
            .ack(1001);
        if flags & TcpInfo::SYN != 0 {
            b = b.syn();
        }
        if !options.is_empty() {
            b = b.options(options).unwrap();
        }
        write_tcp(b, &[])
    };
    let mut t = WindowTable::new(64, 1460);
    assert!(!observe(&mut t, &syn));
    assert!(!observe(
        &mut t,
        &server(TcpInfo::SYN, 65160, &linux_syn_options(Some(7)))
    ));
    assert!(!observe(&mut t, &server(0, 0, &[])));
    assert!(observe(&mut t, &server(0, 12, &[])));
}

#[test]
fn window_scale_is_learnt_only_from_builtin_verdicts() {
    // A rule taking the client's direction (its SYN) out of the built-in classification: the
    // server's SYN-ACK still sets the server's scale (its option implies the SYN's).
    let c = classifier(vec![RawRule {
        src_ip: Some("10.0.0.1/32".into()),
        ..raw("immediate")
    }]);
    let b = VmDefer::Builtin;
    let mut t = WindowTable::new(64, 1460);
    let mut run = |f: &[u8]| c.classify_with(VM, b, Some(&mut t), f);
    assert_eq!(
        run(&syn_of_client(64240, Some(7))),
        rule_hit(0, Verdict::Immediate)
    );
    assert_eq!(run(&syn_ack_of_server(65160, Some(7))), OTHER);
    assert_eq!(run(&ack_of(false, 0)), PURE_ACK);
    assert_eq!(run(&ack_of(false, 12)), WINDOW_UPDATE);
    assert_eq!(t.len(), 1);
}

/// One direction in [`WindowModel`].
#[derive(Debug, Clone, Copy, Default)]
struct ModelDir {
    /// Last window, in bytes.
    window: u32,
    shift: u32,
    /// What its SYN offered, if one was seen.
    offer: Option<Option<u8>>,
}

/// What the table should answer, written from the rules in [`WindowTable`]'s documentation
/// with a map per direction and no bound.
#[derive(Default)]
struct WindowModel {
    dirs: std::collections::HashMap<(u8, bool), ModelDir>,
    threshold: u32,
}

impl WindowModel {
    /// A segment of connection `conn`, from its client or not.
    fn observe(&mut self, conn: u8, client: bool, flags: u8, window: u16, ws: Option<u8>) -> bool {
        let (syn, ack) = (flags & TcpInfo::SYN != 0, flags & TcpInfo::ACK != 0);
        if !syn && !ack {
            return false;
        }
        let (me, rev) = ((conn, client), (conn, !client));
        let before = self.dirs.get(&me).copied();
        if syn {
            let offer = ws.map(|s| s.min(14));
            let mut shift = 0;
            if ack {
                match self.dirs.get(&rev).and_then(|d| d.offer) {
                    None => shift = offer.map_or(0, u32::from),
                    Some(peer) => {
                        let (mine, theirs) = match (offer, peer) {
                            (Some(a), Some(b)) => (u32::from(a), u32::from(b)),
                            _ => (0, 0),
                        };
                        shift = mine;
                        if let Some(d) = self.dirs.get_mut(&rev) {
                            d.shift = theirs;
                        }
                    }
                }
            }
            let dir = ModelDir {
                window: u32::from(window),
                shift,
                offer: Some(offer),
            };
            self.dirs.insert(me, dir);
            return false;
        }
        let mut dir = before.unwrap_or_default();
        dir.window = u32::from(window) << dir.shift;
        self.dirs.insert(me, dir);
        before.is_some_and(|b| b.window < self.threshold) && dir.window >= self.threshold
    }
}

/// A segment of connection `conn` (client port 1000 + conn, server port 80) as a FrameInfo.
fn conn_info(conn: u8, client: bool, flags: u8, window: u16, wscale: Option<u8>) -> FrameInfo {
    let (a, b) = (
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
    );
    let (cport, sport) = (1000 + u16::from(conn), 80);
    let (src, dst, ports) = if client {
        (
            a,
            b,
            Ports {
                src: cport,
                dst: sport,
            },
        )
    } else {
        (
            b,
            a,
            Ports {
                src: sport,
                dst: cport,
            },
        )
    };
    FrameInfo {
        ether_type: ETHERTYPE_IPV4,
        ip: Some(IpInfo {
            src,
            dst,
            protocol: 6,
            fragment: None,
        }),
        ports: Some(ports),
        tcp: Some(TcpInfo {
            flags,
            ns: false,
            window,
            seq: 0,
            ack: 0,
            wscale: if flags & TcpInfo::SYN != 0 {
                wscale
            } else {
                None
            },
        }),
        ..FrameInfo::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    #[test]
    fn window_table_agrees_with_a_model(
        segments in proptest::collection::vec(
            (
                0u8..3,
                any::<bool>(),
                prop::sample::select(vec![
                    TcpInfo::SYN,
                    TcpInfo::SYN | TcpInfo::ACK,
                    TcpInfo::ACK,
                    TcpInfo::ACK,
                    TcpInfo::ACK,
                    TcpInfo::ACK | TcpInfo::PSH,
                    TcpInfo::RST,
                ]),
                prop::sample::select(vec![0u16, 1, 11, 12, 100, 1459, 1460, 65535]),
                prop::option::of(prop::sample::select(vec![0u8, 2, 7, 14, 15, 255])),
            ),
            0..60,
        ),
        threshold in prop::sample::select(vec![1u32, 1460, 20_000]),
    ) {
        // 6 directions in 1024 ways: no eviction.
        let mut t = WindowTable::new(1024, threshold);
        let mut m = WindowModel { threshold, ..WindowModel::default() };
        for (i, &(conn, client, flags, window, ws)) in segments.iter().enumerate() {
            let info = conn_info(conn, client, flags, window, ws);
            prop_assert_eq!(
                t.observe(&info),
                m.observe(conn, client, flags, window, info.tcp.unwrap().wscale),
                "segment {}: {:?}", i, segments
            );
        }
        prop_assert_eq!(t.len(), m.dirs.len());
    }
}

/// A synthetic TCP ACK of flow number `n` (v4 or v6 by parity), without building a frame.
fn flow_info(n: u32, window: u16) -> FrameInfo {
    let ip = if n % 2 == 0 {
        (
            IpAddr::V4(Ipv4Addr::from(n)),
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
        )
    } else {
        (
            IpAddr::V6(Ipv6Addr::from(u128::from(n) << 64)),
            IpAddr::V6(Ipv6Addr::from(1u128)),
        )
    };
    FrameInfo {
        ether_type: ETHERTYPE_IPV4,
        ip: Some(IpInfo {
            src: ip.0,
            dst: ip.1,
            protocol: 6,
            fragment: None,
        }),
        ports: Some(Ports {
            src: (n >> 16) as u16,
            dst: n as u16,
        }),
        tcp: Some(TcpInfo {
            flags: TcpInfo::ACK,
            ns: false,
            window,
            seq: n,
            ack: 0,
            wscale: None,
        }),
        ..FrameInfo::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]

    #[test]
    fn window_table_capacity_is_never_exceeded(capacity in 0usize..6000, seed in any::<u32>()) {
        let mut t = WindowTable::new(capacity, 100);
        let cap = t.capacity();
        prop_assert!(cap >= capacity && cap < capacity + 4 + usize::from(capacity == 0) * 4);
        for i in 0..100_000u32 {
            let n = seed.wrapping_add(i.wrapping_mul(2_654_435_761));
            prop_assert!(!t.observe(&flow_info(n, 0)), "first sight of {n}");
            prop_assert!(t.len() <= cap);
        }
        prop_assert_eq!(t.len(), cap, "100k flows fill every way");
        // Recently seen flows are still there: reopening the last one is an update.
        let last = seed.wrapping_add(99_999u32.wrapping_mul(2_654_435_761));
        prop_assert!(t.observe(&flow_info(last, 1000)));
    }
}

// ---- never panic ----

fn base_frames() -> Vec<Vec<u8>> {
    vec![
        pure_ack4(),
        write_tcp(tcp4().ack(1).psh(), &[1; 40]),
        write_tcp(
            tcp6()
                .ack(1)
                .options(&[etherparse::TcpOptionElement::Noop])
                .unwrap(),
            &[2; 9],
        ),
        ipv6_raw(
            0,
            &concat(&[&ext8(60), &ext8(44), &frag6(6, 0, true), &ack_header(1, 2)]),
        ),
        ipv4_raw(6, true, 0, &concat(&[&ack_header(1, 2), &[3; 30]])),
        ipv4_raw(
            51,
            false,
            0,
            &concat(&[&[6, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 2], &ack_header(1, 2)]),
        ),
        write_tcp(
            PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
                .double_vlan(VlanId::try_new(1).unwrap(), VlanId::try_new(2).unwrap())
                .ipv4(SRC4, DST4, 64)
                .tcp(1, 2, 3, 4)
                .ack(5),
            &[],
        ),
        // Options walked for the window scale.
        syn_ack_of_server(65160, Some(7)),
    ]
}

fn check_invariants(frame: &[u8]) {
    let info = parse(frame);
    let c = classifier(vec![
        RawRule {
            protocol: Some("tcp".into()),
            dst_port: Some("1-1000".into()),
            ..raw("builtin")
        },
        RawRule {
            src_ip: Some("fd00::/8".into()),
            ..raw("defer")
        },
    ]);
    let mut t = WindowTable::new(8, 10);
    for defer in [VmDefer::Builtin, VmDefer::All, VmDefer::Never] {
        let got = c.classify(VM, defer, frame);
        assert_eq!(got, c.classify_info(VM, defer, &info));
        let with = c.classify_with(VM, defer, Some(&mut t), frame);
        if info.malformed {
            assert_eq!(got, MALFORMED);
            assert_eq!(with, MALFORMED);
        }
    }
    let b = builtin(&info);
    assert_eq!(
        Classifier::default().classify(VM, VmDefer::Builtin, frame),
        b
    );
    assert_eq!(b.verdict, b.reason.verdict_of_builtin());
    if matches!(b.reason, Reason::TcpPureAck | Reason::TcpAckNoPsh) {
        let tcp = info.tcp.expect("a TCP verdict has a TCP header");
        assert_eq!(tcp.flags, TcpInfo::ACK);
        assert_eq!(b.reason == Reason::TcpPureAck, info.payload_len == 0);
    }
    if !info.malformed {
        assert!(usize::from(info.payload_len) <= frame.len());
    }
    if let Some(tcp) = info.tcp {
        if tcp.flags & TcpInfo::SYN == 0 {
            assert_eq!(tcp.wscale, None);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn never_panics_on_arbitrary_bytes(frame in proptest::collection::vec(any::<u8>(), 0..2000)) {
        check_invariants(&frame);
    }

    #[test]
    fn never_panics_on_arbitrary_bytes_behind_an_ip_header(
        ether_type in prop::sample::select(vec![ETHERTYPE_IPV4, ETHERTYPE_IPV6, ETHERTYPE_VLAN]),
        version in 0u8..16,
        rest in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        // Random bytes rarely get past the EtherType and version check; start there.
        let mut f = eth(ether_type);
        f.push((version << 4) | (rest.first().copied().unwrap_or(0) & 0x0f));
        f.extend_from_slice(&rest);
        check_invariants(&f);
    }

    #[test]
    fn window_scale_walk_never_panics(options in proptest::collection::vec(any::<u8>(), 0..48)) {
        if let Some(shift) = parse::window_scale(&options) {
            prop_assert!(options.windows(3).any(|w| w == [3, 3, shift]), "{:?}", options);
        }
    }

    #[test]
    fn never_panics_on_mutated_or_truncated_tcp_frames(
        which in 0usize..8,
        mutations in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
        cut in any::<prop::sample::Index>(),
        pad in 0usize..40,
    ) {
        let mut f = base_frames().swap_remove(which);
        for (at, byte) in mutations {
            let i = at.index(f.len());
            f[i] = byte;
        }
        check_invariants(&f);
        let n = cut.index(f.len() + 1);
        check_invariants(&f[..n]);
        f.resize(f.len() + pad, 0);
        check_invariants(&f);
    }
}

// ---- the compiled rules agree with Rule::matches ----

fn arb_net() -> impl Strategy<Value = Option<IpNet>> {
    prop_oneof![
        Just(None),
        (
            prop::sample::select(vec![SRC4, DST4, [10, 9, 8, 7]]),
            0u8..=32
        )
            .prop_map(|(a, len)| {
                Some(IpNet::V4 {
                    addr: Ipv4Addr::from(a),
                    len,
                })
            }),
        (
            prop::sample::select(vec![SRC6, DST6, [0xfe; 16]]),
            0u8..=128
        )
            .prop_map(|(a, len)| {
                Some(IpNet::V6 {
                    addr: Ipv6Addr::from(a),
                    len,
                })
            }),
    ]
}

fn arb_ports() -> impl Strategy<Value = Option<std::ops::RangeInclusive<u16>>> {
    prop_oneof![
        Just(None),
        (any::<u16>(), any::<u16>()).prop_map(|(a, b)| Some(a.min(b)..=a.max(b))),
        prop::sample::select(vec![1u16, 2, 53, 80, 443, 5000, 40000]).prop_map(|p| Some(p..=p)),
    ]
}

fn arb_rule() -> impl Strategy<Value = Rule> {
    let mac = prop::sample::select(vec![None, Some(SRC_MAC), Some(DST_MAC), Some([0xff; 6])]);
    (
        prop::sample::select(vec![None, Some(VM), Some("db")]),
        mac.clone(),
        mac,
        arb_net(),
        arb_net(),
        prop::sample::select(vec![None, Some(1u8), Some(6), Some(17), Some(58), Some(0)]),
        arb_ports(),
        arb_ports(),
    )
        .prop_map(
            |(vm, src_mac, dst_mac, src_net, dst_net, protocol, src_ports, dst_ports)| Rule {
                vm: vm.map(String::from),
                src_mac,
                dst_mac,
                src_net,
                dst_net,
                protocol,
                src_ports,
                dst_ports,
                verdict: RuleVerdict::Defer,
            },
        )
}

fn probe_frames() -> Vec<Vec<u8>> {
    let mut frames = base_frames();
    frames.push(udp4(53));
    frames.push(eth(ETHERTYPE_ARP));
    frames.push(ipv4_raw(17, true, 10, &[0; 80]));
    frames.push(write_tcp(tcp6().syn(), &[]));
    frames.push(write_tcp(tcp4().fin().ack(1), &[]));
    frames
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn compiled_rules_agree_with_rule_matches(
        rule in arb_rule(),
        which in any::<prop::sample::Index>(),
        vm in prop::sample::select(vec![VM, "db", "other"]),
    ) {
        let frames = probe_frames();
        let info = parse(&frames[which.index(frames.len())]);
        let compiled = compiled::CompiledRule::of(&rule);
        prop_assert_eq!(
            compiled.matches(vm, &compiled::Probe::of(&info)),
            rule.matches(vm, &info),
            "{:?} on {:?}", rule, info
        );
    }
}

/// The classifier's indexed first-match against a plain scan with [`Rule::matches`].
fn reference(rules: &[Rule], vm: &str, info: &FrameInfo) -> Classified {
    if info.malformed {
        return MALFORMED;
    }
    match rules.iter().position(|r| r.matches(vm, info)) {
        None => builtin(info),
        Some(i) => match rules[i].verdict {
            RuleVerdict::Builtin => builtin(info),
            RuleVerdict::Defer => rule_hit(i as u16, Verdict::Defer),
            RuleVerdict::Immediate => rule_hit(i as u16, Verdict::Immediate),
        },
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn classifier_agrees_with_a_plain_scan(
        rules in proptest::collection::vec(
            (arb_rule(), prop::sample::select(vec![
                RuleVerdict::Defer, RuleVerdict::Immediate, RuleVerdict::Builtin,
            ])).prop_map(|(mut r, v)| { r.verdict = v; r }),
            0..140,
        ),
        vm in prop::sample::select(vec![VM, "db", "other"]),
    ) {
        let c = Classifier::new(rules.clone());
        for frame in probe_frames() {
            let info = parse(&frame);
            prop_assert_eq!(
                c.classify_info(vm, VmDefer::Builtin, &info),
                reference(&rules, vm, &info),
                "{:?}", info
            );
        }
    }
}

#[test]
fn a_data_segment_opening_the_window_stays_a_data_ack() {
    // Only a pure ACK is a window update: a data segment is the sender's own progress.
    let c = Classifier::default();
    let mut t = WindowTable::new(64, 1024);
    let b = VmDefer::Builtin;
    c.classify_with(VM, b, Some(&mut t), &pure_ack4_window(1, 0));
    let data = write_tcp(
        PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
            .ipv4(SRC4, DST4, 64)
            .tcp(1, 80, 1000, 4096)
            .ack(1),
        &[7; 100],
    );
    let got = c.classify_with(VM, b, Some(&mut t), &data);
    assert_eq!(
        (got.verdict, got.reason),
        (Verdict::Defer, Reason::TcpAckNoPsh)
    );
    // The table saw the opening: a pure ACK at the same window is not an update either.
    assert_eq!(
        c.classify_with(VM, b, Some(&mut t), &pure_ack4_window(1, 4096)),
        PURE_ACK
    );
}
