//! One pass over a frame, from its Ethernet header, into a [`FrameInfo`]: L2 addresses, VLAN
//! tags, IP addresses and protocol (after IPv4 options and IPv6 extension headers), fragment
//! state, ports, TCP flags/window/seq (and a SYN's Window Scale option) and payload length. No
//! allocation; never panics.

use std::net::IpAddr;

use etherparse::{
    Ethernet2HeaderSlice, IpAuthHeaderSlice, Ipv4HeaderSlice, Ipv6FragmentHeaderSlice,
    Ipv6HeaderSlice, Ipv6RawExtHeaderSlice, SingleVlanHeaderSlice, TcpHeaderSlice, UdpHeaderSlice,
};

/// EtherType of IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// EtherType of IPv6.
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
/// EtherType of ARP.
pub const ETHERTYPE_ARP: u16 = 0x0806;
/// TPID of an 802.1Q VLAN tag.
pub const ETHERTYPE_VLAN: u16 = 0x8100;
/// TPID of an 802.1ad (QinQ) service tag.
pub const ETHERTYPE_QINQ: u16 = 0x88a8;
/// Pre-standard QinQ TPID, still emitted by some switches.
pub const ETHERTYPE_QINQ_OLD: u16 = 0x9100;

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_DSTOPTS: u8 = 60;

const IPV6_HEADER_LEN: usize = 40;
/// The TCP header without options.
const TCP_HEADER_LEN: usize = 20;

const TCPOPT_EOL: u8 = 0;
const TCPOPT_NOP: u8 = 1;
const TCPOPT_WINDOW: u8 = 3;

/// What the classifier needs from a frame, read once by [`parse`]. Fields after the first
/// invalid header keep their defaults (`None` / 0); `malformed` says that happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FrameInfo {
    /// The frame is shorter than a header it declares, or a header is invalid (bad IHL, IPv4
    /// total length beyond the frame, IPv6 payload length beyond the frame, truncated
    /// extension header chain, truncated TCP/UDP header, TCP data offset < 5, ...).
    pub malformed: bool,
    /// Destination MAC (zero for a runt).
    pub dst_mac: [u8; 6],
    /// Source MAC (zero for a runt).
    pub src_mac: [u8; 6],
    /// VLAN ID of the outermost tag (802.1Q, 802.1ad or 0x9100), if any.
    pub vlan: Option<u16>,
    /// How many VLAN tags were walked (saturates at 255).
    pub vlan_tags: u8,
    /// The EtherType after all VLAN tags (0 for a runt).
    pub ether_type: u16,
    /// The IP layer, for IPv4/IPv6 frames whose IP header is valid.
    pub ip: Option<IpInfo>,
    /// TCP/UDP ports: of an unfragmented packet, or of a first fragment that carries them.
    pub ports: Option<Ports>,
    /// The TCP header of an unfragmented TCP packet.
    pub tcp: Option<TcpInfo>,
    /// Bytes after the TCP/UDP header (bounded by the IP length, so Ethernet padding is not
    /// counted); for other IP protocols and fragments, bytes after the IP headers; 0 else.
    pub payload_len: u16,
}

/// Addresses, upper-layer protocol and fragment state of an IP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpInfo {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// The upper-layer protocol after IPv4 AH / IPv6 extension headers (for a non-first
    /// fragment: the next header named by the fragment header).
    pub protocol: u8,
    /// Set when the packet is a fragment (More-Fragments set, or a non-zero offset).
    pub fragment: Option<IpFragment>,
}

/// Fragment state of a fragment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpFragment {
    /// IPv4 MF / IPv6 M: more fragments follow.
    pub more: bool,
    /// Offset in 8-byte units (0 for the first fragment).
    pub offset: u16,
}

/// Transport ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ports {
    /// Source port.
    pub src: u16,
    /// Destination port.
    pub dst: u16,
}

/// The TCP header fields the classifier and the window table look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpInfo {
    /// Byte 13 of the header: CWR ECE URG ACK PSH RST SYN FIN (see the consts).
    pub flags: u8,
    /// The NS bit (ignored by the classifier).
    pub ns: bool,
    /// The advertised window as it is in the header (not scaled).
    pub window: u16,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgment number (meaningful with ACK set).
    pub ack: u32,
    /// The shift count of the Window Scale option (kind 3, length 3; RFC 7323 §2) of a segment
    /// with SYN set, as on the wire (not clamped to 14). `None` when the segment has no SYN
    /// (the option means nothing elsewhere), or carries no such option before the end of its
    /// options or a malformed option (which ends the walk without making the frame malformed).
    pub wscale: Option<u8>,
}

impl TcpInfo {
    /// FIN flag bit of [`TcpInfo::flags`].
    pub const FIN: u8 = 0x01;
    /// SYN flag bit.
    pub const SYN: u8 = 0x02;
    /// RST flag bit.
    pub const RST: u8 = 0x04;
    /// PSH flag bit.
    pub const PSH: u8 = 0x08;
    /// ACK flag bit.
    pub const ACK: u8 = 0x10;
    /// URG flag bit.
    pub const URG: u8 = 0x20;
    /// ECE flag bit.
    pub const ECE: u8 = 0x40;
    /// CWR flag bit.
    pub const CWR: u8 = 0x80;

    /// ACK is set and none of SYN, FIN, RST, PSH, URG, ECE, CWR (NS is ignored).
    #[inline]
    pub fn is_only_ack(&self) -> bool {
        self.flags == Self::ACK
    }

    /// Whether ACK is set.
    #[inline]
    pub fn has_ack(&self) -> bool {
        self.flags & Self::ACK != 0
    }
}

/// Reads `frame` (starting at its Ethernet header) into a [`FrameInfo`]. Walks any number of
/// VLAN tags (0x8100, 0x88a8, 0x9100), IPv4 options and AH, and IPv6 extension headers
/// (hop-by-hop first only, routing, fragment, destination options, AH). IP lengths bound
/// everything after the IP header, so Ethernet padding is ignored. Non-IP EtherTypes are not
/// looked into; neither is a non-first fragment (it has no transport header), and the first
/// fragment only for its ports (a truncated transport header there is not malformed).
#[inline]
pub fn parse(frame: &[u8]) -> FrameInfo {
    let mut info = FrameInfo::default();
    parse_into(frame, &mut info);
    info
}

/// [`parse`] into a caller's `FrameInfo` (overwritten whole). The hot path uses this: reading
/// fields back from where they were written is cheaper than moving a freshly built struct.
#[inline]
pub fn parse_into(frame: &[u8], info: &mut FrameInfo) {
    *info = FrameInfo::default();
    if read_frame(frame, info).is_none() {
        info.malformed = true;
    }
}

/// `None` when the frame is malformed; `info` then holds what was read before the fault.
#[inline]
fn read_frame(frame: &[u8], info: &mut FrameInfo) -> Option<()> {
    let eth = Ethernet2HeaderSlice::from_slice(frame).ok()?;
    info.dst_mac = eth.destination();
    info.src_mac = eth.source();
    let mut ether_type = eth.ether_type().0;
    let mut rest = frame.get(eth.slice().len()..)?;
    while matches!(
        ether_type,
        ETHERTYPE_VLAN | ETHERTYPE_QINQ | ETHERTYPE_QINQ_OLD
    ) {
        let tag = SingleVlanHeaderSlice::from_slice(rest).ok()?;
        if info.vlan_tags == 0 {
            info.vlan = Some(tag.vlan_identifier().value());
        }
        info.vlan_tags = info.vlan_tags.saturating_add(1);
        ether_type = tag.ether_type().0;
        rest = rest.get(tag.slice().len()..)?;
    }
    info.ether_type = ether_type;
    match ether_type {
        ETHERTYPE_IPV4 => parse_ipv4(rest, info),
        ETHERTYPE_IPV6 => parse_ipv6(rest, info),
        _ => Some(()),
    }
}

#[inline]
fn parse_ipv4(l3: &[u8], info: &mut FrameInfo) -> Option<()> {
    // Checks version 4, IHL >= 5 and that the header (with options) is in the slice.
    let header = Ipv4HeaderSlice::from_slice(l3).ok()?;
    let header_len = header.slice().len();
    let total_len = usize::from(header.total_len());
    if total_len < header_len {
        return None;
    }
    let mut body = l3.get(header_len..total_len)?;
    let more = header.more_fragments();
    let offset = header.fragments_offset().value();
    let fragment = (more || offset != 0).then_some(IpFragment { more, offset });
    let mut protocol = header.protocol().0;
    info.ip = Some(IpInfo {
        src: IpAddr::V4(header.source_addr()),
        dst: IpAddr::V4(header.destination_addr()),
        protocol,
        fragment,
    });
    if offset != 0 {
        // A non-first fragment: its payload continues the datagram, no header to read.
        info.payload_len = len16(body.len());
        return Some(());
    }
    if protocol == IPPROTO_AH {
        match IpAuthHeaderSlice::from_slice(body) {
            Ok(ah) => {
                protocol = ah.next_header().0;
                body = body.get(ah.slice().len()..)?;
            }
            // A first fragment may end anywhere; only its fragment state counts.
            Err(_) if fragment.is_some() => return Some(()),
            Err(_) => return None,
        }
    }
    set_protocol(info, protocol);
    parse_transport(protocol, body, fragment.is_some(), info)
}

#[inline]
fn parse_ipv6(l3: &[u8], info: &mut FrameInfo) -> Option<()> {
    // Checks version 6 and that the 40-byte header is in the slice.
    let header = Ipv6HeaderSlice::from_slice(l3).ok()?;
    // Bound by the payload length ourselves: etherparse reads 0 as "jumbogram, take the rest
    // of the slice", which would count Ethernet padding; a jumbogram cannot be on Ethernet.
    let end = IPV6_HEADER_LEN + usize::from(header.payload_length());
    let mut body = l3.get(IPV6_HEADER_LEN..end)?;
    let mut next = header.next_header().0;
    info.ip = Some(IpInfo {
        src: IpAddr::V6(header.source_addr()),
        dst: IpAddr::V6(header.destination_addr()),
        protocol: next,
        fragment: None,
    });
    let mut fragment: Option<IpFragment> = None;
    let mut first = true;
    loop {
        // Each header consumes at least 8 bytes of `body`, so this ends.
        let consumed = match next {
            IPPROTO_HOPOPTS if !first => return None,
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                match Ipv6RawExtHeaderSlice::from_slice(body) {
                    Ok(ext) => {
                        next = ext.next_header().0;
                        ext.slice().len()
                    }
                    Err(_) => return truncated_chain(info, next, fragment),
                }
            }
            IPPROTO_FRAGMENT => match Ipv6FragmentHeaderSlice::from_slice(body) {
                Ok(frag) => {
                    next = frag.next_header().0;
                    // Read bytes 2..4 ourselves: etherparse 0.16's `fragment_offset()` /
                    // `more_fragments()` use the wrong bit positions (etherparse#150, fixed in
                    // 0.20). RFC 8200: a big-endian word, offset = word >> 3, M = bit 0.
                    let word = match frag.slice().get(2..4) {
                        Some(&[hi, lo]) => u16::from_be_bytes([hi, lo]),
                        _ => return None,
                    };
                    let more = word & 1 != 0;
                    let offset = word >> 3;
                    if more || offset != 0 {
                        let f = fragment.get_or_insert(IpFragment { more, offset });
                        f.more |= more;
                        if f.offset == 0 {
                            f.offset = offset;
                        }
                        set_fragment(info, *f);
                    }
                    if offset != 0 {
                        // A non-first fragment: what follows is the middle of the datagram.
                        set_protocol(info, next);
                        info.payload_len = len16(body.len().saturating_sub(frag.slice().len()));
                        return Some(());
                    }
                    frag.slice().len()
                }
                Err(_) => return truncated_chain(info, next, fragment),
            },
            IPPROTO_AH => match IpAuthHeaderSlice::from_slice(body) {
                Ok(ah) => {
                    next = ah.next_header().0;
                    ah.slice().len()
                }
                Err(_) => return truncated_chain(info, next, fragment),
            },
            _ => break,
        };
        body = body.get(consumed..)?;
        first = false;
    }
    set_protocol(info, next);
    parse_transport(next, body, fragment.is_some(), info)
}

/// An extension header did not fit: malformed, unless the packet is already known to be a
/// (first) fragment, whose fragment state is all that counts.
fn truncated_chain(info: &mut FrameInfo, next: u8, fragment: Option<IpFragment>) -> Option<()> {
    fragment.map(|_| set_protocol(info, next))
}

fn set_protocol(info: &mut FrameInfo, protocol: u8) {
    if let Some(ip) = info.ip.as_mut() {
        ip.protocol = protocol;
    }
}

fn set_fragment(info: &mut FrameInfo, fragment: IpFragment) {
    if let Some(ip) = info.ip.as_mut() {
        ip.fragment = Some(fragment);
    }
}

/// The transport of an unfragmented packet (strict), or the ports of a first fragment (lax).
#[inline]
fn parse_transport(
    protocol: u8,
    payload: &[u8],
    first_fragment: bool,
    info: &mut FrameInfo,
) -> Option<()> {
    if first_fragment {
        if matches!(protocol, IPPROTO_TCP | IPPROTO_UDP) {
            if let Some(&[s0, s1, d0, d1]) = payload.get(..4) {
                info.ports = Some(Ports {
                    src: u16::from_be_bytes([s0, s1]),
                    dst: u16::from_be_bytes([d0, d1]),
                });
            }
        }
        info.payload_len = len16(payload.len());
        return Some(());
    }
    match protocol {
        IPPROTO_TCP => {
            // Checks 20 bytes, data offset >= 5, and the options within the slice.
            let tcp = TcpHeaderSlice::from_slice(payload).ok()?;
            let raw = tcp.slice();
            info.ports = Some(Ports {
                src: tcp.source_port(),
                dst: tcp.destination_port(),
            });
            let flags = raw.get(13).copied().unwrap_or(0);
            info.tcp = Some(TcpInfo {
                flags,
                ns: tcp.ns(),
                window: tcp.window_size(),
                seq: tcp.sequence_number(),
                ack: tcp.acknowledgment_number(),
                wscale: None,
            });
            info.payload_len = len16(payload.len().saturating_sub(raw.len()));
            if flags & TcpInfo::SYN != 0 {
                // Out of line and last, a tail call: the path of every other segment keeps
                // its registers (no spills), which it would not around a call.
                return syn_options(info, raw);
            }
        }
        IPPROTO_UDP => {
            let udp = UdpHeaderSlice::from_slice(payload).ok()?;
            let udp_len = usize::from(udp.length());
            if udp_len < udp.slice().len() || udp_len > payload.len() {
                return None;
            }
            info.ports = Some(Ports {
                src: udp.source_port(),
                dst: udp.destination_port(),
            });
            info.payload_len = len16(udp_len - udp.slice().len());
        }
        _ => info.payload_len = len16(payload.len()),
    }
    Some(())
}

/// The shift count of the Window Scale option in a TCP options area (the bytes after the
/// 20-byte fixed header), walked as Linux's `tcp_parse_options` does: kind 0 (End of Option
/// List) ends it, kind 1 (NOP) is one byte, every other kind has a length byte counting the
/// kind and length bytes. A length below 2 or running past the area stops the walk (what was
/// found before it stands); a kind-3 option whose length is not 3 is skipped; the last valid
/// Window Scale option wins. No allocation; never panics.
#[inline]
pub(super) fn window_scale(options: &[u8]) -> Option<u8> {
    let mut found = None;
    let mut rest = options;
    while let Some((&kind, tail)) = rest.split_first() {
        match kind {
            TCPOPT_EOL => break,
            TCPOPT_NOP => rest = tail,
            _ => {
                let Some(&len) = tail.first() else { break };
                let len = usize::from(len);
                if len < 2 {
                    break;
                }
                let Some(option) = rest.get(..len) else { break };
                if let (TCPOPT_WINDOW, &[_, _, shift]) = (kind, option) {
                    found = Some(shift);
                }
                rest = rest.get(len..).unwrap_or(&[]);
            }
        }
    }
    found
}

/// Sets `info.tcp.wscale` from the options of a SYN's TCP header `header`. Always `Some`.
#[cold]
#[inline(never)]
fn syn_options(info: &mut FrameInfo, header: &[u8]) -> Option<()> {
    if let Some(tcp) = info.tcp.as_mut() {
        tcp.wscale = window_scale(header.get(TCP_HEADER_LEN..).unwrap_or(&[]));
    }
    Some(())
}

/// Lengths here are bounded by 16-bit IP length fields; saturate rather than wrap anyway.
#[inline]
fn len16(n: usize) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}
